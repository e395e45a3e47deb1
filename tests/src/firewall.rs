//! Snapshots of a host's iptables rules, for comparing before and after an install.

use anyhow::Result;

use crate::Host;

/// `iptables-save` and `ip6tables-save` of `host` without comments, counters and empty tables
/// (iptables-nft cannot delete a table, so one created by an install stays behind empty): two
/// snapshots are equal when the hosts' rules are.
pub fn firewall_rules(host: &Host) -> Result<String> {
    Ok(format!(
        "{}\n--- v6 ---\n{}",
        snapshot(host, "iptables-save")?,
        snapshot(host, "ip6tables-save")?
    ))
}

fn snapshot(host: &Host, save: &str) -> Result<String> {
    let out = host.run(save, Vec::<&str>::new())?.check()?;
    let mut tables: Vec<Vec<String>> = Vec::new();
    for line in out.stdout.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if line.starts_with('*') {
            tables.push(Vec::new());
        }
        let line = match line.rfind(" [") {
            Some(i) if line.starts_with(':') => &line[..i],
            _ => line,
        };
        if let Some(t) = tables.last_mut() {
            t.push(line.to_string());
        }
    }
    let empty = |t: &Vec<String>| {
        t.iter().all(|l| {
            l.starts_with('*') || l == "COMMIT" || (l.starts_with(':') && l.ends_with(" ACCEPT"))
        })
    };
    Ok(tables
        .into_iter()
        .filter(|t| !empty(t))
        .map(|t| t.join("\n"))
        .collect::<Vec<_>>()
        .join("\n"))
}

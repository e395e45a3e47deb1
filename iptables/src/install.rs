//! Installing and uninstalling the rules with the real iptables binaries.
//!
//! Per family: read each table with `<bin>-save -t TABLE`, take out every chain and rule of
//! ours, merge the new ones in, and apply all changed tables with one `<bin>-restore` call
//! (whole tables, no `--noflush`): applying twice leaves one copy, and unrelated rules stay.
//! If a family fails, the families already changed are restored from their snapshots.

use std::path::PathBuf;

use crate::builder::{build, Environment, Ruleset};
use crate::config::{Config, Family, IpFamilyMode};
use crate::host;
use crate::restore::{parse_save, render_ruleset, SavedTable};

const TABLES: [&str; 3] = ["raw", "nat", "mangle"];

/// A failure to install or uninstall, with a message meant for the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

/// The iptables flavour in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-nft` (nf_tables kernel API).
    Nft,
    /// `iptables-legacy` (x_tables).
    Legacy,
}

impl Backend {
    /// `nft` or `legacy`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }
}

/// The save/restore programs of one family and backend.
#[derive(Debug, Clone)]
struct Tools {
    family: Family,
    backend: Backend,
    save: PathBuf,
    restore: PathBuf,
}

impl Tools {
    /// Finds `ip{6}tables-{nft|legacy}-{save,restore}`, or the unsuffixed programs when they
    /// report the same backend.
    fn find(family: Family, backend: Backend) -> Result<Tools, String> {
        let base = match family {
            Family::Ipv4 => "iptables",
            Family::Ipv6 => "ip6tables",
        };
        let mut paths = Vec::new();
        for kind in ["save", "restore"] {
            let suffixed = format!("{base}-{}-{kind}", backend.name());
            let plain = format!("{base}-{kind}");
            let found = host::find_program(&suffixed).or_else(|| {
                let p = host::find_program(&plain)?;
                let version = host::run(&p, &["--version"], None).ok()?;
                let is_nft = version.contains("nf_tables");
                (is_nft == (backend == Backend::Nft)).then_some(p)
            });
            paths.push(found.ok_or(format!("{suffixed} (or {plain}) not found"))?);
        }
        let restore = paths.pop().unwrap_or_default();
        let save = paths.pop().unwrap_or_default();
        Ok(Tools {
            family,
            backend,
            save,
            restore,
        })
    }

    fn save_all(&self) -> Result<String, String> {
        host::run(&self.save, &[], None)
    }

    fn read(&self, table: &str) -> Result<SavedTable, Error> {
        let text = host::run(&self.save, &["-t", table], None).map_err(Error)?;
        let parsed = parse_save(&text).map_err(|e| {
            Error(format!(
                "cannot parse `{} -t {table}` output: {e}",
                self.save.display()
            ))
        })?;
        Ok(parsed
            .into_iter()
            .find(|t| t.name == table)
            .unwrap_or_else(|| SavedTable::empty(table)))
    }

    /// Applies restore input; on failure names the rejected line.
    fn restore(&self, text: &str) -> Result<(), Error> {
        let args: &[&str] = match self.backend {
            Backend::Legacy => &["--wait=5"],
            Backend::Nft => &[],
        };
        host::run(&self.restore, args, Some(text)).map_err(|e| {
            let line = failed_line(&e)
                .and_then(|n| text.lines().nth(n.saturating_sub(1)))
                .map(|l| format!("\nrejected line: {l}"))
                .unwrap_or_default();
            Error(format!("{e}{line}"))
        })?;
        Ok(())
    }
}

/// The line number in `iptables-restore: line N failed`.
fn failed_line(stderr: &str) -> Option<usize> {
    let rest = &stderr[stderr.find("line ")? + 5..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Whether saved text holds any rule or user chain.
fn has_rules(save: &str) -> bool {
    save.lines().any(|l| {
        l.starts_with("-A ") || (l.starts_with(':') && l.split_whitespace().nth(1) == Some("-"))
    })
}

/// What an install or uninstall did, line by line, for the user.
#[derive(Debug, Default)]
pub struct Report {
    /// Human-readable lines (backend, families, warnings, changes).
    pub lines: Vec<String>,
}

fn require_root() -> Result<(), Error> {
    match host::effective_uid() {
        Some(0) => Ok(()),
        Some(uid) => Err(Error(format!(
            "you need to have root privileges to run this command (effective uid {uid})"
        ))),
        None => Err(Error(
            "cannot determine the effective uid (/proc/self/status)".into(),
        )),
    }
}

/// Picks the backend as Kuma does: the one already holding rules; else nft when it works;
/// else legacy.
fn detect_backend(report: &mut Report) -> Result<Backend, Error> {
    let probe = |b| -> Result<(Tools, String), String> {
        let t = Tools::find(Family::Ipv4, b)?;
        let out = t.save_all()?;
        Ok((t, out))
    };
    let (nft, legacy) = (probe(Backend::Nft), probe(Backend::Legacy));
    let backend = match (&nft, &legacy) {
        (Err(n), Err(l)) => {
            return Err(Error(format!(
                "no working iptables found: nft: {n}; legacy: {l} (install the iptables package)"
            )))
        }
        (Ok(_), Err(_)) => Backend::Nft,
        (Err(_), Ok(_)) => Backend::Legacy,
        (Ok((_, n)), Ok((_, l))) => {
            if has_rules(l) && !has_rules(n) {
                Backend::Legacy
            } else {
                if has_rules(l) {
                    report.lines.push(
                        "both iptables-nft and iptables-legacy hold rules; using iptables-nft"
                            .into(),
                    );
                }
                Backend::Nft
            }
        }
    };
    report
        .lines
        .push(format!("using the iptables {} backend", backend.name()));
    Ok(backend)
}

/// The families to configure, with their tools; IPv6 is dropped with a warning when the
/// host or ip6tables cannot do it.
fn families(
    mode: IpFamilyMode,
    backend: Backend,
    install: bool,
    report: &mut Report,
) -> Result<Vec<Tools>, Error> {
    let v4 = Tools::find(Family::Ipv4, backend).map_err(Error)?;
    let mut out = vec![v4];
    if mode == IpFamilyMode::Ipv4 {
        return Ok(out);
    }
    let v6 = match Tools::find(Family::Ipv6, backend) {
        Ok(t) => t,
        Err(e) => {
            report.lines.push(format!("warning: IPv6 skipped: {e}"));
            return Ok(out);
        }
    };
    if let Err(e) = v6.save_all() {
        report.lines.push(format!(
            "warning: IPv6 skipped: ip6tables does not work: {e}"
        ));
        return Ok(out);
    }
    if install {
        if !host::has_local_ipv6() {
            report
                .lines
                .push("warning: IPv6 skipped: no local IPv6 address".into());
            return Ok(out);
        }
        // The proxy sends inbound passthrough traffic from ::6, which must exist on loopback.
        if let Err(e) = add_ipv6_passthrough_address() {
            report.lines.push(format!(
                "warning: IPv6 skipped: cannot add ::6/128 to the loopback interface: {e}"
            ));
            return Ok(out);
        }
    }
    out.push(v6);
    Ok(out)
}

fn add_ipv6_passthrough_address() -> Result<(), String> {
    let ip = host::find_program("ip").ok_or("`ip` (iproute2) not found")?;
    let lo = host::loopback_interface();
    match host::run(&ip, &["-6", "addr", "add", "::6/128", "dev", &lo], None) {
        Err(e) if !e.contains("File exists") => Err(e),
        _ => Ok(()),
    }
}

/// The host facts the builder needs, for `family`'s current nat table.
fn environment(config: &Config, nat: Option<&SavedTable>) -> Result<Environment, Error> {
    let nameservers = if config.dns_enabled() && !config.dns.capture_all {
        host::nameservers(&config.dns.resolv_conf).map_err(Error)?
    } else {
        Vec::new()
    };
    Ok(Environment {
        loopback: host::loopback_interface(),
        nameservers,
        docker_output: nat.is_some_and(|t| {
            t.chains
                .iter()
                .any(|(c, _)| c == crate::builder::DOCKER_OUTPUT)
        }),
    })
}

/// `install --dry-run`: the rules of each family as `iptables-restore --noflush` input,
/// under `### IPv4 ###` / `### IPv6 ###` headers, plus warnings. Reads nothing but
/// resolv.conf and the interface list; changes nothing; needs no privileges.
pub fn dry_run(config: &Config) -> Result<(String, Vec<String>), Error> {
    let env = environment(config, None)?;
    let mut families = vec![Family::Ipv4];
    if config.ip_family_mode == IpFamilyMode::DualStack {
        families.push(Family::Ipv6);
    }
    let mut out = String::new();
    let mut warnings = Vec::new();
    for family in families {
        let ruleset = build(config, family, &env);
        out.push_str(&format!(
            "### {} ###\n\n{}\n",
            family.name(),
            render_ruleset(&ruleset)
        ));
        warnings.extend(
            ruleset
                .warnings
                .iter()
                .map(|w| format!("{}: {w}", family.name())),
        );
    }
    Ok((out, warnings))
}

/// A family's planned change: restore input and the snapshot to roll back to.
struct Plan {
    tools: Tools,
    apply: String,
    rollback: String,
}

/// Reads `tools`' tables and plans the change that `ours` (None: uninstall) makes.
fn plan(tools: Tools, config: Option<&Config>, report: &mut Report) -> Result<Option<Plan>, Error> {
    let current: Vec<SavedTable> = TABLES
        .iter()
        .map(|t| tools.read(t))
        .collect::<Result<_, _>>()?;
    let ruleset: Option<Ruleset> = match config {
        Some(c) => {
            let env = environment(c, current.iter().find(|t| t.name == "nat"))?;
            let r = build(c, tools.family, &env);
            report.lines.extend(
                r.warnings
                    .iter()
                    .map(|w| format!("warning: {}: {w}", tools.family.name())),
            );
            Some(r)
        }
        None => None,
    };
    let (mut apply, mut rollback) = (String::new(), String::new());
    for table in &current {
        let clean = table.without_ours();
        let ours = ruleset
            .as_ref()
            .and_then(|r| r.tables.iter().find(|t| t.name == table.name));
        let new = match ours {
            Some(t) => clean.merged_with(t),
            None => clean,
        };
        if &new != table {
            apply.push_str(&new.render());
            rollback.push_str(&table.render());
        }
    }
    Ok((!apply.is_empty()).then_some(Plan {
        tools,
        apply,
        rollback,
    }))
}

/// Applies the plans in order; if one fails, restores the ones already applied.
fn apply(plans: &[Plan], verbose: bool, report: &mut Report) -> Result<(), Error> {
    for (i, p) in plans.iter().enumerate() {
        if verbose {
            report.lines.push(format!(
                "{} restore input:\n{}",
                p.tools.restore.display(),
                p.apply
            ));
        }
        if let Err(e) = p.tools.restore(&p.apply) {
            let mut msg = format!("{}: {}", p.tools.family.name(), e.0);
            // Legacy iptables commits table by table: put this family back too.
            for done in plans[..=i].iter().rev() {
                if let Err(r) = done.tools.restore(&done.rollback) {
                    msg.push_str(&format!(
                        "\nrollback of {} failed: {}",
                        done.tools.family.name(),
                        r.0
                    ));
                } else if done.tools.family != p.tools.family {
                    msg.push_str(&format!("\n{} rules rolled back", done.tools.family.name()));
                }
            }
            return Err(Error(msg));
        }
        report.lines.push(format!(
            "{} rules applied with {}",
            p.tools.family.name(),
            p.tools.restore.display()
        ));
    }
    Ok(())
}

/// Installs the rules of `config` (see the module doc). Needs root.
pub fn install(config: &Config) -> Result<Report, Error> {
    require_root()?;
    let mut report = Report::default();
    let backend = detect_backend(&mut report)?;
    let mut plans = Vec::new();
    for tools in families(config.ip_family_mode, backend, true, &mut report)? {
        let family = tools.family;
        match plan(tools, Some(config), &mut report)? {
            Some(p) => plans.push(p),
            None => report
                .lines
                .push(format!("{} rules already installed", family.name())),
        }
    }
    apply(&plans, config.verbose, &mut report)?;
    Ok(report)
}

/// Removes every chain and rule of ours, leaving other rules untouched. With `dry_run`,
/// only reports the restore input it would apply. Needs root (reading tables does).
pub fn uninstall(dry_run: bool, verbose: bool) -> Result<Report, Error> {
    require_root()?;
    let mut report = Report::default();
    let backend = detect_backend(&mut report)?;
    let mut plans = Vec::new();
    for tools in families(IpFamilyMode::DualStack, backend, false, &mut report)? {
        let family = tools.family;
        match plan(tools, None, &mut report)? {
            Some(p) => plans.push(p),
            None => report.lines.push(format!(
                "{}: no transparent-proxy rules found",
                family.name()
            )),
        }
    }
    if dry_run {
        for p in &plans {
            report
                .lines
                .push(format!("### {} ###\n\n{}", p.tools.family.name(), p.apply));
        }
        return Ok(report);
    }
    apply(&plans, verbose, &mut report)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_failure_line() {
        assert_eq!(failed_line("iptables-restore: line 12 failed"), Some(12));
        assert_eq!(failed_line("Bad argument"), None);
        assert!(has_rules("*nat\n:A - [0:0]\nCOMMIT\n"));
        assert!(!has_rules("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"));
    }
}

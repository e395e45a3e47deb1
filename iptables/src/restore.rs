//! iptables-save / iptables-restore text: parsing a saved table, taking our chains and rules
//! out of it, merging new ones in, and rendering the result (a whole table, applied by
//! `iptables-restore` without `--noflush`, so the change is all or nothing).

use crate::builder::{Ruleset, Table};
use crate::rule::{CHAIN_PREFIX, COMMENT_PREFIX};

/// One table as `iptables-save -t TABLE` prints it (counters dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedTable {
    /// Table name.
    pub name: String,
    /// Chains in order: (name, policy; `-` for user chains).
    pub chains: Vec<(String, String)>,
    /// Rules in order: (chain, options after `-A CHAIN`).
    pub rules: Vec<(String, String)>,
}

/// Built-in chains of each table, with the policy a missing one gets.
fn builtin_chains(table: &str) -> &'static [&'static str] {
    match table {
        "raw" => &["PREROUTING", "OUTPUT"],
        "nat" => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
        "mangle" => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
        _ => &[],
    }
}

/// Parses iptables-save output (any number of tables; comments and counters ignored).
pub fn parse_save(text: &str) -> Result<Vec<SavedTable>, String> {
    let mut tables: Vec<SavedTable> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            tables.push(SavedTable {
                name: name.trim().to_string(),
                chains: Vec::new(),
                rules: Vec::new(),
            });
            continue;
        }
        let Some(table) = tables.last_mut() else {
            return Err(format!("line {}: {line:?} outside a table", n + 1));
        };
        if let Some(decl) = line.strip_prefix(':') {
            let mut parts = decl.split_whitespace();
            let name = parts.next().unwrap_or_default().to_string();
            let policy = parts.next().unwrap_or("-").to_string();
            table.chains.push((name, policy));
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
            table.rules.push((chain.to_string(), spec.to_string()));
        } else {
            return Err(format!("line {}: unexpected {line:?}", n + 1));
        }
    }
    Ok(tables)
}

/// Whether a rule is ours: in one of our chains, jumping to one, or carrying our comment.
pub fn is_our_rule(chain: &str, spec: &str) -> bool {
    if chain.starts_with(CHAIN_PREFIX) || spec.contains(COMMENT_PREFIX) {
        return true;
    }
    let tokens: Vec<&str> = spec.split_whitespace().collect();
    tokens
        .windows(2)
        .any(|w| matches!(w[0], "-j" | "-g") && w[1].starts_with(CHAIN_PREFIX))
}

impl SavedTable {
    /// An empty table with its built-in chains (ACCEPT).
    pub fn empty(name: &str) -> Self {
        Self {
            name: name.to_string(),
            chains: builtin_chains(name)
                .iter()
                .map(|c| (c.to_string(), "ACCEPT".to_string()))
                .collect(),
            rules: Vec::new(),
        }
    }

    /// Whether any chain or rule of ours is present.
    pub fn has_ours(&self) -> bool {
        self.chains.iter().any(|(c, _)| c.starts_with(CHAIN_PREFIX))
            || self.rules.iter().any(|(c, s)| is_our_rule(c, s))
    }

    /// This table with every chain and rule of ours removed.
    pub fn without_ours(&self) -> Self {
        Self {
            name: self.name.clone(),
            chains: self
                .chains
                .iter()
                .filter(|(c, _)| !c.starts_with(CHAIN_PREFIX))
                .cloned()
                .collect(),
            rules: self
                .rules
                .iter()
                .filter(|(c, s)| !is_our_rule(c, s))
                .cloned()
                .collect(),
        }
    }

    /// This table plus `ours`: our chains are added, inserted rules go to the top of their
    /// chain (in build order) and appended ones to its end. Existing rules keep their order.
    pub fn merged_with(&self, ours: &Table) -> Self {
        let mut chains = self.chains.clone();
        let mut add_chain = |name: &str, policy: &str| {
            if !chains.iter().any(|(c, _)| c == name) {
                chains.push((name.to_string(), policy.to_string()));
            }
        };
        for rule in &ours.rules {
            if builtin_chains(&self.name).contains(&rule.chain.as_str()) {
                add_chain(&rule.chain, "ACCEPT");
            }
        }
        for chain in &ours.chains {
            add_chain(chain, "-");
        }
        let mut rules = Vec::new();
        for (chain, _) in &chains {
            let mine = ours.rules.iter().filter(|r| &r.chain == chain);
            rules.extend(
                mine.clone()
                    .filter(|r| r.insert)
                    .map(|r| (chain.clone(), r.spec())),
            );
            rules.extend(self.rules.iter().filter(|(c, _)| c == chain).cloned());
            rules.extend(
                mine.filter(|r| !r.insert)
                    .map(|r| (chain.clone(), r.spec())),
            );
        }
        Self {
            name: self.name.clone(),
            chains,
            rules,
        }
    }

    /// The table as iptables-restore input (counters zero).
    pub fn render(&self) -> String {
        let mut out = format!("*{}\n", self.name);
        for (chain, policy) in &self.chains {
            out.push_str(&format!(":{chain} {policy} [0:0]\n"));
        }
        for (chain, spec) in &self.rules {
            out.push_str(&format!("-A {chain} {spec}\n"));
        }
        out.push_str("COMMIT\n");
        out
    }
}

/// One family's rules as `iptables-restore --noflush` input, the way `kumactl install
/// transparent-proxy --dry-run` prints them: our chains declared, inserted rules with their
/// position (`-I OUTPUT 1 …`), appended ones with `-A`.
pub fn render_ruleset(ruleset: &Ruleset) -> String {
    let mut out = String::new();
    for table in &ruleset.tables {
        out.push_str(&format!("*{}\n", table.name));
        for chain in &table.chains {
            out.push_str(&format!(":{chain} - [0:0]\n"));
        }
        let mut positions: Vec<(&str, usize)> = Vec::new();
        for rule in &table.rules {
            if rule.insert {
                let n = match positions.iter_mut().find(|(c, _)| *c == rule.chain) {
                    Some((_, n)) => {
                        *n += 1;
                        *n
                    }
                    None => {
                        positions.push((&rule.chain, 1));
                        1
                    }
                };
                out.push_str(&format!("-I {} {n} {}\n", rule.chain, rule.spec()));
            } else {
                out.push_str(&format!("-A {} {}\n", rule.chain, rule.spec()));
            }
        }
        out.push_str("COMMIT\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::{Rule, Target};

    const SAVED: &str = "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [3:180]\n:USER - [0:0]\n:KUMA_MESH_OUTBOUND - [0:0]\n-A OUTPUT -d 10.9.9.9/32 -j USER\n-A OUTPUT -p tcp -m comment --comment \"kuma/mesh/transparent/proxy/x\" -j RETURN\n-A OUTPUT -p tcp -j KUMA_MESH_OUTBOUND\n-A KUMA_MESH_OUTBOUND -j RETURN\nCOMMIT\n";

    #[test]
    fn ours_removed_and_merged() {
        let tables = parse_save(SAVED).unwrap();
        assert_eq!(tables.len(), 1);
        let t = &tables[0];
        assert!(t.has_ours());
        let clean = t.without_ours();
        assert!(!clean.has_ours());
        assert_eq!(
            clean.rules,
            vec![("OUTPUT".into(), "-d 10.9.9.9/32 -j USER".into())]
        );
        assert_eq!(clean.chains.len(), 3);
        let ours = Table {
            name: "nat",
            chains: vec!["KUMA_MESH_OUTBOUND".into()],
            rules: vec![
                Rule::append("OUTPUT", "a", Target::Jump("KUMA_MESH_OUTBOUND".into())),
                Rule::insert("OUTPUT", "i", Target::Return),
                Rule::append("KUMA_MESH_OUTBOUND", "r", Target::Return),
            ],
        };
        let merged = clean.merged_with(&ours);
        let order: Vec<&str> = merged.rules.iter().map(|(_, s)| s.as_str()).collect();
        assert!(order[0].contains("proxy/i\""));
        assert_eq!(order[1], "-d 10.9.9.9/32 -j USER");
        assert!(order[2].contains("proxy/a\""));
        assert!(order[3].contains("proxy/r\""));
        assert!(merged
            .render()
            .contains(":OUTPUT ACCEPT [0:0]\n:USER - [0:0]\n:KUMA_MESH_OUTBOUND - [0:0]\n"));
        assert_eq!(merged.without_ours(), clean);
    }
}

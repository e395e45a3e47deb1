//! Conformance over every Envoy golden of Kuma's corpus (placeholders replaced): each decodes,
//! and translates into a `ProxyConfig` or is NACKed with every NACK naming its field. Prints
//! the table (golden → translated / NACKed, counts by reason). A golden without a policy (no
//! NACK of its is a Kuma policy's) must translate, except those in `NOT_YET`, which must still
//! be NACKed (so the list shrinks when Bearing grows).

mod corpus;

use bearing_envoy_config::{translate, Nack, ResourceSet, POLICY_NOT_ENFORCED};
use std::collections::BTreeMap;
use std::path::Path;

/// Goldens without a policy that Bearing cannot translate yet, and why.
const NOT_YET: &[(&str, &str)] = &[];

/// A golden's resources, decoded and translated.
fn outcome(file: &Path) -> Result<String, Vec<Nack>> {
    let short = corpus::short(file);
    let mut set = ResourceSet::default();
    let mut nacks = Vec::new();
    for r in corpus::load(file).unwrap_or_else(|e| panic!("{e}")) {
        if let Err(n) = set.insert(&r.name, &r.resource.type_url, &r.resource.value) {
            nacks.push(n);
        }
    }
    if !nacks.is_empty() {
        return Err(nacks);
    }
    translate(&set, &corpus::node_for(&short)).map(|c| {
        format!(
            "{} listeners, {} clusters, {} dns, mtls {:?}, tp {}",
            c.listeners.len(),
            c.clusters.len(),
            c.dns.len(),
            c.mtls.keys().collect::<Vec<_>>(),
            c.transparent_proxy.is_some()
        )
    })
}

/// A NACK's reason without the resource-specific details, for counting.
fn reason_class(reason: &str) -> String {
    let head = reason.split(": ").next().unwrap_or(reason);
    let mut class = String::new();
    let mut quoted = false;
    for c in head.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                class.push_str(if quoted { "\"…" } else { "\"" });
            }
            _ if quoted => {}
            c => class.push(c),
        }
    }
    class
}

#[test]
fn every_golden_translates_or_is_nacked_by_field() {
    let files = corpus::envoy_goldens();
    assert!(files.len() > 300, "only {} goldens found", files.len());
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    let (mut translated, mut nacked) = (0, 0);
    let mut failures = Vec::new();
    for file in &files {
        let short = corpus::short(file);
        let not_yet = NOT_YET.iter().find(|(f, _)| *f == short);
        match outcome(file) {
            Ok(summary) => {
                translated += 1;
                println!("{short}: translated ({summary})");
                if let Some((_, why)) = not_yet {
                    failures.push(format!(
                        "{short}: translates now; remove it from NOT_YET ({why})"
                    ));
                }
            }
            Err(nacks) => {
                nacked += 1;
                let mut classes: BTreeMap<String, usize> = BTreeMap::new();
                for n in &nacks {
                    if n.field.is_empty() || n.reason.is_empty() {
                        failures.push(format!("{short}: NACK without a field or reason: {n:?}"));
                    }
                    *classes.entry(reason_class(&n.reason)).or_default() += 1;
                }
                for class in classes.keys() {
                    *by_reason.entry(class.clone()).or_default() += 1;
                }
                println!("{short}: NACKed ({} NACKs: {:?})", nacks.len(), classes);
                let policy = nacks.iter().any(|n| n.reason.contains(POLICY_NOT_ENFORCED));
                if !policy && not_yet.is_none() {
                    let shown: Vec<String> =
                        nacks.iter().take(5).map(|n| format!("  {n}")).collect();
                    failures.push(format!(
                        "{short}: has no policy but is NACKed:\n{}",
                        shown.join("\n")
                    ));
                }
            }
        }
    }
    println!(
        "\n{translated} translated, {nacked} NACKed, of {} goldens",
        files.len()
    );
    println!("goldens NACKed, by reason:");
    let mut reasons: Vec<_> = by_reason.into_iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (reason, count) in reasons {
        println!("{count:5}  {reason}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

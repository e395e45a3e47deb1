//! Conformance over every Envoy golden of Kuma's corpus (placeholders replaced): each decodes,
//! and translates into a `ProxyConfig` or is NACKed with every NACK naming its field. Prints
//! the table (golden → translated / NACKed, counts by reason). A golden without a policy (no
//! NACK of its is a Kuma policy's) must translate, except those in `NOT_YET`, which must still
//! be NACKed (so the list shrinks when Bearing grows).

mod corpus;

use bearing_envoy_config::{translate, Nack, ResourceSet, POLICY_NOT_ENFORCED};
use bearing_proxy_config::{
    ProxyConfig, RbacAction, RbacDecision, RbacEngine, RbacInput, RbacMatch, RbacMatcher,
    RbacPredicate, RbacString, UpstreamHttpTimeouts,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Goldens without a policy that Bearing cannot translate yet, and why.
const NOT_YET: &[(&str, &str)] = &[];

/// A golden's resources, decoded and translated, summed up.
fn outcome(file: &Path) -> Result<String, Vec<Nack>> {
    translated(file).map(|c| {
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

/// A golden's resources, decoded and translated.
fn translated(file: &Path) -> Result<ProxyConfig, Vec<Nack>> {
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
    translate(&set, &corpus::node_for(&short))
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

/// Every sidecar MeshTrafficPermission golden translates, and kuma-cp's deny-precedence
/// matcher becomes the model's matcher in order (the DENY first), on the HTTP inbound of the
/// test server and the TCP inbound of the demo client.
#[test]
fn mesh_traffic_permission_goldens_translate_with_their_matchers() {
    let dir = "envoyconfig-e2e/sidecars/meshtrafficpermission/";
    let files: Vec<_> = corpus::envoy_goldens()
        .into_iter()
        .filter(|f| corpus::short(f).starts_with(dir))
        .collect();
    assert_eq!(files.len(), 12);
    for file in &files {
        if let Err(nacks) = translated(file) {
            panic!("{}: {nacks:#?}", corpus::short(file));
        }
    }
    let decide = |action, policy: &str| RbacDecision {
        policy: policy.into(),
        action,
    };
    let uri_prefix = |p: &str| RbacPredicate::Single {
        input: RbacInput::UriSan,
        value: RbacString::Prefix(p.into()),
    };
    let deny_precedence = RbacEngine::Matcher(RbacMatcher {
        matchers: vec![
            RbacMatch {
                predicate: uri_prefix("spiffe://trust-domain.mesh/ns/backend"),
                decision: decide(RbacAction::Deny, "kri_mtp_envoyconfig_kuma-3__mtp-2_"),
            },
            RbacMatch {
                predicate: uri_prefix("spiffe://trust-domain.mesh"),
                decision: decide(RbacAction::Allow, "kri_mtp_envoyconfig_kuma-3__mtp-1_"),
            },
        ],
        on_no_match: Some(decide(RbacAction::Deny, "default")),
    });
    let server = files
        .iter()
        .find(|f| {
            corpus::short(f).ends_with("inbound-rules-deny-precedence.test-server.golden.json")
        })
        .and_then(|f| translated(f).ok())
        .expect("the deny-precedence golden");
    let inbound = server
        .listeners
        .iter()
        .find(|l| l.http_rbac.is_some())
        .expect("an inbound with HTTP RBAC");
    let rbac = inbound.http_rbac.as_ref().unwrap();
    assert_eq!(rbac.enforced.as_ref(), Some(&deny_precedence));
    assert_eq!(rbac.shadow, None);
    assert_eq!(inbound.network_rbac, None);
}

/// Every sidecar MeshTimeout golden translates; the inbound one (`idleTimeout: 50s`,
/// `connectionTimeout: 51s`, `http.requestTimeout: 52s`, `streamIdleTimeout: 53s`,
/// `maxStreamDuration: 54s`, `maxConnectionDuration: 55s`) gives the application's cluster
/// its connect timeout and upstream lifetimes, and the inbound its request and stream idle
/// timeouts.
#[test]
fn mesh_timeout_goldens_translate_with_their_timeouts() {
    let dir = "envoyconfig-e2e/sidecars/meshtimeout/";
    let files: Vec<_> = corpus::envoy_goldens()
        .into_iter()
        .filter(|f| corpus::short(f).starts_with(dir))
        .collect();
    assert_eq!(files.len(), 14);
    for file in &files {
        if let Err(nacks) = translated(file) {
            panic!("{}: {nacks:#?}", corpus::short(file));
        }
    }
    let inbound = files
        .iter()
        .find(|f| corpus::short(f).ends_with("/inbound.test-server.golden.json"))
        .expect("the inbound golden");
    let config = translated(inbound).expect("translates");
    let secs = |s| Some(Duration::from_secs(s));
    let app = &config.clusters["localhost:8080"];
    assert_eq!(app.connect_timeout, Duration::from_secs(51));
    assert_eq!(
        app.http_timeouts,
        UpstreamHttpTimeouts {
            idle: secs(50),
            max_connection_duration: secs(55),
            max_stream_duration: secs(54),
        }
    );
    let listener = config
        .listeners
        .iter()
        .find(|l| l.name.starts_with("inbound:") && l.cluster == "localhost:8080")
        .expect("the HTTP inbound");
    assert_eq!(listener.stream_idle_timeout, secs(53));
    assert_eq!(app.request_timeout, secs(52));
}

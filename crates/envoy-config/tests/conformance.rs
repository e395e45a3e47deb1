//! Conformance over every Envoy golden of Kuma's corpus (placeholders replaced): each decodes,
//! and translates into a `ProxyConfig` or is NACKed with every NACK naming its field. Prints
//! the table (golden → translated / NACKed, counts by reason). A golden without a policy (no
//! NACK of its is a Kuma policy's) must translate, except those in `NOT_YET`, which must still
//! be NACKed (so the list shrinks when Bearing grows).

mod corpus;

use bearing_envoy_config::{translate, Nack, ResourceSet, POLICY_NOT_ENFORCED};
use bearing_proxy_config::{
    DownstreamHttpTimeouts, FormatSource, HashPolicy, HashSource, LoadBalancer, ProxyConfig,
    RbacAction, RbacDecision, RbacEngine, RbacInput, RbacMatch, RbacMatcher, RbacPredicate,
    RbacString, RouteAction, UpstreamHttpTimeouts,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Goldens without a policy that Bearing cannot translate yet, and why.
const NOT_YET: &[(&str, &str)] = &[(
    "xds-generator/outbound-proxy/09.envoy.golden.yaml",
    "a fragment whose TLS cluster names Secrets the golden does not carry: only an awaiting NACK (Envoy keeps such a cluster warming); its outlier detection translates",
)];

/// Goldens whose config Envoy 1.40 refuses too (checked with `envoy --mode validate`), so
/// they stay NACKed, and why.
const ENVOY_REFUSES: &[(&str, &str)] = &[
    (
        "envoyconfig-e2e/builtingateway/meshaccesslog/mt-with-to.gateway-proxy.golden.json",
        "kuma-cp interpolates the input's `%%KUMA_SOURCE_SERVICE%%` into the JSON access log value `%gateway-proxy%`: no valid command operator",
    ),
    (
        "envoyconfig-e2e/sidecars/meshaccesslog/outbound.demo-client.golden.json",
        JSON_SERVICE_VALUES,
    ),
    (
        "envoyconfig-e2e/sidecars/meshaccesslog/outbound.test-server.golden.json",
        JSON_SERVICE_VALUES,
    ),
    (
        "envoyconfig-e2e/sidecars/meshaccesslog/outbound-route.demo-client.golden.json",
        JSON_SERVICE_VALUES,
    ),
    (
        "envoyconfig-e2e/sidecars/meshaccesslog/outbound-route.test-server.golden.json",
        JSON_SERVICE_VALUES,
    ),
    (
        "xds-generator/inbound-proxy/10-envoy-config.golden.yaml",
        CIDR_PREFIXES,
    ),
    (
        "xds-generator/inbound-proxy/3-envoy-config.golden.yaml",
        CIDR_PREFIXES,
    ),
    (
        "xds-generator/inbound-proxy/4-envoy-config.golden.yaml",
        CIDR_PREFIXES,
    ),
    (
        "xds-generator/inbound-proxy/5-envoy-config.golden.yaml",
        CIDR_PREFIXES,
    ),
    (
        "xds-generator/inbound-proxy/6-envoy-config.golden.yaml",
        CIDR_PREFIXES,
    ),
    (
        "xds-generator/inbound-proxy/7-envoy-config.golden.yaml",
        CIDR_PREFIXES,
    ),
    (
        "xds-generator/inbound-proxy/8-envoy-config.golden.yaml",
        CIDR_PREFIXES,
    ),
    (
        "xds-generator/inbound-proxy/9-envoy-config.golden.yaml",
        CIDR_PREFIXES,
    ),
];

/// Why Envoy refuses kuma-cp's inbound-proxy goldens (their test input's internal addresses
/// are CIDRs, which kuma-cp copies into `address_prefix`); with the addresses written as
/// Envoy takes them they translate
/// (`inbound_goldens_translate_with_envoys_internal_addresses`).
const CIDR_PREFIXES: &str = "the connection managers' `internal_address_config` has the `address_prefix` values `fc00::/7` and `::1/128`, not IP addresses: Envoy 1.40 says `invalid ip/mask combo`";

/// Why Envoy refuses the JSON MeshAccessLog goldens' format.
const JSON_SERVICE_VALUES: &str = "kuma-cp interpolates the input's `%%KUMA_SOURCE_SERVICE%%` and `%%KUMA_DESTINATION_SERVICE%%` into the JSON access log values `%demo-client%` and `%test-server%`: Envoy 1.40 says `Couldn't find valid command at position 0`";

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
    translated_with(file, |_| {})
}

/// A golden's resources, changed by `edit`, decoded and translated.
fn translated_with(file: &Path, edit: fn(&mut Value)) -> Result<ProxyConfig, Vec<Nack>> {
    let short = corpus::short(file);
    let mut set = ResourceSet::default();
    let mut nacks = Vec::new();
    for r in corpus::load_edited(file, edit).unwrap_or_else(|e| panic!("{e}")) {
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
        let not_yet = NOT_YET
            .iter()
            .chain(ENVOY_REFUSES)
            .find(|(f, _)| *f == short);
        match outcome(file) {
            Ok(summary) => {
                translated += 1;
                println!("{short}: translated ({summary})");
                if let Some((_, why)) = not_yet {
                    failures.push(format!(
                        "{short}: translates now; remove it from NOT_YET / ENVOY_REFUSES ({why})"
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

/// kuma-cp's inbound-proxy goldens that Envoy refuses for their internal addresses
/// (`CIDR_PREFIXES`) translate once those are written as Envoy takes them: PERMISSIVE
/// inbounds whose three chains each carry the same routes, with legacy RateLimit buckets
/// (kept per transport, as Envoy keeps them per chain).
#[test]
fn inbound_goldens_translate_with_envoys_internal_addresses() {
    let refused: Vec<_> = ENVOY_REFUSES
        .iter()
        .filter(|(_, why)| *why == CIDR_PREFIXES)
        .collect();
    assert_eq!(refused.len(), 8);
    // Inbounds with rate limited routes: (STRICT, PERMISSIVE).
    let mut limited = (0, 0);
    for (short, _) in refused {
        let file = corpus::corpus().join(short);
        let config = translated_with(&file, corpus::internal_addresses_as_envoy_takes_them)
            .unwrap_or_else(|nacks| panic!("{short}: {nacks:#?}"));
        for l in &config.listeners {
            let permissive = l.tls.as_ref().map(|t| config.mtls[&t.mesh].permissive);
            match (
                l.routes.as_ref().is_some_and(|t| t.limits_rates()),
                permissive,
            ) {
                (true, Some(false)) => limited.0 += 1,
                (true, Some(true)) => limited.1 += 1,
                _ => {}
            }
        }
    }
    // Goldens 3, 4 and 7 limit one STRICT inbound each; 5 and 6 one PERMISSIVE inbound.
    assert_eq!(limited, (3, 2));
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

/// Every MeshTLS golden translates (sidecar and builtin gateway); where kuma-cp renders
/// `tlsVersion` and `tlsCiphers` (`inbound`, `inbound-rules`: TLS 1.3 only, one cipher), the
/// sidecar's mTLS inbound and every mesh cluster (the gateway's too) carry them as Envoy reads
/// them (curves Envoy's default); the PERMISSIVE goldens carry none.
#[test]
fn mesh_tls_goldens_translate_with_their_tls_parameters() {
    use bearing_proxy_config::{TlsParams, TlsVersion, UpstreamTls};
    let files: Vec<_> = corpus::envoy_goldens()
        .into_iter()
        .filter(|f| corpus::short(f).contains("/meshtls/"))
        .collect();
    assert_eq!(files.len(), 10);
    let tls13 = TlsParams {
        min_version: TlsVersion::V1_3,
        max_version: TlsVersion::V1_3,
        cipher_suites: "ECDHE-ECDSA-AES256-GCM-SHA384".into(),
        ecdh_curves: "X25519:P-256".into(),
    };
    for file in &files {
        let short = corpus::short(file);
        let config = translated(file).unwrap_or_else(|nacks| panic!("{short}: {nacks:#?}"));
        let want = (!short.contains("permissive")).then_some(&tls13);
        let mesh_clusters: Vec<_> = config
            .clusters
            .values()
            .filter_map(|c| match &c.tls {
                Some(UpstreamTls::Mesh { params, .. }) => Some(params.as_ref()),
                _ => None,
            })
            .collect();
        assert!(!mesh_clusters.is_empty(), "{short}");
        assert!(mesh_clusters.iter().all(|p| *p == want), "{short}");
        let inbounds: Vec<_> = config
            .listeners
            .iter()
            .filter_map(|l| l.tls.as_ref())
            .collect();
        assert_eq!(
            inbounds.len(),
            usize::from(!short.contains("builtingateway")),
            "{short}"
        );
        assert!(
            inbounds.iter().all(|t| t.params.as_ref() == want),
            "{short}"
        );
    }
}

/// Every sidecar MeshFaultInjection and MeshRateLimit golden translates: the test server's
/// inbound carries kuma-cp's three faults in order (the 2.5% abort as 250 of 10 000; the
/// `rules` form skipped for sources outside `spiffe://default.default.mesh.local`), or the
/// local rate limit filter with its route's bucket (5 per 10 s, 423, `x-kuma-rate-limited`).
#[test]
fn fault_injection_and_rate_limit_goldens_translate_with_their_filters() {
    use bearing_proxy_config::{HttpFilter, Share, TokenBucket};
    use std::time::Duration;
    let of = |dir: &str| -> Vec<_> {
        corpus::envoy_goldens()
            .into_iter()
            .filter(|f| corpus::short(f).starts_with(dir))
            .collect()
    };
    let faults = of("envoyconfig-e2e/sidecars/meshfaultinjection/");
    let limits = of("envoyconfig-e2e/sidecars/meshratelimit/");
    assert_eq!((faults.len(), limits.len()), (4, 6));
    let server = |f: &&std::path::PathBuf| corpus::short(f).contains("test-server");
    for file in faults.iter().chain(&limits) {
        let config = translated(file).unwrap_or_else(|n| panic!("{}: {n:#?}", corpus::short(file)));
        let inbound = config
            .listeners
            .iter()
            .find(|l| l.name.starts_with("inbound:") && l.protocol.is_http());
        let filters = inbound.map(|l| l.http_filters.clone()).unwrap_or_default();
        if !server(&file) {
            assert!(filters.is_empty(), "{}", corpus::short(file));
            continue;
        }
        let inbound = inbound.expect("the test server's HTTP inbound");
        if corpus::short(file).contains("meshratelimit") {
            assert_eq!(filters, [HttpFilter::LocalRateLimit]);
            let table = inbound.routes.as_ref().expect("a route table");
            let limit = table.virtual_hosts[0].routes[0]
                .rate_limit
                .as_ref()
                .expect("the route's limit");
            assert_eq!(
                limit.bucket,
                TokenBucket {
                    max_tokens: 5,
                    tokens_per_fill: 5,
                    fill_interval: Duration::from_secs(10)
                }
            );
            assert_eq!((limit.status, limit.enforced), (423, Share::ALL));
            continue;
        }
        let shares: Vec<_> = filters
            .iter()
            .map(|f| match f {
                HttpFilter::Fault(f) => (
                    f.abort.as_ref().map(|a| (a.status, a.percentage)),
                    f.delay.as_ref().map(|d| (d.fixed, d.percentage)),
                    f.skip.is_some(),
                ),
                other => panic!("{other:?}"),
            })
            .collect();
        let rules = corpus::short(file).contains("inbound-rules");
        let share = |numerator, denominator| Share {
            numerator,
            denominator,
        };
        assert_eq!(
            shares,
            [
                (Some((500, share(250, 10_000))), None, rules),
                (Some((500, share(10, 100))), None, rules),
                (None, Some((Duration::from_secs(5), share(5, 100))), rules),
            ],
            "{}",
            corpus::short(file)
        );
    }
}

/// The zone egress goldens of MeshFaultInjection and MeshRateLimit translate with their
/// filters (the external service's SNI route with the 50% abort skipped for other SNIs, or
/// the route's bucket of 1 per hour) and the HTTP RBAC kuma-cp puts beside them on that
/// route.
#[test]
fn zone_egress_fault_and_rate_limit_goldens_translate_with_their_filters_and_rbac() {
    for dir in [
        "envoyconfig-e2e/zoneproxies/meshfaultinjection/",
        "envoyconfig-e2e/zoneproxies/meshratelimit/",
    ] {
        let file = corpus::envoy_goldens()
            .into_iter()
            .find(|f| {
                let short = corpus::short(f);
                short.starts_with(dir) && short.ends_with("sni.zone-proxy-egress.golden.json")
            })
            .expect("the egress golden");
        let config = translated(&file).unwrap_or_else(|n| panic!("{dir}: {n:#?}"));
        let routes = config.listeners[0].sni_routes.as_ref().expect("SNI routes");
        let http = routes[0]
            .http
            .as_ref()
            .expect("the external service's HTTP");
        let limited = http.routes.iter().flat_map(|t| &t.virtual_hosts);
        let limited = limited
            .flat_map(|v| &v.routes)
            .any(|r| r.rate_limit.is_some());
        assert!(!http.http_filters.is_empty() || limited, "{dir}");
        assert!(http.http_rbac.is_some(), "{dir}");
    }
}

/// The 15 zone egress goldens that were NACKed for RBAC on their SNI chains translate with
/// it per chain (those still NACKed are for tracing, metrics or timeouts, never RBAC):
/// MeshTrafficPermission's `sni` rule as the MeshExternalService route's HTTP matcher on the
/// SNI (default DENY), kuma-cp's deny-all matcher without a MeshTrafficPermission, and the
/// legacy TrafficPermission's network rules (`authenticated` by SPIFFE id, or no policy:
/// none passes) and HTTP rules per external service; routes passing TLS through carry none.
#[test]
fn zone_egress_rbac_goldens_translate_with_their_rbac_per_chain() {
    use bearing_proxy_config::{
        Rbac, RbacPermission, RbacPolicy, RbacPrincipal, RbacRules, SniRoute, SniTarget,
    };
    let egress: Vec<_> = corpus::envoy_goldens()
        .into_iter()
        .filter(|f| {
            let short = corpus::short(f);
            (short.starts_with("envoyconfig-e2e/zoneproxies/")
                && short.ends_with("zone-proxy-egress.golden.json"))
                || short.starts_with("xds-egress/")
        })
        .collect();
    let mut with_rbac = 0;
    for file in &egress {
        let short = corpus::short(file);
        match translated(file) {
            Ok(config) => {
                let routes = config
                    .listeners
                    .iter()
                    .flat_map(|l| l.sni_routes.iter().flatten());
                let checked = |r: &SniRoute| {
                    r.network_rbac.is_some()
                        || r.http.as_ref().is_some_and(|h| h.http_rbac.is_some())
                };
                let checked: Vec<_> = routes.filter(|r| checked(r)).collect();
                assert!(checked.iter().all(|r| r.terminate.is_some()), "{short}");
                with_rbac += usize::from(!checked.is_empty());
            }
            Err(nacks) => {
                assert!(
                    !nacks.iter().any(|n| n.reason.contains("RBAC")),
                    "{short}: {nacks:#?}"
                );
            }
        }
    }
    // Translated with RBAC on their routes: 9 of the 13 envoyconfig-e2e egress goldens with
    // RBAC (the others are NACKed for tracing and metrics) and the 8 xds-egress ones.
    assert_eq!(with_rbac, 17);

    let config = |suffix: &str| {
        let file = egress
            .iter()
            .find(|f| corpus::short(f).ends_with(suffix))
            .unwrap_or_else(|| panic!("no golden {suffix}"));
        translated(file).unwrap_or_else(|n| panic!("{suffix}: {n:#?}"))
    };
    let route = |config: &ProxyConfig, target: &SniTarget| {
        let routes = config
            .listeners
            .iter()
            .flat_map(|l| l.sni_routes.iter().flatten());
        let found = routes.clone().find(|r| r.target == *target).cloned();
        found.unwrap_or_else(|| panic!("no route {target:?}"))
    };
    let decide = |action, policy: &str| RbacDecision {
        policy: policy.into(),
        action,
    };
    let enforced = |engine| Rbac {
        enforced: Some(engine),
        shadow: None,
    };

    // MeshTrafficPermission allowing the SNI of the MeshExternalService.
    let sni = "sni.extsvc.envoyconfig-zoneproxies.kuma-3.mes-zone-proxy.80";
    let mes = SniTarget::Kri {
        mesh: "envoyconfig-zoneproxies".into(),
        sni: sni.into(),
    };
    let mtp = route(
        &config("meshtrafficpermission/sni.zone-proxy-egress.golden.json"),
        &mes,
    );
    let by_sni = enforced(RbacEngine::Matcher(RbacMatcher {
        matchers: vec![RbacMatch {
            predicate: RbacPredicate::Single {
                input: RbacInput::ServerName,
                value: RbacString::Exact(sni.into()),
            },
            decision: decide(
                RbacAction::Allow,
                "kri_mtp_envoyconfig-zoneproxies_kuma-3__mtp-zone-proxy_",
            ),
        }],
        on_no_match: Some(decide(RbacAction::Deny, "default")),
    }));
    assert_eq!(mtp.network_rbac, None);
    assert_eq!(mtp.http.and_then(|h| h.http_rbac), Some(by_sni));
    // Without a MeshTrafficPermission for the egress: kuma-cp's matcher denying everything.
    let none = route(
        &config("meshhealthcheck/outbound.zone-proxy-egress.golden.json"),
        &mes,
    );
    let deny_all = enforced(RbacEngine::Matcher(RbacMatcher {
        matchers: Vec::new(),
        on_no_match: Some(decide(RbacAction::Deny, "default")),
    }));
    assert_eq!(none.http.and_then(|h| h.http_rbac), Some(deny_all));

    // The legacy TrafficPermission: network rules by SPIFFE id on one external service's
    // chain, HTTP rules letting no one reach the other; cross-zone routes pass through.
    let service = |name: &str| SniTarget::Service {
        mesh: "mesh-1".into(),
        service: name.into(),
    };
    let rules = |policy: Option<(&str, RbacPrincipal)>| {
        let policies = policy.into_iter().map(|(name, principal)| RbacPolicy {
            name: name.into(),
            permissions: vec![RbacPermission::Any],
            principals: vec![principal],
        });
        enforced(RbacEngine::Rules(RbacRules {
            action: RbacAction::Allow,
            policies: policies.collect(),
        }))
    };
    let custom = config("05.mixed-services-with-custom-trafficpermissions.golden.yaml");
    let backend =
        RbacPrincipal::Authenticated(Some(RbacString::Exact("spiffe://zone-1/backend".into())));
    let one = route(&custom, &service("externalservice-1"));
    assert_eq!(
        one.network_rbac,
        Some(rules(Some(("allow-all-traffic", backend))))
    );
    assert_eq!(one.http.and_then(|h| h.http_rbac), None);
    let two = route(&custom, &service("externalservice-2"));
    assert_eq!(two.network_rbac, None);
    assert_eq!(two.http.and_then(|h| h.http_rbac), Some(rules(None)));
    let cross_zone = route(&custom, &service("service-1-zone-2"));
    assert_eq!(
        (cross_zone.terminate, cross_zone.network_rbac),
        (None, None)
    );
    // Unified naming: no TrafficPermission for the ExternalService (no policy: none passes),
    // MeshTrafficPermission's allow-all on the MeshExternalService.
    let unified = config("01.externalservice-only-unified-naming.golden.yaml");
    let external = route(&unified, &service("externalservice-1"));
    assert_eq!(external.network_rbac, Some(rules(None)));
    let mes = route(
        &unified,
        &SniTarget::MeshExternalService {
            mesh: "mesh-1".into(),
            name: "meshexternalservice-1".into(),
            port: 9090,
        },
    );
    let everyone = rules(Some(("MeshTrafficPermission", RbacPrincipal::Any)));
    assert_eq!(mes.http.and_then(|h| h.http_rbac), Some(everyone));
}

/// kuma-cp's MeshAccessLog goldens: every plain-format one translates with its file log on
/// the listener kuma-cp put it on (sidecar inbounds, the gateway's HTTP listener); the
/// outbound ones with route filters (MeshAccessLog targeting a MeshHTTPRoute or MeshService)
/// translate with kuma-cp's Lua program read as each route's `route_kri` and the filters on
/// it, except the JSON ones, NACKed only at their format, which Envoy refuses
/// (`%demo-client%`).
#[test]
fn mesh_access_log_goldens_translate_with_their_file_logs() {
    let files: Vec<_> = corpus::envoy_goldens()
        .into_iter()
        .filter(|f| corpus::short(f).contains("/meshaccesslog/"))
        .collect();
    assert_eq!(files.len(), 15);
    let mut logged = 0;
    for file in &files {
        let short = corpus::short(file);
        let plain = !short.contains("outbound") && !short.contains("mt-with-to");
        match translated(file) {
            Ok(config) if short.contains("outbound-mix") => {
                let l = config
                    .listeners
                    .iter()
                    .find(|l| l.name == "outbound:192.0.2.10:80")
                    .expect("the MeshService outbound");
                let kri = "kri_mhttpr_envoyconfig_kuma-3__test-route_";
                let table = l.routes.as_ref().expect("its routes");
                let kris: Vec<_> = table.virtual_hosts[0]
                    .routes
                    .iter()
                    .map(|r| r.route_kri.as_deref())
                    .collect();
                assert_eq!(kris, [Some(kri), Some(kri), None], "{short}");
                let [service, route] = l.access_logs.as_slice() else {
                    panic!("{short}: {:?}", l.access_logs)
                };
                // The MeshService's log skips the route's requests, the route's logs only them.
                let (s, r) = (service.filter.as_ref(), route.filter.as_ref());
                assert!(s.is_some_and(|f| f.admits(None) && !f.admits(Some(kri))));
                assert!(r.is_some_and(|f| !f.admits(None) && f.admits(Some(kri))));
                logged += 1;
            }
            Ok(config) if plain => {
                let with_logs: Vec<_> = config
                    .listeners
                    .iter()
                    .filter(|l| !l.access_logs.is_empty())
                    .collect();
                // The MeshAccessLog of `inbound-rules-dpp` targets the test server only.
                if short.contains("inbound-rules-dpp.demo-client") {
                    assert!(with_logs.is_empty(), "{short}");
                    continue;
                }
                assert_eq!(with_logs.len(), 1, "{short}");
                let log = &with_logs[0].access_logs[0];
                assert_eq!(log.path, "/dev/stdout", "{short}");
                assert_eq!(
                    log.format.source,
                    FormatSource::Text("[%START_TIME%]\n".into()),
                    "{short}"
                );
                logged += 1;
            }
            Ok(_) => panic!("{short}: translated"),
            Err(nacks) if !plain => assert!(
                nacks
                    .iter()
                    .all(|n| n.reason.contains("no valid command at position 0")),
                "{short}: {nacks:#?}"
            ),
            Err(nacks) => panic!("{short}: {nacks:#?}"),
        }
    }
    assert_eq!(logged, 9);
}

/// kuma-cp's TrafficLog on the transparent proxy's outbound passthrough (xds-generator
/// `transparent-proxy/03`): the capture listeners' file logs (kuma-cp's default TCP format)
/// become the transparent proxy's outbound passthrough logs.
#[test]
fn passthrough_access_logs_go_to_the_transparent_proxy() {
    let file = corpus::envoy_goldens()
        .into_iter()
        .find(|f| corpus::short(f) == "xds-generator/transparent-proxy/03.envoy.golden.yaml")
        .expect("the transparent-proxy/03 golden");
    let config = translated(&file).unwrap_or_else(|nacks| panic!("{nacks:#?}"));
    let tp = config.transparent_proxy.expect("a transparent proxy");
    assert_eq!(tp.outbound_access_logs.len(), 1);
    assert_eq!(tp.outbound_access_logs[0].path, "/var/log");
    let FormatSource::Text(format) = &tp.outbound_access_logs[0].format.source else {
        panic!("a text format");
    };
    assert!(format.starts_with("[%START_TIME%] %RESPONSE_FLAGS% default (unknown)->"));
    assert!(tp.inbound_access_logs.is_empty());
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

/// The builtin gateway MeshTimeout goldens translate with their timeouts: `from` and `rules`
/// give the connection manager's (`idleTimeout: 50s`, `http.requestTimeout: 52s`,
/// `streamIdleTimeout: 53s`, Kuma's 0.5 s request head) to the listener; `to` gives the
/// route its idle timeout (53 s) beside the gateway's defaults.
#[test]
fn gateway_mesh_timeout_goldens_translate_with_their_timeouts() {
    let secs = |s| Some(Duration::from_secs(s));
    for which in ["mt-with-from", "mt-with-rules", "mt-with-to"] {
        let file = find_golden(&format!(
            "builtingateway/meshtimeout/{which}.gateway-proxy.golden.json"
        ));
        let config = translated(&file).unwrap_or_else(|n| panic!("{which}: {n:#?}"));
        let listener = &config.listeners[0];
        let gateway = listener.gateway.as_ref().expect("a gateway listener");
        let route_idles: Vec<Option<Duration>> = gateway
            .hosts
            .iter()
            .flat_map(|h| &h.http_routes)
            .filter_map(|r| match &r.action {
                RouteAction::Forward { idle_timeout, .. } => Some(*idle_timeout),
                _ => None,
            })
            .collect();
        let (stream_idle, request, connection_idle, route_idle) = match which {
            "mt-with-to" => (secs(5), None, secs(300), secs(53)),
            _ => (secs(53), secs(52), secs(50), secs(5)),
        };
        assert_eq!(listener.stream_idle_timeout, stream_idle, "{which}");
        assert_eq!(
            listener.downstream_timeouts,
            DownstreamHttpTimeouts {
                request,
                request_headers: Some(Duration::from_millis(500)),
                connection_idle,
            },
            "{which}"
        );
        assert!(
            !route_idles.is_empty() && route_idles.iter().all(|i| *i == route_idle),
            "{which}: {route_idles:?}"
        );
    }
}

/// The connection manager's downstream connection idle timeout of sidecar outbounds
/// (`xds-generator/outbound-proxy` 03 and 06: 103 s, and 0 s for none) and the zone egress's
/// request head timeout (5 s; that golden stays NACKed only for the RBAC of its SNI routes).
#[test]
fn connection_manager_timeouts_of_sidecars_and_zone_egress_translate() {
    let idle_of = |config: &ProxyConfig, name: &str| {
        let listener = config.listeners.iter().find(|l| l.name == name);
        listener
            .unwrap_or_else(|| panic!("no listener {name}"))
            .downstream_timeouts
            .connection_idle
    };
    let three = translated(&find_golden(
        "xds-generator/outbound-proxy/03.envoy.golden.yaml",
    ))
    .unwrap_or_else(|n| panic!("{n:#?}"));
    assert_eq!(idle_of(&three, "outbound:127.0.0.1:40001"), None);
    let idle = Some(Duration::from_secs(103));
    assert_eq!(idle_of(&three, "outbound:127.0.0.1:40003"), idle);
    assert_eq!(idle_of(&three, "outbound:127.0.0.1:40004"), idle);
    let six = translated(&find_golden(
        "xds-generator/outbound-proxy/06.envoy.golden.yaml",
    ))
    .unwrap_or_else(|n| panic!("{n:#?}"));
    assert_eq!(idle_of(&six, "outbound:127.0.0.1:18082"), idle);

    // The zone egress's HTTP SNI route: MeshTimeout's 5 s for a request's headers.
    let egress = find_golden("zoneproxies/meshtimeout/sni.zone-proxy-egress.golden.json");
    let egress = translated(&egress).unwrap_or_else(|n| panic!("{n:#?}"));
    let routes = egress
        .listeners
        .iter()
        .flat_map(|l| l.sni_routes.iter().flatten());
    let heads: Vec<_> = routes
        .filter_map(|r| r.http.as_ref())
        .map(|h| h.downstream_timeouts.request_headers)
        .collect();
    assert_eq!(heads, [Some(Duration::from_secs(5))]);
}

/// The golden whose short name ends with `suffix`.
fn find_golden(suffix: &str) -> std::path::PathBuf {
    corpus::envoy_goldens()
        .into_iter()
        .find(|f| corpus::short(f).ends_with(suffix))
        .unwrap_or_else(|| panic!("no golden {suffix}"))
}

/// The MeshCircuitBreaker outbound goldens translate with their outlier detection and panic
/// threshold (kuma-cp's 20%, and 0 where a MeshHealthCheck overwrites it with none); the
/// MeshHealthCheck goldens translate, the zone egress's with its health check beside the
/// HTTP RBAC of its SNI route (`health::tests` reads the check).
#[test]
fn mesh_circuit_breaker_and_health_check_goldens_translate_with_their_health() {
    let find = |suffix: &str| {
        corpus::envoy_goldens()
            .into_iter()
            .find(|f| corpus::short(f).ends_with(suffix))
            .unwrap_or_else(|| panic!("no golden {suffix}"))
    };
    let cluster = "envoyconfig_test-server__kuma-3_msvc_80";
    let outbound = translated(&find(
        "sidecars/meshcircuitbreaker/outbound.demo-client.golden.json",
    ))
    .unwrap_or_else(|n| panic!("{n:#?}"));
    let health = &outbound.clusters[cluster].health;
    assert_eq!(health.panic_threshold, 20.0);
    let outlier = health.outlier.as_ref().expect("outlier detection");
    assert_eq!(outlier.consecutive_5xx, 10);
    assert_eq!(outlier.consecutive_local_origin_failure, 10);
    assert!(outlier.split_external_local_origin_errors);
    assert_eq!(outlier.interval, Duration::from_secs(5));
    assert_eq!(outlier.base_ejection_time, Duration::from_secs(30));
    assert_eq!(outlier.max_ejection_time, Duration::from_secs(300));
    assert_eq!(outlier.max_ejection_percent, 20);
    assert_eq!(outlier.failure_percentage_threshold, 85);
    assert_eq!(outlier.success_rate_stdev_factor, 1_900_000);
    assert_eq!(outlier.enforcing.consecutive_gateway_failure, 100);
    assert!(health.check.is_none());
    let overwritten = translated(&find(
        "meshcircuitbreaker/outbound-overwrite-meshhealthcheck-healthypanicthreshold.demo-client.golden.json",
    ))
    .unwrap_or_else(|n| panic!("{n:#?}"));
    assert_eq!(overwritten.clusters[cluster].health.panic_threshold, 0.0);

    for other in ["demo-client", "egress", "ingress", "test-server"] {
        let file = find(&format!(
            "zoneproxies/meshhealthcheck/outbound.zone-proxy-{other}.golden.json"
        ));
        translated(&file).unwrap_or_else(|n| panic!("{other}: {n:#?}"));
    }

    // The inbound MeshCircuitBreaker's connection limits, `maxConnectionPools` among them,
    // on the application's cluster.
    for golden in ["inbound", "inbound-rules"] {
        let inbound = translated(&find(&format!(
            "sidecars/meshcircuitbreaker/{golden}.test-server.golden.json"
        )))
        .unwrap_or_else(|n| panic!("{golden}: {n:#?}"));
        let app = inbound
            .clusters
            .values()
            .find(|c| c.circuit_breakers.max_connection_pools.is_some())
            .unwrap_or_else(|| panic!("{golden}: no cluster with max_connection_pools"));
        let b = app.circuit_breakers;
        assert_eq!(b.max_connection_pools, Some(5), "{golden}");
        assert_eq!(
            (b.max_connections, b.max_pending_requests),
            (10, 2),
            "{golden}"
        );
        assert_eq!((b.max_requests, b.max_retries), (32, 1), "{golden}");
    }
}

/// Every MeshLoadBalancingStrategy golden translates, with kuma-cp's balancer on the
/// test-server cluster and its hash policies on the routes to it (the route-targeted
/// policy's header on `/test-route-2`'s routes); locality awareness (one weighted
/// locality, an overprovisioning factor of 200) translates as plain round robin.
#[test]
fn mesh_load_balancing_goldens_translate_with_their_balancers() {
    let dir = "envoyconfig-e2e/sidecars/meshloadbalancingstrategy/";
    let files: Vec<_> = corpus::envoy_goldens()
        .into_iter()
        .filter(|f| corpus::short(f).starts_with(dir))
        .collect();
    assert_eq!(files.len(), 12);
    const SERVER: &str = "envoyconfig_test-server__kuma-3_msvc_80";
    let header = |name: &str| {
        vec![HashPolicy {
            source: HashSource::Header(name.into()),
            terminal: false,
        }]
    };
    let cookie = vec![HashPolicy {
        source: HashSource::Cookie("session_id".into()),
        terminal: false,
    }];
    let ring = LoadBalancer::RingHash {
        minimum_ring_size: 100,
        maximum_ring_size: 10000,
        hash_function: Default::default(),
    };
    let maglev = LoadBalancer::Maglev { table_size: 17 };
    for file in &files {
        let short = corpus::short(file);
        let config = translated(file).unwrap_or_else(|nacks| panic!("{short}: {nacks:#?}"));
        let case = short
            .trim_start_matches(dir)
            .split('.')
            .next()
            .unwrap_or("");
        let expected = match case {
            "outbound-ringhash" | "outbound-route-ringhash" => ring,
            "outbound-maglev" | "outbound-mix-hashpolicies" => maglev,
            _ => LoadBalancer::RoundRobin,
        };
        assert_eq!(config.clusters[SERVER].load_balancer, expected, "{short}");
        let outbound = config
            .listeners
            .iter()
            .find(|l| l.name.starts_with("outbound:") && l.name.ends_with(":80"))
            .unwrap_or_else(|| panic!("{short}: the test-server outbound"));
        let routes: Vec<_> = outbound
            .routes
            .iter()
            .flat_map(|t| &t.virtual_hosts)
            .flat_map(|v| &v.routes)
            .collect();
        for route in &routes {
            let path = format!("{:?}", route.matches.path);
            let wanted = match case {
                "outbound-ringhash" => header("x-header"),
                "outbound-route-ringhash" if path.contains("/test-route-2") => {
                    header("x-header-for-test-route-2")
                }
                "outbound-route-ringhash" => header("x-header-for-test-server"),
                "outbound-maglev" | "outbound-mix-hashpolicies" => cookie.clone(),
                _ => Vec::new(),
            };
            assert_eq!(route.hash_policy, wanted, "{short}: {path}");
        }
        // A route that hashes makes a route table, never a plain listener.
        let hashes = matches!(
            expected,
            LoadBalancer::RingHash { .. } | LoadBalancer::Maglev { .. }
        );
        assert!(!hashes || !routes.is_empty(), "{short}");
    }
}

//! The RBAC stage: whether a connection (network RBAC, once, after the transport stage) or a
//! request (HTTP RBAC, in the connection manager before routing) may pass, by the rules or
//! matcher of the listener's `Rbac` (kuma-cp's MeshTrafficPermission), evaluated as Envoy's
//! RBAC filters do. What is read of the connection ([`Peer`]) is computed once per connection,
//! only on listeners with RBAC; a decision allocates nothing.

use bearing_proxy_config::{
    Rbac, RbacAction, RbacEngine, RbacInput, RbacMatcher, RbacPermission, RbacPredicate,
    RbacPrincipal, RbacRules, RbacString,
};
use bearing_tls::{Negotiated, PeerNames};
use prometheus_client::metrics::counter::Counter;

/// What RBAC reads of a downstream connection.
#[derive(Debug, Default)]
pub struct Peer {
    /// The connection is TLS (Envoy: it has an SSL connection).
    tls: bool,
    /// The peer certificate's names (empty without one).
    names: PeerNames,
    /// The URI SANs joined by `,` (Envoy's `uri_san` input); `None` without any.
    uri_san: Option<String>,
    /// The SNI the client sent.
    server_name: Option<String>,
}

/// A plaintext connection: no certificate, no SNI.
pub(crate) static PLAINTEXT: Peer = Peer {
    tls: false,
    names: PeerNames {
        uri_sans: Vec::new(),
        dns_sans: Vec::new(),
        subject: String::new(),
    },
    uri_san: None,
    server_name: None,
};

impl Peer {
    /// What RBAC reads of a TLS connection whose handshake completed.
    pub(crate) fn of_tls(stream: &impl Negotiated) -> Peer {
        let names = stream.peer_names().unwrap_or_default();
        let uri_san = (!names.uri_sans.is_empty()).then(|| names.uri_sans.join(","));
        Peer {
            tls: true,
            uri_san,
            server_name: stream.server_name().map(str::to_owned),
            names,
        }
    }

    /// What RBAC reads of a connection whose TLS passes through (an SNI route that does not
    /// terminate it): no TLS of its own, so no certificate, and the SNI the ClientHello named
    /// (as Envoy's TLS inspector gives it to a chain without a TLS transport socket).
    pub(crate) fn of_sni(sni: &str) -> Peer {
        Peer {
            server_name: Some(sni.to_owned()),
            ..Peer::default()
        }
    }

    fn input(&self, input: RbacInput) -> Option<&str> {
        match input {
            RbacInput::UriSan => self.uri_san.as_deref(),
            RbacInput::ServerName => self.server_name.as_deref().filter(|s| !s.is_empty()),
        }
    }

    /// Envoy's `authenticated` principal: a TLS connection, whose certificate has a URI SAN,
    /// else a DNS SAN, else a subject that `name` matches (any, without `name`).
    fn authenticated(&self, name: Option<&RbacString>) -> bool {
        let Some(name) = name else {
            return self.tls;
        };
        let n = &self.names;
        self.tls
            && (n.uri_sans.iter().any(|s| name.matches(s))
                || n.dns_sans.iter().any(|s| name.matches(s))
                || name.matches(&n.subject))
    }
}

/// One listener's RBAC filter with its counters.
pub struct RbacRuntime {
    rbac: Rbac,
    stats: RbacStats,
}

/// The counters of one listener's RBAC (Envoy's `rbac.allowed`, `rbac.denied`,
/// `rbac.shadow_allowed`, `rbac.shadow_denied`).
#[derive(Clone, Default)]
pub struct RbacStats {
    /// Passed the enforced rules.
    pub allowed: Counter,
    /// Refused by them.
    pub denied: Counter,
    /// The shadow rules would have let pass.
    pub shadow_allowed: Counter,
    /// The shadow rules would have refused.
    pub shadow_denied: Counter,
}

impl RbacRuntime {
    /// `rbac` counting into `stats`.
    pub fn new(rbac: Rbac, stats: RbacStats) -> RbacRuntime {
        RbacRuntime { rbac, stats }
    }

    /// Whether the enforced rules let `peer` pass, neither counted nor shadowed (a recheck
    /// of an open connection after a config change).
    pub(crate) fn allows(&self, peer: &Peer) -> bool {
        self.rbac.enforced.as_ref().is_none_or(|e| allows(e, peer))
    }

    /// Whether `peer` may pass; the shadow rules are evaluated and counted only. Counted as
    /// Envoy does: allowed/denied only when rules are enforced.
    pub(crate) fn check(&self, peer: &Peer) -> bool {
        if let Some(shadow) = &self.rbac.shadow {
            match allows(shadow, peer) {
                true => self.stats.shadow_allowed.inc(),
                false => self.stats.shadow_denied.inc(),
            };
        }
        let Some(enforced) = &self.rbac.enforced else {
            return true;
        };
        let allowed = allows(enforced, peer);
        match allowed {
            true => self.stats.allowed.inc(),
            false => self.stats.denied.inc(),
        };
        allowed
    }
}

/// Whether `engine` lets `peer` pass.
pub(crate) fn allows(engine: &RbacEngine, peer: &Peer) -> bool {
    match engine {
        RbacEngine::Rules(rules) => rules_allow(rules, peer),
        RbacEngine::Matcher(matcher) => matcher_allows(matcher, peer),
    }
}

/// Envoy's `rules`: a policy matches when one of its permissions and one of its principals
/// do; ALLOW lets pass only what some policy matches, DENY refuses exactly that.
fn rules_allow(rules: &RbacRules, peer: &Peer) -> bool {
    let matched = rules.policies.iter().any(|p| {
        p.permissions.iter().any(permitted) && p.principals.iter().any(|x| principal(x, peer))
    });
    match rules.action {
        RbacAction::Allow => matched,
        RbacAction::Deny => !matched,
    }
}

fn permitted(p: &RbacPermission) -> bool {
    match p {
        RbacPermission::Any => true,
        RbacPermission::And(all) => all.iter().all(permitted),
        RbacPermission::Or(any) => any.iter().any(permitted),
        RbacPermission::Not(p) => !permitted(p),
    }
}

fn principal(p: &RbacPrincipal, peer: &Peer) -> bool {
    match p {
        RbacPrincipal::Any => true,
        RbacPrincipal::Authenticated(name) => peer.authenticated(name.as_ref()),
        RbacPrincipal::And(all) => all.iter().all(|p| principal(p, peer)),
        RbacPrincipal::Or(any) => any.iter().any(|p| principal(p, peer)),
        RbacPrincipal::Not(p) => !principal(p, peer),
    }
}

/// Envoy's RBAC `matcher`: the first matcher whose predicate holds decides, else
/// `on_no_match`; without a decision the connection or request is refused. A predicate that
/// cannot tell (the URI SANs of a connection without TLS: Envoy's `UnableToMatch`) ends the
/// list without a result, which Envoy's engine refuses.
fn matcher_allows(matcher: &RbacMatcher, peer: &Peer) -> bool {
    let mut decision = matcher.on_no_match.as_ref();
    for m in &matcher.matchers {
        match predicate_state(&m.predicate, peer) {
            Some(true) => {
                decision = Some(&m.decision);
                break;
            }
            Some(false) => {}
            None => return false,
        }
    }
    decision.is_some_and(|d| d.action == RbacAction::Allow)
}

/// Envoy's generic matcher (RBAC matchers, a filter's skip matcher in `crate::fault`):
/// whether `p` holds for `peer`, or `None` when it cannot tell because an input is not
/// available (the URI SANs of a connection without TLS: Envoy's `NotAvailable`; no SNI is
/// available, as no value): a `not` keeps that, an `and` gives it at once, an `or` gives it
/// when no other holds.
pub(crate) fn predicate_state(p: &RbacPredicate, peer: &Peer) -> Option<bool> {
    match p {
        RbacPredicate::Single { input, value } => {
            let available = match input {
                RbacInput::UriSan if !peer.tls => return None,
                _ => peer.input(*input),
            };
            Some(available.is_some_and(|v| value.matches(v)))
        }
        RbacPredicate::Not(p) => predicate_state(p, peer).map(|holds| !holds),
        RbacPredicate::And(all) => {
            for p in all {
                if !predicate_state(p, peer)? {
                    return Some(false);
                }
            }
            Some(true)
        }
        RbacPredicate::Or(any) => {
            let mut unable = false;
            for p in any {
                match predicate_state(p, peer) {
                    Some(true) => return Some(true),
                    Some(false) => {}
                    None => unable = true,
                }
            }
            (!unable).then_some(false)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bearing_proxy_config::{RbacDecision, RbacMatch, RbacPolicy};

    /// A TLS peer with these URI SANs and SNI.
    pub(crate) fn peer(uris: &[&str], sni: Option<&str>) -> Peer {
        let names = PeerNames {
            uri_sans: uris.iter().map(|s| s.to_string()).collect(),
            dns_sans: vec!["demo.local".into()],
            subject: "CN=demo,O=Kuma".into(),
        };
        Peer {
            tls: true,
            uri_san: (!uris.is_empty()).then(|| uris.join(",")),
            server_name: sni.map(str::to_owned),
            names,
        }
    }

    fn exact(s: &str) -> RbacPrincipal {
        RbacPrincipal::Authenticated(Some(RbacString::Exact(s.into())))
    }

    fn rules(action: RbacAction, principals: Vec<RbacPrincipal>) -> RbacEngine {
        RbacEngine::Rules(RbacRules {
            action,
            policies: vec![RbacPolicy {
                name: "MeshTrafficPermission".into(),
                permissions: vec![RbacPermission::Any],
                principals,
            }],
        })
    }

    const CLIENT: &str = "spiffe://default/demo-client";

    #[test]
    fn allow_rules_pass_only_the_named_principal() {
        let allow = rules(RbacAction::Allow, vec![exact(CLIENT)]);
        assert!(allows(&allow, &peer(&[CLIENT], None)));
        assert!(!allows(&allow, &peer(&["spiffe://default/other"], None)));
        // No certificate: `authenticated` never matches.
        assert!(!allows(&allow, &PLAINTEXT));
        // Envoy tries every URI SAN, then the DNS SANs, then the subject.
        let kuma = ["spiffe://default/demo-client", "kuma://app/demo"];
        assert!(allows(&allow, &peer(&kuma, None)));
        let dns = rules(RbacAction::Allow, vec![exact("demo.local")]);
        assert!(allows(&dns, &peer(&[CLIENT], None)));
        let subject = rules(RbacAction::Allow, vec![exact("CN=demo,O=Kuma")]);
        assert!(allows(&subject, &peer(&[CLIENT], None)));
        // `authenticated` without a name: any TLS peer.
        let any_tls = rules(RbacAction::Allow, vec![RbacPrincipal::Authenticated(None)]);
        assert!(allows(&any_tls, &peer(&[], None)));
        assert!(!allows(&any_tls, &PLAINTEXT));
    }

    #[test]
    fn deny_rules_refuse_the_named_principal_and_pass_the_rest() {
        let deny = rules(RbacAction::Deny, vec![exact(CLIENT)]);
        assert!(!allows(&deny, &peer(&[CLIENT], None)));
        assert!(allows(&deny, &peer(&["spiffe://default/other"], None)));
        assert!(allows(&deny, &PLAINTEXT));
        // No policy: ALLOW refuses everything, DENY refuses nothing.
        let empty = |action| {
            RbacEngine::Rules(RbacRules {
                action,
                policies: Vec::new(),
            })
        };
        assert!(!allows(&empty(RbacAction::Allow), &peer(&[CLIENT], None)));
        assert!(allows(&empty(RbacAction::Deny), &peer(&[CLIENT], None)));
    }

    #[test]
    fn kuma_tag_principals_combine_with_and_and_not() {
        // kuma-cp's legacy form: app-5 in ns-5, or not app-5 but in ns-5.
        let both = RbacPrincipal::And(vec![exact("kuma://app/app-5"), exact("kuma://ns/ns-5")]);
        let not_app = RbacPrincipal::And(vec![
            RbacPrincipal::Not(Box::new(exact("kuma://app/app-5"))),
            exact("kuma://ns/ns-5"),
        ]);
        let allow = rules(RbacAction::Allow, vec![both.clone()]);
        assert!(allows(
            &allow,
            &peer(&["kuma://app/app-5", "kuma://ns/ns-5"], None)
        ));
        assert!(!allows(
            &allow,
            &peer(&["kuma://app/app-4", "kuma://ns/ns-5"], None)
        ));
        let allow = rules(RbacAction::Allow, vec![not_app]);
        assert!(allows(
            &allow,
            &peer(&["kuma://app/app-4", "kuma://ns/ns-5"], None)
        ));
        assert!(!allows(
            &allow,
            &peer(&["kuma://app/app-5", "kuma://ns/ns-5"], None)
        ));
        let or = RbacPrincipal::Or(vec![exact("a"), exact(CLIENT)]);
        assert!(allows(
            &rules(RbacAction::Allow, vec![or]),
            &peer(&[CLIENT], None)
        ));
    }

    fn single(input: RbacInput, value: RbacString) -> RbacPredicate {
        RbacPredicate::Single { input, value }
    }

    fn decide(action: RbacAction, policy: &str) -> RbacDecision {
        RbacDecision {
            policy: policy.into(),
            action,
        }
    }

    /// kuma-cp's `inbound-rules-deny-precedence`: a DENY for one prefix listed before the
    /// ALLOW of the whole trust domain, default DENY.
    fn deny_precedence() -> RbacEngine {
        let domain = "spiffe://trust-domain.mesh";
        RbacEngine::Matcher(RbacMatcher {
            matchers: vec![
                RbacMatch {
                    predicate: single(
                        RbacInput::UriSan,
                        RbacString::Prefix(format!("{domain}/ns/backend")),
                    ),
                    decision: decide(RbacAction::Deny, "mtp-2"),
                },
                RbacMatch {
                    predicate: single(RbacInput::UriSan, RbacString::Prefix(domain.into())),
                    decision: decide(RbacAction::Allow, "mtp-1"),
                },
            ],
            on_no_match: Some(decide(RbacAction::Deny, "default")),
        })
    }

    #[test]
    fn matcher_takes_the_first_match_so_deny_listed_first_wins() {
        let m = deny_precedence();
        let backend = "spiffe://trust-domain.mesh/ns/backend/sa/api";
        assert!(!allows(&m, &peer(&[backend], None)));
        assert!(allows(
            &m,
            &peer(&["spiffe://trust-domain.mesh/ns/web/sa/x"], None)
        ));
        assert!(!allows(&m, &peer(&["spiffe://other.mesh/ns/web"], None)));
        // Without TLS the URI SANs cannot be read: the list ends undecided, refused.
        assert!(!allows(&m, &PLAINTEXT));
        // The input is every URI SAN joined by `,`: an exact match needs the one SAN.
        let exact_one = RbacEngine::Matcher(RbacMatcher {
            matchers: vec![RbacMatch {
                predicate: single(RbacInput::UriSan, RbacString::Exact(CLIENT.into())),
                decision: decide(RbacAction::Allow, "p"),
            }],
            on_no_match: None,
        });
        assert!(allows(&exact_one, &peer(&[CLIENT], None)));
        assert!(!allows(&exact_one, &peer(&[CLIENT, "kuma://app/x"], None)));
    }

    #[test]
    fn matcher_reads_the_sni_and_combines_predicates() {
        // kuma-cp's `inbound-rules-sni`: a blocked SNI denied, backend allowed for one SNI,
        // any caller for another.
        let sni = |s: &str| single(RbacInput::ServerName, RbacString::Exact(s.into()));
        let backend = "spiffe://trust-domain.mesh/ns/backend";
        let m = RbacEngine::Matcher(RbacMatcher {
            matchers: vec![
                RbacMatch {
                    predicate: sni("blocked"),
                    decision: decide(RbacAction::Deny, "p"),
                },
                RbacMatch {
                    predicate: RbacPredicate::Or(vec![
                        RbacPredicate::And(vec![
                            single(RbacInput::UriSan, RbacString::Exact(backend.into())),
                            sni("aurora"),
                        ]),
                        sni("rds"),
                    ]),
                    decision: decide(RbacAction::Allow, "p"),
                },
            ],
            on_no_match: Some(decide(RbacAction::Deny, "default")),
        });
        assert!(!allows(&m, &peer(&[backend], Some("blocked"))));
        assert!(allows(&m, &peer(&[backend], Some("aurora"))));
        assert!(!allows(
            &m,
            &peer(&["spiffe://trust-domain.mesh/ns/web"], Some("aurora"))
        ));
        assert!(allows(
            &m,
            &peer(&["spiffe://trust-domain.mesh/ns/web"], Some("rds"))
        ));
        assert!(!allows(&m, &peer(&[backend], None)));
        let not = RbacEngine::Matcher(RbacMatcher {
            matchers: vec![RbacMatch {
                predicate: RbacPredicate::Not(Box::new(sni("blocked"))),
                decision: decide(RbacAction::Allow, "p"),
            }],
            on_no_match: None,
        });
        assert!(allows(&not, &PLAINTEXT));
        assert!(!allows(&not, &peer(&[], Some("blocked"))));
    }

    /// A zone egress's chain passing TLS through: Envoy sees no TLS of its own there, only
    /// the inspected SNI. `authenticated` never matches; a matcher reaching a URI SAN
    /// predicate cannot tell and refuses (Envoy's `UnableToMatch`), even where its
    /// `on_no_match` allows; one on the SNI decides.
    #[test]
    fn a_connection_passed_through_shows_only_its_sni() {
        let through = Peer::of_sni("backend{mesh=default}");
        let any_tls = rules(RbacAction::Allow, vec![RbacPrincipal::Authenticated(None)]);
        assert!(!allows(&any_tls, &through));
        let everyone = rules(RbacAction::Allow, vec![RbacPrincipal::Any]);
        assert!(allows(&everyone, &through));
        let sni = |s: &str| single(RbacInput::ServerName, RbacString::Exact(s.into()));
        let deny_by_san = |first| {
            let san = single(RbacInput::UriSan, RbacString::Prefix("spiffe://".into()));
            let matchers = [first, san].map(|predicate| RbacMatch {
                predicate,
                decision: decide(RbacAction::Deny, "p"),
            });
            RbacEngine::Matcher(RbacMatcher {
                matchers: matchers.into(),
                on_no_match: Some(decide(RbacAction::Allow, "default")),
            })
        };
        // The SNI predicate does not hold, the URI SAN one cannot tell: refused.
        assert!(!allows(&deny_by_san(sni("other")), &through));
        // A TLS peer without a SPIFFE id reaches on_no_match.
        assert!(allows(&deny_by_san(sni("other")), &peer(&[], None)));
        // The SNI predicate holds first and decides.
        let m = RbacEngine::Matcher(RbacMatcher {
            matchers: vec![RbacMatch {
                predicate: sni("backend{mesh=default}"),
                decision: decide(RbacAction::Allow, "p"),
            }],
            on_no_match: Some(decide(RbacAction::Deny, "default")),
        });
        assert!(allows(&m, &through));
        assert!(!allows(&m, &Peer::of_sni("web{mesh=default}")));
    }

    #[test]
    fn shadow_rules_are_counted_not_enforced() {
        let stats = RbacStats::default();
        let rt = RbacRuntime::new(
            Rbac {
                enforced: Some(rules(RbacAction::Allow, vec![exact(CLIENT)])),
                shadow: Some(rules(RbacAction::Deny, vec![exact(CLIENT)])),
            },
            stats.clone(),
        );
        assert!(rt.check(&peer(&[CLIENT], None)));
        assert!(!rt.check(&peer(&["spiffe://default/other"], None)));
        assert!(!rt.check(&PLAINTEXT));
        let counts = |c: &Counter| c.get();
        assert_eq!(counts(&stats.allowed), 1);
        assert_eq!(counts(&stats.denied), 2);
        assert_eq!(counts(&stats.shadow_denied), 1);
        assert_eq!(counts(&stats.shadow_allowed), 2);
        // Only shadow rules: everything passes, nothing counted as allowed or denied.
        let only_shadow = RbacStats::default();
        let rt = RbacRuntime::new(
            Rbac {
                enforced: None,
                shadow: Some(rules(RbacAction::Allow, vec![exact(CLIENT)])),
            },
            only_shadow.clone(),
        );
        assert!(rt.check(&PLAINTEXT));
        assert_eq!(only_shadow.allowed.get() + only_shadow.denied.get(), 0);
        assert_eq!(only_shadow.shadow_denied.get(), 1);
    }

    #[test]
    fn generic_matcher_cannot_tell_uri_sans_without_tls() {
        let in_mesh = RbacPredicate::Single {
            input: RbacInput::UriSan,
            value: RbacString::Prefix("spiffe://default/".into()),
        };
        let outside = RbacPredicate::Not(Box::new(in_mesh.clone()));
        let no_sni = RbacPredicate::Single {
            input: RbacInput::ServerName,
            value: RbacString::Exact("a.mesh".into()),
        };
        // Plaintext: the URI SANs are not available, whatever wraps them...
        assert_eq!(predicate_state(&outside, &PLAINTEXT), None);
        let and = RbacPredicate::And(vec![no_sni.clone(), in_mesh.clone()]);
        assert_eq!(predicate_state(&and, &PLAINTEXT), Some(false));
        let or = RbacPredicate::Or(vec![no_sni.clone(), in_mesh.clone()]);
        assert_eq!(predicate_state(&or, &PLAINTEXT), None);
        // ...while no SNI is a value that matches nothing.
        let not_sni = RbacPredicate::Not(Box::new(no_sni));
        assert_eq!(predicate_state(&not_sni, &PLAINTEXT), Some(true));
        // TLS: a certificate without URI SANs matches nothing.
        assert_eq!(predicate_state(&outside, &peer(&[], None)), Some(true));
        assert_eq!(
            predicate_state(&outside, &peer(&[CLIENT], None)),
            Some(false)
        );
        assert_eq!(
            predicate_state(&outside, &peer(&["spiffe://other/x"], None)),
            Some(true)
        );
    }
}

//! Envoy's network and HTTP `rbac` filters (kuma-cp's MeshTrafficPermission and
//! TrafficPermission) into the model's [`Rbac`]. The field guard (`fields.rs`) NACKs every
//! field outside what this reads; here the values are checked: the `LOG` action, a
//! `safe_regex` or case-insensitive name, a matcher input other than the peer's URI SANs or
//! the SNI (an input Bearing cannot evaluate fails closed: the resource is NACKed).

use bearing_proxy_config::{
    Rbac, RbacAction, RbacDecision, RbacEngine, RbacInput, RbacMatch, RbacMatcher, RbacPermission,
    RbacPolicy, RbacPredicate, RbacPrincipal, RbacRules, RbacString,
};
use envoy_types::pb::envoy::config::rbac::v3 as rbac_pb;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher_pb;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::xds::core::v3::TypedExtensionConfig;
use envoy_types::pb::xds::r#type::matcher::v3 as xds_pb;
use prost::Message;

use crate::decode::TYPE_URL_PREFIX;
use crate::routes::Problem;

/// The type of Envoy's network RBAC filter.
pub(crate) const NETWORK_RBAC: &str = "envoy.extensions.filters.network.rbac.v3.RBAC";
/// The type of Envoy's HTTP RBAC filter.
pub(crate) const HTTP_RBAC: &str = "envoy.extensions.filters.http.rbac.v3.RBAC";
const RBAC_ACTION: &str = "envoy.config.rbac.v3.Action";
const URI_SAN_INPUT: &str = "envoy.extensions.matching.common_inputs.ssl.v3.UriSanInput";
const SERVER_NAME_INPUT: &str =
    "envoy.extensions.matching.common_inputs.network.v3.ServerNameInput";

/// The rules and matchers of a network or HTTP RBAC filter message (they name them alike),
/// with their field names, enforced first.
macro_rules! engines {
    ($f:expr) => {
        [
            ($f.rules.as_ref(), $f.matcher.as_ref(), "rules", "matcher"),
            (
                $f.shadow_rules.as_ref(),
                $f.shadow_matcher.as_ref(),
                "shadow_rules",
                "shadow_matcher",
            ),
        ]
    };
}

/// The network RBAC filter in `any` (at `at`), or what Bearing cannot evaluate in it.
pub(crate) fn network(any: &Any, at: &str, problems: &mut Vec<Problem>) -> Option<Rbac> {
    let f: NetworkRbac = decoded(any, NETWORK_RBAC, at, problems)?;
    filter(engines!(f), at, problems)
}

/// The HTTP RBAC filter in `any` (at `at`), or what Bearing cannot evaluate in it.
pub(crate) fn http(any: &Any, at: &str, problems: &mut Vec<Problem>) -> Option<Rbac> {
    let f: HttpRbac = decoded(any, HTTP_RBAC, at, problems)?;
    filter(engines!(f), at, problems)
}

/// The message of type `name` in `any`, or a problem at `at`.
fn decoded<M: Message + Default>(
    any: &Any,
    name: &str,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<M> {
    match M::decode(any.value.as_slice()) {
        Ok(m) => Some(m),
        Err(e) => {
            problems.push((at.to_string(), format!("{name} does not decode: {e}")));
            None
        }
    }
}

/// The enforced and shadow engines, each from its rules or its matcher (Envoy allows one of
/// the two).
fn filter(
    sources: [(Option<&rbac_pb::Rbac>, Option<&xds_pb::Matcher>, &str, &str); 2],
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<Rbac> {
    let before = problems.len();
    let [enforced, shadow] =
        sources.map(
            |(rules, matcher, rules_field, matcher_field)| match (rules, matcher) {
                (Some(_), Some(_)) => {
                    let reason = format!("{rules_field} and {matcher_field} are exclusive");
                    problems.push((format!("{at}.{matcher_field}"), reason));
                    None
                }
                (Some(r), None) => {
                    rules_engine(r, &format!("{at}.{rules_field}"), problems).map(RbacEngine::Rules)
                }
                (None, Some(m)) => matcher_engine(m, &format!("{at}.{matcher_field}"), problems)
                    .map(RbacEngine::Matcher),
                (None, None) => None,
            },
        );
    (problems.len() == before).then_some(Rbac { enforced, shadow })
}

/// An RBAC action; `LOG` (allow, marking the request for access logs) is not implemented.
fn action(value: i32, at: &str, problems: &mut Vec<Problem>) -> Option<RbacAction> {
    match rbac_pb::rbac::Action::try_from(value) {
        Ok(rbac_pb::rbac::Action::Allow) => Some(RbacAction::Allow),
        Ok(rbac_pb::rbac::Action::Deny) => Some(RbacAction::Deny),
        _ => {
            let reason = "only the ALLOW and DENY actions are implemented (LOG is not)";
            problems.push((at.to_string(), reason.into()));
            None
        }
    }
}

fn rules_engine(r: &rbac_pb::Rbac, at: &str, problems: &mut Vec<Problem>) -> Option<RbacRules> {
    let action = action(r.action, &format!("{at}.action"), problems)?;
    let mut names: Vec<&String> = r.policies.keys().collect();
    names.sort();
    let policies = names
        .into_iter()
        .filter_map(|name| {
            let p = &r.policies[name];
            let pat = format!("{at}.policies[{name:?}]");
            let permissions = p
                .permissions
                .iter()
                .enumerate()
                .map(|(i, x)| permission(x, &format!("{pat}.permissions[{i}]"), problems))
                .collect::<Option<Vec<_>>>();
            let principals = p
                .principals
                .iter()
                .enumerate()
                .map(|(i, x)| principal(x, &format!("{pat}.principals[{i}]"), problems))
                .collect::<Option<Vec<_>>>();
            Some(RbacPolicy {
                name: name.clone(),
                permissions: permissions?,
                principals: principals?,
            })
        })
        .collect::<Vec<_>>();
    (policies.len() == r.policies.len()).then_some(RbacRules { action, policies })
}

fn permission(
    p: &rbac_pb::Permission,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<RbacPermission> {
    use rbac_pb::permission::Rule;
    let set = |rules: &[rbac_pb::Permission], field: &str, problems: &mut Vec<Problem>| {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| permission(r, &format!("{at}.{field}.rules[{i}]"), problems))
            .collect::<Option<Vec<_>>>()
    };
    match &p.rule {
        Some(Rule::Any(true)) => Some(RbacPermission::Any),
        Some(Rule::AndRules(s)) => set(&s.rules, "and_rules", problems).map(RbacPermission::And),
        Some(Rule::OrRules(s)) => set(&s.rules, "or_rules", problems).map(RbacPermission::Or),
        Some(Rule::NotRule(r)) => permission(r, &format!("{at}.not_rule"), problems)
            .map(|r| RbacPermission::Not(Box::new(r))),
        _ => {
            let reason =
                "only any (true), and_rules, or_rules and not_rule permissions are implemented";
            problems.push((at.to_string(), reason.into()));
            None
        }
    }
}

fn principal(
    p: &rbac_pb::Principal,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<RbacPrincipal> {
    use rbac_pb::principal::Identifier;
    let set = |ids: &[rbac_pb::Principal], field: &str, problems: &mut Vec<Problem>| {
        ids.iter()
            .enumerate()
            .map(|(i, r)| principal(r, &format!("{at}.{field}.ids[{i}]"), problems))
            .collect::<Option<Vec<_>>>()
    };
    match &p.identifier {
        Some(Identifier::Any(true)) => Some(RbacPrincipal::Any),
        Some(Identifier::Authenticated(a)) => match &a.principal_name {
            None => Some(RbacPrincipal::Authenticated(None)),
            Some(name) => {
                let at = format!("{at}.authenticated.principal_name");
                envoy_string(name, &at, problems).map(|s| RbacPrincipal::Authenticated(Some(s)))
            }
        },
        Some(Identifier::AndIds(s)) => set(&s.ids, "and_ids", problems).map(RbacPrincipal::And),
        Some(Identifier::OrIds(s)) => set(&s.ids, "or_ids", problems).map(RbacPrincipal::Or),
        Some(Identifier::NotId(r)) => {
            principal(r, &format!("{at}.not_id"), problems).map(|r| RbacPrincipal::Not(Box::new(r)))
        }
        _ => {
            let reason =
                "only any (true), authenticated, and_ids, or_ids and not_id principals are implemented";
            problems.push((at.to_string(), reason.into()));
            None
        }
    }
}

const STRING_KINDS: &str =
    "only exact, prefix, suffix and contains matches (case-sensitive) are implemented in RBAC";

fn envoy_string(
    s: &matcher_pb::StringMatcher,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<RbacString> {
    use matcher_pb::string_matcher::MatchPattern as M;
    let found = match &s.match_pattern {
        _ if s.ignore_case => None,
        Some(M::Exact(v)) => Some(RbacString::Exact(v.clone())),
        Some(M::Prefix(v)) => Some(RbacString::Prefix(v.clone())),
        Some(M::Suffix(v)) => Some(RbacString::Suffix(v.clone())),
        Some(M::Contains(v)) => Some(RbacString::Contains(v.clone())),
        _ => None,
    };
    if found.is_none() {
        problems.push((at.to_string(), STRING_KINDS.into()));
    }
    found
}

/// An xds `value_match`: the xds and Envoy `StringMatcher`s share their wire form (field
/// numbers and types), so it is read as the Envoy one.
fn xds_string(
    s: &xds_pb::StringMatcher,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<RbacString> {
    match matcher_pb::StringMatcher::decode(s.encode_to_vec().as_slice()) {
        Ok(envoy) => envoy_string(&envoy, at, problems),
        Err(e) => {
            problems.push((at.to_string(), format!("does not decode: {e}")));
            None
        }
    }
}

fn matcher_engine(
    m: &xds_pb::Matcher,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<RbacMatcher> {
    use xds_pb::matcher::MatcherType;
    let before = problems.len();
    let list = match &m.matcher_type {
        Some(MatcherType::MatcherList(list)) => list.matchers.as_slice(),
        None => &[],
        Some(MatcherType::MatcherTree(_)) => {
            let reason = "only a matcher_list is implemented in RBAC (not a matcher_tree)";
            problems.push((format!("{at}.matcher_tree"), reason.into()));
            &[]
        }
    };
    let matchers = list
        .iter()
        .enumerate()
        .filter_map(|(i, fm)| {
            let mat = format!("{at}.matcher_list.matchers[{i}]");
            let Some(p) = &fm.predicate else {
                problems.push((format!("{mat}.predicate"), "required".into()));
                return None;
            };
            let predicate = predicate(p, &format!("{mat}.predicate"), problems);
            let decision = on_match(fm.on_match.as_ref(), &format!("{mat}.on_match"), problems);
            Some(RbacMatch {
                predicate: predicate?,
                decision: decision?,
            })
        })
        .collect();
    let on_no_match = match m.on_no_match.as_deref() {
        Some(o) => on_match(Some(o), &format!("{at}.on_no_match"), problems),
        None => None,
    };
    (problems.len() == before).then_some(RbacMatcher {
        matchers,
        on_no_match,
    })
}

/// A matcher's action: an `envoy.config.rbac.v3.Action` (a nested matcher is not
/// implemented).
fn on_match(
    o: Option<&xds_pb::matcher::OnMatch>,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<RbacDecision> {
    use xds_pb::matcher::on_match::OnMatch as O;
    let config = match o.and_then(|o| o.on_match.as_ref()) {
        Some(O::Action(config)) => config,
        _ => {
            let reason = "only an action (envoy.config.rbac.v3.Action) is implemented";
            problems.push((at.to_string(), reason.into()));
            return None;
        }
    };
    let at = format!("{at}.action.typed_config");
    let rbac_pb::Action { name, action: a } =
        typed::<rbac_pb::Action>(config, RBAC_ACTION, &at, problems)?;
    Some(RbacDecision {
        policy: name,
        action: action(a, &format!("{at}.action"), problems)?,
    })
}

/// The message of type `want` in an extension config, or a problem naming what it holds.
fn typed<M: Message + Default>(
    config: &TypedExtensionConfig,
    want: &str,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<M> {
    let any = config.typed_config.as_ref();
    let found = any.map(|a| {
        a.type_url
            .strip_prefix(TYPE_URL_PREFIX)
            .unwrap_or(&a.type_url)
    });
    match (found, any) {
        (Some(t), Some(a)) if t == want => decoded(a, want, at, problems),
        _ => {
            let reason = format!("expected {want}, found {}", found.unwrap_or("nothing"));
            problems.push((at.to_string(), reason));
            None
        }
    }
}

/// A matcher predicate at `at` (also a filter's skip matcher, `http_filters.rs`).
pub(crate) fn predicate(
    p: &xds_pb::matcher::matcher_list::Predicate,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<RbacPredicate> {
    use xds_pb::matcher::matcher_list::predicate::single_predicate::Matcher as Value;
    use xds_pb::matcher::matcher_list::predicate::MatchType;
    let list = |l: &xds_pb::matcher::matcher_list::predicate::PredicateList,
                field: &str,
                problems: &mut Vec<Problem>| {
        l.predicate
            .iter()
            .enumerate()
            .map(|(i, p)| predicate(p, &format!("{at}.{field}.predicate[{i}]"), problems))
            .collect::<Option<Vec<_>>>()
    };
    match &p.match_type {
        Some(MatchType::SinglePredicate(single)) => {
            let sat = format!("{at}.single_predicate");
            let input = input(single.input.as_ref(), &format!("{sat}.input"), problems);
            let value = match &single.matcher {
                Some(Value::ValueMatch(s)) => {
                    xds_string(s, &format!("{sat}.value_match"), problems)
                }
                _ => {
                    let reason = "only a value_match is implemented (not a custom_match)";
                    problems.push((sat.clone(), reason.into()));
                    None
                }
            };
            Some(RbacPredicate::Single {
                input: input?,
                value: value?,
            })
        }
        Some(MatchType::OrMatcher(l)) => list(l, "or_matcher", problems).map(RbacPredicate::Or),
        Some(MatchType::AndMatcher(l)) => list(l, "and_matcher", problems).map(RbacPredicate::And),
        Some(MatchType::NotMatcher(n)) => predicate(n, &format!("{at}.not_matcher"), problems)
            .map(|n| RbacPredicate::Not(Box::new(n))),
        None => {
            problems.push((at.to_string(), "a predicate without a match".into()));
            None
        }
    }
}

/// A matcher input Bearing evaluates; any other fails closed (NACKed).
fn input(
    config: Option<&TypedExtensionConfig>,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<RbacInput> {
    let any = config.and_then(|c| c.typed_config.as_ref());
    let found = any.map(|a| {
        a.type_url
            .strip_prefix(TYPE_URL_PREFIX)
            .unwrap_or(&a.type_url)
    });
    match found {
        Some(URI_SAN_INPUT) => Some(RbacInput::UriSan),
        Some(SERVER_NAME_INPUT) => Some(RbacInput::ServerName),
        other => {
            let reason = format!(
                "matcher input {} cannot be evaluated by Bearing (only {URI_SAN_INPUT} and {SERVER_NAME_INPUT}): refused rather than ignored",
                other.unwrap_or("(none)")
            );
            problems.push((format!("{at}.typed_config"), reason));
            None
        }
    }
}

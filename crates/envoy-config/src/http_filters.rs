//! Envoy's fault and local rate limit filters, as kuma-cp renders MeshFaultInjection and
//! MeshRateLimit, into the model's [`HttpFilter`], [`LocalRateLimit`] and [`TokenBucket`].
//!
//! - MeshFaultInjection: an HTTP `fault` filter per fault, bare or (for `rules` and SNI
//!   matches) wrapped in an `ExtensionWithMatcher` whose matcher skips it
//!   (`SkipFilter`) for the connections its predicate holds for (kuma-cp: `not` the
//!   source's SPIFFE id or SNI).
//! - MeshRateLimit: an HTTP `local_ratelimit` filter without a bucket in the connection
//!   manager, the bucket in each route's `typed_per_filter_config`; the network
//!   `local_ratelimit` filter before the chain's terminal filter for connections.
//!
//! The field guard (`fields.rs`) NACKs every field outside what this reads; here the values
//! are checked.

use std::time::Duration;

use bearing_proxy_config::{
    Fault, FaultAbort, FaultDelay, HeaderFilter, HeaderMatch, HttpFilter, LocalRateLimit,
    RbacPredicate, Share, TokenBucket,
};
use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::extensions::common::matching::v3::ExtensionWithMatcher;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as fault_common_pb;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault_pb;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as HttpLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::local_ratelimit::v3::LocalRateLimit as NetworkLocalRateLimit;
use envoy_types::pb::envoy::r#type::v3 as type_pb;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::xds::r#type::matcher::v3 as xds_pb;
use prost::Message;

use crate::decode::TYPE_URL_PREFIX;
use crate::routes::Problem;

/// The type of Envoy's HTTP fault filter.
pub(crate) const HTTP_FAULT: &str = "envoy.extensions.filters.http.fault.v3.HTTPFault";
/// The type of Envoy's HTTP local rate limit filter.
pub(crate) const HTTP_LOCAL_RATE_LIMIT: &str =
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
/// The type of Envoy's network local rate limit filter.
pub(crate) const NETWORK_LOCAL_RATE_LIMIT: &str =
    "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit";
/// The type of the wrapper kuma-cp puts around a filter applied per source.
pub(crate) const EXTENSION_WITH_MATCHER: &str =
    "envoy.extensions.common.matching.v3.ExtensionWithMatcher";
/// The matcher action that skips the wrapped filter.
pub(crate) const SKIP_FILTER: &str = "envoy.extensions.filters.common.matcher.action.v3.SkipFilter";
/// The name a route's `typed_per_filter_config` gives the local rate limit (kuma-cp's).
pub(crate) const LOCAL_RATE_LIMIT_NAME: &str = "envoy.filters.http.local_ratelimit";
/// The runtime keys kuma-cp gives `filter_enabled` and `filter_enforced`: no runtime layer
/// Bearing accepts sets them, so their default values apply, as in Envoy.
const KUMA_RUNTIME_KEYS: [&str; 2] = ["local_rate_limit_enabled", "local_rate_limit_enforced"];
/// Envoy's shortest token bucket fill interval.
const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

/// The type name of an `Any`.
fn type_of(any: &Any) -> &str {
    any.type_url
        .strip_prefix(TYPE_URL_PREFIX)
        .unwrap_or(&any.type_url)
}

/// The message of type `name` in `any`, or a problem at `at`.
fn decoded<M: Message + Default>(any: &Any, at: &str, problems: &mut Vec<Problem>) -> Option<M> {
    match M::decode(any.value.as_slice()) {
        Ok(m) => Some(m),
        Err(e) => {
            let reason = format!("{} does not decode: {e}", type_of(any));
            problems.push((at.to_string(), reason));
            None
        }
    }
}

/// The HTTP filter of a connection manager in `any` (at `at`, its `typed_config`), when it
/// is a fault or local rate limit filter (`None` for any other type): the model's filter, or
/// problems.
pub(crate) fn http_filter(
    any: &Any,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<Option<HttpFilter>> {
    match type_of(any) {
        HTTP_FAULT => Some(fault(any, None, at, problems).map(HttpFilter::Fault)),
        HTTP_LOCAL_RATE_LIMIT => Some(listener_rate_limit(any, at, problems)),
        EXTENSION_WITH_MATCHER => Some(with_matcher(any, at, problems).map(HttpFilter::Fault)),
        _ => None,
    }
}

/// The connection manager's `local_ratelimit`: kuma-cp's carries no bucket (the routes do);
/// a bucket here, which Envoy applies to routes without their own, is not implemented.
fn listener_rate_limit(any: &Any, at: &str, problems: &mut Vec<Problem>) -> Option<HttpFilter> {
    let f: HttpLocalRateLimit = decoded(any, at, problems)?;
    let idle = HttpLocalRateLimit {
        stat_prefix: f.stat_prefix.clone(),
        ..HttpLocalRateLimit::default()
    };
    if f != idle {
        let reason = "rate limits: a local rate limit configured in the connection manager is not implemented (kuma-cp configures it per route)";
        problems.push((at.to_string(), reason.into()));
        return None;
    }
    Some(HttpFilter::LocalRateLimit)
}

/// A fault filter wrapped in kuma-cp's matcher: skipped where a predicate of the matcher
/// holds (the deprecated `matcher` is refused by the field guard).
fn with_matcher(any: &Any, at: &str, problems: &mut Vec<Problem>) -> Option<Fault> {
    let w: ExtensionWithMatcher = decoded(any, at, problems)?;
    let before = problems.len();
    let skip = match &w.xds_matcher {
        Some(m) => skip_predicate(m, &format!("{at}.xds_matcher"), problems),
        None => None,
    };
    let inner = w
        .extension_config
        .as_ref()
        .and_then(|c| c.typed_config.as_ref());
    let iat = format!("{at}.extension_config.typed_config");
    let fault = match inner {
        Some(any) if type_of(any) == HTTP_FAULT => {
            fault(any, skip, &format!("{iat}({HTTP_FAULT})"), problems)
        }
        other => {
            let found = other.map(type_of).unwrap_or("nothing");
            let reason = format!(
                "only a fault filter ({HTTP_FAULT}) is implemented behind a matcher, found {found}"
            );
            problems.push((iat, reason));
            None
        }
    };
    fault.filter(|_| problems.len() == before)
}

/// The predicate for which an `ExtensionWithMatcher`'s matcher skips its filter: each
/// matcher's action must be a `SkipFilter` (so one that holds skips), with no `on_no_match`.
fn skip_predicate(
    m: &xds_pb::Matcher,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<RbacPredicate> {
    use xds_pb::matcher::on_match::OnMatch as O;
    use xds_pb::matcher::MatcherType;
    if m.on_no_match.is_some() {
        let reason = "an on_no_match is not implemented in a filter's matcher";
        problems.push((format!("{at}.on_no_match"), reason.into()));
    }
    let list = match &m.matcher_type {
        Some(MatcherType::MatcherList(list)) => list.matchers.as_slice(),
        Some(MatcherType::MatcherTree(_)) => {
            let reason = "only a matcher_list is implemented (not a matcher_tree)";
            problems.push((format!("{at}.matcher_tree"), reason.into()));
            return None;
        }
        None => &[],
    };
    let mut predicates = Vec::new();
    for (i, fm) in list.iter().enumerate() {
        let mat = format!("{at}.matcher_list.matchers[{i}]");
        let action = fm.on_match.as_ref().and_then(|o| match &o.on_match {
            Some(O::Action(a)) => a.typed_config.as_ref(),
            _ => None,
        });
        if action.is_none_or(|a| type_of(a) != SKIP_FILTER) {
            let reason = format!("only the {SKIP_FILTER} action is implemented");
            problems.push((format!("{mat}.on_match"), reason));
            continue;
        }
        match &fm.predicate {
            Some(p) => predicates.extend(crate::rbac::predicate(
                p,
                &format!("{mat}.predicate"),
                problems,
            )),
            None => problems.push((format!("{mat}.predicate"), "required".into())),
        }
    }
    match predicates.len() {
        0 => None,
        1 => predicates.pop(),
        _ => Some(RbacPredicate::Or(predicates)),
    }
}

/// A fault filter's delay and abort (the guard refuses its other fields).
fn fault(
    any: &Any,
    skip: Option<RbacPredicate>,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<Fault> {
    use fault_common_pb::fault_delay::FaultDelaySecifier as D;
    use fault_pb::fault_abort::ErrorType as E;
    let f: fault_pb::HttpFault = decoded(any, at, problems)?;
    let before = problems.len();
    let delay = f.delay.as_ref().and_then(|d| {
        let dat = format!("{at}.delay");
        let percentage = share(
            d.percentage.as_ref(),
            &format!("{dat}.percentage"),
            problems,
        );
        match &d.fault_delay_secifier {
            Some(D::FixedDelay(fixed)) => Some(FaultDelay {
                fixed: crate::translate::duration(fixed),
                percentage: percentage?,
            }),
            _ => {
                let reason = "only a fixed_delay is implemented (not a header_delay)";
                problems.push((dat, reason.into()));
                None
            }
        }
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let aat = format!("{at}.abort");
        let percentage = share(
            a.percentage.as_ref(),
            &format!("{aat}.percentage"),
            problems,
        );
        match a.error_type {
            Some(E::HttpStatus(status @ 200..=599)) => Some(FaultAbort {
                status: status as u16,
                percentage: percentage?,
            }),
            Some(E::HttpStatus(other)) => {
                let reason = format!("{other} is not an HTTP status Envoy answers (200 to 599)");
                problems.push((format!("{aat}.http_status"), reason));
                None
            }
            _ => {
                let reason =
                    "only an http_status abort is implemented (not grpc_status or header_abort)";
                problems.push((aat, reason.into()));
                None
            }
        }
    });
    let headers = f
        .headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| {
            let hat = format!("{at}.headers[{i}]");
            if h.name.starts_with(':') {
                let reason = "a fault filter's header match on a pseudo-header is not implemented";
                problems.push((format!("{hat}.name"), reason.into()));
                return None;
            }
            let value = crate::routes::header_value(h, &hat, problems)?;
            Some(HeaderMatch {
                name: h.name.to_ascii_lowercase(),
                value,
            })
        })
        .collect();
    (problems.len() == before).then_some(Fault {
        skip,
        headers,
        delay,
        abort,
    })
}

/// A `FractionalPercent` (unset: Envoy's 0 of 100).
fn share(
    p: Option<&type_pb::FractionalPercent>,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<Share> {
    use type_pb::fractional_percent::DenominatorType as T;
    let Some(p) = p else {
        return Some(Share {
            numerator: 0,
            denominator: 100,
        });
    };
    let denominator = match T::try_from(p.denominator) {
        Ok(T::Hundred) => 100,
        Ok(T::TenThousand) => 10_000,
        Ok(T::Million) => 1_000_000,
        Err(_) => {
            let reason = format!("unknown denominator {}", p.denominator);
            problems.push((format!("{at}.denominator"), reason));
            return None;
        }
    };
    Some(Share {
        numerator: p.numerator,
        denominator,
    })
}

/// A runtime-keyed share (`filter_enabled`, `filter_enforced`) at `at`: its default value,
/// the key unset or kuma-cp's; unset: none (Envoy's default for both).
fn runtime_share(
    p: Option<&core_pb::RuntimeFractionalPercent>,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<Share> {
    let Some(p) = p else {
        return Some(Share {
            numerator: 0,
            denominator: 100,
        });
    };
    if !p.runtime_key.is_empty() && !KUMA_RUNTIME_KEYS.contains(&p.runtime_key.as_str()) {
        let reason = format!(
            "runtime key {:?}: only kuma-cp's keys, at their default values, are implemented",
            p.runtime_key
        );
        problems.push((format!("{at}.runtime_key"), reason));
        return None;
    }
    share(
        p.default_value.as_ref(),
        &format!("{at}.default_value"),
        problems,
    )
}

/// A token bucket at `at`: at least one token, a fill interval of at least 50 ms (Envoy's
/// validation), one token per fill when unset.
fn bucket(
    b: Option<&type_pb::TokenBucket>,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<TokenBucket> {
    let Some(b) = b else {
        problems.push((at.to_string(), "a token bucket is required".into()));
        return None;
    };
    let fill_interval = b
        .fill_interval
        .as_ref()
        .map(crate::translate::duration)
        .unwrap_or_default();
    let tokens_per_fill = b.tokens_per_fill.as_ref().map_or(1, |t| t.value);
    let mut ok = true;
    if b.max_tokens == 0 {
        problems.push((format!("{at}.max_tokens"), "must be at least 1".into()));
        ok = false;
    }
    if tokens_per_fill == 0 {
        problems.push((format!("{at}.tokens_per_fill"), "must be at least 1".into()));
        ok = false;
    }
    if fill_interval < MIN_FILL_INTERVAL {
        problems.push((
            format!("{at}.fill_interval"),
            "must be at least 50ms".into(),
        ));
        ok = false;
    }
    ok.then_some(TokenBucket {
        max_tokens: b.max_tokens,
        tokens_per_fill,
        fill_interval,
    })
}

/// A route's `local_ratelimit` config (kuma-cp's MeshRateLimit `local.http`) in `any` at
/// `at`.
pub(crate) fn route_rate_limit(
    any: &Any,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<LocalRateLimit> {
    use core_pb::header_value_option::HeaderAppendAction as A;
    if type_of(any) != HTTP_LOCAL_RATE_LIMIT {
        let reason = format!("only {HTTP_LOCAL_RATE_LIMIT} is implemented here");
        problems.push((at.to_string(), reason));
        return None;
    }
    let f: HttpLocalRateLimit = decoded(any, at, problems)?;
    let before = problems.len();
    let bucket = bucket(
        f.token_bucket.as_ref(),
        &format!("{at}.token_bucket"),
        problems,
    );
    let enabled = runtime_share(
        f.filter_enabled.as_ref(),
        &format!("{at}.filter_enabled"),
        problems,
    );
    let enforced = runtime_share(
        f.filter_enforced.as_ref(),
        &format!("{at}.filter_enforced"),
        problems,
    );
    let status = match f.status.as_ref().map(|s| s.code) {
        None | Some(0) => 429,
        // Envoy refuses a status below 400 here.
        Some(code @ 400..=599) => code as u16,
        Some(other) => {
            let reason = format!(
                "{other} is not a status Envoy answers a limited request with (400 to 599)"
            );
            problems.push((format!("{at}.status.code"), reason));
            429
        }
    };
    let mut response_headers = HeaderFilter::default();
    for (i, option) in f.response_headers_to_add.iter().enumerate() {
        let hat = format!("{at}.response_headers_to_add[{i}]");
        let Some(h) = &option.header else {
            problems.push((format!("{hat}.header"), "required".into()));
            continue;
        };
        let pair = (h.key.to_ascii_lowercase(), h.value.clone());
        match A::try_from(option.append_action) {
            Ok(A::OverwriteIfExistsOrAdd) => response_headers.set.push(pair),
            Ok(A::AppendIfExistsOrAdd) => response_headers.add.push(pair),
            _ => {
                let reason =
                    "only APPEND_IF_EXISTS_OR_ADD and OVERWRITE_IF_EXISTS_OR_ADD are implemented";
                problems.push((format!("{hat}.append_action"), reason.into()));
            }
        }
    }
    if problems.len() > before {
        return None;
    }
    Some(LocalRateLimit {
        bucket: bucket?,
        enabled: enabled?,
        enforced: enforced?,
        status,
        response_headers,
    })
}

/// The network `local_ratelimit` filter in `any` at `at`: its bucket of connections.
pub(crate) fn connection_rate_limit(
    any: &Any,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<TokenBucket> {
    let f: NetworkLocalRateLimit = decoded(any, at, problems)?;
    bucket(
        f.token_bucket.as_ref(),
        &format!("{at}.token_bucket"),
        problems,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_json_resource;

    fn any(json: serde_json::Value) -> Any {
        let type_url = json["@type"].as_str().unwrap().to_string();
        let mut body = json.clone();
        body.as_object_mut().unwrap().remove("@type");
        let decoded = decode_json_resource(&type_url, &body).unwrap();
        Any {
            type_url,
            value: decoded.value,
        }
    }

    fn skip_spiffe_prefix(prefix: &str) -> serde_json::Value {
        serde_json::json!({"matcherList": {"matchers": [{
            "onMatch": {"action": {"name": "skip", "typedConfig": {
                "@type": format!("type.googleapis.com/{SKIP_FILTER}")}}},
            "predicate": {"notMatcher": {"singlePredicate": {
                "input": {"name": "envoy.matching.inputs.uri_san", "typedConfig": {
                    "@type": "type.googleapis.com/envoy.extensions.matching.common_inputs.ssl.v3.UriSanInput"}},
                "valueMatch": {"prefix": prefix}}}}
        }]}})
    }

    #[test]
    fn kumas_faults_translate_with_their_skip_matcher() {
        let fault = serde_json::json!({
            "@type": format!("type.googleapis.com/{HTTP_FAULT}"),
            "abort": {"httpStatus": 500, "percentage": {"denominator": "TEN_THOUSAND", "numerator": 250}},
            "delay": {"fixedDelay": "5s", "percentage": {"numerator": 5}},
        });
        let wrapped = any(serde_json::json!({
            "@type": format!("type.googleapis.com/{EXTENSION_WITH_MATCHER}"),
            "extensionConfig": {"name": "envoy.filters.http.fault", "typedConfig": fault},
            "xdsMatcher": skip_spiffe_prefix("spiffe://default"),
        }));
        let mut problems = Vec::new();
        let Some(Some(HttpFilter::Fault(f))) = http_filter(&wrapped, "f", &mut problems) else {
            panic!("{problems:?}");
        };
        assert_eq!(
            f.abort,
            Some(FaultAbort {
                status: 500,
                percentage: Share {
                    numerator: 250,
                    denominator: 10_000
                }
            })
        );
        assert_eq!(
            f.delay.as_ref().map(|d| d.fixed),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            f.delay.map(|d| d.percentage),
            Some(Share {
                numerator: 5,
                denominator: 100
            })
        );
        assert!(
            matches!(f.skip, Some(RbacPredicate::Not(_))),
            "{:?}",
            f.skip
        );
    }

    #[test]
    fn fault_and_limit_values_bearing_cannot_serve_are_problems_by_path() {
        let mut problems = Vec::new();
        let grpc = any(serde_json::json!({
            "@type": format!("type.googleapis.com/{HTTP_FAULT}"),
            "abort": {"grpcStatus": 14, "percentage": {"numerator": 5}},
        }));
        assert_eq!(http_filter(&grpc, "f", &mut problems), Some(None));
        assert_eq!(problems[0].0, "f.abort");
        problems.clear();
        let limit = any(serde_json::json!({
            "@type": format!("type.googleapis.com/{HTTP_LOCAL_RATE_LIMIT}"),
            "statPrefix": "rate_limit",
            "tokenBucket": {"maxTokens": 5, "tokensPerFill": 5, "fillInterval": "0.010s"},
            "filterEnabled": {"defaultValue": {"numerator": 100}, "runtimeKey": "mine"},
        }));
        assert_eq!(route_rate_limit(&limit, "r", &mut problems), None);
        let paths: Vec<_> = problems.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(
            paths,
            [
                "r.token_bucket.fill_interval",
                "r.filter_enabled.runtime_key"
            ]
        );
    }

    #[test]
    fn kumas_route_rate_limit_translates() {
        let limit = any(serde_json::json!({
            "@type": format!("type.googleapis.com/{HTTP_LOCAL_RATE_LIMIT}"),
            "statPrefix": "rate_limit",
            "status": {"code": "Locked"},
            "tokenBucket": {"maxTokens": 5, "tokensPerFill": 5, "fillInterval": "10s"},
            "filterEnabled": {"defaultValue": {"numerator": 100}, "runtimeKey": "local_rate_limit_enabled"},
            "filterEnforced": {"defaultValue": {"numerator": 100}, "runtimeKey": "local_rate_limit_enforced"},
            "responseHeadersToAdd": [{"appendAction": "OVERWRITE_IF_EXISTS_OR_ADD",
                "header": {"key": "x-kuma-rate-limited", "value": "true"}}],
        }));
        let mut problems = Vec::new();
        let l = route_rate_limit(&limit, "r", &mut problems).expect("translated");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(l.status, 423);
        assert_eq!(l.enabled, Share::ALL);
        assert_eq!(l.enforced, Share::ALL);
        assert_eq!(
            l.bucket,
            TokenBucket {
                max_tokens: 5,
                tokens_per_fill: 5,
                fill_interval: Duration::from_secs(10)
            }
        );
        assert_eq!(
            l.response_headers.set,
            [("x-kuma-rate-limited".to_string(), "true".to_string())]
        );
    }
}

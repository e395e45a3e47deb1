//! A route's `retry_policy` (kuma-cp's rendering of MeshRetry's `http` section, the default
//! `mesh-retry-all-default` policy on every HTTP route included) into ProxyConfig's
//! [`RetryPolicy`]. The fields guard (`fields.rs`) has refused every field not read here;
//! a `retry_on` condition Bearing does not act on is a problem naming it.

use std::time::Duration;

use bearing_proxy_config::{
    HeaderMatch, RetryOn, RetryPolicy, ValueMatch, GRPC_CANCELLED, GRPC_DEADLINE_EXCEEDED,
    GRPC_INTERNAL, GRPC_RESOURCE_EXHAUSTED, GRPC_UNAVAILABLE,
};
use envoy_types::pb::envoy::config::route::v3 as route_pb;

use crate::routes::Problem;
use crate::translate::duration;

/// The conditions of `retry_on` Bearing acts on (Envoy's names).
const CONDITIONS: &str = "5xx, gateway-error, reset, connect-failure, refused-stream, \
     retriable-4xx, retriable-status-codes, retriable-headers, cancelled, deadline-exceeded, \
     internal, resource-exhausted, unavailable";

/// Translates the retry policy at `at`; problems are pushed to `problems`.
pub(crate) fn retry_policy(
    policy: &route_pb::RetryPolicy,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<RetryPolicy> {
    let before = problems.len();
    let mut on = RetryOn::default();
    let (mut status_codes, mut retriable_headers) = (false, false);
    for condition in policy.retry_on.split(',').map(str::trim) {
        match condition {
            "" => {}
            "5xx" => on.server_error = true,
            "gateway-error" => on.gateway_error = true,
            "reset" => on.reset = true,
            "connect-failure" => on.connect_failure = true,
            "refused-stream" => on.refused_stream = true,
            // Envoy's one retriable 4xx: 409 Conflict.
            "retriable-4xx" => on.statuses.push(409),
            "retriable-status-codes" => status_codes = true,
            "retriable-headers" => retriable_headers = true,
            "cancelled" => on.grpc_statuses.push(GRPC_CANCELLED),
            "deadline-exceeded" => on.grpc_statuses.push(GRPC_DEADLINE_EXCEEDED),
            "internal" => on.grpc_statuses.push(GRPC_INTERNAL),
            "resource-exhausted" => on.grpc_statuses.push(GRPC_RESOURCE_EXHAUSTED),
            "unavailable" => on.grpc_statuses.push(GRPC_UNAVAILABLE),
            other => problems.push((
                format!("{at}.retry_on"),
                format!("retry condition {other:?} is not implemented (Bearing retries on {CONDITIONS})"),
            )),
        }
    }
    if status_codes {
        for (i, code) in policy.retriable_status_codes.iter().enumerate() {
            match u16::try_from(*code)
                .ok()
                .filter(|c| (100..=599).contains(c))
            {
                Some(c) => on.statuses.push(c),
                None => problems.push((
                    format!("{at}.retriable_status_codes[{i}]"),
                    format!("{code} is not an HTTP status (100-599)"),
                )),
            }
        }
    } else if !policy.retriable_status_codes.is_empty() {
        // Envoy reads the codes only under that condition.
        problems.push((
            format!("{at}.retriable_status_codes"),
            "status codes without the retry condition \"retriable-status-codes\"".into(),
        ));
    }
    if retriable_headers {
        on.headers = header_matches(
            &policy.retriable_headers,
            &format!("{at}.retriable_headers"),
            problems,
        );
    } else if !policy.retriable_headers.is_empty() {
        // Envoy reads them only under that condition.
        problems.push((
            format!("{at}.retriable_headers"),
            "headers without the retry condition \"retriable-headers\"".into(),
        ));
    }
    let request_headers = header_matches(
        &policy.retriable_request_headers,
        &format!("{at}.retriable_request_headers"),
        problems,
    );
    on.statuses.sort_unstable();
    on.statuses.dedup();
    on.grpc_statuses.sort_unstable();
    on.grpc_statuses.dedup();
    let back_off = policy.retry_back_off.as_ref();
    let base = back_off
        .and_then(|b| b.base_interval.as_ref())
        .map_or(RetryPolicy::DEFAULT_BACK_OFF_BASE, duration);
    if base.is_zero() {
        // Envoy's validation: greater than zero.
        problems.push((
            format!("{at}.retry_back_off.base_interval"),
            "must be greater than zero".into(),
        ));
    }
    let max = back_off
        .and_then(|b| b.max_interval.as_ref())
        .map_or(base.saturating_mul(10), duration);
    if max < base {
        problems.push((
            format!("{at}.retry_back_off.max_interval"),
            format!("{max:?} is below base_interval {base:?}"),
        ));
    }
    if problems.len() > before {
        return None;
    }
    Some(RetryPolicy {
        on,
        // Envoy's default: one retry.
        num_retries: policy.num_retries.map_or(1, |n| n.value),
        per_try_timeout: policy
            .per_try_timeout
            .as_ref()
            .map(duration)
            .filter(|d| *d != Duration::ZERO),
        back_off_base: base,
        back_off_max: max,
        request_headers,
    })
}

/// A retry policy's header matchers at `at` (`retriable_headers`, `retriable_request_headers`):
/// `:method` the only pseudo-header, no regular expression (the runtime evaluates them
/// without compiling one).
fn header_matches(
    matchers: &[route_pb::HeaderMatcher],
    at: &str,
    problems: &mut Vec<Problem>,
) -> Vec<HeaderMatch> {
    let mut out = Vec::new();
    for (i, h) in matchers.iter().enumerate() {
        let hat = format!("{at}[{i}]");
        let name = h.name.to_ascii_lowercase();
        if name.starts_with(':') && name != ":method" {
            let reason = "of the pseudo-headers only `:method` is implemented in a retry policy";
            problems.push((format!("{hat}.name"), reason.into()));
            continue;
        }
        match crate::routes::header_value(h, &hat, problems) {
            Some(ValueMatch::Regex(_)) => problems.push((
                hat,
                "a regular expression in a retry policy's header match is not implemented".into(),
            )),
            Some(value) => out.push(HeaderMatch { name, value }),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};

    fn millis(ms: i32) -> Option<PbDuration> {
        Some(PbDuration {
            seconds: 0,
            nanos: ms * 1_000_000,
        })
    }

    /// kuma-cp 2.14's rendering of its default MeshRetry (`mesh-retry-all-default`) on a
    /// route of `protocol` (its `retry_on` is `HttpRetryOnDefault` or `GrpcRetryOnDefault`
    /// of Kuma's `meshretry/plugin/xds/configurer.go`).
    fn kuma_default(retry_on: &str) -> route_pb::RetryPolicy {
        route_pb::RetryPolicy {
            retry_on: retry_on.into(),
            num_retries: Some(UInt32Value { value: 5 }),
            per_try_timeout: Some(PbDuration {
                seconds: 16,
                nanos: 0,
            }),
            retry_back_off: Some(route_pb::retry_policy::RetryBackOff {
                base_interval: millis(25),
                max_interval: millis(250),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn kumas_default_retry_policies_translate() {
        let mut problems = Vec::new();
        let http = kuma_default("gateway-error,connect-failure,refused-stream");
        let p = retry_policy(&http, "r", &mut problems);
        assert_eq!(p, Some(RetryPolicy::kuma_default_http()), "{problems:?}");
        let grpc = kuma_default(
            "cancelled,connect-failure,gateway-error,refused-stream,reset,resource-exhausted,unavailable",
        );
        let p = retry_policy(&grpc, "r", &mut problems);
        assert_eq!(p, Some(RetryPolicy::kuma_default_grpc()), "{problems:?}");
        let every_grpc = route_pb::RetryPolicy {
            retry_on: "unavailable,internal,deadline-exceeded,cancelled,resource-exhausted".into(),
            ..Default::default()
        };
        let p = retry_policy(&every_grpc, "r", &mut problems).expect("translated");
        assert_eq!(p.on.grpc_statuses, [1, 4, 8, 13, 14]);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn envoys_defaults_fill_what_is_not_set() {
        let mut problems = Vec::new();
        let bare = route_pb::RetryPolicy {
            retry_on: "5xx,retriable-4xx,retriable-status-codes".into(),
            retriable_status_codes: vec![429, 409],
            ..Default::default()
        };
        let p = retry_policy(&bare, "r", &mut problems).expect("translated");
        assert_eq!(p.num_retries, 1);
        assert_eq!(p.per_try_timeout, None);
        assert_eq!(p.back_off_base, Duration::from_millis(25));
        assert_eq!(p.back_off_max, Duration::from_millis(250));
        assert!(p.on.server_error);
        assert_eq!(p.on.statuses, [409, 429]);
    }

    #[test]
    fn what_bearing_cannot_retry_on_is_named() {
        let mut problems = Vec::new();
        let unknown = route_pb::RetryPolicy {
            retry_on: "envoy-ratelimited,connect-failure,http3-post-connect-failure".into(),
            ..Default::default()
        };
        assert!(retry_policy(&unknown, "r", &mut problems).is_none());
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["r.retry_on", "r.retry_on"]);
        assert!(
            problems[0].1.contains("\"envoy-ratelimited\""),
            "{problems:?}"
        );
        assert!(
            problems[1].1.contains("\"http3-post-connect-failure\""),
            "{problems:?}"
        );

        let mut problems = Vec::new();
        let codes_alone = route_pb::RetryPolicy {
            retry_on: "5xx".into(),
            retriable_status_codes: vec![418],
            retry_back_off: Some(route_pb::retry_policy::RetryBackOff {
                base_interval: millis(100),
                max_interval: millis(50),
            }),
            ..Default::default()
        };
        assert!(retry_policy(&codes_alone, "r", &mut problems).is_none());
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            ["r.retriable_status_codes", "r.retry_back_off.max_interval"]
        );
    }

    /// kuma-cp's MeshRetry with `retryOn: [5xx, GET]`, `retriableRequestHeaders` and
    /// `retriableResponseHeaders`: the methods and request headers gate the retries, the
    /// response headers (under `retriable-headers`) ask for them; a regular expression or
    /// another pseudo-header there is NACKed by path.
    #[test]
    fn kumas_retriable_headers_translate() {
        let matcher = |name: &str, exact: &str| {
            route_pb::HeaderMatcher {
            name: name.into(),
            header_match_specifier: Some(
                route_pb::header_matcher::HeaderMatchSpecifier::StringMatch(
                    envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher {
                        match_pattern: Some(
                            envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Exact(
                                exact.into(),
                            ),
                        ),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }
        };
        let policy = route_pb::RetryPolicy {
            retry_on: "5xx,retriable-headers".into(),
            retriable_request_headers: vec![matcher(":method", "GET"), matcher("x-retry", "yes")],
            retriable_headers: vec![matcher("x-upstream-retry", "true")],
            ..Default::default()
        };
        let mut problems = Vec::new();
        let p = retry_policy(&policy, "r", &mut problems).expect("translated");
        assert!(problems.is_empty(), "{problems:?}");
        let exact = |name: &str, v: &str| HeaderMatch {
            name: name.into(),
            value: ValueMatch::Exact(v.into()),
        };
        assert_eq!(
            p.request_headers,
            [exact(":method", "GET"), exact("x-retry", "yes")]
        );
        assert_eq!(p.on.headers, [exact("x-upstream-retry", "true")]);
        let regex = route_pb::HeaderMatcher {
            name: "x".into(),
            header_match_specifier: Some(
                route_pb::header_matcher::HeaderMatchSpecifier::StringMatch(
                    envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher {
                        match_pattern: Some(
                            envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::SafeRegex(
                                envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                                    regex: "a.*".into(),
                                    ..Default::default()
                                },
                            ),
                        ),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        };
        let refused = route_pb::RetryPolicy {
            retriable_request_headers: vec![regex, matcher(":path", "/")],
            ..policy
        };
        let mut problems = Vec::new();
        assert!(retry_policy(&refused, "r", &mut problems).is_none());
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "r.retriable_request_headers[0]",
                "r.retriable_request_headers[1].name"
            ]
        );
    }
}

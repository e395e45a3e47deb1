//! A route's `retry_policy` (kuma-cp's rendering of MeshRetry's `http` section, the default
//! `mesh-retry-all-default` policy on every HTTP route included) into ProxyConfig's
//! [`RetryPolicy`]. The fields guard (`fields.rs`) has refused every field not read here;
//! a `retry_on` condition Bearing does not act on is a problem naming it.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use bearing_proxy_config::{
    HeaderMatch, HostSelection, RateLimitedBackOff, ResetFormat, ResetHeader, RetryOn, RetryPolicy,
    ValueMatch, WholeRegex, GRPC_CANCELLED, GRPC_DEADLINE_EXCEEDED, GRPC_INTERNAL,
    GRPC_RESOURCE_EXHAUSTED, GRPC_UNAVAILABLE,
};
use envoy_types::pb::envoy::config::route::v3 as route_pb;
use envoy_types::pb::envoy::extensions::retry::host::omit_host_metadata::v3::OmitHostMetadataConfig;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::google::protobuf::value::Kind;
use prost::Message;

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
    let host_selection = host_selection(policy, at, problems);
    let rate_limited = policy
        .rate_limited_retry_back_off
        .as_ref()
        .and_then(|r| rate_limited(r, &format!("{at}.rate_limited_retry_back_off"), problems));
    let previous_priorities = policy
        .retry_priority
        .as_ref()
        .and_then(|r| retry_priority(r, &format!("{at}.retry_priority"), problems));
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
        host_selection: host_selection.map(Box::new),
        rate_limited: rate_limited.map(Box::new),
        previous_priorities,
    })
}

/// The type of kuma-cp's `OmitPreviousPriorities` retry priority.
const PREVIOUS_PRIORITIES: &str =
    "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig";

/// The `update_frequency` of a `previous_priorities` retry priority at `at` (found by its
/// config's type, as Envoy finds the factory; it must be above 0, as Envoy validates it);
/// another retry priority is a problem.
fn retry_priority(
    priority: &route_pb::retry_policy::RetryPriority,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<NonZeroU32> {
    use route_pb::retry_policy::retry_priority::ConfigType;
    let Some(ConfigType::TypedConfig(any)) = &priority.config_type else {
        problems.push((at.into(), "a retry priority without a typed_config".into()));
        return None;
    };
    let type_name = any.type_url.rsplit('/').next().unwrap_or(&any.type_url);
    if type_name != PREVIOUS_PRIORITIES {
        problems.push((
            format!("{at}.typed_config"),
            format!("retry priority {type_name} is not implemented (Bearing implements previous_priorities)"),
        ));
        return None;
    }
    match PreviousPrioritiesConfig::decode(any.value.as_slice()) {
        Ok(config) => match u32::try_from(config.update_frequency).map(NonZeroU32::new) {
            Ok(Some(n)) => Some(n),
            _ => {
                problems.push((
                    format!("{at}.typed_config.update_frequency"),
                    format!("{} must be greater than 0", config.update_frequency),
                ));
                None
            }
        },
        Err(e) => {
            problems.push((at.into(), format!("{type_name} does not decode: {e}")));
            None
        }
    }
}

/// The type of kuma-cp's `OmitPreviousHosts` predicate.
const PREVIOUS_HOSTS: &str = "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";
/// The type of kuma-cp's `OmitHostsWithTags` predicate.
const OMIT_HOST_METADATA: &str =
    "envoy.extensions.retry.host.omit_host_metadata.v3.OmitHostMetadataConfig";

/// The policy's retry host predicates (each by its config's type, as Envoy finds its
/// factory) with `host_selection_retry_max_attempts`; `None` without a predicate, where
/// Envoy's re-picks never happen and the attempts count has no effect.
fn host_selection(
    policy: &route_pb::RetryPolicy,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<HostSelection> {
    use route_pb::retry_policy::retry_host_predicate::ConfigType;
    let max_attempts = match policy.host_selection_retry_max_attempts {
        // Envoy's default: one more pick.
        0 => 1,
        n => match u32::try_from(n) {
            Ok(n) => n,
            Err(_) => {
                problems.push((
                    format!("{at}.host_selection_retry_max_attempts"),
                    format!("{n} is not a count of attempts (0 to {})", u32::MAX),
                ));
                1
            }
        },
    };
    let mut selection = HostSelection {
        max_attempts,
        ..HostSelection::default()
    };
    for (i, predicate) in policy.retry_host_predicate.iter().enumerate() {
        let pat = format!("{at}.retry_host_predicate[{i}]");
        let Some(ConfigType::TypedConfig(any)) = &predicate.config_type else {
            problems.push((pat, "a retry host predicate without a typed_config".into()));
            continue;
        };
        let type_name = any.type_url.rsplit('/').next().unwrap_or(&any.type_url);
        match type_name {
            PREVIOUS_HOSTS => selection.omit_previous = true,
            OMIT_HOST_METADATA => match OmitHostMetadataConfig::decode(any.value.as_slice()) {
                Ok(config) => {
                    let at = format!("{pat}.typed_config.metadata_match");
                    selection
                        .omit_tags
                        .push(lb_labels(config.metadata_match.as_ref(), &at, problems));
                }
                Err(e) => problems.push((pat, format!("{type_name} does not decode: {e}"))),
            },
            other => problems.push((
                format!("{pat}.typed_config"),
                format!("retry host predicate {other} is not implemented (Bearing implements previous_hosts and omit_host_metadata)"),
            )),
        }
    }
    (!policy.retry_host_predicate.is_empty()).then_some(selection)
}

/// The `envoy.lb` labels of an `omit_host_metadata` predicate (other namespaces Envoy does
/// not read); only text values, as kuma-cp's tags are, since Bearing keeps endpoints' text
/// tags only.
fn lb_labels(
    metadata: Option<&envoy_types::pb::envoy::config::core::v3::Metadata>,
    at: &str,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let fields = metadata
        .and_then(|m| m.filter_metadata.get("envoy.lb"))
        .map(|s| &s.fields);
    for (key, value) in fields.into_iter().flatten() {
        match &value.kind {
            Some(Kind::StringValue(v)) => {
                labels.insert(key.clone(), v.clone());
            }
            _ => problems.push((
                format!("{at}.filter_metadata[\"envoy.lb\"][{key:?}]"),
                "only text values are implemented in an omit_host_metadata predicate".into(),
            )),
        }
    }
    labels
}

/// A rate-limited retry back-off at `at`, checked as Envoy validates it (reset headers
/// required, named; a positive `max_interval`, 300 s by default).
fn rate_limited(
    config: &route_pb::retry_policy::RateLimitedRetryBackOff,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<RateLimitedBackOff> {
    use route_pb::retry_policy::ResetHeaderFormat;
    let before = problems.len();
    if config.reset_headers.is_empty() {
        problems.push((
            format!("{at}.reset_headers"),
            "at least one reset header is required".into(),
        ));
    }
    let mut reset_headers = Vec::new();
    for (i, h) in config.reset_headers.iter().enumerate() {
        let name = h.name.to_ascii_lowercase();
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            problems.push((
                format!("{at}.reset_headers[{i}].name"),
                format!("{:?} is not a header name", h.name),
            ));
            continue;
        }
        let format = match ResetHeaderFormat::try_from(h.format) {
            Ok(ResetHeaderFormat::Seconds) => ResetFormat::Seconds,
            Ok(ResetHeaderFormat::UnixTimestamp) => ResetFormat::UnixTimestamp,
            Err(_) => {
                problems.push((
                    format!("{at}.reset_headers[{i}].format"),
                    format!("{} is not a reset header format", h.format),
                ));
                continue;
            }
        };
        reset_headers.push(ResetHeader { name, format });
    }
    let max_interval = config
        .max_interval
        .as_ref()
        .map_or(RateLimitedBackOff::DEFAULT_MAX_INTERVAL, duration);
    if max_interval.is_zero() {
        problems.push((
            format!("{at}.max_interval"),
            "must be greater than zero".into(),
        ));
    }
    (problems.len() == before).then_some(RateLimitedBackOff {
        reset_headers,
        max_interval,
    })
}

/// A retry policy's header matchers at `at` (`retriable_headers`, `retriable_request_headers`):
/// `:method` the only pseudo-header; a regular expression (kuma-cp's `RegularExpression`
/// header type) is compiled here, as the runtime evaluates the policy from the model.
fn header_matches(
    matchers: &[route_pb::HeaderMatcher],
    at: &str,
    problems: &mut Vec<Problem>,
) -> Box<[HeaderMatch]> {
    let mut out = Vec::new();
    for (i, h) in matchers.iter().enumerate() {
        let hat = format!("{at}[{i}]");
        let name = h.name.to_ascii_lowercase();
        if name.starts_with(':') && name != ":method" {
            let reason = "of the pseudo-headers only `:method` is implemented in a retry policy";
            problems.push((format!("{hat}.name"), reason.into()));
            continue;
        }
        let value = match crate::routes::header_value(h, &hat, problems) {
            // `header_value` checked it compiles as the routes' regular expressions do.
            Some(ValueMatch::Regex(pattern)) => match WholeRegex::new(&pattern) {
                Ok(re) => ValueMatch::Compiled(re),
                Err(e) => {
                    problems.push((hat, format!("invalid regular expression: {e}")));
                    continue;
                }
            },
            Some(value) => value,
            None => continue,
        };
        out.push(HeaderMatch { name, value });
    }
    out.into_boxed_slice()
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

    /// kuma-cp 2.14's MeshRetry `hostSelection` (`OmitPreviousHosts`, `OmitHostsWithTags`
    /// `{test: test}`), `hostSelectionMaxAttempts: 2` and `rateLimitedBackOff` (two reset
    /// headers, `maxInterval: 5s`), as its `http.listeners.golden.yaml` renders them.
    #[test]
    fn kumas_host_selection_and_rate_limited_back_off_translate() {
        use envoy_types::pb::envoy::config::core::v3::Metadata;
        use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
        use envoy_types::pb::google::protobuf::{Any, Struct, Value as PbValue};
        use route_pb::retry_policy::{
            retry_host_predicate::ConfigType, RateLimitedRetryBackOff, ResetHeader as PbReset,
            ResetHeaderFormat, RetryHostPredicate,
        };
        let any = |type_name: &str, value: Vec<u8>| {
            Some(ConfigType::TypedConfig(Any {
                type_url: format!("type.googleapis.com/{type_name}"),
                value,
            }))
        };
        let text = |v: &str| PbValue {
            kind: Some(Kind::StringValue(v.into())),
        };
        let tagged = OmitHostMetadataConfig {
            metadata_match: Some(Metadata {
                filter_metadata: [(
                    "envoy.lb".to_string(),
                    Struct {
                        fields: [("test".to_string(), text("test"))].into(),
                    },
                )]
                .into(),
                ..Default::default()
            }),
        };
        let policy = route_pb::RetryPolicy {
            retry_on: "5xx".into(),
            retry_host_predicate: vec![
                RetryHostPredicate {
                    name: "envoy.retry_host_predicates.previous_hosts".into(),
                    config_type: any(PREVIOUS_HOSTS, PreviousHostsPredicate {}.encode_to_vec()),
                },
                RetryHostPredicate {
                    name: "envoy.retry_host_predicates.omit_host_metadata".into(),
                    config_type: any(OMIT_HOST_METADATA, tagged.encode_to_vec()),
                },
            ],
            host_selection_retry_max_attempts: 2,
            rate_limited_retry_back_off: Some(RateLimitedRetryBackOff {
                reset_headers: vec![
                    PbReset {
                        name: "retry-after-http".into(),
                        format: ResetHeaderFormat::Seconds as i32,
                    },
                    PbReset {
                        name: "X-Retry-After-Http".into(),
                        format: ResetHeaderFormat::UnixTimestamp as i32,
                    },
                ],
                max_interval: Some(PbDuration {
                    seconds: 5,
                    nanos: 0,
                }),
            }),
            ..Default::default()
        };
        let mut problems = Vec::new();
        let p = retry_policy(&policy, "r", &mut problems).expect("translated");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            p.host_selection.as_deref(),
            Some(&HostSelection {
                omit_previous: true,
                omit_tags: vec![[("test".to_string(), "test".to_string())].into()],
                max_attempts: 2,
            })
        );
        assert!(p.reads_headers());
        assert_eq!(
            p.rate_limited.as_deref(),
            Some(&RateLimitedBackOff {
                reset_headers: vec![
                    ResetHeader {
                        name: "retry-after-http".into(),
                        format: ResetFormat::Seconds,
                    },
                    ResetHeader {
                        name: "x-retry-after-http".into(),
                        format: ResetFormat::UnixTimestamp,
                    },
                ],
                max_interval: Duration::from_secs(5),
            })
        );

        // Envoy's defaults: one more pick, 300 s at most; no predicate, no host selection.
        let defaults = route_pb::RetryPolicy {
            retry_host_predicate: policy.retry_host_predicate[..1].to_vec(),
            host_selection_retry_max_attempts: 0,
            rate_limited_retry_back_off: Some(RateLimitedRetryBackOff {
                max_interval: None,
                ..policy
                    .rate_limited_retry_back_off
                    .clone()
                    .unwrap_or_default()
            }),
            ..policy.clone()
        };
        let p = retry_policy(&defaults, "r", &mut problems).expect("translated");
        assert_eq!(p.host_selection.map(|s| s.max_attempts), Some(1));
        assert_eq!(
            p.rate_limited.map(|r| r.max_interval),
            Some(Duration::from_secs(300))
        );
        let bare = route_pb::RetryPolicy {
            retry_host_predicate: vec![],
            host_selection_retry_max_attempts: 3,
            rate_limited_retry_back_off: None,
            ..policy.clone()
        };
        let p = retry_policy(&bare, "r", &mut problems).expect("translated");
        assert!(p.host_selection.is_none() && !p.reads_headers());

        // What Bearing does not act on is named by path.
        let unknown = route_pb::RetryPolicy {
            retry_host_predicate: vec![RetryHostPredicate {
                name: "envoy.retry_host_predicates.omit_canary_hosts".into(),
                config_type: any(
                    "envoy.extensions.retry.host.omit_canary_hosts.v3.OmitCanaryHostsPredicate",
                    vec![],
                ),
            }],
            host_selection_retry_max_attempts: -1,
            rate_limited_retry_back_off: Some(RateLimitedRetryBackOff::default()),
            ..policy
        };
        assert!(retry_policy(&unknown, "r", &mut problems).is_none());
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "r.host_selection_retry_max_attempts",
                "r.retry_host_predicate[0].typed_config",
                "r.rate_limited_retry_back_off.reset_headers"
            ]
        );
    }

    /// kuma-cp 2.14's MeshRetry `hostSelection: [{predicate: OmitPreviousPriorities,
    /// updateFrequency: 2}]`: `previous_priorities` with its update frequency; a frequency of
    /// 0 (Envoy's validation refuses it) and another retry priority are NACKed by path.
    #[test]
    fn kumas_omit_previous_priorities_translates() {
        use route_pb::retry_policy::{retry_priority::ConfigType, RetryPriority};
        let priority = |type_name: &str, value: Vec<u8>| RetryPriority {
            name: "envoy.retry_priorities.previous_priorities".into(),
            config_type: Some(ConfigType::TypedConfig(
                envoy_types::pb::google::protobuf::Any {
                    type_url: format!("type.googleapis.com/{type_name}"),
                    value,
                },
            )),
        };
        let frequency = |n: i32| {
            let config = PreviousPrioritiesConfig {
                update_frequency: n,
            };
            priority(PREVIOUS_PRIORITIES, config.encode_to_vec())
        };
        let policy = |p: RetryPriority| route_pb::RetryPolicy {
            retry_on: "5xx".into(),
            retry_priority: Some(p),
            ..Default::default()
        };
        let mut problems = Vec::new();
        let p = retry_policy(&policy(frequency(2)), "r", &mut problems).expect("translated");
        assert_eq!(p.previous_priorities.map(NonZeroU32::get), Some(2));
        assert!(problems.is_empty(), "{problems:?}");
        for refused in [
            frequency(0),
            frequency(-1),
            priority(
                "envoy.config.retry.other_priority.OtherPriorityConfig",
                vec![],
            ),
        ] {
            assert!(retry_policy(&policy(refused), "r", &mut problems).is_none());
        }
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "r.retry_priority.typed_config.update_frequency",
                "r.retry_priority.typed_config.update_frequency",
                "r.retry_priority.typed_config",
            ]
        );
    }

    /// kuma-cp's MeshRetry with `retryOn: [5xx, GET]`, `retriableRequestHeaders` and
    /// `retriableResponseHeaders`: the methods and request headers gate the retries, the
    /// response headers (under `retriable-headers`) ask for them; a regular expression there
    /// (kuma-cp's `RegularExpression` type) is compiled to match whole values, as Envoy's RE2
    /// `safe_regex`; another pseudo-header or a pattern that does not compile is NACKed by path.
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
            *p.request_headers,
            [exact(":method", "GET"), exact("x-retry", "yes")]
        );
        assert_eq!(*p.on.headers, [exact("x-upstream-retry", "true")]);
        let regex = |name: &str, pattern: &str| {
            route_pb::HeaderMatcher {
            name: name.into(),
            header_match_specifier: Some(
                route_pb::header_matcher::HeaderMatchSpecifier::StringMatch(
                    envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher {
                        match_pattern: Some(
                            envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::SafeRegex(
                                envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                                    regex: pattern.into(),
                                    ..Default::default()
                                },
                            ),
                        ),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }
        };
        let by_regex = route_pb::RetryPolicy {
            retriable_request_headers: vec![regex("x-tenant", "team-(a|b)")],
            retriable_headers: vec![regex("x-upstream-retry", "tr?ue|1")],
            ..policy.clone()
        };
        let p = retry_policy(&by_regex, "r", &mut problems).expect("translated");
        assert!(problems.is_empty(), "{problems:?}");
        let values = |v: &'static str| move |_: &str| std::iter::once(v);
        // Whole values only, as RE2's full match.
        assert!(p.allows_request(values("team-b")));
        assert!(!p.allows_request(values("team-bc")));
        assert!(!p.allows_request(values("my-team-a")));
        assert!(p.retries_headers(values("1")));
        assert!(p.retries_headers(values("tue")));
        assert!(!p.retries_headers(values("true!")));
        assert!(!p.retries_headers(|_: &str| std::iter::empty()));
        assert!(p.reads_headers());
        let refused = route_pb::RetryPolicy {
            retriable_request_headers: vec![regex("x", "a(")],
            retriable_headers: vec![matcher(":path", "/")],
            ..policy
        };
        let mut problems = Vec::new();
        assert!(retry_policy(&refused, "r", &mut problems).is_none());
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "r.retriable_headers[0].name",
                "r.retriable_request_headers[0].string_match.safe_regex.regex",
            ]
        );
    }
}

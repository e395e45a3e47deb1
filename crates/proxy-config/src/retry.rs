//! A route's HTTP retry policy: when a request is sent again, how often, and how long each
//! attempt and the pause before it may take (Envoy's route `retry_policy`, as kuma-cp renders
//! MeshRetry's `http` section, its default policy included).

use serde::Serialize;
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use crate::HeaderMatch;

/// gRPC status `CANCELLED` (Envoy's retry condition `cancelled`).
pub const GRPC_CANCELLED: u32 = 1;
/// gRPC status `DEADLINE_EXCEEDED` (`deadline-exceeded`).
pub const GRPC_DEADLINE_EXCEEDED: u32 = 4;
/// gRPC status `RESOURCE_EXHAUSTED` (`resource-exhausted`).
pub const GRPC_RESOURCE_EXHAUSTED: u32 = 8;
/// gRPC status `INTERNAL` (`internal`).
pub const GRPC_INTERNAL: u32 = 13;
/// gRPC status `UNAVAILABLE` (`unavailable`).
pub const GRPC_UNAVAILABLE: u32 = 14;

/// When and how often a request a route forwards is tried again, as Envoy's `RetryPolicy`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RetryPolicy {
    /// What makes an attempt worth repeating.
    pub on: RetryOn,
    /// Further attempts after the first.
    pub num_retries: u32,
    /// Limit for one attempt's response head (`None`: only the request's own timeout); the
    /// request's timeout bounds every attempt together.
    #[serde(serialize_with = "super::opt_millis::serialize")]
    pub per_try_timeout: Option<Duration>,
    /// Pause before retry `n` (from 1): a random time below `base × (2ⁿ − 1)`, at most `max`.
    #[serde(serialize_with = "super::millis::serialize")]
    pub back_off_base: Duration,
    /// The longest pause between attempts.
    #[serde(serialize_with = "super::millis::serialize")]
    pub back_off_max: Duration,
    /// A request is retried only when it meets one of these (Envoy's
    /// `retriable_request_headers`: kuma-cp's MeshRetry `retryOn` methods as `:method` matches,
    /// and its `retriableRequestHeaders`); empty: any request. A regular expression here is
    /// `ValueMatch::Compiled`.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub request_headers: Box<[HeaderMatch]>,
    /// Which endpoints a retry avoids (Envoy's `retry_host_predicate` with
    /// `host_selection_retry_max_attempts`: kuma-cp's MeshRetry `hostSelection` and
    /// `hostSelectionMaxAttempts`); `None`: a retry takes the load balancer's pick as is.
    /// Boxed, as `rate_limited`: most routes have neither, and a route action stays small.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_selection: Option<Box<HostSelection>>,
    /// The pause a retriable response may ask for in its headers (Envoy's
    /// `rate_limited_retry_back_off`: kuma-cp's `rateLimitedBackOff`); `None`: always the
    /// exponential back-off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limited: Option<Box<RateLimitedBackOff>>,
    /// Envoy's `envoy.retry_priorities.previous_priorities` (kuma-cp's MeshRetry
    /// `OmitPreviousPriorities`) with its `update_frequency`: a retry draws its priority
    /// level with the levels already tried taken out of the load, recomputed every that many
    /// attempts; `None`: a retry draws from the cluster's own load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_priorities: Option<NonZeroU32>,
}

/// The endpoints a retry's host selection rejects, as Envoy's retry host predicates: the load
/// balancer picks again while a predicate rejects its pick, up to `max_attempts` times, and
/// the last pick serves when every one was rejected. The first attempt is never filtered.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct HostSelection {
    /// `envoy.retry_host_predicates.previous_hosts`: an endpoint this request already tried.
    pub omit_previous: bool,
    /// `envoy.retry_host_predicates.omit_host_metadata`, one label set per predicate: an
    /// endpoint whose `envoy.lb` tags hold every label of one (an empty set matches every
    /// endpoint, as Envoy's `metadataLabelMatch`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub omit_tags: Vec<BTreeMap<String, String>>,
    /// Picks after the first one a predicate rejected (Envoy's default 1).
    pub max_attempts: u32,
}

impl HostSelection {
    /// Whether an endpoint of `tags` is rejected by an `omit_host_metadata` predicate.
    pub fn omits_tags(&self, tags: &BTreeMap<String, String>) -> bool {
        self.omit_tags
            .iter()
            .any(|labels| labels.iter().all(|(k, v)| tags.get(k) == Some(v)))
    }
}

/// A pause a retriable response asks for (Envoy's `RateLimitedRetryBackOff`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RateLimitedBackOff {
    /// The headers read, in order; the first that gives an interval within `max_interval`
    /// sets the pause.
    pub reset_headers: Vec<ResetHeader>,
    /// The longest interval taken from a header; a longer one is ignored (Envoy's default
    /// 300 s).
    #[serde(serialize_with = "super::millis::serialize")]
    pub max_interval: Duration,
}

/// One header of a rate-limited back-off (`Retry-After`, `X-RateLimit-Reset`, ...).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ResetHeader {
    /// Its name, lowercase.
    pub name: String,
    /// How its value reads.
    pub format: ResetFormat,
}

/// How a reset header's value gives the interval (Envoy's `ResetHeaderFormat`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub enum ResetFormat {
    /// Seconds to wait.
    Seconds,
    /// The Unix time (seconds) to wait until.
    UnixTimestamp,
}

impl RateLimitedBackOff {
    /// Envoy's default `max_interval`.
    pub const DEFAULT_MAX_INTERVAL: Duration = Duration::from_secs(300);

    /// The interval a response asks for, as Envoy's `parseResetInterval`: the first reset
    /// header whose first value (`first(name)`) reads as a whole number of seconds, not over
    /// `max_interval`; `now_secs`: the Unix time now, for timestamps.
    pub fn interval<'v>(
        &self,
        first: impl Fn(&str) -> Option<&'v str>,
        now_secs: u64,
    ) -> Option<Duration> {
        self.reset_headers.iter().find_map(|h| {
            let value = first(&h.name)?;
            h.format
                .interval(value, now_secs)
                .filter(|d| *d <= self.max_interval)
        })
    }

    /// The pause for an `interval` a response asked for: Envoy's jittered lower bound, a
    /// random time from `interval` up to 1.5 × `interval` (whole milliseconds, `jitter` a
    /// random number); `None` for an interval of a millisecond or less (Envoy then takes its
    /// exponential back-off).
    pub fn pause(interval: Duration, jitter: u64) -> Option<Duration> {
        let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        (ms > 1).then(|| Duration::from_millis(jitter % (ms >> 1) + ms))
    }
}

impl ResetFormat {
    /// The interval `value` gives (absl's `SimpleAtoi` of a `u64`: surrounding whitespace and
    /// one `+` allowed); a timestamp in the past gives none.
    fn interval(self, value: &str, now_secs: u64) -> Option<Duration> {
        let digits = value.trim_ascii();
        let digits = digits.strip_prefix('+').unwrap_or(digits);
        if !digits.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u64 = digits.parse().ok()?;
        let seconds = match self {
            ResetFormat::Seconds => n,
            ResetFormat::UnixTimestamp => n.checked_sub(now_secs)?,
        };
        Some(Duration::from_secs(seconds))
    }
}

/// Envoy's `retry_on` conditions that Bearing honours.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RetryOn {
    /// `connect-failure`: no connection to the endpoint (refused, timed out, TLS failed).
    pub connect_failure: bool,
    /// `refused-stream`: an HTTP/2 endpoint refused the stream before processing it.
    pub refused_stream: bool,
    /// `reset`: the connection closed or reset before a response head came.
    pub reset: bool,
    /// `gateway-error`: a 502, 503 or 504 response, or no response head within the attempt's
    /// timeout (Envoy's own 504).
    pub gateway_error: bool,
    /// `5xx`: any 5xx response, a reset, a connect failure or an attempt's timeout.
    pub server_error: bool,
    /// `retriable-status-codes`: these response statuses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<u16>,
    /// Envoy's gRPC conditions (`cancelled`, `deadline-exceeded`, `internal`,
    /// `resource-exhausted`, `unavailable`): the `grpc-status` codes (1, 4, 13, 8, 14) that,
    /// in a response's headers (a trailers-only gRPC answer), ask for another attempt.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub grpc_statuses: Vec<u32>,
    /// `retriable-headers`: a response with a header meeting one of these (kuma-cp's
    /// `retriableResponseHeaders`). A regular expression here is `ValueMatch::Compiled`.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub headers: Box<[HeaderMatch]>,
}

impl RetryPolicy {
    /// Envoy's default back-off base (25 ms); the default maximum is ten times the base.
    pub const DEFAULT_BACK_OFF_BASE: Duration = Duration::from_millis(25);

    /// kuma-cp's rendering of the `http` section of the MeshRetry every mesh is created with
    /// (`mesh-retry-all-default`) on an HTTP route.
    pub fn kuma_default_http() -> RetryPolicy {
        RetryPolicy {
            on: RetryOn {
                connect_failure: true,
                refused_stream: true,
                gateway_error: true,
                ..RetryOn::default()
            },
            ..Self::kuma_default_terms()
        }
    }

    /// kuma-cp's rendering of the default MeshRetry's `grpc` section on a gRPC route: Kuma's
    /// gRPC conditions `cancelled,connect-failure,gateway-error,refused-stream,reset,
    /// resource-exhausted,unavailable`.
    pub fn kuma_default_grpc() -> RetryPolicy {
        RetryPolicy {
            on: RetryOn {
                connect_failure: true,
                refused_stream: true,
                gateway_error: true,
                reset: true,
                grpc_statuses: vec![GRPC_CANCELLED, GRPC_RESOURCE_EXHAUSTED, GRPC_UNAVAILABLE],
                ..RetryOn::default()
            },
            ..Self::kuma_default_terms()
        }
    }

    /// The default MeshRetry's counts and times, the same for HTTP and gRPC: 5 retries, 16 s
    /// per try, back-off from 25 ms up to 250 ms.
    fn kuma_default_terms() -> RetryPolicy {
        RetryPolicy {
            on: RetryOn::default(),
            num_retries: 5,
            per_try_timeout: Some(Duration::from_secs(16)),
            back_off_base: Self::DEFAULT_BACK_OFF_BASE,
            back_off_max: Duration::from_millis(250),
            request_headers: Box::default(),
            host_selection: None,
            rate_limited: None,
            previous_priorities: None,
        }
    }

    /// Whether the policy reads the request's or the responses' headers (its
    /// `request_headers`, `on.headers`, a rate-limited back-off's reset headers).
    pub fn reads_headers(&self) -> bool {
        !self.request_headers.is_empty()
            || !self.on.headers.is_empty()
            || self.rate_limited.is_some()
    }

    /// Whether a request is retried at all: it meets one of `request_headers` (any when there
    /// are none); `values(name)` gives each of its values of `name` (`:method` included).
    pub fn allows_request<'v, I: Iterator<Item = &'v str>>(
        &self,
        values: impl Fn(&str) -> I,
    ) -> bool {
        self.request_headers.is_empty() || self.request_headers.iter().any(|m| m.holds_in(&values))
    }

    /// Whether a response's headers ask for another attempt (`retriable-headers`).
    pub fn retries_headers<'v, I: Iterator<Item = &'v str>>(
        &self,
        values: impl Fn(&str) -> I,
    ) -> bool {
        self.on.headers.iter().any(|m| m.holds_in(&values))
    }

    /// Whether a response of `status` asks for another attempt; `grpc_status` gives the
    /// `grpc-status` of its headers, asked only when the policy has gRPC conditions.
    pub fn retries_response(&self, status: u16, grpc_status: impl FnOnce() -> Option<u32>) -> bool {
        let on = &self.on;
        (on.server_error && (500..600).contains(&status))
            || (on.gateway_error && matches!(status, 502..=504))
            || on.statuses.contains(&status)
            || (!on.grpc_statuses.is_empty()
                && grpc_status().is_some_and(|code| on.grpc_statuses.contains(&code)))
    }

    /// Whether a failed connect (or a fresh connection closed before the request went out)
    /// asks for another attempt.
    pub fn retries_connect_failure(&self) -> bool {
        self.on.connect_failure || self.on.server_error
    }

    /// Whether a connection closed or reset before any response asks for another attempt.
    pub fn retries_reset(&self) -> bool {
        self.on.reset || self.on.server_error
    }

    /// Whether an attempt with no response head within its timeout asks for another.
    pub fn retries_timeout(&self) -> bool {
        self.on.gateway_error || self.on.server_error
    }

    /// The longest pause before retry `n` (from 1), before jitter: `base × (2ⁿ − 1)`, at most
    /// the maximum.
    pub fn back_off_ceiling(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).map_or(u32::MAX, |f| f - 1);
        self.back_off_base
            .checked_mul(factor)
            .map_or(self.back_off_max, |d| d.min(self.back_off_max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kuma_default() -> RetryPolicy {
        RetryPolicy::kuma_default_http()
    }

    fn retries_status(p: &RetryPolicy, status: u16) -> bool {
        p.retries_response(status, || unreachable!("no gRPC condition"))
    }

    #[test]
    fn gateway_error_is_502_to_504_and_5xx_is_every_5xx() {
        let p = kuma_default();
        let retried: Vec<u16> = [200, 404, 500, 501, 502, 503, 504, 505]
            .into_iter()
            .filter(|s| retries_status(&p, *s))
            .collect();
        assert_eq!(retried, [502, 503, 504]);
        assert!(p.retries_timeout() && p.retries_connect_failure() && !p.retries_reset());
        let all = RetryPolicy {
            on: RetryOn {
                server_error: true,
                statuses: vec![409],
                ..RetryOn::default()
            },
            ..kuma_default()
        };
        assert!([500, 501, 599, 409]
            .iter()
            .all(|s| retries_status(&all, *s)));
        assert!(!retries_status(&all, 404));
        assert!(all.retries_reset() && all.retries_connect_failure() && all.retries_timeout());
    }

    #[test]
    fn back_off_grows_exponentially_up_to_the_maximum() {
        let p = kuma_default();
        let ceilings: Vec<u128> = (1..=5).map(|n| p.back_off_ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [25, 75, 175, 250, 250]);
        assert_eq!(p.back_off_ceiling(40), Duration::from_millis(250));
    }

    /// Envoy's `parseResetInterval`: headers in order, the first value of each, a whole
    /// number of seconds or a Unix time not past, an interval over the maximum skipped.
    #[test]
    fn reset_headers_give_the_interval_as_envoy_reads_them() {
        let back_off = RateLimitedBackOff {
            reset_headers: vec![
                ResetHeader {
                    name: "retry-after".into(),
                    format: ResetFormat::Seconds,
                },
                ResetHeader {
                    name: "x-ratelimit-reset".into(),
                    format: ResetFormat::UnixTimestamp,
                },
            ],
            max_interval: Duration::from_secs(5),
        };
        let now = 1_000_000;
        let interval = |retry_after: Option<&'static str>, reset: Option<&'static str>| {
            let first = |name: &str| match name {
                "retry-after" => retry_after,
                "x-ratelimit-reset" => reset,
                _ => None,
            };
            back_off.interval(first, now)
        };
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(interval(Some("2"), None), secs(2));
        assert_eq!(interval(Some(" +3 "), None), secs(3));
        assert_eq!(interval(Some("0"), None), secs(0));
        // Not a number, negative or over the maximum: the next header.
        assert_eq!(interval(Some("soon"), Some("1000004")), secs(4));
        assert_eq!(interval(Some("-1"), None), None);
        assert_eq!(interval(Some("6"), Some("1000001")), secs(1));
        assert_eq!(interval(None, Some("1000006")), None);
        // A time past.
        assert_eq!(interval(None, Some("999999")), None);
        assert_eq!(interval(None, None), None);
    }

    /// Envoy's jittered lower bound: from the interval to 1.5 times it; an interval of a
    /// millisecond or none leaves the exponential back-off.
    #[test]
    fn a_rate_limited_pause_is_the_interval_and_up_to_half_again() {
        let second = Duration::from_secs(1);
        assert_eq!(RateLimitedBackOff::pause(second, 0), Some(second));
        assert_eq!(
            RateLimitedBackOff::pause(second, 499),
            Some(Duration::from_millis(1499))
        );
        assert_eq!(RateLimitedBackOff::pause(second, 500), Some(second));
        assert_eq!(RateLimitedBackOff::pause(Duration::ZERO, 7), None);
        assert_eq!(RateLimitedBackOff::pause(Duration::from_millis(1), 7), None);
    }

    /// `omit_host_metadata`: every label of one predicate's set in the endpoint's tags; an
    /// empty set matches every endpoint (Envoy's `metadataLabelMatch`).
    #[test]
    fn host_tags_are_omitted_when_they_hold_every_label_of_a_predicate() {
        let tags = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let selection = HostSelection {
            omit_tags: vec![tags(&[("version", "v1"), ("zone", "a")])],
            ..HostSelection::default()
        };
        assert!(selection.omits_tags(&tags(&[("version", "v1"), ("zone", "a"), ("x", "y")])));
        assert!(!selection.omits_tags(&tags(&[("version", "v1")])));
        assert!(!selection.omits_tags(&tags(&[("version", "v2"), ("zone", "a")])));
        assert!(!HostSelection::default().omits_tags(&tags(&[])));
        let every = HostSelection {
            omit_tags: vec![tags(&[])],
            ..HostSelection::default()
        };
        assert!(every.omits_tags(&tags(&[])) && every.omits_tags(&tags(&[("a", "b")])));
    }

    #[test]
    fn grpc_conditions_read_the_grpc_status_of_the_headers() {
        let p = RetryPolicy::kuma_default_grpc();
        let retried: Vec<u32> = (0..17)
            .filter(|code| p.retries_response(200, || Some(*code)))
            .collect();
        assert_eq!(
            retried,
            [GRPC_CANCELLED, GRPC_RESOURCE_EXHAUSTED, GRPC_UNAVAILABLE]
        );
        assert!(!p.retries_response(200, || None));
        assert!(p.retries_response(503, || None));
        assert!(p.retries_reset() && p.retries_connect_failure());
    }
}

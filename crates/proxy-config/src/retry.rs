//! A route's HTTP retry policy: when a request is sent again, how often, and how long each
//! attempt and the pause before it may take (Envoy's route `retry_policy`, as kuma-cp renders
//! MeshRetry's `http` section, its default policy included).

use serde::Serialize;
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
    /// and its `retriableRequestHeaders`); empty: any request. No regular expression (the
    /// translation refuses one here).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub request_headers: Vec<HeaderMatch>,
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
    /// `retriableResponseHeaders`). No regular expression (the translation refuses one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
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
            request_headers: Vec::new(),
        }
    }

    /// Whether the policy reads the request's or the responses' headers (its
    /// `request_headers`, `on.headers`).
    pub fn reads_headers(&self) -> bool {
        !self.request_headers.is_empty() || !self.on.headers.is_empty()
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

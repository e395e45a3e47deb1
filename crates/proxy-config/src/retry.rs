//! A route's HTTP retry policy: when a request is sent again, how often, and how long each
//! attempt and the pause before it may take (Envoy's route `retry_policy`, as kuma-cp renders
//! MeshRetry's `http` section, its default policy included).

use serde::Serialize;
use std::time::Duration;

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
}

impl RetryPolicy {
    /// Envoy's default back-off base (25 ms); the default maximum is ten times the base.
    pub const DEFAULT_BACK_OFF_BASE: Duration = Duration::from_millis(25);

    /// Whether a response of `status` asks for another attempt.
    pub fn retries_status(&self, status: u16) -> bool {
        let on = &self.on;
        (on.server_error && (500..600).contains(&status))
            || (on.gateway_error && matches!(status, 502..=504))
            || on.statuses.contains(&status)
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
        RetryPolicy {
            on: RetryOn {
                connect_failure: true,
                refused_stream: true,
                gateway_error: true,
                ..RetryOn::default()
            },
            num_retries: 5,
            per_try_timeout: Some(Duration::from_secs(16)),
            back_off_base: Duration::from_millis(25),
            back_off_max: Duration::from_millis(250),
        }
    }

    #[test]
    fn gateway_error_is_502_to_504_and_5xx_is_every_5xx() {
        let p = kuma_default();
        let retried: Vec<u16> = [200, 404, 500, 501, 502, 503, 504, 505]
            .into_iter()
            .filter(|s| p.retries_status(*s))
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
        assert!([500, 501, 599, 409].iter().all(|s| all.retries_status(*s)));
        assert!(!all.retries_status(404));
        assert!(all.retries_reset() && all.retries_connect_failure() && all.retries_timeout());
    }

    #[test]
    fn back_off_grows_exponentially_up_to_the_maximum() {
        let p = kuma_default();
        let ceilings: Vec<u128> = (1..=5).map(|n| p.back_off_ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [25, 75, 175, 250, 250]);
        assert_eq!(p.back_off_ceiling(40), Duration::from_millis(250));
    }
}

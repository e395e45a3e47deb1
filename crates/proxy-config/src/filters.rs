//! Kuma's traffic policies that act on requests and connections inside a listener, as Envoy's
//! filters: MeshFaultInjection (the HTTP `fault` filter: aborts and delays) and MeshRateLimit
//! (the HTTP `local_ratelimit` filter, configured per route, and the network
//! `local_ratelimit` filter on connections).

use std::time::Duration;

use serde::Serialize;

use crate::{HeaderFilter, HeaderMatch, RbacPredicate};

/// An HTTP filter of a connection manager beside RBAC, run in order for each request once
/// the route is known and before it is forwarded.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum HttpFilter {
    /// Envoy's `fault` filter (MeshFaultInjection).
    Fault(Fault),
    /// Envoy's `local_ratelimit` filter: here the limit of the route the request took
    /// (`HttpRoute::rate_limit`) is applied; a route without one passes.
    LocalRateLimit,
}

/// Faults injected into a share of requests (Envoy's `HTTPFault`): the delay first, then the
/// abort, each drawn per request.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Fault {
    /// The filter is skipped for a request whose connection meets this (Kuma wraps the
    /// filter in an `ExtensionWithMatcher` whose match is a `SkipFilter`); `None`: applied
    /// to every request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip: Option<RbacPredicate>,
    /// The filter applies only to a request whose headers meet every one of these (Envoy's
    /// `HTTPFault.headers`; kuma-cp's legacy FaultInjection matches the caller's tags in
    /// `x-kuma-tags`); empty: to every request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// Hold the request this long before going on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Answer the request with a status instead of forwarding it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// A fixed delay injected into a share of requests.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FaultDelay {
    /// How long.
    #[serde(serialize_with = "crate::millis::serialize")]
    pub fixed: Duration,
    /// Of which requests.
    pub percentage: Share,
}

/// An abort injected into a share of requests: Envoy's local reply `fault filter abort`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FaultAbort {
    /// The status answered, 200 to 599.
    pub status: u16,
    /// Of which requests.
    pub percentage: Share,
}

/// A share of requests (Envoy's `FractionalPercent`): `numerator` out of `denominator`
/// (100, 10 000 or 1 000 000), drawn per request.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Share {
    /// How many of `denominator`; more than it is all.
    pub numerator: u32,
    /// 100, 10 000 or 1 000 000.
    pub denominator: u32,
}

impl Share {
    /// Every request.
    pub const ALL: Share = Share {
        numerator: 100,
        denominator: 100,
    };

    /// Whether a request whose random draw is `random` is in the share (Envoy's rule: the
    /// draw modulo the denominator is below the numerator).
    pub fn holds(&self, random: u64) -> bool {
        self.numerator >= self.denominator
            || random % u64::from(self.denominator.max(1)) < u64::from(self.numerator)
    }
}

/// A token bucket (Envoy's `TokenBucket`): full at first, `tokens_per_fill` more every
/// `fill_interval` (refilled continuously, as Envoy's atomic bucket does), never above
/// `max_tokens`; each request or connection takes one.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct TokenBucket {
    /// The bucket's size, at least 1.
    pub max_tokens: u32,
    /// Tokens added per interval, at least 1.
    pub tokens_per_fill: u32,
    /// The interval, at least 50 ms (Envoy's minimum).
    #[serde(serialize_with = "crate::millis::serialize")]
    pub fill_interval: Duration,
}

/// A route's local rate limit (Envoy's `local_ratelimit` per-route config, kuma-cp's
/// MeshRateLimit `local.http`): a request that finds the bucket empty is answered `status`
/// with the body `local_rate_limited` and `response_headers`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LocalRateLimit {
    /// The bucket, shared by every worker.
    pub bucket: TokenBucket,
    /// Of which requests the limit takes a token (`filter_enabled`; Envoy: none when unset).
    pub enabled: Share,
    /// Of the requests limited, which are refused (`filter_enforced`; Envoy: none when
    /// unset); the others pass, counted.
    pub enforced: Share,
    /// The refusal's status (Envoy's default 429).
    pub status: u16,
    /// Headers of the refusal (`response_headers_to_add`).
    #[serde(skip_serializing_if = "HeaderFilter::is_empty")]
    pub response_headers: HeaderFilter,
}

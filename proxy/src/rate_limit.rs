//! Local rate limits (kuma-cp's MeshRateLimit): a token bucket shared by every worker, as
//! Envoy's local rate limit is per process, taken from with one atomic compare-and-swap (no
//! lock, no timer). Used per route for requests ([`RouteLimit`], Envoy's HTTP
//! `local_ratelimit`) and per listener for connections (Envoy's network `local_ratelimit`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use bearing_proxy_config::{LocalRateLimit, TokenBucket};
use prometheus_client::metrics::counter::Counter;

use crate::transport::Chain;

/// A token bucket refilled continuously (Envoy's atomic token bucket): `tokens_per_fill`
/// every `fill_interval`, at most `max_tokens`, full at first. What it holds is one instant:
/// when the bucket was (virtually) empty; the tokens now are the time since then at the fill
/// rate, capped at the bucket's size.
pub struct AtomicBucket {
    /// The instant the nanosecond counts below start from.
    origin: Instant,
    /// Nanoseconds after `origin` at which the bucket was empty (negative: before `origin`).
    empty_at: AtomicI64,
    /// Nanoseconds one token takes to come back (at least 1).
    per_token: i64,
    /// Nanoseconds a whole bucket takes to fill.
    capacity: i64,
}

impl AtomicBucket {
    /// A full bucket of `bucket`'s size.
    pub fn new(bucket: &TokenBucket) -> AtomicBucket {
        let interval = i64::try_from(bucket.fill_interval.as_nanos()).unwrap_or(i64::MAX);
        let per_token = (interval / i64::from(bucket.tokens_per_fill.max(1))).max(1);
        let capacity = per_token.saturating_mul(i64::from(bucket.max_tokens));
        AtomicBucket {
            origin: Instant::now(),
            empty_at: AtomicI64::new(-capacity),
            per_token,
            capacity,
        }
    }

    /// Takes one token if the bucket holds one.
    pub fn take(&self) -> bool {
        let now = i64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(i64::MAX);
        self.take_at(now)
    }

    /// [`take`](Self::take) at `now` nanoseconds after the origin.
    fn take_at(&self, now: i64) -> bool {
        let mut empty_at = self.empty_at.load(Ordering::Relaxed);
        loop {
            // A bucket idle longer than it takes to fill holds its size, no more.
            let from = empty_at.max(now.saturating_sub(self.capacity));
            let next = from.saturating_add(self.per_token);
            if next > now {
                return false;
            }
            match self.empty_at.compare_exchange_weak(
                empty_at,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => empty_at = seen,
            }
        }
    }
}

/// A listener's limit of new connections (Envoy's network `local_ratelimit`): one over it
/// is closed at once. Envoy runs the filter per filter chain, each with its own bucket (kuma-cp
/// puts one on each of a PERMISSIVE listener's chains), so this keeps a bucket per chain a
/// connection may take; a listener of one chain uses one.
pub struct ConnectionLimit {
    /// The buckets, by [`Chain`].
    buckets: [AtomicBucket; 3],
    /// Connections closed (Envoy's `local_ratelimit.rate_limited`).
    limited: Counter,
}

impl ConnectionLimit {
    /// Full buckets of `bucket`'s size, counting refusals into `limited`.
    pub fn new(bucket: &TokenBucket, limited: Counter) -> ConnectionLimit {
        ConnectionLimit {
            buckets: [(); 3].map(|()| AtomicBucket::new(bucket)),
            limited,
        }
    }

    /// Whether a new connection taking `chain` may go on (a token taken from that chain's
    /// bucket); counted when not.
    pub(crate) fn admits(&self, chain: Chain) -> bool {
        let admitted = self.buckets[chain as usize].take();
        if !admitted {
            self.limited.inc();
        }
        admitted
    }
}

/// A route's local rate limit with its bucket and counter.
pub struct RouteLimit {
    /// The limit as configured.
    pub config: LocalRateLimit,
    bucket: AtomicBucket,
    /// Requests the limit refused or would have (Envoy's
    /// `http_local_rate_limit.rate_limited`).
    limited: Counter,
}

/// What a route's limit decides for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It goes on.
    Pass,
    /// It is answered with the limit's refusal.
    Refuse,
}

impl RouteLimit {
    /// `config` with a full bucket, counting into `limited`.
    pub fn new(config: LocalRateLimit, limited: Counter) -> RouteLimit {
        RouteLimit {
            bucket: AtomicBucket::new(&config.bucket),
            config,
            limited,
        }
    }

    /// Decides one request, as Envoy's filter does: only the enabled share takes a token;
    /// of those finding none, the enforced share is refused (all counted).
    pub fn check(&self) -> Verdict {
        let draw = || rand::random::<u64>();
        if !self.config.enabled.holds(draw()) || self.bucket.take() {
            return Verdict::Pass;
        }
        self.limited.inc();
        match self.config.enforced.holds(draw()) {
            true => Verdict::Refuse,
            false => Verdict::Pass,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bearing_proxy_config::{HeaderFilter, Share};
    use std::time::Duration;

    fn bucket(max_tokens: u32, tokens_per_fill: u32, millis: u64) -> AtomicBucket {
        AtomicBucket::new(&TokenBucket {
            max_tokens,
            tokens_per_fill,
            fill_interval: Duration::from_millis(millis),
        })
    }

    #[test]
    fn a_full_bucket_gives_its_size_then_refills_at_its_rate() {
        let b = bucket(10, 10, 1000);
        let taken = (0..11).filter(|_| b.take_at(0)).count();
        assert_eq!(taken, 10);
        // 10 per second: one token every 100 ms.
        assert!(!b.take_at(99_000_000));
        assert!(b.take_at(100_000_000));
        assert!(!b.take_at(150_000_000));
        // Idle for an hour: full again, no more than its size.
        let hour = 3_600_000_000_000;
        assert_eq!((0..20).filter(|_| b.take_at(hour)).count(), 10);
    }

    #[test]
    fn tokens_per_fill_below_the_size_refill_slower() {
        let b = bucket(5, 1, 1000);
        assert_eq!((0..10).filter(|_| b.take_at(0)).count(), 5);
        assert!(!b.take_at(999_000_000));
        assert!(b.take_at(1_000_000_000));
    }

    #[test]
    fn workers_share_one_bucket() {
        let b = std::sync::Arc::new(bucket(1000, 1, 3_600_000));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..1000).filter(|_| b.take()).count())
            })
            .collect();
        let taken: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(taken, 1000);
    }

    #[test]
    fn only_enabled_requests_take_and_only_enforced_ones_are_refused() {
        let limit = |enabled, enforced| LocalRateLimit {
            bucket: TokenBucket {
                max_tokens: 1,
                tokens_per_fill: 1,
                fill_interval: Duration::from_secs(3600),
            },
            enabled,
            enforced,
            status: 429,
            response_headers: HeaderFilter::default(),
        };
        let none = Share {
            numerator: 0,
            denominator: 100,
        };
        let off = RouteLimit::new(limit(none, Share::ALL), Counter::default());
        assert!((0..5).all(|_| off.check() == Verdict::Pass));
        let shadow = RouteLimit::new(limit(Share::ALL, none), Counter::default());
        assert!((0..5).all(|_| shadow.check() == Verdict::Pass));
        assert_eq!(shadow.limited.get(), 4);
        let on = RouteLimit::new(limit(Share::ALL, Share::ALL), Counter::default());
        assert_eq!(on.check(), Verdict::Pass);
        assert_eq!(on.check(), Verdict::Refuse);
        assert_eq!(on.limited.get(), 1);
    }
}

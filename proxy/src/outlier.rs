//! Envoy's outlier detection (passive health checking): each endpoint's outcomes (response
//! statuses, connect failures, resets, timeouts) are counted as they happen, and a host with
//! too many consecutive failures is ejected at once; every `interval` a sweep takes back the
//! hosts whose ejection is over and runs the success-rate and failure-percentage detection on
//! the interval's outcomes.
//!
//! As Envoy: an ejection lasts `base_ejection_time` times the host's ejection multiplier
//! (raised at each ejection while it stays under `max_ejection_time + base`, lowered by one
//! at each sweep the host is back in service for an interval), capped at
//! `max_ejection_time`; no ejection takes the share of ejected hosts (counting the new one)
//! above `max_ejection_percent`; a detection ejects with the probability of its
//! `enforcing_*` percentage. Without `split_external_local_origin_errors` a local-origin
//! failure counts as the status Envoy's router would answer (503, 504 for a timeout); with
//! it, local-origin outcomes have their own consecutive counter and success rate.
//!
//! The counters are atomics on the endpoint's pool (kept across reloads with it); ejecting
//! and the sweep take the detector's lock, off the common path.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bearing_proxy_config::OutlierDetection;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use crate::upstream::EndpointPool;

/// What happened on one attempt towards a host, as Envoy's outlier detector is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP response with this status.
    Response(u16),
    /// The connection could not be made (or failed before the request was written, or was
    /// reset under the request): Envoy's LOCAL_ORIGIN_CONNECT_FAILED.
    ConnectFailed,
    /// The request timed out waiting for the host: LOCAL_ORIGIN_TIMEOUT.
    Timeout,
    /// An HTTP connection was made; the response is still to come: LOCAL_ORIGIN_CONNECT_SUCCESS.
    Connected,
    /// A TCP proxy's connection was made, which is all it asks of the host:
    /// LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL.
    ConnectedFinal,
}

impl Outcome {
    /// A failed connect: a timeout (Envoy's connection pool reports LOCAL_ORIGIN_TIMEOUT for
    /// its connect timeout) or any other failure.
    pub fn of_connect(e: &std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::TimedOut => Outcome::Timeout,
            _ => Outcome::ConnectFailed,
        }
    }
}

/// Why a host is ejected (Envoy's `OutlierEjectionType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejection {
    /// `consecutive_5xx` 5xx responses in a row.
    Consecutive5xx,
    /// `consecutive_gateway_failure` 502/503/504 in a row.
    ConsecutiveGatewayFailure,
    /// `consecutive_local_origin_failure` local-origin failures in a row (split mode).
    ConsecutiveLocalOriginFailure,
    /// A success rate below the cluster's threshold.
    SuccessRate,
    /// The same for local-origin outcomes (split mode).
    SuccessRateLocalOrigin,
    /// A failure percentage at or above `failure_percentage_threshold`.
    FailurePercentage,
    /// The same for local-origin outcomes (split mode).
    FailurePercentageLocalOrigin,
}

/// Successes and attempts in the current interval.
#[derive(Debug, Default)]
struct Bucket {
    success: AtomicU32,
    total: AtomicU32,
}

impl Bucket {
    fn count(&self, success: bool) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if success {
            self.success.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The interval's success rate (percent) and volume, starting the next interval.
    fn take(&self) -> Option<(f64, u32)> {
        let total = self.total.swap(0, Ordering::Relaxed);
        let success = self.success.swap(0, Ordering::Relaxed).min(total);
        (total > 0).then(|| (100.0 * f64::from(success) / f64::from(total), total))
    }
}

/// When a host was ejected and taken back, and its ejection multiplier.
#[derive(Debug, Default)]
struct Ejections {
    backoff: u32,
    ejected_at: Option<Instant>,
    unejected_at: Option<Instant>,
}

/// One host's outlier record: its consecutive failures, this interval's outcomes and its
/// ejections.
#[derive(Debug, Default)]
pub struct HostRecord {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    external: Bucket,
    local: Bucket,
    ejections: Mutex<Ejections>,
}

/// Whether `counter`, one more, reaches `threshold` exactly (Envoy fires once, at equality).
fn reaches(counter: &AtomicU32, threshold: u32) -> bool {
    counter.fetch_add(1, Ordering::Relaxed).wrapping_add(1) == threshold
}

impl HostRecord {
    /// Counts an HTTP status (Envoy's `putHttpResponseCode`); the ejections it detects, in
    /// Envoy's order.
    fn status(&self, code: u16, config: &OutlierDetection, out: &mut Vec<Ejection>) {
        let failed = code >= 500;
        self.external.count(!failed);
        if !failed {
            self.consecutive_5xx.store(0, Ordering::Relaxed);
            self.consecutive_gateway.store(0, Ordering::Relaxed);
            return;
        }
        if matches!(code, 502..=504) {
            if reaches(
                &self.consecutive_gateway,
                config.consecutive_gateway_failure,
            ) {
                out.push(Ejection::ConsecutiveGatewayFailure);
            }
        } else {
            self.consecutive_gateway.store(0, Ordering::Relaxed);
        }
        if reaches(&self.consecutive_5xx, config.consecutive_5xx) {
            out.push(Ejection::Consecutive5xx);
        }
    }

    /// Counts a local-origin outcome when they are split from the upstream's.
    fn local(&self, failed: bool, config: &OutlierDetection, out: &mut Vec<Ejection>) {
        self.local.count(!failed);
        if !failed {
            self.consecutive_local.store(0, Ordering::Relaxed);
        } else if reaches(
            &self.consecutive_local,
            config.consecutive_local_origin_failure,
        ) {
            out.push(Ejection::ConsecutiveLocalOriginFailure);
        }
    }

    /// Counts `outcome`; the ejections it detects.
    fn put(&self, outcome: Outcome, config: &OutlierDetection, out: &mut Vec<Ejection>) {
        let split = config.split_external_local_origin_errors;
        match (outcome, split) {
            (Outcome::Response(code), _) => self.status(code, config, out),
            (Outcome::ConnectFailed | Outcome::Timeout, true) => self.local(true, config, out),
            (Outcome::Connected | Outcome::ConnectedFinal, true) => self.local(false, config, out),
            (Outcome::ConnectFailed, false) => self.status(503, config, out),
            (Outcome::Timeout, false) => self.status(504, config, out),
            (Outcome::ConnectedFinal, false) => self.status(200, config, out),
            (Outcome::Connected, false) => {}
        }
    }

    fn reset_consecutive(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        self.consecutive_local.store(0, Ordering::Relaxed);
    }

    fn ejections(&self) -> std::sync::MutexGuard<'_, Ejections> {
        self.ejections.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Envoy's `cluster.<name>.outlier_detection.*` metrics.
#[derive(Clone, Debug, Default)]
pub struct OutlierStats {
    /// Hosts ejected now (`ejections_active`).
    pub ejections_active: Gauge,
    /// Ejections made (`ejections_enforced_total`).
    pub ejections_enforced_total: Counter,
    /// Ejections not made because `max_ejection_percent` was reached (`ejections_overflow`).
    pub ejections_overflow: Counter,
    /// Outliers detected by consecutive 5xx (`ejections_detected_consecutive_5xx`).
    pub ejections_detected_consecutive_5xx: Counter,
    /// Outliers detected by consecutive gateway failures.
    pub ejections_detected_consecutive_gateway_failure: Counter,
    /// Outliers detected by consecutive local-origin failures.
    pub ejections_detected_consecutive_local_origin_failure: Counter,
    /// Outliers detected by success rate (either origin).
    pub ejections_detected_success_rate: Counter,
    /// Outliers detected by failure percentage (either origin).
    pub ejections_detected_failure_percentage: Counter,
}

/// A cluster's outlier detector: its settings and metrics.
pub struct Detector {
    config: OutlierDetection,
    stats: OutlierStats,
    /// Held while ejecting or sweeping, so the ejected share is counted once per decision.
    lock: Mutex<()>,
    /// Draws for the `enforcing_*` percentages (0 to 99), replaceable in tests.
    draw: fn() -> u32,
}

impl Detector {
    /// A detector with `config`, counting into `stats`.
    pub fn new(config: OutlierDetection, stats: OutlierStats) -> Self {
        Detector {
            config,
            stats,
            lock: Mutex::new(()),
            draw: || rand::random::<u32>() % 100,
        }
    }

    /// The sweep's period.
    pub fn interval(&self) -> Duration {
        self.config.interval
    }

    /// Counts `outcome` of `pool` (one of `pools`); `true` when it ejected the host.
    pub fn put(&self, pool: &EndpointPool, pools: &[Arc<EndpointPool>], outcome: Outcome) -> bool {
        let mut detected = Vec::new();
        pool.outlier().put(outcome, &self.config, &mut detected);
        if detected.is_empty() {
            return false;
        }
        let _held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut ejected = false;
        for kind in detected {
            if pool.health().is_ejected() {
                break;
            }
            self.detected(kind);
            ejected |= self.eject(pool, pools, kind);
            let record = pool.outlier();
            let counter = match kind {
                Ejection::Consecutive5xx => &record.consecutive_5xx,
                Ejection::ConsecutiveGatewayFailure => &record.consecutive_gateway,
                _ => &record.consecutive_local,
            };
            counter.store(0, Ordering::Relaxed);
        }
        ejected
    }

    fn detected(&self, kind: Ejection) {
        let s = &self.stats;
        match kind {
            Ejection::Consecutive5xx => s.ejections_detected_consecutive_5xx.inc(),
            Ejection::ConsecutiveGatewayFailure => {
                s.ejections_detected_consecutive_gateway_failure.inc()
            }
            Ejection::ConsecutiveLocalOriginFailure => {
                s.ejections_detected_consecutive_local_origin_failure.inc()
            }
            Ejection::SuccessRate | Ejection::SuccessRateLocalOrigin => {
                s.ejections_detected_success_rate.inc()
            }
            Ejection::FailurePercentage | Ejection::FailurePercentageLocalOrigin => {
                s.ejections_detected_failure_percentage.inc()
            }
        };
    }

    fn enforcing(&self, kind: Ejection) -> u32 {
        let e = &self.config.enforcing;
        match kind {
            Ejection::Consecutive5xx => e.consecutive_5xx,
            Ejection::ConsecutiveGatewayFailure => e.consecutive_gateway_failure,
            Ejection::ConsecutiveLocalOriginFailure => e.consecutive_local_origin_failure,
            Ejection::SuccessRate => e.success_rate,
            Ejection::SuccessRateLocalOrigin => e.local_origin_success_rate,
            Ejection::FailurePercentage => e.failure_percentage,
            Ejection::FailurePercentageLocalOrigin => e.failure_percentage_local_origin,
        }
    }

    /// Ejects `pool` for `kind` if the ejected share allows and the enforcing percentage
    /// draws it (Envoy's `ejectHost`); the caller holds the lock.
    fn eject(&self, pool: &EndpointPool, pools: &[Arc<EndpointPool>], kind: Ejection) -> bool {
        let active = pools.iter().filter(|p| p.health().is_ejected()).count();
        let share = 100.0 * (active + 1) as f64 / pools.len().max(1) as f64;
        if share > f64::from(self.config.max_ejection_percent) {
            self.stats.ejections_overflow.inc();
            return false;
        }
        if (self.draw)() >= self.enforcing(kind) {
            return false;
        }
        let config = &self.config;
        let mut e = pool.outlier().ejections();
        e.ejected_at = Some(Instant::now());
        if config.base_ejection_time * e.backoff
            < config.max_ejection_time + config.base_ejection_time
        {
            e.backoff += 1;
        }
        pool.health().set_ejected(true);
        self.stats.ejections_active.inc();
        self.stats.ejections_enforced_total.inc();
        tracing::info!(endpoint = %pool.address(), ?kind, "outlier ejected");
        true
    }

    /// Takes `pool` back into service (Envoy's `unejectHost`); the caller holds the lock.
    fn uneject(&self, pool: &EndpointPool, now: Instant) {
        pool.health().set_ejected(false);
        pool.outlier().reset_consecutive();
        pool.outlier().ejections().unejected_at = Some(now);
        self.stats.ejections_active.dec();
        tracing::info!(endpoint = %pool.address(), "outlier taken back");
    }

    /// A passing active health check takes an ejected host back (Envoy's
    /// `successful_active_health_check_uneject_host`, true by default); `true` if it did.
    pub fn checked_healthy(&self, pool: &EndpointPool) -> bool {
        let _held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if !pool.health().is_ejected() {
            return false;
        }
        self.uneject(pool, Instant::now());
        true
    }

    /// Forgets the ejections of `pools` (a detector taking over pools whose ejections another
    /// detector made, or none).
    pub fn adopt(&self, pools: &[Arc<EndpointPool>]) {
        for pool in pools {
            pool.health().set_ejected(false);
            pool.outlier().reset_consecutive();
            *pool.outlier().ejections() = Ejections::default();
        }
        self.stats.ejections_active.set(0);
    }

    /// One interval's sweep over `pools` (Envoy's `onIntervalTimer`): takes back the hosts
    /// whose ejection is over, runs the success-rate and failure-percentage detection, and
    /// lowers the multiplier of hosts in service for an interval. `true` if any host's
    /// ejection changed.
    pub fn sweep(&self, pools: &[Arc<EndpointPool>]) -> bool {
        let _held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let config = &self.config;
        let mut changed = false;
        let mut external = Vec::with_capacity(pools.len());
        let mut local = Vec::with_capacity(pools.len());
        for pool in pools {
            let record = pool.outlier();
            if pool.health().is_ejected() {
                let e = record.ejections();
                let length = (config.base_ejection_time * e.backoff).min(config.max_ejection_time);
                let over = e
                    .ejected_at
                    .is_none_or(|at| now.duration_since(at) >= length);
                drop(e);
                if over {
                    self.uneject(pool, now);
                    changed = true;
                }
            }
            external.push(record.external.take());
            local.push(record.local.take());
        }
        for (rates, origin_local) in [(external, false), (local, true)] {
            changed |= self.rates(pools, &rates, origin_local);
        }
        for pool in pools.iter().filter(|p| !p.health().is_ejected()) {
            let mut e = pool.outlier().ejections();
            let settled = e
                .unejected_at
                .is_some_and(|at| now.duration_since(at) >= config.interval);
            if settled {
                e.backoff = e.backoff.saturating_sub(1);
            }
        }
        // Counted from the hosts, so an ejected host DNS no longer returns leaves the count
        // (Envoy drops a removed host's ejection with it).
        let active = pools.iter().filter(|p| p.health().is_ejected()).count();
        self.stats.ejections_active.set(active as i64);
        changed
    }

    /// Success-rate and failure-percentage detection over one origin's interval rates (Envoy's
    /// `processSuccessRateEjections`); the caller holds the lock.
    fn rates(
        &self,
        pools: &[Arc<EndpointPool>],
        rates: &[Option<(f64, u32)>],
        local: bool,
    ) -> bool {
        let c = &self.config;
        if pools.len() < c.success_rate_minimum_hosts as usize
            && pools.len() < c.failure_percentage_minimum_hosts as usize
        {
            return false;
        }
        let in_service = |i: &usize| !pools[*i].health().is_ejected();
        let valid = |volume: u32| {
            (0..pools.len())
                .filter(in_service)
                .filter_map(|i| rates[i].filter(|(_, v)| *v >= volume).map(|(r, _)| (i, r)))
                .collect::<Vec<_>>()
        };
        let mut changed = false;
        let by_rate = valid(c.success_rate_request_volume);
        if !by_rate.is_empty() && by_rate.len() >= c.success_rate_minimum_hosts as usize {
            let threshold = ejection_threshold(&by_rate, c.success_rate_stdev_factor);
            let kind = match local {
                true => Ejection::SuccessRateLocalOrigin,
                false => Ejection::SuccessRate,
            };
            for (i, rate) in by_rate {
                if rate < threshold && !pools[i].health().is_ejected() {
                    self.detected(kind);
                    changed |= self.eject(&pools[i], pools, kind);
                }
            }
        }
        let by_failures = valid(c.failure_percentage_request_volume);
        if !by_failures.is_empty()
            && by_failures.len() >= c.failure_percentage_minimum_hosts as usize
        {
            let kind = match local {
                true => Ejection::FailurePercentageLocalOrigin,
                false => Ejection::FailurePercentage,
            };
            for (i, rate) in by_failures {
                let failing = 100.0 - rate >= f64::from(c.failure_percentage_threshold);
                if failing && !pools[i].health().is_ejected() {
                    self.detected(kind);
                    changed |= self.eject(&pools[i], pools, kind);
                }
            }
        }
        changed
    }
}

/// Envoy's success-rate ejection threshold: mean − stdev × factor/1000 of the hosts' rates.
fn ejection_threshold(rates: &[(usize, f64)], stdev_factor: u32) -> f64 {
    let n = rates.len() as f64;
    let mean = rates.iter().map(|(_, r)| r).sum::<f64>() / n;
    let variance = rates.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
    mean - f64::from(stdev_factor) / 1000.0 * variance.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{plain_endpoint, EndpointPool};

    fn pools(n: u8) -> Vec<Arc<EndpointPool>> {
        (0..n)
            .map(|i| EndpointPool::new(&plain_endpoint(([10, 0, 0, i], 80).into())))
            .collect()
    }

    fn detector(config: OutlierDetection) -> Detector {
        Detector {
            draw: || 0,
            ..Detector::new(config, OutlierStats::default())
        }
    }

    fn config() -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: 3,
            max_ejection_percent: 50,
            base_ejection_time: Duration::from_secs(30),
            ..OutlierDetection::default()
        }
    }

    #[test]
    fn consecutive_5xx_eject_once_and_a_success_resets_the_count() {
        let all = pools(2);
        let d = detector(config());
        let put = |code| d.put(&all[0], &all, Outcome::Response(code));
        assert!(!put(500) && !put(500) && !put(200));
        assert!(!put(500) && !put(500));
        assert!(put(500));
        assert!(all[0].health().is_ejected());
        assert_eq!(d.stats.ejections_active.get(), 1);
        assert_eq!(d.stats.ejections_enforced_total.get(), 1);
        // The second host would pass 50%: not ejected, counted as overflow.
        for _ in 0..3 {
            d.put(&all[1], &all, Outcome::Response(503));
        }
        assert!(!all[1].health().is_ejected());
        assert_eq!(d.stats.ejections_overflow.get(), 1);
    }

    #[test]
    fn gateway_failures_and_local_origin_failures_count_as_envoy_maps_them() {
        let all = pools(2);
        let mut gateway = OutlierDetection {
            consecutive_gateway_failure: 2,
            consecutive_5xx: 100,
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        };
        // Envoy enforces none of them by default.
        assert_eq!(gateway.enforcing.consecutive_gateway_failure, 0);
        gateway.enforcing.consecutive_gateway_failure = 100;
        let d = detector(gateway.clone());
        let timed_out = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout");
        assert_eq!(Outcome::of_connect(&timed_out), Outcome::Timeout);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(Outcome::of_connect(&refused), Outcome::ConnectFailed);
        // Unsplit: a connect failure is a 503, a timeout a 504.
        d.put(&all[0], &all, Outcome::ConnectFailed);
        assert!(d.put(&all[0], &all, Outcome::Timeout));
        // A 500 is no gateway failure and breaks the run.
        d.put(&all[1], &all, Outcome::Response(502));
        d.put(&all[1], &all, Outcome::Response(500));
        assert!(!d.put(&all[1], &all, Outcome::Response(502)));
        // Split: local-origin failures have their own count; a connect success resets it.
        let split = OutlierDetection {
            split_external_local_origin_errors: true,
            consecutive_local_origin_failure: 2,
            ..gateway
        };
        let all = pools(2);
        let d = detector(split);
        d.put(&all[0], &all, Outcome::ConnectFailed);
        d.put(&all[0], &all, Outcome::Connected);
        assert!(!d.put(&all[0], &all, Outcome::ConnectFailed));
        assert!(d.put(&all[0], &all, Outcome::Timeout));
    }

    #[test]
    fn enforcing_zero_detects_without_ejecting() {
        let all = pools(2);
        let mut c = config();
        c.enforcing.consecutive_5xx = 0;
        let d = detector(c);
        for _ in 0..3 {
            d.put(&all[0], &all, Outcome::Response(500));
        }
        assert!(!all[0].health().is_ejected());
        assert_eq!(d.stats.ejections_detected_consecutive_5xx.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejection_lasts_base_times_the_multiplier_capped_at_the_maximum() {
        let all = pools(2);
        let c = OutlierDetection {
            max_ejection_time: Duration::from_secs(70),
            ..config()
        };
        let d = detector(c);
        let eject = || {
            for _ in 0..3 {
                d.put(&all[0], &all, Outcome::Response(500));
            }
            assert!(all[0].health().is_ejected());
        };
        let ejected_for = || async {
            let mut waited = Duration::ZERO;
            while all[0].health().is_ejected() {
                tokio::time::advance(Duration::from_secs(10)).await;
                waited += Duration::from_secs(10);
                d.sweep(&all);
            }
            waited
        };
        eject();
        assert_eq!(ejected_for().await, Duration::from_secs(30));
        eject();
        assert_eq!(ejected_for().await, Duration::from_secs(60));
        eject();
        // 90 s capped at 70 s: the sweep at 70 s takes it back.
        assert_eq!(ejected_for().await, Duration::from_secs(70));
        // In service for intervals, the multiplier comes down one per sweep.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(10)).await;
            d.sweep(&all);
        }
        eject();
        assert_eq!(ejected_for().await, Duration::from_secs(30));
    }

    #[test]
    fn success_rate_ejects_below_mean_minus_stdev_factor() {
        // Envoy's example: {50, 100, 100, 100, 100}: mean 90, stdev 20, factor 1.9: 52.
        let rates: Vec<(usize, f64)> = [50.0, 100.0, 100.0, 100.0, 100.0]
            .into_iter()
            .enumerate()
            .collect();
        assert!((ejection_threshold(&rates, 1900) - 52.0).abs() < 1e-9);
        let all = pools(5);
        let c = OutlierDetection {
            success_rate_request_volume: 10,
            max_ejection_percent: 100,
            consecutive_5xx: 1000,
            ..OutlierDetection::default()
        };
        let d = detector(c);
        for (i, pool) in all.iter().enumerate() {
            for n in 0..10 {
                let code = if i == 0 && n % 2 == 0 { 500 } else { 200 };
                d.put(pool, &all, Outcome::Response(code));
            }
        }
        assert!(d.sweep(&all));
        let ejected: Vec<bool> = all.iter().map(|p| p.health().is_ejected()).collect();
        assert_eq!(ejected, vec![true, false, false, false, false]);
    }

    #[test]
    fn failure_percentage_ejects_hosts_failing_at_least_the_threshold() {
        let all = pools(5);
        let mut c = OutlierDetection {
            failure_percentage_request_volume: 10,
            max_ejection_percent: 100,
            consecutive_5xx: 1000,
            success_rate_request_volume: 1000,
            ..OutlierDetection::default()
        };
        c.enforcing.failure_percentage = 100;
        let d = detector(c);
        for (i, pool) in all.iter().enumerate() {
            for n in 0..10 {
                // Host 1 fails 9 of 10 (90% ≥ 85%), host 2 fails 8 (80%).
                let failing = (i == 1 && n < 9) || (i == 2 && n < 8);
                d.put(
                    pool,
                    &all,
                    Outcome::Response(if failing { 503 } else { 200 }),
                );
            }
        }
        d.sweep(&all);
        let ejected: Vec<bool> = all.iter().map(|p| p.health().is_ejected()).collect();
        assert_eq!(ejected, vec![false, true, false, false, false]);
        // Too few hosts with volume: nothing.
        let few = pools(5);
        for _ in 0..10 {
            d.put(&few[0], &few, Outcome::Response(503));
        }
        assert!(!d.sweep(&few));
    }
}

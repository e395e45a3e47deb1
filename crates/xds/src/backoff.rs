//! Envoy's jittered exponential back-off for reconnecting to the control plane.

use std::time::Duration;

/// First reconnect interval, as Envoy's gRPC mux (`RETRY_INITIAL_DELAY_MS`).
pub const BASE_INTERVAL: Duration = Duration::from_millis(500);
/// Longest reconnect interval, as Envoy's gRPC mux (`RETRY_MAX_DELAY_MS`).
pub const MAX_INTERVAL: Duration = Duration::from_secs(30);

/// Envoy's `JitteredExponentialBackOffStrategy`: each delay is drawn uniformly from
/// `[0, interval)`, and the interval doubles from [`BASE_INTERVAL`] up to [`MAX_INTERVAL`].
/// Full jitter spreads the reconnects of many proxies after a control-plane restart.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    interval: Duration,
}

impl Backoff {
    /// A back-off from `base` doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            interval: base,
        }
    }

    /// The next delay; doubles the interval for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let interval = self.interval;
        self.interval = (interval * 2).min(self.max);
        let millis = interval.as_millis().max(1) as u64;
        Duration::from_millis(rand::random_range(0..millis)).min(self.max)
    }

    /// Starts again from the base interval (after the control plane answered).
    pub fn reset(&mut self) {
        self.interval = self.base;
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(BASE_INTERVAL, MAX_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_max_with_full_jitter_and_resets() {
        let mut backoff = Backoff::default();
        let mut bounds = Vec::new();
        for _ in 0..10 {
            let delay = backoff.next_delay();
            bounds.push(backoff.interval);
            assert!(delay < MAX_INTERVAL);
        }
        assert_eq!(bounds[0], Duration::from_secs(1));
        assert_eq!(bounds[5], MAX_INTERVAL);
        assert_eq!(bounds[9], MAX_INTERVAL);
        // Full jitter: over many draws at the max interval, delays spread over the range.
        let delays: Vec<_> = (0..200).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().any(|d| *d < Duration::from_secs(10)));
        assert!(delays.iter().any(|d| *d > Duration::from_secs(20)));
        backoff.reset();
        assert!(backoff.next_delay() < BASE_INTERVAL);
    }
}

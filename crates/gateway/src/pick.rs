//! Deterministic, lock-free choices: weighted backends and mirror percentages.
//!
//! Written here rather than with a random generator because a gateway should give each
//! backend exactly its share over every cycle of requests (tests and operators can count on
//! it) and a shared counter costs one atomic add per request, no lock and no RNG state.

use std::sync::atomic::{AtomicU64, Ordering};

/// Items picked in proportion to their weights, round after round.
#[derive(Debug)]
pub struct Weighted {
    /// Upper bound (exclusive) of each item's slice of one cycle, ascending; items with
    /// weight 0 have none.
    bounds: Vec<(u64, usize)>,
    total: u64,
    next: AtomicU64,
}

impl Weighted {
    /// A picker over items with these weights (by index).
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Weighted {
        let mut total = 0u64;
        let mut bounds = Vec::new();
        for (i, w) in weights.into_iter().enumerate() {
            if w > 0 {
                total += u64::from(w);
                bounds.push((total, i));
            }
        }
        Weighted {
            bounds,
            total,
            next: AtomicU64::new(0),
        }
    }

    /// The index of the next item; `None` when every weight is 0.
    pub fn pick(&self) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.total;
        let at = self.bounds.partition_point(|(bound, _)| *bound <= slot);
        self.bounds.get(at).map(|(_, i)| *i)
    }
}

const MILLION: u128 = 1_000_000;

/// A share of requests, spread evenly: with 25%, every fourth request.
#[derive(Debug)]
pub struct Share {
    /// The share in millionths of requests (integers: no float rounding drift).
    per_million: u128,
    next: AtomicU64,
}

impl Share {
    /// `percentage` of requests (clamped to 0..=100).
    pub fn new(percentage: f64) -> Share {
        Share {
            per_million: (percentage.clamp(0.0, 100.0) * 10_000.0).round() as u128,
            next: AtomicU64::new(0),
        }
    }

    /// Whether this request is in the share.
    pub fn take(&self) -> bool {
        let n = u128::from(self.next.fetch_add(1, Ordering::Relaxed));
        (n + 1) * self.per_million / MILLION > n * self.per_million / MILLION
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_exact_over_each_cycle() {
        let w = Weighted::new([1, 0, 3]);
        let mut counts = [0; 3];
        for _ in 0..400 {
            counts[w.pick().unwrap()] += 1;
        }
        assert_eq!(counts, [100, 0, 300]);
        assert_eq!(Weighted::new([0, 0]).pick(), None);
        assert_eq!(Weighted::new([]).pick(), None);
    }

    #[test]
    fn shares_are_spread_evenly() {
        let s = Share::new(25.0);
        let taken: Vec<bool> = (0..8).map(|_| s.take()).collect();
        assert_eq!(
            taken,
            [false, false, false, true, false, false, false, true]
        );
        let all = Share::new(100.0);
        assert!((0..10).all(|_| all.take()));
        let none = Share::new(0.0);
        assert!((0..10).all(|_| !none.take()));
        let third = Share::new(33.3);
        assert_eq!((0..1000).filter(|_| third.take()).count(), 333);
    }
}

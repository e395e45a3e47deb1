//! A retry's priority load under Envoy's `envoy.retry_priorities.previous_priorities`
//! (kuma-cp's MeshRetry `hostSelection: [{predicate: OmitPreviousPriorities}]`): the priority
//! levels a request already tried are taken out of the load its retries draw their level from.
//!
//! Envoy's rule (`PreviousPrioritiesRetryPriority`): every attempt's host adds its level to the
//! attempted ones. A retry's pick takes the cluster's own load while fewer attempts than
//! `update_frequency` were made; when the count of attempts is a multiple of it, every level
//! attempted so far is excluded and the load is shared again over the rest by their health
//! (Envoy's overprovisioned health, as `crate::priority` computes it: the first level with any
//! health takes the rounding rest); in between, the load last computed holds. When no level
//! with health is left, the exclusions and attempts start over and the load is shared over all
//! levels; with no health anywhere the cluster's own load serves. Only round robin, least
//! request and random balancers ask (Envoy's ring hash and Maglev pick their level without it).
//!
//! A request keeps this state only under such a policy, and allocates only once it retries.

use std::num::NonZeroU32;

use crate::priority::distribute;

/// One request's `previous_priorities` state.
pub(crate) struct PreviousPriorities {
    /// Recompute the load every this many attempts (Envoy's `update_frequency`).
    update_frequency: NonZeroU32,
    /// The level of each attempt since the last start over.
    attempted: Vec<u32>,
    /// Per level: excluded from the retries' load.
    excluded: Vec<bool>,
    /// The load last computed (`None`: the cluster's own).
    loads: Option<Vec<u32>>,
}

impl PreviousPriorities {
    /// No attempt yet, recomputing every `update_frequency` attempts.
    pub(crate) fn new(update_frequency: NonZeroU32) -> Self {
        PreviousPriorities {
            update_frequency,
            attempted: Vec::new(),
            excluded: Vec::new(),
            loads: None,
        }
    }

    /// Records an attempt to a host of level `priority` (Envoy's `onHostAttempted`).
    pub(crate) fn attempted(&mut self, priority: u32) {
        self.attempted.push(priority);
    }

    /// The load (percent per level) a retry's pick draws its level from, given each level's
    /// health (`health`, priority 0 first); `None`: the cluster's own load.
    pub(crate) fn loads(&mut self, health: &[u32]) -> Option<&[u32]> {
        let n = self.attempted.len() as u64;
        let frequency = u64::from(self.update_frequency.get());
        if n < frequency {
            return None;
        }
        if n.is_multiple_of(frequency) {
            self.loads = self.recompute(health);
        }
        self.loads.as_deref()
    }

    /// Envoy's `adjustForAttemptedPriorities`: the attempted levels excluded, the load shared
    /// over the rest; `None` when no level has health.
    fn recompute(&mut self, health: &[u32]) -> Option<Vec<u32>> {
        if self.excluded.len() < health.len() {
            self.excluded.resize(health.len(), false);
        }
        for p in &self.attempted {
            if let Some(e) = self.excluded.get_mut(*p as usize) {
                *e = true;
            }
        }
        let mut adjusted = self.adjusted(health);
        if adjusted.iter().sum::<u32>() == 0 {
            // Every level with health was tried: start over.
            self.excluded.iter_mut().for_each(|e| *e = false);
            self.attempted.clear();
            adjusted = self.adjusted(health);
        }
        let total = adjusted.iter().sum::<u32>().min(100);
        if total == 0 {
            return None;
        }
        distribute(&adjusted, total)
    }

    /// Each level's health, zero where excluded.
    fn adjusted(&self, health: &[u32]) -> Vec<u32> {
        health
            .iter()
            .enumerate()
            .map(|(l, h)| match self.excluded.get(l) {
                Some(true) => 0,
                _ => *h,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every(n: u32) -> PreviousPriorities {
        PreviousPriorities::new(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
    }

    /// Every attempt recomputes (`update_frequency` 1): P0 tried sends the retry to P1, both
    /// tried to P2; all three tried starts over on the cluster's levels by health.
    #[test]
    fn tried_levels_leave_the_load_to_the_rest() {
        let mut p = every(1);
        let health = [100, 100, 100];
        assert_eq!(p.loads(&health), None, "no attempt yet");
        p.attempted(0);
        assert_eq!(p.loads(&health), Some(&[0, 100, 0][..]));
        p.attempted(1);
        assert_eq!(p.loads(&health), Some(&[0, 0, 100][..]));
        p.attempted(2);
        assert_eq!(p.loads(&health), Some(&[100, 0, 0][..]));
        // Started over: only the attempts since count.
        p.attempted(0);
        assert_eq!(p.loads(&health), Some(&[0, 100, 0][..]));
    }

    /// Partly healthy levels share by their health, normalised: P0 tried, P1 (health 70) and
    /// P2 (health 28) share 71/28 plus the rest to P1; levels without health take nothing.
    #[test]
    fn the_rest_share_by_health() {
        let mut p = every(1);
        p.attempted(0);
        assert_eq!(p.loads(&[100, 70, 28]), Some(&[0, 72, 28][..]));
        let mut p = every(1);
        p.attempted(0);
        assert_eq!(p.loads(&[100, 0, 100]), Some(&[0, 0, 100][..]));
        // Nothing healthy anywhere: the cluster's own load.
        let mut p = every(1);
        p.attempted(0);
        assert_eq!(p.loads(&[0, 0]), None);
    }

    /// `update_frequency` 2: the first retry (one attempt) keeps the cluster's load, the
    /// second (two attempts) excludes both attempts' levels, the third keeps that load.
    #[test]
    fn the_load_is_recomputed_every_update_frequency_attempts() {
        let mut p = every(2);
        let health = [100, 100, 100];
        p.attempted(0);
        assert_eq!(p.loads(&health), None);
        p.attempted(0);
        assert_eq!(p.loads(&health), Some(&[0, 100, 0][..]));
        p.attempted(1);
        assert_eq!(p.loads(&health), Some(&[0, 100, 0][..]), "kept");
        p.attempted(1);
        assert_eq!(p.loads(&health), Some(&[0, 0, 100][..]));
    }
}

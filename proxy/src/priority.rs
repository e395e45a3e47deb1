//! Envoy's priority levels: which of a cluster's endpoints take its traffic.
//!
//! Envoy's rule (its "priority levels" and "overprovisioning factor"): a level's health is the
//! share of its hosts that are healthy times the overprovisioning factor (1.4 unless the
//! ClusterLoadAssignment's `policy` says otherwise, which Bearing NACKs), in integer percent,
//! capped at 100; a level without hosts has health 0. The levels' health summed and capped at
//! 100 is the normalized total health. The highest level (priority 0) gets `health × 100 /
//! total` percent of the traffic, each next level the same of its own health, at most what
//! the levels before it left; what integer division leaves over goes to the first level with
//! health. So with every host healthy, all traffic goes to the highest level that has hosts,
//! and a level with no hosts passes its load on to the next.
//!
//! Bearing has no health signal yet (active health checks and outlier detection are NACKed),
//! so every host counts as healthy and one level takes all the traffic: such a cluster keeps
//! that level's endpoints and choosing among levels costs nothing per request. The load is
//! computed from each level's healthy and total host counts ([`priority_load`]), so a health
//! signal gives its counts and gets Envoy's split, which [`Levels::pick`] spreads requests
//! over by percent. Envoy's panic mode (fewer than 50% healthy hosts overall, where Envoy
//! balances over all hosts whatever their health) is not modelled: it needs unhealthy hosts.

use std::ops::Range;

use bearing_proxy_config::Endpoint;

/// Envoy's default overprovisioning factor, in percent (1.4).
pub const OVERPROVISIONING: u32 = 140;

/// The percent of the traffic each priority level takes (Envoy's priority load), from each
/// level's (healthy, total) host counts, highest level first, with the overprovisioning
/// factor `overprovisioning` in percent. All zeros when no level has a healthy host.
pub fn priority_load(levels: &[(usize, usize)], overprovisioning: u32) -> Vec<u32> {
    let health: Vec<u32> = levels
        .iter()
        .map(|&(healthy, total)| match total {
            0 => 0,
            _ => {
                let scaled = u64::from(overprovisioning) * healthy as u64 / total as u64;
                scaled.min(100) as u32
            }
        })
        .collect();
    let total = health.iter().sum::<u32>().min(100);
    if total == 0 {
        return vec![0; levels.len()];
    }
    let mut left = 100;
    let mut load: Vec<u32> = health
        .iter()
        .map(|h| {
            let share = (h * 100 / total).min(left);
            left -= share;
            share
        })
        .collect();
    if let Some(first) = health.iter().position(|h| *h > 0) {
        load[first] += left;
    }
    load
}

/// Which of a cluster's endpoints (ordered by priority) serve a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Levels {
    /// One level takes all the traffic: these endpoints (every cluster without a health
    /// signal).
    One(Range<usize>),
    /// Several levels share it: each level's endpoints with the traffic percent up to and
    /// including it (the last is 100).
    Split(Box<[(u32, Range<usize>)]>),
}

impl Levels {
    /// The levels of `endpoints` (ordered by priority, as `Cluster::endpoints` is), every
    /// host healthy.
    pub fn of(endpoints: &[Endpoint]) -> Levels {
        let ranges = ranges(endpoints);
        let counts: Vec<(usize, usize)> = ranges.iter().map(|r| (r.len(), r.len())).collect();
        Levels::by_load(ranges, &priority_load(&counts, OVERPROVISIONING))
    }

    /// `ranges` (one per level) taking the traffic by `load` (percent per level).
    fn by_load(ranges: Vec<Range<usize>>, load: &[u32]) -> Levels {
        let mut upto = 0;
        let mut serving: Vec<(u32, Range<usize>)> = Vec::new();
        for (range, share) in ranges.into_iter().zip(load) {
            if *share > 0 {
                upto += share;
                serving.push((upto, range));
            }
        }
        match serving.len() {
            0 => Levels::One(0..0),
            1 => Levels::One(serving.swap_remove(0).1),
            _ => Levels::Split(serving.into()),
        }
    }

    /// The endpoints of the level that serves the request numbered `tick` (a cluster's
    /// round-robin counter): always the one level, or by percent over 100 consecutive ticks.
    pub fn pick(&self, tick: usize) -> Range<usize> {
        match self {
            Levels::One(range) => range.clone(),
            Levels::Split(levels) => {
                let at = (tick % 100) as u32;
                let level = levels.iter().find(|(upto, _)| at < *upto);
                level.map_or(0..0, |(_, range)| range.clone())
            }
        }
    }
}

/// The index range of each priority level present in `endpoints` (ordered by priority).
fn ranges(endpoints: &[Endpoint]) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for (i, e) in endpoints.iter().enumerate() {
        match out.last_mut() {
            Some(last) if endpoints[last.start].priority == e.priority => last.end = i + 1,
            _ => out.push(i..i + 1),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(priorities: &[u32]) -> Vec<Endpoint> {
        priorities
            .iter()
            .enumerate()
            .map(|(i, p)| Endpoint {
                priority: *p,
                ..crate::upstream::plain_endpoint(([10, 0, 0, i as u8], 80).into())
            })
            .collect()
    }

    /// Envoy's documented examples: P=0 at 100%, 72%, 71%, 50%, 25% and 0% healthy with a
    /// fully healthy P=1, and the normalized case of two levels 20% healthy each.
    #[test]
    fn priority_load_follows_envoys_table() {
        for (p0_healthy, want) in [
            (100, [100, 0]),
            (72, [100, 0]),
            (71, [99, 1]),
            (50, [70, 30]),
            (25, [35, 65]),
            (0, [0, 100]),
        ] {
            let load = priority_load(&[(p0_healthy, 100), (100, 100)], OVERPROVISIONING);
            assert_eq!(load, want, "P0 {p0_healthy}% healthy");
        }
        assert_eq!(
            priority_load(&[(20, 100), (20, 100)], OVERPROVISIONING),
            [50, 50]
        );
        assert_eq!(priority_load(&[(0, 3), (0, 2)], OVERPROVISIONING), [0, 0]);
    }

    /// Every host healthy: the highest level with endpoints takes everything, whatever
    /// follows; an empty P0 (none listed, or no hosts) passes its traffic to P1.
    #[test]
    fn the_highest_populated_level_serves_and_an_empty_one_passes_its_load_on() {
        let mixed = Levels::of(&endpoints(&[0, 0, 1, 2, 2]));
        assert_eq!(mixed, Levels::One(0..2));
        assert!((0..300).all(|tick| mixed.pick(tick) == (0..2)));
        assert_eq!(Levels::of(&endpoints(&[1, 1, 3])), Levels::One(0..2));
        assert_eq!(
            priority_load(&[(0, 0), (2, 2)], OVERPROVISIONING),
            [0, 100],
            "P0 without hosts"
        );
        assert_eq!(Levels::of(&endpoints(&[])), Levels::One(0..0));
    }

    /// A split load (what a health signal would give) spreads requests by percent.
    #[test]
    fn a_split_load_spreads_requests_by_percent() {
        let load = priority_load(&[(1, 2), (3, 3)], OVERPROVISIONING);
        assert_eq!(load, [70, 30]);
        let levels = Levels::by_load(vec![0..2, 2..5], &load);
        let p0 = (0..1000).filter(|t| levels.pick(*t) == (0..2)).count();
        let p1 = (0..1000).filter(|t| levels.pick(*t) == (2..5)).count();
        assert_eq!((p0, p1), (700, 300));
    }
}

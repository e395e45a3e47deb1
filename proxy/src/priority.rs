//! Envoy's priority levels: which of a cluster's endpoints take its traffic.
//!
//! Envoy's rule (its "priority levels", "overprovisioning factor" and "panic threshold"): a
//! level's health is the share of its hosts that are healthy times the overprovisioning
//! factor (1.4 unless the ClusterLoadAssignment's `policy` says otherwise; one below 1.0 is
//! NACKed), capped at 100%; a level without hosts has health 0. The highest level (priority
//! 0) takes its health's share of the traffic and the levels after it what is left, in
//! order, normalised by the total health when that is below 100%. A level whose healthy
//! share is below the cluster's `healthy_panic_threshold` (50% by default; 0 disables it)
//! is in panic, unless the total health is 100%: it balances across all its hosts, healthy
//! or not. When every level is in panic, each takes the share of the traffic its host count
//! is of all hosts.
//!
//! A cluster without a health signal (no active health check, no outlier detection) has
//! every host healthy: the highest level that has endpoints takes all the traffic
//! ([`serving_level`]), found when its endpoints are applied, so choosing costs nothing per
//! request. A cluster with one keeps a [`Plan`], recomputed whenever a host's health
//! changes; a request draws its level from the plan's loads and balances among that
//! level's eligible hosts. A consistent-hashing cluster (ring hash, Maglev) draws its level
//! by the request's hash, as Envoy's thread-aware balancers do, and keeps a ring or table per
//! level over the eligible hosts, rebuilt with the plan; so does a round robin or least
//! request cluster whose endpoints' weights differ, with an EDF schedule per level over the
//! eligible hosts (Envoy's schedule is over the healthy hosts too, and none when their
//! weights are equal). Under locality weighting (round robin, least request, random) a
//! level's picker chooses among its localities with eligible hosts by each one's weight
//! times its availability (its healthy share times the overprovisioning factor, capped at
//! 100%: Envoy's `effectiveLocalityWeight`); a level in panic balances across all its hosts
//! without locality weighting, as Envoy's `hostSourceToUse` does.

use std::ops::Range;

use std::collections::BTreeMap;

use bearing_proxy_config::{Endpoint, EndpointHealth, LoadBalancer};

use crate::balance::Picker;

/// The index range of the endpoints that take the traffic among `endpoints` (ordered by
/// priority, as `Cluster::endpoints` is) when every host is healthy: those of the highest
/// priority level present.
pub fn serving_level(endpoints: &[Endpoint]) -> Range<usize> {
    let Some(first) = endpoints.first() else {
        return 0..0;
    };
    let end = endpoints
        .iter()
        .position(|e| e.priority != first.priority)
        .unwrap_or(endpoints.len());
    0..end
}

/// The priority levels of a cluster without a health signal, for a retry that draws its own
/// level (`crate::retry_priority`): each level's endpoints (an index range of the cluster's,
/// which are ordered by priority), its health (every host healthy: 100 with endpoints, 0
/// without) and its picker (the cluster's is over the serving level only: a schedule or
/// locality pick indexes that level's endpoints). Built on the first such retry, as only
/// those read it; never for a consistent-hashing cluster, whose retries keep its own level.
pub(crate) struct Levels {
    ranges: Vec<Range<usize>>,
    health: Vec<u32>,
    pickers: Vec<Picker>,
}

impl Levels {
    /// The levels of `endpoints` (ordered by priority) balanced by `balancer`.
    pub(crate) fn new(balancer: &LoadBalancer, endpoints: &[Endpoint]) -> Levels {
        let count = endpoints.last().map_or(1, |e| e.priority as usize + 1);
        let mut ranges = vec![0..0; count];
        let mut start = 0;
        for (i, e) in endpoints.iter().enumerate() {
            if endpoints
                .get(i + 1)
                .is_none_or(|next| next.priority != e.priority)
            {
                ranges[e.priority as usize] = start..i + 1;
                start = i + 1;
            }
        }
        let health = ranges
            .iter()
            .map(|r| if r.is_empty() { 0 } else { 100 })
            .collect();
        let pickers = ranges
            .iter()
            .map(|r| Picker::new(balancer, endpoints.get(r.clone()).unwrap_or_default()))
            .collect();
        Levels {
            ranges,
            health,
            pickers,
        }
    }

    /// Each level's health.
    pub(crate) fn health(&self) -> &[u32] {
        &self.health
    }

    /// The endpoints of `level` (none past the last).
    pub(crate) fn range(&self, level: usize) -> Range<usize> {
        self.ranges.get(level).cloned().unwrap_or(0..0)
    }

    /// The picker of `level` (none past the last).
    pub(crate) fn picker(&self, level: usize) -> Option<&Picker> {
        self.pickers.get(level)
    }
}

/// Where a cluster with a health signal sends its traffic: each priority level's share of
/// it, in percent, and the hosts eligible in each.
#[derive(Default)]
pub struct Plan {
    /// Per level (priority 0 first): the share of requests, summing to 100.
    loads: Vec<u32>,
    /// Per level: its health, the healthy share times the overprovisioning factor, capped at
    /// 100 (what a retry's `previous_priorities` redistributes the load by).
    health: Vec<u32>,
    /// Per level: indices (into the cluster's endpoints) of its eligible hosts: the healthy
    /// ones, or all of them when the level is in panic (none when the cluster fails traffic
    /// on panic).
    hosts: Vec<Vec<usize>>,
    /// Per level: whether it is in panic.
    panics: Vec<bool>,
    /// The overprovisioning factor, in percent.
    factor: u32,
    /// Per level, for a cluster whose picks depend on its endpoints (ring hash, Maglev,
    /// round robin or least request over different weights): its picker (ring, table, EDF
    /// schedule) over the level's eligible hosts (Envoy rebuilds them whenever health
    /// changes); empty otherwise.
    pickers: Vec<Picker>,
}

impl Plan {
    /// The plan of endpoints at `priorities` (ordered by priority) of which `healthy` are
    /// healthy, under `config`'s overprovisioning factor and panic threshold (percent; 0:
    /// never panic); a level in panic has no eligible host when the config fails traffic on
    /// panic (Envoy's `fail_traffic_on_panic`).
    pub fn new(priorities: &[u32], healthy: &[bool], config: &EndpointHealth) -> Plan {
        let (panic_threshold, factor) = (config.panic_threshold, config.overprovisioning_factor);
        let levels = priorities.last().map_or(1, |p| *p as usize + 1);
        let mut total = vec![0usize; levels];
        let mut well = vec![0usize; levels];
        for (p, ok) in priorities.iter().zip(healthy) {
            total[*p as usize] += 1;
            well[*p as usize] += usize::from(*ok);
        }
        let health: Vec<u32> = (0..levels)
            .map(|l| match total[l] {
                0 => 0,
                n => (factor as usize * well[l] / n).min(100) as u32,
            })
            .collect();
        let normalized = health.iter().sum::<u32>().min(100);
        // Nothing healthy: P0 takes the load (and panics, unless panic is disabled).
        let mut loads = distribute(&health, normalized).unwrap_or_else(|| {
            let mut loads = vec![0; levels];
            loads[0] = 100;
            loads
        });
        let panics: Vec<bool> = (0..levels)
            .map(|l| {
                let share = match total[l] {
                    0 => 0.0,
                    n => 100.0 * well[l] as f64 / n as f64,
                };
                normalized != 100 && panic_threshold > 0.0 && share < panic_threshold
            })
            .collect();
        if panics.iter().all(|p| *p) {
            // Total panic: by host counts (no host at all: the loads stay).
            let counts: Vec<u32> = total.iter().map(|n| *n as u32).collect();
            if let Some(by_hosts) = distribute(&counts, priorities.len() as u32) {
                loads = by_hosts;
            }
        }
        let mut hosts = vec![Vec::new(); levels];
        for (i, (p, ok)) in priorities.iter().zip(healthy).enumerate() {
            let l = *p as usize;
            // A level in panic takes all its hosts, or none at all when it fails on panic.
            let eligible = match panics[l] {
                true => !config.fail_traffic_on_panic,
                false => *ok,
            };
            if eligible {
                hosts[l].push(i);
            }
        }
        Plan {
            loads,
            health,
            hosts,
            panics,
            factor,
            pickers: Vec::new(),
        }
    }

    /// This plan with a picker per level over its eligible hosts (a ring, table, EDF
    /// schedule or weighted localities: `balance::picks_by_endpoints`), for `balancer` over
    /// the cluster's `endpoints`.
    pub fn with_pickers(mut self, balancer: &LoadBalancer, endpoints: &[Endpoint]) -> Plan {
        let pickers = (0..self.hosts.len())
            .map(|level| self.level_picker(level, balancer, endpoints))
            .collect();
        self.pickers = pickers;
        self
    }

    /// The picker of `level` over its eligible hosts. Under locality weighting (not a ring
    /// or table, which fold locality weights into their hosts') each locality's weight is
    /// scaled by its availability, its eligible share of its hosts times the factor (capped
    /// at 1), and a level in panic balances across its hosts without locality weighting.
    fn level_picker(
        &self,
        level: usize,
        balancer: &LoadBalancer,
        endpoints: &[Endpoint],
    ) -> Picker {
        let hosts = self.hosts(level);
        let mut eligible: Vec<Endpoint> = hosts
            .iter()
            .filter_map(|&i| endpoints.get(i).cloned())
            .collect();
        let level_endpoints = || endpoints.iter().filter(|e| e.priority as usize == level);
        if balancer.is_consistent_hashing() {
            // Envoy's ring or table normalises by the weights of all the level's localities.
            let mut weights = BTreeMap::new();
            for l in level_endpoints().filter_map(|e| e.locality) {
                weights.insert(l.order, u64::from(l.weight));
            }
            return match weights.is_empty() {
                true => Picker::new(balancer, &eligible),
                false => Picker::hashing(balancer, &eligible, weights.values().sum()),
            };
        }
        if !eligible.iter().any(|e| e.locality.is_some()) {
            return Picker::new(balancer, &eligible);
        }
        if self.panics.get(level).copied().unwrap_or(false) {
            for endpoint in &mut eligible {
                endpoint.locality = None;
            }
            return Picker::new(balancer, &eligible);
        }
        // Per locality (by its order): its hosts in the level, and those eligible.
        let mut counts: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
        for e in level_endpoints() {
            if let Some(l) = e.locality {
                counts.entry(l.order).or_default().0 += 1;
            }
        }
        for e in &eligible {
            if let Some(l) = e.locality {
                counts.entry(l.order).or_default().1 += 1;
            }
        }
        let factor = f64::from(self.factor) / 100.0;
        let availability = |order: u32| match counts.get(&order) {
            Some(&(all, well)) if all > 0 => (factor * well as f64 / all as f64).min(1.0),
            _ => 0.0,
        };
        Picker::with_availability(balancer, &eligible, &availability)
    }

    /// The picker of `level`, when the plan has one per level.
    pub(crate) fn picker(&self, level: usize) -> Option<&Picker> {
        self.pickers.get(level)
    }

    /// The level taking a request that drew `draw` (0 to 99) from the plan's loads.
    pub fn level_of(&self, draw: u32) -> usize {
        level_of(&self.loads, draw)
    }

    /// The eligible hosts of `level` (none past the last level).
    pub fn hosts(&self, level: usize) -> &[usize] {
        self.hosts.get(level).map_or(&[], Vec::as_slice)
    }

    /// Each level's health (see [`Plan::health`]'s field).
    pub fn health(&self) -> &[u32] {
        &self.health
    }

    /// Whether one level takes all the traffic (no draw needed).
    pub fn is_single(&self) -> bool {
        self.loads.iter().filter(|l| **l > 0).count() <= 1
    }
}

/// The level of `loads` (percent per level, summing to 100) that a draw of `draw` (0 to 99)
/// falls in, as Envoy's `choosePriority`: the first whose cumulative load exceeds it (past
/// the last level when none does).
pub fn level_of(loads: &[u32], draw: u32) -> usize {
    let mut sum = 0;
    for (level, load) in loads.iter().enumerate() {
        sum += load;
        if draw < sum {
            return level;
        }
    }
    loads.len()
}

/// Envoy's `distributeLoad`: 100% shared out in level order, each level `weight × 100 /
/// denominator` of it while any is left, the rounding rest to the first level with weight;
/// `None` when the denominator is 0.
pub(crate) fn distribute(weights: &[u32], denominator: u32) -> Option<Vec<u32>> {
    let mut left = 100u32;
    let mut loads = Vec::with_capacity(weights.len());
    for w in weights {
        let load = left.min((w * 100).checked_div(denominator)?);
        left -= load;
        loads.push(load);
    }
    if let Some(first) = weights.iter().position(|w| *w > 0) {
        loads[first] += left;
    }
    Some(loads)
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

    /// Every host healthy: the highest level with endpoints takes everything, whatever
    /// follows; an empty P0 (none listed) passes its traffic to P1.
    #[test]
    fn the_highest_populated_level_serves_and_an_empty_one_passes_its_load_on() {
        assert_eq!(serving_level(&endpoints(&[0, 0, 1, 2, 2])), 0..2);
        assert_eq!(serving_level(&endpoints(&[1, 1, 3])), 0..2);
        assert_eq!(serving_level(&endpoints(&[2])), 0..1);
        assert_eq!(serving_level(&endpoints(&[])), 0..0);
    }

    /// Envoy's defaults with the panic threshold `panic` (failing traffic on panic when
    /// `fail`).
    fn panic_at(panic: f64, fail: bool) -> EndpointHealth {
        EndpointHealth {
            panic_threshold: panic,
            fail_traffic_on_panic: fail,
            ..EndpointHealth::default()
        }
    }

    fn plan(priorities: &[u32], healthy: &[bool], panic: f64) -> (Vec<u32>, Vec<Vec<usize>>) {
        let p = Plan::new(priorities, healthy, &panic_at(panic, false));
        (p.loads, p.hosts)
    }

    /// Levels of a cluster without a health signal: ranges by priority, absent levels
    /// empty with no health.
    #[test]
    fn levels_without_health_are_whole_or_empty() {
        let levels = Levels::new(&LoadBalancer::RoundRobin, &endpoints(&[0, 0, 2, 2, 2]));
        assert_eq!(levels.health(), &[100, 0, 100]);
        assert_eq!(
            (0..4).map(|l| levels.range(l)).collect::<Vec<_>>(),
            [0..2, 0..0, 2..5, 0..0]
        );
        assert!(matches!(levels.picker(2), Some(Picker::RoundRobin)));
        assert!(levels.picker(3).is_none());
    }

    /// Envoy's documented examples: P0 health 1.4 × healthy share, the rest to P1.
    #[test]
    fn levels_share_the_load_by_their_health() {
        // 100% / 100%: all to P0.
        assert_eq!(
            plan(&[0, 0, 1, 1], &[true, true, true, true], 50.0).0,
            vec![100, 0]
        );
        // P0 at 50% healthy: 70% to P0, 30% to P1 (its health 100%).
        let (loads, hosts) = plan(&[0, 0, 1, 1], &[true, false, true, true], 50.0);
        assert_eq!(loads, vec![70, 30]);
        assert_eq!(hosts, vec![vec![0], vec![2, 3]]);
        // Four of five P0 hosts healthy: 80% × 1.4 caps at 100%.
        let five = [0, 0, 0, 0, 0, 1];
        assert_eq!(
            plan(&five, &[true, true, true, true, false, true], 50.0).0,
            vec![100, 0]
        );
        // P0 at 20%, P1 at 20% (28% each): normalised over 56%, both in panic? no, the total
        // health is not 100% and each is below 50%: total panic, by host counts.
        let ten = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1];
        let mut h = [false; 10];
        h[0] = true;
        h[5] = true;
        assert_eq!(plan(&ten, &h, 50.0).0, vec![50, 50]);
        // Without panic: normalised health, 28 × 100 / 56 = 50 each, healthy hosts only.
        let (loads, hosts) = plan(&ten, &h, 0.0);
        assert_eq!(loads, vec![50, 50]);
        assert_eq!(hosts, vec![vec![0], vec![5]]);
    }

    #[test]
    fn a_level_below_the_panic_threshold_uses_all_its_hosts() {
        // One of three healthy (33%) under 50%: panic, all three; alone, it takes all.
        let (loads, hosts) = plan(&[0, 0, 0], &[true, false, false], 50.0);
        assert_eq!(loads, vec![100]);
        assert_eq!(hosts, vec![vec![0, 1, 2]]);
        // At a threshold of 20% it is not in panic: only the healthy host.
        assert_eq!(
            plan(&[0, 0, 0], &[true, false, false], 20.0).1,
            vec![vec![0]]
        );
        // Nothing healthy and panic disabled: P0 takes the load and has no host.
        let (loads, hosts) = plan(&[0, 0], &[false, false], 0.0);
        assert_eq!(loads, vec![100]);
        assert!(hosts[0].is_empty());
        // Nothing healthy with panic: every host of every level, by host count.
        assert_eq!(plan(&[0, 1, 1, 1], &[false; 4], 50.0).0, vec![25, 75]);
    }

    #[test]
    fn a_draw_picks_the_level_by_cumulative_load() {
        let p = Plan::new(
            &[0, 0, 1, 1],
            &[true, false, true, true],
            &panic_at(50.0, false),
        );
        assert!(!p.is_single());
        assert_eq!(p.hosts(p.level_of(0)), &[0]);
        assert_eq!(p.hosts(p.level_of(69)), &[0]);
        assert_eq!(p.hosts(p.level_of(70)), &[2, 3]);
        assert_eq!(p.hosts(p.level_of(99)), &[2, 3]);
        assert_eq!(p.health(), &[70, 100]);
        // Levels absent in between (priorities 0 and 2) carry nothing.
        let gap = Plan::new(&[0, 2], &[false, true], &panic_at(50.0, false));
        assert_eq!(gap.hosts(gap.level_of(0)), &[1]);
        assert_eq!(gap.health(), &[0, 0, 100]);
        assert!(gap.is_single());
    }

    /// Envoy's `fail_traffic_on_panic`: a level in panic has no host instead of all of them;
    /// a level not in panic keeps its healthy ones, and without panic nothing changes.
    #[test]
    fn failing_on_panic_leaves_a_panicking_level_without_hosts() {
        let fail = |priorities: &[u32], healthy: &[bool]| {
            let p = Plan::new(priorities, healthy, &panic_at(50.0, true));
            (p.loads, p.hosts)
        };
        // One of three healthy: in panic, no host.
        assert_eq!(
            fail(&[0, 0, 0], &[true, false, false]),
            (vec![100], vec![vec![]])
        );
        // Nothing healthy anywhere: total panic, by host counts, and no host in either level.
        let (loads, hosts) = fail(&[0, 1, 1, 1], &[false; 4]);
        assert_eq!(loads, vec![25, 75]);
        assert!(hosts.iter().all(Vec::is_empty));
        // P0 in panic (one of five: health 28), P1 not (one of two: 70), 98 in all: P0's
        // share fails, P1 serves its own from its healthy host.
        let (loads, hosts) = fail(
            &[0, 0, 0, 0, 0, 1, 1],
            &[true, false, false, false, false, true, false],
        );
        assert_eq!(loads, vec![29, 71]);
        assert_eq!(hosts, vec![vec![], vec![5]]);
        // Two of three healthy: no panic, the healthy two.
        assert_eq!(fail(&[0, 0, 0], &[true, true, false]).1, vec![vec![0, 1]]);
    }

    /// A consistent-hashing plan keeps a ring per level over that level's eligible hosts: a
    /// hash picks the same host as a ring built over those hosts alone, never an unhealthy
    /// one; other balancers keep none.
    #[test]
    fn a_hashing_plan_rings_each_level_over_its_eligible_hosts() {
        use bearing_proxy_config::RingHashFunction;
        let all = endpoints(&[0, 0, 0, 0]);
        let healthy = [true, false, true, true];
        let ring = LoadBalancer::RingHash {
            minimum_ring_size: 64,
            maximum_ring_size: 64,
            hash_function: RingHashFunction::XxHash,
        };
        let plan =
            Plan::new(&[0, 0, 0, 0], &healthy, &panic_at(50.0, false)).with_pickers(&ring, &all);
        assert_eq!(plan.hosts(0), [0, 2, 3]);
        let eligible: Vec<Endpoint> = [0, 2, 3].iter().map(|&i| all[i].clone()).collect();
        let alone = Picker::new(&ring, &eligible);
        let (per_level, turn) = (plan.picker(0).expect("a ring"), Default::default());
        for h in (0..200u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
            let picked = per_level.start((3, 0), &turn, Some(h), |_| 0);
            assert_eq!(picked, alone.start((3, 0), &turn, Some(h), |_| 0));
            assert_ne!(plan.hosts(0)[picked], 1, "the unhealthy host");
        }
        let plain = Plan::new(&[0, 0], &[true, true], &panic_at(50.0, false));
        assert!(plain.picker(0).is_none());
    }

    /// A round robin plan over endpoints of different weights keeps an EDF schedule per level
    /// over its eligible hosts: with the weight-3 host ejected the rest (weights 1 and 2)
    /// share 1:2 in Envoy's order; a level left with equal weights is plain round robin.
    #[test]
    fn a_weighted_plan_schedules_each_level_over_its_eligible_hosts() {
        let weighted: Vec<Endpoint> = [1, 3, 2]
            .iter()
            .zip(endpoints(&[0, 0, 0]))
            .map(|(w, e)| Endpoint { weight: *w, ..e })
            .collect();
        let rr = LoadBalancer::RoundRobin;
        assert!(crate::balance::picks_by_endpoints(&rr, &weighted));
        assert!(!crate::balance::picks_by_endpoints(
            &rr,
            &endpoints(&[0, 0])
        ));
        let plan = Plan::new(&[0, 0, 0], &[true, false, true], &panic_at(50.0, false))
            .with_pickers(&rr, &weighted);
        assert_eq!(plan.hosts(0), [0, 2]);
        let (picker, turn) = (plan.picker(0).expect("a schedule"), Default::default());
        let picks: Vec<usize> = (0..6)
            .map(|_| picker.start((2, 0), &turn, None, |_| 0))
            .collect();
        assert_eq!(picks, [1, 0, 1, 1, 0, 1]);
        let plan = Plan::new(&[0, 0, 0], &[true, true, false], &panic_at(50.0, false))
            .with_pickers(&rr, &weighted);
        let (picker, turn) = (plan.picker(0).expect("a picker"), Default::default());
        let picks: Vec<usize> = (0..4)
            .map(|_| picker.start((2, 0), &turn, None, |_| 0))
            .collect();
        assert_eq!(picks, [1, 1, 0, 1], "weights 1 and 3");
        let equal = Plan::new(&[0, 0, 0], &[false, true, true], &panic_at(50.0, false))
            .with_pickers(
                &rr,
                &[
                    weighted[0].clone(),
                    weighted[2].clone(),
                    weighted[2].clone(),
                ],
            );
        assert!(matches!(equal.picker(0), Some(Picker::RoundRobin)));
    }

    /// Envoy's documented locality weighting (arch overview, "Locality weighted load
    /// balancing"): X of weight 1, Y of weight 2 and whole, factor 1.4: X takes 33% while
    /// 70% or more of its hosts are healthy, 26% at 50%, 15% at 25% (here 20 hosts in X);
    /// none at 0%. Kuma's factor 2.0 keeps X whole down to 50%. A level in panic balances
    /// across all its hosts, by host.
    #[test]
    fn weighted_localities_take_traffic_by_weight_times_availability_as_envoy() {
        use bearing_proxy_config::LocalityWeight;
        let at = |order: u32, weight: u32, i: u8| Endpoint {
            locality: Some(LocalityWeight {
                index: order,
                weight,
                order,
            }),
            ..crate::upstream::plain_endpoint(([10, 0, order as u8, i], 80).into())
        };
        let mut all: Vec<Endpoint> = (0..20).map(|i| at(0, 1, i)).collect();
        all.extend((0..20).map(|i| at(1, 2, i)));
        let rr = LoadBalancer::RoundRobin;
        assert!(crate::balance::picks_by_endpoints(&rr, &all));
        let share_of_x = |healthy_in_x: usize, factor: u32, panic: f64| {
            let healthy: Vec<bool> = (0..40).map(|i| i >= 20 || i < healthy_in_x).collect();
            let config = EndpointHealth {
                overprovisioning_factor: factor,
                ..panic_at(panic, false)
            };
            let plan = Plan::new(&[0; 40], &healthy, &config).with_pickers(&rr, &all);
            let hosts = plan.hosts(0);
            let (picker, turn) = (plan.picker(0).expect("a picker"), Default::default());
            let picks = 2700;
            let in_x = (0..picks)
                .map(|_| hosts[picker.start((hosts.len(), 0), &turn, None, |_| 0)])
                .filter(|&i| i < 20)
                .count();
            (in_x as f64 * 100.0 / picks as f64).round()
        };
        assert_eq!(share_of_x(20, 140, 50.0), 33.0);
        assert_eq!(share_of_x(14, 140, 50.0), 33.0);
        assert_eq!(share_of_x(10, 140, 50.0), 26.0);
        assert_eq!(share_of_x(5, 140, 50.0), 15.0);
        assert_eq!(share_of_x(0, 140, 50.0), 0.0);
        assert_eq!(share_of_x(10, 200, 50.0), 33.0);
        assert_eq!(share_of_x(6, 200, 50.0), 23.0);
        // 10 of 40 healthy is under the 50% threshold: all 40 hosts by host, X half.
        assert_eq!(share_of_x(0, 140, 80.0), 50.0);
    }

    /// The assignment's overprovisioning factor weighs a level's health: half of P0 healthy
    /// keeps 70% of the traffic under Envoy's 1.4, all of it under kuma-cp's 2.0.
    #[test]
    fn the_overprovisioning_factor_weighs_level_health() {
        let loads = |factor| {
            let config = EndpointHealth {
                overprovisioning_factor: factor,
                ..EndpointHealth::default()
            };
            Plan::new(&[0, 0, 1], &[true, false, true], &config).loads
        };
        assert_eq!(loads(140), [70, 30]);
        assert_eq!(loads(200), [100, 0]);
    }
}

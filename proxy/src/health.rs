//! An endpoint's health as Envoy keeps it: independent reasons a host takes no traffic
//! (failed its active health check, ejected by outlier detection), each set and cleared by
//! its own signal, kept on the endpoint's pool so they survive a config reload that keeps the
//! endpoint; and a cluster's view of them, the priority plan the load balancer reads.
//!
//! The hot path reads one `ArcSwap` (the plan) per request of a cluster that has a health
//! signal; clusters without one keep the precomputed serving range and never look here.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bearing_proxy_config::{Cluster, Endpoint, EndpointHealth};

use crate::outlier::Detector;
use crate::priority::Plan;
use crate::upstream::{EndpointPool, EndpointSet, ResolvedPools};

/// The host failed its active health check (Envoy's `FAILED_ACTIVE_HC`).
const FAILED_ACTIVE_HC: u8 = 1;
/// The host has not been checked yet (Envoy's `PENDING_ACTIVE_HC`); it also fails.
const PENDING_ACTIVE_HC: u8 = 2;
/// Outlier detection ejected the host (Envoy's `FAILED_OUTLIER_CHECK`).
const OUTLIER_EJECTED: u8 = 4;

/// One endpoint's health flags, set and read lock-free.
#[derive(Debug, Default)]
pub struct HostHealth(AtomicU8);

impl HostHealth {
    /// Flags of a new host of `cluster`: with an active health check it is unhealthy until
    /// its first check passes, as Envoy adds hosts to a health-checked cluster.
    pub fn for_cluster(cluster: &Cluster) -> Self {
        let health = HostHealth::default();
        if cluster.health.check.is_some() {
            health.await_first_check();
        }
        health
    }

    /// Marks the host unchecked and failing: its checker starts (again) from scratch.
    pub fn await_first_check(&self) {
        self.0
            .fetch_or(FAILED_ACTIVE_HC | PENDING_ACTIVE_HC, Ordering::Relaxed);
    }

    /// Clears what active health checking set (a cluster without a check).
    pub fn clear_active(&self) {
        self.0
            .fetch_and(!(FAILED_ACTIVE_HC | PENDING_ACTIVE_HC), Ordering::Relaxed);
    }

    /// Whether the host has had no check result yet.
    pub fn is_pending(&self) -> bool {
        self.0.load(Ordering::Relaxed) & PENDING_ACTIVE_HC != 0
    }

    /// Whether the active health check failed (or has not passed yet).
    pub fn failed_active(&self) -> bool {
        self.0.load(Ordering::Relaxed) & FAILED_ACTIVE_HC != 0
    }

    /// Records the active check's verdict: healthy clears both active flags.
    pub fn set_active(&self, healthy: bool) {
        match healthy {
            true => self.clear_active(),
            false => {
                self.0.fetch_and(!PENDING_ACTIVE_HC, Ordering::Relaxed);
                self.0.fetch_or(FAILED_ACTIVE_HC, Ordering::Relaxed);
            }
        }
    }

    /// Whether outlier detection has the host ejected.
    pub fn is_ejected(&self) -> bool {
        self.0.load(Ordering::Relaxed) & OUTLIER_EJECTED != 0
    }

    /// Ejects the host (`true`) or takes it back.
    pub fn set_ejected(&self, ejected: bool) {
        match ejected {
            true => self.0.fetch_or(OUTLIER_EJECTED, Ordering::Relaxed),
            false => self.0.fetch_and(!OUTLIER_EJECTED, Ordering::Relaxed),
        };
    }

    /// Whether the host takes traffic, counting only the signals `health` configures (a
    /// flag left by a signal a cluster no longer has does not count).
    pub fn is_healthy(&self, health: &EndpointHealth) -> bool {
        let flags = self.0.load(Ordering::Relaxed);
        let mut failing = 0;
        if health.check.is_some() {
            failing |= FAILED_ACTIVE_HC;
        }
        if health.outlier.is_some() {
            failing |= OUTLIER_EJECTED;
        }
        flags & failing == 0
    }
}

/// The health of one runtime cluster's endpoints: their priorities and pools, the plan the
/// load balancer reads, and the outlier detector, if any.
pub struct ClusterHealth {
    config: EndpointHealth,
    hosts: TrackedHosts,
    planned: ArcSwap<Planned>,
    /// Held while a plan is made from the hosts' flags and stored, so that refreshes racing
    /// on different threads store in the order they read: the last plan stored is never
    /// older than the last flag change (off the request path: health changes only).
    refreshing: Mutex<()>,
    /// Outlier detection, when the cluster has it.
    pub detector: Option<Detector>,
}

/// Whose health a cluster tracks.
enum TrackedHosts {
    /// The pools of the config's endpoints, in the same order.
    Fixed(Vec<Arc<EndpointPool>>),
    /// Hostnames resolved at run time: the hosts of the set in force, which the resolver
    /// replaces (a host kept keeps its pool, so its health).
    Resolved(Arc<ResolvedPools>),
}

/// A plan and, for resolved hosts, the set it was made over (its indices point into it).
pub struct Planned {
    /// The plan.
    pub plan: Arc<Plan>,
    /// The resolved set the plan is over; `None` for the config's endpoints.
    pub set: Option<Arc<EndpointSet>>,
}

/// The pools whose health a cluster tracks now, in the order its plan indexes them.
pub enum TrackedPools<'a> {
    /// The config's endpoints' pools.
    Fixed(&'a [Arc<EndpointPool>]),
    /// The pools of a resolved set.
    Resolved(Arc<EndpointSet>),
}

impl TrackedPools<'_> {
    /// The endpoints of these pools, in the same order (the config's of `cluster`, or the
    /// resolved set's).
    pub fn endpoints<'a>(&'a self, cluster: &'a Cluster) -> &'a [Endpoint] {
        match self {
            TrackedPools::Fixed(_) => &cluster.endpoints,
            TrackedPools::Resolved(set) => set.endpoints(),
        }
    }
}

impl std::ops::Deref for TrackedPools<'_> {
    type Target = [Arc<EndpointPool>];

    fn deref(&self) -> &[Arc<EndpointPool>] {
        match self {
            TrackedPools::Fixed(pools) => pools,
            TrackedPools::Resolved(set) => set.pools(),
        }
    }
}

impl ClusterHealth {
    /// The health of `cluster`'s endpoints, whose pools are `pools` (in the same order), with
    /// its outlier detector.
    pub fn new(cluster: &Cluster, pools: &[Arc<EndpointPool>], detector: Option<Detector>) -> Self {
        Self::tracking(cluster, TrackedHosts::Fixed(pools.to_vec()), detector)
    }

    /// The health of the hosts `cluster`'s hostnames resolve to, as `resolved` holds them
    /// (outlier detection only: active checks on them are refused by the translation).
    pub fn resolved(
        cluster: &Cluster,
        resolved: Arc<ResolvedPools>,
        detector: Option<Detector>,
    ) -> Self {
        Self::tracking(cluster, TrackedHosts::Resolved(resolved), detector)
    }

    fn tracking(cluster: &Cluster, hosts: TrackedHosts, detector: Option<Detector>) -> Self {
        let planned = Planned {
            plan: Arc::new(Plan::default()),
            set: None,
        };
        let health = ClusterHealth {
            config: cluster.health.clone(),
            hosts,
            planned: ArcSwap::from_pointee(planned),
            refreshing: Mutex::new(()),
            detector,
        };
        health.refresh(cluster);
        health
    }

    /// Recomputes the plan from the hosts' flags: called whenever a signal changed one (and
    /// for resolved hosts whenever the set changed). `cluster` (the one these are of) gives a
    /// plan its pickers per level where they depend on the endpoints (rings, tables,
    /// schedules over different weights).
    pub fn refresh(&self, cluster: &Cluster) {
        // A panic elsewhere while holding it leaves nothing half-done: the plan is stored
        // whole or not at all.
        let _serial = self
            .refreshing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let pools = self.pools();
        let endpoints = pools.endpoints(cluster);
        let priorities: Vec<u32> = endpoints.iter().map(|e| e.priority).collect();
        let healthy: Vec<bool> = pools
            .iter()
            .map(|p| p.health().is_healthy(&self.config))
            .collect();
        let mut plan = Plan::new(&priorities, &healthy, &self.config);
        if crate::balance::picks_by_endpoints(&cluster.load_balancer, endpoints) {
            plan = plan.with_pickers(&cluster.load_balancer, endpoints);
        }
        let set = match pools {
            TrackedPools::Fixed(_) => None,
            TrackedPools::Resolved(set) => Some(set),
        };
        let plan = Arc::new(plan);
        self.planned.store(Arc::new(Planned { plan, set }));
    }

    /// The plan in force, with the resolved set it is over. For resolved hosts a set the
    /// resolver replaced since is planned first (once per change; the hosts it keeps keep
    /// their flags), so a plan never points into hosts DNS no longer returns.
    pub fn planned(&self, cluster: &Cluster) -> Arc<Planned> {
        let planned = self.planned.load_full();
        if let (TrackedHosts::Resolved(resolved), Some(set)) = (&self.hosts, &planned.set) {
            if !resolved.is_current(set) {
                self.refresh(cluster);
                return self.planned.load_full();
            }
        }
        planned
    }

    /// The plan in force (of the config's endpoints; see [`Self::planned`]).
    pub fn plan(&self) -> Arc<Plan> {
        self.planned.load().plan.clone()
    }

    /// The pools whose health is tracked now, in the order the plan indexes them.
    pub fn pools(&self) -> TrackedPools<'_> {
        match &self.hosts {
            TrackedHosts::Fixed(pools) => TrackedPools::Fixed(pools),
            TrackedHosts::Resolved(resolved) => TrackedPools::Resolved(resolved.current()),
        }
    }

    /// Hosts that take traffic now (Envoy's `membership_healthy`).
    pub fn healthy_count(&self) -> usize {
        self.pools()
            .iter()
            .filter(|p| p.health().is_healthy(&self.config))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bearing_proxy_config::OutlierDetection;

    #[test]
    fn reasons_are_independent_and_only_configured_ones_count() {
        let h = HostHealth::default();
        let both = EndpointHealth {
            outlier: Some(OutlierDetection::default()),
            ..EndpointHealth::default()
        };
        assert!(h.is_healthy(&both));
        h.set_ejected(true);
        h.await_first_check();
        assert!(h.is_pending() && h.failed_active());
        assert!(!h.is_healthy(&both));
        // An active-check flag does not count without a check.
        h.set_ejected(false);
        assert!(h.is_healthy(&both));
        h.set_active(true);
        assert!(!h.is_pending() && !h.failed_active());
        h.set_active(false);
        assert!(!h.is_pending() && h.failed_active());
        assert!(h.is_healthy(&EndpointHealth::default()));
    }

    /// Hosts taken back on different threads at once, each refreshing the plan after its
    /// own change: the plan left is the one of every host back, whatever order the
    /// refreshes ran in (refreshes are serialised; unserialised, a refresh that read the
    /// flags earlier could store its plan last).
    #[test]
    fn racing_refreshes_leave_the_plan_of_the_last_flags() {
        let endpoints: Vec<Endpoint> = (0..4u8)
            .map(|i| crate::upstream::plain_endpoint(([10, 0, 0, i], 80).into()))
            .collect();
        let cluster = Cluster {
            endpoints: endpoints.clone(),
            health: EndpointHealth {
                outlier: Some(OutlierDetection::default()),
                ..EndpointHealth::default()
            },
            ..crate::upstream::test_cluster("backend")
        };
        let pools: Vec<_> = endpoints.iter().map(EndpointPool::new).collect();
        let health = ClusterHealth::new(&cluster, &pools, None);
        for _ in 0..1000 {
            for pool in &pools {
                pool.health().set_ejected(true);
            }
            health.refresh(&cluster);
            let start = std::sync::Barrier::new(pools.len());
            std::thread::scope(|s| {
                for pool in &pools {
                    let (start, health, cluster) = (&start, &health, &cluster);
                    s.spawn(move || {
                        start.wait();
                        pool.health().set_ejected(false);
                        health.refresh(cluster);
                    });
                }
            });
            assert_eq!(health.plan().hosts(0), [0, 1, 2, 3]);
        }
    }
}

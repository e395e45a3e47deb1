//! An endpoint's health as Envoy keeps it: independent reasons a host takes no traffic
//! (failed its active health check, ejected by outlier detection), each set and cleared by
//! its own signal, kept on the endpoint's pool so they survive a config reload that keeps the
//! endpoint; and a cluster's view of them, the priority plan the load balancer reads.
//!
//! The hot path reads one `ArcSwap` (the plan) per request of a cluster that has a health
//! signal; clusters without one keep the precomputed serving range and never look here.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bearing_proxy_config::{Cluster, EndpointHealth};

use crate::outlier::Detector;
use crate::priority::Plan;
use crate::upstream::EndpointPool;

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
    priorities: Vec<u32>,
    pools: Vec<Arc<EndpointPool>>,
    plan: ArcSwap<Plan>,
    /// Outlier detection, when the cluster has it.
    pub detector: Option<Detector>,
}

impl ClusterHealth {
    /// The health of `cluster`'s endpoints, whose pools are `pools` (in the same order), with
    /// its outlier detector.
    pub fn new(cluster: &Cluster, pools: &[Arc<EndpointPool>], detector: Option<Detector>) -> Self {
        let health = ClusterHealth {
            config: cluster.health.clone(),
            priorities: cluster.endpoints.iter().map(|e| e.priority).collect(),
            pools: pools.to_vec(),
            plan: ArcSwap::from_pointee(Plan::default()),
            detector,
        };
        health.refresh(cluster);
        health
    }

    /// Recomputes the plan from the hosts' flags: called whenever a signal changed one.
    /// `cluster` (the one these are of) gives a plan its pickers per level where they depend
    /// on the endpoints (rings, tables, schedules over different weights).
    pub fn refresh(&self, cluster: &Cluster) {
        let healthy: Vec<bool> = self
            .pools
            .iter()
            .map(|p| p.health().is_healthy(&self.config))
            .collect();
        let mut plan = Plan::new(
            &self.priorities,
            &healthy,
            (
                self.config.panic_threshold,
                self.config.fail_traffic_on_panic,
            ),
        );
        if crate::balance::picks_by_endpoints(&cluster.load_balancer, &cluster.endpoints) {
            plan = plan.with_pickers(&cluster.load_balancer, &cluster.endpoints);
        }
        self.plan.store(Arc::new(plan));
    }

    /// The plan in force.
    pub fn plan(&self) -> Arc<Plan> {
        self.plan.load_full()
    }

    /// The endpoints' pools, in the cluster's order.
    pub fn pools(&self) -> &[Arc<EndpointPool>] {
        &self.pools
    }

    /// Hosts that take traffic now (Envoy's `membership_healthy`).
    pub fn healthy_count(&self) -> usize {
        self.pools
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
}

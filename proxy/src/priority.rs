//! Envoy's priority levels: which of a cluster's endpoints take its traffic.
//!
//! Envoy's rule (its "priority levels" and "overprovisioning factor"): a level's health is the
//! share of its hosts that are healthy times the overprovisioning factor (1.4 unless the
//! ClusterLoadAssignment's `policy` says otherwise: Bearing takes a factor of 1.0 or more,
//! which changes nothing while every host is healthy, and NACKs a smaller one), capped at
//! 100%; a level without hosts has health 0. The highest level (priority 0) takes its health's share
//! of the traffic and the levels after it what is left, in order.
//!
//! Bearing has no health signal yet (active health checks and outlier detection are NACKed),
//! so every host counts as healthy: the highest level that has endpoints has health 100% and
//! takes all the traffic, and a level with no endpoints passes its load on. A cluster keeps
//! that level's index range, found when its endpoints are applied, so choosing among levels
//! costs nothing per request. Splitting the traffic across levels by their health (Envoy's
//! priority load, and its panic mode) comes with a health signal.

use std::ops::Range;

use bearing_proxy_config::Endpoint;

/// The index range of the endpoints that take the traffic among `endpoints` (ordered by
/// priority, as `Cluster::endpoints` is): those of the highest priority level present, every
/// host being healthy.
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
}

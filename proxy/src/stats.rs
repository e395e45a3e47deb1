//! Prometheus metrics for listeners and clusters.
//!
//! Counters are created once per listener or cluster when a config is applied and handed to the
//! hot path as plain atomic handles, so counting a request is an atomic add, not a label lookup.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::circuit::Occupancy;
use crate::health_check::HealthCheckStats;
use crate::outlier::OutlierStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabel {
    path: String,
}

/// HTTP status class label values, in `StatusCounters` order.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Requests counted by status class (index 0 is 1xx … 4 is 5xx).
#[derive(Clone, Debug, Default)]
pub struct StatusCounters([Counter; 5]);

impl StatusCounters {
    /// Counts one response with `status`.
    pub fn count(&self, status: u16) {
        let i = usize::from((status / 100).clamp(1, 5) - 1);
        self.0[i].inc();
    }
}

/// Metrics of one listener.
#[derive(Clone, Debug, Default)]
pub struct ListenerStats {
    /// Connections accepted.
    pub connections: Counter,
    /// Connections open now.
    pub active: Gauge,
    /// Bytes read from downstream.
    pub rx_bytes: Counter,
    /// Bytes written to downstream.
    pub tx_bytes: Counter,
    /// HTTP responses sent, by status class.
    pub requests: StatusCounters,
    /// Connections that ended in an error (peer reset, protocol error, accept failure).
    pub errors: Counter,
    /// TCP proxy connections closed because every connection attempt upstream failed
    /// (Envoy's `tcp.<stat_prefix>.upstream_cx_connect_attempts_exceeded`).
    pub connect_attempts_exceeded: Counter,
    /// TCP proxy connections closed because nothing moved either way for the listener's
    /// idle timeout (Envoy's `tcp.<stat_prefix>.idle_timeout`).
    pub idle_timeout: Counter,
    /// HTTP requests whose stream moved no byte for its idle timeout: answered 504 `stream
    /// timeout` before the response, reset after (Envoy's `downstream_rq_idle_timeout`).
    pub stream_idle_timeout: Counter,
    /// HTTP connections closed (HTTP/2: sent GOAWAY) because no request was in flight for
    /// the connection manager's idle timeout (Envoy's `downstream_cx_idle_timeout`).
    pub cx_idle_timeout: Counter,
}

/// Metrics of one cluster.
#[derive(Clone, Debug, Default)]
pub struct ClusterStats {
    /// Upstream connections opened.
    pub connections: Counter,
    /// Upstream connection attempts that failed.
    pub connect_failures: Counter,
    /// Requests or connections refused because no endpoint could be reached.
    pub no_healthy_upstream: Counter,
    /// Upstream responses, by status class.
    pub requests: StatusCounters,
    /// Requests that failed after connecting (reset, timeout, protocol error).
    pub request_errors: Counter,
    /// Requests answered with the 504 of their timeout, which spans waiting for a connection,
    /// connecting and every try (Envoy's `upstream_rq_timeout`).
    pub rq_timeout: Counter,
    /// Tries that reached the cluster's `max_stream_duration` before their response ended,
    /// its head or its body (Envoy's `upstream_rq_max_duration_reached`).
    pub rq_max_duration_reached: Counter,
    /// Bytes written to upstream.
    pub tx_bytes: Counter,
    /// Bytes read from upstream.
    pub rx_bytes: Counter,
    /// Connections, requests and retries held now, checked against the circuit breakers;
    /// shared by every version of the cluster.
    pub occupancy: Arc<Occupancy>,
    /// Times a connection was needed past `max_connections` (Envoy's `upstream_cx_overflow`).
    pub cx_overflow: Counter,
    /// Times a connection pool was needed past `max_connection_pools` (Envoy's
    /// `upstream_cx_pool_overflow`).
    pub cx_pool_overflow: Counter,
    /// Requests refused past `max_pending_requests` or `max_requests`
    /// (Envoy's `upstream_rq_pending_overflow`).
    pub rq_pending_overflow: Counter,
    /// Further attempts not made past `max_retries` (Envoy's `upstream_rq_retry_overflow`).
    pub rq_retry_overflow: Counter,
    /// Requests to the cluster sent again by a route's retry policy (Envoy's
    /// `upstream_rq_retry`).
    pub rq_retry: Counter,
    /// Retries that waited the interval a response's reset headers asked for (Envoy's
    /// `upstream_rq_retry_backoff_ratelimited`).
    pub rq_retry_backoff_ratelimited: Counter,
    /// Retries that waited the jittered exponential back-off (Envoy's
    /// `upstream_rq_retry_backoff_exponential`).
    pub rq_retry_backoff_exponential: Counter,
    /// Active health checking (Envoy's `health_check.*`).
    pub health_check: HealthCheckStats,
    /// Outlier detection (Envoy's `outlier_detection.*`).
    pub outlier: OutlierStats,
    /// Endpoints taking traffic by their health (Envoy's `membership_healthy`), kept up to
    /// date for clusters with a health signal.
    pub membership_healthy: Gauge,
}

/// Config source metrics.
#[derive(Clone, Debug, Default)]
pub struct ConfigStats {
    /// Configs applied.
    pub applied: Counter,
    /// Configs rejected.
    pub rejected: Counter,
    /// Listeners that failed to bind.
    pub listener_bind_failures: Counter,
    /// Listeners of an applied config that could not be built (gateway router or TLS, missing
    /// cluster, mesh certificate unavailable), so are not served.
    pub listener_build_failures: Counter,
}

/// One metric of every listener or cluster: its name, help and type, and how to find it in one
/// listener's or cluster's handles.
struct Series<T> {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    metric: fn(&T) -> &dyn EncodeMetric,
}

/// One counter per status class of every listener or cluster (`class` label).
struct ClassSeries<T> {
    name: &'static str,
    help: &'static str,
    counters: fn(&T) -> &StatusCounters,
}

/// The handles of every listener (or cluster) by name, encoded at scrape time as one family
/// per series. Creating a listener's handles is one map insert: as prometheus-client families
/// they took eleven label lookups per listener or cluster, 4-6 ms for a thousand of each at
/// start-up.
/// Handles live as long as the process, so counts go on across config changes.
struct ByName<T: 'static> {
    label: &'static str,
    series: &'static [Series<T>],
    classes: ClassSeries<T>,
    handles: RwLock<BTreeMap<String, T>>,
}

impl<T: Clone + Default> ByName<T> {
    /// The handles of `name`, created on first use.
    fn get_or_create(&self, name: &str) -> T {
        if let Some(h) = read(&self.handles).get(name) {
            return h.clone();
        }
        let mut handles = self.handles.write().unwrap_or_else(|p| p.into_inner());
        handles.entry(name.to_string()).or_default().clone()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

impl<T> std::fmt::Debug for ByName<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByName")
            .field("label", &self.label)
            .finish()
    }
}

impl<T: Send + Sync + 'static> Collector for ByName<T> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let handles = read(&self.handles);
        for s in self.series {
            let mut family = encoder.encode_descriptor(s.name, s.help, None, s.kind)?;
            for (name, h) in handles.iter() {
                let labels = [(self.label, name.as_str())];
                (s.metric)(h).encode(family.encode_family(&labels)?)?;
            }
        }
        let c = &self.classes;
        let mut family = encoder.encode_descriptor(c.name, c.help, None, MetricType::Counter)?;
        for (name, h) in handles.iter() {
            for (class, counter) in CLASSES.iter().zip(&(c.counters)(h).0) {
                let labels = [(self.label, name.as_str()), ("class", class)];
                counter.encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

const LISTENER_SERIES: &[Series<ListenerStats>] = &[
    Series {
        name: "listener_downstream_connections",
        help: "Connections accepted.",
        kind: MetricType::Counter,
        metric: |h| &h.connections,
    },
    Series {
        name: "listener_downstream_connections_active",
        help: "Connections open.",
        kind: MetricType::Gauge,
        metric: |h| &h.active,
    },
    Series {
        name: "listener_downstream_rx_bytes",
        help: "Bytes read from downstream.",
        kind: MetricType::Counter,
        metric: |h| &h.rx_bytes,
    },
    Series {
        name: "listener_downstream_tx_bytes",
        help: "Bytes written to downstream.",
        kind: MetricType::Counter,
        metric: |h| &h.tx_bytes,
    },
    Series {
        name: "listener_downstream_errors",
        help: "Downstream connections ended by an error.",
        kind: MetricType::Counter,
        metric: |h| &h.errors,
    },
    Series {
        name: "listener_upstream_cx_connect_attempts_exceeded",
        help: "TCP proxy connections closed after every upstream connection attempt failed.",
        kind: MetricType::Counter,
        metric: |h| &h.connect_attempts_exceeded,
    },
    Series {
        name: "listener_idle_timeout",
        help: "TCP proxy connections closed after their idle timeout.",
        kind: MetricType::Counter,
        metric: |h| &h.idle_timeout,
    },
    Series {
        name: "listener_downstream_rq_idle_timeout",
        help: "HTTP requests ended by their stream idle timeout.",
        kind: MetricType::Counter,
        metric: |h| &h.stream_idle_timeout,
    },
    Series {
        name: "listener_downstream_cx_idle_timeout",
        help: "HTTP connections ended by their connection idle timeout.",
        kind: MetricType::Counter,
        metric: |h| &h.cx_idle_timeout,
    },
];

const CLUSTER_SERIES: &[Series<ClusterStats>] = &[
    Series {
        name: "cluster_upstream_connections",
        help: "Upstream connections opened.",
        kind: MetricType::Counter,
        metric: |h| &h.connections,
    },
    Series {
        name: "cluster_upstream_connect_failures",
        help: "Upstream connection attempts that failed.",
        kind: MetricType::Counter,
        metric: |h| &h.connect_failures,
    },
    Series {
        name: "cluster_no_healthy_upstream",
        help: "Requests or connections with no reachable endpoint.",
        kind: MetricType::Counter,
        metric: |h| &h.no_healthy_upstream,
    },
    Series {
        name: "cluster_upstream_rq_timeout",
        help: "Requests answered 504 at their timeout (waiting, connecting and every try).",
        kind: MetricType::Counter,
        metric: |h| &h.rq_timeout,
    },
    Series {
        name: "cluster_upstream_rq_max_duration_reached",
        help: "Tries that reached the cluster's maximum stream duration (response unfinished).",
        kind: MetricType::Counter,
        metric: |h| &h.rq_max_duration_reached,
    },
    Series {
        name: "cluster_upstream_request_errors",
        help: "Requests that failed after connecting.",
        kind: MetricType::Counter,
        metric: |h| &h.request_errors,
    },
    Series {
        name: "cluster_upstream_rx_bytes",
        help: "Bytes read from upstream.",
        kind: MetricType::Counter,
        metric: |h| &h.rx_bytes,
    },
    Series {
        name: "cluster_upstream_tx_bytes",
        help: "Bytes written to upstream.",
        kind: MetricType::Counter,
        metric: |h| &h.tx_bytes,
    },
    Series {
        name: "cluster_upstream_connections_active",
        help: "Upstream connections open.",
        kind: MetricType::Gauge,
        metric: |h| &h.occupancy.connections,
    },
    Series {
        name: "cluster_upstream_requests_active",
        help: "Requests in flight upstream.",
        kind: MetricType::Gauge,
        metric: |h| &h.occupancy.requests,
    },
    Series {
        name: "cluster_upstream_requests_pending",
        help: "Requests waiting for an upstream connection.",
        kind: MetricType::Gauge,
        metric: |h| &h.occupancy.pending,
    },
    Series {
        name: "cluster_upstream_retries_active",
        help: "Further attempts of requests under way.",
        kind: MetricType::Gauge,
        metric: |h| &h.occupancy.retries,
    },
    Series {
        name: "cluster_upstream_cx_overflow",
        help: "Times a connection was needed past the max_connections circuit breaker.",
        kind: MetricType::Counter,
        metric: |h| &h.cx_overflow,
    },
    Series {
        name: "cluster_upstream_cx_pool_overflow",
        help: "Times a connection pool was needed past the max_connection_pools circuit breaker.",
        kind: MetricType::Counter,
        metric: |h| &h.cx_pool_overflow,
    },
    Series {
        name: "cluster_upstream_connection_pools_active",
        help: "HTTP connection pools alive (a worker's connections to one endpoint).",
        kind: MetricType::Gauge,
        metric: |h| &h.occupancy.pools,
    },
    Series {
        name: "cluster_upstream_rq_pending_overflow",
        help: "Requests refused by the max_pending_requests or max_requests circuit breaker.",
        kind: MetricType::Counter,
        metric: |h| &h.rq_pending_overflow,
    },
    Series {
        name: "cluster_upstream_rq_retry_overflow",
        help: "Attempts not made past the max_retries circuit breaker.",
        kind: MetricType::Counter,
        metric: |h| &h.rq_retry_overflow,
    },
    Series {
        name: "cluster_upstream_rq_retry",
        help: "Requests to the cluster sent again by a route's retry policy.",
        kind: MetricType::Counter,
        metric: |h| &h.rq_retry,
    },
    Series {
        name: "cluster_upstream_rq_retry_backoff_ratelimited",
        help: "Retries that waited the interval a response's reset headers asked for.",
        kind: MetricType::Counter,
        metric: |h| &h.rq_retry_backoff_ratelimited,
    },
    Series {
        name: "cluster_upstream_rq_retry_backoff_exponential",
        help: "Retries that waited the jittered exponential back-off.",
        kind: MetricType::Counter,
        metric: |h| &h.rq_retry_backoff_exponential,
    },
    Series {
        name: "cluster_health_check_attempt",
        help: "Active health check probes started.",
        kind: MetricType::Counter,
        metric: |h| &h.health_check.attempt,
    },
    Series {
        name: "cluster_health_check_success",
        help: "Active health check probes passed.",
        kind: MetricType::Counter,
        metric: |h| &h.health_check.success,
    },
    Series {
        name: "cluster_health_check_failure",
        help: "Active health check probes failed.",
        kind: MetricType::Counter,
        metric: |h| &h.health_check.failure,
    },
    Series {
        name: "cluster_health_check_network_failure",
        help: "Active health check probes failed by the network or a timeout.",
        kind: MetricType::Counter,
        metric: |h| &h.health_check.network_failure,
    },
    Series {
        name: "cluster_membership_healthy",
        help: "Endpoints taking traffic by their health (clusters with a health signal).",
        kind: MetricType::Gauge,
        metric: |h| &h.membership_healthy,
    },
    Series {
        name: "cluster_outlier_detection_ejections_active",
        help: "Endpoints ejected by outlier detection now.",
        kind: MetricType::Gauge,
        metric: |h| &h.outlier.ejections_active,
    },
    Series {
        name: "cluster_outlier_detection_ejections_enforced",
        help: "Ejections made by outlier detection.",
        kind: MetricType::Counter,
        metric: |h| &h.outlier.ejections_enforced_total,
    },
    Series {
        name: "cluster_outlier_detection_ejections_overflow",
        help: "Ejections not made because max_ejection_percent was reached.",
        kind: MetricType::Counter,
        metric: |h| &h.outlier.ejections_overflow,
    },
    Series {
        name: "cluster_outlier_detection_ejections_detected_consecutive_5xx",
        help: "Outliers detected by consecutive 5xx.",
        kind: MetricType::Counter,
        metric: |h| &h.outlier.ejections_detected_consecutive_5xx,
    },
    Series {
        name: "cluster_outlier_detection_ejections_detected_consecutive_gateway_failure",
        help: "Outliers detected by consecutive gateway failures.",
        kind: MetricType::Counter,
        metric: |h| &h.outlier.ejections_detected_consecutive_gateway_failure,
    },
    Series {
        name: "cluster_outlier_detection_ejections_detected_consecutive_local_origin_failure",
        help: "Outliers detected by consecutive local-origin failures.",
        kind: MetricType::Counter,
        metric: |h| {
            &h.outlier
                .ejections_detected_consecutive_local_origin_failure
        },
    },
    Series {
        name: "cluster_outlier_detection_ejections_detected_success_rate",
        help: "Outliers detected by success rate.",
        kind: MetricType::Counter,
        metric: |h| &h.outlier.ejections_detected_success_rate,
    },
    Series {
        name: "cluster_outlier_detection_ejections_detected_failure_percentage",
        help: "Outliers detected by failure percentage.",
        kind: MetricType::Counter,
        metric: |h| &h.outlier.ejections_detected_failure_percentage,
    },
];

/// The registry plus where per-listener and per-cluster handles come from.
pub struct Stats {
    registry: Registry,
    listeners: Arc<ByName<ListenerStats>>,
    clusters: Arc<ByName<ClusterStats>>,
    l_tls_err: Family<ListenerLabel, Counter>,
    l_sni_unknown: Family<ListenerLabel, Counter>,
    l_rbac_denied: Family<ListenerLabel, Counter>,
    l_rbac_allowed: Family<ListenerLabel, Counter>,
    l_rbac_shadow_allowed: Family<ListenerLabel, Counter>,
    l_rbac_shadow_denied: Family<ListenerLabel, Counter>,
    l_fault_aborts: Family<ListenerLabel, Counter>,
    l_fault_delays: Family<ListenerLabel, Counter>,
    l_local_rate_limited: Family<ListenerLabel, Counter>,
    l_connection_rate_limited: Family<ListenerLabel, Counter>,
    access_log_dropped: Family<PathLabel, Counter>,
    /// Mesh DNS server counters (`bearing_dns_*`).
    pub dns: bearing_dns::DnsMetrics,
    /// Config source metrics.
    pub config: ConfigStats,
    /// This proxy's mesh identities, for `bearing_tls_identity_expiry_seconds`.
    pub identities: Arc<IdentityExpiry>,
}

/// This proxy's mesh identities, whose time left is computed at scrape time:
/// `bearing_tls_identity_expiry_seconds{mesh, renewable}`, seconds until the leaf in use
/// expires (negative once it has). `renewable="false"`: issued ahead of time, this proxy
/// cannot renew it. Replaced at each applied config.
#[derive(Debug, Default)]
pub struct IdentityExpiry(RwLock<Vec<Arc<bearing_tls::Identity>>>);

impl IdentityExpiry {
    /// The identities the applied config uses.
    pub fn set(&self, identities: Vec<Arc<bearing_tls::Identity>>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = identities;
    }
}

impl Collector for IdentityExpiry {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let identities = read(&self.0);
        let mut family = encoder.encode_descriptor(
            "tls_identity_expiry_seconds",
            "Seconds until this proxy's mesh identity certificate expires (negative once expired); renewable=\"false\": issued ahead of time, renew it with bearing ca issue.",
            None,
            MetricType::Gauge,
        )?;
        let now = std::time::SystemTime::now();
        for id in identities.iter() {
            let left = match id.expires_at().duration_since(now) {
                Ok(left) => i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                Err(past) => -i64::try_from(past.duration().as_secs()).unwrap_or(i64::MAX),
            };
            let renewable = if id.renewable() { "true" } else { "false" };
            let labels = [("mesh", id.mesh()), ("renewable", renewable)];
            ConstGauge::new(left).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Registers every metric family under the `bearing` prefix.
    pub fn new() -> Stats {
        let mut s = Stats {
            registry: Registry::with_prefix("bearing"),
            listeners: Arc::new(ByName {
                label: "listener",
                series: LISTENER_SERIES,
                classes: ClassSeries {
                    name: "listener_http_requests",
                    help: "HTTP responses sent, by status class.",
                    counters: |h| &h.requests,
                },
                handles: RwLock::default(),
            }),
            clusters: Arc::new(ByName {
                label: "cluster",
                series: CLUSTER_SERIES,
                classes: ClassSeries {
                    name: "cluster_upstream_requests",
                    help: "Upstream responses, by status class.",
                    counters: |h| &h.requests,
                },
                handles: RwLock::default(),
            }),
            l_tls_err: Family::default(),
            l_sni_unknown: Family::default(),
            l_rbac_denied: Family::default(),
            l_rbac_allowed: Family::default(),
            l_rbac_shadow_allowed: Family::default(),
            l_rbac_shadow_denied: Family::default(),
            l_fault_aborts: Family::default(),
            l_fault_delays: Family::default(),
            l_local_rate_limited: Family::default(),
            l_connection_rate_limited: Family::default(),
            access_log_dropped: Family::default(),
            dns: bearing_dns::DnsMetrics::default(),
            config: ConfigStats::default(),
            identities: Arc::default(),
        };
        s.dns.register(&mut s.registry);
        let r = &mut s.registry;
        r.register_collector(Box::new(s.listeners.clone()));
        r.register_collector(Box::new(s.clusters.clone()));
        r.register_collector(Box::new(s.identities.clone()));
        r.register(
            "tls_handshake_errors",
            "Downstream TLS handshakes that failed or were refused",
            s.l_tls_err.clone(),
        );
        r.register(
            "sni_unknown",
            "Connections refused because their SNI named no destination",
            s.l_sni_unknown.clone(),
        );
        let rbac = [
            (
                "rbac_denied",
                "Connections (network RBAC) and requests (HTTP RBAC) refused by the listener's \
                 RBAC, or by a policy Bearing cannot enforce per source (failing closed)",
                &s.l_rbac_denied,
            ),
            (
                "rbac_allowed",
                "Connections (network RBAC) and requests (HTTP RBAC) the listener's RBAC let pass",
                &s.l_rbac_allowed,
            ),
            (
                "rbac_shadow_allowed",
                "Connections and requests the listener's shadow RBAC rules would let pass",
                &s.l_rbac_shadow_allowed,
            ),
            (
                "rbac_shadow_denied",
                "Connections and requests the listener's shadow RBAC rules would refuse",
                &s.l_rbac_shadow_denied,
            ),
        ];
        let filters = [
            (
                "fault_aborts_injected",
                "Requests a fault filter (MeshFaultInjection) aborted (Envoy's fault.aborts_injected)",
                &s.l_fault_aborts,
            ),
            (
                "fault_delays_injected",
                "Requests a fault filter (MeshFaultInjection) delayed (Envoy's fault.delays_injected)",
                &s.l_fault_delays,
            ),
            (
                "local_rate_limited",
                "Requests a route's local rate limit (MeshRateLimit) refused, or would have where \
                 not enforced (Envoy's http_local_rate_limit.rate_limited)",
                &s.l_local_rate_limited,
            ),
            (
                "connection_rate_limited",
                "Connections closed by the listener's connection rate limit (MeshRateLimit; \
                 Envoy's local_ratelimit.rate_limited)",
                &s.l_connection_rate_limited,
            ),
        ];
        for (name, help, family) in rbac.into_iter().chain(filters) {
            r.register(name, help, family.clone());
        }
        r.register(
            "access_log_dropped",
            "Access log lines dropped: more pending than the file's writer could take, or a \
             write that failed",
            s.access_log_dropped.clone(),
        );
        r.register(
            "config_applied",
            "Configs applied",
            s.config.applied.clone(),
        );
        r.register(
            "config_rejected",
            "Configs rejected",
            s.config.rejected.clone(),
        );
        r.register(
            "listener_bind_failures",
            "Listeners that failed to bind",
            s.config.listener_bind_failures.clone(),
        );
        r.register(
            "listener_build_failures",
            "Listeners of an applied config that could not be built, so are not served",
            s.config.listener_build_failures.clone(),
        );
        s
    }

    /// Counts a failed downstream TLS handshake. Created on first use: failures are rare, and
    /// every listener carrying one more series would cost memory at 10k listeners.
    pub fn count_tls_handshake_error(&self, listener: &str) {
        let label = ListenerLabel {
            listener: listener.to_string(),
        };
        self.l_tls_err.get_or_create(&label).inc();
    }

    /// The counter of access log lines to `path` that were dropped; created only for files
    /// a listener logs to.
    pub fn access_log_dropped(&self, path: &str) -> Counter {
        let label = PathLabel {
            path: path.to_string(),
        };
        self.access_log_dropped.get_or_create(&label).clone()
    }

    /// The counter of connections and requests `listener` refuses because a policy denies
    /// them (`Listener::deny_all`); created only for such listeners.
    pub fn rbac_denied(&self, listener: &str) -> Counter {
        let label = ListenerLabel {
            listener: listener.to_string(),
        };
        self.l_rbac_denied.get_or_create(&label).clone()
    }

    /// The RBAC counters of `listener` (Envoy's `rbac.allowed`, `rbac.denied`,
    /// `rbac.shadow_allowed`, `rbac.shadow_denied`); created only for listeners with RBAC.
    pub fn rbac(&self, listener: &str) -> crate::rbac::RbacStats {
        let label = ListenerLabel {
            listener: listener.to_string(),
        };
        crate::rbac::RbacStats {
            allowed: self.l_rbac_allowed.get_or_create(&label).clone(),
            denied: self.l_rbac_denied.get_or_create(&label).clone(),
            shadow_allowed: self.l_rbac_shadow_allowed.get_or_create(&label).clone(),
            shadow_denied: self.l_rbac_shadow_denied.get_or_create(&label).clone(),
        }
    }

    /// The fault counters of `listener`; created only for listeners with fault filters.
    pub fn faults(&self, listener: &str) -> crate::fault::FaultStats {
        let label = ListenerLabel {
            listener: listener.to_string(),
        };
        crate::fault::FaultStats {
            aborts_injected: self.l_fault_aborts.get_or_create(&label).clone(),
            delays_injected: self.l_fault_delays.get_or_create(&label).clone(),
        }
    }

    /// The counter of requests `listener`'s route rate limits limit; created only for
    /// listeners with one.
    pub fn local_rate_limited(&self, listener: &str) -> Counter {
        let label = ListenerLabel {
            listener: listener.to_string(),
        };
        self.l_local_rate_limited.get_or_create(&label).clone()
    }

    /// The counter of connections `listener`'s connection rate limit closes; created only
    /// for listeners with one.
    pub fn connection_rate_limited(&self, listener: &str) -> Counter {
        let label = ListenerLabel {
            listener: listener.to_string(),
        };
        self.l_connection_rate_limited.get_or_create(&label).clone()
    }

    /// Counts a connection refused for its SNI (missing or naming no destination).
    pub fn count_sni_unknown(&self, listener: &str) {
        let label = ListenerLabel {
            listener: listener.to_string(),
        };
        self.l_sni_unknown.get_or_create(&label).inc();
    }

    /// The handles of one listener's metrics.
    pub fn listener(&self, name: &str) -> ListenerStats {
        self.listeners.get_or_create(name)
    }

    /// The handles of one cluster's metrics.
    pub fn cluster(&self, name: &str) -> ClusterStats {
        self.clusters.get_or_create(name)
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("cannot encode metrics: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_share_counters_with_the_registry() {
        let stats = Stats::new();
        let l = stats.listener("outbound:127.0.0.1:10001");
        l.connections.inc();
        l.requests.count(503);
        l.requests.count(200);
        stats.cluster("backend").connect_failures.inc();
        let text = stats.encode();
        assert!(text.contains(
            "bearing_listener_downstream_connections_total{listener=\"outbound:127.0.0.1:10001\"} 1"
        ), "{text}");
        assert!(text.contains(
            "bearing_listener_http_requests_total{listener=\"outbound:127.0.0.1:10001\",class=\"5xx\"} 1"
        ), "{text}");
        assert!(
            text.contains("bearing_cluster_upstream_connect_failures_total{cluster=\"backend\"} 1")
        );
        assert!(
            text.contains("# TYPE bearing_listener_downstream_connections_active gauge"),
            "{text}"
        );
        // The same name gets the same counters (a config change keeps counting).
        stats.listener("outbound:127.0.0.1:10001").connections.inc();
        assert!(stats.encode().contains(
            "bearing_listener_downstream_connections_total{listener=\"outbound:127.0.0.1:10001\"} 2"
        ));
    }
}

//! Prometheus metrics for listeners and clusters.
//!
//! Counters are created once per listener or cluster when a config is applied and handed to the
//! hot path as plain atomic handles, so counting a request is an atomic add, not a label lookup.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabel {
    cluster: String,
}

/// HTTP status class label value.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum StatusClass {
    C1xx,
    C2xx,
    C3xx,
    C4xx,
    C5xx,
}

impl EncodeLabelValue for StatusClass {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let text = match self {
            StatusClass::C1xx => "1xx",
            StatusClass::C2xx => "2xx",
            StatusClass::C3xx => "3xx",
            StatusClass::C4xx => "4xx",
            StatusClass::C5xx => "5xx",
        };
        EncodeLabelValue::encode(&text, encoder)
    }
}

const CLASSES: [StatusClass; 5] = [
    StatusClass::C1xx,
    StatusClass::C2xx,
    StatusClass::C3xx,
    StatusClass::C4xx,
    StatusClass::C5xx,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerClassLabel {
    listener: String,
    class: StatusClass,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterClassLabel {
    cluster: String,
    class: StatusClass,
}

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
    /// Bytes written to upstream.
    pub tx_bytes: Counter,
    /// Bytes read from upstream.
    pub rx_bytes: Counter,
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
}

/// The registry plus the families that per-listener and per-cluster handles come from.
pub struct Stats {
    registry: Registry,
    l_conn: Family<ListenerLabel, Counter>,
    l_active: Family<ListenerLabel, Gauge>,
    l_rx: Family<ListenerLabel, Counter>,
    l_tx: Family<ListenerLabel, Counter>,
    l_err: Family<ListenerLabel, Counter>,
    l_req: Family<ListenerClassLabel, Counter>,
    l_tls_err: Family<ListenerLabel, Counter>,
    l_sni_unknown: Family<ListenerLabel, Counter>,
    c_conn: Family<ClusterLabel, Counter>,
    c_fail: Family<ClusterLabel, Counter>,
    c_none: Family<ClusterLabel, Counter>,
    c_err: Family<ClusterLabel, Counter>,
    c_rx: Family<ClusterLabel, Counter>,
    c_tx: Family<ClusterLabel, Counter>,
    c_req: Family<ClusterClassLabel, Counter>,
    /// Mesh DNS server counters (`bearing_dns_*`).
    pub dns: bearing_dns::DnsMetrics,
    /// Config source metrics.
    pub config: ConfigStats,
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
            l_conn: Family::default(),
            l_active: Family::default(),
            l_rx: Family::default(),
            l_tx: Family::default(),
            l_err: Family::default(),
            l_req: Family::default(),
            l_tls_err: Family::default(),
            l_sni_unknown: Family::default(),
            c_conn: Family::default(),
            c_fail: Family::default(),
            c_none: Family::default(),
            c_err: Family::default(),
            c_rx: Family::default(),
            c_tx: Family::default(),
            c_req: Family::default(),
            dns: bearing_dns::DnsMetrics::default(),
            config: ConfigStats::default(),
        };
        s.dns.register(&mut s.registry);
        let r = &mut s.registry;
        r.register(
            "listener_downstream_connections",
            "Connections accepted",
            s.l_conn.clone(),
        );
        r.register(
            "listener_downstream_connections_active",
            "Connections open",
            s.l_active.clone(),
        );
        r.register(
            "listener_downstream_rx_bytes",
            "Bytes read from downstream",
            s.l_rx.clone(),
        );
        r.register(
            "listener_downstream_tx_bytes",
            "Bytes written to downstream",
            s.l_tx.clone(),
        );
        r.register(
            "listener_downstream_errors",
            "Downstream connections ended by an error",
            s.l_err.clone(),
        );
        r.register(
            "listener_http_requests",
            "HTTP responses sent, by status class",
            s.l_req.clone(),
        );
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
        r.register(
            "cluster_upstream_connections",
            "Upstream connections opened",
            s.c_conn.clone(),
        );
        r.register(
            "cluster_upstream_connect_failures",
            "Upstream connection attempts that failed",
            s.c_fail.clone(),
        );
        r.register(
            "cluster_no_healthy_upstream",
            "Requests or connections with no reachable endpoint",
            s.c_none.clone(),
        );
        r.register(
            "cluster_upstream_request_errors",
            "Requests that failed after connecting",
            s.c_err.clone(),
        );
        r.register(
            "cluster_upstream_rx_bytes",
            "Bytes read from upstream",
            s.c_rx.clone(),
        );
        r.register(
            "cluster_upstream_tx_bytes",
            "Bytes written to upstream",
            s.c_tx.clone(),
        );
        r.register(
            "cluster_upstream_requests",
            "Upstream responses, by status class",
            s.c_req.clone(),
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

    /// Counts a connection refused for its SNI (missing or naming no destination).
    pub fn count_sni_unknown(&self, listener: &str) {
        let label = ListenerLabel {
            listener: listener.to_string(),
        };
        self.l_sni_unknown.get_or_create(&label).inc();
    }

    /// The handles of one listener's metrics.
    pub fn listener(&self, name: &str) -> ListenerStats {
        let l = ListenerLabel {
            listener: name.to_string(),
        };
        let class = |class| {
            self.l_req
                .get_or_create(&ListenerClassLabel {
                    listener: name.to_string(),
                    class,
                })
                .clone()
        };
        ListenerStats {
            connections: self.l_conn.get_or_create(&l).clone(),
            active: self.l_active.get_or_create(&l).clone(),
            rx_bytes: self.l_rx.get_or_create(&l).clone(),
            tx_bytes: self.l_tx.get_or_create(&l).clone(),
            errors: self.l_err.get_or_create(&l).clone(),
            requests: StatusCounters(CLASSES.map(class)),
        }
    }

    /// The handles of one cluster's metrics.
    pub fn cluster(&self, name: &str) -> ClusterStats {
        let l = ClusterLabel {
            cluster: name.to_string(),
        };
        let class = |class| {
            self.c_req
                .get_or_create(&ClusterClassLabel {
                    cluster: name.to_string(),
                    class,
                })
                .clone()
        };
        ClusterStats {
            connections: self.c_conn.get_or_create(&l).clone(),
            connect_failures: self.c_fail.get_or_create(&l).clone(),
            no_healthy_upstream: self.c_none.get_or_create(&l).clone(),
            request_errors: self.c_err.get_or_create(&l).clone(),
            rx_bytes: self.c_rx.get_or_create(&l).clone(),
            tx_bytes: self.c_tx.get_or_create(&l).clone(),
            requests: StatusCounters(CLASSES.map(class)),
        }
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
    }
}

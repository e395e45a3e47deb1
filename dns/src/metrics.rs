//! Counters of the mesh DNS server, for the proxy's Prometheus registry.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// What the DNS server did. Cloning shares the counters.
#[derive(Debug, Clone, Default)]
pub struct DnsMetrics {
    /// Queries decoded and handled (packets hickory drops as malformed are not counted).
    pub queries: Counter,
    /// Queries answered from the table: addresses, NODATA or NXDOMAIN under the domain.
    pub answered_locally: Counter,
    /// Queries sent to the upstream resolvers.
    pub forwarded: Counter,
    /// Upstream attempts that failed: timeout, I/O error, unusable reply, SERVFAIL or REFUSED.
    /// A query is answered SERVFAIL when every upstream failed.
    pub upstream_failures: Counter,
    /// TCP connections closed as soon as accepted because the most the server serves at once
    /// were open.
    pub tcp_refused: Counter,
}

impl DnsMetrics {
    /// Registers the counters as `dns_queries_total`, `dns_answered_locally_total`,
    /// `dns_forwarded_total`, `dns_upstream_failures_total` and `dns_tcp_refused_total` (the
    /// proxy's registry adds the `bearing_` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register("dns_queries", "DNS queries handled", self.queries.clone());
        registry.register(
            "dns_answered_locally",
            "DNS queries answered from the mesh DNS table",
            self.answered_locally.clone(),
        );
        registry.register(
            "dns_forwarded",
            "DNS queries forwarded to the upstream resolvers",
            self.forwarded.clone(),
        );
        registry.register(
            "dns_upstream_failures",
            "Failed attempts to get an answer from an upstream resolver",
            self.upstream_failures.clone(),
        );
        registry.register(
            "dns_tcp_refused",
            "DNS TCP connections closed at accept because the connection limit was reached",
            self.tcp_refused.clone(),
        );
    }
}

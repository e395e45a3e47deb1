//! The filter-chain match stage: the listener a connection is served by (found by its
//! address, or by the original destination of a captured connection, in the applied
//! snapshot), with what its chain runs: the transport it terminates, the network filter (TCP
//! proxy to a cluster or a weighted split, SNI routing, a builtin gateway, HTTP with or
//! without a route table) and the clusters behind it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bearing_gateway::HeaderEdits;
use bearing_proxy_config::{stream_idle_timeout, Listener, RetryPolicy, SniTarget};
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;

use crate::access_log::ListenerLog;
use crate::gateway::GatewayRuntime;
use crate::hcm::filters::HttpFilters;
use crate::hcm::HttpListener;
use crate::rate_limit::ConnectionLimit;
use crate::rbac::RbacRuntime;
use crate::router::HttpRoutes;
use crate::sni::SniTable;
use crate::stats::{ListenerStats, StatusCounters};
use crate::tcp_proxy::TcpSplit;
use crate::transport::{Admission, Chain, DownstreamTlsRuntime};
use crate::upstream::ClusterRuntime;

/// A listener of the applied config with its cluster and metrics.
pub struct ListenerRuntime {
    /// The listener as compiled.
    pub config: Listener,
    /// Where its traffic goes (none for SNI-routing listeners, which have `sni`).
    pub cluster: Option<Arc<ClusterRuntime>>,
    /// Mesh mTLS this listener terminates.
    pub tls: Option<DownstreamTlsRuntime>,
    /// Zone ingress / egress: destinations by SNI.
    pub sni: Option<SniTable>,
    /// Builtin gateway listener: routes and backends.
    pub gateway: Option<GatewayRuntime>,
    /// Routes of its HTTP requests (a gateway's, or a sidecar's route table); `None`: every
    /// request goes to `cluster`.
    pub routes: Option<Arc<HttpRoutes>>,
    /// A PERMISSIVE listener's routes for its plaintext requests when they limit rates: the
    /// same table with buckets of their own, as Envoy keeps a route's bucket per filter
    /// chain (kuma-cp gives the mesh mTLS chain and the plaintext one each an inline copy of
    /// the route configuration); `None`: every request takes `routes`.
    pub plaintext_routes: Option<Arc<HttpRoutes>>,
    /// A TCP listener splitting connections over several clusters by weight.
    pub tcp_split: Option<TcpSplit>,
    /// Its metrics.
    pub stats: ListenerStats,
    /// The HTTP server of a listener with its own HTTP/2 windows (`Listener::http2_windows`);
    /// `None`: the proxy's own for its kind.
    pub(crate) http: Option<auto::Builder<TokioExecutor>>,
    /// Present when the listener refuses everything (`Listener::deny_all`): counts what it
    /// refuses (`bearing_rbac_denied_total`).
    pub denied: Option<Counter>,
    /// Who may connect (`Listener::network_rbac`), decided once per connection after the
    /// transport stage.
    pub network_rbac: Option<RbacRuntime>,
    /// Who may send a request (`Listener::http_rbac`), decided per request before routing.
    pub http_rbac: Option<RbacRuntime>,
    /// Its HTTP filters after RBAC (`Listener::http_filters`), run per request.
    pub filters: Option<HttpFilters>,
    /// The request header edits of a listener without routes (`Listener::request_headers`);
    /// `None`: none.
    pub request_edits: Option<HeaderEdits>,
    /// Its limit of new connections (`Listener::connection_rate_limit`), a bucket per chain,
    /// checked as each is accepted (a PERMISSIVE listener's once its chain is known).
    pub connection_limit: Option<ConnectionLimit>,
    /// Its access logs (`Listener::access_logs`); `None`: nothing logged, nothing measured.
    pub(crate) access_log: Option<Arc<ListenerLog>>,
    /// Cancelled when a later config changes what this listener admits (mesh mTLS turned on
    /// or off, PERMISSIVE to STRICT, another CA), and at drain (a child of the drain token):
    /// its connections then check, between requests, that they may go on. Shared with the
    /// listeners at its address that the following configs build with the same terms.
    pub(crate) epoch: CancellationToken,
    /// For the HTTP of an SNI route: its destination, by which its connections find the
    /// route's newest version after a config change.
    pub(crate) sni_route: Option<SniTarget>,
}

impl ListenerRuntime {
    /// The cluster a new TCP connection goes to: the next of a split by weight, else the
    /// listener's cluster.
    pub(crate) fn tcp_cluster(&self) -> Option<&Arc<ClusterRuntime>> {
        match &self.tcp_split {
            Some(split) => split.pick(),
            None => self.cluster.as_ref(),
        }
    }

    /// Whether the chain a connection takes is known only from its first bytes: a PERMISSIVE
    /// listener's (the transport stage sniffs them).
    pub(crate) fn chain_after_sniff(&self) -> bool {
        matches!(
            self.tls,
            Some(DownstreamTlsRuntime::Ready {
                permissive: true,
                ..
            })
        )
    }

    /// Whether the connection rate limit lets a connection from `peer` taking `chain` go on
    /// (Envoy's network `local_ratelimit` closes one over its chain's bucket).
    pub(crate) fn admits_on(&self, chain: Chain, peer: SocketAddr) -> bool {
        let Some(limit) = &self.connection_limit else {
            return true;
        };
        let admitted = limit.admits(chain);
        if !admitted {
            tracing::debug!(listener = %self.config.name, %peer, ?chain, "closed by the connection rate limit");
        }
        admitted
    }

    /// Every cluster this listener sends to (a cluster may be listed more than once).
    pub(crate) fn clusters(&self) -> impl Iterator<Item = &Arc<ClusterRuntime>> {
        let routes = self.sni.iter().flat_map(SniTable::clusters);
        let routed = self.routes.iter().flat_map(|r| r.clusters());
        let split = self.tcp_split.iter().flat_map(TcpSplit::clusters);
        self.cluster.iter().chain(routes).chain(routed).chain(split)
    }

    /// Whether this listener's RBAC checks a connection admitted as `admission`: all of a
    /// listener without mesh mTLS, only the mTLS ones of one with it (PERMISSIVE plaintext
    /// passes unchecked: kuma-cp puts RBAC on the mTLS chain only).
    pub(crate) fn rbac_checks(&self, admission: &Admission) -> bool {
        self.tls.is_none() || matches!(admission, Admission::MeshTls(..))
    }

    /// Whether this listener reads the peer of its connections: it has RBAC, or filters that
    /// match on the connection (a fault's matcher).
    pub(crate) fn reads_peer(&self) -> bool {
        let filters_read = self.filters.as_ref().is_some_and(|f| f.read_peer());
        self.network_rbac.is_some() || self.http_rbac.is_some() || filters_read
    }

    /// Whether the network RBAC lets a connection admitted as `admission` pass (counted).
    pub(crate) fn network_rbac_allows(&self, admission: &Admission) -> bool {
        match &self.network_rbac {
            Some(rbac) if self.rbac_checks(admission) => {
                admission.peer().is_some_and(|who| rbac.check(who))
            }
            _ => true,
        }
    }

    /// Whether this listener, as configured now, still admits a connection admitted as
    /// `admission`: no mesh mTLS admits everything; mTLS admits plaintext only when
    /// PERMISSIVE, and an mTLS connection only if its client certificate was verified with
    /// the same CA certificate and its handshake allowed the same TLS parameters (after a
    /// CA or MeshTLS change it must handshake again); a listener that
    /// fails closed (`denied`) admits nothing; one with RBAC, or filters that read the
    /// connection (a fault's matcher), admits only a connection whose peer was read (the
    /// handshake was on a listener that reads it) and its network RBAC lets pass (evaluated,
    /// not counted: this is a recheck after a config change). Gateway and zone proxy
    /// listeners are not checked otherwise.
    pub(crate) fn admits(&self, admission: &Admission) -> bool {
        if self.denied.is_some() {
            return false;
        }
        if self.reads_peer() && self.rbac_checks(admission) {
            let Some(peer) = admission.peer() else {
                return false;
            };
            if !self.network_rbac.as_ref().is_none_or(|r| r.allows(peer)) {
                return false;
            }
        }
        if self.gateway.is_some() || self.sni.is_some() {
            return true;
        }
        match (&self.tls, admission) {
            (None, _) => true,
            (Some(DownstreamTlsRuntime::Unavailable(_)), _) => false,
            (Some(DownstreamTlsRuntime::Ready { permissive, .. }), Admission::Plaintext) => {
                *permissive
            }
            (
                Some(DownstreamTlsRuntime::Ready { mesh, params, .. }),
                Admission::MeshTls(verified, _, allowed),
            ) => {
                (Arc::ptr_eq(mesh, verified)
                    || mesh.config.ca_cert_pem == verified.config.ca_cert_pem)
                    && params.as_deref() == allowed.as_deref()
            }
        }
    }
}

impl HttpListener for ListenerRuntime {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn cluster(&self) -> Option<&ClusterRuntime> {
        self.cluster.as_deref()
    }

    fn retry(&self) -> Option<&RetryPolicy> {
        self.config.retry.as_ref()
    }

    fn stream_idle(&self, route: Option<Duration>) -> Option<(Duration, &Counter)> {
        let period = stream_idle_timeout(route, self.config.stream_idle_timeout)?;
        Some((period, &self.stats.stream_idle_timeout))
    }

    fn request_timeout(&self) -> Option<Duration> {
        self.config.downstream_timeouts.request
    }

    fn idle_closed(&self) -> &Counter {
        &self.stats.cx_idle_timeout
    }

    fn routes(&self, tls: bool) -> Option<&HttpRoutes> {
        match (&self.plaintext_routes, tls) {
            (Some(plaintext), false) => Some(plaintext),
            _ => self.routes.as_deref(),
        }
    }

    fn requests(&self) -> &StatusCounters {
        &self.stats.requests
    }

    fn denied(&self) -> Option<&Counter> {
        self.denied.as_ref()
    }

    fn rbac_allows(&self, admission: &Admission) -> bool {
        match (&self.http_rbac, admission.peer()) {
            (None, _) => true,
            _ if !self.rbac_checks(admission) => true,
            (Some(rbac), Some(peer)) => rbac.check(peer),
            // Not read: the connection predates the listener's RBAC (`admits` closes it).
            (Some(_), None) => false,
        }
    }

    fn filters(&self) -> Option<&HttpFilters> {
        self.filters.as_ref()
    }

    fn request_edits(&self) -> Option<&HeaderEdits> {
        self.request_edits.as_ref()
    }

    fn epoch(&self) -> &CancellationToken {
        &self.epoch
    }

    fn access_log(&self) -> Option<&Arc<ListenerLog>> {
        self.access_log.as_ref()
    }

    fn address(&self) -> std::net::SocketAddr {
        self.config.address
    }
}

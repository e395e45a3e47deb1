//! SNI routing for zone ingress and zone egress: the ClientHello is read with `peek`, so the
//! TLS bytes stay in the socket and pass through untouched (or reach the TLS acceptor when
//! the route terminates mesh mTLS). A route that terminates mesh mTLS either copies the
//! decrypted bytes to its cluster or hands the decrypted stream back to be served as HTTP
//! (the zone egress to an HTTP ExternalService: routes, Host rewrite, per-endpoint TLS).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bearing_proxy_config::{SniRoute, SniTarget};
use bearing_tls::{ResourceKind, TlsStream};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::filter_chain::ListenerRuntime;
use crate::io::{reset, Counted};
use crate::rbac::{Peer, RbacRuntime};
use crate::stats::{ListenerStats, Stats};
use crate::tcp_proxy::{serve_tcp, TcpProxying};
use crate::transport::{read_sni, Admission, DownstreamTlsRuntime};
use crate::upstream::ClusterRuntime;

/// One SNI destination at run time.
pub struct SniRouteRuntime {
    /// The route as compiled.
    pub config: SniRoute,
    /// Where the connection goes (`None` for HTTP whose route table decides).
    pub cluster: Option<Arc<ClusterRuntime>>,
    /// Mesh mTLS terminated first (egress to an ExternalService).
    pub terminate: Option<DownstreamTlsRuntime>,
    /// HTTP served on the decrypted stream: a listener of its own (the route's cluster or
    /// route table, its network RBAC, the SNI listener's address and metrics, the route's
    /// epoch), whose newest version serves each request (`ListenerRuntime::sni_route`).
    pub http: Option<Arc<ListenerRuntime>>,
    /// Who may connect to a route without HTTP (`SniRoute::network_rbac`; an HTTP route's is
    /// its listener's `network_rbac`, where rechecks read it): decided once per connection, on
    /// the client's certificate after the handshake the route terminates, else on the SNI
    /// alone.
    pub network_rbac: Option<RbacRuntime>,
    /// Cancelled when a later config changes the route's terms (its RBAC, its HTTP filters),
    /// and at drain: its connections then recheck with the route's newest version (TCP ones
    /// by [`Recheck`], HTTP ones through `ListenerRuntime::sni_route`), as a sidecar
    /// inbound's do.
    pub epoch: CancellationToken,
}

impl SniRouteRuntime {
    /// The route's network RBAC, wherever it is kept.
    pub(crate) fn connection_rbac(&self) -> Option<&RbacRuntime> {
        match &self.http {
            Some(http) => http.network_rbac.as_ref(),
            None => self.network_rbac.as_ref(),
        }
    }

    /// Whether `newer`, the same destination's route in a later config, admits this route's
    /// connections on the same terms: the same TLS termination, RBAC and HTTP filters.
    pub(crate) fn same_terms(&self, newer: &SniRoute) -> bool {
        let (old, new) = (self.config.http.as_ref(), newer.http.as_ref());
        self.config.terminate == newer.terminate
            && self.config.network_rbac == newer.network_rbac
            && old.map(|h| &h.http_rbac) == new.map(|h| &h.http_rbac)
            && old.map(|h| &h.http_filters) == new.map(|h| &h.http_filters)
    }
}

/// How a TCP connection of an SNI route learns, once the route's terms changed, whether it
/// may go on: given the route's destination and what was read of the connection (`None`:
/// nothing), the epoch of the route's newest version if that still admits it; `None`: close.
pub(crate) type Recheck<'a> =
    &'a (dyn Fn(&SniTarget, Option<&Peer>) -> Option<CancellationToken> + Sync);

/// A decrypted connection of an SNI route that serves HTTP, for the runtime to serve with
/// the route's listener.
pub(crate) type SniHttpConnection = (
    TlsStream<Counted<TcpStream>>,
    Arc<ListenerRuntime>,
    Admission,
);

/// An SNI-routing listener's destinations.
pub struct SniTable {
    routes: HashMap<SniTarget, SniRouteRuntime>,
}

impl SniTable {
    /// A table of `routes`.
    pub fn new(routes: impl IntoIterator<Item = (SniTarget, SniRouteRuntime)>) -> SniTable {
        SniTable {
            routes: routes.into_iter().collect(),
        }
    }

    /// Every cluster the table sends to.
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<ClusterRuntime>> {
        self.routes.values().flat_map(|r| {
            // The route's listener has a cluster or routes, never SNI routes of its own.
            let http = r.http.iter().flat_map(|l| {
                let routed = l.routes.iter().flat_map(|t| t.clusters());
                l.cluster.iter().chain(routed)
            });
            r.cluster.iter().chain(http)
        })
    }

    /// The route to `target`.
    pub(crate) fn get(&self, target: &SniTarget) -> Option<&SniRouteRuntime> {
        self.routes.get(target)
    }

    /// The route an SNI names, with the tags the endpoints must carry (tags form).
    fn route(&self, sni: &str) -> Option<(&SniRouteRuntime, Vec<(String, String)>)> {
        if let Some(tags) = bearing_tls::parse_tags_sni(sni) {
            let target = SniTarget::Service {
                mesh: tags.mesh.to_string(),
                service: tags.service.to_string(),
            };
            let wanted = tags
                .tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            return self.routes.get(&target).map(|r| (r, wanted));
        }
        if let Some(kri) = bearing_tls::parse_kri_sni(sni) {
            let target = SniTarget::Kri {
                mesh: kri.mesh.to_string(),
                sni: sni.to_string(),
            };
            return self.routes.get(&target).map(|r| (r, Vec::new()));
        }
        let resource = bearing_tls::parse_resource_sni(sni)?;
        let (mesh, name, port) = (resource.mesh.into(), resource.name.into(), resource.port);
        let target = match resource.kind {
            ResourceKind::MeshService => SniTarget::MeshService { mesh, name, port },
            ResourceKind::MeshExternalService => {
                SniTarget::MeshExternalService { mesh, name, port }
            }
            ResourceKind::MeshMultiZoneService => return None,
        };
        self.routes.get(&target).map(|r| (r, Vec::new()))
    }
}

/// Serves one connection of an SNI-routing listener: reads the SNI, then passes the bytes
/// through to the named destination's endpoints carrying the SNI's tags, or terminates mesh
/// mTLS first and copies the decrypted bytes, or gives the decrypted connection back when the
/// route serves HTTP. A missing or unknown SNI is refused with a reset and counted; a
/// connection the route's network RBAC refuses is closed (TLS: close_notify, then FIN), as
/// Envoy's network RBAC filter on the chain the SNI selected closes it.
pub(crate) async fn serve(
    stats: &Stats,
    down: Counted<TcpStream>,
    (name, listener, proxying): (&str, &ListenerStats, TcpProxying),
    table: &SniTable,
    peer: SocketAddr,
    (drain, recheck): (&CancellationToken, Recheck<'_>),
) -> Option<SniHttpConnection> {
    let sni = match read_sni(down.get_ref()).await {
        Ok(sni) => sni,
        Err(reason) => {
            stats.count_sni_unknown(name);
            tracing::info!(listener = %name, %peer, "refused: {reason}");
            reset(&down);
            return None;
        }
    };
    let Some((route, wanted)) = table.route(&sni) else {
        stats.count_sni_unknown(name);
        tracing::info!(listener = %name, %peer, %sni, "refused: no destination for this SNI");
        reset(&down);
        return None;
    };
    let carries_tags =
        |e: &bearing_proxy_config::Endpoint| wanted.iter().all(|(k, v)| e.tags.get(k) == Some(v));
    match &route.terminate {
        None => {
            // Passed through: Envoy's chain has no TLS of its own, only the inspected SNI.
            if let Some(rbac) = route.connection_rbac() {
                if !rbac.check(&Peer::of_sni(&sni)) {
                    tracing::debug!(listener = %name, %peer, %sni, "refused by RBAC");
                    let mut down = down;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut down).await;
                    return None;
                }
            }
            if let Some(cluster) = &route.cluster {
                let to = (&**cluster, proxying);
                let relay = serve_tcp(down, to, listener, name, peer, carries_tags);
                // Read again at a recheck: all such a chain shows is its SNI.
                let watch = (route, Seen::Sni(&sni), (name, peer));
                while_admitted(relay, watch, (drain, recheck)).await;
            }
        }
        Some(DownstreamTlsRuntime::Ready {
            acceptor,
            mesh,
            params,
            ..
        }) => {
            match acceptor.accept(down, name, peer).await {
                Ok(mut tls) => {
                    // Read once, for the RBAC and the HTTP filters that match on the
                    // connection (a fault's SNI).
                    let reads = route.network_rbac.is_some()
                        || route.http.as_ref().is_some_and(|h| h.reads_peer());
                    let who = reads.then(|| Arc::new(Peer::of_tls(&tls)));
                    if let (Some(rbac), Some(who)) = (route.connection_rbac(), &who) {
                        if !rbac.check(who) {
                            tracing::debug!(listener = %name, %peer, %sni, "refused by RBAC");
                            let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                            return None;
                        }
                    }
                    match (&route.http, &route.cluster) {
                        (Some(http), _) => {
                            let admission = Admission::MeshTls(mesh.clone(), who, params.clone());
                            return Some((tls, http.clone(), admission));
                        }
                        (None, Some(cluster)) => {
                            let to = (&**cluster, proxying);
                            let relay = serve_tcp(tls, to, listener, name, peer, |_| true);
                            let watch = (route, Seen::Tls(who.as_deref()), (name, peer));
                            while_admitted(relay, watch, (drain, recheck)).await
                        }
                        (None, None) => {}
                    }
                }
                Err(e) => {
                    stats.count_tls_handshake_error(name);
                    tracing::info!(listener = %name, %peer, %sni, "mTLS refused: {e}");
                }
            }
        }
        Some(DownstreamTlsRuntime::Unavailable(reason)) => {
            stats.count_tls_handshake_error(name);
            tracing::warn!(listener = %name, %peer, %sni, "refused: {reason}");
            reset(&down);
        }
    }
    None
}

/// What an SNI route's TCP connection showed of its peer.
#[derive(Clone, Copy)]
enum Seen<'a> {
    /// TLS passed through: its SNI.
    Sni(&'a str),
    /// Mesh mTLS terminated: the peer, if the route read it.
    Tls(Option<&'a Peer>),
}

/// Runs `relay` (a TCP connection of `route`, which saw its peer as `seen`) to its end,
/// unless a change of the route's terms leaves the connection outside what the route's newest
/// version admits (`recheck`, uncounted): then it is dropped, which closes both sides.
/// Draining does not cut TCP connections.
async fn while_admitted(
    relay: impl std::future::Future<Output = ()>,
    (route, seen, (name, peer)): (&SniRouteRuntime, Seen<'_>, (&str, SocketAddr)),
    (drain, recheck): (&CancellationToken, Recheck<'_>),
) {
    tokio::pin!(relay);
    let mut watched = route.epoch.clone();
    loop {
        tokio::select! {
            () = &mut relay => return,
            () = watched.cancelled() => {}
        }
        if drain.is_cancelled() {
            return relay.await;
        }
        let passed;
        let who = match seen {
            Seen::Sni(sni) => {
                passed = Peer::of_sni(sni);
                Some(&passed)
            }
            Seen::Tls(who) => who,
        };
        match recheck(&route.config.target, who) {
            Some(next) => watched = next,
            None => {
                tracing::info!(listener = %name, %peer, "closing a connection its SNI route no longer admits (a policy denies it)");
                return;
            }
        }
    }
}

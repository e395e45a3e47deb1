//! SNI routing for zone ingress and zone egress: the ClientHello is read with `peek`, so the
//! TLS bytes stay in the socket and pass through untouched (or reach the TLS acceptor when
//! the route terminates mesh mTLS). A route that terminates mesh mTLS either copies the
//! decrypted bytes to its cluster or hands the decrypted stream back to be served as HTTP
//! (the zone egress to an HTTP ExternalService: routes, Host rewrite, per-endpoint TLS).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bearing_proxy_config::SniTarget;
use bearing_tls::{ResourceKind, TlsStream};
use tokio::net::TcpStream;

use crate::filter_chain::ListenerRuntime;
use crate::io::{reset, Counted};
use crate::rbac::{Peer, RbacRuntime};
use crate::stats::{ListenerStats, Stats};
use crate::tcp_proxy::{serve_tcp, TcpProxying};
use crate::transport::{read_sni, Admission, DownstreamTlsRuntime};
use crate::upstream::ClusterRuntime;

/// One SNI destination at run time.
pub struct SniRouteRuntime {
    /// Where the connection goes (`None` for HTTP whose route table decides).
    pub cluster: Option<Arc<ClusterRuntime>>,
    /// Mesh mTLS terminated first (egress to an ExternalService).
    pub terminate: Option<DownstreamTlsRuntime>,
    /// HTTP served on the decrypted stream: a listener of its own (the route's cluster or
    /// route table, the SNI listener's address and metrics), which its connections keep.
    pub http: Option<Arc<ListenerRuntime>>,
    /// Who may connect (`SniRoute::network_rbac`): decided once per connection, on the
    /// client's certificate after the handshake the route terminates, else on the SNI alone.
    pub network_rbac: Option<RbacRuntime>,
}

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
            if let Some(rbac) = &route.network_rbac {
                if !rbac.check(&Peer::of_sni(&sni)) {
                    tracing::debug!(listener = %name, %peer, %sni, "refused by RBAC");
                    let mut down = down;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut down).await;
                    return None;
                }
            }
            if let Some(cluster) = &route.cluster {
                serve_tcp(
                    down,
                    (cluster, proxying),
                    listener,
                    name,
                    peer,
                    carries_tags,
                )
                .await;
            }
        }
        Some(DownstreamTlsRuntime::Ready { acceptor, mesh, .. }) => {
            match acceptor.accept(down, name, peer).await {
                Ok(mut tls) => {
                    // Read once, for the RBAC and the HTTP filters that match on the
                    // connection (a fault's SNI).
                    let reads = route.network_rbac.is_some()
                        || route.http.as_ref().is_some_and(|h| h.reads_peer());
                    let who = reads.then(|| Arc::new(Peer::of_tls(&tls)));
                    if let (Some(rbac), Some(who)) = (&route.network_rbac, &who) {
                        if !rbac.check(who) {
                            tracing::debug!(listener = %name, %peer, %sni, "refused by RBAC");
                            let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                            return None;
                        }
                    }
                    match (&route.http, &route.cluster) {
                        (Some(http), _) => {
                            let admission = Admission::MeshTls(mesh.clone(), who);
                            return Some((tls, http.clone(), admission));
                        }
                        (None, Some(cluster)) => {
                            let to = (&**cluster, proxying);
                            serve_tcp(tls, to, listener, name, peer, |_| true).await
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

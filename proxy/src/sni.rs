//! SNI routing for zone ingress and zone egress: the ClientHello is read with `peek`, so the
//! TLS bytes stay in the socket and pass through untouched (or reach the TLS acceptor when
//! the route terminates mesh mTLS).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bearing_proxy_config::SniTarget;
use tokio::net::TcpStream;

use crate::io::{reset, Counted};
use crate::stats::{ListenerStats, Stats};
use crate::tcp_proxy::serve_tcp;
use crate::transport::{read_sni, DownstreamTlsRuntime};
use crate::upstream::ClusterRuntime;

/// One SNI destination at run time.
pub struct SniRouteRuntime {
    /// Where the connection goes.
    pub cluster: Arc<ClusterRuntime>,
    /// Mesh mTLS terminated first (egress to an ExternalService).
    pub terminate: Option<DownstreamTlsRuntime>,
}

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
        self.routes.values().map(|r| &r.cluster)
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
        let target = SniTarget::MeshService {
            mesh: resource.mesh.to_string(),
            name: resource.name.to_string(),
            port: resource.port,
        };
        self.routes.get(&target).map(|r| (r, Vec::new()))
    }
}

/// Serves one connection of an SNI-routing listener: reads the SNI, then passes the bytes
/// through to the named destination's endpoints carrying the SNI's tags, or terminates mesh
/// mTLS first. A missing or unknown SNI is refused with a reset and counted.
pub async fn serve(
    stats: &Stats,
    down: Counted<TcpStream>,
    name: &str,
    listener: &ListenerStats,
    table: &SniTable,
    peer: SocketAddr,
) {
    let sni = match read_sni(down.get_ref()).await {
        Ok(sni) => sni,
        Err(reason) => {
            stats.count_sni_unknown(name);
            tracing::info!(listener = %name, %peer, "refused: {reason}");
            reset(&down);
            return;
        }
    };
    let Some((route, wanted)) = table.route(&sni) else {
        stats.count_sni_unknown(name);
        tracing::info!(listener = %name, %peer, %sni, "refused: no destination for this SNI");
        reset(&down);
        return;
    };
    let carries_tags =
        |e: &bearing_proxy_config::Endpoint| wanted.iter().all(|(k, v)| e.tags.get(k) == Some(v));
    let cluster = &route.cluster;
    match &route.terminate {
        None => serve_tcp(down, cluster, listener, name, peer, carries_tags).await,
        Some(DownstreamTlsRuntime::Ready { acceptor, .. }) => {
            match acceptor.accept(down, name, peer).await {
                Ok(tls) => serve_tcp(tls, cluster, listener, name, peer, |_| true).await,
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
}

//! SNI routing for zone ingress and zone egress: the ClientHello is read with `peek`, so the
//! TLS bytes stay in the socket and pass through untouched (or reach the TLS acceptor when
//! the route terminates mesh mTLS).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bearing_proxy_config::SniTarget;
use bearing_tls::{parse_client_hello, ClientHello};
use tokio::net::TcpStream;

use crate::capture;
use crate::io::Counted;
use crate::runtime::{serve_tcp, DownstreamTlsRuntime, ListenerRuntime};
use crate::stats::Stats;
use crate::upstream::ClusterRuntime;

/// Largest ClientHello read: one TLS record (16 KiB) plus its header.
const MAX_CLIENT_HELLO: usize = 16 * 1024 + 5;
/// Time a client has to send its ClientHello.
const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

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
    listener: &ListenerRuntime,
    table: &SniTable,
    peer: SocketAddr,
) {
    let name = &listener.config.name;
    let sni = match read_sni(down.get_ref()).await {
        Ok(sni) => sni,
        Err(reason) => {
            stats.count_sni_unknown(name);
            tracing::info!(listener = %name, %peer, "refused: {reason}");
            capture::reset(&down);
            return;
        }
    };
    let Some((route, wanted)) = table.route(&sni) else {
        stats.count_sni_unknown(name);
        tracing::info!(listener = %name, %peer, %sni, "refused: no destination for this SNI");
        capture::reset(&down);
        return;
    };
    let carries_tags =
        |e: &bearing_proxy_config::Endpoint| wanted.iter().all(|(k, v)| e.tags.get(k) == Some(v));
    let cluster = &route.cluster;
    match &route.terminate {
        None => serve_tcp(down, cluster, &listener.stats, name, peer, carries_tags).await,
        Some(DownstreamTlsRuntime::Ready { acceptor, .. }) => {
            match acceptor.accept(down, name, peer).await {
                Ok(tls) => serve_tcp(tls, cluster, &listener.stats, name, peer, |_| true).await,
                Err(e) => {
                    stats.count_tls_handshake_error(name);
                    tracing::info!(listener = %name, %peer, %sni, "mTLS refused: {e}");
                }
            }
        }
        Some(DownstreamTlsRuntime::Unavailable(reason)) => {
            stats.count_tls_handshake_error(name);
            tracing::warn!(listener = %name, %peer, %sni, "refused: {reason}");
            capture::reset(&down);
        }
    }
}

/// The SNI of the ClientHello waiting in `stream`, read without consuming it.
pub(crate) async fn read_sni(stream: &TcpStream) -> Result<String, String> {
    let deadline = Instant::now() + CLIENT_HELLO_TIMEOUT;
    let mut buf = vec![0u8; MAX_CLIENT_HELLO];
    let mut seen = 0;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(remaining, stream.peek(&mut buf)).await {
            Ok(Ok(0)) => return Err("closed before sending a ClientHello".into()),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(format!("cannot read the ClientHello: {e}")),
            Err(_) => return Err("no complete ClientHello in time".into()),
        };
        match parse_client_hello(&buf[..n]) {
            ClientHello::Parsed { sni: Some(sni), .. } => return Ok(sni.to_string()),
            ClientHello::Parsed { sni: None, .. } => {
                return Err("the ClientHello names no server (SNI)".into())
            }
            ClientHello::NotTls => return Err("not a TLS connection".into()),
            ClientHello::Invalid(why) => return Err(format!("malformed ClientHello: {why}")),
            ClientHello::Incomplete if n >= MAX_CLIENT_HELLO => {
                return Err("ClientHello larger than one TLS record".into())
            }
            ClientHello::Incomplete => {
                // `peek` returns at once while data is buffered: wait for more to arrive.
                if n == seen {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                seen = n;
            }
        }
    }
}

/// Whether the first byte waiting in `stream` starts a TLS record (PERMISSIVE mode tells
/// mTLS from plaintext by it). A client that sends nothing in time counts as plaintext.
pub async fn starts_with_tls_record(stream: &TcpStream, limit: Duration) -> bool {
    let mut first = [0u8; 1];
    match tokio::time::timeout(limit, stream.peek(&mut first)).await {
        Ok(Ok(1)) => bearing_tls::is_tls_record_start(first[0]),
        _ => false,
    }
}

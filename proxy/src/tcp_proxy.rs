//! The TCP proxy network filter: a downstream connection relayed byte for byte to one
//! endpoint of a cluster (Envoy's `tcp_proxy`), the cluster picked by weight when the
//! listener splits its connections (MeshTCPRoute).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bearing_proxy_config::{Endpoint, Listener, WeightedCluster};

use crate::access_log::{Began, ConnectionLog};
use crate::idle::{unless_idle, Activity, Watched};
use crate::io::TcpBacked;
use crate::stats::ListenerStats;
use crate::upstream::{ClusterRuntime, UpstreamError};
use bearing_proxy_config::{Entry, NoHeaders, ResponseFlags};

/// Bytes read per system call in each direction of a TCP connection. tokio's default (8 KiB)
/// made bulk transfers cost four times the system calls; 64 KiB is what one loopback read
/// returns under load.
pub(crate) const TCP_COPY_BUFFER: usize = 64 * 1024;

/// The clusters a TCP listener spreads its connections over, by weight (MeshTCPRoute).
pub struct TcpSplit {
    pick: bearing_gateway::Weighted,
    /// By the index of `Listener::tcp_backends`.
    clusters: Vec<Arc<ClusterRuntime>>,
}

impl TcpSplit {
    /// The split of `backends`; an error names a cluster that is missing.
    pub fn new(
        backends: &[WeightedCluster],
        clusters: &HashMap<String, Arc<ClusterRuntime>>,
    ) -> Result<TcpSplit, String> {
        let clusters = backends
            .iter()
            .map(|b| {
                clusters.get(&b.cluster).cloned().ok_or_else(|| {
                    format!(
                        "a weighted TCP backend names a missing cluster {:?}",
                        b.cluster
                    )
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(TcpSplit {
            pick: bearing_gateway::Weighted::new(backends.iter().map(|b| b.weight)),
            clusters,
        })
    }

    /// The cluster of the next connection, by weight.
    pub fn pick(&self) -> Option<&Arc<ClusterRuntime>> {
        self.pick.pick().and_then(|i| self.clusters.get(i))
    }

    /// Every cluster of the split.
    pub fn clusters(&self) -> &[Arc<ClusterRuntime>] {
        &self.clusters
    }
}

/// How a listener proxies TCP: connection attempts per downstream connection, and the idle
/// timeout (`Listener::max_connect_attempts`, `Listener::tcp_idle_timeout`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct TcpProxying {
    pub attempts: u32,
    pub idle: Option<Duration>,
}

impl TcpProxying {
    /// `listener`'s.
    pub fn of(listener: &Listener) -> TcpProxying {
        TcpProxying {
            attempts: listener.max_connect_attempts,
            idle: listener.tcp_idle_timeout.filter(|d| !d.is_zero()),
        }
    }
}

/// Connects to `cluster` (an endpoint `wanted` accepts, in at most `proxying.attempts`) and
/// copies bytes both ways, until both directions end or nothing moved for the idle timeout
/// (both sides are then closed, counted as Envoy's `idle_timeout`); with no endpoint, or
/// every attempt failed (counted as Envoy's `upstream_cx_connect_attempts_exceeded`), the
/// downstream connection is reset.
pub(crate) async fn serve_tcp<S>(
    down: S,
    (cluster, proxying): (&ClusterRuntime, TcpProxying),
    stats: &ListenerStats,
    listener: &str,
    peer: SocketAddr,
    wanted: impl Fn(&Endpoint) -> bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + TcpBacked + Unpin,
{
    let named = (stats, listener, peer);
    serve_tcp_logged(down, (cluster, proxying), named, wanted, None).await;
}

/// [`serve_tcp`], logging the connection once it ends to `log` (with the downstream
/// connection's local address) when given.
pub(crate) async fn serve_tcp_logged<S>(
    mut down: S,
    (cluster, proxying): (&ClusterRuntime, TcpProxying),
    (stats, listener, peer): (&ListenerStats, &str, SocketAddr),
    wanted: impl Fn(&Endpoint) -> bool,
    log: Option<ConnectionLog<'_>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + TcpBacked + Unpin,
{
    let began = log.map(|_| Began::now());
    // Bytes received and sent downstream, the endpoint and flags, for the log.
    let mut ended = (0, 0, None, ResponseFlags::default());
    match cluster.connect_tcp_where(proxying.attempts, wanted).await {
        Ok(mut up) => {
            if log.is_some() {
                ended.2 = up.tcp().peer_addr().ok();
            }
            let copied = match proxying.idle {
                None => Some(relay(&mut down, &mut up, None).await),
                Some(idle) => {
                    let activity = Activity::default();
                    let relay = relay(&mut down, &mut up, Some(&activity));
                    unless_idle(relay, idle, &activity).await
                }
            };
            match copied {
                Some(Ok((received, sent))) => (ended.0, ended.1) = (received, sent),
                Some(Err(e)) => {
                    stats.errors.inc();
                    tracing::debug!(%listener, %peer, "connection ended: {e}");
                }
                None => {
                    stats.idle_timeout.inc();
                    tracing::debug!(%listener, %peer, "idle for {:?}: closing both sides", proxying.idle);
                }
            }
        }
        Err(e) if log.is_some() => {
            (ended.3, ended.2) = crate::access_log::failure_flags(&e);
            if let UpstreamError::ConnectFailed(..) = e {
                ended.3.insert(ResponseFlags::RETRY_LIMIT_EXCEEDED);
            }
            refuse(&down, e, cluster, (stats, listener, peer));
        }
        Err(e) => refuse(&down, e, cluster, (stats, listener, peer)),
    }
    if let (Some((log, local)), Some(began)) = (log, began) {
        let (start, duration) = began.times();
        let (bytes_received, bytes_sent, upstream_host, flags) = ended;
        log.log(&Entry {
            route_kri: None,
            start,
            duration,
            protocol: None,
            response_code: 0,
            flags,
            bytes_received,
            bytes_sent,
            upstream_host,
            upstream_cluster: Some(&cluster.config.name),
            downstream_remote: peer,
            downstream_local: local,
            request: &NoHeaders,
            response: &NoHeaders,
        });
    }
}

/// Resets a downstream connection no upstream connection was made for (`e`), counted and
/// logged.
fn refuse<S: TcpBacked>(
    down: &S,
    e: UpstreamError,
    cluster: &ClusterRuntime,
    (stats, listener, peer): (&ListenerStats, &str, SocketAddr),
) {
    match e {
        UpstreamError::Overflow(why) => {
            // Counted (`upstream_cx_overflow`); as Envoy's tcp_proxy, the client is closed.
            tracing::debug!(%listener, cluster = %cluster.config.name, %peer, "circuit breaker: {why}; resetting connection");
            crate::io::reset(down);
        }
        e => {
            if let UpstreamError::ConnectFailed(..) = e {
                stats.connect_attempts_exceeded.inc();
            }
            tracing::warn!(%listener, cluster = %cluster.config.name, %peer, "{e}; resetting connection");
            crate::io::reset(down);
        }
    }
}

/// Copies both ways between `down` and `up` (spliced when both are plain TCP), touching
/// `activity` as bytes move.
async fn relay<D, U>(
    down: &mut D,
    up: &mut U,
    activity: Option<&Activity>,
) -> std::io::Result<(u64, u64)>
where
    D: tokio::io::AsyncRead + tokio::io::AsyncWrite + TcpBacked + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + TcpBacked + Unpin,
{
    if let (Some(d), Some(u)) = (down.plain(), up.plain()) {
        return crate::splice::copy_bidirectional(d, u, activity).await;
    }
    let (mut down, mut up) = (Watched::new(down, activity), Watched::new(up, activity));
    let (b, b2) = (TCP_COPY_BUFFER, TCP_COPY_BUFFER);
    tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, b, b2).await
}

//! The transport stage: what a downstream connection's bytes are before a network filter
//! reads them. A listener terminating mesh mTLS handshakes here (in PERMISSIVE mode, a
//! connection whose first byte does not start a TLS record stays plaintext, and TLS whose
//! ClientHello does not offer ALPN `kuma` is passed through undecrypted), and the SNI of a
//! ClientHello is peeked without consuming it, for the listeners that route by it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bearing_proxy_config::{DownstreamTls, TlsParams};
use bearing_tls::{parse_client_hello, ClientHello, TlsStream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::io::TcpBacked;
use crate::mesh_tls::{MeshTlsRuntime, MeshTlsSet};
use crate::rbac::{Peer, PLAINTEXT};
use crate::stats::Stats;

/// Largest ClientHello read: one TLS record (16 KiB) plus its header.
const MAX_CLIENT_HELLO: usize = 16 * 1024 + 5;
/// Time a client has to send its ClientHello.
const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// PERMISSIVE mode: how long to wait for a client's first byte before treating the
/// connection as plaintext (protocols where the server speaks first send nothing).
const PERMISSIVE_SNIFF_TIMEOUT: Duration = Duration::from_secs(1);

/// How a listener terminates mesh mTLS.
#[derive(Clone)]
pub enum DownstreamTlsRuntime {
    /// With this server config; plaintext is accepted too when `permissive`.
    Ready {
        /// The mesh's acceptor (for the listener's TLS parameters).
        acceptor: bearing_tls::TlsAcceptor,
        /// The TLS parameters it allows (kuma-cp's MeshTLS); `None`: the mesh's own. Shared
        /// with the admissions of its connections.
        params: Option<Arc<TlsParams>>,
        /// Kuma's PERMISSIVE mode: connections not starting with a TLS record are plaintext.
        permissive: bool,
        /// The mesh state the acceptor comes from (its CA verifies client certificates).
        mesh: Arc<MeshTlsRuntime>,
    },
    /// The mesh's certificate could not be issued: connections are refused.
    Unavailable(String),
}

impl DownstreamTlsRuntime {
    /// The termination settings `downstream` asks for, with the mesh states in `tls`.
    pub fn of(tls: &MeshTlsSet, downstream: &DownstreamTls) -> Self {
        let mesh = &downstream.mesh;
        let Some(rt) = tls.get(mesh) else {
            return DownstreamTlsRuntime::Unavailable(format!(
                "mesh {mesh:?} has no usable mTLS certificate"
            ));
        };
        match rt.server(downstream.params.as_ref()) {
            Ok(acceptor) => DownstreamTlsRuntime::Ready {
                acceptor,
                params: downstream.params.clone().map(Arc::new),
                permissive: rt.config.permissive,
                mesh: rt.clone(),
            },
            Err(e) => DownstreamTlsRuntime::Unavailable(format!(
                "mesh {mesh:?}: no TLS context for its TLS parameters: {e}"
            )),
        }
    }

    /// Whether a listener terminating `next` admits exactly what one terminating `old`
    /// admitted, so that its connections need not be checked again.
    pub fn same_terms(old: &Option<Self>, next: &Option<Self>) -> bool {
        use DownstreamTlsRuntime::{Ready, Unavailable};
        match (old, next) {
            (None, None) | (Some(Unavailable(_)), Some(Unavailable(_))) => true,
            (
                Some(Ready {
                    mesh: a,
                    permissive: pa,
                    params: qa,
                    ..
                }),
                Some(Ready {
                    mesh: b,
                    permissive: pb,
                    params: qb,
                    ..
                }),
            ) => Arc::ptr_eq(a, b) && pa == pb && qa == qb,
            _ => false,
        }
    }
}

/// How a downstream connection of a sidecar listener was admitted, for checking it against
/// the listener's terms after a config change.
#[derive(Clone)]
pub(crate) enum Admission {
    /// Without mesh mTLS: plaintext, or a listener that does not terminate it (gateway, zone
    /// proxy).
    Plaintext,
    /// Mesh mTLS, the client certificate verified with this mesh state's CA; with what RBAC
    /// reads of the connection when its listener had RBAC at the handshake, and the TLS
    /// parameters the handshake allowed (`None`: the mesh's own).
    MeshTls(
        Arc<MeshTlsRuntime>,
        Option<Arc<Peer>>,
        Option<Arc<TlsParams>>,
    ),
}

impl Admission {
    /// What RBAC reads of the connection: `None` for mesh mTLS accepted on a listener without
    /// RBAC (the peer was not read; a listener that gains RBAC closes such connections).
    pub(crate) fn peer(&self) -> Option<&Peer> {
        match self {
            Admission::Plaintext => Some(&PLAINTEXT),
            Admission::MeshTls(_, peer, _) => peer.as_deref(),
        }
    }

    /// What was read of a mesh mTLS connection, shared (`None` for plaintext, or a peer not
    /// read): for a request's future, which owns what it holds.
    pub(crate) fn shared_peer(&self) -> Option<Arc<Peer>> {
        match self {
            Admission::Plaintext => None,
            Admission::MeshTls(_, peer, _) => peer.clone(),
        }
    }
}

/// A downstream connection as the transport stage hands it to a network filter.
pub(crate) enum Transported<S> {
    /// Its bytes as received: plaintext.
    Plain(S),
    /// Decrypted, admitted as the handshake's verification says.
    Tls(TlsStream<S>, Admission),
}

/// The filter chain of a listener terminating mesh mTLS that a connection takes, as Envoy's
/// TLS inspector matches kuma-cp's chains: a PERMISSIVE listener has all three, a STRICT one
/// only the mesh's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chain {
    /// Mesh mTLS: a ClientHello offering ALPN `kuma` (every chain of a STRICT listener).
    MeshTls,
    /// Plaintext: the first byte does not start a TLS record (or none came in time).
    Plaintext,
    /// TLS that is not the mesh's (no ALPN `kuma`): passed through undecrypted, as kuma-cp's
    /// `transport_protocol: tls` chain without a transport socket does.
    OtherTls,
}

/// Terminates mesh mTLS on `stream` as `tls` says (or, in PERMISSIVE mode, takes plaintext and
/// passes TLS that is not the mesh's through, once `admit` lets the chain the connection
/// takes have it: its connection rate limit; a STRICT listener's one chain was admitted at
/// accept). `None` when the connection is refused (logged, and counted as a handshake error
/// of `listener` unless `admit` refused it). `read_peer`: the listener
/// has RBAC, which reads the peer certificate's names and the SNI (read here, once per
/// connection).
pub(crate) async fn terminate_mesh_tls<S>(
    stream: S,
    tls: &DownstreamTlsRuntime,
    stats: &Stats,
    (listener, read_peer): (&str, bool),
    peer: std::net::SocketAddr,
    admit: impl FnOnce(Chain) -> bool,
) -> Option<Transported<S>>
where
    S: AsyncRead + AsyncWrite + TcpBacked + Unpin,
{
    let (acceptor, permissive, mesh, params) = match tls {
        DownstreamTlsRuntime::Ready {
            acceptor,
            permissive,
            mesh,
            params,
        } => (acceptor, *permissive, mesh, params),
        DownstreamTlsRuntime::Unavailable(reason) => {
            stats.count_tls_handshake_error(listener);
            tracing::warn!(%listener, %peer, "refused: {reason}");
            crate::io::reset(&stream);
            return None;
        }
    };
    let chain = match permissive {
        true => match permissive_chain(stream.tcp()).await {
            Ok(chain) if admit(chain) => chain,
            Ok(_) => return None,
            Err(e) => {
                stats.count_tls_handshake_error(listener);
                tracing::info!(%listener, %peer, "refused: {e}");
                return None;
            }
        },
        false => Chain::MeshTls,
    };
    if chain != Chain::MeshTls {
        return Some(Transported::Plain(stream));
    }
    match acceptor.accept(stream, listener, peer).await {
        Ok(tls_stream) => {
            let who = read_peer.then(|| Arc::new(Peer::of_tls(&tls_stream)));
            let admission = Admission::MeshTls(mesh.clone(), who, params.clone());
            Some(Transported::Tls(tls_stream, admission))
        }
        Err(e) => {
            stats.count_tls_handshake_error(listener);
            tracing::info!(%listener, %peer, "mTLS refused: {e}");
            None
        }
    }
}

/// The chain of a PERMISSIVE listener the connection waiting in `stream` takes, read without
/// consuming it; a TLS record that is no ClientHello is an error (Envoy's TLS inspector
/// closes such a connection).
async fn permissive_chain(stream: &TcpStream) -> Result<Chain, String> {
    if !starts_with_tls_record(stream, PERMISSIVE_SNIFF_TIMEOUT).await {
        return Ok(Chain::Plaintext);
    }
    Ok(match offers_kuma_alpn(stream).await? {
        true => Chain::MeshTls,
        false => Chain::OtherTls,
    })
}

/// The SNI of the ClientHello waiting in `stream`, read without consuming it; one naming no
/// server is an error.
pub(crate) async fn read_sni(stream: &TcpStream) -> Result<String, String> {
    peek_sni(stream)
        .await?
        .ok_or_else(|| "the ClientHello names no server (SNI)".into())
}

/// The SNI of the ClientHello waiting in `stream` (`None`: it names no server), read
/// without consuming it.
pub(crate) async fn peek_sni(stream: &TcpStream) -> Result<Option<String>, String> {
    Ok(peek_client_hello(stream).await?.0)
}

/// Whether the ClientHello waiting in `stream` (read without consuming it) offers ALPN
/// `kuma`: what a chain matched by `application_protocols: [kuma]` (a cross-mesh gateway
/// listener's) requires of a connection, as Envoy's filter-chain match does.
pub(crate) async fn offers_kuma_alpn(stream: &TcpStream) -> Result<bool, String> {
    Ok(peek_client_hello(stream).await?.1)
}

/// The SNI of the ClientHello waiting in `stream` and whether it offers ALPN `kuma`, read
/// without consuming it.
async fn peek_client_hello(stream: &TcpStream) -> Result<(Option<String>, bool), String> {
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
            ClientHello::Parsed { sni, alpn_kuma } => {
                return Ok((sni.map(str::to_string), alpn_kuma))
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

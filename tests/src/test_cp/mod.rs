//! A file-driven control plane for tests: `/bootstrap` and State-of-the-World ADS on one port,
//! the way kuma-cp serves them (HTTP and gRPC on the same listener, `application/grpc` →
//! gRPC), with go-control-plane's snapshot semantics.
//!
//! A [`Snapshot`] holds every resource with one version for all types, derived from the
//! content (so a control plane restarted with the same resources offers the same version, and
//! a client that already has it is not sent it again, as with go-control-plane). Every event
//! (stream opened, response sent, ACK, NACK, bootstrap) is broadcast as an [`Event`], whose
//! `Display` is the line `bearing-test-cp` prints on stdout.

mod ads;
mod bootstrap;
mod files;

pub use files::{load_files, tls_config, watch_files, POLL_INTERVAL};

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use envoy_types::pb::google::protobuf::Any;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

/// Largest gRPC message the test control plane accepts or sends (as Bearing's client).
pub const MAX_MESSAGE_SIZE: usize = 64 << 20;

/// Resources by type URL, each type's in the order they are sent.
pub type Resources = BTreeMap<String, Vec<Any>>;

/// One consistent set of resources and its version.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// The version of every type in this snapshot: a hash of all the resources.
    pub version: String,
    /// The resources by type URL.
    pub resources: Resources,
}

impl Snapshot {
    /// A snapshot of `resources`, versioned by their content.
    pub fn new(resources: Resources) -> Snapshot {
        let mut hasher = std::hash::DefaultHasher::new();
        for (type_url, list) in &resources {
            type_url.hash(&mut hasher);
            for any in list {
                any.type_url.hash(&mut hasher);
                any.value.hash(&mut hasher);
            }
        }
        Snapshot {
            version: format!("{:016x}", hasher.finish()),
            resources,
        }
    }

    /// How many resources the snapshot holds, all types together.
    pub fn len(&self) -> usize {
        self.resources.values().map(Vec::len).sum()
    }

    /// Whether the snapshot holds no resource.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Something the control plane did or was told, printed by `bearing-test-cp` as one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A new snapshot is served.
    Snapshot {
        /// Its version.
        version: String,
        /// Its number of resources.
        resources: usize,
    },
    /// A `/bootstrap` request was answered.
    Bootstrap {
        /// The node id `<mesh>.<name>` (empty when the request did not name one).
        node: String,
        /// The HTTP status answered.
        status: u16,
    },
    /// An ADS stream sent its first request.
    Connect {
        /// The node id of the first request.
        node: String,
        /// The `authorization` metadata of the stream.
        token: Option<String>,
    },
    /// An ADS stream was refused (bad or missing token).
    Refused {
        /// Why.
        reason: String,
    },
    /// A response was sent.
    Push {
        /// Its type URL.
        type_url: String,
        /// Its version.
        version: String,
        /// Its nonce.
        nonce: String,
        /// The node it went to.
        node: String,
        /// Its number of resources.
        resources: usize,
    },
    /// A request acknowledged the response with the current nonce.
    Ack {
        /// The type URL.
        type_url: String,
        /// The version acknowledged.
        version: String,
        /// The node.
        node: String,
    },
    /// A request rejected the response with the current nonce.
    Nack {
        /// The type URL.
        type_url: String,
        /// The version rejected (the one sent with that nonce).
        version: String,
        /// The version the client says it keeps.
        kept: String,
        /// The node.
        node: String,
        /// The `error_detail` message.
        detail: String,
    },
}

/// The message name of a type URL (`Cluster` for `type.googleapis.com/envoy...v3.Cluster`).
fn short_type(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Snapshot { version, resources } => {
                write!(f, "SNAPSHOT version={version} resources={resources}")
            }
            Event::Bootstrap { node, status } => {
                write!(f, "BOOTSTRAP node={node} status={status}")
            }
            Event::Connect { node, token } => {
                let token = if token.is_some() { "yes" } else { "no" };
                write!(f, "CONNECT node={node} token={token}")
            }
            Event::Refused { reason } => write!(f, "REFUSED {reason}"),
            Event::Push {
                type_url,
                version,
                nonce,
                node,
                resources,
            } => write!(
                f,
                "PUSH type={} version={version} nonce={nonce} node={node} resources={resources}",
                short_type(type_url)
            ),
            Event::Ack {
                type_url,
                version,
                node,
            } => write!(
                f,
                "ACK type={} version={version} node={node}",
                short_type(type_url)
            ),
            Event::Nack {
                type_url,
                version,
                kept,
                node,
                detail,
            } => write!(
                f,
                "NACK type={} version={version} kept={kept} node={node} detail={}",
                short_type(type_url),
                detail.replace(['\n', '\r'], " ")
            ),
        }
    }
}

/// How the test control plane serves.
#[derive(Clone, Default)]
pub struct TestCpConfig {
    /// TLS for the listener (ALPN h2 and http/1.1), and the certificate's PEM for the
    /// bootstrap's `cp_validation_ctx`.
    pub tls: Option<(Arc<rustls::ServerConfig>, String)>,
    /// A file holding the dataplane token every `/bootstrap` must carry (else 422) and every
    /// ADS stream must present as `authorization` (else `UNAUTHENTICATED`); read per request.
    pub require_token: Option<PathBuf>,
}

/// State shared by the connections of one control plane.
struct Shared {
    snapshot: watch::Sender<Arc<Snapshot>>,
    events: broadcast::Sender<Event>,
    config: TestCpConfig,
    nonces: std::sync::atomic::AtomicU64,
    stop: CancellationToken,
}

impl Shared {
    fn emit(&self, event: Event) {
        // No subscriber is fine: events are for whoever listens.
        let _ = self.events.send(event);
    }

    /// The token required of clients, if any (the file is read per request, so a test can
    /// rotate it).
    fn required_token(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.config.require_token else {
            return Ok(None);
        };
        std::fs::read_to_string(path)
            .map(|t| Some(t.trim().to_string()))
            .map_err(|e| format!("token file {}: {e}", path.display()))
    }
}

/// A running test control plane; dropping it stops the listener and closes every connection
/// (as a control-plane crash would).
pub struct TestCp {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl TestCp {
    /// Serves on `listener` with `resources` as the first snapshot.
    pub fn start(
        listener: TcpListener,
        config: TestCpConfig,
        resources: Resources,
    ) -> Result<TestCp> {
        let addr = listener.local_addr().context("test CP listener address")?;
        let (events, _) = broadcast::channel(4096);
        let snapshot = Snapshot::new(resources);
        let shared = Arc::new(Shared {
            snapshot: watch::Sender::new(Arc::new(snapshot)),
            events,
            config,
            nonces: Default::default(),
            stop: CancellationToken::new(),
        });
        tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(TestCp { shared, addr })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Subscribes to its events (from now on).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// The snapshot served now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.borrow().clone()
    }

    /// Serves `resources` from now on; streams get every type again when the version changed.
    /// Returns the new version. Called from one task at a time (the file watcher, or a test).
    pub fn set_resources(&self, resources: Resources) -> String {
        let snapshot = Snapshot::new(resources);
        let version = snapshot.version.clone();
        if self.shared.snapshot.borrow().version == version {
            return version;
        }
        // Announced before streams can see it, so its line precedes every PUSH/ACK of it.
        self.shared.emit(Event::Snapshot {
            version: version.clone(),
            resources: snapshot.len(),
        });
        self.shared.snapshot.send_replace(Arc::new(snapshot));
        version
    }
}

impl Drop for TestCp {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

/// Accepts connections until stopped; each is served on its own task.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shared.stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("test CP: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let stop = shared.stop.clone();
            tokio::select! {
                _ = stop.cancelled() => {}
                result = serve_stream(stream, shared) => {
                    if let Err(e) = result {
                        eprintln!("test CP: connection: {e:#}");
                    }
                }
            }
        });
    }
}

/// Serves one TCP connection, after the TLS handshake if configured.
async fn serve_stream(stream: tokio::net::TcpStream, shared: Arc<Shared>) -> Result<()> {
    match shared.config.tls.clone() {
        Some((tls, _)) => {
            let stream = TlsAcceptor::from(tls)
                .accept(stream)
                .await
                .context("TLS handshake")?;
            serve_http(stream, shared).await
        }
        None => serve_http(stream, shared).await,
    }
}

/// HTTP/1.1 or HTTP/2 on one connection: gRPC to the ADS service, the rest to `/bootstrap`.
async fn serve_http<S>(io: S, shared: Arc<Shared>) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let grpc = AggregatedDiscoveryServiceServer::new(ads::Ads::new(shared.clone()))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let service =
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let mut grpc = grpc.clone();
            let shared = shared.clone();
            async move {
                let is_grpc = request
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("application/grpc"));
                if is_grpc {
                    return grpc.call(request).await;
                }
                let (head, body) = request.into_parts();
                let body = match body.collect().await {
                    Ok(body) => body.to_bytes(),
                    Err(e) => {
                        return Ok::<_, Infallible>(bootstrap::text(
                            400,
                            format!("reading the body: {e}"),
                        ))
                    }
                };
                Ok(bootstrap::handle(&shared, &head, &body))
            }
        });
    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

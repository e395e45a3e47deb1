//! Routed HTTP at run time, and builtin gateway listeners: [`HttpRoutes`] routes the requests
//! of a gateway listener or of a sidecar listener with a route table (kuma-cp's MeshHTTPRoute)
//! by `bearing-gateway`'s router, on the byte path and through hyper; [`GatewayRuntime`] adds
//! a gateway's TLS termination with a certificate per hostname (SNI), TCP and TLS connections
//! spread over weighted backends, and the listener's connection limit.
//!
//! Kuma's gateway HTTP defaults (its Envoy config for builtin gateways) that apply here: the
//! `server` response header is `Kuma Gateway`; the client's address is appended to
//! `x-forwarded-for`; paths are normalised, header names with `_` are refused and
//! `x-kuma-tags` is removed (in the router); requests get 15 s for response headers (the
//! clusters' request timeout) and a client has 5 s to send a request's headers.
//!
//! HTTP/1.1 requests go over the byte path ([`crate::hcm::byte_codec`]) when every backend speaks
//! HTTP/1.1: the head is read into an `http` request for the router and the routed request
//! is written back as bytes, so the rest of the exchange costs what a sidecar's does. There a
//! keep-alive connection may idle 300 s between requests (Kuma's gateway `idleTimeout`).
//! HTTP/2 and whatever else the byte path does not carry go to hyper, which measures the 5 s
//! from the moment a connection waits for a request, so it also closes keep-alive connections
//! idle that long.
//!
//! A gateway listener with compression (Kuma's gzip compressor, on every HTTP listener)
//! compresses responses as Envoy does ([`crate::hcm::compress`]): hyper serves the clients
//! that accept gzip (the byte path hands their connection over at the first such request),
//! while the byte path keeps serving the others, adding only `Vary: Accept-Encoding`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bearing_gateway::{Decision, HeaderEdits, Router};
use bearing_http1::BodyLength;
use bearing_proxy_config::{
    response_timeout, Compression, CrossMesh, GatewayCertificate, GatewayListener, GatewayProtocol,
    HttpRoute, RouteAction, RouteTable,
};
use bearing_tls::{Negotiated as _, TlsAcceptor};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use tokio::net::TcpStream;

use crate::hcm::byte_codec::Timeouts;
use crate::hcm::compress;
use crate::hcm::hyper_codec::{local_reply, send, ProxyBody};
use crate::hcm::{strip_hop_by_hop, Reply, Routed};
use crate::io::Counted;
use crate::mesh_tls::{MeshState, MeshTlsSet};
use crate::stats::{ListenerStats, Stats};
use crate::tcp_proxy::serve_tcp;
use crate::transport::{offers_kuma_alpn, read_sni, Admission, Transported};
use crate::upstream::{ClusterRuntime, RequestBody};

/// Value of the `server` header on every gateway response (Kuma's gateway `serverName`).
const SERVER: &str = "Kuma Gateway";
const SERVER_NAME: HeaderValue = HeaderValue::from_static(SERVER);
/// Largest request body copied for a mirror; bigger requests are forwarded but not mirrored
/// (the body streams through once and is not held).
const MAX_MIRRORED_BODY: u64 = 64 * 1024;
/// How long a mirrored request's response may take, to its end, when the mirror cluster has
/// no request timeout (gRPC): Kuma's default route timeout.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(15);
/// Time a client has to send a request's headers on the hyper path (HTTP/2, and HTTP/1.1
/// handed off from the byte path): Kuma's gateway stream idle timeout.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A gateway's connections on the byte path (HTTP/1.1), with the timeouts kuma-cp gives every
/// gateway listener: a head started must be complete within 500 ms or the client gets 408
/// `request header timeout` (`request_headers_timeout`, timed from its first byte as Envoy
/// does), 5 s for the rest of a held body (`stream_idle_timeout`) and 300 s idle between
/// requests (`idleTimeout`).
pub(crate) const BYTE_PATH_TIMEOUTS: Timeouts = Timeouts {
    head: Duration::from_millis(500),
    idle: Duration::from_secs(300),
    body: HEADER_READ_TIMEOUT,
    head_expired: Some("request header timeout"),
};

/// The routes of a listener whose HTTP requests are routed (a gateway listener, or a sidecar
/// listener with a route table), with the clusters they name.
pub struct HttpRoutes {
    router: Arc<Router>,
    clusters: HashMap<String, Arc<ClusterRuntime>>,
    /// Every cluster the routes name is spoken to over HTTP/1.1, so HTTP/1.1 requests can
    /// take the byte path.
    http1_backends: bool,
    /// A gateway's defaults (Kuma's gateway Envoy config): `server: Kuma Gateway` on every
    /// response, the client's address appended to `x-forwarded-for`.
    gateway: bool,
    /// A gateway listener's gzip response compression (`GatewayListener::compression`).
    compression: Option<Compression>,
}

impl HttpRoutes {
    /// A sidecar listener's route table, with the clusters it names.
    pub fn table(
        table: &RouteTable,
        clusters: &HashMap<String, Arc<ClusterRuntime>>,
    ) -> Result<HttpRoutes, String> {
        let router = Router::table(table)?;
        let routes = table.virtual_hosts.iter().flat_map(|v| &v.routes);
        Ok(HttpRoutes::new(
            router,
            route_clusters(routes),
            clusters,
            false,
        ))
    }

    /// A gateway listener's routes and TCP backends, with the clusters they name.
    fn gateway(
        listener: &GatewayListener,
        clusters: &HashMap<String, Arc<ClusterRuntime>>,
    ) -> Result<HttpRoutes, String> {
        let router = Router::gateway(listener)?;
        let tcp = listener
            .hosts
            .iter()
            .flat_map(|h| &h.tcp_backends)
            .map(|b| b.cluster.as_str());
        let http = route_clusters(listener.hosts.iter().flat_map(|h| &h.http_routes));
        let mut routes = HttpRoutes::new(router, tcp.chain(http), clusters, true);
        routes.compression = listener.compression.clone();
        Ok(routes)
    }

    fn new<'a>(
        router: Router,
        referenced: impl Iterator<Item = &'a str>,
        clusters: &HashMap<String, Arc<ClusterRuntime>>,
        gateway: bool,
    ) -> HttpRoutes {
        let mut own: HashMap<String, Arc<ClusterRuntime>> = HashMap::new();
        for name in referenced {
            match clusters.get(name) {
                Some(c) => {
                    own.insert(name.to_string(), c.clone());
                }
                None => {
                    tracing::error!(cluster = %name, "a route names a missing cluster; its requests get 503")
                }
            }
        }
        HttpRoutes {
            http1_backends: own.values().all(|c| !c.is_h2()),
            router: Arc::new(router),
            clusters: own,
            gateway,
            compression: None,
        }
    }

    /// Every cluster the routes send to.
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<ClusterRuntime>> {
        self.clusters.values()
    }

    /// What a response head relayed as bytes gets: the route's edits, and a gateway's
    /// `server`.
    fn edits<'r>(&'r self, route: Option<&'r HeaderEdits>) -> ResponseEdits<'r> {
        ResponseEdits {
            route,
            server: self.gateway,
            compression: self.compression.as_ref(),
        }
    }
}

/// One gateway listener of the applied config, ready to serve.
pub struct GatewayRuntime {
    /// Its hosts' routes and backends (also the listener's [`HttpRoutes`]).
    routes: Arc<HttpRoutes>,
    /// HTTPS and TLS terminate: the acceptor choosing a certificate by SNI.
    tls: Option<Arc<TlsAcceptor>>,
    /// What `tls` was made from: a later config with equal terms keeps the acceptor.
    tls_terms: TlsTerms,
    protocol: GatewayProtocol,
    limit: Option<u32>,
    /// Connections open on the listener, counted across reloads: a config keeping the
    /// listener keeps the count.
    open: Arc<AtomicU32>,
}

/// What a gateway listener's TLS acceptor is made from: its protocol, each host's name (the
/// SNI picks a certificate by host, in this order) and certificate, and for a cross-mesh
/// listener its meshes' CAs and the identity's mesh state (by identity: a rebuilt one is a
/// change).
#[derive(PartialEq)]
struct TlsTerms {
    protocol: GatewayProtocol,
    hosts: Vec<(String, Option<GatewayCertificate>)>,
    cross_mesh: Option<(CrossMesh, Option<MeshState>)>,
}

impl TlsTerms {
    /// The terms of `listener`'s TLS with the mesh states `mesh_tls`.
    fn of(listener: &GatewayListener, mesh_tls: &MeshTlsSet) -> TlsTerms {
        let hosts = listener.hosts.iter();
        TlsTerms {
            protocol: listener.protocol,
            hosts: hosts
                .map(|h| (h.hostname.clone(), h.certificate.clone()))
                .collect(),
            cross_mesh: listener.cross_mesh.as_ref().map(|cross| {
                let mesh = mesh_tls.get(&cross.identity_mesh);
                (cross.clone(), mesh.map(MeshState::of))
            }),
        }
    }
}

impl GatewayRuntime {
    /// Builds the router and TLS of `listener`, keeping the clusters its routes name.
    /// `previous` is the gateway this listener had in the config being replaced: its open
    /// connections stay counted against the limit, and its TLS acceptor is kept when made
    /// from the same terms.
    pub fn build(
        listener: &GatewayListener,
        clusters: &HashMap<String, Arc<ClusterRuntime>>,
        mesh_tls: &MeshTlsSet,
        previous: Option<&GatewayRuntime>,
    ) -> Result<GatewayRuntime, String> {
        let routes = Arc::new(HttpRoutes::gateway(listener, clusters)?);
        let router = routes.router.clone();
        let tls_terms = TlsTerms::of(listener, mesh_tls);
        let kept = previous.filter(|p| p.tls_terms == tls_terms);
        let tls = match (kept, &listener.cross_mesh, listener.protocol) {
            (Some(kept), _, _) => kept.tls.clone(),
            (None, Some(cross), _) => Some(Arc::new(cross_mesh_acceptor(cross, mesh_tls)?)),
            (None, None, GatewayProtocol::Https) => {
                Some(Arc::new(acceptor(listener, router, &[b"h2", b"http/1.1"])?))
            }
            (None, None, GatewayProtocol::TlsTerminate) => {
                Some(Arc::new(acceptor(listener, router, &[])?))
            }
            (None, None, _) => None,
        };
        Ok(GatewayRuntime {
            routes,
            tls,
            tls_terms,
            protocol: listener.protocol,
            limit: listener.connection_limit,
            open: previous.map_or_else(Default::default, |p| p.open.clone()),
        })
    }

    /// Its routes, which the listener's HTTP requests take.
    pub fn routes(&self) -> &Arc<HttpRoutes> {
        &self.routes
    }

    /// Takes a connection slot; `None` when the connection limit is reached.
    pub(crate) fn admit(&self) -> Option<Slot> {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        let slot = Slot(self.open.clone());
        match self.limit {
            Some(limit) if open > limit => None,
            _ => Some(slot),
        }
    }

    /// The backend cluster of the TCP or TLS host `host`.
    fn tcp_cluster(&self, host: usize) -> Option<&Arc<ClusterRuntime>> {
        let backend = self.routes.router.tcp_backend(host)?;
        self.routes.clusters.get(&backend.cluster)
    }
}

impl HttpRoutes {
    /// Routes an HTTP/1.1 request the byte path read: `head` (as [`bearing_http1`] wrote it,
    /// hop-by-hop fields removed) is read into an `http` request for the router and, when
    /// the request is forwarded, written again as routed, with `x-forwarded-for` and the
    /// original framing (`length`, `body`). A mirrored request's copy is sent from here.
    pub(crate) fn route_head(
        &self,
        head: &mut Vec<u8>,
        length: BodyLength,
        body: &[u8],
        peer: SocketAddr,
        listener: &str,
    ) -> Routed<'_> {
        if !self.http1_backends {
            return Routed::Unsupported("a backend cluster is spoken to over HTTP/2");
        }
        let Some(mut parts) = request_parts(head) else {
            return Routed::Unsupported("request head the router cannot read");
        };
        if let Some(compression) = &self.compression {
            let accept = parts.headers.get_all(header::ACCEPT_ENCODING).iter();
            if compress::accepts_gzip(accept.map(HeaderValue::as_bytes)) {
                return Routed::Unsupported("the client accepts gzip: compressed by hyper");
            }
            if compression.remove_accept_encoding {
                parts.headers.remove(header::ACCEPT_ENCODING);
            }
        }
        match self.decide(&mut parts, peer) {
            Routing::Reply(reply, route) => Routed::Reply(reply, Some(self.edits(route))),
            Routing::Forward {
                target,
                timeout,
                response_headers,
                mirror,
            } => {
                if let Some(m) = mirror {
                    spawn_mirror(&parts, Bytes::copy_from_slice(body), m, listener);
                }
                strip_hop_by_hop(&mut parts.headers);
                write_request_head(&parts, length, head);
                Routed::Forward {
                    cluster: target,
                    timeout,
                    edits: Some(self.edits(Some(response_headers))),
                }
            }
        }
    }

    /// Routes a request for either path: the router's decision with its clusters looked up,
    /// and, for a request a gateway forwards, the client's address appended to
    /// `x-forwarded-for`.
    fn decide(&self, parts: &mut http::request::Parts, peer: SocketAddr) -> Routing<'_> {
        match self.router.route(parts) {
            Decision::Respond {
                status,
                location,
                body,
                response_headers,
            } => Routing::Reply(
                Reply {
                    status,
                    location,
                    message: body
                        .unwrap_or_else(|| status.canonical_reason().unwrap_or(""))
                        .to_string(),
                    overloaded: false,
                },
                response_headers,
            ),
            Decision::Forward {
                cluster,
                response_headers,
                mirror,
                origin,
                timeout,
            } => match self.clusters.get(cluster) {
                None => Routing::Reply(
                    Reply {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        location: None,
                        message: format!("{origin}: backend cluster {cluster} is not available"),
                        overloaded: false,
                    },
                    None,
                ),
                Some(target) => {
                    if self.gateway {
                        append_forwarded_for(&mut parts.headers, peer);
                    }
                    Routing::Forward {
                        target,
                        timeout: response_timeout(timeout, target.config.request_timeout),
                        response_headers,
                        mirror: mirror.and_then(|m| self.clusters.get(m)),
                    }
                }
            },
        }
    }
}

/// What routed HTTP changes in a response head it relays as bytes: the route's response
/// header filter, if a route answered, then a gateway's `server`, then the `Vary` of a
/// gateway's compression (the byte path serves only clients that do not accept gzip).
#[derive(Clone, Copy)]
pub(crate) struct ResponseEdits<'r> {
    route: Option<&'r HeaderEdits>,
    server: bool,
    compression: Option<&'r Compression>,
}

impl ResponseEdits<'_> {
    /// Edits `head`, written by [`bearing_http1`], as [`handle`] edits a response's headers.
    pub(crate) fn apply(self, head: &mut Vec<u8>) {
        let (route, server) = (self.route, self.server);
        let appended = route
            .into_iter()
            .flat_map(HeaderEdits::appended)
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
        let server_field = server.then_some((&b"server"[..], SERVER.as_bytes()));
        bearing_http1::edit_fields(
            head,
            |name| {
                (server && name.eq_ignore_ascii_case(b"server"))
                    || route.is_some_and(|r| r.replaces(name))
            },
            appended.chain(server_field),
        );
        if let Some(compression) = self.compression {
            compress::vary_head(compression, head);
        }
    }
}

/// `head` (written by [`bearing_http1::parse_request`]) as an `http` request's parts; `None`
/// when the `http` crate refuses something in it.
fn request_parts(head: &[u8]) -> Option<http::request::Parts> {
    let (line, fields) = bearing_http1::written_head(head)?;
    // `METHOD SP target SP HTTP/1.1`; the target has no spaces.
    let (method, rest) = line.split_at(line.iter().position(|b| *b == b' ')?);
    let rest = rest.get(1..)?;
    let target = &rest[..rest.iter().rposition(|b| *b == b' ')?];
    let mut req = Request::new(());
    *req.method_mut() = Method::from_bytes(method).ok()?;
    *req.uri_mut() = Uri::from_maybe_shared(Bytes::copy_from_slice(target)).ok()?;
    let headers = req.headers_mut();
    for (name, value) in fields {
        headers.append(
            HeaderName::from_bytes(name).ok()?,
            HeaderValue::from_bytes(value).ok()?,
        );
    }
    Some(req.into_parts().0)
}

/// Writes the routed request's head for an HTTP/1.1 upstream into `out`: the (rewritten)
/// target, the headers, and the framing the request was read with (a route's header filter
/// cannot change how the body that follows is delimited).
fn write_request_head(parts: &http::request::Parts, length: BodyLength, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name != header::CONTENT_LENGTH {
            bearing_http1::push_header(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if let BodyLength::Length(n) = length {
        bearing_http1::push_header(out, b"content-length", n.to_string().as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// What routed HTTP does with one request, on the byte path or through hyper.
enum Routing<'g> {
    /// Answer it: a 404, redirect, direct response or refusal of the router (with the
    /// answering route's response edits), or a 503 for a backend cluster that is not
    /// available.
    Reply(Reply, Option<&'g HeaderEdits>),
    /// Send it to `target` within `timeout` (the route's, else the cluster's; `None`: no
    /// limit), a copy to `mirror`, and change the response's headers.
    Forward {
        target: &'g Arc<ClusterRuntime>,
        timeout: Option<Duration>,
        response_headers: &'g HeaderEdits,
        mirror: Option<&'g Arc<ClusterRuntime>>,
    },
}

/// An open connection counted against the listener's limit; released on drop.
pub struct Slot(Arc<AtomicU32>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Names of the clusters `routes` send to, mirrors included.
fn route_clusters<'a>(
    routes: impl Iterator<Item = &'a HttpRoute>,
) -> impl Iterator<Item = &'a str> {
    routes.flat_map(|r| {
        let backends = match &r.action {
            RouteAction::Forward { backends, .. } => backends.as_slice(),
            RouteAction::Redirect(_) | RouteAction::DirectResponse { .. } => &[],
        };
        let mirror = r.mirror.iter().map(|m| m.cluster.as_str());
        backends.iter().map(|b| b.cluster.as_str()).chain(mirror)
    })
}

/// The TLS acceptor of a terminating listener: each host's certificate, chosen by SNI.
fn acceptor(
    listener: &GatewayListener,
    router: Arc<Router>,
    alpn: &[&[u8]],
) -> Result<TlsAcceptor, String> {
    // Each host's certificate, by host index: an index into `keys`.
    let mut keys = Vec::new();
    let mut key_of_host = Vec::with_capacity(listener.hosts.len());
    for h in &listener.hosts {
        let key = match &h.certificate {
            Some(c) => {
                let key = bearing_tls::certified_key(&c.cert_chain_pem, &c.key_pem)
                    .map_err(|e| format!("host {}: {}: {e}", h.hostname, c.origin))?;
                keys.push(key);
                Some(keys.len() - 1)
            }
            None => None,
        };
        key_of_host.push(key);
    }
    // Without SNI: the `*` host's certificate, or the first one.
    let fallback = listener
        .hosts
        .iter()
        .position(|h| h.hostname == "*")
        .and_then(|i| key_of_host.get(i).copied().flatten())
        .or_else(|| key_of_host.iter().flatten().next().copied());
    let select = move |sni: Option<&str>| match sni {
        Some(name) => router
            .host_for(name)
            .and_then(|host| key_of_host.get(host).copied().flatten()),
        None => fallback,
    };
    bearing_tls::gateway_acceptor(&keys, select, alpn).map_err(|e| e.to_string())
}

/// The mesh mTLS acceptor of a cross-mesh listener: the gateway's identity in its mesh, and
/// clients of every mesh's CA.
fn cross_mesh_acceptor(cross: &CrossMesh, mesh_tls: &MeshTlsSet) -> Result<TlsAcceptor, String> {
    let rt = mesh_tls.get(&cross.identity_mesh).ok_or_else(|| {
        format!(
            "mesh {:?} has no usable mTLS certificate",
            cross.identity_mesh
        )
    })?;
    let pems: Vec<&str> = cross.client_ca_pems.iter().map(String::as_str).collect();
    bearing_tls::cross_mesh_acceptor(&pems, rt.identity()).map_err(|e| e.to_string())
}

/// Serves one connection of a gateway listener: TCP and TLS (passthrough or terminated)
/// are relayed to their backend here; an HTTP connection (decrypted for HTTPS) is handed
/// back to be served with the place it holds under the listener's connection limit. `None`
/// when the connection was served here, or refused.
pub(crate) async fn serve(
    stats: &Stats,
    stream: Counted<TcpStream>,
    (name, listener): (&str, &ListenerStats),
    gateway: &GatewayRuntime,
    peer: SocketAddr,
) -> Option<(Slot, Transported<Counted<TcpStream>>)> {
    let Some(slot) = gateway.admit() else {
        listener.errors.inc();
        tracing::warn!(listener = %name, %peer, "refused: connection limit reached");
        crate::io::reset(&stream);
        return None;
    };
    match gateway.protocol {
        GatewayProtocol::Http if gateway.tls.is_none() => {
            return Some((slot, Transported::Plain(stream)))
        }
        GatewayProtocol::Tcp => match gateway.tcp_cluster(0) {
            Some(cluster) => serve_tcp(stream, cluster, listener, name, peer, |_| true).await,
            None => refuse(&stream, (name, listener), peer, "no TCP route"),
        },
        GatewayProtocol::TlsPassthrough => {
            let sni = match read_sni(stream.get_ref()).await {
                Ok(sni) => sni,
                Err(reason) => {
                    refuse(&stream, (name, listener), peer, &reason);
                    return None;
                }
            };
            let cluster = gateway
                .routes
                .router
                .host_for(&sni)
                .and_then(|h| gateway.tcp_cluster(h));
            match cluster {
                Some(c) => serve_tcp(stream, c, listener, name, peer, |_| true).await,
                None => refuse(
                    &stream,
                    (name, listener),
                    peer,
                    &format!("no route for SNI {sni:?}"),
                ),
            }
        }
        GatewayProtocol::Http | GatewayProtocol::Https | GatewayProtocol::TlsTerminate => {
            let Some(acceptor) = &gateway.tls else {
                refuse(&stream, (name, listener), peer, "no TLS configuration");
                return None;
            };
            // A cross-mesh listener's chain is matched by ALPN `kuma`: a client not offering
            // it matches no chain, and Envoy closes its connection.
            if gateway.tls_terms.cross_mesh.is_some() {
                match offers_kuma_alpn(stream.get_ref()).await {
                    Ok(true) => {}
                    Ok(false) => {
                        let why =
                            "no filter chain matches: the ClientHello does not offer ALPN kuma";
                        refuse(&stream, (name, listener), peer, why);
                        return None;
                    }
                    Err(why) => {
                        refuse(&stream, (name, listener), peer, &why);
                        return None;
                    }
                }
            }
            let tls = match acceptor.accept(stream, name, peer).await {
                Ok(tls) => tls,
                Err(e) => {
                    stats.count_tls_handshake_error(name);
                    tracing::info!(listener = %name, %peer, "TLS refused: {e}");
                    return None;
                }
            };
            if gateway.protocol != GatewayProtocol::TlsTerminate {
                return Some((slot, Transported::Tls(tls, Admission::Plaintext)));
            }
            let sni = tls.server_name().unwrap_or("*").to_string();
            match gateway
                .routes
                .router
                .host_for(&sni)
                .and_then(|h| gateway.tcp_cluster(h))
            {
                Some(c) => serve_tcp(tls, c, listener, name, peer, |_| true).await,
                None => {
                    tracing::info!(listener = %name, %peer, %sni, "closed: no route for this SNI")
                }
            }
        }
    }
    None
}

/// Refuses a connection of listener `name` with a reset, counted and logged with `why`.
fn refuse(
    stream: &Counted<TcpStream>,
    (name, listener): (&str, &ListenerStats),
    peer: SocketAddr,
    why: &str,
) {
    listener.errors.inc();
    tracing::info!(listener = %name, %peer, "refused: {why}");
    crate::io::reset(stream);
}

/// Routes and forwards one HTTP request of a listener with routes (gateway or route table).
pub async fn handle(
    req: Request<Incoming>,
    (name, listener): (&str, &ListenerStats),
    routes: &HttpRoutes,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    // Whether the response is to be compressed, if it can be (never a HEAD's).
    let gzip = routes.compression.as_ref().map(|compression| {
        let accept = parts.headers.get_all(header::ACCEPT_ENCODING).iter();
        let accepted = compress::accepts_gzip(accept.map(HeaderValue::as_bytes));
        if compression.remove_accept_encoding {
            parts.headers.remove(header::ACCEPT_ENCODING);
        }
        (compression, accepted && parts.method != Method::HEAD)
    });
    let mut resp = match routes.decide(&mut parts, peer) {
        Routing::Reply(reply, edits) => {
            let mut resp = local_reply(reply.status, reply.message);
            if let Some(location) = reply.location {
                resp.headers_mut().insert(header::LOCATION, location);
            }
            if let Some(edits) = edits {
                edits.apply(resp.headers_mut());
            }
            resp
        }
        Routing::Forward {
            target,
            timeout,
            response_headers,
            mirror,
        } => {
            let body = match mirror {
                Some(m) => mirror_request(&parts, body, m, name).await,
                None => RequestBody::Streamed(body),
            };
            let req = Request::from_parts(parts, body);
            let mut resp = send(req, target, timeout).await;
            response_headers.apply(resp.headers_mut());
            resp
        }
    };
    if let Some((compression, accepted)) = gzip {
        compress::respond(compression, &mut resp, accepted);
    }
    if routes.gateway {
        resp.headers_mut().insert(header::SERVER, SERVER_NAME);
    }
    listener.requests.count(resp.status().as_u16());
    resp
}

/// Sends a copy of the request to `mirror` in the background (its response is dropped) and
/// gives back the body for the real request. Bodies up to [`MAX_MIRRORED_BODY`] are read once
/// and sent to both; larger or unknown-length bodies are not mirrored. As Envoy does, the
/// copy's Host gets a `-shadow` suffix so the mirror can tell copies apart.
async fn mirror_request(
    parts: &http::request::Parts,
    body: Incoming,
    mirror: &Arc<ClusterRuntime>,
    listener: &str,
) -> RequestBody {
    let small = body.is_end_stream()
        || body
            .size_hint()
            .exact()
            .is_some_and(|n| n <= MAX_MIRRORED_BODY);
    if !small {
        tracing::debug!(%listener, cluster = %mirror.config.name, "request body too large to mirror");
        return RequestBody::Streamed(body);
    }
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            tracing::debug!(%listener, "request body failed before mirroring: {e}");
            Bytes::new()
        }
    };
    spawn_mirror(parts, bytes.clone(), mirror, listener);
    RequestBody::Held(Full::new(bytes))
}

/// Sends a copy of the request (`parts` with `body`) to `mirror` in the background; its
/// response body is read frame by frame and each frame dropped as it arrives, so a mirror
/// holds no more than one frame whatever it answers. The whole exchange has the mirror
/// cluster's request timeout (as Envoy gives a shadow the route's timeout), or
/// [`MIRROR_TIMEOUT`]; the primary request never waits for any of it.
fn spawn_mirror(
    parts: &http::request::Parts,
    body: Bytes,
    mirror: &Arc<ClusterRuntime>,
    listener: &str,
) {
    let mut copy = Request::new(RequestBody::Held(Full::new(body)));
    *copy.method_mut() = parts.method.clone();
    *copy.uri_mut() = parts.uri.clone();
    *copy.version_mut() = parts.version;
    *copy.headers_mut() = parts.headers.clone();
    shadow_host(copy.headers_mut());
    let (cluster, listener) = (mirror.clone(), listener.to_string());
    tokio::spawn(async move {
        let limit = cluster.config.request_timeout.unwrap_or(MIRROR_TIMEOUT);
        let exchange = async {
            let mut body = send(copy, &cluster, Some(limit)).await.into_body();
            // Read to its end so the upstream connection goes back to the pool.
            while let Some(frame) = body.frame().await {
                if let Err(e) = frame {
                    tracing::debug!(%listener, cluster = %cluster.config.name, "mirror response failed: {e}");
                    break;
                }
            }
        };
        if tokio::time::timeout(limit, exchange).await.is_err() {
            tracing::debug!(%listener, cluster = %cluster.config.name, "mirror response not done within {limit:?}: dropped");
        }
    });
}

/// `host` → `host-shadow` (before any port), as Envoy marks mirrored requests.
fn shadow_host(headers: &mut http::HeaderMap) {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return;
    };
    let shadow = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{name}-shadow:{port}")
        }
        _ => format!("{host}-shadow"),
    };
    if let Ok(v) = HeaderValue::from_str(&shadow) {
        headers.insert(header::HOST, v);
    }
}

/// Appends the client's address to `x-forwarded-for` (Envoy's `use_remote_address`).
fn append_forwarded_for(headers: &mut http::HeaderMap, peer: SocketAddr) {
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    let ip = peer.ip().to_string();
    let value = match headers.get(&XFF).and_then(|v| v.to_str().ok()) {
        Some(existing) => format!("{existing}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(XFF, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limit_frees_a_slot_when_a_connection_ends() {
        let listener = GatewayListener {
            protocol: GatewayProtocol::Tcp,
            hosts: Vec::new(),
            tags: Default::default(),
            connection_limit: Some(2),
            cross_mesh: None,
            compression: None,
        };
        let gw = GatewayRuntime::build(&listener, &HashMap::new(), &MeshTlsSet::default(), None)
            .unwrap();
        let first = gw.admit();
        let second = gw.admit();
        assert!(first.is_some() && second.is_some());
        assert!(gw.admit().is_none(), "a third connection is over the limit");
        drop(first);
        assert!(gw.admit().is_some());
    }

    /// A config that keeps a gateway listener keeps its count of open connections (a reload
    /// does not reset `connectionLimit`) and, while its hosts and certificates are the same,
    /// its TLS acceptor; another certificate makes a new acceptor.
    #[test]
    fn a_reload_keeps_the_connection_count_and_the_acceptor_of_equal_terms() {
        let https = |name: &str| {
            let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
            GatewayListener {
                protocol: GatewayProtocol::Https,
                hosts: vec![bearing_proxy_config::GatewayHost {
                    hostname: "*".into(),
                    certificate: Some(GatewayCertificate {
                        origin: "inline".into(),
                        cert_chain_pem: cert.cert.pem(),
                        key_pem: cert.signing_key.serialize_pem(),
                    }),
                    http_routes: Vec::new(),
                    tcp_backends: Vec::new(),
                }],
                tags: Default::default(),
                connection_limit: Some(1),
                cross_mesh: None,
                compression: None,
            }
        };
        let (clusters, meshes) = (HashMap::new(), MeshTlsSet::default());
        let listener = https("example.com");
        let first = GatewayRuntime::build(&listener, &clusters, &meshes, None).unwrap();
        let open = first.admit();
        assert!(open.is_some());

        // Other tags: the open connection still counts, the acceptor is the same.
        let mut retagged = listener.clone();
        retagged.tags.insert("version".into(), "2".into());
        let second = GatewayRuntime::build(&retagged, &clusters, &meshes, Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&first.open, &second.open));
        assert!(
            second.admit().is_none(),
            "the limit counts the connection opened before"
        );
        let (a, b) = (first.tls.as_ref().unwrap(), second.tls.as_ref().unwrap());
        assert!(Arc::ptr_eq(a, b));
        drop(open);
        assert!(second.admit().is_some());

        // Another certificate: a new acceptor, the same count.
        let recertified = https("example.org");
        let third = GatewayRuntime::build(&recertified, &clusters, &meshes, Some(&second)).unwrap();
        assert!(!Arc::ptr_eq(b, third.tls.as_ref().unwrap()));
        assert!(Arc::ptr_eq(&second.open, &third.open));
        // A listener new to the config starts from zero.
        let fresh = GatewayRuntime::build(&recertified, &clusters, &meshes, None).unwrap();
        assert!(!Arc::ptr_eq(&third.open, &fresh.open));
    }

    #[test]
    fn shadow_host_keeps_the_port() {
        let mut h = http::HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a.example.com:8080"));
        shadow_host(&mut h);
        assert_eq!(h[header::HOST], "a.example.com-shadow:8080");
        h.insert(header::HOST, HeaderValue::from_static("a.example.com"));
        shadow_host(&mut h);
        assert_eq!(h[header::HOST], "a.example.com-shadow");
    }

    #[test]
    fn routed_head_is_written_with_the_framing_it_was_read_with() {
        let raw = b"POST /a%2Fb/../c?q=1 HTTP/1.1\r\nHost: web\r\nConnection: x-hop\r\nX-Hop: 1\r\nContent-Length: 5\r\nX-Two: 1\r\nx-two: 2\r\n\r\nhello";
        let mut head = Vec::new();
        let parsed = bearing_http1::parse_request(raw, &mut head)
            .unwrap()
            .unwrap();
        let mut parts = request_parts(&head).unwrap();
        assert_eq!(parts.method, Method::POST);
        assert_eq!(parts.uri, "/a%2Fb/../c?q=1");
        assert_eq!(parts.headers.get_all("x-two").iter().count(), 2);
        assert!(parts.headers.get("x-hop").is_none(), "listed by Connection");
        // A route filter removing the length does not change how the body is delimited.
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.uri = Uri::from_static("/c?q=1");
        write_request_head(&parts, parsed.body, &mut head);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "POST /c?q=1 HTTP/1.1\r\nhost: web\r\nx-two: 1\r\nx-two: 2\r\ncontent-length: 5\r\n\r\n"
        );
        assert!(request_parts(b"GET / HTTP/1.1\r\nbad name: 1\r\n\r\n").is_none());
    }

    #[test]
    fn response_edits_set_the_server_after_the_route_filter() {
        let mut head = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\n\r\n".to_vec();
        let edits = ResponseEdits {
            route: None,
            server: true,
            compression: None,
        };
        edits.apply(&mut head);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nserver: Kuma Gateway\r\n\r\n"
        );
    }

    #[test]
    fn forwarded_for_appends_the_peer() {
        let mut h = http::HeaderMap::new();
        let peer: SocketAddr = "10.0.0.9:5000".parse().unwrap();
        append_forwarded_for(&mut h, peer);
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        append_forwarded_for(&mut h, peer);
        assert_eq!(h["x-forwarded-for"], "10.0.0.9, 10.0.0.9");
    }
}

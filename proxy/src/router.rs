//! The router stage: where a routed HTTP request goes. [`HttpRoutes`] holds a listener's
//! routes (a builtin gateway listener's, or a sidecar listener's route table from kuma-cp's
//! MeshHTTPRoute) with the clusters they name, and decides for each request, on the `http`
//! form of its head, by `bearing-gateway`'s router: forward to a cluster (with the route's
//! timeout, retry policy, response header edits and mirror), or answer locally ([`Reply`]).
//!
//! Both codecs of the connection manager (`crate::hcm`) ask it, and carry out what it
//! decides; the router itself sends nothing, so it depends only on the clusters
//! (`crate::upstream`) it names.
//!
//! Kuma's gateway defaults applied here: the client's address is appended to
//! `x-forwarded-for`, and every response says `server: Kuma Gateway` ([`ResponseEdits`] for a
//! head relayed as bytes).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bearing_gateway::{Decision, Downstream, HeaderEdits, RouteAt, Router, SetCookies};
use bearing_proxy_config::ResponseFlags;
use bearing_proxy_config::{
    response_timeout, Compression, GatewayListener, HttpRoute, RetryPolicy, RouteAction, RouteTable,
};
use http::header::{HeaderName, HeaderValue};
use http::StatusCode;
use prometheus_client::metrics::counter::Counter;

use crate::rate_limit::RouteLimit;
use crate::stats::Stats;
use crate::upstream::ClusterRuntime;

/// Value of the `server` header on every gateway response (Kuma's gateway `serverName`).
pub(crate) const SERVER: &str = "Kuma Gateway";
pub(crate) const SERVER_NAME: HeaderValue = HeaderValue::from_static(SERVER);

/// The routes of a listener whose HTTP requests are routed (a gateway listener, or a sidecar
/// listener with a route table), with the clusters they name.
pub struct HttpRoutes {
    router: Arc<Router>,
    clusters: HashMap<String, Arc<ClusterRuntime>>,
    /// Every cluster the routes name is spoken to over HTTP/1.1, so HTTP/1.1 requests can
    /// take the byte path.
    http1_backends: bool,
    /// A route rewrites Host to the hostname of the endpoint chosen: known only once the
    /// request has an endpoint, which the hyper codec's attempt has (the byte codec, which
    /// writes the head before, hands such connections over).
    endpoint_host: bool,
    /// A gateway's defaults (Kuma's gateway Envoy config): `server: Kuma Gateway` on every
    /// response, the client's address appended to `x-forwarded-for`.
    gateway: bool,
    /// A gateway listener's gzip response compression (`GatewayListener::compression`),
    /// which the connection manager applies.
    compression: Option<Compression>,
    /// The rate limits of routes that have one (`HttpRoute::rate_limit`), with the headers
    /// of their refusals; empty (no lookup) when none has.
    limits: HashMap<RouteAt, (RouteLimit, HeaderEdits)>,
    /// The `route_kri` of routes that have one (`HttpRoute::route_kri`), which access log
    /// filters read; empty (no lookup) when none has.
    route_kris: HashMap<RouteAt, Box<str>>,
}

/// What a request's route asks beside where it goes: its rate limit, with the headers of
/// its refusal, and the `route_kri` its access logs may filter on.
#[derive(Clone, Copy, Default)]
pub(crate) struct RouteTerms<'r> {
    /// The route's rate limit; `None`: none.
    pub limit: Option<(&'r RouteLimit, &'r HeaderEdits)>,
    /// The route's `route_kri`; `None`: none.
    pub route_kri: Option<&'r str>,
}

impl HttpRoutes {
    /// A sidecar listener's route table, with the clusters it names and its routes' rate
    /// limits (counted in `stats` as `listener`'s).
    pub fn table(
        table: &RouteTable,
        clusters: &HashMap<String, Arc<ClusterRuntime>>,
        (stats, listener): (&Stats, &str),
    ) -> Result<HttpRoutes, String> {
        let router = Router::table(table)?;
        let routes = || table.virtual_hosts.iter().flat_map(|v| &v.routes);
        let mut out = HttpRoutes::new(
            router,
            (route_clusters(routes()), rewrites_to_endpoint(routes())),
            clusters,
            false,
        );
        if table.limits_rates() {
            let hosts = table.virtual_hosts.iter().map(|v| v.routes.as_slice());
            out.limit_routes(hosts, &stats.local_rate_limited(listener))?;
        }
        out.route_kris = table
            .virtual_hosts
            .iter()
            .enumerate()
            .flat_map(|(h, v)| {
                v.routes
                    .iter()
                    .enumerate()
                    .map(move |(r, route)| ((h, r), route))
            })
            .filter_map(|(at, route)| Some((at, route.route_kri.as_deref()?.into())))
            .collect();
        Ok(out)
    }

    /// A gateway listener's routes and TCP backends, with the clusters they name.
    /// Its routes' rate limits count refusals in what `limited` gives (asked only when a
    /// route has one).
    pub(crate) fn gateway(
        listener: &GatewayListener,
        clusters: &HashMap<String, Arc<ClusterRuntime>>,
        limited: impl FnOnce() -> Counter,
    ) -> Result<HttpRoutes, String> {
        let router = Router::gateway(listener)?;
        let tcp = listener
            .hosts
            .iter()
            .flat_map(|h| &h.tcp_backends)
            .map(|b| b.cluster.as_str());
        let routes = || listener.hosts.iter().flat_map(|h| &h.http_routes);
        let http = route_clusters(routes());
        let referenced = (tcp.chain(http), rewrites_to_endpoint(routes()));
        let mut routes = HttpRoutes::new(router, referenced, clusters, true);
        routes.compression = listener.compression.clone();
        if listener
            .hosts
            .iter()
            .any(|h| h.http_routes.iter().any(|r| r.rate_limit.is_some()))
        {
            let hosts = listener.hosts.iter().map(|h| h.http_routes.as_slice());
            routes.limit_routes(hosts, &limited())?;
        }
        Ok(routes)
    }

    /// Routes of `router` to the clusters it names (`referenced`, and whether a route
    /// rewrites Host to the endpoint's hostname), looked up in `clusters`.
    fn new<'a>(
        router: Router,
        (referenced, endpoint_host): (impl Iterator<Item = &'a str>, bool),
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
            endpoint_host,
            router: Arc::new(router),
            clusters: own,
            gateway,
            compression: None,
            limits: HashMap::new(),
            route_kris: HashMap::new(),
        }
    }

    /// Prepares the rate limits of the routes of `hosts` (each host's routes, in the
    /// router's order), counting refusals in `limited`.
    fn limit_routes<'a>(
        &mut self,
        hosts: impl Iterator<Item = &'a [HttpRoute]>,
        limited: &Counter,
    ) -> Result<(), String> {
        for (h, routes) in hosts.enumerate() {
            for (r, route) in routes.iter().enumerate() {
                if let Some(limit) = &route.rate_limit {
                    let headers = HeaderEdits::new(&limit.response_headers, &route.origin)?;
                    let runtime = RouteLimit::new(limit.clone(), limited.clone());
                    self.limits.insert((h, r), (runtime, headers));
                }
            }
        }
        Ok(())
    }

    /// What the route at `at` asks beside where the request goes.
    fn terms(&self, at: Option<RouteAt>) -> RouteTerms<'_> {
        let limit = match self.limits.is_empty() {
            true => None,
            false => at.and_then(|at| self.limits.get(&at)).map(|(l, h)| (l, h)),
        };
        let route_kri = match self.route_kris.is_empty() {
            true => None,
            false => at.and_then(|at| self.route_kris.get(&at)).map(|k| &**k),
        };
        RouteTerms { limit, route_kri }
    }

    /// Every cluster the routes send to.
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<ClusterRuntime>> {
        self.clusters.values()
    }

    /// The router, which also knows each host's certificate (a gateway's TLS picks by it).
    pub(crate) fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The backend cluster of the TCP or TLS host `host` of a gateway listener.
    pub(crate) fn tcp_cluster(&self, host: usize) -> Option<&Arc<ClusterRuntime>> {
        let backend = self.router.tcp_backend(host)?;
        self.clusters.get(&backend.cluster)
    }

    /// Whether every cluster the routes name is spoken to over HTTP/1.1, so HTTP/1.1
    /// requests can take the byte codec.
    pub(crate) fn http1_backends(&self) -> bool {
        self.http1_backends
    }

    /// Whether a route rewrites Host to the chosen endpoint's hostname, which only the hyper
    /// codec knows when it sends (the byte codec hands such connections over).
    pub(crate) fn endpoint_host(&self) -> bool {
        self.endpoint_host
    }

    /// The gzip response compression of a gateway listener.
    pub(crate) fn compression(&self) -> Option<&Compression> {
        self.compression.as_ref()
    }

    /// Whether these are a gateway's routes: its responses carry `server: Kuma Gateway`.
    pub(crate) fn is_gateway(&self) -> bool {
        self.gateway
    }

    /// What a response head relayed as bytes gets: the route's edits, and a gateway's
    /// `server`.
    pub(crate) fn edits<'r>(&'r self, route: Option<&'r HeaderEdits>) -> ResponseEdits<'r> {
        ResponseEdits {
            route,
            server: self.gateway,
            compression: self.compression.as_ref(),
        }
    }

    /// What a reply the proxy makes before a route is chosen gets: a gateway's `server`
    /// (Envoy's connection manager writes its `server_name` on it) and nothing else (no
    /// filter has run on the request); `None` off a gateway.
    pub(crate) fn local_reply_edits(&self) -> Option<ResponseEdits<'_>> {
        self.gateway.then_some(ResponseEdits {
            route: None,
            server: true,
            compression: None,
        })
    }
}

impl HttpRoutes {
    /// Routes a request for either codec: the router's decision with its clusters looked up,
    /// and, for a request a gateway forwards, the client's address appended to
    /// `x-forwarded-for`; with what the route taken asks beside ([`RouteTerms`]).
    pub(crate) fn decide(
        &self,
        parts: &mut http::request::Parts,
        downstream: Downstream,
    ) -> (Routing<'_>, RouteTerms<'_>) {
        let peer = downstream.peer;
        let decision = self.router.route(parts, downstream);
        let at = match &decision {
            Decision::Respond { route, .. } => *route,
            Decision::Forward { route, .. } => Some(*route),
        };
        (self.routing(decision, parts, peer), self.terms(at))
    }

    /// The router's `decision` with its clusters looked up.
    fn routing<'r>(
        &'r self,
        decision: Decision<'r>,
        parts: &mut http::request::Parts,
        peer: SocketAddr,
    ) -> Routing<'r> {
        match decision {
            Decision::Respond {
                status,
                location,
                body,
                response_headers,
                ..
            } => Routing::Reply(
                Reply {
                    status,
                    location,
                    message: body
                        .unwrap_or_else(|| status.canonical_reason().unwrap_or(""))
                        .to_string(),
                    overloaded: false,
                    // A 404 no route answered: no host or route matched.
                    flags: match (status, response_headers) {
                        (StatusCode::NOT_FOUND, None) => ResponseFlags::NO_ROUTE,
                        _ => ResponseFlags::default(),
                    },
                },
                response_headers,
            ),
            Decision::Forward {
                cluster,
                response_headers,
                mirror,
                origin,
                timeout,
                retry,
                idle_timeout,
                endpoint_host,
                hash,
                set_cookies,
                ..
            } => match self.clusters.get(cluster) {
                None => Routing::Reply(
                    Reply {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        location: None,
                        message: format!("{origin}: backend cluster {cluster} is not available"),
                        overloaded: false,
                        flags: ResponseFlags::NO_CLUSTER,
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
                        retry,
                        idle_timeout,
                        response_headers,
                        mirror: mirror.and_then(|m| self.clusters.get(m)),
                        endpoint_host,
                        hash,
                        // Envoy evaluates the hash policies (and generates cookies) only
                        // for a load balancer that hashes requests.
                        set_cookies: set_cookies
                            .filter(|_| target.config.load_balancer.is_consistent_hashing()),
                    }
                }
            },
        }
    }
}

/// A response the proxy writes itself: plain text, a `location` for a redirect, and Envoy's
/// `x-envoy-overloaded: true` when a circuit breaker refused the request. The router decides
/// some (404, redirects, direct responses, a missing backend), the connection manager the
/// rest (an upstream's failure).
pub struct Reply {
    pub status: StatusCode,
    pub location: Option<HeaderValue>,
    pub message: String,
    pub overloaded: bool,
    /// Envoy's response flags of the reply, for the access log (`NR`: no route, `NC`: no
    /// cluster).
    pub flags: ResponseFlags,
}

/// What routed HTTP changes in a response head it relays as bytes: the route's response
/// header filter, if a route answered, then a gateway's `server`; and the compression whose
/// `Vary` the byte codec adds (it serves only clients that do not accept gzip).
#[derive(Clone, Copy)]
pub(crate) struct ResponseEdits<'r> {
    route: Option<&'r HeaderEdits>,
    server: bool,
    compression: Option<&'r Compression>,
}

impl<'r> ResponseEdits<'r> {
    /// Only `headers` (a filter's reply on a sidecar).
    pub(crate) fn headers(headers: &'r HeaderEdits) -> ResponseEdits<'r> {
        ResponseEdits {
            route: Some(headers),
            server: false,
            compression: None,
        }
    }

    /// The gateway listener's compression, if it has one.
    pub(crate) fn compression(&self) -> Option<&'r Compression> {
        self.compression
    }

    /// Edits `head`, written by [`bearing_http1`], as the hyper codec edits a response's
    /// headers.
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
    }
}

/// What the router decides for one request, read by either codec.
pub(crate) enum Routing<'g> {
    /// Answer it: a 404, redirect, direct response or refusal of the router (with the
    /// answering route's response edits), or a 503 for a backend cluster that is not
    /// available.
    Reply(Reply, Option<&'g HeaderEdits>),
    /// Send it to `target` within `timeout` (the route's, else the cluster's; `None`: no
    /// limit) and again as the route's `retry` policy asks, a copy to `mirror`, and change
    /// the response's headers.
    Forward {
        target: &'g Arc<ClusterRuntime>,
        timeout: Option<Duration>,
        retry: Option<&'g RetryPolicy>,
        /// The route's stream idle timeout (zero: none; `None`: the listener's).
        idle_timeout: Option<Duration>,
        response_headers: &'g HeaderEdits,
        mirror: Option<&'g Arc<ClusterRuntime>>,
        /// Host becomes the chosen endpoint's hostname.
        endpoint_host: bool,
        /// The request's hash by its route's hash policies, for a consistent-hashing
        /// cluster (`None`: none).
        hash: Option<u64>,
        /// The cookies its hash policies generated, for the response from upstream (only
        /// where the cluster hashes requests).
        set_cookies: Option<SetCookies<'g>>,
    },
}

/// Whether one of `routes` rewrites Host to the hostname of the endpoint chosen.
fn rewrites_to_endpoint<'a>(mut routes: impl Iterator<Item = &'a HttpRoute>) -> bool {
    routes.any(|r| {
        matches!(&r.action, RouteAction::Forward { rewrite: Some(rw), .. } if rw.host_to_backend_hostname)
    })
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

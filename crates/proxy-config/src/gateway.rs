//! Builtin gateway listeners (Kuma's MeshGateway listeners with their MeshGatewayRoutes),
//! compiled: what a listener accepts, its virtual hosts and the routes of each, in the order
//! they are tried.

use std::collections::BTreeMap;

use serde::Serialize;

/// What a gateway listener speaks (MeshGateway `listeners[].protocol` and `tls.mode`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GatewayProtocol {
    /// Plain HTTP/1.1 and h2c; routes by Host header.
    Http,
    /// TLS terminated with the certificate of the host the SNI names, then HTTP (ALPN h2 and
    /// http/1.1).
    Https,
    /// Opaque bytes to the weighted TCP backends of the only host (`*`).
    Tcp,
    /// TLS terminated with the certificate of the host the SNI names, then bytes to that
    /// host's TCP backends.
    TlsTerminate,
    /// TLS not terminated: the ClientHello's SNI picks the host, whose TCP backends receive
    /// the untouched bytes.
    TlsPassthrough,
}

/// One MeshGateway listener.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GatewayListener {
    /// Protocol and TLS handling.
    pub protocol: GatewayProtocol,
    /// Virtual hosts, most specific first: exact names, then `*.` wildcards by length
    /// (longest first), then `*`. A request (Host header, or SNI for TLS) takes the first host
    /// that matches; none matching is a 404 (HTTP) or a refused connection (TCP, TLS).
    pub hosts: Vec<GatewayHost>,
    /// Listener tags (MeshGateway `listeners[].tags` plus the gateway's `kuma.io/service`).
    pub tags: BTreeMap<String, String>,
    /// Most connections open at once (`resources.connectionLimit`); further connections
    /// are closed at accept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_limit: Option<u32>,
    /// Cross-mesh listener (HTTP only): requires mesh mTLS from proxies of any mesh and
    /// presents the gateway's identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_mesh: Option<CrossMesh>,
}

/// Mesh mTLS of a cross-mesh listener.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CrossMesh {
    /// The gateway's mesh (a key of `ProxyConfig::mtls`), whose identity it presents.
    pub identity_mesh: String,
    /// CA certificates (PEM) of every mesh with mTLS: their proxies may call.
    pub client_ca_pems: Vec<String>,
}

/// A virtual host of a gateway listener.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GatewayHost {
    /// `foo.example.com`, `*.example.com` (any name ending in `.example.com`) or `*`.
    /// Lowercase; matched case-insensitively, ignoring a port in the Host header.
    pub hostname: String,
    /// HTTPS and TLS terminate: the certificate served when the SNI names this host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<GatewayCertificate>,
    /// HTTP and HTTPS: routes in precedence order; the first whose match holds serves the
    /// request. No match is a 404.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http_routes: Vec<HttpRoute>,
    /// TCP and TLS: the backends connections are spread over by weight.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tcp_backends: Vec<WeightedCluster>,
}

/// A certificate chain and its key (PEM), for one or more hostnames.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GatewayCertificate {
    /// Where it came from (`Secret/name`, `file /path`, `inline`), for logs and errors.
    pub origin: String,
    /// Leaf first, then intermediates.
    pub cert_chain_pem: String,
    /// Private key; never shown in `/config_dump`.
    #[serde(skip_serializing)]
    pub key_pem: String,
}

/// One HTTP route: a rule's match (a rule with several matches gives several routes) and what
/// to do with the requests it matches.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HttpRoute {
    /// Where it came from: `MeshGatewayRoute/<name>: conf.http.rules[i].matches[j]`.
    pub origin: String,
    /// What the request must look like (every given condition holds).
    pub matches: HttpMatch,
    /// Request header changes, applied before forwarding (or redirecting).
    #[serde(skip_serializing_if = "HeaderFilter::is_empty")]
    pub request_headers: HeaderFilter,
    /// Response header changes, applied to the backend's response.
    #[serde(skip_serializing_if = "HeaderFilter::is_empty")]
    pub response_headers: HeaderFilter,
    /// Forward or redirect.
    pub action: RouteAction,
    /// Copy of matching requests sent to another backend, its response ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
}

/// Conditions on a request; an empty match matches every request.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct HttpMatch {
    /// On the path (without the query).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// HTTP method, uppercase (`GET`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// On headers (names lowercase); all must hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// On query parameters; all must hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<QueryMatch>,
}

/// A path condition.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "match", content = "value")]
pub enum PathMatch {
    /// The whole path equals this.
    Exact(String),
    /// The path starts with this at a segment boundary (Kuma: `/api` matches `/api` and
    /// `/api/x`, not `/apix`).
    Prefix(String),
    /// The whole path matches this regular expression (RE2 syntax).
    Regex(String),
}

/// A header condition.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HeaderMatch {
    /// Header name, lowercase.
    pub name: String,
    /// What its value must be.
    pub value: ValueMatch,
}

/// A query parameter condition.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QueryMatch {
    /// Parameter name (case-sensitive).
    pub name: String,
    /// What its value must be (`Exact` or `Regex`).
    pub value: ValueMatch,
}

/// A condition on a header or query value.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "match", content = "value")]
pub enum ValueMatch {
    /// Equal to this.
    Exact(String),
    /// The whole value matches this regular expression (RE2 syntax).
    Regex(String),
    /// The header is not present.
    Absent,
    /// The header is present, with any value.
    Present,
}

/// Header changes (MeshGatewayRoute `requestHeader` / `responseHeader` filters).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct HeaderFilter {
    /// Replace (or create) these headers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<(String, String)>,
    /// Append these values (an existing header keeps its values).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<(String, String)>,
    /// Remove these headers (names lowercase).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderFilter {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// What a route does with a request.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RouteAction {
    /// Send it to one of the backends, picked by weight, after an optional rewrite.
    Forward {
        /// Backends; a weight-0 backend gets no traffic.
        backends: Vec<WeightedCluster>,
        /// Path or Host rewrite.
        #[serde(skip_serializing_if = "Option::is_none")]
        rewrite: Option<Rewrite>,
    },
    /// Answer with a redirect.
    Redirect(Redirect),
}

/// A request rewrite (MeshGatewayRoute `rewrite` filter).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Rewrite {
    /// New path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
    /// Host becomes the chosen backend's hostname (`WeightedCluster::hostname`), when it has
    /// one.
    pub host_to_backend_hostname: bool,
}

/// How a rewrite or redirect changes the path.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum PathRewrite {
    /// The whole path becomes this (the query is kept).
    ReplaceFull(String),
    /// The part the route's `Prefix` path match matched is replaced by this (Kuma: replacing
    /// `/api` by `/` turns `/api/x` into `/x`, never `//x`).
    ReplacePrefixMatch(String),
}

/// A redirect response (MeshGatewayRoute `redirect` filter); unset parts keep the request's.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Redirect {
    /// `http` or `https`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Host of the Location.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Port of the Location (omitted when it is the scheme's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
    /// Path change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
}

/// A copy of requests sent to another cluster (MeshGatewayRoute `mirror` filter).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Mirror {
    /// Cluster receiving the copies.
    pub cluster: String,
    /// Share of matching requests mirrored, 0 to 100.
    pub percentage: f64,
}

/// A backend of a route: a cluster and its share.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WeightedCluster {
    /// Cluster name (a key of `ProxyConfig::clusters`).
    pub cluster: String,
    /// Relative weight (Kuma's default is 1).
    pub weight: u32,
    /// Hostname for `host_to_backend_hostname` (an ExternalService's host); mesh services
    /// have none and keep the Host header, as Envoy's `auto_host_rewrite` does for them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

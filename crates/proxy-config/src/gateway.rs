//! Builtin gateway listeners (Kuma's MeshGateway listeners with their MeshGatewayRoutes),
//! compiled: what a listener accepts, its virtual hosts and the routes of each, in the order
//! they are tried (the routes themselves are in `routes.rs`, shared with sidecar route tables).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{HttpRoute, WeightedCluster};

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

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
    /// HTTPS, terminated TLS and cross-mesh: the versions, ciphers and curves every host's
    /// handshake allows (Envoy's `tls_params` of the listener's chains, one for all);
    /// `None`: TLS 1.2 and 1.3 with BoringSSL's lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_params: Option<crate::TlsParams>,
    /// HTTP and HTTPS: gzip compression of responses to clients that accept it (Envoy's
    /// compressor filter with its gzip library, which kuma-cp puts on every builtin gateway
    /// listener); `None`: responses go as the backend sent them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
}

/// Gzip response compression, as Envoy's compressor filter decides it: a response is
/// compressed when the request's `Accept-Encoding` prefers gzip, the response has no
/// `Content-Encoding`, its type is one of `content_types`, its `Content-Length` (if any) is at
/// least `min_content_length`, `Cache-Control` does not say `no-transform` and its status is
/// not one of `uncompressible_statuses`; every response that could be compressed whatever the
/// request says gets `Vary: Accept-Encoding`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Compression {
    /// Smallest `Content-Length` compressed (Envoy's `min_content_length`, 30 by default); a
    /// response of unknown length is compressed whatever its size.
    pub min_content_length: u64,
    /// The media types compressed (without parameters, compared case-insensitively); empty:
    /// Envoy's default list.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub content_types: Vec<String>,
    /// A response with an `ETag` is not compressed (kuma-cp sets it).
    pub disable_on_etag: bool,
    /// A compressed response's strong `ETag` becomes weak (`W/` prepended) instead of being
    /// removed (Envoy's `weaken_etag_on_compress`; it also compresses responses with an
    /// `ETag` when `disable_on_etag` is set).
    pub weaken_etag: bool,
    /// `Accept-Encoding` is removed from requests before they go upstream.
    pub remove_accept_encoding: bool,
    /// Statuses whose responses are never compressed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub uncompressible_statuses: Vec<u16>,
    /// zlib compression level, 1 (fastest) to 9 (smallest); Envoy's default is 6.
    pub level: u32,
    /// Base-two logarithm of the compressor's window, 9 to 15 (Envoy's default 12: 4 KiB).
    pub window_bits: u8,
    /// zlib memory level, 1 (least memory, slowest) to 9 (Envoy's default 5).
    pub memory_level: u8,
    /// zlib compression strategy.
    pub strategy: GzipStrategy,
    /// Bytes of compressed output produced at a time (Envoy's `chunk_size`, 4096 by default).
    pub chunk_size: u32,
}

impl Compression {
    /// Envoy's defaults for the compressor filter and its gzip library, with
    /// `disable_on_etag_header`: what kuma-cp configures on every builtin gateway listener.
    pub fn kuma_gateway() -> Compression {
        Compression {
            min_content_length: 30,
            content_types: Vec::new(),
            disable_on_etag: true,
            weaken_etag: false,
            remove_accept_encoding: false,
            uncompressible_statuses: Vec::new(),
            level: 6,
            window_bits: 12,
            memory_level: 5,
            strategy: GzipStrategy::Default,
            chunk_size: 4096,
        }
    }
}

/// zlib's compression strategies (Envoy's gzip `compression_strategy`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GzipStrategy {
    /// For most data.
    Default,
    /// For data of small values with a somewhat random distribution.
    Filtered,
    /// Huffman coding only, no string matching.
    HuffmanOnly,
    /// Matches limited to runs of one byte.
    Rle,
    /// Fixed Huffman codes only.
    Fixed,
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

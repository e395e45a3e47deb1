//! `ProxyConfig`, the one internal model of what a Bearing proxy serves.
//!
//! Every config source (the directory store, kuma-cp over xDS) produces exactly this; the runtime
//! reads nothing else. It is immutable once built and shared as `Arc<ProxyConfig>`, so a reload
//! swaps one pointer and connections keep the snapshot they started with.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;

mod access_log;
mod balance;
mod filters;
mod gateway;
mod health;
mod rbac;
mod retry;
mod routes;
pub use access_log::*;
pub use balance::*;
pub use filters::*;
pub use gateway::*;
pub use health::*;
pub use rbac::*;
pub use retry::*;
pub use routes::*;

/// Everything one proxy serves, as compiled from its config source.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProxyConfig {
    /// Content hash of this config (hex); equal configs have equal versions.
    pub version: String,
    /// Where the config came from, e.g. `directory store /etc/mesh`.
    pub source: String,
    /// Which proxy this is.
    pub identity: ProxyIdentity,
    /// Listeners, sorted by name.
    pub listeners: Vec<Listener>,
    /// Clusters by name.
    pub clusters: BTreeMap<String, Cluster>,
    /// Present when iptables redirects the workload's traffic to this proxy.
    pub transparent_proxy: Option<TransparentProxy>,
    /// Mesh hostnames the proxy's DNS server answers, sorted by name.
    pub dns: Vec<DnsRecord>,
    /// Mesh mTLS material by mesh: every mesh whose certificates this proxy presents.
    pub mtls: BTreeMap<String, MeshTls>,
    /// Kuma's readiness and Prometheus endpoints that kuma-dp and Envoy answer beside the
    /// mesh traffic, served by Bearing itself.
    #[serde(skip_serializing_if = "KumaEndpoints::is_empty")]
    pub kuma_endpoints: KumaEndpoints,
}

/// Kuma's endpoints for kubelet and Prometheus, as kuma-cp places them (the listeners
/// `kuma:envoy:admin` and `kuma:metrics:prometheus`, the cluster `kuma:readiness`).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct KumaEndpoints {
    /// Where `/ready` answers for kubelet probes (`kuma:envoy:admin`: the Dataplane's
    /// address and admin port); nothing else of the admin API is served there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<SocketAddr>,
    /// kuma-dp's readiness reporter (`kuma:readiness`, loopback and `--readiness-port`),
    /// which answers `/ready` the same way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness_reporter: Option<SocketAddr>,
    /// The Prometheus scrape endpoint (`kuma:metrics:prometheus`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusEndpoint>,
}

impl KumaEndpoints {
    /// Whether none is configured.
    pub fn is_empty(&self) -> bool {
        *self == KumaEndpoints::default()
    }
}

/// Where Prometheus scrapes this proxy's metrics (the Mesh's prometheus backend: the
/// Dataplane's address, port 5670 and path `/metrics` by default).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PrometheusEndpoint {
    /// Address and port.
    pub address: SocketAddr,
    /// Path prefix that answers with the metrics (Envoy's route `prefix` match).
    pub path: String,
    /// The application endpoints whose metrics are merged into the scrape, in the order
    /// kuma-cp listed them (`kumaSidecarConfiguration.metrics.aggregate` of the bootstrap, as
    /// kuma-dp's metrics hijacker scrapes them); empty: Bearing's own metrics only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub applications: Vec<MetricsApplication>,
    /// TLS the scrape is served over (the Mesh's prometheus backend with `tls`, or mesh mTLS
    /// without `skipMTLS`); `None`: plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<MetricsTls>,
    /// Scrapers served in plaintext even when `tls` is set: kuma-cp's chain for the
    /// Dataplane scraping itself (its own address, `activeMTLSBackend`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plaintext_sources: Vec<SourcePrefix>,
}

/// How the Prometheus endpoint terminates TLS.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MetricsTls {
    /// Mesh mTLS (`activeMTLSBackend`): this proxy's identity in the mesh (a key of
    /// `ProxyConfig::mtls`); the scraper must present a certificate of the same mesh.
    Mesh(String),
    /// A certificate and key read from files (`providedTLS`: kuma-dp's
    /// `--metrics-cert-path` / `--metrics-key-path`); no client certificate asked.
    Files {
        /// PEM certificate chain, leaf first.
        cert_path: String,
        /// PEM private key.
        key_path: String,
    },
}

/// An IP prefix a connection's source address is matched against.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct SourcePrefix {
    /// The network's address.
    pub address: IpAddr,
    /// Prefix length in bits.
    pub len: u8,
}

impl SourcePrefix {
    /// Whether `ip` is inside the prefix (same family; an IPv4-mapped IPv6 source counts as
    /// its IPv4 address, as a dual-stack socket reports it).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let len = u32::from(self.len.min(32));
                let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let len = u32::from(self.len.min(128));
                let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// One application metrics endpoint merged into the Prometheus scrape (an `aggregate` entry
/// of the Mesh's prometheus backend or the Dataplane's, as kuma-cp hands it to the proxy).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MetricsApplication {
    /// The entry's name, for logs.
    pub name: String,
    /// Host (an IP, or a name resolved at each scrape); the Dataplane's address unless the
    /// entry gives one.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Path of the application's metrics (`GET`, no query).
    pub path: String,
}

/// One mesh's certificate authority and the identities this proxy holds in it. The proxy
/// either issues its own leaf certificate from the CA and renews it before it expires (it has
/// the CA key), or presents a leaf issued ahead of time (`identity_pem`, no CA key here).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MeshTls {
    /// Mesh name (the SPIFFE trust domain: `spiffe://<mesh>/<service>`).
    pub mesh: String,
    /// The enabled mTLS backend it came from.
    pub backend: String,
    /// CA certificate (PEM): the only root trusted for mesh traffic.
    pub ca_cert_pem: String,
    /// CA private key (PEM), for issuing this proxy's leaf; never shown in `/config_dump`.
    /// `None` when the proxy uses a leaf issued ahead of time.
    #[serde(skip_serializing)]
    pub ca_key_pem: Option<String>,
    /// This proxy's leaf issued ahead of time (`bearing ca issue`): certificate chain and
    /// private key (PEM); never shown in `/config_dump`. It cannot be renewed here.
    #[serde(skip_serializing)]
    pub identity_pem: Option<String>,
    /// Services this proxy is (`spiffe://<mesh>/<service>` URI SANs of its leaf).
    pub services: Vec<String>,
    /// Plaintext is accepted next to mTLS on inbound listeners (Kuma's PERMISSIVE mode).
    pub permissive: bool,
    /// Lifetime of a leaf certificate (renewed when 80% of it has passed); for a leaf issued
    /// ahead of time, its own (notBefore to notAfter).
    #[serde(serialize_with = "millis::serialize")]
    pub leaf_lifetime: Duration,
    /// `identity_pem` comes from the control plane (SDS), which renews it: the expiry
    /// warnings name kuma-cp rather than `bearing ca issue`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub renewed_by_control_plane: bool,
    /// A MeshIdentity's trust (Kuma's MeshTrust, Envoy's SPIFFE certificate validator):
    /// trust domain → CA bundle (PEM). When set, a peer is trusted when its SPIFFE id's trust
    /// domain has a bundle its chain ends in (not by `ca_cert_pem`, which is then the bundle
    /// of this proxy's own trust domain), and this proxy's leaf carries its own SPIFFE id
    /// (not `spiffe://<mesh>/<service>`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub spiffe_trust: BTreeMap<String, String>,
    /// The prefix an inbound client's SPIFFE id must start with (Kuma's
    /// `spiffe://<trust domain>/`); `None`: `spiffe://<mesh>/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_prefix: Option<String>,
}

/// TLS a listener terminates: mesh mTLS with this proxy's identity in `mesh`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DownstreamTls {
    /// Mesh whose CA the client certificate must chain to (a key of `ProxyConfig::mtls`).
    pub mesh: String,
    /// The versions, ciphers and curves the handshake allows (kuma-cp's MeshTLS); `None`:
    /// the mesh server's own (TLS 1.2 and 1.3, BoringSSL's lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<TlsParams>,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.0.
    #[serde(rename = "TLSv1_0")]
    V1_0,
    /// TLS 1.1.
    #[serde(rename = "TLSv1_1")]
    V1_1,
    /// TLS 1.2.
    #[serde(rename = "TLSv1_2")]
    V1_2,
    /// TLS 1.3.
    #[serde(rename = "TLSv1_3")]
    V1_3,
}

/// What a TLS context allows, as Envoy builds one from `CommonTlsContext.tls_params`
/// (kuma-cp's MeshTLS): its defaults for the context's side already resolved, so the runtime
/// applies these as they are. A range whose minimum is above its maximum is kept: as in
/// Envoy, such a context then completes no handshake.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash)]
pub struct TlsParams {
    /// Lowest version negotiated.
    pub min_version: TlsVersion,
    /// Highest version negotiated.
    pub max_version: TlsVersion,
    /// The cipher list for TLS 1.2 and below, BoringSSL's syntax (`:`-separated, `[a|b]`
    /// groups of equal preference), applied strictly: TLS 1.3's suites are not affected.
    pub cipher_suites: String,
    /// The key exchange groups, `:`-separated.
    pub ecdh_curves: String,
}

/// How a listener that routes by SNI (zone ingress, zone egress) recognises a destination.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case", tag = "form")]
pub enum SniTarget {
    /// Kuma's tags form `service{k=v,mesh=m}`: a service of a mesh; the remaining tags
    /// narrow the endpoints (by `Endpoint::tags`).
    Service {
        /// Mesh name.
        mesh: String,
        /// `kuma.io/service` value.
        service: String,
    },
    /// Kuma's hashed resource form `<hash>.<name>.<port>.<mesh>.ms`: a MeshService port.
    MeshService {
        /// Mesh name.
        mesh: String,
        /// MeshService name.
        name: String,
        /// Its port.
        port: u16,
    },
    /// Kuma's hashed resource form `<hash>.<name>.<port>.<mesh>.mes`: a MeshExternalService
    /// port, which the zone egress serves.
    MeshExternalService {
        /// Mesh name.
        mesh: String,
        /// MeshExternalService name.
        name: String,
        /// Its port.
        port: u16,
    },
    /// Kuma's KRI form `sni.msvc.<mesh>.<zone>.<name>.<section>` (MADR 101), matched byte for
    /// byte: a MeshService port created in this zone.
    Kri {
        /// Mesh name.
        mesh: String,
        /// The whole SNI.
        sni: String,
    },
}

/// One destination of an SNI-routing listener.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SniRoute {
    /// What the ClientHello's SNI must name.
    pub target: SniTarget,
    /// Where the connection goes (with `http`, where requests go unless a route table
    /// decides).
    pub cluster: String,
    /// Terminate mesh mTLS first (zone egress to an ExternalService); otherwise the TLS bytes
    /// pass through untouched.
    pub terminate: Option<DownstreamTls>,
    /// HTTP served on the decrypted stream (kuma-cp's zone egress to an HTTP
    /// ExternalService: an HTTP connection manager behind the mTLS chain), only with
    /// `terminate`; `None`: the decrypted bytes are copied to `cluster`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<SniHttp>,
    /// Who may connect (Envoy's network `rbac` filter on the chain this SNI selects, kuma-cp's
    /// MeshTrafficPermission on a zone egress), decided once per connection: after the mTLS
    /// handshake with `terminate` (the client's certificate), else on the SNI alone (the
    /// bytes pass through: no certificate is seen); a refused connection is closed. `None`:
    /// no check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_rbac: Option<Rbac>,
}

/// The HTTP connection manager of an SNI route: requests read from the decrypted stream
/// (HTTP/1.1 or HTTP/2), routed as a sidecar listener's.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SniHttp {
    /// `Http`, `Http2` or `Grpc`, as a listener's protocol.
    pub protocol: Protocol,
    /// The route table deciding where each request goes; `None`: every request goes to the
    /// route's `cluster`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routes: Option<RouteTable>,
    /// Without `routes`: the retry policy of the one route (as `Listener::retry`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Without `routes`: the request header edits of the one route (as
    /// `Listener::request_headers`).
    #[serde(skip_serializing_if = "HeaderFilter::is_empty")]
    pub request_headers: HeaderFilter,
    /// HTTP filters (as `Listener::http_filters`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http_filters: Vec<HttpFilter>,
    /// The stream idle timeout (as `Listener::stream_idle_timeout`).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_millis::serialize"
    )]
    pub stream_idle_timeout: Option<Duration>,
    /// Who may send a request (as `Listener::http_rbac`), read of the mTLS connection the
    /// route terminates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_rbac: Option<Rbac>,
    /// The connection manager's downstream timeouts (as `Listener::downstream_timeouts`).
    #[serde(skip_serializing_if = "DownstreamHttpTimeouts::is_envoy_default")]
    pub downstream_timeouts: DownstreamHttpTimeouts,
}

/// What an HTTP connection manager allows its downstream clients (Envoy's
/// `HttpConnectionManager` `request_timeout`, `request_headers_timeout` and
/// `common_http_protocol_options.idle_timeout`; kuma-cp's MeshTimeout `http.requestTimeout`,
/// its gateway defaults and `idleTimeout`); `None`: no limit.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct DownstreamHttpTimeouts {
    /// A request not wholly received this long after its first byte, and not yet answered,
    /// gets 408 `request timeout` (Envoy's `request_timeout`).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_millis::serialize"
    )]
    pub request: Option<Duration>,
    /// A request head not complete this long after its first byte gets 408 `request header
    /// timeout` and the connection closes (Envoy's `request_headers_timeout`).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_millis::serialize"
    )]
    pub request_headers: Option<Duration>,
    /// A connection with no request in flight for this long is closed (HTTP/1.1) or sent
    /// GOAWAY (HTTP/2), as Envoy's connection manager `idle_timeout` (1 h when unset).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_millis::serialize"
    )]
    pub connection_idle: Option<Duration>,
}

impl DownstreamHttpTimeouts {
    /// Envoy's connection manager without any of them set: a connection idle for an hour
    /// is closed, nothing else is limited.
    pub const ENVOY_DEFAULT: DownstreamHttpTimeouts = DownstreamHttpTimeouts {
        request: None,
        request_headers: None,
        connection_idle: Some(Duration::from_secs(3600)),
    };

    /// Whether these are Envoy's defaults (left out of `/config_dump`).
    pub fn is_envoy_default(&self) -> bool {
        *self == DownstreamHttpTimeouts::ENVOY_DEFAULT
    }
}

/// Lifetimes of a cluster's upstream HTTP connections and streams; `None`: no limit.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct UpstreamHttpTimeouts {
    /// A pooled connection unused for this long is not used again, and closed.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_millis::serialize"
    )]
    pub idle: Option<Duration>,
    /// A connection open this long takes no further request, and closes once its
    /// exchange ends.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_millis::serialize"
    )]
    pub max_connection_duration: Option<Duration>,
    /// A request not answered whole this long after it was sent (each try) ends: 504
    /// `upstream max stream duration reached` before the response head, a reset after.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_millis::serialize"
    )]
    pub max_stream_duration: Option<Duration>,
}

impl UpstreamHttpTimeouts {
    /// Whether no limit is set (left out of `/config_dump`).
    pub fn is_none(&self) -> bool {
        *self == UpstreamHttpTimeouts::default()
    }
}

/// TLS a cluster originates towards its endpoints (hashed: the runtime keeps the TLS context
/// made from equal settings across reloads).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum UpstreamTls {
    /// Mesh mTLS: this proxy's certificate in `mesh`, SNI `sni`, and the server must present
    /// a SPIFFE id one of `identities` accepts.
    Mesh {
        /// Mesh name (a key of `ProxyConfig::mtls`).
        mesh: String,
        /// SNI sent, Kuma's tags form (`backend{mesh=default}`), which zone proxies route by.
        sni: String,
        /// The server identities accepted, as Envoy's `match_typed_subject_alt_names` of
        /// type URI: the server is accepted when any URI SAN of its certificate matches any of
        /// them (never empty). The directory store gives one, `spiffe://<mesh>/<service>`;
        /// kuma-cp under a MeshIdentity lists the workload's id and the legacy one.
        identities: Vec<SpiffeMatcher>,
        /// The CA the server chains to when it is another mesh's (a cross-mesh gateway);
        /// `None`: the CA of `mesh`.
        #[serde(skip_serializing_if = "Option::is_none")]
        server_ca_pem: Option<String>,
        /// Versions, ciphers and curves (kuma-cp's MeshTLS); `None`: the mesh client's own
        /// (TLS 1.3 only).
        #[serde(skip_serializing_if = "Option::is_none")]
        params: Option<TlsParams>,
    },
    /// TLS to a service outside the mesh (ExternalService `networking.tls`).
    External {
        /// SNI sent, and the name checked in `Secured` mode.
        server_name: String,
        /// CA bundle (PEM); the system roots when absent.
        ca_pem: Option<String>,
        /// Client certificate (PEM) to present, if any.
        client_cert_pem: Option<String>,
        /// Key of the client certificate; never shown in `/config_dump`.
        #[serde(skip_serializing)]
        client_key_pem: Option<String>,
        /// How much of the server certificate is checked.
        verification: Verification,
        /// Whether the server may renegotiate the session (TLS 1.2 and earlier).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        allow_renegotiation: bool,
        /// Versions, ciphers and curves (a MeshExternalService's `tls.version`); `None`:
        /// TLS 1.2 and 1.3 with BoringSSL's lists.
        #[serde(skip_serializing_if = "Option::is_none")]
        params: Option<TlsParams>,
    },
}

/// A SPIFFE id a mesh server may present (a URI SAN matcher of Envoy's
/// `match_typed_subject_alt_names`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum SpiffeMatcher {
    /// The id itself, byte for byte.
    Exact(String),
    /// Any id starting with this (`spiffe://<trust domain>/`, as Kuma matches its inbound
    /// clients).
    Prefix(String),
}

impl SpiffeMatcher {
    /// Whether `id` (a URI SAN of a certificate) is accepted.
    pub fn accepts(&self, id: &str) -> bool {
        match self {
            SpiffeMatcher::Exact(exact) => id == exact,
            SpiffeMatcher::Prefix(prefix) => id.starts_with(prefix.as_str()),
        }
    }

    /// The id or prefix matched.
    pub fn value(&self) -> &str {
        match self {
            SpiffeMatcher::Exact(v) | SpiffeMatcher::Prefix(v) => v,
        }
    }
}

/// The exact id, or the prefix followed by `*`, as errors and logs name what was expected.
impl std::fmt::Display for SpiffeMatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpiffeMatcher::Exact(id) => f.write_str(id),
            SpiffeMatcher::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// Server certificate checks for external TLS (Kuma's `verification.mode`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Hash)]
pub enum Verification {
    /// Chain to the CA and the server name.
    Secured,
    /// Chain only.
    SkipSan,
    /// Nothing (handshake signatures still checked).
    SkipAll,
}

/// One mesh hostname and the addresses its A and AAAA queries answer with.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DnsRecord {
    /// Lowercase DNS name without the trailing dot, e.g. `backend.mesh`.
    pub name: String,
    /// Its virtual IP, plus the IPv4-mapped IPv6 form when IPv6 is captured (as Kuma does).
    pub ips: Vec<IpAddr>,
}

/// Transparent proxying: the capture ports iptables redirects to, and what happens to
/// captured traffic that no listener claims.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TransparentProxy {
    /// Port receiving redirected outbound connections (Kuma: 15001), on every address.
    pub outbound_port: u16,
    /// Port receiving redirected inbound connections (Kuma: 15006), on every address.
    pub inbound_port: u16,
    /// Whether IPv6 is captured too (the capture ports are also bound on `[::]`).
    pub ipv6: bool,
    /// Outbound connections no listener claims go to their original destination (Mesh
    /// `networking.outbound.passthrough`, true by default); when false they are refused.
    pub outbound_passthrough: bool,
    /// File access logs of the connections passed through to their original destination,
    /// outbound (kuma-cp's `outbound:passthrough:*` listeners, a mesh-wide MeshAccessLog `to`)
    /// and inbound; empty: none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outbound_access_logs: Vec<AccessLog>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inbound_access_logs: Vec<AccessLog>,
}

impl ProxyConfig {
    /// The cluster a listener forwards to, if the config names one that exists.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.get(name)
    }

    /// FNV-1a over the serialized config (the version itself and the source left out):
    /// stable across runs and processes, so every proxy given the same config, from any
    /// source, reports the same version.
    pub fn content_version(&self) -> String {
        let text = serde_json::to_string(&(
            &self.identity,
            &self.listeners,
            &self.clusters,
            &self.transparent_proxy,
            &self.dns,
            &self.mtls,
            self.mtls
                .values()
                .map(|m| (&m.ca_key_pem, &m.identity_pem))
                .collect::<Vec<_>>(),
        ))
        .unwrap_or_default();
        // Appended only when set, so configs without them keep their versions.
        let endpoints = match self.kuma_endpoints.is_empty() {
            true => String::new(),
            false => serde_json::to_string(&self.kuma_endpoints).unwrap_or_default(),
        };
        let hash = text
            .bytes()
            .chain(endpoints.bytes())
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        format!("{hash:016x}")
    }
}

/// The proxy's own identity in the mesh.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProxyIdentity {
    /// Dataplane name.
    pub name: String,
    /// Mesh name.
    pub mesh: String,
    /// `dataplane`, `ingress` or `egress`.
    pub proxy_type: String,
    /// The resource's `networking.admin.port`: where kuma-dp would put the admin API (read
    /// once, at start-up, as Envoy's bootstrap is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_port: Option<u16>,
}

/// Which side of the workload a listener serves.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic from the mesh to the local application.
    Inbound,
    /// Traffic from the local application to the mesh.
    Outbound,
}

/// How a listener or cluster handles bytes, from the `kuma.io/protocol` tag.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Opaque bytes, copied both ways (also used for `kafka`).
    Tcp,
    /// HTTP/1.1 or HTTP/2 downstream, HTTP/1.1 upstream.
    Http,
    /// HTTP/2 both ways.
    Http2,
    /// gRPC: HTTP/2 both ways, no response timeout (streams may be long).
    Grpc,
}

impl Protocol {
    /// Parses a `kuma.io/protocol` value; unknown or missing values are TCP, as in Kuma.
    pub fn from_tag(value: Option<&str>) -> Protocol {
        match value {
            Some("http") => Protocol::Http,
            Some("http2") => Protocol::Http2,
            Some("grpc") => Protocol::Grpc,
            _ => Protocol::Tcp,
        }
    }

    /// Whether traffic is handled as HTTP requests (L7) rather than bytes.
    pub fn is_http(self) -> bool {
        self != Protocol::Tcp
    }

    /// The protocol several endpoints of one service agree on, as Kuma derives it:
    /// all equal gives that protocol, a mix of HTTP/1 and HTTP/2 gives `http`, otherwise `tcp`.
    pub fn common(protocols: impl IntoIterator<Item = Protocol>) -> Option<Protocol> {
        protocols.into_iter().fold(None, |acc, p| match acc {
            None => Some(p),
            Some(a) if a == p => Some(a),
            Some(a) if a.is_http() && p.is_http() => Some(Protocol::Http),
            Some(_) => Some(Protocol::Tcp),
        })
    }
}

/// A socket the proxy accepts connections on, and where they go.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Listener {
    /// Unique name, Kuma style: `inbound:10.0.0.1:8080`, `outbound:127.0.0.1:10001`.
    pub name: String,
    /// Address to bind.
    pub address: SocketAddr,
    /// Inbound or outbound.
    pub direction: Direction,
    /// L4 or L7 handling.
    pub protocol: Protocol,
    /// Cluster every connection or request goes to.
    pub cluster: String,
    /// Service this listener belongs to (`kuma.io/service`).
    pub service: String,
    /// Whether the listener has a socket of its own. With transparent proxying, listeners
    /// are virtual as in Kuma (`bind_to_port: false`): connections reach them through the
    /// capture ports by their original destination.
    pub bind: bool,
    /// Mesh mTLS terminated on this listener (sidecar inbounds of an mTLS mesh).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<DownstreamTls>,
    /// Zone ingress and egress: destinations by the SNI of the client's TLS ClientHello, read
    /// without terminating TLS. When present, `cluster` is unused and an SNI naming none of
    /// these is refused (so a zone proxy with no routes yet still listens and refuses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni_routes: Option<Vec<SniRoute>>,
    /// Builtin gateway listener: hosts and routes decide where each request or connection
    /// goes (`cluster` is unused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayListener>,
    /// Sidecar HTTP listener whose requests are routed (kuma-cp's MeshHTTPRoute): the route
    /// table decides where each request goes (`cluster` is unused). `None`: every request
    /// goes to `cluster`, with no routing cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routes: Option<RouteTable>,
    /// Sidecar TCP listener splitting connections over several clusters by weight
    /// (kuma-cp's MeshTCPRoute, Envoy's `tcp_proxy.weighted_clusters`; `cluster` is unused).
    /// Empty: every connection goes to `cluster`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tcp_backends: Vec<WeightedCluster>,
    /// An HTTP listener without routes (`cluster` takes every request): when a request is
    /// sent again (the retry policy of its one route, kuma-cp's MeshRetry); `None`: only a
    /// stale pooled connection's request is repeated. A route table's routes carry their own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// An HTTP listener without routes: the request header edits of its one route, with its
    /// virtual host's and route configuration's (kuma-cp's `x-kuma-tags`, added on an
    /// outbound for the callee's legacy FaultInjection and removed on an inbound). A route
    /// table's routes carry their own.
    #[serde(skip_serializing_if = "HeaderFilter::is_empty")]
    pub request_headers: HeaderFilter,
    /// TCP proxying (a TCP listener, a gateway's TCP and TLS hosts, a zone proxy's SNI
    /// routes): connection attempts made for one downstream connection, each to the endpoint
    /// the load balancer picks next (an endpoint again once every one was tried), before the
    /// downstream connection is closed (Envoy's `tcp_proxy.max_connect_attempts`, 1 when
    /// unset; kuma-cp's MeshRetry `tcp.maxConnectAttempt`), with no pause between them (Envoy
    /// without `backoff_options`).
    #[serde(skip_serializing_if = "Listener::one_attempt")]
    pub max_connect_attempts: u32,
    /// TCP proxying: a connection on which no byte moved either way for this long is closed
    /// on both sides (Envoy's `tcp_proxy.idle_timeout`: kuma-cp's MeshTimeout `idleTimeout`,
    /// 1 h outbound and 2 h inbound by default, 300 s on a gateway). `None`: never.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_millis::serialize"
    )]
    pub tcp_idle_timeout: Option<Duration>,
    /// HTTP: how long a request's stream may go without a byte moved either way before it
    /// ends (Envoy's connection manager `stream_idle_timeout`, overridden by a route's
    /// `idle_timeout`; kuma-cp's MeshTimeout `http.streamIdleTimeout`): waiting for the
    /// response head it gives 504 `stream timeout`, later the stream is reset. `None`: none.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_millis::serialize"
    )]
    pub stream_idle_timeout: Option<Duration>,
    /// HTTP: what the connection manager allows its clients (request, request head and
    /// connection idle timeouts); Envoy's defaults unless set.
    #[serde(skip_serializing_if = "DownstreamHttpTimeouts::is_envoy_default")]
    pub downstream_timeouts: DownstreamHttpTimeouts,
    /// Fail closed: a policy denies traffic to this inbound that Bearing cannot enforce per
    /// source (a MeshTrafficPermission `Deny`), so every connection is refused. Names the
    /// policy (`MeshTrafficPermission/<name>`) for logs and `/config_dump`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny_all: Option<String>,
    /// Who may connect (Envoy's network `rbac` filter, kuma-cp's MeshTrafficPermission on a
    /// TCP inbound): decided once per connection, after the transport stage (mesh mTLS);
    /// a refused connection is closed. `None`: no check. On a listener terminating mesh
    /// mTLS, this and `http_rbac` check its mTLS connections only: kuma-cp puts them on the
    /// mTLS chain, and PERMISSIVE plaintext passes unchecked, as in Envoy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_rbac: Option<Rbac>,
    /// Who may send a request (Envoy's HTTP `rbac` filter, kuma-cp's MeshTrafficPermission on
    /// an HTTP inbound): decided per request before routing; a refused request gets 403
    /// `RBAC: access denied`. `None`: no check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_rbac: Option<Rbac>,
    /// HTTP filters after RBAC (kuma-cp's MeshFaultInjection and MeshRateLimit), in the
    /// connection manager's order, run per request once its route is known.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http_filters: Vec<HttpFilter>,
    /// New connections over this bucket are closed at once (Envoy's network
    /// `local_ratelimit` filter, kuma-cp's MeshRateLimit `local.tcp`), after the transport
    /// stage and network RBAC. `None`: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_rate_limit: Option<TokenBucket>,
    /// Every connection is answered with these bytes and closed, without reading what the
    /// client sends (Envoy's `direct_response` network filter: kuma-cp's zone ingress with no
    /// destinations answers its identity); empty: closed at once (a filter chain without
    /// filters, kuma-cp's outbound of a service without a route). `cluster` is unused.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "lossy_text")]
    pub direct_response: Option<Vec<u8>>,
    /// HTTP/2 flow-control windows offered to downstream clients (HTTP listeners).
    #[serde(skip_serializing_if = "Http2Windows::is_default")]
    pub http2_windows: Http2Windows,
    /// File access logs (kuma-cp's MeshAccessLog and TrafficLog): a line per request of an
    /// HTTP listener, per connection of a TCP one. Empty: nothing is logged, at no cost.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub access_logs: Vec<AccessLog>,
}

/// Bytes shown as text (invalid UTF-8 replaced) in `/config_dump`.
fn lossy_text<S: serde::Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match bytes {
        Some(b) => s.serialize_str(&String::from_utf8_lossy(b)),
        None => s.serialize_none(),
    }
}

impl Listener {
    /// A listener bound to `address` with nothing decided yet: no cluster or service, a
    /// socket of its own, no TLS, SNI routes, gateway, route table or TCP split, one connect
    /// attempt; callers set what applies.
    pub fn new(
        name: impl Into<String>,
        address: SocketAddr,
        direction: Direction,
        protocol: Protocol,
    ) -> Listener {
        Listener {
            name: name.into(),
            address,
            direction,
            protocol,
            cluster: String::new(),
            service: String::new(),
            bind: true,
            tls: None,
            sni_routes: None,
            gateway: None,
            routes: None,
            tcp_backends: Vec::new(),
            retry: None,
            request_headers: HeaderFilter::default(),
            max_connect_attempts: 1,
            tcp_idle_timeout: None,
            stream_idle_timeout: None,
            downstream_timeouts: DownstreamHttpTimeouts::ENVOY_DEFAULT,
            deny_all: None,
            network_rbac: None,
            http_rbac: None,
            http_filters: Vec::new(),
            connection_rate_limit: None,
            direct_response: None,
            http2_windows: Http2Windows::default(),
            access_logs: Vec::new(),
        }
    }

    /// Whether a TCP proxy's connection takes one attempt (Envoy's default), which
    /// `/config_dump` and the version leave unsaid.
    fn one_attempt(attempts: &u32) -> bool {
        *attempts == 1
    }
}

/// A set of interchangeable endpoints.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Cluster {
    /// Unique name: `localhost:<port>` for the local application, the service name for outbounds.
    pub name: String,
    /// Protocol spoken to the endpoints.
    pub protocol: Protocol,
    /// Endpoints, in order of priority (`Endpoint::priority`, the highest first, the order
    /// given kept within a level); load balanced by `load_balancer` over the level that
    /// takes the traffic; a further attempt after one refuses the connection goes to the next (HTTP
    /// fail-over, a TCP proxy's `max_connect_attempts`).
    pub endpoints: Vec<Endpoint>,
    /// Limit for establishing one upstream connection.
    #[serde(serialize_with = "millis::serialize")]
    pub connect_timeout: Duration,
    /// Limit for receiving the response headers of an HTTP request (`None`: no limit).
    #[serde(serialize_with = "opt_millis::serialize")]
    pub request_timeout: Option<Duration>,
    /// TLS originated towards the endpoints, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// How much of the upstream one cluster may hold at once (Envoy's defaults until Kuma's
    /// policies set them).
    pub circuit_breakers: CircuitBreakers,
    /// HTTP/2 flow-control windows offered to the endpoints (HTTP/2 clusters).
    #[serde(skip_serializing_if = "Http2Windows::is_default")]
    pub http2_windows: Http2Windows,
    /// Endpoints named by hostname, resolved while the proxy runs (Envoy's STRICT_DNS and
    /// LOGICAL_DNS clusters); their addresses join `endpoints`. `None`: `endpoints` is all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsEndpoints>,
    /// How long upstream HTTP connections and streams may last (Envoy's cluster
    /// `HttpProtocolOptions.common_http_protocol_options`; kuma-cp's MeshTimeout
    /// `idleTimeout`, `http.maxConnectionDuration`, `http.maxStreamDuration`).
    #[serde(skip_serializing_if = "UpstreamHttpTimeouts::is_none")]
    pub http_timeouts: UpstreamHttpTimeouts,
    /// Per-endpoint transport (Envoy's `transport_socket_matches`): an endpoint whose
    /// `tls_match` names one of these connects with its TLS (or plaintext) instead of `tls`,
    /// so one cluster may mix TLS and plaintext endpoints (an ExternalService's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls_matches: Vec<TlsMatch>,
    /// How the endpoints' health is judged (active health checks, outlier detection) and the
    /// panic threshold; without either signal every endpoint is healthy.
    #[serde(skip_serializing_if = "EndpointHealth::is_default")]
    pub health: EndpointHealth,
    /// How the endpoint of each connection or request is picked among those serving
    /// (kuma-cp's MeshLoadBalancingStrategy; round robin unless set).
    #[serde(skip_serializing_if = "LoadBalancer::is_round_robin")]
    pub load_balancer: LoadBalancer,
}

/// A transport an endpoint may select instead of its cluster's `tls`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash)]
pub struct TlsMatch {
    /// The name endpoints select it by (`Endpoint::tls_match`).
    pub name: String,
    /// TLS originated towards the endpoints selecting it; `None`: plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
}

impl Cluster {
    /// The transport of an endpoint selecting `tls_match`: its match's TLS, else (no match
    /// selected, or one the cluster does not have) the cluster's `tls`.
    pub fn tls_of(&self, tls_match: Option<&str>) -> Option<&UpstreamTls> {
        match tls_match.and_then(|name| self.tls_matches.iter().find(|m| m.name == name)) {
            Some(m) => m.tls.as_ref(),
            None => self.tls.as_ref(),
        }
    }
}

/// HTTP/2 flow-control windows a side offers its peer (Envoy's `Http2ProtocolOptions`
/// `initial_stream_window_size` / `initial_connection_window_size`): how many bytes the peer
/// may send before this side acknowledges them. `None`: the HTTP/2 stack's own default.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq, Hash)]
pub struct Http2Windows {
    /// The window of each stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<u32>,
    /// The window of the whole connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<u32>,
}

impl Http2Windows {
    /// Whether neither window is set (the stack's defaults apply).
    pub fn is_default(&self) -> bool {
        *self == Http2Windows::default()
    }
}

/// A cluster's endpoints given by hostname and port, and how they are resolved: off the hot
/// path, again every `refresh_rate` (or at the answer's TTL), a failed lookup keeping the last
/// addresses, as Envoy's DNS clusters do.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash)]
pub struct DnsEndpoints {
    /// What the addresses of a hostname become.
    pub discovery: DnsDiscovery,
    /// The hostnames, in the order the cluster lists them.
    pub hosts: Vec<HostEndpoint>,
    /// How often each hostname is looked up again (Envoy's `dns_refresh_rate`, 5 s by default);
    /// also the wait after a failed lookup.
    #[serde(serialize_with = "millis::serialize")]
    pub refresh_rate: Duration,
    /// Look up again when the answer's TTL ends instead (Envoy's `respect_dns_ttl`; an answer
    /// with TTL 0 falls back to `refresh_rate`).
    pub respect_ttl: bool,
    /// Which address families are asked for.
    pub lookup_family: DnsLookupFamily,
}

impl DnsEndpoints {
    /// Envoy's default `dns_refresh_rate`.
    pub const DEFAULT_REFRESH_RATE: Duration = Duration::from_secs(5);
}

/// Envoy's DNS cluster types.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum DnsDiscovery {
    /// STRICT_DNS: every address a hostname resolves to is an endpoint.
    Strict,
    /// LOGICAL_DNS: one hostname, and only the first address it resolves to is connected to.
    Logical,
}

/// Envoy's `dns_lookup_family`: the record types asked for and which answer is used.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum DnsLookupFamily {
    /// AAAA, and A only when there is no AAAA answer (Envoy's default).
    Auto,
    /// A only.
    V4Only,
    /// AAAA only.
    V6Only,
    /// A, and AAAA only when there is no A answer.
    V4Preferred,
    /// A and AAAA, every address of both.
    All,
}

/// The largest sum of its endpoints' weights a priority level balanced by weighted round
/// robin takes: the runtime keeps that level's EDF schedule as one entry per unit of weight.
pub const MAX_ROUND_ROBIN_WEIGHT: u64 = 1 << 16;

/// One endpoint named by hostname.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash)]
pub struct HostEndpoint {
    /// The name looked up (as given: a relative name goes through resolv.conf's search list).
    pub hostname: String,
    /// Port of every address it resolves to.
    pub port: u16,
    /// Where it comes from, for logs and `/config_dump` (as `Endpoint::origin`).
    pub origin: String,
    /// Tags every resolved endpoint carries (as `Endpoint::tags`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// The transport every resolved endpoint selects (as `Endpoint::tls_match`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_match: Option<String>,
    /// The priority level of every resolved endpoint (as `Endpoint::priority`).
    #[serde(skip_serializing_if = "is_zero")]
    pub priority: u32,
}

impl HostEndpoint {
    /// The endpoint of one address `ip` this hostname resolved to; its hostname is the name
    /// looked up (as Envoy's DNS clusters name their hosts).
    pub fn endpoint(&self, ip: IpAddr) -> Endpoint {
        Endpoint {
            address: SocketAddr::new(ip, self.port),
            origin: self.origin.clone(),
            tags: self.tags.clone(),
            hostname: Some(self.hostname.clone()),
            tls_match: self.tls_match.clone(),
            priority: self.priority,
            event_host: None,
            // Weights differing among a DNS cluster's hosts, and several weighted localities
            // in one, are refused by the translation.
            weight: 1,
            locality: None,
        }
    }
}

/// A cluster's circuit-breaking thresholds, counted across every worker, as Envoy's
/// `circuit_breakers.thresholds` of the default priority. Beyond them a request gets a 503
/// (`x-envoy-overloaded: true`) and a TCP connection is closed, instead of the proxy opening
/// ever more upstream connections.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct CircuitBreakers {
    /// Upstream connections open at once.
    pub max_connections: u32,
    /// Requests waiting for a connection at once (HTTP/1: while `max_connections` are open).
    pub max_pending_requests: u32,
    /// Requests in flight at once on the cluster's connections (mostly HTTP/2 streams).
    pub max_requests: u32,
    /// Further attempts (another endpoint, a repeated request) under way at once.
    pub max_retries: u32,
    /// HTTP connection pools (one per worker and endpoint, alive while it has a connection)
    /// at once; `None`: unlimited (Envoy's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connection_pools: Option<u32>,
}

impl Default for CircuitBreakers {
    /// Envoy's defaults, which Kuma leaves in place unless a policy sets them.
    fn default() -> Self {
        CircuitBreakers {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            max_connection_pools: None,
        }
    }
}

/// One upstream address.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Address to connect to.
    pub address: SocketAddr,
    /// Dataplane (or `local application`) serving it, for logs and `/config_dump`.
    pub origin: String,
    /// Tags of the inbound it serves (its `envoy.lb` text metadata from xDS): what an SNI's
    /// tags select among endpoints by (zone ingress), a retry's `omit_host_metadata`
    /// predicate rejects, and a `hash_key` for consistent hashing.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// The endpoint's hostname (Envoy's host name: an ExternalService's host, the name a DNS
    /// endpoint was resolved from): a request whose route rewrites Host to the backend's
    /// hostname (`Rewrite::host_to_backend_hostname`, Envoy's `auto_host_rewrite`) sent to
    /// this endpoint gets it. `None`: the Host header is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The cluster's transport this endpoint connects with (a `Cluster::tls_matches` name);
    /// `None`: the cluster's `tls`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_match: Option<String>,
    /// Envoy's priority level (`LocalityLbEndpoints.priority`, 0 the highest): traffic goes to
    /// the highest level that has endpoints; lower levels are the fail-over (the runtime's
    /// `priority` module states the rule).
    #[serde(skip_serializing_if = "is_zero")]
    pub priority: u32,
    /// Its metadata and locality as a health check event names the host; kept only on a
    /// cluster whose health check writes an event log (`HealthCheck::event_log`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_host: Option<EventHost>,
    /// Envoy's `LbEndpoint.load_balancing_weight` (1 or more; 1 when unset): the endpoint's
    /// share of its level's traffic under round robin, ring hash and Maglev (kuma-cp weighs an
    /// endpoint reached through another zone's ingress by that zone's instance count).
    #[serde(skip_serializing_if = "is_one")]
    pub weight: u32,
    /// The weighted locality it belongs to, when the cluster balances across localities
    /// (Envoy's `locality_weighted_lb_config`); `None` otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality: Option<LocalityWeight>,
}

/// An endpoint's locality under locality-weighted balancing: which `LocalityLbEndpoints` of
/// the assignment it came from, that locality's `load_balancing_weight`, and its place in
/// Envoy's order of its level's localities.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Hash)]
pub struct LocalityWeight {
    /// The locality's index in the ClusterLoadAssignment's `endpoints`.
    pub index: u32,
    /// Its weight (1 or more).
    pub weight: u32,
    /// Its place among its level's localities as Envoy orders them (by name: region, zone,
    /// sub-zone), which orders the hosts of a ring or table.
    pub order: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

mod millis {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

mod opt_millis {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_u64(d.as_millis() as u64),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source prefix matches its network only, in its family (an IPv4-mapped source as
    /// IPv4); /0 matches every address of the family, /32 one.
    #[test]
    fn source_prefixes_match_their_network() {
        let prefix = |a: &str, len| SourcePrefix {
            address: a.parse().unwrap(),
            len,
        };
        let ip = |a: &str| a.parse::<IpAddr>().unwrap();
        assert!(prefix("192.168.0.1", 32).contains(ip("192.168.0.1")));
        assert!(!prefix("192.168.0.1", 32).contains(ip("192.168.0.2")));
        assert!(prefix("192.168.0.1", 32).contains(ip("::ffff:192.168.0.1")));
        assert!(prefix("10.0.0.0", 8).contains(ip("10.255.0.1")));
        assert!(prefix("0.0.0.0", 0).contains(ip("8.8.8.8")));
        assert!(!prefix("0.0.0.0", 0).contains(ip("fd00::1")));
        assert!(prefix("fd00::", 64).contains(ip("fd00::5")));
        assert!(!prefix("fd00::", 64).contains(ip("fd01::5")));
        assert!(prefix("::", 0).contains(ip("fd01::5")));
    }

    #[test]
    fn common_protocol_follows_kuma() {
        use Protocol::*;
        assert_eq!(Protocol::common([Http, Http]), Some(Http));
        assert_eq!(Protocol::common([Http, Http2]), Some(Http));
        assert_eq!(Protocol::common([Grpc, Grpc]), Some(Grpc));
        assert_eq!(Protocol::common([Http, Tcp]), Some(Tcp));
        assert_eq!(Protocol::common([]), None);
        assert_eq!(Protocol::from_tag(Some("kafka")), Tcp);
    }
}

//! Envoy resources (as kuma-cp sends them) translated into Bearing's `ProxyConfig`.
//!
//! What today's model expresses is translated faithfully: sidecar inbound and outbound
//! listeners (TCP proxy to a cluster or weighted clusters, or an HTTP connection manager with
//! its inline route table, `routes.rs`), mesh mTLS from SDS secrets, the transparent-proxy capture listeners, clusters
//! (STATIC, EDS, STRICT_DNS and LOGICAL_DNS, `dns_cluster.rs`) with their endpoints, timeouts, circuit breakers
//! and upstream TLS, zone ingress/egress SNI routes, builtin gateway listeners with their
//! routes over RDS (`gateway.rs`) and Kuma's DNS table. Kuma's plumbing that
//! Bearing serves itself (admin `/ready`, readiness, Prometheus metrics) is recognised by name
//! and consumed. Everything else is a [`Nack`] naming the resource and the field path (the
//! guard in `fields.rs` makes sure no set field is passed over).

use crate::access_log;
use crate::balance;
use crate::decode::{
    CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION, RUNTIME, SECRET,
};
use crate::fields::{self, Unhandled, POLICY_NOT_ENFORCED};
use crate::http_filters;
use crate::naming::{self, Role, CAPTURE_INBOUND, CAPTURE_OUTBOUND};
use crate::rbac;
use crate::routes::{self, ClusterTimeout, HttpRouting, Reached, DEFAULT_ROUTE_TIMEOUT};
use bearing_proxy_config::{
    AccessLog, CircuitBreakers, Cluster, Direction, DnsRecord, DownstreamHttpTimeouts,
    DownstreamTls, Endpoint, HeaderFilter, HostEndpoint, Http2Windows, HttpFilter, KumaEndpoints,
    Listener, LoadBalancer, LocalityWeight, MeshTls, MetricsTls, PrometheusEndpoint, Protocol,
    ProxyConfig, ProxyIdentity, Rbac, RetryPolicy, RouteTable, SniHttp, SniRoute, SniTarget,
    SourcePrefix, SpiffeMatcher, TlsMatch, TokenBucket, TransparentProxy, UpstreamHttpTimeouts,
    UpstreamTls, Verification, WeightedCluster,
};
use envoy_types::pb::envoy::config::cluster::v3 as cluster_pb;
use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint_pb;
use envoy_types::pb::envoy::config::listener::v3 as listener_pb;
use envoy_types::pb::envoy::config::route::v3 as route_pb;
use envoy_types::pb::envoy::extensions::filters::network::direct_response::v3 as direct_pb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp_pb;
use envoy_types::pb::envoy::extensions::filters::udp::dns_filter::v3 as dns_pb;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls_pb;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http_pb;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern as StringPattern;
use envoy_types::pb::envoy::service::runtime::v3 as runtime_pb;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, Struct};
use prost::Message;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Envoy's default connect timeout, used when a cluster sets none.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Kuma's Prometheus scrape listener, routed to kuma-dp's metrics hijacker.
const PROMETHEUS_LISTENER: &str = "kuma:metrics:prometheus";
/// The cluster of kuma-dp's metrics hijacker (a Unix socket kuma-dp serves).
const HIJACKER_CLUSTER: &str = "kuma:metrics:hijacker";
/// Clusters behind Kuma's plumbing listeners, which Bearing answers itself (in either of
/// Kuma's namings): Envoy's admin API (kuma-cp's TLS chain, not served), the readiness
/// reporter (its address is read) and the metrics hijacker.
const PLUMBING_CLUSTERS: [&str; 5] = [
    naming::ADMIN.legacy,
    naming::ADMIN.unified,
    naming::READINESS.legacy,
    naming::READINESS.unified,
    HIJACKER_CLUSTER,
];
/// Kuma's cluster for inbound traffic to a port no inbound serves when passthrough is off.
const NO_DESTINATION_CLUSTER: &str = "self_transparentproxy_no_destination_inbound";
/// The SDS secret naming the system's CA roots (kuma-dp's `systemCaPath`).
const SYSTEM_TRUST_BUNDLE: &str = "system_trust_bundle";

/// One resource Bearing cannot serve, and why: the detail of a NACK.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Nack {
    /// The resource's type URL.
    pub type_url: String,
    /// The resource's name.
    pub resource: String,
    /// The field path, e.g. `listeners["inbound:10.0.0.1:8080"].filter_chains[0].filters[0]
    /// .typed_config(envoy.extensions.filters.network.rbac.v3.RBAC)`.
    pub field: String,
    /// Why it is refused.
    pub reason: String,
    /// The resource names a Secret or a Cluster that has not arrived (yet), or no longer is
    /// there. Envoy keeps such a listener or cluster warming (Secrets) or serves it failing
    /// (Clusters) rather than refusing the update, and kuma-cp pushes Secrets after Listeners,
    /// a new Cluster before the Listener using it and a Listener's removal after its Cluster's,
    /// so a state whose every Nack is awaiting is waited on, not NACKed.
    pub awaiting: bool,
}

impl fmt::Display for Nack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Which proxy the resources are for (from the bootstrap's node).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    /// Dataplane name.
    pub name: String,
    /// Mesh name.
    pub mesh: String,
    /// `dataplane`, `ingress`, `egress` or `gateway`.
    pub proxy_type: String,
    /// Where the config came from, for `ProxyConfig::source`.
    pub source: String,
}

/// The Envoy resources of one proxy, typed, by name.
#[derive(Debug, Clone, Default)]
pub struct ResourceSet {
    /// LDS.
    pub listeners: BTreeMap<String, listener_pb::Listener>,
    /// CDS.
    pub clusters: BTreeMap<String, cluster_pb::Cluster>,
    /// EDS, by cluster name.
    pub endpoints: BTreeMap<String, endpoint_pb::ClusterLoadAssignment>,
    /// SDS.
    pub secrets: BTreeMap<String, tls_pb::Secret>,
    /// RDS (builtin gateways).
    pub routes: BTreeMap<String, route_pb::RouteConfiguration>,
    /// RTDS (Kuma's `gateway.listeners` layer: gateway connection limits).
    pub runtimes: BTreeMap<String, runtime_pb::Runtime>,
}

impl ResourceSet {
    /// Adds one resource as xDS carries it (an `Any`'s type URL and bytes, borrowed so that
    /// neither protobuf crate's `Any` is copied); a type Bearing does not subscribe to or
    /// bytes that do not decode are a NACK.
    pub fn insert(&mut self, name: &str, type_url: &str, bytes: &[u8]) -> Result<(), Nack> {
        let short = type_url.rsplit('.').next().unwrap_or(type_url);
        let nack = |reason: String| Nack {
            type_url: type_url.to_string(),
            resource: name.to_string(),
            field: format!("{short}[{name:?}]"),
            reason,
            awaiting: false,
        };
        let decoded = match type_url {
            LISTENER => listener_pb::Listener::decode(bytes)
                .map(|r| self.listeners.insert(name.to_string(), r).map(drop)),
            CLUSTER => cluster_pb::Cluster::decode(bytes)
                .map(|r| self.clusters.insert(name.to_string(), r).map(drop)),
            CLUSTER_LOAD_ASSIGNMENT => endpoint_pb::ClusterLoadAssignment::decode(bytes)
                .map(|r| self.endpoints.insert(name.to_string(), r).map(drop)),
            SECRET => tls_pb::Secret::decode(bytes)
                .map(|r| self.secrets.insert(name.to_string(), r).map(drop)),
            ROUTE_CONFIGURATION => route_pb::RouteConfiguration::decode(bytes)
                .map(|r| self.routes.insert(name.to_string(), r).map(drop)),
            RUNTIME => runtime_pb::Runtime::decode(bytes)
                .map(|r| self.runtimes.insert(name.to_string(), r).map(drop)),
            other => {
                return Err(nack(format!(
                    "resource type {other} is not used by Bearing"
                )))
            }
        };
        decoded
            .map(drop)
            .map_err(|e| nack(format!("does not decode: {e}")))
    }

    /// Replaces every resource of `type_url` with `resources` (name, bytes), as a
    /// State-of-the-World response replaces its type's set; the others are kept. Returns a
    /// NACK per resource that does not decode (see [`ResourceSet::insert`]).
    pub fn replace_type<'a>(
        &mut self,
        type_url: &str,
        resources: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Vec<Nack> {
        match type_url {
            LISTENER => self.listeners.clear(),
            CLUSTER => self.clusters.clear(),
            CLUSTER_LOAD_ASSIGNMENT => self.endpoints.clear(),
            SECRET => self.secrets.clear(),
            ROUTE_CONFIGURATION => self.routes.clear(),
            RUNTIME => self.runtimes.clear(),
            _ => {}
        }
        resources
            .into_iter()
            .filter_map(|(name, bytes)| self.insert(name, type_url, bytes).err())
            .collect()
    }
}

/// Translates a proxy's Envoy resources into its `ProxyConfig`, or every reason it cannot.
pub fn translate(resources: &ResourceSet, node: &NodeInfo) -> Result<ProxyConfig, Vec<Nack>> {
    let mut t = Translator {
        set: resources,
        node_mesh: &node.mesh,
        nacks: Vec::new(),
        listeners: Vec::new(),
        clusters: BTreeMap::new(),
        routed: BTreeMap::new(),
        direct: Vec::new(),
        meshes: BTreeSet::new(),
        mesh_secrets: BTreeMap::new(),
        permissive: BTreeSet::new(),
        dns: Vec::new(),
        kuma_endpoints: KumaEndpoints::default(),
        connection_limits: BTreeMap::new(),
        connect_attempts: BTreeMap::new(),
        tcp_idle: BTreeMap::new(),
        checked_tls_params: tls_params::Checked::default(),
    };
    t.connection_limits = t.runtime_limits();
    t.unique_addresses();
    let transparent_proxy = t.capture();
    let consumed_clusters = t.consumed_clusters(transparent_proxy.is_some());
    for (name, listener) in &resources.listeners {
        t.listener(name, listener);
    }
    let direct = std::mem::take(&mut t.direct);
    for (listener, address, original) in &direct {
        if let Some(cluster) = resources.clusters.get(original) {
            t.cluster(listener, &direct_cluster(cluster, listener, *address));
        }
    }
    let direct_sources: BTreeSet<&str> = direct.iter().map(|d| d.2.as_str()).collect();
    if let Some((name, cluster)) = role_resource(&resources.clusters, &naming::READINESS) {
        t.readiness_reporter(name, cluster);
    }
    for (name, cluster) in &resources.clusters {
        if naming::is_meshmetric(name) {
            let reason = format!("metrics: {POLICY_NOT_ENFORCED} (a MeshMetric backend cluster)");
            t.nack(CLUSTER, name, cluster_path(name), reason);
        } else if consumed_clusters.contains(name.as_str())
            || direct_sources.contains(name.as_str())
        {
            continue;
        } else {
            t.cluster(name, cluster);
        }
    }
    t.unused_limits();
    t.check_other_resources();
    t.apply_routes();
    let mtls = t.mesh_tls();
    t.dns.sort_by(|a, b| a.name.cmp(&b.name));
    t.dns.dedup_by(|a, b| a.name == b.name);
    for l in &mut t.listeners {
        if let Some((attempts, _)) = t.connect_attempts.get(&l.name) {
            l.max_connect_attempts = *attempts;
        }
        if let Some((idle, _)) = t.tcp_idle.get(&l.name) {
            l.tcp_idle_timeout = Some(*idle).filter(|d| !d.is_zero());
        }
    }
    t.listeners.sort_by(|a, b| a.name.cmp(&b.name));
    if !t.nacks.is_empty() {
        t.nacks.sort();
        t.nacks.dedup();
        return Err(t.nacks);
    }
    let mut config = ProxyConfig {
        version: String::new(),
        source: node.source.clone(),
        identity: ProxyIdentity {
            name: node.name.clone(),
            mesh: node.mesh.clone(),
            proxy_type: node.proxy_type.clone(),
            // kuma-dp takes the admin port from the bootstrap, not from xDS.
            admin_port: None,
        },
        listeners: t.listeners,
        clusters: t.clusters,
        transparent_proxy,
        dns: t.dns,
        mtls,
        kuma_endpoints: t.kuma_endpoints,
    };
    config.version = config.content_version();
    Ok(config)
}

/// The SDS secrets of one mesh's mTLS, by name as the TLS contexts reference them.
#[derive(Default)]
struct MeshSecrets {
    /// The proxy's identity (certificate chain and key).
    identity: Option<String>,
    /// The mesh CA peers chain to.
    ca: Option<String>,
    /// Under a SPIFFE validator, the prefix an inbound client's SPIFFE id must start with.
    client_prefix: Option<String>,
}

/// How a listener's HTTP connection manager or TCP proxy reaches its clusters.
#[derive(PartialEq)]
struct Route {
    /// The one cluster of a plain listener (empty when `table` or `tcp_backends` decide).
    cluster: String,
    protocol: Protocol,
    /// An HTTP connection manager's route table, when it routes.
    table: Option<RouteTable>,
    /// A plain HTTP listener's one route's retry policy.
    retry: Option<RetryPolicy>,
    /// A plain HTTP listener's one route's request header edits.
    request_headers: HeaderFilter,
    /// An HTTP connection manager's stream idle timeout (a plain listener's one route's
    /// `idle_timeout` when it sets one); `None`: none.
    stream_idle: Option<Duration>,
    /// An HTTP connection manager's downstream timeouts (Envoy's defaults elsewhere).
    downstream: DownstreamHttpTimeouts,
    /// A TCP proxy's weighted clusters, when it splits.
    tcp_backends: Vec<WeightedCluster>,
    /// Every cluster reached, with what the route reaching it asks of the cluster's
    /// response timeout and where (a TCP proxy's: nothing).
    reached: Reached,
    /// A TCP proxy's `metadata_match` (`envoy.lb` tags the endpoints must carry).
    subset: BTreeMap<String, String>,
    /// A `direct_response` filter's bytes (empty for a chain without filters): the
    /// connection is answered and closed, no cluster is reached.
    answer: Option<Vec<u8>>,
    /// The chain's network RBAC filter (before its terminal filter).
    network_rbac: Option<Rbac>,
    /// The HTTP connection manager's RBAC filter.
    http_rbac: Option<Rbac>,
    /// The HTTP connection manager's fault and local rate limit filters.
    http_filters: Vec<HttpFilter>,
    /// The chain's network local rate limit (before its terminal filter).
    connection_rate_limit: Option<TokenBucket>,
}

impl Route {
    /// A chain that answers `bytes` and closes the connection.
    fn answer(bytes: Vec<u8>) -> Route {
        Route {
            cluster: String::new(),
            protocol: Protocol::Tcp,
            table: None,
            retry: None,
            request_headers: HeaderFilter::default(),
            stream_idle: None,
            downstream: DownstreamHttpTimeouts::ENVOY_DEFAULT,
            tcp_backends: Vec::new(),
            reached: Vec::new(),
            subset: BTreeMap::new(),
            answer: Some(bytes),
            network_rbac: None,
            http_rbac: None,
            http_filters: Vec::new(),
            connection_rate_limit: None,
        }
    }
}

/// What the routes reaching one cluster ask of it (`Translator::route_to`).
struct Routed {
    /// Their protocol (an HTTP route's wins over a TCP proxy's).
    protocol: Protocol,
    /// Its request timeout.
    timeout: ClusterTimeout,
    /// The last listener that reached it, for a NACK that it has not come.
    listener: String,
}

struct Translator<'a> {
    set: &'a ResourceSet,
    /// The proxy's own mesh (the bootstrap node's): the mesh of an identity secret whose
    /// name tells none.
    node_mesh: &'a str,
    nacks: Vec<Nack>,
    listeners: Vec<Listener>,
    clusters: BTreeMap<String, Cluster>,
    /// Per cluster: the protocol of the routes that reach it and what they ask of its
    /// request timeout.
    routed: BTreeMap<String, Routed>,
    /// Listeners sending to an ORIGINAL_DST cluster (Kuma's direct access): the listener, its
    /// address and the cluster, which becomes a cluster of that one address.
    direct: Vec<(String, SocketAddr, String)>,
    /// Meshes whose identity a listener or cluster presents.
    meshes: BTreeSet<String>,
    /// Per mesh, the SDS secrets its TLS contexts name: the identity presented and the CA
    /// peers are verified against (Kuma's legacy, unified or MeshIdentity names).
    mesh_secrets: BTreeMap<String, MeshSecrets>,
    /// Meshes with an inbound that accepts plaintext beside mTLS.
    permissive: BTreeSet<String>,
    dns: Vec<DnsRecord>,
    kuma_endpoints: KumaEndpoints,
    /// Gateway listeners' connection limits from the runtime layer, by listener, until the
    /// listener takes its own.
    connection_limits: BTreeMap<String, u32>,
    /// The `max_connect_attempts` of each listener's TCP proxies (every chain's the same),
    /// with where it was first read, given to the listener once all are translated.
    connect_attempts: PerListener<u32>,
    /// The `idle_timeout` of each listener's TCP proxies (every chain's the same; zero:
    /// none), likewise.
    tcp_idle: PerListener<Duration>,
    /// TLS parameters already built once (`tls_params.rs`), with BoringSSL's verdict: kuma-cp
    /// renders one set for every cluster of a mesh, checked once rather than per cluster.
    checked_tls_params: tls_params::Checked,
}

/// A cluster's upstream HTTP lifetimes, from its `HttpProtocolOptions`: the pooled
/// connection idle timeout (unset: Envoy's 1 h), the maximum connection and stream
/// durations; zero is none.
fn upstream_http_timeouts(cluster: &cluster_pb::Cluster) -> UpstreamHttpTimeouts {
    let common = cluster
        .typed_extension_protocol_options
        .values()
        .find_map(|any| {
            typed::<upstream_http_pb::HttpProtocolOptions>(any)
                .filter(|_| type_name(any).ends_with("upstreams.http.v3.HttpProtocolOptions"))
                .map(|o| o.common_http_protocol_options.unwrap_or_default())
        });
    let Some(common) = common else {
        return UpstreamHttpTimeouts::default();
    };
    let set = |d: &Option<PbDuration>| d.as_ref().map(duration).filter(|d| !d.is_zero());
    UpstreamHttpTimeouts {
        idle: match &common.idle_timeout {
            None => Some(ENVOY_UPSTREAM_IDLE),
            some => set(some),
        },
        max_connection_duration: set(&common.max_connection_duration),
        max_stream_duration: set(&common.max_stream_duration),
    }
}

/// An upstream HTTP connection's idle timeout when its cluster sets none (Envoy's default).
const ENVOY_UPSTREAM_IDLE: Duration = Duration::from_secs(3600);

/// A TCP proxy's idle timeout when it sets none (Envoy's default).
const ENVOY_TCP_IDLE: Duration = Duration::from_secs(3600);
/// A connection manager's stream idle timeout when it sets none (Envoy's default).
const ENVOY_STREAM_IDLE: Duration = Duration::from_secs(300);

/// A connection manager's stream idle timeout: unset, Envoy's 5 min; zero: none.
pub(crate) fn stream_idle_timeout(hcm: &hcm_pb::HttpConnectionManager) -> Option<Duration> {
    let idle = hcm.stream_idle_timeout.as_ref();
    Some(idle.map_or(ENVOY_STREAM_IDLE, duration)).filter(|d| !d.is_zero())
}

/// A connection manager's downstream timeouts: `request_timeout` and
/// `request_headers_timeout` (unset or zero: none), `common_http_protocol_options.idle_timeout`
/// (unset: Envoy's 1 h, zero: none).
pub(crate) fn downstream_timeouts(hcm: &hcm_pb::HttpConnectionManager) -> DownstreamHttpTimeouts {
    let set = |d: &Option<PbDuration>| d.as_ref().map(duration).filter(|d| !d.is_zero());
    let idle = hcm
        .common_http_protocol_options
        .as_ref()
        .and_then(|o| o.idle_timeout.as_ref());
    DownstreamHttpTimeouts {
        request: set(&hcm.request_timeout),
        request_headers: set(&hcm.request_headers_timeout),
        connection_idle: match idle {
            None => DownstreamHttpTimeouts::ENVOY_DEFAULT.connection_idle,
            Some(d) => Some(duration(d)).filter(|d| !d.is_zero()),
        },
    }
}

/// A setting of a listener's TCP proxies that the listener holds once for all its chains,
/// by listener: the value and where it was first read.
type PerListener<T> = BTreeMap<String, (T, String)>;

/// Records `value`, read at `at`, as `listener`'s in `settings`; the reason of a NACK when
/// another chain of the listener gave another value.
fn same_for_the_listener<T: PartialEq + std::fmt::Debug>(
    settings: &mut PerListener<T>,
    listener: &str,
    value: T,
    at: String,
) -> Result<(), String> {
    match settings.get(listener) {
        Some((first, first_at)) if *first != value => Err(format!(
            "{value:?} where {first_at} has {first:?}: a listener's TCP proxies share one value"
        )),
        Some(_) => Ok(()),
        None => {
            settings.insert(listener.to_string(), (value, at));
            Ok(())
        }
    }
}

#[path = "gateway.rs"]
mod gateway;

#[path = "compressor.rs"]
mod compressor;

#[path = "dns_cluster.rs"]
mod dns_cluster;

#[path = "tls_params.rs"]
mod tls_params;
use tls_params::Side;

/// Whether a chain's route limits a rate: its connections, or requests of a route.
fn limits(route: &Route) -> bool {
    let routes = route.table.iter().flat_map(|t| &t.virtual_hosts);
    route.connection_rate_limit.is_some()
        || routes
            .flat_map(|v| &v.routes)
            .any(|r| r.rate_limit.is_some())
}

/// What Envoy refuses in a connection manager's `internal_address_config` (at `at`): a
/// `cidr_ranges` entry whose `address_prefix` is not an IP address (`invalid ip/mask combo`;
/// a `prefix_len` wider than the address Envoy narrows, and so takes). Bearing marks no peer
/// internal by them, but takes no listener Envoy would not.
fn internal_address_problems(
    hcm: &hcm_pb::HttpConnectionManager,
    at: &str,
) -> Vec<routes::Problem> {
    let ranges = hcm
        .internal_address_config
        .iter()
        .flat_map(|c| &c.cidr_ranges);
    ranges
        .enumerate()
        .filter(|(_, range)| range.address_prefix.parse::<std::net::IpAddr>().is_err())
        .map(|(i, range)| {
            (
                format!("{at}.internal_address_config.cidr_ranges[{i}].address_prefix"),
                format!(
                    "{:?} is not an IP address (Envoy: invalid ip/mask combo)",
                    range.address_prefix
                ),
            )
        })
        .collect()
}

/// Whether two chains' route tables route alike (their routes' origins aside: each names
/// its own chain).
fn same_table(a: &Option<RouteTable>, b: &Option<RouteTable>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.routes_as(b),
        (a, b) => a.is_none() && b.is_none(),
    }
}

fn listener_path(name: &str) -> String {
    format!("listeners[{name:?}]")
}

fn cluster_path(name: &str) -> String {
    format!("clusters[{name:?}]")
}

pub(crate) fn duration(d: &PbDuration) -> Duration {
    Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
}

fn socket_address(address: Option<&core_pb::Address>) -> Result<SocketAddr, String> {
    use core_pb::address::Address as A;
    use core_pb::socket_address::PortSpecifier;
    match address.and_then(|a| a.address.as_ref()) {
        Some(A::SocketAddress(s)) => {
            if s.protocol != core_pb::socket_address::Protocol::Tcp as i32 {
                return Err("only TCP socket addresses are served".into());
            }
            let ip: IpAddr = s
                .address
                .parse()
                .map_err(|_| format!("{:?} is not an IP address", s.address))?;
            let port = match s.port_specifier {
                Some(PortSpecifier::PortValue(p)) => {
                    u16::try_from(p).map_err(|_| format!("port {p} out of range"))?
                }
                Some(PortSpecifier::NamedPort(ref n)) => {
                    return Err(format!("named port {n:?} is not supported"))
                }
                // Envoy's validation: the port is required (`port_specifier`).
                None => return Err("no port_value: Envoy requires one".into()),
            };
            Ok(SocketAddr::new(ip, port))
        }
        Some(A::Pipe(p)) => Err(format!("unix socket {:?} is not served", p.path)),
        Some(_) => Err("only socket addresses are served".into()),
        None => Err("missing".into()),
    }
}

/// The `kuma.io/service` tag of Kuma's `io.kuma.tags` metadata.
fn kuma_service(metadata: Option<&core_pb::Metadata>) -> Option<String> {
    struct_strings(metadata, "io.kuma.tags").remove("kuma.io/service")
}

/// The string values of one filter-metadata namespace.
fn struct_strings(
    metadata: Option<&core_pb::Metadata>,
    namespace: &str,
) -> BTreeMap<String, String> {
    use envoy_types::pb::google::protobuf::value::Kind;
    metadata
        .and_then(|m| m.filter_metadata.get(namespace))
        .map(|s| {
            s.fields
                .iter()
                .filter_map(|(k, v)| match &v.kind {
                    Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn typed<M: Message + Default>(any: &Any) -> Option<M> {
    M::decode(any.value.as_slice()).ok()
}

fn type_name(any: &Any) -> &str {
    any.type_url.rsplit('/').next().unwrap_or(&any.type_url)
}

impl Translator<'_> {
    fn nack(&mut self, type_url: &str, resource: &str, field: String, reason: impl Into<String>) {
        self.nacks.push(Nack {
            type_url: type_url.to_string(),
            resource: resource.to_string(),
            field,
            reason: reason.into(),
            awaiting: false,
        });
    }

    /// `resource` names the Secret `secret`, which is not among the Secret resources: a Nack
    /// that only waits for it (see [`Nack::awaiting`]).
    fn await_secret(&mut self, type_url: &str, resource: &str, field: String, secret: &str) {
        let reason = format!("secret {secret} is not among the Secret resources");
        self.awaits(type_url, resource, field, reason);
    }

    /// A Nack of `resource` that only waits for another resource to come or go (see
    /// [`Nack::awaiting`]).
    fn awaits(&mut self, type_url: &str, resource: &str, field: String, reason: String) {
        self.nacks.push(Nack {
            type_url: type_url.to_string(),
            resource: resource.to_string(),
            field,
            reason,
            awaiting: true,
        });
    }

    fn unhandled(&mut self, type_url: &str, resource: &str, found: Vec<Unhandled>) {
        for u in found {
            self.nack(type_url, resource, u.path, u.reason);
        }
    }

    /// One listener per address, as Envoy refuses a listener whose address another one
    /// already has: the second (by name) is NACKed naming both and the address. Non-TCP
    /// listeners (`kuma:dns`, UDP) take none.
    fn unique_addresses(&mut self) {
        let mut taken: BTreeMap<SocketAddr, &str> = BTreeMap::new();
        let set = self.set;
        for (name, listener) in &set.listeners {
            let Ok(address) = socket_address(listener.address.as_ref()) else {
                continue;
            };
            match taken.get(&address) {
                Some(first) => {
                    let reason = format!("address {address} is already listener {first:?}'s: two listeners cannot share an address");
                    self.nack(
                        LISTENER,
                        name,
                        format!("{}.address", listener_path(name)),
                        reason,
                    );
                }
                None => {
                    taken.insert(address, name);
                }
            }
        }
    }

    /// The transparent proxy, from Kuma's capture listeners (with original destination).
    fn capture(&mut self) -> Option<TransparentProxy> {
        let set = self.set;
        // A capture listener on port 0 takes no traffic: kuma-cp 2.14's MeshTLS renders the
        // inbound ones so for a proxy without transparent proxying, and Envoy binds them to an
        // ephemeral port nothing is redirected to; Bearing leaves them out.
        let port_of = |roles: &[Role; 2]| {
            roles.iter().find_map(|role| {
                role_resource(&set.listeners, role)
                    .and_then(|(_, l)| socket_address(l.address.as_ref()).ok())
                    .map(|a| a.port())
                    .filter(|port| *port != 0)
            })
        };
        let (outbound, inbound) = (port_of(&CAPTURE_OUTBOUND), port_of(&CAPTURE_INBOUND));
        for role in CAPTURE_OUTBOUND.iter().chain(&CAPTURE_INBOUND) {
            let Some((name, listener)) = role_resource(&set.listeners, role) else {
                continue;
            };
            let path = listener_path(name);
            if listener.use_original_dst.as_ref().map(|b| b.value) != Some(true) {
                self.nack(
                    LISTENER,
                    name,
                    format!("{path}.use_original_dst"),
                    "a capture listener must use the original destination",
                );
            }
            self.unhandled(
                LISTENER,
                name,
                fields::unhandled_in(
                    "envoy.config.listener.v3.Listener",
                    &listener.encode_to_vec(),
                    &path,
                ),
            );
        }
        let (outbound_port, inbound_port) = match (outbound, inbound) {
            (None, None) => return None,
            (Some(o), Some(i)) => (o, i),
            _ => {
                let name = CAPTURE_OUTBOUND
                    .iter()
                    .chain(&CAPTURE_INBOUND)
                    .find_map(|role| role_resource(&set.listeners, role))
                    .map_or("", |(name, _)| name);
                self.nack(
                    LISTENER,
                    name,
                    listener_path(name),
                    "transparent proxying needs both the inbound and the outbound capture listener",
                );
                return None;
            }
        };
        let passthrough_cluster = role_resource(&set.listeners, &CAPTURE_OUTBOUND[0])
            .and_then(|(_, l)| self.tcp_cluster_of(l));
        let outbound_passthrough = passthrough_cluster
            .and_then(|c| set.clusters.get(&c))
            .is_some_and(|c| {
                cluster_type(c) == cluster_pb::cluster::DiscoveryType::OriginalDst as i32
            });
        Some(TransparentProxy {
            outbound_port,
            inbound_port,
            ipv6: [CAPTURE_OUTBOUND[1], CAPTURE_INBOUND[1]]
                .iter()
                .any(|role| role_resource(&set.listeners, role).is_some()),
            outbound_passthrough,
            outbound_access_logs: self.capture_logs(&CAPTURE_OUTBOUND),
            inbound_access_logs: self.capture_logs(&CAPTURE_INBOUND),
        })
    }

    /// The access logs of one side's capture listeners (IPv4 and IPv6), which must agree:
    /// one side's passthrough logs alike.
    fn capture_logs(&mut self, roles: &[Role; 2]) -> Vec<AccessLog> {
        let set = self.set;
        let mut found: Option<(Vec<AccessLog>, &str)> = None;
        for (name, listener) in roles
            .iter()
            .filter_map(|r| role_resource(&set.listeners, r))
        {
            let logs = self.access_logs(name, listener);
            match &found {
                Some((first, first_name)) if *first != logs => {
                    let reason = format!("other access logs than {first_name}: the passthrough of IPv4 and IPv6 logs alike");
                    self.nack(
                        LISTENER,
                        name,
                        format!("{}.filter_chains", listener_path(name)),
                        reason,
                    );
                }
                Some(_) => {}
                None => found = Some((logs, name)),
            }
        }
        found.map(|(logs, _)| logs).unwrap_or_default()
    }

    /// The cluster of a listener whose one chain is a TCP proxy.
    fn tcp_cluster_of(&self, listener: &listener_pb::Listener) -> Option<String> {
        listener
            .filter_chains
            .first()?
            .filters
            .iter()
            .find_map(|f| {
                let Some(listener_pb::filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                    return None;
                };
                match typed::<tcp_pb::TcpProxy>(any)?.cluster_specifier? {
                    tcp_pb::tcp_proxy::ClusterSpecifier::Cluster(c) => Some(c),
                    _ => None,
                }
            })
    }

    /// Clusters not translated: Kuma's plumbing and the capture listeners' own.
    fn consumed_clusters(&self, transparent: bool) -> BTreeSet<&'static str> {
        let mut consumed: BTreeSet<&str> = PLUMBING_CLUSTERS.into_iter().collect();
        if transparent {
            consumed.extend(
                CAPTURE_OUTBOUND
                    .iter()
                    .chain(&CAPTURE_INBOUND)
                    .flat_map(Role::names),
            );
            consumed.insert(NO_DESTINATION_CLUSTER);
        }
        consumed
    }

    fn listener(&mut self, name: &str, listener: &listener_pb::Listener) {
        // The capture listeners' logs are the transparent proxy's (`capture_logs`).
        if naming::is_capture(name) {
            return;
        }
        let logs = self.access_logs(name, listener);
        self.listener_kind(name, listener, logs);
    }

    /// A listener's file access logs (`access_log.rs`), NACKed by path when they do not
    /// translate.
    fn access_logs(&mut self, name: &str, listener: &listener_pb::Listener) -> Vec<AccessLog> {
        let mut problems = Vec::new();
        let logs = access_log::listener_logs(listener, &listener_path(name), &mut problems);
        for (field, reason) in problems {
            self.nack(LISTENER, name, field, reason);
        }
        logs
    }

    /// The listener translated by its kind, with its access logs (`logs`): given to the
    /// listeners that serve them (sidecar, gateway), NACKed on the others.
    fn listener_kind(
        &mut self,
        name: &str,
        listener: &listener_pb::Listener,
        logs: Vec<AccessLog>,
    ) {
        let path = listener_path(name);
        let before = self.listeners.len();
        let plumbing = naming::ADMIN.is(name)
            || name == PROMETHEUS_LISTENER
            || naming::DYNAMIC_CONFIG.is(name)
            || naming::DNS_LISTENER.is(name);
        let sni = listener.filter_chains.iter().any(|c| {
            c.filter_chain_match
                .as_ref()
                .is_some_and(|m| !m.server_names.is_empty())
        });
        let stream_gateway = Self::stream_gateway(name, listener).is_some();
        let zone_proxy = sni && !stream_gateway && !self.is_gateway_listener(listener);
        if !logs.is_empty() && (plumbing || zone_proxy) {
            let reason = format!("access logs: {POLICY_NOT_ENFORCED} (on Kuma's plumbing listeners and zone proxies; sidecar, gateway and passthrough listeners log)");
            self.nack(LISTENER, name, format!("{path}.filter_chains"), reason);
        }
        self.translate_listener(name, listener);
        if self.listeners.len() > before {
            if let Some(out) = self.listeners.last_mut().filter(|l| l.name == name) {
                out.access_logs = logs;
            }
        }
    }

    /// The listener translated by its kind: Kuma's plumbing, a gateway, a sidecar's or zone
    /// proxy's.
    fn translate_listener(&mut self, name: &str, listener: &listener_pb::Listener) {
        let path = listener_path(name);
        if naming::ADMIN.is(name) {
            return self.ready_listener(name, listener);
        }
        if name == PROMETHEUS_LISTENER {
            return self.prometheus_listener(name, listener);
        }
        if naming::DYNAMIC_CONFIG.is(name) {
            return self.dynamic_config(name, listener);
        }
        if naming::DNS_LISTENER.is(name) {
            return self.dns_filter(name, listener);
        }
        if naming::is_meshmetric(name) {
            return self.nack(
                LISTENER,
                name,
                path,
                format!("metrics: {POLICY_NOT_ENFORCED} (a MeshMetric backend listener)"),
            );
        }
        if self.is_gateway_listener(listener) {
            return self.gateway_listener(name, listener);
        }
        match Self::stream_gateway(name, listener) {
            Some(gateway::StreamGateway::Tcp) => return self.tcp_gateway_listener(name, listener),
            Some(gateway::StreamGateway::Tls) => return self.tls_gateway_listener(name, listener),
            None => {}
        }
        let found = fields::unhandled_in(
            "envoy.config.listener.v3.Listener",
            &listener.encode_to_vec(),
            &path,
        );
        let before = self.nacks.len();
        self.unhandled(LISTENER, name, found);
        let address = match socket_address(listener.address.as_ref()) {
            Ok(a) => a,
            Err(e) => return self.nack(LISTENER, name, format!("{path}.address"), e),
        };
        if listener.use_original_dst.as_ref().is_some_and(|b| b.value) {
            self.nack(LISTENER, name, format!("{path}.use_original_dst"), "original destination is served only on Kuma's capture listeners (outbound|inbound:passthrough)");
        }
        for (i, f) in listener.listener_filters.iter().enumerate() {
            if let Some(listener_pb::listener_filter::ConfigType::TypedConfig(any)) = &f.config_type
            {
                if type_name(any).ends_with("OriginalDst") {
                    self.nack(
                        LISTENER,
                        name,
                        format!("{path}.listener_filters[{i}]"),
                        "original destination is served only on Kuma's capture listeners",
                    );
                }
            }
        }
        if listener.filter_chains.is_empty() {
            return self.nack(
                LISTENER,
                name,
                format!("{path}.filter_chains"),
                "a listener without filter chains serves nothing",
            );
        }
        let direction = match listener.traffic_direction {
            1 => Direction::Inbound,
            2 => Direction::Outbound,
            _ if naming::is_inbound_name(name) => Direction::Inbound,
            _ => Direction::Outbound,
        };
        let bind = listener.bind_to_port.as_ref().is_none_or(|b| b.value);
        let sni_chains = listener
            .filter_chains
            .iter()
            .filter(|c| {
                c.filter_chain_match
                    .as_ref()
                    .is_some_and(|m| !m.server_names.is_empty())
            })
            .count();
        let service = kuma_service(listener.metadata.as_ref());
        let mut out = Listener::new(name, address, direction, Protocol::Tcp);
        out.service = service.unwrap_or_default();
        out.bind = bind;
        if sni_chains > 0 {
            out.sni_routes = Some(self.sni_routes(name, listener));
        } else {
            self.plain_chains(name, listener, &mut out);
        }
        if self.nacks.len() == before {
            self.listeners.push(out);
        }
    }

    /// Sidecar listeners: one chain, or an mTLS chain plus (PERMISSIVE) a plaintext one.
    fn plain_chains(&mut self, name: &str, listener: &listener_pb::Listener, out: &mut Listener) {
        let path = listener_path(name);
        let mut route: Option<Route> = None;
        let (mut tls_mesh, mut plaintext, mut tls_passthrough) = (None, false, None);
        // A TLS chain that did not translate has its own Nack; the passthrough rule below
        // then has nothing to add.
        let mut tls_refused = false;
        // The RBAC filters of the mesh mTLS chain and of the others.
        let (mut mesh_rbac, mut other_rbac) = (None, Vec::new());
        for (i, chain) in listener.filter_chains.iter().enumerate() {
            let at = format!("{path}.filter_chains[{i}]");
            if let Some(m) = &chain.filter_chain_match {
                if let Some(p) = &m.destination_port {
                    if p.value != u32::from(out.address.port()) {
                        self.nack(LISTENER, name, format!("{at}.filter_chain_match.destination_port"), "a chain for another destination port than the listener's is not implemented");
                    }
                }
            }
            let tls_match = chain
                .filter_chain_match
                .as_ref()
                .is_some_and(|m| m.transport_protocol == "tls");
            match &chain.transport_socket {
                Some(socket) => {
                    match self.downstream_tls(name, &format!("{at}.transport_socket"), socket) {
                        Some(tls) if tls_mesh.as_ref().is_some_and(|m| *m != tls) => self.nack(
                            LISTENER,
                            name,
                            format!("{at}.transport_socket"),
                            "chains of one listener in different meshes or with different TLS parameters",
                        ),
                        Some(tls) => tls_mesh = Some(tls),
                        None => tls_refused = true,
                    }
                }
                // PERMISSIVE: TLS that is not the mesh's (no ALPN `kuma`) passes through.
                None if tls_match && tls_passthrough.is_none() => {
                    tls_passthrough = Some(at.clone())
                }
                None if !tls_match && !plaintext => plaintext = true,
                None => self.nack(
                    LISTENER,
                    name,
                    at.clone(),
                    "several chains of one kind: ProxyConfig holds one destination per listener",
                ),
            }
            let Some(this) = self.chain_route(name, &at, chain) else {
                continue;
            };
            let chain_rbac = (this.network_rbac.clone(), this.http_rbac.clone());
            match chain.transport_socket.is_some() {
                true => mesh_rbac = Some(chain_rbac),
                false => other_rbac.push((at.clone(), chain_rbac)),
            }
            if !this.subset.is_empty() {
                self.nack(LISTENER, name, format!("{at}.filters"), "metadata_match: endpoint subsets are implemented only by a zone proxy's SNI tags");
            }
            // Route and connection buckets are kept per chain at runtime, as Envoy keeps them;
            // the chains must ask for the same ones.
            if route
                .as_ref()
                .is_some_and(|r| r.connection_rate_limit != this.connection_rate_limit)
            {
                let reason = "chains with different connection rate limits: ProxyConfig holds one per listener";
                self.nack(LISTENER, name, format!("{at}.filters"), reason);
            }
            if route
                .as_ref()
                .is_some_and(|r| r.http_filters != this.http_filters)
            {
                let reason = "chains with different fault or rate limit filters: ProxyConfig holds one list per listener";
                self.nack(LISTENER, name, format!("{at}.filters"), reason);
            }
            match &route {
                Some(r)
                    if r.cluster != this.cluster
                        || r.answer != this.answer
                        || r.protocol != this.protocol
                        || !same_table(&r.table, &this.table)
                        || r.retry != this.retry
                        || r.request_headers != this.request_headers
                        || r.stream_idle != this.stream_idle
                        || r.downstream != this.downstream
                        || r.tcp_backends != this.tcp_backends =>
                {
                    self.nack(
                    LISTENER,
                    name,
                    format!("{at}.filters"),
                    "chains that lead to different clusters or protocols: ProxyConfig holds one destination per listener",
                )
                }
                Some(_) => {}
                None => route = Some(this),
            }
        }
        if let (Some(at), None, false) = (&tls_passthrough, &tls_mesh, tls_refused) {
            self.nack(LISTENER, name, format!("{at}.filter_chain_match.transport_protocol"), "TLS passed through on a sidecar listener is implemented only beside mesh mTLS (PERMISSIVE)");
        }
        // kuma-cp puts RBAC on the mesh mTLS chain only: PERMISSIVE plaintext passes unchecked.
        let rbac = match (&tls_mesh, mesh_rbac) {
            (Some(_), Some(mesh)) => {
                if let Some((at, _)) = other_rbac
                    .iter()
                    .find(|(_, r)| r.0.is_some() || r.1.is_some())
                {
                    self.nack(LISTENER, name, format!("{at}.filters"), "RBAC on a chain without mesh mTLS beside a mesh mTLS chain is not implemented: Bearing applies a listener's RBAC to its mTLS connections (kuma-cp's PERMISSIVE inbounds check only those)");
                }
                mesh
            }
            _ => {
                let mut chains = other_rbac.into_iter();
                let first = chains.next().map(|(_, r)| r).unwrap_or_default();
                if let Some((at, _)) = chains.find(|(_, r)| *r != first) {
                    self.nack(
                        LISTENER,
                        name,
                        format!("{at}.filters"),
                        "chains with different RBAC filters: ProxyConfig holds one per listener",
                    );
                }
                first
            }
        };
        (out.network_rbac, out.http_rbac) = rbac;
        if let Some(tls) = tls_mesh {
            if plaintext || tls_passthrough.is_some() {
                self.permissive.insert(tls.mesh.clone());
            }
            self.meshes.insert(tls.mesh.clone());
            out.tls = Some(tls);
        }
        if let Some(mut r) = route {
            let original_dst = |c: &str| {
                self.set.clusters.get(c).is_some_and(|c| {
                    cluster_type(c) == cluster_pb::cluster::DiscoveryType::OriginalDst as i32
                })
            };
            if let Some((c, _, at)) = r.reached.iter().find(|(c, ..)| original_dst(c)) {
                if r.cluster.is_empty() {
                    let reason = format!("cluster {c:?} (ORIGINAL_DST) in a route table or among weighted clusters: only a listener's one cluster can be its original destination");
                    return self.nack(LISTENER, name, at.clone(), reason);
                }
            }
            if original_dst(&r.cluster) {
                // The original destination of a connection this listener claims by address
                // is the listener's own address.
                self.direct
                    .push((name.to_string(), out.address, r.cluster.clone()));
                r.cluster = name.to_string();
                for reached in &mut r.reached {
                    reached.0 = name.to_string();
                }
            }
            out.protocol = r.protocol;
            out.cluster = r.cluster.clone();
            out.routes = r.table;
            out.retry = r.retry;
            out.request_headers = r.request_headers;
            out.stream_idle_timeout = r.stream_idle;
            out.downstream_timeouts = r.downstream;
            out.tcp_backends = r.tcp_backends;
            out.direct_response = r.answer;
            out.http_filters = r.http_filters;
            out.connection_rate_limit = r.connection_rate_limit;
            if out.service.is_empty() && out.direction == Direction::Outbound {
                out.service = r.cluster.clone();
            }
            for (cluster, timeout, at) in r.reached {
                self.route_to(cluster, r.protocol, timeout, name, at);
            }
        }
    }

    /// The terminal network filter of a chain: a TCP proxy or an HTTP connection manager.
    fn chain_route(
        &mut self,
        name: &str,
        at: &str,
        chain: &listener_pb::FilterChain,
    ) -> Option<Route> {
        if chain.filters.is_empty() {
            // Envoy closes a connection its chain has no filter for.
            return Some(Route::answer(Vec::new()));
        }
        let (mut found, mut http, mut network_rbac) = (None, false, None);
        let mut connection_rate_limit = None;
        for (j, filter) in chain.filters.iter().enumerate() {
            let Some(listener_pb::filter::ConfigType::TypedConfig(any)) = &filter.config_type
            else {
                self.nack(
                    LISTENER,
                    name,
                    format!("{at}.filters[{j}]"),
                    "a filter without typed_config is not implemented",
                );
                continue;
            };
            let fpath = format!("{at}.filters[{j}].typed_config({})", type_name(any));
            if type_name(any) == rbac::NETWORK_RBAC {
                let mut problems = Vec::new();
                let rbac = rbac::network(any, &fpath, &mut problems);
                for (field, reason) in problems {
                    self.nack(LISTENER, name, field, reason);
                }
                if network_rbac.is_some() || found.is_some() || http {
                    let reason = "an RBAC filter after another RBAC filter or after the chain's terminal filter is not implemented";
                    self.nack(LISTENER, name, fpath, reason);
                }
                network_rbac = rbac;
            } else if type_name(any) == http_filters::NETWORK_LOCAL_RATE_LIMIT {
                let mut problems = Vec::new();
                let limit = http_filters::connection_rate_limit(any, &fpath, &mut problems);
                for (field, reason) in problems {
                    self.nack(LISTENER, name, field, reason);
                }
                if connection_rate_limit.is_some() || found.is_some() || http {
                    let reason = "a local rate limit after another or after the chain's terminal filter is not implemented";
                    self.nack(LISTENER, name, fpath, reason);
                }
                connection_rate_limit = limit;
            } else if let Some(tcp) =
                typed::<tcp_pb::TcpProxy>(any).filter(|_| type_name(any).ends_with("TcpProxy"))
            {
                let subset = struct_strings(tcp.metadata_match.as_ref(), "envoy.lb");
                found = match tcp.cluster_specifier {
                    Some(tcp_pb::tcp_proxy::ClusterSpecifier::Cluster(c)) => Some(Route {
                        reached: vec![(c.clone(), ClusterTimeout::Any, fpath.clone())],
                        cluster: c,
                        protocol: Protocol::Tcp,
                        table: None,
                        retry: None,
                        request_headers: HeaderFilter::default(),
                        stream_idle: None,
                        downstream: DownstreamHttpTimeouts::ENVOY_DEFAULT,
                        tcp_backends: Vec::new(),
                        subset,
                        answer: None,
                        network_rbac: None,
                        http_rbac: None,
                        http_filters: Vec::new(),
                        connection_rate_limit: None,
                    }),
                    Some(tcp_pb::tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
                        let backends = routes::tcp_weighted(&w);
                        let at = format!("{fpath}.weighted_clusters");
                        Some(Route {
                            reached: backends
                                .iter()
                                .map(|b| (b.cluster.clone(), ClusterTimeout::Any, at.clone()))
                                .collect(),
                            cluster: String::new(),
                            protocol: Protocol::Tcp,
                            table: None,
                            retry: None,
                            request_headers: HeaderFilter::default(),
                            stream_idle: None,
                            downstream: DownstreamHttpTimeouts::ENVOY_DEFAULT,
                            tcp_backends: backends,
                            subset,
                            answer: None,
                            network_rbac: None,
                            http_rbac: None,
                            http_filters: Vec::new(),
                            connection_rate_limit: None,
                        })
                    }
                    None => None,
                };
                if let Some(attempts) = &tcp.max_connect_attempts {
                    let at = format!("{fpath}.max_connect_attempts");
                    self.connect_attempts(name, attempts.value, at);
                }
                // Unset, Envoy's default: 1 h.
                let idle = tcp.idle_timeout.as_ref().map_or(ENVOY_TCP_IDLE, duration);
                let at = format!("{fpath}.idle_timeout");
                if let Err(reason) =
                    same_for_the_listener(&mut self.tcp_idle, name, idle, at.clone())
                {
                    self.nack(LISTENER, name, at, reason);
                }
            } else if let Some(hcm) = typed::<hcm_pb::HttpConnectionManager>(any)
                .filter(|_| type_name(any).ends_with("HttpConnectionManager"))
            {
                // A route configuration that does not translate has its own NACKs.
                http = true;
                found = self.http_route(name, &fpath, &hcm);
            } else if let Some(direct) = typed::<direct_pb::Config>(any)
                .filter(|_| type_name(any).ends_with("direct_response.v3.Config"))
            {
                found = match direct.response.as_ref().and_then(data_bytes) {
                    Some(bytes) => Some(Route::answer(bytes)),
                    None if direct.response.is_none() => Some(Route::answer(Vec::new())),
                    None => {
                        let reason = "a response read from a file or the environment is not implemented (inline bytes or string only)";
                        self.nack(LISTENER, name, format!("{fpath}.response"), reason);
                        None
                    }
                };
            }
        }
        if let Some(route) = &mut found {
            route.network_rbac = network_rbac;
            route.connection_rate_limit = connection_rate_limit;
        }
        if found.is_none() && !http {
            self.nack(
                LISTENER,
                name,
                format!("{at}.filters"),
                "no tcp_proxy to one cluster or http_connection_manager with an inline route",
            );
        }
        found
    }

    /// Records a TCP proxy's `max_connect_attempts` (MeshRetry's `tcp.maxConnectAttempt`) at
    /// `at` for `listener`, which holds one for all its chains: at least 1 (Envoy's
    /// validation), and the same in every chain.
    fn connect_attempts(&mut self, listener: &str, attempts: u32, at: String) {
        if attempts == 0 {
            return self.nack(LISTENER, listener, at, "must be at least 1");
        }
        let recorded =
            same_for_the_listener(&mut self.connect_attempts, listener, attempts, at.clone());
        if let Err(reason) = recorded {
            self.nack(LISTENER, listener, at, reason);
        }
    }

    fn http_route(
        &mut self,
        name: &str,
        at: &str,
        hcm: &hcm_pb::HttpConnectionManager,
    ) -> Option<Route> {
        let mut protocol = match hcm.codec_type {
            2 => Protocol::Http2,
            0 | 1 => Protocol::Http,
            _ => {
                self.nack(
                    LISTENER,
                    name,
                    format!("{at}.codec_type"),
                    "HTTP/3 is not implemented",
                );
                Protocol::Http
            }
        };
        for (field, reason) in internal_address_problems(hcm, at) {
            self.nack(LISTENER, name, field, reason);
        }
        let filters = &hcm.http_filters;
        let (mut http_rbac, mut http_filters) = (None, Vec::new());
        // kuma-cp's Lua program copying each route's `route_kri` for the access logs.
        let mut route_kri = false;
        for (k, f) in filters.iter().enumerate() {
            let kind = match &f.config_type {
                Some(hcm_pb::http_filter::ConfigType::TypedConfig(any)) => {
                    type_name(any).to_string()
                }
                _ => f.name.clone(),
            };
            let last = k + 1 == filters.len();
            if let Some(hcm_pb::http_filter::ConfigType::TypedConfig(any)) = &f.config_type {
                let fat = format!("{at}.http_filters[{k}].typed_config({kind})");
                let mut problems = Vec::new();
                if let Some(found) = http_filters::http_filter(any, &fat, &mut problems) {
                    for (field, reason) in problems {
                        self.nack(LISTENER, name, field, reason);
                    }
                    let reads_headers =
                        matches!(&found, Some(HttpFilter::Fault(f)) if !f.headers.is_empty());
                    if reads_headers && http_filters.len() >= 64 {
                        let reason = "a fault filter matching headers past the 64th fault or rate limit filter of one connection manager is not implemented";
                        self.nack(LISTENER, name, format!("{fat}.headers"), reason);
                    }
                    http_filters.extend(found);
                }
            }
            if let Some(hcm_pb::http_filter::ConfigType::TypedConfig(any)) =
                f.config_type.as_ref().filter(|_| kind == crate::lua::LUA)
            {
                let fat = format!("{at}.http_filters[{k}].typed_config({kind})");
                match crate::lua::kuma_route_kri(&f.name, any, &fat) {
                    Ok(()) => route_kri = true,
                    Err((field, reason)) => self.nack(LISTENER, name, field, reason),
                }
            }
            if let Some(hcm_pb::http_filter::ConfigType::TypedConfig(any)) =
                f.config_type.as_ref().filter(|_| kind == rbac::HTTP_RBAC)
            {
                let fat = format!("{at}.http_filters[{k}].typed_config({kind})");
                let mut problems = Vec::new();
                let found = rbac::http(any, &fat, &mut problems);
                for (field, reason) in problems {
                    self.nack(LISTENER, name, field, reason);
                }
                if http_rbac.is_some() {
                    let reason =
                        "a second RBAC filter in one connection manager is not implemented";
                    self.nack(LISTENER, name, fat, reason);
                }
                http_rbac = found;
            }
            if kind.ends_with("grpc_stats.v3.FilterConfig") {
                protocol = Protocol::Grpc;
            } else if kind.ends_with("router.v3.Router") != last {
                self.nack(
                    LISTENER,
                    name,
                    format!("{at}.http_filters[{k}]"),
                    "the router must be the last HTTP filter",
                );
            }
        }
        let Some(hcm_pb::http_connection_manager::RouteSpecifier::RouteConfig(rc)) =
            &hcm.route_specifier
        else {
            self.nack(
                LISTENER,
                name,
                format!("{at}.route_specifier"),
                "only an inline route_config is implemented",
            );
            return None;
        };
        let rpath = format!("{at}.route_config");
        let (mut problems, mut reached) = (Vec::new(), Vec::new());
        let routing = routes::route_config(rc, &rpath, &mut problems, &mut reached);
        for (field, reason) in problems {
            self.nack(LISTENER, name, field, reason);
        }
        let (cluster, mut table, retry, route_idle, request_headers) = match routing? {
            HttpRouting::One(plain) => {
                let routes::PlainRoute {
                    cluster,
                    retry,
                    idle,
                    request_headers,
                } = *plain;
                (cluster, None, retry, idle, request_headers)
            }
            HttpRouting::Table(table) => (
                String::new(),
                Some(table),
                None,
                None,
                HeaderFilter::default(),
            ),
        };
        // Envoy reads a route's rate limit only where its filter runs, and its `route_kri`
        // only where kuma-cp's Lua program does.
        let limits = http_filters.contains(&HttpFilter::LocalRateLimit);
        let routes = table.iter_mut().flat_map(|t| &mut t.virtual_hosts);
        for route in routes.flat_map(|v| &mut v.routes) {
            if !limits {
                route.rate_limit = None;
            }
            if !route_kri {
                route.route_kri = None;
            }
        }
        Some(Route {
            cluster,
            protocol,
            table,
            retry,
            request_headers,
            stream_idle: bearing_proxy_config::stream_idle_timeout(
                route_idle,
                stream_idle_timeout(hcm),
            ),
            downstream: downstream_timeouts(hcm),
            tcp_backends: Vec::new(),
            reached,
            subset: BTreeMap::new(),
            answer: None,
            network_rbac: None,
            http_rbac,
            http_filters,
            connection_rate_limit: None,
        })
    }

    /// A transport socket's typed config; a socket without one is NACKed.
    fn socket_config<'s>(
        &mut self,
        type_url: &str,
        name: &str,
        at: &str,
        socket: &'s core_pb::TransportSocket,
    ) -> Option<&'s Any> {
        match &socket.config_type {
            Some(core_pb::transport_socket::ConfigType::TypedConfig(any)) => Some(any),
            _ => {
                let reason = "a transport socket without typed_config is not implemented";
                self.nack(type_url, name, at.to_string(), reason);
                None
            }
        }
    }

    /// A transport socket's TLS context of type `M` (whose name ends with `kind`) and its
    /// field path; a socket without typed config is NACKed, one of another type is left to
    /// the field guard.
    fn tls_context<M: Message + Default>(
        &mut self,
        type_url: &str,
        name: &str,
        at: &str,
        socket: &core_pb::TransportSocket,
        kind: &str,
    ) -> Option<(M, String)> {
        let any = self.socket_config(type_url, name, at, socket)?;
        let ctx = typed::<M>(any).filter(|_| type_name(any).ends_with(kind))?;
        Some((ctx, format!("{at}.typed_config({})", type_name(any))))
    }

    /// A listener chain's `DownstreamTlsContext` and its field path.
    fn downstream_context(
        &mut self,
        name: &str,
        at: &str,
        socket: &core_pb::TransportSocket,
    ) -> Option<(tls_pb::DownstreamTlsContext, String)> {
        self.tls_context(LISTENER, name, at, socket, "DownstreamTlsContext")
    }

    /// NACKs a chain's `require_client_certificate` (at `at`, the context's path) unless it is
    /// `required`, with `reason`.
    fn client_certificate(
        &mut self,
        name: &str,
        at: &str,
        ctx: &tls_pb::DownstreamTlsContext,
        required: bool,
        reason: &str,
    ) {
        let requires = ctx
            .require_client_certificate
            .as_ref()
            .is_some_and(|b| b.value);
        if requires != required {
            let field = format!("{at}.require_client_certificate");
            self.nack(LISTENER, name, field, reason);
        }
    }

    /// Downstream mesh mTLS: the mesh whose identity the chain presents, and the TLS
    /// parameters its handshakes allow (kuma-cp's MeshTLS).
    fn downstream_tls(
        &mut self,
        name: &str,
        at: &str,
        socket: &core_pb::TransportSocket,
    ) -> Option<DownstreamTls> {
        let (ctx, at) = self.downstream_context(name, at, socket)?;
        let reason =
            "only mesh mTLS (client certificate required) is terminated on sidecar listeners";
        self.client_certificate(name, &at, &ctx, true, reason);
        let common = ctx.common_tls_context.unwrap_or_default();
        let common_at = format!("{at}.common_tls_context");
        let params = self.tls_params((LISTENER, name), &common_at, &common, Side::Server);
        if let Some(i) = san_kinds(&common) {
            let field = format!("{at}.common_tls_context.validation_context.match_typed_subject_alt_names[{i}].matcher");
            let reason = "clients are verified by their mesh's SPIFFE prefix only";
            self.nack(LISTENER, name, field, reason);
        }
        let mesh =
            self.identity_mesh(LISTENER, name, &format!("{at}.common_tls_context"), &common)?;
        let ca = validation_sds(&common);
        let field = format!("{at}.common_tls_context.combined_validation_context");
        let spiffe = ca.as_deref().is_some_and(|ca| self.is_spiffe_secret(ca));
        if spiffe {
            self.client_prefix(name, &field, &mesh, &common);
        }
        // A secret not there yet is awaited (`mesh_tls`), as Envoy keeps the listener warming.
        let usable = |ca: &&str| {
            spiffe || naming::mesh_ca_mesh(ca) == Some(&mesh) || !self.set.secrets.contains_key(*ca)
        };
        match ca.as_deref().filter(usable) {
            Some(ca) => self.mesh_secret(LISTENER, name, field, &mesh, ca, false),
            None => self.nack(
                LISTENER,
                name,
                field,
                format!("clients must be verified against the CA of mesh {mesh:?} (mesh_ca:secret:{mesh} or system_mtls_ca_{mesh}) or a MeshTrust's SPIFFE validator"),
            ),
        }
        Some(DownstreamTls {
            mesh,
            params: params.ok()?,
        })
    }

    /// Under a SPIFFE validator: the prefix a client's SPIFFE id must start with (the chain's
    /// one `prefix` URI matcher, Kuma's `spiffe://<trust domain>/`; none: any trusted id).
    fn client_prefix(
        &mut self,
        name: &str,
        at: &str,
        mesh: &str,
        common: &tls_pb::CommonTlsContext,
    ) {
        use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern as M;
        let prefixes: Vec<&str> = validation_matchers(common)
            .filter_map(|m| match m.matcher.as_ref()?.match_pattern.as_ref()? {
                M::Prefix(p) => Some(p.as_str()),
                _ => None,
            })
            .collect();
        let field = format!("{at}.default_validation_context.match_typed_subject_alt_names");
        let prefix = match prefixes.as_slice() {
            [] => "spiffe://".to_string(),
            [one] if one.starts_with("spiffe://") => one.to_string(),
            _ => {
                let reason =
                    "under a SPIFFE validator, clients are matched by at most one spiffe:// prefix";
                return self.nack(LISTENER, name, field, reason);
            }
        };
        let secrets = self.mesh_secrets.entry(mesh.to_string()).or_default();
        match &secrets.client_prefix {
            Some(known) if *known != prefix => {
                let reason = format!("client prefix {prefix:?} where other listeners of mesh {mesh:?} take {known:?}: ProxyConfig holds one per mesh");
                self.nack(LISTENER, name, field, reason);
            }
            _ => secrets.client_prefix = Some(prefix),
        }
    }

    /// Records `secret` as the identity (`identity`) or CA secret of `mesh`; another secret
    /// in that role for the same mesh is NACKed at `field` (ProxyConfig holds one per mesh).
    fn mesh_secret(
        &mut self,
        type_url: &str,
        name: &str,
        field: String,
        mesh: &str,
        secret: &str,
        identity: bool,
    ) {
        let secrets = self.mesh_secrets.entry(mesh.to_string()).or_default();
        let slot = match identity {
            true => &mut secrets.identity,
            false => &mut secrets.ca,
        };
        match slot {
            Some(known) if known != secret => {
                let reason = format!("secret {secret:?} where other TLS contexts of mesh {mesh:?} name {known:?}: ProxyConfig holds one identity and one CA per mesh");
                self.nack(type_url, name, field, reason);
            }
            Some(_) => {}
            None => *slot = Some(secret.to_string()),
        }
    }

    /// The mesh of the identity SDS secret a TLS context presents, recognised by being the
    /// one secret it presents: the mesh its name tells in any of Kuma's names for it
    /// (`identity_cert:secret:<mesh>`, `system_mtls_identity_<mesh>`, a MeshIdentity's
    /// `kri_mid_<mesh>_...`), else the proxy's own (a secret named by reference, such as a
    /// zone egress's MeshIdentity secret). The context presents that secret, whatever its
    /// name, and verifies peers against the validation secret it names.
    fn identity_mesh(
        &mut self,
        type_url: &str,
        name: &str,
        at: &str,
        common: &tls_pb::CommonTlsContext,
    ) -> Option<String> {
        let [sds] = common.tls_certificate_sds_secret_configs.as_slice() else {
            self.nack(
                type_url,
                name,
                format!("{at}.tls_certificate_sds_secret_configs"),
                "mesh mTLS presents exactly one identity secret",
            );
            return None;
        };
        let field = format!("{at}.tls_certificate_sds_secret_configs[0].name");
        let own = Some(self.node_mesh).filter(|m| !m.is_empty());
        match naming::identity_secret_mesh(&sds.name).or(own) {
            Some(mesh) if self.set.secrets.contains_key(&sds.name) => {
                self.mesh_secret(type_url, name, field, mesh, &sds.name, true);
                Some(mesh.to_string())
            }
            Some(_) => {
                self.await_secret(type_url, name, field, &sds.name);
                None
            }
            None => {
                self.nack(
                    type_url,
                    name,
                    field,
                    format!(
                        "secret {:?} does not name its mesh as Kuma's identity secrets do (identity_cert:secret:<mesh>, system_mtls_identity_<mesh>, kri_mid_<mesh>_...) and the proxy has no mesh of its own",
                        sds.name
                    ),
                );
                None
            }
        }
    }

    /// Zone ingress and egress: destinations by SNI, one chain per server name set.
    fn sni_routes(&mut self, name: &str, listener: &listener_pb::Listener) -> Vec<SniRoute> {
        let path = listener_path(name);
        let mut routes = Vec::new();
        for (i, chain) in listener.filter_chains.iter().enumerate() {
            let at = format!("{path}.filter_chains[{i}]");
            let names = chain
                .filter_chain_match
                .as_ref()
                .map(|m| m.server_names.clone())
                .unwrap_or_default();
            if names.is_empty() {
                self.nack(
                    LISTENER,
                    name,
                    format!("{at}.filter_chain_match"),
                    "a chain without server_names on an SNI-routing listener is not implemented",
                );
                continue;
            }
            let terminate = match &chain.transport_socket {
                Some(socket) => self
                    .downstream_tls(name, &format!("{at}.transport_socket"), socket)
                    .inspect(|tls| {
                        self.meshes.insert(tls.mesh.clone());
                    }),
                None => None,
            };
            let Some(route) = self.chain_route(name, &at, chain) else {
                continue;
            };
            // Envoy keeps a chain's buckets; Bearing an SNI route's.
            if route.connection_rate_limit.is_some() || (limits(&route) && names.len() > 1) {
                let reason = format!("rate limits: {POLICY_NOT_ENFORCED} (a connection rate limit, or a request rate limit on a chain of several server names, on an SNI-routing listener: a zone proxy's)");
                self.nack(LISTENER, name, format!("{at}.filters"), reason);
                continue;
            }
            let http = match (route.protocol, &terminate) {
                (Protocol::Tcp, _) => None,
                (protocol, Some(_)) => Some(SniHttp {
                    protocol,
                    routes: route.table.clone(),
                    retry: route.retry.clone(),
                    request_headers: route.request_headers.clone(),
                    http_filters: route.http_filters.clone(),
                    stream_idle_timeout: route.stream_idle,
                    http_rbac: route.http_rbac.clone(),
                    downstream_timeouts: route.downstream,
                }),
                // A TLS context that did not translate (or awaits its secrets) said why.
                (_, None) if chain.transport_socket.is_some() => continue,
                (_, None) => {
                    let reason = "HTTP routing behind an SNI chain that does not terminate mesh mTLS: the TLS bytes pass through";
                    self.nack(LISTENER, name, format!("{at}.filters"), reason);
                    continue;
                }
            };
            for (k, server_name) in names.iter().enumerate() {
                let at = format!("{at}.filter_chain_match.server_names[{k}]");
                match sni_target(server_name) {
                    // HTTP goes to the routes' clusters whole, in Envoy as here.
                    Ok((_, tags)) if http.is_none() && !self.same_selection(&route.cluster, &tags, &route.subset) => self.nack(LISTENER, name, at, format!("the chain's metadata_match {:?} selects other endpoints than the SNI's tags: Bearing selects endpoints by the SNI's tags", route.subset)),
                    Ok((target, _)) => match routes.iter().find(|r: &&SniRoute| r.target == target) {
                        Some(r) if r.cluster != route.cluster || r.terminate != terminate || !same_http(&r.http, &http) || r.network_rbac != route.network_rbac => self.nack(LISTENER, name, at, "SNIs of one service lead to different clusters or RBAC: Bearing routes a service to one cluster, narrows by the SNI's tags and checks one RBAC"),
                        Some(_) => {}
                        None => routes.push(SniRoute { target, cluster: route.cluster.clone(), terminate: terminate.clone(), http: http.clone(), network_rbac: route.network_rbac.clone() }),
                    },
                    Err(reason) => self.nack(LISTENER, name, at, reason),
                }
            }
            for (cluster, timeout, at) in route.reached {
                self.route_to(cluster, route.protocol, timeout, name, at);
            }
        }
        routes
    }

    /// Whether narrowing a cluster's endpoints by the SNI's tags (as Bearing does) selects the
    /// same endpoints as Envoy's `metadata_match` (Kuma leaves out tags every endpoint of the
    /// zone proxy's own zone carries, such as `kuma.io/zone`).
    fn same_selection(
        &self,
        cluster: &str,
        sni_tags: &BTreeMap<String, String>,
        subset: &BTreeMap<String, String>,
    ) -> bool {
        if sni_tags == subset {
            return true;
        }
        let Some(c) = self.set.clusters.get(cluster) else {
            return false;
        };
        let service = c
            .eds_cluster_config
            .as_ref()
            .map(|e| e.service_name.as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or(cluster);
        let Some(assignment) = self
            .set
            .endpoints
            .get(service)
            .or(c.load_assignment.as_ref())
        else {
            return false;
        };
        let carries = |tags: &BTreeMap<String, String>, wanted: &BTreeMap<String, String>| {
            wanted.iter().all(|(k, v)| tags.get(k) == Some(v))
        };
        assignment
            .endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .all(|e| {
                let tags = struct_strings(e.metadata.as_ref(), "envoy.lb");
                carries(&tags, sni_tags) == carries(&tags, subset)
            })
    }

    fn cluster(&mut self, name: &str, cluster: &cluster_pb::Cluster) {
        use cluster_pb::cluster::DiscoveryType;
        let path = cluster_path(name);
        let before = self.nacks.len();
        let kind = cluster_type(cluster);
        let found = fields::unhandled_in(
            "envoy.config.cluster.v3.Cluster",
            &cluster.encode_to_vec(),
            &path,
        );
        self.unhandled(CLUSTER, name, found);
        let assignment = if kind == DiscoveryType::Eds as i32 {
            let service = cluster
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(name);
            self.set.endpoints.get(service)
        } else if kind == DiscoveryType::Static as i32 || dns_cluster::discovery(kind).is_some() {
            cluster.load_assignment.as_ref()
        } else {
            let what = if kind == DiscoveryType::OriginalDst as i32 {
                "ORIGINAL_DST clusters are served only behind Kuma's capture listeners or a listener's own address"
            } else {
                "this cluster type is not implemented"
            };
            return self.nack(CLUSTER, name, format!("{path}.type"), what);
        };
        let load_balancer = match balance::load_balancer(cluster, &path) {
            Ok(balancer) => balancer,
            Err(problems) => {
                for (field, reason) in problems {
                    self.nack(CLUSTER, name, field, reason);
                }
                LoadBalancer::RoundRobin
            }
        };
        let weights = assignment.map(|a| balance::check_weights(&load_balancer, a, &path));
        for (field, reason) in weights.into_iter().flatten() {
            self.nack(CLUSTER, name, field, reason);
        }
        let dns = dns_cluster::discovery(kind).is_some();
        let localities = (&load_balancer, dns);
        for (field, reason) in balance::check_localities(cluster, localities, assignment, &path) {
            self.nack(CLUSTER, name, field, reason);
        }
        let discovery = dns_cluster::discovery(kind);
        let mut hosts = discovery.map(|_| Vec::new());
        let matches = self.tls_matches(name, &path, cluster);
        let endpoints = assignment
            .map(|a| {
                let events = crate::health::logs_events(cluster);
                let roles = balance::locality_weighted(cluster).then(|| balance::locality_roles(a));
                self.endpoints(
                    name,
                    (&path, events),
                    a,
                    hosts.as_mut(),
                    &matches,
                    roles.as_deref(),
                )
            })
            .unwrap_or_default();
        let dns = discovery.zip(hosts).and_then(|(discovery, hosts)| {
            self.dns_endpoints(name, &path, cluster, discovery, assignment, hosts)
        });
        let mut breakers = CircuitBreakers::default();
        for (i, t) in cluster
            .circuit_breakers
            .iter()
            .flat_map(|c| &c.thresholds)
            .enumerate()
        {
            if t.priority != 0 {
                self.nack(
                    CLUSTER,
                    name,
                    format!("{path}.circuit_breakers.thresholds[{i}].priority"),
                    "only the default priority is implemented",
                );
                continue;
            }
            let set = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>,
                       into: &mut u32| {
                if let Some(v) = v {
                    *into = v.value;
                }
            };
            set(&t.max_connections, &mut breakers.max_connections);
            set(&t.max_pending_requests, &mut breakers.max_pending_requests);
            set(&t.max_requests, &mut breakers.max_requests);
            set(&t.max_retries, &mut breakers.max_retries);
            if let Some(pools) = &t.max_connection_pools {
                breakers.max_connection_pools = Some(pools.value);
            }
        }
        let (protocol, http2_windows) = self.upstream_protocol(name, &path, cluster);
        let http_timeouts = upstream_http_timeouts(cluster);
        let tls = cluster
            .transport_socket
            .as_ref()
            .and_then(|s| self.upstream_tls(name, &format!("{path}.transport_socket"), s));
        if let Some(source) = cluster
            .upstream_bind_config
            .as_ref()
            .and_then(|b| b.source_address.as_ref())
        {
            let address = core_pb::Address {
                address: Some(core_pb::address::Address::SocketAddress(source.clone())),
            };
            if let Err(reason) = socket_address(Some(&address)) {
                let at = format!("{path}.upstream_bind_config.source_address");
                self.nack(CLUSTER, name, at, reason);
            } else if !matches!(source.address.as_str(), "127.0.0.6" | "::6") {
                self.nack(
                    CLUSTER,
                    name,
                    format!("{path}.upstream_bind_config"),
                    "only Kuma's passthrough source address (127.0.0.6, ::6) is implemented",
                );
            }
        }
        let mut problems = Vec::new();
        let mut health =
            crate::health::endpoint_health(cluster, (&path, discovery.is_some()), &mut problems);
        if let Some(factor) = assignment
            .and_then(|a| a.policy.as_ref())
            .and_then(|p| p.overprovisioning_factor.as_ref())
        {
            health.overprovisioning_factor = factor.value;
        }
        for (field, reason) in problems {
            self.nack(CLUSTER, name, field, reason);
        }
        if self.nacks.len() != before {
            return;
        }
        self.clusters.insert(
            name.to_string(),
            Cluster {
                health,
                http_timeouts,
                name: name.to_string(),
                protocol,
                endpoints,
                connect_timeout: cluster
                    .connect_timeout
                    .as_ref()
                    .map(duration)
                    .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
                request_timeout: Some(DEFAULT_ROUTE_TIMEOUT),
                tls,
                circuit_breakers: breakers,
                http2_windows,
                dns,
                tls_matches: matches.into_iter().map(|(m, _)| m).collect(),
                load_balancer,
            },
        );
    }

    /// A cluster's `transport_socket_matches`: each transport (TLS, or plaintext without a
    /// transport socket) with the metadata an endpoint selects it by.
    fn tls_matches(
        &mut self,
        name: &str,
        path: &str,
        cluster: &cluster_pb::Cluster,
    ) -> Vec<(TlsMatch, Struct)> {
        let mut out: Vec<(TlsMatch, Struct)> = Vec::new();
        for (i, m) in cluster.transport_socket_matches.iter().enumerate() {
            let at = format!("{path}.transport_socket_matches[{i}]");
            if out.iter().any(|(known, _)| known.name == m.name) {
                let reason = format!(
                    "a second match named {:?}: endpoints select a transport by its name",
                    m.name
                );
                self.nack(CLUSTER, name, format!("{at}.name"), reason);
                continue;
            }
            let tls = match &m.transport_socket {
                Some(socket) => {
                    match self.upstream_tls(name, &format!("{at}.transport_socket"), socket) {
                        Some(tls) => Some(tls),
                        None => continue,
                    }
                }
                None => None,
            };
            let selector = m.r#match.clone().unwrap_or_default();
            out.push((
                TlsMatch {
                    name: m.name.clone(),
                    tls,
                },
                selector,
            ));
        }
        out
    }

    /// The endpoints of `assignment` (of cluster `name` at `path`; `events`: the cluster's
    /// health check writes an event log, so each keeps what its events say of it).
    fn endpoints(
        &mut self,
        name: &str,
        (path, events): (&str, bool),
        assignment: &endpoint_pb::ClusterLoadAssignment,
        mut hosts: Option<&mut Vec<HostEndpoint>>,
        matches: &[(TlsMatch, Struct)],
        roles: Option<&[balance::LocalityRole]>,
    ) -> Vec<Endpoint> {
        use balance::LocalityRole;
        let mut out = Vec::new();
        let mut weights = BTreeSet::new();
        for (i, locality) in assignment.endpoints.iter().enumerate() {
            let role = roles.and_then(|r| r.get(i).copied());
            // Envoy sends a locality without a weight beside weighted ones no traffic.
            if role == Some(LocalityRole::Idle) {
                continue;
            }
            let at = format!("{path}.load_assignment.endpoints[{i}]");
            for (j, lb) in locality.lb_endpoints.iter().enumerate() {
                let at = format!("{at}.lb_endpoints[{j}]");
                let weight = lb.load_balancing_weight.as_ref().map_or(1, |w| w.value);
                if weight == 0 {
                    self.nack(
                        CLUSTER,
                        name,
                        format!("{at}.load_balancing_weight"),
                        "0: Envoy takes 1 or more",
                    );
                    continue;
                }
                weights.insert(weight);
                let Some(endpoint_pb::lb_endpoint::HostIdentifier::Endpoint(e)) =
                    &lb.host_identifier
                else {
                    self.nack(CLUSTER, name, at, "only inline endpoints are implemented");
                    continue;
                };
                let origin = format!("xds cluster {}", assignment.cluster_name);
                let tags = struct_strings(lb.metadata.as_ref(), "envoy.lb");
                let tls_match = transport_match(matches, lb.metadata.as_ref());
                let field = format!("{at}.endpoint.address");
                match socket_address(e.address.as_ref()) {
                    Ok(address) => out.push(Endpoint {
                        address,
                        origin,
                        tags,
                        priority: locality.priority,
                        weight,
                        locality: match role {
                            Some(LocalityRole::Weighed { weight, order }) => {
                                Some(LocalityWeight {
                                    index: i as u32,
                                    weight,
                                    order,
                                })
                            }
                            _ => None,
                        },
                        // A DNS cluster names each host by its address as written, an IP too.
                        hostname: hosts.as_ref().and_then(|_| {
                            let socket = match e.address.as_ref()?.address.as_ref()? {
                                core_pb::address::Address::SocketAddress(s) => s,
                                _ => return None,
                            };
                            Some(socket.address.clone())
                        }),
                        tls_match,
                        event_host: events.then(|| {
                            crate::health::event_host(lb, locality.locality.as_ref())
                        }),
                    }),
                    Err(reason) => match (
                        hosts.as_deref_mut(),
                        dns_cluster::hostname_address(e.address.as_ref()),
                    ) {
                        (Some(hosts), Some((hostname, port))) => hosts.push(HostEndpoint {
                            hostname,
                            port,
                            origin,
                            tags,
                            tls_match,
                            priority: locality.priority,
                        }),
                        (None, Some(_)) => self.nack(CLUSTER, name, field, format!("{reason}: only STRICT_DNS and LOGICAL_DNS clusters resolve hostnames")),
                        (_, None) => self.nack(CLUSTER, name, field, reason),
                    },
                }
            }
        }
        if weights.len() > 1 && hosts.is_some() {
            self.nack(
                CLUSTER,
                name,
                format!("{path}.load_assignment.endpoints"),
                "endpoints of different weights in a DNS cluster are not implemented",
            );
        }
        // ProxyConfig's order: by priority level, each level in the order given.
        out.sort_by_key(|e| e.priority);
        out
    }

    /// HTTP/1 or HTTP/2 from `HttpProtocolOptions`; TCP when the cluster sets none.
    fn upstream_protocol(
        &mut self,
        name: &str,
        path: &str,
        cluster: &cluster_pb::Cluster,
    ) -> (Protocol, Http2Windows) {
        use upstream_http_pb::http_protocol_options::explicit_http_config::ProtocolConfig;
        use upstream_http_pb::http_protocol_options::UpstreamProtocolOptions;
        let mut protocol = Protocol::Tcp;
        let mut windows = Http2Windows::default();
        for (key, any) in &cluster.typed_extension_protocol_options {
            let Some(options) = typed::<upstream_http_pb::HttpProtocolOptions>(any)
                .filter(|_| type_name(any).ends_with("upstreams.http.v3.HttpProtocolOptions"))
            else {
                continue;
            };
            match options.upstream_protocol_options {
                Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match e.protocol_config {
                    Some(ProtocolConfig::Http2ProtocolOptions(h2)) => {
                        let at = format!("{path}.typed_extension_protocol_options[{key:?}].explicit_http_config.http2_protocol_options");
                        windows = self.http2_windows(CLUSTER, name, &at, &h2);
                        protocol = Protocol::Http2;
                    }
                    Some(ProtocolConfig::HttpProtocolOptions(_)) => protocol = Protocol::Http,
                    _ => self.nack(
                        CLUSTER,
                        name,
                        format!(
                            "{path}.typed_extension_protocol_options[{key:?}].explicit_http_config"
                        ),
                        "only HTTP/1.1 or HTTP/2 upstreams are implemented",
                    ),
                },
                _ => self.nack(
                    CLUSTER,
                    name,
                    format!("{path}.typed_extension_protocol_options[{key:?}]"),
                    "only an explicit HTTP/1.1 or HTTP/2 upstream protocol is implemented",
                ),
            }
        }
        (protocol, windows)
    }

    /// The flow-control windows of `Http2ProtocolOptions` (at `at`), in Envoy's bounds
    /// (64 KiB - 1 to 2 GiB - 1), which Envoy's validation refuses outside of.
    fn http2_windows(
        &mut self,
        type_url: &str,
        name: &str,
        at: &str,
        options: &core_pb::Http2ProtocolOptions,
    ) -> Http2Windows {
        const BOUNDS: std::ops::RangeInclusive<u32> = 65_535..=2_147_483_647;
        let mut window = |field: &str, value: Option<u32>| {
            let value = value?;
            if BOUNDS.contains(&value) {
                return Some(value);
            }
            let reason = format!(
                "an HTTP/2 window is {} to {} bytes",
                BOUNDS.start(),
                BOUNDS.end()
            );
            self.nack(type_url, name, format!("{at}.{field}"), reason);
            None
        };
        Http2Windows {
            stream: window(
                "initial_stream_window_size",
                options.initial_stream_window_size.map(|v| v.value),
            ),
            connection: window(
                "initial_connection_window_size",
                options.initial_connection_window_size.map(|v| v.value),
            ),
        }
    }

    /// Upstream TLS: mesh mTLS by the SDS identity it presents, else TLS to an external service.
    fn upstream_tls(
        &mut self,
        name: &str,
        at: &str,
        socket: &core_pb::TransportSocket,
    ) -> Option<UpstreamTls> {
        let (ctx, at) = self.tls_context::<tls_pb::UpstreamTlsContext>(
            CLUSTER,
            name,
            at,
            socket,
            "UpstreamTlsContext",
        )?;
        let common = ctx.common_tls_context.clone().unwrap_or_default();
        let sans = subject_alt_names(&common);
        let common_at = format!("{at}.common_tls_context");
        let params = self
            .tls_params((CLUSTER, name), &common_at, &common, Side::Client)
            .ok()?;
        if let Some(i) = san_kinds(&common) {
            let field = format!(
                "{common_at}.validation_context.match_typed_subject_alt_names[{i}].matcher"
            );
            self.nack(
                CLUSTER,
                name,
                field,
                "subject alt names are verified by exact value or prefix only",
            );
            return None;
        }
        if !common.tls_certificate_sds_secret_configs.is_empty() {
            if ctx.allow_renegotiation {
                // kuma-cp sets it only on TLS to ExternalServices.
                self.nack(
                    CLUSTER,
                    name,
                    format!("{at}.allow_renegotiation"),
                    "renegotiation is implemented only for TLS to services outside the mesh",
                );
                return None;
            }
            let mesh = self.identity_mesh(CLUSTER, name, &common_at, &common)?;
            self.meshes.insert(mesh.clone());
            let identities = match spiffe_matchers(&common) {
                Ok(identities) => identities,
                Err((i, reason)) => {
                    let field = format!("{common_at}.combined_validation_context.default_validation_context.match_typed_subject_alt_names{}", i.map(|i| format!("[{i}]")).unwrap_or_default());
                    self.nack(CLUSTER, name, field, reason);
                    return None;
                }
            };
            let ca_secret = validation_sds(&common);
            let ca_field = format!(
                "{common_at}.combined_validation_context.validation_context_sds_secret_config"
            );
            // A SPIFFE validator, or a secret not there yet (awaited in `mesh_tls`).
            let spiffe = ca_secret.as_deref().filter(|secret| {
                self.is_spiffe_secret(secret) || !self.set.secrets.contains_key(*secret)
            });
            let server_ca_pem = match ca_secret.as_deref().and_then(|n| {
                let ca_mesh = spiffe.map(|_| mesh.as_str()).or(naming::mesh_ca_mesh(n))?;
                Some((n, ca_mesh))
            }) {
                Some((secret, ca_mesh)) if ca_mesh == mesh => {
                    self.mesh_secret(CLUSTER, name, ca_field, &mesh, secret, false);
                    None
                }
                Some((secret, _)) => match self.secret_ca(secret) {
                    Some(pem) => Some(pem),
                    None => {
                        let field = ca_field;
                        if self.set.secrets.contains_key(secret) {
                            self.nack(
                                CLUSTER,
                                name,
                                field,
                                format!("secret {secret} has no inline trusted CA"),
                            );
                        } else {
                            self.await_secret(CLUSTER, name, field, secret);
                        }
                        return None;
                    }
                },
                None => {
                    self.nack(
                        CLUSTER,
                        name,
                        format!("{common_at}.combined_validation_context"),
                        "mesh mTLS upstreams verify against a mesh CA secret (mesh_ca:secret:<mesh> or system_mtls_ca_<mesh>)",
                    );
                    return None;
                }
            };
            return Some(UpstreamTls::Mesh {
                mesh,
                sni: ctx.sni,
                identities,
                server_ca_pem,
                params,
            });
        }
        // TLS to a service outside the mesh.
        if let Some(i) = validation_matchers(&common).position(|m| {
            let pattern = m.matcher.as_ref().and_then(|m| m.match_pattern.as_ref());
            !matches!(pattern, Some(StringPattern::Exact(_)))
        }) {
            let field = format!(
                "{common_at}.validation_context.match_typed_subject_alt_names[{i}].matcher"
            );
            let reason = "outside the mesh, a server name is verified by exact value only";
            self.nack(CLUSTER, name, field, reason);
            return None;
        }
        let (client_cert_pem, client_key_pem) = match common.tls_certificates.as_slice() {
            [] => (None, None),
            [cert] => (
                data_text(cert.certificate_chain.as_ref()),
                data_text(cert.private_key.as_ref()),
            ),
            _ => {
                self.nack(
                    CLUSTER,
                    name,
                    format!("{common_at}.tls_certificates"),
                    "at most one client certificate is implemented",
                );
                return None;
            }
        };
        use tls_pb::common_tls_context::ValidationContextType as V;
        let validation = match &common.validation_context_type {
            None => None,
            Some(V::ValidationContext(v)) => Some(v.clone()),
            // The system's roots: `ca_pem: None`.
            Some(V::CombinedValidationContext(c))
                if c.validation_context_sds_secret_config
                    .as_ref()
                    .is_none_or(|s| s.name == SYSTEM_TRUST_BUNDLE) =>
            {
                Some(c.default_validation_context.clone().unwrap_or_default())
            }
            Some(_) => {
                self.nack(
                    CLUSTER,
                    name,
                    format!("{common_at}.validation_context_type"),
                    "validation contexts from SDS are implemented only for mesh mTLS",
                );
                return None;
            }
        };
        let ca_pem = validation
            .as_ref()
            .and_then(|v| data_text(v.trusted_ca.as_ref()));
        let verification = match (&validation, sans.is_empty()) {
            (None, _) => Verification::SkipAll,
            (Some(_), true) => Verification::SkipSan,
            (Some(_), false) => Verification::Secured,
        };
        if sans.iter().any(|(_, n)| *n != ctx.sni) {
            self.nack(
                CLUSTER,
                name,
                format!("{common_at}.validation_context.match_typed_subject_alt_names"),
                "a server name to verify other than the SNI is not implemented",
            );
        }
        Some(UpstreamTls::External {
            server_name: ctx.sni,
            ca_pem,
            client_cert_pem,
            client_key_pem,
            verification,
            allow_renegotiation: ctx.allow_renegotiation,
            params,
        })
    }

    fn secret_ca(&self, name: &str) -> Option<String> {
        match self.set.secrets.get(name)?.r#type.as_ref()? {
            tls_pb::secret::Type::ValidationContext(v) => data_text(v.trusted_ca.as_ref()),
            _ => None,
        }
    }

    /// `_kuma:dynamicconfig`: the `/dns` direct response holds the DNS table.
    /// `kuma:envoy:admin`: `/ready` on the Dataplane's address, for kubelet probes. Its
    /// TLS chain (kuma-cp reading Envoy's admin API) is not served: Bearing exposes nothing
    /// else of its admin API off loopback.
    fn ready_listener(&mut self, name: &str, listener: &listener_pb::Listener) {
        let path = listener_path(name);
        let address = match socket_address(listener.address.as_ref()) {
            Ok(a) if a.port() == 0 => return, // no admin port: nothing to answer on
            Ok(a) => a,
            Err(e) => return self.nack(LISTENER, name, format!("{path}.address"), e),
        };
        let ready = plain_prefix_routes(listener)
            .any(|(prefix, cluster)| prefix == "/ready" && naming::READINESS.is(&cluster));
        if !ready {
            let readiness = naming::READINESS;
            return self.nack(
                LISTENER,
                name,
                format!("{path}.filter_chains"),
                format!(
                    "no plaintext chain routes /ready to {} ({}), as Kuma's admin listener does",
                    readiness.legacy, readiness.unified
                ),
            );
        }
        self.kuma_endpoints.ready = Some(address);
    }

    /// `kuma:readiness`: where kuma-dp's readiness reporter listens (loopback and
    /// `--readiness-port`, as the bootstrap request told kuma-cp).
    fn readiness_reporter(&mut self, name: &str, cluster: &cluster_pb::Cluster) {
        let address = cluster
            .load_assignment
            .iter()
            .flat_map(|a| &a.endpoints)
            .flat_map(|l| &l.lb_endpoints)
            .find_map(|e| match &e.host_identifier {
                Some(endpoint_pb::lb_endpoint::HostIdentifier::Endpoint(e)) => Some(e),
                _ => None,
            })
            .map(|e| match &e.address {
                // kuma-cp with Envoy's admin on a Unix socket: kuma-dp's reporter is
                // reached there; Bearing answers `/ready` on the admin listener itself.
                Some(core_pb::Address {
                    address: Some(core_pb::address::Address::Pipe(_)),
                }) => Ok(None),
                address => socket_address(address.as_ref()).map(Some),
            });
        let path = cluster_path(name);
        match address {
            Some(Ok(a)) => self.kuma_endpoints.readiness_reporter = a.filter(|a| a.port() != 0),
            Some(Err(e)) => self.nack(CLUSTER, name, format!("{path}.load_assignment"), e),
            None => self.nack(
                CLUSTER,
                name,
                format!("{path}.load_assignment"),
                "the readiness reporter's cluster has no endpoint",
            ),
        }
    }

    /// `kuma:metrics:prometheus`: the Mesh's Prometheus backend, answered with Bearing's
    /// metrics where kuma-dp's hijacker would merge Envoy's. The route's rewrite carries
    /// Envoy's stats filter for the hijacker (`?filter=...&usedonly`), which has no effect
    /// on Bearing's own metrics. Its chains, as Envoy chooses among them: the one without a
    /// match serves every scraper, in plaintext or over its TLS (mesh mTLS, or files); plaintext
    /// chains matching `source_prefix_ranges` (kuma-cp's for the Dataplane scraping itself)
    /// serve those sources in plaintext; a chain for `transport_protocol: tls` is never chosen,
    /// as no listener filter detects TLS there (Envoy sees `raw_buffer`; kuma-cp's `providedTLS`
    /// mode puts its plaintext chain there, its TLS chain serving everyone).
    fn prometheus_listener(&mut self, name: &str, listener: &listener_pb::Listener) {
        let path = listener_path(name);
        let mut found = fields::unhandled_in(
            "envoy.config.listener.v3.Listener",
            &listener.encode_to_vec(),
            &path,
        );
        // Source matches and the certificate files of `providedTLS` are read below.
        let certificate_file = |p: &str| {
            p.contains(".common_tls_context.tls_certificates[")
                && (p.ends_with(".certificate_chain.filename")
                    || p.ends_with(".private_key.filename"))
        };
        found.retain(|u| {
            !u.path.ends_with(".prefix_rewrite")
                && !u.path.ends_with(".filter_chain_match.source_prefix_ranges")
                && !certificate_file(&u.path)
        });
        let before = self.nacks.len();
        self.unhandled(LISTENER, name, found);
        let address = match socket_address(listener.address.as_ref()) {
            Ok(a) => a,
            Err(e) => return self.nack(LISTENER, name, format!("{path}.address"), e),
        };
        let mut tls = None;
        let mut everyone = false;
        let mut plaintext_sources = Vec::new();
        let mut routes = Vec::new();
        for (i, chain) in listener.filter_chains.iter().enumerate() {
            let at = format!("{path}.filter_chains[{i}]");
            let matched = chain.filter_chain_match.clone().unwrap_or_default();
            match matched.transport_protocol.as_str() {
                "tls" => continue,
                "" | "raw_buffer" => {}
                other => {
                    let field = format!("{at}.filter_chain_match.transport_protocol");
                    self.nack(LISTENER, name, field, format!("transport protocol {other:?} is not implemented on the metrics listener"));
                    continue;
                }
            }
            let mut sources = Vec::new();
            for (k, range) in matched.source_prefix_ranges.iter().enumerate() {
                match (
                    range.address_prefix.parse(),
                    range.prefix_len.as_ref().map(|l| l.value),
                ) {
                    (Ok(address), len) if len.unwrap_or(0) <= 128 => sources.push(SourcePrefix {
                        address,
                        len: len.map_or(
                            if matches!(address, IpAddr::V4(_)) {
                                32
                            } else {
                                128
                            },
                            |l| l as u8,
                        ),
                    }),
                    _ => self.nack(
                        LISTENER,
                        name,
                        format!("{at}.filter_chain_match.source_prefix_ranges[{k}]"),
                        format!(
                            "{:?}/{:?} is not an IP prefix",
                            range.address_prefix,
                            range.prefix_len.as_ref().map(|l| l.value)
                        ),
                    ),
                }
            }
            routes.extend(chain_prefix_routes(chain));
            match (matched.source_prefix_ranges.is_empty(), &chain.transport_socket) {
                (true, _) if everyone => self.nack(LISTENER, name, format!("{at}.filter_chain_match"), "a second chain for every scraper: Envoy would refuse the listener"),
                (true, socket) => {
                    everyone = true;
                    tls = socket.as_ref().and_then(|s| self.metrics_tls(name, &format!("{at}.transport_socket"), s));
                }
                (false, None) => plaintext_sources.extend(sources),
                (false, Some(_)) => self.nack(LISTENER, name, format!("{at}.transport_socket"), "TLS on a chain matched by source is not implemented (kuma-cp's source chain is plaintext)"),
            }
        }
        if !everyone {
            self.nack(LISTENER, name, format!("{path}.filter_chains"), "no chain without a match: scrapers from other sources would be refused, which is not implemented");
        }
        let first = routes.first().cloned();
        match first {
            Some((prefix, cluster))
                if cluster == HIJACKER_CLUSTER && routes.iter().all(|r| r.0 == prefix && r.1 == cluster) =>
            {
                if self.nacks.len() == before {
                    self.kuma_endpoints.prometheus = Some(PrometheusEndpoint {
                        address,
                        path: prefix,
                        // From the bootstrap, not xDS: the config source adds them.
                        applications: Vec::new(),
                        tls,
                        plaintext_sources,
                    });
                }
            }
            _ => self.nack(
                LISTENER,
                name,
                format!("{path}.filter_chains"),
                format!("expected every chain to route one prefix to {HIJACKER_CLUSTER}, as Kuma's Prometheus listener does"),
            ),
        }
    }

    /// The TLS a metrics chain terminates: a certificate from files (`providedTLS`, no client
    /// certificate), else mesh mTLS as on inbound listeners (`activeMTLSBackend`).
    fn metrics_tls(
        &mut self,
        name: &str,
        at: &str,
        socket: &core_pb::TransportSocket,
    ) -> Option<MetricsTls> {
        let any = self.socket_config(LISTENER, name, at, socket)?;
        let ctx = typed::<tls_pb::DownstreamTlsContext>(any)
            .filter(|_| type_name(any).ends_with("DownstreamTlsContext"))?;
        let common = ctx.common_tls_context.clone().unwrap_or_default();
        if common.tls_params.is_some() {
            let field = format!(
                "{at}.typed_config({}).common_tls_context.tls_params",
                type_name(any)
            );
            let reason = "TLS parameters on the metrics listener are not implemented (kuma-cp renders none there)";
            self.nack(LISTENER, name, field, reason);
            return None;
        }
        if common.tls_certificates.is_empty() {
            let mesh = self.downstream_tls(name, at, socket)?.mesh;
            self.meshes.insert(mesh.clone());
            return Some(MetricsTls::Mesh(mesh));
        }
        let at = format!(
            "{at}.typed_config({}).common_tls_context.tls_certificates",
            type_name(any)
        );
        let filename = |source: &Option<core_pb::DataSource>| match source
            .as_ref()
            .and_then(|d| d.specifier.as_ref())
        {
            Some(core_pb::data_source::Specifier::Filename(f)) if !f.is_empty() => Some(f.clone()),
            _ => None,
        };
        match common.tls_certificates.as_slice() {
            [_] if ctx
                .require_client_certificate
                .as_ref()
                .is_some_and(|b| b.value) =>
            {
                self.nack(LISTENER, name, at, "client certificates beside a certificate from files are not implemented on the metrics listener");
                None
            }
            [cert] => match (
                filename(&cert.certificate_chain),
                filename(&cert.private_key),
            ) {
                (Some(cert_path), Some(key_path)) => Some(MetricsTls::Files {
                    cert_path,
                    key_path,
                }),
                _ => {
                    self.nack(LISTENER, name, format!("{at}[0]"), "the metrics certificate and key must be files (kuma-dp's --metrics-cert-path and --metrics-key-path)");
                    None
                }
            },
            _ => {
                self.nack(
                    LISTENER,
                    name,
                    at,
                    "the metrics listener presents exactly one certificate",
                );
                None
            }
        }
    }

    fn dynamic_config(&mut self, name: &str, listener: &listener_pb::Listener) {
        let path = listener_path(name);
        for (i, chain) in listener.filter_chains.iter().enumerate() {
            for (j, filter) in chain.filters.iter().enumerate() {
                let Some(listener_pb::filter::ConfigType::TypedConfig(any)) = &filter.config_type
                else {
                    continue;
                };
                let Some(hcm) = typed::<hcm_pb::HttpConnectionManager>(any) else {
                    continue;
                };
                let Some(hcm_pb::http_connection_manager::RouteSpecifier::RouteConfig(rc)) =
                    hcm.route_specifier
                else {
                    continue;
                };
                for (k, vhost) in rc.virtual_hosts.iter().enumerate() {
                    for (r, route) in vhost.routes.iter().enumerate() {
                        let at = format!("{path}.filter_chains[{i}].filters[{j}].route_config.virtual_hosts[{k}].routes[{r}]");
                        let Some(m) = &route.r#match else { continue };
                        let Some(route_pb::route_match::PathSpecifier::Path(p)) = &m.path_specifier
                        else {
                            continue;
                        };
                        let Some(route_pb::route::Action::DirectResponse(d)) = &route.action else {
                            continue;
                        };
                        if d.status != 200 {
                            continue; // the 304 answer to If-None-Match
                        }
                        if p != "/dns" {
                            self.nack(
                                LISTENER,
                                name,
                                format!("{at}.match.path"),
                                format!("dynamic config {p} is not implemented (only /dns)"),
                            );
                            continue;
                        }
                        match data_text(d.body.as_ref()).map(|b| dns_records(&b)) {
                            Some(Ok(records)) => self.dns.extend(records),
                            Some(Err(e)) => {
                                self.nack(LISTENER, name, format!("{at}.direct_response.body"), e)
                            }
                            None => self.nack(
                                LISTENER,
                                name,
                                format!("{at}.direct_response.body"),
                                "missing",
                            ),
                        }
                    }
                }
            }
        }
    }

    /// `kuma:dns`: Envoy's UDP DNS filter with an inline table.
    fn dns_filter(&mut self, name: &str, listener: &listener_pb::Listener) {
        use dns_pb::dns_filter_config::server_context_config::ConfigSource;
        use envoy_types::pb::envoy::data::dns::v3::dns_table::dns_endpoint::EndpointConfig;
        let path = listener_path(name);
        for (i, f) in listener.listener_filters.iter().enumerate() {
            let Some(listener_pb::listener_filter::ConfigType::TypedConfig(any)) = &f.config_type
            else {
                continue;
            };
            let Some(config) = typed::<dns_pb::DnsFilterConfig>(any)
                .filter(|_| type_name(any).ends_with("DnsFilterConfig"))
            else {
                self.nack(
                    LISTENER,
                    name,
                    format!("{path}.listener_filters[{i}]"),
                    "only Kuma's dns_filter is understood on kuma:dns",
                );
                continue;
            };
            let Some(ConfigSource::InlineDnsTable(table)) =
                config.server_config.and_then(|s| s.config_source)
            else {
                self.nack(
                    LISTENER,
                    name,
                    format!("{path}.listener_filters[{i}].typed_config.server_config"),
                    "only an inline DNS table is implemented",
                );
                continue;
            };
            for (k, domain) in table.virtual_domains.iter().enumerate() {
                let Some(EndpointConfig::AddressList(list)) = domain
                    .endpoint
                    .as_ref()
                    .and_then(|e| e.endpoint_config.clone())
                else {
                    self.nack(LISTENER, name, format!("{path}.listener_filters[{i}].typed_config.server_config.inline_dns_table.virtual_domains[{k}].endpoint"), "only address lists are implemented");
                    continue;
                };
                match list.address.iter().map(|a| a.parse::<IpAddr>()).collect::<Result<Vec<_>, _>>() {
                    Ok(ips) => self.dns.push(DnsRecord { name: domain.name.trim_end_matches('.').to_ascii_lowercase(), ips }),
                    Err(e) => self.nack(LISTENER, name, format!("{path}.listener_filters[{i}].typed_config.server_config.inline_dns_table.virtual_domains[{k}].endpoint.address_list"), e.to_string()),
                }
            }
        }
    }

    /// Secrets and endpoint assignments get the field guard. Route configurations are
    /// walked where a gateway listener names them; one no listener names serves nothing (as
    /// Envoy holds only those its listeners request).
    fn check_other_resources(&mut self) {
        let set = self.set;
        let secret = "envoy.extensions.transport_sockets.tls.v3.Secret";
        self.walk_resources(SECRET, secret, "secrets", &set.secrets);
        let assignment = "envoy.config.endpoint.v3.ClusterLoadAssignment";
        self.walk_resources(
            CLUSTER_LOAD_ASSIGNMENT,
            assignment,
            "endpoints",
            &set.endpoints,
        );
    }

    /// Walks every resource of one type with the field guard.
    fn walk_resources<M: Message>(
        &mut self,
        type_url: &str,
        message: &str,
        kind: &str,
        resources: &BTreeMap<String, M>,
    ) {
        for (name, resource) in resources {
            let path = format!("{kind}[{name:?}]");
            let found = fields::unhandled_in(message, &resource.encode_to_vec(), &path);
            self.unhandled(type_url, name, found);
        }
    }

    /// Records that `listener` reaches `cluster` with `protocol` (by the route at `at`); an
    /// HTTP route's protocol wins over a TCP proxy's (which ignores the cluster's HTTP
    /// options, as Envoy's). A route table's routes carry their own timeouts; the routes that
    /// cannot (plain listeners, mirrors) give the cluster theirs, and two of them reaching one
    /// cluster with different timeouts are NACKed.
    fn route_to(
        &mut self,
        cluster: String,
        protocol: Protocol,
        timeout: ClusterTimeout,
        listener: &str,
        at: String,
    ) {
        let conflict = self.routed.get(&cluster).and_then(
            |Routed {
                 protocol: p,
                 timeout: t,
                 ..
             }| match (*t, timeout) {
                (ClusterTimeout::Exactly(other), ClusterTimeout::Exactly(this))
                    if p.is_http() && protocol.is_http() && other != this =>
                {
                    Some((other, this))
                }
                _ => None,
            },
        );
        if let Some((other, this)) = conflict {
            // Kuma's routes differ in timeout only by a MeshTimeout.
            let reason = format!("timeouts: {POLICY_NOT_ENFORCED} (plain listeners or mirrors to cluster {cluster:?} with different timeouts, {other:?} and {this:?}: a cluster holds one)");
            return self.nack(LISTENER, listener, at, reason);
        }
        let routed = Routed {
            protocol,
            timeout,
            listener: listener.to_string(),
        };
        match self.routed.entry(cluster) {
            Entry::Vacant(v) => {
                v.insert(routed);
            }
            Entry::Occupied(mut r) if protocol.is_http() => {
                let r = r.get_mut();
                let kept_timeout = match routed.timeout {
                    ClusterTimeout::Any if r.protocol.is_http() => r.timeout,
                    t => t,
                };
                *r = Routed {
                    timeout: kept_timeout,
                    ..routed
                };
            }
            Entry::Occupied(_) => {}
        }
    }

    /// Gives each cluster the protocol of the routes that reach it, the request timeout
    /// of those that hold it there (else Envoy's 15 s default stays).
    fn apply_routes(&mut self) {
        for (cluster_name, routed) in std::mem::take(&mut self.routed) {
            let Routed {
                protocol,
                timeout,
                listener,
            } = routed;
            let Some(cluster) = self.clusters.get_mut(&cluster_name) else {
                if !self.nacks.iter().any(|n| n.resource == cluster_name) {
                    self.awaits(
                        LISTENER,
                        &listener,
                        listener_path(&listener),
                        format!("cluster {cluster_name:?} is not among the Cluster resources"),
                    );
                }
                continue;
            };
            if protocol.is_http() {
                cluster.protocol = match (cluster.protocol, protocol) {
                    (Protocol::Http2, Protocol::Grpc) => Protocol::Grpc,
                    (Protocol::Tcp, p) => p,
                    (p, _) => p,
                };
                if let ClusterTimeout::Exactly(timeout) = timeout {
                    cluster.request_timeout = timeout;
                }
            } else {
                cluster.protocol = Protocol::Tcp;
            }
        }
    }

    /// Mesh mTLS material from the SDS secrets of every mesh a listener or cluster uses.
    fn mesh_tls(&mut self) -> BTreeMap<String, MeshTls> {
        let mut services: Vec<String> = self
            .listeners
            .iter()
            .filter(|l| l.direction == Direction::Inbound && !l.service.is_empty())
            .map(|l| l.service.clone())
            .collect();
        services.sort();
        services.dedup();
        let mut out = BTreeMap::new();
        for mesh in std::mem::take(&mut self.meshes) {
            let secrets = self.mesh_secrets.remove(&mesh).unwrap_or_default();
            let identity_name = secrets
                .identity
                .unwrap_or_else(|| format!("identity_cert:secret:{mesh}"));
            let ca_name = secrets
                .ca
                .unwrap_or_else(|| format!("mesh_ca:secret:{mesh}"));
            let absent = [&identity_name, &ca_name]
                .into_iter()
                .find(|n| !self.set.secrets.contains_key(*n));
            if let Some(secret) = absent {
                self.await_secret(SECRET, secret, format!("secrets[{secret:?}]"), secret);
                continue;
            }
            let identity = match self
                .set
                .secrets
                .get(&identity_name)
                .and_then(|s| s.r#type.as_ref())
            {
                Some(tls_pb::secret::Type::TlsCertificate(cert)) => {
                    match (
                        data_text(cert.certificate_chain.as_ref()),
                        data_text(cert.private_key.as_ref()),
                    ) {
                        (Some(chain), Some(key)) => Some(format!("{chain}\n{key}")),
                        _ => None,
                    }
                }
                _ => None,
            };
            let Some(identity_pem) = identity else {
                self.nack(
                    SECRET,
                    &identity_name,
                    format!("secrets[{identity_name:?}].tls_certificate"),
                    "a mesh identity needs an inline certificate chain and private key",
                );
                continue;
            };
            // Loaded as the runtime loads them, so a Secret that cannot serve is NACKed (the
            // last good config serving on, as Envoy refuses an SDS update that fails to
            // load) instead of being applied and then refusing every mTLS connection.
            if let Err(e) = bearing_tls::load_identity_pem(&identity_pem, &identity_pem) {
                self.nack(
                    SECRET,
                    &identity_name,
                    format!("secrets[{identity_name:?}].tls_certificate"),
                    format!("the mesh identity does not load: {e}"),
                );
                continue;
            }
            let leaf_lifetime = bearing_tls::leaf_validity(&identity_pem)
                .map(|(from, until)| until.duration_since(from).unwrap_or_default())
                .unwrap_or_default();
            let client_prefix = secrets.client_prefix;
            let (ca_cert_pem, spiffe_trust) = match self.spiffe_bundles(&ca_name) {
                Some(Ok(bundles)) => {
                    match own_bundle(&identity_pem, &bundles) {
                        Some(own) => (own, bundles),
                        None => {
                            self.nack(SECRET, &ca_name, format!("secrets[{ca_name:?}].validation_context.custom_validator_config"), format!("the identity {identity_name:?} chains to no trust domain's bundle"));
                            continue;
                        }
                    }
                }
                Some(Err(reason)) => {
                    let field =
                        format!("secrets[{ca_name:?}].validation_context.custom_validator_config");
                    self.nack(SECRET, &ca_name, field, reason);
                    continue;
                }
                None => match self.secret_ca(&ca_name) {
                    Some(pem) => (pem, BTreeMap::new()),
                    None => {
                        self.nack(
                            SECRET,
                            &ca_name,
                            format!("secrets[{ca_name:?}].validation_context.trusted_ca"),
                            "the mesh CA secret has no inline trusted CA",
                        );
                        continue;
                    }
                },
            };
            if let Err(e) = bearing_tls::MeshCa::from_cert_pem(&ca_cert_pem) {
                self.nack(
                    SECRET,
                    &ca_name,
                    format!("secrets[{ca_name:?}].validation_context.trusted_ca"),
                    format!("the mesh CA does not load: {e}"),
                );
                continue;
            }
            // A gateway's listeners name no service: its identity's SANs do.
            let own_services = match services.is_empty() {
                true => bearing_tls::leaf_spiffe_services(&identity_pem, &mesh).unwrap_or_default(),
                false => services.clone(),
            };
            out.insert(
                mesh.clone(),
                MeshTls {
                    permissive: self.permissive.contains(&mesh),
                    mesh,
                    backend: "kuma-cp (SDS)".into(),
                    ca_cert_pem,
                    ca_key_pem: None,
                    services: own_services,
                    identity_pem: Some(identity_pem),
                    // The SDS leaf's own lifetime; not renewed here: kuma-cp pushes the
                    // renewed secret.
                    leaf_lifetime,
                    renewed_by_control_plane: true,
                    spiffe_trust,
                    client_prefix,
                },
            );
        }
        out
    }

    /// A validation secret's SPIFFE trust (MeshTrust's `envoy.tls.cert_validator.spiffe`):
    /// trust domain → inline bundle; `None` when the secret has no custom validator. Another
    /// validator, a bundle not inline or one that does not load is the reason to NACK.
    fn spiffe_bundles(&self, secret: &str) -> Option<Result<BTreeMap<String, String>, String>> {
        let Some(tls_pb::secret::Type::ValidationContext(v)) =
            self.set.secrets.get(secret)?.r#type.as_ref()
        else {
            return None;
        };
        let custom = v.custom_validator_config.as_ref()?;
        let config = custom
            .typed_config
            .as_ref()
            .filter(|any| type_name(any).ends_with("SPIFFECertValidatorConfig"))
            .and_then(typed::<tls_pb::SpiffeCertValidatorConfig>);
        let Some(config) = config else {
            return Some(Err(format!("certificate validator {:?}: only Envoy's SPIFFE validator (envoy.tls.cert_validator.spiffe) is implemented", custom.name)));
        };
        if v.trusted_ca.is_some() {
            return Some(Err(
                "trusted_ca beside a SPIFFE validator: the trust domains' bundles are the roots"
                    .into(),
            ));
        }
        let mut bundles = BTreeMap::new();
        for domain in &config.trust_domains {
            let Some(pem) = data_text(domain.trust_bundle.as_ref()) else {
                return Some(Err(format!(
                    "trust domain {:?}: only an inline trust bundle is implemented",
                    domain.name
                )));
            };
            bundles.insert(domain.name.clone(), pem);
        }
        if bundles.is_empty() {
            return Some(Err(
                "a SPIFFE validator without trust domains trusts no peer".into(),
            ));
        }
        if let Err(e) = bearing_tls::SpiffeTrust::from_pems(&bundles) {
            return Some(Err(format!("the SPIFFE trust does not load: {e}")));
        }
        Some(Ok(bundles))
    }

    /// Whether `secret` is a validation secret of MeshTrust's SPIFFE validator.
    fn is_spiffe_secret(&self, secret: &str) -> bool {
        self.spiffe_bundles(secret).is_some()
    }
}

/// The bundle of the trust domain that issued this proxy's identity (`identity_pem`): the
/// CA the runtime checks its own leaf against.
fn own_bundle(identity_pem: &str, bundles: &BTreeMap<String, String>) -> Option<String> {
    let domain = bearing_tls::own_trust_domain(identity_pem, bundles)?;
    bundles.get(domain).cloned()
}

/// The prefix routes to a cluster of a listener's plaintext chains' inline HTTP routes:
/// (prefix, cluster).
fn plain_prefix_routes(
    listener: &listener_pb::Listener,
) -> impl Iterator<Item = (String, String)> + '_ {
    listener
        .filter_chains
        .iter()
        .filter(|chain| chain.transport_socket.is_none())
        .flat_map(chain_prefix_routes)
}

/// The prefix routes (prefix, cluster) of a chain's HTTP connection managers.
fn chain_prefix_routes(
    chain: &listener_pb::FilterChain,
) -> impl Iterator<Item = (String, String)> + '_ {
    chain
        .filters
        .iter()
        .filter_map(|filter| match &filter.config_type {
            Some(listener_pb::filter::ConfigType::TypedConfig(any)) => {
                typed::<hcm_pb::HttpConnectionManager>(any)
            }
            _ => None,
        })
        .filter_map(|hcm| match hcm.route_specifier {
            Some(hcm_pb::http_connection_manager::RouteSpecifier::RouteConfig(rc)) => Some(rc),
            _ => None,
        })
        .flat_map(|rc| rc.virtual_hosts.into_iter().flat_map(|v| v.routes))
        .filter_map(|route| {
            let prefix = match route.r#match?.path_specifier? {
                route_pb::route_match::PathSpecifier::Prefix(p) => p,
                _ => return None,
            };
            let cluster = match route.action? {
                route_pb::route::Action::Route(action) => match action.cluster_specifier? {
                    route_pb::route_action::ClusterSpecifier::Cluster(c) => c,
                    _ => return None,
                },
                _ => return None,
            };
            Some((prefix, cluster))
        })
}

/// An ORIGINAL_DST cluster as seen from a listener that claims connections by its own
/// address: a static cluster of that address, named after the listener.
fn direct_cluster(
    original: &cluster_pb::Cluster,
    listener: &str,
    address: SocketAddr,
) -> cluster_pb::Cluster {
    use core_pb::socket_address::PortSpecifier;
    let endpoint = endpoint_pb::LbEndpoint {
        host_identifier: Some(endpoint_pb::lb_endpoint::HostIdentifier::Endpoint(
            endpoint_pb::Endpoint {
                address: Some(core_pb::Address {
                    address: Some(core_pb::address::Address::SocketAddress(
                        core_pb::SocketAddress {
                            address: address.ip().to_string(),
                            port_specifier: Some(PortSpecifier::PortValue(address.port().into())),
                            ..Default::default()
                        },
                    )),
                }),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let mut cluster = original.clone();
    cluster.name = listener.to_string();
    cluster.cluster_discovery_type = Some(cluster_pb::cluster::ClusterDiscoveryType::Type(
        cluster_pb::cluster::DiscoveryType::Static as i32,
    ));
    cluster.lb_policy = cluster_pb::cluster::LbPolicy::RoundRobin as i32;
    cluster.load_assignment = Some(endpoint_pb::ClusterLoadAssignment {
        cluster_name: listener.to_string(),
        endpoints: vec![endpoint_pb::LocalityLbEndpoints {
            lb_endpoints: vec![endpoint],
            ..Default::default()
        }],
        ..Default::default()
    });
    cluster
}

/// The resource playing `role`, in either of Kuma's namings (the legacy one first).
fn role_resource<'s, R>(
    resources: &'s BTreeMap<String, R>,
    role: &Role,
) -> Option<(&'s str, &'s R)> {
    role.names()
        .into_iter()
        .find_map(|n| resources.get_key_value(n))
        .map(|(name, r)| (name.as_str(), r))
}

fn cluster_type(cluster: &cluster_pb::Cluster) -> i32 {
    match cluster.cluster_discovery_type {
        Some(cluster_pb::cluster::ClusterDiscoveryType::Type(t)) => t,
        _ => -1,
    }
}

/// Whether two SNI chains serve their HTTP alike: the same protocol and route tables that
/// differ at most in where each route came from (its chain's field path).
fn same_http(a: &Option<SniHttp>, b: &Option<SniHttp>) -> bool {
    let served = |h: &Option<SniHttp>| {
        let mut h = h.clone();
        let tables = h.iter_mut().flat_map(|h| h.routes.iter_mut());
        for route in tables.flat_map(|t| t.virtual_hosts.iter_mut().flat_map(|v| &mut v.routes)) {
            route.origin.clear();
        }
        h
    };
    served(a) == served(b)
}

/// The transport an endpoint selects (Envoy's `transport_socket_matches`): the first match
/// whose every `match` field the endpoint's `envoy.transport_socket_match` metadata holds with
/// the same value; `None`: the cluster's `transport_socket`.
fn transport_match(
    matches: &[(TlsMatch, Struct)],
    metadata: Option<&core_pb::Metadata>,
) -> Option<String> {
    let own = metadata.and_then(|m| m.filter_metadata.get("envoy.transport_socket_match"));
    matches
        .iter()
        .find(|(_, selector)| {
            selector
                .fields
                .iter()
                .all(|(k, v)| own.and_then(|o| o.fields.get(k)) == Some(v))
        })
        .map(|(m, _)| m.name.clone())
}

/// The SDS secret a TLS context validates its peer against.
fn validation_sds(common: &tls_pb::CommonTlsContext) -> Option<String> {
    use tls_pb::common_tls_context::ValidationContextType as V;
    match common.validation_context_type.as_ref()? {
        V::CombinedValidationContext(c) => c
            .validation_context_sds_secret_config
            .as_ref()
            .map(|s| s.name.clone()),
        V::ValidationContextSdsSecretConfig(s) => Some(s.name.clone()),
        _ => None,
    }
}

/// The exact subject alternative names a TLS context verifies (type, value).
/// The index of the first subject alt name matcher of a kind no TLS context verifies
/// (suffix, contains, regex: the string matcher kinds accepted for routes).
fn san_kinds(common: &tls_pb::CommonTlsContext) -> Option<usize> {
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern as M;
    use tls_pb::common_tls_context::ValidationContextType as V;
    let validation = match &common.validation_context_type {
        Some(V::ValidationContext(v)) => Some(v),
        Some(V::CombinedValidationContext(c)) => c.default_validation_context.as_ref(),
        _ => None,
    };
    validation?
        .match_typed_subject_alt_names
        .iter()
        .position(|m| {
            let pattern = m.matcher.as_ref().and_then(|m| m.match_pattern.as_ref());
            matches!(
                pattern,
                Some(M::Suffix(_) | M::Contains(_) | M::SafeRegex(_))
            )
        })
}

/// The subject alt name matchers of a TLS context's validation context.
fn validation_matchers(
    common: &tls_pb::CommonTlsContext,
) -> impl Iterator<Item = &tls_pb::SubjectAltNameMatcher> {
    use tls_pb::common_tls_context::ValidationContextType as V;
    let validation = match &common.validation_context_type {
        Some(V::ValidationContext(v)) => Some(v),
        Some(V::CombinedValidationContext(c)) => c.default_validation_context.as_ref(),
        _ => None,
    };
    validation
        .into_iter()
        .flat_map(|v| &v.match_typed_subject_alt_names)
}

/// The SPIFFE ids a mesh mTLS upstream accepts: the validation context's URI SAN matchers,
/// exact or prefix, each of a `spiffe://` id; Envoy accepts the server when any SAN of its
/// certificate matches any of them. Else the matcher at fault (its index, if one) and why.
fn spiffe_matchers(
    common: &tls_pb::CommonTlsContext,
) -> Result<Vec<SpiffeMatcher>, (Option<usize>, &'static str)> {
    let mut out = Vec::new();
    for (i, m) in validation_matchers(common).enumerate() {
        if m.san_type != tls_pb::subject_alt_name_matcher::SanType::Uri as i32 {
            return Err((
                Some(i),
                "mesh mTLS upstreams verify URI SANs (SPIFFE ids) only",
            ));
        }
        let matcher = match m.matcher.as_ref().and_then(|m| m.match_pattern.as_ref()) {
            Some(StringPattern::Exact(id)) => SpiffeMatcher::Exact(id.clone()),
            Some(StringPattern::Prefix(prefix)) => SpiffeMatcher::Prefix(prefix.clone()),
            _ => return Err((Some(i), "SPIFFE ids are verified exactly or by prefix")),
        };
        if !matcher.value().starts_with("spiffe://") {
            return Err((
                Some(i),
                "a mesh server's identity is a SPIFFE id (spiffe://...)",
            ));
        }
        out.push(matcher);
    }
    match out.is_empty() {
        true => Err((None, "mesh mTLS upstreams verify at least one SPIFFE id")),
        false => Ok(out),
    }
}

fn subject_alt_names(common: &tls_pb::CommonTlsContext) -> Vec<(i32, String)> {
    validation_matchers(common)
        .filter_map(|m| match m.matcher.as_ref()?.match_pattern.as_ref()? {
            envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Exact(e) => {
                Some((m.san_type, e.clone()))
            }
            _ => None,
        })
        .collect()
}

/// A data source's inline bytes or string (`None` for a file or an environment variable).
fn data_bytes(source: &core_pb::DataSource) -> Option<Vec<u8>> {
    use core_pb::data_source::Specifier;
    match source.specifier.as_ref()? {
        Specifier::InlineBytes(b) => Some(b.clone()),
        Specifier::InlineString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

pub(crate) fn data_text(source: Option<&core_pb::DataSource>) -> Option<String> {
    use core_pb::data_source::Specifier;
    match source?.specifier.as_ref()? {
        Specifier::InlineBytes(b) => String::from_utf8(b.clone()).ok(),
        Specifier::InlineString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Kuma's DNS table JSON (`{records: [{name, ips}], ttl, ...}`).
fn dns_records(body: &str) -> Result<Vec<DnsRecord>, String> {
    let json: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("DNS table is not JSON: {e}"))?;
    let records = json["records"]
        .as_array()
        .ok_or("DNS table without `records`")?;
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let name = r["name"]
                .as_str()
                .ok_or(format!("records[{i}].name missing"))?;
            let ips = r["ips"]
                .as_array()
                .ok_or(format!("records[{i}].ips missing"))?
                .iter()
                .map(|ip| {
                    ip.as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or(format!("records[{i}].ips: {ip} is not an IP"))
                })
                .collect::<Result<_, _>>()?;
            Ok(DnsRecord {
                name: name.trim_end_matches('.').to_ascii_lowercase(),
                ips,
            })
        })
        .collect()
}

/// The destination a zone proxy's SNI names, in Kuma's tags or hashed resource form, and
/// the tags (beyond `mesh`) that narrow its endpoints.
fn sni_target(sni: &str) -> Result<(SniTarget, BTreeMap<String, String>), String> {
    if let Some(parsed) = bearing_tls::parse_tags_sni(sni) {
        let tags = parsed
            .tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let target = SniTarget::Service {
            mesh: parsed.mesh.to_string(),
            service: parsed.service.to_string(),
        };
        return Ok((target, tags));
    }
    if let Some(r) = bearing_tls::parse_resource_sni(sni) {
        let (mesh, name, port) = (r.mesh.to_string(), r.name.to_string(), r.port);
        let target = match r.kind {
            bearing_tls::ResourceKind::MeshService => SniTarget::MeshService { mesh, name, port },
            bearing_tls::ResourceKind::MeshExternalService => {
                SniTarget::MeshExternalService { mesh, name, port }
            }
            kind => {
                return Err(format!(
                    "SNI {sni:?} names a {kind:?}, which Bearing's SNI routes do not hold"
                ))
            }
        };
        return Ok((target, BTreeMap::new()));
    }
    if let Some(kri) = bearing_tls::parse_kri_sni(sni) {
        // Matched byte for byte, as the zone ingress routes it (MADR 101: the SNI is derived
        // from the resource's KRI, so equal resources give equal bytes).
        let target = SniTarget::Kri {
            mesh: kri.mesh.to_string(),
            sni: sni.to_string(),
        };
        return Ok((target, BTreeMap::new()));
    }
    Err(format!(
        "SNI {sni:?} is not a Kuma SNI form Bearing routes by"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode_raw, parse_golden};
    use bearing_proxy_config::{
        HeaderMatch, PathMatch, PathRewrite, Redirect, RouteAction, ValueMatch,
    };
    use bearing_proxy_config::{
        RbacAction, RbacDecision, RbacEngine, RbacInput, RbacMatch, RbacMatcher, RbacPermission,
        RbacPolicy, RbacPredicate, RbacPrincipal, RbacRules, RbacString,
    };

    /// A CA certificate valid for one day from 2026-01-01 and its key (PEM), standing for
    /// both mesh Secrets.
    pub(crate) fn test_ca() -> &'static (String, String) {
        static PEM: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
        PEM.get_or_init(|| {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.not_before = rcgen::date_time_ymd(2026, 1, 1);
            params.not_after = rcgen::date_time_ymd(2026, 1, 2);
            let key = rcgen::KeyPair::generate().unwrap();
            (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
        })
    }

    fn set(yaml: &str) -> ResourceSet {
        let mut set = ResourceSet::default();
        for raw in parse_golden(yaml, "test.yaml").unwrap() {
            let r = decode_raw(&raw, "test.yaml").unwrap();
            set.insert(&r.name, &r.resource.type_url, &r.resource.value)
                .unwrap();
        }
        set
    }

    fn node() -> NodeInfo {
        NodeInfo {
            name: "web-1".into(),
            mesh: "default".into(),
            proxy_type: "dataplane".into(),
            source: "test".into(),
        }
    }

    /// The mesh `default`'s SDS Secrets: its identity and its CA ([`test_ca`] for both).
    pub(crate) fn secrets() -> String {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        format!(
            r#"
- name: identity_cert:secret:default
  resource:
    '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
    name: identity_cert:secret:default
    tlsCertificate:
      certificateChain: {{inlineBytes: {c}}}
      privateKey: {{inlineBytes: {k}}}
- name: mesh_ca:secret:default
  resource:
    '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
    name: mesh_ca:secret:default
    validationContext:
      trustedCa: {{inlineBytes: {c}}}
"#,
            c = b64(&test_ca().0),
            k = b64(&test_ca().1),
        )
    }

    const MTLS: &str = r#"
        transportSocket:
          name: envoy.transport_sockets.tls
          typedConfig:
            '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
            requireClientCertificate: true
            commonTlsContext:
              alpnProtocols: [kuma]
              tlsCertificateSdsSecretConfigs:
              - name: identity_cert:secret:default
                sdsConfig: {ads: {}, resourceApiVersion: V3}
              combinedValidationContext:
                defaultValidationContext:
                  matchTypedSubjectAltNames:
                  - sanType: URI
                    matcher: {prefix: 'spiffe://default/'}
                validationContextSdsSecretConfig:
                  name: mesh_ca:secret:default
                  sdsConfig: {ads: {}, resourceApiVersion: V3}"#;

    fn inbound(rbac: &str) -> String {
        let tcp = r#"
          - name: envoy.filters.network.tcp_proxy
            typedConfig:
              '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
              cluster: localhost:8080
              idleTimeout: 7200s
              statPrefix: localhost_8080"#;
        format!(
            r#"resources:
- name: localhost:8080
  resource:
    '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
    name: localhost:8080
    type: STATIC
    connectTimeout: 10s
    loadAssignment:
      clusterName: localhost:8080
      endpoints:
      - lbEndpoints:
        - endpoint: {{address: {{socketAddress: {{address: 127.0.0.1, portValue: 8080}}}}}}
- name: inbound:10.0.0.1:80
  resource:
    '@type': type.googleapis.com/envoy.config.listener.v3.Listener
    name: inbound:10.0.0.1:80
    address: {{socketAddress: {{address: 10.0.0.1, portValue: 80}}}}
    trafficDirection: INBOUND
    metadata: {{filterMetadata: {{io.kuma.tags: {{kuma.io/service: web}}}}}}
    listenerFilters:
    - name: envoy.filters.listener.tls_inspector
      typedConfig: {{'@type': type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}
    filterChains:
    - filterChainMatch: {{transportProtocol: raw_buffer}}
      filters:{tcp}
    - filterChainMatch: {{transportProtocol: tls}}
      filters:{tcp}
    - filterChainMatch: {{transportProtocol: tls, applicationProtocols: [kuma]}}
      filters:
          - name: envoy.filters.network.rbac
            typedConfig:
              '@type': type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
              statPrefix: x
              rules: {rbac}{tcp}{mtls}
{secrets}"#,
            secrets = secrets(),
            mtls = MTLS.replace("\n  ", "\n"),
        )
    }

    const ALLOW_ALL: &str =
        "{policies: {allow: {permissions: [{any: true}], principals: [{any: true}]}}}";

    /// Two listeners on one address: the second by name is NACKed naming both and the
    /// address, as Envoy refuses a listener whose address another one has.
    #[test]
    fn two_listeners_on_one_address_are_nacked_naming_both() {
        let listener = |name: &str| {
            format!(
                "- name: {name}
  resource:
    '@type': type.googleapis.com/envoy.config.listener.v3.Listener
    name: {name}
    address: {{socketAddress: {{address: 10.0.0.1, portValue: 80}}}}
    filterChains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typedConfig: {{'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, statPrefix: c, cluster: c}}
"
            )
        };
        let cluster = "- name: c
  resource:
    '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
    name: c
    type: STATIC
    loadAssignment: {clusterName: c, endpoints: [{lbEndpoints: [{endpoint: {address: {socketAddress: {address: 127.0.0.1, portValue: 9000}}}}]}]}
";
        let one = format!("resources:\n{}{cluster}", listener("first"));
        assert!(translate(&set(&one), &node()).is_ok());
        let two = format!("{one}{}", listener("second"));
        let nacks = translate(&set(&two), &node()).unwrap_err();
        let [nack] = nacks.as_slice() else {
            panic!("{nacks:?}")
        };
        assert_eq!(nack.resource, "second");
        assert_eq!(nack.field, "listeners[\"second\"].address");
        assert!(
            nack.reason.contains("10.0.0.1:80") && nack.reason.contains("\"first\""),
            "{nack:?}"
        );
        assert!(!nack.awaiting);
    }

    /// A chain without filters closes (Envoy's "no filters"), a `direct_response` filter
    /// answers its inline bytes; a response from a file is NACKed by its field.
    #[test]
    fn direct_responses_and_empty_chains_answer_without_a_cluster() {
        let listener = |name: &str, port: u16, chain: &str| {
            format!(
                "- name: {name}
  resource:
    '@type': type.googleapis.com/envoy.config.listener.v3.Listener
    name: {name}
    address: {{socketAddress: {{address: 10.0.0.1, portValue: {port}}}}}
    filterChains:
    - {chain}
"
            )
        };
        let answer = "filters: [{name: d, typedConfig: {'@type': type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config, response: {inlineString: hi}}}]";
        let yaml = format!(
            "resources:\n{}{}",
            listener("outbound:10.0.0.1:80", 80, "{}"),
            listener("inbound:10.0.0.1:81", 81, answer)
        );
        let config = translate(&set(&yaml), &node()).unwrap();
        let answers: Vec<_> = config
            .listeners
            .iter()
            .map(|l| {
                (
                    l.name.as_str(),
                    l.direct_response.as_deref(),
                    l.cluster.as_str(),
                )
            })
            .collect();
        assert_eq!(
            answers,
            [
                ("inbound:10.0.0.1:81", Some(&b"hi"[..]), ""),
                ("outbound:10.0.0.1:80", Some(&b""[..]), "")
            ]
        );
        let from_file = answer.replace("inlineString: hi", "filename: /etc/motd");
        let yaml = format!("resources:\n{}", listener("l", 82, &from_file));
        let nacks = translate(&set(&yaml), &node()).unwrap_err();
        assert!(
            nacks.iter().any(|n| n.field.ends_with(".response")
                && n.reason.contains("inline bytes or string only")),
            "{nacks:?}"
        );
    }

    #[test]
    fn replace_type_replaces_one_type_and_names_what_does_not_decode() {
        let mut set = set(&inbound(ALLOW_ALL));
        let listeners = set.listeners.len();
        let cluster = cluster_pb::Cluster {
            name: "b".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let nacks = set.replace_type(
            CLUSTER,
            [("b", cluster.as_slice()), ("bad", &b"\xff\xff"[..])],
        );
        assert_eq!(set.clusters.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(set.listeners.len(), listeners, "other types kept");
        let [nack] = nacks.as_slice() else {
            panic!("{nacks:?}")
        };
        assert_eq!(
            (nack.resource.as_str(), nack.type_url.as_str()),
            ("bad", CLUSTER)
        );
        assert!(nack.reason.starts_with("does not decode"), "{nack}");
        assert!(set.replace_type(CLUSTER, []).is_empty());
        assert!(set.clusters.is_empty());
    }

    #[test]
    fn permissive_mtls_inbound_translates_with_sds_identity() {
        let config = translate(&set(&inbound(ALLOW_ALL)), &node()).unwrap();
        let [listener] = config.listeners.as_slice() else {
            panic!("{:?}", config.listeners)
        };
        assert_eq!(listener.name, "inbound:10.0.0.1:80");
        assert_eq!(listener.address, "10.0.0.1:80".parse().unwrap());
        assert_eq!(listener.direction, Direction::Inbound);
        assert_eq!(
            (listener.protocol, listener.cluster.as_str()),
            (Protocol::Tcp, "localhost:8080")
        );
        assert_eq!(listener.service, "web");
        assert!(listener.bind);
        assert_eq!(
            listener.tls,
            Some(DownstreamTls {
                mesh: "default".into(),
                params: None,
            })
        );
        let tls = &config.mtls["default"];
        assert!(tls.permissive);
        assert_eq!(tls.services, ["web"]);
        assert_eq!(tls.ca_cert_pem, test_ca().0);
        assert!(tls
            .identity_pem
            .as_deref()
            .is_some_and(|p| p.starts_with(&test_ca().0)));
        // The lifetime is the SDS leaf's own (notBefore to notAfter), renewed by kuma-cp.
        assert_eq!(tls.leaf_lifetime, Duration::from_secs(24 * 3600));
        assert!(tls.renewed_by_control_plane);
        let cluster = &config.clusters["localhost:8080"];
        assert_eq!(cluster.connect_timeout, Duration::from_secs(10));
        assert_eq!(
            cluster.endpoints[0].address,
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(config.version, config.content_version());
    }

    /// kuma-cp puts MeshRateLimit's connection bucket on each chain of a PERMISSIVE inbound;
    /// the runtime keeps a bucket per chain, so it translates, and chains asking different
    /// limits are NACKed by path.
    #[test]
    fn a_permissive_inbound_takes_a_connection_rate_limit_on_every_chain() {
        let tcp = "          - name: envoy.filters.network.tcp_proxy";
        let limit = format!(
            "          - name: envoy.filters.network.local_ratelimit
            typedConfig:
              '@type': type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit
              statPrefix: tcp_rate_limit
              tokenBucket: {{maxTokens: 2, tokensPerFill: 2, fillInterval: 60s}}
{tcp}"
        );
        let every = inbound(ALLOW_ALL).replace(tcp, &limit);
        let config = translate(&set(&every), &node()).unwrap();
        let bucket = config.listeners[0].connection_rate_limit.as_ref();
        assert_eq!(bucket.map(|b| b.max_tokens), Some(2));
        let one = inbound(ALLOW_ALL).replacen(tcp, &limit, 1);
        let nacks = translate(&set(&one), &node()).unwrap_err();
        let fields: Vec<_> = nacks.iter().map(|n| n.field.as_str()).collect();
        let chain = |i| format!("listeners[\"inbound:10.0.0.1:80\"].filter_chains[{i}].filters");
        assert_eq!(fields, [chain(1), chain(2)]);
        assert!(nacks
            .iter()
            .all(|n| n.reason.contains("different connection rate limits")));
    }

    /// kuma-cp 2.14's MeshTLS on a proxy without transparent proxying adds the inbound
    /// passthrough listeners on port 0, naming a cluster it does not send: as in Envoy (an
    /// ephemeral port nothing is redirected to) they change nothing.
    #[test]
    fn meshtls_inbound_passthrough_listeners_on_port_zero_take_no_traffic() {
        let passthrough = |family: u8, address: &str| {
            format!(
                "
- name: inbound:passthrough:ipv{family}
  resource:
    '@type': type.googleapis.com/envoy.config.listener.v3.Listener
    name: inbound:passthrough:ipv{family}
    address: {{socketAddress: {{address: '{address}', portValue: 0}}}}
    useOriginalDst: true
    trafficDirection: INBOUND
    enableReusePort: false
    filterChains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typedConfig:
          '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          statPrefix: inbound_passthrough_ipv{family}
          cluster: inbound:passthrough:ipv{family}"
            )
        };
        let yaml = format!(
            "{}{}{}",
            inbound(ALLOW_ALL),
            passthrough(4, "0.0.0.0"),
            passthrough(6, "::")
        );
        let config = translate(&set(&yaml), &node()).unwrap();
        assert!(config.transparent_proxy.is_none());
        assert_eq!(config.listeners.len(), 1, "{:?}", config.listeners);
    }

    #[test]
    fn a_listener_whose_secrets_have_not_come_awaits_them() {
        let mut set = set(&inbound(ALLOW_ALL));
        let secrets = std::mem::take(&mut set.secrets);
        let nacks = translate(&set, &node()).unwrap_err();
        assert!(
            !nacks.is_empty() && nacks.iter().all(|n| n.awaiting),
            "only awaiting: {nacks:?}"
        );
        assert!(nacks
            .iter()
            .any(|n| n.reason.contains("identity_cert:secret:default")));
        // A Secret that came but holds no certificate is a real refusal.
        set.secrets = secrets;
        if let Some(secret) = set.secrets.get_mut("identity_cert:secret:default") {
            secret.r#type = None;
        }
        let nacks = translate(&set, &node()).unwrap_err();
        assert!(nacks.iter().any(|n| !n.awaiting), "{nacks:?}");
    }

    #[test]
    fn mesh_secrets_that_do_not_load_are_nacked_by_field() {
        use core_pb::data_source::Specifier;
        let good = set(&inbound(ALLOW_ALL));
        assert!(translate(&good, &node()).is_ok());
        let identity = "identity_cert:secret:default";
        let ca = "mesh_ca:secret:default";
        let garbage = |pem: &str| Specifier::InlineBytes(pem.replace('M', "#").into_bytes());
        let (cert, key) = test_ca();
        let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        // (secret, what is broken, the PEM it holds instead, the NACKed field's end)
        let cases: [(&str, &str, Specifier, &str); 5] = [
            (identity, "chain", garbage(cert), "tls_certificate"),
            (identity, "key", garbage(key), "tls_certificate"),
            (
                identity,
                "key",
                Specifier::InlineString(other_key),
                "tls_certificate",
            ),
            (
                identity,
                "key",
                Specifier::InlineString(cert.clone()),
                "tls_certificate",
            ),
            (ca, "ca", garbage(cert), "validation_context.trusted_ca"),
        ];
        for (secret, part, pem, field) in cases {
            let mut set = good.clone();
            let source = match set.secrets.get_mut(secret).and_then(|s| s.r#type.as_mut()) {
                Some(tls_pb::secret::Type::TlsCertificate(c)) if part == "chain" => {
                    &mut c.certificate_chain
                }
                Some(tls_pb::secret::Type::TlsCertificate(c)) => &mut c.private_key,
                Some(tls_pb::secret::Type::ValidationContext(v)) => &mut v.trusted_ca,
                other => panic!("{secret}: {other:?}"),
            };
            *source = Some(core_pb::DataSource {
                specifier: Some(pem),
                ..Default::default()
            });
            let nacks = translate(&set, &node()).unwrap_err();
            let [nack] = nacks.as_slice() else {
                panic!("{secret} {part}: {nacks:?}")
            };
            assert_eq!(
                (nack.type_url.as_str(), nack.resource.as_str()),
                (SECRET, secret)
            );
            assert_eq!(nack.field, format!("secrets[{secret:?}].{field}"));
            assert!(nack.reason.contains("does not load"), "{}", nack.reason);
            assert!(!nack.awaiting);
        }
    }

    #[test]
    fn a_listener_whose_cluster_is_not_there_awaits_it() {
        let mut set = set(&inbound(ALLOW_ALL));
        set.clusters.clear();
        let nacks = translate(&set, &node()).unwrap_err();
        let [nack] = nacks.as_slice() else {
            panic!("{nacks:?}")
        };
        assert!(nack.awaiting, "{nack:?}");
        assert_eq!(nack.resource, "inbound:10.0.0.1:80");
        assert!(
            nack.reason
                .contains("\"localhost:8080\" is not among the Cluster"),
            "{nack}"
        );
    }

    const RBAC_AT: &str = "listeners[\"inbound:10.0.0.1:80\"].filter_chains[2].filters[0].typed_config(envoy.extensions.filters.network.rbac.v3.RBAC)";

    /// An RBAC filter on the mTLS chain of a PERMISSIVE inbound translates to the listener's
    /// network RBAC (checking its mTLS connections only).
    #[test]
    fn network_rbac_rules_translate_onto_the_listener() {
        let only_web = "{policies: {only-web: {permissions: [{any: true}], principals: [{authenticated: {principalName: {exact: 'spiffe://default/web'}}}, {notId: {orIds: {ids: [{any: true}]}}}]}}}";
        let config = translate(&set(&inbound(only_web)), &node()).unwrap();
        let l = &config.listeners[0];
        let rbac = l.network_rbac.as_ref().expect("network RBAC");
        let expected = RbacEngine::Rules(RbacRules {
            action: RbacAction::Allow,
            policies: vec![RbacPolicy {
                name: "only-web".into(),
                permissions: vec![RbacPermission::Any],
                principals: vec![
                    RbacPrincipal::Authenticated(Some(RbacString::Exact(
                        "spiffe://default/web".into(),
                    ))),
                    RbacPrincipal::Not(Box::new(RbacPrincipal::Or(vec![RbacPrincipal::Any]))),
                ],
            }],
        });
        assert_eq!(rbac.enforced.as_ref(), Some(&expected));
        assert_eq!(rbac.shadow, None);
        assert_eq!(l.http_rbac, None);
    }

    /// What Bearing cannot evaluate in an RBAC filter is NACKed by its path, never ignored;
    /// a matcher input it cannot read fails closed.
    #[test]
    fn rbac_parts_not_evaluated_are_nacked_by_path() {
        let cases = [
            (
                "{action: LOG, policies: {}}",
                ".rules.action",
                "only the ALLOW and DENY actions",
            ),
            (
                "{policies: {p: {permissions: [{any: true}], principals: [{sourceIp: {addressPrefix: 10.0.0.0, prefixLen: 8}}]}}}",
                ".rules.policies[\"p\"].principals[0].source_ip",
                "is not implemented by Bearing",
            ),
            (
                "{policies: {p: {permissions: [{destinationPort: 80}], principals: [{any: true}]}}}",
                ".rules.policies[\"p\"].permissions[0].destination_port",
                "is not implemented by Bearing",
            ),
            (
                "{policies: {p: {permissions: [{any: true}], principals: [{authenticated: {principalName: {safeRegex: {regex: '.*'}}}}]}}}",
                ".rules.policies[\"p\"].principals[0].authenticated.principal_name",
                "only exact, prefix, suffix and contains",
            ),
            (
                "{policies: {p: {permissions: [{any: true}], principals: [{authenticated: {principalName: {exact: a, ignoreCase: true}}}]}}}",
                ".rules.policies[\"p\"].principals[0].authenticated.principal_name.ignore_case",
                "is not implemented by Bearing",
            ),
        ];
        for (rules, field, reason) in cases {
            let nacks = translate(&set(&inbound(rules)), &node()).unwrap_err();
            let at = format!("{RBAC_AT}{field}");
            assert!(
                nacks
                    .iter()
                    .any(|n| n.field == at && n.reason.contains(reason)),
                "{rules}: {nacks:#?}"
            );
        }
        // A matcher reading the DNS SANs (an input Bearing does not evaluate): refused.
        let matcher = "{}\n              matcher:\n                matcherList:\n                  matchers:\n                  - predicate: {singlePredicate: {input: {name: dns, typedConfig: {'@type': type.googleapis.com/envoy.extensions.matching.common_inputs.ssl.v3.DnsSanInput}}, valueMatch: {exact: a}}}\n                    onMatch: {action: {name: envoy.filters.rbac.action, typedConfig: {'@type': type.googleapis.com/envoy.config.rbac.v3.Action, name: p}}}";
        let nacks =
            translate(&set(&inbound(matcher).replace("rules: {}", "")), &node()).unwrap_err();
        let at = format!("{RBAC_AT}.matcher.matcher_list.matchers[0].predicate.single_predicate.input.typed_config");
        assert!(
            nacks
                .iter()
                .any(|n| n.field.starts_with(&at) && n.reason.contains("DnsSanInput")),
            "{nacks:#?}"
        );
    }

    const OUTBOUND: &str = r#"resources:
- name: backend
  resource:
    '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
    name: backend
    type: EDS
    edsClusterConfig: {edsConfig: {ads: {}, resourceApiVersion: V3}}
    circuitBreakers: {thresholds: [{maxConnections: 7, maxRequests: 9}]}
    typedExtensionProtocolOptions:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicitHttpConfig: {http2ProtocolOptions: {}}
    transportSocket:
      name: envoy.transport_sockets.tls
      typedConfig:
        '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: backend{mesh=default}
        commonTlsContext:
          tlsCertificateSdsSecretConfigs: [{name: 'identity_cert:secret:default'}]
          combinedValidationContext:
            defaultValidationContext:
              matchTypedSubjectAltNames: [{sanType: URI, matcher: {exact: 'spiffe://default/backend'}}]
            validationContextSdsSecretConfig: {name: 'mesh_ca:secret:default'}
- name: backend
  resource:
    '@type': type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
    clusterName: backend
    endpoints:
    - lbEndpoints:
      - endpoint: {address: {socketAddress: {address: 10.0.0.2, portValue: 80}}}
        metadata: {filterMetadata: {envoy.lb: {version: v1}}}
- name: outbound:127.0.0.1:10001
  resource:
    '@type': type.googleapis.com/envoy.config.listener.v3.Listener
    name: outbound:127.0.0.1:10001
    address: {socketAddress: {address: 127.0.0.1, portValue: 10001}}
    trafficDirection: OUTBOUND
    filterChains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typedConfig:
          '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          statPrefix: backend
          httpFilters:
          - name: envoy.filters.http.router
            typedConfig: {'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
          routeConfig:
            name: outbound:backend
            virtualHosts:
            - name: backend
              domains: ['*']
              routes:
              - match: {prefix: /}
                route: {cluster: backend, timeout: 0s}
"#;

    #[test]
    fn http_outbound_to_eds_cluster_with_mesh_tls() {
        let text = format!("{OUTBOUND}{}", secrets());
        let config = translate(&set(&text), &node()).unwrap();
        let listener = &config.listeners[0];
        assert_eq!(
            (listener.protocol, listener.cluster.as_str()),
            (Protocol::Http, "backend")
        );
        assert_eq!(listener.direction, Direction::Outbound);
        let cluster = &config.clusters["backend"];
        assert_eq!(cluster.protocol, Protocol::Http2);
        assert_eq!(cluster.request_timeout, None);
        assert_eq!(cluster.circuit_breakers.max_connections, 7);
        assert_eq!(cluster.circuit_breakers.max_requests, 9);
        assert_eq!(cluster.circuit_breakers.max_pending_requests, 1024);
        assert_eq!(cluster.endpoints[0].tags["version"], "v1");
        assert_eq!(
            cluster.tls,
            Some(UpstreamTls::Mesh {
                mesh: "default".into(),
                sni: "backend{mesh=default}".into(),
                identities: vec![SpiffeMatcher::Exact("spiffe://default/backend".into())],
                server_ca_pem: None,
                params: None,
            })
        );
    }

    /// kuma-cp's MeshTLS on a sidecar: the inbound's and the cluster's `tls_params` are read
    /// as Envoy reads a server's and a client's (`TLS_AUTO`: TLS 1.3 at most for the
    /// inbound, TLS 1.2 for the cluster); a cipher Envoy refuses is NACKed naming the field.
    #[test]
    fn sidecar_tls_params_are_read_per_side_and_refused_ciphers_nacked() {
        use bearing_proxy_config::{TlsParams, TlsVersion};
        // `params` as the `tlsParams` of the text's (one) `commonTlsContext`.
        let with = |text: &str, params: &str| {
            let line = text
                .lines()
                .find(|l| l.trim() == "commonTlsContext:")
                .unwrap();
            let indent = &line[..line.len() - line.trim_start().len()];
            text.replacen(line, &format!("{line}\n{indent}  tlsParams: {params}"), 1)
        };
        let auto_min = "{tlsMaximumProtocolVersion: TLS_AUTO, cipherSuites: [AES128-SHA]}";
        let text = with(&inbound(ALLOW_ALL), auto_min);
        let config = translate(&set(&text), &node()).unwrap();
        let server = config.listeners[0].tls.as_ref().unwrap().params.clone();
        let expect = |max| TlsParams {
            min_version: TlsVersion::V1_2,
            max_version: max,
            cipher_suites: "AES128-SHA".into(),
            ecdh_curves: "X25519:P-256".into(),
        };
        assert_eq!(server, Some(expect(TlsVersion::V1_3)));
        let text = with(&format!("{OUTBOUND}{}", secrets()), auto_min);
        let config = translate(&set(&text), &node()).unwrap();
        let Some(UpstreamTls::Mesh { params, .. }) = &config.clusters["backend"].tls else {
            panic!("{:?}", config.clusters["backend"].tls)
        };
        assert_eq!(params.as_ref(), Some(&expect(TlsVersion::V1_2)));

        let bad = "{cipherSuites: [ECDHE-ECDSA-AES256-GCM-SHA384, NOT-A-CIPHER]}";
        for (text, resource) in [
            (with(&inbound(ALLOW_ALL), bad), "inbound:10.0.0.1:80"),
            (with(&format!("{OUTBOUND}{}", secrets()), bad), "backend"),
        ] {
            let nacks = translate(&set(&text), &node()).unwrap_err();
            assert!(
                nacks.iter().any(|n| n.resource == resource
                    && n.field
                        .ends_with(".common_tls_context.tls_params.cipher_suites")
                    && n.reason.contains("NOT-A-CIPHER")),
                "{nacks:#?}"
            );
        }
        // Curves kuma-cp never renders stay NACKed by the guard.
        let curves = with(&inbound(ALLOW_ALL), "{ecdhCurves: [P-256]}");
        let nacks = translate(&set(&curves), &node()).unwrap_err();
        assert!(
            nacks
                .iter()
                .any(|n| n.field.ends_with(".tls_params.ecdh_curves")),
            "{nacks:#?}"
        );
    }

    #[test]
    fn renegotiation_is_allowed_towards_external_services_only() {
        let renegotiating =
            "        sni: backend{mesh=default}\n        allowRenegotiation: true\n";
        let mesh = format!("{OUTBOUND}{}", secrets())
            .replace("        sni: backend{mesh=default}\n", renegotiating);
        let nacks = translate(&set(&mesh), &node()).unwrap_err();
        assert!(
            nacks
                .iter()
                .any(|n| n.field.ends_with(".allow_renegotiation")
                    && n.reason.contains("outside the mesh")),
            "{nacks:?}"
        );
        // The context without a certificate or validation: TLS to a service outside the mesh.
        let start = OUTBOUND.find("        commonTlsContext:").unwrap();
        let end = OUTBOUND.find("- name: backend\n  resource:\n    '@type': type.googleapis.com/envoy.config.endpoint").unwrap();
        let common = &OUTBOUND[start..end];
        let external = mesh
            .replace(common, "")
            .replace("sni: backend{mesh=default}", "sni: backend.example");
        let config = translate(&set(&external), &node()).unwrap();
        assert_eq!(
            config.clusters["backend"].tls,
            Some(UpstreamTls::External {
                server_name: "backend.example".into(),
                ca_pem: None,
                client_cert_pem: None,
                client_key_pem: None,
                verification: Verification::SkipAll,
                allow_renegotiation: true,
                params: None,
            })
        );
    }

    /// OUTBOUND with its cluster's SAN matchers replaced by `sans` (a YAML flow list).
    fn outbound_verifying(sans: &str) -> String {
        let one = "[{sanType: URI, matcher: {exact: 'spiffe://default/backend'}}]";
        format!("{}{}", OUTBOUND.replace(one, sans), secrets())
    }

    /// kuma-cp's MeshIdentity clusters accept several SPIFFE ids (the workload's and the
    /// legacy one): the cluster holds every one, exact or prefix, in order. A SAN of another
    /// type, a value that is no SPIFFE id, or no id at all is NACKed by its path.
    #[test]
    fn mesh_upstreams_hold_every_spiffe_id_they_accept() {
        let sans = "[{sanType: URI, matcher: {exact: 'spiffe://default.zone-1.mesh.local/workload/backend'}}, {sanType: URI, matcher: {exact: 'spiffe://default/backend'}}, {sanType: URI, matcher: {prefix: 'spiffe://default/backend-'}}]";
        let config = translate(&set(&outbound_verifying(sans)), &node()).unwrap();
        let Some(UpstreamTls::Mesh { identities, .. }) = &config.clusters["backend"].tls else {
            panic!("no mesh TLS: {:?}", config.clusters["backend"].tls);
        };
        assert_eq!(
            identities,
            &[
                SpiffeMatcher::Exact("spiffe://default.zone-1.mesh.local/workload/backend".into()),
                SpiffeMatcher::Exact("spiffe://default/backend".into()),
                SpiffeMatcher::Prefix("spiffe://default/backend-".into()),
            ]
        );
        let at = "clusters[\"backend\"].transport_socket.typed_config(envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext).common_tls_context.combined_validation_context.default_validation_context.match_typed_subject_alt_names";
        for (sans, field, reason) in [
            (
                "[{sanType: URI, matcher: {exact: 'spiffe://default/backend'}}, {sanType: DNS, matcher: {exact: 'backend'}}]",
                format!("{at}[1]"),
                "URI SANs",
            ),
            (
                "[{sanType: URI, matcher: {exact: 'backend'}}]",
                format!("{at}[0]"),
                "a SPIFFE id",
            ),
            ("[]", at.to_string(), "at least one"),
        ] {
            let nacks = translate(&set(&outbound_verifying(sans)), &node()).unwrap_err();
            let named = |n: &&Nack| n.field == field && n.reason.contains(reason);
            assert!(nacks.iter().any(|n| named(&n)), "{sans}: {nacks:?}");
        }
    }

    /// `LocalityLbEndpoints.priority` is each endpoint's priority level, and the endpoints
    /// come out ordered by level (a level's own order kept), whatever order the localities
    /// are listed in.
    #[test]
    fn endpoints_carry_their_priority_in_level_order() {
        let p0 = "    endpoints:\n    - lbEndpoints:\n";
        let localities = "    endpoints:
    - priority: 2
      lbEndpoints: [{endpoint: {address: {socketAddress: {address: 10.0.0.4, portValue: 80}}}}]
    - priority: 1
      lbEndpoints: [{endpoint: {address: {socketAddress: {address: 10.0.0.3, portValue: 80}}}}]
    - lbEndpoints:
";
        assert!(OUTBOUND.contains(p0));
        let text = format!("{}{}", OUTBOUND.replace(p0, localities), secrets());
        let config = translate(&set(&text), &node()).unwrap();
        let endpoints: Vec<_> = config.clusters["backend"]
            .endpoints
            .iter()
            .map(|e| (e.address.to_string(), e.priority))
            .collect();
        assert_eq!(
            endpoints,
            [
                ("10.0.0.2:80".to_string(), 0),
                ("10.0.0.3:80".to_string(), 1),
                ("10.0.0.4:80".to_string(), 2)
            ]
        );
    }

    /// OUTBOUND with a TCP proxy configured by `config` (YAML lines at its indentation) in
    /// place of the HTTP connection manager.
    fn outbound_tcp_proxy(config: &str) -> String {
        let hcm = OUTBOUND
            .find("      - name: envoy.filters.network.http_connection_manager")
            .unwrap();
        format!(
            "{}      - name: envoy.filters.network.tcp_proxy
        typedConfig:
          '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          statPrefix: backend
{config}{}",
            &OUTBOUND[..hcm],
            secrets()
        )
    }

    #[test]
    fn tcp_proxy_ignores_the_clusters_http_options() {
        let text = outbound_tcp_proxy("          cluster: backend\n");
        let config = translate(&set(&text), &node()).unwrap();
        assert_eq!(config.listeners[0].protocol, Protocol::Tcp);
        assert_eq!(config.clusters["backend"].protocol, Protocol::Tcp);
    }

    /// MeshRetry's `tcp.maxConnectAttempt` (the TCP proxy's `max_connect_attempts`) gives the
    /// listener its connection attempts; unset is Envoy's one; zero (Envoy refuses it) and a
    /// back-off between attempts (not implemented) are NACKed by path.
    #[test]
    fn tcp_connect_attempts_are_the_listeners() {
        let attempts = |extra: &str| {
            let text = outbound_tcp_proxy(&format!("          cluster: backend\n{extra}"));
            translate(&set(&text), &node()).map(|c| c.listeners[0].max_connect_attempts)
        };
        assert_eq!(attempts("").unwrap(), 1);
        assert_eq!(attempts("          maxConnectAttempts: 5\n").unwrap(), 5);
        let tcp = "listeners[\"outbound:127.0.0.1:10001\"].filter_chains[0].filters[0].typed_config(envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy)";
        let nacks = attempts("          maxConnectAttempts: 0\n").unwrap_err();
        assert_eq!(nacks.len(), 1, "{nacks:#?}");
        assert_eq!(nacks[0].field, format!("{tcp}.max_connect_attempts"));
        let back_off =
            "          maxConnectAttempts: 3\n          backoffOptions: {baseInterval: 1s}\n";
        let nacks = attempts(back_off).unwrap_err();
        assert_eq!(nacks.len(), 1, "{nacks:#?}");
        assert_eq!(nacks[0].field, format!("{tcp}.backoff_options"));
    }

    /// MeshTimeout's `idleTimeout` on a TCP proxy is the listener's, whatever its value:
    /// unset is Envoy's 1 h and zero none; chains of one listener must agree.
    #[test]
    fn tcp_idle_timeouts_are_the_listeners() {
        let idle = |extra: &str| {
            let text = outbound_tcp_proxy(&format!("          cluster: backend\n{extra}"));
            translate(&set(&text), &node()).map(|c| c.listeners[0].tcp_idle_timeout)
        };
        assert_eq!(idle("").unwrap(), Some(Duration::from_secs(3600)));
        let set_to = |v: &str| idle(&format!("          idleTimeout: {v}\n"));
        assert_eq!(set_to("50s").unwrap(), Some(Duration::from_secs(50)));
        assert_eq!(set_to("0s").unwrap(), None);
    }

    /// MeshTimeout's `http.streamIdleTimeout`: a route's `idle_timeout` overrides the
    /// connection manager's `stream_idle_timeout` (unset: Envoy's 5 min; zero: none); a
    /// plain listener's one route gives the listener its own, a route table's routes keep
    /// theirs.
    #[test]
    fn stream_idle_timeouts_come_from_the_route_or_the_connection_manager() {
        let plain = |route_idle: &str, hcm_idle: &str| {
            let one = "route: {cluster: backend, timeout: 0s}";
            let text = format!("{OUTBOUND}{}", secrets())
                .replace(
                    one,
                    &format!("route: {{cluster: backend, timeout: 0s{route_idle}}}"),
                )
                .replacen(
                    "statPrefix: backend",
                    &format!("statPrefix: backend{hcm_idle}"),
                    1,
                );
            let config = translate(&set(&text), &node()).unwrap();
            config.listeners[0].stream_idle_timeout
        };
        assert_eq!(plain("", ""), Some(Duration::from_secs(300)));
        let hcm = "\n          streamIdleTimeout: 43s";
        assert_eq!(plain("", hcm), Some(Duration::from_secs(43)));
        assert_eq!(
            plain(", idleTimeout: 7s", hcm),
            Some(Duration::from_secs(7))
        );
        assert_eq!(plain(", idleTimeout: 0s", hcm), None);
        let table = outbound_with_routes(
            "              - match: {prefix: /a}\n                route: {cluster: backend, idleTimeout: 9s}\n              - match: {prefix: /}\n                route: {cluster: backend}\n",
        );
        let config = translate(&set(&table), &node()).unwrap();
        let listener = &config.listeners[0];
        assert_eq!(listener.stream_idle_timeout, Some(Duration::from_secs(300)));
        let routes = &listener.routes.as_ref().unwrap().virtual_hosts[0].routes;
        let idle = |i: usize| match &routes[i].action {
            RouteAction::Forward { idle_timeout, .. } => *idle_timeout,
            _ => panic!("a forwarding route"),
        };
        assert_eq!((idle(0), idle(1)), (Some(Duration::from_secs(9)), None));
    }

    /// A connection manager's `request_timeout` and `request_headers_timeout` (unset or zero:
    /// none) and `common_http_protocol_options.idle_timeout` (unset: Envoy's 1 h; zero: none)
    /// become the listener's downstream timeouts.
    #[test]
    fn connection_manager_timeouts_become_the_listeners() {
        let with = |hcm: &str| {
            let text = format!("{OUTBOUND}{}", secrets()).replacen(
                "statPrefix: backend",
                &format!("statPrefix: backend{hcm}"),
                1,
            );
            let config = translate(&set(&text), &node()).unwrap_or_else(|n| panic!("{n:#?}"));
            config.listeners[0].downstream_timeouts
        };
        assert_eq!(with(""), DownstreamHttpTimeouts::ENVOY_DEFAULT);
        let set_all = "\n          requestTimeout: 12s\n          requestHeadersTimeout: 0.250s\n          commonHttpProtocolOptions: {idleTimeout: 103s}";
        assert_eq!(
            with(set_all),
            DownstreamHttpTimeouts {
                request: Some(Duration::from_secs(12)),
                request_headers: Some(Duration::from_millis(250)),
                connection_idle: Some(Duration::from_secs(103)),
            }
        );
        let zero = "\n          requestTimeout: 0s\n          commonHttpProtocolOptions: {idleTimeout: 0s}";
        assert_eq!(with(zero), DownstreamHttpTimeouts::default());
        // Its maximum durations are still NACKed by name.
        let text = format!("{OUTBOUND}{}", secrets()).replacen(
            "statPrefix: backend",
            "statPrefix: backend\n          commonHttpProtocolOptions: {maxConnectionDuration: 9s}",
            1,
        );
        let nacks = translate(&set(&text), &node()).unwrap_err();
        assert!(
            nacks[0]
                .field
                .ends_with("common_http_protocol_options.max_connection_duration")
                && nacks[0].reason.starts_with("timeouts: "),
            "{nacks:#?}"
        );
    }

    /// OUTBOUND with its one route replaced by `routes` (YAML list items at the routes'
    /// indentation).
    fn outbound_with_routes(routes: &str) -> String {
        let one = "              - match: {prefix: /}\n                route: {cluster: backend, timeout: 0s}\n";
        format!("{}{}", OUTBOUND.replace(one, routes), secrets())
    }

    const HCM: &str = "listeners[\"outbound:127.0.0.1:10001\"].filter_chains[0].filters[0].typed_config(envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager)";

    /// kuma-cp's MeshHTTPRoute as its sidecar goldens render it (path + prefix pairs,
    /// `:method` and header matches, query matches, header edits, redirects, direct
    /// responses, rewrites, mirrors, weighted backends) becomes a route table; the single
    /// default route stays a plain listener.
    #[test]
    fn mesh_http_route_shapes_become_a_route_table() {
        let plain = translate(&set(&format!("{OUTBOUND}{}", secrets())), &node()).unwrap();
        assert_eq!(
            plain.listeners[0].routes, None,
            "one default route: no table"
        );
        let text = outbound_with_routes(
            r#"              - match: {path: /v1}
                name: rule-0
                requestHeadersToAdd:
                - {appendAction: OVERWRITE_IF_EXISTS_OR_ADD, header: {key: X-Set, value: s}}
                - {header: {key: x-add, value: a}}
                - {header: {key: x-kuma-tags, value: '&kuma.io/service=web&'}}
                requestHeadersToRemove: [x-drop]
                responseHeadersToAdd:
                - {header: {key: x-resp, value: r}}
                route:
                  weightedClusters: {clusters: [{name: backend, weight: 90}, {name: backend, weight: 10}]}
                  timeout: 0s
                  regexRewrite: {pattern: {regex: '.*'}, substitution: /v2}
                  hostRewriteLiteral: other.internal
                  requestMirrorPolicies:
                  - cluster: backend
                    runtimeFraction: {defaultValue: {numerator: 9990, denominator: TEN_THOUSAND}}
              - match:
                  prefix: /v1/
                  headers:
                  - {name: ':method', stringMatch: {exact: GET}}
                  - {name: X-Env, stringMatch: {safeRegex: {regex: 'stag(e|ing)'}}}
                  - {name: x-absent, presentMatch: false}
                  queryParameters:
                  - {name: v, stringMatch: {prefix: '1'}}
                route: {cluster: backend, timeout: 0s, prefixRewrite: /v2/}
              - match: {pathSeparatedPrefix: /old}
                redirect: {responseCode: PERMANENT_REDIRECT, httpsRedirect: true, hostRedirect: new.example.com, portRedirect: 8443, prefixRewrite: /new, stripQuery: true}
              - match: {safeRegex: {regex: '/gone/.*'}}
                directResponse: {status: 410, body: {inlineString: gone}}
              - match: {prefix: /}
                route: {cluster: backend, timeout: 0s}
"#,
        );
        let config = translate(&set(&text), &node()).unwrap_or_else(|n| panic!("{n:#?}"));
        let l = &config.listeners[0];
        let table = l.routes.as_ref().expect("a route table");
        assert_eq!(table.name, "outbound:backend");
        let [vh] = table.virtual_hosts.as_slice() else {
            panic!("{table:?}")
        };
        assert_eq!(vh.domains, ["*"]);
        let r = &vh.routes;
        assert_eq!(r.len(), 5);
        assert_eq!(r[0].origin, "route rule-0");
        assert_eq!(r[0].matches.path, Some(PathMatch::Exact("/v1".into())));
        assert_eq!(r[0].request_headers.set, [("x-set".into(), "s".into())]);
        // Kuma's `x-kuma-tags` is sent as Envoy sends it, for the callee's legacy faults.
        assert_eq!(
            r[0].request_headers.add,
            [
                ("x-add".into(), "a".into()),
                ("x-kuma-tags".into(), "&kuma.io/service=web&".into())
            ]
        );
        assert_eq!(r[0].request_headers.remove, ["x-drop"]);
        assert_eq!(r[0].response_headers.add, [("x-resp".into(), "r".into())]);
        let RouteAction::Forward {
            backends, rewrite, ..
        } = &r[0].action
        else {
            panic!("{:?}", r[0].action)
        };
        assert_eq!(
            backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
            [90, 10]
        );
        let rewrite = rewrite.as_ref().unwrap();
        assert_eq!(rewrite.host.as_deref(), Some("other.internal"));
        assert_eq!(
            rewrite.path,
            Some(PathRewrite::Regex {
                pattern: ".*".into(),
                substitution: "/v2".into()
            })
        );
        let mirror = r[0].mirror.as_ref().unwrap();
        assert_eq!(
            (mirror.cluster.as_str(), mirror.percentage),
            ("backend", 99.9)
        );
        let m = &r[1].matches;
        assert_eq!(m.path, Some(PathMatch::StringPrefix("/v1/".into())));
        assert_eq!(m.method.as_deref(), Some("GET"));
        assert_eq!(
            m.headers,
            [
                HeaderMatch {
                    name: "x-env".into(),
                    value: ValueMatch::Regex("stag(e|ing)".into())
                },
                HeaderMatch {
                    name: "x-absent".into(),
                    value: ValueMatch::Absent
                }
            ]
        );
        assert_eq!(m.query[0].value, ValueMatch::Prefix("1".into()));
        assert_eq!(
            r[2].action,
            RouteAction::Redirect(Redirect {
                scheme: Some("https".into()),
                hostname: Some("new.example.com".into()),
                port: Some(8443),
                status: 308,
                path: Some(PathRewrite::ReplacePrefixMatch("/new".into())),
                strip_query: true,
            })
        );
        assert_eq!(r[2].matches.path, Some(PathMatch::Prefix("/old".into())));
        assert_eq!(
            r[3].action,
            RouteAction::DirectResponse {
                status: 410,
                body: "gone".into()
            }
        );
        assert_eq!(config.clusters["backend"].request_timeout, None);
    }

    /// What the route model cannot express, and the policies of issue #25, are NACKed by
    /// their field path.
    #[test]
    fn route_fields_beyond_the_model_and_policies_are_nacked_by_path() {
        let text = outbound_with_routes(
            r#"              - match: {prefix: /a, caseSensitive: false}
                route: {cluster: backend, timeout: 0s}
              - match: {prefix: /b}
                route: {cluster: backend, timeout: 0s, retryPolicy: {retryOn: 5xx, retriableHeaders: [{name: x}]}, hashPolicy: [{header: {headerName: x, regexRewrite: {pattern: {regex: a}, substitution: b}}}, {filterState: {key: x}}, {cookie: {name: c, ttl: 1s, path: /}}]}
              - match: {prefix: /}
                route: {cluster: backend, timeout: 0s}
"#,
        )
        .replace(
            "statPrefix: backend\n          httpFilters",
            "statPrefix: backend\n          generateRequestId: true\n          httpFilters",
        );
        let nacks = translate(&set(&text), &node()).unwrap_err();
        let found: Vec<(&str, &str)> = nacks
            .iter()
            .map(|n| (n.field.as_str(), n.reason.as_str()))
            .collect();
        let routes = format!("{HCM}.route_config.virtual_hosts[0].routes");
        let has = |field: String, reason: &str| {
            assert!(
                found.iter().any(|(f, r)| *f == field && r.contains(reason)),
                "{field} / {reason} not in {found:#?}"
            )
        };
        has(
            format!("{routes}[0].match.case_sensitive"),
            "not implemented",
        );
        has(
            format!("{routes}[1].route.retry_policy.retriable_headers"),
            "without the retry condition",
        );
        has(
            format!("{routes}[1].route.hash_policy[0].header.regex_rewrite"),
            "not implemented",
        );
        // Filter-state policies and generated cookies are taken (`balance.rs`).
        let taken = |i| format!("{routes}[1].route.hash_policy[{i}]");
        assert!(
            !found
                .iter()
                .any(|(f, _)| f.starts_with(&taken(1)) || f.starts_with(&taken(2))),
            "{found:#?}"
        );
        has(format!("{HCM}.generate_request_id"), "not implemented");
    }

    /// kuma-cp's default MeshRetry (on every route) is the route's (Envoy's
    /// `RouteAction.retry_policy`): a plain listener's one route gives the listener its
    /// policy, a route table's routes keep theirs, so routes to one cluster may differ (a
    /// MeshRetry targeting one MeshHTTPRoute); a virtual host's policy serves its routes
    /// without one; a condition Bearing does not retry on is NACKed by the `retry_on` path.
    #[test]
    fn retry_policies_are_the_routes() {
        const KUMA_DEFAULT: &str = "retryPolicy: {retryOn: 'gateway-error,connect-failure,refused-stream', numRetries: 5, perTryTimeout: 16s, retryBackOff: {baseInterval: 0.025s, maxInterval: 0.250s}}";
        let route = |prefix: &str, retry: &str| {
            format!("              - match: {{prefix: {prefix}}}\n                route: {{cluster: backend, timeout: 15s{retry}}}\n")
        };
        let retry_of = |r: &bearing_proxy_config::HttpRoute| match &r.action {
            RouteAction::Forward { retry, .. } => retry.clone(),
            other => panic!("{other:?}"),
        };
        let with = format!(", {KUMA_DEFAULT}");
        let plain = translate(&set(&outbound_with_routes(&route("/", &with))), &node()).unwrap();
        assert_eq!(plain.listeners[0].routes, None);
        let retry = plain.listeners[0].retry.clone().expect("the listener's");
        assert_eq!(retry.num_retries, 5);
        assert_eq!(retry.per_try_timeout, Some(Duration::from_secs(16)));
        assert!(retry.on.gateway_error && retry.on.connect_failure && retry.on.refused_stream);
        assert_eq!(
            plain.clusters["backend"].request_timeout,
            Some(Duration::from_secs(15))
        );

        let mixed = outbound_with_routes(&format!("{}{}", route("/a", &with), route("/", "")));
        let mixed = translate(&set(&mixed), &node()).unwrap_or_else(|n| panic!("{n:#?}"));
        let listener = &mixed.listeners[0];
        assert_eq!(listener.retry, None, "a route table's routes carry theirs");
        let routes = &listener.routes.as_ref().expect("routed").virtual_hosts[0].routes;
        assert_eq!(retry_of(&routes[0]).as_ref(), Some(&retry));
        assert_eq!(retry_of(&routes[1]), None);

        // The virtual host's policy for the route without one.
        let host_wide = outbound_with_routes(&format!("{}{}", route("/a", &with), route("/", "")))
            .replace(
                "domains: ['*']",
                "domains: ['*']\n              retryPolicy: {retryOn: 5xx, numRetries: 2}",
            );
        let host_wide = translate(&set(&host_wide), &node()).unwrap_or_else(|n| panic!("{n:#?}"));
        let routes = &host_wide.listeners[0]
            .routes
            .as_ref()
            .unwrap()
            .virtual_hosts[0]
            .routes;
        assert_eq!(retry_of(&routes[0]).as_ref(), Some(&retry));
        let fallback = retry_of(&routes[1]).expect("the virtual host's");
        assert!(fallback.on.server_error && fallback.num_retries == 2);

        let rate_limited = route("/", ", retryPolicy: {retryOn: 'envoy-ratelimited'}");
        let nacks = translate(&set(&outbound_with_routes(&rate_limited)), &node()).unwrap_err();
        let routes = format!("{HCM}.route_config.virtual_hosts[0].routes");
        assert_eq!(
            nacks[0].field,
            format!("{routes}[0].route.retry_policy.retry_on")
        );
        assert!(
            nacks[0].reason.contains("\"envoy-ratelimited\""),
            "{nacks:?}"
        );
    }

    /// A route's `timeout` is its own (Envoy's `RouteAction.timeout`): routes of one table
    /// to one cluster may differ, absent is Envoy's 15 s and zero is none, and the cluster
    /// keeps Envoy's default for requests no route times.
    #[test]
    fn route_timeouts_are_per_route() {
        let text = outbound_with_routes(
            r#"              - match: {prefix: /fast}
                route: {cluster: backend, timeout: 1.500s}
              - match: {prefix: /slow}
                route: {cluster: backend, timeout: 30s}
              - match: {prefix: /stream}
                route: {cluster: backend, timeout: 0s}
              - match: {prefix: /}
                route: {cluster: backend}
"#,
        );
        let config = translate(&set(&text), &node()).unwrap_or_else(|n| panic!("{n:#?}"));
        let table = config.listeners[0].routes.as_ref().expect("a route table");
        let timeouts: Vec<Option<Duration>> = table.virtual_hosts[0]
            .routes
            .iter()
            .map(|r| match &r.action {
                RouteAction::Forward { timeout, .. } => *timeout,
                other => panic!("{other:?}"),
            })
            .collect();
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(timeouts, [ms(1500), ms(30_000), ms(0), ms(15_000)]);
        assert_eq!(
            config.clusters["backend"].request_timeout,
            Some(DEFAULT_ROUTE_TIMEOUT)
        );
    }

    /// A plain listener's one route has no place for its timeout but the cluster: two plain
    /// listeners to one cluster with different timeouts are NACKed; a route table beside
    /// them asks nothing of the cluster.
    #[test]
    fn plain_listeners_to_one_cluster_with_different_timeouts_are_nacked() {
        let one = "route: {cluster: backend, timeout: 0s}";
        let timed =
            |t: &str| OUTBOUND.replace(one, &format!("route: {{cluster: backend, timeout: {t}}}"));
        let config = translate(&set(&format!("{}{}", timed("3s"), secrets())), &node()).unwrap();
        assert_eq!(
            config.clusters["backend"].request_timeout,
            Some(Duration::from_secs(3))
        );
        let listener = |t: &str| {
            let text = timed(t).replace("10001", "10002");
            let start = text.find("- name: outbound:127.0.0.1:10002").unwrap();
            text[start..].to_string()
        };
        let same = format!("{}{}{}", timed("3s"), listener("3s"), secrets());
        assert!(translate(&set(&same), &node()).is_ok());
        let differ = format!("{}{}{}", timed("3s"), listener("4s"), secrets());
        let nacks = translate(&set(&differ), &node()).unwrap_err();
        assert!(
            nacks.iter().any(|n| n.reason.starts_with("timeouts: ")),
            "{nacks:#?}"
        );
    }

    /// MeshTCPRoute's split: a TCP proxy's weighted clusters.
    #[test]
    fn tcp_weighted_clusters_split_a_listener() {
        let text = outbound_tcp_proxy(
            "          weightedClusters: {clusters: [{name: backend, weight: 40}, {name: backend, weight: 60}]}\n",
        );
        let config = translate(&set(&text), &node()).unwrap_or_else(|n| panic!("{n:#?}"));
        let l = &config.listeners[0];
        assert_eq!(l.protocol, Protocol::Tcp);
        assert_eq!(
            l.tcp_backends
                .iter()
                .map(|b| (b.cluster.as_str(), b.weight))
                .collect::<Vec<_>>(),
            [("backend", 40), ("backend", 60)]
        );
        assert_eq!(config.clusters["backend"].protocol, Protocol::Tcp);
    }

    /// Kuma's unified resource naming: the same resources under `self_`/`system_` names play
    /// the roles their legacy names play (inbound, mesh identity and CA secrets), so they
    /// translate into the same mTLS and listener, under their own names.
    #[test]
    fn unified_names_play_the_legacy_roles() {
        let legacy = inbound(ALLOW_ALL);
        let unified = legacy
            .replace("inbound:10.0.0.1:80", "self_inbound_dp_80")
            .replace(
                "identity_cert:secret:default",
                "system_mtls_identity_default",
            )
            .replace("mesh_ca:secret:default", "system_mtls_ca_default")
            .replace("trafficDirection: INBOUND", "");
        let (legacy, unified) = (
            translate(&set(&legacy), &node()).unwrap(),
            translate(&set(&unified), &node()).unwrap(),
        );
        assert_eq!(unified.mtls, legacy.mtls);
        let [listener] = unified.listeners.as_slice() else {
            panic!("{:?}", unified.listeners)
        };
        assert_eq!(listener.name, "self_inbound_dp_80");
        assert_eq!(listener.direction, Direction::Inbound);
        let mut renamed = listener.clone();
        renamed.name = "inbound:10.0.0.1:80".into();
        assert_eq!(legacy.listeners, [renamed]);
    }

    /// An identity secret is the one a TLS context presents, whatever Kuma's name for it: a
    /// name that tells no mesh is the proxy's own mesh's identity (NACKed by field for a proxy
    /// without a mesh), and two names for one mesh's identity are NACKed by field.
    #[test]
    fn identity_secrets_are_recognised_by_reference() {
        let renamed = |to: &str, node: &NodeInfo| {
            let text = inbound(ALLOW_ALL).replace("identity_cert:secret:default", to);
            translate(&set(&text), node)
        };
        let kri = "kri_mid_default_zone-1__identity_";
        assert!(renamed(kri, &node()).is_ok_and(|c| c.mtls["default"].identity_pem.is_some()));
        let by_reference = renamed("my-identity", &node()).unwrap();
        assert_eq!(
            by_reference.mtls["default"].identity_pem,
            renamed(kri, &node()).unwrap().mtls["default"].identity_pem
        );
        let meshless = NodeInfo {
            mesh: String::new(),
            ..node()
        };
        let nacks = renamed("my-identity", &meshless).unwrap_err();
        assert!(
            nacks.iter().any(|n| n
                .field
                .ends_with("tls_certificate_sds_secret_configs[0].name")
                && n.reason.contains("\"my-identity\" does not name its mesh")),
            "{nacks:?}"
        );
        // Two identities of one mesh: the inbound presents one, the outbound cluster another.
        let outbound = OUTBOUND
            .trim_start_matches("resources:")
            .replace("identity_cert:secret:default", kri);
        let text = format!(
            "{}{outbound}{}",
            inbound(ALLOW_ALL),
            secrets().replace("identity_cert:secret:default", kri)
        );
        let nacks = translate(&set(&text), &node()).unwrap_err();
        assert!(
            nacks.iter().any(|n| n.resource == "backend"
                && n.reason
                    .contains("other TLS contexts of mesh \"default\" name")),
            "{nacks:?}"
        );
    }

    /// MeshIdentity's mTLS: the inbound presents a `kri_mid_` identity and verifies clients
    /// with MeshTrust's SPIFFE validator (`system_trust_bundle`): the trust domains' bundles
    /// and the chain's `spiffe://<trust domain>/` prefix become the mesh's SPIFFE trust; a
    /// bundle not inline, another validator or two prefixes are NACKed by field.
    #[test]
    fn spiffe_validator_gives_the_mesh_its_trust_domains() {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let kri = "kri_mid_default_zone-1__identity_";
        let bundle = |domains: &str| {
            format!(
                "
- name: system_trust_bundle
  resource:
    '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
    name: system_trust_bundle
    validationContext:
      customValidatorConfig:
        name: envoy.tls.cert_validator.spiffe
        typedConfig:
          '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig
          trustDomains: {domains}
"
            )
        };
        let with = |domains: &str, prefix: &str| {
            let text = inbound(ALLOW_ALL)
                .replace("identity_cert:secret:default", kri)
                .replace(
                    "name: mesh_ca:secret:default\n",
                    "name: system_trust_bundle\n",
                )
                .replace("prefix: 'spiffe://default/'", prefix);
            translate(&set(&format!("{text}{}", bundle(domains))), &node())
        };
        let ca = b64(&test_ca().0);
        let two = format!(
            "[{{name: default.zone-1.mesh.local, trustBundle: {{inlineBytes: {ca}}}}}, {{name: other.mesh.local, trustBundle: {{inlineBytes: {ca}}}}}]"
        );
        let config = with(&two, "prefix: 'spiffe://default.zone-1.mesh.local/'").unwrap();
        let tls = &config.mtls["default"];
        assert_eq!(
            tls.spiffe_trust.keys().collect::<Vec<_>>(),
            ["default.zone-1.mesh.local", "other.mesh.local"]
        );
        assert_eq!(tls.ca_cert_pem, test_ca().0);
        assert_eq!(
            tls.client_prefix.as_deref(),
            Some("spiffe://default.zone-1.mesh.local/")
        );
        // Not inline: NACKed on the secret.
        let nacks = with(
            "[{name: td, trustBundle: {filename: /etc/ca.pem}}]",
            "prefix: 'spiffe://td/'",
        )
        .unwrap_err();
        assert!(
            nacks.iter().any(|n| n.resource == "system_trust_bundle"
                && (n.reason.contains("only an inline trust bundle")
                    || n.field.contains("trust_bundle"))),
            "{nacks:?}"
        );
        // A matcher other than one spiffe:// prefix.
        let nacks = with(&two, "prefix: 'https://x/'").unwrap_err();
        assert!(
            nacks
                .iter()
                .any(|n| n.reason.contains("at most one spiffe:// prefix")),
            "{nacks:?}"
        );
    }

    #[test]
    fn capture_listeners_give_the_transparent_proxy() {
        let capture = |name: &str, ip: &str, port: u16, cluster: &str| {
            format!(
                r#"
- name: {name}
  resource:
    '@type': type.googleapis.com/envoy.config.listener.v3.Listener
    name: {name}
    address: {{socketAddress: {{address: '{ip}', portValue: {port}}}}}
    useOriginalDst: true
    filterChains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typedConfig:
          '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          cluster: {cluster}
          statPrefix: x
- name: {cluster}
  resource:
    '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
    name: {cluster}
    type: ORIGINAL_DST
    lbPolicy: CLUSTER_PROVIDED"#
            )
        };
        // In Kuma's legacy naming and in its unified one.
        let namings = CAPTURE_OUTBOUND[0]
            .names()
            .into_iter()
            .zip(CAPTURE_INBOUND[0].names());
        for (outbound, inbound) in namings {
            let text = format!(
                "resources:{}{}",
                capture(outbound, "0.0.0.0", 15001, outbound),
                capture(inbound, "0.0.0.0", 15006, inbound)
            );
            let config = translate(&set(&text), &node()).unwrap();
            assert!(config.listeners.is_empty());
            assert!(config.clusters.is_empty());
            let tp = config.transparent_proxy.unwrap();
            assert_eq!(
                (
                    tp.outbound_port,
                    tp.inbound_port,
                    tp.ipv6,
                    tp.outbound_passthrough
                ),
                (15001, 15006, false, true),
                "{outbound}"
            );
        }
    }

    #[test]
    fn dns_table_comes_from_the_dynamic_config_listener() {
        let text = r#"resources:
- name: _kuma:dynamicconfig
  resource:
    '@type': type.googleapis.com/envoy.config.listener.v3.Listener
    name: _kuma:dynamicconfig
    address: {pipe: {path: dynconf.sock}}
    filterChains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typedConfig:
          '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          statPrefix: x
          routeConfig:
            virtualHosts:
            - name: x
              domains: ['*']
              routes:
              - match: {path: /dns}
                directResponse:
                  status: 200
                  body: {inlineString: '{"records":[{"name":"Backend.mesh.","ips":["240.0.0.1","::ffff:f000:1"]}],"ttl":30}'}
"#;
        let config = translate(&set(text), &node()).unwrap();
        assert_eq!(config.dns.len(), 1);
        assert_eq!(config.dns[0].name, "backend.mesh");
        assert_eq!(config.dns[0].ips.len(), 2);
    }

    /// A golden of Kuma's corpus (`../shared/kuma-corpus` beside the workspace).
    fn golden(path: &str) -> ResourceSet {
        let file = format!(
            "{}/../../../shared/kuma-corpus/xds-generator/{path}",
            env!("CARGO_MANIFEST_DIR")
        );
        set(&std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}")))
    }

    /// `kuma:envoy:admin` gives where `/ready` answers on the Dataplane's address and
    /// `kuma:readiness` where kuma-dp's reporter listens; the admin port itself is the
    /// bootstrap's, not read from xDS.
    #[test]
    fn admin_listener_and_readiness_cluster_give_the_ready_endpoints() {
        for (file, ready) in [
            ("admin/01.envoy-config.golden.yaml", "192.168.0.1:9901"),
            ("admin/10.zone-ingress.envoy-config.golden.yaml", ""),
            ("admin/11.zone-egress.envoy-config.golden.yaml", ""),
        ] {
            let config = translate(&golden(file), &node()).unwrap();
            let endpoints = &config.kuma_endpoints;
            if !ready.is_empty() {
                assert_eq!(endpoints.ready, Some(ready.parse().unwrap()), "{file}");
            }
            assert!(endpoints.ready.is_some(), "{file}");
            assert_eq!(
                endpoints.readiness_reporter,
                Some("127.0.0.1:9902".parse().unwrap()),
                "{file}"
            );
            assert_eq!(config.identity.admin_port, None, "{file}");
        }
    }

    /// `kuma:metrics:prometheus` gives the scrape address and path (the rewrite's Envoy stats
    /// filter has no effect) and its TLS as Envoy picks the chains: `activeMTLSBackend`'s
    /// mesh mTLS for every scraper but the Dataplane's own address (plaintext), `providedTLS`'s
    /// certificate files for every scraper (its `transport_protocol: tls` chain is never
    /// chosen), plaintext when the certificate paths were not given.
    #[test]
    fn prometheus_listener_gives_the_scrape_endpoint() {
        let own = SourcePrefix {
            address: "192.168.0.1".parse().unwrap(),
            len: 32,
        };
        let files = MetricsTls::Files {
            cert_path: "/path/cert".into(),
            key_path: "/path/key".into(),
        };
        for (file, address, path, tls, plaintext_sources) in [
            (
                "prometheus-endpoint/default.envoy-config.golden.yaml",
                "192.168.0.1:1234",
                "/non-standard-path",
                None,
                vec![],
            ),
            (
                "prometheus-endpoint/custom.envoy-config.golden.yaml",
                "192.168.0.1:8765",
                "/even-more-non-standard-path",
                None,
                vec![],
            ),
            (
                "prometheus-endpoint/delegated-tls-fallback.envoy-config.golden.yaml",
                "192.168.0.1:1234",
                "/non-standard-path",
                None,
                vec![],
            ),
            (
                "prometheus-endpoint/delegated-tls.envoy-config.golden.yaml",
                "192.168.0.1:1234",
                "/non-standard-path",
                Some(files),
                vec![],
            ),
            (
                "prometheus-endpoint/default-mtls.envoy-config.golden.yaml",
                "192.168.0.1:1234",
                "/non-standard-path",
                Some(MetricsTls::Mesh("demo".into())),
                vec![own],
            ),
        ] {
            let mut resources = golden(file);
            let mesh = secrets().replace(":secret:default", ":secret:demo");
            resources
                .secrets
                .extend(set(&format!("resources:{mesh}")).secrets);
            let config = match translate(&resources, &node()) {
                Ok(c) => c,
                Err(nacks) => panic!("{file}: {nacks:?}"),
            };
            let want = PrometheusEndpoint {
                address: address.parse().unwrap(),
                path: path.into(),
                applications: Vec::new(),
                tls,
                plaintext_sources,
            };
            assert_eq!(config.kuma_endpoints.prometheus, Some(want), "{file}");
        }
    }

    /// Metrics chains Bearing cannot serve as Envoy would are NACKed by their field: TLS on a
    /// source-matched chain, a client certificate beside file certificates, no chain for
    /// every scraper.
    #[test]
    fn prometheus_listener_shapes_not_served_are_nacked() {
        let base = golden("prometheus-endpoint/delegated-tls.envoy-config.golden.yaml");
        let listener =
            |set: &mut ResourceSet| set.listeners.get_mut(PROMETHEUS_LISTENER).unwrap().clone();
        let nacked = |set: &ResourceSet, field: &str| {
            let nacks = translate(set, &node()).unwrap_err();
            assert!(
                nacks
                    .iter()
                    .any(|n| n.resource == PROMETHEUS_LISTENER && n.field.ends_with(field)),
                "{field}: {nacks:?}"
            );
        };
        let mut set = base.clone();
        let mut l = listener(&mut set);
        l.filter_chains[1].filter_chain_match = Some(listener_pb::FilterChainMatch {
            source_prefix_ranges: vec![core_pb::CidrRange {
                address_prefix: "10.0.0.1".into(),
                prefix_len: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 32 }),
            }],
            ..Default::default()
        });
        set.listeners.insert(PROMETHEUS_LISTENER.into(), l);
        nacked(&set, "filter_chains[1].transport_socket");

        let mut set = base.clone();
        let mut l = listener(&mut set);
        l.filter_chains.remove(1);
        set.listeners.insert(PROMETHEUS_LISTENER.into(), l);
        nacked(&set, ".filter_chains");

        let mut set = base;
        let mut l = listener(&mut set);
        let socket = l.filter_chains[1].transport_socket.as_mut().unwrap();
        let Some(core_pb::transport_socket::ConfigType::TypedConfig(any)) = &mut socket.config_type
        else {
            panic!("no typed config");
        };
        let mut ctx = typed::<tls_pb::DownstreamTlsContext>(any).unwrap();
        ctx.require_client_certificate =
            Some(envoy_types::pb::google::protobuf::BoolValue { value: true });
        any.value = ctx.encode_to_vec();
        set.listeners.insert(PROMETHEUS_LISTENER.into(), l);
        nacked(&set, ".tls_certificates");
    }

    #[test]
    fn sni_forms_parse_or_are_named() {
        let (target, tags) = sni_target("backend{mesh=default,version=v2}").unwrap();
        assert_eq!(
            target,
            SniTarget::Service {
                mesh: "default".into(),
                service: "backend".into()
            }
        );
        assert_eq!(tags["version"], "v2");
        let (target, _) = sni_target("a1b2c3d4e5f607182.backend.8080.default.ms").unwrap();
        assert_eq!(
            target,
            SniTarget::MeshService {
                mesh: "default".into(),
                name: "backend".into(),
                port: 8080
            }
        );
        for kri in [
            "sni.msvc.default.east.backend.80",
            "sni.extsvc.default.example.9000",
            "sni.mzsvc.default.global-svc.80",
        ] {
            let (target, tags) = sni_target(kri).unwrap();
            let want = SniTarget::Kri {
                mesh: "default".into(),
                sni: kri.into(),
            };
            assert_eq!((target, tags), (want, BTreeMap::new()), "{kri}");
        }
        assert!(sni_target("sni.msvc.default").is_err());
        assert!(sni_target("example.com").is_err());
    }

    /// kuma-cp's zone egress of HTTP ExternalServices (xds-egress 03): behind each SNI chain's
    /// mesh mTLS, an HTTP connection manager whose route rewrites Host to the endpoint's
    /// hostname; the endpoint the cluster's `transport_socket_matches` select by metadata
    /// connects with its own TLS, the other cluster's endpoint in plaintext; DNS endpoints
    /// are named by their hostname; the pass-through chains stay bytes.
    #[test]
    fn egress_http_external_services_rewrite_host_with_per_endpoint_tls() {
        let file = format!(
            "{}/../../../shared/kuma-corpus/xds-egress/03.mixed-services.golden.yaml",
            env!("CARGO_MANIFEST_DIR")
        );
        // MeshTimeout's request head timeout on one HTTP chain, as kuma-cp renders it.
        let text = std::fs::read_to_string(&file).unwrap().replacen(
            "          statPrefix: externalservice-2\n",
            "          statPrefix: externalservice-2\n          requestHeadersTimeout: 5s\n",
            1,
        );
        let mut resources = set(&text);
        // The golden's secrets are stand-ins that do not load: the test CA's instead.
        let own = format!("resources:{}", secrets().replace(":default", ":mesh-1"));
        resources.secrets = set(&own).secrets;
        let node = NodeInfo {
            proxy_type: "egress".into(),
            mesh: String::new(),
            ..node()
        };
        let config = translate(&resources, &node).unwrap_or_else(|n| panic!("{n:#?}"));
        let routes = config.listeners[0].sni_routes.as_ref().unwrap();
        let route = |service: &str| {
            let target = SniTarget::Service {
                mesh: "mesh-1".into(),
                service: service.into(),
            };
            routes.iter().find(|r| r.target == target).unwrap()
        };
        let passthrough = route("service-1-zone-2");
        assert!(passthrough.terminate.is_none() && passthrough.http.is_none());
        let external = route("externalservice-2");
        assert_eq!(external.terminate.as_ref().unwrap().mesh, "mesh-1");
        let http = external.http.as_ref().unwrap();
        let table = http.routes.as_ref().unwrap();
        let RouteAction::Forward {
            backends, rewrite, ..
        } = &table.virtual_hosts[0].routes[0].action
        else {
            panic!("{table:?}")
        };
        assert_eq!(backends[0].cluster, "mesh-1:externalservice-2");
        assert!(rewrite.as_ref().unwrap().host_to_backend_hostname);
        assert_eq!(
            http.downstream_timeouts,
            DownstreamHttpTimeouts {
                request_headers: Some(Duration::from_secs(5)),
                ..DownstreamHttpTimeouts::ENVOY_DEFAULT
            }
        );

        let tls_cluster = &config.clusters["mesh-1:externalservice-2"];
        let host = &tls_cluster.dns.as_ref().unwrap().hosts[0];
        assert_eq!(
            (host.hostname.as_str(), host.tls_match.as_deref()),
            ("httpbin.io", Some("httpbin.io"))
        );
        let ip = "192.0.2.1".parse().unwrap();
        assert_eq!(host.endpoint(ip).hostname.as_deref(), Some("httpbin.io"));
        assert!(tls_cluster.tls.is_none());
        let Some(UpstreamTls::External {
            server_name,
            verification,
            ..
        }) = tls_cluster.tls_of(host.tls_match.as_deref())
        else {
            panic!("{tls_cluster:?}")
        };
        assert_eq!(
            (server_name.as_str(), *verification),
            ("httpbin.io", Verification::Secured)
        );
        let plain = &config.clusters["mesh-1:externalservice-1"];
        let host = &plain.dns.as_ref().unwrap().hosts[0];
        assert_eq!(host.tls_match, None);
        assert!(plain.tls_of(None).is_none());

        // Before its Secrets come (kuma-cp pushes them after Listeners), the HTTP chains
        // await them, as Envoy keeps the listener warming: no refusal.
        resources.secrets.clear();
        let nacks = translate(&resources, &node).unwrap_err();
        assert!(nacks.iter().all(|n| n.awaiting), "{nacks:#?}");
    }

    /// Envoy's transport socket matching: the first match whose every field the endpoint's
    /// `envoy.transport_socket_match` metadata holds with the same value; an empty match
    /// takes every endpoint.
    #[test]
    fn transport_matches_select_by_endpoint_metadata() {
        use envoy_types::pb::google::protobuf::{value::Kind, Value};
        let fields = |pairs: &[(&str, &str)]| Struct {
            fields: pairs
                .iter()
                .map(|(k, v)| {
                    let value = Value {
                        kind: Some(Kind::StringValue(v.to_string())),
                    };
                    (k.to_string(), value)
                })
                .collect(),
        };
        let named = |name: &str| TlsMatch {
            name: name.into(),
            tls: None,
        };
        let matches = [
            (named("tls"), fields(&[("tls", "on"), ("mesh", "m")])),
            (named("any"), fields(&[])),
        ];
        let metadata = |pairs: &[(&str, &str)]| core_pb::Metadata {
            filter_metadata: [("envoy.transport_socket_match".to_string(), fields(pairs))]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let chosen = |m: Option<&core_pb::Metadata>| transport_match(&matches, m);
        let both = metadata(&[("tls", "on"), ("mesh", "m"), ("x", "y")]);
        assert_eq!(chosen(Some(&both)).as_deref(), Some("tls"));
        let part = metadata(&[("tls", "on")]);
        assert_eq!(chosen(Some(&part)).as_deref(), Some("any"));
        assert_eq!(chosen(None).as_deref(), Some("any"));
        assert_eq!(transport_match(&matches[..1], None), None);
    }

    /// Each SNI chain's RBAC goes to the routes of its server names only, on a chain that
    /// passes TLS through too (evaluated there on the SNI, as Envoy sees no certificate);
    /// two server names of one destination on chains with different RBAC are NACKed by name.
    #[test]
    fn sni_chains_carry_their_own_rbac() {
        let subset_chain = |names: &str, rbac: &str, subset: &str| {
            format!(
                r#"
    - filterChainMatch: {{serverNames: [{names}], transportProtocol: tls}}
      filters:{rbac}
      - name: envoy.filters.network.tcp_proxy
        typedConfig: {{'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, cluster: c, statPrefix: c{subset}}}"#
            )
        };
        let chain = |names: &str, rbac: &str| subset_chain(names, rbac, "");
        let deny_web = r#"
      - name: envoy.filters.network.rbac
        typedConfig:
          '@type': type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          statPrefix: web.
          matcher:
            matcherList:
              matchers:
              - predicate: {singlePredicate: {input: {name: sni, typedConfig: {'@type': type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.ServerNameInput}}, valueMatch: {exact: 'web{mesh=default}'}}}
                onMatch: {action: {name: envoy.filters.rbac.action, typedConfig: {'@type': type.googleapis.com/envoy.config.rbac.v3.Action, name: p, action: DENY}}}
            onNoMatch: {action: {name: envoy.filters.rbac.action, typedConfig: {'@type': type.googleapis.com/envoy.config.rbac.v3.Action, name: default}}}"#;
        let listener = |chains: &str| {
            format!(
                r#"resources:
- name: c
  resource:
    '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
    name: c
    type: STATIC
    connectTimeout: 5s
    loadAssignment: {{clusterName: c, endpoints: [{{lbEndpoints: [{{endpoint: {{address: {{socketAddress: {{address: 10.0.0.254, portValue: 9000}}}}}}}}]}}]}}
- name: egress
  resource:
    '@type': type.googleapis.com/envoy.config.listener.v3.Listener
    name: egress
    address: {{socketAddress: {{address: 192.168.0.1, portValue: 10002}}}}
    listenerFilters:
    - name: envoy.filters.listener.tls_inspector
      typedConfig: {{'@type': type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}
    filterChains:{chains}
"#
            )
        };
        let node = NodeInfo {
            proxy_type: "egress".into(),
            ..node()
        };
        let two = [
            chain("'web{mesh=default}', 'api{mesh=default}'", deny_web),
            chain("'db{mesh=default}'", ""),
        ];
        let config = translate(&set(&listener(&two.concat())), &node).unwrap();
        let routes = config.listeners[0].sni_routes.as_ref().unwrap();
        let rbac = |service: &str| {
            let target = SniTarget::Service {
                mesh: "default".into(),
                service: service.into(),
            };
            let route = routes.iter().find(|r| r.target == target).unwrap();
            assert!(route.terminate.is_none());
            route.network_rbac.clone()
        };
        let expected = RbacEngine::Matcher(RbacMatcher {
            matchers: vec![RbacMatch {
                predicate: RbacPredicate::Single {
                    input: RbacInput::ServerName,
                    value: RbacString::Exact("web{mesh=default}".into()),
                },
                decision: RbacDecision {
                    policy: "p".into(),
                    action: RbacAction::Deny,
                },
            }],
            on_no_match: Some(RbacDecision {
                policy: "default".into(),
                action: RbacAction::Allow,
            }),
        });
        for service in ["web", "api"] {
            assert_eq!(
                rbac(service).and_then(|r| r.enforced),
                Some(expected.clone())
            );
        }
        assert_eq!(rbac("db"), None);

        let version = |v: &str| {
            format!(", metadataMatch: {{filterMetadata: {{envoy.lb: {{version: '{v}'}}}}}}")
        };
        let split = [
            subset_chain("'web{mesh=default,version=1}'", deny_web, &version("1")),
            subset_chain("'web{mesh=default,version=2}'", "", &version("2")),
        ];
        let nacks = translate(&set(&listener(&split.concat())), &node).unwrap_err();
        let at = "listeners[\"egress\"].filter_chains[1].filter_chain_match.server_names[0]";
        assert!(
            nacks
                .iter()
                .any(|n| n.field == at && n.reason.contains("RBAC")),
            "{nacks:#?}"
        );
    }

    /// A zone egress chain whose server names are Kuma's KRI form (MeshService and
    /// MeshExternalService of MADR 101) becomes KRI SNI routes, byte for byte, as the zone
    /// ingress compiled by bearing-control has them.
    #[test]
    fn egress_routes_kri_snis() {
        let text = r#"
resources:
- name: external
  resource:
    '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
    connectTimeout: 5s
    loadAssignment:
      clusterName: external
      endpoints:
      - lbEndpoints:
        - endpoint:
            address:
              socketAddress: {address: 10.0.0.254, portValue: 9000}
    name: external
    type: STATIC
- name: inbound:192.168.0.1:10002
  resource:
    '@type': type.googleapis.com/envoy.config.listener.v3.Listener
    address:
      socketAddress: {address: 192.168.0.1, portValue: 10002}
    filterChains:
    - filterChainMatch:
        serverNames:
        - sni.extsvc.default.zone-1.example.9000
        - sni.msvc.default.zone-1.backend.80
        transportProtocol: tls
      filters:
      - name: envoy.filters.network.tcp_proxy
        typedConfig:
          '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          cluster: external
          statPrefix: external
    listenerFilters:
    - name: envoy.filters.listener.tls_inspector
      typedConfig:
        '@type': type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector
    name: inbound:192.168.0.1:10002
    trafficDirection: INBOUND
"#;
        let node = NodeInfo {
            proxy_type: "egress".into(),
            ..node()
        };
        let config = translate(&set(text), &node).unwrap();
        let routes = config.listeners[0].sni_routes.as_ref().unwrap();
        let targets: Vec<_> = routes
            .iter()
            .map(|r| (&r.target, r.cluster.as_str()))
            .collect();
        let kri = |sni: &str| SniTarget::Kri {
            mesh: "default".into(),
            sni: sni.into(),
        };
        assert_eq!(
            targets,
            [
                (&kri("sni.extsvc.default.zone-1.example.9000"), "external"),
                (&kri("sni.msvc.default.zone-1.backend.80"), "external"),
            ]
        );
    }

    /// Envoy's refusals of an address: a socket address without a port, and an internal
    /// address prefix that is not an IP address (a prefix length wider than the address is
    /// taken, as Envoy narrows it).
    #[test]
    fn addresses_envoy_refuses_are_refused() {
        let socket = |port| core_pb::Address {
            address: Some(core_pb::address::Address::SocketAddress(
                core_pb::SocketAddress {
                    address: "127.0.0.6".into(),
                    port_specifier: port,
                    ..Default::default()
                },
            )),
        };
        use core_pb::socket_address::PortSpecifier;
        assert!(socket_address(Some(&socket(None))).is_err());
        let any_port = socket_address(Some(&socket(Some(PortSpecifier::PortValue(0)))));
        assert_eq!(any_port, Ok("127.0.0.6:0".parse().unwrap()));
        let range = |prefix: &str, length| core_pb::CidrRange {
            address_prefix: prefix.into(),
            prefix_len: Some(envoy_types::pb::google::protobuf::UInt32Value { value: length }),
        };
        let hcm = hcm_pb::HttpConnectionManager {
            internal_address_config: Some(hcm_pb::http_connection_manager::InternalAddressConfig {
                cidr_ranges: vec![
                    range("fc00::", 7),
                    range("::1/128", 128),
                    range("10.0.0.0", 40),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let problems = internal_address_problems(&hcm, "at");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0].0,
            "at.internal_address_config.cidr_ranges[1].address_prefix"
        );
    }
}

//! Envoy resources (as kuma-cp sends them) translated into Bearing's `ProxyConfig`.
//!
//! What today's model expresses is translated faithfully: sidecar inbound and outbound
//! listeners (TCP proxy, or an HTTP connection manager whose one route sends everything to one
//! cluster), mesh mTLS from SDS secrets, the transparent-proxy capture listeners, clusters
//! (STATIC, EDS, STRICT_DNS with IP addresses) with their endpoints, timeouts, circuit breakers
//! and upstream TLS, zone ingress/egress SNI routes and Kuma's DNS table. Kuma's plumbing that
//! Bearing serves itself (admin `/ready`, readiness, Prometheus metrics) is recognised by name
//! and consumed. Everything else is a [`Nack`] naming the resource and the field path (the
//! guard in `fields.rs` makes sure no set field is passed over).

use crate::decode::{
    CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION, RUNTIME, SECRET,
};
use crate::fields::{
    self, Unhandled, KUMA_STREAM_IDLE_TIMEOUTS, KUMA_TCP_IDLE_TIMEOUTS, POLICY_NOT_ENFORCED,
};
use bearing_proxy_config::{
    CircuitBreakers, Cluster, Direction, DnsRecord, DownstreamTls, Endpoint, Listener, MeshTls,
    Protocol, ProxyConfig, ProxyIdentity, SniRoute, SniTarget, TransparentProxy, UpstreamTls,
    Verification,
};
use envoy_types::pb::envoy::config::cluster::v3 as cluster_pb;
use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint_pb;
use envoy_types::pb::envoy::config::listener::v3 as listener_pb;
use envoy_types::pb::envoy::config::route::v3 as route_pb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp_pb;
use envoy_types::pb::envoy::extensions::filters::udp::dns_filter::v3 as dns_pb;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls_pb;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http_pb;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Envoy's default connect timeout, used when a cluster sets none.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Envoy's default route timeout, used when a route sets none.
const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// Listeners that are Kuma's plumbing, served by Bearing itself rather than configured.
const PLUMBING_LISTENERS: [&str; 2] = ["kuma:envoy:admin", "kuma:metrics:prometheus"];
/// Clusters that are Kuma's plumbing behind those listeners.
const PLUMBING_CLUSTERS: [&str; 3] = [
    "kuma:envoy:admin",
    "kuma:readiness",
    "kuma:metrics:hijacker",
];
/// The transparent proxy's capture listeners and clusters (IPv4, IPv6).
const CAPTURE_OUTBOUND: [&str; 2] = ["outbound:passthrough:ipv4", "outbound:passthrough:ipv6"];
const CAPTURE_INBOUND: [&str; 2] = ["inbound:passthrough:ipv4", "inbound:passthrough:ipv6"];
/// Kuma's cluster for inbound traffic to a port no inbound serves when passthrough is off.
const NO_DESTINATION_CLUSTER: &str = "self_transparentproxy_no_destination_inbound";
/// The SDS secret naming the system's CA roots (kuma-dp's `systemCaPath`).
const SYSTEM_TRUST_BUNDLE: &str = "system_trust_bundle";
/// The reason resources in Kuma's unified naming (`self_...`, `system_...`, `kri_...`) are
/// NACKed with.
pub const UNIFIED_NAMING: &str = "Kuma's unified resource naming: kuma-cp sends it only to proxies advertising feature-unified-resource-naming, which Bearing does not";
/// The reason every gateway listener is NACKed with.
pub const GATEWAY_NOT_YET: &str = "gateway listeners over xDS: not yet";

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
    /// RDS.
    pub routes: BTreeMap<String, route_pb::RouteConfiguration>,
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
            RUNTIME => return Err(nack(GATEWAY_NOT_YET.to_string())),
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
        nacks: Vec::new(),
        listeners: Vec::new(),
        clusters: BTreeMap::new(),
        routed: BTreeMap::new(),
        direct: Vec::new(),
        meshes: BTreeSet::new(),
        permissive: BTreeSet::new(),
        dns: Vec::new(),
        admin_port: None,
    };
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
    for (name, cluster) in &resources.clusters {
        if name.starts_with("_kuma:metrics:") {
            let reason = format!("metrics: {POLICY_NOT_ENFORCED} (a MeshMetric backend cluster)");
            t.nack(CLUSTER, name, cluster_path(name), reason);
        } else if consumed_clusters.contains(name.as_str())
            || direct_sources.contains(name.as_str())
        {
            continue;
        } else if is_unified_name(name) {
            t.nack(CLUSTER, name, cluster_path(name), UNIFIED_NAMING);
        } else {
            t.cluster(name, cluster);
        }
    }
    t.check_other_resources();
    t.apply_routes();
    let mtls = t.mesh_tls();
    t.dns.sort_by(|a, b| a.name.cmp(&b.name));
    t.dns.dedup_by(|a, b| a.name == b.name);
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
            admin_port: t.admin_port,
        },
        listeners: t.listeners,
        clusters: t.clusters,
        transparent_proxy,
        dns: t.dns,
        mtls,
    };
    config.version = config.content_version();
    Ok(config)
}

/// How a listener's HTTP connection manager or TCP proxy reaches its cluster.
struct Route {
    cluster: String,
    protocol: Protocol,
    timeout: Option<Duration>,
    /// A TCP proxy's `metadata_match` (`envoy.lb` tags the endpoints must carry).
    subset: BTreeMap<String, String>,
}

struct Translator<'a> {
    set: &'a ResourceSet,
    nacks: Vec<Nack>,
    listeners: Vec<Listener>,
    clusters: BTreeMap<String, Cluster>,
    /// Per cluster: the protocol and request timeout of the routes that reach it.
    routed: BTreeMap<String, (Protocol, Option<Duration>, String)>,
    /// Listeners sending to an ORIGINAL_DST cluster (Kuma's direct access): the listener, its
    /// address and the cluster, which becomes a cluster of that one address.
    direct: Vec<(String, SocketAddr, String)>,
    /// Meshes whose identity a listener or cluster presents.
    meshes: BTreeSet<String>,
    /// Meshes with an inbound that accepts plaintext beside mTLS.
    permissive: BTreeSet<String>,
    dns: Vec<DnsRecord>,
    admin_port: Option<u16>,
}

fn listener_path(name: &str) -> String {
    format!("listeners[{name:?}]")
}

fn cluster_path(name: &str) -> String {
    format!("clusters[{name:?}]")
}

fn duration(d: &PbDuration) -> Duration {
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
            let ip: IpAddr = s.address.parse().map_err(|_| {
                format!("{:?} is not an IP address (hostnames need DNS)", s.address)
            })?;
            let port = match s.port_specifier {
                Some(PortSpecifier::PortValue(p)) => {
                    u16::try_from(p).map_err(|_| format!("port {p} out of range"))?
                }
                Some(PortSpecifier::NamedPort(ref n)) => {
                    return Err(format!("named port {n:?} is not supported"))
                }
                None => 0,
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

    /// The transparent proxy, from Kuma's capture listeners (with original destination).
    fn capture(&mut self) -> Option<TransparentProxy> {
        let set = self.set;
        let port_of = |names: &[&str; 2]| {
            names.iter().find_map(|n| {
                set.listeners
                    .get(*n)
                    .and_then(|l| socket_address(l.address.as_ref()).ok())
                    .map(|a| a.port())
            })
        };
        let (outbound, inbound) = (port_of(&CAPTURE_OUTBOUND), port_of(&CAPTURE_INBOUND));
        for name in CAPTURE_OUTBOUND.iter().chain(&CAPTURE_INBOUND) {
            let Some(listener) = set.listeners.get(*name) else {
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
                    .find(|n| set.listeners.contains_key(**n))
                    .copied()
                    .unwrap_or_default();
                self.nack(
                    LISTENER,
                    name,
                    listener_path(name),
                    "transparent proxying needs both the inbound and the outbound capture listener",
                );
                return None;
            }
        };
        let passthrough_cluster = set
            .listeners
            .get(CAPTURE_OUTBOUND[0])
            .and_then(|l| self.tcp_cluster_of(l));
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
                .any(|n| set.listeners.contains_key(*n)),
            outbound_passthrough,
        })
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
            consumed.extend(CAPTURE_OUTBOUND.iter().chain(&CAPTURE_INBOUND).copied());
            consumed.insert(NO_DESTINATION_CLUSTER);
        }
        consumed
    }

    fn listener(&mut self, name: &str, listener: &listener_pb::Listener) {
        let path = listener_path(name);
        if CAPTURE_OUTBOUND.contains(&name) || CAPTURE_INBOUND.contains(&name) {
            return;
        }
        if PLUMBING_LISTENERS.contains(&name) {
            if name == "kuma:envoy:admin" {
                self.admin_port = socket_address(listener.address.as_ref())
                    .ok()
                    .map(|a| a.port())
                    .filter(|p| *p != 0);
            }
            return;
        }
        if name == "_kuma:dynamicconfig" {
            return self.dynamic_config(name, listener);
        }
        if name == "kuma:dns" {
            return self.dns_filter(name, listener);
        }
        if name.starts_with("_kuma:metrics:") {
            return self.nack(
                LISTENER,
                name,
                path,
                format!("metrics: {POLICY_NOT_ENFORCED} (a MeshMetric backend listener)"),
            );
        }
        if is_unified_name(name) {
            return self.nack(LISTENER, name, path, UNIFIED_NAMING);
        }
        if name == "probe:listener" {
            return self.nack(LISTENER, name, path, "Kuma's application probe proxy (virtual probes) is not implemented: kubelet must probe the application directly");
        }
        if self.is_gateway_listener(listener) {
            return self.nack(LISTENER, name, path, GATEWAY_NOT_YET);
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
            _ if name.starts_with("inbound:") => Direction::Inbound,
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
        let mut out = Listener {
            name: name.to_string(),
            address,
            direction,
            protocol: Protocol::Tcp,
            cluster: String::new(),
            service: service.unwrap_or_default(),
            bind,
            tls: None,
            sni_routes: None,
            gateway: None,
            deny_all: None,
        };
        if sni_chains > 0 {
            out.sni_routes = Some(self.sni_routes(name, listener));
        } else {
            self.plain_chains(name, listener, &mut out);
        }
        if self.nacks.len() == before {
            self.listeners.push(out);
        }
    }

    /// Builtin gateway listeners: Kuma's gateway routes come over RDS.
    fn is_gateway_listener(&self, listener: &listener_pb::Listener) -> bool {
        listener
            .filter_chains
            .iter()
            .flat_map(|c| &c.filters)
            .any(|f| {
                let Some(listener_pb::filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                    return false;
                };
                typed::<hcm_pb::HttpConnectionManager>(any).is_some_and(|h| {
                    matches!(
                        h.route_specifier,
                        Some(hcm_pb::http_connection_manager::RouteSpecifier::Rds(_))
                    )
                }) && type_name(any).ends_with("HttpConnectionManager")
            })
    }

    /// Sidecar listeners: one chain, or an mTLS chain plus (PERMISSIVE) a plaintext one.
    fn plain_chains(&mut self, name: &str, listener: &listener_pb::Listener, out: &mut Listener) {
        let path = listener_path(name);
        let mut route: Option<Route> = None;
        let (mut tls_mesh, mut plaintext, mut tls_passthrough) = (None, false, None);
        // A TLS chain that did not translate has its own Nack; the passthrough rule below
        // then has nothing to add.
        let mut tls_refused = false;
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
                        Some(mesh) if tls_mesh.as_ref().is_some_and(|m| *m != mesh) => self.nack(
                            LISTENER,
                            name,
                            format!("{at}.transport_socket"),
                            "chains of one listener in different meshes",
                        ),
                        Some(mesh) => tls_mesh = Some(mesh),
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
            if !this.subset.is_empty() {
                self.nack(LISTENER, name, format!("{at}.filters"), "metadata_match: endpoint subsets are implemented only by a zone proxy's SNI tags");
            }
            match &route {
                Some(r) if r.cluster != this.cluster || r.protocol != this.protocol => self.nack(
                    LISTENER,
                    name,
                    format!("{at}.filters"),
                    "chains that lead to different clusters or protocols: ProxyConfig holds one destination per listener",
                ),
                Some(_) => {}
                None => route = Some(this),
            }
        }
        if let (Some(at), None, false) = (&tls_passthrough, &tls_mesh, tls_refused) {
            self.nack(LISTENER, name, format!("{at}.filter_chain_match.transport_protocol"), "TLS passed through on a sidecar listener is implemented only beside mesh mTLS (PERMISSIVE)");
        }
        if let Some(mesh) = tls_mesh {
            if plaintext || tls_passthrough.is_some() {
                self.permissive.insert(mesh.clone());
            }
            self.meshes.insert(mesh.clone());
            out.tls = Some(DownstreamTls { mesh });
        }
        if let Some(mut r) = route {
            let original_dst = self.set.clusters.get(&r.cluster).is_some_and(|c| {
                cluster_type(c) == cluster_pb::cluster::DiscoveryType::OriginalDst as i32
            });
            if original_dst {
                // The original destination of a connection this listener claims by address
                // is the listener's own address.
                self.direct
                    .push((name.to_string(), out.address, r.cluster.clone()));
                r.cluster = name.to_string();
            }
            out.protocol = r.protocol;
            out.cluster = r.cluster.clone();
            if out.service.is_empty() && out.direction == Direction::Outbound {
                out.service = r.cluster.clone();
            }
            self.route_to(r.cluster, r.protocol, r.timeout, name);
        }
    }

    /// The terminal network filter of a chain: a TCP proxy or an HTTP connection manager.
    fn chain_route(
        &mut self,
        name: &str,
        at: &str,
        chain: &listener_pb::FilterChain,
    ) -> Option<Route> {
        let mut found = None;
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
            if let Some(tcp) =
                typed::<tcp_pb::TcpProxy>(any).filter(|_| type_name(any).ends_with("TcpProxy"))
            {
                found = match tcp.cluster_specifier {
                    Some(tcp_pb::tcp_proxy::ClusterSpecifier::Cluster(c)) => Some(Route {
                        cluster: c,
                        protocol: Protocol::Tcp,
                        timeout: None,
                        subset: struct_strings(tcp.metadata_match.as_ref(), "envoy.lb"),
                    }),
                    _ => None,
                };
                if let Some(idle) = &tcp.idle_timeout {
                    if !KUMA_TCP_IDLE_TIMEOUTS.contains(&duration(idle)) {
                        self.nack(LISTENER, name, format!("{fpath}.idle_timeout"), format!("timeouts: {POLICY_NOT_ENFORCED} (a TCP idle timeout other than Kuma's defaults, 1h outbound and 2h inbound)"));
                    }
                }
            } else if let Some(hcm) = typed::<hcm_pb::HttpConnectionManager>(any)
                .filter(|_| type_name(any).ends_with("HttpConnectionManager"))
            {
                found = self.http_route(name, &fpath, &hcm);
            }
        }
        if found.is_none() {
            self.nack(
                LISTENER,
                name,
                format!("{at}.filters"),
                "no tcp_proxy to one cluster or http_connection_manager with an inline route",
            );
        }
        found
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
        let filters = &hcm.http_filters;
        for (k, f) in filters.iter().enumerate() {
            let kind = match &f.config_type {
                Some(hcm_pb::http_filter::ConfigType::TypedConfig(any)) => {
                    type_name(any).to_string()
                }
                _ => f.name.clone(),
            };
            let last = k + 1 == filters.len();
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
        if let Some(idle) = hcm.stream_idle_timeout.as_ref().map(duration) {
            if !KUMA_STREAM_IDLE_TIMEOUTS.contains(&idle) {
                self.nack(LISTENER, name, format!("{at}.stream_idle_timeout"), format!("timeouts: {POLICY_NOT_ENFORCED} (a stream idle timeout other than Kuma's defaults, 30m outbound and 1h inbound)"));
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
        let added = rc.request_headers_to_add.iter().enumerate().map(|(k, h)| {
            let key = h.header.as_ref().map_or("", |h| h.key.as_str());
            (format!("request_headers_to_add[{k}]"), key)
        });
        let removed = rc.request_headers_to_remove.iter().enumerate();
        let removed = removed.map(|(k, h)| (format!("request_headers_to_remove[{k}]"), h.as_str()));
        for (field, key) in added.chain(removed) {
            if key != "x-kuma-tags" {
                let reason =
                    "header edits are not implemented (only Kuma's x-kuma-tags is understood)";
                self.nack(LISTENER, name, format!("{rpath}.{field}"), reason);
            }
        }
        let [vhost] = rc.virtual_hosts.as_slice() else {
            self.nack(LISTENER, name, format!("{rpath}.virtual_hosts"), "ProxyConfig routes a sidecar listener to one cluster: exactly one virtual host is implemented");
            return None;
        };
        if vhost.domains != ["*"] {
            self.nack(
                LISTENER,
                name,
                format!("{rpath}.virtual_hosts[0].domains"),
                "only the domain `*` is implemented on sidecar listeners",
            );
        }
        let [route] = vhost.routes.as_slice() else {
            self.nack(LISTENER, name, format!("{rpath}.virtual_hosts[0].routes"), "ProxyConfig routes a sidecar listener to one cluster: exactly one route is implemented");
            return None;
        };
        let route_at = format!("{rpath}.virtual_hosts[0].routes[0]");
        let prefix = route
            .r#match
            .as_ref()
            .and_then(|m| match &m.path_specifier {
                Some(route_pb::route_match::PathSpecifier::Prefix(p)) => Some(p.as_str()),
                _ => None,
            });
        if prefix != Some("/") {
            self.nack(
                LISTENER,
                name,
                format!("{route_at}.match"),
                "only `prefix: /` is implemented on sidecar listeners",
            );
        }
        let Some(route_pb::route::Action::Route(action)) = &route.action else {
            self.nack(
                LISTENER,
                name,
                format!("{route_at}.action"),
                "only a route to a cluster is implemented",
            );
            return None;
        };
        let Some(route_pb::route_action::ClusterSpecifier::Cluster(cluster)) =
            &action.cluster_specifier
        else {
            self.nack(
                LISTENER,
                name,
                format!("{route_at}.route.cluster_specifier"),
                "only a route to one cluster is implemented",
            );
            return None;
        };
        let timeout = match action.timeout.as_ref().map(duration) {
            None => Some(DEFAULT_ROUTE_TIMEOUT),
            Some(Duration::ZERO) => None,
            Some(d) => Some(d),
        };
        Some(Route {
            cluster: cluster.clone(),
            protocol,
            timeout,
            subset: BTreeMap::new(),
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

    /// Downstream mesh mTLS: the mesh whose identity the chain presents.
    fn downstream_tls(
        &mut self,
        name: &str,
        at: &str,
        socket: &core_pb::TransportSocket,
    ) -> Option<String> {
        let any = self.socket_config(LISTENER, name, at, socket)?;
        let Some(ctx) = typed::<tls_pb::DownstreamTlsContext>(any)
            .filter(|_| type_name(any).ends_with("DownstreamTlsContext"))
        else {
            return None; // another type: NACKed by the field guard
        };
        let at = format!("{at}.typed_config({})", type_name(any));
        if !ctx
            .require_client_certificate
            .as_ref()
            .is_some_and(|b| b.value)
        {
            self.nack(
                LISTENER,
                name,
                format!("{at}.require_client_certificate"),
                "only mesh mTLS (client certificate required) is terminated on sidecar listeners",
            );
        }
        let common = ctx.common_tls_context.unwrap_or_default();
        let mesh =
            self.identity_mesh(LISTENER, name, &format!("{at}.common_tls_context"), &common)?;
        let ca = validation_sds(&common);
        if ca.as_deref() != Some(&*format!("mesh_ca:secret:{mesh}")) {
            self.nack(
                LISTENER,
                name,
                format!("{at}.common_tls_context.combined_validation_context"),
                format!("clients must be verified against mesh_ca:secret:{mesh}"),
            );
        }
        Some(mesh)
    }

    /// The mesh of the `identity_cert:secret:<mesh>` SDS secret a TLS context presents.
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
                "mesh mTLS presents exactly one identity_cert:secret:<mesh> secret",
            );
            return None;
        };
        match sds.name.strip_prefix("identity_cert:secret:") {
            Some(mesh) if self.set.secrets.contains_key(&sds.name) => Some(mesh.to_string()),
            Some(_) => {
                self.await_secret(
                    type_url,
                    name,
                    format!("{at}.tls_certificate_sds_secret_configs[0].name"),
                    &sds.name,
                );
                None
            }
            None => {
                self.nack(
                    type_url,
                    name,
                    format!("{at}.tls_certificate_sds_secret_configs[0].name"),
                    format!(
                        "secret {:?} is not a Kuma mesh identity (identity_cert:secret:<mesh>)",
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
                    .map(|mesh| {
                        self.meshes.insert(mesh.clone());
                        DownstreamTls { mesh }
                    }),
                None => None,
            };
            let Some(route) = self.chain_route(name, &at, chain) else {
                continue;
            };
            if route.protocol != Protocol::Tcp {
                self.nack(LISTENER, name, format!("{at}.filters"), "HTTP routing behind an SNI chain is not implemented (ProxyConfig's SNI routes forward bytes)");
                continue;
            }
            for (k, server_name) in names.iter().enumerate() {
                let at = format!("{at}.filter_chain_match.server_names[{k}]");
                match sni_target(server_name) {
                    Ok((_, tags)) if !self.same_selection(&route.cluster, &tags, &route.subset) => self.nack(LISTENER, name, at, format!("the chain's metadata_match {:?} selects other endpoints than the SNI's tags: Bearing selects endpoints by the SNI's tags", route.subset)),
                    Ok((target, _)) => match routes.iter().find(|r: &&SniRoute| r.target == target) {
                        Some(r) if r.cluster != route.cluster || r.terminate != terminate => self.nack(LISTENER, name, at, "SNIs of one service lead to different clusters: Bearing routes a service to one cluster and narrows by the SNI's tags"),
                        Some(_) => {}
                        None => routes.push(SniRoute { target, cluster: route.cluster.clone(), terminate: terminate.clone() }),
                    },
                    Err(reason) => self.nack(LISTENER, name, at, reason),
                }
            }
            self.route_to(route.cluster.clone(), Protocol::Tcp, None, name);
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
        let mut found = fields::unhandled_in(
            "envoy.config.cluster.v3.Cluster",
            &cluster.encode_to_vec(),
            &path,
        );
        if kind == DiscoveryType::OriginalDst as i32
            && cluster.lb_policy == cluster_pb::cluster::LbPolicy::ClusterProvided as i32
        {
            // The only load balancing an original-destination cluster has.
            found.retain(|u| !u.path.ends_with(".lb_policy"));
        }
        self.unhandled(CLUSTER, name, found);
        let assignment = if kind == DiscoveryType::Eds as i32 {
            let service = cluster
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(name);
            self.set.endpoints.get(service)
        } else if kind == DiscoveryType::Static as i32 || kind == DiscoveryType::StrictDns as i32 {
            cluster.load_assignment.as_ref()
        } else {
            let what = if kind == DiscoveryType::OriginalDst as i32 {
                "ORIGINAL_DST clusters are served only behind Kuma's capture listeners or a listener's own address"
            } else {
                "this cluster type is not implemented"
            };
            return self.nack(CLUSTER, name, format!("{path}.type"), what);
        };
        let endpoints = assignment
            .map(|a| self.endpoints(name, &path, a))
            .unwrap_or_default();
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
        }
        let protocol = self.upstream_protocol(name, &path, cluster);
        let tls = cluster
            .transport_socket
            .as_ref()
            .and_then(|s| self.upstream_tls(name, &format!("{path}.transport_socket"), s));
        if let Some(source) = cluster
            .upstream_bind_config
            .as_ref()
            .and_then(|b| b.source_address.as_ref())
        {
            if !matches!(source.address.as_str(), "127.0.0.6" | "::6") {
                self.nack(
                    CLUSTER,
                    name,
                    format!("{path}.upstream_bind_config"),
                    "only Kuma's passthrough source address (127.0.0.6, ::6) is implemented",
                );
            }
        }
        if self.nacks.len() != before {
            return;
        }
        self.clusters.insert(
            name.to_string(),
            Cluster {
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
            },
        );
    }

    fn endpoints(
        &mut self,
        name: &str,
        path: &str,
        assignment: &endpoint_pb::ClusterLoadAssignment,
    ) -> Vec<Endpoint> {
        let mut out = Vec::new();
        let mut weights = BTreeSet::new();
        for (i, locality) in assignment.endpoints.iter().enumerate() {
            let at = format!("{path}.load_assignment.endpoints[{i}]");
            for (j, lb) in locality.lb_endpoints.iter().enumerate() {
                let at = format!("{at}.lb_endpoints[{j}]");
                weights.insert(lb.load_balancing_weight.as_ref().map_or(1, |w| w.value));
                let Some(endpoint_pb::lb_endpoint::HostIdentifier::Endpoint(e)) =
                    &lb.host_identifier
                else {
                    self.nack(CLUSTER, name, at, "only inline endpoints are implemented");
                    continue;
                };
                match socket_address(e.address.as_ref()) {
                    Ok(address) => out.push(Endpoint {
                        address,
                        origin: format!("xds cluster {}", assignment.cluster_name),
                        tags: struct_strings(lb.metadata.as_ref(), "envoy.lb"),
                    }),
                    Err(e) => self.nack(CLUSTER, name, format!("{at}.endpoint.address"), e),
                }
            }
        }
        if weights.len() > 1 {
            self.nack(CLUSTER, name, format!("{path}.load_assignment.endpoints"), "endpoints of different weights: ProxyConfig balances round robin over equal endpoints");
        }
        out
    }

    /// HTTP/1 or HTTP/2 from `HttpProtocolOptions`; TCP when the cluster sets none.
    fn upstream_protocol(
        &mut self,
        name: &str,
        path: &str,
        cluster: &cluster_pb::Cluster,
    ) -> Protocol {
        use upstream_http_pb::http_protocol_options::explicit_http_config::ProtocolConfig;
        use upstream_http_pb::http_protocol_options::UpstreamProtocolOptions;
        let mut protocol = Protocol::Tcp;
        for (key, any) in &cluster.typed_extension_protocol_options {
            let Some(options) = typed::<upstream_http_pb::HttpProtocolOptions>(any)
                .filter(|_| type_name(any).ends_with("upstreams.http.v3.HttpProtocolOptions"))
            else {
                continue;
            };
            match options.upstream_protocol_options {
                Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match e.protocol_config {
                    Some(ProtocolConfig::Http2ProtocolOptions(_)) => protocol = Protocol::Http2,
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
        protocol
    }

    /// Upstream TLS: mesh mTLS by the SDS identity it presents, else TLS to an external service.
    fn upstream_tls(
        &mut self,
        name: &str,
        at: &str,
        socket: &core_pb::TransportSocket,
    ) -> Option<UpstreamTls> {
        let any = self.socket_config(CLUSTER, name, at, socket)?;
        let ctx = typed::<tls_pb::UpstreamTlsContext>(any)
            .filter(|_| type_name(any).ends_with("UpstreamTlsContext"))?;
        let at = format!("{at}.typed_config({})", type_name(any));
        let common = ctx.common_tls_context.clone().unwrap_or_default();
        let sans = subject_alt_names(&common);
        let common_at = format!("{at}.common_tls_context");
        if common
            .tls_certificate_sds_secret_configs
            .iter()
            .any(|s| s.name.starts_with("identity_cert:secret:"))
        {
            let mesh = self.identity_mesh(CLUSTER, name, &common_at, &common)?;
            self.meshes.insert(mesh.clone());
            let identity = match sans.as_slice() {
                [(_, one)] => one.clone(),
                _ => {
                    self.nack(CLUSTER, name, format!("{common_at}.combined_validation_context.default_validation_context.match_typed_subject_alt_names"), "mesh mTLS upstreams verify exactly one SPIFFE id in ProxyConfig");
                    return None;
                }
            };
            let server_ca_pem = match validation_sds(&common)
                .as_deref()
                .and_then(|n| n.strip_prefix("mesh_ca:secret:"))
            {
                Some(ca_mesh) if ca_mesh == mesh => None,
                Some(ca_mesh) => match self.secret_ca(&format!("mesh_ca:secret:{ca_mesh}")) {
                    Some(pem) => Some(pem),
                    None => {
                        let secret = format!("mesh_ca:secret:{ca_mesh}");
                        let field = format!("{common_at}.combined_validation_context.validation_context_sds_secret_config");
                        if self.set.secrets.contains_key(&secret) {
                            self.nack(
                                CLUSTER,
                                name,
                                field,
                                format!("secret {secret} has no inline trusted CA"),
                            );
                        } else {
                            self.await_secret(CLUSTER, name, field, &secret);
                        }
                        return None;
                    }
                },
                None => {
                    self.nack(
                        CLUSTER,
                        name,
                        format!("{common_at}.combined_validation_context"),
                        "mesh mTLS upstreams verify against a mesh_ca:secret:<mesh> secret",
                    );
                    return None;
                }
            };
            return Some(UpstreamTls::Mesh {
                mesh,
                sni: ctx.sni,
                identity,
                server_ca_pem,
            });
        }
        // TLS to a service outside the mesh.
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
        })
    }

    fn secret_ca(&self, name: &str) -> Option<String> {
        match self.set.secrets.get(name)?.r#type.as_ref()? {
            tls_pb::secret::Type::ValidationContext(v) => data_text(v.trusted_ca.as_ref()),
            _ => None,
        }
    }

    /// `_kuma:dynamicconfig`: the `/dns` direct response holds the DNS table.
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

    /// Route configurations (only gateways use them: sidecars carry routes inline) are NACKed;
    /// secrets and endpoint assignments get the field guard.
    fn check_other_resources(&mut self) {
        let names: Vec<String> = self.set.routes.keys().cloned().collect();
        for name in names {
            self.nack(
                ROUTE_CONFIGURATION,
                &name,
                format!("routes[{name:?}]"),
                GATEWAY_NOT_YET,
            );
        }
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

    /// Records that `listener` reaches `cluster` with `protocol`; an HTTP route's protocol and
    /// timeout win over a TCP proxy's (which ignores the cluster's HTTP options, as Envoy's).
    fn route_to(
        &mut self,
        cluster: String,
        protocol: Protocol,
        timeout: Option<Duration>,
        listener: &str,
    ) {
        let route = (protocol, timeout, listener.to_string());
        self.routed
            .entry(cluster)
            .and_modify(|r| {
                if protocol.is_http() {
                    *r = route.clone();
                }
            })
            .or_insert(route);
    }

    /// Gives each cluster the protocol and request timeout of the routes that reach it.
    fn apply_routes(&mut self) {
        for (cluster_name, (protocol, timeout, listener)) in std::mem::take(&mut self.routed) {
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
                cluster.request_timeout = timeout;
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
            let identity_name = format!("identity_cert:secret:{mesh}");
            let ca_name = format!("mesh_ca:secret:{mesh}");
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
            let Some(ca_cert_pem) = self.secret_ca(&ca_name) else {
                self.nack(
                    SECRET,
                    &ca_name,
                    format!("secrets[{ca_name:?}].validation_context.trusted_ca"),
                    "the mesh CA secret has no inline trusted CA",
                );
                continue;
            };
            out.insert(
                mesh.clone(),
                MeshTls {
                    permissive: self.permissive.contains(&mesh),
                    mesh,
                    backend: "kuma-cp (SDS)".into(),
                    ca_cert_pem,
                    ca_key_pem: None,
                    identity_pem: Some(identity_pem),
                    services: services.clone(),
                    // Not renewed here: kuma-cp pushes the renewed secret.
                    leaf_lifetime: Duration::ZERO,
                },
            );
        }
        out
    }
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

/// Names in Kuma's unified resource naming (`self_<...>`, `system_<...>`, `kri_<...>`).
fn is_unified_name(name: &str) -> bool {
    ["self_", "system_", "kri_"]
        .iter()
        .any(|p| name.starts_with(p))
}

fn cluster_type(cluster: &cluster_pb::Cluster) -> i32 {
    match cluster.cluster_discovery_type {
        Some(cluster_pb::cluster::ClusterDiscoveryType::Type(t)) => t,
        _ => -1,
    }
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
fn subject_alt_names(common: &tls_pb::CommonTlsContext) -> Vec<(i32, String)> {
    use tls_pb::common_tls_context::ValidationContextType as V;
    let validation = match &common.validation_context_type {
        Some(V::ValidationContext(v)) => Some(v),
        Some(V::CombinedValidationContext(c)) => c.default_validation_context.as_ref(),
        _ => None,
    };
    validation
        .into_iter()
        .flat_map(|v| &v.match_typed_subject_alt_names)
        .filter_map(|m| match m.matcher.as_ref()?.match_pattern.as_ref()? {
            envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Exact(e) => {
                Some((m.san_type, e.clone()))
            }
            _ => None,
        })
        .collect()
}

fn data_text(source: Option<&core_pb::DataSource>) -> Option<String> {
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
        if r.kind == bearing_tls::ResourceKind::MeshService {
            let target = SniTarget::MeshService {
                mesh: r.mesh.to_string(),
                name: r.name.to_string(),
                port: r.port,
            };
            return Ok((target, BTreeMap::new()));
        }
        return Err(format!(
            "SNI {sni:?} names a {:?}, which Bearing's SNI routes do not hold",
            r.kind
        ));
    }
    if sni.starts_with("sni.") {
        return Err(format!(
            "SNI {sni:?} is Kuma's KRI form, which Bearing does not parse yet"
        ));
    }
    Err(format!(
        "SNI {sni:?} is not a Kuma SNI form Bearing routes by"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode_raw, parse_golden};

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n";

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

    fn secrets() -> String {
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
      privateKey: {{inlineBytes: {c}}}
- name: mesh_ca:secret:default
  resource:
    '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
    name: mesh_ca:secret:default
    validationContext:
      trustedCa: {{inlineBytes: {c}}}
"#,
            c = b64(PEM)
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
                mesh: "default".into()
            })
        );
        let tls = &config.mtls["default"];
        assert!(tls.permissive);
        assert_eq!(tls.services, ["web"]);
        assert_eq!(tls.ca_cert_pem, PEM);
        assert!(tls
            .identity_pem
            .as_deref()
            .is_some_and(|p| p.starts_with(PEM)));
        let cluster = &config.clusters["localhost:8080"];
        assert_eq!(cluster.connect_timeout, Duration::from_secs(10));
        assert_eq!(
            cluster.endpoints[0].address,
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(config.version, config.content_version());
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

    #[test]
    fn policy_filter_is_nacked_by_its_path() {
        let deny = "{policies: {only-web: {permissions: [{any: true}], principals: [{authenticated: {principalName: {exact: 'spiffe://default/web'}}}]}}}";
        let nacks = translate(&set(&inbound(deny)), &node()).unwrap_err();
        assert_eq!(nacks.len(), 1, "{nacks:?}");
        assert_eq!(nacks[0].resource, "inbound:10.0.0.1:80");
        assert_eq!(
            nacks[0].field,
            "listeners[\"inbound:10.0.0.1:80\"].filter_chains[2].filters[0].typed_config(envoy.extensions.filters.network.rbac.v3.RBAC)"
        );
        assert!(nacks[0].reason.starts_with("RBAC: "), "{}", nacks[0].reason);
        assert!(nacks[0].reason.contains(POLICY_NOT_ENFORCED));
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
                identity: "spiffe://default/backend".into(),
                server_ca_pem: None,
            })
        );
    }

    #[test]
    fn tcp_proxy_ignores_the_clusters_http_options() {
        let hcm = OUTBOUND
            .find("      - name: envoy.filters.network.http_connection_manager")
            .unwrap();
        let text = format!(
            "{}      - name: envoy.filters.network.tcp_proxy
        typedConfig:
          '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          cluster: backend
          statPrefix: backend
{}",
            &OUTBOUND[..hcm],
            secrets()
        );
        let config = translate(&set(&text), &node()).unwrap();
        assert_eq!(config.listeners[0].protocol, Protocol::Tcp);
        assert_eq!(config.clusters["backend"].protocol, Protocol::Tcp);
    }

    #[test]
    fn weighted_routes_and_unknown_fields_are_nacked() {
        let text = OUTBOUND
            .replace(
                "route: {cluster: backend, timeout: 0s}",
                "route: {weightedClusters: {clusters: [{name: backend, weight: 1}]}}",
            )
            .replace(
                "statPrefix: backend",
                "statPrefix: backend\n          generateRequestId: true",
            );
        let nacks = translate(&set(&format!("{text}{}", secrets())), &node()).unwrap_err();
        let fields: Vec<&str> = nacks.iter().map(|n| n.field.as_str()).collect();
        let hcm = "listeners[\"outbound:127.0.0.1:10001\"].filter_chains[0].filters[0].typed_config(envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager)";
        assert!(
            fields.contains(&&*format!(
                "{hcm}.route_config.virtual_hosts[0].routes[0].route.weighted_clusters"
            )),
            "{fields:?}"
        );
        assert!(
            fields.contains(&&*format!("{hcm}.generate_request_id")),
            "{fields:?}"
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
        let text = format!(
            "resources:{}{}",
            capture(
                "outbound:passthrough:ipv4",
                "0.0.0.0",
                15001,
                "outbound:passthrough:ipv4"
            ),
            capture(
                "inbound:passthrough:ipv4",
                "0.0.0.0",
                15006,
                "inbound:passthrough:ipv4"
            )
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
            (15001, 15006, false, true)
        );
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
        assert!(sni_target("sni.msvc.default.east.backend.80")
            .unwrap_err()
            .contains("KRI"));
        assert!(sni_target("example.com").is_err());
    }
}

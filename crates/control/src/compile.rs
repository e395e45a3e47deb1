//! Compiles the resources of a store into one proxy's `ProxyConfig`, as kuma-cp would compute
//! that proxy's view: its inbounds become listeners to the local application, its outbounds
//! become listeners load balancing over the inbounds of every Dataplane whose tags match.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bearing_model::{Dataplane, ExternalService, Inbound, Problem, Resource, Spec, Store, Tags};
use bearing_model::{MESH_TAG, PROTOCOL_TAG, SERVICE_TAG};
use bearing_proxy_config::{
    Cluster, Direction, DnsDiscovery, DnsEndpoints, DnsLookupFamily, DnsRecord, DownstreamTls,
    Endpoint, HostEndpoint, Listener, Protocol, ProxyConfig, ProxyIdentity, RetryPolicy,
    TransparentProxy, UpstreamTls, Verification,
};

use crate::mtls::{mesh_of, mesh_tls, meshes, resolve, server_identities};
use crate::virtual_ips::{virtual_hosts, TargetPort, VipOptions};
use crate::zones::{dataplane_zone, ZoneView};

/// Kuma's default upstream connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Kuma's default HTTP request timeout (time to response headers here; none for gRPC).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Connection attempts of a TCP outbound or gateway TCP listener: kuma-cp's default MeshRetry
/// (`mesh-retry-all-default`, created with every mesh) sets `tcp.maxConnectAttempt: 5` on
/// every outbound and gateway route. The store holds no MeshRetry, so its meshes get the
/// default; other listeners (inbounds, direct access, zone proxies) get Envoy's one attempt,
/// as kuma-cp applies MeshRetry to none of them.
pub const TCP_CONNECT_ATTEMPTS: u32 = 5;

/// The idle timeout of a TCP listener's connections: kuma-cp's defaults without a
/// MeshTimeout (`tcp_proxy.idle_timeout`: 1 h outbound, 2 h inbound; a builtin gateway's TCP
/// listeners take its connection idle timeout, 300 s). HTTP listeners get none here.
pub(crate) fn default_tcp_idle(protocol: Protocol, direction: Direction) -> Option<Duration> {
    const HOUR: u64 = 3600;
    match (protocol, direction) {
        (Protocol::Tcp, Direction::Outbound) => Some(Duration::from_secs(HOUR)),
        (Protocol::Tcp, Direction::Inbound) => Some(Duration::from_secs(2 * HOUR)),
        _ => None,
    }
}

/// The retry policy of an outbound's or gateway route's requests: kuma-cp renders the same
/// default MeshRetry's `http` section on `http` services and its `grpc` section on `grpc`
/// ones, and nothing on `http2` ones (its retry plugin knows only those two protocols).
pub(crate) fn default_retry(protocol: Protocol) -> Option<RetryPolicy> {
    match protocol {
        Protocol::Http => Some(RetryPolicy::kuma_default_http()),
        Protocol::Grpc => Some(RetryPolicy::kuma_default_grpc()),
        Protocol::Http2 | Protocol::Tcp => None,
    }
}

/// What the proxy is told besides the store: its zone (`--zone`) and the mesh hostname
/// settings (the same for every proxy).
#[derive(Debug, Clone, Default)]
pub struct CompileOptions {
    /// `--zone`: this proxy's zone; by default its Dataplane's `kuma.io/zone` tag (zone
    /// proxies: their `zone` field).
    pub zone: Option<String>,
    /// VIP range and DNS domain.
    pub vips: VipOptions,
}

/// The services a Dataplane's mesh identity carries (`spiffe://<mesh>/<service>` each): its
/// inbounds' and, for a gateway (builtin or delegated, which have no inbounds of their own),
/// the `kuma.io/service` of `networking.gateway.tags`, as kuma-cp does: it presents that to
/// the backends it calls. Sorted, without duplicates.
pub(crate) fn identity_services(dp: &Dataplane) -> Vec<String> {
    let inbounds = dp.networking.inbound.iter().map(|i| service_of(&i.tags));
    let gateway = dp.networking.gateway.iter().map(|g| service_of(&g.tags));
    let mut services: Vec<String> = inbounds.chain(gateway).filter(|s| !s.is_empty()).collect();
    services.sort();
    services.dedup();
    services
}

/// Builds the config of the proxy described by `me` (a Dataplane, ZoneIngress or ZoneEgress)
/// from `store`.
pub fn compile(
    store: &Store,
    me: &Resource,
    source: &str,
    options: &CompileOptions,
) -> Result<ProxyConfig, Vec<Problem>> {
    let dp = match &me.spec {
        Spec::Dataplane(dp) => dp,
        Spec::ZoneIngress(_) | Spec::ZoneEgress(_) => {
            return crate::zone_proxies::compile(store, me, source, options.zone.as_deref())
        }
        _ => {
            return Err(vec![problem(
                me,
                None,
                "is not a Dataplane, ZoneIngress or ZoneEgress".into(),
            )])
        }
    };
    let vips = &options.vips;
    let mesh = me.mesh.clone().unwrap_or_else(|| "default".into());
    let mut problems = Vec::new();
    let all_meshes = meshes(store);
    let mesh_spec = all_meshes.get(mesh.as_str()).copied();
    if mesh_spec.is_none() {
        problems.push(problem(
            me,
            Some("mesh"),
            format!("mesh {mesh:?} does not exist in the store"),
        ));
    }
    let services = identity_services(dp);
    let builtin_gateway = dp
        .networking
        .gateway
        .as_ref()
        .filter(|g| g.kind == "BUILTIN");
    let mtls = match mesh_spec.map(|m| mesh_tls(store, &mesh, m, services, &me.meta.name)) {
        Some(Ok(m)) => m,
        Some(Err((field, message))) => {
            let at = mesh_resource(store, &mesh).unwrap_or(me);
            problems.push(problem(at, Some(&field), message));
            None
        }
        None => None,
    };
    let zone = options
        .zone
        .clone()
        .or_else(|| dataplane_zone(dp).map(str::to_string));

    let mut listeners = Vec::new();
    let mut clusters = BTreeMap::new();
    let routes = Outbounds {
        index: EndpointIndex::new(store, me, &mesh),
        zones: ZoneView::new(store, zone.as_deref()),
        externals: external_services(store, &mesh),
        store,
        mesh: &mesh,
        mtls: mtls.is_some(),
        zone_egress: mesh_spec.is_some_and(|m| m.routing.zone_egress),
    };
    let node_ip = dp.networking.address.parse::<IpAddr>().ok();
    let transparent = dp
        .networking
        .transparent_proxying
        .as_ref()
        .filter(|tp| tp.enabled());
    let transparent_proxy = transparent.map(|tp| TransparentProxy {
        outbound_port: port16(tp.redirect_port_outbound),
        inbound_port: port16(tp.redirect_port_inbound),
        ipv6: tp.ipv6(),
        outbound_passthrough: mesh_spec
            .and_then(|m| m.networking.outbound.passthrough)
            .unwrap_or(true),
        outbound_access_logs: Vec::new(),
        inbound_access_logs: Vec::new(),
    });

    let denies = crate::permissions::Denies::of(store, &mesh);
    for (i, inbound) in dp.networking.inbound.iter().enumerate() {
        let field = format!("networking.inbound[{i}]");
        let bind_text = inbound.address.as_deref().unwrap_or(&dp.networking.address);
        let Some(bind_ip) = bind_text.parse::<IpAddr>().ok().or(node_ip) else {
            problems.push(problem(
                me,
                Some("networking.address"),
                format!("{bind_text:?} must be an IP address to bind inbound listeners"),
            ));
            continue;
        };
        let app_ip = match ip_or_localhost(inbound.service_address.as_deref()) {
            Ok(ip) => ip,
            Err(m) => {
                problems.push(problem(me, Some(&format!("{field}.serviceAddress")), m));
                continue;
            }
        };
        let service_port = port16(inbound.service_port.unwrap_or(inbound.port));
        let protocol = Protocol::from_tag(inbound.tags.get(PROTOCOL_TAG).map(String::as_str));
        let app = SocketAddr::new(app_ip, service_port);
        // Kuma's name for the local application; another application address is spelled out.
        let cluster_name = if app_ip == IpAddr::V4(Ipv4Addr::LOCALHOST) {
            format!("localhost:{service_port}")
        } else {
            app.to_string()
        };
        if clusters
            .get(&cluster_name)
            .is_some_and(|c: &Cluster| c.protocol != protocol)
        {
            problems.push(problem(
                me,
                Some(&format!("{field}.tags.{PROTOCOL_TAG}")),
                format!(
                    "another inbound sends to the application at {app} with a different protocol"
                ),
            ));
            continue;
        }
        let address = SocketAddr::new(bind_ip, port16(inbound.port));
        listeners.push(Listener {
            cluster: cluster_name.clone(),
            service: service_of(&inbound.tags),
            bind: transparent.is_none(),
            tls: mtls.as_ref().map(|m| DownstreamTls {
                mesh: m.mesh.clone(),
                params: None,
            }),
            deny_all: denies.targeting(me, inbound),
            tcp_idle_timeout: default_tcp_idle(protocol, Direction::Inbound),
            ..Listener::new(
                format!("inbound:{address}"),
                address,
                Direction::Inbound,
                protocol,
            )
        });
        clusters.insert(
            cluster_name.clone(),
            cluster(
                cluster_name,
                protocol,
                vec![Endpoint {
                    address: app,
                    origin: "local application".into(),
                    tags: Tags::new(),
                    hostname: None,
                    tls_match: None,
                    priority: 0,
                    event_host: None,
                    weight: 1,
                    locality: None,
                }],
            ),
        );
    }

    for (i, outbound) in dp.networking.outbound.iter().enumerate() {
        let field = format!("networking.outbound[{i}]");
        let ip = match ip_or_localhost(outbound.address.as_deref()) {
            Ok(ip) => ip,
            Err(m) => {
                problems.push(problem(me, Some(&format!("{field}.address")), m));
                continue;
            }
        };
        if outbound.tags.is_empty() {
            problems.push(problem(
                me,
                Some(&format!("{field}.backendRef")),
                "outbounds by backendRef need MeshService support, which this version lacks".into(),
            ));
            continue;
        }
        let address = SocketAddr::new(ip, port16(outbound.port));
        // iptables never captures loopback destinations, so those keep their socket.
        let bind = transparent.is_none() || ip.is_loopback();
        let (listener, c) = routes.outbound_to(address, Destination::tagged(&outbound.tags), bind);
        listeners.push(listener);
        clusters.insert(c.name.clone(), c);
    }

    if builtin_gateway.is_some() {
        match crate::gateway::compile(store, me, dp, &mesh, &routes) {
            Ok(parts) => {
                listeners.extend(parts.listeners);
                clusters.extend(parts.clusters.into_iter().map(|c| (c.name.clone(), c)));
            }
            Err(p) => problems.extend(p),
        }
    }

    let mut dns = Vec::new();
    if let Some(tp) = transparent {
        let mut taken: HashSet<SocketAddr> = listeners.iter().map(|l| l.address).collect();
        for host in virtual_hosts(store, &mesh, vips, tp.reachable_backends.as_ref()) {
            for (port, target) in &host.ports {
                let address = SocketAddr::new(IpAddr::V4(host.vip), *port);
                // An explicit outbound on the same address wins.
                if taken.insert(address) {
                    let to = match &target.mesh_service_port {
                        None => Destination::tagged(&target.tags),
                        Some((port, protocol)) => {
                            let name = format!("{}:{}", target.origin, address.port());
                            Destination {
                                tags: &target.tags,
                                target_port: Some(port),
                                app_protocol: protocol.as_deref(),
                                zones: match &target.mesh_service_zone {
                                    Some(zone) => EndpointZones::Only(zone),
                                    None => EndpointZones::Own,
                                },
                                cluster: name.clone(),
                                service: name,
                                sni: target.mesh_service_sni.as_deref(),
                            }
                        }
                    };
                    let (listener, c) = routes.outbound_to(address, to, false);
                    listeners.push(listener);
                    clusters.insert(c.name.clone(), c);
                }
            }
            let mut ips = vec![IpAddr::V4(host.vip)];
            if tp.ipv6() {
                ips.push(IpAddr::V6(host.vip.to_ipv6_mapped()));
            }
            for name in host.names {
                dns.push(DnsRecord {
                    name,
                    ips: ips.clone(),
                });
            }
        }
        dns.sort_by(|a, b| a.name.cmp(&b.name));
        dns.dedup_by(|a, b| a.name == b.name);
        // An ExternalService addressed by IP is captured at that address, as Kuma gives it
        // an outbound there: its traffic goes where the mesh sends it (the zone egress with
        // `routing.zoneEgress`), never around the proxy.
        let mut externals: Vec<(&&str, &(&Resource, &ExternalService))> =
            routes.externals.iter().collect();
        externals.sort_by_key(|(service, _)| **service);
        for (service, (_, es)) in externals {
            let Ok(address) = es.networking.address.parse::<SocketAddr>() else {
                continue;
            };
            if taken.insert(address) {
                let tags: Tags = [(SERVICE_TAG.to_string(), service.to_string())].into();
                let (listener, c) = routes.outbound_to(address, Destination::tagged(&tags), false);
                listeners.push(listener);
                clusters.insert(c.name.clone(), c);
            }
        }
    }

    if let Some(tp) = transparent {
        direct_access(
            store,
            me,
            &mesh,
            &tp.direct_access_services,
            &mut listeners,
            &mut clusters,
        );
    }

    let mut by_address: HashMap<SocketAddr, &str> = HashMap::new();
    for l in &listeners {
        if let Some(other) = by_address.insert(l.address, &l.name) {
            problems.push(problem(
                me,
                Some("networking"),
                format!("listeners {other} and {} use the same address", l.name),
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    let mut config = ProxyConfig {
        version: String::new(),
        source: source.to_string(),
        identity: ProxyIdentity {
            name: me.meta.name.clone(),
            mesh,
            proxy_type: "dataplane".into(),
            admin_port: admin_port(dp.networking.admin.as_ref()),
        },
        listeners,
        clusters,
        transparent_proxy,
        dns,
        mtls: mtls.into_iter().map(|m| (m.mesh.clone(), m)).collect(),
        kuma_endpoints: Default::default(),
    };
    config.version = config.content_version();
    Ok(config)
}

/// Kuma's direct access: for `directAccessServices` (`*` for all), a TCP listener at every
/// other dataplane's inbound address that no outbound already claims, passing connections
/// straight to that address. Such traffic is forwarded even when the mesh forbids passthrough.
fn direct_access(
    store: &Store,
    me: &Resource,
    mesh: &str,
    services: &[String],
    listeners: &mut Vec<Listener>,
    clusters: &mut BTreeMap<String, Cluster>,
) {
    if services.is_empty() {
        return;
    }
    let all = services.iter().any(|s| s == "*");
    let mut taken: std::collections::HashSet<SocketAddr> =
        listeners.iter().map(|l| l.address).collect();
    let others = store.resources.iter().filter(|r| {
        r.mesh.as_deref().unwrap_or("default") == mesh
            && !(r.meta.name == me.meta.name && r.mesh == me.mesh)
    });
    for r in others {
        let Spec::Dataplane(dp) = &r.spec else {
            continue;
        };
        for inbound in &dp.networking.inbound {
            let service = service_of(&inbound.tags);
            if !(all || services.contains(&service)) {
                continue;
            }
            let Some(ip) = endpoint_ip(dp, inbound) else {
                continue;
            };
            let address = SocketAddr::new(ip, port16(inbound.port));
            if !taken.insert(address) {
                continue;
            }
            let name = format!("direct_access_{address}");
            listeners.push(Listener {
                cluster: name.clone(),
                service,
                bind: false,
                ..Listener::new(name.clone(), address, Direction::Outbound, Protocol::Tcp)
            });
            let endpoint = Endpoint {
                address,
                origin: format!("Dataplane/{}", r.meta.name),
                tags: Tags::new(),
                hostname: None,
                tls_match: None,
                priority: 0,
                event_host: None,
                weight: 1,
                locality: None,
            };
            clusters.insert(name.clone(), cluster(name, Protocol::Tcp, vec![endpoint]));
        }
    }
}

/// A plain cluster with Kuma's default timeouts and Envoy's default circuit breakers.
pub(crate) fn cluster(name: String, protocol: Protocol, endpoints: Vec<Endpoint>) -> Cluster {
    Cluster {
        http_timeouts: Default::default(),
        name,
        protocol,
        endpoints,
        connect_timeout: CONNECT_TIMEOUT,
        request_timeout: (protocol != Protocol::Grpc).then_some(REQUEST_TIMEOUT),
        tls: None,
        circuit_breakers: Default::default(),
        http2_windows: Default::default(),
        dns: None,
        tls_matches: Vec::new(),
        health: Default::default(),
        load_balancer: Default::default(),
    }
}

/// The Mesh resource named `mesh`, for reporting problems at its line.
fn mesh_resource<'s>(store: &'s Store, mesh: &str) -> Option<&'s Resource> {
    store
        .resources
        .iter()
        .find(|r| matches!(r.spec, Spec::Mesh(_)) && r.meta.name == mesh)
}

/// The ExternalServices of `mesh` by their `kuma.io/service`.
pub(crate) fn external_services<'s>(
    store: &'s Store,
    mesh: &str,
) -> HashMap<&'s str, (&'s Resource, &'s ExternalService)> {
    store
        .resources
        .iter()
        .filter(|r| mesh_of(r) == mesh)
        .filter_map(|r| match &r.spec {
            Spec::ExternalService(es) => {
                let service = es.tags.get(SERVICE_TAG)?;
                Some((service.as_str(), (r, es)))
            }
            _ => None,
        })
        .collect()
}

/// An optional address field: 127.0.0.1 when absent, an error message when not an IP.
fn ip_or_localhost(value: Option<&str>) -> Result<IpAddr, String> {
    match value {
        None => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Some(a) => a.parse().map_err(|_| format!("{a:?} is not an IP address")),
    }
}

/// The admin API port a proxy resource asks for (`networking.admin.port`; 0 or absent: none).
pub(crate) fn admin_port(admin: Option<&bearing_model::DataplaneAdmin>) -> Option<u16> {
    admin.map(|a| port16(a.port)).filter(|p| *p != 0)
}

/// Ports were validated to 1..=65535 by the model.
pub(crate) fn port16(port: u32) -> u16 {
    u16::try_from(port).unwrap_or(0)
}

fn service_of(tags: &Tags) -> String {
    tags.get(SERVICE_TAG).cloned().unwrap_or_default()
}

/// `backend` for a service-only selector, `backend{version=v1}` when more tags narrow it.
fn cluster_name_for(tags: &Tags) -> String {
    let service = service_of(tags);
    let extra: Vec<String> = tags
        .iter()
        .filter(|(k, _)| k.as_str() != SERVICE_TAG)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if extra.is_empty() {
        service
    } else {
        format!("{service}{{{}}}", extra.join(","))
    }
}

/// Which inbounds an outbound listener sends to, and the names its cluster and service go by.
pub(crate) struct Destination<'a> {
    /// Endpoints are the inbounds carrying all these tags…
    pub(crate) tags: &'a Tags,
    /// …and, for a MeshService port, this inbound port or name.
    target_port: Option<&'a TargetPort>,
    /// A MeshService port's `appProtocol` (else the endpoints' common protocol).
    app_protocol: Option<&'a str>,
    /// Which zones the endpoints may be in.
    zones: EndpointZones<'a>,
    pub(crate) cluster: String,
    service: String,
    /// The SNI mesh mTLS sends, when not the tags form (a MeshService's hashed form).
    sni: Option<&'a str>,
}

/// Which zones a destination's endpoints may be in: a `kuma.io/service` spans every zone, a
/// MeshService's traffic only ever goes to one (its own, or the one it was synced from).
#[derive(Clone, Copy)]
pub(crate) enum EndpointZones<'a> {
    /// Every zone (`kuma.io/service` destinations).
    All,
    /// The proxy's own zone (a local MeshService).
    Own,
    /// This zone only (a MeshService synced from it).
    Only(&'a str),
}

impl<'a> Destination<'a> {
    /// The inbounds carrying `tags`, named after their service (`backend{version=v1}`).
    pub(crate) fn tagged(tags: &'a Tags) -> Self {
        Destination {
            tags,
            target_port: None,
            app_protocol: None,
            zones: EndpointZones::All,
            cluster: cluster_name_for(tags),
            service: service_of(tags),
            sni: None,
        }
    }
}

/// How a sidecar reaches its destinations: the mesh's endpoints, zones and external services.
pub(crate) struct Outbounds<'s> {
    index: EndpointIndex<'s>,
    zones: ZoneView<'s>,
    externals: HashMap<&'s str, (&'s Resource, &'s ExternalService)>,
    pub(crate) store: &'s Store,
    pub(crate) mesh: &'s str,
    /// The mesh has mTLS: mesh clusters originate it, and zone proxies can be used.
    pub(crate) mtls: bool,
    /// Mesh `routing.zoneEgress`: cross-zone and external traffic goes through the egress.
    zone_egress: bool,
}

impl Outbounds<'_> {
    /// An outbound listener at `address` and its cluster, sending to `to`.
    fn outbound_to(&self, address: SocketAddr, to: Destination, bind: bool) -> (Listener, Cluster) {
        let service = to.service.clone();
        let c = match to.tags.get(MESH_TAG) {
            Some(mesh) => crate::gateway::cross_mesh_cluster(self, mesh, to, address.port()),
            None => self.cluster_for(to),
        };
        let listener = Listener {
            cluster: c.name.clone(),
            service,
            bind,
            max_connect_attempts: match c.protocol {
                Protocol::Tcp => TCP_CONNECT_ATTEMPTS,
                _ => 1,
            },
            retry: default_retry(c.protocol),
            tcp_idle_timeout: default_tcp_idle(c.protocol, Direction::Outbound),
            ..Listener::new(
                format!("outbound:{address}"),
                address,
                Direction::Outbound,
                c.protocol,
            )
        };
        (listener, c)
    }

    /// The cluster sending to `to`: the matching endpoints of this zone, other zones through
    /// their ingress (or the egress), an ExternalService directly or through the egress, with
    /// mesh mTLS when the mesh has it.
    pub(crate) fn cluster_for(&self, to: Destination) -> Cluster {
        let (mut endpoints, mut protocols, remote) =
            self.index.matching(to.tags, to.target_port, &self.zones);
        let mut remote: std::collections::BTreeSet<&str> = remote.into_iter().collect();
        for (zone, announced) in self.zones.announced(self.mesh, to.tags) {
            remote.insert(zone);
            let protocol = announced.tags.get(PROTOCOL_TAG).map(String::as_str);
            protocols.push(Protocol::from_tag(protocol));
        }
        match to.zones {
            EndpointZones::All => {}
            EndpointZones::Only(zone) if !self.zones.is_local(Some(zone)) => {
                endpoints.clear();
                remote.retain(|z| *z == zone);
            }
            EndpointZones::Own | EndpointZones::Only(_) => remote.clear(),
        }
        let external = match self.externals.get(to.service.as_str()) {
            Some(es) if endpoints.is_empty() && remote.is_empty() => Some(*es),
            _ => None,
        };
        if let Some((_, es)) = external {
            protocols.push(Protocol::from_tag(
                es.tags.get(PROTOCOL_TAG).map(String::as_str),
            ));
        }
        let protocol = match to.app_protocol {
            Some(p) => Protocol::from_tag(Some(p)),
            None => Protocol::common(protocols).unwrap_or(Protocol::Tcp),
        };
        let mut tls = None;
        let mut dns = None;
        if let Some((r, es)) = external {
            if self.mtls && self.zone_egress {
                endpoints = self.zones.egresses().to_vec();
                tls = Some(self.mesh_tls(to.tags, &to.service, None));
            } else {
                let (e, d, t) = external_endpoint(r, es, self.store, self.mesh);
                endpoints = e;
                dns = d;
                tls = t;
            }
        } else {
            if !remote.is_empty() && !self.mtls {
                tracing::warn!(cluster = %to.cluster, "endpoints in other zones skipped: cross-zone traffic needs mesh mTLS");
            } else if !remote.is_empty() && self.zone_egress {
                endpoints.extend(self.zones.egresses().iter().cloned());
            } else {
                for zone in remote {
                    endpoints.extend(self.zones.ingresses(zone).iter().cloned());
                }
            }
            if self.mtls {
                tls = Some(self.mesh_tls(to.tags, &to.service, to.sni));
            }
        }
        endpoints.sort_by_key(|e| e.address);
        endpoints.dedup_by_key(|e| e.address);
        let mut c = cluster(to.cluster, protocol, endpoints);
        c.tls = tls;
        c.dns = dns;
        c
    }

    /// Mesh mTLS towards the service `tags` select: `sni`, else Kuma's tags-form SNI, and the
    /// service's SPIFFE id.
    fn mesh_tls(&self, tags: &Tags, service: &str, sni: Option<&str>) -> UpstreamTls {
        let service = tags.get(SERVICE_TAG).map_or(service, String::as_str);
        let extra: BTreeMap<String, String> = tags
            .iter()
            .filter(|(k, _)| k.as_str() != SERVICE_TAG)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        UpstreamTls::Mesh {
            mesh: self.mesh.to_string(),
            sni: sni.map_or_else(
                || bearing_tls::tags_sni(service, self.mesh, &extra),
                str::to_owned,
            ),
            identities: server_identities(self.mesh, service),
            server_ca_pem: None,
            params: None,
        }
    }
}

/// An ExternalService's address as endpoints: an IP address is the endpoint; a hostname is
/// resolved while the proxy runs, as kuma-cp renders it for Envoy (a STRICT_DNS cluster,
/// `V4_ONLY`, Envoy's 5 s refresh), so both config sources give the same `Cluster`. Also the
/// TLS its `networking.tls` asks for.
pub(crate) fn external_endpoint(
    r: &Resource,
    es: &ExternalService,
    store: &Store,
    mesh: &str,
) -> (Vec<Endpoint>, Option<DnsEndpoints>, Option<UpstreamTls>) {
    let address = &es.networking.address;
    let (host, port) = address.rsplit_once(':').unwrap_or((address.as_str(), ""));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let (mut endpoints, mut dns) = (Vec::new(), None);
    match (host.parse::<IpAddr>(), port.parse::<u16>()) {
        // Named by its address as written, as Envoy's STRICT_DNS cluster names it.
        (Ok(ip), Ok(port)) => endpoints.push(Endpoint {
            address: SocketAddr::new(ip, port),
            origin: r.key(),
            tags: Tags::new(),
            hostname: Some(host.to_string()),
            tls_match: None,
            priority: 0,
            event_host: None,
            weight: 1,
            locality: None,
        }),
        (Err(_), Ok(port)) => {
            dns = Some(DnsEndpoints {
                discovery: DnsDiscovery::Strict,
                hosts: vec![HostEndpoint {
                    hostname: host.to_string(),
                    port,
                    origin: r.key(),
                    tags: Tags::new(),
                    tls_match: None,
                    priority: 0,
                }],
                refresh_rate: DnsEndpoints::DEFAULT_REFRESH_RATE,
                respect_ttl: false,
                lookup_family: DnsLookupFamily::V4Only,
            })
        }
        (_, Err(e)) => {
            tracing::warn!(resource = %r.key(), "networking.address {address:?}: port: {e}; no endpoints")
        }
    }
    let tls = es.networking.tls.as_ref().filter(|t| t.enabled).map(|t| {
        let read = |ds: &Option<bearing_model::DataSource>, what: &str| {
            let ds = ds.as_ref()?;
            match resolve(ds, store, mesh).map(String::from_utf8) {
                Ok(Ok(text)) => Some(text),
                Ok(Err(_)) => {
                    tracing::warn!(resource = %r.key(), "networking.tls.{what} is not PEM text; ignored");
                    None
                }
                Err(e) => {
                    tracing::warn!(resource = %r.key(), "networking.tls.{what}: {e}; ignored");
                    None
                }
            }
        };
        let verification = t.verification.as_ref();
        let server_name = verification
            .and_then(|v| v.server_name.clone())
            .or_else(|| t.server_name.clone())
            .unwrap_or_else(|| host.to_string());
        UpstreamTls::External {
            server_name,
            ca_pem: read(&t.ca_cert, "caCert"),
            client_cert_pem: read(&t.client_cert, "clientCert"),
            client_key_pem: read(&t.client_key, "clientKey"),
            verification: match verification.and_then(|v| v.mode.as_deref()) {
                Some("SkipSAN") => Verification::SkipSan,
                // A name check without a chain check cannot stand on its own.
                Some("SkipCA") | Some("SkipAll") => Verification::SkipAll,
                _ => Verification::Secured,
            },
            allow_renegotiation: t.allow_renegotiation,
            params: None,
        }
    });
    (endpoints, dns, tls)
}

/// The ready inbounds of a mesh by service, built once per compile so that thousands of
/// outbounds do not each scan the whole store.
struct EndpointIndex<'s> {
    by_service: HashMap<&'s str, Vec<IndexedInbound<'s>>>,
}

/// One ready inbound in the [`EndpointIndex`].
struct IndexedInbound<'s> {
    inbound: &'s Inbound,
    endpoint: Endpoint,
    protocol: Protocol,
    /// Its Dataplane's zone.
    zone: Option<&'s str>,
}

impl<'s> EndpointIndex<'s> {
    fn new(store: &'s Store, me: &'s Resource, mesh: &str) -> Self {
        let mut by_service: HashMap<&str, Vec<_>> = HashMap::new();
        let others = store
            .resources
            .iter()
            .filter(|r| r.meta.name != me.meta.name || r.mesh != me.mesh);
        for r in std::iter::once(me).chain(others) {
            let Spec::Dataplane(dp) = &r.spec else {
                continue;
            };
            if r.mesh.as_deref().unwrap_or("default") != mesh {
                continue;
            }
            for inbound in dp.networking.inbound.iter().filter(|i| is_ready(i)) {
                let Some(service) = inbound.tags.get(SERVICE_TAG) else {
                    continue;
                };
                let Some(ip) = endpoint_ip(dp, inbound) else {
                    tracing::warn!(dataplane = %r.meta.name, "skipping endpoint: its address is not an IP address");
                    continue;
                };
                let endpoint = Endpoint {
                    address: SocketAddr::new(ip, port16(inbound.port)),
                    origin: format!("Dataplane/{}", r.meta.name),
                    tags: Tags::new(),
                    hostname: None,
                    tls_match: None,
                    priority: 0,
                    event_host: None,
                    weight: 1,
                    locality: None,
                };
                let protocol =
                    Protocol::from_tag(inbound.tags.get(PROTOCOL_TAG).map(String::as_str));
                by_service
                    .entry(service.as_str())
                    .or_default()
                    .push(IndexedInbound {
                        inbound,
                        endpoint,
                        protocol,
                        zone: dataplane_zone(dp),
                    });
            }
        }
        EndpointIndex { by_service }
    }

    /// Every indexed inbound carrying all of `selector`'s tags (and, when given, the MeshService
    /// target port or name): the local ones as endpoints, the protocols of all, and the
    /// zones of the remote ones (reached through zone proxies).
    fn matching(
        &self,
        selector: &Tags,
        target: Option<&TargetPort>,
        zones: &ZoneView,
    ) -> (Vec<Endpoint>, Vec<Protocol>, Vec<&'s str>) {
        let candidates: Box<dyn Iterator<Item = &IndexedInbound>> = match selector.get(SERVICE_TAG)
        {
            Some(s) => Box::new(self.by_service.get(s.as_str()).into_iter().flatten()),
            // A MeshService may select by other tags: look at every inbound.
            None => Box::new(self.by_service.values().flatten()),
        };
        let mut endpoints = Vec::new();
        let mut protocols = Vec::new();
        let mut remote = Vec::new();
        for c in candidates {
            let tags_match = selector
                .iter()
                .all(|(k, v)| c.inbound.tags.get(k) == Some(v));
            let port_match = target.is_none_or(|t| t.selects(c.inbound));
            if !(tags_match && port_match) {
                continue;
            }
            protocols.push(c.protocol);
            match c.zone {
                Some(z) if !zones.is_local(Some(z)) => remote.push(z),
                _ => endpoints.push(c.endpoint.clone()),
            }
        }
        endpoints.sort_by_key(|e| e.address);
        endpoints.dedup_by_key(|e| e.address);
        (endpoints, protocols, remote)
    }
}

pub(crate) fn is_ready(inbound: &Inbound) -> bool {
    let health_ok = inbound.health.as_ref().is_none_or(|h| h.ready);
    let state_ok = inbound.state.as_deref().is_none_or(|s| s == "Ready");
    health_ok && state_ok
}

/// The address other proxies use for an inbound: its own address, else the advertised or
/// node address of its dataplane.
pub(crate) fn endpoint_ip(dp: &Dataplane, inbound: &Inbound) -> Option<IpAddr> {
    inbound
        .address
        .as_deref()
        .or(dp.networking.advertised_address.as_deref())
        .unwrap_or(&dp.networking.address)
        .parse()
        .ok()
}

pub(crate) fn problem(me: &Resource, field: Option<&str>, message: String) -> Problem {
    Problem {
        file: me.origin.file.clone(),
        line: me.origin.line,
        column: None,
        resource: Some(me.key()),
        field: field.map(str::to_string),
        message,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;

    /// A store of `text` (as the file `mesh.yaml`), which must have no problem.
    pub(crate) fn store(text: &str) -> Store {
        let mut s = Store::default();
        s.add_text(text, Path::new("mesh.yaml"));
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        s
    }

    fn find<'a>(s: &'a Store, name: &str) -> &'a Resource {
        s.resources.iter().find(|r| r.meta.name == name).unwrap()
    }

    const MESH: &str = r#"
type: Dataplane
name: web
mesh: default
networking:
  address: 10.0.0.1
  inbound:
  - port: 8080
    servicePort: 80
    tags: {kuma.io/service: web, kuma.io/protocol: http}
  outbound:
  - port: 10001
    tags: {kuma.io/service: backend}
  - port: 10002
    tags: {kuma.io/service: backend, version: v2}
  - port: 10003
    tags: {kuma.io/service: db}
---
type: Dataplane
name: backend-1
mesh: default
networking:
  address: 10.0.0.2
  inbound:
  - port: 8080
    tags: {kuma.io/service: backend, kuma.io/protocol: http, version: v1}
---
type: Dataplane
name: backend-2
mesh: default
networking:
  address: 10.0.0.3
  advertisedAddress: 192.0.2.3
  inbound:
  - port: 8080
    tags: {kuma.io/service: backend, kuma.io/protocol: http2, version: v2}
  - port: 9090
    health: {ready: false}
    tags: {kuma.io/service: backend, version: v3}
---
type: Dataplane
name: other-mesh
mesh: demo
networking:
  address: 10.0.0.4
  inbound:
  - port: 8080
    tags: {kuma.io/service: backend}
"#;

    #[test]
    fn compiles_inbounds_and_outbounds() {
        let s = store(MESH);
        let cfg = compile(&s, find(&s, "web"), "test", &CompileOptions::default()).unwrap();
        let names: Vec<&str> = cfg.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "inbound:10.0.0.1:8080",
                "outbound:127.0.0.1:10001",
                "outbound:127.0.0.1:10002",
                "outbound:127.0.0.1:10003"
            ]
        );
        let inbound = &cfg.clusters["localhost:80"];
        assert_eq!(inbound.endpoints[0].address.to_string(), "127.0.0.1:80");
        assert_eq!(inbound.protocol, Protocol::Http);
        let backend = &cfg.clusters["backend"];
        let addrs: Vec<String> = backend
            .endpoints
            .iter()
            .map(|e| e.address.to_string())
            .collect();
        assert_eq!(addrs, ["10.0.0.2:8080", "192.0.2.3:8080"]);
        assert_eq!(
            backend.protocol,
            Protocol::Http,
            "http + http2 agree on http"
        );
        let v2 = &cfg.clusters["backend{version=v2}"];
        assert_eq!(v2.endpoints.len(), 1);
        assert_eq!(v2.protocol, Protocol::Http2);
        assert!(cfg.clusters["db"].endpoints.is_empty());
        assert_eq!(cfg.clusters["db"].protocol, Protocol::Tcp);
    }

    /// An ExternalService named by hostname compiles to the cluster kuma-cp's STRICT_DNS one
    /// translates to (resolved at run time, not at compile time); one named by IP to that
    /// endpoint.
    #[test]
    fn external_service_hostnames_are_resolved_at_run_time() {
        let text = "type: Dataplane\nname: web\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 80\n    tags: {kuma.io/service: web}\n  outbound:\n  - port: 10001\n    tags: {kuma.io/service: httpbin}\n  - port: 10002\n    tags: {kuma.io/service: byip}\n---\ntype: ExternalService\nmesh: default\nname: httpbin\ntags: {kuma.io/service: httpbin}\nnetworking:\n  address: httpbin.test:8080\n---\ntype: ExternalService\nmesh: default\nname: byip\ntags: {kuma.io/service: byip}\nnetworking:\n  address: 192.0.2.7:443\n";
        let s = store(text);
        let cfg = compile(&s, find(&s, "web"), "test", &CompileOptions::default()).unwrap();
        let httpbin = &cfg.clusters["httpbin"];
        assert!(httpbin.endpoints.is_empty());
        let dns = httpbin.dns.as_ref().unwrap();
        assert_eq!(dns.discovery, DnsDiscovery::Strict);
        assert_eq!(dns.lookup_family, DnsLookupFamily::V4Only);
        assert_eq!(dns.refresh_rate, DnsEndpoints::DEFAULT_REFRESH_RATE);
        assert_eq!(
            (dns.hosts[0].hostname.as_str(), dns.hosts[0].port),
            ("httpbin.test", 8080)
        );
        let byip = &cfg.clusters["byip"];
        assert_eq!(byip.endpoints[0].address.to_string(), "192.0.2.7:443");
        assert!(byip.dns.is_none());
    }

    #[test]
    fn version_is_stable_and_tracks_content() {
        let s = store(MESH);
        let a = compile(&s, find(&s, "web"), "test", &CompileOptions::default()).unwrap();
        let b = compile(&s, find(&s, "web"), "test", &CompileOptions::default()).unwrap();
        assert_eq!(a.version, b.version);
        let c = compile(
            &s,
            find(&s, "backend-1"),
            "test",
            &CompileOptions::default(),
        )
        .unwrap();
        assert_ne!(a.version, c.version);
    }

    #[test]
    fn inbounds_to_distinct_applications_get_distinct_clusters() {
        let s = store("type: Dataplane\nname: a\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 80\n    servicePort: 8080\n    tags: {kuma.io/service: a}\n  - port: 81\n    servicePort: 8080\n    serviceAddress: 10.0.0.9\n    tags: {kuma.io/service: b}\n  - port: 82\n    servicePort: 8080\n    tags: {kuma.io/service: c, kuma.io/protocol: http}\n");
        let errs = compile(&s, find(&s, "a"), "test", &CompileOptions::default()).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(
            errs[0].field.as_deref(),
            Some("networking.inbound[2].tags.kuma.io/protocol")
        );
        let s = store("type: Dataplane\nname: a\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 80\n    servicePort: 8080\n    tags: {kuma.io/service: a}\n  - port: 81\n    servicePort: 8080\n    serviceAddress: 10.0.0.9\n    tags: {kuma.io/service: b}\n");
        let cfg = compile(&s, find(&s, "a"), "test", &CompileOptions::default()).unwrap();
        assert_eq!(cfg.listeners[0].cluster, "localhost:8080");
        assert_eq!(cfg.listeners[1].cluster, "10.0.0.9:8080");
    }

    #[test]
    fn missing_mesh_and_clashing_listeners_are_problems() {
        let s = store("type: Dataplane\nname: a\nmesh: nope\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 80\n    tags: {kuma.io/service: a}\n  outbound:\n  - port: 80\n    tags: {kuma.io/service: a}\n");
        let errs = compile(&s, find(&s, "a"), "test", &CompileOptions::default()).unwrap_err();
        let text: Vec<String> = errs.iter().map(|p| p.to_string()).collect();
        assert!(
            text[0].contains("Dataplane/a: mesh: mesh \"nope\" does not exist"),
            "{text:?}"
        );
        assert!(text[1].contains("use the same address"), "{text:?}");
    }

    #[test]
    fn transparent_proxying_makes_listeners_virtual() {
        let text = format!(
            "type: Mesh\nname: default\nnetworking:\n  outbound:\n    passthrough: false\n---\n{}",
            MESH.replace(
                "  address: 10.0.0.1\n",
                "  address: 10.0.0.1\n  transparentProxying:\n    redirectPortInbound: 15006\n    redirectPortOutbound: 15001\n    ipFamilyMode: IPv4\n    directAccessServices: [backend]\n",
            )
        );
        let s = store(&text);
        let cfg = compile(&s, find(&s, "web"), "test", &CompileOptions::default()).unwrap();
        let tp = cfg.transparent_proxy.as_ref().unwrap();
        assert_eq!((tp.outbound_port, tp.inbound_port), (15001, 15006));
        assert!(!tp.ipv6 && !tp.outbound_passthrough);
        let vip_of = |name: &str| {
            let r = cfg.dns.iter().find(|r| r.name == name).unwrap();
            assert_eq!(r.ips.len(), 1, "IPv4 mode: no mapped IPv6 address");
            r.ips[0]
        };
        let backend_vip = vip_of("backend.mesh");
        let vip_listener = cfg
            .listeners
            .iter()
            .find(|l| l.address == SocketAddr::new(backend_vip, 80))
            .unwrap();
        assert_eq!(vip_listener.cluster, "backend");
        assert!(!vip_listener.bind);
        let names: Vec<&str> = cfg.dns.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["backend.mesh", "web.mesh"],
            "db has no inbound anywhere"
        );
        let bind: Vec<(&str, bool)> = cfg
            .listeners
            .iter()
            .filter(|l| !matches!(l.address.ip(), IpAddr::V4(v) if v.octets()[0] >= 240))
            .map(|l| (l.name.as_str(), l.bind))
            .collect();
        assert_eq!(
            bind,
            [
                ("direct_access_10.0.0.2:8080", false),
                ("direct_access_192.0.2.3:8080", false),
                ("direct_access_192.0.2.3:9090", false),
                ("inbound:10.0.0.1:8080", false),
                ("outbound:127.0.0.1:10001", true),
                ("outbound:127.0.0.1:10002", true),
                ("outbound:127.0.0.1:10003", true),
            ],
            "inbounds are virtual, loopback outbounds keep sockets, other meshes get no direct access"
        );
        let direct = &cfg.clusters["direct_access_10.0.0.2:8080"];
        assert_eq!(direct.protocol, Protocol::Tcp);
        assert_eq!(direct.endpoints[0].address.to_string(), "10.0.0.2:8080");

        let plain = store(MESH);
        let cfg = compile(
            &plain,
            find(&plain, "web"),
            "test",
            &CompileOptions::default(),
        )
        .unwrap();
        assert!(cfg.transparent_proxy.is_none());
        assert!(cfg.listeners.iter().all(|l| l.bind));
    }
}

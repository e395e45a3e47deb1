//! Compiles the resources of a store into one proxy's `ProxyConfig`, as kuma-cp would compute
//! that proxy's view: its inbounds become listeners to the local application, its outbounds
//! become listeners load balancing over the inbounds of every Dataplane whose tags match.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bearing_model::{Dataplane, Inbound, Problem, Resource, Spec, Store, Tags};
use bearing_model::{PROTOCOL_TAG, SERVICE_TAG};
use bearing_proxy_config::{
    Cluster, Direction, Endpoint, Listener, Protocol, ProxyConfig, ProxyIdentity,
};

/// Kuma's default upstream connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Kuma's default HTTP request timeout (time to response headers here; none for gRPC).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Builds the config of the proxy described by `me` (a Dataplane) from `store`.
pub fn compile(store: &Store, me: &Resource, source: &str) -> Result<ProxyConfig, Vec<Problem>> {
    let Spec::Dataplane(dp) = &me.spec else {
        return Err(vec![problem(me, None, "is not a Dataplane".into())]);
    };
    let mesh = me.mesh.clone().unwrap_or_else(|| "default".into());
    let mut problems = Vec::new();
    let mesh_exists = mesh == "default"
        || store
            .resources
            .iter()
            .any(|r| matches!(r.spec, Spec::Mesh(_)) && r.meta.name == mesh);
    if !mesh_exists {
        problems.push(problem(
            me,
            Some("mesh"),
            format!("mesh {mesh:?} does not exist in the store"),
        ));
    }

    let mut listeners = Vec::new();
    let mut clusters = BTreeMap::new();
    let node_ip = dp.networking.address.parse::<IpAddr>().ok();

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
            name: format!("inbound:{address}"),
            address,
            direction: Direction::Inbound,
            protocol,
            cluster: cluster_name.clone(),
            service: service_of(&inbound.tags),
        });
        clusters.insert(
            cluster_name.clone(),
            cluster(
                cluster_name,
                protocol,
                vec![Endpoint {
                    address: app,
                    origin: "local application".into(),
                }],
            ),
        );
    }

    let inbounds = MeshInbounds::new(store, me, &mesh);
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
        let (endpoints, protocols) = inbounds.matching(&outbound.tags);
        let protocol = Protocol::common(protocols).unwrap_or(Protocol::Tcp);
        let cluster_name = cluster_name_for(&outbound.tags);
        let address = SocketAddr::new(ip, port16(outbound.port));
        listeners.push(Listener {
            name: format!("outbound:{address}"),
            address,
            direction: Direction::Outbound,
            protocol,
            cluster: cluster_name.clone(),
            service: service_of(&outbound.tags),
        });
        clusters.insert(
            cluster_name.clone(),
            cluster(cluster_name, protocol, endpoints),
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
        },
        listeners,
        clusters,
    };
    config.version = version_of(&config);
    Ok(config)
}

fn cluster(name: String, protocol: Protocol, endpoints: Vec<Endpoint>) -> Cluster {
    Cluster {
        name,
        protocol,
        endpoints,
        connect_timeout: CONNECT_TIMEOUT,
        request_timeout: (protocol != Protocol::Grpc).then_some(REQUEST_TIMEOUT),
    }
}

/// An optional address field: 127.0.0.1 when absent, an error message when not an IP.
fn ip_or_localhost(value: Option<&str>) -> Result<IpAddr, String> {
    match value {
        None => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Some(a) => a.parse().map_err(|_| format!("{a:?} is not an IP address")),
    }
}

/// Ports were validated to 1..=65535 by the model.
fn port16(port: u32) -> u16 {
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

/// The ready inbounds of the mesh's Dataplanes, in store order with this proxy's own Dataplane
/// first, indexed by their service tag: an outbound looks only at its service's inbounds, so
/// compiling N outbounds over N services is linear, not quadratic.
struct MeshInbounds<'a> {
    all: Vec<(&'a Resource, &'a Dataplane, &'a Inbound)>,
    by_service: HashMap<&'a str, Vec<usize>>,
}

impl<'a> MeshInbounds<'a> {
    fn new(store: &'a Store, me: &'a Resource, mesh: &str) -> Self {
        let others = store
            .resources
            .iter()
            .filter(|r| r.meta.name != me.meta.name || r.mesh != me.mesh);
        let mut all = Vec::new();
        let mut by_service: HashMap<&str, Vec<usize>> = HashMap::new();
        for r in std::iter::once(me).chain(others) {
            let Spec::Dataplane(dp) = &r.spec else {
                continue;
            };
            if r.mesh.as_deref().unwrap_or("default") != mesh {
                continue;
            }
            for inbound in dp.networking.inbound.iter().filter(|i| is_ready(i)) {
                if let Some(service) = inbound.tags.get(SERVICE_TAG) {
                    by_service.entry(service).or_default().push(all.len());
                }
                all.push((r, dp, inbound));
            }
        }
        MeshInbounds { all, by_service }
    }

    /// Every ready inbound carrying all of `selector`'s tags, and their protocols.
    fn matching(&self, selector: &Tags) -> (Vec<Endpoint>, Vec<Protocol>) {
        let candidates: Box<dyn Iterator<Item = usize> + '_> = match selector.get(SERVICE_TAG) {
            Some(service) => Box::new(
                self.by_service
                    .get(service.as_str())
                    .into_iter()
                    .flatten()
                    .copied(),
            ),
            None => Box::new(0..self.all.len()),
        };
        let mut endpoints = Vec::new();
        let mut protocols = Vec::new();
        for i in candidates {
            let (r, dp, inbound) = self.all[i];
            if !selector.iter().all(|(k, v)| inbound.tags.get(k) == Some(v)) {
                continue;
            }
            match endpoint_ip(dp, inbound) {
                Some(ip) => {
                    endpoints.push(Endpoint {
                        address: SocketAddr::new(ip, port16(inbound.port)),
                        origin: format!("Dataplane/{}", r.meta.name),
                    });
                    protocols.push(Protocol::from_tag(
                        inbound.tags.get(PROTOCOL_TAG).map(String::as_str),
                    ));
                }
                None => tracing::warn!(
                    dataplane = %r.meta.name,
                    "skipping endpoint: its address is not an IP address"
                ),
            }
        }
        endpoints.sort_by_key(|e| e.address);
        endpoints.dedup_by_key(|e| e.address);
        (endpoints, protocols)
    }
}

fn is_ready(inbound: &Inbound) -> bool {
    let health_ok = inbound.health.as_ref().is_none_or(|h| h.ready);
    let state_ok = inbound.state.as_deref().is_none_or(|s| s == "Ready");
    health_ok && state_ok
}

/// The address other proxies use for an inbound: its own address, else the advertised or
/// node address of its dataplane.
fn endpoint_ip(dp: &Dataplane, inbound: &Inbound) -> Option<IpAddr> {
    inbound
        .address
        .as_deref()
        .or(dp.networking.advertised_address.as_deref())
        .unwrap_or(&dp.networking.address)
        .parse()
        .ok()
}

fn problem(me: &Resource, field: Option<&str>, message: String) -> Problem {
    Problem {
        file: me.origin.file.clone(),
        line: me.origin.line,
        resource: Some(me.key()),
        field: field.map(str::to_string),
        message,
    }
}

/// FNV-1a over the serialized config: stable across runs and processes, so every proxy that
/// compiles the same view reports the same version.
fn version_of(config: &ProxyConfig) -> String {
    let text = serde_json::to_string(&(&config.identity, &config.listeners, &config.clusters))
        .unwrap_or_default();
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn store(text: &str) -> Store {
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
        let cfg = compile(&s, find(&s, "web"), "test").unwrap();
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

    #[test]
    fn version_is_stable_and_tracks_content() {
        let s = store(MESH);
        let a = compile(&s, find(&s, "web"), "test").unwrap();
        let b = compile(&s, find(&s, "web"), "test").unwrap();
        assert_eq!(a.version, b.version);
        let c = compile(&s, find(&s, "backend-1"), "test").unwrap();
        assert_ne!(a.version, c.version);
    }

    #[test]
    fn inbounds_to_distinct_applications_get_distinct_clusters() {
        let s = store("type: Dataplane\nname: a\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 80\n    servicePort: 8080\n    tags: {kuma.io/service: a}\n  - port: 81\n    servicePort: 8080\n    serviceAddress: 10.0.0.9\n    tags: {kuma.io/service: b}\n  - port: 82\n    servicePort: 8080\n    tags: {kuma.io/service: c, kuma.io/protocol: http}\n");
        let errs = compile(&s, find(&s, "a"), "test").unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(
            errs[0].field.as_deref(),
            Some("networking.inbound[2].tags.kuma.io/protocol")
        );
        let s = store("type: Dataplane\nname: a\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 80\n    servicePort: 8080\n    tags: {kuma.io/service: a}\n  - port: 81\n    servicePort: 8080\n    serviceAddress: 10.0.0.9\n    tags: {kuma.io/service: b}\n");
        let cfg = compile(&s, find(&s, "a"), "test").unwrap();
        assert_eq!(cfg.listeners[0].cluster, "localhost:8080");
        assert_eq!(cfg.listeners[1].cluster, "10.0.0.9:8080");
    }

    #[test]
    fn missing_mesh_and_clashing_listeners_are_problems() {
        let s = store("type: Dataplane\nname: a\nmesh: nope\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 80\n    tags: {kuma.io/service: a}\n  outbound:\n  - port: 80\n    tags: {kuma.io/service: a}\n");
        let errs = compile(&s, find(&s, "a"), "test").unwrap_err();
        let text: Vec<String> = errs.iter().map(|p| p.to_string()).collect();
        assert!(
            text[0].contains("Dataplane/a: mesh: mesh \"nope\" does not exist"),
            "{text:?}"
        );
        assert!(text[1].contains("use the same address"), "{text:?}");
    }
}

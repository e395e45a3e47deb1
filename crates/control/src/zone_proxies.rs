//! Zone ingress and zone egress configs: one TCP listener that routes by the SNI of the
//! client's TLS ClientHello.
//!
//! - Ingress (ZoneIngress, port 10001): for every mesh with mTLS, each service of its zone's
//!   ready Dataplanes (Kuma's tags-form SNI, the other tags narrowing the endpoints) and each
//!   stored MeshService port (hashed form) goes to those local endpoints. TLS passes through:
//!   the destination sidecar terminates it. A mesh without mTLS gets no route: sidecars only
//!   cross zones with mTLS (Kuma's endpoint builder skips remote ingresses of such a mesh),
//!   so a route to its plaintext inbounds would serve only outsiders.
//! - Egress (ZoneEgress, port 10002), for every mesh with mTLS: services running only in other
//!   zones pass through to those zones' ingresses; ExternalServices terminate mesh mTLS with
//!   the external service's identity, require a client certificate of that mesh, and connect
//!   to the external address (plain, or TLS per `networking.tls`); an HTTP one
//!   (`kuma.io/protocol` http, http2 or grpc) is served as HTTP there, every request's Host
//!   rewritten to the service's host, as kuma-cp's egress routes it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use bearing_model::{
    Problem, Resource, Spec, Store, Tags, ZoneProxyNetworking, PROTOCOL_TAG, SERVICE_TAG,
};
use bearing_proxy_config::{
    Cluster, Direction, DnsEndpoints, DownstreamTls, Endpoint, HeaderFilter, HttpRoute, Listener,
    Protocol, ProxyConfig, ProxyIdentity, Rewrite, RouteTable, SniHttp, SniRoute, SniTarget,
    UpstreamTls, VirtualHost,
};
use bearing_tls::tags_sni;

use crate::compile::{
    admin_port, cluster, endpoint_ip, external_endpoint, external_services, is_ready, port16,
    problem,
};
use crate::mtls::{mesh_of, mesh_tls, meshes};
use crate::virtual_ips::{mesh_service_sni_name, TargetPort};
use crate::zones::{dataplane_zone, ZoneView};

/// Builds the config of the zone proxy `me` (ZoneIngress or ZoneEgress); `zone` is `--zone`.
pub fn compile(
    store: &Store,
    me: &Resource,
    source: &str,
    zone: Option<&str>,
) -> Result<ProxyConfig, Vec<Problem>> {
    let (networking, own_zone, egress) = match &me.spec {
        Spec::ZoneIngress(zi) => (&zi.networking, zi.zone.as_deref(), false),
        Spec::ZoneEgress(ze) => (&ze.networking, ze.zone.as_deref(), true),
        _ => return Err(vec![problem(me, None, "is not a zone proxy".into())]),
    };
    let address = listen_address(me, networking)?;
    let view = ZoneView::new(store, zone.or(own_zone));
    let mut routes = Vec::new();
    let mut clusters = BTreeMap::new();
    let mut mtls = BTreeMap::new();
    let mut problems = Vec::new();
    if egress {
        for (mesh_name, mesh) in meshes(store) {
            let externals = external_services(store, mesh_name);
            let identities = externals.keys().map(|s| s.to_string()).collect();
            match mesh_tls(store, mesh_name, mesh, identities, &me.meta.name) {
                Ok(Some(tls)) => {
                    egress_routes(store, &view, mesh_name, &mut routes, &mut clusters);
                    for (service, (r, es)) in externals {
                        let (endpoints, dns, tls) = external_endpoint(r, es, store, mesh_name);
                        let terminate = Some(DownstreamTls {
                            mesh: mesh_name.to_string(),
                            params: None,
                        });
                        let protocol = es.tags.get(PROTOCOL_TAG).map(String::as_str);
                        let route = ServiceRoute {
                            mesh: mesh_name,
                            service,
                            tls,
                            terminate,
                            protocol: Protocol::from_tag(protocol),
                        };
                        route.add(endpoints, dns, &mut routes, &mut clusters);
                    }
                    // Only ExternalServices need the egress's own certificate; without any,
                    // it passes cross-zone TLS through and needs none.
                    if !tls.services.is_empty() {
                        mtls.insert(mesh_name.to_string(), tls);
                    }
                }
                Ok(None) => {}
                Err((field, message)) => {
                    let at = store
                        .resources
                        .iter()
                        .find(|r| matches!(r.spec, Spec::Mesh(_)) && r.meta.name == mesh_name);
                    problems.push(problem(at.unwrap_or(me), Some(&field), message));
                }
            }
        }
    } else {
        ingress_routes(store, &view, &mut routes, &mut clusters);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    routes.sort_by(|a, b| a.target.cmp(&b.target));
    let listener = Listener {
        service: me.meta.name.clone(),
        sni_routes: Some(routes),
        ..Listener::new(
            format!("inbound:{address}"),
            address,
            Direction::Inbound,
            Protocol::Tcp,
        )
    };
    let mut config = ProxyConfig {
        version: String::new(),
        source: source.to_string(),
        identity: ProxyIdentity {
            name: me.meta.name.clone(),
            mesh: String::new(),
            proxy_type: if egress { "egress" } else { "ingress" }.into(),
            admin_port: admin_port(networking.admin.as_ref()),
        },
        listeners: vec![listener],
        clusters,
        transparent_proxy: None,
        dns: Vec::new(),
        mtls,
        kuma_endpoints: Default::default(),
    };
    config.version = config.content_version();
    Ok(config)
}

fn listen_address(me: &Resource, net: &ZoneProxyNetworking) -> Result<SocketAddr, Vec<Problem>> {
    let ip: IpAddr = net.address.parse().map_err(|_| {
        vec![problem(
            me,
            Some("networking.address"),
            format!("{:?} must be an IP address to listen on", net.address),
        )]
    })?;
    Ok(SocketAddr::new(ip, port16(net.port)))
}

/// The SNI route of one service of a mesh, to a TCP cluster named after the service's SNI:
/// what the ingress and the egress add for every service they serve.
struct ServiceRoute<'a> {
    mesh: &'a str,
    service: &'a str,
    /// TLS towards the endpoints (an external service's own).
    tls: Option<UpstreamTls>,
    /// Mesh TLS ended here rather than passed through.
    terminate: Option<DownstreamTls>,
    /// What is spoken once mesh TLS is ended: HTTP is routed here (an HTTP ExternalService).
    protocol: Protocol,
}

impl<'a> ServiceRoute<'a> {
    /// A route whose TLS passes through untouched, to endpoints that end it.
    fn passthrough(mesh: &'a str, service: &'a str) -> Self {
        ServiceRoute {
            mesh,
            service,
            tls: None,
            terminate: None,
            protocol: Protocol::Tcp,
        }
    }

    /// Adds the route and its cluster of `endpoints` (and of the hostnames `dns` resolves).
    fn add(
        self,
        endpoints: Vec<Endpoint>,
        dns: Option<DnsEndpoints>,
        routes: &mut Vec<SniRoute>,
        clusters: &mut BTreeMap<String, Cluster>,
    ) {
        let name = tags_sni(self.service, self.mesh, &BTreeMap::new());
        let http = self.terminate.is_some() && self.protocol.is_http();
        let protocol = if http { self.protocol } else { Protocol::Tcp };
        let mut c = cluster(name.clone(), protocol, endpoints);
        c.tls = self.tls;
        c.dns = dns;
        clusters.insert(name.clone(), c);
        // HTTP: the route table decides (its one route names the cluster), as from kuma-cp.
        routes.push(SniRoute {
            target: service_target(self.mesh, self.service),
            http: http.then(|| host_rewriting(&name, protocol)),
            cluster: if http { String::new() } else { name },
            terminate: self.terminate,
            network_rbac: None,
        });
    }
}

/// The HTTP of an HTTP ExternalService at the egress, as kuma-cp renders it: every request
/// to `cluster`, its Host rewritten to the endpoint's hostname (the service's host), no
/// route timeout.
fn host_rewriting(cluster: &str, protocol: Protocol) -> SniHttp {
    let rewrite = Rewrite {
        host_to_backend_hostname: true,
        ..Rewrite::default()
    };
    let origin = format!("ExternalService {cluster}");
    let zero = Some(std::time::Duration::ZERO);
    let route = HttpRoute::prefix_to(origin, "/", cluster, Some(rewrite), zero);
    SniHttp {
        stream_idle_timeout: None,
        downstream_timeouts: bearing_proxy_config::DownstreamHttpTimeouts::ENVOY_DEFAULT,
        protocol,
        routes: Some(RouteTable {
            name: cluster.to_string(),
            virtual_hosts: vec![VirtualHost {
                name: cluster.to_string(),
                domains: vec!["*".into()],
                routes: vec![route],
            }],
        }),
        retry: None,
        request_headers: HeaderFilter::default(),
        http_filters: Vec::new(),
        http_rbac: None,
    }
}

fn service_target(mesh: &str, service: &str) -> SniTarget {
    SniTarget::Service {
        mesh: mesh.to_string(),
        service: service.to_string(),
    }
}

/// Ingress: each local service of every mesh with mTLS, with its endpoints' tags so that an
/// SNI's tags select among them, and each stored MeshService port.
fn ingress_routes(
    store: &Store,
    view: &ZoneView,
    routes: &mut Vec<SniRoute>,
    clusters: &mut BTreeMap<String, Cluster>,
) {
    let mut services: BTreeMap<(&str, &str), Vec<Endpoint>> = BTreeMap::new();
    let all_meshes = meshes(store);
    let has_mtls = |r: &Resource| {
        all_meshes
            .get(mesh_of(r))
            .is_some_and(|m| m.mtls.as_ref().and_then(|t| t.enabled()).is_some())
    };
    let local_inbounds = store.resources.iter().flat_map(|r| match &r.spec {
        Spec::Dataplane(dp) if view.is_local(dataplane_zone(dp)) && has_mtls(r) => dp
            .networking
            .inbound
            .iter()
            .filter(|i| is_ready(i))
            .filter_map(|i| Some((r, i, endpoint_ip(dp, i)?)))
            .collect::<Vec<_>>(),
        _ => Vec::new(),
    });
    let local_inbounds: Vec<_> = local_inbounds.collect();
    for (r, inbound, ip) in &local_inbounds {
        let Some(service) = inbound.tags.get(SERVICE_TAG) else {
            continue;
        };
        services
            .entry((mesh_of(r), service.as_str()))
            .or_default()
            .push(endpoint(r, inbound, *ip));
    }
    for ((mesh, service), endpoints) in services {
        ServiceRoute::passthrough(mesh, service).add(endpoints, None, routes, clusters);
    }
    for r in &store.resources {
        let Spec::MeshService(ms) = &r.spec else {
            continue;
        };
        if !has_mtls(r) {
            continue;
        }
        // A copy synced from another zone is served by that zone's ingress, not this one; a
        // copy of one of this zone's MeshServices (a shared store) is served here.
        let labels = &r.meta.labels;
        let origin_zone = match labels.get("kuma.io/origin").map(String::as_str) {
            Some("global") => labels.get("kuma.io/zone").map(String::as_str),
            _ => view.zone.as_deref(),
        };
        if !view.is_local(origin_zone) {
            continue;
        }
        let sni_name = mesh_service_sni_name(&r.meta.name, labels);
        let display = labels.get("kuma.io/display-name").unwrap_or(&r.meta.name);
        let selector = ms.spec.selector.dataplane_tags.clone().unwrap_or_default();
        for p in &ms.spec.ports {
            let target = TargetPort::of(p);
            let endpoints: Vec<Endpoint> = local_inbounds
                .iter()
                .filter(|(d, i, _)| {
                    mesh_of(d) == mesh_of(r)
                        && target.selects(i)
                        && selector.iter().all(|(k, v)| i.tags.get(k) == Some(v))
                })
                .map(|(d, i, ip)| endpoint(d, i, *ip))
                .collect();
            let name = format!("meshservice:{}/{}:{}", mesh_of(r), r.meta.name, p.port);
            clusters.insert(
                name.clone(),
                cluster(name.clone(), Protocol::Tcp, endpoints),
            );
            // Kuma's sidecars name it by the hashed form, newer ones by the KRI form.
            let section = p.name.clone().unwrap_or_else(|| p.port.to_string());
            let kri = bearing_tls::mesh_service_kri_sni(mesh_of(r), origin_zone, display, &section);
            let targets = [
                SniTarget::MeshService {
                    mesh: mesh_of(r).to_string(),
                    name: sni_name.clone(),
                    port: port16(p.port),
                },
                SniTarget::Kri {
                    mesh: mesh_of(r).to_string(),
                    sni: kri,
                },
            ];
            for target in targets {
                routes.push(SniRoute {
                    target,
                    cluster: name.clone(),
                    terminate: None,
                    http: None,
                    network_rbac: None,
                });
            }
        }
    }
}

/// An inbound as an ingress endpoint, with its tags for SNI subsets.
fn endpoint(r: &Resource, inbound: &bearing_model::Inbound, ip: IpAddr) -> Endpoint {
    Endpoint {
        address: SocketAddr::new(ip, port16(inbound.port)),
        origin: r.key(),
        tags: inbound.tags.clone(),
        hostname: None,
        tls_match: None,
        priority: 0,
        event_host: None,
        weight: 1,
        locality: None,
    }
}

/// Egress: services of `mesh` that run only in other zones, passed through to those zones'
/// ingresses (which pick the endpoints by the SNI's tags).
fn egress_routes(
    store: &Store,
    view: &ZoneView,
    mesh: &str,
    routes: &mut Vec<SniRoute>,
    clusters: &mut BTreeMap<String, Cluster>,
) {
    let mut remote: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in store.resources.iter().filter(|r| mesh_of(r) == mesh) {
        let Spec::Dataplane(dp) = &r.spec else {
            continue;
        };
        let Some(zone) = dataplane_zone(dp).filter(|z| !view.is_local(Some(z))) else {
            continue;
        };
        for inbound in dp.networking.inbound.iter().filter(|i| is_ready(i)) {
            if let Some(service) = inbound.tags.get(SERVICE_TAG) {
                remote.entry(service).or_default().insert(zone);
            }
        }
    }
    for (zone, announced) in view.announced(mesh, &Tags::new()) {
        if let Some(service) = announced.tags.get(SERVICE_TAG) {
            remote.entry(service).or_default().insert(zone);
        }
    }
    for (service, zones) in remote {
        let endpoints: Vec<Endpoint> = zones
            .iter()
            .flat_map(|z| view.ingresses(z).iter().cloned())
            .collect();
        ServiceRoute::passthrough(mesh, service).add(endpoints, None, routes, clusters);
    }
    // MeshServices synced from other zones, by the hashed SNI sidecars send them: passed
    // through to that zone's ingresses.
    for r in store.resources.iter().filter(|r| mesh_of(r) == mesh) {
        let Spec::MeshService(ms) = &r.spec else {
            continue;
        };
        let labels = &r.meta.labels;
        let synced = labels.get("kuma.io/origin").map(String::as_str) == Some("global");
        let Some(zone) = labels
            .get("kuma.io/zone")
            .filter(|z| synced && !view.is_local(Some(z.as_str())))
        else {
            continue;
        };
        let sni_name = mesh_service_sni_name(&r.meta.name, labels);
        for p in &ms.spec.ports {
            let name = format!("meshservice:{mesh}/{sni_name}:{}", p.port);
            let endpoints = view.ingresses(zone).to_vec();
            clusters.insert(
                name.clone(),
                cluster(name.clone(), Protocol::Tcp, endpoints),
            );
            routes.push(SniRoute {
                target: SniTarget::MeshService {
                    mesh: mesh.to_string(),
                    name: sni_name.clone(),
                    port: port16(p.port),
                },
                cluster: name,
                terminate: None,
                http: None,
                network_rbac: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile as compile_any, CompileOptions};
    use bearing_proxy_config::UpstreamTls;
    use std::path::Path;

    /// A two-zone mesh with a builtin CA, an ExternalService, zone proxies, and `web` in
    /// zone-a calling `backend`, which runs only in zone-b.
    fn two_zones(zone_egress: bool) -> Store {
        let ca = bearing_tls::MeshCa::generate("default").unwrap();
        let secrets = bearing_tls::builtin_secrets_yaml("default", "ca-1", &ca);
        let text = format!(
            r#"type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
routing:
  zoneEgress: {zone_egress}
---
{secrets}
---
type: ZoneIngress
name: zi-b
zone: zone-b
networking: {{address: 10.0.2.1, port: 10001, advertisedAddress: 192.0.2.1, advertisedPort: 20001}}
---
type: ZoneEgress
name: ze-a
zone: zone-a
networking: {{address: 10.0.1.9, port: 10002}}
---
type: ExternalService
name: httpbin
mesh: default
tags: {{kuma.io/service: httpbin, kuma.io/protocol: http}}
networking:
  address: 10.9.9.9:443
  tls: {{enabled: true, serverName: httpbin.test}}
---
type: Dataplane
name: web
mesh: default
networking:
  address: 10.0.1.1
  inbound:
  - port: 8080
    tags: {{kuma.io/service: web, kuma.io/zone: zone-a}}
  outbound:
  - port: 10001
    tags: {{kuma.io/service: backend, version: v1}}
  - port: 10002
    tags: {{kuma.io/service: httpbin}}
---
type: Dataplane
name: backend-1
mesh: default
networking:
  address: 10.0.2.2
  inbound:
  - port: 8080
    tags: {{kuma.io/service: backend, kuma.io/zone: zone-b, version: v1}}
"#
        );
        let mut s = Store::default();
        s.add_text(&text, Path::new("mesh.yaml"));
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        s
    }

    /// Adds `text` to the store `s`, which must then have no problem.
    fn add(s: &mut Store, text: &str) {
        s.add_text(text, Path::new("added.yaml"));
        assert!(s.problems.is_empty(), "{:?}", s.problems);
    }

    fn find<'a>(s: &'a Store, name: &str) -> &'a Resource {
        s.resources.iter().find(|r| r.meta.name == name).unwrap()
    }

    /// The SNI routes of a zone proxy's listener (which always has them).
    fn sni_routes(l: &Listener) -> &[SniRoute] {
        l.sni_routes
            .as_deref()
            .expect("a zone proxy listener routes by SNI")
    }

    fn addresses(c: &Cluster) -> Vec<String> {
        c.endpoints.iter().map(|e| e.address.to_string()).collect()
    }

    /// The config of the Dataplane or zone proxy `proxy`, compiled from `s` plus the resources
    /// of `yaml`.
    fn compiled_with(mut s: Store, yaml: &str, proxy: &str) -> ProxyConfig {
        s.add_text(yaml, Path::new("extra.yaml"));
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        compile_any(&s, find(&s, proxy), "t", &CompileOptions::default()).unwrap()
    }

    #[test]
    fn sidecar_reaches_other_zones_through_their_ingress_or_the_egress() {
        let s = two_zones(false);
        let cfg = compile_any(&s, find(&s, "web"), "t", &CompileOptions::default()).unwrap();
        let backend = &cfg.clusters["backend{version=v1}"];
        assert_eq!(addresses(backend), ["192.0.2.1:20001"]);
        let Some(UpstreamTls::Mesh {
            sni, identities, ..
        }) = &backend.tls
        else {
            panic!("{:?}", backend.tls)
        };
        assert_eq!(sni, "backend{mesh=default,version=v1}");
        assert_eq!(
            identities,
            &[bearing_proxy_config::SpiffeMatcher::Exact(
                "spiffe://default/backend".into()
            )]
        );
        let ext = &cfg.clusters["httpbin"];
        assert_eq!(addresses(ext), ["10.9.9.9:443"]);
        assert!(
            matches!(&ext.tls, Some(UpstreamTls::External { server_name, .. }) if server_name == "httpbin.test")
        );
        assert_eq!(cfg.mtls["default"].services, ["web"]);
        assert!(cfg.listeners.iter().any(|l| l.tls.is_some()));

        let s = two_zones(true);
        let cfg = compile_any(&s, find(&s, "web"), "t", &CompileOptions::default()).unwrap();
        assert_eq!(
            addresses(&cfg.clusters["backend{version=v1}"]),
            ["10.0.1.9:10002"]
        );
        let ext = &cfg.clusters["httpbin"];
        assert_eq!(addresses(ext), ["10.0.1.9:10002"]);
        assert!(
            matches!(&ext.tls, Some(UpstreamTls::Mesh { sni, .. }) if sni == "httpbin{mesh=default}")
        );
    }

    #[test]
    fn ingress_routes_local_services_and_egress_remote_and_external_ones() {
        let s = two_zones(true);
        let ingress = compile_any(&s, find(&s, "zi-b"), "t", &CompileOptions::default()).unwrap();
        let l = &ingress.listeners[0];
        assert_eq!(l.address.to_string(), "10.0.2.1:10001");
        assert_eq!(l.name, "inbound:10.0.2.1:10001");
        let targets: Vec<_> = sni_routes(l).iter().map(|r| &r.target).collect();
        assert_eq!(
            targets,
            [&service_target("default", "backend")],
            "web is in zone-a"
        );
        let c = &ingress.clusters[&sni_routes(l)[0].cluster];
        assert_eq!(addresses(c), ["10.0.2.2:8080"]);
        assert_eq!(c.endpoints[0].tags["version"], "v1");
        assert!(ingress.mtls.is_empty(), "the ingress never terminates TLS");

        let egress = compile_any(&s, find(&s, "ze-a"), "t", &CompileOptions::default()).unwrap();
        let routes = sni_routes(&egress.listeners[0]);
        let backend = routes
            .iter()
            .find(|r| r.target == service_target("default", "backend"))
            .unwrap();
        assert!(backend.terminate.is_none());
        assert_eq!(
            addresses(&egress.clusters[&backend.cluster]),
            ["192.0.2.1:20001"]
        );
        let ext = routes
            .iter()
            .find(|r| r.target == service_target("default", "httpbin"))
            .unwrap();
        assert_eq!(
            ext.terminate.as_ref().map(|t| t.mesh.as_str()),
            Some("default")
        );
        // HTTP: the route table names the cluster (`<service>{mesh=<mesh>}`).
        assert!(ext.cluster.is_empty());
        let ext_cluster = &egress.clusters["httpbin{mesh=default}"];
        assert_eq!(addresses(ext_cluster), ["10.9.9.9:443"]);
        // An HTTP ExternalService is routed as HTTP, Host rewritten to its endpoint's host.
        let http = ext.http.as_ref().expect("httpbin is HTTP");
        assert_eq!(http.protocol, Protocol::Http);
        let route = &http.routes.as_ref().unwrap().virtual_hosts[0].routes[0];
        assert!(
            matches!(&route.action, bearing_proxy_config::RouteAction::Forward { rewrite: Some(rw), .. } if rw.host_to_backend_hostname)
        );
        let endpoint = &ext_cluster.endpoints[0];
        assert_eq!(endpoint.hostname.as_deref(), Some("10.9.9.9"));
        assert!(backend.http.is_none(), "cross-zone traffic passes through");
        assert_eq!(egress.mtls["default"].services, ["httpbin"]);
        assert!(
            routes
                .iter()
                .all(|r| r.target != service_target("default", "web")),
            "web is local to the egress"
        );
    }

    /// A MeshService created in the ingress's zone is routed by its hashed SNI and by Kuma's
    /// KRI form (section: the port's name, else its number), both to the same cluster; a copy
    /// synced back from this zone is routed by its display name; one synced from another zone
    /// is not routed here.
    #[test]
    fn ingress_routes_local_mesh_services_by_kri_sni_too() {
        let extra = r#"type: MeshService
name: backend
mesh: default
spec:
  selector: {dataplaneTags: {kuma.io/service: backend}}
  ports:
  - port: 8080
  - port: 9090
    name: admin
---
type: MeshService
name: backend-synced
mesh: default
labels: {kuma.io/origin: global, kuma.io/zone: zone-c}
spec:
  selector: {dataplaneTags: {kuma.io/service: backend}}
  ports:
  - port: 8080
---
type: MeshService
name: api-zone-b-hash
mesh: default
labels: {kuma.io/origin: global, kuma.io/zone: zone-b, kuma.io/display-name: api}
spec:
  selector: {dataplaneTags: {kuma.io/service: backend}}
  ports:
  - port: 7070
"#;
        let ingress = compiled_with(two_zones(true), extra, "zi-b");
        let routes = sni_routes(&ingress.listeners[0]);
        let kri: Vec<_> = routes
            .iter()
            .filter_map(|r| match &r.target {
                SniTarget::Kri { mesh, sni } => Some((mesh.as_str(), sni.as_str(), &r.cluster)),
                _ => None,
            })
            .collect();
        assert_eq!(
            kri,
            [
                (
                    "default",
                    "sni.msvc.default.zone-b.api.7070",
                    &"meshservice:default/api-zone-b-hash:7070".to_string()
                ),
                (
                    "default",
                    "sni.msvc.default.zone-b.backend.8080",
                    &"meshservice:default/backend:8080".to_string()
                ),
                (
                    "default",
                    "sni.msvc.default.zone-b.backend.admin",
                    &"meshservice:default/backend:9090".to_string()
                ),
            ]
        );
        let hashed = |name: &str, port: u16| SniTarget::MeshService {
            mesh: "default".into(),
            name: name.into(),
            port,
        };
        assert!(routes.iter().any(|r| r.target == hashed("api", 7070)));
        assert!(routes
            .iter()
            .all(|r| r.target != hashed("backend-synced", 8080)));
        assert!(kri
            .iter()
            .all(|(_, sni, _)| bearing_tls::parse_kri_sni(sni).is_some()));
        assert_eq!(addresses(&ingress.clusters[kri[1].2]), ["10.0.2.2:8080"]);
    }

    /// The egress routes a MeshService synced from another zone by the hashed SNI sidecars
    /// send for it (its display name) to that zone's ingress.
    #[test]
    fn egress_routes_remote_mesh_services_by_their_hashed_sni() {
        let synced = r#"type: MeshService
name: backend-zone-b-hash
mesh: default
labels: {kuma.io/origin: global, kuma.io/zone: zone-b, kuma.io/display-name: backend}
spec:
  selector: {dataplaneTags: {kuma.io/service: backend}}
  ports:
  - port: 8080
"#;
        let egress = compiled_with(two_zones(true), synced, "ze-a");
        let routes = sni_routes(&egress.listeners[0]);
        let target = SniTarget::MeshService {
            mesh: "default".into(),
            name: "backend".into(),
            port: 8080,
        };
        let route = routes.iter().find(|r| r.target == target).unwrap();
        assert!(route.terminate.is_none());
        assert_eq!(
            addresses(&egress.clusters[&route.cluster]),
            ["192.0.2.1:20001"]
        );
    }

    /// Sidecars never cross zones without mTLS, so the ingress routes no mesh that lacks it:
    /// neither its services nor its MeshServices (an outsider could otherwise reach their
    /// plaintext inbounds through the ingress).
    #[test]
    fn ingress_routes_only_meshes_with_mtls() {
        let plain = r#"type: Mesh
name: plain
---
type: Dataplane
name: redis-1
mesh: plain
networking:
  address: 10.0.2.3
  inbound:
  - port: 6379
    tags: {kuma.io/service: redis, kuma.io/zone: zone-b}
---
type: MeshService
name: redis
mesh: plain
spec:
  selector: {dataplaneTags: {kuma.io/service: redis}}
  ports:
  - port: 6379
"#;
        let ingress = compiled_with(two_zones(false), plain, "zi-b");
        let routes = sni_routes(&ingress.listeners[0]);
        let meshes: Vec<_> = routes
            .iter()
            .map(|r| match &r.target {
                SniTarget::Service { mesh, .. }
                | SniTarget::MeshService { mesh, .. }
                | SniTarget::MeshExternalService { mesh, .. }
                | SniTarget::Kri { mesh, .. } => mesh.as_str(),
            })
            .collect();
        assert_eq!(meshes, ["default"], "{routes:?}");
        assert!(ingress.clusters.keys().all(|c| !c.contains("plain")));
    }

    #[test]
    fn missing_builtin_ca_is_a_problem_at_the_mesh() {
        let mut s = two_zones(false);
        s.resources.retain(|r| !matches!(r.spec, Spec::Secret(_)));
        let errs = compile_any(&s, find(&s, "web"), "t", &CompileOptions::default()).unwrap_err();
        let text = errs[0].to_string();
        assert!(text.contains("Mesh/default: mtls.backends[0]"), "{text}");
        assert!(
            text.contains("bearing ca generate --mesh default --backend ca-1"),
            "{text}"
        );
        let errs = compile_any(&s, find(&s, "ze-a"), "t", &CompileOptions::default()).unwrap_err();
        assert!(
            errs[0].to_string().contains("default.ca-builtin-cert-ca-1"),
            "{:?}",
            errs
        );
    }

    /// The gateway seed's `kong-01` (delegated: no inbounds) in an mTLS mesh and in zone-a by
    /// its gateway tags: its identity is its gateway service, and zone-b's backend is reached
    /// through zone-b's ingress, as for any zone-a sidecar.
    #[test]
    fn gateways_take_identity_and_zone_from_gateway_tags() {
        let mut s = two_zones(false);
        let kong = "type: Dataplane\nname: kong-01\nmesh: default\nnetworking:\n  address: 10.0.1.5\n  gateway:\n    type: DELEGATED\n    tags: {kuma.io/service: kong, kuma.io/zone: zone-a}\n  outbound:\n  - port: 33033\n    tags: {kuma.io/service: backend}\n";
        add(&mut s, kong);
        let cfg = compile_any(&s, find(&s, "kong-01"), "t", &CompileOptions::default()).unwrap();
        assert_eq!(cfg.mtls["default"].services, ["kong"]);
        assert_eq!(addresses(&cfg.clusters["backend"]), ["192.0.2.1:20001"]);
        // zone-b's ingress does not route to kong: it is in zone-a.
        let gw = find(&s, "kong-01");
        let Spec::Dataplane(dp) = &gw.spec else {
            panic!()
        };
        assert_eq!(crate::zones::dataplane_zone(dp), Some("zone-a"));
    }

    /// With transparent proxying, an ExternalService addressed by IP gets an outbound at that
    /// address: through the egress with `routing.zoneEgress`, else straight to it.
    #[test]
    fn external_service_ip_address_is_an_outbound() {
        for (zone_egress, endpoint) in [(true, "10.0.1.9:10002"), (false, "10.9.9.9:443")] {
            let mut s = two_zones(zone_egress);
            for r in &mut s.resources {
                if let Spec::Dataplane(dp) = &mut r.spec {
                    dp.networking.transparent_proxying = Some(bearing_model::TransparentProxying {
                        redirect_port_inbound: 15006,
                        redirect_port_outbound: 15001,
                        ..Default::default()
                    });
                }
            }
            let web = compile_any(&s, find(&s, "web"), "t", &CompileOptions::default()).unwrap();
            let l = web
                .listeners
                .iter()
                .find(|l| l.address.to_string() == "10.9.9.9:443")
                .expect("an outbound at the ExternalService's address");
            assert_eq!(l.name, "outbound:10.9.9.9:443");
            assert!(!l.bind, "reached through the capture port");
            assert_eq!(addresses(&web.clusters[&l.cluster]), [endpoint]);
        }
    }

    /// The MeshService seed's "Multizone": a local MeshService's traffic stays in the proxy's
    /// zone; one synced from zone-b (`kuma.io/origin: global`) goes only to zone-b, through
    /// its ingress; the `kuma.io/service` name still spans both zones.
    #[test]
    fn mesh_service_traffic_stays_in_one_zone() {
        let mut s = two_zones(false);
        add(&mut s, "type: Dataplane\nname: backend-a\nmesh: default\nnetworking:\n  address: 10.0.1.7\n  inbound:\n  - port: 8080\n    tags: {kuma.io/service: backend, kuma.io/zone: zone-a, version: v1}\n---\ntype: MeshService\nname: backend-zone-b\nmesh: default\nlabels: {kuma.io/display-name: backend, kuma.io/origin: global, kuma.io/zone: zone-b, kuma.io/env: universal}\nspec:\n  selector:\n    dataplaneTags: {kuma.io/service: backend}\n  ports:\n  - port: 8080\n    targetPort: 8080\n    appProtocol: http\n");
        for r in &mut s.resources {
            match &mut r.spec {
                Spec::Mesh(m) => {
                    m.mesh_services = Some(bearing_model::MeshServicesMode {
                        mode: Some("Everywhere".into()),
                    })
                }
                Spec::Dataplane(dp) if r.meta.name == "web" => {
                    dp.networking.transparent_proxying = Some(bearing_model::TransparentProxying {
                        redirect_port_inbound: 15006,
                        redirect_port_outbound: 15001,
                        ..Default::default()
                    })
                }
                _ => {}
            }
        }
        let web = compile_any(&s, find(&s, "web"), "t", &CompileOptions::default()).unwrap();
        let cluster = |name: &str| addresses(&web.clusters[name]);
        assert_eq!(cluster("meshservice:backend:8080"), ["10.0.1.7:8080"]);
        assert_eq!(
            cluster("meshservice:backend-zone-b:8080"),
            ["192.0.2.1:20001"]
        );
        assert_eq!(cluster("backend"), ["10.0.1.7:8080", "192.0.2.1:20001"]);
    }

    /// An egress with no ExternalService needs no certificate of its own and still listens,
    /// with routes for the other zones' services (or none at all, refusing every SNI).
    #[test]
    fn egress_without_external_services_serves_cross_zone_traffic() {
        let mut s = two_zones(true);
        s.resources
            .retain(|r| !matches!(r.spec, Spec::ExternalService(_)));
        let egress = compile_any(&s, find(&s, "ze-a"), "t", &CompileOptions::default()).unwrap();
        assert!(egress.mtls.is_empty(), "{:?}", egress.mtls.keys());
        let targets: Vec<_> = sni_routes(&egress.listeners[0])
            .iter()
            .map(|r| &r.target)
            .collect();
        assert_eq!(targets, [&service_target("default", "backend")]);

        s.resources.retain(|r| r.meta.name != "backend-1");
        let egress = compile_any(&s, find(&s, "ze-a"), "t", &CompileOptions::default()).unwrap();
        assert_eq!(egress.listeners[0].sni_routes, Some(Vec::new()));
    }

    #[test]
    fn admin_port_of_zone_proxies_and_dataplanes_is_carried() {
        let mut s = two_zones(false);
        add(&mut s, "type: ZoneEgress\nname: ze-admin\nzone: zone-a\nnetworking: {address: 10.0.1.8, port: 10002, admin: {port: 9902}}\n");
        let ze = compile_any(&s, find(&s, "ze-admin"), "t", &CompileOptions::default()).unwrap();
        assert_eq!(ze.identity.admin_port, Some(9902));
        let web = compile_any(&s, find(&s, "web"), "t", &CompileOptions::default()).unwrap();
        assert_eq!(web.identity.admin_port, None);
    }

    /// The zone-egress seed: its ZoneEgress `zoneegress-1` and its Mesh (`routing.zoneEgress`,
    /// with the `[...]` of `mtls` filled by a builtin backend) send a sidecar's cross-zone and
    /// external traffic to 192.168.0.1:10002, where the egress listens.
    #[test]
    fn seed_zone_egress_example() {
        let mut s = two_zones(false);
        s.resources
            .retain(|r| !matches!(r.spec, Spec::Mesh(_) | Spec::ZoneEgress(_)));
        let seed = "type: ZoneEgress\nname: zoneegress-1\nnetworking:\n  address: 192.168.0.1\n  port: 10002\n---\ntype: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\nrouting:\n  zoneEgress: true\n";
        s.add_text(seed, Path::new("seed.yaml"));
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        let options = CompileOptions {
            zone: Some("zone-a".into()),
            ..CompileOptions::default()
        };
        let web = compile_any(&s, find(&s, "web"), "t", &options).unwrap();
        assert_eq!(
            addresses(&web.clusters["backend{version=v1}"]),
            ["192.168.0.1:10002"]
        );
        assert_eq!(addresses(&web.clusters["httpbin"]), ["192.168.0.1:10002"]);
        let egress = compile_any(&s, find(&s, "zoneegress-1"), "t", &options).unwrap();
        assert_eq!(egress.listeners[0].name, "inbound:192.168.0.1:10002");
        assert_eq!(sni_routes(&egress.listeners[0]).len(), 2);
    }
}

//! Zone ingress and zone egress configs: one TCP listener that routes by the SNI of the
//! client's TLS ClientHello.
//!
//! - Ingress (ZoneIngress, port 10001): for every mesh, each service of its zone's ready
//!   Dataplanes (Kuma's tags-form SNI, the other tags narrowing the endpoints) and each stored
//!   MeshService port (hashed form) goes to those local endpoints. TLS passes through: the
//!   destination sidecar terminates it.
//! - Egress (ZoneEgress, port 10002), for every mesh with mTLS: services running only in other
//!   zones pass through to those zones' ingresses; ExternalServices terminate mesh mTLS with
//!   the external service's identity, require a client certificate of that mesh, and connect
//!   to the external address (plain, or TLS per `networking.tls`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use crate::mtls::tags_sni;
use bearing_model::{Problem, Resource, Spec, Store, Tags, ZoneProxyNetworking, SERVICE_TAG};
use bearing_proxy_config::{
    Cluster, Direction, DownstreamTls, Endpoint, Listener, Protocol, ProxyConfig, ProxyIdentity,
    SniRoute, SniTarget,
};

use crate::compile::{
    cluster, endpoint_ip, external_endpoint, external_services, is_ready, port16, problem,
    version_of,
};
use crate::mtls::{mesh_of, mesh_tls, meshes};
use crate::virtual_ips::TargetPort;
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
            match mesh_tls(store, mesh_name, mesh, identities) {
                Ok(Some(tls)) => {
                    egress_routes(store, &view, mesh_name, &mut routes, &mut clusters);
                    for (service, (r, es)) in externals {
                        let (endpoints, tls) = external_endpoint(r, es, store, mesh_name);
                        let name = tags_sni(service, mesh_name, &BTreeMap::new());
                        let mut c = cluster(name.clone(), Protocol::Tcp, endpoints);
                        c.tls = tls;
                        clusters.insert(name.clone(), c);
                        routes.push(SniRoute {
                            target: service_target(mesh_name, service),
                            cluster: name,
                            terminate: Some(DownstreamTls {
                                mesh: mesh_name.to_string(),
                            }),
                        });
                    }
                    mtls.insert(mesh_name.to_string(), tls);
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
        name: format!("inbound:{address}"),
        address,
        direction: Direction::Inbound,
        protocol: Protocol::Tcp,
        cluster: String::new(),
        service: me.meta.name.clone(),
        bind: true,
        tls: None,
        sni_routes: routes,
    };
    let mut config = ProxyConfig {
        version: String::new(),
        source: source.to_string(),
        identity: ProxyIdentity {
            name: me.meta.name.clone(),
            mesh: String::new(),
            proxy_type: if egress { "egress" } else { "ingress" }.into(),
        },
        listeners: vec![listener],
        clusters,
        transparent_proxy: None,
        dns: Vec::new(),
        mtls,
    };
    config.version = version_of(&config);
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

fn service_target(mesh: &str, service: &str) -> SniTarget {
    SniTarget::Service {
        mesh: mesh.to_string(),
        service: service.to_string(),
    }
}

/// Ingress: each local service of every mesh, with its endpoints' tags so that an SNI's tags
/// select among them, and each stored MeshService port.
fn ingress_routes(
    store: &Store,
    view: &ZoneView,
    routes: &mut Vec<SniRoute>,
    clusters: &mut BTreeMap<String, Cluster>,
) {
    let mut services: BTreeMap<(&str, &str), Vec<Endpoint>> = BTreeMap::new();
    let local_inbounds = store.resources.iter().flat_map(|r| match &r.spec {
        Spec::Dataplane(dp) if view.is_local(dataplane_zone(dp)) => dp
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
        let name = tags_sni(service, mesh, &BTreeMap::new());
        clusters.insert(
            name.clone(),
            cluster(name.clone(), Protocol::Tcp, endpoints),
        );
        routes.push(SniRoute {
            target: service_target(mesh, service),
            cluster: name,
            terminate: None,
        });
    }
    for r in &store.resources {
        let Spec::MeshService(ms) = &r.spec else {
            continue;
        };
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
            routes.push(SniRoute {
                target: SniTarget::MeshService {
                    mesh: mesh_of(r).to_string(),
                    name: r.meta.name.clone(),
                    port: port16(p.port),
                },
                cluster: name,
                terminate: None,
            });
        }
    }
}

/// An inbound as an ingress endpoint, with its tags for SNI subsets.
fn endpoint(r: &Resource, inbound: &bearing_model::Inbound, ip: IpAddr) -> Endpoint {
    Endpoint {
        address: SocketAddr::new(ip, port16(inbound.port)),
        origin: r.key(),
        tags: inbound.tags.clone(),
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
        let name = tags_sni(service, mesh, &BTreeMap::new());
        clusters.insert(
            name.clone(),
            cluster(name.clone(), Protocol::Tcp, endpoints),
        );
        routes.push(SniRoute {
            target: service_target(mesh, service),
            cluster: name,
            terminate: None,
        });
    }
}

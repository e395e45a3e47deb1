//! Mesh hostnames and their virtual IPs, as kuma-cp's VIP allocator builds them for a mesh:
//! `<service>.<domain>` for every service, the hosts of ExternalServices, and the hostnames
//! VirtualOutbounds render from the tags of the inbounds they select.
//!
//! **Conflicts.** Entries are added in this order and the first (hostname, port) wins; a later
//! entry for the same pair with different target tags is dropped and logged:
//! 1. the default `<service>.<domain>` entries (port 80) of every inbound and every remote
//!    zone's available service, then
//! 2. VirtualOutbound entries, highest priority first. Priority follows Kuma's selector rank:
//!    the best matching selector's count of exact tag values, then of wildcards; ties go to the
//!    VirtualOutbound whose name sorts first (kuma-cp uses the newest, but a directory store
//!    has no creation times), then to Dataplanes by name and inbounds by position;
//! 3. ExternalService hosts (ExternalServices by name), unless `disableHostDNSEntry`.
//!
//! **VIP allocation.** A hostname's VIP depends only on the hostname and the CIDR: the FNV-1a
//! 64-bit hash of the lowercase hostname picks an address in the CIDR (240.0.0.0/4 by
//! default). So every proxy reading the same store gives a hostname the same VIP, and adding
//! or removing other hostnames does not move it. Only when two hostnames hash to the same
//! address (for n hostnames in a /4, about n²/2²⁹ expected pairs: 0.2 for 10,000) does one
//! of them move: the one with the smaller hash keeps the address, the other probes the next
//! addresses of its own sequence. A `<service>.<domain>` name and its `_`→`.` variant share a
//! VIP, as in Kuma.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;

use bearing_model::gotemplate::Template;
use bearing_model::validate::is_dns_name;
use bearing_model::{
    ReachableBackendRef, ReachableBackends, Resource, Spec, Store, Tags, VirtualOutbound,
    SERVICE_TAG,
};

/// Mesh-wide settings of the hostname table, the same for every proxy of a mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipOptions {
    /// Network VIPs are taken from.
    pub cidr: (Ipv4Addr, u8),
    /// The mesh DNS domain (`mesh`).
    pub domain: String,
    /// Port of the default `<service>.<domain>` entries (Kuma: 80).
    pub default_port: u16,
}

impl Default for VipOptions {
    fn default() -> Self {
        VipOptions {
            cidr: (Ipv4Addr::new(240, 0, 0, 0), 4),
            domain: "mesh".into(),
            default_port: 80,
        }
    }
}

impl VipOptions {
    /// Parses a CIDR such as `240.0.0.0/4`; the prefix must leave at least 256 addresses.
    pub fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), String> {
        let (ip, len) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not an IPv4 CIDR like 240.0.0.0/4"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} in {text:?} is not an IPv4 address"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 24)
            .ok_or_else(|| format!("prefix length in {text:?} must be 0-24"))?;
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        Ok((Ipv4Addr::from(u32::from(ip) & mask), len))
    }
}

/// One hostname (with its aliases) and what its ports lead to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualHost {
    /// DNS names answering with this VIP (the first is the hostname itself).
    pub names: Vec<String>,
    /// The virtual IP.
    pub vip: Ipv4Addr,
    /// Per port, the tags selecting the endpoints and where the entry came from.
    pub ports: BTreeMap<u16, VirtualTarget>,
}

/// Where traffic to a hostname's port goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualTarget {
    /// Endpoints are the inbounds carrying all these tags.
    pub tags: Tags,
    /// `service`, `virtual-outbound:<name>`, `external-service:<name>` or
    /// `meshservice:<name>`.
    pub origin: String,
    /// For a MeshService port: which inbound of the selected Dataplanes serves it, and the
    /// port's `appProtocol`.
    pub mesh_service_port: Option<(TargetPort, Option<String>)>,
    /// For a MeshService synced from another zone (`kuma.io/origin: global`): that zone
    /// (`kuma.io/zone`), the only one its traffic goes to; a local MeshService's traffic
    /// stays in the proxy's zone.
    pub mesh_service_zone: Option<String>,
    /// For a MeshService port: the SNI Kuma's sidecars send to it, the hashed resource form
    /// `a<hash>.<SNI name>.<port>.<mesh>.ms` (see [`mesh_service_sni_name`]).
    pub mesh_service_sni: Option<String>,
}

/// The name Kuma hashes into a MeshService's SNI (kuma-cp's `SNIName` on a Universal control
/// plane): for one synced from another zone its display name, plus `.<namespace>` when it
/// came from Kubernetes; for a local one its name, plus `.<namespace>` when it carries a
/// namespace label.
pub(crate) fn mesh_service_sni_name(name: &str, labels: &Tags) -> String {
    let label = |key: &str| {
        labels
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let namespace = label("k8s.kuma.io/namespace");
    let base = match label("kuma.io/origin") {
        Some("global") => label("kuma.io/display-name").unwrap_or(name),
        _ => name,
    };
    match namespace {
        Some(ns) => format!("{base}.{ns}"),
        None => base.to_string(),
    }
}

/// A MeshService `targetPort`: an inbound port number or an inbound name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    /// The inbound with this port.
    Number(u16),
    /// The inbound with this name.
    Name(String),
}

impl TargetPort {
    /// A MeshService port's `targetPort` (a number or an inbound name), `port` when absent.
    pub fn of(p: &bearing_model::MeshServicePort) -> TargetPort {
        let port = u16::try_from(p.port).unwrap_or(0);
        match &p.target_port {
            Some(serde_json::Value::String(name)) => TargetPort::Name(name.clone()),
            Some(v) => TargetPort::Number(
                v.as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .unwrap_or(port),
            ),
            None => TargetPort::Number(port),
        }
    }

    /// Whether `inbound` is the one this target names.
    pub fn selects(&self, inbound: &bearing_model::Inbound) -> bool {
        match self {
            TargetPort::Number(p) => inbound.port == u32::from(*p),
            TargetPort::Name(n) => inbound.name.as_deref() == Some(n.as_str()),
        }
    }
}

/// Builds the hostname table of `mesh` from `store` for a proxy that may reach the
/// MeshServices `reachable` lists (all when absent, unless the Mesh's `meshServices.mode` is
/// `ReachableBackends`).
pub fn virtual_hosts(
    store: &Store,
    mesh: &str,
    opts: &VipOptions,
    reachable: Option<&ReachableBackends>,
) -> Vec<VirtualHost> {
    let mut table = Table::default();
    let mode = crate::mtls::meshes(store)
        .get(mesh)
        .map_or("Disabled", |m| m.mesh_services_mode());
    let in_mesh = |r: &&Resource| r.mesh.as_deref().unwrap_or("default") == mesh;
    let mut dataplanes: Vec<&Resource> = store
        .resources
        .iter()
        .filter(in_mesh)
        .filter(|r| matches!(r.spec, Spec::Dataplane(_)))
        .collect();
    dataplanes.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
    let inbound_list: Vec<(&str, &bearing_model::Inbound)> = dataplanes
        .iter()
        .flat_map(|r| match &r.spec {
            Spec::Dataplane(dp) => dp
                .networking
                .inbound
                .iter()
                .filter(|i| i.state.as_deref() != Some("Ignored"))
                .map(|i| (r.meta.name.as_str(), i))
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        })
        .collect();
    let inbound_tags: Vec<(&str, &Tags)> =
        inbound_list.iter().map(|(d, i)| (*d, &i.tags)).collect();

    // 1. Defaults: every local service and every remote zone's available service; none in
    // `Exclusive` mode, where destinations are MeshServices only.
    let mut services: Vec<&str> = inbound_tags
        .iter()
        .filter_map(|(_, t)| t.get(SERVICE_TAG).map(String::as_str))
        .collect();
    services.extend(remote_services(store, mesh));
    if mode == "Exclusive" {
        services.clear();
    }
    for service in services {
        table.add_service(service, &opts.domain, opts.default_port, None);
    }

    // 2. VirtualOutbounds, by priority.
    let mut vos: Vec<(&str, &VirtualOutbound, Template, Template)> = Vec::new();
    for r in store.resources.iter().filter(in_mesh) {
        let Spec::VirtualOutbound(vo) = &r.spec else {
            continue;
        };
        let Some(conf) = &vo.effective().conf else {
            continue;
        };
        // Validation rejected a store whose templates do not parse.
        if let (Ok(h), Ok(p)) = (Template::parse(&conf.host), Template::parse(&conf.port)) {
            vos.push((r.meta.name.as_str(), vo.effective(), h, p));
        }
    }
    let mut candidates = Vec::new();
    for (order, (dp, tags)) in inbound_tags.iter().enumerate() {
        for (name, vo, host, port) in &vos {
            let Some(rank) = vo
                .selectors
                .iter()
                .filter(|s| s.matches(tags))
                .map(|s| s.rank())
                .max()
            else {
                continue;
            };
            candidates.push((rank, *name, order, *dp, *tags, *vo, host, port));
        }
    }
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)).then(a.2.cmp(&b.2)));
    for (_, name, _, dp, tags, vo, host, port) in candidates {
        let Some(conf) = &vo.conf else { continue };
        let values: BTreeMap<&str, &str> = conf
            .parameters
            .iter()
            .filter_map(|p| tags.get(p.tag()).map(|v| (p.name.as_str(), v.as_str())))
            .collect();
        let hostname = host.render(&values).to_ascii_lowercase();
        let port_text = port.render(&values);
        let port = port_text.parse::<u16>().ok().filter(|p| *p != 0);
        let (true, Some(port)) = (is_dns_name(&hostname), port) else {
            tracing::info!(virtual_outbound = name, dataplane = dp, host = %hostname, port = %port_text,
                "inbound skipped: the templates do not render a DNS name and a port 1-65535");
            continue;
        };
        let selected: Tags = conf
            .parameters
            .iter()
            .filter_map(|p| tags.get(p.tag()).map(|v| (p.tag().to_string(), v.clone())))
            .collect();
        let origin = format!("virtual-outbound:{name}");
        table.add(&hostname, Vec::new(), port, selected, origin);
    }

    // 3. ExternalService hosts.
    let mut externals: Vec<&Resource> = store
        .resources
        .iter()
        .filter(in_mesh)
        .filter(|r| matches!(r.spec, Spec::ExternalService(_)))
        .collect();
    externals.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
    for r in externals {
        let Spec::ExternalService(es) = &r.spec else {
            continue;
        };
        let Some(service) = es.tags.get(SERVICE_TAG) else {
            continue;
        };
        let Some((host, port)) = es.networking.address.rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        table.add_service(service, &opts.domain, opts.default_port, Some(port));
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if es.networking.disable_host_dns_entry || host.parse::<std::net::IpAddr>().is_ok() {
            continue;
        }
        let tags: Tags = [(SERVICE_TAG.to_string(), service.clone())].into();
        let origin = format!("external-service:{}", r.meta.name);
        let host = host.to_ascii_lowercase();
        table.add(&host, Vec::new(), port, tags.clone(), origin.clone());
        // Kuma also serves an ExternalService host on the default port (backward compatibility).
        if !table.has_port(&host, opts.default_port) {
            table.add(&host, Vec::new(), opts.default_port, tags, origin);
        }
    }
    // 4. MeshServices: from the store, and generated from kuma.io/service when the mesh asks.
    let generators = hostname_generators(store);
    for ms in mesh_services(store, mesh, &inbound_list) {
        let names = hostnames(&generators, &ms);
        let reachable_ports: Vec<&(u16, TargetPort, Option<String>)> = ms
            .ports
            .iter()
            .filter(|(port, _, _)| match reachable {
                Some(r) => r.refs.iter().any(|r| reaches(r, &ms, *port)),
                None => mode != "ReachableBackends",
            })
            .collect();
        if names.is_empty() || reachable_ports.is_empty() {
            continue;
        }
        let ports = reachable_ports
            .into_iter()
            .map(|(port, target, protocol)| {
                let synced = ms.labels.get("kuma.io/origin").map(String::as_str) == Some("global");
                let target = VirtualTarget {
                    tags: ms.selector.clone(),
                    origin: format!("meshservice:{}", ms.name),
                    mesh_service_port: Some((target.clone(), protocol.clone())),
                    mesh_service_zone: ms.labels.get("kuma.io/zone").filter(|_| synced).cloned(),
                    mesh_service_sni: Some(bearing_tls::resource_sni(
                        &mesh_service_sni_name(&ms.name, &ms.labels),
                        mesh,
                        bearing_tls::ResourceKind::MeshService,
                        *port,
                        &BTreeMap::new(),
                    )),
                };
                (*port, target)
            })
            .collect();
        table
            .hosts
            .insert(format!("{MESH_SERVICE_KEY}{}", ms.name), (names, ports));
    }
    // 5. Cross-mesh gateway listeners of every mesh: their hostname, or
    // `internal.<gateway>.<mesh>.<domain>`.
    for (name, _) in crate::mtls::meshes(store) {
        for (gateway, service, hostname, port, _) in
            crate::gateway::cross_mesh_listeners(store, name)
        {
            let host = hostname.map_or_else(
                || format!("internal.{gateway}.{name}.{}", opts.domain),
                str::to_ascii_lowercase,
            );
            let tags: Tags = [
                (SERVICE_TAG.to_string(), service),
                (bearing_model::MESH_TAG.to_string(), name.to_string()),
            ]
            .into();
            table.add(
                &host,
                Vec::new(),
                port,
                tags,
                format!("cross-mesh-gateway:{name}/{gateway}"),
            );
        }
    }
    table.allocate(opts.cidr)
}

/// Whether the `reachableBackends` entry `r` lets a proxy reach `port` of `ms`: a MeshService
/// entry naming it (by name or display name) or whose labels it carries, on that port or all.
fn reaches(r: &ReachableBackendRef, ms: &MeshServiceView, port: u16) -> bool {
    let named = r
        .name
        .as_ref()
        .is_none_or(|n| *n == ms.name || ms.labels.get("kuma.io/display-name") == Some(n));
    let labelled = r
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| ms.labels.get(k) == Some(v));
    let port_ok = r.port.is_none_or(|p| p == u32::from(port));
    r.kind == "MeshService"
        && (r.name.is_some() || r.labels.is_some())
        && named
        && labelled
        && port_ok
}

/// A Dataplane's inbound ports for one service, with their `kuma.io/protocol`.
type InboundPorts = BTreeMap<u16, Option<String>>;

/// Table key prefix of MeshServices: they get one VIP for all their hostnames.
const MESH_SERVICE_KEY: &str = "meshservice/";

/// A MeshService as Bearing uses it: name, labels, selector and ports.
struct MeshServiceView {
    name: String,
    labels: Tags,
    selector: Tags,
    ports: Vec<(u16, TargetPort, Option<String>)>,
}

/// The mesh's MeshServices: those in the store, plus (when the Mesh's `meshServices.mode` is
/// not Disabled) one per `kuma.io/service` not already defined, as kuma-cp generates them in
/// Universal zones. A service whose Dataplanes disagree on the inbound ports gets none, with a
/// warning naming both, since no single MeshService can describe it.
fn mesh_services(
    store: &Store,
    mesh: &str,
    inbounds: &[(&str, &bearing_model::Inbound)],
) -> Vec<MeshServiceView> {
    let mut out = Vec::new();
    for r in store.resources.iter() {
        let Spec::MeshService(ms) = &r.spec else {
            continue;
        };
        if r.mesh.as_deref().unwrap_or("default") != mesh {
            continue;
        }
        let ports = ms
            .spec
            .ports
            .iter()
            .map(|p| {
                let port = u16::try_from(p.port).unwrap_or(0);
                (port, TargetPort::of(p), p.app_protocol.clone())
            })
            .collect();
        let mut labels = r.meta.labels.clone();
        labels
            .entry("kuma.io/display-name".into())
            .or_insert_with(|| r.meta.name.clone());
        // kuma-cp labels a MeshService applied in a Universal zone as local to it; one synced
        // from another zone carries `kuma.io/origin: global` and that zone's `kuma.io/zone`.
        for (label, value) in [("kuma.io/origin", "zone"), ("kuma.io/env", "universal")] {
            labels
                .entry(label.into())
                .or_insert_with(|| value.to_string());
        }
        out.push(MeshServiceView {
            name: r.meta.name.clone(),
            labels,
            selector: ms.spec.selector.dataplane_tags.clone().unwrap_or_default(),
            ports,
        });
    }
    let generate = store.resources.iter().any(
        |r| matches!(&r.spec, Spec::Mesh(m) if r.meta.name == mesh && m.generates_mesh_services()),
    );
    if !generate {
        return out;
    }
    // Per service: the first Dataplane's inbound ports, checked against every other's.
    let mut by_service: BTreeMap<&str, (&str, InboundPorts)> = BTreeMap::new();
    let mut per_dataplane: BTreeMap<(&str, &str), InboundPorts> = BTreeMap::new();
    for (dp, inbound) in inbounds {
        let Some(service) = inbound.tags.get(SERVICE_TAG) else {
            continue;
        };
        let Ok(port) = u16::try_from(inbound.port) else {
            continue;
        };
        let protocol = inbound.tags.get(bearing_model::PROTOCOL_TAG).cloned();
        per_dataplane
            .entry((service.as_str(), dp))
            .or_default()
            .insert(port, protocol);
    }
    let mut conflicted = HashSet::new();
    for ((service, dp), ports) in &per_dataplane {
        match by_service.get(service) {
            None => {
                by_service.insert(service, (dp, ports.clone()));
            }
            Some((first, first_ports)) => {
                let a: Vec<u16> = first_ports.keys().copied().collect();
                let b: Vec<u16> = ports.keys().copied().collect();
                if a != b && conflicted.insert(*service) {
                    tracing::warn!(service, dataplane = %first, ports = ?a, other = %dp, other_ports = ?b,
                        "no MeshService generated: Dataplanes of this service expose different inbound ports");
                }
            }
        }
    }
    for (service, (_, ports)) in by_service {
        if conflicted.contains(service) || out.iter().any(|m| m.name == service) {
            continue;
        }
        out.push(MeshServiceView {
            name: service.to_string(),
            labels: [
                ("kuma.io/display-name".to_string(), service.to_string()),
                ("kuma.io/origin".to_string(), "zone".to_string()),
                ("kuma.io/env".to_string(), "universal".to_string()),
                (bearing_model::MESH_TAG.to_string(), mesh.to_string()),
            ]
            .into(),
            selector: [(SERVICE_TAG.to_string(), service.to_string())].into(),
            ports: ports
                .into_iter()
                .map(|(port, protocol)| (port, TargetPort::Number(port), protocol))
                .collect(),
        });
    }
    out
}

/// The default HostnameGenerators kuma-cp creates at start (`EnsureHostnameGeneratorExists`)
/// that name MeshServices of Universal and synced zones: name, `meshService.matchLabels`,
/// template. A store generator of the same name replaces one, as kuma-cp creates a default
/// only where none of its name exists; other store generators add to them.
const DEFAULT_GENERATORS: [DefaultGenerator; 3] = [
    (
        "local-universal-mesh-service",
        &[("kuma.io/origin", "zone")],
        "{{ .DisplayName }}.svc.mesh.local",
    ),
    (
        "synced-universal-mesh-service",
        &[("kuma.io/origin", "global"), ("kuma.io/env", "universal")],
        "{{ .DisplayName }}.svc.{{ .Zone }}.mesh.local",
    ),
    (
        "synced-kube-mesh-service",
        &[
            ("kuma.io/origin", "global"),
            ("k8s.kuma.io/is-headless-service", "false"),
            ("kuma.io/env", "kubernetes"),
        ],
        "{{ .DisplayName }}.{{ .Namespace }}.svc.{{ .Zone }}.mesh.local",
    ),
];

/// One of [`DEFAULT_GENERATORS`]: name, `meshService.matchLabels`, template.
type DefaultGenerator = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

/// A HostnameGenerator that names MeshServices: name, `meshService.matchLabels`, template.
type HostnameGeneratorView<'s> = (&'s str, Tags, Template);

/// Kuma's default HostnameGenerators and the store's, templates parsed once (templates that
/// do not parse were rejected by validation). A generator without a `meshService` selector
/// names no MeshService.
fn hostname_generators(store: &Store) -> Vec<HostnameGeneratorView<'_>> {
    let stored: Vec<(&Resource, &bearing_model::HostnameGenerator)> = store
        .resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::HostnameGenerator(g) => Some((r, g)),
            _ => None,
        })
        .collect();
    let defaults = DEFAULT_GENERATORS
        .iter()
        .filter(|(name, _, _)| stored.iter().all(|(r, _)| r.meta.name != *name))
        .filter_map(|(name, labels, template)| {
            let labels = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Some((*name, labels, Template::parse(template).ok()?))
        });
    let custom = stored.iter().filter_map(|(r, g)| {
        let selector = g.spec.selector.as_ref()?.mesh_service.as_ref()?;
        let template = Template::parse(&g.spec.template).ok()?;
        Some((
            r.meta.name.as_str(),
            selector.match_labels.clone(),
            template,
        ))
    });
    defaults.chain(custom).collect()
}

/// The hostnames the HostnameGenerators give `ms`.
fn hostnames(generators: &[HostnameGeneratorView], ms: &MeshServiceView) -> Vec<String> {
    let display = ms.labels.get("kuma.io/display-name").unwrap_or(&ms.name);
    let values: BTreeMap<&str, &str> = [
        ("DisplayName", display.as_str()),
        ("Name", ms.name.as_str()),
        (
            "Mesh",
            ms.labels
                .get(bearing_model::MESH_TAG)
                .map_or("default", String::as_str),
        ),
        (
            "Zone",
            ms.labels.get("kuma.io/zone").map_or("", String::as_str),
        ),
        (
            "Namespace",
            ms.labels
                .get("k8s.kuma.io/namespace")
                .map_or("", String::as_str),
        ),
    ]
    .into();
    let mut names = Vec::new();
    for (generator, labels, template) in generators {
        if !labels.iter().all(|(k, v)| ms.labels.get(k) == Some(v)) {
            continue;
        }
        let host = template.render(&values).to_ascii_lowercase();
        if is_dns_name(&host) {
            names.push(host);
        } else {
            tracing::info!(generator, meshservice = %ms.name, %host, "generated hostname is not a DNS name; skipped");
        }
    }
    names
}

/// Services remote zones offer through their ZoneIngress (`availableServices`).
fn remote_services<'s>(store: &'s Store, mesh: &'s str) -> impl Iterator<Item = &'s str> {
    store.resources.iter().flat_map(move |r| match &r.spec {
        Spec::ZoneIngress(zi) => zi
            .available_services
            .iter()
            .filter(|s| s.mesh == mesh || (s.mesh.is_empty() && mesh == "default"))
            .filter_map(|s| s.tags.get(SERVICE_TAG).map(String::as_str))
            .collect::<Vec<_>>(),
        _ => Vec::new(),
    })
}

/// Hostnames being collected, before VIPs are assigned.
#[derive(Default)]
struct Table {
    hosts: BTreeMap<String, (Vec<String>, BTreeMap<u16, VirtualTarget>)>,
}

impl Table {
    fn add_service(&mut self, service: &str, domain: &str, default_port: u16, port: Option<u16>) {
        let name = format!("{service}.{domain}").to_ascii_lowercase();
        let dotted = format!("{}.{domain}", service.replace('_', ".")).to_ascii_lowercase();
        let aliases = if dotted != name {
            vec![dotted]
        } else {
            Vec::new()
        };
        let tags: Tags = [(SERVICE_TAG.to_string(), service.to_string())].into();
        for p in port.into_iter().chain([default_port]) {
            self.add(&name, aliases.clone(), p, tags.clone(), "service".into());
        }
    }

    fn has_port(&self, host: &str, port: u16) -> bool {
        self.hosts
            .get(host)
            .is_some_and(|(_, p)| p.contains_key(&port))
    }

    fn add(&mut self, host: &str, aliases: Vec<String>, port: u16, tags: Tags, origin: String) {
        let (names, ports) = self.hosts.entry(host.to_string()).or_default();
        for a in aliases {
            if !names.contains(&a) {
                names.push(a);
            }
        }
        match ports.get(&port) {
            None => {
                ports.insert(
                    port,
                    VirtualTarget {
                        tags,
                        origin,
                        mesh_service_port: None,
                        mesh_service_zone: None,
                        mesh_service_sni: None,
                    },
                );
            }
            Some(existing) if existing.tags == tags => {}
            Some(existing) => tracing::warn!(
                host, port, kept = %existing.origin, dropped = %origin,
                "duplicate hostname and port: the higher-priority entry is kept"
            ),
        }
    }

    fn allocate(self, (base, prefix): (Ipv4Addr, u8)) -> Vec<VirtualHost> {
        let size = 1u64 << (32 - u32::from(prefix));
        let mut keys: Vec<(u64, String)> =
            self.hosts.keys().map(|k| (fnv1a(k), k.clone())).collect();
        keys.sort();
        let mut taken = HashSet::new();
        let mut vips = HashMap::new();
        for (hash, key) in keys {
            // Probe sequence: hash, hash + step, … with an odd step, so every address is reached.
            let step = (hash >> 32) | 1;
            let mut offset = hash % size;
            loop {
                let ip = Ipv4Addr::from(u32::from(base).wrapping_add(offset as u32));
                if ip != Ipv4Addr::BROADCAST && taken.insert(ip) {
                    vips.insert(key, ip);
                    break;
                }
                if taken.len() as u64 >= size {
                    tracing::error!(host = %key, "the VIP range is full; hostname left without a VIP");
                    break;
                }
                offset = (offset + step) % size;
            }
        }
        self.hosts
            .into_iter()
            .filter_map(|(host, (aliases, ports))| {
                let vip = *vips.get(&host)?;
                // A MeshService's key is not a hostname; its generated hostnames are.
                let mut names = Vec::new();
                if !host.starts_with(MESH_SERVICE_KEY) {
                    names.push(host);
                }
                names.extend(aliases);
                Some(VirtualHost { names, vip, ports })
            })
            .collect()
    }
}

/// FNV-1a, 64 bits: stable across versions and platforms, unlike std's hasher.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Loads `text` (plus a Mesh) and returns `(hostname, port, tags)` for every entry.
    fn entries(text: &str) -> Vec<(String, u16, Tags)> {
        let mut s = Store::default();
        s.add_text(
            &format!("type: Mesh\nname: default\n---\n{text}"),
            Path::new("t.yaml"),
        );
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        let mut out = Vec::new();
        for h in virtual_hosts(&s, "default", &VipOptions::default(), None) {
            for (port, t) in h.ports {
                out.push((h.names[0].clone(), port, t.tags));
            }
        }
        out
    }

    fn problems(text: &str) -> Vec<String> {
        let mut s = Store::default();
        s.add_text(text, Path::new("vo.yaml"));
        s.problems.iter().map(|p| p.to_string()).collect()
    }

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The seed's backend-1 (its `inbound` block nested under `networking`, and the `port`
    /// tag quoted: Kuma tags are strings, the seed's layout and bare number would not load in
    /// Kuma either).
    const BACKEND_1: &str = r#"type: Dataplane
mesh: default
name: backend-1
networking:
  address: 192.168.0.2
  inbound:
  - port: 9000
    servicePort: 6379
    tags:
      kuma.io/service: backend
      version: v1
      port: "1800"
      kuma.io/version: v1
      kuma.io/instance: "1"
"#;

    #[test]
    fn seed_examples_render_as_documented() {
        // "produce the hostname: v1.backend.mesh with port: 1800".
        let test = r#"type: VirtualOutbound
mesh: default
name: test
selectors:
  - match:
      kuma.io/service: "*"
conf:
  host: "{{.v}}.{{.service}}.mesh"
  port: "{{.port}}"
  parameters:
    - name: service
      tagKey: "kuma.io/service"
    - name: port
      tagKey: port
    - name: v
      tagKey: version
"#;
        let e = entries(&format!("{BACKEND_1}---\n{test}"));
        assert!(e.contains(&(
            "v1.backend.mesh".into(),
            1800,
            tags(&[
                ("kuma.io/service", "backend"),
                ("port", "1800"),
                ("version", "v1")
            ])
        )));
        // The default entry is always there.
        assert!(e.contains(&(
            "backend.mesh".into(),
            80,
            tags(&[("kuma.io/service", "backend")])
        )));

        // "Same as the default DNS": the same entry, merged.
        let same = "type: VirtualOutbound\nmesh: default\nname: default\nselectors:\n  - match:\n      kuma.io/service: \"*\"\nconf:\n  host: \"{{.service}}.mesh\"\n  port: \"80\"\n  parameters:\n    - name: service\n      tagKey: \"kuma.io/service\"\n";
        let e = entries(&format!("{BACKEND_1}---\n{same}"));
        assert_eq!(
            e,
            [(
                "backend.mesh".into(),
                80,
                tags(&[("kuma.io/service", "backend")])
            )]
        );

        // "One hostname per version" (written under `spec:` in the seed).
        let versioned = "type: VirtualOutbound\nmesh: default\nname: versioned\nspec:\n    selectors:\n      - match:\n          kuma.io/service: \"*\"\n    conf:\n      host: \"{{.service}}.{{.version}}.mesh\"\n      port: \"80\"\n      parameters:\n        - name: service\n          tagKey: \"kuma.io/service\"\n        - name: version\n          tagKey: \"kuma.io/version\"\n";
        let e = entries(&format!("{BACKEND_1}---\n{versioned}"));
        assert!(e.contains(&(
            "backend.v1.mesh".into(),
            80,
            tags(&[("kuma.io/service", "backend"), ("kuma.io/version", "v1")])
        )));

        // "One hostname per instance".
        let instance = "type: VirtualOutbound\nmesh: default\nname: default\nselectors:\n  - match:\n      kuma.io/service: \"*\"\n      kuma.io/instance: \"*\"\nconf:\n  host: \"inst-{{.instance}}.{{.service}}.mesh\"\n  port: \"8080\"\n  parameters:\n    - name: service\n      tagKey: \"kuma.io/service\"\n    - name: instance\n      tagKey: \"kuma.io/instance\"\n";
        let e = entries(&format!("{BACKEND_1}---\n{instance}"));
        assert!(e.contains(&(
            "inst-1.backend.mesh".into(),
            8080,
            tags(&[("kuma.io/instance", "1"), ("kuma.io/service", "backend")])
        )));

        // "Custom tag to define the hostname and port": its `service` parameter reads tag
        // `service`, so no parameter has tagKey kuma.io/service; Kuma rejects it, and so do we.
        let host_port = "type: VirtualOutbound\nmesh: default\nname: host-port\nselectors:\n  - match:\n      kuma.io/service: \"*\"\nconf:\n  host: \"{{.hostname}}\"\n  port: \"{{.port}}\"\n  parameters:\n    - name: hostname\n      tagKey: \"my.mesh/hostname\"\n    - name: port\n      tagKey: \"my.mesh/port\"\n    - name: service\n";
        assert_eq!(
            problems(host_port),
            ["vo.yaml:10: VirtualOutbound/host-port: conf.parameters: must contain a parameter with kuma.io/service as a tagKey"]
        );
    }

    #[test]
    fn validation_is_precise() {
        let bad = "type: VirtualOutbound\nmesh: default\nname: bad\nselectors: []\nconf:\n  host: \"{{.a}}.{{.b}} x\"\n  port: \"{{.a}}00000\"\n  parameters:\n    - name: a\n      tagKey: kuma.io/service\n    - name: a-b\n      tagKey: x\n    - name: a\n";
        let p = problems(bad);
        let expected = [
            "selectors: must have at least one element",
            "conf.parameters[1].name: must consist of alphanumeric characters",
            "conf.parameters[2].name: name is already used",
            "conf.host: template renders \"dummy.<no value> x\", which is not a valid DNS name",
            "conf.port: template renders \"100000\"",
        ];
        for e in expected {
            assert!(p.iter().any(|x| x.contains(e)), "missing {e:?} in {p:#?}");
        }
    }

    #[test]
    fn duplicates_keep_the_higher_priority_and_vips_are_stable() {
        let two = |order: &str| format!("{BACKEND_1}---\n{order}");
        // Two VirtualOutbounds render the same host and port with different tags: the one
        // whose selector has more exact values wins, whatever its name.
        let vo = |name: &str, selector: &str, param: &str| {
            format!("type: VirtualOutbound\nmesh: default\nname: {name}\nselectors:\n  - match:\n{selector}conf:\n  host: \"x.{{{{.service}}}}.mesh\"\n  port: \"80\"\n  parameters:\n    - name: service\n      tagKey: kuma.io/service\n    - name: p\n      tagKey: {param}\n---\n")
        };
        let a = vo("a-wildcard", "      kuma.io/service: \"*\"\n", "version");
        let z = vo(
            "z-exact",
            "      kuma.io/service: backend\n",
            "kuma.io/version",
        );
        let e = entries(&two(&format!("{a}{z}")));
        let x = e.iter().find(|(h, _, _)| h == "x.backend.mesh").unwrap();
        assert_eq!(
            x.2.get("kuma.io/version").map(String::as_str),
            Some("v1"),
            "{e:?}"
        );

        // VIPs depend only on the hostname.
        let vip = |text: &str, host: &str| {
            let mut s = Store::default();
            s.add_text(text, Path::new("t.yaml"));
            virtual_hosts(&s, "default", &VipOptions::default(), None)
                .into_iter()
                .find(|h| h.names[0] == host)
                .map(|h| h.vip)
                .unwrap()
        };
        let alone = vip(BACKEND_1, "backend.mesh");
        let with_more = vip(
            &format!(
                "{BACKEND_1}---\n{}",
                BACKEND_1
                    .replace("backend", "other")
                    .replace("192.168.0.2", "192.168.0.3")
            ),
            "backend.mesh",
        );
        assert_eq!(alone, with_more);
        let (base, prefix) = VipOptions::default().cidr;
        assert_eq!(
            u32::from(alone) >> (32 - prefix),
            u32::from(base) >> (32 - prefix)
        );
    }

    /// The virtual hosts of `mesh` in a store of the resources in `text`.
    fn hosts_of(text: &str, mesh: &str) -> Vec<VirtualHost> {
        let mut s = Store::default();
        s.add_text(text, Path::new("t.yaml"));
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        virtual_hosts(&s, mesh, &VipOptions::default(), None)
    }

    #[test]
    fn external_service_hosts_and_dotted_service_names() {
        let text = "type: ExternalService\nmesh: default\nname: httpbin\ntags:\n  kuma.io/service: httpbin\nnetworking:\n  address: httpbin.org:443\n---\ntype: Dataplane\nmesh: default\nname: r\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 6379\n    tags: {kuma.io/service: redis_kuma-demo_svc_6379}\n";
        let hosts = hosts_of(text, "default");
        let find = |n: &str| {
            hosts
                .iter()
                .find(|h| h.names.iter().any(|x| x == n))
                .unwrap()
        };
        let es = find("httpbin.org");
        assert_eq!(es.ports.keys().copied().collect::<Vec<_>>(), [80, 443]);
        assert_eq!(
            find("httpbin.mesh")
                .ports
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            [80, 443]
        );
        let redis = find("redis_kuma-demo_svc_6379.mesh");
        assert_eq!(
            redis.names[1], "redis.kuma-demo.svc.6379.mesh",
            "the _ → . alias"
        );
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            VipOptions::parse_cidr("241.1.2.3/8").unwrap(),
            (Ipv4Addr::new(241, 0, 0, 0), 8)
        );
        assert!(VipOptions::parse_cidr("240.0.0.0").is_err());
        assert!(VipOptions::parse_cidr("240.0.0.0/30").is_err());
    }

    /// A MeshService port's clusters send the hashed SNI Kuma's sidecars send (the corpus'
    /// `a029781856823048e.test-server.80.envoyconfig.ms` for MeshService test-server:80 of mesh
    /// envoyconfig); one synced from another zone hashes its display name (and namespace).
    #[test]
    fn mesh_service_targets_carry_kumas_hashed_sni() {
        let text = "type: Mesh\nname: envoyconfig\nmeshServices:\n  mode: Everywhere\n---\ntype: Dataplane\nmesh: envoyconfig\nname: a\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 80\n    tags:\n      kuma.io/service: test-server\n---\ntype: MeshService\nname: backend-zone-2-hash\nmesh: envoyconfig\nlabels:\n  kuma.io/display-name: backend\n  kuma.io/origin: global\n  kuma.io/zone: zone-2\nspec:\n  selector:\n    dataplaneTags:\n      kuma.io/service: backend\n  ports:\n  - port: 8080\n";
        let hosts = hosts_of(text, "envoyconfig");
        let sni = |origin: &str, port: u16| {
            hosts
                .iter()
                .filter_map(|h| h.ports.get(&port))
                .find(|t| t.origin == origin)
                .and_then(|t| t.mesh_service_sni.clone())
        };
        assert_eq!(
            sni("meshservice:test-server", 80).as_deref(),
            Some("a029781856823048e.test-server.80.envoyconfig.ms")
        );
        let synced = sni("meshservice:backend-zone-2-hash", 8080).unwrap();
        assert!(synced.ends_with(".backend.8080.envoyconfig.ms"), "{synced}");
        assert_eq!(
            bearing_tls::parse_resource_sni(&synced).unwrap().name,
            "backend"
        );

        let labels = |pairs: &[(&str, &str)]| -> Tags {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(mesh_service_sni_name("backend", &labels(&[])), "backend");
        assert_eq!(
            mesh_service_sni_name(
                "backend-x",
                &labels(&[
                    ("kuma.io/origin", "global"),
                    ("kuma.io/display-name", "backend"),
                    ("k8s.kuma.io/namespace", "demo")
                ])
            ),
            "backend.demo"
        );
        assert_eq!(
            mesh_service_sni_name("backend", &labels(&[("k8s.kuma.io/namespace", "demo")])),
            "backend.demo"
        );
    }

    #[test]
    fn mesh_services_generated_and_from_the_store() {
        let mesh = "type: Mesh\nname: default\nmeshServices:\n  mode: Everywhere\n---\n";
        let dp = |name: &str, ip: &str, port: u16| {
            format!("type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {ip}\n  inbound:\n  - name: main\n    port: {port}\n    tags:\n      kuma.io/service: test-server\n---\n")
        };
        let load = |text: &str| {
            let mut s = Store::default();
            s.add_text(text, Path::new("t.yaml"));
            assert!(s.problems.is_empty(), "{:?}", s.problems);
            virtual_hosts(&s, "default", &VipOptions::default(), None)
        };
        // The seed's example: one MeshService test-server with port 80, named by the default
        // hostname generator.
        let hosts = load(&format!("{mesh}{}", dp("a", "10.0.0.1", 80)));
        let ms = hosts
            .iter()
            .find(|h| h.names == ["test-server.svc.mesh.local"])
            .expect("generated MeshService hostname");
        let target = &ms.ports[&80];
        assert_eq!(target.origin, "meshservice:test-server");
        assert_eq!(
            target.mesh_service_port,
            Some((TargetPort::Number(80), None))
        );

        // The seed's conflicting case: another Dataplane of the service on 8080.
        let hosts = load(&format!(
            "{mesh}{}{}",
            dp("a", "10.0.0.1", 80),
            dp("b", "10.0.0.2", 8080)
        ));
        assert!(!hosts
            .iter()
            .any(|h| h.names.iter().any(|n| n.ends_with(".svc.mesh.local"))));

        // Disabled (the default): no MeshService.
        let hosts = load(&format!(
            "type: Mesh\nname: default\n---\n{}",
            dp("a", "10.0.0.1", 80)
        ));
        assert!(!hosts
            .iter()
            .any(|h| h.names.iter().any(|n| n.ends_with(".svc.mesh.local"))));

        // From the store, with a generator and a target port by inbound name.
        let text = format!("type: Mesh\nname: default\n---\n{}type: MeshService\nname: redis\nmesh: default\nlabels:\n  team: db\nspec:\n  selector:\n    dataplaneTags:\n      kuma.io/service: test-server\n  ports:\n  - name: some-port\n    port: 16739\n    targetPort: main\n    appProtocol: tcp\n---\ntype: HostnameGenerator\nname: team\nspec:\n  selector:\n    meshService:\n      matchLabels:\n        team: db\n  template: \"{{{{ .DisplayName }}}}.{{{{ .Mesh }}}}.team.local\"\n", dp("a", "10.0.0.1", 80));
        let hosts = load(&text);
        let redis = hosts
            .iter()
            .find(|h| h.names == ["redis.svc.mesh.local", "redis.default.team.local"])
            .expect("the custom generator's name beside the default one");
        assert_eq!(
            redis.ports[&16739].mesh_service_port,
            Some((TargetPort::Name("main".into()), Some("tcp".into())))
        );
    }

    /// The seed's migration modes: `reachableBackends` limits the MeshServices a proxy gets
    /// (by name or labels, optionally one port; none without it in `ReachableBackends` mode),
    /// and `Exclusive` drops the `kuma.io/service` names.
    #[test]
    fn reachable_backends_and_exclusive_mode() {
        let names = |mode: &str, reachable: Option<&str>| {
            let text = format!("type: Mesh\nname: default\nmeshServices:\n  mode: {mode}\n---\ntype: Dataplane\nmesh: default\nname: a\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 80\n    tags:\n      kuma.io/service: backend\n---\ntype: Dataplane\nmesh: default\nname: b\nnetworking:\n  address: 10.0.0.2\n  inbound:\n  - port: 81\n    tags:\n      kuma.io/service: other\n");
            let mut s = Store::default();
            s.add_text(&text, Path::new("t.yaml"));
            assert!(s.problems.is_empty(), "{:?}", s.problems);
            let reachable: Option<ReachableBackends> =
                reachable.map(|r| serde_json::from_str(r).unwrap());
            let mut names: Vec<String> =
                virtual_hosts(&s, "default", &VipOptions::default(), reachable.as_ref())
                    .into_iter()
                    .flat_map(|h| h.names)
                    .filter(|n| !n.contains('_'))
                    .collect();
            names.sort();
            names
        };
        let by_name = r#"{"refs": [{"kind": "MeshService", "name": "backend"}]}"#;
        assert_eq!(
            names("Everywhere", Some(by_name)),
            ["backend.mesh", "backend.svc.mesh.local", "other.mesh"]
        );
        let by_label = r#"{"refs": [{"kind": "MeshService", "labels": {"kuma.io/display-name": "other"}, "port": 81}]}"#;
        assert_eq!(
            names("Everywhere", Some(by_label)),
            ["backend.mesh", "other.mesh", "other.svc.mesh.local"]
        );
        let wrong_port = r#"{"refs": [{"kind": "MeshService", "name": "other", "port": 80}]}"#;
        assert_eq!(
            names("Everywhere", Some(wrong_port)),
            ["backend.mesh", "other.mesh"]
        );
        assert_eq!(
            names("ReachableBackends", None),
            ["backend.mesh", "other.mesh"]
        );
        assert_eq!(
            names("Exclusive", None),
            ["backend.svc.mesh.local", "other.svc.mesh.local"]
        );
    }

    /// kuma-cp keeps its default generators beside custom ones: local MeshServices keep
    /// `<name>.svc.mesh.local`, one synced from zone-2 gets `<name>.svc.zone-2.mesh.local`; a
    /// store generator of a default's name replaces that default; a generator without a
    /// `meshService` selector names no MeshService.
    #[test]
    fn default_hostname_generators_stay_beside_custom_ones() {
        let store = |extra: &str| {
            let text = format!("type: Mesh\nname: default\nmeshServices:\n  mode: Everywhere\n---\ntype: Dataplane\nmesh: default\nname: a\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 80\n    tags:\n      kuma.io/service: web\n---\ntype: MeshService\nname: backend-zone-2-hash\nmesh: default\nlabels:\n  kuma.io/display-name: backend\n  kuma.io/origin: global\n  kuma.io/zone: zone-2\n  kuma.io/env: universal\nspec:\n  selector:\n    dataplaneTags:\n      kuma.io/service: backend\n  ports:\n  - port: 8080\n    targetPort: 8080\n---\ntype: HostnameGenerator\nname: external-only\nspec:\n  selector:\n    meshExternalService:\n      matchLabels: {{}}\n  template: \"{{{{ .DisplayName }}}}.ext.local\"\n{extra}");
            let mut s = Store::default();
            s.add_text(&text, Path::new("t.yaml"));
            assert!(s.problems.is_empty(), "{:?}", s.problems);
            let mut names: Vec<String> = virtual_hosts(&s, "default", &VipOptions::default(), None)
                .into_iter()
                .flat_map(|h| h.names)
                .filter(|n| n.ends_with(".local"))
                .collect();
            names.sort();
            names
        };
        let custom = "---\ntype: HostnameGenerator\nname: all\nspec:\n  selector:\n    meshService:\n      matchLabels: {}\n  template: \"{{ .DisplayName }}.all.local\"\n";
        assert_eq!(
            store(custom),
            [
                "backend.all.local",
                "backend.svc.zone-2.mesh.local",
                "web.all.local",
                "web.svc.mesh.local"
            ]
        );
        let replaced = "---\ntype: HostnameGenerator\nname: local-universal-mesh-service\nspec:\n  selector:\n    meshService:\n      matchLabels: {kuma.io/origin: zone}\n  template: \"{{ .DisplayName }}.local\"\n";
        assert_eq!(
            store(replaced),
            ["backend.svc.zone-2.mesh.local", "web.local"]
        );
    }

    /// Kuma's DNS tables (`xds-generator/dns/N-envoy-config.golden.yaml`) list, for the
    /// services of the input's outbounds, exactly the names our default entries give them.
    #[test]
    fn default_names_match_kumas_dns_goldens() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/kuma-corpus/xds-generator/dns");
        let mut compared = 0;
        for i in 1..=6 {
            let input = std::fs::read_to_string(dir.join(format!("{i}-dataplane.input.yaml")))
                .unwrap_or_else(|e| panic!("kuma-corpus missing at {}: {e}", dir.display()));
            let golden =
                std::fs::read_to_string(dir.join(format!("{i}-envoy-config.golden.yaml"))).unwrap();
            let golden_names: Vec<&str> = golden
                .lines()
                .filter_map(|l| l.trim().strip_prefix("name: "))
                .filter(|n| n.ends_with(".mesh"))
                .collect();
            if golden_names.is_empty() {
                continue; // DNS is off in this case (no dns listener in the golden).
            }
            let services: Vec<&str> = input
                .lines()
                .filter_map(|l| l.trim().strip_prefix("kuma.io/service: "))
                .collect();
            let mut table = Table::default();
            for s in &services {
                table.add_service(s, "mesh", 80, None);
            }
            let mut ours: Vec<String> = table
                .allocate(VipOptions::default().cidr)
                .into_iter()
                .flat_map(|h| h.names)
                .collect();
            ours.sort();
            let mut theirs: Vec<String> = golden_names.iter().map(|n| n.to_string()).collect();
            theirs.sort();
            assert_eq!(ours, theirs, "case {i}");
            compared += 1;
        }
        assert!(compared >= 3, "only {compared} golden DNS tables compared");
    }
}

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

use bearing_model::gotemplate::{is_dns_name, Template};
use bearing_model::{Resource, Spec, Store, Tags, VirtualOutbound, SERVICE_TAG};

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
    /// `service`, `virtual-outbound:<name>` or `external-service:<name>`.
    pub origin: String,
}

/// Builds the hostname table of `mesh` from `store`.
pub fn virtual_hosts(store: &Store, mesh: &str, opts: &VipOptions) -> Vec<VirtualHost> {
    let mut table = Table::default();
    let in_mesh = |r: &&Resource| r.mesh.as_deref().unwrap_or("default") == mesh;
    let mut dataplanes: Vec<&Resource> = store
        .resources
        .iter()
        .filter(in_mesh)
        .filter(|r| matches!(r.spec, Spec::Dataplane(_)))
        .collect();
    dataplanes.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
    let inbound_tags: Vec<(&str, &Tags)> = dataplanes
        .iter()
        .flat_map(|r| match &r.spec {
            Spec::Dataplane(dp) => dp
                .networking
                .inbound
                .iter()
                .filter(|i| i.state.as_deref() != Some("Ignored"))
                .map(|i| (r.meta.name.as_str(), &i.tags))
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        })
        .collect();

    // 1. Defaults: every local service and every remote zone's available service.
    let mut services: Vec<&str> = inbound_tags
        .iter()
        .filter_map(|(_, t)| t.get(SERVICE_TAG).map(String::as_str))
        .collect();
    services.extend(remote_services(store, mesh));
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
    table.allocate(opts.cidr)
}

/// Services remote zones offer through their ZoneIngress (`availableServices`).
fn remote_services<'s>(store: &'s Store, mesh: &'s str) -> impl Iterator<Item = &'s str> {
    store.resources.iter().flat_map(move |r| match &r.spec {
        Spec::ZoneIngress(zi) => zi
            .available_services
            .iter()
            .filter(|s| s.get("mesh").and_then(|m| m.as_str()).unwrap_or("default") == mesh)
            .filter_map(|s| s.get("tags")?.get(SERVICE_TAG)?.as_str())
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
                ports.insert(port, VirtualTarget { tags, origin });
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
                let mut names = vec![host];
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

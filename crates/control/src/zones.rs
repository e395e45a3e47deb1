//! Zones as one proxy sees them: which zone it is in, the zone ingresses other zones are
//! reached through, and the zone egresses of its own zone.
//!
//! A directory store may hold several zones (a global view). A Dataplane's zone is the
//! `kuma.io/zone` tag of its inbounds (a gateway's: of its gateway tags); one without it belongs to every zone (single-zone
//! stores), and so does a ZoneEgress without `zone` (kuma-cp fills it in; the seed's example
//! has none). A proxy with no zone of its own treats every endpoint as local.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bearing_model::{
    AvailableService, Dataplane, Resource, Spec, Store, Tags, ZoneProxyNetworking, ZONE_TAG,
};
use bearing_proxy_config::Endpoint;

/// The zone proxies one proxy can send through.
pub struct ZoneView<'s> {
    /// This proxy's zone.
    pub zone: Option<String>,
    /// Ingress endpoints (advertised address and port) by zone.
    ingresses: BTreeMap<&'s str, Vec<Endpoint>>,
    /// Egress endpoints of this proxy's zone.
    egresses: Vec<Endpoint>,
    /// Services remote ingresses announce (`availableServices`), with their zone.
    available: Vec<(&'s str, &'s AvailableService)>,
}

impl<'s> ZoneView<'s> {
    /// Reads the ZoneIngress and ZoneEgress resources of `store` for a proxy in `zone`.
    pub fn new(store: &'s Store, zone: Option<&str>) -> Self {
        let mut ingresses: BTreeMap<&str, Vec<Endpoint>> = BTreeMap::new();
        let mut egresses = Vec::new();
        let mut available = Vec::new();
        for r in &store.resources {
            match &r.spec {
                Spec::ZoneIngress(zi) => {
                    let Some(z) = zi.zone.as_deref() else {
                        continue;
                    };
                    if let Some(e) = zone_proxy_endpoint(r, &zi.networking, true) {
                        ingresses.entry(z).or_default().push(e);
                    }
                    if Some(z) != zone {
                        available.extend(zi.available_services.iter().map(|s| (z, s)));
                    }
                }
                Spec::ZoneEgress(ze)
                    if zone.is_none() || ze.zone.is_none() || ze.zone.as_deref() == zone =>
                {
                    egresses.extend(zone_proxy_endpoint(r, &ze.networking, false));
                }
                _ => {}
            }
        }
        for list in ingresses.values_mut().chain([&mut egresses]) {
            list.sort_by_key(|e| e.address);
        }
        ZoneView {
            zone: zone.map(str::to_string),
            ingresses,
            egresses,
            available,
        }
    }

    /// Whether an endpoint in `zone` is reached directly (same zone, or no zones at all).
    pub fn is_local(&self, zone: Option<&str>) -> bool {
        match (zone, self.zone.as_deref()) {
            (Some(z), Some(mine)) => z == mine,
            _ => true,
        }
    }

    /// The ingresses of `zone`.
    pub fn ingresses(&self, zone: &str) -> &[Endpoint] {
        self.ingresses.get(zone).map_or(&[], Vec::as_slice)
    }

    /// The egresses of this proxy's zone.
    pub fn egresses(&self) -> &[Endpoint] {
        &self.egresses
    }

    /// Services of `mesh` carrying all of `tags` that remote zones' ingresses announce, with
    /// their zone.
    pub fn announced(&self, mesh: &str, tags: &Tags) -> Vec<(&'s str, &'s AvailableService)> {
        self.available
            .iter()
            .filter(|(_, s)| s.mesh == mesh || (s.mesh.is_empty() && mesh == "default"))
            .filter(|(_, s)| tags.iter().all(|(k, v)| s.tags.get(k) == Some(v)))
            .copied()
            .collect()
    }
}

/// A Dataplane's zone: the `kuma.io/zone` tag of its first inbound that has one, else of
/// its `networking.gateway.tags` (a gateway has no inbounds; kuma-cp writes its zone there).
pub fn dataplane_zone(dp: &Dataplane) -> Option<&str> {
    let gateway = dp.networking.gateway.iter().map(|g| &g.tags);
    dp.networking
        .inbound
        .iter()
        .map(|i| &i.tags)
        .chain(gateway)
        .find_map(|tags| tags.get(ZONE_TAG))
        .map(String::as_str)
}

/// The address others use to reach a zone proxy (ingress: advertised first).
fn zone_proxy_endpoint(
    r: &Resource,
    net: &ZoneProxyNetworking,
    advertised: bool,
) -> Option<Endpoint> {
    let (host, port) = match (&net.advertised_address, net.advertised_port) {
        (Some(a), Some(p)) if advertised => (a.as_str(), p),
        _ => (net.address.as_str(), net.port),
    };
    let ip = host.parse().ok().or_else(|| {
        tracing::warn!(resource = %r.key(), "skipping zone proxy: {host:?} is not an IP address");
        None
    })?;
    Some(Endpoint {
        address: SocketAddr::new(ip, u16::try_from(port).ok()?),
        origin: r.key(),
        tags: Tags::new(),
        hostname: None,
        tls_match: None,
        priority: 0,
        event_host: None,
        weight: 1,
        locality: None,
    })
}

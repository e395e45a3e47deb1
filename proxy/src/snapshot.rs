//! One applied config as the hot path reads it: every listener by address (the filter-chain
//! match of an accepted connection), the capture ports, the mesh TLS state, and what of the
//! config cannot be served. Built by the runtime's `apply` off the hot path and swapped in
//! whole.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use bearing_proxy_config::{Direction, ProxyConfig};

use crate::capture::{self, CapturePort, Route};
use crate::filter_chain::ListenerRuntime;
use crate::mesh_tls::MeshTlsSet;
use crate::stats::ListenerStats;
use crate::upstream::PreviousPools;
use crate::upstream_tls::UpstreamTlsContexts;

/// One applied config, ready for the hot path.
#[derive(Default)]
pub struct Snapshot {
    /// The config it was built from (None before the first config).
    pub config: Option<Arc<ProxyConfig>>,
    /// Every listener by address, whether it has a socket or is reached through capture.
    pub(crate) listeners: HashMap<SocketAddr, Arc<ListenerRuntime>>,
    /// Inbound listeners by port, for captured inbound connections to another local address.
    pub(crate) inbound_ports: HashMap<u16, Arc<ListenerRuntime>>,
    /// Transparent-proxy capture sockets by address.
    pub(crate) captures: HashMap<SocketAddr, Arc<CapturePort>>,
    /// Mesh mTLS state by mesh.
    pub(crate) tls: MeshTlsSet,
    /// The TLS contexts its clusters originate with, by the terms they were made from.
    pub(crate) upstream_tls: UpstreamTlsContexts,
    /// Listeners of the config that could not be built, by name, with the reason: not ready.
    pub(crate) build_errors: BTreeMap<String, String>,
    /// Other parts of the config that cannot be served (a mesh certificate that cannot be
    /// issued, a cluster without its TLS), by `mesh|cluster <name>`: not ready either.
    pub(crate) serve_errors: BTreeMap<String, String>,
}

impl Snapshot {
    /// The listener at `address`, if this snapshot has one.
    pub fn listener(&self, address: &SocketAddr) -> Option<&Arc<ListenerRuntime>> {
        self.listeners.get(address)
    }

    /// The metrics of the listener or capture port whose socket is at `address`.
    pub(crate) fn socket_stats(&self, address: &SocketAddr) -> Option<&ListenerStats> {
        match self.captures.get(address) {
            Some(port) => Some(&port.stats),
            None => self.listeners.get(address).map(|l| &l.stats),
        }
    }

    /// The sockets this snapshot needs bound: `(address, name, optional)`. An optional
    /// socket (IPv6 capture) that cannot be bound because the host lacks IPv6 is skipped.
    pub(crate) fn sockets(&self) -> Vec<(SocketAddr, &str, bool)> {
        let listeners = self.listeners.values().map(|l| &l.config);
        let own = listeners
            .filter(|l| l.bind)
            .map(|l| (l.address, l.name.as_str(), false));
        let captures = self
            .captures
            .iter()
            .map(|(a, c)| (*a, c.name.as_str(), a.is_ipv6()));
        own.chain(captures).collect()
    }

    /// Where a connection captured on `port` with original destination `target` goes: the
    /// listener at that address (inbound: else the inbound listener on that port, whatever
    /// the local address, so IPv6 reaches the same inbound as IPv4), else passthrough when
    /// allowed.
    pub(crate) fn route_captured(
        &self,
        port: &CapturePort,
        capture: SocketAddr,
        target: SocketAddr,
    ) -> Route {
        if target.port() == capture.port() {
            return Route::Refuse(format!(
                "{target} is the capture port itself; passing it through would loop"
            ));
        }
        let exact = self.listeners.get(&target);
        let found = exact
            .filter(|l| l.config.direction == port.direction)
            .or_else(|| match port.direction {
                Direction::Inbound => self.inbound_ports.get(&target.port()),
                Direction::Outbound => None,
            });
        match (found, port.direction) {
            (Some(l), _) => Route::Listener(l.clone()),
            (None, _) if !port.passthrough => Route::Refuse(format!(
                "{target} is not a mesh destination and the mesh does not allow passthrough \
                 (Mesh networking.outbound.passthrough: false)"
            )),
            (None, Direction::Outbound) => Route::Passthrough {
                target,
                source: None,
            },
            (None, Direction::Inbound) => Route::Passthrough {
                target,
                source: Some(capture::inbound_passthrough_source(&target)),
            },
        }
    }

    /// Every cluster's endpoint pools, for the next snapshot to take over or retire.
    pub(crate) fn pools(&self) -> PreviousPools {
        PreviousPools::of(
            self.listeners
                .values()
                .flat_map(|l| l.clusters().map(Arc::as_ref)),
        )
    }
}

//! Builtin gateway listeners as kuma-cp renders them (`kuma-dp run` with a Dataplane of
//! `networking.gateway.type: BUILTIN`): a listener per MeshGateway port whose chains hold an
//! HTTP connection manager with its routes over RDS (`rds.route_config_name`, one
//! `RouteConfiguration` per listener, or per hostname on HTTPS, where each chain matches its
//! SNI and terminates TLS with the hostname's certificate, inline or from SDS).
//!
//! They become what the directory store compiles from MeshGateway and MeshGatewayRoute: a
//! [`GatewayListener`] whose hosts are the route configurations' virtual hosts, served by the
//! same gateway runtime and `Router`. Kuma's gateway defaults that the runtime serves itself
//! (`server: Kuma Gateway`, `x-forwarded-for`, underscores refused, path hygiene) are checked
//! by value; any other value, and every field the model cannot express, is a NACK naming its
//! path. The connection manager's timeouts (MeshTimeout) go to the listener at any value.

use super::{
    downstream_timeouts, kuma_service, listener_path, socket_address, stream_idle_timeout,
    struct_strings, type_name, typed, Side, Translator,
};
use crate::decode::{LISTENER, ROUTE_CONFIGURATION, RUNTIME, SECRET};
use crate::fields::{self, Guard};
use crate::routes;
use bearing_proxy_config::{
    CrossMesh, Direction, DownstreamHttpTimeouts, GatewayCertificate, GatewayHost, GatewayListener,
    GatewayProtocol, Http2Windows, HttpFilter, Listener, Protocol, TlsParams, WeightedCluster,
};
use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::config::listener::v3 as listener_pb;
use envoy_types::pb::envoy::config::route::v3 as route_pb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls_pb;
use prost::Message;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// The `server` header the gateway runtime sends (Kuma's gateway `server_name`).
const SERVER_NAME: &str = "Kuma Gateway";
/// The cluster kuma-cp names where a route's backend resolves to nothing; Envoy answers such
/// a route with its `cluster_not_found_response_code`.
const UNRESOLVED_BACKEND: &str = "kuma.io/unresolved-backend";
/// The ALPN protocol mesh proxies offer: a gateway chain matched by it is cross-mesh.
const KUMA_ALPN: &str = "kuma";
/// The ALPN protocols an HTTPS gateway chain offers (kuma-cp's, and the runtime's).
const HTTPS_ALPN: &[&str] = &["h2", "http/1.1"];
/// Kuma's runtime layer with the gateway listeners' connection limits.
const LIMITS_PREFIX: &str = "envoy.resource_limits.listener.";
const LIMITS_SUFFIX: &str = ".connection_limit";

/// What a gateway chain's connection manager allows a request's stream (its
/// `stream_idle_timeout`) and the downstream connection.
#[derive(Debug, Clone, Copy, PartialEq)]
struct HcmTimeouts {
    stream_idle: Option<Duration>,
    downstream: DownstreamHttpTimeouts,
}

/// What one gateway chain serves: its hosts, the cross-mesh TLS it terminates if it is one,
/// and its connection manager's HTTP filters and timeouts.
type GatewayChain = (
    Vec<GatewayHost>,
    Option<CrossMesh>,
    (Vec<HttpFilter>, HcmTimeouts),
);

/// A builtin gateway listener whose chains carry `tcp_proxy` filters rather than HTTP, by the
/// protocol kuma-cp names it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamGateway {
    /// `<gateway>:TCP:<port>`: one chain for every connection.
    Tcp,
    /// `<gateway>:TLS:<port>`: a chain per hostname, matched by the ClientHello's SNI.
    Tls,
}

impl Translator<'_> {
    /// Whether a listener is a builtin gateway's TCP or TLS listener, and which: named as
    /// kuma-cp names them, `<gateway>:TCP:<port>` or `<gateway>:TLS:<port>`, with the port it
    /// listens on.
    pub(super) fn stream_gateway(
        name: &str,
        listener: &listener_pb::Listener,
    ) -> Option<StreamGateway> {
        let mut parts = name.rsplitn(3, ':');
        let (Some(port), Some(protocol), Some(gateway)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let kind = match protocol {
            "TCP" => StreamGateway::Tcp,
            "TLS" => StreamGateway::Tls,
            _ => return None,
        };
        let bound = socket_address(listener.address.as_ref()).map(|a| a.port().to_string());
        (!gateway.is_empty() && bound.is_ok_and(|p| p == port)).then_some(kind)
    }

    /// Whether a listener is a builtin gateway's: an HTTP connection manager with RDS.
    pub(super) fn is_gateway_listener(&self, listener: &listener_pb::Listener) -> bool {
        listener
            .filter_chains
            .iter()
            .flat_map(|c| &c.filters)
            .any(|f| rds_manager(f).is_some())
    }

    /// What every builtin gateway listener starts with: its runtime connection limit (taken
    /// whatever becomes of the listener: a NACKed one has its own NACKs), its fields walked
    /// by the gateway's guard, and its own address. `None` when it has no address.
    fn gateway_start(
        &mut self,
        name: &str,
        listener: &listener_pb::Listener,
    ) -> Option<(SocketAddr, Option<u32>)> {
        let path = listener_path(name);
        let connection_limit = self.connection_limits.remove(name);
        self.gateway_guard(
            LISTENER,
            name,
            "envoy.config.listener.v3.Listener",
            listener,
            &path,
        );
        let address = match socket_address(listener.address.as_ref()) {
            Ok(a) => a,
            Err(e) => {
                self.nack(LISTENER, name, format!("{path}.address"), e);
                return None;
            }
        };
        if listener.use_original_dst.as_ref().is_some_and(|b| b.value) {
            self.nack(
                LISTENER,
                name,
                format!("{path}.use_original_dst"),
                "a gateway listener is reached at its own address",
            );
        }
        Some((address, connection_limit))
    }

    /// A translated gateway listener → a `Listener` carrying its `GatewayListener`, as the
    /// directory store compiles a MeshGateway listener.
    fn push_gateway(
        &mut self,
        name: &str,
        listener: &listener_pb::Listener,
        address: SocketAddr,
        gateway: GatewayListener,
    ) {
        let protocol = match gateway.protocol {
            GatewayProtocol::Http | GatewayProtocol::Https => Protocol::Http,
            _ => Protocol::Tcp,
        };
        let mut out = Listener::new(name, address, Direction::Inbound, protocol);
        out.service = kuma_service(listener.metadata.as_ref()).unwrap_or_default();
        out.bind = listener.bind_to_port.as_ref().is_none_or(|b| b.value);
        out.gateway = Some(gateway);
        self.listeners.push(out);
    }

    /// A builtin gateway's HTTP or HTTPS listener → a `Listener` with its `GatewayListener`.
    pub(super) fn gateway_listener(&mut self, name: &str, listener: &listener_pb::Listener) {
        let path = listener_path(name);
        let before = self.nacks.len();
        let Some((address, connection_limit)) = self.gateway_start(name, listener) else {
            return;
        };
        let mut hosts: Vec<GatewayHost> = Vec::new();
        // Per chain: the cross-mesh TLS it terminates, if it is one.
        let mut cross_meshes: Vec<Option<CrossMesh>> = Vec::new();
        // The first chain's HTTP filters: the runtime holds one list per listener.
        let mut http_filters: Option<Vec<HttpFilter>> = None;
        // The connection manager's timeouts, one set per listener (its chains must agree).
        let mut timeouts: Option<HcmTimeouts> = None;
        for (i, chain) in listener.filter_chains.iter().enumerate() {
            let at = format!("{path}.filter_chains[{i}]");
            let Some((mut chain_hosts, cross_mesh, (filters, chain_timeouts))) =
                self.gateway_chain(name, &at, address.port(), chain)
            else {
                continue;
            };
            if http_filters.as_ref().is_some_and(|first| *first != filters) {
                let reason = "chains with different rate limit filters on one gateway listener: the runtime holds one list per listener";
                self.nack(LISTENER, name, at.clone(), reason);
            }
            // Envoy reads a route's rate limit only where its filter runs, and its `route_kri`
            // only where kuma-cp's Lua program does (never on a gateway).
            let limits = filters.contains(&HttpFilter::LocalRateLimit);
            for r in chain_hosts.iter_mut().flat_map(|h| &mut h.http_routes) {
                if !limits {
                    r.rate_limit = None;
                }
                r.route_kri = None;
            }
            http_filters.get_or_insert(filters);
            match timeouts {
                Some(first) if first != chain_timeouts => {
                    let reason = "timeouts of the connection manager differing from an earlier chain's: the gateway serves a listener's connections alike";
                    self.nack(LISTENER, name, at.clone(), reason);
                }
                _ => timeouts = Some(chain_timeouts),
            }
            if cross_meshes
                .first()
                .is_some_and(|first| *first != cross_mesh)
            {
                let reason = "cross-mesh chains (ALPN kuma) beside other chains, or with other terms, on one gateway listener (a crossMesh MeshGateway listener is cross-mesh as a whole)";
                self.nack(LISTENER, name, at.clone(), reason);
            }
            cross_meshes.push(cross_mesh);
            for host in chain_hosts {
                match hosts.iter().find(|h| h.hostname == host.hostname) {
                    Some(same) if *same == host => {}
                    Some(_) => self.nack(
                        LISTENER,
                        name,
                        at.clone(),
                        format!("host {:?} has other routes or another certificate in an earlier chain: a gateway listener holds one host per name", host.hostname),
                    ),
                    None => hosts.push(host),
                }
            }
        }
        let tls_chains = listener
            .filter_chains
            .iter()
            .filter(|c| c.transport_socket.is_some())
            .count();
        let cross_mesh = cross_meshes.into_iter().next().flatten();
        let protocol = match tls_chains {
            0 => GatewayProtocol::Http,
            // A cross-mesh listener is Kuma's HTTP listener whose TLS is the mesh's mTLS.
            _ if cross_mesh.is_some() => GatewayProtocol::Http,
            n if n == listener.filter_chains.len() => GatewayProtocol::Https,
            _ => {
                return self.nack(
                    LISTENER,
                    name,
                    format!("{path}.filter_chains"),
                    "plaintext and TLS chains on one gateway listener (MeshGateway listeners are HTTP or HTTPS)",
                )
            }
        };
        // Most specific first, as the model keeps them (the router orders them itself).
        hosts.sort_by_key(|h| host_rank(&h.hostname));
        if self.nacks.len() != before {
            return;
        }
        let tags = struct_strings(listener.metadata.as_ref(), "io.kuma.tags");
        let windows = self.gateway_http2_windows(name, listener);
        let compression =
            self.gateway_compression(name, listener, |c| c.filters.iter().find_map(rds_manager));
        let tls_params = self.gateway_tls_params(name, listener);
        if self.nacks.len() != before {
            return;
        }
        let gateway = GatewayListener {
            protocol,
            hosts,
            tags,
            connection_limit,
            cross_mesh,
            tls_params,
            compression,
        };
        self.push_gateway(name, listener, address, gateway);
        if let Some(out) = self.listeners.last_mut() {
            out.http2_windows = windows;
            out.http_filters = http_filters.unwrap_or_default();
            if let Some(t) = timeouts {
                out.stream_idle_timeout = t.stream_idle;
                out.downstream_timeouts = t.downstream;
            }
        }
    }

    /// The HTTP/2 windows a gateway listener offers its clients, from its chains' HTTP
    /// connection managers (`http2_protocol_options`), which must agree: the runtime serves
    /// a listener with one HTTP server.
    fn gateway_http2_windows(
        &mut self,
        name: &str,
        listener: &listener_pb::Listener,
    ) -> Http2Windows {
        let path = listener_path(name);
        let mut found: Option<Http2Windows> = None;
        for (i, chain) in listener.filter_chains.iter().enumerate() {
            let Some(hcm) = chain.filters.iter().find_map(rds_manager) else {
                continue;
            };
            let at = format!("{path}.filter_chains[{i}].filters[0].typed_config(envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager).http2_protocol_options");
            let options = hcm.http2_protocol_options.unwrap_or_default();
            let windows = self.http2_windows(LISTENER, name, &at, &options);
            match found {
                Some(first) if first != windows => {
                    let reason = "chains of one gateway listener with different HTTP/2 windows";
                    self.nack(LISTENER, name, at, reason);
                }
                _ => found = Some(windows),
            }
        }
        found.unwrap_or_default()
    }

    /// A builtin gateway's TCP listener (kuma-cp's `<gateway>:TCP:<port>`: one chain for all
    /// its MeshTCPRoutes) → a `GatewayListener` of protocol TCP whose one host `*` spreads
    /// connections over the chain's `tcp_proxy` clusters by weight, as the directory store
    /// compiles it. A chain without filters (a listener no route attaches to) closes every
    /// connection, as Envoy does: the host has no backend.
    pub(super) fn tcp_gateway_listener(&mut self, name: &str, listener: &listener_pb::Listener) {
        let path = listener_path(name);
        let before = self.nacks.len();
        let Some((address, connection_limit)) = self.gateway_start(name, listener) else {
            return;
        };
        let tcp_backends = match listener.filter_chains.as_slice() {
            [chain] => self.tcp_gateway_chain(name, &format!("{path}.filter_chains[0]"), chain),
            _ => {
                self.nack(
                    LISTENER,
                    name,
                    format!("{path}.filter_chains"),
                    "a TCP gateway listener holds one filter chain, for all its routes",
                );
                Vec::new()
            }
        };
        if self.nacks.len() != before {
            return;
        }
        let host = GatewayHost {
            hostname: "*".into(),
            certificate: None,
            http_routes: Vec::new(),
            tcp_backends,
        };
        let at = (address, connection_limit);
        self.push_stream_gateway(name, listener, at, GatewayProtocol::Tcp, vec![host]);
    }

    /// A translated TCP or TLS gateway listener (`protocol`, with `hosts`, at `address` under
    /// `connection_limit`) → a `Listener` carrying its `GatewayListener`, which neither
    /// compresses nor is cross-mesh.
    fn push_stream_gateway(
        &mut self,
        name: &str,
        listener: &listener_pb::Listener,
        (address, connection_limit): (SocketAddr, Option<u32>),
        protocol: GatewayProtocol,
        hosts: Vec<GatewayHost>,
    ) {
        let before = self.nacks.len();
        let tls_params = self.gateway_tls_params(name, listener);
        if self.nacks.len() != before {
            return;
        }
        let gateway = GatewayListener {
            protocol,
            hosts,
            tags: struct_strings(listener.metadata.as_ref(), "io.kuma.tags"),
            connection_limit,
            cross_mesh: None,
            tls_params,
            compression: None,
        };
        self.push_gateway(name, listener, address, gateway);
    }

    /// The one chain of a TCP gateway listener: no match, no TLS (kuma-cp's TLS listeners
    /// are `<gateway>:TLS:<port>`), and its backends.
    fn tcp_gateway_chain(
        &mut self,
        name: &str,
        at: &str,
        chain: &listener_pb::FilterChain,
    ) -> Vec<WeightedCluster> {
        if chain.filter_chain_match.is_some() {
            let reason = "a TCP gateway chain takes every connection (no filter_chain_match)";
            self.nack(LISTENER, name, format!("{at}.filter_chain_match"), reason);
        }
        if chain.transport_socket.is_some() {
            let reason = "a TCP gateway listener terminates no TLS (a MeshGateway TLS listener is kuma-cp's <gateway>:TLS:<port>)";
            self.nack(LISTENER, name, format!("{at}.transport_socket"), reason);
        }
        self.tcp_chain_backends(name, at, chain)
    }

    /// A builtin gateway's TLS listener (kuma-cp's `<gateway>:TLS:<port>`: a chain per
    /// MeshGateway listener hostname, matched by `transport_protocol: tls` and the hostname
    /// as its server name, or by no name for `*`) → a `GatewayListener` with a host per
    /// server name, whose TCP backends are its chain's `tcp_proxy` clusters by weight, as the
    /// directory store compiles a MeshGateway TLS listener. Chains with a
    /// `DownstreamTlsContext` terminate TLS with their hostname's certificate (TLS
    /// terminate: no client certificate, no ALPN), chains without relay the TLS bytes
    /// untouched (TLS passthrough); a listener mixing them is NACKed, as a gateway listener
    /// is one or the other. A ClientHello no chain matches is closed, as Envoy closes it.
    pub(super) fn tls_gateway_listener(&mut self, name: &str, listener: &listener_pb::Listener) {
        let path = listener_path(name);
        let before = self.nacks.len();
        let Some((address, connection_limit)) = self.gateway_start(name, listener) else {
            return;
        };
        if listener.filter_chains.is_empty() {
            let reason = "a TLS gateway listener holds a chain per hostname";
            return self.nack(LISTENER, name, format!("{path}.filter_chains"), reason);
        }
        let mut hosts: Vec<GatewayHost> = Vec::new();
        for (i, chain) in listener.filter_chains.iter().enumerate() {
            let at = format!("{path}.filter_chains[{i}]");
            let names = self.tls_chain_names(name, &at, address.port(), chain);
            let certificate = match &chain.transport_socket {
                Some(socket) => {
                    self.gateway_tls(name, &format!("{at}.transport_socket"), socket, &[])
                }
                None => None,
            };
            let tcp_backends = self.tcp_chain_backends(name, &at, chain);
            for hostname in names {
                if hosts.iter().any(|h| h.hostname == hostname) {
                    let reason = format!("server name {hostname:?} is matched by an earlier chain too (Envoy refuses chains with the same match)");
                    let field = format!("{at}.filter_chain_match.server_names");
                    self.nack(LISTENER, name, field, reason);
                    continue;
                }
                hosts.push(GatewayHost {
                    hostname,
                    certificate: certificate.clone(),
                    http_routes: Vec::new(),
                    tcp_backends: tcp_backends.clone(),
                });
            }
        }
        let terminating = listener
            .filter_chains
            .iter()
            .filter(|c| c.transport_socket.is_some())
            .count();
        let protocol = match terminating {
            0 => GatewayProtocol::TlsPassthrough,
            n if n == listener.filter_chains.len() => GatewayProtocol::TlsTerminate,
            _ => {
                let reason = "chains that terminate TLS beside chains that pass it through on one gateway listener (a gateway listener is TLS terminate or passthrough)";
                return self.nack(LISTENER, name, format!("{path}.filter_chains"), reason);
            }
        };
        if self.nacks.len() != before {
            return;
        }
        // Most specific first, as the model keeps them (the router orders them itself).
        hosts.sort_by_key(|h| host_rank(&h.hostname));
        self.push_stream_gateway(name, listener, (address, connection_limit), protocol, hosts);
    }

    /// The hostnames a TLS gateway chain serves: the server names it is matched by (an exact
    /// name or a `*.` wildcard, the forms Envoy matches), or `*` for a chain matched by none
    /// (any ClientHello, with or without SNI). Its match must be TLS (`transport_protocol:
    /// tls`), on the listener's port, without ALPN.
    fn tls_chain_names(
        &mut self,
        name: &str,
        at: &str,
        port: u16,
        chain: &listener_pb::FilterChain,
    ) -> Vec<String> {
        let matching = chain.filter_chain_match.clone().unwrap_or_default();
        let mat = format!("{at}.filter_chain_match");
        if matching.transport_protocol != "tls" {
            let reason =
                "a TLS gateway chain matches TLS connections only (transport_protocol: tls)";
            self.nack(LISTENER, name, format!("{mat}.transport_protocol"), reason);
        }
        self.chain_port(name, &mat, port, &matching);
        if !matching.application_protocols.is_empty() {
            let reason = "a TLS gateway chain is matched by server name only";
            self.nack(
                LISTENER,
                name,
                format!("{mat}.application_protocols"),
                reason,
            );
        }
        if matching.server_names.is_empty() {
            return vec!["*".to_string()];
        }
        let mut names = Vec::new();
        for (k, server) in matching.server_names.iter().enumerate() {
            let lower = server.to_ascii_lowercase();
            let form_holds = match lower.strip_prefix("*.") {
                Some(domain) => !domain.is_empty() && !domain.contains('*'),
                None => !lower.is_empty() && !lower.contains('*'),
            };
            if !form_holds {
                let reason = format!("server name {server:?}: Envoy matches an exact name or a `*.` wildcard (any name under that domain)");
                self.nack(LISTENER, name, format!("{mat}.server_names[{k}]"), reason);
                continue;
            }
            names.push(lower);
        }
        names
    }

    /// NACKs a chain match (at `at`) for another destination port than the listener's.
    fn chain_port(
        &mut self,
        name: &str,
        at: &str,
        port: u16,
        matching: &listener_pb::FilterChainMatch,
    ) {
        if matching
            .destination_port
            .as_ref()
            .is_some_and(|p| p.value != u32::from(port))
        {
            self.nack(
                LISTENER,
                name,
                format!("{at}.destination_port"),
                "a chain for another destination port than the listener's is not implemented",
            );
        }
    }

    /// The backends of a gateway's TCP or TLS chain: no filter (no route: connections are
    /// closed, as Envoy closes them) or a `tcp_proxy` to a cluster (weight 1) or weighted
    /// clusters, with Kuma's gateway idle timeout; the clusters it reaches are recorded.
    fn tcp_chain_backends(
        &mut self,
        name: &str,
        at: &str,
        chain: &listener_pb::FilterChain,
    ) -> Vec<WeightedCluster> {
        if chain.filters.is_empty() {
            return Vec::new();
        }
        let Some(route) = self.chain_route(name, at, chain) else {
            return Vec::new();
        };
        if route.protocol != Protocol::Tcp || route.answer.is_some() {
            let reason = "a TCP or TLS gateway chain holds one tcp_proxy";
            self.nack(LISTENER, name, format!("{at}.filters"), reason);
        }
        if !route.subset.is_empty() {
            let reason = "metadata_match: a gateway's TCP backends are whole clusters";
            self.nack(LISTENER, name, format!("{at}.filters"), reason);
        }
        for (cluster, timeout, reached_at) in route.reached {
            self.route_to(cluster, Protocol::Tcp, timeout, name, reached_at);
        }
        match route.cluster.is_empty() {
            true => route.tcp_backends,
            false => vec![WeightedCluster {
                cluster: route.cluster,
                weight: 1,
            }],
        }
    }

    /// Walks a gateway's resource (`message`, at `path`) with the gateway's field guard.
    fn gateway_guard<M: Message>(
        &mut self,
        type_url: &str,
        name: &str,
        message: &str,
        resource: &M,
        path: &str,
    ) {
        let bytes = resource.encode_to_vec();
        let found = fields::unhandled_with(message, &bytes, path, Guard::Gateway);
        self.unhandled(type_url, name, found);
    }

    /// One chain: its match, TLS and HTTP connection manager; its route configuration's
    /// virtual hosts as gateway hosts, with the chain's certificate, the cross-mesh TLS
    /// of a chain matched by ALPN `kuma`, and its connection manager's timeouts.
    fn gateway_chain(
        &mut self,
        name: &str,
        at: &str,
        port: u16,
        chain: &listener_pb::FilterChain,
    ) -> Option<GatewayChain> {
        let by_alpn = chain
            .filter_chain_match
            .as_ref()
            .map(|m| m.application_protocols.as_slice())
            .unwrap_or_default();
        if let Some(m) = &chain.filter_chain_match {
            self.chain_port(name, &format!("{at}.filter_chain_match"), port, m);
            let cross_mesh = by_alpn == [KUMA_ALPN] && chain.transport_socket.is_some();
            if !by_alpn.is_empty() && !cross_mesh {
                self.nack(
                    LISTENER,
                    name,
                    format!("{at}.filter_chain_match.application_protocols"),
                    "a gateway chain is matched by ALPN only as a cross-mesh one: ALPN kuma, terminating mesh mTLS",
                );
            }
        }
        let socket_at = format!("{at}.transport_socket");
        let (certificate, cross_mesh) = match &chain.transport_socket {
            Some(socket) if by_alpn == [KUMA_ALPN] => {
                (None, Some(self.cross_mesh_tls(name, &socket_at, socket)?))
            }
            Some(socket) => (
                Some(self.gateway_tls(name, &socket_at, socket, HTTPS_ALPN)?),
                None,
            ),
            None => (None, None),
        };
        let [filter] = chain.filters.as_slice() else {
            self.nack(
                LISTENER,
                name,
                format!("{at}.filters"),
                "a gateway chain holds exactly one HTTP connection manager with RDS",
            );
            return None;
        };
        let fat = format!("{at}.filters[0]");
        let Some(hcm) = rds_manager(filter) else {
            self.nack(LISTENER, name, fat, "a gateway chain holds exactly one HTTP connection manager with RDS (TCP and TLS gateway listeners are kuma-cp's <gateway>:TCP|TLS:<port>)");
            return None;
        };
        let fat = format!("{fat}.typed_config(envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager)");
        self.gateway_defaults(name, &fat, &hcm);
        let filters = self.gateway_filters(name, &fat, &hcm);
        let timeouts = HcmTimeouts {
            stream_idle: stream_idle_timeout(&hcm),
            downstream: downstream_timeouts(&hcm),
        };
        let Some(hcm_pb::http_connection_manager::RouteSpecifier::Rds(rds)) = &hcm.route_specifier
        else {
            return None;
        };
        let route_name = rds.route_config_name.as_str();
        let Some(rc) = self.set.routes.get(route_name) else {
            let reason = format!(
                "route configuration {route_name:?} is not among the RouteConfiguration resources"
            );
            self.awaits(
                LISTENER,
                name,
                format!("{fat}.rds.route_config_name"),
                reason,
            );
            return None;
        };
        let tls = chain.transport_socket.is_some();
        let hosts = self.gateway_routes(name, route_name, rc, tls)?;
        let hosts = hosts
            .into_iter()
            .map(|(hostname, http_routes)| GatewayHost {
                hostname,
                certificate: certificate.clone(),
                http_routes,
                tcp_backends: Vec::new(),
            });
        Some((hosts.collect(), cross_mesh, (filters, timeouts)))
    }

    /// Kuma's gateway defaults on the HTTP connection manager, which the gateway runtime
    /// serves: anything else is NACKed by its path.
    fn gateway_defaults(&mut self, name: &str, at: &str, hcm: &hcm_pb::HttpConnectionManager) {
        use core_pb::http_protocol_options::HeadersWithUnderscoresAction as Underscores;
        use hcm_pb::http_connection_manager::PathWithEscapedSlashesAction as Slashes;
        for (field, reason) in super::internal_address_problems(hcm, at) {
            self.nack(LISTENER, name, field, reason);
        }
        let options = hcm.common_http_protocol_options.unwrap_or_default();
        let checks = [
            (
                "codec_type",
                hcm.codec_type == 0,
                "AUTO (the gateway serves HTTP/1.1 and HTTP/2)".to_string(),
            ),
            (
                "server_name",
                hcm.server_name == SERVER_NAME,
                format!("{SERVER_NAME:?}, the gateway's `server` header"),
            ),
            (
                "use_remote_address",
                hcm.use_remote_address.as_ref().is_some_and(|b| b.value),
                "true (the gateway appends the client's address to x-forwarded-for)".into(),
            ),
            (
                "normalize_path",
                hcm.normalize_path.as_ref().is_some_and(|b| b.value),
                "true (the gateway normalises paths)".into(),
            ),
            (
                "merge_slashes",
                hcm.merge_slashes,
                "true (the gateway merges slashes)".into(),
            ),
            (
                "path_with_escaped_slashes_action",
                hcm.path_with_escaped_slashes_action == Slashes::UnescapeAndRedirect as i32,
                "UNESCAPE_AND_REDIRECT (the gateway redirects to the unescaped path)".into(),
            ),
            (
                "common_http_protocol_options.headers_with_underscores_action",
                options.headers_with_underscores_action == Underscores::RejectRequest as i32,
                "REJECT_REQUEST (the gateway refuses header names with `_`)".into(),
            ),
        ];
        for (field, holds, wanted) in checks {
            if !holds {
                let reason = format!("a builtin gateway serves only {wanted}");
                self.nack(LISTENER, name, format!("{at}.{field}"), reason);
            }
        }
    }

    /// The HTTP filters of a gateway chain's connection manager: the router last, and
    /// Kuma's `local_ratelimit` (MeshRateLimit: its routes' buckets apply only where it runs).
    fn gateway_filters(
        &mut self,
        name: &str,
        at: &str,
        hcm: &hcm_pb::HttpConnectionManager,
    ) -> Vec<HttpFilter> {
        let filters = &hcm.http_filters;
        let mut http_filters = Vec::new();
        for (k, f) in filters.iter().enumerate() {
            let router = match &f.config_type {
                Some(hcm_pb::http_filter::ConfigType::TypedConfig(any)) => {
                    let kind = type_name(any);
                    if kind == crate::http_filters::HTTP_LOCAL_RATE_LIMIT {
                        let fat = format!("{at}.http_filters[{k}].typed_config({kind})");
                        let mut problems = Vec::new();
                        let found = crate::http_filters::http_filter(any, &fat, &mut problems);
                        for (field, reason) in problems {
                            self.nack(LISTENER, name, field, reason);
                        }
                        http_filters.extend(found.flatten());
                    }
                    kind.ends_with("router.v3.Router")
                }
                _ => false,
            };
            if router != (k + 1 == filters.len()) {
                self.nack(
                    LISTENER,
                    name,
                    format!("{at}.http_filters[{k}]"),
                    "the router must be the last HTTP filter",
                );
            }
        }
        http_filters
    }

    /// The TLS a gateway chain terminates: the hostname's certificate (inline, or an SDS
    /// Secret), no client certificate, TLS 1.2 and 1.3, the ALPN protocols the runtime
    /// offers on it (`alpn`: h2 and http/1.1 on HTTPS, none on a TLS listener).
    fn gateway_tls(
        &mut self,
        name: &str,
        at: &str,
        socket: &core_pb::TransportSocket,
        alpn: &[&str],
    ) -> Option<GatewayCertificate> {
        let (ctx, at) = self.downstream_context(name, at, socket)?;
        let before = self.nacks.len();
        let reason = "client certificates are required only on a cross-mesh chain (ALPN kuma)";
        self.client_certificate(name, &at, &ctx, false, reason);
        let common = ctx.common_tls_context.unwrap_or_default();
        let cat = format!("{at}.common_tls_context");
        if common.alpn_protocols != alpn {
            let reason = format!("a gateway chain of this kind offers ALPN {alpn:?} (HTTPS: h2 and http/1.1; TLS: none, its bytes go to TCP backends)");
            self.nack(LISTENER, name, format!("{cat}.alpn_protocols"), reason);
        }
        if common.validation_context_type.is_some() {
            self.nack(
                LISTENER,
                name,
                format!("{cat}.validation_context_type"),
                "client certificates are verified only on a cross-mesh chain (ALPN kuma)",
            );
        }
        let certificate = match (
            common.tls_certificates.as_slice(),
            common.tls_certificate_sds_secret_configs.as_slice(),
        ) {
            ([cert], []) => Some((
                "inline".to_string(),
                cert.clone(),
                format!("{cat}.tls_certificates[0]"),
            )),
            ([], [sds]) => {
                let field = format!("{cat}.tls_certificate_sds_secret_configs[0].name");
                match self
                    .set
                    .secrets
                    .get(&sds.name)
                    .and_then(|s| s.r#type.clone())
                {
                    Some(tls_pb::secret::Type::TlsCertificate(cert)) => Some((
                        format!("Secret/{}", sds.name),
                        cert,
                        format!("secrets[{:?}].tls_certificate", sds.name),
                    )),
                    Some(_) => {
                        self.nack(
                            SECRET,
                            &sds.name,
                            format!("secrets[{:?}]", sds.name),
                            "a gateway certificate Secret holds a tls_certificate",
                        );
                        None
                    }
                    None => {
                        self.await_secret(LISTENER, name, field, &sds.name);
                        None
                    }
                }
            }
            _ => {
                self.nack(LISTENER, name, cat.clone(), "a gateway chain presents exactly one certificate (tls_certificates or tls_certificate_sds_secret_configs)");
                None
            }
        };
        let (origin, cert, field) = certificate?;
        let chain = super::data_text(cert.certificate_chain.as_ref());
        let key = super::data_text(cert.private_key.as_ref());
        let (Some(cert_chain_pem), Some(key_pem)) = (chain, key) else {
            self.nack(
                LISTENER,
                name,
                field,
                "a gateway certificate needs an inline certificate chain and private key",
            );
            return None;
        };
        // Loaded as the runtime loads it, so a certificate that cannot serve is NACKed and
        // the last good config serves on.
        if let Err(e) = bearing_tls::certified_key(&cert_chain_pem, &key_pem) {
            self.nack(
                LISTENER,
                name,
                field,
                format!("the gateway certificate does not load: {e}"),
            );
            return None;
        }
        (self.nacks.len() == before).then_some(GatewayCertificate {
            origin,
            cert_chain_pem,
            key_pem,
        })
    }

    /// The TLS parameters of a gateway listener's terminating chains (kuma-cp renders a TLS
    /// 1.2 floor on each), read as Envoy reads a server's (`tls_params.rs`); the runtime
    /// terminates every host of a listener alike, so chains asking for different ones are
    /// NACKed. `None`: no chain has any (TLS 1.2 and 1.3, BoringSSL's lists).
    fn gateway_tls_params(
        &mut self,
        name: &str,
        listener: &listener_pb::Listener,
    ) -> Option<TlsParams> {
        let path = listener_path(name);
        let mut first: Option<Option<TlsParams>> = None;
        for (i, chain) in listener.filter_chains.iter().enumerate() {
            let any = match chain
                .transport_socket
                .as_ref()
                .and_then(|s| s.config_type.as_ref())
            {
                Some(core_pb::transport_socket::ConfigType::TypedConfig(any)) => any,
                _ => continue,
            };
            let Some(ctx) = typed::<tls_pb::DownstreamTlsContext>(any)
                .filter(|_| type_name(any).ends_with("DownstreamTlsContext"))
            else {
                continue;
            };
            let common = ctx.common_tls_context.unwrap_or_default();
            let cat = format!(
                "{path}.filter_chains[{i}].transport_socket.typed_config({}).common_tls_context",
                type_name(any)
            );
            let Ok(params) = self.tls_params((LISTENER, name), &cat, &common, Side::Server) else {
                continue;
            };
            match &first {
                Some(known) if *known != params => {
                    let reason = "TLS parameters differing from an earlier chain's: the gateway terminates every host of a listener alike";
                    self.nack(LISTENER, name, format!("{cat}.tls_params"), reason);
                }
                Some(_) => {}
                None => first = Some(params),
            }
        }
        first.flatten()
    }

    /// A cross-mesh chain's TLS (kuma-cp's `crossMesh: true` listener, matched by ALPN
    /// `kuma`): mesh mTLS presenting the gateway's `identity_cert:secret:<mesh>`, a client
    /// certificate required and verified against the CA secret it names (kuma-cp's
    /// all-in-one `mesh_ca:secret:all`: every mesh's CA), with no SAN check, since callers
    /// come from any mesh. The CA certificates are loaded as the runtime loads them, so a
    /// secret that does not load is NACKed and the last good config serves on.
    fn cross_mesh_tls(
        &mut self,
        name: &str,
        at: &str,
        socket: &core_pb::TransportSocket,
    ) -> Option<CrossMesh> {
        let (ctx, at) = self.downstream_context(name, at, socket)?;
        let before = self.nacks.len();
        let reason = "a cross-mesh chain requires a client certificate (the caller's mesh mTLS)";
        self.client_certificate(name, &at, &ctx, true, reason);
        let common = ctx.common_tls_context.unwrap_or_default();
        let cat = format!("{at}.common_tls_context");
        if !super::subject_alt_names(&common).is_empty() {
            let reason = "a cross-mesh chain admits a client of any mesh its CA secret holds, with no SAN check";
            self.nack(
                LISTENER,
                name,
                format!("{cat}.combined_validation_context"),
                reason,
            );
        }
        let mesh = self.identity_mesh(LISTENER, name, &cat, &common);
        let Some(ca) = super::validation_sds(&common) else {
            let reason =
                "a cross-mesh chain verifies clients against a CA from SDS (mesh_ca:secret:all)";
            self.nack(
                LISTENER,
                name,
                format!("{cat}.validation_context_type"),
                reason,
            );
            return None;
        };
        let client_ca_pems = match self.secret_ca(&ca) {
            Some(bundle) => self.client_cas(&ca, &bundle)?,
            None if self.set.secrets.contains_key(&ca) => {
                let reason = "a CA secret holds a validation_context with a trusted_ca";
                self.nack(SECRET, &ca, format!("secrets[{ca:?}]"), reason);
                return None;
            }
            None => {
                let field = format!(
                    "{cat}.combined_validation_context.validation_context_sds_secret_config.name"
                );
                self.await_secret(LISTENER, name, field, &ca);
                return None;
            }
        };
        let mesh = mesh?;
        if self.nacks.len() != before {
            return None;
        }
        self.meshes.insert(mesh.clone());
        Some(CrossMesh {
            identity_mesh: mesh,
            client_ca_pems,
        })
    }

    /// The CA certificates of a CA secret's bundle (kuma-cp's all-in-one CA concatenates
    /// every mesh's), one PEM each, each loaded as the runtime loads it.
    fn client_cas(&mut self, secret: &str, bundle: &str) -> Option<Vec<String>> {
        const END: &str = "-----END CERTIFICATE-----";
        let pems: Vec<String> = bundle
            .split_inclusive(END)
            .map(str::trim)
            .filter(|p| p.contains("-----BEGIN CERTIFICATE-----"))
            .map(|p| format!("{p}\n"))
            .collect();
        let field = format!("secrets[{secret:?}].validation_context.trusted_ca");
        if pems.is_empty() {
            self.nack(SECRET, secret, field, "no CERTIFICATE block");
            return None;
        }
        for (i, pem) in pems.iter().enumerate() {
            if let Err(e) = bearing_tls::MeshCa::from_cert_pem(pem) {
                let reason = format!("CA certificate {i} of the bundle does not load: {e}");
                self.nack(SECRET, secret, field.clone(), reason);
                return None;
            }
        }
        Some(pems)
    }

    /// A gateway's route configuration: its virtual hosts as (hostname, routes), Kuma's
    /// gateway defaults checked, the clusters it reaches recorded for `listener`.
    fn gateway_routes(
        &mut self,
        listener: &str,
        route_name: &str,
        rc: &route_pb::RouteConfiguration,
        tls: bool,
    ) -> Option<Vec<(String, Vec<bearing_proxy_config::HttpRoute>)>> {
        use route_pb::virtual_host::TlsRequirementType;
        let path = format!("routes[{route_name:?}]");
        let before = self.nacks.len();
        let message = "envoy.config.route.v3.RouteConfiguration";
        self.gateway_guard(ROUTE_CONFIGURATION, route_name, message, rc, &path);
        if !rc.ignore_port_in_host_matching {
            self.nack(
                ROUTE_CONFIGURATION,
                route_name,
                format!("{path}.ignore_port_in_host_matching"),
                "a builtin gateway matches hosts without the Host's port (true)",
            );
        }
        for (k, vh) in rc.virtual_hosts.iter().enumerate() {
            let vat = format!("{path}.virtual_hosts[{k}]");
            let require = vh.require_tls;
            if require != TlsRequirementType::None as i32
                && !(tls && require == TlsRequirementType::All as i32)
            {
                self.nack(
                    ROUTE_CONFIGURATION,
                    route_name,
                    format!("{vat}.require_tls"),
                    "TLS is required only of hosts on a TLS chain (ALL), which every request meets",
                );
            }
        }
        let (mut problems, mut reached) = (Vec::new(), Vec::new());
        let mut table = routes::route_table(rc, &path, &mut problems, &mut reached);
        if let Some(table) = &mut table {
            unresolved_backends(rc, table, &path, &mut problems);
        }
        for (field, reason) in problems {
            self.nack(ROUTE_CONFIGURATION, route_name, field, reason);
        }
        if self.nacks.len() != before {
            return None;
        }
        for (cluster, timeout, at) in reached {
            if cluster != UNRESOLVED_BACKEND {
                self.route_to(cluster, Protocol::Http, timeout, listener, at);
            }
        }
        let hosts = table?
            .virtual_hosts
            .into_iter()
            .flat_map(|vh| {
                let routes = vh.routes;
                vh.domains.into_iter().map(move |d| (d, routes.clone()))
            })
            .collect();
        Some(hosts)
    }

    /// The connection limits of Kuma's gateway runtime layer (`gateway.listeners`:
    /// `envoy.resource_limits.listener.<listener>.connection_limit`), by listener; any other
    /// runtime key is NACKed by its path.
    pub(super) fn runtime_limits(&mut self) -> BTreeMap<String, u32> {
        use envoy_types::pb::google::protobuf::value::Kind;
        let mut limits = BTreeMap::new();
        let set = self.set;
        for (name, runtime) in &set.runtimes {
            let fields = runtime.layer.iter().flat_map(|l| &l.fields);
            for (key, value) in fields {
                let at = format!("runtimes[{name:?}].layer[{key:?}]");
                let listener = key
                    .strip_prefix(LIMITS_PREFIX)
                    .and_then(|k| k.strip_suffix(LIMITS_SUFFIX));
                let limit = match &value.kind {
                    Some(Kind::NumberValue(n))
                        if n.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(n) =>
                    {
                        Some(*n as u32)
                    }
                    _ => None,
                };
                match (listener, limit) {
                    (Some(l), Some(n)) => {
                        limits.insert(l.to_string(), n);
                    }
                    (Some(_), None) => self.nack(RUNTIME, name, at, "a connection limit is a whole number"),
                    (None, _) => self.nack(RUNTIME, name, at, "runtime keys other than gateway listeners' connection limits are not implemented"),
                }
            }
        }
        limits
    }

    /// Connection limits naming no gateway listener (they are served on gateways only).
    pub(super) fn unused_limits(&mut self) {
        let set = self.set;
        for (listener, _) in std::mem::take(&mut self.connection_limits) {
            let key = format!("{LIMITS_PREFIX}{listener}{LIMITS_SUFFIX}");
            let runtime = set
                .runtimes
                .iter()
                .find(|(_, r)| {
                    r.layer
                        .as_ref()
                        .is_some_and(|l| l.fields.contains_key(&key))
                })
                .map_or("", |(n, _)| n.as_str());
            let at = format!("runtimes[{runtime:?}].layer[{key:?}]");
            self.nack(
                RUNTIME,
                runtime,
                at,
                "a connection limit is implemented on builtin gateway listeners only",
            );
        }
    }
}

/// Routes whose every backend is Kuma's unresolved backend answer the route's
/// `cluster_not_found_response_code`, as Envoy does for a cluster that does not exist; one
/// beside resolved backends (a share of requests failing) is a problem naming it.
fn unresolved_backends(
    rc: &route_pb::RouteConfiguration,
    table: &mut bearing_proxy_config::RouteTable,
    path: &str,
    problems: &mut Vec<routes::Problem>,
) {
    use bearing_proxy_config::RouteAction;
    use route_pb::route_action::ClusterNotFoundResponseCode as Code;
    // `route_table` keeps every route of a configuration it translates, in order.
    for (k, (vh, out)) in rc
        .virtual_hosts
        .iter()
        .zip(&mut table.virtual_hosts)
        .enumerate()
    {
        for (r, (route, out)) in vh.routes.iter().zip(&mut out.routes).enumerate() {
            let RouteAction::Forward { backends, .. } = &out.action else {
                continue;
            };
            let unresolved = backends
                .iter()
                .filter(|b| b.cluster == UNRESOLVED_BACKEND)
                .count();
            if unresolved == 0 {
                continue;
            }
            if unresolved < backends.len() {
                problems.push((
                    format!("{path}.virtual_hosts[{k}].routes[{r}].route.weighted_clusters"),
                    format!("{UNRESOLVED_BACKEND} beside resolved backends is not implemented"),
                ));
                continue;
            }
            let code = match &route.action {
                Some(route_pb::route::Action::Route(a)) => a.cluster_not_found_response_code,
                _ => 0,
            };
            let status = match Code::try_from(code) {
                Ok(Code::NotFound) => 404,
                Ok(Code::InternalServerError) => 500,
                _ => 503,
            };
            out.action = RouteAction::DirectResponse {
                status,
                body: String::new(),
            };
            out.mirror = None;
        }
    }
}

/// The HTTP connection manager of a filter, when it takes its routes over RDS.
fn rds_manager(filter: &listener_pb::Filter) -> Option<hcm_pb::HttpConnectionManager> {
    let Some(listener_pb::filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
        return None;
    };
    if !type_name(any).ends_with("HttpConnectionManager") {
        return None;
    }
    typed::<hcm_pb::HttpConnectionManager>(any).filter(|h| {
        matches!(
            h.route_specifier,
            Some(hcm_pb::http_connection_manager::RouteSpecifier::Rds(_))
        )
    })
}

/// Exact names first, then `*.suffix` by length (longest first), then `prefix.*`, then `*`.
fn host_rank(hostname: &str) -> (u8, std::cmp::Reverse<usize>, String) {
    let class = match hostname {
        "*" => 3,
        h if h.starts_with('*') => 1,
        h if h.ends_with('*') => 2,
        _ => 0,
    };
    (
        class,
        std::cmp::Reverse(hostname.len()),
        hostname.to_string(),
    )
}

#[cfg(test)]
pub(super) mod tests {
    use crate::decode::{decode_raw, parse_golden};
    use crate::translate::{translate, Nack, NodeInfo, ResourceSet};
    use bearing_proxy_config::{
        Compression, DownstreamHttpTimeouts, GatewayProtocol, PathMatch, ProxyConfig, RouteAction,
        TlsVersion,
    };
    use std::collections::BTreeMap;
    use std::time::Duration;

    const LISTENER_URL: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    const ROUTES_URL: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    const CLUSTER_URL: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

    /// The translation of the resources of a golden-format `yaml` for proxy `gw-1`.
    pub(in crate::translate) fn translated(yaml: &str) -> Result<ProxyConfig, Vec<Nack>> {
        let mut set = ResourceSet::default();
        for raw in parse_golden(yaml, "test.yaml").unwrap() {
            let r = decode_raw(&raw, "test.yaml").unwrap();
            set.insert(&r.name, &r.resource.type_url, &r.resource.value)
                .unwrap();
        }
        let node = NodeInfo {
            name: "gw-1".into(),
            mesh: "default".into(),
            proxy_type: "dataplane".into(),
            source: "test".into(),
        };
        translate(&set, &node)
    }

    /// Kuma's gateway HTTP connection manager (its builtin gateway defaults) taking the routes
    /// `routes` over RDS, with `extra` lines added to it (at its indentation).
    fn hcm(routes: &str, extra: &str) -> String {
        format!(
            "          '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          commonHttpProtocolOptions: {{headersWithUnderscoresAction: REJECT_REQUEST, idleTimeout: 300s}}
          http2ProtocolOptions: {{allowConnect: true, maxConcurrentStreams: 100}}
          httpFilters:
          - name: envoy.filters.http.local_ratelimit
            typedConfig: {{'@type': type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit, statPrefix: rate_limit}}
          - name: gzip-compress
            typedConfig:
              '@type': type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              compressorLibrary:
                name: gzip
                typedConfig: {{'@type': type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip}}
              responseDirectionConfig: {{disableOnEtagHeader: true}}
          - name: envoy.filters.http.router
            typedConfig: {{'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
          mergeSlashes: true
          normalizePath: true
          pathWithEscapedSlashesAction: UNESCAPE_AND_REDIRECT
          rds: {{configSource: {{ads: {{}}, resourceApiVersion: V3}}, routeConfigName: '{routes}'}}
          requestHeadersTimeout: 0.500s
          serverName: Kuma Gateway
          statPrefix: gateway-default
          streamIdleTimeout: 5s
          useRemoteAddress: true
{extra}"
        )
    }

    /// An HTTP gateway listener on 10.0.0.1:8080 with `hcm_extra` in its connection manager,
    /// its routes (`/api` → api, the rest → web on foo.example.com; Kuma's 404 on `*`) with
    /// `route_extra` in the configuration, and the clusters.
    fn http_gateway(hcm_extra: &str, route_extra: &str) -> String {
        let mut text = format!(
            "resources:
- name: gw:HTTP:8080
  resource:
    '@type': {LISTENER_URL}
    name: gw:HTTP:8080
    address: {{socketAddress: {{address: 10.0.0.1, portValue: 8080}}}}
    perConnectionBufferLimitBytes: 32768
    trafficDirection: INBOUND
    filterChains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typedConfig:
{}",
            hcm("gw:HTTP:8080:*", hcm_extra)
        );
        text.push_str(&format!(
            "- name: 'gw:HTTP:8080:*'
  resource:
    '@type': {ROUTES_URL}
    name: 'gw:HTTP:8080:*'
    ignorePortInHostMatching: true
    requestHeadersToRemove: [x-kuma-tags]
    validateClusters: false
{route_extra}    virtualHosts:
    - name: '*'
      domains: ['*']
      routes:
      - match: {{prefix: /}}
        directResponse: {{status: 404, body: {{inlineString: No routes match}}}}
    - name: foo.example.com
      domains: [foo.example.com]
      routes:
      - match: {{prefix: /api}}
        route:
          clusterNotFoundResponseCode: INTERNAL_SERVER_ERROR
          idleTimeout: 5s
          weightedClusters:
            clusters:
            - name: api
              weight: 1
              requestHeadersToAdd: [{{header: {{key: x-kuma-tags, value: '&kuma.io/service=gw&'}}}}]
      - match: {{prefix: /}}
        route: {{cluster: web, timeout: 20s}}
"
        ));
        text.push_str(&static_clusters(&[("api", 9001), ("web", 9002)]));
        text
    }

    /// STATIC clusters of one loopback endpoint each, by name and port.
    fn static_clusters(clusters: &[(&str, u16)]) -> String {
        let mut text = String::new();
        for (name, port) in clusters {
            text.push_str(&format!(
                "- name: {name}
  resource:
    '@type': {CLUSTER_URL}
    name: {name}
    type: STATIC
    connectTimeout: 5s
    perConnectionBufferLimitBytes: 32768
    loadAssignment:
      clusterName: {name}
      endpoints: [{{lbEndpoints: [{{endpoint: {{address: {{socketAddress: {{address: 127.0.0.1, portValue: {port}}}}}}}}}]}}]
"
            ));
        }
        text
    }

    /// Kuma's HTTP gateway listener becomes the directory store's gateway listener: hosts
    /// from the route configuration's virtual hosts (most specific first), its routes in
    /// the shared model, the clusters it reaches spoken to over HTTP, each route with its own timeout.
    #[test]
    fn http_gateway_listener_takes_its_routes_over_rds() {
        let config = translated(&http_gateway("", "")).unwrap();
        let [listener] = config.listeners.as_slice() else {
            panic!("{:?}", config.listeners)
        };
        assert_eq!(listener.name, "gw:HTTP:8080");
        assert_eq!(listener.address.to_string(), "10.0.0.1:8080");
        let gw = listener.gateway.as_ref().expect("a gateway listener");
        assert_eq!(gw.protocol, GatewayProtocol::Http);
        let names: Vec<&str> = gw.hosts.iter().map(|h| h.hostname.as_str()).collect();
        assert_eq!(names, ["foo.example.com", "*"]);
        let routes = &gw.hosts[0].http_routes;
        assert_eq!(
            routes[0].matches.path,
            Some(PathMatch::StringPrefix("/api".into()))
        );
        let RouteAction::Forward { backends, .. } = &routes[0].action else {
            panic!("{:?}", routes[0].action)
        };
        assert_eq!(backends[0].cluster, "api");
        assert!(matches!(
            gw.hosts[1].http_routes[0].action,
            RouteAction::DirectResponse { status: 404, .. }
        ));
        assert_eq!(
            config.clusters["api"].protocol,
            bearing_proxy_config::Protocol::Http
        );
        // Each route carries its timeout (absent: Envoy's 15 s); the clusters keep the default.
        let timeout_to = |cluster: &str| {
            gw.hosts
                .iter()
                .flat_map(|h| &h.http_routes)
                .find_map(|r| match &r.action {
                    RouteAction::Forward {
                        backends, timeout, ..
                    } if backends[0].cluster == cluster => Some(*timeout),
                    _ => None,
                })
        };
        assert_eq!(timeout_to("api"), Some(Some(Duration::from_secs(15))));
        assert_eq!(timeout_to("web"), Some(Some(Duration::from_secs(20))));
        assert_eq!(
            config.clusters["web"].request_timeout,
            Some(Duration::from_secs(15))
        );
    }

    /// A listener naming a route configuration that has not come waits for it (as Envoy's
    /// listener warms until its RDS arrives), naming the field.
    #[test]
    fn a_gateway_whose_routes_have_not_come_awaits_them() {
        let text = http_gateway("", "");
        let cut = text.find("- name: 'gw:HTTP:8080:*'").unwrap();
        let end = text.find("\n- name: api").unwrap() + 1;
        let nacks = translated(&format!("{}{}", &text[..cut], &text[end..])).unwrap_err();
        assert!(nacks.iter().all(|n| n.awaiting), "{nacks:?}");
        assert!(
            nacks[0].field.ends_with(".rds.route_config_name"),
            "{nacks:?}"
        );
    }

    /// Kuma's gzip compressor filter gives the listener Envoy's compression defaults (with
    /// `disable_on_etag_header`); settings the runtime applies are taken, the others NACKed
    /// by path, and a listener without the filter compresses nothing.
    #[test]
    fn the_compressor_filter_gives_the_listener_its_gzip_compression() {
        let gateway = |text: &str| {
            let config = translated(text).unwrap();
            config.listeners[0].gateway.clone().unwrap()
        };
        let kuma = gateway(&http_gateway("", ""));
        assert_eq!(kuma.compression, Some(Compression::kuma_gateway()));

        let gzip =
            "{'@type': type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip}";
        let tuned = http_gateway("", "")
            .replace(gzip, "{'@type': type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip, compressionLevel: BEST_SPEED, compressionStrategy: RLE, windowBits: 15, chunkSize: 8192, memoryLevel: 9}")
            .replace(
                "responseDirectionConfig: {disableOnEtagHeader: true}",
                "responseDirectionConfig: {commonConfig: {minContentLength: 100, contentType: [Text/HTML, application/json]}, removeAcceptEncodingHeader: true, uncompressibleResponseCodes: [206]}",
            );
        let expected = Compression {
            min_content_length: 100,
            content_types: vec!["text/html".into(), "application/json".into()],
            disable_on_etag: false,
            weaken_etag: false,
            remove_accept_encoding: true,
            uncompressible_statuses: vec![206],
            level: 1,
            window_bits: 15,
            memory_level: 9,
            strategy: bearing_proxy_config::GzipStrategy::Rle,
            chunk_size: 8192,
        };
        assert_eq!(gateway(&tuned).compression, Some(expected));

        let out_of_range = http_gateway("", "").replace(gzip, "{'@type': type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip, windowBits: 8, memoryLevel: 10, chunkSize: 100}");
        let unsupported = http_gateway("", "").replace(
            "responseDirectionConfig: {disableOnEtagHeader: true}",
            "responseDirectionConfig: {disableOnEtagHeader: true, statusHeaderEnabled: true}",
        );
        for (text, fields) in [
            (
                out_of_range,
                &["window_bits", "memory_level", "chunk_size"][..],
            ),
            (unsupported, &["status_header_enabled"][..]),
        ] {
            let nacks = translated(&text).unwrap_err();
            for field in fields {
                assert!(
                    nacks
                        .iter()
                        .any(|n| n.field.ends_with(&format!(".{field}"))),
                    "{field} not in {nacks:#?}"
                );
            }
        }

        let start = http_gateway("", "");
        let from = start.find("          - name: gzip-compress").unwrap();
        let to = start
            .find("          - name: envoy.filters.http.router")
            .unwrap();
        let without = format!("{}{}", &start[..from], &start[to..]);
        assert_eq!(gateway(&without).compression, None);
    }

    /// A MeshTimeout on a gateway: the connection manager's stream idle, request, request
    /// head and connection idle timeouts go to the listener, a route's idle timeout to the
    /// route.
    #[test]
    fn gateway_timeouts_go_to_the_listener_and_its_routes() {
        let text = http_gateway("", "")
            .replace(
                "streamIdleTimeout: 5s",
                "streamIdleTimeout: 53s\n          requestTimeout: 52s",
            )
            .replace("idleTimeout: 300s", "idleTimeout: 50s")
            .replace("idleTimeout: 5s", "idleTimeout: 7s");
        let config = translated(&text).unwrap_or_else(|n| panic!("{n:#?}"));
        let listener = &config.listeners[0];
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(listener.stream_idle_timeout, secs(53));
        assert_eq!(
            listener.downstream_timeouts,
            DownstreamHttpTimeouts {
                request: secs(52),
                request_headers: Some(Duration::from_millis(500)),
                connection_idle: secs(50),
            }
        );
        let gw = listener.gateway.as_ref().expect("a gateway");
        let idles: Vec<Option<Duration>> = gw
            .hosts
            .iter()
            .flat_map(|h| &h.http_routes)
            .filter_map(|r| match &r.action {
                RouteAction::Forward { idle_timeout, .. } => Some(*idle_timeout),
                _ => None,
            })
            .collect();
        assert!(idles.contains(&secs(7)), "{idles:?}");
        // Zero is none; unset, Envoy's 5 min stream idle and 1 h connection idle.
        let zero = http_gateway("", "").replace("streamIdleTimeout: 5s", "streamIdleTimeout: 0s");
        let zero = zero.replace("idleTimeout: 300s", "idleTimeout: 0s");
        let listener = translated(&zero).unwrap().listeners.remove(0);
        assert_eq!(listener.stream_idle_timeout, None);
        assert_eq!(listener.downstream_timeouts.connection_idle, None);
        let unset = http_gateway("", "").replace("          streamIdleTimeout: 5s\n", "");
        let listener = translated(&unset).unwrap().listeners.remove(0);
        assert_eq!(listener.stream_idle_timeout, secs(300));
        // A second chain whose connection manager differs: the listener is served alike.
        let text = http_gateway("", "");
        let (listener, rest) = text.split_at(text.find("- name: 'gw:HTTP:8080:*'").unwrap());
        let chain = &listener[listener.find("    - filters:").unwrap()..];
        let other = chain.replace("streamIdleTimeout: 5s", "streamIdleTimeout: 6s");
        let nacks = translated(&format!("{listener}{other}{rest}")).unwrap_err();
        assert!(
            nacks.len() == 1
                && nacks[0].field.ends_with(".filter_chains[1]")
                && nacks[0]
                    .reason
                    .contains("timeouts of the connection manager"),
            "{nacks:#?}"
        );
        let same = translated(&format!("{listener}{chain}{rest}"));
        assert!(same.is_ok(), "{same:?}");
    }

    /// Values other than Kuma's gateway defaults, which the gateway runtime serves, are NACKed
    /// by path; so are the routes' fields beyond the model, on the RouteConfiguration.
    #[test]
    fn gateway_settings_other_than_kumas_defaults_are_nacked_by_path() {
        let text = http_gateway("", "").replace("serverName: Kuma Gateway", "serverName: envoy");
        let text = text.replace(
            "ignorePortInHostMatching: true",
            "ignorePortInHostMatching: false",
        );
        let text = text.replace("key: x-kuma-tags, value", "key: x-other, value");
        let nacks = translated(&text).unwrap_err();
        let fields: Vec<(&str, &str)> = nacks
            .iter()
            .map(|n| {
                (
                    n.resource.as_str(),
                    n.field.rsplit('.').next().unwrap_or(""),
                )
            })
            .collect();
        for wanted in [
            ("gw:HTTP:8080", "server_name"),
            ("gw:HTTP:8080:*", "ignore_port_in_host_matching"),
            ("gw:HTTP:8080:*", "request_headers_to_add[0]"),
        ] {
            assert!(fields.contains(&wanted), "{wanted:?} not in {nacks:#?}");
        }
        // A sidecar's inline route configuration still gets the gateway's fields NACKed.
        assert!(nacks.iter().all(|n| !n.awaiting));
        // Kuma's default MeshRetry is the route's; a gRPC condition is not taken.
        let retry = http_gateway("", "").replace(
            "timeout: 20s}",
            "timeout: 20s, retryPolicy: {retryOn: 'gateway-error,connect-failure', numRetries: 5}}",
        );
        let config = translated(&retry).unwrap();
        let gw = config.listeners[0].gateway.as_ref().expect("a gateway");
        let retries: Vec<Option<u32>> = gw
            .hosts
            .iter()
            .flat_map(|h| &h.http_routes)
            .map(|r| match &r.action {
                RouteAction::Forward { retry, .. } => retry.as_ref().map(|r| r.num_retries),
                _ => None,
            })
            .collect();
        assert!(retries.contains(&Some(5)), "{retries:?}");
        let rate_limited = http_gateway("", "").replace(
            "timeout: 20s}",
            "timeout: 20s, retryPolicy: {retryOn: envoy-ratelimited}}",
        );
        let nacks = translated(&rate_limited).unwrap_err();
        assert!(
            nacks[0].field.ends_with(".retry_policy.retry_on")
                && nacks[0].reason.contains("\"envoy-ratelimited\""),
            "{nacks:?}"
        );
    }

    /// A route whose backend kuma-cp could not resolve answers its
    /// `cluster_not_found_response_code` (as Envoy does), instead of waiting for a Cluster
    /// that never comes.
    #[test]
    fn a_route_to_kumas_unresolved_backend_answers_its_not_found_code() {
        let text = http_gateway("", "").replace(
            "            - name: api\n",
            "            - name: kuma.io/unresolved-backend\n",
        );
        let config = translated(&text).unwrap();
        let gw = config.listeners[0].gateway.as_ref().unwrap();
        assert!(
            matches!(
                gw.hosts[0].http_routes[0].action,
                RouteAction::DirectResponse { status: 500, .. }
            ),
            "{:?}",
            gw.hosts[0].http_routes[0].action
        );
        assert!(!config.clusters.contains_key("kuma.io/unresolved-backend"));
    }

    /// Kuma's runtime layer gives a gateway listener its connection limit; a limit naming no
    /// gateway listener, or another key, is NACKed by its path.
    #[test]
    fn runtime_layer_gives_the_connection_limit() {
        let runtime = |key: &str| {
            format!(
                "- name: gateway.listeners
  resource:
    '@type': type.googleapis.com/envoy.service.runtime.v3.Runtime
    name: gateway.listeners
    layer: {{'{key}': 100}}
"
            )
        };
        let limited = format!(
            "{}{}",
            http_gateway("", ""),
            runtime("envoy.resource_limits.listener.gw:HTTP:8080.connection_limit")
        );
        let config = translated(&limited).unwrap();
        let gw = config.listeners[0].gateway.as_ref().unwrap();
        assert_eq!(gw.connection_limit, Some(100));
        let other = format!(
            "{}{}",
            http_gateway("", ""),
            runtime("envoy.resource_limits.listener.other:HTTP:1.connection_limit")
        );
        let nacks = translated(&other).unwrap_err();
        assert_eq!(nacks[0].resource, "gateway.listeners");
        assert!(nacks[0].field.contains("other:HTTP:1"), "{nacks:?}");
    }

    /// An HTTPS listener: a chain per hostname matching its SNI, terminating TLS with the
    /// hostname's certificate from SDS (awaited until it comes); that certificate is the
    /// host's.
    #[test]
    fn https_gateway_chains_present_their_sds_certificate() {
        use base64::Engine;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["foo.example.com".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let http = http_gateway("", "");
        let tls = http.replacen(
            "    filterChains:\n    - filters:",
            "    filterChains:
    - filterChainMatch: {serverNames: [foo.example.com], transportProtocol: tls}
      transportSocket:
        name: envoy.transport_sockets.tls
        typedConfig:
          '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          requireClientCertificate: false
          commonTlsContext:
            alpnProtocols: [h2, http/1.1]
            tlsParams: {tlsMinimumProtocolVersion: TLSv1_2}
            tlsCertificateSdsSecretConfigs: [{name: 'cert.rsa:secret:foo', sdsConfig: {ads: {}, resourceApiVersion: V3}}]
      filters:",
            1,
        );
        let nacks = translated(&tls).unwrap_err();
        assert!(nacks.iter().all(|n| n.awaiting), "{nacks:?}");
        let secret = format!(
            "- name: 'cert.rsa:secret:foo'
  resource:
    '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
    name: 'cert.rsa:secret:foo'
    tlsCertificate:
      certificateChain: {{inlineBytes: {}}}
      privateKey: {{inlineBytes: {}}}
",
            b64(&cert.pem()),
            b64(&key.serialize_pem())
        );
        let config = translated(&format!("{tls}{secret}")).unwrap();
        let gw = config.listeners[0].gateway.as_ref().unwrap();
        assert_eq!(gw.protocol, GatewayProtocol::Https);
        let certificate = gw.hosts[0].certificate.as_ref().expect("certificate");
        assert_eq!(certificate.origin, "Secret/cert.rsa:secret:foo");
        assert_eq!(certificate.cert_chain_pem, cert.pem());
        // A certificate that does not load is NACKed on its Secret's field, not served.
        let broken = secret.replace(&b64(&key.serialize_pem()), &b64("not a key"));
        let nacks = translated(&format!("{tls}{broken}")).unwrap_err();
        assert!(nacks[0].reason.contains("does not load"), "{nacks:?}");
        assert!(
            nacks[0]
                .field
                .starts_with("secrets[\"cert.rsa:secret:foo\"]"),
            "{nacks:?}"
        );
    }

    /// The resources file of a gateway listener `name` as kuma-cp renders TCP and TLS ones
    /// (`<gateway>:<PROTOCOL>:<port>`, on 10.0.0.1 and that port, with the TLS inspector),
    /// whose filter chains are `chains`.
    fn stream_listener(name: &str, chains: &str) -> String {
        let port = name.rsplit(':').next().unwrap();
        format!(
            "resources:
- name: {name}
  resource:
    '@type': {LISTENER_URL}
    name: {name}
    address: {{socketAddress: {{address: 10.0.0.1, portValue: {port}}}}}
    enableReusePort: true
    perConnectionBufferLimitBytes: 32768
    trafficDirection: INBOUND
    listenerFilters:
    - name: envoy.filters.listener.tls_inspector
      typedConfig: {{'@type': type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}
    filterChains:
{chains}"
        )
    }

    /// A TCP gateway listener (`<gateway>:TCP:<port>`) with `chain` as its one filter chain,
    /// the clusters `a` and `b`, and Kuma's runtime layer limiting it to 3 connections.
    fn tcp_gateway(chain: &str) -> String {
        let mut text = format!(
            "{}- name: gateway.listeners
  resource:
    '@type': type.googleapis.com/envoy.service.runtime.v3.Runtime
    name: gateway.listeners
    layer: {{'envoy.resource_limits.listener.gw:TCP:9000.connection_limit': 3}}
",
            stream_listener("gw:TCP:9000", chain)
        );
        text.push_str(&static_clusters(&[("a", 9001), ("b", 9002)]));
        text
    }

    /// A chain's `tcp_proxy`, with `spec` (a cluster or weighted clusters).
    fn tcp_chain(spec: &str) -> String {
        format!(
            "    - filters:
      - name: envoy.filters.network.tcp_proxy
        typedConfig: {{'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, statPrefix: gw, {spec}}}
"
        )
    }

    /// Kuma's TCP gateway listener becomes the directory store's form: one host `*` whose
    /// backends are the tcp_proxy's clusters by weight (one cluster: weight 1), with the
    /// runtime layer's connection limit; a chain without filters (no route) has no backend,
    /// so connections are closed, as Envoy closes them.
    #[test]
    fn tcp_gateway_listener_spreads_connections_by_weight_under_its_limit() {
        use bearing_proxy_config::{Protocol, WeightedCluster};
        let backend = |cluster: &str, weight| WeightedCluster {
            cluster: cluster.into(),
            weight,
        };
        let cases = [
            (
                tcp_chain(
                    "weightedClusters: {clusters: [{name: a, weight: 30}, {name: b, weight: 70}]}",
                ),
                vec![backend("a", 30), backend("b", 70)],
            ),
            (tcp_chain("cluster: b"), vec![backend("b", 1)]),
            ("    - {}\n".to_string(), vec![]),
        ];
        for (chain, backends) in cases {
            let config = translated(&tcp_gateway(&chain)).unwrap();
            let [listener] = config.listeners.as_slice() else {
                panic!("{:?}", config.listeners)
            };
            assert_eq!(listener.protocol, Protocol::Tcp);
            let gw = listener.gateway.as_ref().expect("a gateway listener");
            assert_eq!(gw.protocol, GatewayProtocol::Tcp);
            assert_eq!(gw.connection_limit, Some(3));
            let [host] = gw.hosts.as_slice() else {
                panic!("{:?}", gw.hosts)
            };
            assert_eq!(host.hostname, "*");
            assert_eq!(host.tcp_backends, backends, "{chain}");
            for b in &backends {
                assert_eq!(config.clusters[&b.cluster].protocol, Protocol::Tcp);
            }
            assert_eq!(listener.max_connect_attempts, 1, "Envoy's default");
        }
        // kuma-cp's default MeshRetry on a gateway TCP route.
        let chain = tcp_chain("cluster: b, maxConnectAttempts: 5");
        let config = translated(&tcp_gateway(&chain)).unwrap();
        assert_eq!(config.listeners[0].max_connect_attempts, 5);
        // A MeshAccessLog on the gateway: the TCP proxy's file log is the listener's.
        let log = "accessLog: [{name: f, typedConfig: {'@type': type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: /dev/stdout, logFormat: {textFormatSource: {inlineString: \"%UPSTREAM_HOST%\\n\"}}}}]";
        let chain = tcp_chain(&format!("cluster: b, {log}"));
        let config = translated(&tcp_gateway(&chain)).unwrap();
        let [logged] = config.listeners[0].access_logs.as_slice() else {
            panic!("{:?}", config.listeners[0].access_logs)
        };
        assert_eq!(logged.path, "/dev/stdout");
    }

    /// What a TCP gateway chain cannot be is NACKed by its path: a match, TLS (TLS gateway
    /// listeners), an HTTP connection manager, endpoint subsets, a second chain; a cluster
    /// that has not come is awaited.
    #[test]
    fn tcp_gateway_chains_beyond_kumas_shape_are_nacked_by_path() {
        let proxy = tcp_chain("cluster: a");
        let cases = [
            (
                proxy.replacen(
                    "    - filters:",
                    "    - filterChainMatch: {destinationPort: 9000}\n      filters:",
                    1,
                ),
                ".filter_chains[0].filter_chain_match",
            ),
            (
                proxy.replace(
                    "cluster: a}",
                    "cluster: a, metadataMatch: {filterMetadata: {envoy.lb: {v: '1'}}}}",
                ),
                ".filter_chains[0].filters",
            ),
            (format!("{proxy}{proxy}"), ".filter_chains"),
        ];
        for (chain, field) in cases {
            let nacks = translated(&tcp_gateway(&chain)).unwrap_err();
            assert!(
                nacks.iter().any(|n| n.resource == "gw:TCP:9000"
                    && n.field.ends_with(field)
                    && !n.awaiting),
                "{field} not in {nacks:#?}"
            );
        }
        let missing = translated(&tcp_gateway(&tcp_chain("cluster: c"))).unwrap_err();
        assert!(missing.iter().all(|n| n.awaiting), "{missing:?}");
    }

    /// A TLS gateway listener (`<gateway>:TLS:<port>`) with `chains` as its filter chains, the
    /// clusters `a` and `b`, and the certificates `cert.rsa:secret:api` (api.kuma.io) and
    /// `cert.rsa:secret:wild` (*.example.com) as SDS Secrets, whose PEMs come back by name.
    fn tls_gateway(chains: &str) -> (String, BTreeMap<&'static str, String>) {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut text = stream_listener("gw:TLS:9443", chains);
        let mut pems = BTreeMap::new();
        for (secret, host) in [("api", "api.kuma.io"), ("wild", "*.example.com")] {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec![host.to_string()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            text.push_str(&format!(
                "- name: 'cert.rsa:secret:{secret}'
  resource:
    '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
    name: 'cert.rsa:secret:{secret}'
    tlsCertificate:
      certificateChain: {{inlineBytes: {}}}
      privateKey: {{inlineBytes: {}}}
",
                b64(&cert.pem()),
                b64(&key.serialize_pem())
            ));
            pems.insert(secret, cert.pem());
        }
        text.push_str(&static_clusters(&[("a", 9001), ("b", 9002)]));
        (text, pems)
    }

    /// A TLS gateway chain as kuma-cp renders one: matched by TLS and `names` (none: `*`),
    /// terminating TLS with the certificate Secret `cert` (none: passthrough), its
    /// `tcp_proxy` to `spec` with Kuma's gateway idle timeout.
    fn tls_chain(names: &[&str], cert: Option<&str>, spec: &str) -> String {
        let names = match names {
            [] => String::new(),
            names => format!(", serverNames: [{}]", names.join(", ")),
        };
        let socket = cert.map_or(String::new(), |secret| format!(
            "      transportSocket:
        name: envoy.transport_sockets.tls
        typedConfig:
          '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          requireClientCertificate: false
          commonTlsContext:
            tlsParams: {{tlsMinimumProtocolVersion: TLSv1_2}}
            tlsCertificateSdsSecretConfigs: [{{name: 'cert.rsa:secret:{secret}', sdsConfig: {{ads: {{}}, resourceApiVersion: V3}}}}]
"
        ));
        format!(
            "    - filterChainMatch: {{transportProtocol: tls{names}}}
{socket}      filters:
      - name: envoy.filters.network.tcp_proxy
        typedConfig: {{'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, statPrefix: gateway-default, idleTimeout: 300s, {spec}}}
"
        )
    }

    /// Kuma's TLS gateway listener becomes the directory store's: a host per server name
    /// (exact, `*.` wildcard, and `*` for a chain matched by none), most specific first, each
    /// with its chain's TCP backends by weight and, when the chain terminates TLS, its
    /// certificate from SDS (TLS terminate, no client certificate); chains without TLS make
    /// a passthrough listener. The clusters are reached over TCP; Kuma's gateway idle
    /// timeout (300 s) is taken.
    #[test]
    fn tls_gateway_chains_become_hosts_by_server_name() {
        use bearing_proxy_config::{Protocol, WeightedCluster};
        let backend = |cluster: &str, weight| WeightedCluster {
            cluster: cluster.into(),
            weight,
        };
        let split = "weightedClusters: {clusters: [{name: a, weight: 1}, {name: b, weight: 3}]}";
        for terminate in [true, false] {
            let cert = |secret| terminate.then_some(secret);
            let chains = [
                tls_chain(&[], cert("api"), "cluster: a"),
                tls_chain(&["'*.example.com'"], cert("wild"), "cluster: b"),
                tls_chain(&["api.kuma.io"], cert("api"), split),
            ];
            let (text, pems) = tls_gateway(&chains.concat());
            let config = translated(&text).unwrap();
            let [listener] = config.listeners.as_slice() else {
                panic!("{:?}", config.listeners)
            };
            assert_eq!(listener.protocol, Protocol::Tcp);
            assert_eq!(listener.address.to_string(), "10.0.0.1:9443");
            let gw = listener.gateway.as_ref().expect("a gateway listener");
            let protocol = match terminate {
                true => GatewayProtocol::TlsTerminate,
                false => GatewayProtocol::TlsPassthrough,
            };
            assert_eq!(gw.protocol, protocol);
            let hosts: Vec<(&str, &[WeightedCluster], Option<&str>)> = gw
                .hosts
                .iter()
                .map(|h| {
                    let pem = h.certificate.as_ref().map(|c| c.cert_chain_pem.as_str());
                    (h.hostname.as_str(), h.tcp_backends.as_slice(), pem)
                })
                .collect();
            let pem = |secret| terminate.then(|| pems[secret].as_str());
            assert_eq!(
                hosts,
                [
                    (
                        "api.kuma.io",
                        &[backend("a", 1), backend("b", 3)][..],
                        pem("api")
                    ),
                    ("*.example.com", &[backend("b", 1)][..], pem("wild")),
                    ("*", &[backend("a", 1)][..], pem("api")),
                ]
            );
            if terminate {
                let origin = &gw.hosts[1].certificate.as_ref().unwrap().origin;
                assert_eq!(origin, "Secret/cert.rsa:secret:wild");
            }
            for cluster in ["a", "b"] {
                assert_eq!(config.clusters[cluster].protocol, Protocol::Tcp);
            }
        }
    }

    /// What a TLS gateway listener cannot be is NACKed by its path: a client certificate
    /// required or verified, ALPN offered or matched, a cipher list Envoy refuses, chains
    /// asking for different TLS parameters, another
    /// idle timeout than Kuma's gateway default, a chain not matched by TLS, a server name
    /// form Envoy does not match, one name on two chains, and terminating beside passthrough
    /// chains; a certificate Secret that has not come is awaited.
    #[test]
    fn tls_gateway_chains_beyond_kumas_shape_are_nacked_by_path() {
        let chain = tls_chain(&["api.kuma.io"], Some("api"), "cluster: a");
        let other = tls_chain(&["'*.example.com'"], Some("wild"), "cluster: b");
        let passthrough = tls_chain(&["'*.example.com'"], None, "cluster: b");
        let edit = |from: &str, to: &str| {
            assert!(chain.contains(from), "{from}");
            chain.replace(from, to)
        };
        let cases = [
            (
                edit(
                    "requireClientCertificate: false",
                    "requireClientCertificate: true",
                ),
                ".require_client_certificate",
            ),
            (
                edit(
                    "tlsParams: {tlsMinimumProtocolVersion: TLSv1_2}",
                    "tlsParams: {tlsMinimumProtocolVersion: TLSv1_2}
            alpnProtocols: [h2]",
                ),
                ".common_tls_context.alpn_protocols",
            ),
            (
                edit(
                    "tlsParams: {tlsMinimumProtocolVersion: TLSv1_2}",
                    "tlsParams: {tlsMinimumProtocolVersion: TLSv1_2}
            validationContext: {trustedCa: {inlineString: x}}",
                ),
                ".common_tls_context.validation_context_type",
            ),
            (edit("TLSv1_2", "TLSv1_0"), ".common_tls_context.tls_params"),
            (
                edit(
                    "tlsParams: {tlsMinimumProtocolVersion: TLSv1_2}",
                    "tlsParams: {tlsMinimumProtocolVersion: TLSv1_2, cipherSuites: [NOT-A-CIPHER]}",
                ),
                ".common_tls_context.tls_params.cipher_suites",
            ),
            (
                edit("idleTimeout: 300s", "idleTimeout: 60s"),
                ".idle_timeout",
            ),
            (
                edit("transportProtocol: tls", "transportProtocol: raw_buffer"),
                ".filter_chain_match.transport_protocol",
            ),
            (
                edit(
                    "transportProtocol: tls",
                    "transportProtocol: tls, applicationProtocols: [h2]",
                ),
                ".filter_chain_match.application_protocols",
            ),
            (
                edit(
                    "serverNames: [api.kuma.io]",
                    "serverNames: [api.kuma.io, 'api.*']",
                ),
                ".filter_chain_match.server_names[1]",
            ),
            (
                format!("{chain}{chain}"),
                ".filter_chains[1].filter_chain_match.server_names",
            ),
            (format!("{chain}{passthrough}"), ".filter_chains"),
        ];
        for (chains, field) in cases {
            let (text, _) = tls_gateway(&format!("{chains}{other}"));
            let nacks = translated(&text).unwrap_err();
            assert!(
                nacks.iter().any(|n| n.resource == "gw:TLS:9443"
                    && n.field.ends_with(field)
                    && !n.awaiting),
                "{field} not in {nacks:#?}"
            );
        }
        // The same parameters on every chain are the listener's, as Envoy reads a server's.
        let tls13 = |c: &str| c.replace("TLSv1_2", "TLSv1_3");
        let (text, _) = tls_gateway(&format!("{}{}", tls13(&chain), tls13(&other)));
        let config = translated(&text).unwrap();
        let listener = config.listeners.iter().find(|l| l.name == "gw:TLS:9443");
        let params = listener.and_then(|l| l.gateway.as_ref()?.tls_params.as_ref());
        let params = params.unwrap();
        assert_eq!(
            (params.min_version, params.max_version),
            (TlsVersion::V1_3, TlsVersion::V1_3)
        );
        let (text, _) = tls_gateway(&tls_chain(&["api.kuma.io"], Some("nowhere"), "cluster: a"));
        let missing = translated(&text).unwrap_err();
        assert!(
            missing.iter().all(|n| n.awaiting) && missing[0].field.ends_with(".name"),
            "{missing:?}"
        );
    }

    /// kuma-cp's cross-mesh listener: chains matched by ALPN `kuma` terminating mesh mTLS
    /// (the gateway's identity in `default`, clients verified against the all-in-one CA
    /// `mesh_ca:secret:all`, whose bundle is the CAs of `default` and of another mesh).
    fn cross_mesh_gateway() -> (String, String) {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let other_ca = params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
            .pem();
        let bundle = format!("{}{other_ca}", crate::translate::tests::test_ca().0);
        let text = http_gateway("", "").replacen(
            "    filterChains:\n    - filters:",
            "    filterChains:
    - filterChainMatch: {applicationProtocols: [kuma], transportProtocol: tls}
      transportSocket:
        name: envoy.transport_sockets.tls
        typedConfig:
          '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          requireClientCertificate: true
          commonTlsContext:
            combinedValidationContext:
              defaultValidationContext: {}
              validationContextSdsSecretConfig: {name: 'mesh_ca:secret:all', sdsConfig: {ads: {}, resourceApiVersion: V3}}
            tlsCertificateSdsSecretConfigs: [{name: 'identity_cert:secret:default', sdsConfig: {ads: {}, resourceApiVersion: V3}}]
      filters:",
            1,
        );
        let all = format!(
            "- name: 'mesh_ca:secret:all'
  resource:
    '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
    name: 'mesh_ca:secret:all'
    validationContext: {{trustedCa: {{inlineBytes: {}}}}}
",
            b64(&bundle)
        );
        (format!("{text}{}", crate::translate::tests::secrets()), all)
    }

    /// A cross-mesh listener becomes the store's cross-mesh HTTP gateway listener: its
    /// routes, the mesh whose identity it presents (whose mTLS the config then carries), and
    /// each CA of the all-in-one bundle as a client CA; awaited until the CA secret comes;
    /// a bundle that does not load, a SAN check, or a client certificate not required are
    /// NACKed by path.
    #[test]
    fn cross_mesh_chains_take_mesh_mtls_from_any_mesh() {
        let (text, all) = cross_mesh_gateway();
        let config = translated(&format!("{text}{all}")).unwrap();
        let gw = config.listeners[0].gateway.as_ref().unwrap();
        assert_eq!(gw.protocol, GatewayProtocol::Http);
        let cross = gw.cross_mesh.as_ref().expect("a cross-mesh listener");
        assert_eq!(cross.identity_mesh, "default");
        assert_eq!(cross.client_ca_pems.len(), 2);
        assert_eq!(
            cross.client_ca_pems[0],
            crate::translate::tests::test_ca().0
        );
        assert!(config.mtls.contains_key("default"));
        assert!(gw.hosts.iter().all(|h| h.certificate.is_none()));
        assert_eq!(gw.hosts[0].hostname, "foo.example.com");

        let awaiting = translated(&text).unwrap_err();
        assert!(awaiting.iter().all(|n| n.awaiting), "{awaiting:?}");
        let broken = all.replacen("inlineBytes: ", "inlineBytes: AAAA", 1);
        let nacks = translated(&format!("{text}{broken}")).unwrap_err();
        assert!(
            nacks.iter().any(|n| n.resource == "mesh_ca:secret:all"),
            "{nacks:?}"
        );
        let cases = [
            (
                text.replace("requireClientCertificate: true", "requireClientCertificate: false"),
                "require_client_certificate",
            ),
            (
                text.replace(
                    "defaultValidationContext: {}",
                    "defaultValidationContext: {matchTypedSubjectAltNames: [{sanType: URI, matcher: {exact: 'spiffe://default/x'}}]}",
                ),
                "combined_validation_context",
            ),
            (
                text.replace("applicationProtocols: [kuma]", "applicationProtocols: [h2]"),
                "application_protocols",
            ),
        ];
        for (case, field) in cases {
            let nacks = translated(&format!("{case}{all}")).unwrap_err();
            assert!(
                nacks
                    .iter()
                    .any(|n| n.field.ends_with(field) && !n.awaiting),
                "{field} not in {nacks:#?}"
            );
        }
    }

    /// HTTP/2 windows are real settings: the gateway connection manager's become the
    /// listener's (its HTTP server's), an HTTP/2 cluster's its client's; a window outside
    /// Envoy's bounds is NACKed by path.
    #[test]
    fn http2_windows_go_to_the_listener_and_the_cluster() {
        use bearing_proxy_config::{Http2Windows, Protocol};
        let windows = "initialConnectionWindowSize: 1048576, initialStreamWindowSize: 65536";
        let text = http_gateway("", "")
            .replace(
                "http2ProtocolOptions: {allowConnect: true, maxConcurrentStreams: 100}",
                &format!("http2ProtocolOptions: {{allowConnect: true, maxConcurrentStreams: 100, {windows}}}"),
            )
            .replacen(
                "    connectTimeout: 5s\n",
                &format!("    connectTimeout: 5s
    typedExtensionProtocolOptions:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicitHttpConfig: {{http2ProtocolOptions: {{{windows}}}}}
"),
                1,
            );
        let config = translated(&text).unwrap();
        let expected = Http2Windows {
            stream: Some(65536),
            connection: Some(1048576),
        };
        assert_eq!(config.listeners[0].http2_windows, expected);
        assert_eq!(config.clusters["api"].protocol, Protocol::Http2);
        assert_eq!(config.clusters["api"].http2_windows, expected);
        assert!(config.clusters["web"].http2_windows.is_default());

        let small = text.replace(
            "initialStreamWindowSize: 65536",
            "initialStreamWindowSize: 100",
        );
        let nacks = translated(&small).unwrap_err();
        for resource in ["gw:HTTP:8080", "api"] {
            assert!(
                nacks.iter().any(|n| n.resource == resource
                    && n.field
                        .ends_with("http2_protocol_options.initial_stream_window_size")),
                "{resource} not in {nacks:#?}"
            );
        }
    }
}

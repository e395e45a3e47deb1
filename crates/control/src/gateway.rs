//! Builtin gateways: a Dataplane with `networking.gateway.type: BUILTIN` gets the listeners of
//! the MeshGateway its gateway tags select, with the MeshGatewayRoutes that select each
//! listener's tags.
//!
//! - The MeshGateway whose selector matches with the highest rank (exact tags, then
//!   wildcards) wins; a tie goes to the first by name.
//! - Listeners on one port form one listener named `<MeshGateway>:<PROTOCOL>:<port>` (Kuma's
//!   listener name, e.g. `edge-gateway:HTTP:8080`) with one host per hostname (default `*`);
//!   their protocols must agree.
//! - Hosts and their routes follow Kuma (`MakeGatewayListener`, `RedistributeWildcardRoutes`,
//!   `GenerateEnvoyRouteEntries`): each listener gives a host named by its hostname (default
//!   `*`) holding the routes that select it. HTTP listeners of a port form one group, HTTPS and
//!   TLS ones one group per hostname. In a group with a `*` host, a route that names
//!   hostnames leaves `*`: each name gets it, on the group's host of that name or on a new
//!   host (with `*`'s certificate) that holds only such routes; a `*.suffix` name also gives it
//!   to every host of the group under that suffix (all of them: Kuma gives it to those that
//!   exist when it meets the route, which depends on route order). Routes without hostnames stay on `*`. So a
//!   host named by a route serves only the routes for that name, and hostname-less routes
//!   serve the other names. A host other than `*` serves its routes without hostnames and
//!   those with a name matching its own (equal, or one a wildcard domain holding the other).
//!   Kuma matches a `*.suffix` name against host names by bare string suffix; here the
//!   suffix must start at a label (`*.example.com` is not given to `myexample.com`).
//! - Route precedence within a host, as Kuma's route sorter orders by specificity: exact paths
//!   (longer first), then prefixes (longer first; a rule without a path counts as prefix `/`),
//!   then regexes (longer first); then a method before none, more header matches first, more
//!   query matches first; then the path text; remaining ties keep resource-name and rule
//!   order. One rule with several matches gives one route per match.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bearing_model::{
    Dataplane, HeaderChanges, HttpRule, HttpRuleMatch, MeshGateway, MeshGatewayListener,
    MeshGatewayRoute, Problem, Resource, RouteBackend, Spec, Store, Tags, SERVICE_TAG,
};
use bearing_proxy_config::{
    Cluster, Compression, CrossMesh, Direction, DownstreamHttpTimeouts, Endpoint,
    GatewayCertificate, GatewayHost, GatewayListener, GatewayProtocol, HeaderFilter, HeaderMatch,
    HttpMatch, HttpRoute, Listener, Mirror, PathMatch, PathRewrite, Protocol, QueryMatch, Redirect,
    RetryPolicy, Rewrite, RouteAction, UpstreamTls, ValueMatch, WeightedCluster,
};

use crate::compile::{problem, Destination, Outbounds};
use crate::mtls::{mesh_ca_cert, mesh_of, meshes, resolve, server_identities};

/// Listeners and clusters of a builtin gateway Dataplane.
pub(crate) struct GatewayParts {
    pub listeners: Vec<Listener>,
    pub clusters: Vec<Cluster>,
}

/// Compiles the listeners of the builtin gateway `me` (`dp`) in `mesh`.
pub(crate) fn compile(
    store: &Store,
    me: &Resource,
    dp: &Dataplane,
    mesh: &str,
    outbounds: &Outbounds,
) -> Result<GatewayParts, Vec<Problem>> {
    let mut parts = GatewayParts {
        listeners: Vec::new(),
        clusters: Vec::new(),
    };
    let Some(gw_tags) = dp.networking.gateway.as_ref().map(|g| &g.tags) else {
        return Ok(parts);
    };
    let Some((gw_resource, gw)) = select_gateway(store, mesh, gw_tags) else {
        tracing::warn!(dataplane = %me.meta.name, "no MeshGateway selects this builtin gateway; it has no listeners");
        return Ok(parts);
    };
    let ip = dp.networking.address.parse().map_err(|_| {
        vec![problem(
            me,
            Some("networking.address"),
            format!(
                "{:?} must be an IP address to bind gateway listeners",
                dp.networking.address
            ),
        )]
    })?;
    let service = gw_tags.get(SERVICE_TAG).cloned().unwrap_or_default();
    let routes: Vec<(&Resource, &MeshGatewayRoute)> = store
        .resources
        .iter()
        .filter(|r| mesh_of(r) == mesh)
        .filter_map(|r| match &r.spec {
            Spec::MeshGatewayRoute(route) => Some((r, route)),
            _ => None,
        })
        .collect();
    let mut problems = Vec::new();
    let mut by_port: BTreeMap<u32, Vec<(usize, &MeshGatewayListener)>> = BTreeMap::new();
    for (i, l) in gw.conf.listeners.iter().enumerate() {
        by_port.entry(l.port).or_default().push((i, l));
    }
    for (port, specs) in by_port {
        let protocol = protocol_of(specs[0].1);
        if let Some((i, other)) = specs.iter().find(|(_, l)| protocol_of(l) != protocol) {
            problems.push(problem(
                gw_resource,
                Some(&format!("conf.listeners[{i}].protocol")),
                format!(
                    "port {port} already has a listener of another protocol than {}",
                    other.protocol
                ),
            ));
            continue;
        }
        let http = matches!(protocol, GatewayProtocol::Http | GatewayProtocol::Https);
        let cross_mesh = specs.iter().any(|(_, l)| l.cross_mesh);
        if cross_mesh && !outbounds.mtls {
            problems.push(problem(
                gw_resource,
                Some("conf.listeners"),
                format!("a crossMesh listener needs mesh mTLS, and mesh {mesh:?} has none"),
            ));
            continue;
        }
        let mut listener_tags = Tags::new();
        let mut limit = None;
        let mut groups: BTreeMap<String, Vec<PendingHost>> = BTreeMap::new();
        for (i, spec) in &specs {
            let mut tags = gw_tags.clone();
            tags.extend(gw.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
            tags.extend(spec.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
            let hostname = spec
                .hostname
                .clone()
                .unwrap_or_else(|| "*".into())
                .to_ascii_lowercase();
            let certificate = match certificate(store, mesh, spec) {
                Ok(c) => c,
                Err((field, message)) => {
                    problems.push(problem(
                        gw_resource,
                        Some(&format!("conf.listeners[{i}].{field}")),
                        message,
                    ));
                    continue;
                }
            };
            limit = limit.or(spec.resources.as_ref().and_then(|r| r.connection_limit));
            let attached = routes
                .iter()
                .filter(|(_, r)| r.selectors.iter().any(|s| s.matches(&tags)));
            listener_tags.extend(tags.clone());
            let group_key = match protocol {
                GatewayProtocol::Http | GatewayProtocol::Tcp => "*".to_string(),
                _ => hostname.clone(),
            };
            let group = groups.entry(group_key).or_default();
            match group.iter_mut().find(|h| h.hostname == hostname) {
                Some(h) => h.routes.extend(attached),
                None => group.push(PendingHost {
                    hostname,
                    certificate,
                    routes: attached.collect(),
                }),
            }
        }
        // Each route is compiled once, whatever the number of hosts it serves.
        let mut compiled: BTreeMap<&str, Vec<HttpRoute>> = BTreeMap::new();
        let mut hosts: Vec<GatewayHost> = Vec::new();
        for pending in groups.into_values().flat_map(redistribute_wildcard_routes) {
            let mut h = host(&pending.hostname, pending.certificate);
            for (r, route) in pending.routes {
                if http {
                    let Some(conf) = &route.conf.http else {
                        continue;
                    };
                    if !serves_host(&h.hostname, &conf.hostnames) {
                        continue;
                    }
                    let routes = compiled.entry(r.meta.name.as_str()).or_insert_with(|| {
                        http_routes(r, &conf.rules, outbounds, &mut parts.clusters)
                    });
                    h.http_routes.extend(routes.iter().cloned());
                } else if let Some(tcp) = &route.conf.tcp {
                    for rule in &tcp.rules {
                        h.tcp_backends.extend(backends(
                            &rule.backends,
                            outbounds,
                            &mut parts.clusters,
                        ));
                    }
                }
            }
            hosts.push(h);
        }
        for h in &mut hosts {
            h.http_routes
                .sort_by(|a, b| precedence(a).cmp(&precedence(b)));
        }
        hosts.sort_by_key(|h| host_rank(&h.hostname));
        let address = SocketAddr::new(ip, crate::compile::port16(port));
        parts.listeners.push(Listener {
            service: service.clone(),
            max_connect_attempts: match http {
                true => 1,
                false => crate::compile::TCP_CONNECT_ATTEMPTS,
            },
            // kuma-cp's gateway connection idle timeout, on its TCP and TLS listeners' proxies.
            tcp_idle_timeout: (!http).then_some(std::time::Duration::from_secs(300)),
            // kuma-cp's gateway connection manager: 5 s stream idle, 0.5 s for a request head,
            // 300 s idle between requests.
            stream_idle_timeout: http.then_some(std::time::Duration::from_secs(5)),
            downstream_timeouts: DownstreamHttpTimeouts {
                request: None,
                request_headers: Some(std::time::Duration::from_millis(500)),
                connection_idle: Some(std::time::Duration::from_secs(300)),
            },
            gateway: Some(GatewayListener {
                protocol,
                hosts,
                tags: listener_tags,
                connection_limit: limit,
                cross_mesh: cross_mesh.then(|| CrossMesh {
                    identity_mesh: mesh.to_string(),
                    client_ca_pems: mesh_ca_pems(store),
                }),
                // The directory store has no MeshTLS (its TLS comes from the Mesh's mtls).
                tls_params: None,
                // Kuma's gateway compresses every HTTP and HTTPS listener's responses.
                compression: http.then(Compression::kuma_gateway),
            }),
            ..Listener::new(
                format!("{}:{}:{port}", gw_resource.meta.name, specs[0].1.protocol),
                address,
                Direction::Inbound,
                if http { Protocol::Http } else { Protocol::Tcp },
            )
        });
    }
    if problems.is_empty() {
        Ok(parts)
    } else {
        Err(problems)
    }
}

/// The MeshGateway of `mesh` whose best selector matching `tags` ranks highest.
fn select_gateway<'s>(
    store: &'s Store,
    mesh: &str,
    tags: &Tags,
) -> Option<(&'s Resource, &'s MeshGateway)> {
    let mut best: Option<((usize, usize), &Resource, &MeshGateway)> = None;
    let mut candidates: Vec<(&Resource, &MeshGateway)> = store
        .resources
        .iter()
        .filter(|r| mesh_of(r) == mesh)
        .filter_map(|r| match &r.spec {
            Spec::MeshGateway(gw) => Some((r, gw)),
            _ => None,
        })
        .collect();
    candidates.sort_by(|a, b| a.0.meta.name.cmp(&b.0.meta.name));
    for (r, gw) in candidates {
        let rank = gw
            .selectors
            .iter()
            .filter(|s| s.matches(tags))
            .map(|s| s.rank())
            .max();
        if let Some(rank) = rank {
            if best.as_ref().is_none_or(|(b, _, _)| rank > *b) {
                best = Some((rank, r, gw));
            }
        }
    }
    best.map(|(_, r, gw)| (r, gw))
}

fn protocol_of(l: &MeshGatewayListener) -> GatewayProtocol {
    match l.protocol.as_str() {
        "HTTPS" => GatewayProtocol::Https,
        "TCP" => GatewayProtocol::Tcp,
        "TLS" if l.tls.as_ref().is_some_and(|t| t.passthrough()) => GatewayProtocol::TlsPassthrough,
        "TLS" => GatewayProtocol::TlsTerminate,
        _ => GatewayProtocol::Http,
    }
}

fn host(hostname: &str, certificate: Option<GatewayCertificate>) -> GatewayHost {
    GatewayHost {
        hostname: hostname.to_string(),
        certificate,
        http_routes: Vec::new(),
        tcp_backends: Vec::new(),
    }
}

/// A gateway host before its routes are compiled: its name, certificate, and the routes
/// that select its listener (or were given to it by [`redistribute_wildcard_routes`]).
struct PendingHost<'s> {
    hostname: String,
    certificate: Option<GatewayCertificate>,
    routes: Vec<&'s (&'s Resource, &'s MeshGatewayRoute)>,
}

/// Kuma's `RedistributeWildcardRoutes` over one group of hosts (see the module doc): the `*`
/// host keeps its routes without hostnames; each hostname a route names gets the route, on
/// the host of that name or a new one with `*`'s certificate; a `*.suffix` name also gives it
/// to the hosts under that suffix. Every host's routes end in resource-name order.
fn redistribute_wildcard_routes(mut hosts: Vec<PendingHost<'_>>) -> Vec<PendingHost<'_>> {
    if let Some(wild) = hosts.iter().position(|h| h.hostname == "*") {
        // `*.suffix` names, given to the hosts under them once every host exists.
        let mut spread = Vec::new();
        for entry in std::mem::take(&mut hosts[wild].routes) {
            let names = entry.1.conf.http.as_ref().map_or(&[][..], |c| &c.hostnames);
            if names.is_empty() {
                hosts[wild].routes.push(entry);
                continue;
            }
            for name in names.iter().map(|n| n.to_ascii_lowercase()) {
                match hosts.iter_mut().find(|h| h.hostname == name) {
                    Some(h) => h.routes.push(entry),
                    None => {
                        let certificate = hosts[wild].certificate.clone();
                        hosts.push(PendingHost {
                            hostname: name.clone(),
                            certificate,
                            routes: vec![entry],
                        });
                    }
                }
                if name.starts_with("*.") {
                    spread.push((entry, name));
                }
            }
        }
        for (entry, name) in spread {
            let domain = &name[1..];
            let under = hosts
                .iter_mut()
                .filter(|h| h.hostname != name && h.hostname.ends_with(domain));
            for h in under {
                h.routes.push(entry);
            }
        }
    }
    for h in &mut hosts {
        h.routes.sort_by(|a, b| a.0.meta.name.cmp(&b.0.meta.name));
        h.routes.dedup_by(|a, b| std::ptr::eq(a.0, b.0));
    }
    hosts
}

/// Kuma's `GenerateEnvoyRouteEntries` filter: the `*` host serves all its routes, another
/// host those without hostnames and those naming a hostname that matches its own.
fn serves_host(host: &str, route_hostnames: &[String]) -> bool {
    host == "*"
        || route_hostnames.is_empty()
        || route_hostnames.iter().any(|n| {
            let n = n.to_ascii_lowercase();
            n == host || wildcard_holds(host, &n) || wildcard_holds(&n, host)
        })
}

/// Whether the hostname `pattern` is `*`, or a `*.domain` wildcard holding `name` (a name,
/// or a narrower wildcard, with more labels under that domain).
fn wildcard_holds(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some("") => true,
        Some(domain) => name.len() > domain.len() && name.ends_with(domain),
        None => false,
    }
}

/// Exact names first, then wildcards (longest first), then `*`.
fn host_rank(hostname: &str) -> (u8, std::cmp::Reverse<usize>) {
    match hostname {
        "*" => (2, std::cmp::Reverse(0)),
        h if h.starts_with('*') => (1, std::cmp::Reverse(h.len())),
        _ => (0, std::cmp::Reverse(0)),
    }
}

/// Sort key of Kuma's specificity order (see the module doc); the sort is stable.
fn precedence(r: &HttpRoute) -> impl Ord + '_ {
    use std::cmp::Reverse;
    let (kind, path) = match &r.matches.path {
        Some(PathMatch::Exact(p)) => (0, p.as_str()),
        Some(PathMatch::Prefix(p)) => (1, p.trim_end_matches('/')),
        Some(PathMatch::StringPrefix(p)) => (1, p.as_str()),
        Some(PathMatch::Regex(p)) => (2, p.as_str()),
        None => (1, ""),
    };
    (
        kind,
        Reverse(path.len()),
        Reverse(r.matches.method.is_some()),
        Reverse(r.matches.headers.len()),
        Reverse(r.matches.query.len()),
        path,
    )
}

/// The listener's certificate: the first DataSource, a PEM with the key and the chain.
fn certificate(
    store: &Store,
    mesh: &str,
    spec: &MeshGatewayListener,
) -> Result<Option<GatewayCertificate>, (String, String)> {
    let Some(tls) = spec.tls.as_ref().filter(|t| !t.passthrough()) else {
        return Ok(None);
    };
    let Some(source) = tls.certificates.first() else {
        return Ok(None);
    };
    let field = "tls.certificates[0]".to_string();
    let bytes = resolve(source, store, mesh).map_err(|m| (field.clone(), m))?;
    let pem = String::from_utf8(bytes).map_err(|_| (field.clone(), "is not PEM text".into()))?;
    let (key_pem, cert_chain_pem) = split_pem(&pem);
    if key_pem.is_empty() {
        return Err((
            field,
            "holds no PRIVATE KEY block (Kuma's format: key and certificate chain in one PEM)"
                .into(),
        ));
    }
    bearing_tls::certified_key(&cert_chain_pem, &key_pem)
        .map_err(|e| (field.clone(), e.to_string()))?;
    let origin = match (&source.secret, &source.file) {
        (Some(s), _) => format!("Secret/{s}"),
        (None, Some(f)) => format!("file {f}"),
        _ => "inline".into(),
    };
    Ok(Some(GatewayCertificate {
        origin,
        cert_chain_pem,
        key_pem,
    }))
}

/// Splits one PEM text into its private key block and its other (certificate) blocks.
fn split_pem(pem: &str) -> (String, String) {
    let (mut key, mut certs) = (String::new(), String::new());
    let mut current = String::new();
    for line in pem.lines() {
        if line.starts_with("-----BEGIN ") {
            current.clear();
        }
        current.push_str(line);
        current.push('\n');
        if line.starts_with("-----END ") {
            if line.contains("PRIVATE KEY") {
                key.push_str(&current);
            } else {
                certs.push_str(&current);
            }
            current.clear();
        }
    }
    (key, certs)
}

/// One route per match of every rule of a MeshGatewayRoute.
fn http_routes(
    r: &Resource,
    rules: &[HttpRule],
    outbounds: &Outbounds,
    clusters: &mut Vec<Cluster>,
) -> Vec<HttpRoute> {
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let mut request_headers = HeaderFilter::default();
        let mut response_headers = HeaderFilter::default();
        let mut redirect = None;
        let mut rewrite = None;
        let mut mirror = None;
        for f in &rule.filters {
            if let Some(c) = &f.request_header {
                merge(&mut request_headers, c);
            }
            if let Some(c) = &f.response_header {
                merge(&mut response_headers, c);
            }
            if let Some(rd) = &f.redirect {
                redirect = Some(Redirect {
                    scheme: rd.scheme.clone(),
                    hostname: rd.hostname.clone(),
                    port: rd.port.and_then(|p| u16::try_from(p).ok()),
                    status: rd
                        .status_code
                        .and_then(|c| u16::try_from(c).ok())
                        .unwrap_or(302),
                    path: rd
                        .path
                        .as_ref()
                        .and_then(|p| path_rewrite(&p.replace_full, &p.replace_prefix_match)),
                    // Kuma's gateway redirects drop the query (`stripQuery: true`).
                    strip_query: true,
                });
            }
            if let Some(rw) = &f.rewrite {
                rewrite = Some(Rewrite {
                    path: path_rewrite(&rw.replace_full, &rw.replace_prefix_match),
                    host_to_backend_hostname: rw.host_to_backend_hostname,
                    host: None,
                });
            }
            if let Some(m) = &f.mirror {
                let c = outbounds.cluster_for(Destination::tagged(&m.backend.destination));
                mirror = Some(Mirror {
                    cluster: c.name.clone(),
                    percentage: m.percentage.unwrap_or(100.0),
                });
                clusters.push(c);
            }
        }
        let action = match redirect {
            Some(rd) => RouteAction::Redirect(rd),
            None => RouteAction::Forward {
                idle_timeout: None,
                timeout: None,
                backends: backends(&rule.backends, outbounds, clusters),
                rewrite,
                // kuma-cp's default MeshRetry on a gateway's HTTP routes.
                retry: Some(RetryPolicy::kuma_default_http()),
            },
        };
        for (j, m) in rule.matches.iter().enumerate() {
            out.push(HttpRoute {
                origin: format!("{}: conf.http.rules[{i}].matches[{j}]", r.key()),
                matches: http_match(m),
                request_headers: request_headers.clone(),
                response_headers: response_headers.clone(),
                action: action.clone(),
                mirror: mirror.clone(),
                rate_limit: None,
                hash_policy: Vec::new(),
                route_kri: None,
            });
        }
    }
    out
}

fn merge(filter: &mut HeaderFilter, c: &HeaderChanges) {
    filter.set.extend(
        c.set
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.clone())),
    );
    filter.add.extend(
        c.add
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.clone())),
    );
    filter
        .remove
        .extend(c.remove.iter().map(|n| n.to_ascii_lowercase()));
}

fn path_rewrite(full: &Option<String>, prefix: &Option<String>) -> Option<PathRewrite> {
    match (full, prefix) {
        (Some(f), _) => Some(PathRewrite::ReplaceFull(f.clone())),
        (None, Some(p)) => Some(PathRewrite::ReplacePrefixMatch(p.clone())),
        (None, None) => None,
    }
}

fn http_match(m: &HttpRuleMatch) -> HttpMatch {
    let value = |kind: Option<&str>, value: &Option<String>| {
        let v = value.clone().unwrap_or_default();
        match kind.unwrap_or("EXACT") {
            "REGEX" => ValueMatch::Regex(v),
            "ABSENT" => ValueMatch::Absent,
            "PRESENT" => ValueMatch::Present,
            _ => ValueMatch::Exact(v),
        }
    };
    HttpMatch {
        path: m
            .path
            .as_ref()
            .map(|p| match p.kind.as_deref().unwrap_or("EXACT") {
                "PREFIX" => PathMatch::Prefix(p.value.clone()),
                "REGEX" => PathMatch::Regex(p.value.clone()),
                _ => PathMatch::Exact(p.value.clone()),
            }),
        method: m.method.clone(),
        headers: m
            .headers
            .iter()
            .map(|h| HeaderMatch {
                name: h.name.to_ascii_lowercase(),
                value: value(h.kind.as_deref(), &h.value),
            })
            .collect(),
        query: m
            .query_parameters
            .iter()
            .map(|q| QueryMatch {
                name: q.name.clone(),
                value: value(q.kind.as_deref(), &q.value),
            })
            .collect(),
    }
}

/// Weighted clusters for route backends, built like outbound clusters.
fn backends(
    list: &[RouteBackend],
    outbounds: &Outbounds,
    clusters: &mut Vec<Cluster>,
) -> Vec<WeightedCluster> {
    list.iter()
        .map(|b| {
            let c = outbounds.cluster_for(Destination::tagged(&b.destination));
            let w = WeightedCluster {
                cluster: c.name.clone(),
                weight: b.weight.unwrap_or(1),
            };
            clusters.push(c);
            w
        })
        .collect()
}

/// The CA certificate of every mesh with mTLS.
fn mesh_ca_pems(store: &Store) -> Vec<String> {
    meshes(store)
        .into_iter()
        .filter_map(|(name, m)| mesh_ca_cert(store, name, m))
        .collect()
}

/// The cross-mesh listeners of the builtin gateway Dataplanes of `mesh` carrying the
/// service `service`: `(MeshGateway name, listener hostname, port, address)`.
pub(crate) fn cross_mesh_listeners<'s>(
    store: &'s Store,
    mesh: &str,
) -> Vec<(&'s str, String, Option<&'s str>, u16, std::net::IpAddr)> {
    let mut out = Vec::new();
    for r in store.resources.iter().filter(|r| mesh_of(r) == mesh) {
        let Spec::Dataplane(dp) = &r.spec else {
            continue;
        };
        let Some(g) = dp
            .networking
            .gateway
            .as_ref()
            .filter(|g| g.kind == "BUILTIN")
        else {
            continue;
        };
        let Ok(ip) = dp.networking.address.parse() else {
            continue;
        };
        let Some((gw_resource, gw)) = select_gateway(store, mesh, &g.tags) else {
            continue;
        };
        let service = g.tags.get(SERVICE_TAG).cloned().unwrap_or_default();
        for l in gw.conf.listeners.iter().filter(|l| l.cross_mesh) {
            out.push((
                gw_resource.meta.name.as_str(),
                service.clone(),
                l.hostname.as_deref().filter(|h| !h.starts_with('*')),
                crate::compile::port16(l.port),
                ip,
            ));
        }
    }
    out
}

/// The cluster of an outbound to a cross-mesh gateway (`to` carries `kuma.io/mesh`): the
/// gateway Dataplanes of that mesh serving `kuma.io/service`, on their cross-mesh listener
/// (the one on `port` if several), over mTLS with this proxy's identity, checking the
/// gateway's identity against its own mesh's CA.
pub(crate) fn cross_mesh_cluster(
    outbounds: &Outbounds,
    target_mesh: &str,
    to: Destination,
    port: u16,
) -> Cluster {
    let store = outbounds.store;
    let service = to.tags.get(SERVICE_TAG).cloned().unwrap_or_default();
    let listeners: Vec<_> = cross_mesh_listeners(store, target_mesh)
        .into_iter()
        .filter(|(_, s, _, _, _)| *s == service)
        .collect();
    let mut endpoints: Vec<Endpoint> = Vec::new();
    let mut ips: Vec<_> = listeners.iter().map(|(_, _, _, _, ip)| *ip).collect();
    ips.sort();
    ips.dedup();
    for ip in ips {
        let ports: Vec<u16> = listeners
            .iter()
            .filter(|l| l.4 == ip)
            .map(|l| l.3)
            .collect();
        let chosen = ports
            .iter()
            .copied()
            .find(|p| *p == port)
            .or(ports.first().copied());
        if let Some(p) = chosen {
            endpoints.push(Endpoint {
                address: SocketAddr::new(ip, p),
                origin: format!("cross-mesh gateway {service} of mesh {target_mesh}"),
                tags: Tags::new(),
                hostname: None,
                tls_match: None,
                priority: 0,
                event_host: None,
                weight: 1,
                locality: None,
            });
        }
    }
    let target_ca = meshes(store)
        .get(target_mesh)
        .and_then(|m| mesh_ca_cert(store, target_mesh, m));
    let mut c = crate::compile::cluster(to.cluster, Protocol::Http, Vec::new());
    match (outbounds.mtls, target_ca) {
        (true, Some(ca)) => {
            c.endpoints = endpoints;
            c.tls = Some(UpstreamTls::Mesh {
                mesh: outbounds.mesh.to_string(),
                sni: bearing_tls::tags_sni(&service, target_mesh, &BTreeMap::new()),
                identities: server_identities(target_mesh, &service),
                server_ca_pem: (target_mesh != outbounds.mesh).then_some(ca),
                params: None,
            });
        }
        _ => tracing::warn!(cluster = %c.name, "cross-mesh gateway skipped: both meshes need mTLS"),
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile as compile_any, CompileOptions};
    use bearing_proxy_config::ProxyConfig;
    use std::path::Path;

    /// The seed's gateway Dataplane, its backends and `extra` resources.
    fn compile_with(extra: &str) -> Result<ProxyConfig, Vec<Problem>> {
        let text = format!(
            "type: Dataplane\nmesh: default\nname: gateway-instance-1\nnetworking:\n  address: 127.0.0.1\n  gateway:\n    type: BUILTIN\n    tags:\n      kuma.io/service: edge-gateway\n---\ntype: Dataplane\nmesh: default\nname: demo-1\nnetworking:\n  address: 10.0.0.2\n  inbound:\n  - port: 5000\n    tags: {{kuma.io/service: demo-app_kuma-demo_svc_5000, kuma.io/protocol: http, version: v1}}\n---\ntype: Dataplane\nmesh: default\nname: redis-1\nnetworking:\n  address: 10.0.0.3\n  inbound:\n  - port: 6379\n    tags: {{kuma.io/service: redis_kuma-demo_svc_6379}}\n---\n{extra}"
        );
        let mut s = Store::default();
        s.add_text(&text, Path::new("gw.yaml"));
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        let me = s
            .resources
            .iter()
            .find(|r| r.meta.name == "gateway-instance-1")
            .unwrap()
            .clone();
        compile_any(&s, &me, "t", &CompileOptions::default())
    }

    fn gateway(cfg: &ProxyConfig, name: &str) -> GatewayListener {
        let l = cfg.listeners.iter().find(|l| l.name == name);
        l.and_then(|l| l.gateway.clone())
            .unwrap_or_else(|| panic!("no {name}: {:?}", cfg.listeners))
    }

    const SEED_GATEWAY: &str = "type: MeshGateway\nmesh: default\nname: edge-gateway\nselectors:\n  - match:\n      kuma.io/service: edge-gateway\nconf:\n  listeners:\n    - port: 8080\n      protocol: HTTP\n      hostname: foo.example.com\n      tags:\n        port: http-8080\n";

    #[test]
    fn seed_http_example() {
        let route = "---\ntype: MeshGatewayRoute\nmesh: default\nname: edge-gateway-route\nselectors:\n  - match:\n      kuma.io/service: edge-gateway\n      port: http-8080\nconf:\n  http:\n    rules:\n      - matches:\n          - path:\n              match: PREFIX\n              value: /\n        backends:\n          - destination:\n              kuma.io/service: demo-app_kuma-demo_svc_5000\n";
        let cfg = compile_with(&format!("{SEED_GATEWAY}{route}")).unwrap();
        let l = cfg
            .listeners
            .iter()
            .find(|l| l.name == "edge-gateway:HTTP:8080")
            .unwrap();
        assert_eq!(l.address.to_string(), "127.0.0.1:8080");
        let gw = l.gateway.as_ref().unwrap();
        assert_eq!(gw.hosts.len(), 1);
        assert_eq!(gw.hosts[0].hostname, "foo.example.com");
        assert_eq!(gw.tags["port"], "http-8080");
        // Kuma's gateway gzip compression, as kuma-cp renders it for every HTTP listener.
        assert_eq!(gw.compression, Some(Compression::kuma_gateway()));
        let r = &gw.hosts[0].http_routes[0];
        assert_eq!(r.matches.path, Some(PathMatch::Prefix("/".into())));
        let RouteAction::Forward { backends, .. } = &r.action else {
            panic!()
        };
        assert_eq!(backends[0].cluster, "demo-app_kuma-demo_svc_5000");
        let c = &cfg.clusters["demo-app_kuma-demo_svc_5000"];
        assert_eq!(c.endpoints[0].address.to_string(), "10.0.0.2:5000");
        assert_eq!(c.protocol, Protocol::Http);
    }

    #[test]
    fn cross_mesh_listener_gets_a_hostname_in_every_mesh() {
        let ca = |mesh: &str| {
            let ca = bearing_tls::MeshCa::generate(mesh).unwrap();
            bearing_tls::builtin_secrets_yaml(mesh, "ca-1", &ca)
        };
        let mesh = |name: &str| {
            format!("type: Mesh\nname: {name}\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n")
        };
        let text = format!(
            "{}---\n{}---\n{}---\n{}---\ntype: MeshGateway\nmesh: default\nname: edge-gateway\nselectors: [{{match: {{kuma.io/service: edge-gateway}}}}]\nconf:\n  listeners:\n  - {{port: 8080, protocol: HTTP, crossMesh: true}}\n---\ntype: Dataplane\nmesh: default\nname: gw-1\nnetworking:\n  address: 10.0.0.9\n  gateway: {{type: BUILTIN, tags: {{kuma.io/service: edge-gateway}}}}\n---\ntype: Dataplane\nmesh: other\nname: web-1\nnetworking:\n  address: 10.0.1.1\n  transparentProxying: {{redirectPortInbound: 15006, redirectPortOutbound: 15001}}\n  inbound:\n  - port: 8080\n    tags: {{kuma.io/service: web}}\n",
            mesh("default"),
            ca("default"),
            mesh("other"),
            ca("other"),
        );
        let mut s = Store::default();
        s.add_text(&text, Path::new("x.yaml"));
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        let me = s
            .resources
            .iter()
            .find(|r| r.meta.name == "web-1")
            .unwrap()
            .clone();
        let cfg = compile_any(&s, &me, "t", &CompileOptions::default()).unwrap();
        let record = cfg
            .dns
            .iter()
            .find(|d| d.name == "internal.edge-gateway.default.mesh")
            .expect("cross-mesh hostname");
        let vip = record.ips[0];
        let l = cfg
            .listeners
            .iter()
            .find(|l| l.address == SocketAddr::new(vip, 8080))
            .unwrap();
        let c = &cfg.clusters[&l.cluster];
        assert_eq!(c.endpoints[0].address.to_string(), "10.0.0.9:8080");
        let Some(UpstreamTls::Mesh {
            mesh,
            identities,
            server_ca_pem,
            ..
        }) = &c.tls
        else {
            panic!("{:?}", c.tls)
        };
        assert_eq!(
            (mesh.as_str(), identities.as_slice()),
            ("other", &server_identities("default", "edge-gateway")[..])
        );
        assert!(
            server_ca_pem.is_some(),
            "the gateway is checked against mesh default's CA"
        );

        let gw = s
            .resources
            .iter()
            .find(|r| r.meta.name == "gw-1")
            .unwrap()
            .clone();
        let cfg = compile_any(&s, &gw, "t", &CompileOptions::default()).unwrap();
        let cross = gateway(&cfg, "edge-gateway:HTTP:8080").cross_mesh.unwrap();
        assert_eq!(cross.identity_mesh, "default");
        assert_eq!(cross.client_ca_pems.len(), 2);
    }

    #[test]
    fn seed_tcp_example() {
        let text = "type: MeshGateway\nmesh: default\nname: edge-gateway\nselectors:\n  - match:\n      kuma.io/service: edge-gateway\nconf:\n  listeners:\n    - port: 8080\n      protocol: TCP\n      tags:\n        port: tcp/8080\n---\ntype: MeshGatewayRoute\nmesh: default\nname: edge-gateway-route\nselectors:\n  - match:\n      kuma.io/service: edge-gateway\n      port: tcp/8080\nconf:\n  tcp:\n    rules:\n      - backends:\n          - destination:\n              kuma.io/service: redis_kuma-demo_svc_6379\n";
        let cfg = compile_with(text).unwrap();
        let gw = gateway(&cfg, "edge-gateway:TCP:8080");
        assert_eq!(gw.protocol, GatewayProtocol::Tcp);
        assert_eq!(gw.hosts[0].hostname, "*");
        assert_eq!(
            gw.hosts[0].tcp_backends[0].cluster,
            "redis_kuma-demo_svc_6379"
        );
        assert_eq!(
            cfg.clusters["redis_kuma-demo_svc_6379"].endpoints[0]
                .address
                .to_string(),
            "10.0.0.3:6379"
        );
    }

    #[test]
    fn precedence_hostnames_and_filters() {
        let routes = "---\ntype: MeshGatewayRoute\nmesh: default\nname: a-general\nselectors: [{match: {port: http-8080}}]\nconf:\n  http:\n    rules:\n      - matches: [{path: {match: PREFIX, value: /}}]\n        backends: [{destination: {kuma.io/service: demo-app_kuma-demo_svc_5000}}]\n      - matches: [{path: {match: PREFIX, value: /api}}]\n        filters: [{requestHeader: {set: [{name: X-Api, value: '1'}]}}]\n        backends:\n          - {weight: 1, destination: {kuma.io/service: demo-app_kuma-demo_svc_5000, version: v1}}\n          - {weight: 3, destination: {kuma.io/service: redis_kuma-demo_svc_6379}}\n---\ntype: MeshGatewayRoute\nmesh: default\nname: b-specific\nselectors: [{match: {port: http-8080}}]\nconf:\n  http:\n    hostnames: [foo.example.com, other.example.com]\n    rules:\n      - matches: [{path: {match: PREFIX, value: /api}, headers: [{name: x-v, value: '2'}]}]\n        backends: [{destination: {kuma.io/service: demo-app_kuma-demo_svc_5000}}]\n      - matches: [{path: {match: EXACT, value: /api}}, {path: {match: REGEX, value: '/r.*'}}]\n        filters: [{redirect: {hostname: bar.example.com}}]\n";
        let cfg = compile_with(&format!("{SEED_GATEWAY}{routes}")).unwrap();
        let gw = gateway(&cfg, "edge-gateway:HTTP:8080");
        assert_eq!(
            gw.hosts.len(),
            1,
            "other.example.com is outside the listener's hostname"
        );
        let order: Vec<&str> = gw.hosts[0]
            .http_routes
            .iter()
            .map(|r| r.origin.as_str())
            .collect();
        assert_eq!(
            order,
            [
                "MeshGatewayRoute/b-specific: conf.http.rules[1].matches[0]",
                "MeshGatewayRoute/b-specific: conf.http.rules[0].matches[0]",
                "MeshGatewayRoute/a-general: conf.http.rules[1].matches[0]",
                "MeshGatewayRoute/a-general: conf.http.rules[0].matches[0]",
                "MeshGatewayRoute/b-specific: conf.http.rules[1].matches[1]",
            ]
        );
        let routes = &gw.hosts[0].http_routes;
        let RouteAction::Redirect(r) = &routes[0].action else {
            panic!()
        };
        assert_eq!(
            (r.status, r.hostname.as_deref()),
            (302, Some("bar.example.com"))
        );
        assert_eq!(
            routes[2].request_headers.set,
            [("x-api".to_string(), "1".to_string())]
        );
        let RouteAction::Forward { backends, .. } = &routes[2].action else {
            panic!()
        };
        let weights: Vec<_> = backends
            .iter()
            .map(|b| (b.cluster.as_str(), b.weight))
            .collect();
        assert_eq!(
            weights,
            [
                ("demo-app_kuma-demo_svc_5000{version=v1}", 1),
                ("redis_kuma-demo_svc_6379", 3)
            ]
        );
    }

    /// The case and Kuma's redistribution: on a `*` listener a host named by a route
    /// serves only the routes naming it; a `*.example.com` route also joins the hosts under
    /// it (another HTTP listener's host on the same port, a route's host), never `*`.
    #[test]
    fn routes_naming_a_host_take_it_from_the_hostname_less_routes() {
        let route = |name: &str, hostnames: &str, service: &str| {
            format!("---\ntype: MeshGatewayRoute\nmesh: default\nname: {name}\nselectors: [{{match: {{kuma.io/service: edge-gateway}}}}]\nconf:\n  http:\n    hostnames: [{hostnames}]\n    rules:\n      - matches: [{{path: {{match: PREFIX, value: /}}}}]\n        backends: [{{destination: {{kuma.io/service: {service}}}}}]\n")
        };
        let mesh_gateway = "type: MeshGateway\nmesh: default\nname: edge-gateway\nselectors: [{match: {kuma.io/service: edge-gateway}}]\nconf:\n  listeners:\n    - {port: 8080, protocol: HTTP}\n    - {port: 8080, protocol: HTTP, hostname: foo.example.com}\n";
        let cfg = compile_with(&format!(
            "{mesh_gateway}{}{}{}",
            route("a", "", "svc-a"),
            route("c", "special.example.com", "svc-c"),
            route("w", "'*.example.com'", "svc-w"),
        ))
        .unwrap();
        let gw = gateway(&cfg, "edge-gateway:HTTP:8080");
        let hosts: Vec<(&str, Vec<&str>)> = gw
            .hosts
            .iter()
            .map(|h| {
                let services = h
                    .http_routes
                    .iter()
                    .map(|r| match &r.action {
                        RouteAction::Forward { backends, .. } => backends[0].cluster.as_str(),
                        _ => "",
                    })
                    .collect();
                (h.hostname.as_str(), services)
            })
            .collect();
        assert_eq!(
            hosts,
            [
                ("foo.example.com", vec!["svc-a", "svc-w"]),
                ("special.example.com", vec!["svc-c", "svc-w"]),
                ("*.example.com", vec!["svc-w"]),
                ("*", vec!["svc-a"]),
            ]
        );
    }

    #[test]
    fn wildcard_listener_gets_route_hosts_and_certificates_are_checked() {
        let listener = |tls: &str| {
            format!("type: MeshGateway\nmesh: default\nname: edge-gateway\nselectors: [{{match: {{kuma.io/service: edge-gateway}}}}]\nconf:\n  listeners:\n    - port: 8443\n      protocol: HTTPS\n      hostname: '*.example.com'\n      tags: {{port: https}}\n      tls: {tls}\n---\ntype: MeshGatewayRoute\nmesh: default\nname: r\nselectors: [{{match: {{port: https}}}}]\nconf:\n  http:\n    hostnames: [api.example.com]\n    rules:\n      - matches: [{{path: {{match: PREFIX, value: /}}}}]\n        backends: [{{destination: {{kuma.io/service: demo-app_kuma-demo_svc_5000}}}}]\n")
        };
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["*.example.com".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pem = format!("{}{}", key.serialize_pem(), cert.pem());
        let inline = format!("{{certificates: [{{inlineString: {pem:?}}}]}}");
        let cfg = compile_with(&listener(&inline)).unwrap();
        let gw = gateway(&cfg, "edge-gateway:HTTPS:8443");
        let names: Vec<&str> = gw.hosts.iter().map(|h| h.hostname.as_str()).collect();
        // Kuma: an HTTPS listener is its own group, and only a `*` host gives routes hosts of
        // their own; `*.example.com` serves the route, whose hostname it holds.
        assert_eq!(names, ["*.example.com"]);
        assert!(gw.hosts[0].certificate.is_some());
        assert_eq!(gw.hosts[0].http_routes.len(), 1);

        let only_cert = format!("{{certificates: [{{inlineString: {:?}}}]}}", cert.pem());
        let errs = compile_with(&listener(&only_cert)).unwrap_err();
        let text = errs[0].to_string();
        assert!(
            text.contains("MeshGateway/edge-gateway: conf.listeners[0].tls.certificates[0]: holds no PRIVATE KEY"),
            "{text}"
        );
    }
}

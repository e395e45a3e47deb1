//! The proxy at run time: the applied snapshot, bound listeners, connection tasks and drain.
//!
//! Applying a config builds a new [`Snapshot`] off the hot path and swaps it in with one atomic
//! pointer store. Listeners whose address is unchanged keep their socket; new ones are bound,
//! vanished ones stop accepting. A TCP connection keeps the listener and cluster it was accepted
//! with; an HTTP connection picks up the newest routes for each request, falling back to its
//! own when its listener is gone. Nothing in flight is dropped by a reload, except what the
//! new config's transport security forbids: a connection its listener no longer admits
//! (plaintext after STRICT, mTLS verified with a replaced CA) is closed between requests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use bearing_gateway::HeaderEdits;
use bearing_proxy_config::{
    Direction, HeaderFilter, Listener, ProxyConfig, Rbac, RouteTable, SniTarget,
};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept::{self, bind_all, is_family_unavailable, sockets_per_listener};
use crate::access_log::LogFiles;
use crate::capture::{self, CapturePort, Route};
use crate::dns_cluster::{Resolutions, Resolve, SystemResolver};
use crate::filter_chain::ListenerRuntime;
use crate::gateway::{self, GatewayRuntime};
use crate::hcm::byte_codec::{self, Prefixed};
use crate::hcm::filters::HttpFilters;
use crate::hcm::head_timeout::{HeadTimed, HeadTimedOut};
use crate::hcm::{hyper_codec, HttpListener as _};
use crate::health_check::HealthWatch;
use crate::idle::{IdleClock, Streams};
use crate::io::{Counted, TcpBacked};
use crate::rate_limit::ConnectionLimit;
use crate::rbac::{Peer, RbacRuntime};
use crate::router::HttpRoutes;
use crate::snapshot::Snapshot;
use crate::sni::{SniRouteRuntime, SniTable};
use crate::stats::Stats;
use crate::tcp_proxy::TcpProxying;
use crate::tcp_proxy::{self, TcpSplit};
use crate::transport::{self, Admission, Chain, DownstreamTlsRuntime, Transported};
use crate::upstream::{ClusterEndpoints, ClusterRuntime, UpstreamSecurity};
use crate::upstream_tls::UpstreamTlsContexts;
use crate::workers::Workers;

/// A bound socket's accept loop, stopped by cancelling `stop`.
struct BoundListener {
    stop: CancellationToken,
}

/// State shared by listeners, connections, the admin API and the config applier.
pub struct Proxy {
    /// Metrics.
    pub stats: Stats,
    snapshot: ArcSwap<Snapshot>,
    /// Snapshots stored so far: a connection looks its listener up again only when this moved.
    generation: AtomicU64,
    /// Accept loops by address: a listener renamed but kept on its address keeps its socket.
    bound: Mutex<HashMap<SocketAddr, BoundListener>>,
    bind_errors: Mutex<BTreeMap<String, String>>,
    /// Every listener of the applied snapshot has its socket (false while binding).
    listeners_bound: AtomicBool,
    draining: AtomicBool,
    drain: CancellationToken,
    connections: TaskTracker,
    http: auto::Builder<TokioExecutor>,
    /// Where connections run: each worker accepts on its own socket of every listener.
    workers: Workers,
    /// The running resolutions of clusters' hostnames, kept across applies.
    resolutions: Resolutions,
    /// The writers of access log files, kept across applies.
    log_files: LogFiles,
    /// Clusters' health checkers and outlier sweeps, kept across applies.
    health: HealthWatch,
}

impl Proxy {
    /// A proxy with no config yet whose connections run on `workers`, resolving hostnames
    /// with the system's resolver configuration.
    pub fn new(workers: Workers) -> Self {
        Proxy::with_resolver(workers, Arc::new(SystemResolver::default()))
    }

    /// [`Proxy::new`] resolving the hostnames of DNS clusters with `resolver`.
    pub fn with_resolver(workers: Workers, resolver: Arc<dyn Resolve>) -> Self {
        let mut http = auto::Builder::new(TokioExecutor::new());
        // Heads as the byte path bounds them: hyper's HTTP/1 buffer (400 KB by default) ends
        // at the head limit, a larger head is answered 431, and so is an HTTP/2 header list
        // over it (16 KiB by default; Envoy's limit is the same 60 KiB on both). hyper's
        // default of 100 HTTP/1 fields is already the limit (setting it would allocate the
        // field array per request).
        // hyper's own head timeout (30 s by default) is off: it counts from when the
        // connection waits for a head, so it closed idle keep-alive connections; a listener's
        // request head timeout is kept from a head's first byte instead (`HeadTimed`), and
        // idle connections last the connection idle timeout.
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(bearing_http1::MAX_HEAD);
        http.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(bearing_http1::MAX_HEAD as u32);
        Proxy {
            stats: Stats::new(),
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            generation: AtomicU64::new(0),
            bound: Mutex::new(HashMap::new()),
            bind_errors: Mutex::new(BTreeMap::new()),
            listeners_bound: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            drain: CancellationToken::new(),
            connections: TaskTracker::new(),
            http,
            workers,
            resolutions: Resolutions::new(resolver),
            log_files: LogFiles::default(),
            health: HealthWatch::default(),
        }
    }

    /// The snapshot in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Listeners of the applied config that are not served, with the reason: those that
    /// could not be built and those that could not be bound.
    pub fn listener_errors(&self) -> BTreeMap<String, String> {
        let mut errors = self.snapshot.load().build_errors.clone();
        errors.extend(lock(&self.bind_errors).clone());
        errors
    }

    /// Parts of the applied config that cannot be served, with the reason.
    pub fn serve_errors(&self) -> BTreeMap<String, String> {
        self.snapshot.load().serve_errors.clone()
    }

    /// Whether draining has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Ready: a config is applied, all of it can be served, every listener of it is built
    /// and bound, and not draining.
    pub fn is_ready(&self) -> bool {
        let snapshot = self.snapshot.load();
        snapshot.config.is_some()
            && snapshot.build_errors.is_empty()
            && snapshot.serve_errors.is_empty()
            && self.listeners_bound.load(Ordering::Acquire)
            && !self.is_draining()
    }

    /// Applies `config`: builds a snapshot, swaps it in, then binds and unbinds listeners.
    pub fn apply(self: &Arc<Self>, config: Arc<ProxyConfig>) {
        let previous = self.snapshot.load_full();
        let mut pools = previous.pools();
        let mut unserved = BTreeMap::new();
        let tls = previous.tls.update(config.mtls.values(), &mut unserved);
        self.stats.identities.set(tls.identities());
        // Epochs of listeners whose terms this config changes: cancelled once it is in force.
        let mut revoked = Vec::new();
        let mut upstream_tls = UpstreamTlsContexts::default();
        let mut clusters = HashMap::new();
        for (name, c) in &config.clusters {
            let security = UpstreamSecurity::of(c, &tls);
            let pool = |e: &bearing_proxy_config::Endpoint| pools.take(c, e, &security);
            let endpoint_pools = match &c.dns {
                None => ClusterEndpoints::Fixed(c.endpoints.iter().map(pool).collect()),
                Some(dns) => ClusterEndpoints::Resolved(self.resolutions.endpoints(c, dns, pool)),
            };
            let mut connector = |t: Option<&bearing_proxy_config::UpstreamTls>| {
                let made = upstream_tls.connector(&previous.upstream_tls, t?, c.protocol, &tls);
                Some(made.map_err(|e| {
                    tracing::error!(cluster = %name, "TLS unavailable: {e}; connections will fail");
                    unserved.insert(format!("cluster {name}"), format!("TLS unavailable: {e}"));
                    e
                }))
            };
            let transports = (
                connector(c.tls.as_ref()),
                c.tls_matches
                    .iter()
                    .map(|m| (m.name.clone(), connector(m.tls.as_ref())))
                    .collect(),
            );
            let runtime = ClusterRuntime::new(
                c.clone(),
                self.stats.cluster(name),
                endpoint_pools,
                transports,
                security,
            );
            clusters.insert(name.clone(), Arc::new(runtime));
        }
        self.resolutions
            .retain(|name| config.clusters.get(name).is_some_and(|c| c.dns.is_some()));
        self.health.apply(&clusters, &self.log_files, &self.stats);
        let mut listeners = HashMap::new();
        let mut inbound_ports = HashMap::new();
        let mut build_errors = BTreeMap::new();
        let mut not_built = |listener: &str, reason: String| {
            tracing::error!(%listener, "listener not served: {reason}");
            self.stats.config.listener_build_failures.inc();
            build_errors
                .entry(listener.to_string())
                .and_modify(|all: &mut String| {
                    all.push_str("; ");
                    all.push_str(&reason);
                })
                .or_insert(reason);
        };
        for l in &config.listeners {
            let cluster = clusters.get(&l.cluster).cloned();
            // The gateway this listener had: same address and name.
            let had = previous
                .listeners
                .get(&l.address)
                .filter(|old| old.config.name == l.name)
                .and_then(|old| old.gateway.as_ref());
            let gateway = match l.gateway.as_ref().map(|g| {
                let limited = || self.stats.local_rate_limited(&l.name);
                GatewayRuntime::build(g, &clusters, &tls, had, limited)
            }) {
                Some(Err(e)) => {
                    not_built(&l.name, format!("gateway listener: {e}"));
                    continue;
                }
                Some(Ok(g)) => Some(g),
                None => None,
            };
            let downstream_tls = l.tls.as_ref().map(|t| DownstreamTlsRuntime::of(&tls, t));
            // Envoy keeps a route's rate limit bucket per filter chain: a PERMISSIVE
            // listener's plaintext requests take buckets of their own.
            let permissive = matches!(
                downstream_tls,
                Some(DownstreamTlsRuntime::Ready {
                    permissive: true,
                    ..
                })
            );
            let named = (&self.stats, l.name.as_str());
            let tables = |t: &RouteTable| -> Result<_, String> {
                let table = Arc::new(HttpRoutes::table(t, &clusters, named)?);
                let plaintext = match permissive && t.limits_rates() {
                    true => Some(Arc::new(HttpRoutes::table(t, &clusters, named)?)),
                    false => None,
                };
                Ok((table, plaintext))
            };
            let (table, plaintext_routes) = match l.routes.as_ref().map(tables).transpose() {
                Err(e) => {
                    not_built(&l.name, format!("route table: {e}"));
                    continue;
                }
                Ok(tables) => tables.unzip(),
            };
            let routes = table.or_else(|| gateway.as_ref().map(|g| g.routes().clone()));
            let filters = match HttpFilters::new(&l.http_filters, || self.stats.faults(&l.name)) {
                Err(e) => {
                    not_built(&l.name, format!("HTTP filters: {e}"));
                    continue;
                }
                Ok(f) => f,
            };
            let request_edits = match prepared_request_edits(&l.request_headers, &l.name) {
                Err(e) => {
                    not_built(&l.name, e);
                    continue;
                }
                Ok(e) => e,
            };
            let tcp_split = match (!l.tcp_backends.is_empty())
                .then(|| TcpSplit::new(&l.tcp_backends, &clusters))
            {
                Some(Err(e)) => {
                    not_built(&l.name, e);
                    continue;
                }
                Some(Ok(s)) => Some(s),
                None => None,
            };
            let routed = routes.is_some() || tcp_split.is_some();
            let answers = l.direct_response.is_some();
            if cluster.is_none()
                && l.sni_routes.is_none()
                && gateway.is_none()
                && !routed
                && !answers
            {
                not_built(&l.name, format!("names a missing cluster {:?}", l.cluster));
                continue;
            }
            if let Some(DownstreamTlsRuntime::Unavailable(reason)) = &downstream_tls {
                // Bound all the same: its connections are refused, each with this reason.
                not_built(
                    &l.name,
                    format!("mesh mTLS: {reason}; connections are refused"),
                );
            }
            let (epoch, kept) = match previous.listeners.get(&l.address) {
                Some(old)
                    if DownstreamTlsRuntime::same_terms(&old.tls, &downstream_tls)
                        && old.config.deny_all == l.deny_all
                        && old.config.network_rbac == l.network_rbac
                        && old.config.http_rbac == l.http_rbac
                        && old.config.http_filters == l.http_filters
                        && !old.epoch.is_cancelled() =>
                {
                    (old.epoch.clone(), true)
                }
                Some(old) => {
                    revoked.push(old.epoch.clone());
                    (self.drain.child_token(), false)
                }
                None => (self.drain.child_token(), false),
            };
            // The SNI routes of the listener this one follows, whose epochs (children of its
            // epoch) a route on the same terms keeps.
            let old_routes = previous.listeners.get(&l.address);
            let old_routes = old_routes.and_then(|o| o.sni.as_ref()).filter(|_| kept);
            // The listener's RBAC and its SNI routes' count into the listener's counters.
            let rbac = |r: &Rbac| RbacRuntime::new(r.clone(), self.stats.rbac(&l.name));
            let sni = l.sni_routes.as_ref().map(|routes| {
                SniTable::new(routes.iter().filter_map(|r| {
                    let cluster = clusters.get(&r.cluster).cloned();
                    let table = r.http.as_ref().and_then(|h| h.routes.as_ref());
                    if cluster.is_none() && table.is_none() {
                        let reason =
                            format!("an SNI route names a missing cluster {:?}", r.cluster);
                        not_built(&l.name, reason);
                        return None;
                    }
                    let terminate = r
                        .terminate
                        .as_ref()
                        .map(|t| DownstreamTlsRuntime::of(&tls, t));
                    if let Some(DownstreamTlsRuntime::Unavailable(reason)) = &terminate {
                        let route = &r.cluster;
                        not_built(
                            &l.name,
                            format!("SNI route to {route:?}: {reason}; refused"),
                        );
                    }
                    let routes = match table.map(|t| HttpRoutes::table(t, &clusters, named)) {
                        Some(Err(e)) => {
                            not_built(
                                &l.name,
                                format!("SNI route {:?}: route table: {e}", r.target),
                            );
                            return None;
                        }
                        Some(Ok(t)) => Some(Arc::new(t)),
                        None => None,
                    };
                    let prepared = r.http.as_ref().map(|h| {
                        let filters =
                            HttpFilters::new(&h.http_filters, || self.stats.faults(&l.name))?;
                        Ok::<_, String>((
                            filters,
                            prepared_request_edits(&h.request_headers, &l.name)?,
                        ))
                    });
                    let (filters, request_edits) = match prepared {
                        Some(Err(e)) => {
                            not_built(&l.name, format!("SNI route {:?}: {e}", r.target));
                            return None;
                        }
                        Some(Ok(f)) => f,
                        None => (None, None),
                    };
                    let route_epoch = match old_routes.and_then(|t| t.get(&r.target)) {
                        Some(old) if old.same_terms(r) => old.epoch.clone(),
                        Some(old) => {
                            revoked.push(old.epoch.clone());
                            epoch.child_token()
                        }
                        None => epoch.child_token(),
                    };
                    // The route's HTTP listener: its cluster or routes, at the SNI listener's
                    // address and with its metrics, and the route's network RBAC and epoch.
                    let http = r.http.as_ref().map(|h| {
                        let mut config = Listener::new(&l.name, l.address, l.direction, h.protocol);
                        config.cluster = r.cluster.clone();
                        config.routes = h.routes.clone();
                        config.retry = h.retry.clone();
                        config.request_headers = h.request_headers.clone();
                        config.http_filters = h.http_filters.clone();
                        config.stream_idle_timeout = h.stream_idle_timeout;
                        config.http_rbac = h.http_rbac.clone();
                        config.downstream_timeouts = h.downstream_timeouts;
                        Arc::new(ListenerRuntime {
                            config,
                            cluster: cluster.clone(),
                            tls: None,
                            sni: None,
                            gateway: None,
                            routes,
                            plaintext_routes: None,
                            tcp_split: None,
                            stats: self.stats.listener(&l.name),
                            http: None,
                            denied: None,
                            network_rbac: r.network_rbac.as_ref().map(rbac),
                            http_rbac: h.http_rbac.as_ref().map(rbac),
                            filters,
                            request_edits,
                            connection_limit: None,
                            access_log: None,
                            epoch: route_epoch.clone(),
                            sni_route: Some(r.target.clone()),
                        })
                    });
                    Some((
                        r.target.clone(),
                        SniRouteRuntime {
                            config: r.clone(),
                            network_rbac: r
                                .network_rbac
                                .as_ref()
                                .filter(|_| http.is_none())
                                .map(rbac),
                            cluster,
                            terminate,
                            http,
                            epoch: route_epoch,
                        },
                    ))
                }))
            });
            // A listener's own server, for its HTTP/2 windows.
            let http = (!l.http2_windows.is_default()).then(|| {
                let mut builder = self.http.clone();
                let windows = l.http2_windows;
                if let Some(stream) = windows.stream {
                    builder.http2().initial_stream_window_size(stream);
                }
                if let Some(connection) = windows.connection {
                    builder.http2().initial_connection_window_size(connection);
                }
                builder
            });
            let runtime = Arc::new(ListenerRuntime {
                config: l.clone(),
                http,
                cluster,
                tls: downstream_tls,
                sni,
                gateway,
                routes,
                plaintext_routes: plaintext_routes.flatten(),
                tcp_split,
                stats: self.stats.listener(&l.name),
                denied: l.deny_all.as_ref().map(|policy| {
                    tracing::warn!(
                        listener = %l.name,
                        %policy,
                        "refusing every connection: the policy denies traffic that Bearing cannot \
                         enforce per source yet, so this inbound fails closed"
                    );
                    self.stats.rbac_denied(&l.name)
                }),
                network_rbac: l.network_rbac.as_ref().map(rbac),
                http_rbac: l.http_rbac.as_ref().map(rbac),
                filters,
                request_edits,
                connection_limit: l
                    .connection_rate_limit
                    .as_ref()
                    .map(|b| ConnectionLimit::new(b, self.stats.connection_rate_limited(&l.name))),
                access_log: self.log_files.listener(&l.access_logs, &self.stats),
                epoch,
                sni_route: None,
            });
            if l.direction == Direction::Inbound {
                inbound_ports
                    .entry(l.address.port())
                    .or_insert_with(|| runtime.clone());
            }
            listeners.insert(l.address, runtime);
        }
        let captures = config
            .transparent_proxy
            .as_ref()
            .map(|tp| CapturePort::for_config(tp, &self.stats, &self.log_files))
            .unwrap_or_default()
            .into_iter()
            .map(|(address, port)| (address, Arc::new(port)))
            .collect();
        // Not ready until the new snapshot's sockets exist (reconcile_listeners below).
        self.listeners_bound.store(false, Ordering::Release);
        self.snapshot.store(Arc::new(Snapshot {
            config: Some(config.clone()),
            listeners,
            inbound_ports,
            captures,
            tls,
            upstream_tls,
            build_errors,
            serve_errors: unserved,
        }));
        self.generation.fetch_add(1, Ordering::Release);
        drop(previous);
        pools.retire_rest();
        // After the store: a woken connection finds the new terms.
        for epoch in revoked {
            epoch.cancel();
        }
        self.stats.config.applied.inc();
        self.reconcile_listeners();
    }

    /// Binds the applied config's listeners that are not bound yet (after a failure, too)
    /// and stops those it no longer has. Does nothing once draining.
    pub fn reconcile_listeners(self: &Arc<Self>) {
        let snapshot = self.snapshot.load_full();
        if snapshot.config.is_none() {
            return;
        }
        let sockets = snapshot.sockets();
        let mut bound = lock(&self.bound);
        // Checked under the lock `start_drain` takes, so a drain can't be undone by a reload.
        if self.is_draining() {
            return;
        }
        let mut errors = lock(&self.bind_errors);
        errors.clear();
        let wanted: HashSet<SocketAddr> = sockets.iter().map(|(a, _, _)| *a).collect();
        bound.retain(|address, b| {
            let keep = wanted.contains(address);
            if !keep {
                tracing::info!(%address, "listener removed; open connections continue");
                b.stop.cancel();
            }
            keep
        });
        let new: Vec<_> = sockets
            .into_iter()
            .filter(|(address, _, _)| !bound.contains_key(address))
            .collect();
        let addresses: Vec<SocketAddr> = new.iter().map(|(a, _, _)| *a).collect();
        let handles = self.workers.handles();
        let per_address = sockets_per_listener(handles.len(), bound.len() + addresses.len());
        let sockets = bind_all(&addresses, per_address);
        // What each worker starts accepting on: one batch per worker, so the sockets are
        // registered with the workers' epolls on the workers, in parallel, and their accept
        // tasks spawned there without a wake-up per task.
        let mut batches: Vec<Vec<_>> = handles.iter().map(|_| Vec::new()).collect();
        for (i, ((address, name, optional), sockets)) in new.into_iter().zip(sockets).enumerate() {
            match sockets {
                Ok(sockets) => {
                    tracing::info!(listener = %name, %address, "listening");
                    let stop = CancellationToken::new();
                    // One socket per worker, or a lone one on the workers in turn.
                    for (k, socket) in sockets.into_iter().enumerate() {
                        let batch = &mut batches[(i + k) % handles.len()];
                        batch.push((address, socket, stop.clone()));
                    }
                    bound.insert(address, BoundListener { stop });
                }
                Err(e) if optional && is_family_unavailable(&e) => {
                    tracing::warn!(listener = %name, "IPv6 is not available here ({e}); capturing IPv4 only");
                }
                Err(e) => {
                    let message = format!("cannot bind {address}: {e}");
                    tracing::error!(listener = %name, "{message}; other listeners keep serving");
                    self.stats.config.listener_bind_failures.inc();
                    errors.insert(name.to_string(), message);
                }
            }
        }
        for (batch, handle) in batches.into_iter().zip(handles) {
            if !batch.is_empty() {
                handle.spawn(self.clone().start_accepting(batch));
            }
        }
        self.listeners_bound
            .store(errors.is_empty(), Ordering::Release);
    }

    /// Whether some listener failed to bind (the applier retries then).
    pub fn has_bind_errors(&self) -> bool {
        !lock(&self.bind_errors).is_empty()
    }

    /// Registers `sockets` with this worker's epoll and accepts on each. A socket that cannot
    /// be registered is closed, which takes it out of its SO_REUSEPORT group: the other
    /// workers get its connections.
    async fn start_accepting(
        self: Arc<Self>,
        sockets: Vec<(SocketAddr, std::net::TcpListener, CancellationToken)>,
    ) {
        for (address, socket, stop) in sockets {
            match TcpListener::from_std(socket) {
                Ok(socket) => drop(tokio::spawn(
                    self.clone().accept_loop(address, socket, stop),
                )),
                Err(e) => {
                    tracing::error!(%address, "a worker cannot accept on this listener: {e}");
                    self.stats.config.listener_bind_failures.inc();
                }
            }
        }
    }

    /// Accepts on `socket`, the one at `address` (of this worker), until `stop`; each
    /// connection goes to the capture port or listener the snapshot in force has there.
    async fn accept_loop(
        self: Arc<Self>,
        address: SocketAddr,
        socket: TcpListener,
        stop: CancellationToken,
    ) {
        let failed = || {
            if let Some(stats) = self.snapshot.load().socket_stats(&address) {
                stats.errors.inc();
            }
        };
        let accepted = |stream, peer| self.dispatch(address, stream, peer);
        accept::run(address, socket, stop, failed, accepted).await;
    }

    /// Hands a connection accepted at `address` to the filter chain the snapshot in force
    /// matches it to: the listener there, or, on a capture port, the one its original
    /// destination names.
    fn dispatch(self: &Arc<Self>, address: SocketAddr, stream: TcpStream, peer: SocketAddr) {
        let snapshot = self.snapshot.load_full();
        let proxy = self.clone();
        if let Some(port) = snapshot.captures.get(&address).cloned() {
            self.spawn_connection(stream, peer, move |stream| async move {
                let route = match capture::original_destination(&stream) {
                    Ok(target) => snapshot.route_captured(&port, address, target),
                    Err(e) => Route::Refuse(format!(
                        "no original destination ({e}): not redirected by iptables"
                    )),
                };
                // A long connection keeps only its listener, not the whole snapshot.
                drop(snapshot);
                proxy.serve_captured(route, &port, stream, peer).await;
            });
        } else if let Some(listener) = snapshot.listener(&address).cloned() {
            self.spawn_connection(stream, peer, move |stream| {
                proxy.serve(listener, stream, peer)
            });
        }
    }

    /// Runs `serve` for a connection just accepted, on this worker or, when that keeps the
    /// workers' connection counts even, on the one with the fewest (the kernel's SO_REUSEPORT
    /// hash alone left 50 connections split up to 31/19; the busier worker's share set the
    /// tail latency).
    fn spawn_connection<F>(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        serve: impl FnOnce(TcpStream) -> F + Send + 'static,
    ) where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (open, elsewhere) = self.workers.place();
        let Some(handle) = elsewhere else {
            self.connections.spawn(async move {
                let _open = open;
                serve(stream).await
            });
            return;
        };
        // Moved by its descriptor: the stream leaves this worker's epoll for that one's.
        let moved = stream.into_std();
        self.connections.spawn_on(
            async move {
                let _open = open;
                match moved.and_then(TcpStream::from_std) {
                    Ok(stream) => serve(stream).await,
                    Err(e) => {
                        tracing::warn!(%peer, "cannot move a connection to another worker: {e}")
                    }
                }
            },
            handle,
        );
    }

    /// Serves one connection accepted for (or captured for) `listener`.
    async fn serve(
        self: Arc<Self>,
        listener: Arc<ListenerRuntime>,
        stream: TcpStream,
        peer: SocketAddr,
    ) {
        listener.stats.connections.inc();
        if let Some(denied) = &listener.denied {
            denied.inc();
            crate::io::reset(&stream);
            return;
        }
        if let Some(answer) = &listener.config.direct_response {
            let name = &listener.config.name;
            return crate::direct_response::answer(stream, answer, name, peer).await;
        }
        // Envoy's network rate limit closes a connection over its bucket as it is accepted;
        // a PERMISSIVE listener's chain (each with its bucket) is known after its first bytes.
        // A listener of one chain keeps one bucket.
        if !listener.chain_after_sniff() && !listener.admits_on(Chain::MeshTls, peer) {
            return;
        }
        listener.stats.active.inc();
        let _ = stream.set_nodelay(true);
        let stream = Counted::new(
            stream,
            listener.stats.rx_bytes.clone(),
            listener.stats.tx_bytes.clone(),
        );
        // Every kind of connection but plain HTTP is served in a boxed future: a task is as
        // large as the largest future it may run, and with all of them inline each idle
        // connection held 9 KB (10k idle connections: 95 MB).
        if let Some(table) = &listener.sni {
            let name = &listener.config.name;
            let proxying = TcpProxying::of(&listener.config);
            let named = (name.as_str(), &listener.stats, proxying);
            let address = listener.config.address;
            let recheck =
                |target: &SniTarget, who: Option<&Peer>| self.sni_recheck(address, target, who);
            let watch = (&self.drain, &recheck as crate::sni::Recheck<'_>);
            let serving = crate::sni::serve(&self.stats, stream, named, table, peer, watch);
            if let Some((tls, http, admission)) = Box::pin(serving).await {
                Box::pin(self.clone().serve_http(tls, http, peer, admission)).await;
            }
        } else if let Some(gw) = &listener.gateway {
            Box::pin(self.serve_gateway(stream, &listener, gw, peer)).await;
        } else {
            match &listener.tls {
                None => {
                    self.serve_stream(stream, &listener, peer, Admission::Plaintext)
                        .await
                }
                Some(tls) => Box::pin(self.serve_mesh_tls(stream, &listener, tls, peer)).await,
            }
        }
        listener.stats.active.dec();
    }

    /// Terminates mesh mTLS (or, in PERMISSIVE mode, takes plaintext) and serves the stream.
    async fn serve_mesh_tls(
        self: &Arc<Self>,
        stream: Counted<TcpStream>,
        listener: &Arc<ListenerRuntime>,
        tls: &DownstreamTlsRuntime,
        peer: SocketAddr,
    ) {
        let named = (listener.config.name.as_str(), listener.reads_peer());
        let admit = |chain| listener.admits_on(chain, peer);
        match transport::terminate_mesh_tls(stream, tls, &self.stats, named, peer, admit).await {
            Some(Transported::Plain(stream)) => {
                self.serve_stream(stream, listener, peer, Admission::Plaintext)
                    .await
            }
            Some(Transported::Tls(stream, admission)) => {
                self.serve_stream(stream, listener, peer, admission).await
            }
            None => {}
        }
    }

    /// Serves a connection of a builtin gateway listener: the gateway relays TCP and TLS
    /// itself and hands HTTP (decrypted for HTTPS) back, to be served while it holds its
    /// place under the listener's connection limit.
    async fn serve_gateway(
        self: &Arc<Self>,
        stream: Counted<TcpStream>,
        listener: &Arc<ListenerRuntime>,
        gateway: &GatewayRuntime,
        peer: SocketAddr,
    ) {
        let config = &listener.config;
        let log = listener.access_log.as_deref().map(|l| (l, config.address));
        let named = (
            config.name.as_str(),
            &listener.stats,
            TcpProxying::of(config),
            log,
        );
        let Some((_slot, http)) = gateway::serve(&self.stats, stream, named, gateway, peer).await
        else {
            return;
        };
        let (listener, admission) = (listener.clone(), Admission::Plaintext);
        match http {
            Transported::Plain(s) => self.clone().serve_http(s, listener, peer, admission).await,
            Transported::Tls(s, _) => self.clone().serve_http(s, listener, peer, admission).await,
        }
    }

    /// Serves a (possibly decrypted) downstream stream, admitted as `admission`, as the
    /// listener's protocol says, once its network RBAC lets it pass (refused: closed, TLS
    /// with a close_notify, as Envoy's network RBAC filter closes it).
    async fn serve_stream<S>(
        self: &Arc<Self>,
        mut stream: S,
        listener: &Arc<ListenerRuntime>,
        peer: SocketAddr,
        admission: Admission,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + TcpBacked + Unpin + Send + 'static,
    {
        if listener.network_rbac.is_some() && !listener.network_rbac_allows(&admission) {
            tracing::debug!(listener = %listener.config.name, %peer, "refused by RBAC");
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
            return;
        }
        if listener.config.protocol.is_http() {
            self.clone()
                .serve_http(stream, listener.clone(), peer, admission)
                .await;
        } else {
            let Some(cluster) = listener.tcp_cluster() else {
                return;
            };
            let log = listener.access_log.as_deref();
            let relay = tcp_proxy::serve_tcp_logged(
                stream,
                (cluster, TcpProxying::of(&listener.config)),
                (&listener.stats, &listener.config.name, peer),
                |_| true,
                log.map(|log| (log, listener.config.address)),
            );
            Box::pin(self.while_admitted(relay, listener, &admission, peer)).await;
        }
    }

    /// Runs `relay` (a TCP connection's copying) to its end, unless a config change leaves
    /// the connection outside what its listener admits: then it is dropped, which closes
    /// both sides. Draining does not cut TCP connections.
    async fn while_admitted(
        &self,
        relay: impl std::future::Future<Output = ()>,
        own: &Arc<ListenerRuntime>,
        admission: &Admission,
        peer: SocketAddr,
    ) {
        tokio::pin!(relay);
        let mut watched = own.clone();
        loop {
            tokio::select! {
                () = &mut relay => return,
                () = watched.epoch.cancelled() => {}
            }
            if self.is_draining() {
                return relay.await;
            }
            match self.recheck(own, admission, peer) {
                // Gone after a change: nothing newer to watch.
                Some(now) if now.epoch.is_cancelled() => return relay.await,
                Some(now) => watched = now,
                None => return,
            }
        }
    }

    /// The newest version of `own`'s listener: the applied snapshot's at its address, or for
    /// the HTTP of an SNI route the HTTP of that listener's route to the same destination;
    /// `own` itself once removed.
    fn newest(&self, own: &Arc<ListenerRuntime>) -> Arc<ListenerRuntime> {
        let snapshot = self.snapshot.load();
        let current = snapshot.listener(&own.config.address);
        let newest = match &own.sni_route {
            Some(target) => current.and_then(|l| l.sni.as_ref()?.get(target)?.http.clone()),
            None => current.filter(|l| l.sni.is_none()).cloned(),
        };
        newest.unwrap_or_else(|| own.clone())
    }

    /// The epoch of the newest route to `target` of the SNI listener at `address` if it
    /// admits a TCP connection whose peer was read as `who` (`None`: not read, which a route
    /// with network RBAC does not admit); `None` when the connection must close.
    fn sni_recheck(
        &self,
        address: SocketAddr,
        target: &SniTarget,
        who: Option<&Peer>,
    ) -> Option<CancellationToken> {
        let snapshot = self.snapshot.load();
        let route = snapshot.listener(&address)?.sni.as_ref()?.get(target)?;
        let admitted = match (route.connection_rbac(), who) {
            (None, _) => true,
            (Some(rbac), Some(peer)) => rbac.allows(peer),
            (Some(_), None) => false,
        };
        (admitted && !route.epoch.is_cancelled()).then(|| route.epoch.clone())
    }

    /// The newest version of `own`'s listener (`own` itself once removed) if it still admits
    /// a connection admitted as `admission`; `None` (logged) when the connection must close.
    fn recheck(
        &self,
        own: &Arc<ListenerRuntime>,
        admission: &Admission,
        peer: SocketAddr,
    ) -> Option<Arc<ListenerRuntime>> {
        let current = self.newest(own);
        if current.admits(admission) {
            return Some(current);
        }
        tracing::info!(listener = %own.config.name, %peer, "closing a connection its listener no longer admits (its mesh mTLS terms changed, or a policy denies it)");
        None
    }

    /// Serves a connection iptables redirected to a capture port.
    async fn serve_captured(
        self: Arc<Self>,
        route: Route,
        port: &CapturePort,
        stream: TcpStream,
        peer: SocketAddr,
    ) {
        match route {
            Route::Listener(listener) => self.serve(listener, stream, peer).await,
            Route::Passthrough { target, source } => {
                port.stats.connections.inc();
                port.stats.active.inc();
                let _ = stream.set_nodelay(true);
                let stream = Counted::new(
                    stream,
                    port.stats.rx_bytes.clone(),
                    port.stats.tx_bytes.clone(),
                );
                capture::serve_passthrough(stream, port, target, source, peer).await;
                port.stats.active.dec();
            }
            Route::Refuse(reason) => {
                port.stats.connections.inc();
                port.stats.errors.inc();
                tracing::warn!(listener = %port.name, %peer, "refused: {reason}");
                crate::io::reset(&stream);
            }
        }
    }

    /// Serves HTTP/1.1 and HTTP/2 requests on `stream`, admitted as `admission`, each with
    /// the newest version of `listener` (its own when a reload removed it), while that
    /// version admits the connection.
    pub(crate) async fn serve_http<S>(
        self: Arc<Self>,
        stream: S,
        listener: Arc<ListenerRuntime>,
        peer: SocketAddr,
        admission: Admission,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + TcpBacked + Unpin + Send + 'static,
    {
        let own = listener.clone();
        // The listener as of the snapshot last seen, `None` once it no longer admits the
        // connection; looked up again after a reload (and at the first request: a reload
        // may have come since the accept).
        let mut seen = (u64::MAX, Some(listener.clone()));
        let newest = || {
            let generation = self.generation.load(Ordering::Acquire);
            if generation != seen.0 {
                seen = (generation, self.recheck(&own, &admission, peer));
            }
            seen.1.clone()
        };
        let tls = stream.plain().is_none();
        let timeouts = byte_codec::Timeouts::of(&listener.config);
        let wake = byte_codec::Wake {
            epoch: &listener.epoch,
            drain: &self.drain,
        };
        let who = (peer, &admission);
        let (stream, prefix) = match byte_codec::serve(stream, newest, wake, who, timeouts).await {
            byte_codec::Outcome::Closed => return,
            byte_codec::Outcome::Handoff(stream, prefix) => (stream, prefix),
        };
        // Boxed: hyper's connection future is kilobytes, and inline it would make every
        // connection's task that large, byte-path ones included.
        let stream = Prefixed::new(prefix, stream);
        Box::pin(self.serve_hyper(stream, listener, peer, admission, tls)).await;
    }

    /// Serves `stream` with hyper (HTTP/1.1 and HTTP/2), each request with the newest version
    /// of `listener`; a request arriving once that version no longer admits the connection
    /// (admitted as `admission`) is refused by closing it (HTTP/2: resetting the stream).
    /// `tls`: the stream is TLS (requests say `x-forwarded-proto: https`).
    pub(crate) async fn serve_hyper<S>(
        self: Arc<Self>,
        stream: S,
        listener: Arc<ListenerRuntime>,
        peer: SocketAddr,
        admission: Admission,
        tls: bool,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let own = listener.clone();
        let proxy = self.clone();
        let admitted = admission.clone();
        // The streams in flight, watched by the connection idle timeout and the request
        // head timeout (neither configured: none).
        let timeouts = byte_codec::Timeouts::of(&listener.config);
        let idle = timeouts.idle;
        let streams = (idle.is_some() || timeouts.head.is_some()).then(Arc::default);
        let open = streams.clone();
        let stream = HeadTimed::new(
            stream,
            timeouts,
            streams.as_ref().map(|s| (s, &listener)),
            peer,
        );
        let service = service_fn(move |req| {
            let stream = open.as_ref().map(Streams::open);
            let l = proxy.newest(&own);
            let allowed = l.admits(&admitted);
            // Decided here, where the connection's peer is borrowed: the request's future
            // owns what it holds.
            let rbac_allowed = allowed && l.rbac_allows(&admitted);
            // What the listener's filters read of the connection (only when they read it).
            let who = l
                .filters
                .as_ref()
                .filter(|f| f.read_peer())
                .and_then(|_| admitted.shared_peer());
            // Boxed: hyper moves a request's future into the task it spawns for each HTTP/2
            // stream (and into its HTTP/1 dispatcher's slot); unboxed, that is 3 KB copied
            // on each move.
            Box::pin(async move {
                // A listener refusing everything answers (403); one that no longer admits
                // this connection's terms closes it.
                if l.denied.is_none() && !allowed {
                    return Err(std::io::Error::other(
                        "the listener no longer admits this connection",
                    ));
                }
                let how = (tls, rbac_allowed, who.as_deref());
                let mut resp = hyper_codec::serve_request(req, &*l, peer, how).await;
                if let Some(stream) = stream {
                    resp.body_mut().hold_stream(stream);
                }
                Ok(resp)
            })
        });
        let builder = listener.http.as_ref().unwrap_or(&self.http);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        // Woken by drain or by a change of the listener's terms: finish what is in flight and
        // close (HTTP/2: GOAWAY) unless the newest listener still admits the connection.
        let mut watched = listener.clone();
        let mut clock = idle.map(|period| IdleClock::new(period, 0));
        let result = loop {
            let idled = std::future::poll_fn(|cx| match (&streams, &mut clock) {
                (Some(streams), Some(clock)) => streams.poll_idle(clock, cx),
                _ => Poll::Pending,
            });
            tokio::select! {
                r = conn.as_mut() => break r,
                () = watched.epoch.cancelled() => {}
                () = idled => {
                    // Envoy's connection idle timeout: HTTP/2 GOAWAY, HTTP/1.1 closed.
                    listener.stats.cx_idle_timeout.inc();
                    tracing::debug!(listener = %listener.config.name, %peer, "idle connection: closing");
                    conn.as_mut().graceful_shutdown();
                    break conn.await;
                }
            }
            let now = match self.is_draining() {
                true => None,
                false => self.recheck(&listener, &admission, peer),
            };
            match now.filter(|l| !l.epoch.is_cancelled()) {
                Some(l) => watched = l,
                None => {
                    conn.as_mut().graceful_shutdown();
                    break conn.await;
                }
            }
        };
        match result {
            // Answered 408 and closed: not an error.
            Err(e) if HeadTimedOut::caused(&*e) => {}
            Err(e) => {
                listener.stats.errors.inc();
                tracing::debug!(listener = %listener.config.name, %peer, "connection error: {e}");
            }
            Ok(()) => {}
        }
    }

    /// Stops accepting on every listener and asks HTTP connections to finish their requests
    /// and close. Idempotent.
    pub fn start_drain(&self) {
        let mut bound = lock(&self.bound);
        if self.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!("draining: listeners closed, finishing in-flight requests");
        for (_, b) in bound.drain() {
            b.stop.cancel();
        }
        drop(bound);
        self.drain.cancel();
        self.connections.close();
    }

    /// Waits until every connection has finished, or `limit` has passed; true if all finished.
    pub async fn wait_connections(&self, limit: Duration) -> bool {
        self.connections.close();
        tokio::time::timeout(limit, self.connections.wait())
            .await
            .is_ok()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A plain listener's request header edits, prepared; `None` for none.
fn prepared_request_edits(
    edits: &HeaderFilter,
    listener: &str,
) -> Result<Option<HeaderEdits>, String> {
    if edits.is_empty() {
        return Ok(None);
    }
    let origin = format!("listener {listener}: request headers");
    HeaderEdits::new(edits, &origin).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bearing_proxy_config::{Listener, Protocol};

    /// A sidecar config of one virtual inbound listener, with mesh mTLS from `ca` when given.
    fn inbound_config(ca: Option<(&bearing_tls::MeshCa, bool)>) -> Arc<ProxyConfig> {
        use bearing_proxy_config::{DownstreamTls, MeshTls, ProxyIdentity};
        let address: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        let mtls: BTreeMap<String, MeshTls> = ca
            .map(|(ca, permissive)| {
                let tls = crate::mesh_tls::test_config(ca, permissive);
                ("default".to_string(), tls)
            })
            .into_iter()
            .collect();
        let cluster = crate::upstream::test_cluster("localhost:80");
        Arc::new(ProxyConfig {
            version: format!("{}", mtls.len()),
            source: "test".into(),
            identity: ProxyIdentity {
                name: "web".into(),
                mesh: "default".into(),
                proxy_type: "dataplane".into(),
                admin_port: None,
            },
            listeners: vec![Listener {
                cluster: cluster.name.clone(),
                service: "web".into(),
                bind: false,
                tls: ca.map(|_| DownstreamTls {
                    mesh: "default".into(),
                    params: None,
                }),
                ..Listener::new(
                    format!("inbound:{address}"),
                    address,
                    Direction::Inbound,
                    Protocol::Http,
                )
            }],
            clusters: [(cluster.name.clone(), cluster)].into(),
            transparent_proxy: None,
            dns: Vec::new(),
            mtls,
            kuma_endpoints: Default::default(),
        })
    }

    /// A sidecar config of `clusters` clusters named `backend-<i>`, each with mesh mTLS (SNI
    /// `backend-<i>{mesh=default}<sni_suffix>`) to one endpoint `endpoint`, each behind a
    /// virtual outbound listener, and mesh `default`'s mTLS from `ca`.
    fn mtls_clusters_config(
        ca: &bearing_tls::MeshCa,
        clusters: usize,
        sni_suffix: &str,
        endpoint: SocketAddr,
    ) -> Arc<ProxyConfig> {
        use bearing_proxy_config::UpstreamTls;
        let mut config = (*inbound_config(None)).clone();
        let base = config.listeners[0].clone();
        config.version = format!("{clusters}{sni_suffix}");
        config.mtls = [("default".into(), crate::mesh_tls::test_config(ca, false))].into();
        config.listeners.clear();
        config.clusters.clear();
        for i in 0..clusters {
            let name = format!("backend-{i}");
            let mut cluster = crate::upstream::test_cluster(&name);
            cluster.endpoints = vec![crate::upstream::plain_endpoint(endpoint)];
            cluster.tls = Some(UpstreamTls::Mesh {
                mesh: "default".into(),
                sni: format!("{name}{{mesh=default}}{sni_suffix}"),
                identities: vec![bearing_proxy_config::SpiffeMatcher::Exact(format!(
                    "spiffe://default/{name}"
                ))],
                server_ca_pem: None,
                params: None,
            });
            let address = SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 80));
            config.listeners.push(Listener {
                name: format!("outbound:{address}"),
                address,
                direction: Direction::Outbound,
                cluster: name.clone(),
                service: name.clone(),
                tls: None,
                ..base.clone()
            });
            config.clusters.insert(name, cluster);
        }
        Arc::new(config)
    }

    /// A cluster's TLS context and endpoint pools survive an apply whose config makes them
    /// from the same terms (one context per terms, kept by identity); a change of the
    /// cluster's TLS gives it a new context and new pools, and the old pool's idle
    /// connection is closed rather than reused.
    #[tokio::test]
    async fn tls_contexts_and_pools_are_kept_only_for_the_same_terms() {
        use tokio::io::AsyncReadExt;
        let proxy = Arc::new(Proxy::new(Workers::start(1, false).unwrap()));
        let ca = bearing_tls::MeshCa::generate("default").unwrap();
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = upstream.local_addr().unwrap();
        let outbound: SocketAddr = "10.1.0.0:80".parse().unwrap();
        // The context and the pool of cluster backend-0.
        let state = |p: &Proxy| {
            let snapshot = p.snapshot();
            let cluster = snapshot
                .listener(&outbound)
                .unwrap()
                .cluster
                .clone()
                .unwrap();
            let tls = cluster.config.tls.clone().unwrap();
            let made = snapshot
                .upstream_tls
                .made_for(&tls, cluster.config.protocol, &snapshot.tls);
            let pool = cluster.rotation(None).next().unwrap().into_owned();
            (made.unwrap(), pool, cluster)
        };

        proxy.apply(mtls_clusters_config(&ca, 2, "", endpoint));
        let (context, pool, cluster) = state(&proxy);
        assert!(context.is_ok(), "the context is built");
        // An unrelated change (another version): the same context, the same pool.
        proxy.apply(mtls_clusters_config(&ca, 3, "", endpoint));
        let (kept, kept_pool, _) = state(&proxy);
        assert!(Arc::ptr_eq(&context, &kept));
        assert!(Arc::ptr_eq(&pool, &kept_pool));

        // An idle connection in the pool, then the cluster's SNI changes.
        let client = TcpStream::connect(endpoint).await.unwrap();
        let (mut server_side, _) = upstream.accept().await.unwrap();
        let counted = Counted::new(client, Default::default(), Default::default());
        let idle = tokio_util::either::Either::Left(counted);
        kept_pool.release(idle, &cluster.stats.occupancy, &Default::default());
        proxy.apply(mtls_clusters_config(&ca, 3, ".changed", endpoint));
        let (rebuilt, new_pool, _) = state(&proxy);
        assert!(
            !Arc::ptr_eq(&kept, &rebuilt),
            "new TLS terms: a new context"
        );
        assert!(
            !Arc::ptr_eq(&kept_pool, &new_pool),
            "new TLS terms: a new pool"
        );
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(10), server_side.read(&mut byte));
        assert_eq!(
            closed.await.unwrap().unwrap(),
            0,
            "the old connection is closed"
        );
    }

    /// Times applies of a config of 10k clusters (each behind a virtual outbound, as kuma-cp
    /// sends a sidecar of a 10k-service mesh) with mesh mTLS, then with TLS to external
    /// services (ExternalService `networking.tls`, a CA each): the first apply, the same
    /// terms again, and one cluster more. A measurement, not a check: run it with
    /// `cargo test -p bearing apply_of_10k_tls_clusters -- --ignored --nocapture`.
    #[tokio::test]
    #[ignore]
    async fn apply_of_10k_tls_clusters() {
        use bearing_proxy_config::{UpstreamTls, Verification};
        let ca = bearing_tls::MeshCa::generate("default").unwrap();
        let endpoint: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let external = |config: Arc<ProxyConfig>| {
            let mut config = (*config).clone();
            for (name, cluster) in config.clusters.iter_mut() {
                cluster.tls = Some(UpstreamTls::External {
                    server_name: format!("{name}.example.com"),
                    ca_pem: Some(ca.cert_pem().into()),
                    client_cert_pem: None,
                    client_key_pem: None,
                    verification: Verification::Secured,
                    allow_renegotiation: false,
                    params: None,
                });
            }
            Arc::new(config)
        };
        let mesh = |n| mtls_clusters_config(&ca, n, "", endpoint);
        for (kind, tls) in [("mesh mTLS", false), ("external TLS", true)] {
            let proxy = Arc::new(Proxy::new(Workers::start(1, false).unwrap()));
            let config = |n| if tls { external(mesh(n)) } else { mesh(n) };
            let steps = [
                ("first", config(10_000)),
                ("same terms", config(10_000)),
                ("one cluster more", config(10_001)),
            ];
            for (what, config) in steps {
                let started = std::time::Instant::now();
                proxy.apply(config);
                println!("{kind}, apply, {what}: {:?}", started.elapsed());
            }
            assert!(
                proxy.serve_errors().is_empty(),
                "{:?}",
                proxy.serve_errors()
            );
        }
    }

    /// Applying the same mesh settings again keeps the mesh TLS state (its server context,
    /// leaf and client contexts) by identity.
    #[tokio::test]
    async fn mesh_tls_state_is_kept_while_its_settings_are_the_same() {
        let proxy = Arc::new(Proxy::new(Workers::start(1, false).unwrap()));
        let ca = bearing_tls::MeshCa::generate("default").unwrap();
        let mesh = |p: &Proxy| p.snapshot().tls.get("default").cloned().unwrap();
        proxy.apply(inbound_config(Some((&ca, false))));
        let first = mesh(&proxy);
        let mut other_version = (*inbound_config(Some((&ca, false)))).clone();
        other_version.version = "another".into();
        proxy.apply(Arc::new(other_version));
        assert!(Arc::ptr_eq(&first, &mesh(&proxy)));
        proxy.apply(inbound_config(Some((&ca, true))));
        assert!(!Arc::ptr_eq(&first, &mesh(&proxy)), "PERMISSIVE: rebuilt");
    }

    /// A gateway listener's count of open connections survives an apply that changes
    /// something else: the connection opened before still counts against `connectionLimit`.
    #[tokio::test]
    async fn a_gateway_connection_limit_is_not_reset_by_an_unrelated_apply() {
        use bearing_proxy_config::{GatewayListener, GatewayProtocol};
        let proxy = Arc::new(Proxy::new(Workers::start(1, false).unwrap()));
        let address: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        let gateway_config = |version: &str| {
            let mut config = (*inbound_config(None)).clone();
            config.version = version.into();
            config.listeners[0].gateway = Some(GatewayListener {
                protocol: GatewayProtocol::Http,
                hosts: Vec::new(),
                tags: Default::default(),
                connection_limit: Some(1),
                cross_mesh: None,
                tls_params: None,
                compression: None,
            });
            Arc::new(config)
        };
        let gateway = |p: &Proxy| p.snapshot().listener(&address).cloned().unwrap();
        proxy.apply(gateway_config("1"));
        let first = gateway(&proxy);
        let open = first.gateway.as_ref().unwrap().admit();
        assert!(open.is_some());
        proxy.apply(gateway_config("2"));
        let second = gateway(&proxy);
        assert!(!Arc::ptr_eq(&first, &second), "a new snapshot");
        assert!(second.gateway.as_ref().unwrap().admit().is_none());
        drop(open);
        assert!(second.gateway.as_ref().unwrap().admit().is_some());
    }

    /// Each change of what the inbound admits cancels the epoch its connections watch, and
    /// the newest listener admits a connection only on terms it allows now.
    #[tokio::test]
    async fn a_change_of_mesh_tls_terms_revokes_the_connections_admitted_before() {
        let proxy = Arc::new(Proxy::new(Workers::start(1, false).unwrap()));
        let address: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        let listener = |p: &Proxy| p.snapshot().listener(&address).cloned().unwrap();
        let (ca, other) = (
            bearing_tls::MeshCa::generate("default").unwrap(),
            bearing_tls::MeshCa::generate("default").unwrap(),
        );

        proxy.apply(inbound_config(None));
        let plain = listener(&proxy);
        assert!(plain.admits(&Admission::Plaintext));
        proxy.apply(inbound_config(None));
        assert!(!plain.epoch.is_cancelled(), "same terms: same epoch");

        // Mesh mTLS turned on, STRICT: plaintext connections are revoked.
        proxy.apply(inbound_config(Some((&ca, false))));
        assert!(plain.epoch.is_cancelled());
        let strict = listener(&proxy);
        assert!(!strict.admits(&Admission::Plaintext));
        let Some(DownstreamTlsRuntime::Ready { mesh, .. }) = &strict.tls else {
            panic!("no mesh TLS on the inbound");
        };
        let verified = Admission::MeshTls(mesh.clone(), None, None);
        assert!(strict.admits(&verified));

        // PERMISSIVE with the same CA: plaintext admitted again, mTLS connections kept.
        proxy.apply(inbound_config(Some((&ca, true))));
        assert!(strict.epoch.is_cancelled());
        let permissive = listener(&proxy);
        assert!(permissive.admits(&Admission::Plaintext));
        assert!(permissive.admits(&verified));

        // Another CA: the connections verified with the old one must handshake again.
        proxy.apply(inbound_config(Some((&other, true))));
        assert!(permissive.epoch.is_cancelled());
        let rotated = listener(&proxy);
        assert!(!rotated.admits(&verified));
        assert!(rotated.admits(&Admission::Plaintext));

        // A MeshTLS policy (TLS 1.3 only): the connections admitted without it must
        // handshake again, those admitted under it stay while it is unchanged.
        let mut tls13 = (*inbound_config(Some((&other, true)))).clone();
        let params = bearing_proxy_config::TlsParams {
            min_version: bearing_proxy_config::TlsVersion::V1_3,
            max_version: bearing_proxy_config::TlsVersion::V1_3,
            cipher_suites: "ECDHE-ECDSA-AES256-GCM-SHA384".into(),
            ecdh_curves: "X25519:P-256".into(),
        };
        let downstream = tls13.listeners[0].tls.as_mut().unwrap();
        downstream.params = Some(params.clone());
        let tls13 = Arc::new(tls13);
        proxy.apply(tls13.clone());
        assert!(rotated.epoch.is_cancelled());
        let policed = listener(&proxy);
        let Some(DownstreamTlsRuntime::Ready { mesh, .. }) = &policed.tls else {
            panic!("no mesh TLS on the inbound");
        };
        let before = Admission::MeshTls(mesh.clone(), None, None);
        let under = Admission::MeshTls(mesh.clone(), None, Some(Arc::new(params)));
        assert!(!policed.admits(&before));
        assert!(policed.admits(&under));
        proxy.apply(tls13);
        assert!(!policed.epoch.is_cancelled(), "same parameters: same epoch");

        // A MeshTrafficPermission that fails closed: nothing admitted before stays, TCP
        // relays included (they wait on the epoch too).
        let mut denied = (*inbound_config(Some((&other, true)))).clone();
        denied.listeners[0].deny_all = Some("MeshTrafficPermission/deny".into());
        proxy.apply(Arc::new(denied));
        assert!(policed.epoch.is_cancelled());
        let refusing = listener(&proxy);
        assert!(!refusing.admits(&Admission::Plaintext));
        assert!(!refusing.admits(&verified));
    }

    /// An SNI route keeps its epoch while a later config gives it the same RBAC and filters;
    /// a change of its RBAC cancels it, not the listener's nor another route's, and its
    /// connections recheck with the route's newest version: an HTTP connection's newest
    /// listener is the route's newest HTTP, a TCP connection goes on only if the new RBAC
    /// admits the peer it was read as (not read: closed).
    #[tokio::test]
    async fn a_change_of_an_sni_routes_rbac_revokes_its_connections_only() {
        use bearing_proxy_config::{
            Rbac, RbacAction, RbacEngine, RbacPermission, RbacPolicy, RbacPrincipal, RbacRules,
            SniHttp, SniRoute, SniTarget,
        };
        let proxy = Arc::new(Proxy::new(Workers::start(1, false).unwrap()));
        let address: SocketAddr = "10.0.0.1:10002".parse().unwrap();
        let target = |service: &str| SniTarget::Service {
            mesh: "default".into(),
            service: service.into(),
        };
        let only_authenticated = Rbac {
            enforced: Some(RbacEngine::Rules(RbacRules {
                action: RbacAction::Allow,
                policies: vec![RbacPolicy {
                    name: "p".into(),
                    permissions: vec![RbacPermission::Any],
                    principals: vec![RbacPrincipal::Authenticated(None)],
                }],
            })),
            shadow: None,
        };
        let config = |rbac: Option<Rbac>, version: &str| {
            let mut config = (*inbound_config(None)).clone();
            config.version = version.into();
            let listener = &mut config.listeners[0];
            listener.address = address;
            listener.cluster.clear();
            let route = |service: &str, http| SniRoute {
                target: target(service),
                cluster: "localhost:80".into(),
                terminate: None,
                http,
                network_rbac: rbac.clone(),
            };
            let http = SniHttp {
                protocol: Protocol::Http,
                routes: None,
                retry: None,
                request_headers: Default::default(),
                http_filters: Vec::new(),
                stream_idle_timeout: None,
                http_rbac: None,
                downstream_timeouts: Default::default(),
            };
            let mut untouched = route("db", None);
            untouched.network_rbac = None;
            let routes = vec![route("web", Some(http)), route("api", None), untouched];
            listener.sni_routes = Some(routes);
            Arc::new(config)
        };
        let routes = |p: &Proxy| p.snapshot().listener(&address).cloned().unwrap();
        let epoch = |l: &ListenerRuntime, service: &str| {
            l.sni
                .as_ref()
                .unwrap()
                .get(&target(service))
                .unwrap()
                .epoch
                .clone()
        };
        let http = |l: &ListenerRuntime| {
            let route = l.sni.as_ref().unwrap().get(&target("web")).unwrap();
            route.http.clone().unwrap()
        };

        proxy.apply(config(None, "1"));
        let first = routes(&proxy);
        let (web, api, db) = (
            epoch(&first, "web"),
            epoch(&first, "api"),
            epoch(&first, "db"),
        );
        let accepted = http(&first);
        assert!(accepted.admits(&Admission::Plaintext));
        proxy.apply(config(None, "2"));
        assert!(
            !web.is_cancelled() && !db.is_cancelled(),
            "same terms: same epochs"
        );

        proxy.apply(config(Some(only_authenticated), "3"));
        assert!(
            web.is_cancelled() && api.is_cancelled(),
            "the routes' RBAC changed"
        );
        assert!(!db.is_cancelled() && !first.epoch.is_cancelled());
        // TCP: a certificate passes, a plaintext peer or one not read does not.
        let recheck = |service: &str, who| proxy.sni_recheck(address, &target(service), who);
        let certified = crate::rbac::tests::peer(&["spiffe://default/web"], None);
        let api_now = epoch(&routes(&proxy), "api");
        assert!(recheck("api", Some(&certified)).is_some_and(|e| !e.is_cancelled()));
        assert!(recheck("api", Some(&crate::rbac::PLAINTEXT)).is_none());
        assert!(recheck("api", None).is_none());
        assert!(recheck("db", None).is_some());
        assert!(!api_now.is_cancelled());
        let newest = proxy.newest(&accepted);
        assert!(Arc::ptr_eq(&newest, &http(&routes(&proxy))));
        // The new RBAC asks for a certificate: a plaintext connection is not admitted.
        assert!(!newest.admits(&Admission::Plaintext));
    }

    /// A mesh whose certificate cannot be issued (here: an identity without a service) keeps
    /// the proxy not ready and says why; a config that can be served makes it ready.
    #[tokio::test]
    async fn a_config_that_cannot_be_served_is_not_ready() {
        let ca = bearing_tls::MeshCa::generate("default").unwrap();
        let proxy = Arc::new(Proxy::new(Workers::start(1, false).unwrap()));
        let config = |services: Vec<String>| ProxyConfig {
            version: format!("{services:?}"),
            source: "test".into(),
            identity: bearing_proxy_config::ProxyIdentity {
                name: "kong-01".into(),
                mesh: "default".into(),
                proxy_type: "dataplane".into(),
                admin_port: None,
            },
            listeners: Vec::new(),
            clusters: BTreeMap::new(),
            transparent_proxy: None,
            dns: Vec::new(),
            mtls: [(
                "default".to_string(),
                bearing_proxy_config::MeshTls {
                    services,
                    ..crate::mesh_tls::test_config(&ca, false)
                },
            )]
            .into(),
            kuma_endpoints: Default::default(),
        };
        proxy.apply(Arc::new(config(Vec::new())));
        assert!(!proxy.is_ready());
        let errors = proxy.serve_errors();
        assert!(
            errors["mesh default"].contains("needs at least one service"),
            "{errors:?}"
        );
        proxy.apply(Arc::new(config(vec!["kong".into()])));
        assert!(proxy.serve_errors().is_empty());
        assert!(proxy.is_ready());
    }
}

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
use std::time::Duration;

use arc_swap::ArcSwap;
use bearing_proxy_config::{Direction, Listener, Protocol, ProxyConfig};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::capture::{self, CapturePort, Route};
use crate::gateway::{self, GatewayRuntime, HttpRoutes};
use crate::hcm::byte_codec::{self, Prefixed};
use crate::hcm::hyper_codec;
use crate::io::{Counted, TcpBacked};
use crate::mesh_tls::{MeshTlsRuntime, MeshTlsSet};
use crate::sni::{SniRouteRuntime, SniTable};
use crate::stats::{ListenerStats, Stats};
use crate::upstream::{ClusterRuntime, PreviousPools, UpstreamError, UpstreamSecurity};
use crate::workers::Workers;

/// A listener of the applied config with its cluster and metrics.
pub struct ListenerRuntime {
    /// The listener as compiled.
    pub config: Listener,
    /// Where its traffic goes (none for SNI-routing listeners, which have `sni`).
    pub cluster: Option<Arc<ClusterRuntime>>,
    /// Mesh mTLS this listener terminates.
    pub tls: Option<DownstreamTlsRuntime>,
    /// Zone ingress / egress: destinations by SNI.
    pub sni: Option<SniTable>,
    /// Builtin gateway listener: routes and backends.
    pub gateway: Option<GatewayRuntime>,
    /// Routes of its HTTP requests (a gateway's, or a sidecar's route table); `None`: every
    /// request goes to `cluster`.
    pub routes: Option<Arc<HttpRoutes>>,
    /// A TCP listener splitting connections over several clusters by weight.
    pub tcp_split: Option<TcpSplit>,
    /// Its metrics.
    pub stats: ListenerStats,
    /// Present when the listener refuses everything (`Listener::deny_all`): counts what it
    /// refuses (`bearing_rbac_denied_total`).
    pub denied: Option<Counter>,
    /// Cancelled when a later config changes what this listener admits (mesh mTLS turned on
    /// or off, PERMISSIVE to STRICT, another CA), and at drain (a child of the drain token):
    /// its connections then check, between requests, that they may go on. Shared with the
    /// listeners at its address that the following configs build with the same terms.
    pub(crate) epoch: CancellationToken,
}

/// The clusters a TCP listener spreads its connections over, by weight (MeshTCPRoute).
pub struct TcpSplit {
    pick: bearing_gateway::Weighted,
    /// By the index of `Listener::tcp_backends`.
    clusters: Vec<Arc<ClusterRuntime>>,
}

impl TcpSplit {
    /// The split of `backends`; an error names a cluster that is missing.
    fn new(
        backends: &[bearing_proxy_config::WeightedCluster],
        clusters: &HashMap<String, Arc<ClusterRuntime>>,
    ) -> Result<TcpSplit, String> {
        let clusters = backends
            .iter()
            .map(|b| {
                clusters.get(&b.cluster).cloned().ok_or_else(|| {
                    format!(
                        "a weighted TCP backend names a missing cluster {:?}",
                        b.cluster
                    )
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(TcpSplit {
            pick: bearing_gateway::Weighted::new(backends.iter().map(|b| b.weight)),
            clusters,
        })
    }
}

impl ListenerRuntime {
    /// The cluster a new TCP connection goes to: the next of a split by weight, else the
    /// listener's cluster.
    fn tcp_cluster(&self) -> Option<&Arc<ClusterRuntime>> {
        match &self.tcp_split {
            Some(split) => split.pick.pick().and_then(|i| split.clusters.get(i)),
            None => self.cluster.as_ref(),
        }
    }
}

/// How a downstream connection of a sidecar listener was admitted, for checking it against
/// the listener's terms after a config change.
#[derive(Clone)]
pub(crate) enum Admission {
    /// Without mesh mTLS: plaintext, or a listener that does not terminate it (gateway, zone
    /// proxy).
    Plaintext,
    /// Mesh mTLS, the client certificate verified with this mesh state's CA.
    MeshTls(Arc<MeshTlsRuntime>),
}

impl ListenerRuntime {
    /// Whether this listener, as configured now, still admits a connection admitted as
    /// `admission`: no mesh mTLS admits everything; mTLS admits plaintext only when
    /// PERMISSIVE, and an mTLS connection only if its client certificate was verified with
    /// the same CA certificate (after a CA change it must handshake again); a listener that
    /// fails closed (`denied`) admits nothing. Gateway and zone proxy listeners are not
    /// checked otherwise.
    pub(crate) fn admits(&self, admission: &Admission) -> bool {
        if self.denied.is_some() {
            return false;
        }
        if self.gateway.is_some() || self.sni.is_some() {
            return true;
        }
        match (&self.tls, admission) {
            (None, _) => true,
            (Some(DownstreamTlsRuntime::Unavailable(_)), _) => false,
            (Some(DownstreamTlsRuntime::Ready { permissive, .. }), Admission::Plaintext) => {
                *permissive
            }
            (Some(DownstreamTlsRuntime::Ready { mesh, .. }), Admission::MeshTls(verified)) => {
                Arc::ptr_eq(mesh, verified)
                    || mesh.config.ca_cert_pem == verified.config.ca_cert_pem
            }
        }
    }
}

/// Whether a listener terminating `next` admits exactly what one terminating `old` admitted,
/// so that it keeps the old one's epoch.
fn same_terms(old: &Option<DownstreamTlsRuntime>, next: &Option<DownstreamTlsRuntime>) -> bool {
    use DownstreamTlsRuntime::{Ready, Unavailable};
    match (old, next) {
        (None, None) | (Some(Unavailable(_)), Some(Unavailable(_))) => true,
        (
            Some(Ready {
                mesh: a,
                permissive: pa,
                ..
            }),
            Some(Ready {
                mesh: b,
                permissive: pb,
                ..
            }),
        ) => Arc::ptr_eq(a, b) && pa == pb,
        _ => false,
    }
}

/// How a listener terminates mesh mTLS.
#[derive(Clone)]
pub enum DownstreamTlsRuntime {
    /// With this server config; plaintext is accepted too when `permissive`.
    Ready {
        /// The mesh's acceptor.
        acceptor: bearing_tls::TlsAcceptor,
        /// Kuma's PERMISSIVE mode: connections not starting with a TLS record are plaintext.
        permissive: bool,
        /// The mesh state the acceptor comes from (its CA verifies client certificates).
        mesh: Arc<MeshTlsRuntime>,
    },
    /// The mesh's certificate could not be issued: connections are refused.
    Unavailable(String),
}

impl DownstreamTlsRuntime {
    /// The termination settings of `mesh` in `tls`.
    pub fn for_mesh(tls: &MeshTlsSet, mesh: &str) -> Self {
        match tls.get(mesh) {
            Some(rt) => DownstreamTlsRuntime::Ready {
                acceptor: rt.server.clone(),
                permissive: rt.config.permissive,
                mesh: rt.clone(),
            },
            None => DownstreamTlsRuntime::Unavailable(format!(
                "mesh {mesh:?} has no usable mTLS certificate"
            )),
        }
    }
}

/// PERMISSIVE mode: how long to wait for a client's first byte before treating the
/// connection as plaintext (protocols where the server speaks first send nothing).
const PERMISSIVE_SNIFF_TIMEOUT: Duration = Duration::from_secs(1);

/// One applied config, ready for the hot path.
pub struct Snapshot {
    /// The config it was built from (None before the first config).
    pub config: Option<Arc<ProxyConfig>>,
    /// Every listener by address, whether it has a socket or is reached through capture.
    listeners: HashMap<SocketAddr, Arc<ListenerRuntime>>,
    /// Inbound listeners by port, for captured inbound connections to another local address.
    inbound_ports: HashMap<u16, Arc<ListenerRuntime>>,
    /// Transparent-proxy capture sockets by address.
    captures: HashMap<SocketAddr, Arc<CapturePort>>,
    /// Mesh mTLS state by mesh.
    tls: MeshTlsSet,
    /// Listeners of the config that could not be built, by name, with the reason: not ready.
    build_errors: BTreeMap<String, String>,
    /// Other parts of the config that cannot be served (a mesh certificate that cannot be
    /// issued, a cluster without its TLS), by `mesh|cluster <name>`: not ready either.
    serve_errors: BTreeMap<String, String>,
}

impl Snapshot {
    fn empty() -> Self {
        Snapshot {
            config: None,
            listeners: HashMap::new(),
            inbound_ports: HashMap::new(),
            captures: HashMap::new(),
            tls: MeshTlsSet::default(),
            build_errors: BTreeMap::new(),
            serve_errors: BTreeMap::new(),
        }
    }

    /// The listener at `address`, if this snapshot has one.
    pub fn listener(&self, address: &SocketAddr) -> Option<&Arc<ListenerRuntime>> {
        self.listeners.get(address)
    }

    /// The metrics of the listener or capture port whose socket is at `address`.
    fn socket_stats(&self, address: &SocketAddr) -> Option<&ListenerStats> {
        match self.captures.get(address) {
            Some(port) => Some(&port.stats),
            None => self.listeners.get(address).map(|l| &l.stats),
        }
    }

    /// The sockets this snapshot needs bound: `(address, name, optional)`. An optional
    /// socket (IPv6 capture) that cannot be bound because the host lacks IPv6 is skipped.
    fn sockets(&self) -> Vec<(SocketAddr, &str, bool)> {
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
    fn route_captured(&self, port: &CapturePort, capture: SocketAddr, target: SocketAddr) -> Route {
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
    fn pools(&self) -> PreviousPools {
        PreviousPools::of(self.listeners.values().flat_map(|l| {
            let routes = l.sni.iter().flat_map(SniTable::clusters);
            let routed = l.routes.iter().flat_map(|r| r.clusters());
            let split = l.tcp_split.iter().flat_map(|s| &s.clusters);
            let all = l.cluster.iter().chain(routes).chain(routed).chain(split);
            all.map(Arc::as_ref)
        }))
    }
}

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
    /// Gateway listeners' HTTP settings (Kuma's gateway header timeout).
    gateway_http: auto::Builder<TokioExecutor>,
    /// Where connections run: each worker accepts on its own socket of every listener.
    workers: Workers,
}

impl Proxy {
    /// A proxy with no config yet whose connections run on `workers`.
    pub fn new(workers: Workers) -> Self {
        let mut http = auto::Builder::new(TokioExecutor::new());
        // Heads as the byte path bounds them: hyper's HTTP/1 buffer (400 KB by default) ends
        // at the head limit, a larger head is answered 431, and so is an HTTP/2 header list
        // over it (16 KiB by default; Envoy's limit is the same 60 KiB on both). hyper's
        // default of 100 HTTP/1 fields is already the limit (setting it would allocate the
        // field array per request).
        http.http1()
            .timer(TokioTimer::new())
            .max_buf_size(bearing_http1::MAX_HEAD);
        http.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(bearing_http1::MAX_HEAD as u32);
        let mut gateway_http = http.clone();
        gateway_http
            .http1()
            .header_read_timeout(gateway::HEADER_READ_TIMEOUT);
        Proxy {
            stats: Stats::new(),
            snapshot: ArcSwap::from_pointee(Snapshot::empty()),
            generation: AtomicU64::new(0),
            bound: Mutex::new(HashMap::new()),
            bind_errors: Mutex::new(BTreeMap::new()),
            listeners_bound: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            drain: CancellationToken::new(),
            connections: TaskTracker::new(),
            http,
            gateway_http,
            workers,
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
        let mut clusters = HashMap::new();
        for (name, c) in &config.clusters {
            let security = UpstreamSecurity::new(c.tls.as_ref(), &tls);
            let endpoint_pools = c
                .endpoints
                .iter()
                .map(|e| pools.take(c, e.address, &security))
                .collect();
            let connector = c.tls.as_ref().map(|t| {
                tls.upstream(t, upstream_alpn(c.protocol)).map_err(|e| {
                    tracing::error!(cluster = %name, "TLS unavailable: {e}; connections will fail");
                    unserved.insert(format!("cluster {name}"), format!("TLS unavailable: {e}"));
                    e
                })
            });
            let runtime = ClusterRuntime::new(
                c.clone(),
                self.stats.cluster(name),
                endpoint_pools,
                connector,
                security,
            );
            clusters.insert(name.clone(), Arc::new(runtime));
        }
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
            let gateway = match l
                .gateway
                .as_ref()
                .map(|g| GatewayRuntime::build(g, &clusters, &tls))
            {
                Some(Err(e)) => {
                    not_built(&l.name, format!("gateway listener: {e}"));
                    continue;
                }
                Some(Ok(g)) => Some(g),
                None => None,
            };
            let table = match l.routes.as_ref().map(|t| HttpRoutes::table(t, &clusters)) {
                Some(Err(e)) => {
                    not_built(&l.name, format!("route table: {e}"));
                    continue;
                }
                Some(Ok(t)) => Some(Arc::new(t)),
                None => None,
            };
            let routes = table.or_else(|| gateway.as_ref().map(|g| g.routes().clone()));
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
            if cluster.is_none() && l.sni_routes.is_none() && gateway.is_none() && !routed {
                not_built(&l.name, format!("names a missing cluster {:?}", l.cluster));
                continue;
            }
            let downstream_tls = l
                .tls
                .as_ref()
                .map(|t| DownstreamTlsRuntime::for_mesh(&tls, &t.mesh));
            if let Some(DownstreamTlsRuntime::Unavailable(reason)) = &downstream_tls {
                // Bound all the same: its connections are refused, each with this reason.
                not_built(
                    &l.name,
                    format!("mesh mTLS: {reason}; connections are refused"),
                );
            }
            let sni = l.sni_routes.as_ref().map(|routes| {
                SniTable::new(routes.iter().filter_map(|r| {
                    let Some(cluster) = clusters.get(&r.cluster) else {
                        let reason =
                            format!("an SNI route names a missing cluster {:?}", r.cluster);
                        not_built(&l.name, reason);
                        return None;
                    };
                    let terminate = r
                        .terminate
                        .as_ref()
                        .map(|t| DownstreamTlsRuntime::for_mesh(&tls, &t.mesh));
                    if let Some(DownstreamTlsRuntime::Unavailable(reason)) = &terminate {
                        let route = &r.cluster;
                        not_built(
                            &l.name,
                            format!("SNI route to {route:?}: {reason}; refused"),
                        );
                    }
                    Some((
                        r.target.clone(),
                        SniRouteRuntime {
                            cluster: cluster.clone(),
                            terminate,
                        },
                    ))
                }))
            });
            let downstream_tls = l
                .tls
                .as_ref()
                .map(|t| DownstreamTlsRuntime::for_mesh(&tls, &t.mesh));
            let epoch = match previous.listeners.get(&l.address) {
                Some(old)
                    if same_terms(&old.tls, &downstream_tls)
                        && old.config.deny_all == l.deny_all
                        && !old.epoch.is_cancelled() =>
                {
                    old.epoch.clone()
                }
                Some(old) => {
                    revoked.push(old.epoch.clone());
                    self.drain.child_token()
                }
                None => self.drain.child_token(),
            };
            let runtime = Arc::new(ListenerRuntime {
                config: l.clone(),
                cluster,
                tls: downstream_tls,
                sni,
                gateway,
                routes,
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
                epoch,
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
            .map(|tp| CapturePort::for_config(tp, &self.stats))
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

    async fn accept_loop(
        self: Arc<Self>,
        address: SocketAddr,
        socket: TcpListener,
        stop: CancellationToken,
    ) {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                r = socket.accept() => r,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors: the waiting connection is closed rather than left in
                    // the backlog. Either way, back off instead of spinning.
                    if crate::descriptors::is_exhausted(&e) && crate::descriptors::shed_one(&socket)
                    {
                        tracing::warn!(%address, "accept failed: {e}; a connection was closed unserved");
                    } else {
                        tracing::error!(%address, "accept failed: {e}");
                    }
                    if let Some(stats) = self.snapshot.load().socket_stats(&address) {
                        stats.errors.inc();
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
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
            capture::reset(&stream);
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
            Box::pin(crate::sni::serve(
                &self.stats,
                stream,
                &listener,
                table,
                peer,
            ))
            .await;
        } else if let Some(gw) = &listener.gateway {
            Box::pin(gateway::serve(&self, stream, &listener, gw, peer)).await;
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
        let (acceptor, permissive, mesh) = match tls {
            DownstreamTlsRuntime::Ready {
                acceptor,
                permissive,
                mesh,
            } => (acceptor, *permissive, mesh),
            DownstreamTlsRuntime::Unavailable(reason) => {
                self.stats.count_tls_handshake_error(&listener.config.name);
                tracing::warn!(listener = %listener.config.name, %peer, "refused: {reason}");
                capture::reset(&stream);
                return;
            }
        };
        if permissive
            && !crate::sni::starts_with_tls_record(stream.get_ref(), PERMISSIVE_SNIFF_TIMEOUT).await
        {
            return self
                .serve_stream(stream, listener, peer, Admission::Plaintext)
                .await;
        }
        match acceptor.accept(stream, &listener.config.name, peer).await {
            Ok(tls_stream) => {
                let admission = Admission::MeshTls(mesh.clone());
                self.serve_stream(tls_stream, listener, peer, admission)
                    .await
            }
            Err(e) => {
                self.stats.count_tls_handshake_error(&listener.config.name);
                tracing::info!(listener = %listener.config.name, %peer, "mTLS refused: {e}");
            }
        }
    }

    /// Serves a (possibly decrypted) downstream stream, admitted as `admission`, as the
    /// listener's protocol says.
    async fn serve_stream<S>(
        self: &Arc<Self>,
        stream: S,
        listener: &Arc<ListenerRuntime>,
        peer: SocketAddr,
        admission: Admission,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + TcpBacked + Unpin + Send + 'static,
    {
        if listener.config.protocol.is_http() {
            self.clone()
                .serve_http(stream, listener.clone(), peer, admission)
                .await;
        } else {
            let Some(cluster) = listener.tcp_cluster() else {
                return;
            };
            let relay = serve_tcp(
                stream,
                cluster,
                &listener.stats,
                &listener.config.name,
                peer,
                |_| true,
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

    /// The newest version of `own`'s listener (`own` itself once removed) if it still admits
    /// a connection admitted as `admission`; `None` (logged) when the connection must close.
    fn recheck(
        &self,
        own: &Arc<ListenerRuntime>,
        admission: &Admission,
        peer: SocketAddr,
    ) -> Option<Arc<ListenerRuntime>> {
        let current = self.snapshot.load().listener(&own.config.address).cloned();
        let current = current.unwrap_or_else(|| own.clone());
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
                capture::reset(&stream);
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
        let timeouts = match listener.gateway {
            Some(_) => gateway::BYTE_PATH_TIMEOUTS,
            None => byte_codec::Timeouts::SIDECAR,
        };
        let wake = byte_codec::Wake {
            epoch: &listener.epoch,
            drain: &self.drain,
        };
        let (stream, prefix) = match byte_codec::serve(stream, newest, wake, peer, timeouts).await {
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
        let service = service_fn(move |req| {
            let current = proxy.snapshot.load().listener(&own.config.address).cloned();
            let l = current.unwrap_or_else(|| own.clone());
            let allowed = l.admits(&admitted);
            // Boxed: hyper moves a request's future into the task it spawns for each HTTP/2
            // stream (and into its HTTP/1 dispatcher's slot); unboxed, that is 3 KB copied
            // on each move.
            Box::pin(async move {
                if let Some(denied) = &l.denied {
                    // A policy denying this inbound came with a reload (Envoy's RBAC answer).
                    denied.inc();
                    return Ok(hyper_codec::local_reply(
                        http::StatusCode::FORBIDDEN,
                        "RBAC: access denied".into(),
                    ));
                }
                if !allowed {
                    return Err(std::io::Error::other(
                        "the listener no longer admits this connection",
                    ));
                }
                let mut req = req;
                let resp = match hyper_codec::screen_request(&mut req) {
                    Some(refused) => {
                        l.stats.requests.count(refused.status().as_u16());
                        refused
                    }
                    None => {
                        crate::hcm::add_request_headers(req.headers_mut(), tls);
                        match &l.routes {
                            Some(routes) => gateway::handle(req, &l, routes, peer).await,
                            None => hyper_codec::forward(req, &l).await,
                        }
                    }
                };
                Ok(resp)
            })
        });
        let builder = match listener.gateway {
            Some(_) => &self.gateway_http,
            None => &self.http,
        };
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        // Woken by drain or by a change of the listener's terms: finish what is in flight and
        // close (HTTP/2: GOAWAY) unless the newest listener still admits the connection.
        let mut watched = listener.clone();
        let result = loop {
            tokio::select! {
                r = conn.as_mut() => break r,
                () = watched.epoch.cancelled() => {}
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
        if let Err(e) = result {
            listener.stats.errors.inc();
            tracing::debug!(listener = %listener.config.name, %peer, "connection error: {e}");
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

/// Bytes read per system call in each direction of a TCP connection. tokio's default (8 KiB)
/// made bulk transfers cost four times the system calls; 64 KiB is what one loopback read
/// returns under load.
pub(crate) const TCP_COPY_BUFFER: usize = 64 * 1024;

/// Connects to `cluster` (an endpoint `wanted` accepts) and copies bytes both ways; with
/// no endpoint the downstream connection is reset.
pub(crate) async fn serve_tcp<S>(
    mut down: S,
    cluster: &ClusterRuntime,
    stats: &ListenerStats,
    listener: &str,
    peer: SocketAddr,
    wanted: impl Fn(&bearing_proxy_config::Endpoint) -> bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + TcpBacked + Unpin,
{
    match cluster.connect_tcp_where(wanted).await {
        Ok(mut up) => {
            let copied = match (down.plain(), up.plain()) {
                (Some(d), Some(u)) => crate::splice::copy_bidirectional(d, u).await,
                _ => {
                    let (b, b2) = (TCP_COPY_BUFFER, TCP_COPY_BUFFER);
                    tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, b, b2).await
                }
            };
            if let Err(e) = copied {
                stats.errors.inc();
                tracing::debug!(%listener, %peer, "connection ended: {e}");
            }
        }
        Err(UpstreamError::Overflow(why)) => {
            // Counted (`upstream_cx_overflow`); as Envoy's tcp_proxy, the client is closed.
            tracing::debug!(%listener, cluster = %cluster.config.name, %peer, "circuit breaker: {why}; resetting connection");
            capture::reset(&down);
        }
        Err(e) => {
            tracing::warn!(%listener, cluster = %cluster.config.name, %peer, "{e}; resetting connection");
            capture::reset(&down);
        }
    }
}

/// ALPN offered to TLS upstreams of a cluster speaking `protocol`.
fn upstream_alpn(protocol: Protocol) -> &'static [&'static [u8]] {
    match protocol {
        Protocol::Http => &[b"http/1.1"],
        Protocol::Http2 | Protocol::Grpc => &[b"h2"],
        Protocol::Tcp => &[],
    }
}

/// Binds `addresses`, in order, each with one socket per worker (`per_address`). Many sockets
/// (a sidecar with a thousand outbounds) are bound on as many threads as there are cores: 1000
/// listeners took 6 ms on one thread, 4 on two.
fn bind_all(
    addresses: &[SocketAddr],
    per_address: usize,
) -> Vec<std::io::Result<Vec<std::net::TcpListener>>> {
    const PER_THREAD: usize = 64;
    let bind = |address: &SocketAddr| bind_for_workers(*address, per_address);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(addresses.len() / PER_THREAD);
    if threads <= 1 {
        return addresses.iter().map(bind).collect();
    }
    let per = addresses.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = addresses
            .chunks(per)
            .map(|chunk| scope.spawn(move || chunk.iter().map(bind).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .zip(addresses.chunks(per))
            .flat_map(|(part, chunk)| {
                part.join().unwrap_or_else(|_| {
                    chunk
                        .iter()
                        .map(|_| Err(std::io::Error::other("binding thread panicked")))
                        .collect()
                })
            })
            .collect()
    })
}

/// How many sockets each listener gets: one per worker (a SO_REUSEPORT group), unless the
/// listeners' sockets would then take more than half the descriptor limit, which is kept for
/// connections (two descriptors per proxied one). Then one, accepted on by one worker, which
/// hands connections to the others as `Workers::place` balances them (10k outbounds with 2
/// workers took all of a 20000 limit).
fn sockets_per_listener(workers: usize, listeners: usize) -> usize {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(u64::MAX, |(soft, _)| soft);
    if workers > 1 && (listeners as u64).saturating_mul(workers as u64) > limit / 2 {
        1
    } else {
        workers
    }
}

/// Binds `workers` listening sockets on `address`: one, or a SO_REUSEPORT group the kernel
/// spreads new connections over (by their addresses' hash). Either way a port another socket
/// holds without SO_REUSEPORT fails to bind.
fn bind_for_workers(
    address: SocketAddr,
    workers: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    (0..workers).map(|_| bind(address, workers > 1)).collect()
}

/// Binds a listening socket with SO_REUSEADDR (restarts do not wait for TIME_WAIT), and
/// SO_REUSEPORT when `shared` by several workers.
fn bind(address: SocketAddr, shared: bool) -> std::io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(address);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if shared {
        socket.set_reuse_port(true)?;
    }
    if address.is_ipv6() {
        // `[::]:15001` must not also claim IPv4, which `0.0.0.0:15001` serves.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// The host has no IPv6 (disabled kernel module or sysctl).
fn is_family_unavailable(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::AddrNotAvailable || e.raw_os_error() == Some(97)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

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
                name: format!("inbound:{address}"),
                address,
                direction: Direction::Inbound,
                protocol: Protocol::Http,
                cluster: cluster.name.clone(),
                service: "web".into(),
                bind: false,
                tls: ca.map(|_| DownstreamTls {
                    mesh: "default".into(),
                }),
                sni_routes: None,
                routes: None,
                tcp_backends: Vec::new(),
                gateway: None,
                deny_all: None,
            }],
            clusters: [(cluster.name.clone(), cluster)].into(),
            transparent_proxy: None,
            dns: Vec::new(),
            mtls,
            kuma_endpoints: Default::default(),
        })
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
        let verified = Admission::MeshTls(mesh.clone());
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

        // A MeshTrafficPermission that fails closed: nothing admitted before stays, TCP
        // relays included (they wait on the epoch too).
        let mut denied = (*inbound_config(Some((&other, true)))).clone();
        denied.listeners[0].deny_all = Some("MeshTrafficPermission/deny".into());
        proxy.apply(Arc::new(denied));
        assert!(rotated.epoch.is_cancelled());
        let refusing = listener(&proxy);
        assert!(!refusing.admits(&Admission::Plaintext));
        assert!(!refusing.admits(&verified));
    }

    #[test]
    fn listeners_get_a_socket_per_worker_while_descriptors_allow() {
        assert_eq!(sockets_per_listener(1, 5), 1);
        assert_eq!(sockets_per_listener(2, 5), 2);
        // Listeners whose sockets would take more than half the limit: one socket each.
        assert_eq!(sockets_per_listener(2, usize::MAX / 4), 1);
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

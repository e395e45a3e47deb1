//! Clusters at run time: endpoint selection, TCP connects with fail-over, and pooled HTTP
//! connections per endpoint.
//!
//! The HTTP pool is written here rather than taken from `hyper_util`'s legacy client because
//! the proxy needs two things that client hides: choosing the endpoint per request (round
//! robin across a cluster, not per URI authority) and moving on to the next endpoint when a
//! connect fails *before* the request body is consumed, so a refused endpoint never costs the
//! request (the order of attempts is the connection manager's, `crate::hcm::forward`).
//! Each endpoint has one pool of idle HTTP/1.1 connections for both codecs: the byte codec
//! writes on them itself, hyper's client is started on one per exchange and gives it back
//! when the response body ends. HTTP/2 keeps one multiplexed connection per endpoint and
//! worker, opened once for the requests that wait for it. Each worker pools its own
//! (`PerWorker`).
//!
//! A new config takes over a pool only for the same cluster, protocol, endpoint and transport
//! security ([`UpstreamSecurity`]: the cluster's TLS settings and the mesh CA and identity
//! they were made with); every other pool of the old config is retired ([`PreviousPools`]):
//! its idle connections close at once and the ones still in use close after their exchange,
//! so no request travels on terms the new config no longer uses.
//!
//! A pool also carries its endpoint's health ([`HostHealth`], [`HostRecord`]), so a reload
//! that keeps the endpoint keeps its health. Which endpoints may take a request is
//! [`ClusterRuntime::serving`]'s answer: the serving priority level's, or, for a cluster
//! with a health signal, the eligible hosts of the level its plan draws (`crate::priority`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bearing_proxy_config::{
    Cluster, Endpoint, Http2Windows, LoadBalancer, Protocol, TlsMatch, UpstreamHttpTimeouts,
    UpstreamTls,
};
use bytes::Bytes;
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::balance::Picker;
use crate::body::{BodyError, MessageBody};
use crate::circuit::{Held, Occupancy, Overflow, PoolMembers, Resource};
use crate::health::{ClusterHealth, HostHealth};
use crate::idle::{IdleClock, StreamGuard};
use crate::io::Counted;
use crate::mesh_tls::{MeshTlsRuntime, MeshTlsSet};
use crate::outlier::{Detector, HostRecord, Outcome};
use crate::priority::{level_of, serving_level, Levels, Plan};
use crate::retry_priority::PreviousPriorities;
use crate::stats::ClusterStats;
use crate::workers;
use tokio_util::either::Either;

/// Idle HTTP/1 connections each worker keeps per endpoint; more are closed when released.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// Why a cluster could not serve a connection or request.
#[derive(Debug)]
pub enum UpstreamError {
    /// The cluster has no endpoints.
    NoEndpoints,
    /// Every endpoint refused or timed out; the last error is kept.
    ConnectFailed(SocketAddr, io::Error),
    /// The request failed after connecting (reset, protocol error).
    Request(SocketAddr, Box<dyn std::error::Error + Send + Sync>),
    /// The upstream's response is not valid HTTP/1.1 (malformed or oversized head, a status
    /// outside 100-599, faulty framing).
    InvalidResponse(SocketAddr, Box<dyn std::error::Error + Send + Sync>),
    /// The downstream request's body could not be read (a malformed chunk): the client's
    /// fault, not the upstream's.
    RequestBody(hyper::Error),
    /// No response headers within the request's timeout (its route's or its cluster's).
    Timeout(SocketAddr),
    /// No response headers within the cluster's `max_stream_duration` of the try's
    /// connection being ready.
    MaxStreamDuration(SocketAddr),
    /// A circuit breaker of the cluster refused it.
    Overflow(Overflow),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::NoEndpoints => f.write_str("no healthy upstream"),
            UpstreamError::ConnectFailed(a, e) => {
                write!(
                    f,
                    "upstream connect error: every endpoint failed, last {a}: {e}"
                )
            }
            UpstreamError::Request(a, e) => {
                write!(f, "upstream {a} reset before response headers: {e}")
            }
            UpstreamError::InvalidResponse(a, e) => {
                write!(f, "upstream {a} sent an invalid response: {e}")
            }
            UpstreamError::RequestBody(e) => {
                // The innermost cause names what was wrong (an invalid chunk size line).
                let mut cause: &dyn std::error::Error = e;
                while let Some(next) = cause.source() {
                    cause = next;
                }
                write!(f, "invalid request body: {cause}")
            }
            UpstreamError::Timeout(a) => write!(f, "upstream {a} request timeout"),
            UpstreamError::MaxStreamDuration(a) => {
                write!(f, "upstream {a}: max stream duration reached")
            }
            // Envoy's text for a request its circuit breakers refused.
            UpstreamError::Overflow(_) => f.write_str(
                "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            ),
        }
    }
}

impl UpstreamError {
    /// The status of the local reply that reports this failure downstream: 504 for the
    /// response timeout, 502 for an invalid response (RFC 9112 §6.3, as nginx and HAProxy
    /// answer), 400 for a request body that could not be read, 503 for the rest (as Envoy
    /// answers); 504 too when the try reached the cluster's maximum stream duration.
    pub fn status(&self) -> http::StatusCode {
        match self {
            UpstreamError::Timeout(_) | UpstreamError::MaxStreamDuration(_) => {
                http::StatusCode::GATEWAY_TIMEOUT
            }
            UpstreamError::InvalidResponse(..) => http::StatusCode::BAD_GATEWAY,
            UpstreamError::RequestBody(_) => http::StatusCode::BAD_REQUEST,
            _ => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The failure of a request hyper reports once it was sent to `address`: the downstream
    /// body failing (hyper's error from reading it is the cause), an unparsable response, or
    /// any other failure of the exchange.
    pub(crate) fn of_exchange(address: SocketAddr, e: hyper::Error) -> Self {
        let body_failed = e.is_user()
            && std::error::Error::source(&e).is_some_and(|cause| cause.is::<hyper::Error>());
        if body_failed {
            UpstreamError::RequestBody(e)
        } else if e.is_parse() || e.is_parse_status() {
            UpstreamError::InvalidResponse(address, e.into())
        } else {
            UpstreamError::Request(address, e.into())
        }
    }

    /// Whether it is a failure of an exchange with an endpoint (reset, invalid response,
    /// timeout), counted as the cluster's `request_errors`: not a circuit breaker's refusal,
    /// not the downstream request's own fault, not a connect failure (counted apart).
    pub(crate) fn is_exchange_failure(&self) -> bool {
        matches!(
            self,
            UpstreamError::Request(..)
                | UpstreamError::InvalidResponse(..)
                | UpstreamError::Timeout(_)
                | UpstreamError::MaxStreamDuration(_)
        )
    }

    /// Whether a circuit breaker refused it: the reply then carries Envoy's
    /// `x-envoy-overloaded: true`.
    pub fn is_overflow(&self) -> bool {
        matches!(self, UpstreamError::Overflow(_))
    }
}

/// An upstream connection: counted TCP, wrapped in TLS when the cluster originates it. The
/// TLS stream is boxed: inline it made every connection a kilobyte, copied on each move
/// (into and out of the pool, per request).
pub type UpstreamStream =
    Either<Counted<TcpStream>, Box<bearing_tls::TlsStream<Counted<TcpStream>>>>;

/// The upstream connection type in hyper's I/O adapter.
type UpstreamIo = TokioIo<UpstreamStream>;

/// Pooled connections to one endpoint of one cluster.
pub struct EndpointPool {
    address: SocketAddr,
    /// The endpoint's hostname (`Endpoint::hostname`) as a Host value, for routes that
    /// rewrite Host to it; `None` when it has none (or it is no valid header value).
    hostname: Option<HeaderValue>,
    /// The cluster transport its connections use (`Endpoint::tls_match`); `None`: the
    /// cluster's `tls`.
    tls_match: Option<Box<str>>,
    /// Idle HTTP/1.1 connections, owned by no task: the one pool both codecs take from and
    /// return to (the byte codec writes on them itself, hyper's client is started on one for
    /// each exchange and hands it back when the exchange ends).
    idle: PerWorker<Pooled>,
    /// Each worker's multiplexed connection (at most one), shared by that worker's requests.
    h2: PerWorker<H2Slot>,
    /// Why the endpoint takes no traffic, if it does not (active check, outlier ejection).
    health: HostHealth,
    /// Its outcomes as outlier detection counts them.
    outlier: HostRecord,
    /// Requests in flight to the endpoint, counted only for a least request cluster
    /// ([`ActiveRequest`]); pools taken over keep counting theirs.
    active: AtomicU32,
    /// The workers with HTTP connections to the endpoint, counted only for a cluster with
    /// `max_connection_pools`.
    members: Arc<PoolMembers>,
}

/// A request counted among its endpoint's active requests (least request balancing) until
/// its exchange ends, response body included.
pub(crate) struct ActiveRequest(Arc<EndpointPool>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request's hold on its cluster: its unit of `max_requests` and, when the cluster
/// balances by least request, its count among its endpoint's active requests.
pub(crate) struct RequestUnit<O: std::borrow::Borrow<Occupancy>> {
    _unit: Held<O>,
    _active: Option<ActiveRequest>,
}

/// An idle HTTP/1.1 connection in a pool, and since when it idles (stamped only when its
/// cluster has an idle timeout).
struct Pooled {
    stream: UpstreamStream,
    since: Option<Instant>,
}

impl Pooled {
    /// Whether the connection may carry another request under `timeouts`: idle for less than
    /// their idle timeout, open for less than their maximum connection duration, and quiet.
    fn usable(&mut self, timeouts: &UpstreamHttpTimeouts, now: Option<Instant>) -> bool {
        let fresh = match (self.since, timeouts.idle, now) {
            (Some(since), Some(idle), Some(now)) => now.duration_since(since) < idle,
            _ => true,
        };
        fresh && !too_old(&self.stream, timeouts, now) && is_quiet(&mut self.stream)
    }
}

/// Whether `stream` has been open for its cluster's maximum connection duration (`now`, read
/// only when a limit needs it).
fn too_old(stream: &UpstreamStream, timeouts: &UpstreamHttpTimeouts, now: Option<Instant>) -> bool {
    let opened = match stream {
        Either::Left(plain) => plain.opened(),
        Either::Right(tls) => tls.get_ref().opened(),
    };
    match (timeouts.max_connection_duration, now) {
        (Some(max), Some(now)) => now.duration_since(opened) >= max,
        _ => false,
    }
}

/// The time now when `timeouts` set a connection lifetime to check, else `None` (no clock
/// read).
fn now_for(timeouts: &UpstreamHttpTimeouts) -> Option<Instant> {
    (timeouts.idle.is_some() || timeouts.max_connection_duration.is_some()).then(Instant::now)
}

/// Connections of one endpoint, each kept for the worker that opened it: its socket is
/// registered with that worker's epoll and its task runs there, so a request from another
/// worker would be woken across threads for every response (as Envoy, each worker pools
/// its own). HTTP/1 connections are taken out for one request; an HTTP/2 one is shared.
/// One list per worker (and one for the control thread), found by a scan of a few entries.
/// Once retired, it keeps nothing.
struct PerWorker<T>(Mutex<WorkerLists<T>>);

/// The lists of a [`PerWorker`], and whether its pool was retired (checked under the same
/// lock as every insertion, so nothing is kept after [`PerWorker::retire`]).
struct WorkerLists<T> {
    retired: bool,
    lists: Vec<(usize, Vec<T>)>,
}

impl<T> PerWorker<T> {
    fn new() -> Self {
        PerWorker(Mutex::new(WorkerLists {
            retired: false,
            lists: Vec::new(),
        }))
    }

    /// Runs `f` on this worker's connections, under the lock.
    fn mine<R>(&self, f: impl FnOnce(&mut Vec<T>) -> R) -> R {
        let worker = workers::current();
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let retired = state.retired;
        let all = &mut state.lists;
        let i = match all.iter().position(|(w, _)| *w == worker) {
            Some(i) => i,
            None => {
                all.push((worker, Vec::new()));
                all.len() - 1
            }
        };
        let mine = &mut all[i].1;
        let out = f(mine);
        if retired {
            mine.clear();
        }
        out
    }

    /// Keeps nothing from now on, and gives back (to drop outside the lock) what it held.
    fn retire(&self) -> Vec<(usize, Vec<T>)> {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        state.retired = true;
        std::mem::take(&mut state.lists)
    }

    /// The newest of this worker's connections `usable` accepts; on the way, the newer ones
    /// it refuses are dropped.
    fn take(&self, mut usable: impl FnMut(&mut T) -> bool) -> Option<T> {
        self.mine(|idle| {
            while let Some(mut newest) = idle.pop() {
                if usable(&mut newest) {
                    return Some(newest);
                }
            }
            None
        })
    }

    /// Takes one connection kept by any worker (the newest of the first worker with one).
    fn take_any(&self) -> Option<T> {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.lists.iter_mut().find_map(|(_, idle)| idle.pop())
    }

    /// Keeps `connection` for this worker unless it has enough idle ones to this endpoint.
    fn put(&self, connection: T) {
        self.mine(|idle| {
            if idle.len() < MAX_IDLE_PER_ENDPOINT {
                idle.push(connection);
            }
        })
    }
}

/// The outcome of opening an HTTP/2 connection, as the requests that waited for it see it
/// (`None` until it is known).
type H2Opened = Option<Result<http2::SendRequest<RequestBody>, io::Error>>;

/// A worker's HTTP/2 connection to an endpoint: in use, or being opened by one request while
/// the worker's other requests wait for it (as Envoy queues requests on a connecting HTTP/2
/// pool) instead of each opening a connection of its own.
enum H2Slot {
    Ready(http2::SendRequest<RequestBody>),
    Opening(watch::Receiver<H2Opened>),
}

/// What a request does about its worker's HTTP/2 connection.
enum H2Turn {
    Use(http2::SendRequest<RequestBody>),
    Wait(watch::Receiver<H2Opened>),
    Open(watch::Sender<H2Opened>),
}

impl EndpointPool {
    /// An empty pool for `endpoint`.
    pub fn new(endpoint: &Endpoint) -> Arc<Self> {
        Arc::new(EndpointPool {
            address: endpoint.address,
            hostname: endpoint
                .hostname
                .as_deref()
                .and_then(|h| HeaderValue::from_str(h).ok()),
            tls_match: endpoint.tls_match.as_deref().map(Box::from),
            idle: PerWorker::new(),
            h2: PerWorker::new(),
            health: HostHealth::default(),
            outlier: HostRecord::default(),
            active: AtomicU32::new(0),
            members: Arc::default(),
        })
    }

    /// The endpoint's health flags.
    pub fn health(&self) -> &HostHealth {
        &self.health
    }

    /// The endpoint's outlier detection record.
    pub(crate) fn outlier(&self) -> &HostRecord {
        &self.outlier
    }

    /// The endpoint this pool connects to.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The endpoint's hostname, for a route rewriting Host to it.
    pub(crate) fn hostname(&self) -> Option<&HeaderValue> {
        self.hostname.as_ref()
    }

    /// Whether this pool's connections are those of `endpoint` (same address, hostname and
    /// transport), so that a new endpoint set or config may keep it.
    fn serves(&self, endpoint: &Endpoint) -> bool {
        self.address == endpoint.address
            && self.tls_match.as_deref() == endpoint.tls_match.as_deref()
            && self.hostname.as_ref().map(HeaderValue::as_bytes)
                == endpoint.hostname.as_deref().map(str::as_bytes)
    }

    /// Takes the pool out of service: its idle connections close now, and connections in
    /// use close when their exchange ends instead of coming back.
    fn retire(&self) {
        // Dropped here, outside the locks: an idle stream closes, a closed HTTP/2 handle ends
        // its connection once its open streams finish.
        drop((self.idle.retire(), self.h2.retire()));
    }

    /// An idle HTTP/1.1 connection that has neither closed nor sent anything since its last
    /// response, nor outlived `timeouts` (idle, age); the others are dropped (closed).
    fn take_idle(&self, timeouts: &UpstreamHttpTimeouts) -> Option<UpstreamStream> {
        let now = now_for(timeouts);
        self.idle
            .take(|pooled| pooled.usable(timeouts, now))
            .map(|pooled| pooled.stream)
    }

    /// Returns an HTTP/1.1 connection whose last response was read to its end, for the next
    /// request of either codec; it closes instead when requests wait for a connection of the
    /// cluster, so that one of them, on any worker, can open its own, or when it has lived
    /// its cluster's maximum connection duration (`timeouts`).
    pub(crate) fn release(
        &self,
        stream: UpstreamStream,
        occupancy: &Occupancy,
        timeouts: &UpstreamHttpTimeouts,
    ) {
        let now = now_for(timeouts);
        if !occupancy.has_waiters() && !too_old(&stream, timeouts, now) {
            let since = now.filter(|_| timeouts.idle.is_some());
            self.idle.put(Pooled { stream, since });
        }
    }

    /// Closes one idle connection of any worker; whether there was one.
    fn close_one_idle(&self) -> bool {
        self.idle.take_any().is_some()
    }

    /// This worker's HTTP/2 connection to use, the attempt under way to wait for, or the
    /// turn to open one: when there is none, it closed, or the request opening it went away.
    fn h2_turn(&self) -> H2Turn {
        self.h2.mine(|slot| {
            match slot.first() {
                Some(H2Slot::Ready(sender)) if !sender.is_closed() => {
                    return H2Turn::Use(sender.clone())
                }
                Some(H2Slot::Opening(opening)) if opening.has_changed().is_ok() => {
                    return H2Turn::Wait(opening.clone())
                }
                _ => {}
            }
            let (outcome, opening) = watch::channel(None);
            slot.clear();
            slot.push(H2Slot::Opening(opening));
            H2Turn::Open(outcome)
        })
    }

    /// Records how this worker's attempt to open an HTTP/2 connection ended.
    fn h2_opened(&self, sender: Option<&http2::SendRequest<RequestBody>>) {
        self.h2.mine(|slot| {
            slot.clear();
            slot.extend(sender.cloned().map(H2Slot::Ready));
        })
    }

    /// Forgets this worker's HTTP/2 connection once it refuses new streams (GOAWAY); an
    /// attempt already under way to replace it stays.
    pub(crate) fn forget_h2(&self) {
        self.h2
            .mine(|slot| slot.retain(|s| matches!(s, H2Slot::Opening(_))))
    }
}

/// The transport security a cluster's upstream connections are made with: its TLS settings
/// (and its per-endpoint transports, `Cluster::tls_matches`) and, for mesh mTLS, the mesh TLS
/// states (CA, this proxy's identity) they come from. Equal only when all are the same: a
/// rebuilt mesh state (another CA, other services) is a change.
#[derive(Clone, Default)]
pub struct UpstreamSecurity {
    tls: Option<UpstreamTls>,
    matches: Vec<TlsMatch>,
    meshes: Vec<Arc<MeshTlsRuntime>>,
}

impl UpstreamSecurity {
    /// The security of a cluster originating `tls`, with the mesh states of `meshes`.
    pub fn new(tls: Option<&UpstreamTls>, meshes: &MeshTlsSet) -> Self {
        UpstreamSecurity {
            tls: tls.cloned(),
            matches: Vec::new(),
            meshes: tls
                .and_then(|t| mesh_state(t, meshes))
                .into_iter()
                .collect(),
        }
    }

    /// The security of `cluster`: its `tls` and its `tls_matches`.
    pub fn of(cluster: &Cluster, meshes: &MeshTlsSet) -> Self {
        let mut security = UpstreamSecurity::new(cluster.tls.as_ref(), meshes);
        security.matches = cluster.tls_matches.clone();
        let states = cluster.tls_matches.iter().filter_map(|m| m.tls.as_ref());
        security
            .meshes
            .extend(states.filter_map(|t| mesh_state(t, meshes)));
        security
    }
}

/// The mesh state mesh mTLS `tls` is made from.
fn mesh_state(tls: &UpstreamTls, meshes: &MeshTlsSet) -> Option<Arc<MeshTlsRuntime>> {
    match tls {
        UpstreamTls::Mesh { mesh, .. } => meshes.get(mesh).cloned(),
        UpstreamTls::External { .. } => None,
    }
}

impl PartialEq for UpstreamSecurity {
    fn eq(&self, other: &Self) -> bool {
        let same_meshes = self.meshes.len() == other.meshes.len()
            && self
                .meshes
                .iter()
                .zip(&other.meshes)
                .all(|(a, b)| Arc::ptr_eq(a, b));
        same_meshes && self.tls == other.tls && self.matches == other.matches
    }
}

/// What a pool's connections were made under: cluster, protocol, HTTP/2 windows, endpoint
/// address (its hostname and transport are checked with [`EndpointPool::serves`]).
type PoolKey = (String, Protocol, Http2Windows, SocketAddr);

/// The endpoint pools of the config being replaced, by cluster, protocol, HTTP/2 windows and
/// endpoint, with the security their connections were made with. The new config takes over a
/// pool only where all are unchanged; [`PreviousPools::retire_rest`] retires the others.
#[derive(Default)]
pub struct PreviousPools(HashMap<PoolKey, (Arc<EndpointPool>, UpstreamSecurity)>);

impl PreviousPools {
    /// The pools of `clusters` (a cluster listed twice counts once).
    pub fn of<'c>(clusters: impl IntoIterator<Item = &'c ClusterRuntime>) -> Self {
        let mut pools = HashMap::new();
        for cluster in clusters {
            let c = &cluster.config;
            let view = cluster.view();
            for p in (0..view.len()).map(|i| view.pool(i)) {
                let key = (c.name.clone(), c.protocol, c.http2_windows, p.address);
                pools.insert(key, (p.into_owned(), cluster.security.clone()));
            }
        }
        PreviousPools(pools)
    }

    /// The pool for `endpoint` of `cluster` made with `security`: the previous one when the
    /// cluster, protocol, HTTP/2 windows, endpoint and security are unchanged, else a new one
    /// (the previous one, if any, is retired).
    pub fn take(
        &mut self,
        cluster: &Cluster,
        endpoint: &Endpoint,
        security: &UpstreamSecurity,
    ) -> Arc<EndpointPool> {
        let key = (
            cluster.name.clone(),
            cluster.protocol,
            cluster.http2_windows,
            endpoint.address,
        );
        let new = || {
            let pool = EndpointPool::new(endpoint);
            // A host new to a checked cluster waits for its first check, as in Envoy.
            if cluster.health.check.is_some() {
                pool.health.await_first_check();
            }
            pool
        };
        match self.0.remove(&key) {
            Some((pool, old)) if old == *security && pool.serves(endpoint) => pool,
            Some((pool, _)) => {
                pool.retire();
                new()
            }
            None => new(),
        }
    }

    /// Retires every pool no cluster took over: called once the new config is in force, so
    /// no request of the old one opens a connection into them afterwards.
    pub fn retire_rest(self) {
        for (pool, _) in self.0.into_values() {
            pool.retire();
        }
    }
}

/// A cluster of the applied config, with its pools and metrics.
pub struct ClusterRuntime {
    /// The cluster as compiled.
    pub config: Cluster,
    /// Its metrics.
    pub stats: ClusterStats,
    endpoints: ClusterEndpoints,
    /// The index range of the config's endpoints that take the traffic
    /// (`ClusterEndpoints::Fixed`; a resolved set has its own).
    serving_level: Range<usize>,
    /// How the first endpoint is picked among those of `serving_level` (a resolved set has
    /// its own).
    picker: Picker,
    /// The round robin counter.
    next: AtomicUsize,
    /// TLS originated upstream; an error when the cluster needs TLS that cannot be set up.
    tls: Transport,
    /// The transports of `Cluster::tls_matches`, by name, for the endpoints selecting one.
    matched: Vec<(String, Transport)>,
    /// What `tls` was made from, for the next config's [`PreviousPools`].
    security: UpstreamSecurity,
    /// The endpoints' health and the plan that follows it, when the cluster has a health
    /// signal (active health check, outlier detection); `None`: every host is healthy.
    health: Option<ClusterHealth>,
    /// The config's endpoints by priority level, for retries that draw their own level
    /// without a health plan; made by the first.
    levels: OnceLock<Levels>,
}

/// How a cluster's connections to an endpoint are secured: plaintext (`None`), TLS with a
/// connector, or the reason the TLS the cluster needs could not be set up.
pub type Transport = Option<Result<bearing_tls::TlsConnector, String>>;

/// Where a cluster's endpoints and their pools come from.
pub enum ClusterEndpoints {
    /// The config's endpoints: one pool per `Cluster::endpoints` entry, in order.
    Fixed(Vec<Arc<EndpointPool>>),
    /// Hostnames resolved at run time (`crate::dns_cluster`): the set in force, replaced as
    /// they resolve.
    Resolved(Arc<ResolvedPools>),
}

/// Endpoints and their pools, in the same order (by priority), which take the traffic, and
/// how the first is picked among them.
pub struct EndpointSet {
    endpoints: Vec<Endpoint>,
    pools: Vec<Arc<EndpointPool>>,
    serving_level: Range<usize>,
    balancer: LoadBalancer,
    picker: Picker,
    /// The endpoints by priority level, for retries that draw their own level; made by the
    /// first.
    levels: OnceLock<Levels>,
}

impl EndpointSet {
    /// `endpoints` (put in order of priority, a level's own order kept) with their pools from
    /// `pool` (one per endpoint), balanced by `balancer` (its ring or table built here).
    pub fn new(
        mut endpoints: Vec<Endpoint>,
        balancer: LoadBalancer,
        pool: impl FnMut(&Endpoint) -> Arc<EndpointPool>,
    ) -> Self {
        endpoints.sort_by_key(|e| e.priority);
        let pools = endpoints.iter().map(pool).collect();
        let serving_level = serving_level(&endpoints);
        let picker = Picker::new(&balancer, &endpoints[serving_level.clone()]);
        EndpointSet {
            endpoints,
            pools,
            serving_level,
            balancer,
            picker,
            levels: OnceLock::new(),
        }
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The endpoints' pools, in the same order.
    pub fn pools(&self) -> &[Arc<EndpointPool>] {
        &self.pools
    }
}

/// The endpoint set of a cluster whose hostnames are resolved at run time: read lock-free by
/// the hot path (one `ArcSwap` load per request or connection), replaced by the resolver.
pub struct ResolvedPools(ArcSwap<EndpointSet>);

impl ResolvedPools {
    /// Starting with `set`.
    pub fn new(set: EndpointSet) -> Arc<Self> {
        Arc::new(ResolvedPools(ArcSwap::from_pointee(set)))
    }

    /// The set in force.
    pub fn current(&self) -> Arc<EndpointSet> {
        self.0.load_full()
    }

    /// Whether `set` is the set in force.
    pub fn is_current(&self, set: &Arc<EndpointSet>) -> bool {
        Arc::ptr_eq(&self.0.load(), set)
    }

    /// Puts `endpoints` in force: an address kept keeps its pool (and idle connections), a
    /// new one gets a new pool, and the pool of an address gone is retired (its idle
    /// connections close, those in use close after their exchange), as Envoy drains the
    /// connections of a host DNS no longer returns. Callers serialise updates.
    pub fn update(&self, endpoints: Vec<Endpoint>) {
        let old = self.0.load_full();
        let set = Arc::new(EndpointSet::new(endpoints, old.balancer, |e| {
            old.pools
                .iter()
                .find(|p| p.serves(e))
                .cloned()
                .unwrap_or_else(|| EndpointPool::new(e))
        }));
        self.0.store(set.clone());
        let kept = |p: &&Arc<EndpointPool>| set.pools.iter().any(|k| Arc::ptr_eq(k, p));
        for gone in old.pools.iter().filter(|p| !kept(p)) {
            gone.retire();
        }
    }
}

/// A pool of a cluster for one request or connection: borrowed from the config's endpoints,
/// or held from the resolved set it was picked from.
pub(crate) type PoolRef<'c> = Cow<'c, Arc<EndpointPool>>;

/// A cluster's endpoints as one request sees them: all of them, or those of the priority
/// level serving it (a resolved set's by their index range).
pub(crate) enum EndpointsView<'c> {
    Fixed(&'c [Endpoint], &'c [Arc<EndpointPool>]),
    Resolved(Arc<EndpointSet>, Range<usize>),
    /// The eligible hosts of one priority level of a health plan: the plan, the level, and
    /// the cluster's endpoints and pools its indices point into.
    Planned(Arc<Plan>, usize, &'c [Endpoint], &'c [Arc<EndpointPool>]),
    /// The same over a resolved set: the plan, the level, and the set its indices point into.
    PlannedSet(Arc<Plan>, usize, Arc<EndpointSet>),
}

impl<'c> EndpointsView<'c> {
    /// The active requests of the `i`th endpoint (counted under least request only).
    fn active(&self, i: usize) -> u32 {
        let pool = match self {
            EndpointsView::Fixed(_, pools) => pools.get(i),
            EndpointsView::Resolved(set, range) => set.pools.get(range.start + i),
            EndpointsView::Planned(plan, level, _, pools) => {
                plan.hosts(*level).get(i).and_then(|&j| pools.get(j))
            }
            EndpointsView::PlannedSet(plan, level, set) => {
                plan.hosts(*level).get(i).and_then(|&j| set.pools.get(j))
            }
        };
        pool.map_or(0, |p| p.active.load(Ordering::Relaxed))
    }

    fn len(&self) -> usize {
        match self {
            EndpointsView::Fixed(_, pools) => pools.len(),
            EndpointsView::Resolved(_, range) => range.len(),
            EndpointsView::Planned(plan, level, ..) | EndpointsView::PlannedSet(plan, level, _) => {
                plan.hosts(*level).len()
            }
        }
    }

    fn endpoint(&self, i: usize) -> Option<&Endpoint> {
        match self {
            EndpointsView::Fixed(endpoints, _) => endpoints.get(i),
            EndpointsView::Resolved(set, range) => set.endpoints.get(range.start + i),
            EndpointsView::Planned(plan, level, endpoints, _) => {
                endpoints.get(*plan.hosts(*level).get(i)?)
            }
            EndpointsView::PlannedSet(plan, level, set) => {
                set.endpoints.get(*plan.hosts(*level).get(i)?)
            }
        }
    }

    fn pool(&self, i: usize) -> PoolRef<'c> {
        match self {
            EndpointsView::Fixed(_, pools) => Cow::Borrowed(&pools[i]),
            EndpointsView::Resolved(set, range) => Cow::Owned(set.pools[range.start + i].clone()),
            EndpointsView::Planned(plan, level, _, pools) => {
                Cow::Borrowed(&pools[plan.hosts(*level)[i]])
            }
            EndpointsView::PlannedSet(plan, level, set) => {
                Cow::Owned(set.pools[plan.hosts(*level)[i]].clone())
            }
        }
    }
}

/// Endpoints in the order to try them for one connection: the load balancer's start, then
/// the rest.
pub(crate) struct Rotation<'c> {
    view: EndpointsView<'c>,
    start: usize,
    step: usize,
}

impl<'c> Iterator for Rotation<'c> {
    type Item = PoolRef<'c>;

    fn next(&mut self) -> Option<PoolRef<'c>> {
        let n = self.view.len();
        if self.step >= n {
            return None;
        }
        let i = (self.start + self.step) % n;
        self.step += 1;
        Some(self.view.pool(i))
    }
}

/// Why a request got no connection: its own attempt failed (counted as a failed connect),
/// the attempt of another request it waited for did, or a circuit breaker refused it.
pub(crate) enum NoConnection {
    Failed(io::Error),
    Shared(io::Error),
    Overflow(Overflow),
}

impl NoConnection {
    /// The request's own attempt failed with `e`.
    pub(crate) fn failed(e: io::Error) -> Self {
        Overflow::of(&e).map_or(NoConnection::Failed(e), NoConnection::Overflow)
    }

    /// The attempt of the request it waited for failed with `e`.
    fn shared(e: io::Error) -> Self {
        Overflow::of(&e).map_or(NoConnection::Shared(e), NoConnection::Overflow)
    }
}

/// An HTTP connection checked out of a pool for one request, for hyper's client: an HTTP/1.1
/// exchange on a pooled stream, or a handle of this worker's HTTP/2 connection.
pub(crate) enum Checkout {
    H1(H1Exchange),
    H2(http2::SendRequest<RequestBody>),
}

impl ClusterRuntime {
    /// A runtime cluster over `endpoints`, originating TLS with `tls` when given (and with
    /// `matched`, by name, towards the endpoints selecting one of `Cluster::tls_matches`),
    /// made from `security`.
    pub fn new(
        config: Cluster,
        stats: ClusterStats,
        endpoints: ClusterEndpoints,
        (tls, matched): (Transport, Vec<(String, Transport)>),
        security: UpstreamSecurity,
    ) -> Self {
        // Hosts resolved by DNS have outlier detection only: the translation refuses active
        // checks on them.
        let detector = || {
            let outlier = config.health.outlier.clone();
            outlier.map(|o| Detector::new(o, stats.outlier.clone()))
        };
        let health = match &endpoints {
            _ if !config.health.is_tracked() => None,
            ClusterEndpoints::Fixed(pools) => Some(ClusterHealth::new(&config, pools, detector())),
            ClusterEndpoints::Resolved(resolved) => Some(ClusterHealth::resolved(
                &config,
                resolved.clone(),
                detector(),
            )),
        };
        let serving = serving_level(&config.endpoints);
        let level = config.endpoints.get(serving.clone()).unwrap_or_default();
        let runtime = ClusterRuntime {
            picker: Picker::new(&config.load_balancer, level),
            serving_level: serving,
            config,
            stats,
            endpoints,
            next: AtomicUsize::new(0),
            tls,
            matched,
            security,
            health,
            levels: OnceLock::new(),
        };
        runtime.refresh_health();
        runtime
    }

    /// The endpoints' health, when the cluster has a health signal.
    pub fn health(&self) -> Option<&ClusterHealth> {
        self.health.as_ref()
    }

    /// Recomputes the plan from the endpoints' health (after a signal changed it) and
    /// exports the healthy count (Envoy's `membership_healthy`).
    pub fn refresh_health(&self) {
        if let Some(health) = &self.health {
            health.refresh(&self.config);
            self.stats
                .membership_healthy
                .set(health.healthy_count() as i64);
        }
    }

    /// Tells outlier detection, if the cluster has it, what happened on an attempt towards
    /// `pool`'s endpoint. Costs one branch when it has not.
    pub(crate) fn observe(&self, pool: &EndpointPool, outcome: Outcome) {
        let Some(health) = &self.health else {
            return;
        };
        if let Some(detector) = &health.detector {
            if detector.put(pool, &health.pools(), outcome) {
                self.refresh_health();
            }
        }
    }

    /// The endpoints in force and their pools, every priority level.
    pub(crate) fn view(&self) -> EndpointsView<'_> {
        match &self.endpoints {
            ClusterEndpoints::Fixed(pools) => EndpointsView::Fixed(&self.config.endpoints, pools),
            ClusterEndpoints::Resolved(resolved) => {
                let set = resolved.current();
                let all = 0..set.pools.len();
                EndpointsView::Resolved(set, all)
            }
        }
    }

    /// The endpoints eligible for a request (`crate::priority`): without a health signal,
    /// those of the highest level with endpoints; with one, the eligible hosts of the level
    /// drawn by the plan's loads (one `ArcSwap` load, and a random draw only when more than
    /// one level takes traffic).
    fn serving(&self, hash: Option<u64>) -> EndpointsView<'_> {
        if let Some(health) = &self.health {
            // A consistent-hashing cluster draws by the request's hash (Envoy's
            // `choosePriority(hash % 100)`), the others at random.
            let draw = |plan: &Plan| match (plan.is_single(), hash) {
                (true, _) => 0,
                (false, Some(h)) if self.picker.is_consistent_hashing() => (h % 100) as u32,
                (false, _) => rand::random::<u32>() % 100,
            };
            if let ClusterEndpoints::Fixed(pools) = &self.endpoints {
                let plan = health.plan();
                let level = plan.level_of(draw(&plan));
                return EndpointsView::Planned(plan, level, &self.config.endpoints, pools);
            }
            // A resolved set's plan always names its set.
            let planned = health.planned(&self.config);
            if let Some(set) = &planned.set {
                let level = planned.plan.level_of(draw(&planned.plan));
                return EndpointsView::PlannedSet(planned.plan.clone(), level, set.clone());
            }
        }
        match &self.endpoints {
            ClusterEndpoints::Fixed(pools) => {
                let level = self.serving_level.clone();
                let endpoints = self.config.endpoints.get(level.clone()).unwrap_or_default();
                EndpointsView::Fixed(endpoints, pools.get(level).unwrap_or_default())
            }
            ClusterEndpoints::Resolved(resolved) => {
                let set = resolved.current();
                let level = set.serving_level.clone();
                EndpointsView::Resolved(set, level)
            }
        }
    }

    /// Endpoints in the order to try them for one connection or request, among the priority
    /// level that serves it: the start the cluster's load balancer picks (`crate::balance`;
    /// `hash`: the request's, for consistent hashing), then the rest of the level.
    pub(crate) fn rotation(&self, hash: Option<u64>) -> Rotation<'_> {
        self.rotation_at(hash, 0)
    }

    /// [`Self::rotation`] for the pick after `attempt` picks a retry host predicate rejected
    /// (consistent hashing moves on from the request's point by it, as Envoy's).
    fn rotation_at(&self, hash: Option<u64>, attempt: u32) -> Rotation<'_> {
        let view = self.serving(hash);
        let n = view.len();
        let start = match n {
            0 => 0,
            _ => {
                // A health plan's level is not the level the cluster's picker was built over:
                // a consistent-hashing cluster's plan has its own per level; the other pickers
                // only need the view's size and active requests.
                let picker = match &view {
                    EndpointsView::Planned(plan, level, ..) => {
                        plan.picker(*level).unwrap_or(&self.picker)
                    }
                    EndpointsView::PlannedSet(plan, level, set) => {
                        plan.picker(*level).unwrap_or(&set.picker)
                    }
                    EndpointsView::Fixed(..) => &self.picker,
                    EndpointsView::Resolved(set, _) => &set.picker,
                };
                picker.start((n, attempt), &self.next, hash, |i| view.active(i))
            }
        };
        Rotation {
            view,
            start,
            step: 0,
        }
    }

    /// [`Self::rotation_at`] for a retry under `previous_priorities`: the level drawn from
    /// the load `priorities` gives (`crate::retry_priority`) over the levels' health (the
    /// plan's, or every level with endpoints whole without a health signal), among its
    /// eligible hosts. The cluster's own rotation when `priorities` leaves the load as it is,
    /// and on a consistent-hashing cluster (Envoy's ring hash and Maglev draw their level
    /// without asking).
    fn retry_rotation(
        &self,
        (hash, attempt): (Option<u64>, u32),
        priorities: &mut PreviousPriorities,
    ) -> Rotation<'_> {
        if self.picker.is_consistent_hashing() {
            return self.rotation_at(hash, attempt);
        }
        let draw = rand::random::<u32>() % 100;
        let (view, picker) = match (&self.health, &self.endpoints) {
            (Some(health), ClusterEndpoints::Fixed(pools)) => {
                let plan = health.plan();
                let Some(loads) = priorities.loads(plan.health()) else {
                    return self.rotation_at(hash, attempt);
                };
                let level = level_of(loads, draw);
                let endpoints = &self.config.endpoints;
                (EndpointsView::Planned(plan, level, endpoints, pools), None)
            }
            (None, ClusterEndpoints::Fixed(pools)) => {
                let endpoints = &self.config.endpoints;
                let levels = self
                    .levels
                    .get_or_init(|| Levels::new(&self.config.load_balancer, endpoints));
                let Some(loads) = priorities.loads(levels.health()) else {
                    return self.rotation_at(hash, attempt);
                };
                let level = level_of(loads, draw);
                let range = levels.range(level);
                let view = EndpointsView::Fixed(
                    endpoints.get(range.clone()).unwrap_or_default(),
                    pools.get(range).unwrap_or_default(),
                );
                (view, levels.picker(level))
            }
            (Some(health), ClusterEndpoints::Resolved(_)) => {
                let planned = health.planned(&self.config);
                let loads = priorities.loads(planned.plan.health());
                let (Some(set), Some(loads)) = (planned.set.clone(), loads) else {
                    return self.rotation_at(hash, attempt);
                };
                let level = level_of(loads, draw);
                (
                    EndpointsView::PlannedSet(planned.plan.clone(), level, set),
                    None,
                )
            }
            (None, ClusterEndpoints::Resolved(resolved)) => {
                let set = resolved.current();
                let levels = set
                    .levels
                    .get_or_init(|| Levels::new(&set.balancer, &set.endpoints));
                let Some(loads) = priorities.loads(levels.health()) else {
                    return self.rotation_at(hash, attempt);
                };
                let level = level_of(loads, draw);
                let range = levels.range(level);
                let n = range.len();
                let start = match (n, levels.picker(level)) {
                    (0, _) | (_, None) => 0,
                    (_, Some(picker)) => picker.start((n, attempt), &self.next, hash, |i| {
                        set.pools
                            .get(range.start + i)
                            .map_or(0, |p| p.active.load(Ordering::Relaxed))
                    }),
                };
                let view = EndpointsView::Resolved(set.clone(), range);
                return Rotation {
                    view,
                    start,
                    step: 0,
                };
            }
        };
        // A plan keeps a picker per level only where picks depend on the endpoints; the
        // cluster's serves its levels otherwise (it needs their count alone).
        let picker = match &view {
            EndpointsView::Planned(plan, level, ..) => plan.picker(*level).or(Some(&self.picker)),
            EndpointsView::PlannedSet(plan, level, set) => {
                plan.picker(*level).or(Some(&set.picker))
            }
            _ => picker,
        };
        let n = view.len();
        let start = match (n, picker) {
            (0, _) | (_, None) => 0,
            (_, Some(picker)) => picker.start((n, attempt), &self.next, hash, |i| view.active(i)),
        };
        Rotation {
            view,
            start,
            step: 0,
        }
    }

    /// The priority of the endpoint whose pool is at `pool` (its `Arc::as_ptr`), found among
    /// the endpoints in force.
    pub(crate) fn priority_of(&self, pool: usize) -> Option<u32> {
        let find = |pools: &[Arc<EndpointPool>], endpoints: &[Endpoint]| {
            let i = pools.iter().position(|p| Arc::as_ptr(p) as usize == pool)?;
            endpoints.get(i).map(|e| e.priority)
        };
        match &self.endpoints {
            ClusterEndpoints::Fixed(pools) => find(pools, &self.config.endpoints),
            ClusterEndpoints::Resolved(resolved) => {
                let set = resolved.current();
                find(&set.pools, &set.endpoints)
            }
        }
    }

    /// The endpoint of a retry under retry host predicates or `previous_priorities`, as
    /// Envoy's load balancer chooses one: up to `1 + max_attempts` picks (each a pick of its
    /// own: the level drawn again under `priorities`, the round robin moves on, a random draw
    /// is drawn again, consistent hashing moves on from the request's hash, drawn once here
    /// when the request has none), the first that `rejects` (given its pool and endpoint)
    /// lets through, else the last; `None`: no endpoint serves.
    pub(crate) fn pick_for_retry(
        &self,
        (hash, max_attempts): (Option<u64>, u32),
        mut priorities: Option<&mut PreviousPriorities>,
        rejects: impl Fn(&Arc<EndpointPool>, &Endpoint) -> bool,
    ) -> Option<PoolRef<'_>> {
        let hash = hash.or_else(|| self.picker.is_consistent_hashing().then(rand::random));
        let mut last = None;
        for attempt in 0..=max_attempts {
            let Rotation { view, start, .. } = match priorities.as_deref_mut() {
                Some(p) => self.retry_rotation((hash, attempt), p),
                None => self.rotation_at(hash, attempt),
            };
            let endpoint = view.endpoint(start)?;
            let pool = view.pool(start);
            if !rejects(&pool, endpoint) {
                return Some(pool);
            }
            last = Some(pool);
        }
        last
    }

    /// `pool`'s request counted among its endpoint's active ones while the returned guard
    /// lives, when the cluster balances by least request; else nothing is counted.
    fn active_request(&self, pool: &Arc<EndpointPool>) -> Option<ActiveRequest> {
        if !self.picker.counts_requests() {
            return None;
        }
        pool.active.fetch_add(1, Ordering::Relaxed);
        Some(ActiveRequest(pool.clone()))
    }

    /// A unit of the cluster's `max_connections` for a new connection. Past the threshold an
    /// HTTP request (`wait`) waits for a connection to close, as one of at most
    /// `max_pending_requests`, for up to the request timeout (the connect timeout without
    /// one); a TCP connection is refused at once.
    async fn connection_unit(&self, wait: bool) -> io::Result<Held<Arc<Occupancy>>> {
        let limits = self.config.circuit_breakers;
        let occupancy = &self.stats.occupancy;
        let max = limits.max_connections;
        if let Some(unit) = Occupancy::take(occupancy.clone(), Resource::Connection, max) {
            return Ok(unit);
        }
        self.stats.cx_overflow.inc();
        if !wait {
            return Err(Overflow::Connections.into());
        }
        let limit = self
            .config
            .request_timeout
            .unwrap_or(self.config.connect_timeout);
        let make_room = || {
            let view = self.view();
            (0..view.len()).any(|i| view.pool(i).close_one_idle());
        };
        match occupancy
            .wait_for_connection(max, limits.max_pending_requests, limit, make_room)
            .await
        {
            Ok(unit) => Ok(unit),
            Err(overflow) => {
                self.stats.rq_pending_overflow.inc();
                Err(overflow.into())
            }
        }
    }

    /// A unit of the cluster's `max_requests` for one request on a connection to `pool`'s
    /// endpoint (counted among its active requests under least request); past the
    /// threshold the request is refused (counted as Envoy's `upstream_rq_pending_overflow`).
    pub(crate) fn request_unit<O: std::borrow::Borrow<Occupancy>>(
        &self,
        occupancy: O,
        pool: &Arc<EndpointPool>,
    ) -> Result<RequestUnit<O>, UpstreamError> {
        let max = self.config.circuit_breakers.max_requests;
        match Occupancy::take(occupancy, Resource::Request, max) {
            Some(unit) => Ok(RequestUnit {
                _unit: unit,
                _active: self.active_request(pool),
            }),
            None => {
                self.stats.rq_pending_overflow.inc();
                Err(UpstreamError::Overflow(Overflow::Requests))
            }
        }
    }

    /// Whether a request may make a further attempt (another endpoint, a repeat): it takes a
    /// unit of `max_retries` for the rest of the request, once (`retry` keeps it).
    pub(crate) fn may_retry<'a>(&'a self, retry: &mut Option<Held<&'a Occupancy>>) -> bool {
        if retry.is_none() {
            let max = self.config.circuit_breakers.max_retries;
            *retry = Occupancy::take(&*self.stats.occupancy, Resource::Retry, max);
            if retry.is_none() {
                self.stats.rq_retry_overflow.inc();
            }
        }
        retry.is_some()
    }

    /// Connects to `pool`'s endpoint, and completes the TLS handshake when the cluster
    /// originates TLS towards it, both within the connect timeout; the connection holds a
    /// unit of `max_connections` (waited for when `wait`, see `connection_unit`).
    async fn connect(&self, pool: &EndpointPool, wait: bool) -> io::Result<UpstreamStream> {
        // An HTTP connection of a worker with none to the endpoint makes a connection pool
        // (Envoy's per worker and host); TCP proxying has no such limit in Envoy.
        let membership = match self.config.circuit_breakers.max_connection_pools {
            Some(max) if wait => {
                let worker = crate::workers::current();
                match pool.members.join(worker, &self.stats.occupancy, max) {
                    Some(m) => Some(m),
                    None => {
                        self.stats.cx_pool_overflow.inc();
                        return Err(Overflow::ConnectionPools.into());
                    }
                }
            }
            _ => None,
        };
        let unit = self.connection_unit(wait).await?;
        let limit = self.config.connect_timeout;
        let stream = crate::io::connect(pool.address, None, limit).await?;
        self.stats.connections.inc();
        let counted = Counted::new(
            stream,
            self.stats.rx_bytes.clone(),
            self.stats.tx_bytes.clone(),
        )
        .holding(unit)
        .in_pool(membership);
        self.secure(pool, counted).await
    }

    /// A connection to `pool`'s endpoint for an active health check: the endpoint's
    /// transport as traffic has, but no traffic metric and no circuit-breaker unit (Envoy's
    /// health check connections are not the cluster's traffic). The caller bounds the time.
    pub(crate) async fn connect_probe(&self, pool: &EndpointPool) -> io::Result<UpstreamStream> {
        let stream = crate::io::connect(pool.address, None, self.config.connect_timeout).await?;
        let counted = Counted::new(stream, Counter::default(), Counter::default());
        self.secure(pool, counted).await
    }

    /// Wraps `counted` in the TLS `pool`'s endpoint connects with (its matched transport or
    /// the cluster's), handshaking within the connect timeout; plaintext as it is.
    async fn secure(
        &self,
        pool: &EndpointPool,
        counted: Counted<TcpStream>,
    ) -> io::Result<UpstreamStream> {
        let address = pool.address;
        let limit = self.config.connect_timeout;
        let transport = match pool.tls_match.as_deref() {
            None => &self.tls,
            Some(name) => self
                .matched
                .iter()
                .find(|(n, _)| **n == *name)
                .map_or(&self.tls, |(_, t)| t),
        };
        let tls = match transport {
            None => return Ok(Either::Left(counted)),
            Some(Ok(tls)) => tls,
            Some(Err(reason)) => return Err(io::Error::other(reason.clone())),
        };
        let handshake = tls.connect(counted, &self.config.name, address);
        match tokio::time::timeout(limit, handshake).await {
            Ok(Ok(s)) => Ok(Either::Right(Box::new(s))),
            Ok(Err(e)) => Err(io::Error::other(e)),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }

    /// Opens a connection in one attempt, to the next endpoint round robin.
    pub async fn connect_tcp(&self) -> Result<UpstreamStream, UpstreamError> {
        self.connect_tcp_where(1, |_| true).await
    }

    /// Opens a connection for a TCP proxy in at most `attempts` connects, each to the next
    /// endpoint `wanted` accepts (zone ingress: the endpoints carrying an SNI's tags) in round
    /// robin order, starting again from the first once each was tried, as Envoy's tcp_proxy
    /// asks its load balancer for a host per attempt (`max_connect_attempts`); no pause
    /// between attempts, as Envoy's without `backoff_options`. Every attempt failed:
    /// `ConnectFailed` with the last failure.
    pub async fn connect_tcp_where(
        &self,
        attempts: u32,
        wanted: impl Fn(&bearing_proxy_config::Endpoint) -> bool,
    ) -> Result<UpstreamStream, UpstreamError> {
        let mut last = None;
        let Rotation { view, start, .. } = self.rotation(None);
        let n = view.len();
        let chosen = (0..n)
            .map(|step| (start + step) % n)
            .filter(|i| view.endpoint(*i).is_some_and(&wanted));
        let tries = chosen.cycle().take(attempts as usize);
        for pool in tries.map(|i| view.pool(i)) {
            match self.connect(&pool, false).await {
                Ok(s) => {
                    self.observe(&pool, Outcome::ConnectedFinal);
                    return Ok(s);
                }
                Err(e) => match Overflow::of(&e) {
                    Some(o) => return Err(UpstreamError::Overflow(o)),
                    None => {
                        self.observe(&pool, Outcome::of_connect(&e));
                        last = Some(self.connect_failed(pool.address, e));
                    }
                },
            }
        }
        Err(self.no_upstream(last))
    }

    /// Counts and logs a failed connect to `address` (or a fresh connection closed before a
    /// request was written), and returns it as the last failure seen.
    pub(crate) fn connect_failed(
        &self,
        address: SocketAddr,
        e: io::Error,
    ) -> (SocketAddr, io::Error) {
        self.stats.connect_failures.inc();
        tracing::debug!(cluster = %self.config.name, endpoint = %address, "connect failed: {e}");
        (address, e)
    }

    /// Counts and names the failure of a request no endpoint could take.
    pub(crate) fn no_upstream(&self, last: Option<(SocketAddr, io::Error)>) -> UpstreamError {
        self.stats.no_healthy_upstream.inc();
        match last {
            Some((a, e)) => UpstreamError::ConnectFailed(a, e),
            None => UpstreamError::NoEndpoints,
        }
    }

    /// Gets a ready connection to `pool`'s endpoint for hyper's client: an idle one or a new
    /// one for HTTP/1, this worker's for HTTP/2; `true` when it was used before.
    pub(crate) async fn checkout(
        &self,
        pool: &Arc<EndpointPool>,
    ) -> Result<(Checkout, bool), NoConnection> {
        if self.is_h2() {
            return self.checkout_h2(pool).await;
        }
        let (stream, reused) = self
            .checkout_raw(pool)
            .await
            .map_err(NoConnection::failed)?;
        let owner = (&self.stats.occupancy, self.config.http_timeouts);
        let (sender, done) = start_h1(stream, pool, owner)
            .await
            .map_err(NoConnection::failed)?;
        Ok((Checkout::H1(H1Exchange { sender, done }), reused))
    }

    /// This worker's HTTP/2 connection to `pool`'s endpoint, opened by the first request
    /// that needs it; requests arriving meanwhile share that attempt's outcome, failure
    /// included (without this, 100 concurrent first requests opened up to 100 connections).
    async fn checkout_h2(&self, pool: &EndpointPool) -> Result<(Checkout, bool), NoConnection> {
        loop {
            match pool.h2_turn() {
                H2Turn::Use(sender) => return Ok((Checkout::H2(sender), true)),
                H2Turn::Wait(mut opening) => {
                    // An error: the request opening it went away first; take the turn.
                    if let Ok(outcome) = opening.wait_for(Option::is_some).await {
                        match &*outcome {
                            Some(Ok(sender)) => return Ok((Checkout::H2(sender.clone()), false)),
                            Some(Err(e)) => return Err(NoConnection::shared(copy_error(e))),
                            None => {}
                        }
                    }
                }
                H2Turn::Open(outcome) => {
                    // Boxed for the same reason as in `checkout`.
                    let opened = Box::pin(self.open_h2(pool)).await;
                    pool.h2_opened(opened.as_ref().ok());
                    outcome.send_replace(Some(match &opened {
                        Ok(sender) => Ok(sender.clone()),
                        Err(e) => Err(copy_error(e)),
                    }));
                    return opened
                        .map(|sender| (Checkout::H2(sender), false))
                        .map_err(NoConnection::failed);
                }
            }
        }
    }

    /// Whether requests go upstream over HTTP/2 (the cluster's protocol says so).
    pub(crate) fn is_h2(&self) -> bool {
        matches!(self.config.protocol, Protocol::Http2 | Protocol::Grpc)
    }

    /// A connection to `pool`'s endpoint for the byte path: an idle one (`true`) or a new
    /// one (`false`).
    pub(crate) async fn checkout_raw(
        &self,
        pool: &EndpointPool,
    ) -> io::Result<(UpstreamStream, bool)> {
        if let Some(stream) = pool.take_idle(&self.config.http_timeouts) {
            return Ok((stream, true));
        }
        // Boxed: the future of a new connection (TCP and TLS connect) is kilobytes, and
        // inline it made every request's future that much larger, copied on each move.
        let stream = Box::pin(self.connect(pool, true)).await?;
        Ok((stream, false))
    }

    /// A new HTTP/2 connection to `pool`'s endpoint.
    async fn open_h2(&self, pool: &EndpointPool) -> io::Result<http2::SendRequest<RequestBody>> {
        let address = pool.address;
        let io = TokioIo::new(self.connect(pool, true).await?);
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder.max_header_list_size(bearing_http1::MAX_HEAD as u32);
        let windows = self.config.http2_windows;
        if let Some(stream) = windows.stream {
            builder.initial_stream_window_size(stream);
        }
        if let Some(connection) = windows.connection {
            builder.initial_connection_window_size(connection);
        }
        let (sender, conn) = builder
            .handshake::<UpstreamIo, RequestBody>(io)
            .await
            .map_err(io::Error::other)?;
        drive(conn, address);
        Ok(sender)
    }
}

/// An error with the kind and message of `e` (or its overflow), for each request that
/// shares it (`io::Error` is not `Clone`).
fn copy_error(e: &io::Error) -> io::Error {
    match Overflow::of(e) {
        Some(o) => o.into(),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// hyper's HTTP/1.1 client started on one pooled connection for one exchange: the sender,
/// and the signal that tells the connection's task to put the stream back into the pool.
pub(crate) struct H1Exchange {
    pub(crate) sender: http1::SendRequest<RequestBody>,
    done: oneshot::Sender<()>,
}

impl H1Exchange {
    /// Ends the exchange with the connection fit for another request: hyper's client stops
    /// and its task returns the stream to the pool. Dropping the exchange instead closes it.
    pub(crate) fn give_back(self) {
        let _ = self.done.send(());
        drop(self.sender);
    }
}

/// Starts hyper's HTTP/1.1 client on `stream` (a connection of `pool`) for one exchange.
/// Its task runs the connection until the exchange ends and then, when the exchange was
/// given back ([`H1Exchange::give_back`]) with nothing read past the response, returns the
/// stream to `pool`: the same idle connections the byte codec uses.
async fn start_h1(
    stream: UpstreamStream,
    pool: &Arc<EndpointPool>,
    (occupancy, timeouts): (&Arc<Occupancy>, UpstreamHttpTimeouts),
) -> io::Result<(http1::SendRequest<RequestBody>, oneshot::Sender<()>)> {
    let (sender, conn) = http1::Builder::new()
        .max_buf_size(bearing_http1::MAX_HEAD)
        .handshake::<UpstreamIo, RequestBody>(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    let (done, mut given_back) = oneshot::channel();
    let (pool, occupancy) = (pool.clone(), occupancy.clone());
    tokio::spawn(async move {
        match conn.without_shutdown().await {
            Ok(parts) if parts.read_buf.is_empty() && given_back.try_recv().is_ok() => {
                pool.release(parts.io.into_inner(), &occupancy, &timeouts)
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(endpoint = %pool.address, "upstream connection ended: {e}"),
        }
    });
    Ok((sender, done))
}

/// Runs an upstream connection's I/O as a task of this worker until it closes.
fn drive<C>(conn: C, address: SocketAddr)
where
    C: std::future::Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(endpoint = %address, "upstream connection ended: {e}");
        }
    });
}

/// Whether an idle connection is still quiet: a read now would wait. Readiness comes from
/// the reactor, so a quiet plain TCP connection costs no system call here; a close, a reset
/// or stray bytes from the peer make it unusable.
fn is_quiet(stream: &mut UpstreamStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut byte = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut byte);
    tokio::io::AsyncRead::poll_read(Pin::new(stream), &mut cx, &mut buf).is_pending()
}

/// A request body sent upstream: the downstream request's own, streamed through, or bytes
/// the proxy holds (a mirrored copy of a request).
pub type RequestBody = MessageBody<Incoming>;

/// An upstream response body that returns its HTTP/1 connection to the pool once it has been
/// read to the end (a body dropped early closes the connection instead). The request counts
/// against the cluster's `max_requests` until the body is dropped.
pub struct UpstreamBody {
    body: Incoming,
    release: Option<H1Exchange>,
    /// The request's unit of `max_requests` (and its count among its endpoint's active
    /// requests), held until the body is dropped.
    _request: RequestUnit<Arc<Occupancy>>,
    /// The stream's idle timeout, when it has one.
    idle: Option<Box<IdleWatch>>,
    /// The downstream stream this body answers, held open on its connection until the body
    /// is dropped (a connection idle timeout's watch).
    _stream: Option<StreamGuard>,
    /// The try's maximum stream duration, when its cluster has one.
    end: Option<StreamEnd>,
}

/// A response body's maximum stream duration: the try's one timer, set to its end, and
/// where reaching it is counted (Envoy's `upstream_rq_max_duration_reached`).
struct StreamEnd {
    timer: Pin<Box<tokio::time::Sleep>>,
    reached: Counter,
}

/// Why a response body was cut: its try reached its cluster's `max_stream_duration`. hyper
/// then resets a downstream HTTP/2 stream with `INTERNAL_ERROR`, as Envoy 1.40 does, and
/// closes an HTTP/1.1 connection mid-body.
#[derive(Debug)]
pub(crate) struct MaxStreamDurationReached;

impl std::fmt::Display for MaxStreamDurationReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream max stream duration reached")
    }
}

impl std::error::Error for MaxStreamDurationReached {}

/// A response body's stream idle timeout: its clock, the frames read so far (the clock's
/// activity count), and where a timeout is counted.
struct IdleWatch {
    clock: IdleClock,
    frames: u64,
    idled: Counter,
}

/// Why a response body ended early: its stream moved no byte for its idle timeout.
#[derive(Debug)]
struct StreamIdle(Duration);

impl std::fmt::Display for StreamIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stream idle timeout: no byte for {:?}", self.0)
    }
}

impl std::error::Error for StreamIdle {}

impl UpstreamBody {
    /// The body of a response to a request holding `request` (a unit of `max_requests`);
    /// `release` is given back once the body has ended.
    pub(crate) fn new(
        body: Incoming,
        release: Option<H1Exchange>,
        request: RequestUnit<Arc<Occupancy>>,
    ) -> Self {
        let mut b = UpstreamBody {
            body,
            release,
            _request: request,
            idle: None,
            _stream: None,
            end: None,
        };
        if b.body.is_end_stream() {
            b.release_connection();
        }
        b
    }

    /// This body, ended with an error (the downstream stream reset) once no frame came for
    /// `period`, counted in `idled`.
    pub(crate) fn idle_after(mut self, period: Duration, idled: Counter) -> Self {
        self.idle = Some(Box::new(IdleWatch {
            clock: IdleClock::new(period, 0),
            frames: 0,
            idled,
        }));
        self
    }

    /// This body, cut with an error (the downstream stream reset) when `timer`, set to the
    /// try's maximum stream duration, fires before its end; counted in `reached`.
    pub(crate) fn ending_at(
        mut self,
        timer: Pin<Box<tokio::time::Sleep>>,
        reached: Counter,
    ) -> Self {
        if !self.body.is_end_stream() {
            self.end = Some(StreamEnd { timer, reached });
        }
        self
    }

    /// Keeps `stream` open on its downstream connection until this body is dropped.
    pub(crate) fn hold_stream(&mut self, stream: StreamGuard) {
        self._stream = Some(stream);
    }

    fn release_connection(&mut self) {
        if let Some(exchange) = self.release.take() {
            exchange.give_back();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(end) = &mut self.end {
            if std::future::Future::poll(end.timer.as_mut(), cx).is_ready() {
                end.reached.inc();
                // Once: the upstream connection closes with the body, unreleased.
                (self.end, self.release) = (None, None);
                return Poll::Ready(Some(Err(Box::new(MaxStreamDurationReached))));
            }
        }
        let res = Pin::new(&mut self.body).poll_frame(cx);
        match &res {
            Poll::Ready(None) => self.release_connection(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.release_connection(),
            Poll::Ready(Some(Err(_))) => self.release = None,
            Poll::Ready(Some(Ok(_))) => {}
            Poll::Pending => {
                if let Some(watch) = self.idle.as_deref_mut() {
                    if watch.clock.poll_expired(cx, watch.frames).is_ready() {
                        watch.idled.inc();
                        let period = watch.clock.period();
                        // The upstream connection closes with the body, unreleased.
                        self.release = None;
                        return Poll::Ready(Some(Err(Box::new(StreamIdle(period)))));
                    }
                }
            }
        }
        if let (Some(watch), Poll::Ready(Some(Ok(_)))) = (self.idle.as_deref_mut(), &res) {
            watch.frames += 1;
        }
        res.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A plaintext HTTP cluster named `name` with no endpoints, Envoy's default thresholds and a
/// 1 s connect timeout, for tests to adjust.
#[cfg(test)]
pub(crate) fn test_cluster(name: &str) -> Cluster {
    Cluster {
        http_timeouts: Default::default(),
        name: name.into(),
        protocol: Protocol::Http,
        endpoints: Vec::new(),
        connect_timeout: std::time::Duration::from_secs(1),
        request_timeout: None,
        tls: None,
        circuit_breakers: Default::default(),
        http2_windows: Default::default(),
        dns: None,
        tls_matches: Vec::new(),
        health: Default::default(),
        load_balancer: Default::default(),
    }
}

/// An endpoint at `address` with nothing else set (no hostname, the cluster's transport).
#[cfg(test)]
pub(crate) fn plain_endpoint(address: SocketAddr) -> Endpoint {
    Endpoint {
        address,
        origin: "test".into(),
        tags: Default::default(),
        hostname: None,
        tls_match: None,
        priority: 0,
        event_host: None,
        weight: 1,
        locality: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workers::Workers;
    use http::Request;
    use std::time::Duration;

    #[test]
    fn each_worker_takes_only_its_own_connections() {
        let workers = Workers::start(2, false).unwrap();
        let conns = Arc::new(PerWorker::<u32>::new());
        let c = conns.clone();
        workers.run_on(1, move || c.put(3));
        let c = conns.clone();
        workers.run_on(0, move || c.put(7));
        let c = conns.clone();
        let taken = workers.run_on(0, move || {
            std::iter::from_fn(|| c.take(|_| true)).collect::<Vec<_>>()
        });
        assert_eq!(taken, vec![7]);
        // Kept, and dropped, only among the worker's own.
        let c = conns.clone();
        let none = workers.run_on(1, move || {
            c.put(4);
            c.take(|&mut n| n != 4)
        });
        assert_eq!(none, Some(3), "4 dropped on the way to 3");
        let c = conns.clone();
        assert_eq!(workers.run_on(1, move || c.take(|_| true)), None);
    }

    /// A cluster of one endpoint at `address` with `breakers`.
    fn cluster_at(
        address: SocketAddr,
        breakers: bearing_proxy_config::CircuitBreakers,
    ) -> Arc<ClusterRuntime> {
        let config = Cluster {
            endpoints: vec![plain_endpoint(address)],
            connect_timeout: Duration::from_secs(5),
            request_timeout: Some(Duration::from_secs(5)),
            circuit_breakers: breakers,
            ..test_cluster("backend")
        };
        let pools = ClusterEndpoints::Fixed(vec![EndpointPool::new(&plain_endpoint(address))]);
        let security = UpstreamSecurity::new(None, &MeshTlsSet::default());
        Arc::new(ClusterRuntime::new(
            config,
            ClusterStats::default(),
            pools,
            (None, Vec::new()),
            security,
        ))
    }

    /// Endpoints at `10.0.0.<i>:80` with the priority levels `priorities`.
    fn at_priorities(priorities: &[u32]) -> Vec<Endpoint> {
        let at = |i: usize| SocketAddr::from(([10, 0, 0, i as u8], 80));
        let endpoint = |(i, priority): (usize, &u32)| Endpoint {
            priority: *priority,
            weight: 1,
            locality: None,
            ..plain_endpoint(at(i))
        };
        priorities.iter().enumerate().map(endpoint).collect()
    }

    /// The addresses a cluster's rotation starts with over `n` connections.
    fn first_choices(cluster: &ClusterRuntime, n: usize) -> std::collections::BTreeSet<String> {
        let first = |_| {
            cluster
                .rotation(None)
                .next()
                .map(|p| p.address().to_string())
        };
        (0..n).filter_map(first).collect()
    }

    /// Every host healthy, only the highest priority level with endpoints is chosen, for the
    /// first try and every fail-over of a connection; a cluster whose P0 is empty serves from
    /// P1; a resolved (DNS) set, listed out of order, is put in order and served the same way.
    #[test]
    fn endpoint_selection_keeps_to_the_highest_populated_priority() {
        let cluster = |endpoints: Vec<Endpoint>| {
            let pools = endpoints.iter().map(EndpointPool::new).collect();
            ClusterRuntime::new(
                Cluster {
                    endpoints,
                    ..test_cluster("backend")
                },
                ClusterStats::default(),
                ClusterEndpoints::Fixed(pools),
                (None, Vec::new()),
                UpstreamSecurity::new(None, &MeshTlsSet::default()),
            )
        };
        let both = cluster(at_priorities(&[0, 0, 1]));
        let want: std::collections::BTreeSet<String> =
            ["10.0.0.0:80".into(), "10.0.0.1:80".into()].into();
        assert_eq!(first_choices(&both, 10), want);
        let tried: Vec<_> = both.rotation(None).map(|p| p.address()).collect();
        assert_eq!(
            tried.len(),
            2,
            "no fail-over to P1 while P0 has hosts: {tried:?}"
        );
        let p1_only = cluster(at_priorities(&[1, 1]));
        let want: std::collections::BTreeSet<String> =
            ["10.0.0.0:80".into(), "10.0.0.1:80".into()].into();
        assert_eq!(first_choices(&p1_only, 10), want);

        let set = EndpointSet::new(
            at_priorities(&[2, 1, 1]),
            LoadBalancer::RoundRobin,
            EndpointPool::new,
        );
        let resolved = ClusterRuntime::new(
            test_cluster("dns"),
            ClusterStats::default(),
            ClusterEndpoints::Resolved(ResolvedPools::new(set)),
            (None, Vec::new()),
            UpstreamSecurity::new(None, &MeshTlsSet::default()),
        );
        let want: std::collections::BTreeSet<String> =
            ["10.0.0.1:80".into(), "10.0.0.2:80".into()].into();
        assert_eq!(first_choices(&resolved, 10), want);
        assert_eq!(resolved.view().len(), 3, "every level's pool is kept");
    }

    /// With a health signal, a request goes to the eligible hosts of the level its draw
    /// picks: P0 half healthy (health 70%) sends about 70% to its healthy host and 30% to
    /// P1; nothing healthy anywhere with panic disabled leaves no endpoint, and so does total
    /// panic when the cluster fails traffic on panic.
    #[test]
    fn endpoint_selection_follows_the_health_plan() {
        let endpoints = at_priorities(&[0, 0, 1]);
        let pools: Vec<_> = endpoints.iter().map(EndpointPool::new).collect();
        let cluster = |panic_threshold: f64, fail_traffic_on_panic: bool| {
            ClusterRuntime::new(
                Cluster {
                    endpoints: endpoints.clone(),
                    health: bearing_proxy_config::EndpointHealth {
                        outlier: Some(Default::default()),
                        check: None,
                        panic_threshold,
                        fail_traffic_on_panic,
                        ..Default::default()
                    },
                    ..test_cluster("backend")
                },
                ClusterStats::default(),
                ClusterEndpoints::Fixed(pools.clone()),
                (None, Vec::new()),
                UpstreamSecurity::new(None, &MeshTlsSet::default()),
            )
        };
        let health = cluster(50.0, false);
        pools[1].health().set_ejected(true);
        health.refresh_health();
        assert_eq!(health.stats.membership_healthy.get(), 2);
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..2000 {
            let first = health
                .rotation(None)
                .next()
                .map(|p| p.address().to_string());
            *counts.entry(first.unwrap_or_default()).or_insert(0) += 1;
        }
        assert_eq!(counts.get("10.0.0.1:80"), None, "{counts:?}");
        let p1 = counts.get("10.0.0.2:80").copied().unwrap_or(0);
        assert!((450..750).contains(&p1), "about 30% to P1: {counts:?}");
        // Every host out and no panic: no endpoint.
        let none = cluster(0.0, false);
        for pool in &pools {
            pool.health().set_ejected(true);
        }
        none.refresh_health();
        assert!(none.rotation(None).next().is_none());
        // With panic (the default), total panic: every host of both levels, by host count.
        let panicking = cluster(50.0, false);
        assert_eq!(first_choices(&panicking, 200).len(), 3);
        // Failing traffic on panic: none.
        let failing = cluster(50.0, true);
        assert!((0..50).all(|_| failing.rotation(None).next().is_none()));
    }

    /// A retry under `previous_priorities` after an attempt at P0 draws P1 (every host
    /// healthy without a health signal; with one, the plan's health), a second one at P1 and
    /// P2 both tried starts over at P0; without the attempt recorded the cluster's own level
    /// serves.
    #[test]
    fn a_retry_under_previous_priorities_leaves_the_tried_levels() {
        let endpoints = at_priorities(&[0, 0, 1, 2]);
        let pools: Vec<_> = endpoints.iter().map(EndpointPool::new).collect();
        let cluster = ClusterRuntime::new(
            Cluster {
                endpoints: endpoints.clone(),
                ..test_cluster("backend")
            },
            ClusterStats::default(),
            ClusterEndpoints::Fixed(pools.clone()),
            (None, Vec::new()),
            UpstreamSecurity::new(None, &MeshTlsSet::default()),
        );
        let pick = |p: &mut PreviousPriorities| {
            let pool = cluster.pick_for_retry((None, 0), Some(p), |_, _| false);
            pool.map(|p| p.address().to_string()).unwrap_or_default()
        };
        let ptr = |i: usize| Arc::as_ptr(&pools[i]) as usize;
        let mut p = PreviousPriorities::new(std::num::NonZeroU32::MIN);
        let first = pick(&mut p);
        assert!(first == "10.0.0.0:80" || first == "10.0.0.1:80", "{first}");
        p.attempted(cluster.priority_of(ptr(0)).unwrap_or(9));
        assert!((0..20).all(|_| pick(&mut p) == "10.0.0.2:80"));
        p.attempted(cluster.priority_of(ptr(2)).unwrap_or(9));
        assert!((0..20).all(|_| pick(&mut p) == "10.0.0.3:80"));
        p.attempted(cluster.priority_of(ptr(3)).unwrap_or(9));
        let again = pick(&mut p);
        assert!(again == "10.0.0.0:80" || again == "10.0.0.1:80", "{again}");
        // Weights differ in P1 only: its own schedule, 1:3 over its two hosts.
        let mut weighted = at_priorities(&[0, 1, 1]);
        weighted[2].weight = 3;
        let weighted_pools: Vec<_> = weighted.iter().map(EndpointPool::new).collect();
        let schedule = ClusterRuntime::new(
            Cluster {
                endpoints: weighted,
                ..test_cluster("backend")
            },
            ClusterStats::default(),
            ClusterEndpoints::Fixed(weighted_pools),
            (None, Vec::new()),
            UpstreamSecurity::new(None, &MeshTlsSet::default()),
        );
        let mut p = PreviousPriorities::new(std::num::NonZeroU32::MIN);
        p.attempted(0);
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..8 {
            let pool = schedule.pick_for_retry((None, 0), Some(&mut p), |_, _| false);
            let address = pool.map(|p| p.address().to_string()).unwrap_or_default();
            *seen.entry(address).or_insert(0) += 1;
        }
        let want = [
            ("10.0.0.1:80".to_string(), 2),
            ("10.0.0.2:80".to_string(), 6),
        ];
        assert_eq!(seen, want.into_iter().collect(), "{seen:?}");
        // A health signal: P1's host ejected, a retry after P0 goes to P2.
        let tracked = ClusterRuntime::new(
            Cluster {
                endpoints,
                health: bearing_proxy_config::EndpointHealth {
                    outlier: Some(Default::default()),
                    ..Default::default()
                },
                ..test_cluster("backend")
            },
            ClusterStats::default(),
            ClusterEndpoints::Fixed(pools.clone()),
            (None, Vec::new()),
            UpstreamSecurity::new(None, &MeshTlsSet::default()),
        );
        pools[2].health().set_ejected(true);
        tracked.refresh_health();
        let mut p = PreviousPriorities::new(std::num::NonZeroU32::MIN);
        p.attempted(0);
        for _ in 0..20 {
            let pool = tracked.pick_for_retry((None, 0), Some(&mut p), |_, _| false);
            assert_eq!(
                pool.map(|p| p.address().to_string()).as_deref(),
                Some("10.0.0.3:80")
            );
        }
    }

    /// Outlier detection on hosts resolved by DNS: an ejected host takes no traffic, and when
    /// the resolver replaces the set the next request plans the new one, where a host kept
    /// stays ejected and a new host is in service.
    #[test]
    fn resolved_hosts_follow_outlier_detection_across_resolutions() {
        let set = EndpointSet::new(
            at_priorities(&[0, 0, 0]),
            LoadBalancer::RoundRobin,
            EndpointPool::new,
        );
        let resolved = ResolvedPools::new(set);
        let cluster = ClusterRuntime::new(
            Cluster {
                health: bearing_proxy_config::EndpointHealth {
                    outlier: Some(Default::default()),
                    panic_threshold: 50.0,
                    ..Default::default()
                },
                ..test_cluster("dns")
            },
            ClusterStats::default(),
            ClusterEndpoints::Resolved(resolved.clone()),
            (None, Vec::new()),
            UpstreamSecurity::new(None, &MeshTlsSet::default()),
        );
        let pools = resolved.current().pools().to_vec();
        pools[0].health().set_ejected(true);
        cluster.refresh_health();
        assert_eq!(cluster.stats.membership_healthy.get(), 2);
        let want: std::collections::BTreeSet<String> =
            ["10.0.0.1:80".into(), "10.0.0.2:80".into()].into();
        assert_eq!(first_choices(&cluster, 20), want);
        // The name now resolves to the ejected host, one kept and a new one.
        let mut next = at_priorities(&[0, 0, 0, 0]);
        next.remove(2);
        resolved.update(next);
        let want: std::collections::BTreeSet<String> =
            ["10.0.0.1:80".into(), "10.0.0.3:80".into()].into();
        assert_eq!(first_choices(&cluster, 20), want);
        let kept = resolved.current().pools()[0].clone();
        assert!(
            Arc::ptr_eq(&kept, &pools[0]),
            "the ejected host keeps its pool"
        );
    }

    #[tokio::test]
    async fn tcp_connections_past_max_connections_are_refused_and_counted() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let breakers = bearing_proxy_config::CircuitBreakers {
            max_connections: 1,
            ..Default::default()
        };
        let cluster = cluster_at(listener.local_addr().unwrap(), breakers);
        let first = cluster.connect_tcp().await.unwrap();
        let refused = cluster.connect_tcp().await;
        assert!(matches!(
            refused,
            Err(UpstreamError::Overflow(Overflow::Connections))
        ));
        assert_eq!(cluster.stats.cx_overflow.get(), 1);
        assert_eq!(
            cluster.stats.connect_failures.get(),
            0,
            "not a failed connect"
        );
        assert_eq!(cluster.stats.occupancy.connections.get(), 1);
        drop(first);
        assert_eq!(
            cluster.stats.occupancy.connections.get(),
            0,
            "closing gives it back"
        );
        assert!(cluster.connect_tcp().await.is_ok());
    }

    /// A TCP proxy's connection makes at most its number of attempts, each to the next
    /// endpoint round robin, an endpoint again once each was tried; every attempt failed is
    /// the last endpoint's failure.
    #[tokio::test]
    async fn tcp_connect_attempts_go_round_robin_and_may_come_back() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let refusing = || {
            let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            closed.local_addr().unwrap()
        };
        let cluster_of = |addresses: &[SocketAddr]| {
            let endpoints: Vec<Endpoint> = addresses.iter().map(|a| plain_endpoint(*a)).collect();
            let pools = endpoints.iter().map(EndpointPool::new).collect();
            let config = Cluster {
                endpoints,
                ..test_cluster("backend")
            };
            let security = UpstreamSecurity::new(None, &MeshTlsSet::default());
            let pools = ClusterEndpoints::Fixed(pools);
            ClusterRuntime::new(
                config,
                ClusterStats::default(),
                pools,
                (None, Vec::new()),
                security,
            )
        };
        let dead = refusing();
        let half = cluster_of(&[dead, live.local_addr().unwrap()]);
        // One attempt: every other connection meets the refusing endpoint.
        let mut outcomes = Vec::new();
        for _ in 0..4 {
            outcomes.push(half.connect_tcp_where(1, |_| true).await.is_ok());
        }
        assert_eq!(outcomes, [false, true, false, true]);
        assert_eq!(half.stats.connect_failures.get(), 2);
        // Two attempts: the next endpoint takes over.
        for _ in 0..4 {
            assert!(half.connect_tcp_where(2, |_| true).await.is_ok());
        }
        assert_eq!(half.stats.connect_failures.get(), 4);
        // Only the endpoints wanted are tried.
        let live_only = |e: &Endpoint| e.address != dead;
        for _ in 0..4 {
            assert!(half.connect_tcp_where(1, live_only).await.is_ok());
        }
        assert_eq!(half.stats.connect_failures.get(), 4);

        let (a, b) = (refusing(), refusing());
        let down = cluster_of(&[a, b]);
        match down.connect_tcp_where(3, |_| true).await {
            Err(UpstreamError::ConnectFailed(last, _)) => assert_eq!(last, a, "a, b, a again"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("connected to a refusing endpoint"),
        }
        assert_eq!(down.stats.connect_failures.get(), 3);
        assert_eq!(down.stats.no_healthy_upstream.get(), 1);
        let none = down.connect_tcp_where(3, |_| false).await;
        assert!(matches!(none, Err(UpstreamError::NoEndpoints)));
        assert_eq!(
            down.stats.connect_failures.get(),
            3,
            "no endpoint, no attempt"
        );
    }

    #[tokio::test]
    async fn an_http_request_past_max_connections_waits_for_one_to_be_released() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let breakers = bearing_proxy_config::CircuitBreakers {
            max_connections: 1,
            max_pending_requests: 1,
            ..Default::default()
        };
        let cluster = cluster_at(listener.local_addr().unwrap(), breakers);
        let pool = cluster.view().pool(0).into_owned();
        let (first, _) = cluster.checkout_raw(&pool).await.unwrap();
        let waiting = {
            let (cluster, pool) = (cluster.clone(), pool.clone());
            tokio::spawn(async move { cluster.checkout_raw(&pool).await.map(|(_, reused)| reused) })
        };
        while cluster.stats.occupancy.pending.get() == 0 {
            tokio::task::yield_now().await;
        }
        // A third is past max_pending_requests: refused at once.
        let refused = cluster.checkout_raw(&pool).await.err();
        assert_eq!(
            refused.as_ref().and_then(Overflow::of),
            Some(Overflow::Pending)
        );
        assert_eq!(cluster.stats.rq_pending_overflow.get(), 1);
        // Released while a request waits: closed, and the waiting request opens its own.
        pool.release(first, &cluster.stats.occupancy, &Default::default());
        assert!(!waiting.await.unwrap().unwrap(), "a new connection");
        assert_eq!(cluster.stats.cx_overflow.get(), 2);
        assert_eq!(cluster.stats.occupancy.pending.get(), 0);
    }

    /// One idle pool per endpoint: a connection hyper's client finished an exchange on is
    /// the one the byte codec takes next, and one the byte codec returned is the one hyper's
    /// client sends on; a response that closes its connection returns nothing.
    #[tokio::test]
    async fn both_codecs_share_one_idle_pool() {
        use http_body_util::BodyExt as _;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n @ 1..) = s.read(&mut buf).await {
                        let close = buf[..n].windows(5).any(|w| w == b"/last");
                        let answer: &[u8] = match close {
                            true => b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                            false => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                        };
                        if s.write_all(answer).await.is_err() || close {
                            break;
                        }
                    }
                });
            }
        });
        let cluster = cluster_at(address, Default::default());
        let pool = cluster.view().pool(0).into_owned();
        let get = |path: &str| {
            let mut req = Request::new(RequestBody::Held(Default::default()));
            *req.uri_mut() = path.parse().unwrap();
            req.headers_mut().insert("host", "web".parse().unwrap());
            req
        };
        let idle = |pool: &EndpointPool| pool.idle.mine(|idle| idle.len());
        let resp =
            crate::hcm::hyper_codec::send(get("/a"), &cluster, (None, None, None), false).await;
        resp.into_body().collect().await.unwrap();
        while idle(&pool) == 0 {
            tokio::task::yield_now().await;
        }
        let (stream, reused) = cluster.checkout_raw(&pool).await.unwrap();
        assert!(reused, "the byte codec takes the connection hyper used");
        pool.release(stream, &cluster.stats.occupancy, &Default::default());
        let resp =
            crate::hcm::hyper_codec::send(get("/last"), &cluster, (None, None, None), false).await;
        resp.into_body().collect().await.unwrap();
        assert_eq!(
            accepted.load(Ordering::Relaxed),
            1,
            "one connection for both"
        );
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            idle(&pool),
            0,
            "a connection the upstream closes is not pooled"
        );
    }

    /// A cluster's upstream lifetimes (MeshTimeout's `idleTimeout`, `maxConnectionDuration`):
    /// a pooled connection idle past the idle timeout is not used again and is closed (the
    /// endpoint sees it end), as is one released after the maximum connection duration; a
    /// fresh one is reused.
    #[tokio::test]
    async fn pooled_connections_end_at_their_idle_timeout_and_maximum_age() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let pool = EndpointPool::new(&plain_endpoint(address));
        let occupancy = Occupancy::default();
        let open = || async {
            let client = TcpStream::connect(address).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            let counted = Counted::new(client, Default::default(), Default::default());
            (Either::Left(counted), server)
        };
        let closed = |mut server: TcpStream| async move {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(2), server.read(&mut byte));
            matches!(read.await, Ok(Ok(0)) | Ok(Err(_)))
        };
        let idle = UpstreamHttpTimeouts {
            idle: Some(Duration::from_millis(150)),
            ..Default::default()
        };
        let (stream, server) = open().await;
        pool.release(stream, &occupancy, &idle);
        assert!(pool.take_idle(&idle).is_some(), "fresh: reused");
        let (stream, server2) = open().await;
        pool.release(stream, &occupancy, &idle);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(
            pool.take_idle(&idle).is_none(),
            "idle past its timeout: not reused"
        );
        assert!(closed(server2).await, "and closed");
        drop(server);

        let aged = UpstreamHttpTimeouts {
            max_connection_duration: Some(Duration::from_millis(150)),
            ..Default::default()
        };
        let (stream, server) = open().await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        pool.release(stream, &occupancy, &aged);
        assert!(
            pool.take_idle(&aged).is_none(),
            "past its maximum age: not kept"
        );
        assert!(closed(server).await, "and closed");
    }

    #[test]
    fn a_retired_list_keeps_nothing() {
        let conns = PerWorker::<u32>::new();
        conns.put(1);
        assert_eq!(conns.retire(), vec![(workers::current(), vec![1])]);
        conns.put(2);
        assert_eq!(conns.take(|_| true), None);
    }

    fn is_retired(pool: &EndpointPool) -> bool {
        let state = pool.idle.0.lock().unwrap();
        state.retired
    }

    /// Turning mesh mTLS on, or a new CA, gives a cluster fresh pools and retires the old
    /// ones; the same security takes the old pool over.
    #[tokio::test]
    async fn pools_are_taken_over_only_with_the_same_transport_security() {
        let ca = bearing_tls::MeshCa::generate("default").unwrap();
        let meshes = MeshTlsSet::default().update(
            [&crate::mesh_tls::test_config(&ca, false)],
            &mut Default::default(),
        );
        let address: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let cluster = test_cluster("backend");
        let mesh_tls = UpstreamTls::Mesh {
            mesh: "default".into(),
            sni: "backend{mesh=default}".into(),
            identities: vec![bearing_proxy_config::SpiffeMatcher::Exact(
                "spiffe://default/backend".into(),
            )],
            server_ca_pem: None,
            params: None,
        };
        let stats = crate::stats::Stats::new();
        let runtime = |pool: &Arc<EndpointPool>, security: UpstreamSecurity| {
            let pools = vec![pool.clone()];
            let stats = stats.cluster("backend");
            ClusterRuntime::new(
                cluster.clone(),
                stats,
                ClusterEndpoints::Fixed(pools),
                (None, Vec::new()),
                security,
            )
        };
        let previous = |pool: &Arc<EndpointPool>, security: UpstreamSecurity| {
            PreviousPools::of([&runtime(pool, security)])
        };

        let plain = UpstreamSecurity::new(None, &meshes);
        let pool = EndpointPool::new(&plain_endpoint(address));
        let mut old = previous(&pool, plain.clone());
        assert!(Arc::ptr_eq(
            &old.take(&cluster, &plain_endpoint(address), &plain),
            &pool
        ));
        assert!(!is_retired(&pool));

        // Plaintext, then mesh mTLS: a fresh pool, the old one retired.
        let mtls = UpstreamSecurity::new(Some(&mesh_tls), &meshes);
        let mut old = previous(&pool, plain.clone());
        let fresh = old.take(&cluster, &plain_endpoint(address), &mtls);
        assert!(!Arc::ptr_eq(&fresh, &pool));
        assert!(is_retired(&pool));

        // The same mesh state: taken over. Another protocol or endpoint: not.
        let same = UpstreamSecurity::new(Some(&mesh_tls), &meshes);
        let mut old = previous(&fresh, mtls.clone());
        assert!(Arc::ptr_eq(
            &old.take(&cluster, &plain_endpoint(address), &same),
            &fresh
        ));
        let h2 = Cluster {
            protocol: Protocol::Http2,
            ..cluster.clone()
        };
        let mut old = previous(&fresh, mtls.clone());
        assert!(!Arc::ptr_eq(
            &old.take(&h2, &plain_endpoint(address), &mtls),
            &fresh
        ));
        // Other HTTP/2 windows are other terms: connections made under the old are not reused.
        let windowed = Cluster {
            http2_windows: Http2Windows {
                stream: Some(1 << 20),
                connection: None,
            },
            ..cluster.clone()
        };
        let mut old = previous(&fresh, mtls.clone());
        assert!(!Arc::ptr_eq(
            &old.take(&windowed, &plain_endpoint(address), &same),
            &fresh
        ));
        old.retire_rest();
        assert!(is_retired(&fresh));

        // A rotated CA rebuilds the mesh state: a fresh pool again.
        let other = bearing_tls::MeshCa::generate("default").unwrap();
        let rotated = meshes.update(
            [&crate::mesh_tls::test_config(&other, false)],
            &mut Default::default(),
        );
        let kept = meshes.update(
            [&crate::mesh_tls::test_config(&ca, false)],
            &mut Default::default(),
        );
        assert!(UpstreamSecurity::new(Some(&mesh_tls), &kept) == mtls);
        let after = UpstreamSecurity::new(Some(&mesh_tls), &rotated);
        let pool = EndpointPool::new(&plain_endpoint(address));
        let mut old = previous(&pool, mtls);
        assert!(!Arc::ptr_eq(
            &old.take(&cluster, &plain_endpoint(address), &after),
            &pool
        ));
        assert!(is_retired(&pool));

        // The endpoint's transport or hostname changed: a fresh pool; unchanged: taken over.
        let matched = Endpoint {
            tls_match: Some("tls".into()),
            hostname: Some("origin.example".into()),
            ..plain_endpoint(address)
        };
        let pool = EndpointPool::new(&matched);
        let mut old = previous(&pool, plain.clone());
        assert!(Arc::ptr_eq(&old.take(&cluster, &matched, &plain), &pool));
        for other in [
            Endpoint {
                tls_match: None,
                ..matched.clone()
            },
            Endpoint {
                hostname: Some("other.example".into()),
                ..matched.clone()
            },
        ] {
            let mut old = previous(&pool, plain.clone());
            assert!(!Arc::ptr_eq(&old.take(&cluster, &other, &plain), &pool));
        }
        // Another transport of a match is another security.
        let with_match = |tls: Option<UpstreamTls>| {
            let c = Cluster {
                tls_matches: vec![TlsMatch {
                    name: "tls".into(),
                    tls,
                }],
                ..cluster.clone()
            };
            UpstreamSecurity::of(&c, &meshes)
        };
        assert!(with_match(None) == with_match(None));
        assert!(with_match(None) != with_match(Some(mesh_tls.clone())));
    }

    #[test]
    fn the_idle_limit_counts_each_worker_alone() {
        let workers = Workers::start(2, false).unwrap();
        let conns = Arc::new(PerWorker::<usize>::new());
        let c = conns.clone();
        workers.run_on(1, move || {
            (0..MAX_IDLE_PER_ENDPOINT + 5).for_each(|n| c.put(n))
        });
        let c = conns.clone();
        workers.run_on(0, move || c.put(1000));
        let c = conns.clone();
        assert_eq!(workers.run_on(0, move || c.take(|_| true)), Some(1000));
        let c = conns.clone();
        let kept = workers.run_on(1, move || std::iter::from_fn(|| c.take(|_| true)).count());
        assert_eq!(kept, MAX_IDLE_PER_ENDPOINT);
    }
}

//! The HTTP connection manager: what happens to an HTTP request between the downstream codec
//! that read it and the upstream connection that carries it, decided once for both codecs.
//!
//! Two codecs read and write HTTP: the byte codec ([`byte_codec`], HTTP/1.1 carried as bytes
//! on the hot path, framing in `bearing_http1`) and hyper ([`hyper_codec`], HTTP/2 and
//! whatever the byte codec hands over). What does not depend on the codec lives here, and
//! this is where Kuma's policies (retries, timeouts, RBAC, rate limits) plug in:
//! - where a request goes ([`Routed`]: a listener's cluster, or its routes' decision);
//! - the header rules: hop-by-hop fields ([`strip_hop_by_hop`] for parsed heads; the byte
//!   codec applies the same rule as it writes, and both ask
//!   `bearing_http1::connection_may_list_away` what a `Connection` header may remove);
//! - endpoint selection, the repeat of a request a stale pooled connection lost, and
//!   fail-over to the next endpoint ([`forward`], over a codec's [`UpstreamCodec`]);
//! - local replies ([`Reply`], [`Reply::of_failure`]), which each codec only writes out;
//! - what Envoy's connection manager adds to each request of a sidecar before routing:
//!   `x-request-id` and `x-forwarded-proto` ([`add_request_headers`], [`add_request_fields`]);
//! - a gateway's gzip response compression ([`compress`]: compressed through hyper, only
//!   `Vary` on the byte path);
//! - the filters after RBAC ([`filters`]: faults, rate limits), run once the route is known;
//! - the request head timeout on hyper's paths ([`head_timeout`]; the byte codec keeps its
//!   own).
//!
//! `tests` runs one table of requests through both codecs (HTTP/1.1 on each, and HTTP/2).

pub mod byte_codec;
pub mod compress;
pub mod filters;
pub(crate) mod head_timeout;
pub mod hyper_codec;
mod mirror;

use std::future::Future as _;
use std::io;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bearing_gateway::HeaderEdits;
use bearing_http1::RequestHead;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use bearing_proxy_config::{HostSelection, RateLimitedBackOff, RetryPolicy};
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::access_log::ListenerLog;
use crate::circuit::{Held, Occupancy, Overflow};
use crate::outlier::Outcome;
use crate::retry_priority::PreviousPriorities;
use crate::router::{HttpRoutes, Reply, ResponseEdits};
use crate::stats::StatusCounters;
use crate::transport::Admission;
use crate::upstream::{ClusterRuntime, EndpointPool, NoConnection, PoolRef, UpstreamError};
use filters::HttpFilters;

/// The body of Envoy's 403 to a request its RBAC filter refuses.
pub(crate) const RBAC_DENIED: &str = "RBAC: access denied";
/// The body of Envoy's 504 to a request whose stream idled out before its response.
const STREAM_TIMEOUT: &str = "stream timeout";

/// What the connection manager reads of the listener whose requests it serves (the
/// filter-chain stage's `ListenerRuntime`): a trait, so that this stage does not depend on
/// the stage before it.
pub(crate) trait HttpListener {
    /// The listener's name, for logs and local replies.
    fn name(&self) -> &str;
    /// The cluster every request goes to when the listener has no routes.
    fn cluster(&self) -> Option<&ClusterRuntime>;
    /// The retry policy of requests to that cluster (its one route's).
    fn retry(&self) -> Option<&RetryPolicy>;
    /// The request header edits of requests to that cluster (its one route's); `None`: none.
    fn request_edits(&self) -> Option<&HeaderEdits>;
    /// How long a request's stream may go without a byte moved (its route's own idle
    /// timeout `route`, zero: none, else the listener's; `None`: no limit), with where a
    /// stream that idles out is counted.
    fn stream_idle(&self, route: Option<Duration>) -> Option<(Duration, &Counter)>;
    /// How long a request whose body is still arriving may take to be received whole before
    /// it is answered 408 `request timeout` (Envoy's `request_timeout`); `None`: no limit.
    fn request_timeout(&self) -> Option<Duration>;
    /// Where connections closed by the connection idle timeout are counted.
    fn idle_closed(&self) -> &Counter;
    /// The routes its requests take (a gateway's, or a sidecar's route table), for a
    /// connection over TLS (`tls`) or not: a PERMISSIVE listener's plaintext requests have
    /// rate limit buckets of their own.
    fn routes(&self, tls: bool) -> Option<&HttpRoutes>;
    /// Where its responses are counted by status.
    fn requests(&self) -> &StatusCounters;
    /// Present when the listener refuses every request (a policy denying the inbound came
    /// with a reload): counts what it refuses.
    fn denied(&self) -> Option<&Counter>;
    /// Whether the listener's HTTP RBAC lets a request of a connection admitted as
    /// `admission` pass (counted); true without HTTP RBAC.
    fn rbac_allows(&self, admission: &Admission) -> bool;
    /// Its HTTP filters after RBAC (faults, rate limits); `None`: none.
    fn filters(&self) -> Option<&HttpFilters>;
    /// Cancelled when a later config changes what the listener admits, and at drain: a
    /// connection waiting for its next request then checks that it may go on.
    fn epoch(&self) -> &CancellationToken;
    /// Where each request is logged; `None`: nowhere (nothing is measured for it).
    fn access_log(&self) -> Option<&Arc<ListenerLog>>;
    /// The listener's address: the downstream local address of its connections (the
    /// original destination of captured ones).
    fn address(&self) -> std::net::SocketAddr;
}

/// Where one request goes.
pub(crate) enum Routed<'l> {
    /// To `cluster`, the response head awaited for `timeout` (the route's, else the
    /// cluster's; `None`: no limit), sent again as the route's `retry` policy asks, each
    /// response head sent downstream changed by `edits` (a route's); `idle`: the route's own
    /// stream idle timeout (`None`: the listener's, [`HttpListener::stream_idle`]).
    Forward {
        cluster: &'l ClusterRuntime,
        timeout: Option<Duration>,
        retry: Option<&'l RetryPolicy>,
        edits: Option<ResponseEdits<'l>>,
        idle: Option<Duration>,
        /// The request's hash by its route's hash policies (`None`: none), for a
        /// consistent-hashing cluster.
        hash: Option<u64>,
    },
    /// Answered by the proxy (a router's 404, redirect, direct response or refusal).
    Reply(Reply, Option<ResponseEdits<'l>>),
    /// Not carried by the byte codec: the connection goes to hyper.
    Unsupported(&'static str),
}

// The connection manager's replies, beside the router's: an upstream's failure.
impl Reply {
    /// The reply reporting `failure` of a request to `cluster`, logged once here for both
    /// codecs: 503 (Envoy's texts), 504 on the response timeout, 502 for an invalid response,
    /// 400 for a request body that could not be read.
    pub(crate) fn of_failure(failure: &UpstreamError, cluster: &ClusterRuntime) -> Reply {
        if let UpstreamError::Overflow(why) = failure {
            // Counted per cluster; a warning each would flood the log exactly when overloaded.
            tracing::debug!(cluster = %cluster.config.name, "circuit breaker: {why}");
        } else {
            tracing::warn!(cluster = %cluster.config.name, "{failure}");
        }
        let message = match failure {
            // Envoy's text (the log above names the endpoint).
            UpstreamError::Timeout(_) => "upstream request timeout".to_string(),
            UpstreamError::MaxStreamDuration(_) => "upstream max stream duration reached".into(),
            other => other.to_string(),
        };
        Reply {
            status: failure.status(),
            location: None,
            message,
            overloaded: failure.is_overflow(),
            flags: crate::access_log::failure_flags(failure).0,
        }
    }
}

impl Reply {
    /// Envoy's answer to a request whose stream moved no byte for its idle timeout before a
    /// response started: 504 `stream timeout` (waiting for the response head counts as idle).
    pub(crate) fn stream_timeout() -> Reply {
        Reply {
            status: http::StatusCode::GATEWAY_TIMEOUT,
            location: None,
            message: STREAM_TIMEOUT.to_string(),
            overloaded: false,
            flags: bearing_proxy_config::ResponseFlags::STREAM_IDLE_TIMEOUT,
        }
    }
}

/// Runs `f` with the HTTP date of now (IMF-fixdate, as a `date` header holds it), formatted
/// at most once a second per thread.
pub(crate) fn with_date<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let second = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second || cached.1.is_empty() {
            *cached = (second, httpdate::fmt_http_date(now));
        }
        f(cached.1.as_bytes())
    })
}

/// The `content-type` of the proxy's own replies on every HTTP path: Envoy's local replies
/// say `text/plain`, without a charset, and a client comparing the two sees the same.
pub(crate) const LOCAL_REPLY_CONTENT_TYPE: &str = "text/plain";

/// How one attempt of a request on one upstream connection went, as a codec reports it.
pub(crate) enum Attempt<Q, A> {
    /// A response head came back.
    Answered(A),
    /// The request was not (wholly) written: here it is back, whole, for another attempt.
    NotDelivered(Q, io::Error),
    /// The connection closed before any response byte once the request had gone out; the
    /// request comes back when the codec still holds it whole and it is safe to repeat.
    NoAnswer(Option<Q>, UpstreamError),
    /// Final: a timeout, an invalid response, a circuit breaker.
    Failed(UpstreamError),
}

/// What [`forward`] needs of a codec to carry a request to one endpoint.
pub(crate) trait UpstreamCodec {
    /// The request as the codec holds it between attempts.
    type Request;
    /// A connection checked out for one attempt.
    type Conn;
    /// What an answered attempt gives: the response head and what is needed to relay it.
    type Answer;

    /// A connection to `pool`'s endpoint, and whether it was used before.
    async fn checkout(
        &mut self,
        pool: &Arc<EndpointPool>,
    ) -> Result<(Self::Conn, bool), NoConnection>;

    /// Sends `request` on `conn` (taking the request's unit of the cluster's
    /// `max_requests`) and waits for the response head within the request's timeout (the
    /// route's, decided at routing and held by the codec).
    async fn attempt(
        &mut self,
        pool: &Arc<EndpointPool>,
        conn: Self::Conn,
        request: Self::Request,
    ) -> Attempt<Self::Request, Self::Answer>;

    /// A copy of `request` to send again after an attempt answered or lost it, when the
    /// codec can make one (a retry policy's; asked only when the route has one).
    fn copy(&self, request: &Self::Request) -> Option<Self::Request>;

    /// The limit for the next attempt's response head (`None`: no limit).
    fn limit(&mut self) -> &mut Option<Duration>;

    /// When the next attempt's stream must have ended (the cluster's `max_stream_duration`
    /// from its connection being ready; `None`: no limit): a response body still coming then
    /// is cut, which the codec does as it relays the answer.
    fn stream_end(&mut self) -> &mut Option<Instant>;

    /// The status of an answer's response head.
    fn status(answer: &Self::Answer) -> u16;

    /// The `grpc-status` of an answer's response head (a trailers-only gRPC response).
    fn grpc_status(answer: &Self::Answer) -> Option<u32>;

    /// Whether an answer's response headers meet `policy`'s `retriable-headers` matches.
    fn headers_ask_retry(answer: &Self::Answer, policy: &RetryPolicy) -> bool;

    /// The interval an answer's reset headers ask to wait before the retry (`back_off`'s,
    /// [`RateLimitedBackOff::interval`]); `None`: none.
    fn reset_interval(answer: &Self::Answer, back_off: &RateLimitedBackOff) -> Option<Duration>;
}

/// Sends `request` (of hash `hash`, for a consistent-hashing cluster) to `cluster` through
/// `codec`, as [`try_endpoint`] does, and again as the route's `retry` policy asks
/// ([`retrying`]). Gives the answer, the pool of the endpoint that gave it and how many
/// tries picked an endpoint (Envoy's router asks its load balancer once per try, and a
/// hash policy generating a cookie adds its `Set-Cookie` each time).
pub(crate) async fn forward<'c, C: UpstreamCodec>(
    (cluster, retry, hash): (&'c ClusterRuntime, Option<&RetryPolicy>, Option<u64>),
    codec: &mut C,
    request: C::Request,
) -> Result<(C::Answer, PoolRef<'c>, u32), UpstreamError> {
    // The request's own timeout, which every try and its connect fall within.
    let deadline = codec.limit().map(|t| Instant::now() + t);
    let outcome = match retry {
        None => {
            let pool = cluster.rotation(hash).next();
            try_endpoint((cluster, pool), codec, request, deadline, &mut None)
                .await
                .map(|(answer, pool)| (answer, pool, 1))
                .map_err(|(failure, _)| failure)
        }
        Some(policy) => retrying((cluster, hash), (policy, deadline), codec, request).await,
    };
    if let Err(UpstreamError::Timeout(_)) = &outcome {
        cluster.stats.rq_timeout.inc();
    }
    outcome
}

/// Sends `request` to `cluster` through `codec` under `policy`: after an attempt the policy
/// retries (a retriable status or gRPC status, a connect failure, a reset, a refused stream,
/// the attempt's timeout), the request goes again, to the endpoint the load balancer gives
/// next (the same one for the same hash, as Envoy's without a retry host predicate; under
/// the policy's host selection, [`retry_endpoint`]), after Envoy's jittered exponential
/// back-off (or the interval a retriable response's reset headers ask for, under a
/// rate-limited back-off), up to `num_retries` times, each attempt
/// within the per-try timeout and all of them within the request's own timeout. A request
/// that never reached an endpoint goes again itself; one that did goes as the codec's copy,
/// so a request it cannot copy (a streamed body) is not retried once sent. The retries hold
/// one unit of the cluster's `max_retries`. `deadline`: the request's own timeout; `hash`:
/// the request's.
async fn retrying<'c, C: UpstreamCodec>(
    (cluster, hash): (&'c ClusterRuntime, Option<u64>),
    (policy, deadline): (&RetryPolicy, Option<Instant>),
    codec: &mut C,
    mut request: C::Request,
) -> Result<(C::Answer, PoolRef<'c>, u32), UpstreamError> {
    let mut unit = None;
    let (mut retries, mut exponential, mut tries) = (0, 0, 0);
    // The endpoints tried, by pool, kept only under `previous_hosts`, and the levels tried,
    // only under `previous_priorities`, each only once a retry comes (a request answered at
    // once allocates nothing).
    let mut tried_pools: Vec<usize> = Vec::new();
    let mut priorities = policy.previous_priorities.map(PreviousPriorities::new);
    loop {
        let more = retries < policy.num_retries;
        let copy = if more { codec.copy(&request) } else { None };
        let per_try = policy.per_try_timeout.map(|t| Instant::now() + t);
        let this_try = match (per_try, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let selection = policy.host_selection.as_deref();
        let pool = match retries > 0 && (selection.is_some() || priorities.is_some()) {
            true => retry_endpoint(
                (cluster, hash),
                selection,
                &tried_pools,
                priorities.as_mut(),
            ),
            false => cluster.rotation(hash).next(),
        };
        tries += 1;
        let attempted = pool.as_deref().map(|p| Arc::as_ptr(p) as usize);
        let tried = try_endpoint((cluster, pool), codec, request, this_try, &mut unit).await;
        let (outcome, undelivered) = match tried {
            Ok((answer, pool)) => (Ok((answer, pool, tries)), None),
            Err((failure, undelivered)) => (Err(failure), undelivered),
        };
        let Some(again) = undelivered.filter(|_| more).or(copy) else {
            return outcome;
        };
        let retriable = match &outcome {
            Ok((answer, ..)) => {
                policy.retries_response(C::status(answer), || C::grpc_status(answer))
                    || (!policy.on.headers.is_empty() && C::headers_ask_retry(answer, policy))
            }
            Err(failure) => retries_failure(policy, failure),
        };
        if !retriable || !cluster.may_retry(&mut unit) {
            return outcome;
        }
        retries += 1;
        // Envoy's rate-limited back-off: the interval a retriable response asked for, once.
        let asked = match (&outcome, &policy.rate_limited) {
            (Ok((answer, ..)), Some(back_off)) => C::reset_interval(answer, back_off)
                .and_then(|i| RateLimitedBackOff::pause(i, rand::random())),
            _ => None,
        };
        let pause = match asked {
            Some(pause) => {
                cluster.stats.rq_retry_backoff_ratelimited.inc();
                pause
            }
            None => {
                exponential += 1;
                cluster.stats.rq_retry_backoff_exponential.inc();
                let ceiling = policy.back_off_ceiling(exponential);
                ceiling.mul_f64(rand::random::<f64>())
            }
        };
        if deadline.is_some_and(|d| Instant::now() + pause >= d) {
            return outcome;
        }
        if let (Some(selection), Some(pool)) = (&policy.host_selection, attempted) {
            if selection.omit_previous && !tried_pools.contains(&pool) {
                tried_pools.push(pool);
            }
        }
        if let (Some(priorities), Some(level)) = (&mut priorities, attempted) {
            if let Some(level) = cluster.priority_of(level) {
                priorities.attempted(level);
            }
        }
        // An answer not relayed: its connection closes with it.
        drop(outcome);
        cluster.stats.rq_retry.inc();
        tokio::time::sleep(pause).await;
        request = again;
    }
}

/// The endpoint of a retry under `selection` (Envoy's retry host predicates) and
/// `priorities` (its `previous_priorities`, which draws the level of each pick): the load
/// balancer picks again while the pick is one of `tried` (`previous_hosts`) or carries the
/// tags of an `omit_host_metadata` predicate, up to `max_attempts` more picks.
fn retry_endpoint<'c>(
    (cluster, hash): (&'c ClusterRuntime, Option<u64>),
    selection: Option<&HostSelection>,
    tried: &[usize],
    priorities: Option<&mut PreviousPriorities>,
) -> Option<PoolRef<'c>> {
    let max_attempts = selection.map_or(0, |s| s.max_attempts);
    cluster.pick_for_retry((hash, max_attempts), priorities, |pool, endpoint| {
        selection.is_some_and(|s| {
            (s.omit_previous && tried.contains(&(Arc::as_ptr(pool) as usize)))
                || s.omits_tags(&endpoint.tags)
        })
    })
}

/// Whether `policy` sends a request again after it failed with `failure`.
fn retries_failure(policy: &RetryPolicy, failure: &UpstreamError) -> bool {
    match failure {
        UpstreamError::ConnectFailed(..) => policy.retries_connect_failure(),
        UpstreamError::Request(_, e) if is_refused_stream(&**e) => {
            policy.on.refused_stream || policy.retries_reset()
        }
        UpstreamError::Request(..) => policy.retries_reset(),
        UpstreamError::Timeout(_) => policy.retries_timeout(),
        // Envoy resets the upstream stream: retried as a reset.
        UpstreamError::MaxStreamDuration(_) => policy.retries_reset(),
        // No endpoint to try, the proxy's own refusal, the client's fault, a response the
        // proxy could not read.
        UpstreamError::NoEndpoints
        | UpstreamError::Overflow(_)
        | UpstreamError::RequestBody(_)
        | UpstreamError::InvalidResponse(..) => false,
    }
}

/// Whether an HTTP/2 endpoint refused the stream (`REFUSED_STREAM`: not processed, safe to
/// send again), found in the error's causes.
fn is_refused_stream(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(e) = c.downcast_ref::<h2::Error>() {
            return e.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        cause = c.source();
    }
    false
}

/// One try of `request` to `cluster` through `codec`, answered by `deadline` (Envoy's route
/// and per-try timeouts span the connect too): to `pool`, the endpoint the cluster's load
/// balancer gave (`None`: none serves). A
/// connect failure, or a fresh connection closed before the request was written, ends the
/// try (Envoy's router picks another endpoint only for a retry its policy asks for); a
/// reused connection found stale (closed before the request was written, or before answering
/// a request the codec may repeat) is replaced by a fresh one to the same endpoint, the
/// repeat after an unanswered request taking the cluster's `max_retries` unit, which `retry`
/// then holds for the rest of the request. Gives the answer and the pool of the endpoint
/// that gave it, or the failure and, when it never reached the endpoint, the request.
///
/// The cluster's maximum stream duration starts once a connection is ready, as Envoy arms
/// it when its pool is ready: reached before the response head, the try fails (Envoy's 504
/// `upstream max stream duration reached`, retried as a reset); after, the codec cuts the
/// body ([`UpstreamCodec::stream_end`]).
async fn try_endpoint<'c, C: UpstreamCodec>(
    (cluster, pool): (&'c ClusterRuntime, Option<PoolRef<'c>>),
    codec: &mut C,
    mut request: C::Request,
    deadline: Option<Instant>,
    retry: &mut Option<Held<&'c Occupancy>>,
) -> Result<(C::Answer, PoolRef<'c>), (UpstreamError, Option<C::Request>)> {
    let Some(pool) = pool else {
        return Err((cluster.no_upstream(None), Some(request)));
    };
    let address = pool.address();
    let max_stream = cluster.config.http_timeouts.max_stream_duration;
    loop {
        let Some(checked) = checkout_by(codec, &pool, deadline).await else {
            return Err((UpstreamError::Timeout(address), Some(request)));
        };
        let (conn, reused) = match checked {
            Ok(c) => {
                cluster.observe(&pool, Outcome::Connected);
                c
            }
            // Envoy finds no pool for the request and answers as for a cluster without
            // healthy endpoints (counted as `upstream_cx_pool_overflow`).
            Err(NoConnection::Overflow(Overflow::ConnectionPools)) => {
                return Err((UpstreamError::NoEndpoints, Some(request)))
            }
            Err(NoConnection::Overflow(o)) => {
                return Err((UpstreamError::Overflow(o), Some(request)))
            }
            Err(NoConnection::Failed(e)) => {
                cluster.observe(&pool, Outcome::of_connect(&e));
                let failed = cluster.connect_failed(address, e);
                return Err((cluster.no_upstream(Some(failed)), Some(request)));
            }
            // Another request's attempt, counted there.
            Err(NoConnection::Shared(e)) => {
                return Err((cluster.no_upstream(Some((address, e))), Some(request)))
            }
        };
        // The stream's end, when it comes before the request's own deadline: reaching it
        // is told apart from the request's timeout.
        let stream_end = max_stream.map(|d| Instant::now() + d);
        let first_end = stream_end.filter(|end| deadline.is_none_or(|d| *end < d));
        let head_by = first_end.or(deadline);
        *codec.limit() = head_by.map(|d| d.saturating_duration_since(Instant::now()));
        *codec.stream_end() = stream_end;
        match codec.attempt(&pool, conn, request).await {
            Attempt::Answered(answer) => {
                cluster.observe(&pool, Outcome::Response(C::status(&answer)));
                return Ok((answer, pool));
            }
            Attempt::NotDelivered(again, _) if reused => request = again,
            Attempt::NotDelivered(again, e) => {
                cluster.observe(&pool, Outcome::ConnectFailed);
                let failed = cluster.connect_failed(address, e);
                return Err((cluster.no_upstream(Some(failed)), Some(again)));
            }
            Attempt::NoAnswer(Some(again), _) if reused && cluster.may_retry(retry) => {
                request = again
            }
            Attempt::Failed(UpstreamError::Timeout(_)) => {
                cluster.stats.request_errors.inc();
                cluster.observe(&pool, Outcome::Timeout);
                let failure = match first_end {
                    Some(_) => {
                        cluster.stats.rq_max_duration_reached.inc();
                        UpstreamError::MaxStreamDuration(address)
                    }
                    None => UpstreamError::Timeout(address),
                };
                return Err((failure, None));
            }
            Attempt::NoAnswer(_, failure) | Attempt::Failed(failure) => {
                if failure.is_exchange_failure() {
                    cluster.stats.request_errors.inc();
                    // A reset under the request: Envoy's router reports a connect failure.
                    cluster.observe(&pool, Outcome::ConnectFailed);
                }
                return Err((failure, None));
            }
        }
    }
}

/// A connection to `pool`'s endpoint through `codec`, or `None` when `deadline` passed first.
/// A pooled connection is ready at the first poll, which sets no timer: the common case of a
/// kept-alive upstream pays nothing for the deadline.
async fn checkout_by<C: UpstreamCodec>(
    codec: &mut C,
    pool: &Arc<EndpointPool>,
    deadline: Option<Instant>,
) -> Option<Result<(C::Conn, bool), NoConnection>> {
    let mut checkout = std::pin::pin!(codec.checkout(pool));
    let first = std::future::poll_fn(|cx| Poll::Ready(checkout.as_mut().poll(cx))).await;
    match (first, deadline) {
        (Poll::Ready(checked), _) => Some(checked),
        (Poll::Pending, None) => Some(checkout.await),
        (Poll::Pending, Some(d)) => tokio::time::timeout_at(d, checkout).await.ok(),
    }
}

/// `x-request-id`: Envoy's connection manager gives every request that has none a UUID v4
/// (`generate_request_id`, on by default) and keeps one it has, so that the logs and traces
/// of one request can be correlated across hops.
const REQUEST_ID: &str = "x-request-id";
/// `x-forwarded-proto`: the scheme of the downstream connection, set on a request that has
/// none, as Envoy's connection manager does where it is not the edge (a sidecar).
const FORWARDED_PROTO: &str = "x-forwarded-proto";

/// A new request id: a random UUID v4 (RFC 9562 §5.4) in lowercase hex, from the thread's
/// generator (no system call or allocation per id).
fn new_request_id() -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = rand::random::<u128>().to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut id = [b'-'; 36];
    let mut at = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        id[at] = HEX[usize::from(b >> 4)];
        id[at + 1] = HEX[usize::from(b & 0xf)];
        at += 2;
    }
    id
}

/// The `x-forwarded-proto` of a request that came over TLS (`tls`) or not.
fn scheme(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

/// Adds to a request hyper parsed what Envoy's connection manager adds before routing: an
/// `x-request-id` when it has none, and `x-forwarded-proto` (`https` when the downstream
/// connection is TLS) when it has none. [`add_request_fields`] does the same on the byte codec.
pub(crate) fn add_request_headers(headers: &mut HeaderMap, tls: bool) {
    if !headers.contains_key(REQUEST_ID) {
        if let Ok(id) = HeaderValue::from_bytes(&new_request_id()) {
            headers.insert(HeaderName::from_static(REQUEST_ID), id);
        }
    }
    if !headers.contains_key(FORWARDED_PROTO) {
        let name = HeaderName::from_static(FORWARDED_PROTO);
        headers.insert(name, HeaderValue::from_static(scheme(tls)));
    }
}

/// [`add_request_headers`] for a head the byte codec wrote (`out`, ending with its empty
/// line; `head` says which of the two fields it has): the fields go before the empty line,
/// into the buffer's spare room.
pub(crate) fn add_request_fields(out: &mut Vec<u8>, head: &RequestHead, tls: bool) {
    if head.request_id && head.forwarded_proto {
        return;
    }
    out.truncate(out.len().saturating_sub(2));
    if !head.request_id {
        bearing_http1::push_header(out, REQUEST_ID.as_bytes(), &new_request_id());
    }
    if !head.forwarded_proto {
        let proto = scheme(tls).as_bytes();
        bearing_http1::push_header(out, FORWARDED_PROTO.as_bytes(), proto);
    }
    out.extend_from_slice(b"\r\n");
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), besides `te`.
static HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers and those the `connection` header lists, but never one
/// `bearing_http1::connection_may_list_away` keeps (framing, `Host`): the byte codec's rule;
/// `te: trailers` is kept because gRPC needs it end to end. A `Content-Length` sent as a list
/// or repeated (equal values: hyper refuses others) goes on as one value (RFC 9110 §8.6), so
/// that a next hop that reads lists differently cannot be desynchronised.
///
/// One pass over the fields finds which are present, and only those are removed: this runs
/// twice per proxied request, and removing absent names (each a hash and a probe) cost a
/// tenth of a small request's CPU time.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = [false; HOP_BY_HOP.len()];
    let mut te = false;
    let (mut lengths, mut length_list) = (0, false);
    for (name, value) in headers.iter() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        } else if name == header::CONTENT_LENGTH {
            lengths += 1;
            length_list |= value.as_bytes().contains(&b',');
        } else {
            te |= name == header::TE;
        }
    }
    if lengths > 1 || length_list {
        let first = headers.get(header::CONTENT_LENGTH).map(|v| v.as_bytes());
        let value = first.and_then(|v| v.split(|b| *b == b',').next());
        if let Some(one) = value.and_then(|v| HeaderValue::from_bytes(v.trim_ascii()).ok()) {
            headers.insert(header::CONTENT_LENGTH, one);
        }
    }
    let only_keep_alive = || {
        let mut values = headers.get_all(header::CONNECTION).iter();
        values.next().is_some_and(|v| v == "keep-alive") && values.next().is_none()
    };
    if present[0] && !only_keep_alive() {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            // `close` names no header; the rest is the byte codec's rule too.
            .filter(|t| {
                !t.eq_ignore_ascii_case("close") && bearing_http1::connection_may_list_away(t)
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
    if te && headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
}

#[cfg(test)]
mod tests;

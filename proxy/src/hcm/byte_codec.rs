//! The byte codec: HTTP/1.1 requests of plain and TLS listeners forwarded as bytes, one task
//! per downstream connection; what happens to a request between downstream and upstream is
//! the connection manager's ([`super`]).
//!
//! Written here rather than going through hyper because the hot path needs it: hyper's server
//! and client run each exchange across two tasks (the downstream connection and the pooled
//! upstream one, joined by channels), build a `HeaderMap` on each side and arm timers per
//! request, and that was most of the user-space CPU of a proxied small request. Here the head
//! is parsed in place and written again without its hop-by-hop fields ([`bearing_http1`]), the
//! body passes through unchanged, and the task that read the request reads the response.
//!
//! The path carries HTTP/1.1 requests in origin form, with no body or a `Content-Length` body
//! small enough to hold ([`HELD_LIMIT`]), to clusters spoken to over HTTP/1.1: a sidecar
//! listener's cluster, or the backend the routes of a gateway listener or of a sidecar route
//! table choose (the head is read as an `http` request for the router and the routed head
//! written back, see [`route_head`]). Anything else (HTTP/2, HTTP/1.0, chunked
//! uploads, `Expect`, upgrades, malformed heads, a gateway with an HTTP/2 backend) hands the
//! connection, with the bytes already read, to hyper for the rest of its life. A request no
//! path forwards (over the head limits, a bad `Host` or length, `CONNECT`) is answered here
//! and the connection closed.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bearing_gateway::{Downstream, HeaderEdits};
use bearing_http1::{parse_request, parse_response, BodyLength, BodyProgress, NotForwarded};
use bearing_http1::{Refused, RequestHead, ResponseHead};
use bearing_proxy_config::{RateLimitedBackOff, RetryPolicy};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use super::compress;
use super::filters::HeadersHeld;
use super::{
    strip_hop_by_hop, Attempt, HttpListener, Routed, UpstreamCodec, LOCAL_REPLY_CONTENT_TYPE,
};
use crate::access_log::{Began, ListenerLog, WrittenHead};
use crate::circuit::Occupancy;
use crate::idle::{touch, unless_idle, Activity};
use crate::io::TcpBacked;
use crate::router::{HttpRoutes, Reply, ResponseEdits, RouteTerms, Routing};
use crate::transport::Admission;
use crate::upstream::{
    ClusterRuntime, EndpointPool, NoConnection, RequestUnit, UpstreamError, UpstreamStream,
};
use bearing_proxy_config::{Entry, NoHeaders, ResponseFlags};

/// Largest request (head and held body) this path carries; a larger one goes to hyper. Heads
/// alone are limited to [`bearing_http1::MAX_HEAD`] on every path.
const HELD_LIMIT: usize = 64 * 1024;
/// Bytes asked for per read at first.
const READ_SIZE: usize = 16 * 1024;
/// Bytes asked for per read once a response body filled a whole read.
const RELAY_READ_SIZE: usize = 64 * 1024;
/// Bodies (or first parts of them) up to this size are copied after the head and written with
/// it.
const SMALL_BODY: usize = 4096;
/// A response body of known length with at least this much still to come after the first read
/// moves with splice(2) when both connections are plain TCP: its bytes then never enter user
/// space (http1-100k: two copies of each byte were the largest part of the proxy's CPU).
const SPLICE_BODY: u64 = 32 * 1024;
/// Buffer sets kept per thread for connections between requests.
const SPARE_BUFFERS: usize = 32;
/// How long, at most, a refused client's further bytes are read and dropped before the close.
pub(super) const LINGER: Duration = Duration::from_secs(2);
/// How many of those bytes, at most.
pub(super) const LINGER_BYTES: usize = 256 * 1024;

/// How long a client may take on the byte path: its listener's connection manager timeouts
/// (Envoy's), each `None` when not set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Timeouts {
    /// Idle between requests (the connection idle timeout): the connection is closed.
    pub idle: Option<Duration>,
    /// To finish a head from its first byte (`request_headers_timeout`): 408 `request header
    /// timeout`.
    pub head: Option<Duration>,
    /// A started request whose bytes stop for this long (the stream idle timeout, from the
    /// head's first byte and again from each body read): 408 `stream timeout`.
    pub stream_idle: Option<Duration>,
    /// To receive a whole request from its first byte (`request_timeout`): 408 `request
    /// timeout`.
    pub request: Option<Duration>,
}

impl Timeouts {
    /// The timeouts of `listener`'s connection manager.
    pub(crate) fn of(listener: &bearing_proxy_config::Listener) -> Timeouts {
        let t = &listener.downstream_timeouts;
        Timeouts {
            idle: t.connection_idle,
            head: t.request_headers,
            stream_idle: listener.stream_idle_timeout,
            request: t.request,
        }
    }

    /// The deadline of a request head whose first byte came at `now`: the sooner of the
    /// request head, stream idle and request timeouts, with Envoy's answer to it.
    pub(crate) fn head_deadline(&self, now: Instant) -> Option<ReadDeadline> {
        let request = self.request.map(|d| (now + d, REQUEST_TIMEOUT));
        let head = self.head.map(|d| (d, HEADER_TIMEOUT));
        let idle = self.stream_idle.map(|d| (d, STREAM_TIMEOUT));
        sooner(now, head, sooner(now, idle, request))
    }
}

/// A deadline of a request being read and Envoy's answer when it passes first.
pub(crate) type ReadDeadline = (Instant, &'static str);

/// The sooner of a request's deadlines: `limit` counted from `now` (with its answer), and
/// the whole request's `request` deadline.
fn sooner(
    now: Instant,
    limit: Option<(Duration, &'static str)>,
    request: Option<ReadDeadline>,
) -> Option<ReadDeadline> {
    let limit = limit.map(|(d, why)| (now + d, why));
    match (limit, request) {
        (Some(a), Some(b)) => Some(if b.0 <= a.0 { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// A far deadline standing for none (what tokio's own timers use), so that one timer serves
/// every phase of a connection.
fn never() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365 * 30)
}

/// Envoy's 408 bodies for a request not read in time.
const HEADER_TIMEOUT: &str = "request header timeout";
const STREAM_TIMEOUT: &str = "stream timeout";
const REQUEST_TIMEOUT: &str = "request timeout";

/// How a downstream connection left the byte path.
pub(crate) enum Outcome<S> {
    /// It is over: the client went away or asked to close, it idled out, or the proxy drains.
    Closed,
    /// A request this path does not carry: serve the rest of the connection with the full
    /// HTTP stack, starting with these bytes already read from it.
    Handoff(S, Vec<u8>),
}

/// The buffers of one exchange. Taken from a per-thread spare list when a request starts to
/// arrive and put back when the connection waits again, so idle connections hold none.
#[derive(Default)]
struct Buffers {
    /// Bytes read from the client not yet forwarded.
    request: Vec<u8>,
    /// The request head to send upstream.
    request_head: Vec<u8>,
    /// Bytes read from upstream.
    response: Vec<u8>,
    /// The response head to send downstream.
    response_head: Vec<u8>,
}

thread_local! {
    static SPARE: RefCell<Vec<Buffers>> = const { RefCell::new(Vec::new()) };
}

impl Buffers {
    fn take() -> Self {
        SPARE
            .with(|s| s.borrow_mut().pop())
            .unwrap_or_else(|| Buffers {
                request: Vec::with_capacity(READ_SIZE),
                request_head: Vec::with_capacity(1024),
                response: Vec::with_capacity(READ_SIZE),
                response_head: Vec::with_capacity(1024),
            })
    }

    /// Puts the buffers back for another connection; a buffer grown for a large message is
    /// freed instead of kept.
    fn give_back(mut self) {
        if self.response.capacity() > READ_SIZE || self.request.capacity() > READ_SIZE {
            return;
        }
        self.request.clear();
        self.response.clear();
        SPARE.with(|s| {
            let mut spare = s.borrow_mut();
            if spare.len() < SPARE_BUFFERS {
                spare.push(self);
            }
        });
    }
}

/// What wakes a connection waiting for its next request.
pub(crate) struct Wake<'a> {
    /// The epoch of the listener the connection was accepted on: cancelled when a config
    /// changes what the listener admits, and at drain.
    pub epoch: &'a CancellationToken,
    /// The proxy's drain.
    pub drain: &'a CancellationToken,
}

/// Serves HTTP/1.1 requests on `down` as bytes, each routed by the newest version of its
/// listener (`current`), until the connection ends, needs the full HTTP stack, or is no longer
/// admitted (`current` gives `None`: the request waiting is not served). `admission`: how
/// the connection was admitted, what the listener's HTTP RBAC reads; a request it refuses
/// gets 403.
pub(crate) async fn serve<S, L>(
    mut down: S,
    mut current: impl FnMut() -> Option<Arc<L>>,
    wake: Wake<'_>,
    (peer, admission): (SocketAddr, &Admission),
    timeouts: Timeouts,
) -> Outcome<S>
where
    S: AsyncRead + AsyncWrite + TcpBacked + Unpin,
    L: HttpListener,
{
    let drain = wake.drain;
    // TLS (a mesh mTLS inbound, a gateway's HTTPS): requests say `x-forwarded-proto: https`.
    let tls = down.plain().is_none();
    // Borrowed at first (no token clone per connection); after a change the connection
    // still passes, the newest listener's epoch.
    let woken = Either::Left(wake.epoch.cancelled());
    tokio::pin!(woken);
    let head_timer = tokio::time::sleep_until(never());
    tokio::pin!(head_timer);
    let response_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(response_timer);
    let mut held: Option<Buffers> = None;
    loop {
        // Wait for a whole request head. Between requests no buffer is held: a plain
        // connection waits for readiness first.
        head_timer
            .as_mut()
            .reset(timeouts.idle.map_or_else(never, |d| Instant::now() + d));
        // Once the head has started: the answer due when the timer fires, and the whole
        // request's deadline.
        let mut reading: Option<&'static str> = None;
        let mut request_deadline: Option<ReadDeadline> = None;
        let head = loop {
            if let Some(bufs) = held.as_mut().filter(|b| !b.request.is_empty()) {
                match parse_request(&bufs.request, &mut bufs.request_head) {
                    Ok(Some(head)) => break head,
                    Ok(None) if reading.is_none() => {
                        let now = Instant::now();
                        request_deadline = timeouts.request.map(|d| (now + d, REQUEST_TIMEOUT));
                        let limit = timeouts.head_deadline(now);
                        let (at, why) = limit.unwrap_or_else(|| (never(), STREAM_TIMEOUT));
                        reading = Some(why);
                        head_timer.as_mut().reset(at);
                    }
                    Ok(None) => {}
                    Err(NotForwarded::Handoff(Refused(why))) => {
                        return handoff(down, held, why, peer)
                    }
                    Err(NotForwarded::Reject { status, why }) => {
                        let listener = current();
                        if let Some(listener) = &listener {
                            listener.requests().count(status);
                        }
                        let edits = gateway_edits(listener.as_deref(), tls);
                        reject(&mut down, (status, why, edits), peer, &mut bufs.request).await;
                        return Outcome::Closed;
                    }
                }
            }
            let idle = held.as_ref().is_none_or(|b| b.request.is_empty());
            let read = tokio::select! {
                biased;
                r = read_request(&mut down, &mut held) => r,
                _ = &mut head_timer => {
                    if let (Some(why), Some(bufs)) = (reading, held.as_mut()) {
                        too_late(&mut down, (current().as_deref(), tls), why, peer, &mut bufs.request).await;
                        return Outcome::Closed;
                    }
                    if let Some(listener) = current() {
                        listener.idle_closed().inc();
                    }
                    tracing::debug!(%peer, "idle connection: closing");
                    return Outcome::Closed;
                }
                _ = &mut woken, if idle => {
                    // Drain, or a change of the listener's terms: close unless the newest
                    // listener still admits the connection.
                    match current().filter(|_| !drain.is_cancelled()) {
                        Some(now) => {
                            let watched = match now.epoch().is_cancelled() {
                                // Removed after a change: only drain is left to wait for.
                                true => drain.clone(),
                                false => now.epoch().clone(),
                            };
                            woken.set(Either::Right(watched.cancelled_owned()));
                            continue;
                        }
                        None => return Outcome::Closed,
                    }
                }
            };
            if !matches!(read, Ok(n) if n > 0) {
                return Outcome::Closed;
            }
        };
        let Some(mut bufs) = held.take() else {
            return Outcome::Closed;
        };

        let message_len = match head.body {
            BodyLength::Length(n) if head.head_len as u64 + n <= HELD_LIMIT as u64 => {
                head.head_len + n as usize
            }
            BodyLength::Empty => head.head_len,
            _ => return handoff(down, Some(bufs), "request body too large to hold", peer),
        };
        // The rest of a held body: the stream idle timeout from each read, within the
        // request's own deadline (both from its first byte when it came in one read).
        let stream_idle = timeouts.stream_idle.map(|d| (d, STREAM_TIMEOUT));
        if bufs.request.len() < message_len && request_deadline.is_none() {
            let now = Instant::now();
            request_deadline = timeouts.request.map(|d| (now + d, REQUEST_TIMEOUT));
        }
        while bufs.request.len() < message_len {
            let deadline = sooner(Instant::now(), stream_idle, request_deadline);
            head_timer
                .as_mut()
                .reset(deadline.map_or_else(never, |d| d.0));
            let read = tokio::select! {
                biased;
                r = read_more(&mut down, &mut bufs.request, READ_SIZE) => r,
                _ = &mut head_timer => {
                    if let Some((_, why)) = deadline {
                        too_late(&mut down, (current().as_deref(), tls), why, peer, &mut bufs.request).await;
                    }
                    return Outcome::Closed;
                }
            };
            if !matches!(read, Ok(n) if n > 0) {
                return Outcome::Closed;
            }
        }

        let Some(listener) = current() else {
            return Outcome::Closed;
        };
        let began = listener.access_log().map(|_| Began::now());
        // A policy denying this inbound came with a reload: no further request passes.
        if let Some(denied) = listener.denied() {
            denied.inc();
            return Outcome::Closed;
        }
        super::add_request_fields(&mut bufs.request_head, &head, tls);
        let request = Request {
            head: &head,
            body: &bufs.request[head.head_len..message_len],
            close_downstream: !head.keep_alive || drain.is_cancelled(),
        };
        let allowed = listener.rbac_allows(admission);
        let reads_headers = listener.filters().is_some_and(|f| f.reads_headers());
        let (routed, terms) = match listener.routes(tls) {
            _ if !allowed => (Routed::Reply(rbac_denied(), None), RouteTerms::default()),
            // A fault matching headers reads them before the route edits them: hyper's
            // parsed request does that (legacy FaultInjection only).
            _ if reads_headers => (
                Routed::Unsupported("a fault filter matches request headers"),
                RouteTerms::default(),
            ),
            Some(routes) => route_head(
                routes,
                &mut bufs.request_head,
                head.body,
                request.body,
                Downstream {
                    peer,
                    local: listener.address(),
                },
                &*listener,
            ),
            None => match listener.cluster() {
                Some(_) if listener.retry().is_some_and(RetryPolicy::reads_headers) => (
                    Routed::Unsupported("a retry policy reads headers"),
                    RouteTerms::default(),
                ),
                Some(c) if !c.is_h2() => {
                    if let Some(edits) = listener.request_edits() {
                        edit_request_head(edits, &mut bufs.request_head);
                    }
                    (
                        Routed::Forward {
                            cluster: c,
                            timeout: c.config.request_timeout,
                            retry: listener.retry(),
                            edits: None,
                            idle: None,
                            hash: None,
                        },
                        RouteTerms::default(),
                    )
                }
                _ => (
                    Routed::Unsupported("cluster not spoken to over HTTP/1.1"),
                    RouteTerms::default(),
                ),
            },
        };
        // The filters after RBAC, once the route is known (a request handed to hyper runs
        // them there).
        let (filtered, delayed) = match listener.filters() {
            Some(f) if allowed && !matches!(routed, Routed::Unsupported(_)) => {
                Box::pin(f.run((admission.peer(), HeadersHeld::ALL), terms.limit)).await
            }
            _ => (None, ResponseFlags::default()),
        };
        let routed = match filtered {
            Some(answer) => Routed::Reply(
                Reply {
                    status: answer.status,
                    location: None,
                    message: answer.message.into(),
                    overloaded: false,
                    flags: answer.flags,
                },
                // A gateway's (with its `server`), else the refusal's headers alone.
                match listener.routes(tls) {
                    Some(routes) => Some(routes.edits(answer.headers)),
                    None => answer.headers.map(ResponseEdits::headers),
                },
            ),
            None => routed,
        };
        let to = match &routed {
            Routed::Forward { cluster, .. } => Some(cluster.config.name.as_str()),
            _ => None,
        };
        let mut answer = match routed {
            // Boxed: inline, the exchange's future (upstream checkout, send, relay) made
            // every connection's task kilobytes larger, idle ones included.
            Routed::Forward {
                cluster,
                timeout,
                retry,
                edits,
                idle,
                hash,
            } => {
                let idle = listener.stream_idle(idle);
                Box::pin(exchange(
                    &mut down,
                    (cluster, timeout, retry, idle, hash),
                    &request,
                    &bufs.request_head,
                    Response {
                        buf: &mut bufs.response,
                        head: &mut bufs.response_head,
                        timer: response_timer.as_mut(),
                        edits,
                    },
                ))
                .await
            }
            Routed::Reply(reply, edits) => {
                let (is_head, close) = (head.is_head, request.close_downstream);
                Box::pin(write_reply(&mut down, &reply, is_head, close, edits)).await
            }
            Routed::Unsupported(why) => return handoff(down, Some(bufs), why, peer),
        };
        let close = request.close_downstream;
        // A fault's delay is the request's too (Envoy's `DI`).
        answer.flags.insert(delayed);
        listener.requests().count(answer.status);
        if let (Some(log), Some(began)) = (listener.access_log(), began) {
            let received = (message_len - head.head_len) as u64;
            let exchange = (&bufs, (to, terms.route_kri), received);
            log_exchange(log, began, exchange, &answer, (peer, listener.address()));
        }
        if close || !answer.downstream_open {
            return Outcome::Closed;
        }
        bufs.request.drain(..message_len);
        if bufs.request.is_empty() {
            bufs.give_back();
        } else {
            held = Some(bufs);
        }
    }
}

/// Logs one exchange: `bufs` hold the request head as forwarded and, when the answer was
/// relayed, the response head sent; `to`: the cluster routed to, with the route's
/// `route_kri`; `received`: the request's body bytes; `(peer, local)`: the downstream
/// connection's addresses.
fn log_exchange(
    log: &ListenerLog,
    began: Began,
    (bufs, (to, route_kri), received): (&Buffers, (Option<&str>, Option<&str>), u64),
    answer: &Answer,
    (peer, local): (SocketAddr, SocketAddr),
) {
    let (start, duration) = began.times();
    let response = WrittenHead(&bufs.response_head);
    log.log(&Entry {
        route_kri,
        start,
        duration,
        protocol: Some("HTTP/1.1"),
        response_code: answer.status,
        flags: answer.flags,
        bytes_received: received,
        bytes_sent: answer.sent,
        upstream_host: answer.upstream,
        upstream_cluster: to,
        downstream_remote: peer,
        downstream_local: local,
        request: &WrittenHead(&bufs.request_head),
        response: if answer.relayed {
            &response
        } else {
            &NoHeaders
        },
    });
}

/// What a gateway's local replies get before a route is chosen (`server: Kuma Gateway`,
/// Envoy's connection manager's `server_name`), by `listener`'s routes (`tls`: the
/// connection's transport); `None` off a gateway.
pub(super) fn gateway_edits<L: HttpListener>(
    listener: Option<&L>,
    tls: bool,
) -> Option<ResponseEdits<'_>> {
    listener
        .and_then(|l| l.routes(tls))
        .and_then(HttpRoutes::local_reply_edits)
}

/// Answers a request no path forwards with `status` and `why` (with `edits`), and closes: the
/// answer goes out, the write side is shut, and what the client still sends is read into
/// `scratch` and dropped for a while (at most [`LINGER`] and [`LINGER_BYTES`]), as nginx's
/// lingering close does, so that closing with unread bytes does not reset the connection
/// before the client has read the answer.
async fn reject<S>(
    down: &mut S,
    (status, why, edits): (u16, &str, Option<ResponseEdits<'_>>),
    peer: SocketAddr,
    scratch: &mut Vec<u8>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tracing::debug!(%peer, "request refused with {status}: {why}");
    let reply = Reply {
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        location: None,
        message: why.to_string(),
        overloaded: false,
        flags: ResponseFlags::default(),
    };
    if !write_reply(down, &reply, false, true, edits)
        .await
        .downstream_open
    {
        return;
    }
    let _ = down.shutdown().await;
    let deadline = Instant::now() + LINGER;
    let mut dropped = 0;
    while dropped < LINGER_BYTES {
        scratch.clear();
        match tokio::time::timeout_at(deadline, read_more(down, scratch, READ_SIZE)).await {
            Ok(Ok(n)) if n > 0 => dropped += n,
            _ => return,
        }
    }
}

/// Answers a request not read within one of its deadlines with Envoy's 408 (`why` names it)
/// and closes the connection, counted on `listener`'s responses (`tls`: the connection's
/// transport).
async fn too_late<S, L>(
    down: &mut S,
    (listener, tls): (Option<&L>, bool),
    why: &str,
    peer: SocketAddr,
    scratch: &mut Vec<u8>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    L: HttpListener,
{
    if let Some(listener) = listener {
        listener.requests().count(408);
    }
    reject(
        down,
        (408, why, gateway_edits(listener, tls)),
        peer,
        scratch,
    )
    .await;
}

/// Envoy's reply to a request its RBAC filter refuses.
fn rbac_denied() -> Reply {
    Reply {
        status: StatusCode::FORBIDDEN,
        location: None,
        message: super::RBAC_DENIED.into(),
        overloaded: false,
        flags: ResponseFlags::default(),
    }
}

/// Hands the connection to the full HTTP stack with the bytes read so far.
fn handoff<S>(down: S, held: Option<Buffers>, why: &str, peer: SocketAddr) -> Outcome<S> {
    tracing::trace!(%peer, "served by the HTTP stack: {why}");
    Outcome::Handoff(down, held.map(|b| b.request).unwrap_or_default())
}

/// Edits a request head written as bytes as a plain listener's route asks (`edits`), as
/// the hyper codec edits a request's headers.
fn edit_request_head(edits: &HeaderEdits, head: &mut Vec<u8>) {
    let appended = edits
        .appended()
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
    bearing_http1::edit_fields(head, |name| edits.replaces(name), appended);
}

/// Edits a response head written as bytes as routed HTTP asks (`edits`), and adds a gateway
/// compression's `Vary`.
fn edit_response_head(edits: ResponseEdits<'_>, head: &mut Vec<u8>) {
    edits.apply(head);
    if let Some(compression) = edits.compression() {
        compress::vary_head(compression, head);
    }
}

/// Routes an HTTP/1.1 request the byte codec read: `head` (as [`bearing_http1`] wrote it,
/// hop-by-hop fields removed) is read into an `http` request for the router and, when the
/// request is forwarded, written again as routed, with the original framing (`length`). A
/// mirrored request's copy (with `body`, the part of the body already read) is sent from here.
fn route_head<'r>(
    routes: &'r HttpRoutes,
    head: &mut Vec<u8>,
    length: BodyLength,
    body: &[u8],
    downstream: Downstream,
    listener: &impl HttpListener,
) -> (Routed<'r>, RouteTerms<'r>) {
    let unsupported = |why| (Routed::Unsupported(why), RouteTerms::default());
    if !routes.http1_backends() {
        return unsupported("a backend cluster is spoken to over HTTP/2");
    }
    if routes.endpoint_host() {
        return unsupported("a route rewrites Host to the endpoint's hostname");
    }
    let Some(mut parts) = request_parts(head) else {
        return unsupported("request head the router cannot read");
    };
    // A client accepting gzip is served by hyper, which compresses (the parts read here are
    // then dropped: hyper reads the request again from its bytes).
    let gzip = |c| compress::negotiate(c, &mut parts.headers);
    if routes.compression().is_some_and(gzip) {
        return unsupported("the client accepts gzip: compressed by hyper");
    }
    let (routing, terms) = routes.decide(&mut parts, downstream);
    let routed = match routing {
        Routing::Reply(reply, route) => Routed::Reply(reply, Some(routes.edits(route))),
        Routing::Forward {
            target,
            timeout,
            retry,
            idle_timeout,
            response_headers,
            mirror,
            hash,
            set_cookies,
            ..
        } => {
            // A retry policy reading headers is served by hyper, which has them parsed.
            if retry.is_some_and(RetryPolicy::reads_headers) {
                return unsupported("a retry policy reads headers");
            }
            // Generated cookies are added to the response head by hyper (the connection's
            // later requests bring the cookie).
            if set_cookies.is_some() {
                return unsupported("a hash policy generated a cookie");
            }
            if let Some(m) = mirror {
                let name = listener.name();
                super::mirror::spawn_mirror(&parts, Bytes::copy_from_slice(body), m, name);
            }
            strip_hop_by_hop(&mut parts.headers);
            write_request_head(&parts, length, head);
            Routed::Forward {
                cluster: target,
                timeout,
                retry,
                edits: Some(routes.edits(Some(response_headers))),
                idle: idle_timeout,
                hash,
            }
        }
    };
    (routed, terms)
}

/// `head` (written by [`bearing_http1::parse_request`]) as an `http` request's parts; `None`
/// when the `http` crate refuses something in it.
fn request_parts(head: &[u8]) -> Option<http::request::Parts> {
    let (line, fields) = bearing_http1::written_head(head)?;
    // `METHOD SP target SP HTTP/1.1`; the target has no spaces.
    let (method, rest) = line.split_at(line.iter().position(|b| *b == b' ')?);
    let rest = rest.get(1..)?;
    let target = &rest[..rest.iter().rposition(|b| *b == b' ')?];
    let mut req = http::Request::new(());
    *req.method_mut() = Method::from_bytes(method).ok()?;
    *req.uri_mut() = Uri::from_maybe_shared(Bytes::copy_from_slice(target)).ok()?;
    let headers = req.headers_mut();
    for (name, value) in fields {
        headers.append(
            HeaderName::from_bytes(name).ok()?,
            HeaderValue::from_bytes(value).ok()?,
        );
    }
    Some(req.into_parts().0)
}

/// Writes the routed request's head for an HTTP/1.1 upstream into `out`: the (rewritten)
/// target, the headers, and the framing the request was read with (a route's header filter
/// cannot change how the body that follows is delimited).
fn write_request_head(parts: &http::request::Parts, length: BodyLength, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name != header::CONTENT_LENGTH {
            bearing_http1::push_header(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if let BodyLength::Length(n) = length {
        bearing_http1::push_header(out, b"content-length", n.to_string().as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Reads request bytes into the held buffers, taking buffers once bytes are there.
///
/// A plain connection with no buffers waits for readiness, then takes buffers only for the
/// read: tokio reports a fresh socket readable once before anything arrived, and buffers
/// taken then would stay with every idle connection.
async fn read_request<S>(down: &mut S, held: &mut Option<Buffers>) -> io::Result<usize>
where
    S: AsyncRead + TcpBacked + Unpin,
{
    if let (None, Some(tcp)) = (held.as_ref(), down.plain()) {
        loop {
            tcp.get_ref().readable().await?;
            // Not live across an await: between reads the buffers are back in the spare list.
            let mut bufs = Buffers::take();
            match tcp.get_ref().try_read_buf(&mut bufs.request) {
                Ok(n) if n > 0 => {
                    if bufs.request.len() < bufs.request.capacity() {
                        crate::io::forget_readable(tcp.get_ref());
                    }
                    tcp.count_read(n);
                    *held = Some(bufs);
                    return Ok(n);
                }
                Ok(n) => {
                    bufs.give_back();
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => bufs.give_back(),
                Err(e) => {
                    bufs.give_back();
                    return Err(e);
                }
            }
        }
    }
    let bufs = held.get_or_insert_with(Buffers::take);
    read_more(down, &mut bufs.request, READ_SIZE).await
}

/// Reads once into `buf`'s spare capacity, making room for `size` bytes first.
async fn read_more<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    size: usize,
) -> io::Result<usize> {
    if buf.capacity() - buf.len() < size / 4 {
        buf.reserve(size);
    }
    r.read_buf(buf).await
}

/// A request head ready to send.
struct Request<'a> {
    head: &'a RequestHead,
    /// The body, held whole.
    body: &'a [u8],
    /// The client asked to close after this response, or the proxy drains.
    close_downstream: bool,
}

/// Where a response is read and its head rewritten, the response timer, and the changes to
/// make to the head sent downstream.
struct Response<'a> {
    buf: &'a mut Vec<u8>,
    head: &'a mut Vec<u8>,
    timer: Pin<&'a mut Sleep>,
    edits: Option<ResponseEdits<'a>>,
}

/// What an exchange ended with.
struct Answer {
    /// The status sent downstream (upstream's or a local reply's).
    status: u16,
    /// The downstream connection can take another request.
    downstream_open: bool,
    /// Response body bytes sent downstream (for the access log).
    sent: u64,
    /// The endpoint the request went to, if one was chosen (for the access log).
    upstream: Option<SocketAddr>,
    /// What went wrong, as Envoy's response flags say it (for the access log).
    flags: ResponseFlags,
    /// The response head in the exchange's buffers is the one sent (relayed from upstream).
    relayed: bool,
}

/// How sending a request on one upstream connection went.
enum Sent {
    /// A response head arrived.
    Answered(ResponseHead),
    /// Writing the request failed: it was not (wholly) delivered.
    NotDelivered(io::Error),
    /// The connection closed or reset before any response byte.
    NoAnswer(io::Error),
    /// No response head within the request's timeout.
    Timeout,
    /// The response could not be read as HTTP/1.1.
    Invalid(Refused),
}

/// The stream idle timeout of an exchange, and where one that fires is counted.
type StreamIdle<'a> = Option<(Duration, &'a Counter)>;

/// Sends `request` to the cluster ([`super::forward`]: the next endpoint that takes it, a
/// stale pooled connection replaced, again as the route's retry policy asks) and relays the
/// response; a failure before the response is answered with a local reply. Under a stream
/// idle timeout, waiting that long for the response head gives 504 `stream timeout` (the
/// request, held whole, has been written: nothing moves while the head is awaited), and a
/// response body that stops moving for that long closes the connection. A response body
/// still coming at the cluster's maximum stream duration closes it too (Envoy resets a
/// stream whose response has started), counted in `upstream_rq_max_duration_reached`.
async fn exchange<S>(
    down: &mut S,
    (cluster, timeout, retry, idle, hash): (
        &ClusterRuntime,
        Option<Duration>,
        Option<&RetryPolicy>,
        StreamIdle<'_>,
        Option<u64>,
    ),
    request: &Request<'_>,
    request_head: &[u8],
    mut response: Response<'_>,
) -> Answer
where
    S: AsyncWrite + TcpBacked + Unpin,
{
    let mut upstream = Upstream {
        cluster,
        timeout,
        stream_end: None,
        head: request_head,
        response: &mut response,
    };
    let forwarded = super::forward((cluster, retry, hash), &mut upstream, request);
    let forwarded = match idle {
        None => forwarded.await,
        Some((period, idled)) => match tokio::time::timeout(period, forwarded).await {
            Ok(forwarded) => forwarded,
            Err(_) => {
                idled.inc();
                let (is_head, close) = (request.head.is_head, request.close_downstream);
                let reply = Reply::stream_timeout();
                return write_reply(down, &reply, is_head, close, response.edits).await;
            }
        },
    };
    let stream_end = upstream.stream_end;
    let ((up, head, _request_unit), pool) = match forwarded {
        // The unit is held until the response has been relayed.
        Ok((answer, pool, _)) => (answer, pool),
        Err(failure) => {
            return Box::pin(local_reply(down, cluster, failure, request, response.edits)).await
        }
    };
    let Response {
        buf,
        head: out,
        timer,
        edits,
    } = response;
    let (status, activity, sent) = (head.status, Activity::default(), AtomicU64::new(0));
    let watched = idle.map(|_| &activity);
    let relayed = relay(
        down,
        up,
        (&pool, cluster, watched, &sent),
        head,
        request,
        (buf, out, edits),
    );
    let relayed = before(stream_end, timer, relayed);
    let ended = match idle {
        None => relayed.await,
        Some((period, idled)) => match unless_idle(relayed, period, &activity).await {
            Some(ended) => ended,
            None => {
                idled.inc();
                tracing::debug!(cluster = %cluster.config.name, "response idle for {period:?}: closing");
                let flags = ResponseFlags::STREAM_IDLE_TIMEOUT;
                return cut((status, sent.load(Ordering::Relaxed)), &pool, flags);
            }
        },
    };
    ended.unwrap_or_else(|| {
        cluster.stats.rq_max_duration_reached.inc();
        tracing::debug!(cluster = %cluster.config.name, "max stream duration reached inside the response body: closing");
        let flags = ResponseFlags::UPSTREAM_MAX_STREAM_DURATION;
        cut((status, sent.load(Ordering::Relaxed)), &pool, flags)
    })
}

/// `work`'s output, or `None` when `end` comes first (`timer`, the exchange's response
/// timer, set to it); without an end, `work` alone.
async fn before<F: std::future::Future>(
    end: Option<Instant>,
    mut timer: Pin<&mut Sleep>,
    work: F,
) -> Option<F::Output> {
    let Some(end) = end else {
        return Some(work.await);
    };
    timer.as_mut().reset(end);
    tokio::select! {
        biased;
        out = work => Some(out),
        () = timer => None,
    }
}

/// The answer of a response of `status` from `pool`'s endpoint cut mid-body, `sent` body
/// bytes in, for `flags`: the downstream connection closes, which tells the client its body
/// was cut short.
fn cut((status, sent): (u16, u64), pool: &EndpointPool, flags: ResponseFlags) -> Answer {
    Answer {
        status,
        downstream_open: false,
        sent,
        upstream: Some(pool.address()),
        flags,
        relayed: true,
    }
}

/// The upstream side of the byte codec, for [`super::forward`]: the written request head, and
/// where the response head is read.
struct Upstream<'a, 'r> {
    cluster: &'a ClusterRuntime,
    /// The request's response timeout (the route's, else the cluster's).
    timeout: Option<Duration>,
    /// When the last attempt's stream must have ended (its maximum stream duration).
    stream_end: Option<Instant>,
    head: &'a [u8],
    response: &'r mut Response<'a>,
}

impl<'a> UpstreamCodec for Upstream<'a, '_> {
    type Request = &'a Request<'a>;
    type Conn = UpstreamStream;
    type Answer = (UpstreamStream, ResponseHead, RequestUnit<&'a Occupancy>);

    async fn checkout(
        &mut self,
        pool: &Arc<EndpointPool>,
    ) -> Result<(UpstreamStream, bool), NoConnection> {
        self.cluster
            .checkout_raw(pool)
            .await
            .map_err(NoConnection::failed)
    }

    /// Writes the request and reads the response head. The body is held whole, so a request
    /// safe to repeat (idempotent) can be sent again after a stale connection lost it.
    async fn attempt(
        &mut self,
        pool: &Arc<EndpointPool>,
        mut up: UpstreamStream,
        request: &'a Request<'a>,
    ) -> Attempt<&'a Request<'a>, Self::Answer> {
        let cluster = self.cluster;
        let unit = match cluster.request_unit(&*cluster.stats.occupancy, pool) {
            Ok(unit) => unit,
            Err(overflow) => {
                pool.release(up, &cluster.stats.occupancy, &cluster.config.http_timeouts);
                return Attempt::Failed(overflow);
            }
        };
        let address = pool.address();
        let limit = self.timeout;
        match send(&mut up, request, self.head, limit, self.response).await {
            Sent::Answered(head) => Attempt::Answered((up, head, unit)),
            Sent::NotDelivered(e) => Attempt::NotDelivered(request, e),
            Sent::NoAnswer(e) => {
                let again = request.head.idempotent.then_some(request);
                Attempt::NoAnswer(again, UpstreamError::Request(address, e.into()))
            }
            Sent::Invalid(refused) => {
                Attempt::Failed(UpstreamError::InvalidResponse(address, refused.into()))
            }
            Sent::Timeout => Attempt::Failed(UpstreamError::Timeout(address)),
        }
    }

    /// The request is held whole: it can always go again.
    fn copy(&self, request: &&'a Request<'a>) -> Option<&'a Request<'a>> {
        Some(*request)
    }

    fn limit(&mut self) -> &mut Option<Duration> {
        &mut self.timeout
    }

    fn stream_end(&mut self) -> &mut Option<Instant> {
        &mut self.stream_end
    }

    fn status((_, head, _): &Self::Answer) -> u16 {
        head.status
    }

    /// gRPC runs over HTTP/2, which this codec does not carry: no gRPC status to read.
    fn grpc_status(_: &Self::Answer) -> Option<u32> {
        None
    }

    /// Never asked: a request whose retry policy reads headers is handed to hyper before it
    /// is forwarded (`route_head`), so no answer of this codec meets one.
    fn headers_ask_retry(_: &Self::Answer, _: &RetryPolicy) -> bool {
        false
    }

    /// Never asked, as [`Self::headers_ask_retry`]: a rate-limited back-off reads headers.
    fn reset_interval(_: &Self::Answer, _: &RateLimitedBackOff) -> Option<Duration> {
        None
    }
}

/// Writes the request to `up` and reads the response head, within `limit`.
async fn send(
    up: &mut UpstreamStream,
    request: &Request<'_>,
    head: &[u8],
    limit: Option<Duration>,
    response: &mut Response<'_>,
) -> Sent {
    if let Err(e) = write_two(up, head, request.body).await {
        return Sent::NotDelivered(e);
    }
    response.buf.clear();
    let Some(limit) = limit else {
        return read_response_head(up, request, response.buf, response.head).await;
    };
    response.timer.as_mut().reset(Instant::now() + limit);
    tokio::select! {
        biased;
        sent = read_response_head(up, request, response.buf, response.head) => sent,
        _ = response.timer.as_mut() => Sent::Timeout,
    }
}

/// Reads until `buf` starts with a whole response head (parsing what is there first).
async fn read_response_head(
    up: &mut UpstreamStream,
    request: &Request<'_>,
    buf: &mut Vec<u8>,
    head: &mut Vec<u8>,
) -> Sent {
    loop {
        if !buf.is_empty() {
            match parse_response(buf, request.head.is_head, request.close_downstream, head) {
                Ok(Some(parsed)) => return Sent::Answered(parsed),
                Ok(None) => {}
                Err(refused) => return Sent::Invalid(refused),
            }
        }
        match read_more(up, buf, READ_SIZE).await {
            Ok(n) if n > 0 => {}
            Ok(_) if buf.is_empty() => {
                return Sent::NoAnswer(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ))
            }
            Err(e) if buf.is_empty() => return Sent::NoAnswer(e),
            _ => return Sent::Invalid(Refused("connection closed inside the response head")),
        }
    }
}

/// Relays the response whose head is at the start of `buf` (after any interim responses;
/// the head sent downstream is written in `out`, changed by `edits`), then pools `up` if it
/// can carry another request. Each read and write that moves bytes touches `activity` (a
/// stream idle timeout's watch), when given; `sent` holds the body bytes written downstream,
/// for when the relay is cut short.
async fn relay<S>(
    down: &mut S,
    mut up: UpstreamStream,
    (pool, cluster, activity, sent): (
        &EndpointPool,
        &ClusterRuntime,
        Option<&Activity>,
        &AtomicU64,
    ),
    mut head: ResponseHead,
    request: &Request<'_>,
    (buf, out, edits): (&mut Vec<u8>, &mut Vec<u8>, Option<ResponseEdits<'_>>),
) -> Answer
where
    S: AsyncWrite + TcpBacked + Unpin,
{
    let gone = |status, sent, flags| cut((status, sent), pool, flags);
    let (dc, uc) = (
        ResponseFlags::DOWNSTREAM_TERMINATION,
        ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
    );
    while head.interim {
        if down.write_all(out).await.is_err() {
            return gone(head.status, 0, dc);
        }
        buf.drain(..head.head_len);
        head = match read_response_head(&mut up, request, buf, out).await {
            Sent::Answered(h) => h,
            _ => {
                cluster.stats.request_errors.inc();
                return gone(head.status, 0, uc);
            }
        };
    }
    let mut body = BodyProgress::new(head.body);
    let after_head = &buf[head.head_len..];
    let n = match body.advance(after_head) {
        Ok(n) => n,
        // Nothing of this response has gone downstream yet: the client gets a 502.
        Err(refused) => {
            cluster.stats.request_errors.inc();
            let failure = UpstreamError::InvalidResponse(pool.address(), refused.into());
            return Box::pin(local_reply(down, cluster, failure, request, edits)).await;
        }
    };
    cluster.stats.requests.count(head.status);
    if let Some(edits) = edits {
        edit_response_head(edits, out);
    }
    let mut reusable = head.reusable && n == after_head.len();
    // A small first part of the body joins the head: one plain write instead of a vectored one.
    let first_part = if n <= SMALL_BODY {
        out.extend_from_slice(&after_head[..n]);
        &[][..]
    } else {
        &after_head[..n]
    };
    if write_two(down, out, first_part).await.is_err() {
        return gone(head.status, 0, dc);
    }
    let mut total = n as u64;
    sent.store(total, Ordering::Relaxed);
    let mut spliced = false;
    if let (Some(left @ SPLICE_BODY..), Some(from), Some(to)) =
        (body.remaining(), up.plain(), down.plain())
    {
        spliced = true;
        // Boxed: inline, the splice loop's future would make every exchange's future larger,
        // small responses' included.
        if let Err(e) = Box::pin(crate::splice::copy_exact(from, to, left, activity)).await {
            tracing::debug!(cluster = %cluster.config.name, "response body not relayed whole: {e}");
            let flags = match e.kind() {
                io::ErrorKind::UnexpectedEof => {
                    cluster.stats.request_errors.inc();
                    uc
                }
                _ => dc,
            };
            return gone(head.status, total, flags);
        }
        body.skip(left);
        total += left;
        sent.store(total, Ordering::Relaxed);
    }
    let mut size = READ_SIZE;
    while !body.is_done() {
        buf.clear();
        let read = read_more(&mut up, buf, size).await;
        match read {
            Ok(0) if head.body == BodyLength::UntilClose => {
                return gone(head.status, total, ResponseFlags::default())
            }
            Ok(0) | Err(_) => {
                // Closing downstream tells the client its body was cut short.
                tracing::debug!(cluster = %cluster.config.name, "upstream closed inside a response body");
                cluster.stats.request_errors.inc();
                return gone(head.status, total, uc);
            }
            Ok(n) if n == buf.capacity() => size = RELAY_READ_SIZE,
            Ok(_) => {}
        }
        touch(activity);
        let Ok(k) = body.advance(buf) else {
            tracing::debug!(cluster = %cluster.config.name, "malformed chunked response body");
            cluster.stats.request_errors.inc();
            return gone(head.status, total, ResponseFlags::UPSTREAM_PROTOCOL_ERROR);
        };
        reusable &= k == buf.len();
        if down.write_all(&buf[..k]).await.is_err() {
            return gone(head.status, total, dc);
        }
        total += k as u64;
        sent.store(total, Ordering::Relaxed);
        touch(activity);
    }
    if reusable {
        // The last read stopped short of the buffer's end: the socket had nothing more.
        if let (false, true, Some(tcp)) = (spliced, buf.len() < buf.capacity(), up.plain()) {
            crate::io::forget_readable(tcp.get_ref());
        }
        pool.release(up, &cluster.stats.occupancy, &cluster.config.http_timeouts);
    }
    Answer {
        status: head.status,
        downstream_open: true,
        sent: total,
        upstream: Some(pool.address()),
        flags: ResponseFlags::default(),
        relayed: true,
    }
}

/// Answers the request with a plain-text reply naming `failure`.
async fn local_reply<S: AsyncWrite + Unpin>(
    down: &mut S,
    cluster: &ClusterRuntime,
    failure: UpstreamError,
    request: &Request<'_>,
    edits: Option<ResponseEdits<'_>>,
) -> Answer {
    let reply = Reply::of_failure(&failure, cluster);
    let (is_head, close) = (request.head.is_head, request.close_downstream);
    let mut answer = write_reply(down, &reply, is_head, close, edits).await;
    answer.upstream = crate::access_log::failure_flags(&failure).1;
    answer
}

/// Writes a response the proxy makes itself, to a HEAD request (`is_head`: no body) or not,
/// with `connection: close` when `close`.
async fn write_reply<S: AsyncWrite + Unpin>(
    down: &mut S,
    reply: &Reply,
    is_head: bool,
    close: bool,
    edits: Option<ResponseEdits<'_>>,
) -> Answer {
    let status = reply.status;
    let mut head = Vec::with_capacity(256);
    reply_head(reply, close, &mut head);
    if let Some(edits) = edits {
        edit_response_head(edits, &mut head);
    }
    let body = if is_head {
        &[][..]
    } else {
        reply.message.as_bytes()
    };
    Answer {
        status: status.as_u16(),
        downstream_open: write_two(down, &head, body).await.is_ok(),
        sent: body.len() as u64,
        upstream: None,
        flags: reply.flags,
        relayed: false,
    }
}

/// Writes the head of a response the proxy makes itself (`reply`, with `connection: close`
/// when `close`) into `head`, as Envoy's connection manager writes its local replies.
pub(super) fn reply_head(reply: &Reply, close: bool, head: &mut Vec<u8>) {
    use std::io::Write as _;
    let status = reply.status;
    // Writing into a Vec cannot fail.
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\ncontent-type: {LOCAL_REPLY_CONTENT_TYPE}\r\ncontent-length: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        reply.message.len(),
    );
    if let Some(location) = &reply.location {
        bearing_http1::push_header(head, b"location", location.as_bytes());
    }
    if reply.overloaded {
        bearing_http1::push_header(head, b"x-envoy-overloaded", b"true");
    }
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    }
    // Envoy's connection manager dates every response it sends.
    super::with_date(|date| bearing_http1::push_header(head, b"date", date));
    head.extend_from_slice(b"\r\n");
}

/// Writes `first` then `second` with as few system calls as the socket allows (one, for
/// anything that fits its buffer): a plain write when `second` is empty (cheaper in the
/// kernel than a vectored one), else a vectored write.
///
/// The write goes out at once. It used to wait for the worker's other ready connections to be
/// read first (a yield), when writing between reads made the worker and the origin take turns
/// on one core (250-700 preemptions per 1000 requests). That no longer reproduces: http1-small
/// through 1 worker, alternating with and without the yield, 21-36 against 35-64 involuntary
/// switches per 1000 requests, 12.0k against 13.6k instructions per request (callgrind), and
/// in four harness rounds each 14.8 against 15.4 us of CPU and 59.7k against 58.0k req/s.
async fn write_two<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut first: &[u8],
    mut second: &[u8],
) -> io::Result<()> {
    if second.is_empty() {
        return w.write_all(first).await;
    }
    while !first.is_empty() {
        let n = w
            .write_vectored(&[IoSlice::new(first), IoSlice::new(second)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n < first.len() {
            first = &first[n..];
        } else {
            second = &second[n - first.len()..];
            first = &[];
        }
    }
    w.write_all(second).await
}

/// A stream whose first reads return bytes already read from it: how a connection the byte
/// path started is handed to hyper.
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, read from after `prefix`.
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prefixed_stream_reads_its_prefix_first() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut s = Prefixed::new(b"hello".to_vec(), server);
        let mut all = String::new();
        s.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }

    #[tokio::test]
    async fn write_two_writes_both_parts_in_order() {
        let (mut a, mut b) = tokio::io::duplex(3);
        let writer = tokio::spawn(async move {
            write_two(&mut a, b"head:", b"body").await.unwrap();
        });
        let mut got = String::new();
        b.read_to_string(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got, "head:body");
    }

    /// Both codecs' local replies (here and hyper's) carry Envoy's `content-type:
    /// text/plain` (the differential test against Envoy found `; charset=utf-8` here).
    #[tokio::test]
    async fn local_replies_of_both_codecs_say_text_plain_as_envoy() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let reply = Reply {
            status: StatusCode::SERVICE_UNAVAILABLE,
            location: None,
            message: "no healthy upstream".into(),
            overloaded: false,
            flags: ResponseFlags::default(),
        };
        let _ = write_reply(&mut a, &reply, false, true, None).await;
        drop(a);
        let mut got = String::new();
        b.read_to_string(&mut got).await.unwrap();
        assert!(
            got.starts_with("HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"),
            "{got}"
        );
        let hyper = super::super::hyper_codec::local_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream".into(),
        );
        assert_eq!(hyper.headers()[http::header::CONTENT_TYPE], "text/plain");
    }

    #[test]
    fn routed_head_is_written_with_the_framing_it_was_read_with() {
        let raw = b"POST /a%2Fb/../c?q=1 HTTP/1.1\r\nHost: web\r\nConnection: x-hop\r\nX-Hop: 1\r\nContent-Length: 5\r\nX-Two: 1\r\nx-two: 2\r\n\r\nhello";
        let mut head = Vec::new();
        let parsed = bearing_http1::parse_request(raw, &mut head)
            .unwrap()
            .unwrap();
        let mut parts = request_parts(&head).unwrap();
        assert_eq!(parts.method, Method::POST);
        assert_eq!(parts.uri, "/a%2Fb/../c?q=1");
        assert_eq!(parts.headers.get_all("x-two").iter().count(), 2);
        assert!(parts.headers.get("x-hop").is_none(), "listed by Connection");
        // A route filter removing the length does not change how the body is delimited.
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.uri = Uri::from_static("/c?q=1");
        write_request_head(&parts, parsed.body, &mut head);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "POST /c?q=1 HTTP/1.1\r\nhost: web\r\nx-two: 1\r\nx-two: 2\r\ncontent-length: 5\r\n\r\n"
        );
        assert!(request_parts(b"GET / HTTP/1.1\r\nbad name: 1\r\n\r\n").is_none());
    }
}

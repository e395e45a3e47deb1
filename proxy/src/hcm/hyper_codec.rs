//! The hyper codec: HTTP/2 from downstream (h2c prior knowledge, ALPN `h2`), and HTTP/1.1
//! requests the byte codec hands over, read and written by hyper; upstream, hyper's HTTP/1.1
//! client on a pooled stream or this worker's HTTP/2 connection. What happens to a request
//! between the two is the connection manager's ([`super`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bearing_gateway::{Downstream, HeaderEdits, SetCookies};
use bearing_http1::{valid_host, MAX_HEAD, MAX_HEADERS};
use bearing_proxy_config::{RateLimitedBackOff, RetryPolicy};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use tokio::time::{Instant, Sleep};

use super::compress;
use super::filters::{HeadersHeld, HttpFilters};
use super::mirror::mirror_request;
use super::{
    strip_hop_by_hop, Attempt, HttpListener, UpstreamCodec, LOCAL_REPLY_CONTENT_TYPE, RBAC_DENIED,
};
use crate::access_log::{Began, HyperExchange, ListenerLog, LoggedBody};
use crate::body::MessageBody;
use crate::rate_limit::RouteLimit;
use crate::rbac::Peer;
use crate::router::{HttpRoutes, Reply, Routing, SERVER_NAME};
use crate::upstream::{
    Checkout, ClusterRuntime, EndpointPool, NoConnection, RequestBody, UpstreamBody, UpstreamError,
};
use bearing_proxy_config::ResponseFlags;

/// A response body: streamed from upstream, or a short local reply.
pub type ProxyBody = MessageBody<UpstreamBody>;

/// Serves one request hyper read on a connection of `listener`, as the connection manager
/// does every request: a listener that refuses everything answers 403 (Envoy's RBAC reply);
/// a request the proxy does not forward is answered; one the HTTP RBAC refused
/// (`rbac_allowed` false, decided by the caller) gets 403 `RBAC: access denied`; the rest get
/// `x-request-id` and `x-forwarded-proto` (`tls`: the connection is TLS), pass the
/// listener's filters (faults, rate limits; `who`: the connection as they read it) and go
/// where the listener's routes decide, or to its cluster. Responses are counted on the
/// listener by status.
pub(crate) async fn serve_request<L: HttpListener>(
    mut req: Request<Incoming>,
    listener: &L,
    peer: SocketAddr,
    (tls, rbac_allowed, who): (bool, bool, Option<&Peer>),
) -> Response<ProxyBody> {
    let version = req.version();
    let logged = listener.access_log().map(|log| (log.clone(), Began::now()));
    let mut head = None;
    let mut outcome = Outcome::default();
    let refused = match listener.denied() {
        Some(denied) => {
            denied.inc();
            Some(local_reply(StatusCode::FORBIDDEN, RBAC_DENIED.into()))
        }
        None => screen_request(&mut req).or_else(|| {
            (!rbac_allowed).then(|| local_reply(StatusCode::FORBIDDEN, RBAC_DENIED.into()))
        }),
    };
    let resp = match refused {
        Some(refused) => {
            if logged.is_some() {
                head = Some(request_head(&req));
            }
            refused
        }
        None => {
            super::add_request_headers(req.headers_mut(), tls);
            if logged.is_some() {
                head = Some(request_head(&req));
            }
            let filters = listener.filters().map(|f| (f, who));
            // The connection manager's request timeout, while the body is still to come: the
            // flag its body sets once read whole (sent upstream, or buffered for a mirror).
            let request_limit = listener
                .request_timeout()
                .filter(|_| !req.body().is_end_stream());
            let ended = request_limit.map(|_| Arc::new(AtomicBool::new(false)));
            let dispatch = async {
                match (listener.routes(tls), listener.cluster()) {
                    (Some(routes), _) => {
                        let body = ended.as_ref();
                        route(req, (listener, filters), routes, (peer, body)).await
                    }
                    (None, Some(cluster)) => {
                        match filtered(filters, held(filters, req.headers()), None).await {
                            (Some(reply), flags) => (
                                reply,
                                Outcome {
                                    flags,
                                    ..Outcome::default()
                                },
                            ),
                            (None, delayed) => {
                                let mut forwarded = None;
                                if let Some(edits) = listener.request_edits() {
                                    edits.apply(req.headers_mut());
                                    forwarded =
                                        listener.access_log().map(|_| Box::new(request_head(&req)));
                                }
                                let idle = listener.stream_idle(None);
                                let retry = listener
                                    .retry()
                                    .filter(|p| retried(p, req.method(), req.headers()));
                                let limits = (cluster.config.request_timeout, retry, idle);
                                let req =
                                    req.map(|b| RequestBody::Streamed(b).flagging(ended.as_ref()));
                                let (resp, mut sent) =
                                    send_logged(req, cluster, limits, (false, (None, None))).await;
                                sent.flags.insert(delayed);
                                (resp, Outcome { forwarded, ..sent })
                            }
                        }
                    }
                    (None, None) => {
                        let message = format!("listener {} has no cluster", listener.name());
                        let reply = local_reply(StatusCode::SERVICE_UNAVAILABLE, message);
                        (reply, Outcome::default())
                    }
                }
            };
            let (resp, sent) = match (request_limit, &ended) {
                (Some(limit), Some(ended)) => {
                    within_request_timeout(dispatch, limit, ended, version).await
                }
                _ => dispatch.await,
            };
            outcome = sent;
            if let Some(forwarded) = outcome.forwarded.take() {
                head = Some(*forwarded);
            }
            resp
        }
    };
    listener.requests().count(resp.status().as_u16());
    match (logged, head) {
        (Some((log, began)), Some(request)) => {
            let local = listener.address();
            let exchange = (log, began, request, outcome, (peer, local));
            logged_response(resp, exchange)
        }
        _ => resp,
    }
}

/// Runs `dispatch` (a request's routing and forwarding), unless the request's body has not
/// been read whole (`ended` unset) `limit` after it began: then Envoy's 408 `request
/// timeout`, closing an HTTP/1 connection (`version`), and the dispatch is dropped. Once the
/// body has ended the limit no longer applies (Envoy disarms it when the request's last byte
/// went upstream).
async fn within_request_timeout<'c>(
    dispatch: impl std::future::Future<Output = (Response<ProxyBody>, Outcome<'c>)>,
    limit: Duration,
    ended: &AtomicBool,
    version: Version,
) -> (Response<ProxyBody>, Outcome<'c>) {
    let mut dispatch = std::pin::pin!(dispatch);
    tokio::select! {
        biased;
        done = &mut dispatch => return done,
        () = tokio::time::sleep(limit) => {}
    }
    if ended.load(Ordering::Relaxed) {
        return dispatch.await;
    }
    let mut resp = local_reply(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT.into());
    if version < Version::HTTP_2 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    (resp, Outcome::default())
}

/// Envoy's 408 body for a request not received whole within the request timeout.
const REQUEST_TIMEOUT: &str = "request timeout";

/// Where a request went and how it ended there, for the access log.
#[derive(Default)]
pub(crate) struct Outcome<'c> {
    /// The endpoint chosen, if any.
    upstream: Option<SocketAddr>,
    /// Its cluster.
    cluster: Option<&'c str>,
    /// What went wrong.
    flags: ResponseFlags,
    /// The `route_kri` of its route, for access log filters.
    route_kri: Option<&'c str>,
    /// The request's head as forwarded, after its route's edits, when its listener logs: what
    /// Envoy's access log reads (its router edits the downstream headers in place).
    forwarded: Option<Box<http::request::Parts>>,
}

/// A copy of a request's head for its log line (only for listeners that log).
fn request_head<B>(req: &Request<B>) -> http::request::Parts {
    head_copy(req.method(), req.uri(), req.version(), req.headers())
}

/// A copy of a request head's parts, for its log line.
fn head_copy(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &http::HeaderMap,
) -> http::request::Parts {
    let mut copy = Request::new(());
    *copy.method_mut() = method.clone();
    *copy.uri_mut() = uri.clone();
    *copy.version_mut() = version;
    *copy.headers_mut() = headers.clone();
    copy.into_parts().0
}

/// `resp` with a body that logs its exchange when done.
fn logged_response(
    resp: Response<ProxyBody>,
    (log, began, request, outcome, (peer, local)): (
        Arc<ListenerLog>,
        Began,
        http::request::Parts,
        Outcome<'_>,
        (SocketAddr, SocketAddr),
    ),
) -> Response<ProxyBody> {
    let received = request
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let (parts, body) = resp.into_parts();
    let exchange = Box::new(HyperExchange {
        log,
        began,
        request,
        status: parts.status.as_u16(),
        response: parts.headers.clone(),
        received,
        upstream: outcome.upstream,
        cluster: outcome.cluster.map(str::to_string),
        route_kri: outcome.route_kri.map(str::to_string),
        flags: outcome.flags,
        peer,
        local,
    });
    let body = MessageBody::Logged(Box::new(LoggedBody::new(body, exchange)));
    Response::from_parts(parts, body)
}

/// Routes one request by `routes` (a gateway's, or a sidecar's route table) and carries out
/// the decision: a local reply with the answering route's edits, or the request sent to its
/// cluster (a copy to the mirror) with the route's response edits; a gateway's responses say
/// `server: Kuma Gateway`. `ended`: the flag the request body sets once read whole (the
/// request timeout's), when there is one.
async fn route<'r, L: HttpListener>(
    req: Request<Incoming>,
    (listener, filters): (&L, Filters<'_>),
    routes: &'r HttpRoutes,
    (peer, ended): (SocketAddr, Option<&Arc<AtomicBool>>),
) -> (Response<ProxyBody>, Outcome<'r>) {
    let mut outcome = Outcome::default();
    let (mut parts, body) = req.into_parts();
    // Whether the response is to be compressed, if it can be (never a HEAD's).
    let gzip = routes.compression().map(|compression| {
        let accepted = compress::negotiate(compression, &mut parts.headers);
        (compression, accepted && parts.method != Method::HEAD)
    });
    let headers_held = held(filters, &parts.headers);
    let local = listener.address();
    let (routing, terms) = routes.decide(&mut parts, Downstream { peer, local });
    outcome.route_kri = terms.route_kri;
    let (filtered, delayed) = filtered(filters, headers_held, terms.limit).await;
    outcome.flags = delayed;
    let mut resp = match (filtered, routing) {
        (Some(reply), _) => reply,
        (None, Routing::Reply(reply, edits)) => {
            outcome.flags.insert(reply.flags);
            let mut resp = local_reply(reply.status, reply.message);
            if let Some(location) = reply.location {
                resp.headers_mut().insert(header::LOCATION, location);
            }
            if let Some(edits) = edits {
                edits.apply(resp.headers_mut());
            }
            resp
        }
        (
            None,
            Routing::Forward {
                target,
                timeout,
                retry,
                idle_timeout,
                response_headers,
                mirror,
                endpoint_host,
                hash,
                set_cookies,
            },
        ) => {
            let body = match mirror {
                Some(m) => mirror_request(&parts, body, m, listener.name()).await,
                None => RequestBody::Streamed(body),
            };
            let body = body.flagging(ended);
            let forwarded = listener.access_log().map(|_| {
                Box::new(head_copy(
                    &parts.method,
                    &parts.uri,
                    parts.version,
                    &parts.headers,
                ))
            });
            let retry = retry.filter(|p| retried(p, &parts.method, &parts.headers));
            let req = Request::from_parts(parts, body);
            let idle = listener.stream_idle(idle_timeout);
            let limits = (timeout, retry, idle);
            let hashed = (hash, set_cookies);
            let (mut resp, sent) = send_logged(req, target, limits, (endpoint_host, hashed)).await;
            let mut flags = sent.flags;
            flags.insert(delayed);
            outcome = Outcome {
                route_kri: outcome.route_kri,
                forwarded,
                flags,
                ..sent
            };
            response_headers.apply(resp.headers_mut());
            resp
        }
    };
    if let Some((compression, accepted)) = gzip {
        compress::respond(compression, &mut resp, accepted);
    }
    if routes.is_gateway() {
        resp.headers_mut().insert(header::SERVER, SERVER_NAME);
    }
    (resp, outcome)
}

/// The values of header `name` in `headers` that are text.
fn header_values<'a>(headers: &'a http::HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok())
}

/// Whether `policy` retries a request of `method` and `headers` at all (its
/// `retriable_request_headers`, `:method` read as the method; checked once the route edited
/// the headers, as Envoy's router makes its retry state after finalizing them).
fn retried(policy: &RetryPolicy, method: &Method, headers: &http::HeaderMap) -> bool {
    policy.allows_request(|name| {
        let is_method = name == ":method";
        let method = is_method.then_some(method.as_str());
        let fields = (!is_method).then(|| header_values(headers, name));
        method.into_iter().chain(fields.into_iter().flatten())
    })
}

/// A listener's filters with the connection as they read it.
type Filters<'a> = Option<(&'a HttpFilters, Option<&'a Peer>)>;

/// Which of `filters`' header matches a request's `headers` meet, read before its route
/// edits them.
fn held(filters: Filters<'_>, headers: &http::HeaderMap) -> HeadersHeld {
    filters.map_or(HeadersHeld::ALL, |(f, _)| f.headers_held(headers))
}

/// Runs `filters` for one request whose route has `limit`: the reply of a filter that
/// answers it, or `None` for a request that goes on.
async fn filtered(
    filters: Filters<'_>,
    held: HeadersHeld,
    limit: Option<(&RouteLimit, &HeaderEdits)>,
) -> (Option<Response<ProxyBody>>, ResponseFlags) {
    let Some((filters, who)) = filters else {
        return (None, ResponseFlags::default());
    };
    let (answer, flags) = filters.run((who, held), limit).await;
    let reply = answer.map(|answer| {
        let mut resp = local_reply(answer.status, answer.message.into());
        if let Some(headers) = answer.headers {
            headers.apply(resp.headers_mut());
        }
        resp
    });
    (reply, flags)
}

/// A request's limits: its response timeout, retry policy, and stream idle timeout with where
/// one that fires is counted.
type Limits<'a> = (
    Option<Duration>,
    Option<&'a RetryPolicy>,
    Option<(Duration, &'a Counter)>,
);

/// Sends one request to `cluster` (again as the route's `retry` policy asks) and counts the
/// outcome there: the upstream's response without hop-by-hop headers, or a 503 (504 when no
/// response head came within `timeout`, the route's or the cluster's; `None`: no limit)
/// naming the failure. With `endpoint_host`, Host becomes the hostname of the endpoint it
/// is sent to, when it has one. Under a stream idle timeout (`idle`, counted there when it
/// fires), a request whose body has ended that waits that long for the response head gets
/// 504 `stream timeout`, and a response body that stops for that long resets the stream.
/// The request has no hash (a mirror's: a consistent-hashing cluster picks at random).
pub async fn send(
    req: Request<RequestBody>,
    cluster: &ClusterRuntime,
    limits: Limits<'_>,
    endpoint_host: bool,
) -> Response<ProxyBody> {
    send_logged(req, cluster, limits, (endpoint_host, (None, None)))
        .await
        .0
}

/// [`send`], with where the request went and how it ended, for the access log; `hash`: the
/// request's by its route's hash policies, with the cookies they generated, which a
/// response from upstream carries once per try (before the route's response edits, as
/// Envoy's router appends them).
async fn send_logged<'c>(
    mut req: Request<RequestBody>,
    cluster: &'c ClusterRuntime,
    (timeout, retry, idle): Limits<'_>,
    (endpoint_host, (hash, set_cookies)): (bool, (Option<u64>, Option<SetCookies<'_>>)),
) -> (Response<ProxyBody>, Outcome<'c>) {
    let mut outcome = Outcome {
        cluster: Some(cluster.config.name.as_str()),
        ..Outcome::default()
    };
    let version = req.version();
    // Whether a body still streaming has ended, asked when the cluster's maximum stream
    // duration ends a try before its response head: Envoy answers 408, not 504, to a request
    // it has not received whole.
    let received = match cluster.config.http_timeouts.max_stream_duration {
        Some(_) => req.body_mut().end_flag(),
        None => None,
    };
    prepare_request(&mut req, cluster.is_h2());
    // A body still streaming moves while the head is awaited: only an ended one lets the
    // wait count as idle (a gap beside Envoy, which watches each body frame).
    let idle_wait =
        idle.filter(|_| req.body().is_end_stream() || matches!(req.body(), MessageBody::Held(_)));
    let mut upstream = Upstream {
        cluster,
        timeout,
        stream_end: None,
        endpoint_host,
        client_host: None,
    };
    let forwarded = super::forward((cluster, retry, hash), &mut upstream, req);
    let forwarded = match idle_wait {
        None => forwarded.await,
        Some((period, idled)) => match tokio::time::timeout(period, forwarded).await {
            Ok(forwarded) => forwarded,
            Err(_) => {
                idled.inc();
                return (reply(Reply::stream_timeout()), outcome);
            }
        },
    };
    let resp = match forwarded {
        Ok((mut resp, pool, tries)) => {
            outcome.upstream = Some(pool.address());
            if let Some((period, idled)) = idle {
                resp = resp.map(|body| body.idle_after(period, idled.clone()));
            }
            cluster.stats.requests.count(resp.status().as_u16());
            strip_hop_by_hop(resp.headers_mut());
            if let Some(cookies) = set_cookies {
                // Once per try, as Envoy's router asks its load balancer for the hash (and
                // the policies generate their cookies) at each.
                for value in (0..tries).flat_map(|_| cookies.values()) {
                    resp.headers_mut().append(header::SET_COOKIE, value);
                }
            }
            // The response goes out in the client's version, as Envoy's: hyper writes the
            // status line of the version it is given, so an HTTP/1.0 origin's answer would
            // reach HTTP/1.1 clients as `HTTP/1.0` (hyper itself answers HTTP/1.0 clients in
            // HTTP/1.0, and HTTP/2 has no status line).
            *resp.version_mut() = Version::HTTP_11;
            resp.map(ProxyBody::Streamed)
        }
        Err(failure) => {
            (outcome.flags, outcome.upstream) = crate::access_log::failure_flags(&failure);
            let mut resp = reply(Reply::of_failure(&failure, cluster));
            let unfinished = received.is_some_and(|ended| !ended.load(Ordering::Relaxed));
            if matches!(failure, UpstreamError::MaxStreamDuration(_)) && unfinished {
                *resp.status_mut() = StatusCode::REQUEST_TIMEOUT;
                // Envoy's connection manager closes an HTTP/1 connection whose request it
                // answered before reading it whole.
                if version < Version::HTTP_2 {
                    let close = HeaderValue::from_static("close");
                    resp.headers_mut().insert(header::CONNECTION, close);
                }
            }
            resp
        }
    };
    (resp, outcome)
}

/// The upstream side of the hyper codec, for [`super::forward`].
struct Upstream<'c> {
    cluster: &'c ClusterRuntime,
    /// The request's response timeout.
    timeout: Option<Duration>,
    /// When the next attempt's stream must have ended (its maximum stream duration).
    stream_end: Option<Instant>,
    /// Host becomes the hostname of the endpoint of each attempt (Envoy's
    /// `auto_host_rewrite`).
    endpoint_host: bool,
    /// The request's own Host (URI and header) once an attempt rewrote it, for an attempt
    /// to an endpoint without a hostname.
    client_host: Option<(Uri, Option<HeaderValue>)>,
}

impl UpstreamCodec for Upstream<'_> {
    type Request = Request<RequestBody>;
    type Conn = Checkout;
    type Answer = Response<UpstreamBody>;

    async fn checkout(
        &mut self,
        pool: &Arc<EndpointPool>,
    ) -> Result<(Checkout, bool), NoConnection> {
        self.cluster.checkout(pool).await
    }

    /// Sends `req` on `checkout`; the response body holds the request's unit of
    /// `max_requests` until it is dropped. A request hyper gives back was not written; once
    /// written, the body is gone and the request cannot be repeated.
    async fn attempt(
        &mut self,
        pool: &Arc<EndpointPool>,
        mut checkout: Checkout,
        mut req: Request<RequestBody>,
    ) -> Attempt<Request<RequestBody>, Response<UpstreamBody>> {
        let cluster = self.cluster;
        if self.endpoint_host {
            match (pool.hostname(), &self.client_host) {
                (Some(hostname), _) => {
                    let own = || (req.uri().clone(), req.headers().get(header::HOST).cloned());
                    self.client_host.get_or_insert_with(own);
                    set_host(&mut req, hostname);
                }
                (None, Some((uri, host))) => {
                    *req.uri_mut() = uri.clone();
                    if let Some(host) = host {
                        req.headers_mut().insert(header::HOST, host.clone());
                    }
                }
                (None, None) => {}
            }
        }
        let unit = match cluster.request_unit(cluster.stats.occupancy.clone(), pool) {
            Ok(unit) => unit,
            Err(overflow) => {
                if let Checkout::H1(exchange) = checkout {
                    exchange.give_back();
                }
                return Attempt::Failed(overflow);
            }
        };
        let timeout = self.timeout;
        let address = pool.address();
        let not_sent = |req| {
            let e = io::Error::other("connection closed before the request was sent");
            Attempt::NotDelivered(req, e)
        };
        let failed = |e: hyper::Error| Attempt::Failed(UpstreamError::of_exchange(address, e));
        // The try's maximum stream duration has one timer, which times the wait for the
        // head too (its limit then comes at the stream's end, or the request's first).
        let mut end = self
            .stream_end
            .map(|end| (end, Box::pin(tokio::time::sleep_until(end))));
        let timer = end.as_mut().map(|(_, timer)| timer);
        let sent = match &mut checkout {
            Checkout::H1(exchange) => {
                with_timeout(timeout, timer, exchange.sender.try_send_request(req)).await
            }
            Checkout::H2(sender) => {
                with_timeout(timeout, timer, sender.try_send_request(req)).await
            }
        };
        let h1 = matches!(checkout, Checkout::H1(_));
        match sent {
            None => Attempt::Failed(UpstreamError::Timeout(address)),
            Some(Ok(resp)) => match invalid(&resp, h1) {
                Some(why) => Attempt::Failed(UpstreamError::InvalidResponse(address, why.into())),
                None => {
                    // An HTTP/1.1 connection goes back to the pool once the body has ended.
                    let release = match checkout {
                        Checkout::H1(exchange) if keeps_alive(&resp) => Some(exchange),
                        _ => None,
                    };
                    let reached = &cluster.stats.rq_max_duration_reached;
                    Attempt::Answered(resp.map(|body| {
                        let body = UpstreamBody::new(body, release, unit);
                        match end {
                            Some((end, mut timer)) => {
                                timer.as_mut().reset(end);
                                body.ending_at(timer, reached.clone())
                            }
                            None => body,
                        }
                    }))
                }
            },
            Some(Err(mut e)) => match e.take_message() {
                Some(req) => {
                    if !h1 {
                        // Going away (GOAWAY): the next attempt opens a new connection.
                        pool.forget_h2();
                    }
                    not_sent(req)
                }
                None => failed(e.into_error()),
            },
        }
    }

    /// A request whose body is held, or has ended before it was sent (no body), is copied:
    /// method, target, version and header fields; a streamed body cannot be sent twice.
    fn copy(&self, req: &Request<RequestBody>) -> Option<Request<RequestBody>> {
        let body = match req.body() {
            MessageBody::Held(held) => MessageBody::Held(held.clone()),
            MessageBody::Streamed(b) if b.is_end_stream() => MessageBody::Held(Default::default()),
            // A streamed body is sent once (a flagged one is streamed); a compressed or logged
            // one is a response's.
            MessageBody::Streamed(_)
            | MessageBody::Flagged(_)
            | MessageBody::Gzip(_)
            | MessageBody::Logged(_) => return None,
        };
        let mut copy = Request::new(body);
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        Some(copy)
    }

    fn limit(&mut self) -> &mut Option<Duration> {
        &mut self.timeout
    }

    fn stream_end(&mut self) -> &mut Option<Instant> {
        &mut self.stream_end
    }

    fn status(resp: &Response<UpstreamBody>) -> u16 {
        resp.status().as_u16()
    }

    fn grpc_status(resp: &Response<UpstreamBody>) -> Option<u32> {
        let value = resp.headers().get("grpc-status")?;
        value.to_str().ok()?.parse().ok()
    }

    fn headers_ask_retry(resp: &Response<UpstreamBody>, policy: &RetryPolicy) -> bool {
        policy.retries_headers(|name| header_values(resp.headers(), name))
    }

    fn reset_interval(
        resp: &Response<UpstreamBody>,
        back_off: &RateLimitedBackOff,
    ) -> Option<Duration> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // Envoy reads a reset header's first value only.
        let first = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
        back_off.interval(first, now)
    }
}

/// Why a response hyper accepted is not valid HTTP for the proxy, if it is not: hyper takes
/// any three digits from 100 up (a status beyond 599 is not HTTP's either), and an HTTP/1
/// head up to one read over its buffer limit.
fn invalid(resp: &Response<Incoming>, h1: bool) -> Option<String> {
    let status = resp.status().as_u16();
    if status > 599 {
        Some(format!("status {status} outside 100-599"))
    } else if h1 && head_size("HTTP/1.1 200 OK\r\n".len(), resp.headers()) > MAX_HEAD {
        Some("response head larger than 60 KiB".to_string())
    } else {
        None
    }
}

/// Whether an HTTP/1 response leaves its connection open for another request (RFC 9112
/// §9.3): HTTP/1.1 without `Connection: close`.
fn keeps_alive<B>(resp: &Response<B>) -> bool {
    let close = |v: &HeaderValue| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    };
    resp.version() == Version::HTTP_11
        && !resp.headers().get_all(header::CONNECTION).iter().any(close)
}

/// `fut`'s output, or `None` when `limit` passes first: timed by `timer` when given (set to
/// the limit), else by a timer of its own.
async fn with_timeout<F: std::future::Future>(
    limit: Option<Duration>,
    timer: Option<&mut Pin<Box<Sleep>>>,
    fut: F,
) -> Option<F::Output> {
    match (limit, timer) {
        (Some(d), Some(timer)) => {
            timer.as_mut().reset(Instant::now() + d);
            tokio::select! {
                biased;
                out = fut => Some(out),
                () = timer.as_mut() => None,
            }
        }
        (Some(d), None) => tokio::time::timeout(d, fut).await.ok(),
        (None, _) => Some(fut.await),
    }
}

/// Checks a request hyper parsed, before any routing, as the byte path checks the heads it
/// reads (`bearing_http1::parse_request`): the answer to send when no path may forward it,
/// `None` when it goes on.
///
/// `CONNECT` is 403 (Bearing does not tunnel; Envoy's connection manager answers CONNECT with
/// an internal 403 unless CONNECT upgrades are configured). More than [`MAX_HEADERS`] fields
/// or an HTTP/1 head over [`MAX_HEAD`] is 431 (hyper's HTTP/1 parser counts fields itself,
/// HTTP/2 bounds the header list, and hyper's read buffer may take a head up to one read over
/// the limit). The host (RFC 9112 §3.2, RFC 9113 §8.3.1) is 400 when repeated, invalid
/// ([`valid_host`]), missing from HTTP/1.1 or HTTP/2 (HTTP/1.0 may omit it), or, over
/// HTTP/2, a `host` different from `:authority`. An HTTP/1 absolute-form target's authority
/// replaces the `Host` header (RFC 9112 §3.2.2: the target wins), so routing and the
/// upstream see the same host.
fn screen_request<B>(req: &mut Request<B>) -> Option<Response<ProxyBody>> {
    let h1 = req.version() < Version::HTTP_2;
    // An HTTP/1 connection closes after the refusal, as nginx's does.
    let refuse = |status, why: &str| {
        let mut resp = local_reply(status, why.to_string());
        if h1 {
            let close = HeaderValue::from_static("close");
            resp.headers_mut().insert(header::CONNECTION, close);
        }
        Some(resp)
    };
    if req.method() == Method::CONNECT {
        return refuse(StatusCode::FORBIDDEN, "CONNECT is not supported");
    }
    let too_large = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    if req.headers().len() > MAX_HEADERS {
        return refuse(too_large, "more than 100 header fields");
    }
    if h1 && http1_head_size(req) > MAX_HEAD {
        return refuse(too_large, "request head larger than 60 KiB");
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let (host, repeated) = (hosts.next(), hosts.next().is_some());
    let authority = req.uri().authority().map(|a| a.as_str());
    let problem = match (authority, host) {
        _ if repeated => Some("more than one host header"),
        (Some(a), _) if !valid_host(a.as_bytes()) => Some("invalid authority in the target"),
        (Some(a), Some(h)) if !h1 && !h.as_bytes().eq_ignore_ascii_case(a.as_bytes()) => {
            Some("host header differs from :authority")
        }
        (None, Some(h)) if !valid_host(h.as_bytes()) => Some("invalid host header"),
        (None, None) if req.version() > Version::HTTP_10 => Some("missing host header"),
        _ => None,
    };
    if let Some(why) = problem {
        return refuse(StatusCode::BAD_REQUEST, why);
    }
    let target_host = match (authority, host) {
        (Some(a), h) if h1 && h.is_none_or(|h| h != a) => HeaderValue::from_str(a).ok(),
        _ => None,
    };
    if let Some(target_host) = target_host {
        req.headers_mut().insert(header::HOST, target_host);
    }
    None
}

/// The size of an HTTP/1 request head as hyper read it, give or take the whitespace around
/// field values and the target's scheme.
fn http1_head_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + uri
            .authority()
            .map_or(0, |a| a.as_str().len() + "http://".len());
    let line = req.method().as_str().len() + target + " HTTP/1.1\r\n".len();
    head_size(line, req.headers())
}

/// The size of an HTTP/1 head with a start line of `line` bytes (its line end included) and
/// `headers`, give or take the whitespace around field values: what hyper's read buffer held,
/// which can run up to one read over its limit.
pub(crate) fn head_size(line: usize, headers: &HeaderMap) -> usize {
    let fields: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + ": \r\n".len())
        .sum();
    line + fields + "\r\n".len()
}

/// `reply` as a response: its text, its `location`, and `x-envoy-overloaded: true` when a
/// circuit breaker refused the request.
pub(crate) fn reply(reply: Reply) -> Response<ProxyBody> {
    let mut resp = local_reply(reply.status, reply.message);
    if let Some(location) = reply.location {
        resp.headers_mut().insert(header::LOCATION, location);
    }
    if reply.overloaded {
        let overloaded = HeaderValue::from_static("true");
        resp.headers_mut().insert("x-envoy-overloaded", overloaded);
    }
    resp
}

/// A short plain-text reply generated by the proxy.
pub fn local_reply(status: StatusCode, message: String) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::Held(Full::new(Bytes::from(message))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(LOCAL_REPLY_CONTENT_TYPE),
    );
    resp
}

/// Rewrites the Host of a request [`prepare_request`] prepared: HTTP/2's `:authority`
/// (the URI's), HTTP/1.1's `host` header.
fn set_host(req: &mut Request<RequestBody>, hostname: &HeaderValue) {
    if req.version() != Version::HTTP_2 {
        req.headers_mut().insert(header::HOST, hostname.clone());
        return;
    }
    let Some(authority) = hostname.to_str().ok().and_then(|h| h.parse().ok()) else {
        return;
    };
    let mut parts = req.uri().clone().into_parts();
    parts.authority = Some(authority);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// Makes a downstream request fit the upstream connection: hop-by-hop headers removed,
/// origin-form URI and `Host` for HTTP/1.1, absolute URI (`:authority`) for HTTP/2.
///
/// A GET or HEAD body of unknown length (an HTTP/2 request's DATA, a chunked upload) is
/// sent chunked: hyper's HTTP/1 client would otherwise send such a request without its body.
/// Envoy forwards a body whatever the method.
fn prepare_request(req: &mut Request<RequestBody>, upstream_h2: bool) {
    strip_hop_by_hop(req.headers_mut());
    if upstream_h2 {
        *req.version_mut() = Version::HTTP_2;
        if req.uri().authority().is_none() {
            let host = req.headers_mut().remove(header::HOST);
            let authority = host
                .as_ref()
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            if let Ok(uri) = Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query(pq)
                .build()
            {
                *req.uri_mut() = uri;
            }
        } else {
            req.headers_mut().remove(header::HOST);
        }
    } else {
        *req.version_mut() = Version::HTTP_11;
        if let Some(authority) = req.uri().authority().cloned() {
            if !req.headers().contains_key(header::HOST) {
                if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                    req.headers_mut().insert(header::HOST, v);
                }
            }
            let pq = req.uri().path_and_query().cloned();
            *req.uri_mut() = pq.map_or_else(|| Uri::from_static("/"), Uri::from);
        }
        let body = req.body();
        let unknown_length = !body.is_end_stream() && body.size_hint().exact().is_none();
        if unknown_length && matches!(*req.method(), Method::GET | Method::HEAD) {
            let chunked = HeaderValue::from_static("chunked");
            req.headers_mut().insert(header::TRANSFER_ENCODING, chunked);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;

    fn request(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::new(());
        *req.version_mut() = version;
        *req.uri_mut() = Uri::try_from(uri).unwrap();
        for (name, value) in headers {
            req.headers_mut().append(
                HeaderName::try_from(*name).unwrap(),
                HeaderValue::try_from(*value).unwrap(),
            );
        }
        req
    }

    /// The status `screen_request` refuses `req` with, if it does.
    fn refused(mut req: Request<()>) -> Option<u16> {
        screen_request(&mut req).map(|r| r.status().as_u16())
    }

    #[test]
    fn requests_no_path_forwards_are_refused_before_routing() {
        use Version as V;
        let host = [("host", "web")];
        assert_eq!(refused(request(V::HTTP_11, "/", &host)), None);
        let mut connect = request(V::HTTP_11, "web:443", &host);
        *connect.method_mut() = Method::CONNECT;
        assert_eq!(refused(connect), Some(403));
        for bad in [
            request(V::HTTP_11, "/", &[]),
            request(V::HTTP_11, "/", &[("host", "web"), ("host", "web")]),
            request(V::HTTP_11, "/", &[("host", "a.example/evil")]),
            request(V::HTTP_10, "/", &[("host", "a b")]),
            request(V::HTTP_11, "http://user@web/", &host),
            request(V::HTTP_2, "/", &[]),
            request(V::HTTP_2, "http://web/", &[("host", "other")]),
        ] {
            let described = format!("{:?} {} {:?}", bad.version(), bad.uri(), bad.headers());
            assert_eq!(refused(bad), Some(400), "{described}");
        }
        assert_eq!(refused(request(V::HTTP_10, "/", &[])), None);
        assert_eq!(
            refused(request(V::HTTP_2, "http://web/", &[("host", "WEB")])),
            None
        );
        let many: Vec<(String, &str)> =
            (0..=MAX_HEADERS).map(|i| (format!("x-{i}"), "1")).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        assert_eq!(refused(request(V::HTTP_2, "http://web/", &many)), Some(431));
        let pad = "p".repeat(MAX_HEAD);
        assert_eq!(
            refused(request(
                V::HTTP_11,
                "/",
                &[("host", "web"), ("x-pad", &pad)]
            )),
            Some(431)
        );
    }

    #[test]
    fn an_absolute_target_is_the_host() {
        let mut req = request(
            Version::HTTP_11,
            "http://target.example:8080/p",
            &[("host", "evil.example")],
        );
        assert!(screen_request(&mut req).is_none());
        assert_eq!(req.headers()[header::HOST], "target.example:8080");
        assert_eq!(req.headers().get_all(header::HOST).iter().count(), 1);
    }
}

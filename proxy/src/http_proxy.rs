//! The L7 path: HTTP/1.1 and HTTP/2 requests from downstream, forwarded to a cluster.

use bearing_http1::{connection_may_list_away, valid_host, MAX_HEAD, MAX_HEADERS};
use bearing_proxy_config::Protocol;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::Full;
use hyper::body::Incoming;

use crate::body::MessageBody;
use crate::runtime::ListenerRuntime;
use crate::upstream::{ClusterRuntime, RequestBody, UpstreamBody, UpstreamError};

/// A response body: streamed from upstream, or a short local reply.
pub type ProxyBody = MessageBody<UpstreamBody>;

/// Forwards one request through `listener`'s cluster and counts the outcome.
pub async fn forward(req: Request<Incoming>, listener: &ListenerRuntime) -> Response<ProxyBody> {
    let resp = match &listener.cluster {
        Some(cluster) => {
            send(
                req.map(RequestBody::Streamed),
                cluster,
                &listener.config.name,
            )
            .await
        }
        None => {
            let message = format!("listener {} has no cluster", listener.config.name);
            local_reply(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    };
    listener.stats.requests.count(resp.status().as_u16());
    resp
}

/// Sends one request to `cluster` and counts the outcome there: the upstream's response
/// without hop-by-hop headers, or a 503 (504 on the response timeout) naming the failure.
pub async fn send(
    mut req: Request<RequestBody>,
    cluster: &ClusterRuntime,
    listener: &str,
) -> Response<ProxyBody> {
    let upstream_h2 = matches!(cluster.config.protocol, Protocol::Http2 | Protocol::Grpc);
    prepare_request(&mut req, upstream_h2);
    match cluster.send_http(req).await {
        Ok(mut resp) => {
            cluster.stats.requests.count(resp.status().as_u16());
            strip_hop_by_hop(resp.headers_mut());
            resp.map(ProxyBody::Streamed)
        }
        Err(e) => {
            if let UpstreamError::Overflow(why) = &e {
                // Counted per cluster; a warning each would flood the log when overloaded.
                tracing::debug!(%listener, cluster = %cluster.config.name, "circuit breaker: {why}");
            } else {
                tracing::warn!(%listener, cluster = %cluster.config.name, "{e}");
            }
            let mut resp = local_reply(e.status(), e.to_string());
            if e.is_overflow() {
                resp.headers_mut()
                    .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
            }
            resp
        }
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
pub(crate) fn screen_request<B>(req: &mut Request<B>) -> Option<Response<ProxyBody>> {
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

/// The `content-type` of the proxy's own replies on every HTTP path: Envoy's local replies
/// say `text/plain`, without a charset, and a client comparing the two sees the same.
pub(crate) const LOCAL_REPLY_CONTENT_TYPE: &str = "text/plain";

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

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), besides `te`.
static HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers and those the `connection` header lists, but never one
/// [`connection_may_list_away`] keeps (framing, `Host`): the byte codec's rule; `te: trailers`
/// is kept because gRPC needs it end to end. A `Content-Length` sent as a list or repeated
/// (equal values: hyper refuses others) goes on as one value (RFC 9110 §8.6), so that a next
/// hop that reads lists differently cannot be desynchronised.
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
            .filter(|t| !t.eq_ignore_ascii_case("close") && connection_may_list_away(t))
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
mod tests {
    use super::*;

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

    #[test]
    fn repeated_lengths_go_on_as_one_value() {
        let mut h = HeaderMap::new();
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5, 5"));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        strip_hop_by_hop(&mut h);
        let lengths: Vec<_> = h.get_all(header::CONTENT_LENGTH).iter().collect();
        assert_eq!(lengths, ["5"]);
        let mut h = HeaderMap::new();
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("7"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h[header::CONTENT_LENGTH], "7");
    }

    #[test]
    fn strips_hop_by_hop_and_listed_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("close", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get(header::UPGRADE).is_none());
        assert!(h.get("x-private").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get("keep-alive").is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert!(h.get("x-kept").is_some());
        assert!(
            h.get("close").is_some(),
            "`close` is an option, not a header name"
        );

        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }
}

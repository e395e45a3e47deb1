//! One table of requests, each run through every codec: the HTTP/1.1 byte codec, hyper serving
//! HTTP/1.1, and hyper serving HTTP/2. Each case names what the upstream must receive (request
//! line, fields present and absent, body) or the local reply the client must get.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bearing_proxy_config::{Cluster, Direction, Listener, Protocol, ProxyConfig};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use http::header::{self, HeaderMap, HeaderValue};

use super::strip_hop_by_hop;
use crate::io::Counted;
use crate::runtime::Proxy;
use crate::transport::Admission;
use crate::workers::Workers;

/// Which listener a case's request goes to.
#[derive(Clone, Copy)]
enum To {
    /// A cluster whose one endpoint records each request and answers `200 ok`.
    Live,
    /// A cluster with no endpoints.
    NoEndpoints,
    /// A cluster whose one endpoint refuses connections.
    Refused,
}

/// What a case expects.
enum Expect {
    /// The upstream receives this request line, with these fields (name, value), without
    /// these, and this body; the client gets the upstream's 200.
    Upstream {
        line: &'static str,
        has: &'static [(&'static str, &'static str)],
        lacks: &'static [&'static str],
        body: &'static str,
    },
    /// The proxy answers itself with this status, its body containing this text.
    Reply(u16, &'static str),
}

/// One request and what must come of it.
struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
    to: To,
    /// Whether HTTP/2 can carry the request (connection-specific fields are malformed there).
    h2: bool,
    expect: Expect,
}

/// A GET of `path` with Host `web` to the live cluster, on every codec, answered `status`
/// with `body` (by the origin or the proxy).
fn answered_get(
    name: &'static str,
    path: &'static str,
    (status, body): (u16, &'static str),
) -> Case {
    Case {
        name,
        method: "GET",
        path,
        headers: &[("host", "web")],
        body: "",
        to: To::Live,
        h2: true,
        expect: Expect::Reply(status, body),
    }
}

const CASES: &[Case] = &[
    Case {
        name: "a plain request goes on with its fields",
        method: "GET",
        path: "/p?q=1",
        headers: &[("host", "web"), ("x-a", "1")],
        body: "",
        to: To::Live,
        h2: true,
        expect: Expect::Upstream {
            line: "GET /p?q=1 HTTP/1.1",
            has: &[("host", "web"), ("x-a", "1"), ("x-forwarded-proto", "http")],
            lacks: &[],
            body: "",
        },
    },
    Case {
        name: "a request id and scheme the client sent are kept",
        method: "GET",
        path: "/",
        headers: &[
            ("host", "web"),
            ("x-request-id", "client-id-1"),
            ("x-forwarded-proto", "https"),
        ],
        body: "",
        to: To::Live,
        h2: true,
        expect: Expect::Upstream {
            line: "GET / HTTP/1.1",
            has: &[
                ("x-request-id", "client-id-1"),
                ("x-forwarded-proto", "https"),
            ],
            lacks: &[],
            body: "",
        },
    },
    Case {
        name: "a body goes on with its length",
        method: "POST",
        path: "/up",
        headers: &[("host", "web"), ("content-length", "5")],
        body: "hello",
        to: To::Live,
        h2: true,
        expect: Expect::Upstream {
            line: "POST /up HTTP/1.1",
            has: &[("host", "web"), ("content-length", "5")],
            lacks: &[],
            body: "hello",
        },
    },
    Case {
        name: "connection cannot list away host or framing, only other fields",
        method: "POST",
        path: "/p",
        headers: &[
            ("host", "web"),
            ("content-length", "2"),
            ("connection", "host, content-length, x-private"),
            ("x-private", "1"),
        ],
        body: "ok",
        to: To::Live,
        h2: false,
        expect: Expect::Upstream {
            line: "POST /p HTTP/1.1",
            has: &[("host", "web"), ("content-length", "2")],
            lacks: &["x-private", "connection"],
            body: "ok",
        },
    },
    Case {
        name: "hop-by-hop fields are removed, te: trailers kept",
        method: "GET",
        path: "/",
        headers: &[
            ("host", "web"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
        ],
        body: "",
        to: To::Live,
        h2: false,
        expect: Expect::Upstream {
            line: "GET / HTTP/1.1",
            has: &[("host", "web"), ("te", "trailers")],
            lacks: &["keep-alive", "proxy-connection"],
            body: "",
        },
    },
    Case {
        name: "te: trailers passes HTTP/2 too",
        method: "GET",
        path: "/",
        headers: &[("host", "web"), ("te", "trailers")],
        body: "",
        to: To::Live,
        h2: true,
        expect: Expect::Upstream {
            line: "GET / HTTP/1.1",
            has: &[("host", "web"), ("te", "trailers")],
            lacks: &[],
            body: "",
        },
    },
    Case {
        name: "CONNECT is refused",
        method: "CONNECT",
        path: "web:443",
        headers: &[("host", "web:443")],
        body: "",
        to: To::Live,
        h2: false,
        expect: Expect::Reply(403, "CONNECT"),
    },
    Case {
        name: "HTTP/1.1 without host is refused",
        method: "GET",
        path: "/",
        headers: &[],
        body: "",
        to: To::Live,
        h2: false,
        expect: Expect::Reply(400, "host"),
    },
    Case {
        name: "an invalid host is refused",
        method: "GET",
        path: "/",
        headers: &[("host", "a.example/evil")],
        body: "",
        to: To::Live,
        h2: false,
        expect: Expect::Reply(400, "host"),
    },
    Case {
        name: "a cluster without endpoints answers Envoy's 503",
        method: "GET",
        path: "/",
        headers: &[("host", "web")],
        body: "",
        to: To::NoEndpoints,
        h2: true,
        expect: Expect::Reply(503, "no healthy upstream"),
    },
    Case {
        name: "a refused endpoint answers a 503 naming the connect failure",
        method: "GET",
        path: "/",
        headers: &[("host", "web")],
        body: "",
        to: To::Refused,
        h2: true,
        expect: Expect::Reply(503, "upstream connect error"),
    },
];

/// The codecs every case runs through.
#[derive(Clone, Copy, Debug)]
enum Codec {
    /// The byte codec (`serve_http`, HTTP/1.1 carried as bytes).
    Bytes,
    /// hyper serving HTTP/1.1 (what the byte codec hands over).
    HyperH1,
    /// hyper serving HTTP/2 (prior knowledge).
    HyperH2,
}

/// A request the fake upstream received: its head and body.
type Received = (String, String);

/// An upstream that sends each request it reads (head and `content-length` body) to the
/// returned channel and answers `200 ok`, keeping the connection.
async fn recording_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = read_head(&mut s, &mut buf).await else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let length = field(&head, "content-length").map_or(0, |v| v.parse().unwrap());
                    while buf.len() < end + length {
                        if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                            return;
                        }
                    }
                    let body = String::from_utf8_lossy(&buf[end..end + length]).to_string();
                    buf.drain(..end + length);
                    let _ = tx.send((head, body));
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (address, rx)
}

/// Reads until `buf` holds a whole head; its length with the empty line.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        if s.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

/// The value of the field `name` in a head, if present.
fn field<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    fields(head)
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// The fields of a head, names as sent.
fn fields(head: &str) -> impl Iterator<Item = (&str, &str)> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n, v.trim()))
}

/// Whether `id` is a UUID v4 in lowercase hex (RFC 9562 §5.4).
fn is_uuid_v4(id: &str) -> bool {
    let b = id.as_bytes();
    let hex = |c: &u8| c.is_ascii_digit() || (b'a'..=b'f').contains(c);
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => hex(c),
        })
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

/// A sidecar config of one listener per [`To`], each to its own cluster.
fn config(live: SocketAddr, refused: SocketAddr) -> Arc<ProxyConfig> {
    let endpoint = crate::upstream::plain_endpoint;
    let clusters = [
        ("live", vec![endpoint(live)]),
        ("none", vec![]),
        ("refused", vec![endpoint(refused)]),
    ]
    .map(|(name, endpoints)| {
        let cluster = Cluster {
            endpoints,
            request_timeout: Some(Duration::from_secs(5)),
            ..crate::upstream::test_cluster(name)
        };
        (name.to_string(), cluster)
    });
    let listeners = clusters
        .iter()
        .enumerate()
        .map(|(i, (name, _))| Listener {
            cluster: name.clone(),
            service: name.clone(),
            bind: false,
            ..Listener::new(
                format!("outbound:{name}"),
                listener_address(i),
                Direction::Outbound,
                Protocol::Http,
            )
        })
        .collect();
    Arc::new(ProxyConfig {
        version: "1".into(),
        source: "test".into(),
        identity: bearing_proxy_config::ProxyIdentity {
            name: "web".into(),
            mesh: "default".into(),
            proxy_type: "dataplane".into(),
            admin_port: None,
        },
        listeners,
        clusters: clusters.into_iter().collect(),
        transparent_proxy: None,
        dns: Vec::new(),
        mtls: Default::default(),
        kuma_endpoints: Default::default(),
    })
}

/// The address of the `i`-th listener of [`config`] (virtual: looked up, never bound).
fn listener_address(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 1000 + i as u16))
}

/// A connected pair: the proxy's side (plain TCP, counted as the runtime's are) and the
/// client's.
async fn connection() -> (Counted<TcpStream>, TcpStream, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, peer) = listener.accept().await.unwrap();
    let server = Counted::new(server, Default::default(), Default::default());
    (server, client, peer)
}

/// Sends the case's request as HTTP/1.1 bytes; the response's status and body.
async fn send_h1(mut client: TcpStream, case: &Case) -> (u16, String) {
    let mut request = format!("{} {} HTTP/1.1\r\n", case.method, case.path);
    for (name, value) in case.headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(case.body);
    client.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let end = read_head(&mut client, &mut buf)
        .await
        .expect("a response head");
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head[9..12].parse().unwrap();
    let length: usize = field(&head, "content-length").map_or(0, |v| v.parse().unwrap());
    while buf.len() < end + length {
        assert!(
            client.read_buf(&mut buf).await.unwrap() > 0,
            "body cut short"
        );
    }
    (
        status,
        String::from_utf8_lossy(&buf[end..end + length]).to_string(),
    )
}

/// Sends the case's request over HTTP/2 (its `host` as `:authority`); the response's status
/// and body.
async fn send_h2(client: TcpStream, case: &Case) -> (u16, String) {
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(client),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let host = case.headers.iter().find(|(n, _)| *n == "host");
    let uri = format!("http://{}{}", host.map_or("", |(_, v)| v), case.path);
    let mut req = http::Request::builder().method(case.method).uri(uri);
    for (name, value) in case.headers.iter().filter(|(n, _)| *n != "host") {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::from(case.body))).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).to_string())
}

/// A new connection to the `i`-th listener of [`config`], served through `codec`: the
/// client's side and the task serving it.
async fn open(
    proxy: &Arc<Proxy>,
    codec: Codec,
    i: usize,
) -> (TcpStream, tokio::task::JoinHandle<()>) {
    let listener = proxy.snapshot().listener(&listener_address(i)).cloned();
    let listener = listener.expect("the listener");
    let (server, client, peer) = connection().await;
    let p = proxy.clone();
    let serving = tokio::spawn(async move {
        match codec {
            Codec::Bytes => {
                p.serve_http(server, listener, peer, Admission::Plaintext)
                    .await
            }
            _ => {
                p.serve_hyper(server, listener, peer, Admission::Plaintext, false)
                    .await
            }
        }
    });
    (client, serving)
}

/// Sends the case's request to its listener through `codec` on a new connection; the
/// response's status and body.
async fn ask(proxy: &Arc<Proxy>, codec: Codec, case: &Case) -> (u16, String) {
    let (client, serving) = open(proxy, codec, case.to as usize).await;
    let answer = match codec {
        Codec::HyperH2 => send_h2(client, case).await,
        _ => send_h1(client, case).await,
    };
    serving.abort();
    answer
}

#[tokio::test]
async fn every_case_comes_out_the_same_through_every_codec() {
    let (live, mut received) = recording_upstream().await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = closed.local_addr().unwrap();
    drop(closed);
    let proxy = Arc::new(Proxy::new(Workers::start(1, false).unwrap()));
    proxy.apply(config(live, refused));
    let mut failures = Vec::new();
    for case in CASES {
        for codec in [Codec::Bytes, Codec::HyperH1, Codec::HyperH2] {
            if matches!(codec, Codec::HyperH2) && !case.h2 {
                continue;
            }
            let answer = ask(&proxy, codec, case).await;
            let got = match &case.expect {
                Expect::Reply(status, text) => {
                    let ok = answer.0 == *status && answer.1.contains(text);
                    (!ok).then(|| format!("answered {answer:?}, expected {status} with {text:?}"))
                }
                Expect::Upstream {
                    line,
                    has,
                    lacks,
                    body,
                } => {
                    let sent = tokio::time::timeout(Duration::from_secs(5), received.recv()).await;
                    match sent {
                        Ok(Some((head, sent_body))) => {
                            let mut wrong = Vec::new();
                            if !head.starts_with(&format!("{line}\r\n")) {
                                wrong.push(format!("request line of {head:?}"));
                            }
                            for (name, value) in *has {
                                let all: Vec<_> = fields(&head)
                                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                                    .collect();
                                if all.len() != 1 || all[0].1 != *value {
                                    wrong.push(format!("{name}: {all:?}"));
                                }
                            }
                            for name in *lacks {
                                if field(&head, name).is_some() {
                                    wrong.push(format!("{name} present"));
                                }
                            }
                            let ids: Vec<_> = fields(&head)
                                .filter(|(n, _)| n.eq_ignore_ascii_case("x-request-id"))
                                .collect();
                            let generated = !case.headers.iter().any(|(n, _)| *n == "x-request-id");
                            if generated && !(ids.len() == 1 && is_uuid_v4(ids[0].1)) {
                                wrong.push(format!("x-request-id {ids:?}, not one UUID v4"));
                            }
                            if sent_body != *body {
                                wrong.push(format!("body {sent_body:?}"));
                            }
                            if answer != (200, "ok".to_string()) {
                                wrong.push(format!("answered {answer:?}"));
                            }
                            (!wrong.is_empty()).then(|| format!("{wrong:?} in {head:?}"))
                        }
                        _ => Some(format!("nothing reached the upstream; answered {answer:?}")),
                    }
                }
            };
            if let Some(why) = got {
                failures.push(format!("{} ({codec:?}): {why}", case.name));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
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

/// Over TLS the scheme is `https`, on both codecs' forms of a request, and each request gets
/// an id of its own.
#[test]
fn a_tls_downstream_says_https_and_each_request_gets_its_own_id() {
    let raw = b"GET / HTTP/1.1\r\nHost: web\r\n\r\n";
    let mut out = Vec::new();
    let head = bearing_http1::parse_request(raw, &mut out)
        .unwrap()
        .unwrap();
    super::add_request_fields(&mut out, &head, true);
    let written = String::from_utf8(out).unwrap();
    assert!(written.ends_with("\r\n\r\n"), "{written:?}");
    assert_eq!(field(&written, "x-forwarded-proto"), Some("https"));
    let id = field(&written, "x-request-id").unwrap();
    assert!(is_uuid_v4(id), "{id}");
    let mut headers = HeaderMap::new();
    super::add_request_headers(&mut headers, true);
    assert_eq!(headers["x-forwarded-proto"], "https");
    let other = headers["x-request-id"].to_str().unwrap();
    assert!(is_uuid_v4(other) && other != id, "{other}");
}

/// A listener whose route table sends `/fast` and `/slow` to one cluster with different
/// timeouts: through every codec, an origin that never answers gets each request a 504 with
/// Envoy's text at its own route's timeout, not the other route's nor the cluster's.
#[tokio::test]
async fn each_route_times_out_at_its_own_timeout_through_every_codec() {
    use bearing_proxy_config::{HttpRoute, RouteTable, VirtualHost};
    // Reads requests and never answers, holding every connection open.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = silent.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = silent.accept().await.unwrap();
            tokio::spawn(async move {
                let mut sink = [0u8; 1024];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    let route = |prefix: &str, timeout: Duration| {
        HttpRoute::prefix_to(
            format!("route {prefix}"),
            prefix,
            "live",
            None,
            Some(timeout),
        )
    };
    let mut config = (*config(origin, origin)).clone();
    config.clusters.get_mut("live").unwrap().request_timeout = Some(Duration::from_secs(30));
    config.listeners[0].routes = Some(RouteTable {
        name: "timeouts".into(),
        virtual_hosts: vec![VirtualHost {
            name: "web".into(),
            domains: vec!["*".into()],
            routes: vec![
                route("/fast", Duration::from_millis(300)),
                route("/slow", Duration::from_millis(1500)),
            ],
        }],
    });
    let proxy = Arc::new(Proxy::new(Workers::start(1, false).unwrap()));
    proxy.apply(Arc::new(config));
    let table = [
        ("/fast", Duration::from_millis(300)),
        ("/slow", Duration::from_millis(1500)),
    ];
    let mut failures = Vec::new();
    for (path, timeout) in table {
        for codec in [Codec::Bytes, Codec::HyperH1, Codec::HyperH2] {
            let case = answered_get("timed", path, (504, "upstream request timeout"));
            let started = tokio::time::Instant::now();
            let answer = ask(&proxy, codec, &case).await;
            let took = started.elapsed();
            // Generous above (a loaded machine), strict below: never before the route's own.
            let on_time = took >= timeout && took < timeout + Duration::from_millis(1000);
            if answer != (504, "upstream request timeout".to_string()) || !on_time {
                failures.push(format!("{path} ({codec:?}): {answer:?} after {took:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A route rewriting Host to the endpoint's hostname (Envoy's `auto_host_rewrite`), through
/// every codec: round robin over two endpoints of one cluster, the upstream sees Host become
/// the hostname of the endpoint each request went to, and kept where the endpoint has none.
#[tokio::test]
async fn a_route_rewrites_host_to_the_chosen_endpoints_hostname_through_every_codec() {
    use bearing_proxy_config::{HttpRoute, Rewrite, RouteTable, VirtualHost};
    let (live, mut received) = recording_upstream().await;
    let mut config = (*config(live, live)).clone();
    let named = bearing_proxy_config::Endpoint {
        hostname: Some("origin.example".into()),
        ..crate::upstream::plain_endpoint(live)
    };
    let cluster = config.clusters.get_mut("live").unwrap();
    cluster.endpoints = vec![named, crate::upstream::plain_endpoint(live)];
    let rewrite = Rewrite {
        host_to_backend_hostname: true,
        ..Rewrite::default()
    };
    config.listeners[0].routes = Some(RouteTable {
        name: "external".into(),
        virtual_hosts: vec![VirtualHost {
            name: "external".into(),
            domains: vec!["*".into()],
            routes: vec![HttpRoute::prefix_to(
                "route /".into(),
                "/",
                "live",
                Some(rewrite),
                None,
            )],
        }],
    });
    let proxy = Arc::new(Proxy::new(Workers::start(1, false).unwrap()));
    proxy.apply(Arc::new(config));
    let case = Case {
        name: "rewritten",
        method: "GET",
        path: "/x",
        headers: &[("host", "web")],
        body: "",
        to: To::Live,
        h2: true,
        expect: Expect::Reply(200, "ok"),
    };
    let mut failures = Vec::new();
    for codec in [Codec::Bytes, Codec::HyperH1, Codec::HyperH2] {
        let mut hosts = Vec::new();
        for _ in 0..2 {
            let answer = ask(&proxy, codec, &case).await;
            let sent = tokio::time::timeout(Duration::from_secs(5), received.recv()).await;
            let head = match sent {
                Ok(Some((head, _))) => head,
                _ => String::new(),
            };
            let host: Vec<_> = fields(&head)
                .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
                .map(|(_, v)| v)
                .collect();
            hosts.push(format!("{} {host:?}", answer.0));
        }
        hosts.sort();
        let want = [r#"200 ["origin.example"]"#, r#"200 ["web"]"#];
        if hosts != want {
            failures.push(format!("{codec:?}: {hosts:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// An upstream that answers the requests it reads by `script` in turn (status, then the
/// next, starting over at the end), counting them in `seen`, keeping the connection.
async fn scripted_upstream(
    script: &'static [u16],
    seen: Arc<std::sync::atomic::AtomicUsize>,
) -> SocketAddr {
    use std::sync::atomic::Ordering;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(end) = read_head(&mut s, &mut buf).await {
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let length = field(&head, "content-length").map_or(0, |v| v.parse().unwrap());
                    while buf.len() < end + length {
                        if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                            return;
                        }
                    }
                    buf.drain(..end + length);
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    let status = script[n % script.len()];
                    let answer = format!(
                        "HTTP/1.1 {status} S\r\ncontent-length: 1\r\n\r\n{}",
                        status / 100
                    );
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

/// Kuma's default MeshRetry (`gateway-error,connect-failure,refused-stream`, 5 retries, 25 ms
/// back-off up to 250 ms), with a per-try timeout.
fn kuma_default_retry(per_try: Duration) -> bearing_proxy_config::RetryPolicy {
    bearing_proxy_config::RetryPolicy {
        per_try_timeout: Some(per_try),
        ..bearing_proxy_config::RetryPolicy::kuma_default_http()
    }
}

/// A cluster of a refusing and a live endpoint, through every codec: without a retry policy
/// each request goes to the one endpoint the round robin gives it, so of four requests two
/// get the 503 of a connect failure, as from Envoy's router, and the live endpoint sees two;
/// under Kuma's default policy (`connect-failure`) a request that met the refusing endpoint
/// goes again to the next one, and all four are answered by the live endpoint.
#[tokio::test]
async fn a_connect_failure_moves_to_the_next_endpoint_only_under_a_retry_policy() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let seen = Arc::new(AtomicUsize::new(0));
    let live = scripted_upstream(&[200], seen.clone()).await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = closed.local_addr().unwrap();
    drop(closed);
    let mut config = (*config(live, live)).clone();
    let cluster = config.clusters.get_mut("live").unwrap();
    cluster
        .endpoints
        .insert(0, crate::upstream::plain_endpoint(refused));
    let proxy = Arc::new(Proxy::new(Workers::start(1, false).unwrap()));
    let mut failures = Vec::new();
    for retry in [None, Some(kuma_default_retry(Duration::from_secs(2)))] {
        config.listeners[0].retry = retry.clone();
        proxy.apply(Arc::new(config.clone()));
        for codec in [Codec::Bytes, Codec::HyperH1, Codec::HyperH2] {
            seen.store(0, Ordering::SeqCst);
            let mut answers = Vec::new();
            for _ in 0..4 {
                let case = answered_get("round robin", "/", (200, "2"));
                answers.push(ask(&proxy, codec, &case).await.0);
            }
            answers.sort_unstable();
            let wanted: &[u16] = match retry {
                None => &[200, 200, 503, 503],
                Some(_) => &[200, 200, 200, 200],
            };
            let reached = seen.load(Ordering::SeqCst);
            if answers != wanted || reached != wanted.iter().filter(|s| **s == 200).count() {
                let policy = retry.is_some();
                failures.push(format!(
                    "policy {policy} ({codec:?}): {answers:?}, {reached} reached the origin"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// MeshRetry's `OmitPreviousHosts` through every codec: two endpoints answering 503 and a
/// policy of three retries. Round robin alone alternates (each endpoint tried twice); with
/// `previous_hosts` (one more pick, Envoy's default) the first retry goes to the endpoint
/// not tried, and the later ones, whose two picks both meet tried endpoints, to the last
/// pick: one endpoint once, the other three times, as Envoy's load balancer picks. With
/// `omit_host_metadata` rejecting the second endpoint's tags, and two more picks, every
/// retry goes to the first (the first attempt is never filtered: here the round robin's
/// first pick, the first endpoint).
#[tokio::test]
async fn a_retry_host_predicate_moves_retries_off_the_endpoints_it_rejects() {
    use bearing_proxy_config::HostSelection;
    let (mut config, seen) = failing_pair(|tagged| {
        tagged.tags.insert("version".into(), "canary".into());
    })
    .await;
    let policy = |host_selection: Option<HostSelection>| bearing_proxy_config::RetryPolicy {
        host_selection: host_selection.map(Box::new),
        ..three_quick_retries_of_5xx()
    };
    let previous = HostSelection {
        omit_previous: true,
        max_attempts: 1,
        ..HostSelection::default()
    };
    let canary = HostSelection {
        omit_tags: vec![[("version".to_string(), "canary".to_string())].into()],
        max_attempts: 2,
        ..HostSelection::default()
    };
    let mut failures = Vec::new();
    for (selection, wanted) in [
        (None, [2, 2]),
        (Some(previous), [1, 3]),
        (Some(canary), [4, 0]),
    ] {
        config.listeners[0].retry = Some(policy(selection.clone()));
        for (codec, status, tries) in tries_per_codec(&config, &seen).await {
            if status != 503 || tries != wanted {
                failures.push(format!(
                    "{selection:?} ({codec:?}): {status}, tries {tries:?}, wanted {wanted:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A config whose cluster `live` has two upstreams answering 503, the second's endpoint as
/// `second` edits it, and the tries each counted.
async fn failing_pair(
    second: impl FnOnce(&mut bearing_proxy_config::Endpoint),
) -> (ProxyConfig, [Arc<std::sync::atomic::AtomicUsize>; 2]) {
    use std::sync::atomic::AtomicUsize;
    let seen = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let a = scripted_upstream(&[503], seen[0].clone()).await;
    let b = scripted_upstream(&[503], seen[1].clone()).await;
    let mut config = (*config(a, a)).clone();
    let mut endpoint = crate::upstream::plain_endpoint(b);
    second(&mut endpoint);
    if let Some(live) = config.clusters.get_mut("live") {
        live.endpoints.push(endpoint);
    }
    (config, seen)
}

/// Three retries of a 5xx, backing off 1 to 2 ms.
fn three_quick_retries_of_5xx() -> bearing_proxy_config::RetryPolicy {
    bearing_proxy_config::RetryPolicy {
        on: bearing_proxy_config::RetryOn {
            server_error: true,
            ..Default::default()
        },
        num_retries: 3,
        back_off_base: Duration::from_millis(1),
        back_off_max: Duration::from_millis(2),
        ..kuma_default_retry(Duration::from_secs(2))
    }
}

/// A request answered 503 through each codec with `config`, each on a fresh proxy (its
/// round robin starting at the first endpoint): the codec, the status and the tries each of
/// the two upstreams counted in `seen`.
async fn tries_per_codec(
    config: &ProxyConfig,
    seen: &[Arc<std::sync::atomic::AtomicUsize>; 2],
) -> Vec<(Codec, u16, [usize; 2])> {
    use std::sync::atomic::Ordering;
    let mut out = Vec::new();
    for codec in [Codec::Bytes, Codec::HyperH1, Codec::HyperH2] {
        let proxy = Arc::new(Proxy::new(Workers::start(1, false).unwrap()));
        proxy.apply(Arc::new(config.clone()));
        seen.iter().for_each(|s| s.store(0, Ordering::SeqCst));
        let case = answered_get("retried", "/", (503, "5"));
        let (status, _) = ask(&proxy, codec, &case).await;
        out.push((
            codec,
            status,
            seen.each_ref().map(|s| s.load(Ordering::SeqCst)),
        ));
    }
    out
}

/// MeshRetry's `OmitPreviousPriorities` through every codec: a P0 and a P1 endpoint answering
/// 503, a policy of three retries. Without it every attempt stays on P0; with
/// `update_frequency` 1 they alternate (P0, P1, then both tried: start over at P0, P1); with
/// 2 the first two keep P0 and the next two leave it, as Envoy's retry priority does.
#[tokio::test]
async fn previous_priorities_move_retries_off_the_levels_tried() {
    use std::num::NonZeroU32;
    let (mut config, seen) = failing_pair(|lower| lower.priority = 1).await;
    let policy = |frequency: Option<u32>| bearing_proxy_config::RetryPolicy {
        previous_priorities: frequency.and_then(NonZeroU32::new),
        ..three_quick_retries_of_5xx()
    };
    let mut failures = Vec::new();
    for (frequency, wanted) in [(None, [4, 0]), (Some(1), [2, 2]), (Some(2), [2, 2])] {
        config.listeners[0].retry = Some(policy(frequency));
        for (codec, status, tries) in tries_per_codec(&config, &seen).await {
            if status != 503 || tries != wanted {
                failures.push(format!(
                    "{frequency:?} ({codec:?}): {status}, tries {tries:?}, wanted {wanted:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A listener whose one route has Kuma's default retry policy, through every codec: an
/// origin answering 503,
/// 502, then 200 gets each request three times and the client the 200 (a POST's held body
/// too, on the byte codec); a 500 is not a gateway error and is relayed at once; without the
/// policy the first 503 is relayed. An origin that never answers gets the request once per
/// try (six in all), each cut at the per-try timeout, then the client gets the 504.
#[tokio::test]
async fn a_retry_policy_sends_again_what_it_names_through_every_codec() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let seen = Arc::new(AtomicUsize::new(0));
    let flaky = scripted_upstream(&[503, 502, 200], seen.clone()).await;
    let failing_seen = Arc::new(AtomicUsize::new(0));
    let failing = scripted_upstream(&[500], failing_seen.clone()).await;
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_address = silent.local_addr().unwrap();
    let silent_seen = Arc::new(AtomicUsize::new(0));
    let counter = silent_seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = silent.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while read_head(&mut s, &mut buf).await.is_some() {
                    counter.fetch_add(1, Ordering::SeqCst);
                    buf.clear();
                }
            });
        }
    });
    let policy = kuma_default_retry(Duration::from_millis(200));
    let with = |config: &mut ProxyConfig, name: &str, address, retry: bool| {
        let c = config.clusters.get_mut(name).unwrap();
        c.endpoints[0].address = address;
        let listener = format!("outbound:{name}");
        let l = config.listeners.iter_mut().find(|l| l.name == listener);
        l.unwrap().retry = retry.then(|| policy.clone());
    };
    let mut config = (*config(flaky, failing)).clone();
    with(&mut config, "live", flaky, true);
    with(&mut config, "refused", failing, true);
    let proxy = Arc::new(Proxy::new(Workers::start(1, false).unwrap()));
    proxy.apply(Arc::new(config.clone()));
    let get = |to| Case {
        name: "retried",
        method: "GET",
        path: "/",
        headers: &[("host", "web")],
        body: "",
        to,
        h2: true,
        expect: Expect::Reply(200, "2"),
    };
    let mut failures = Vec::new();
    for codec in [Codec::Bytes, Codec::HyperH1, Codec::HyperH2] {
        let before = seen.load(Ordering::SeqCst);
        let answer = ask(&proxy, codec, &get(To::Live)).await;
        let tries = seen.load(Ordering::SeqCst) - before;
        if answer != (200, "2".into()) || tries != 3 {
            failures.push(format!("GET ({codec:?}): {answer:?} after {tries} tries"));
        }
        let before = failing_seen.load(Ordering::SeqCst);
        let answer = ask(&proxy, codec, &get(To::Refused)).await;
        let tries = failing_seen.load(Ordering::SeqCst) - before;
        if answer != (500, "5".into()) || tries != 1 {
            failures.push(format!("500 ({codec:?}): {answer:?} after {tries} tries"));
        }
    }
    let post = Case {
        method: "POST",
        headers: &[("host", "web"), ("content-length", "5")],
        body: "hello",
        ..get(To::Live)
    };
    let before = seen.load(Ordering::SeqCst);
    let answer = ask(&proxy, Codec::Bytes, &post).await;
    let tries = seen.load(Ordering::SeqCst) - before;
    if answer != (200, "2".into()) || tries != 3 {
        failures.push(format!("POST (Bytes): {answer:?} after {tries} tries"));
    }

    // Without the policy, the first answer stands.
    with(&mut config, "live", flaky, false);
    proxy.apply(Arc::new(config.clone()));
    seen.store(0, Ordering::SeqCst);
    let answer = ask(&proxy, Codec::Bytes, &get(To::Live)).await;
    if answer != (503, "5".into()) || seen.load(Ordering::SeqCst) != 1 {
        failures.push(format!("without a policy: {answer:?}"));
    }

    // Each try cut at the per-try timeout; then the 504.
    with(&mut config, "live", silent_address, true);
    proxy.apply(Arc::new(config));
    for codec in [Codec::Bytes, Codec::HyperH2] {
        let before = silent_seen.load(Ordering::SeqCst);
        let started = tokio::time::Instant::now();
        let answer = ask(&proxy, codec, &get(To::Live)).await;
        let took = started.elapsed();
        let tries = silent_seen.load(Ordering::SeqCst) - before;
        let on_time = took >= Duration::from_millis(1200) && took < Duration::from_secs(4);
        if answer != (504, "upstream request timeout".into()) || tries != 6 || !on_time {
            failures.push(format!(
                "silent ({codec:?}): {answer:?}, {tries} tries in {took:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Two routes of one table to one cluster with different retry policies (a MeshRetry that
/// targets one MeshHTTPRoute), through every codec: an origin answering 503, 503, then 200
/// gets a `/patient` request three times (up to 5 retries) and the client the 200; a `/once`
/// request twice (1 retry on `5xx`), the client the second 503; a `/never` request (no
/// policy) once, the first 503.
#[tokio::test]
async fn routes_to_one_cluster_retry_by_their_own_policies_through_every_codec() {
    use bearing_proxy_config::{HttpRoute, RetryOn, RouteAction, RouteTable, VirtualHost};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let seen = Arc::new(AtomicUsize::new(0));
    let origin = scripted_upstream(&[503, 503, 200], seen.clone()).await;
    let once = bearing_proxy_config::RetryPolicy {
        on: RetryOn {
            server_error: true,
            ..Default::default()
        },
        num_retries: 1,
        ..kuma_default_retry(Duration::from_secs(2))
    };
    let route = |prefix: &str, retry: Option<bearing_proxy_config::RetryPolicy>| {
        let mut r = HttpRoute::prefix_to(format!("route {prefix}"), prefix, "live", None, None);
        if let RouteAction::Forward { retry: to, .. } = &mut r.action {
            *to = retry;
        }
        r
    };
    let mut config = (*config(origin, origin)).clone();
    config.listeners[0].routes = Some(RouteTable {
        name: "retries".into(),
        virtual_hosts: vec![VirtualHost {
            name: "web".into(),
            domains: vec!["*".into()],
            routes: vec![
                route("/patient", Some(kuma_default_retry(Duration::from_secs(2)))),
                route("/once", Some(once)),
                route("/never", None),
            ],
        }],
    });
    let proxy = Arc::new(Proxy::new(Workers::start(1, false).unwrap()));
    proxy.apply(Arc::new(config));
    let table = [
        ("/patient", (200, "2"), 3),
        ("/once", (503, "5"), 2),
        ("/never", (503, "5"), 1),
    ];
    let mut failures = Vec::new();
    for codec in [Codec::Bytes, Codec::HyperH1, Codec::HyperH2] {
        for (path, (status, body), wanted) in table {
            // Each request starts the origin's script over.
            seen.store(0, Ordering::SeqCst);
            let case = answered_get("retried by its route", path, (status, body));
            let answer = ask(&proxy, codec, &case).await;
            let tries = seen.load(Ordering::SeqCst);
            if answer != (status, body.to_string()) || tries != wanted {
                failures.push(format!(
                    "{path} ({codec:?}): {answer:?} after {tries} tries"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// An endpoint that takes no connection: a listener with a backlog of 0 that never accepts,
/// its queue filled, so further SYNs go unanswered and a connect hangs (the socket is
/// returned to keep it open).
async fn stalled_endpoint() -> (socket2::Socket, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    socket.listen(0).unwrap();
    let address = socket.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    for _ in 0..4 {
        let connect = TcpStream::connect(address);
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
            queued.push(s);
        }
    }
    let hangs = tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(address));
    assert!(hangs.await.is_err(), "the backlog is full");
    std::mem::forget(queued);
    (socket, address)
}

/// The request's timeout spans the connect, as Envoy's route timeout does: an endpoint
/// whose connect hangs (connect timeout 5 s) gets a request with a 300 ms timeout the 504
/// `upstream request timeout` by then, through every codec, not the connect failure's 503
/// 5 s later.
#[tokio::test]
async fn the_request_timeout_spans_the_connect_through_every_codec() {
    let (_stalled, address) = stalled_endpoint().await;
    let mut config = (*config(address, address)).clone();
    let cluster = config.clusters.get_mut("live").unwrap();
    cluster.connect_timeout = Duration::from_secs(5);
    cluster.request_timeout = Some(Duration::from_millis(300));
    let proxy = Arc::new(Proxy::new(Workers::start(1, false).unwrap()));
    proxy.apply(Arc::new(config));
    let mut failures = Vec::new();
    for codec in [Codec::Bytes, Codec::HyperH1, Codec::HyperH2] {
        let started = tokio::time::Instant::now();
        let case = answered_get("stalled connect", "/", (504, "upstream request timeout"));
        let answer = ask(&proxy, codec, &case).await;
        let took = started.elapsed();
        if answer != (504, "upstream request timeout".into()) || took > Duration::from_secs(2) {
            failures.push(format!("{codec:?}: {answer:?} after {took:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// An h2c origin answering each request with the next `grpc-status` of `script` in its
/// response headers (a trailers-only gRPC answer; `0` comes with the body `ok`), counting the
/// requests in `seen`.
async fn grpc_upstream(
    script: &'static [u32],
    seen: Arc<std::sync::atomic::AtomicUsize>,
) -> SocketAddr {
    use std::sync::atomic::Ordering;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let seen = seen.clone();
            let answer = hyper::service::service_fn(move |_: http::Request<_>| {
                let code = script[seen.fetch_add(1, Ordering::SeqCst) % script.len()];
                let body = if code == 0 { "ok" } else { "" };
                let resp = http::Response::builder()
                    .header("content-type", "application/grpc")
                    .header("grpc-status", code)
                    .body(Full::new(Bytes::from(body)));
                async move { resp }
            });
            let server = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            tokio::spawn(server.serve_connection(TokioIo::new(s), answer));
        }
    });
    address
}

/// A gRPC route under Kuma's default gRPC policy, through hyper over HTTP/2: an origin
/// answering `unavailable` (14) twice and then OK is asked three times and the client gets
/// the OK; one answering `internal` (13), not among Kuma's conditions, is asked once and its
/// answer stands; without a policy, `unavailable` stands too.
#[tokio::test]
async fn grpc_statuses_in_the_headers_are_retried_as_the_policy_names_them() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let flaky_seen = Arc::new(AtomicUsize::new(0));
    let flaky = grpc_upstream(&[14, 14, 0], flaky_seen.clone()).await;
    let internal_seen = Arc::new(AtomicUsize::new(0));
    let internal = grpc_upstream(&[13], internal_seen.clone()).await;
    let mut config = (*config(flaky, internal)).clone();
    for cluster in config.clusters.values_mut() {
        cluster.protocol = Protocol::Grpc;
    }
    for listener in &mut config.listeners {
        listener.protocol = Protocol::Grpc;
        listener.retry = Some(bearing_proxy_config::RetryPolicy::kuma_default_grpc());
    }
    let proxy = Arc::new(Proxy::new(Workers::start(1, false).unwrap()));
    proxy.apply(Arc::new(config.clone()));
    let call = |to| Case {
        to,
        ..answered_get("a gRPC call", "/grpc.health.v1.Health/Check", (200, ""))
    };
    let mut failures = Vec::new();
    let checks = [
        (To::Live, &flaky_seen, (200, "ok"), 3),
        (To::Refused, &internal_seen, (200, ""), 1),
    ];
    for (to, seen, answer_wanted, tries_wanted) in checks {
        seen.store(0, Ordering::SeqCst);
        let answer = ask(&proxy, Codec::HyperH2, &call(to)).await;
        let tries = seen.load(Ordering::SeqCst);
        if (answer.0, answer.1.as_str()) != answer_wanted || tries != tries_wanted {
            failures.push(format!("{answer:?} after {tries} tries"));
        }
    }
    config.listeners[To::Live as usize].retry = None;
    proxy.apply(Arc::new(config));
    flaky_seen.store(0, Ordering::SeqCst);
    let answer = ask(&proxy, Codec::HyperH2, &call(To::Live)).await;
    let tries = flaky_seen.load(Ordering::SeqCst);
    if answer != (200, String::new()) || tries != 1 {
        failures.push(format!("without a policy: {answer:?} after {tries} tries"));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// An HTTP/1.0 origin (no length, the body ends at close) answers HTTP/1.1 clients through
/// both HTTP/1.1 codecs with an `HTTP/1.1` status line and its whole body, as Envoy does: a
/// response goes out in the client's version, not the origin's.
#[tokio::test]
async fn an_http10_origins_answer_reaches_http11_clients_as_http11() {
    let origin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = origin.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = origin.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if read_head(&mut s, &mut buf).await.is_some() {
                    let answer = "HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nold origin";
                    let _ = s.write_all(answer.as_bytes()).await;
                }
            });
        }
    });
    let proxy = Arc::new(Proxy::new(Workers::start(1, false).unwrap()));
    proxy.apply(config(address, address));
    for codec in [Codec::Bytes, Codec::HyperH1] {
        let (mut client, serving) = open(&proxy, codec, 0).await;
        let request = "GET /old HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n";
        client.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let read = client.read_to_end(&mut answer);
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("the proxy closes after the response")
            .unwrap();
        serving.abort();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 200 OK\r\n"),
            "{codec:?}: {answer}"
        );
        assert!(answer.contains("old origin"), "{codec:?}: {answer}");
    }
}

/// An origin that reads each request head and, by its path, never answers (`/silent`),
/// answers a head and 2 of 10 body bytes and then stalls (`/stall`), or answers `200 ok`.
async fn stalling_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(end) = read_head(&mut s, &mut buf).await {
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end);
                    let answer: &[u8] = if head.contains(" /silent ") {
                        b""
                    } else if head.contains(" /stall ") {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nab"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                    };
                    if answer.len() < 20 || s.write_all(answer).await.is_err() {
                        // Silent or stalled: hold the connection.
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                }
            });
        }
    });
    address
}

/// A stream idle timeout (the listener's, 300 ms) through every codec: a request whose
/// response head does not come in time gets Envoy's 504 `stream timeout` (counted), one
/// whose response body stops is cut (the connection closes, or the HTTP/2 stream is reset),
/// and one answered at once is not touched.
#[tokio::test]
async fn a_stream_idle_timeout_ends_silent_and_stalled_streams_in_every_codec() {
    let origin = stalling_upstream().await;
    let mut config = (*config(origin, origin)).clone();
    config.listeners[0].stream_idle_timeout = Some(Duration::from_millis(300));
    let proxy = Arc::new(Proxy::new(Workers::start(1, false).unwrap()));
    proxy.apply(Arc::new(config));
    let listener = proxy
        .snapshot()
        .listener(&listener_address(0))
        .cloned()
        .unwrap();
    let mut failures = Vec::new();
    for codec in [Codec::Bytes, Codec::HyperH1, Codec::HyperH2] {
        let started = tokio::time::Instant::now();
        let case = answered_get("silent origin", "/silent", (504, "stream timeout"));
        let answer = ask(&proxy, codec, &case).await;
        let took = started.elapsed();
        if answer != (504, "stream timeout".into())
            || took < Duration::from_millis(300)
            || took > Duration::from_secs(3)
        {
            failures.push(format!("{codec:?} silent: {answer:?} after {took:?}"));
        }
        let (cut, took) = quick_then_stalled_body(&proxy, codec, &mut failures).await;
        if cut == Cut::Not || took > Duration::from_secs(3) {
            failures.push(format!("{codec:?} stalled body: {cut:?} after {took:?}"));
        }
    }
    assert_eq!(listener.stats.stream_idle_timeout.get(), 6, "{failures:#?}");
    assert!(failures.is_empty(), "{failures:#?}");
}

/// How a response whose body stalled ended for the client.
#[derive(Debug, PartialEq)]
enum Cut {
    /// Completed, or left hanging for 5 s.
    Not,
    /// Its head and the 2 bytes of 10 that came, then the connection closed (HTTP/1.1).
    Closed,
    /// The HTTP/2 stream was reset with this code.
    Reset(Option<h2::Reason>),
}

/// Asks `/stall` through `codec`: how the response, its head received, was cut short.
async fn stalled_body(proxy: &Arc<Proxy>, codec: Codec) -> Cut {
    let (mut client, serving) = open(proxy, codec, 0).await;
    let cut = async {
        if let Codec::HyperH2 = codec {
            // h2 itself, which gives the reset's code.
            let (sender, conn) = h2::client::handshake(client).await.unwrap();
            tokio::spawn(conn);
            let req = http::Request::get("http://web/stall").body(()).unwrap();
            let (resp, _) = sender
                .ready()
                .await
                .unwrap()
                .send_request(req, true)
                .unwrap();
            let mut body = resp.await.unwrap().into_body();
            let mut got = Vec::new();
            return loop {
                match body.data().await {
                    Some(Ok(data)) => got.extend_from_slice(&data),
                    Some(Err(e)) if got == b"ab" => break Cut::Reset(e.reason()),
                    _ => break Cut::Not,
                }
            };
        }
        client
            .write_all(b"GET /stall HTTP/1.1\r\nhost: web\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        while client.read_buf(&mut buf).await.is_ok_and(|n| n > 0) {}
        // Closed (the loop ended) with the head and the 2 bytes of 10 that came.
        match buf.starts_with(b"HTTP/1.1 200") && buf.ends_with(b"\r\n\r\nab") {
            true => Cut::Closed,
            false => Cut::Not,
        }
    };
    let cut = tokio::time::timeout(Duration::from_secs(5), cut)
        .await
        .unwrap_or(Cut::Not);
    serving.abort();
    cut
}

/// A cluster's maximum stream duration (MeshTimeout's `http.maxStreamDuration`) ends a try
/// waiting for its response head with Envoy's 504 `upstream max stream duration reached`,
/// counted, through every codec; 408 when the request's body was still coming (hyper's
/// codecs stream it), closing an HTTP/1.1 connection, as Envoy answers.
#[tokio::test]
async fn a_try_past_the_maximum_stream_duration_gets_envoys_504() {
    let proxy = proxy_with_max_stream_duration(stalling_upstream().await);
    let mut failures = Vec::new();
    for codec in [Codec::Bytes, Codec::HyperH1, Codec::HyperH2] {
        let started = tokio::time::Instant::now();
        let reply = (504, "upstream max stream duration reached");
        let answer = ask(
            &proxy,
            codec,
            &answered_get("silent origin", "/silent", reply),
        )
        .await;
        let took = started.elapsed();
        if answer != (reply.0, reply.1.into()) || took > Duration::from_secs(3) {
            failures.push(format!("{codec:?}: {answer:?} after {took:?}"));
        }
        // The byte codec holds a body whole before forwarding: only hyper streams one.
        if let Codec::Bytes = codec {
            continue;
        }
        let answer = stalled_upload(&proxy, codec, (0, "/silent")).await;
        let wanted = match codec {
            Codec::HyperH2 => reply.1.to_string(),
            _ => format!("{} (close)", reply.1),
        };
        if answer != Some((408, wanted)) {
            failures.push(format!("{codec:?} unfinished request: {answer:?}"));
        }
    }
    assert_eq!(max_duration_reached(&proxy), 5, "{failures:#?}");
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A quick request through `codec` (a wrong answer noted in `failures`), then one whose
/// response body stalls: how that one ended, and after how long.
async fn quick_then_stalled_body(
    proxy: &Arc<Proxy>,
    codec: Codec,
    failures: &mut Vec<String>,
) -> (Cut, Duration) {
    let ok = answered_get("quick origin", "/ok", (200, "ok"));
    let answer = ask(proxy, codec, &ok).await;
    if answer != (200, "ok".into()) {
        failures.push(format!("{codec:?} quick: {answer:?}"));
    }
    let started = tokio::time::Instant::now();
    let cut = stalled_body(proxy, codec).await;
    (cut, started.elapsed())
}

/// A proxy whose cluster `live`, at `origin`, has a maximum stream duration of 300 ms.
fn proxy_with_max_stream_duration(origin: SocketAddr) -> Arc<Proxy> {
    let mut config = (*config(origin, origin)).clone();
    let cluster = config.clusters.get_mut("live").unwrap();
    cluster.http_timeouts.max_stream_duration = Some(Duration::from_millis(300));
    let proxy = Arc::new(Proxy::new(Workers::start(1, false).unwrap()));
    proxy.apply(Arc::new(config));
    proxy
}

/// The tries of the first listener's cluster that reached its maximum stream duration.
fn max_duration_reached(proxy: &Proxy) -> u64 {
    let listener = proxy
        .snapshot()
        .listener(&listener_address(0))
        .cloned()
        .unwrap();
    let live = super::HttpListener::cluster(&*listener).unwrap();
    live.stats.rq_max_duration_reached.get()
}

/// A response whose body is still coming at the cluster's maximum stream duration is cut, as
/// Envoy resets a stream whose response has started: the HTTP/1.1 connection closes after
/// the bytes that came, the HTTP/2 stream is reset with `INTERNAL_ERROR` (Envoy 1.40's code
/// there); counted, through every codec. A response ended in time is untouched.
#[tokio::test]
async fn a_response_body_past_the_maximum_stream_duration_is_cut_in_every_codec() {
    let proxy = proxy_with_max_stream_duration(stalling_upstream().await);
    let mut failures = Vec::new();
    for codec in [Codec::Bytes, Codec::HyperH1, Codec::HyperH2] {
        let (cut, took) = quick_then_stalled_body(&proxy, codec, &mut failures).await;
        let wanted = match codec {
            Codec::HyperH2 => Cut::Reset(Some(h2::Reason::INTERNAL_ERROR)),
            _ => Cut::Closed,
        };
        if cut != wanted || took < Duration::from_millis(250) || took > Duration::from_secs(3) {
            failures.push(format!("{codec:?} stalled body: {cut:?} after {took:?}"));
        }
    }
    assert_eq!(max_duration_reached(&proxy), 3, "{failures:#?}");
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A request body that sends `ab` and then nothing more, never ending.
struct StalledBody(bool);

impl http_body::Body for StalledBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if std::mem::replace(&mut self.0, true) {
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(b"ab")))))
    }
}

/// Sends a POST of 10 bytes to `path` whose body stops after 2 through `codec` to the `i`-th
/// listener; the response's status and body, or `None` when none came within 5 s.
async fn stalled_upload(
    proxy: &Arc<Proxy>,
    codec: Codec,
    (i, path): (usize, &str),
) -> Option<(u16, String)> {
    let (mut client, serving) = open(proxy, codec, i).await;
    let answer = async {
        if let Codec::HyperH2 = codec {
            let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, StalledBody>(
                TokioExecutor::new(),
                TokioIo::new(client),
            )
            .await
            .ok()?;
            tokio::spawn(conn);
            let req = http::Request::post(format!("http://web{path}"))
                .header("content-length", "10")
                .body(StalledBody(false))
                .ok()?;
            let resp = sender.send_request(req).await.ok()?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.ok()?.to_bytes();
            return Some((status, String::from_utf8_lossy(&body).to_string()));
        }
        let head = format!("POST {path} HTTP/1.1\r\nhost: web\r\ncontent-length: 10\r\n\r\nab");
        client.write_all(head.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        let end = read_head(&mut client, &mut buf).await?;
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let length: usize = field(&head, "content-length")?.parse().ok()?;
        while buf.len() < end + length {
            if client.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
        }
        let closes = field(&head, "connection") == Some("close");
        let body = String::from_utf8_lossy(&buf[end..end + length]).to_string();
        Some((
            head[9..12].parse().ok()?,
            format!("{body}{}", if closes { " (close)" } else { "" }),
        ))
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .ok()
        .flatten();
    serving.abort();
    answer
}

/// The connection manager's request timeout (300 ms) through every codec: a request whose
/// body stops gets Envoy's 408 `request timeout` (HTTP/1.1 closing the connection) at about
/// that time, and one received whole is not touched; on the byte path a held body that stops
/// for the stream idle timeout gets 408 `stream timeout`, and a request head that stops 408
/// `request header timeout` at the request head timeout.
#[tokio::test]
async fn a_request_not_received_in_time_gets_envoys_408_through_every_codec() {
    let (live, _received) = recording_upstream().await;
    let mut config = (*config(live, live)).clone();
    config.listeners[0].downstream_timeouts.request = Some(Duration::from_millis(300));
    config.listeners[1].downstream_timeouts.request_headers = Some(Duration::from_millis(300));
    config.listeners[2].stream_idle_timeout = Some(Duration::from_millis(300));
    let proxy = Arc::new(Proxy::new(Workers::start(1, false).unwrap()));
    proxy.apply(Arc::new(config));
    let mut failures = Vec::new();
    for codec in [Codec::Bytes, Codec::HyperH1, Codec::HyperH2] {
        let started = tokio::time::Instant::now();
        let answer = stalled_upload(&proxy, codec, (0, "/upload")).await;
        let took = started.elapsed();
        let wanted = match codec {
            Codec::HyperH2 => "request timeout",
            _ => "request timeout (close)",
        };
        if answer != Some((408, wanted.into()))
            || took < Duration::from_millis(300)
            || took > Duration::from_secs(3)
        {
            failures.push(format!(
                "{codec:?} stalled upload: {answer:?} after {took:?}"
            ));
        }
        let ok = answered_get("whole request", "/ok", (200, "ok"));
        let answer = ask(&proxy, codec, &ok).await;
        if answer.0 != 200 {
            failures.push(format!("{codec:?} whole request: {answer:?}"));
        }
    }
    // A held body that stops for the stream idle timeout, on the byte path.
    let answer = stalled_upload(&proxy, Codec::Bytes, (2, "/upload")).await;
    if answer != Some((408, "stream timeout (close)".into())) {
        failures.push(format!("stream idle of a held body: {answer:?}"));
    }
    // A head that stops: on the byte path, on hyper's HTTP/1.1, and on hyper's after the byte
    // codec handed the connection over (an absolute-form target; the next head is hyper's).
    let listener = proxy
        .snapshot()
        .listener(&listener_address(1))
        .cloned()
        .unwrap();
    let handover = b"GET http://web/ok HTTP/1.1\r\nhost: web\r\n\r\n";
    for (path, codec, first) in [
        ("byte codec", Codec::Bytes, None),
        ("hyper", Codec::HyperH1, None),
        (
            "hyper after the handover",
            Codec::Bytes,
            Some(&handover[..]),
        ),
    ] {
        let before = listener.stats.errors.get();
        let (mut client, serving) = open(&proxy, codec, 1).await;
        if let Some(first) = first {
            client.write_all(first).await.unwrap();
            let answer = read_response(&mut client).await;
            if answer.as_ref().is_none_or(|(_, close)| *close) {
                failures.push(format!("{path}: first request answered {answer:?}"));
                continue;
            }
        }
        let started = tokio::time::Instant::now();
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: web\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3), async {
            while client.read_buf(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        let closed = read.await.is_ok();
        let took = started.elapsed();
        serving.abort();
        let text = String::from_utf8_lossy(&buf);
        let envoys = text.starts_with("HTTP/1.1 408 Request Timeout\r\n")
            && text.contains("\r\nconnection: close\r\n")
            && text.ends_with("\r\n\r\nrequest header timeout");
        if !closed || !envoys || took < Duration::from_millis(300) {
            failures.push(format!(
                "{path}: stalled head answered {text:?} after {took:?} (closed: {closed})"
            ));
        }
        if listener.stats.errors.get() != before {
            failures.push(format!("{path}: the 408 was counted as a connection error"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// An HTTP/2 frame of `kind` with `flags` on `stream`.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The next HTTP/2 frame read from `client` (after what `buf` holds) whose kind `want`
/// accepts, acknowledging the server's settings on the way: its kind, flags, stream and
/// payload; `None` once the connection ends.
async fn h2_next(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    want: impl Fn(u8, u32) -> bool,
) -> Option<(u8, u8, u32, Vec<u8>)> {
    loop {
        while buf.len() >= 9 {
            let length = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + length {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]);
            let payload = buf[9..9 + length].to_vec();
            buf.drain(..9 + length);
            if kind == 0x4 && flags & 0x1 == 0 {
                client.write_all(&h2_frame(0x4, 0x1, 0, &[])).await.ok()?;
            }
            if want(kind, stream) {
                return Some((kind, flags, stream, payload));
            }
        }
        if client.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

/// HTTP/2's request head timeout (300 ms) on hyper's server: a header block split over
/// HEADERS and CONTINUATION that ends in time is a request, an idle connection is not timed,
/// and a header block not ended 300 ms after its HEADERS frame ends the connection with a
/// GOAWAY naming the last stream whose block came whole (Envoy answers that stream `:status
/// 408` and resets it; h2 cannot).
#[tokio::test]
async fn an_http2_header_block_not_ended_in_time_ends_the_connection() {
    let (live, _received) = recording_upstream().await;
    let mut config = (*config(live, live)).clone();
    config.listeners[0].downstream_timeouts.request_headers = Some(Duration::from_millis(300));
    let proxy = Arc::new(Proxy::new(Workers::start(1, false).unwrap()));
    proxy.apply(Arc::new(config));
    let (mut client, serving) = open(&proxy, Codec::HyperH2, 0).await;
    let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    start.extend(h2_frame(0x4, 0, 0, &[]));
    client.write_all(&start).await.unwrap();
    // GET / (static table), then `:authority: web` as a literal without indexing.
    let (first, rest) = (&[0x82, 0x86][..], &[0x84, 0x01, 0x03, b'w', b'e', b'b'][..]);
    let mut buf = Vec::new();
    let response = |stream| move |kind, on| kind == 0x1 && on == stream;
    // Stream 1: HEADERS (END_STREAM), 100 ms later its CONTINUATION (END_HEADERS).
    client
        .write_all(&h2_frame(0x1, 0x1, 1, first))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    client
        .write_all(&h2_frame(0x9, 0x4, 1, rest))
        .await
        .unwrap();
    let answered = h2_next(&mut client, &mut buf, response(1)).await;
    assert!(answered.is_some(), "stream 1 was not answered");
    // Idle for longer than the timeout, then stream 3 in one HEADERS frame.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let whole = [first, rest].concat();
    client
        .write_all(&h2_frame(0x1, 0x5, 3, &whole))
        .await
        .unwrap();
    let answered = h2_next(&mut client, &mut buf, response(3)).await;
    assert!(
        answered.is_some(),
        "the idle connection did not answer stream 3"
    );
    // Stream 5: HEADERS without END_HEADERS, and nothing more.
    client
        .write_all(&h2_frame(0x1, 0x1, 5, first))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let goaway = tokio::time::timeout(
        Duration::from_secs(3),
        h2_next(&mut client, &mut buf, |kind, _| kind == 0x7),
    )
    .await;
    let took = started.elapsed();
    let Ok(Some((_, _, 0, payload))) = goaway else {
        panic!("no GOAWAY within 3 s: {goaway:?}");
    };
    assert_eq!(
        &payload[..8],
        &[0, 0, 0, 3, 0, 0, 0, 0],
        "last stream 3, NO_ERROR"
    );
    assert_eq!(&payload[8..], b"request header timeout");
    assert!(took >= Duration::from_millis(300), "after {took:?}");
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        while client.read_buf(&mut buf).await.is_ok_and(|n| n > 0) {}
    });
    assert!(closed.await.is_ok(), "the connection stayed open");
    serving.abort();
}

/// Reads one HTTP/1.1 response with a `content-length` body from `client`: its status and
/// whether it says `connection: close`; `None` if the connection ends first.
async fn read_response(client: &mut TcpStream) -> Option<(u16, bool)> {
    let mut buf = Vec::new();
    let end = read_head(client, &mut buf).await?;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let length: usize = field(&head, "content-length")?.parse().ok()?;
    while buf.len() < end + length {
        if client.read_buf(&mut buf).await.ok()? == 0 {
            return None;
        }
    }
    let status = head.get(9..12)?.parse().ok()?;
    let close = field(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    Some((status, close))
}

/// An HTTP/1.1 keep-alive connection hyper serves (here after the byte codec handed it
/// over) outlives hyper's 30 s head wait: idle between requests it is bounded by the
/// connection idle timeout only (Envoy's 1 h), and a listener's request head timeout counts
/// from a head's first byte, not from when the connection waits, pipelined requests
/// included. Time is paused for the idle minute.
#[tokio::test]
async fn an_idle_keep_alive_connection_outlives_hypers_head_wait() {
    let (live, _received) = recording_upstream().await;
    let mut config = (*config(live, live)).clone();
    config.listeners[0].downstream_timeouts.request_headers = Some(Duration::from_millis(300));
    let proxy = Arc::new(Proxy::new(Workers::start(1, false).unwrap()));
    proxy.apply(Arc::new(config));
    let handover = b"GET http://web/ok HTTP/1.1\r\nhost: web\r\n\r\n";
    let again = b"GET /ok HTTP/1.1\r\nhost: web\r\n\r\n";
    for (path, codec, first) in [
        ("hyper", Codec::HyperH1, &again[..]),
        ("hyper after the handover", Codec::Bytes, &handover[..]),
    ] {
        let (mut client, serving) = open(&proxy, codec, 0).await;
        client.write_all(first).await.unwrap();
        assert_eq!(
            read_response(&mut client).await,
            Some((200, false)),
            "{path}"
        );
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(61)).await;
        tokio::time::resume();
        // Let the serving task see its timers.
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.write_all(again).await.unwrap();
        assert_eq!(
            read_response(&mut client).await,
            Some((200, false)),
            "{path}: the idle connection was closed"
        );
        // Two requests pipelined in one write: both answered, and the connection, quiet for
        // longer than the head timeout after them, still serves (no head clock left armed).
        client
            .write_all(&[&again[..], &again[..]].concat())
            .await
            .unwrap();
        for _ in 0..2 {
            let answer = read_response(&mut client).await;
            assert_eq!(answer, Some((200, false)), "{path}: pipelined");
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        client.write_all(again).await.unwrap();
        assert_eq!(
            read_response(&mut client).await,
            Some((200, false)),
            "{path}: after the pipelined requests"
        );
        serving.abort();
    }
}

/// The connection idle timeout (300 ms) through every codec: a connection that served a
/// request and then carries none is closed (HTTP/2: GOAWAY, then closed) at about that time,
/// counted as Envoy's `downstream_cx_idle_timeout`.
#[tokio::test]
async fn an_idle_connection_ends_at_the_connection_idle_timeout_in_every_codec() {
    let (live, _received) = recording_upstream().await;
    let mut config = (*config(live, live)).clone();
    config.listeners[0].downstream_timeouts.connection_idle = Some(Duration::from_millis(300));
    let proxy = Arc::new(Proxy::new(Workers::start(1, false).unwrap()));
    proxy.apply(Arc::new(config));
    let listener = proxy
        .snapshot()
        .listener(&listener_address(0))
        .cloned()
        .unwrap();
    let mut failures = Vec::new();
    for codec in [Codec::Bytes, Codec::HyperH1, Codec::HyperH2] {
        let (mut client, serving) = open(&proxy, codec, 0).await;
        let ended = async {
            if let Codec::HyperH2 = codec {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
                        TokioExecutor::new(),
                        TokioIo::new(client),
                    )
                    .await
                    .unwrap();
                let conn = tokio::spawn(conn);
                let req = http::Request::get("http://web/ok")
                    .body(Full::default())
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                resp.into_body().collect().await.unwrap();
                let answered = tokio::time::Instant::now();
                let _ = conn.await;
                return answered.elapsed();
            }
            client
                .write_all(b"GET /ok HTTP/1.1\r\nhost: web\r\n\r\n")
                .await
                .unwrap();
            let mut buf = Vec::new();
            let end = read_head(&mut client, &mut buf).await.unwrap();
            while buf.len() < end + 2 {
                client.read_buf(&mut buf).await.unwrap();
            }
            let answered = tokio::time::Instant::now();
            while client.read_buf(&mut buf).await.is_ok_and(|n| n > 0) {}
            answered.elapsed()
        };
        match tokio::time::timeout(Duration::from_secs(5), ended).await {
            Ok(idle) if idle >= Duration::from_millis(300) && idle < Duration::from_secs(2) => {}
            other => failures.push(format!("{codec:?}: closed {other:?} after the answer")),
        }
        serving.abort();
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(listener.stats.cx_idle_timeout.get(), 3);
}

//! End-to-end: the HTTP/1.1 byte path of a plain listener, byte for byte.
//!
//! Host `a` runs `bearing` (Dataplane `web`, outbound 127.0.0.1:10001 → service `origin`) and
//! a scripted origin at `a`'s address, port 18080, that answers each path with fixed bytes:
//! chunked with an extension and trailers, a body until close, 204, 103 then 200, garbage,
//! a 1 MiB body (and one cut short), an echo of the request head and body it received, and
//! its connection number. A raw socket
//! client sends requests (several at once, pipelined) and the test reads back exactly the
//! bytes the proxy wrote.

use std::time::Duration;

use anyhow::{ensure, Result};
use bearing_e2e::*;

const ORIGIN_PY: &str = r#"
import socket, sys, threading
connections = 0
lock = threading.Lock()
LARGE = b"0123456789abcdef" * 65536
RESPONSES = {
    "/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Origin: raw\r\n\r\n"
                b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
    "/no-content": b"HTTP/1.1 204 No Content\r\nX-Origin: raw\r\n\r\n",
    "/early": b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
              b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "/head-length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
    "/garbage": b"NOT HTTP AT ALL\r\n\r\n",
    "/large": b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n" + LARGE,
    "/length-list": b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok",
    "/status-099": b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n",
    "/status-600": b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n",
    "/bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "/http10-chunked": b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"5\r\nhello\r\n0\r\n\r\n",
    "/large-head": b"HTTP/1.1 200 OK\r\nX-Pad: " + b"p" * 70000 + b"\r\nContent-Length: 0\r\n\r\n",
}

def serve(conn, number):
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:
                return conn.close()
            buf += data
        head, buf = buf.split(b"\r\n\r\n", 1)
        length, chunked = 0, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            if name.strip().lower() == b"transfer-encoding":
                chunked = True
        if chunked:
            # Enough for the tests: the whole body arrives before the origin answers.
            while not buf.endswith(b"0\r\n\r\n"):
                data = conn.recv(65536)
                if not data:
                    return conn.close()
                buf += data
            body, rest = b"", buf
            while True:
                size, _, rest = rest.partition(b"\r\n")
                if int(size, 16) == 0:
                    break
                body, rest = body + rest[: int(size, 16)], rest[int(size, 16) + 2 :]
            buf = b""
        else:
            while len(buf) < length:
                data = conn.recv(65536)
                if not data:
                    return conn.close()
                buf += data
            body, buf = buf[:length], buf[length:]
        path = head.split(b" ")[1].decode()
        if path == "/echo":
            out = head + b"\r\n\r\n" + body
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(out) + out)
        elif path == "/connection":
            out = b"connection %d" % number
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(out) + out)
        elif path == "/until-close":
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Origin: raw\r\n\r\nuntil close")
            return conn.close()
        elif path == "/large-cut":
            # A length the origin does not keep to: 100 KB of 1 MB, then it closes.
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n" + LARGE[:100000])
            return conn.close()
        elif path == "/stale":
            # Keep-alive by the headers, closed anyway: the pooled connection goes stale.
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
            return conn.close()
        else:
            conn.sendall(RESPONSES[path])

server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(64)
while True:
    conn, _ = server.accept()
    with lock:
        connections += 1
        number = connections
    threading.Thread(target=serve, args=(conn, number), daemon=True).start()
"#;

/// Sends `request` on one connection and returns every byte read until the proxy closes it.
const CLIENT_PY: &str = r#"
import socket, sys
s = socket.create_connection(("127.0.0.1", 10001), timeout=5)
s.sendall(sys.stdin.buffer.read())
out = b""
while True:
    try:
        data = s.recv(65536)
    except ConnectionResetError:
        sys.stderr.write("reset\n")
        break
    if not data:
        break
    out += data
sys.stdout.buffer.write(out)
"#;

/// Opens 200 connections that each send a 59 KiB request head slowly, never finishing it, and
/// prints the proxy's resident memory (`/proc/<pid>/status`, argv[1]) before and while they
/// wait, in KiB.
const SLOW_HEADS_PY: &str = r#"
import socket, sys, time
def rss():
    for line in open("/proc/%s/status" % sys.argv[1]):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
before = rss()
head = b"GET /echo HTTP/1.1\r\nHost: origin\r\nX-Pad: " + b"p" * (59 * 1024)
conns = [socket.create_connection(("127.0.0.1", 10001)) for _ in range(200)]
for start in range(0, len(head), 8192):
    for c in conns:
        c.sendall(head[start:start + 8192])
    time.sleep(0.05)
time.sleep(1)
print(before, rss())
"#;

/// `a` with the origin running and `bearing` ready, run with `flags` (its worker threads).
fn setup<'t>(topo: &'t Topology, flags: &[&str]) -> Result<(Process, Bearing<'t>)> {
    let a = topo.host("a");
    let origin = a
        .command("python3")
        .args(["-u", "-c", ORIGIN_PY, &a.ip4().to_string(), "18080"])
        .log_name("origin")
        .spawn()?;
    a.wait_for_tcp_listener(18080, Duration::from_secs(10), Some(&origin))?;
    let web = dataplane_yaml(
        "web",
        a,
        "  inbound:\n  - port: 18081\n    servicePort: 8081\n    tags: {kuma.io/service: web, kuma.io/protocol: http}\n  outbound:\n  - port: 10001\n    tags: {kuma.io/service: origin}\n",
    );
    let origin_dp = dataplane_yaml(
        "origin",
        a,
        "  inbound:\n  - port: 18080\n    servicePort: 8080\n    tags: {kuma.io/service: origin, kuma.io/protocol: http}\n",
    );
    let dir = write_store(
        topo,
        &[
            ("mesh.yaml", "type: Mesh\nname: default\n".into()),
            ("web.yaml", web),
            ("origin.yaml", origin_dp),
        ],
    )?;
    let args: Vec<&str> = ["--name", "web"].iter().chain(flags).copied().collect();
    let bearing = Bearing::start(a, &dir, &args)?;
    Ok((origin, bearing))
}

/// The bytes the proxy wrote back for `requests`, sent at once on one connection.
fn exchange(host: &Host, requests: &str) -> Result<String> {
    let out = host
        .command("python3")
        .args(["-c", CLIENT_PY])
        .stdin(requests.as_bytes().to_vec())
        .timeout(Duration::from_secs(10))
        .output()?
        .check()?;
    Ok(out.stdout)
}

#[test]
fn framings_pass_through_unchanged_on_one_pipelined_connection() -> Result<()> {
    require_root_and_tools()?;
    let topo = Topology::new(&["a"])?;
    let (_origin, _bearing) = setup(&topo, &["--concurrency", "2"])?;
    let a = topo.host("a");
    let requests = "GET /echo HTTP/1.1\r\nHost: origin\r\nConnection: keep-alive, X-Hop\r\n\
                    X-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\nX-Request-Id: r1\r\n\r\n\
                    GET /chunked HTTP/1.1\r\nHost: origin\r\n\r\n\
                    GET /no-content HTTP/1.1\r\nHost: origin\r\n\r\n\
                    GET /early HTTP/1.1\r\nHost: origin\r\n\r\n\
                    HEAD /head-length HTTP/1.1\r\nHost: origin\r\n\r\n\
                    POST /echo HTTP/1.1\r\nHost: origin\r\nContent-Length: 4\r\n\r\nbody\
                    GET /until-close HTTP/1.1\r\nHost: origin\r\n\r\n";
    // The id Bearing gives a request without one is random: compared by form.
    let got = request_id_forms(&exchange(a, requests)?);
    let echo = |received: &str| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{received}",
            received.len()
        )
    };
    let expected = [
        // Hop-by-hop fields and the ones Connection lists are gone, the rest kept (a request
        // id too); Envoy's `x-forwarded-proto` is added.
        &echo("GET /echo HTTP/1.1\r\nHost: origin\r\nX-Kept: yes\r\nX-Request-Id: r1\r\nx-forwarded-proto: http\r\n\r\n"),
        // Chunks, extension and trailers byte for byte.
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Origin: raw\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
        "HTTP/1.1 204 No Content\r\nX-Origin: raw\r\n\r\n",
        "HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        // HEAD: the length of the body a GET would have, and no body.
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        // A request without an id gets one (a UUID v4), as from Envoy.
        &echo("POST /echo HTTP/1.1\r\nHost: origin\r\nContent-Length: 4\r\nx-request-id: xxxxxxxx-xxxx-4xxx-xxxx-xxxxxxxxxxxx\r\nx-forwarded-proto: http\r\n\r\nbody"),
        // A body until close ends the downstream connection too, which the head says.
        "HTTP/1.1 200 OK\r\nX-Origin: raw\r\nconnection: close\r\n\r\nuntil close",
    ]
    .concat();
    ensure!(got == expected, "got:\n{got:?}\nexpected:\n{expected:?}");
    Ok(())
}

#[test]
fn pooled_connections_are_reused_and_bad_upstreams_answered_clearly() -> Result<()> {
    require_root_and_tools()?;
    let topo = Topology::new(&["a"])?;
    // One worker: idle upstream connections are pooled per worker, and the kernel may give
    // two client connections in turn to different workers.
    let (_origin, bearing) = setup(&topo, &["--concurrency", "1"])?;
    let a = topo.host("a");
    let get = |path: &str, close: bool| {
        let close = if close { "Connection: close\r\n" } else { "" };
        format!("GET {path} HTTP/1.1\r\nHost: origin\r\n{close}\r\n")
    };
    // Two client connections in turn share one pooled upstream connection.
    let first = exchange(a, &get("/connection", true))?;
    let second = exchange(a, &get("/connection", true))?;
    ensure!(first.ends_with("connection 1"), "{first:?}");
    ensure!(second.ends_with("connection 1"), "{second:?}");

    // An upstream that closes a keep-alive connection after its response: the next request
    // takes a fresh connection and succeeds.
    let stale = exchange(
        a,
        &[get("/stale", false), get("/connection", true)].concat(),
    )?;
    ensure!(
        stale.starts_with("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
            && stale.ends_with("connection 2"),
        "{stale:?}"
    );

    // A response that is not HTTP: a 502 naming it, and the client connection goes on.
    let garbage = exchange(
        a,
        &[get("/garbage", false), get("/connection", true)].concat(),
    )?;
    ensure!(
        garbage.starts_with("HTTP/1.1 502 Bad Gateway\r\n")
            && garbage.contains("malformed response head")
            && garbage.ends_with("connection 3"),
        "{garbage:?}"
    );
    let errors =
        bearing.metric("bearing_cluster_upstream_request_errors_total{cluster=\"origin\"}")?;
    ensure!(errors >= 1.0, "request errors counted: {errors}");
    Ok(())
}

#[test]
fn large_bodies_are_relayed_exactly_and_a_short_one_closes_the_client() -> Result<()> {
    require_root_and_tools()?;
    let topo = Topology::new(&["a"])?;
    let (_origin, bearing) = setup(&topo, &["--concurrency", "1"])?;
    let a = topo.host("a");
    // 1 MiB (spliced socket to socket after the first read), then a request on the same
    // upstream connection: had one byte too many or too few been taken, it would fail.
    let got = exchange(
        a,
        "GET /large HTTP/1.1\r\nHost: origin\r\n\r\n\
         GET /connection HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n",
    )?;
    let large = "0123456789abcdef".repeat(65536);
    let want = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n{large}\
         HTTP/1.1 200 OK\r\nContent-Length: 12\r\nconnection: close\r\n\r\nconnection 1"
    );
    ensure!(
        got == want,
        "got {} bytes, want {}; the end: {:?}",
        got.len(),
        want.len(),
        &got[got.len().saturating_sub(80)..]
    );
    // The origin closes 100 KB into a 1 MiB body: the client gets what there was, then the
    // close, which is how it learns the body was cut.
    let cut = exchange(a, "GET /large-cut HTTP/1.1\r\nHost: origin\r\n\r\n")?;
    let head = "HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n";
    ensure!(
        cut.len() == head.len() + 100_000 && cut.starts_with(head),
        "cut body: {} bytes",
        cut.len()
    );
    let errors =
        bearing.metric("bearing_cluster_upstream_request_errors_total{cluster=\"origin\"}")?;
    ensure!(errors == 1.0, "the cut body is one request error: {errors}");
    Ok(())
}

#[test]
fn requests_the_byte_path_does_not_carry_go_to_the_http_stack() -> Result<()> {
    require_root_and_tools()?;
    let topo = Topology::new(&["a"])?;
    let (_origin, _bearing) = setup(&topo, &["--concurrency", "2", "--pin-workers"])?;
    let a = topo.host("a");
    // (Workers pinned to CPUs, which must not change what they serve.)
    // A byte-path request, then a chunked upload on the same connection: the stack that
    // takes over reads the bytes the byte path had already read.
    let requests = "GET /connection HTTP/1.1\r\nHost: origin\r\n\r\n\
                    POST /echo HTTP/1.1\r\nHost: origin\r\nTransfer-Encoding: chunked\r\n\
                    Connection: close\r\n\r\n4\r\nbody\r\n0\r\n\r\n";
    let got = exchange(a, requests)?;
    ensure!(
        got.starts_with(
            "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nconnection 1HTTP/1.1 200 OK\r\n"
        ),
        "{got:?}"
    );
    ensure!(
        got.to_ascii_lowercase().contains("post /echo http/1.1\r\n") && got.ends_with("body"),
        "the upload reached the origin whole: {got:?}"
    );
    // HTTP/1.0 goes to the HTTP stack from the first request.
    let old = exchange(a, "GET /connection HTTP/1.0\r\nHost: origin\r\n\r\n")?;
    ensure!(
        old.starts_with("HTTP/1.0 200 OK\r\n") && old.contains("connection "),
        "{old:?}"
    );
    Ok(())
}

/// The status line of the first response in `got`.
fn status_line(got: &str) -> &str {
    got.split("\r\n").next().unwrap_or_default()
}

#[test]
fn heads_over_60_kib_are_431_on_every_path_and_memory_stays_bounded() -> Result<()> {
    require_root_and_tools()?;
    let topo = Topology::new(&["a"])?;
    let (_origin, bearing) = setup(&topo, &["--concurrency", "1"])?;
    let a = topo.host("a");
    let padded = |size: usize| format!("X-Pad: {}\r\n", "p".repeat(size));
    // The byte path: a 70 KiB head is refused, a 59 KiB one goes through.
    let big = format!(
        "GET /echo HTTP/1.1\r\nHost: origin\r\n{}\r\n",
        padded(70 * 1024)
    );
    let got = exchange(a, &big)?;
    ensure!(
        got.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{}",
        status_line(&got)
    );
    let fits = format!(
        "GET /echo HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n{}\r\n",
        padded(59 * 1024)
    );
    let got = exchange(a, &fits)?;
    ensure!(
        got.starts_with("HTTP/1.1 200 OK\r\n"),
        "{}",
        status_line(&got)
    );
    // hyper, serving a connection the byte path handed over (a chunked upload first).
    let upload = "POST /echo HTTP/1.1\r\nHost: origin\r\nTransfer-Encoding: chunked\r\n\r\n\
                  4\r\nbody\r\n0\r\n\r\n";
    let got = exchange(a, &format!("{upload}{big}"))?;
    ensure!(
        got.starts_with("HTTP/1.1 200 OK\r\n")
            && got.contains("bodyHTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{got:.300}"
    );
    // HTTP/2: the header list is bounded the same way (hyper's default was 16 KiB): 50 KiB
    // passes, 70 KiB is refused (431, or the stream refused before its headers were read).
    let h2 = |pad: usize| {
        let header = format!("X-Pad: {}", "p".repeat(pad));
        curl_output(
            a,
            [
                "--http2-prior-knowledge",
                "-H",
                &header,
                "http://127.0.0.1:10001/echo",
            ],
        )
    };
    let fits = h2(50 * 1024)?;
    ensure!(fits.http_code == 200, "HTTP/2, 50 KiB: {}", fits.http_code);
    let over = h2(70 * 1024)?;
    ensure!(
        over.http_code == 431 || (!over.ok() && over.http_code == 0),
        "HTTP/2, 70 KiB: {} {:.200}",
        over.http_code,
        over.stderr
    );
    // A response head over the limit is a 502.
    let got = exchange(
        a,
        "GET /large-head HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n",
    )?;
    ensure!(
        got.starts_with("HTTP/1.1 502 Bad Gateway\r\n"),
        "{}",
        status_line(&got)
    );

    // 200 clients each holding a 59 KiB head unfinished: each costs the proxy one head
    // buffer (64 KiB at most), where hyper's default buffer went to 400 KB.
    let out = a
        .command("python3")
        .args(["-c", SLOW_HEADS_PY, &bearing.process().pid().to_string()])
        .timeout(Duration::from_secs(60))
        .output()?
        .check()?;
    let kib: Vec<u64> = out
        .stdout
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let [before, during] = kib[..] else {
        anyhow::bail!("unexpected output: {:?}", out.stdout);
    };
    let growth = during.saturating_sub(before);
    eprintln!("RSS {before} KiB before, {during} KiB with 200 slow 59 KiB heads: +{growth} KiB");
    ensure!(
        growth < 200 * 150,
        "RSS grew {growth} KiB for 200 slow heads ({before} -> {during} KiB)"
    );
    Ok(())
}

/// What the origin's `/echo` received, from the proxy's response to it.
fn echoed(got: &str) -> &str {
    got.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

#[test]
fn lengths_go_on_as_one_value_and_hosts_are_checked_on_every_path() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["nghttp"])?;
    let topo = Topology::new(&["a"])?;
    let (_origin, _bearing) = setup(&topo, &["--concurrency", "1"])?;
    let a = topo.host("a");
    // Served by hyper from the first request on: the byte path hands HTTP/1.0 over, and a
    // chunked upload takes the rest of its connection there.
    let upload = "POST /echo HTTP/1.1\r\nHost: origin\r\nTransfer-Encoding: chunked\r\n\r\n\
                  0\r\n\r\n";
    for (path, prefix) in [("byte path", ""), ("hyper", upload)] {
        let send = |request: &str| -> Result<String> {
            let got = exchange(a, &format!("{prefix}{request}"))?;
            // The answer to `request`: the last response on the connection.
            let last = got.rfind("HTTP/1.1 ").unwrap_or(0);
            Ok(got[last..].to_string())
        };
        // Repeated equal lengths reach the origin as one field.
        let request = "POST /echo HTTP/1.1\r\nHost: origin\r\nContent-Length: 5\r\n\
                       content-length: 5\r\nConnection: close\r\n\r\nhello";
        let got = send(request)?;
        let received = echoed(&got).to_ascii_lowercase();
        ensure!(
            received.matches("content-length").count() == 1
                && received.contains("content-length: 5\r\n")
                && received.ends_with("hello"),
            "{path}: {request:?} reached the origin as {received:?}"
        );
        let got = send("GET /length-list HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n")?;
        ensure!(
            got.to_ascii_lowercase().matches("content-length").count() == 1
                && got.ends_with("\r\n\r\nok"),
            "{path}: {got:?}"
        );
        for (request, why) in [
            (
                "GET /echo HTTP/1.1\r\nHost: origin\r\nHost: origin\r\n\r\n",
                "more than one host",
            ),
            ("GET /echo HTTP/1.1\r\nAccept: */*\r\n\r\n", "missing host"),
            (
                "GET /echo HTTP/1.1\r\nHost: a.example/evil\r\n\r\n",
                "invalid host",
            ),
            (
                "GET /echo HTTP/1.1\r\nHost: user@a.example\r\n\r\n",
                "invalid host",
            ),
            (
                "POST /echo HTTP/1.1\r\nHost: origin\r\nContent-Length: 5, 5\r\n\r\nhello",
                "",
            ),
            (
                "POST /echo HTTP/1.1\r\nHost: origin\r\nContent-Length: 5, 6\r\n\r\nhello",
                "",
            ),
        ] {
            let got = send(request)?;
            ensure!(
                got.starts_with("HTTP/1.1 400 Bad Request\r\n") && got.contains(why),
                "{path}: {request:?} answered {got:?}"
            );
        }
        // Absolute form: the target's authority is the host, whatever the Host field says.
        let got = send("GET http://origin.target/echo HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")?;
        let received = echoed(&got).to_ascii_lowercase();
        ensure!(
            received.contains("host: origin.target\r\n") && !received.contains("evil"),
            "{path}: absolute form reached the origin as {received:?}"
        );
    }
    // HTTP/1.0 may leave Host out.
    let got = exchange(a, "GET /echo HTTP/1.0\r\n\r\n")?;
    ensure!(got.starts_with("HTTP/1.0 200 OK\r\n"), "{got:?}");
    // HTTP/2: host and :authority must agree (curl sends Host as :authority, nghttp both).
    let h2 = |host: &str| -> Result<String> {
        let out = a
            .command("nghttp")
            .args([
                "-v",
                "-H",
                &format!("host: {host}"),
                "http://127.0.0.1:10001/echo",
            ])
            .timeout(Duration::from_secs(10))
            .output()?;
        Ok(out.stdout)
    };
    let same = h2("127.0.0.1:10001")?;
    ensure!(
        same.contains(":status: 200"),
        "HTTP/2 with host = :authority: {same:.600}"
    );
    let differs = h2("other.example")?;
    ensure!(
        differs.contains(":status: 400"),
        "HTTP/2 host differing from :authority: {differs:.600}"
    );
    Ok(())
}

#[test]
fn malformed_bodies_bad_statuses_and_connect_are_refused_clearly() -> Result<()> {
    require_root_and_tools()?;
    let topo = Topology::new(&["a"])?;
    let (_origin, _bearing) = setup(&topo, &["--concurrency", "1"])?;
    let a = topo.host("a");
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: origin\r\n\r\n");
    let last = "GET /connection HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n";
    // Invalid responses are 502s on the byte path and the client connection goes on.
    for path in [
        "/bad-chunk",
        "/status-099",
        "/status-600",
        "/http10-chunked",
        "/garbage",
    ] {
        let got = exchange(a, &[&get(path), last].concat())?;
        ensure!(
            got.starts_with("HTTP/1.1 502 Bad Gateway\r\n") && got.contains("connection "),
            "{path}: {got:?}"
        );
    }
    // None of those upstream connections went back to the pool: each was a new one, and so
    // is the next.
    let got = exchange(a, last)?;
    ensure!(got.ends_with("connection 6"), "{got:?}");
    // The same through hyper (HTTP/1.0 requests); there a response head goes downstream before
    // its body is read, as with Envoy, so a malformed chunk can only cut the response short.
    for path in [
        "/status-099",
        "/status-600",
        "/http10-chunked",
        "/large-head",
    ] {
        let got = exchange(a, &format!("GET {path} HTTP/1.0\r\nHost: origin\r\n\r\n"))?;
        ensure!(
            got.starts_with("HTTP/1.0 502 Bad Gateway\r\n"),
            "hyper {path}: {got:?}"
        );
    }
    // A malformed chunk in an upload is the client's fault: 400, not an upstream failure.
    let bad_upload = "POST /echo HTTP/1.1\r\nHost: origin\r\nTransfer-Encoding: chunked\r\n\r\n\
                      zz\r\nhello\r\n0\r\n\r\n";
    let got = exchange(a, bad_upload)?;
    ensure!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got:?}");
    // CONNECT is refused as Envoy refuses it by default, on both paths.
    let connect = "CONNECT origin:80 HTTP/1.1\r\nHost: origin:80\r\n\r\n";
    let got = exchange(a, connect)?;
    ensure!(got.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{got:?}");
    let got = exchange(a, "CONNECT origin:80 HTTP/1.0\r\nHost: origin:80\r\n\r\n")?;
    ensure!(
        got.starts_with("HTTP/1.0 403 Forbidden\r\n"),
        "hyper: {got:?}"
    );
    // An HTTP/2 GET with a body of unknown length: the origin gets the body.
    let out = a
        .command("curl")
        .args(["-sS", "--http2-prior-knowledge", "-X", "GET", "-T", "-"])
        .arg("http://127.0.0.1:10001/echo")
        .stdin(b"get body".to_vec())
        .timeout(Duration::from_secs(10))
        .output()?
        .check()?;
    ensure!(
        out.stdout.starts_with("GET /echo HTTP/1.1\r\n")
            && out.stdout.ends_with("\r\n\r\nget body"),
        "{:?}",
        out.stdout
    );
    Ok(())
}

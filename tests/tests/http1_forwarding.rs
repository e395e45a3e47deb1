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
                buf += conn.recv(65536)
            body, rest = b"", buf
            while True:
                size, _, rest = rest.partition(b"\r\n")
                if int(size, 16) == 0:
                    break
                body, rest = body + rest[: int(size, 16)], rest[int(size, 16) + 2 :]
            buf = b""
        else:
            while len(buf) < length:
                buf += conn.recv(65536)
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
    data = s.recv(65536)
    if not data:
        break
    out += data
sys.stdout.buffer.write(out)
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
                    X-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\n\r\n\
                    GET /chunked HTTP/1.1\r\nHost: origin\r\n\r\n\
                    GET /no-content HTTP/1.1\r\nHost: origin\r\n\r\n\
                    GET /early HTTP/1.1\r\nHost: origin\r\n\r\n\
                    HEAD /head-length HTTP/1.1\r\nHost: origin\r\n\r\n\
                    POST /echo HTTP/1.1\r\nHost: origin\r\nContent-Length: 4\r\n\r\nbody\
                    GET /until-close HTTP/1.1\r\nHost: origin\r\n\r\n";
    let got = exchange(a, requests)?;
    let echo = |received: &str| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{received}",
            received.len()
        )
    };
    let expected = [
        // Hop-by-hop fields and the ones Connection lists are gone, the rest kept.
        &echo("GET /echo HTTP/1.1\r\nHost: origin\r\nX-Kept: yes\r\n\r\n"),
        // Chunks, extension and trailers byte for byte.
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Origin: raw\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
        "HTTP/1.1 204 No Content\r\nX-Origin: raw\r\n\r\n",
        "HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        // HEAD: the length of the body a GET would have, and no body.
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        &echo("POST /echo HTTP/1.1\r\nHost: origin\r\nContent-Length: 4\r\n\r\nbody"),
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

    // A response that is not HTTP: a 503 naming it, and the client connection goes on.
    let garbage = exchange(
        a,
        &[get("/garbage", false), get("/connection", true)].concat(),
    )?;
    ensure!(
        garbage.starts_with("HTTP/1.1 503 Service Unavailable\r\n")
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

//! End-to-end: what bounds a proxy under load (issue 23): the clusters' circuit breakers,
//! the admin API at the descriptor limit, and gateway mirrors' memory.
//!
//! Origins here are an asyncio HTTP/1.1 server ([`ORIGIN_PY`]) that holds thousands of
//! keep-alive connections, answers each request after a delay, with a body of a given size
//! written in 1 MiB pieces. They run without sidecars: their Dataplanes' inbounds name them,
//! so the proxy under test connects to them directly and `ss` in their host counts its
//! connections.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bearing_e2e::*;

const MESH: &str = "type: Mesh\nname: default\n";

/// `python3 - <port> <delay seconds> <body bytes>`: an HTTP/1.1 origin answering every
/// request with 200 and that many bytes, after the delay.
const ORIGIN_PY: &str = r#"
import asyncio, sys
port, delay, size = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
PIECE = b"x" * min(size, 1 << 20)

async def handle(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await r.readexactly(length)
            if delay:
                await asyncio.sleep(delay)
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
            left = size
            while left:
                n = min(left, len(PIECE))
                w.write(PIECE[:n])
                left -= n
                await w.drain()
            await w.drain()
    except Exception:
        pass
    finally:
        w.close()

async def main():
    server = await asyncio.start_server(handle, "0.0.0.0", port, backlog=8192)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"#;

/// Runs the python `source` in `host` as `bash -c "<shell>"`, where `{py}` in `shell` stands
/// for `python3 <the script>`; logged as `name`.
fn spawn_python(host: &Host, name: &str, source: &str, shell: &str) -> Result<Process> {
    let script = host.dir().join(format!("{name}.py"));
    std::fs::write(&script, source)?;
    let py = format!("python3 {}", script.display());
    host.command("bash")
        .arg("-c")
        .arg(shell.replace("{py}", &py))
        .log_name(name)
        .spawn()
}

/// Starts [`ORIGIN_PY`] on `host:port` (with room for many descriptors) and waits for it.
fn start_origin(host: &Host, port: u16, delay: &str, size: u64) -> Result<Process> {
    let shell = format!("ulimit -n 65536; exec {{py}} {port} {delay} {size}");
    let process = spawn_python(host, &format!("origin-{port}"), ORIGIN_PY, &shell)?;
    host.wait_for_tcp_listener(port, PEER_STARTUP_TIMEOUT, Some(&process))?;
    Ok(process)
}

/// A Dataplane `<service>-1` whose inbound is the origin at `host:port` itself.
fn origin_dp(service: &str, host: &Host, port: u16) -> String {
    dataplane_yaml(
        &format!("{service}-1"),
        host,
        &format!(
            "  inbound:\n  - port: {port}\n    servicePort: {port}\n    tags: {{kuma.io/service: {service}, kuma.io/protocol: http}}\n"
        ),
    )
}

/// The `web` sidecar's Dataplane on `host`: outbound 127.0.0.1:10001 → `service`.
fn web_dp(host: &Host, service: &str) -> String {
    dataplane_yaml(
        "web",
        host,
        &format!(
            "  inbound:\n  - port: 18080\n    servicePort: 8080\n    tags: {{kuma.io/service: web, kuma.io/protocol: http}}\n  outbound:\n  - port: 10001\n    tags: {{kuma.io/service: {service}}}\n"
        ),
    )
}

/// Hosts `a` and `b`, an origin on `b:8081` answering `xxx` after `delay` seconds, and a
/// store where `web` (the sidecar to start on `a`) has outbound 127.0.0.1:10001 to it.
fn web_to_origin(delay: &str) -> Result<(Topology, std::path::PathBuf)> {
    require_root_and_tools()?;
    let topo = Topology::new(&["a", "b"])?;
    let (a, b) = (topo.host("a"), topo.host("b"));
    start_origin(b, 8081, delay, 3)?;
    let store = write_store(
        &topo,
        &[
            ("mesh.yaml", MESH.into()),
            ("web.yaml", web_dp(a, "origin")),
            ("origin.yaml", origin_dp("origin", b, 8081)),
        ],
    )?;
    Ok((topo, store))
}

/// Established TCP connections in `host` matching the `ss` filter `filter`
/// (`sport = :8081`: accepted on 8081; `dport = :8081`: made to it): the smaller of two
/// dumps in a row, since one dump of a table that changes meanwhile may count a socket that
/// closed and the one opened after it.
fn established(host: &Host, filter: &str) -> Result<usize> {
    let count = format!("ss -Htn state established '( {filter} )' | wc -l");
    let out = host.sh(&format!(
        "one=$({count}); two=$({count}); echo $(( one < two ? one : two ))"
    ))?;
    out.stdout.trim().parse().context("ss | wc -l")
}

/// `status codes: N 2xx, N 3xx, N 4xx, N 5xx` of an h2load report.
fn h2load_status_codes(report: &str) -> Option<[u64; 4]> {
    let line = report.lines().find(|l| l.starts_with("status codes:"))?;
    let mut counts = line
        .trim_start_matches("status codes:")
        .split(',')
        .filter_map(|part| part.split_whitespace().next()?.parse().ok());
    Some([
        counts.next()?,
        counts.next()?,
        counts.next()?,
        counts.next()?,
    ])
}

/// One h2c client with 20 connections × 200 streams through a sidecar to an origin answering
/// after 2 s: the sidecar opens at most 1024 connections to the cluster (Envoy's default
/// `max_connections`), requests past them wait (up to 1024) or get Envoy's overflow 503,
/// counted, and `/ready` answers 200 throughout.
#[test]
fn a_cluster_holds_at_most_1024_connections_and_refuses_the_overflow() -> Result<()> {
    require_tools(&["h2load"])?;
    let (topo, store) = web_to_origin("2")?;
    let (a, b) = (topo.host("a"), topo.host("b"));
    let proxy = Bearing::start(a, &store, &["--name", "web"])?;

    let done = AtomicBool::new(false);
    // Counted by the proxy, and by `ss` on either side. `ss` reads the socket table in
    // pieces while connections close and open (each waiting request opens one), so under
    // this churn it may still count a few sockets that were never open at the same time.
    let (most, most_held) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let most_counted = AtomicUsize::new(0);
    let connections_active = "bearing_cluster_upstream_connections_active{cluster=\"origin\"}";
    let not_ready = AtomicUsize::new(0);
    let mut overflow_reply = None;
    let report = std::thread::scope(|scope| -> Result<String> {
        let watcher = scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if let Ok(n) = established(a, "dport = :8081") {
                    most_held.fetch_max(n, Ordering::Relaxed);
                }
                if let Ok(n) = established(b, "sport = :8081") {
                    most.fetch_max(n, Ordering::Relaxed);
                }
                if let Ok(n) = proxy.metric(connections_active) {
                    most_counted.fetch_max(n as usize, Ordering::Relaxed);
                }
                if !matches!(proxy.admin("GET", "/ready"), Ok((200, _))) {
                    not_ready.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let load = scope.spawn(|| {
            a.command("h2load")
                .args(["-c20", "-m200", "-n40000", "-t2"])
                .arg("http://127.0.0.1:10001/")
                .timeout(Duration::from_secs(120))
                .output()
        });
        // While the queue is full, a request gets Envoy's overflow reply. Probe only when the
        // proxy reports a full queue: a probe sent while a slot is free waits in it for the
        // slow origin, and the load may run out of requests meanwhile.
        let pending = "bearing_cluster_upstream_requests_pending{cluster=\"origin\"}";
        let deadline = Instant::now() + Duration::from_secs(20);
        while overflow_reply.is_none() && Instant::now() < deadline && !load.is_finished() {
            if !matches!(proxy.metric(pending), Ok(n) if n >= 1024.0) {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            let out = curl_output(a, ["-si", "-m", "5", "http://127.0.0.1:10001/"])?;
            if out.body.starts_with("HTTP/1.1 503") {
                overflow_reply = Some(out.body);
            }
        }
        let out = load
            .join()
            .map_err(|_| anyhow::anyhow!("h2load thread panicked"))??;
        done.store(true, Ordering::Relaxed);
        let _ = watcher.join();
        Ok(out.stdout)
    })?;
    let [ok, _, _, failed] = h2load_status_codes(&report)
        .with_context(|| format!("no status codes in the h2load report:\n{report}"))?;
    let most_counted = most_counted.load(Ordering::Relaxed);
    let (most, most_held) = (
        most.load(Ordering::Relaxed),
        most_held.load(Ordering::Relaxed),
    );
    let cluster = "cluster=\"origin\"";
    let pending_overflow = proxy.metric(&format!(
        "bearing_cluster_upstream_rq_pending_overflow_total{{{cluster}}}"
    ))?;
    let cx_overflow = proxy.metric(&format!(
        "bearing_cluster_upstream_cx_overflow_total{{{cluster}}}"
    ))?;
    // A request still waiting for a connection at its timeout (15 s) gets Envoy's 504.
    let timed_out = proxy.metric(&format!(
        "bearing_cluster_upstream_rq_timeout_total{{{cluster}}}"
    ))?;
    eprintln!(
        "h2load: {ok} 2xx, {failed} 5xx; most upstream connections {most_counted} counted, {most_held} and {most} by ss in the proxy's and the origin's host; \
         rq_pending_overflow {pending_overflow}, rq_timeout {timed_out}, cx_overflow {cx_overflow}"
    );
    ensure!(
        (900..=1024).contains(&most_counted),
        "the sidecar counted up to {most_counted} connections to the origin (limit 1024)"
    );
    ensure!(
        most_held.max(most) <= 1024 + 32,
        "ss saw up to {most_held} connections in the proxy's host, {most} in the origin's \
         (limit 1024, plus what a dump under churn may count twice)"
    );
    ensure!(
        ok > 0 && failed > 0,
        "h2load: {ok} 2xx, {failed} 5xx:\n{report}"
    );
    // The probe's 503 is counted too.
    let refused = failed + u64::from(overflow_reply.is_some());
    ensure!(
        refused as f64 == pending_overflow + timed_out && cx_overflow > 0.0,
        "{refused} 5xx against rq_pending_overflow {pending_overflow} + rq_timeout {timed_out}, \
         cx_overflow {cx_overflow}"
    );
    let reply = overflow_reply.context("no request got the overflow reply during the load")?;
    let reply = reply.to_ascii_lowercase();
    ensure!(
        reply.contains("x-envoy-overloaded: true")
            && reply.ends_with(
                "upstream connect error or disconnect/reset before headers. reset reason: overflow"
            ),
        "overflow reply: {reply}"
    );
    ensure!(
        not_ready.load(Ordering::Relaxed) == 0,
        "/ready failed {} times during the load",
        not_ready.load(Ordering::Relaxed)
    );
    // Once the load is gone the cluster gives everything back and serves again.
    let occupancy =
        |gauge: &str| proxy.metric(&format!("bearing_cluster_upstream_{gauge}{{{cluster}}}"));
    wait_until(Duration::from_secs(10), || {
        matches!(
            (occupancy("requests_active"), occupancy("requests_pending")),
            (Ok(r), Ok(p)) if r == 0.0 && p == 0.0
        )
    })
    .context("requests still counted after the load")?;
    let (code, body) = curl(a, ["http://127.0.0.1:10001/"])?;
    ensure!(
        code == 200 && body == "xxx",
        "after the load: {code} {body}"
    );
    Ok(())
}

/// A client holding its `count` connections to `127.0.0.1:<port>` open until stdin closes.
const FLOOD_PY: &str = r#"
import socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    held.append(s)
print("connected", len(held), flush=True)
sys.stdin.read()
"#;

/// With its descriptor limit lowered to 256, a proxy flooded with connections until
/// `accept` fails with EMFILE still answers `/ready` and `/stats/prometheus`, closes the
/// connections it cannot take, and serves again once the flood is gone.
#[test]
fn the_admin_api_answers_at_the_descriptor_limit_and_the_proxy_recovers() -> Result<()> {
    let (topo, store) = web_to_origin("0")?;
    let a = topo.host("a");
    let proxy = Bearing::start_with_nofile(a, &store, &["--name", "web"], 256)?;
    let (code, _) = curl(a, ["http://127.0.0.1:10001/"])?;
    ensure!(code == 200, "before the flood: {code}");

    let shell = "ulimit -n 4096; sleep 3600 | exec {py} 10001 600";
    let flood = spawn_python(a, "flood", FLOOD_PY, shell)?;
    flood.wait_for_log("connected 600", Duration::from_secs(20))?;
    proxy
        .process()
        .wait_for_log("a connection was closed unserved", Duration::from_secs(10))
        .context("the proxy never reached its descriptor limit")?;
    for _ in 0..5 {
        let (code, body) = proxy.admin("GET", "/ready")?;
        ensure!(code == 200, "/ready at the limit: {code} {body}");
        let (code, stats) = proxy.admin("GET", "/stats/prometheus")?;
        ensure!(
            code == 200 && stats.contains("bearing_listener_downstream_connections_active"),
            "/stats/prometheus at the limit: {code}"
        );
    }
    flood.signal_group(Signal::Term)?;
    ensure!(
        flood.wait_exit(Duration::from_secs(10)).is_some(),
        "flood client did not exit"
    );
    wait_until_ok(Duration::from_secs(10), || {
        let (code, body) = curl(a, ["-m", "3", "http://127.0.0.1:10001/"])?;
        ensure!(
            code == 200 && body == "xxx",
            "after the flood: {code} {body}"
        );
        Ok(())
    })?;
    ensure!(proxy.admin("GET", "/ready")?.0 == 200);
    Ok(())
}

/// Peak resident memory of process `pid` (VmHWM), in bytes.
fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmHWM")?;
    Ok(kb * 1024)
}

/// A gateway route mirroring to a backend that answers with 300 MB: the proxy's peak RSS
/// stays far below the body (it is dropped as it streams) and the primary response comes at
/// once, unchanged.
#[test]
fn a_gateway_mirror_response_is_discarded_as_it_streams() -> Result<()> {
    require_root_and_tools()?;
    let topo = Topology::new(&["gw", "b", "client"])?;
    let (gw, b, client) = (topo.host("gw"), topo.host("b"), topo.host("client"));
    const BIG: u64 = 300 << 20;
    start_origin(b, 9001, "0", 3)?;
    start_origin(b, 9003, "0", BIG)?;
    let gateway = dataplane_yaml(
        "gateway-instance-1",
        gw,
        "  gateway:\n    type: BUILTIN\n    tags: {kuma.io/service: edge-gateway}\n",
    );
    let mesh_gateway = "type: MeshGateway\nmesh: default\nname: edge-gateway\nselectors:\n- match: {kuma.io/service: edge-gateway}\nconf:\n  listeners:\n  - {port: 8080, protocol: HTTP, tags: {port: http-8080}}\n";
    let route = "type: MeshGatewayRoute\nmesh: default\nname: mirrored\nselectors:\n- match: {kuma.io/service: edge-gateway, port: http-8080}\nconf:\n  http:\n    rules:\n    - matches: [{path: {match: PREFIX, value: /}}]\n      filters:\n      - mirror: {backend: {destination: {kuma.io/service: svc-mirror}}, percentage: 100}\n      backends:\n      - destination: {kuma.io/service: svc-a}\n";
    let store = write_store(
        &topo,
        &[
            ("mesh.yaml", MESH.into()),
            ("gateway.yaml", gateway),
            ("mesh-gateway.yaml", mesh_gateway.into()),
            ("route.yaml", route.into()),
            ("svc-a.yaml", origin_dp("svc-a", b, 9001)),
            ("svc-mirror.yaml", origin_dp("svc-mirror", b, 9003)),
        ],
    )?;
    let proxy = Bearing::start(gw, &store, &["--name", "gateway-instance-1"])?;
    let pid = proxy.process().pid();
    let before = peak_rss(pid)?;
    let url = format!("http://{}:8080/file", gw.ip4());
    // The byte path (HTTP/1.1) and hyper (HTTP/2 prior knowledge) each send one mirror.
    for extra in ["--http1.1", "--http2-prior-knowledge"] {
        let started = Instant::now();
        let out = curl_output(client, ["-s", extra, "-m", "10", url.as_str()])?;
        let took = started.elapsed();
        ensure!(
            out.http_code == 200 && out.body == "xxx",
            "primary response ({extra}): {} {:?}",
            out.http_code,
            out.body
        );
        ensure!(
            took < Duration::from_secs(2),
            "the primary response ({extra}) took {took:?}"
        );
    }
    let mirrored = "bearing_cluster_upstream_rx_bytes_total{cluster=\"svc-mirror\"}";
    wait_until(Duration::from_secs(60), || {
        proxy.metric(mirrored).is_ok_and(|n| n >= (2 * BIG) as f64)
    })
    .with_context(|| {
        format!(
            "the mirror's two responses were not read to their end: {:?} bytes",
            proxy.metric(mirrored)
        )
    })?;
    let after = peak_rss(pid)?;
    eprintln!(
        "peak RSS {:.1} MB before, {:.1} MB after two 300 MB mirror responses",
        before as f64 / 1e6,
        after as f64 / 1e6
    );
    ensure!(
        after < 60_000_000,
        "peak RSS {after} bytes after mirroring 2 × 300 MB (before: {before})"
    );
    Ok(())
}

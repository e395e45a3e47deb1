//! End-to-end: two (or three) hosts in network namespaces, a real `bearing` sidecar in each,
//! real nginx / redis / python peers, curl and redis-cli as clients.
//!
//! Host `a` runs the client and the `web` sidecar, whose outbounds are:
//! 127.0.0.1:10001 → backend (http, nginx), 10002 → redis (tcp), 10003 → slow (http, python
//! server answering after a delay). Host `b` runs the `backend-1` sidecar in front of them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bearing_e2e::*;

const MESH: &str = "type: Mesh\nname: default\n";

fn web(a: &Host) -> String {
    let networking = r#"  inbound:
  - port: 18080
    servicePort: 8080
    tags: {kuma.io/service: web, kuma.io/protocol: http}
  outbound:
  - port: 10001
    tags: {kuma.io/service: backend}
  - port: 10002
    tags: {kuma.io/service: redis}
  - port: 10003
    tags: {kuma.io/service: slow}
"#;
    dataplane_yaml("web", a, networking)
}

fn backend(name: &str, host: &Host) -> String {
    let networking = r#"  inbound:
  - port: 18080
    servicePort: 80
    tags: {kuma.io/service: backend, kuma.io/protocol: http}
  - port: 16379
    servicePort: 6379
    tags: {kuma.io/service: redis, kuma.io/protocol: tcp}
  - port: 18081
    servicePort: 8081
    tags: {kuma.io/service: slow, kuma.io/protocol: http}
"#;
    dataplane_yaml(name, host, networking)
}

/// Starts the `web` sidecar on `a` and the `backend-1` sidecar on `b`, both ready.
fn sidecars<'t>(a: &'t Host, b: &'t Host, dir: &Path) -> Result<(Bearing<'t>, Bearing<'t>)> {
    let web = Bearing::start(a, dir, &["--name", "web"])?;
    let backend = Bearing::start(b, dir, &["--name", "backend-1"])?;
    Ok((web, backend))
}

const OUT_HTTP: &str = "http://127.0.0.1:10001/";

fn listener_2xx(b: &Bearing, listener: &str) -> Result<f64> {
    b.metric(&format!(
        "bearing_listener_http_requests_total{{listener=\"{listener}\",class=\"2xx\"}}"
    ))
}

/// Topology a+b with nginx (80), redis (6379) and a 1.5 s slow server (8081) on b, and
/// a store with web (a) and backend-1 (b).
fn two_hosts() -> Result<(Topology, PathBuf)> {
    require_root_and_tools()?;
    let topo = Topology::new(&["a", "b"])?;
    let (a, b) = (topo.host("a"), topo.host("b"));
    start_nginx(b, 80)?;
    start_redis(b, 6379)?;
    start_slow_server(b, 8081, Duration::from_millis(1500))?;
    let dir = write_store(
        &topo,
        &[
            ("mesh.yaml", MESH.into()),
            ("web.yaml", web(a)),
            ("backend-1.yaml", backend("backend-1", b)),
        ],
    )?;
    Ok((topo, dir))
}

#[test]
fn http_and_tcp_cross_outbound_and_inbound() -> Result<()> {
    let (topo, dir) = two_hosts()?;
    let (a, b) = (topo.host("a"), topo.host("b"));
    let (pa, pb) = sidecars(a, b, &dir)?;

    let (code, body) = curl(a, [OUT_HTTP])?;
    ensure!(code == 200, "status {code}: {body}");
    ensure!(
        body.contains(&format!("hello from {}", b.name())),
        "body: {body}"
    );
    // Keep-alive: several requests on one client connection all succeed.
    let out = curl_output(a, [OUT_HTTP, OUT_HTTP, OUT_HTTP])?;
    ensure!(out.exit_code == Some(0), "curl: {}", out.stderr);

    ensure!(listener_2xx(&pa, "outbound:127.0.0.1:10001")? >= 4.0);
    let inbound = format!("inbound:{}:18080", b.ip4());
    ensure!(
        listener_2xx(&pb, &inbound)? >= 4.0,
        "the request crossed b's inbound"
    );

    // TCP: redis through outbound 10002 → b's inbound 16379 → redis-server.
    let pong = redis_cli(a, [127, 0, 0, 1], 10002, ["PING"])?;
    ensure!(pong == "PONG", "redis answered {pong:?}");
    redis_cli(a, [127, 0, 0, 1], 10002, ["SET", "bearing", "works"])?;
    let got = redis_cli(a, [127, 0, 0, 1], 10002, ["GET", "bearing"])?;
    ensure!(got == "works", "GET answered {got:?}");
    let tcp_conns = pb.metric(&format!(
        "bearing_listener_downstream_connections_total{{listener=\"inbound:{}:16379\"}}",
        b.ip4()
    ))?;
    ensure!(
        tcp_conns >= 3.0,
        "b's tcp inbound saw {tcp_conns} connections"
    );
    Ok(())
}

#[test]
fn http2_prior_knowledge_through_the_sidecars() -> Result<()> {
    let (topo, dir) = two_hosts()?;
    let (a, b) = (topo.host("a"), topo.host("b"));
    let (_pa, _pb) = sidecars(a, b, &dir)?;
    let out = a.run(
        "curl",
        [
            "-sS",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            OUT_HTTP,
        ],
    )?;
    ensure!(
        out.stdout.trim() == "200 2",
        "curl said {:?} {}",
        out.stdout,
        out.stderr
    );
    Ok(())
}

#[test]
fn store_change_applies_live_without_failed_requests() -> Result<()> {
    require_root_and_tools()?;
    let topo = Topology::new(&["a", "b", "c"])?;
    let (a, b, c) = (topo.host("a"), topo.host("b"), topo.host("c"));
    start_nginx(b, 80)?;
    start_nginx(c, 80)?;
    let dir = write_store(
        &topo,
        &[
            ("mesh.yaml", MESH.into()),
            ("web.yaml", web(a)),
            ("backend-1.yaml", backend("backend-1", b)),
        ],
    )?;
    let (pa, _pb) = sidecars(a, b, &dir)?;
    let _pc = Bearing::start(
        c,
        &dir,
        &[
            "--name",
            "backend-2",
            "--dataplane",
            &backend("backend-2", c),
        ],
    )?;
    let before = pa.config_dump()?["version"].clone();

    // 300 requests over ~6 s on fresh connections, while the store changes under them.
    let client = a.spawn(
        "bash",
        [
            "-c",
            "for i in $(seq 1 300); do curl -s -o /dev/null -w '%{http_code}\\n' --max-time 5 http://127.0.0.1:10001/; sleep 0.02; done",
        ],
    )?;
    std::thread::sleep(Duration::from_millis(1500));
    write_store_file(&dir, "backend-2.yaml", &backend("backend-2", c))?;
    wait_until(Duration::from_secs(10), || {
        pa.config_dump().is_ok_and(|d| d["version"] != before)
    })?;
    client
        .wait_exit(Duration::from_secs(60))
        .context("client loop did not finish")?;
    let codes = client.log_contents();
    let total = codes.lines().count();
    let failed: Vec<&str> = codes.lines().filter(|l| l.trim() != "200").collect();
    ensure!(total == 300, "client made {total} requests");
    ensure!(
        failed.is_empty(),
        "{} failed requests: {failed:?}",
        failed.len()
    );

    // The new endpoint really took traffic after the change.
    let c_inbound = format!("inbound:{}:18080", c.ip4());
    ensure!(
        listener_2xx(&_pc, &c_inbound)? > 0.0,
        "backend-2 got no requests"
    );
    let endpoints = pa.config_dump()?["config"]["clusters"]["backend"]["endpoints"]
        .as_array()
        .map_or(0, Vec::len);
    ensure!(endpoints == 2, "backend has {endpoints} endpoints");
    Ok(())
}

#[test]
fn invalid_store_change_is_rejected_and_old_config_serves() -> Result<()> {
    let (topo, dir) = two_hosts()?;
    let (a, b) = (topo.host("a"), topo.host("b"));
    let (pa, _pb) = sidecars(a, b, &dir)?;
    let good = pa.config_dump()?["version"].clone();

    // A port out of range on line 7 of a new file, and an unknown field elsewhere.
    write_store_file(
        &dir,
        "broken.yaml",
        "type: Dataplane\nname: broken\nmesh: default\nnetworking:\n  address: 10.9.9.9\n  inbound:\n  - port: 70000\n    tags: {kuma.io/service: broken}\n",
    )?;
    let dump = wait_until_ok(Duration::from_secs(10), || {
        let d = pa.config_dump()?;
        ensure!(!d["last_rejected"].is_null(), "not rejected yet");
        Ok(d)
    })?;
    let problems = dump["last_rejected"]["problems"].to_string();
    ensure!(
        problems.contains("broken.yaml:7: Dataplane/broken: networking.inbound[0].port: port 70000 must be in the range 1-65535"),
        "{problems}"
    );
    ensure!(
        dump["version"] == good,
        "version moved to {}",
        dump["version"]
    );
    let (code, _) = curl(a, [OUT_HTTP])?;
    ensure!(code == 200, "old config stopped serving: {code}");
    ensure!(pa.metric("bearing_config_rejected_total")? >= 1.0);
    ensure!(
        pa.process().log_contents().contains("broken.yaml:7"),
        "rejection not logged"
    );

    // `bearing validate` names the same problem and exits 1.
    let out = a.run(bearing_bin()?, [Path::new("validate"), dir.as_path()])?;
    ensure!(out.code() == Some(1), "validate exit {:?}", out.code());
    ensure!(
        out.stdout.contains("broken.yaml:7: Dataplane/broken"),
        "{}",
        out.stdout
    );

    // Fixing the file applies again.
    std::fs::remove_file(dir.join("broken.yaml"))?;
    write_store_file(
        &dir,
        "unknown-kind.yaml",
        "type: MeshTimeout\nname: t\nmesh: default\nspec: {}\n",
    )?;
    wait_until(Duration::from_secs(10), || {
        pa.config_dump()
            .is_ok_and(|d| d["ignored"].to_string().contains("MeshTimeout"))
    })?;
    let (code, _) = curl(a, [OUT_HTTP])?;
    ensure!(code == 200);
    Ok(())
}

#[test]
fn sigterm_drains_an_in_flight_slow_response() -> Result<()> {
    let (topo, dir) = two_hosts()?;
    let (a, b) = (topo.host("a"), topo.host("b"));
    let (pa, _pb) = sidecars(a, b, &dir)?;

    let slow = a.spawn(
        "curl",
        [
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            "http://127.0.0.1:10003/",
        ],
    )?;
    // Let the request reach the slow server (it answers after 1.5 s), then stop the sidecar.
    wait_until(Duration::from_secs(5), || {
        pa.metric(
            "bearing_listener_downstream_connections_active{listener=\"outbound:127.0.0.1:10003\"}",
        )
        .is_ok_and(|n| n >= 1.0)
    })?;
    std::thread::sleep(Duration::from_millis(200));
    pa.process().signal(Signal::Term)?;
    wait_until(Duration::from_secs(2), || {
        pa.admin("GET", "/ready").is_ok_and(|(code, _)| code == 503)
    })
    .context("/ready did not turn 503 while draining")?;
    wait_until(Duration::from_secs(2), || {
        !a.tcp_listening(10001).unwrap_or(true)
    })
    .context("listeners still accept while draining")?;

    let status = slow
        .wait_exit(Duration::from_secs(10))
        .context("curl hung")?;
    ensure!(status.success(), "curl failed: {}", slow.log_contents());
    ensure!(
        slow.log_contents().trim() == "200",
        "in-flight request got {}",
        slow.log_contents()
    );
    let exit = pa
        .process()
        .wait_exit(Duration::from_secs(10))
        .context("bearing did not exit")?;
    ensure!(exit.success(), "bearing exited with {exit}");
    Ok(())
}

#[test]
fn unreachable_endpoints_fail_over_then_fail_clearly() -> Result<()> {
    require_root_and_tools()?;
    let topo = Topology::new(&["a", "b"])?;
    let (a, b) = (topo.host("a"), topo.host("b"));
    start_nginx(b, 80)?;
    // backend-1 on b is up; backend-dead claims an address in the subnet where no one listens.
    let dead_ip = {
        let o = a.ip4().octets();
        format!("{}.{}.{}.{}", o[0], o[1], o[2], 200)
    };
    let dead = backend("backend-dead", b).replace(&b.ip4().to_string(), &dead_ip);
    let dir = write_store(
        &topo,
        &[
            ("mesh.yaml", MESH.into()),
            ("web.yaml", web(a)),
            ("backend-1.yaml", backend("backend-1", b)),
            ("backend-dead.yaml", dead),
        ],
    )?;
    let (pa, _pb) = sidecars(a, b, &dir)?;

    // Round robin hits the unreachable endpoint; each request goes there after its connect
    // timeout (5 s) to the live one, as Kuma's default MeshRetry (`connect-failure`) asks:
    // every request must still succeed.
    for _ in 0..3 {
        let (code, body) = curl(a, [OUT_HTTP])?;
        ensure!(code == 200, "status {code}: {body}");
    }
    ensure!(
        pa.metric("bearing_cluster_upstream_connect_failures_total{cluster=\"backend\"}")? >= 1.0
    );

    // With backend-1 gone and the other endpoint refusing, HTTP gets a 503 naming the cause
    // once its retries are spent, and TCP gets a reset once its connect attempts are.
    let refusing = backend("backend-dead", b)
        .replace("port: 18080", "port: 28080")
        .replace("port: 16379", "port: 26379")
        .replace("port: 18081", "port: 28081");
    std::fs::write(dir.join("backend-dead.yaml"), refusing)?;
    std::fs::remove_file(dir.join("backend-1.yaml"))?;
    let refused = format!("{}:28080", b.ip4());
    wait_until(Duration::from_secs(10), || {
        pa.config_dump().is_ok_and(|d| {
            d["config"]["clusters"]["backend"]["endpoints"]
                .as_array()
                .is_some_and(|e| e.len() == 1 && e[0]["address"] == refused.as_str())
        })
    })?;
    let (code, body) = curl(a, [OUT_HTTP])?;
    ensure!(code == 503, "status {code}");
    ensure!(body.contains("upstream connect error"), "body: {body}");
    ensure!(pa.metric("bearing_cluster_no_healthy_upstream_total{cluster=\"backend\"}")? >= 1.0);
    ensure!(
        pa.metric("bearing_listener_http_requests_total{listener=\"outbound:127.0.0.1:10001\",class=\"5xx\"}")? >= 1.0
    );
    let out = a.run("redis-cli", ["-h", "127.0.0.1", "-p", "10002", "PING"])?;
    ensure!(
        !out.stdout.contains("PONG"),
        "redis reached through a dead cluster?"
    );
    ensure!(
        out.stderr.contains("Connection reset by peer"),
        "expected a reset, got {out:?}"
    );
    Ok(())
}

#[test]
fn port_in_use_is_reported_and_other_listeners_serve() -> Result<()> {
    let (topo, dir) = two_hosts()?;
    let (a, b) = (topo.host("a"), topo.host("b"));
    // Something else already listens on the `slow` outbound's port.
    let squatter = a.spawn(
        "python3",
        ["-m", "http.server", "10003", "--bind", "127.0.0.1"],
    )?;
    a.wait_for_tcp_listener(10003, Duration::from_secs(10), Some(&squatter))?;
    let pa = Bearing::spawn(a, &dir, &["--name", "web"])?;
    let _pb = Bearing::start(b, &dir, &["--name", "backend-1"])?;

    let dump = wait_until_ok(Duration::from_secs(10), || {
        let d = pa.config_dump()?;
        ensure!(!d["config"].is_null(), "no config yet");
        Ok(d)
    })?;
    let errors = dump["listener_errors"].to_string();
    ensure!(
        errors.contains("outbound:127.0.0.1:10003") && errors.contains("in use"),
        "{errors}"
    );
    let (code, _) = pa.admin("GET", "/ready")?;
    ensure!(code == 503, "/ready {code} with a listener unbound");
    let (code, _) = curl(a, [OUT_HTTP])?;
    ensure!(code == 200, "other listeners must keep serving, got {code}");

    // Once the port is free the listener binds without any config change.
    squatter.kill();
    pa.wait_ready()
        .context("listener not bound after the port was freed")?;
    let (code, _) = curl(a, ["http://127.0.0.1:10003/"])?;
    ensure!(code == 200, "slow outbound answered {code}");
    Ok(())
}

#[test]
fn concurrent_http2_requests_share_one_upstream_connection_per_worker() -> Result<()> {
    require_root_and_tools()?;
    let topo = Topology::new(&["a"])?;
    let a = topo.host("a");
    let _origin = NginxConfig::new(80)
        .http_snippet(
            "server { listen 0.0.0.0:8082 http2; location / { return 200 \"h2 origin\\n\"; } }",
        )
        .start(a)?;
    a.wait_for_tcp_listener(8082, Duration::from_secs(10), None)?;
    // 8083: nothing listens there.
    let networking = "  inbound:\n  - port: 18082\n    servicePort: 8082\n    tags: {kuma.io/service: h2, kuma.io/protocol: http2}\n  - port: 18083\n    servicePort: 8083\n    tags: {kuma.io/service: h2-down, kuma.io/protocol: http2}\n";
    let dir = write_store(
        &topo,
        &[
            ("mesh.yaml", MESH.into()),
            ("h2.yaml", dataplane_yaml("h2", a, networking)),
        ],
    )?;
    let proxy = Bearing::start(a, &dir, &["--name", "h2", "--concurrency", "1"])?;
    // 20 streams at once on one client connection: they reach the worker together, before
    // any upstream connection exists. `expect` is in h2load's summary.
    let burst = |port: u16, expect: &str| -> Result<()> {
        let url = format!("http://{}:{port}/", a.ip4());
        let out = a.run("h2load", ["-n", "20", "-c", "1", "-m", "20", &url])?;
        ensure!(
            out.stdout.contains(expect),
            "h2load said {} {}",
            out.stdout,
            out.stderr
        );
        Ok(())
    };
    burst(18082, "20 succeeded, 0 failed")?;
    let opened =
        proxy.metric("bearing_cluster_upstream_connections_total{cluster=\"localhost:8082\"}")?;
    ensure!(
        opened == 1.0,
        "20 concurrent requests opened {opened} upstream HTTP/2 connections, not 1"
    );
    // Requests waiting for a connection that cannot be opened all get the failure, at once.
    burst(18083, "0 2xx, 0 3xx, 0 4xx, 20 5xx")?;
    // Counted per attempt, not per waiting request (one attempt, or two if the streams
    // arrived in two reads on either side of the first failure).
    let failed = proxy
        .metric("bearing_cluster_upstream_connect_failures_total{cluster=\"localhost:8083\"}")?;
    ensure!(
        (1.0..=2.0).contains(&failed),
        "{failed} failed connection attempts counted for 20 requests"
    );
    Ok(())
}

/// Sends `head` to the admin API one byte every 500 ms and prints the seconds until the
/// connection was closed (or `open` after 40 s).
const SLOWLORIS_PY: &str = r#"
import socket, sys, time
s = socket.create_connection(("127.0.0.1", 9901))
s.settimeout(0.5)
start = time.time()
head = sys.argv[1].encode()
i = 0
while time.time() - start < 40:
    try:
        if i < len(head):
            s.send(head[i:i + 1])
            i += 1
        if s.recv(1) == b"":
            print("%.1f" % (time.time() - start)); sys.exit(0)
    except socket.timeout:
        continue
    except OSError:
        print("%.1f" % (time.time() - start)); sys.exit(0)
print("open")
"#;

#[test]
fn admin_api_refuses_foreign_hosts_browsers_and_slow_heads() -> Result<()> {
    let (topo, dir) = two_hosts()?;
    let a = topo.host("a");
    let web = Bearing::start(a, &dir, &["--name", "web"])?;
    let admin = |args: &[&str]| -> Result<(u16, String)> {
        let mut all = vec!["-m", "5"];
        all.extend_from_slice(args);
        curl(a, all)
    };
    let drain = "http://127.0.0.1:9901/drain_listeners";

    // DNS rebinding: the browser addresses the attacker's name.
    let (code, body) = admin(&["-X", "POST", "-H", "Host: attacker.example", drain])?;
    ensure!(
        code == 403 && body.contains("attacker.example") && body.contains("loopback"),
        "foreign Host: {code} {body:?}"
    );
    let (code, _) = admin(&[
        "-H",
        "Host: attacker.example:9901",
        "http://127.0.0.1:9901/config_dump",
    ])?;
    ensure!(code == 403, "foreign Host on a read: {code}");
    // CSRF: a page's POST carries its Origin.
    let (code, body) = admin(&["-X", "POST", "-H", "Origin: http://attacker.example", drain])?;
    ensure!(
        code == 403 && body.contains("browser"),
        "Origin: {code} {body:?}"
    );
    // State changes take POST only.
    let (code, body) = admin(&[drain])?;
    ensure!(
        code == 405 && body.contains("POST"),
        "GET drain: {code} {body:?}"
    );
    ensure!(
        web.config_dump()?["draining"] == false,
        "drained by a refused request"
    );
    let (code, _) = web.admin("GET", "/ready")?;
    ensure!(code == 200, "/ready after refused requests: {code}");

    // A head sent a byte at a time is cut at the head timeout (10 s), not held.
    let out = a
        .command("python3")
        .args(["-c", SLOWLORIS_PY, "GET /ready HTTP/1.1\r\nHost: localhost\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"])
        .timeout(Duration::from_secs(60))
        .output()?
        .check()?;
    let held: f64 = out
        .stdout
        .trim()
        .parse()
        .with_context(|| format!("slow head not closed: {:?}", out.stdout))?;
    ensure!((9.0..15.0).contains(&held), "slow head held {held} s");

    // The loopback name, with its port: accepted, and the proxy drains.
    let (code, _) = admin(&["-X", "POST", "-H", "Host: localhost:9901", drain])?;
    ensure!(code == 200, "loopback drain: {code}");
    let (code, body) = web.admin("GET", "/ready")?;
    ensure!(
        code == 503 && body.contains("DRAINING"),
        "/ready: {code} {body:?}"
    );
    Ok(())
}

/// Waits until the proxy's `last_rejected` names `needle`, then checks that the version did not
/// move, the proxy still runs and still serves `url` from `client`.
fn rejected_and_still_serving(
    proxy: &Bearing,
    client: &Host,
    good: &serde_json::Value,
    needle: &str,
) -> Result<()> {
    wait_until_ok(Duration::from_secs(15), || {
        let problems = proxy.config_dump()?["last_rejected"]["problems"].to_string();
        ensure!(problems.contains(needle), "not rejected yet: {problems}");
        Ok(())
    })?;
    ensure!(proxy.process().is_running(), "the proxy died");
    ensure!(
        proxy.config_dump()?["version"] == *good,
        "the version moved"
    );
    let (code, _) = curl(client, [OUT_HTTP])?;
    ensure!(code == 200, "the old config stopped serving: {code}");
    Ok(())
}

/// Peak resident memory of a `bearing` process, in kB (`VmHWM`).
fn peak_rss_kb(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    ensure!(
        status.starts_with("Name:\tbearing"),
        "pid {pid} is not bearing"
    );
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or_else(|| anyhow::anyhow!("no VmHWM"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

#[test]
fn alias_bomb_nul_file_and_unreadable_file_leave_the_running_proxy_serving() -> Result<()> {
    let (topo, dir) = two_hosts()?;
    let (a, b) = (topo.host("a"), topo.host("b"));
    let (web, _backend) = sidecars(a, b, &dir)?;
    let good = web.config_dump()?["version"].clone();
    let (code, _) = curl(a, [OUT_HTTP])?;
    ensure!(code == 200, "no baseline: {code}");

    // A 400-byte "billion laughs" (9^9 nodes): refused at its line, memory stays small.
    let mut bomb = String::from(
        "type: Mesh\nname: bomb\nx0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..9 {
        let p = format!("*x{}", i - 1);
        bomb.push_str(&format!("x{i}: &x{i} [{}]\n", vec![p; 9].join(", ")));
    }
    write_store_file(&dir, "bomb.yaml", &bomb)?;
    rejected_and_still_serving(
        &web,
        a,
        &good,
        "bomb.yaml:8:10: invalid YAML: aliases repeat more than 100000 nodes",
    )?;
    let peak = peak_rss_kb(web.process().pid())?;
    ensure!(peak < 200_000, "peak RSS {peak} kB after the alias bomb");
    std::fs::remove_file(dir.join("bomb.yaml"))?;

    // The backend's Dataplane file zero-filled: refused, its endpoint stays.
    let size = std::fs::metadata(dir.join("backend-1.yaml"))?.len() as usize;
    write_store_file(&dir, "backend-1.yaml", &"\0".repeat(size))?;
    rejected_and_still_serving(
        &web,
        a,
        &good,
        "backend-1.yaml:1:1: invalid YAML: character U+0000 (NUL) is not allowed in YAML",
    )?;
    let endpoints = &web.config_dump()?["config"]["clusters"]["backend"]["endpoints"];
    ensure!(
        endpoints.as_array().map_or(0, Vec::len) == 1,
        "endpoints: {endpoints}"
    );
    write_store_file(&dir, "backend-1.yaml", &backend("backend-1", b))?;

    // A file that cannot be read (EIO): a read error naming it, no rejection, no change;
    // once it is gone the read error clears.
    let eio = dir.join("eio.yaml");
    std::os::unix::fs::symlink("/proc/self/mem", &eio)?;
    wait_until_ok(Duration::from_secs(15), || {
        let dump = web.config_dump()?;
        let errors = dump["read_error"]["problems"].to_string();
        ensure!(
            errors.contains(&format!(
                "{}:0: cannot read file: Input/output error",
                eio.display()
            )),
            "no read error yet: {errors}"
        );
        ensure!(dump["version"] == good, "the version moved");
        Ok(())
    })?;
    let (code, _) = curl(a, [OUT_HTTP])?;
    ensure!(code == 200, "stopped serving on a read error: {code}");
    ensure!(
        web.process()
            .log_contents()
            .contains("cannot read the store"),
        "read error not logged"
    );
    std::fs::remove_file(&eio)?;
    wait_until_ok(Duration::from_secs(15), || {
        ensure!(
            web.config_dump()?["read_error"].is_null(),
            "read error not cleared"
        );
        Ok(())
    })?;

    // Descriptors exhausted (the proxy's limit set to what it has open) while the store
    // changes: the directory read fails as that I/O error, never as "no Dataplane"; once
    // descriptors are back the next tick reads the store again.
    let pid = web.process().pid();
    // The lowest free descriptor: a limit at it makes the next open fail (EMFILE).
    let open: std::collections::HashSet<usize> = std::fs::read_dir(format!("/proc/{pid}/fd"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let lowest_free = (0..).find(|fd| !open.contains(fd)).unwrap_or(0);
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let soft: usize = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no open file limit in {limits}"))?;
    // Run as the proxy's user (root here lacks CAP_SYS_RESOURCE over another user's
    // process), and the soft limit only: a lowered hard limit could not be raised again.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let id_of = |field: &str| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("0")
            .to_string()
    };
    let (uid, gid) = (id_of("Uid:"), id_of("Gid:"));
    let prlimit = |limit: usize| {
        std::process::Command::new("setpriv")
            .args([
                "--reuid",
                &uid,
                "--regid",
                &gid,
                "--clear-groups",
                "prlimit",
            ])
            .args(["--pid", &pid.to_string(), &format!("--nofile={limit}:")])
            .status()
    };
    ensure!(prlimit(lowest_free)?.success(), "prlimit failed");
    write_store_file(&dir, "mesh.yaml", MESH)?;
    let waited = web.process().wait_for_log(
        "cannot read store directory: Too many open files",
        Duration::from_secs(15),
    );
    ensure!(prlimit(soft)?.success(), "prlimit failed");
    waited?;
    wait_until_ok(Duration::from_secs(15), || {
        let dump = web.config_dump()?;
        ensure!(dump["read_error"].is_null(), "read error not cleared");
        ensure!(dump["version"] == good, "the version moved");
        let rejected = dump["last_rejected"].to_string();
        ensure!(!rejected.contains("no Dataplane"), "{rejected}");
        Ok(())
    })?;
    let (code, _) = curl(a, [OUT_HTTP])?;
    ensure!(
        code == 200,
        "not serving after descriptors came back: {code}"
    );
    Ok(())
}

#[test]
fn mesh_traffic_permission_deny_fails_closed_on_the_inbound_it_targets() -> Result<()> {
    let (topo, dir) = two_hosts()?;
    let (a, b) = (topo.host("a"), topo.host("b"));
    let (_web, backend) = sidecars(a, b, &dir)?;
    let (code, _) = curl(a, [OUT_HTTP])?;
    ensure!(code == 200, "no baseline: {code}");

    let policy = "type: MeshTrafficPermission\nname: deny-backend\nmesh: default\nspec:\n  targetRef: {kind: MeshService, name: backend}\n  from:\n  - targetRef: {kind: Mesh}\n    default:\n      action: Deny\n";
    write_store_file(&dir, "mtp.yaml", policy)?;
    let http_inbound = format!("inbound:{}:18080", b.ip4());
    wait_until_ok(Duration::from_secs(15), || {
        let dump = backend.config_dump()?;
        let listeners = dump["config"]["listeners"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let denied = listeners
            .iter()
            .find(|l| l["name"] == http_inbound.as_str())
            .map(|l| l["deny_all"].clone());
        ensure!(
            denied == Some("MeshTrafficPermission/deny-backend".into()),
            "not applied yet: {denied:?}"
        );
        Ok(())
    })?;
    // The targeted inbound refuses; the other inbound of the same proxy keeps serving.
    let (code, _) = curl(a, [OUT_HTTP])?;
    ensure!(code == 503, "denied inbound answered {code}");
    let pong = redis_cli(a, [127, 0, 0, 1], 10002, ["PING"])?;
    ensure!(pong == "PONG", "the other inbound stopped: {pong:?}");
    let refused = backend.metric(&format!(
        "bearing_rbac_denied_total{{listener=\"{http_inbound}\"}}"
    ))?;
    ensure!(refused >= 1.0, "refusals not counted: {refused}");
    let dump = backend.config_dump()?;
    let not_enforced = dump["not_enforced"].to_string();
    ensure!(
        not_enforced.contains("mtp.yaml:9: MeshTrafficPermission/deny-backend: spec.from[0].default.action: Deny is not enforced per source by Bearing"),
        "{not_enforced}"
    );
    let log = backend.process().log_contents();
    let logged = log
        .lines()
        .filter(|l| l.contains("refusing every connection") && l.contains("deny-backend"))
        .count();
    ensure!(logged == 1, "logged {logged} times:\n{log}");

    // `bearing validate` prints the warning and exits 0: a warning is not an error.
    let out = a.run(bearing_bin()?, [Path::new("validate"), dir.as_path()])?;
    ensure!(
        out.code() == Some(0),
        "validate exit {:?}: {}",
        out.code(),
        out.stdout
    );
    ensure!(
        out.stdout
            .contains("MeshTrafficPermission/deny-backend: spec.from[0].default.action"),
        "{}",
        out.stdout
    );

    // Removing the policy restores the inbound.
    std::fs::remove_file(dir.join("mtp.yaml"))?;
    wait_until_ok(Duration::from_secs(15), || {
        let (code, _) = curl(a, [OUT_HTTP])?;
        ensure!(code == 200, "still refused: {code}");
        Ok(())
    })?;
    Ok(())
}

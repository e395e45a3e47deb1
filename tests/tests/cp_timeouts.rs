//! MeshTimeout as kuma-cp renders it, enforced by a sidecar fed only by `bearing-test-cp`:
//! the demo client's outbound from the golden `meshtimeout/outbound-route` (its routes'
//! `idle_timeout`, MeshTimeout's `http.streamIdleTimeout`, set to 1 s) and a TCP outbound
//! whose `tcp_proxy.idle_timeout` (MeshTimeout's `idleTimeout`) is 1 s.
//!
//! - An origin silent for 3 s gets the client Envoy's 504 `stream timeout` after about 1 s;
//!   one answering at once is served.
//! - A TCP connection that stops moving is closed on both sides about 1 s after its last
//!   byte; one that keeps moving every 300 ms lives on past it.
//!
//! Then Envoy 1.40, fed the same resources by the same CP in the client's place, does the
//! same.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bearing_e2e::*;
use serde_json::{json, Value};

/// The test CP binary.
const TEST_CP: &str = env!("CARGO_BIN_EXE_bearing-test-cp");

const GOLDEN: &str = "envoyconfig-e2e/sidecars/meshtimeout/outbound-route.demo-client.golden.json";
/// The mesh of the golden.
const MESH: &str = "envoyconfig";
/// The MeshService cluster of test-server (HTTP) in the golden.
const SERVER_CLUSTER: &str = "envoyconfig_test-server__kuma-3_msvc_80";
/// The TCP outbound's cluster (the HTTP one renamed).
const TCP_CLUSTER: &str = "envoyconfig_test-server__kuma-3_msvc_6379";
/// The HTTP origin (python, `?delay=` holds the answer) and the TCP one (redis).
const APP_PORT: u16 = 8080;
const REDIS_PORT: u16 = 6379;

/// A python client in `host` that connects to 127.0.0.1:10002, sends `PING` every `every`
/// seconds `times` times (reading each `+PONG`), then waits; prints the seconds from its last
/// byte until the proxy closed the connection, or `open` after `wait` seconds.
fn tcp_client(host: &Host, every: f64, times: u32, wait: f64) -> Result<String> {
    let script = format!(
        r#"
import socket, time
s = socket.create_connection(("127.0.0.1", 10002))
for _ in range({times}):
    s.sendall(b"PING\r\n")
    assert s.recv(64).startswith(b"+PONG")
    time.sleep({every})
last = time.monotonic() - {every}
s.settimeout({wait})
try:
    data = s.recv(64)
    print("closed %.2f" % (time.monotonic() - last) if data == b"" else "data")
except socket.timeout:
    print("open")
except ConnectionResetError:
    print("closed %.2f" % (time.monotonic() - last))
"#
    );
    let out = host.command("python3").args(["-c", &script]).output()?;
    ensure!(out.success(), "the TCP client failed: {out:?}");
    Ok(out.stdout.trim().to_string())
}

/// Seconds of a `closed <s>` line.
fn closed_after(line: &str) -> Option<f64> {
    line.strip_prefix("closed ")?.parse().ok()
}

/// The CP's PKI in `topo` named `name`, its mesh CA and the demo client's leaf of it.
fn client_pki(topo: &Topology, name: &str) -> Result<(CpPki, TestCa, CertFiles)> {
    let pki = CpPki::new(topo.dir(), name, topo.host("cp"))?;
    let mesh_ca = TestCa::new(&pki.dir, "mesh-ca")?;
    let leaf = mesh_ca.issue("demo-client", &["URI:spiffe://envoyconfig/demo-client"])?;
    Ok((pki, mesh_ca, leaf))
}

/// Adds to `xds` `cluster` with `golden`'s server endpoints at the origin on `backend`, and
/// `outbound` on 127.0.0.1:10001 with its redacted addresses made `web`'s (Envoy parses the
/// connection manager's internal address CIDRs), with the client's mesh identity.
fn add_outbound(
    xds: &mut XdsFile,
    (golden, cluster, mut outbound): (&KumaGolden, Value, Value),
    (web, backend): (&Host, &Host),
    (leaf, mesh_ca): (&CertFiles, &TestCa),
) -> Result<()> {
    replace_in_strings(&mut outbound, "IP_REDACTED", &web.ip4().to_string());
    xds.cluster(cluster)?
        .endpoints(
            golden.endpoints(SERVER_CLUSTER)?,
            &[backend.sock4(APP_PORT)],
        )?
        .listener(bound_listener(outbound, ([127, 0, 0, 1], 10001).into()))?
        .mesh_identity(MESH, leaf, mesh_ca)?;
    Ok(())
}

#[test]
fn mesh_timeout_idle_timeouts_end_silent_streams_and_connections() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "redis-server", "python3"])?;
    let topo = Topology::new(&["cp", "web", "backend"])?;
    let (cp, web, backend) = (topo.host("cp"), topo.host("web"), topo.host("backend"));
    let (pki, mesh_ca, leaf) = client_pki(&topo, "cp-timeouts")?;
    let origin = start_http_server(backend, APP_PORT)?;
    let _redis = start_redis(backend, REDIS_PORT)?;

    let golden = KumaGolden::load(GOLDEN)?;
    let mut xds = XdsFile::new();
    xds.golden_inbound(&golden, 3000, 3000, web.sock4(GOLDEN_INBOUND_PORT))?;
    // The server cluster, plaintext HTTP/1.1 to the origins (the timeouts are the client's).
    let cluster = golden.plaintext_cluster(SERVER_CLUSTER, &[])?;
    let assignment = golden.endpoints(SERVER_CLUSTER)?;
    let renamed = |mut value: Value| {
        replace_in_strings(&mut value, SERVER_CLUSTER, TCP_CLUSTER);
        value
    };
    // The golden's outbound: MeshTimeout's route idle timeouts (43 s, 33 s) made 1 s, its
    // request timeouts (42 s, 32 s) 20 s.
    let mut outbound = golden.listener("outbound:IP_REDACTED:80")?;
    let mut routes = 0;
    for route in outbound
        .pointer_mut("/filterChains/0/filters/0/typedConfig/routeConfig/virtualHosts/0/routes")
        .and_then(Value::as_array_mut)
        .context("the outbound's routes")?
    {
        route["route"]["idleTimeout"] = json!("1s");
        route["route"]["timeout"] = json!("20s");
        routes += 1;
    }
    ensure!(
        routes == 3,
        "the golden's outbound has 3 routes, not {routes}"
    );
    let tcp_outbound = json!({
        "name": "outbound:127.0.0.1:10002",
        "address": {"socketAddress": {"address": "127.0.0.1", "portValue": 10002}},
        "trafficDirection": "OUTBOUND",
        "filterChains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "statPrefix": TCP_CLUSTER,
            "cluster": TCP_CLUSTER,
            "idleTimeout": "1s",
        }}]}],
    });
    add_outbound(
        &mut xds,
        (&golden, cluster.clone(), outbound),
        (web, backend),
        (&leaf, &mesh_ca),
    )?;
    xds.cluster(renamed(cluster))?
        .endpoints(renamed(assignment), &[backend.sock4(REDIS_PORT)])?
        .listener(tcp_outbound)?;
    let (_cp, access, sidecar) = pki.golden_client(TEST_CP, cp, web, &xds)?;

    let check = |proxy: &str| -> Result<()> {
        // HTTP: the route's idle timeout ends the wait for a silent origin.
        let quick = curl_output(web, ["http://127.0.0.1:10001/test"])?;
        ensure!(
            quick.http_code == 200 && quick.body == origin.body(),
            "{proxy}: quick origin: {} {}",
            quick.http_code,
            quick.body
        );
        let started = Instant::now();
        let silent = curl_output(web, ["http://127.0.0.1:10001/test?delay=3"])?;
        let took = started.elapsed().as_secs_f64();
        ensure!(
            silent.http_code == 504
                && silent.body == "stream timeout"
                && (0.9..2.5).contains(&took),
            "{proxy}: silent origin after {took} s: {silent:?}"
        );
        // TCP: a quiet connection is closed about 1 s after its last byte, a busy one lives.
        let quiet = tcp_client(web, 0.0, 1, 4.0)?;
        ensure!(
            closed_after(&quiet).is_some_and(|s| (0.9..2.5).contains(&s)),
            "{proxy}: quiet TCP connection: {quiet}"
        );
        let busy = tcp_client(web, 0.3, 10, 0.2)?;
        ensure!(busy == "open", "{proxy}: busy TCP connection: {busy}");
        Ok(())
    };
    check("bearing")?;
    for series in [
        "bearing_listener_downstream_rq_idle_timeout_total{listener=\"outbound:127.0.0.1:10001\"}",
        "bearing_listener_idle_timeout_total{listener=\"outbound:127.0.0.1:10002\"}",
    ] {
        let count = sidecar.metric(series)?;
        ensure!(count == 1.0, "{series} is {count}, not 1");
    }

    // Differential: Envoy 1.40 in Bearing's place, the same resources from the same CP.
    sidecar.process().stop(Duration::from_secs(5));
    let _envoy = access.envoy(web, MESH, "demo-client")?;
    for port in [10001, 10002] {
        web.wait_for_tcp_listener(port, Duration::from_secs(20), None)?;
    }
    check("envoy")
}

/// A python client in `host` probing `to` (`mode`): `upload` sends a POST of 10
/// bytes whose body stops after 2, `head` half a request head, `handover-head` a whole GET
/// with an absolute-form target (which Bearing's byte codec hands over to hyper), reads its
/// answer and then sends half a request head, `h2-head` the HTTP/2 preface, SETTINGS and a
/// HEADERS frame without END_HEADERS (prints `408 <body> rst` once its stream is answered
/// and reset), `idle` one whole GET and then
/// nothing, `h2` the HTTP/2 preface and SETTINGS and then nothing. Prints what came back (a
/// status line and body, `goaway` and its debug data for an HTTP/2 GOAWAY frame, `closed`), with the seconds from
/// its last byte sent (for `idle`, from the response).
fn probe(host: &Host, to: SocketAddr, mode: &str) -> Result<String> {
    let (ip, port) = (to.ip(), to.port());
    let script = format!(
        r#"
import socket, time
s = socket.create_connection(("{ip}", {port}))
s.settimeout(10)
mode = "{mode}"
if mode == "upload":
    s.sendall(b"POST /test?delay=3 HTTP/1.1\r\nHost: test-server\r\nContent-Length: 10\r\n\r\nab")
elif mode == "head":
    s.sendall(b"GET /test HTTP/1.1\r\nHost: test-server\r\n")
elif mode in ("idle", "handover-head"):
    if mode == "idle":
        s.sendall(b"GET /test HTTP/1.1\r\nHost: test-server\r\n\r\n")
    else:
        s.sendall(b"GET http://test-server/test HTTP/1.1\r\nHost: test-server\r\n\r\n")
    got = b""
    while b"\r\n\r\n" not in got:
        got += s.recv(65536)
    head, body = got.split(b"\r\n\r\n", 1)
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < length:
        body += s.recv(65536)
    if mode == "handover-head":
        s.sendall(b"GET /test HTTP/1.1\r\nHost: test-server\r\n")
else:
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    if mode == "h2-head":
        # HEADERS on stream 1 (GET http, END_STREAM) without END_HEADERS.
        s.sendall(b"\x00\x00\x02\x01\x01\x00\x00\x00\x01\x82\x86")
last = time.monotonic()
got = b""
status, body = "", b""
try:
    while True:
        data = s.recv(65536)
        if not data:
            break
        got += data
        while mode.startswith("h2") and len(got) >= 9:
            length = int.from_bytes(got[:3], "big")
            if len(got) < 9 + length:
                break
            kind, stream, payload = got[3], int.from_bytes(got[5:9], "big"), got[9:9 + length]
            got = got[9 + length:]
            if kind == 7:
                debug = payload[8:].decode("latin-1")
                print("goaway%s %.2f" % (" " + debug if debug else "", time.monotonic() - last))
                raise SystemExit
            if stream == 1 and kind == 1 and b"\x03408" in payload:
                status = "408"
            elif stream == 1 and kind == 0:
                body += payload
            elif stream == 1 and kind == 3:
                print("%s %s rst %.2f" % (status, body.decode(), time.monotonic() - last))
                raise SystemExit
except (ConnectionResetError, socket.timeout):
    pass
text = got.decode("latin-1")
answer = "closed"
if text:
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    server = [l.split(":", 1)[1].strip() for l in lines[1:] if l.lower().startswith("server:")]
    answer = lines[0] + "".join(" [server: %s]" % v for v in server) + " " + body
print("%s %.2f" % (answer, time.monotonic() - last))
"#
    );
    let out = host.command("python3").args(["-c", &script]).output()?;
    ensure!(out.success(), "the {mode} probe failed: {out:?}");
    Ok(out.stdout.trim().to_string())
}

/// The seconds at the end of a probe's line, and the rest.
fn timed(line: &str) -> (&str, f64) {
    let (what, secs) = line.rsplit_once(' ').unwrap_or((line, ""));
    (what, secs.parse().unwrap_or(f64::NAN))
}

/// Probes `to` from `host` as `mode` ([`probe`]) and checks that `want` ended it within
/// `window` seconds; `what` names the case for `proxy`'s error.
fn expect_probe(
    (host, to, proxy): (&Host, SocketAddr, &str),
    (mode, what): (&str, &str),
    want: &str,
    window: std::ops::Range<f64>,
) -> Result<()> {
    let line = probe(host, to, mode)?;
    let (ended, secs) = timed(&line);
    ensure!(
        ended == want && window.contains(&secs),
        "{proxy}: {what}: {line}"
    );
    Ok(())
}

/// The request head timeout (0.5 s) probed at `at`: half a head, sent on a new connection
/// (Bearing's byte codec) or after a request Bearing hands over to hyper, gets 408 `request
/// header timeout` about 0.5 s later, with a `server` header of `server` (a gateway's `Kuma
/// Gateway`; Envoy's sidecars write `envoy`, Bearing's none). An HTTP/2 HEADERS frame
/// without END_HEADERS gets, about 0.5 s later, from Envoy `:status 408`, `request header timeout` and RST_STREAM on its
/// stream, from Bearing a GOAWAY saying so (hyper's h2 has no hook for a header block still
/// arriving).
fn expect_stalled_heads(at: (&Host, SocketAddr, &str), server: Option<&str>) -> Result<()> {
    let head = answer_408(server, "request header timeout");
    expect_probe(at, ("head", "stalled head"), &head, 0.4..2.0)?;
    let what = "stalled head after a handed-over request";
    expect_probe(at, ("handover-head", what), &head, 0.4..2.0)?;
    let h2 = match at.2 {
        "envoy" => "408 request header timeout rst",
        _ => "goaway request header timeout",
    };
    expect_probe(at, ("h2-head", "stalled HTTP/2 header block"), h2, 0.4..2.0)
}

/// A probe's line for Envoy's 408 saying `why`, with a `server` header of `server`.
fn answer_408(server: Option<&str>, why: &str) -> String {
    let server = server.map(|s| format!(" [server: {s}]"));
    format!(
        "HTTP/1.1 408 Request Timeout{} {why}",
        server.unwrap_or_default()
    )
}

/// The connection manager's timeouts a sidecar's and a gateway's listeners share, probed at
/// `at`: a stalled upload gets 408 `request timeout` after about 1 s (with a `server` header
/// of `server`), an idle HTTP/1.1 connection is closed within `idle_close` seconds, an idle
/// HTTP/2 one gets a GOAWAY.
fn expect_connection_timeouts(
    at: (&Host, SocketAddr, &str),
    (idle_close, server): (std::ops::Range<f64>, Option<&str>),
) -> Result<()> {
    let upload = answer_408(server, "request timeout");
    expect_probe(at, ("upload", "stalled upload"), &upload, 0.9..2.5)?;
    expect_probe(
        at,
        ("idle", "idle HTTP/1.1 connection"),
        "closed",
        idle_close,
    )?;
    expect_probe(at, ("h2", "idle HTTP/2 connection"), "goaway", 0.9..2.5)
}

/// The connection manager's timeouts of MeshTimeout (`http.requestTimeout` where kuma-cp
/// renders it on the connection manager, the request head timeout, `idleTimeout` as the
/// downstream connection idle timeout) on the golden's outbound, set to 1 s, 0.5 s and 1 s:
/// a request whose body stops gets Envoy's 408 `request timeout` after about 1 s, a head that
/// stops 408 `request header timeout` after about 0.5 s, an HTTP/1.1 connection left idle
/// after a request is closed and an HTTP/2 one gets a GOAWAY. Envoy 1.40 fed the same does
/// the same (it closes the idle HTTP/1.1 connection its drain timeout, 5 s, and delayed close,
/// 1 s, later).
#[test]
fn connection_manager_timeouts_answer_408_and_end_idle_connections() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "python3"])?;
    let topo = Topology::new(&["cp", "web", "backend"])?;
    let (cp, web, backend) = (topo.host("cp"), topo.host("web"), topo.host("backend"));
    let (pki, mesh_ca, leaf) = client_pki(&topo, "cp-hcm-timeouts")?;
    let _origin = start_http_server(backend, APP_PORT)?;

    let golden = KumaGolden::load(GOLDEN)?;
    let mut xds = XdsFile::new();
    xds.golden_inbound(&golden, 3000, 3000, web.sock4(GOLDEN_INBOUND_PORT))?;
    let cluster = golden.plaintext_cluster(SERVER_CLUSTER, &[])?;
    let mut outbound = golden.listener("outbound:IP_REDACTED:80")?;
    let hcm = "/filterChains/0/filters/0/typedConfig";
    set_field(&mut outbound, &format!("{hcm}/requestTimeout"), json!("1s"))?;
    set_field(
        &mut outbound,
        &format!("{hcm}/requestHeadersTimeout"),
        json!("0.500s"),
    )?;
    set_field(
        &mut outbound,
        &format!("{hcm}/commonHttpProtocolOptions"),
        json!({"idleTimeout": "1s"}),
    )?;
    add_outbound(
        &mut xds,
        (&golden, cluster, outbound),
        (web, backend),
        (&leaf, &mesh_ca),
    )?;
    let (_cp, access, sidecar) = pki.golden_client(TEST_CP, cp, web, &xds)?;

    let to = SocketAddr::from(([127, 0, 0, 1], 10001));
    let check = |proxy: &str, idle_close: std::ops::Range<f64>| -> Result<()> {
        let at = (web, to, proxy);
        // Envoy's sidecars write `server: envoy` (Bearing passes the application's on).
        let server = (proxy == "envoy").then_some("envoy");
        expect_stalled_heads(at, server)?;
        expect_connection_timeouts(at, (idle_close, server))
    };
    check("bearing", 0.9..2.5)?;
    let series =
        "bearing_listener_downstream_cx_idle_timeout_total{listener=\"outbound:127.0.0.1:10001\"}";
    let count = sidecar.metric(series)?;
    ensure!(count == 2.0, "{series} is {count}, not 2");

    // Differential: Envoy 1.40 in Bearing's place, the same resources from the same CP.
    sidecar.process().stop(Duration::from_secs(5));
    let _envoy = access.envoy(web, MESH, "demo-client")?;
    web.wait_for_tcp_listener(10001, Duration::from_secs(20), None)?;
    check("envoy", 0.9..8.0)
}

/// A builtin gateway with a MeshTimeout (kuma-cp's `mt-with-from` and `mt-with-to` shapes, at
/// test scale): the connection manager's request timeout (1 s) answers a stalled upload 408
/// `request timeout`, its connection idle timeout (1 s) ends idle HTTP/1.1 and HTTP/2
/// connections, and a route's idle timeout (1 s) gives a silent origin's request 504 `stream
/// timeout`, where Kuma's defaults would wait 15 s and keep the connection 300 s; Kuma's
/// request head timeout (0.5 s) answers a stalled head 408 `request header timeout`, on the
/// byte codec and on hyper after a handed-over request. Envoy 1.40 fed the same does the
/// same.
#[test]
fn a_gateway_enforces_its_mesh_timeouts() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "python3"])?;
    let topo = Topology::new(&["cp", "gw", "backend"])?;
    let (cp, gw, backend) = (topo.host("cp"), topo.host("gw"), topo.host("backend"));
    let pki = CpPki::new(topo.dir(), "cp-gateway-timeouts", cp)?;
    let origin = start_http_server(backend, APP_PORT)?;
    let routes = "gw:HTTP:8080:*";
    let mut manager = gateway_manager(routes);
    let config = &mut manager["typedConfig"];
    config["requestTimeout"] = json!("1s");
    config["streamIdleTimeout"] = json!("53s");
    config["commonHttpProtocolOptions"]["idleTimeout"] = json!("1s");
    let listener = json!({
        "name": "gw:HTTP:8080",
        "address": {"socketAddress": {"address": gw.ip4().to_string(), "portValue": 8080}},
        "trafficDirection": "INBOUND",
        "filterChains": [{"filters": [manager]}],
    });
    let route = json!({
        "weightedClusters": {"clusters": [{"name": "origin", "weight": 1,
            "requestHeadersToAdd": [{"header": {"key": "x-kuma-tags", "value": "&kuma.io/service=gw&"}}]}]},
        "idleTimeout": "1s",
        "clusterNotFoundResponseCode": "INTERNAL_SERVER_ERROR",
    });
    let route_config = json!({
        "name": routes,
        "ignorePortInHostMatching": true,
        "requestHeadersToRemove": ["x-kuma-tags"],
        "validateClusters": false,
        "virtualHosts": [{"name": "*", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": route},
        ]}],
    });
    let mut xds = XdsFile::new();
    xds.listener(listener)?
        .cluster(gateway_cluster("origin", backend.sock4(APP_PORT)))?;
    xds.add(ROUTES, routes, route_config);
    let file = pki.dir.join("gw.json");
    xds.write(&file)?;
    let (_cp, gateway) = pki.builtin_gateway(TEST_CP, cp, gw, &file)?;
    let access = CpAccess::new(cp, 5678, &pki);

    let to = gw.sock4(8080);
    let check = |proxy: &str, idle_close: std::ops::Range<f64>| -> Result<()> {
        let url = format!("http://{to}/test");
        let quick = curl_output(gw, [url.as_str()])?;
        ensure!(
            quick.http_code == 200 && quick.body == origin.body(),
            "{proxy}: quick origin: {} {}",
            quick.http_code,
            quick.body
        );
        let started = Instant::now();
        let silent = curl_output(gw, [format!("{url}?delay=3")])?;
        let took = started.elapsed().as_secs_f64();
        ensure!(
            silent.http_code == 504
                && silent.body == "stream timeout"
                && (0.9..2.5).contains(&took),
            "{proxy}: silent origin after {took} s: {silent:?}"
        );
        expect_stalled_heads((gw, to, proxy), Some("Kuma Gateway"))?;
        expect_connection_timeouts((gw, to, proxy), (idle_close, Some("Kuma Gateway")))
    };
    check("bearing", 0.9..2.5)?;

    // Differential: Envoy 1.40 in Bearing's place, the same resources from the same CP.
    gateway.process().stop(Duration::from_secs(5));
    let _envoy = access.envoy(gw, "default", "gw")?;
    gw.wait_for_tcp_listener(8080, Duration::from_secs(20), None)?;
    check("envoy", 0.9..8.0)
}

/// The golden whose test-server cluster carries MeshTimeout's `http.maxStreamDuration` (54 s).
const MAX_STREAM_GOLDEN: &str =
    "envoyconfig-e2e/sidecars/meshtimeout/outbound.demo-client.golden.json";

/// A python client in `host` asking 127.0.0.1:10001 for `/drip/10` (a 100-byte body, one
/// 10-byte chunk every 300 ms) over HTTP/1.1 (`h2` false) or HTTP/2 with prior knowledge.
/// Prints the status (`200`), the body bytes that came, how the response ended and the
/// seconds it took: HTTP/1.1 `closed` or `whole`; HTTP/2 `rst <code>` (the connection then
/// answers a PING: `open`) or `whole`.
fn drip(host: &Host, h2: bool) -> Result<String> {
    let script = format!(
        r#"
import socket, time
s = socket.create_connection(("127.0.0.1", 10001))
s.settimeout(8)
start = time.monotonic()
h2 = {h2}
def frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
if not h2:
    s.sendall(b"GET /drip/10 HTTP/1.1\r\nHost: test-server\r\n\r\n")
    got = b""
    try:
        while True:
            data = s.recv(65536)
            if not data:
                break
            got += data
            if len(got.partition(b"\r\n\r\n")[2]) >= 100:
                break
    except (ConnectionResetError, socket.timeout):
        pass
    head, _, body = got.partition(b"\r\n\r\n")
    status = head.split(b" ")[1].decode() if head.startswith(b"HTTP/1.1 ") else "none"
    end = "whole" if len(body) >= 100 else "closed"
    print("%s %d %s %.2f" % (status, len(body), end, time.monotonic() - start))
    raise SystemExit
# :method GET, :scheme http (indexed), :path and :authority (literal, indexed names).
block = b"\x82\x86" + bytes([4, 8]) + b"/drip/10" + bytes([1, 11]) + b"test-server"
s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0) + frame(1, 5, 1, block))
buf, status, body, end, took = b"", "none", 0, None, 0.0
while end is None or end.startswith("rst") and not end.endswith(("open", "closed")):
    try:
        data = s.recv(65536)
    except (ConnectionResetError, socket.timeout):
        data = b""
    if not data:
        end = (end + " closed") if end else "closed"
        break
    buf += data
    while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
        n, kind, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
        stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        payload, buf = buf[9:9 + n], buf[9 + n:]
        if kind in (0, 1) and flags & 0x8:
            payload = payload[1:len(payload) - payload[0]]
        if kind == 4 and not flags & 1:
            s.sendall(frame(4, 1, 0))
        elif kind == 1 and stream == 1:
            if flags & 0x20:
                payload = payload[5:]
            while payload and payload[0] & 0xE0 == 0x20:
                payload = payload[1:]
            status = "200" if payload[:1] == b"\x88" else "other"
        elif kind == 0 and stream == 1:
            body += len(payload)
            if flags & 1:
                end, took = "whole", time.monotonic() - start
        elif kind == 3 and stream == 1:
            end, took = "rst %d" % int.from_bytes(payload[:4], "big"), time.monotonic() - start
            s.sendall(frame(6, 0, 0, b"12345678"))
        elif kind == 6 and flags & 1 and end:
            end += " open"
        elif kind == 7:
            end = (end + " goaway") if end else "goaway"
print("%s %d %s %.2f" % (status, body, end, took))
"#,
        h2 = if h2 { "True" } else { "False" }
    );
    let out = host.command("python3").args(["-c", &script]).output()?;
    ensure!(out.success(), "the drip client failed: {out:?}");
    Ok(out.stdout.trim().to_string())
}

/// MeshTimeout's `http.maxStreamDuration` (kuma-cp's cluster `max_stream_duration`, from the
/// golden `meshtimeout/outbound`, made 1 s) bounds the whole stream: an origin that sends its
/// head at once and a 10-byte chunk every 300 ms for 3 s has its response cut after about
/// 1 s, the head and some of the body delivered. An HTTP/1.1 client sees the connection
/// close before the body's length, an HTTP/2 client the stream reset with `INTERNAL_ERROR`
/// on a connection that stays open; each cut counts in `upstream_rq_max_duration_reached`,
/// and the access log says `200 UMSDR` and the body bytes the client got. A response ended in time is untouched. Envoy 1.40
/// fed the same does the same (it closes the HTTP/1.1 connection its delayed close, 1 s,
/// after the cut).
#[test]
fn mesh_timeout_max_stream_duration_cuts_a_response_body_still_coming() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "python3"])?;
    let topo = Topology::new(&["cp", "web", "backend"])?;
    let (cp, web, backend) = (topo.host("cp"), topo.host("web"), topo.host("backend"));
    let (pki, mesh_ca, leaf) = client_pki(&topo, "cp-max-stream")?;
    let origin = start_http_server(backend, APP_PORT)?;
    let logs = topo.dir().join("logs");
    std::fs::create_dir_all(&logs)?;
    std::os::unix::fs::chown(&logs, Some(KUMA_DP_UID), Some(KUMA_DP_UID))?;
    let log = logs.join("outbound.log");

    let golden = KumaGolden::load(MAX_STREAM_GOLDEN)?;
    let mut xds = XdsFile::new();
    xds.golden_inbound(&golden, 3000, 3000, web.sock4(GOLDEN_INBOUND_PORT))?;
    let mut cluster = golden.plaintext_cluster(SERVER_CLUSTER, &[])?;
    let common = "/typedExtensionProtocolOptions/envoy.extensions.upstreams.http.v3.HttpProtocolOptions/commonHttpProtocolOptions";
    let golden_duration = cluster
        .pointer(&format!("{common}/maxStreamDuration"))
        .cloned();
    ensure!(
        golden_duration == Some(json!("54s")),
        "the golden's maxStreamDuration: {golden_duration:?}"
    );
    set_field(
        &mut cluster,
        &format!("{common}/maxStreamDuration"),
        json!("1s"),
    )?;
    let mut outbound = golden.listener("outbound:IP_REDACTED:80")?;
    let format = "%PROTOCOL% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_SENT%\n";
    set_field(
        &mut outbound,
        "/filterChains/0/filters/0/typedConfig/accessLog",
        json!([{"name": "envoy.access_loggers.file", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": log.display().to_string(),
            "logFormat": {"textFormatSource": {"inlineString": format}},
        }}]),
    )?;
    add_outbound(
        &mut xds,
        (&golden, cluster, outbound),
        (web, backend),
        (&leaf, &mesh_ca),
    )?;
    let (_cp, access, sidecar) = pki.golden_client(TEST_CP, cp, web, &xds)?;

    let check = |proxy: &str| -> Result<()> {
        let mut want_log = vec![format!("HTTP/1.1 /test 200 - {}", origin.body().len())];
        let quick = curl_output(web, ["http://127.0.0.1:10001/test"])?;
        ensure!(
            quick.http_code == 200 && quick.body == origin.body(),
            "{proxy}: quick origin: {} {}",
            quick.http_code,
            quick.body
        );
        let h1_close = match proxy {
            "envoy" => 1.9..3.5,
            _ => 0.9..2.5,
        };
        for (h2, end, window) in [(false, "closed", h1_close), (true, "rst 2 open", 0.9..2.5)] {
            let line = drip(web, h2)?;
            let protocol = if h2 { "HTTP/2" } else { "HTTP/1.1" };
            let words: Vec<&str> = line.split(' ').collect();
            let (status, got, took) = (words[0], words[1], words[words.len() - 1]);
            let ended = words[2..words.len() - 1].join(" ");
            let got: usize = got.parse().unwrap_or(0);
            let took: f64 = took.parse().unwrap_or(f64::NAN);
            ensure!(
                status == "200"
                    && (1..100).contains(&got)
                    && ended == end
                    && window.contains(&took),
                "{proxy}: dripping origin over {protocol}: {line}"
            );
            want_log.push(format!("{protocol} /drip/10 200 UMSDR {got}"));
        }
        // Envoy flushes its access log files every 10 s.
        let lines = wait_until_ok(Duration::from_secs(20), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            ensure!(
                lines.len() >= 3,
                "{proxy}: {} log lines:\n{text}",
                lines.len()
            );
            Ok(lines)
        })?;
        ensure!(lines == want_log, "{proxy}: access log {lines:#?}");
        Ok(())
    };
    check("bearing")?;
    let series = format!(
        "bearing_cluster_upstream_rq_max_duration_reached_total{{cluster=\"{SERVER_CLUSTER}\"}}"
    );
    let count = sidecar.metric(&series)?;
    ensure!(count == 2.0, "{series} is {count}, not 2");

    // Differential: Envoy 1.40 in Bearing's place, the same resources from the same CP.
    sidecar.process().stop(Duration::from_secs(5));
    std::fs::remove_file(&log)?;
    let envoy = access.envoy(web, MESH, "demo-client")?;
    web.wait_for_tcp_listener(10001, Duration::from_secs(20), None)?;
    check("envoy")?;
    let stat = format!("cluster.{SERVER_CLUSTER}.upstream_rq_max_duration_reached");
    let (_, stats) = envoy.admin(&format!("/stats?filter=^{stat}$"))?;
    ensure!(
        stats.trim() == format!("{stat}: 2"),
        "envoy's {stat}: {stats}"
    );
    Ok(())
}

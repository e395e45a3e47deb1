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

#[test]
fn mesh_timeout_idle_timeouts_end_silent_streams_and_connections() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "redis-server", "python3"])?;
    let topo = Topology::new(&["cp", "web", "backend"])?;
    let (cp, web, backend) = (topo.host("cp"), topo.host("web"), topo.host("backend"));
    let pki = CpPki::new(topo.dir(), "cp-timeouts", cp)?;
    let mesh_ca = TestCa::new(&pki.dir, "mesh-ca")?;
    let leaf = mesh_ca.issue("demo-client", &["URI:spiffe://envoyconfig/demo-client"])?;
    let origin = start_http_server(backend, APP_PORT)?;
    let _redis = start_redis(backend, REDIS_PORT)?;

    let golden = KumaGolden::load(GOLDEN)?;
    let mut xds = XdsFile::new();
    xds.golden_inbound(&golden, 3000, 3000, web.sock4(GOLDEN_INBOUND_PORT))?;
    // The server cluster, plaintext HTTP/1.1 to the origins (the timeouts are the client's).
    let mut cluster = golden.cluster(SERVER_CLUSTER)?;
    cluster
        .as_object_mut()
        .context("a cluster object")?
        .remove("transportSocket");
    let http = "/typedExtensionProtocolOptions/envoy.extensions.upstreams.http.v3.HttpProtocolOptions/explicitHttpConfig";
    set_field(&mut cluster, http, json!({"httpProtocolOptions": {}}))?;
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
    // The golden's redacted addresses (Envoy parses the HCM's internal address CIDRs).
    replace_in_strings(&mut outbound, "IP_REDACTED", &web.ip4().to_string());
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
    xds.cluster(cluster.clone())?
        .endpoints(assignment.clone(), &[backend.sock4(APP_PORT)])?
        .cluster(renamed(cluster))?
        .endpoints(renamed(assignment), &[backend.sock4(REDIS_PORT)])?
        .listener(bound_listener(outbound, ([127, 0, 0, 1], 10001).into()))?
        .listener(tcp_outbound)?
        .mesh_identity(MESH, &leaf, &mesh_ca)?;
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

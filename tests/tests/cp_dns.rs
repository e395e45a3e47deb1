//! A DNS cluster end to end: a Bearing sidecar fed by `bearing-test-cp` with an outbound to a
//! STRICT_DNS cluster named by hostname (as kuma-cp renders an ExternalService), the name
//! answered by dnsmasq in its own namespace through the sidecar's own `/etc/resolv.conf`
//! (`/etc/netns/<ns>/`, bind-mounted by `ip netns exec`). Traffic reaches the origin the name
//! resolves to, moves to the new origin within the refresh period when the answer changes,
//! stays on the last address while the nameserver is gone, and follows `/etc/hosts` when it
//! names the host; a name that never resolved answers as an empty cluster (503).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bearing_e2e::*;
use serde_json::{json, Value};

const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
/// The origins' port.
const ORIGIN_PORT: u16 = 8080;
/// The outbound to the resolved name, and the one to a name that never resolves.
const HTTP_PORT: u16 = 10001;
const NOWHERE_PORT: u16 = 10002;
/// The clusters' `dns_refresh_rate`.
const REFRESH: Duration = Duration::from_secs(1);

/// A STRICT_DNS cluster `name` of one endpoint named `hostname` (kuma-cp's ExternalService
/// shape: V4_ONLY), looked up again every second.
fn dns_cluster(name: &str, hostname: &str) -> Value {
    json!({
        "name": name,
        "type": "STRICT_DNS",
        "connectTimeout": "5s",
        "dnsLookupFamily": "V4_ONLY",
        "dnsRefreshRate": "1s",
        "loadAssignment": {"clusterName": name, "endpoints": [{"lbEndpoints": [{"endpoint": {
            "address": {"socketAddress": {"address": hostname, "portValue": ORIGIN_PORT}}
        }}]}]},
        "typedExtensionProtocolOptions": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicitHttpConfig": {"httpProtocolOptions": {}}}},
    })
}

/// An HTTP outbound on 127.0.0.1:`port` to `cluster`.
fn outbound(port: u16, cluster: &str) -> (String, Value) {
    let name = format!("outbound:127.0.0.1:{port}");
    let value = json!({
        "name": name,
        "address": {"socketAddress": {"address": "127.0.0.1", "portValue": port}},
        "trafficDirection": "OUTBOUND",
        "filterChains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typedConfig": {
            "@type": HCM,
            "statPrefix": cluster,
            "httpFilters": [{"name": "envoy.filters.http.router", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            "routeConfig": {"name": cluster, "virtualHosts": [{"name": cluster, "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}]}]},
        }}]}],
    });
    (name, value)
}

/// dnsmasq on `dns`, answering each of `records`' names with its host's address (TTL 0)
/// and nothing else.
fn nameserver(dns: &Host, records: &[(&str, &Host)]) -> Result<Process> {
    let mut args = vec![
        "--no-daemon".to_string(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        "--bind-interfaces".into(),
        format!("--listen-address={}", dns.ip4()),
    ];
    for (name, to) in records {
        args.push(format!("--address=/{name}/{}", to.ip4()));
    }
    let server = dns.spawn("dnsmasq", args)?;
    wait_until(Duration::from_secs(10), || {
        dns.udp_listening(53).unwrap_or(false)
    })?;
    Ok(server)
}

#[test]
fn a_dns_cluster_follows_its_hostname() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "python3", "dnsmasq"])?;
    let topo = Topology::new(&["cp", "web", "dns", "one", "two"])?;
    let (cp, web, dns) = (topo.host("cp"), topo.host("web"), topo.host("dns"));
    let (one, two) = (topo.host("one"), topo.host("two"));
    let origin_one = start_http_server(one, ORIGIN_PORT)?;
    let origin_two = start_http_server(two, ORIGIN_PORT)?;
    let (body_one, body_two) = (origin_one.body(), origin_two.body());
    let server = nameserver(dns, &[("origin.test", one)])?;
    // A lookup the nameserver does not answer fails after a second (hickory, as c-ares, waits
    // out its timeout: UDP's port-unreachable does not reach an unconnected socket).
    let resolv_conf = format!("nameserver {}\noptions timeout:1 attempts:1\n", dns.ip4());
    web.set_etc_file("resolv.conf", &resolv_conf)?;
    web.set_etc_file("hosts", "127.0.0.1 localhost\n")?;

    let pki = CpPki::new(topo.dir(), "cp-dns", cp)?;
    let (http_name, http) = outbound(HTTP_PORT, "origin");
    let (nowhere_name, nowhere) = outbound(NOWHERE_PORT, "nowhere");
    let resources = json!({"xds": {
        CLUSTER: {"origin": dns_cluster("origin", "origin.test"),
                  "nowhere": dns_cluster("nowhere", "nowhere.test")},
        LISTENER: {http_name: http, nowhere_name: nowhere},
    }});
    let bin = env!("CARGO_BIN_EXE_bearing-test-cp");
    let (_cp, sidecar) = pki.web_sidecar(bin, cp, web, &resources, "ACK type=Cluster")?;

    let url = format!("http://127.0.0.1:{HTTP_PORT}/");
    let get = || curl(web, [url.as_str()]);
    let reaches = |body: &str| get().is_ok_and(|answer| answer == (200, body.to_string()));
    // The name resolves to one.
    wait_until(Duration::from_secs(10), || reaches(body_one))?;
    // A name the nameserver does not know: no endpoint, Envoy's empty-cluster answer.
    let (code, body) = curl(web, [format!("http://127.0.0.1:{NOWHERE_PORT}/")])?;
    ensure!(
        code == 503 && body.contains("no healthy upstream"),
        "{code} {body}"
    );

    // The answer changes: traffic moves to two within the refresh period (and a lookup).
    server.stop(Duration::from_secs(2));
    let server = nameserver(dns, &[("origin.test", two)])?;
    let changed = Instant::now();
    wait_until(REFRESH * 5, || reaches(body_two))?;
    let moved = changed.elapsed();
    ensure!(
        moved <= REFRESH * 3,
        "traffic moved {moved:?} after the change"
    );

    // The nameserver is gone: lookups fail, the last address keeps serving.
    server.stop(Duration::from_secs(2));
    const KEPT: &str = "keeping the last addresses";
    sidecar
        .process()
        .wait_for_log(KEPT, Duration::from_secs(20))?;
    for _ in 0..5 {
        ensure!(reaches(body_two), "the last address must keep serving");
        std::thread::sleep(REFRESH);
    }
    let log = sidecar.process().log_contents();
    ensure!(
        log.matches(KEPT).count() == 1,
        "a failure is logged once per change:\n{log}"
    );

    // /etc/hosts names the host: read again, it wins over the (missing) nameserver.
    web.set_etc_file(
        "hosts",
        &format!("127.0.0.1 localhost\n{} origin.test\n", one.ip4()),
    )?;
    wait_until(REFRESH * 8, || reaches(body_one))?;
    Ok(())
}

/// An origin answering every request 503 on the port in argv 1, printing `hit` for each.
const FAILING_ORIGIN_PY: &str = r#"import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        print("hit", flush=True)
        body = b"failing\n"
        self.send_response(503)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"#;

/// Outlier detection on a DNS cluster, as kuma-cp renders MeshCircuitBreaker on an
/// ExternalService named by hostname (this once NACKed the whole config): two hostnames, one
/// resolving to an origin that answers 503, round robin. After its second consecutive 503 the
/// failing host is ejected and every further request reaches the healthy one; when its name
/// then resolves to a new origin, that host is in service at once and shares the traffic.
/// Envoy 1.40, fed the same resources by the same CP in Bearing's place, answers the same.
#[test]
fn outlier_detection_ejects_a_failing_resolved_host_as_envoy() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "python3"])?;
    let topo = Topology::new(&["cp", "web", "dns", "good", "bad", "fresh"])?;
    let (cp, web, good) = (topo.host("cp"), topo.host("web"), topo.host("good"));
    let (bad, fresh) = (topo.host("bad"), topo.host("fresh"));
    let good_body = start_http_server(good, ORIGIN_PORT)?.body().to_string();
    let fresh_body = start_http_server(fresh, ORIGIN_PORT)?.body().to_string();
    let script = topo.dir().join("failing-origin.py");
    std::fs::write(&script, FAILING_ORIGIN_PY)?;
    let failing = bad
        .command("python3")
        .arg(&script)
        .arg(ORIGIN_PORT.to_string())
        .log_name("failing-origin")
        .spawn()?;
    bad.wait_for_tcp_listener(ORIGIN_PORT, Duration::from_secs(10), None)?;
    let dns = topo.host("dns");
    let resolv_conf = format!("nameserver {}\noptions timeout:1 attempts:1\n", dns.ip4());
    web.set_etc_file("resolv.conf", &resolv_conf)?;
    web.set_etc_file("hosts", "127.0.0.1 localhost\n")?;
    // The nameserver answering `bad.test` with `bad_name_at`'s address.
    let names =
        |bad_name_at: &Host| nameserver(dns, &[("bad.test", bad_name_at), ("good.test", good)]);

    let mut cluster = dns_cluster("ext", "bad.test");
    let good_endpoint = json!({"endpoint": {"address": {"socketAddress": {
        "address": "good.test", "portValue": ORIGIN_PORT}}}});
    cluster["loadAssignment"]["endpoints"][0]["lbEndpoints"]
        .as_array_mut()
        .context("the cluster's endpoints")?
        .push(good_endpoint);
    // kuma-cp's shape (MeshCircuitBreaker `outlierDetection.detectors.totalFailures`), with
    // an ejected share that lets one of two hosts go.
    cluster["outlierDetection"] = json!({
        "consecutive5xx": 2, "enforcingConsecutive5xx": 100, "enforcingSuccessRate": 0,
        "enforcingConsecutiveGatewayFailure": 0, "enforcingConsecutiveLocalOriginFailure": 0,
        "enforcingLocalOriginSuccessRate": 0, "enforcingFailurePercentage": 0,
        "enforcingFailurePercentageLocalOrigin": 0, "baseEjectionTime": "60s",
        "maxEjectionPercent": 50,
    });
    let (name, listener) = outbound(HTTP_PORT, "ext");
    let resources = json!({"xds": {CLUSTER: {"ext": cluster}, LISTENER: {name: listener}}});
    let pki = CpPki::new(topo.dir(), "cp-dns-outlier", cp)?;
    let url = format!("http://127.0.0.1:{HTTP_PORT}/");
    // What a proxy answers: 20 requests with the failing origin named, then 20 after its
    // name moved to the fresh origin; each answer as `status body`, counted.
    let answers = |proxy: &str,
                   hits_before: usize,
                   mut server: Option<Process>|
     -> Result<Vec<(String, usize)>> {
        let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
        for round in ["failing", "moved"] {
            if round == "moved" {
                if let Some(old) = server.take() {
                    old.stop(Duration::from_secs(2));
                }
                server = Some(names(fresh)?);
                let reaches_fresh = || curl(web, [url.as_str()]).is_ok_and(|a| a.1 == fresh_body);
                wait_until(REFRESH * 8, reaches_fresh)?;
            }
            for _ in 0..20 {
                let (code, body) = curl(web, [url.as_str()])?;
                *seen.entry(format!("{round} {code} {body}")).or_default() += 1;
            }
        }
        let hits = failing.log_contents().matches("hit").count() - hits_before;
        seen.insert("failing origin hits".into(), hits);
        let seen: Vec<_> = seen.into_iter().collect();
        let failed = "failing 503 failing\n";
        let want_failed = seen.iter().any(|(k, n)| *k == failed && *n == 2);
        ensure!(want_failed && hits == 2, "{proxy}: {seen:#?}");
        let good_after = seen
            .iter()
            .find(|(k, _)| *k == format!("failing 200 {good_body}"));
        ensure!(
            good_after.is_some_and(|(_, n)| *n == 18),
            "{proxy}: {seen:#?}"
        );
        let fresh_after = seen
            .iter()
            .find(|(k, _)| *k == format!("moved 200 {fresh_body}"));
        ensure!(
            fresh_after.is_some_and(|(_, n)| *n >= 8),
            "{proxy}: {seen:#?}"
        );
        if let Some(server) = server {
            server.stop(Duration::from_secs(2));
        }
        Ok(seen)
    };

    let server = names(bad)?;
    let bin = env!("CARGO_BIN_EXE_bearing-test-cp");
    let (_cp, sidecar) = pki.web_sidecar(bin, cp, web, &resources, "ACK type=Cluster")?;
    // Both names resolve before the first request (a probe would count towards the
    // failures), as Envoy's cluster warms on its first resolution.
    std::thread::sleep(REFRESH * 3);
    let bearing = answers("bearing", 0, Some(server))?;

    // Differential: Envoy 1.40 in Bearing's place, the same resources from the same CP.
    sidecar.process().stop(Duration::from_secs(5));
    let server = names(bad)?;
    let hits = failing.log_contents().matches("hit").count();
    let access = CpAccess::new(cp, 5678, &pki);
    let _envoy = access.envoy(web, "default", "web")?;
    web.wait_for_tcp_listener(HTTP_PORT, Duration::from_secs(20), None)?;
    std::thread::sleep(REFRESH * 3);
    let envoy = answers("envoy", hits, Some(server))?;
    ensure!(envoy == bearing, "envoy {envoy:#?}\nbearing {bearing:#?}");
    Ok(())
}

//! A DNS cluster end to end: a Bearing sidecar fed by `bearing-test-cp` with an outbound to a
//! STRICT_DNS cluster named by hostname (as kuma-cp renders an ExternalService), the name
//! answered by dnsmasq in its own namespace through the sidecar's own `/etc/resolv.conf`
//! (`/etc/netns/<ns>/`, bind-mounted by `ip netns exec`). Traffic reaches the origin the name
//! resolves to, moves to the new origin within the refresh period when the answer changes,
//! stays on the last address while the nameserver is gone, and follows `/etc/hosts` when it
//! names the host; a name that never resolved answers as an empty cluster (503).

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
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

/// dnsmasq on `dns`, answering `origin.test` with `to`'s address (TTL 0) and nothing else.
fn nameserver(dns: &Host, to: &Host) -> Result<Process> {
    let server = dns.spawn(
        "dnsmasq",
        [
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={}", dns.ip4()),
            &format!("--address=/origin.test/{}", to.ip4()),
        ],
    )?;
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
    let server = nameserver(dns, one)?;
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
    let server = nameserver(dns, two)?;
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

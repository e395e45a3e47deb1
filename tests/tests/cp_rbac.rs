//! MeshTrafficPermission as kuma-cp renders it, enforced by a sidecar fed only by
//! `bearing-test-cp`: the server's inbounds carry RBAC filters (the HTTP one in its connection
//! manager, the network one before its TCP proxy) allowing only the client
//! `spiffe://envoyconfig/demo-client`. Two client sidecars with real mesh certificates call
//! both inbounds: the allowed one gets the origin's answers, the other a 403 `RBAC: access
//! denied` over HTTP and a closed connection over TCP, and the server counts both. Then Envoy
//! 1.40, fed the same resources by the same CP in the server's place, answers the same.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use bearing_e2e::*;
use serde_json::{json, Value};

/// The test CP binary.
const TEST_CP: &str = env!("CARGO_BIN_EXE_bearing-test-cp");

const GOLDENS: &str = "envoyconfig-e2e/sidecars/meshtrafficpermission";
/// The mesh of the goldens.
const MESH: &str = "envoyconfig";
/// The MeshService cluster of test-server (HTTP) in the client's golden.
const SERVER_CLUSTER: &str = "envoyconfig_test-server__kuma-3_msvc_80";
/// The client's cluster to the server's TCP inbound (the HTTP one renamed).
const TCP_CLUSTER: &str = "envoyconfig_test-server__kuma-3_msvc_3000";
/// The HTTP application behind the server's inbound.
const APP_PORT: u16 = 8080;
/// The TCP application (redis) behind the server's TCP inbound: the client golden's inbound
/// on 3000 sends to `localhost:3000`.
const TCP_APP_PORT: u16 = 3000;
/// Where the server's TCP inbound listens.
const TCP_INBOUND_PORT: u16 = 13000;
const SERVER_ID: &str = "spiffe://envoyconfig/test-server";
/// The one client the server's RBAC allows.
const ALLOWED_ID: &str = "spiffe://envoyconfig/demo-client";
/// A client of the same mesh that it does not.
const OTHER_ID: &str = "spiffe://envoyconfig/intruder";

/// kuma-cp's `rules` form (as in `from-rules-long`): allow only `ALLOWED_ID`.
fn allow_only_demo_client() -> Value {
    json!({"policies": {"MeshTrafficPermission": {
        "permissions": [{"any": true}],
        "principals": [{"authenticated": {"principalName": {"exact": ALLOWED_ID}}}],
    }}})
}

/// Replaces the rules of every RBAC filter in `value` with [`allow_only_demo_client`];
/// returns how many it changed.
fn restrict(value: &mut Value) -> usize {
    match value {
        Value::Object(map) => {
            let rbac = map
                .get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("rbac.v3.RBAC"));
            if rbac {
                map.remove("matcher");
                map.insert("rules".into(), allow_only_demo_client());
                return 1;
            }
            map.values_mut().map(restrict).sum()
        }
        Value::Array(items) => items.iter_mut().map(restrict).sum(),
        _ => 0,
    }
}

#[test]
fn mesh_traffic_permission_allows_only_the_named_client() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "nginx", "redis-server", "redis-cli"])?;
    let topo = Topology::new(&["cp", "web", "other", "backend"])?;
    let (cp, web, other, backend) = (
        topo.host("cp"),
        topo.host("web"),
        topo.host("other"),
        topo.host("backend"),
    );
    let pki = CpPki::new(topo.dir(), "cp-rbac", cp)?;
    let mesh_ca = TestCa::new(&pki.dir, "mesh-ca")?;
    let uri = |id: &str| format!("URI:{id}");
    let allowed_leaf = mesh_ca.issue("demo-client", &[&uri(ALLOWED_ID)])?;
    let other_leaf = mesh_ca.issue("intruder", &[&uri(OTHER_ID)])?;
    let server_leaf = mesh_ca.issue("test-server", &[&uri(SERVER_ID)])?;
    let nginx = start_nginx(backend, APP_PORT)?;
    let _redis = start_redis(backend, TCP_APP_PORT)?;

    let client = KumaGolden::load(&format!("{GOLDENS}/no-policies.demo-client.golden.json"))?;
    let server = KumaGolden::load(&format!("{GOLDENS}/no-policies.test-server.golden.json"))?;

    // The server: the test-server golden's HTTP inbound and the demo-client golden's TCP
    // inbound, their RBAC filters allowing only the demo client.
    let mut xds = XdsFile::new();
    let http_inbound =
        xds.golden_inbound(&server, 80, APP_PORT, backend.sock4(GOLDEN_INBOUND_PORT))?;
    let tcp_inbound =
        xds.golden_inbound(&client, 3000, TCP_APP_PORT, backend.sock4(TCP_INBOUND_PORT))?;
    for name in [&http_inbound, &tcp_inbound] {
        let listener = xds.get_mut(LISTENER, name)?;
        listener["metadata"]["filterMetadata"]["io.kuma.tags"]["kuma.io/service"] =
            json!("test-server");
        ensure!(restrict(listener) == 1, "one RBAC filter in {name}");
        // The goldens' redacted addresses (Envoy parses the HCM's internal address CIDRs).
        replace_in_strings(listener, "IP_REDACTED", &backend.ip4().to_string());
    }
    xds.mesh_identity(MESH, &server_leaf, &mesh_ca)?;
    let (_server_cp, access, server_proxy) =
        pki.golden_sidecar(TEST_CP, (cp, "test-server"), backend, &xds)?;

    // Each client: an HTTP outbound (10001) and a TCP one (10002) to the server's inbounds.
    let client_resources = |host: &Host, service: &str, leaf: &CertFiles| -> Result<XdsFile> {
        let mut xds = XdsFile::new();
        let own = xds.golden_inbound(&client, 3000, 3000, host.sock4(GOLDEN_INBOUND_PORT))?;
        // Its own inbound's service is the one its certificate names.
        xds.get_mut(LISTENER, &own)?["metadata"]["filterMetadata"]["io.kuma.tags"]
            ["kuma.io/service"] = json!(service);
        let mut cluster = client.cluster(SERVER_CLUSTER)?;
        let sans = "/transportSocket/typedConfig/commonTlsContext/combinedValidationContext/defaultValidationContext/matchTypedSubjectAltNames";
        set_field(
            &mut cluster,
            sans,
            json!([{"sanType": "URI", "matcher": {"exact": SERVER_ID}}]),
        )?;
        let assignment = client.endpoints(SERVER_CLUSTER)?;
        let renamed = |mut value: Value| {
            replace_in_strings(&mut value, SERVER_CLUSTER, TCP_CLUSTER);
            value
        };
        let outbound = client.listener("outbound:IP_REDACTED:80")?;
        let tcp_outbound = json!({
            "name": "outbound:127.0.0.1:10002",
            "address": {"socketAddress": {"address": "127.0.0.1", "portValue": 10002}},
            "trafficDirection": "OUTBOUND",
            "filterChains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "statPrefix": TCP_CLUSTER,
                "cluster": TCP_CLUSTER,
            }}]}],
        });
        xds.cluster(cluster.clone())?
            .endpoints(assignment.clone(), &[backend.sock4(GOLDEN_INBOUND_PORT)])?
            .cluster(renamed(cluster))?
            .endpoints(renamed(assignment), &[backend.sock4(TCP_INBOUND_PORT)])?
            .listener(bound_listener(outbound, ([127, 0, 0, 1], 10001).into()))?
            .listener(tcp_outbound)?
            .mesh_identity(MESH, leaf, &mesh_ca)?;
        Ok(xds)
    };
    let start_client = |host, name: &str, leaf, port| -> Result<_> {
        let file = pki.dir.join(format!("{name}.json"));
        client_resources(host, name, leaf)?.write(&file)?;
        let (cp_process, access) = pki.start_cp(TEST_CP, cp, port, &file, name)?;
        Ok((cp_process, access))
    };
    let (web_cp, web_access) = start_client(web, "demo-client", &allowed_leaf, 5678)?;
    let (other_cp, other_access) = start_client(other, "intruder", &other_leaf, 5680)?;
    let mut clients = Vec::new();
    for (host, name, access) in [
        (web, "demo-client", &web_access),
        (other, "intruder", &other_access),
    ] {
        let sidecar = access.bearing(host, name, "dataplane", &golden_dataplane(host, name))?;
        sidecar.wait_ready()?;
        clients.push(sidecar);
    }
    for (name, log) in [
        ("demo-client", web_cp.log_contents()),
        ("intruder", other_cp.log_contents()),
    ] {
        ensure!(!log.contains("NACK"), "{name} NACKed its config:\n{log}");
    }

    // Each server (Bearing, then Envoy 1.40 fed the same resources) answers alike.
    let check = |server: &str| -> Result<()> {
        // HTTP: the demo client reaches the origin, the other gets Envoy's RBAC reply.
        for _ in 0..2 {
            let (code, body) = curl(web, ["http://127.0.0.1:10001/"])?;
            ensure!(
                code == 200 && body == nginx.body(),
                "{server}: allowed: {code} {body}"
            );
        }
        let denied = curl_output(other, ["-i", "http://127.0.0.1:10001/"])?;
        let (head, body) = denied.body.split_once("\r\n\r\n").unwrap_or_default();
        ensure!(
            denied.http_code == 403
                && body == "RBAC: access denied"
                && header_value(head, "content-type").as_deref() == Some("text/plain"),
            "{server}: denied: {} {}",
            denied.http_code,
            denied.body
        );
        // TCP: the demo client's bytes reach redis; the other's connection is closed at once.
        let pong = redis_cli(web, [127, 0, 0, 1], 10002, ["PING"])?;
        ensure!(pong == "PONG", "{server}: allowed over TCP: {pong:?}");
        let started = Instant::now();
        let refused = redis_cli(other, [127, 0, 0, 1], 10002, ["PING"]);
        ensure!(
            !matches!(&refused, Ok(s) if s.contains("PONG")),
            "{server}: denied over TCP got through: {refused:?}"
        );
        ensure!(
            started.elapsed() < Duration::from_secs(5),
            "{server}: the denied TCP connection was not closed at once ({:?}): {refused:?}",
            started.elapsed()
        );
        Ok(())
    };
    check("bearing")?;

    // The server counts both decisions on each inbound.
    let (_, metrics) = server_proxy.admin("GET", "/stats/prometheus")?;
    for (listener, allowed, denied) in [(&http_inbound, 2, 1), (&tcp_inbound, 1, 1)] {
        for (name, want) in [("allowed", allowed), ("denied", denied)] {
            let series = format!("bearing_rbac_{name}_total{{listener=\"{listener}\"}} {want}");
            ensure!(metrics.contains(&series), "no {series} in:\n{metrics}");
        }
    }

    // Differential: Envoy 1.40 in Bearing's place, the same resources from the same CP.
    server_proxy.process().stop(Duration::from_secs(5));
    let _envoy = access.envoy(backend, MESH, "test-server")?;
    for port in [GOLDEN_INBOUND_PORT, TCP_INBOUND_PORT] {
        backend.wait_for_tcp_listener(port, Duration::from_secs(20), None)?;
    }
    check("envoy")
}

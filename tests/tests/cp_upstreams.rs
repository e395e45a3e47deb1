//! How a sidecar fed only by `bearing-test-cp` picks and verifies its upstreams, as kuma-cp
//! 2.14 renders them for multizone meshes with MeshIdentity and MeshExternalService:
//!
//! - an outbound mesh mTLS cluster listing two SPIFFE ids (kuma-cp's MeshIdentity clusters
//!   list the workload's id and the legacy one) reaches a server whose certificate carries
//!   the second, and the same list refuses a server carrying a third id, naming the cluster,
//!   the ids expected and the ids presented;
//! - a cluster whose endpoints sit at priorities 0 and 1 sends every request to priority 0,
//!   and one whose only endpoints are at priority 1 (kuma-cp's zone egress cluster of a
//!   MeshExternalService) serves from them.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bearing_e2e::*;
use serde_json::{json, Value};

/// The test CP binary.
const TEST_CP: &str = env!("CARGO_BIN_EXE_bearing-test-cp");

const GOLDENS: &str = "envoyconfig-e2e/sidecars/meshtrafficpermission";
/// The mesh of the goldens.
const MESH: &str = "envoyconfig";
/// The MeshService cluster of test-server (HTTP) in the client's golden.
const SERVER_CLUSTER: &str = "envoyconfig_test-server__kuma-3_msvc_80";
/// The same cluster towards the server carrying a third id.
const THIRD_CLUSTER: &str = "envoyconfig_third__kuma-3_msvc_80";
/// The application behind each server's inbound.
const APP_PORT: u16 = 8080;
/// The ids the client's clusters accept, as kuma-cp lists them under a MeshIdentity: the
/// workload's id first, then the legacy one.
const WORKLOAD_ID: &str = "spiffe://envoyconfig.kuma-3.mesh.local/workload/test-server";
const LEGACY_ID: &str = "spiffe://envoyconfig/test-server";
/// What the third server presents.
const THIRD_ID: &str = "spiffe://envoyconfig/intruder";

/// A server sidecar in `host` (the test-server golden's inbound on its address, its
/// application on `APP_PORT`) presenting `leaf`, its inbound's service `service` (the leaf's
/// SPIFFE id carries it, as Bearing requires of its own identity).
fn server_resources(
    golden: &KumaGolden,
    host: &Host,
    service: &str,
    leaf: &CertFiles,
    ca: &TestCa,
) -> Result<XdsFile> {
    let mut xds = XdsFile::new();
    let at = host.sock4(GOLDEN_INBOUND_PORT);
    let inbound = xds.golden_inbound(golden, 80, APP_PORT, at)?;
    let listener = xds.get_mut(LISTENER, &inbound)?;
    listener["metadata"]["filterMetadata"]["io.kuma.tags"]["kuma.io/service"] = json!(service);
    xds.mesh_identity(MESH, leaf, ca)?;
    Ok(xds)
}

/// Serves `resources` from a test CP on `cp`:`port` to the sidecar `name` started in `host`
/// ([`golden_dataplane`]); returns both once the sidecar is ready.
fn start_sidecar<'h>(
    pki: &CpPki,
    cp: &Host,
    port: u16,
    host: &'h Host,
    name: &str,
    resources: &XdsFile,
) -> Result<(Process, Bearing<'h>)> {
    let file = pki.dir.join(format!("{name}.json"));
    resources.write(&file)?;
    let (cp_process, access) = pki.start_cp(TEST_CP, cp, port, &file, name)?;
    let sidecar = access.bearing(host, name, "dataplane", &golden_dataplane(host, name))?;
    sidecar.wait_ready()?;
    Ok((cp_process, sidecar))
}

#[test]
fn a_mesh_upstream_accepts_any_spiffe_id_its_cluster_lists_and_no_other() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "nginx"])?;
    let topo = Topology::new(&["cp", "web", "backend", "third"])?;
    let (cp, web) = (topo.host("cp"), topo.host("web"));
    let (backend, third) = (topo.host("backend"), topo.host("third"));
    let pki = CpPki::new(topo.dir(), "cp-upstream-ids", cp)?;
    let dir = &pki.dir;
    let mesh_ca = TestCa::new(dir, "mesh-ca")?;
    let uri = |id: &str| format!("URI:{id}");
    let client_leaf = mesh_ca.issue("demo-client", &[&uri("spiffe://envoyconfig/demo-client")])?;
    let backend_leaf = mesh_ca.issue("test-server", &[&uri(LEGACY_ID)])?;
    let third_leaf = mesh_ca.issue("intruder", &[&uri(THIRD_ID)])?;
    let nginx = start_nginx(backend, APP_PORT)?;
    let _third_app = start_nginx(third, APP_PORT)?;

    let client = KumaGolden::load(&format!("{GOLDENS}/no-policies.demo-client.golden.json"))?;
    let server = KumaGolden::load(&format!("{GOLDENS}/no-policies.test-server.golden.json"))?;
    let (to_backend, to_third) = (
        backend.sock4(GOLDEN_INBOUND_PORT),
        third.sock4(GOLDEN_INBOUND_PORT),
    );

    // The client: two clusters accepting [workload id, legacy id], one to each server, and
    // an outbound listener to each.
    let mut xds = XdsFile::new();
    xds.golden_inbound(&client, 3000, 3000, web.sock4(GOLDEN_INBOUND_PORT))?;
    let mut cluster = client.cluster(SERVER_CLUSTER)?;
    let sans = "/transportSocket/typedConfig/commonTlsContext/combinedValidationContext/defaultValidationContext/matchTypedSubjectAltNames";
    let two_ids = json!([
        {"sanType": "URI", "matcher": {"exact": WORKLOAD_ID}},
        {"sanType": "URI", "matcher": {"exact": LEGACY_ID}},
    ]);
    set_field(&mut cluster, sans, two_ids)?;
    let assignment = client.endpoints(SERVER_CLUSTER)?;
    let outbound = client.listener("outbound:IP_REDACTED:80")?;
    let renamed = |mut value: Value| {
        replace_in_strings(&mut value, SERVER_CLUSTER, THIRD_CLUSTER);
        value
    };
    xds.cluster(cluster.clone())?
        .endpoints(assignment.clone(), &[to_backend])?
        .cluster(renamed(cluster))?
        .endpoints(renamed(assignment), &[to_third])?
        .listener(bound_listener(
            outbound.clone(),
            ([127, 0, 0, 1], 10001).into(),
        ))?
        .listener(bound_listener(
            renamed(outbound),
            ([127, 0, 0, 1], 10002).into(),
        ))?
        .mesh_identity(MESH, &client_leaf, &mesh_ca)?;

    let serve = |host, service, leaf, port| {
        let resources = server_resources(&server, host, service, leaf, &mesh_ca)?;
        start_sidecar(&pki, cp, port, host, service, &resources)
    };
    let _backend = serve(backend, "test-server", &backend_leaf, 5679)?;
    let _third = serve(third, "intruder", &third_leaf, 5680)?;
    let (web_cp, sidecar) = start_sidecar(&pki, cp, 5678, web, "demo-client", &xds)?;
    let log = web_cp.log_contents();
    ensure!(
        !log.contains("NACK"),
        "the client NACKed its config:\n{log}"
    );
    let identities =
        &sidecar.config_dump()?["config"]["clusters"][SERVER_CLUSTER]["tls"]["identities"];
    ensure!(
        *identities == json!([{"exact": WORKLOAD_ID}, {"exact": LEGACY_ID}]),
        "the cluster holds both ids: {identities}"
    );

    // The server presenting the second id is reached, every time.
    for _ in 0..3 {
        let (code, body) = curl(web, ["http://127.0.0.1:10001/"])?;
        ensure!(code == 200 && body == nginx.body(), "{code} {body}");
    }
    // The one presenting a third id is refused by the same list, the reply and the log
    // naming the cluster, both ids expected and the id presented.
    let (code, body) = curl(web, ["http://127.0.0.1:10002/"])?;
    let mismatch = format!(
        "peer identity mismatch: expected URI SAN {WORKLOAD_ID} or {LEGACY_ID}, certificate presents [\"{THIRD_ID}\"]"
    );
    ensure!(
        code == 503
            && body.contains(&mismatch)
            && body.contains(&format!("cluster {THIRD_CLUSTER}")),
        "{code} {body}"
    );
    let log = sidecar.process().log_contents();
    ensure!(
        log.lines()
            .any(|l| l.contains(THIRD_CLUSTER) && l.contains(&mismatch)),
        "no log line names the cluster and the ids:\n{log}"
    );
    Ok(())
}

/// The origins' port.
const ORIGIN_PORT: u16 = 8080;

/// A STATIC cluster `name` whose localities are `(priority, hosts)`.
fn cluster_at_priorities(name: &str, localities: &[(u32, &[&Host])]) -> Value {
    let localities: Vec<Value> = localities
        .iter()
        .map(|(priority, hosts)| {
            let endpoints: Vec<Value> = hosts
                .iter()
                .map(|h| {
                    json!({"endpoint": {"address": {"socketAddress": {
                    "address": h.ip4().to_string(), "portValue": ORIGIN_PORT}}}})
                })
                .collect();
            json!({"priority": priority, "lbEndpoints": endpoints})
        })
        .collect();
    json!({
        "name": name,
        "type": "STATIC",
        "connectTimeout": "5s",
        "loadAssignment": {"clusterName": name, "endpoints": localities},
    })
}

/// A TCP outbound on 127.0.0.1:`port` to `cluster`.
fn tcp_listener(port: u16, cluster: &str) -> (String, Value) {
    let name = format!("outbound:127.0.0.1:{port}");
    let value = json!({
        "name": name,
        "address": {"socketAddress": {"address": "127.0.0.1", "portValue": port}},
        "trafficDirection": "OUTBOUND",
        "filterChains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "statPrefix": cluster,
            "cluster": cluster,
        }}]}],
    });
    (name, value)
}

#[test]
fn a_cluster_serves_from_its_highest_priority_with_endpoints() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "python3"])?;
    let topo = Topology::new(&["cp", "web", "p0a", "p0b", "p1"])?;
    let (cp, web) = (topo.host("cp"), topo.host("web"));
    let (p0a, p0b, p1) = (topo.host("p0a"), topo.host("p0b"), topo.host("p1"));
    let pki = CpPki::new(topo.dir(), "cp-priorities", cp)?;
    let origins = [p0a, p0b, p1]
        .map(|h| start_http_server(h, ORIGIN_PORT))
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let body = |i: usize| origins[i].body().to_string();

    // P1 listed first: the order of the localities does not matter, their priority does.
    let mixed = cluster_at_priorities("mixed", &[(1, &[p1]), (0, &[p0a, p0b])]);
    let p1_only = cluster_at_priorities("fallback", &[(1, &[p1])]);
    let (mixed_name, mixed_listener) = tcp_listener(10001, "mixed");
    let (p1_name, p1_listener) = tcp_listener(10002, "fallback");
    let resources = json!({"xds": {
        CLUSTER: {"mixed": mixed, "fallback": p1_only},
        LISTENER: {mixed_name: mixed_listener, p1_name: p1_listener},
    }});
    let (cp_process, sidecar) =
        pki.web_sidecar(TEST_CP, cp, web, &resources, "ACK type=Listener")?;
    let log = cp_process.log_contents();
    ensure!(
        !log.contains("NACK"),
        "the sidecar NACKed its config:\n{log}"
    );
    let dump = sidecar.config_dump()?;
    let priorities: Vec<Value> = dump["config"]["clusters"]["mixed"]["endpoints"]
        .as_array()
        .context("the mixed cluster's endpoints")?
        .iter()
        .map(|e| e["priority"].clone())
        .collect();
    ensure!(
        priorities == [Value::Null, Value::Null, json!(1)],
        "endpoints in priority order, P1 last: {priorities:?}"
    );

    // Every connection through the mixed cluster lands on P0, round robin over both.
    let mut seen = BTreeSet::new();
    for _ in 0..8 {
        let (code, answer) = curl(web, ["http://127.0.0.1:10001/"])?;
        ensure!(code == 200, "{code} {answer}");
        seen.insert(answer);
    }
    ensure!(
        seen == BTreeSet::from([body(0), body(1)]),
        "mixed served {seen:?}"
    );
    // No P0 at all: P1 serves.
    for _ in 0..3 {
        let answer = curl(web, ["http://127.0.0.1:10002/"])?;
        ensure!(answer == (200, body(2)), "fallback: {answer:?}");
    }
    Ok(())
}

/// MeshCircuitBreaker's `maxConnectionPools` (Envoy's `max_connection_pools`) on an HTTP
/// cluster of two endpoints, round robin, with one worker each: the first request opens the
/// worker's pool to one endpoint (its connection kept alive), so a request the balancer sends
/// to the other endpoint finds no pool and gets 503 `no healthy upstream`, while those to the
/// first are served; `upstream_cx_pool_overflow` counts the refusals. Envoy 1.40 fed the same
/// resources answers the same sequence.
#[test]
fn a_cluster_opens_no_connection_pool_past_its_limit_as_envoy() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "python3"])?;
    let topo = Topology::new(&["cp", "web", "a", "b"])?;
    let (cp, web, a, b) = (
        topo.host("cp"),
        topo.host("web"),
        topo.host("a"),
        topo.host("b"),
    );
    let pki = CpPki::new(topo.dir(), "cp-pools", cp)?;
    let origins = [a, b]
        .map(|h| start_http_server(h, ORIGIN_PORT))
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let mut cluster = cluster_at_priorities("two", &[(0, &[a, b])]);
    cluster["circuitBreakers"] = json!({"thresholds": [{"maxConnectionPools": 1}]});
    let name = "outbound:127.0.0.1:10001";
    let listener = json!({
        "name": name,
        "address": {"socketAddress": {"address": "127.0.0.1", "portValue": 10001}},
        "trafficDirection": "OUTBOUND",
        "filterChains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "statPrefix": "two",
            "httpFilters": [{"name": "envoy.filters.http.router", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            "routeConfig": {"name": "two", "virtualHosts": [{"name": "two", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "two", "timeout": "0s"}}]}]},
        }}]}],
    });
    let file = pki.dir.join("web.json");
    let resources = json!({"xds": {CLUSTER: {"two": cluster}, LISTENER: {name: listener}}});
    std::fs::write(&file, serde_json::to_vec_pretty(&resources)?)?;
    let (cp_process, access) = pki.start_cp(TEST_CP, cp, 5678, &file, "cp")?;
    let dataplane = dataplane_yaml(
        "web",
        web,
        "  inbound:\n  - port: 18080\n    tags:\n      kuma.io/service: web\n",
    );
    // One worker, as the Envoy below (`--concurrency 1`): pools are per worker.
    let mut args = access.source_args("web", "dataplane", &dataplane)?;
    args.extend(["--concurrency".into(), "1".into()]);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let sidecar = Bearing::spawn_with_source(web, &args)?;
    sidecar.wait_ready()?;
    cp_process.wait_for_log("ACK type=Listener", Duration::from_secs(30))?;
    ensure!(
        !cp_process.log_contents().contains("NACK"),
        "{}",
        cp_process.log_contents()
    );

    let bodies: Vec<String> = origins.iter().map(|o| o.body().to_string()).collect();
    let answers = |proxy: &str| -> Result<Vec<(u16, String)>> {
        let mut all = Vec::new();
        for _ in 0..4 {
            all.push(curl(web, ["http://127.0.0.1:10001/"])?);
        }
        let first = all[0].clone();
        let refused = (503, "no healthy upstream".to_string());
        ensure!(
            first.0 == 200
                && bodies.contains(&first.1)
                && all == [first.clone(), refused.clone(), first, refused],
            "{proxy}: {all:?}"
        );
        Ok(all)
    };
    let bearing = answers("bearing")?;
    let overflows =
        sidecar.metric("bearing_cluster_upstream_cx_pool_overflow_total{cluster=\"two\"}")?;
    ensure!(overflows == 2.0, "pool overflows counted: {overflows}");
    let pools =
        sidecar.metric("bearing_cluster_upstream_connection_pools_active{cluster=\"two\"}")?;
    ensure!(pools == 1.0, "pools alive: {pools}");

    // Differential: Envoy 1.40 in Bearing's place, the same resources from the same CP.
    sidecar.process().stop(Duration::from_secs(5));
    let _envoy = access.envoy(web, "default", "web")?;
    web.wait_for_tcp_listener(10001, Duration::from_secs(20), None)
        .context("Envoy's listener")?;
    let envoy = answers("envoy")?;
    ensure!(
        envoy.iter().map(|a| a.0).eq(bearing.iter().map(|a| a.0)),
        "envoy {envoy:?}\nbearing {bearing:?}"
    );
    Ok(())
}

//! MeshHealthCheck and MeshCircuitBreaker's outlier detection as kuma-cp renders them, acted
//! on by a sidecar fed only by `bearing-test-cp`, in front of two origins (nginx on two
//! ports; a file in an origin's document root makes its health path answer 404 or its app
//! path 503):
//!
//! - Active health checks: the demo client's outbound from the golden
//!   `meshcircuitbreaker/outbound` with the `healthChecks` of the golden `meshhealthcheck`
//!   (path made `/hc`, intervals 1 s): an origin whose health path fails gets no traffic
//!   until it passes again, then takes its share again.
//! - Outlier detection: the same outbound with the golden's `outlierDetection` (consecutive
//!   failures 3, ejection 3 s, at most 50% ejected): an origin answering 503 is ejected after
//!   three of them and takes nothing until the ejection ends, then rejoins.
//!
//! Then Envoy 1.40, fed the same resources by the same CP in the client's place, does the
//! same.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bearing_e2e::*;
use serde_json::{json, Value};

/// The test CP binary.
const TEST_CP: &str = env!("CARGO_BIN_EXE_bearing-test-cp");

const BREAKER: &str =
    "envoyconfig-e2e/sidecars/meshcircuitbreaker/outbound.demo-client.golden.json";
const HEALTH: &str =
    "envoyconfig-e2e/zoneproxies/meshhealthcheck/outbound.zone-proxy-egress.golden.json";
/// The mesh of the circuit breaker golden.
const MESH: &str = "envoyconfig";
/// The MeshService cluster of test-server in the circuit breaker golden.
const SERVER_CLUSTER: &str = "envoyconfig_test-server__kuma-3_msvc_80";
/// The MeshExternalService cluster the MeshHealthCheck golden checks.
const CHECKED_CLUSTER: &str = "kri_extsvc_envoyconfig-zoneproxies_kuma-3__mes-zone-proxy_80";
/// The two origins.
const PORTS: [u16; 2] = [8080, 8081];
/// The outbound's URL, answered with the serving origin's port.
const APP: &str = "http://127.0.0.1:10001/app";

/// nginx on `port` whose `/hc` answers 404 while `sick` exists in its root, else 200, and
/// whose `/app` answers 503 while `fail` exists, else 200 with its port.
fn origin(host: &Host, port: u16) -> Result<Nginx> {
    NginxConfig::new(port)
        .ipv6(false)
        .server_snippet(
            r#"location = /hc { if (-f $document_root/sick) { return 404; } return 200 "ok\n"; }
location = /app { if (-f $document_root/fail) { return 503; } return 200 "$server_port\n"; }"#,
        )
        .start(host)
}

/// Creates (`true`) or removes `name` in `origin`'s root.
fn flag(origin: &Nginx, name: &str, set: bool) -> Result<()> {
    let path = origin.root_dir().join(name);
    match set {
        true => std::fs::write(&path, b"x").context("setting a flag file")?,
        false => std::fs::remove_file(&path).context("clearing a flag file")?,
    }
    Ok(())
}

/// The circuit breaker golden's server cluster to plaintext HTTP/1.1 origins, with neither
/// health signal nor panic threshold.
fn plain_cluster(golden: &KumaGolden) -> Result<Value> {
    golden.plaintext_cluster(SERVER_CLUSTER, &["outlierDetection", "commonLbConfig"])
}

/// Runs `check` against Bearing fed `cluster` in the demo client's outbound, then against
/// Envoy fed the same.
fn with_sidecar_then_envoy(
    name: &str,
    cluster: Value,
    check: impl Fn(&str, &Host, &Bearing, &[Nginx; 2]) -> Result<()>,
    check_envoy: impl Fn(&Host, &[Nginx; 2]) -> Result<()>,
) -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "nginx"])?;
    let topo = Topology::new(&["cp", "web", "backend"])?;
    let (cp, web, backend) = (topo.host("cp"), topo.host("web"), topo.host("backend"));
    let pki = CpPki::new(topo.dir(), name, cp)?;
    let mesh_ca = TestCa::new(&pki.dir, "mesh-ca")?;
    let leaf = mesh_ca.issue("demo-client", &["URI:spiffe://envoyconfig/demo-client"])?;
    let origins = [origin(backend, PORTS[0])?, origin(backend, PORTS[1])?];

    let golden = KumaGolden::load(BREAKER)?;
    let mut xds = XdsFile::new();
    let at = PORTS.map(|p| backend.sock4(p));
    xds.golden_client_outbound(&golden, web, (cluster, SERVER_CLUSTER), &at)?
        .mesh_identity(MESH, &leaf, &mesh_ca)?;
    let (_cp, access, sidecar) = pki.golden_client(TEST_CP, cp, web, &xds)?;
    check("bearing", web, &sidecar, &origins)?;

    // Differential: Envoy 1.40 in Bearing's place, the same resources from the same CP.
    sidecar.process().stop(Duration::from_secs(5));
    let _envoy = access.envoy(web, MESH, "demo-client")?;
    web.wait_for_tcp_listener(10001, Duration::from_secs(20), None)?;
    check_envoy(web, &origins)
}

/// An origin failing its health check takes no traffic until it passes again.
fn health_check_flow(proxy: &str, web: &Host, origins: &[Nginx; 2]) -> Result<()> {
    let limit = Duration::from_secs(15);
    let served = |ports: &[u16], what: &str| wait_until_served_by(web, APP, ports, limit, what);
    served(&PORTS, &format!("{proxy}: both healthy"))?;
    flag(&origins[1], "sick", true)?;
    served(&PORTS[..1], &format!("{proxy}: one failing"))?;
    // It stays out while it fails.
    let seen = spread(web, APP, 20)?;
    ensure!(
        served_by(&seen, &PORTS[..1]),
        "{proxy}: while failing: {seen:?}"
    );
    flag(&origins[1], "sick", false)?;
    served(&PORTS, &format!("{proxy}: recovered"))
}

#[test]
fn mesh_health_check_takes_a_failing_endpoint_out_until_it_recovers() -> Result<()> {
    let checks = KumaGolden::load(HEALTH)?
        .cluster(CHECKED_CLUSTER)?
        .get("healthChecks")
        .cloned()
        .context("the MeshHealthCheck golden's health checks")?;
    let mut check = checks.get(0).cloned().context("one health check")?;
    ensure!(
        check.pointer("/httpHealthCheck/path") == Some(&json!("/health")),
        "the golden checks /health: {check}"
    );
    set_field(&mut check, "/httpHealthCheck/path", json!("/hc"))?;
    // MeshHealthCheck's interval (10 s) and noTrafficInterval (Envoy's 60 s) made 1 s.
    set_field(&mut check, "/interval", json!("1s"))?;
    set_field(&mut check, "/noTrafficInterval", json!("1s"))?;
    let golden = KumaGolden::load(BREAKER)?;
    let mut cluster = plain_cluster(&golden)?;
    cluster["healthChecks"] = json!([check]);
    let bearing = |proxy: &str, web: &Host, sidecar: &Bearing, origins: &[Nginx; 2]| {
        health_check_flow(proxy, web, origins)?;
        let series =
            format!("bearing_cluster_health_check_failure_total{{cluster=\"{SERVER_CLUSTER}\"}}");
        let failures = sidecar.metric(&series)?;
        ensure!(failures >= 1.0, "{series} is {failures}");
        let series = format!("bearing_cluster_membership_healthy{{cluster=\"{SERVER_CLUSTER}\"}}");
        let healthy = sidecar.metric(&series)?;
        ensure!(healthy == 2.0, "{series} is {healthy}");
        Ok(())
    };
    let envoy = |web: &Host, origins: &[Nginx; 2]| health_check_flow("envoy", web, origins);
    with_sidecar_then_envoy("cp-health-check", cluster, bearing, envoy)
}

/// An origin answering 503 is ejected after three and rejoins when its ejection ends.
fn outlier_flow(proxy: &str, web: &Host, origins: &[Nginx; 2]) -> Result<()> {
    let limit = Duration::from_secs(15);
    let served = |ports: &[u16], what: &str| wait_until_served_by(web, APP, ports, limit, what);
    served(&PORTS, &format!("{proxy}: both serving"))?;
    flag(&origins[1], "fail", true)?;
    // Ejected after its third 503 in a row (about six requests); then only the first.
    served(&PORTS[..1], &format!("{proxy}: ejected"))?;
    flag(&origins[1], "fail", false)?;
    // The ejection (3 s) ends at a sweep (every 1 s).
    served(&PORTS, &format!("{proxy}: rejoined"))
}

#[test]
fn mesh_circuit_breaker_ejects_a_failing_endpoint_until_its_ejection_ends() -> Result<()> {
    let golden = KumaGolden::load(BREAKER)?;
    let mut detection = golden
        .cluster(SERVER_CLUSTER)?
        .get("outlierDetection")
        .cloned()
        .context("the golden's outlier detection")?;
    // The golden's 10 consecutive failures, 5 s interval, 30 s ejection and 20% (no host of
    // two may go) made 3, 1 s, 3 s and 50%.
    for (field, value) in [
        ("consecutive5xx", json!(3)),
        ("consecutiveGatewayFailure", json!(3)),
        ("interval", json!("1s")),
        ("baseEjectionTime", json!("3s")),
        ("maxEjectionPercent", json!(50)),
    ] {
        detection[field] = value;
    }
    let mut cluster = plain_cluster(&golden)?;
    cluster["outlierDetection"] = detection;
    cluster["commonLbConfig"] = golden.cluster(SERVER_CLUSTER)?["commonLbConfig"].clone();
    let bearing = |proxy: &str, web: &Host, sidecar: &Bearing, origins: &[Nginx; 2]| {
        outlier_flow(proxy, web, origins)?;
        let series = format!(
            "bearing_cluster_outlier_detection_ejections_enforced_total{{cluster=\"{SERVER_CLUSTER}\"}}"
        );
        let ejections = sidecar.metric(&series)?;
        ensure!(ejections == 1.0, "{series} is {ejections}");
        Ok(())
    };
    let envoy = |web: &Host, origins: &[Nginx; 2]| outlier_flow("envoy", web, origins);
    with_sidecar_then_envoy("cp-outlier", cluster, bearing, envoy)
}

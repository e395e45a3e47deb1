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
//! - Failing traffic on panic: the health-checked outbound with MeshHealthCheck's
//!   `failTrafficOnPanic` (`zone_aware_lb_config`): both origins failing their health check
//!   (total panic) get the proxy's own 503 `no healthy upstream`; the same cluster without it
//!   (served again by the CP) sends them to the failing origins (panic routing).
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

/// Serves another version of the outbound's cluster (the CP polls its file).
type ServeCluster<'a> = &'a dyn Fn(Value) -> Result<()>;

/// Runs `check` against Bearing fed `cluster` in the demo client's outbound, then against
/// Envoy fed the same (served again first); both may have the CP serve another cluster.
fn with_sidecar_then_envoy(
    name: &str,
    cluster: Value,
    check: impl Fn(&str, &Host, &Bearing, &[Nginx; 2], ServeCluster) -> Result<()>,
    check_envoy: impl Fn(&Host, &[Nginx; 2], ServeCluster) -> Result<()>,
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
    xds.golden_client_outbound(&golden, web, (cluster.clone(), SERVER_CLUSTER), &at)?
        .mesh_identity(MESH, &leaf, &mesh_ca)?;
    let (_cp, access, sidecar) = pki.golden_client(TEST_CP, cp, web, &xds)?;
    // `golden_client` serves the file `demo-client.json` in the PKI's directory.
    let file = pki.dir.join("demo-client.json");
    let serve = |c: Value| {
        let mut xds = xds.clone();
        *xds.get_mut(CLUSTER, SERVER_CLUSTER)? = c;
        xds.write(&file)
    };
    check("bearing", web, &sidecar, &origins, &serve)?;

    // Differential: Envoy 1.40 in Bearing's place, the same resources from the same CP.
    sidecar.process().stop(Duration::from_secs(5));
    serve(cluster)?;
    let _envoy = access.envoy(web, MESH, "demo-client")?;
    web.wait_for_tcp_listener(10001, Duration::from_secs(20), None)?;
    check_envoy(web, &origins, &serve)
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

/// The golden's MeshHealthCheck check of `/hc` every second, in the circuit breaker golden's
/// plaintext server cluster.
fn checked_cluster() -> Result<Value> {
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
    Ok(cluster)
}

#[test]
fn mesh_health_check_takes_a_failing_endpoint_out_until_it_recovers() -> Result<()> {
    let cluster = checked_cluster()?;
    let bearing =
        |proxy: &str, web: &Host, sidecar: &Bearing, origins: &[Nginx; 2], _: ServeCluster| {
            health_check_flow(proxy, web, origins)?;
            let series = format!(
                "bearing_cluster_health_check_failure_total{{cluster=\"{SERVER_CLUSTER}\"}}"
            );
            let failures = sidecar.metric(&series)?;
            ensure!(failures >= 1.0, "{series} is {failures}");
            let series =
                format!("bearing_cluster_membership_healthy{{cluster=\"{SERVER_CLUSTER}\"}}");
            let healthy = sidecar.metric(&series)?;
            ensure!(healthy == 2.0, "{series} is {healthy}");
            Ok(())
        };
    let envoy = |web: &Host, origins: &[Nginx; 2], _: ServeCluster| {
        health_check_flow("envoy", web, origins)
    };
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
    let bearing = |proxy: &str,
                   web: &Host,
                   sidecar: &Bearing,
                   origins: &[Nginx; 2],
                   _: ServeCluster| {
        outlier_flow(proxy, web, origins)?;
        let series = format!(
            "bearing_cluster_outlier_detection_ejections_enforced_total{{cluster=\"{SERVER_CLUSTER}\"}}"
        );
        let ejections = sidecar.metric(&series)?;
        ensure!(ejections == 1.0, "{series} is {ejections}");
        Ok(())
    };
    let envoy =
        |web: &Host, origins: &[Nginx; 2], _: ServeCluster| outlier_flow("envoy", web, origins);
    with_sidecar_then_envoy("cp-outlier", cluster, bearing, envoy)
}

/// Waits up to 15 s for 10 requests in a row to get the proxy's own 503 `no healthy
/// upstream`; `what` names the wait in the error.
fn wait_until_refused(web: &Host, what: &str) -> Result<()> {
    let started = std::time::Instant::now();
    loop {
        let mut refused = 0;
        let mut last = None;
        for _ in 0..10 {
            let out = curl_output(web, ["-s", APP])?;
            match (out.http_code, out.body.trim()) {
                (503, "no healthy upstream") => refused += 1,
                (code, body) => last = Some(format!("{code} {body}")),
            }
        }
        if refused == 10 {
            return Ok(());
        }
        ensure!(
            started.elapsed() < Duration::from_secs(15),
            "{what}: still answered {last:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Both origins failing their health check: refused while the cluster fails traffic on panic,
/// served by both (panic routing) once the CP serves the cluster without it, refused again
/// with it; then both pass again.
fn fail_on_panic_flow(
    proxy: &str,
    web: &Host,
    origins: &[Nginx; 2],
    (serve, failing, routing): (ServeCluster, &Value, &Value),
) -> Result<()> {
    let limit = Duration::from_secs(15);
    let served = |ports: &[u16], what: &str| wait_until_served_by(web, APP, ports, limit, what);
    served(&PORTS, &format!("{proxy}: both healthy"))?;
    for origin in origins {
        flag(origin, "sick", true)?;
    }
    wait_until_refused(web, &format!("{proxy}: both failing"))?;
    serve(routing.clone())?;
    served(&PORTS, &format!("{proxy}: both failing, panic routing"))?;
    serve(failing.clone())?;
    wait_until_refused(web, &format!("{proxy}: failing on panic again"))?;
    for origin in origins {
        flag(origin, "sick", false)?;
    }
    served(&PORTS, &format!("{proxy}: recovered"))
}

/// MeshHealthCheck's `failTrafficOnPanic: true` as kuma-cp 2.14 renders it
/// (`common_lb_config.zone_aware_lb_config.fail_traffic_on_panic`).
#[test]
fn mesh_health_check_fails_traffic_on_panic_as_envoy() -> Result<()> {
    let routing = checked_cluster()?;
    let mut failing = routing.clone();
    failing["commonLbConfig"] = json!({"zoneAwareLbConfig": {"failTrafficOnPanic": true}});
    let flow = |proxy: &str, web: &Host, origins: &[Nginx; 2], serve: ServeCluster| {
        fail_on_panic_flow(proxy, web, origins, (serve, &failing, &routing))
    };
    let bearing =
        |proxy: &str, web: &Host, sidecar: &Bearing, origins: &[Nginx; 2], serve: ServeCluster| {
            flow(proxy, web, origins, serve)?;
            let series = format!(
                "bearing_cluster_no_healthy_upstream_total{{cluster=\"{SERVER_CLUSTER}\"}}"
            );
            let refused = sidecar.metric(&series)?;
            ensure!(refused >= 20.0, "{series} is {refused}");
            Ok(())
        };
    let envoy =
        |web: &Host, origins: &[Nginx; 2], serve: ServeCluster| flow("envoy", web, origins, serve);
    with_sidecar_then_envoy("cp-fail-on-panic", failing.clone(), bearing, envoy)
}

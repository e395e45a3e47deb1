//! MeshHealthCheck's gRPC check and event log as kuma-cp 2.14 renders them
//! (`grpcHealthCheck: {authority, serviceName}`, an `event_logger` file sink,
//! `alwaysLogHealthCheckFailures`), acted on by a sidecar fed only by `bearing-test-cp`: the
//! demo client's outbound (golden `meshcircuitbreaker/outbound`) to two gRPC origins
//! (`grpc-health-origin`, HTTP/2 as kuma-cp's clusters of a gRPC service) over the cluster
//! with that check (intervals 1 s). An origin answering `NOT_SERVING` gets no traffic until it
//! answers `SERVING` again; the event log holds Envoy's events. Then Envoy 1.40, fed the same
//! resources by the same CP in the client's place, does the same, and writes the same events
//! (timestamps aside, repeated failure lines counted once: their number follows the clock).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bearing_e2e::*;
use serde_json::{json, Value};

/// The test CP binary.
const TEST_CP: &str = env!("CARGO_BIN_EXE_bearing-test-cp");
/// The gRPC origin.
const ORIGIN: &str = env!("CARGO_BIN_EXE_grpc-health-origin");

const BREAKER: &str =
    "envoyconfig-e2e/sidecars/meshcircuitbreaker/outbound.demo-client.golden.json";
/// The mesh of the golden.
const MESH: &str = "envoyconfig";
/// The MeshService cluster of test-server in the golden.
const SERVER_CLUSTER: &str = "envoyconfig_test-server__kuma-3_msvc_80";
/// The two origins.
const PORTS: [u16; 2] = [8080, 8081];
/// The outbound's URL, answered with the serving origin's port.
const APP: &str = "http://127.0.0.1:10001/app";
/// What the check asks (kuma-cp's `basic_grpc_health_check_cluster` golden).
const AUTHORITY: &str = "grpc-client.default.svc.cluster.local";
const SERVICE: &str = "grpc-client";

/// A gRPC origin on `host:port` and its directory (flag and record files).
struct Origin {
    _process: Process,
    dir: PathBuf,
}

fn origin(host: &Host, port: u16) -> Result<Origin> {
    let dir = host.dir().join(format!("grpc-origin-{port}"));
    std::fs::create_dir_all(&dir).context("the origin's directory")?;
    let process = host
        .command(ORIGIN)
        .args(["--port", &port.to_string()])
        .arg("--dir")
        .arg(&dir)
        .log_name(format!("grpc{port}"))
        .spawn()?;
    host.wait_for_tcp_listener(port, Duration::from_secs(10), Some(&process))?;
    Ok(Origin {
        _process: process,
        dir,
    })
}

/// Makes `origin` answer `NOT_SERVING` (`true`) or `SERVING`.
fn not_serving(origin: &Origin, set: bool) -> Result<()> {
    let path = origin.dir.join("not-serving");
    match set {
        true => std::fs::write(&path, b"x").context("setting not-serving")?,
        false => std::fs::remove_file(&path).context("clearing not-serving")?,
    }
    Ok(())
}

/// The origin going `NOT_SERVING` leaves the traffic and rejoins it once `SERVING`; each
/// origin was asked with the check's authority and service. The event log's lines after
/// (flushed within a second), removed for the next proxy.
fn flow(proxy: &str, web: &Host, origins: &[Origin; 2], log: &Path) -> Result<Vec<Value>> {
    let limit = Duration::from_secs(15);
    let served = |ports: &[u16], what: &str| wait_until_served_by(web, APP, ports, limit, what);
    served(&PORTS, &format!("{proxy}: both serving"))?;
    not_serving(&origins[1], true)?;
    served(&PORTS[..1], &format!("{proxy}: one not serving"))?;
    let seen = spread(web, APP, 20)?;
    ensure!(
        served_by(&seen, &PORTS[..1]),
        "{proxy}: while not serving: {seen:?}"
    );
    not_serving(&origins[1], false)?;
    served(&PORTS, &format!("{proxy}: serving again"))?;
    for o in origins {
        let asked = std::fs::read_to_string(o.dir.join("last-check"))?;
        ensure!(
            asked.trim() == format!("{AUTHORITY} {SERVICE}"),
            "{proxy} asked {asked:?}"
        );
    }
    // Bearing writes within a second, Envoy within its file flush interval (10 s): until the
    // second origin's last event is its return.
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let events = text
            .lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("{proxy}: event line {l}")))
            .collect::<Result<Vec<Value>>>()?;
        let returned = events
            .iter()
            .rev()
            .find(|e| e.pointer("/host/socket_address/port_value") == Some(&json!(PORTS[1])));
        if returned.and_then(|e| e.pointer("/add_healthy_event/first_check")) == Some(&json!(false))
        {
            std::fs::remove_file(log)?;
            return Ok(events);
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!("{proxy}'s event log {}: {events:#?}", log.display());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Each host's events (by port), timestamps removed, a run of equal events counted once.
fn by_host(events: &[Value]) -> Result<BTreeMap<u64, Vec<Value>>> {
    let mut out: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    for event in events {
        let port = event
            .pointer("/host/socket_address/port_value")
            .and_then(Value::as_u64)
            .with_context(|| format!("an event's host: {event}"))?;
        let mut event = event.clone();
        let stamped = event
            .as_object_mut()
            .and_then(|o| o.remove("timestamp"))
            .is_some();
        ensure!(stamped, "an event without its timestamp: {event}");
        let host = out.entry(port).or_default();
        if host.last() != Some(&event) {
            host.push(event);
        }
    }
    Ok(out)
}

/// The kind of each event and its fields, for messages.
fn kinds(events: &[Value]) -> Vec<String> {
    let names = [
        "eject_unhealthy_event",
        "add_healthy_event",
        "health_check_failure_event",
        "successful_health_check_event",
    ];
    events
        .iter()
        .map(|e| {
            let kind = names.iter().find(|k| e.get(**k).is_some()).unwrap_or(&"?");
            format!("{kind}{}", e[*kind])
        })
        .collect()
}

#[test]
fn grpc_health_checks_take_a_not_serving_endpoint_out_and_log_events_as_envoy() -> Result<()> {
    require_root_and_tools()?;
    let topo = Topology::new(&["cp", "web", "backend"])?;
    let (cp, web, backend) = (topo.host("cp"), topo.host("web"), topo.host("backend"));
    let pki = CpPki::new(topo.dir(), "cp-grpc-health", cp)?;
    let mesh_ca = TestCa::new(&pki.dir, "mesh-ca")?;
    let leaf = mesh_ca.issue("demo-client", &["URI:spiffe://envoyconfig/demo-client"])?;
    let origins = [origin(backend, PORTS[0])?, origin(backend, PORTS[1])?];
    // Where the sidecar (not root) may write, as cp_access_log's files.
    let logs = topo.dir().join("logs");
    std::fs::create_dir_all(&logs)?;
    std::os::unix::fs::chown(&logs, Some(KUMA_DP_UID), Some(KUMA_DP_UID))?;
    let log = logs.join("hc-events.log");

    let golden = KumaGolden::load(BREAKER)?;
    let mut cluster =
        golden.plaintext_cluster(SERVER_CLUSTER, &["outlierDetection", "commonLbConfig"])?;
    // HTTP/2, as kuma-cp's cluster of a gRPC service.
    let http = "/typedExtensionProtocolOptions/envoy.extensions.upstreams.http.v3.HttpProtocolOptions/explicitHttpConfig";
    set_field(&mut cluster, http, json!({"http2ProtocolOptions": {}}))?;
    // kuma-cp 2.14's MeshHealthCheck rendering (configurer.go: buildHealthCheck and
    // grpcHealthCheck) of `interval: 1s, timeout: 2s, unhealthyThreshold: 3,
    // healthyThreshold: 1, noTrafficInterval: 1s, eventLogPath, alwaysLogHealthCheckFailures:
    // true, grpc: {serviceName, authority}`.
    cluster["healthChecks"] = json!([{
        "grpcHealthCheck": {"authority": AUTHORITY, "serviceName": SERVICE},
        "interval": "1s",
        "timeout": "2s",
        "unhealthyThreshold": 3,
        "healthyThreshold": 1,
        "eventLogger": [{
            "name": "envoy.health_check.event_sinks.file",
            "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.health_check.event_sinks.file.v3.HealthCheckEventFileSink",
                "eventLogPath": log.display().to_string(),
            },
        }],
        "alwaysLogHealthCheckFailures": true,
        "noTrafficInterval": "1s",
    }]);

    let mut xds = XdsFile::new();
    let at = PORTS.map(|p| backend.sock4(p));
    xds.golden_client_outbound(&golden, web, (cluster, SERVER_CLUSTER), &at)?
        .mesh_identity(MESH, &leaf, &mesh_ca)?;
    let (_cp, access, sidecar) = pki.golden_client(TEST_CP, cp, web, &xds)?;
    let bearing = by_host(&flow("bearing", web, &origins, &log)?)?;
    let series =
        format!("bearing_cluster_health_check_failure_total{{cluster=\"{SERVER_CLUSTER}\"}}");
    let failures = sidecar.metric(&series)?;
    ensure!(failures >= 1.0, "{series} is {failures}");
    // The serving origin: added at its first check. The other: added, ejected by an
    // active failure (then its failures, every one logged), added again.
    let (first, second) = (
        bearing.get(&PORTS[0].into()).cloned().unwrap_or_default(),
        bearing.get(&PORTS[1].into()).cloned().unwrap_or_default(),
    );
    ensure!(
        kinds(&first) == ["add_healthy_event{\"first_check\":true}"],
        "bearing, the serving origin: {:?}",
        kinds(&first)
    );
    ensure!(
        kinds(&second)
            == [
                "add_healthy_event{\"first_check\":true}",
                "eject_unhealthy_event{\"failure_type\":\"ACTIVE\",\"http_status_code\":0}",
                "health_check_failure_event{\"failure_type\":\"ACTIVE\",\"first_check\":false,\"http_status_code\":0}",
                "add_healthy_event{\"first_check\":false}",
            ],
        "bearing, the origin made not serving: {:?}",
        kinds(&second)
    );

    // Differential: Envoy 1.40 in Bearing's place, the same resources from the same CP.
    sidecar.process().stop(Duration::from_secs(5));
    let _envoy = access.envoy(web, MESH, "demo-client")?;
    web.wait_for_tcp_listener(10001, Duration::from_secs(20), None)?;
    let envoy = by_host(&flow("envoy", web, &origins, &log)?)?;
    for port in PORTS.map(u64::from) {
        ensure!(
            bearing.get(&port) == envoy.get(&port),
            "port {port}: bearing wrote\n{:#?}\nenvoy wrote\n{:#?}",
            bearing.get(&port),
            envoy.get(&port)
        );
    }
    Ok(())
}

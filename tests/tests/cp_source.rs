//! `bearing run --cp-address` end to end, config only from `bearing-test-cp` over TLS: two
//! sidecars from Kuma's envoyconfig-e2e "no-policies" goldens (demo-client → test-server, mesh
//! mTLS from SDS secrets of a real test mesh CA), rewritten with the namespaces' addresses.
//! Traffic crosses the mesh; the CP killed, traffic continues; the CP back, the proxies
//! reconnect (ACK lines); a new outbound pushed applies with no failed request on the old one;
//! a restricting RBAC filter is NACKed with its detail while the old config serves.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use base64::Engine;
use bearing_e2e::*;
use serde_json::{json, Value};

const GOLDENS: &str = "envoyconfig-e2e/sidecars/meshtrafficpermission";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ENDPOINTS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// The MeshService cluster of test-server in the client's golden.
const SERVER_CLUSTER: &str = "envoyconfig_test-server__kuma-3_msvc_80";
/// The server sidecar's inbound port (the golden's is 80, with no real address).
const INBOUND_PORT: u16 = 18080;
/// The application behind test-server's inbound.
const APP_PORT: u16 = 8080;

/// The `xds` map of one of the goldens.
fn golden(proxy: &str) -> Result<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/kuma-corpus")
        .join(GOLDENS)
        .join(format!("no-policies.{proxy}.golden.json"));
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let mut doc: Value = serde_json::from_str(&text)?;
    Ok(doc["xds"].take())
}

/// Resource `name` of `type_url` from a golden's `xds` map.
fn resource(xds: &Value, type_url: &str, name: &str) -> Result<Value> {
    xds[type_url]
        .get(name)
        .cloned()
        .with_context(|| format!("{name} not in the golden"))
}

/// The golden's two mesh secrets with real PEMs: the proxy's leaf and the mesh CA.
fn secrets(leaf: &CertFiles, ca: &TestCa) -> Result<Value> {
    let b64 = |pem: String| base64::engine::general_purpose::STANDARD.encode(pem);
    Ok(json!({
        "identity_cert:secret:envoyconfig": {
            "name": "identity_cert:secret:envoyconfig",
            "tlsCertificate": {
                "certificateChain": {"inlineBytes": b64(leaf.cert_pem()?)},
                "privateKey": {"inlineBytes": b64(leaf.key_pem()?)},
            },
        },
        "mesh_ca:secret:envoyconfig": {
            "name": "mesh_ca:secret:envoyconfig",
            "validationContext": {"trustedCa": {"inlineBytes": b64(ca.cert_pem()?)}},
        },
    }))
}

/// The golden's outbound listener to test-server, bound on 127.0.0.1:`port` (the golden's is
/// a VIP without a bind of its own, for transparent proxying).
fn outbound(client: &Value, port: u16) -> Result<(String, Value)> {
    let mut listener = resource(client, LISTENER, "outbound:IP_REDACTED:80")?;
    let name = format!("outbound:127.0.0.1:{port}");
    listener["name"] = json!(name);
    listener["address"]["socketAddress"] = json!({"address": "127.0.0.1", "portValue": port});
    listener
        .as_object_mut()
        .context("listener")?
        .remove("bindToPort");
    Ok((name, listener))
}

/// demo-client's resources: its own inbound (which gives its mesh identity its service),
/// test-server's cluster (mTLS, HTTP/2, hashed SNI) with its endpoint at `server`'s inbound,
/// and one outbound listener per port of `outbounds`.
fn client_resources(
    web: &Host,
    server: &Host,
    leaf: &CertFiles,
    ca: &TestCa,
    outbounds: &[u16],
) -> Result<Value> {
    let client = golden("demo-client")?;
    let local = inbound(&client, 3000, 3000, web)?;
    let mut assignment = resource(&client, ENDPOINTS, SERVER_CLUSTER)?;
    assignment["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]["socketAddress"] =
        json!({"address": server.ip4().to_string(), "portValue": INBOUND_PORT});
    let mut listeners = serde_json::Map::new();
    listeners.insert(
        local["listener"][0].as_str().unwrap_or_default().into(),
        local["listener"][1].clone(),
    );
    for port in outbounds {
        let (name, listener) = outbound(&client, *port)?;
        listeners.insert(name, listener);
    }
    Ok(json!({"xds": {
        CLUSTER: {
            SERVER_CLUSTER: resource(&client, CLUSTER, SERVER_CLUSTER)?,
            local["cluster"][0].as_str().unwrap_or_default(): local["cluster"][1],
        },
        ENDPOINTS: {SERVER_CLUSTER: assignment},
        LISTENER: listeners,
        SECRET: secrets(leaf, ca)?,
    }}))
}

/// A golden's inbound listener `inbound:IP_REDACTED:<listener_port>` on `host`'s address and
/// `INBOUND_PORT`, and its application cluster `localhost:<port>` on 127.0.0.1:`port`.
fn inbound(golden: &Value, listener_port: u16, port: u16, host: &Host) -> Result<Value> {
    let listener = format!("inbound:IP_REDACTED:{listener_port}");
    let mut inbound = resource(golden, LISTENER, &listener)?;
    let name = format!("inbound:{}:{INBOUND_PORT}", host.ip4());
    inbound["name"] = json!(name);
    inbound["address"]["socketAddress"] =
        json!({"address": host.ip4().to_string(), "portValue": INBOUND_PORT});
    inbound
        .as_object_mut()
        .context("listener")?
        .remove("bindToPort");
    let app_name = format!("localhost:{port}");
    let mut app = resource(golden, CLUSTER, &app_name)?;
    app["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]
        ["socketAddress"] = json!({"address": "127.0.0.1", "portValue": port});
    app["upstreamBindConfig"]["sourceAddress"]["address"] = json!("127.0.0.6");
    Ok(json!({"listener": [name, inbound], "cluster": [app_name, app]}))
}

/// test-server's resources: its mTLS inbound (HCM with the default allow-all RBAC) on
/// `server`'s address and the local application cluster.
fn server_resources(server: &Host, leaf: &CertFiles, ca: &TestCa) -> Result<Value> {
    let golden = golden("test-server")?;
    let local = inbound(&golden, 80, APP_PORT, server)?;
    Ok(json!({"xds": {
        CLUSTER: {local["cluster"][0].as_str().unwrap_or_default(): local["cluster"][1]},
        LISTENER: {local["listener"][0].as_str().unwrap_or_default(): local["listener"][1]},
        SECRET: secrets(leaf, ca)?,
    }}))
}

/// Writes `value` to `path` whole (a temporary file renamed over it), so the CP's poll never
/// sees half a file.
fn write_json(path: &Path, value: &Value) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// One `bearing-test-cp` serving `resources` over TLS on `cp`'s address and `port`.
fn start_cp(cp: &Host, port: u16, tls: &CertFiles, resources: &Path, log: &str) -> Result<Process> {
    let process = cp
        .command(env!("CARGO_BIN_EXE_bearing-test-cp"))
        .arg("--listen")
        .arg(format!("{}:{port}", cp.ip4()))
        .arg("--tls-cert")
        .arg(&tls.cert)
        .arg("--tls-key")
        .arg(&tls.key)
        .arg("--resources")
        .arg(resources)
        .log_name(log)
        .spawn()?;
    process.wait_for_log("LISTEN addr=", Duration::from_secs(10))?;
    Ok(process)
}

/// Starts `bearing run --cp-address https://<cp>:<port>` for Dataplane `name` in `host`.
fn start_sidecar<'h>(
    host: &'h Host,
    cp: &Host,
    port: u16,
    name: &str,
    ca: &Path,
    dir: &Path,
) -> Result<Bearing<'h>> {
    let url = format!("https://{}:{port}", cp.ip4());
    Bearing::spawn_from_cp(host, &url, ca, dir, ("envoyconfig", name, INBOUND_PORT))
}

/// `GET http://127.0.0.1:<port>/` from `host`: the status (0 when curl failed).
fn get(host: &Host, port: u16) -> Result<u16> {
    let out = curl_output(
        host,
        [format!("http://127.0.0.1:{port}/"), "-m".into(), "5".into()],
    )?;
    Ok(if out.exit_code == Some(0) {
        out.http_code
    } else {
        0
    })
}

#[test]
fn sidecars_take_their_config_from_the_test_cp() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "nginx"])?;
    let topo = Topology::new(&["cp", "web", "backend"])?;
    let (cp, web, backend) = (topo.host("cp"), topo.host("web"), topo.host("backend"));
    let dir = topo.dir().join("cp-source");
    std::fs::create_dir_all(&dir)?;
    let cp_ca = TestCa::new(&dir, "cp-ca")?;
    let cp_tls = cp_ca.issue("kuma-cp", &[&format!("IP:{}", cp.ip4())])?;
    let mesh_ca = TestCa::new(&dir, "mesh-ca")?;
    let client_leaf = mesh_ca.issue("demo-client", &["URI:spiffe://envoyconfig/demo-client"])?;
    let server_leaf = mesh_ca.issue("test-server", &["URI:spiffe://envoyconfig/test-server"])?;

    let nginx = start_nginx(backend, APP_PORT)?;
    let web_file = dir.join("web.json");
    let backend_file = dir.join("backend.json");
    write_json(
        &web_file,
        &client_resources(web, backend, &client_leaf, &mesh_ca, &[10001])?,
    )?;
    write_json(
        &backend_file,
        &server_resources(backend, &server_leaf, &mesh_ca)?,
    )?;
    let cp_web = start_cp(cp, 5678, &cp_tls, &web_file, "cp-web")?;
    let cp_backend = start_cp(cp, 5679, &cp_tls, &backend_file, "cp-backend")?;
    let ca = cp_ca.files().cert.clone();
    let server = start_sidecar(backend, cp, 5679, "test-server", &ca, &dir)?;
    let client = start_sidecar(web, cp, 5678, "demo-client", &ca, &dir)?;
    server.wait_ready()?;
    client.wait_ready()?;

    // Across the mesh: demo-client's outbound → mTLS (HTTP/2) → test-server's inbound → nginx.
    let (code, body) = curl(web, ["http://127.0.0.1:10001/"])?;
    ensure!(code == 200 && body == nginx.body(), "{code} {body}");
    let dump = client.config_dump()?;
    ensure!(
        dump["source"]
            .as_str()
            .is_some_and(|s| s.contains("control plane")),
        "{}",
        dump["source"]
    );
    for (process, node) in [
        (&cp_web, "envoyconfig.demo-client"),
        (&cp_backend, "envoyconfig.test-server"),
    ] {
        for kind in ["Cluster", "Listener", "Secret"] {
            let line = format!("ACK type={kind} ");
            let log = process.log_contents();
            ensure!(
                log.lines()
                    .any(|l| l.starts_with(&line) && l.contains(node)),
                "{node}: no {line}line:\n{log}"
            );
        }
    }

    // The CP gone: the last config keeps serving.
    cp_web.kill();
    cp_backend.kill();
    for _ in 0..5 {
        ensure!(get(web, 10001)? == 200, "a request failed with the CP down");
    }

    // The CP back: both proxies reconnect and ACK again.
    let cp_web = start_cp(cp, 5678, &cp_tls, &web_file, "cp-web-2")?;
    let cp_backend = start_cp(cp, 5679, &cp_tls, &backend_file, "cp-backend-2")?;
    cp_web.wait_for_log("ACK type=Listener", Duration::from_secs(60))?;
    cp_backend.wait_for_log("ACK type=Listener", Duration::from_secs(60))?;
    ensure!(get(web, 10001)? == 200);

    // A new outbound pushed while requests run on the old one: applied, none failed.
    let running = AtomicBool::new(true);
    let (sent, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(|| {
            while running.load(Ordering::Relaxed) {
                sent.fetch_add(1, Ordering::Relaxed);
                if !matches!(get(web, 10001), Ok(200)) {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let result = (|| {
            write_json(
                &web_file,
                &client_resources(web, backend, &client_leaf, &mesh_ca, &[10001, 10002])?,
            )?;
            wait_until(Duration::from_secs(30), || {
                matches!(get(web, 10002), Ok(200))
            })
            .context("the new outbound 10002 never answered")?;
            std::thread::sleep(Duration::from_millis(500));
            Ok(())
        })();
        running.store(false, Ordering::Relaxed);
        result
    })?;
    let (sent, failed) = (sent.into_inner(), failed.into_inner());
    ensure!(
        sent > 0 && failed == 0,
        "{failed} of {sent} requests failed during the change"
    );
    eprintln!("{sent} requests on outbound 10001 while 10002 was pushed: none failed");

    // A restricting RBAC filter: NACKed with its detail, the old config serving on.
    let served = client.config_dump()?["version"].clone();
    let mut resources = client_resources(web, backend, &client_leaf, &mesh_ca, &[10001, 10002])?;
    let filters = &mut resources["xds"][LISTENER]["outbound:127.0.0.1:10002"]["filterChains"][0]
        ["filters"][0]["typedConfig"]["httpFilters"];
    let filters = filters.as_array_mut().context("httpFilters")?;
    filters.insert(
        0,
        json!({"name": "envoy.filters.http.rbac", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"policies": {"only-admins": {
                "permissions": [{"any": true}],
                "principals": [{"authenticated": {"principalName": {"exact": "spiffe://envoyconfig/admin"}}}],
            }}},
        }}),
    );
    write_json(&web_file, &resources)?;
    cp_web.wait_for_log("NACK type=Listener", Duration::from_secs(30))?;
    let log = cp_web.log_contents();
    let nack = log
        .lines()
        .find(|l| l.starts_with("NACK type=Listener"))
        .context("NACK line")?;
    ensure!(
        nack.contains("outbound:127.0.0.1:10002") && nack.contains("rbac"),
        "the NACK names the listener and the filter: {nack}"
    );
    let dump = client.config_dump()?;
    ensure!(dump["version"] == served, "the old config is still applied");
    ensure!(
        dump["last_rejected"]["problems"]
            .to_string()
            .contains("outbound:127.0.0.1:10002"),
        "{}",
        dump["last_rejected"]
    );
    ensure!(get(web, 10001)? == 200 && get(web, 10002)? == 200);
    Ok(())
}

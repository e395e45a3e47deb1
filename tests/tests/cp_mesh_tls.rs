//! MeshTLS as kuma-cp renders it (`envoyconfig-e2e/sidecars/meshtls/inbound`: TLS 1.3 only,
//! one cipher), enforced by sidecars fed only by `bearing-test-cp`. The server's inbound
//! refuses a mesh client offering TLS 1.2 at most (a `protocol version` alert) and serves
//! one speaking TLS 1.3; the client's outbound cluster of the golden (TLS 1.3) reaches the
//! server, while the same cluster hand-edited to TLS 1.2 at most fails against it, and so
//! does one with a cipher list but no versions (`TLS_AUTO`: a client's TLS 1.2 at most in
//! Envoy). Then Envoy 1.40, fed the same resources by the same CPs, in the server's place
//! and then in the client's too, does the same.

use std::time::Duration;

use anyhow::{ensure, Result};
use bearing_e2e::*;
use serde_json::{json, Value};

/// The test CP binary.
const TEST_CP: &str = env!("CARGO_BIN_EXE_bearing-test-cp");

const GOLDENS: &str = "envoyconfig-e2e/sidecars/meshtls";
/// The mesh of the goldens.
const MESH: &str = "envoyconfig";
/// The MeshService cluster of test-server in the client's golden (TLS 1.3 only).
const SERVER_CLUSTER: &str = "envoyconfig_test-server__kuma-3_msvc_80";
/// The golden cluster's copies, by outbound port: TLS 1.2 at most, and versions unset.
const EDITED: [(u16, &str, &str); 2] = [
    (
        10002,
        "-tls12",
        r#"{"tlsMaximumProtocolVersion": "TLSv1_2"}"#,
    ),
    (10003, "-auto", r#"{}"#),
];
/// The HTTP application behind the server's inbound.
const APP_PORT: u16 = 8080;
const SERVER_ID: &str = "spiffe://envoyconfig/test-server";
const CLIENT_ID: &str = "spiffe://envoyconfig/demo-client";

/// `golden` (a resource of the golden cluster) renamed with `suffix`.
fn renamed(golden: &Value, suffix: &str) -> Value {
    let mut copy = golden.clone();
    replace_in_strings(
        &mut copy,
        SERVER_CLUSTER,
        &format!("{SERVER_CLUSTER}{suffix}"),
    );
    copy
}

/// A copy of the golden cluster named with `suffix` whose `tlsParams` are `versions` and
/// the golden's cipher, as kuma-cp renders a MeshTLS of those versions.
fn edited_cluster(golden: &Value, suffix: &str, versions: &str) -> Result<Value> {
    let mut cluster = renamed(golden, suffix);
    let mut params: Value = serde_json::from_str(versions)?;
    params["cipherSuites"] = json!(["ECDHE-ECDSA-AES256-GCM-SHA384"]);
    let at = "/transportSocket/typedConfig/commonTlsContext/tlsParams";
    set_field(&mut cluster, at, params)?;
    Ok(cluster)
}

#[test]
fn mesh_tls_versions_refuse_and_fail_as_envoy() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "nginx"])?;
    let topo = Topology::new(&["cp", "web", "backend"])?;
    let (cp, web, backend) = (topo.host("cp"), topo.host("web"), topo.host("backend"));
    let pki = CpPki::new(topo.dir(), "cp-mesh-tls", cp)?;
    let mesh_ca = TestCa::new(&pki.dir, "mesh-ca")?;
    let client_leaf = mesh_ca.issue("demo-client", &[&format!("URI:{CLIENT_ID}")])?;
    let server_leaf = mesh_ca.issue("test-server", &[&format!("URI:{SERVER_ID}")])?;
    let nginx = start_nginx(backend, APP_PORT)?;
    let client = KumaGolden::load(&format!("{GOLDENS}/inbound.demo-client.golden.json"))?;
    let server = KumaGolden::load(&format!("{GOLDENS}/inbound.test-server.golden.json"))?;

    // The server: the golden's inbound (TLS 1.3 only) in front of nginx.
    let mut xds = XdsFile::new();
    let inbound = xds.golden_inbound(&server, 80, APP_PORT, backend.sock4(GOLDEN_INBOUND_PORT))?;
    xds.mesh_identity(MESH, &server_leaf, &mesh_ca)?;
    let (_server_cp, server_access, server_proxy) =
        pki.golden_sidecar(TEST_CP, (cp, "test-server"), backend, &xds)?;
    let (_, dump) = server_proxy.admin("GET", "/config_dump")?;
    ensure!(
        dump.contains("TLSv1_3"),
        "{inbound}: no TLS parameters in /config_dump"
    );

    // The client: outbound 10001 to the golden's cluster, and one to each edited copy.
    let golden_cluster = client.cluster(SERVER_CLUSTER)?;
    let assignment = client.endpoints(SERVER_CLUSTER)?;
    let outbound = client.listener("outbound:IP_REDACTED:80")?;
    let at = [backend.sock4(GOLDEN_INBOUND_PORT)];
    let mut xds = XdsFile::new();
    xds.golden_client_outbound(&client, web, (golden_cluster.clone(), SERVER_CLUSTER), &at)?
        .mesh_identity(MESH, &client_leaf, &mesh_ca)?;
    for (port, suffix, versions) in EDITED {
        let listener = bound_listener(renamed(&outbound, suffix), ([127, 0, 0, 1], port).into());
        xds.cluster(edited_cluster(&golden_cluster, suffix, versions)?)?
            .endpoints(renamed(&assignment, suffix), &at)?
            .listener(listener)?;
    }
    let (_client_cp, client_access, client_proxy) = pki.golden_client(TEST_CP, cp, web, &xds)?;

    // What a server and a client (Bearing or Envoy) must show alike.
    let check = |who: &str| -> Result<()> {
        let mesh_client = TlsClient::new(backend.sock4(GOLDEN_INBOUND_PORT))
            .alpn("kuma")
            .client_cert(&client_leaf);
        let tls12 = mesh_client.clone().version("tls1_2").run(web)?;
        ensure!(
            !tls12.handshake && tls12.alert.as_deref() == Some("tlsv1 alert protocol version"),
            "{who}: a TLS 1.2 mesh client was not refused by version: {tls12:?}"
        );
        let tls13 = mesh_client.version("tls1_3").run(web)?;
        ensure!(
            tls13.accepted() && tls13.protocol.as_deref() == Some("TLSv1.3"),
            "{who}: a TLS 1.3 mesh client was refused: {tls13:?}"
        );
        let (code, body) = curl(web, ["-m", "10", "http://127.0.0.1:10001/"])?;
        ensure!(
            code == 200 && body == nginx.body(),
            "{who}: the TLS 1.3 outbound: {code} {body}"
        );
        for (port, suffix, _) in EDITED {
            let (code, body) = curl(web, ["-m", "10", &format!("http://127.0.0.1:{port}/")])?;
            ensure!(code == 503, "{who}: the {suffix} outbound: {code} {body}");
        }
        Ok(())
    };
    check("bearing client, bearing server")?;

    // Differential: Envoy 1.40 in the server's place, then in the client's too, the same
    // resources from the same CPs.
    server_proxy.process().stop(Duration::from_secs(5));
    let _envoy_server = server_access.envoy(backend, MESH, "test-server")?;
    backend.wait_for_tcp_listener(GOLDEN_INBOUND_PORT, Duration::from_secs(20), None)?;
    check("bearing client, envoy server")?;
    client_proxy.process().stop(Duration::from_secs(5));
    let _envoy_client = client_access.envoy(web, MESH, "demo-client")?;
    for (port, ..) in EDITED {
        web.wait_for_tcp_listener(port, Duration::from_secs(20), None)?;
    }
    check("envoy client, envoy server")
}

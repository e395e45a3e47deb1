//! MeshIdentity's mesh mTLS end to end, config only from `bearing-test-cp`: two sidecars
//! from Kuma's envoyconfig-e2e "no-policies" goldens, re-expressed as kuma-cp sends them under
//! a MeshIdentity with unified names (identity `kri_mid_<mesh>_...`, MeshTrust's SPIFFE
//! validator `system_trust_bundle` with the trust domain `envoyconfig.kuma-3.mesh.local`, the
//! inbound `self_inbound_dp_*`). Traffic crosses the mesh; a client whose certificate is of
//! another trust domain, or claims the mesh's trust domain from a CA of another one, or comes
//! from a CA no bundle holds, is refused by the server sidecar.

use std::net::SocketAddr;

use anyhow::{ensure, Result};
use base64::Engine as _;
use bearing_e2e::*;
use serde_json::json;

const GOLDENS: &str = "envoyconfig-e2e/sidecars/meshtrafficpermission";
/// The mesh of the goldens.
const MESH: &str = "envoyconfig";
/// The mesh's trust domain (MeshIdentity's `<mesh>.<zone>.mesh.local`).
const TRUST_DOMAIN: &str = "envoyconfig.kuma-3.mesh.local";
/// Another trust domain the bundle also holds (a MeshTrust of another mesh).
const OTHER_DOMAIN: &str = "other.kuma-3.mesh.local";
/// The MeshService cluster of test-server (HTTP) in the client's golden.
const SERVER_CLUSTER: &str = "envoyconfig_test-server__kuma-3_msvc_80";
/// The application behind test-server's inbound.
const APP_PORT: u16 = 8080;
/// The test CP binary.
const TEST_CP: &str = env!("CARGO_BIN_EXE_bearing-test-cp");

/// The golden's resources re-expressed as under a MeshIdentity with unified names: Kuma's
/// legacy identity and CA secrets become `kri_mid_...` and the SPIFFE trust bundle (trust
/// domain → CA), SPIFFE ids move to the trust domain, the inbound is `self_inbound_dp_*`.
fn mesh_identity_style(
    xds: &XdsFile,
    inbound: &str,
    leaf: &CertFiles,
    bundles: &[(&str, &TestCa)],
) -> Result<serde_json::Value> {
    let identity = format!("kri_mid_{MESH}_kuma-3__identity_");
    let text = serde_json::to_string(&xds.to_json())?
        .replace(&format!("identity_cert:secret:{MESH}"), &identity)
        .replace(&format!("mesh_ca:secret:{MESH}"), "system_trust_bundle")
        .replace(
            &format!("spiffe://{MESH}/"),
            &format!("spiffe://{TRUST_DOMAIN}/"),
        )
        .replace(inbound, &format!("self_inbound_dp_{GOLDEN_INBOUND_PORT}"));
    let mut doc: serde_json::Value = serde_json::from_str(&text)?;
    let b64 = |pem: String| base64::engine::general_purpose::STANDARD.encode(pem);
    let mut domains = Vec::new();
    for (name, ca) in bundles {
        domains.push(json!({"name": name, "trustBundle": {"inlineBytes": b64(ca.cert_pem()?)}}));
    }
    let secrets = &mut doc["xds"][SECRET];
    secrets["system_trust_bundle"] = json!({"name": "system_trust_bundle", "validationContext": {
    "customValidatorConfig": {"name": "envoy.tls.cert_validator.spiffe", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig",
        "trustDomains": domains,
    }}}});
    secrets[&identity] = json!({"name": identity, "tlsCertificate": {
        "certificateChain": {"inlineBytes": b64(leaf.cert_pem()?)},
        "privateKey": {"inlineBytes": b64(leaf.key_pem()?)},
    }});
    Ok(doc)
}

/// A request from `host` straight to the server sidecar's inbound at `at`, over TLS with the
/// client certificate `leaf` (the server's certificate is not checked: only whether the
/// server admits the client is): whether it was answered 200.
fn admitted(host: &Host, at: SocketAddr, leaf: &CertFiles) -> Result<bool> {
    let out = curl_output(
        host,
        [
            format!("https://{at}/"),
            "-k".into(),
            "--no-alpn".into(),
            "--cert".into(),
            leaf.cert.display().to_string(),
            "--key".into(),
            leaf.key.display().to_string(),
            "-m".into(),
            "5".into(),
        ],
    )?;
    Ok(out.exit_code == Some(0) && out.http_code == 200)
}

#[test]
fn mesh_identity_spiffe_trust_admits_only_its_trust_domains_peers() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "nginx"])?;
    let topo = Topology::new(&["cp", "web", "backend"])?;
    let (cp, web, backend) = (topo.host("cp"), topo.host("web"), topo.host("backend"));
    let pki = CpPki::new(topo.dir(), "mesh-identity", cp)?;
    let dir = &pki.dir;
    let mesh_ca = TestCa::new(dir, "mesh-ca")?;
    let other_ca = TestCa::new(dir, "other-ca")?;
    let stranger_ca = TestCa::new(dir, "stranger-ca")?;
    let id = |name: &str| format!("URI:spiffe://{TRUST_DOMAIN}/{name}");
    let client_leaf = mesh_ca.issue("demo-client", &[&id("demo-client")])?;
    let server_leaf = mesh_ca.issue("test-server", &[&id("test-server")])?;
    let bundles = [(TRUST_DOMAIN, &mesh_ca), (OTHER_DOMAIN, &other_ca)];

    let nginx = start_nginx(backend, APP_PORT)?;
    let to_server = backend.sock4(GOLDEN_INBOUND_PORT);
    let client = KumaGolden::load(&format!("{GOLDENS}/no-policies.demo-client.golden.json"))?;
    let server = KumaGolden::load(&format!("{GOLDENS}/no-policies.test-server.golden.json"))?;

    let mut xds = XdsFile::new();
    let web_inbound = xds.golden_inbound(&client, 3000, 3000, web.sock4(GOLDEN_INBOUND_PORT))?;
    xds.cluster(client.cluster(SERVER_CLUSTER)?)?
        .endpoints(client.endpoints(SERVER_CLUSTER)?, &[to_server])?
        .mesh_identity(MESH, &client_leaf, &mesh_ca)?;
    let outbound = client.listener("outbound:IP_REDACTED:80")?;
    xds.listener(bound_listener(
        outbound,
        SocketAddr::from(([127, 0, 0, 1], 10001)),
    ))?;
    let web_doc = mesh_identity_style(&xds, &web_inbound, &client_leaf, &bundles)?;

    let mut xds = XdsFile::new();
    let backend_inbound = xds.golden_inbound(&server, 80, APP_PORT, to_server)?;
    xds.mesh_identity(MESH, &server_leaf, &mesh_ca)?;
    let backend_doc = mesh_identity_style(&xds, &backend_inbound, &server_leaf, &bundles)?;
    ensure!(
        backend_doc.to_string().contains("self_inbound_dp_18080"),
        "the inbound is in the unified naming"
    );

    let (web_file, backend_file) = (dir.join("web.json"), dir.join("backend.json"));
    std::fs::write(&web_file, web_doc.to_string())?;
    std::fs::write(&backend_file, backend_doc.to_string())?;
    let pair = pki.golden_pair(TEST_CP, cp, (web, &web_file), (backend, &backend_file))?;
    let mtls = &pair.client.config_dump()?["config"]["mtls"][MESH];
    ensure!(
        mtls["spiffe_trust"].get(TRUST_DOMAIN).is_some(),
        "the SPIFFE trust is applied: {mtls}"
    );

    // Across the mesh, each side verified by the SPIFFE validator.
    let (code, body) = curl(web, ["http://127.0.0.1:10001/"])?;
    ensure!(code == 200 && body == nginx.body(), "{code} {body}");

    // Straight to the server's inbound: the mesh's own peer is admitted...
    ensure!(
        admitted(web, to_server, &client_leaf)?,
        "a peer of the trust domain was refused"
    );
    // ...a peer of another trust domain the bundle holds is not (the listener's prefix)...
    let other = other_ca.issue("other-web", &[&format!("URI:spiffe://{OTHER_DOMAIN}/web")])?;
    // ...nor one claiming the mesh's trust domain with a certificate of the other domain's
    // CA (its chain verifies against the bundles, but not against its domain's)...
    let forged = other_ca.issue("forged-web", &[&id("web")])?;
    // ...nor one of a CA no bundle holds.
    let stranger = stranger_ca.issue("stranger-web", &[&id("web")])?;
    for (leaf, what) in [
        (&other, "another trust domain"),
        (&forged, "the trust domain's id from another domain's CA"),
        (&stranger, "a CA no bundle holds"),
    ] {
        ensure!(!admitted(web, to_server, leaf)?, "{what}: admitted");
    }
    let (code, _) = curl(web, ["http://127.0.0.1:10001/"])?;
    ensure!(code == 200, "the mesh still serves");
    Ok(())
}

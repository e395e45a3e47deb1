//! A zone egress configured only by `bearing-test-cp`, from kuma-cp's xds-egress golden of an
//! HTTP ExternalService (`01.externalservice-only`): a chain matched by the service's SNI
//! terminates mesh mTLS and runs an HTTP connection manager whose route rewrites Host to the
//! endpoint's hostname (`autoHostRewrite`), to a STRICT_DNS cluster whose two endpoints are one
//! origin's plaintext and TLS ports (the TLS one selected by `transportSocketMatches`, as kuma-cp
//! renders an ExternalService with `networking.tls`). A client holding a mesh leaf reaches both
//! endpoints through the egress, and the origin sees Host rewritten to each endpoint's name; a
//! client without a mesh certificate, or with one of another CA, is refused.

use std::collections::BTreeSet;

use anyhow::{ensure, Result};
use base64::Engine as _;
use bearing_e2e::*;
use serde_json::json;

/// kuma-cp's zone egress golden: two SNI chains (an ExternalService, a MeshExternalService).
const GOLDEN: &str = "xds-egress/01.externalservice-only.golden.yaml";
/// The ExternalService's cluster and its SNI (Kuma's tags form).
const CLUSTER: &str = "mesh-1:externalservice-1";
const SNI: &str = "externalservice-1{mesh=mesh-1}";
/// The egress's port (ZoneEgress `networking.port`).
const EGRESS_PORT: u16 = 10002;
/// The origin's plaintext and TLS ports, and the names the egress resolves them by.
const PLAIN_PORT: u16 = 8080;
const TLS_PORT: u16 = 8443;
const PLAIN_NAME: &str = "plain.origin.test";
const TLS_NAME: &str = "secure.origin.test";
/// The test CP binary.
const TEST_CP: &str = env!("CARGO_BIN_EXE_bearing-test-cp");

/// nginx answering `/host` with the Host it got and whether it came over TLS.
const HOST_ECHO: &str =
    "location = /host {\n    default_type text/plain;\n    return 200 \"host=$http_host https=$https\\n\";\n}\n";

/// The golden's egress listener (its ExternalService chain only) bound on `at`, and the
/// ExternalService's cluster with the origin's two endpoints: `PLAIN_NAME` with the golden's
/// metadata (no transport match: plaintext) and `TLS_NAME`, whose transport match (the
/// xds-egress 03 golden's `transportSocketMatches` shape) originates TLS verified against
/// `origin_ca` for that name.
fn egress_resources(at: std::net::SocketAddr, origin_ca: &TestCa) -> Result<XdsFile> {
    let golden = KumaGolden::load(GOLDEN)?;
    let mut listener = bound_listener(golden.listener("inbound:192.168.0.1:10002")?, at);
    let chains = listener["filterChains"].as_array_mut();
    let chains = chains.ok_or_else(|| anyhow::anyhow!("the golden listener has no chains"))?;
    chains.retain(|c| c["filterChainMatch"]["serverNames"][0] == SNI);
    ensure!(chains.len() == 1, "the golden has one chain for {SNI}");

    let mut cluster = golden.cluster(CLUSTER)?;
    let plain = cluster["loadAssignment"]["endpoints"][0]["lbEndpoints"][0].clone();
    let endpoint = |name: &str, port: u16, tls_match: Option<serde_json::Value>| {
        let mut e = plain.clone();
        e["endpoint"]["address"]["socketAddress"] = json!({"address": name, "portValue": port});
        if let Some(m) = tls_match {
            e["metadata"]["filterMetadata"]["envoy.transport_socket_match"] = m;
        }
        e
    };
    let selector = json!({"kuma.io/external-service-name": "externalservice-1",
        "kuma.io/protocol": "http", "mesh": "mesh-1"});
    cluster["loadAssignment"]["endpoints"][0]["lbEndpoints"] = json!([
        endpoint(PLAIN_NAME, PLAIN_PORT, None),
        endpoint(TLS_NAME, TLS_PORT, Some(selector.clone())),
    ]);
    let ca = base64::engine::general_purpose::STANDARD.encode(origin_ca.cert_pem()?);
    cluster["transportSocketMatches"] = json!([{
        "name": TLS_NAME,
        "match": selector,
        "transportSocket": {"name": "envoy.transport_sockets.tls", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": TLS_NAME,
            "commonTlsContext": {"validationContext": {
                "trustedCa": {"inlineBytes": ca},
                "matchTypedSubjectAltNames": [
                    {"sanType": "DNS", "matcher": {"exact": TLS_NAME}},
                    {"sanType": "IP_ADDRESS", "matcher": {"exact": TLS_NAME}},
                ],
            }},
        }},
    }]);
    let mut xds = XdsFile::new();
    xds.listener(listener)?.cluster(cluster)?;
    Ok(xds)
}

#[test]
fn zone_egress_routes_http_to_an_external_service_from_the_test_cp() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "nginx"])?;
    let topo = Topology::new(&["cp", "client", "ze", "origin"])?;
    let (cp, client, ze, origin) = (
        topo.host("cp"),
        topo.host("client"),
        topo.host("ze"),
        topo.host("origin"),
    );
    let pki = CpPki::new(topo.dir(), "cp-egress", cp)?;
    let dir = &pki.dir;
    let mesh_ca = TestCa::new(dir, "mesh-ca")?;
    let egress_leaf = mesh_ca.issue("zone-egress", &["URI:spiffe://mesh-1/zone-egress"])?;
    let client_leaf = mesh_ca.issue("web", &["URI:spiffe://mesh-1/web"])?;
    let origin_ca = TestCa::new(dir, "origin-ca")?;
    let origin_cert = origin_ca.issue("secure-origin", &[&format!("DNS:{TLS_NAME}")])?;

    let _plain = NginxConfig::new(PLAIN_PORT)
        .server_snippet(HOST_ECHO)
        .start(origin)?;
    let _secure = NginxConfig::new(TLS_PORT)
        .tls(origin_cert.cert_pem()?, origin_cert.key_pem()?)
        .server_snippet(HOST_ECHO)
        .start(origin)?;
    // The egress resolves the ExternalService's names (STRICT_DNS) from its hosts file.
    ze.set_etc_file(
        "hosts",
        &format!(
            "127.0.0.1 localhost\n{} {PLAIN_NAME} {TLS_NAME}\n",
            origin.ip4()
        ),
    )?;

    let egress_addr = ze.sock4(EGRESS_PORT);
    let mut xds = egress_resources(egress_addr, &origin_ca)?;
    xds.mesh_identity("mesh-1", &egress_leaf, &mesh_ca)?;
    let file = dir.join("ze.json");
    xds.write(&file)?;
    let (cp_process, access) = pki.start_cp(TEST_CP, cp, 5678, &file, "cp-ze")?;
    let zone_egress = format!(
        "type: ZoneEgress\nname: ze-1\nzone: zone-a\nnetworking:\n  address: {}\n  port: {EGRESS_PORT}\n",
        ze.ip4()
    );
    let egress = access.bearing(ze, "ze-1", "egress", &zone_egress)?;
    egress.wait_ready()?;
    let log = cp_process.log_contents();
    ensure!(
        log.contains("ACK type=Listener") && !log.contains("NACK"),
        "the egress did not take its config:\n{log}"
    );
    let routes = &egress.config_dump()?["config"]["listeners"][0]["sni_routes"];
    ensure!(
        routes[0]["http"]["routes"].is_object(),
        "the SNI route serves HTTP: {routes}"
    );

    // A mesh client: mTLS to the egress with the ExternalService's SNI, then HTTP.
    let to_egress = TlsClient::new(egress_addr)
        .servername(SNI)
        .verify_ca(&mesh_ca.files().cert)
        .send("GET /host HTTP/1.1\r\nHost: externalservice-1.mesh\r\nConnection: close\r\n\r\n");
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        let out = to_egress.clone().client_cert(&client_leaf).run(client)?;
        ensure!(
            out.accepted() && out.verified && out.response.starts_with("HTTP/1.1 200"),
            "a mesh client through the egress: {out:?}"
        );
        let line = out.response.lines().find(|l| l.starts_with("host="));
        seen.insert(line.unwrap_or_default().to_string());
    }
    // Round robin over both endpoints: the plaintext one and, by its transport match, the
    // TLS one; each saw Host rewritten to its own name.
    let want: BTreeSet<String> = [
        format!("host={PLAIN_NAME} https="),
        format!("host={TLS_NAME} https=on"),
    ]
    .into();
    ensure!(seen == want, "the origin saw {seen:?}, not {want:?}");

    // No client certificate, or one of another CA: refused at the egress.
    let stranger_ca = TestCa::new(dir, "stranger-ca")?;
    let stranger = stranger_ca.issue("web", &["URI:spiffe://mesh-1/web"])?;
    for (attempt, what) in [
        (to_egress.clone(), "no client certificate"),
        (
            to_egress.clone().client_cert(&stranger),
            "a certificate of another CA",
        ),
    ] {
        let out = attempt.run(client)?;
        ensure!(!out.accepted(), "{what}: got through the egress: {out:?}");
    }
    Ok(())
}

//! A zone egress configured only by `bearing-test-cp`, from kuma-cp's xds-egress goldens.
//!
//! `01.externalservice-only`, an HTTP ExternalService: a chain matched by the service's SNI
//! terminates mesh mTLS and runs an HTTP connection manager whose route rewrites Host to the
//! endpoint's hostname (`autoHostRewrite`), to a STRICT_DNS cluster whose two endpoints are one
//! origin's plaintext and TLS ports (the TLS one selected by `transportSocketMatches`, as kuma-cp
//! renders an ExternalService with `networking.tls`). A client holding a mesh leaf reaches both
//! endpoints through the egress, and the origin sees Host rewritten to each endpoint's name; a
//! client without a mesh certificate, or with one of another CA, is refused.
//!
//! `05.mixed-services-with-custom-trafficpermissions`, TrafficPermission on the egress: one
//! ExternalService's chain has a network RBAC filter allowing one SPIFFE id, the other's an
//! HTTP RBAC filter allowing no one. The permitted mesh identity passes through the egress, the
//! other's connection is closed after the handshake, and every request on the second chain gets
//! 403 `RBAC: access denied`. Its cross-zone chains, which pass TLS through, are given network
//! RBAC filters kuma-cp does not render there, to show what such a chain sees: the SNI (one
//! allowing it passes the ClientHello through) and no certificate (one asking for an
//! authenticated peer closes the connection before any handshake). A pushed change of the
//! permissions closes the connections held open that they no longer admit. Then Envoy 1.40,
//! fed the golden's resources by the same CP in the egress's place, answers the same and
//! counts the same decisions.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

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

/// nginx on `origin` echoing the Host it got: in plaintext on `PLAIN_PORT`, and over TLS
/// with `cert` on `TLS_PORT`.
fn start_origins(origin: &Host, cert: &CertFiles) -> Result<(Nginx, Nginx)> {
    let plain = NginxConfig::new(PLAIN_PORT)
        .server_snippet(HOST_ECHO)
        .start(origin)?;
    let secure = NginxConfig::new(TLS_PORT)
        .tls(cert.cert_pem()?, cert.key_pem()?)
        .server_snippet(HOST_ECHO)
        .start(origin)?;
    Ok((plain, secure))
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

    let _origins = start_origins(origin, &origin_cert)?;
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

/// kuma-cp's zone egress golden with TrafficPermissions on two HTTP ExternalServices.
const RBAC_GOLDEN: &str = "xds-egress/05.mixed-services-with-custom-trafficpermissions.golden.yaml";
/// The ExternalService whose chain has the network RBAC filter, and the one whose connection
/// manager has the HTTP RBAC filter letting no one pass.
const CHECKED: &str = "externalservice-1";
const CLOSED: &str = "externalservice-2";
/// The one mesh identity the network RBAC allows (the golden's principal, in the mesh of the
/// chain's certificate validation: `spiffe://mesh-1/`), and another of the same mesh.
const PERMITTED_ID: &str = "spiffe://mesh-1/backend";
const OTHER_ID: &str = "spiffe://mesh-1/web";
/// The cross-zone services whose chains pass TLS through, each given a network RBAC filter
/// (kuma-cp puts none there): one allowing its SNI, one allowing any authenticated peer,
/// which no connection is on a chain without TLS of its own.
const BY_SNI: &str = "service-1-zone-2";
const BY_CERTIFICATE: &str = "service-2-zone-2";

/// A network RBAC filter (stat prefix `<service>.`) with `config` (its `rules` or `matcher`).
fn network_rbac(service: &str, config: serde_json::Value) -> serde_json::Value {
    let mut typed = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
        "statPrefix": format!("{service}."),
    });
    if let (Some(typed), Some(config)) = (typed.as_object_mut(), config.as_object()) {
        typed.extend(config.clone());
    }
    json!({"name": "envoy.filters.network.rbac", "typedConfig": typed})
}

/// The golden's egress listener bound on `at`: its two ExternalService chains, the network
/// RBAC's principal `principal` (the golden's in the egress's mesh: [`PERMITTED_ID`]), both
/// ExternalServices' clusters to the origin's plaintext port by `PLAIN_NAME`; its two
/// cross-zone chains, passing TLS through, with the network RBAC of [`BY_SNI`] (its SNI rule's
/// action `sni_action`) and [`BY_CERTIFICATE`] added, their clusters to `through` (a TLS
/// server standing for the other zone's ingress).
fn rbac_egress_resources(
    at: std::net::SocketAddr,
    through: std::net::SocketAddr,
    (principal, sni_action): (&str, &str),
) -> Result<XdsFile> {
    let golden = KumaGolden::load(RBAC_GOLDEN)?;
    let mut listener = bound_listener(golden.listener("inbound:192.168.0.1:10002")?, at);
    let chains = listener["filterChains"].as_array_mut();
    let chains = chains.ok_or_else(|| anyhow::anyhow!("the golden listener has no chains"))?;
    ensure!(chains.len() == 4, "the golden has four chains");
    let action = |name: &str, action: &str| {
        json!({"name": "envoy.filters.rbac.action", "typedConfig": {
            "@type": "type.googleapis.com/envoy.config.rbac.v3.Action",
            "name": name, "action": action}})
    };
    let sni = format!("{BY_SNI}{{mesh=mesh-1}}");
    let by_sni = json!({"matcher": {
        "matcherList": {"matchers": [{
            "predicate": {"singlePredicate": {
                "input": {"name": "envoy.matching.inputs.server_name", "typedConfig": {
                    "@type": "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.ServerNameInput"}},
                "valueMatch": {"exact": sni},
            }},
            "onMatch": {"action": action("by-sni", sni_action)},
        }]},
        "onNoMatch": {"action": action("default", "DENY")},
    }});
    let by_certificate = json!({"rules": {"policies": {"authenticated": {
        "permissions": [{"any": true}],
        "principals": [{"authenticated": {}}],
    }}}});
    for (service, rbac) in [(BY_SNI, by_sni), (BY_CERTIFICATE, by_certificate)] {
        let name = format!("{service}{{mesh=mesh-1}}");
        let chain = chains
            .iter_mut()
            .find(|c| c["filterChainMatch"]["serverNames"][0] == name.as_str());
        let filters = chain.and_then(|c| c["filters"].as_array_mut());
        let filters = filters.ok_or_else(|| anyhow::anyhow!("no chain for {name}"))?;
        filters.insert(0, network_rbac(service, rbac));
    }
    replace_in_strings(&mut listener, "spiffe://zone-1/backend", principal);

    let mut xds = XdsFile::new();
    xds.listener(listener)?;
    for service in [BY_SNI, BY_CERTIFICATE] {
        let name = format!("mesh-1:{service}");
        xds.cluster(golden.cluster(&name)?)?
            .endpoints(golden.endpoints(&name)?, &[through])?;
    }
    let plain = golden.cluster(&format!("mesh-1:{CHECKED}"))?;
    for service in [CHECKED, CLOSED] {
        let mut cluster = plain.clone();
        replace_in_strings(&mut cluster, CHECKED, service);
        let address = "/loadAssignment/endpoints/0/lbEndpoints/0/endpoint/address/socketAddress";
        set_field(
            &mut cluster,
            address,
            json!({"address": PLAIN_NAME, "portValue": PLAIN_PORT}),
        )?;
        xds.cluster(cluster)?;
    }
    Ok(xds)
}

#[test]
fn zone_egress_lets_only_the_permitted_mesh_identity_through() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "nginx"])?;
    let topo = Topology::new(&["cp", "backend", "web", "ze", "origin"])?;
    let (cp, backend, web, ze, origin) = (
        topo.host("cp"),
        topo.host("backend"),
        topo.host("web"),
        topo.host("ze"),
        topo.host("origin"),
    );
    let pki = CpPki::new(topo.dir(), "cp-egress-rbac", cp)?;
    let dir = &pki.dir;
    let mesh_ca = TestCa::new(dir, "mesh-ca")?;
    let egress_leaf = mesh_ca.issue("zone-egress", &["URI:spiffe://mesh-1/zone-egress"])?;
    let permitted = mesh_ca.issue("backend", &[&format!("URI:{PERMITTED_ID}")])?;
    let other = mesh_ca.issue("web", &[&format!("URI:{OTHER_ID}")])?;
    let origin_ca = TestCa::new(dir, "origin-ca")?;
    let origin_cert = origin_ca.issue("secure-origin", &[&format!("DNS:{TLS_NAME}")])?;
    // The TLS one stands for the other zone's ingress, which the passed-through TLS reaches.
    let _origins = start_origins(origin, &origin_cert)?;
    ze.set_etc_file(
        "hosts",
        &format!("127.0.0.1 localhost\n{} {PLAIN_NAME}\n", origin.ip4()),
    )?;

    let egress_addr = ze.sock4(EGRESS_PORT);
    let resources = |permissions| -> Result<XdsFile> {
        let mut xds = rbac_egress_resources(egress_addr, origin.sock4(TLS_PORT), permissions)?;
        xds.mesh_identity("mesh-1", &egress_leaf, &mesh_ca)?;
        Ok(xds)
    };
    let golden_permissions = (PERMITTED_ID, "ALLOW");
    let file = dir.join("ze.json");
    resources(golden_permissions)?.write(&file)?;
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

    let to = |service: &str| {
        TlsClient::new(egress_addr)
            .servername(format!("{service}{{mesh=mesh-1}}"))
            .verify_ca(&mesh_ca.files().cert)
            .send(format!(
                "GET /host HTTP/1.1\r\nHost: {service}.mesh\r\nConnection: close\r\n\r\n"
            ))
    };
    let check = |egress: &str| -> Result<()> {
        // The permitted identity reaches the origin through the network RBAC, twice.
        for _ in 0..2 {
            let out = to(CHECKED).client_cert(&permitted).run(backend)?;
            ensure!(
                out.accepted() && out.verified && out.response.starts_with("HTTP/1.1 200"),
                "{egress}: the permitted identity: {out:?}"
            );
            let host = out
                .response
                .lines()
                .any(|l| l == format!("host={PLAIN_NAME} https="));
            ensure!(host, "{egress}: the origin's answer: {out:?}");
        }
        // Another identity of the mesh: the handshake completes, then the connection is
        // closed without an answer, at once.
        let started = Instant::now();
        let out = to(CHECKED).client_cert(&other).run(web)?;
        ensure!(
            out.handshake && out.response.is_empty() && out.exit_code != Some(124),
            "{egress}: another identity was not closed: {out:?}"
        );
        ensure!(
            started.elapsed() < Duration::from_secs(4),
            "{egress}: the refused connection was not closed at once ({:?})",
            started.elapsed()
        );
        // The second ExternalService's HTTP RBAC lets no request pass, the permitted
        // identity's included: Envoy's local reply.
        let out = to(CLOSED).client_cert(&permitted).run(backend)?;
        let (head, body) = out.response.split_once("\r\n\r\n").unwrap_or_default();
        ensure!(
            head.starts_with("HTTP/1.1 403")
                && body == "RBAC: access denied"
                && header_value(head, "content-type").as_deref() == Some("text/plain"),
            "{egress}: the closed ExternalService answered: {out:?}"
        );
        // Passed through: the RBAC allowing the SNI lets the ClientHello reach the other
        // zone's server (its certificate, its answer); the one asking for an authenticated
        // peer sees no TLS on its chain and closes the connection before any handshake.
        let through = |service: &str| {
            TlsClient::new(egress_addr)
                .servername(format!("{service}{{mesh=mesh-1}}"))
                .verify_ca(&origin_ca.files().cert)
                .send(format!(
                    "GET /host HTTP/1.1\r\nHost: {TLS_NAME}\r\nConnection: close\r\n\r\n"
                ))
        };
        let out = through(BY_SNI).client_cert(&permitted).run(backend)?;
        ensure!(
            out.accepted() && out.verified && out.response.contains("https=on"),
            "{egress}: passed through by its SNI: {out:?}"
        );
        let started = Instant::now();
        let out = through(BY_CERTIFICATE)
            .client_cert(&permitted)
            .run(backend)?;
        ensure!(
            !out.handshake && out.response.is_empty() && started.elapsed() < Duration::from_secs(4),
            "{egress}: passed through asking for a certificate: {out:?}"
        );
        Ok(())
    };
    check("bearing")?;
    // The egress counts each decision in its listener's RBAC counters: 3 connections
    // allowed, 2 connections and 1 request denied.
    let (_, metrics) = egress.admin("GET", "/stats/prometheus")?;
    let listener = format!("inbound:{egress_addr}");
    for (name, want) in [("allowed", 3), ("denied", 3)] {
        let series = format!("bearing_rbac_{name}_total{{listener=\"{listener}\"}} {want}");
        ensure!(metrics.contains(&series), "no {series} in:\n{metrics}");
    }

    // A pushed change of the permissions closes the connections they no longer admit: one
    // held over the ExternalService's chain (now allowing only the other identity) and one
    // passed through by its SNI (now denied) are each answered once, then closed before
    // their second request.
    let held = |host: &Host, sni: String, (cert, ca): (&CertFiles, &CertFiles)| {
        held_connection(host, egress_addr, &sni, (cert, &ca.cert))
    };
    let revoked = std::thread::scope(|scope| -> Result<_> {
        let checked = scope.spawn(|| {
            let sni = format!("{CHECKED}{{mesh=mesh-1}}");
            held(backend, sni, (&permitted, mesh_ca.files()))
        });
        let through = scope.spawn(|| {
            let sni = format!("{BY_SNI}{{mesh=mesh-1}}");
            held(backend, sni, (&permitted, origin_ca.files()))
        });
        std::thread::sleep(HELD_PAUSE / 3);
        resources((OTHER_ID, "DENY"))?.write(&file)?;
        let joined = |h: std::thread::ScopedJoinHandle<'_, Result<String>>| {
            h.join()
                .map_err(|_| anyhow::anyhow!("a held connection panicked"))?
        };
        Ok((joined(checked)?, joined(through)?))
    })?;
    for (what, out) in [("checked", &revoked.0), ("passed through", &revoked.1)] {
        let answers = out.matches("HTTP/1.1 200").count();
        ensure!(
            answers == 1,
            "{what}: {answers} answers on the held connection:\n{out}"
        );
    }
    // New connections are decided by the new permissions; then the golden's are back.
    let out = to(CHECKED).client_cert(&other).run(web)?;
    ensure!(out.accepted(), "the newly permitted identity: {out:?}");
    resources(golden_permissions)?.write(&file)?;
    wait_until_ok(Duration::from_secs(10), || {
        let out = to(CHECKED).client_cert(&permitted).run(backend)?;
        ensure!(
            out.accepted(),
            "the golden's permissions are not back: {out:?}"
        );
        Ok(())
    })?;

    // Differential: Envoy 1.40 in the egress's place, the same resources from the same CP.
    egress.process().stop(Duration::from_secs(5));
    let envoy = access.envoy(ze, "mesh-1", "ze-1")?;
    ze.wait_for_tcp_listener(EGRESS_PORT, Duration::from_secs(20), None)?;
    check("envoy")?;
    // Envoy's counters of the same decisions: the network filter's under its stat prefix,
    // the HTTP filter's under its connection manager's.
    let (_, stats) = envoy.admin("/stats?filter=rbac")?;
    for line in [
        format!("{CHECKED}.rbac.allowed: 2"),
        format!("{CHECKED}.rbac.denied: 1"),
        format!("http.{CLOSED}.rbac.denied: 1"),
        format!("{BY_SNI}.rbac.allowed: 1"),
        format!("{BY_CERTIFICATE}.rbac.denied: 1"),
    ] {
        ensure!(
            stats.lines().any(|l| l == line),
            "envoy: no {line} in:\n{stats}"
        );
    }
    Ok(())
}

/// How long [`held_connection`] waits between its two requests.
const HELD_PAUSE: Duration = Duration::from_secs(3);

/// Sends two `GET /host` requests over one TLS connection from `host` to `to` (SNI `sni`,
/// client certificate `cert`, the server verified against `ca`), [`HELD_PAUSE`] apart, the
/// second asking to close; returns everything the server sent back.
fn held_connection(
    host: &Host,
    to: std::net::SocketAddr,
    sni: &str,
    (cert, ca): (&CertFiles, &std::path::Path),
) -> Result<String> {
    let request = |close: &str| format!("GET /host HTTP/1.1\\r\\nHost: held{close}\\r\\n\\r\\n");
    let script = format!(
        "(printf '{}'; sleep {}; printf '{}'; sleep 1) | openssl s_client -quiet -connect {to} -servername '{sni}' -cert {} -key {} -CAfile {} -verify_return_error",
        request(""),
        HELD_PAUSE.as_secs(),
        request("\\r\\nConnection: close"),
        cert.cert.display(),
        cert.key.display(),
        ca.display(),
    );
    let out = host
        .command("sh")
        .args(["-c", &script])
        .timeout(HELD_PAUSE + Duration::from_secs(10))
        .output()?;
    Ok(out.stdout)
}

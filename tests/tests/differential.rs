//! Differential test: one `bearing-test-cp` serves the same resources (the envoyconfig-e2e
//! no-policies demo-client golden's outbounds, made plaintext and pointed at an origin host)
//! to a real Envoy 1.40 and to Bearing, each in its own namespace; the same requests to each
//! must get the same answers: HTTP to the origin (status, body, response headers, the request
//! the application sees), TCP bytes echoed, a route whose cluster has no endpoint, a port with
//! no listener, and a pushed new outbound applied by both. A builtin gateway as kuma-cp
//! renders one (Kuma's gzip compressor filter on its connection manager), served by both,
//! compresses the same responses for the same `Accept-Encoding` values: the same status,
//! `Content-Encoding`, `Vary`, framing and body once gunzipped.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bearing_e2e::*;
use serde_json::{json, Value};

const GOLDEN: &str =
    "envoyconfig-e2e/sidecars/meshtrafficpermission/no-policies.demo-client.golden.json";
/// The golden's HTTP MeshService cluster (test-server:80).
const HTTP_CLUSTER: &str = "envoyconfig_test-server__kuma-3_msvc_80";
/// The golden's TCP MeshService cluster (demo-client:3000).
const TCP_CLUSTER: &str = "envoyconfig_demo-client__kuma-3_msvc_3000";
/// A cluster with no endpoint (its ClusterLoadAssignment is empty).
const EMPTY_CLUSTER: &str = "no-endpoints";
const HTTP_PORT: u16 = 10001;
const PUSHED_PORT: u16 = 10002;
const TCP_PORT: u16 = 10003;
const EMPTY_HTTP_PORT: u16 = 10004;
const EMPTY_TCP_PORT: u16 = 10005;
/// No listener on it.
const UNUSED_PORT: u16 = 10009;
const ORIGIN_HTTP: u16 = 8000;
const ORIGIN_REDIS: u16 = 6379;
/// The `server` header of the origin's answers (the harness's python HTTP server).
const ORIGIN_SERVER: &str = "bearing-e2e-http";

/// A golden cluster made plaintext (no mesh TLS, HTTP/1.1 upstream) under `name`.
fn plaintext_cluster(golden: &KumaGolden, from: &str, name: &str) -> Result<Value> {
    let mut cluster = golden.cluster(from)?;
    let obj = cluster.as_object_mut().context("cluster")?;
    obj.remove("transportSocket");
    obj.remove("typedExtensionProtocolOptions");
    obj.insert("name".into(), json!(name));
    Ok(cluster)
}

/// The golden's outbound `outbound:IP_REDACTED:<golden_port>` bound on 127.0.0.1:`port`, its
/// route or TCP proxy sent to `cluster`, and the redacted internal address ranges of its HTTP
/// connection manager given Kuma's values (Envoy refuses `IP_REDACTED` there).
fn outbound(golden: &KumaGolden, golden_port: u16, port: u16, cluster: &str) -> Result<Value> {
    let listener = golden.listener(&format!("outbound:IP_REDACTED:{golden_port}"))?;
    let mut listener = bound_listener(listener, SocketAddr::from(([127, 0, 0, 1], port)));
    let config = &mut listener["filterChains"][0]["filters"][0]["typedConfig"];
    if config.get("routeConfig").is_some() {
        config["routeConfig"]["virtualHosts"][0]["routes"][0]["route"]["cluster"] = json!(cluster);
        let ranges: Vec<Value> = [
            ("10.0.0.0", 8),
            ("192.168.0.0", 16),
            ("172.16.0.0", 12),
            ("127.0.0.1", 32),
        ]
        .iter()
        .map(|(prefix, len)| json!({"addressPrefix": prefix, "prefixLen": len}))
        .collect();
        config["internalAddressConfig"] = json!({"cidrRanges": ranges});
    } else {
        config["cluster"] = json!(cluster);
    }
    Ok(listener)
}

/// The resources both proxies get; with `pushed`, a second HTTP outbound.
fn resources(origin: &Host, pushed: bool) -> Result<XdsFile> {
    let golden = KumaGolden::load(GOLDEN)?;
    let mut xds = XdsFile::new();
    xds.cluster(plaintext_cluster(&golden, HTTP_CLUSTER, HTTP_CLUSTER)?)?
        .endpoints(
            golden.endpoints(HTTP_CLUSTER)?,
            &[origin.sock4(ORIGIN_HTTP)],
        )?
        .cluster(plaintext_cluster(&golden, TCP_CLUSTER, TCP_CLUSTER)?)?
        .endpoints(
            golden.endpoints(TCP_CLUSTER)?,
            &[origin.sock4(ORIGIN_REDIS)],
        )?
        .cluster(plaintext_cluster(&golden, HTTP_CLUSTER, EMPTY_CLUSTER)?)?
        .add(
            ENDPOINTS,
            EMPTY_CLUSTER,
            json!({"clusterName": EMPTY_CLUSTER}),
        )
        .listener(outbound(&golden, 80, HTTP_PORT, HTTP_CLUSTER)?)?
        .listener(outbound(&golden, 3000, TCP_PORT, TCP_CLUSTER)?)?
        .listener(outbound(&golden, 80, EMPTY_HTTP_PORT, EMPTY_CLUSTER)?)?
        .listener(outbound(&golden, 3000, EMPTY_TCP_PORT, EMPTY_CLUSTER)?)?;
    if pushed {
        xds.listener(outbound(&golden, 80, PUSHED_PORT, HTTP_CLUSTER)?)?;
    }
    Ok(xds)
}

/// Headers Envoy adds to the request the origin sees and Bearing does not, and why. The test
/// requires Envoy to add each and Bearing none, so the list stays true both ways.
const ENVOY_ONLY_HEADERS: &[(&str, &str)] = &[(
    "x-envoy-expected-rq-timeout-ms",
    "Envoy's own header for Envoy-aware upstreams (the route's 15 s); Bearing is not Envoy",
)];

/// Response headers not compared, and why.
const UNCOMPARED_RESPONSE_HEADERS: &[(&str, &str)] = &[
    ("date", "the second it was sent"),
    (
        "x-envoy-upstream-service-time",
        "Envoy's own timing header (milliseconds the upstream took); Bearing is not Envoy",
    ),
];

/// What a client sees of one HTTP request, reduced to what must match between the proxies.
#[derive(Debug, PartialEq)]
struct HttpAnswer {
    /// curl's exit code (0, or 7: refused, 52: empty reply, 56: reset).
    curl_exit: Option<i32>,
    status: u16,
    /// The response body, or for `/echo` the request the origin saw: its request line and
    /// its headers (sorted) but for [`ENVOY_ONLY_HEADERS`].
    body: String,
    /// The response's headers, `name: value`, sorted, but for `server` and
    /// [`UNCOMPARED_RESPONSE_HEADERS`].
    response_headers: Vec<String>,
    /// The response's `server` header: Envoy writes `envoy` over the application's
    /// (`server_header_transformation: OVERWRITE`, its default), Bearing passes the
    /// application's on and adds none to its local replies. Not compared; checked apart.
    server: Option<String>,
    /// The [`ENVOY_ONLY_HEADERS`] the origin saw, by name.
    envoy_only: Vec<String>,
}

/// `GET http://127.0.0.1:<port><path>` from `host` with an application header.
fn http(host: &Host, port: u16, path: &str) -> Result<HttpAnswer> {
    let out = curl_output(
        host,
        [
            format!("http://127.0.0.1:{port}{path}"),
            "-H".into(),
            "x-app: 1".into(),
            "-D".into(),
            "-".into(),
            "-m".into(),
            "5".into(),
        ],
    )?;
    let (head, body) = out.body.split_once("\r\n\r\n").unwrap_or(("", &out.body));
    let echo = path.starts_with("/echo") && out.http_code == 200;
    let mut server = None;
    let mut response_headers = Vec::new();
    for (name, value) in head.lines().skip(1).filter_map(|l| l.split_once(':')) {
        let (name, value) = (name.to_ascii_lowercase(), value.trim());
        // The echo's length follows the request headers, compared without Envoy's own.
        let uncompared = UNCOMPARED_RESPONSE_HEADERS.iter().any(|(n, _)| *n == name)
            || (echo && name == "content-length");
        if name == "server" {
            server = Some(value.to_string());
        } else if !uncompared {
            response_headers.push(format!("{name}: {value}"));
        }
    }
    response_headers.sort_unstable();
    let mut envoy_only = Vec::new();
    let body = if echo {
        // Each proxy gives the request an `x-request-id` of its own: compared by form.
        let body = request_id_forms(body);
        let mut lines: Vec<&str> = body.lines().take_while(|l| !l.is_empty()).collect();
        lines.retain(|line| {
            let name = line.split_once(": ").map_or("", |(name, _)| name);
            let known = ENVOY_ONLY_HEADERS.iter().any(|(n, _)| *n == name);
            if known {
                envoy_only.push(name.to_string());
            }
            !known
        });
        if let Some(headers) = lines.get_mut(1..) {
            headers.sort_unstable();
        }
        envoy_only.sort_unstable();
        lines.join("\n")
    } else {
        body.to_string()
    };
    Ok(HttpAnswer {
        curl_exit: out.exit_code,
        status: out.http_code,
        body,
        response_headers,
        server,
        envoy_only,
    })
}

/// [`http`] to both proxies: the answers are equal but for [`ENVOY_ONLY_HEADERS`] (on an
/// echo, Envoy adds every one and Bearing none) and `server` (Envoy's is `envoy`; Bearing's is
/// the origin's when the origin answered, none on its own replies).
fn same_request(
    case: &str,
    envoy: &Host,
    bearing: &Host,
    port: u16,
    path: &str,
) -> Result<HttpAnswer> {
    let mut from_envoy = http(envoy, port, path)?;
    let mut from_bearing = http(bearing, port, path)?;
    let expected: Vec<&str> = if from_envoy.status == 200 && path.starts_with("/echo") {
        let mut names: Vec<&str> = ENVOY_ONLY_HEADERS.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names
    } else {
        Vec::new()
    };
    ensure!(
        from_envoy.envoy_only == expected && from_bearing.envoy_only.is_empty(),
        "{case}: the headers only Envoy adds changed (update ENVOY_ONLY_HEADERS)\nEnvoy:   {from_envoy:?}\nBearing: {from_bearing:?}"
    );
    let from_origin = from_bearing
        .response_headers
        .iter()
        .any(|h| h.starts_with("x-served-by: "));
    ensure!(
        (from_envoy.status == 0 || from_envoy.server.as_deref() == Some("envoy"))
            && from_bearing.server.as_deref() == from_origin.then_some(ORIGIN_SERVER),
        "{case}: the server headers changed\nEnvoy:   {from_envoy:?}\nBearing: {from_bearing:?}"
    );
    for answer in [&mut from_envoy, &mut from_bearing] {
        answer.envoy_only.clear();
        answer.server = None;
    }
    ensure!(
        from_envoy == from_bearing,
        "{case}: Envoy and Bearing differ\nEnvoy:   {from_envoy:?}\nBearing: {from_bearing:?}"
    );
    eprintln!("{case}: both {from_bearing:?}");
    Ok(from_bearing)
}

/// What `redis-cli ECHO` through `port` gives from `host`: the echoed text, or the failure.
fn tcp_echo(host: &Host, port: u16) -> String {
    match redis_cli(host, [127, 0, 0, 1], port, ["ECHO", "differential"]) {
        Ok(echoed) => echoed,
        Err(_) => "<no answer>".to_string(),
    }
}

/// The same question to both proxies: the answers must be equal.
fn same<T: PartialEq + std::fmt::Debug>(
    case: &str,
    envoy: &Host,
    bearing: &Host,
    ask: impl Fn(&Host) -> Result<T>,
) -> Result<T> {
    let (from_envoy, from_bearing) = (ask(envoy)?, ask(bearing)?);
    ensure!(
        from_envoy == from_bearing,
        "{case}: Envoy and Bearing differ\nEnvoy:   {from_envoy:?}\nBearing: {from_bearing:?}"
    );
    eprintln!("{case}: both {from_bearing:?}");
    Ok(from_bearing)
}

/// What the differential tests start from: the hosts (cp, envoy, bearing, origin), the
/// origin's HTTP server, and the test CP serving resources from a file.
struct Rig {
    topo: Topology,
    file: std::path::PathBuf,
    test_cp: Process,
    access: CpAccess,
    _http: HttpServer,
}

/// A [`Rig`] whose CP (its PKI named `name`) serves `resources` made for the origin host.
fn rig(name: &str, resources: impl Fn(&Host) -> Result<XdsFile>) -> Result<Rig> {
    require_root_and_tools()?;
    require_tools(&["openssl"])?;
    envoy_bin()?;
    let topo = Topology::new(&["cp", "envoy", "bearing", "origin"])?;
    let (cp, origin) = (topo.host("cp"), topo.host("origin"));
    let pki = CpPki::new(topo.dir(), name, cp)?;
    let http = HttpServerConfig::new(ORIGIN_HTTP)
        .body("origin body\n")
        .start(origin)?;
    let file = pki.dir.join("resources.json");
    resources(origin)?.write(&file)?;
    let (test_cp, access) =
        pki.start_cp(env!("CARGO_BIN_EXE_bearing-test-cp"), cp, 5678, &file, "cp")?;
    Ok(Rig {
        topo,
        file,
        test_cp,
        access,
        _http: http,
    })
}

#[test]
fn envoy_and_bearing_fed_by_one_test_cp_answer_alike() -> Result<()> {
    // Every part bound: one left to `..` would be dropped (the origin stopped) at once.
    let Rig {
        topo,
        file,
        test_cp,
        access,
        _http,
    } = rig("differential", |origin| resources(origin, false))?;
    let (envoy_host, bearing_host, origin) = (
        topo.host("envoy"),
        topo.host("bearing"),
        topo.host("origin"),
    );
    let _redis = start_redis(origin, ORIGIN_REDIS)?;
    let _envoy = access.envoy(envoy_host, "envoyconfig", "envoy-client")?;
    let bearing = access.bearing(
        bearing_host,
        "bearing-client",
        "dataplane",
        &format!(
            "type: Dataplane\nmesh: envoyconfig\nname: bearing-client\nnetworking:\n  address: {}\n  inbound:\n  - port: 18080\n    tags:\n      kuma.io/service: demo-client\n",
            bearing_host.ip4()
        ),
    )?;
    bearing.wait_ready()?;
    // Envoy is LIVE before its first listeners come: wait for them.
    wait_until(Duration::from_secs(20), || {
        envoy_host.tcp_listening(HTTP_PORT).unwrap_or(false)
            && envoy_host.tcp_listening(EMPTY_TCP_PORT).unwrap_or(false)
    })
    .with_context(|| format!("Envoy's listeners never came:\n{}", test_cp.log_contents()))?;
    for node in ["envoyconfig.envoy-client", "envoyconfig.bearing-client"] {
        let log = test_cp.log_contents();
        ensure!(
            log.lines()
                .any(|l| l.starts_with("ACK type=Listener") && l.ends_with(node)),
            "{node} did not ACK the listeners:\n{log}"
        );
    }

    let (e, b) = (envoy_host, bearing_host);
    // HTTP to the origin: the request the application sees, and statuses passed through.
    let echo = same_request("GET /echo", e, b, HTTP_PORT, "/echo/a?b=c")?;
    ensure!(echo.status == 200, "{echo:?}");
    same_request("GET /", e, b, HTTP_PORT, "/")?;
    same_request("GET /status/404", e, b, HTTP_PORT, "/status/404")?;
    // TCP: bytes through and back.
    let echoed = same("redis ECHO", e, b, |h| Ok(tcp_echo(h, TCP_PORT)))?;
    ensure!(echoed == "differential", "{echoed}");
    // A route whose cluster has no endpoint: Envoy's local 503.
    let empty = same_request("GET / without endpoints", e, b, EMPTY_HTTP_PORT, "/")?;
    ensure!(empty.status == 503, "{empty:?}");
    same("TCP without endpoints", e, b, |h| {
        Ok(tcp_echo(h, EMPTY_TCP_PORT))
    })?;
    // A port nobody listens on.
    same_request("no listener", e, b, UNUSED_PORT, "/")?;

    // A pushed new outbound: applied by both.
    resources(origin, true)?.write(&file)?;
    for host in [e, b] {
        wait_until(Duration::from_secs(20), || {
            http(host, PUSHED_PORT, "/").is_ok_and(|a| a.status == 200)
        })
        .with_context(|| format!("{}: the pushed outbound never answered", host.name()))?;
    }
    same_request(
        "GET /echo on the pushed outbound",
        e,
        b,
        PUSHED_PORT,
        "/echo",
    )?;
    Ok(())
}

/// The builtin gateway's listener port (on every address) in the compression case.
const GATEWAY_PORT: u16 = 8080;
/// Kuma's answer where no gateway route matches (a direct response).
const KUMA_404: &str = "This is a Kuma MeshGateway. No routes match this MeshGateway!\n";

/// A builtin gateway as kuma-cp renders one: Kuma's connection manager (with its gzip
/// compressor filter) on 0.0.0.0:[`GATEWAY_PORT`], `/direct` answered by Kuma's 404 and the
/// rest routed to the origin.
fn gateway_resources(origin: &Host) -> Result<XdsFile> {
    let routes = "gw:HTTP:8080:*";
    let mut xds = XdsFile::new();
    xds.listener(json!({
        "name": "gw:HTTP:8080",
        "address": {"socketAddress": {"address": "0.0.0.0", "portValue": GATEWAY_PORT}},
        "trafficDirection": "INBOUND",
        "filterChains": [{"filters": [gateway_manager(routes)]}],
    }))?
    .cluster(gateway_cluster("origin", origin.sock4(ORIGIN_HTTP)))?;
    xds.add(
        ROUTES,
        routes,
        json!({
            "name": routes,
            "ignorePortInHostMatching": true,
            "validateClusters": false,
            "virtualHosts": [{"name": "*", "domains": ["*"], "routes": [
                {"match": {"prefix": "/direct"},
                 "directResponse": {"status": 404, "body": {"inlineString": KUMA_404}}},
                {"match": {"prefix": "/"}, "route": {"cluster": "origin"}},
            ]}],
        }),
    );
    Ok(xds)
}

/// What a client sees of one response of a compressing gateway: the headers compression
/// decides, and the body as sent, gunzipped when it says gzip.
#[derive(Debug, PartialEq)]
struct Encoded {
    status: u16,
    content_encoding: Option<String>,
    vary: Option<String>,
    content_length: Option<String>,
    transfer_encoding: Option<String>,
    body: String,
}

/// `method path` to the gateway on `host` (from itself) with `accept` as `Accept-Encoding`.
fn encoded(host: &Host, method: &str, path: &str, accept: Option<&str>) -> Result<Encoded> {
    use std::io::Read;
    let mut args = vec![
        format!("http://127.0.0.1:{GATEWAY_PORT}{path}"),
        "-m".to_string(),
        "5".to_string(),
    ];
    if method == "HEAD" {
        args.push("-I".into());
    }
    if let Some(accept) = accept {
        args.extend(["-H".to_string(), format!("Accept-Encoding: {accept}")]);
    }
    let out = curl_raw(host, &args)?;
    ensure!(
        out.exit_code == Some(0) && out.heads.len() == 1,
        "{method} {path} on {}: {out:?}",
        host.name()
    );
    let status = out.heads[0].split(' ').nth(1).and_then(|s| s.parse().ok());
    let content_encoding = out.header("content-encoding");
    let body = match content_encoding.as_deref() {
        Some("gzip") => {
            let mut text = String::new();
            flate2::read::GzDecoder::new(&out.body[..])
                .read_to_string(&mut text)
                .with_context(|| format!("gunzip {method} {path} from {}", host.name()))?;
            text
        }
        _ => String::from_utf8_lossy(&out.body).into_owned(),
    };
    Ok(Encoded {
        status: status.unwrap_or(0),
        content_encoding,
        vary: out.header("vary"),
        content_length: out.header("content-length"),
        transfer_encoding: out.header("transfer-encoding"),
        body,
    })
}

#[test]
fn envoy_and_bearing_gateways_compress_alike() -> Result<()> {
    let Rig {
        topo,
        file: _file,
        test_cp,
        access,
        _http,
    } = rig("differential-gzip", gateway_resources)?;
    let (envoy_host, bearing_host) = (topo.host("envoy"), topo.host("bearing"));
    let _envoy = access.envoy(envoy_host, "default", "envoy-gw")?;
    let dataplane = dataplane_yaml(
        "bearing-gw",
        bearing_host,
        "  gateway:\n    type: BUILTIN\n    tags:\n      kuma.io/service: gw\n",
    );
    let bearing = access.bearing(bearing_host, "bearing-gw", "dataplane", &dataplane)?;
    bearing.wait_ready()?;
    for host in [envoy_host, bearing_host] {
        wait_until(Duration::from_secs(20), || {
            host.tcp_listening(GATEWAY_PORT).unwrap_or(false)
        })
        .with_context(|| {
            format!(
                "{}: the gateway listener never came:\n{}",
                host.name(),
                test_cp.log_contents()
            )
        })?;
    }

    let mut cases = Vec::new();
    for path in [
        "/bytes/1000",
        "/bytes/30",
        "/bytes/29",
        "/status/404",
        "/direct",
        "/",
    ] {
        for accept in [
            None,
            Some("gzip"),
            Some("gzip;q=0"),
            Some("*"),
            Some("identity"),
            Some("br, gzip;q=0.5"),
            Some("GZIP"),
            Some(""),
        ] {
            cases.push(("GET", path, accept));
        }
    }
    for path in ["/bytes/1000", "/direct"] {
        for accept in [None, Some("gzip")] {
            cases.push(("HEAD", path, accept));
        }
    }
    let (e, b) = (envoy_host, bearing_host);
    let mut compressed = 0;
    for (method, path, accept) in cases {
        let case = format!("{method} {path} Accept-Encoding {accept:?}");
        let answer = same(&case, e, b, |h| encoded(h, method, path, accept))?;
        compressed += usize::from(answer.content_encoding.is_some());
    }
    // gzip, `*` and `br, gzip;q=0.5` on the three compressible responses (1000 and 30 bytes,
    // Kuma's 404), by both.
    ensure!(compressed == 9, "{compressed} compressed answers");
    Ok(())
}

//! A builtin gateway configured only by the control plane: a Bearing started as kuma-dp is
//! for a Dataplane of `gateway.type: BUILTIN`, fed by `bearing-test-cp` with the resources
//! kuma-cp renders for a MeshGateway (a listener whose HTTP connection manager takes its
//! routes over RDS, the RouteConfiguration, clusters, and for HTTPS a chain per hostname with
//! its certificate from an SDS Secret) routes by path to two origins; curl sees each request
//! reach the origin its route names, with the gateway's `server` header; a pushed route
//! configuration with a policy Bearing does not enforce is NACKed by its field, the old routes
//! serving on.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bearing_e2e::*;
use serde_json::{json, Value};

const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
/// The origins' port.
const ORIGIN_PORT: u16 = 8080;
/// The gateway's HTTP and HTTPS listeners.
const HTTP_PORT: u16 = 8080;
const HTTPS_PORT: u16 = 8443;
/// The HTTPS listener's hostname.
const SECURE_HOST: &str = "secure.example.com";

/// A STATIC cluster `name` of one endpoint, spoken to over HTTP/1.1 (Kuma's gateway
/// clusters carry explicit HTTP options).
fn cluster(name: &str, host: &Host) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connectTimeout": "5s",
        "perConnectionBufferLimitBytes": 32768,
        "typedExtensionProtocolOptions": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicitHttpConfig": {"httpProtocolOptions": {}},
        }},
        "loadAssignment": {"clusterName": name, "endpoints": [{"lbEndpoints": [{"endpoint": {
            "address": {"socketAddress": {"address": host.ip4().to_string(), "portValue": ORIGIN_PORT}}
        }}]}]},
    })
}

/// Kuma's gateway HTTP connection manager, its routes from RDS `routes`.
fn manager(routes: &str) -> Value {
    json!({"name": "envoy.filters.network.http_connection_manager", "typedConfig": {
        "@type": HCM,
        "statPrefix": "gateway-default",
        "commonHttpProtocolOptions": {"headersWithUnderscoresAction": "REJECT_REQUEST", "idleTimeout": "300s"},
        "httpFilters": [
            {"name": "envoy.filters.http.local_ratelimit", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                "statPrefix": "rate_limit"}},
            {"name": "envoy.filters.http.router", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
        "mergeSlashes": true,
        "normalizePath": true,
        "pathWithEscapedSlashesAction": "UNESCAPE_AND_REDIRECT",
        "rds": {"configSource": {"ads": {}, "resourceApiVersion": "V3"}, "routeConfigName": routes},
        "requestHeadersTimeout": "0.500s",
        "serverName": "Kuma Gateway",
        "streamIdleTimeout": "5s",
        "useRemoteAddress": true,
    }})
}

/// A route configuration as kuma-cp renders a MeshGatewayRoute (`/two` by a path + prefix
/// pair → two, the rest → one) for `domain`.
fn route_config(name: &str, domain: &str) -> Value {
    let to = |cluster: &str| {
        json!({"weightedClusters": {"clusters": [{
        "name": cluster, "weight": 1,
        "requestHeadersToAdd": [{"header": {"key": "x-kuma-tags", "value": "&kuma.io/service=gw&"}}],
    }]}, "idleTimeout": "5s", "clusterNotFoundResponseCode": "INTERNAL_SERVER_ERROR"})
    };
    json!({
        "name": name,
        "ignorePortInHostMatching": true,
        "requestHeadersToRemove": ["x-kuma-tags"],
        "validateClusters": false,
        "virtualHosts": [{"name": domain, "domains": [domain], "routes": [
            {"match": {"path": "/two"}, "route": to("two")},
            {"match": {"prefix": "/two/"}, "route": to("two")},
            {"match": {"prefix": "/"}, "route": to("one")},
        ]}],
    })
}

/// The gateway's resources: the HTTP listener (`*`), the HTTPS listener (`SECURE_HOST`, its
/// certificate from the Secret `cert.rsa:secret:secure`), their routes, the origins' clusters.
fn resources(gw: &Host, one: &Host, two: &Host, cert: &CertFiles) -> Result<XdsFile> {
    let address =
        |port: u16| json!({"socketAddress": {"address": gw.ip4().to_string(), "portValue": port}});
    let http = json!({
        "name": "gw:HTTP:8080",
        "address": address(HTTP_PORT),
        "trafficDirection": "INBOUND",
        "filterChains": [{"filters": [manager("gw:HTTP:8080:*")]}],
    });
    let https = json!({
        "name": "gw:HTTPS:8443",
        "address": address(HTTPS_PORT),
        "trafficDirection": "INBOUND",
        "filterChains": [{
            "filterChainMatch": {"serverNames": [SECURE_HOST], "transportProtocol": "tls"},
            "transportSocket": {"name": "envoy.transport_sockets.tls", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "requireClientCertificate": false,
                "commonTlsContext": {
                    "alpnProtocols": ["h2", "http/1.1"],
                    "tlsParams": {"tlsMinimumProtocolVersion": "TLSv1_2"},
                    "tlsCertificateSdsSecretConfigs": [{"name": "cert.rsa:secret:secure",
                        "sdsConfig": {"ads": {}, "resourceApiVersion": "V3"}}],
                },
            }},
            "filters": [manager("gw:HTTPS:8443:secure.example.com")],
        }],
    });
    let pem = |path: &std::path::Path| -> Result<String> {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    let secret = json!({"name": "cert.rsa:secret:secure", "tlsCertificate": {
        "certificateChain": {"inlineString": pem(&cert.cert)?},
        "privateKey": {"inlineString": pem(&cert.key)?},
    }});
    let mut xds = XdsFile::new();
    xds.listener(http)?.listener(https)?;
    xds.cluster(cluster("one", one))?
        .cluster(cluster("two", two))?;
    xds.add(
        ROUTES,
        "gw:HTTP:8080:*",
        route_config("gw:HTTP:8080:*", "*"),
    );
    let secure_routes = "gw:HTTPS:8443:secure.example.com";
    xds.add(
        ROUTES,
        secure_routes,
        route_config(secure_routes, SECURE_HOST),
    );
    xds.add(SECRET, "cert.rsa:secret:secure", secret);
    Ok(xds)
}

#[test]
fn a_builtin_gateway_routes_by_the_routes_the_cp_sends() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "python3"])?;
    let topo = Topology::new(&["cp", "gw", "client", "one", "two"])?;
    let (cp, gw, client) = (topo.host("cp"), topo.host("gw"), topo.host("client"));
    let (one, two) = (topo.host("one"), topo.host("two"));
    let pki = CpPki::new(topo.dir(), "cp-gateway", cp)?;
    let origin_one = start_http_server(one, ORIGIN_PORT)?;
    let origin_two = start_http_server(two, ORIGIN_PORT)?;
    let (body_one, body_two) = (origin_one.body(), origin_two.body());
    let server_cert = pki.ca.issue("secure", &[&format!("DNS:{SECURE_HOST}")])?;

    let file = pki.dir.join("gw.json");
    resources(gw, one, two, &server_cert)?.write(&file)?;
    let (cp_process, access) =
        pki.start_cp(env!("CARGO_BIN_EXE_bearing-test-cp"), cp, 5678, &file, "cp")?;
    let dataplane = dataplane_yaml(
        "gw",
        gw,
        "  gateway:\n    type: BUILTIN\n    tags:\n      kuma.io/service: gw\n",
    );
    let gateway = access.bearing(gw, "gw", "dataplane", &dataplane)?;
    gateway.wait_ready()?;
    cp_process.wait_for_log("ACK type=RouteConfiguration", Duration::from_secs(30))?;
    let dump = gateway.config_dump()?;
    let listeners = dump["config"]["listeners"]
        .as_array()
        .context("listeners")?;
    ensure!(
        listeners
            .iter()
            .filter(|l| l["gateway"].is_object())
            .count()
            == 2,
        "two gateway listeners in /config_dump: {listeners:?}"
    );

    let http = |path: &str| format!("http://{}:{HTTP_PORT}{path}", gw.ip4());
    ensure!(curl(client, [http("/")])? == (200, body_one.to_string()));
    ensure!(curl(client, [http("/two")])? == (200, body_two.to_string()));
    ensure!(curl(client, [http("/two/x")])? == (200, body_two.to_string()));
    ensure!(
        curl(client, [http("/twox")])? == (200, body_one.to_string()),
        "/twox is neither /two nor under /two/"
    );
    // The gateway's defaults: its `server` header; path hygiene before matching.
    let out = curl_output(client, [http("/x/../two").as_str(), "-i", "--path-as-is"])?;
    ensure!(out.body.contains(body_two), "{}", out.body);
    ensure!(
        out.body
            .to_ascii_lowercase()
            .contains("server: kuma gateway"),
        "{}",
        out.body
    );

    // HTTPS: the hostname's certificate from the Secret, then the same routes.
    let resolve = format!("{SECURE_HOST}:{HTTPS_PORT}:{}", gw.ip4());
    let ca = pki.ca.files().cert.to_string_lossy().into_owned();
    let https = |path: &str| format!("https://{SECURE_HOST}:{HTTPS_PORT}{path}");
    for proto in ["--http1.1", "--http2"] {
        let args = |path: &str| {
            vec![
                https(path),
                "--resolve".into(),
                resolve.clone(),
                "--cacert".into(),
                ca.clone(),
                proto.into(),
            ]
        };
        ensure!(
            curl(client, args("/two/y"))? == (200, body_two.to_string()),
            "{proto}"
        );
        ensure!(
            curl(client, args("/"))? == (200, body_one.to_string()),
            "{proto}"
        );
    }

    // A pushed route configuration with Kuma's default retry policy (a policy Bearing does not
    // enforce yet): NACKed by the field's path, the routes before it serving on.
    let served = dump["version"].clone();
    let mut changed = resources(gw, one, two, &server_cert)?;
    let routes = changed.get_mut(ROUTES, "gw:HTTP:8080:*")?;
    routes["virtualHosts"][0]["routes"][2]["route"]["retryPolicy"] =
        json!({"numRetries": 5, "retryOn": "gateway-error,connect-failure,refused-stream"});
    changed.write(&file)?;
    cp_process.wait_for_log("NACK type=RouteConfiguration", Duration::from_secs(30))?;
    let log = cp_process.log_contents();
    let nack = log
        .lines()
        .find(|l| l.starts_with("NACK type=RouteConfiguration"))
        .context("NACK line")?;
    ensure!(
        nack.contains("gw:HTTP:8080:*") && nack.contains("retry_policy"),
        "the NACK names the route configuration and the field: {nack}"
    );
    ensure!(
        gateway.config_dump()?["version"] == served,
        "the old config is still applied"
    );
    ensure!(curl(client, [http("/two")])? == (200, body_two.to_string()));
    Ok(())
}

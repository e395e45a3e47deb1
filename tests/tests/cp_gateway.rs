//! A builtin gateway configured only by the control plane: a Bearing started as kuma-dp is
//! for a Dataplane of `gateway.type: BUILTIN`, fed by `bearing-test-cp` with the resources
//! kuma-cp renders for a MeshGateway (a listener whose HTTP connection manager takes its
//! routes over RDS, the RouteConfiguration, clusters, and for HTTPS a chain per hostname with
//! its certificate from an SDS Secret) routes by path to two origins; curl sees each request
//! reach the origin its route names, with the gateway's `server` header; a pushed route
//! configuration with a policy Bearing does not enforce is NACKed by its field, the old routes
//! serving on. A TCP gateway listener (kuma-cp's `<gateway>:TCP:<port>` with a `tcp_proxy`
//! over weighted clusters, its connection limit from the `gateway.listeners` runtime layer)
//! spreads connections by weight and refuses those beyond its limit. A cross-mesh listener
//! (a chain matched by ALPN `kuma` presenting the gateway's mesh identity and verifying
//! clients against kuma-cp's all-in-one CA secret) serves a proxy of another mesh, with that
//! mesh's certificate, and refuses a client without one, of a mesh it does not trust, or not
//! offering ALPN `kuma`. Kuma's gzip compressor filter compresses responses for clients that
//! accept gzip, over HTTP/1.1 and HTTP/2. TLS gateway listeners (kuma-cp's
//! `<gateway>:TLS:<port>`, a chain per hostname matched by server name) terminate TLS with the
//! hostname's certificate and relay to the route's TCP backends (a mesh service over mesh
//! mTLS), or pass the TLS through; a server name no chain matches gets no handshake.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bearing_e2e::*;
use serde_json::{json, Value};

/// The test CP binary.
const TEST_CP: &str = env!("CARGO_BIN_EXE_bearing-test-cp");
/// The origins' port.
const ORIGIN_PORT: u16 = 8080;
/// The gateway's HTTP and HTTPS listeners.
const HTTP_PORT: u16 = 8080;
const HTTPS_PORT: u16 = 8443;
/// The HTTPS listener's hostname.
const SECURE_HOST: &str = "secure.example.com";

/// A STATIC cluster `name` of the origin on `host`.
fn cluster(name: &str, host: &Host) -> Value {
    gateway_cluster(name, host.sock4(ORIGIN_PORT))
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
        "filterChains": [{"filters": [gateway_manager("gw:HTTP:8080:*")]}],
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
            "filters": [gateway_manager("gw:HTTPS:8443:secure.example.com")],
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

/// What every test here starts from: the hosts (cp, gw, client, one, two), the CP's PKI
/// named `name`, and an HTTP origin on `one` and on `two`.
fn gateway_rig(name: &str) -> Result<(Topology, CpPki, HttpServer, HttpServer)> {
    require_root_and_tools()?;
    require_tools(&["openssl", "python3", "socat"])?;
    let topo = Topology::new(&["cp", "gw", "client", "one", "two"])?;
    let pki = CpPki::new(topo.dir(), name, topo.host("cp"))?;
    let origin_one = start_http_server(topo.host("one"), ORIGIN_PORT)?;
    let origin_two = start_http_server(topo.host("two"), ORIGIN_PORT)?;
    Ok((topo, pki, origin_one, origin_two))
}

#[test]
fn a_builtin_gateway_routes_by_the_routes_the_cp_sends() -> Result<()> {
    let (topo, pki, origin_one, origin_two) = gateway_rig("cp-gateway")?;
    let (cp, gw, client) = (topo.host("cp"), topo.host("gw"), topo.host("client"));
    let (one, two) = (topo.host("one"), topo.host("two"));
    let (body_one, body_two) = (origin_one.body(), origin_two.body());
    let server_cert = pki.ca.issue("secure", &[&format!("DNS:{SECURE_HOST}")])?;

    let file = pki.dir.join("gw.json");
    resources(gw, one, two, &server_cert)?.write(&file)?;
    let (cp_process, gateway) = pki.builtin_gateway(TEST_CP, cp, gw, &file)?;
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

    // Kuma's default MeshRetry on every route (as kuma-cp renders it) is taken: ACKed and
    // applied, the routes serving on.
    let served = dump["version"].clone();
    let mut changed = resources(gw, one, two, &server_cert)?;
    // On the routes of both listeners, as kuma-cp renders a Mesh-wide MeshRetry.
    let set_retry = |changed: &mut XdsFile, policy: serde_json::Value| -> Result<()> {
        for name in ["gw:HTTP:8080:*", "gw:HTTPS:8443:secure.example.com"] {
            let routes = changed.get_mut(ROUTES, name)?;
            let all = routes["virtualHosts"][0]["routes"]
                .as_array_mut()
                .context("routes")?;
            for route in all.iter_mut().filter(|r| r["route"].is_object()) {
                route["route"]["retryPolicy"] = policy.clone();
            }
        }
        Ok(())
    };
    let kuma_default = json!({"numRetries": 5, "perTryTimeout": "16s",
        "retryBackOff": {"baseInterval": "0.025s", "maxInterval": "0.250s"},
        "retryOn": "gateway-error,connect-failure,refused-stream"});
    set_retry(&mut changed, kuma_default)?;
    changed.write(&file)?;
    wait_until(Duration::from_secs(30), || {
        gateway.config_dump().is_ok_and(|d| d["version"] != served)
    })
    .context("the routes with Kuma's retry policy were applied")?;
    let dump = gateway.config_dump()?;
    let listeners = dump["config"]["listeners"]
        .as_array()
        .context("listeners")?;
    let retries: Vec<&serde_json::Value> = listeners
        .iter()
        .filter_map(|l| l["gateway"]["hosts"].as_array())
        .flatten()
        .filter_map(|h| h["http_routes"].as_array())
        .flatten()
        .filter(|r| r["action"]["kind"] == "forward")
        .map(|r| &r["action"]["retry"]["num_retries"])
        .collect();
    ensure!(
        !retries.is_empty() && retries.iter().all(|n| **n == 5),
        "each forwarding route holds the retry policy: {retries:?}"
    );
    ensure!(curl(client, [http("/two")])? == (200, body_two.to_string()));

    // A retry condition Bearing does not act on (a rate-limited upstream's): NACKed by the
    // field's path, the routes before it serving on.
    let served = dump["version"].clone();
    set_retry(
        &mut changed,
        json!({"numRetries": 5, "retryOn": "envoy-ratelimited,connect-failure"}),
    )?;
    changed.write(&file)?;
    cp_process.wait_for_log("NACK type=RouteConfiguration", Duration::from_secs(30))?;
    let log = cp_process.log_contents();
    let nack = log
        .lines()
        .find(|l| l.starts_with("NACK type=RouteConfiguration"))
        .context("NACK line")?;
    ensure!(
        nack.contains("gw:HTTP:8080:*") && nack.contains("retry_policy.retry_on"),
        "the NACK names the route configuration and the field: {nack}"
    );
    ensure!(
        gateway.config_dump()?["version"] == served,
        "the old config is still applied"
    );
    ensure!(curl(client, [http("/two")])? == (200, body_two.to_string()));
    Ok(())
}

/// MeshRateLimit on a builtin gateway as kuma-cp renders it (Kuma's golden
/// `gateway/http/21-gateway-route.yaml`): a bucket on one route, read by the connection
/// manager's `local_ratelimit` filter. The route's third request within the bucket's hour is
/// answered 429 `local_rate_limited`, over HTTP/1.1 and HTTP/2, while the other routes
/// serve on and the refusals are counted; Envoy 1.40 fed the same resources answers alike.
#[test]
fn a_builtin_gateway_limits_the_rate_of_a_route_as_envoy() -> Result<()> {
    let (topo, pki, origin_one, origin_two) = gateway_rig("cp-gateway-limit")?;
    let (cp, gw, client) = (topo.host("cp"), topo.host("gw"), topo.host("client"));
    let (one, two) = (topo.host("one"), topo.host("two"));
    let server_cert = pki.ca.issue("secure", &[&format!("DNS:{SECURE_HOST}")])?;
    let mut xds = resources(gw, one, two, &server_cert)?;
    let limit = json!({"envoy.filters.http.local_ratelimit": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "filterEnabled": {"defaultValue": {"numerator": 100}, "runtimeKey": "local_rate_limit_enabled"},
        "filterEnforced": {"defaultValue": {"numerator": 100}, "runtimeKey": "local_rate_limit_enforced"},
        "statPrefix": "rate_limit",
        "tokenBucket": {"fillInterval": "3600s", "maxTokens": 2, "tokensPerFill": 2},
    }});
    xds.get_mut(ROUTES, "gw:HTTP:8080:*")?["virtualHosts"][0]["routes"][0]
        ["typedPerFilterConfig"] = limit;
    let file = pki.dir.join("gw.json");
    xds.write(&file)?;
    let (cp_process, gateway) = pki.builtin_gateway(TEST_CP, cp, gw, &file)?;
    cp_process.wait_for_log("ACK type=RouteConfiguration", Duration::from_secs(30))?;
    ensure!(
        !cp_process.log_contents().contains("NACK"),
        "{}",
        cp_process.log_contents()
    );

    let url = |path: &str| format!("http://{}:{HTTP_PORT}{path}", gw.ip4());
    // Each answer's status and body, and the names of the headers of the refusals.
    let mut refusal_headers: Vec<Vec<String>> = Vec::new();
    let mut answers = |proxy: &str| -> Result<Vec<(u16, String)>> {
        let mut all = Vec::new();
        for proto in [
            "--http1.1",
            "--http1.1",
            "--http1.1",
            "--http2-prior-knowledge",
        ] {
            for path in ["/two", "/"] {
                let out = curl_output(client, [url(path), proto.into(), "-i".into()])?;
                let (head, body) = out.body.split_once("\r\n\r\n").unwrap_or_default();
                if out.http_code == 429 {
                    let mut names: Vec<String> = head
                        .lines()
                        .skip(1)
                        .filter_map(|l| l.split_once(':'))
                        .map(|(n, _)| n.to_ascii_lowercase())
                        .collect();
                    names.sort();
                    refusal_headers.push(names);
                }
                all.push((out.http_code, body.to_string()));
            }
        }
        let (two, one) = (origin_two.body().to_string(), origin_one.body().to_string());
        let limited = (429, "local_rate_limited".to_string());
        let want = [
            (200, two.clone()),
            (200, one.clone()),
            (200, two),
            (200, one.clone()),
            limited.clone(),
            (200, one.clone()),
            limited,
            (200, one),
        ];
        ensure!(all == want, "{proxy}: {all:?}, expected {want:?}");
        Ok(all)
    };
    let bearing = answers("bearing")?;
    let refused = gateway.metric("bearing_local_rate_limited_total{listener=\"gw:HTTP:8080\"}")?;
    ensure!(refused == 2.0, "refusals counted: {refused}");

    // Differential: Envoy 1.40 in Bearing's place, the same resources from the same CP.
    gateway.process().stop(Duration::from_secs(5));
    let access = CpAccess::new(cp, 5678, &pki);
    let _envoy = access.envoy(gw, "default", "gw")?;
    gw.wait_for_tcp_listener(HTTP_PORT, Duration::from_secs(20), None)
        .context("Envoy's listeners")?;
    ensure!(answers("envoy")? == bearing);
    // The refusals' headers, Bearing's (HTTP/1.1, HTTP/2) then Envoy's, name for name.
    let (ours, theirs) = refusal_headers.split_at(2);
    ensure!(
        ours == theirs,
        "refusal headers: bearing {ours:?}, envoy {theirs:?}"
    );
    Ok(())
}

/// `bytes` gunzipped.
fn gunzip(bytes: &[u8]) -> Result<String> {
    use std::io::Read;
    let mut out = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut out)
        .context("gunzip")?;
    Ok(out)
}

/// Kuma's gzip compressor on the gateway's listeners (from the CP's resources): a response to
/// a client accepting gzip is compressed (chunked over HTTP/1.1, DATA frames over HTTP/2)
/// with `Vary: Accept-Encoding`, and gunzips to the origin's body; a client that does not
/// accept gzip gets the body as sent with its length and the same `Vary`; a response under 30
/// bytes, a HEAD's, and one to `gzip;q=0` are not compressed; a keep-alive connection whose
/// second request accepts gzip gets it compressed.
#[test]
fn a_builtin_gateway_gzips_responses_for_clients_that_accept_it() -> Result<()> {
    let (topo, pki, _origin_one, _origin_two) = gateway_rig("cp-gateway-gzip")?;
    let (cp, gw, client) = (topo.host("cp"), topo.host("gw"), topo.host("client"));
    let (one, two) = (topo.host("one"), topo.host("two"));
    let server_cert = pki.ca.issue("secure", &[&format!("DNS:{SECURE_HOST}")])?;
    let file = pki.dir.join("gw.json");
    resources(gw, one, two, &server_cert)?.write(&file)?;
    let (_cp_process, gateway) = pki.builtin_gateway(TEST_CP, cp, gw, &file)?;
    let dump = gateway.config_dump()?;
    ensure!(
        dump["config"]["listeners"][0]["gateway"]["compression"]["min_content_length"] == 30,
        "Kuma's compression in /config_dump: {dump}"
    );

    let url = |path: &str| format!("http://{}:{HTTP_PORT}{path}", gw.ip4());
    let big = "x".repeat(1000);
    // `GET path` (or as `extra` says) with `accept` as Accept-Encoding.
    let get = |path: &str, accept: Option<&str>, extra: &[&str]| -> Result<RawResponse> {
        let mut args = vec![url(path)];
        if let Some(accept) = accept {
            args.extend(["-H".to_string(), format!("Accept-Encoding: {accept}")]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let out = curl_raw(client, &args)?;
        ensure!(
            out.exit_code == Some(0) && out.heads.len() == 1,
            "curl {args:?}: {out:?}"
        );
        Ok(out)
    };

    let out = get("/bytes/1000", Some("gzip"), &[])?;
    ensure!(
        out.header("content-encoding").as_deref() == Some("gzip")
            && out.header("vary").as_deref() == Some("Accept-Encoding")
            && out.header("transfer-encoding").as_deref() == Some("chunked")
            && out.header("content-length").is_none()
            && out.header("server").as_deref() == Some("Kuma Gateway"),
        "compressed: {out:?}"
    );
    ensure!(out.body.len() < 100, "{} compressed bytes", out.body.len());
    ensure!(
        gunzip(&out.body)? == big,
        "the body gunzips to the origin's"
    );

    let out = get("/bytes/1000", None, &[])?;
    ensure!(
        out.header("content-encoding").is_none()
            && out.header("vary").as_deref() == Some("Accept-Encoding")
            && out.header("content-length").as_deref() == Some("1000")
            && out.body == big.as_bytes(),
        "without Accept-Encoding: {out:?}"
    );
    for (case, path, accept, extra) in [
        ("under 30 bytes", "/bytes/29", Some("gzip"), &[][..]),
        (
            "gzip;q=0",
            "/bytes/1000",
            Some("gzip;q=0, identity"),
            &[][..],
        ),
        ("HEAD", "/bytes/1000", Some("gzip"), &["-I"][..]),
    ] {
        let out = get(path, accept, extra)?;
        ensure!(
            out.header("content-encoding").is_none() && out.header("content-length").is_some(),
            "{case}: not compressed: {out:?}"
        );
    }

    // One keep-alive connection: the first request without Accept-Encoding, the next with it.
    let out = curl_raw(
        client,
        [
            "-o".to_string(),
            "/dev/null".into(),
            url("/bytes/1000"),
            "--next".into(),
            "-D".into(),
            "-".into(),
            "-H".into(),
            "Accept-Encoding: gzip".into(),
            url("/bytes/1000"),
            "-v".into(),
        ],
    )?;
    ensure!(
        out.heads.len() == 2
            && header_value(&out.heads[0], "content-encoding").is_none()
            && out.header("content-encoding").as_deref() == Some("gzip")
            && out.stderr.contains("Re-using existing connection"),
        "one connection, the second response compressed: {out:?}"
    );
    ensure!(gunzip(&out.body)? == big);

    // HTTPS and HTTP/2: the gzip body in DATA frames.
    let resolve = format!("{SECURE_HOST}:{HTTPS_PORT}:{}", gw.ip4());
    let ca = pki.ca.files().cert.to_string_lossy().into_owned();
    let out = curl_raw(
        client,
        [
            format!("https://{SECURE_HOST}:{HTTPS_PORT}/bytes/1000"),
            "--resolve".into(),
            resolve,
            "--cacert".into(),
            ca,
            "--http2".into(),
            "-H".into(),
            "Accept-Encoding: gzip".into(),
        ],
    )?;
    ensure!(
        out.heads
            .first()
            .is_some_and(|h| h.starts_with("HTTP/2 200"))
            && out.header("content-encoding").as_deref() == Some("gzip")
            && gunzip(&out.body)? == big,
        "HTTP/2: {out:?}"
    );
    Ok(())
}

/// The TCP gateway listener's port and connection limit.
const TCP_PORT: u16 = 9000;
const TCP_LIMIT: u32 = 2;

/// A TCP gateway listener as kuma-cp renders a MeshGateway `protocol: TCP` listener with a
/// MeshTCPRoute splitting one:two as 1:3, and Kuma's runtime layer with its connection limit.
fn tcp_resources(gw: &Host, one: &Host, two: &Host) -> Result<XdsFile> {
    let name = format!("gw:TCP:{TCP_PORT}");
    let listener = json!({
        "name": name,
        "address": {"socketAddress": {"address": gw.ip4().to_string(), "portValue": TCP_PORT}},
        "enableReusePort": true,
        "perConnectionBufferLimitBytes": 32768,
        "trafficDirection": "INBOUND",
        "listenerFilters": [{"name": "envoy.filters.listener.tls_inspector", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
        "filterChains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "statPrefix": "gateway-default",
            "weightedClusters": {"clusters": [{"name": "one", "weight": 1}, {"name": "two", "weight": 3}]},
        }}]}],
    });
    let limit = format!("envoy.resource_limits.listener.{name}.connection_limit");
    let mut xds = XdsFile::new();
    xds.listener(listener)?;
    xds.cluster(cluster("one", one))?
        .cluster(cluster("two", two))?;
    xds.add(
        RUNTIME,
        "gateway.listeners",
        json!({"name": "gateway.listeners", "layer": {limit: TCP_LIMIT}}),
    );
    Ok(xds)
}

#[test]
fn a_tcp_gateway_listener_splits_by_weight_and_refuses_beyond_its_limit() -> Result<()> {
    let (topo, pki, origin_one, origin_two) = gateway_rig("cp-tcp-gateway")?;
    let (cp, gw, client) = (topo.host("cp"), topo.host("gw"), topo.host("client"));
    let (one, two) = (topo.host("one"), topo.host("two"));
    let (body_one, body_two) = (origin_one.body(), origin_two.body());

    let file = pki.dir.join("gw.json");
    tcp_resources(gw, one, two)?.write(&file)?;
    let (cp_process, gateway) = pki.builtin_gateway(TEST_CP, cp, gw, &file)?;
    cp_process.wait_for_log("ACK type=Runtime", Duration::from_secs(30))?;
    // The listener and its limit applied (the Runtime may come after the listener).
    wait_until(Duration::from_secs(10), || {
        gateway.config_dump().ok().is_some_and(|d| {
            d["config"]["listeners"][0]["gateway"]["connection_limit"] == json!(TCP_LIMIT)
        })
    })
    .context("the TCP gateway listener with its limit was not applied")?;

    // Whole connections by weight: 1 of every 4 to one, 3 to two.
    let url = format!("http://{}:{TCP_PORT}/", gw.ip4());
    let mut seen = [0; 2];
    for _ in 0..8 {
        let (code, body) = curl(client, [url.as_str()])?;
        ensure!(code == 200, "{code} {body}");
        ensure!(body == body_one || body == body_two, "{body}");
        seen[usize::from(body == body_two)] += 1;
    }
    ensure!(seen == [2, 6], "TCP split one/two by 1:3: {seen:?}");

    // The limit from the runtime layer: with TCP_LIMIT connections held open, the next is
    // refused; one closed frees a place.
    let held: Vec<Process> = (0..TCP_LIMIT)
        .map(|_| {
            client.spawn(
                "socat",
                [
                    format!("TCP:{}:{TCP_PORT}", gw.ip4()),
                    "SYSTEM:sleep 120".to_string(),
                ],
            )
        })
        .collect::<Result<_>>()?;
    let active =
        format!("bearing_listener_downstream_connections_active{{listener=\"gw:TCP:{TCP_PORT}\"}}");
    wait_until(Duration::from_secs(10), || {
        gateway.metric(&active).ok() == Some(f64::from(TCP_LIMIT))
    })
    .context("the held connections never became active")?;
    ensure!(
        !matches!(
            curl(client, [url.as_str(), "--max-time", "3"]),
            Ok((200, _))
        ),
        "a connection beyond the limit of {TCP_LIMIT} was served"
    );
    held[0].kill();
    wait_until_ok(Duration::from_secs(10), || {
        match curl(client, [url.as_str()]) {
            Ok((200, _)) => Ok(()),
            other => anyhow::bail!("with a place free again: {other:?}"),
        }
    })
}

/// The cross-mesh listener's port.
const CROSS_MESH_PORT: u16 = 8081;

/// kuma-cp's cross-mesh listener (MeshGateway `crossMesh: true`): one chain matched by ALPN
/// `kuma`, presenting the gateway's identity in `default` (`gw_leaf` of `default_ca`) and
/// verifying clients against `mesh_ca:secret:all`, the CAs of `default` and `other`; the
/// routes of [`route_config`].
fn cross_mesh_resources(
    gw: &Host,
    (one, two): (&Host, &Host),
    gw_leaf: &CertFiles,
    (default_ca, other_ca): (&TestCa, &TestCa),
) -> Result<XdsFile> {
    use base64::Engine;
    let sds =
        |name: &str| json!({"name": name, "sdsConfig": {"ads": {}, "resourceApiVersion": "V3"}});
    let name = format!("gw:HTTP:{CROSS_MESH_PORT}");
    let routes = format!("{name}:*");
    let listener = json!({
        "name": name,
        "address": {"socketAddress": {"address": gw.ip4().to_string(), "portValue": CROSS_MESH_PORT}},
        "trafficDirection": "INBOUND",
        "filterChains": [{
            "filterChainMatch": {"applicationProtocols": ["kuma"], "transportProtocol": "tls"},
            "transportSocket": {"name": "envoy.transport_sockets.tls", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "requireClientCertificate": true,
                "commonTlsContext": {
                    "combinedValidationContext": {
                        "defaultValidationContext": {},
                        "validationContextSdsSecretConfig": sds("mesh_ca:secret:all"),
                    },
                    "tlsCertificateSdsSecretConfigs": [sds("identity_cert:secret:default")],
                },
            }},
            "filters": [gateway_manager(&routes)],
        }],
    });
    let bundle = format!("{}{}", default_ca.cert_pem()?, other_ca.cert_pem()?);
    let bundle = base64::engine::general_purpose::STANDARD.encode(bundle);
    let mut xds = XdsFile::new();
    xds.listener(listener)?;
    xds.cluster(cluster("one", one))?
        .cluster(cluster("two", two))?;
    xds.add(ROUTES, &routes, route_config(&routes, "*"));
    xds.mesh_identity("default", gw_leaf, default_ca)?;
    xds.add(
        SECRET,
        "mesh_ca:secret:all",
        json!({"name": "mesh_ca:secret:all", "validationContext": {"trustedCa": {"inlineBytes": bundle}}}),
    );
    Ok(xds)
}

#[test]
fn a_cross_mesh_gateway_serves_proxies_of_other_meshes_by_their_certificate() -> Result<()> {
    let (topo, pki, _origin_one, origin_two) = gateway_rig("cp-cross-mesh")?;
    let (cp, gw, client) = (topo.host("cp"), topo.host("gw"), topo.host("client"));
    let (one, two) = (topo.host("one"), topo.host("two"));
    let default_ca = TestCa::new(topo.dir(), "mesh-default")?;
    let other_ca = TestCa::new(topo.dir(), "mesh-other")?;
    let stranger_ca = TestCa::new(topo.dir(), "mesh-stranger")?;
    let gw_leaf = default_ca.issue("gw", &["URI:spiffe://default/gw"])?;
    let other_leaf = other_ca.issue("client", &["URI:spiffe://other/client"])?;
    let stranger_leaf = stranger_ca.issue("client", &["URI:spiffe://stranger/client"])?;

    let file = pki.dir.join("gw.json");
    cross_mesh_resources(gw, (one, two), &gw_leaf, (&default_ca, &other_ca))?.write(&file)?;
    let (_cp_process, gateway) = pki.builtin_gateway(TEST_CP, cp, gw, &file)?;
    let dump = gateway.config_dump()?;
    let cross = &dump["config"]["listeners"][0]["gateway"]["cross_mesh"];
    ensure!(
        cross["identity_mesh"] == "default",
        "a cross-mesh listener in /config_dump: {dump}"
    );

    let address = std::net::SocketAddr::from((gw.ip4(), CROSS_MESH_PORT));
    let request = "GET /two HTTP/1.1\r\nHost: gw.mesh\r\nConnection: close\r\n\r\n";
    let call_with = |leaf: Option<&CertFiles>, alpn: Option<&str>| -> Result<TlsOutcome> {
        let mut c = TlsClient::new(address)
            .verify_ca(&default_ca.files().cert)
            .send(request);
        if let Some(alpn) = alpn {
            c = c.alpn(alpn);
        }
        if let Some(leaf) = leaf {
            c = c.client_cert(leaf);
        }
        c.run(client)
    };
    let call = |leaf: Option<&CertFiles>| call_with(leaf, Some("kuma"));
    // A proxy of mesh `other`: the gateway's identity verifies against `default`'s CA, its
    // own certificate against the bundle, and its request is routed.
    let other = call(Some(&other_leaf))?;
    ensure!(
        other.accepted() && other.verified && other.response.contains(origin_two.body()),
        "a client of mesh other: {other:?}"
    );
    // No client certificate, or one of a mesh whose CA the bundle does not hold: refused.
    for (who, leaf) in [
        ("no certificate", None),
        ("mesh stranger", Some(&stranger_leaf)),
    ] {
        let outcome = call(leaf)?;
        ensure!(
            !outcome.accepted() && !outcome.response.contains(origin_two.body()),
            "{who}: {outcome:?}"
        );
    }
    // The chain is matched by ALPN `kuma`: a client offering no ALPN, or another one, matches
    // no chain and its connection is closed before any handshake, as Envoy closes it, even
    // with a certificate the listener trusts.
    for alpn in [None, Some("h2")] {
        let outcome = call_with(Some(&other_leaf), alpn)?;
        ensure!(
            !outcome.handshake && !outcome.response.contains(origin_two.body()),
            "a client offering ALPN {alpn:?}: {outcome:?}"
        );
    }
    ensure!(
        call(Some(&other_leaf))?.accepted(),
        "ALPN kuma still served"
    );
    Ok(())
}

/// The TLS gateway listeners' ports: TLS terminated, and passed through.
const TLS_TERMINATE_PORT: u16 = 9443;
const TLS_PASSTHROUGH_PORT: u16 = 9444;
/// The mesh mTLS backend's port (on `one`) and the passthrough backend's (on `two`).
const MESH_BACKEND_PORT: u16 = 9443;
const TLS_BACKEND_PORT: u16 = 8444;
/// The hostnames of the TLS listeners (Kuma's golden `gateway/tls/tcp-route.yaml` uses the
/// first) and the server names sent to the wildcard one.
const API_HOST: &str = "api.kuma.io";
const WILDCARD_HOST: &str = "*.example.com";

/// A TLS gateway chain as kuma-cp renders a MeshGateway `protocol: TLS` hostname: matched by
/// TLS and the hostname as server name, terminating TLS with the certificate Secret `cert`
/// (TERMINATE: no client certificate, TLS 1.2 at least) or passing it through (`None`),
/// then its MeshTCPRoute's `tcp_proxy` with Kuma's gateway idle timeout.
fn tls_chain(hostname: &str, cert: Option<&str>, clusters: Value) -> Value {
    let mut chain = json!({
        "filterChainMatch": {"serverNames": [hostname], "transportProtocol": "tls"},
        "filters": [{"name": "envoy.filters.network.tcp_proxy", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "idleTimeout": "300s",
            "statPrefix": "gateway-default",
            "weightedClusters": {"clusters": clusters},
        }}],
    });
    if let Some(secret) = cert {
        chain["transportSocket"] = json!({"name": "envoy.transport_sockets.tls", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "commonTlsContext": {
                "tlsCertificateSdsSecretConfigs": [{"name": secret,
                    "sdsConfig": {"ads": {}, "resourceApiVersion": "V3"}}],
                "tlsParams": {"tlsMinimumProtocolVersion": "TLSv1_2"},
            },
            "requireClientCertificate": false,
        }});
    }
    chain
}

/// A gateway certificate Secret `name` (kuma-cp's `cert.rsa:secret:<name>`) holding `cert`.
fn certificate_secret(name: &str, cert: &CertFiles) -> Result<Value> {
    Ok(json!({"name": name, "tlsCertificate": {
        "certificateChain": {"inlineString": cert.cert_pem()?},
        "privateKey": {"inlineString": cert.key_pem()?},
    }}))
}

/// The TLS listeners as kuma-cp renders them for Kuma's golden `gateway/tls/tcp-route.yaml`
/// (`max_connect_attempts` left out): `gw:TLS:9443` terminates TLS for `API_HOST` (its
/// certificate `api`) towards `mesh-one`, the mesh mTLS service on `one` (its cluster as
/// kuma-cp's: the gateway's identity, the mesh CA, the service's SPIFFE id, ALPN `kuma`), and
/// for `WILDCARD_HOST` (certificate `wild`) towards the plain origin `two`; `gw:TLS:9444`
/// passes `API_HOST`'s TLS through to `tls-two`, the TLS server on `two`.
fn tls_resources(
    (gw, one, two): (&Host, &Host, &Host),
    (api, wild): (&CertFiles, &CertFiles),
    (gw_leaf, mesh_ca): (&CertFiles, &TestCa),
) -> Result<XdsFile> {
    let listener = |port: u16, chains: Value| {
        json!({
            "name": format!("gw:TLS:{port}"),
            "address": {"socketAddress": {"address": gw.ip4().to_string(), "portValue": port}},
            "enableReusePort": true,
            "perConnectionBufferLimitBytes": 32768,
            "trafficDirection": "INBOUND",
            "listenerFilters": [{"name": "envoy.filters.listener.tls_inspector", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
            "filterChains": chains,
        })
    };
    let to = |cluster: &str| json!([{"name": cluster, "weight": 1}]);
    let terminate = listener(
        TLS_TERMINATE_PORT,
        json!([
            tls_chain(API_HOST, Some("cert.rsa:secret:api"), to("mesh-one")),
            tls_chain(WILDCARD_HOST, Some("cert.rsa:secret:wild"), to("two")),
        ]),
    );
    let passthrough = listener(
        TLS_PASSTHROUGH_PORT,
        json!([tls_chain(API_HOST, None, to("tls-two"))]),
    );
    let sds =
        |name: &str| json!({"name": name, "sdsConfig": {"ads": {}, "resourceApiVersion": "V3"}});
    let mut mesh_one = gateway_cluster("mesh-one", one.sock4(MESH_BACKEND_PORT));
    mesh_one["transportSocket"] = json!({"name": "envoy.transport_sockets.tls", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "commonTlsContext": {
            "alpnProtocols": ["kuma"],
            "combinedValidationContext": {
                "defaultValidationContext": {"matchTypedSubjectAltNames": [
                    {"matcher": {"exact": "spiffe://default/mesh-one"}, "sanType": "URI"}]},
                "validationContextSdsSecretConfig": sds("mesh_ca:secret:default"),
            },
            "tlsCertificateSdsSecretConfigs": [sds("identity_cert:secret:default")],
        },
        "sni": "mesh-one{mesh=default}",
    }});
    let mut xds = XdsFile::new();
    xds.listener(terminate)?.listener(passthrough)?;
    xds.cluster(mesh_one)?
        .cluster(cluster("two", two))?
        .cluster(gateway_cluster("tls-two", two.sock4(TLS_BACKEND_PORT)))?;
    xds.add(
        SECRET,
        "cert.rsa:secret:api",
        certificate_secret("cert.rsa:secret:api", api)?,
    );
    xds.add(
        SECRET,
        "cert.rsa:secret:wild",
        certificate_secret("cert.rsa:secret:wild", wild)?,
    );
    xds.mesh_identity("default", gw_leaf, mesh_ca)?;
    Ok(xds)
}

/// kuma-cp's TLS gateway listeners (MeshGateway `protocol: TLS`), fed by the test CP: a
/// ClientHello naming `api.kuma.io` gets the gateway's certificate for that name and its
/// bytes reach the mesh service behind it over mesh mTLS (the service sees the gateway's
/// SPIFFE identity); names under `*.example.com`, one or two labels deep, get the wildcard
/// certificate and reach the plain origin; another name, or none, gets no handshake (no chain
/// matches, as Envoy closes such a connection). The passthrough listener hands the untouched
/// TLS to the backend, whose own certificate the client sees, and refuses other names.
#[test]
fn a_tls_gateway_listener_terminates_by_server_name_and_relays_to_tcp_backends() -> Result<()> {
    let (topo, pki, _origin_one, origin_two) = gateway_rig("cp-tls-gateway")?;
    let (cp, gw, client) = (topo.host("cp"), topo.host("gw"), topo.host("client"));
    let (one, two) = (topo.host("one"), topo.host("two"));
    let gateway_ca = TestCa::new(topo.dir(), "gateway-certs")?;
    let api = gateway_ca.issue(API_HOST, &[&format!("DNS:{API_HOST}")])?;
    let wild = gateway_ca.issue("wild.example.com", &[&format!("DNS:{WILDCARD_HOST}")])?;
    let mesh_ca = TestCa::new(topo.dir(), "mesh-default")?;
    let gw_leaf = mesh_ca.issue("gw", &["URI:spiffe://default/gw"])?;
    let one_leaf = mesh_ca.issue("mesh-one", &["URI:spiffe://default/mesh-one"])?;
    // The mesh service: mesh mTLS, a client certificate of the mesh required; it answers a
    // GET with a page describing the connection, the client's certificate included.
    let mesh_service = one
        .command("openssl")
        .args(["s_server", "-www", "-Verify", "1", "-verify_return_error"])
        .args(["-alpn", "kuma", "-accept", &MESH_BACKEND_PORT.to_string()])
        .arg("-CAfile")
        .arg(&mesh_ca.files().cert)
        .arg("-cert")
        .arg(&one_leaf.cert)
        .arg("-key")
        .arg(&one_leaf.key)
        .log_name("mesh-one")
        .spawn()?;
    one.wait_for_tcp_listener(MESH_BACKEND_PORT, PEER_STARTUP_TIMEOUT, Some(&mesh_service))?;
    // The passthrough backend: TLS with its own certificate for the API name.
    let backend_ca = TestCa::new(topo.dir(), "backend")?;
    let backend_leaf = backend_ca.issue("backend.api", &[&format!("DNS:{API_HOST}")])?;
    let tls_two = NginxConfig::new(TLS_BACKEND_PORT)
        .body("tls backend on two\n")
        .tls(backend_leaf.cert_pem()?, backend_leaf.key_pem()?)
        .ipv6(false)
        .start(two)?;

    let file = pki.dir.join("gw.json");
    tls_resources((gw, one, two), (&api, &wild), (&gw_leaf, &mesh_ca))?.write(&file)?;
    let (_cp_process, gateway) = pki.builtin_gateway(TEST_CP, cp, gw, &file)?;
    let dump = gateway.config_dump()?;
    let protocols: Vec<&Value> = dump["config"]["listeners"]
        .as_array()
        .context("listeners")?
        .iter()
        .map(|l| &l["gateway"]["protocol"])
        .collect();
    ensure!(
        protocols.contains(&&json!("tls_terminate"))
            && protocols.contains(&&json!("tls_passthrough")),
        "both TLS gateway listeners in /config_dump: {protocols:?}"
    );

    let call = |port: u16, sni: Option<&str>, ca: &TestCa| -> Result<TlsOutcome> {
        let mut c = TlsClient::new(std::net::SocketAddr::from((gw.ip4(), port)))
            .verify_ca(&ca.files().cert)
            .send("GET / HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
        if let Some(sni) = sni {
            c = c.servername(sni);
        }
        c.run(client)
    };
    // The API name: the gateway's certificate for it, then the mesh service over mesh mTLS,
    // which saw the gateway's mesh identity as its client.
    let outcome = call(TLS_TERMINATE_PORT, Some(API_HOST), &gateway_ca)?;
    ensure!(
        outcome.accepted()
            && outcome.verified
            && outcome.peer_certificate.as_deref() == Some(&format!("CN = {API_HOST}"))
            && outcome.response.contains("Client certificate")
            && outcome.response.contains("URI:spiffe://default/gw"),
        "{API_HOST}: {outcome:?}"
    );
    // Names under the wildcard, one label deep or two, as Envoy's server_names match them.
    for name in ["foo.example.com", "a.b.example.com"] {
        let outcome = call(TLS_TERMINATE_PORT, Some(name), &gateway_ca)?;
        ensure!(
            outcome.accepted()
                && outcome.verified
                && outcome.peer_certificate.as_deref() == Some("CN = wild.example.com")
                && outcome.response.contains(origin_two.body()),
            "{name}: {outcome:?}"
        );
    }
    // No chain for another name, the wildcard's bare domain, or no name at all: no handshake.
    for sni in [Some("other.test"), Some("example.com"), None] {
        let outcome = call(TLS_TERMINATE_PORT, sni, &gateway_ca)?;
        ensure!(
            !outcome.handshake && outcome.response.is_empty(),
            "SNI {sni:?}: {outcome:?}"
        );
    }
    // Passthrough: the backend's own certificate, its answer; other names refused.
    let outcome = call(TLS_PASSTHROUGH_PORT, Some(API_HOST), &backend_ca)?;
    ensure!(
        outcome.accepted()
            && outcome.verified
            && outcome.peer_certificate.as_deref() == Some("CN = backend.api")
            && outcome.response.contains(tls_two.body()),
        "passthrough {API_HOST}: {outcome:?}"
    );
    for sni in [Some("other.test"), None] {
        let outcome = call(TLS_PASSTHROUGH_PORT, sni, &backend_ca)?;
        ensure!(
            !outcome.handshake && outcome.response.is_empty(),
            "passthrough SNI {sni:?}: {outcome:?}"
        );
    }
    Ok(())
}

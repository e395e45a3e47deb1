//! Routes from the control plane end to end: a Bearing sidecar fed only by `bearing-test-cp`
//! with a MeshHTTPRoute-shaped outbound (kuma-cp's rendering: `path` + `prefix` pairs, a
//! header match, weighted clusters, a direct response, header edits, a rewrite) and a
//! MeshTCPRoute-shaped TCP split, in front of two origins, and two routes with their own
//! timeouts to a slow origin; curl sees each request reach the origin its route names, or a
//! 504 at its route's timeout.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bearing_e2e::*;
use serde_json::{json, Value};

const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
/// The origins' port.
const ORIGIN_PORT: u16 = 8080;
/// The routed HTTP outbound and the split TCP outbound.
const HTTP_PORT: u16 = 10001;
const TCP_PORT: u16 = 10002;

/// A STATIC cluster `name` of one endpoint.
fn cluster(name: &str, host: &Host) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connectTimeout": "5s",
        "loadAssignment": {"clusterName": name, "endpoints": [{"lbEndpoints": [{"endpoint": {
            "address": {"socketAddress": {"address": host.ip4().to_string(), "portValue": ORIGIN_PORT}}
        }}]}]},
    })
}

/// A listener on 127.0.0.1:`port` with one network filter.
fn listener(port: u16, filter: Value) -> (String, Value) {
    let name = format!("outbound:127.0.0.1:{port}");
    let value = json!({
        "name": name,
        "address": {"socketAddress": {"address": "127.0.0.1", "portValue": port}},
        "trafficDirection": "OUTBOUND",
        "filterChains": [{"filters": [filter]}],
    });
    (name, value)
}

/// The routes as kuma-cp renders a MeshHTTPRoute for a sidecar outbound.
fn routes() -> Value {
    let to = |cluster: &str| json!({"cluster": cluster, "timeout": "0s"});
    json!([
        {"match": {"path": "/v2"}, "route": to("two")},
        {"match": {"prefix": "/v2/"}, "route": to("two"),
         "responseHeadersToAdd": [{"header": {"key": "x-route", "value": "v2"}}]},
        {"match": {"prefix": "/", "headers": [{"name": "x-version", "stringMatch": {"exact": "two"}}]},
         "route": to("two")},
        {"match": {"prefix": "/split"},
         "route": {"weightedClusters": {"clusters": [{"name": "one", "weight": 1}, {"name": "two", "weight": 1}]}, "timeout": "0s"}},
        {"match": {"path": "/gone"}, "directResponse": {"status": 410, "body": {"inlineString": "gone\n"}}},
        {"match": {"prefix": "/old/"}, "route": {"cluster": "two", "timeout": "0s", "prefixRewrite": "/"}},
        // MeshTimeout-shaped: two routes to one slow origin, each with its own timeout.
        {"match": {"prefix": "/timed/short"}, "route": {"cluster": "slow", "timeout": "1s"}},
        {"match": {"prefix": "/timed/long"}, "route": {"cluster": "slow", "timeout": "2.500s"}},
        {"match": {"prefix": "/"}, "route": to("one")},
    ])
}

/// The sidecar's resources: the two origins' clusters, the routed HTTP outbound and the
/// split TCP outbound.
fn resources(one: &Host, two: &Host, slow: &Host) -> Value {
    let (http_name, http) = listener(
        HTTP_PORT,
        json!({"name": "envoy.filters.network.http_connection_manager", "typedConfig": {
            "@type": HCM,
            "statPrefix": "backend",
            "httpFilters": [{"name": "envoy.filters.http.router", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            "routeConfig": {"name": "outbound:backend", "validateClusters": false, "virtualHosts": [
                {"name": "backend", "domains": ["*"], "routes": routes()}
            ]},
        }}),
    );
    let (tcp_name, tcp) = listener(
        TCP_PORT,
        json!({"name": "envoy.filters.network.tcp_proxy", "typedConfig": {
            "@type": TCP_PROXY,
            "statPrefix": "split",
            "weightedClusters": {"clusters": [{"name": "one", "weight": 1}, {"name": "two", "weight": 1}]},
        }}),
    );
    json!({"xds": {
        CLUSTER: {"one": cluster("one", one), "two": cluster("two", two), "slow": cluster("slow", slow)},
        LISTENER: {http_name: http, tcp_name: tcp},
    }})
}

/// `curl` through the sidecar from `host` with `args`: the status and body.
fn get(host: &Host, url: &str, args: &[&str]) -> Result<(u16, String)> {
    let mut all: Vec<&str> = vec![url];
    all.extend_from_slice(args);
    curl(host, all)
}

#[test]
fn a_sidecar_routes_by_the_route_table_the_cp_sends() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "python3"])?;
    let topo = Topology::new(&["cp", "web", "one", "two", "slow"])?;
    let (cp, web) = (topo.host("cp"), topo.host("web"));
    let (one, two, slow) = (topo.host("one"), topo.host("two"), topo.host("slow"));
    let pki = CpPki::new(topo.dir(), "cp-routes", cp)?;
    let origin_one = start_http_server(one, ORIGIN_PORT)?;
    let origin_two = start_http_server(two, ORIGIN_PORT)?;
    let (body_one, body_two) = (origin_one.body(), origin_two.body());
    let _origin_slow = start_slow_server(slow, ORIGIN_PORT, Duration::from_secs(6))?;

    let (_cp, sidecar) = pki.web_sidecar(
        env!("CARGO_BIN_EXE_bearing-test-cp"),
        cp,
        web,
        &resources(one, two, slow),
        "ACK type=Listener",
    )?;
    let dump = sidecar.config_dump()?;
    let http_listener = dump["config"]["listeners"]
        .as_array()
        .and_then(|ls| {
            ls.iter()
                .find(|l| l["name"] == format!("outbound:127.0.0.1:{HTTP_PORT}"))
        })
        .context("the routed outbound in /config_dump")?;
    ensure!(
        http_listener["routes"]["virtual_hosts"][0]["routes"]
            .as_array()
            .is_some_and(|r| r.len() == 9),
        "{http_listener}"
    );

    let http = |path: &str| format!("http://127.0.0.1:{HTTP_PORT}{path}");
    // By path: kuma-cp's `path` + `prefix` pair of a PathPrefix match.
    ensure!(get(web, &http("/"), &[])? == (200, body_one.to_string()));
    ensure!(get(web, &http("/v2"), &[])? == (200, body_two.to_string()));
    ensure!(get(web, &http("/v2/x"), &[])? == (200, body_two.to_string()));
    ensure!(
        get(web, &http("/v2x"), &[])? == (200, body_one.to_string()),
        "/v2x is neither /v2 nor under /v2/"
    );
    // By header, on the byte path (HTTP/1.1) and through hyper (HTTP/2 prior knowledge).
    for proto in ["--http1.1", "--http2-prior-knowledge"] {
        let routed = get(web, &http("/any"), &[proto, "-H", "x-version: two"])?;
        ensure!(routed == (200, body_two.to_string()), "{proto}: {routed:?}");
        ensure!(get(web, &http("/any"), &[proto])? == (200, body_one.to_string()));
    }
    // A route's response header edit, and a direct response.
    let out = curl_output(web, [http("/v2/y").as_str(), "-i"])?;
    ensure!(
        out.body.to_ascii_lowercase().contains("x-route: v2"),
        "{}",
        out.body
    );
    ensure!(get(web, &http("/gone"), &[])? == (410, "gone\n".to_string()));
    // A prefix rewrite still reaches its origin.
    ensure!(get(web, &http("/old/x"), &[])? == (200, body_two.to_string()));
    // Per-route timeouts: one slow origin, a 504 with Envoy's text at each route's own
    // timeout (bounds generous above, never before the route's timeout).
    for (path, timeout) in [("/timed/short", 1.0), ("/timed/long", 2.5)] {
        let started = std::time::Instant::now();
        let answer = get(web, &http(path), &[])?;
        let took = started.elapsed().as_secs_f64();
        ensure!(
            answer == (504, "upstream request timeout".to_string()),
            "{path}: {answer:?} after {took:.2}s"
        );
        ensure!(
            took >= timeout - 0.05 && took < timeout + 1.5,
            "{path}: 504 after {took:.2}s, its route's timeout is {timeout}s"
        );
    }
    // Weighted clusters: equal weights alternate between the origins.
    let mut seen = [0; 2];
    for _ in 0..10 {
        let (code, body) = get(web, &http("/split"), &[])?;
        ensure!(code == 200, "{code} {body}");
        seen[usize::from(body == body_two)] += 1;
    }
    ensure!(seen == [5, 5], "HTTP split one/two: {seen:?}");
    // MeshTCPRoute's split: whole connections alternate between the origins.
    let mut seen = [0; 2];
    for _ in 0..10 {
        let (code, body) = get(web, &format!("http://127.0.0.1:{TCP_PORT}/"), &[])?;
        ensure!(code == 200, "{code} {body}");
        seen[usize::from(body == body_two)] += 1;
    }
    ensure!(seen == [5, 5], "TCP split one/two: {seen:?}");
    Ok(())
}

/// Kuma's listeners that answer without an upstream of their own, from the CP: the virtual
/// probe listener (`probe:listener`, kubelet's `GET /<port>/<path>` rewritten to the
/// application, or redirected to it when no inbound serves the port), an outbound of a service
/// without a route (a chain without filters: Envoy closes the connection) and a zone ingress
/// with no destinations (a `direct_response` of its identity).
#[test]
fn listeners_that_answer_themselves_probe_close_and_respond() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "python3"])?;
    let topo = Topology::new(&["cp", "web"])?;
    let (cp, web) = (topo.host("cp"), topo.host("web"));
    let pki = CpPki::new(topo.dir(), "cp-answers", cp)?;
    let _app = start_http_server(web, ORIGIN_PORT)?;
    let ip = web.ip4().to_string();
    let get_method = json!([{"name": ":method", "stringMatch": {"exact": "GET"}}]);
    let probe = json!({
        "name": "probe:listener",
        "address": {"socketAddress": {"address": ip, "portValue": 9000}},
        "trafficDirection": "INBOUND",
        "filterChains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typedConfig": {
            "@type": HCM,
            "statPrefix": "probe_listener",
            "httpFilters": [{"name": "envoy.filters.http.router", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            "routeConfig": {"name": "probe:route_configuration", "virtualHosts": [{
                "name": "probe", "domains": ["*"], "routes": [
                    {"match": {"path": format!("/{ORIGIN_PORT}/echo/probe"), "headers": get_method},
                     "route": {"cluster": format!("localhost:{ORIGIN_PORT}"),
                               "regexRewrite": {"pattern": {"regex": ".*"}, "substitution": "/echo/healthz"}}},
                    {"match": {"path": "/8081/healthz", "headers": get_method},
                     "redirect": {"pathRedirect": "/healthz", "portRedirect": 8081}},
                ]}]},
        }}]}],
    });
    let closed = json!({
        "name": "outbound:127.0.0.1:10003",
        "address": {"socketAddress": {"address": "127.0.0.1", "portValue": 10003}},
        "trafficDirection": "OUTBOUND",
        "filterChains": [{}],
    });
    let identity = r#"{"proxy":"default.ingress","zone":"zone-main"}"#;
    let answering = json!({
        "name": format!("inbound:{ip}:10004"),
        "address": {"socketAddress": {"address": ip, "portValue": 10004}},
        "trafficDirection": "INBOUND",
        "filterChains": [{"filters": [{"name": "envoy.filters.network.direct_response", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config",
            "response": {"inlineString": identity},
        }}]}],
    });
    let app = json!({
        "name": format!("localhost:{ORIGIN_PORT}"),
        "type": "STATIC",
        "connectTimeout": "5s",
        "loadAssignment": {"clusterName": format!("localhost:{ORIGIN_PORT}"), "endpoints": [{"lbEndpoints": [{"endpoint": {
            "address": {"socketAddress": {"address": "127.0.0.1", "portValue": ORIGIN_PORT}}}}]}]},
    });
    let resources = json!({"xds": {
        CLUSTER: {format!("localhost:{ORIGIN_PORT}"): app},
        LISTENER: {"probe:listener": probe, "outbound:127.0.0.1:10003": closed,
                   format!("inbound:{ip}:10004"): answering},
    }});
    let bin = env!("CARGO_BIN_EXE_bearing-test-cp");
    let (_cp, _sidecar) = pki.web_sidecar(bin, cp, web, &resources, "ACK type=Listener")?;

    // The probe reaches the application under the path the route rewrites to.
    let (code, body) = get(
        web,
        &format!("http://{ip}:9000/{ORIGIN_PORT}/echo/probe"),
        &[],
    )?;
    ensure!(code == 200, "{code} {body}");
    ensure!(body.starts_with("GET /echo/healthz HTTP/1.1"), "{body}");
    // A probe of a port no inbound serves is redirected to the application's own port.
    let out = curl_output(web, [format!("http://{ip}:9000/8081/healthz"), "-i".into()])?;
    ensure!(out.http_code == 301, "{out:?}");
    ensure!(
        out.body
            .to_ascii_lowercase()
            .contains(&format!("location: http://{ip}:8081/healthz")),
        "{}",
        out.body
    );
    // Only GET is probed: another method gets the route table's 404.
    let (code, _) = get(
        web,
        &format!("http://{ip}:9000/{ORIGIN_PORT}/echo/probe"),
        &["-X", "POST"],
    )?;
    ensure!(code == 404, "POST probe: {code}");
    // The outbound without a route closes the connection without a byte: curl sees an empty
    // reply, or a reset when its request was still unread at the close (Envoy's race too).
    for _ in 0..5 {
        let out = curl_output(web, ["http://127.0.0.1:10003/"])?;
        ensure!(
            matches!(out.exit_code, Some(52 | 56)) && out.http_code == 0 && out.body.is_empty(),
            "{out:?}"
        );
    }
    // The answering listener sends its bytes whatever is asked, then closes.
    let out = curl_output(web, [format!("http://{ip}:10004/"), "--http0.9".into()])?;
    ensure!(out.ok() && out.body == identity, "{out:?}");
    Ok(())
}

/// MeshRetry's `tcp.maxConnectAttempt` from the CP (the TCP proxy's `max_connect_attempts`):
/// a cluster of two endpoints, one refusing. A listener making two attempts gets every
/// connection through (the next endpoint takes a refused attempt's place); one with the
/// field unset makes Envoy's one attempt, so the connections that meet the refusing
/// endpoint are closed, each counted as `upstream_cx_connect_attempts_exceeded`.
#[test]
fn tcp_connect_attempts_from_the_cp_fail_over_as_envoy_does() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "python3"])?;
    let topo = Topology::new(&["cp", "web", "one"])?;
    let (cp, web, one) = (topo.host("cp"), topo.host("web"), topo.host("one"));
    let pki = CpPki::new(topo.dir(), "cp-attempts", cp)?;
    let origin = start_http_server(one, ORIGIN_PORT)?;
    let body = origin.body().to_string();
    let endpoint = |port: u16| {
        json!({"endpoint": {"address": {"socketAddress": {
            "address": one.ip4().to_string(), "portValue": port}}}})
    };
    // Nothing listens on the origin's port + 1: connects there are refused.
    let half = json!({
        "name": "half",
        "type": "STATIC",
        "connectTimeout": "5s",
        "loadAssignment": {"clusterName": "half", "endpoints": [{"lbEndpoints": [
            endpoint(ORIGIN_PORT + 1), endpoint(ORIGIN_PORT)]}]},
    });
    let proxy = |attempts: Option<u32>| {
        let mut config = json!({"@type": TCP_PROXY, "statPrefix": "half", "cluster": "half"});
        if let Some(n) = attempts {
            config["maxConnectAttempts"] = json!(n);
        }
        json!({"name": "envoy.filters.network.tcp_proxy", "typedConfig": config})
    };
    let (two_name, two) = listener(10005, proxy(Some(2)));
    let (one_name, once) = listener(10006, proxy(None));
    let resources = json!({"xds": {
        CLUSTER: {"half": half},
        LISTENER: {two_name.clone(): two, one_name.clone(): once},
    }});
    let bin = env!("CARGO_BIN_EXE_bearing-test-cp");
    let (_cp, sidecar) = pki.web_sidecar(bin, cp, web, &resources, "ACK type=Listener")?;
    let dump = sidecar.config_dump()?;
    let attempts_of = |name: &str| {
        dump["config"]["listeners"]
            .as_array()
            .and_then(|ls| ls.iter().find(|l| l["name"] == name))
            .map(|l| l["max_connect_attempts"].clone())
    };
    ensure!(
        attempts_of(&two_name) == Some(json!(2)) && attempts_of(&one_name) == Some(Value::Null),
        "{}",
        dump["config"]["listeners"]
    );

    let exceeded = |listener: &str| {
        sidecar.metric(&format!(
            "bearing_listener_upstream_cx_connect_attempts_exceeded_total{{listener=\"{listener}\"}}"
        ))
    };
    for _ in 0..10 {
        let (code, got) = get(web, "http://127.0.0.1:10005/", &[])?;
        ensure!(
            (code, got.as_str()) == (200, body.as_str()),
            "two attempts: {code} {got}"
        );
    }
    ensure!(exceeded(&two_name)? == 0.0);
    let (mut served, mut closed) = (0, 0);
    for _ in 0..10 {
        let out = curl_output(web, ["http://127.0.0.1:10006/"])?;
        match (out.exit_code, out.http_code) {
            (Some(0), 200) if out.body == body => served += 1,
            // Reset before any response: curl's 52 (empty reply), 56 (reset), or 7 when the
            // reset comes while curl still checks its connect.
            (Some(7 | 52 | 56), 0) => closed += 1,
            _ => anyhow::bail!("one attempt: {out:?}"),
        }
    }
    // Round robin over the two endpoints: every other connection meets the refusing one.
    ensure!(
        served == 5 && closed == 5,
        "one attempt: {served} served, {closed} closed"
    );
    ensure!(exceeded(&one_name)? == 5.0, "{}", exceeded(&one_name)?);
    ensure!(
        sidecar.metric("bearing_cluster_upstream_connect_failures_total{cluster=\"half\"}")?
            == 10.0,
        "every other connection of each listener meets the refusing endpoint once"
    );
    Ok(())
}

//! End-to-end builtin, delegated and standalone gateways (issue #6).
//!
//! Every test builds its own topology: a gateway host `gw` running `bearing run --config-dir
//! STORE --name gateway-instance-1` as uid 5678, backend hosts, and a `client` host running
//! curl, `openssl s_client` or redis-cli. Unless a test says otherwise, backends run no sidecar:
//! their Dataplanes' inbounds name the nginx (or redis) itself, so the gateway connects to
//! `networking.address:inbound.port` directly. The echo backends answer every path with one
//! line naming their service and what they received (see [`echo_backend`]), so a response
//! says which backend served it and how the gateway changed the request.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bearing_e2e::*;

/// The gateway Dataplane and its `kuma.io/service`, as in Kuma's documentation.
const GW: &str = "gateway-instance-1";
const GW_SERVICE: &str = "edge-gateway";
const HTTP_PORT: u16 = 8080;
const HTTPS_PORT: u16 = 8443;
const TCP_PORT: u16 = 6380;
/// Listener names of the contract: `<gateway service>:<PROTOCOL>:<port>`.
const HTTP_LISTENER: &str = "edge-gateway:HTTP:8080";
const HTTPS_LISTENER: &str = "edge-gateway:HTTPS:8443";
const TCP_LISTENER: &str = "edge-gateway:TCP:6380";
/// How long a store change may take to show in the traffic.
const APPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// The builtin gateway Dataplane on `host`.
fn gateway_dp(host: &Host) -> String {
    dataplane_yaml(
        GW,
        host,
        &format!("  gateway:\n    type: BUILTIN\n    tags: {{kuma.io/service: {GW_SERVICE}}}\n"),
    )
}

/// The MeshGateway selecting [`gateway_dp`]; `listeners` are YAML list items indented by four.
fn mesh_gateway(listeners: &str) -> String {
    format!(
        "type: MeshGateway\nmesh: default\nname: {GW_SERVICE}\nselectors:\n- match: {{kuma.io/service: {GW_SERVICE}}}\nconf:\n  listeners:\n{listeners}"
    )
}

/// A MeshGatewayRoute `name` for the gateway's listeners tagged `port: <port_tag>`; `conf` is
/// the YAML under `conf:`, indented by two.
fn gateway_route(name: &str, port_tag: &str, conf: &str) -> String {
    format!(
        "type: MeshGatewayRoute\nmesh: default\nname: {name}\nselectors:\n- match: {{kuma.io/service: {GW_SERVICE}, port: {port_tag}}}\nconf:\n{conf}"
    )
}

/// Dataplane `<service>-1` with one inbound on `host:port` serving `service` in `protocol`.
fn backend_dp(service: &str, host: &Host, port: u16, protocol: &str) -> String {
    dataplane_yaml(
        &format!("{service}-1"),
        host,
        &format!(
            "  inbound:\n  - port: {port}\n    tags: {{kuma.io/service: {service}, kuma.io/protocol: {protocol}}}\n"
        ),
    )
}

/// One backend of an HTTP rule: `- destination: {kuma.io/service: <service>}` at `indent`.
fn backend(indent: &str, service: &str) -> String {
    format!("{indent}backends:\n{indent}- destination: {{kuma.io/service: {service}}}\n")
}

/// nginx on `host:port` answering every path (but `/health`) with 200 and one line:
/// `service=<service> method=... uri=<request URI with query> host=<Host> x-set=... x-added=...
/// x-removed=... xff=<X-Forwarded-For>` (the request headers the gateway and the filter tests
/// change), plus a response header `X-Drop-Me: yes` for the response filter to remove.
fn echo_backend(host: &Host, port: u16, service: &str) -> Result<Nginx> {
    NginxConfig::new(port)
        .ipv6(false)
        .server_snippet(format!(
            r#"location ~ ^/ {{
            default_type text/plain;
            add_header X-Drop-Me yes always;
            return 200 "service={service} method=$request_method uri=$request_uri host=$host x-set=$http_x_set x-added=$http_x_added x-removed=$http_x_removed xff=$http_x_forwarded_for\n";
        }}"#
        ))
        .start(host)
}

/// `key=value` fields of an echo line.
fn echo_fields(body: &str) -> BTreeMap<&str, &str> {
    body.split_whitespace()
        .filter_map(|f| f.split_once('='))
        .collect()
}

/// The service an echo backend named in `body`.
fn served_by(body: &str) -> Option<&str> {
    echo_fields(body).get("service").copied()
}

/// [`write_store`] for file names built at run time.
fn write_owned_store(topo: &Topology, files: &[(String, String)]) -> Result<PathBuf> {
    let refs: Vec<(&str, String)> = files.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    write_store(topo, &refs)
}

/// Starts an echo backend on `b` for each of `services` (name, port) and writes a store for
/// the gateway on `gw`: one HTTP listener on 8080, the backends' Dataplanes, and a
/// MeshGatewayRoute `route` whose `conf.http.rules` are `rules` (YAML indented by four).
fn echo_gateway_store(
    topo: &Topology,
    (gw, b): (&Host, &Host),
    services: &[(&str, u16)],
    route: &str,
    rules: &str,
) -> Result<PathBuf> {
    let mut files = vec![
        ("gateway.yaml".to_string(), gateway_dp(gw)),
        (
            "mesh-gateway.yaml".to_string(),
            mesh_gateway("  - {port: 8080, protocol: HTTP, tags: {port: http-8080}}\n"),
        ),
        (
            "route.yaml".to_string(),
            gateway_route(route, "http-8080", &format!("  http:\n    rules:\n{rules}")),
        ),
    ];
    for (service, port) in services {
        echo_backend(b, *port, service)?;
        files.push((
            format!("{service}.yaml"),
            backend_dp(service, b, *port, "http"),
        ));
    }
    write_owned_store(topo, &files)
}

/// A topology with `hosts` after checking root and tools.
fn topology(hosts: &[&str]) -> Result<Topology> {
    require_root_and_tools()?;
    Topology::new(hosts)
}

/// Starts the gateway Dataplane [`GW`] on `host` and checks that each of `listeners`
/// (`edge-gateway:HTTP:8080`) is in its config and bound on the host's address.
fn start_gateway<'h>(host: &'h Host, store: &Path, listeners: &[&str]) -> Result<Bearing<'h>> {
    let proxy = Bearing::start(host, store, &["--name", GW])?;
    let dump = proxy.config_dump()?;
    let names: Vec<&str> = dump["config"]["listeners"]
        .as_array()
        .map(|ls| ls.iter().filter_map(|l| l["name"].as_str()).collect())
        .unwrap_or_default();
    for listener in listeners {
        ensure!(
            names.contains(listener),
            "gateway listener {listener} not in the config (listeners: {names:?}; ignored: {})",
            dump["ignored"]
        );
        let port: u16 = listener.rsplit(':').next().unwrap_or_default().parse()?;
        ensure!(
            host.can_connect(host.sock4(port)),
            "gateway listener {listener} is not accepting on {}",
            host.sock4(port)
        );
    }
    Ok(proxy)
}

/// One HTTP request through the gateway on port 8080 of `gw`, with `Host: <authority>`.
struct Req<'a> {
    authority: &'a str,
    path: &'a str,
    args: Vec<String>,
}

impl<'a> Req<'a> {
    fn new(authority: &'a str, path: &'a str) -> Self {
        Req {
            authority,
            path,
            args: Vec::new(),
        }
    }

    fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    fn header(self, h: &str) -> Self {
        self.arg("-H").arg(h)
    }

    /// Status and body.
    fn send(&self, client: &Host, gw: &Host) -> Result<(u16, String)> {
        let mut args = vec!["-H".to_string(), format!("Host: {}", self.authority)];
        args.extend(self.args.iter().cloned());
        args.push(http_url(gw.ip4(), HTTP_PORT, self.path));
        curl(client, args)
    }

    /// Requires a 200 from the echo backend of `service`; returns its echo line.
    fn expect(&self, client: &Host, gw: &Host, service: &str) -> Result<String> {
        let (code, body) = self.send(client, gw)?;
        ensure!(
            code == 200 && served_by(&body) == Some(service),
            "{} {}{} {:?}: want {service}, got status {code} body {body:?}",
            self.method(),
            self.authority,
            self.path,
            self.args
        );
        Ok(body)
    }

    /// Requires a 404 (no route), which no echo backend would send.
    fn expect_404(&self, client: &Host, gw: &Host) -> Result<()> {
        let (code, body) = self.send(client, gw)?;
        ensure!(
            code == 404 && served_by(&body).is_none(),
            "{} {}{}: want the gateway's 404, got {code} {body:?}",
            self.method(),
            self.authority,
            self.path
        );
        Ok(())
    }

    fn method(&self) -> &str {
        self.args
            .iter()
            .position(|a| a == "-X")
            .and_then(|i| self.args.get(i + 1))
            .map_or("GET", String::as_str)
    }
}

/// Header values of `name` (case-insensitive) in the head of a `curl -i`/`-I` output.
fn header_values(response: &str, name: &str) -> Vec<String> {
    response
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

/// `bearing_listener_http_requests_total` of `listener` for one status class.
fn listener_requests(proxy: &Bearing, listener: &str, class: &str) -> Result<f64> {
    proxy.metric(&format!(
        "bearing_listener_http_requests_total{{listener=\"{listener}\",class=\"{class}\"}}"
    ))
}

#[test]
fn routes_by_host_path_method_header_and_query() -> Result<()> {
    let topo = topology(&["gw", "b", "client"])?;
    let (gw, b, client) = (topo.host("gw"), topo.host("b"), topo.host("client"));
    let services = [
        "svc-exact",
        "svc-api",
        "svc-regex",
        "svc-post",
        "svc-default",
        "svc-v2",
        "svc-query",
        "svc-bar",
    ];
    let mut files = vec![
        ("gateway.yaml".to_string(), gateway_dp(gw)),
        (
            "mesh-gateway.yaml".into(),
            mesh_gateway(
                "  - {port: 8080, protocol: HTTP, hostname: foo.example.com, tags: {port: http-8080}}\n  - {port: 8080, protocol: HTTP, hostname: bar.example.com, tags: {port: http-8080}}\n",
            ),
        ),
    ];
    for (i, service) in services.iter().enumerate() {
        let port = 9001 + i as u16;
        echo_backend(b, port, service)?;
        files.push((
            format!("{service}.yaml"),
            backend_dp(service, b, port, "http"),
        ));
    }
    let rule = |matches: &str, service: &str| {
        format!("    - matches: [{matches}]\n{}", backend("      ", service))
    };
    let foo = [
        rule("{path: {match: EXACT, value: /exact}}", "svc-exact"),
        rule("{path: {match: PREFIX, value: /api}}", "svc-api"),
        rule("{path: {match: REGEX, value: '/items/[0-9]+'}}", "svc-regex"),
        rule("{path: {match: PREFIX, value: /m}, method: POST}", "svc-post"),
        rule("{path: {match: PREFIX, value: /m}}", "svc-default"),
        rule(
            "{path: {match: PREFIX, value: /h}, headers: [{match: EXACT, name: x-version, value: v2}]}",
            "svc-v2",
        ),
        rule("{path: {match: PREFIX, value: /h}}", "svc-default"),
        rule(
            "{path: {match: PREFIX, value: /q}, queryParameters: [{match: EXACT, name: version, value: '2'}]}",
            "svc-query",
        ),
        rule("{path: {match: PREFIX, value: /q}}", "svc-default"),
    ]
    .concat();
    files.push((
        "route-foo.yaml".into(),
        gateway_route(
            "foo-route",
            "http-8080",
            &format!("  http:\n    hostnames: [foo.example.com]\n    rules:\n{foo}"),
        ),
    ));
    files.push((
        "route-bar.yaml".into(),
        gateway_route(
            "bar-route",
            "http-8080",
            &format!(
                "  http:\n    hostnames: [bar.example.com]\n    rules:\n{}",
                rule("{path: {match: PREFIX, value: /}}", "svc-bar")
            ),
        ),
    ));
    let store = write_owned_store(&topo, &files)?;
    let proxy = start_gateway(gw, &store, &[HTTP_LISTENER])?;

    let foo = "foo.example.com";
    let mut ok = 0;
    for (req, service) in [
        (Req::new(foo, "/exact"), "svc-exact"),
        (Req::new(foo, "/api"), "svc-api"),
        (Req::new(foo, "/api/v1/users?id=7"), "svc-api"),
        (Req::new("FOO.example.com:8080", "/api"), "svc-api"),
        (Req::new(foo, "/items/42"), "svc-regex"),
        (Req::new(foo, "/m").arg("-X").arg("POST"), "svc-post"),
        (Req::new(foo, "/m"), "svc-default"),
        (Req::new(foo, "/h").header("x-version: v2"), "svc-v2"),
        (Req::new(foo, "/h").header("x-version: v3"), "svc-default"),
        (Req::new(foo, "/h"), "svc-default"),
        (Req::new(foo, "/q?version=2"), "svc-query"),
        (Req::new(foo, "/q?version=3"), "svc-default"),
        (Req::new(foo, "/q"), "svc-default"),
        (Req::new("bar.example.com", "/api"), "svc-bar"),
        (Req::new("bar.example.com", "/anything/else"), "svc-bar"),
    ] {
        let echo = req.expect(client, gw, service)?;
        // The backend gets the request as sent: path, query, method and Host unchanged.
        let fields = echo_fields(&echo);
        ensure!(
            fields.get("uri") == Some(&req.path)
                && fields.get("method") == Some(&req.method())
                && fields.get("host").map(|h| h.to_ascii_lowercase())
                    == req.authority.split(':').next().map(str::to_ascii_lowercase),
            "{service} received {echo:?} for {} {}{}",
            req.method(),
            req.authority,
            req.path
        );
        ok += 1;
    }
    let mut not_found = 0;
    for req in [
        Req::new(foo, "/exact/more"),
        Req::new(foo, "/apix"),
        Req::new(foo, "/items/abc"),
        Req::new(foo, "/nothing"),
        Req::new("unknown.example.com", "/api"),
    ] {
        req.expect_404(client, gw)?;
        not_found += 1;
    }
    let (ok_count, not_found_count) = (
        listener_requests(&proxy, HTTP_LISTENER, "2xx")?,
        listener_requests(&proxy, HTTP_LISTENER, "4xx")?,
    );
    ensure!(
        ok_count >= f64::from(ok) && not_found_count >= f64::from(not_found),
        "listener {HTTP_LISTENER} counted {ok_count} 2xx and {not_found_count} 4xx, sent {ok} and {not_found}"
    );
    Ok(())
}

/// Percent-encoded paths (issue 23): with a `PREFIX /public` route, `/public/%2e%2e/x` is
/// `/x` (no route, 404) and never reaches the backend; `/%61dmin` is `/admin`; routes match,
/// and backends get, the normal path; an encoded slash or backslash is a 307 whose Location
/// stays on the gateway's origin. Over HTTP/1.1 (the byte path) and h2c (hyper).
#[test]
fn encoded_paths_are_routed_and_forwarded_normalised_over_http1_and_h2c() -> Result<()> {
    let topo = topology(&["gw", "b", "client"])?;
    let (gw, b, client) = (topo.host("gw"), topo.host("b"), topo.host("client"));
    let rules = format!(
        "    - matches: [{{path: {{match: PREFIX, value: /public}}}}]\n{}    - matches: [{{path: {{match: EXACT, value: /admin}}}}]\n{}",
        backend("      ", "svc-public"),
        backend("      ", "svc-admin")
    );
    let store = echo_gateway_store(
        &topo,
        (gw, b),
        &[("svc-public", 9001), ("svc-admin", 9002)],
        "paths",
        &rules,
    )?;
    let _proxy = start_gateway(gw, &store, &[HTTP_LISTENER])?;

    for (protocol, status_line) in [
        ("--http1.1", "HTTP/1.1 "),
        ("--http2-prior-knowledge", "HTTP/2 "),
    ] {
        // Status, response head and body of `path` sent as is (curl leaves dots alone).
        let get = |path: &str| -> Result<(u16, String, String)> {
            let (code, response) = curl(
                client,
                [
                    "-i",
                    "--path-as-is",
                    protocol,
                    "-H",
                    "Host: paths.example.com",
                    &http_url(gw.ip4(), HTTP_PORT, path),
                ],
            )?;
            let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
            ensure!(
                head.starts_with(status_line),
                "{protocol} {path}: not answered over {status_line}: {head:?}"
            );
            Ok((code, head.to_string(), body.to_string()))
        };
        for (path, service, uri) in [
            ("/public/a", "svc-public", "/public/a"),
            (
                "/public/%2e/a/%2E%2e/b?x=%2e%2e",
                "svc-public",
                "/public/b?x=%2e%2e",
            ),
            ("/public//x/./y", "svc-public", "/public/x/y"),
            ("/%70ublic/caf%c3%a9", "svc-public", "/public/caf%C3%A9"),
            ("/%61dmin", "svc-admin", "/admin"),
            ("/public/%2e%2e/admin", "svc-admin", "/admin"),
            ("/public/.%2E/admin", "svc-admin", "/admin"),
            // A raw backslash is a slash, as browsers read it.
            ("/public\\..\\admin", "svc-admin", "/admin"),
        ] {
            let (code, _, body) = get(path)?;
            ensure!(
                code == 200
                    && served_by(&body) == Some(service)
                    && echo_fields(&body).get("uri") == Some(&uri),
                "{protocol} {path}: want {service} to get {uri}, got {code} {body:?}"
            );
        }
        for (path, want) in [
            ("/public/%2e%2e/secret.txt", 404),
            ("/public/%2E%2E/secret.txt", 404),
            ("/public/.%2e/secret.txt", 404),
            ("/public/a/%2e%2e/%2e%2e/secret.txt", 404),
            // Forwarded (no redirect: nothing was escaped) as `/evil.example/x`: no route.
            ("/\\evil.example/x", 404),
            ("/\\\\evil.example/x", 404),
            ("/public/%zz", 400),
            ("/public/a%", 400),
        ] {
            let (code, _, body) = get(path)?;
            ensure!(
                code == want && served_by(&body).is_none(),
                "{protocol} {path}: want the gateway's {want}, got {code} {body:?}"
            );
        }
        for (path, location) in [
            ("/%2Fevil.example/x", "/evil.example/x"),
            ("/%2F%2Fevil.example/x?q=1", "/evil.example/x?q=1"),
            ("/%5Cevil.example", "/evil.example"),
            ("/%5c%5Cevil.example/x", "/evil.example/x"),
            ("/%5C/evil.example", "/evil.example"),
            ("/public/a%2Fb", "/public/a/b"),
        ] {
            let (code, head, _) = get(path)?;
            let got = header_values(&head, "location");
            ensure!(
                code == 307 && got == [location],
                "{protocol} {path}: want 307 to {location}, got {code} {got:?}"
            );
        }
    }
    Ok(())
}

/// Kuma's hostname rule on a `*` listener: with a hostname-less route `PREFIX /` → svc-a and
/// a route for `special.example.com` `PREFIX /` → svc-c, `special.example.com` is served by
/// svc-c alone (even `/other`, which only svc-a's route would otherwise match first), every
/// other host by svc-a.
#[test]
fn a_host_named_by_a_route_gets_only_that_routes_rules() -> Result<()> {
    let topo = topology(&["gw", "b", "client"])?;
    let (gw, b, client) = (topo.host("gw"), topo.host("b"), topo.host("client"));
    let mut files = vec![
        ("gateway.yaml".to_string(), gateway_dp(gw)),
        (
            "mesh-gateway.yaml".into(),
            mesh_gateway("  - {port: 8080, protocol: HTTP, tags: {port: http-8080}}\n"),
        ),
    ];
    for (i, service) in ["svc-a", "svc-c"].iter().enumerate() {
        let port = 9001 + i as u16;
        echo_backend(b, port, service)?;
        files.push((
            format!("{service}.yaml"),
            backend_dp(service, b, port, "http"),
        ));
    }
    let prefix = |hostnames: &str, path: &str, service: &str| {
        format!(
            "  http:\n{hostnames}    rules:\n    - matches: [{{path: {{match: PREFIX, value: {path}}}}}]\n{}",
            backend("      ", service)
        )
    };
    files.push((
        "route-a.yaml".into(),
        gateway_route("route-a", "http-8080", &prefix("", "/other", "svc-a")),
    ));
    files.push((
        "route-a-root.yaml".into(),
        gateway_route("route-a-root", "http-8080", &prefix("", "/", "svc-a")),
    ));
    files.push((
        "route-c.yaml".into(),
        gateway_route(
            "route-c",
            "http-8080",
            &prefix("    hostnames: [special.example.com]\n", "/", "svc-c"),
        ),
    ));
    let store = write_owned_store(&topo, &files)?;
    let _proxy = start_gateway(gw, &store, &[HTTP_LISTENER])?;
    for path in ["/", "/other"] {
        Req::new("special.example.com", path).expect(client, gw, "svc-c")?;
        Req::new("SPECIAL.example.com:8080", path).expect(client, gw, "svc-c")?;
        Req::new("www.example.com", path).expect(client, gw, "svc-a")?;
        Req::new("10.1.2.3", path).expect(client, gw, "svc-a")?;
    }
    Ok(())
}

#[test]
fn header_filters_redirects_and_rewrites_are_visible_to_curl() -> Result<()> {
    let topo = topology(&["gw", "b", "client"])?;
    let (gw, b, client) = (topo.host("gw"), topo.host("b"), topo.host("client"));
    let echo = echo_backend(b, 9001, "svc-echo")?;
    let rules = format!(
        r#"    - matches: [{{path: {{match: PREFIX, value: /filters}}}}]
      filters:
      - requestHeader:
          set: [{{name: x-set, value: new}}]
          add: [{{name: x-added, value: a1}}]
          remove: [x-removed]
      - responseHeader:
          set: [{{name: x-resp-set, value: s1}}]
          add: [{{name: x-resp-added, value: r1}}]
          remove: [x-drop-me]
{echo_backend}    - matches: [{{path: {{match: PREFIX, value: /old}}}}]
      filters:
      - redirect: {{scheme: https, hostname: new.example.com, port: 8443, statusCode: 301, path: {{replacePrefixMatch: /new}}}}
    - matches: [{{path: {{match: PREFIX, value: /moved}}}}]
      filters:
      - redirect: {{statusCode: 302, path: {{replaceFull: /elsewhere}}}}
    - matches: [{{path: {{match: PREFIX, value: /rw}}}}]
      filters:
      - rewrite: {{replacePrefixMatch: /inner}}
{echo_backend}    - matches: [{{path: {{match: EXACT, value: /full}}}}]
      filters:
      - rewrite: {{replaceFull: /replaced}}
{echo_backend}"#,
        echo_backend = backend("      ", "svc-echo")
    );
    let store = write_store(
        &topo,
        &[
            ("gateway.yaml", gateway_dp(gw)),
            (
                "mesh-gateway.yaml",
                mesh_gateway("  - {port: 8080, protocol: HTTP, tags: {port: http-8080}}\n"),
            ),
            ("svc-echo.yaml", backend_dp("svc-echo", b, 9001, "http")),
            (
                "route.yaml",
                gateway_route(
                    "filters",
                    "http-8080",
                    &format!("  http:\n    rules:\n{rules}"),
                ),
            ),
        ],
    )?;
    let _proxy = start_gateway(gw, &store, &[HTTP_LISTENER])?;
    let host = "filters.example.com";

    // Without the gateway the backend sends X-Drop-Me: the filter below is what removes it.
    let (_, direct) = curl(client, ["-i", &echo.url4("/filters")])?;
    ensure!(
        header_values(&direct, "x-drop-me") == ["yes"],
        "the echo backend does not send X-Drop-Me: {direct:?}"
    );

    // Request headers: set replaces the client's value, add adds, remove removes.
    let (code, response) = Req::new(host, "/filters")
        .arg("-i")
        .header("x-set: old")
        .header("x-removed: secret")
        .send(client, gw)?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    let fields = echo_fields(body);
    ensure!(
        code == 200
            && served_by(body) == Some("svc-echo")
            && fields.get("x-set") == Some(&"new")
            && fields.get("x-added") == Some(&"a1")
            && fields.get("x-removed") == Some(&""),
        "request header filter: status {code}, backend saw {body:?}"
    );
    // Response headers.
    for (name, want) in [
        ("x-resp-set", vec!["s1"]),
        ("x-resp-added", vec!["r1"]),
        ("x-drop-me", vec![]),
    ] {
        ensure!(
            header_values(&response, name) == want,
            "response header {name}: want {want:?} in {response:?}"
        );
    }

    // Redirects: status and Location as curl -I shows them; the backend is not involved.
    let (code, head) = Req::new(host, "/old/page").arg("-I").send(client, gw)?;
    ensure!(
        code == 301
            && header_values(&head, "location") == ["https://new.example.com:8443/new/page"],
        "redirect: {code} {head:?}"
    );
    let (code, head) = Req::new("redirect.example.com", "/moved/x")
        .arg("-I")
        .send(client, gw)?;
    ensure!(
        code == 302
            && header_values(&head, "location") == ["http://redirect.example.com/elsewhere"],
        "path-only redirect: {code} {head:?}"
    );

    // Rewrites: the backend sees the new path, the query kept.
    for (path, uri) in [
        ("/rw/x?k=v", "/inner/x?k=v"),
        ("/rw", "/inner"),
        ("/full?a=1", "/replaced?a=1"),
    ] {
        let echo = Req::new(host, path).expect(client, gw, "svc-echo")?;
        ensure!(
            echo_fields(&echo).get("uri") == Some(&uri),
            "{path} rewritten: want {uri}, backend saw {echo:?}"
        );
    }
    Ok(())
}

#[test]
fn https_serves_each_hostname_with_its_own_certificate() -> Result<()> {
    require_tools(&["openssl"])?;
    let topo = topology(&["gw", "b", "client"])?;
    let (gw, b, client) = (topo.host("gw"), topo.host("b"), topo.host("client"));
    echo_backend(b, 9001, "svc-a")?;
    echo_backend(b, 9002, "svc-b")?;
    let ca = TestCa::new(&topo.dir().join("pki"), "gateway-ca")?;
    let names = ["a.example.com", "b.example.com"];
    let mut files = vec![
        ("gateway.yaml".to_string(), gateway_dp(gw)),
        (
            "mesh-gateway.yaml".into(),
            mesh_gateway(&format!(
                "  - {{port: {HTTPS_PORT}, protocol: HTTPS, hostname: {}, tags: {{port: https}}, tls: {{mode: TERMINATE, certificates: [{{secret: cert-a}}]}}}}\n  - {{port: {HTTPS_PORT}, protocol: HTTPS, hostname: {}, tags: {{port: https}}, tls: {{mode: TERMINATE, certificates: [{{secret: cert-b}}]}}}}\n",
                names[0], names[1]
            )),
        ),
        ("svc-a.yaml".into(), backend_dp("svc-a", b, 9001, "http")),
        ("svc-b.yaml".into(), backend_dp("svc-b", b, 9002, "http")),
    ];
    for (name, letter) in names.iter().zip(["a", "b"]) {
        let leaf = ca.issue(name, &[&format!("DNS:{name}")])?;
        files.push((
            format!("cert-{letter}.yaml"),
            leaf.kuma_secret(&format!("cert-{letter}"), "default")?,
        ));
        files.push((
            format!("route-{letter}.yaml"),
            gateway_route(
                &format!("route-{letter}"),
                "https",
                &format!(
                    "  http:\n    hostnames: [{name}]\n    rules:\n    - matches: [{{path: {{match: PREFIX, value: /}}}}]\n{}",
                    backend("      ", &format!("svc-{letter}"))
                ),
            ),
        ));
    }
    let store = write_owned_store(&topo, &files)?;
    let _proxy = start_gateway(gw, &store, &[HTTPS_LISTENER])?;

    let ca_cert = ca.files().cert.display().to_string();
    for (name, service) in names.iter().zip(["svc-a", "svc-b"]) {
        // curl verifies the chain and the name: the certificate is the one for this host.
        for version in ["--http1.1", "--http2"] {
            let (code, body) = curl(
                client,
                [
                    version,
                    "--cacert",
                    &ca_cert,
                    "--resolve",
                    &format!("{name}:{HTTPS_PORT}:{}", gw.ip4()),
                    &format!("https://{name}:{HTTPS_PORT}/path?x=1"),
                ],
            )?;
            let fields = echo_fields(&body);
            ensure!(
                code == 200
                    && served_by(&body) == Some(service)
                    && fields.get("uri") == Some(&"/path?x=1"),
                "https://{name} ({version}): {code} {body:?}"
            );
        }
        let tls = TlsClient::new(gw.sock4(HTTPS_PORT))
            .servername(*name)
            .verify_ca(&ca.files().cert)
            .send(format!(
                "GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n"
            ))
            .run(client)?;
        ensure!(
            tls.accepted()
                && tls.verified
                && tls.peer_certificate.as_deref() == Some(&format!("CN = {name}"))
                && tls.response.contains(&format!("service={service} ")),
            "openssl s_client -servername {name}: {tls:?}"
        );
    }
    Ok(())
}

#[test]
fn weighted_backends_share_1000_requests_1_to_3() -> Result<()> {
    let topo = topology(&["gw", "b", "client"])?;
    let (gw, b, client) = (topo.host("gw"), topo.host("b"), topo.host("client"));
    let store = echo_gateway_store(
        &topo,
        (gw, b),
        &[("svc-light", 9001), ("svc-heavy", 9002)],
        "weighted",
        "    - matches: [{path: {match: PREFIX, value: /}}]\n      backends:\n      - {weight: 1, destination: {kuma.io/service: svc-light}}\n      - {weight: 3, destination: {kuma.io/service: svc-heavy}}\n",
    )?;
    let _proxy = start_gateway(gw, &store, &[HTTP_LISTENER])?;

    // One curl, 1000 URLs (a glob) over one keep-alive connection.
    let out = client
        .command("curl")
        .args(["-sS", "--max-time", "10", "-H", "Host: weights.example.com"])
        .args(["-w", "code=%{http_code}\\n"])
        .arg(http_url(gw.ip4(), HTTP_PORT, "/w/[1-1000]"))
        .timeout(Duration::from_secs(120))
        .output()?
        .check()?;
    let codes: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("code="))
        .collect();
    ensure!(
        codes.len() == 1000 && codes.iter().all(|c| *c == "200"),
        "{} responses, not all 200: {:?}",
        codes.len(),
        codes
            .iter()
            .filter(|c| **c != "200")
            .take(5)
            .collect::<Vec<_>>()
    );
    let count = |service: &str| {
        out.stdout
            .lines()
            .filter(|l| served_by(l) == Some(service))
            .count()
    };
    let (light, heavy) = (count("svc-light"), count("svc-heavy"));
    // 1:3 of 1000 is 250:750; ±5% of the requests either way.
    ensure!(
        light + heavy == 1000 && (200..=300).contains(&light),
        "weights 1:3 over 1000 requests gave {light}:{heavy}"
    );
    Ok(())
}

/// Sends each request of argv[3:] on one connection to
/// argv[1]:argv[2], reading each response whole (they all have a `Content-Length`) before the
/// next; `SLEEP n` instead of a request waits n seconds. Prints the responses.
const KEEP_ALIVE_CLIENT_PY: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
buf = b""
for step in sys.argv[3:]:
    if step.startswith("SLEEP "):
        time.sleep(float(step[6:]))
        continue
    s.sendall(step.encode())
    while b"\r\n\r\n" not in buf:
        data = s.recv(65536)
        if not data:
            sys.exit("connection closed before a response to " + repr(step))
        buf += data
    head, _, buf = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(buf) < length:
        data = s.recv(65536)
        if not data:
            sys.exit("connection closed inside a response body")
        buf += data
    body, buf = buf[:length], buf[length:]
    sys.stdout.write((head + b"\r\n\r\n" + body).decode() + "\n----\n")
"#;

#[test]
fn keep_alive_connection_routes_each_request_and_outlives_five_idle_seconds() -> Result<()> {
    let topo = topology(&["gw", "b", "client"])?;
    let (gw, b, client) = (topo.host("gw"), topo.host("b"), topo.host("client"));
    echo_backend(b, 9001, "svc-a")?;
    echo_backend(b, 9002, "svc-b")?;
    echo_backend(b, 9003, "svc-mirror")?;
    let rules = format!(
        "    - matches: [{{path: {{match: PREFIX, value: /a}}}}]\n      filters:\n      - mirror: {{backend: {{destination: {{kuma.io/service: svc-mirror}}}}, percentage: 100}}\n{}    - matches: [{{path: {{match: PREFIX, value: /b}}}}]\n{}",
        backend("      ", "svc-a"),
        backend("      ", "svc-b"),
    );
    let store = write_store(
        &topo,
        &[
            ("gateway.yaml", gateway_dp(gw)),
            (
                "mesh-gateway.yaml",
                mesh_gateway("  - {port: 8080, protocol: HTTP, tags: {port: http-8080}}\n"),
            ),
            ("svc-a.yaml", backend_dp("svc-a", b, 9001, "http")),
            ("svc-b.yaml", backend_dp("svc-b", b, 9002, "http")),
            ("svc-mirror.yaml", backend_dp("svc-mirror", b, 9003, "http")),
            (
                "route.yaml",
                gateway_route(
                    "keep-alive",
                    "http-8080",
                    &format!("  http:\n    rules:\n{rules}"),
                ),
            ),
        ],
    )?;
    let proxy = start_gateway(gw, &store, &[HTTP_LISTENER])?;

    // One connection: a mirrored GET, a POST with a body, a request no route takes, then
    // (idle for longer than the 5 s of a request's stream) one more request, and a head that
    // never ends, answered 408 `request header timeout` 500 ms after its first byte
    // (kuma-cp's gateway `request_headers_timeout`).
    let host = "Host: ka.example.com\r\n";
    let out = client
        .command("python3")
        .args(["-c", KEEP_ALIVE_CLIENT_PY, &gw.ip4().to_string(), "8080"])
        .arg(format!("GET /a/1?q=1 HTTP/1.1\r\n{host}\r\n"))
        .arg(format!(
            "POST /b/2 HTTP/1.1\r\n{host}Content-Length: 5\r\n\r\nhello"
        ))
        .arg(format!("GET /nothing HTTP/1.1\r\n{host}\r\n"))
        .arg("SLEEP 6")
        .arg(format!("GET /b/3 HTTP/1.1\r\n{host}\r\n"))
        .arg(format!("GET /b/4 HTTP/1.1\r\n{host}"))
        .timeout(Duration::from_secs(30))
        .output()?
        .check()?;
    let responses: Vec<&str> = out
        .stdout
        .split("\n----\n")
        .filter(|r| !r.is_empty())
        .collect();
    ensure!(
        responses.len() == 5,
        "want 5 responses on one connection, got {responses:?}"
    );
    ensure!(
        responses[4].starts_with("HTTP/1.1 408")
            && responses[4].ends_with("\r\n\r\nrequest header timeout")
            && header_values(responses[4], "connection") == ["close"],
        "an unfinished head: want 408 with Envoy's body and a close, got {:?}",
        responses[4]
    );
    let client_ip = client.ip4().to_string();
    for (response, service, uri) in [
        (responses[0], "svc-a", "/a/1?q=1"),
        (responses[1], "svc-b", "/b/2"),
        (responses[3], "svc-b", "/b/3"),
    ] {
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        let fields = echo_fields(body);
        ensure!(
            response.starts_with("HTTP/1.1 200")
                && served_by(body) == Some(service)
                && fields.get("uri") == Some(&uri)
                && fields.get("xff") == Some(&client_ip.as_str())
                && header_values(response, "server") == ["Kuma Gateway"],
            "want {service} to answer {uri} for {client_ip} with the gateway's server header: {response:?}"
        );
    }
    ensure!(
        responses[2].starts_with("HTTP/1.1 404")
            && header_values(responses[2], "server") == ["Kuma Gateway"],
        "no route: want the gateway's 404, got {:?}",
        responses[2]
    );
    // The mirror got its copy of the one /a request; its answer went nowhere.
    wait_until(Duration::from_secs(5), || {
        proxy
            .metric("bearing_cluster_upstream_requests_total{cluster=\"svc-mirror\",class=\"2xx\"}")
            .is_ok_and(|n| n == 1.0)
    })
    .context("the mirror backend's cluster did not count exactly one 2xx")?;
    ensure!(
        listener_requests(&proxy, HTTP_LISTENER, "2xx")? == 3.0
            && listener_requests(&proxy, HTTP_LISTENER, "4xx")? == 2.0,
        "listener counts: 3 answered by backends and 2 by the gateway"
    );
    Ok(())
}

/// The gateway's TCP listener on [`TCP_PORT`] as a MeshGateway listener item: tagged
/// `port: tcp-<port>` and `extra_tags`, with `extra` fields.
fn tcp_listener(extra_tags: &str, extra: &str) -> String {
    format!(
        "  - {{port: {TCP_PORT}, protocol: TCP, tags: {{port: tcp-{TCP_PORT}{extra_tags}}}{extra}}}\n"
    )
}

/// A store for the gateway on `gw` with the MeshGateway `listeners` and a TCP route from the
/// [`tcp_listener`] to the redis on `redis` (host, port).
fn redis_gateway_store(
    topo: &Topology,
    gw: &Host,
    (r, port): (&Host, u16),
    listeners: &str,
) -> Result<PathBuf> {
    write_store(
        topo,
        &[
            ("gateway.yaml", gateway_dp(gw)),
            ("mesh-gateway.yaml", mesh_gateway(listeners)),
            ("redis.yaml", backend_dp("redis", r, port, "tcp")),
            (
                "route.yaml",
                gateway_route(
                    "redis",
                    &format!("tcp-{TCP_PORT}"),
                    "  tcp:\n    rules:\n    - backends:\n      - destination: {kuma.io/service: redis}\n",
                ),
            ),
        ],
    )
}

#[test]
fn tcp_route_serves_redis() -> Result<()> {
    let topo = topology(&["gw", "r", "client"])?;
    let (gw, r, client) = (topo.host("gw"), topo.host("r"), topo.host("client"));
    let redis = start_redis(r, 6379)?;
    let listener = tcp_listener("", "");
    let store = redis_gateway_store(&topo, gw, (r, redis.port()), &listener)?;
    let _proxy = start_gateway(gw, &store, &[TCP_LISTENER])?;

    let via_gateway = |args: &[&str]| redis_cli(client, gw.ip4(), TCP_PORT, args);
    ensure!(
        via_gateway(&["PING"])? == "PONG",
        "PING through the gateway"
    );
    ensure!(via_gateway(&["SET", "gateway-key", "v-5d1c"])? == "OK");
    ensure!(via_gateway(&["GET", "gateway-key"])? == "v-5d1c");
    // It is that redis-server which holds the key.
    ensure!(
        redis_cli(client, redis.ip4(), redis.port(), ["GET", "gateway-key"])? == "v-5d1c",
        "the key is not in the backend redis"
    );
    Ok(())
}

/// A listener's `connectionLimit` counts the connections open on it across reloads: a
/// connection held open through an unrelated store change still fills the limit of 1 (a
/// reload used to start the count again from zero), and closing it frees the place.
#[test]
fn connection_limit_counts_connections_opened_before_a_reload() -> Result<()> {
    let topo = topology(&["gw", "r", "client"])?;
    let (gw, r, client) = (topo.host("gw"), topo.host("r"), topo.host("client"));
    let redis = start_redis(r, 6379)?;
    let limited = |tags: &str| tcp_listener(tags, ", resources: {connectionLimit: 1}");
    let store = redis_gateway_store(&topo, gw, (r, redis.port()), &limited(""))?;
    let proxy = start_gateway(gw, &store, &[TCP_LISTENER])?;
    let ping = || redis_cli(client, gw.ip4(), TCP_PORT, ["PING"]);
    let refused = || !matches!(ping(), Ok(pong) if pong == "PONG");
    ensure!(ping()? == "PONG", "PING through the gateway");

    // One connection held open: the only place under the limit.
    let held = client.spawn(
        "socat",
        [
            format!("TCP:{}:{TCP_PORT}", gw.ip4()),
            "SYSTEM:sleep 120".to_string(),
        ],
    )?;
    let active =
        format!("bearing_listener_downstream_connections_active{{listener=\"{TCP_LISTENER}\"}}");
    wait_until(APPLY_TIMEOUT, || proxy.metric(&active).ok() == Some(1.0))
        .context("the held connection never became active")?;
    ensure!(refused(), "a second connection passed a limit of 1");

    // A change that keeps the listener: one more tag on it.
    let applied = proxy.metric("bearing_config_applied_total")?;
    let retagged = mesh_gateway(&limited(", version: v2"));
    write_store_file(&store, "mesh-gateway.yaml", &retagged)?;
    wait_until(APPLY_TIMEOUT, || {
        proxy.metric("bearing_config_applied_total").ok() > Some(applied)
    })
    .context("the store change was not applied")?;
    ensure!(
        refused(),
        "after a reload a second connection passed the limit: the count was reset"
    );

    held.kill();
    wait_until_ok(APPLY_TIMEOUT, || match ping() {
        Ok(pong) if pong == "PONG" => Ok(()),
        other => bail!("once the held connection closed: {other:?}"),
    })
}

/// What one client saw while the route changed: the service of each 200, or a failure.
fn check_switch(who: &str, seen: &[Result<String, String>], old: &str, new: &str) -> Result<()> {
    let failures: Vec<&String> = seen.iter().filter_map(|r| r.as_ref().err()).collect();
    ensure!(
        failures.is_empty(),
        "{who}: {} of {} requests failed during the route change: {:?}",
        failures.len(),
        seen.len(),
        &failures[..failures.len().min(5)]
    );
    let services: Vec<&str> = seen.iter().filter_map(|r| r.as_deref().ok()).collect();
    let first_new = services
        .iter()
        .position(|s| *s == new)
        .with_context(|| format!("{who}: {new} never answered"))?;
    ensure!(
        first_new > 0 && services[..first_new].iter().all(|s| *s == old),
        "{who}: before the change not only {old}: {:?}",
        &services[..first_new]
    );
    ensure!(
        services[first_new..].iter().all(|s| *s == new),
        "{who}: {old} answered again after {new} did"
    );
    Ok(())
}

#[test]
fn route_change_applies_live_without_failed_requests() -> Result<()> {
    let topo = topology(&["gw", "b", "client"])?;
    let (gw, b, client) = (topo.host("gw"), topo.host("b"), topo.host("client"));
    echo_backend(b, 9001, "svc-old")?;
    echo_backend(b, 9002, "svc-new")?;
    let route = |service: &str| {
        gateway_route(
            "live",
            "http-8080",
            &format!(
                "  http:\n    rules:\n    - matches: [{{path: {{match: PREFIX, value: /}}}}]\n{}",
                backend("      ", service)
            ),
        )
    };
    let store = write_store(
        &topo,
        &[
            ("gateway.yaml", gateway_dp(gw)),
            (
                "mesh-gateway.yaml",
                mesh_gateway("  - {port: 8080, protocol: HTTP, tags: {port: http-8080}}\n"),
            ),
            ("svc-old.yaml", backend_dp("svc-old", b, 9001, "http")),
            ("svc-new.yaml", backend_dp("svc-new", b, 9002, "http")),
            ("route.yaml", route("svc-old")),
        ],
    )?;
    let _proxy = start_gateway(gw, &store, &[HTTP_LISTENER])?;

    // Client 1: one keep-alive connection, 100 requests/s, in the background.
    let keepalive = client
        .command("curl")
        .args(["-sS", "--rate", "100/s", "--max-time", "5"])
        .args(["-H", "Host: live.example.com", "-w", "code=%{http_code}\\n"])
        .arg(http_url(gw.ip4(), HTTP_PORT, "/keepalive/[1-100000]"))
        .log_name("curl-keepalive")
        .spawn()?;
    // Client 2: a new connection (a new curl) per request, from this thread's helper.
    let fresh: Mutex<Vec<Result<String, String>>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let fresh_seen = |service: &str| {
        fresh
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.as_deref() == Ok(service))
            .count()
    };
    let keepalive_seen = |service: &str| {
        keepalive
            .log_contents()
            .lines()
            .filter(|l| served_by(l) == Some(service))
            .count()
    };
    let result = std::thread::scope(|s| -> Result<()> {
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let out = Req::new("live.example.com", "/fresh")
                    .arg("-m")
                    .arg("5")
                    .send(client, gw);
                let r = match out {
                    Ok((200, body)) => served_by(&body)
                        .map(str::to_string)
                        .ok_or_else(|| format!("200 without an echo line: {body:?}")),
                    Ok((code, body)) => Err(format!("status {code}: {body:?}")),
                    Err(e) => Err(format!("{e:#}")),
                };
                fresh.lock().unwrap().push(r);
            }
        });
        let run = || -> Result<()> {
            wait_until(APPLY_TIMEOUT, || {
                fresh_seen("svc-old") >= 5 && keepalive_seen("svc-old") >= 50
            })
            .context("the clients never reached svc-old")?;
            write_store_file(&store, "route.yaml", &route("svc-new"))?;
            wait_until(APPLY_TIMEOUT, || {
                fresh_seen("svc-new") >= 5 && keepalive_seen("svc-new") >= 50
            })
            .context("svc-new never answered both clients after the route change")
        };
        let outcome = run();
        stop.store(true, Ordering::SeqCst);
        outcome
    });
    keepalive.stop(Duration::from_secs(2));
    result?;

    check_switch(
        "new connection per request",
        &fresh.into_inner().unwrap(),
        "svc-old",
        "svc-new",
    )?;
    // The keep-alive client's log: an echo line then `code=200` per request; any curl error
    // (`curl: (56) ...`) or other status is a failed request.
    let log = keepalive.log_contents();
    let mut seen = Vec::new();
    let mut service = None;
    for line in log.lines() {
        if let Some(code) = line.strip_prefix("code=") {
            seen.push(match (code, service.take()) {
                ("200", Some(s)) => Ok(s),
                (code, s) => Err(format!("status {code}, served by {s:?}")),
            });
        } else if let Some(s) = served_by(line) {
            service = Some(s.to_string());
        } else if line.starts_with("curl:") {
            seen.push(Err(line.to_string()));
        }
    }
    check_switch("keep-alive connection", &seen, "svc-old", "svc-new")
}

#[test]
fn delegated_gateway_serves_outbounds_on_localhost_for_an_api_gateway() -> Result<()> {
    let topo = topology(&["gw", "b", "client"])?;
    let (gw, b, client) = (topo.host("gw"), topo.host("b"), topo.host("client"));
    let backend = echo_backend(b, 9001, "backend")?;
    // The seed's kong-01, at the gateway host's address.
    let kong = dataplane_yaml(
        "kong-01",
        gw,
        "  gateway:\n    type: DELEGATED\n    tags:\n      kuma.io/service: kong\n  outbound:\n    - port: 33033\n      tags:\n        kuma.io/service: backend\n",
    );
    let store = write_store(
        &topo,
        &[
            ("kong-01.yaml", kong),
            (
                "backend.yaml",
                backend_dp("backend", b, backend.port(), "http"),
            ),
        ],
    )?;
    let proxy = Bearing::start(gw, &store, &["--name", "kong-01"])?;

    // No inbound listener: the only listener is the outbound on localhost.
    let dump = proxy.config_dump()?;
    let names: Vec<&str> = dump["config"]["listeners"]
        .as_array()
        .context("no listeners in /config_dump")?
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    ensure!(
        names == ["outbound:127.0.0.1:33033"],
        "a delegated gateway's listeners: {names:?}"
    );
    ensure!(
        !gw.can_connect(gw.sock4(33033)),
        "the outbound is reachable on the host's address, not only on localhost"
    );
    // "set the url to http://localhost:33033"
    let (code, body) = curl(gw, ["http://localhost:33033/from-gateway-host"])?;
    ensure!(
        code == 200 && served_by(&body) == Some("backend"),
        "http://localhost:33033 on the gateway host: {code} {body:?}"
    );

    // The existing API gateway (an nginx standing in for Kong) proxies to that URL.
    let api_gateway = NginxConfig::new(8000)
        .ipv6(false)
        .server_snippet("location ~ ^/ { proxy_pass http://localhost:33033; }")
        .start(gw)?;
    let (code, body) = curl(client, [api_gateway.url4("/via-kong?x=1")])?;
    ensure!(
        code == 200
            && served_by(&body) == Some("backend")
            && echo_fields(&body).get("uri") == Some(&"/via-kong?x=1"),
        "client → API gateway → localhost:33033 → backend: {code} {body:?}"
    );
    ensure!(
        proxy.metric(
            "bearing_listener_http_requests_total{listener=\"outbound:127.0.0.1:33033\",class=\"2xx\"}"
        )? >= 2.0,
        "the outbound did not serve both requests"
    );
    Ok(())
}

/// The gateway seed's "Delegated" example in a STRICT mTLS mesh: `kong-01` has no inbound,
/// so its identity comes from its gateway tags (`spiffe://default/kong`, as kuma-cp issues
/// it) and `http://localhost:33033` reaches `backend` behind its sidecar over mesh mTLS. A
/// part of the config that cannot be served (an ExternalService whose CA is no certificate)
/// turns `/ready` to 503 with the reason in `/config_dump`, while the rest keeps serving.
#[test]
fn delegated_gateway_in_an_mtls_mesh_uses_its_gateway_identity() -> Result<()> {
    const BODY: &str = "backend behind a STRICT sidecar 51c9a2\n";
    const INBOUND: u16 = 18080;
    let topo = topology(&["gw", "b"])?;
    let (gw, b) = (topo.host("gw"), topo.host("b"));
    NginxConfig::new(80).body(BODY).start(b)?;
    let mesh = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    mode: STRICT\n";
    let kong = |extra_outbound: &str| {
        dataplane_yaml(
            "kong-01",
            gw,
            &format!("  gateway:\n    type: DELEGATED\n    tags:\n      kuma.io/service: kong\n  outbound:\n    - port: 33033\n      tags:\n        kuma.io/service: backend\n{extra_outbound}"),
        )
    };
    let store = write_store(
        &topo,
        &[
            ("mesh.yaml", mesh.to_string()),
            ("kong-01.yaml", kong("")),
            (
                "backend-1.yaml",
                dataplane_yaml(
                    "backend-1",
                    b,
                    &format!("  inbound:\n  - port: {INBOUND}\n    servicePort: 80\n    tags: {{kuma.io/service: backend, kuma.io/protocol: http}}\n"),
                ),
            ),
        ],
    )?;
    bearing_ca_generate(&store, "default")?;
    let _sidecar = Bearing::start(b, &store, &["--name", "backend-1"])?;
    let proxy = Bearing::start(gw, &store, &["--name", "kong-01"])?;
    let dump = proxy.config_dump()?;
    ensure!(
        dump["config"]["mtls"]["default"]["services"] == serde_json::json!(["kong"]),
        "kong-01's identity: {}",
        dump["config"]["mtls"]
    );
    let (code, body) = curl(gw, ["http://localhost:33033/"])?;
    ensure!(
        code == 200 && body == BODY,
        "http://localhost:33033 → backend over mTLS: {code} {body:?}"
    );

    // A cluster whose TLS cannot be built: not ready, and /config_dump says which and why.
    let bad_ca = "type: ExternalService\nname: ext\nmesh: default\ntags: {kuma.io/service: ext, kuma.io/protocol: http}\nnetworking:\n  address: 192.0.2.10:443\n  tls:\n    enabled: true\n    caCert: {inlineString: not a certificate}\n";
    write_store_file(&store, "ext.yaml", bad_ca)?;
    write_store_file(
        &store,
        "kong-01.yaml",
        &kong("    - port: 33034\n      tags:\n        kuma.io/service: ext\n"),
    )?;
    wait_until_ok(APPLY_TIMEOUT, || {
        let (code, _) = proxy.admin("GET", "/ready")?;
        ensure!(code == 503, "/ready answered {code}");
        Ok(())
    })
    .context("a config that cannot be served left the proxy ready")?;
    let reason = proxy.config_dump()?["serve_errors"]["cluster ext"].clone();
    ensure!(
        reason
            .as_str()
            .is_some_and(|r| r.contains("external service CA PEM")),
        "/config_dump serve_errors: {reason}"
    );
    let (code, body) = curl(gw, ["http://localhost:33033/"])?;
    ensure!(
        code == 200 && body == BODY,
        "the rest keeps serving: {code} {body:?}"
    );
    write_store_file(&store, "kong-01.yaml", &kong(""))?;
    proxy.wait_ready()?;
    Ok(())
}

/// `examples/edge-gateway`, the README's standalone edge gateway store.
fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("examples")
        .join("edge-gateway")
}

/// `text` with every `address: 127.0.0.1` replaced by `ip`; fails if there is none (the
/// example changed under the test).
fn readdress(file: &str, text: &str, ip: std::net::Ipv4Addr) -> Result<String> {
    const LOOPBACK: &str = "address: 127.0.0.1";
    if !text.contains(LOOPBACK) {
        bail!("examples/edge-gateway/{file} has no `{LOOPBACK}` to substitute");
    }
    Ok(text.replace(LOOPBACK, &format!("address: {ip}")))
}

#[test]
fn standalone_edge_gateway_readme_example() -> Result<()> {
    let topo = topology(&["gw", "b", "client"])?;
    let (gw, b, client) = (topo.host("gw"), topo.host("b"), topo.host("client"));
    let example = example_dir();
    // The store holds exactly the example's resources, at the topology's addresses: the
    // gateway on gw, the backends on b.
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&example).context("reading examples/edge-gateway")? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if !name.ends_with(".yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let text = match name.as_str() {
            "gateway.yaml" => readdress(&name, &text, gw.ip4())?,
            "backends.yaml" => readdress(&name, &text, b.ip4())?,
            _ => text,
        };
        files.push((name, text));
    }
    files.sort();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    ensure!(
        names
            == [
                "backends.yaml",
                "gateway.yaml",
                "mesh-gateway.yaml",
                "routes.yaml"
            ],
        "examples/edge-gateway holds {names:?}"
    );
    let store = write_owned_store(&topo, &files)?;
    let validate = gw
        .command(bearing_bin()?)
        .arg("validate")
        .arg(&store)
        .output()?;
    ensure!(
        validate.success(),
        "bearing validate: {}{}",
        validate.stdout,
        validate.stderr
    );

    // The README's backends: python's http.server over www/web and www/api.
    let mut bodies = Vec::new();
    for (port, dir) in [(9001u16, "web"), (9002, "api")] {
        let root = example.join("www").join(dir);
        bodies.push(std::fs::read_to_string(root.join("index.html"))?);
        let server = b
            .command("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind"])
            .arg(b.ip4().to_string())
            .arg("--directory")
            .arg(&root)
            .log_name(format!("http-{dir}"))
            .spawn()?;
        b.wait_for_tcp_listener(port, PEER_STARTUP_TIMEOUT, Some(&server))?;
    }
    let _proxy = start_gateway(gw, &store, &[HTTP_LISTENER])?;

    for (path, body) in [
        ("/", &bodies[0]),
        ("/api", &bodies[1]),
        ("/api/", &bodies[1]),
    ] {
        let (code, got) = curl(client, [http_url(gw.ip4(), HTTP_PORT, path)])?;
        ensure!(
            code == 200 && got == *body,
            "GET {path} through the example gateway: {code} {got:?}, want {body:?}"
        );
    }
    Ok(())
}

#[test]
fn backends_are_reached_over_mesh_mtls() -> Result<()> {
    require_tools(&["openssl", "tcpdump"])?;
    const BODY: &str = "backend behind a sidecar 3e81f0\n";
    const INBOUND: u16 = 18080;
    let topo = topology(&["gw", "b", "client"])?;
    let (gw, b, client) = (topo.host("gw"), topo.host("b"), topo.host("client"));
    NginxConfig::new(80).body(BODY).start(b)?;
    let mesh = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    mode: STRICT\n";
    let store = write_store(
        &topo,
        &[
            ("mesh.yaml", mesh.to_string()),
            ("gateway.yaml", gateway_dp(gw)),
            (
                "mesh-gateway.yaml",
                mesh_gateway("  - {port: 8080, protocol: HTTP, tags: {port: http-8080}}\n"),
            ),
            (
                "backend-1.yaml",
                dataplane_yaml(
                    "backend-1",
                    b,
                    &format!("  inbound:\n  - port: {INBOUND}\n    servicePort: 80\n    tags: {{kuma.io/service: backend, kuma.io/protocol: http}}\n"),
                ),
            ),
            (
                "route.yaml",
                gateway_route(
                    "to-backend",
                    "http-8080",
                    &format!(
                        "  http:\n    rules:\n    - matches: [{{path: {{match: PREFIX, value: /}}}}]\n{}",
                        backend("      ", "backend")
                    ),
                ),
            ),
        ],
    )?;
    bearing_ca_generate(&store, "default")?;
    let sidecar = Bearing::start(b, &store, &["--name", "backend-1"])?;
    let _gateway = start_gateway(gw, &store, &[HTTP_LISTENER])?;

    // STRICT: only mesh mTLS reaches the backend, so an answer proves the gateway spoke it.
    let plaintext = curl_output(client, ["-m", "3", &http_url(b.ip4(), INBOUND, "/")])?;
    ensure!(
        !(plaintext.ok() && plaintext.body == BODY),
        "the STRICT inbound answered plaintext"
    );
    let capture = Capture::start(b, &format!("tcp port {INBOUND}"))?;
    let (code, body) = curl(
        client,
        [
            "-H",
            "Host: mtls.example.com",
            &http_url(gw.ip4(), HTTP_PORT, "/"),
        ],
    )?;
    let pcap = capture.stop(gw)?;
    ensure!(
        code == 200 && body == BODY,
        "through the gateway: {code} {body:?}"
    );
    let sni = "backend{mesh=default}";
    ensure!(
        pcap.contains(sni),
        "no ClientHello with SNI {sni} between gateway and sidecar ({} packets)",
        pcap.packets()
    );
    ensure!(
        !pcap.contains(BODY.trim()) && !pcap.contains("GET / HTTP"),
        "gateway → sidecar crossed the wire in plaintext"
    );
    ensure!(
        sidecar.metric(&format!(
            "bearing_listener_http_requests_total{{listener=\"inbound:{}:{INBOUND}\",class=\"2xx\"}}",
            b.ip4()
        ))? >= 1.0,
        "backend-1's inbound did not serve the request"
    );
    Ok(())
}

/// The live-change verdict itself (no topology needed).
#[test]
fn check_switch_accepts_only_one_clean_switch() {
    let ok = |s: &str| Ok::<String, String>(s.to_string());
    let good = [ok("o"), ok("o"), ok("n"), ok("n")];
    assert!(check_switch("c", &good, "o", "n").is_ok());
    assert!(check_switch("c", &[ok("o"), ok("n"), ok("o")], "o", "n").is_err());
    assert!(check_switch("c", &[ok("n"), ok("n")], "o", "n").is_err());
    assert!(check_switch("c", &[ok("o"), ok("o")], "o", "n").is_err());
    assert!(check_switch("c", &[ok("o"), Err("reset".into()), ok("n")], "o", "n").is_err());
}

#[test]
fn cross_mesh_listener_serves_sidecars_of_another_mesh_over_mtls() -> Result<()> {
    const BODY: &str = "default mesh backend seen from mesh other 7c1d\n";
    let topo = topology(&["gw", "b", "web"])?;
    let (gw, b, web) = (topo.host("gw"), topo.host("b"), topo.host("web"));
    NginxConfig::new(80).body(BODY).start(b)?;
    let mtls = |mesh: &str| {
        format!("type: Mesh\nname: {mesh}\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n")
    };
    // web lives in mesh `other` and calls the gateway of mesh `default` through an outbound
    // naming the gateway's service and mesh, as Kuma documents without transparent proxying.
    let web_dp = format!(
        "type: Dataplane\nname: web-1\nmesh: other\nnetworking:\n  address: {}\n  inbound:\n  - port: 9000\n    tags: {{kuma.io/service: web, kuma.io/protocol: http}}\n  outbound:\n  - port: 8080\n    tags: {{kuma.io/service: {GW_SERVICE}, kuma.io/mesh: default}}\n",
        web.ip4()
    );
    let store = write_store(
        &topo,
        &[
            ("mesh-default.yaml", mtls("default")),
            ("mesh-other.yaml", mtls("other")),
            ("gateway.yaml", gateway_dp(gw)),
            (
                "mesh-gateway.yaml",
                mesh_gateway("  - {port: 8080, protocol: HTTP, crossMesh: true, tags: {port: http-8080}}\n"),
            ),
            (
                "backend-1.yaml",
                dataplane_yaml(
                    "backend-1",
                    b,
                    "  inbound:\n  - port: 18080\n    servicePort: 80\n    tags: {kuma.io/service: backend, kuma.io/protocol: http}\n",
                ),
            ),
            (
                "route.yaml",
                gateway_route(
                    "to-backend",
                    "http-8080",
                    &format!(
                        "  http:\n    rules:\n    - matches: [{{path: {{match: PREFIX, value: /}}}}]\n{}",
                        backend("      ", "backend")
                    ),
                ),
            ),
            ("web.yaml", web_dp),
        ],
    )?;
    bearing_ca_generate(&store, "default")?;
    bearing_ca_generate(&store, "other")?;
    let _backend = Bearing::start(b, &store, &["--name", "backend-1"])?;
    let _gateway = start_gateway(gw, &store, &[HTTP_LISTENER])?;
    let sidecar = Bearing::start(web, &store, &["--name", "web-1", "--mesh", "other"])?;

    // Through web's outbound: web's mesh leaf (CA `other`) is accepted by the cross-mesh
    // listener, which proves it is the gateway of mesh `default`.
    let (code, body) = curl(web, [http_url(std::net::Ipv4Addr::LOCALHOST, 8080, "/")])?;
    ensure!(
        code == 200 && body == BODY,
        "cross-mesh request: {code} {body:?}"
    );
    ensure!(
        sidecar.metric("bearing_cluster_upstream_requests_total{cluster=\"edge-gateway{kuma.io/mesh=default}\",class=\"2xx\"}")? >= 1.0,
        "web's cross-mesh cluster served nothing"
    );
    // Without a mesh certificate the listener answers nothing.
    let plain = curl_output(web, ["-m", "3", &http_url(gw.ip4(), HTTP_PORT, "/")])?;
    ensure!(
        !plain.ok(),
        "the cross-mesh listener served plaintext: {plain:?}"
    );
    Ok(())
}

#[test]
fn a_listener_that_cannot_be_built_is_reported_and_not_ready() -> Result<()> {
    let topo = topology(&["gw", "b", "client"])?;
    let (gw, b, client) = (topo.host("gw"), topo.host("b"), topo.host("client"));
    echo_backend(b, 9001, "svc-echo")?;
    // A header value `validate` lets through but an HTTP header cannot carry (DEL, written
    // as a YAML escape): the router of listener 8080 cannot be built at run time.
    let route = |port: &str, value: &str| {
        gateway_route(
            &format!("route-{port}"),
            port,
            &format!(
                "  http:\n    rules:\n    - matches: [{{path: {{match: PREFIX, value: /}}}}]\n      filters:\n      - requestHeader:\n          set: [{{name: x-set, value: \"{value}\"}}]\n{}",
                backend("      ", "svc-echo")
            ),
        )
    };
    let files = |value: &str| {
        [
            ("gateway.yaml".to_string(), gateway_dp(gw)),
            (
                "mesh-gateway.yaml".to_string(),
                mesh_gateway(
                    "  - {port: 8080, protocol: HTTP, tags: {port: http-8080}}\n  - {port: 8081, protocol: HTTP, tags: {port: http-8081}}\n",
                ),
            ),
            ("svc-echo.yaml".to_string(), backend_dp("svc-echo", b, 9001, "http")),
            ("route-8080.yaml".to_string(), route("http-8080", value)),
            ("route-8081.yaml".to_string(), route("http-8081", "fine")),
        ]
    };
    let store = write_owned_store(&topo, &files("bad\\x7f"))?;
    let proxy = Bearing::spawn(gw, &store, &["--name", GW])?;

    // The config is applied, the other listener serves, but the proxy is not ready and says
    // which listener is missing and why.
    let dump = wait_until_ok(APPLY_TIMEOUT, || {
        let dump = proxy.config_dump()?;
        ensure!(!dump["version"].is_null(), "no config applied yet");
        Ok(dump)
    })?;
    let error = dump["listener_errors"][HTTP_LISTENER]
        .as_str()
        .with_context(|| format!("{HTTP_LISTENER} not in listener_errors: {dump:#}"))?
        .to_string();
    ensure!(
        error.contains("x-set"),
        "the error names the header: {error}"
    );
    ensure!(dump["ready"] == false, "ready with a listener missing");
    let (code, body) = proxy.admin("GET", "/ready")?;
    ensure!(code == 503, "/ready answered {code} {body:?}");
    ensure!(
        proxy.metric("bearing_listener_build_failures_total")? >= 1.0,
        "build failure not counted"
    );
    let (code, body) = curl(client, ["-m", "5", &http_url(gw.ip4(), 8081, "/")])?;
    ensure!(
        code == 200 && served_by(&body) == Some("svc-echo"),
        "listener 8081: {code} {body:?}"
    );
    ensure!(
        !gw.can_connect(gw.sock4(HTTP_PORT)),
        "listener 8080 accepts connections"
    );

    // Fixed: built, bound, ready.
    write_store_file(&store, "route-8080.yaml", &route("http-8080", "fine"))?;
    proxy.wait_ready()?;
    let dump = proxy.config_dump()?;
    ensure!(
        dump["listener_errors"]
            .as_object()
            .is_some_and(|e| e.is_empty()),
        "listener_errors after the fix: {}",
        dump["listener_errors"]
    );
    let (code, _) = curl(client, ["-m", "5", &http_url(gw.ip4(), HTTP_PORT, "/")])?;
    ensure!(code == 200, "listener 8080 after the fix: {code}");
    Ok(())
}

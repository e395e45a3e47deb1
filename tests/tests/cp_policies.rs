//! MeshRateLimit and MeshFaultInjection as kuma-cp renders them, enforced by a sidecar fed only
//! by `bearing-test-cp`, in front of one origin: a route's local rate limit of 10 answers the
//! 11th request with its status and headers; an abort at 50% answers about half of 1000
//! requests with its status; a delay holds a request; a fault whose matcher skips it for a
//! caller without the SNI it targets (kuma-cp's zone egress form) is not applied, while one
//! skipped for sources outside a SPIFFE prefix is applied to a plaintext caller (the matcher
//! cannot read a URI SAN without TLS, so Envoy takes no action); a connection over the
//! listener's connection bucket is closed at once. Then Envoy 1.40, fed the same resources by
//! the same CP in Bearing's place, answers the same (the limited and aborted requests'
//! status, body and headers, over HTTP/1.1 and HTTP/2, both matchers) and closes the same
//! connection. On a mesh mTLS inbound, a fault kuma-cp targets at one source identity aborts
//! that source's requests only, in Bearing as in Envoy.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bearing_e2e::*;
use serde_json::{json, Value};

const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const HTTP_LIMIT: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
const TCP_LIMIT: &str =
    "type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit";
const ORIGIN_PORT: u16 = 8080;
/// The outbounds: rate limited, aborting at 50%, delaying, a skipped fault, aborting always,
/// and TCP with a connection limit.
const LIMITED: u16 = 10001;
const HALF_ABORTED: u16 = 10002;
const DELAYED: u16 = 10003;
const SKIPPED: u16 = 10004;
const ABORTED: u16 = 10005;
const TCP: u16 = 10006;
const UNMATCHED: u16 = 10007;
/// The limit's bucket and the connection bucket (neither refills within the test).
const REQUESTS: usize = 10;
const CONNECTIONS: usize = 2;

/// An HTTP outbound on 127.0.0.1:`port` to the origin with `filters` before the router and
/// the route's `per_filter` configs.
fn http_listener(port: u16, filters: Vec<Value>, per_filter: Value) -> (String, Value) {
    routed_listener(port, filters, per_filter, ("origin", json!({})))
}

/// An HTTP listener on 127.0.0.1:`port` to `cluster` with `filters` before the router, the
/// route's `per_filter` configs and the route configuration's header `edits` (its
/// `requestHeadersToAdd` / `requestHeadersToRemove` fields).
fn routed_listener(
    port: u16,
    filters: Vec<Value>,
    per_filter: Value,
    (cluster, edits): (&str, Value),
) -> (String, Value) {
    let mut filters = filters;
    filters.push(json!({"name": "envoy.filters.http.router", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    let name = format!("outbound:127.0.0.1:{port}");
    let mut route_config = json!({"name": cluster, "virtualHosts": [{"name": cluster, "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"},
         "typedPerFilterConfig": per_filter}
    ]}]});
    if let (Some(rc), Value::Object(edits)) = (route_config.as_object_mut(), edits) {
        rc.extend(edits);
    }
    let listener = json!({
        "name": name,
        "address": {"socketAddress": {"address": "127.0.0.1", "portValue": port}},
        "trafficDirection": "OUTBOUND",
        "filterChains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typedConfig": {
            "@type": HCM,
            "statPrefix": "origin",
            "httpFilters": filters,
            "routeConfig": route_config,
        }}]}],
    });
    (name, listener)
}

/// kuma-cp's `not` predicate on `input` (`uri_san`: a prefix; `server_name`: exact).
fn not(input: &str, value: &str) -> Value {
    let (kind, config, matcher) = match input {
        "uri_san" => ("uri_san", "ssl.v3.UriSanInput", json!({"prefix": value})),
        _ => (
            "server_name",
            "network.v3.ServerNameInput",
            json!({"exact": value}),
        ),
    };
    json!({"notMatcher": {"singlePredicate": {
        "input": {"name": format!("envoy.matching.inputs.{kind}"), "typedConfig": {
            "@type": format!("type.googleapis.com/envoy.extensions.matching.common_inputs.{config}")}},
        "valueMatch": matcher}}})
}

/// kuma-cp's fault filter with `fault`, bare or wrapped in its matcher skipping it where
/// `skip` holds.
fn fault(fault: Value, skip: Option<Value>) -> Value {
    let mut config = fault;
    config["@type"] = json!(FAULT);
    let Some(predicate) = skip else {
        return json!({"name": "envoy.filters.http.fault", "typedConfig": config});
    };
    json!({"name": "kri_mfi_default__mfi_", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher",
        "extensionConfig": {"name": "envoy.filters.http.fault", "typedConfig": config},
        "xdsMatcher": {"matcherList": {"matchers": [{
            "onMatch": {"action": {"name": "skip", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter"}}},
            "predicate": predicate,
        }]}},
    }})
}

/// A fault's abort with `status` for `numerator`% of requests.
fn abort(status: u16, numerator: u32) -> Value {
    json!({"abort": {"httpStatus": status, "percentage": {"numerator": numerator}}})
}

/// The sidecar's resources.
fn resources(origin: &Host) -> Value {
    let limit = json!({"envoy.filters.http.local_ratelimit": {
        "@type": HTTP_LIMIT,
        "statPrefix": "rate_limit",
        "status": {"code": "Locked"},
        "tokenBucket": {"maxTokens": REQUESTS, "tokensPerFill": REQUESTS, "fillInterval": "3600s"},
        "filterEnabled": {"defaultValue": {"numerator": 100}, "runtimeKey": "local_rate_limit_enabled"},
        "filterEnforced": {"defaultValue": {"numerator": 100}, "runtimeKey": "local_rate_limit_enforced"},
        "responseHeadersToAdd": [{"appendAction": "OVERWRITE_IF_EXISTS_OR_ADD",
            "header": {"key": "x-kuma-rate-limited", "value": "true"}}],
    }});
    let idle_limit = json!({"name": "envoy.filters.http.local_ratelimit", "typedConfig": {
        "@type": HTTP_LIMIT, "statPrefix": "rate_limit"}});
    let listeners = [
        http_listener(LIMITED, vec![idle_limit], limit),
        http_listener(HALF_ABORTED, vec![fault(abort(503, 50), None)], json!({})),
        http_listener(
            DELAYED,
            vec![fault(
                json!({"delay": {"fixedDelay": "1s", "percentage": {"numerator": 100}}}),
                None,
            )],
            json!({}),
        ),
        http_listener(
            SKIPPED,
            vec![fault(
                abort(500, 100),
                Some(not("server_name", "sni.external.80")),
            )],
            json!({}),
        ),
        http_listener(
            UNMATCHED,
            vec![fault(
                abort(500, 100),
                Some(not("uri_san", "spiffe://default/")),
            )],
            json!({}),
        ),
        http_listener(ABORTED, vec![fault(abort(503, 100), None)], json!({})),
    ];
    let tcp_name = format!("outbound:127.0.0.1:{TCP}");
    let tcp = json!({
        "name": tcp_name,
        "address": {"socketAddress": {"address": "127.0.0.1", "portValue": TCP}},
        "trafficDirection": "OUTBOUND",
        "filterChains": [{"filters": [
            {"name": "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit", "typedConfig": {
                "@type": TCP_LIMIT,
                "statPrefix": "tcp_rate_limit",
                "tokenBucket": {"maxTokens": CONNECTIONS, "tokensPerFill": CONNECTIONS, "fillInterval": "3600s"},
            }},
            {"name": "envoy.filters.network.tcp_proxy", "typedConfig": {
                "@type": TCP_PROXY, "statPrefix": "origin", "cluster": "origin"}},
        ]}],
    });
    let mut all: serde_json::Map<String, Value> = listeners.into_iter().collect();
    all.insert(tcp_name, tcp);
    json!({"xds": {
        CLUSTER: {"origin": static_cluster("origin", &origin.ip4().to_string(), ORIGIN_PORT)},
        LISTENER: all,
    }})
}

/// A STATIC cluster `name` of one endpoint at `ip`:`port`.
fn static_cluster(name: &str, ip: &str, port: u16) -> Value {
    json!({"name": name, "type": "STATIC", "connectTimeout": "5s",
        "loadAssignment": {"clusterName": name, "endpoints": [{"lbEndpoints": [{"endpoint": {
            "address": {"socketAddress": {"address": ip, "portValue": port}}}}]}]}})
}

/// The test CP on `cp` serving `resources` and the sidecar `web` it feeds, once the sidecar
/// ACKed its listeners without a NACK; with how Envoy is fed the same later.
fn acked_sidecar<'h>(
    pki: &CpPki,
    cp: &Host,
    web: &'h Host,
    resources: &Value,
) -> Result<(Process, Bearing<'h>, CpAccess)> {
    let bin = env!("CARGO_BIN_EXE_bearing-test-cp");
    let (cp_process, sidecar) = pki.web_sidecar(bin, cp, web, resources, "ACK type=Listener")?;
    let log = cp_process.log_contents();
    ensure!(
        !log.contains("NACK"),
        "the sidecar NACKed its config:\n{log}"
    );
    Ok((cp_process, sidecar, CpAccess::new(cp, 5678, pki)))
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/")
}

/// What a client sees of a local reply: status, body and the headers Bearing and Envoy may
/// set on one.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    body: String,
    headers: Vec<(&'static str, Option<String>)>,
}

/// A request to `port` with curl's `extra` arguments, as [`Seen`].
fn seen(web: &Host, port: u16, extra: &[&str]) -> Result<Seen> {
    let mut args = vec!["-i".to_string(), url(port)];
    args.extend(extra.iter().map(|a| a.to_string()));
    let out = curl_output(web, args)?;
    let (head, body) = out.body.split_once("\r\n\r\n").unwrap_or_default();
    let headers = [
        "content-type",
        "x-kuma-rate-limited",
        "x-envoy-ratelimited",
        "x-ratelimit-limit",
        "retry-after",
    ]
    .into_iter()
    .map(|name| (name, header_value(head, name)))
    .collect();
    Ok(Seen {
        status: out.http_code,
        body: body.to_string(),
        headers,
    })
}

/// What the proxy on `web` (fresh buckets) answers: the limited route's 11th request, an
/// abort, a skipped fault, a fault whose matcher cannot tell, and the connection over the
/// bucket closed.
fn answers(web: &Host, origin_body: &str, proxy: &str) -> Result<(Seen, Seen)> {
    for i in 0..REQUESTS {
        let (code, body) = curl(web, [url(LIMITED)])?;
        ensure!(
            code == 200 && body == origin_body,
            "{proxy}: request {i}: {code} {body}"
        );
    }
    let limited = seen(web, LIMITED, &[])?;
    let aborted = seen(web, ABORTED, &[])?;
    // HTTP/2 (the hyper codec) answers alike.
    let h2 = ["--http2-prior-knowledge"];
    for (port, h1) in [(LIMITED, &limited), (ABORTED, &aborted)] {
        let answer = seen(web, port, &h2)?;
        ensure!(
            answer == *h1,
            "{proxy}: over HTTP/2: {answer:?}, over HTTP/1.1: {h1:?}"
        );
    }
    for _ in 0..3 {
        let (code, body) = curl(web, [url(SKIPPED)])?;
        ensure!(
            code == 200 && body == origin_body,
            "{proxy}: skipped fault applied: {code} {body}"
        );
        let (code, body) = curl(web, [url(UNMATCHED)])?;
        ensure!(
            code == 500 && body == "fault filter abort",
            "{proxy}: a fault its matcher cannot tell about not applied: {code} {body}"
        );
    }
    for i in 0..CONNECTIONS {
        let (code, _) = curl(web, [url(TCP)])?;
        ensure!(code == 200, "{proxy}: TCP connection {i}: {code}");
    }
    let started = Instant::now();
    let over = curl_output(web, [url(TCP)])?;
    ensure!(
        !over.ok() && over.http_code == 0 && started.elapsed() < Duration::from_secs(5),
        "{proxy}: the connection over the bucket was not closed at once: {over:?}"
    );
    Ok((limited, aborted))
}

#[test]
fn rate_limits_and_faults_act_as_envoy_on_what_the_cp_sends() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "python3"])?;
    let topo = Topology::new(&["cp", "web", "origin"])?;
    let (cp, web, origin) = (topo.host("cp"), topo.host("web"), topo.host("origin"));
    let pki = CpPki::new(topo.dir(), "cp-policies", cp)?;
    let server = start_http_server(origin, ORIGIN_PORT)?;
    let origin_body = server.body();

    let (_cp, sidecar, access) = acked_sidecar(&pki, cp, web, &resources(origin))?;

    // The 11th request of the 10-request bucket: Kuma's status (Locked) and header.
    let (limited, aborted) = answers(web, origin_body, "bearing")?;
    ensure!(
        limited.status == 423 && limited.body == "local_rate_limited",
        "limited: {limited:?}"
    );
    ensure!(
        aborted.status == 503 && aborted.body == "fault filter abort",
        "aborted: {aborted:?}"
    );

    // The abort at 50%: about half of 1000 requests (curl's URL range, one connection).
    let out = web.run(
        "curl",
        [
            "-sS".to_string(),
            "-m".into(),
            "120".into(),
            "-w".into(),
            "\nCODE %{http_code}\n".into(),
            format!("http://127.0.0.1:{HALF_ABORTED}/[1-1000]"),
        ],
    )?;
    let codes: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("CODE "))
        .collect();
    let aborts = codes.iter().filter(|c| **c == "503").count();
    let passed = codes.iter().filter(|c| **c == "200").count();
    ensure!(
        codes.len() == 1000 && aborts + passed == 1000 && (400..=600).contains(&aborts),
        "{aborts} aborted and {passed} passed of {}: {}",
        codes.len(),
        out.stderr
    );

    // The delay holds the request, which then reaches the origin.
    let started = Instant::now();
    let (code, body) = curl(web, [url(DELAYED)])?;
    let held = started.elapsed();
    ensure!(
        code == 200 && body == origin_body && held >= Duration::from_millis(900),
        "delayed: {code} {body} after {held:?}"
    );

    // Counted per listener.
    let metric = |name: &str, port: u16| {
        sidecar.metric(&format!(
            "bearing_{name}_total{{listener=\"outbound:127.0.0.1:{port}\"}}"
        ))
    };
    // The 11th request, then its HTTP/2 twin.
    ensure!(metric("local_rate_limited", LIMITED)? == 2.0);
    ensure!(metric("fault_aborts_injected", HALF_ABORTED)? == aborts as f64);
    ensure!(metric("fault_delays_injected", DELAYED)? == 1.0);
    ensure!(metric("connection_rate_limited", TCP)? == 1.0);

    // Differential: Envoy 1.40 in Bearing's place, the same resources from the same CP.
    sidecar.process().stop(Duration::from_secs(5));
    let _envoy = access.envoy(web, "default", "web")?;
    web.wait_for_tcp_listener(TCP, Duration::from_secs(20), None)
        .context("Envoy's listeners")?;
    let (envoy_limited, envoy_aborted) = answers(web, origin_body, "envoy")?;
    ensure!(
        envoy_limited == limited && envoy_aborted == aborted,
        "Envoy answers otherwise:\n limited: {envoy_limited:?}\n  bearing {limited:?}\n aborted: {envoy_aborted:?}\n  bearing {aborted:?}"
    );
    Ok(())
}

/// kuma-cp's MeshFaultInjection `rules` form on a mesh mTLS inbound (the MeshTrafficPermission
/// golden's test server, fed by the test CP): an abort skipped for sources outside
/// `spiffe://envoyconfig/demo-client`. A client presenting that identity gets the abort; one
/// of another identity reaches the application. Envoy 1.40 in the server's place answers the
/// same.
#[test]
fn a_fault_matched_by_source_identity_aborts_only_that_source() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "python3"])?;
    let topo = Topology::new(&["cp", "web", "backend"])?;
    let (cp, web, backend) = (topo.host("cp"), topo.host("web"), topo.host("backend"));
    let pki = CpPki::new(topo.dir(), "cp-fault-identity", cp)?;
    let mesh_ca = TestCa::new(&pki.dir, "mesh-ca")?;
    let uri = |id: &str| format!("URI:{id}");
    let targeted = mesh_ca.issue("demo-client", &[&uri("spiffe://envoyconfig/demo-client")])?;
    let other = mesh_ca.issue("other", &[&uri("spiffe://envoyconfig/web")])?;
    let server_leaf = mesh_ca.issue("test-server", &[&uri("spiffe://envoyconfig/test-server")])?;
    let app = start_http_server(backend, ORIGIN_PORT)?;

    let golden = KumaGolden::load(
        "envoyconfig-e2e/sidecars/meshtrafficpermission/no-policies.test-server.golden.json",
    )?;
    let mut xds = XdsFile::new();
    let at = backend.sock4(GOLDEN_INBOUND_PORT);
    let inbound = xds.golden_inbound(&golden, 80, ORIGIN_PORT, at)?;
    let listener = xds.get_mut(LISTENER, &inbound)?;
    replace_in_strings(listener, "IP_REDACTED", &backend.ip4().to_string());
    let filters = listener
        .pointer_mut("/filterChains/0/filters/0/typedConfig/httpFilters")
        .and_then(Value::as_array_mut)
        .context("the inbound's HTTP filters")?;
    let skip = not("uri_san", "spiffe://envoyconfig/demo-client");
    filters.insert(filters.len() - 1, fault(abort(503, 100), Some(skip)));
    xds.mesh_identity("envoyconfig", &server_leaf, &mesh_ca)?;
    let bin = env!("CARGO_BIN_EXE_bearing-test-cp");
    let (_cp, access, server) = pki.golden_sidecar(bin, (cp, "test-server"), backend, &xds)?;

    let check = |proxy: &str| -> Result<()> {
        let ask = |leaf: &CertFiles| TlsClient::new(at).alpn("kuma").client_cert(leaf).run(web);
        for _ in 0..3 {
            let hit = ask(&targeted)?;
            ensure!(
                hit.response.starts_with("HTTP/1.1 503")
                    && hit.response.ends_with("fault filter abort"),
                "{proxy}: the targeted source: {hit:?}"
            );
            let spared = ask(&other)?;
            ensure!(
                spared.response.starts_with("HTTP/1.1 200")
                    && spared.response.ends_with(app.body()),
                "{proxy}: another source: {spared:?}"
            );
        }
        Ok(())
    };
    sidecar_then_envoy(
        (&server, &access),
        (backend, "envoyconfig", "test-server", GOLDEN_INBOUND_PORT),
        check,
    )
}

/// What a proxy answers each caller (status, tags the application saw) and the callee's
/// log lines.
type Observed = (Vec<(u16, Option<String>)>, Vec<String>);

/// The legacy FaultInjection's source match, and the `x-kuma-tags` header it reads: callers
/// for `frontend` and `backend` send their tags as kuma-cp's outbound route configuration
/// adds them (`requestHeadersToAdd`); the callee's fault filter aborts requests whose
/// `x-kuma-tags` matches kuma-cp's regex for `frontend` only, and its route configuration
/// removes the header before the application. So the `frontend` caller gets 503, the
/// `backend` caller reaches the application, which never sees the header, while an outbound
/// straight to the application delivers the tags exactly as configured; the callee's access
/// log flags its aborts `FI`. Envoy 1.40 in Bearing's place answers and logs the same.
#[test]
fn a_legacy_fault_matches_the_callers_kuma_tags_as_envoy() -> Result<()> {
    const FRONTEND: u16 = 10011;
    const BACKEND: u16 = 10012;
    const TAGGING: u16 = 10013;
    const CALLEE: u16 = 10014;
    require_root_and_tools()?;
    require_tools(&["openssl", "python3"])?;
    let topo = Topology::new(&["cp", "web", "origin"])?;
    let (cp, web, origin) = (topo.host("cp"), topo.host("web"), topo.host("origin"));
    let pki = CpPki::new(topo.dir(), "cp-legacy-fault", cp)?;
    start_http_server(origin, ORIGIN_PORT)?;
    let tags = |service: &str| json!({"requestHeadersToAdd": [{"header": {"key": "x-kuma-tags", "value": format!("&kuma.io/service={service}&")}}]});
    let mut matched = abort(503, 100);
    matched["headers"] = json!([{"name": "x-kuma-tags",
        "safeRegexMatch": {"regex": ".*&kuma.io/service=[^&]*frontend[,&].*"}}]);
    let stripped = json!({"requestHeadersToRemove": ["x-kuma-tags"]});
    // The callee logs each request's status and Envoy's response flags.
    let logs = topo.dir().join("logs");
    std::fs::create_dir_all(&logs)?;
    std::os::unix::fs::chown(&logs, Some(KUMA_DP_UID), Some(KUMA_DP_UID))?;
    let log_file = logs.join("callee.log");
    let mut listeners: serde_json::Map<String, Value> = [
        routed_listener(FRONTEND, vec![], json!({}), ("callee", tags("frontend"))),
        routed_listener(BACKEND, vec![], json!({}), ("callee", tags("backend"))),
        routed_listener(TAGGING, vec![], json!({}), ("origin", tags("frontend"))),
        routed_listener(
            CALLEE,
            vec![fault(matched, None)],
            json!({}),
            ("origin", stripped),
        ),
    ]
    .into_iter()
    .collect();
    let callee = listeners
        .get_mut(&format!("outbound:127.0.0.1:{CALLEE}"))
        .and_then(|l| l.pointer_mut("/filterChains/0/filters/0/typedConfig"))
        .context("the callee's connection manager")?;
    callee["accessLog"] = json!([{"name": "envoy.access_loggers.file", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": log_file.display().to_string(),
        "logFormat": {"textFormatSource": {"inlineString": "%RESPONSE_CODE% %RESPONSE_FLAGS%\n"}}}}]);
    let resources = json!({"xds": {
        CLUSTER: {
            "origin": static_cluster("origin", &origin.ip4().to_string(), ORIGIN_PORT),
            "callee": static_cluster("callee", "127.0.0.1", CALLEE),
        },
        LISTENER: listeners,
    }});
    let (_cp, sidecar, access) = acked_sidecar(&pki, cp, web, &resources)?;

    // What a proxy answers: each caller's status and whether the application saw tags, the
    // tags an outbound delivers, and the callee asked directly with and without them.
    let answers = |proxy: &str| -> Result<Observed> {
        std::fs::File::create(&log_file)?;
        std::os::unix::fs::chown(&log_file, Some(KUMA_DP_UID), Some(KUMA_DP_UID))?;
        let echo = |port: u16, extra: &[&str]| -> Result<(u16, Option<String>)> {
            let mut args = vec![format!("http://127.0.0.1:{port}/echo")];
            args.extend(extra.iter().map(|a| a.to_string()));
            let (code, body) = curl(web, args)?;
            let seen = body
                .lines()
                .find_map(|l| l.strip_prefix("x-kuma-tags: "))
                .map(str::to_string);
            Ok((code, seen))
        };
        let tagged = ["-H", "x-kuma-tags: &kuma.io/service=frontend&"];
        let all = vec![
            echo(FRONTEND, &[])?,
            echo(BACKEND, &[])?,
            echo(TAGGING, &[])?,
            echo(CALLEE, &tagged)?,
            echo(CALLEE, &["--http2-prior-knowledge", "-H", tagged[1]])?,
            echo(CALLEE, &[])?,
        ];
        let want = [
            (503, None),
            (200, None),
            (200, Some("&kuma.io/service=frontend&".to_string())),
            (503, None),
            (503, None),
            (200, None),
        ];
        ensure!(all == want, "{proxy}: {all:?}, expected {want:?}");
        // The callee's lines: the aborts flagged `FI` (Envoy's fault injected).
        let lines = wait_until_ok(Duration::from_secs(10), || {
            let text = std::fs::read_to_string(&log_file).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            ensure!(lines.len() >= 5, "{proxy}: {lines:?}");
            Ok(lines)
        })?;
        let logged = ["503 FI", "200 -", "503 FI", "503 FI", "200 -"];
        ensure!(
            lines == logged,
            "{proxy}: logged {lines:?}, expected {logged:?}"
        );
        Ok((all, lines))
    };
    sidecar_then_envoy(
        (&sidecar, &access),
        (web, "default", "web", CALLEE),
        answers,
    )
}

/// An HTTP outbound on 127.0.0.1:`port` to `cluster` whose one route has the retry `policy`.
fn retrying_listener(port: u16, cluster: &str, policy: Value) -> (String, Value) {
    let (name, mut listener) = routed_listener(port, vec![], json!({}), (cluster, json!({})));
    let route = "/filterChains/0/filters/0/typedConfig/routeConfig/virtualHosts/0/routes/0/route";
    if let Some(r) = listener.pointer_mut(route) {
        r["retryPolicy"] = policy;
    }
    (name, listener)
}

/// MeshRetry's request and response header conditions as kuma-cp renders them: `retryOn:
/// [5xx, GET]` becomes a `:method` match in `retriable_request_headers`, so a GET answered 503
/// is tried three times (two retries) while a POST is tried once; `retriableResponseHeaders`
/// (under `retriable-headers`) retries a 200 whose `x-served-by` is present. Envoy 1.40 fed
/// the same resources makes the same attempts, counted at the origin.
#[test]
fn retries_follow_the_request_and_response_headers_as_envoy() -> Result<()> {
    const BY_METHOD: u16 = 10021;
    const BY_RESPONSE: u16 = 10022;
    require_root_and_tools()?;
    require_tools(&["openssl", "python3"])?;
    let topo = Topology::new(&["cp", "web", "origin"])?;
    let (cp, web, origin) = (topo.host("cp"), topo.host("web"), topo.host("origin"));
    let pki = CpPki::new(topo.dir(), "cp-retry-headers", cp)?;
    let server = start_http_server(origin, ORIGIN_PORT)?;
    let retrying = |port: u16, policy: Value| retrying_listener(port, "origin", policy);
    let back_off = json!({"baseInterval": "0.010s", "maxInterval": "0.020s"});
    let listeners: serde_json::Map<String, Value> = [
        retrying(
            BY_METHOD,
            json!({"retryOn": "5xx", "numRetries": 2, "retryBackOff": back_off,
                "retriableRequestHeaders": [{"name": ":method", "stringMatch": {"exact": "GET"}}]}),
        ),
        retrying(
            BY_RESPONSE,
            json!({"retryOn": "retriable-headers", "numRetries": 2, "retryBackOff": back_off,
                "retriableHeaders": [{"name": "x-served-by", "presentMatch": true}]}),
        ),
    ]
    .into_iter()
    .collect();
    let resources = json!({"xds": {
        CLUSTER: {"origin": static_cluster("origin", &origin.ip4().to_string(), ORIGIN_PORT)},
        LISTENER: listeners,
    }});
    let (_cp, sidecar, access) = acked_sidecar(&pki, cp, web, &resources)?;

    // Each request's answer and the attempts the origin saw for its path.
    let attempts = |proxy: &str| -> Result<Vec<(u16, usize)>> {
        let mut all = Vec::new();
        for (i, (port, method, path)) in [
            (BY_METHOD, "GET", "/status/503"),
            (BY_METHOD, "POST", "/status/503"),
            (BY_RESPONSE, "GET", "/"),
        ]
        .into_iter()
        .enumerate()
        {
            let path = format!("{path}?{proxy}-{i}");
            let url = format!("http://127.0.0.1:{port}{path}");
            let (code, _) = curl(web, [url, "-X".into(), method.into()])?;
            // The origin logs each request it answered (its request line).
            std::thread::sleep(Duration::from_millis(200));
            let seen = server
                .process()
                .log_contents()
                .lines()
                .filter(|l| l.contains(&format!("{path} HTTP")))
                .count();
            all.push((code, seen));
        }
        let want = [(503, 3), (503, 1), (200, 3)];
        ensure!(all == want, "{proxy}: {all:?}, expected {want:?}");
        Ok(all)
    };
    sidecar_then_envoy(
        (&sidecar, &access),
        (web, "default", "web", BY_RESPONSE),
        attempts,
    )
}

/// A PERMISSIVE inbound's route rate limits as kuma-cp's legacy RateLimit renders them
/// (xds-generator inbound-proxy golden 5, its bucket narrowed to 2 requests an hour, its
/// internal addresses written as Envoy takes them): each of
/// the listener's filter chains (plaintext, TLS passed through, mesh mTLS) carries its own
/// copy of the route configuration, so Envoy keeps a bucket per chain. Two plaintext
/// requests pass and the third gets the limit's 404 with `x-rate-limited: true`; two mesh
/// mTLS requests then still pass (one bucket per listener would refuse them) and the third is
/// refused. Envoy 1.40 in Bearing's place answers the same.
#[test]
fn a_permissive_inbound_keeps_a_rate_limit_bucket_per_chain_as_envoy() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "python3"])?;
    let topo = Topology::new(&["cp", "web", "backend"])?;
    let (cp, web, backend) = (topo.host("cp"), topo.host("web"), topo.host("backend"));
    let pki = CpPki::new(topo.dir(), "cp-permissive-limit", cp)?;
    let mesh_ca = TestCa::new(&pki.dir, "mesh-ca")?;
    // The golden's RBAC wants both identities of a caller.
    let ids = ["URI:kuma://version/1.0", "URI:spiffe://default/web1"];
    let caller = mesh_ca.issue("web1", &ids)?;
    let server_leaf = mesh_ca.issue("backend1", &["URI:spiffe://default/backend1"])?;
    start_http_server(backend, ORIGIN_PORT)?;

    let golden = KumaGolden::load("xds-generator/inbound-proxy/5-envoy-config.golden.yaml")?;
    let at = backend.sock4(GOLDEN_INBOUND_PORT);
    let mut listener = bound_listener(golden.listener("inbound:192.168.0.1:80")?, at);
    // Its internal addresses as Envoy takes them (the golden's CIDRs are refused by both).
    replace_in_strings(&mut listener, "fc00::/7", "fc00::");
    replace_in_strings(&mut listener, "::1/128", "::1");
    each_permissive_chain(&mut listener, |chain| {
        let hcm = chain["filters"]
            .as_array_mut()
            .and_then(|f| f.last_mut())
            .context("a chain's connection manager")?;
        let limit = "/typedConfig/routeConfig/virtualHosts/0/routes/1/typedPerFilterConfig/envoy.filters.http.local_ratelimit/tokenBucket";
        let bucket = json!({"maxTokens": 2, "tokensPerFill": 2, "fillInterval": "3600s"});
        set_field(hcm, limit, bucket)
    })?;
    let app = local_app_cluster(golden.cluster("localhost:8080")?, ORIGIN_PORT);
    let mut xds = XdsFile::new();
    xds.listener(listener)?.cluster(app)?;
    xds.mesh_identity("default", &server_leaf, &mesh_ca)?;
    let dataplane = format!(
        "type: Dataplane\nmesh: default\nname: backend1\nnetworking:\n  address: {}\n  inbound:\n  - port: {GOLDEN_INBOUND_PORT}\n    tags:\n      kuma.io/service: backend1\n",
        backend.ip4()
    );
    let bin = env!("CARGO_BIN_EXE_bearing-test-cp");
    let (_cp, access, server) =
        pki.fed_sidecar(bin, (cp, 5679), backend, ("backend1", &dataplane), &xds)?;

    // Each caller's statuses, a refusal's with its `x-rate-limited`.
    let tags = "x-kuma-tags: &kuma.io/service=web1&";
    let answers = |proxy: &str| -> Result<Vec<String>> {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let url = format!("http://{at}/");
            let out = curl_output(web, ["-i", &url, "-H", tags])?;
            let limited = header_value(&out.body, "x-rate-limited");
            seen.push(format!("plaintext {} {limited:?}", out.http_code));
        }
        for _ in 0..3 {
            let request =
                format!("GET / HTTP/1.1\r\nHost: backend1\r\n{tags}\r\nConnection: close\r\n\r\n");
            let hit = TlsClient::new(at)
                .alpn("kuma")
                .client_cert(&caller)
                .send(request)
                .run(web)?;
            let status = hit.response.get(..12).unwrap_or_default().to_string();
            let limited = header_value(&hit.response, "x-rate-limited");
            seen.push(format!("mtls {status} {limited:?}"));
        }
        let want = [
            "plaintext 200 None",
            "plaintext 200 None",
            "plaintext 404 Some(\"true\")",
            "mtls HTTP/1.1 200 None",
            "mtls HTTP/1.1 200 None",
            "mtls HTTP/1.1 404 Some(\"true\")",
        ];
        ensure!(seen == want, "{proxy}: {seen:?}, expected {want:?}");
        Ok(seen)
    };
    sidecar_then_envoy(
        (&server, &access),
        (backend, "default", "backend1", GOLDEN_INBOUND_PORT),
        answers,
    )
}

/// The attempts `server` logged for `path` (its request lines).
fn logged(server: &HttpServer, path: &str) -> usize {
    let line = format!("{path} HTTP");
    let log = server.process().log_contents();
    log.lines().filter(|l| l.contains(&line)).count()
}

/// Applies `edit` to each of a PERMISSIVE inbound's three chains (plaintext, other TLS,
/// mesh mTLS).
fn each_permissive_chain(
    listener: &mut Value,
    edit: impl FnMut(&mut Value) -> Result<()>,
) -> Result<()> {
    let chains = listener["filterChains"]
        .as_array_mut()
        .context("the inbound's chains")?;
    ensure!(chains.len() == 3, "the golden's inbound has 3 chains");
    chains.iter_mut().try_for_each(edit)
}

/// `answers` (what one proxy, named by its argument, did) for the sidecar `server`, then,
/// the sidecar stopped, for Envoy 1.40 fed the same resources by the same CP (`access`) in
/// its place on `host` as `mesh`/`name`, once it listens on `port`: the two must be alike.
fn sidecar_then_envoy<T: PartialEq + std::fmt::Debug>(
    (server, access): (&Bearing<'_>, &CpAccess),
    (host, mesh, name, port): (&Host, &str, &str, u16),
    answers: impl Fn(&str) -> Result<T>,
) -> Result<()> {
    let bearing = answers("bearing")?;
    server.process().stop(Duration::from_secs(5));
    let _envoy = access.envoy(host, mesh, name)?;
    host.wait_for_tcp_listener(port, Duration::from_secs(20), None)
        .context("Envoy's listeners")?;
    let envoy = answers("envoy")?;
    ensure!(envoy == bearing, "envoy {envoy:?}\nbearing {bearing:?}");
    Ok(())
}

/// An origin that answers one HTTP/1.1 request per connection with `plain`, or, when the
/// connection starts with a TLS record, handshakes as a TLS server (argv 2, 3: certificate and
/// key) and answers with `tls`: it tells whether a proxy passed a client's own TLS through.
const SNIFFING_ORIGIN_PY: &str = r#"import socket, ssl, sys, threading
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
def serve(conn):
    try:
        body = b"plain"
        if conn.recv(1, socket.MSG_PEEK) == b"\x16":
            conn, body = ctx.wrap_socket(conn, server_side=True), b"tls"
        seen = b""
        while b"\r\n\r\n" not in seen:
            chunk = conn.recv(4096)
            if not chunk:
                return
            seen += chunk
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
    except Exception as e:
        print("origin:", e, flush=True)
    finally:
        conn.close()
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

/// A PERMISSIVE TCP inbound as kuma-cp 2.14 renders it (the meshtls `inbound-permissive`
/// golden's three chains: plaintext, TLS that is not the mesh's, mesh mTLS with ALPN `kuma`)
/// with MeshRateLimit's connection bucket of 2 on each chain. A client's own TLS (no ALPN
/// `kuma`) is passed through to the application undecrypted, mesh mTLS is terminated, and
/// each chain spends its own bucket: per kind of caller, two connections pass and the third
/// is closed at once. Envoy 1.40 fed the same resources does the same.
#[test]
fn a_permissive_tcp_inbound_passes_other_tls_through_with_a_connection_bucket_per_chain_as_envoy(
) -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "python3", "curl"])?;
    let topo = Topology::new(&["cp", "web", "backend"])?;
    let (cp, web, backend) = (topo.host("cp"), topo.host("web"), topo.host("backend"));
    let pki = CpPki::new(topo.dir(), "cp-permissive-tcp", cp)?;
    let mesh_ca = TestCa::new(&pki.dir, "mesh-ca")?;
    let caller = mesh_ca.issue("web1", &["URI:spiffe://envoyconfig/web1"])?;
    let server_leaf = mesh_ca.issue("demo-client", &["URI:spiffe://envoyconfig/demo-client"])?;
    let app_leaf = TestCa::new(&pki.dir, "app-ca")?.issue("app", &["DNS:app"])?;
    let script = topo.dir().join("sniffing-origin.py");
    std::fs::write(&script, SNIFFING_ORIGIN_PY).context("writing the origin")?;
    let _origin = backend
        .command("python3")
        .arg(&script)
        .arg(ORIGIN_PORT.to_string())
        .arg(&app_leaf.cert)
        .arg(&app_leaf.key)
        .log_name("sniffing-origin")
        .spawn()?;
    backend.wait_for_tcp_listener(ORIGIN_PORT, Duration::from_secs(10), None)?;

    let golden = "envoyconfig-e2e/sidecars/meshtls/inbound-permissive.demo-client.golden.json";
    let golden = KumaGolden::load(golden)?;
    let at = backend.sock4(GOLDEN_INBOUND_PORT);
    let mut listener = bound_listener(golden.listener("inbound:IP_REDACTED:3000")?, at);
    each_permissive_chain(&mut listener, |chain| {
        let filters = chain["filters"]
            .as_array_mut()
            .context("a chain's filters")?;
        // Where kuma-cp puts MeshRateLimit's `local.tcp`: first in the chain.
        let limit = json!({"name": "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit", "typedConfig": {
            "@type": TCP_LIMIT,
            "statPrefix": "tcp_rate_limit",
            "tokenBucket": {"maxTokens": 2, "tokensPerFill": 2, "fillInterval": "3600s"},
        }});
        filters.insert(0, limit);
        Ok(())
    })?;
    let app = local_app_cluster(golden.cluster("localhost:3000")?, ORIGIN_PORT);
    let mut xds = XdsFile::new();
    xds.listener(listener)?.cluster(app)?;
    // The golden's mesh.
    xds.mesh_identity("envoyconfig", &server_leaf, &mesh_ca)?;
    let dataplane = golden_dataplane(backend, "demo-client");
    let bin = env!("CARGO_BIN_EXE_bearing-test-cp");
    let (_cp, access, server) =
        pki.fed_sidecar(bin, (cp, 5679), backend, ("demo-client", &dataplane), &xds)?;

    // What each kind of caller got, three connections each: the origin's body, or nothing.
    let request = "GET / HTTP/1.1\r\nHost: demo-client\r\n\r\n";
    let answers = |proxy: &str| -> Result<Vec<String>> {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let out = curl_output(web, ["-s", "-m", "5", &format!("http://{at}/")])?;
            seen.push(format!("plaintext {} {}", out.http_code, out.body));
        }
        for _ in 0..3 {
            let hit = TlsClient::new(at).send(request).run(web)?;
            let body = hit.response.rsplit("\r\n\r\n").next().unwrap_or_default();
            seen.push(format!("own tls {} {body}", hit.accepted()));
        }
        for _ in 0..3 {
            let hit = TlsClient::new(at)
                .alpn("kuma")
                .client_cert(&caller)
                .send(request)
                .run(web)?;
            let body = hit.response.rsplit("\r\n\r\n").next().unwrap_or_default();
            seen.push(format!("mesh mtls {} {body}", hit.accepted()));
        }
        let want = [
            "plaintext 200 plain",
            "plaintext 200 plain",
            "plaintext 0 ",
            "own tls true tls",
            "own tls true tls",
            "own tls false ",
            "mesh mtls true plain",
            "mesh mtls true plain",
            "mesh mtls false ",
        ];
        ensure!(seen == want, "{proxy}: {seen:?}, expected {want:?}");
        Ok(seen)
    };
    sidecar_then_envoy(
        (&server, &access),
        (backend, "envoyconfig", "demo-client", GOLDEN_INBOUND_PORT),
        answers,
    )
}

/// What a proxy's retries did: per request, the attempts each origin saw (sorted), and the
/// totals (sorted); per reset header value, the attempts and whether the retry waited a
/// second or more.
#[derive(Debug, PartialEq)]
struct Retried {
    per_request: Vec<Vec<usize>>,
    totals: Vec<usize>,
    waits: Vec<(usize, bool)>,
}

/// MeshRetry's `hostSelection` and `rateLimitedBackOff` as kuma-cp 2.14 renders them (its
/// default `retryOn`, `OmitPreviousHosts` as the `previous_hosts` predicate with
/// `hostSelectionMaxAttempts: 2`; `rateLimitedBackOff` with `Retry-After` in seconds and
/// `X-RateLimit-Reset` as a Unix time, `maxInterval: 5s`). Three origins answering 503, a
/// policy of three retries: the first three attempts of each request go to three different
/// origins, and the fourth, whose three picks all meet tried ones, to the last pick, so of
/// three requests the origins see 3, 3 and 6 attempts (round robin alone would give 4 each).
/// A 503 with `retry-after: 1` is retried after a second; one with `retry-after: 10`, over the
/// maximum, after the exponential back-off. Envoy 1.40 fed the same resources does the same.
#[test]
fn retries_choose_other_hosts_and_wait_as_the_response_asks_as_envoy() -> Result<()> {
    const OTHER_HOSTS: u16 = 10023;
    const RATE_LIMITED: u16 = 10024;
    const PORTS: [u16; 3] = [8081, 8082, 8083];
    require_root_and_tools()?;
    require_tools(&["openssl", "python3"])?;
    let topo = Topology::new(&["cp", "web", "origin"])?;
    let (cp, web, origin) = (topo.host("cp"), topo.host("web"), topo.host("origin"));
    let pki = CpPki::new(topo.dir(), "cp-retry-hosts", cp)?;
    let ip = origin.ip4().to_string();
    let servers = PORTS
        .iter()
        .map(|port| start_http_server(origin, *port))
        .collect::<Result<Vec<_>>>()?;
    let limited = start_http_server(origin, ORIGIN_PORT)?;
    let endpoints: Vec<Value> = PORTS
        .iter()
        .map(|port| json!({"endpoint": {"address": {"socketAddress": {"address": ip, "portValue": port}}}}))
        .collect();
    let three = json!({"name": "three", "type": "STATIC", "connectTimeout": "5s",
        "loadAssignment": {"clusterName": "three", "endpoints": [{"lbEndpoints": endpoints}]}});
    let kuma_retry_on = "gateway-error,connect-failure,refused-stream";
    let back_off = json!({"baseInterval": "0.010s", "maxInterval": "0.020s"});
    let listeners: serde_json::Map<String, Value> = [
        retrying_listener(
            OTHER_HOSTS,
            "three",
            json!({"retryOn": kuma_retry_on, "numRetries": 3, "retryBackOff": back_off,
                "retryHostPredicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                    "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
                "hostSelectionRetryMaxAttempts": "2"}),
        ),
        retrying_listener(
            RATE_LIMITED,
            "origin",
            json!({"retryOn": kuma_retry_on, "numRetries": 1, "retryBackOff": back_off,
                "rateLimitedRetryBackOff": {"maxInterval": "5s", "resetHeaders": [
                    {"name": "retry-after"},
                    {"name": "x-ratelimit-reset", "format": "UNIX_TIMESTAMP"}]}}),
        ),
    ]
    .into_iter()
    .collect();
    let resources = json!({"xds": {
        CLUSTER: {"three": three, "origin": static_cluster("origin", &ip, ORIGIN_PORT)},
        LISTENER: listeners,
    }});
    let (_cp, sidecar, access) = acked_sidecar(&pki, cp, web, &resources)?;

    let behaviour = |proxy: &str| -> Result<Retried> {
        let mut per_request = Vec::new();
        let mut totals = [0; 3];
        for i in 0..3 {
            let path = format!("/status/503?{proxy}-{i}");
            let (code, _) = curl(web, [format!("http://127.0.0.1:{OTHER_HOSTS}{path}")])?;
            ensure!(code == 503, "{proxy}: request {i}: {code}");
            std::thread::sleep(Duration::from_millis(200));
            let mut seen: Vec<usize> = servers.iter().map(|s| logged(s, &path)).collect();
            totals.iter_mut().zip(&seen).for_each(|(t, n)| *t += n);
            seen.sort_unstable();
            per_request.push(seen);
        }
        let mut totals = totals.to_vec();
        totals.sort_unstable();
        let mut waits = Vec::new();
        for after in ["1", "10"] {
            let path = format!("/status/503?header=retry-after:{after}&{proxy}");
            let started = Instant::now();
            let (code, _) = curl(web, [format!("http://127.0.0.1:{RATE_LIMITED}{path}")])?;
            let took = started.elapsed();
            ensure!(code == 503, "{proxy}: retry-after {after}: {code}");
            std::thread::sleep(Duration::from_millis(200));
            let waited = took >= Duration::from_secs(1);
            ensure!(
                took < Duration::from_millis(2500),
                "{proxy}: retry-after {after}: {took:?}"
            );
            waits.push((logged(&limited, &path), waited));
        }
        let want = Retried {
            per_request: vec![vec![1, 1, 2]; 3],
            totals: vec![3, 3, 6],
            waits: vec![(2, true), (2, false)],
        };
        let got = Retried {
            per_request,
            totals,
            waits,
        };
        ensure!(got == want, "{proxy}: {got:?}, expected {want:?}");
        Ok(got)
    };
    sidecar_then_envoy(
        (&sidecar, &access),
        (web, "default", "web", RATE_LIMITED),
        behaviour,
    )
}

/// MeshRetry's `OmitPreviousPriorities` and its `RegularExpression` header matches as kuma-cp
/// 2.14 renders them, over a cluster of a priority-0 and a priority-1 origin, both answering
/// 503: without `previous_priorities` a request and its retry both go to P0 (2/0); with it
/// (`update_frequency: 1`) the retry goes to P1 (1/1); with `update_frequency: 2` and three
/// retries the first two attempts keep the cluster's load and the next two leave P0 (2/2).
/// `retriable_request_headers` and `retriable_headers` by regular expression, matching whole
/// values as RE2's `safe_regex`: a 200 whose `x-retry` matches `yes.*` is tried three times
/// for a caller whose `x-tenant` matches `team-(a|b)`, once for `team-c`, once when `x-retry`
/// is `xyes`. Envoy 1.40 fed the same resources makes the same attempts, counted at the
/// origins.
#[test]
fn retries_leave_tried_priorities_and_match_regular_expressions_as_envoy() -> Result<()> {
    const PLAIN: u16 = 10031;
    const EVERY: u16 = 10032;
    const EVERY_TWO: u16 = 10033;
    const BY_REGEX: u16 = 10034;
    const PORTS: [u16; 2] = [8081, 8082];
    require_root_and_tools()?;
    require_tools(&["openssl", "python3"])?;
    let topo = Topology::new(&["cp", "web", "origin"])?;
    let (cp, web, origin) = (topo.host("cp"), topo.host("web"), topo.host("origin"));
    let pki = CpPki::new(topo.dir(), "cp-retry-priorities", cp)?;
    let ip = origin.ip4().to_string();
    let levels = PORTS
        .iter()
        .map(|port| start_http_server(origin, *port))
        .collect::<Result<Vec<_>>>()?;
    let single = start_http_server(origin, ORIGIN_PORT)?;
    let locality = |priority: u32, port: u16| {
        json!({"priority": priority, "lbEndpoints": [{"endpoint": {"address": {
            "socketAddress": {"address": ip, "portValue": port}}}}]})
    };
    let two_levels = json!({"name": "levels", "type": "STATIC", "connectTimeout": "5s",
        "loadAssignment": {"clusterName": "levels",
            "endpoints": [locality(0, PORTS[0]), locality(1, PORTS[1])]}});
    let back_off = json!({"baseInterval": "0.010s", "maxInterval": "0.020s"});
    let previous = |frequency: u32| {
        json!({"name": "envoy.retry_priorities.previous_priorities", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
            "updateFrequency": frequency}})
    };
    let regex = |name: &str, pattern: &str| json!({"name": name, "stringMatch": {"safeRegex": {"regex": pattern}}});
    let listeners: serde_json::Map<String, Value> = [
        retrying_listener(
            PLAIN,
            "levels",
            json!({"retryOn": "5xx", "numRetries": 1, "retryBackOff": back_off}),
        ),
        retrying_listener(
            EVERY,
            "levels",
            json!({"retryOn": "5xx", "numRetries": 1, "retryBackOff": back_off,
                "retryPriority": previous(1)}),
        ),
        retrying_listener(
            EVERY_TWO,
            "levels",
            json!({"retryOn": "5xx", "numRetries": 3, "retryBackOff": back_off,
                "retryPriority": previous(2)}),
        ),
        retrying_listener(
            BY_REGEX,
            "origin",
            json!({"retryOn": "5xx,retriable-headers", "numRetries": 2, "retryBackOff": back_off,
                "retriableRequestHeaders": [regex("x-tenant", "team-(a|b)")],
                "retriableHeaders": [regex("x-retry", "yes.*")]}),
        ),
    ]
    .into_iter()
    .collect();
    let resources = json!({"xds": {
        CLUSTER: {"levels": two_levels, "origin": static_cluster("origin", &ip, ORIGIN_PORT)},
        LISTENER: listeners,
    }});
    let (_cp, sidecar, access) = acked_sidecar(&pki, cp, web, &resources)?;

    let attempts = |proxy: &str| -> Result<Vec<Vec<usize>>> {
        let mut all = Vec::new();
        for port in [PLAIN, EVERY, EVERY_TWO] {
            let path = format!("/status/503?{proxy}-{port}");
            let (code, _) = curl(web, [format!("http://127.0.0.1:{port}{path}")])?;
            ensure!(code == 503, "{proxy}: port {port}: {code}");
            std::thread::sleep(Duration::from_millis(200));
            all.push(levels.iter().map(|s| logged(s, &path)).collect());
        }
        let mut by_regex = Vec::new();
        for (i, (tenant, retry)) in [
            ("team-a", "yes-please"),
            ("team-c", "yes"),
            ("team-b", "xyes"),
        ]
        .into_iter()
        .enumerate()
        {
            let path = format!("/?header=x-retry:{retry}&{proxy}-{i}");
            let url = format!("http://127.0.0.1:{BY_REGEX}{path}");
            let (code, _) = curl(web, [url, "-H".into(), format!("x-tenant: {tenant}")])?;
            ensure!(code == 200, "{proxy}: {tenant} {retry}: {code}");
            std::thread::sleep(Duration::from_millis(200));
            by_regex.push(logged(&single, &path));
        }
        all.push(by_regex);
        let want = vec![vec![2, 0], vec![1, 1], vec![2, 2], vec![3, 1, 1]];
        ensure!(all == want, "{proxy}: {all:?}, expected {want:?}");
        Ok(all)
    };
    sidecar_then_envoy(
        (&sidecar, &access),
        (web, "default", "web", BY_REGEX),
        attempts,
    )
}

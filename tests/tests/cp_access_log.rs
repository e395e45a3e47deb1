//! File access logs from the control plane (kuma-cp's MeshAccessLog `File` backend), end to
//! end: a Bearing sidecar fed only by `bearing-test-cp` with an HTTP outbound logging in
//! kuma-cp's default HTTP format and in a JSON format, and TCP outbounds logging in kuma-cp's
//! default TCP format (one to a live origin, one to a dead port). curl over HTTP/1.1 (the byte
//! codec), HTTP/2 (hyper) and through the TCP proxy, and a request no route takes (`NR`); the
//! lines that appear are checked. Then
//! Envoy 1.40, fed the same resources by the same CP in Bearing's place, serves the same
//! requests, and its lines equal Bearing's but for times, durations and request ids.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bearing_e2e::*;
use serde_json::{json, Value};

const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const FILE_LOG: &str = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";
const ORIGIN_PORT: u16 = 8080;
const HTTP_PORT: u16 = 10001;
const TCP_PORT: u16 = 10002;
const DEAD_PORT: u16 = 10003;
/// A port nothing listens on, behind the dead TCP outbound.
const NOBODY_PORT: u16 = 8099;

/// kuma-cp's default HTTP format (`meshaccesslog/plugin/xds/configurer.go`) as it renders it
/// for the sidecar `web` (mesh `default`, address `ip`) to the service `one`.
fn kuma_http_format(ip: &str) -> String {
    format!("[%START_TIME%] default \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-B3-TRACEID?X-DATADOG-TRACEID)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"web\" \"one\" \"{ip}\" \"%UPSTREAM_HOST%\"\n")
}

/// kuma-cp's default TCP format, rendered likewise.
fn kuma_tcp_format(ip: &str) -> String {
    format!("[%START_TIME%] %RESPONSE_FLAGS% default {ip}(web)->%UPSTREAM_HOST%(one) took %DURATION%ms, sent %BYTES_SENT% bytes, received: %BYTES_RECEIVED% bytes\n")
}

fn file_log(path: &Path, format: Value) -> Value {
    json!({"name": "envoy.access_loggers.file", "typedConfig": {
        "@type": FILE_LOG, "path": path.display().to_string(), "logFormat": format,
    }})
}

fn cluster(name: &str, address: &str, port: u16) -> Value {
    json!({
        "name": name, "type": "STATIC", "connectTimeout": "2s",
        "loadAssignment": {"clusterName": name, "endpoints": [{"lbEndpoints": [{"endpoint": {
            "address": {"socketAddress": {"address": address, "portValue": port}}
        }}]}]},
    })
}

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

/// Where each log goes.
struct Files {
    http: PathBuf,
    json: PathBuf,
    tcp: PathBuf,
}

fn resources(one: &Host, web: &Host, files: &Files) -> Value {
    let ip = web.ip4().to_string();
    let text = |f: String| json!({"textFormatSource": {"inlineString": f}});
    let json_format = json!({"jsonFormat": {
        "code": "%RESPONSE_CODE%", "method": "%REQ(:METHOD)%", "path": "%REQ(:PATH)%",
        "proto": "%PROTOCOL%", "sent": "%BYTES_SENT%", "received": "%BYTES_RECEIVED%",
        "flags": "%RESPONSE_FLAGS%", "upstream": "%UPSTREAM_HOST%", "cluster": "%UPSTREAM_CLUSTER%",
        "test": "%REQ(X-TEST)%", "type": "%RESP(CONTENT-TYPE)%", "mixed": "m=%REQ(:METHOD)% t=%REQ(X-NONE)%",
        "start": "%START_TIME(%s)%", "duration": "%DURATION%",
    }});
    let (http_name, http) = listener(
        HTTP_PORT,
        json!({"name": "envoy.filters.network.http_connection_manager", "typedConfig": {
            "@type": HCM,
            "statPrefix": "one",
            "httpFilters": [{"name": "envoy.filters.http.router", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            "routeConfig": {"name": "outbound:one", "virtualHosts": [{"name": "one", "domains": ["*"],
                "routes": [{"match": {"prefix": "/a"}, "route": {"cluster": "one", "timeout": "0s"}}]}]},
            "accessLog": [file_log(&files.http, text(kuma_http_format(&ip))), file_log(&files.json, json_format)],
        }}),
    );
    let tcp_filter = |cluster: &str| {
        json!({"name": "envoy.filters.network.tcp_proxy", "typedConfig": {
            "@type": TCP_PROXY, "statPrefix": cluster, "cluster": cluster,
            "accessLog": [file_log(&files.tcp, text(kuma_tcp_format(&ip)))],
        }})
    };
    let (tcp_name, tcp) = listener(TCP_PORT, tcp_filter("one"));
    let (dead_name, dead) = listener(DEAD_PORT, tcp_filter("dead"));
    let origin = one.ip4().to_string();
    json!({"xds": {
        CLUSTER: {"one": cluster("one", &origin, ORIGIN_PORT), "dead": cluster("dead", &origin, NOBODY_PORT)},
        LISTENER: {http_name: http, tcp_name: tcp, dead_name: dead},
    }})
}

/// The requests: HTTP/1.1 and HTTP/2 through the HTTP outbound, HTTP/1.1 through the TCP
/// outbound, a connection to the dead one.
fn drive(web: &Host) -> Result<()> {
    let http = format!("http://127.0.0.1:{HTTP_PORT}/a?b=1");
    let agent = ["-A", "alog/1", "-H", "x-test: hello"];
    let (code, _) = curl(web, [&http[..], "--http1.1"].iter().chain(&agent))?;
    ensure!(code == 200, "HTTP/1.1: {code}");
    let (code, _) = curl(
        web,
        [&http[..], "--http2-prior-knowledge"].iter().chain(&agent),
    )?;
    ensure!(code == 200, "HTTP/2: {code}");
    let tcp = format!("http://127.0.0.1:{TCP_PORT}/");
    let (code, _) = curl(web, [&tcp[..], "-A", "alog/1"])?;
    ensure!(code == 200, "through TCP: {code}");
    // Refused upstream: the connection is reset (curl reports no status).
    let _ = curl(
        web,
        [
            format!("http://127.0.0.1:{DEAD_PORT}/"),
            "-m".into(),
            "3".into(),
        ],
    );
    Ok(())
}

/// Waits until `path` holds `n` lines; returns them.
fn lines(path: &Path, n: usize) -> Result<Vec<String>> {
    wait_until_ok(Duration::from_secs(20), || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        ensure!(
            lines.len() >= n,
            "{}: {} lines of {n}:\n{text}",
            path.display(),
            lines.len()
        );
        Ok(lines)
    })
}

/// A text line with its times, durations and request id put aside: the start time, the
/// duration and Envoy's upstream service time (HTTP), the `took` (TCP), the request id.
fn normalized(line: &str) -> String {
    let mut words: Vec<String> = line.split(' ').map(str::to_string).collect();
    if let Some(first) = words.first_mut() {
        if first.starts_with('[') {
            *first = "[T]".into();
        }
    }
    if line.contains(" took ") {
        if let Some(i) = words.iter().position(|w| w == "took") {
            words[i + 1] = "Dms,".into();
        }
        return words.join(" ");
    }
    // `... "GET /a?b=1 HTTP/1.1" code flags received sent DURATION SERVICE_TIME "xff" "ua"
    // "trace" "request-id" ...`: from the code on, by position.
    if let Some(code) = words
        .iter()
        .position(|w| w.ends_with('"') && w.starts_with("HTTP/"))
    {
        for i in [code + 5, code + 6] {
            if let Some(w) = words.get_mut(i) {
                *w = "D".into();
            }
        }
        if let Some(w) = words.get_mut(code + 10) {
            *w = "\"ID\"".into();
        }
    }
    words.join(" ")
}

/// A JSON line without its time and duration.
fn normalized_json(line: &str) -> Result<Value> {
    let mut v: Value = serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
    let map = v.as_object_mut().context("not an object")?;
    ensure!(map.remove("start").is_some_and(|s| s.is_string()), "{line}");
    ensure!(map.remove("duration").is_some_and(|d| d.is_u64()), "{line}");
    Ok(v)
}

/// The lines of one server, normalized, in request order (HTTP/1.1 then HTTP/2; the live TCP
/// connection then the dead one).
fn collect(files: &Files) -> Result<(Vec<String>, Vec<Value>, Vec<String>)> {
    let http = lines(&files.http, 2)?;
    let json = lines(&files.json, 2)?;
    let mut tcp = lines(&files.tcp, 2)?;
    // The dead connection's line can come first: order by content.
    tcp.sort_by_key(|l| l.contains("UF"));
    let json = json
        .iter()
        .map(|l| normalized_json(l))
        .collect::<Result<_>>()?;
    Ok((
        http.iter().map(|l| normalized(l)).collect(),
        json,
        tcp.iter().map(|l| normalized(l)).collect(),
    ))
}

#[test]
fn file_access_logs_from_the_cp_are_written_as_envoy_writes_them() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "python3"])?;
    let topo = Topology::new(&["cp", "web", "one"])?;
    let (cp, web, one) = (topo.host("cp"), topo.host("web"), topo.host("one"));
    let pki = CpPki::new(topo.dir(), "cp-alog", cp)?;
    let origin = start_http_server(one, ORIGIN_PORT)?;
    let body_len = origin.body().len();
    let logs = topo.dir().join("logs");
    std::fs::create_dir_all(&logs)?;
    std::os::unix::fs::chown(&logs, Some(KUMA_DP_UID), Some(KUMA_DP_UID))?;
    let files = Files {
        http: logs.join("http.log"),
        json: logs.join("http.json.log"),
        tcp: logs.join("tcp.log"),
    };
    let (_cp, sidecar) = pki.web_sidecar(
        env!("CARGO_BIN_EXE_bearing-test-cp"),
        cp,
        web,
        &resources(one, web, &files),
        "ACK type=Listener",
    )?;
    // A request no route takes: Envoy's `NR`, no upstream.
    let (code, _) = curl(
        web,
        [
            format!("http://127.0.0.1:{HTTP_PORT}/zzz"),
            "-A".into(),
            "alog/1".into(),
        ],
    )?;
    ensure!(code == 404, "no route: {code}");
    let no_route = normalized(&lines(&files.http, 1)?[0]);
    let want = "[T] default \"GET /zzz HTTP/1.1\" 404 NR 0 ";
    ensure!(
        no_route.starts_with(want) && no_route.ends_with(" \"-\""),
        "no route: {no_route}"
    );
    ensure!(lines(&files.json, 1)?[0].contains("\"flags\":\"NR\""));
    // Truncated (the writer appends): the differential's requests start afresh.
    for f in [&files.http, &files.json] {
        std::fs::File::create(f)?;
    }
    drive(web)?;
    let (http, json, tcp) = collect(&files)?;

    // What Bearing wrote, checked field by field.
    let (ip, origin_at) = (web.ip4(), format!("{}:{ORIGIN_PORT}", one.ip4()));
    for (line, proto) in http.iter().zip(["HTTP/1.1", "HTTP/2"]) {
        let want = format!("[T] default \"GET /a?b=1 {proto}\" 200 - 0 {body_len} D D \"-\" \"alog/1\" \"-\" \"ID\" \"127.0.0.1:{HTTP_PORT}\" \"web\" \"one\" \"{ip}\" \"{origin_at}\"");
        ensure!(*line == want, "HTTP line\n  got  {line}\n  want {want}");
    }
    for (v, proto) in json.iter().zip(["HTTP/1.1", "HTTP/2"]) {
        ensure!(
            v["code"] == 200 && v["sent"] == body_len && v["received"] == 0,
            "{v}"
        );
        ensure!(
            v["proto"] == proto && v["method"] == "GET" && v["path"] == "/a?b=1",
            "{v}"
        );
        ensure!(
            v["flags"] == "-" && v["upstream"] == origin_at.as_str(),
            "{v}"
        );
        ensure!(v["cluster"] == "one" && v["test"] == "hello", "{v}");
        ensure!(v["mixed"] == "m=GET t=-", "{v}");
    }
    ensure!(
        tcp[0].starts_with(&format!(
            "[T] - default {ip}(web)->{origin_at}(one) took Dms, sent "
        )),
        "{}",
        tcp[0]
    );
    let dead = format!("{}:{NOBODY_PORT}", one.ip4());
    let want = format!(
        "[T] UF,URX default {ip}(web)->{dead}(one) took Dms, sent 0 bytes, received: 0 bytes"
    );
    ensure!(
        tcp[1] == want,
        "dead TCP line\n  got  {}\n  want {want}",
        tcp[1]
    );

    // Differential: Envoy 1.40 in Bearing's place, fed by the same CP, the same requests.
    sidecar.process().stop(Duration::from_secs(5));
    for f in [&files.http, &files.json, &files.tcp] {
        let _ = std::fs::remove_file(f);
    }
    let access = CpAccess::new(cp, 5678, &pki);
    let _envoy = access.envoy(web, "default", "web")?;
    web.wait_for_tcp_listener(HTTP_PORT, Duration::from_secs(20), None)?;
    drive(web)?;
    // Envoy flushes its access log files every 10 s.
    let (envoy_http, envoy_json, envoy_tcp) = collect(&files)?;
    // Known difference: Envoy's router adds `x-envoy-upstream-service-time`, normalized above.
    ensure!(
        envoy_http == http,
        "HTTP lines\n  envoy   {envoy_http:#?}\n  bearing {http:#?}"
    );
    ensure!(
        envoy_json == json,
        "JSON lines\n  envoy   {envoy_json:#?}\n  bearing {json:#?}"
    );
    ensure!(
        envoy_tcp == tcp,
        "TCP lines\n  envoy   {envoy_tcp:#?}\n  bearing {tcp:#?}"
    );
    Ok(())
}

/// kuma-cp's program copying a route's `route_kri` into the dynamic metadata its
/// MeshAccessLog route filters read (Kuma's `outbound-mix` golden).
const KUMA_LUA: &str = "function envoy_on_request(handle)\n  local meta = handle:metadata():get(\"route_kri\")\n  if meta ~= nil then\n    handle:streamInfo():dynamicMetadata():set(\"kuma.routes\", \"route_kri\", meta)\n  end\nend\n";

/// MeshAccessLog targeting a MeshHTTPRoute beside one targeting its MeshService, as kuma-cp
/// renders them (Kuma's `outbound-mix` golden): its Lua program copies the route's
/// `route_kri`, the route's log filters on it, the service's log on its absence. Requests on
/// the route (over HTTP/1.1 and HTTP/2) go to the route's log only, the others to the
/// service's only, each logging its head as forwarded (without the `x-kuma-tags` the route
/// configuration removes); Envoy 1.40 fed the same resources writes the same lines.
#[test]
fn route_filtered_access_logs_split_requests_as_envoy() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "python3"])?;
    let topo = Topology::new(&["cp", "web", "one"])?;
    let (cp, web, one) = (topo.host("cp"), topo.host("web"), topo.host("one"));
    let pki = CpPki::new(topo.dir(), "cp-alog-route", cp)?;
    start_http_server(one, ORIGIN_PORT)?;
    let logs = topo.dir().join("logs");
    std::fs::create_dir_all(&logs)?;
    std::os::unix::fs::chown(&logs, Some(KUMA_DP_UID), Some(KUMA_DP_UID))?;
    let (service_log, route_log) = (logs.join("service.log"), logs.join("route.log"));
    let kri = "kri_mhttpr_default_zone__test-route_";
    let filtered = |path: &Path, who: &str, value: Value, if_missing: bool| {
        let mut log = file_log(
            path,
            json!({"textFormatSource": {"inlineString": format!("{who} %REQ(:PATH)% %PROTOCOL% %REQ(x-kuma-tags)%\n")}}),
        );
        log["filter"] = json!({"metadataFilter": {"matchIfKeyNotFound": if_missing, "matcher": {
            "filter": "kuma.routes", "path": [{"key": "route_kri"}], "value": value}}});
        log
    };
    let on_route = json!({"filterMetadata": {"envoy.filters.http.lua": {"route_kri": kri}}});
    let (name, http) = listener(
        HTTP_PORT,
        json!({"name": "envoy.filters.network.http_connection_manager", "typedConfig": {
            "@type": HCM,
            "statPrefix": "one",
            "httpFilters": [
                {"name": "envoy.filters.http.lua", "typedConfig": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                    "defaultSourceCode": {"inlineString": KUMA_LUA}}},
                {"name": "envoy.filters.http.router", "typedConfig": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
            ],
            "routeConfig": {"name": "outbound:one", "requestHeadersToRemove": ["x-kuma-tags"],
                "virtualHosts": [{"name": "one", "domains": ["*"], "routes": [
                {"match": {"prefix": "/test"}, "metadata": on_route, "route": {"cluster": "one", "timeout": "0s"}},
                {"match": {"prefix": "/"}, "route": {"cluster": "one", "timeout": "0s"}},
            ]}]},
            "accessLog": [
                filtered(&service_log, "service", json!({"nullMatch": {}}), true),
                filtered(&route_log, "route", json!({"stringMatch": {"exact": kri}}), false),
            ],
        }}),
    );
    let origin = one.ip4().to_string();
    let resources = json!({"xds": {
        CLUSTER: {"one": cluster("one", &origin, ORIGIN_PORT)},
        LISTENER: {name: http},
    }});
    let (cp_process, sidecar) = pki.web_sidecar(
        env!("CARGO_BIN_EXE_bearing-test-cp"),
        cp,
        web,
        &resources,
        "ACK type=Listener",
    )?;
    ensure!(
        !cp_process.log_contents().contains("NACK"),
        "{}",
        cp_process.log_contents()
    );
    let run = || -> Result<(Vec<String>, Vec<String>)> {
        for f in [&service_log, &route_log] {
            std::fs::File::create(f)?;
            std::os::unix::fs::chown(f, Some(KUMA_DP_UID), Some(KUMA_DP_UID))?;
        }
        for (path, proto) in [
            ("/test/a", "--http1.1"),
            ("/", "--http1.1"),
            ("/test/b", "--http2-prior-knowledge"),
            ("/x", "--http2-prior-knowledge"),
        ] {
            let url = format!("http://127.0.0.1:{HTTP_PORT}{path}");
            let tags = "x-kuma-tags: &kuma.io/service=web&";
            let (code, _) = curl(web, [url, proto.into(), "-H".into(), tags.into()])?;
            ensure!(code == 200, "{path}: {code}");
        }
        Ok((lines(&service_log, 2)?, lines(&route_log, 2)?))
    };
    let bearing = run()?;
    ensure!(
        bearing.0 == ["service / HTTP/1.1 -", "service /x HTTP/2 -"]
            && bearing.1 == ["route /test/a HTTP/1.1 -", "route /test/b HTTP/2 -"],
        "{bearing:?}"
    );

    // Differential: Envoy 1.40 in Bearing's place, the same resources from the same CP.
    sidecar.process().stop(Duration::from_secs(5));
    let access = CpAccess::new(cp, 5678, &pki);
    let _envoy = access.envoy(web, "default", "web")?;
    web.wait_for_tcp_listener(HTTP_PORT, Duration::from_secs(20), None)
        .context("Envoy's listener")?;
    let envoy = run()?;
    ensure!(envoy == bearing, "envoy {envoy:?}\nbearing {bearing:?}");
    Ok(())
}

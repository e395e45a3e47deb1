//! Formats rendered as Envoy 1.40 renders them (the expected lines were Envoy's for the same
//! format and request).

use super::*;

/// Headers from a list of (lowercase name, value).
struct List(&'static [(&'static str, &'static str)]);

impl HeaderSource for List {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_bytes())
    }
}

/// The same list, walked once for the names a format reads (as the proxy's heads are), its
/// names in capitals (fields match whatever their case).
struct Walked(List, Vec<(String, &'static str)>);

impl Walked {
    fn new(list: List) -> Walked {
        let upper = list
            .0
            .iter()
            .map(|(n, v)| (n.to_ascii_uppercase(), *v))
            .collect();
        Walked(list, upper)
    }
}

impl HeaderSource for Walked {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0.header(name)
    }

    fn fields<'s>(&'s self, f: &mut dyn FnMut(&'s [u8], &'s [u8])) -> bool {
        for (n, v) in &self.1 {
            f(n.as_bytes(), v.as_bytes());
        }
        true
    }
}

const REQUEST: List = List(&[
    (":method", "GET"),
    (":path", "/"),
    (":authority", "127.0.0.1:18080"),
    ("user-agent", "ua/1"),
    ("x-test", "hello"),
    ("x-long", "abcdef"),
]);
const RESPONSE: List = List(&[("content-type", "text/html; charset=utf-8")]);

/// 2026-12-02T20:34:25.922Z.
fn start() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_796_243_665_922)
}

fn entry() -> Entry<'static> {
    Entry {
        route_kri: None,
        start: start(),
        duration: Duration::from_micros(7_400),
        protocol: Some("HTTP/1.1"),
        response_code: 200,
        flags: ResponseFlags::default(),
        bytes_received: 0,
        bytes_sent: 701,
        upstream_host: Some("127.0.0.1:18090".parse().unwrap()),
        upstream_cluster: Some("up"),
        downstream_remote: "127.0.0.1:57314".parse().unwrap(),
        downstream_local: "127.0.0.1:18080".parse().unwrap(),
        request: &REQUEST,
        response: &RESPONSE,
    }
}

fn text(format: &str, omit: bool, e: &Entry<'_>) -> String {
    let f = LogFormat::text(format, omit).unwrap();
    let mut out = Vec::new();
    f.render(e, &mut out);
    String::from_utf8(out).unwrap()
}

fn json(fields: &[(&str, &str)], omit: bool, e: &Entry<'_>) -> String {
    let fields = fields
        .iter()
        .map(|(k, v)| (k.to_string(), JsonSource::Template(v.to_string())))
        .collect();
    let f = LogFormat::json(fields, omit).unwrap();
    let mut out = Vec::new();
    f.render(e, &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn kumas_default_http_format_renders_as_envoy() {
    let line = text(ENVOY_DEFAULT_FORMAT, false, &entry());
    assert_eq!(
        line,
        "[2026-12-02T20:34:25.922Z] \"GET / HTTP/1.1\" 200 - 0 701 7 - \"-\" \"ua/1\" \"-\" \"127.0.0.1:18080\" \"127.0.0.1:18090\"\n"
    );
}

#[test]
fn operators_arguments_limits_and_escapes() {
    let f = "%UPSTREAM_CLUSTER% %DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %REQ(X-LONG):3% %RESP(CONTENT-TYPE)% %START_TIME(%s)% %START_TIME(%Y/%m/%d %H:%M:%S.%3f %z)% %%lit %REQ(X-NONE?X-TeSt)%";
    assert_eq!(
        text(f, false, &entry()),
        "up 127.0.0.1:57314 127.0.0.1:18080 127.0.0.1 abc text/html; charset=utf-8 1796243665 2026/12/02 20:34:25.922 +0000 %lit hello"
    );
}

#[test]
fn missing_values_are_dashes_or_empty_when_omitted() {
    let mut e = entry();
    e.upstream_host = None;
    let f = "a=%REQ(X-NONE)% b=%RESPONSE_CODE% c=%UPSTREAM_HOST%\n";
    assert_eq!(text(f, false, &e), "a=- b=200 c=-\n");
    assert_eq!(text(f, true, &e), "a= b=200 c=\n");
}

#[test]
fn json_values_keep_their_type_and_keys_come_sorted() {
    let mut e = entry();
    e.upstream_host = None;
    let fields = [
        ("zeta", "%RESPONSE_CODE%"),
        ("alpha", "%REQ(X-TEST)%"),
        ("mid", "code=%RESPONSE_CODE% h=%REQ(X-NONE)%"),
        ("dur", "%DURATION%"),
        ("flags", "%RESPONSE_FLAGS%"),
        ("up", "%UPSTREAM_HOST%"),
        ("st", "%START_TIME(%s)%"),
        ("lit", "plain \"q\""),
    ];
    assert_eq!(
        json(&fields, false, &e),
        "{\"alpha\":\"hello\",\"dur\":7,\"flags\":\"-\",\"lit\":\"plain \\\"q\\\"\",\"mid\":\"code=200 h=-\",\"st\":\"1796243665\",\"up\":null,\"zeta\":200}\n"
    );
    let omitted = [
        ("a", "%REQ(X-NONE)%"),
        ("b", "%RESPONSE_CODE%"),
        ("c", "x%REQ(X-NONE)%"),
    ];
    assert_eq!(json(&omitted, true, &e), "{\"b\":200,\"c\":\"x\"}\n");
}

#[test]
fn a_tcp_connection_has_no_protocol_code_or_headers() {
    let mut e = entry();
    (e.protocol, e.response_code, e.request, e.response) = (None, 0, &NoHeaders, &NoHeaders);
    e.flags.insert(ResponseFlags::RETRY_LIMIT_EXCEEDED);
    e.flags.insert(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
    assert_eq!(
        text(
            "%PROTOCOL% %RESPONSE_CODE% %REQ(:METHOD)% %RESPONSE_FLAGS%",
            false,
            &e
        ),
        "- 0 - UF,URX"
    );
    let fields = [
        ("code", "%RESPONSE_CODE%"),
        ("m", "%REQ(:METHOD)%"),
        ("proto", "%PROTOCOL%"),
    ];
    assert_eq!(
        json(&fields, false, &e),
        "{\"code\":0,\"m\":null,\"proto\":null}\n"
    );
}

#[test]
fn formats_envoy_refuses_or_bearing_does_not_render_are_errors() {
    // kuma-cp's `%%KUMA_SOURCE_SERVICE%%` interpolated: Envoy 1.40 refuses the listener.
    let e = LogFormat::text("%demo-client%", false).unwrap_err();
    assert!(e.0.contains("no valid command at position 0"), "{e}");
    let e = LogFormat::text("[%UPSTREAM_TRANSPORT_FAILURE_REASON%]", false).unwrap_err();
    assert!(e.0.contains("%UPSTREAM_TRANSPORT_FAILURE_REASON%"), "{e}");
    assert!(LogFormat::text("%REQ()%", false).is_err());
    assert!(LogFormat::text("%START_TIME(%Q)%", false).is_err());
    assert!(LogFormat::text("%PROTOCOL:3%", false).is_err());
    assert!(LogFormat::text("100%", false).is_err());
    assert!(LogFormat::text("100%%", false).is_ok());
}

#[test]
fn calendar_arithmetic_round_trips() {
    for days in [-719_468, -1, 0, 59, 365, 10_957, 20_789, 2_932_896] {
        let (y, m, d) = civil_from_days(days);
        assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
    }
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    let mut out = Vec::new();
    write_time(&time_format("%F %T %j %y").unwrap(), start(), &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "2026-12-02 20:34:25 336 26"
    );
    for (n, width, want) in [
        (45, 3, "045"),
        (0, 1, "0"),
        (12_345, 2, "12345"),
        (7, 4, "0007"),
    ] {
        let mut out = Vec::new();
        digits(n, width, &mut out);
        assert_eq!(out, want.as_bytes());
    }
}

#[test]
fn headers_gathered_in_one_pass_read_as_looked_up_one_by_one() {
    let walked = Walked::new(List(REQUEST.0));
    let f = "%REQ(:METHOD)% %REQ(:PATH)% %REQ(X-TEST)% %REQ(X-NONE?USER-AGENT)% %REQ(x-long):2% %REQ(X-NONE)% %RESP(CONTENT-TYPE)% %REQ(:AUTHORITY)%";
    let mut e = entry();
    let by_lookup = text(f, false, &e);
    e.request = &walked;
    assert_eq!(text(f, false, &e), by_lookup);
    assert_eq!(
        by_lookup,
        "GET / hello ua/1 ab - text/html; charset=utf-8 127.0.0.1:18080"
    );
    let names = LogFormat::text(f, false).unwrap().names;
    assert_eq!(names.request, ["x-test", "x-none", "user-agent", "x-long"]);
    assert_eq!(names.response, ["content-type"]);
}

/// kuma-cp's MeshAccessLog filters: a log of the service's requests not on a MeshHTTPRoute
/// (`null_match`, logged where the key is missing), and one of the route's (`exact`, not
/// logged where missing), read as Envoy's metadata filter reads them.
#[test]
fn route_filters_log_by_the_routes_kri_as_envoys_metadata_filter() {
    let filter = |value, if_key_not_found| LogFilter {
        namespace: "kuma.routes".into(),
        path: vec!["route_kri".into()],
        value,
        if_key_not_found,
    };
    let kri = "kri_mhttpr_envoyconfig_kuma-3__test-route_";
    let not_routed = filter(MetadataValueMatch::Null, true);
    assert!(not_routed.admits(None));
    assert!(!not_routed.admits(Some(kri)));
    let routed = filter(MetadataValueMatch::Exact(kri.into()), false);
    assert!(routed.admits(Some(kri)));
    assert!(!routed.admits(Some("kri_mhttpr_other")));
    assert!(!routed.admits(None));
    assert!(filter(MetadataValueMatch::Present(true), false).admits(Some(kri)));
    assert!(!filter(MetadataValueMatch::Present(false), true).admits(Some(kri)));
    assert!(filter(MetadataValueMatch::Prefix("kri_mhttpr_".into()), false).admits(Some(kri)));
    // Bearing's requests carry no other dynamic metadata: another key is never found.
    let other = LogFilter {
        namespace: "envoy.lb".into(),
        ..filter(MetadataValueMatch::Exact(kri.into()), true)
    };
    assert!(other.admits(Some(kri)));
    assert!(!LogFilter {
        if_key_not_found: false,
        ..other
    }
    .admits(Some(kri)));
}

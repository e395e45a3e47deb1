//! Builtin gateway resources: `MeshGateway` (listeners) and `MeshGatewayRoute` (routes), as
//! Kuma's `gateway.proto` and `gateway_route.proto` define them, with their validation.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::resources::{DataSource, Selector, Tags, SERVICE_TAG};
use crate::validate::{data_source, port, tags, FieldProblem};

/// `type: MeshGateway`: the listeners of the builtin gateways its selectors match.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshGateway {
    /// Gateway Dataplanes it configures (by their gateway tags).
    #[serde(default)]
    pub selectors: Vec<Selector>,
    /// Tags added to every listener's tags.
    #[serde(default)]
    pub tags: Tags,
    /// Listeners.
    #[serde(default)]
    pub conf: MeshGatewayConf,
}

/// `MeshGateway.conf`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshGatewayConf {
    /// The listeners.
    #[serde(default)]
    pub listeners: Vec<MeshGatewayListener>,
}

/// One listener of a MeshGateway.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshGatewayListener {
    /// Host this listener serves: exact, `*.` wildcard, or `*` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Port to listen on.
    #[serde(default)]
    pub port: u32,
    /// `HTTP`, `HTTPS`, `TCP` or `TLS`.
    #[serde(default)]
    pub protocol: String,
    /// TLS settings (HTTPS and TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<MeshGatewayTls>,
    /// Listener tags; routes select listeners by them.
    #[serde(default)]
    pub tags: Tags,
    /// Reachable from other meshes' sidecars over their mTLS (HTTP only).
    #[serde(default)]
    pub cross_mesh: bool,
    /// Limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ListenerResources>,
}

/// `listeners[].tls`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshGatewayTls {
    /// `TERMINATE` (default) or `PASSTHROUGH` (TLS listeners only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Certificates: each a PEM holding the private key and the certificate chain.
    #[serde(default)]
    pub certificates: Vec<DataSource>,
    /// TLS options: accepted, not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Value>,
}

impl MeshGatewayTls {
    /// Whether the TLS is passed through rather than terminated.
    pub fn passthrough(&self) -> bool {
        self.mode.as_deref() == Some("PASSTHROUGH")
    }
}

/// `listeners[].resources`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerResources {
    /// Most connections open at once on the listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_limit: Option<u32>,
}

/// `type: MeshGatewayRoute`: routes attached to the gateway listeners its selectors match.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshGatewayRoute {
    /// Listeners it attaches to (by listener tags).
    #[serde(default)]
    pub selectors: Vec<Selector>,
    /// HTTP or TCP routing.
    #[serde(default)]
    pub conf: MeshGatewayRouteConf,
}

/// `MeshGatewayRoute.conf`: exactly one of `http` and `tcp`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshGatewayRouteConf {
    /// HTTP routing (HTTP and HTTPS listeners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRouteConf>,
    /// TCP routing (TCP and TLS listeners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpRouteConf>,
}

/// `conf.http`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteConf {
    /// Hosts the rules apply to (narrowing the listener's hostname); all when empty.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules.
    #[serde(default)]
    pub rules: Vec<HttpRule>,
}

/// One HTTP rule: any of its matches selects it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRule {
    /// Alternatives; at least one.
    #[serde(default)]
    pub matches: Vec<HttpRuleMatch>,
    /// Changes and redirects.
    #[serde(default)]
    pub filters: Vec<HttpFilter>,
    /// Weighted destinations (none with a redirect).
    #[serde(default)]
    pub backends: Vec<RouteBackend>,
}

/// Conditions on a request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRuleMatch {
    /// On the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<ValueCondition>,
    /// HTTP method (`GET`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// On headers.
    #[serde(default)]
    pub headers: Vec<NamedCondition>,
    /// On query parameters.
    #[serde(default)]
    pub query_parameters: Vec<NamedCondition>,
}

/// A path condition: `match` (`EXACT` default, `PREFIX`, `REGEX`) and `value`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueCondition {
    /// Kind of match.
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Value compared.
    #[serde(default)]
    pub value: String,
}

/// A header or query condition: `match` (`EXACT` default, `REGEX`, `ABSENT`, `PRESENT`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamedCondition {
    /// Kind of match.
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Header or parameter name.
    #[serde(default)]
    pub name: String,
    /// Value compared (EXACT, REGEX).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// One filter: exactly one field set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFilter {
    /// Request header changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header: Option<HeaderChanges>,
    /// Response header changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header: Option<HeaderChanges>,
    /// Answer with a redirect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectFilter>,
    /// Rewrite path or host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<RewriteFilter>,
    /// Copy requests to another backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorFilter>,
}

/// `requestHeader` / `responseHeader`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderChanges {
    /// Replace these.
    #[serde(default)]
    pub set: Vec<HeaderPair>,
    /// Append these.
    #[serde(default)]
    pub add: Vec<HeaderPair>,
    /// Remove these names.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderPair {
    /// Name.
    pub name: String,
    /// Value.
    #[serde(default)]
    pub value: String,
}

/// `redirect`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedirectFilter {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// New host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// New port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// 301, 302 (default), 303, 307 or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u32>,
    /// New path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathChange>,
}

/// A path change: one of the two.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathChange {
    /// The whole path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full: Option<String>,
    /// The part a PREFIX match matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

/// `rewrite`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RewriteFilter {
    /// The whole path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full: Option<String>,
    /// The part a PREFIX match matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
    /// Host becomes the backend's hostname.
    #[serde(default)]
    pub host_to_backend_hostname: bool,
}

/// `mirror`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorFilter {
    /// Where copies go.
    #[serde(default)]
    pub backend: RouteBackend,
    /// Share of requests copied, 0-100 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<f64>,
}

/// A weighted destination.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteBackend {
    /// Relative weight (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Tags of the destination; `kuma.io/service` is required.
    #[serde(default)]
    pub destination: Tags,
}

/// `conf.tcp`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRouteConf {
    /// Rules (backends only).
    #[serde(default)]
    pub rules: Vec<TcpRule>,
}

/// A TCP rule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRule {
    /// Weighted destinations.
    #[serde(default)]
    pub backends: Vec<RouteBackend>,
}

const PROTOCOLS: [&str; 4] = ["HTTP", "HTTPS", "TCP", "TLS"];
const REDIRECT_CODES: [u32; 5] = [301, 302, 303, 307, 308];

fn selectors(list: &[Selector], p: &mut Vec<FieldProblem>) {
    if list.is_empty() {
        p.push(("selectors".into(), "must have at least one element".into()));
    }
    for (i, s) in list.iter().enumerate() {
        let at = format!("selectors[{i}].match");
        if s.match_tags.is_empty() {
            p.push((at.clone(), "must have at least one tag".into()));
        }
        tags(&s.match_tags, &at, false, p);
    }
}

/// A listener or route hostname: a DNS name, optionally under `*.`, or `*`.
fn hostname(h: &str, at: &str, p: &mut Vec<FieldProblem>) {
    let name = h.strip_prefix("*.").unwrap_or(h);
    if h != "*" && !crate::validate::is_dns_name(name) {
        p.push((
            at.into(),
            format!("{h:?} is not a hostname (name, *.name or *)"),
        ));
    }
}

/// Checks a MeshGateway.
pub fn validate_mesh_gateway(gw: &MeshGateway, p: &mut Vec<FieldProblem>) {
    selectors(&gw.selectors, p);
    tags(&gw.tags, "tags", false, p);
    if gw.conf.listeners.is_empty() {
        p.push((
            "conf.listeners".into(),
            "must have at least one element".into(),
        ));
    }
    for (i, l) in gw.conf.listeners.iter().enumerate() {
        let at = format!("conf.listeners[{i}]");
        port(l.port, &format!("{at}.port"), p);
        if !PROTOCOLS.contains(&l.protocol.as_str()) {
            p.push((
                format!("{at}.protocol"),
                format!("{:?} must be one of HTTP, HTTPS, TCP, TLS", l.protocol),
            ));
        }
        if let Some(h) = &l.hostname {
            hostname(h, &format!("{at}.hostname"), p);
        }
        tags(&l.tags, &format!("{at}.tags"), false, p);
        let needs_tls = matches!(l.protocol.as_str(), "HTTPS" | "TLS");
        match (&l.tls, needs_tls) {
            (None, true) => p.push((format!("{at}.tls"), "has to be defined".into())),
            (Some(_), false) => p.push((
                format!("{at}.tls"),
                format!("is not allowed with protocol {}", l.protocol),
            )),
            (Some(tls), true) => {
                let mode = tls.mode.as_deref().unwrap_or("TERMINATE");
                match mode {
                    "TERMINATE" if tls.certificates.is_empty() => p.push((
                        format!("{at}.tls.certificates"),
                        "must have at least one element".into(),
                    )),
                    "TERMINATE" => {}
                    "PASSTHROUGH" if l.protocol == "TLS" => {}
                    "PASSTHROUGH" => p.push((
                        format!("{at}.tls.mode"),
                        "PASSTHROUGH is only allowed on TLS listeners".into(),
                    )),
                    other => p.push((
                        format!("{at}.tls.mode"),
                        format!("{other:?} must be TERMINATE or PASSTHROUGH"),
                    )),
                }
                for (j, c) in tls.certificates.iter().enumerate() {
                    data_source(c, &format!("{at}.tls.certificates[{j}]"), p);
                }
            }
            (None, false) => {}
        }
        if l.cross_mesh {
            if l.protocol != "HTTP" {
                p.push((
                    format!("{at}.crossMesh"),
                    "cross-mesh listeners support only HTTP".into(),
                ));
            }
            if gw.selectors.len() != 1 {
                p.push((
                    "selectors".into(),
                    "a MeshGateway with a crossMesh listener must have exactly one selector".into(),
                ));
            }
        }
        if let Some(0) = l.resources.as_ref().and_then(|r| r.connection_limit) {
            p.push((
                format!("{at}.resources.connectionLimit"),
                "must be greater than 0".into(),
            ));
        }
    }
}

/// Checks a MeshGatewayRoute.
pub fn validate_mesh_gateway_route(route: &MeshGatewayRoute, p: &mut Vec<FieldProblem>) {
    selectors(&route.selectors, p);
    match (&route.conf.http, &route.conf.tcp) {
        (Some(http), None) => http_conf(http, p),
        (None, Some(tcp)) => {
            if tcp.rules.is_empty() {
                p.push((
                    "conf.tcp.rules".into(),
                    "must have at least one element".into(),
                ));
            }
            for (i, r) in tcp.rules.iter().enumerate() {
                backends(
                    &r.backends,
                    &format!("conf.tcp.rules[{i}].backends"),
                    true,
                    p,
                );
            }
        }
        _ => p.push((
            "conf".into(),
            "must have exactly one of http and tcp".into(),
        )),
    }
}

fn http_conf(http: &HttpRouteConf, p: &mut Vec<FieldProblem>) {
    for (i, h) in http.hostnames.iter().enumerate() {
        hostname(h, &format!("conf.http.hostnames[{i}]"), p);
    }
    if http.rules.is_empty() {
        p.push((
            "conf.http.rules".into(),
            "must have at least one element".into(),
        ));
    }
    for (i, rule) in http.rules.iter().enumerate() {
        let at = format!("conf.http.rules[{i}]");
        if rule.matches.is_empty() {
            p.push((
                format!("{at}.matches"),
                "must have at least one element".into(),
            ));
        }
        let mut prefix_only = true;
        for (j, m) in rule.matches.iter().enumerate() {
            let mat = format!("{at}.matches[{j}]");
            match &m.path {
                Some(path) => {
                    let kind = path.kind.as_deref().unwrap_or("EXACT");
                    prefix_only &= kind == "PREFIX";
                    path_condition(kind, &path.value, &format!("{mat}.path"), p);
                }
                None => prefix_only = false,
            }
            if let Some(method) = &m.method {
                if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                    p.push((
                        format!("{mat}.method"),
                        format!("{method:?} is not an HTTP method"),
                    ));
                }
            }
            for (k, h) in m.headers.iter().enumerate() {
                named(
                    h,
                    &["EXACT", "REGEX", "ABSENT", "PRESENT"],
                    &format!("{mat}.headers[{k}]"),
                    p,
                );
            }
            for (k, q) in m.query_parameters.iter().enumerate() {
                named(
                    q,
                    &["EXACT", "REGEX"],
                    &format!("{mat}.queryParameters[{k}]"),
                    p,
                );
            }
        }
        let mut redirect = false;
        for (j, f) in rule.filters.iter().enumerate() {
            let fat = format!("{at}.filters[{j}]");
            let set = [
                f.request_header.is_some(),
                f.response_header.is_some(),
                f.redirect.is_some(),
                f.rewrite.is_some(),
                f.mirror.is_some(),
            ];
            if set.iter().filter(|s| **s).count() != 1 {
                p.push((fat.clone(), "must set exactly one filter".into()));
            }
            for (name, changes) in [
                ("requestHeader", &f.request_header),
                ("responseHeader", &f.response_header),
            ] {
                if let Some(c) = changes {
                    header_changes(c, &format!("{fat}.{name}"), p);
                }
            }
            if let Some(r) = &f.redirect {
                redirect = true;
                if let Some(s) = &r.scheme {
                    if s != "http" && s != "https" {
                        p.push((
                            format!("{fat}.redirect.scheme"),
                            format!("{s:?} must be http or https"),
                        ));
                    }
                }
                if let Some(h) = &r.hostname {
                    hostname(h, &format!("{fat}.redirect.hostname"), p);
                }
                if let Some(port_value) = r.port {
                    port(port_value, &format!("{fat}.redirect.port"), p);
                }
                if let Some(code) = r.status_code.filter(|c| !REDIRECT_CODES.contains(c)) {
                    p.push((
                        format!("{fat}.redirect.statusCode"),
                        format!("{code} must be one of 301, 302, 303, 307, 308"),
                    ));
                }
                if let Some(path) = &r.path {
                    path_change(
                        &path.replace_full,
                        &path.replace_prefix_match,
                        prefix_only,
                        &format!("{fat}.redirect.path"),
                        p,
                    );
                }
            }
            if let Some(rw) = &f.rewrite {
                let given = rw.replace_full.is_some() || rw.replace_prefix_match.is_some();
                if !given && !rw.host_to_backend_hostname {
                    p.push((
                        format!("{fat}.rewrite"),
                        "must set replaceFull, replacePrefixMatch or hostToBackendHostname".into(),
                    ));
                }
                path_change(
                    &rw.replace_full,
                    &rw.replace_prefix_match,
                    prefix_only,
                    &format!("{fat}.rewrite"),
                    p,
                );
            }
            if let Some(m) = &f.mirror {
                backends(
                    std::slice::from_ref(&m.backend),
                    &format!("{fat}.mirror.backend"),
                    false,
                    p,
                );
                if let Some(pct) = m.percentage.filter(|v| !(0.0..=100.0).contains(v)) {
                    p.push((
                        format!("{fat}.mirror.percentage"),
                        format!("{pct} must be between 0 and 100"),
                    ));
                }
            }
        }
        match (redirect, rule.backends.is_empty()) {
            (true, false) => p.push((
                format!("{at}.backends"),
                "must be empty with a redirect filter".into(),
            )),
            (false, true) => p.push((
                format!("{at}.backends"),
                "must have at least one element".into(),
            )),
            (true, true) => {}
            (false, false) => backends(&rule.backends, &format!("{at}.backends"), true, p),
        }
    }
}

fn path_condition(kind: &str, value: &str, at: &str, p: &mut Vec<FieldProblem>) {
    match kind {
        "EXACT" | "PREFIX" if !value.starts_with('/') => p.push((
            format!("{at}.value"),
            format!("{value:?} must start with '/'"),
        )),
        "EXACT" | "PREFIX" => {}
        "REGEX" => regex(value, &format!("{at}.value"), p),
        other => p.push((
            format!("{at}.match"),
            format!("{other:?} must be EXACT, PREFIX or REGEX"),
        )),
    }
}

fn named(c: &NamedCondition, kinds: &[&str], at: &str, p: &mut Vec<FieldProblem>) {
    if c.name.is_empty() {
        p.push((format!("{at}.name"), "has to be defined".into()));
    }
    let kind = c.kind.as_deref().unwrap_or("EXACT");
    if !kinds.contains(&kind) {
        p.push((
            format!("{at}.match"),
            format!("{kind:?} must be one of {}", kinds.join(", ")),
        ));
        return;
    }
    match (kind, &c.value) {
        ("EXACT" | "REGEX", None) => p.push((format!("{at}.value"), "has to be defined".into())),
        ("REGEX", Some(v)) => regex(v, &format!("{at}.value"), p),
        _ => {}
    }
}

fn regex(pattern: &str, at: &str, p: &mut Vec<FieldProblem>) {
    if let Err(e) = regex::Regex::new(pattern) {
        p.push((at.into(), format!("invalid regular expression: {e}")));
    }
}

fn header_changes(c: &HeaderChanges, at: &str, p: &mut Vec<FieldProblem>) {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-!#$%&'*+.^_`|~".contains(&b))
    };
    for (kind, pairs) in [("set", &c.set), ("add", &c.add)] {
        for (i, h) in pairs.iter().enumerate() {
            if !valid_name(&h.name) {
                p.push((
                    format!("{at}.{kind}[{i}].name"),
                    format!("{:?} is not a header name", h.name),
                ));
            }
            if h.value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                p.push((
                    format!("{at}.{kind}[{i}].value"),
                    "must not contain CR, LF or NUL".into(),
                ));
            }
        }
    }
    for (i, n) in c.remove.iter().enumerate() {
        if !valid_name(n) {
            p.push((
                format!("{at}.remove[{i}]"),
                format!("{n:?} is not a header name"),
            ));
        }
    }
}

fn path_change(
    full: &Option<String>,
    prefix: &Option<String>,
    prefix_only: bool,
    at: &str,
    p: &mut Vec<FieldProblem>,
) {
    match (full, prefix) {
        (Some(_), Some(_)) => p.push((
            at.into(),
            "replaceFull and replacePrefixMatch are exclusive".into(),
        )),
        (Some(v), None) | (None, Some(v)) if !v.starts_with('/') => {
            p.push((at.into(), format!("{v:?} must start with '/'")))
        }
        (None, Some(_)) if !prefix_only => p.push((
            format!("{at}.replacePrefixMatch"),
            "needs every match of the rule to be a PREFIX path match".into(),
        )),
        _ => {}
    }
}

fn backends(list: &[RouteBackend], at: &str, required: bool, p: &mut Vec<FieldProblem>) {
    if required && list.is_empty() {
        p.push((at.into(), "must have at least one element".into()));
    }
    for (i, b) in list.iter().enumerate() {
        let bat = if required {
            format!("{at}[{i}]")
        } else {
            at.to_string()
        };
        if !b.destination.contains_key(SERVICE_TAG) {
            p.push((
                format!("{bat}.destination"),
                format!("must have the tag {SERVICE_TAG}"),
            ));
        }
        tags(&b.destination, &format!("{bat}.destination"), false, p);
    }
}

#[cfg(test)]
mod tests {
    use crate::Store;
    use std::path::Path;

    fn problems(text: &str) -> Vec<String> {
        let mut s = Store::default();
        s.add_text(text, Path::new("gw.yaml"));
        s.problems.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn listener_problems_name_file_line_and_field() {
        let p = problems("type: MeshGateway\nmesh: default\nname: gw\nselectors: [{match: {kuma.io/service: gw}}]\nconf:\n  listeners:\n  - {port: 0, protocol: HTTP}\n  - {port: 443, protocol: HTTPS}\n  - {port: 80, protocol: UDP, hostname: 'bad name'}\n  - {port: 81, protocol: HTTP, tls: {mode: PASSTHROUGH}}\n");
        let want = [
            "gw.yaml:7: MeshGateway/gw: conf.listeners[0].port: port 0 must be in the range 1-65535",
            "gw.yaml:6: MeshGateway/gw: conf.listeners[1].tls: has to be defined",
            "gw.yaml:9: MeshGateway/gw: conf.listeners[2].protocol: \"UDP\" must be one of HTTP, HTTPS, TCP, TLS",
            "gw.yaml:9: MeshGateway/gw: conf.listeners[2].hostname: \"bad name\" is not a hostname (name, *.name or *)",
            "gw.yaml:10: MeshGateway/gw: conf.listeners[3].tls: is not allowed with protocol HTTP",
        ];
        for w in want {
            assert!(p.iter().any(|x| x == w), "missing {w:?} in {p:#?}");
        }
    }

    #[test]
    fn route_problems_name_file_line_and_field() {
        let p = problems("type: MeshGatewayRoute\nmesh: default\nname: r\nselectors: [{match: {port: http}}]\nconf:\n  http:\n    rules:\n    - matches: [{path: {match: EXACT, value: api}, headers: [{match: REGEX, name: x, value: '('}]}]\n      filters:\n      - redirect: {statusCode: 200}\n      - rewrite: {replacePrefixMatch: /x}\n      backends: [{destination: {version: v1}}]\n");
        let want = [
            "8: MeshGatewayRoute/r: conf.http.rules[0].matches[0].path.value: \"api\" must start with '/'",
            "8: MeshGatewayRoute/r: conf.http.rules[0].matches[0].headers[0].value: invalid regular expression",
            "10: MeshGatewayRoute/r: conf.http.rules[0].filters[0].redirect.statusCode: 200 must be one of 301, 302, 303, 307, 308",
            "11: MeshGatewayRoute/r: conf.http.rules[0].filters[1].rewrite.replacePrefixMatch: needs every match of the rule to be a PREFIX path match",
            "12: MeshGatewayRoute/r: conf.http.rules[0].backends: must be empty with a redirect filter",
        ];
        for w in want {
            assert!(
                p.iter().any(|x| x.starts_with("gw.yaml:") && x.contains(w)),
                "missing {w:?} in {p:#?}"
            );
        }
        let tcp = problems("type: MeshGatewayRoute\nmesh: default\nname: t\nselectors: [{match: {port: tcp}}]\nconf:\n  tcp:\n    rules:\n    - backends: [{destination: {version: v1}}]\n");
        assert!(
            tcp.iter().any(|x| x.contains(
                "conf.tcp.rules[0].backends[0].destination: must have the tag kuma.io/service"
            )),
            "{tcp:#?}"
        );
    }
}

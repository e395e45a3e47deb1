//! Semantic validation of resources, reporting each problem against a field path.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::resources::*;

/// A problem found in one field of a resource: `(field path, message)`.
pub type FieldProblem = (String, String);

/// Checks one resource's spec; an empty result means it is valid.
pub fn validate(spec: &Spec) -> Vec<FieldProblem> {
    let mut p = Vec::new();
    match spec {
        Spec::Mesh(m) => mesh(m, &mut p),
        Spec::Dataplane(dp) => dataplane(dp, &mut p),
        Spec::ZoneIngress(zi) => zone_proxy(&zi.networking, &mut p),
        Spec::ZoneEgress(ze) => zone_proxy(&ze.networking, &mut p),
        Spec::ExternalService(es) => external_service(es, &mut p),
        Spec::Secret(s) => secret(s, &mut p),
        Spec::VirtualOutbound(vo) => virtual_outbound(vo, &mut p),
        Spec::MeshService(ms) => mesh_service(ms, &mut p),
        Spec::MeshGateway(gw) => crate::gateway::validate_mesh_gateway(gw, &mut p),
        Spec::MeshGatewayRoute(r) => crate::gateway::validate_mesh_gateway_route(r, &mut p),
        Spec::HostnameGenerator(hg) => {
            if let Err(e) = crate::gotemplate::Template::parse(&hg.spec.template) {
                p.push((
                    "spec.template".into(),
                    format!("template does not parse: {e}"),
                ));
            } else if hg.spec.template.is_empty() {
                p.push(("spec.template".into(), "has to be defined".into()));
            }
        }
    }
    p
}

/// Checks a resource name as Kuma does for Universal resources.
pub fn validate_name(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > 253 {
        return Some("must be at most 253 characters".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Some(format!(
            "{name:?} may only contain lowercase letters, digits, '-', '.' and '_'"
        ));
    }
    None
}

pub(crate) fn port(value: u32, path: &str, p: &mut Vec<FieldProblem>) {
    if !(1..=65535).contains(&value) {
        p.push((
            path.into(),
            format!("port {value} must be in the range 1-65535"),
        ));
    }
}

fn ip(value: &str, path: &str, p: &mut Vec<FieldProblem>) {
    if value.parse::<IpAddr>().is_err() {
        p.push((path.into(), format!("{value:?} is not an IP address")));
    }
}

fn address(value: &str, path: &str, p: &mut Vec<FieldProblem>) {
    if value.is_empty() {
        p.push((path.into(), "must not be empty".into()));
    } else if value.parse::<IpAddr>().is_err() && !is_hostname(value) {
        p.push((
            path.into(),
            format!("{value:?} is neither an IP address nor a hostname"),
        ));
    }
}

/// A plain hostname (ExternalService hosts, addresses): a DNS name without `_` or a
/// trailing dot, at most 253 bytes.
fn is_hostname(value: &str) -> bool {
    value.len() <= 253 && !value.ends_with('.') && !value.contains('_') && is_dns_name(value)
}

/// Whether `s` is a DNS name as Kuma checks it (govalidator's IsDNSName): labels of letters,
/// digits, `-` and `_`, not starting or ending with `-`, at most 63 bytes each and 255 in all;
/// an optional trailing dot.
pub fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > 255 {
        return false;
    }
    s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

pub(crate) fn tags(tags: &Tags, path: &str, require_service: bool, p: &mut Vec<FieldProblem>) {
    if require_service && tags.get(SERVICE_TAG).is_none_or(|s| s.is_empty()) {
        p.push((
            format!("{path}.{SERVICE_TAG}"),
            format!("tag {SERVICE_TAG:?} is required"),
        ));
    }
    for (k, v) in tags {
        if k.is_empty() {
            p.push((path.into(), "tag names must not be empty".into()));
        }
        if v.is_empty() {
            p.push((format!("{path}.{k}"), "tag value must not be empty".into()));
        }
    }
    if let Some(proto) = tags.get(PROTOCOL_TAG) {
        if !matches!(proto.as_str(), "tcp" | "http" | "http2" | "grpc" | "kafka") {
            p.push((
                format!("{path}.{PROTOCOL_TAG}"),
                format!("protocol {proto:?} is not one of tcp, http, http2, grpc, kafka"),
            ));
        }
    }
}

fn dataplane(dp: &Dataplane, p: &mut Vec<FieldProblem>) {
    let net = &dp.networking;
    address(&net.address, "networking.address", p);
    if let Some(adv) = &net.advertised_address {
        address(adv, "networking.advertisedAddress", p);
    }
    if net.inbound.is_empty() && net.gateway.is_none() {
        p.push((
            "networking".into(),
            "has to contain at least one inbound or a gateway".into(),
        ));
    }
    if let Some(gw) = &net.gateway {
        if gw.kind != "DELEGATED" && gw.kind != "BUILTIN" {
            p.push((
                "networking.gateway.type".into(),
                format!("{:?} is not DELEGATED or BUILTIN", gw.kind),
            ));
        }
        tags(&gw.tags, "networking.gateway.tags", true, p);
        if gw.kind == "BUILTIN" && !net.inbound.is_empty() {
            p.push((
                "networking.inbound".into(),
                "a BUILTIN gateway cannot have inbounds".into(),
            ));
        }
    }
    let mut seen = HashSet::new();
    for (i, inbound) in net.inbound.iter().enumerate() {
        let at = format!("networking.inbound[{i}]");
        port(inbound.port, &format!("{at}.port"), p);
        if let Some(sp) = inbound.service_port {
            port(sp, &format!("{at}.servicePort"), p);
        }
        if let Some(a) = &inbound.service_address {
            ip(a, &format!("{at}.serviceAddress"), p);
        }
        if let Some(a) = &inbound.address {
            ip(a, &format!("{at}.address"), p);
        }
        tags(&inbound.tags, &format!("{at}.tags"), true, p);
        if let Some(state) = &inbound.state {
            if !matches!(state.as_str(), "Ready" | "NotReady" | "Ignored") {
                p.push((
                    format!("{at}.state"),
                    format!("{state:?} is not Ready, NotReady or Ignored"),
                ));
            }
        }
        let bind = inbound.address.as_deref().unwrap_or(&net.address);
        if !seen.insert((bind.to_string(), inbound.port)) {
            p.push((
                format!("{at}.port"),
                format!("{bind}:{} is used by an earlier inbound", inbound.port),
            ));
        }
    }
    let mut seen = HashSet::new();
    for (i, outbound) in net.outbound.iter().enumerate() {
        let at = format!("networking.outbound[{i}]");
        port(outbound.port, &format!("{at}.port"), p);
        if let Some(a) = &outbound.address {
            ip(a, &format!("{at}.address"), p);
        }
        tags(
            &outbound.tags,
            &format!("{at}.tags"),
            outbound.backend_ref.is_none(),
            p,
        );
        let bind = outbound.address.as_deref().unwrap_or("127.0.0.1");
        if !seen.insert((bind.to_string(), outbound.port)) {
            p.push((
                format!("{at}.port"),
                format!("{bind}:{} is used by an earlier outbound", outbound.port),
            ));
        }
    }
    if let Some(admin) = &net.admin {
        port(admin.port, "networking.admin.port", p);
    }
    if let Some(tp) = &net.transparent_proxying {
        transparent_proxying(tp, p);
    }
}

fn transparent_proxying(tp: &TransparentProxying, p: &mut Vec<FieldProblem>) {
    let at = "networking.transparentProxying";
    let ports = [
        (tp.redirect_port_inbound, "redirectPortInbound"),
        (tp.redirect_port_outbound, "redirectPortOutbound"),
    ];
    for (value, name) in ports {
        if value > 65535 {
            p.push((
                format!("{at}.{name}"),
                format!("port {value} must be in the range 0-65535"),
            ));
        }
    }
    if (tp.redirect_port_inbound == 0) != (tp.redirect_port_outbound == 0) {
        p.push((
            at.into(),
            "redirectPortInbound and redirectPortOutbound must both be set, or both be 0".into(),
        ));
    }
    if tp.enabled() && tp.redirect_port_inbound == tp.redirect_port_outbound {
        p.push((
            format!("{at}.redirectPortInbound"),
            format!(
                "must differ from redirectPortOutbound ({})",
                tp.redirect_port_outbound
            ),
        ));
    }
    if let Some(mode) = &tp.ip_family_mode {
        let known = ["UnSpecified", "DualStack", "IPv4", "IPv6"];
        if !known.iter().any(|k| k.eq_ignore_ascii_case(mode)) {
            p.push((
                format!("{at}.ipFamilyMode"),
                format!("{mode:?} is not one of {}", known.join(", ")),
            ));
        }
    }
}

/// Kuma's mTLS backend rules, limited to the CA types Bearing can run (`builtin`, `provided`).
fn mesh(m: &Mesh, p: &mut Vec<FieldProblem>) {
    let Some(mtls) = &m.mtls else {
        return;
    };
    let mut names = HashSet::new();
    for (i, b) in mtls.backends.iter().enumerate() {
        let path = format!("mtls.backends[{i}]");
        if b.name.is_empty() {
            p.push((format!("{path}.name"), "must not be empty".into()));
        } else if !names.insert(b.name.as_str()) {
            p.push((
                format!("{path}.name"),
                format!("{:?} is used twice", b.name),
            ));
        }
        match b.kind.as_str() {
            "builtin" => {}
            "provided" => provided_ca(b.conf.as_ref(), &format!("{path}.conf"), p),
            "" => p.push((format!("{path}.type"), "must not be empty".into())),
            other => p.push((
                format!("{path}.type"),
                format!("{other:?} is not supported by Bearing (builtin, provided)"),
            )),
        }
        if let Some(mode) = b
            .mode
            .as_deref()
            .filter(|m| !matches!(*m, "STRICT" | "PERMISSIVE"))
        {
            p.push((
                format!("{path}.mode"),
                format!("{mode:?} must be STRICT or PERMISSIVE"),
            ));
        }
        let expiration = b.dp_cert.as_ref().and_then(|d| d.rotation.as_ref());
        if let Some(e) = expiration.and_then(|r| r.expiration.as_deref()) {
            match parse_go_duration(e) {
                Ok(d) if d >= std::time::Duration::from_secs(60) => {}
                Ok(_) => p.push((
                    format!("{path}.dpCert.rotation.expiration"),
                    format!("{e:?} is shorter than a minute"),
                )),
                Err(m) => p.push((format!("{path}.dpCert.rotation.expiration"), m)),
            }
        }
    }
    if let Some(enabled) = mtls.enabled_backend.as_deref().filter(|e| !e.is_empty()) {
        if !names.contains(enabled) {
            p.push((
                "mtls.enabledBackend".into(),
                format!("has to be set to one of the backends in the mesh, {enabled:?} is not"),
            ));
        }
    }
}

/// A `provided` CA's `conf`: `cert` and `key`, each one DataSource.
fn provided_ca(conf: Option<&serde_json::Value>, path: &str, p: &mut Vec<FieldProblem>) {
    let parsed = conf
        .cloned()
        .map(serde_json::from_value::<ProvidedCaConf>)
        .transpose();
    match parsed {
        Ok(Some(c)) => {
            data_source(&c.cert, &format!("{path}.cert"), p);
            data_source(&c.key, &format!("{path}.key"), p);
        }
        Ok(None) => p.push((path.into(), "a provided CA needs cert and key".into())),
        Err(e) => p.push((path.into(), e.to_string())),
    }
}

/// Exactly one of a DataSource's fields, and valid base64 for `inline`.
pub(crate) fn data_source(ds: &DataSource, path: &str, p: &mut Vec<FieldProblem>) {
    let set = [&ds.secret, &ds.file, &ds.inline, &ds.inline_string]
        .iter()
        .filter(|f| f.is_some())
        .count();
    if set != 1 {
        p.push((
            path.into(),
            "must have exactly one of secret, file, inline, inlineString".into(),
        ));
    }
    if ds.inline.as_deref().is_some_and(|v| !is_base64(v)) {
        p.push((format!("{path}.inline"), "is not valid base64".into()));
    }
}

/// Parses a Go duration such as `24h`, `1h30m`, `90s` or `500ms`.
pub fn parse_go_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{text:?} is not a duration like 24h, 1h30m or 90s");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let value: f64 = rest[..digits].parse().map_err(|_| bad())?;
        let unit_end = rest[digits..]
            .find(|c: char| c.is_ascii_digit())
            .map_or(rest.len(), |i| digits + i);
        let scale = match &rest[digits..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    std::time::Duration::try_from_secs_f64(total).map_err(|_| bad())
}

fn zone_proxy(net: &ZoneProxyNetworking, p: &mut Vec<FieldProblem>) {
    address(&net.address, "networking.address", p);
    port(net.port, "networking.port", p);
    if let Some(adv) = &net.advertised_address {
        address(adv, "networking.advertisedAddress", p);
    }
    if let Some(adv) = net.advertised_port {
        port(adv, "networking.advertisedPort", p);
    }
    if let Some(admin) = &net.admin {
        port(admin.port, "networking.admin.port", p);
    }
}

fn external_service(es: &ExternalService, p: &mut Vec<FieldProblem>) {
    tags(&es.tags, "tags", true, p);
    if let Some(tls) = &es.networking.tls {
        let sources = [
            (&tls.ca_cert, "caCert"),
            (&tls.client_cert, "clientCert"),
            (&tls.client_key, "clientKey"),
        ];
        for (ds, name) in sources {
            if let Some(ds) = ds {
                data_source(ds, &format!("networking.tls.{name}"), p);
            }
        }
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            p.push((
                "networking.tls.clientKey".into(),
                "clientCert and clientKey go together".into(),
            ));
        }
        let mode = tls.verification.as_ref().and_then(|v| v.mode.as_deref());
        if let Some(m) =
            mode.filter(|m| !matches!(*m, "Secured" | "SkipSAN" | "SkipCA" | "SkipAll"))
        {
            p.push((
                "networking.tls.verification.mode".into(),
                format!("{m:?} must be Secured, SkipSAN, SkipCA or SkipAll"),
            ));
        }
    }
    let addr = &es.networking.address;
    match addr.rsplit_once(':') {
        Some((host, port_text)) if !host.is_empty() => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.parse::<IpAddr>().is_err() && !is_hostname(host) {
                p.push((
                    "networking.address".into(),
                    format!("host {host:?} is neither an IP address nor a hostname"),
                ));
            }
            match port_text.parse::<u32>() {
                Ok(n) => port(n, "networking.address", p),
                Err(_) => p.push((
                    "networking.address".into(),
                    format!("port {port_text:?} is not a number"),
                )),
            }
        }
        _ => p.push((
            "networking.address".into(),
            format!("{addr:?} must be host:port"),
        )),
    }
}

/// Kuma's VirtualOutbound rules: at least one selector with at least one tag; parameter names
/// alphanumeric and unique, tag keys valid, one parameter with tagKey `kuma.io/service`; host
/// and port templates that render (with every parameter set) to a DNS name and a port 1-65535.
fn virtual_outbound(vo: &VirtualOutbound, p: &mut Vec<FieldProblem>) {
    if vo.spec.is_some() && (vo.conf.is_some() || !vo.selectors.is_empty()) {
        p.push((
            "spec".into(),
            "selectors and conf go either at the top level or under spec, not both".into(),
        ));
    }
    let (vo, root) = match &vo.spec {
        Some(inner) => (inner.as_ref(), "spec."),
        None => (vo, ""),
    };
    if vo.selectors.is_empty() {
        p.push((
            format!("{root}selectors"),
            "must have at least one element".into(),
        ));
    }
    for (i, s) in vo.selectors.iter().enumerate() {
        let at = format!("{root}selectors[{i}].match");
        if s.match_tags.is_empty() {
            p.push((at.clone(), "must have at least one tag".into()));
        }
        tags(&s.match_tags, &at, false, p);
    }
    let Some(conf) = &vo.conf else {
        p.push((format!("{root}conf"), "has to be defined".into()));
        return;
    };
    let at = format!("{root}conf.parameters");
    let mut names = HashSet::new();
    for (i, param) in conf.parameters.iter().enumerate() {
        if !names.insert(param.name.as_str()) {
            p.push((format!("{at}[{i}].name"), "name is already used".into()));
        }
        if param.name.is_empty() || !param.name.chars().all(|c| c.is_ascii_alphanumeric()) {
            p.push((
                format!("{at}[{i}].name"),
                "must consist of alphanumeric characters to be used as a gotemplate key".into(),
            ));
        }
        if !is_tag_name(param.tag()) {
            let field = if param.tag_key.is_some() {
                "tagKey"
            } else {
                "name"
            };
            p.push((
                format!("{at}[{i}].{field}"),
                "must be a valid tag name".into(),
            ));
        }
    }
    if !conf
        .parameters
        .iter()
        .any(|x| x.tag_key.as_deref() == Some(SERVICE_TAG))
    {
        p.push((
            at,
            format!("must contain a parameter with {SERVICE_TAG} as a tagKey"),
        ));
    }
    let render = |text: &str, field: &str, dummy: &str, p: &mut Vec<FieldProblem>| {
        let path = format!("{root}conf.{field}");
        if text.is_empty() {
            p.push((path, "has to be defined".into()));
            return None;
        }
        match crate::gotemplate::Template::parse(text) {
            Ok(t) => {
                let values = conf
                    .parameters
                    .iter()
                    .map(|x| (x.name.as_str(), dummy))
                    .collect();
                Some((t.render(&values), path))
            }
            Err(e) => {
                p.push((path, format!("template does not parse: {e}")));
                None
            }
        }
    };
    if let Some((host, path)) = render(&conf.host, "host", "dummy", p) {
        if !is_dns_name(&host) {
            p.push((
                path,
                format!("template renders {host:?}, which is not a valid DNS name"),
            ));
        }
    }
    if let Some((port_text, path)) = render(&conf.port, "port", "1", p) {
        if !port_text
            .parse::<u32>()
            .is_ok_and(|n| (1..=65535).contains(&n))
        {
            p.push((
                path,
                format!("template renders {port_text:?}, which is not a port 1-65535"),
            ));
        }
    }
}

fn mesh_service(ms: &MeshService, p: &mut Vec<FieldProblem>) {
    let mut seen = HashSet::new();
    for (i, port_spec) in ms.spec.ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        port(port_spec.port, &format!("{at}.port"), p);
        if !seen.insert(port_spec.port) {
            p.push((
                format!("{at}.port"),
                format!("port {} is listed twice", port_spec.port),
            ));
        }
        match &port_spec.target_port {
            None | Some(serde_json::Value::String(_)) => {}
            Some(serde_json::Value::Number(n)) => match n.as_u64() {
                Some(n) if (1..=65535).contains(&n) => {}
                _ => p.push((
                    format!("{at}.targetPort"),
                    format!("port {n} must be in the range 1-65535"),
                )),
            },
            Some(other) => p.push((
                format!("{at}.targetPort"),
                format!("{other} is neither a port number nor an inbound name"),
            )),
        }
    }
}

/// Kuma's tag name character set.
fn is_tag_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '_' | '-' | ':'))
}

fn secret(s: &Secret, p: &mut Vec<FieldProblem>) {
    if s.data.is_empty() {
        p.push(("data".into(), "must not be empty".into()));
    } else if !is_base64(&s.data) {
        p.push(("data".into(), "is not valid base64".into()));
    }
}

fn is_base64(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    s.len().is_multiple_of(4)
        && s.len() - body.len() <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dp(inbound: Vec<Inbound>) -> Spec {
        Spec::Dataplane(Dataplane {
            networking: DataplaneNetworking {
                address: "10.0.0.1".into(),
                inbound,
                ..Default::default()
            },
            metrics: None,
            probes: None,
        })
    }

    #[test]
    fn reports_bad_ports_tags_and_duplicates() {
        let mut tags = Tags::new();
        tags.insert(PROTOCOL_TAG.into(), "smtp".into());
        let spec = dp(vec![
            Inbound {
                port: 0,
                tags: tags.clone(),
                ..Default::default()
            },
            Inbound {
                port: 0,
                tags,
                ..Default::default()
            },
        ]);
        let problems = validate(&spec);
        let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        assert!(paths.contains(&"networking.inbound[0].port"));
        assert!(paths.contains(&"networking.inbound[0].tags.kuma.io/service"));
        assert!(paths.contains(&"networking.inbound[0].tags.kuma.io/protocol"));
        assert!(problems
            .iter()
            .any(|(p, m)| p == "networking.inbound[1].port" && m.contains("earlier inbound")));
    }

    #[test]
    fn checks_transparent_proxying() {
        let Spec::Dataplane(mut d) = dp(vec![Inbound {
            port: 80,
            tags: [(SERVICE_TAG.to_string(), "a".to_string())].into(),
            ..Default::default()
        }]) else {
            unreachable!()
        };
        d.networking.transparent_proxying = Some(TransparentProxying {
            redirect_port_inbound: 15001,
            redirect_port_outbound: 15001,
            ip_family_mode: Some("ipv5".into()),
            ..Default::default()
        });
        let problems = validate(&Spec::Dataplane(d.clone()));
        let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "networking.transparentProxying.redirectPortInbound",
                "networking.transparentProxying.ipFamilyMode"
            ],
            "{problems:?}"
        );
        d.networking.transparent_proxying = Some(TransparentProxying {
            redirect_port_inbound: 15006,
            ..Default::default()
        });
        let problems = validate(&Spec::Dataplane(d));
        assert!(problems[0].1.contains("must both be set"), "{problems:?}");
    }

    #[test]
    fn requires_an_inbound_or_gateway() {
        assert_eq!(validate(&dp(vec![]))[0].0, "networking");
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_name("v1.backend.mesh"));
        assert!(is_dns_name("backend_kuma-demo_svc_8080.mesh."));
        assert!(!is_dns_name("<no value>.mesh"));
        assert!(!is_dns_name("a..b"));
        assert!(!is_dns_name("-a.mesh"));
    }

    #[test]
    fn mesh_mtls_backends() {
        let mesh: Mesh = serde_json::from_value(serde_json::json!({
            "mtls": {"enabledBackend": "ca-9", "backends": [
                {"name": "ca-1", "type": "builtin", "mode": "LAX",
                 "dpCert": {"rotation": {"expiration": "1h30x"}}},
                {"name": "ca-2", "type": "vault"},
                {"name": "ca-3", "type": "provided", "conf": {"cert": {"file": "a", "secret": "b"}, "key": {"inline": "!!"}}}
            ]}
        }))
        .unwrap();
        let problems = validate(&Spec::Mesh(mesh));
        let text = format!("{problems:?}");
        for needle in [
            "mtls.backends[0].mode",
            "mtls.backends[0].dpCert.rotation.expiration",
            "is not supported by Bearing",
            "mtls.backends[2].conf.cert",
            "mtls.backends[2].conf.key.inline",
            "mtls.enabledBackend",
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
        assert_eq!(problems.len(), 6, "{text}");
        assert_eq!(parse_go_duration("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(parse_go_duration("24h").unwrap().as_secs(), 86400);
        assert!(parse_go_duration("5").is_err());
    }

    #[test]
    fn names_and_base64() {
        assert!(validate_name("web-1.a_b").is_none());
        assert!(validate_name("Web").is_some());
        assert!(is_base64("aGVsbG8="));
        assert!(!is_base64("aGVsbG8"));
    }
}

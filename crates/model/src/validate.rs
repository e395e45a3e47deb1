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
        Spec::Mesh(_) => {}
        Spec::Dataplane(dp) => dataplane(dp, &mut p),
        Spec::ZoneIngress(zi) => zone_proxy(&zi.networking, &mut p),
        Spec::ZoneEgress(ze) => zone_proxy(&ze.networking, &mut p),
        Spec::ExternalService(es) => external_service(es, &mut p),
        Spec::Secret(s) => secret(s, &mut p),
        Spec::VirtualOutbound(vo) => virtual_outbound(vo, &mut p),
        Spec::MeshService(ms) => mesh_service(ms, &mut p),
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

fn port(value: u32, path: &str, p: &mut Vec<FieldProblem>) {
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

fn tags(tags: &Tags, path: &str, require_service: bool, p: &mut Vec<FieldProblem>) {
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

fn zone_proxy(net: &ZoneProxyNetworking, p: &mut Vec<FieldProblem>) {
    address(&net.address, "networking.address", p);
    port(net.port, "networking.port", p);
    if let Some(adv) = &net.advertised_address {
        address(adv, "networking.advertisedAddress", p);
    }
    if let Some(adv) = net.advertised_port {
        port(adv, "networking.advertisedPort", p);
    }
}

fn external_service(es: &ExternalService, p: &mut Vec<FieldProblem>) {
    tags(&es.tags, "tags", true, p);
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
    fn names_and_base64() {
        assert!(validate_name("web-1.a_b").is_none());
        assert!(validate_name("Web").is_some());
        assert!(is_base64("aGVsbG8="));
        assert!(!is_base64("aGVsbG8"));
    }
}

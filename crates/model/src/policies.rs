//! What a store asks for that Bearing does not enforce yet, said loudly.
//!
//! Kuma policies (and a few Kuma fields) are accepted so that real stores load, but Bearing
//! does not act on them yet. Each one gives a warning naming the resource and field and what
//! happens instead ([`ignored_warnings`], [`spec_warnings`]). `bearing validate` prints them
//! (exit status 0 when there are only warnings); the running proxy logs them once per config
//! change and lists them under `not_enforced` in `/config_dump`.
//!
//! One policy cannot be left at a warning: a MeshTrafficPermission that denies. Bearing cannot
//! tell sources apart yet, so the inbounds it targets fail closed (refuse every connection)
//! rather than keep allowing what the user denied; [`MeshTrafficPermission`] reads what the
//! compiler needs for that.

use serde_json::Value;

use crate::resources::{Spec, Tags};

/// A field (path from the resource's top, `spec.default`) and what is wrong with it.
pub type Warning = (String, String);

/// What Bearing does instead of each Kuma policy type it does not enforce, by type name.
const POLICIES: &[(&str, &str)] = &[
    ("MeshTrafficPermission", "every mesh service may call the inbounds it targets (Allow from some sources does not deny the others)"),
    ("TrafficPermission", "every mesh service may call every inbound"),
    ("MeshTimeout", "Bearing's built-in timeouts apply"),
    ("Timeout", "Bearing's built-in timeouts apply"),
    ("MeshRetry", "requests are not retried once sent"),
    ("Retry", "requests are not retried once sent"),
    ("MeshCircuitBreaker", "no outlier detection or limits from it"),
    ("CircuitBreaker", "no outlier detection or limits from it"),
    ("MeshHealthCheck", "no active health checks: an endpoint is used while it accepts connections"),
    ("HealthCheck", "no active health checks: an endpoint is used while it accepts connections"),
    ("MeshRateLimit", "no rate limit is applied"),
    ("RateLimit", "no rate limit is applied"),
    ("MeshFaultInjection", "no fault is injected"),
    ("FaultInjection", "no fault is injected"),
    ("MeshAccessLog", "no access log is written"),
    ("TrafficLog", "no access log is written"),
    ("MeshMetric", "only Bearing's own metrics are served, at /stats/prometheus on the admin address"),
    ("MeshTrace", "no trace is sent"),
    ("TrafficTrace", "no trace is sent"),
    ("MeshLoadBalancingStrategy", "endpoints are balanced round robin, without locality or hashing"),
    ("MeshHTTPRoute", "requests go to the destination service unrouted (no matches, splits or rewrites)"),
    ("MeshTCPRoute", "connections go to the destination service unrouted (no splits)"),
    ("TrafficRoute", "traffic goes to the destination service unrouted (no splits)"),
    ("MeshProxyPatch", "Bearing is not Envoy: Envoy config patches do not apply"),
    ("ProxyTemplate", "Bearing is not Envoy: Envoy config templates do not apply"),
    ("MeshPassthrough", "only the Mesh's networking.outbound.passthrough decides passthrough"),
    ("MeshTLS", "TLS mode, versions and ciphers come from the Mesh's mtls only"),
];

/// The warnings for a resource of a type Bearing does not act on, `fields` being everything
/// in it but `type`, `name` and `mesh`.
pub fn ignored_warnings(kind: &str, fields: &Value) -> Vec<Warning> {
    let Some((_, instead)) = POLICIES.iter().find(|(k, _)| *k == kind) else {
        return vec![(
            String::new(),
            "not enforced by Bearing: a type Bearing does not know; ignored".into(),
        )];
    };
    if kind == "MeshTrafficPermission" {
        let mtp = MeshTrafficPermission::read(fields);
        if let Some(field) = mtp.deny {
            return vec![(
                field,
                "Deny is not enforced per source by Bearing: it fails closed, the inbounds this \
                 policy targets refuse every connection"
                    .into(),
            )];
        }
        if let Some(field) = mtp.shadow_deny {
            return vec![(
                field,
                "not enforced by Bearing: the traffic is allowed and shadow denials are not logged"
                    .into(),
            )];
        }
    }
    vec![("spec".into(), format!("not enforced by Bearing: {instead}"))]
}

/// The warnings for Kuma fields of a resource Bearing understands but does not act on.
pub fn spec_warnings(spec: &Spec) -> Vec<Warning> {
    let mut warnings = Vec::new();
    let mut warn = |present: bool, field: String, instead: &str| {
        if present {
            warnings.push((field, format!("not enforced by Bearing: {instead}")));
        }
    };
    match spec {
        Spec::Mesh(mesh) => {
            warn(
                mesh.logging.is_some(),
                "logging".into(),
                "no access log is written",
            );
            warn(
                mesh.metrics.is_some(),
                "metrics".into(),
                "only Bearing's own metrics are served, at /stats/prometheus on the admin address",
            );
            warn(mesh.tracing.is_some(), "tracing".into(), "no trace is sent");
            warn(
                mesh.constraints.is_some(),
                "constraints".into(),
                "every Dataplane may join the mesh",
            );
        }
        Spec::Dataplane(dp) => {
            warn(
                dp.metrics.is_some(),
                "metrics".into(),
                "only Bearing's own metrics are served, at /stats/prometheus on the admin address",
            );
            let reachable = dp.networking.transparent_proxying.as_ref();
            warn(
                reachable.is_some_and(|tp| tp.reachable_backends.is_some()),
                "networking.transparentProxying.reachableBackends".into(),
                "every backend of the mesh is reachable",
            );
            for (i, inbound) in dp.networking.inbound.iter().enumerate() {
                warn(
                    inbound.service_probe.is_some(),
                    format!("networking.inbound[{i}].serviceProbe"),
                    "the application is not probed; health.ready alone decides",
                );
            }
        }
        Spec::MeshService(ms) => warn(
            ms.spec.selector.dataplane_ref.is_some(),
            "spec.selector.dataplaneRef".into(),
            "the MeshService selects no Dataplane by name",
        ),
        _ => {}
    }
    warnings
}

/// What a MeshTrafficPermission's `targetRef` selects (Kuma's top-level target kinds).
#[derive(Debug, Clone, PartialEq)]
pub enum TargetRef {
    /// Every proxy of the mesh (also when `targetRef` is absent).
    Mesh,
    /// Inbounds carrying all these tags.
    MeshSubset(Tags),
    /// Inbounds of this `kuma.io/service`, carrying all these tags.
    MeshService {
        /// `kuma.io/service` value.
        name: String,
        /// Further tags (MeshServiceSubset).
        tags: Tags,
        /// A port name or number of the service (`sectionName`).
        section: Option<String>,
    },
    /// Proxies by Dataplane name and labels; `sectionName` narrows to an inbound by name or port.
    Dataplane {
        /// Dataplane name, if given.
        name: Option<String>,
        /// Labels the Dataplane must carry.
        labels: Tags,
        /// Inbound name or port.
        section: Option<String>,
    },
    /// A kind Bearing does not know as a target, or a malformed `targetRef`: a denying policy
    /// with it fails closed on every inbound of the mesh.
    Unknown(String),
}

/// The parts of a MeshTrafficPermission the compiler needs to fail closed.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshTrafficPermission {
    /// What `spec.targetRef` selects.
    pub target: TargetRef,
    /// Field path of the first Deny (`spec.from[0].default.action`, `spec.rules[0].default.deny`).
    pub deny: Option<String>,
    /// Field path of the first `AllowWithShadowDeny` (allowed; denials only logged in Kuma).
    pub shadow_deny: Option<String>,
}

impl MeshTrafficPermission {
    /// Reads a MeshTrafficPermission's fields (everything but `type`, `name`, `mesh`), in the
    /// `from` form (`from[].default.action`) and the `rules` form (`rules[].default.deny`).
    pub fn read(fields: &Value) -> MeshTrafficPermission {
        let spec = &fields["spec"];
        let mut deny = None;
        let mut shadow_deny = None;
        if let Some(from) = spec["from"].as_array() {
            for (i, entry) in from.iter().enumerate() {
                let field = format!("spec.from[{i}].default.action");
                match entry["default"]["action"].as_str() {
                    Some("Deny") => {
                        deny.get_or_insert(field);
                    }
                    Some("AllowWithShadowDeny") => {
                        shadow_deny.get_or_insert(field);
                    }
                    _ => {}
                }
            }
        }
        if let Some(rules) = spec["rules"].as_array() {
            for (i, rule) in rules.iter().enumerate() {
                let listed = |key: &str| {
                    rule["default"][key]
                        .as_array()
                        .is_some_and(|a| !a.is_empty())
                };
                if listed("deny") {
                    deny.get_or_insert(format!("spec.rules[{i}].default.deny"));
                }
                if listed("allowWithShadowDeny") {
                    shadow_deny
                        .get_or_insert(format!("spec.rules[{i}].default.allowWithShadowDeny"));
                }
            }
        }
        MeshTrafficPermission {
            target: target_ref(&spec["targetRef"]),
            deny,
            shadow_deny,
        }
    }
}

/// Reads a top-level `targetRef`.
fn target_ref(value: &Value) -> TargetRef {
    if value.is_null() {
        return TargetRef::Mesh;
    }
    let tags = |key: &str| -> Option<Tags> {
        match &value[key] {
            Value::Null => Some(Tags::new()),
            v => serde_json::from_value(v.clone()).ok(),
        }
    };
    let text = |key: &str| value[key].as_str().map(str::to_string);
    let section = match &value["sectionName"] {
        Value::Number(n) => Some(n.to_string()),
        v => v.as_str().map(str::to_string),
    };
    let kind = value["kind"].as_str().unwrap_or_default();
    match (kind, tags("tags"), tags("labels"), text("name")) {
        ("Mesh", ..) => TargetRef::Mesh,
        ("MeshSubset", Some(tags), ..) => TargetRef::MeshSubset(tags),
        ("MeshService" | "MeshServiceSubset", Some(tags), _, Some(name)) => {
            TargetRef::MeshService {
                name,
                tags,
                section,
            }
        }
        ("Dataplane", _, Some(labels), name) => TargetRef::Dataplane {
            name,
            labels,
            section,
        },
        _ => TargetRef::Unknown(format!("{value}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_kuma_policy_type_is_warned_with_what_happens_instead() {
        for kind in [
            "MeshTrafficPermission",
            "MeshTimeout",
            "MeshRetry",
            "MeshCircuitBreaker",
            "MeshHealthCheck",
            "MeshRateLimit",
            "MeshFaultInjection",
            "MeshAccessLog",
            "MeshMetric",
            "MeshTrace",
            "MeshLoadBalancingStrategy",
            "MeshHTTPRoute",
            "MeshTCPRoute",
            "MeshProxyPatch",
            "MeshPassthrough",
            "MeshTLS",
            "TrafficPermission",
            "TrafficRoute",
            "Timeout",
            "Retry",
            "CircuitBreaker",
            "HealthCheck",
            "RateLimit",
            "FaultInjection",
            "TrafficLog",
            "TrafficTrace",
            "ProxyTemplate",
        ] {
            let w = ignored_warnings(kind, &json!({"spec": {}}));
            assert_eq!(w.len(), 1, "{kind}");
            assert_eq!(w[0].0, "spec", "{kind}");
            assert!(
                w[0].1.starts_with("not enforced by Bearing: "),
                "{kind}: {}",
                w[0].1
            );
            assert!(!w[0].1.contains("does not know"), "{kind}");
        }
        let unknown = ignored_warnings("MeshFoo", &json!({}));
        assert!(
            unknown[0].1.contains("a type Bearing does not know"),
            "{unknown:?}"
        );
    }

    #[test]
    fn mesh_and_dataplane_fields_not_acted_on_are_warned() {
        let mesh: crate::Mesh = serde_json::from_value(
            json!({"logging": {}, "metrics": {}, "tracing": {}, "constraints": {}}),
        )
        .unwrap();
        let fields: Vec<String> = spec_warnings(&Spec::Mesh(mesh))
            .into_iter()
            .map(|w| w.0)
            .collect();
        assert_eq!(fields, ["logging", "metrics", "tracing", "constraints"]);
        assert!(spec_warnings(&Spec::Mesh(crate::Mesh::default())).is_empty());
        let dp: crate::Dataplane = serde_json::from_value(json!({
            "networking": {"address": "10.0.0.1", "admin": {"port": 9902}, "inbound": [
                {"port": 80, "tags": {"kuma.io/service": "a"}},
                {"port": 81, "tags": {"kuma.io/service": "b"}, "serviceProbe": {}}]},
            "metrics": {"type": "prometheus"}
        }))
        .unwrap();
        let fields: Vec<String> = spec_warnings(&Spec::Dataplane(dp))
            .into_iter()
            .map(|w| w.0)
            .collect();
        assert_eq!(fields, ["metrics", "networking.inbound[1].serviceProbe"]);
    }

    #[test]
    fn reads_denies_and_targets_of_both_forms() {
        let mtp = MeshTrafficPermission::read(&json!({"spec": {
        "targetRef": {"kind": "MeshSubset", "tags": {"version": "v1"}},
        "from": [
            {"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}},
            {"targetRef": {"kind": "MeshService", "name": "x"}, "default": {"action": "Deny"}},
        ]}}));
        assert_eq!(mtp.deny.as_deref(), Some("spec.from[1].default.action"));
        assert_eq!(
            mtp.target,
            TargetRef::MeshSubset([("version".into(), "v1".into())].into())
        );
        let rules = MeshTrafficPermission::read(&json!({"spec": {
            "targetRef": {"kind": "Dataplane", "labels": {"app": "web"}, "sectionName": "http"},
            "rules": [{"default": {"allow": [{"spiffeId": {"type": "Exact", "value": "x"}}], "deny": [{"spiffeId": {"type": "Prefix", "value": "y"}}]}}]}}));
        assert_eq!(rules.deny.as_deref(), Some("spec.rules[0].default.deny"));
        assert_eq!(
            rules.target,
            TargetRef::Dataplane {
                name: None,
                labels: [("app".into(), "web".into())].into(),
                section: Some("http".into())
            }
        );
        let shadow = MeshTrafficPermission::read(&json!({"spec": {
            "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "AllowWithShadowDeny"}}]}}));
        assert_eq!((shadow.deny, shadow.target), (None, TargetRef::Mesh));
        assert!(ignored_warnings("MeshTrafficPermission", &json!({"spec": {
            "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "AllowWithShadowDeny"}}]}}))[0]
            .1
            .contains("shadow denials are not logged"));
        let service = MeshTrafficPermission::read(&json!({"spec": {
            "targetRef": {"kind": "MeshServiceSubset", "name": "web", "tags": {"v": "1"}}}}));
        assert!(matches!(service.target, TargetRef::MeshService { ref name, .. } if name == "web"));
        for bad in [
            json!({"kind": "MeshGateway", "name": "g"}),
            json!({"kind": "MeshService"}),
            json!({"kind": "MeshSubset", "tags": "v1"}),
        ] {
            let t = MeshTrafficPermission::read(&json!({"spec": {"targetRef": bad}})).target;
            assert!(matches!(t, TargetRef::Unknown(_)), "{t:?}");
        }
    }
}

//! Envoy resources in Kuma's golden formats, decoded into protobuf `Any`s.
//!
//! Kuma's tests write the Envoy config its control plane generates in three shapes, all
//! protobuf JSON (or YAML of it) with `@type` for `Any`:
//! - `resources: [{name, resource: {'@type': ..., ...}}]` (xds-generator, xds-egress goldens);
//! - the builtin gateway's snapshots, `Clusters|Endpoints|Listeners|Routes|Runtimes|Secrets:
//!   {Resources: {name: resource}}`, where the section gives the type;
//! - the e2e JSON `{diff, xds: {typeURL: {name: resource}}}`.
//!
//! Messages are decoded by reflection (prost-reflect with serde, protobuf JSON semantics) over
//! the descriptor set `envoy-types` ships with its generated code, so every type those
//! generated types cover decodes, `Any` included, and the bytes are what the typed prost
//! messages decode. Placeholders a golden holds (`IP_REDACTED`, `CERT_REDACTED` in a bytes
//! field, ...) are the caller's to replace: [`read_golden`] gives the JSON, [`decode_json_resource`]
//! turns one into an `Any`; an invalid value is a [`DecodeError`] naming the file, the resource
//! and the JSON path, never a panic.

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use serde_json::Value;
use std::fmt;
use std::path::Path;
use std::sync::OnceLock;
use yaml_rust2::{Yaml, YamlLoader};

/// The prefix of every type URL in Envoy's xDS.
pub const TYPE_URL_PREFIX: &str = "type.googleapis.com/";
/// `envoy.config.listener.v3.Listener`.
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// `envoy.config.cluster.v3.Cluster`.
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// `envoy.config.endpoint.v3.ClusterLoadAssignment`.
pub const CLUSTER_LOAD_ASSIGNMENT: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// `envoy.config.route.v3.RouteConfiguration`.
pub const ROUTE_CONFIGURATION: &str =
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// `envoy.extensions.transport_sockets.tls.v3.Secret`.
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// `envoy.service.runtime.v3.Runtime`.
pub const RUNTIME: &str = "type.googleapis.com/envoy.service.runtime.v3.Runtime";

/// The gateway snapshot sections and the type each holds.
const SNAPSHOT_SECTIONS: [(&str, &str); 6] = [
    ("Clusters", CLUSTER),
    ("Endpoints", CLUSTER_LOAD_ASSIGNMENT),
    ("Listeners", LISTENER),
    ("Routes", ROUTE_CONFIGURATION),
    ("Runtimes", RUNTIME),
    ("Secrets", SECRET),
];

/// One resource of a golden file, still as protobuf JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct RawResource {
    /// Its type URL, `type.googleapis.com/<message>`.
    pub type_url: String,
    /// Its xDS name.
    pub name: String,
    /// The message in protobuf JSON (without `@type`).
    pub json: Value,
}

/// One resource of a golden file, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct GoldenResource {
    /// Its type URL.
    pub type_url: String,
    /// Its xDS name.
    pub name: String,
    /// The message as xDS carries it.
    pub resource: prost_types::Any,
}

/// Why a golden file or one of its resources could not be decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    /// The file (or another description of the source).
    pub file: String,
    /// The resource (`<type URL> <name>`), when the problem is inside one.
    pub resource: Option<String>,
    /// JSON path inside the resource or file, e.g. `filterChains[0].filters[1].typedConfig`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(resource) = &self.resource {
            write!(f, ": {resource}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for DecodeError {}

/// The descriptors of every Envoy v3 message (and its dependencies) `envoy-types` generates.
pub fn descriptor_pool() -> Result<&'static DescriptorPool, String> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(include_bytes!(env!("ENVOY_TYPES_DESCRIPTORS")).as_slice())
            .map_err(|e| format!("envoy-types descriptor set: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// The message a type URL names.
fn message_descriptor(type_url: &str) -> Result<MessageDescriptor, String> {
    let full_name = type_url
        .strip_prefix(TYPE_URL_PREFIX)
        .ok_or_else(|| format!("type URL {type_url:?} does not start with {TYPE_URL_PREFIX}"))?;
    descriptor_pool()?
        .get_message_by_name(full_name)
        .ok_or_else(|| format!("unknown message type {full_name}"))
}

/// Decodes one resource in protobuf JSON (`@type`, if present, must equal `type_url`) into an
/// `Any`. The error names the JSON path of the value that does not decode.
pub fn decode_json_resource(
    type_url: &str,
    json: &Value,
) -> Result<prost_types::Any, (String, String)> {
    let descriptor = message_descriptor(type_url).map_err(|m| (String::new(), m))?;
    let mut object = json.clone();
    if let Some(map) = object.as_object_mut() {
        if let Some(declared) = map.remove("@type") {
            if declared.as_str() != Some(type_url) {
                return Err((
                    "@type".into(),
                    format!("{declared} where {type_url} is expected"),
                ));
            }
        }
    }
    let mut track = serde_path_to_error::Track::new();
    let deserializer = serde_path_to_error::Deserializer::new(&object, &mut track);
    let message = DynamicMessage::deserialize(descriptor, deserializer)
        .map_err(|e| (track.path().to_string(), e.to_string()))?;
    Ok(prost_types::Any {
        type_url: type_url.to_string(),
        value: message.encode_to_vec(),
    })
}

/// Reads a golden file in any of Kuma's three formats into its resources, as JSON.
pub fn read_golden(path: &Path) -> Result<Vec<RawResource>, DecodeError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| DecodeError {
        file: file.clone(),
        resource: None,
        path: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    parse_golden(&text, &file)
}

/// Parses the text of a golden file (YAML or JSON; `file` names it in errors).
pub fn parse_golden(text: &str, file: &str) -> Result<Vec<RawResource>, DecodeError> {
    let error = |path: &str, message: String| DecodeError {
        file: file.to_string(),
        resource: None,
        path: path.to_string(),
        message,
    };
    let docs = YamlLoader::load_from_str(text).map_err(|e| error("", e.to_string()))?;
    let mut out = Vec::new();
    for doc in &docs {
        let root = yaml_to_json(doc, "").map_err(|(path, m)| error(&path, m))?;
        resources_of(&root, &mut out).map_err(|(path, m)| error(&path, m))?;
    }
    Ok(out)
}

/// Reads and decodes a golden file (placeholders not replaced).
pub fn load_golden(path: &Path) -> Result<Vec<GoldenResource>, DecodeError> {
    let file = path.display().to_string();
    read_golden(path)?
        .iter()
        .map(|raw| decode_raw(raw, &file))
        .collect()
}

/// Decodes one resource read by [`read_golden`]; `file` names its source in the error.
pub fn decode_raw(raw: &RawResource, file: &str) -> Result<GoldenResource, DecodeError> {
    let resource =
        decode_json_resource(&raw.type_url, &raw.json).map_err(|(path, message)| DecodeError {
            file: file.to_string(),
            resource: Some(format!("{} {}", raw.type_url, raw.name)),
            path,
            message,
        })?;
    Ok(GoldenResource {
        type_url: raw.type_url.clone(),
        name: raw.name.clone(),
        resource,
    })
}

/// Collects the resources of one document, recognising the format by its top-level keys.
fn resources_of(root: &Value, out: &mut Vec<RawResource>) -> Result<(), (String, String)> {
    let Some(map) = root.as_object() else {
        return match root {
            Value::Null => Ok(()),
            _ => Err((String::new(), "a golden document must be a mapping".into())),
        };
    };
    if let Some(list) = map.get("resources") {
        let items = list
            .as_array()
            .ok_or_else(|| ("resources".to_string(), "must be a list".to_string()))?;
        for (i, item) in items.iter().enumerate() {
            let at = format!("resources[{i}]");
            let name = item["name"]
                .as_str()
                .ok_or_else(|| (format!("{at}.name"), "missing or not a string".to_string()))?;
            let resource = &item["resource"];
            let type_url = resource["@type"].as_str().ok_or_else(|| {
                (
                    format!("{at}.resource.@type"),
                    "missing or not a string".to_string(),
                )
            })?;
            out.push(raw(type_url, name, resource));
        }
        return Ok(());
    }
    if let Some(xds) = map.get("xds") {
        let types = xds
            .as_object()
            .ok_or_else(|| ("xds".to_string(), "must be a mapping".to_string()))?;
        for (type_url, by_name) in types {
            push_named(type_url, by_name, &format!("xds.{type_url}"), out)?;
        }
        return Ok(());
    }
    if map.is_empty() {
        return Ok(());
    }
    for (section, value) in map {
        let type_url = SNAPSHOT_SECTIONS
            .iter()
            .find(|(s, _)| s == section)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                (
                    section.clone(),
                    "unknown section: a golden has `resources`, `xds` or gateway snapshot \
                     sections (Clusters, Endpoints, Listeners, Routes, Runtimes, Secrets)"
                        .to_string(),
                )
            })?;
        push_named(
            type_url,
            &value["Resources"],
            &format!("{section}.Resources"),
            out,
        )?;
    }
    Ok(())
}

/// Adds every `name: resource` entry of a mapping (null or absent: none).
fn push_named(
    type_url: &str,
    by_name: &Value,
    at: &str,
    out: &mut Vec<RawResource>,
) -> Result<(), (String, String)> {
    match by_name {
        Value::Null => Ok(()),
        Value::Object(entries) => {
            out.extend(entries.iter().map(|(name, json)| raw(type_url, name, json)));
            Ok(())
        }
        _ => Err((
            at.to_string(),
            "must be a mapping of name to resource".into(),
        )),
    }
}

fn raw(type_url: &str, name: &str, json: &Value) -> RawResource {
    let mut json = json.clone();
    if let Some(map) = json.as_object_mut() {
        map.remove("@type");
    }
    RawResource {
        type_url: type_url.to_string(),
        name: name.to_string(),
        json,
    }
}

/// YAML (1.2 core schema, as yaml-rust2 reads it) to JSON; `at` is the path for errors.
fn yaml_to_json(yaml: &Yaml, at: &str) -> Result<Value, (String, String)> {
    Ok(match yaml {
        Yaml::Null | Yaml::BadValue => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(text) => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| (at.to_string(), format!("{text:?} is not a finite number")))?,
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| yaml_to_json(item, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Yaml::Hash(entries) => {
            let mut map = serde_json::Map::with_capacity(entries.len());
            for (key, value) in entries {
                let key = match key {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    Yaml::Real(r) => r.clone(),
                    other => return Err((at.to_string(), format!("unsupported key {other:?}"))),
                };
                let child = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                map.insert(key, yaml_to_json(value, &child)?);
            }
            Value::Object(map)
        }
        Yaml::Alias(_) => return Err((at.to_string(), "YAML aliases are not supported".into())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::listener::v3::Listener;

    #[test]
    fn resources_list_decodes_into_typed_listener() {
        let text = r#"
resources:
- name: inbound:192.0.2.1:8080
  resource:
    '@type': type.googleapis.com/envoy.config.listener.v3.Listener
    name: inbound:192.0.2.1:8080
    address: {socketAddress: {address: 192.0.2.1, portValue: 8080}}
    filterChains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typedConfig:
          '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          cluster: localhost:8080
          statPrefix: x
"#;
        let raws = parse_golden(text, "t.yaml").unwrap();
        assert_eq!(raws.len(), 1);
        let decoded = decode_raw(&raws[0], "t.yaml").unwrap();
        assert_eq!(decoded.type_url, LISTENER);
        let listener = Listener::decode(decoded.resource.value.as_slice()).unwrap();
        assert_eq!(listener.name, "inbound:192.0.2.1:8080");
        let any = listener.filter_chains[0].filters[0].config_type.clone();
        assert!(format!("{any:?}").contains("TcpProxy"));
    }

    #[test]
    fn snapshot_sections_and_e2e_json_give_types() {
        let snapshot = "Clusters:\n  Resources:\n    c1: {name: c1, connectTimeout: 5s}\n\
                        Endpoints:\n  Resources: {}\nRoutes:\n  Resources: {}\n";
        let raws = parse_golden(snapshot, "s.yaml").unwrap();
        assert_eq!(raws.len(), 1);
        assert_eq!(raws[0].type_url, CLUSTER);
        assert!(decode_raw(&raws[0], "s.yaml").is_ok());
        let e2e = format!(r#"{{"diff": [], "xds": {{"{SECRET}": {{"s": {{"name": "s"}}}}}}}}"#);
        let raws = parse_golden(&e2e, "e.json").unwrap();
        assert_eq!(
            (raws[0].type_url.as_str(), raws[0].name.as_str()),
            (SECRET, "s")
        );
    }

    #[test]
    fn placeholder_in_bytes_is_an_error_naming_the_path() {
        let text = "resources:\n- name: s\n  resource:\n    '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n    name: s\n    validationContext:\n      trustedCa: {inlineBytes: CERT_REDACTED}\n";
        let raws = parse_golden(text, "g.yaml").unwrap();
        let error = decode_raw(&raws[0], "g.yaml").unwrap_err();
        assert_eq!(error.file, "g.yaml");
        assert_eq!(error.resource.as_deref(), Some(&*format!("{SECRET} s")));
        assert!(error.path.contains("inlineBytes"), "{error}");
    }

    #[test]
    fn unknown_type_and_bad_shapes_are_errors() {
        let text =
            "resources:\n- name: x\n  resource: {'@type': type.googleapis.com/no.such.Type}\n";
        let raws = parse_golden(text, "g.yaml").unwrap();
        assert!(decode_raw(&raws[0], "g.yaml")
            .unwrap_err()
            .message
            .contains("no.such.Type"));
        assert!(parse_golden("Foo: {}", "g.yaml").is_err());
        assert!(parse_golden("resources: 3", "g.yaml").is_err());
        assert!(parse_golden("resources: [{name: a, resource: {}}]", "g.yaml").is_err());
    }
}

//! Kuma's Envoy goldens (`../shared/kuma-corpus`) for the tests of this crate: where they are,
//! and their placeholders replaced with valid test values.

// Shared by several test binaries, each using a part.
#![allow(dead_code)]

use bearing_envoy_config::decode::{CLUSTER, LISTENER, SECRET};
use bearing_envoy_config::{decode_raw, read_golden, GoldenResource, NodeInfo, RawResource};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The address standing for `IP_REDACTED` in names, CIDR ranges and other strings (TEST-NET-1).
pub const TEST_IP: &str = "192.0.2.10";

/// The socket addresses standing for `IP_REDACTED`: each redacted socket address of a golden
/// gets its own (198.18.0.1, 198.18.0.2, ... of the benchmarking range), as the proxies the
/// goldens were made for had, so listeners on different interfaces do not collide.
#[derive(Default)]
pub struct Addresses {
    given: u32,
}

impl Addresses {
    fn next(&mut self) -> String {
        self.given += 1;
        let [_, _, hi, lo] = self.given.to_be_bytes();
        format!("198.18.{hi}.{lo}")
    }
}

/// The corpus folder; fails loudly when it is missing.
pub fn corpus() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/kuma-corpus");
    assert!(
        dir.is_dir(),
        "Kuma corpus missing at {} (clone the repository beside `shared`)",
        dir.display()
    );
    dir
}

/// Every Envoy golden: xds-generator, xds-egress, gateway snapshots, envoyconfig-e2e JSON.
pub fn envoy_goldens() -> Vec<PathBuf> {
    let root = corpus();
    let mut files = Vec::new();
    for dir in ["xds-generator", "xds-egress", "gateway", "envoyconfig-e2e"] {
        collect(&root.join(dir), &mut files);
    }
    files.retain(|f| is_envoy_golden(&root, f));
    files.sort();
    files
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Goldens by their names; the gateway folder mixes inputs and snapshots, which start with
/// `Clusters:`.
fn is_envoy_golden(root: &Path, file: &Path) -> bool {
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if file.starts_with(root.join("gateway")) {
        return std::fs::read_to_string(file).is_ok_and(|t| t.starts_with("Clusters:"));
    }
    name.ends_with(".golden.yaml") || name.ends_with(".golden.json")
}

/// A CA certificate (PEM) standing for `CERT_REDACTED`, and its key.
fn test_ca() -> &'static (String, String) {
    static PEM: OnceLock<(String, String)> = OnceLock::new();
    PEM.get_or_init(|| {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    })
}

/// The test certificate (PEM).
pub fn test_cert_pem() -> &'static str {
    &test_ca().0
}

/// The test certificate's private key (PEM).
pub fn test_key_pem() -> &'static str {
    &test_ca().1
}

/// Replaces the corpus placeholders in keys and string values. The redacted source address
/// of `upstreamBindConfig` is Kuma's passthrough address, 127.0.0.6; every other redacted
/// socket address gets its own from `addresses`.
pub fn replace_placeholders(value: &mut Value, addresses: &mut Addresses) {
    if let Some(address) = value.pointer_mut("/upstreamBindConfig/sourceAddress/address") {
        if address == "IP_REDACTED" {
            *address = Value::String("127.0.0.6".into());
        }
    }
    if let Some(address) = value.pointer_mut("/socketAddress/address") {
        if address == "IP_REDACTED" {
            *address = Value::String(addresses.next());
        }
    }
    // The virtual-probe goldens were made for a Dataplane without an address, so their
    // listener's socket address has none (Envoy requires one): it gets its own too.
    if let Some(Value::Object(socket)) = value.get_mut("socketAddress") {
        if !socket.contains_key("address") {
            socket.insert("address".into(), Value::String(addresses.next()));
        }
    }
    match value {
        Value::String(s) => *s = replaced(s),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| replace_placeholders(item, addresses)),
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (key, mut child) in entries {
                replace_placeholders(&mut child, addresses);
                map.insert(replaced(&key), child);
            }
        }
        _ => {}
    }
}

fn replaced(s: &str) -> String {
    use base64::Engine;
    if s == "CERT_REDACTED" {
        return base64::engine::general_purpose::STANDARD.encode(test_cert_pem());
    }
    s.replace("IP_REDACTED", TEST_IP)
        .replace("ADMIN_REDACTED", "127.0.0.1")
}

/// Reads a golden, replaces its placeholders, adds the mesh secrets it refers to but does not
/// hold (xds-generator goldens hold one generator's output; kuma-cp sends the secrets beside
/// them) and decodes every resource.
pub fn load(file: &Path) -> Result<Vec<GoldenResource>, String> {
    load_edited(file, |_| {})
}

/// The file's path inside the corpus, for tables.
pub fn short(file: &Path) -> String {
    file.strip_prefix(corpus())
        .unwrap_or(file)
        .display()
        .to_string()
}

/// Kuma's mesh secrets a golden's resources name (identities: `identity_cert:secret:<mesh>`,
/// `system_mtls_identity_<mesh>`, MeshIdentity's `kri_mid_...`, or any secret a TLS context
/// presents; CAs: `mesh_ca:secret:<mesh>`, `system_mtls_ca_<mesh>`, and MeshTrust's
/// `system_trust_bundle` where a TLS context verifies peers against it), as test values, for
/// those the golden does not hold (the e2e goldens leave the proxy's identity out; the
/// xds-generator goldens name a zone egress's identity by reference).
fn add_missing_secrets(raws: &mut Vec<RawResource>) {
    let mut named = BTreeSet::new();
    let mut presented = BTreeSet::new();
    for raw in raws.iter() {
        collect_secret_names(&raw.json, &mut named);
        collect_sds_references(&raw.json, &mut presented, &mut named);
    }
    named.extend(presented.iter().cloned());
    for raw in raws.iter().filter(|r| r.type_url == SECRET) {
        named.remove(&raw.name);
    }
    use base64::Engine;
    let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
    for name in named {
        let json = if is_identity_secret(&name) || presented.contains(&name) {
            serde_json::json!({"name": name, "tlsCertificate": {
                "certificateChain": {"inlineBytes": b64(test_cert_pem())},
                "privateKey": {"inlineBytes": b64(test_key_pem())}}})
        } else if name == "system_trust_bundle" {
            // As kuma-cp renders MeshTrust: Envoy's SPIFFE validator, a bundle per domain.
            serde_json::json!({"name": name, "validationContext": {"customValidatorConfig": {
                "name": "envoy.tls.cert_validator.spiffe",
                "typedConfig": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig",
                    "trustDomains": [{"name": "default",
                        "trustBundle": {"inlineBytes": b64(test_cert_pem())}}]}}}})
        } else {
            serde_json::json!({"name": name, "validationContext": {
                "trustedCa": {"inlineBytes": b64(test_cert_pem())}}})
        };
        raws.push(RawResource {
            type_url: SECRET.to_string(),
            name,
            json,
        });
    }
}

/// Clusters a golden's listeners route to that another generator makes (the virtual-probe
/// goldens hold only the probe listener, not the inbound cluster it routes to), as STATIC test
/// clusters on loopback, so the listener translates as it would in a whole push.
fn add_missing_clusters(raws: &mut Vec<RawResource>) {
    let mut named = BTreeSet::new();
    for raw in raws.iter().filter(|r| r.type_url == LISTENER) {
        collect_cluster_names(&raw.json, &mut named);
    }
    for raw in raws.iter().filter(|r| r.type_url == CLUSTER) {
        named.remove(&raw.name);
    }
    for name in named {
        let endpoint = serde_json::json!({"endpoint": {"address": {"socketAddress":
            {"address": "127.0.0.1", "portValue": 8080}}}});
        raws.push(RawResource {
            type_url: CLUSTER.to_string(),
            json: serde_json::json!({"name": name, "type": "STATIC", "connectTimeout": "5s",
                "loadAssignment": {"clusterName": name, "endpoints": [{"lbEndpoints": [endpoint]}]}}),
            name,
        });
    }
}

/// The `cluster` of routes and TCP proxies.
fn collect_cluster_names(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| collect_cluster_names(v, out)),
        Value::Object(map) => {
            for (key, v) in map {
                match v {
                    Value::String(s) if key == "cluster" => {
                        out.insert(s.clone());
                    }
                    _ => collect_cluster_names(v, out),
                }
            }
        }
        _ => {}
    }
}

fn collect_secret_names(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::String(s) if is_identity_secret(s) || is_ca_secret(s) => {
            out.insert(s.clone());
        }
        Value::Array(items) => items.iter().for_each(|v| collect_secret_names(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_secret_names(v, out)),
        _ => {}
    }
}

/// The secrets TLS contexts name by reference: those they present (`presented`), and
/// MeshTrust's `system_trust_bundle` where they verify peers against it (`validation`).
fn collect_sds_references(
    value: &Value,
    presented: &mut BTreeSet<String>,
    validation: &mut BTreeSet<String>,
) {
    let name = |v: &Value| v.get("name").and_then(Value::as_str).map(str::to_string);
    match value {
        Value::Array(items) => items
            .iter()
            .for_each(|v| collect_sds_references(v, presented, validation)),
        Value::Object(map) => {
            for (key, v) in map {
                match key.as_str() {
                    "tlsCertificateSdsSecretConfigs" => {
                        let items = v.as_array().into_iter().flatten();
                        presented.extend(items.filter_map(name));
                    }
                    "validationContextSdsSecretConfig" => {
                        validation.extend(name(v).filter(|n| n == "system_trust_bundle"));
                    }
                    _ => collect_sds_references(v, presented, validation),
                }
            }
        }
        _ => {}
    }
}

fn is_identity_secret(name: &str) -> bool {
    ["identity_cert:secret:", "system_mtls_identity_", "kri_mid_"]
        .iter()
        .any(|p| name.starts_with(p))
}

fn is_ca_secret(name: &str) -> bool {
    ["mesh_ca:secret:", "system_mtls_ca_"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Replaces the stand-ins a Secret's inline PEMs hold (the e2e goldens' `CERT`, `KEY`, `CA`,
/// the admin goldens' `keyPEM`) with the test certificate and key, so the Secret loads.
fn replace_placeholder_pems(secret: &mut Value) {
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    for (pointer, pem) in [
        (
            "/tlsCertificate/certificateChain/inlineBytes",
            test_cert_pem(),
        ),
        ("/tlsCertificate/privateKey/inlineBytes", test_key_pem()),
        ("/validationContext/trustedCa/inlineBytes", test_cert_pem()),
    ] {
        let Some(value) = secret.pointer_mut(pointer) else {
            continue;
        };
        let text = value.as_str().and_then(|b64| engine.decode(b64).ok());
        if !text.is_some_and(|t| t.windows(11).any(|w| w == b"-----BEGIN ")) {
            *value = Value::String(engine.encode(pem));
        }
    }
}

/// Like [`load`], after `edit` has changed each resource's JSON (placeholders replaced).
pub fn load_edited(file: &Path, edit: fn(&mut Value)) -> Result<Vec<GoldenResource>, String> {
    let shown = file.display().to_string();
    let mut raws = read_golden(file).map_err(|e| e.to_string())?;
    let mut addresses = Addresses::default();
    raws.iter_mut().for_each(|raw| {
        raw.name = replaced(&raw.name);
        replace_placeholders(&mut raw.json, &mut addresses);
        if raw.type_url == SECRET {
            replace_placeholder_pems(&mut raw.json);
        }
        edit(&mut raw.json);
    });
    add_missing_secrets(&mut raws);
    add_missing_clusters(&mut raws);
    raws.iter()
        .map(|raw| decode_raw(raw, &shown).map_err(|e| e.to_string()))
        .collect()
}

/// Writes the internal addresses of kuma-cp's inbound-proxy goldens as Envoy takes them:
/// their test input gives CIDRs (`fc00::/7`, `::1/128`), which kuma-cp copies into
/// `address_prefix`, where Envoy 1.40 (and Bearing) refuse them.
pub fn internal_addresses_as_envoy_takes_them(value: &mut Value) {
    match value {
        Value::String(s) if s == "fc00::/7" || s == "::1/128" => {
            s.truncate(s.find('/').unwrap_or(s.len()))
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(internal_addresses_as_envoy_takes_them),
        Value::Object(map) => map
            .values_mut()
            .for_each(internal_addresses_as_envoy_takes_them),
        _ => {}
    }
}

/// The node a golden is for, from where it sits in the corpus.
pub fn node_for(short: &str) -> NodeInfo {
    let proxy_type = if short.starts_with("gateway/") || short.contains("builtingateway") {
        "gateway"
    } else if short.contains("egress") {
        "egress"
    } else if short.contains("ingress") {
        "ingress"
    } else {
        "dataplane"
    };
    NodeInfo {
        name: "golden".into(),
        mesh: "default".into(),
        proxy_type: proxy_type.into(),
        source: format!("golden {short}"),
    }
}

//! Kuma's Envoy goldens (`../shared/kuma-corpus`) for the tests of this crate: where they are,
//! and their placeholders replaced with valid test values.

use bearing_envoy_config::{decode_raw, read_golden, GoldenResource};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The address standing for `IP_REDACTED` (TEST-NET-1).
pub const TEST_IP: &str = "192.0.2.10";

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

/// A CA certificate (PEM) standing for `CERT_REDACTED`.
pub fn test_cert_pem() -> &'static str {
    static PEM: OnceLock<String> = OnceLock::new();
    PEM.get_or_init(|| {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    })
}

/// Replaces the corpus placeholders in keys and string values.
pub fn replace_placeholders(value: &mut Value) {
    match value {
        Value::String(s) => *s = replaced(s),
        Value::Array(items) => items.iter_mut().for_each(replace_placeholders),
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (key, mut child) in entries {
                replace_placeholders(&mut child);
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

/// Reads a golden, replaces its placeholders and decodes every resource.
pub fn load(file: &Path) -> Result<Vec<GoldenResource>, String> {
    let shown = file.display().to_string();
    let mut raws = read_golden(file).map_err(|e| e.to_string())?;
    raws.iter_mut().for_each(|raw| {
        raw.name = replaced(&raw.name);
        replace_placeholders(&mut raw.json);
    });
    raws.iter()
        .map(|raw| decode_raw(raw, &shown).map_err(|e| e.to_string()))
        .collect()
}

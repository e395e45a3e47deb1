//! Mesh mTLS settings: which certificate authority a mesh's enabled backend names, read from
//! the store (builtin: Kuma's two Secrets; provided: DataSources), and the SNI and SPIFFE
//! names mesh traffic carries.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use bearing_model::validate::parse_go_duration;
use bearing_model::{DataSource, Mesh, ProvidedCaConf, Resource, Spec, Store};
use bearing_proxy_config::MeshTls;

/// Kuma's default leaf certificate lifetime (`dpCert.rotation.expiration`).
pub const DEFAULT_LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The SPIFFE id of a service: `spiffe://<mesh>/<service>`.
pub fn spiffe_id(mesh: &str, service: &str) -> String {
    format!("spiffe://{mesh}/{service}")
}

/// The mesh's mTLS material for a proxy holding `services`, or `None` when the mesh has no
/// enabled backend. The error names the field and what is missing.
pub fn mesh_tls(
    store: &Store,
    mesh_name: &str,
    mesh: &Mesh,
    services: Vec<String>,
) -> Result<Option<MeshTls>, (String, String)> {
    let Some(mtls) = &mesh.mtls else {
        return Ok(None);
    };
    let Some(backend) = mtls.enabled() else {
        return Ok(None);
    };
    let index = mtls
        .backends
        .iter()
        .position(|b| b.name == backend.name)
        .unwrap_or(0);
    let field = format!("mtls.backends[{index}]");
    let (cert, key) = match backend.kind.as_str() {
        "builtin" => {
            let (cert_name, key_name) = bearing_tls::builtin_secret_names(mesh_name, &backend.name);
            let hint = format!(
                "create it with `bearing ca generate --mesh {mesh_name} --backend {} --store <store dir>`",
                backend.name
            );
            let cert = secret(store, mesh_name, &cert_name)
                .map_err(|m| (field.clone(), format!("builtin CA: {m}; {hint}")))?;
            let key = secret(store, mesh_name, &key_name)
                .map_err(|m| (field.clone(), format!("builtin CA: {m}; {hint}")))?;
            (cert, key)
        }
        _ => {
            let conf: ProvidedCaConf = backend
                .conf
                .clone()
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| (format!("{field}.conf"), e.to_string()))?
                .unwrap_or_default();
            let cert = resolve(&conf.cert, store, mesh_name)
                .map_err(|m| (format!("{field}.conf.cert"), m))?;
            let key = resolve(&conf.key, store, mesh_name)
                .map_err(|m| (format!("{field}.conf.key"), m))?;
            (cert, key)
        }
    };
    let text = |bytes: Vec<u8>, what: &str| {
        String::from_utf8(bytes)
            .map_err(|_| (field.clone(), format!("the CA {what} is not PEM text")))
    };
    let (ca_cert_pem, ca_key_pem) = (text(cert, "certificate")?, text(key, "key")?);
    // Checked here so that a bad CA rejects the config and the last good one keeps serving.
    bearing_tls::MeshCa::from_pem(&ca_cert_pem, &ca_key_pem)
        .map_err(|e| (field.clone(), format!("unusable CA: {e}")))?;
    let leaf_lifetime = backend
        .dp_cert
        .as_ref()
        .and_then(|d| d.rotation.as_ref())
        .and_then(|r| r.expiration.as_deref())
        .and_then(|e| parse_go_duration(e).ok())
        .unwrap_or(DEFAULT_LEAF_LIFETIME);
    Ok(Some(MeshTls {
        mesh: mesh_name.to_string(),
        backend: backend.name.clone(),
        ca_cert_pem,
        ca_key_pem,
        services,
        permissive: backend.permissive(),
        leaf_lifetime,
    }))
}

/// The bytes a DataSource names: a Secret of `mesh`, a file, base64 or a string.
pub fn resolve(ds: &DataSource, store: &Store, mesh: &str) -> Result<Vec<u8>, String> {
    if let Some(name) = &ds.secret {
        secret(store, mesh, name)
    } else if let Some(path) = &ds.file {
        std::fs::read(path).map_err(|e| format!("cannot read file {path}: {e}"))
    } else if let Some(b64) = &ds.inline {
        decode(b64).map_err(|e| format!("inline: {e}"))
    } else if let Some(text) = &ds.inline_string {
        Ok(text.clone().into_bytes())
    } else {
        Err("must have one of secret, file, inline, inlineString".into())
    }
}

/// The decoded data of Secret `name` in `mesh`.
fn secret(store: &Store, mesh: &str, name: &str) -> Result<Vec<u8>, String> {
    let found = store.resources.iter().find_map(|r| match &r.spec {
        Spec::Secret(s) if r.meta.name == name && mesh_of(r) == mesh => Some(s),
        _ => None,
    });
    let s = found.ok_or_else(|| format!("Secret {name:?} of mesh {mesh:?} is not in the store"))?;
    decode(&s.data).map_err(|e| format!("Secret {name:?}: {e}"))
}

fn decode(b64: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("not valid base64: {e}"))
}

/// A resource's mesh (`default` when unset).
pub fn mesh_of(r: &Resource) -> &str {
    r.mesh.as_deref().unwrap_or("default")
}

/// Every Mesh of the store with its spec; `default` is implicit, as kuma-cp creates it.
pub fn meshes(store: &Store) -> BTreeMap<&str, &Mesh> {
    let mut all: BTreeMap<&str, &Mesh> = store
        .resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Mesh(m) => Some((r.meta.name.as_str(), m)),
            _ => None,
        })
        .collect();
    static DEFAULT: std::sync::OnceLock<Mesh> = std::sync::OnceLock::new();
    all.entry("default")
        .or_insert_with(|| DEFAULT.get_or_init(Mesh::default));
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::tests::store;

    const MESH: &str = "type: Mesh\nname: m1\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    mode: PERMISSIVE\n    dpCert: {rotation: {expiration: 1h}}\n";

    #[test]
    fn builtin_ca_comes_from_kumas_secrets() {
        let ca = bearing_tls::MeshCa::generate("m1").unwrap();
        let secrets = bearing_tls::builtin_secrets_yaml("m1", "ca-1", &ca);
        let cert_only = secrets.split("---").next().unwrap();
        let s = store(&format!("{MESH}---\n{cert_only}"));
        let err = mesh_tls(&s, "m1", meshes(&s)["m1"], vec![]).unwrap_err();
        assert_eq!(err.0, "mtls.backends[0]");
        assert!(err.1.contains("m1.ca-builtin-key-ca-1"), "{}", err.1);
        assert!(
            err.1
                .contains("bearing ca generate --mesh m1 --backend ca-1"),
            "{}",
            err.1
        );

        let s = store(&format!("{MESH}---\n{secrets}"));
        let tls = mesh_tls(&s, "m1", meshes(&s)["m1"], vec!["web".into()])
            .unwrap()
            .unwrap();
        assert_eq!(tls.ca_cert_pem, ca.cert_pem());
        assert_eq!(tls.ca_key_pem, ca.key_pem());
        assert!(tls.permissive);
        assert_eq!(tls.leaf_lifetime, Duration::from_secs(3600));
        assert!(mesh_tls(&s, "default", meshes(&s)["default"], vec![])
            .unwrap()
            .is_none());
    }

    #[test]
    fn provided_ca_reads_data_sources_and_is_checked() {
        let ca = bearing_tls::MeshCa::generate("default").unwrap();
        let other = bearing_tls::MeshCa::generate("default").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        std::fs::write(&cert_path, ca.cert_pem()).unwrap();
        std::fs::write(&key_path, ca.key_pem()).unwrap();
        let s = store(&format!(
            "type: Mesh\nname: default\nmtls:\n  enabledBackend: p\n  backends:\n  - name: p\n    type: provided\n    conf:\n      cert: {{file: {}}}\n      key: {{file: {}}}\n",
            cert_path.display(),
            key_path.display()
        ));
        let tls = mesh_tls(&s, "default", meshes(&s)["default"], vec![])
            .unwrap()
            .unwrap();
        assert_eq!(tls.ca_key_pem, ca.key_pem());
        std::fs::write(&key_path, other.key_pem()).unwrap();
        let err = mesh_tls(&s, "default", meshes(&s)["default"], vec![]).unwrap_err();
        assert!(err.1.contains("unusable CA"), "{}", err.1);
        std::fs::remove_file(&key_path).unwrap();
        let err = mesh_tls(&s, "default", meshes(&s)["default"], vec![]).unwrap_err();
        assert_eq!(err.0, "mtls.backends[0].conf.key");
        assert!(err.1.contains("cannot read file"), "{}", err.1);
    }
}

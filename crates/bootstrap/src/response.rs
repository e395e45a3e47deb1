//! kuma-cp's answer to `/bootstrap`: the Envoy bootstrap it generated (base64 YAML) and the
//! `kumaSidecarConfiguration`, reduced to what Bearing's ADS client and runtime use.

use std::path::PathBuf;

use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The parsed answer: where and how to open the ADS stream, and the sidecar settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CpBootstrap {
    /// The node to send on the ADS stream.
    pub node: Node,
    /// The ADS server.
    pub ads: AdsConfig,
    /// Envoy's admin address the CP chose (`address`, `port`), when TCP.
    pub admin: Option<(String, u16)>,
    /// The Unix socket kuma-cp puts Envoy's admin on instead (`admin.address.pipe.path`:
    /// `<workdir>/kuma-envoy-admin.sock` when the proxy sends a workdir and kuma-cp's admin
    /// over a Unix socket is on, as in 2.14 by default).
    pub admin_socket: Option<PathBuf>,
    /// Whether the CP asks for health discovery (HDS) on the ADS cluster.
    pub hds: bool,
    /// `kumaSidecarConfiguration`.
    pub sidecar: SidecarConfiguration,
}

/// The Envoy node (`node` of the bootstrap).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// `<mesh>.<name>` (Kubernetes: `<mesh>.<name>.<namespace>`).
    pub id: String,
    /// The service (Envoy's `cluster`).
    pub cluster: String,
    /// The metadata (`dataplane.resource`, `dataplane.proxyType`, `features`, `version`,
    /// ...), as the protobuf `Struct` to send.
    pub metadata: Map<String, Value>,
}

/// How the ADS stream is opened.
#[derive(Debug, Clone, PartialEq)]
pub struct AdsConfig {
    /// The CP's xDS host (a name or an IP, without brackets).
    pub host: String,
    /// The CP's xDS port.
    pub port: u16,
    /// TLS to the CP (`None`: plaintext, e.g. a CP reached over `http://`).
    pub tls: Option<AdsTls>,
    /// State of the World or incremental.
    pub api: AdsApi,
    /// Send the node on the first request of a stream only.
    pub set_node_on_first_message_only: bool,
    /// Where the `authorization` metadata of the stream comes from.
    pub authorization: Authorization,
}

/// TLS of the ADS connection as the bootstrap states it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AdsTls {
    /// SNI (the CP's host).
    pub sni: String,
    /// The CA PEM the CP told the proxy to trust (the `caCert` it was sent); empty when none
    /// (system roots).
    pub trusted_ca_pem: String,
    /// Names and IPs the CP's certificate must carry (`matchTypedSubjectAltNames`).
    pub subject_alt_names: Vec<String>,
}

/// `apiType` of `adsConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdsApi {
    /// `GRPC`: State of the World.
    Grpc,
    /// `DELTA_GRPC`: incremental (sent only for the feature `feature-delta-grpc`).
    DeltaGrpc,
}

/// The `authorization` metadata of the ADS stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Authorization {
    /// No token (the CP does not authenticate proxies).
    None,
    /// The token as the CP put it into `initialMetadata`.
    Token(String),
    /// Read from this file for every new stream (`file_based_metadata` credentials).
    File(PathBuf),
}

/// `kumaSidecarConfiguration`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct SidecarConfiguration {
    /// `networking`.
    pub networking: Networking,
    /// `metrics`.
    pub metrics: Metrics,
}

/// `kumaSidecarConfiguration.networking`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Networking {
    /// The Dataplane's address.
    pub address: String,
    /// CoreDNS Corefile template (base64 in the JSON; unused: Bearing runs no CoreDNS).
    #[serde(deserialize_with = "base64_bytes")]
    pub corefile_template: Vec<u8>,
}

/// `kumaSidecarConfiguration.metrics`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct Metrics {
    /// Application endpoints merged into the proxy's metrics.
    #[serde(deserialize_with = "null_as_empty")]
    pub aggregate: Vec<Aggregate>,
}

/// One application metrics endpoint.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct Aggregate {
    /// Name.
    pub name: String,
    /// Address.
    pub address: String,
    /// Port.
    pub port: u32,
    /// Path.
    pub path: String,
}

fn base64_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    match text {
        None => Ok(Vec::new()),
        Some(t) => base64::engine::general_purpose::STANDARD
            .decode(t.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("not base64: {e}"))),
    }
}

fn null_as_empty<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// The JSON body of a 200 answer (Kuma's `BootstrapResponse`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BootstrapResponse {
    #[serde(deserialize_with = "base64_bytes")]
    bootstrap: Vec<u8>,
    #[serde(default)]
    kuma_sidecar_configuration: SidecarConfiguration,
}

/// Parses a 200 answer of `/bootstrap`.
pub fn parse_response(body: &[u8]) -> Result<CpBootstrap, String> {
    let response: BootstrapResponse = serde_json::from_slice(body)
        .map_err(|e| format!("the answer is not a bootstrap response: {e}"))?;
    let yaml = std::str::from_utf8(&response.bootstrap)
        .map_err(|e| format!("bootstrap: not UTF-8: {e}"))?;
    let mut bootstrap = parse_envoy_bootstrap(yaml)?;
    bootstrap.sidecar = response.kuma_sidecar_configuration;
    Ok(bootstrap)
}

/// Reads what Bearing needs from an Envoy bootstrap YAML as kuma-cp generates it
/// (`pkg/xds/bootstrap/template_v3.go`). Errors name the field path.
pub fn parse_envoy_bootstrap(yaml: &str) -> Result<CpBootstrap, String> {
    let docs =
        bearing_model::yaml::parse_documents(yaml, 1).map_err(|e| format!("bootstrap: {e}"))?;
    let root = match docs.into_iter().next() {
        Some(doc) if doc.value.is_object() => doc.value,
        _ => return Err("bootstrap: not a YAML mapping".into()),
    };
    let at = Path::root(&root);
    let node = at.get("node")?;
    let node = Node {
        id: node.get("id")?.string()?,
        cluster: node
            .optional("cluster")
            .map_or(Ok(String::new()), |c| c.string())?,
        metadata: node
            .optional("metadata")
            .map_or(Ok(Map::new()), |m| m.object().cloned())?,
    };
    let ads_config = at.get("dynamicResources")?.get("adsConfig")?;
    let ads = ads(&at, &ads_config)?;
    let admin = at
        .optional("admin")
        .and_then(|a| a.optional("address"))
        .and_then(|a| a.optional("socketAddress"))
        .map(|s| socket_address(&s))
        .transpose()?;
    let admin_socket = at
        .optional("admin")
        .and_then(|a| a.optional("address"))
        .and_then(|a| a.optional("pipe"))
        .map(|p| p.get("path")?.string().map(PathBuf::from))
        .transpose()?;
    Ok(CpBootstrap {
        node,
        ads,
        admin,
        admin_socket,
        hds: at.optional("hdsConfig").is_some(),
        sidecar: SidecarConfiguration::default(),
    })
}

/// The ADS server of `adsConfig`: an `envoyGrpc` service naming a static cluster (kuma-cp's
/// `ads_cluster`, with its TLS and the `cp_validation_ctx` secret), or a `googleGrpc` service
/// with its target, root certificates and token file.
fn ads(root: &Path, config: &Path) -> Result<AdsConfig, String> {
    let api = match config.get("apiType")?.string()?.as_str() {
        "GRPC" => AdsApi::Grpc,
        "DELTA_GRPC" => AdsApi::DeltaGrpc,
        other => {
            return Err(config
                .get("apiType")?
                .problem(&format!("{other:?} is not GRPC or DELTA_GRPC")))
        }
    };
    let set_node_on_first_message_only = config
        .optional("setNodeOnFirstMessageOnly")
        .map_or(Ok(false), |b| b.boolean())?;
    let service = config.get("grpcServices")?.index(0)?;
    let (host, port, tls, authorization) = if let Some(envoy) = service.optional("envoyGrpc") {
        let name = envoy.get("clusterName")?.string()?;
        let cluster = root
            .get("staticResources")?
            .get("clusters")?
            .find_named(&name)?;
        let endpoint = cluster
            .get("loadAssignment")?
            .get("endpoints")?
            .index(0)?
            .get("lbEndpoints")?
            .index(0)?
            .get("endpoint")?
            .get("address")?
            .get("socketAddress")?;
        let (host, port) = socket_address(&endpoint)?;
        let tls = match cluster.optional("transportSocket") {
            None => None,
            Some(socket) => Some(upstream_tls(root, &socket.get("typedConfig")?, &host)?),
        };
        (host, port, tls, initial_metadata_token(&service)?)
    } else if let Some(google) = service.optional("googleGrpc") {
        let target = google.get("targetUri")?;
        let text = target.string()?;
        let (host, port) = split_host_port(&text).ok_or_else(|| target.problem("not host:port"))?;
        let ca = google
            .optional("channelCredentials")
            .and_then(|c| c.optional("sslCredentials"));
        let tls = match ca {
            None => None,
            Some(ssl) => Some(AdsTls {
                sni: host.clone(),
                trusted_ca_pem: ssl
                    .optional("rootCerts")
                    .map_or(Ok(String::new()), |r| data_source(&r))?,
                subject_alt_names: Vec::new(),
            }),
        };
        let file = google.optional("callCredentials").and_then(|c| {
            c.index(0)
                .ok()?
                .optional("fromPlugin")?
                .optional("typedConfig")?
                .optional("secretData")?
                .optional("filename")
        });
        let authorization = match file {
            Some(f) => Authorization::File(PathBuf::from(f.string()?)),
            None => initial_metadata_token(&service)?,
        };
        (host, port, tls, authorization)
    } else {
        return Err(service.problem("neither envoyGrpc nor googleGrpc"));
    };
    Ok(AdsConfig {
        host,
        port,
        tls,
        api,
        set_node_on_first_message_only,
        authorization,
    })
}

/// The `authorization` entry of a gRPC service's `initialMetadata`.
fn initial_metadata_token(service: &Path) -> Result<Authorization, String> {
    let Some(entries) = service.optional("initialMetadata") else {
        return Ok(Authorization::None);
    };
    for i in 0..entries.len() {
        let entry = entries.index(i)?;
        if entry
            .get("key")?
            .string()?
            .eq_ignore_ascii_case("authorization")
        {
            return Ok(Authorization::Token(entry.get("value")?.string()?));
        }
    }
    Ok(Authorization::None)
}

/// The `UpstreamTlsContext` of the ADS cluster: SNI, and the trust of `cp_validation_ctx`
/// (inline, or the static secret it names).
fn upstream_tls(root: &Path, context: &Path, host: &str) -> Result<AdsTls, String> {
    let sni = context
        .optional("sni")
        .map_or(Ok(host.to_string()), |s| s.string())?;
    let common = context.optional("commonTlsContext");
    let validation = match common.as_ref() {
        None => None,
        Some(c) => match c.optional("validationContextSdsSecretConfig") {
            Some(sds) => {
                let name = sds.get("name")?.string()?;
                let secret = root
                    .get("staticResources")?
                    .get("secrets")?
                    .find_named(&name)?;
                Some(secret.get("validationContext")?)
            }
            None => c.optional("validationContext"),
        },
    };
    let mut tls = AdsTls {
        sni,
        ..AdsTls::default()
    };
    if let Some(v) = validation {
        if let Some(ca) = v.optional("trustedCa") {
            tls.trusted_ca_pem = data_source(&ca)?;
        }
        if let Some(matchers) = v.optional("matchTypedSubjectAltNames") {
            for i in 0..matchers.len() {
                let exact = matchers.index(i)?.get("matcher")?.get("exact")?.string()?;
                if !tls.subject_alt_names.contains(&exact) {
                    tls.subject_alt_names.push(exact);
                }
            }
        }
    }
    Ok(tls)
}

/// An Envoy `DataSource` holding text: `inlineBytes` (base64), `inlineString` or `filename`.
fn data_source(source: &Path) -> Result<String, String> {
    if let Some(b) = source.optional("inlineBytes") {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b.string()?.as_bytes())
            .map_err(|e| b.problem(&format!("not base64: {e}")))?;
        return String::from_utf8(bytes).map_err(|_| b.problem("not UTF-8 text"));
    }
    if let Some(s) = source.optional("inlineString") {
        return s.string();
    }
    if let Some(f) = source.optional("filename") {
        let path = f.string()?;
        return std::fs::read_to_string(&path)
            .map_err(|e| f.problem(&format!("cannot read {path}: {e}")));
    }
    Err(source.problem("no inlineBytes, inlineString or filename"))
}

/// `{address, portValue}`.
fn socket_address(address: &Path) -> Result<(String, u16), String> {
    let host = address.get("address")?.string()?;
    let port = address.get("portValue")?;
    let number = match port.value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    let port = number
        .and_then(|n| u16::try_from(n).ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| port.problem("not a port"))?;
    Ok((host, port))
}

/// `host:port` or `[v6]:port`.
fn split_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.parse().ok().filter(|p| *p != 0)?))
}

/// A value inside the bootstrap and its field path, for errors that name where.
#[derive(Clone)]
struct Path<'a> {
    value: &'a Value,
    path: String,
}

impl<'a> Path<'a> {
    fn root(value: &'a Value) -> Path<'a> {
        Path {
            value,
            path: String::new(),
        }
    }

    fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn problem(&self, what: &str) -> String {
        format!("bootstrap: {}: {what}", self.path)
    }

    fn optional(&self, key: &str) -> Option<Path<'a>> {
        let value = self.value.get(key).filter(|v| !v.is_null())?;
        Some(Path {
            value,
            path: self.child(key),
        })
    }

    fn get(&self, key: &str) -> Result<Path<'a>, String> {
        self.optional(key)
            .ok_or_else(|| format!("bootstrap: {} is missing", self.child(key)))
    }

    fn len(&self) -> usize {
        self.value.as_array().map_or(0, Vec::len)
    }

    fn index(&self, i: usize) -> Result<Path<'a>, String> {
        let value = self
            .value
            .as_array()
            .ok_or_else(|| self.problem("not a list"))?
            .get(i)
            .ok_or_else(|| self.problem(&format!("has no entry {i}")))?;
        Ok(Path {
            value,
            path: format!("{}[{i}]", self.path),
        })
    }

    /// The entry of a list whose `name` is `name`.
    fn find_named(&self, name: &str) -> Result<Path<'a>, String> {
        (0..self.len())
            .filter_map(|i| self.index(i).ok())
            .find(|e| e.value.get("name").and_then(Value::as_str) == Some(name))
            .ok_or_else(|| self.problem(&format!("no entry named {name:?}")))
    }

    fn string(&self) -> Result<String, String> {
        self.value
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| self.problem("not a string"))
    }

    fn boolean(&self) -> Result<bool, String> {
        self.value
            .as_bool()
            .ok_or_else(|| self.problem("not a boolean"))
    }

    fn object(&self) -> Result<&'a Map<String, Value>, String> {
        self.value
            .as_object()
            .ok_or_else(|| self.problem("not a mapping"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str) -> String {
        crate::tests::corpus(&format!("bootstrap/{name}"))
    }

    /// Kuma's CA of the bootstrap goldens (the `caCert` of the generator's requests).
    fn golden_ca() -> String {
        let text = golden("generator.default-config.golden.yaml");
        let b64 = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("inlineBytes: "))
            .unwrap();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        )
        .unwrap()
    }

    /// Every bootstrap document of the corpus parses, with its node and ADS server.
    #[test]
    fn every_corpus_bootstrap_parses() {
        let dir = format!(
            "{}/../../../shared/kuma-corpus/bootstrap",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let b =
                parse_envoy_bootstrap(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!b.node.id.is_empty(), "{}", path.display());
            assert!(b.ads.port != 0, "{}", path.display());
            assert!(b.ads.set_node_on_first_message_only, "{}", path.display());
            count += 1;
        }
        assert_eq!(count, 17, "the corpus has 17 bootstrap documents");
    }

    /// kuma-cp 2.14 puts Envoy's admin on `<workdir>/kuma-envoy-admin.sock` when the proxy
    /// sends a workdir (seen against a real kuma-cp): the socket is read, no TCP admin given.
    #[test]
    fn admin_on_a_unix_socket_is_read() {
        let text = golden("generator.default-config.golden.yaml");
        let tcp =
            "  address:\n    socketAddress:\n      address: 127.0.0.1\n      portValue: 1234\n";
        assert!(text.contains(tcp), "the golden's admin changed shape");
        let pipe =
            "  address:\n    pipe:\n      mode: 384\n      path: /tmp/kuma-envoy-admin.sock\n";
        let b = parse_envoy_bootstrap(&text.replacen(tcp, pipe, 1)).unwrap();
        assert_eq!(b.admin, None);
        assert_eq!(
            b.admin_socket.as_deref(),
            Some(std::path::Path::new("/tmp/kuma-envoy-admin.sock"))
        );
        let b = parse_envoy_bootstrap(&text).unwrap();
        assert_eq!(b.admin_socket, None);
    }

    #[test]
    fn envoy_grpc_ads_cluster_with_tls() {
        let b = parse_envoy_bootstrap(&golden("generator.default-config.golden.yaml")).unwrap();
        assert_eq!(b.node.id, "mesh.name.namespace");
        assert_eq!(b.node.cluster, "backend");
        assert_eq!(b.node.metadata["dataplane.admin.port"], "1234");
        assert_eq!(b.node.metadata["version"]["kumaDp"]["version"], "0.0.1");
        assert_eq!(b.admin, Some(("127.0.0.1".into(), 1234)));
        assert!(b.hds);
        let ads = &b.ads;
        assert_eq!((ads.host.as_str(), ads.port), ("localhost", 5678));
        assert_eq!(ads.api, AdsApi::Grpc);
        assert_eq!(ads.authorization, Authorization::Token("token".into()));
        let tls = ads.tls.as_ref().unwrap();
        assert_eq!(tls.sni, "localhost");
        assert_eq!(tls.subject_alt_names, vec!["localhost".to_string()]);
        assert_eq!(tls.trusted_ca_pem, golden_ca());
        assert!(tls
            .trusted_ca_pem
            .starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn delta_ipv6_and_token_file_forms() {
        let b = parse_envoy_bootstrap(&golden(
            "generator.custom-config-minimal-request-and-delta.golden.yaml",
        ))
        .unwrap();
        assert_eq!(b.ads.api, AdsApi::DeltaGrpc);

        let b = parse_envoy_bootstrap(&golden(
            "generator.default-config.kubernetes.ipv6.golden.yaml",
        ))
        .unwrap();
        assert_eq!(b.ads.host, "fd00:a123::1");
        assert_eq!(b.ads.tls.as_ref().unwrap().sni, "fd00:a123::1");

        let b = parse_envoy_bootstrap(&golden("generator.default-config-token-path.golden.yaml"))
            .unwrap();
        assert_eq!((b.ads.host.as_str(), b.ads.port), ("localhost", 5678));
        assert_eq!(
            b.ads.authorization,
            Authorization::File("/path/to/file".into())
        );
        assert_eq!(b.ads.tls.as_ref().unwrap().trusted_ca_pem, golden_ca());
    }

    #[test]
    fn response_with_sidecar_configuration() {
        let yaml = golden("generator.metrics-config.kubernetes.golden.yaml");
        let body = serde_json::json!({
            "bootstrap": base64::engine::general_purpose::STANDARD.encode(yaml.as_bytes()),
            "kumaSidecarConfiguration": {
                "networking": {"address": "10.0.0.1", "corefileTemplate": null},
                "metrics": {"aggregate": [{"name": "app", "address": "10.0.0.1", "port": 8080, "path": "/metrics"}]}
            }
        });
        let b = parse_response(body.to_string().as_bytes()).unwrap();
        assert_eq!(b.sidecar.networking.address, "10.0.0.1");
        assert_eq!(
            b.sidecar.metrics.aggregate,
            vec![Aggregate {
                name: "app".into(),
                address: "10.0.0.1".into(),
                port: 8080,
                path: "/metrics".into()
            }]
        );
        let body = serde_json::json!({
            "bootstrap": base64::engine::general_purpose::STANDARD.encode(yaml.as_bytes()),
            "kumaSidecarConfiguration": {"networking": {}, "metrics": {"aggregate": null}}
        });
        assert!(parse_response(body.to_string().as_bytes())
            .unwrap()
            .sidecar
            .metrics
            .aggregate
            .is_empty());
    }

    #[test]
    fn broken_answers_name_the_field() {
        assert!(parse_response(b"<html>")
            .unwrap_err()
            .contains("not a bootstrap response"));
        let no_ads = "node:\n  id: a.b\ndynamicResources: {}\n";
        let err = parse_envoy_bootstrap(no_ads).unwrap_err();
        assert_eq!(err, "bootstrap: dynamicResources.adsConfig is missing");
        let text = golden("generator.default-config.golden.yaml")
            .replace("portValue: 5678", "portValue: 0");
        let err = parse_envoy_bootstrap(&text).unwrap_err();
        assert!(err.contains("staticResources.clusters[1].loadAssignment.endpoints[0].lbEndpoints[0].endpoint.address.socketAddress.portValue: not a port"), "{err}");
        let text = golden("generator.default-config.golden.yaml")
            .replace("apiType: GRPC", "apiType: REST");
        assert!(parse_envoy_bootstrap(&text)
            .unwrap_err()
            .contains("\"REST\" is not GRPC"));
    }
}

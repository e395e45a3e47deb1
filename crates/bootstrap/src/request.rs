//! The JSON body kuma-dp POSTs to `/bootstrap` (Kuma's `BootstrapRequest`), field for field and
//! in the same order, so kuma-cp reads Bearing's request exactly as it reads kuma-dp's.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

/// The features Bearing advertises to kuma-cp (Kuma's `pkg/core/xds/types/features.go`).
///
/// A feature changes the config kuma-cp generates for the proxy, so only those Bearing can
/// serve are sent. Kuma 2.14's list, and why each is in or out:
/// - `feature-strict-inbound-ports` (kuma-dp sends it by default): IN. With strict mTLS the
///   CP then closes the inbound passthrough to ports the Dataplane does not declare; that is
///   ordinary listeners and filter chains, nothing the proxy process must do itself.
/// - `feature-tcp-accesslog-via-named-pipe` (kuma-dp always sends it): OUT. It promises a TCP
///   access-log streamer on a Unix socket beside the proxy (kuma-dp's), which Bearing has not.
///   Kuma 2.14's CP no longer reads it, so leaving it out changes nothing there.
/// - `feature-embedded-dns`: OUT, as kuma-dp leaves it out by default (it sends it only with
///   `KUMA_DNS_PROXY_PORT`): the CP then sends the DNS table in the `kuma:dns` listener, which
///   feeds Bearing's own DNS server (no CoreDNS either way).
/// - `feature-delta-grpc`: OUT. Bearing's ADS client speaks State-of-the-World only.
/// - `feature-transparent-proxy-in-dataplane-metadata`: OUT. It comes with kuma-dp's
///   `--transparent-proxy[-config]`, which Bearing does not take (it reads transparent
///   proxying from the Dataplane's `networking.transparentProxying`).
/// - `feature-bind-outbounds`: OUT. Outbound listeners bound to 127.0.0.0/8 addresses are not
///   supported.
/// - `feature-unified-resource-naming`: OUT (opt-in in kuma-dp too). The translation
///   recognises Kuma's unified names (`self_`, `system_`, `kri_`) as it does the legacy ones,
///   and against kuma-cp 2.14 (a Mesh with `meshServices: Exclusive`) with the feature on,
///   sidecars (`self_inbound_dp_*`, `kri_msvc_*` outbounds, `system_mtls_*` secrets) and a
///   zone ingress (`self_inbound_zi_*`) were applied and served mesh mTLS; a zone egress for a
///   MeshExternalService was NACKed (its hashed SNI is not among Bearing's SNI routes), and
///   MeshIdentity's outbound clusters verify two SPIFFE ids, which ProxyConfig cannot hold.
/// - `feature-spire`: OUT. No SPIRE agent socket for SDS.
/// - `feature-readiness-unix-socket`: OUT. Deprecated; readiness is served over TCP.
/// - `feature-otel-via-kuma-dp`: OUT. Bearing does not proxy OpenTelemetry over Unix sockets.
/// - `feature-reuse-port`: OUT. Bearing lays out its listening sockets per worker itself;
///   without the feature the CP marks listeners `enable_reuse_port: false`, Kuma's safe
///   default.
pub const FEATURES: &[&str] = &["feature-strict-inbound-ports"];

/// The body of `POST /bootstrap` (Kuma's `types.BootstrapRequest`; keys and omissions as its
/// JSON tags).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapRequest {
    /// Mesh of the proxy.
    pub mesh: String,
    /// Name of the proxy.
    pub name: String,
    /// `dataplane`, `ingress` or `egress`.
    pub proxy_type: String,
    /// The dataplane token (read from the token file, or given inline), trimmed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dataplane_token: String,
    /// The token file, which the CP names in the bootstrap so that it is re-read.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dataplane_token_path: String,
    /// The proxy's resource (Dataplane, ZoneIngress, ZoneEgress) as a JSON string.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dataplane_resource: String,
    /// Versions of the proxy.
    pub version: Version,
    /// PEM of the CA the proxy verifies the CP with (the CP puts it into `cp_validation_ctx`).
    pub ca_cert: String,
    /// Extra node metadata (kuma-dp: `HOST_IP` as `dataplane.dynamic.HOST_IP`).
    pub dynamic_metadata: Option<BTreeMap<String, String>>,
    /// Port of the DNS listener the CP generates (`kuma:dns`).
    #[serde(skip_serializing_if = "is_zero")]
    pub dns_port: u32,
    /// Port of the readiness reporter the CP routes `/ready` to.
    #[serde(skip_serializing_if = "is_zero")]
    pub readiness_port: u32,
    /// Kuma's wire key is `appProbeProxyDisabled` but it means "enabled" (Kuma issue 13885).
    #[serde(rename = "appProbeProxyDisabled", skip_serializing_if = "is_false")]
    pub app_probe_proxy_enabled: bool,
    /// `linux`.
    pub operating_system: String,
    /// The features the proxy implements ([`FEATURES`]).
    pub features: Vec<String>,
    /// Resources available to the proxy.
    pub resources: ProxyResources,
    /// Directory the CP names the proxy's Unix sockets in.
    pub workdir: String,
    /// Certificate of the metrics listener.
    pub metrics_resources: MetricsResources,
    /// The system CA bundle file (the CP's `system_trust_bundle`).
    pub system_ca_path: String,
    /// Whether IPv6 is usable on this host.
    pub ipv6_enabled: bool,
    /// SPIRE agent socket (not supported: empty).
    pub spire_resources: SpireResources,
}

/// `version` of the request.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Version {
    /// The agent's version (kuma-dp's; Bearing's own).
    pub kuma_dp: KumaDpVersion,
    /// The Envoy version (Bearing has no Envoy: see [`Version::bearing`]).
    pub envoy: EnvoyVersion,
}

/// `version.kumaDp`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KumaDpVersion {
    /// Version.
    pub version: String,
    /// Git tag.
    pub git_tag: String,
    /// Git commit.
    pub git_commit: String,
    /// Build date.
    pub build_date: String,
}

/// `version.envoy`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvoyVersion {
    /// Version.
    pub version: String,
    /// Build string.
    pub build: String,
    /// Whether this Envoy is the one the agent expects.
    pub kuma_dp_compatible: bool,
}

impl Version {
    /// Bearing's versions: the agent is Bearing, and there is no Envoy, which the `envoy`
    /// part says plainly (an empty version, a build naming Bearing, not compatible) rather than
    /// claiming one. kuma-cp only records these (insights, node metadata).
    pub fn bearing(version: &str) -> Version {
        Version {
            kuma_dp: KumaDpVersion {
                version: version.to_string(),
                git_tag: format!("v{version}"),
                git_commit: String::new(),
                build_date: String::new(),
            },
            envoy: EnvoyVersion {
                version: String::new(),
                build: format!("bearing/{version} (no Envoy)"),
                kuma_dp_compatible: false,
            },
        }
    }
}

/// `resources`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyResources {
    /// Memory limit; the CP sizes Envoy's overload manager with it. 0 (unknown): Bearing has
    /// no Envoy overload manager.
    pub max_heap_size_bytes: u64,
}

/// `metricsResources`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsResources {
    /// Certificate file of the metrics listener.
    pub cert_path: String,
    /// Key file of the metrics listener.
    pub key_path: String,
}

/// `spireResources`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpireResources {
    /// SPIRE agent socket.
    pub socket_path: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Where the dataplane token comes from (`--dataplane-token-file`, `--dataplane-token`).
#[derive(Debug, Clone, Default)]
pub struct TokenSource {
    /// The token file, re-read for every request (it may be rotated).
    pub file: Option<PathBuf>,
    /// The token given inline; wins over the file's content, as in kuma-dp.
    pub inline: Option<String>,
}

impl TokenSource {
    /// The current token, trimmed (empty when none is given); a token file that cannot be
    /// read is an error naming it.
    pub fn read(&self) -> Result<String, String> {
        let mut token = String::new();
        if let Some(path) = &self.file {
            token = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "cannot read the dataplane token file {}: {e}",
                    path.display()
                )
            })?;
        }
        if let Some(inline) = self.inline.as_ref().filter(|t| !t.is_empty()) {
            token = inline.clone();
        }
        Ok(token.trim().to_string())
    }

    /// The token file as the request names it.
    pub fn path_text(&self) -> String {
        self.file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }
}

/// What the proxy tells the CP about itself; everything of the request but the token, which
/// is read again for every attempt.
#[derive(Debug, Clone)]
pub struct ProxyIdentity {
    /// Mesh (for a zone proxy: empty).
    pub mesh: String,
    /// Name.
    pub name: String,
    /// `dataplane`, `ingress` or `egress`.
    pub proxy_type: String,
    /// The resource as JSON text, when the proxy brings it (Universal); `None` when the CP
    /// has it (Kubernetes).
    pub resource: Option<String>,
    /// PEM of the CA the CP is verified with ("" when the system roots are used).
    pub ca_cert: String,
    /// Extra node metadata.
    pub dynamic_metadata: BTreeMap<String, String>,
    /// Port of the CP-generated DNS listener (kuma-dp's `--dns-envoy-port`, 15054).
    pub dns_port: u32,
    /// Port of the readiness reporter (9902).
    pub readiness_port: u32,
    /// Directory the CP names Unix sockets in.
    pub workdir: String,
    /// Metrics listener certificate files.
    pub metrics: MetricsResources,
    /// The system CA bundle file.
    pub system_ca_path: String,
    /// Whether IPv6 is usable here.
    pub ipv6_enabled: bool,
}

impl ProxyIdentity {
    /// The request kuma-dp would send for this proxy with `token` from `tokens`.
    pub fn request(&self, token: String, tokens: &TokenSource) -> BootstrapRequest {
        BootstrapRequest {
            mesh: self.mesh.clone(),
            name: self.name.clone(),
            proxy_type: self.proxy_type.clone(),
            dataplane_token: token,
            dataplane_token_path: tokens.path_text(),
            dataplane_resource: self.resource.clone().unwrap_or_default(),
            version: Version::bearing(env!("CARGO_PKG_VERSION")),
            ca_cert: self.ca_cert.clone(),
            dynamic_metadata: Some(self.dynamic_metadata.clone()),
            dns_port: self.dns_port,
            readiness_port: self.readiness_port,
            app_probe_proxy_enabled: false,
            operating_system: std::env::consts::OS.to_string(),
            features: FEATURES.iter().map(|f| f.to_string()).collect(),
            resources: ProxyResources::default(),
            workdir: self.workdir.clone(),
            metrics_resources: self.metrics.clone(),
            system_ca_path: self.system_ca_path.clone(),
            ipv6_enabled: self.ipv6_enabled,
            spire_resources: SpireResources::default(),
        }
    }
}

impl BootstrapRequest {
    /// The body as kuma-dp sends it (Go's `json.MarshalIndent(request, "", " ")`).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b" ");
        let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
        // Strings, numbers, maps of strings and bools only: serializing cannot fail.
        if self.serialize(&mut serializer).is_err() {
            out.clear();
        }
        out
    }
}

/// The system CA bundle, as kuma-dp finds it (Go's list of Linux bundle files): the first that
/// exists, else "".
pub fn system_ca_path() -> String {
    const BUNDLES: &[&str] = &[
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/pki/tls/cacert.pem",
        "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
        "/etc/ssl/cert.pem",
    ];
    BUNDLES
        .iter()
        .find(|p| std::path::Path::new(p).is_file())
        .map(|p| p.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str) -> String {
        crate::tests::corpus(&format!("kuma-dp-bootstrap-request/{name}"))
    }

    /// The request of Kuma's golden tests, with the golden's version and features (the two
    /// things that differ for Bearing by design).
    fn golden_inputs(token_file: bool) -> (ProxyIdentity, TokenSource, Version) {
        let identity = ProxyIdentity {
            mesh: "demo".into(),
            name: "sample".into(),
            proxy_type: "dataplane".into(),
            resource: Some(
                r#"{"type":"Dataplane","mesh":"demo","name":"sample","creationTime":"0001-01-01T00:00:00Z","modificationTime":"0001-01-01T00:00:00Z","kri":"kri_dp_demo___sample_"}"#
                    .into(),
            ),
            ca_cert: String::new(),
            dynamic_metadata: BTreeMap::new(),
            dns_port: 15054,
            readiness_port: 9902,
            workdir: "/tmp".into(),
            metrics: MetricsResources::default(),
            system_ca_path: String::new(),
            ipv6_enabled: true,
        };
        let tokens = if token_file {
            TokenSource {
                file: Some("testdata/token".into()),
                inline: Some("token1234".into()),
            }
        } else {
            TokenSource {
                file: None,
                inline: Some("token".into()),
            }
        };
        let version = Version {
            kuma_dp: KumaDpVersion {
                version: "0.0.1".into(),
                git_tag: "v0.0.1".into(),
                git_commit: "91ce236824a9d875601679aa80c63783fb0e8725".into(),
                build_date: "2019-08-07T11:26:06Z".into(),
            },
            envoy: EnvoyVersion {
                version: "1.15.0".into(),
                build: "50ef0945fa2c5da4bff7627c3abf41fdd3b7cffd/1.15.0/clean-getenvoy-2aa564b-envoy/RELEASE/BoringSSL".into(),
                kuma_dp_compatible: false,
            },
        };
        (identity, tokens, version)
    }

    fn as_golden(mut request: BootstrapRequest, version: Version) -> String {
        request.version = version;
        request.features = vec!["feature-tcp-accesslog-via-named-pipe".into()];
        request.dynamic_metadata = request.dynamic_metadata.filter(|m| !m.is_empty());
        String::from_utf8(request.to_json()).unwrap()
    }

    /// Byte for byte Kuma's golden bodies (same keys, order, shapes, omissions), given the
    /// golden's inputs.
    #[test]
    fn body_matches_kumas_goldens() {
        let (identity, tokens, version) = golden_inputs(true);
        let request = identity.request(tokens.inline.clone().unwrap(), &tokens);
        assert_eq!(
            as_golden(request, version),
            golden("bootstrap-request-token-path.golden.json").trim_end()
        );

        let (mut identity, tokens, version) = golden_inputs(false);
        identity
            .dynamic_metadata
            .insert("test".into(), "value".into());
        identity.metrics = MetricsResources {
            cert_path: "/tmp/cert.pem".into(),
            key_path: "/tmp/key.pem".into(),
        };
        let request = identity.request("token".into(), &tokens);
        assert_eq!(
            as_golden(request, version),
            golden("bootstrap-request-metrics-metadata.golden.json").trim_end()
        );
    }

    /// The transparent-proxy golden differs only by `dataplaneConfig` (and the feature that
    /// comes with it), which Bearing never sends: it does not take `--transparent-proxy`.
    #[test]
    fn transparent_proxy_golden_differs_only_by_what_is_not_taken() {
        let (identity, tokens, version) = golden_inputs(false);
        let ours: serde_json::Value = serde_json::from_str(&as_golden(
            identity.request("token".into(), &tokens),
            version,
        ))
        .unwrap();
        let mut theirs: serde_json::Value =
            serde_json::from_str(&golden("bootstrap-request-transparent-proxy.golden.json"))
                .unwrap();
        let object = theirs.as_object_mut().unwrap();
        assert!(object.remove("dataplaneConfig").is_some());
        object["features"] = serde_json::json!(["feature-tcp-accesslog-via-named-pipe"]);
        assert_eq!(ours, theirs);
    }

    #[test]
    fn bearing_advertises_only_its_features() {
        let (identity, tokens, _) = golden_inputs(false);
        let request = identity.request(String::new(), &tokens);
        assert_eq!(request.features, vec!["feature-strict-inbound-ports"]);
        assert_eq!(request.version.kuma_dp.version, env!("CARGO_PKG_VERSION"));
        assert!(request.version.envoy.version.is_empty());
        let body: serde_json::Value = serde_json::from_slice(&request.to_json()).unwrap();
        assert_eq!(
            body["dynamicMetadata"],
            serde_json::json!({}),
            "kuma-dp sends a map"
        );
        assert!(
            body.get("dataplaneToken").is_none(),
            "an empty token is left out"
        );
    }

    #[test]
    fn token_is_reread_trimmed_and_inline_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  abc\n").unwrap();
        let mut tokens = TokenSource {
            file: Some(path.clone()),
            inline: None,
        };
        assert_eq!(tokens.read().unwrap(), "abc");
        std::fs::write(&path, "rotated\n").unwrap();
        assert_eq!(tokens.read().unwrap(), "rotated");
        tokens.inline = Some("inline".into());
        assert_eq!(tokens.read().unwrap(), "inline");
        std::fs::remove_file(&path).unwrap();
        let err = tokens.read().unwrap_err();
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
}

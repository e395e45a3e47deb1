//! Typed Kuma Universal resources, as `kumactl apply -f` accepts them.
//!
//! Field names follow Kuma's JSON (camelCase). Unknown fields are rejected so that a typo is an
//! error rather than a silently ignored setting; Kuma fields that Bearing does not act on yet are
//! accepted as opaque values (documented on each field) so real Kuma stores still load.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Kuma tags: `kuma.io/service`, `kuma.io/protocol`, `version`, …
pub type Tags = BTreeMap<String, String>;

/// The tag naming the service an inbound belongs to.
pub const SERVICE_TAG: &str = "kuma.io/service";
/// The tag naming the protocol of an inbound (`tcp`, `http`, `http2`, `grpc`, `kafka`).
pub const PROTOCOL_TAG: &str = "kuma.io/protocol";
/// The tag naming a destination's mesh (cross-mesh gateways).
pub const MESH_TAG: &str = "kuma.io/mesh";
/// The tag naming the zone a dataplane runs in.
pub const ZONE_TAG: &str = "kuma.io/zone";

/// Metadata every resource carries besides its spec.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    /// Resource name, unique per type (and mesh).
    pub name: String,
    /// Labels, as Kuma 2.x stores them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Set by the control plane; accepted and ignored.
    #[serde(default, skip_serializing)]
    pub creation_time: Option<Value>,
    /// Set by the control plane; accepted and ignored.
    #[serde(default, skip_serializing)]
    pub modification_time: Option<Value>,
}

/// `type: Mesh`: mesh-wide settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mesh {
    /// `mtls`: the certificate authority backends and which one is in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MeshMtls>,
    /// `logging` backends: accepted, not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<Value>,
    /// `tracing` backends: accepted, not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Value>,
    /// `metrics` backends: accepted, not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Value>,
    /// Networking options.
    #[serde(default)]
    pub networking: MeshNetworking,
    /// Routing options.
    #[serde(default)]
    pub routing: MeshRouting,
    /// `constraints`: accepted, not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<Value>,
    /// `meshServices.mode`: whether MeshServices are generated from `kuma.io/service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_services: Option<MeshServicesMode>,
    /// Control-plane behaviour; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_creating_initial_policies: Option<Value>,
}

/// `Mesh.mtls`: mutual TLS between the mesh's proxies.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshMtls {
    /// Name of the backend in force; mTLS is off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled_backend: Option<String>,
    /// Certificate authority backends.
    #[serde(default)]
    pub backends: Vec<MtlsBackend>,
    /// Control-plane behaviour; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_validation: Option<Value>,
}

impl MeshMtls {
    /// The enabled backend, if mTLS is on and it names an existing backend.
    pub fn enabled(&self) -> Option<&MtlsBackend> {
        let name = self.enabled_backend.as_deref().filter(|n| !n.is_empty())?;
        self.backends.iter().find(|b| b.name == name)
    }
}

/// One `Mesh.mtls.backends[]` entry: a certificate authority.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MtlsBackend {
    /// Backend name, referenced by `enabledBackend`.
    #[serde(default)]
    pub name: String,
    /// `builtin` (CA from Secrets `<mesh>.ca-builtin-cert|key-<name>`) or `provided`.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// `STRICT` (default: mTLS only) or `PERMISSIVE` (mTLS and plaintext on one port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Leaf certificate settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp_cert: Option<DpCert>,
    /// Backend settings: `provided` takes `cert` and `key` DataSources; `builtin`'s
    /// `caCert` (key size, lifetime) is accepted, the CA itself comes from its Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conf: Option<Value>,
    /// `rootChain`: accepted, not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_chain: Option<Value>,
}

impl MtlsBackend {
    /// Whether plaintext is accepted next to mTLS.
    pub fn permissive(&self) -> bool {
        self.mode.as_deref() == Some("PERMISSIVE")
    }
}

/// `dpCert` of an mTLS backend.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DpCert {
    /// `rotation.expiration`: leaf lifetime (Kuma's default 24h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<DpCertRotation>,
    /// `requestTimeout`: accepted, not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<Value>,
}

/// `dpCert.rotation`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DpCertRotation {
    /// Lifetime of a leaf certificate, a Go duration (`24h`, `1h30m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
}

/// Kuma's DataSource: bytes from a Secret, a file, base64 inline or an inline string.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataSource {
    /// Name of a Secret of the same mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Path of a file on the proxy's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Base64-encoded bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    /// The bytes as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_string: Option<String>,
}

/// `conf` of a `provided` mTLS backend.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProvidedCaConf {
    /// CA certificate (PEM).
    #[serde(default)]
    pub cert: DataSource,
    /// CA private key (PEM).
    #[serde(default)]
    pub key: DataSource,
}

/// `Mesh.meshServices`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshServicesMode {
    /// `Disabled` (default), `Everywhere`, `ReachableBackends` or `Exclusive`.
    #[serde(default)]
    pub mode: Option<String>,
}

impl Mesh {
    /// `meshServices.mode` (`Disabled` when unset).
    pub fn mesh_services_mode(&self) -> &str {
        self.mesh_services
            .as_ref()
            .and_then(|m| m.mode.as_deref())
            .unwrap_or("Disabled")
    }

    /// Whether kuma-cp would generate MeshServices for this mesh's `kuma.io/service`s.
    pub fn generates_mesh_services(&self) -> bool {
        self.mesh_services_mode() != "Disabled"
    }
}

/// `Mesh.networking`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshNetworking {
    /// `outbound.passthrough`: whether traffic to non-mesh destinations may leave (default true).
    #[serde(default)]
    pub outbound: MeshOutbound,
}

/// `Mesh.networking.outbound`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshOutbound {
    /// Allow traffic to destinations outside the mesh (Kuma's default: true).
    #[serde(default)]
    pub passthrough: Option<bool>,
}

/// `Mesh.routing`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshRouting {
    /// Prefer endpoints of the local zone.
    #[serde(default)]
    pub locality_aware_load_balancing: bool,
    /// Send cross-zone and external traffic through a zone egress.
    #[serde(default)]
    pub zone_egress: bool,
    /// Forbid access to MeshExternalServices by default.
    #[serde(default)]
    pub default_forbid_mesh_external_service_access: bool,
}

/// `type: Dataplane`: one proxy and the workload next to it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Dataplane {
    /// Addresses, inbounds, outbounds, gateway and transparent proxying.
    pub networking: DataplaneNetworking,
    /// Per-dataplane metrics backend: accepted, not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Value>,
    /// Virtual probes: accepted, not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<Value>,
}

/// `Dataplane.networking`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataplaneNetworking {
    /// The address other dataplanes reach this one at (and inbound listeners bind to).
    #[serde(default)]
    pub address: String,
    /// Address advertised to other dataplanes instead of `address` (e.g. behind NAT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_address: Option<String>,
    /// Services this dataplane offers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inbound: Vec<Inbound>,
    /// Services this dataplane consumes on local ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbound: Vec<Outbound>,
    /// Present when this dataplane is a gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Gateway>,
    /// Transparent proxy settings: present (with both redirect ports) when iptables
    /// redirects this workload's traffic to the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transparent_proxying: Option<TransparentProxying>,
    /// Admin port of this dataplane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<DataplaneAdmin>,
}

/// `Dataplane.networking.transparentProxying`, as `kumactl install transparent-proxy` sets it up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransparentProxying {
    /// Port iptables redirects inbound traffic to (Kuma: 15006); 0 means off.
    #[serde(default)]
    pub redirect_port_inbound: u32,
    /// Port iptables redirects outbound traffic to (Kuma: 15001); 0 means off.
    #[serde(default)]
    pub redirect_port_outbound: u32,
    /// Services whose endpoints are reachable directly at their IP:port, `*` for all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub direct_access_services: Vec<String>,
    /// `DualStack` (default), `IPv4` or `IPv6`: which families are captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_family_mode: Option<String>,
    /// The MeshServices this proxy may reach (the others get no outbound); with the Mesh's
    /// `meshServices.mode: ReachableBackends`, a proxy without it reaches none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable_backends: Option<ReachableBackends>,
}

/// `transparentProxying.reachableBackends`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReachableBackends {
    /// The backends, each by name or labels.
    #[serde(default)]
    pub refs: Vec<ReachableBackendRef>,
}

/// One `reachableBackends.refs` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReachableBackendRef {
    /// `MeshService` (other kinds name resources Bearing does not serve).
    pub kind: String,
    /// The resource's name (or `kuma.io/display-name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Kubernetes namespace: accepted, not acted on in a Universal store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels the resource must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Tags>,
    /// Only this port of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
}

impl TransparentProxying {
    /// Kuma treats transparent proxying as on when both redirect ports are set.
    pub fn enabled(&self) -> bool {
        self.redirect_port_inbound != 0 && self.redirect_port_outbound != 0
    }

    /// Whether IPv6 traffic is captured too (every mode but `IPv4`).
    pub fn ipv6(&self) -> bool {
        !self
            .ip_family_mode
            .as_deref()
            .is_some_and(|m| m.eq_ignore_ascii_case("ipv4"))
    }
}

/// One `networking.inbound[]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Inbound {
    /// Port the proxy listens on for this inbound.
    #[serde(default)]
    pub port: u32,
    /// Port the application listens on (defaults to `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_port: Option<u32>,
    /// Address the application listens on (defaults to 127.0.0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_address: Option<String>,
    /// Address the inbound listener binds (defaults to `networking.address`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Optional name, referenced by MeshService target ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tags; `kuma.io/service` is required.
    #[serde(default)]
    pub tags: Tags,
    /// Health reported by the control plane: `ready: false` removes it from load balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Active health probe: accepted, not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_probe: Option<Value>,
    /// `Ready`, `NotReady` or `Ignored` (Kuma 2.x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// `inbound[].health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Health {
    /// Whether the inbound takes traffic.
    #[serde(default)]
    pub ready: bool,
}

/// One `networking.outbound[]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Outbound {
    /// Local port the proxy listens on.
    #[serde(default)]
    pub port: u32,
    /// Local address (defaults to 127.0.0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Tags the destination inbounds must carry; `kuma.io/service` is required.
    #[serde(default)]
    pub tags: Tags,
    /// MeshService reference (acted on from issue #4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_ref: Option<Value>,
}

/// `networking.gateway`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gateway {
    /// `DELEGATED` (default) or `BUILTIN`.
    #[serde(default = "default_gateway_type", rename = "type")]
    pub kind: String,
    /// Tags; `kuma.io/service` is required.
    #[serde(default)]
    pub tags: Tags,
}

fn default_gateway_type() -> String {
    "DELEGATED".into()
}

/// `networking.admin`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataplaneAdmin {
    /// Admin port.
    #[serde(default)]
    pub port: u32,
}

/// `type: ZoneIngress`: the entry point of a zone for cross-zone traffic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneIngress {
    /// Zone this ingress belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Listener and advertised addresses.
    pub networking: ZoneProxyNetworking,
    /// Services reachable through this ingress (filled by the control plane).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub available_services: Vec<AvailableService>,
}

/// One `ZoneIngress.availableServices[]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AvailableService {
    /// Tags of the service's inbounds (`kuma.io/service` and more).
    #[serde(default)]
    pub tags: Tags,
    /// How many instances serve it.
    #[serde(default)]
    pub instances: u32,
    /// Mesh of the service.
    #[serde(default)]
    pub mesh: String,
    /// Whether it is an ExternalService of that zone.
    #[serde(default)]
    pub external_service: bool,
}

/// `type: ZoneEgress`: the exit point of a zone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneEgress {
    /// Zone this egress belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Listener address.
    pub networking: ZoneProxyNetworking,
}

/// `networking` of a ZoneIngress or ZoneEgress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneProxyNetworking {
    /// Address the listener binds.
    #[serde(default)]
    pub address: String,
    /// Port the listener binds.
    #[serde(default)]
    pub port: u32,
    /// Address other zones use (ingress only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_address: Option<String>,
    /// Port other zones use (ingress only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_port: Option<u32>,
    /// Admin port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<DataplaneAdmin>,
}

/// `type: ExternalService`: a service outside the mesh reached through it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalService {
    /// Where the service is and how to talk to it.
    pub networking: ExternalNetworking,
    /// Tags; `kuma.io/service` is required.
    #[serde(default)]
    pub tags: Tags,
}

/// `ExternalService.networking`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalNetworking {
    /// `host:port` of the external service.
    #[serde(default)]
    pub address: String,
    /// TLS towards the external service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ExternalTls>,
    /// Skip the IP-address check on `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_host_dns_lookup: Option<bool>,
    /// Do not generate a DNS entry (and VIP) for the host of `address`.
    #[serde(default, rename = "disableHostDNSEntry")]
    pub disable_host_dns_entry: bool,
}

/// `type: VirtualOutbound`: hostnames and ports, rendered from the tags of the inbounds its
/// selectors match, each given a virtual IP.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualOutbound {
    /// Which inbounds get a hostname (tag match, `*` matches any value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selectors: Vec<Selector>,
    /// Host and port templates and their parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conf: Option<VirtualOutboundConf>,
    /// The same two fields nested under `spec`, as one example in Kuma's docs writes them;
    /// accepted so that example loads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Box<VirtualOutbound>>,
}

impl VirtualOutbound {
    /// The selectors and conf in force, wherever they were written.
    pub fn effective(&self) -> &VirtualOutbound {
        self.spec.as_deref().unwrap_or(self)
    }
}

/// A tag selector of a (legacy) Kuma policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    /// Tags to match; the value `*` matches any value of a present tag.
    #[serde(rename = "match", default)]
    pub match_tags: Tags,
}

impl Selector {
    /// Whether `tags` satisfy every tag of this selector.
    pub fn matches(&self, tags: &Tags) -> bool {
        self.match_tags
            .iter()
            .all(|(k, v)| tags.get(k).is_some_and(|t| v == "*" || t == v))
    }

    /// Kuma's selector rank: exact tag values count first, then wildcards.
    pub fn rank(&self) -> (usize, usize) {
        let wildcards = self.match_tags.values().filter(|v| *v == "*").count();
        (self.match_tags.len() - wildcards, wildcards)
    }
}

/// `VirtualOutbound.conf`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualOutboundConf {
    /// Go template for the hostname.
    #[serde(default)]
    pub host: String,
    /// Go template for the port.
    #[serde(default)]
    pub port: String,
    /// Template keys and the tags they take their values from.
    #[serde(default)]
    pub parameters: Vec<TemplateParameter>,
}

/// One `conf.parameters[]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateParameter {
    /// Template key (alphanumeric).
    #[serde(default)]
    pub name: String,
    /// Tag the value comes from; defaults to `name`.
    #[serde(default, alias = "tag_key", skip_serializing_if = "Option::is_none")]
    pub tag_key: Option<String>,
}

impl TemplateParameter {
    /// The tag this parameter reads (`tagKey`, else `name`).
    pub fn tag(&self) -> &str {
        self.tag_key.as_deref().unwrap_or(&self.name)
    }
}

/// `ExternalService.networking.tls`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalTls {
    /// Originate TLS.
    #[serde(default)]
    pub enabled: bool,
    /// Allow TLS renegotiation.
    #[serde(default)]
    pub allow_renegotiation: bool,
    /// SNI to send (defaults to the host of `address`); `sni` is accepted as its alias, as
    /// in Kuma's own test inputs.
    #[serde(default, alias = "sni", skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// CA bundle that must have signed the server's certificate (system roots when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<DataSource>,
    /// Client certificate to present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<DataSource>,
    /// Key of the client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<DataSource>,
    /// Server verification options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<TlsVerification>,
}

/// `ExternalService.networking.tls.verification`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsVerification {
    /// `Secured` (default), `SkipSAN`, `SkipCA` or `SkipAll`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Name checked against the certificate instead of `serverName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// `subjectAltNames`: accepted, not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_alt_names: Option<Value>,
}

/// `type: Secret`: base64 data referenced by other resources.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Secret {
    /// Base64-encoded content.
    #[serde(default)]
    pub data: String,
}

/// `type: MeshService`: a destination (selected Dataplanes and their ports) with its own
/// hostnames and VIP.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshService {
    /// Selector and ports.
    #[serde(default)]
    pub spec: MeshServiceSpec,
    /// Filled by the control plane (addresses, VIPs); accepted, recomputed by Bearing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
}

/// `MeshService.spec`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshServiceSpec {
    /// Which Dataplanes serve it.
    #[serde(default)]
    pub selector: MeshServiceSelector,
    /// Ports it exposes.
    #[serde(default)]
    pub ports: Vec<MeshServicePort>,
    /// `identities`: accepted, not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identities: Option<Value>,
    /// `state`: accepted, not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Value>,
}

/// `MeshService.spec.selector`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshServiceSelector {
    /// Inbound tags a Dataplane inbound must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane_tags: Option<Tags>,
    /// A single Dataplane by name: accepted, not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane_ref: Option<Value>,
}

/// `MeshService.spec.ports[]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshServicePort {
    /// Optional name (what `sectionName` refers to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Port clients connect to.
    #[serde(default)]
    pub port: u32,
    /// The inbound port by number, or by the inbound's name; defaults to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<Value>,
    /// `tcp`, `http`, `http2`, `grpc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

/// `type: HostnameGenerator`: a template giving selected MeshServices a hostname.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostnameGenerator {
    /// Selector and template.
    #[serde(default)]
    pub spec: HostnameGeneratorSpec,
}

/// `HostnameGenerator.spec`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostnameGeneratorSpec {
    /// `meshService.matchLabels`: labels a MeshService must carry (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<HostnameGeneratorSelector>,
    /// Go template over `.DisplayName`, `.Name`, `.Mesh`, `.Zone`, `.Namespace`.
    #[serde(default)]
    pub template: String,
    /// `extension`: accepted, not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<Value>,
}

/// `HostnameGenerator.spec.selector`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostnameGeneratorSelector {
    /// Which MeshServices, by labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_service: Option<LabelSelector>,
    /// MeshExternalServices: accepted, not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_external_service: Option<Value>,
    /// MeshMultiZoneServices: accepted, not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_multi_zone_service: Option<Value>,
}

/// `matchLabels`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels that must all be present with these values.
    #[serde(default)]
    pub match_labels: Tags,
}

/// A typed resource of a kind Bearing understands.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type")]
pub enum Spec {
    /// `Mesh`
    Mesh(Mesh),
    /// `Dataplane`
    Dataplane(Dataplane),
    /// `ZoneIngress`
    ZoneIngress(ZoneIngress),
    /// `ZoneEgress`
    ZoneEgress(ZoneEgress),
    /// `ExternalService`
    ExternalService(ExternalService),
    /// `Secret`
    Secret(Secret),
    /// `VirtualOutbound`
    VirtualOutbound(VirtualOutbound),
    /// `MeshService`
    MeshService(MeshService),
    /// `HostnameGenerator`
    HostnameGenerator(HostnameGenerator),
    /// `MeshGateway`
    MeshGateway(crate::gateway::MeshGateway),
    /// `MeshGatewayRoute`
    MeshGatewayRoute(crate::gateway::MeshGatewayRoute),
}

impl Spec {
    /// The Kuma type name (`Dataplane`, …).
    pub fn type_name(&self) -> &'static str {
        match self {
            Spec::Mesh(_) => "Mesh",
            Spec::Dataplane(_) => "Dataplane",
            Spec::ZoneIngress(_) => "ZoneIngress",
            Spec::ZoneEgress(_) => "ZoneEgress",
            Spec::ExternalService(_) => "ExternalService",
            Spec::Secret(_) => "Secret",
            Spec::VirtualOutbound(_) => "VirtualOutbound",
            Spec::MeshService(_) => "MeshService",
            Spec::HostnameGenerator(_) => "HostnameGenerator",
            Spec::MeshGateway(_) => "MeshGateway",
            Spec::MeshGatewayRoute(_) => "MeshGatewayRoute",
        }
    }

    /// Whether resources of this type live in a mesh (and so need `mesh:`).
    pub fn is_mesh_scoped(type_name: &str) -> bool {
        !matches!(
            type_name,
            "Mesh" | "ZoneIngress" | "ZoneEgress" | "HostnameGenerator"
        )
    }
}

//! Kuma resources for mesh mTLS and zone tests (a Mesh with a builtin CA, ZoneIngress /
//! ZoneEgress, an ExternalService with TLS), shared by the tests of Bearing's zone proxies and
//! of its interoperation with Envoy.

use std::net::SocketAddr;

use anyhow::{ensure, Result};

use crate::{curl, Host};

/// Mesh `default` with the builtin CA backend `ca-1` in `mode` (`STRICT` or `PERMISSIVE`),
/// leaves valid 24 h, and `routing.zoneEgress` as given.
pub fn mesh_yaml(mode: &str, zone_egress: bool) -> String {
    format!(
        r#"type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
    mode: {mode}
    dpCert: {{rotation: {{expiration: 24h}}}}
routing:
  zoneEgress: {zone_egress}
"#
    )
}

/// MeshService `backend` as kuma-cp syncs it from zone-b to the other zones (`kuma.io/origin:
/// global`), selecting the `kuma.io/service: backend` inbounds on port 18080; a sidecar in
/// another zone reaches it at `backend.svc.zone-b.mesh.local`, through zone-b's ingress.
pub const BACKEND_SYNCED_FROM_ZONE_B: &str = "type: MeshService\nname: backend-zone-b\nmesh: default\nlabels: {kuma.io/display-name: backend, kuma.io/origin: global, kuma.io/zone: zone-b, kuma.io/env: universal}\nspec:\n  selector:\n    dataplaneTags: {kuma.io/service: backend}\n  ports:\n  - port: 18080\n    targetPort: 18080\n    appProtocol: http\n";

/// A Dataplane YAML (with an `inbound:` list) with Kuma's transparent-proxying ports
/// (15006 inbound, 15001 outbound) added, as `kumactl install transparent-proxy` expects.
pub fn with_transparent_proxying(dataplane: &str) -> String {
    dataplane.replacen(
        "  inbound:\n",
        "  transparentProxying: {redirectPortInbound: 15006, redirectPortOutbound: 15001}\n  inbound:\n",
        1,
    )
}

/// A ZoneIngress or ZoneEgress (`kind`) named `name` in `zone` at `host`'s IPv4 address.
pub fn zone_proxy_yaml(kind: &str, name: &str, zone: &str, host: &Host, port: u16) -> String {
    format!(
        "type: {kind}\nname: {name}\nzone: {zone}\nnetworking: {{address: {}, port: {port}}}\n",
        host.ip4()
    )
}

/// An HTTP ExternalService `name` of mesh `default` at `address`, reached with TLS: SNI
/// `server_name`, server verified against the CA certificate `ca_pem`.
pub fn external_service_yaml(
    name: &str,
    address: SocketAddr,
    server_name: &str,
    ca_pem: &str,
) -> String {
    let pem: String = ca_pem.lines().map(|l| format!("        {l}\n")).collect();
    format!(
        r#"type: ExternalService
name: {name}
mesh: default
tags: {{kuma.io/service: {name}, kuma.io/protocol: http}}
networking:
  address: {address}
  tls:
    enabled: true
    serverName: {server_name}
    caCert:
      inlineString: |
{pem}    verification: {{mode: Secured}}
"#
    )
}

/// GETs `url` from `host` and requires a 200 with exactly `body`.
pub fn get_body(host: &Host, url: &str, body: &str) -> Result<()> {
    let (code, got) = curl(host, [url])?;
    ensure!(
        code == 200 && got == body,
        "{url}: status {code}, body {got:?}"
    );
    Ok(())
}

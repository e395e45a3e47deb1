//! `bearing-tls`: mesh mTLS for a Bearing data-plane proxy, compatible with Kuma.
//!
//! - [`MeshCa`]: the mesh CA, generated like Kuma's builtin CA or loaded from its Secrets.
//! - [`Identity`]: the proxy's leaf certificate (`spiffe://<mesh>/<service>` URI SANs),
//!   renewed in place by [`spawn_renewal`].
//! - [`mesh_server_config`] / [`mesh_client_config`]: rustls configs for inbound and outbound
//!   mesh traffic (TLS 1.3, ALPN `kuma`, exact SPIFFE identity check), and
//!   [`external_client_config`] for TLS to external services.
//! - [`certified_key`] / [`gateway_server_config`]: TLS a builtin gateway terminates.
//! - [`parse_client_hello`]: allocation-free SNI/ALPN peek for routing and PERMISSIVE mode.
//! - [`tags_sni`] / [`resource_sni`] and their parsers: Kuma's SNI forms.
//!
//! Only the ring crypto provider is used (no aws-lc-rs, so no cmake in the build).

mod ca;
mod config;
mod error;
mod gateway;
mod identity;
mod kuma_sni;
mod sni;
mod wire_sni;

pub use ca::{
    builtin_secret_names, builtin_secrets_yaml, identity_secret_name, secret_yaml, MeshCa,
};
pub use config::{
    cross_mesh_client_config, cross_mesh_server_config, external_client_config, mesh_client_config,
    mesh_server_config, peer_spiffe_ids, ServerVerification, KUMA_ALPN,
};
pub use error::TlsError;
pub use gateway::{certified_key, gateway_server_config};
pub use identity::{issue_leaf, issue_leaf_pem, spawn_renewal, Identity};
pub use kuma_sni::{
    parse_resource_sni, parse_tags_sni, resource_sni, tags_sni, ResourceKind, ResourceSni, TagsSni,
};
pub use sni::{is_tls_record_start, parse_client_hello, ClientHello};
pub use wire_sni::{from_dns_sni, to_dns_sni};

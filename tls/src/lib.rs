//! `bearing-tls`: mesh mTLS for a Bearing data-plane proxy, compatible with Kuma.
//!
//! - [`MeshCa`]: the mesh CA, generated like Kuma's builtin CA or loaded from its Secrets.
//! - [`Identity`]: the proxy's leaf certificate (`spiffe://<mesh>/<service>` URI SANs),
//!   renewed in place by [`spawn_renewal`].
//! - [`mesh_acceptor`] / [`mesh_connector`]: TLS for inbound and outbound mesh traffic (TLS
//!   1.3, ALPN `kuma`, exact SPIFFE identity check, Kuma's SNI forms byte for byte), and
//!   [`external_connector`] for TLS to external services.
//! - [`SpiffeTrust`] / [`spiffe_acceptor`] / [`spiffe_client`]: the same under a MeshIdentity,
//!   peers verified as Envoy's SPIFFE validator does (trust domain → CA bundle).
//! - [`certified_key`] / [`gateway_acceptor`]: TLS a builtin gateway terminates.
//! - [`check_tls_params`]: whether Envoy's `tls_params` (kuma-cp's MeshTLS) build a context;
//!   every context above takes them in place of its own versions and lists.
//! - [`TlsAcceptor`], [`TlsConnector`], [`TlsStream`], [`Negotiated`]: the handshakes and
//!   their outcome, the only face of the TLS stack (BoringSSL) the rest of Bearing sees.
//! - [`parse_client_hello`]: allocation-free SNI/ALPN peek for routing and PERMISSIVE mode.
//! - [`tags_sni`] / [`resource_sni`] / [`mesh_service_kri_sni`] and their parsers: Kuma's SNI
//!   forms (tags, hashed resource, KRI).
//!
//! TLS runs on BoringSSL (Envoy's stack, built from the sources `boring-sys` vendors);
//! certificates are issued with rcgen (ring).

mod ca;
mod config;
mod error;
mod gateway;
mod identity;
mod kuma_sni;
mod params;
mod sni;
mod spiffe;
mod stack;

pub use ca::{
    builtin_secret_names, builtin_secrets_yaml, identity_secret_name, secret_yaml, MeshCa,
};
pub use config::{
    cross_mesh_acceptor, cross_mesh_connector, external_connector, mesh_acceptor, mesh_client,
    mesh_connector, spiffe_acceptor, spiffe_client, MeshClient, ServerVerification, KUMA_ALPN,
};
pub use error::TlsError;
pub use gateway::{certified_key, gateway_acceptor};
pub use identity::{
    issue_leaf, issue_leaf_pem, leaf_spiffe_services, leaf_validity, load_identity_pem,
    spawn_renewal, Identity, Renewer,
};
pub use kuma_sni::{
    mesh_service_kri_sni, parse_kri_sni, parse_resource_sni, parse_tags_sni, resource_sni,
    tags_sni, KriSni, ResourceKind, ResourceSni, TagsSni,
};
pub use params::check_tls_params;
pub use sni::{is_tls_record_start, parse_client_hello, ClientHello};
pub use spiffe::{own_trust_domain, trust_domain, SpiffeTrust};
pub use stack::{
    sni_problem, CertifiedKey, Negotiated, PeerNames, TlsAcceptor, TlsConnector, TlsStream,
    HANDSHAKE_TIMEOUT, MAX_SNI_LEN,
};

//! TLS a builtin gateway terminates for clients outside the mesh: server certificates from
//! the gateway's Secrets or files, chosen per connection by SNI.

use std::sync::Arc;

use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::provider;
use crate::TlsError;

/// A certificate chain (leaf first) and its private key, both PEM, ready to serve: the
/// signer is built once and the key is checked to belong to the leaf.
pub fn certified_key(cert_chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: "gateway certificate PEM",
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            what: "gateway certificate PEM",
            reason: "no CERTIFICATE block".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Key {
        what: "gateway private key PEM",
        reason: e.to_string(),
    })?;
    let key =
        CertifiedKey::from_der(chain, key, &provider()).map_err(|source| TlsError::Rustls {
            what: "gateway certificate and key",
            source,
        })?;
    Ok(Arc::new(key))
}

/// The server side of a gateway's TLS listener: TLS 1.2 and 1.3, no client certificate,
/// the certificate `resolver` picks for the SNI, and `alpn` offered (`h2`, `http/1.1` for
/// HTTPS; none for TLS listeners carrying TCP).
pub fn gateway_server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "gateway server protocol versions",
            source,
        })?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn loads_a_matching_pair_and_refuses_a_mismatched_one() {
        let (cert, key) = self_signed("a.example.com");
        assert!(certified_key(&cert, &key).is_ok());
        let (_, other_key) = self_signed("b.example.com");
        let err = certified_key(&cert, &other_key).unwrap_err().to_string();
        assert!(err.contains("gateway certificate and key"), "{err}");
        let err = certified_key("", &key).unwrap_err().to_string();
        assert!(err.contains("no CERTIFICATE block"), "{err}");
        let err = certified_key(&cert, "junk").unwrap_err().to_string();
        assert!(err.contains("gateway private key PEM"), "{err}");
    }
}

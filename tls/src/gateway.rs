//! TLS a builtin gateway terminates for clients outside the mesh: server certificates from
//! the gateway's Secrets or files, chosen per connection by SNI.

use std::sync::Arc;

use boring::ssl::{NameType, SniError, SslAlert, SslContext, SslContextBuilder};

use bearing_proxy_config::TlsParams;

use crate::config::{alpn_wire, select_alpn, tls12_and_13, versions};
use crate::stack::{check_sni, context_builder, ssl_err, CertifiedKey};
use crate::{TlsAcceptor, TlsError};

/// A certificate chain (leaf first) and its private key, both PEM, ready to serve: the key is
/// checked to belong to the leaf.
pub fn certified_key(cert_chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    CertifiedKey::from_pem(
        cert_chain_pem,
        key_pem,
        "gateway certificate PEM",
        "gateway private key PEM",
        "gateway certificate and key",
    )
    .map(Arc::new)
}

/// The server side of a gateway's TLS listener: TLS 1.2 and 1.3 (or `params`, for every
/// host), no client certificate,
/// `alpn` offered (`h2`, `http/1.1` for HTTPS; none for TLS listeners carrying TCP), and the
/// certificate of `keys` that `select` picks for the ClientHello's SNI (`None`: no SNI). One
/// context per certificate, built here once; a ClientHello whose SNI is not a host name or
/// for which `select` has no certificate is refused.
pub fn gateway_acceptor(
    keys: &[Arc<CertifiedKey>],
    select: impl Fn(Option<&str>) -> Option<usize> + Send + Sync + 'static,
    alpn: &[&[u8]],
    params: Option<&TlsParams>,
) -> Result<TlsAcceptor, TlsError> {
    let alpn = alpn_wire(alpn)?;
    let context = |key: Option<&CertifiedKey>| -> Result<SslContextBuilder, TlsError> {
        let what = "gateway TLS context";
        let mut b = context_builder(what)?;
        versions(&mut b, params, tls12_and_13, what)?;
        if let Some(key) = key {
            key.install(&mut b)
                .map_err(ssl_err("gateway certificate and key"))?;
        }
        if !alpn.is_empty() {
            select_alpn(&mut b, alpn.clone());
        }
        b.set_session_id_context(b"bearing-gateway")
            .map_err(ssl_err(what))?;
        Ok(b)
    };
    let per_key: Vec<SslContext> = keys
        .iter()
        .map(|k| context(Some(k)).map(SslContextBuilder::build))
        .collect::<Result<_, _>>()?;
    let mut main = context(None)?;
    main.set_servername_callback(move |ssl, alert| {
        check_sni(ssl, alert)?;
        let chosen = select(ssl.servername(NameType::HOST_NAME)).and_then(|i| per_key.get(i));
        match chosen.map(|c| ssl.set_ssl_context(c)) {
            Some(Ok(())) => Ok(()),
            _ => {
                *alert = SslAlert::HANDSHAKE_FAILURE;
                Err(SniError::ALERT_FATAL)
            }
        }
    });
    Ok(TlsAcceptor::fixed(main.build()))
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

//! rustls 0.23 on ring, configured as Bearing's `tls/src/config.rs` configures mesh mTLS
//! (`WebPkiClientVerifier` on the server; on the client a verifier that checks the chain with
//! `verify_server_cert_signed_by_trust_anchor` and the URI SAN with x509-parser). rustls cannot
//! send Kuma's tags-form SNI, so the client sends the hashed MeshService form, a DNS name.

use std::io;
use std::sync::Arc;

use common::{error, Negotiated, Pem, Pki, Stack, KUMA_ALPN, KUMA_HASHED_SNI};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

struct Rustls;

/// ring with X25519 as the only key exchange group.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = ring::default_provider();
    provider.kx_groups = vec![ring::kx_group::X25519];
    Arc::new(provider)
}

fn roots(pki: &Pki) -> io::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_cert.as_bytes()).map_err(error)?)
        .map_err(error)?;
    Ok(Arc::new(roots))
}

/// The chain `[leaf, CA]` and the leaf's key.
fn chain(
    pki: &Pki,
    leaf: &Pem,
) -> io::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    Ok((
        vec![
            CertificateDer::from_pem_slice(leaf.cert.as_bytes()).map_err(error)?,
            CertificateDer::from_pem_slice(pki.ca_cert.as_bytes()).map_err(error)?,
        ],
        PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).map_err(error)?,
    ))
}

fn uri_sans(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

/// Chain to the mesh CA, then the exact SPIFFE id; never a DNS name.
#[derive(Debug)]
struct MeshVerifier {
    roots: Arc<RootCertStore>,
    expected: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for MeshVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if uri_sans(end_entity).contains(&self.expected) {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl Stack for Rustls {
    const NAME: &'static str = "rustls";
    const SNI: &'static str = KUMA_HASHED_SNI;
    type Acceptor = TlsAcceptor;
    type Connector = (TlsConnector, ServerName<'static>);
    type ServerStream = server::TlsStream<TcpStream>;
    type ClientStream = client::TlsStream<TcpStream>;

    fn library() -> String {
        "rustls 0.23 (ring)".to_owned()
    }

    fn acceptor(pki: &Pki, leaf: &Pem) -> io::Result<TlsAcceptor> {
        let provider = provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(pki)?, provider.clone())
            .build()
            .map_err(error)?;
        let (certs, key) = chain(pki, leaf)?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(error)?;
        config.alpn_protocols = vec![KUMA_ALPN.to_vec()];
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(NoServerSessionStorage {});
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    fn connector(pki: &Pki, leaf: Option<&Pem>, expected: &str) -> io::Result<Self::Connector> {
        let provider = provider();
        let verifier = MeshVerifier {
            roots: roots(pki)?,
            expected: expected.to_owned(),
            provider: provider.clone(),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(error)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match leaf {
            Some(leaf) => {
                let (certs, key) = chain(pki, leaf)?;
                builder.with_client_auth_cert(certs, key).map_err(error)?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![KUMA_ALPN.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        let name = ServerName::try_from(KUMA_HASHED_SNI).map_err(error)?;
        Ok((TlsConnector::from(Arc::new(config)), name))
    }

    async fn accept(acceptor: &TlsAcceptor, tcp: TcpStream) -> io::Result<Self::ServerStream> {
        acceptor.accept(tcp).await
    }

    async fn connect(
        (connector, name): &Self::Connector,
        tcp: TcpStream,
    ) -> io::Result<Self::ClientStream> {
        connector.connect(name.clone(), tcp).await
    }

    fn peer_uris(stream: &Self::ServerStream) -> Vec<String> {
        stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| uri_sans(c))
            .unwrap_or_default()
    }

    fn negotiated(stream: &Self::ServerStream) -> Negotiated {
        let conn = stream.get_ref().1;
        Negotiated {
            version: conn
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            cipher: conn
                .negotiated_cipher_suite()
                .map(|c| format!("{:?}", c.suite()))
                .unwrap_or_default(),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            sni: conn.server_name().map(str::to_owned),
        }
    }

    fn client_alpn(stream: &Self::ClientStream) -> Option<Vec<u8>> {
        stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
    }
}

fn main() {
    common::main::<Rustls>();
}

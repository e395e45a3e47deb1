//! rustls configurations: mesh mTLS (server and client) and TLS to external services.
//!
//! Mesh traffic is TLS 1.3 with ALPN `kuma`. The server requires a client certificate that
//! chains to the mesh CA. The client checks the server's chain to the mesh CA and then its
//! identity: one URI SAN must equal the expected SPIFFE id. The name given to `connect` is
//! only sent as SNI (Kuma puts service tags or a hashed resource name there), never matched
//! against DNS SANs. Every config uses the ring provider, including for handshake signatures.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use x509_parser::extensions::GeneralName;

use crate::{Identity, MeshCa, TlsError};

/// The ALPN protocol id of Kuma mesh traffic.
pub const KUMA_ALPN: &[u8] = b"kuma";

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn mesh_roots(ca: &MeshCa) -> Result<Arc<RootCertStore>, TlsError> {
    roots_of([ca.cert_der().clone()])
}

/// Trust anchors from CA certificates.
fn roots_of(
    certs: impl IntoIterator<Item = CertificateDer<'static>>,
) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|source| TlsError::Rustls {
            what: "mesh CA as trust anchor",
            source,
        })?;
    }
    Ok(Arc::new(roots))
}

/// The certificates of CA PEM texts (other meshes' CAs: no key needed to trust them).
fn ca_certs(pems: &[&str]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut certs = Vec::new();
    for pem in pems {
        let cert = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem {
            what: "mesh CA certificate PEM",
            reason: e.to_string(),
        })?;
        certs.push(cert);
    }
    Ok(certs)
}

fn rustls_err(what: &'static str) -> impl FnOnce(rustls::Error) -> TlsError {
    move |source| TlsError::Rustls { what, source }
}

/// The server side of mesh mTLS (inbound): TLS 1.3 only, ALPN `kuma` (clients sending no ALPN
/// are accepted too), a client certificate chaining to the mesh CA is required, and the
/// presented certificate is always the identity's current one.
pub fn mesh_server_config(
    ca: &MeshCa,
    identity: Arc<Identity>,
) -> Result<Arc<ServerConfig>, TlsError> {
    server_config(mesh_roots(ca)?, identity)
}

/// The server side of a cross-mesh gateway listener: as [`mesh_server_config`], but a client
/// certificate chaining to any of `client_ca_pems` (every mesh's CA) is accepted.
pub fn cross_mesh_server_config(
    client_ca_pems: &[&str],
    identity: Arc<Identity>,
) -> Result<Arc<ServerConfig>, TlsError> {
    server_config(roots_of(ca_certs(client_ca_pems)?)?, identity)
}

fn server_config(
    roots: Arc<RootCertStore>,
    identity: Arc<Identity>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|source| TlsError::Verifier {
            what: "mesh client certificate verifier",
            source,
        })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err("mesh server protocol versions"))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity);
    config.alpn_protocols = vec![KUMA_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The client side of mesh mTLS (outbound) towards one destination whose SPIFFE id is
/// `expected` (e.g. `spiffe://default/backend`): TLS 1.3, ALPN `kuma`, the identity's current
/// certificate as client certificate, and the server accepted only if its chain leads to the
/// mesh CA and one of its URI SANs equals `expected`.
pub fn mesh_client_config(
    ca: &MeshCa,
    identity: Arc<Identity>,
    expected: &str,
) -> Result<Arc<ClientConfig>, TlsError> {
    client_config(mesh_roots(ca)?, identity, expected)
}

/// The client side of mesh mTLS towards a cross-mesh gateway of another mesh: this proxy's
/// identity as client certificate, and the server accepted only if it chains to that mesh's
/// CA (`server_ca_pem`) and carries exactly `expected`.
pub fn cross_mesh_client_config(
    server_ca_pem: &str,
    identity: Arc<Identity>,
    expected: &str,
) -> Result<Arc<ClientConfig>, TlsError> {
    client_config(roots_of(ca_certs(&[server_ca_pem])?)?, identity, expected)
}

fn client_config(
    roots: Arc<RootCertStore>,
    identity: Arc<Identity>,
    expected: &str,
) -> Result<Arc<ClientConfig>, TlsError> {
    if !expected.starts_with("spiffe://") {
        return Err(TlsError::Invalid {
            field: "expected SPIFFE id",
            reason: format!("{expected:?} does not start with spiffe://"),
        });
    }
    let provider = provider();
    let verifier = MeshVerifier {
        check: Check::Chain {
            roots,
            spiffe_id: Some(expected.to_owned()),
        },
        provider: provider.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err("mesh client protocol versions"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(identity);
    config.alpn_protocols = vec![KUMA_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The SPIFFE ids (`spiffe://` URI SANs) of a peer's leaf certificate, the first of `certs`;
/// empty when there is none or it does not parse. Used to log or authorize the peer.
pub fn peer_spiffe_ids(certs: &[CertificateDer<'_>]) -> Vec<String> {
    let mut ids = uri_sans(certs);
    ids.retain(|uri| uri.starts_with("spiffe://"));
    ids
}

/// Checks that `certs` (leaf first, then intermediates) chain to `ca` and are valid now, as a
/// mesh server checks a client certificate.
pub(crate) fn verify_leaf(ca: &MeshCa, certs: &[CertificateDer<'static>]) -> Result<(), TlsError> {
    let Some((leaf, intermediates)) = certs.split_first() else {
        return Err(TlsError::Invalid {
            field: "identity",
            reason: "no certificate".into(),
        });
    };
    let verifier = WebPkiClientVerifier::builder_with_provider(mesh_roots(ca)?, provider())
        .build()
        .map_err(|source| TlsError::Verifier {
            what: "identity check",
            source,
        })?;
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map_err(|source| TlsError::Rustls {
            what: "identity certificate against the mesh CA",
            source,
        })?;
    Ok(())
}

/// All URI SANs of the first certificate.
pub(crate) fn uri_sans(certs: &[CertificateDer<'_>]) -> Vec<String> {
    let Some(Ok((_, cert))) = certs
        .first()
        .map(|der| x509_parser::parse_x509_certificate(der))
    else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

/// How much of an external service's certificate is checked (Kuma ExternalService
/// `networking.tls` verification modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerVerification {
    /// Chain to the trusted roots and the server's DNS name.
    Secured,
    /// Chain to the trusted roots only; the name is not checked.
    SkipSan,
    /// No certificate check at all (handshake signatures are still verified).
    SkipAll,
}

/// A client config for TLS to an external service: trusts `ca_pem` (all certificates in it),
/// or the system roots when none is given; presents `client_cert_and_key_pem` (chain PEM, key
/// PEM) if given; checks the server as `verification` says; TLS 1.2 and 1.3; offers `alpn`.
pub fn external_client_config(
    ca_pem: Option<&str>,
    client_cert_and_key_pem: Option<(&str, &str)>,
    verification: ServerVerification,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(rustls_err("external client protocol versions"))?;
    let builder = match verification {
        ServerVerification::Secured => {
            let verifier =
                WebPkiServerVerifier::builder_with_provider(external_roots(ca_pem)?, provider)
                    .build()
                    .map_err(|source| TlsError::Verifier {
                        what: "external server certificate verifier",
                        source,
                    })?;
            builder.with_webpki_verifier(verifier)
        }
        ServerVerification::SkipSan => {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(MeshVerifier {
                    check: Check::Chain {
                        roots: external_roots(ca_pem)?,
                        spiffe_id: None,
                    },
                    provider,
                }))
        }
        ServerVerification::SkipAll => {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(MeshVerifier {
                    check: Check::Nothing,
                    provider,
                }))
        }
    };
    let mut config = match client_cert_and_key_pem {
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsError::Pem {
                    what: "client certificate PEM",
                    reason: e.to_string(),
                })?;
            if chain.is_empty() {
                return Err(TlsError::Pem {
                    what: "client certificate PEM",
                    reason: "no CERTIFICATE block".into(),
                });
            }
            let key =
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Key {
                    what: "client private key PEM",
                    reason: e.to_string(),
                })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(rustls_err("client certificate and key"))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}

/// The trust anchors for an external service: every certificate of `ca_pem`, or the system's.
fn external_roots(ca_pem: Option<&str>) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| TlsError::Pem {
                    what: "external service CA PEM",
                    reason: e.to_string(),
                })?;
                roots.add(cert).map_err(rustls_err("external service CA"))?;
            }
            if roots.is_empty() {
                return Err(TlsError::Pem {
                    what: "external service CA PEM",
                    reason: "no CERTIFICATE block".into(),
                });
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                let errors: Vec<String> = native.errors.iter().map(|e| e.to_string()).collect();
                return Err(TlsError::NativeRoots(if errors.is_empty() {
                    "none found".into()
                } else {
                    errors.join("; ")
                }));
            }
        }
    }
    Ok(Arc::new(roots))
}

/// Carries a [`TlsError`] through rustls, whose error text shows the `Debug` of a custom
/// certificate error: this `Debug` is the readable `Display` of the wrapped error, which stays
/// reachable through `source()`.
struct Readable(TlsError);

impl std::fmt::Debug for Readable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::fmt::Display for Readable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Readable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// What [`MeshVerifier`] checks of the server certificate.
#[derive(Debug)]
enum Check {
    /// The chain leads to `roots`; and, when given, one URI SAN equals `spiffe_id`.
    Chain {
        roots: Arc<RootCertStore>,
        spiffe_id: Option<String>,
    },
    /// Nothing (external `SkipAll`).
    Nothing,
}

/// A server certificate verifier that never looks at DNS names: mesh identity (chain + exact
/// SPIFFE id), chain only, or nothing. Handshake signatures are always verified with the
/// provider's algorithms, so the peer must hold the key of the certificate it presents.
#[derive(Debug)]
struct MeshVerifier {
    check: Check,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for MeshVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Check::Chain { roots, spiffe_id } = &self.check else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let Some(expected) = spiffe_id else {
            return Ok(ServerCertVerified::assertion());
        };
        let presented = uri_sans(std::slice::from_ref(end_entity));
        if presented.iter().any(|uri| uri == expected) {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(Readable(TlsError::IdentityMismatch {
                expected: expected.clone(),
                presented,
            }))),
        )))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
    use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

    const HOUR: Duration = Duration::from_secs(3600);

    fn identity(ca: &Arc<MeshCa>, service: &str) -> Arc<Identity> {
        Identity::new(ca.clone(), "default", &[service.to_string()], HOUR).unwrap()
    }

    /// Runs both sides of a handshake over an in-memory pipe; SNI is `sni`.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        sni: &str,
    ) -> (
        std::io::Result<server::TlsStream<DuplexStream>>,
        std::io::Result<client::TlsStream<DuplexStream>>,
    ) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from(sni.to_owned()).unwrap();
        tokio::join!(
            TlsAcceptor::from(server).accept(a),
            TlsConnector::from(client).connect(name, b)
        )
    }

    async fn ping(
        server: &mut server::TlsStream<DuplexStream>,
        client: &mut client::TlsStream<DuplexStream>,
    ) {
        client.write_all(b"ping").await.unwrap();
        client.flush().await.unwrap();
        let mut buf = [0; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        server.write_all(b"pong").await.unwrap();
        server.flush().await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }

    fn serial(cert: &CertificateDer<'_>) -> Vec<u8> {
        let (_, cert) = x509_parser::parse_x509_certificate(cert).unwrap();
        cert.raw_serial().to_vec()
    }

    #[tokio::test]
    async fn mesh_mtls_checks_spiffe_identity_both_ways() {
        let ca = Arc::new(MeshCa::generate("default").unwrap());
        let server = mesh_server_config(&ca, identity(&ca, "backend")).unwrap();
        let web = identity(&ca, "web");
        let client = mesh_client_config(&ca, web.clone(), "spiffe://default/backend").unwrap();
        // The SNI is a Kuma-style name that matches no DNS SAN: only the SPIFFE id counts.
        let (s, c) = handshake(
            server.clone(),
            client,
            "a601e0c00295a9fbe.backend.80.default.ms",
        )
        .await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        let conn = s.get_ref().1;
        assert_eq!(conn.alpn_protocol(), Some(KUMA_ALPN));
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(
            peer_spiffe_ids(conn.peer_certificates().unwrap()),
            ["spiffe://default/web"]
        );
        ping(&mut s, &mut c).await;

        let wrong = mesh_client_config(&ca, web, "spiffe://default/other").unwrap();
        let (_, c) = handshake(server, wrong, "backend.mesh").await;
        let err = c.unwrap_err().to_string();
        assert!(
            err.contains("expected URI SAN spiffe://default/other")
                && err.contains("[\"spiffe://default/backend\"]"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn cross_mesh_gateway_trusts_other_meshes_and_is_checked_by_its_own_ca() {
        let gw_ca = Arc::new(MeshCa::generate("default").unwrap());
        let other_ca = Arc::new(MeshCa::generate("other").unwrap());
        let stranger_ca = Arc::new(MeshCa::generate("stranger").unwrap());
        let gateway = identity(&gw_ca, "cross-mesh-gateway");
        let server =
            cross_mesh_server_config(&[gw_ca.cert_pem(), other_ca.cert_pem()], gateway).unwrap();
        let expected = "spiffe://default/cross-mesh-gateway";
        let client = |ca: &Arc<MeshCa>| {
            let id = Identity::new(ca.clone(), "other", &["web".to_string()], HOUR).unwrap();
            cross_mesh_client_config(gw_ca.cert_pem(), id, expected).unwrap()
        };
        let (s, c) = handshake(server.clone(), client(&other_ca), "gw").await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        ping(&mut s, &mut c).await;
        // A mesh the gateway does not know is refused.
        let (s, _) = handshake(server.clone(), client(&stranger_ca), "gw").await;
        assert!(s.is_err());
        // The client insists on the gateway mesh's CA and identity.
        let wrong =
            cross_mesh_client_config(other_ca.cert_pem(), identity(&other_ca, "web"), expected)
                .unwrap();
        let (_, c) = handshake(server, wrong, "gw").await;
        assert!(c.is_err());
    }

    #[tokio::test]
    async fn server_accepts_clients_without_alpn() {
        let ca = Arc::new(MeshCa::generate("default").unwrap());
        let server = mesh_server_config(&ca, identity(&ca, "backend")).unwrap();
        let client =
            mesh_client_config(&ca, identity(&ca, "web"), "spiffe://default/backend").unwrap();
        let mut client = Arc::unwrap_or_clone(client);
        client.alpn_protocols.clear();
        let (s, c) = handshake(server, Arc::new(client), "backend").await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        assert_eq!(s.get_ref().1.alpn_protocol(), None);
        ping(&mut s, &mut c).await;
    }

    #[tokio::test]
    async fn server_refuses_client_without_certificate() {
        let ca = Arc::new(MeshCa::generate("default").unwrap());
        let server = mesh_server_config(&ca, identity(&ca, "backend")).unwrap();
        let client = external_client_config(
            Some(ca.cert_pem()),
            None,
            ServerVerification::SkipSan,
            vec![KUMA_ALPN.to_vec()],
        )
        .unwrap();
        let (s, _) = handshake(server, client, "backend").await;
        let err = s.unwrap_err().to_string();
        assert!(err.contains("peer sent no certificates"), "{err}");
    }

    #[tokio::test]
    async fn server_refuses_client_certificate_from_another_ca() {
        let ca = Arc::new(MeshCa::generate("default").unwrap());
        let other_ca = Arc::new(MeshCa::generate("default").unwrap());
        let server = mesh_server_config(&ca, identity(&ca, "backend")).unwrap();
        let client =
            mesh_client_config(&ca, identity(&other_ca, "web"), "spiffe://default/backend")
                .unwrap();
        let (s, _) = handshake(server, client, "backend").await;
        let err = s.unwrap_err().to_string();
        // Both CAs are named `O=Kuma, OU=Mesh, CN=default`, so webpki finds the wrong CA as
        // issuer by name and the signature check fails.
        assert!(err.contains("BadSignature"), "{err}");
    }

    #[tokio::test]
    async fn renewal_reaches_new_handshakes_and_keeps_old_sessions() {
        let ca = Arc::new(MeshCa::generate("default").unwrap());
        let backend = identity(&ca, "backend");
        let server = mesh_server_config(&ca, backend.clone()).unwrap();
        let client =
            mesh_client_config(&ca, identity(&ca, "web"), "spiffe://default/backend").unwrap();
        let (s, c) = handshake(server.clone(), client.clone(), "backend").await;
        let (mut s1, mut c1) = (s.unwrap(), c.unwrap());
        let first = serial(&c1.get_ref().1.peer_certificates().unwrap()[0]);

        backend.renew().unwrap();
        ping(&mut s1, &mut c1).await;
        // A fresh client config, so the handshake is a full one rather than a resumption.
        let client =
            mesh_client_config(&ca, identity(&ca, "web"), "spiffe://default/backend").unwrap();
        let (s, c) = handshake(server, client, "backend").await;
        let (mut s2, mut c2) = (s.unwrap(), c.unwrap());
        let second = serial(&c2.get_ref().1.peer_certificates().unwrap()[0]);
        assert_ne!(first, second);
        assert_eq!(second, serial(&backend.current().cert[0]));
        ping(&mut s2, &mut c2).await;
        ping(&mut s1, &mut c1).await;
    }

    /// A server with a certificate for `other.example` from a CA that is not a mesh CA.
    fn external_server() -> (String, Arc<ServerConfig>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["other.example".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        (ca_cert.pem(), Arc::new(server))
    }

    #[tokio::test]
    async fn external_secured_checks_the_name_skip_san_does_not() {
        let (ca_pem, server) = external_server();
        let alpn = || vec![b"h2".to_vec()];
        let secured =
            external_client_config(Some(&ca_pem), None, ServerVerification::Secured, alpn())
                .unwrap();
        let (_, c) = handshake(server.clone(), secured.clone(), "service.example").await;
        let err = c.unwrap_err().to_string();
        assert!(err.contains("not valid for name"), "{err}");
        let (s, c) = handshake(server.clone(), secured, "other.example").await;
        assert!(s.is_ok() && c.is_ok());

        let skip_san =
            external_client_config(Some(&ca_pem), None, ServerVerification::SkipSan, alpn())
                .unwrap();
        let (s, c) = handshake(server.clone(), skip_san, "service.example").await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        ping(&mut s, &mut c).await;

        // SkipSan still checks the chain: the mesh CA does not vouch for this server.
        let mesh_ca = MeshCa::generate("default").unwrap();
        let wrong_ca = external_client_config(
            Some(mesh_ca.cert_pem()),
            None,
            ServerVerification::SkipSan,
            alpn(),
        )
        .unwrap();
        let (_, c) = handshake(server.clone(), wrong_ca, "other.example").await;
        assert!(c.unwrap_err().to_string().contains("UnknownIssuer"));

        let skip_all =
            external_client_config(None, None, ServerVerification::SkipAll, alpn()).unwrap();
        let (s, c) = handshake(server, skip_all, "service.example").await;
        assert!(s.is_ok() && c.is_ok());
    }

    #[test]
    fn external_config_names_bad_pem_and_rejects_bad_expected_id() {
        let err = external_client_config(Some("nope"), None, ServerVerification::Secured, vec![])
            .unwrap_err();
        assert!(
            err.to_string().starts_with("external service CA PEM:"),
            "{err}"
        );
        let ca = Arc::new(MeshCa::generate("default").unwrap());
        let err = mesh_client_config(&ca, identity(&ca, "web"), "backend").unwrap_err();
        assert!(
            err.to_string().starts_with("invalid expected SPIFFE id:"),
            "{err}"
        );
    }

    #[test]
    fn external_client_certificate_is_loaded_and_bad_pems_are_named() {
        // Any certificate with its key will do for loading; use a generated CA's.
        let ca = MeshCa::generate("default").unwrap();
        let pair = Some((ca.cert_pem(), ca.key_pem().unwrap()));
        let config = external_client_config(
            Some(ca.cert_pem()),
            pair,
            ServerVerification::Secured,
            vec![],
        )
        .unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
        let bad_key = Some((ca.cert_pem(), ca.cert_pem()));
        let err =
            external_client_config(None, bad_key, ServerVerification::SkipAll, vec![]).unwrap_err();
        assert!(
            err.to_string().starts_with("client private key PEM:"),
            "{err}"
        );
        let no_cert = Some(("", ca.key_pem().unwrap()));
        let err =
            external_client_config(None, no_cert, ServerVerification::SkipAll, vec![]).unwrap_err();
        assert!(
            err.to_string().starts_with("client certificate PEM:"),
            "{err}"
        );
    }
}

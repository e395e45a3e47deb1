//! The verified TLS connection to the control plane, shared by the bootstrap request and the
//! ADS client (BoringSSL, the stack of the rest of Bearing).
//!
//! Verification follows kuma-dp: TLS 1.2 or newer; the CA certificates given
//! (`--ca-cert-file`, `KUMA_CONTROL_PLANE_CA_CERT`) as the only roots, else the system roots;
//! the CP's name (or IP) checked against its certificate. kuma-cp's default auto-generated
//! certificate is a self-signed leaf with `CA:TRUE`, handed to the proxies as their CA: BoringSSL
//! (like OpenSSL and Go's verifier, unlike webpki) accepts a peer certificate that is itself one of the
//! trusted roots, i.e. exactly that certificate (same subject, same key, its own signature), so
//! it is pinned with no special case. `--skip-verify` turns verification off, as kuma-dp's.

use std::fmt;
use std::net::IpAddr;

use boring::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use boring::x509::store::X509StoreBuilder;
use boring::x509::X509;
use tokio::net::TcpStream;
use tokio_boring::SslStreamBuilder;

/// A verified TLS connection to the control plane.
pub type CpStream = tokio_boring::SslStream<TcpStream>;

/// How the CP's certificate is verified.
#[derive(Clone, Default)]
pub enum CpTrust {
    /// The system roots (no CA given).
    #[default]
    System,
    /// Only these CA certificates (parsed from the PEM given).
    Roots {
        /// The certificates.
        certs: Vec<X509>,
        /// Where they came from, for messages (`--ca-cert-file /x`, `KUMA_CONTROL_PLANE_CA_CERT`).
        origin: String,
    },
    /// No verification (`--skip-verify`; insecure).
    SkipVerify,
}

impl fmt::Debug for CpTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl CpTrust {
    /// The CA certificates of a PEM text (one or more certificates); `origin` names where it
    /// came from in the error.
    pub fn from_pem(pem: &str, origin: &str) -> Result<CpTrust, String> {
        let certs = X509::stack_from_pem(pem.as_bytes())
            .map_err(|e| format!("{origin}: not a PEM certificate: {e}"))?;
        if certs.is_empty() {
            return Err(format!("{origin}: no certificate in it"));
        }
        Ok(CpTrust::Roots {
            certs,
            origin: origin.to_string(),
        })
    }

    /// What the CP is verified against, for messages.
    pub fn describe(&self) -> String {
        match self {
            CpTrust::System => "the system CA certificates".into(),
            CpTrust::Roots { origin, .. } => format!("the CA of {origin}"),
            CpTrust::SkipVerify => "nothing (--skip-verify)".into(),
        }
    }
}

/// A TLS client for the control plane: [`CpTls::connect`] yields a verified stream.
#[derive(Clone)]
pub struct CpTls {
    connector: SslConnector,
    trust: CpTrust,
}

impl fmt::Debug for CpTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpTls").field("trust", &self.trust).finish()
    }
}

/// Why a connection to the CP failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP (refused, unreachable, name not resolved).
    #[error("cannot connect to {address}: {source}")]
    Tcp {
        /// `host:port`.
        address: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TLS handshake, or the verification of the CP's certificate.
    #[error("TLS with {address} failed: {detail}")]
    Tls {
        /// `host:port`.
        address: String,
        /// What failed (the verification result when the certificate was refused).
        detail: String,
    },
}

impl CpTls {
    /// A client verifying with `trust`, offering `alpn` (wire format, e.g. `b"\x08http/1.1"`,
    /// `b"\x02h2"` for gRPC: kuma-cp serves both on one port and picks by ALPN).
    pub fn new(trust: CpTrust, alpn: &[u8]) -> Result<CpTls, String> {
        let tls_error =
            |e: boring::error::ErrorStack| format!("cannot set up TLS to the control plane: {e}");
        // `SslConnector::builder` loads the system roots and verifies the peer.
        let mut builder = SslConnector::builder(SslMethod::tls()).map_err(tls_error)?;
        builder
            .set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(tls_error)?;
        if !alpn.is_empty() {
            builder.set_alpn_protos(alpn).map_err(tls_error)?;
        }
        match &trust {
            CpTrust::System => {}
            CpTrust::Roots { certs, origin } => {
                let mut store = X509StoreBuilder::new().map_err(tls_error)?;
                for cert in certs {
                    store
                        .add_cert(cert.clone())
                        .map_err(|e| format!("{origin}: cannot use the certificate: {e}"))?;
                }
                builder.set_cert_store(store.build());
            }
            CpTrust::SkipVerify => builder.set_verify(SslVerifyMode::NONE),
        }
        Ok(CpTls {
            connector: builder.build(),
            trust,
        })
    }

    /// How the CP is verified.
    pub fn trust(&self) -> &CpTrust {
        &self.trust
    }

    /// The connector, for a client that drives its own connections (e.g. tonic's
    /// `Endpoint::connect_with_connector` through [`CpTls::connect`]).
    pub fn connector(&self) -> &SslConnector {
        &self.connector
    }

    /// Connects to `host:port` and completes a TLS handshake verifying the CP's certificate for
    /// `host` (SNI = `host` unless it is an IP address).
    pub async fn connect(&self, host: &str, port: u16) -> Result<CpStream, ConnectError> {
        let address = format!("{host}:{port}");
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = TcpStream::connect((bare_host, port))
            .await
            .map_err(|source| ConnectError::Tcp {
                address: address.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let tls_failed = |detail: String| ConnectError::Tls {
            address: address.clone(),
            detail,
        };
        let mut config = self
            .connector
            .configure()
            .map_err(|e| tls_failed(e.to_string()))?;
        if matches!(self.trust, CpTrust::SkipVerify) {
            config.set_verify_hostname(false);
        }
        config.set_use_server_name_indication(bare_host.parse::<IpAddr>().is_err());
        let ssl = config
            .into_ssl(bare_host)
            .map_err(|e| tls_failed(e.to_string()))?;
        SslStreamBuilder::new(ssl, tcp)
            .connect()
            .await
            .map_err(|e| {
                tls_failed(match e.ssl().map(|ssl| ssl.verify_result()) {
                    Some(Err(verdict)) => format!(
                        "the control plane's certificate is not trusted: {} (verified against {}, for the name {bare_host})",
                        verdict.error_string(),
                        self.trust.describe()
                    ),
                    _ => format!("handshake failed: {e}"),
                })
            })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use boring::ssl::{SslAcceptor, SslFiletype};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A certificate and key as PEM.
    pub struct TestCert {
        pub cert_pem: String,
        pub key_pem: String,
    }

    /// kuma-cp's default auto-generated server certificate: self-signed, `CA:TRUE`, key usages
    /// digital signature + key encipherment + cert sign, server auth, SANs `names`.
    pub fn kuma_cp_default_cert(names: &[&str]) -> TestCert {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
            rcgen::KeyUsagePurpose::KeyCertSign,
        ];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// An acceptor serving `cert` (with ALPN http/1.1 and h2 accepted).
    pub fn acceptor(cert: &TestCert) -> SslAcceptor {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, &cert.cert_pem).unwrap();
        std::fs::write(&k, &cert.key_pem).unwrap();
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        b.set_certificate_chain_file(&c).unwrap();
        b.set_private_key_file(&k, SslFiletype::PEM).unwrap();
        b.check_private_key().unwrap();
        b.build()
    }

    /// A server on 127.0.0.1 that completes TLS handshakes and echoes one line.
    async fn echo_server(cert: &TestCert) -> u16 {
        let acceptor = acceptor(cert);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut s) = tokio_boring::accept(&acceptor, tcp).await {
                        let mut buf = [0u8; 5];
                        if s.read_exact(&mut buf).await.is_ok() {
                            let _ = s.write_all(&buf).await;
                        }
                    }
                });
            }
        });
        port
    }

    /// A client trusting only `cert`, named `origin` in errors.
    fn trusting(cert: &TestCert, origin: &str) -> CpTls {
        CpTls::new(
            CpTrust::from_pem(&cert.cert_pem, origin).unwrap(),
            b"\x08http/1.1",
        )
        .unwrap()
    }

    /// Why `tls` cannot make a round trip to `localhost:port`.
    async fn refusal(tls: &CpTls, port: u16) -> String {
        match roundtrip(tls, "localhost", port).await {
            Ok(()) => panic!("the connection was accepted"),
            Err(e) => e.to_string(),
        }
    }

    async fn roundtrip(tls: &CpTls, host: &str, port: u16) -> Result<(), ConnectError> {
        let mut s = tls.connect(host, port).await?;
        s.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        Ok(())
    }

    /// kuma-cp's default certificate (self-signed, CA:TRUE), given as the CA: accepted, pinned
    /// to that exact certificate (another self-signed one for the same name is refused).
    #[tokio::test]
    async fn kuma_cp_default_self_signed_ca_cert_is_pinned() {
        let cert = kuma_cp_default_cert(&["localhost"]);
        let port = echo_server(&cert).await;
        let tls = trusting(&cert, "--ca-cert-file ca.pem");
        roundtrip(&tls, "localhost", port).await.unwrap();

        let other = kuma_cp_default_cert(&["localhost"]);
        let tls = trusting(&other, "--ca-cert-file other.pem");
        let err = refusal(&tls, port).await;
        assert!(err.contains("not trusted"), "{err}");
        assert!(err.contains("--ca-cert-file other.pem"), "{err}");
    }

    /// The right certificate for another name: refused, naming the name.
    #[tokio::test]
    async fn name_mismatch_is_refused() {
        let cert = kuma_cp_default_cert(&["kuma-cp.example"]);
        let port = echo_server(&cert).await;
        let tls = trusting(&cert, "--ca-cert-file ca.pem");
        let err = refusal(&tls, port).await;
        assert!(err.to_lowercase().contains("hostname mismatch"), "{err}");
        assert!(err.contains("for the name localhost"), "{err}");
    }

    /// Without a CA, the system roots: a self-signed certificate is refused.
    #[tokio::test]
    async fn system_roots_refuse_a_private_ca() {
        let cert = kuma_cp_default_cert(&["localhost"]);
        let port = echo_server(&cert).await;
        let tls = CpTls::new(CpTrust::System, b"").unwrap();
        let err = refusal(&tls, port).await;
        assert!(
            err.contains("self-signed") || err.contains("self signed"),
            "{err}"
        );
        assert!(err.contains("system CA certificates"), "{err}");

        let tls = CpTls::new(CpTrust::SkipVerify, b"").unwrap();
        roundtrip(&tls, "localhost", port).await.unwrap();
    }

    /// The stream [`CpTls::connect`] yields is what a tonic/hyper connector needs (through
    /// `hyper_util::rt::TokioIo`): Tokio I/O, `Unpin`, `Send`, `'static`.
    #[test]
    fn stream_fits_tonic_connectors() {
        fn connector_io<
            T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        >() {
        }
        connector_io::<CpStream>();
        fn shared<T: Clone + Send + Sync + 'static>() {}
        shared::<CpTls>();
    }

    #[test]
    fn bad_pem_names_its_origin() {
        let err = CpTrust::from_pem("not a cert", "KUMA_CONTROL_PLANE_CA_CERT").unwrap_err();
        assert!(err.starts_with("KUMA_CONTROL_PLANE_CA_CERT:"), "{err}");
    }
}

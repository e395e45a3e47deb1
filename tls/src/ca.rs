//! The mesh certificate authority: generate one like Kuma's builtin CA, or load Kuma's from PEM.
//!
//! Kuma stores a mesh's builtin CA as two Secrets (`<mesh>.ca-builtin-cert-<backend>` and
//! `<mesh>.ca-builtin-key-<backend>`) whose `data` is the base64 of the PEM. Kuma itself writes
//! an RSA key in PKCS#1 form ("RSA PRIVATE KEY"); ring (our only crypto provider) reads private
//! keys as PKCS#8 only, so a PKCS#1 key is wrapped into PKCS#8 here before loading.

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::TlsError;

/// How long a generated mesh CA is valid (Kuma's builtin CA default: 10 years).
const CA_VALIDITY: time::Duration = time::Duration::days(3650);
/// How far back a generated certificate's not-before is set, so peers with a slow clock accept it.
pub(crate) const CLOCK_SKEW: time::Duration = time::Duration::minutes(1);

/// A mesh CA: its certificate and private key, ready to sign data-plane leaf certificates.
///
/// Holds the PEM texts (to store or hand out) and the parsed signer (to issue leaves).
pub struct MeshCa {
    cert_pem: String,
    key_pem: Option<String>,
    cert_der: CertificateDer<'static>,
    issuer: Option<Issuer<'static, KeyPair>>,
}

impl std::fmt::Debug for MeshCa {
    // The private key is left out on purpose: Debug output ends up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCa")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl MeshCa {
    /// Generates a new self-signed mesh CA shaped like Kuma's builtin one: subject
    /// `O=Kuma, OU=Mesh, CN=<mesh>`, URI SAN `spiffe://<mesh>`, CA without path-length limit,
    /// keyCertSign + cRLSign + digitalSignature, valid 10 years, ECDSA P-256 key.
    pub fn generate(mesh: &str) -> Result<MeshCa, TlsError> {
        let uri = spiffe_uri("mesh", mesh, None)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
            TlsError::Generate {
                what: "CA private key",
                source,
            }
        })?;
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::OrganizationName, "Kuma");
        subject.push(DnType::OrganizationalUnitName, "Mesh");
        subject.push(DnType::CommonName, mesh);
        params.distinguished_name = subject;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![uri];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_VALIDITY;
        let cert = params
            .self_signed(&key)
            .map_err(|source| TlsError::Generate {
                what: "CA certificate",
                source,
            })?;
        Ok(MeshCa {
            cert_pem: cert.pem(),
            key_pem: Some(key.serialize_pem()),
            cert_der: cert.der().clone(),
            issuer: Some(Issuer::new(params, key)),
        })
    }

    /// Loads a mesh CA from its certificate and private key PEM (PKCS#8, or PKCS#1 RSA as Kuma
    /// writes it). Checks that the certificate parses, is a CA (basicConstraints CA, and
    /// keyCertSign if keyUsage is present) and that the key is the certificate's key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<MeshCa, TlsError> {
        let (cert_der, public_key) = parse_ca_cert(cert_pem)?;
        let key = load_key(key_pem)?;
        if public_key != key.public_key_raw() {
            return Err(TlsError::KeyMismatch);
        }
        let issuer =
            Issuer::from_ca_cert_der(&cert_der, key).map_err(|source| TlsError::Generate {
                what: "CA certificate as issuer",
                source,
            })?;
        Ok(MeshCa {
            cert_pem: cert_pem.to_owned(),
            key_pem: Some(key_pem.to_owned()),
            cert_der,
            issuer: Some(issuer),
        })
    }

    /// Loads a mesh CA from its certificate alone, checked as [`MeshCa::from_pem`] does: it
    /// verifies peers but cannot issue (a proxy whose leaf was issued ahead of time).
    pub fn from_cert_pem(cert_pem: &str) -> Result<MeshCa, TlsError> {
        let (cert_der, _) = parse_ca_cert(cert_pem)?;
        Ok(MeshCa {
            cert_pem: cert_pem.to_owned(),
            key_pem: None,
            cert_der,
            issuer: None,
        })
    }

    /// The CA certificate in PEM, as handed to peers and written to the store.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key in PEM, as written to the store; `None` for a CA loaded from its
    /// certificate alone.
    pub fn key_pem(&self) -> Option<&str> {
        self.key_pem.as_deref()
    }

    /// The CA certificate in DER: the trust anchor of mesh TLS and the tail of every leaf chain.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The signer leaf certificates are issued with; an error for a CA without its key.
    pub(crate) fn issuer(&self) -> Result<&Issuer<'static, KeyPair>, TlsError> {
        self.issuer.as_ref().ok_or(TlsError::NoCaKey)
    }
}

/// Parses a CA certificate PEM and checks that it is a CA (basicConstraints CA, and
/// keyCertSign if keyUsage is present); gives its DER and its public key.
fn parse_ca_cert(cert_pem: &str) -> Result<(CertificateDer<'static>, Vec<u8>), TlsError> {
    let cert_der =
        CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| TlsError::Pem {
            what: "CA certificate PEM",
            reason: e.to_string(),
        })?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&cert_der).map_err(|e| TlsError::Certificate {
            what: "CA certificate",
            reason: e.to_string(),
        })?;
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(Some(_)) => return Err(TlsError::NotCa("basicConstraints has CA:FALSE")),
        Ok(None) => return Err(TlsError::NotCa("no basicConstraints extension")),
        Err(_) => return Err(TlsError::NotCa("basicConstraints extension is malformed")),
    }
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => {
            return Err(TlsError::NotCa("keyUsage lacks keyCertSign"))
        }
        Ok(_) => {}
        Err(_) => return Err(TlsError::NotCa("keyUsage extension is malformed")),
    }
    let public_key = cert.public_key().subject_public_key.data.to_vec();
    Ok((cert_der.into_owned(), public_key))
}

/// Loads a private key PEM into rcgen, accepting PKCS#8 and PKCS#1 RSA.
fn load_key(key_pem: &str) -> Result<KeyPair, TlsError> {
    const WHAT: &str = "CA private key PEM";
    let der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Key {
        what: WHAT,
        reason: e.to_string(),
    })?;
    let pkcs8 = match der {
        PrivateKeyDer::Pkcs8(k) => k,
        PrivateKeyDer::Pkcs1(k) => {
            PrivatePkcs8KeyDer::from(rsa_pkcs1_to_pkcs8(k.secret_pkcs1_der()))
        }
        _ => {
            return Err(TlsError::Key {
                what: WHAT,
                reason: "SEC1 \"EC PRIVATE KEY\" is not supported, convert it to PKCS#8 \
                         (openssl pkcs8 -topk8 -nocrypt)"
                    .into(),
            })
        }
    };
    KeyPair::try_from(&pkcs8).map_err(|e| TlsError::Key {
        what: WHAT,
        reason: e.to_string(),
    })
}

/// Wraps an RSA PKCS#1 `RSAPrivateKey` into a PKCS#8 `PrivateKeyInfo` (version 0,
/// algorithm rsaEncryption with NULL parameters, the PKCS#1 bytes as the OCTET STRING).
fn rsa_pkcs1_to_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
    // version INTEGER 0, then AlgorithmIdentifier { 1.2.840.113549.1.1.1, NULL }
    const HEAD: [u8; 18] = [
        0x02, 0x01, 0x00, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01,
        0x01, 0x05, 0x00,
    ];
    let mut octets = vec![0x04];
    der_len(&mut octets, pkcs1.len());
    octets.extend_from_slice(pkcs1);
    let mut out = vec![0x30];
    der_len(&mut out, HEAD.len() + octets.len());
    out.extend_from_slice(&HEAD);
    out.extend_from_slice(&octets);
    out
}

/// Appends a DER definite length.
fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    out.push(0x80 | (bytes.len() - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

/// Builds the URI SAN `spiffe://<mesh>` or `spiffe://<mesh>/<service>`, rejecting names that
/// are empty or hold characters outside RFC 3986's unreserved set (letters, digits, `-._~`).
pub(crate) fn spiffe_uri(
    field: &'static str,
    mesh: &str,
    service: Option<&str>,
) -> Result<SanType, TlsError> {
    check_uri_segment(field, mesh)?;
    let uri = match service {
        Some(service) => {
            check_uri_segment("service", service)?;
            format!("spiffe://{mesh}/{service}")
        }
        None => format!("spiffe://{mesh}"),
    };
    let uri = uri
        .try_into()
        .map_err(|e: rcgen::Error| TlsError::Invalid {
            field,
            reason: e.to_string(),
        })?;
    Ok(SanType::URI(uri))
}

fn check_uri_segment(field: &'static str, value: &str) -> Result<(), TlsError> {
    if value.is_empty() {
        return Err(TlsError::Invalid {
            field,
            reason: "empty".into(),
        });
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')))
    {
        return Err(TlsError::Invalid {
            field,
            reason: format!("{value:?} holds {c:?}, which cannot go into a SPIFFE id"),
        });
    }
    Ok(())
}

/// The names Kuma gives the builtin CA's Secrets: `(<mesh>.ca-builtin-cert-<backend>,
/// <mesh>.ca-builtin-key-<backend>)`, so a store written by Bearing is readable by Kuma and back.
pub fn builtin_secret_names(mesh: &str, backend: &str) -> (String, String) {
    (
        format!("{mesh}.ca-builtin-cert-{backend}"),
        format!("{mesh}.ca-builtin-key-{backend}"),
    )
}

/// Kuma Universal YAML documents (`type: Secret`, `name`, `mesh`, `data` = base64 of the
/// PEM) for the CA certificate and, when `ca` has it, the key, separated by `---`, for
/// `bearing ca generate` (and, certificate only, `bearing ca issue`) to write into a store.
pub fn builtin_secrets_yaml(mesh: &str, backend: &str, ca: &MeshCa) -> String {
    let (cert_name, key_name) = builtin_secret_names(mesh, backend);
    let cert = secret_yaml(mesh, &cert_name, ca.cert_pem());
    match ca.key_pem() {
        Some(key) => format!("{cert}---\n{}", secret_yaml(mesh, &key_name, key)),
        None => cert,
    }
}

/// The Secret holding the identity issued ahead of time for one Dataplane (or zone proxy):
/// `<mesh>.identity-<dataplane>`, read by that proxy only, instead of the CA key.
pub fn identity_secret_name(mesh: &str, dataplane: &str) -> String {
    format!("{mesh}.identity-{dataplane}")
}

/// A Kuma Universal Secret `name` of `mesh` whose `data` is the base64 of `pem`.
pub fn secret_yaml(mesh: &str, name: &str, pem: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "type: Secret\nname: {}\nmesh: {}\ndata: {}\n",
        yaml_quote(name),
        yaml_quote(mesh),
        b64.encode(pem)
    )
}

/// A YAML double-quoted scalar, so names that look like numbers or booleans stay strings.
fn yaml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pem: &str) -> (Vec<u8>, String) {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let sans = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(",");
        (der.to_vec(), format!("{} {}", cert.subject(), sans))
    }

    #[test]
    fn generated_ca_looks_like_kumas_and_loads_back() {
        let ca = MeshCa::generate("default").unwrap();
        let (_, text) = parse(ca.cert_pem());
        assert_eq!(text, "O=Kuma, OU=Mesh, CN=default URI(spiffe://default)");
        let der = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(cert.is_ca());
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
        let years = (cert.validity().not_after.timestamp()
            - cert.validity().not_before.timestamp())
            / (365 * 24 * 3600);
        assert_eq!(years, 10);
        let again = MeshCa::from_pem(ca.cert_pem(), ca.key_pem().unwrap()).unwrap();
        assert_eq!(again.cert_der(), ca.cert_der());
    }

    #[test]
    fn from_pem_rejects_mismatched_key() {
        let a = MeshCa::generate("default").unwrap();
        let b = MeshCa::generate("default").unwrap();
        let err = MeshCa::from_pem(a.cert_pem(), b.key_pem().unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CA private key does not match the public key of the CA certificate"
        );
    }

    #[test]
    fn from_pem_rejects_non_ca_certificate() {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["leaf.example".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let err = MeshCa::from_pem(&cert.pem(), &key.serialize_pem()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CA certificate is not a CA: no basicConstraints extension"
        );
    }

    #[test]
    fn from_pem_names_the_bad_pem() {
        let ca = MeshCa::generate("default").unwrap();
        let err = MeshCa::from_pem("garbage", ca.key_pem().unwrap()).unwrap_err();
        assert!(err.to_string().starts_with("CA certificate PEM:"), "{err}");
        let err = MeshCa::from_pem(ca.cert_pem(), ca.cert_pem()).unwrap_err();
        assert!(err.to_string().starts_with("CA private key PEM:"), "{err}");
    }

    #[test]
    fn from_pem_accepts_pkcs1_rsa_key_as_kuma_writes_it() {
        // The same RSA key in PKCS#8 and in PKCS#1 ("RSA PRIVATE KEY", the form of Kuma's
        // builtin CA secret), both written by `openssl`.
        let pkcs8_pem = include_str!("../testdata/rsa2048.pkcs8.pem");
        let pkcs1_pem = include_str!("../testdata/rsa2048.pkcs1.pem");
        let pkcs8 = PrivatePkcs8KeyDer::from_pem_slice(pkcs8_pem.as_bytes()).unwrap();
        let pkcs1 =
            rustls_pki_types::PrivatePkcs1KeyDer::from_pem_slice(pkcs1_pem.as_bytes()).unwrap();
        assert_eq!(
            rsa_pkcs1_to_pkcs8(pkcs1.secret_pkcs1_der()),
            pkcs8.secret_pkcs8_der()
        );
        let key = KeyPair::from_pem(pkcs8_pem).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = params.self_signed(&key).unwrap();
        let ca = MeshCa::from_pem(&cert.pem(), pkcs1_pem).unwrap();
        assert_eq!(ca.key_pem(), Some(pkcs1_pem));
    }

    #[test]
    fn der_lengths() {
        let mut v = Vec::new();
        der_len(&mut v, 0x7f);
        der_len(&mut v, 0x80);
        der_len(&mut v, 0x1234);
        assert_eq!(v, [0x7f, 0x81, 0x80, 0x82, 0x12, 0x34]);
    }

    #[test]
    fn secret_names_and_yaml() {
        assert_eq!(
            builtin_secret_names("default", "ca-1"),
            (
                "default.ca-builtin-cert-ca-1".to_string(),
                "default.ca-builtin-key-ca-1".to_string()
            )
        );
        let ca = MeshCa::generate("default").unwrap();
        let yaml = builtin_secrets_yaml("default", "ca-1", &ca);
        let docs = yaml_rust2::YamlLoader::load_from_str(&yaml).unwrap();
        assert_eq!(docs.len(), 2);
        let b64 = base64::engine::general_purpose::STANDARD;
        for (doc, (name, pem)) in docs.iter().zip([
            ("default.ca-builtin-cert-ca-1", ca.cert_pem()),
            ("default.ca-builtin-key-ca-1", ca.key_pem().unwrap()),
        ]) {
            assert_eq!(doc["type"].as_str(), Some("Secret"));
            assert_eq!(doc["name"].as_str(), Some(name));
            assert_eq!(doc["mesh"].as_str(), Some("default"));
            let data = b64.decode(doc["data"].as_str().unwrap()).unwrap();
            assert_eq!(data, pem.as_bytes());
        }
    }

    #[test]
    fn spiffe_uri_rejects_unsafe_names() {
        assert!(spiffe_uri("mesh", "default", Some("backend_kuma-demo_svc_80")).is_ok());
        let err = spiffe_uri("mesh", "default", Some("a/b")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid service: \"a/b\" holds '/', which cannot go into a SPIFFE id"
        );
        assert!(spiffe_uri("mesh", "", None).is_err());
    }
}

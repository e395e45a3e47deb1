//! A data-plane proxy's mesh identity: a leaf certificate with one SPIFFE URI SAN per service,
//! renewed in place before it expires.
//!
//! [`Identity`] is what mesh acceptors and connectors present: a renewal (an atomic swap)
//! reaches every new handshake, whose context is rebuilt once for the new leaf; connections
//! already established keep the keys they negotiated.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use crate::ca::{spiffe_uri, CLOCK_SKEW};
use crate::{CertifiedKey, MeshCa, TlsError};

/// Share of a leaf's lifetime after which it is renewed (Kuma/Envoy renew before expiry).
const RENEW_AT_PERCENT: u32 = 80;
/// Wait before retrying a failed renewal.
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// Longest single sleep of the renewal task, so a wall-clock jump or a suspend is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// Loads a mesh identity's certificate chain (leaf first) and private key from PEM the way
/// [`Identity::pre_issued`] does (`chain_pem` and `key_pem` may be one text holding both):
/// at least one certificate, each one DER, and a private key that belongs to the leaf. What
/// `pre_issued` checks beyond (the chain to the CA, the services, the validity) is not checked
/// here; a control plane's Secret is refused with this before it reaches the runtime.
pub fn load_identity_pem(
    chain_pem: &str,
    key_pem: &str,
) -> Result<(Vec<CertificateDer<'static>>, CertifiedKey), TlsError> {
    use rustls_pki_types::pem::PemObject as _;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            what: "identity certificate chain PEM",
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            field: "identity",
            reason: "no certificate in the PEM".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Key {
        what: "identity private key PEM",
        reason: e.to_string(),
    })?;
    let certified = CertifiedKey::from_der(
        certs.clone(),
        key.secret_der(),
        "identity certificate and key",
    )?;
    Ok((certs, certified))
}

/// Issues a leaf certificate for a data-plane proxy: a fresh ECDSA P-256 key, URI SANs
/// `spiffe://<mesh>/<service>` for each service (sorted, deduplicated), subject CN = the first
/// of those, valid from one minute ago (clock skew) for `validity`, keyUsage digitalSignature +
/// keyEncipherment, extendedKeyUsage serverAuth + clientAuth, chain `[leaf, CA]`.
pub fn issue_leaf(
    ca: &MeshCa,
    mesh: &str,
    services: &[String],
    validity: Duration,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let services = normalized_services(services)?;
    issue(ca, mesh, &services, validity, SystemTime::now())
}

/// Issues a leaf ahead of time (`bearing ca issue`), for a proxy that holds no CA key: one
/// PEM text with the leaf, the CA certificate and the leaf's private key, as
/// [`Identity::pre_issued`] reads it back.
pub fn issue_leaf_pem(
    ca: &MeshCa,
    mesh: &str,
    services: &[String],
    validity: Duration,
) -> Result<String, TlsError> {
    let services = normalized_services(services)?;
    let (cert, key) = sign_leaf(ca, mesh, &services, validity, SystemTime::now())?;
    Ok(format!(
        "{}{}{}",
        cert.pem(),
        ca.cert_pem(),
        key.serialize_pem()
    ))
}

/// Sorts and deduplicates the service list, refusing an empty one.
fn normalized_services(services: &[String]) -> Result<Vec<String>, TlsError> {
    let mut services = services.to_vec();
    services.sort();
    services.dedup();
    if services.is_empty() {
        return Err(TlsError::Invalid {
            field: "services",
            reason: "a data-plane identity needs at least one service".into(),
        });
    }
    Ok(services)
}

/// Issues a leaf valid from `now - CLOCK_SKEW` to `now + validity`; `services` is normalized.
fn sign_leaf(
    ca: &MeshCa,
    mesh: &str,
    services: &[String],
    validity: Duration,
    now: SystemTime,
) -> Result<(rcgen::Certificate, KeyPair), TlsError> {
    let lifetime = time::Duration::try_from(validity)
        .ok()
        .filter(|d| d.is_positive())
        .ok_or_else(|| TlsError::Invalid {
            field: "validity",
            reason: format!("{validity:?} is not a usable certificate lifetime"),
        })?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = services
        .iter()
        .map(|service| spiffe_uri("mesh", mesh, Some(service)))
        .collect::<Result<_, _>>()?;
    let mut subject = DistinguishedName::new();
    if let Some(first) = services.first() {
        subject.push(DnType::CommonName, first.as_str());
    }
    params.distinguished_name = subject;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::from(now);
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now.checked_add(lifetime).ok_or_else(|| TlsError::Invalid {
        field: "validity",
        reason: format!("{validity:?} ends past the year 9999"),
    })?;
    // No explicit serial: rcgen derives it from the hash of the (fresh, random) leaf key, so
    // every issued leaf has its own serial.
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
        TlsError::Generate {
            what: "leaf private key",
            source,
        }
    })?;
    let cert = params
        .signed_by(&key, ca.issuer()?)
        .map_err(|source| TlsError::Generate {
            what: "leaf certificate",
            source,
        })?;
    Ok((cert, key))
}

/// A new leaf signed by `ca` for `services` of `mesh`, valid for `validity` from `now`.
fn issue(
    ca: &MeshCa,
    mesh: &str,
    services: &[String],
    validity: Duration,
    now: SystemTime,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let (cert, key) = sign_leaf(ca, mesh, services, validity, now)?;
    let certified = CertifiedKey::from_der(
        vec![cert.der().clone(), ca.cert_der().clone()],
        &key.serialize_der(),
        "leaf certificate and key",
    )?;
    Ok(Arc::new(certified))
}

/// Who renews an identity this proxy cannot renew itself (no CA key), named in the warnings
/// as its end nears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewer {
    /// An operator, with `bearing ca issue` (an identity issued ahead of time): warned from
    /// 80% of its lifetime.
    Operator,
    /// The control plane, which pushes a renewed certificate over SDS (kuma-cp renews at 80%
    /// of the lifetime): warned from 90%, when that renewal is late.
    ControlPlane,
}

/// The validity period (notBefore, notAfter) of the first certificate of a PEM chain.
pub fn leaf_validity(pem: &str) -> Result<(SystemTime, SystemTime), TlsError> {
    use rustls_pki_types::pem::PemObject as _;
    let leaf = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| TlsError::Invalid {
            field: "identity",
            reason: "no certificate in the PEM".into(),
        })?
        .map_err(|e| TlsError::Pem {
            what: "identity certificate chain PEM",
            reason: e.to_string(),
        })?;
    der_validity(&leaf)
}

/// The services a mesh identity certificate names (its `spiffe://<mesh>/<service>` URI
/// SANs), for an identity pushed without the listeners that would name them (a gateway's).
pub fn leaf_spiffe_services(pem: &str, mesh: &str) -> Result<Vec<String>, TlsError> {
    use rustls_pki_types::pem::PemObject as _;
    use x509_parser::extensions::GeneralName;
    let invalid = |reason: String| TlsError::Certificate {
        what: "identity certificate",
        reason,
    };
    let leaf = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| invalid("no certificate in the PEM".into()))?
        .map_err(|e| invalid(e.to_string()))?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(&leaf).map_err(|e| invalid(e.to_string()))?;
    let prefix = format!("spiffe://{mesh}/");
    let names = parsed
        .subject_alternative_name()
        .map_err(|e| invalid(e.to_string()))?
        .map(|san| san.value.general_names.clone())
        .unwrap_or_default();
    Ok(names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) => uri.strip_prefix(prefix.as_str()).map(str::to_string),
            _ => None,
        })
        .collect())
}

/// The validity period of a DER certificate.
fn der_validity(der: &[u8]) -> Result<(SystemTime, SystemTime), TlsError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::Certificate {
            what: "identity certificate",
            reason: e.to_string(),
        })?;
    let validity = parsed.validity();
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    Ok((
        at(validity.not_before.timestamp()),
        at(validity.not_after.timestamp()),
    ))
}

/// One issued leaf and when it was issued, swapped as a unit.
struct Leaf {
    key: Arc<CertifiedKey>,
    issued_at: SystemTime,
}

/// The current mesh identity of a data-plane proxy, renewable in place.
///
/// Mesh acceptors and connectors present its newest leaf on every new handshake.
pub struct Identity {
    ca: Arc<MeshCa>,
    mesh: String,
    services: Vec<String>,
    validity: Duration,
    leaf: ArcSwap<Leaf>,
    /// Who renews it when this proxy cannot.
    renewer: Renewer,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("mesh", &self.mesh)
            .field("services", &self.services)
            .field("validity", &self.validity)
            .field("expires_at", &self.expires_at())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Issues the first leaf for `services` of `mesh`, signed by `ca` and valid for `validity`.
    pub fn new(
        ca: Arc<MeshCa>,
        mesh: &str,
        services: &[String],
        validity: Duration,
    ) -> Result<Arc<Identity>, TlsError> {
        let services = normalized_services(services)?;
        let issued_at = SystemTime::now();
        let key = issue(&ca, mesh, &services, validity, issued_at)?;
        Ok(Arc::new(Identity {
            ca,
            mesh: mesh.to_owned(),
            services,
            validity,
            leaf: ArcSwap::from_pointee(Leaf { key, issued_at }),
            renewer: Renewer::Operator,
        }))
    }

    /// An identity issued ahead of time: `pem` holds the certificate chain (leaf first) and
    /// the leaf's private key. The leaf must chain to `ca`, be valid now and carry
    /// `spiffe://<mesh>/<service>` for each of `services`; a MeshIdentity's leaf, whose
    /// SPIFFE id is its own (`spiffe://<trust domain>/...`), is given no services. It cannot
    /// be renewed here (`ca` has no key): [`spawn_renewal`] warns as its end nears, naming
    /// `renewer`.
    pub fn pre_issued(
        ca: Arc<MeshCa>,
        mesh: &str,
        services: &[String],
        pem: &str,
        renewer: Renewer,
    ) -> Result<Arc<Identity>, TlsError> {
        let services = match services {
            [] => Vec::new(),
            some => normalized_services(some)?,
        };
        let (certs, key) = load_identity_pem(pem, pem)?;
        let Some(leaf) = certs.first() else {
            return Err(TlsError::Invalid {
                field: "identity",
                reason: "no certificate in the PEM".into(),
            });
        };
        crate::config::verify_leaf(&ca, &certs)?;
        let presented = crate::config::uri_sans(&certs);
        if let Some(missing) = services
            .iter()
            .map(|service| format!("spiffe://{mesh}/{service}"))
            .find(|id| !presented.contains(id))
        {
            return Err(TlsError::Invalid {
                field: "identity",
                reason: format!(
                    "the certificate lacks {missing} (it has {presented:?}); issue one for every service of this proxy"
                ),
            });
        }
        let (from, until) = der_validity(leaf)?;
        Ok(Arc::new(Identity {
            ca,
            mesh: mesh.to_owned(),
            services,
            validity: until.duration_since(from).unwrap_or_default(),
            leaf: ArcSwap::from_pointee(Leaf {
                key: Arc::new(key),
                issued_at: from,
            }),
            renewer,
        }))
    }

    /// Whether this proxy can renew the identity itself (it holds the CA key).
    pub fn renewable(&self) -> bool {
        self.ca.key_pem().is_some()
    }

    /// The leaf certificate chain and key that new handshakes present.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.leaf.load().key.clone()
    }

    /// The mesh this identity belongs to.
    pub fn mesh(&self) -> &str {
        &self.mesh
    }

    /// The services (sorted, deduplicated) the leaf carries a SPIFFE id for.
    pub fn services(&self) -> &[String] {
        &self.services
    }

    /// The lifetime each issued leaf gets.
    pub fn validity(&self) -> Duration {
        self.validity
    }

    /// When the current leaf expires.
    pub fn expires_at(&self) -> SystemTime {
        self.leaf.load().issued_at + self.validity
    }

    /// When the current leaf is due for renewal: after 80% of its lifetime.
    pub fn renew_at(&self) -> SystemTime {
        self.leaf.load().issued_at + self.validity * RENEW_AT_PERCENT / 100
    }

    /// When an identity this proxy cannot renew is late enough to warn about: from 80% of
    /// its lifetime when an operator renews it, from 90% when the control plane
    /// does (its renewal at 80% is then overdue).
    fn warn_at(&self) -> SystemTime {
        let percent = match self.renewer {
            Renewer::Operator => RENEW_AT_PERCENT,
            Renewer::ControlPlane => 90,
        };
        self.leaf.load().issued_at + self.validity * percent / 100
    }

    /// Whether the current leaf has used up 80% of its lifetime at `now` and should be renewed.
    pub fn renew_due(&self, now: SystemTime) -> bool {
        now >= self.renew_at()
    }

    /// Issues a new leaf (new key, new serial) and swaps it in: new handshakes present it,
    /// established connections are unaffected. On error the current leaf stays.
    pub fn renew(&self) -> Result<(), TlsError> {
        let issued_at = SystemTime::now();
        let key = issue(
            &self.ca,
            &self.mesh,
            &self.services,
            self.validity,
            issued_at,
        )?;
        self.leaf.store(Arc::new(Leaf { key, issued_at }));
        Ok(())
    }
}

/// Says, loudly, that a pre-issued identity nears its end (or is past it) and that only a
/// new one from `bearing ca issue` helps.
fn warn_unrenewable(identity: &Identity, now: SystemTime) {
    let expires_at = OffsetDateTime::from(identity.expires_at());
    let hint = match identity.renewer {
        Renewer::Operator => "this proxy holds no CA key and cannot renew it: write a new identity Secret with `bearing ca issue`",
        Renewer::ControlPlane => "the control plane renews it and has not pushed a new certificate: check this proxy's connection to kuma-cp and kuma-cp's log",
    };
    match identity.expires_at().duration_since(now) {
        Ok(left) => tracing::warn!(
            mesh = %identity.mesh,
            services = ?identity.services,
            %expires_at,
            left_secs = left.as_secs(),
            "mesh identity certificate expires soon; {hint}"
        ),
        Err(_) => tracing::error!(
            mesh = %identity.mesh,
            services = ?identity.services,
            %expires_at,
            "mesh identity certificate has EXPIRED: peers refuse this proxy; {hint}"
        ),
    }
}

/// Runs the renewal loop of `identity`: sleeps until renewal is due, renews, logs the outcome,
/// and retries a failed renewal after 10 s. An identity it cannot renew (pre-issued, no CA
/// key) gets a warning every hour from then on instead. Runs until the handle is aborted.
pub fn spawn_renewal(identity: Arc<Identity>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let now = SystemTime::now();
            let due = match identity.renewable() {
                true => identity.renew_at(),
                false => identity.warn_at(),
            };
            if now < due {
                let wait = due.duration_since(now).unwrap_or_default().min(MAX_SLEEP);
                tokio::time::sleep(wait).await;
                continue;
            }
            if !identity.renewable() {
                warn_unrenewable(&identity, now);
                tokio::time::sleep(MAX_SLEEP).await;
                continue;
            }
            match identity.renew() {
                Ok(()) => tracing::info!(
                    mesh = %identity.mesh,
                    services = ?identity.services,
                    expires_at = ?identity.expires_at(),
                    "renewed mesh identity certificate"
                ),
                Err(error) => {
                    tracing::warn!(
                        mesh = %identity.mesh,
                        services = ?identity.services,
                        %error,
                        retry_in = ?RETRY_AFTER,
                        "renewing mesh identity certificate failed"
                    );
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    fn services(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// `leaf_validity` reads the leaf's own period; an identity kuma-cp renews (at 80%) is
    /// warned about from 90% of it, one an operator renews from 80%.
    #[test]
    fn control_plane_identities_are_warned_once_their_renewal_is_late() {
        let ca = MeshCa::generate("default").unwrap();
        let pem = issue_leaf_pem(
            &ca,
            "default",
            &services(&["web"]),
            Duration::from_secs(3600),
        )
        .unwrap();
        let (from, until) = leaf_validity(&pem).unwrap();
        let lifetime = until.duration_since(from).unwrap();
        assert!(lifetime >= Duration::from_secs(3600), "{lifetime:?}");
        let trust = Arc::new(MeshCa::from_cert_pem(ca.cert_pem()).unwrap());
        let web = services(&["web"]);
        let at = |renewer| {
            let id = Identity::pre_issued(trust.clone(), "default", &web, &pem, renewer).unwrap();
            assert_eq!(id.expires_at(), until);
            id.warn_at()
        };
        assert_eq!(at(Renewer::Operator), from + lifetime * 80 / 100);
        assert_eq!(at(Renewer::ControlPlane), from + lifetime * 90 / 100);
        assert!(leaf_validity("no certificate").is_err());
    }

    /// A leaf issued ahead of time loads without the CA key, carries what it was issued for,
    /// and cannot be renewed; one for other services or from another CA is refused.
    #[test]
    fn pre_issued_identity_needs_no_ca_key_and_is_checked() {
        let ca = MeshCa::generate("default").unwrap();
        let pem = issue_leaf_pem(
            &ca,
            "default",
            &services(&["web", "api"]),
            Duration::from_secs(3600),
        )
        .unwrap();
        let trust = Arc::new(MeshCa::from_cert_pem(ca.cert_pem()).unwrap());
        assert_eq!(trust.key_pem(), None);
        let id = Identity::pre_issued(
            trust.clone(),
            "default",
            &services(&["web"]),
            &pem,
            Renewer::Operator,
        )
        .unwrap();
        assert!(!id.renewable());
        assert!(matches!(id.renew(), Err(TlsError::NoCaKey)));
        let left = id.expires_at().duration_since(SystemTime::now()).unwrap();
        assert!(
            left > Duration::from_secs(3500) && left <= Duration::from_secs(3600),
            "{left:?}"
        );

        let err = Identity::pre_issued(
            trust.clone(),
            "default",
            &services(&["db"]),
            &pem,
            Renewer::Operator,
        )
        .unwrap_err();
        assert!(err.to_string().contains("spiffe://default/db"), "{err}");
        let other = MeshCa::generate("default").unwrap();
        let foreign = issue_leaf_pem(
            &other,
            "default",
            &services(&["web"]),
            Duration::from_secs(3600),
        )
        .unwrap();
        assert!(Identity::pre_issued(
            trust,
            "default",
            &services(&["web"]),
            &foreign,
            Renewer::Operator
        )
        .is_err());
        let leaf_only = pem
            .split("-----END CERTIFICATE-----")
            .next()
            .unwrap()
            .to_string()
            + "-----END CERTIFICATE-----\n";
        assert!(
            MeshCa::from_cert_pem(&leaf_only).is_err(),
            "a leaf is not a CA"
        );
    }

    #[test]
    fn leaf_has_sorted_spiffe_sans_and_chain() {
        let ca = MeshCa::generate("default").unwrap();
        let key = issue_leaf(
            &ca,
            "default",
            &services(&["web", "backend", "web"]),
            Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(key.cert.len(), 2);
        assert_eq!(&key.cert[1], ca.cert_der());
        let (_, leaf) = parse_x509_certificate(&key.cert[0]).unwrap();
        assert_eq!(leaf.subject().to_string(), "CN=backend");
        assert_eq!(
            crate::config::uri_sans(&key.cert),
            ["spiffe://default/backend", "spiffe://default/web"]
        );
        let ku = leaf.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let v = leaf.validity();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!((now - 60 - v.not_before.timestamp()).abs() <= 5);
        assert!((v.not_after.timestamp() - now - 3600).abs() <= 5);
        assert!(!leaf.is_ca());
    }

    #[test]
    fn leaf_from_rsa_ca_loaded_from_pem() {
        let key = KeyPair::from_pem(include_str!("../testdata/rsa2048.pkcs8.pem")).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = params.self_signed(&key).unwrap();
        let ca =
            MeshCa::from_pem(&cert.pem(), include_str!("../testdata/rsa2048.pkcs1.pem")).unwrap();
        let leaf = issue_leaf(&ca, "m", &services(&["s"]), Duration::from_secs(60)).unwrap();
        let (_, parsed) = parse_x509_certificate(&leaf.cert[0]).unwrap();
        let (_, ca_parsed) = parse_x509_certificate(ca.cert_der()).unwrap();
        parsed
            .verify_signature(Some(ca_parsed.public_key()))
            .unwrap();
    }

    #[test]
    fn rejects_empty_services_and_zero_validity() {
        let ca = MeshCa::generate("default").unwrap();
        let err = issue_leaf(&ca, "default", &[], Duration::from_secs(60)).unwrap_err();
        assert!(err.to_string().starts_with("invalid services:"), "{err}");
        let err = issue_leaf(&ca, "default", &services(&["a"]), Duration::ZERO).unwrap_err();
        assert!(err.to_string().starts_with("invalid validity:"), "{err}");
    }

    #[test]
    fn renewal_is_due_after_80_percent_and_swaps_the_leaf() {
        let ca = Arc::new(MeshCa::generate("default").unwrap());
        let id =
            Identity::new(ca, "default", &services(&["web"]), Duration::from_secs(100)).unwrap();
        let issued = id.expires_at() - Duration::from_secs(100);
        assert!(!id.renew_due(issued + Duration::from_secs(79)));
        assert!(id.renew_due(issued + Duration::from_secs(80)));
        let before = id.current();
        id.renew().unwrap();
        let after = id.current();
        assert_ne!(before.cert[0], after.cert[0]);
        let serial =
            |k: &CertifiedKey| parse_x509_certificate(&k.cert[0]).unwrap().1.serial.clone();
        assert_ne!(serial(&before), serial(&after));
    }

    #[tokio::test]
    async fn renewal_task_renews_when_due() {
        let ca = Arc::new(MeshCa::generate("default").unwrap());
        // A 1 s lifetime is due for renewal after 0.8 s.
        let id = Identity::new(ca, "default", &services(&["web"]), Duration::from_secs(1)).unwrap();
        let first = id.current();
        let task = spawn_renewal(id.clone());
        while Arc::ptr_eq(&first, &id.current()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        task.abort();
    }
}

//! SPIFFE trust as Envoy's SPIFFE certificate validator (`envoy.tls.cert_validator.spiffe`)
//! holds it for Kuma's MeshIdentity and MeshTrust: one CA bundle per trust domain. A peer is
//! trusted when its chain verifies against the bundles and ends in the bundle of the trust
//! domain of its SPIFFE id (`spiffe://<trust domain>/...`): a CA of one trust domain cannot
//! vouch for an id of another.

use std::collections::BTreeMap;

use boring::x509::{X509StoreContextRef, X509};

use crate::TlsError;

/// Trust domain → CA bundle, loaded.
#[derive(Debug)]
pub struct SpiffeTrust {
    /// Each trust domain's CA certificates, in DER, as a verified chain's anchor is compared.
    domains: BTreeMap<String, Vec<Vec<u8>>>,
    /// Every bundle's certificates: the trust store a handshake verifies chains against.
    roots: Vec<X509>,
}

impl SpiffeTrust {
    /// Loads `bundles` (trust domain → PEM bundle); a bundle without a certificate, or that
    /// does not parse, is an error naming its trust domain.
    pub fn from_pems(bundles: &BTreeMap<String, String>) -> Result<SpiffeTrust, TlsError> {
        let mut domains = BTreeMap::new();
        let mut roots = Vec::new();
        for (domain, pem) in bundles {
            let invalid = |reason: String| TlsError::Invalid {
                field: "SPIFFE trust bundle",
                reason: format!("trust domain {domain:?}: {reason}"),
            };
            let certs = X509::stack_from_pem(pem.as_bytes()).map_err(|e| invalid(e.to_string()))?;
            if certs.is_empty() {
                return Err(invalid("no CERTIFICATE block".into()));
            }
            let ders = certs
                .iter()
                .map(|c| c.to_der().map_err(|e| invalid(e.to_string())))
                .collect::<Result<Vec<_>, _>>()?;
            domains.insert(domain.clone(), ders);
            roots.extend(certs);
        }
        Ok(SpiffeTrust { domains, roots })
    }

    /// Every bundle's certificates.
    pub(crate) fn roots(&self) -> &[X509] {
        &self.roots
    }

    /// The trust domains held.
    pub fn trust_domains(&self) -> impl Iterator<Item = &str> {
        self.domains.keys().map(String::as_str)
    }

    /// Whether the chain `ctx` verified ends in the bundle of `spiffe_id`'s trust domain.
    /// Called from a verify callback at the leaf, when the whole chain is built.
    pub(crate) fn anchors(&self, spiffe_id: &str, ctx: &X509StoreContextRef) -> bool {
        let Some(bundle) = trust_domain(spiffe_id).and_then(|d| self.domains.get(d)) else {
            return false;
        };
        let anchor = ctx
            .chain()
            .and_then(|chain| chain.iter().next_back())
            .and_then(|cert| cert.to_der().ok());
        anchor.is_some_and(|der| bundle.contains(&der))
    }
}

/// The trust domain of the bundle that issued the identity `identity_pem` (its chain, leaf
/// first): the trust domain of the leaf's SPIFFE id, when that bundle holds a CA whose key
/// signed a certificate of the chain; for a leaf without a SPIFFE id, any such bundle. The
/// check is by signature only (not by time), as the identity's own loading checks the rest.
pub fn own_trust_domain<'b>(
    identity_pem: &str,
    bundles: &'b BTreeMap<String, String>,
) -> Option<&'b str> {
    let chain = X509::stack_from_pem(identity_pem.as_bytes()).ok()?;
    let leaf_domain = chain
        .first()
        .map(|leaf| crate::stack::uri_sans_of(leaf))
        .unwrap_or_default()
        .iter()
        .find_map(|uri| trust_domain(uri).map(str::to_owned));
    let issued = |pem: &str| {
        let cas = X509::stack_from_pem(pem.as_bytes()).unwrap_or_default();
        cas.iter().any(|ca| {
            ca.public_key()
                .is_ok_and(|key| chain.iter().any(|c| c.verify(&key).unwrap_or(false)))
        })
    };
    bundles
        .iter()
        .filter(|(domain, _)| leaf_domain.as_deref().is_none_or(|d| d == domain.as_str()))
        .find(|(_, pem)| issued(pem))
        .map(|(domain, _)| domain.as_str())
}

/// The trust domain of a SPIFFE id (`spiffe://<trust domain>/<path>`).
pub fn trust_domain(spiffe_id: &str) -> Option<&str> {
    let rest = spiffe_id.strip_prefix("spiffe://")?;
    let domain = rest.split('/').next()?;
    (!domain.is_empty()).then_some(domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_domains_of_spiffe_ids() {
        assert_eq!(
            trust_domain("spiffe://default.zone-1.mesh.local/workload/web"),
            Some("default.zone-1.mesh.local")
        );
        assert_eq!(trust_domain("spiffe://default/web"), Some("default"));
        assert_eq!(trust_domain("spiffe:///web"), None);
        assert_eq!(trust_domain("https://default/web"), None);
    }

    #[test]
    fn own_trust_domain_is_the_leafs_and_its_bundle_must_have_signed() {
        let hour = std::time::Duration::from_secs(3600);
        let (ca_a, ca_b) = (
            crate::MeshCa::generate("a").unwrap(),
            crate::MeshCa::generate("b").unwrap(),
        );
        let leaf = crate::issue_leaf_pem(&ca_a, "td-a", &["web".to_string()], hour).unwrap();
        let bundles = |a: &str| {
            BTreeMap::from([
                ("td-a".to_string(), a.to_string()),
                ("td-b".to_string(), ca_b.cert_pem().to_string()),
            ])
        };
        let right = bundles(ca_a.cert_pem());
        assert_eq!(own_trust_domain(&leaf, &right), Some("td-a"));
        // td-a's bundle holding another CA: the leaf's trust domain does not vouch for it.
        let wrong = bundles(ca_b.cert_pem());
        assert_eq!(own_trust_domain(&leaf, &wrong), None);
    }

    #[test]
    fn bundles_load_or_name_their_trust_domain() {
        let ca = crate::MeshCa::generate("default").unwrap();
        let ok = BTreeMap::from([("td-a".to_string(), ca.cert_pem().to_string())]);
        let trust = SpiffeTrust::from_pems(&ok).unwrap();
        assert_eq!(trust.trust_domains().collect::<Vec<_>>(), ["td-a"]);
        assert_eq!(trust.roots().len(), 1);
        let bad = BTreeMap::from([("td-b".to_string(), "no pem".to_string())]);
        let err = SpiffeTrust::from_pems(&bad).unwrap_err().to_string();
        assert!(err.contains("\"td-b\""), "{err}");
    }
}

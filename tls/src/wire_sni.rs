//! Kuma's tags-form SNI (`backend{mesh=default,version=v1}`) carried as a DNS name.
//!
//! rustls only sends an SNI that is a valid DNS name, and the tags form holds `{`, `=` and `,`.
//! So Bearing sidecars send it base32-encoded (lowercase RFC 4648 alphabet, no padding) in
//! labels of at most 60 characters under the suffix `.kuma-sni`, and Bearing's zone proxies
//! decode it before routing; Envoy sidecars' raw tags form is routed unchanged. Written here
//! because no maintained crate offers this exact, allocation-light round trip and it is a
//! dozen lines.

/// The label that marks an encoded tags-form SNI.
const SUFFIX: &str = ".kuma-sni";
/// Characters per label (DNS allows 63).
const LABEL: usize = 60;
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// The DNS-name form of a tags-form SNI.
pub fn to_dns_sni(tags_form: &str) -> String {
    let mut digits = String::with_capacity(tags_form.len() * 8 / 5 + 2);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in tags_form.bytes() {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            digits.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        digits.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
    let mut out = String::with_capacity(digits.len() + digits.len() / LABEL + SUFFIX.len() + 1);
    for (i, chunk) in digits.as_bytes().chunks(LABEL).enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
    }
    out.push_str(SUFFIX);
    out
}

/// The tags-form SNI an encoded DNS name carries; `None` for any other name.
pub fn from_dns_sni(sni: &str) -> Option<String> {
    let body = sni.strip_suffix(SUFFIX)?;
    let mut bytes = Vec::with_capacity(body.len() * 5 / 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in body.bytes().filter(|c| *c != b'.') {
        let value = ALPHABET.iter().position(|a| *a == c.to_ascii_lowercase())?;
        acc = (acc << 5) | value as u32;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            bytes.push((acc >> bits) as u8);
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_is_a_dns_name() {
        for sni in [
            "backend{mesh=default}",
            "backend{kuma.io/zone=zone,mesh=mesh1,region=eu,version=v1}",
            "a{mesh=m}",
            "",
        ] {
            let wire = to_dns_sni(sni);
            assert!(wire.split('.').all(|l| l.len() <= 63), "{wire}");
            if !sni.is_empty() {
                assert!(
                    rustls_pki_types::DnsName::try_from(wire.clone()).is_ok(),
                    "{wire}"
                );
            }
            assert_eq!(from_dns_sni(&wire).as_deref(), Some(sni));
        }
        assert_eq!(from_dns_sni("backend.mesh"), None);
        assert_eq!(from_dns_sni("!!.kuma-sni"), None);
    }
}

//! TLS parameters (Envoy's `CommonTlsContext.tls_params`, kuma-cp's MeshTLS) set on a
//! context as Envoy 1.40 sets them on its BoringSSL contexts: the version range, the cipher
//! list for TLS 1.2 and below applied strictly (`SSL_CTX_set_strict_cipher_list`: an unknown
//! name or a list selecting nothing is an error, never skipped), the key exchange groups,
//! and the server's cipher preference. [`check_tls_params`] lets the translation refuse what
//! would not build, so a context built at apply time never fails on its parameters. Checked
//! against Envoy 1.40 (`envoy --mode validate`): an unknown cipher name and a list selecting
//! none (`-ALL`) are refused ("Failed to initialize cipher suites"), a minimum version above
//! the maximum is accepted.

use boring::ssl::{SslContextBuilder, SslOptions, SslVersion};

use bearing_proxy_config::{TlsParams, TlsVersion};

use crate::stack::{context_builder, ssl_err};
use crate::TlsError;

/// BoringSSL's version for `version`.
fn ssl_version(version: TlsVersion) -> SslVersion {
    match version {
        TlsVersion::V1_0 => SslVersion::TLS1,
        TlsVersion::V1_1 => SslVersion::TLS1_1,
        TlsVersion::V1_2 => SslVersion::TLS1_2,
        TlsVersion::V1_3 => SslVersion::TLS1_3,
    }
}

/// Sets `params` on a context being built (`what` names it in errors). A minimum above the
/// maximum is set as given: BoringSSL then negotiates nothing, as in Envoy.
pub(crate) fn apply(
    b: &mut SslContextBuilder,
    params: &TlsParams,
    what: &'static str,
) -> Result<(), TlsError> {
    b.set_min_proto_version(Some(ssl_version(params.min_version)))
        .and_then(|()| b.set_max_proto_version(Some(ssl_version(params.max_version))))
        .map_err(ssl_err(what))?;
    if b.set_strict_cipher_list(&params.cipher_suites).is_err() {
        return Err(TlsError::Invalid {
            field: "cipher_suites",
            reason: rejected_ciphers(&params.cipher_suites),
        });
    }
    if b.set_curves_list(&params.ecdh_curves).is_err() {
        return Err(TlsError::Invalid {
            field: "ecdh_curves",
            reason: format!("BoringSSL refuses {:?}", params.ecdh_curves),
        });
    }
    // Envoy's contexts prefer their own cipher order (it sets this on every context).
    b.set_options(SslOptions::CIPHER_SERVER_PREFERENCE);
    Ok(())
}

/// Why a cipher list was refused, naming the names BoringSSL refuses on their own, as Envoy's
/// "Failed to initialize cipher suites" does (a list of only known names that selects nothing
/// names none).
fn rejected_ciphers(list: &str) -> String {
    let bad: Vec<&str> = list
        .split(|c| ":+![|]".contains(c))
        .filter(|token| !token.is_empty())
        .map(|token| token.strip_prefix('-').unwrap_or(token))
        .filter(|name| {
            context_builder("cipher check")
                .is_ok_and(|mut b| b.set_strict_cipher_list(name).is_err())
        })
        .collect();
    match bad.as_slice() {
        [] => format!("{list:?} selects no cipher suite"),
        _ => format!(
            "{list:?} is refused; rejected when tried individually: {}",
            bad.join(", ")
        ),
    }
}

/// Whether `params` build a context: what the translation checks before a config is applied
/// (a context that would not build is a NACK naming the field, as Envoy refuses it).
pub fn check_tls_params(params: &TlsParams) -> Result<(), TlsError> {
    let what = "TLS parameters";
    let mut b = context_builder(what)?;
    apply(&mut b, params, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn params(min: TlsVersion, max: TlsVersion, ciphers: &str) -> TlsParams {
        TlsParams {
            min_version: min,
            max_version: max,
            cipher_suites: ciphers.into(),
            ecdh_curves: "X25519:P-256".into(),
        }
    }

    #[test]
    fn known_lists_build_and_unknown_or_empty_selections_are_named() {
        let ok = params(
            TlsVersion::V1_3,
            TlsVersion::V1_3,
            "ECDHE-ECDSA-AES256-GCM-SHA384",
        );
        check_tls_params(&ok).unwrap();
        let envoy_default = "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]:[ECDHE-RSA-AES128-GCM-SHA256|ECDHE-RSA-CHACHA20-POLY1305]:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384";
        check_tls_params(&params(TlsVersion::V1_2, TlsVersion::V1_2, envoy_default)).unwrap();
        // A minimum above the maximum builds (and negotiates nothing), as in Envoy.
        check_tls_params(&params(TlsVersion::V1_3, TlsVersion::V1_2, envoy_default)).unwrap();

        let bad = params(
            TlsVersion::V1_2,
            TlsVersion::V1_3,
            "ECDHE-ECDSA-AES256-GCM-SHA384:NOPE-CIPHER",
        );
        let err = check_tls_params(&bad).unwrap_err().to_string();
        assert!(err.starts_with("invalid cipher_suites"), "{err}");
        assert!(err.contains("individually: NOPE-CIPHER"), "{err}");
        assert!(!err.contains("individually: ECDHE"), "{err}");
        // Known names only, selecting nothing: refused by the strict list, naming none.
        let none = params(TlsVersion::V1_2, TlsVersion::V1_3, "-ALL");
        let err = check_tls_params(&none).unwrap_err().to_string();
        assert!(err.contains("selects no cipher suite"), "{err}");

        let mut curves = ok.clone();
        curves.ecdh_curves = "P-999".into();
        let err = check_tls_params(&curves).unwrap_err().to_string();
        assert!(err.starts_with("invalid ecdh_curves"), "{err}");
    }
}

//! A TLS context's `CommonTlsContext.tls_params` (kuma-cp's MeshTLS `tlsVersion` and
//! `tlsCiphers`, a MeshExternalService's `tls.version`, a gateway listener's TLS 1.2 floor) as
//! Envoy 1.40 reads it: `TLS_AUTO` takes the side's default (TLS 1.2 as the minimum of both
//! sides; TLS 1.2 as a client's maximum, TLS 1.3 as a server's), an empty `cipher_suites`
//! Envoy's default list, and the key exchange groups Envoy's default `X25519:P-256` (kuma-cp
//! renders no `ecdh_curves` or `signature_algorithms`; the field guard NACKs them). Each
//! distinct set is built once per translation as the runtime builds it (kuma-cp renders one
//! set for every cluster of a mesh), so a context BoringSSL refuses (an
//! unknown cipher, a list selecting none) is a NACK naming the field, as Envoy refuses it,
//! and the last good config keeps serving. A context without `tls_params` keeps Bearing's
//! own versions and lists (`None`).

use super::Translator;
use bearing_proxy_config::{TlsParams, TlsVersion};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls_pb;
use std::collections::HashMap;
use tls_pb::tls_parameters::TlsProtocol;

/// Envoy's default cipher list for TLS 1.2 and below, the same for clients and servers in
/// non-FIPS builds (`ClientContextConfigImpl`/`ServerContextConfigImpl::DEFAULT_CIPHER_SUITES`).
const ENVOY_CIPHERS: &str = "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]:\
    [ECDHE-RSA-AES128-GCM-SHA256|ECDHE-RSA-CHACHA20-POLY1305]:\
    ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384";

/// Envoy's default key exchange groups (`DEFAULT_CURVES`, both sides).
const ENVOY_CURVES: &str = "X25519:P-256";

/// Which end of the handshake a context is, for the defaults `TLS_AUTO` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    /// An `UpstreamTlsContext`: Envoy's client defaults to TLS 1.2 at most.
    Client,
    /// A `DownstreamTlsContext`: Envoy's server defaults to TLS 1.3 at most.
    Server,
}

/// The version `value` (a `TlsProtocol`) names, `auto` for `TLS_AUTO`; `None`: a number that
/// is no `TlsProtocol` (Envoy's `defined_only` rule refuses it).
fn version(value: i32, auto: TlsVersion) -> Option<TlsVersion> {
    Some(match TlsProtocol::try_from(value).ok()? {
        TlsProtocol::TlsAuto => auto,
        TlsProtocol::TlSv10 => TlsVersion::V1_0,
        TlsProtocol::TlSv11 => TlsVersion::V1_1,
        TlsProtocol::TlSv12 => TlsVersion::V1_2,
        TlsProtocol::TlSv13 => TlsVersion::V1_3,
    })
}

/// Why a set of parameters does not build: the field of `TlsParameters` at fault (empty:
/// the set as a whole) and why.
type Refusal = (&'static str, String);

/// The parameter sets of one translation already built, with the verdict.
pub(super) type Checked = HashMap<TlsParams, Result<(), Refusal>>;

/// Whether `params` build a context, as the runtime builds it.
fn check(params: &TlsParams) -> Result<(), Refusal> {
    bearing_tls::check_tls_params(params).map_err(|e| match e {
        bearing_tls::TlsError::Invalid { field, reason } => (field, reason),
        other => ("", other.to_string()),
    })
}

/// The parameters `params` make on `side`, not yet checked; an error names the field of
/// `TlsParameters` at fault and why.
fn resolve(params: &tls_pb::TlsParameters, side: Side) -> Result<TlsParams, Refusal> {
    let undefined = |field: &'static str, value: i32| {
        (
            field,
            format!("{value} is not a TlsProtocol (TLS_AUTO, TLSv1_0 to TLSv1_3)"),
        )
    };
    let max_auto = match side {
        Side::Client => TlsVersion::V1_2,
        Side::Server => TlsVersion::V1_3,
    };
    let min = params.tls_minimum_protocol_version;
    let max = params.tls_maximum_protocol_version;
    let resolved = TlsParams {
        min_version: version(min, TlsVersion::V1_2)
            .ok_or_else(|| undefined("tls_minimum_protocol_version", min))?,
        max_version: version(max, max_auto)
            .ok_or_else(|| undefined("tls_maximum_protocol_version", max))?,
        cipher_suites: match params.cipher_suites.is_empty() {
            true => ENVOY_CIPHERS.to_string(),
            false => params.cipher_suites.join(":"),
        },
        ecdh_curves: ENVOY_CURVES.to_string(),
    };
    Ok(resolved)
}

impl Translator<'_> {
    /// The TLS parameters of the context whose `CommonTlsContext` is `common` (at
    /// `common_at`), on `side`; `Ok(None)` without `tls_params`; `Err` once NACKed.
    pub(super) fn tls_params(
        &mut self,
        (type_url, name): (&str, &str),
        common_at: &str,
        common: &tls_pb::CommonTlsContext,
        side: Side,
    ) -> Result<Option<TlsParams>, ()> {
        let Some(params) = &common.tls_params else {
            return Ok(None);
        };
        let checked = resolve(params, side).and_then(|resolved| {
            let verdict = self
                .checked_tls_params
                .entry(resolved.clone())
                .or_insert_with_key(check);
            verdict.clone().map(|()| resolved)
        });
        checked.map(Some).map_err(|(field, reason)| {
            let at = match field {
                "" => format!("{common_at}.tls_params"),
                field => format!("{common_at}.tls_params.{field}"),
            };
            let reason = format!("Envoy refuses this TLS context: {reason}");
            self.nack(type_url, name, at, reason);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `params` resolved on `side` and checked, as a translation takes them.
    fn built(params: &tls_pb::TlsParameters, side: Side) -> Result<TlsParams, Refusal> {
        let resolved = resolve(params, side)?;
        check(&resolved).map(|()| resolved)
    }

    fn params(min: TlsProtocol, max: TlsProtocol, ciphers: &[&str]) -> tls_pb::TlsParameters {
        tls_pb::TlsParameters {
            tls_minimum_protocol_version: min as i32,
            tls_maximum_protocol_version: max as i32,
            cipher_suites: ciphers.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        }
    }

    /// kuma-cp's MeshTLS golden (`min: TLS13, max: TLS13`, one cipher) is taken as written on
    /// both sides; `TLS_AUTO` is TLS 1.2 as a minimum, and as a maximum TLS 1.2 for a client
    /// and TLS 1.3 for a server; no cipher list is Envoy's default one.
    #[test]
    fn versions_take_each_sides_defaults_and_lists_envoys() {
        let kuma = params(
            TlsProtocol::TlSv13,
            TlsProtocol::TlSv13,
            &["ECDHE-ECDSA-AES256-GCM-SHA384"],
        );
        for side in [Side::Client, Side::Server] {
            let p = built(&kuma, side).unwrap();
            assert_eq!(
                (p.min_version, p.max_version),
                (TlsVersion::V1_3, TlsVersion::V1_3)
            );
            assert_eq!(p.cipher_suites, "ECDHE-ECDSA-AES256-GCM-SHA384");
            assert_eq!(p.ecdh_curves, "X25519:P-256");
        }
        let auto = params(TlsProtocol::TlsAuto, TlsProtocol::TlsAuto, &[]);
        let client = built(&auto, Side::Client).unwrap();
        assert_eq!(
            (client.min_version, client.max_version),
            (TlsVersion::V1_2, TlsVersion::V1_2)
        );
        assert_eq!(client.cipher_suites, ENVOY_CIPHERS);
        let server = built(&auto, Side::Server).unwrap();
        assert_eq!(
            (server.min_version, server.max_version),
            (TlsVersion::V1_2, TlsVersion::V1_3)
        );
        let two = params(
            TlsProtocol::TlSv10,
            TlsProtocol::TlSv11,
            &["AES128-SHA", "AES256-SHA"],
        );
        let p = built(&two, Side::Server).unwrap();
        assert_eq!(
            (p.min_version, p.max_version),
            (TlsVersion::V1_0, TlsVersion::V1_1)
        );
        assert_eq!(p.cipher_suites, "AES128-SHA:AES256-SHA");
    }

    /// What Envoy refuses is named by its field: an unknown cipher, a list that selects
    /// nothing, a version number that is no `TlsProtocol`.
    #[test]
    fn contexts_envoy_refuses_name_the_field() {
        let unknown = params(
            TlsProtocol::TlsAuto,
            TlsProtocol::TlsAuto,
            &["NOT-A-CIPHER"],
        );
        let (field, reason) = built(&unknown, Side::Client).unwrap_err();
        assert_eq!(field, "cipher_suites");
        assert!(reason.contains("NOT-A-CIPHER"), "{reason}");
        let nothing = params(TlsProtocol::TlsAuto, TlsProtocol::TlsAuto, &["-ALL"]);
        assert_eq!(
            built(&nothing, Side::Server).unwrap_err().0,
            "cipher_suites"
        );
        let mut undefined = params(TlsProtocol::TlsAuto, TlsProtocol::TlsAuto, &[]);
        undefined.tls_maximum_protocol_version = 9;
        let (field, reason) = built(&undefined, Side::Server).unwrap_err();
        assert_eq!(field, "tls_maximum_protocol_version");
        assert!(reason.contains("9 is not a TlsProtocol"), "{reason}");
    }
}

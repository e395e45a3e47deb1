//! TLS contexts: mesh mTLS (server and client) and TLS to external services.
//!
//! Mesh traffic uses ALPN `kuma`; Bearing's client speaks TLS 1.3, its server TLS 1.2 and 1.3
//! (Envoy's downstream defaults: Kuma sets no TLS parameters on mesh traffic, and Envoy's
//! upstream default is TLS 1.2 at most, so Kuma's Envoy sidecars call with TLS 1.2); every
//! context takes TLS parameters (kuma-cp's MeshTLS, `params.rs`) in place of those. The
//! server requires a client certificate that
//! chains to the mesh CA. The client checks the server's chain to the mesh CA and then its
//! identity: one URI SAN must match one of the expected SPIFFE ids (Envoy's any-of rule over
//! `match_typed_subject_alt_names`). The SNI a client sends is Kuma's
//! name for the destination (service tags or a hashed resource name), sent byte for byte and
//! never matched against DNS SANs. Contexts are built here once per config and identity
//! renewal; [`TlsAcceptor`] and [`TlsConnector`] run the handshakes.

use std::sync::Arc;

use boring::ssl::{
    AlpnError, SslContext, SslContextBuilder, SslOptions, SslSessionCacheMode, SslVerifyMode,
    SslVersion,
};
use boring::x509::store::{X509Store, X509StoreBuilder};
use boring::x509::{X509StoreContext, X509VerifyError, X509};
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use bearing_proxy_config::{SpiffeMatcher, TlsParams};

use crate::params;
use crate::spiffe::SpiffeTrust;
use crate::stack::{check_sni, context_builder, ssl_err, CertifiedKey, ClientMesh, ServerCheck};
use crate::{Identity, MeshCa, TlsAcceptor, TlsConnector, TlsError};

/// The ALPN protocol id of Kuma mesh traffic.
pub const KUMA_ALPN: &[u8] = b"kuma";

/// A list of ALPN protocols in wire format (each prefixed by its length).
pub(crate) fn alpn_wire(protocols: &[&[u8]]) -> Result<Vec<u8>, TlsError> {
    let mut wire = Vec::new();
    for p in protocols {
        let len = u8::try_from(p.len())
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| TlsError::Invalid {
                field: "ALPN protocol",
                reason: format!("{:?} is empty or longer than 255 bytes", p),
            })?;
        wire.push(len);
        wire.extend_from_slice(p);
    }
    Ok(wire)
}

/// Answers a ClientHello's ALPN offer with the first of `ours` (wire format) it contains;
/// a client offering none of them is served without ALPN.
pub(crate) fn select_alpn(builder: &mut SslContextBuilder, ours: Vec<u8>) {
    builder.set_alpn_select_callback(move |_, offered| {
        protocols(&ours)
            .find_map(|p| protocols(offered).find(|o| *o == p))
            .ok_or(AlpnError::NOACK)
    });
}

/// The protocols of an ALPN list in wire format; a malformed tail is ignored.
fn protocols(wire: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = wire;
    std::iter::from_fn(move || {
        let (len, tail) = rest.split_first()?;
        let (protocol, tail) = tail.split_at_checked(usize::from(*len))?;
        rest = tail;
        Some(protocol)
    })
}

/// The certificates of CA PEM texts (other meshes' CAs: no key needed to trust them).
fn ca_certs(pems: &[&str], what: &'static str) -> Result<Vec<X509>, TlsError> {
    let mut certs = Vec::new();
    for pem in pems {
        let found = X509::stack_from_pem(pem.as_bytes()).map_err(|e| TlsError::Pem {
            what,
            reason: e.to_string(),
        })?;
        if found.is_empty() {
            return Err(TlsError::Pem {
                what,
                reason: "no CERTIFICATE block".into(),
            });
        }
        certs.extend(found);
    }
    Ok(certs)
}

fn mesh_roots(ca: &MeshCa) -> Result<Vec<X509>, TlsError> {
    Ok(vec![
        X509::from_der(ca.cert_der()).map_err(ssl_err("mesh CA certificate"))?
    ])
}

/// A trust store of `roots`.
fn store_of(roots: &[X509]) -> Result<X509Store, TlsError> {
    let what = "trust anchors";
    let mut store = X509StoreBuilder::new().map_err(ssl_err(what))?;
    for root in roots {
        store.add_cert(root.clone()).map_err(ssl_err(what))?;
    }
    Ok(store.build())
}

/// The server side of mesh mTLS (sidecar inbound, zone egress terminating a mesh's traffic):
/// TLS 1.2 and 1.3 (an Envoy sidecar's client offers TLS 1.2 at most), ALPN `kuma` (clients
/// sending no ALPN are accepted too), a client certificate required that chains to the mesh CA
/// and carries a SPIFFE id of the identity's mesh (a URI SAN starting with
/// `spiffe://<mesh>/`, Kuma's check), any SNI Kuma sends accepted, and the certificate
/// presented always the identity's current one. `params` (kuma-cp's MeshTLS) replace the
/// versions and lists.
pub fn mesh_acceptor(
    ca: &MeshCa,
    identity: Arc<Identity>,
    params: Option<&TlsParams>,
) -> Result<TlsAcceptor, TlsError> {
    let client_mesh = ClientMesh::new(identity.mesh())?;
    server_acceptor(mesh_roots(ca)?, identity, Some(client_mesh), params)
}

/// The server side of mesh mTLS under a MeshIdentity (Envoy's SPIFFE certificate validator,
/// Kuma's MeshTrust): as [`mesh_acceptor`], but a client is admitted when one of its SPIFFE
/// ids starts with `client_prefix` (Kuma's `spiffe://<trust domain>/`) and its chain ends in
/// the bundle `trust` holds for that id's trust domain.
pub fn spiffe_acceptor(
    trust: Arc<SpiffeTrust>,
    identity: Arc<Identity>,
    client_prefix: &str,
    params: Option<&TlsParams>,
) -> Result<TlsAcceptor, TlsError> {
    let roots = trust.roots().to_vec();
    let client_mesh = ClientMesh::with_prefix(identity.mesh(), client_prefix, Some(trust))?;
    server_acceptor(roots, identity, Some(client_mesh), params)
}

/// The client side of mesh mTLS under a MeshIdentity: as [`mesh_client`], but servers are
/// verified against `trust`'s bundles, each against the bundle of its expected id's trust
/// domain.
pub fn spiffe_client(
    trust: Arc<SpiffeTrust>,
    identity: Arc<Identity>,
    params: Option<&TlsParams>,
) -> Result<MeshClient, TlsError> {
    let MeshClient(contexts, _) = client_contexts(trust.roots().to_vec(), identity, params)?;
    Ok(MeshClient(contexts, Some(trust)))
}

/// The server side of a cross-mesh gateway listener: as [`mesh_acceptor`], but a client
/// certificate chaining to any of `client_ca_pems` (every mesh's CA) is accepted whatever
/// its SPIFFE id, as Kuma's cross-mesh listener (`mesh_ca:secret:all`, no SAN matcher).
pub fn cross_mesh_acceptor(
    client_ca_pems: &[&str],
    identity: Arc<Identity>,
    params: Option<&TlsParams>,
) -> Result<TlsAcceptor, TlsError> {
    server_acceptor(
        ca_certs(client_ca_pems, "mesh CA certificate PEM")?,
        identity,
        None,
        params,
    )
}

fn server_acceptor(
    roots: Vec<X509>,
    identity: Arc<Identity>,
    client_mesh: Option<ClientMesh>,
    params: Option<&TlsParams>,
) -> Result<TlsAcceptor, TlsError> {
    let verify_mesh = client_mesh.clone();
    let params = params.cloned();
    let build = move |leaf: &CertifiedKey| -> Result<SslContext, TlsError> {
        let what = "mesh server TLS context";
        let mut b = context_builder(what)?;
        versions(&mut b, params.as_ref(), tls12_and_13, what)?;
        let mode = SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT;
        match verify_mesh.clone() {
            Some(mesh) => b.set_verify_callback(mode, move |ok, ctx| mesh.admits(ok, ctx)),
            None => b.set_verify(mode),
        }
        b.set_cert_store(store_of(&roots)?);
        leaf.install(&mut b).map_err(ssl_err(what))?;
        select_alpn(&mut b, alpn_wire(&[KUMA_ALPN])?);
        b.set_servername_callback(check_sni);
        // No resumption (no TLS 1.3 or 1.2 tickets: BoringSSL's NO_TICKET covers both; no
        // cache): a renewed identity or a new CA is then never bypassed by a resumed session.
        b.set_options(SslOptions::NO_TICKET);
        b.set_session_cache_mode(SslSessionCacheMode::OFF);
        Ok(b.build())
    };
    TlsAcceptor::for_identity(identity, Box::new(build), client_mesh)
}

fn tls13_only(b: &mut SslContextBuilder, what: &'static str) -> Result<(), TlsError> {
    b.set_min_proto_version(Some(SslVersion::TLS1_3))
        .and_then(|()| b.set_max_proto_version(Some(SslVersion::TLS1_3)))
        .map_err(ssl_err(what))
}

/// TLS 1.2 and 1.3, for TLS with peers outside the mesh.
pub(crate) fn tls12_and_13(b: &mut SslContextBuilder, what: &'static str) -> Result<(), TlsError> {
    b.set_min_proto_version(Some(SslVersion::TLS1_2))
        .and_then(|()| b.set_max_proto_version(Some(SslVersion::TLS1_3)))
        .map_err(ssl_err(what))
}

/// The versions and lists of a context: `params` when given (kuma-cp's MeshTLS, as Envoy sets
/// them), else the context's own versions (`own`) and BoringSSL's lists.
pub(crate) fn versions(
    b: &mut SslContextBuilder,
    params: Option<&TlsParams>,
    own: fn(&mut SslContextBuilder, &'static str) -> Result<(), TlsError>,
    what: &'static str,
) -> Result<(), TlsError> {
    match params {
        Some(params) => params::apply(b, params, what),
        None => own(b, what),
    }
}

/// The client side of mesh mTLS (outbound) towards one destination whose SPIFFE id is
/// `expected` (e.g. `spiffe://default/backend`): TLS 1.3, ALPN `kuma`, the identity's current
/// certificate as client certificate, and the server accepted only if its chain leads to the
/// mesh CA and one of its URI SANs equals `expected`. Give it the SNI with
/// [`TlsConnector::with_sni`]. Connectors to many destinations share one context when made
/// from one [`mesh_client`] ([`MeshClient::expecting`] takes several ids).
pub fn mesh_connector(
    ca: &MeshCa,
    identity: Arc<Identity>,
    expected: &str,
    params: Option<&TlsParams>,
) -> Result<TlsConnector, TlsError> {
    mesh_client(ca, identity, params)?.expecting(&[SpiffeMatcher::Exact(expected.into())])
}

/// The client side of mesh mTLS for `identity` under mesh CA `ca`, before a destination is
/// named: one TLS context (rebuilt when the leaf renews) that the connectors to every
/// destination share, each checking its own SPIFFE id per connection. A mesh proxy with 10k
/// destinations builds one context, not 10k.
pub fn mesh_client(
    ca: &MeshCa,
    identity: Arc<Identity>,
    params: Option<&TlsParams>,
) -> Result<MeshClient, TlsError> {
    client_contexts(mesh_roots(ca)?, identity, params)
}

/// The client side of mesh mTLS towards a cross-mesh gateway of another mesh: this proxy's
/// identity as client certificate, and the server accepted only if it chains to that mesh's
/// CA (`server_ca_pem`) and carries an id `expected` accepts.
pub fn cross_mesh_connector(
    server_ca_pem: &str,
    identity: Arc<Identity>,
    expected: &[SpiffeMatcher],
    params: Option<&TlsParams>,
) -> Result<TlsConnector, TlsError> {
    let roots = ca_certs(&[server_ca_pem], "mesh CA certificate PEM")?;
    client_contexts(roots, identity, params)?.expecting(expected)
}

/// Mesh mTLS client contexts not yet bound to a destination: [`MeshClient::expecting`] makes
/// the connector towards one. No connection can be made without naming the server's
/// identity.
pub struct MeshClient(TlsConnector, Option<Arc<SpiffeTrust>>);

impl MeshClient {
    /// The connector that accepts only a server presenting a SPIFFE id one of `expected`
    /// accepts (any URI SAN of its certificate matching any of them, as Envoy's
    /// `match_typed_subject_alt_names`), sharing this client's contexts. Under a SPIFFE trust,
    /// the chain must also end in the bundle of the trust domain of an id so matched.
    pub fn expecting(&self, expected: &[SpiffeMatcher]) -> Result<TlsConnector, TlsError> {
        if expected.is_empty() {
            return Err(TlsError::Invalid {
                field: "expected SPIFFE id",
                reason: "none given: a mesh server is accepted only by its identity".into(),
            });
        }
        if let Some(bad) = expected
            .iter()
            .find(|m| !m.value().starts_with("spiffe://"))
        {
            return Err(TlsError::Invalid {
                field: "expected SPIFFE id",
                reason: format!("{:?} does not start with spiffe://", bad.value()),
            });
        }
        Ok(self
            .0
            .checking(ServerCheck::Spiffe(expected.into(), self.1.clone())))
    }
}

/// Mesh client contexts trusting `roots` and presenting `identity`; the server's SPIFFE id is
/// checked per connection (`ServerCheck::Spiffe`).
fn client_contexts(
    roots: Vec<X509>,
    identity: Arc<Identity>,
    params: Option<&TlsParams>,
) -> Result<MeshClient, TlsError> {
    let params = params.cloned();
    let build = move |leaf: &CertifiedKey| -> Result<SslContext, TlsError> {
        let what = "mesh client TLS context";
        let mut b = context_builder(what)?;
        versions(&mut b, params.as_ref(), tls13_only, what)?;
        b.set_cert_store(store_of(&roots)?);
        b.set_verify(SslVerifyMode::PEER);
        leaf.install(&mut b).map_err(ssl_err(what))?;
        b.set_alpn_protos(&alpn_wire(&[KUMA_ALPN])?)
            .map_err(ssl_err(what))?;
        Ok(b.build())
    };
    let contexts = TlsConnector::for_identity(identity, Box::new(build), ServerCheck::None)?;
    Ok(MeshClient(contexts, None))
}

/// Checks that `certs` (leaf first, then intermediates) chain to `ca` and are valid now, as a
/// mesh server checks a client certificate.
pub(crate) fn verify_leaf(ca: &MeshCa, certs: &[CertificateDer<'static>]) -> Result<(), TlsError> {
    let what = "identity certificate against the mesh CA";
    let Some((leaf, intermediates)) = certs.split_first() else {
        return Err(TlsError::Invalid {
            field: "identity",
            reason: "no certificate".into(),
        });
    };
    let leaf = X509::from_der(leaf).map_err(ssl_err(what))?;
    let mut chain = boring::stack::Stack::new().map_err(ssl_err(what))?;
    for cert in intermediates {
        chain
            .push(X509::from_der(cert).map_err(ssl_err(what))?)
            .map_err(ssl_err(what))?;
    }
    let store = store_of(&mesh_roots(ca)?)?;
    let mut ctx = X509StoreContext::new().map_err(ssl_err(what))?;
    let verdict = ctx
        .init(&store, &leaf, &chain, |c| {
            let verified = c.verify_cert()?;
            Ok(c.verify_result()
                .and_then(|()| verified.then_some(()).ok_or(X509VerifyError::UNSPECIFIED)))
        })
        .map_err(ssl_err(what))?;
    verdict.map_err(|error| TlsError::Certificate {
        what,
        reason: error.error_string().to_string(),
    })
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

/// The client side of TLS to an external service named `server_name` (sent as SNI unless it
/// is an IP address): trusts `ca_pem` (all certificates in it), or the system roots when none
/// is given; presents `client_cert_and_key_pem` (chain PEM, key PEM) if given; checks the
/// server as `verification` says; TLS 1.2 and 1.3 (or `params`); offers `alpn`.
pub fn external_connector(
    server_name: &str,
    ca_pem: Option<&str>,
    client_cert_and_key_pem: Option<(&str, &str)>,
    verification: ServerVerification,
    alpn: &[&[u8]],
    params: Option<&TlsParams>,
) -> Result<TlsConnector, TlsError> {
    let what = "external TLS context";
    let mut b = context_builder(what)?;
    versions(&mut b, params, tls12_and_13, what)?;
    let check = match verification {
        ServerVerification::Secured => ServerCheck::Name(server_name.into()),
        ServerVerification::SkipSan | ServerVerification::SkipAll => ServerCheck::None,
    };
    match verification {
        ServerVerification::SkipAll => b.set_verify(SslVerifyMode::NONE),
        ServerVerification::Secured | ServerVerification::SkipSan => {
            b.set_verify(SslVerifyMode::PEER);
            match ca_pem {
                Some(pem) => {
                    b.set_cert_store(store_of(&ca_certs(&[pem], "external service CA PEM")?)?)
                }
                None => b
                    .set_default_verify_paths()
                    .map_err(ssl_err("system root certificates"))?,
            }
        }
    }
    if let Some((cert_pem, key_pem)) = client_cert_and_key_pem {
        let pair = CertifiedKey::from_pem(
            cert_pem,
            key_pem,
            "client certificate PEM",
            "client private key PEM",
            "client certificate and key",
        )?;
        pair.install(&mut b)
            .map_err(ssl_err("client certificate and key"))?;
    }
    if !alpn.is_empty() {
        b.set_alpn_protos(&alpn_wire(alpn)?)
            .map_err(ssl_err(what))?;
    }
    TlsConnector::fixed(b.build(), check).with_sni(server_name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Negotiated as _, TlsStream};
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

    const HOUR: Duration = Duration::from_secs(3600);
    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);

    type Outcome = Result<TlsStream<DuplexStream>, TlsError>;

    fn identity(ca: &Arc<MeshCa>, service: &str) -> Arc<Identity> {
        Identity::new(ca.clone(), "default", &[service.to_string()], HOUR).unwrap()
    }

    /// One exact SPIFFE id to expect.
    fn exact(id: &str) -> [SpiffeMatcher; 1] {
        [SpiffeMatcher::Exact(id.into())]
    }

    /// Runs both sides of a handshake over an in-memory pipe.
    pub(crate) async fn handshake(
        server: &TlsAcceptor,
        client: &TlsConnector,
    ) -> (Outcome, Outcome) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        tokio::join!(
            server.accept(a, "inbound", PEER),
            client.connect(b, "backend", PEER)
        )
    }

    pub(crate) async fn ping(
        server: &mut TlsStream<DuplexStream>,
        client: &mut TlsStream<DuplexStream>,
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

    fn peer_serial(stream: &TlsStream<DuplexStream>) -> Vec<u8> {
        let cert = stream.ssl().peer_certificate().unwrap();
        cert.serial_number().to_bn().unwrap().to_vec()
    }

    fn serial(der: &CertificateDer<'_>) -> Vec<u8> {
        let cert = X509::from_der(der).unwrap();
        cert.serial_number().to_bn().unwrap().to_vec()
    }

    #[tokio::test]
    async fn mesh_mtls_checks_spiffe_identity_both_ways() {
        let ca = Arc::new(MeshCa::generate("default").unwrap());
        let server = mesh_acceptor(&ca, identity(&ca, "backend"), None).unwrap();
        let web = identity(&ca, "web");
        // The SNI is a Kuma-style name that matches no DNS SAN: only the SPIFFE id counts.
        let client = mesh_connector(&ca, web.clone(), "spiffe://default/backend", None)
            .unwrap()
            .with_sni("a601e0c00295a9fbe.backend.80.default.ms")
            .unwrap();
        let (s, c) = handshake(&server, &client).await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        assert_eq!(s.alpn_protocol(), Some(KUMA_ALPN));
        assert_eq!(s.protocol_version(), "TLSv1.3");
        assert_eq!(s.peer_spiffe_ids(), ["spiffe://default/web"]);
        assert_eq!(c.peer_spiffe_ids(), ["spiffe://default/backend"]);
        ping(&mut s, &mut c).await;

        let wrong = mesh_connector(&ca, web, "spiffe://default/other", None).unwrap();
        let (_, c) = handshake(&server, &wrong).await;
        let err = c.unwrap_err().to_string();
        assert!(
            err.contains("expected URI SAN spiffe://default/other")
                && err.contains("[\"spiffe://default/backend\"]")
                && err.contains("cluster backend")
                && err.contains("127.0.0.1:1"),
            "{err}"
        );
    }

    /// The connectors one mesh client makes towards different destinations share its
    /// context, and each still checks its own destination's SPIFFE id: the one expecting
    /// `backend` completes the handshake, the one expecting `db`, made after it from the
    /// same client, is refused by the same server, and `backend`'s works again after that.
    #[tokio::test]
    async fn connectors_of_one_mesh_client_check_each_their_own_identity() {
        let ca = Arc::new(MeshCa::generate("default").unwrap());
        let server = mesh_acceptor(&ca, identity(&ca, "backend"), None).unwrap();
        let client = mesh_client(&ca, identity(&ca, "web"), None).unwrap();
        let backend = client
            .expecting(&exact("spiffe://default/backend"))
            .unwrap();
        let db = client.expecting(&exact("spiffe://default/db")).unwrap();
        assert!(backend.shares_contexts(&db), "one shared context");
        let (_, c) = handshake(&server, &backend).await;
        assert_eq!(c.unwrap().peer_spiffe_ids(), ["spiffe://default/backend"]);
        let (_, c) = handshake(&server, &db).await;
        let err = c.unwrap_err().to_string();
        assert!(
            err.contains("expected URI SAN spiffe://default/db"),
            "{err}"
        );
        let (_, c) = handshake(&server, &backend).await;
        assert!(
            c.is_ok(),
            "the other connector's check did not stay on the context"
        );
        assert!(
            client.expecting(&exact("backend")).is_err(),
            "not a SPIFFE id"
        );
        assert!(client.expecting(&[]).is_err(), "no id at all");
    }

    /// A connector expecting several ids accepts a server presenting any of them, as Envoy's
    /// `match_typed_subject_alt_names` (kuma-cp's MeshIdentity clusters list the workload's
    /// id and the legacy one): the first listed, the second, or one under a listed prefix;
    /// a server with none of them is refused, the error naming the cluster, every id
    /// expected and the ids presented.
    #[tokio::test]
    async fn a_server_presenting_any_listed_id_is_accepted_and_no_other() {
        let ca = Arc::new(MeshCa::generate("default").unwrap());
        let client = mesh_client(&ca, identity(&ca, "web"), None).unwrap();
        let expected = [
            SpiffeMatcher::Exact("spiffe://default.zone-1.mesh.local/workload/backend".into()),
            SpiffeMatcher::Exact("spiffe://default/backend".into()),
            SpiffeMatcher::Prefix("spiffe://default/backend-v".into()),
        ];
        let connector = client.expecting(&expected).unwrap();
        for service in ["backend", "backend-v2"] {
            let server = mesh_acceptor(&ca, identity(&ca, service), None).unwrap();
            let (_, c) = handshake(&server, &connector).await;
            let id = format!("spiffe://default/{service}");
            assert_eq!(c.expect(&id).peer_spiffe_ids(), [id.as_str()]);
        }
        let first = client.expecting(&expected[1..2]).unwrap();
        let server = mesh_acceptor(&ca, identity(&ca, "backend"), None).unwrap();
        assert!(handshake(&server, &first).await.1.is_ok(), "the only id");
        let third = mesh_acceptor(&ca, identity(&ca, "db"), None).unwrap();
        let (_, c) = handshake(&third, &connector).await;
        let err = c.unwrap_err().to_string();
        assert!(
            err.contains("cluster backend")
                && err.contains("expected URI SAN spiffe://default.zone-1.mesh.local/workload/backend or spiffe://default/backend or spiffe://default/backend-v*")
                && err.contains("[\"spiffe://default/db\"]"),
            "{err}"
        );
    }

    /// A mesh server admits a client of its CA only with a SPIFFE id of its own mesh (Kuma's
    /// `prefix: spiffe://<mesh>/`): another mesh sharing the CA is refused in the handshake,
    /// with the ids it presented named, and the prefix stops at the mesh name's end.
    #[tokio::test]
    async fn mesh_server_refuses_clients_of_another_mesh_sharing_its_ca() {
        let ca = Arc::new(MeshCa::generate("default").unwrap());
        let server = mesh_acceptor(&ca, identity(&ca, "backend"), None).unwrap();
        let client = |mesh: &str| {
            let id = Identity::new(ca.clone(), mesh, &["web".to_string()], HOUR).unwrap();
            mesh_connector(&ca, id, "spiffe://default/backend", None).unwrap()
        };
        for mesh in ["other", "default-2", "defaul"] {
            let (s, c) = handshake(&server, &client(mesh)).await;
            let err = s
                .err()
                .unwrap_or_else(|| panic!("{mesh}: admitted"))
                .to_string();
            let presented = format!("[\"spiffe://{mesh}/web\"]");
            assert!(
                err.contains("listener inbound")
                    && err.contains("127.0.0.1:1")
                    && err.contains("not of mesh default")
                    && err.contains(&presented),
                "{mesh}: {err}"
            );
            // TLS 1.3: the client learns it from the server's alert on its first read.
            if let Ok(mut c) = c {
                let mut buf = [0; 1];
                assert!(
                    !matches!(c.read(&mut buf).await, Ok(1..)),
                    "{mesh}: data after refusal"
                );
            }
        }
        let (s, c) = handshake(&server, &client("default")).await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        assert_eq!(s.peer_spiffe_ids(), ["spiffe://default/web"]);
        ping(&mut s, &mut c).await;
    }

    /// A MeshIdentity's leaf `spiffe://<trust domain>/<name>` issued by `ca` (chain and key
    /// PEM), loaded as kuma-cp's SDS identity is.
    fn spiffe_identity(ca: &Arc<MeshCa>, domain: &str, name: &str) -> Arc<Identity> {
        let pem = crate::issue_leaf_pem(ca, domain, &[name.to_string()], HOUR).unwrap();
        Identity::pre_issued(
            ca.clone(),
            "default",
            &[],
            &pem,
            crate::Renewer::ControlPlane,
        )
        .unwrap()
    }

    /// Envoy's SPIFFE validator as Kuma's MeshTrust configures it: a peer is trusted when its
    /// SPIFFE id's trust domain has a bundle and its chain ends in that bundle. A client of
    /// the listener's trust domain is admitted; one of another known trust domain is refused
    /// by the prefix; one claiming the listener's trust domain with a certificate of another
    /// domain's CA is refused though its chain verifies; one of an unknown CA is refused. The
    /// client side checks the server the same way.
    #[tokio::test]
    async fn spiffe_trust_admits_a_peer_only_by_its_own_trust_domains_bundle() {
        let (ca_a, ca_b, ca_c) = (
            Arc::new(MeshCa::generate("a").unwrap()),
            Arc::new(MeshCa::generate("b").unwrap()),
            Arc::new(MeshCa::generate("c").unwrap()),
        );
        let bundles = std::collections::BTreeMap::from([
            ("td-a".to_string(), ca_a.cert_pem().to_string()),
            ("td-b".to_string(), ca_b.cert_pem().to_string()),
        ]);
        let trust = Arc::new(SpiffeTrust::from_pems(&bundles).unwrap());
        let server_id = spiffe_identity(&ca_a, "td-a", "backend");
        let server = spiffe_acceptor(trust.clone(), server_id, "spiffe://td-a/", None).unwrap();
        let client = |ca: &Arc<MeshCa>, domain: &str| {
            spiffe_client(trust.clone(), spiffe_identity(ca, domain, "web"), None)
                .unwrap()
                .expecting(&exact("spiffe://td-a/backend"))
                .unwrap()
        };
        let (s, c) = handshake(&server, &client(&ca_a, "td-a")).await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        assert_eq!(s.peer_spiffe_ids(), ["spiffe://td-a/web"]);
        ping(&mut s, &mut c).await;
        for (ca, domain, why) in [
            (&ca_b, "td-b", "another trust domain"),
            (&ca_b, "td-a", "td-a's id from td-b's CA"),
            (&ca_c, "td-a", "an unknown CA"),
        ] {
            let (s, _) = handshake(&server, &client(ca, domain)).await;
            let err = s
                .err()
                .unwrap_or_else(|| panic!("{why}: admitted"))
                .to_string();
            assert!(err.contains("listener inbound"), "{why}: {err}");
        }
        let (s, _) = handshake(&server, &client(&ca_b, "td-a")).await;
        let err = s.unwrap_err().to_string();
        assert!(
            err.contains("not trusted") && err.contains("spiffe://td-a/"),
            "{err}"
        );
        // The server presenting td-a's id from td-b's CA is refused by the client.
        let forged = spiffe_acceptor(
            trust.clone(),
            spiffe_identity(&ca_b, "td-a", "backend"),
            "spiffe://td-a/",
            None,
        )
        .unwrap();
        let (_, c) = handshake(&forged, &client(&ca_a, "td-a")).await;
        assert!(c.is_err(), "a server of the wrong bundle accepted");
    }

    #[tokio::test]
    async fn cross_mesh_gateway_trusts_other_meshes_and_is_checked_by_its_own_ca() {
        let gw_ca = Arc::new(MeshCa::generate("default").unwrap());
        let other_ca = Arc::new(MeshCa::generate("other").unwrap());
        let stranger_ca = Arc::new(MeshCa::generate("stranger").unwrap());
        let gateway = identity(&gw_ca, "cross-mesh-gateway");
        let server =
            cross_mesh_acceptor(&[gw_ca.cert_pem(), other_ca.cert_pem()], gateway, None).unwrap();
        let expected = &exact("spiffe://default/cross-mesh-gateway");
        let client = |ca: &Arc<MeshCa>| {
            let id = Identity::new(ca.clone(), "other", &["web".to_string()], HOUR).unwrap();
            cross_mesh_connector(gw_ca.cert_pem(), id, expected, None).unwrap()
        };
        let (s, c) = handshake(&server, &client(&other_ca)).await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        ping(&mut s, &mut c).await;
        // A mesh the gateway does not know is refused.
        let (s, _) = handshake(&server, &client(&stranger_ca)).await;
        assert!(s.is_err());
        // The client insists on the gateway mesh's CA and identity.
        let wrong = cross_mesh_connector(
            other_ca.cert_pem(),
            identity(&other_ca, "web"),
            expected,
            None,
        )
        .unwrap();
        let (_, c) = handshake(&server, &wrong).await;
        assert!(c.is_err());
    }

    #[tokio::test]
    async fn server_accepts_clients_without_alpn() {
        let ca = Arc::new(MeshCa::generate("default").unwrap());
        let server = mesh_acceptor(&ca, identity(&ca, "backend"), None).unwrap();
        let pair = issue_leaf_pem_pair(&ca, "web");
        let client = external_connector(
            "backend",
            Some(ca.cert_pem()),
            Some((&pair.0, &pair.1)),
            ServerVerification::SkipSan,
            &[],
            None,
        )
        .unwrap();
        let (s, c) = handshake(&server, &client).await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        assert_eq!(s.alpn_protocol(), None);
        ping(&mut s, &mut c).await;
    }

    /// A leaf for `service` as (certificate chain PEM, key PEM).
    fn issue_leaf_pem_pair(ca: &MeshCa, service: &str) -> (String, String) {
        let pem = crate::issue_leaf_pem(ca, "default", &[service.to_string()], HOUR).unwrap();
        let key_at = pem.find("-----BEGIN PRIVATE KEY-----").unwrap();
        (pem[..key_at].to_string(), pem[key_at..].to_string())
    }

    #[tokio::test]
    async fn server_refuses_client_without_certificate() {
        let ca = Arc::new(MeshCa::generate("default").unwrap());
        let server = mesh_acceptor(&ca, identity(&ca, "backend"), None).unwrap();
        let client = external_connector(
            "backend",
            Some(ca.cert_pem()),
            None,
            ServerVerification::SkipSan,
            &[KUMA_ALPN],
            None,
        )
        .unwrap();
        let (s, _) = handshake(&server, &client).await;
        let err = s.unwrap_err().to_string();
        assert!(
            err.to_lowercase()
                .replace('_', " ")
                .contains("peer did not return a certificate")
                && err.contains("listener inbound"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn server_refuses_client_certificate_from_another_ca() {
        let ca = Arc::new(MeshCa::generate("default").unwrap());
        let other_ca = Arc::new(MeshCa::generate("default").unwrap());
        let server = mesh_acceptor(&ca, identity(&ca, "backend"), None).unwrap();
        let client = mesh_connector(
            &ca,
            identity(&other_ca, "web"),
            "spiffe://default/backend",
            None,
        )
        .unwrap();
        let (s, _) = handshake(&server, &client).await;
        let err = s.unwrap_err().to_string();
        // The client's chain ends in its own CA, which the mesh does not trust.
        assert!(
            err.replace('-', " ").contains(
                "certificate verify failed: self signed certificate in certificate chain"
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn renewal_reaches_new_handshakes_and_keeps_old_sessions() {
        let ca = Arc::new(MeshCa::generate("default").unwrap());
        let backend = identity(&ca, "backend");
        let server = mesh_acceptor(&ca, backend.clone(), None).unwrap();
        let client =
            mesh_connector(&ca, identity(&ca, "web"), "spiffe://default/backend", None).unwrap();
        let (s, c) = handshake(&server, &client).await;
        let (mut s1, mut c1) = (s.unwrap(), c.unwrap());
        let first = peer_serial(&c1);

        backend.renew().unwrap();
        ping(&mut s1, &mut c1).await;
        let (s, c) = handshake(&server, &client).await;
        let (mut s2, mut c2) = (s.unwrap(), c.unwrap());
        let second = peer_serial(&c2);
        assert_ne!(first, second);
        assert_eq!(second, serial(&backend.current().cert[0]));
        ping(&mut s2, &mut c2).await;
        ping(&mut s1, &mut c1).await;
    }

    /// A server with a certificate for `other.example` from a CA that is not a mesh CA.
    fn external_server() -> (String, TlsAcceptor) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "external CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::new(vec!["other.example".to_string()]).unwrap();
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "other.example");
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let key = crate::certified_key(&cert.pem(), &key.serialize_pem()).unwrap();
        let server = crate::gateway_acceptor(&[key], |_| Some(0), &[b"h2"], None).unwrap();
        (ca_cert.pem(), server)
    }

    #[tokio::test]
    async fn external_secured_checks_the_name_skip_san_does_not() {
        let (ca_pem, server) = external_server();
        let connector = |name: &str, ca: Option<&str>, verification| {
            external_connector(name, ca, None, verification, &[b"h2"], None).unwrap()
        };
        let secured = connector(
            "service.example",
            Some(&ca_pem),
            ServerVerification::Secured,
        );
        let (_, c) = handshake(&server, &secured).await;
        let err = c.unwrap_err().to_string();
        assert!(err.to_lowercase().contains("hostname mismatch"), "{err}");
        let secured = connector("other.example", Some(&ca_pem), ServerVerification::Secured);
        let (s, c) = handshake(&server, &secured).await;
        let (s, c) = (s.unwrap(), c.unwrap());
        assert_eq!(s.server_name(), Some("other.example"));
        assert_eq!(c.alpn_protocol(), Some(&b"h2"[..]));

        let skip_san = connector(
            "service.example",
            Some(&ca_pem),
            ServerVerification::SkipSan,
        );
        let (s, c) = handshake(&server, &skip_san).await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        ping(&mut s, &mut c).await;

        // SkipSan still checks the chain: the mesh CA does not vouch for this server.
        let mesh_ca = MeshCa::generate("default").unwrap();
        let wrong_ca = connector(
            "other.example",
            Some(mesh_ca.cert_pem()),
            ServerVerification::SkipSan,
        );
        let (_, c) = handshake(&server, &wrong_ca).await;
        let err = c.unwrap_err().to_string();
        assert!(err.contains("certificate verify failed"), "{err}");

        let skip_all = connector("service.example", None, ServerVerification::SkipAll);
        let (s, c) = handshake(&server, &skip_all).await;
        assert!(s.is_ok() && c.is_ok());
    }

    #[test]
    fn external_config_names_bad_pem_and_rejects_bad_expected_id() {
        let err = external_connector(
            "x",
            Some("nope"),
            None,
            ServerVerification::Secured,
            &[],
            None,
        )
        .err()
        .unwrap();
        assert!(
            err.to_string().starts_with("external service CA PEM:"),
            "{err}"
        );
        let ca = Arc::new(MeshCa::generate("default").unwrap());
        let err = mesh_connector(&ca, identity(&ca, "web"), "backend", None)
            .err()
            .unwrap();
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
        assert!(external_connector(
            "x",
            Some(ca.cert_pem()),
            pair,
            ServerVerification::Secured,
            &[],
            None
        )
        .is_ok());
        let bad_key = Some((ca.cert_pem(), ca.cert_pem()));
        let err = external_connector("x", None, bad_key, ServerVerification::SkipAll, &[], None)
            .err()
            .unwrap();
        assert!(
            err.to_string().starts_with("client private key PEM:"),
            "{err}"
        );
        let no_cert = Some(("", ca.key_pem().unwrap()));
        let err = external_connector("x", None, no_cert, ServerVerification::SkipAll, &[], None)
            .err()
            .unwrap();
        assert!(
            err.to_string().starts_with("client certificate PEM:"),
            "{err}"
        );
    }

    /// A client offering TLS 1.2 at most (an Envoy sidecar's upstream default, which Kuma does
    /// not change) is served TLS 1.2 with the same checks; Bearing's own client gets TLS 1.3.
    #[tokio::test]
    async fn mesh_server_serves_tls12_clients_as_envoy_sidecars_call() {
        let ca = Arc::new(MeshCa::generate("default").unwrap());
        let server = mesh_acceptor(&ca, identity(&ca, "backend"), None).unwrap();
        let tls12_client = |with_cert: bool| {
            let mut b = SslContextBuilder::new(boring::ssl::SslMethod::tls()).unwrap();
            b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
            b.set_verify(SslVerifyMode::NONE);
            b.set_alpn_protos(b"\x04kuma").unwrap();
            if with_cert {
                identity(&ca, "web").current().install(&mut b).unwrap();
            }
            TlsConnector::fixed(b.build(), ServerCheck::None)
                .with_sni("backend{mesh=default}")
                .unwrap()
        };
        let (s, c) = handshake(&server, &tls12_client(true)).await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        assert_eq!(s.protocol_version(), "TLSv1.2");
        assert_eq!(s.alpn_protocol(), Some(KUMA_ALPN));
        assert_eq!(s.server_name(), Some("backend{mesh=default}"));
        assert_eq!(s.peer_spiffe_ids(), ["spiffe://default/web"]);
        ping(&mut s, &mut c).await;
        let (s, _) = handshake(&server, &tls12_client(false)).await;
        assert!(s.is_err(), "TLS 1.2 without a client certificate");
    }

    /// TLS parameters (kuma-cp's MeshTLS) replace a context's own versions and lists: a mesh
    /// server of TLS 1.3 only refuses the client of TLS 1.2 at most and serves the mesh's
    /// own client; a mesh client of TLS 1.2 at most, whose one cipher then decides, speaks
    /// TLS 1.2 to the mesh's own server with that cipher (an ECDSA leaf) and fails against
    /// the TLS 1.3 server.
    #[tokio::test]
    async fn tls_params_replace_versions_and_ciphers_of_mesh_contexts() {
        use bearing_proxy_config::TlsVersion;
        let params = |min, max, ciphers: &str| TlsParams {
            min_version: min,
            max_version: max,
            cipher_suites: ciphers.into(),
            ecdh_curves: "X25519:P-256".into(),
        };
        let cipher = "ECDHE-ECDSA-AES256-GCM-SHA384";
        let only13 = params(TlsVersion::V1_3, TlsVersion::V1_3, cipher);
        let upto12 = params(TlsVersion::V1_2, TlsVersion::V1_2, cipher);
        let ca = Arc::new(MeshCa::generate("default").unwrap());
        let backend = identity(&ca, "backend");
        let web = identity(&ca, "web");
        let strict = mesh_acceptor(&ca, backend.clone(), Some(&only13)).unwrap();
        let own_server = mesh_acceptor(&ca, backend, None).unwrap();
        let expected = exact("spiffe://default/backend");
        let client = |p: Option<&TlsParams>| {
            mesh_client(&ca, web.clone(), p)
                .unwrap()
                .expecting(&expected)
                .unwrap()
                .with_sni("backend{mesh=default}")
                .unwrap()
        };

        let (s, c) = handshake(&strict, &client(None)).await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        assert_eq!(s.protocol_version(), "TLSv1.3");
        ping(&mut s, &mut c).await;
        let (s, c) = handshake(&strict, &client(Some(&upto12))).await;
        assert!(
            s.is_err() && c.is_err(),
            "TLS 1.2 client against TLS 1.3 only"
        );

        let (s, c) = handshake(&own_server, &client(Some(&upto12))).await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        assert_eq!(c.protocol_version(), "TLSv1.2");
        assert_eq!(
            c.ssl().current_cipher().map(|c| c.name()),
            Some("ECDHE-ECDSA-AES256-GCM-SHA384")
        );
        ping(&mut s, &mut c).await;

        // Every other context takes them too: TLS to an external service, a gateway's.
        let (_, server) = external_server();
        let tls13_only_gateway = {
            let (cert, key) = issue_leaf_pem_pair(&ca, "gw");
            let key = crate::certified_key(&cert, &key).unwrap();
            crate::gateway_acceptor(&[key], |_| Some(0), &[], Some(&only13)).unwrap()
        };
        let external = |p: Option<&TlsParams>| {
            let skip = ServerVerification::SkipAll;
            external_connector("backend.example.com", None, None, skip, &[], p).unwrap()
        };
        let (s, c) = handshake(&server, &external(Some(&upto12))).await;
        assert_eq!(c.unwrap().protocol_version(), "TLSv1.2");
        drop(s);
        let (s, _) = handshake(&tls13_only_gateway, &external(Some(&upto12))).await;
        assert!(s.is_err(), "TLS 1.2 client against a TLS 1.3 only gateway");
        let (s, _) = handshake(&tls13_only_gateway, &external(None)).await;
        assert_eq!(s.unwrap().protocol_version(), "TLSv1.3");
    }

    /// Waits until `wanted` was in `times` lines of `events`, then gives `events` back.
    fn wait_for(
        events: std::sync::mpsc::Receiver<String>,
        wanted: &str,
        times: usize,
    ) -> std::sync::mpsc::Receiver<String> {
        let mut seen = 0;
        while seen < times {
            let line = events
                .recv_timeout(std::time::Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("s_server printed {wanted:?} {seen} times of {times}"));
            seen += usize::from(line.contains(wanted));
        }
        events
    }

    /// An `openssl s_server` (TLS 1.2) that renegotiates once a client is connected, then
    /// sends `after\n`: a connector that allows renegotiation follows it and reads the line;
    /// one that does not (BoringSSL's default) loses the connection at the HelloRequest.
    #[tokio::test]
    async fn renegotiation_by_the_server_is_followed_only_when_allowed() {
        for allowed in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["renegotiating.example".into()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
            std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut server = std::process::Command::new("openssl")
                .args(["s_server", "-tls1_2", "-state", "-naccept", "1"])
                .args(["-accept", &format!("127.0.0.1:{port}")])
                .args(["-cert", "cert.pem", "-key", "key.pem"])
                .current_dir(dir.path())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("openssl s_server runs");
            let mut commands = server.stdin.take().unwrap();
            // Lines of both outputs: "ACCEPT" when listening, a "write finished" state at the
            // end of each handshake the server completes.
            let (lines, events) = std::sync::mpsc::channel::<String>();
            for out in [
                Box::new(server.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
                Box::new(server.stderr.take().unwrap()),
            ] {
                let lines = lines.clone();
                std::thread::spawn(move || {
                    use std::io::BufRead as _;
                    for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                        let _ = lines.send(line);
                    }
                });
            }
            let events = tokio::task::spawn_blocking(move || wait_for(events, "ACCEPT", 1))
                .await
                .unwrap();
            let mut connector = external_connector(
                "renegotiating.example",
                None,
                None,
                ServerVerification::SkipAll,
                &[],
                None,
            )
            .unwrap();
            if allowed {
                connector = connector.allowing_renegotiation();
            }
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let peer = tcp.peer_addr().unwrap();
            let mut client = connector.connect(tcp, "external", peer).await.unwrap();
            use std::io::Write as _;
            commands.write_all(b"r\n").unwrap();
            let read = tokio::spawn(async move {
                let mut line = [0u8; 6];
                client.read_exact(&mut line).await.map(|_| line)
            });
            if allowed {
                // The first handshake and the renegotiation, before any data is sent.
                let finished = move || wait_for(events, "write finished", 2);
                tokio::task::spawn_blocking(finished).await.unwrap();
                commands.write_all(b"after\n").unwrap();
            }
            let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), read)
                .await
                .expect("the client's read ends")
                .unwrap();
            let _ = server.kill();
            let _ = server.wait();
            match (allowed, outcome) {
                (true, Ok(line)) => assert_eq!(&line, b"after\n"),
                (false, Err(e)) => {
                    let e = e.to_string().to_uppercase();
                    assert!(e.contains("RENEGOTIATION"), "{e}");
                }
                (allowed, outcome) => panic!("allowed {allowed}: {outcome:?}"),
            }
        }
    }
}

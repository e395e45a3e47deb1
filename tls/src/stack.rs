//! The TLS stack behind Bearing's own types: BoringSSL (Envoy's stack, built from the sources
//! vendored in `boring-sys`) through the `boring` and `tokio-boring` crates.
//!
//! Why BoringSSL: Kuma's SNI forms (`backend{mesh=default}`, `sni.msvc.default.east.backend.80`)
//! are not DNS names, and Bearing must both send them byte for byte and accept them; BoringSSL
//! does both (it refuses only what RFC 6066 and its own limits refuse: a NUL byte, more than
//! 255 bytes), as Envoy's sidecars show. Measured against OpenSSL 3.0 (benches/README.md, "TLS
//! stacks for mesh mTLS"), it costs less than half the CPU per handshake. Every BoringSSL type
//! stays inside this crate (this module and the context builders of `config.rs`/`gateway.rs`):
//! the rest of Bearing sees [`TlsAcceptor`], [`TlsConnector`], [`TlsStream`] and
//! [`Negotiated`].

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use boring::error::ErrorStack;
use boring::ex_data::Index;
use boring::pkey::{PKey, Private};
use boring::ssl::{
    NameType, SniError, Ssl, SslAlert, SslContext, SslContextBuilder, SslMethod, SslRef,
    SslVerifyMode,
};
use boring::x509::{X509Ref, X509StoreContext, X509StoreContextRef, X509VerifyError, X509};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_boring::{HandshakeError, SslStreamBuilder};

use bearing_proxy_config::SpiffeMatcher;

use crate::spiffe::SpiffeTrust;
use crate::{Identity, TlsError};

/// A TLS connection over `S`, server or client side.
pub type TlsStream<S> = tokio_boring::SslStream<S>;

/// Time a peer has to complete a handshake a [`TlsAcceptor`] runs.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest SNI host name accepted or sent (RFC 6066 bounds it by DNS; BoringSSL refuses longer
/// ones too).
pub const MAX_SNI_LEN: usize = 255;

/// Why `sni` cannot be a `server_name` host name, if it cannot: empty, longer than 255 bytes,
/// or holding a byte outside printable ASCII (control characters, spaces, non-ASCII). Every
/// Kuma form passes: tags `svc{k=v,mesh=m}`, hashed `a<hash>.<name>.<port>.<mesh>.ms`, KRI
/// `sni.msvc.<mesh>.<zone>.<name>.<port>`.
pub fn sni_problem(sni: &[u8]) -> Option<&'static str> {
    if sni.is_empty() {
        Some("server_name host_name is empty")
    } else if sni.len() > MAX_SNI_LEN {
        Some("server_name host_name is longer than 255 bytes")
    } else if !sni.iter().all(|b| (0x21..=0x7e).contains(b)) {
        Some("server_name host_name is not printable ASCII")
    } else {
        None
    }
}

/// A certificate chain (leaf first) and its private key, ready to present.
pub struct CertifiedKey {
    /// The chain in DER, leaf first.
    pub cert: Vec<CertificateDer<'static>>,
    chain: Vec<X509>,
    key: PKey<Private>,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("certs", &self.cert.len())
            .finish_non_exhaustive()
    }
}

impl CertifiedKey {
    /// `chain` (DER, leaf first) with `key` (DER: PKCS#8, PKCS#1 or SEC1); the key must
    /// belong to the leaf. `what` names the pair in errors.
    pub(crate) fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key_der: &[u8],
        what: &'static str,
    ) -> Result<CertifiedKey, TlsError> {
        let key = PKey::private_key_from_der(key_der).map_err(ssl_err(what))?;
        let parsed = chain
            .iter()
            .map(|der| X509::from_der(der))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ssl_err(what))?;
        CertifiedKey::new(chain, parsed, key, what)
    }

    /// A chain and key from PEM texts; `what` names the pair, `cert_what`/`key_what` each PEM.
    pub(crate) fn from_pem(
        chain_pem: &str,
        key_pem: &str,
        cert_what: &'static str,
        key_what: &'static str,
        what: &'static str,
    ) -> Result<CertifiedKey, TlsError> {
        let parsed = X509::stack_from_pem(chain_pem.as_bytes()).map_err(|e| TlsError::Pem {
            what: cert_what,
            reason: e.to_string(),
        })?;
        if parsed.is_empty() {
            return Err(TlsError::Pem {
                what: cert_what,
                reason: "no CERTIFICATE block".into(),
            });
        }
        let key = PKey::private_key_from_pem(key_pem.as_bytes()).map_err(|e| TlsError::Key {
            what: key_what,
            reason: e.to_string(),
        })?;
        let der = parsed
            .iter()
            .map(|c| c.to_der().map(CertificateDer::from))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ssl_err(cert_what))?;
        CertifiedKey::new(der, parsed, key, what)
    }

    fn new(
        cert: Vec<CertificateDer<'static>>,
        chain: Vec<X509>,
        key: PKey<Private>,
        what: &'static str,
    ) -> Result<CertifiedKey, TlsError> {
        let leaf = chain.first().ok_or(TlsError::Invalid {
            field: what,
            reason: "no certificate".into(),
        })?;
        let public = leaf.public_key().map_err(ssl_err(what))?;
        if !public.public_eq(&key) {
            return Err(TlsError::Invalid {
                field: what,
                reason: "the private key does not belong to the leaf certificate".into(),
            });
        }
        Ok(CertifiedKey { cert, chain, key })
    }

    /// Makes `builder` present this chain and key.
    pub(crate) fn install(&self, builder: &mut SslContextBuilder) -> Result<(), ErrorStack> {
        let Some((leaf, rest)) = self.chain.split_first() else {
            return Ok(());
        };
        builder.set_certificate(leaf)?;
        builder.set_private_key(&self.key)?;
        for cert in rest {
            builder.add_extra_chain_cert(cert.clone())?;
        }
        builder.check_private_key()
    }
}

/// An error of `what` from BoringSSL, as this crate's error.
pub(crate) fn ssl_err(what: &'static str) -> impl FnOnce(ErrorStack) -> TlsError {
    move |source| TlsError::Ssl { what, source }
}

/// A new context builder (client and server: `SSL_CTX` takes either role). BoringSSL releases a connection's record buffers while
/// it is idle by itself (its `SSL_MODE_RELEASE_BUFFERS` is 0, a no-op kept for OpenSSL
/// callers), so thousands of idle TLS connections do not each hold two 16 KiB buffers.
pub(crate) fn context_builder(what: &'static str) -> Result<SslContextBuilder, TlsError> {
    SslContextBuilder::new(SslMethod::tls()).map_err(ssl_err(what))
}

/// Builds an SSL context for a leaf (for contexts that present a renewing identity).
pub(crate) type BuildFor = dyn Fn(&CertifiedKey) -> Result<SslContext, TlsError> + Send + Sync;

/// Where a handshake's SSL context comes from.
enum Contexts {
    /// Built once for the config.
    Fixed(SslContext),
    /// Presents an identity's current leaf: rebuilt by the first handshake after a renewal,
    /// so contexts are built once per leaf, never per connection.
    Identity {
        identity: Arc<Identity>,
        build: Box<BuildFor>,
        built: ArcSwap<BuiltFor>,
    },
}

/// A context and the leaf it presents.
struct BuiltFor {
    leaf: Arc<CertifiedKey>,
    context: SslContext,
}

impl Contexts {
    fn fixed(context: SslContext) -> Arc<Contexts> {
        Arc::new(Contexts::Fixed(context))
    }

    fn for_identity(
        identity: Arc<Identity>,
        build: Box<BuildFor>,
    ) -> Result<Arc<Contexts>, TlsError> {
        let leaf = identity.current();
        let context = build(&leaf)?;
        Ok(Arc::new(Contexts::Identity {
            identity,
            build,
            built: ArcSwap::from_pointee(BuiltFor { leaf, context }),
        }))
    }

    /// A handshake to run over `stream` with a new SSL object from the current context, set
    /// up by `prepare`; errors name `peer` and `at()`.
    fn stream<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        at: impl Fn() -> String,
        prepare: impl FnOnce(&mut SslRef) -> Result<(), ErrorStack>,
    ) -> Result<SslStreamBuilder<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let fail = |e: ErrorStack| handshake_err(peer, at(), e.to_string());
        let mut ssl = self.new_ssl().map_err(fail)?;
        prepare(&mut ssl).map_err(fail)?;
        Ok(SslStreamBuilder::new(ssl, stream))
    }

    /// A new SSL object from the current context.
    fn new_ssl(&self) -> Result<Ssl, ErrorStack> {
        let (identity, build, built) = match self {
            Contexts::Fixed(context) => return Ssl::new(context),
            Contexts::Identity {
                identity,
                build,
                built,
            } => (identity, build, built),
        };
        let leaf = identity.current();
        let current = built.load();
        if Arc::ptr_eq(&current.leaf, &leaf) {
            return Ssl::new(&current.context);
        }
        match build(&leaf) {
            Ok(context) => {
                let ssl = Ssl::new(&context);
                built.store(Arc::new(BuiltFor { leaf, context }));
                ssl
            }
            Err(error) => {
                // The previous leaf is still valid for a while: keep presenting it.
                tracing::warn!(%error, "TLS context for the renewed mesh identity not built; the previous certificate stays in use");
                Ssl::new(&current.context)
            }
        }
    }
}

/// Refuses a ClientHello whose SNI is not a host name (see [`sni_problem`]); every Kuma form
/// passes, byte for byte. Installed on every context that terminates TLS.
pub(crate) fn check_sni(ssl: &mut SslRef, alert: &mut SslAlert) -> Result<(), SniError> {
    match ssl
        .servername_raw(NameType::HOST_NAME)
        .and_then(sni_problem)
    {
        None => Ok(()),
        Some(_) => {
            *alert = SslAlert::UNRECOGNIZED_NAME;
            Err(SniError::ALERT_FATAL)
        }
    }
}

/// The mesh a mesh server admits clients of: one URI SAN of the client's leaf must start with
/// `spiffe://<mesh>/`, as Kuma's inbound and zone egress DownstreamTlsContext require
/// (`matchTypedSubjectAltNames: prefix: spiffe://<mesh>/`). A chain to the mesh CA alone is
/// not enough: a CA shared by several meshes would let another mesh's proxies in.
#[derive(Clone)]
pub(crate) struct ClientMesh {
    mesh: Arc<str>,
    prefix: Arc<str>,
    /// Under MeshIdentity (Envoy's SPIFFE validator): the id's trust domain's bundle must be
    /// the one the chain ends in.
    trust: Option<Arc<SpiffeTrust>>,
    /// Where a connection keeps the URI SANs of a client refused for its mesh, so that the
    /// handshake error names them (BoringSSL drops a refused client's certificate).
    refused: Index<Ssl, OnceLock<Vec<String>>>,
}

impl ClientMesh {
    /// The rule for clients of `mesh`.
    pub(crate) fn new(mesh: &str) -> Result<ClientMesh, TlsError> {
        ClientMesh::with_prefix(mesh, &format!("spiffe://{mesh}/"), None)
    }

    /// The rule for clients whose SPIFFE id starts with `prefix` (Kuma's
    /// `spiffe://<trust domain>/`) and, with `trust`, ends in its trust domain's bundle.
    pub(crate) fn with_prefix(
        mesh: &str,
        prefix: &str,
        trust: Option<Arc<SpiffeTrust>>,
    ) -> Result<ClientMesh, TlsError> {
        // One slot index for the whole process (BoringSSL never frees an index).
        static REFUSED: OnceLock<Index<Ssl, OnceLock<Vec<String>>>> = OnceLock::new();
        let refused = match REFUSED.get() {
            Some(index) => *index,
            None => {
                let index = Ssl::new_ex_index().map_err(ssl_err("mesh server TLS context"))?;
                *REFUSED.get_or_init(|| index)
            }
        };
        Ok(ClientMesh {
            mesh: mesh.into(),
            prefix: prefix.into(),
            trust,
            refused,
        })
    }

    /// The verify callback of a mesh server: a valid chain whose leaf (depth 0) carries a URI
    /// SAN of the mesh is admitted; another leaf fails verification
    /// (`X509_V_ERR_APPLICATION_VERIFICATION`, so the handshake ends with an alert) and its
    /// URI SANs are kept on the connection for [`ClientMesh::refusal`].
    pub(crate) fn admits(&self, chain_ok: bool, ctx: &mut X509StoreContextRef) -> bool {
        let Some(uris) = verified_leaf_uris(chain_ok, ctx) else {
            return chain_ok;
        };
        let trusted = |uri: &String| self.trust.as_ref().is_none_or(|t| t.anchors(uri, ctx));
        if uris
            .iter()
            .any(|uri| uri.starts_with(&*self.prefix) && trusted(uri))
        {
            return true;
        }
        let slot = X509StoreContext::ssl_idx()
            .ok()
            .and_then(|index| ctx.ex_data(index))
            .and_then(|ssl| ssl.ex_data(self.refused));
        if let Some(slot) = slot {
            // Set at most once: a second call for the same leaf refuses the same SANs.
            let _ = slot.set(uris);
        }
        ctx.set_error(Err(X509VerifyError::APPLICATION_VERIFICATION));
        false
    }

    /// Gives a new server connection its slot for a refused client's URI SANs.
    fn prepare(&self, ssl: &mut SslRef) {
        ssl.set_ex_data(self.refused, OnceLock::new());
    }

    /// Why the client of `ssl` was refused, when it was refused for its mesh: its URI SANs
    /// and the prefix they lack.
    fn refusal(&self, ssl: &SslRef) -> Option<String> {
        let presented = ssl.ex_data(self.refused)?.get()?.clone();
        let error = match self.trust {
            None => TlsError::ClientOfAnotherMesh {
                mesh: self.mesh.to_string(),
                presented,
            },
            Some(_) => TlsError::ClientNotTrusted {
                prefix: self.prefix.to_string(),
                presented,
            },
        };
        Some(error.to_string())
    }
}

/// The URI SANs of the certificate a verify callback is at when it is the leaf (depth 0) of a
/// chain verified so far; `None` for issuers and for chains that already failed.
pub(crate) fn verified_leaf_uris(chain_ok: bool, ctx: &X509StoreContextRef) -> Option<Vec<String>> {
    if !chain_ok || ctx.error_depth() != 0 {
        return None;
    }
    Some(ctx.current_cert().map(uri_sans_of).unwrap_or_default())
}

/// The server side of TLS: terminates connections with a context built once per config (and
/// per identity renewal), within [`HANDSHAKE_TIMEOUT`].
#[derive(Clone)]
pub struct TlsAcceptor {
    contexts: Arc<Contexts>,
    timeout: Duration,
    /// The mesh whose clients a mesh server admits (none: any client its context verifies).
    client_mesh: Option<ClientMesh>,
}

impl TlsAcceptor {
    pub(crate) fn fixed(context: SslContext) -> TlsAcceptor {
        TlsAcceptor {
            contexts: Contexts::fixed(context),
            timeout: HANDSHAKE_TIMEOUT,
            client_mesh: None,
        }
    }

    /// This acceptor giving peers `timeout` instead of [`HANDSHAKE_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> TlsAcceptor {
        self.timeout = timeout;
        self
    }

    /// Presents `identity` with contexts from `build`; `client_mesh` (which those contexts'
    /// verify callback applies) names the client refused for its mesh in the error.
    pub(crate) fn for_identity(
        identity: Arc<Identity>,
        build: Box<BuildFor>,
        client_mesh: Option<ClientMesh>,
    ) -> Result<TlsAcceptor, TlsError> {
        Ok(TlsAcceptor {
            contexts: Contexts::for_identity(identity, build)?,
            timeout: HANDSHAKE_TIMEOUT,
            client_mesh,
        })
    }

    /// Runs the server handshake on `stream` from `peer`, accepted by `listener` (both named
    /// in the error). A peer that does not finish in time ([`HANDSHAKE_TIMEOUT`]) is refused.
    pub async fn accept<S>(
        &self,
        stream: S,
        listener: &str,
        peer: SocketAddr,
    ) -> Result<TlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let at = || format!("listener {listener}");
        let handshake = self.contexts.stream(stream, peer, at, |ssl| {
            if let Some(mesh) = &self.client_mesh {
                mesh.prepare(ssl);
            }
            Ok(())
        })?;
        match tokio::time::timeout(self.timeout, handshake.accept()).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(e)) => {
                let reason = self
                    .client_mesh
                    .as_ref()
                    .zip(e.ssl())
                    .and_then(|(mesh, ssl)| mesh.refusal(ssl))
                    .unwrap_or_else(|| failure(&e, None));
                Err(handshake_err(peer, at(), reason))
            }
            Err(_) => Err(handshake_err(
                peer,
                at(),
                format!("not completed within {:?}", self.timeout),
            )),
        }
    }
}

/// How a [`TlsConnector`] checks the server, beyond the chain its context verifies.
#[derive(Clone)]
pub(crate) enum ServerCheck {
    /// Nothing more (SkipSan, SkipAll).
    None,
    /// The certificate must be valid for this DNS name or IP address (external, Secured).
    Name(Arc<str>),
    /// The certificate must carry a SPIFFE id one of these accepts (any URI SAN against any
    /// matcher): a mesh client context is shared by the connectors to every destination, so
    /// each connection checks its own (and names them in the error when the server carries
    /// none). With a SPIFFE trust (MeshIdentity), the chain must also end in the bundle of
    /// the trust domain of an id so accepted.
    Spiffe(Arc<[SpiffeMatcher]>, Option<Arc<SpiffeTrust>>),
}

/// The client side of TLS towards one destination: the SNI it sends (any byte string a
/// ClientHello can carry, Kuma's forms included, sent as is) and how the server is checked.
#[derive(Clone)]
pub struct TlsConnector {
    contexts: Arc<Contexts>,
    sni: Option<Arc<str>>,
    check: ServerCheck,
    /// Whether the server may renegotiate (TLS 1.2 and earlier).
    renegotiation: bool,
}

impl TlsConnector {
    pub(crate) fn fixed(context: SslContext, check: ServerCheck) -> TlsConnector {
        TlsConnector {
            contexts: Contexts::fixed(context),
            sni: None,
            check,
            renegotiation: false,
        }
    }

    pub(crate) fn for_identity(
        identity: Arc<Identity>,
        build: Box<BuildFor>,
        check: ServerCheck,
    ) -> Result<TlsConnector, TlsError> {
        Ok(TlsConnector {
            contexts: Contexts::for_identity(identity, build)?,
            sni: None,
            check,
            renegotiation: false,
        })
    }

    /// This connector sending `sni` as the ClientHello's server name, byte for byte (an IP
    /// address is not sent, as RFC 6066 says). Refused when it cannot be a host name.
    pub fn with_sni(mut self, sni: &str) -> Result<TlsConnector, TlsError> {
        if sni.parse::<IpAddr>().is_ok() {
            self.sni = None;
            return Ok(self);
        }
        if let Some(reason) = sni_problem(sni.as_bytes()) {
            return Err(TlsError::Invalid {
                field: "SNI",
                reason: format!("{sni:?}: {reason}"),
            });
        }
        self.sni = Some(sni.into());
        Ok(self)
    }

    /// This connector letting the server renegotiate the session as often as it asks (TLS 1.2
    /// and earlier; Envoy's `UpstreamTlsContext.allow_renegotiation`, Kuma's ExternalService
    /// `networking.tls.allowRenegotiation`). Without it a server's HelloRequest ends the
    /// connection, as BoringSSL refuses renegotiation by default.
    pub fn allowing_renegotiation(mut self) -> TlsConnector {
        self.renegotiation = true;
        self
    }

    /// The SNI this connector sends, if any.
    pub fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// Runs the client handshake on `stream` to `peer` for `cluster` (both named in the
    /// error). The caller bounds it in time (its connect timeout).
    pub async fn connect<S>(
        &self,
        stream: S,
        cluster: &str,
        peer: SocketAddr,
    ) -> Result<TlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let at = || format!("cluster {cluster}");
        let handshake = self
            .contexts
            .stream(stream, peer, at, |ssl| self.prepare(ssl))?;
        handshake
            .connect()
            .await
            .map_err(|e| handshake_err(peer, at(), failure(&e, Some(&self.check))))
    }

    /// The first flight this connector sends (its ClientHello records), produced without a
    /// peer: what goes on the wire, for tests and benchmarks that check or replay it.
    pub fn first_flight(&self) -> Result<Vec<u8>, TlsError> {
        let what = "TLS client first flight";
        let mut ssl = self.contexts.new_ssl().map_err(ssl_err(what))?;
        self.prepare(&mut ssl).map_err(ssl_err(what))?;
        match ssl.connect(FirstFlight(Vec::new())) {
            Err(boring::ssl::HandshakeError::WouldBlock(mid)) => Ok(mid.get_ref().0.clone()),
            Ok(_) => Err(TlsError::Invalid {
                field: what,
                reason: "handshake completed without a peer".into(),
            }),
            Err(e) => Err(TlsError::Invalid {
                field: what,
                reason: e.to_string(),
            }),
        }
    }

    /// Whether both connectors use the same contexts (tests of sharing).
    #[cfg(test)]
    pub(crate) fn shares_contexts(&self, other: &TlsConnector) -> bool {
        Arc::ptr_eq(&self.contexts, &other.contexts)
    }

    /// This connector's contexts with `check` instead of its own, and no SNI.
    pub(crate) fn checking(&self, check: ServerCheck) -> TlsConnector {
        TlsConnector {
            contexts: self.contexts.clone(),
            sni: None,
            check,
            renegotiation: self.renegotiation,
        }
    }

    /// Sets the SNI, the server check and the renegotiation mode on one connection.
    fn prepare(&self, ssl: &mut SslRef) -> Result<(), ErrorStack> {
        if self.renegotiation {
            allow_renegotiation(ssl);
        }
        if let Some(sni) = &self.sni {
            // Checked by `with_sni`: no NUL byte, so this cannot fail on the name itself.
            ssl.set_hostname(sni)?;
        }
        match &self.check {
            ServerCheck::Name(name) => match name.parse::<IpAddr>() {
                Ok(ip) => ssl.param_mut().set_ip(ip)?,
                Err(_) => ssl.param_mut().set_host(name)?,
            },
            ServerCheck::Spiffe(expected, trust) => {
                // After the chain check, the leaf (depth 0) must carry an expected SPIFFE id
                // (and, under a SPIFFE trust, chain to that id's trust domain's bundle).
                let wanted = expected.clone();
                let trust = trust.clone();
                ssl.set_verify_callback(SslVerifyMode::PEER, move |chain_ok, ctx| {
                    let Some(uris) = verified_leaf_uris(chain_ok, ctx) else {
                        return chain_ok;
                    };
                    let carries = uris.iter().any(|uri| {
                        wanted.iter().any(|m| m.accepts(uri))
                            && trust.as_ref().is_none_or(|t| t.anchors(uri, ctx))
                    });
                    if !carries {
                        ctx.set_error(Err(X509VerifyError::APPLICATION_VERIFICATION));
                    }
                    carries
                });
            }
            ServerCheck::None => {}
        }
        Ok(())
    }
}

/// Lets the server of `ssl` renegotiate freely, as Envoy does for `allow_renegotiation`. The
/// `boring` crate has no safe call for BoringSSL's `SSL_set_renegotiate_mode`.
fn allow_renegotiation(ssl: &mut SslRef) {
    use foreign_types::ForeignTypeRef as _;
    // SAFETY: `ssl.as_ptr()` is the live `SSL` this exclusive reference borrows, and setting
    // its renegotiation mode before the handshake is what BoringSSL documents; the call
    // keeps no pointer.
    unsafe {
        boring_sys::SSL_set_renegotiate_mode(
            ssl.as_ptr(),
            boring_sys::ssl_renegotiate_mode_t::ssl_renegotiate_freely,
        );
    }
}

/// A sink that keeps what is written and has nothing to read yet.
#[derive(Debug)]
struct FirstFlight(Vec<u8>);

impl std::io::Read for FirstFlight {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
}

impl std::io::Write for FirstFlight {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn handshake_err(peer: SocketAddr, at: String, reason: String) -> TlsError {
    TlsError::Handshake { peer, at, reason }
}

/// What went wrong in a failed handshake: the certificate check's verdict when it failed (the
/// SPIFFE id mismatch spelled out), else BoringSSL's error.
fn failure<S>(error: &HandshakeError<S>, check: Option<&ServerCheck>) -> String {
    let Some(ssl) = error.ssl() else {
        return error.to_string();
    };
    // INVALID_CALL: nothing was verified (e.g. the client sent no certificate).
    let verdict = match ssl.verify_result() {
        Err(verdict) if verdict != X509VerifyError::INVALID_CALL => verdict,
        _ => return error.to_string(),
    };
    if verdict == X509VerifyError::APPLICATION_VERIFICATION {
        if let Some(ServerCheck::Spiffe(expected, _)) = check {
            let presented = ssl
                .peer_cert_chain()
                .and_then(|chain| chain.iter().next())
                .map(uri_sans_of)
                .unwrap_or_default();
            return TlsError::IdentityMismatch {
                expected: expected.iter().map(ToString::to_string).collect(),
                presented,
            }
            .to_string();
        }
    }
    format!(
        "certificate verify failed: {} ({error})",
        verdict.error_string()
    )
}

/// The URI SANs of a certificate.
pub(crate) fn uri_sans_of(cert: &X509Ref) -> Vec<String> {
    cert.subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.uri().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// What a completed handshake negotiated, read from a [`TlsStream`].
pub trait Negotiated {
    /// The SNI the client sent (server side) or this side sent (client side).
    fn server_name(&self) -> Option<&str>;
    /// The ALPN protocol agreed on.
    fn alpn_protocol(&self) -> Option<&[u8]>;
    /// The protocol version, e.g. `TLSv1.3`.
    fn protocol_version(&self) -> &'static str;
    /// The SPIFFE ids (`spiffe://` URI SANs) of the peer's certificate.
    fn peer_spiffe_ids(&self) -> Vec<String>;
    /// The names of the peer's certificate, `None` without one (what RBAC principals match).
    fn peer_names(&self) -> Option<PeerNames>;
}

/// The names a peer certificate carries, as Envoy's RBAC reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerNames {
    /// Its URI SANs, in certificate order.
    pub uri_sans: Vec<String>,
    /// Its DNS SANs, in certificate order.
    pub dns_sans: Vec<String>,
    /// Its subject in RFC 2253 form (`X509_NAME_print_ex` with `XN_FLAG_RFC2253`, as Envoy).
    pub subject: String,
}

impl<S> Negotiated for TlsStream<S> {
    fn server_name(&self) -> Option<&str> {
        self.ssl().servername(NameType::HOST_NAME)
    }

    fn alpn_protocol(&self) -> Option<&[u8]> {
        self.ssl().selected_alpn_protocol()
    }

    fn protocol_version(&self) -> &'static str {
        self.ssl().version_str()
    }

    fn peer_spiffe_ids(&self) -> Vec<String> {
        let mut ids = self
            .ssl()
            .peer_certificate()
            .map(|c| uri_sans_of(&c))
            .unwrap_or_default();
        ids.retain(|uri| uri.starts_with("spiffe://"));
        ids
    }

    fn peer_names(&self) -> Option<PeerNames> {
        let cert = self.ssl().peer_certificate()?;
        let dns_sans = cert
            .subject_alt_names()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.dnsname().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Some(PeerNames {
            uri_sans: uri_sans_of(&cert),
            dns_sans,
            subject: cert
                .subject_name()
                .print_ex(boring_sys::XN_FLAG_RFC2253)
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{mesh_acceptor, mesh_connector, MeshCa};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);
    const HOUR: Duration = Duration::from_secs(3600);

    /// Kuma's SNI forms: tags, hashed MeshService, KRI.
    const KUMA_SNIS: [&str; 4] = [
        "backend{mesh=default}",
        "backend{kuma.io/zone=east,mesh=default,version=v1}",
        "a601e0c00295a9fbe.backend.80.default.ms",
        "sni.msvc.default.east.backend.80",
    ];

    fn mesh(ca: &Arc<MeshCa>, service: &str) -> Arc<Identity> {
        Identity::new(ca.clone(), "default", &[service.to_string()], HOUR).unwrap()
    }

    fn u16_be(n: usize) -> [u8; 2] {
        u16::try_from(n).unwrap().to_be_bytes()
    }

    /// A TLS 1.3 ClientHello handshake message (no record header) carrying `sni` as is.
    fn client_hello(sni: &[u8]) -> Vec<u8> {
        let mut ext = Vec::new();
        let mut names = vec![0u8];
        names.extend(u16_be(sni.len()));
        names.extend(sni);
        ext.extend([0, 0]);
        ext.extend(u16_be(names.len() + 2));
        ext.extend(u16_be(names.len()));
        ext.extend(names);
        ext.extend([0, 0x2b, 0, 3, 2, 3, 4]); // supported_versions: TLS 1.3
        ext.extend([0, 0x0a, 0, 4, 0, 2, 0, 0x1d]); // supported_groups: x25519
        ext.extend([0, 0x0d, 0, 6, 0, 4, 4, 3, 8, 4]); // signature_algorithms
        ext.extend([0, 0x33, 0, 38, 0, 36, 0, 0x1d, 0, 32]); // key_share: x25519
        ext.extend([9u8; 32]);
        let mut body = vec![3, 3];
        body.extend([7u8; 32]); // random
        body.extend([0, 0, 2, 0x13, 0x01, 1, 0]); // session id, TLS_AES_128_GCM_SHA256, null
        body.extend(u16_be(ext.len()));
        body.extend(ext);
        let len = u32::try_from(body.len()).unwrap().to_be_bytes();
        let mut message = vec![1, len[1], len[2], len[3]];
        message.extend(body);
        message
    }

    /// `message` in handshake records of at most `size` bytes each.
    fn records(message: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in message.chunks(size) {
            out.extend([22, 3, 1]);
            out.extend(u16_be(chunk.len()));
            out.extend(chunk);
        }
        out
    }

    /// What `acceptor` makes of `bytes` sent by a client that then stays silent (`linger`) or
    /// closes, how long it took to decide, and the first bytes the server sent back.
    async fn feed(
        acceptor: &TlsAcceptor,
        bytes: Vec<u8>,
        linger: bool,
    ) -> (Result<(), TlsError>, Duration, Vec<u8>) {
        let (server_end, mut client_end) = tokio::io::duplex(256 * 1024);
        let client = async move {
            client_end.write_all(&bytes).await.unwrap();
            let mut reply = vec![0u8; 5];
            let got = client_end.read(&mut reply).await.unwrap_or(0);
            reply.truncate(got);
            if linger {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            reply
        };
        let server = async {
            let started = std::time::Instant::now();
            let outcome = acceptor.accept(server_end, "test", PEER).await.map(drop);
            (outcome, started.elapsed())
        };
        let ((outcome, took), reply) = tokio::join!(server, client);
        (outcome, took, reply)
    }

    /// A Bearing mesh listener accepts every Kuma SNI form (and none) from a BoringSSL client,
    /// and sees the name byte for byte; the client sends exactly the name it was given.
    #[tokio::test]
    async fn every_kuma_sni_form_is_sent_and_accepted_byte_for_byte() {
        let ca = Arc::new(MeshCa::generate("default").unwrap());
        let server = mesh_acceptor(&ca, mesh(&ca, "backend"), None).unwrap();
        let client =
            mesh_connector(&ca, mesh(&ca, "web"), "spiffe://default/backend", None).unwrap();
        for sni in KUMA_SNIS.into_iter().map(Some).chain([None]) {
            let client = match sni {
                Some(name) => client.clone().with_sni(name).unwrap(),
                None => client.clone(),
            };
            let hello = client.first_flight().unwrap();
            let peeked = crate::parse_client_hello(&hello);
            assert_eq!(
                peeked,
                crate::ClientHello::Parsed {
                    sni,
                    alpn_kuma: true
                },
                "{sni:?}"
            );
            let (a, b) = tokio::io::duplex(64 * 1024);
            let (s, c) = tokio::join!(
                server.accept(a, "test", PEER),
                client.connect(b, "backend", PEER)
            );
            let (s, c) = (s.unwrap(), c.unwrap());
            assert_eq!(s.server_name(), sni, "{sni:?}");
            assert_eq!(c.peer_spiffe_ids(), ["spiffe://default/backend"]);
        }
    }

    /// The gateway picks a certificate by the exact SNI, Kuma forms included.
    #[tokio::test]
    async fn gateway_listener_selects_by_any_sni_form() {
        let ca = Arc::new(MeshCa::generate("default").unwrap());
        let key = mesh(&ca, "gateway").current();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let server = crate::gateway_acceptor(
            &[key],
            move |sni| {
                record.lock().unwrap().push(sni.map(str::to_owned));
                Some(0)
            },
            &[b"h2"],
            None,
        )
        .unwrap();
        for sni in KUMA_SNIS {
            let client = crate::external_connector(
                sni,
                None,
                None,
                crate::ServerVerification::SkipAll,
                &[b"h2"],
                None,
            )
            .unwrap();
            let (a, b) = tokio::io::duplex(64 * 1024);
            let (s, c) = tokio::join!(
                server.accept(a, "gw", PEER),
                client.connect(b, "external", PEER)
            );
            assert_eq!(s.unwrap().server_name(), Some(sni));
            assert_eq!(c.unwrap().alpn_protocol(), Some(&b"h2"[..]));
        }
        let seen = seen.lock().unwrap().clone();
        let expected: Vec<_> = KUMA_SNIS.iter().map(|s| Some(s.to_string())).collect();
        assert_eq!(seen, expected);
    }

    /// Truncated, oversized, fragmented and badly named ClientHellos end in a refusal that
    /// names the listener and the peer, promptly (never a hang past the timeout, never a
    /// panic); a valid ClientHello split into one-byte records is reassembled and answered.
    #[tokio::test]
    async fn bad_client_hellos_are_refused_cleanly() {
        let ca = Arc::new(MeshCa::generate("default").unwrap());
        let server = mesh_acceptor(&ca, mesh(&ca, "backend"), None)
            .unwrap()
            .with_timeout(Duration::from_millis(300));
        let good = client_hello(b"backend{mesh=default}");
        let long = client_hello(&[b'a'; 256]);
        let control = client_hello(b"backend\x01{mesh=default}");
        let mut oversized = vec![22, 3, 1, 0, 4, 1];
        oversized.extend((200_000u32).to_be_bytes()[1..].iter());
        let cases: [(&str, Vec<u8>, bool); 8] = [
            ("SNI longer than 255 bytes", records(&long, 16384), false),
            (
                "SNI with a control character",
                records(&control, 16384),
                false,
            ),
            (
                "fragmented, SNI with a control character",
                records(&control, 1),
                false,
            ),
            (
                "truncated, then closed",
                records(&good, 16384)[..60].to_vec(),
                false,
            ),
            (
                "truncated, then silent",
                records(&good, 16384)[..60].to_vec(),
                true,
            ),
            ("silent from the start", Vec::new(), true),
            (
                "record longer than TLS allows",
                vec![22, 3, 1, 0xff, 0xff, 1, 0, 0],
                false,
            ),
            ("ClientHello longer than BoringSSL allows", oversized, false),
        ];
        for (case, bytes, linger) in cases {
            let (outcome, took, _) = feed(&server, bytes, linger).await;
            let err = outcome
                .err()
                .unwrap_or_else(|| panic!("{case}: accepted"))
                .to_string();
            assert!(
                err.contains("listener test") && err.contains("127.0.0.1:1"),
                "{case}: {err}"
            );
            assert!(took < Duration::from_millis(900), "{case}: took {took:?}");
        }
        let (outcome, _, reply) = feed(&server, records(&good, 1), true).await;
        assert!(outcome
            .unwrap_err()
            .to_string()
            .contains("not completed within"));
        assert_eq!(
            reply.get(..3),
            Some(&[22, 3, 3][..]),
            "no ServerHello: {reply:?}"
        );
    }

    #[test]
    fn sni_problems_are_named_and_kuma_forms_pass() {
        for sni in KUMA_SNIS {
            assert_eq!(sni_problem(sni.as_bytes()), None, "{sni}");
        }
        assert_eq!(sni_problem(&[b'a'; 255]), None);
        assert!(sni_problem(&[b'a'; 256]).unwrap().contains("255"));
        assert!(sni_problem(b"a\x00b").unwrap().contains("printable"));
        assert!(sni_problem(b"a b").unwrap().contains("printable"));
        assert!(sni_problem(b"").unwrap().contains("empty"));
        let ca = Arc::new(MeshCa::generate("default").unwrap());
        let client =
            mesh_connector(&ca, mesh(&ca, "web"), "spiffe://default/backend", None).unwrap();
        let err = client.with_sni("back\nend").err().unwrap().to_string();
        assert!(err.starts_with("invalid SNI:"), "{err}");
    }
}

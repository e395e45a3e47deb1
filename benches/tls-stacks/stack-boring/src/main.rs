//! BoringSSL (what Envoy uses; built from the sources vendored in `boring-sys`) through
//! `boring` and `tokio-boring`. The client sends Kuma's tags-form SNI `backend{mesh=default}`
//! (BoringSSL takes any bytes but NUL, as Envoy's sidecars show).

use std::io;

use boring::pkey::PKey;
use boring::ssl::{
    select_next_proto, AlpnError, NameType, Ssl, SslContext, SslContextBuilder, SslMethod, SslMode,
    SslOptions, SslSessionCacheMode, SslVerifyMode, SslVersion,
};
use boring::x509::{X509Ref, X509};
use common::{error, Negotiated, Pem, Pki, Stack, KUMA_TAGS_SNI};
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio_boring::{SslStream, SslStreamBuilder};

/// BoringSSL reads a TLS record in two reads (its 5-byte header, then the rest) and has no
/// read-ahead for TLS; a small read buffer under it takes one read(2) per burst instead (reads
/// of at least its size bypass it). Envoy does the same with its own buffer under BoringSSL.
const READ_BUFFER: usize = 4096;

/// The socket under BoringSSL.
type Socket = BufReader<TcpStream>;

struct Boring;

/// TLS 1.3 only, X25519, no resumption, the chain `[leaf, CA]`, and the mesh CA as the only
/// trust anchor. (BoringSSL releases idle buffers by itself.)
fn context(pki: &Pki, leaf: Option<&Pem>) -> io::Result<SslContextBuilder> {
    let mut ctx = SslContext::builder(SslMethod::tls())?;
    ctx.set_min_proto_version(Some(SslVersion::TLS1_3))?;
    ctx.set_curves_list("X25519")?;
    ctx.set_session_cache_mode(SslSessionCacheMode::OFF);
    ctx.set_options(SslOptions::NO_TICKET);
    ctx.set_mode(SslMode::RELEASE_BUFFERS);
    let ca = X509::from_pem(pki.ca_cert.as_bytes())?;
    ctx.cert_store_mut().add_cert(ca.clone())?;
    if let Some(leaf) = leaf {
        let cert = X509::from_pem(leaf.cert.as_bytes())?;
        ctx.set_certificate(&cert)?;
        ctx.add_extra_chain_cert(ca)?;
        let key = PKey::private_key_from_pem(leaf.key.as_bytes())?;
        ctx.set_private_key(&key)?;
        ctx.check_private_key()?;
    }
    Ok(ctx)
}

fn uris(cert: &X509Ref) -> Vec<String> {
    cert.subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.uri().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

impl Stack for Boring {
    const NAME: &'static str = "boring";
    const SNI: &'static str = KUMA_TAGS_SNI;
    type Acceptor = SslContext;
    type Connector = SslContext;
    type ServerStream = SslStream<Socket>;
    type ClientStream = SslStream<Socket>;

    fn library() -> String {
        format!("{} (boring-sys 5)", boring::version::version())
    }

    fn acceptor(pki: &Pki, leaf: &Pem) -> io::Result<SslContext> {
        let mut ctx = context(pki, Some(leaf))?;
        ctx.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        ctx.set_alpn_select_callback(|_, offered| {
            select_next_proto(b"\x04kuma", offered).ok_or(AlpnError::NOACK)
        });
        Ok(ctx.build())
    }

    fn connector(pki: &Pki, leaf: Option<&Pem>, expected: &str) -> io::Result<SslContext> {
        let mut ctx = context(pki, leaf)?;
        let expected = expected.to_owned();
        ctx.set_verify_callback(SslVerifyMode::PEER, move |chain_ok, store| {
            // Depth 0 is the leaf, reached after its chain verified.
            chain_ok
                && (store.error_depth() != 0
                    || store
                        .current_cert()
                        .is_some_and(|leaf| uris(leaf).contains(&expected)))
        });
        ctx.set_alpn_protos(b"\x04kuma")?;
        Ok(ctx.build())
    }

    async fn accept(acceptor: &SslContext, tcp: TcpStream) -> io::Result<Self::ServerStream> {
        SslStreamBuilder::new(Ssl::new(acceptor)?, Socket::with_capacity(READ_BUFFER, tcp))
            .accept()
            .await
            .map_err(error)
    }

    async fn connect(connector: &SslContext, tcp: TcpStream) -> io::Result<Self::ClientStream> {
        let mut ssl = Ssl::new(connector)?;
        ssl.set_hostname(KUMA_TAGS_SNI)?;
        SslStreamBuilder::new(ssl, Socket::with_capacity(READ_BUFFER, tcp))
            .connect()
            .await
            .map_err(error)
    }

    fn peer_uris(stream: &Self::ServerStream) -> Vec<String> {
        stream
            .ssl()
            .peer_certificate()
            .map(|c| uris(&c))
            .unwrap_or_default()
    }

    fn negotiated(stream: &Self::ServerStream) -> Negotiated {
        let ssl = stream.ssl();
        Negotiated {
            version: ssl.version_str().to_owned(),
            cipher: ssl
                .current_cipher()
                .map(|c| c.name().to_owned())
                .unwrap_or_default(),
            alpn: ssl.selected_alpn_protocol().map(<[u8]>::to_vec),
            sni: ssl.servername(NameType::HOST_NAME).map(str::to_owned),
        }
    }

    fn client_alpn(stream: &Self::ClientStream) -> Option<Vec<u8>> {
        stream.ssl().selected_alpn_protocol().map(<[u8]>::to_vec)
    }
}

fn main() {
    common::main::<Boring>();
}

//! OpenSSL (Debian's libssl 3.0.x) through `openssl` and `tokio-openssl`. The client sends
//! Kuma's tags-form SNI `backend{mesh=default}` (OpenSSL takes any bytes but NUL).

use std::io;
use std::pin::Pin;

use common::{error, Negotiated, Pem, Pki, Stack, KUMA_TAGS_SNI};
use openssl::pkey::PKey;
use openssl::ssl::{
    select_next_proto, AlpnError, NameType, Ssl, SslContext, SslContextBuilder, SslMethod, SslMode,
    SslOptions, SslSessionCacheMode, SslVerifyMode, SslVersion,
};
use openssl::x509::{X509Ref, X509};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

struct OpenSsl;

/// TLS 1.3 only, X25519, no resumption, idle buffers released, the chain `[leaf, CA]`, and the
/// mesh CA as the only trust anchor.
fn context(method: SslMethod, pki: &Pki, leaf: Option<&Pem>) -> io::Result<SslContextBuilder> {
    let mut ctx = SslContext::builder(method)?;
    ctx.set_min_proto_version(Some(SslVersion::TLS1_3))?;
    ctx.set_groups_list("X25519")?;
    ctx.set_session_cache_mode(SslSessionCacheMode::OFF);
    ctx.set_options(SslOptions::NO_TICKET);
    ctx.set_num_tickets(0)?;
    ctx.set_mode(SslMode::RELEASE_BUFFERS);
    // Read whole records (and what follows) per read(2), not the 5-byte header first.
    ctx.set_read_ahead(true);
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

impl Stack for OpenSsl {
    const NAME: &'static str = "openssl";
    const SNI: &'static str = KUMA_TAGS_SNI;
    type Acceptor = SslContext;
    type Connector = SslContext;
    type ServerStream = SslStream<TcpStream>;
    type ClientStream = SslStream<TcpStream>;

    fn library() -> String {
        openssl::version::version().to_owned()
    }

    fn acceptor(pki: &Pki, leaf: &Pem) -> io::Result<SslContext> {
        let mut ctx = context(SslMethod::tls_server(), pki, Some(leaf))?;
        ctx.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        ctx.set_alpn_select_callback(|_, offered| {
            select_next_proto(b"\x04kuma", offered).ok_or(AlpnError::NOACK)
        });
        Ok(ctx.build())
    }

    fn connector(pki: &Pki, leaf: Option<&Pem>, expected: &str) -> io::Result<SslContext> {
        let mut ctx = context(SslMethod::tls_client(), pki, leaf)?;
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
        let mut tls = SslStream::new(Ssl::new(acceptor)?, tcp)?;
        Pin::new(&mut tls).accept().await.map_err(error)?;
        Ok(tls)
    }

    async fn connect(connector: &SslContext, tcp: TcpStream) -> io::Result<Self::ClientStream> {
        let mut ssl = Ssl::new(connector)?;
        ssl.set_hostname(KUMA_TAGS_SNI)?;
        let mut tls = SslStream::new(ssl, tcp)?;
        Pin::new(&mut tls).connect().await.map_err(error)?;
        Ok(tls)
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
    common::main::<OpenSsl>();
}

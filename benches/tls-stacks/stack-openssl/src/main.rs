//! OpenSSL (Debian's libssl 3.0.x) through `openssl` and `tokio-openssl`. The client sends
//! Kuma's tags-form SNI `backend{mesh=default}` (OpenSSL takes any bytes but NUL).

use std::io;
use std::pin::Pin;

use common::{error, Negotiated, Pem, Pki, Stack, KUMA_TAGS_SNI};
use openssl::ssl::{
    Ssl, SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslSessionCacheMode,
    SslVersion,
};
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
    add_identity(&mut ctx, pki, leaf)?;
    Ok(ctx)
}

common::openssl_api!(openssl);

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
        Ok(mesh_server(context(
            SslMethod::tls_server(),
            pki,
            Some(leaf),
        )?))
    }

    fn connector(pki: &Pki, leaf: Option<&Pem>, expected: &str) -> io::Result<SslContext> {
        mesh_client(context(SslMethod::tls_client(), pki, leaf)?, expected)
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
        peer_uris_of(stream.ssl())
    }

    fn negotiated(stream: &Self::ServerStream) -> Negotiated {
        negotiated_of(stream.ssl())
    }

    fn client_alpn(stream: &Self::ClientStream) -> Option<Vec<u8>> {
        alpn_of(stream.ssl())
    }
}

fn main() {
    common::main::<OpenSsl>();
}

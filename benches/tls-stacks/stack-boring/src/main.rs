//! BoringSSL (what Envoy uses; built from the sources vendored in `boring-sys`) through
//! `boring` and `tokio-boring`. The client sends Kuma's tags-form SNI `backend{mesh=default}`
//! (BoringSSL takes any bytes but NUL, as Envoy's sidecars show).

use std::io;

use boring::ssl::{
    Ssl, SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslSessionCacheMode,
    SslVersion,
};
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
    add_identity(&mut ctx, pki, leaf)?;
    Ok(ctx)
}

common::openssl_api!(boring);

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
        Ok(mesh_server(context(pki, Some(leaf))?))
    }

    fn connector(pki: &Pki, leaf: Option<&Pem>, expected: &str) -> io::Result<SslContext> {
        mesh_client(context(pki, leaf)?, expected)
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
    common::main::<Boring>();
}

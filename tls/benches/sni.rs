//! Cost of peeking SNI and ALPN from a realistic mesh ClientHello (a rustls client's first
//! flight carrying the Kuma tags SNI `backend{mesh=default}` and ALPN `kuma`).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};

/// A rustls client's ClientHello with SNI `backend{mesh=default}`: rustls only sends DNS names,
/// so it is made for a same-length DNS name that is then overwritten (lengths stay right).
fn client_hello() -> Vec<u8> {
    const STAND_IN: &str = "backend-mesh-default1";
    const SNI: &str = "backend{mesh=default}";
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"kuma".to_vec()];
    let name = rustls_pki_types::ServerName::try_from(STAND_IN).expect("valid DNS name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write to Vec");
    }
    let at = out
        .windows(STAND_IN.len())
        .position(|w| w == STAND_IN.as_bytes())
        .expect("SNI in the ClientHello");
    out[at..at + SNI.len()].copy_from_slice(SNI.as_bytes());
    out
}

fn bench(c: &mut Criterion) {
    let hello = client_hello();
    assert_eq!(
        bearing_tls::parse_client_hello(&hello),
        bearing_tls::ClientHello::Parsed {
            sni: Some("backend{mesh=default}"),
            alpn_kuma: true
        }
    );
    c.bench_function("parse_client_hello", |b| {
        b.iter(|| bearing_tls::parse_client_hello(black_box(&hello)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

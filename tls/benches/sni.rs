//! Cost of peeking SNI and ALPN from a realistic mesh ClientHello (Bearing's own mesh client's
//! first flight, OpenSSL, carrying the Kuma tags SNI `backend{mesh=default}` and ALPN `kuma`).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

/// The ClientHello Bearing's mesh client sends to `backend{mesh=default}`.
fn client_hello() -> Vec<u8> {
    let ca = Arc::new(bearing_tls::MeshCa::generate("default").expect("CA"));
    let web = bearing_tls::Identity::new(
        ca.clone(),
        "default",
        &["web".to_string()],
        Duration::from_secs(3600),
    )
    .expect("identity");
    bearing_tls::mesh_connector(&ca, web, "spiffe://default/backend", None)
        .and_then(|c| c.with_sni("backend{mesh=default}"))
        .and_then(|c| c.first_flight())
        .expect("first flight")
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

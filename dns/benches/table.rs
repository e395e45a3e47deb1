//! VIP lookup: answering a mesh hostname from a 20,000-name DNS table (the hot path of every
//! mesh DNS query), for a known name, an unknown name under the mesh domain and an outside name.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use bearing_dns::{DnsRecord, DnsTable, Lookup};
use criterion::{criterion_group, criterion_main, Criterion};

fn table(names: u32) -> DnsTable {
    let records = (0..names).map(|i| DnsRecord {
        name: format!("svc-{i}.mesh"),
        ips: vec![IpAddr::V4(Ipv4Addr::from(0xf000_0000 + i))],
    });
    DnsTable::new("mesh", records)
}

fn lookup(c: &mut Criterion) {
    let t = table(20_000);
    assert!(matches!(t.lookup("SVC-12345.mesh."), Lookup::Found { .. }));
    c.bench_function("dns table lookup: known name of 20k", |b| {
        b.iter(|| t.lookup(black_box("SVC-12345.mesh.")))
    });
    c.bench_function("dns table lookup: unknown name under the domain", |b| {
        b.iter(|| t.lookup(black_box("nope-12345.mesh")))
    });
    c.bench_function("dns table lookup: outside name", |b| {
        b.iter(|| t.lookup(black_box("www.example.com")))
    });
}

criterion_group!(benches, lookup);
criterion_main!(benches);

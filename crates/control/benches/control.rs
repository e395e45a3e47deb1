//! Micro-benchmarks of the config path's hot functions: template rendering, parsing and
//! compiling a 1k-service store, and cluster lookup by name. Run with
//! `cargo bench -p bearing-control` (not part of CI).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;

use bearing_control::{compile::compile, compile::CompileOptions, template};
use bearing_model::{Resource, Store};
use criterion::{criterion_group, criterion_main, Criterion};

const SERVICES: usize = 1000;

/// A store like the harness's start-up store: one Dataplane with `n` outbounds, each to a
/// service served by one other Dataplane.
fn store_text(n: usize) -> String {
    let mut text = String::from(
        "type: Mesh\nname: default\n---\ntype: Dataplane\nname: bench-client\nmesh: default\n\
         networking:\n  address: 127.0.0.1\n  inbound:\n  - port: 18199\n    servicePort: 18100\n\
         \x20   tags:\n      kuma.io/service: bench-client\n      kuma.io/protocol: http\n  outbound:\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "  - port: 8080\n    address: 127.2.{}.{}\n    tags:\n      kuma.io/service: svc-{i}\n",
            i / 250,
            i % 250 + 1
        ));
    }
    for i in 0..n {
        text.push_str(&format!(
            "---\ntype: Dataplane\nname: svc-{i}\nmesh: default\nnetworking:\n  address: 10.0.{}.{}\n\
             \x20 inbound:\n  - port: 8080\n    tags:\n      kuma.io/service: svc-{i}\n\
             \x20     kuma.io/protocol: http\n",
            i / 250,
            i % 250 + 1
        ));
    }
    text
}

fn parse(text: &str) -> Store {
    let mut store = Store::default();
    store.add_text(text, Path::new("store.yaml"));
    store
}

fn me(store: &Store) -> Resource {
    store
        .resources
        .iter()
        .find(|r| r.meta.name == "bench-client")
        .cloned()
        .expect("the generated store has bench-client")
}

fn benches(c: &mut Criterion) {
    let template_text = "type: Dataplane\nmesh: default\nname: {{ name }}\nnetworking:\n  \
                         address: {{ address }}\n  inbound:\n  - port: {{ port }}\n    tags:\n      \
                         kuma.io/service: web\n";
    let vars: BTreeMap<String, String> =
        [("name", "web-1"), ("address", "10.0.0.5"), ("port", "8080")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    c.bench_function("template::render (3 variables)", |b| {
        b.iter(|| template::render(black_box(template_text), black_box(&vars)))
    });

    let text = store_text(SERVICES);
    let store = parse(&text);
    assert!(store.problems.is_empty(), "{:?}", store.problems.first());
    let me = me(&store);
    c.bench_function("Store::add_text (1k services)", |b| {
        b.iter(|| parse(black_box(&text)))
    });
    c.bench_function("compile (1k services)", |b| {
        b.iter(|| {
            compile(
                black_box(&store),
                black_box(&me),
                "bench",
                &CompileOptions::default(),
            )
        })
    });

    let config = compile(&store, &me, "bench", &CompileOptions::default())
        .expect("the generated store compiles");
    let names: Vec<String> = (0..SERVICES).map(|i| format!("svc-{i}")).collect();
    let mut i = 0;
    c.bench_function("ProxyConfig::cluster (1k clusters)", |b| {
        b.iter(|| {
            i = (i + 1) % names.len();
            config.cluster(black_box(&names[i])).is_some()
        })
    });
}

criterion_group!(control, benches);
criterion_main!(control);

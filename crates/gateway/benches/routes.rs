//! Route matching over 1,000 routes: the worst case (the last route matches) and a request
//! that matches early.

use std::collections::BTreeMap;

/// The downstream peer of the requests routed here.
const PEER: Downstream = Downstream {
    peer: std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40000),
    local: std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 80),
};

use bearing_gateway::{Decision, Downstream, Router};
use bearing_proxy_config::{
    GatewayHost, GatewayListener, GatewayProtocol, HeaderFilter, HttpMatch, HttpRoute, PathMatch,
    RouteAction, WeightedCluster,
};
use criterion::{criterion_group, criterion_main, Criterion};

fn router(n: usize) -> Router {
    let routes = (0..n)
        .map(|i| HttpRoute {
            origin: format!("route {i}"),
            matches: HttpMatch {
                path: Some(PathMatch::Prefix(format!("/service-{i}/api"))),
                ..HttpMatch::default()
            },
            request_headers: HeaderFilter::default(),
            response_headers: HeaderFilter::default(),
            action: RouteAction::Forward {
                idle_timeout: None,
                timeout: None,
                retry: None,
                backends: vec![WeightedCluster {
                    cluster: format!("backend-{i}"),
                    weight: 1,
                }],
                rewrite: None,
            },
            mirror: None,
            rate_limit: None,
            hash_policy: Vec::new(),
            route_kri: None,
        })
        .collect();
    let listener = GatewayListener {
        protocol: GatewayProtocol::Http,
        hosts: vec![GatewayHost {
            hostname: "*".into(),
            certificate: None,
            http_routes: routes,
            tcp_backends: Vec::new(),
        }],
        tags: BTreeMap::new(),
        connection_limit: None,
        cross_mesh: None,
        tls_params: None,
        compression: None,
    };
    Router::gateway(&listener).expect("valid routes")
}

fn parts(target: &str) -> http::request::Parts {
    let req = http::Request::builder()
        .uri(target)
        .header("host", "gateway.example.com")
        .header("user-agent", "bench")
        .body(())
        .expect("valid request");
    req.into_parts().0
}

fn bench(c: &mut Criterion) {
    let r = router(1000);
    let template_last = parts("/service-999/api/items?id=7");
    let template_first = parts("/service-3/api/items");
    let mut group = c.benchmark_group("gateway_route_1k");
    group.bench_function("last_route_matches", |b| {
        b.iter_batched_ref(
            || template_last.clone_parts(),
            |p| matches!(r.route(p, PEER), Decision::Forward { .. }),
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("early_route_matches", |b| {
        b.iter_batched_ref(
            || template_first.clone_parts(),
            |p| matches!(r.route(p, PEER), Decision::Forward { .. }),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// `Parts` is not `Clone`; benchmarks need a fresh copy per iteration.
trait CloneParts {
    fn clone_parts(&self) -> http::request::Parts;
}

impl CloneParts for http::request::Parts {
    fn clone_parts(&self) -> http::request::Parts {
        let mut req = http::Request::new(());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req.into_parts().0
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

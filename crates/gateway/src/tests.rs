use super::*;
use bearing_proxy_config::{
    GatewayHost, HeaderMatch, Mirror, QueryMatch, Rewrite, RouteAction, WeightedCluster,
};
use std::collections::BTreeMap;

/// The downstream peer of the requests routed here.
const PEER: Downstream = Downstream {
    peer: std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40000),
    local: std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 80),
};

fn backend(cluster: &str, weight: u32) -> WeightedCluster {
    WeightedCluster {
        cluster: cluster.into(),
        weight,
    }
}

fn route(origin: &str, matches: HttpMatch, cluster: &str) -> HttpRoute {
    HttpRoute {
        origin: origin.into(),
        matches,
        request_headers: HeaderFilter::default(),
        response_headers: HeaderFilter::default(),
        action: RouteAction::Forward {
            idle_timeout: None,
            timeout: None,
            retry: None,
            backends: vec![backend(cluster, 1)],
            rewrite: None,
        },
        mirror: None,
        rate_limit: None,
        hash_policy: Vec::new(),
        route_kri: None,
    }
}

fn path(p: PathMatch) -> HttpMatch {
    HttpMatch {
        path: Some(p),
        ..HttpMatch::default()
    }
}

fn host(hostname: &str, routes: Vec<HttpRoute>) -> GatewayHost {
    GatewayHost {
        hostname: hostname.into(),
        certificate: None,
        http_routes: routes,
        tcp_backends: Vec::new(),
    }
}

fn listener(protocol: GatewayProtocol, hosts: Vec<GatewayHost>) -> GatewayListener {
    GatewayListener {
        protocol,
        hosts,
        tags: BTreeMap::new(),
        connection_limit: None,
        cross_mesh: None,
        tls_params: None,
        compression: None,
    }
}

fn request(host: &str, target: &str) -> http::request::Parts {
    http::Request::builder()
        .uri(target)
        .header("host", host)
        .body(())
        .unwrap()
        .into_parts()
        .0
}

/// The cluster a request goes to, or the status it is answered with.
fn outcome(router: &Router, parts: &mut http::request::Parts) -> String {
    match router.route(parts, PEER) {
        Decision::Forward { cluster, .. } => cluster.to_string(),
        Decision::Respond {
            status, location, ..
        } => match location {
            Some(l) => format!("{} {}", status.as_u16(), l.to_str().unwrap()),
            None => status.as_u16().to_string(),
        },
    }
}

fn go(router: &Router, host: &str, target: &str) -> String {
    outcome(router, &mut request(host, target))
}

#[test]
fn hosts_exact_then_longest_wildcard_then_any() {
    let l = listener(
        GatewayProtocol::Http,
        vec![
            host("*", vec![route("any", HttpMatch::default(), "any")]),
            host(
                "*.example.com",
                vec![route("w", HttpMatch::default(), "wild")],
            ),
            host(
                "*.a.example.com",
                vec![route("wa", HttpMatch::default(), "wild-a")],
            ),
            host(
                "foo.example.com",
                vec![route("f", HttpMatch::default(), "foo")],
            ),
        ],
    );
    let r = Router::gateway(&l).unwrap();
    assert_eq!(go(&r, "FOO.example.com:8080", "/"), "foo");
    assert_eq!(go(&r, "x.a.example.com", "/"), "wild-a");
    assert_eq!(go(&r, "bar.example.com", "/"), "wild");
    assert_eq!(go(&r, "example.com", "/"), "any");
    assert_eq!(
        r.host_for("foo.example.com"),
        Some(3),
        "listener order index"
    );
    let only = Router::gateway(&listener(
        GatewayProtocol::Http,
        vec![host(
            "foo.example.com",
            vec![route("f", HttpMatch::default(), "foo")],
        )],
    ))
    .unwrap();
    assert_eq!(go(&only, "other.example.com", "/"), "404");
}

#[test]
fn paths_exact_prefix_regex_in_route_order() {
    let l = listener(
        GatewayProtocol::Http,
        vec![host(
            "*",
            vec![
                route("e", path(PathMatch::Exact("/api".into())), "exact"),
                route("p", path(PathMatch::Prefix("/api/".into())), "prefix"),
                route("r", path(PathMatch::Regex("/v[0-9]+/.*".into())), "regex"),
            ],
        )],
    );
    let r = Router::gateway(&l).unwrap();
    assert_eq!(go(&r, "h", "/api"), "exact");
    assert_eq!(go(&r, "h", "/api/x?q=1"), "prefix");
    assert_eq!(go(&r, "h", "/apix"), "404");
    assert_eq!(go(&r, "h", "/v2/x"), "regex");
    assert_eq!(go(&r, "h", "/xv2/x"), "404", "regex matches the whole path");
}

#[test]
fn method_headers_and_query() {
    let m = HttpMatch {
        method: Some("POST".into()),
        headers: vec![
            HeaderMatch {
                name: "x-env".into(),
                value: ValueMatch::Regex("stag(e|ing)".into()),
            },
            HeaderMatch {
                name: "x-debug".into(),
                value: ValueMatch::Absent,
            },
        ],
        query: vec![QueryMatch {
            name: "user".into(),
            value: ValueMatch::Exact("a b".into()),
        }],
        ..HttpMatch::default()
    };
    let present = HttpMatch {
        headers: vec![HeaderMatch {
            name: "x-debug".into(),
            value: ValueMatch::Present,
        }],
        ..HttpMatch::default()
    };
    let l = listener(
        GatewayProtocol::Http,
        vec![host(
            "*",
            vec![route("m", m, "matched"), route("d", present, "debug")],
        )],
    );
    let r = Router::gateway(&l).unwrap();
    let req = |method: &str, headers: &[(&str, &str)], target: &str| {
        let mut b = http::Request::builder()
            .method(method)
            .uri(target)
            .header("host", "h");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        outcome(&r, &mut b.body(()).unwrap().into_parts().0)
    };
    assert_eq!(
        req("POST", &[("x-env", "staging")], "/?user=a%20b"),
        "matched"
    );
    assert_eq!(req("GET", &[("x-env", "staging")], "/?user=a%20b"), "404");
    assert_eq!(req("POST", &[("x-env", "prod")], "/?user=a%20b"), "404");
    assert_eq!(req("POST", &[("x-env", "staging")], "/?user=ab"), "404");
    assert_eq!(
        req(
            "POST",
            &[("x-env", "prod"), ("x-env", "stage")],
            "/?x=1&user=a%20b"
        ),
        "matched",
        "any value of a repeated header"
    );
    assert_eq!(
        req(
            "POST",
            &[("x-env", "stage"), ("x-debug", "1")],
            "/?user=a%20b"
        ),
        "debug"
    );
}

#[test]
fn hygiene_before_matching() {
    let l = listener(
        GatewayProtocol::Http,
        vec![host(
            "*",
            vec![route("b", path(PathMatch::Exact("/b".into())), "b")],
        )],
    );
    let r = Router::gateway(&l).unwrap();
    let mut parts = request("h", "//a/../b?x=1");
    parts.headers.insert(
        "x-kuma-tags",
        HeaderValue::from_static("&kuma.io/service=evil&"),
    );
    assert_eq!(outcome(&r, &mut parts), "b");
    assert_eq!(parts.uri.path_and_query().unwrap().as_str(), "/b?x=1");
    assert!(parts.headers.get("x-kuma-tags").is_none());
    let mut bad = request("h", "/b");
    bad.headers
        .insert("x_forbidden", HeaderValue::from_static("1"));
    assert_eq!(outcome(&r, &mut bad), "400");
    assert_eq!(go(&r, "h", "/a%2Fb?q"), "307 /a/b?q");
}

/// Routes see, and backends get, the normal path however the client encoded it; a redirect
/// made by normalisation is path-only and stays on the origin.
#[test]
fn routes_match_and_forward_the_normal_path() {
    let l = listener(
        GatewayProtocol::Http,
        vec![host(
            "*",
            vec![
                route(
                    "public",
                    path(PathMatch::Prefix("/public".into())),
                    "public",
                ),
                route("admin", path(PathMatch::Exact("/admin".into())), "admin"),
            ],
        )],
    );
    let r = Router::gateway(&l).unwrap();
    let forwarded = |target: &str| {
        let mut parts = request("h", target);
        let outcome = outcome(&r, &mut parts);
        format!("{outcome} {}", parts.uri)
    };
    for (target, want) in [
        ("/public/a", "public /public/a"),
        ("/public/%2e/a?x=%2e%2e", "public /public/a?x=%2e%2e"),
        ("/public/a/%2E%2e/b", "public /public/b"),
        ("/public//a", "public /public/a"),
        ("/%70ublic/a%3bb", "public /public/a%3Bb"),
        ("/%61dmin", "admin /admin"),
        ("/public/../admin", "admin /admin"),
        ("/public/.%2e/admin", "admin /admin"),
        ("/public/%2e%2e/secret.txt", "404 /secret.txt"),
        ("/public/.%2E/secret.txt", "404 /secret.txt"),
        ("/public/%zz", "400 /public/%zz"),
        ("/public/%", "400 /public/%"),
        (
            "http://h/public/x/%2e%2e/%2e%2e/admin",
            "admin http://h/admin",
        ),
        // Found by the gateway_path fuzz target: no origin-form path, nothing to route.
        ("a.example:443", "400 a.example:443"),
        ("*", "400 *"),
    ] {
        assert_eq!(forwarded(target), want, "{target}");
    }
    for (target, location) in [
        ("/%2Fevil.example/x", "/evil.example/x"),
        ("/%2F%2Fevil.example/x?q=1", "/evil.example/x?q=1"),
        ("/%5Cevil.example", "/evil.example"),
        ("/%5c/evil.example", "/evil.example"),
        ("/\\%5Cevil.example", "/evil.example"),
        ("/public/a%2Fb", "/public/a/b"),
        ("/public/%2e%2e%2Fadmin", "/admin"),
        // Found by the gateway_path fuzz target: a raw non-ASCII query byte is escaped.
        ("/%2Fa?q=\u{e9}", "/a?q=%C3%A9"),
    ] {
        assert_eq!(go(&r, "h", target), format!("307 {location}"), "{target}");
    }
}

#[test]
fn filters_and_prefix_rewrite() {
    let mut rt = route("rw", path(PathMatch::Prefix("/api".into())), "svc");
    rt.request_headers = HeaderFilter {
        set: vec![("x-set".into(), "new".into())],
        add: vec![("x-add".into(), "two".into())],
        remove: vec!["x-gone".into()],
    };
    rt.response_headers = HeaderFilter {
        set: vec![("x-resp".into(), "yes".into())],
        add: vec![("x-more".into(), "1".into())],
        remove: vec!["x-origin".into()],
    };
    rt.action = RouteAction::Forward {
        idle_timeout: None,
        timeout: None,
        retry: None,
        backends: vec![WeightedCluster {
            cluster: "svc".into(),
            weight: 1,
        }],
        rewrite: Some(Rewrite {
            path: Some(PathRewrite::ReplacePrefixMatch("/".into())),
            host_to_backend_hostname: true,
            host: None,
        }),
    };
    let r = Router::gateway(&listener(GatewayProtocol::Http, vec![host("*", vec![rt])])).unwrap();
    let mut parts = request("h", "/api/x?q=1");
    parts
        .headers
        .insert("x-set", HeaderValue::from_static("old"));
    parts
        .headers
        .insert("x-add", HeaderValue::from_static("one"));
    parts
        .headers
        .insert("x-gone", HeaderValue::from_static("1"));
    let Decision::Forward {
        response_headers,
        endpoint_host,
        ..
    } = r.route(&mut parts, PEER)
    else {
        panic!("not forwarded")
    };
    // The endpoint's hostname is set once one is chosen; until then Host is the client's.
    assert!(endpoint_host);
    assert_eq!(parts.headers["host"], "h");
    assert_eq!(parts.uri.path_and_query().unwrap().as_str(), "/x?q=1");
    assert_eq!(parts.headers["x-set"], "new");
    let added: Vec<_> = parts.headers.get_all("x-add").iter().collect();
    assert_eq!(added, ["one", "two"]);
    assert!(parts.headers.get("x-gone").is_none());
    let mut resp = HeaderMap::new();
    response_headers.apply(&mut resp);
    assert_eq!(resp["x-resp"], "yes");
    // The same changes, for a head edited as bytes.
    assert!(response_headers.replaces(b"X-Resp") && response_headers.replaces(b"x-origin"));
    assert!(!response_headers.replaces(b"x-more"));
    let appended: Vec<_> = response_headers
        .appended()
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
        .collect();
    assert_eq!(appended, [("x-resp", "yes"), ("x-more", "1")]);
}

#[test]
fn redirects_build_the_location_from_the_request() {
    let redirect = |r: Redirect| {
        let mut rt = route("re", path(PathMatch::Prefix("/old".into())), "unused");
        rt.action = RouteAction::Redirect(r);
        rt
    };
    let to_https = redirect(Redirect {
        scheme: Some("https".into()),
        hostname: None,
        port: None,
        status: 301,
        path: None,
        strip_query: true,
    });
    let moved = redirect(Redirect {
        scheme: None,
        hostname: Some("new.example.com".into()),
        port: Some(8443),
        status: 302,
        path: Some(PathRewrite::ReplacePrefixMatch("/new".into())),
        strip_query: true,
    });
    let r = Router::gateway(&listener(
        GatewayProtocol::Http,
        vec![
            host("a.example.com", vec![to_https]),
            host("*", vec![moved]),
        ],
    ))
    .unwrap();
    assert_eq!(
        go(&r, "a.example.com:8080", "/old/x?q=1"),
        "301 https://a.example.com/old/x",
        "the port and the query are dropped"
    );
    assert_eq!(
        go(&r, "b.example.com:8080", "/old/x"),
        "302 http://new.example.com:8443/new/x"
    );
    let tls = Router::gateway(&listener(
        GatewayProtocol::Https,
        vec![host(
            "*",
            vec![redirect(Redirect {
                scheme: None,
                hostname: None,
                port: Some(443),
                status: 308,
                path: Some(PathRewrite::ReplaceFull("/".into())),
                strip_query: true,
            })],
        )],
    ))
    .unwrap();
    assert_eq!(
        go(&tls, "c.example.com", "/old"),
        "308 https://c.example.com/"
    );
}

#[test]
fn weights_mirrors_and_tcp_backends() {
    let mut rt = route("w", HttpMatch::default(), "unused");
    rt.action = RouteAction::Forward {
        idle_timeout: None,
        timeout: None,
        retry: None,
        backends: vec![backend("v1", 1), backend("v2", 3)],
        rewrite: None,
    };
    rt.mirror = Some(Mirror {
        cluster: "shadow".into(),
        percentage: 50.0,
    });
    let mut tcp = host("*", Vec::new());
    tcp.tcp_backends = vec![backend("redis-a", 2), backend("redis-b", 0)];
    let r = Router::gateway(&listener(GatewayProtocol::Http, vec![host("*", vec![rt])])).unwrap();
    let (mut v2, mut mirrored) = (0, 0);
    for _ in 0..1000 {
        match r.route(&mut request("h", "/"), PEER) {
            Decision::Forward {
                cluster, mirror, ..
            } => {
                v2 += usize::from(cluster == "v2");
                mirrored += usize::from(mirror == Some("shadow"));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((v2, mirrored), (750, 500));
    let t = Router::gateway(&listener(GatewayProtocol::Tcp, vec![tcp])).unwrap();
    assert!((0..10).all(|_| t.tcp_backend(0).unwrap().cluster == "redis-a"));
    assert!(t.tcp_backend(1).is_none());
}

#[test]
fn invalid_regex_names_its_route() {
    let l = listener(
        GatewayProtocol::Http,
        vec![host(
            "*",
            vec![route(
                "MeshGatewayRoute/r: conf.http.rules[0]",
                path(PathMatch::Regex("(".into())),
                "x",
            )],
        )],
    );
    let err = Router::gateway(&l).unwrap_err();
    assert!(
        err.starts_with("MeshGatewayRoute/r: conf.http.rules[0]: invalid regular expression"),
        "{err}"
    );
}

fn table(hosts: Vec<(&[&str], Vec<HttpRoute>)>) -> Router {
    let virtual_hosts = hosts
        .into_iter()
        .enumerate()
        .map(|(i, (domains, routes))| bearing_proxy_config::VirtualHost {
            name: format!("vh{i}"),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes,
        })
        .collect();
    Router::table(&bearing_proxy_config::RouteTable {
        name: "outbound:backend".into(),
        virtual_hosts,
    })
    .unwrap()
}

/// A sidecar route table: Envoy's domain order (exact, suffix, prefix wildcard, `*`), the
/// Host's port seen by the domains, and no gateway hygiene.
#[test]
fn route_tables_pick_virtual_hosts_as_envoy_does() {
    let r = table(vec![
        (&["*"], vec![route("any", HttpMatch::default(), "any")]),
        (&["api.*"], vec![route("p", HttpMatch::default(), "prefix")]),
        (
            &["*.example.com", "web:8080"],
            vec![route("s", HttpMatch::default(), "suffix")],
        ),
        (
            &["api.example.com"],
            vec![route("e", HttpMatch::default(), "exact")],
        ),
    ]);
    assert_eq!(go(&r, "API.example.com", "/"), "exact");
    assert_eq!(go(&r, "x.example.com", "/"), "suffix");
    assert_eq!(go(&r, "api.internal", "/"), "prefix");
    assert_eq!(
        go(&r, "web:8080", "/"),
        "suffix",
        "the port is part of the domain"
    );
    assert_eq!(go(&r, "web", "/"), "any");
    // No gateway hygiene: underscores pass, the path is matched as sent.
    let mut req = request("web", "/a/../b");
    req.headers.insert("x_under", HeaderValue::from_static("1"));
    assert_eq!(outcome(&r, &mut req), "any");
    assert_eq!(req.uri.path(), "/a/../b");
}

/// Envoy's `prefix` is a string prefix, unlike the gateway's segment prefix; its rewrite
/// replaces the matched bytes; regex rewrites replace every match in the path; values match
/// by prefix, suffix and substring.
#[test]
fn route_table_matches_and_rewrites() {
    let mut string_prefix = route("sp", path(PathMatch::StringPrefix("/v1/".into())), "v1");
    string_prefix.action = RouteAction::Forward {
        idle_timeout: None,
        timeout: None,
        retry: None,
        backends: vec![backend("v1", 1)],
        rewrite: Some(Rewrite {
            path: Some(PathRewrite::ReplacePrefixMatch("/v2".into())),
            host_to_backend_hostname: false,
            host: Some("backend.internal".into()),
        }),
    };
    let mut exact = route("ex", path(PathMatch::Exact("/v1".into())), "v1");
    exact.action = RouteAction::Forward {
        idle_timeout: None,
        timeout: None,
        retry: None,
        backends: vec![backend("v1", 1)],
        rewrite: Some(Rewrite {
            path: Some(PathRewrite::Regex {
                pattern: "v(\\d)".into(),
                substitution: "version-${1}".into(),
            }),
            ..Rewrite::default()
        }),
    };
    let headers = route(
        "h",
        HttpMatch {
            path: Some(PathMatch::StringPrefix("/".into())),
            headers: vec![
                HeaderMatch {
                    name: "x-a".into(),
                    value: ValueMatch::Prefix("pre".into()),
                },
                HeaderMatch {
                    name: "x-b".into(),
                    value: ValueMatch::Suffix("fix".into()),
                },
                HeaderMatch {
                    name: "x-c".into(),
                    value: ValueMatch::Contains("mid".into()),
                },
            ],
            ..HttpMatch::default()
        },
        "headers",
    );
    let mut direct = route("d", path(PathMatch::Exact("/gone".into())), "unused");
    direct.action = RouteAction::DirectResponse {
        status: 410,
        body: "gone for good".into(),
    };
    let mut moved = route("m", path(PathMatch::Exact("/old".into())), "unused");
    moved.action = RouteAction::Redirect(Redirect {
        scheme: None,
        hostname: Some("new".into()),
        port: None,
        status: 302,
        path: Some(PathRewrite::ReplaceFull("/new".into())),
        strip_query: false,
    });
    let r = table(vec![(
        &["*"],
        vec![
            string_prefix,
            exact,
            direct,
            moved,
            headers,
            route("rest", HttpMatch::default(), "rest"),
        ],
    )]);
    let mut req = request("web", "/v1/x?q=1");
    assert_eq!(outcome(&r, &mut req), "v1");
    assert_eq!(
        req.uri, "/v2x?q=1",
        "the matched bytes replaced as they are"
    );
    assert_eq!(req.headers["host"], "backend.internal");
    let mut req = request("web", "/v1");
    assert_eq!(outcome(&r, &mut req), "v1");
    assert_eq!(req.uri, "/version-1");
    assert_eq!(go(&r, "web", "/v1x"), "rest", "not the exact path");
    match r.route(&mut request("web", "/gone"), PEER) {
        Decision::Respond { status, body, .. } => {
            assert_eq!((status.as_u16(), body), (410, Some("gone for good")))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        go(&r, "web:8080", "/old?a=b"),
        "302 http://new:8080/new?a=b"
    );
    let mut req = request("web", "/h");
    for (n, v) in [("x-a", "prefix"), ("x-b", "suffix"), ("x-c", "amidst")] {
        req.headers.insert(n, HeaderValue::from_static(v));
    }
    assert_eq!(outcome(&r, &mut req), "headers");
    req.headers.insert("x-c", HeaderValue::from_static("none"));
    assert_eq!(outcome(&r, &mut req), "rest");
}

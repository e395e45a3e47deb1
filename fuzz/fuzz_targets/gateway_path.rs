//! Request paths as a builtin gateway listener treats them: `bearing_gateway::Router::
//! route`, which applies Kuma's gateway hygiene (escaped slashes, path normalisation) before
//! matching routes. Written against the routing API so it keeps working when the normaliser
//! behind it changes.
//!
//! Properties: a forwarded path starts with `/` and has no empty, `.` or `..` segment; routing
//! it again forwards to the same cluster with the same path (normalisation is idempotent); an
//! `EXACT /admin` route only ever sees `/admin` and a `PREFIX /public` route only paths under
//! it. Pending (skippable): a target that is not origin-form (`+`, `a.example:443`) is not
//! forwarded as a path (`authority`, the class of issue 23 item 12's `CONNECT /`); no forwarded segment decodes to a dot segment (`pct`, issue 23
//! item 1); a redirect made by normalisation stays on the same origin and is itself normal
//! (`redirect`, item 2).
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use bearing_fuzz::skipped;
use bearing_gateway::{Decision, Router};
use bearing_proxy_config::{
    GatewayHost, GatewayListener, GatewayProtocol, HeaderFilter, HttpMatch, HttpRoute, PathMatch,
    PathRewrite, Rewrite, RouteAction, WeightedCluster,
};
use libfuzzer_sys::fuzz_target;

fn route(path: PathMatch, cluster: &str, rewrite: Option<PathRewrite>) -> HttpRoute {
    HttpRoute {
        origin: cluster.into(),
        matches: HttpMatch {
            path: Some(path),
            ..HttpMatch::default()
        },
        request_headers: HeaderFilter::default(),
        response_headers: HeaderFilter::default(),
        action: RouteAction::Forward {
            timeout: None,
            retry: None,
            backends: vec![WeightedCluster {
                cluster: cluster.into(),
                weight: 1,
                hostname: None,
            }],
            rewrite: rewrite.map(|path| Rewrite {
                path: Some(path),
                host_to_backend_hostname: false,
                host: None,
            }),
        },
        mirror: None,
    }
}

fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let routes = vec![
            route(PathMatch::Exact("/admin".into()), "admin", None),
            route(PathMatch::Prefix("/public".into()), "public", None),
            route(
                PathMatch::Prefix("/api".into()),
                "api",
                Some(PathRewrite::ReplacePrefixMatch("/".into())),
            ),
            route(PathMatch::Regex("/re/[a-z]+".into()), "re", None),
            route(PathMatch::Prefix("/".into()), "root", None),
        ];
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
        };
        Router::gateway(&listener).unwrap_or_else(|e| panic!("fuzz router: {e}"))
    })
}

fn request(target: &[u8]) -> Option<http::request::Parts> {
    let request = http::Request::builder()
        .uri(target)
        .header("host", "gw.example")
        .body(())
        .ok()?;
    Some(request.into_parts().0)
}

/// A segment that is a dot segment once its percent-escapes of `.` are decoded.
fn decodes_to_dots(segment: &str) -> bool {
    let decoded = segment.replace("%2e", ".").replace("%2E", ".");
    decoded == "." || decoded == ".."
}

fn check_normal(path: &str) {
    assert!(path.starts_with('/'), "forwarded path {path:?}");
    let body = path[1..].strip_suffix('/').unwrap_or(&path[1..]);
    if !body.is_empty() {
        for segment in body.split('/') {
            assert!(
                !matches!(segment, "" | "." | ".."),
                "segment {segment:?} in {path:?}"
            );
            if !skipped("pct") {
                assert!(!decodes_to_dots(segment), "encoded dot segment in {path:?}");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(mut parts) = request(data) else {
        return;
    };
    let router = router();
    match router.route(&mut parts) {
        Decision::Forward { cluster, .. } => {
            let path = parts.uri.path().to_string();
            if path == "*" {
                return; // `OPTIONS *`: not a path
            }
            if !path.starts_with('/') {
                assert!(
                    skipped("authority"),
                    "target {:?} forwarded with path {path:?}",
                    parts.uri
                );
                return;
            }
            check_normal(&path);
            match cluster {
                "admin" => assert_eq!(path, "/admin"),
                "public" => assert!(
                    path == "/public" || path.starts_with("/public/"),
                    "{path:?} routed to /public"
                ),
                "api" => return, // rewritten: routing it again is another request
                _ => {}
            }
            let target = match parts.uri.query() {
                Some(query) => format!("{path}?{query}"),
                None => path.clone(),
            };
            let Some(mut again) = request(target.as_bytes()) else {
                panic!("forwarded target {target:?} is not a valid URI");
            };
            match router.route(&mut again) {
                Decision::Forward {
                    cluster: second, ..
                } => {
                    assert_eq!(
                        second, cluster,
                        "{target:?} routes elsewhere the second time"
                    );
                    assert_eq!(again.uri.path(), path, "normalisation is not idempotent");
                }
                Decision::Respond { status, .. } => {
                    panic!("{target:?} answered {status} the second time")
                }
            }
        }
        Decision::Respond {
            status, location, ..
        } => {
            let Some(location) = location else {
                return;
            };
            assert!(status.is_redirection());
            if skipped("redirect") {
                return;
            }
            let location = location
                .to_str()
                .unwrap_or_else(|_| panic!("non-ASCII Location {location:?}"));
            assert!(location.starts_with('/'), "redirect to {location:?}");
            assert!(
                !location.starts_with("//") && !location.starts_with("/\\"),
                "off-site redirect to {location:?}"
            );
            if let Some(mut next) = request(location.as_bytes()) {
                assert!(
                    matches!(router.route(&mut next), Decision::Forward { .. }),
                    "{location:?} redirects again"
                );
            }
        }
    }
});

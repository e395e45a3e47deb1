//! `bearing-gateway`: HTTP routing, for Bearing's builtin gateway listeners and for sidecar
//! route tables (kuma-cp's MeshHTTPRoute over xDS): one router for both.
//!
//! [`Router::gateway`] prepares a compiled [`GatewayListener`], [`Router::table`] a sidecar's
//! [`RouteTable`], once per config (regexes, header names and values, weight tables);
//! [`Router::route`] then decides per request, with no lock and no allocation unless the
//! request is rewritten. Before matching, a gateway's requests get Kuma's gateway hygiene (its
//! Envoy config for builtin gateways): header names with `_` are refused (400), paths are
//! normalised ([`normalize_path`]: unreserved characters decoded, dot segments, encoded ones
//! included, removed, slashes merged; an invalid escape is a 400, an encoded slash a redirect
//! to the normal path) and `x-kuma-tags` is removed. Routes match the normal path, and it is
//! what the backend gets. A sidecar's route table matches the request as it came, as Kuma's
//! sidecar Envoy does (no hygiene), and its domains see the Host with its port.

mod hash;
mod path;
mod pick;

use std::borrow::Cow;
use std::time::Duration;

use bearing_proxy_config::{
    GatewayListener, GatewayProtocol, HeaderFilter, HeaderMatch, HttpMatch, HttpRoute, PathMatch,
    PathRewrite, Redirect, RetryPolicy, RouteAction, RouteTable, ValueMatch, WeightedCluster,
};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::StatusCode;
use regex::Regex;

use crate::hash::RequestHash;
use crate::pick::Share;

pub use crate::hash::{Downstream, SetCookies};

pub use crate::pick::Weighted;

pub use crate::path::{normalize as normalize_path, InvalidPath, NormalPath};

/// Kuma's internal header carrying source tags; never forwarded by a gateway.
const KUMA_TAGS: HeaderName = HeaderName::from_static("x-kuma-tags");

/// What to do with one request.
#[derive(Debug)]
pub enum Decision<'r> {
    /// Answer directly: 404 (no host or route), 400 (refused request), 503 (no backend with
    /// weight), a redirect (3xx with `location`), or a route's direct response (`body`).
    Respond {
        /// Response status.
        status: StatusCode,
        /// `Location` of a redirect.
        location: Option<HeaderValue>,
        /// Body of a direct response; `None`: the status's reason.
        body: Option<&'r str>,
        /// Changes to make to the response headers (those of the route that answers).
        response_headers: Option<&'r HeaderEdits>,
        /// The route that answers, if one does.
        route: Option<RouteAt>,
    },
    /// Forward the (already rewritten) request.
    Forward {
        /// Cluster to send it to.
        cluster: &'r str,
        /// Changes to make to the response headers.
        response_headers: &'r HeaderEdits,
        /// Cluster that gets a copy of the request, if this one is mirrored.
        mirror: Option<&'r str>,
        /// The route that matched (`MeshGatewayRoute/<name>: conf.http.rules[i]...`).
        origin: &'r str,
        /// The route's response timeout (zero: none; `None`: the cluster's), for
        /// `bearing_proxy_config::response_timeout`.
        timeout: Option<Duration>,
        /// The route's retry policy (`None`: no retries).
        retry: Option<&'r RetryPolicy>,
        /// The route's stream idle timeout (zero: none; `None`: the listener's), for
        /// `bearing_proxy_config::stream_idle_timeout`.
        idle_timeout: Option<Duration>,
        /// Host becomes the hostname of the endpoint the request is sent to, when it has
        /// one (`Rewrite::host_to_backend_hostname`): known only once an endpoint is chosen.
        endpoint_host: bool,
        /// The route that matched.
        route: RouteAt,
        /// The request's hash by the route's hash policies, for a consistent-hashing
        /// cluster (`None`: no policy, or none read anything).
        hash: Option<u64>,
        /// The cookies the hash policies generated (a cookie policy with a `ttl` whose
        /// cookie the request lacks), for the response from upstream, where the cluster
        /// hashes requests (Envoy evaluates the policies only then).
        set_cookies: Option<SetCookies<'r>>,
    },
}

/// Where a route is: the index of its host (in `GatewayListener::hosts` or
/// `RouteTable::virtual_hosts`) and its index among the host's routes, for state a caller
/// keeps per route (a rate limit's bucket).
pub type RouteAt = (usize, usize);

/// A listener's hosts and routes, ready for requests.
#[derive(Debug)]
pub struct Router {
    /// In the listener's order, so indices match `GatewayListener::hosts` or
    /// `RouteTable::virtual_hosts`.
    hosts: Vec<Host>,
    /// Every name of every host with the host's index, most specific first: exact names,
    /// suffix wildcards by length, prefix wildcards by length, `*`.
    order: Vec<(HostName, usize)>,
    /// Scheme of redirect `Location`s that do not set one.
    scheme: Scheme,
    /// A builtin gateway's: Kuma's gateway hygiene before matching, and hosts matched
    /// without the Host's port. Else a sidecar route table's: the request as it came.
    gateway: bool,
}

#[derive(Debug)]
struct Host {
    routes: Vec<Route>,
    tcp_backends: Vec<WeightedCluster>,
    tcp_pick: Weighted,
}

#[derive(Debug)]
enum HostName {
    Exact(String),
    /// `*.example.com` as `.example.com` (any name ending so, Envoy's suffix wildcard).
    Suffix(String),
    /// `foo.*` as `foo.` (any name starting so, Envoy's prefix wildcard).
    Prefix(String),
    Any,
}

impl HostName {
    fn parse(hostname: &str) -> HostName {
        match hostname {
            "*" | "" => HostName::Any,
            h => match (h.strip_prefix('*'), h.strip_suffix('*')) {
                (Some(suffix), _) => HostName::Suffix(suffix.to_ascii_lowercase()),
                (None, Some(prefix)) => HostName::Prefix(prefix.to_ascii_lowercase()),
                (None, None) => HostName::Exact(h.to_ascii_lowercase()),
            },
        }
    }

    /// Exact names first, then suffix wildcards by length (longest first), then prefix
    /// wildcards by length, then `*` (Envoy's virtual host order).
    fn rank(&self) -> (u8, std::cmp::Reverse<usize>) {
        match self {
            HostName::Exact(_) => (0, std::cmp::Reverse(0)),
            HostName::Suffix(s) => (1, std::cmp::Reverse(s.len())),
            HostName::Prefix(p) => (2, std::cmp::Reverse(p.len())),
            HostName::Any => (3, std::cmp::Reverse(0)),
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            HostName::Exact(h) => name.eq_ignore_ascii_case(h),
            HostName::Suffix(s) => {
                name.len() > s.len()
                    && name
                        .as_bytes()
                        .get(name.len() - s.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(s.as_bytes()))
            }
            HostName::Prefix(p) => {
                name.len() > p.len()
                    && name
                        .as_bytes()
                        .get(..p.len())
                        .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes()))
            }
            HostName::Any => true,
        }
    }
}

#[derive(Debug)]
struct Route {
    origin: String,
    path: Option<PathCondition>,
    method: Option<http::Method>,
    headers: Vec<HeaderCondition>,
    query: Vec<(String, Condition)>,
    request_headers: HeaderEdits,
    response_headers: HeaderEdits,
    action: Action,
    mirror: Option<(String, Share)>,
    /// What a forwarded request is hashed by (empty: nothing).
    hash: Box<[RequestHash]>,
}

#[derive(Debug)]
enum PathCondition {
    Exact(String),
    /// Kept as [`path::prefix_key`].
    Prefix(String),
    StringPrefix(String),
    Regex(Regex),
}

/// A header or query value condition, prepared: a regular expression compiled, any other
/// evaluated as the model's `ValueMatch`.
#[derive(Debug)]
enum Condition {
    Plain(ValueMatch),
    Regex(Regex),
}

impl Condition {
    fn holds(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Condition::Plain(m), v) => m.holds(v),
            (Condition::Regex(re), Some(v)) => re.is_match(v),
            (Condition::Regex(_), None) => false,
        }
    }
}

#[derive(Debug)]
enum Action {
    Forward {
        backends: Vec<WeightedCluster>,
        pick: Weighted,
        path: Option<PathEdit>,
        host_to_backend_hostname: bool,
        host: Option<HeaderValue>,
        timeout: Option<Duration>,
        idle_timeout: Option<Duration>,
        retry: Option<RetryPolicy>,
    },
    Redirect(Redirect, Option<PathEdit>),
    DirectResponse(StatusCode, String),
}

/// A path rewrite, its regex compiled.
#[derive(Debug)]
enum PathEdit {
    ReplaceFull(String),
    ReplacePrefixMatch(String),
    Regex(Regex, String),
}

impl PathEdit {
    fn new(rewrite: &PathRewrite, origin: &str) -> Result<PathEdit, String> {
        Ok(match rewrite {
            PathRewrite::ReplaceFull(p) => PathEdit::ReplaceFull(p.clone()),
            PathRewrite::ReplacePrefixMatch(p) => PathEdit::ReplacePrefixMatch(p.clone()),
            PathRewrite::Regex {
                pattern,
                substitution,
            } => PathEdit::Regex(
                Regex::new(pattern).map_err(|e| {
                    format!("{origin}: invalid regular expression {pattern:?}: {e}")
                })?,
                substitution.clone(),
            ),
        })
    }
}

/// Header changes, parsed once: set replaces, add appends, remove deletes.
#[derive(Debug, Default)]
pub struct HeaderEdits {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderEdits {
    /// `filter` parsed; a name or value HTTP cannot carry is an error naming `origin`.
    pub fn new(filter: &HeaderFilter, origin: &str) -> Result<HeaderEdits, String> {
        let pair = |(name, value): &(String, String)| {
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("{origin}: {name:?} is not a valid header name"))?;
            let v = HeaderValue::from_str(value)
                .map_err(|_| format!("{origin}: header {name}: {value:?} is not a valid value"))?;
            Ok::<_, String>((n, v))
        };
        Ok(HeaderEdits {
            set: filter.set.iter().map(pair).collect::<Result<_, _>>()?,
            add: filter.add.iter().map(pair).collect::<Result<_, _>>()?,
            remove: filter
                .remove
                .iter()
                .map(|name| {
                    HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("{origin}: {name:?} is not a valid header name"))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether the changes remove or replace the field `name` (any case): what a head edited
    /// as bytes drops before [`HeaderEdits::appended`] adds.
    pub fn replaces(&self, name: &[u8]) -> bool {
        let named = |n: &HeaderName| n.as_str().as_bytes().eq_ignore_ascii_case(name);
        self.remove.iter().any(named) || self.set.iter().any(|(n, _)| named(n))
    }

    /// The fields the changes put in a head, set ones first (in Envoy's order, as
    /// [`HeaderEdits::apply`]).
    pub fn appended(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.set.iter().chain(&self.add).map(|(n, v)| (n, v))
    }

    /// Applies the changes to `headers`, in Envoy's order: remove, then set, then add.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }
}

/// Whole-value regex (Kuma's REGEX matches are full matches, RE2 syntax).
fn whole(pattern: &str, origin: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("{origin}: invalid regular expression {pattern:?}: {e}"))
}

fn condition(value: &ValueMatch, origin: &str) -> Result<Condition, String> {
    Ok(match value {
        ValueMatch::Regex(p) => Condition::Regex(whole(p, origin)?),
        plain => Condition::Plain(plain.clone()),
    })
}

impl Route {
    fn new(r: &HttpRoute) -> Result<Route, String> {
        let origin = r.origin.as_str();
        let HttpMatch {
            path,
            method,
            headers,
            query,
        } = &r.matches;
        let path = match path {
            None => None,
            Some(PathMatch::Exact(p)) => Some(PathCondition::Exact(p.clone())),
            Some(PathMatch::Prefix(p)) => Some(PathCondition::Prefix(path::prefix_key(p).into())),
            Some(PathMatch::StringPrefix(p)) => Some(PathCondition::StringPrefix(p.clone())),
            Some(PathMatch::Regex(p)) => Some(PathCondition::Regex(whole(p, origin)?)),
        };
        let method = method
            .as_deref()
            .map(|m| {
                http::Method::from_bytes(m.as_bytes())
                    .map_err(|_| format!("{origin}: {m:?} is not an HTTP method"))
            })
            .transpose()?;
        let headers = headers
            .iter()
            .map(|h| HeaderCondition::new(h, origin))
            .collect::<Result<_, String>>()?;
        let query = query
            .iter()
            .map(|q| Ok((q.name.clone(), condition(&q.value, origin)?)))
            .collect::<Result<_, String>>()?;
        let path_edit =
            |rewrite: Option<&PathRewrite>| rewrite.map(|rw| PathEdit::new(rw, origin)).transpose();
        let action = match &r.action {
            RouteAction::Forward {
                backends,
                rewrite,
                timeout,
                idle_timeout,
                retry,
            } => Action::Forward {
                timeout: *timeout,
                idle_timeout: *idle_timeout,
                retry: retry.clone(),
                pick: Weighted::new(backends.iter().map(|b| b.weight)),
                backends: backends.clone(),
                path: path_edit(rewrite.as_ref().and_then(|rw| rw.path.as_ref()))?,
                host_to_backend_hostname: rewrite
                    .as_ref()
                    .is_some_and(|rw| rw.host_to_backend_hostname),
                host: rewrite
                    .as_ref()
                    .and_then(|rw| rw.host.as_deref())
                    .map(|h| {
                        HeaderValue::from_str(h)
                            .map_err(|_| format!("{origin}: {h:?} is not a valid host"))
                    })
                    .transpose()?,
            },
            RouteAction::Redirect(redirect) => {
                Action::Redirect(redirect.clone(), path_edit(redirect.path.as_ref())?)
            }
            RouteAction::DirectResponse { status, body } => Action::DirectResponse(
                StatusCode::from_u16(*status)
                    .map_err(|_| format!("{origin}: {status} is not an HTTP status"))?,
                body.clone(),
            ),
        };
        Ok(Route {
            origin: r.origin.clone(),
            path,
            method,
            headers,
            query,
            request_headers: HeaderEdits::new(&r.request_headers, origin)?,
            response_headers: HeaderEdits::new(&r.response_headers, origin)?,
            action,
            mirror: r
                .mirror
                .as_ref()
                .map(|m| (m.cluster.clone(), Share::new(m.percentage))),
            hash: match r.hash_policy.len() {
                0..=64 => r
                    .hash_policy
                    .iter()
                    .map(|p| RequestHash::new(p, origin))
                    .collect::<Result<_, String>>()?,
                n => return Err(format!("{origin}: {n} hash policies, more than 64")),
            },
        })
    }

    fn matches(&self, parts: &http::request::Parts, path: &str) -> bool {
        let path_ok = match &self.path {
            None => true,
            Some(PathCondition::Exact(p)) => path == p,
            Some(PathCondition::Prefix(p)) => path::prefix_matches(p, path),
            Some(PathCondition::StringPrefix(p)) => path.starts_with(p.as_str()),
            Some(PathCondition::Regex(re)) => re.is_match(path),
        };
        path_ok
            && self.method.as_ref().is_none_or(|m| parts.method == *m)
            && self.headers.iter().all(|h| h.holds(&parts.headers))
            && self
                .query
                .iter()
                .all(|(name, c)| query_holds(parts, name, c))
    }
}

/// A request header condition (a route's, or a fault filter's), prepared: its regular
/// expression compiled.
#[derive(Debug)]
pub struct HeaderCondition {
    name: HeaderName,
    condition: Condition,
}

impl HeaderCondition {
    /// `h` prepared; `origin` names the resource in an error.
    pub fn new(h: &HeaderMatch, origin: &str) -> Result<HeaderCondition, String> {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("{origin}: {:?} is not a valid header name", h.name))?;
        Ok(HeaderCondition {
            name,
            condition: condition(&h.value, origin)?,
        })
    }

    /// Whether `headers` meet it: any of the header's values does (or, for `Absent`, there
    /// is none).
    pub fn holds(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter().peekable();
        if values.peek().is_none() {
            return self.condition.holds(None);
        }
        values.any(|v| self.condition.holds(Some(v.to_str().unwrap_or(""))))
    }
}

/// A query condition holds for the first parameter of that name (percent-decoded), as
/// Envoy's query parameter matcher does.
fn query_holds(parts: &http::request::Parts, name: &str, c: &Condition) -> bool {
    let value = parts.uri.query().and_then(|q| {
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (path::decode_component(k) == name).then(|| path::decode_component(v))
        })
    });
    c.holds(value.as_deref())
}

/// Routes of one host, prepared.
fn routes(routes: &[HttpRoute]) -> Result<Vec<Route>, String> {
    routes.iter().map(Route::new).collect()
}

impl Router {
    /// Prepares a gateway `listener`'s hosts and routes; an invalid regex, header or method
    /// is an error naming the route it is in.
    pub fn gateway(listener: &GatewayListener) -> Result<Router, String> {
        let hosts: Vec<Host> = listener
            .hosts
            .iter()
            .map(|h| {
                Ok(Host {
                    routes: routes(&h.http_routes)?,
                    tcp_pick: Weighted::new(h.tcp_backends.iter().map(|b| b.weight)),
                    tcp_backends: h.tcp_backends.clone(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let names = listener
            .hosts
            .iter()
            .map(|h| std::slice::from_ref(&h.hostname));
        let scheme = match listener.protocol {
            GatewayProtocol::Https | GatewayProtocol::TlsTerminate => Scheme::HTTPS,
            _ => Scheme::HTTP,
        };
        Ok(Router {
            order: order(names),
            hosts,
            scheme,
            gateway: true,
        })
    }

    /// Prepares a sidecar's route table; an invalid regex, header, method or status is an
    /// error naming the route it is in.
    pub fn table(table: &RouteTable) -> Result<Router, String> {
        let hosts = table
            .virtual_hosts
            .iter()
            .map(|v| {
                Ok(Host {
                    routes: routes(&v.routes)?,
                    tcp_pick: Weighted::new([]),
                    tcp_backends: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let names = table.virtual_hosts.iter().map(|v| v.domains.as_slice());
        Ok(Router {
            order: order(names),
            hosts,
            scheme: Scheme::HTTP,
            gateway: false,
        })
    }

    /// The index (in `GatewayListener::hosts` or `RouteTable::virtual_hosts`) of the host
    /// serving `name` (an SNI, or a Host header), matched case-insensitively: exact names,
    /// then suffix wildcards, then prefix wildcards, longest first, then `*`. A gateway
    /// ignores the Host's port; a route table's domains see it, as Envoy's do.
    pub fn host_for(&self, name: &str) -> Option<usize> {
        let name = if self.gateway { strip_port(name) } else { name };
        let name = name.strip_suffix('.').unwrap_or(name);
        self.order
            .iter()
            .find(|(host, _)| host.matches(name))
            .map(|(_, i)| *i)
    }

    /// The next TCP backend of host `host`, by weight.
    pub fn tcp_backend(&self, host: usize) -> Option<&WeightedCluster> {
        let h = self.hosts.get(host)?;
        h.tcp_backends.get(h.tcp_pick.pick()?)
    }

    /// Routes one request on `downstream`: a gateway's hygiene, host, first matching route;
    /// a forwarded request is hashed by its route's hash policies, then has its route's
    /// request header changes and rewrite applied in place.
    pub fn route<'r>(
        &'r self,
        parts: &mut http::request::Parts,
        downstream: Downstream,
    ) -> Decision<'r> {
        if self.gateway {
            if let Some(refused) = self.hygiene(parts) {
                return refused;
            }
        }
        let Some(host) = request_host(parts).and_then(|h| self.host_for(h)) else {
            return respond(StatusCode::NOT_FOUND);
        };
        let (host_at, host) = (host, &self.hosts[host]);
        let path = parts.uri.path();
        let Some((route_at, route)) = host
            .routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(parts, path))
        else {
            return respond(StatusCode::NOT_FOUND);
        };
        let at = (host_at, route_at);
        let (hash, set_cookies) = match route.hash.is_empty() {
            true => (None, None),
            false => hash::request_hash(&route.hash, parts, &downstream),
        };
        route.request_headers.apply(&mut parts.headers);
        match &route.action {
            Action::Redirect(redirect, path) => match self.redirect(parts, route, redirect, path) {
                Decision::Respond {
                    status,
                    location,
                    body,
                    response_headers,
                    ..
                } => Decision::Respond {
                    status,
                    location,
                    body,
                    response_headers,
                    route: Some(at),
                },
                forward => forward,
            },
            Action::DirectResponse(status, body) => Decision::Respond {
                status: *status,
                location: None,
                body: Some(body),
                response_headers: Some(&route.response_headers),
                route: Some(at),
            },
            Action::Forward {
                backends,
                pick,
                path: rewrite,
                host_to_backend_hostname,
                host,
                timeout,
                idle_timeout,
                retry,
            } => {
                let Some(backend) = pick.pick().and_then(|i| backends.get(i)) else {
                    return respond(StatusCode::SERVICE_UNAVAILABLE);
                };
                if let Some(rw) = rewrite {
                    let new = rewritten_path(route, rw, parts.uri.path());
                    if !set_path(&mut parts.uri, &new) {
                        return respond(StatusCode::INTERNAL_SERVER_ERROR);
                    }
                }
                if let Some(host) = host.as_ref().and_then(|h| h.to_str().ok()) {
                    set_host(parts, host);
                }
                Decision::Forward {
                    cluster: &backend.cluster,
                    response_headers: &route.response_headers,
                    mirror: route
                        .mirror
                        .as_ref()
                        .filter(|(_, share)| share.take())
                        .map(|(cluster, _)| cluster.as_str()),
                    origin: &route.origin,
                    timeout: *timeout,
                    retry: retry.as_ref(),
                    idle_timeout: *idle_timeout,
                    endpoint_host: *host_to_backend_hostname,
                    route: at,
                    hash,
                    set_cookies,
                }
            }
        }
    }

    /// Kuma's gateway hygiene: the refusal or redirect a request gets before routing, if
    /// any; the path normalised in place, `x-kuma-tags` removed.
    fn hygiene<'r>(&self, parts: &mut http::request::Parts) -> Option<Decision<'r>> {
        if parts.headers.keys().any(|k| k.as_str().contains('_')) {
            return Some(respond(StatusCode::BAD_REQUEST));
        }
        // Only an origin-form path (or `OPTIONS *`) is routed: an authority-form or other
        // target has no path to match or forward (hyper hands them over with an empty one).
        let target = parts.uri.path();
        let asterisk = target == "*" && parts.method == http::Method::OPTIONS;
        if !(target.starts_with('/') || asterisk) {
            return Some(respond(StatusCode::BAD_REQUEST));
        }
        let normal = match path::normalize(target) {
            Ok(normal) => normal,
            Err(_) => return Some(respond(StatusCode::BAD_REQUEST)),
        };
        if normal.escaped_slash {
            // A path-only Location (as Envoy sends): the normal path never starts with `//`
            // or holds a backslash, so the redirect stays on the request's origin; bytes of
            // the query outside visible ASCII are percent-encoded, as a Location must be.
            let location = with_path(&parts.uri, &normal.path);
            let location = escape_non_ascii(&location);
            return Some(Decision::Respond {
                status: StatusCode::TEMPORARY_REDIRECT,
                location: HeaderValue::from_str(&location).ok(),
                body: None,
                response_headers: None,
                route: None,
            });
        }
        if let Cow::Owned(normal) = normal.path {
            // Routes match, and the backend gets, the normal path or nothing.
            if !set_path(&mut parts.uri, &normal) {
                return Some(respond(StatusCode::BAD_REQUEST));
            }
        }
        parts.headers.remove(&KUMA_TAGS);
        None
    }

    /// The redirect response: the request's URL with the redirect's parts replaced, without
    /// the query when the redirect strips it (Kuma's gateway: `stripQuery: true`).
    fn redirect<'r>(
        &self,
        parts: &http::request::Parts,
        route: &'r Route,
        redirect: &Redirect,
        path: &Option<PathEdit>,
    ) -> Decision<'r> {
        let request_host = request_host(parts).unwrap_or("");
        let (request_name, request_port) = split_port(request_host);
        let scheme = redirect.scheme.as_deref().unwrap_or(self.scheme.as_str());
        let same_scheme = scheme.eq_ignore_ascii_case(self.scheme.as_str());
        let host = redirect.hostname.as_deref().unwrap_or(request_name);
        let port = redirect
            .port
            .or_else(|| request_port.filter(|_| same_scheme));
        let default_port = if scheme.eq_ignore_ascii_case("https") {
            443
        } else {
            80
        };
        let path = match path {
            Some(rw) => rewritten_path(route, rw, parts.uri.path()),
            None => parts.uri.path().to_string(),
        };
        let mut location = format!("{scheme}://{host}");
        if let Some(p) = port.filter(|p| *p != default_port) {
            location.push_str(&format!(":{p}"));
        }
        location.push_str(&path);
        if let Some(query) = parts.uri.query().filter(|_| !redirect.strip_query) {
            location.push('?');
            location.push_str(query);
        }
        match (
            StatusCode::from_u16(redirect.status),
            HeaderValue::from_str(&location),
        ) {
            (Ok(status), Ok(location)) => Decision::Respond {
                status,
                location: Some(location),
                body: None,
                response_headers: Some(&route.response_headers),
                route: None,
            },
            _ => respond(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

fn respond<'r>(status: StatusCode) -> Decision<'r> {
    Decision::Respond {
        status,
        location: None,
        body: None,
        response_headers: None,
        route: None,
    }
}

/// The path after a rewrite or redirect path change.
fn rewritten_path(route: &Route, rewrite: &PathEdit, path: &str) -> String {
    match (rewrite, &route.path) {
        (PathEdit::ReplaceFull(p), _) => p.clone(),
        (PathEdit::ReplacePrefixMatch(p), Some(PathCondition::Prefix(prefix))) => {
            path::replace_prefix(prefix, p, path)
        }
        (PathEdit::ReplacePrefixMatch(p), Some(PathCondition::StringPrefix(prefix))) => {
            format!("{p}{}", path.get(prefix.len()..).unwrap_or(""))
        }
        // A prefix replacement after any other match (validation allows it only on an exact
        // path, as Envoy's) replaces the whole path, the matched prefix.
        (PathEdit::ReplacePrefixMatch(p), _) => p.clone(),
        (PathEdit::Regex(re, substitution), _) => {
            re.replace_all(path, substitution.as_str()).into_owned()
        }
    }
}

/// The order hosts are tried in: every name of every host (`names`, by host index), most
/// specific first; names of equal rank keep the hosts' order.
fn order<'a>(names: impl Iterator<Item = &'a [String]>) -> Vec<(HostName, usize)> {
    let mut order: Vec<(HostName, usize)> = names
        .enumerate()
        .flat_map(|(i, names)| names.iter().map(move |n| (HostName::parse(n), i)))
        .collect();
    order.sort_by_key(|(name, _)| name.rank());
    order
}

/// The request's host: the Host header, or the URI authority (HTTP/2).
fn request_host(parts: &http::request::Parts) -> Option<&str> {
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(Authority::as_str))
}

fn strip_port(host: &str) -> &str {
    split_port(host).0
}

/// `name:port` → (`name`, port); IPv6 literals keep their brackets.
fn split_port(host: &str) -> (&str, Option<u16>) {
    match host.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() && (!name.contains(':') || name.ends_with(']')) => {
            match port.parse() {
                Ok(p) => (name, Some(p)),
                Err(_) => (host, None),
            }
        }
        _ => (host, None),
    }
}

/// `uri` with a new path, the query kept.
fn with_path(uri: &Uri, path: &str) -> String {
    match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }
}

/// `text` with every byte outside visible ASCII percent-encoded (uppercase hex).
fn escape_non_ascii(text: &str) -> Cow<'_, str> {
    if text.bytes().all(|b| b.is_ascii_graphic()) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for b in text.bytes() {
        if b.is_ascii_graphic() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(out)
}

/// Replaces the path of `uri`, keeping its scheme, authority and query; false (`uri`
/// unchanged) when the result is not a valid URI.
fn set_path(uri: &mut Uri, path: &str) -> bool {
    let Ok(pq) = PathAndQuery::try_from(with_path(uri, path)) else {
        return false;
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq);
    match Uri::from_parts(parts) {
        Ok(new) => {
            *uri = new;
            true
        }
        Err(_) => false,
    }
}

/// Sets the Host header (and the URI authority, when the request has one).
fn set_host(parts: &mut http::request::Parts, hostname: &str) {
    if let Ok(v) = HeaderValue::from_str(hostname) {
        parts.headers.insert(header::HOST, v);
    }
    if parts.uri.authority().is_some() {
        if let Ok(authority) = Authority::try_from(hostname) {
            let mut uri_parts = std::mem::take(&mut parts.uri).into_parts();
            uri_parts.authority = Some(authority);
            if let Ok(new) = Uri::from_parts(uri_parts) {
                parts.uri = new;
            }
        }
    }
}

#[cfg(test)]
mod tests;

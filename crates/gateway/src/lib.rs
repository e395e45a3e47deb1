//! `bearing-gateway`: routing for Bearing's builtin gateway listeners.
//!
//! [`GatewayRouter::new`] prepares a compiled [`GatewayListener`] once per config (regexes,
//! header names and values, weight tables); [`GatewayRouter::route`] then decides per request,
//! with no lock and no allocation unless the request is rewritten. Before matching, requests
//! get Kuma's gateway hygiene (its Envoy config for builtin gateways): header names with `_`
//! are refused (400), paths are normalised ([`normalize_path`]: unreserved characters
//! decoded, dot segments, encoded ones included, removed, slashes merged; an invalid escape is
//! a 400, an encoded slash a redirect to the normal path) and `x-kuma-tags` is removed. Routes
//! match the normal path, and it is what the backend gets.

mod path;
mod pick;

use std::borrow::Cow;

use bearing_proxy_config::{
    GatewayListener, GatewayProtocol, HeaderFilter, HttpMatch, HttpRoute, PathMatch, PathRewrite,
    Redirect, RouteAction, ValueMatch, WeightedCluster,
};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::StatusCode;
use regex::Regex;

use crate::pick::{Share, Weighted};

pub use crate::path::{normalize as normalize_path, InvalidPath, NormalPath};

/// Kuma's internal header carrying source tags; never forwarded by a gateway.
const KUMA_TAGS: HeaderName = HeaderName::from_static("x-kuma-tags");

/// What to do with one request.
#[derive(Debug)]
pub enum Decision<'r> {
    /// Answer directly: 404 (no host or route), 400 (refused request), 503 (no backend with
    /// weight), or a redirect (3xx with `location`).
    Respond {
        /// Response status.
        status: StatusCode,
        /// `Location` of a redirect.
        location: Option<HeaderValue>,
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
    },
}

/// A listener's hosts and routes, ready for requests.
#[derive(Debug)]
pub struct GatewayRouter {
    /// In the listener's order, so indices match `GatewayListener::hosts`.
    hosts: Vec<Host>,
    /// Indices of `hosts`, most specific first: exact names, wildcards by length, `*`.
    order: Vec<usize>,
    /// Scheme of redirect `Location`s that do not set one.
    scheme: Scheme,
}

#[derive(Debug)]
struct Host {
    name: HostName,
    routes: Vec<Route>,
    tcp_backends: Vec<WeightedCluster>,
    tcp_pick: Weighted,
}

#[derive(Debug)]
enum HostName {
    Exact(String),
    /// `*.example.com` as `.example.com`.
    Suffix(String),
    Any,
}

impl HostName {
    fn parse(hostname: &str) -> HostName {
        match hostname {
            "*" | "" => HostName::Any,
            h => match h.strip_prefix('*') {
                Some(suffix) => HostName::Suffix(suffix.to_ascii_lowercase()),
                None => HostName::Exact(h.to_ascii_lowercase()),
            },
        }
    }

    /// Exact names first, then wildcards by length (longest first), then `*`.
    fn rank(&self) -> (u8, std::cmp::Reverse<usize>) {
        match self {
            HostName::Exact(_) => (0, std::cmp::Reverse(0)),
            HostName::Suffix(s) => (1, std::cmp::Reverse(s.len())),
            HostName::Any => (2, std::cmp::Reverse(0)),
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
            HostName::Any => true,
        }
    }
}

#[derive(Debug)]
struct Route {
    origin: String,
    path: Option<PathCondition>,
    method: Option<http::Method>,
    headers: Vec<(HeaderName, Condition)>,
    query: Vec<(String, Condition)>,
    request_headers: HeaderEdits,
    response_headers: HeaderEdits,
    action: Action,
    mirror: Option<(String, Share)>,
}

#[derive(Debug)]
enum PathCondition {
    Exact(String),
    /// Kept as [`path::prefix_key`].
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
enum Condition {
    Exact(String),
    Regex(Regex),
    Absent,
    Present,
}

impl Condition {
    fn holds(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Condition::Absent, v) => v.is_none(),
            (Condition::Present, v) => v.is_some(),
            (Condition::Exact(want), Some(v)) => v == want,
            (Condition::Regex(re), Some(v)) => re.is_match(v),
            (_, None) => false,
        }
    }
}

#[derive(Debug)]
enum Action {
    Forward {
        backends: Vec<WeightedCluster>,
        pick: Weighted,
        path: Option<PathRewrite>,
        host_to_backend_hostname: bool,
    },
    Redirect(Redirect),
}

/// Header changes, parsed once: set replaces, add appends, remove deletes.
#[derive(Debug, Default)]
pub struct HeaderEdits {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderEdits {
    fn new(filter: &HeaderFilter, origin: &str) -> Result<HeaderEdits, String> {
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
        ValueMatch::Exact(v) => Condition::Exact(v.clone()),
        ValueMatch::Regex(p) => Condition::Regex(whole(p, origin)?),
        ValueMatch::Absent => Condition::Absent,
        ValueMatch::Present => Condition::Present,
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
            .map(|h| {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| format!("{origin}: {:?} is not a valid header name", h.name))?;
                Ok((name, condition(&h.value, origin)?))
            })
            .collect::<Result<_, String>>()?;
        let query = query
            .iter()
            .map(|q| Ok((q.name.clone(), condition(&q.value, origin)?)))
            .collect::<Result<_, String>>()?;
        let action = match &r.action {
            RouteAction::Forward { backends, rewrite } => Action::Forward {
                pick: Weighted::new(backends.iter().map(|b| b.weight)),
                backends: backends.clone(),
                path: rewrite.as_ref().and_then(|rw| rw.path.clone()),
                host_to_backend_hostname: rewrite
                    .as_ref()
                    .is_some_and(|rw| rw.host_to_backend_hostname),
            },
            RouteAction::Redirect(redirect) => Action::Redirect(redirect.clone()),
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
        })
    }

    fn matches(&self, parts: &http::request::Parts, path: &str) -> bool {
        let path_ok = match &self.path {
            None => true,
            Some(PathCondition::Exact(p)) => path == p,
            Some(PathCondition::Prefix(p)) => path::prefix_matches(p, path),
            Some(PathCondition::Regex(re)) => re.is_match(path),
        };
        path_ok
            && self.method.as_ref().is_none_or(|m| parts.method == *m)
            && self
                .headers
                .iter()
                .all(|(name, c)| header_holds(parts, name, c))
            && self
                .query
                .iter()
                .all(|(name, c)| query_holds(parts, name, c))
    }
}

/// A header condition holds for any of the header's values (or for its absence).
fn header_holds(parts: &http::request::Parts, name: &HeaderName, c: &Condition) -> bool {
    let mut values = parts.headers.get_all(name).iter().peekable();
    if values.peek().is_none() {
        return c.holds(None);
    }
    values.any(|v| c.holds(Some(v.to_str().unwrap_or(""))))
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

impl GatewayRouter {
    /// Prepares `listener`'s hosts and routes; an invalid regex, header or method is an error
    /// naming the route it is in.
    pub fn new(listener: &GatewayListener) -> Result<GatewayRouter, String> {
        let hosts: Vec<Host> = listener
            .hosts
            .iter()
            .map(|h| {
                Ok(Host {
                    name: HostName::parse(&h.hostname),
                    routes: h
                        .http_routes
                        .iter()
                        .map(Route::new)
                        .collect::<Result<_, String>>()?,
                    tcp_pick: Weighted::new(h.tcp_backends.iter().map(|b| b.weight)),
                    tcp_backends: h.tcp_backends.clone(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut order: Vec<usize> = (0..hosts.len()).collect();
        // Stable: hosts of equal rank keep the compiler's order.
        order.sort_by_key(|i| hosts[*i].name.rank());
        let scheme = match listener.protocol {
            GatewayProtocol::Https | GatewayProtocol::TlsTerminate => Scheme::HTTPS,
            _ => Scheme::HTTP,
        };
        Ok(GatewayRouter {
            hosts,
            order,
            scheme,
        })
    }

    /// The index (in `GatewayListener::hosts`) of the host serving `name` (an SNI, or a Host
    /// header whose port is ignored), matched case-insensitively: exact names, then
    /// wildcards, longest first, then `*`.
    pub fn host_for(&self, name: &str) -> Option<usize> {
        let name = strip_port(name);
        let name = name.strip_suffix('.').unwrap_or(name);
        self.order
            .iter()
            .copied()
            .find(|i| self.hosts[*i].name.matches(name))
    }

    /// The next TCP backend of host `host`, by weight.
    pub fn tcp_backend(&self, host: usize) -> Option<&WeightedCluster> {
        let h = self.hosts.get(host)?;
        h.tcp_backends.get(h.tcp_pick.pick()?)
    }

    /// Routes one request: hygiene, host, first matching route; a forwarded request has its
    /// route's request header changes and rewrite applied in place.
    pub fn route<'r>(&'r self, parts: &mut http::request::Parts) -> Decision<'r> {
        if parts.headers.keys().any(|k| k.as_str().contains('_')) {
            return respond(StatusCode::BAD_REQUEST);
        }
        // Only an origin-form path (or `OPTIONS *`) is routed: an authority-form or other
        // target has no path to match or forward (hyper hands them over with an empty one).
        let target = parts.uri.path();
        let asterisk = target == "*" && parts.method == http::Method::OPTIONS;
        if !(target.starts_with('/') || asterisk) {
            return respond(StatusCode::BAD_REQUEST);
        }
        let normal = match path::normalize(target) {
            Ok(normal) => normal,
            Err(_) => return respond(StatusCode::BAD_REQUEST),
        };
        if normal.escaped_slash {
            // A path-only Location (as Envoy sends): the normal path never starts with `//`
            // or holds a backslash, so the redirect stays on the request's origin; bytes of
            // the query outside visible ASCII are percent-encoded, as a Location must be.
            let location = with_path(&parts.uri, &normal.path);
            let location = escape_non_ascii(&location);
            return Decision::Respond {
                status: StatusCode::TEMPORARY_REDIRECT,
                location: HeaderValue::from_str(&location).ok(),
            };
        }
        if let Cow::Owned(normal) = normal.path {
            // Routes match, and the backend gets, the normal path or nothing.
            if !set_path(&mut parts.uri, &normal) {
                return respond(StatusCode::BAD_REQUEST);
            }
        }
        parts.headers.remove(&KUMA_TAGS);
        let Some(host) = request_host(parts).and_then(|h| self.host_for(h)) else {
            return respond(StatusCode::NOT_FOUND);
        };
        let host = &self.hosts[host];
        let path = parts.uri.path();
        let Some(route) = host.routes.iter().find(|r| r.matches(parts, path)) else {
            return respond(StatusCode::NOT_FOUND);
        };
        route.request_headers.apply(&mut parts.headers);
        match &route.action {
            Action::Redirect(redirect) => self.redirect(parts, route, redirect),
            Action::Forward {
                backends,
                pick,
                path: rewrite,
                host_to_backend_hostname,
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
                if let (true, Some(hostname)) = (host_to_backend_hostname, &backend.hostname) {
                    set_host(parts, hostname);
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
                }
            }
        }
    }

    /// The redirect response: the request's URL with the redirect's parts replaced and, as
    /// Kuma configures Envoy (`stripQuery: true`), without the query.
    fn redirect<'r>(
        &self,
        parts: &http::request::Parts,
        route: &Route,
        redirect: &Redirect,
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
        let path = match &redirect.path {
            Some(rw) => rewritten_path(route, rw, parts.uri.path()),
            None => parts.uri.path().to_string(),
        };
        let mut location = format!("{scheme}://{host}");
        if let Some(p) = port.filter(|p| *p != default_port) {
            location.push_str(&format!(":{p}"));
        }
        location.push_str(&path);
        match (
            StatusCode::from_u16(redirect.status),
            HeaderValue::from_str(&location),
        ) {
            (Ok(status), Ok(location)) => Decision::Respond {
                status,
                location: Some(location),
            },
            _ => respond(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

fn respond<'r>(status: StatusCode) -> Decision<'r> {
    Decision::Respond {
        status,
        location: None,
    }
}

/// The path after a rewrite or redirect path change.
fn rewritten_path(route: &Route, rewrite: &PathRewrite, path: &str) -> String {
    match (rewrite, &route.path) {
        (PathRewrite::ReplaceFull(p), _) => p.clone(),
        (PathRewrite::ReplacePrefixMatch(p), Some(PathCondition::Prefix(prefix))) => {
            path::replace_prefix(prefix, p, path)
        }
        // Validation allows a prefix replacement only on a prefix match; otherwise the whole
        // path is the matched prefix.
        (PathRewrite::ReplacePrefixMatch(p), _) => p.clone(),
    }
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

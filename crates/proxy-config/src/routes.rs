//! HTTP routes, shared by builtin gateway listeners (compiled from MeshGatewayRoute) and
//! sidecar route tables (translated from Envoy's `RouteConfiguration`, as kuma-cp renders
//! MeshHTTPRoute): what a request must look like and what is done with it. One model, one
//! router (`bearing-gateway`).

use std::time::Duration;

use serde::Serialize;

use crate::{LocalRateLimit, RetryPolicy};

/// A sidecar HTTP listener's route table (Envoy's `RouteConfiguration`): the virtual host
/// whose domains match the request's Host, then its first route whose match holds. No virtual
/// host or no route matching is a 404.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouteTable {
    /// Where it came from (the route configuration's name), for logs.
    pub name: String,
    /// Virtual hosts; which one serves a request is decided by the most specific domain
    /// (exact, then `*.suffix` longest first, then `prefix.*` longest first, then `*`), as
    /// Envoy does, whatever their order here.
    pub virtual_hosts: Vec<VirtualHost>,
}

impl RouteTable {
    /// Whether a route of the table limits its rate (`HttpRoute::rate_limit`).
    pub fn limits_rates(&self) -> bool {
        self.routes().any(|r| r.rate_limit.is_some())
    }

    /// Whether `other` routes every request as this table does: the same table but for
    /// where its routes came from (`HttpRoute::origin`), as the filter chains of one Envoy
    /// listener each carrying the same inline route configuration are.
    pub fn routes_as(&self, other: &RouteTable) -> bool {
        let unplaced = |r: &HttpRoute| HttpRoute {
            origin: String::new(),
            ..r.clone()
        };
        self.name == other.name
            && self.virtual_hosts.len() == other.virtual_hosts.len()
            && self
                .virtual_hosts
                .iter()
                .zip(&other.virtual_hosts)
                .all(|(a, b)| {
                    a.name == b.name
                        && a.domains == b.domains
                        && a.routes.len() == b.routes.len()
                        && a.routes
                            .iter()
                            .zip(&b.routes)
                            .all(|(x, y)| unplaced(x) == unplaced(y))
                })
    }

    /// Every route of every virtual host.
    fn routes(&self) -> impl Iterator<Item = &HttpRoute> {
        self.virtual_hosts.iter().flat_map(|v| &v.routes)
    }
}

/// A virtual host of a route table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VirtualHost {
    /// Its name, for logs.
    pub name: String,
    /// Host values it serves (lowercase): `foo.example.com`, `foo.example.com:8080`,
    /// `*.example.com`, `foo.*` or `*`; matched against the whole Host header (its port
    /// included), case-insensitively.
    pub domains: Vec<String>,
    /// Routes in order; the first whose match holds serves the request.
    pub routes: Vec<HttpRoute>,
}

/// One HTTP route: a rule's match (a rule with several matches gives several routes) and what
/// to do with the requests it matches.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HttpRoute {
    /// Where it came from: `MeshGatewayRoute/<name>: conf.http.rules[i].matches[j]`.
    pub origin: String,
    /// What the request must look like (every given condition holds).
    pub matches: HttpMatch,
    /// Request header changes, applied before forwarding (or redirecting).
    #[serde(skip_serializing_if = "HeaderFilter::is_empty")]
    pub request_headers: HeaderFilter,
    /// Response header changes, applied to the backend's response.
    #[serde(skip_serializing_if = "HeaderFilter::is_empty")]
    pub response_headers: HeaderFilter,
    /// Forward or redirect.
    pub action: RouteAction,
    /// Copy of matching requests sent to another backend, its response ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
    /// The route's local rate limit (kuma-cp's MeshRateLimit), applied where the listener's
    /// `HttpFilter::LocalRateLimit` runs; `None`: unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<LocalRateLimit>,
    /// What a forwarded request is hashed by for its cluster's consistent hashing (Envoy's
    /// `RouteAction.hash_policy`, kuma-cp's MeshLoadBalancingStrategy `hashPolicies`);
    /// empty: no hash (a hashing cluster then picks at random).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hash_policy: Vec<crate::HashPolicy>,
    /// The value kuma-cp's Lua program copies from this route's metadata into the request's
    /// dynamic metadata (`crate::ROUTE_KRI_METADATA`), read by access log filters; `None`:
    /// none (no such program in the connection manager, or no such metadata).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_kri: Option<String>,
}

impl HttpRoute {
    /// A route of every request whose path starts with `prefix` (Envoy's `prefix`) to
    /// `cluster` alone, with `rewrite` and the route's response `timeout`, no header edits or
    /// mirror: what kuma-cp renders for a destination no route policy splits.
    pub fn prefix_to(
        origin: String,
        prefix: &str,
        cluster: &str,
        rewrite: Option<Rewrite>,
        timeout: Option<Duration>,
    ) -> HttpRoute {
        HttpRoute {
            origin,
            matches: HttpMatch {
                path: Some(PathMatch::StringPrefix(prefix.into())),
                ..HttpMatch::default()
            },
            request_headers: HeaderFilter::default(),
            response_headers: HeaderFilter::default(),
            action: RouteAction::Forward {
                idle_timeout: None,
                backends: vec![WeightedCluster {
                    cluster: cluster.into(),
                    weight: 1,
                }],
                rewrite,
                timeout,
                retry: None,
            },
            mirror: None,
            rate_limit: None,
            hash_policy: Vec::new(),
            route_kri: None,
        }
    }
}

/// Conditions on a request; an empty match matches every request.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct HttpMatch {
    /// On the path (without the query).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// HTTP method, uppercase (`GET`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// On headers (names lowercase); all must hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// On query parameters; all must hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<QueryMatch>,
}

/// A path condition.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "match", content = "value")]
pub enum PathMatch {
    /// The whole path equals this.
    Exact(String),
    /// The path starts with this at a segment boundary (Kuma's gateway, Envoy's
    /// `path_separated_prefix`: `/api` matches `/api` and `/api/x`, not `/apix`).
    Prefix(String),
    /// The path starts with these bytes, wherever a segment ends (Envoy's `prefix`: `/api`
    /// matches `/apix` too).
    StringPrefix(String),
    /// The whole path matches this regular expression (RE2 syntax).
    Regex(String),
}

/// A header condition.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Header name, lowercase.
    pub name: String,
    /// What its value must be.
    pub value: ValueMatch,
}

impl HeaderMatch {
    /// Whether a message whose values of a header `values(name)` gives meets it: any value
    /// does (or, for `Absent`, there is none). An uncompiled `Regex` never holds here (see
    /// [`ValueMatch::holds`]).
    pub fn holds_in<'v, I: Iterator<Item = &'v str>>(&self, values: impl Fn(&str) -> I) -> bool {
        let mut values = values(&self.name).peekable();
        if values.peek().is_none() {
            return self.value.holds(None);
        }
        values.any(|v| self.value.holds(Some(v)))
    }
}

impl ValueMatch {
    /// Whether a value (`None`: the header or parameter is absent) meets it, but for an
    /// uncompiled `Regex`, which holds for none here: it is compiled where it is evaluated
    /// (the gateway crate's router, the fault filter); a match evaluated from the model itself
    /// (a retry policy's) carries a `Compiled` one.
    pub fn holds(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (ValueMatch::Absent, v) => v.is_none(),
            (ValueMatch::Present, v) => v.is_some(),
            (ValueMatch::Exact(want), Some(v)) => v == want,
            (ValueMatch::Prefix(p), Some(v)) => v.starts_with(p.as_str()),
            (ValueMatch::Suffix(s), Some(v)) => v.ends_with(s.as_str()),
            (ValueMatch::Contains(c), Some(v)) => v.contains(c.as_str()),
            (ValueMatch::Compiled(re), Some(v)) => re.is_match(v),
            (ValueMatch::Regex(_), _) | (_, None) => false,
        }
    }
}

/// A regular expression the whole value must match (RE2 syntax, as Envoy's `safe_regex`),
/// compiled when the model is built: for a match the runtime evaluates straight from the
/// model, which has no place to compile it per request.
#[derive(Debug, Clone)]
pub struct WholeRegex {
    /// The pattern as configured.
    pattern: String,
    /// It anchored at both ends.
    compiled: regex::Regex,
}

impl WholeRegex {
    /// `pattern` compiled to match whole values; an error when it is not a valid expression.
    pub fn new(pattern: &str) -> Result<WholeRegex, regex::Error> {
        Ok(WholeRegex {
            pattern: pattern.to_string(),
            compiled: regex::Regex::new(&format!("^(?:{pattern})$"))?,
        })
    }

    /// The pattern as configured.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Whether all of `value` matches.
    pub fn is_match(&self, value: &str) -> bool {
        self.compiled.is_match(value)
    }
}

impl PartialEq for WholeRegex {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}

impl Eq for WholeRegex {}

impl Serialize for WholeRegex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.pattern)
    }
}

/// A query parameter condition.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QueryMatch {
    /// Parameter name (case-sensitive).
    pub name: String,
    /// What its value must be (`Exact` or `Regex`).
    pub value: ValueMatch,
}

/// A condition on a header or query value.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "match", content = "value")]
pub enum ValueMatch {
    /// Equal to this.
    Exact(String),
    /// The whole value matches this regular expression (RE2 syntax).
    Regex(String),
    /// Starts with this.
    Prefix(String),
    /// Ends with this.
    Suffix(String),
    /// Holds this.
    Contains(String),
    /// The whole value matches this regular expression, compiled with the model (a retry
    /// policy's header match; shown as a `regex`).
    #[serde(rename = "regex")]
    Compiled(WholeRegex),
    /// The header is not present.
    Absent,
    /// The header is present, with any value.
    Present,
}

/// Header changes (MeshGatewayRoute `requestHeader` / `responseHeader` filters).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct HeaderFilter {
    /// Replace (or create) these headers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<(String, String)>,
    /// Append these values (an existing header keeps its values).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<(String, String)>,
    /// Remove these headers (names lowercase).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderFilter {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// What a route does with a request.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RouteAction {
    /// Send it to one of the backends, picked by weight, after an optional rewrite.
    Forward {
        /// Backends; a weight-0 backend gets no traffic.
        backends: Vec<WeightedCluster>,
        /// Path or Host rewrite.
        #[serde(skip_serializing_if = "Option::is_none")]
        rewrite: Option<Rewrite>,
        /// The route's response timeout (Envoy's `RouteAction.timeout`), counted from the
        /// end of the request: zero is none; `None` leaves it to the backend cluster's
        /// `request_timeout`. Two routes to one cluster may differ.
        #[serde(
            skip_serializing_if = "Option::is_none",
            serialize_with = "crate::opt_millis::serialize"
        )]
        timeout: Option<Duration>,
        /// How long the request's stream may go without a byte moved either way (Envoy's
        /// `RouteAction.idle_timeout`, kuma-cp's MeshTimeout `http.streamIdleTimeout`): zero
        /// is none; `None` leaves it to the listener's `stream_idle_timeout`.
        #[serde(
            skip_serializing_if = "Option::is_none",
            serialize_with = "crate::opt_millis::serialize"
        )]
        idle_timeout: Option<Duration>,
        /// When the request is sent again (Envoy's `RouteAction.retry_policy`, else its
        /// virtual host's; kuma-cp's MeshRetry); `None`: only a stale pooled connection's
        /// request is repeated. Two routes to one cluster may differ.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry: Option<RetryPolicy>,
    },
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer with this status and body (`text/plain`), as Envoy's `direct_response`.
    DirectResponse {
        /// Response status, 200 to 599.
        status: u16,
        /// Response body.
        body: String,
    },
}

/// The stream idle timeout of a request a route forwards: the route's own
/// (`RouteAction::Forward::idle_timeout`, zero: none), else the listener's
/// `stream_idle_timeout` (`None`: none).
pub fn stream_idle_timeout(
    route: Option<Duration>,
    listener: Option<Duration>,
) -> Option<Duration> {
    response_timeout(route, listener)
}

/// The response timeout of a request a route forwards to a cluster: the route's own
/// (`RouteAction::Forward::timeout`, zero: none), else the cluster's `request_timeout`
/// (`None`: no limit).
pub fn response_timeout(route: Option<Duration>, cluster: Option<Duration>) -> Option<Duration> {
    match route {
        Some(t) if t.is_zero() => None,
        Some(t) => Some(t),
        None => cluster,
    }
}

/// A request rewrite (MeshGatewayRoute `rewrite` filter).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Rewrite {
    /// New path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
    /// Host becomes the hostname of the endpoint the request is sent to
    /// (`Endpoint::hostname`, Envoy's `auto_host_rewrite`), when it has one.
    pub host_to_backend_hostname: bool,
    /// Host becomes this (Envoy's `host_rewrite_literal`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// How a rewrite or redirect changes the path.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum PathRewrite {
    /// The whole path becomes this (the query is kept).
    ReplaceFull(String),
    /// The part the route's `Prefix` path match matched is replaced by this (Kuma: replacing
    /// `/api` by `/` turns `/api/x` into `/x`, never `//x`); after a `StringPrefix` match the
    /// matched bytes are replaced as they are (Envoy's `prefix_rewrite`).
    ReplacePrefixMatch(String),
    /// Every match of `pattern` in the path is replaced by `substitution` (Envoy's
    /// `regex_rewrite`; `$1`, `${name}` name capture groups).
    Regex {
        /// RE2 syntax.
        pattern: String,
        /// The replacement.
        substitution: String,
    },
}

/// A redirect response (MeshGatewayRoute `redirect` filter); unset parts keep the request's.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Redirect {
    /// `http` or `https`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Host of the Location.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Port of the Location (omitted when it is the scheme's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
    /// Path change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
    /// The Location has no query (Kuma's gateway redirects, Envoy's `strip_query`); else
    /// the request's query is kept.
    pub strip_query: bool,
}

/// A copy of requests sent to another cluster (MeshGatewayRoute `mirror` filter).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Mirror {
    /// Cluster receiving the copies.
    pub cluster: String,
    /// Share of matching requests mirrored, 0 to 100.
    pub percentage: f64,
}

/// A backend of a route: a cluster and its share.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WeightedCluster {
    /// Cluster name (a key of `ProxyConfig::clusters`).
    pub cluster: String,
    /// Relative weight (Kuma's default is 1).
    pub weight: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(origin: &str, cluster: &str) -> RouteTable {
        RouteTable {
            name: "inbound:backend".into(),
            virtual_hosts: vec![VirtualHost {
                name: "backend".into(),
                domains: vec!["*".into()],
                routes: vec![HttpRoute::prefix_to(
                    origin.into(),
                    "/",
                    cluster,
                    None,
                    None,
                )],
            }],
        }
    }

    /// The chains of one listener route alike when only their routes' origins differ.
    #[test]
    fn tables_route_alike_whatever_their_routes_origins() {
        let first = table("filter_chains[0]", "app");
        assert!(first.routes_as(&table("filter_chains[2]", "app")));
        assert!(!first.routes_as(&table("filter_chains[0]", "other")));
        assert!(!first.limits_rates());
    }
}

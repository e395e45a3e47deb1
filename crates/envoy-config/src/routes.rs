//! Envoy's `RouteConfiguration` (an HTTP connection manager's inline `route_config`, as
//! kuma-cp renders MeshHTTPRoute for sidecars) and a TCP proxy's `weighted_clusters`
//! (MeshTCPRoute), translated into ProxyConfig's route model, the one `bearing-gateway`
//! routes by.
//!
//! A route configuration that sends every request to one cluster unchanged (one virtual host
//! `*`, one `prefix: /` route, no edits) stays a plain listener to that cluster, so the byte
//! path pays nothing for routing. Anything else becomes a [`RouteTable`]. A field the model
//! cannot express is a problem naming its path; the fields guard (`fields.rs`) has already
//! refused every field not read here.

use std::time::Duration;

use bearing_proxy_config::{
    HeaderFilter, HeaderMatch, HttpMatch, HttpRoute, Mirror, PathMatch, PathRewrite, QueryMatch,
    Redirect, RetryPolicy, Rewrite, RouteAction, RouteTable, ValueMatch, VirtualHost,
    WeightedCluster,
};
use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::config::route::v3 as route_pb;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp_pb;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher_pb;
use envoy_types::pb::envoy::r#type::v3 as type_pb;

/// Envoy's default route timeout, used when a route sets none.
pub(crate) const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// A field Bearing cannot serve: its path and why.
pub(crate) type Problem = (String, String);

/// Where an HTTP connection manager's requests go.
#[derive(Debug)]
pub(crate) enum HttpRouting {
    /// Every request to one cluster: a plain listener.
    One(Box<PlainRoute>),
    /// Routed by a table.
    Table(RouteTable),
}

/// A plain listener's one route: its cluster, retry policy, idle timeout and request header
/// edits.
#[derive(Debug)]
pub(crate) struct PlainRoute {
    /// Where every request goes.
    pub cluster: String,
    /// The route's retry policy.
    pub retry: Option<RetryPolicy>,
    /// The route's stream idle timeout.
    pub idle: Option<Duration>,
    /// The route's request header edits, with its virtual host's and configuration's.
    pub request_headers: HeaderFilter,
}

/// The clusters a route configuration sends to, each with what the route that reaches it
/// asks of the cluster's own response timeout, mirrors included, and where.
pub(crate) type Reached = Vec<(String, ClusterTimeout, String)>;

/// What a route asks of a cluster's `request_timeout`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ClusterTimeout {
    /// Nothing: the route carries its own (a route table's `RouteAction::Forward::timeout`).
    Any,
    /// Exactly this one (`None`: no limit): a plain listener's route and a mirror have no
    /// place of their own for it.
    Exactly(Option<Duration>),
}

/// The request and response header edits of one level (a route configuration, virtual host
/// or route: the same four fields) at `$at`.
macro_rules! level_edits {
    ($level:expr, $at:expr, $problems:expr) => {
        (
            edits(
                &$level.request_headers_to_add,
                &$level.request_headers_to_remove,
                &format!("{}.request_headers", $at),
                $problems,
            ),
            edits(
                &$level.response_headers_to_add,
                &$level.response_headers_to_remove,
                &format!("{}.response_headers", $at),
                $problems,
            ),
        )
    };
}

/// Translates an inline route configuration at `at`; problems are pushed to `problems`.
pub(crate) fn route_config(
    rc: &route_pb::RouteConfiguration,
    at: &str,
    problems: &mut Vec<Problem>,
    reached: &mut Reached,
) -> Option<HttpRouting> {
    let start = reached.len();
    let table = route_table(rc, at, problems, reached)?;
    if let Some((cluster, timeout, retry, idle, edits)) = only_cluster(&table.virtual_hosts) {
        // A plain listener has no route: its one route's timeout becomes the cluster's, its
        // retry policy the listener's.
        let timeout = bearing_proxy_config::response_timeout(timeout, None);
        for r in &mut reached[start..] {
            r.1 = ClusterTimeout::Exactly(timeout);
        }
        return Some(HttpRouting::One(Box::new(PlainRoute {
            cluster,
            retry,
            idle,
            request_headers: edits,
        })));
    }
    Some(HttpRouting::Table(table))
}

/// Translates a route configuration at `at` into a table, whatever its shape (a builtin
/// gateway's, from RDS, is always routed); problems are pushed to `problems`.
pub(crate) fn route_table(
    rc: &route_pb::RouteConfiguration,
    at: &str,
    problems: &mut Vec<Problem>,
    reached: &mut Reached,
) -> Option<RouteTable> {
    let before = problems.len();
    let (config_request, config_response) = level_edits!(rc, at, problems);
    let mut virtual_hosts = Vec::new();
    for (k, vh) in rc.virtual_hosts.iter().enumerate() {
        let vat = format!("{at}.virtual_hosts[{k}]");
        let (request, response) = level_edits!(vh, vat, problems);
        // The routes' retry policy where they have none of their own.
        let retry = vh
            .retry_policy
            .as_ref()
            .and_then(|p| crate::retry::retry_policy(p, &format!("{vat}.retry_policy"), problems));
        let mut routes = Vec::new();
        for (r, route) in vh.routes.iter().enumerate() {
            let rat = format!("{vat}.routes[{r}]");
            if let Some(mut out) = http_route(route, (&rat, retry.as_ref()), problems, reached) {
                // Envoy applies the route's edits, then the virtual host's, then the
                // configuration's.
                append(&mut out.request_headers, &request);
                append(&mut out.request_headers, &config_request);
                append(&mut out.response_headers, &response);
                append(&mut out.response_headers, &config_response);
                routes.push(out);
            }
        }
        virtual_hosts.push(VirtualHost {
            name: vh.name.clone(),
            domains: vh.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            routes,
        });
    }
    if problems.len() > before {
        return None;
    }
    Some(RouteTable {
        name: rc.name.clone(),
        virtual_hosts,
    })
}

/// The cluster of a table that sends every request to it: one virtual host `*` with one
/// route, `prefix: /`, forwarding to one cluster with no response edits or rate limit; with
/// the route's timeout, retry policy, idle timeout and request header edits.
#[allow(clippy::type_complexity)]
fn only_cluster(
    virtual_hosts: &[VirtualHost],
) -> Option<(
    String,
    Option<Duration>,
    Option<RetryPolicy>,
    Option<Duration>,
    HeaderFilter,
)> {
    let [vh] = virtual_hosts else { return None };
    let [route] = vh.routes.as_slice() else {
        return None;
    };
    let all = HttpMatch {
        path: Some(PathMatch::StringPrefix("/".into())),
        ..HttpMatch::default()
    };
    let plain = vh.domains == ["*"]
        && route.matches == all
        && route.response_headers.is_empty()
        && route.mirror.is_none()
        && route.rate_limit.is_none()
        && route.hash_policy.is_empty()
        && route.route_kri.is_none();
    match &route.action {
        RouteAction::Forward {
            backends,
            rewrite: None,
            timeout,
            idle_timeout,
            retry,
        } if plain => match backends.as_slice() {
            [one] => Some((
                one.cluster.clone(),
                *timeout,
                retry.clone(),
                *idle_timeout,
                route.request_headers.clone(),
            )),
            _ => None,
        },
        _ => None,
    }
}

fn append(to: &mut HeaderFilter, more: &HeaderFilter) {
    to.set.extend(more.set.iter().cloned());
    to.add.extend(more.add.iter().cloned());
    to.remove.extend(more.remove.iter().cloned());
}

/// Header edits of one level (`*_headers_to_add`, `*_headers_to_remove`), Kuma's
/// `x-kuma-tags` among them: added on an outbound for the callee's legacy FaultInjection
/// match, removed on an inbound before the application.
fn edits(
    add: &[core_pb::HeaderValueOption],
    remove: &[String],
    at: &str,
    problems: &mut Vec<Problem>,
) -> HeaderFilter {
    use core_pb::header_value_option::HeaderAppendAction as A;
    let mut filter = HeaderFilter::default();
    for (i, option) in add.iter().enumerate() {
        let Some(header) = &option.header else {
            continue;
        };
        let key = header.key.to_ascii_lowercase();
        let pair = (key, header.value.clone());
        match A::try_from(option.append_action) {
            Ok(A::AppendIfExistsOrAdd) => filter.add.push(pair),
            Ok(A::OverwriteIfExistsOrAdd) => filter.set.push(pair),
            _ => problems.push((
                format!("{at}_to_add[{i}].append_action"),
                "only APPEND_IF_EXISTS_OR_ADD and OVERWRITE_IF_EXISTS_OR_ADD are implemented"
                    .into(),
            )),
        }
    }
    filter
        .remove
        .extend(remove.iter().map(|h| h.to_ascii_lowercase()));
    filter
}

/// The `route_kri` kuma-cp puts in a route's metadata for its Lua program (under the Lua
/// filter's canonical name), which copies it into the request's dynamic metadata; kept only
/// where the connection manager runs that program (`translate.rs`, `lua.rs`).
fn route_kri(route: &route_pb::Route) -> Option<String> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let fields = &route
        .metadata
        .as_ref()?
        .filter_metadata
        .get(crate::lua::LUA_NAME)?
        .fields;
    match &fields.get(bearing_proxy_config::ROUTE_KRI_METADATA.1)?.kind {
        Some(Kind::StringValue(kri)) => Some(kri.clone()),
        _ => None,
    }
}

/// A route at `at`; `retry` is its virtual host's retry policy, for a route without one.
fn http_route(
    route: &route_pb::Route,
    (at, retry): (&str, Option<&RetryPolicy>),
    problems: &mut Vec<Problem>,
    reached: &mut Reached,
) -> Option<HttpRoute> {
    let matches = route_match(route.r#match.as_ref(), &format!("{at}.match"), problems)?;
    let origin = match route.name.as_str() {
        "" => at.to_string(),
        name => format!("route {name}"),
    };
    let (request_headers, response_headers) = level_edits!(route, at, problems);
    let mut out = HttpRoute {
        origin,
        matches,
        request_headers,
        response_headers,
        action: RouteAction::DirectResponse {
            status: 404,
            body: String::new(),
        },
        mirror: None,
        rate_limit: None,
        hash_policy: Vec::new(),
        route_kri: route_kri(route),
    };
    for (name, any) in &route.typed_per_filter_config {
        let fat = format!("{at}.typed_per_filter_config[{name:?}]");
        if name == crate::http_filters::LOCAL_RATE_LIMIT_NAME {
            out.rate_limit = crate::http_filters::route_rate_limit(any, &fat, problems);
        } else {
            let reason = format!(
                "per-route filter configs: {} only",
                crate::http_filters::LOCAL_RATE_LIMIT_NAME
            );
            problems.push((fat, reason));
        }
    }
    use route_pb::route::Action;
    out.action = match &route.action {
        Some(Action::Route(action)) => {
            let at = format!("{at}.route");
            let (forward, mirror) = forward(action, (&at, retry), problems, reached)?;
            out.mirror = mirror;
            let policies = &action.hash_policy;
            let hash_at = format!("{at}.hash_policy");
            out.hash_policy = crate::balance::hash_policies(policies, &hash_at, problems);
            forward
        }
        Some(Action::Redirect(redirect)) => RouteAction::Redirect(redirect_action(
            redirect,
            &format!("{at}.redirect"),
            problems,
        )?),
        Some(Action::DirectResponse(d)) => {
            let status = u16::try_from(d.status)
                .ok()
                .filter(|s| (200..=599).contains(s));
            let Some(status) = status else {
                problems.push((
                    format!("{at}.direct_response.status"),
                    format!("{} is not an HTTP status (200-599)", d.status),
                ));
                return None;
            };
            let body = match &d.body {
                None => String::new(),
                Some(source) => match crate::translate::data_text(Some(source)) {
                    Some(text) => text,
                    None => {
                        problems.push((
                            format!("{at}.direct_response.body"),
                            "only an inline body is implemented".into(),
                        ));
                        return None;
                    }
                },
            };
            RouteAction::DirectResponse { status, body }
        }
        _ => {
            problems.push((
                format!("{at}.action"),
                "a route needs a route, redirect or direct_response action".into(),
            ));
            return None;
        }
    };
    Some(out)
}

fn route_match(
    m: Option<&route_pb::RouteMatch>,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<HttpMatch> {
    use route_pb::route_match::PathSpecifier as P;
    let Some(m) = m else {
        problems.push((at.to_string(), "a route without a match".into()));
        return None;
    };
    let before = problems.len();
    let path = match &m.path_specifier {
        Some(P::Prefix(p)) => Some(PathMatch::StringPrefix(p.clone())),
        Some(P::Path(p)) => Some(PathMatch::Exact(p.clone())),
        Some(P::SafeRegex(re)) => {
            regex(&re.regex, &format!("{at}.safe_regex.regex"), problems).map(PathMatch::Regex)
        }
        Some(P::PathSeparatedPrefix(p)) => Some(PathMatch::Prefix(p.clone())),
        _ => {
            problems.push((
                at.to_string(),
                "a path match (prefix, path, safe_regex or path_separated_prefix) is needed".into(),
            ));
            None
        }
    };
    let mut method = None;
    let mut headers = Vec::new();
    for (i, h) in m.headers.iter().enumerate() {
        let hat = format!("{at}.headers[{i}]");
        let Some(value) = header_value(h, &hat, problems) else {
            continue;
        };
        match (h.name.as_str(), value) {
            (":method", ValueMatch::Exact(m)) => method = Some(m.to_ascii_uppercase()),
            (name, _) if name.starts_with(':') => problems.push((
                format!("{hat}.name"),
                "only `:method` (exact) of the pseudo-headers is implemented".into(),
            )),
            (name, value) => headers.push(HeaderMatch {
                name: name.to_ascii_lowercase(),
                value,
            }),
        }
    }
    let mut query = Vec::new();
    for (i, q) in m.query_parameters.iter().enumerate() {
        use route_pb::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
        let qat = format!("{at}.query_parameters[{i}]");
        let value = match &q.query_parameter_match_specifier {
            Some(Q::StringMatch(s)) => string_match(s, &format!("{qat}.string_match"), problems),
            Some(Q::PresentMatch(true)) => Some(ValueMatch::Present),
            Some(Q::PresentMatch(false)) => Some(ValueMatch::Absent),
            None => Some(ValueMatch::Present),
        };
        if let Some(value) = value {
            query.push(QueryMatch {
                name: q.name.clone(),
                value,
            });
        }
    }
    (problems.len() == before).then_some(HttpMatch {
        path,
        method,
        headers,
        query,
    })
}

// The deprecated matchers (`exact_match` ...) are still valid Envoy config.
#[allow(deprecated)]
pub(crate) fn header_value(
    h: &route_pb::HeaderMatcher,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<ValueMatch> {
    use route_pb::header_matcher::HeaderMatchSpecifier as H;
    match &h.header_match_specifier {
        Some(H::StringMatch(s)) => string_match(s, &format!("{at}.string_match"), problems),
        Some(H::ExactMatch(v)) => Some(ValueMatch::Exact(v.clone())),
        Some(H::SafeRegexMatch(re)) => {
            regex(&re.regex, &format!("{at}.safe_regex_match.regex"), problems)
                .map(ValueMatch::Regex)
        }
        Some(H::PrefixMatch(v)) => Some(ValueMatch::Prefix(v.clone())),
        Some(H::SuffixMatch(v)) => Some(ValueMatch::Suffix(v.clone())),
        Some(H::ContainsMatch(v)) => Some(ValueMatch::Contains(v.clone())),
        Some(H::PresentMatch(true)) | None => Some(ValueMatch::Present),
        Some(H::PresentMatch(false)) => Some(ValueMatch::Absent),
        Some(H::RangeMatch(_)) => {
            problems.push((
                format!("{at}.range_match"),
                "header range matches are not implemented".into(),
            ));
            None
        }
    }
}

/// A `safe_regex` pattern, checked as the runtime compiles it (a whole-value match, RE2
/// syntax): Envoy refuses a pattern it cannot compile, so a bad one is a problem here rather
/// than a listener that is not built.
fn regex(pattern: &str, at: &str, problems: &mut Vec<Problem>) -> Option<String> {
    match regex::Regex::new(&format!("^(?:{pattern})$")) {
        Ok(_) => Some(pattern.to_string()),
        Err(e) => {
            problems.push((at.to_string(), format!("invalid regular expression: {e}")));
            None
        }
    }
}

fn string_match(
    s: &matcher_pb::StringMatcher,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<ValueMatch> {
    use matcher_pb::string_matcher::MatchPattern as M;
    match &s.match_pattern {
        Some(M::Exact(v)) => Some(ValueMatch::Exact(v.clone())),
        Some(M::Prefix(v)) => Some(ValueMatch::Prefix(v.clone())),
        Some(M::Suffix(v)) => Some(ValueMatch::Suffix(v.clone())),
        Some(M::Contains(v)) => Some(ValueMatch::Contains(v.clone())),
        Some(M::SafeRegex(re)) => {
            regex(&re.regex, &format!("{at}.safe_regex.regex"), problems).map(ValueMatch::Regex)
        }
        _ => {
            problems.push((
                at.to_string(),
                "only exact, prefix, suffix, contains and safe_regex matches are implemented"
                    .into(),
            ));
            None
        }
    }
}

/// A `route` action: its backends, rewrites, retry policy (`virtual_host`'s when it has
/// none) and mirror.
fn forward(
    action: &route_pb::RouteAction,
    (at, virtual_host): (&str, Option<&RetryPolicy>),
    problems: &mut Vec<Problem>,
    reached: &mut Reached,
) -> Option<(RouteAction, Option<Mirror>)> {
    use route_pb::route_action::ClusterSpecifier as C;
    use route_pb::route_action::HostRewriteSpecifier as Host;
    // Envoy's: absent is 15 s whatever the cluster, zero is none.
    let timeout = action
        .timeout
        .as_ref()
        .map_or(DEFAULT_ROUTE_TIMEOUT, crate::translate::duration);
    let backends = match &action.cluster_specifier {
        Some(C::Cluster(c)) => vec![WeightedCluster {
            cluster: c.clone(),
            weight: 1,
        }],
        Some(C::WeightedClusters(w)) => w
            .clusters
            .iter()
            .enumerate()
            .inspect(|(i, c)| {
                kuma_tags_only(
                    c,
                    &format!("{at}.weighted_clusters.clusters[{i}]"),
                    problems,
                )
            })
            .map(|(_, c)| WeightedCluster {
                cluster: c.name.clone(),
                weight: c.weight.as_ref().map_or(0, |w| w.value),
            })
            .collect(),
        _ => {
            problems.push((
                format!("{at}.cluster_specifier"),
                "a route to a cluster or weighted_clusters is needed".into(),
            ));
            return None;
        }
    };
    let retry = match &action.retry_policy {
        None => virtual_host.cloned(),
        Some(p) => Some(crate::retry::retry_policy(
            p,
            &format!("{at}.retry_policy"),
            problems,
        )?),
    };
    for b in &backends {
        let reach = (b.cluster.clone(), ClusterTimeout::Any, at.to_string());
        reached.push(reach);
    }
    let path = match (action.prefix_rewrite.as_str(), &action.regex_rewrite) {
        ("", None) => None,
        (prefix, None) => Some(PathRewrite::ReplacePrefixMatch(prefix.to_string())),
        ("", Some(re)) => Some(regex_rewrite(re)),
        (_, Some(_)) => {
            problems.push((
                format!("{at}.regex_rewrite"),
                "prefix_rewrite and regex_rewrite together".into(),
            ));
            return None;
        }
    };
    let (host, auto_host) = match &action.host_rewrite_specifier {
        Some(Host::HostRewriteLiteral(h)) => (Some(h.clone()), false),
        // The endpoint's hostname, when it has one (Envoy's `auto_host_rewrite`).
        Some(Host::AutoHostRewrite(on)) => (None, on.value),
        // The other host rewrites are refused by the fields guard.
        _ => (None, false),
    };
    let rewrite = (path.is_some() || host.is_some() || auto_host).then_some(Rewrite {
        path,
        host_to_backend_hostname: auto_host,
        host,
    });
    let mirror = match action.request_mirror_policies.as_slice() {
        [] => None,
        [m] => {
            // A shadow has the route's timeout, held by the mirror cluster.
            let shadow = bearing_proxy_config::response_timeout(Some(timeout), None);
            reached.push((
                m.cluster.clone(),
                ClusterTimeout::Exactly(shadow),
                at.to_string(),
            ));
            Some(Mirror {
                cluster: m.cluster.clone(),
                percentage: m
                    .runtime_fraction
                    .as_ref()
                    .and_then(|f| f.default_value.as_ref())
                    .map_or(100.0, percentage),
            })
        }
        _ => {
            problems.push((
                format!("{at}.request_mirror_policies"),
                "one request mirror per route is implemented".into(),
            ));
            return None;
        }
    };
    let action = RouteAction::Forward {
        backends,
        rewrite,
        timeout: Some(timeout),
        idle_timeout: action.idle_timeout.as_ref().map(crate::translate::duration),
        retry,
    };
    Some((action, mirror))
}

/// A weighted cluster's own request headers: only Kuma's `x-kuma-tags` on a gateway, which
/// Envoy adds and then removes again with the route configuration's `x-kuma-tags` removal
/// (it applies the least specific edits last), else a problem naming the header.
fn kuma_tags_only(
    c: &route_pb::weighted_cluster::ClusterWeight,
    at: &str,
    problems: &mut Vec<Problem>,
) {
    for (i, option) in c.request_headers_to_add.iter().enumerate() {
        if option
            .header
            .as_ref()
            .is_some_and(|h| !h.key.eq_ignore_ascii_case("x-kuma-tags"))
        {
            problems.push((
                format!("{at}.request_headers_to_add[{i}]"),
                "request headers per weighted cluster are not implemented".into(),
            ));
        }
    }
}

/// A fraction as a percentage (0 to 100).
fn percentage(f: &type_pb::FractionalPercent) -> f64 {
    use type_pb::fractional_percent::DenominatorType as D;
    let denominator = match D::try_from(f.denominator) {
        Ok(D::TenThousand) => 10_000.0,
        Ok(D::Million) => 1_000_000.0,
        _ => 100.0,
    };
    (f64::from(f.numerator) / denominator * 100.0).min(100.0)
}

/// Envoy's `regex_rewrite`: its substitution's `\N` groups in the `regex` crate's `${N}`
/// form, a literal `$` escaped.
fn regex_rewrite(re: &matcher_pb::RegexMatchAndSubstitute) -> PathRewrite {
    let mut substitution = String::with_capacity(re.substitution.len());
    let mut chars = re.substitution.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(d)) if d.is_ascii_digit() => {
                substitution.push_str(&format!("${{{d}}}"));
                chars.next();
            }
            ('\\', Some('\\')) => {
                substitution.push('\\');
                chars.next();
            }
            ('$', _) => substitution.push_str("$$"),
            (c, _) => substitution.push(c),
        }
    }
    PathRewrite::Regex {
        pattern: re
            .pattern
            .as_ref()
            .map_or(String::new(), |p| p.regex.clone()),
        substitution,
    }
}

fn redirect_action(
    r: &route_pb::RedirectAction,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<Redirect> {
    use route_pb::redirect_action::PathRewriteSpecifier as P;
    use route_pb::redirect_action::RedirectResponseCode as Code;
    use route_pb::redirect_action::SchemeRewriteSpecifier as S;
    let scheme = match &r.scheme_rewrite_specifier {
        Some(S::HttpsRedirect(true)) => Some("https".to_string()),
        Some(S::SchemeRedirect(s)) if !s.is_empty() => Some(s.to_ascii_lowercase()),
        _ => None,
    };
    let status = match Code::try_from(r.response_code) {
        Ok(Code::MovedPermanently) => 301,
        Ok(Code::Found) => 302,
        Ok(Code::SeeOther) => 303,
        Ok(Code::TemporaryRedirect) => 307,
        Ok(Code::PermanentRedirect) => 308,
        Err(_) => {
            problems.push((
                format!("{at}.response_code"),
                format!("unknown redirect code {}", r.response_code),
            ));
            return None;
        }
    };
    let port = match u16::try_from(r.port_redirect) {
        Ok(0) => None,
        Ok(p) => Some(p),
        Err(_) => {
            problems.push((
                format!("{at}.port_redirect"),
                format!("{} is not a port", r.port_redirect),
            ));
            return None;
        }
    };
    let path = match &r.path_rewrite_specifier {
        None => None,
        Some(P::PathRedirect(p)) => Some(PathRewrite::ReplaceFull(p.clone())),
        Some(P::PrefixRewrite(p)) => Some(PathRewrite::ReplacePrefixMatch(p.clone())),
        Some(P::RegexRewrite(re)) => Some(regex_rewrite(re)),
        Some(P::PathRewrite(_)) => {
            problems.push((
                format!("{at}.path_rewrite"),
                "path templates are not implemented".into(),
            ));
            return None;
        }
    };
    Some(Redirect {
        scheme,
        hostname: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
        port,
        status,
        path,
        strip_query: r.strip_query,
    })
}

/// A TCP proxy's `weighted_clusters`: the backends connections are spread over.
pub(crate) fn tcp_weighted(w: &tcp_pb::tcp_proxy::WeightedCluster) -> Vec<WeightedCluster> {
    w.clusters
        .iter()
        .map(|c| WeightedCluster {
            cluster: c.name.clone(),
            weight: c.weight,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_substitutions_take_the_regex_crates_form() {
        let re = matcher_pb::RegexMatchAndSubstitute {
            pattern: Some(matcher_pb::RegexMatcher {
                regex: "^/v(\\d)/(.*)$".into(),
                ..Default::default()
            }),
            substitution: "/\\2/version\\1/$x".into(),
        };
        assert_eq!(
            regex_rewrite(&re),
            PathRewrite::Regex {
                pattern: "^/v(\\d)/(.*)$".into(),
                substitution: "/${2}/version${1}/$$x".into(),
            }
        );
    }

    #[test]
    fn fractions_become_percentages() {
        let f = |numerator, denominator| type_pb::FractionalPercent {
            numerator,
            denominator,
        };
        assert_eq!(percentage(&f(9990, 1)), 99.9);
        assert_eq!(percentage(&f(50, 0)), 50.0);
        assert_eq!(percentage(&f(250, 0)), 100.0);
    }
}

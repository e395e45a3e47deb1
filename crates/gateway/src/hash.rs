//! What a route hashes a request by, for its cluster's consistent hashing (Envoy's
//! `RouteAction.hash_policy`, kuma-cp's MeshLoadBalancingStrategy `hashPolicies`), computed
//! as Envoy's `HashPolicyImpl::generateHash` does, on the request as it came (before the
//! route's header edits and rewrites, as Envoy picks the host before it finalises the
//! request): each policy's xxHash64 (seed 0) of what it reads, combined in order by rotating
//! the hash so far left by one and XORing the next, a terminal policy that gave a hash
//! ending the list. A request none of the policies reads from has no hash.
//!
//! A cookie policy with a `ttl` generates its cookie when the request lacks it, as Envoy's
//! router does (`addDownstreamSetCookie`): the value is the hex of xxHash64 over the
//! connection's peer and local addresses written one after the other, the same for every
//! request of the connection; the request is hashed by that value, and [`SetCookies`]
//! gives the `Set-Cookie` fields its response carries, so the client's next requests bring
//! the cookie and hash alike.

use std::io::Write as _;
use std::net::SocketAddr;

use bearing_proxy_config::{GeneratedCookie, HashPolicy, HashSource};
use http::header::{HeaderName, HeaderValue, COOKIE};
use xxhash_rust::xxh64::{xxh64, Xxh64};

/// The downstream connection a request came on, as hash policies read it.
#[derive(Debug, Clone, Copy)]
pub struct Downstream {
    /// The client's address (the source IP policy hashes its IP).
    pub peer: SocketAddr,
    /// The address the client reached (a generated cookie's value hashes both).
    pub local: SocketAddr,
}

impl Downstream {
    /// The value of a cookie generated on this connection: 16 lower-case hex digits of
    /// xxHash64 (seed 0) over `<peer><local>`, each `ip:port` (`[ip]:port` for IPv6), as
    /// Envoy's `Hex::uint64ToHex(HashUtil::xxHash64(remote + local))`.
    fn cookie_value(&self) -> [u8; 16] {
        // At most 2 x 47 bytes (`[ipv6%scope]:port`), written on the stack.
        let mut text = [0u8; 128];
        let mut rest = &mut text[..];
        let len = match write!(rest, "{}{}", self.peer, self.local) {
            Ok(()) => 128 - rest.len(),
            Err(_) => 0,
        };
        let hash = xxh64(&text[..len], 0);
        let mut value = [0u8; 16];
        for (i, digit) in value.iter_mut().enumerate() {
            let nibble = (hash >> (60 - 4 * i)) & 0xf;
            *digit = b"0123456789abcdef"[nibble as usize];
        }
        value
    }
}

/// The `Set-Cookie` fields of the cookies a request's hash policies generated, each of the
/// connection's value, in the order of its route's policies; made into header values only
/// when a response from upstream takes them.
#[derive(Debug, Clone, Copy)]
pub struct SetCookies<'r> {
    policies: &'r [RequestHash],
    /// Which of `policies` generated its cookie, by index.
    generated: u64,
    value: [u8; 16],
}

impl<'r> SetCookies<'r> {
    /// The `Set-Cookie` values, one per cookie generated.
    pub fn values(&self) -> impl Iterator<Item = HeaderValue> + 'r {
        let (generated, value) = (self.generated, self.value);
        self.policies
            .iter()
            .enumerate()
            .filter(move |(i, _)| generated & (1 << i) != 0)
            .filter_map(move |(_, policy)| match &policy.input {
                Input::GeneratedCookie(maker) => maker.field(&value),
                _ => None,
            })
    }
}

/// A generated cookie's `Set-Cookie` value around the cookie's value, as Envoy's
/// `makeSetCookieValue` writes it.
#[derive(Debug)]
struct CookieMaker {
    name: String,
    /// `<name>="`.
    head: Vec<u8>,
    /// `"` then `; Max-Age=<ttl>` (unless 0), `; Path=<path>` (unless empty), each
    /// attribute, `; HttpOnly`.
    tail: Vec<u8>,
}

impl CookieMaker {
    fn new(cookie: &GeneratedCookie, origin: &str) -> Result<CookieMaker, String> {
        let head = format!("{}=\"", cookie.name).into_bytes();
        let mut tail = String::from("\"");
        if cookie.max_age != 0 {
            tail.push_str(&format!("; Max-Age={}", cookie.max_age));
        }
        if !cookie.path.is_empty() {
            tail.push_str(&format!("; Path={}", cookie.path));
        }
        for (name, value) in &cookie.attributes {
            match value.is_empty() {
                true => tail.push_str(&format!("; {name}")),
                false => tail.push_str(&format!("; {name}={value}")),
            }
        }
        tail.push_str("; HttpOnly");
        let maker = CookieMaker {
            name: cookie.name.clone(),
            head,
            tail: tail.into_bytes(),
        };
        match maker.field(b"0000000000000000") {
            Some(_) => Ok(maker),
            None => Err(format!(
                "{origin}: cookie {:?} cannot be written in Set-Cookie",
                cookie.name
            )),
        }
    }

    /// The `Set-Cookie` value for `value`.
    fn field(&self, value: &[u8; 16]) -> Option<HeaderValue> {
        let bytes = [&self.head[..], value, &self.tail[..]].concat();
        HeaderValue::from_bytes(&bytes).ok()
    }
}

/// One compiled hash policy.
#[derive(Debug)]
pub(crate) struct RequestHash {
    input: Input,
    terminal: bool,
}

#[derive(Debug)]
enum Input {
    Header(HeaderName),
    /// A pseudo-header Envoy reads from the request line: `:authority`, `:path`, `:method`.
    Pseudo(&'static str),
    Cookie(String),
    /// A cookie generated when the request lacks it.
    GeneratedCookie(CookieMaker),
    SourceIp,
    QueryParameter(String),
    /// A filter-state object: none Bearing keeps is hashable (see `HashSource`), so never
    /// a hash.
    FilterState,
}

impl RequestHash {
    /// `policy` compiled; a header name that is no valid one is an error naming `origin`.
    pub(crate) fn new(policy: &HashPolicy, origin: &str) -> Result<RequestHash, String> {
        let input = match &policy.source {
            HashSource::Header(name) => match name.as_str() {
                ":authority" => Input::Pseudo(":authority"),
                ":path" => Input::Pseudo(":path"),
                ":method" => Input::Pseudo(":method"),
                _ => Input::Header(HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    format!("{origin}: hash policy header {name:?} is not a valid header name")
                })?),
            },
            HashSource::Cookie(name) => Input::Cookie(name.clone()),
            HashSource::GeneratedCookie(cookie) => {
                Input::GeneratedCookie(CookieMaker::new(cookie, origin)?)
            }
            HashSource::SourceIp => Input::SourceIp,
            HashSource::QueryParameter(name) => Input::QueryParameter(name.clone()),
            HashSource::FilterState(_) => Input::FilterState,
        };
        Ok(RequestHash {
            input,
            terminal: policy.terminal,
        })
    }

    /// This policy's hash of the request on `downstream`, if what it reads is there (a
    /// generated cookie always is: `generate` is called when the request lacks it).
    fn evaluate(
        &self,
        parts: &http::request::Parts,
        downstream: &Downstream,
        generate: impl FnOnce() -> [u8; 16],
    ) -> Option<u64> {
        match &self.input {
            Input::Header(name) => header_hash(parts.headers.get_all(name).iter()),
            Input::Pseudo(":authority") => {
                let authority = parts.uri.authority().map(|a| a.as_str());
                let host = authority.or_else(|| {
                    let value = parts.headers.get(http::header::HOST)?;
                    value.to_str().ok()
                })?;
                Some(xxh64(host.as_bytes(), 0))
            }
            Input::Pseudo(":path") => {
                let path = parts.uri.path_and_query()?;
                Some(xxh64(path.as_str().as_bytes(), 0))
            }
            Input::Pseudo(_) => Some(xxh64(parts.method.as_str().as_bytes(), 0)),
            Input::Cookie(name) => {
                let value = cookie_value(&parts.headers, name)?;
                Some(xxh64(value, 0))
            }
            Input::GeneratedCookie(maker) => match cookie_value(&parts.headers, &maker.name) {
                Some(value) => Some(xxh64(value, 0)),
                None => Some(xxh64(&generate(), 0)),
            },
            Input::SourceIp => {
                // The address as text, written on the stack (at most 45 bytes for IPv6).
                let mut text = [0u8; 64];
                let mut rest = &mut text[..];
                write!(rest, "{}", downstream.peer.ip()).ok()?;
                let len = 64 - rest.len();
                Some(xxh64(&text[..len], 0))
            }
            Input::QueryParameter(name) => {
                let value = query_value(parts.uri.query()?, name)?;
                Some(xxh64(&value, 0))
            }
            Input::FilterState => None,
        }
    }
}

/// The hash of a request by `policies` (in order), as Envoy combines them; `None` when no
/// policy gave one. With it, the cookies the policies generated (`None`: none).
pub(crate) fn request_hash<'r>(
    policies: &'r [RequestHash],
    parts: &http::request::Parts,
    downstream: &Downstream,
) -> (Option<u64>, Option<SetCookies<'r>>) {
    let mut hash: Option<u64> = None;
    let (mut generated, mut value) = (0u64, None);
    for (i, policy) in policies.iter().enumerate() {
        let generate = || {
            generated |= 1 << i;
            *value.get_or_insert_with(|| downstream.cookie_value())
        };
        if let Some(new) = policy.evaluate(parts, downstream, generate) {
            // Rotating keeps two equal policies from cancelling each other out.
            let old = hash.map_or(0, |h| h.rotate_left(1));
            hash = Some(old ^ new);
        }
        if policy.terminal && hash.is_some() {
            break;
        }
    }
    let cookies = value.map(|value| SetCookies {
        policies,
        generated,
        value,
    });
    (hash, cookies)
}

/// xxHash64 of a header's values, sorted so that their order does not matter and hashed
/// as one run of bytes (Envoy's `xxHash64` of a span); `None` without a value. Only a header
/// given more than once is gathered to be sorted.
fn header_hash<'a>(mut values: impl Iterator<Item = &'a http::HeaderValue>) -> Option<u64> {
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(xxh64(first.as_bytes(), 0));
    };
    let mut all: Vec<&[u8]> = [first, second]
        .into_iter()
        .chain(values)
        .map(|v| v.as_bytes())
        .collect();
    all.sort_unstable();
    let mut state = Xxh64::new(0);
    for v in &all {
        state.update(v);
    }
    Some(state.digest())
}

/// The value of cookie `name` in the request's `Cookie` headers, as Envoy's
/// `parseCookieValue` reads it: the first `name=value` pair (pairs split at `;`, leading
/// spaces of the name skipped), the value's surrounding double quotes removed; an empty
/// value is none.
fn cookie_value<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h [u8]> {
    for header in headers.get_all(COOKIE) {
        for pair in header.as_bytes().split(|b| *b == b';') {
            let Some(eq) = pair.iter().position(|b| *b == b'=') else {
                continue;
            };
            let start = pair.iter().position(|b| *b != b' ').unwrap_or(pair.len());
            if pair.get(start..eq) != Some(name.as_bytes()) {
                continue;
            }
            let mut value = &pair[eq + 1..];
            if value.len() >= 2 && value[0] == b'"' && value[value.len() - 1] == b'"' {
                value = &value[1..value.len() - 1];
            }
            return (!value.is_empty()).then_some(value);
        }
    }
    None
}

/// The first value of query parameter `name` in `query` (without its `?`), parameters
/// split at `&`, name and value percent-decoded (a parameter without `=` has the empty
/// value), as Envoy's `parseAndDecodeQueryString`.
fn query_value(query: &str, name: &str) -> Option<Vec<u8>> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .find_map(|param| {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            (percent_decode(key) == name.as_bytes()).then(|| percent_decode(value))
        })
}

/// `text` with its `%XX` escapes decoded (an escape that is not one is kept as written).
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        let escaped = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(h), Some(l)) => hex(*h).zip(hex(*l)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn parts(target: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut req = http::Request::builder().uri(target);
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    fn policy(source: HashSource, terminal: bool) -> RequestHash {
        RequestHash::new(&HashPolicy { source, terminal }, "test").unwrap()
    }

    const PEER: Downstream = Downstream {
        peer: SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7)), 40000),
        local: SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)), 80),
    };

    /// The hash of `parts` by `policies` from [`PEER`].
    fn request_hash(
        policies: &[RequestHash],
        parts: &http::request::Parts,
        on: Downstream,
    ) -> Option<u64> {
        super::request_hash(policies, parts, &on).0
    }

    /// Each source hashes what Envoy hashes: xxHash64 with seed 0 of the header value, the
    /// cookie's unquoted value, the peer's address as text, the decoded parameter.
    #[test]
    fn each_source_hashes_its_value_with_xxhash64() {
        let p = parts(
            "/a?x=1&user=j%20d&user=other",
            &[("x-user", "alice"), ("cookie", "a=b; session_id=\"s1\"")],
        );
        let h = |source| request_hash(&[policy(source, false)], &p, PEER);
        assert_eq!(
            h(HashSource::Header("x-user".into())),
            Some(xxh64(b"alice", 0))
        );
        assert_eq!(
            h(HashSource::Cookie("session_id".into())),
            Some(xxh64(b"s1", 0))
        );
        assert_eq!(h(HashSource::SourceIp), Some(xxh64(b"10.0.0.7", 0)));
        let v6 = Downstream {
            peer: "[fd00::7]:5000".parse().unwrap(),
            ..PEER
        };
        let ip = [policy(HashSource::SourceIp, false)];
        assert_eq!(request_hash(&ip, &p, v6), Some(xxh64(b"fd00::7", 0)));
        assert_eq!(
            h(HashSource::QueryParameter("user".into())),
            Some(xxh64(b"j d", 0))
        );
        assert_eq!(h(HashSource::Header("x-missing".into())), None);
        assert_eq!(h(HashSource::Cookie("nope".into())), None);
        assert_eq!(h(HashSource::QueryParameter("nope".into())), None);
        // xxHash64's known value of the empty input with seed 0: the hash Envoy uses.
        assert_eq!(xxh64(b"", 0), 0xef46db3751d8e999);
    }

    /// Several values of a header hash alike in any order; policies combine as Envoy's
    /// (rotate left by one, XOR), a terminal one with a hash ending the list.
    #[test]
    fn policies_combine_in_order_and_a_terminal_one_ends_them() {
        let ab = parts("/", &[("x-v", "b"), ("x-v", "a")]);
        let ba = parts("/", &[("x-v", "a"), ("x-v", "b")]);
        let header = || policy(HashSource::Header("x-v".into()), false);
        assert_eq!(
            request_hash(&[header()], &ab, PEER),
            request_hash(&[header()], &ba, PEER)
        );
        assert_eq!(request_hash(&[header()], &ab, PEER), Some(xxh64(b"ab", 0)));
        let p = parts("/", &[("x-a", "1"), ("x-b", "2")]);
        let a = || policy(HashSource::Header("x-a".into()), false);
        let b = || policy(HashSource::Header("x-b".into()), false);
        let (ha, hb) = (xxh64(b"1", 0), xxh64(b"2", 0));
        assert_eq!(
            request_hash(&[a(), b()], &p, PEER),
            Some(ha.rotate_left(1) ^ hb)
        );
        // Two equal policies do not cancel out.
        assert_eq!(
            request_hash(&[a(), a()], &p, PEER),
            Some(ha.rotate_left(1) ^ ha)
        );
        let terminal_a = policy(HashSource::Header("x-a".into()), true);
        assert_eq!(request_hash(&[terminal_a, b()], &p, PEER), Some(ha));
        // A terminal policy without a hash does not end the list.
        let terminal_missing = policy(HashSource::Header("x-none".into()), true);
        assert_eq!(request_hash(&[terminal_missing, b()], &p, PEER), Some(hb));
        assert_eq!(request_hash(&[], &p, PEER), None);
    }

    /// A cookie policy with a `ttl`: a request without the cookie is hashed by the
    /// connection's value (hex xxHash64 of peer then local address, IPv6 in brackets) and
    /// gets Envoy's `Set-Cookie`; one that brings the cookie hashes alike and generates none;
    /// a terminal policy's hash before it leaves it unevaluated, generating nothing.
    #[test]
    fn a_cookie_with_a_ttl_is_generated_when_absent() {
        let generated = |max_age, path: &str, attributes: Vec<(String, String)>| {
            let cookie = GeneratedCookie {
                name: "sid".into(),
                max_age,
                path: path.into(),
                attributes,
            };
            policy(HashSource::GeneratedCookie(cookie), false)
        };
        let attributes = vec![
            ("SameSite".to_string(), "Lax".to_string()),
            ("Secure".to_string(), String::new()),
        ];
        let policies = [generated(3600, "/app", attributes)];
        let value = format!("{:016x}", xxh64(b"10.0.0.7:4000010.0.0.1:80", 0));
        let (hash, cookies) = super::request_hash(&policies, &parts("/", &[]), &PEER);
        assert_eq!(hash, Some(xxh64(value.as_bytes(), 0)));
        let fields: Vec<HeaderValue> = cookies.expect("generated").values().collect();
        let field =
            format!("sid=\"{value}\"; Max-Age=3600; Path=/app; SameSite=Lax; Secure; HttpOnly");
        assert_eq!(fields, [field.as_str()]);
        let with = parts("/", &[("cookie", &format!("sid=\"{value}\""))]);
        let (again, none) = super::request_hash(&policies, &with, &PEER);
        assert_eq!((again, none.is_none()), (hash, true));
        let bare = [generated(0, "", Vec::new())];
        let (_, cookies) = super::request_hash(&bare, &parts("/", &[]), &PEER);
        let fields: Vec<HeaderValue> = cookies.expect("generated").values().collect();
        assert_eq!(fields, [format!("sid=\"{value}\"; HttpOnly").as_str()]);
        let v6 = Downstream {
            peer: "[fd00::7]:5000".parse().unwrap(),
            local: "[fd00::1]:80".parse().unwrap(),
        };
        let expected = format!("{:016x}", xxh64(b"[fd00::7]:5000[fd00::1]:80", 0));
        assert_eq!(&v6.cookie_value()[..], expected.as_bytes());
        let terminal = policy(HashSource::Header("x-a".into()), true);
        let first = [terminal, generated(60, "", Vec::new())];
        let (hash, cookies) = super::request_hash(&first, &parts("/", &[("x-a", "1")]), &PEER);
        assert_eq!((hash, cookies.is_none()), (Some(xxh64(b"1", 0)), true));
    }

    /// A filter-state policy never gives a hash; a terminal one still ends the list once an
    /// earlier policy gave one, as in Envoy.
    #[test]
    fn a_filter_state_policy_gives_no_hash() {
        let state = |terminal| {
            let key = "kuma.mesh_rate_limit.match.spiffe_id".into();
            policy(HashSource::FilterState(key), terminal)
        };
        let a = || policy(HashSource::Header("x-a".into()), false);
        let b = || policy(HashSource::Header("x-b".into()), false);
        let p = parts("/", &[("x-a", "1"), ("x-b", "2")]);
        let (ha, hb) = (xxh64(b"1", 0), xxh64(b"2", 0));
        assert_eq!(request_hash(&[state(false)], &p, PEER), None);
        assert_eq!(
            request_hash(&[a(), state(false), b()], &p, PEER),
            Some(ha.rotate_left(1) ^ hb)
        );
        assert_eq!(request_hash(&[a(), state(true), b()], &p, PEER), Some(ha));
        assert_eq!(request_hash(&[state(true), b()], &p, PEER), Some(hb));
    }

    #[test]
    fn cookies_and_query_parameters_are_read_as_envoy_reads_them() {
        let h = cookie_value;
        let map = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.append(COOKIE, v.parse().unwrap());
            m
        };
        assert_eq!(h(&map("a=1;b=2"), "b"), Some(&b"2"[..]));
        assert_eq!(h(&map("  b=x; b=y"), "b"), Some(&b"x"[..]));
        assert_eq!(h(&map("b; c=3"), "b"), None);
        assert_eq!(h(&map("b="), "b"), None);
        assert_eq!(query_value("a&b=%41%zz", "b"), Some(b"A%zz".to_vec()));
        assert_eq!(query_value("a&b=1", "a"), Some(Vec::new()));
        assert_eq!(query_value("%62=2", "b"), Some(b"2".to_vec()));
    }
}

//! What a route hashes a request by, for its cluster's consistent hashing (Envoy's
//! `RouteAction.hash_policy`, kuma-cp's MeshLoadBalancingStrategy `hashPolicies`), computed
//! as Envoy's `HashPolicyImpl::generateHash` does, on the request as it came (before the
//! route's header edits and rewrites, as Envoy picks the host before it finalises the
//! request): each policy's xxHash64 (seed 0) of what it reads, combined in order by rotating
//! the hash so far left by one and XORing the next, a terminal policy that gave a hash
//! ending the list. A request none of the policies reads from has no hash.

use std::io::Write as _;
use std::net::IpAddr;

use bearing_proxy_config::{HashPolicy, HashSource};
use http::header::{HeaderName, COOKIE};
use xxhash_rust::xxh64::{xxh64, Xxh64};

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
    SourceIp,
    QueryParameter(String),
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
            HashSource::SourceIp => Input::SourceIp,
            HashSource::QueryParameter(name) => Input::QueryParameter(name.clone()),
        };
        Ok(RequestHash {
            input,
            terminal: policy.terminal,
        })
    }

    /// This policy's hash of the request from `peer`, if what it reads is there.
    fn evaluate(&self, parts: &http::request::Parts, peer: IpAddr) -> Option<u64> {
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
            Input::SourceIp => {
                // The address as text, written on the stack (at most 45 bytes for IPv6).
                let mut text = [0u8; 64];
                let mut rest = &mut text[..];
                write!(rest, "{peer}").ok()?;
                let len = 64 - rest.len();
                Some(xxh64(&text[..len], 0))
            }
            Input::QueryParameter(name) => {
                let value = query_value(parts.uri.query()?, name)?;
                Some(xxh64(&value, 0))
            }
        }
    }
}

/// The hash of a request by `policies` (in order), as Envoy combines them; `None` when no
/// policy gave one.
pub(crate) fn request_hash(
    policies: &[RequestHash],
    parts: &http::request::Parts,
    peer: IpAddr,
) -> Option<u64> {
    let mut hash: Option<u64> = None;
    for policy in policies {
        if let Some(new) = policy.evaluate(parts, peer) {
            // Rotating keeps two equal policies from cancelling each other out.
            let old = hash.map_or(0, |h| h.rotate_left(1));
            hash = Some(old ^ new);
        }
        if policy.terminal && hash.is_some() {
            break;
        }
    }
    hash
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

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7));

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
        let v6: IpAddr = "fd00::7".parse().unwrap();
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

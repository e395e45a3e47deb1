//! Paths as Kuma's gateway treats them: normalised before matching (as Envoy's
//! `normalize_path`, `merge_slashes` and `path_with_escaped_slashes_action:
//! UNESCAPE_AND_REDIRECT` do), matched by prefix at a segment boundary, rewritten by prefix.

use std::borrow::Cow;

/// A request path in the one form routes match and backends receive.
#[derive(Debug, PartialEq, Eq)]
pub struct NormalPath<'a> {
    /// The normal path; borrowed when the request's path already was one.
    pub path: Cow<'a, str>,
    /// Whether the request spelled a slash or backslash as `%2F` / `%5C`: Kuma's gateway
    /// (`UNESCAPE_AND_REDIRECT`) answers with a redirect to `path` instead of forwarding.
    pub escaped_slash: bool,
}

/// Why a request path is refused with 400 before routing; `at` is the byte offset in the path.
#[derive(Debug, PartialEq, Eq)]
pub enum InvalidPath {
    /// A `%` not followed by two hex digits (`%zz`, `%4`, a `%` at the end).
    BadEscape { at: usize },
    /// A NUL byte, raw or as `%00`.
    Nul { at: usize },
}

impl std::fmt::Display for InvalidPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InvalidPath::BadEscape { at } => {
                write!(
                    f,
                    "byte {at} of the path: `%` not followed by two hex digits"
                )
            }
            InvalidPath::Nul { at } => write!(f, "byte {at} of the path: NUL"),
        }
    }
}

/// Normalises a request path (without its query) the way Envoy does for Kuma's gateway, so
/// that what routes match is what the backend gets, however the client spelled it:
/// - `%XX` of an unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded, so `%2e` is a dot
///   and `/%61dmin` is `/admin`; other escapes are kept, with uppercase hex;
/// - `%2F` and `%5C` are decoded to a slash, and [`NormalPath::escaped_slash`] says so;
/// - a backslash, raw or decoded, is a slash (as browsers and Chromium's canonicaliser, which
///   Envoy uses, read it);
/// - characters RFC 3986 does not allow in a path (`"`, `{`, `}`, `|`, `^`, non-ASCII bytes,
///   ...) are percent-encoded with uppercase hex;
/// - repeated slashes are merged, and `.` and `..` segments removed (RFC 3986 §5.2.4; `..`
///   stops at the root), after decoding: `/a/%2e%2E/b` and `/a/.%2e/b` are `/b`;
/// - an invalid escape or a NUL is refused ([`InvalidPath`]).
///
/// The result starts with one `/` never followed by another or by a backslash, so a redirect
/// to it stays on the request's origin; normalising it again changes nothing. A path that
/// needs none of this (the common case) is checked in one pass and borrowed. Targets that are
/// not paths (`*`) are left alone.
pub fn normalize(path: &str) -> Result<NormalPath<'_>, InvalidPath> {
    let unchanged = NormalPath {
        path: Cow::Borrowed(path),
        escaped_slash: false,
    };
    if !path.starts_with('/') || is_normal(path.as_bytes()) {
        return Ok(unchanged);
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    out.push('/');
    // Where the segment being written starts in `out`, just after its `/`.
    let mut segment = out.len();
    let mut escaped_slash = false;
    let mut i = 1;
    while i < bytes.len() {
        let byte = bytes[i];
        let at = i;
        let (byte, escaped) = if byte == b'%' {
            let decoded = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| Some((hex_value(hex[0])? << 4) | hex_value(hex[1])?))
                .ok_or(InvalidPath::BadEscape { at })?;
            i += 2;
            (decoded, true)
        } else {
            (byte, false)
        };
        match byte {
            0 => return Err(InvalidPath::Nul { at }),
            b'/' | b'\\' => {
                escaped_slash |= escaped;
                segment = close_segment(&mut out, segment, false);
            }
            b if is_unreserved(b) || (!escaped && is_plain(b)) => out.push(char::from(b)),
            b => push_escaped(&mut out, b),
        }
        i += 1;
    }
    close_segment(&mut out, segment, true);
    if out == path {
        return Ok(unchanged);
    }
    Ok(NormalPath {
        path: Cow::Owned(out),
        escaped_slash,
    })
}

/// Ends the segment of `out` that starts at `start` (`out[start - 1]` is its `/`): an empty
/// one is dropped (merged slashes), `.` removed, `..` removed with the segment before it.
/// Unless `last`, a kept segment gets its closing `/`. Returns where the next segment starts.
fn close_segment(out: &mut String, start: usize, last: bool) -> usize {
    match &out[start..] {
        "" => {}
        "." => out.truncate(start),
        ".." => {
            // `out[..start - 1]` is everything before this segment's slash; the previous
            // segment starts after the last slash there. At the root there is none to remove.
            let previous = out[..start - 1].rfind('/').map_or(start, |slash| slash + 1);
            out.truncate(previous);
        }
        _ if last => {}
        _ => out.push('/'),
    }
    out.len()
}

/// Whether `path` (starting with `/`) is already normal: only characters kept as they are,
/// no empty segment (`//`) and no `.` or `..` segment. One pass, no allocation.
fn is_normal(path: &[u8]) -> bool {
    let mut segment_start = true;
    for (i, &b) in path.iter().enumerate().skip(1) {
        if !is_plain(b) {
            return false;
        }
        if b == b'/' {
            if segment_start {
                return false;
            }
            segment_start = true;
        } else {
            if segment_start && b == b'.' {
                let rest = &path[i..];
                let dots = if rest.starts_with(b"..") { 2 } else { 1 };
                if rest.get(dots).is_none_or(|b| *b == b'/') {
                    return false;
                }
            }
            segment_start = false;
        }
    }
    true
}

/// RFC 3986 unreserved characters: decoded wherever they appear escaped.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters a normal path holds as they are: unreserved, sub-delims, `:`, `@`, `/`, and
/// `[` `]` (which Chromium's canonicaliser, hence Envoy, keeps too). Everything else is
/// escaped, decoded or refused by [`normalize`].
fn is_plain(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'['
                | b']'
        )
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit).to_digit(16).map(|v| v as u8)
}

/// Appends `%XX` for `byte`, uppercase hex (RFC 3986 §2.1).
fn push_escaped(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0xF)]));
}

/// A prefix as matched: without its trailing slash, except for `/` itself.
pub fn prefix_key(prefix: &str) -> &str {
    match prefix.trim_end_matches('/') {
        "" => "/",
        p => p,
    }
}

/// Whether `path` starts with `prefix` (a [`prefix_key`]) at a segment boundary: `/api`
/// matches `/api`, `/api/` and `/api/x`, not `/apix`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// `path` with its matched `prefix` (a [`prefix_key`]) replaced by `replacement`, never
/// doubling the slash between them: `/api` → `/` turns `/api/x` into `/x` and `/api` into `/`.
pub fn replace_prefix(prefix: &str, replacement: &str, path: &str) -> String {
    let rest = if prefix == "/" {
        path
    } else {
        path.get(prefix.len()..).unwrap_or("")
    };
    let head = replacement.trim_end_matches('/');
    let mut out = String::with_capacity(head.len() + rest.len() + 1);
    out.push_str(head);
    if rest.is_empty() && replacement.ends_with('/') && !head.is_empty() {
        out.push('/');
    }
    out.push_str(rest);
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    out
}

/// Percent-decodes a query component (`+` stays `+`); borrowed when nothing is encoded.
/// Invalid escapes are kept as they are.
pub fn decode_component(value: &str) -> Cow<'_, str> {
    if !value.contains('%') {
        return Cow::Borrowed(value);
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let v = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(v as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `normalize` as the router sees it: the path, with ` (redirect)` when it came with an
    /// escaped slash, or the error.
    fn normal(input: &str) -> String {
        match normalize(input) {
            Ok(NormalPath {
                path,
                escaped_slash: false,
            }) => path.into_owned(),
            Ok(NormalPath {
                path,
                escaped_slash: true,
            }) => format!("{path} (redirect)"),
            Err(e) => format!("400: {e}"),
        }
    }

    #[test]
    fn normalizes_like_envoy() {
        for (input, want) in [
            // Already normal: unchanged.
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/a.b/.c/..d/...", "/a.b/.c/..d/..."),
            ("/a;b=c/@:!$&'()*+,[]", "/a;b=c/@:!$&'()*+,[]"),
            // Dot segments and merged slashes (RFC 3986 §5.2.4, `..` stops at the root).
            ("//a/../b", "/b"),
            ("/a//b", "/a/b"),
            ("/a///b//", "/a/b/"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/../", "/a/"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/a/.", "/a/"),
            ("/.", "/"),
            ("//", "/"),
            ("/a/b/c/../../d", "/a/d"),
            ("/public/../secret.txt", "/secret.txt"),
            // Encoded dots, in any case and mixed with plain ones, are dots.
            ("/public/%2e%2e/secret.txt", "/secret.txt"),
            ("/public/%2E%2E/secret.txt", "/secret.txt"),
            ("/public/%2e%2E/secret.txt", "/secret.txt"),
            ("/public/.%2e/secret.txt", "/secret.txt"),
            ("/public/%2e./secret.txt", "/secret.txt"),
            ("/public/%2e/x", "/public/x"),
            ("/public/%2e%2e", "/"),
            ("/public/x%2e%2e/y", "/public/x../y"),
            ("/%2e%2e/%2e%2e/etc/passwd", "/etc/passwd"),
            // Unreserved characters are decoded; reserved ones stay escaped, uppercase.
            ("/%61dmin", "/admin"),
            ("/%41%5a%30%39%2d%5f%7e", "/AZ09-_~"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb%23c%3Bd%25e", "/a%3Fb%23c%3Bd%25e"),
            (
                "/a%2x",
                "400: byte 2 of the path: `%` not followed by two hex digits",
            ),
            ("/%252e%252e/x", "/%252e%252e/x"),
            // Encoded slashes and backslashes: decoded, merged, and a redirect.
            ("/a%2Fb", "/a/b (redirect)"),
            ("/a%2fb%5Cc", "/a/b/c (redirect)"),
            ("/%2Fevil.example/x", "/evil.example/x (redirect)"),
            ("/%2F%2Fevil.example", "/evil.example (redirect)"),
            ("/%5Cevil.example", "/evil.example (redirect)"),
            ("/%5c%5cevil.example", "/evil.example (redirect)"),
            ("/%2F/evil.example", "/evil.example (redirect)"),
            ("/a/%2e%2e%2F%2e%2e%2Fb", "/b (redirect)"),
            // Raw backslashes are slashes, as browsers read them.
            ("/\\evil.example", "/evil.example"),
            ("/\\\\evil.example/x", "/evil.example/x"),
            ("/a\\..\\b", "/b"),
            // Characters a path may not hold are escaped; non-ASCII byte by byte.
            (
                "/a\"b{c}d|e^f`g<h>i j",
                "/a%22b%7Bc%7Dd%7Ce%5Ef%60g%3Ch%3Ei%20j",
            ),
            ("/caf\u{e9}/\u{65e5}", "/caf%C3%A9/%E6%97%A5"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            // Invalid escapes and NUL are refused.
            (
                "/a%zz",
                "400: byte 2 of the path: `%` not followed by two hex digits",
            ),
            (
                "/a%4",
                "400: byte 2 of the path: `%` not followed by two hex digits",
            ),
            (
                "/a%",
                "400: byte 2 of the path: `%` not followed by two hex digits",
            ),
            (
                "/%%32%65%%32%65/x",
                "400: byte 1 of the path: `%` not followed by two hex digits",
            ),
            ("/a%00b", "400: byte 2 of the path: NUL"),
            ("/a\0b", "400: byte 2 of the path: NUL"),
            // Not a path: left alone.
            ("*", "*"),
        ] {
            assert_eq!(normal(input), want, "{input:?}");
        }
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for input in [
            "/", "/a/b", "/a/b/", "/a.b/..c", "/x;y=1/@", "/a%20b", "/a%2Cb",
        ] {
            let n = normalize(input).unwrap();
            assert!(matches!(n.path, Cow::Borrowed(_)), "{input}");
            assert!(!n.escaped_slash);
        }
    }

    /// Every result is normal (normalising again changes nothing), starts with exactly one
    /// slash and has no backslash: a redirect to it can never leave the origin.
    #[test]
    fn results_are_stable_and_stay_on_the_origin() {
        const PIECES: [&str; 16] = [
            "/",
            "\\",
            ".",
            "..",
            "%2e",
            "%2E",
            "%2F",
            "%2f",
            "%5C",
            "%5c",
            "a",
            "%61",
            "%20",
            "evil.example",
            "\u{e9}",
            "%3b",
        ];
        // Every sequence of up to four pieces after a leading slash: 16^4 paths.
        let mut checked = 0;
        for n in 0..=4u32 {
            for mut code in 0..PIECES.len().pow(n) {
                let mut input = String::from("/");
                for _ in 0..n {
                    input.push_str(PIECES[code % PIECES.len()]);
                    code /= PIECES.len();
                }
                let once = normalize(&input).unwrap().path.into_owned();
                assert!(once.starts_with('/'), "{input:?} -> {once:?}");
                assert!(!once.starts_with("//"), "{input:?} -> {once:?}");
                assert!(!once.contains('\\'), "{input:?} -> {once:?}");
                let again = normalize(&once).unwrap();
                assert_eq!(again.path, once, "{input:?}");
                assert!(matches!(again.path, Cow::Borrowed(_)), "{input:?}");
                assert!(!again.escaped_slash, "{input:?}");
                checked += 1;
            }
        }
        assert!(checked > 60_000);
    }

    #[test]
    fn long_paths_take_linear_time() {
        // 64 KiB of `..` segments after 64 KiB of plain ones, the longest target the `http`
        // crate takes: all removed.
        let up = "/a".repeat(10_000) + &"/..".repeat(10_000);
        assert_eq!(normal(&up), "/");
        let dots = "/%2e%2e".repeat(9_000) + "/x";
        assert_eq!(normal(&dots), "/x");
        let slashes = "/".repeat(65_000) + "x";
        assert_eq!(normal(&slashes), "/x");
        let plain = "/abcdefgh".repeat(7_000);
        assert!(matches!(normalize(&plain).unwrap().path, Cow::Borrowed(_)));
    }

    #[test]
    fn prefixes_match_at_segment_boundaries() {
        let p = prefix_key("/api/");
        assert_eq!(p, "/api");
        assert!(prefix_matches(p, "/api"));
        assert!(prefix_matches(p, "/api/"));
        assert!(prefix_matches(p, "/api/x"));
        assert!(!prefix_matches(p, "/apix"));
        assert!(!prefix_matches(p, "/ap"));
        assert!(prefix_matches(prefix_key("/"), "/anything"));
    }

    #[test]
    fn prefix_rewrites_never_double_slashes() {
        assert_eq!(replace_prefix("/api", "/", "/api/x"), "/x");
        assert_eq!(replace_prefix("/api", "/", "/api"), "/");
        assert_eq!(replace_prefix("/api", "/v2", "/api/x"), "/v2/x");
        assert_eq!(replace_prefix("/api", "/v2/", "/api/x"), "/v2/x");
        assert_eq!(replace_prefix("/api", "/v2/", "/api"), "/v2/");
        assert_eq!(replace_prefix("/api", "/v2", "/api"), "/v2");
        assert_eq!(replace_prefix("/", "/v2", "/x"), "/v2/x");
    }

    #[test]
    fn query_components_are_percent_decoded() {
        assert_eq!(decode_component("a%20b"), "a b");
        assert_eq!(decode_component("a+b"), "a+b");
        assert_eq!(decode_component("100%"), "100%");
        assert!(matches!(decode_component("plain"), Cow::Borrowed(_)));
    }
}

//! Paths as Kuma's gateway treats them: normalised before matching (merged slashes, no dot
//! segments), matched by prefix at a segment boundary, rewritten by prefix.

use std::borrow::Cow;

/// The path with repeated slashes merged and `.` / `..` segments removed (RFC 3986 §5.2.4),
/// as Envoy's `merge_slashes` and `normalize_path` do; borrowed when already normal.
pub fn normalize(path: &str) -> Cow<'_, str> {
    // `*` (OPTIONS) and other non-path targets are left alone.
    if !path.starts_with('/') || is_normal(path) {
        return Cow::Borrowed(path);
    }
    let mut segments: Vec<&str> = Vec::new();
    let mut rest = &path[1..];
    let trailing = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    loop {
        let (segment, next) = match rest.split_once('/') {
            Some((s, n)) => (s, Some(n)),
            None => (rest, None),
        };
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

/// Whether `path` (starting with `/`) has no empty, `.` or `..` segment: the common case,
/// checked without allocating.
fn is_normal(path: &str) -> bool {
    let inner = &path[1..];
    if inner.is_empty() {
        return true;
    }
    let body = inner.strip_suffix('/').unwrap_or(inner);
    !body.is_empty()
        && body
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

/// Whether the path holds an encoded slash or backslash (`%2F`, `%5C`), which Kuma's gateway
/// answers with a redirect to the decoded path.
pub fn has_escaped_slash(path: &str) -> bool {
    path.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_uppercase()),
                (b'2', b'F') | (b'5', b'C')
            )
    })
}

/// The path with `%2F` and `%5C` decoded to `/` and `\`.
pub fn unescape_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3).map(str::to_ascii_uppercase);
        match code.as_deref() {
            Some("2F") => {
                out.push('/');
                rest = &rest[i + 3..];
            }
            Some("5C") => {
                out.push('\\');
                rest = &rest[i + 3..];
            }
            _ => {
                out.push('%');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
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

    #[test]
    fn normalizes_like_envoy() {
        for (input, want) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("//a/../b", "/b"),
            ("/a//b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/a/.", "/a/"),
            ("//", "/"),
        ] {
            assert_eq!(normalize(input), want, "{input}");
        }
        assert!(matches!(normalize("/a/b"), Cow::Borrowed(_)));
        assert!(matches!(normalize("/"), Cow::Borrowed(_)));
    }

    #[test]
    fn escaped_slashes() {
        assert!(has_escaped_slash("/a%2Fb"));
        assert!(has_escaped_slash("/a%5cb"));
        assert!(!has_escaped_slash("/a%20b"));
        assert_eq!(unescape_slashes("/a%2fb%5Cc%20%"), "/a/b\\c%20%");
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

//! Gzip response compression, as Envoy's compressor filter with its gzip library does it
//! (kuma-cp puts one on every builtin gateway listener): the decision, made once for both
//! codecs, and the compressing body.
//!
//! A response is *compressible* ([`compressible`]) when its status is not one of the
//! uncompressible ones, its `Content-Length` (when known) reaches the minimum, its media type
//! is one of the listed ones (or it has none), `Cache-Control` does not say `no-transform`, it
//! has no `Content-Encoding`, and no `ETag` when those disable compression. Every compressible
//! response gets `Vary: Accept-Encoding`, whatever the request said, so that a cache in front
//! knows the resource also exists compressed. It is compressed when, besides, the request's
//! `Accept-Encoding` prefers gzip ([`accepts_gzip`]) and it has a body: not a HEAD's, a 204's
//! or a 304's. Then `Content-Length` goes, `Content-Encoding: gzip` comes, a strong `ETag` is
//! removed (or weakened), and the body is compressed as it streams ([`GzipBody`], zlib-rs
//! with the configured level, window, memory level and strategy: each piece that arrives is
//! compressed and flushed, so a streamed response is not held back).
//!
//! The byte codec never compresses: a request whose client accepts gzip is handed to hyper
//! (`byte_codec::route_head`, asking [`negotiate`]), so on the byte path only [`vary_head`]
//! edits a head, and the body of a response to a client that does not accept gzip still
//! moves untouched (spliced when large).

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bearing_proxy_config::{Compression, GzipStrategy};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::Response;
use http_body::{Body, Frame, SizeHint};
use zlib_rs::{Deflate, DeflateConfig, DeflateError, DeflateFlush, Method, Status, Strategy};

use super::hyper_codec::ProxyBody;
use crate::body::BodyError;

/// Envoy's media types compressed when the filter names none.
const DEFAULT_CONTENT_TYPES: [&str; 18] = [
    "text/html",
    "text/plain",
    "text/css",
    "application/javascript",
    "application/x-javascript",
    "text/javascript",
    "text/x-javascript",
    "text/ecmascript",
    "text/js",
    "text/jscript",
    "text/x-js",
    "application/ecmascript",
    "application/x-json",
    "application/xml",
    "application/json",
    "image/svg+xml",
    "text/xml",
    "application/xhtml+xml",
];

/// The `Vary` token added, compared case-sensitively with those present as Envoy does.
const ACCEPT_ENCODING: &str = "Accept-Encoding";

/// Whether a request's client accepts gzip ([`accepts_gzip`] on its `Accept-Encoding`), after
/// which the header is removed when `config` says so (the upstream then never compresses):
/// what both codecs ask of a request to a listener with compression.
pub(crate) fn negotiate(config: &Compression, headers: &mut HeaderMap) -> bool {
    let accept = headers.get_all(header::ACCEPT_ENCODING).iter();
    let accepted = accepts_gzip(accept.map(HeaderValue::as_bytes));
    if config.remove_accept_encoding {
        headers.remove(header::ACCEPT_ENCODING);
    }
    accepted
}

/// Whether the `Accept-Encoding` values of a request (`values`, its header lines) choose gzip,
/// as Envoy's compressor decides with gzip its only compressor: each `coding;q=value` (a `q`
/// that does not parse drops its entry; no `q` is 1) is a wish, `gzip;q=0` (or `*;q=0`
/// without gzip named) rules gzip out, and the wish with the highest weight among `gzip`, `*`
/// and `identity` (the first at equal weights) must be `gzip` or `*`. Codings are compared
/// case-sensitively, as Envoy compares them. No header, or an empty one, chooses identity.
pub(crate) fn accepts_gzip<'a>(values: impl Iterator<Item = &'a [u8]>) -> bool {
    let mut any = false;
    let mut gzip_allowed = true;
    let mut best: Option<(&[u8], f32)> = None;
    for token in values.flat_map(|v| v.split(|b| *b == b',')) {
        if token.is_empty() {
            continue;
        }
        let (coding, params) = match token.iter().position(|b| *b == b';') {
            Some(at) => (&token[..at], Some(&token[at + 1..])),
            None => (token, None),
        };
        let coding = coding.trim_ascii();
        let mut q = 1.0f32;
        if let Some(params) = params {
            if let Some(eq) = params.iter().position(|b| *b == b'=') {
                if params[..eq].trim_ascii().eq_ignore_ascii_case(b"q") {
                    let value = std::str::from_utf8(params[eq + 1..].trim_ascii()).ok();
                    match value.and_then(|v| v.parse::<f32>().ok()) {
                        Some(parsed) => q = parsed,
                        None => continue,
                    }
                }
            }
        }
        any = true;
        if q == 0.0 && coding == b"gzip" {
            gzip_allowed = false;
        }
        let candidate = matches!(coding, b"gzip" | b"*" | b"identity");
        if candidate && q > best.map_or(0.0, |(_, b)| b) {
            best = Some((coding, q));
        }
    }
    any && gzip_allowed && matches!(best, Some((b"gzip" | b"*", _)))
}

/// Whether a response with `status` and header fields `fields` (names in any case) could be
/// compressed under `config`, whatever the request said; `length` is its body's size when the
/// fields carry no `Content-Length` but the size is known (hyper's own replies).
pub(crate) fn compressible<'a>(
    config: &Compression,
    status: u16,
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    length: Option<u64>,
) -> bool {
    if config.uncompressible_statuses.contains(&status) {
        return false;
    }
    let mut length = length;
    for (name, value) in fields {
        let is = |wanted: &str| name.eq_ignore_ascii_case(wanted.as_bytes());
        if is("content-encoding") {
            return false;
        } else if is("etag") {
            if config.disable_on_etag && !config.weaken_etag {
                return false;
            }
        } else if is("cache-control") {
            let no_transform = value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"no-transform"));
            if no_transform {
                return false;
            }
        } else if is("content-type") {
            if !allowed_type(config, value) {
                return false;
            }
        } else if is("content-length") {
            let parsed = std::str::from_utf8(value.trim_ascii()).ok();
            match parsed.and_then(|v| v.parse::<u64>().ok()) {
                Some(n) => length = Some(n),
                None => return false,
            }
        }
    }
    length.is_none_or(|n| n >= config.min_content_length)
}

/// Whether a `Content-Type` value names a media type `config` compresses (its parameters
/// aside, case-insensitively).
fn allowed_type(config: &Compression, value: &[u8]) -> bool {
    let media = value.split(|b| *b == b';').next().unwrap_or_default();
    let media = media.trim_ascii();
    match config.content_types.is_empty() {
        true => DEFAULT_CONTENT_TYPES
            .iter()
            .any(|t| media.eq_ignore_ascii_case(t.as_bytes())),
        false => config
            .content_types
            .iter()
            .any(|t| media.eq_ignore_ascii_case(t.as_bytes())),
    }
}

/// The `Vary` value a compressible response goes out with, given its `Vary` values: `None`
/// when they already name `Accept-Encoding`, else theirs (joined) with it appended.
fn vary_with_accept_encoding<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<Vec<u8>> {
    let mut joined = Vec::new();
    for value in values {
        let named = value
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii() == ACCEPT_ENCODING.as_bytes());
        if named {
            return None;
        }
        joined.extend_from_slice(value);
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(ACCEPT_ENCODING.as_bytes());
    Some(joined)
}

/// On the byte path, where nothing is compressed: adds `Vary: Accept-Encoding` to a response
/// head (written by `bearing_http1`) that `config` could compress.
pub(crate) fn vary_head(config: &Compression, head: &mut Vec<u8>) {
    let Some((line, fields)) = bearing_http1::written_head(head) else {
        return;
    };
    // `HTTP/1.1 200 ...`
    let status = line
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok());
    let Some(status) = status else {
        return;
    };
    if !compressible(config, status, fields.clone(), None) {
        return;
    }
    let vary = fields
        .filter(|(name, _)| name.eq_ignore_ascii_case(b"vary"))
        .map(|(_, value)| value);
    let Some(value) = vary_with_accept_encoding(vary) else {
        return;
    };
    bearing_http1::edit_fields(
        head,
        |name| name.eq_ignore_ascii_case(b"vary"),
        [(&b"vary"[..], value.as_slice())],
    );
}

/// On the hyper path: gives a response the `Vary` of a compressible one and, when the
/// request chose gzip (`accepted`: never for a HEAD), compresses it.
pub(crate) fn respond(config: &Compression, resp: &mut Response<ProxyBody>, accepted: bool) {
    let status = resp.status().as_u16();
    let fields = resp
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
    let length = resp.body().size_hint().exact();
    if !compressible(config, status, fields, length) {
        return;
    }
    let headers = resp.headers_mut();
    let vary = headers
        .get_all(header::VARY)
        .iter()
        .map(HeaderValue::as_bytes);
    if let Some(value) = vary_with_accept_encoding(vary) {
        if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
            headers.insert(header::VARY, value);
        }
    }
    let bodiless = matches!(status, 100..=199 | 204 | 304) || resp.body().is_end_stream();
    if !accepted || bodiless {
        return;
    }
    gzip_headers(config, resp.headers_mut());
    let body = std::mem::replace(resp.body_mut(), ProxyBody::Held(Default::default()));
    *resp.body_mut() = ProxyBody::Gzip(Box::new(GzipBody::new(body, config)));
}

/// The header changes of a response being compressed: its length is no longer known, it is
/// gzip-encoded, and a strong `ETag` no longer validates its bytes (removed, or weakened
/// when `config` says so; a weak one stays).
fn gzip_headers(config: &Compression, headers: &mut HeaderMap) {
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    let Some(etag) = headers.get(header::ETAG) else {
        return;
    };
    let value = etag.as_bytes();
    if value.len() >= 2 && value[1] == b'/' && matches!(value[0], b'W' | b'w') {
        return;
    }
    let weak = [&b"W/"[..], value].concat();
    match HeaderValue::from_bytes(&weak) {
        Ok(weak) if config.weaken_etag => {
            headers.insert(header::ETAG, weak);
        }
        _ => {
            headers.remove(header::ETAG);
        }
    }
}

/// A response body compressed to gzip as it streams: each data frame is compressed and
/// flushed (zlib's sync flush), the end of the body (or its trailers) finishes the stream.
pub struct GzipBody<B> {
    inner: B,
    deflate: Deflate,
    /// Output room added at a time (the gzip library's `chunk_size`).
    chunk: usize,
    /// Trailers that came after the body, sent after the gzip stream's end.
    trailers: Option<HeaderMap>,
    /// The gzip stream has ended.
    finished: bool,
}

/// zlib's `windowBits` asks for a gzip wrapper with 16 added.
const GZIP_WRAPPER: i32 = 16;

impl<B> GzipBody<B> {
    /// The body being compressed.
    pub(crate) fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// `inner` compressed as `config` says (its values clamped to zlib's ranges, which the
    /// translation already checked, so that none can make zlib refuse its configuration).
    fn new(inner: B, config: &Compression) -> Self {
        let strategy = match config.strategy {
            GzipStrategy::Default => Strategy::Default,
            GzipStrategy::Filtered => Strategy::Filtered,
            GzipStrategy::HuffmanOnly => Strategy::HuffmanOnly,
            GzipStrategy::Rle => Strategy::Rle,
            GzipStrategy::Fixed => Strategy::Fixed,
        };
        let deflate = Deflate::new_with_config(DeflateConfig {
            level: config.level.clamp(1, 9) as i32,
            method: Method::Deflated,
            window_bits: i32::from(config.window_bits.clamp(9, 15)) + GZIP_WRAPPER,
            mem_level: i32::from(config.memory_level.clamp(1, 9)),
            strategy,
        });
        GzipBody {
            inner,
            deflate,
            chunk: (config.chunk_size as usize).max(64),
            trailers: None,
            finished: false,
        }
    }

    /// Compresses `input` and flushes (`flush`: sync, or finish), giving the output.
    fn run(&mut self, mut input: &[u8], flush: DeflateFlush) -> Result<Vec<u8>, DeflateError> {
        let mut out = Vec::new();
        loop {
            let written = out.len();
            out.resize(written + self.chunk, 0);
            let (before_in, before_out) = (self.deflate.total_in(), self.deflate.total_out());
            let status = self.deflate.compress(input, &mut out[written..], flush)?;
            let taken = usize::try_from(self.deflate.total_in() - before_in).unwrap_or(usize::MAX);
            let produced =
                usize::try_from(self.deflate.total_out() - before_out).unwrap_or(self.chunk);
            input = input.get(taken..).unwrap_or_default();
            out.truncate(written + produced.min(self.chunk));
            // Room left in this round's output: zlib had nothing more to give.
            let room = produced < self.chunk;
            match status {
                Status::StreamEnd => return Ok(out),
                Status::BufError if room => return Ok(out),
                Status::Ok if room && input.is_empty() && flush != DeflateFlush::Finish => {
                    return Ok(out)
                }
                _ => {}
            }
        }
    }
}

impl<B> Body for GzipBody<B>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            if this.finished {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let (input, flush) = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => (data, DeflateFlush::SyncFlush),
                    Err(frame) => {
                        this.trailers = frame.into_trailers().ok();
                        (Bytes::new(), DeflateFlush::Finish)
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => (Bytes::new(), DeflateFlush::Finish),
            };
            this.finished = flush == DeflateFlush::Finish;
            match this.run(&input, flush) {
                Ok(out) if out.is_empty() => {}
                Ok(out) => return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
                Err(e) => {
                    // Cannot happen with a valid stream; the missing gzip end tells the client.
                    let e = e.as_str();
                    tracing::warn!("gzip compression failed, the response ends here: {e}");
                    this.finished = true;
                    this.trailers = None;
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use std::io::Read as _;

    fn accepts(value: &str) -> bool {
        accepts_gzip(std::iter::once(value.as_bytes()))
    }

    /// The answers Envoy 1.40's compressor gave for these `Accept-Encoding` values (probed
    /// against the real binary with Kuma's gateway filter).
    #[test]
    fn accept_encoding_is_read_as_envoy_reads_it() {
        for (value, expected) in [
            ("gzip", true),
            ("*", true),
            ("br, gzip;q=0.1", true),
            ("x;q=abc, gzip", true),
            ("gzip ;q=1", true),
            ("gzip; Q=0.5", true),
            (" gzip ", true),
            ("gzip;q=0.001", true),
            ("gzip;level=1", true),
            ("gzip;q=1.5", true),
            ("deflate, gzip", true),
            ("", false),
            ("GZIP", false),
            ("gzip;q=0", false),
            ("*;q=0", false),
            ("gzip;q=0, *", false),
            ("identity", false),
            ("identity;q=1, gzip;q=0.5", false),
            ("gzip;q=0.5, identity", false),
            ("br", false),
            ("deflate", false),
            ("gzip;q=-1", false),
            ("identity, *;q=0.5", false),
            ("*, gzip;q=0", false),
            ("x-gzip", false),
            ("gzip;q=", false),
            ("gzip,gzip;q=0", false),
        ] {
            assert_eq!(accepts(value), expected, "{value:?}");
        }
        assert!(!accepts_gzip(std::iter::empty()));
        let lines = [&b"br"[..], &b"gzip;q=0.5"[..]];
        assert!(accepts_gzip(lines.into_iter()), "header lines are one list");
    }

    fn fields(pairs: &[(&'static str, &'static str)]) -> Vec<(&'static [u8], &'static [u8])> {
        pairs
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect()
    }

    /// Which responses Envoy 1.40 marked `Vary: Accept-Encoding` (and compressed for a client
    /// accepting gzip) with Kuma's filter.
    #[test]
    fn compressible_responses_are_those_envoy_compresses() {
        let kuma = Compression::kuma_gateway();
        let check = |status, pairs: &[(&'static str, &'static str)]| {
            compressible(&kuma, status, fields(pairs).into_iter(), None)
        };
        for (status, pairs, expected) in [
            (
                200,
                vec![("Content-Type", "text/html"), ("Content-Length", "100")],
                true,
            ),
            (
                200,
                vec![("content-type", "TEXT/HTML; charset=utf-8")],
                true,
            ),
            (200, vec![("content-type", "text/html ;x")], true),
            (200, vec![("content-type", "application/xml")], true),
            (200, vec![("content-type", "text/javascript")], true),
            (200, vec![("content-length", "30")], true),
            (404, vec![("cache-control", "no-transformx")], true),
            (204, vec![], true),
            (304, vec![("content-length", "100")], true),
            (500, vec![("vary", "Origin")], true),
            (200, vec![("content-type", "image/png")], false),
            (
                200,
                vec![("content-type", "application/octet-stream")],
                false,
            ),
            (200, vec![("content-type", "text/event-stream")], false),
            (200, vec![("content-type", "application/grpc")], false),
            (
                200,
                vec![("content-type", "text/html"), ("content-length", "29")],
                false,
            ),
            (200, vec![("content-length", "0")], false),
            (200, vec![("etag", "\"abc\"")], false),
            (200, vec![("etag", "W/\"abc\"")], false),
            (200, vec![("cache-control", "public, No-Transform")], false),
            (200, vec![("content-encoding", "identity")], false),
            (200, vec![("content-encoding", "br")], false),
        ] {
            assert_eq!(check(status, &pairs), expected, "{status} {pairs:?}");
        }
        // A reply whose size hyper knows but whose head does not say it.
        assert!(!compressible(&kuma, 503, std::iter::empty(), Some(19)));
        let mut codes = Compression::kuma_gateway();
        codes.uncompressible_statuses = vec![206];
        assert!(!compressible(&codes, 206, std::iter::empty(), None));
        let mut own = Compression::kuma_gateway();
        own.content_types = vec!["application/x-thing".into()];
        let thing = fields(&[("content-type", "application/X-Thing")]);
        assert!(compressible(&own, 200, thing.into_iter(), None));
        let html = fields(&[("content-type", "text/html")]);
        assert!(!compressible(&own, 200, html.into_iter(), None));
    }

    #[test]
    fn vary_gets_accept_encoding_once() {
        let mut head =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\nVary: Origin\r\ncontent-length: 100\r\n\r\n"
                .to_vec();
        vary_head(&Compression::kuma_gateway(), &mut head);
        assert_eq!(
            String::from_utf8(head.clone()).unwrap(),
            "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 100\r\nvary: Origin, Accept-Encoding\r\n\r\n"
        );
        let again = head.clone();
        vary_head(&Compression::kuma_gateway(), &mut head);
        assert_eq!(head, again, "already named");
        // Envoy compares the token case-sensitively and appends its own.
        let lower = vary_with_accept_encoding(std::iter::once(&b"accept-encoding"[..]));
        assert_eq!(lower.unwrap(), b"accept-encoding, Accept-Encoding");
        let mut small = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n".to_vec();
        let before = small.clone();
        vary_head(&Compression::kuma_gateway(), &mut small);
        assert_eq!(small, before, "too small to compress: no Vary");
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// A compressed response: headers changed as Envoy changes them, and a body that gunzips
    /// to the original, each piece flushed as it came (a client can read the first piece
    /// before the second exists).
    #[tokio::test]
    async fn a_response_to_a_client_accepting_gzip_is_compressed_as_it_streams() {
        let text = "hello compressed world ".repeat(40);
        let mut resp = Response::new(ProxyBody::Held(text.clone().into()));
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
        resp.headers_mut()
            .insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        let mut config = Compression::kuma_gateway();
        config.disable_on_etag = false;
        respond(&config, &mut resp, true);
        let headers = resp.headers().clone();
        assert_eq!(headers[header::CONTENT_ENCODING], "gzip");
        assert_eq!(headers[header::VARY], "Accept-Encoding");
        assert!(headers.get(header::CONTENT_LENGTH).is_none());
        assert!(headers.get(header::ETAG).is_none(), "a strong ETag goes");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.len() < text.len());
        assert_eq!(gunzip(&body), text.as_bytes());

        // Streamed: the first piece is complete gzip output on its own (sync flush).
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
        let mut gz = GzipBody::new(Channel(rx), &config);
        tx.send(Bytes::from_static(b"first piece")).await.unwrap();
        let first = gz.frame().await.unwrap().unwrap().into_data().unwrap();
        let mut partial = Vec::new();
        let mut decoder = flate2::read::GzDecoder::new(&first[..]);
        let _ = decoder.read_to_end(&mut partial);
        assert_eq!(partial, b"first piece");
        tx.send(Bytes::from_static(b", second")).await.unwrap();
        drop(tx);
        let mut all = first.to_vec();
        while let Some(frame) = gz.frame().await {
            all.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        assert_eq!(gunzip(&all), b"first piece, second");
    }

    /// A body whose data frames come from a channel, as a backend streams them.
    struct Channel(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Channel {
        type Data = Bytes;
        type Error = BodyError;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
            self.get_mut()
                .0
                .poll_recv(cx)
                .map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }
}

//! HTTP/1.1 message framing for a proxy that forwards messages as bytes.
//!
//! Bearing's plain HTTP/1.1 listeners forward most requests without building an
//! `http::Request`: the head is parsed in place (httparse, the parser hyper uses), written again
//! for the next hop without its hop-by-hop headers, and the body is relayed unchanged while
//! [`BodyProgress`] finds where it ends (RFC 9112 §6). This crate is that pure part: no I/O, so
//! every framing rule is tested here on bytes.
//!
//! A request head the pass-through path should not carry (HTTP/1.0, a chunked or expecting
//! body, an upgrade, a target that is not origin-form, anything malformed) is handed to hyper
//! ([`NotForwarded::Handoff`]), which serves or rejects it in full. A request no path may
//! forward (a head over [`MAX_HEAD`] or with more than [`MAX_HEADERS`] fields, a missing,
//! repeated or invalid `Host`, conflicting `Content-Length`s, `CONNECT`) is
//! [`NotForwarded::Reject`]ed with the status to answer, as Envoy, nginx and HAProxy answer it.

use std::fmt;

use httparse::{Header, Status};

/// Most header fields a head may carry (Envoy's `max_headers_count` and hyper's default).
pub const MAX_HEADERS: usize = 100;

/// Most bytes a head may take, start line through the empty line: Envoy's default
/// `max_request_headers_kb` (60). A larger request head is answered 431, a larger response
/// head fails the exchange (502); either way no connection buffers more than this for a head.
pub const MAX_HEAD: usize = 60 * 1024;

/// Most options a `Connection` header may list besides `close` and `keep-alive`.
const MAX_CONNECTION_OPTIONS: usize = 8;

/// Why a head cannot be forwarded as bytes, for the log: the request goes to the full HTTP
/// stack instead, or (for a response) the exchange fails with a 502.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub &'static str);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Refused {}

/// Why [`parse_request`] gives no head to forward as bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotForwarded {
    /// A request the full HTTP stack serves instead (HTTP/1.0, a chunked upload, an upgrade,
    /// a target not in origin form, a head httparse refuses).
    Handoff(Refused),
    /// A request no path forwards: answer `status` (`why` as the text) and close.
    Reject { status: u16, why: &'static str },
}

impl From<Refused> for NotForwarded {
    fn from(refused: Refused) -> Self {
        NotForwarded::Handoff(refused)
    }
}

/// A 400 naming what is wrong with the request.
const fn bad_request(why: &'static str) -> NotForwarded {
    NotForwarded::Reject { status: 400, why }
}

/// How a message body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// No body at all (bodyless request, HEAD response, 1xx, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`, up to the last chunk and trailers.
    Chunked,
    /// Everything until the sender closes the connection.
    UntilClose,
}

/// A request head the pass-through path can forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head in the input, request line through the empty line.
    pub head_len: usize,
    /// The body after the head: `Empty` or `Length` (other framings are refused).
    pub body: BodyLength,
    /// The client keeps the connection open after the response (no `Connection: close`).
    pub keep_alive: bool,
    /// A HEAD request: its response has no body whatever its headers say.
    pub is_head: bool,
    /// An idempotent method (RFC 9110 §9.2.2): safe to send again when a reused upstream
    /// connection closes before answering.
    pub idempotent: bool,
    /// The request carries an `x-request-id`.
    pub request_id: bool,
    /// The request carries an `x-forwarded-proto`.
    pub forwarded_proto: bool,
}

/// A response head read from upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// Bytes of the head in the input, status line through the empty line.
    pub head_len: usize,
    /// The status code.
    pub status: u16,
    /// An interim (1xx) response: relay it, then read the final one.
    pub interim: bool,
    /// How the body after the head ends.
    pub body: BodyLength,
    /// The upstream connection can carry another request once this body has been read.
    pub reusable: bool,
}

/// Parses a request head at the start of `buf` and writes the head to send upstream into
/// `out` (cleared first): HTTP/1.1, hop-by-hop headers and the ones `Connection` lists
/// removed, `Content-Length` as one field with one value. `Ok(None)` when `buf` does not hold
/// the whole head yet (and is no longer than [`MAX_HEAD`]).
///
/// The checks every path makes are made here, in the one pass over the fields: one valid
/// `Host` (RFC 9112 §3.2: 400 when missing or repeated, [`valid_host`]), `Content-Length`
/// fields that agree, each with one value (RFC 9110 §8.6; 400 otherwise), the head size and
/// field count (431), and no `CONNECT`
/// (403: Bearing does not tunnel, and Envoy's connection manager answers CONNECT with an
/// internal 403 unless CONNECT upgrades are configured).
pub fn parse_request(buf: &[u8], out: &mut Vec<u8>) -> Result<Option<RequestHead>, NotForwarded> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(Status::Partial) if buf.len() <= MAX_HEAD => return Ok(None),
        Ok(_) => {
            return Err(NotForwarded::Reject {
                status: 431,
                why: "request head larger than 60 KiB",
            })
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(NotForwarded::Reject {
                status: 431,
                why: "more than 100 header fields",
            })
        }
        Err(_) => return Err(Refused("malformed request head").into()),
    };
    if req.version != Some(1) {
        return Err(Refused("HTTP/1.0 request").into());
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Err(Refused("malformed request head").into());
    };
    if method == "CONNECT" {
        return Err(NotForwarded::Reject {
            status: 403,
            why: "CONNECT is not supported",
        });
    }
    if !path.starts_with('/') {
        return Err(Refused("request target not in origin form").into());
    }
    let mut connection = ConnectionOptions::default();
    let mut content_length = None;
    let mut host = None;
    let (mut request_id, mut forwarded_proto) = (false, false);
    for h in req.headers.iter() {
        match Field::of(h.name) {
            Field::Connection => connection.add(h.value)?,
            // A list in one field is refused as hyper refuses it, so that a request is judged
            // alike whichever path carries it; repeated equal fields are one length.
            Field::ContentLength if h.value.contains(&b',') => {
                return Err(bad_request("content-length with a list of values"))
            }
            Field::ContentLength => {
                let merged = merge_content_length(content_length, h.value);
                content_length = Some(merged.map_err(|Refused(why)| bad_request(why))?);
            }
            Field::Host if host.replace(h.value).is_some() => {
                return Err(bad_request("more than one host header"))
            }
            Field::TransferEncoding => {
                return Err(Refused("request body with transfer-encoding").into())
            }
            Field::Expect => return Err(Refused("request with expect").into()),
            Field::Upgrade => return Err(Refused("upgrade request").into()),
            Field::Other => {
                request_id |= h.name.eq_ignore_ascii_case("x-request-id");
                forwarded_proto |= h.name.eq_ignore_ascii_case("x-forwarded-proto");
            }
            _ => {}
        }
    }
    match host {
        None => return Err(bad_request("missing host header")),
        Some(value) if !valid_host(value) => return Err(bad_request("invalid host header")),
        Some(_) => {}
    }
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    push_fields(out, req.headers, &connection, false);
    out.extend_from_slice(b"\r\n");
    Ok(Some(RequestHead {
        head_len,
        body: match content_length {
            None | Some(0) => BodyLength::Empty,
            Some(n) => BodyLength::Length(n),
        },
        keep_alive: !connection.close,
        is_head: method == "HEAD",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        ),
        request_id,
        forwarded_proto,
    }))
}

/// Writes the fields of a parsed head for the next hop: those `connection` does not drop,
/// with the `Content-Length` fields (equal values, checked when parsed; a response's may be
/// lists) written as one field with one value (RFC 9110 §8.6), or none when `drop_length` (a
/// `Transfer-Encoding` frames the message).
fn push_fields(
    out: &mut Vec<u8>,
    headers: &[Header<'_>],
    connection: &ConnectionOptions<'_>,
    drop_length: bool,
) {
    let mut length_written = drop_length;
    for h in headers {
        let field = Field::of(h.name);
        if field == Field::ContentLength {
            if !length_written {
                let first = h.value.split(|b| *b == b',').next().unwrap_or_default();
                push_header(out, h.name.as_bytes(), first.trim_ascii());
                length_written = true;
            }
        } else if !connection.drops(h, field) {
            push_header(out, h.name.as_bytes(), h.value);
        }
    }
}

/// Whether `value` is a valid `Host` field value (RFC 9110 §7.2): an RFC 3986 authority
/// without userinfo, that is a reg-name, IPv4 address or bracketed IPv6 literal, then
/// optionally `:` and a port of digits. An empty value is refused too (as nginx does): a
/// proxy routes on it. `/`, `@`, `\`, spaces and controls make it invalid, as they do for
/// nginx and HAProxy.
pub fn valid_host(value: &[u8]) -> bool {
    let (host_ok, port) = if let Some(literal) = value.strip_prefix(b"[") {
        let Some(end) = literal.iter().position(|b| *b == b']') else {
            return false;
        };
        let address = &literal[..end];
        let ok = !address.is_empty()
            && address
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
        (ok, &literal[end + 1..])
    } else {
        let end = value.iter().position(|b| *b == b':').unwrap_or(value.len());
        (
            !value[..end].is_empty() && reg_name(&value[..end]),
            &value[end..],
        )
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    host_ok && port_ok
}

/// Bytes a reg-name holds as themselves (RFC 3986): unreserved characters and sub-delims.
/// A table, since every request's `Host` goes through it: one load per byte.
const REG_NAME_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'.' | b'_' | b'~')
            || matches!(
                c,
                b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
            );
        b += 1;
    }
    table
};

/// Whether `name` is an RFC 3986 reg-name: unreserved characters, sub-delims and
/// percent-encoded octets (an IPv4 address is one too).
fn reg_name(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        let b = name[i];
        if REG_NAME_BYTES[usize::from(b)] {
            i += 1;
        } else if b == b'%'
            && name
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
        {
            i += 3;
        } else {
            return false;
        }
    }
    true
}

/// Parses a response head at the start of `buf` and writes the head to send downstream into
/// `out` (cleared first): HTTP/1.1, hop-by-hop headers removed but `Transfer-Encoding` kept
/// (the body passes through unchanged), `Content-Length` as one field with one value, and
/// `Connection: close` added when `close_downstream` or when only closing the connection can
/// end the body. `request_is_head` tells a HEAD's bodyless response from the others.
/// `Ok(None)` when the head is not complete yet (and is no longer than [`MAX_HEAD`]).
///
/// Refused, so that the client gets a 502 (RFC 9112 §6.3): a head over [`MAX_HEAD`] or with
/// more than [`MAX_HEADERS`] fields, a status outside 100-599, conflicting lengths, and
/// `Transfer-Encoding` in an HTTP/1.0 response (framing RFC 9112 §6.1 says to treat as faulty;
/// hyper refuses it as well).
pub fn parse_response(
    buf: &[u8],
    request_is_head: bool,
    close_downstream: bool,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, Refused> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(Status::Partial) if buf.len() <= MAX_HEAD => return Ok(None),
        Ok(_) => return Err(Refused("response head larger than 60 KiB")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refused("more than 100 header fields in the response"))
        }
        Err(_) => return Err(Refused("malformed response head")),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err(Refused("malformed response head"));
    };
    if status == 101 {
        return Err(Refused(
            "101 Switching Protocols to a request without upgrade",
        ));
    }
    if !(100..=599).contains(&status) {
        return Err(Refused("status code outside 100-599"));
    }
    let interim = (100..200).contains(&status);
    let mut connection = ConnectionOptions::default();
    let mut content_length = None;
    let mut chunked = None;
    for h in resp.headers.iter() {
        match Field::of(h.name) {
            Field::Connection => connection.add(h.value)?,
            Field::ContentLength => {
                content_length = Some(merge_content_length(content_length, h.value)?)
            }
            Field::TransferEncoding => {
                // The last coding of the last field is the one that frames the message.
                let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
                chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            _ => {}
        }
    }
    if version == 0 && chunked.is_some() {
        return Err(Refused("transfer-encoding in an HTTP/1.0 response"));
    }
    let body = if request_is_head || interim || status == 204 || status == 304 {
        BodyLength::Empty
    } else {
        match (chunked, content_length) {
            (Some(true), _) => BodyLength::Chunked,
            (Some(false), _) => BodyLength::UntilClose,
            (None, Some(n)) => BodyLength::Length(n),
            (None, None) => BodyLength::UntilClose,
        }
    };
    let keeps_alive = if version == 1 {
        !connection.close
    } else {
        connection.keep_alive && !connection.close
    };
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa3(status).as_slice());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    // With both, Transfer-Encoding frames the message and Content-Length must go
    // (RFC 9112 §6.3).
    push_fields(out, resp.headers, &connection, chunked.is_some());
    if !interim && (close_downstream || body == BodyLength::UntilClose) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead {
        head_len,
        status,
        interim,
        body,
        reusable: keeps_alive && body != BodyLength::UntilClose,
    }))
}

/// The three digits of a status code (httparse only accepts three-digit codes).
fn itoa3(status: u16) -> [u8; 3] {
    let s = status.min(999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}

/// Appends one `name: value` field line to a head being written.
pub fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The start line (without its CRLF) and the fields of a head written by [`parse_request`] or
/// [`parse_response`]: what a caller that rewrites the head (a gateway's routing) reads.
/// `None` for bytes that are not such a head.
pub fn written_head(head: &[u8]) -> Option<(&[u8], Fields<'_>)> {
    let (len, _) = next_line(head)?;
    let line = head[..len].strip_suffix(b"\r\n")?;
    Some((line, Fields(&head[len..])))
}

/// The next line of a written head at the start of `rest`: its length with the line end, and
/// the length of its field name (the bytes before `:`, if any). `None` without a line end.
fn next_line(rest: &[u8]) -> Option<(usize, Option<usize>)> {
    let len = rest.iter().position(|b| *b == b'\n')? + 1;
    Some((len, rest[..len].iter().position(|b| *b == b':')))
}

/// The field lines of a written head, in order, as (name, value); see [`written_head`].
#[derive(Debug, Clone)]
pub struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (len, name_len) = next_line(self.0)?;
        let line = self.0[..len].strip_suffix(b"\r\n")?;
        self.0 = &self.0[len..];
        let colon = name_len?;
        // Written as `name: value`.
        Some((&line[..colon], line[colon + 1..].trim_ascii_start()))
    }
}

/// Edits the fields of a head written by [`parse_response`] (or [`parse_request`]): drops the
/// fields `remove` names, then appends `add`, keeping the start line and the final empty line.
///
/// The fields that frame the message or manage the connection (`Content-Length`,
/// `Transfer-Encoding`, `Connection`) are neither removed nor added here: the body is relayed
/// in the framing the head was parsed with, and a configured header change must not make the
/// next hop read it differently.
pub fn edit_fields<'a>(
    head: &mut Vec<u8>,
    mut remove: impl FnMut(&[u8]) -> bool,
    add: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) {
    let frames = |name: &[u8]| {
        let name = std::str::from_utf8(name).unwrap_or_default();
        matches!(
            Field::of(name),
            Field::ContentLength | Field::TransferEncoding | Field::Connection
        )
    };
    let Some((first, _)) = next_line(head) else {
        return;
    };
    let (mut read, mut write) = (first, first);
    loop {
        let Some((len, name_len)) = next_line(&head[read..]) else {
            return; // not a head written by this crate: left as it is
        };
        if len <= 2 {
            break; // the final empty line
        }
        let name = &head[read..read + name_len.unwrap_or(len)];
        if frames(name) || !remove(name) {
            head.copy_within(read..read + len, write);
            write += len;
        }
        read += len;
    }
    head.truncate(write);
    for (name, value) in add {
        if !frames(name) {
            push_header(head, name, value);
        }
    }
    head.extend_from_slice(b"\r\n");
}

/// A `Content-Length` value merged with an earlier one: equal repeats are one length,
/// anything else is refused (RFC 9112 §6.3, a smuggling guard).
fn merge_content_length(earlier: Option<u64>, value: &[u8]) -> Result<u64, Refused> {
    let mut length = None;
    for part in value.split(|b| *b == b',') {
        let digits = part.trim_ascii();
        if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(Refused("invalid content-length"));
        }
        let n = digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|l| l != n) {
            return Err(Refused("conflicting content-length values"));
        }
        length = Some(n);
    }
    match (earlier, length) {
        (_, None) => Err(Refused("invalid content-length")),
        (Some(e), Some(n)) if e != n => Err(Refused("conflicting content-length values")),
        (_, Some(n)) => Ok(n),
    }
}

/// The header fields this crate acts on, found by one length-and-name check per field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Connection,
    ContentLength,
    TransferEncoding,
    Expect,
    Upgrade,
    KeepAlive,
    ProxyConnection,
    Te,
    Host,
    Other,
}

impl Field {
    fn of(name: &str) -> Field {
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        match name.len() {
            2 if is("te") => Field::Te,
            4 if is("host") => Field::Host,
            6 if is("expect") => Field::Expect,
            7 if is("upgrade") => Field::Upgrade,
            10 if is("connection") => Field::Connection,
            10 if is("keep-alive") => Field::KeepAlive,
            14 if is("content-length") => Field::ContentLength,
            16 if is("proxy-connection") => Field::ProxyConnection,
            17 if is("transfer-encoding") => Field::TransferEncoding,
            _ => Field::Other,
        }
    }
}

/// What the `Connection` fields of a head say, and which fields are hop-by-hop.
#[derive(Default)]
struct ConnectionOptions<'a> {
    close: bool,
    keep_alive: bool,
    listed: [&'a [u8]; MAX_CONNECTION_OPTIONS],
    count: usize,
}

impl<'a> ConnectionOptions<'a> {
    /// Adds the options of one `Connection` field.
    fn add(&mut self, value: &'a [u8]) -> Result<(), Refused> {
        for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if !token.is_empty() {
                if self.count == MAX_CONNECTION_OPTIONS {
                    return Err(Refused("too many connection options"));
                }
                self.listed[self.count] = token;
                self.count += 1;
            }
        }
        Ok(())
    }

    /// Whether `h` (a `field`) describes the connection rather than the message (RFC 9110
    /// §7.6.1): the hop-by-hop fields, but `TE: trailers` (gRPC needs it end to end) and
    /// `Transfer-Encoding` (bodies pass through in their framing), and the fields `Connection`
    /// lists that [`connection_may_list_away`] allows.
    fn drops(&self, h: &Header<'_>, field: Field) -> bool {
        match field {
            Field::Connection | Field::KeepAlive | Field::ProxyConnection | Field::Upgrade => true,
            Field::Te => !h.value.eq_ignore_ascii_case(b"trailers"),
            Field::Other => self.listed[..self.count]
                .iter()
                .any(|l| h.name.as_bytes().eq_ignore_ascii_case(l)),
            Field::ContentLength | Field::TransferEncoding | Field::Expect | Field::Host => false,
        }
    }
}

/// Whether a `Connection` header listing the field `name` removes it before the next hop
/// (RFC 9110 §7.6.1): the one rule of every HTTP codec of the proxy. Listing never removes a
/// field that frames the message (`Content-Length`, `Transfer-Encoding`), names its host
/// (`Host`: Envoy never lets `Connection` strip it, and a request without one is not HTTP/1.1
/// any more) or that the hop-by-hop rules decide themselves (`TE`, `Expect`, `Upgrade`, the
/// connection fields): that would let a peer desynchronise or misroute the next hop.
pub fn connection_may_list_away(name: &str) -> bool {
    Field::of(name) == Field::Other
}

/// Where a body being relayed stands: how much of the next bytes belong to it, and whether it
/// has ended. The bytes themselves are never changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyProgress(Progress);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Progress {
    Done,
    Remaining(u64),
    Chunked(Chunk),
    UntilClose,
}

/// The position inside a chunked body (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size; `digits` read so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// Inside chunk extensions, up to the CR.
    Extension {
        size: u64,
    },
    /// After the size line's CR.
    SizeLf {
        size: u64,
    },
    /// Chunk data still to come.
    Data(u64),
    /// After the data: its CR, then its LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer line, then after its CR.
    Trailer,
    TrailerLf,
    /// After the final empty line's CR.
    FinalLf,
}

impl BodyProgress {
    /// The start of a body framed as `length` says.
    pub fn new(length: BodyLength) -> Self {
        BodyProgress(match length {
            BodyLength::Empty | BodyLength::Length(0) => Progress::Done,
            BodyLength::Length(n) => Progress::Remaining(n),
            BodyLength::Chunked => Progress::Chunked(Chunk::Size { size: 0, digits: 0 }),
            BodyLength::UntilClose => Progress::UntilClose,
        })
    }

    /// Whether the body has ended (a body until close never ends here: the peer's close
    /// ends it).
    pub fn is_done(&self) -> bool {
        self.0 == Progress::Done
    }

    /// The bytes still to come of a body of known length (`None` for the other framings,
    /// whose end only the bytes themselves tell).
    pub fn remaining(&self) -> Option<u64> {
        match self.0 {
            Progress::Done => Some(0),
            Progress::Remaining(n) => Some(n),
            Progress::Chunked(_) | Progress::UntilClose => None,
        }
    }

    /// Records that `n` more bytes of a body of known length were relayed without being
    /// looked at (spliced); at most [`BodyProgress::remaining`].
    pub fn skip(&mut self, n: u64) {
        if let Progress::Remaining(left) = &mut self.0 {
            *left = left.saturating_sub(n);
            if *left == 0 {
                self.0 = Progress::Done;
            }
        }
    }

    /// How many of `bytes` (the next bytes after what was seen so far) belong to the body;
    /// fewer than `bytes.len()` only once it has ended. An error for a malformed chunk.
    pub fn advance(&mut self, bytes: &[u8]) -> Result<usize, Refused> {
        match &mut self.0 {
            Progress::Done => Ok(0),
            Progress::UntilClose => Ok(bytes.len()),
            Progress::Remaining(left) => {
                let n = (*left).min(bytes.len() as u64);
                *left -= n;
                if *left == 0 {
                    self.0 = Progress::Done;
                }
                Ok(n as usize)
            }
            Progress::Chunked(chunk) => {
                let (n, done) = advance_chunked(chunk, bytes)?;
                if done {
                    self.0 = Progress::Done;
                }
                Ok(n)
            }
        }
    }
}

/// Moves `state` over `bytes`; returns the bytes consumed and whether the body ended.
fn advance_chunked(state: &mut Chunk, bytes: &[u8]) -> Result<(usize, bool), Refused> {
    const BAD: Refused = Refused("malformed chunked body");
    let mut i = 0;
    while i < bytes.len() {
        if let Chunk::Data(left) = *state {
            let n = left.min((bytes.len() - i) as u64);
            i += n as usize;
            *state = if left == n {
                Chunk::DataCr
            } else {
                Chunk::Data(left - n)
            };
            continue;
        }
        let b = bytes[i];
        i += 1;
        *state = match (*state, b) {
            (Chunk::Size { size, digits }, _) if b.is_ascii_hexdigit() => {
                if digits == 15 {
                    return Err(Refused("chunk size too large"));
                }
                let d = (b as char).to_digit(16).unwrap_or_default();
                Chunk::Size {
                    size: size * 16 + u64::from(d),
                    digits: digits + 1,
                }
            }
            (Chunk::Size { size, digits }, b';' | b' ' | b'\t') if digits > 0 => {
                Chunk::Extension { size }
            }
            (Chunk::Size { size, digits }, b'\r') if digits > 0 => Chunk::SizeLf { size },
            (Chunk::Extension { size }, b'\r') => Chunk::SizeLf { size },
            (Chunk::Extension { .. }, b'\n') => return Err(BAD),
            (Chunk::Extension { size }, _) => Chunk::Extension { size },
            (Chunk::SizeLf { size: 0 }, b'\n') => Chunk::TrailerStart,
            (Chunk::SizeLf { size }, b'\n') => Chunk::Data(size),
            (Chunk::DataCr, b'\r') => Chunk::DataLf,
            (Chunk::DataLf, b'\n') => Chunk::Size { size: 0, digits: 0 },
            (Chunk::TrailerStart, b'\r') => Chunk::FinalLf,
            (Chunk::TrailerStart | Chunk::Trailer, b'\n') => return Err(BAD),
            (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
            (Chunk::TrailerStart | Chunk::Trailer, _) => Chunk::Trailer,
            (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
            (Chunk::FinalLf, b'\n') => return Ok((i, true)),
            _ => return Err(BAD),
        };
    }
    Ok((i, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(raw: &str) -> Result<Option<(RequestHead, String)>, NotForwarded> {
        let mut out = Vec::new();
        let head = parse_request(raw.as_bytes(), &mut out)?;
        Ok(head.map(|h| (h, String::from_utf8(out).unwrap())))
    }

    fn response(raw: &str, head: bool, close: bool) -> Result<(ResponseHead, String), Refused> {
        let mut out = Vec::new();
        let parsed = parse_response(raw.as_bytes(), head, close, &mut out)?;
        Ok((
            parsed.expect("complete head"),
            String::from_utf8(out).unwrap(),
        ))
    }

    #[test]
    fn request_head_passes_with_hop_by_hop_fields_removed() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: web\r\nConnection: keep-alive, X-Private\r\n\
                   X-Private: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nAccept: */*\r\n\r\nrest";
        let (head, out) = request(raw).unwrap().unwrap();
        assert_eq!(head.head_len, raw.len() - 4);
        assert_eq!(head.body, BodyLength::Empty);
        assert!(head.keep_alive && head.idempotent && !head.is_head);
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nHost: web\r\nTE: trailers\r\nAccept: */*\r\n\r\n"
        );
    }

    #[test]
    fn only_fields_outside_the_hop_by_hop_rules_may_be_listed_away() {
        for kept in [
            "host",
            "Content-Length",
            "transfer-encoding",
            "te",
            "expect",
            "upgrade",
        ] {
            assert!(!connection_may_list_away(kept), "{kept}");
        }
        assert!(connection_may_list_away("x-private"));
    }

    #[test]
    fn connection_cannot_list_away_framing_or_host() {
        let raw = "POST /p HTTP/1.1\r\nHost: web\r\nContent-Length: 2\r\n\
                   Connection: content-length, host, x-a\r\nX-A: 1\r\n\r\nok";
        let (head, out) = request(raw).unwrap().unwrap();
        assert_eq!(head.body, BodyLength::Length(2));
        assert_eq!(
            out,
            "POST /p HTTP/1.1\r\nHost: web\r\nContent-Length: 2\r\n\r\n"
        );
        let (_, out) = response(
            "HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\n",
            false,
            false,
        )
        .unwrap();
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
    }

    #[test]
    fn request_framing_and_options() {
        let (head, _) = request(
            "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.body, BodyLength::Length(5));
        assert!(!head.keep_alive && !head.idempotent);
        let (head, _) = request("HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(head.is_head);
        assert_eq!(head.body, BodyLength::Empty);
        assert_eq!(request("GET / HTTP/1.1\r\nHost: a\r\n").unwrap(), None);
    }

    #[test]
    fn requests_the_byte_path_does_not_carry_are_handed_off() {
        for (raw, why) in [
            ("GET / HTTP/1.0\r\n\r\n", "HTTP/1.0 request"),
            (
                "GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n",
                "request target not in origin form",
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                "request body with transfer-encoding",
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n",
                "request with expect",
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
                "upgrade request",
            ),
            ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "malformed request head"),
            (
                "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
                "malformed request head",
            ),
        ] {
            assert_eq!(
                request(raw),
                Err(NotForwarded::Handoff(Refused(why))),
                "{raw:?}"
            );
        }
    }

    /// The status a request no path forwards is answered with.
    fn rejected(raw: &str) -> Option<u16> {
        match request(raw) {
            Err(NotForwarded::Reject { status, .. }) => Some(status),
            _ => None,
        }
    }

    #[test]
    fn conflicting_or_invalid_lengths_are_bad_requests() {
        for raw in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5,5\r\n\r\n",
        ] {
            assert_eq!(rejected(raw), Some(400), "{raw:?}");
        }
    }

    #[test]
    fn repeated_lengths_are_forwarded_as_one_field() {
        for raw in [
            "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length:5 \r\n\r\nhello",
            "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length:  5\r\nContent-Length: 5\r\n\r\nhello",
        ] {
            let (head, out) = request(raw).unwrap().unwrap();
            assert_eq!(head.body, BodyLength::Length(5));
            assert_eq!(
                out, "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
                "{raw:?}"
            );
        }
        let (_, out) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok",
            false,
            false,
        )
        .unwrap();
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
    }

    #[test]
    fn heads_over_the_limit_or_with_too_many_fields_are_431() {
        let head = |size: usize| {
            let start = "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: ";
            format!("{start}{}\r\n\r\n", "p".repeat(size - start.len() - 4))
        };
        let (parsed, _) = request(&head(MAX_HEAD)).unwrap().unwrap();
        assert_eq!(parsed.head_len, MAX_HEAD);
        assert_eq!(rejected(&head(MAX_HEAD + 1)), Some(431));
        // Still arriving: waited for up to the limit, refused beyond it.
        let partial = head(MAX_HEAD + 1);
        assert_eq!(request(&partial[..MAX_HEAD]), Ok(None));
        assert_eq!(rejected(&partial[..MAX_HEAD + 1]), Some(431));
        // A body after a head within the limit does not count.
        let with_body = format!("{}{}", head(1000), "b".repeat(2 * MAX_HEAD));
        assert!(request(&with_body).unwrap().is_some());
        let many: String = (0..MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert_eq!(
            rejected(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
            Some(431)
        );
        let mut out = Vec::new();
        let big = format!("HTTP/1.1 200 OK\r\nX-Pad: {}\r\n\r\n", "p".repeat(MAX_HEAD));
        assert!(parse_response(big.as_bytes(), false, false, &mut out).is_err());
        assert!(parse_response(&big.as_bytes()[..MAX_HEAD + 1], false, false, &mut out).is_err());
        assert_eq!(
            parse_response(&big.as_bytes()[..MAX_HEAD], false, false, &mut out),
            Ok(None)
        );
    }

    #[test]
    fn host_must_be_one_valid_authority() {
        for raw in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\nhost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a.example/evil\r\n\r\n",
            "GET / HTTP/1.1\r\nHost:\r\n\r\n",
        ] {
            assert_eq!(rejected(raw), Some(400), "{raw:?}");
        }
        for good in [
            "web",
            "web.mesh:80",
            "127.0.0.1:8080",
            "[::1]",
            "[fe80::1]:443",
            "a-b_c~d.example",
            "%41.example",
            "a!$&'()*+,;=b",
            "a:",
        ] {
            assert!(valid_host(good.as_bytes()), "{good:?}");
        }
        for bad in [
            "",
            ":80",
            "a.example/evil",
            "user@a.example",
            "a b",
            "a\\b",
            "a\tb",
            "a:80x",
            "a:8:0",
            "[::1",
            "[]",
            "[::1]x",
            "[::g]",
            "a%4",
            "a%zz",
            "a\"b",
            "\u{e9}.example",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn connect_is_refused() {
        assert_eq!(
            rejected("CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n"),
            Some(403)
        );
    }

    #[test]
    fn response_framing() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
                false,
                BodyLength::Length(3),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
                true,
                BodyLength::Empty,
                true,
            ),
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
                false,
                BodyLength::Empty,
                true,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\n\r\n",
                false,
                BodyLength::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                false,
                BodyLength::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                false,
                BodyLength::UntilClose,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\n\r\n",
                false,
                BodyLength::UntilClose,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                false,
                BodyLength::Length(0),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
                false,
                BodyLength::Length(0),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n",
                false,
                BodyLength::Length(0),
                true,
            ),
        ];
        for (raw, head, body, reusable) in cases {
            let (parsed, _) = response(raw, head, false).unwrap();
            assert_eq!((parsed.body, parsed.reusable), (body, reusable), "{raw:?}");
            assert_eq!(parsed.head_len, raw.len());
        }
    }

    #[test]
    fn response_head_is_rewritten_for_downstream() {
        let raw = "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
                   Content-Length: 9\r\nTransfer-Encoding: chunked\r\nServer: origin\r\n\r\n";
        let (parsed, out) = response(raw, false, false).unwrap();
        assert_eq!(parsed.body, BodyLength::Chunked);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nServer: origin\r\n\r\n"
        );
        let (_, out) = response("HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n", false, true).unwrap();
        assert_eq!(
            out,
            "HTTP/1.1 404 \r\nContent-Length: 0\r\nconnection: close\r\n\r\n"
        );
        let (_, out) = response("HTTP/1.1 200 OK\r\nServer: x\r\n\r\n", false, false).unwrap();
        assert!(
            out.ends_with("connection: close\r\n\r\n"),
            "a body until close closes downstream too"
        );
        let (parsed, out) = response(
            "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
            false,
            true,
        )
        .unwrap();
        assert!(parsed.interim);
        assert_eq!(out, "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n");
    }

    #[test]
    fn written_heads_read_back_as_start_line_and_fields() {
        let (_, out) =
            request("GET /a?b=1 HTTP/1.1\r\nHost: web\r\nX-Empty:\r\nAccept: */*\r\n\r\n")
                .unwrap()
                .unwrap();
        let (line, fields) = written_head(out.as_bytes()).unwrap();
        assert_eq!(line, b"GET /a?b=1 HTTP/1.1");
        let fields: Vec<(&[u8], &[u8])> = fields.collect();
        assert_eq!(
            fields,
            [
                (&b"Host"[..], &b"web"[..]),
                (b"X-Empty", b""),
                (b"Accept", b"*/*")
            ]
        );
        assert!(written_head(b"no line end").is_none());
    }

    #[test]
    fn edited_fields_keep_the_framing() {
        let (_, out) = response(
            "HTTP/1.1 200 OK\r\nServer: origin\r\nContent-Length: 2\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
            false,
            true,
        )
        .unwrap();
        let mut head = out.into_bytes();
        edit_fields(
            &mut head,
            |n| {
                n.eq_ignore_ascii_case(b"server")
                    || n.eq_ignore_ascii_case(b"x-a")
                    || n.eq_ignore_ascii_case(b"content-length")
                    || n.eq_ignore_ascii_case(b"connection")
            },
            [
                (&b"x-b"[..], &b"3"[..]),
                (b"server", b"Kuma Gateway"),
                (b"content-length", b"7"),
            ],
        );
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nconnection: close\r\nx-b: 3\r\nserver: Kuma Gateway\r\n\r\n"
        );
    }

    #[test]
    fn bad_responses_are_refused() {
        for raw in [
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(response(raw, false, false).is_err(), "{raw:?}");
        }
        let mut out = Vec::new();
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\n", false, false, &mut out),
            Ok(None)
        );
    }

    #[test]
    fn content_length_bodies_end_after_their_length() {
        let mut body = BodyProgress::new(BodyLength::Length(5));
        assert_eq!(body.advance(b"abc"), Ok(3));
        assert!(!body.is_done());
        assert_eq!(body.advance(b"deNEXT"), Ok(2));
        assert!(body.is_done());
        assert_eq!(body.advance(b"more"), Ok(0));
        assert!(BodyProgress::new(BodyLength::Empty).is_done());
        let mut until_close = BodyProgress::new(BodyLength::UntilClose);
        assert_eq!(until_close.advance(b"anything"), Ok(8));
        assert!(!until_close.is_done());
    }

    #[test]
    fn bodies_of_known_length_can_be_skipped() {
        let mut body = BodyProgress::new(BodyLength::Length(10));
        assert_eq!(body.advance(b"abc"), Ok(3));
        assert_eq!(body.remaining(), Some(7));
        body.skip(7);
        assert!(body.is_done());
        assert_eq!(body.remaining(), Some(0));
        assert_eq!(BodyProgress::new(BodyLength::Chunked).remaining(), None);
        assert_eq!(BodyProgress::new(BodyLength::UntilClose).remaining(), None);
    }

    #[test]
    fn chunked_bodies_end_after_the_last_chunk_and_trailers() {
        let body = b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let end = body.len() - 4;
        let mut whole = BodyProgress::new(BodyLength::Chunked);
        assert_eq!(whole.advance(body), Ok(end));
        assert!(whole.is_done());
        // Split anywhere, the end is found at the same byte.
        for split in 1..end {
            let mut p = BodyProgress::new(BodyLength::Chunked);
            let first = p.advance(&body[..split]).unwrap();
            assert_eq!(first, split);
            assert!(!p.is_done(), "split {split}");
            assert_eq!(p.advance(&body[split..]), Ok(end - split), "split {split}");
            assert!(p.is_done());
        }
        let mut bytewise = BodyProgress::new(BodyLength::Chunked);
        let consumed: usize = body.iter().map(|b| bytewise.advance(&[*b]).unwrap()).sum();
        assert_eq!(consumed, end);
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloX",
            b"5\nhello",
            b"0\r\n\n",
            b"10000000000000000\r\n",
            b"0\r\nTrailer\n",
        ] {
            let mut p = BodyProgress::new(BodyLength::Chunked);
            assert!(
                p.advance(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

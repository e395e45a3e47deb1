//! File access logs (Envoy's `envoy.access_loggers.file`, kuma-cp's MeshAccessLog and
//! TrafficLog `File` backends): where a listener logs each request or connection, and the
//! line's format, parsed once here into segments the proxy renders per entry.
//!
//! The format language is Envoy's substitution format: text with `%COMMAND(args):max%`
//! operators and `%%` for a percent sign, or a JSON object whose string values are such
//! templates. Rendering follows Envoy 1.40 (checked against it): a value the entry does not
//! have is `-` in text (empty with `omit_empty_values`), `null` in JSON (the key left out with
//! `omit_empty_values`); a JSON value that is one operator alone keeps its type (numbers for
//! codes, byte counts and durations), one mixing text is a string; JSON keys come sorted and
//! each JSON line ends with a newline, a text line only if its format does.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Envoy's format when a file logger has no `log_format`.
pub const ENVOY_DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// One file access log of a listener: each request (HTTP) or connection (TCP) appends a line
/// rendered by `format` to the file at `path`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AccessLog {
    /// The file appended to (`/dev/stdout` is the proxy's standard output).
    pub path: String,
    /// How each line is written.
    pub format: LogFormat,
    /// Which requests it logs (Envoy's access log `filter`); `None`: every one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<LogFilter>,
}

/// The namespace and key of the one dynamic metadata value a request carries in Bearing:
/// its route's `route_kri`, which kuma-cp's Lua program copies from the route's metadata
/// (`HttpRoute::route_kri`) for MeshAccessLog's route filters.
pub const ROUTE_KRI_METADATA: (&str, &str) = ("kuma.routes", "route_kri");

/// An access log filter (Envoy's `AccessLogFilter`): a `metadata_filter` on the request's
/// dynamic metadata, as kuma-cp renders a MeshAccessLog targeting (or not) a MeshHTTPRoute.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LogFilter {
    /// The metadata namespace (Envoy's `matcher.filter`).
    pub namespace: String,
    /// The keys into it (`matcher.path`).
    pub path: Vec<String>,
    /// What a value found there must be.
    pub value: MetadataValueMatch,
    /// Whether a request without a value there is logged (`match_if_key_not_found`, Envoy's
    /// default true).
    pub if_key_not_found: bool,
}

/// A condition on a metadata value (the parts of Envoy's `ValueMatcher` Bearing reads).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum MetadataValueMatch {
    /// A null value (`null_match`): a string value never is.
    Null,
    /// Any value (`present_match: true`), or none (`false`).
    Present(bool),
    /// A string equal to this (`string_match.exact`).
    Exact(String),
    /// A string starting with this.
    Prefix(String),
    /// A string ending with this.
    Suffix(String),
    /// A string holding this.
    Contains(String),
}

impl LogFilter {
    /// Whether a request whose route carries `route_kri` (see [`ROUTE_KRI_METADATA`]) is
    /// logged, as Envoy's metadata filter decides: by the value where one is found, else by
    /// `if_key_not_found`.
    pub fn admits(&self, route_kri: Option<&str>) -> bool {
        let (namespace, key) = ROUTE_KRI_METADATA;
        let found = match self.path.as_slice() {
            [k] if self.namespace == namespace && k == key => route_kri,
            _ => None,
        };
        let Some(value) = found else {
            return self.if_key_not_found;
        };
        match &self.value {
            MetadataValueMatch::Null => false,
            MetadataValueMatch::Present(present) => *present,
            MetadataValueMatch::Exact(s) => value == s,
            MetadataValueMatch::Prefix(s) => value.starts_with(s.as_str()),
            MetadataValueMatch::Suffix(s) => value.ends_with(s.as_str()),
            MetadataValueMatch::Contains(s) => value.contains(s.as_str()),
        }
    }
}

/// A parsed format: its source (shown in `/config_dump`) and the segments rendered.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LogFormat {
    /// The text template, or the JSON object of templates, as configured.
    pub source: FormatSource,
    /// Envoy's `omit_empty_values`: a missing value is empty (text) or its key left out
    /// (JSON) instead of `-` / `null`.
    pub omit_empty_values: bool,
    #[serde(skip)]
    compiled: Compiled,
    /// The header names its `REQ` and `RESP` read, gathered from a head in one pass.
    #[serde(skip)]
    names: Names,
}

/// A format as configured.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub enum FormatSource {
    /// Envoy's `text_format_source` (inline).
    Text(String),
    /// Envoy's `json_format`: keys to templates or nested objects.
    Json(Vec<(String, JsonSource)>),
}

/// A value of a JSON format.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub enum JsonSource {
    /// A template.
    Template(String),
    /// A nested object.
    Object(Vec<(String, JsonSource)>),
}

#[derive(Debug, Clone, PartialEq, Default)]
enum Compiled {
    #[default]
    Empty,
    Text(Vec<Segment>),
    Json(Vec<(String, JsonValue)>),
}

#[derive(Debug, Clone, PartialEq)]
enum JsonValue {
    Template(Vec<Segment>),
    Object(Vec<(String, JsonValue)>),
}

/// A piece of a template.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Operator(Operator, Option<usize>),
}

/// The command operators Bearing renders.
#[derive(Debug, Clone, PartialEq)]
enum Operator {
    /// Its parts (Envoy's default `%Y-%m-%dT%H:%M:%E3SZ` without arguments).
    StartTime(Vec<TimePart>),
    /// Header names, lowercase (a fallback after `?`).
    Request(String, Option<String>),
    Response(String, Option<String>),
    Protocol,
    ResponseCode,
    ResponseFlags,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    DownstreamRemote {
        port: bool,
    },
    DownstreamLocal {
        port: bool,
    },
}

/// A piece of a `START_TIME(...)` format.
#[derive(Debug, Clone, PartialEq)]
enum TimePart {
    Literal(String),
    Year,
    Year2,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    /// Seconds since the epoch.
    Epoch,
    /// Fractional seconds with this many digits.
    Fraction(usize),
    /// `+0000`: times are UTC.
    Offset,
    /// `UTC`.
    Zone,
    DayOfYear,
}

/// Why a format is refused: what Envoy refuses, or an operator Bearing does not render.
#[derive(Debug, Clone, PartialEq)]
pub struct FormatError(pub String);

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl LogFormat {
    /// A text format (`text_format_source`), parsed.
    pub fn text(source: &str, omit_empty_values: bool) -> Result<LogFormat, FormatError> {
        let compiled = Compiled::Text(parse(source)?);
        Ok(LogFormat {
            names: Names::of(&compiled),
            compiled,
            source: FormatSource::Text(source.to_string()),
            omit_empty_values,
        })
    }

    /// A JSON format (`json_format`), parsed; keys are sorted as Envoy writes them.
    pub fn json(
        mut fields: Vec<(String, JsonSource)>,
        omit_empty_values: bool,
    ) -> Result<LogFormat, FormatError> {
        sort(&mut fields);
        let compiled = Compiled::Json(compile_json(&fields)?);
        Ok(LogFormat {
            names: Names::of(&compiled),
            compiled,
            source: FormatSource::Json(fields),
            omit_empty_values,
        })
    }

    /// Appends the line of `entry` to `out` (nothing else is written to it).
    pub fn render(&self, entry: &Entry<'_>, out: &mut Vec<u8>) {
        let request = Gathered::of(&self.names.request, entry.request);
        let response = Gathered::of(&self.names.response, entry.response);
        let entry = &Entry {
            request: request.as_ref().map_or(entry.request, |g| g),
            response: response.as_ref().map_or(entry.response, |g| g),
            ..*entry
        };
        let omit = self.omit_empty_values;
        match &self.compiled {
            Compiled::Empty => {}
            Compiled::Text(segments) => {
                for s in segments {
                    render_text(s, entry, omit, out);
                }
            }
            Compiled::Json(fields) => {
                render_object(fields, entry, omit, out);
                out.push(b'\n');
            }
        }
    }
}

/// Most header names of one head a format may read for them to be gathered in one pass (more:
/// looked up one by one).
const GATHERED: usize = 16;

/// The (non-pseudo) header names a format's `REQ` and `RESP` read, lowercase, each once.
#[derive(Debug, Clone, PartialEq, Default)]
struct Names {
    request: Vec<String>,
    response: Vec<String>,
}

impl Names {
    fn of(compiled: &Compiled) -> Names {
        fn walk(segments: &[Segment], names: &mut Names) {
            for s in segments {
                let (list, a, b) = match s {
                    Segment::Operator(Operator::Request(a, b), _) => (&mut names.request, a, b),
                    Segment::Operator(Operator::Response(a, b), _) => (&mut names.response, a, b),
                    _ => continue,
                };
                for name in std::iter::once(a).chain(b) {
                    if !name.starts_with(':') && !list.contains(name) {
                        list.push(name.clone());
                    }
                }
            }
        }
        fn object(fields: &[(String, JsonValue)], names: &mut Names) {
            for (_, v) in fields {
                match v {
                    JsonValue::Template(segments) => walk(segments, names),
                    JsonValue::Object(inner) => object(inner, names),
                }
            }
        }
        let mut names = Names::default();
        match compiled {
            Compiled::Empty => {}
            Compiled::Text(segments) => walk(segments, &mut names),
            Compiled::Json(fields) => object(fields, &mut names),
        }
        for list in [&mut names.request, &mut names.response] {
            if list.len() > GATHERED {
                list.clear();
            }
        }
        names
    }
}

/// A head's values of the names a format reads, found in one pass over its fields (a lookup
/// per name scanned the head each time: most of a line's cost).
struct Gathered<'s> {
    names: &'s [String],
    values: [Option<&'s [u8]>; GATHERED],
    inner: &'s dyn HeaderSource,
}

impl<'s> Gathered<'s> {
    /// `None` when nothing is to be gathered or `inner` cannot walk its fields.
    fn of(names: &'s [String], inner: &'s dyn HeaderSource) -> Option<Gathered<'s>> {
        if names.is_empty() {
            return None;
        }
        let mut values = [None; GATHERED];
        let walked = inner.fields(&mut |name, value| {
            for (slot, want) in values.iter_mut().zip(names) {
                if slot.is_none() && name.eq_ignore_ascii_case(want.as_bytes()) {
                    *slot = Some(value);
                }
            }
        });
        walked.then_some(Gathered {
            names,
            values,
            inner,
        })
    }
}

impl HeaderSource for Gathered<'_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        match self.names.iter().position(|n| n == name) {
            Some(i) => self.values[i],
            None => self.inner.header(name),
        }
    }
}

fn sort(fields: &mut [(String, JsonSource)]) {
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, v) in fields.iter_mut() {
        if let JsonSource::Object(inner) = v {
            sort(inner);
        }
    }
}

fn compile_json(fields: &[(String, JsonSource)]) -> Result<Vec<(String, JsonValue)>, FormatError> {
    fields
        .iter()
        .map(|(k, v)| {
            let value = match v {
                JsonSource::Template(t) => JsonValue::Template(parse(t)?),
                JsonSource::Object(inner) => JsonValue::Object(compile_json(inner)?),
            };
            Ok((k.clone(), value))
        })
        .collect()
}

/// Parses a template as Envoy's substitution format parser does: `%%` is a percent sign,
/// any other `%` must start `%NAME(args):max%` (`NAME` of `A-Z`, `0-9`, `_`).
fn parse(source: &str) -> Result<Vec<Segment>, FormatError> {
    let bytes = source.as_bytes();
    let mut out = Vec::new();
    let mut literal = String::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let Some(at) = source[pos..].find('%').map(|i| pos + i) else {
            literal.push_str(&source[pos..]);
            break;
        };
        literal.push_str(&source[pos..at]);
        if bytes.get(at + 1) == Some(&b'%') {
            literal.push('%');
            pos = at + 2;
            continue;
        }
        let Some((name, args, max, end)) = command_at(source, at) else {
            return Err(FormatError(format!(
                "{source:?}: no valid command at position {at} (Envoy's `%NAME(args):max%`; `%%` for a percent sign)"
            )));
        };
        if !literal.is_empty() {
            out.push(Segment::Literal(std::mem::take(&mut literal)));
        }
        out.push(Segment::Operator(operator(name, args, max)?, max));
        pos = end;
    }
    if !literal.is_empty() {
        out.push(Segment::Literal(literal));
    }
    Ok(out)
}

/// The command at `at` (a `%`) as name, arguments and length limit, and the position after
/// its closing `%`; `None` when the text there is not a command's shape.
fn command_at(source: &str, at: usize) -> Option<(&str, Option<&str>, Option<usize>, usize)> {
    let bytes = source.as_bytes();
    let name_char = |b: u8| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_';
    let mut i = at + 1;
    while i < bytes.len() && name_char(bytes[i]) {
        i += 1;
    }
    if i == at + 1 {
        return None;
    }
    let name = &source[at + 1..i];
    let mut args = None;
    if bytes.get(i) == Some(&b'(') {
        let close = source[i + 1..].find(')')? + i + 1;
        args = Some(&source[i + 1..close]);
        i = close + 1;
    }
    let mut max = None;
    if bytes.get(i) == Some(&b':') {
        let digits = i + 1;
        let mut j = digits;
        while j < bytes.len() && bytes[j].is_ascii_digit() {
            j += 1;
        }
        if j == digits {
            return None;
        }
        max = Some(source[digits..j].parse().ok()?);
        i = j;
    }
    (bytes.get(i) == Some(&b'%')).then_some((name, args, max, i + 1))
}

/// The operator `%name(args):max%`; one Bearing does not render is refused by name.
fn operator(name: &str, args: Option<&str>, max: Option<usize>) -> Result<Operator, FormatError> {
    let no_args = |op: Operator| match args {
        None => Ok(op),
        Some(_) => Err(FormatError(format!("%{name}% takes no arguments"))),
    };
    if max.is_some() && !matches!(name, "REQ" | "RESP") {
        return Err(FormatError(format!(
            "a length limit on %{name}% is not implemented by Bearing"
        )));
    }
    match name {
        "START_TIME" => Ok(Operator::StartTime(time_format(
            args.unwrap_or("%Y-%m-%dT%H:%M:%E3SZ"),
        )?)),
        "REQ" | "RESP" => {
            let Some(args) = args.filter(|a| !a.is_empty()) else {
                return Err(FormatError(format!("%{name}(header)% needs a header name")));
            };
            let (first, second) = match args.split_once('?') {
                Some((a, b)) => (a.to_ascii_lowercase(), Some(b.to_ascii_lowercase())),
                None => (args.to_ascii_lowercase(), None),
            };
            Ok(match name {
                "REQ" => Operator::Request(first, second),
                _ => Operator::Response(first, second),
            })
        }
        "PROTOCOL" => no_args(Operator::Protocol),
        "RESPONSE_CODE" => no_args(Operator::ResponseCode),
        "RESPONSE_FLAGS" => no_args(Operator::ResponseFlags),
        "BYTES_RECEIVED" => no_args(Operator::BytesReceived),
        "BYTES_SENT" => no_args(Operator::BytesSent),
        "DURATION" => no_args(Operator::Duration),
        "UPSTREAM_HOST" => no_args(Operator::UpstreamHost),
        "UPSTREAM_CLUSTER" => no_args(Operator::UpstreamCluster),
        "DOWNSTREAM_REMOTE_ADDRESS" => no_args(Operator::DownstreamRemote { port: true }),
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => {
            no_args(Operator::DownstreamRemote { port: false })
        }
        "DOWNSTREAM_LOCAL_ADDRESS" => no_args(Operator::DownstreamLocal { port: true }),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => {
            no_args(Operator::DownstreamLocal { port: false })
        }
        other => Err(FormatError(format!(
            "command operator %{other}% is not implemented by Bearing"
        ))),
    }
}

/// A `START_TIME(...)` format: strftime's `%Y %y %m %d %H %M %S %j %z %Z %T %F %%`, Envoy's
/// `%s` (epoch seconds), `%f` / `%1f`..`%9f` (fractional seconds) and absl's `%E1S`..`%E9S`.
fn time_format(spec: &str) -> Result<Vec<TimePart>, FormatError> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut chars = spec.chars().peekable();
    let unknown = |what: &str| {
        FormatError(format!(
            "START_TIME format {spec:?}: %{what} is not implemented by Bearing"
        ))
    };
    while let Some(c) = chars.next() {
        if c != '%' {
            literal.push(c);
            continue;
        }
        let Some(next) = chars.next() else {
            return Err(unknown(""));
        };
        let mut push = |p: TimePart, literal: &mut String| {
            if !literal.is_empty() {
                parts.push(TimePart::Literal(std::mem::take(literal)));
            }
            parts.push(p);
        };
        match next {
            '%' => literal.push('%'),
            'Y' => push(TimePart::Year, &mut literal),
            'y' => push(TimePart::Year2, &mut literal),
            'm' => push(TimePart::Month, &mut literal),
            'd' => push(TimePart::Day, &mut literal),
            'H' => push(TimePart::Hour, &mut literal),
            'M' => push(TimePart::Minute, &mut literal),
            'S' => push(TimePart::Second, &mut literal),
            's' => push(TimePart::Epoch, &mut literal),
            'j' => push(TimePart::DayOfYear, &mut literal),
            'z' => push(TimePart::Offset, &mut literal),
            'Z' => push(TimePart::Zone, &mut literal),
            'f' => push(TimePart::Fraction(9), &mut literal),
            'T' => {
                for p in [TimePart::Hour, TimePart::Minute, TimePart::Second] {
                    if !matches!(p, TimePart::Hour) {
                        literal.push(':');
                    }
                    push(p, &mut literal);
                }
            }
            'F' => {
                for p in [TimePart::Year, TimePart::Month, TimePart::Day] {
                    if !matches!(p, TimePart::Year) {
                        literal.push('-');
                    }
                    push(p, &mut literal);
                }
            }
            d @ '1'..='9' if chars.peek() == Some(&'f') => {
                chars.next();
                push(TimePart::Fraction(d as usize - '0' as usize), &mut literal);
            }
            'E' => {
                let digits = chars.next();
                match (digits, chars.next()) {
                    (Some(d @ '1'..='9'), Some('S')) => {
                        push(TimePart::Second, &mut literal);
                        literal.push('.');
                        push(TimePart::Fraction(d as usize - '0' as usize), &mut literal);
                    }
                    _ => return Err(unknown("E")),
                }
            }
            other => return Err(unknown(&other.to_string())),
        }
    }
    if !literal.is_empty() {
        parts.push(TimePart::Literal(literal));
    }
    Ok(parts)
}

/// Envoy's response flags (the subset Bearing sets), in the order Envoy lists them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseFlags(u16);

impl ResponseFlags {
    /// `UH`: no healthy upstream (no endpoint).
    pub const NO_HEALTHY_UPSTREAM: ResponseFlags = ResponseFlags(1);
    /// `UT`: the upstream did not answer within the request's timeout.
    pub const UPSTREAM_TIMEOUT: ResponseFlags = ResponseFlags(1 << 1);
    /// `UR`: the upstream reset the request.
    pub const UPSTREAM_RESET: ResponseFlags = ResponseFlags(1 << 2);
    /// `UF`: the upstream connection failed.
    pub const UPSTREAM_CONNECTION_FAILURE: ResponseFlags = ResponseFlags(1 << 3);
    /// `UC`: the upstream connection ended inside the response.
    pub const UPSTREAM_CONNECTION_TERMINATION: ResponseFlags = ResponseFlags(1 << 4);
    /// `UO`: a circuit breaker refused the request.
    pub const UPSTREAM_OVERFLOW: ResponseFlags = ResponseFlags(1 << 5);
    /// `NR`: no route matched.
    pub const NO_ROUTE: ResponseFlags = ResponseFlags(1 << 6);
    /// `DI`: a fault filter delayed the request.
    pub const DELAY_INJECTED: ResponseFlags = ResponseFlags(1 << 7);
    /// `FI`: a fault filter aborted the request.
    pub const FAULT_INJECTED: ResponseFlags = ResponseFlags(1 << 8);
    /// `RL`: the local rate limit refused the request.
    pub const RATE_LIMITED: ResponseFlags = ResponseFlags(1 << 9);
    /// `DC`: the downstream connection ended before the response did.
    pub const DOWNSTREAM_TERMINATION: ResponseFlags = ResponseFlags(1 << 10);
    /// `URX`: the TCP proxy's connect attempts ran out.
    pub const RETRY_LIMIT_EXCEEDED: ResponseFlags = ResponseFlags(1 << 11);
    /// `SI`: the stream moved no byte for its idle timeout.
    pub const STREAM_IDLE_TIMEOUT: ResponseFlags = ResponseFlags(1 << 12);
    /// `UMSDR`: the try reached its cluster's maximum stream duration.
    pub const UPSTREAM_MAX_STREAM_DURATION: ResponseFlags = ResponseFlags(1 << 13);
    /// `UPE`: the upstream's response could not be read.
    pub const UPSTREAM_PROTOCOL_ERROR: ResponseFlags = ResponseFlags(1 << 14);
    /// `NC`: the route's cluster is not there.
    pub const NO_CLUSTER: ResponseFlags = ResponseFlags(1 << 15);

    /// The flags' names by bit, in the order Envoy's `CoreResponseFlag` lists them (the
    /// order it writes several in).
    const NAMES: [&'static str; 16] = [
        "UH", "UT", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "DC", "URX", "SI", "UMSDR",
        "UPE", "NC",
    ];

    /// Whether no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Sets the flags of `other` too.
    pub fn insert(&mut self, other: ResponseFlags) {
        self.0 |= other.0;
    }

    fn write(self, out: &mut Vec<u8>) {
        let mut first = true;
        for (i, name) in Self::NAMES.iter().enumerate() {
            if self.0 & (1 << i) != 0 {
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(name.as_bytes());
            }
        }
    }
}

/// Where a log line reads a message's headers by lowercase name (`:method`, `:path`,
/// `:authority`, `:scheme` for a request's head).
pub trait HeaderSource {
    /// The first value of `name`.
    fn header(&self, name: &str) -> Option<&[u8]>;

    /// Calls `f` with each field (name, value) in order and says true, when the source can
    /// walk its fields (cheaper than a lookup per name when it scans for each); false when
    /// it cannot.
    fn fields<'s>(&'s self, _f: &mut dyn FnMut(&'s [u8], &'s [u8])) -> bool {
        false
    }
}

/// No headers (a TCP connection, a response not received).
pub struct NoHeaders;

impl HeaderSource for NoHeaders {
    fn header(&self, _: &str) -> Option<&[u8]> {
        None
    }
}

/// What one request or connection gives its log line.
pub struct Entry<'a> {
    /// The `route_kri` of the request's route, copied by kuma-cp's Lua program into the
    /// dynamic metadata access log filters read ([`ROUTE_KRI_METADATA`]); `None` without one.
    pub route_kri: Option<&'a str>,
    /// When the request's first byte (the connection) came.
    pub start: SystemTime,
    /// From then to the end of the response sent downstream (the connection's close).
    pub duration: Duration,
    /// `HTTP/1.1`, `HTTP/1.0`, `HTTP/2`; `None` for TCP.
    pub protocol: Option<&'static str>,
    /// The response's status; 0 without one (TCP).
    pub response_code: u16,
    /// What went wrong.
    pub flags: ResponseFlags,
    /// Body bytes received from downstream (all bytes, for TCP).
    pub bytes_received: u64,
    /// Body bytes sent downstream (all bytes, for TCP).
    pub bytes_sent: u64,
    /// The endpoint the request or connection went to, if one was chosen.
    pub upstream_host: Option<SocketAddr>,
    /// Its cluster.
    pub upstream_cluster: Option<&'a str>,
    /// The downstream peer.
    pub downstream_remote: SocketAddr,
    /// The address the downstream connection reached.
    pub downstream_local: SocketAddr,
    /// The request head as received.
    pub request: &'a dyn HeaderSource,
    /// The response head as sent.
    pub response: &'a dyn HeaderSource,
}

/// A rendered value, before it is written as text or JSON.
enum Value<'e> {
    Missing,
    Number(u64),
    Bytes(&'e [u8]),
    Flags(ResponseFlags),
    Address(SocketAddr, bool),
    Time(&'e [TimePart]),
}

fn value<'e>(op: &'e Operator, e: &'e Entry<'_>) -> Value<'e> {
    let header = |src: &'e dyn HeaderSource, a: &str, b: &Option<String>| {
        src.header(a)
            .or_else(|| b.as_deref().and_then(|b| src.header(b)))
            .map_or(Value::Missing, Value::Bytes)
    };
    match op {
        Operator::StartTime(parts) => Value::Time(parts),
        Operator::Request(a, b) => header(e.request, a, b),
        Operator::Response(a, b) => header(e.response, a, b),
        Operator::Protocol => e
            .protocol
            .map_or(Value::Missing, |p| Value::Bytes(p.as_bytes())),
        Operator::ResponseCode => Value::Number(e.response_code.into()),
        Operator::ResponseFlags => Value::Flags(e.flags),
        Operator::BytesReceived => Value::Number(e.bytes_received),
        Operator::BytesSent => Value::Number(e.bytes_sent),
        Operator::Duration => Value::Number(e.duration.as_millis() as u64),
        Operator::UpstreamHost => e
            .upstream_host
            .map_or(Value::Missing, |a| Value::Address(a, true)),
        Operator::UpstreamCluster => e
            .upstream_cluster
            .map_or(Value::Missing, |c| Value::Bytes(c.as_bytes())),
        Operator::DownstreamRemote { port } => Value::Address(e.downstream_remote, *port),
        Operator::DownstreamLocal { port } => Value::Address(e.downstream_local, *port),
    }
}

/// Writes `v` as text (`max`: at most that many bytes of a header); `false` when missing.
fn write_value(v: &Value<'_>, max: Option<usize>, start: SystemTime, out: &mut Vec<u8>) -> bool {
    use std::io::Write as _;
    match v {
        Value::Missing => return false,
        Value::Number(n) => digits(*n, 1, out),
        Value::Bytes(b) => out.extend_from_slice(&b[..max.map_or(b.len(), |m| m.min(b.len()))]),
        Value::Flags(f) if f.is_empty() => out.push(b'-'),
        Value::Flags(f) => f.write(out),
        // IPv4, the common case, without the formatting machinery (a fifth of a line's cost).
        Value::Address(SocketAddr::V4(a), port) => {
            for (i, octet) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                digits(octet.into(), 1, out);
            }
            if *port {
                out.push(b':');
                digits(a.port().into(), 1, out);
            }
        }
        Value::Address(a, true) => {
            let _ = write!(out, "{a}");
        }
        Value::Address(a, false) => {
            let _ = write!(out, "{}", a.ip());
        }
        Value::Time(parts) => write_time(parts, start, out),
    }
    true
}

/// Writes `n` in decimal, zero-padded to at least `width` digits.
fn digits(mut n: u64, width: usize, out: &mut Vec<u8>) {
    let mut buf = [b'0'; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = at.min(buf.len().saturating_sub(width));
    out.extend_from_slice(&buf[start..]);
}

fn write_time(parts: &[TimePart], start: SystemTime, out: &mut Vec<u8>) {
    let since = start.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = (secs / 86_400) as i64;
    let (year, month, day) = civil_from_days(days);
    let of_day = secs % 86_400;
    for part in parts {
        match part {
            TimePart::Literal(l) => out.extend_from_slice(l.as_bytes()),
            TimePart::Year => digits(year.max(0) as u64, 4, out),
            TimePart::Year2 => digits(year.rem_euclid(100) as u64, 2, out),
            TimePart::Month => digits(month.into(), 2, out),
            TimePart::Day => digits(day.into(), 2, out),
            TimePart::Hour => digits(of_day / 3600, 2, out),
            TimePart::Minute => digits(of_day / 60 % 60, 2, out),
            TimePart::Second => digits(of_day % 60, 2, out),
            TimePart::Epoch => digits(secs, 1, out),
            TimePart::Fraction(n) => {
                let scaled = since.subsec_nanos() / 10u32.pow(9 - *n as u32);
                digits(scaled.into(), *n, out)
            }
            TimePart::Offset => out.extend_from_slice(b"+0000"),
            TimePart::Zone => out.extend_from_slice(b"UTC"),
            TimePart::DayOfYear => {
                let jan1 = days_from_civil(year, 1, 1);
                digits((days - jan1 + 1).max(0) as u64, 3, out)
            }
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's
/// `civil_from_days`); also the date of the runtime's health check events.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to days since 1970-01-01, the inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn render_text(s: &Segment, e: &Entry<'_>, omit: bool, out: &mut Vec<u8>) {
    match s {
        Segment::Literal(l) => out.extend_from_slice(l.as_bytes()),
        Segment::Operator(op, max) => {
            if !write_value(&value(op, e), *max, e.start, out) && !omit {
                out.push(b'-');
            }
        }
    }
}

fn render_object(fields: &[(String, JsonValue)], e: &Entry<'_>, omit: bool, out: &mut Vec<u8>) {
    out.push(b'{');
    let mut first = true;
    for (key, v) in fields {
        let mark = out.len();
        if !first {
            out.push(b',');
        }
        json_string(key.as_bytes(), out);
        out.push(b':');
        let written = match v {
            JsonValue::Object(inner) => {
                render_object(inner, e, omit, out);
                true
            }
            JsonValue::Template(segments) => render_json_template(segments, e, omit, out),
        };
        if written {
            first = false;
        } else {
            out.truncate(mark);
        }
    }
    out.push(b'}');
}

/// Writes a JSON value of `segments`; `false` (and nothing to keep) when it is to be left
/// out (`omit` and missing or empty).
fn render_json_template(
    segments: &[Segment],
    e: &Entry<'_>,
    omit: bool,
    out: &mut Vec<u8>,
) -> bool {
    if let [Segment::Operator(op, max)] = segments {
        let v = value(op, e);
        match v {
            Value::Missing if omit => return false,
            Value::Missing => out.extend_from_slice(b"null"),
            Value::Number(_) => {
                write_value(&v, *max, e.start, out);
            }
            _ => {
                let mark = out.len();
                write_value(&v, *max, e.start, out);
                if omit && out.len() == mark {
                    return false;
                }
                escape_tail(out, mark);
            }
        }
        return true;
    }
    let mark = out.len();
    for s in segments {
        render_text(s, e, omit, out);
    }
    if omit && out.len() == mark {
        return false;
    }
    escape_tail(out, mark);
    true
}

/// Turns the raw bytes written after `mark` into a JSON string in place.
fn escape_tail(out: &mut Vec<u8>, mark: usize) {
    let needs = out[mark..]
        .iter()
        .any(|b| *b < 0x20 || *b == b'"' || *b == b'\\' || *b >= 0x80);
    if !needs {
        out.insert(mark, b'"');
        out.push(b'"');
        return;
    }
    let raw = out.split_off(mark);
    json_string(&raw, out);
}

/// Writes `raw` as a JSON string (invalid UTF-8 replaced).
fn json_string(raw: &[u8], out: &mut Vec<u8>) {
    let text = String::from_utf8_lossy(raw);
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &*text);
}

#[cfg(test)]
mod tests;

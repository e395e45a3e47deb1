//! The Prometheus scrape as kuma-dp's metrics hijacker answers it
//! (`app/kuma-dp/pkg/dataplane/metrics/server.go`): the application endpoints of the
//! bootstrap's `metrics.aggregate` are fetched at once, and their bodies are concatenated with
//! the proxy's own metrics (Envoy's stats under kuma-dp, Bearing's here) into one answer whose
//! content type is the best format any source answered in.
//!
//! As kuma-dp does it:
//! - each application gets `GET <path>` with no query (the scrape's query, such as kuma-cp's
//!   Envoy stats filter, is for the proxy's own stats only) and the scraper's `Accept`,
//!   `User-Agent` and `X-Prometheus-Scrape-Timeout-Seconds`;
//! - with transparent proxying, from `127.0.0.6` (`::6`), the inbound passthrough source that
//!   kuma's iptables rules let through instead of redirecting to the inbound listener;
//! - an application that cannot be reached, answers other than 200 or breaks off its body
//!   is logged and contributes nothing: the scrape carries the others;
//! - formats rank OpenMetrics 1.0.0, OpenMetrics 0.0.1, the text format, then an unknown
//!   type; the scrape is answered in the best one seen (protobuf answers are not ranked). The
//!   proxy's own part counts as the text format, as Envoy's `text/plain` does, so the answer is
//!   never worse than the text format and the scraper's `Accept` never has to decide;
//! - bodies are joined with their trailing newlines and OpenMetrics `# EOF` removed, runs of
//!   newlines collapsed, surrounding white space trimmed; `# EOF` is added back once when the
//!   answer is OpenMetrics.
//!
//! Where Bearing departs: kuma-dp joins the bodies in the order the fetches finish, Bearing in
//! kuma-cp's order then its own (one of kuma-dp's orders, always the same one); and kuma-dp
//! waits for the slowest application, so one that hangs loses the whole scrape (Envoy's 15 s
//! route timeout answers 504, or the scraper gives up first), where Bearing gives the
//! applications until just before the scraper's own timeout (at most those 15 s) and answers
//! without one that is late, as without one that failed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bearing_proxy_config::MetricsApplication;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;

/// The longest a scrape waits for the applications: Envoy's default route timeout, which
/// bounds the scrape of kuma-dp's hijacker behind the `kuma:metrics:prometheus` listener.
pub const MAX_WAIT: Duration = Duration::from_secs(15);

/// The largest application answer read; a larger one is dropped as a failed one.
const MAX_BODY: usize = 32 << 20;

/// The scraper's headers passed on to the applications (those Prometheus sets).
const PASSED_HEADERS: [HeaderName; 3] = [
    header::ACCEPT,
    header::USER_AGENT,
    HeaderName::from_static("x-prometheus-scrape-timeout-seconds"),
];

/// A metrics format an application answered in, best first (kuma-dp's priority order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics1,
    /// `application/openmetrics-text; version=0.0.1` (or no version).
    OpenMetrics001,
    /// Prometheus' text format (`text/plain`, whatever the version).
    Text,
    /// A 200 answer of another or no content type.
    Unknown,
}

impl Format {
    /// The `Content-Type` of a scrape answered in this format (Prometheus' `expfmt` values).
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics1 => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::OpenMetrics001 => "application/openmetrics-text; version=0.0.1; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::Unknown => "<unknown>",
        }
    }

    /// The format of an application's answer by its `Content-Type`: `None` for the
    /// delimited protobuf format, which takes no part in choosing the answer's format.
    fn of_answer(content_type: Option<&HeaderValue>) -> Option<Format> {
        let Some(text) = content_type.and_then(|v| v.to_str().ok()) else {
            return Some(Format::Unknown);
        };
        let mut parts = text.split(';');
        let media_type = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let params: Vec<(String, &str)> = parts
            .filter_map(|p| {
                let (name, value) = p.split_once('=')?;
                Some((
                    name.trim().to_ascii_lowercase(),
                    value.trim().trim_matches('"'),
                ))
            })
            .collect();
        let param = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        match media_type.as_str() {
            "text/plain" => Some(Format::Text),
            "application/openmetrics-text" => match param("version") {
                None | Some("") | Some("0.0.1") => Some(Format::OpenMetrics001),
                Some("1.0.0") => Some(Format::OpenMetrics1),
                Some(_) => Some(Format::Unknown),
            },
            "application/vnd.google.protobuf"
                if param("proto") == Some("io.prometheus.client.MetricFamily")
                    && param("encoding") == Some("delimited") =>
            {
                None
            }
            _ => Some(Format::Unknown),
        }
    }
}

/// What one application gave: its body and format, or nothing when it failed.
pub type Fetched = Option<(Bytes, Option<Format>)>;

/// How long the applications are waited for: just before the scraper gives up (nine tenths
/// of its `X-Prometheus-Scrape-Timeout-Seconds`), at most [`MAX_WAIT`].
pub fn wait_for(scrape: &HeaderMap) -> Duration {
    scrape
        .get("x-prometheus-scrape-timeout-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(MAX_WAIT, |s| {
            Duration::from_secs_f64(s.min(MAX_WAIT.as_secs_f64()) * 0.9)
        })
}

/// Fetches every application at once for a scrape carrying `scrape` headers, each within
/// `wait`; the results are in the applications' order. Dropping the future (the scraper went
/// away) stops the fetches.
pub async fn fetch_all(
    applications: &[MetricsApplication],
    scrape: &HeaderMap,
    transparent_proxy: bool,
    wait: Duration,
) -> Vec<Fetched> {
    let mut fetches = tokio::task::JoinSet::new();
    for (index, app) in applications.iter().cloned().enumerate() {
        let scrape = scrape.clone();
        fetches.spawn(async move {
            let fetched = tokio::time::timeout(wait, fetch(&app, &scrape, transparent_proxy)).await;
            let fetched = fetched.unwrap_or_else(|_| {
                tracing::warn!(name = %app.name, address = %app.address, port = app.port, path = %app.path, "application metrics not answered within {wait:?}; the scrape goes without them");
                None
            });
            (index, fetched)
        });
    }
    let mut results = vec![None; applications.len()];
    while let Some(done) = fetches.join_next().await {
        if let Ok((index, fetched)) = done {
            results[index] = fetched;
        }
    }
    results
}

/// One application's metrics, or `None` (logged) when it cannot be had.
async fn fetch(app: &MetricsApplication, scrape: &HeaderMap, transparent_proxy: bool) -> Fetched {
    let failed = |what: &str| {
        tracing::warn!(name = %app.name, address = %app.address, port = app.port, path = %app.path, "application metrics not scraped: {what}");
    };
    match exchange(app, scrape, transparent_proxy).await {
        Ok((StatusCode::OK, content_type, body)) => {
            Some((body, Format::of_answer(content_type.as_ref())))
        }
        Ok((status, _, body)) => {
            let start = String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned();
            failed(&format!("answered {status}: {start}"));
            None
        }
        Err(e) => {
            failed(&e);
            None
        }
    }
}

/// `GET` of the application's path over a new HTTP/1.1 connection: the status, the content
/// type and the body.
async fn exchange(
    app: &MetricsApplication,
    scrape: &HeaderMap,
    transparent_proxy: bool,
) -> Result<(StatusCode, Option<HeaderValue>, Bytes), String> {
    let address = resolve(&app.address, app.port).await?;
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("cannot make a socket: {e}"))?;
    if transparent_proxy {
        let source = passthrough_source(address.ip());
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| format!("cannot bind the inbound passthrough source {source}: {e}"))?;
    }
    let stream = socket
        .connect(address)
        .await
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{address}: {e}"))?;
    tokio::spawn(connection);
    let mut request = Request::get(request_path(&app.path));
    let host = match address.ip() {
        IpAddr::V6(_) if app.address.parse::<Ipv6Addr>().is_ok() => {
            format!("[{}]:{}", app.address, app.port)
        }
        _ => format!("{}:{}", app.address, app.port),
    };
    request = request.header(header::HOST, host);
    for name in &PASSED_HEADERS {
        if let Some(value) = scrape.get(name).filter(|v| !v.is_empty()) {
            request = request.header(name, value);
        }
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("path {:?}: {e}", app.path))?;
    let answer = sender
        .send_request(request)
        .await
        .map_err(|e| format!("{address}: {e}"))?;
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let body = Limited::new(answer.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("{address}: reading the body: {e}"))?
        .to_bytes();
    Ok((status, content_type, body))
}

/// The request target for an application's `path` (no query; `/` when empty, as Go's URL
/// gives it).
fn request_path(path: &str) -> String {
    match path.starts_with('/') {
        true => path.to_string(),
        false => format!("/{path}"),
    }
}

/// The first address `host`:`port` resolves to.
async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} resolves to no address"))
}

/// The inbound passthrough source for a connection to `destination`: kuma's iptables rules
/// return traffic from it instead of redirecting it to the inbound listener.
fn passthrough_source(destination: IpAddr) -> IpAddr {
    match destination {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6)),
    }
}

/// The best format among the sources' (`None` entries, failed or protobuf, take no part).
pub fn choose_format(formats: impl IntoIterator<Item = Option<Format>>) -> Format {
    formats
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(Format::Unknown)
}

/// The sources' bodies joined into one answer in `format`, as kuma-dp's `processMetrics`.
pub fn merge<'a>(bodies: impl IntoIterator<Item = &'a [u8]>, format: Format) -> Vec<u8> {
    let mut joined = Vec::new();
    for body in bodies {
        let body = trim_end_newlines(body);
        let body = body.strip_suffix(b"# EOF").unwrap_or(body);
        joined.extend_from_slice(trim_end_newlines(body));
        joined.push(b'\n');
    }
    joined.dedup_by(|b, a| *a == b'\n' && *b == b'\n');
    let mut answer = joined.trim_ascii().to_vec();
    answer.push(b'\n');
    if matches!(format, Format::OpenMetrics1 | Format::OpenMetrics001) {
        answer.extend_from_slice(b"# EOF\n");
    }
    answer
}

fn trim_end_newlines(body: &[u8]) -> &[u8] {
    let end = body.iter().rposition(|b| *b != b'\n').map_or(0, |i| i + 1);
    &body[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer's `Content-Type` gives its format as Prometheus' `expfmt` reads it:
    /// `text/plain` whatever the version, OpenMetrics 1.0.0 or 0.0.1 (also without a
    /// version), delimited protobuf unranked, anything else (or none) unknown.
    #[test]
    fn answer_formats_follow_the_content_type() {
        let format =
            |ct: Option<&'static str>| Format::of_answer(ct.map(HeaderValue::from_static).as_ref());
        for (content_type, want) in [
            (Some("text/plain; charset=UTF-8"), Some(Format::Text)),
            (Some("Text/Plain"), Some(Format::Text)),
            (Some("text/plain; version=0.0.4"), Some(Format::Text)),
            (Some("application/openmetrics-text; version=1.0.0"), Some(Format::OpenMetrics1)),
            (Some("application/openmetrics-text; version=0.0.1"), Some(Format::OpenMetrics001)),
            (Some("application/openmetrics-text"), Some(Format::OpenMetrics001)),
            (Some("application/openmetrics-text; version=2.0.0"), Some(Format::Unknown)),
            (
                Some("application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"),
                None,
            ),
            (
                Some("application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=text"),
                Some(Format::Unknown),
            ),
            (Some("application/invalid"), Some(Format::Unknown)),
            (None, Some(Format::Unknown)),
        ] {
            assert_eq!(format(content_type), want, "{content_type:?}");
        }
    }

    /// The best format wins; failed and protobuf sources take no part.
    #[test]
    fn the_best_format_is_chosen() {
        use Format::*;
        assert_eq!(
            choose_format([Some(Text), None, Some(OpenMetrics001)]),
            OpenMetrics001
        );
        assert_eq!(
            choose_format([Some(OpenMetrics1), Some(OpenMetrics001), Some(Text)]),
            OpenMetrics1
        );
        assert_eq!(choose_format([Some(Unknown), Some(Text)]), Text);
        assert_eq!(choose_format([None, Some(Unknown)]), Unknown);
        assert_eq!(choose_format([]), Unknown);
    }

    /// Bodies are joined without their `# EOF` markers and blank lines; the answer ends
    /// with one newline, and with one `# EOF` when it is OpenMetrics.
    #[test]
    fn bodies_merge_as_kuma_dp_joins_them() {
        let openmetrics = b"\n# TYPE a counter\na_total 1\n# EOF\n".as_slice();
        let text = b"# TYPE b gauge\nb 2\n\n\nb_other 3\n".as_slice();
        let own = b"# TYPE c counter\nc_total 4\n# EOF\n".as_slice();
        assert_eq!(
            String::from_utf8(merge([openmetrics, openmetrics, text, own], Format::OpenMetrics001)).unwrap(),
            "# TYPE a counter\na_total 1\n# TYPE a counter\na_total 1\n# TYPE b gauge\nb 2\nb_other 3\n# TYPE c counter\nc_total 4\n# EOF\n"
        );
        assert_eq!(
            String::from_utf8(merge([text, b"".as_slice(), own], Format::Text)).unwrap(),
            "# TYPE b gauge\nb 2\nb_other 3\n# TYPE c counter\nc_total 4\n"
        );
        assert_eq!(merge([b"".as_slice()], Format::Text), b"\n");
        assert_eq!(
            merge([b"  x 1 \n".as_slice()], Format::OpenMetrics1),
            b"x 1\n# EOF\n"
        );
    }

    /// The applications get until just before the scraper's timeout, at most Envoy's route
    /// timeout; a missing or unusable header gives that route timeout.
    #[test]
    fn the_wait_follows_the_scrapers_timeout() {
        let wait = |value: Option<&'static str>| {
            let mut headers = HeaderMap::new();
            if let Some(v) = value {
                headers.insert(
                    "x-prometheus-scrape-timeout-seconds",
                    HeaderValue::from_static(v),
                );
            }
            wait_for(&headers)
        };
        assert_eq!(wait(Some("10")), Duration::from_secs(9));
        assert_eq!(wait(Some("0.5")), Duration::from_millis(450));
        assert_eq!(wait(Some("60")), MAX_WAIT.mul_f64(0.9));
        for unusable in [
            None,
            Some("soon"),
            Some("0"),
            Some("-3"),
            Some("NaN"),
            Some("inf"),
        ] {
            assert_eq!(wait(unusable), MAX_WAIT, "{unusable:?}");
        }
        assert_eq!(request_path(""), "/");
        assert_eq!(request_path("metrics"), "/metrics");
        assert_eq!(request_path("/stats/prometheus"), "/stats/prometheus");
    }

    /// With transparent proxying the applications are reached from the inbound passthrough
    /// source of the destination's family.
    #[test]
    fn the_passthrough_source_matches_the_family() {
        assert_eq!(
            passthrough_source("10.0.0.1".parse().unwrap()),
            "127.0.0.6".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            passthrough_source("fd00::1".parse().unwrap()),
            "::6".parse::<IpAddr>().unwrap()
        );
    }
}

//! HTTP client helpers: `curl` run inside a host namespace, URL formatting.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::process::Output;
use crate::topology::Host;
use crate::util;

/// `--max-time` (seconds) passed to curl unless the caller passes its own
/// `-m`/`--max-time`.
pub const DEFAULT_CURL_MAX_TIME_SECS: u64 = 10;

/// Separates the body from the `-w` trailer in curl's stdout.
const CODE_MARKER: &str = "__bearing_e2e_http_code=";

/// Formats `http://<ip>:<port><path>`, bracketing IPv6 addresses.
///
/// `path` should start with `/` (it is appended verbatim).
pub fn http_url(ip: impl Into<IpAddr>, port: u16, path: &str) -> String {
    url("http", ip, port, path)
}

/// Formats `<scheme>://<ip>:<port><path>`, bracketing IPv6 addresses.
pub(crate) fn url(scheme: &str, ip: impl Into<IpAddr>, port: u16, path: &str) -> String {
    format!("{scheme}://{}{}", SocketAddr::new(ip.into(), port), path)
}

/// Everything a curl invocation produced; see [`curl_output`].
#[derive(Debug, Clone)]
pub struct CurlOutput {
    /// curl's exit code (0 = success, 7 = connection refused, 28 = timeout,
    /// 52 = empty reply, 56 = receive failure/reset, ...); `None` if killed.
    pub exit_code: Option<i32>,
    /// The HTTP status code, `0` if no response was received.
    pub http_code: u16,
    /// The response body (with `-i`, headers too) as lossy UTF-8.
    pub body: String,
    /// curl's stderr (error messages; `-v` output).
    pub stderr: String,
}

impl CurlOutput {
    /// Whether curl exited with code 0 (any HTTP status).
    pub fn ok(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// Runs curl inside `host`'s namespace and returns `(status code, body)`.
///
/// curl is invoked as `curl -sS -g -o - -w <trailer> --max-time 10 <args...>`;
/// caller arguments come last, so e.g. `-m 3` overrides the time limit. Do
/// not pass `-w`/`-o`. Fails if curl exits non-zero (connection refused,
/// timeout, reset, ...), with curl's message; use [`curl_output`] to inspect
/// such failures. Any HTTP status, including 5xx, is a success here.
pub fn curl<I, S>(host: &Host, args: I) -> Result<(u16, String)>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let out = curl_output(host, &args)?;
    if !out.ok() {
        bail!(
            "curl on host {} ({}) failed with exit code {:?}: {}",
            host.name(),
            util::display_cmdline(OsStr::new("curl"), &args),
            out.exit_code,
            out.stderr.trim()
        );
    }
    Ok((out.http_code, out.body))
}

/// Like [`curl`], but a failing curl is not an error: returns exit code, HTTP
/// code, body and stderr. Errors only if curl could not be run at all.
pub fn curl_output<I, S>(host: &Host, args: I) -> Result<CurlOutput>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let trailer = format!("{CODE_MARKER}%{{http_code}}");
    let out = run_curl(host, &["-o", "-", "-w", &trailer], args)?;
    let (body, http_code) = split_trailer(&out.stdout_bytes);
    Ok(CurlOutput {
        exit_code: out.code(),
        http_code,
        body,
        stderr: out.stderr,
    })
}

/// What [`curl_raw`] saw: the response heads curl wrote (`-D -`), in order, and the bytes of
/// the body that followed the last one, as sent (no decoding).
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// curl's exit code; `None` if killed.
    pub exit_code: Option<i32>,
    /// Each response head (status line and fields, lossy UTF-8).
    pub heads: Vec<String>,
    /// The body after the last head, byte for byte.
    pub body: Vec<u8>,
    /// curl's stderr.
    pub stderr: String,
}

impl RawResponse {
    /// The value of field `name` in the last head, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        header_value(self.heads.last()?, name)
    }
}

/// The value of field `name` in a response `head`, if present.
pub fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
}

/// Runs `curl -sS -g -D - <args>` on `host` and keeps the body bytes as they came (a gzip
/// body, say), the heads apart; bodies of all but the last response must go elsewhere
/// (`-o /dev/null` before `--next`).
pub fn curl_raw<I, S>(host: &Host, args: I) -> Result<RawResponse>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = run_curl(host, &["-D", "-"], args)?;
    let mut rest = &out.stdout_bytes[..];
    let mut heads = Vec::new();
    while rest.starts_with(b"HTTP/") {
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            break;
        };
        heads.push(String::from_utf8_lossy(&rest[..end]).into_owned());
        rest = &rest[end + 4..];
    }
    Ok(RawResponse {
        exit_code: out.code(),
        heads,
        body: rest.to_vec(),
        stderr: out.stderr,
    })
}

/// Runs `curl -sS -g <ours> --max-time <default> <args>` on `host` (a `-m` in `args` wins),
/// given time to end.
fn run_curl<I, S>(host: &Host, ours: &[&str], args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let max_time = user_max_time(&args).unwrap_or(DEFAULT_CURL_MAX_TIME_SECS as f64);
    host.command("curl")
        .args(["-sS", "-g"])
        .args(ours)
        .args(["--max-time", &DEFAULT_CURL_MAX_TIME_SECS.to_string()])
        .args(&args)
        .timeout(Duration::from_secs_f64(max_time.max(0.0) + 10.0))
        .output()
}

/// Splits curl's stdout into body and HTTP code.
fn split_trailer(stdout: &[u8]) -> (String, u16) {
    let marker = CODE_MARKER.as_bytes();
    let pos = stdout.windows(marker.len()).rposition(|w| w == marker);
    match pos {
        Some(pos) => {
            let body = String::from_utf8_lossy(&stdout[..pos]).into_owned();
            let code = String::from_utf8_lossy(&stdout[pos + marker.len()..])
                .trim()
                .parse()
                .unwrap_or(0);
            (body, code)
        }
        None => (String::from_utf8_lossy(stdout).into_owned(), 0),
    }
}

/// The value of the last `-m N` / `--max-time N` / `--max-time=N` in `args`.
fn user_max_time(args: &[OsString]) -> Option<f64> {
    let mut found = None;
    let mut iter = args.iter().map(|a| a.to_string_lossy());
    while let Some(a) = iter.next() {
        if a == "-m" || a == "--max-time" {
            found = iter.next().and_then(|v| v.parse().ok()).or(found);
        } else if let Some(v) = a.strip_prefix("--max-time=") {
            found = v.parse().ok().or(found);
        }
    }
    found
}

/// Sends `method path` to the admin API on 127.0.0.1:`port` of `host` (Bearing's or Envoy's)
/// with curl (3 s); returns status and body, fails when curl gets no answer.
pub(crate) fn admin_request(
    host: &Host,
    port: u16,
    method: &str,
    path: &str,
) -> Result<(u16, String)> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let out = curl_output(host, ["-X", method, url.as_str(), "-m", "3"])?;
    if out.exit_code != Some(0) {
        bail!(
            "admin {method} {path} on host {}: curl exit {:?}: {}",
            host.name(),
            out.exit_code,
            out.stderr
        );
    }
    Ok((out.http_code, out.body))
}

/// `text` (request heads as an origin saw them) with each `x-request-id` value that is a
/// lowercase UUID (as Envoy and Bearing generate them) reduced to its form: every hex digit
/// `x` but the version digit (`xxxxxxxx-xxxx-4xxx-xxxx-xxxxxxxxxxxx` for a v4), so requests
/// compare equal whatever id each was given, and an id of another form still shows.
pub fn request_id_forms(text: &str) -> String {
    const FIELD: &str = "x-request-id: ";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(FIELD) {
        let (before, after) = rest.split_at(at + FIELD.len());
        out.push_str(before);
        let id = after.get(..36).unwrap_or("");
        let uuid = id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        });
        if id.len() == 36 && uuid {
            let form = id.char_indices().map(|(i, c)| match c {
                '-' => '-',
                _ if i == 14 => c,
                _ => 'x',
            });
            out.extend(form);
            rest = &after[36..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// How `n` requests from `host` to `url` were answered: the count of each answer, a 200's
/// body trimmed (the origins of such tests answer their port) or another status.
pub fn spread(host: &Host, url: &str, n: usize) -> Result<BTreeMap<String, usize>> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let out = curl_output(host, ["-s", url])?;
        let key = match out.http_code {
            200 => out.body.trim().to_string(),
            code => code.to_string(),
        };
        *seen.entry(key).or_insert(0) += 1;
    }
    Ok(seen)
}

/// Whether `seen` (a [`spread`]) holds the answers of the origins on `ports` and nothing
/// else, each at least once.
pub fn served_by(seen: &BTreeMap<String, usize>, ports: &[u16]) -> bool {
    seen.len() == ports.len() && ports.iter().all(|p| seen.contains_key(&p.to_string()))
}

/// Waits up to `limit` for 10 requests in a row from `host` to `url` to be [`served_by`]
/// the origins on `ports`; `what` names the wait in the error.
pub fn wait_until_served_by(
    host: &Host,
    url: &str,
    ports: &[u16],
    limit: Duration,
    what: &str,
) -> Result<()> {
    let started = Instant::now();
    loop {
        let seen = spread(host, url, 10)?;
        if served_by(&seen, ports) {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!("{what}: after {limit:?}, 10 requests went {seen:?}, not to {ports:?} alone");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn urls() {
        assert_eq!(
            http_url(Ipv4Addr::new(10, 200, 1, 2), 80, "/x"),
            "http://10.200.1.2:80/x"
        );
        assert_eq!(
            http_url("fd00:beef:1::2".parse::<Ipv6Addr>().unwrap(), 8080, "/"),
            "http://[fd00:beef:1::2]:8080/"
        );
    }

    #[test]
    fn trailer() {
        let out = format!("hello\n{CODE_MARKER}200");
        assert_eq!(split_trailer(out.as_bytes()), ("hello\n".to_string(), 200));
        let out = format!("{CODE_MARKER}000");
        assert_eq!(split_trailer(out.as_bytes()), (String::new(), 0));
        assert_eq!(split_trailer(b"garbage"), ("garbage".to_string(), 0));
    }

    #[test]
    fn max_time() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(user_max_time(&a(&["http://x"])), None);
        assert_eq!(user_max_time(&a(&["-m", "3", "http://x"])), Some(3.0));
        assert_eq!(user_max_time(&a(&["--max-time=0.5"])), Some(0.5));
    }

    #[test]
    fn generated_request_ids_compare_by_form() {
        let heads = "x-request-id: 0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9\r\nx-request-id: r1\r\n";
        assert_eq!(
            request_id_forms(heads),
            "x-request-id: xxxxxxxx-xxxx-4xxx-xxxx-xxxxxxxxxxxx\r\nx-request-id: r1\r\n"
        );
    }
}

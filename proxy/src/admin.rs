//! The admin API on loopback: readiness, config dump, Prometheus stats, drain and quit.
//!
//! Loopback is not a boundary for a browser on the host: a page can POST to
//! `127.0.0.1:9901` (CSRF) or reach it under its own name after DNS rebinding. So, as Envoy's
//! admin guidance and the Docker/Kubernetes local APIs do, every request must be addressed to
//! a loopback name (`Host`: `localhost`, a loopback IP, or `--admin-allowed-host`), and the
//! endpoints that change state take only POST, and never from a browser (no `Origin`).
//! Connections are HTTP/1.1 with a head timeout that also bounds keep-alive idling, and at
//! most [`MAX_CONNECTIONS`] are served at once.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bearing_control::ConfigStatus;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Notify, Semaphore};

/// Time a client has to send a request's head, counted from when the connection waits for
/// one: a keep-alive connection idle that long is closed too.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections served at once; one more is closed when accepted.
pub const MAX_CONNECTIONS: usize = 64;

use crate::descriptors;
use crate::runtime::Proxy;

/// What the admin API reads and triggers.
#[derive(Clone)]
pub struct Admin {
    /// The running proxy.
    pub proxy: Arc<Proxy>,
    /// The config source's status.
    pub status: watch::Receiver<ConfigStatus>,
    /// Notified by `POST /quitquitquit`.
    pub quit: Arc<Notify>,
    /// A `Host` name accepted besides `localhost` and loopback IPs (`--admin-allowed-host`).
    pub allowed_host: Option<String>,
}

impl Admin {
    /// Serves the admin API on `listener` until the process ends (see [`serve_http`]).
    pub async fn serve(self, listener: impl Into<HttpListener>) {
        serve_http(listener, "admin", move |req| {
            std::future::ready(self.route(req))
        })
        .await
    }

    fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if let Err(refusal) = check_request(&req, self.allowed_host.as_deref()) {
            tracing::warn!(method = %req.method(), path = %req.uri().path(), "admin request refused: {refusal}");
            return refusal.response();
        }
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/ready") => {
                if self.proxy.is_ready() {
                    text(StatusCode::OK, "LIVE\n")
                } else if self.proxy.is_draining() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "DRAINING\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "NOT READY\n")
                }
            }
            (&Method::GET, "/config_dump") => self.config_dump(),
            (&Method::GET, "/stats/prometheus") => {
                let mut r = Response::new(Full::new(Bytes::from(self.proxy.stats.encode())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            (&Method::POST, "/drain_listeners") => {
                self.proxy.start_drain();
                text(StatusCode::OK, "OK\n")
            }
            (&Method::POST, "/quitquitquit") => {
                self.quit.notify_one();
                text(StatusCode::OK, "OK\n")
            }
            (_, "/ready" | "/config_dump" | "/stats/prometheus") => {
                method_not_allowed("GET", "use GET\n")
            }
            (_, "/drain_listeners" | "/quitquitquit") => method_not_allowed(
                "POST",
                "use POST: this endpoint changes the proxy's state\n",
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "endpoints: GET /ready /config_dump /stats/prometheus, POST /drain_listeners /quitquitquit\n",
            ),
        }
    }

    fn config_dump(&self) -> Response<Full<Bytes>> {
        let status = self.status.borrow().clone();
        let applied = status.applied.as_ref();
        let body = json!({
            "version": applied.map(|a| a.config.version.clone()),
            "source": applied.map(|a| a.config.source.clone()),
            "config": applied.map(|a| a.config.clone()),
            "ignored": applied.map(|a| a.ignored.clone()).unwrap_or_default(),
            "not_enforced": applied.map(|a| a.not_enforced.clone()).unwrap_or_default(),
            "last_rejected": status.last_rejected,
            "read_error": status.read_error,
            "listener_errors": self.proxy.listener_errors(),
            "serve_errors": self.proxy.serve_errors(),
            "ready": self.proxy.is_ready(),
            "draining": self.proxy.is_draining(),
        });
        let text_body = serde_json::to_string_pretty(&body)
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        let mut r = Response::new(Full::new(Bytes::from(text_body + "\n")));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        r
    }
}

/// Serves HTTP/1.1 on `listener` with `route` until the process ends: at most
/// [`MAX_CONNECTIONS`] connections at once, each with a [`HEADER_TIMEOUT`]. When the process
/// is out of descriptors, one of the [`descriptors::ADMIN`] reserve is closed to accept each
/// connection, and parked again once that connection ends, so the admin API, readiness and
/// metrics keep answering. `what` names the server in logs.
pub async fn serve_http<R, F>(listener: impl Into<HttpListener>, what: &'static str, route: R)
where
    R: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let plain = |stream, _| std::future::ready(Some(stream));
    serve_http_over(listener, what, plain, route).await
}

/// As [`serve_http`], each connection first handed to `transport` with its peer's address
/// (TCP), inside the connection's slot: it gives the stream HTTP is read from (after a TLS
/// handshake, say) or `None` to close the connection.
pub async fn serve_http_over<T, TF, Io, R, F>(
    listener: impl Into<HttpListener>,
    what: &'static str,
    transport: T,
    route: R,
) where
    T: Fn(Accepted, Option<SocketAddr>) -> TF + Clone + Send + Sync + 'static,
    TF: Future<Output = Option<Io>> + Send + 'static,
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    R: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = listener.into();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) if descriptors::is_exhausted(&e) && descriptors::ADMIN.release_one() => {
                tracing::debug!("{what} accept failed: {e}; using a reserved descriptor");
                continue;
            }
            Err(e) => {
                // Out of file descriptors or similar: back off instead of spinning.
                tracing::warn!("{what} accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer_name = peer.map_or_else(|| "unix socket peer".to_string(), |p| p.to_string());
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(peer = %peer_name, "{what} connection refused: {MAX_CONNECTIONS} open");
            continue;
        };
        let route = route.clone();
        let transport = transport.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Some(io) = transport(stream, peer).await {
                let service = service_fn(move |req| {
                    let response = route(req);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                if let Err(e) = http.serve_connection(TokioIo::new(io), service).await {
                    tracing::debug!(peer = %peer_name, "{what} connection: {e}");
                }
            }
            descriptors::ADMIN.refill();
        });
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

/// 405 naming the method to use in `Allow`.
fn method_not_allowed(allow: &'static str, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, body);
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// Why a request to the admin API is refused before routing (403).
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// Addressed to a name that is not loopback (DNS rebinding).
    ForeignHost(String),
    /// More than one `Host`.
    SeveralHosts,
    /// A state-changing request carrying a browser's `Origin` (CSRF).
    BrowserOrigin(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::ForeignHost(host) => write!(
                f,
                "Host {host:?} is not a loopback name: the admin API answers only requests \
                 addressed to localhost, a loopback IP or --admin-allowed-host"
            ),
            Refusal::SeveralHosts => write!(f, "more than one Host header"),
            Refusal::BrowserOrigin(origin) => write!(
                f,
                "a POST with Origin {origin:?} comes from a browser page; the admin API's \
                 state-changing endpoints refuse browser requests"
            ),
        }
    }
}

impl Refusal {
    fn response(&self) -> Response<Full<Bytes>> {
        let mut r = Response::new(Full::new(Bytes::from(format!("forbidden: {self}\n"))));
        *r.status_mut() = StatusCode::FORBIDDEN;
        r
    }
}

/// The `Host` (or absolute-form target) must be a loopback name or `allowed_host`; a POST
/// must carry no `Origin`. A request with no host at all (HTTP/1.0) is not a browser's.
fn check_request<B>(req: &Request<B>, allowed_host: Option<&str>) -> Result<(), Refusal> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::SeveralHosts);
    }
    // RFC 9112 §3.2.2: an absolute-form target's authority wins over the Host field.
    let host = match (req.uri().authority(), header) {
        (Some(authority), _) => Some(authority.host().to_string()),
        (None, Some(value)) => Some(host_of(value)),
        (None, None) => None,
    };
    if let Some(host) = host {
        if !is_local_host(&host, allowed_host) {
            return Err(Refusal::ForeignHost(host));
        }
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            return Err(Refusal::BrowserOrigin(
                String::from_utf8_lossy(origin.as_bytes()).into_owned(),
            ));
        }
    }
    Ok(())
}

/// The host part of a `Host` value (port removed); the raw text when it does not parse.
fn host_of(value: &HeaderValue) -> String {
    let text = String::from_utf8_lossy(value.as_bytes());
    match text.parse::<http::uri::Authority>() {
        Ok(authority) if authority.as_str().len() == text.len() => authority.host().to_string(),
        _ => text.into_owned(),
    }
}

/// `localhost`, a loopback IP (bracketed when IPv6), or `allowed_host`; any case, a
/// trailing dot ignored.
fn is_local_host(host: &str, allowed_host: Option<&str>) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.eq_ignore_ascii_case("localhost")
        || allowed_host.is_some_and(|allowed| host.eq_ignore_ascii_case(allowed))
    {
        return true;
    }
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    literal.parse::<IpAddr>().is_ok_and(|ip| match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    })
}

/// Where [`serve_http`] accepts: loopback TCP, or the Unix socket kuma-cp names for Envoy's
/// admin (`<workdir>/kuma-envoy-admin.sock`), which only the proxy's user can reach.
#[derive(Debug)]
pub enum HttpListener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A Unix stream socket listener.
    Unix(UnixListener),
}

impl From<TcpListener> for HttpListener {
    fn from(listener: TcpListener) -> Self {
        HttpListener::Tcp(listener)
    }
}

/// A connection an [`HttpListener`] accepted.
pub type Accepted = tokio_util::either::Either<tokio::net::TcpStream, tokio::net::UnixStream>;

impl HttpListener {
    /// The next connection and its peer's address (TCP).
    async fn accept(&self) -> std::io::Result<(Accepted, Option<SocketAddr>)> {
        use tokio_util::either::Either;
        match self {
            HttpListener::Tcp(l) => l
                .accept()
                .await
                .map(|(s, peer)| (Either::Left(s), Some(peer))),
            HttpListener::Unix(l) => l.accept().await.map(|(s, _)| (Either::Right(s), None)),
        }
    }
}

/// Binds the admin API on the Unix socket `path` (kuma-cp's admin socket), replacing a socket
/// file left by an earlier run (one still served by another process is refused), readable
/// and writable by this user only (mode 0600, as Envoy creates it for kuma-cp's `mode: 384`).
pub fn bind_unix(path: &Path) -> anyhow::Result<HttpListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "cannot bind admin API on {}: a file that is not a socket is there",
                path.display()
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "cannot bind admin API on {}: another process serves it (give each proxy its own --work-dir)",
                path.display()
            );
        }
        std::fs::remove_file(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot replace the old admin socket {}: {e}",
                path.display()
            )
        })?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot bind admin API on {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| anyhow::anyhow!("cannot restrict the admin socket {}: {e}", path.display()))?;
    Ok(HttpListener::Unix(listener))
}

/// Where the admin API listens: a loopback TCP address or a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAt {
    /// `127.0.0.1:<port>` or the given `--admin-address`.
    Tcp(SocketAddr),
    /// The socket kuma-cp's bootstrap names.
    Unix(PathBuf),
}

impl std::fmt::Display for AdminAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminAt::Tcp(a) => a.fmt(f),
            AdminAt::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Binds the admin listener, refusing anything but a loopback address.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    if !address.ip().is_loopback() {
        anyhow::bail!("--admin-address {address} must be a loopback address: the admin API has no authentication");
    }
    TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind admin API on {address}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kuma-cp's admin socket: a stale socket from an earlier run is replaced, the new one is
    /// 0600 and answers HTTP; a regular file in its place is refused, not removed.
    #[tokio::test]
    async fn admin_socket_replaces_a_stale_one_and_answers() {
        use std::os::unix::fs::PermissionsExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kuma-envoy-admin.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listener = bind_unix(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        tokio::spawn(serve_http(listener, "test", |_req| {
            std::future::ready(text(StatusCode::OK, "LIVE"))
        }));
        let mut stream = tokio::net::UnixStream::connect(&path).await.unwrap();
        stream
            .write_all(b"GET /ready HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("LIVE"), "{answer}");

        // Now served: a second proxy given the same socket is refused.
        let err = bind_unix(&path).unwrap_err().to_string();
        assert!(err.contains("another process serves it"), "{err}");

        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "keep me").unwrap();
        let err = bind_unix(&file).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn only_loopback_names_are_served() {
        for host in [
            "localhost",
            "LocalHost.",
            "localhost:9901",
            "127.0.0.1:9901",
            "127.1.2.3",
            "[::1]:9901",
            "[::ffff:127.0.0.1]",
        ] {
            let req = request("POST", "/drain_listeners", &[("host", host)]);
            assert_eq!(check_request(&req, None), Ok(()), "{host}");
        }
        for host in [
            "attacker.example",
            "attacker.example:9901",
            "10.0.0.1:9901",
            "[::2]",
            "localhost.attacker.example",
            "127.0.0.1.attacker.example",
            "localhost@evil",
        ] {
            let req = request("POST", "/drain_listeners", &[("host", host)]);
            assert!(
                matches!(check_request(&req, None), Err(Refusal::ForeignHost(_))),
                "{host}"
            );
        }
        // A configured name, any case.
        let req = request("GET", "/ready", &[("host", "Bearing-Admin:9901")]);
        assert_eq!(check_request(&req, Some("bearing-admin")), Ok(()));
        assert!(check_request(&req, None).is_err());
        // The absolute-form target wins over Host.
        let req = request(
            "GET",
            "http://attacker.example/ready",
            &[("host", "localhost")],
        );
        assert!(matches!(
            check_request(&req, None),
            Err(Refusal::ForeignHost(h)) if h == "attacker.example"
        ));
        // Two Hosts; none at all (HTTP/1.0 tools) is not a browser.
        let req = request(
            "GET",
            "/ready",
            &[("host", "localhost"), ("host", "attacker.example")],
        );
        assert_eq!(check_request(&req, None), Err(Refusal::SeveralHosts));
        assert_eq!(check_request(&request("GET", "/ready", &[]), None), Ok(()));
    }

    #[test]
    fn state_changes_refuse_a_browser_origin() {
        let origin = [
            ("host", "127.0.0.1:9901"),
            ("origin", "http://attacker.example"),
        ];
        let req = request("POST", "/quitquitquit", &origin);
        assert!(matches!(
            check_request(&req, None),
            Err(Refusal::BrowserOrigin(_))
        ));
        let req = request("POST", "/drain_listeners", &[("origin", "null")]);
        assert!(check_request(&req, None).is_err());
        // Reads are not state changes; the Host check still applies to them.
        let req = request("GET", "/config_dump", &origin);
        assert_eq!(check_request(&req, None), Ok(()));
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let response = Refusal::ForeignHost("attacker.example".into()).response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let text = Refusal::ForeignHost("attacker.example".into()).to_string();
        assert!(text.contains("attacker.example") && text.contains("loopback"));
        let allowed = method_not_allowed("POST", "use POST\n");
        assert_eq!(allowed.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(allowed.headers()[header::ALLOW], "POST");
    }
}

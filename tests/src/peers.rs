//! Real peer services started inside a host namespace: nginx, redis and a
//! small scriptable python HTTP server (for slow responses, header echo,
//! arbitrary status codes).
//!
//! Peer handles do not stop their process when dropped; the owning
//! [`crate::Topology`] does on drop. Use `peer.process().stop(..)` to stop
//! one earlier.

use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::http::{http_url, url};
use crate::process::Process;
use crate::topology::Host;

/// How long peers get to start listening before `start_*` fails.
pub const PEER_STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Creates (fresh) `<topology dir>/<name>` and returns it.
fn instance_dir(host: &Host, name: &str) -> Result<PathBuf> {
    let dir = host.dir().join(name);
    if dir.exists() {
        bail!(
            "{} already exists: is a peer already running on host {} with the same port?",
            dir.display(),
            host.name()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Path of an extra log file (not a process's stdout) in the logs directory.
pub(crate) fn extra_log(host: &Host, what: &str) -> PathBuf {
    let shared = host.shared();
    let seq = shared.next_seq();
    shared
        .logs_dir()
        .join(format!("{seq:03}-{}-{what}.log", host.name()))
}

fn check_relative(path: &str) -> Result<()> {
    let p = Path::new(path);
    if path.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        bail!("file path {path:?} must be relative without `..`");
    }
    Ok(())
}

/// Configuration for an nginx peer; see [`start_nginx`] for the defaults.
#[derive(Debug, Clone)]
#[must_use = "call start(host) to run nginx"]
pub struct NginxConfig {
    port: u16,
    body: Option<String>,
    files: Vec<(String, Vec<u8>)>,
    server_snippet: String,
    http_snippet: String,
    ipv6: bool,
    tls: Option<(String, String)>,
}

impl NginxConfig {
    /// nginx listening on `0.0.0.0:port` and `[::]:port`.
    pub fn new(port: u16) -> Self {
        NginxConfig {
            port,
            body: None,
            files: Vec::new(),
            server_snippet: String::new(),
            http_snippet: String::new(),
            ipv6: true,
            tls: None,
        }
    }

    /// Body served for `GET /` (file `index.html`). Default:
    /// `"hello from <host> (nginx:<port>)\n"`.
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Adds a file under the document root, e.g. `("big.bin", bytes)` is
    /// served at `/big.bin`. `path` must be relative (subdirectories allowed).
    pub fn file(mut self, path: impl Into<String>, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((path.into(), contents.into()));
        self
    }

    /// Raw nginx directives appended inside the `server { }` block (e.g.
    /// extra `location` blocks).
    pub fn server_snippet(mut self, snippet: impl AsRef<str>) -> Self {
        self.server_snippet.push_str(snippet.as_ref());
        self.server_snippet.push('\n');
        self
    }

    /// Raw nginx directives appended inside the `http { }` block (e.g. extra
    /// `server` blocks).
    pub fn http_snippet(mut self, snippet: impl AsRef<str>) -> Self {
        self.http_snippet.push_str(snippet.as_ref());
        self.http_snippet.push('\n');
        self
    }

    /// Whether to also listen on `[::]:port` (default `true`).
    pub fn ipv6(mut self, enabled: bool) -> Self {
        self.ipv6 = enabled;
        self
    }

    /// Serve HTTPS instead of HTTP: `listen PORT ssl` with this certificate (PEM, may hold
    /// the chain) and private key (PEM). [`Nginx::url4`] then gives `https://` URLs.
    pub fn tls(mut self, cert_pem: impl Into<String>, key_pem: impl Into<String>) -> Self {
        self.tls = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Writes the configuration and document root into the topology dir,
    /// starts nginx (`daemon off`) on `host` and waits until it listens.
    pub fn start(self, host: &Host) -> Result<Nginx> {
        let port = self.port;
        let dir = instance_dir(host, &format!("nginx-{}-{port}", host.name()))?;
        let www = dir.join("www");
        std::fs::create_dir(&www).context("creating nginx document root")?;
        let body = self
            .body
            .unwrap_or_else(|| format!("hello from {} (nginx:{port})\n", host.name()));
        std::fs::write(www.join("index.html"), &body).context("writing index.html")?;
        for (path, contents) in &self.files {
            check_relative(path)?;
            let target = www.join(path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&target, contents)
                .with_context(|| format!("writing {}", target.display()))?;
        }

        let error_log = extra_log(host, &format!("nginx{port}-error"));
        let access_log = extra_log(host, &format!("nginx{port}-access"));
        let d = dir.display();
        let mut ssl = "";
        let mut tls_conf = String::new();
        if let Some((cert, key)) = &self.tls {
            let (cert_path, key_path) = (dir.join("tls.pem"), dir.join("tls.key"));
            std::fs::write(&cert_path, cert).context("writing nginx TLS certificate")?;
            std::fs::write(&key_path, key).context("writing nginx TLS key")?;
            ssl = " ssl";
            tls_conf = format!(
                "ssl_certificate {};\n        ssl_certificate_key {};",
                cert_path.display(),
                key_path.display()
            );
        }
        let listen6 = if self.ipv6 {
            format!("listen [::]:{port}{ssl} ipv6only=on;")
        } else {
            String::new()
        };
        let conf = format!(
            r#"# generated by bearing-e2e
user root root;
worker_processes 1;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {error_log} info;

events {{
    worker_connections 4096;
}}

http {{
    default_type application/octet-stream;
    access_log {access_log};
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_timeout 65s;
    keepalive_requests 100000;
    sendfile on;

{http_snippet}
    server {{
        listen 0.0.0.0:{port}{ssl};
        {listen6}
        {tls_conf}
        server_name _;
        root {www};
        add_header X-Served-By "{host}:{port}" always;

        location = /health {{
            default_type text/plain;
            return 200 "ok\n";
        }}

        location / {{
            index index.html;
        }}

{server_snippet}
    }}
}}
"#,
            error_log = error_log.display(),
            access_log = access_log.display(),
            www = www.display(),
            host = host.name(),
            http_snippet = self.http_snippet,
            server_snippet = self.server_snippet,
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).context("writing nginx.conf")?;

        let process = host
            .command("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(&error_log)
            .log_name(format!("nginx{port}"))
            .spawn()?;
        host.wait_for_tcp_listener(port, PEER_STARTUP_TIMEOUT, Some(&process))
            .with_context(|| {
                let errlog = std::fs::read_to_string(&error_log).unwrap_or_default();
                format!(
                    "nginx did not start on {}:{port}; error log:\n{errlog}",
                    host.name()
                )
            })?;
        Ok(Nginx {
            process,
            port,
            scheme: if self.tls.is_some() { "https" } else { "http" },
            body,
            root: www,
            conf_path,
            ip4: host.ip4().into(),
            ip6: host.ip6().into(),
        })
    }
}

/// Starts nginx on `host` listening on `0.0.0.0:port` and `[::]:port` with
/// the default configuration:
///
/// * `GET /` → 200 with body `"hello from <host> (nginx:<port>)\n"`
///   ([`Nginx::body`]); unknown paths → 404;
/// * `GET /health` → 200 `"ok\n"`;
/// * every response carries `X-Served-By: <host>:<port>`.
///
/// Config, pid and temp files live under `<topology dir>/nginx-<host>-<port>/`;
/// error and access logs in the logs dir. Use [`NginxConfig`] to customise.
pub fn start_nginx(host: &Host, port: u16) -> Result<Nginx> {
    NginxConfig::new(port).start(host)
}

/// A running nginx peer.
#[derive(Debug, Clone)]
pub struct Nginx {
    process: Process,
    port: u16,
    scheme: &'static str,
    body: String,
    root: PathBuf,
    conf_path: PathBuf,
    ip4: IpAddr,
    ip6: IpAddr,
}

impl Nginx {
    /// The nginx master process.
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The body served at `/`.
    pub fn body(&self) -> &str {
        &self.body
    }

    /// The document root (files added here later are served immediately).
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    /// Path of the generated `nginx.conf`.
    pub fn conf_path(&self) -> &Path {
        &self.conf_path
    }

    /// `http://<host ip4>:<port><path>` (`https://` with [`NginxConfig::tls`]).
    pub fn url4(&self, path: &str) -> String {
        url(self.scheme, self.ip4, self.port, path)
    }

    /// `http://[<host ip6>]:<port><path>` (`https://` with [`NginxConfig::tls`]).
    pub fn url6(&self, path: &str) -> String {
        url(self.scheme, self.ip6, self.port, path)
    }
}

/// Starts `redis-server` on `host` listening on `0.0.0.0:port` and
/// `[::]:port` (no persistence, protected mode off, log to the process log)
/// and waits until it listens.
pub fn start_redis(host: &Host, port: u16) -> Result<Redis> {
    let dir = instance_dir(host, &format!("redis-{}-{port}", host.name()))?;
    let process = host
        .command("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "0.0.0.0", "-::"])
        .args(["--protected-mode", "no"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--daemonize", "no"])
        .args(["--logfile", ""])
        .arg("--dir")
        .arg(&dir)
        .log_name(format!("redis{port}"))
        .spawn()?;
    host.wait_for_tcp_listener(port, PEER_STARTUP_TIMEOUT, Some(&process))?;
    Ok(Redis {
        process,
        port,
        ip4: host.ip4().into(),
    })
}

/// A running redis peer.
#[derive(Debug, Clone)]
pub struct Redis {
    process: Process,
    port: u16,
    ip4: IpAddr,
}

impl Redis {
    /// The `redis-server` process.
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The IPv4 address it can be reached at from other hosts.
    pub fn ip4(&self) -> IpAddr {
        self.ip4
    }
}

/// Runs `redis-cli -h <ip> -p <port> <args...>` on `host` (10 s limit) and
/// returns its trimmed stdout; fails if redis-cli exits non-zero.
///
/// Note that redis-cli reports server errors on stdout with exit status 0.
pub fn redis_cli<I, S>(host: &Host, ip: impl Into<IpAddr>, port: u16, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = host
        .command("redis-cli")
        .args(["-h", &ip.into().to_string(), "-p", &port.to_string()])
        .args(args)
        .timeout(Duration::from_secs(10))
        .output()?
        .check()?;
    Ok(out.stdout.trim().to_string())
}

/// The python HTTP server script; see [`HttpServerConfig`].
const HTTP_SERVER_PY: &str = r#"# generated by bearing-e2e
import argparse, socket, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qs

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--delay", type=float, default=0.0)
ap.add_argument("--body-file", required=True)
ap.add_argument("--name", default="")
args = ap.parse_args()
with open(args.body_file, "rb") as f:
    BODY = f.read()


class Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def handle_error(self, request, client_address):
        sys.stderr.write("error serving %s: %r\n" % (client_address[0], sys.exc_info()[1]))
        sys.stderr.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bearing-e2e-http"
    sys_version = ""

    def log_message(self, fmt, *a):
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % a))
        sys.stderr.flush()

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def handle_any(self):
        body_in = self.read_body()
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        delay = float(query["delay"][0]) if "delay" in query else args.delay
        if delay > 0:
            time.sleep(delay)
        status = 200
        parts = url.path.split("/")
        if url.path == "/echo" or url.path.startswith("/echo/"):
            lines = ["%s %s %s" % (self.command, self.path, self.request_version)]
            lines += ["%s: %s" % (k.lower(), v) for k, v in self.headers.items()]
            out = ("\n".join(lines) + "\n\n").encode() + body_in
        elif len(parts) == 3 and parts[1] == "status" and parts[2].isdigit():
            status = int(parts[2])
            out = ("status %d\n" % status).encode()
        elif len(parts) == 3 and parts[1] == "bytes" and parts[2].isdigit():
            out = b"x" * int(parts[2])
        elif len(parts) == 3 and parts[1] == "drip" and parts[2].isdigit():
            chunks = int(parts[2])
            every = float(query["every"][0]) if "every" in query else 0.3
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(10 * chunks))
            self.end_headers()
            try:
                for i in range(chunks):
                    time.sleep(every)
                    self.wfile.write(b"chunk%04d\n" % i)
            except OSError:
                self.close_connection = True
            return
        else:
            out = BODY
        self.send_response(status)
        self.send_header("X-Served-By", args.name)
        for extra in query.get("header", []):
            name, _, value = extra.partition(":")
            self.send_header(name, value)
        if status in (204, 304) or status < 200:
            self.end_headers()
            return
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(out)))
        if "close" in query:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = handle_any


Server(("::", args.port), Handler).serve_forever()
"#;

/// Configuration for the python HTTP peer.
///
/// The server speaks HTTP/1.1 with keep-alive on `[::]:port` (dual-stack,
/// so also IPv4), accepts any method, and answers:
///
/// * `/echo[/...]` → 200, body = request line, then one `name: value` line
///   per request header (names lower-cased), an empty line, the request body;
/// * `/status/<code>` → that status, body `"status <code>\n"`;
/// * `/bytes/<n>` → 200 with `n` bytes of `x`;
/// * `/drip/<n>` → 200 with a `Content-Length` of `n` 10-byte chunks (`chunk0000\n`…),
///   the head at once and then one chunk every `?every=<secs>` (0.3 s by default);
/// * anything else → 200 with [`HttpServer::body`].
///
/// Every response is delayed by the configured delay, or by `?delay=<secs>`
/// (float) if present in the query; `?close` makes the server close the
/// connection after the response; each `?header=<name>:<value>` adds that response header.
/// Responses carry `X-Served-By: <host>:<port>`.
/// One line per request is logged to the process log.
#[derive(Debug, Clone)]
#[must_use = "call start(host) to run the server"]
pub struct HttpServerConfig {
    port: u16,
    delay: Duration,
    body: Option<String>,
}

impl HttpServerConfig {
    /// Server on `port` with no delay and the default body.
    pub fn new(port: u16) -> Self {
        HttpServerConfig {
            port,
            delay: Duration::ZERO,
            body: None,
        }
    }

    /// Delay before every response (unless overridden by `?delay=`).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Default response body. Default: `"hello from <host> (python:<port>)\n"`.
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Writes the script, starts `python3` on `host` and waits until it listens.
    pub fn start(self, host: &Host) -> Result<HttpServer> {
        let port = self.port;
        let dir = instance_dir(host, &format!("http-{}-{port}", host.name()))?;
        let script = dir.join("server.py");
        std::fs::write(&script, HTTP_SERVER_PY).context("writing server.py")?;
        let body = self
            .body
            .unwrap_or_else(|| format!("hello from {} (python:{port})\n", host.name()));
        let body_file = dir.join("body");
        std::fs::write(&body_file, &body).context("writing body file")?;
        let process = host
            .command("python3")
            .arg("-u")
            .arg(&script)
            .args(["--port", &port.to_string()])
            .args(["--delay", &self.delay.as_secs_f64().to_string()])
            .arg("--body-file")
            .arg(&body_file)
            .args(["--name", &format!("{}:{port}", host.name())])
            .log_name(format!("http{port}"))
            .spawn()?;
        host.wait_for_tcp_listener(port, PEER_STARTUP_TIMEOUT, Some(&process))?;
        Ok(HttpServer {
            process,
            port,
            body,
            delay: self.delay,
            ip4: host.ip4().into(),
            ip6: host.ip6().into(),
        })
    }
}

/// Starts the python HTTP peer on `host:port` without delay; see
/// [`HttpServerConfig`] for its endpoints.
pub fn start_http_server(host: &Host, port: u16) -> Result<HttpServer> {
    HttpServerConfig::new(port).start(host)
}

/// Starts the python HTTP peer on `host:port`, delaying every response by
/// `delay` (after reading the request, before sending any byte).
pub fn start_slow_server(host: &Host, port: u16, delay: Duration) -> Result<HttpServer> {
    HttpServerConfig::new(port).delay(delay).start(host)
}

/// A running python HTTP peer.
#[derive(Debug, Clone)]
pub struct HttpServer {
    process: Process,
    port: u16,
    body: String,
    delay: Duration,
    ip4: IpAddr,
    ip6: IpAddr,
}

impl HttpServer {
    /// The `python3` process.
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The default response body.
    pub fn body(&self) -> &str {
        &self.body
    }

    /// The configured per-response delay.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// `http://<host ip4>:<port><path>`.
    pub fn url4(&self, path: &str) -> String {
        http_url(self.ip4, self.port, path)
    }

    /// `http://[<host ip6>]:<port><path>`.
    pub fn url6(&self, path: &str) -> String {
        http_url(self.ip6, self.port, path)
    }
}

//! The admin API on loopback: readiness, config dump, Prometheus stats, drain and quit.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bearing_control::ConfigStatus;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

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
}

impl Admin {
    /// Serves the admin API on `listener` until the process ends. When the process is out of
    /// descriptors, one of the [`descriptors::ADMIN`] reserve is closed to accept each admin
    /// connection, and parked again once that connection ends.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(a) => a,
                Err(e) if descriptors::is_exhausted(&e) && descriptors::ADMIN.release_one() => {
                    tracing::debug!("admin accept failed: {e}; using a reserved descriptor");
                    continue;
                }
                Err(e) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!("admin accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.route(req)) }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!("admin connection: {e}");
                }
                descriptors::ADMIN.refill();
            });
        }
    }

    fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
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
                text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
            }
            (_, "/drain_listeners" | "/quitquitquit") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n")
            }
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
            "last_rejected": status.last_rejected,
            "listener_errors": self.proxy.bind_errors(),
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

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
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

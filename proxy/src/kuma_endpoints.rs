//! Kuma's endpoints for kubelet and Prometheus that kuma-dp and Envoy answer beside the mesh
//! traffic, served by Bearing itself where the applied config places them
//! (`ProxyConfig::kuma_endpoints`, from kuma-cp's `kuma:envoy:admin`, `kuma:readiness` and
//! `kuma:metrics:prometheus`):
//! - `/ready` on the Dataplane's admin address and on the readiness reporter's loopback port,
//!   answered as kuma-dp 2.14's readiness reporter does: `READY` (200) once a config is
//!   applied, `NOT_READY` (503) before, `TERMINATING` (503) while draining; every other path
//!   404. Nothing else of the admin API is served off loopback.
//! - The Prometheus scrape path (a prefix, as Envoy's route matches it): Bearing's metrics in
//!   the text format, as kuma-dp's metrics hijacker answers with Envoy's stats.
//!
//! Sockets follow the config: an address that stays keeps its socket (a changed path or role
//! takes effect on the next request), a removed one closes, a new one is bound.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bearing_control::ConfigStatus;
use bearing_proxy_config::KumaEndpoints;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::serve_http;
use crate::runtime::Proxy;

/// The content type of Prometheus' text format, as kuma-dp's hijacker answers a scrape when
/// the sources are Envoy (and applications) speaking it.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What one address answers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    /// `/ready`, as kuma-dp's readiness reporter.
    Ready,
    /// Bearing's metrics under this path prefix.
    Metrics(String),
}

impl Role {
    fn name(&self) -> &'static str {
        match self {
            Role::Ready => "readiness",
            Role::Metrics(_) => "prometheus",
        }
    }
}

/// The addresses and roles `endpoints` asks for.
fn wanted(endpoints: &KumaEndpoints) -> HashMap<SocketAddr, Role> {
    let ready = [endpoints.ready, endpoints.readiness_reporter]
        .into_iter()
        .flatten()
        .map(|a| (a, Role::Ready));
    let metrics = endpoints
        .prometheus
        .iter()
        .map(|p| (p.address, Role::Metrics(p.path.clone())));
    ready.chain(metrics).collect()
}

/// One bound address.
struct Served {
    role: Arc<ArcSwap<Role>>,
    task: JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Follows the applied config: binds, keeps or closes the endpoints' sockets. A bind failure
/// is logged and retried at the next config change.
pub async fn serve(proxy: Arc<Proxy>, mut status: watch::Receiver<ConfigStatus>) {
    let mut served: HashMap<SocketAddr, Served> = HashMap::new();
    loop {
        let endpoints = status
            .borrow_and_update()
            .applied
            .as_ref()
            .map(|a| a.config.kuma_endpoints.clone());
        // Before the first config (kuma-cp not answered yet) the endpoints of the last one
        // are unknown: nothing is bound, as kuma-dp's Envoy has no listener yet either.
        if let Some(endpoints) = endpoints {
            let wanted = wanted(&endpoints);
            served.retain(|address, _| wanted.contains_key(address));
            for (address, role) in wanted {
                match served.get(&address) {
                    Some(s) => {
                        s.role.store(Arc::new(role));
                    }
                    None => match TcpListener::bind(address).await {
                        Ok(listener) => {
                            tracing::info!(%address, endpoint = role.name(), "Kuma endpoint listening");
                            let role = Arc::new(ArcSwap::from_pointee(role));
                            let task = tokio::spawn(serve_http(
                                listener,
                                "Kuma endpoint",
                                router(proxy.clone(), role.clone()),
                            ));
                            served.insert(address, Served { role, task });
                        }
                        Err(e) => {
                            tracing::error!(%address, endpoint = role.name(), "cannot listen: {e}; kubelet or Prometheus will not reach it there")
                        }
                    },
                }
            }
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

/// The request handler of one address.
fn router(
    proxy: Arc<Proxy>,
    role: Arc<ArcSwap<Role>>,
) -> impl Fn(Request<hyper::body::Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static
{
    move |req| answer(&proxy, &role.load(), req.uri().path())
}

/// The answer of `role` to a request for `path`.
fn answer(proxy: &Proxy, role: &Role, path: &str) -> Response<Full<Bytes>> {
    match role {
        Role::Ready if path == "/ready" => {
            let (status, state) = match (proxy.is_draining(), proxy.is_ready()) {
                (true, _) => (StatusCode::SERVICE_UNAVAILABLE, "TERMINATING"),
                (false, true) => (StatusCode::OK, "READY"),
                (false, false) => (StatusCode::SERVICE_UNAVAILABLE, "NOT_READY"),
            };
            let mut r = respond(status, "text/plain", Bytes::from_static(state.as_bytes()));
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache, max-age=0"),
            );
            r
        }
        Role::Metrics(prefix) if path.starts_with(prefix.as_str()) => {
            let text = proxy.stats.encode();
            // OpenMetrics' end marker does not belong to the text format (kuma-dp drops it
            // too when it answers in the text format).
            let body = text.trim_end().strip_suffix("# EOF").unwrap_or(&text);
            let body = Bytes::from(format!("{}\n", body.trim_end()));
            respond(StatusCode::OK, PROMETHEUS_TEXT, body)
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"404 page not found\n"),
        ),
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workers::Workers;
    use bearing_proxy_config::PrometheusEndpoint;

    async fn body(r: Response<Full<Bytes>>) -> (StatusCode, String, String) {
        use http_body_util::BodyExt;
        let status = r.status();
        let content_type = r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8(bytes.to_vec()).unwrap(),
        )
    }

    /// Readiness answers as kuma-dp's reporter: NOT_READY before a config, READY after,
    /// TERMINATING while draining; only `/ready`. Metrics answer under the path prefix in
    /// Prometheus' text format without OpenMetrics' end marker.
    #[tokio::test]
    async fn endpoints_answer_as_kuma_dp() {
        let proxy = Proxy::new(Workers::start(1, false).unwrap());
        let ready = |p: &str| body(answer(&proxy, &Role::Ready, p));
        let metrics_role = Role::Metrics("/metrics".into());
        let metrics = |p: &str| body(answer(&proxy, &metrics_role, p));
        assert_eq!(
            ready("/ready").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain".into(),
                "NOT_READY".into()
            )
        );
        assert_eq!(ready("/config_dump").await.0, StatusCode::NOT_FOUND);
        assert_eq!(ready("/readyz").await.0, StatusCode::NOT_FOUND);

        let (status, content_type, text) = metrics("/metrics").await;
        assert_eq!(
            (status, content_type.as_str()),
            (StatusCode::OK, PROMETHEUS_TEXT)
        );
        assert!(text.contains("# TYPE bearing_"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        assert_eq!(metrics("/metrics/extra").await.0, StatusCode::OK);
        assert_eq!(metrics("/stats").await.0, StatusCode::NOT_FOUND);
        assert_eq!(metrics("/ready").await.0, StatusCode::NOT_FOUND);

        proxy.start_drain();
        assert_eq!(
            ready("/ready").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain".into(),
                "TERMINATING".into()
            )
        );
    }

    #[test]
    fn wanted_addresses_follow_the_config() {
        let endpoints = KumaEndpoints {
            ready: Some("10.0.0.1:9901".parse().unwrap()),
            readiness_reporter: Some("127.0.0.1:9902".parse().unwrap()),
            prometheus: Some(PrometheusEndpoint {
                address: "10.0.0.1:5670".parse().unwrap(),
                path: "/metrics".into(),
            }),
        };
        let wanted = wanted(&endpoints);
        assert_eq!(wanted.len(), 3);
        assert_eq!(wanted[&"127.0.0.1:9902".parse().unwrap()], Role::Ready);
        assert_eq!(
            wanted[&"10.0.0.1:5670".parse().unwrap()],
            Role::Metrics("/metrics".into())
        );
        assert!(super::wanted(&KumaEndpoints::default()).is_empty());
    }
}

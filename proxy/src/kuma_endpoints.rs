//! Kuma's endpoints for kubelet and Prometheus that kuma-dp and Envoy answer beside the mesh
//! traffic, served by Bearing itself where the applied config places them
//! (`ProxyConfig::kuma_endpoints`, from kuma-cp's `kuma:envoy:admin`, `kuma:readiness` and
//! `kuma:metrics:prometheus`):
//! - `/ready` on the Dataplane's admin address and on the readiness reporter's loopback port,
//!   answered as kuma-dp 2.14's readiness reporter does: `READY` (200) once a config is
//!   applied, `NOT_READY` (503) before, `TERMINATING` (503) while draining; every other path
//!   404. Nothing else of the admin API is served off loopback.
//! - The Prometheus scrape path (a prefix, as Envoy's route matches it): Bearing's metrics
//!   merged with those of the application endpoints kuma-cp lists, as kuma-dp's metrics
//!   hijacker merges them with Envoy's stats ([`scrape`]); over TLS when kuma-cp's listener
//!   terminates it (the proxy's mesh identity, or certificate files), plaintext for the
//!   sources its plaintext chains match.
//!
//! Sockets follow the config: an address that stays keeps its socket (a changed path or role
//! takes effect on the next request), a removed one closes, a new one is bound.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bearing_control::ConfigStatus;
use bearing_proxy_config::{MeshTls, MetricsApplication, MetricsTls, ProxyConfig, SourcePrefix};
use bearing_tls::TlsAcceptor;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::either::Either;

use crate::admin::{serve_http_over, Accepted};
use crate::mesh_tls::MeshTlsRuntime;
use crate::runtime::Proxy;

pub mod scrape;

/// What one address answers.
#[derive(Debug, Clone, PartialEq)]
enum Role {
    /// `/ready`, as kuma-dp's readiness reporter.
    Ready,
    /// Bearing's metrics and the applications' under this path prefix.
    Metrics(Box<Scrape>),
}

/// What the Prometheus endpoint merges into its answer, and how it is reached.
#[derive(Debug, Clone, PartialEq)]
struct Scrape {
    /// The path prefix that answers.
    path: String,
    /// The application endpoints merged in, in kuma-cp's order.
    applications: Vec<MetricsApplication>,
    /// Whether the workload's traffic is redirected (the applications are then reached
    /// from the inbound passthrough source).
    transparent_proxy: bool,
    /// The TLS scrapes come over (`None`: plaintext).
    tls: Option<MetricsTls>,
    /// The mesh settings `tls` presents the identity of (`MetricsTls::Mesh`), so that a
    /// renewed identity rebuilds the acceptor.
    mesh: Option<MeshTls>,
    /// Scrapers served in plaintext all the same.
    plaintext_sources: Vec<SourcePrefix>,
}

impl Role {
    fn name(&self) -> &'static str {
        match self {
            Role::Ready => "readiness",
            Role::Metrics(_) => "prometheus",
        }
    }
}

/// The addresses and roles `config` asks for.
fn wanted(config: &ProxyConfig) -> HashMap<SocketAddr, Role> {
    let endpoints = &config.kuma_endpoints;
    let ready = [endpoints.ready, endpoints.readiness_reporter]
        .into_iter()
        .flatten()
        .map(|a| (a, Role::Ready));
    let metrics = endpoints.prometheus.iter().map(|p| {
        let mesh = match &p.tls {
            Some(MetricsTls::Mesh(mesh)) => config.mtls.get(mesh).cloned(),
            _ => None,
        };
        let scrape = Scrape {
            path: p.path.clone(),
            applications: p.applications.clone(),
            transparent_proxy: config.transparent_proxy.is_some(),
            tls: p.tls.clone(),
            mesh,
            plaintext_sources: p.plaintext_sources.clone(),
        };
        (p.address, Role::Metrics(Box::new(scrape)))
    });
    ready.chain(metrics).collect()
}

/// What one address serves now: its role, and the TLS its connections are terminated with.
struct Active {
    role: Role,
    tls: Option<TlsServing>,
}

/// The TLS of a Prometheus endpoint, ready for connections.
struct TlsServing {
    /// The acceptor, or why there is none (connections other than `plaintext_sources` are
    /// then refused, each logged with the reason).
    acceptor: Result<TlsAcceptor, String>,
    /// Scrapers served in plaintext.
    plaintext_sources: Vec<SourcePrefix>,
    /// The mesh identity the acceptor presents, kept while it serves.
    _mesh: Option<Arc<MeshTlsRuntime>>,
}

impl Active {
    /// Builds the TLS `role` asks for (once per role: a config that keeps it keeps it).
    fn new(role: Role) -> Active {
        let scrape = match &role {
            Role::Metrics(scrape) => Some(scrape.as_ref()),
            Role::Ready => None,
        };
        let tls = scrape.and_then(|scrape| {
            let tls = scrape.tls.as_ref()?;
            let (acceptor, runtime) = match metrics_acceptor(tls, scrape.mesh.as_ref()) {
                Ok((acceptor, runtime)) => (Ok(acceptor), runtime),
                Err(e) => {
                    tracing::error!(
                        endpoint = "prometheus",
                        "metrics over TLS cannot be served: {e}; scrapes over TLS are refused"
                    );
                    (Err(e), None)
                }
            };
            Some(TlsServing {
                acceptor,
                plaintext_sources: scrape.plaintext_sources.clone(),
                _mesh: runtime,
            })
        });
        Active { role, tls }
    }
}

/// The acceptor of `tls`: the proxy's identity in the mesh (`mesh`, the config's settings of
/// it), clients of the same mesh required; or the certificate files, no client certificate.
fn metrics_acceptor(
    tls: &MetricsTls,
    mesh: Option<&MeshTls>,
) -> Result<(TlsAcceptor, Option<Arc<MeshTlsRuntime>>), String> {
    match tls {
        MetricsTls::Mesh(name) => {
            let settings =
                mesh.ok_or_else(|| format!("the config has no mTLS settings of mesh {name:?}"))?;
            let runtime = MeshTlsRuntime::build(settings)
                .map_err(|e| format!("mesh {name:?} identity: {e}"))?;
            Ok((runtime.server.clone(), Some(Arc::new(runtime))))
        }
        MetricsTls::Files {
            cert_path,
            key_path,
        } => {
            let read = |path: &str| {
                std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
            };
            let key = bearing_tls::certified_key(&read(cert_path)?, &read(key_path)?)
                .map_err(|e| format!("{cert_path} and {key_path}: {e}"))?;
            let acceptor = bearing_tls::gateway_acceptor(&[key], |_| Some(0), &[], None)
                .map_err(|e| format!("{cert_path}: {e}"))?;
            Ok((acceptor, None))
        }
    }
}

/// One bound address.
struct Served {
    active: Arc<ArcSwap<Active>>,
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
        let wanted = status
            .borrow_and_update()
            .applied
            .as_ref()
            .map(|a| wanted(&a.config));
        // Before the first config (kuma-cp not answered yet) the endpoints of the last one
        // are unknown: nothing is bound, as kuma-dp's Envoy has no listener yet either.
        if let Some(wanted) = wanted {
            served.retain(|address, _| wanted.contains_key(address));
            for (address, role) in wanted {
                match served.get(&address) {
                    Some(s) if s.active.load().role == role => {}
                    Some(s) => s.active.store(Arc::new(Active::new(role))),
                    None => match TcpListener::bind(address).await {
                        Ok(listener) => {
                            tracing::info!(%address, endpoint = role.name(), "Kuma endpoint listening");
                            let active = Arc::new(ArcSwap::from_pointee(Active::new(role)));
                            let task = tokio::spawn(serve_http_over(
                                listener,
                                "Kuma endpoint",
                                transport(active.clone()),
                                router(proxy.clone(), active.clone()),
                            ));
                            served.insert(address, Served { active, task });
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

/// A connection as an endpoint reads HTTP from it: plaintext or after a TLS handshake.
type EndpointIo = Either<Accepted, bearing_tls::TlsStream<Accepted>>;

/// A connection being readied.
type BoxedIo = std::pin::Pin<Box<dyn std::future::Future<Output = Option<EndpointIo>> + Send>>;

/// The name of kuma-cp's Prometheus listener, for TLS logs.
const PROMETHEUS_LISTENER: &str = "kuma:metrics:prometheus";

/// The connection handling of one address: plaintext, or TLS as Envoy's chains of kuma-cp's
/// listener choose it (the plaintext sources by their address, every other scraper over
/// TLS); a failed handshake closes the connection.
fn transport(
    active: Arc<ArcSwap<Active>>,
) -> impl Fn(Accepted, Option<SocketAddr>) -> BoxedIo + Clone + Send + Sync + 'static {
    move |stream, peer| {
        let active = active.load_full();
        Box::pin(async move {
            let Some(tls) = &active.tls else {
                return Some(Either::Left(stream));
            };
            let peer = peer?;
            if tls.plaintext_sources.iter().any(|s| s.contains(peer.ip())) {
                return Some(Either::Left(stream));
            }
            match &tls.acceptor {
                Ok(acceptor) => match acceptor.accept(stream, PROMETHEUS_LISTENER, peer).await {
                    Ok(tls_stream) => Some(Either::Right(tls_stream)),
                    Err(e) => {
                        tracing::info!(%peer, endpoint = "prometheus", "TLS refused: {e}");
                        None
                    }
                },
                Err(reason) => {
                    tracing::warn!(%peer, endpoint = "prometheus", "refused: {reason}");
                    None
                }
            }
        })
    }
}

/// The request handler of one address.
fn router(
    proxy: Arc<Proxy>,
    active: Arc<ArcSwap<Active>>,
) -> impl Fn(Request<hyper::body::Incoming>) -> BoxedAnswer + Clone + Send + Sync + 'static {
    move |req| {
        let proxy = proxy.clone();
        let active = active.load_full();
        Box::pin(async move { answer(&proxy, &active.role, req.uri().path(), req.headers()).await })
    }
}

/// An answer being made.
type BoxedAnswer =
    std::pin::Pin<Box<dyn std::future::Future<Output = Response<Full<Bytes>>> + Send>>;

/// The answer of `role` to a request for `path` carrying `headers`.
async fn answer(
    proxy: &Proxy,
    role: &Role,
    path: &str,
    headers: &HeaderMap,
) -> Response<Full<Bytes>> {
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
        Role::Metrics(config) if path.starts_with(config.path.as_str()) => {
            let fetched = scrape::fetch_all(
                &config.applications,
                headers,
                config.transparent_proxy,
                scrape::wait_for(headers),
            )
            .await;
            // Bearing's own metrics stand where kuma-dp's hijacker has Envoy's stats: last,
            // in the text format Envoy answers in.
            let own = Bytes::from(proxy.stats.encode());
            let sources: Vec<(Bytes, Option<scrape::Format>)> = fetched
                .into_iter()
                .flatten()
                .chain([(own, Some(scrape::Format::Text))])
                .collect();
            let format = scrape::choose_format(sources.iter().map(|(_, f)| *f));
            let body = scrape::merge(sources.iter().map(|(b, _)| b.as_ref()), format);
            respond(StatusCode::OK, format.content_type(), Bytes::from(body))
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
    use bearing_proxy_config::{KumaEndpoints, PrometheusEndpoint};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

    fn scrape(applications: Vec<MetricsApplication>) -> Scrape {
        Scrape {
            path: "/metrics".into(),
            applications,
            transparent_proxy: false,
            tls: None,
            mesh: None,
            plaintext_sources: Vec::new(),
        }
    }

    fn metrics_role(applications: Vec<MetricsApplication>) -> Role {
        Role::Metrics(Box::new(scrape(applications)))
    }

    /// Readiness answers as kuma-dp's reporter: NOT_READY before a config, READY after,
    /// TERMINATING while draining; only `/ready`. Metrics answer under the path prefix in
    /// Prometheus' text format without OpenMetrics' end marker.
    #[tokio::test]
    async fn endpoints_answer_as_kuma_dp() {
        let proxy = Proxy::new(Workers::start(1, false).unwrap());
        let none = HeaderMap::new();
        let ready_role = Role::Ready;
        let ready =
            |p: &'static str| async { body(answer(&proxy, &ready_role, p, &none).await).await };
        let metrics_role = metrics_role(Vec::new());
        let metrics =
            |p: &'static str| async { body(answer(&proxy, &metrics_role, p, &none).await).await };
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
            (StatusCode::OK, scrape::Format::Text.content_type())
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

    /// A one-shot HTTP server on loopback answering every request with `status`,
    /// `content_type` and `body` after `delay`; gives its port and the requests it read.
    async fn app(
        status: &'static str,
        content_type: Option<&'static str>,
        body: &'static str,
        delay: std::time::Duration,
    ) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (seen, requests) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = seen.send(String::from_utf8_lossy(&request).into_owned());
                    tokio::time::sleep(delay).await;
                    let content_type = content_type
                        .map(|c| format!("content-type: {c}\r\n"))
                        .unwrap_or_default();
                    let answer = format!(
                        "HTTP/1.1 {status}\r\n{content_type}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        (port, requests)
    }

    fn application(name: &str, port: u16, path: &str) -> MetricsApplication {
        MetricsApplication {
            name: name.into(),
            address: "127.0.0.1".into(),
            port,
            path: path.into(),
        }
    }

    /// The applications' metrics come before Bearing's in kuma-cp's order, each fetched
    /// with `GET <path>` without the scrape's query and with the scraper's Prometheus
    /// headers; one that is down, answers 500 or is too slow is left out and the scrape
    /// still answers 200; the best format seen (OpenMetrics 1.0.0 here) is the answer's,
    /// with one `# EOF` at the end.
    #[tokio::test]
    async fn the_scrape_merges_the_applications_as_kuma_dp() {
        let proxy = Proxy::new(Workers::start(1, false).unwrap());
        let none = std::time::Duration::ZERO;
        let (text_port, mut text_requests) = app(
            "200 OK",
            Some("text/plain; version=0.0.4"),
            "# TYPE app_one gauge\napp_one 1\n\n\n",
            none,
        )
        .await;
        let (om_port, _) = app(
            "200 OK",
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            "# TYPE app_two counter\napp_two_total 2\n# EOF\n",
            none,
        )
        .await;
        let (failing_port, _) = app("500 Internal Server Error", None, "boom", none).await;
        let (slow_port, _) = app(
            "200 OK",
            Some("text/plain"),
            "app_slow 3\n",
            std::time::Duration::from_secs(5),
        )
        .await;
        let dead_port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let role = metrics_role(vec![
            application("one", text_port, "/stats/one"),
            application("dead", dead_port, "/metrics"),
            application("two", om_port, "metrics"),
            application("failing", failing_port, "/metrics"),
            application("slow", slow_port, "/metrics"),
        ]);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
        );
        headers.insert(
            "x-prometheus-scrape-timeout-seconds",
            HeaderValue::from_static("1"),
        );
        headers.insert(header::COOKIE, HeaderValue::from_static("not=passed"));
        let started = std::time::Instant::now();
        let (status, content_type, text) =
            body(answer(&proxy, &role, "/metrics", &headers).await).await;
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            content_type,
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        assert!(
            text.starts_with(
                "# TYPE app_one gauge\napp_one 1\n# TYPE app_two counter\napp_two_total 2\n# "
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE bearing_"), "{text}");
        assert!(
            text.ends_with("\n# EOF\n") && text.matches("# EOF").count() == 1,
            "{text}"
        );
        assert!(
            !text.contains("\n\n") && !text.contains("boom") && !text.contains("app_slow"),
            "{text}"
        );

        let request = text_requests.recv().await.unwrap().to_ascii_lowercase();
        assert!(
            request.starts_with("get /stats/one http/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains(&format!("host: 127.0.0.1:{text_port}\r\n")),
            "{request}"
        );
        assert!(
            request.contains(
                "accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n"
            ),
            "{request}"
        );
        assert!(
            request.contains("x-prometheus-scrape-timeout-seconds: 1\r\n"),
            "{request}"
        );
        assert!(!request.contains("cookie"), "{request}");
    }

    /// A config with these endpoints (and transparent proxying when `redirected`).
    fn config(endpoints: KumaEndpoints, redirected: bool) -> ProxyConfig {
        ProxyConfig {
            version: "1".into(),
            source: "test".into(),
            identity: bearing_proxy_config::ProxyIdentity {
                name: "web".into(),
                mesh: "default".into(),
                proxy_type: "dataplane".into(),
                admin_port: None,
            },
            listeners: Vec::new(),
            clusters: Default::default(),
            transparent_proxy: redirected.then_some(bearing_proxy_config::TransparentProxy {
                outbound_port: 15001,
                inbound_port: 15006,
                ipv6: false,
                outbound_passthrough: true,
                outbound_access_logs: Vec::new(),
                inbound_access_logs: Vec::new(),
            }),
            dns: Vec::new(),
            mtls: Default::default(),
            kuma_endpoints: endpoints,
        }
    }

    #[test]
    fn wanted_addresses_follow_the_config() {
        let applications = vec![application("app", 9090, "/metrics")];
        let own = SourcePrefix {
            address: "10.0.0.1".parse().unwrap(),
            len: 32,
        };
        let endpoints = KumaEndpoints {
            ready: Some("10.0.0.1:9901".parse().unwrap()),
            readiness_reporter: Some("127.0.0.1:9902".parse().unwrap()),
            prometheus: Some(PrometheusEndpoint {
                address: "10.0.0.1:5670".parse().unwrap(),
                path: "/metrics".into(),
                applications: applications.clone(),
                tls: Some(MetricsTls::Mesh("default".into())),
                plaintext_sources: vec![own],
            }),
        };
        let wanted = wanted(&config(endpoints, true));
        assert_eq!(wanted.len(), 3);
        assert_eq!(wanted[&"127.0.0.1:9902".parse().unwrap()], Role::Ready);
        assert_eq!(
            wanted[&"10.0.0.1:5670".parse().unwrap()],
            Role::Metrics(Box::new(Scrape {
                path: "/metrics".into(),
                applications,
                transparent_proxy: true,
                tls: Some(MetricsTls::Mesh("default".into())),
                mesh: None,
                plaintext_sources: vec![own],
            }))
        );
        assert!(super::wanted(&config(KumaEndpoints::default(), false)).is_empty());
    }

    /// TLS that cannot be set up says why: the files that cannot be read, the mesh the
    /// config has no settings of.
    #[test]
    fn metrics_tls_failures_name_the_cause() {
        let files = MetricsTls::Files {
            cert_path: "/nonexistent/metrics.crt".into(),
            key_path: "/nonexistent/metrics.key".into(),
        };
        let e = metrics_acceptor(&files, None).err().unwrap();
        assert!(e.contains("/nonexistent/metrics.crt"), "{e}");
        let e = metrics_acceptor(&MetricsTls::Mesh("demo".into()), None)
            .err()
            .unwrap();
        assert!(e.contains("\"demo\""), "{e}");
    }

    /// With TLS from files, a scraper of a plaintext source gets plaintext HTTP and every
    /// other one a TLS handshake (a plaintext request there gets no HTTP answer).
    #[tokio::test]
    async fn metrics_tls_spares_the_plaintext_sources() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["metrics.local".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (dir.path().join("m.crt"), dir.path().join("m.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let role = Role::Metrics(Box::new(Scrape {
            tls: Some(MetricsTls::Files {
                cert_path: cert_path.display().to_string(),
                key_path: key_path.display().to_string(),
            }),
            plaintext_sources: vec![SourcePrefix {
                address: "127.0.0.2".parse().unwrap(),
                len: 32,
            }],
            ..scrape(Vec::new())
        }));
        let active = Arc::new(ArcSwap::from_pointee(Active::new(role)));
        assert!(active.load().tls.as_ref().unwrap().acceptor.is_ok());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let proxy = Arc::new(Proxy::new(Workers::start(1, false).unwrap()));
        tokio::spawn(serve_http_over(
            listener,
            "test",
            transport(active.clone()),
            router(proxy, active),
        ));
        let get = |source: &'static str| async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
            let mut stream = socket.connect(address).await.unwrap();
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                stream.read_to_end(&mut answer),
            )
            .await;
            String::from_utf8_lossy(&answer).into_owned()
        };
        assert!(get("127.0.0.2").await.starts_with("HTTP/1.1 200 OK"));
        assert!(!get("127.0.0.1").await.starts_with("HTTP/1.1"));
    }
}

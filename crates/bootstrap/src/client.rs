//! `POST <cp>/bootstrap` as kuma-dp does it (`app/kuma-dp/pkg/dataplane/envoy/remote_bootstrap.go`):
//! retried every 3 s for up to 5 minutes, except for a request the CP refuses as invalid.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::request::{ProxyIdentity, TokenSource};
use crate::response::{parse_response, CpBootstrap};
use crate::tls::{ConnectError, CpTls, CpTrust};

/// ALPN of the bootstrap request (kuma-cp serves HTTP/1.1 and gRPC on one port).
const HTTP1_ALPN: &[u8] = b"\x08http/1.1";
/// ALPN of the ADS stream (gRPC).
pub const H2_ALPN: &[u8] = b"\x02h2";
/// Largest bootstrap answer read (kuma-cp's are a few kB).
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// The control plane's address (`--cp-address`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpAddress {
    /// As given, for messages.
    pub url: String,
    /// `https` (else `http`).
    pub tls: bool,
    /// Host (a name or an IP, without brackets).
    pub host: String,
    /// Port (default 443 / 80 as in a URL).
    pub port: u16,
}

impl CpAddress {
    /// Parses `http(s)://host[:port][/path]` (the path is replaced by `/bootstrap`).
    pub fn parse(text: &str) -> Result<CpAddress, String> {
        let bad = |why: &str| format!("--cp-address {text:?}: {why}");
        let uri: http::Uri = text.parse().map_err(|e| bad(&format!("not a URL: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(other) => {
                return Err(bad(&format!(
                    "unsupported URL scheme {other:?}, must be http or https"
                )))
            }
            None => return Err(bad("must be http(s)://host:port")),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(CpAddress {
            url: text.to_string(),
            tls,
            host,
            port,
        })
    }

    /// The `Host` header value.
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// How the bootstrap request is retried (kuma-dp: `KUMA_CONTROL_PLANE_RETRY_BACKOFF`, 3 s;
/// `..._MAX_DURATION`, 5 min; a 10 s timeout per request).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Wait between attempts.
    pub interval: Duration,
    /// No attempt starts after this much time (go-retry's `WithMaxDuration`).
    pub max: Duration,
    /// Timeout of one attempt.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            interval: Duration::from_secs(3),
            max: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the bootstrap failed; each names the CP address.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// TCP or TLS to the CP.
    #[error("control plane {cp}: {source}")]
    Connect {
        /// The CP address.
        cp: String,
        /// What failed.
        source: ConnectError,
    },
    /// The token file could not be read.
    #[error("control plane {cp}: {detail}")]
    Token {
        /// The CP address.
        cp: String,
        /// What failed.
        detail: String,
    },
    /// The HTTP exchange failed or timed out.
    #[error("control plane {cp}: the bootstrap request failed: {detail}")]
    Http {
        /// The CP address.
        cp: String,
        /// What failed.
        detail: String,
    },
    /// 404 with an empty body: the CP has no such Dataplane (yet). Retried.
    #[error("control plane {cp}: Dataplane entity not found. On Universal, create the Dataplane on kuma-cp before starting the proxy, or pass it with --dataplane-file; on Kubernetes, check the kuma-cp logs for why the sidecar injection did not create it")]
    DataplaneNotFound {
        /// The CP address.
        cp: String,
    },
    /// 404 `404: Page Not Found`: not kuma-cp's DP server port.
    #[error("control plane {cp}: there is no /bootstrap endpoint at this address; give the DP server port of kuma-cp (5678 by default), not its HTTP API (5681 by default)")]
    WrongPort {
        /// The CP address.
        cp: String,
    },
    /// A 4xx the CP means (422 token / validation, 400 SAN mismatch or bad CA): not retried.
    #[error("control plane {cp} refused the bootstrap request ({status}{hint}): {body}")]
    Refused {
        /// The CP address.
        cp: String,
        /// The status.
        status: u16,
        /// What the status means at kuma-cp.
        hint: &'static str,
        /// The CP's text.
        body: String,
    },
    /// Another status (5xx). Retried.
    #[error("control plane {cp}: unexpected status {status}: {body}")]
    Status {
        /// The CP address.
        cp: String,
        /// The status.
        status: u16,
        /// The CP's text.
        body: String,
    },
    /// A 200 whose body is not a usable bootstrap.
    #[error("control plane {cp}: {detail}")]
    Answer {
        /// The CP address.
        cp: String,
        /// What is wrong.
        detail: String,
    },
    /// Retries exhausted.
    #[error("gave up after {tries} attempts in {elapsed:?}; last error: {last}")]
    GaveUp {
        /// Attempts made.
        tries: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last error.
        last: Box<BootstrapError>,
    },
}

impl BootstrapError {
    /// Whether kuma-dp retries it: everything but a request the CP refused as invalid (and
    /// an answer that cannot be used, which a retry would not change).
    pub fn retryable(&self) -> bool {
        !matches!(
            self,
            BootstrapError::Refused { .. }
                | BootstrapError::Answer { .. }
                | BootstrapError::GaveUp { .. }
        )
    }
}

/// A successful bootstrap: the CP's answer and what the ADS client needs to reach the CP the
/// same way (its address, its trust, the token).
#[derive(Debug, Clone)]
pub struct Bootstrapped {
    /// The parsed answer.
    pub config: CpBootstrap,
    /// The CP address the bootstrap went to.
    pub cp: CpAddress,
    /// How the CP's certificate is verified.
    pub trust: CpTrust,
    /// The dataplane token, re-read for each ADS stream.
    pub tokens: TokenSource,
}

impl Bootstrapped {
    /// The TLS client for the ADS stream (ALPN h2, the same trust as the bootstrap); `None`
    /// when the bootstrap's ADS server is plaintext. Connect with
    /// `tls.connect(&config.ads.host, config.ads.port)`; for tonic, wrap that stream in
    /// `hyper_util::rt::TokioIo` inside the `tower::service_fn` given to
    /// `Endpoint::connect_with_connector`.
    pub fn ads_tls(&self) -> Result<Option<CpTls>, String> {
        match self.config.ads.tls {
            None => Ok(None),
            Some(_) => CpTls::new(self.trust.clone(), H2_ALPN).map(Some),
        }
    }
}

/// Performs kuma-dp's bootstrap against one CP.
#[derive(Debug, Clone)]
pub struct BootstrapClient {
    cp: CpAddress,
    trust: CpTrust,
    tls: Option<CpTls>,
    identity: ProxyIdentity,
    tokens: TokenSource,
    retry: RetryPolicy,
}

impl BootstrapClient {
    /// A client for `cp` verified with `trust`, telling the CP `identity`.
    pub fn new(
        cp: CpAddress,
        trust: CpTrust,
        identity: ProxyIdentity,
        tokens: TokenSource,
        retry: RetryPolicy,
    ) -> Result<BootstrapClient, String> {
        let tls = if cp.tls {
            Some(CpTls::new(trust.clone(), HTTP1_ALPN)?)
        } else {
            None
        };
        Ok(BootstrapClient {
            cp,
            trust,
            tls,
            identity,
            tokens,
            retry,
        })
    }

    /// Fetches the bootstrap, retrying as kuma-dp does; `on_retry` hears each failed attempt
    /// that will be retried, with the wait before the next.
    pub async fn fetch(
        &self,
        mut on_retry: impl FnMut(&BootstrapError, Duration),
    ) -> Result<Bootstrapped, BootstrapError> {
        let start = tokio::time::Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            let error = match self.attempt().await {
                Ok(config) => {
                    return Ok(Bootstrapped {
                        config,
                        cp: self.cp.clone(),
                        trust: self.trust.clone(),
                        tokens: self.tokens.clone(),
                    })
                }
                Err(e) => e,
            };
            if !error.retryable() {
                return Err(error);
            }
            if start.elapsed() + self.retry.interval > self.retry.max {
                return Err(BootstrapError::GaveUp {
                    tries,
                    elapsed: start.elapsed(),
                    last: Box::new(error),
                });
            }
            on_retry(&error, self.retry.interval);
            tokio::time::sleep(self.retry.interval).await;
        }
    }

    /// One request, with its timeout.
    async fn attempt(&self) -> Result<CpBootstrap, BootstrapError> {
        let cp = || self.cp.url.clone();
        let token = self
            .tokens
            .read()
            .map_err(|detail| BootstrapError::Token { cp: cp(), detail })?;
        let body = self.identity.request(token, &self.tokens).to_json();
        let exchange = async {
            match &self.tls {
                Some(tls) => {
                    let stream = tls
                        .connect(&self.cp.host, self.cp.port)
                        .await
                        .map_err(|source| BootstrapError::Connect { cp: cp(), source })?;
                    self.post(stream, body).await
                }
                None => {
                    let stream =
                        tokio::net::TcpStream::connect((self.cp.host.as_str(), self.cp.port))
                            .await
                            .map_err(|source| BootstrapError::Connect {
                                cp: cp(),
                                source: ConnectError::Tcp {
                                    address: self.cp.authority(),
                                    source,
                                },
                            })?;
                    self.post(stream, body).await
                }
            }
        };
        match tokio::time::timeout(self.retry.request_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(BootstrapError::Http {
                cp: cp(),
                detail: format!("no answer within {:?}", self.retry.request_timeout),
            }),
        }
    }

    /// `POST /bootstrap` over `stream`; classifies the answer as kuma-dp does.
    async fn post<S>(&self, stream: S, body: Vec<u8>) -> Result<CpBootstrap, BootstrapError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let cp = || self.cp.url.clone();
        let http_error = |detail: String| BootstrapError::Http { cp: cp(), detail };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http_error(e.to_string()))?;
        let driver = tokio::spawn(connection);
        let request = http::Request::post("/bootstrap")
            .header(http::header::HOST, self.cp.authority())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| http_error(e.to_string()))?;
        let answer = sender.send_request(request).await;
        let result = match answer {
            Ok(response) => self.classify(response).await,
            Err(e) => Err(http_error(e.to_string())),
        };
        driver.abort();
        result
    }

    async fn classify(
        &self,
        response: http::Response<Incoming>,
    ) -> Result<CpBootstrap, BootstrapError> {
        let cp = self.cp.url.clone();
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| BootstrapError::Http {
                cp: cp.clone(),
                detail: format!("cannot read the answer (status {status}): {e}"),
            })?
            .to_bytes();
        if status == 200 {
            return parse_response(&body).map_err(|detail| BootstrapError::Answer { cp, detail });
        }
        let text = String::from_utf8_lossy(&body).trim().to_string();
        Err(match status {
            404 if body.is_empty() => BootstrapError::DataplaneNotFound { cp },
            404 if text == "404: Page Not Found" => BootstrapError::WrongPort { cp },
            400..=499 => BootstrapError::Refused {
                cp,
                status,
                hint: match status {
                    422 => ": dataplane token missing or invalid, or the resource does not validate",
                    400 => ": the CP address is not among the SANs of the CP's certificate, or the CA given is not a CA",
                    401 | 403 => ": not authorized",
                    _ => "",
                },
                body: text,
            },
            _ => BootstrapError::Status { cp, status, body: text },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::tests::{acceptor, kuma_cp_default_cert, TestCert};
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::net::TcpListener;

    /// What the test server answers to the n-th request: (status, body).
    type Script = Arc<dyn Fn(usize) -> (u16, Vec<u8>) + Send + Sync>;

    /// The requests a test server saw: (method, path, accept, content-type, body).
    type Seen = Arc<Mutex<Vec<(String, String, String, String, serde_json::Value)>>>;

    /// A hyper server on 127.0.0.1 (over BoringSSL with `cert`, else plaintext) answering by
    /// `script`.
    async fn server(cert: Option<&TestCert>, script: Script) -> (u16, Seen) {
        let acceptor = cert.map(acceptor);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Seen = Arc::default();
        let count = Arc::new(AtomicUsize::new(0));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (script, seen, count) = (script.clone(), seen2.clone(), count.clone());
                let Some(acceptor) = &acceptor else {
                    tokio::spawn(answer(tcp, script, seen, count));
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(stream) = tokio_boring::accept(&acceptor, tcp).await {
                        answer(stream, script, seen, count).await;
                    }
                });
            }
        });
        (port, seen)
    }

    /// Serves HTTP/1.1 on `io`, recording each request and answering by `script`.
    async fn answer<S>(io: S, script: Script, seen: Seen, count: Arc<AtomicUsize>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let (script, seen, count) = (script.clone(), seen.clone(), count.clone());
            async move {
                let header = |n: &str| {
                    req.headers()
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                let (method, path) = (req.method().to_string(), req.uri().path().to_string());
                let (accept, ctype) = (header("accept"), header("content-type"));
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let json = serde_json::from_slice(&body).unwrap_or_default();
                seen.lock()
                    .unwrap()
                    .push((method, path, accept, ctype, json));
                let (status, body) = script(count.fetch_add(1, Ordering::SeqCst));
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from(body)))
                        .unwrap(),
                )
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), service)
            .await;
    }

    fn identity() -> ProxyIdentity {
        ProxyIdentity {
            mesh: "default".into(),
            name: "dp-1".into(),
            proxy_type: "dataplane".into(),
            resource: Some(r#"{"type":"Dataplane","mesh":"default","name":"dp-1"}"#.into()),
            ca_cert: String::new(),
            dynamic_metadata: BTreeMap::new(),
            dns_port: 15054,
            readiness_port: 9902,
            workdir: "/tmp".into(),
            metrics: Default::default(),
            system_ca_path: String::new(),
            ipv6_enabled: false,
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            interval: Duration::from_millis(20),
            max: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }

    /// One attempt only: the first retry would start after the max duration.
    fn one_attempt() -> RetryPolicy {
        RetryPolicy {
            max: Duration::from_millis(10),
            ..fast()
        }
    }

    /// The error of a client's fetch.
    async fn error_of(client: BootstrapClient) -> String {
        match client.fetch(|_, _| {}).await {
            Ok(_) => panic!("the bootstrap succeeded"),
            Err(e) => e.to_string(),
        }
    }

    fn client(cert: &TestCert, port: u16, host: &str, retry: RetryPolicy) -> BootstrapClient {
        let cp = CpAddress::parse(&format!("https://{host}:{port}/some/path")).unwrap();
        let trust = CpTrust::from_pem(&cert.cert_pem, "--ca-cert-file ca.pem").unwrap();
        let tokens = TokenSource {
            file: None,
            inline: Some(" the-token\n".into()),
        };
        BootstrapClient::new(cp, trust, identity(), tokens, retry).unwrap()
    }

    fn ok_answer() -> Vec<u8> {
        let yaml = crate::tests::corpus("bootstrap/generator.default-config.golden.yaml");
        serde_json::json!({
            "bootstrap": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, yaml),
            "kumaSidecarConfiguration": {"networking": {"address": "10.0.0.1"}, "metrics": {"aggregate": []}}
        })
        .to_string()
        .into_bytes()
    }

    async fn fetch_once(status: u16, body: &[u8]) -> (BootstrapError, usize) {
        let cert = kuma_cp_default_cert(&["localhost"]);
        let body = body.to_vec();
        let (port, _) = server(Some(&cert), Arc::new(move |_| (status, body.clone()))).await;
        let mut retries = 0;
        let err = client(&cert, port, "localhost", one_attempt())
            .fetch(|_, _| retries += 1)
            .await
            .unwrap_err();
        (err, retries)
    }

    /// The request kuma-dp sends, with the self-signed kuma-cp certificate pinned as the CA, and
    /// the answer parsed.
    #[tokio::test]
    async fn bootstraps_over_tls_with_the_pinned_kuma_cp_cert() {
        let cert = kuma_cp_default_cert(&["localhost"]);
        let (port, seen) = server(Some(&cert), Arc::new(|_| (200, ok_answer()))).await;
        let done = client(&cert, port, "localhost", fast())
            .fetch(|_, _| {})
            .await
            .unwrap();
        assert_eq!(done.config.node.id, "mesh.name.namespace");
        assert_eq!(done.config.sidecar.networking.address, "10.0.0.1");
        assert!(done.ads_tls().unwrap().is_some());
        let seen = seen.lock().unwrap();
        let (method, path, accept, ctype, body) = &seen[0];
        assert_eq!((method.as_str(), path.as_str()), ("POST", "/bootstrap"));
        assert_eq!(
            (accept.as_str(), ctype.as_str()),
            ("application/json", "application/json")
        );
        assert_eq!(body["dataplaneToken"], "the-token");
        assert_eq!(body["name"], "dp-1");
        assert_eq!(
            body["features"],
            serde_json::json!(["feature-strict-inbound-ports"])
        );
    }

    /// 404 with an empty body (Dataplane not created yet) is retried until the 200.
    #[tokio::test]
    async fn dataplane_not_found_is_retried_until_found() {
        let cert = kuma_cp_default_cert(&["localhost"]);
        let script: Script = Arc::new(|n| {
            if n < 2 {
                (404, Vec::new())
            } else {
                (200, ok_answer())
            }
        });
        let (port, seen) = server(Some(&cert), script).await;
        let mut reasons = Vec::new();
        let done = client(&cert, port, "localhost", fast())
            .fetch(|e, wait| reasons.push((e.to_string(), wait)))
            .await
            .unwrap();
        assert_eq!(done.config.node.id, "mesh.name.namespace");
        assert_eq!(seen.lock().unwrap().len(), 3);
        assert_eq!(reasons.len(), 2);
        assert!(
            reasons[0].0.contains("Dataplane entity not found"),
            "{}",
            reasons[0].0
        );
        assert!(
            reasons[0].0.contains(&format!("127.0.0.1:{port}"))
                || reasons[0].0.contains(&format!("localhost:{port}"))
        );
    }

    #[tokio::test]
    async fn retries_stop_at_the_max_duration() {
        let (err, retries) = fetch_once(404, b"").await;
        assert!(
            matches!(&err, BootstrapError::GaveUp { last, .. } if matches!(**last, BootstrapError::DataplaneNotFound { .. })),
            "{err}"
        );
        assert_eq!(retries, 0);
    }

    #[tokio::test]
    async fn token_required_is_refused_with_the_cps_text() {
        let (err, retries) = fetch_once(
            422,
            b"Dataplane Token is required. Provide token on the Dataplane side.",
        )
        .await;
        let text = err.to_string();
        assert!(
            matches!(err, BootstrapError::Refused { status: 422, .. }),
            "{text}"
        );
        assert!(text.contains("Dataplane Token is required"), "{text}");
        assert!(text.contains("token missing or invalid"), "{text}");
        assert!(text.contains("https://localhost:"), "{text}");
        assert_eq!(retries, 0, "an invalid request is not retried");
    }

    #[tokio::test]
    async fn san_mismatch_is_refused_with_the_cps_text() {
        let (err, _) = fetch_once(400, b"A data plane proxy is trying to connect to the control plane using \"10.0.0.9\" address, but the certificate in the control plane has the following SANs [\"localhost\"].").await;
        let text = err.to_string();
        assert!(
            text.contains("(400: the CP address is not among the SANs"),
            "{text}"
        );
        assert!(text.contains("\"10.0.0.9\" address"), "{text}");
    }

    #[tokio::test]
    async fn wrong_port_is_named() {
        let (err, _) = fetch_once(404, b"404: Page Not Found").await;
        let text = err.to_string();
        assert!(text.contains("DP server port of kuma-cp (5678"), "{text}");
        assert!(err.retryable() || matches!(err, BootstrapError::GaveUp { .. }));
    }

    #[tokio::test]
    async fn server_errors_are_retried_and_named() {
        let (err, _) = fetch_once(500, b"boom").await;
        let text = err.to_string();
        assert!(text.contains("unexpected status 500: boom"), "{text}");
        assert!(matches!(err, BootstrapError::GaveUp { .. }), "{text}");
    }

    #[tokio::test]
    async fn connection_refused_names_the_address() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cert = kuma_cp_default_cert(&["localhost"]);
        let text = error_of(client(&cert, port, "127.0.0.1", one_attempt())).await;
        assert!(
            text.contains(&format!("cannot connect to 127.0.0.1:{port}")),
            "{text}"
        );
        assert!(text.to_lowercase().contains("refused"), "{text}");
    }

    /// A CP whose certificate is not signed by the CA given: a TLS error naming the cause and
    /// the CA used.
    #[tokio::test]
    async fn untrusted_ca_is_a_tls_error() {
        let cert = kuma_cp_default_cert(&["localhost"]);
        let (port, seen) = server(Some(&cert), Arc::new(|_| (200, ok_answer()))).await;
        let other = kuma_cp_default_cert(&["localhost"]);
        let text = error_of(client(&other, port, "localhost", one_attempt())).await;
        assert!(text.contains("TLS with localhost:"), "{text}");
        assert!(text.contains("not trusted"), "{text}");
        assert!(text.contains("--ca-cert-file ca.pem"), "{text}");
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn unusable_answer_is_not_retried() {
        let (err, retries) = fetch_once(200, b"{\"bootstrap\": \"bm9kZTogMQ==\"}").await;
        assert!(matches!(err, BootstrapError::Answer { .. }), "{err}");
        assert!(err.to_string().contains("bootstrap:"), "{err}");
        assert_eq!(retries, 0);
    }

    /// `http://`: the same exchange in plaintext.
    #[tokio::test]
    async fn bootstraps_over_plain_http() {
        let (port, seen) = server(None, Arc::new(|_| (200, ok_answer()))).await;
        let cp = CpAddress::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let client = BootstrapClient::new(
            cp,
            CpTrust::System,
            identity(),
            TokenSource::default(),
            fast(),
        )
        .unwrap();
        let done = client.fetch(|_, _| {}).await.unwrap();
        assert_eq!(done.config.node.id, "mesh.name.namespace");
        assert_eq!(seen.lock().unwrap()[0].1, "/bootstrap");
    }

    #[test]
    fn cp_addresses() {
        let a = CpAddress::parse("https://kuma-cp:5678").unwrap();
        assert_eq!((a.tls, a.host.as_str(), a.port), (true, "kuma-cp", 5678));
        let a = CpAddress::parse("http://[fd00::1]:5681/x").unwrap();
        assert_eq!(
            (a.tls, a.host.as_str(), a.port, a.authority().as_str()),
            (false, "fd00::1", 5681, "[fd00::1]:5681")
        );
        assert_eq!(CpAddress::parse("https://cp").unwrap().port, 443);
        assert!(CpAddress::parse("grpcs://cp:5678")
            .unwrap_err()
            .contains("unsupported URL scheme"));
        assert!(CpAddress::parse("kuma-cp:5678").is_err());
    }
}

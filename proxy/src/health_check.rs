//! Envoy's active health checking: one checker task per (cluster, endpoint) probes the
//! endpoint on its own schedule (HTTP, TCP or gRPC, `health_grpc`), and the verdicts move its
//! [`HostHealth`](crate::health::HostHealth) as Envoy's `ActiveHealthCheckSession` does:
//!
//! - a new host of a checked cluster is unhealthy until checked; its first passing check
//!   makes it healthy at once, later ones after `healthy_threshold` successes in a row;
//! - network failures and timeouts (and retriable HTTP statuses) make a healthy host
//!   unhealthy after `unhealthy_threshold` in a row; any other unexpected HTTP status at once;
//! - the next probe comes after `interval` (healthy verdict), `unhealthy_interval` (failed),
//!   or their edge intervals while a change is pending; until the cluster has opened a
//!   connection for traffic, after `no_traffic_interval` (`no_traffic_healthy_interval`
//!   after a pass that leaves no change pending); plus the jitters. The first probe comes after `initial_jitter`.
//! - A probe's connection is kept for the next one (`reuse_connection`, the default) unless
//!   the peer closes it or the network failed; a connect-only TCP probe closes it.
//!
//! Probe connections use the endpoint's transport (the cluster's TLS or its matched one) but
//! are not traffic: they count in no traffic metric and take no circuit-breaker unit.
//! [`HealthWatch`] keeps the checkers (and each cluster's outlier sweep) across config
//! applies: a cluster whose health settings are unchanged keeps them, pointed at its new
//! runtime; an endpoint gone stops its checker. A check with an event log writes what its
//! verdicts do (`health_events`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bearing_proxy_config::{EndpointHealth, HealthCheck, HttpProbe, Probe, TcpProbe};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::access_log::LogFiles;
use crate::health_events::{EventLogger, Host};
use crate::health_grpc::grpc_probe;
use crate::stats::Stats;
use crate::upstream::{ClusterRuntime, EndpointPool, UpstreamStream};

/// Envoy's `cluster.<name>.health_check.*` counters.
#[derive(Clone, Debug, Default)]
pub struct HealthCheckStats {
    /// Probes started (`attempt`).
    pub attempt: Counter,
    /// Probes passed (`success`).
    pub success: Counter,
    /// Probes failed (`failure`).
    pub failure: Counter,
    /// Probes failed by the network or a timeout (`network_failure`).
    pub network_failure: Counter,
}

/// One probe's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Passed.
    Healthy,
    /// The host answered, wrongly: unhealthy at once unless `retriable`; `status` is the
    /// HTTP status of an HTTP check's answer (0 for others), as Envoy's events report it.
    Active { retriable: bool, status: u16 },
    /// Connect failure, reset, or the peer closing before the answer.
    Network,
    /// No answer within the check's timeout (counted as a network failure).
    Timeout,
}

/// Whether a verdict changed the host's health (Envoy's `HealthTransition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The host's health is as it was.
    Unchanged,
    /// The host became healthy or unhealthy (or got its first verdict).
    Changed,
    /// A threshold is being counted towards a change.
    ChangePending,
}

/// One host's run of verdicts (Envoy's session counters).
#[derive(Debug, Default)]
pub struct Session {
    healthy_run: u32,
    unhealthy_run: u32,
}

impl Session {
    /// Applies `verdict` to `host` under `check`: the transition.
    pub fn record(
        &mut self,
        verdict: Verdict,
        host: &crate::health::HostHealth,
        check: &HealthCheck,
    ) -> Transition {
        let first = host.is_pending();
        let mut t = Transition::Unchanged;
        if verdict == Verdict::Healthy {
            self.unhealthy_run = 0;
            if host.failed_active() {
                self.healthy_run += 1;
                if first || self.healthy_run == check.healthy_threshold {
                    host.set_active(true);
                    t = Transition::Changed;
                } else {
                    t = Transition::ChangePending;
                }
            }
        } else {
            self.healthy_run = 0;
            if !host.failed_active() {
                let counted = matches!(
                    verdict,
                    Verdict::Network
                        | Verdict::Timeout
                        | Verdict::Active {
                            retriable: true,
                            ..
                        }
                );
                self.unhealthy_run += 1;
                if !counted || self.unhealthy_run == check.unhealthy_threshold {
                    host.set_active(false);
                    t = Transition::Changed;
                } else {
                    t = Transition::ChangePending;
                }
            }
        }
        if host.is_pending() {
            // Checked now, whatever the verdict (Envoy's `clearPendingFlag`).
            host.set_active(!host.failed_active());
            t = Transition::Changed;
        }
        t
    }
}

/// The wait before the next probe (Envoy's `HealthCheckerImplBase::interval`), without jitter.
pub fn next_interval(
    check: &HealthCheck,
    verdict: Verdict,
    transition: Transition,
    had_traffic: bool,
) -> Duration {
    let pending = transition == Transition::ChangePending;
    match (had_traffic, verdict == Verdict::Healthy, pending) {
        (false, true, false) => check.no_traffic_healthy_interval,
        (false, _, _) => check.no_traffic_interval,
        (true, true, true) => check.healthy_edge_interval,
        (true, true, false) => check.interval,
        (true, false, true) => check.unhealthy_edge_interval,
        (true, false, false) => check.unhealthy_interval,
    }
}

/// `base` plus Envoy's jitters: up to `interval_jitter_percent` of it and up to
/// `interval_jitter`, at least 1 ms.
fn with_jitter(base: Duration, check: &HealthCheck) -> Duration {
    let ms = base.as_millis() as u64;
    let mut total = ms;
    let percent = u64::from(check.interval_jitter_percent) * ms / 100;
    if percent > 0 {
        total += rand::random::<u64>() % percent;
    }
    let jitter = check.interval_jitter.as_millis() as u64;
    if jitter > 0 {
        total += rand::random::<u64>() % jitter;
    }
    Duration::from_millis(total.max(1))
}

/// A connection kept from one probe to the next.
pub(crate) enum Kept {
    Http(HttpSender),
    Tcp(UpstreamStream),
    Grpc(http2::SendRequest<http_body_util::Full<Bytes>>),
}

/// An HTTP probe's connection.
pub(crate) enum HttpSender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

/// Runs one HTTP probe on `kept` (or a new connection): the verdict, and the connection to
/// keep.
async fn http_probe(
    cluster: &ClusterRuntime,
    pool: &EndpointPool,
    probe: &HttpProbe,
    kept: Option<Kept>,
) -> (Verdict, Option<Kept>) {
    let mut sender = match kept {
        Some(Kept::Http(sender)) => sender,
        _ => {
            let Ok(stream) = cluster.connect_probe(pool).await else {
                return (Verdict::Network, None);
            };
            let io = TokioIo::new(stream);
            let address = pool.address();
            if probe.http2 {
                let Ok((s, conn)) = http2::handshake(TokioExecutor::new(), io).await else {
                    return (Verdict::Network, None);
                };
                spawn_connection(conn, address);
                HttpSender::H2(s)
            } else {
                let Ok((s, conn)) = http1::handshake(io).await else {
                    return (Verdict::Network, None);
                };
                spawn_connection(conn, address);
                HttpSender::H1(s)
            }
        }
    };
    let request = match probe_request(probe) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(cluster = %cluster.config.name, "health check request: {e}");
            return (Verdict::Network, None);
        }
    };
    let sent = match &mut sender {
        HttpSender::H1(s) => match s.ready().await {
            Ok(()) => s.send_request(request).await,
            Err(e) => Err(e),
        },
        HttpSender::H2(s) => match s.ready().await {
            Ok(()) => s.send_request(request).await,
            Err(e) => Err(e),
        },
    };
    let Ok(response) = sent else {
        return (Verdict::Network, None);
    };
    let status = response.status().as_u16();
    let closes = response
        .headers()
        .get(hyper::header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    if response.into_body().collect().await.is_err() {
        return (Verdict::Network, None);
    }
    let within = |ranges: &[(u16, u16)]| ranges.iter().any(|(s, e)| (*s..*e).contains(&status));
    let verdict = if within(&probe.expected_statuses) {
        Verdict::Healthy
    } else {
        Verdict::Active {
            retriable: within(&probe.retriable_statuses),
            status,
        }
    };
    (verdict, (!closes).then_some(Kept::Http(sender)))
}

/// Runs a probe connection's driver until it ends.
pub(crate) fn spawn_connection<C>(conn: C, address: std::net::SocketAddr)
where
    C: std::future::Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(endpoint = %address, "health check connection ended: {e}");
        }
    });
}

/// The probe's GET request: its path, Host and headers, Envoy's `user-agent: Envoy/HC`.
fn probe_request(probe: &HttpProbe) -> Result<hyper::Request<Empty<Bytes>>, hyper::http::Error> {
    let mut request = hyper::Request::get(probe.path.as_str())
        .header(hyper::header::HOST, probe.host.as_str())
        .header(hyper::header::USER_AGENT, "Envoy/HC")
        .body(Empty::new())?;
    let headers = request.headers_mut();
    for h in &probe.headers {
        let name = hyper::header::HeaderName::from_bytes(h.name.as_bytes())?;
        let value = hyper::header::HeaderValue::from_str(&h.value)?;
        match h.replace {
            true => drop(headers.insert(name, value)),
            false => {
                headers.append(name, value);
            }
        }
    }
    for name in &probe.remove_headers {
        headers.remove(name.as_str());
    }
    if probe.http2 {
        *request.version_mut() = hyper::Version::HTTP_2;
        let authority = hyper::http::uri::Authority::try_from(probe.host.as_str())?;
        let uri = hyper::Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(probe.path.as_str())
            .build()?;
        *request.uri_mut() = uri;
        request.headers_mut().remove(hyper::header::HOST);
    }
    Ok(request)
}

/// Runs one TCP probe: writes `send`, then reads until every `receive` block was found in
/// order.
async fn tcp_probe(
    cluster: &ClusterRuntime,
    pool: &EndpointPool,
    probe: &TcpProbe,
    kept: Option<Kept>,
) -> (Verdict, Option<Kept>) {
    let mut stream = match kept {
        Some(Kept::Tcp(s)) => s,
        _ => match cluster.connect_probe(pool).await {
            Ok(s) => s,
            Err(_) => return (Verdict::Network, None),
        },
    };
    if probe.send.is_empty() && probe.receive.is_empty() {
        // Connect-only: the connection answered the probe.
        return (Verdict::Healthy, None);
    }
    if !probe.send.is_empty() && stream.write_all(&probe.send).await.is_err() {
        return (Verdict::Network, None);
    }
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !receives(&buffer, &probe.receive) {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return (Verdict::Network, None),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    (Verdict::Healthy, Some(Kept::Tcp(stream)))
}

/// Whether `buffer` holds every block of `blocks`, in order, not necessarily contiguous
/// (Envoy's `TcpHealthCheckMatcher`).
fn receives(buffer: &[u8], blocks: &[Vec<u8>]) -> bool {
    let mut from = 0;
    for block in blocks {
        let Some(at) = buffer.get(from..).and_then(|rest| {
            rest.windows(block.len())
                .position(|w| w == block.as_slice())
        }) else {
            return false;
        };
        from += at + block.len();
    }
    true
}

/// A cluster's health tasks, kept across applies while its health settings are unchanged.
struct Watched {
    health: EndpointHealth,
    /// The check's event log, if it has one.
    events: Option<EventLogger>,
    /// The cluster's runtime in force: probes use its transport, verdicts refresh its plan.
    cluster: ArcSwap<ClusterRuntime>,
    /// Stops the outlier sweep and every checker.
    stop: CancellationToken,
    /// Each checked endpoint's pool and the token stopping its checker.
    checkers: Mutex<Vec<(Arc<EndpointPool>, CancellationToken)>>,
}

/// Every cluster's health checkers and outlier sweep: what [`crate::runtime::Proxy`] keeps
/// across applies.
#[derive(Default)]
pub struct HealthWatch {
    by_cluster: Mutex<HashMap<String, Arc<Watched>>>,
}

impl HealthWatch {
    /// Puts the health tasks of `clusters` (the config just applied) in force: a cluster with
    /// unchanged health settings keeps its tasks (its new endpoints get checkers, those gone
    /// lose theirs), others start afresh (every endpoint waiting for its first check, no
    /// ejection), and clusters gone or without health signal stop theirs. Event logs are
    /// written through `files`.
    pub fn apply(
        &self,
        clusters: &HashMap<String, Arc<ClusterRuntime>>,
        files: &LogFiles,
        stats: &Stats,
    ) {
        let mut all = self.by_cluster.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|name, watched| {
            let keep = clusters
                .get(name)
                .is_some_and(|c| c.health().is_some() && c.config.health == watched.health);
            if !keep {
                watched.stop.cancel();
            }
            keep
        });
        for (name, cluster) in clusters {
            let Some(health) = cluster.health() else {
                continue;
            };
            match all.get(name) {
                Some(watched) => {
                    watched.cluster.store(cluster.clone());
                    watched.reconcile(&health.pools());
                }
                None => {
                    for pool in health.pools().iter() {
                        match cluster.config.health.check.is_some() {
                            true => pool.health().await_first_check(),
                            false => pool.health().clear_active(),
                        }
                    }
                    if let Some(detector) = &health.detector {
                        detector.adopt(&health.pools());
                    }
                    let events = cluster.config.health.check.as_ref().and_then(|c| {
                        let log = c.event_log.as_ref()?;
                        Some(EventLogger::new(name, &c.probe, log, files, stats))
                    });
                    let watched = Arc::new(Watched {
                        events,
                        health: cluster.config.health.clone(),
                        cluster: ArcSwap::new(cluster.clone()),
                        stop: CancellationToken::new(),
                        checkers: Mutex::new(Vec::new()),
                    });
                    if health.detector.is_some() {
                        tokio::spawn(sweep(watched.clone()));
                    }
                    watched.reconcile(&health.pools());
                    all.insert(name.clone(), watched);
                }
            }
            cluster.refresh_health();
        }
    }
}

impl Watched {
    /// Checkers for exactly `pools` (when the cluster has a check): new pools get one, pools
    /// gone have theirs stopped.
    fn reconcile(self: &Arc<Self>, pools: &[Arc<EndpointPool>]) {
        let Some(check) = self.health.check.clone() else {
            return;
        };
        let mut checkers = self.checkers.lock().unwrap_or_else(|p| p.into_inner());
        checkers.retain(|(pool, stop)| {
            let kept = pools.iter().any(|p| Arc::ptr_eq(p, pool));
            if !kept {
                stop.cancel();
            }
            kept
        });
        for pool in pools {
            if checkers.iter().any(|(p, _)| Arc::ptr_eq(p, pool)) {
                continue;
            }
            let stop = self.stop.child_token();
            checkers.push((pool.clone(), stop.clone()));
            tokio::spawn(run_checker(self.clone(), pool.clone(), check.clone(), stop));
        }
    }
}

/// One endpoint's checker, until `stop`.
async fn run_checker(
    watched: Arc<Watched>,
    pool: Arc<EndpointPool>,
    check: HealthCheck,
    stop: CancellationToken,
) {
    let initial = match check.initial_jitter.as_millis() as u64 {
        0 => Duration::ZERO,
        ms => Duration::from_millis(rand::random::<u64>() % ms),
    };
    tokio::select! {
        () = tokio::time::sleep(initial) => {}
        () = stop.cancelled() => return,
    }
    let mut session = Session::default();
    let mut kept = None;
    loop {
        let cluster = watched.cluster.load_full();
        let stats = &cluster.stats.health_check;
        stats.attempt.inc();
        let probe = async {
            match &check.probe {
                Probe::Http(http) => http_probe(&cluster, &pool, http, kept.take()).await,
                Probe::Tcp(tcp) => tcp_probe(&cluster, &pool, tcp, kept.take()).await,
                Probe::Grpc(grpc) => {
                    grpc_probe(&cluster, &pool, grpc, check.timeout, kept.take()).await
                }
            }
        };
        let (verdict, next) = tokio::select! {
            outcome = tokio::time::timeout(check.timeout, probe) => {
                outcome.unwrap_or((Verdict::Timeout, None))
            }
            () = stop.cancelled() => return,
        };
        // Envoy keeps the connection after any answer (a wrong status too) unless told not to.
        let network = matches!(verdict, Verdict::Network | Verdict::Timeout);
        kept = next.filter(|_| check.reuse_connection && !network);
        match verdict {
            Verdict::Healthy => stats.success.inc(),
            Verdict::Network | Verdict::Timeout => {
                stats.failure.inc();
                stats.network_failure.inc()
            }
            Verdict::Active { .. } => stats.failure.inc(),
        };
        let (first, was_failed) = (pool.health().is_pending(), pool.health().failed_active());
        let transition = session.record(verdict, pool.health(), &check);
        if let Some(events) = &watched.events {
            let host = Host {
                address: pool.address(),
                described: described(&cluster, &pool),
            };
            let now_failed = pool.health().failed_active();
            events.verdict(&host, verdict, first, (was_failed, now_failed));
        }
        let mut changed = transition == Transition::Changed;
        if changed {
            tracing::info!(cluster = %cluster.config.name, endpoint = %pool.address(),
                healthy = !pool.health().failed_active(), "health check changed the endpoint's health");
        }
        if let Some(detector) = cluster.health().and_then(|h| h.detector.as_ref()) {
            if verdict == Verdict::Healthy && !pool.health().failed_active() {
                changed |= detector.checked_healthy(&pool);
            }
        }
        if changed {
            // The runtime in force now: one applied since the probe began was planned from
            // the flags before this change, and the apply refreshes after storing it.
            watched.cluster.load().refresh_health();
        }
        let had_traffic = cluster.stats.connections.get() > 0;
        let base = next_interval(&check, verdict, transition, had_traffic);
        tokio::select! {
            () = tokio::time::sleep(with_jitter(base, &check)) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// What `cluster`'s config keeps of `pool`'s endpoint for health check events.
fn described<'a>(
    cluster: &'a ClusterRuntime,
    pool: &Arc<EndpointPool>,
) -> Option<&'a bearing_proxy_config::EventHost> {
    let at = cluster
        .health()?
        .pools()
        .iter()
        .position(|p| Arc::ptr_eq(p, pool))?;
    cluster.config.endpoints.get(at)?.event_host.as_ref()
}

/// A cluster's outlier sweep, every `interval` until its health tasks stop.
async fn sweep(watched: Arc<Watched>) {
    loop {
        let cluster = watched.cluster.load_full();
        let Some(interval) = cluster
            .health()
            .and_then(|h| h.detector.as_ref())
            .map(|d| d.interval())
        else {
            return;
        };
        drop(cluster);
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = watched.stop.cancelled() => return,
        }
        let cluster = watched.cluster.load_full();
        if let Some(health) = cluster.health() {
            if let Some(detector) = &health.detector {
                detector.sweep(&health.pools());
                // Every sweep, changed or not: an ejection a request of the previous runtime
                // made reaches the runtime in force at the latest here.
                cluster.refresh_health();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::HostHealth;
    use bearing_proxy_config::ProbeHeader;

    fn check(healthy: u32, unhealthy: u32) -> HealthCheck {
        let s = Duration::from_secs;
        HealthCheck {
            timeout: s(1),
            interval: s(10),
            unhealthy_interval: s(20),
            unhealthy_edge_interval: s(21),
            healthy_edge_interval: s(11),
            no_traffic_interval: s(60),
            no_traffic_healthy_interval: s(61),
            initial_jitter: Duration::ZERO,
            interval_jitter: Duration::ZERO,
            interval_jitter_percent: 0,
            unhealthy_threshold: unhealthy,
            healthy_threshold: healthy,
            reuse_connection: true,
            event_log: None,
            probe: Probe::Tcp(TcpProbe {
                send: Vec::new(),
                receive: Vec::new(),
            }),
        }
    }

    #[test]
    fn the_first_pass_makes_a_new_host_healthy_then_thresholds_apply() {
        let c = check(2, 3);
        let host = HostHealth::default();
        host.await_first_check();
        let mut s = Session::default();
        assert_eq!(s.record(Verdict::Healthy, &host, &c), Transition::Changed);
        assert!(!host.failed_active() && !host.is_pending());
        // Network failures: unhealthy at the third in a row.
        assert_eq!(
            s.record(Verdict::Network, &host, &c),
            Transition::ChangePending
        );
        assert_eq!(
            s.record(Verdict::Network, &host, &c),
            Transition::ChangePending
        );
        assert_eq!(s.record(Verdict::Network, &host, &c), Transition::Changed);
        assert!(host.failed_active());
        // Healthy again after two passes in a row.
        assert_eq!(
            s.record(Verdict::Healthy, &host, &c),
            Transition::ChangePending
        );
        assert_eq!(s.record(Verdict::Healthy, &host, &c), Transition::Changed);
        // An unexpected status: unhealthy at once; a retriable one counts.
        let r = Verdict::Active {
            retriable: true,
            status: 503,
        };
        assert_eq!(s.record(r, &host, &c), Transition::ChangePending);
        let wrong = Verdict::Active {
            retriable: false,
            status: 404,
        };
        assert_eq!(s.record(wrong, &host, &c), Transition::Changed);
        assert!(host.failed_active());
    }

    #[test]
    fn a_first_failure_leaves_the_host_unhealthy_and_checked() {
        let c = check(1, 3);
        let host = HostHealth::default();
        host.await_first_check();
        let mut s = Session::default();
        assert_eq!(s.record(Verdict::Network, &host, &c), Transition::Changed);
        assert!(host.failed_active() && !host.is_pending());
    }

    #[test]
    fn intervals_follow_the_verdict_and_traffic() {
        let c = check(1, 1);
        let s = Duration::from_secs;
        let i = |v, t, traffic| next_interval(&c, v, t, traffic);
        assert_eq!(i(Verdict::Healthy, Transition::Unchanged, false), s(61));
        assert_eq!(i(Verdict::Healthy, Transition::ChangePending, false), s(60));
        assert_eq!(i(Verdict::Network, Transition::Changed, false), s(60));
        assert_eq!(i(Verdict::Healthy, Transition::Unchanged, true), s(10));
        assert_eq!(i(Verdict::Healthy, Transition::ChangePending, true), s(11));
        assert_eq!(i(Verdict::Network, Transition::Changed, true), s(20));
        assert_eq!(i(Verdict::Network, Transition::ChangePending, true), s(21));
        let mut j = c.clone();
        j.interval_jitter_percent = 10;
        j.interval_jitter = Duration::from_millis(500);
        for _ in 0..50 {
            let d = with_jitter(s(10), &j);
            assert!(d >= s(10) && d < Duration::from_millis(11_500), "{d:?}");
        }
    }

    #[test]
    fn receive_blocks_match_in_order_not_contiguous() {
        let blocks = vec![b"ab".to_vec(), b"cd".to_vec()];
        assert!(receives(b"xxabyycd", &blocks));
        assert!(!receives(b"cdab", &blocks));
        assert!(!receives(b"ab", &blocks));
        assert!(receives(b"", &[]));
    }

    #[test]
    fn the_probe_request_carries_path_host_and_headers() {
        let probe = HttpProbe {
            host: "backend".into(),
            path: "/health?x=1".into(),
            expected_statuses: vec![(200, 201)],
            retriable_statuses: Vec::new(),
            headers: vec![
                ProbeHeader {
                    name: "x-a".into(),
                    value: "1".into(),
                    replace: false,
                },
                ProbeHeader {
                    name: "user-agent".into(),
                    value: "kuma".into(),
                    replace: true,
                },
            ],
            remove_headers: Vec::new(),
            http2: false,
        };
        let r = probe_request(&probe).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.uri(), "/health?x=1");
        assert_eq!(r.headers()["host"], "backend");
        assert_eq!(r.headers()["user-agent"], "kuma");
        assert_eq!(r.headers()["x-a"], "1");
        let h2 = probe_request(&HttpProbe {
            http2: true,
            ..probe
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h2.uri(), "http://backend/health?x=1");
        assert!(h2.headers().get("host").is_none());
    }

    /// A cluster checked over TCP against two listeners, one of them closed: the open one
    /// becomes healthy and takes every connection, the closed one fails; an apply without
    /// the cluster stops the checkers (no more attempts).
    #[tokio::test]
    async fn checkers_follow_their_endpoints_and_stop_with_the_cluster() {
        use crate::mesh_tls::MeshTlsSet;
        use crate::stats::ClusterStats;
        use crate::upstream::{plain_endpoint, ClusterEndpoints, UpstreamSecurity};
        let open = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let at =
            [open.local_addr(), closed.local_addr()].map(|a| a.unwrap_or_else(|e| panic!("{e}")));
        drop(closed);
        let accept = tokio::spawn(async move {
            loop {
                if open.accept().await.is_err() {
                    return;
                }
            }
        });
        let mut c = check(1, 1);
        c.interval = Duration::from_millis(50);
        c.unhealthy_interval = Duration::from_millis(50);
        c.no_traffic_interval = Duration::from_millis(50);
        c.no_traffic_healthy_interval = Duration::from_millis(50);
        let config = bearing_proxy_config::Cluster {
            endpoints: at.iter().map(|a| plain_endpoint(*a)).collect(),
            health: EndpointHealth {
                check: Some(c),
                ..EndpointHealth::default()
            },
            ..crate::upstream::test_cluster("checked")
        };
        let pools: Vec<_> = config.endpoints.iter().map(EndpointPool::new).collect();
        let stats = ClusterStats::default();
        let runtime = Arc::new(ClusterRuntime::new(
            config,
            stats.clone(),
            ClusterEndpoints::Fixed(pools.clone()),
            (None, Vec::new()),
            UpstreamSecurity::new(None, &MeshTlsSet::default()),
        ));
        let watch = HealthWatch::default();
        let clusters = HashMap::from([("checked".to_string(), runtime.clone())]);
        let (files, proxy_stats) = (LogFiles::default(), Stats::new());
        watch.apply(&clusters, &files, &proxy_stats);
        tokio::time::timeout(Duration::from_secs(5), async {
            while pools[0].health().failed_active() || pools[1].health().is_pending() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no verdicts"));
        assert!(pools[1].health().failed_active());
        assert_eq!(stats.membership_healthy.get(), 1);
        for _ in 0..4 {
            let stream = runtime
                .connect_tcp()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let peer = match &stream {
                tokio_util::either::Either::Left(s) => s.get_ref().peer_addr().ok(),
                tokio_util::either::Either::Right(_) => None,
            };
            assert_eq!(peer, Some(at[0]));
        }
        watch.apply(&HashMap::new(), &files, &proxy_stats);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let attempts = stats.health_check.attempt.get();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(stats.health_check.attempt.get(), attempts);
        accept.abort();
    }
}

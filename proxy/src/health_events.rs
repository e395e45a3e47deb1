//! A health check's event log (`HealthCheck::event_log`, kuma-cp's MeshHealthCheck
//! `eventLogPath`): one `envoy.data.core.v3.HealthCheckEvent` a line in Envoy's JSON (proto
//! field names, every field printed, fields in field-number order), on the same events as
//! Envoy's `HealthCheckEventLoggerImpl`:
//!
//! - `eject_unhealthy_event` when a failure makes a healthy host unhealthy;
//! - `add_healthy_event` when a pass makes an unhealthy host healthy (`first_check` on the
//!   host's first check);
//! - `health_check_failure_event` on a host's first failed check, and on every failure with
//!   `always_log_failures` (after the ejection it caused, if any);
//! - `successful_health_check_event` on every pass that made no host healthy, with
//!   `always_log_success`.
//!
//! Lines go through the access log's file writers ([`crate::access_log::LogFiles`]): a thread
//! per file writes what gathered once a second, as Envoy flushes its log files.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bearing_proxy_config::{EventHost, EventLog, Probe};

use crate::access_log::{LogFile, LogFiles};
use crate::health_check::Verdict;
use crate::stats::Stats;

/// One health check's event log: the cluster's name, the checker's type, which verdicts
/// are logged beyond changes and first checks, and the files.
pub(crate) struct EventLogger {
    cluster: String,
    checker: &'static str,
    always_log_failures: bool,
    always_log_success: bool,
    files: Vec<Arc<LogFile>>,
}

/// The host an event is about.
pub(crate) struct Host<'a> {
    /// Its address.
    pub address: SocketAddr,
    /// Its metadata and locality, when the config kept them.
    pub described: Option<&'a EventHost>,
}

impl EventLogger {
    /// The logger of cluster `cluster`'s check `probe` writing to `log`'s files.
    pub(crate) fn new(
        cluster: &str,
        probe: &Probe,
        log: &EventLog,
        files: &LogFiles,
        stats: &Stats,
    ) -> EventLogger {
        EventLogger {
            cluster: cluster.to_string(),
            checker: match probe {
                Probe::Http(_) => "HTTP",
                Probe::Tcp(_) => "TCP",
                Probe::Grpc(_) => "GRPC",
            },
            always_log_failures: log.always_log_failures,
            always_log_success: log.always_log_success,
            files: log.paths.iter().map(|p| files.file(p, stats)).collect(),
        }
    }

    /// Logs what a verdict did to `host`: `first` (its first check), `was_failed` and
    /// `now_failed` (its failed-active-check flag before and after).
    pub(crate) fn verdict(
        &self,
        host: &Host<'_>,
        verdict: Verdict,
        first: bool,
        (was_failed, now_failed): (bool, bool),
    ) {
        match failure(verdict) {
            None if was_failed && !now_failed => {
                self.write(host, Event::AddHealthy { first }, SystemTime::now())
            }
            None if self.always_log_success => {
                self.write(host, Event::Successful, SystemTime::now())
            }
            None => {}
            Some((kind, status)) => {
                let now = SystemTime::now();
                if !was_failed && now_failed {
                    self.write(host, Event::Eject { kind, status }, now);
                }
                if first || self.always_log_failures {
                    self.write(
                        host,
                        Event::Failure {
                            kind,
                            first,
                            status,
                        },
                        now,
                    );
                }
            }
        }
    }

    fn write(&self, host: &Host<'_>, event: Event, at: SystemTime) {
        let mut line = Vec::with_capacity(512);
        render(&self.cluster, self.checker, host, &event, at, &mut line);
        for file in &self.files {
            file.append(&line);
        }
    }
}

/// Envoy's `HealthCheckFailureType` and HTTP status of a failed verdict; `None` if it passed.
fn failure(verdict: Verdict) -> Option<(&'static str, u16)> {
    match verdict {
        Verdict::Healthy => None,
        Verdict::Active { status, .. } => Some(("ACTIVE", status)),
        Verdict::Network => Some(("NETWORK", 0)),
        Verdict::Timeout => Some(("NETWORK_TIMEOUT", 0)),
    }
}

/// One event's kind and fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Eject {
        kind: &'static str,
        status: u16,
    },
    AddHealthy {
        first: bool,
    },
    Failure {
        kind: &'static str,
        first: bool,
        status: u16,
    },
    Successful,
}

/// Renders one event's line (with its newline) into `out`, fields in Envoy's order.
fn render(
    cluster: &str,
    checker: &str,
    host: &Host<'_>,
    event: &Event,
    at: SystemTime,
    out: &mut Vec<u8>,
) {
    let quoted = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let _ = write!(
        out,
        "{{\"health_checker_type\":\"{checker}\",\"host\":{{\"socket_address\":{{\"protocol\":\"TCP\",\"address\":\"{}\",\"port_value\":{},\"resolver_name\":\"\",\"ipv4_compat\":false,\"network_namespace_filepath\":\"\"}}}},\"cluster_name\":{}",
        host.address.ip(),
        host.address.port(),
        quoted(cluster),
    );
    match event {
        Event::Eject { kind, status } => {
            let _ = write!(
                out,
                ",\"eject_unhealthy_event\":{{\"failure_type\":\"{kind}\",\"http_status_code\":{status}}}"
            );
        }
        Event::AddHealthy { first } => {
            let _ = write!(out, ",\"add_healthy_event\":{{\"first_check\":{first}}}");
        }
        _ => {}
    }
    let _ = write!(out, ",\"timestamp\":\"");
    timestamp(at, out);
    out.push(b'"');
    if let Event::Failure {
        kind,
        first,
        status,
    } = event
    {
        let _ = write!(
            out,
            ",\"health_check_failure_event\":{{\"failure_type\":\"{kind}\",\"first_check\":{first},\"http_status_code\":{status}}}"
        );
    }
    let described = host.described.cloned().unwrap_or_default();
    if let Some(metadata) = &described.metadata {
        let _ = write!(out, ",\"metadata\":{metadata}");
    }
    let _ = write!(
        out,
        ",\"locality\":{{\"region\":{},\"zone\":{},\"sub_zone\":{}}}",
        quoted(&described.region),
        quoted(&described.zone),
        quoted(&described.sub_zone),
    );
    if *event == Event::Successful {
        out.extend_from_slice(b",\"successful_health_check_event\":{}");
    }
    out.extend_from_slice(b"}\n");
}

/// `at` as protobuf JSON prints a `Timestamp` of millisecond precision (Envoy's): UTC, the
/// fraction only when not zero.
fn timestamp(at: SystemTime, out: &mut Vec<u8>) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = bearing_proxy_config::civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    );
    let millis = since.subsec_millis();
    if millis > 0 {
        let _ = write!(out, ".{millis:03}");
    }
    out.push(b'Z');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn line(host: &Host<'_>, event: Event, at: SystemTime) -> String {
        let mut out = Vec::new();
        render("c", "TCP", host, &event, at, &mut out);
        String::from_utf8(out).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The lines Envoy 1.40 wrote for a STATIC cluster's TCP check (taken from its log).
    #[test]
    fn lines_are_envoys() {
        let at = UNIX_EPOCH + Duration::from_millis(1_796_293_105_492);
        let host = Host {
            address: "127.0.0.1:19911".parse().unwrap_or_else(|e| panic!("{e}")),
            described: None,
        };
        assert_eq!(
            line(&host, Event::AddHealthy { first: true }, at),
            "{\"health_checker_type\":\"TCP\",\"host\":{\"socket_address\":{\"protocol\":\"TCP\",\"address\":\"127.0.0.1\",\"port_value\":19911,\"resolver_name\":\"\",\"ipv4_compat\":false,\"network_namespace_filepath\":\"\"}},\"cluster_name\":\"c\",\"add_healthy_event\":{\"first_check\":true},\"timestamp\":\"2026-12-03T10:18:25.492Z\",\"locality\":{\"region\":\"\",\"zone\":\"\",\"sub_zone\":\"\"}}\n"
        );
        let described = EventHost {
            metadata: Some(
                "{\"filter_metadata\":{\"zeta\":{\"a\":\"x\"}},\"typed_filter_metadata\":{}}"
                    .into(),
            ),
            region: "r".into(),
            zone: "zz".into(),
            sub_zone: String::new(),
        };
        let host = Host {
            described: Some(&described),
            ..host
        };
        let failure = Event::Failure {
            kind: "NETWORK",
            first: true,
            status: 0,
        };
        assert_eq!(
            line(&host, failure, at),
            "{\"health_checker_type\":\"TCP\",\"host\":{\"socket_address\":{\"protocol\":\"TCP\",\"address\":\"127.0.0.1\",\"port_value\":19911,\"resolver_name\":\"\",\"ipv4_compat\":false,\"network_namespace_filepath\":\"\"}},\"cluster_name\":\"c\",\"timestamp\":\"2026-12-03T10:18:25.492Z\",\"health_check_failure_event\":{\"failure_type\":\"NETWORK\",\"first_check\":true,\"http_status_code\":0},\"metadata\":{\"filter_metadata\":{\"zeta\":{\"a\":\"x\"}},\"typed_filter_metadata\":{}},\"locality\":{\"region\":\"r\",\"zone\":\"zz\",\"sub_zone\":\"\"}}\n"
        );
        let mut whole = Vec::new();
        timestamp(UNIX_EPOCH + Duration::from_secs(1_796_293_105), &mut whole);
        assert_eq!(whole, b"2026-12-03T10:18:25Z");
    }

    #[test]
    fn events_follow_envoys_rules() {
        let files = LogFiles::default();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("events.log");
        let log = EventLog {
            paths: vec![path.display().to_string()],
            always_log_failures: false,
            always_log_success: false,
        };
        let probe = Probe::Grpc(bearing_proxy_config::GrpcProbe {
            authority: "c".into(),
            service: String::new(),
        });
        let logger = EventLogger::new("c", &probe, &log, &files, &Stats::new());
        let host = Host {
            address: "10.0.0.1:80".parse().unwrap_or_else(|e| panic!("{e}")),
            described: None,
        };
        let active = Verdict::Active {
            retriable: false,
            status: 0,
        };
        // First check failing: a failure event only; then a pass: added; a failure: ejected
        // (no failure event without always_log_failures); a pass again: added.
        logger.verdict(&host, active, true, (true, true));
        logger.verdict(&host, Verdict::Healthy, false, (true, false));
        logger.verdict(&host, Verdict::Healthy, false, (false, false));
        logger.verdict(&host, Verdict::Network, false, (false, false));
        logger.verdict(&host, active, false, (false, true));
        logger.verdict(&host, Verdict::Healthy, false, (true, false));
        drop(logger);
        drop(files);
        let mut text = String::new();
        for _ in 0..50 {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() >= 4 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let kinds: Vec<String> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
                assert_eq!(v["health_checker_type"], "GRPC");
                let kind = [
                    "eject_unhealthy_event",
                    "add_healthy_event",
                    "health_check_failure_event",
                    "successful_health_check_event",
                ]
                .into_iter()
                .find(|k| v.get(*k).is_some())
                .unwrap_or("none");
                format!("{kind}{}", v[kind])
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                "health_check_failure_event{\"failure_type\":\"ACTIVE\",\"first_check\":true,\"http_status_code\":0}",
                "add_healthy_event{\"first_check\":false}",
                "eject_unhealthy_event{\"failure_type\":\"ACTIVE\",\"http_status_code\":0}",
                "add_healthy_event{\"first_check\":false}",
            ]
        );
    }
}

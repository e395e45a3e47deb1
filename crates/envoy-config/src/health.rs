//! A cluster's `health_checks` (kuma-cp's MeshHealthCheck), `outlier_detection` (its
//! MeshCircuitBreaker) and `common_lb_config.healthy_panic_threshold`, as Envoy 1.40 reads
//! them: unset fields take Envoy's defaults. Fields Bearing does not implement (custom
//! checks, a gRPC check's `initial_metadata`, TLS options of the check, ...) are NACKed by
//! the field guard.

use crate::translate::duration;
use bearing_proxy_config::{
    EndpointHealth, EventHost, EventLog, GrpcProbe, HealthCheck, HttpProbe, OutlierDetection,
    Probe, ProbeHeader, TcpProbe,
};
use envoy_types::pb::envoy::config::cluster::v3 as cluster_pb;
use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint_pb;
use envoy_types::pb::envoy::extensions::health_check::event_sinks::file::v3::HealthCheckEventFileSink;
use envoy_types::pb::envoy::r#type::v3::Int64Range;
use envoy_types::pb::google::protobuf::UInt32Value;
use std::time::Duration;

/// A field path and why its value cannot be served.
pub(crate) type Problem = (String, String);

/// Envoy's `no_traffic_interval` default.
const NO_TRAFFIC_INTERVAL: Duration = Duration::from_secs(60);

/// The endpoint health settings of `cluster` (at `path`; `dns`: its hostnames are resolved
/// at run time), with the problems found.
pub(crate) fn endpoint_health(
    cluster: &cluster_pb::Cluster,
    (path, dns): (&str, bool),
    problems: &mut Vec<Problem>,
) -> EndpointHealth {
    let mut health = EndpointHealth::default();
    if let Some(t) = cluster
        .common_lb_config
        .as_ref()
        .and_then(|c| c.healthy_panic_threshold.as_ref())
    {
        // Envoy clamps the percentage to [0, 100].
        health.panic_threshold = t.value.clamp(0.0, 100.0);
    }
    if let Some(zone_aware) = cluster.common_lb_config.as_ref().and_then(zone_aware) {
        health.fail_traffic_on_panic = fail_traffic_on_panic(cluster, zone_aware, path, problems);
    }
    for (i, check) in cluster.health_checks.iter().enumerate() {
        let at = format!("{path}.health_checks[{i}]");
        if i > 0 {
            problems.push((
                at,
                "a second health check: Bearing runs one per cluster".into(),
            ));
            continue;
        }
        health.check = health_check(check, &cluster.name, &at, problems);
    }
    health.outlier = cluster
        .outlier_detection
        .as_ref()
        .map(|o| outlier_detection(o, &format!("{path}.outlier_detection"), problems));
    // Outlier detection follows the hosts a name resolves to (a host kept keeps its record).
    if health.check.is_some() && dns {
        problems.push((
            format!("{path}.health_checks"),
            "active health checks of endpoints resolved by DNS at run time are not implemented"
                .into(),
        ));
    }
    health
}

/// The cluster's `zone_aware_lb_config`, if it has one.
fn zone_aware(
    common: &cluster_pb::cluster::CommonLbConfig,
) -> Option<&cluster_pb::cluster::common_lb_config::ZoneAwareLbConfig> {
    use cluster_pb::cluster::common_lb_config::LocalityConfigSpecifier;
    match &common.locality_config_specifier {
        Some(LocalityConfigSpecifier::ZoneAwareLbConfig(z)) => Some(z),
        _ => None,
    }
}

/// Whether a level in panic fails its requests, from `zone_aware` (kuma-cp's MeshHealthCheck
/// `failTrafficOnPanic`), as Envoy 1.40 reads it: only its round robin, least request and
/// random balancers (the zone-aware ones) act on it; ring hash and Maglev ignore the whole
/// config. Its other fields shape zone-aware routing, which Envoy performs only towards a
/// local cluster (`cluster_manager.local_cluster_name`, which kuma-cp never sets and Bearing
/// has no equivalent of): without one they have no effect in Envoy either, so they are
/// accepted, checked only as Envoy validates them.
fn fail_traffic_on_panic(
    cluster: &cluster_pb::Cluster,
    zone_aware: &cluster_pb::cluster::common_lb_config::ZoneAwareLbConfig,
    path: &str,
    problems: &mut Vec<Problem>,
) -> bool {
    use cluster_pb::cluster::LbPolicy;
    if let Some(p) = &zone_aware.routing_enabled {
        if !(0.0..=100.0).contains(&p.value) {
            problems.push((
                format!("{path}.common_lb_config.zone_aware_lb_config.routing_enabled.value"),
                format!("{} is not a percentage (0 to 100)", p.value),
            ));
        }
    }
    zone_aware.fail_traffic_on_panic
        && matches!(
            LbPolicy::try_from(cluster.lb_policy),
            Ok(LbPolicy::RoundRobin | LbPolicy::LeastRequest | LbPolicy::Random)
        )
}

fn required_duration(
    d: Option<&envoy_types::pb::google::protobuf::Duration>,
    at: String,
    problems: &mut Vec<Problem>,
) -> Duration {
    match d.map(duration) {
        Some(d) if !d.is_zero() => d,
        _ => {
            problems.push((at, "required, and more than 0".into()));
            Duration::ZERO
        }
    }
}

fn required_count(v: Option<&UInt32Value>, at: String, problems: &mut Vec<Problem>) -> u32 {
    match v {
        Some(v) => v.value,
        None => {
            problems.push((at, "required".into()));
            0
        }
    }
}

/// A set duration that is more than zero, else `default` (Envoy's `PROTOBUF_GET_MS_OR_DEFAULT`
/// of the optional intervals, whose protos require more than 0 when set).
fn or(d: Option<&envoy_types::pb::google::protobuf::Duration>, default: Duration) -> Duration {
    d.map(duration).filter(|d| !d.is_zero()).unwrap_or(default)
}

fn health_check(
    check: &core_pb::HealthCheck,
    cluster: &str,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<HealthCheck> {
    use core_pb::health_check::HealthChecker as H;
    let before = problems.len();
    let timeout = required_duration(check.timeout.as_ref(), format!("{at}.timeout"), problems);
    let interval = required_duration(check.interval.as_ref(), format!("{at}.interval"), problems);
    let unhealthy_threshold = required_count(
        check.unhealthy_threshold.as_ref(),
        format!("{at}.unhealthy_threshold"),
        problems,
    );
    let healthy_threshold = required_count(
        check.healthy_threshold.as_ref(),
        format!("{at}.healthy_threshold"),
        problems,
    );
    let probe = match &check.health_checker {
        Some(H::HttpHealthCheck(http)) => http_probe(http, cluster, at, problems).map(Probe::Http),
        Some(H::TcpHealthCheck(tcp)) => tcp_probe(tcp, at, problems).map(Probe::Tcp),
        Some(H::GrpcHealthCheck(grpc)) => grpc_probe(grpc, cluster, at, problems).map(Probe::Grpc),
        // Custom checkers are NACKed by the field guard.
        Some(_) => None,
        None => {
            problems.push((at.into(), "a health checker is required".into()));
            None
        }
    };
    let unhealthy_interval = or(check.unhealthy_interval.as_ref(), interval);
    let no_traffic_interval = or(check.no_traffic_interval.as_ref(), NO_TRAFFIC_INTERVAL);
    let built = HealthCheck {
        timeout,
        interval,
        unhealthy_interval,
        unhealthy_edge_interval: or(check.unhealthy_edge_interval.as_ref(), unhealthy_interval),
        healthy_edge_interval: or(check.healthy_edge_interval.as_ref(), interval),
        no_traffic_interval,
        no_traffic_healthy_interval: or(
            check.no_traffic_healthy_interval.as_ref(),
            no_traffic_interval,
        ),
        initial_jitter: check
            .initial_jitter
            .as_ref()
            .map(duration)
            .unwrap_or_default(),
        interval_jitter: check
            .interval_jitter
            .as_ref()
            .map(duration)
            .unwrap_or_default(),
        interval_jitter_percent: check.interval_jitter_percent,
        unhealthy_threshold,
        healthy_threshold,
        reuse_connection: check.reuse_connection.as_ref().is_none_or(|b| b.value),
        probe: probe?,
        event_log: event_log(check, at, problems),
    };
    (problems.len() == before).then_some(built)
}

fn http_probe(
    http: &core_pb::health_check::HttpHealthCheck,
    cluster: &str,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<HttpProbe> {
    use core_pb::header_value_option::HeaderAppendAction as A;
    use envoy_types::pb::envoy::r#type::v3::CodecClientType as Codec;
    let at = format!("{at}.http_health_check");
    let before = problems.len();
    if !http.path.starts_with('/') {
        problems.push((format!("{at}.path"), "required, starting with /".into()));
    }
    let http2 = match Codec::try_from(http.codec_client_type) {
        Ok(Codec::Http1) => false,
        Ok(Codec::Http2) => true,
        _ => {
            let reason = "only HTTP1 and HTTP2 are implemented";
            problems.push((format!("{at}.codec_client_type"), reason.into()));
            false
        }
    };
    let mut headers = Vec::new();
    for (i, option) in http.request_headers_to_add.iter().enumerate() {
        let hat = format!("{at}.request_headers_to_add[{i}]");
        let Some(h) = &option.header else {
            problems.push((format!("{hat}.header"), "required".into()));
            continue;
        };
        let replace = match A::try_from(option.append_action) {
            Ok(A::AppendIfExistsOrAdd) => false,
            Ok(A::OverwriteIfExistsOrAdd) => true,
            _ => {
                let reason =
                    "only APPEND_IF_EXISTS_OR_ADD and OVERWRITE_IF_EXISTS_OR_ADD are implemented";
                problems.push((format!("{hat}.append_action"), reason.into()));
                continue;
            }
        };
        let name = h.key.to_ascii_lowercase();
        if !is_token(&name) || !is_value(&h.value) || name == "host" {
            let reason = "not a header a health check may set";
            problems.push((format!("{hat}.header"), reason.into()));
            continue;
        }
        headers.push(ProbeHeader {
            name,
            value: h.value.clone(),
            replace,
        });
    }
    let expected_statuses = match http.expected_statuses.is_empty() {
        true => vec![(200, 201)],
        false => statuses(
            &http.expected_statuses,
            &format!("{at}.expected_statuses"),
            problems,
        ),
    };
    let retriable_statuses = statuses(
        &http.retriable_statuses,
        &format!("{at}.retriable_statuses"),
        problems,
    );
    let host = match http.host.is_empty() {
        true => cluster.to_string(),
        false => http.host.clone(),
    };
    if !is_value(&host) {
        problems.push((format!("{at}.host"), "not a valid Host value".into()));
    }
    let probe = HttpProbe {
        host,
        path: http.path.clone(),
        expected_statuses,
        retriable_statuses,
        headers,
        remove_headers: http
            .request_headers_to_remove
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        http2,
    };
    (problems.len() == before).then_some(probe)
}

/// Envoy's gRPC check: `:authority` the check's `authority`, else the cluster's name (the
/// endpoints carry no health check hostname); the service asked about.
fn grpc_probe(
    grpc: &core_pb::health_check::GrpcHealthCheck,
    cluster: &str,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<GrpcProbe> {
    let authority = match grpc.authority.is_empty() {
        true => cluster,
        false => grpc.authority.as_str(),
    };
    if !is_authority(authority) {
        let field = match grpc.authority.is_empty() {
            true => format!("{at}.grpc_health_check"),
            false => format!("{at}.grpc_health_check.authority"),
        };
        problems.push((field, format!("{authority:?} is no valid :authority")));
        return None;
    }
    Some(GrpcProbe {
        authority: authority.to_string(),
        service: grpc.service_name.clone(),
    })
}

/// Whether `value` can be an HTTP/2 `:authority`: a host (name, IPv4 or bracketed IPv6)
/// with an optional port, no user info.
fn is_authority(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b))
}

/// The check's event log: the deprecated `event_log_path` and each `event_logger` file sink
/// (another sink is NACKed); `None` when it has neither.
#[allow(deprecated)] // `event_log_path`: deprecated, still honoured by Envoy 1.40.
fn event_log(
    check: &core_pb::HealthCheck,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<EventLog> {
    const FILE_SINK: &str =
        "type.googleapis.com/envoy.extensions.health_check.event_sinks.file.v3.HealthCheckEventFileSink";
    let mut paths = Vec::new();
    if !check.event_log_path.is_empty() {
        paths.push(check.event_log_path.clone());
    }
    for (i, sink) in check.event_logger.iter().enumerate() {
        let sink_at = format!("{at}.event_logger[{i}].typed_config");
        let file = sink
            .typed_config
            .as_ref()
            .filter(|any| any.type_url == FILE_SINK)
            .and_then(|any| prost::Message::decode(any.value.as_slice()).ok());
        match file {
            Some(HealthCheckEventFileSink { event_log_path }) if !event_log_path.is_empty() => {
                paths.push(event_log_path)
            }
            Some(_) => problems.push((
                format!("{sink_at}.event_log_path"),
                "required, not empty".into(),
            )),
            None => problems.push((
                sink_at,
                "only the file sink (HealthCheckEventFileSink) is implemented".into(),
            )),
        }
    }
    (!paths.is_empty()).then_some(EventLog {
        paths,
        always_log_failures: check.always_log_health_check_failures,
        always_log_success: check.always_log_health_check_success,
    })
}

/// Whether any health check of `cluster` writes an event log (its endpoints then keep what
/// the events say of them, [`event_host`]).
#[allow(deprecated)] // `event_log_path`, as in `event_log`.
pub(crate) fn logs_events(cluster: &cluster_pb::Cluster) -> bool {
    cluster
        .health_checks
        .iter()
        .any(|c| !c.event_log_path.is_empty() || !c.event_logger.is_empty())
}

/// What Envoy's health check events say of endpoint `lb` in `locality`: its metadata as
/// Envoy prints it (protobuf JSON, proto field names, every field) and its locality.
pub(crate) fn event_host(
    lb: &endpoint_pb::LbEndpoint,
    locality: Option<&core_pb::Locality>,
) -> EventHost {
    let locality = locality.cloned().unwrap_or_default();
    EventHost {
        metadata: lb.metadata.as_ref().and_then(metadata_json),
        region: locality.region,
        zone: locality.zone,
        sub_zone: locality.sub_zone,
    }
}

/// `metadata` in Envoy's JSON; `None` if the descriptor set lacks the message (it does not).
fn metadata_json(metadata: &core_pb::Metadata) -> Option<String> {
    use prost_reflect::{DynamicMessage, SerializeOptions};
    let descriptor = crate::decode::descriptor_pool()
        .ok()?
        .get_message_by_name("envoy.config.core.v3.Metadata")?;
    let message = DynamicMessage::decode(
        descriptor,
        prost::Message::encode_to_vec(metadata).as_slice(),
    )
    .ok()?;
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false);
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::new(&mut out);
    message
        .serialize_with_options(&mut serializer, &options)
        .ok()?;
    String::from_utf8(out).ok()
}

/// Whether `name` is an HTTP header name (an RFC 9110 token).
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `value` may be an HTTP header value (no control characters but tab).
fn is_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Status ranges `[start, end)` within Envoy's allowed `[100, 600)`.
fn statuses(ranges: &[Int64Range], at: &str, problems: &mut Vec<Problem>) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    for (i, r) in ranges.iter().enumerate() {
        if r.start < 100 || r.end > 600 || r.start >= r.end {
            let reason = "a range within [100, 600) with start below end";
            problems.push((format!("{at}[{i}]"), reason.into()));
            continue;
        }
        out.push((r.start as u16, r.end as u16));
    }
    out
}

fn tcp_probe(
    tcp: &core_pb::health_check::TcpHealthCheck,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<TcpProbe> {
    let at = format!("{at}.tcp_health_check");
    let before = problems.len();
    let send = tcp
        .send
        .as_ref()
        .map(|p| payload(p, &format!("{at}.send"), problems))
        .unwrap_or_default();
    let receive = tcp
        .receive
        .iter()
        .enumerate()
        .map(|(i, p)| payload(p, &format!("{at}.receive[{i}]"), problems))
        .collect();
    (problems.len() == before).then_some(TcpProbe { send, receive })
}

/// A payload's bytes: `text` is hex, `binary` raw.
fn payload(p: &core_pb::health_check::Payload, at: &str, problems: &mut Vec<Problem>) -> Vec<u8> {
    use core_pb::health_check::payload::Payload as P;
    match &p.payload {
        Some(P::Binary(b)) => b.clone(),
        Some(P::Text(hex)) => match decode_hex(hex) {
            Some(bytes) => bytes,
            None => {
                problems.push((format!("{at}.text"), "not hex".into()));
                Vec::new()
            }
        },
        None => {
            problems.push((at.into(), "text or binary is required".into()));
            Vec::new()
        }
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Envoy's outlier detection settings, its defaults for what is unset.
fn outlier_detection(
    o: &cluster_pb::OutlierDetection,
    at: &str,
    problems: &mut Vec<Problem>,
) -> OutlierDetection {
    let d = OutlierDetection::default();
    let n = |v: &Option<UInt32Value>, default: u32| v.as_ref().map_or(default, |v| v.value);
    // Envoy's percentages are capped at 100.
    let pct = |v: &Option<UInt32Value>, default: u32| n(v, default).min(100);
    for (field, set) in [
        ("interval", &o.interval),
        ("base_ejection_time", &o.base_ejection_time),
        ("max_ejection_time", &o.max_ejection_time),
    ] {
        if set.as_ref().is_some_and(|d| duration(d).is_zero()) {
            problems.push((format!("{at}.{field}"), "must be more than 0".into()));
        }
    }
    let base_ejection_time = or(o.base_ejection_time.as_ref(), d.base_ejection_time);
    // Envoy: unset, the maximum is its default or the base, whichever is larger; set below
    // the base, the cluster is rejected.
    let max_ejection_time = match o.max_ejection_time.as_ref().map(duration) {
        Some(max) if max < base_ejection_time => {
            let reason = "max_ejection_time cannot be smaller than base_ejection_time";
            problems.push((format!("{at}.max_ejection_time"), reason.into()));
            base_ejection_time
        }
        Some(max) => max,
        None => d.max_ejection_time.max(base_ejection_time),
    };
    OutlierDetection {
        interval: or(o.interval.as_ref(), d.interval),
        base_ejection_time,
        max_ejection_time,
        max_ejection_percent: pct(&o.max_ejection_percent, d.max_ejection_percent),
        consecutive_5xx: n(&o.consecutive_5xx, d.consecutive_5xx),
        consecutive_gateway_failure: n(
            &o.consecutive_gateway_failure,
            d.consecutive_gateway_failure,
        ),
        consecutive_local_origin_failure: n(
            &o.consecutive_local_origin_failure,
            d.consecutive_local_origin_failure,
        ),
        enforcing: bearing_proxy_config::Enforcing {
            consecutive_5xx: pct(&o.enforcing_consecutive_5xx, d.enforcing.consecutive_5xx),
            consecutive_gateway_failure: pct(
                &o.enforcing_consecutive_gateway_failure,
                d.enforcing.consecutive_gateway_failure,
            ),
            consecutive_local_origin_failure: pct(
                &o.enforcing_consecutive_local_origin_failure,
                d.enforcing.consecutive_local_origin_failure,
            ),
            success_rate: pct(&o.enforcing_success_rate, d.enforcing.success_rate),
            local_origin_success_rate: pct(
                &o.enforcing_local_origin_success_rate,
                d.enforcing.local_origin_success_rate,
            ),
            failure_percentage: pct(
                &o.enforcing_failure_percentage,
                d.enforcing.failure_percentage,
            ),
            failure_percentage_local_origin: pct(
                &o.enforcing_failure_percentage_local_origin,
                d.enforcing.failure_percentage_local_origin,
            ),
        },
        split_external_local_origin_errors: o.split_external_local_origin_errors,
        success_rate_minimum_hosts: n(&o.success_rate_minimum_hosts, d.success_rate_minimum_hosts),
        success_rate_request_volume: n(
            &o.success_rate_request_volume,
            d.success_rate_request_volume,
        ),
        success_rate_stdev_factor: n(&o.success_rate_stdev_factor, d.success_rate_stdev_factor),
        failure_percentage_minimum_hosts: n(
            &o.failure_percentage_minimum_hosts,
            d.failure_percentage_minimum_hosts,
        ),
        failure_percentage_request_volume: n(
            &o.failure_percentage_request_volume,
            d.failure_percentage_request_volume,
        ),
        failure_percentage_threshold: pct(
            &o.failure_percentage_threshold,
            d.failure_percentage_threshold,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(json: serde_json::Value) -> cluster_pb::Cluster {
        let any = crate::decode::decode_json_resource(
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            &json,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        prost::Message::decode(any.value.as_slice()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// kuma-cp's MeshHealthCheck golden: the unset intervals take Envoy's defaults.
    #[test]
    fn a_mesh_health_check_reads_with_envoys_defaults() {
        let c = cluster(serde_json::json!({"name": "c", "healthChecks": [{
            "healthyThreshold": 1, "unhealthyThreshold": 3, "interval": "10s", "timeout": "2s",
            "httpHealthCheck": {"path": "/health", "expectedStatuses": [
                {"start": "200", "end": "201"}, {"start": "201", "end": "202"}]}}]}));
        let mut problems = Vec::new();
        let h = endpoint_health(&c, ("clusters[\"c\"]", false), &mut problems);
        assert_eq!(problems, vec![]);
        let check = h.check.unwrap_or_else(|| panic!("a check"));
        assert_eq!(check.interval, Duration::from_secs(10));
        assert_eq!(check.unhealthy_interval, Duration::from_secs(10));
        assert_eq!(check.no_traffic_interval, Duration::from_secs(60));
        assert!(check.reuse_connection);
        let Probe::Http(http) = check.probe else {
            panic!("HTTP")
        };
        assert_eq!(http.host, "c");
        assert_eq!(http.expected_statuses, vec![(200, 201), (201, 202)]);
        assert_eq!(h.panic_threshold, 50.0);
    }

    /// kuma-cp 2.14's MeshHealthCheck `grpc` check (its `basic_grpc_health_check_cluster`
    /// golden) with `eventLogPath` and `alwaysLogHealthCheckFailures`.
    #[test]
    fn a_mesh_health_check_grpc_check_and_event_log_read_as_kuma_renders_them() {
        let c = cluster(serde_json::json!({"name": "echo-grpc", "healthChecks": [{
            "healthyThreshold": 1, "interval": "10s", "timeout": "2s", "unhealthyThreshold": 3,
            "grpcHealthCheck": {"authority": "grpc-client.default.svc.cluster.local",
                "serviceName": "grpc-client"},
            "eventLogger": [{"name": "envoy.health_check.event_sinks.file", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.health_check.event_sinks.file.v3.HealthCheckEventFileSink",
                "eventLogPath": "/tmp/hc.log"}}],
            "alwaysLogHealthCheckFailures": true}]}));
        let mut problems = Vec::new();
        let h = endpoint_health(&c, ("c", false), &mut problems);
        assert_eq!(problems, vec![]);
        let check = h.check.unwrap_or_else(|| panic!("a check"));
        assert_eq!(
            check.probe,
            Probe::Grpc(GrpcProbe {
                authority: "grpc-client.default.svc.cluster.local".into(),
                service: "grpc-client".into(),
            })
        );
        assert_eq!(
            check.event_log,
            Some(EventLog {
                paths: vec!["/tmp/hc.log".into()],
                always_log_failures: true,
                always_log_success: false,
            })
        );
        // Without an authority, the cluster's name; another sink is named.
        let c = cluster(serde_json::json!({"name": "echo-grpc", "healthChecks": [{
            "healthyThreshold": 1, "interval": "10s", "timeout": "2s", "unhealthyThreshold": 3,
            "grpcHealthCheck": {},
            "eventLogger": [{"name": "x", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}]}]}));
        let mut problems = Vec::new();
        let h = endpoint_health(&c, ("c", false), &mut problems);
        assert_eq!(problems.len(), 1);
        assert_eq!(
            problems[0].0,
            "c.health_checks[0].event_logger[0].typed_config"
        );
        assert!(h.check.is_none());
        let c = cluster(serde_json::json!({"name": "echo-grpc", "healthChecks": [{
            "healthyThreshold": 1, "interval": "10s", "timeout": "2s", "unhealthyThreshold": 3,
            "grpcHealthCheck": {}}]}));
        let h = endpoint_health(&c, ("c", false), &mut problems);
        let Some(Probe::Grpc(grpc)) = h.check.map(|c| c.probe) else {
            panic!("gRPC")
        };
        assert_eq!(
            (grpc.authority.as_str(), grpc.service.as_str()),
            ("echo-grpc", "")
        );
    }

    /// An endpoint's metadata as Envoy prints it in an event, its locality.
    #[test]
    fn event_hosts_carry_metadata_and_locality() {
        let lb: endpoint_pb::LbEndpoint = {
            let json = serde_json::json!({"name": "c", "loadAssignment": {"clusterName": "c",
                "endpoints": [{"lbEndpoints": [{"endpoint": {"address": {"socketAddress": {
                "address": "10.0.0.1", "portValue": 80}}}, "metadata": {"filterMetadata": {
                "envoy.lb": {"kuma.io/protocol": "grpc"}}}}]}]}});
            let c = cluster(json);
            c.load_assignment
                .and_then(|a| a.endpoints.into_iter().next())
                .and_then(|l| l.lb_endpoints.into_iter().next())
                .unwrap_or_else(|| panic!("an endpoint"))
        };
        let locality = core_pb::Locality {
            zone: "zone-1".into(),
            ..Default::default()
        };
        let host = event_host(&lb, Some(&locality));
        assert_eq!(host.zone, "zone-1");
        let metadata: serde_json::Value =
            serde_json::from_str(host.metadata.as_deref().unwrap_or_default())
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            metadata,
            serde_json::json!({"filter_metadata": {"envoy.lb": {"kuma.io/protocol": "grpc"}},
                "typed_filter_metadata": {}})
        );
        assert_eq!(
            event_host(&lb_without_metadata(), None),
            EventHost::default()
        );
    }

    fn lb_without_metadata() -> endpoint_pb::LbEndpoint {
        endpoint_pb::LbEndpoint::default()
    }

    #[test]
    fn outlier_detection_defaults_are_envoys() {
        let c = cluster(serde_json::json!({"name": "c", "outlierDetection": {
            "consecutive5xx": 10, "maxEjectionPercent": 120},
            "commonLbConfig": {"healthyPanicThreshold": {}}}));
        let mut problems = Vec::new();
        let h = endpoint_health(&c, ("c", false), &mut problems);
        let o = h.outlier.unwrap_or_else(|| panic!("outlier detection"));
        assert_eq!(o.consecutive_5xx, 10);
        assert_eq!(o.max_ejection_percent, 100);
        assert_eq!(o.enforcing.consecutive_gateway_failure, 0);
        assert_eq!(o.success_rate_stdev_factor, 1900);
        assert_eq!(h.panic_threshold, 0.0);
    }

    /// kuma-cp 2.14's MeshHealthCheck `failTrafficOnPanic` (`zone_aware_lb_config`): taken
    /// under round robin, least request and random, without effect under ring hash and Maglev
    /// (Envoy's consistent-hashing balancers ignore the config); `false` and the zone-aware
    /// routing fields change nothing; a `routing_enabled` Envoy refuses is NACKed.
    #[test]
    fn fail_traffic_on_panic_reads_as_envoys_balancers_do() {
        let fails = |policy: &str, zone_aware: serde_json::Value| {
            let c = cluster(serde_json::json!({"name": "c", "lbPolicy": policy,
                "commonLbConfig": {"healthyPanicThreshold": {"value": 60},
                    "zoneAwareLbConfig": zone_aware}}));
            let mut problems = Vec::new();
            let h = endpoint_health(&c, ("c", false), &mut problems);
            assert_eq!(problems, vec![]);
            assert_eq!(h.panic_threshold, 60.0);
            h.fail_traffic_on_panic
        };
        let on = serde_json::json!({"failTrafficOnPanic": true});
        for policy in ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"] {
            assert!(fails(policy, on.clone()), "{policy}");
        }
        for policy in ["RING_HASH", "MAGLEV"] {
            assert!(!fails(policy, on.clone()), "{policy}");
        }
        let off = serde_json::json!({"minClusterSize": "2", "routingEnabled": {"value": 10}});
        assert!(!fails("ROUND_ROBIN", off));
        let c = cluster(serde_json::json!({"name": "c", "commonLbConfig": {
            "zoneAwareLbConfig": {"routingEnabled": {"value": 101}}}}));
        let mut problems = Vec::new();
        endpoint_health(&c, ("c", false), &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0].0,
            "c.common_lb_config.zone_aware_lb_config.routing_enabled.value"
        );
    }

    #[test]
    fn bad_checks_are_named() {
        let c = cluster(serde_json::json!({"name": "c", "healthChecks": [{
            "healthyThreshold": 1, "interval": "1s", "timeout": "1s",
            "tcpHealthCheck": {"send": {"text": "zz"}}}]}));
        let mut problems = Vec::new();
        endpoint_health(&c, ("c", true), &mut problems);
        let paths: Vec<_> = problems.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "c.health_checks[0].unhealthy_threshold",
                "c.health_checks[0].tcp_health_check.send.text",
            ]
        );
        // A valid check on a DNS cluster.
        let c = cluster(serde_json::json!({"name": "c", "healthChecks": [{
            "healthyThreshold": 1, "unhealthyThreshold": 1, "interval": "1s", "timeout": "1s",
            "tcpHealthCheck": {}}]}));
        let mut problems = Vec::new();
        endpoint_health(&c, ("c", true), &mut problems);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "c.health_checks");
        // Outlier detection on one (kuma-cp's MeshCircuitBreaker on an ExternalService).
        let c =
            cluster(serde_json::json!({"name": "c", "outlierDetection": {"consecutive5xx": 5}}));
        let mut problems = Vec::new();
        let health = endpoint_health(&c, ("c", true), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(health.outlier.is_some());
    }
}

//! A cluster's endpoint health settings: Envoy's active health checks (`Cluster.health_checks`,
//! kuma-cp's MeshHealthCheck), outlier detection (`Cluster.outlier_detection`, kuma-cp's
//! MeshCircuitBreaker) and the panic threshold (`common_lb_config.healthy_panic_threshold`).

use serde::Serialize;
use std::time::Duration;

/// How a cluster judges its endpoints' health, and what the load balancer does when too few
/// are healthy.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EndpointHealth {
    /// The active health check, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<HealthCheck>,
    /// Outlier detection, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier: Option<OutlierDetection>,
    /// Below this percentage of healthy hosts a priority level balances across all its hosts
    /// (Envoy's panic mode); 0 disables panic. Envoy's default is 50.
    pub panic_threshold: f64,
    /// A level in panic fails its requests (no healthy upstream) instead of balancing across
    /// all its hosts (Envoy's `zone_aware_lb_config.fail_traffic_on_panic`, kuma-cp's
    /// MeshHealthCheck `failTrafficOnPanic`; round robin, least request and random only, as
    /// Envoy's consistent-hashing balancers ignore it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fail_traffic_on_panic: bool,
    /// The ClusterLoadAssignment's overprovisioning factor, in percent (Envoy's default 140):
    /// a priority level's health, and a weighted locality's availability, are their healthy
    /// share times it, capped at 100%.
    #[serde(skip_serializing_if = "is_envoys_factor")]
    pub overprovisioning_factor: u32,
}

/// Envoy's default overprovisioning factor, in percent.
pub const DEFAULT_OVERPROVISIONING_FACTOR: u32 = 140;

fn is_envoys_factor(factor: &u32) -> bool {
    *factor == DEFAULT_OVERPROVISIONING_FACTOR
}

impl Default for EndpointHealth {
    fn default() -> Self {
        EndpointHealth {
            check: None,
            outlier: None,
            panic_threshold: 50.0,
            fail_traffic_on_panic: false,
            overprovisioning_factor: DEFAULT_OVERPROVISIONING_FACTOR,
        }
    }
}

impl EndpointHealth {
    /// Whether any health signal is configured (without one every host is healthy and the
    /// panic threshold never applies).
    pub fn is_tracked(&self) -> bool {
        self.check.is_some() || self.outlier.is_some()
    }

    /// Whether nothing differs from Envoy's defaults (for `/config_dump`).
    pub fn is_default(&self) -> bool {
        *self == EndpointHealth::default()
    }
}

/// One active health check (Envoy's `core.v3.HealthCheck`): every endpoint is probed on its
/// own schedule and marked unhealthy or healthy after enough failures or successes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HealthCheck {
    /// Limit for one probe (connect, request and response).
    #[serde(serialize_with = "crate::millis::serialize")]
    pub timeout: Duration,
    /// Between probes of a healthy endpoint.
    #[serde(serialize_with = "crate::millis::serialize")]
    pub interval: Duration,
    /// Between probes of an unhealthy endpoint (Envoy: `interval` unless set).
    #[serde(serialize_with = "crate::millis::serialize")]
    pub unhealthy_interval: Duration,
    /// After a failure that has not yet made a healthy endpoint unhealthy (default
    /// `unhealthy_interval`).
    #[serde(serialize_with = "crate::millis::serialize")]
    pub unhealthy_edge_interval: Duration,
    /// After a success that has not yet made an unhealthy endpoint healthy (default
    /// `interval`).
    #[serde(serialize_with = "crate::millis::serialize")]
    pub healthy_edge_interval: Duration,
    /// Between probes while the cluster has never opened a connection for traffic (60 s).
    #[serde(serialize_with = "crate::millis::serialize")]
    pub no_traffic_interval: Duration,
    /// The same for a healthy endpoint (default `no_traffic_interval`).
    #[serde(serialize_with = "crate::millis::serialize")]
    pub no_traffic_healthy_interval: Duration,
    /// Random delay up to this before the first probe.
    #[serde(serialize_with = "crate::millis::serialize")]
    pub initial_jitter: Duration,
    /// Random delay up to this added to every interval.
    #[serde(serialize_with = "crate::millis::serialize")]
    pub interval_jitter: Duration,
    /// Random delay up to this percentage of the interval added to every interval.
    pub interval_jitter_percent: u32,
    /// Failures (network ones, timeouts) that make a healthy endpoint unhealthy.
    pub unhealthy_threshold: u32,
    /// Successes that make an unhealthy endpoint healthy (the first check ever needs one).
    pub healthy_threshold: u32,
    /// Whether the probe's connection is kept for the next probe (Envoy's default).
    pub reuse_connection: bool,
    /// What a probe sends and expects.
    pub probe: Probe,
    /// Where the check's events are written, if anywhere (Envoy's health check event log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_log: Option<EventLog>,
}

/// A health check's event log (Envoy's `event_logger` file sinks and the deprecated
/// `event_log_path`): one JSON `HealthCheckEvent` a line, as Envoy writes them, for each
/// host made unhealthy (ejected) or healthy, each failed first check, and the failures and
/// passes the `always_log_*` options ask for.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EventLog {
    /// The files every event is appended to (one or more).
    pub paths: Vec<String>,
    /// Every failed check is logged, not only a host's first (`always_log_health_check_failures`).
    pub always_log_failures: bool,
    /// Every passed check that does not make the host healthy is logged
    /// (`always_log_health_check_success`).
    pub always_log_success: bool,
}

/// What Envoy's health check events say of a host besides its address and cluster.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash, Default)]
pub struct EventHost {
    /// The endpoint's `metadata` as Envoy prints it in JSON (every field, proto field
    /// names); `None` when the endpoint has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// Its locality's region.
    pub region: String,
    /// Its locality's zone.
    pub zone: String,
    /// Its locality's sub-zone.
    pub sub_zone: String,
}

/// What a health check probe does.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub enum Probe {
    /// An HTTP request whose response status must be expected.
    Http(HttpProbe),
    /// A TCP connection, optionally sending bytes and expecting some back.
    Tcp(TcpProbe),
    /// A gRPC `grpc.health.v1.Health/Check` call whose answer must be `SERVING`.
    Grpc(GrpcProbe),
}

/// A gRPC health check (Envoy's `GrpcHealthCheck`): an HTTP/2 unary call of
/// `/grpc.health.v1.Health/Check`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GrpcProbe {
    /// The `:authority` sent: the check's `authority`, else the cluster's name.
    pub authority: String,
    /// The `HealthCheckRequest.service` asked about; empty: the server as a whole.
    pub service: String,
}

/// An HTTP health check (Envoy's `HttpHealthCheck`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HttpProbe {
    /// The Host (`:authority`) sent: the check's `host`, else the cluster's name.
    pub host: String,
    /// The request path.
    pub path: String,
    /// Healthy statuses as half-open ranges `[start, end)` (Envoy's default `[200, 201)`).
    pub expected_statuses: Vec<(u16, u16)>,
    /// Further statuses that count as a failure towards the unhealthy threshold instead of
    /// making the host unhealthy at once.
    pub retriable_statuses: Vec<(u16, u16)>,
    /// Headers added to the request (replacing one of the same name when `replace`).
    pub headers: Vec<ProbeHeader>,
    /// Header names removed from the request.
    pub remove_headers: Vec<String>,
    /// Whether the probe speaks HTTP/2 (`codec_client_type: HTTP2`) instead of HTTP/1.1.
    pub http2: bool,
}

/// A header a probe request carries.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProbeHeader {
    /// Lower-case name.
    pub name: String,
    /// Value.
    pub value: String,
    /// Whether it replaces a header of that name (Envoy's OVERWRITE_IF_EXISTS_OR_ADD) rather
    /// than being added.
    pub replace: bool,
}

/// A TCP health check (Envoy's `TcpHealthCheck`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TcpProbe {
    /// Bytes written once connected; empty: none.
    pub send: Vec<u8>,
    /// Blocks that must all be read back, in order, not necessarily contiguous; empty: a
    /// successful connect is healthy.
    pub receive: Vec<Vec<u8>>,
}

/// Envoy's outlier detection: hosts whose responses or connections fail are ejected from the
/// load balancing for a while.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OutlierDetection {
    /// The sweep that un-ejects hosts and runs the success-rate and failure-percentage
    /// detection.
    #[serde(serialize_with = "crate::millis::serialize")]
    pub interval: Duration,
    /// An ejection lasts this times the number of times the host was ejected.
    #[serde(serialize_with = "crate::millis::serialize")]
    pub base_ejection_time: Duration,
    /// Upper bound of an ejection's length (Envoy: 300 s or the base, whichever is larger).
    #[serde(serialize_with = "crate::millis::serialize")]
    pub max_ejection_time: Duration,
    /// At most this percentage of the hosts is ejected at once (counting the one being
    /// ejected: with two hosts, 50 lets one go).
    pub max_ejection_percent: u32,
    /// Consecutive 5xx responses (and, unless split, local-origin failures) that eject.
    pub consecutive_5xx: u32,
    /// Consecutive 502/503/504 responses (and unsplit local-origin failures) that eject.
    pub consecutive_gateway_failure: u32,
    /// Consecutive local-origin failures (connect failures, resets, timeouts) that eject,
    /// when `split_external_local_origin_errors`.
    pub consecutive_local_origin_failure: u32,
    /// Percentages of detections that eject, per kind.
    pub enforcing: Enforcing,
    /// Whether local-origin failures are counted apart from the upstream's responses.
    pub split_external_local_origin_errors: bool,
    /// Hosts with at least `request_volume` requests needed for success-rate detection.
    pub success_rate_minimum_hosts: u32,
    /// Requests in an interval for a host to count in success-rate detection.
    pub success_rate_request_volume: u32,
    /// Ejects hosts whose success rate is below mean - stdev × (this / 1000).
    pub success_rate_stdev_factor: u32,
    /// Hosts with at least `request_volume` requests needed for failure-percentage detection.
    pub failure_percentage_minimum_hosts: u32,
    /// Requests in an interval for a host to count in failure-percentage detection.
    pub failure_percentage_request_volume: u32,
    /// Ejects hosts failing at least this percentage of their requests.
    pub failure_percentage_threshold: u32,
}

/// The percentage of detected outliers of each kind that are ejected.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Enforcing {
    /// Consecutive 5xx.
    pub consecutive_5xx: u32,
    /// Consecutive gateway failures.
    pub consecutive_gateway_failure: u32,
    /// Consecutive local-origin failures.
    pub consecutive_local_origin_failure: u32,
    /// Success rate of the upstream's responses.
    pub success_rate: u32,
    /// Success rate of local-origin outcomes.
    pub local_origin_success_rate: u32,
    /// Failure percentage of the upstream's responses.
    pub failure_percentage: u32,
    /// Failure percentage of local-origin outcomes.
    pub failure_percentage_local_origin: u32,
}

impl Default for OutlierDetection {
    /// Envoy's defaults for an `outlier_detection` with nothing set.
    fn default() -> Self {
        OutlierDetection {
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            consecutive_5xx: 5,
            consecutive_gateway_failure: 5,
            consecutive_local_origin_failure: 5,
            enforcing: Enforcing {
                consecutive_5xx: 100,
                consecutive_gateway_failure: 0,
                consecutive_local_origin_failure: 100,
                success_rate: 100,
                local_origin_success_rate: 100,
                failure_percentage: 0,
                failure_percentage_local_origin: 0,
            },
            split_external_local_origin_errors: false,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1900,
            failure_percentage_minimum_hosts: 5,
            failure_percentage_request_volume: 50,
            failure_percentage_threshold: 85,
        }
    }
}

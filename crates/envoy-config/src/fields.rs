//! The guard that no field of an Envoy resource is ignored silently.
//!
//! Every set field of a resource is walked by reflection (nested messages, lists, maps and
//! `Any`s by their type URL). A field is either in [`ACCEPTED`] (the translation reads it, or
//! it is documented as having no effect on what Bearing serves: stats names, Kuma's own
//! metadata), or it is NACKed by its path, with the policy it belongs to when it is one
//! ([`POLICY_FIELDS`], [`POLICY_EXTENSIONS`]). Values of accepted fields that Bearing cannot
//! honour (a path template, two mirrors on one route, ...) are checked by the translation
//! itself.

use crate::decode::{descriptor_pool, TYPE_URL_PREFIX};
use prost_reflect::{DynamicMessage, MapKey, ReflectMessage, Value};
use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

/// Fields Bearing translates or documents as without effect on what it serves, by message.
/// Messages absent here have no field accepted.
const ACCEPTED: &[(&str, &[&str])] = &[
    (
        "envoy.config.listener.v3.Listener",
        &[
            "name",
            "address",
            "bind_to_port",
            // Bearing opens one socket per worker itself.
            "enable_reuse_port",
            "filter_chains",
            "listener_filters",
            // Kuma's tags (`io.kuma.tags`): the listener's service.
            "metadata",
            // Statistics naming only.
            "stat_prefix",
            "traffic_direction",
            // Read buffer sizing: Bearing sizes its own buffers.
            "per_connection_buffer_limit_bytes",
            "use_original_dst",
        ],
    ),
    ("envoy.config.core.v3.Address", &["socket_address", "pipe"]),
    ("envoy.config.core.v3.Pipe", &["path"]),
    (
        "envoy.config.core.v3.SocketAddress",
        &["address", "port_value", "protocol"],
    ),
    (
        "envoy.config.listener.v3.FilterChain",
        &["name", "filter_chain_match", "filters", "transport_socket"],
    ),
    (
        "envoy.config.listener.v3.FilterChainMatch",
        &[
            "transport_protocol",
            "server_names",
            "application_protocols",
            "destination_port",
        ],
    ),
    ("envoy.config.listener.v3.Filter", &["name", "typed_config"]),
    (
        "envoy.config.listener.v3.ListenerFilter",
        &["name", "typed_config"],
    ),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        // idle_timeout: Kuma's default (1 h) only; see the translation.
        // metadata_match: only as the tags of a zone proxy's SNI; see the translation.
        // max_connect_attempts: MeshRetry's `tcp.maxConnectAttempt`, the listener's.
        &[
            "cluster",
            "weighted_clusters",
            "stat_prefix",
            "idle_timeout",
            "metadata_match",
            "max_connect_attempts",
            "access_log",
        ],
    ),
    ("envoy.extensions.filters.network.direct_response.v3.Config", &["response"]),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster",
        &["clusters"],
    ),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight",
        &["name", "weight"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        &[
            "stat_prefix",
            "http_filters",
            "route_config",
            // Its `idle_timeout`, the downstream connection idle timeout (the translation).
            "common_http_protocol_options",
            // Enforced, with a route's `idle_timeout` (the translation).
            "stream_idle_timeout",
            // Enforced by the connection manager (`downstream_timeouts`).
            "request_timeout",
            "request_headers_timeout",
            // Which peers count as internal for x-forwarded-for: Bearing adds none.
            "internal_address_config",
            // x-forwarded-client-cert on mTLS inbounds: documented gap (ARCHITECTURE.md).
            "forward_client_cert_details",
            "set_current_client_cert_details",
            "codec_type",
            // Path normalization: documented gap (ARCHITECTURE.md), Bearing forwards the
            // path as received.
            "normalize_path",
            "merge_slashes",
            "path_with_escaped_slashes_action",
            // File access logs (MeshAccessLog, TrafficLog), `access_log.rs`.
            "access_log",
        ],
    ),
    // A connection manager's downstream connection idle timeout (`downstream_timeouts`); a
    // cluster's upstream one (`is_upstream_lifetime`).
    ("envoy.config.core.v3.HttpProtocolOptions", &["idle_timeout"]),
    // A `filter` is kuma-cp's MeshAccessLog route filter: a metadata filter on the route's
    // `route_kri` (`access_log.rs` checks the matcher's values).
    (
        "envoy.config.accesslog.v3.AccessLog",
        &["name", "typed_config", "filter"],
    ),
    ("envoy.config.accesslog.v3.AccessLogFilter", &["metadata_filter"]),
    (
        "envoy.config.accesslog.v3.MetadataFilter",
        &["matcher", "match_if_key_not_found"],
    ),
    (
        "envoy.type.matcher.v3.MetadataMatcher",
        &["filter", "path", "value"],
    ),
    ("envoy.type.matcher.v3.MetadataMatcher.PathSegment", &["key"]),
    (
        "envoy.type.matcher.v3.ValueMatcher",
        &["null_match", "present_match", "string_match"],
    ),
    (
        "envoy.extensions.access_loggers.file.v3.FileAccessLog",
        &["path", "log_format"],
    ),
    (
        "envoy.config.core.v3.SubstitutionFormatString",
        &["text_format_source", "json_format", "omit_empty_values"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.InternalAddressConfig",
        &["cidr_ranges"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.SetCurrentClientCertDetails",
        &["uri"],
    ),
    (
        "envoy.config.core.v3.CidrRange",
        &["address_prefix", "prefix_len"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
        &["name", "typed_config"],
    ),
    (
        "envoy.config.route.v3.RouteConfiguration",
        &[
            "name",
            "virtual_hosts",
            "validate_clusters",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
        ],
    ),
    (
        "envoy.config.route.v3.VirtualHost",
        &[
            "name",
            "domains",
            "routes",
            // The retry policy of its routes that have none (`routes.rs`).
            "retry_policy",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
        ],
    ),
    (
        "envoy.config.route.v3.Route",
        &[
            "name",
            "match",
            "route",
            "redirect",
            "direct_response",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            // Per-filter data: Kuma's `envoy.filters.http.lua` `route_kri` for MeshAccessLog
            // (`routes.rs`, `lua.rs`); other filters' is read by none.
            "metadata",
            // The local rate limit's per-route bucket (`http_filters.rs`); any other
            // filter's is refused there.
            "typed_per_filter_config",
        ],
    ),
    (
        "envoy.config.route.v3.RouteMatch",
        &[
            "prefix",
            "path",
            "safe_regex",
            "path_separated_prefix",
            "headers",
            "query_parameters",
        ],
    ),
    (
        "envoy.config.route.v3.HeaderMatcher",
        &[
            "name",
            "string_match",
            "present_match",
            "exact_match",
            "safe_regex_match",
            "prefix_match",
            "suffix_match",
            "contains_match",
        ],
    ),
    (
        "envoy.config.route.v3.QueryParameterMatcher",
        &["name", "string_match", "present_match"],
    ),
    // The engine is RE2 syntax, matched by the `regex` crate.
    ("envoy.type.matcher.v3.RegexMatcher", &["regex", "google_re2"]),
    (
        "envoy.type.matcher.v3.RegexMatchAndSubstitute",
        &["pattern", "substitution"],
    ),
    (
        "envoy.config.route.v3.RouteAction",
        &[
            "cluster",
            "weighted_clusters",
            "timeout",
            "prefix_rewrite",
            "regex_rewrite",
            "host_rewrite_literal",
            "auto_host_rewrite",
            "request_mirror_policies",
            // The route's (`retry.rs`, `routes.rs`).
            "retry_policy",
            // The route's stream idle timeout (MeshTimeout's `http.streamIdleTimeout`).
            "idle_timeout",
            // What a request is hashed by (MeshLoadBalancingStrategy, `balance.rs`).
            "hash_policy",
        ],
    ),
    // What a request is hashed by (`balance.rs`); a header's `regex_rewrite` is not
    // implemented.
    (
        "envoy.config.route.v3.RouteAction.HashPolicy",
        &[
            "header",
            "cookie",
            "connection_properties",
            "query_parameter",
            "filter_state",
            "terminal",
        ],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.Header",
        &["header_name"],
    ),
    // With a `ttl`, the cookie is generated when a request lacks it (`path`, `attributes`
    // written in its `Set-Cookie`).
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.Cookie",
        &["name", "ttl", "path", "attributes"],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.CookieAttribute",
        &["name", "value"],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.FilterState",
        &["key"],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.ConnectionProperties",
        &["source_ip"],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.QueryParameter",
        &["name"],
    ),
    // MeshRetry's `http` section.
    (
        "envoy.config.route.v3.RetryPolicy",
        &[
            // `retry.rs`: previous_priorities (`OmitPreviousPriorities`), by its config's type.
            "retry_priority",
            "retry_on",
            "num_retries",
            "per_try_timeout",
            "retriable_status_codes",
            "retry_back_off",
            // Checked by `retry.rs` (`:method` the one pseudo-header; regular expressions compiled).
            "retriable_headers",
            "retriable_request_headers",
            // `retry.rs`: previous_hosts and omit_host_metadata, by their config's type.
            "retry_host_predicate",
            "host_selection_retry_max_attempts",
            "rate_limited_retry_back_off",
        ],
    ),
    (
        "envoy.config.route.v3.RetryPolicy.RetryBackOff",
        &["base_interval", "max_interval"],
    ),
    (
        "envoy.config.route.v3.RetryPolicy.RetryHostPredicate",
        // The name is a label: Envoy finds the factory by the config's type.
        &["name", "typed_config"],
    ),
    (
        "envoy.config.route.v3.RetryPolicy.RetryPriority",
        // As a host predicate's.
        &["name", "typed_config"],
    ),
    (
        "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
        &["update_frequency"],
    ),
    (
        "envoy.extensions.retry.host.omit_host_metadata.v3.OmitHostMetadataConfig",
        &["metadata_match"],
    ),
    (
        "envoy.config.route.v3.RetryPolicy.RateLimitedRetryBackOff",
        &["reset_headers", "max_interval"],
    ),
    (
        "envoy.config.route.v3.RetryPolicy.ResetHeader",
        &["name", "format"],
    ),
    ("envoy.config.route.v3.WeightedCluster", &["clusters"]),
    (
        "envoy.config.route.v3.WeightedCluster.ClusterWeight",
        &["name", "weight"],
    ),
    (
        "envoy.config.route.v3.RouteAction.RequestMirrorPolicy",
        &["cluster", "runtime_fraction"],
    ),
    // runtime_key: no runtime layer Bearing accepts sets one, so the default applies as in
    // Envoy; the local rate limit takes kuma-cp's keys only (`http_filters.rs`).
    (
        "envoy.config.core.v3.RuntimeFractionalPercent",
        &["default_value", "runtime_key"],
    ),
    (
        "envoy.type.v3.FractionalPercent",
        &["numerator", "denominator"],
    ),
    (
        "envoy.config.route.v3.RedirectAction",
        &[
            "scheme_redirect",
            "https_redirect",
            "host_redirect",
            "port_redirect",
            "path_redirect",
            "prefix_rewrite",
            "regex_rewrite",
            "response_code",
            "strip_query",
        ],
    ),
    (
        "envoy.config.route.v3.DirectResponseAction",
        &["status", "body"],
    ),
    (
        "envoy.config.core.v3.HeaderValueOption",
        &["header", "append_action"],
    ),
    ("envoy.config.core.v3.HeaderValue", &["key", "value"]),
    (
        "envoy.config.cluster.v3.Cluster",
        &[
            "name",
            "type",
            "connect_timeout",
            "eds_cluster_config",
            "load_assignment",
            "circuit_breakers",
            "typed_extension_protocol_options",
            "transport_socket",
            // Per-endpoint transports, selected by `envoy.transport_socket_match` metadata.
            "transport_socket_matches",
            // Statistics naming only.
            "alt_stat_name",
            // 127.0.0.6 / ::6 for inbound passthrough, as Bearing's capture does itself.
            "upstream_bind_config",
            // DNS clusters (`dns_cluster.rs`).
            "dns_lookup_family",
            "dns_refresh_rate",
            "respect_dns_ttl",
            // Endpoint subsets: only selected by a zone proxy's SNI tags.
            "lb_subset_config",
            // Read buffer sizing: Bearing sizes its own buffers.
            "per_connection_buffer_limit_bytes",
            // Load balancing (MeshLoadBalancingStrategy, `balance.rs`).
            "lb_policy",
            "least_request_lb_config",
            "ring_hash_lb_config",
            "maglev_lb_config",
            // Endpoint health (`health.rs`; the runtime's `health`, `health_check`,
            // `outlier` and `priority` modules).
            "health_checks",
            "outlier_detection",
            "common_lb_config",
        ],
    ),
    // The panic threshold (`health.rs`), locality weighting (`balance::check_localities`:
    // by locality weight where the runtime implements it, NACKed by path elsewhere) and the
    // zone-aware config (`health.rs`: kuma-cp's MeshHealthCheck `failTrafficOnPanic`).
    (
        "envoy.config.cluster.v3.Cluster.CommonLbConfig",
        &[
            "healthy_panic_threshold",
            "locality_weighted_lb_config",
            "zone_aware_lb_config",
        ],
    ),
    // `fail_traffic_on_panic` is translated; the other two tune zone-aware routing, which
    // Envoy performs only towards a local cluster (`cluster_manager.local_cluster_name`):
    // kuma-cp sets none and Bearing has none, so they have no effect, in Envoy as here
    // (`health.rs` checks `routing_enabled` as Envoy validates it).
    (
        "envoy.config.cluster.v3.Cluster.CommonLbConfig.ZoneAwareLbConfig",
        &["routing_enabled", "min_cluster_size", "fail_traffic_on_panic"],
    ),
    ("envoy.type.v3.Percent", &["value"]),
    (
        "envoy.config.core.v3.HealthCheck",
        &[
            "timeout",
            "interval",
            "initial_jitter",
            "interval_jitter",
            "interval_jitter_percent",
            "unhealthy_threshold",
            "healthy_threshold",
            "reuse_connection",
            "http_health_check",
            "tcp_health_check",
            "grpc_health_check",
            // The event log: file sinks only (`health.rs`).
            "event_log_path",
            "event_logger",
            "always_log_health_check_failures",
            "always_log_health_check_success",
            "no_traffic_interval",
            "no_traffic_healthy_interval",
            "unhealthy_interval",
            "unhealthy_edge_interval",
            "healthy_edge_interval",
        ],
    ),
    (
        "envoy.config.core.v3.HealthCheck.HttpHealthCheck",
        &[
            "host",
            "path",
            "request_headers_to_add",
            "request_headers_to_remove",
            "expected_statuses",
            "retriable_statuses",
            "codec_client_type",
        ],
    ),
    ("envoy.type.v3.Int64Range", &["start", "end"]),
    (
        "envoy.config.core.v3.HealthCheck.TcpHealthCheck",
        &["send", "receive"],
    ),
    ("envoy.config.core.v3.HealthCheck.Payload", &["text", "binary"]),
    // `initial_metadata` (headers added to the call) is not implemented.
    (
        "envoy.config.core.v3.HealthCheck.GrpcHealthCheck",
        &["service_name", "authority"],
    ),
    (
        "envoy.extensions.health_check.event_sinks.file.v3.HealthCheckEventFileSink",
        &["event_log_path"],
    ),
    (
        "envoy.config.cluster.v3.OutlierDetection",
        &[
            "interval",
            "base_ejection_time",
            "max_ejection_time",
            "max_ejection_percent",
            "consecutive_5xx",
            "consecutive_gateway_failure",
            "consecutive_local_origin_failure",
            "enforcing_consecutive_5xx",
            "enforcing_consecutive_gateway_failure",
            "enforcing_consecutive_local_origin_failure",
            "enforcing_success_rate",
            "enforcing_local_origin_success_rate",
            "enforcing_failure_percentage",
            "enforcing_failure_percentage_local_origin",
            "split_external_local_origin_errors",
            "success_rate_minimum_hosts",
            "success_rate_request_volume",
            "success_rate_stdev_factor",
            "failure_percentage_minimum_hosts",
            "failure_percentage_request_volume",
            "failure_percentage_threshold",
        ],
    ),
    // Slow start is not implemented.
    (
        "envoy.config.cluster.v3.Cluster.LeastRequestLbConfig",
        &["choice_count", "active_request_bias"],
    ),
    // runtime_key: no runtime layer Bearing accepts sets one, so the default applies as in
    // Envoy (least request's `active_request_bias`, `balance.rs`).
    (
        "envoy.config.core.v3.RuntimeDouble",
        &["default_value", "runtime_key"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.RingHashLbConfig",
        &["minimum_ring_size", "maximum_ring_size", "hash_function"],
    ),
    ("envoy.config.cluster.v3.Cluster.MaglevLbConfig", &["table_size"]),
    (
        "envoy.config.cluster.v3.Cluster.TransportSocketMatch",
        &["name", "match", "transport_socket"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.LbSubsetConfig",
        &["fallback_policy", "subset_selectors"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.LbSubsetConfig.LbSubsetSelector",
        &["keys", "fallback_policy"],
    ),
    ("envoy.config.core.v3.BindConfig", &["source_address"]),
    (
        "envoy.config.cluster.v3.Cluster.EdsClusterConfig",
        &["eds_config", "service_name"],
    ),
    (
        "envoy.config.core.v3.ConfigSource",
        &["ads", "resource_api_version"],
    ),
    ("envoy.config.cluster.v3.CircuitBreakers", &["thresholds"]),
    (
        "envoy.config.cluster.v3.CircuitBreakers.Thresholds",
        &[
            "max_connections",
            "max_pending_requests",
            "max_requests",
            "max_retries",
            "max_connection_pools",
            // Statistics only.
            "track_remaining",
        ],
    ),
    (
        "envoy.config.endpoint.v3.ClusterLoadAssignment",
        // The policy's overprovisioning factor is checked by `balance::check_localities`.
        &["cluster_name", "endpoints", "policy"],
    ),
    (
        "envoy.config.endpoint.v3.ClusterLoadAssignment.Policy",
        &["overprovisioning_factor"],
    ),
    (
        "envoy.config.endpoint.v3.LocalityLbEndpoints",
        // The locality and its weight count only under locality weighting
        // (`balance::check_localities`); the priority is each endpoint's level
        // (`Endpoint::priority`).
        &["lb_endpoints", "locality", "priority", "load_balancing_weight"],
    ),
    (
        "envoy.config.core.v3.Locality",
        &["region", "zone", "sub_zone"],
    ),
    (
        "envoy.config.endpoint.v3.LbEndpoint",
        // Weights: `Endpoint::weight`, NACKed where the runtime does not weigh them
        // (`balance::check_weights`).
        &["endpoint", "metadata", "load_balancing_weight"],
    ),
    ("envoy.config.endpoint.v3.Endpoint", &["address"]),
    // `envoy.lb` tags select endpoints; the rest is Kuma's bookkeeping.
    ("envoy.config.core.v3.Metadata", &["filter_metadata"]),
    (
        "envoy.config.core.v3.TransportSocket",
        &["name", "typed_config"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        &["common_tls_context", "sni", "allow_renegotiation"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        &["common_tls_context", "require_client_certificate"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext",
        &[
            "tls_certificate_sds_secret_configs",
            "tls_certificates",
            "combined_validation_context",
            "validation_context",
            "alpn_protocols",
            // kuma-cp's MeshTLS and a gateway's TLS 1.2 floor: read by `tls_params.rs` on
            // every context that terminates or originates TLS (the metrics listener NACKs it).
            "tls_params",
        ],
    ),
    // `ecdh_curves`, `signature_algorithms` and `compliance_policies` stay NACKed: kuma-cp
    // renders none of them.
    (
        "envoy.extensions.transport_sockets.tls.v3.TlsParameters",
        &[
            "tls_minimum_protocol_version",
            "tls_maximum_protocol_version",
            "cipher_suites",
        ],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.CombinedCertificateValidationContext",
        &[
            "default_validation_context",
            "validation_context_sds_secret_config",
        ],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext",
        // custom_validator_config: MeshTrust's SPIFFE validator only; see the translation.
        &[
            "trusted_ca",
            "match_typed_subject_alt_names",
            "custom_validator_config",
        ],
    ),
    // A custom certificate validator (its type checked as an extension) and a gateway's
    // compressor library.
    (
        "envoy.config.core.v3.TypedExtensionConfig",
        &["name", "typed_config"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig",
        &["trust_domains"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig.TrustDomain",
        &["name", "trust_bundle"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher",
        &["san_type", "matcher"],
    ),
    // Subject alt names are verified by exact value, or a mesh's SPIFFE prefix: the
    // translation NACKs the other kinds there (`san_kinds`, `spiffe_matchers`).
    (
        "envoy.type.matcher.v3.StringMatcher",
        &["exact", "prefix", "suffix", "contains", "safe_regex"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig",
        &["name", "sds_config"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.Secret",
        &["name", "tls_certificate", "validation_context"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.TlsCertificate",
        &["certificate_chain", "private_key"],
    ),
    (
        "envoy.config.core.v3.DataSource",
        &["inline_bytes", "inline_string"],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        &["explicit_http_config", "common_http_protocol_options"],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig",
        &["http_protocol_options", "http2_protocol_options"],
    ),
    // Flow-control windows: given to the HTTP/2 client (upstream) or server (gateway).
    (
        "envoy.config.core.v3.Http2ProtocolOptions",
        &["initial_stream_window_size", "initial_connection_window_size"],
    ),
    // Kuma's gRPC statistics filter: Bearing counts its own metrics.
    (
        "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
        &["emit_filter_state", "stats_for_all_methods"],
    ),
    // RBAC (kuma-cp's MeshTrafficPermission), translated by `rbac.rs`, which checks the
    // values (actions, inputs, string matchers) and NACKs what it cannot evaluate.
    (
        "envoy.extensions.filters.network.rbac.v3.RBAC",
        &[
            "rules",
            "matcher",
            "shadow_rules",
            "shadow_matcher",
            // Statistics naming only.
            "stat_prefix",
            "shadow_rules_stat_prefix",
        ],
    ),
    (
        "envoy.extensions.filters.http.rbac.v3.RBAC",
        &[
            "rules",
            "matcher",
            "shadow_rules",
            "shadow_matcher",
            // Statistics naming only.
            "rules_stat_prefix",
            "shadow_rules_stat_prefix",
        ],
    ),
    ("envoy.config.rbac.v3.RBAC", &["action", "policies"]),
    (
        "envoy.config.rbac.v3.Policy",
        &["permissions", "principals"],
    ),
    (
        "envoy.config.rbac.v3.Permission",
        &["any", "and_rules", "or_rules", "not_rule"],
    ),
    ("envoy.config.rbac.v3.Permission.Set", &["rules"]),
    (
        "envoy.config.rbac.v3.Principal",
        &["any", "authenticated", "and_ids", "or_ids", "not_id"],
    ),
    ("envoy.config.rbac.v3.Principal.Set", &["ids"]),
    (
        "envoy.config.rbac.v3.Principal.Authenticated",
        &["principal_name"],
    ),
    ("envoy.config.rbac.v3.Action", &["name", "action"]),
    (
        "xds.type.matcher.v3.Matcher",
        &["matcher_list", "on_no_match"],
    ),
    ("xds.type.matcher.v3.Matcher.MatcherList", &["matchers"]),
    (
        "xds.type.matcher.v3.Matcher.MatcherList.FieldMatcher",
        &["predicate", "on_match"],
    ),
    (
        "xds.type.matcher.v3.Matcher.MatcherList.Predicate",
        &[
            "single_predicate",
            "or_matcher",
            "and_matcher",
            "not_matcher",
        ],
    ),
    (
        "xds.type.matcher.v3.Matcher.MatcherList.Predicate.SinglePredicate",
        &["input", "value_match"],
    ),
    (
        "xds.type.matcher.v3.Matcher.MatcherList.Predicate.PredicateList",
        &["predicate"],
    ),
    ("xds.type.matcher.v3.Matcher.OnMatch", &["action"]),
    (
        "xds.core.v3.TypedExtensionConfig",
        &["name", "typed_config"],
    ),
    (
        "xds.type.matcher.v3.StringMatcher",
        &["exact", "prefix", "suffix", "contains"],
    ),
    // MeshFaultInjection and MeshRateLimit, translated by `http_filters.rs`, which checks
    // the values.
    // kuma-cp's MeshAccessLog program only, by its source (`lua.rs`).
    ("envoy.extensions.filters.http.lua.v3.Lua", &["default_source_code"]),
    (
        "envoy.extensions.filters.http.fault.v3.HTTPFault",
        &["delay", "abort", "headers"],
    ),
    (
        "envoy.extensions.filters.common.fault.v3.FaultDelay",
        &["fixed_delay", "percentage"],
    ),
    (
        "envoy.extensions.filters.http.fault.v3.FaultAbort",
        &["http_status", "percentage"],
    ),
    (
        "envoy.extensions.common.matching.v3.ExtensionWithMatcher",
        &["xds_matcher", "extension_config"],
    ),
    (
        "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        &[
            // Statistics naming only.
            "stat_prefix",
            "token_bucket",
            "filter_enabled",
            "filter_enforced",
            "status",
            "response_headers_to_add",
        ],
    ),
    (
        "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit",
        // Statistics naming only: stat_prefix.
        &["stat_prefix", "token_bucket"],
    ),
    (
        "envoy.type.v3.TokenBucket",
        &["max_tokens", "tokens_per_fill", "fill_interval"],
    ),
    ("envoy.type.v3.HttpStatus", &["code"]),
];

/// Extensions (`typed_config` types) whose configuration is walked; any other is NACKed.
const EXTENSIONS: &[&str] = &[
    "envoy.extensions.health_check.event_sinks.file.v3.HealthCheckEventFileSink",
    "envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    "envoy.extensions.access_loggers.file.v3.FileAccessLog",
    "envoy.extensions.filters.network.direct_response.v3.Config",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "envoy.extensions.filters.http.router.v3.Router",
    "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    "envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "envoy.config.core.v3.Http1ProtocolOptions",
    "envoy.config.core.v3.Http2ProtocolOptions",
    "envoy.config.rbac.v3.Action",
    "envoy.extensions.matching.common_inputs.ssl.v3.UriSanInput",
    "envoy.extensions.matching.common_inputs.network.v3.ServerNameInput",
    // MeshRetry's host selection (`retry.rs`).
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
    "envoy.extensions.retry.host.omit_host_metadata.v3.OmitHostMetadataConfig",
    "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
];

/// The policy filters walked on sidecar and zone proxy listeners, whose translation reads them
/// (RBAC: `rbac.rs`; faults and local rate limits: `http_filters.rs`); on a builtin gateway
/// they stay policies not enforced ([`POLICY_EXTENSIONS`]).
const PROXY_POLICY_FILTERS: &[&str] = &[
    "envoy.extensions.filters.network.rbac.v3.RBAC",
    "envoy.extensions.filters.http.rbac.v3.RBAC",
    crate::http_filters::HTTP_FAULT,
    crate::http_filters::HTTP_LOCAL_RATE_LIMIT,
    crate::http_filters::NETWORK_LOCAL_RATE_LIMIT,
    crate::http_filters::EXTENSION_WITH_MATCHER,
    crate::http_filters::SKIP_FILTER,
    crate::lua::LUA,
];

/// Fields accepted on a builtin gateway's listeners and route configurations only: Kuma's
/// gateway defaults, which Bearing's gateway runtime serves itself (`server: Kuma Gateway`,
/// `x-forwarded-for`, underscores refused, path hygiene, 5 s for a request's headers, 300 s
/// idle). The gateway translation (`gateway.rs`) checks each value and NACKs any other by its
/// path, so a sidecar listener still gets them NACKed here.
const GATEWAY_ACCEPTED: &[(&str, &[&str])] = &[
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        &[
            "rds",
            "server_name",
            "use_remote_address",
            // HTTP/2: its windows are the gateway's (the translation); concurrent streams
            // and CONNECT are Bearing's own settings.
            "http2_protocol_options",
        ],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.Rds",
        &["config_source", "route_config_name"],
    ),
    (
        "envoy.config.core.v3.HttpProtocolOptions",
        &["headers_with_underscores_action"],
    ),
    (
        "envoy.config.core.v3.Http2ProtocolOptions",
        &["allow_connect", "max_concurrent_streams"],
    ),
    (
        "envoy.config.route.v3.RouteConfiguration",
        &["ignore_port_in_host_matching"],
    ),
    ("envoy.config.route.v3.VirtualHost", &["require_tls"]),
    (
        "envoy.config.route.v3.RouteAction",
        // The answer of a route to Kuma's unresolved backend; another Cluster that has not
        // come is awaited, never served.
        &["cluster_not_found_response_code"],
    ),
    // Kuma's `x-kuma-tags` only (checked by the translation); the gateway removes it anyway.
    (
        "envoy.config.route.v3.WeightedCluster.ClusterWeight",
        &["request_headers_to_add"],
    ),
    // Kuma's gzip response compression, translated by `compressor.rs` (which checks the
    // values): the runtime compresses as Envoy's compressor filter does.
    (
        "envoy.extensions.filters.http.compressor.v3.Compressor",
        &["compressor_library", "response_direction_config"],
    ),
    (
        "envoy.extensions.filters.http.compressor.v3.Compressor.ResponseDirectionConfig",
        &[
            "common_config",
            "disable_on_etag_header",
            "weaken_etag_on_compress",
            "remove_accept_encoding_header",
            "uncompressible_response_codes",
        ],
    ),
    (
        "envoy.extensions.filters.http.compressor.v3.Compressor.CommonDirectionConfig",
        &["min_content_length", "content_type"],
    ),
    (
        "envoy.extensions.compression.gzip.compressor.v3.Gzip",
        &[
            "memory_level",
            "compression_level",
            "compression_strategy",
            "window_bits",
            "chunk_size",
        ],
    ),
];

/// Extensions walked on a builtin gateway only (see [`GATEWAY_ACCEPTED`]).
const GATEWAY_EXTENSIONS: &[&str] = &[
    "envoy.extensions.filters.http.compressor.v3.Compressor",
    "envoy.extensions.compression.gzip.compressor.v3.Gzip",
];

/// Which fields a resource may set: a sidecar's or zone proxy's, or also a builtin gateway's
/// defaults ([`GATEWAY_ACCEPTED`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Guard {
    /// The fields of [`ACCEPTED`].
    Proxy,
    /// Those and the gateway's.
    Gateway,
}

/// Fields that carry a Kuma policy Bearing does not enforce over xDS yet, with the policy.
pub(crate) const POLICY_FIELDS: &[(&str, &str)] = &[
    ("HttpConnectionManager.tracing", "tracing"),
    ("RetryPolicy.per_try_idle_timeout", "retries"),
    // A route's and a connection manager's stream and connection lifetimes (zero accepted,
    // as kuma-cp renders none there; a cluster's are translated, `is_upstream_lifetime`).
    ("RouteAction.max_stream_duration", "timeouts"),
    ("HttpProtocolOptions.max_stream_duration", "timeouts"),
    ("HttpProtocolOptions.max_connection_duration", "timeouts"),
];

/// Extensions that are Kuma policies, with the policy.
const POLICY_EXTENSIONS: &[(&str, &str)] = &[
    ("envoy.extensions.filters.network.rbac.v3.RBAC", "RBAC"),
    ("envoy.extensions.filters.http.rbac.v3.RBAC", "RBAC"),
    (
        "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "rate limits",
    ),
    (
        "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit",
        "rate limits",
    ),
    (
        "envoy.extensions.filters.http.fault.v3.HTTPFault",
        "fault injection",
    ),
    (
        "envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
        "access logs to OpenTelemetry",
    ),
    (
        "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
        "access logs over gRPC",
    ),
    (
        "envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig",
        "access logs over gRPC",
    ),
    // Kuma wraps per-source MeshFaultInjection and MeshRateLimit filters in a matcher.
    (
        "envoy.extensions.common.matching.v3.ExtensionWithMatcher",
        "per-source filters (MeshFaultInjection, MeshRateLimit)",
    ),
];

/// The end of the reason of every NACK that is a Kuma policy (`<policy>: ...`).
pub const POLICY_NOT_ENFORCED: &str = "a Kuma policy Bearing does not enforce over xDS yet";

/// A field that is not translated: its path and why.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Unhandled {
    pub path: String,
    pub reason: String,
}

/// Fields accepted, by message full name: a lookup borrows the message's and the field's
/// names, where a `"message.field"` key was formatted for every field of every resource (the
/// guard walks the whole state on each push, 30k resources at 10k services).
type FieldSets = HashMap<&'static str, HashSet<&'static str>>;

fn accepted(guard: Guard) -> &'static FieldSets {
    static PROXY: OnceLock<FieldSets> = OnceLock::new();
    static GATEWAY: OnceLock<FieldSets> = OnceLock::new();
    let sets = |lists: &[&[(&'static str, &'static [&'static str])]]| -> FieldSets {
        let mut sets = FieldSets::new();
        for (message, fields) in lists.iter().flat_map(|l| l.iter()) {
            sets.entry(message).or_default().extend(fields.iter());
        }
        sets
    };
    match guard {
        Guard::Proxy => PROXY.get_or_init(|| sets(&[ACCEPTED])),
        Guard::Gateway => GATEWAY.get_or_init(|| sets(&[ACCEPTED, GATEWAY_ACCEPTED])),
    }
}

/// Whether `guard` accepts `field` of the message named `message` (full name).
fn accepts(guard: Guard, message: &str, field: &str) -> bool {
    accepted(guard)
        .get(message)
        .is_some_and(|fields| fields.contains(field))
}

/// The policy a field or extension belongs to, if any (`message` is a full name).
pub(crate) fn policy_of(message: &str, field: &str) -> Option<&'static str> {
    static BY_MESSAGE: OnceLock<HashMap<&'static str, HashMap<&'static str, &'static str>>> =
        OnceLock::new();
    let by_message = BY_MESSAGE.get_or_init(|| {
        let mut map: HashMap<&'static str, HashMap<&'static str, &'static str>> = HashMap::new();
        for (at, policy) in POLICY_FIELDS {
            if let Some((short, field)) = at.split_once('.') {
                map.entry(short).or_default().insert(field, policy);
            }
        }
        map
    });
    let short = message.rsplit('.').next().unwrap_or(message);
    by_message.get(short)?.get(field).copied()
}

/// Whether a field is one of a cluster's upstream HTTP lifetimes (its protocol options'
/// idle timeout, maximum connection and stream durations: MeshTimeout's), which the cluster
/// translation reads; the durations of a connection manager stay a policy NACK unless zero
/// (its idle timeout is accepted everywhere).
fn is_upstream_lifetime(message: &str, field: &str, path: &str) -> bool {
    message == "envoy.config.core.v3.HttpProtocolOptions"
        && matches!(
            field,
            "idle_timeout" | "max_connection_duration" | "max_stream_duration"
        )
        && path.contains(".typed_extension_protocol_options")
}

/// Walks every set field of `message` (at `path`) and reports those `guard` does not accept.
/// `path` is one buffer for the whole walk: each step appends its part and takes it off
/// again, so a path is allocated only for what is reported.
fn unhandled(message: &DynamicMessage, path: &mut String, guard: Guard, out: &mut Vec<Unhandled>) {
    let descriptor = message.descriptor();
    let name = descriptor.full_name();
    for (field, value) in message.fields() {
        let len = path.len();
        path.push('.');
        path.push_str(field.name());
        // A gateway default the gateway translation checks by value.
        let gateway_default = guard == Guard::Gateway
            && !accepts(Guard::Proxy, name, field.name())
            && accepts(guard, name, field.name());
        if gateway_default || is_upstream_lifetime(name, field.name(), path) {
            walk_value(value, path, guard, out);
        } else if let Some(policy) = policy_of(name, field.name()) {
            if !(policy == "timeouts" && is_kuma_default_timeout(value)) {
                out.push(Unhandled {
                    path: path.clone(),
                    reason: format!("{policy}: {POLICY_NOT_ENFORCED}"),
                });
            }
        } else if !accepts(guard, name, field.name()) {
            out.push(Unhandled {
                path: path.clone(),
                reason: format!("{name}.{} is not implemented by Bearing", field.name()),
            });
        } else {
            walk_value(value, path, guard, out);
        }
        path.truncate(len);
    }
}

fn walk_value(value: &Value, path: &mut String, guard: Guard, out: &mut Vec<Unhandled>) {
    use std::fmt::Write as _;
    match value {
        Value::Message(m) if m.descriptor().full_name() == "google.protobuf.Any" => {
            walk_any(m, path, guard, out)
        }
        Value::Message(m) if m.descriptor().full_name().starts_with("google.protobuf.") => {}
        Value::Message(m) => unhandled(m, path, guard, out),
        Value::List(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                let _ = write!(path, "[{i}]");
                walk_value(item, path, guard, out);
                path.truncate(len);
            }
        }
        Value::Map(entries) => {
            for (key, item) in entries {
                let len = path.len();
                let _ = match key {
                    MapKey::String(s) => write!(path, "[{s:?}]"),
                    other => write!(path, "[{other:?}]"),
                };
                walk_value(item, path, guard, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

fn walk_any(any: &DynamicMessage, path: &mut String, guard: Guard, out: &mut Vec<Unhandled>) {
    let type_url = any
        .get_field_by_name("type_url")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let type_name = type_url.strip_prefix(TYPE_URL_PREFIX).unwrap_or(&type_url);
    let len = path.len();
    path.push('(');
    path.push_str(type_name);
    path.push(')');
    walk_extension(type_name, any, path, guard, out);
    path.truncate(len);
}

/// Walks an `Any` of type `type_name` at `path` (its type named in the path).
fn walk_extension(
    type_name: &str,
    any: &DynamicMessage,
    path: &mut String,
    guard: Guard,
    out: &mut Vec<Unhandled>,
) {
    let bytes = any
        .get_field_by_name("value")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    let proxy_read = match guard {
        Guard::Proxy => PROXY_POLICY_FILTERS.contains(&type_name),
        // MeshRateLimit on a builtin gateway: its routes' buckets (`gateway.rs`).
        Guard::Gateway => type_name == crate::http_filters::HTTP_LOCAL_RATE_LIMIT,
    };
    if let Some((_, policy)) = POLICY_EXTENSIONS
        .iter()
        .find(|(t, _)| *t == type_name)
        .filter(|_| !proxy_read)
    {
        if rbac_allows_all(type_name, &bytes) || rate_limit_is_idle(type_name, &bytes) {
            return;
        }
        out.push(Unhandled {
            path: path.clone(),
            reason: format!("{policy}: {POLICY_NOT_ENFORCED}"),
        });
        return;
    }
    let gateway_only = guard == Guard::Gateway && GATEWAY_EXTENSIONS.contains(&type_name);
    if !EXTENSIONS.contains(&type_name) && !gateway_only && !proxy_read {
        out.push(Unhandled {
            path: path.clone(),
            reason: format!("extension {type_name} is not implemented by Bearing"),
        });
        return;
    }
    let decoded = descriptor_pool()
        .ok()
        .and_then(|pool| pool.get_message_by_name(type_name))
        .map(|d| DynamicMessage::decode(d, bytes));
    match decoded {
        Some(Ok(message)) => unhandled(&message, path, guard, out),
        _ => out.push(Unhandled {
            path: path.clone(),
            reason: format!("{type_name} does not decode"),
        }),
    }
}

/// Whether a local rate limit filter limits nothing: Kuma's HTTP `local_ratelimit` with no
/// token bucket (Envoy applies none at the listener level; a MeshRateLimit comes as a route's
/// `typed_per_filter_config`).
fn rate_limit_is_idle(type_name: &str, bytes: &[u8]) -> bool {
    use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
    use prost::Message;
    if type_name != "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit" {
        return false;
    }
    LocalRateLimit::decode(bytes).is_ok_and(|l| {
        l == LocalRateLimit {
            stat_prefix: l.stat_prefix.clone(),
            ..LocalRateLimit::default()
        }
    })
}

/// Whether a timeout a policy could set has the value Kuma gives it without one: zero
/// (disabled, as when absent).
fn is_kuma_default_timeout(value: &Value) -> bool {
    let Value::Message(d) = value else {
        return false;
    };
    let part = |name: &str| {
        d.get_field_by_name(name)
            .and_then(|v| v.as_i64().or(v.as_i32().map(i64::from)))
    };
    matches!((part("seconds"), part("nanos")), (Some(0), Some(0)))
}

/// Whether an RBAC filter allows every connection or request: Kuma's default
/// MeshTrafficPermission (allow all) in an mTLS mesh, which changes nothing Bearing serves.
fn rbac_allows_all(type_name: &str, bytes: &[u8]) -> bool {
    use envoy_types::pb::envoy::config::rbac::v3 as rbac;
    let allows_all = |rules: Option<&rbac::Rbac>| {
        rules.is_some_and(|r| {
            r.action == rbac::rbac::Action::Allow as i32
                && r.audit_logging_options.is_none()
                && r.policies.values().any(|p| {
                    p.condition.is_none()
                        && p.checked_condition.is_none()
                        && p.permissions
                            .iter()
                            .any(|x| matches!(x.rule, Some(rbac::permission::Rule::Any(true))))
                        && p.principals.iter().any(|x| {
                            matches!(x.identifier, Some(rbac::principal::Identifier::Any(true)))
                        })
                })
        })
    };
    // The network and HTTP filters share these field names.
    let Some(filter) = descriptor_pool()
        .ok()
        .and_then(|pool| pool.get_message_by_name(type_name))
        .and_then(|d| DynamicMessage::decode(d, bytes).ok())
    else {
        return false;
    };
    let rules = match filter.get_field_by_name("rules").as_deref() {
        Some(Value::Message(m)) if filter.has_field_by_name("rules") => {
            m.transcode_to::<rbac::Rbac>().ok()
        }
        _ => None,
    };
    ["matcher", "shadow_rules", "shadow_matcher"]
        .iter()
        .all(|f| !filter.has_field_by_name(f))
        && allows_all(rules.as_ref())
}

/// Walks a resource given as its message bytes with the sidecar's guard.
pub(crate) fn unhandled_in(type_name: &str, bytes: &[u8], path: &str) -> Vec<Unhandled> {
    unhandled_with(type_name, bytes, path, Guard::Proxy)
}

/// Walks a resource given as its message bytes, accepting what `guard` accepts.
pub(crate) fn unhandled_with(
    type_name: &str,
    bytes: &[u8],
    path: &str,
    guard: Guard,
) -> Vec<Unhandled> {
    let mut out = Vec::new();
    let decoded = descriptor_pool()
        .ok()
        .and_then(|pool| pool.get_message_by_name(type_name))
        .map(|d| DynamicMessage::decode(d, bytes));
    match decoded {
        Some(Ok(message)) => unhandled(&message, &mut path.to_string(), guard, &mut out),
        _ => out.push(Unhandled {
            path: path.to_string(),
            reason: format!("{type_name} does not decode"),
        }),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode_json_resource, CLUSTER, ROUTE_CONFIGURATION};

    fn walk(json: serde_json::Value) -> Vec<Unhandled> {
        let any = decode_json_resource(CLUSTER, &json).unwrap();
        unhandled_in(
            "envoy.config.cluster.v3.Cluster",
            &any.value,
            "clusters[\"c\"]",
        )
    }

    #[test]
    fn accepted_fields_pass_and_others_are_named() {
        let ok = walk(serde_json::json!({"name": "c", "connectTimeout": "5s", "type": "EDS"}));
        assert_eq!(ok, vec![]);
        // kuma-cp's MeshHealthCheck gRPC check with its event log.
        let ok = walk(serde_json::json!({"name": "c", "healthChecks": [{
            "grpcHealthCheck": {"authority": "a", "serviceName": "s"}, "interval": "1s",
            "timeout": "1s", "unhealthyThreshold": 1, "healthyThreshold": 1,
            "alwaysLogHealthCheckFailures": true, "eventLogger": [{
                "name": "envoy.health_check.event_sinks.file", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.health_check.event_sinks.file.v3.HealthCheckEventFileSink",
                "eventLogPath": "/tmp/hc.log"}}]}]}));
        assert_eq!(ok, vec![]);
        let bad = walk(serde_json::json!({"name": "c", "dnsJitter": "1s"}));
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].path, "clusters[\"c\"].dns_jitter");
        assert!(bad[0].reason.contains("not implemented"));
    }

    #[test]
    fn policies_are_named_as_policies() {
        // kuma-cp's MeshHealthCheck `failTrafficOnPanic` passes, zone-aware fields and all.
        let bad = walk(
            serde_json::json!({"name": "c", "commonLbConfig": {"zoneAwareLbConfig": {
                "failTrafficOnPanic": true, "minClusterSize": "3", "routingEnabled": {"value": 50}}},
            "transportSocket": {"name": "envoy.transport_sockets.tls", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "commonTlsContext": {"tlsParams": {"tlsMinimumProtocolVersion": "TLSv1_2"}}}},
            "healthChecks": [{"grpcHealthCheck": {"authority": "a",
                "initialMetadata": [{"header": {"key": "a", "value": "b"}}]}}]}),
        );
        let reasons: Vec<_> = bad
            .iter()
            .map(|u| (u.path.as_str(), u.reason.as_str()))
            .collect();
        // Nor do MeshTLS's `tls_params` (read by `tls_params.rs`).
        assert!(
            !reasons
                .iter()
                .any(|(p, _)| p.contains("common_lb_config") || p.contains("tls_params")),
            "{reasons:?}"
        );
        // A gRPC check is translated but for its initial metadata.
        let grpc: Vec<_> = reasons
            .iter()
            .filter(|(p, _)| p.contains("grpc_health_check"))
            .collect();
        assert_eq!(grpc.len(), 1, "{reasons:?}");
        assert!(grpc[0].0.ends_with("grpc_health_check.initial_metadata"));
        assert!(grpc[0].1.contains("not implemented"));
    }

    /// kuma-cp 2.14's MeshRetry `hostSelection` (its `http.listeners.golden.yaml`): the
    /// host predicates, their attempts, `OmitPreviousPriorities`' `retry_priority` and the
    /// rate-limited back-off pass to `retry.rs`.
    #[test]
    fn kumas_host_selection_and_its_retry_priority_pass() {
        let route = serde_json::json!({"name": "r", "virtualHosts": [{"name": "v",
            "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {
                "cluster": "backend", "retryPolicy": {
                    "retryOn": "5xx", "hostSelectionRetryMaxAttempts": "2",
                    "rateLimitedRetryBackOff": {"maxInterval": "5s", "resetHeaders": [
                        {"name": "retry-after-http"},
                        {"name": "x-retry-after-http", "format": "UNIX_TIMESTAMP"}]},
                    "retryHostPredicate": [
                        {"name": "envoy.retry_host_predicates.previous_hosts", "typedConfig": {
                            "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}},
                        {"name": "envoy.retry_host_predicates.omit_host_metadata", "typedConfig": {
                            "@type": "type.googleapis.com/envoy.extensions.retry.host.omit_host_metadata.v3.OmitHostMetadataConfig",
                            "metadataMatch": {"filterMetadata": {"envoy.lb": {"test": "test"}}}}}],
                    "retryPriority": {"name": "envoy.retry_priorities.previous_priorities",
                        "typedConfig": {
                            "@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
                            "updateFrequency": 2}}}}}]}]});
        let any = decode_json_resource(ROUTE_CONFIGURATION, &route).unwrap();
        let bad = unhandled_in(
            "envoy.config.route.v3.RouteConfiguration",
            &any.value,
            "routes",
        );
        assert!(bad.is_empty(), "{bad:?}");
    }

    #[test]
    fn unknown_extension_is_named_with_its_type() {
        let bad = walk(
            serde_json::json!({"name": "c", "transportSocket": {"name": "x", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}),
        );
        assert_eq!(bad[0].path, "clusters[\"c\"].transport_socket.typed_config(envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer)");
    }
}

//! kuma-dp's flags and environment that only steer Envoy, CoreDNS or kuma-dp's own helpers
//! (Kuma release-2.14, `app/kuma-dp/cmd/run.go` and `root.go`). Bearing has none of those
//! parts; it accepts them so that existing manifests and unit files keep working, and logs
//! each one given once as having no effect.

/// Flags of `kuma-dp run` that have no effect in Bearing.
#[derive(Debug, Default, clap::Args)]
pub struct NoEffectFlags {
    /// kuma-dp: path of the Envoy binary. No effect (no Envoy).
    #[arg(long, env = "KUMA_DATAPLANE_RUNTIME_BINARY_PATH", hide = true)]
    binary_path: Option<String>,
    /// kuma-dp: Envoy's log level. No effect (no Envoy; see --log-level).
    #[arg(long, env = "KUMA_DATAPLANE_RUNTIME_ENVOY_LOG_LEVEL", hide = true)]
    envoy_log_level: Option<String>,
    /// kuma-dp: Envoy's --component-log-level. No effect.
    #[arg(
        long,
        env = "KUMA_DATAPLANE_RUNTIME_ENVOY_COMPONENT_LOG_LEVEL",
        hide = true
    )]
    envoy_component_log_level: Option<String>,
    /// kuma-dp: bind outbound listeners to 127.0.0.0/8 addresses. Not supported.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", env = "KUMA_DATAPLANE_RUNTIME_BIND_OUTBOUNDS", hide = true)]
    bind_outbounds: Option<String>,
    /// kuma-dp: path of the CoreDNS binary. No effect (Bearing answers DNS itself).
    #[arg(long, env = "KUMA_DNS_CORE_DNS_BINARY_PATH", hide = true)]
    dns_coredns_path: Option<String>,
    /// kuma-dp: CoreDNS config template. No effect.
    #[arg(long, env = "KUMA_DNS_CORE_DNS_CONFIG_TEMPLATE_PATH", hide = true)]
    dns_coredns_config_template_path: Option<String>,
    /// kuma-dp: where the CoreDNS config is written. No effect.
    #[arg(long, env = "KUMA_DNS_CONFIG_DIR", hide = true)]
    dns_server_config_dir: Option<String>,
    /// kuma-dp: CoreDNS's Prometheus port. No effect (DNS counters are in Bearing's stats).
    #[arg(long, env = "KUMA_DNS_PROMETHEUS_PORT", hide = true)]
    dns_prometheus_port: Option<String>,
    /// kuma-dp: CoreDNS query logging. No effect.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", env = "KUMA_DNS_ENABLE_LOGGING", hide = true)]
    dns_enable_logging: Option<String>,
    /// kuma-dp: transparent proxy with default settings. No effect: Bearing reads transparent
    /// proxying from the Dataplane's `networking.transparentProxying`.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", hide = true)]
    transparent_proxy: Option<String>,
    /// kuma-dp: transparent proxy settings files. No effect (as --transparent-proxy).
    #[arg(long, hide = true)]
    transparent_proxy_config: Vec<String>,
    /// kuma-dp: log file. No effect (Bearing logs to stderr).
    #[arg(long, hide = true)]
    log_output_path: Option<String>,
    /// kuma-dp: log file rotation. No effect.
    #[arg(long, hide = true)]
    log_max_retained_files: Option<String>,
    /// kuma-dp: log file rotation. No effect.
    #[arg(long, hide = true)]
    log_max_size: Option<String>,
    /// kuma-dp: log file rotation. No effect.
    #[arg(long, hide = true)]
    log_max_age: Option<String>,
}

/// kuma-dp settings read from the environment only (no flag) that have no effect in Bearing,
/// with why.
const NO_EFFECT_ENV: &[(&str, &str)] = &[
    (
        "KUMA_DATAPLANE_RUNTIME_OTEL_PIPE_ENABLED",
        "Bearing does not relay OpenTelemetry over Unix sockets",
    ),
    (
        "KUMA_APPLICATION_PROBE_PROXY_PORT",
        "the application probe proxy is not built",
    ),
    (
        "KUMA_DATAPLANE_RUNTIME_SPIRE_SUPPORTED",
        "SPIRE is not supported",
    ),
    (
        "KUMA_DATAPLANE_RUNTIME_SPIRE_SOCKET_PATH",
        "SPIRE is not supported",
    ),
    (
        "KUMA_DATAPLANE_RUNTIME_ENVOY_XDS_TRANSPORT_PROTOCOL_VARIANT",
        "Bearing's ADS client speaks State of the World (GRPC) only",
    ),
    (
        "KUMA_DATAPLANE_RUNTIME_UNIFIED_RESOURCE_NAMING_ENABLED",
        "Bearing keeps Kuma's classic resource names",
    ),
    (
        "KUMA_DATAPLANE_RUNTIME_REUSE_PORT_ENABLED",
        "Bearing lays out its listening sockets itself",
    ),
    (
        "KUMA_DATAPLANE_RUNTIME_STRICT_INBOUND_PORTS_ENABLED",
        "Bearing always advertises strict inbound ports",
    ),
    (
        "KUMA_DNS_PROXY_PORT",
        "Bearing answers DNS itself on --dns-port",
    ),
    (
        "KUMA_DATAPLANE_RESOURCES_MAX_MEMORY_BYTES",
        "it sizes Envoy's overload manager",
    ),
];

impl NoEffectFlags {
    /// Logs, once each, every one of these flags (or its variable) that was given, and every
    /// environment-only kuma-dp setting that is set, as having no effect.
    pub fn log_given(&self) {
        let single = [
            ("--binary-path", &self.binary_path, "no Envoy to start"),
            (
                "--envoy-log-level",
                &self.envoy_log_level,
                "no Envoy; --log-level sets Bearing's",
            ),
            (
                "--envoy-component-log-level",
                &self.envoy_component_log_level,
                "no Envoy",
            ),
            (
                "--bind-outbounds",
                &self.bind_outbounds,
                "outbounds bound to 127.0.0.0/8 are not supported",
            ),
            (
                "--dns-coredns-path",
                &self.dns_coredns_path,
                "no CoreDNS: Bearing answers DNS itself",
            ),
            (
                "--dns-coredns-config-template-path",
                &self.dns_coredns_config_template_path,
                "no CoreDNS",
            ),
            (
                "--dns-server-config-dir",
                &self.dns_server_config_dir,
                "no CoreDNS",
            ),
            (
                "--dns-prometheus-port",
                &self.dns_prometheus_port,
                "no CoreDNS; DNS counters are in Bearing's stats",
            ),
            (
                "--dns-enable-logging",
                &self.dns_enable_logging,
                "no CoreDNS",
            ),
            (
                "--transparent-proxy",
                &self.transparent_proxy,
                "transparent proxying is read from the Dataplane resource",
            ),
            (
                "--log-output-path",
                &self.log_output_path,
                "Bearing logs to stderr",
            ),
            (
                "--log-max-retained-files",
                &self.log_max_retained_files,
                "Bearing logs to stderr",
            ),
            (
                "--log-max-size",
                &self.log_max_size,
                "Bearing logs to stderr",
            ),
            ("--log-max-age", &self.log_max_age, "Bearing logs to stderr"),
        ];
        for (flag, value, why) in single {
            if let Some(value) = value {
                tracing::info!(flag, value = %value, "kuma-dp flag accepted with no effect: {why}");
            }
        }
        if !self.transparent_proxy_config.is_empty() {
            tracing::info!(
                flag = "--transparent-proxy-config",
                value = ?self.transparent_proxy_config,
                "kuma-dp flag accepted with no effect: transparent proxying is read from the Dataplane resource"
            );
        }
        for (variable, why) in NO_EFFECT_ENV {
            if let Ok(value) = std::env::var(variable) {
                tracing::info!(variable, value = %value, "kuma-dp setting accepted with no effect: {why}");
            }
        }
    }
}

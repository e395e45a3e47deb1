//! The command line's words: every subcommand and flag of `bearing`, as clap parses them.
//!
//! Flags follow `kuma-dp run` where it has them, and read the same `KUMA_…` environment
//! variables; Bearing's own flags read `BEARING_…`. What the commands do is in [`crate::cli`]
//! (and [`crate::cp_source`] for the control-plane path); both read the flags from here, so
//! neither depends on the other for them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bearing_control::{ProxyKind, VipOptions};
use clap::{Parser, Subcommand, ValueEnum};

use crate::kuma_dp_flags::NoEffectFlags;

/// Bearing: a service-mesh data-plane proxy for Kuma, without Envoy.
#[derive(Debug, Parser)]
#[command(name = "bearing", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Run(Box<RunArgs>),
    /// Check a directory store; print `file:line: problem` for each problem and exit 1 if any.
    Validate {
        /// The store folder.
        dir: PathBuf,
    },
    /// Install or remove the iptables rules of transparent proxying (as `kumactl install
    /// transparent-proxy` / `kumactl uninstall transparent-proxy`).
    #[command(subcommand)]
    TransparentProxy(TransparentProxy),
    /// Certificate authority tools for mesh mTLS.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Print the version.
    Version,
}

/// `bearing ca` subcommands.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a mesh's builtin CA and write it into a directory store as the two Secrets
    /// kuma-cp would create (`<mesh>.ca-builtin-cert-<backend>`, `<mesh>.ca-builtin-key-<backend>`).
    Generate {
        /// The CA: `--store` is where `ca-<mesh>-<backend>.yaml` is written.
        #[command(flatten)]
        ca: CaTarget,
        /// Replace an existing file (every proxy then needs new certificates).
        #[arg(long)]
        force: bool,
    },
    /// Issue one proxy's mesh identity ahead of time, so that its store never holds the CA
    /// key: a leaf signed by the mesh CA of `--store` (the operator's admin store), written as
    /// the Secret `<mesh>.identity-<dataplane>` into `--out-store` (that proxy's store), with
    /// the CA certificate Secret it verifies peers with (builtin CA). The proxy cannot renew
    /// it: run this again (with `--force`) before it expires.
    Issue {
        /// The CA: `--store` holds the Mesh, its CA with the key, and the Dataplane.
        #[command(flatten)]
        ca: CaTarget,
        /// Dataplane (or zone proxy) the identity is for.
        #[arg(long)]
        dataplane: String,
        /// Services the identity carries (comma-separated); default: the Dataplane's inbound
        /// services in `--store`.
        #[arg(long, value_delimiter = ',')]
        services: Vec<String>,
        /// Directory store of that proxy to write into (default: `--store`).
        #[arg(long)]
        out_store: Option<PathBuf>,
        /// Lifetime of the certificate (Go duration).
        #[arg(long, default_value = "720h")]
        validity: String,
        /// Replace an existing identity Secret file.
        #[arg(long)]
        force: bool,
    },
}

/// The mesh CA a `bearing ca` command works on.
#[derive(Debug, clap::Args)]
pub struct CaTarget {
    /// Mesh of the CA.
    #[arg(long)]
    pub mesh: String,
    /// Name of the Mesh's mTLS backend.
    #[arg(long, default_value = "ca-1")]
    pub backend: String,
    /// Directory store of the CA.
    #[arg(long)]
    pub store: PathBuf,
}

/// `bearing transparent-proxy` subcommands.
#[derive(Debug, Subcommand)]
pub enum TransparentProxy {
    /// Redirect this host's (network namespace's) traffic to the proxy; needs root unless
    /// --dry-run. Running it again replaces the rules.
    Install(Box<bearing_iptables::InstallFlags>),
    /// Remove every transparent-proxy chain and rule, leaving other rules untouched.
    Uninstall {
        /// Print the iptables-restore input that would be applied; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also print the iptables-restore input applied.
        #[arg(long)]
        verbose: bool,
    },
}

/// The kind of proxy to run.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProxyType {
    /// A sidecar (or gateway) described by a Dataplane resource.
    Dataplane,
    /// A zone ingress described by a ZoneIngress resource (SNI routing into the zone).
    Ingress,
    /// A zone egress described by a ZoneEgress resource (cross-zone and external traffic).
    Egress,
}

impl ProxyType {
    /// The kind of proxy the store compiles for.
    pub(crate) fn kind(self) -> ProxyKind {
        match self {
            ProxyType::Dataplane => ProxyKind::Dataplane,
            ProxyType::Ingress => ProxyKind::Ingress,
            ProxyType::Egress => ProxyKind::Egress,
        }
    }
}

/// `bearing run` flags.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Kind of proxy.
    #[arg(
        long,
        value_enum,
        default_value = "dataplane",
        env = "KUMA_DATAPLANE_PROXY_TYPE"
    )]
    pub proxy_type: ProxyType,
    /// Directory store: folder of Kuma resources (*.yaml, *.yml), watched for changes. The
    /// config comes from it or from kuma-cp (--cp-address), not both.
    #[arg(long, env = "BEARING_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// kuma-dp's flags for taking the config from kuma-cp.
    #[command(flatten)]
    pub cp: CpArgs,
    /// kuma-dp's flags that steer only Envoy, CoreDNS or kuma-dp's helpers: accepted, no effect.
    #[command(flatten)]
    pub no_effect: NoEffectFlags,
    /// File holding this proxy's Dataplane resource (a template for --dataplane-var).
    #[arg(
        short = 'd',
        long,
        env = "KUMA_DATAPLANE_RUNTIME_RESOURCE_PATH",
        conflicts_with = "dataplane"
    )]
    pub dataplane_file: Option<PathBuf>,
    /// This proxy's Dataplane resource as inline YAML.
    #[arg(long, env = "KUMA_DATAPLANE_RUNTIME_RESOURCE")]
    pub dataplane: Option<String>,
    /// key=value substituted for {{ key }} in the Dataplane template (repeatable; also
    /// `name=a,address=b`).
    #[arg(
        short = 'v',
        long = "dataplane-var",
        value_name = "KEY=VALUE",
        env = "KUMA_DATAPLANE_RUNTIME_RESOURCE_VARS"
    )]
    pub dataplane_var: Vec<String>,
    /// This proxy's zone (default: its Dataplane's `kuma.io/zone` tag, or the zone proxy's
    /// `zone`); endpoints of other zones are reached through zone proxies.
    #[arg(long, env = "KUMA_MULTIZONE_ZONE")]
    pub zone: Option<String>,
    /// Dataplane name (overrides the resource's; alone, selects the Dataplane in the store).
    #[arg(long, env = "KUMA_DATAPLANE_NAME")]
    pub name: Option<String>,
    /// Mesh of the Dataplane (overrides the resource's).
    #[arg(long, env = "KUMA_DATAPLANE_MESH")]
    pub mesh: Option<String>,
    /// Admin API address (loopback only). Given, it wins over everything; else the API is
    /// on 127.0.0.1 at the proxy resource's `networking.admin.port`, else --admin-port, else
    /// 9901.
    #[arg(long, env = "BEARING_ADMIN_ADDRESS")]
    pub admin_address: Option<SocketAddr>,
    /// Admin API port on 127.0.0.1 when the proxy resource names none (kuma-dp's deprecated
    /// flag: as in Kuma, the resource's `networking.admin.port` wins).
    #[arg(long, env = "KUMA_DATAPLANE_ADMIN_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub admin_port: Option<u16>,
    /// A name besides `localhost` and loopback IPs under which the admin API may be addressed
    /// (its `Host`); any other is refused (403), against DNS rebinding.
    #[arg(long, env = "BEARING_ADMIN_ALLOWED_HOST")]
    pub admin_allowed_host: Option<String>,
    /// Worker threads of the data path.
    #[arg(long, default_value_t = 2, env = "KUMA_DATAPLANE_RUNTIME_CONCURRENCY")]
    pub concurrency: usize,
    /// Pin worker i to the i-th CPU the process may use (as nginx's `worker_cpu_affinity
    /// auto` or HAProxy's `cpu-map`). Only where the proxy owns those CPUs (a cpuset,
    /// a dedicated host): pinned workers of several processes would share CPUs.
    #[arg(long, env = "BEARING_PIN_WORKERS")]
    pub pin_workers: bool,
    /// Longest wait for in-flight requests on shutdown, e.g. 30s, 500ms, 1m30s.
    #[arg(long, default_value = "30s", value_parser = parse_duration, env = "KUMA_DATAPLANE_DRAIN_TIME")]
    pub drain_time: Duration,
    /// Log level filter (error, warn, info, debug, trace, or a tracing filter).
    #[arg(long, default_value = "info", env = "KUMA_DATAPLANE_RUNTIME_LOG_LEVEL")]
    pub log_level: String,
    /// Network mesh hostnames get virtual IPs from (kuma-cp's `dns_server.CIDR`); every
    /// proxy of a mesh must use the same.
    #[arg(long, default_value = "240.0.0.0/4", value_parser = VipOptions::parse_cidr, env = "KUMA_DNS_SERVER_CIDR")]
    pub vip_cidr: (std::net::Ipv4Addr, u8),
    /// Mesh DNS domain (kuma-cp's `dns_server.domain`).
    #[arg(long, default_value = "mesh", env = "KUMA_DNS_SERVER_DOMAIN")]
    pub dns_domain: String,
    /// Serve mesh DNS on --dns-port (when the Dataplane uses transparent proxying, the only
    /// way DNS reaches it); `--dns-enabled=false` turns it off.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, env = "KUMA_DNS_ENABLED")]
    pub dns_enabled: bool,
    /// Port of the mesh DNS server on 127.0.0.1 (and ::1 with IPv6), UDP and TCP; kuma-dp's
    /// `--dns-coredns-port`, the port iptables redirects DNS to, which Bearing serves itself.
    #[arg(long, alias = "dns-coredns-port", default_value_t = bearing_dns::DEFAULT_PORT, env = "KUMA_DNS_CORE_DNS_PORT")]
    pub dns_port: u16,
    /// Where the upstream resolvers for names outside the mesh are listed.
    #[arg(
        long,
        default_value = "/etc/resolv.conf",
        env = "BEARING_DNS_RESOLV_CONF"
    )]
    pub dns_resolv_conf: PathBuf,
}

/// Parses `30s`, `500ms`, `2m`, a bare number of seconds, or a Go duration (`1m30s`, as
/// kuma-dp's `--drain-time` takes).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    simple_duration(text)
        .or_else(|e| bearing_model::validate::parse_go_duration(text).map_err(|_| e))
}

/// `30s`, `500ms`, `2m` or a bare number of seconds.
fn simple_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((t, "s"), |i| t.split_at(i));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 500ms or 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{text:?}: unit must be ms, s, m or h")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{text:?}: {e}"))
}

/// kuma-dp's flags and environment for the control-plane path.
#[derive(Debug, Default, clap::Args)]
pub struct CpArgs {
    /// URL of kuma-cp's DP server, e.g. https://kuma-cp:5678: take the config from it
    /// (bootstrap, then ADS) instead of a directory store (--config-dir).
    #[arg(long, env = "KUMA_CONTROL_PLANE_URL", value_name = "URL")]
    pub cp_address: Option<String>,
    /// File holding the dataplane token (re-read for every request).
    #[arg(long, env = "KUMA_DATAPLANE_RUNTIME_TOKEN_PATH")]
    pub dataplane_token_file: Option<PathBuf>,
    /// The dataplane token itself (wins over --dataplane-token-file).
    #[arg(long, env = "KUMA_DATAPLANE_RUNTIME_TOKEN", hide_env_values = true)]
    pub dataplane_token: Option<String>,
    /// CA certificate(s) (PEM file) the control plane is verified with; default: the system
    /// CA certificates. kuma-cp's own self-signed certificate may be given as its CA.
    #[arg(long, env = "KUMA_CONTROL_PLANE_CA_CERT_FILE")]
    pub ca_cert_file: Option<PathBuf>,
    /// The CA certificate as PEM text (kuma-dp reads it from KUMA_CONTROL_PLANE_CA_CERT only);
    /// wins over --ca-cert-file, as in kuma-dp.
    #[arg(
        long = "ca-cert",
        env = "KUMA_CONTROL_PLANE_CA_CERT",
        hide = true,
        hide_env_values = true
    )]
    pub ca_cert: Option<String>,
    /// Do not verify the control plane's certificate (insecure; development only).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = parse_go_bool, action = clap::ArgAction::Set, env = "KUMA_CONTROL_PLANE_TLS_SKIP_VERIFY")]
    pub skip_verify: bool,
    /// Directory the control plane names the proxy's Unix sockets in (kuma-dp's work dir,
    /// e.g. kuma-cp 2.14's admin socket); default: a directory `kuma-dp-<pid>` made in the
    /// system temporary directory and removed at exit, as kuma-dp makes one per process.
    #[arg(long, env = "KUMA_DATAPLANE_RUNTIME_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Certificate file of the metrics listener, sent to the control plane, which names it
    /// back in the Prometheus listener when the backend's TLS mode is `providedTLS`.
    #[arg(long, env = "KUMA_DATAPLANE_RUNTIME_METRICS_CERT_PATH")]
    pub metrics_cert_path: Option<String>,
    /// Key file of the metrics listener (as `--metrics-cert-path`).
    #[arg(long, env = "KUMA_DATAPLANE_RUNTIME_METRICS_KEY_PATH")]
    pub metrics_key_path: Option<String>,
    /// Port of the `kuma:dns` listener the control plane generates (kuma-dp's Envoy DNS port).
    #[arg(long, default_value_t = 15054, env = "KUMA_DNS_ENVOY_DNS_PORT")]
    pub dns_envoy_port: u16,
    /// Wait between bootstrap attempts (kuma-dp: `KUMA_CONTROL_PLANE_RETRY_BACKOFF` only).
    #[arg(long = "cp-retry-backoff", default_value = "3s", value_parser = parse_duration, env = "KUMA_CONTROL_PLANE_RETRY_BACKOFF", hide = true)]
    pub retry_backoff: Duration,
    /// Time after which no bootstrap attempt starts (kuma-dp:
    /// `KUMA_CONTROL_PLANE_RETRY_MAX_DURATION` only).
    #[arg(long = "cp-retry-max-duration", default_value = "5m", value_parser = parse_duration, env = "KUMA_CONTROL_PLANE_RETRY_MAX_DURATION", hide = true)]
    pub retry_max_duration: Duration,
    /// Port of the readiness reporter the CP routes `/ready` to (kuma-dp:
    /// `KUMA_READINESS_PORT` only).
    #[arg(
        long = "readiness-port",
        default_value_t = 9902,
        env = "KUMA_READINESS_PORT",
        hide = true
    )]
    pub readiness_port: u16,
    /// `false`: tell the CP IPv6 is off even where the host has it (kuma-dp:
    /// `KUMA_DATAPLANE_RUNTIME_IPV6_ENABLED` only).
    #[arg(long = "ipv6-enabled", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, env = "KUMA_DATAPLANE_RUNTIME_IPV6_ENABLED", hide = true)]
    pub ipv6_enabled: bool,
}

/// Parses a boolean as Go's `strconv.ParseBool` (kuma-dp's flags and variables): 1, t, T,
/// TRUE, true, True, 0, f, F, FALSE, false, False.
pub fn parse_go_bool(text: &str) -> Result<bool, String> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("{text:?} is not a boolean (true or false)")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn go_booleans() {
        assert_eq!(parse_go_bool("True"), Ok(true));
        assert_eq!(parse_go_bool("0"), Ok(false));
        assert!(parse_go_bool("yes").is_err());
    }

    /// `bearing run ARGS` parsed.
    pub(crate) fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let cli = Cli::try_parse_from(["bearing", "run"].iter().chain(args).copied())?;
        match cli.command {
            Command::Run(args) => Ok(*args),
            other => panic!("not run: {other:?}"),
        }
    }

    /// kuma-dp's pflag forms: a bare boolean, `=false`, short flags, Go durations, the
    /// CoreDNS port as Bearing's DNS port; an unknown flag is an error naming it.
    #[test]
    fn kuma_dp_flag_forms() {
        let a = run_args(&[
            "--dns-enabled",
            "-d",
            "dp.yaml",
            "-v",
            "name=a,address=b",
            "--drain-time",
            "1m30s",
            "--dns-coredns-port",
            "25053",
            "--skip-verify",
        ])
        .unwrap();
        assert!(a.dns_enabled);
        assert!(a.cp.skip_verify);
        assert_eq!(a.dataplane_file, Some(PathBuf::from("dp.yaml")));
        assert_eq!(a.dataplane_var, vec!["name=a,address=b".to_string()]);
        assert_eq!(a.drain_time, Duration::from_secs(90));
        assert_eq!(a.dns_port, 25053);
        assert!(!run_args(&["--dns-enabled=false"]).unwrap().dns_enabled);
        assert!(run_args(&[]).unwrap().dns_enabled);
        let flags = [
            "--binary-path",
            "envoy",
            "--envoy-log-level",
            "debug",
            "--dns-coredns-path",
            "/c",
            "--dns-prometheus-port",
            "1",
            "--dns-enable-logging",
            "--transparent-proxy",
            "--log-output-path",
            "/l",
        ];
        run_args(&flags).unwrap();
        let err = run_args(&["--no-such-flag"]).unwrap_err().to_string();
        assert!(err.contains("--no-such-flag"), "{err}");
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

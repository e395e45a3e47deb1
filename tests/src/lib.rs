//! End-to-end test harness for Bearing.
//!
//! Builds throw-away network topologies out of Linux network namespaces
//! (a bridge namespace plus N host namespaces on a private `10.200.X.0/24` /
//! `fd00:beef:X::/64` subnet), runs processes inside them, starts real peers
//! (nginx, redis, a python HTTP server) and offers client helpers (curl,
//! redis-cli). Everything is torn down when the [`Topology`] is dropped,
//! including after a panic, in which case all logs are printed to stderr.
//!
//! Requires root and the tools checked by [`require_root_and_tools`]; the TLS helpers
//! ([`TestCa`], [`TlsClient`]) also need `openssl`, packet captures ([`Capture`]) `tcpdump`
//! (check with [`require_tools`]).
//!
//! ```no_run
//! use bearing_e2e::*;
//! # fn main() -> anyhow::Result<()> {
//! require_root_and_tools()?;
//! let topo = Topology::new(&["a", "b"])?;
//! let (a, b) = (topo.host("a"), topo.host("b"));
//! let nginx = start_nginx(b, 8080)?;
//! let (code, body) = curl(a, [nginx.url4("/")])?;
//! assert_eq!((code, body.as_str()), (200, nginx.body()));
//! # Ok(())
//! # }
//! ```
//!
//! Environment variables: `BEARING_E2E_KEEP_DIR=1` keeps the per-topology
//! temp dir (its path is printed); `BEARING_E2E_DUMP_LOGS=1` prints all logs
//! on drop even with `--nocapture`, `=0` only when panicking. By default logs
//! are printed on drop when panicking or when libtest captures output (it
//! only shows captured output of failed tests).
#![warn(missing_docs)]

mod bearing;
mod capture;
mod cp_files;
mod envoy;
mod firewall;
mod http;
mod kuma_gateway;
mod mesh;
mod peers;
mod process;
pub mod test_cp;
mod tls;
mod topology;
mod util;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

pub use bearing::{
    bearing_bin, bearing_ca_generate, bearing_ca_issue, dataplane_yaml, write_store,
    write_store_file, Bearing, KUMA_DP_UID, READY_TIMEOUT,
};
pub use capture::{Capture, Pcap};
pub use cp_files::{
    bound_listener, golden_dataplane, local_app_cluster, start_test_cp, CpAccess, CpEnvoy, CpPki,
    GoldenPair, XdsFile, CLUSTER, ENDPOINTS, GOLDEN_INBOUND_PORT, LISTENER, ROUTES, RUNTIME,
    SECRET,
};
pub use envoy::{
    envoy_bin, kuma_corpus_dir, remove_fields, replace_in_strings, set_field, Envoy, EnvoyConfig,
    KumaGolden, ENVOY_READY_TIMEOUT,
};
pub use firewall::firewall_rules;
pub use http::{
    curl, curl_output, curl_raw, header_value, http_url, request_id_forms, served_by, spread,
    wait_until_served_by, CurlOutput, RawResponse, DEFAULT_CURL_MAX_TIME_SECS,
};
pub use kuma_gateway::{gateway_cluster, gateway_manager};
pub use mesh::{
    external_service_yaml, get_body, mesh_yaml, with_transparent_proxying, zone_proxy_yaml,
    BACKEND_SYNCED_FROM_ZONE_B,
};
pub use peers::{
    redis_cli, start_http_server, start_nginx, start_redis, start_slow_server, HttpServer,
    HttpServerConfig, Nginx, NginxConfig, Redis, PEER_STARTUP_TIMEOUT,
};
pub use process::{HostCommand, Output, Process, Signal, DEFAULT_RUN_TIMEOUT};
pub use tls::{CertFiles, TestCa, TlsClient, TlsOutcome};
pub use topology::{Host, Topology, TopologyBuilder, ENV_DUMP_LOGS, ENV_KEEP_DIR, NETNS_PREFIX};

/// Interval between evaluations in [`wait_until`] / [`wait_until_ok`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Tools needed by the harness and its peers, with the Debian package
/// providing each.
pub const REQUIRED_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("kill", "procps"),
    ("setpriv", "util-linux"),
    ("bash", "bash"),
    ("timeout", "coreutils"),
    ("nginx", "nginx"),
    ("curl", "curl"),
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
    ("python3", "python3"),
];

/// Polls `cond` every 50 ms until it returns `true`; fails if that does not
/// happen within `timeout`. `cond` is always evaluated at least once, and
/// once more after the deadline.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("condition not met within {timeout:?}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Polls `f` every 50 ms until it returns `Ok`, returning that value; after
/// `timeout` fails with the last error (annotated with the timeout).
pub fn wait_until_ok<T>(timeout: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("still failing after {timeout:?}")))
            }
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

/// Checks that we run as root and that every tool in [`REQUIRED_TOOLS`]
/// (`ip`, `ss`, `kill`, `setpriv`, `bash`, `timeout`, `nginx`, `curl`,
/// `redis-server`, `redis-cli`, `python3`) is in `$PATH`.
///
/// Returns an error naming everything that is missing (and the packages to
/// install); tests should propagate it rather than skip.
pub fn require_root_and_tools() -> Result<()> {
    let mut problems = Vec::new();
    match util::effective_uid() {
        Some(0) => {}
        Some(uid) => problems.push(format!("not running as root (euid {uid})")),
        None => problems.push("cannot determine effective uid".to_string()),
    }
    let missing: Vec<&(&str, &str)> = REQUIRED_TOOLS
        .iter()
        .filter(|(tool, _)| util::find_in_path(tool).is_none())
        .collect();
    if !missing.is_empty() {
        let tools: Vec<&str> = missing.iter().map(|(t, _)| *t).collect();
        let mut pkgs: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
        pkgs.dedup();
        problems.push(format!(
            "missing tools in PATH: {} (apt-get install {})",
            tools.join(", "),
            pkgs.join(" ")
        ));
    }
    if !problems.is_empty() {
        bail!("bearing-e2e requirements not met: {}", problems.join("; "));
    }
    Ok(())
}

/// Checks that each of `tools` is in `$PATH` (for test-specific extras such
/// as `iptables`, `socat`, `dig`); the error names all missing ones.
pub fn require_tools(tools: &[&str]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| util::find_in_path(t).is_none())
        .collect();
    if !missing.is_empty() {
        bail!("missing tools in PATH: {}", missing.join(", "));
    }
    Ok(())
}

//! The command line's commands: `bearing run`, `bearing validate`, `bearing transparent-proxy`,
//! `bearing ca`, `bearing version`, with the flags parsed in [`crate::args`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::{descriptors, kuma_endpoints, startup_heap};
use anyhow::{bail, Context};
use bearing_control::{template, ConfigStatus, DataplaneSource, DirectorySource, VipOptions};
use bearing_model::{Spec, Store};
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Notify};

use crate::admin::{self, Admin, AdminAt};
use crate::args::{CaCommand, CaTarget, Cli, Command, RunArgs, TransparentProxy};
use crate::cp_source;
use crate::runtime::Proxy;
use crate::workers::Workers;

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("bearing {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Command::Validate { dir } => validate(&dir),
        Command::TransparentProxy(command) => transparent_proxy(command),
        Command::Ca(command) => match ca(command) {
            Ok(path) => {
                println!("{}", path.display());
                0
            }
            Err(e) => {
                eprintln!("bearing: ca: {e:#}");
                1
            }
        },
        Command::Run(args) => match run(*args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("bearing: {e:#}");
                1
            }
        },
    }
}

/// `bearing ca generate` / `bearing ca issue`: writes the Secrets; returns the file written.
fn ca(command: CaCommand) -> anyhow::Result<PathBuf> {
    match command {
        CaCommand::Generate {
            ca:
                CaTarget {
                    mesh,
                    backend,
                    store,
                },
            force,
        } => {
            check_names(&[("--mesh", &mesh), ("--backend", &backend)])?;
            check_store("--store", &store)?;
            let path = store.join(format!("ca-{mesh}-{backend}.yaml"));
            if path.exists() && !force {
                bail!(
                    "{} exists; pass --force to replace the CA (every proxy of the mesh then gets new certificates)",
                    path.display()
                );
            }
            let ca = bearing_tls::MeshCa::generate(&mesh)?;
            write_private(
                &path,
                &bearing_tls::builtin_secrets_yaml(&mesh, &backend, &ca),
            )?;
            Ok(path)
        }
        CaCommand::Issue {
            ca:
                CaTarget {
                    mesh,
                    backend,
                    store,
                },
            dataplane,
            services,
            out_store,
            validity,
            force,
        } => {
            let names = [
                ("--mesh", &mesh),
                ("--backend", &backend),
                ("--dataplane", &dataplane),
            ];
            check_names(&names)?;
            check_store("--store", &store)?;
            let out = out_store.unwrap_or_else(|| store.clone());
            check_store("--out-store", &out)?;
            let validity = bearing_model::validate::parse_go_duration(&validity)
                .map_err(|e| anyhow::anyhow!("--validity {validity:?}: {e}"))?;
            let admin = Store::load_dir(&store);
            let issued = bearing_control::mtls::issue_identity(
                &admin, &mesh, &backend, &dataplane, services, validity,
            )
            .map_err(|e| anyhow::anyhow!("--store {}: {e}", store.display()))?;
            let path = out.join(format!("identity-{mesh}-{dataplane}.yaml"));
            if path.exists() && !force {
                bail!(
                    "{} exists; pass --force to replace it (the proxy then presents the new certificate)",
                    path.display()
                );
            }
            if let Some(cert_secret) = &issued.ca_cert_secret {
                let ca_path = out.join(format!("ca-cert-{mesh}-{backend}.yaml"));
                write_private(&ca_path, cert_secret)?;
            }
            write_private(&path, &issued.identity_secret)?;
            Ok(path)
        }
    }
}

/// Refuses a name flag that is not a valid resource name.
fn check_names(flags: &[(&str, &String)]) -> anyhow::Result<()> {
    for (flag, value) in flags {
        if let Some(problem) = bearing_model::validate::validate_name(value) {
            bail!("{flag} {value:?}: {problem}");
        }
    }
    Ok(())
}

/// Refuses a store flag that is not a directory.
fn check_store(flag: &str, store: &std::path::Path) -> anyhow::Result<()> {
    if !store.is_dir() {
        bail!("{flag} {}: not a directory", store.display());
    }
    Ok(())
}

/// Writes `text` to `path` readable by its owner only (it holds a private key), aside first
/// and then renamed, so the store watcher never reads half a key.
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let partial = path.with_file_name(format!(".{name}.partial"));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // The file holds the CA's private key: readable by its owner only.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .with_context(|| format!("cannot write {}", partial.display()))?;
        file.write_all(text.as_bytes())
            .with_context(|| format!("cannot write {}", partial.display()))?;
    }
    std::fs::rename(&partial, path).with_context(|| format!("cannot write {}", path.display()))
}

/// `bearing transparent-proxy install|uninstall`: exit 0 on success, 1 with the error.
fn transparent_proxy(command: TransparentProxy) -> i32 {
    let result = match command {
        TransparentProxy::Install(flags) => install_transparent_proxy(&flags),
        TransparentProxy::Uninstall { dry_run, verbose } => {
            bearing_iptables::uninstall(dry_run, verbose)
                .map(|report| print_report(&report))
                .map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bearing: transparent-proxy: {e:#}");
            1
        }
    }
}

fn install_transparent_proxy(flags: &bearing_iptables::InstallFlags) -> anyhow::Result<()> {
    let (config, warnings) = flags.resolve()?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    if config.dry_run {
        let (text, warnings) = bearing_iptables::dry_run(&config)?;
        for w in warnings {
            eprintln!("warning: {w}");
        }
        print!("{text}");
        return Ok(());
    }
    let report = bearing_iptables::install(&config)?;
    print_report(&report);
    println!("transparent proxy installed: run bearing as uid {} with redirect ports {} (outbound) and {} (inbound)", config.kuma_dp_uid, config.outbound.port, config.inbound.port);
    Ok(())
}

fn print_report(report: &bearing_iptables::Report) {
    for line in &report.lines {
        println!("{line}");
    }
}

/// `bearing validate DIR`: every store problem, every Dataplane that fails to compile, and
/// every resource or field Bearing does not enforce. Exit status 1 when there is a problem (or
/// a file cannot be read), 0 when there are only warnings.
fn validate(dir: &std::path::Path) -> i32 {
    let store = Store::load_dir(dir);
    let mut problems: Vec<String> = (store.io_errors.iter())
        .chain(&store.problems)
        .map(ToString::to_string)
        .collect();
    let proxies = store.resources.iter().filter(|r| {
        matches!(
            r.spec,
            Spec::Dataplane(_) | Spec::ZoneIngress(_) | Spec::ZoneEgress(_)
        )
    });
    for r in proxies {
        let options = bearing_control::compile::CompileOptions::default();
        if let Err(ps) = bearing_control::compile::compile(&store, r, "validate", &options) {
            problems.extend(ps.iter().map(ToString::to_string));
        }
    }
    problems.dedup();
    for w in store.warnings.iter().map(ToString::to_string) {
        println!("{w}");
    }
    for p in &problems {
        println!("{p}");
    }
    i32::from(!problems.is_empty())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    // hickory logs every query at info; only its warnings belong in a proxy's log.
    let filter =
        tracing_subscriber::EnvFilter::try_new(format!("{},hickory_server=warn", args.log_level))
            .with_context(|| format!("--log-level {:?}", args.log_level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    args.no_effect.log_given();
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let source = match config_source(&args)? {
        ConfigSource::ControlPlane => Source::ControlPlane,
        ConfigSource::Directory(dir) => Source::Directory(directory_source(&args, dir)?),
    };
    // Before the runtime starts its threads (see `descriptors`).
    match descriptors::prepare() {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(e) => tracing::warn!("{e}; continuing with the current limit"),
    }
    // Parked for when a flood of connections exhausts the limit (see `descriptors`).
    descriptors::ADMIN.refill();
    descriptors::ACCEPT.refill();
    let workers = Workers::start(args.concurrency, args.pin_workers)
        .context("cannot start the worker threads")?;
    // The control side (admin API, config changes, mesh DNS, signals) runs on this thread;
    // connections run on the workers.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args, source, workers))
}

/// The directory store `--config-dir DIR` and the proxy flags describe.
fn directory_source(args: &RunArgs, dir: PathBuf) -> anyhow::Result<DirectorySource> {
    if !dir.is_dir() {
        bail!("--config-dir {}: not a directory", dir.display());
    }
    let dataplane = match (&args.dataplane_file, &args.dataplane) {
        (Some(f), _) => DataplaneSource::File(f.clone()),
        (None, Some(text)) => DataplaneSource::Inline(text.clone()),
        (None, None) => DataplaneSource::Named,
    };
    Ok(DirectorySource {
        dir,
        dataplane,
        vars: template::parse_vars(&args.dataplane_var).map_err(anyhow::Error::msg)?,
        name: args.name.clone(),
        mesh: args.mesh.clone(),
        vips: VipOptions {
            cidr: args.vip_cidr,
            domain: dns_domain(args),
            ..VipOptions::default()
        },
        kind: args.proxy_type.kind(),
        zone: args.zone.clone(),
    })
}

/// The mesh DNS domain of `--dns-domain`, without dots around it, lower case.
fn dns_domain(args: &RunArgs) -> String {
    args.dns_domain.trim_matches('.').to_ascii_lowercase()
}

/// The config source `bearing run` follows.
enum Source {
    /// A directory store, watched.
    Directory(DirectorySource),
    /// kuma-cp: bootstrap, then ADS.
    ControlPlane,
}

impl Source {
    /// Starts publishing configs on `status`; returns where the proxy's resource (or the
    /// control plane's bootstrap) puts the admin API, read once as kuma-dp's bootstrap is. The store
    /// is loaded once before this returns; the control plane's first config comes later
    /// (until then the proxy is not ready).
    async fn start(
        self,
        args: &RunArgs,
        status: &watch::Sender<ConfigStatus>,
    ) -> anyhow::Result<ResourceAdmin> {
        match self {
            Source::Directory(source) => {
                let loaded = source.fingerprint();
                startup_heap::widen();
                source.reload_into(status);
                startup_heap::settle();
                let applied = status.borrow().applied.clone();
                if applied.is_none() {
                    tracing::error!(
                        "no valid config yet in {}; not ready until the problems above are fixed",
                        source.dir.display()
                    );
                }
                source
                    .watch(status.clone(), loaded)
                    .context("cannot start the config watcher")?;
                Ok(ResourceAdmin {
                    port: applied.and_then(|a| a.config.identity.admin_port),
                    socket: None,
                })
            }
            Source::ControlPlane => {
                let (done, identity) = cp_source::bootstrap(args).await?;
                cp_source::start_ads(&done, &identity, status.clone())?;
                Ok(ResourceAdmin {
                    port: done.config.admin.as_ref().map(|(_, port)| *port),
                    socket: done.config.admin_socket.clone(),
                })
            }
        }
    }
}

/// Where `bearing run` takes its config from.
#[derive(Debug, PartialEq)]
enum ConfigSource {
    /// A directory store (`--config-dir`).
    Directory(PathBuf),
    /// kuma-cp (`--cp-address`).
    ControlPlane,
}

/// `--config-dir` or `--cp-address`: exactly one.
fn config_source(args: &RunArgs) -> anyhow::Result<ConfigSource> {
    match (&args.config_dir, &args.cp.cp_address) {
        (Some(dir), Some(cp)) => bail!(
            "--cp-address {cp} and --config-dir {} are exclusive: the config comes either from kuma-cp or from a directory store (check KUMA_CONTROL_PLANE_URL and BEARING_CONFIG_DIR)",
            dir.display()
        ),
        (None, Some(_)) => Ok(ConfigSource::ControlPlane),
        (None, None) => bail!("give --config-dir (a directory store) or --cp-address (kuma-cp)"),
        (Some(dir), None) => Ok(ConfigSource::Directory(dir.clone())),
    }
}

/// Where the proxy's resource or the control plane's bootstrap puts the admin API.
#[derive(Debug, Default)]
struct ResourceAdmin {
    /// The resource's `networking.admin.port` (kuma-cp's bootstrap: the admin port it chose).
    port: Option<u16>,
    /// The Unix socket kuma-cp's bootstrap puts Envoy's admin on instead of TCP.
    socket: Option<PathBuf>,
}

/// Where the admin API listens. kuma-cp puts Envoy's admin on a Unix socket when it names
/// one (2.14, given the proxy's workdir), else on the resource's `networking.admin.port`,
/// else on kuma-dp's `--admin-port`, else on its default (9901), always on loopback;
/// Bearing's own `--admin-address` overrides all of them.
fn admin_address(
    flag_address: Option<SocketAddr>,
    flag_port: Option<u16>,
    resource: &ResourceAdmin,
) -> AdminAt {
    const DEFAULT_ADMIN_PORT: u16 = 9901;
    match (flag_address, &resource.socket) {
        (Some(given), _) => AdminAt::Tcp(given),
        (None, Some(socket)) => AdminAt::Unix(socket.clone()),
        (None, None) => {
            let port = resource.port.or(flag_port).unwrap_or(DEFAULT_ADMIN_PORT);
            AdminAt::Tcp(SocketAddr::from(([127, 0, 0, 1], port)))
        }
    }
}

async fn serve(args: RunArgs, source: Source, workers: Workers) -> anyhow::Result<()> {
    let proxy = Arc::new(Proxy::new(workers));
    let (status_tx, status_rx) = watch::channel(ConfigStatus::default());
    let resource_admin = source.start(&args, &status_tx).await?;
    let admin_at = admin_address(args.admin_address, args.admin_port, &resource_admin);
    if let (Some(given), Some(port)) = (args.admin_address, resource_admin.port) {
        if given.port() != port {
            tracing::info!(%given, resource_port = port, "--admin-address overrides the resource's networking.admin.port");
        }
    }
    let admin_listener = match &admin_at {
        AdminAt::Tcp(address) => admin::bind(*address).await?.into(),
        AdminAt::Unix(path) => admin::bind_unix(path)?,
    };
    let quit = Arc::new(Notify::new());
    tokio::spawn(
        Admin {
            proxy: proxy.clone(),
            status: status_rx.clone(),
            quit: quit.clone(),
            allowed_host: args.admin_allowed_host.clone(),
        }
        .serve(admin_listener),
    );
    tracing::info!(admin = %admin_at, "admin API listening");
    tokio::spawn(apply_changes(proxy.clone(), status_rx.clone()));
    tokio::spawn(kuma_endpoints::serve(proxy.clone(), status_rx.clone()));
    if args.dns_enabled {
        let settings = MeshDns {
            port: args.dns_port,
            resolv_conf: args.dns_resolv_conf.clone(),
            domain: dns_domain(&args),
        };
        tokio::spawn(settings.serve(proxy.clone(), status_rx));
    }

    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let graceful = tokio::select! {
        _ = sigterm.recv() => { tracing::info!("SIGTERM received"); true }
        _ = sigint.recv() => { tracing::info!("SIGINT received"); true }
        _ = quit.notified() => { tracing::info!("quit requested on the admin API"); false }
    };
    proxy.start_drain();
    if !graceful {
        // Let the admin API finish answering the quit request before the runtime stops.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if graceful {
        if proxy.wait_connections(args.drain_time).await {
            tracing::info!("drained; exiting");
        } else {
            tracing::warn!(drain_time = ?args.drain_time, "drain time over; closing remaining connections");
        }
    }
    cp_source::remove_own_work_dir(&args);
    Ok(())
}

/// The mesh DNS server's settings.
struct MeshDns {
    port: u16,
    resolv_conf: PathBuf,
    domain: String,
}

impl MeshDns {
    /// Starts the DNS server once a config with transparent proxying is applied, then swaps
    /// its table on every config change. A bind failure is logged and leaves DNS off.
    async fn serve(self, proxy: Arc<Proxy>, mut status: watch::Receiver<ConfigStatus>) {
        let applied = |s: &ConfigStatus| s.applied.as_ref().map(|l| l.config.clone());
        let config = loop {
            if let Some(c) = applied(&status.borrow_and_update()) {
                if c.transparent_proxy.is_some() {
                    break c;
                }
            }
            if status.changed().await.is_err() {
                return;
            }
        };
        let mut listen = vec![SocketAddr::from(([127, 0, 0, 1], self.port))];
        if config.transparent_proxy.as_ref().is_some_and(|tp| tp.ipv6) {
            listen.push(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, self.port)));
        }
        let upstreams = match bearing_dns::upstreams_from_resolv_conf(&self.resolv_conf, &listen) {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!("mesh DNS: {e}; names outside the mesh will get SERVFAIL");
                Vec::new()
            }
        };
        let table = Arc::new(arc_swap::ArcSwap::from_pointee(bearing_dns::DnsTable::new(
            &self.domain,
            config.dns.clone(),
        )));
        let dns_config = bearing_dns::DnsServerConfig {
            listen,
            upstreams,
            ..Default::default()
        };
        let server = match bearing_dns::DnsServer::bind(dns_config, table.clone()).await {
            Ok(s) => s.count_into(proxy.stats.dns.clone()),
            Err(e) => {
                tracing::error!("mesh DNS not started: {e}");
                return;
            }
        };
        tracing::info!(addresses = ?server.local_addrs(), names = config.dns.len(), "mesh DNS listening");
        tokio::spawn(async move {
            if let Err(e) = server.run(tokio_util::sync::CancellationToken::new()).await {
                tracing::error!("mesh DNS stopped: {e}");
            }
        });
        let mut version = config.version.clone();
        while status.changed().await.is_ok() {
            let Some(c) = applied(&status.borrow_and_update()) else {
                continue;
            };
            if c.version != version {
                version = c.version.clone();
                table.store(Arc::new(bearing_dns::DnsTable::new(
                    &self.domain,
                    c.dns.clone(),
                )));
            }
        }
    }
}

/// Applies every new config the source publishes, and counts rejections.
async fn apply_changes(proxy: Arc<Proxy>, mut status: watch::Receiver<ConfigStatus>) {
    let mut version = None;
    let mut rejected_at = None;
    loop {
        let (config, rejected) = {
            let s = status.borrow_and_update();
            (
                s.applied.as_ref().map(|a| a.config.clone()),
                s.last_rejected
                    .as_ref()
                    .map(|r| (r.at_unix_seconds, r.problems.clone())),
            )
        };
        if let Some(config) = config {
            if version.as_ref() != Some(&config.version) {
                version = Some(config.version.clone());
                proxy.apply(config);
            }
        }
        if rejected.is_some() && rejected != rejected_at {
            proxy.stats.config.rejected.inc();
            rejected_at = rejected;
        }
        // A listener that could not bind (port in use) is retried every second.
        let retry = tokio::time::sleep(Duration::from_secs(1));
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return },
            _ = retry, if proxy.has_bind_errors() => proxy.reconcile_listeners(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::args::tests::run_args;

    #[test]
    fn admin_address_follows_kumas_precedence() {
        let given: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let resource = |port, socket: Option<&str>| ResourceAdmin {
            port,
            socket: socket.map(PathBuf::from),
        };
        let at = |a, p, r: ResourceAdmin| admin_address(a, p, &r).to_string();
        assert_eq!(at(None, None, resource(None, None)), "127.0.0.1:9901");
        assert_eq!(at(None, Some(9100), resource(None, None)), "127.0.0.1:9100");
        assert_eq!(
            at(None, Some(9100), resource(Some(9200), None)),
            "127.0.0.1:9200",
            "the resource wins over kuma-dp's --admin-port"
        );
        assert_eq!(
            at(
                None,
                Some(9100),
                resource(Some(9200), Some("/w/kuma-envoy-admin.sock"))
            ),
            "unix:/w/kuma-envoy-admin.sock",
            "kuma-cp's admin socket wins over ports"
        );
        assert_eq!(
            at(
                Some(given),
                Some(9100),
                resource(Some(9200), Some("/w/a.sock"))
            ),
            "127.0.0.1:9000"
        );
    }

    #[test]
    fn config_comes_from_the_store_or_the_cp_not_both() {
        let both = run_args(&["--config-dir", "/s", "--cp-address", "https://cp:5678"]).unwrap();
        let err = config_source(&both).unwrap_err().to_string();
        assert!(
            err.contains("--cp-address https://cp:5678 and --config-dir /s are exclusive"),
            "{err}"
        );
        let none = run_args(&[]).unwrap();
        assert!(config_source(&none)
            .unwrap_err()
            .to_string()
            .contains("give --config-dir"));
        let cp = run_args(&["--cp-address", "https://cp:5678"]).unwrap();
        assert_eq!(config_source(&cp).unwrap(), ConfigSource::ControlPlane);
        let dir = run_args(&["--config-dir", "/s"]).unwrap();
        assert_eq!(
            config_source(&dir).unwrap(),
            ConfigSource::Directory("/s".into())
        );
    }
}

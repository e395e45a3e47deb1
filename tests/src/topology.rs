//! Network topologies made of Linux network namespaces: one bridge namespace
//! holding a Linux bridge, and N host namespaces attached to it by veth pairs.

use std::ffi::OsStr;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{self, HostCommand, Output, ProcInner, Process};
use crate::util;

/// Prefix of every namespace and temp directory created by this harness.
pub const NETNS_PREFIX: &str = "brg-";
/// Prefix of the per-topology temporary directories.
const TEMPDIR_PREFIX: &str = "brg-e2e-";
/// Role name of the bridge namespace (reserved; cannot be a host name).
const BRIDGE_ROLE: &str = "bridge";
/// Name of the host-side interface in every host namespace.
const HOST_IFACE: &str = "eth0";
/// Name of the bridge device inside the bridge namespace.
const BRIDGE_DEV: &str = "br0";
/// Maximum length of a host name.
const MAX_HOST_NAME: usize = 12;
/// Default grace period between SIGTERM and SIGKILL during cleanup.
const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);
/// Lines of each log printed when a test panics.
const DUMP_LINES: usize = 200;

/// Environment variable: if set (non-empty, not `0`), keep the temp dir after the test.
pub const ENV_KEEP_DIR: &str = "BEARING_E2E_KEEP_DIR";
/// Environment variable controlling the log dump on drop: `1` = always print
/// all logs, `0` = only when panicking. Unset: print when panicking or when
/// libtest captures output (captured output is only shown for failed tests).
pub const ENV_DUMP_LOGS: &str = "BEARING_E2E_DUMP_LOGS";

static TOPOLOGY_COUNTER: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();
/// Serialises `ip netns add` within this process (first-use mount setup of
/// /run/netns is racy in iproute2).
static NETNS_LOCK: Mutex<()> = Mutex::new(());

fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

/// State shared between a [`Topology`], its [`Host`]s and the processes they spawn.
pub(crate) struct Shared {
    dir: PathBuf,
    logs_dir: PathBuf,
    procs: Mutex<Vec<Arc<ProcInner>>>,
    seq: AtomicU32,
    commands_log: Mutex<Option<File>>,
    closed: AtomicBool,
    etc_dirs: Mutex<Vec<PathBuf>>,
    started: Instant,
}

impl Shared {
    pub(crate) fn ensure_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            bail!("topology is being torn down; cannot start new commands");
        }
        Ok(())
    }

    pub(crate) fn logs_dir(&self) -> &Path {
        &self.logs_dir
    }

    pub(crate) fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub(crate) fn register(&self, p: Arc<ProcInner>) {
        self.procs.lock().unwrap_or_else(|e| e.into_inner()).push(p);
    }

    /// Appends an entry to `commands.log` (best effort).
    pub(crate) fn log_command(&self, host: &str, cmdline: &str, result: &str) {
        let mut guard = self.commands_log.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = guard.as_mut() {
            let t = self.started.elapsed().as_secs_f64();
            let _ = writeln!(f, "[{t:8.3}s] {host}$ {cmdline}\n  -> {result}");
        }
    }
}

/// Builder for a [`Topology`]; see [`Topology::builder`].
#[derive(Debug, Clone)]
#[must_use = "call build() to create the topology"]
pub struct TopologyBuilder {
    hosts: Vec<String>,
    default_route: bool,
    kill_grace: Duration,
}

impl TopologyBuilder {
    /// Adds a host namespace named `name`.
    ///
    /// Names must be 1–12 characters of `[a-z0-9-]`, start with a letter, be
    /// unique within the topology and not be `bridge`.
    pub fn host(mut self, name: impl Into<String>) -> Self {
        self.hosts.push(name.into());
        self
    }

    /// Adds several hosts; see [`TopologyBuilder::host`].
    pub fn hosts<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.hosts.extend(names.into_iter().map(Into::into));
        self
    }

    /// Whether hosts get IPv4/IPv6 default routes via the bridge namespace
    /// (default `true`). The bridge namespace does not forward and answers
    /// with ICMP unreachable, so traffic to foreign addresses fails fast
    /// instead of with "network unreachable" at `connect()`; this matters for
    /// transparent-proxy tests where iptables redirects such traffic.
    pub fn default_route(mut self, enabled: bool) -> Self {
        self.default_route = enabled;
        self
    }

    /// Grace period between SIGTERM and SIGKILL when the topology is dropped
    /// (default 2 s).
    pub fn kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }

    /// Creates the namespaces, bridge, veth pairs and addresses.
    ///
    /// On failure everything created so far is removed again.
    pub fn build(self) -> Result<Topology> {
        validate_host_names(&self.hosts)?;
        check_basics()?;
        SWEEP.call_once(sweep_stale);

        let pid = std::process::id();
        let counter = TOPOLOGY_COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!(
            "{}-{}",
            util::base36(pid.into()),
            util::base36(counter.into())
        );
        let octet = ((pid as u64 + counter as u64) % 250 + 1) as u8;

        let tempdir = tempfile::Builder::new()
            .prefix(&format!("{TEMPDIR_PREFIX}{id}-"))
            .tempdir()
            .context("creating topology temp dir")?;
        let dir = tempdir.path().to_path_buf();
        let logs_dir = dir.join("logs");
        std::fs::create_dir(&logs_dir).context("creating logs dir")?;
        // World-readable/traversable so processes running as other uids (and
        // nginx workers) can read configs and files placed here.
        set_mode(&dir, 0o755)?;
        set_mode(&logs_dir, 0o755)?;
        let commands_log = File::create(logs_dir.join("000-commands.log")).ok();

        let shared = Arc::new(Shared {
            dir,
            logs_dir,
            procs: Mutex::new(Vec::new()),
            seq: AtomicU32::new(0),
            commands_log: Mutex::new(commands_log),
            closed: AtomicBool::new(false),
            etc_dirs: Mutex::new(Vec::new()),
            started: Instant::now(),
        });

        let mut topo = Topology {
            id: id.clone(),
            octet,
            bridge_netns: format!("{NETNS_PREFIX}{id}-{BRIDGE_ROLE}"),
            hosts: Vec::new(),
            namespaces: Vec::new(),
            shared,
            tempdir: Some(tempdir),
            kill_grace: self.kill_grace,
        };
        // From here on, an early return drops `topo`, which cleans up.
        topo.setup(&self.hosts, self.default_route)?;
        Ok(topo)
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

fn validate_host_names(names: &[String]) -> Result<()> {
    if names.is_empty() {
        bail!("a topology needs at least one host");
    }
    if names.len() > 200 {
        bail!("at most 200 hosts per topology");
    }
    for (i, n) in names.iter().enumerate() {
        let ok = !n.is_empty()
            && n.len() <= MAX_HOST_NAME
            && n.starts_with(|c: char| c.is_ascii_lowercase())
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            bail!("invalid host name {n:?}: use 1-{MAX_HOST_NAME} chars of [a-z0-9-] starting with a letter");
        }
        if n == BRIDGE_ROLE {
            bail!("host name {n:?} is reserved");
        }
        if names[..i].contains(n) {
            bail!("duplicate host name {n:?}");
        }
    }
    Ok(())
}

fn check_basics() -> Result<()> {
    match util::effective_uid() {
        Some(0) => {}
        Some(uid) => bail!("bearing-e2e topologies need root (running as euid {uid})"),
        None => bail!("cannot determine effective uid from /proc/self/status"),
    }
    for tool in ["ip", "ss", "kill"] {
        if util::find_in_path(tool).is_none() {
            bail!("`{tool}` not found in PATH (install iproute2 / procps)");
        }
    }
    Ok(())
}

/// Removes namespaces and temp dirs left behind by harness processes that
/// died without cleaning up (SIGKILL, Ctrl-C). Only names following our
/// pattern `brg-<pid36>-<n36>-<role>` whose owner pid no longer exists (or is
/// this very process, which has not created anything yet) are touched.
fn sweep_stale() {
    let me = std::process::id();
    let is_stale = |owner: u64| owner == u64::from(me) || !util::pid_exists(owner as u32);
    let owner_of = |rest: &str| -> Option<u64> {
        let mut parts = rest.splitn(3, '-');
        let pid = util::parse_base36(parts.next()?)?;
        util::parse_base36(parts.next()?)?;
        parts.next()?;
        (pid <= u64::from(u32::MAX)).then_some(pid)
    };

    if let Ok(list) = util::ip(["netns", "list"]) {
        for line in list.lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
                continue;
            };
            let Some(owner) = owner_of(rest) else {
                continue;
            };
            if !is_stale(owner) {
                continue;
            }
            if let Ok(pids) = util::ip(["netns", "pids", name]) {
                for pid in pids.split_whitespace() {
                    let _ = util::kill("KILL", pid);
                }
            }
            let _ = util::ip(["netns", "del", name]);
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(name));
            eprintln!("bearing-e2e: removed stale namespace {name} (owner pid {owner} is gone)");
        }
    }

    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(rest) = name.strip_prefix(TEMPDIR_PREFIX) else {
                continue;
            };
            let Some(owner) = owner_of(rest) else {
                continue;
            };
            if is_stale(owner) && entry.path().is_dir() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// A set of network namespaces wired to a common Linux bridge.
///
/// * The bridge namespace `brg-<id>-bridge` holds bridge `br0` with
///   `10.200.X.1/24` and `fd00:beef:X::1/64`.
/// * Host *i* (0-based) lives in namespace `brg-<id>-<name>`, has interface
///   `eth0` with `10.200.X.(i+2)/24` and `fd00:beef:X::(i+2)/64` (the IPv6
///   address uses the decimal digits of X and i+2 as hex groups, so
///   `10.200.37.3` pairs with `fd00:beef:37::3`), and `lo` up.
///
/// `<id>` is `<pid base36>-<counter base36>`, unique per process and topology.
///
/// Dropping the topology terminates every process spawned through it
/// (SIGTERM to each process group, SIGKILL after the grace period), kills
/// anything else left in its namespaces, deletes the namespaces and removes
/// the temp directory. Before deleting, all log files (last 200 lines each)
/// are printed to stderr if the thread is panicking, and also by default when
/// libtest captures output, so tests failing via `Err` show them too (see
/// [`ENV_DUMP_LOGS`]).
pub struct Topology {
    id: String,
    octet: u8,
    bridge_netns: String,
    hosts: Vec<Host>,
    /// Namespaces actually created, in creation order.
    namespaces: Vec<String>,
    shared: Arc<Shared>,
    tempdir: Option<tempfile::TempDir>,
    kill_grace: Duration,
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topology")
            .field("id", &self.id)
            .field("bridge_netns", &self.bridge_netns)
            .field("hosts", &self.hosts)
            .field("dir", &self.shared.dir)
            .finish()
    }
}

impl Topology {
    /// Starts building a topology.
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder {
            hosts: Vec::new(),
            default_route: true,
            kill_grace: DEFAULT_KILL_GRACE,
        }
    }

    /// Shorthand for `Topology::builder().hosts(names).build()`.
    pub fn new(names: &[&str]) -> Result<Topology> {
        Topology::builder().hosts(names.iter().copied()).build()
    }

    fn setup(&mut self, names: &[String], default_route: bool) -> Result<()> {
        let x = self.octet;
        let gw4 = Ipv4Addr::new(10, 200, x, 1);
        let gw6 = ula(x, 1);
        let br = self.bridge_netns.clone();

        self.add_netns(&br)?;
        util::ip(["-n", &br, "link", "set", "lo", "up"])?;
        util::ip(["-n", &br, "link", "add", BRIDGE_DEV, "type", "bridge"])?;
        util::ip(["-n", &br, "link", "set", BRIDGE_DEV, "up"])?;
        util::ip([
            "-n",
            &br,
            "addr",
            "add",
            &format!("{gw4}/24"),
            "dev",
            BRIDGE_DEV,
        ])?;
        util::ip([
            "-n",
            &br,
            "-6",
            "addr",
            "add",
            &format!("{gw6}/64"),
            "dev",
            BRIDGE_DEV,
            "nodad",
        ])?;
        // No forwarding in the bridge namespace: answer foreign destinations
        // with ICMP unreachable so clients fail fast.
        util::ip(["-n", &br, "route", "add", "unreachable", "default"])?;
        util::ip(["-n", &br, "-6", "route", "add", "unreachable", "default"])?;

        for (i, name) in names.iter().enumerate() {
            let n = (i + 2) as u8;
            let ns = format!("{NETNS_PREFIX}{}-{name}", self.id);
            self.add_netns(&ns)?;
            let ip4 = Ipv4Addr::new(10, 200, x, n);
            let ip6 = ula(x, n);
            let vb = format!("vb{i}");
            util::ip([
                "-n", &br, "link", "add", &vb, "type", "veth", "peer", "name", HOST_IFACE, "netns",
                &ns,
            ])
            .with_context(|| format!("creating veth pair for host {name}"))?;
            util::ip(["-n", &br, "link", "set", &vb, "master", BRIDGE_DEV, "up"])?;
            util::ip(["-n", &ns, "link", "set", "lo", "up"])?;
            util::ip(["-n", &ns, "link", "set", HOST_IFACE, "up"])?;
            util::ip([
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip4}/24"),
                "dev",
                HOST_IFACE,
            ])?;
            util::ip([
                "-n",
                &ns,
                "-6",
                "addr",
                "add",
                &format!("{ip6}/64"),
                "dev",
                HOST_IFACE,
                "nodad",
            ])?;
            if default_route {
                util::ip([
                    "-n",
                    &ns,
                    "route",
                    "add",
                    "default",
                    "via",
                    &gw4.to_string(),
                ])?;
                util::ip([
                    "-n",
                    &ns,
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &gw6.to_string(),
                ])?;
            }
            self.hosts.push(Host {
                name: name.clone(),
                netns: ns,
                ip4,
                ip6,
                shared: self.shared.clone(),
            });
        }
        Ok(())
    }

    fn add_netns(&mut self, name: &str) -> Result<()> {
        let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        util::ip(["netns", "add", name]).with_context(|| format!("creating netns {name}"))?;
        self.namespaces.push(name.to_string());
        Ok(())
    }

    /// The unique id of this topology (`<pid36>-<counter36>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The host named `name`.
    ///
    /// # Panics
    /// If there is no such host (a bug in the test).
    pub fn host(&self, name: &str) -> &Host {
        match self.try_host(name) {
            Some(h) => h,
            None => panic!(
                "topology {} has no host {name:?} (hosts: {:?})",
                self.id,
                self.hosts.iter().map(|h| h.name()).collect::<Vec<_>>()
            ),
        }
    }

    /// The host named `name`, if any.
    pub fn try_host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// All hosts, in the order they were added.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Name of the bridge namespace (useful for e.g. `tcpdump` via `ip netns exec`).
    pub fn bridge_netns(&self) -> &str {
        &self.bridge_netns
    }

    /// The IPv4 subnet of this topology, `10.200.X.0`, with prefix length 24.
    pub fn subnet4(&self) -> (Ipv4Addr, u8) {
        (Ipv4Addr::new(10, 200, self.octet, 0), 24)
    }

    /// The IPv6 subnet of this topology, `fd00:beef:X::`, with prefix length 64.
    pub fn subnet6(&self) -> (Ipv6Addr, u8) {
        (ula(self.octet, 0), 64)
    }

    /// IPv4 address of the bridge (`10.200.X.1`, the hosts' default gateway).
    pub fn gateway4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, self.octet, 1)
    }

    /// IPv6 address of the bridge (`fd00:beef:X::1`, the hosts' default gateway).
    pub fn gateway6(&self) -> Ipv6Addr {
        ula(self.octet, 1)
    }

    /// The per-topology temporary directory (mode 0755; removed on drop
    /// unless `BEARING_E2E_KEEP_DIR` is set).
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Directory holding all log files (`<dir>/logs`).
    pub fn logs_dir(&self) -> &Path {
        &self.shared.logs_dir
    }

    /// All log files currently in [`Topology::logs_dir`], sorted by name
    /// (i.e. by start order; `000-commands.log` records every command run).
    pub fn log_files(&self) -> Vec<PathBuf> {
        list_logs(&self.shared.logs_dir)
    }

    /// Prints every log file (last 200 lines each) to stderr. Called
    /// automatically on drop when the thread is panicking.
    pub fn dump_logs(&self) {
        dump_logs(&self.shared.logs_dir, &self.id);
    }

    /// Handles of all processes spawned in this topology so far.
    pub fn processes(&self) -> Vec<Process> {
        self.shared
            .procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|p| Process::from_inner(p.clone()))
            .collect()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);

        let procs: Vec<Arc<ProcInner>> = self
            .shared
            .procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        process::terminate_all(&procs, self.kill_grace);

        // Anything else still inside our namespaces (e.g. daemons that left
        // their process group) is ours too.
        for ns in &self.namespaces {
            if let Ok(pids) = util::ip(["netns", "pids", ns.as_str()]) {
                for pid in pids.split_whitespace() {
                    let _ = util::kill("KILL", pid);
                }
            }
        }

        if should_dump_logs() {
            dump_logs(&self.shared.logs_dir, &self.id);
        }

        for ns in self.namespaces.iter().rev() {
            if let Err(e) = util::ip(["netns", "del", ns.as_str()]) {
                eprintln!("bearing-e2e: failed to delete netns {ns}: {e:#}");
            }
        }
        for dir in self
            .shared
            .etc_dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = std::fs::remove_dir_all(dir);
        }

        // Close our handle before removing the directory.
        drop(
            self.shared
                .commands_log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        if let Some(tempdir) = self.tempdir.take() {
            if env_flag(ENV_KEEP_DIR) {
                let path = tempdir.keep();
                eprintln!("bearing-e2e: kept topology dir {}", path.display());
            } else if let Err(e) = tempdir.close() {
                eprintln!("bearing-e2e: failed to remove topology dir: {e}");
            }
        }
    }
}

/// Whether to print all logs when a topology is dropped.
///
/// Always when panicking. Otherwise `BEARING_E2E_DUMP_LOGS` decides if set
/// (`0` = never, anything else = always); if unset, logs are printed whenever
/// libtest captures output (no `--nocapture`), because captured output is
/// only shown for failed tests. That covers tests that fail by returning
/// `Err`, which drop the topology before the failure is known.
fn should_dump_logs() -> bool {
    if std::thread::panicking() {
        return true;
    }
    if let Some(v) = std::env::var_os(ENV_DUMP_LOGS) {
        return !v.is_empty() && v != "0";
    }
    let nocapture = std::env::var_os("RUST_TEST_NOCAPTURE").is_some_and(|v| v != "0")
        || std::env::args().any(|a| a == "--nocapture" || a == "--no-capture");
    !nocapture
}

fn list_logs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn dump_logs(dir: &Path, id: &str) {
    let files = list_logs(dir);
    let mut out = format!(
        "\n======== bearing-e2e topology {id}: {} log file(s) in {} ========\n",
        files.len(),
        dir.display()
    );
    for f in files {
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let contents = match std::fs::read(&f) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => format!("<unreadable: {e}>"),
        };
        let (skipped, tail) = util::tail_lines(&contents, DUMP_LINES);
        out.push_str(&format!("-------- {name}"));
        if skipped > 0 {
            out.push_str(&format!(" (last {DUMP_LINES} lines, {skipped} omitted)"));
        }
        if tail.is_empty() {
            out.push_str(" (empty)");
        }
        out.push_str(" --------\n");
        out.push_str(tail);
        if !tail.is_empty() && !tail.ends_with('\n') {
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "======== end of logs for topology {id} ========\n"
    ));
    eprint!("{out}");
}

/// `fd00:beef:X::N`, with the decimal digits of X and N used as hex digits.
fn ula(x: u8, n: u8) -> Ipv6Addr {
    let hexlike = |v: u8| u16::from_str_radix(&v.to_string(), 16).unwrap_or(0);
    Ipv6Addr::new(0xfd00, 0xbeef, hexlike(x), 0, 0, 0, 0, hexlike(n))
}

/// One host namespace of a [`Topology`].
///
/// Borrowed from its topology (`topo.host("a")`); safe to share between
/// threads.
pub struct Host {
    name: String,
    netns: String,
    ip4: Ipv4Addr,
    ip6: Ipv6Addr,
    shared: Arc<Shared>,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("name", &self.name)
            .field("netns", &self.netns)
            .field("ip4", &self.ip4)
            .field("ip6", &self.ip6)
            .finish()
    }
}

impl Host {
    /// The host's name as given to the builder.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The network namespace name (`brg-<id>-<name>`), usable with `ip netns exec`.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The host's interface name (always `eth0`).
    pub fn iface(&self) -> &str {
        HOST_IFACE
    }

    /// The host's IPv4 address (`10.200.X.N`).
    pub fn ip4(&self) -> Ipv4Addr {
        self.ip4
    }

    /// The host's IPv6 ULA address (`fd00:beef:X::N`).
    pub fn ip6(&self) -> Ipv6Addr {
        self.ip6
    }

    /// `ip4():port` as a socket address.
    pub fn sock4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip4), port)
    }

    /// `[ip6()]:port` as a socket address.
    pub fn sock6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.ip6), port)
    }

    /// The topology's temp directory (shared by all hosts).
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Starts building a command to run inside this host's namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> HostCommand<'_> {
        HostCommand::new(self, program.as_ref())
    }

    /// Spawns `program args...` in the background inside this namespace; see
    /// [`HostCommand::spawn`].
    pub fn spawn<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<Process>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(program).args(args).spawn()
    }

    /// Runs `program args...` to completion inside this namespace (30 s
    /// limit); see [`HostCommand::output`]. A non-zero exit status is not an
    /// error.
    pub fn run<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(program).args(args).output()
    }

    /// Runs `bash -c script` inside this namespace and fails unless it exits 0.
    pub fn sh(&self, script: &str) -> Result<Output> {
        self.command("bash").arg("-c").arg(script).output()?.check()
    }

    /// Whether something is listening on TCP `port` (any address) in this
    /// namespace, checked with `ss` (no connection is made).
    pub fn tcp_listening(&self, port: u16) -> Result<bool> {
        Ok(!self.listeners("-Hltnp", port)?.is_empty())
    }

    /// Whether a UDP socket is bound to `port` (any address) in this namespace.
    pub fn udp_listening(&self, port: u16) -> Result<bool> {
        Ok(!self.listeners("-Hlunp", port)?.is_empty())
    }

    /// Listening sockets on `port` as reported by `ss`, each with the pids
    /// holding it.
    fn listeners(&self, flags: &str, port: u16) -> Result<Vec<Vec<u32>>> {
        let out = util::ip([
            "netns",
            "exec",
            &self.netns,
            "ss",
            flags,
            "sport",
            "=",
            &format!(":{port}"),
        ])?;
        Ok(out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                l.split("pid=")
                    .skip(1)
                    .filter_map(|rest| {
                        let digits: String =
                            rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                        digits.parse().ok()
                    })
                    .collect()
            })
            .collect())
    }

    /// Whether a TCP connection from this namespace to `addr` succeeds within
    /// one second (the connection is closed immediately).
    pub fn can_connect(&self, addr: SocketAddr) -> bool {
        let script = format!("exec 3<>/dev/tcp/{}/{}", addr.ip(), addr.port());
        self.command("timeout")
            .args(["1", "bash", "-c", &script])
            .timeout(Duration::from_secs(5))
            .output()
            .map(|o| o.success())
            .unwrap_or(false)
    }

    /// Waits until a TCP listener on `port` exists in this namespace.
    ///
    /// If `process` is given, the listener must belong to its process group
    /// (so a port already taken by someone else is not mistaken for
    /// readiness), and the wait fails early when the process exits; errors
    /// include its log.
    pub fn wait_for_tcp_listener(
        &self,
        port: u16,
        timeout: Duration,
        process: Option<&Process>,
    ) -> Result<()> {
        self.wait_listening("TCP", "-Hltnp", port, timeout, process)
    }

    /// Waits until a UDP socket bound to `port` exists in this namespace; see
    /// [`Host::wait_for_tcp_listener`].
    pub fn wait_for_udp_listener(
        &self,
        port: u16,
        timeout: Duration,
        process: Option<&Process>,
    ) -> Result<()> {
        self.wait_listening("UDP", "-Hlunp", port, timeout, process)
    }

    fn wait_listening(
        &self,
        proto: &str,
        flags: &str,
        port: u16,
        timeout: Duration,
        process: Option<&Process>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let listeners = self.listeners(flags, port)?;
            let ready = match process {
                None => !listeners.is_empty(),
                Some(p) => listeners
                    .iter()
                    .flatten()
                    .any(|&pid| util::process_group_of(pid) == Some(p.pid())),
            };
            if ready {
                return Ok(());
            }
            if let Some(p) = process {
                if let Some(status) = p.try_status() {
                    bail!(
                        "{proto} port {port} on host {}: {} exited with {status} before listening\n{}",
                        self.name,
                        p.label(),
                        p.describe_log()
                    );
                }
            }
            if Instant::now() >= deadline {
                let (what, log) = match process {
                    Some(p) if !listeners.is_empty() => (
                        format!(
                            "{} not listening on {proto} port {port}, which is held by other process(es) {:?}",
                            p.label(),
                            listeners.concat()
                        ),
                        p.describe_log(),
                    ),
                    Some(p) => (
                        format!("{} not listening on {proto} port {port}", p.label()),
                        p.describe_log(),
                    ),
                    None => (
                        format!("nothing listening on {proto} port {port}"),
                        String::new(),
                    ),
                };
                bail!("host {}: {what} after {timeout:?}\n{log}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes `/etc/netns/<netns>/<file>`, which `ip netns exec` bind-mounts
    /// over `/etc/<file>` for every command subsequently run on this host
    /// (e.g. `resolv.conf`, `hosts`). The target `/etc/<file>` must exist.
    /// Removed when the topology is dropped.
    pub fn set_etc_file(&self, file: &str, contents: &str) -> Result<()> {
        if file.is_empty() || file.contains('/') || file.starts_with('.') {
            bail!("invalid /etc file name {file:?}");
        }
        let dir = Path::new("/etc/netns").join(&self.netns);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        {
            let mut dirs = self
                .shared
                .etc_dirs
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !dirs.contains(&dir) {
                dirs.push(dir.clone());
            }
        }
        let path = dir.join(file);
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| f.write_all(contents.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ula_mirrors_ipv4_digits() {
        assert_eq!(ula(37, 3).to_string(), "fd00:beef:37::3");
        assert_eq!(ula(250, 12).to_string(), "fd00:beef:250::12");
        assert_eq!(ula(1, 0).to_string(), "fd00:beef:1::");
    }

    #[test]
    fn host_name_validation() {
        let v = |names: &[&str]| {
            validate_host_names(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        assert!(v(&["a", "b-2", "client"]).is_ok());
        assert!(v(&[]).is_err());
        assert!(v(&["A"]).is_err());
        assert!(v(&["1a"]).is_err());
        assert!(v(&["bridge"]).is_err());
        assert!(v(&["a", "a"]).is_err());
        assert!(v(&["abcdefghijklm"]).is_err());
    }
}

//! Running the real `bearing` binary inside a test host, and reading its admin API.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::http::admin_request;
use crate::{wait_until_ok, Host, Process, Topology};

/// Kuma's data-plane uid, which transparent proxying excludes from redirection.
pub const KUMA_DP_UID: u32 = 5678;

/// How long a proxy may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The `bearing` binary: `$BEARING_BIN`, or built once per test process with cargo.
pub fn bearing_bin() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("BEARING_BIN") {
            return Ok(PathBuf::from(p));
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or("tests/ has no parent")?
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--quiet", "-p", "bearing"])
            .current_dir(&root)
            .status()
            .map_err(|e| format!("cannot run cargo build: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build -p bearing failed: {status}"));
        }
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        Ok(target.join("debug").join("bearing"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// A Dataplane resource `name` in mesh `default` at `host`'s IPv4 address; `networking` is the
/// rest of its `networking:` block, each line indented by two spaces.
pub fn dataplane_yaml(name: &str, host: &Host, networking: &str) -> String {
    format!(
        "type: Dataplane\nname: {name}\nmesh: default\nnetworking:\n  address: {}\n{networking}",
        host.ip4()
    )
}

/// Writes a directory store `<topology dir>/store` holding `files` (name, YAML text); the
/// topology dir is readable by the proxy's uid.
pub fn write_store(topo: &Topology, files: &[(&str, String)]) -> Result<PathBuf> {
    let dir = topo.dir().join("store");
    std::fs::create_dir_all(&dir)?;
    for (name, text) in files {
        write_store_file(&dir, name, text)?;
    }
    Ok(dir)
}

/// Writes one store file atomically (temp file + rename), as config management tools do, so
/// the proxy's watcher never reads half a file.
pub fn write_store_file(dir: &Path, name: &str, text: &str) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(name)).context("rename into store")
}

/// Runs `bearing ca generate --mesh <mesh> --store <store>` (outside the namespaces; the
/// command only writes files) and returns the file it wrote, `<store>/ca-<mesh>-ca-1.yaml`,
/// which holds the mesh's builtin CA as Kuma Secrets. The file is handed to Kuma's
/// data-plane uid so that proxies started by [`Bearing`] can read the key.
pub fn bearing_ca_generate(store: &Path, mesh: &str) -> Result<PathBuf> {
    let file = store.join(format!("ca-{mesh}-ca-1.yaml"));
    let args = ["generate", "--mesh", mesh, "--store"];
    bearing_ca(
        args.iter().map(OsStr::new).chain([store.as_os_str()]),
        &file,
    )?;
    std::os::unix::fs::chown(&file, Some(KUMA_DP_UID), Some(KUMA_DP_UID))
        .with_context(|| format!("chown {}", file.display()))?;
    Ok(file)
}

/// Runs `bearing ca issue --mesh <mesh> --store <admin> --dataplane <dataplane> --out-store
/// <out>` (outside the namespaces) and hands the files of `out` (the identity Secret and the
/// CA certificate Secret among them) to Kuma's data-plane uid; returns the identity file.
pub fn bearing_ca_issue(admin: &Path, mesh: &str, dataplane: &str, out: &Path) -> Result<PathBuf> {
    let file = out.join(format!("identity-{mesh}-{dataplane}.yaml"));
    let args = [
        OsStr::new("issue"),
        OsStr::new("--mesh"),
        OsStr::new(mesh),
        OsStr::new("--dataplane"),
        OsStr::new(dataplane),
        OsStr::new("--store"),
        admin.as_os_str(),
        OsStr::new("--out-store"),
        out.as_os_str(),
    ];
    bearing_ca(args, &file)?;
    for entry in std::fs::read_dir(out)? {
        let path = entry?.path();
        std::os::unix::fs::chown(&path, Some(KUMA_DP_UID), Some(KUMA_DP_UID))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(file)
}

/// Runs `bearing ca <args>` and requires success and `file` as the path it prints.
fn bearing_ca<'a>(args: impl IntoIterator<Item = &'a OsStr>, file: &Path) -> Result<()> {
    let bin = bearing_bin()?;
    let out = std::process::Command::new(&bin)
        .arg("ca")
        .args(args)
        .output()
        .with_context(|| format!("running {} ca", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "bearing ca failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !stdout.contains(&file.display().to_string()) {
        bail!(
            "bearing ca printed {stdout:?}, not the path {}",
            file.display()
        );
    }
    Ok(())
}

/// `--config-dir <store>`.
fn store_args(store: &Path) -> [&OsStr; 2] {
    [OsStr::new("--config-dir"), store.as_os_str()]
}

/// A `bearing run` process in a test host, with its admin address on that host's loopback.
pub struct Bearing<'h> {
    host: &'h Host,
    process: Process,
    admin_port: u16,
}

impl<'h> Bearing<'h> {
    /// Starts `bearing run --config-dir <store> <extra args>` in `host` as uid 5678 (Kuma's
    /// data-plane uid) and waits until `/ready` answers 200.
    pub fn start(host: &'h Host, store: &Path, extra: &[&str]) -> Result<Self> {
        let b = Self::spawn(host, store, extra)?;
        b.wait_ready()?;
        Ok(b)
    }

    /// Starts the proxy without waiting for readiness.
    pub fn spawn(host: &'h Host, store: &Path, extra: &[&str]) -> Result<Self> {
        Self::spawn_with_nofile(host, store, extra, None)
    }

    /// [`Bearing::start`] with the process's descriptor limit (soft and hard) lowered to
    /// `nofile`, as `ulimit -n` in a wrapper would.
    pub fn start_with_nofile(
        host: &'h Host,
        store: &Path,
        extra: &[&str],
        nofile: u32,
    ) -> Result<Self> {
        let b = Self::spawn_with_nofile(host, store, extra, Some(nofile))?;
        b.wait_ready()?;
        Ok(b)
    }

    fn spawn_with_nofile(
        host: &'h Host,
        store: &Path,
        extra: &[&str],
        nofile: Option<u32>,
    ) -> Result<Self> {
        let admin_port = 9901;
        let admin = [
            "--admin-address".to_string(),
            format!("127.0.0.1:{admin_port}"),
        ];
        let args: Vec<&str> = admin
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
            .collect();
        Self::launch(host, &store_args(store), &args, admin_port, nofile)
    }

    /// Spawns `bearing run <source_args>` (e.g. `--cp-address URL --ca-cert-file F ...`) in
    /// `host` with its admin API on 127.0.0.1:9901, without waiting for readiness.
    pub fn spawn_with_source(host: &'h Host, source_args: &[&OsStr]) -> Result<Self> {
        let admin_port = 9901;
        let admin = format!("127.0.0.1:{admin_port}");
        Self::launch(
            host,
            source_args,
            &["--admin-address", &admin],
            admin_port,
            None,
        )
    }

    /// Spawns `bearing run <source_args> <extra>` without `--admin-address`, its admin API
    /// expected on 127.0.0.1:`admin_port` (the one the control plane's bootstrap gives),
    /// without waiting for readiness.
    pub fn spawn_with_source_admin_port(
        host: &'h Host,
        source_args: &[&OsStr],
        extra: &[&str],
        admin_port: u16,
    ) -> Result<Self> {
        Self::launch(host, source_args, extra, admin_port, None)
    }

    /// Starts the proxy without `--admin-address`, so that it chooses its admin port itself
    /// (the resource's `networking.admin.port`, else `--admin-port`, else 9901), and waits
    /// until `/ready` answers 200 on 127.0.0.1:`admin_port`.
    pub fn start_with_own_admin_port(
        host: &'h Host,
        store: &Path,
        extra: &[&str],
        admin_port: u16,
    ) -> Result<Self> {
        let b = Self::launch(host, &store_args(store), extra, admin_port, None)?;
        b.wait_ready()?;
        Ok(b)
    }

    /// Spawns `bearing run <source_args>` with `extra` arguments, under a descriptor limit of
    /// `nofile` if given; its admin API is expected on 127.0.0.1:`admin_port`.
    fn launch(
        host: &'h Host,
        source_args: &[&OsStr],
        extra: &[&str],
        admin_port: u16,
        nofile: Option<u32>,
    ) -> Result<Self> {
        let bin = bearing_bin()?;
        let command = match nofile {
            // `exec` keeps the pid: the process handle is the proxy's.
            Some(n) => host
                .command("bash")
                .arg("-c")
                .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                .arg(&bin),
            None => host.command(&bin),
        };
        let process = command
            .arg("run")
            .args(source_args)
            .args(["--drain-time", "10s", "--log-level", "info,bearing=debug"])
            .args(extra)
            .uid(KUMA_DP_UID)
            .log_name("bearing")
            .spawn()?;
        Ok(Bearing {
            host,
            process,
            admin_port,
        })
    }

    /// The process handle.
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Polls `/ready` until it answers 200.
    pub fn wait_ready(&self) -> Result<()> {
        wait_until_ok(READY_TIMEOUT, || {
            if !self.process.is_running() {
                bail!("bearing exited:\n{}", self.process.describe_log());
            }
            let (code, body) = self.admin("GET", "/ready")?;
            if code == 200 {
                Ok(())
            } else {
                bail!("/ready answered {code}: {body}")
            }
        })
    }

    /// Sends `method path` to the admin API; returns status and body.
    pub fn admin(&self, method: &str, path: &str) -> Result<(u16, String)> {
        admin_request(self.host, self.admin_port, method, path)
    }

    /// `/config_dump` as JSON.
    pub fn config_dump(&self) -> Result<serde_json::Value> {
        let (code, body) = self.admin("GET", "/config_dump")?;
        if code != 200 {
            bail!("/config_dump answered {code}");
        }
        serde_json::from_str(&body).context("/config_dump is not JSON")
    }

    /// The VIP the proxy's mesh DNS table gives `name` (`/config_dump`'s `config.dns`), if any.
    pub fn dns_vip(&self, name: &str) -> Result<Option<String>> {
        let dump = self.config_dump()?;
        Ok(dump["config"]["dns"].as_array().and_then(|records| {
            records
                .iter()
                .find(|r| r["name"] == name)
                .and_then(|r| r["ips"][0].as_str())
                .map(str::to_string)
        }))
    }

    /// The value of one Prometheus sample, e.g.
    /// `bearing_listener_http_requests_total{listener="outbound:127.0.0.1:10001",class="2xx"}`;
    /// 0 when the series does not exist.
    pub fn metric(&self, series: &str) -> Result<f64> {
        let (_, text) = self.admin("GET", "/stats/prometheus")?;
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix(series))
            .filter_map(|rest| rest.strip_prefix(' '))
            .filter_map(|v| v.trim().parse().ok())
            .next()
            .unwrap_or(0.0))
    }
}

//! The directory store config source: a folder of Kuma resources, watched for changes.
//!
//! Each reload reads the whole folder, finds this proxy's Dataplane and compiles its view. A
//! result that fails is published as rejected next to the last good config, which stays applied.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bearing_model::{IgnoredResource, Problem, Resource, Store};
use bearing_proxy_config::ProxyConfig;
use serde::Serialize;
use tokio::sync::watch;

use crate::compile::{compile, CompileOptions};
use crate::template;
use crate::virtual_ips::VipOptions;

/// Where this proxy's own Dataplane comes from.
#[derive(Debug, Clone)]
pub enum DataplaneSource {
    /// `--dataplane-file`: a (template) file, re-read on every reload.
    File(PathBuf),
    /// `--dataplane`: inline (template) YAML.
    Inline(String),
    /// `--name`/`--mesh` only: the Dataplane of that name in the store.
    Named,
}

/// Which resource type describes this proxy (`--proxy-type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProxyKind {
    /// A sidecar or gateway: a Dataplane.
    #[default]
    Dataplane,
    /// A zone ingress: a ZoneIngress.
    Ingress,
    /// A zone egress: a ZoneEgress.
    Egress,
}

impl ProxyKind {
    /// The Kuma resource type of this kind of proxy.
    pub fn type_name(self) -> &'static str {
        match self {
            ProxyKind::Dataplane => "Dataplane",
            ProxyKind::Ingress => "ZoneIngress",
            ProxyKind::Egress => "ZoneEgress",
        }
    }

    /// Zone proxies are not scoped to a mesh.
    fn mesh_scoped(self) -> bool {
        self == ProxyKind::Dataplane
    }
}

/// A directory store plus how to find this proxy in it.
#[derive(Debug, Clone)]
pub struct DirectorySource {
    /// The store folder.
    pub dir: PathBuf,
    /// This proxy's Dataplane.
    pub dataplane: DataplaneSource,
    /// `--dataplane-var` values for the template.
    pub vars: BTreeMap<String, String>,
    /// `--name`: overrides (or, with `Named`, selects) the Dataplane name.
    pub name: Option<String>,
    /// `--mesh`: overrides (or, with `Named`, selects) the Dataplane mesh.
    pub mesh: Option<String>,
    /// Mesh hostname settings (VIP range, DNS domain).
    pub vips: VipOptions,
    /// `--proxy-type`: which resource type describes this proxy.
    pub kind: ProxyKind,
    /// `--zone`: this proxy's zone, overriding the one its resource gives.
    pub zone: Option<String>,
}

/// What [`DirectorySource::fingerprint`] compares: each file with its size and time.
pub type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// A config that compiled, with what the store held that Bearing does not act on.
#[derive(Debug, Clone, Serialize)]
pub struct Loaded {
    /// The compiled config.
    pub config: Arc<ProxyConfig>,
    /// Resources of types not acted on.
    pub ignored: Vec<IgnoredResource>,
    /// What the store asks for that Bearing does not enforce, one line per resource and field
    /// (`file:line: Type/name: field: not enforced by Bearing: …`); logged once per change.
    pub not_enforced: Vec<String>,
}

/// A config that did not compile, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    /// When it was rejected (seconds since the Unix epoch).
    pub at_unix_seconds: u64,
    /// Every problem, as `file:line: Type/name: field: problem`.
    pub problems: Vec<String>,
}

impl Rejected {
    /// A rejection with these problems, stamped now.
    pub fn now(problems: Vec<String>) -> Rejected {
        Rejected {
            at_unix_seconds: unix_now(),
            problems,
        }
    }
}

/// What the config source has produced so far; published on a `watch` channel.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigStatus {
    /// The config in force (None until a first valid one).
    pub applied: Option<Loaded>,
    /// The most recent rejected config, if any since start.
    pub last_rejected: Option<Rejected>,
    /// The store could not be read on the last attempt (each I/O error naming its file):
    /// nothing changed, and the watcher reads again every second until a read is whole.
    /// Cleared by the next whole read.
    pub read_error: Option<Rejected>,
}

impl ConfigStatus {
    /// The version in force, for the "still serving" lines of a rejection.
    pub fn serving_version(&self) -> String {
        self.applied
            .as_ref()
            .map_or_else(|| "(none yet)".to_string(), |a| a.config.version.clone())
    }
}

/// Why a load produced no config.
#[derive(Debug, Clone)]
pub enum LoadError {
    /// Files or the folder could not be read (descriptors exhausted, permissions, an I/O
    /// error, a file gone mid-read): the store is not known, so this is no config change.
    Io(Vec<Problem>),
    /// The store was read and is wrong: the config is rejected.
    Rejected(Vec<Problem>),
}

impl LoadError {
    /// Every problem or I/O error, as `file:line: …`.
    pub fn problems(&self) -> &[Problem] {
        match self {
            LoadError::Io(p) | LoadError::Rejected(p) => p,
        }
    }
}

impl DirectorySource {
    /// Reads the store and this proxy's Dataplane and compiles its config. A read that fails
    /// anywhere is [`LoadError::Io`], before anything is concluded from what was read (a
    /// Dataplane in an unreadable file is not "missing").
    pub fn load(&self) -> Result<Loaded, LoadError> {
        let mut store = Store::load_dir(&self.dir);
        let own = self.own_text()?;
        if !store.io_errors.is_empty() {
            return Err(LoadError::Io(store.io_errors));
        }
        let me = self
            .own_dataplane(own, &mut store)
            .map_err(LoadError::Rejected)?;
        if !store.problems.is_empty() {
            return Err(LoadError::Rejected(store.problems));
        }
        let source = format!("directory store {}", self.dir.display());
        let options = CompileOptions {
            zone: self.zone.clone(),
            vips: self.vips.clone(),
        };
        let config = compile(&store, &me, &source, &options).map_err(LoadError::Rejected)?;
        Ok(Loaded {
            config: Arc::new(config),
            ignored: store.ignored,
            not_enforced: store.warnings.iter().map(ToString::to_string).collect(),
        })
    }

    /// Files and folders whose change means a reload.
    pub fn watched_paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.dir.clone()];
        if let DataplaneSource::File(f) = &self.dataplane {
            let parent = f.parent().filter(|p| !p.as_os_str().is_empty());
            let parent = parent.map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            if parent != self.dir {
                paths.push(parent);
            }
        }
        paths
    }

    /// This proxy's own Dataplane text and the file it names, unless it is found by name in
    /// the store; failing to read `--dataplane-file` is an I/O error.
    fn own_text(&self) -> Result<Option<(String, PathBuf)>, LoadError> {
        match &self.dataplane {
            DataplaneSource::Named => Ok(None),
            DataplaneSource::Inline(text) => Ok(Some((text.clone(), PathBuf::from("--dataplane")))),
            DataplaneSource::File(path) => {
                let bytes = std::fs::read(path).map_err(|e| {
                    LoadError::Io(vec![plain_problem(
                        path,
                        format!("cannot read dataplane file: {e}"),
                    )])
                })?;
                let text = bearing_model::yaml::check_utf8(&bytes).map_err(|e| {
                    LoadError::Rejected(vec![Problem {
                        line: e.line,
                        column: Some(e.column),
                        ..plain_problem(path, format!("invalid YAML: {}", e.message))
                    }])
                })?;
                Ok(Some((text.to_string(), path.clone())))
            }
        }
    }

    fn own_dataplane(
        &self,
        own: Option<(String, PathBuf)>,
        store: &mut Store,
    ) -> Result<Resource, Vec<Problem>> {
        let Some((text, file)) = own else {
            return self.named_dataplane(store);
        };
        let rendered =
            template::render(&text, &self.vars).map_err(|m| vec![plain_problem(&file, m)])?;
        let mut own = Store::default();
        own.add_text(&rendered, &file);
        if !own.problems.is_empty() {
            return Err(own.problems);
        }
        store.warnings.append(&mut own.warnings);
        let type_name = self.kind.type_name();
        let mut dataplanes = own
            .resources
            .into_iter()
            .filter(|r| r.spec.type_name() == type_name);
        let (Some(mut me), None) = (dataplanes.next(), dataplanes.next()) else {
            return Err(vec![plain_problem(
                &file,
                format!("must hold exactly one {type_name} resource"),
            )]);
        };
        if let Some(name) = &self.name {
            me.meta.name = name.clone();
        }
        if let (Some(mesh), true) = (&self.mesh, self.kind.mesh_scoped()) {
            me.mesh = Some(mesh.clone());
        }
        // The proxy's own definition wins over a copy of it in the store.
        store.resources.retain(|r| {
            !(r.spec.type_name() == type_name && r.meta.name == me.meta.name && r.mesh == me.mesh)
        });
        store.resources.push(me.clone());
        Ok(me)
    }

    fn named_dataplane(&self, store: &Store) -> Result<Resource, Vec<Problem>> {
        let mesh = self.mesh.clone().unwrap_or_else(|| "default".into());
        let Some(name) = &self.name else {
            return Err(vec![plain_problem(
                &self.dir,
                "give --dataplane-file, --dataplane or --name to say which Dataplane this proxy is"
                    .into(),
            )]);
        };
        let type_name = self.kind.type_name();
        let scoped = self.kind.mesh_scoped();
        store
            .resources
            .iter()
            .find(|r| {
                r.spec.type_name() == type_name
                    && &r.meta.name == name
                    && (!scoped || r.mesh.as_deref() == Some(mesh.as_str()))
            })
            .cloned()
            .ok_or_else(|| {
                let place = if scoped {
                    format!(" in mesh {mesh:?}")
                } else {
                    String::new()
                };
                vec![plain_problem(
                    &self.dir,
                    format!("no {type_name} {name:?}{place} in the store"),
                )]
            })
    }

    /// Watches the store and publishes every change on `status` from a background thread.
    ///
    /// Changes are noticed through inotify and, as a fallback for folders that are replaced
    /// or remounted, by comparing file sizes and times every second. The thread ends when
    /// every receiver of `status` is gone.
    /// Watches for changes on a thread of its own, publishing each reload on `status`.
    /// `loaded` is the [`fingerprint`](Self::fingerprint) taken just before the caller's first
    /// load: a change made between that load and the watch being set up is caught by it,
    /// without reloading an unchanged store a second time.
    pub fn watch(
        self,
        status: watch::Sender<ConfigStatus>,
        loaded: Fingerprint,
    ) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("config-watch".into())
            .spawn(move || self.watch_loop(status, loaded))
            .map(|_| ())
    }

    fn watch_loop(self, status: watch::Sender<ConfigStatus>, loaded: Fingerprint) {
        use notify::Watcher;
        let (events_tx, events) = std::sync::mpsc::channel();
        // Only changes count: reading the store (our own reloads included) must not trigger one.
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
                let _ = events_tx.send(());
            }
        })
        .map_err(|e| tracing::warn!("inotify unavailable, polling only: {e}"))
        .ok();
        let mut watching = false;
        let mut last = loaded;
        let mut first = true;
        loop {
            if !watching {
                if let Some(w) = watcher.as_mut() {
                    watching = self
                        .watched_paths()
                        .iter()
                        .all(|p| w.watch(p, notify::RecursiveMode::NonRecursive).is_ok());
                }
            }
            // The first round compares with the caller's load at once (no wait).
            let notified = match events.recv_timeout(if std::mem::take(&mut first) {
                Duration::ZERO
            } else {
                Duration::from_secs(1)
            }) {
                Ok(()) => {
                    // Let an editor or `cp` finish writing, then take every queued event at once.
                    std::thread::sleep(Duration::from_millis(100));
                    while events.try_recv().is_ok() {}
                    true
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => false,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    watcher = None;
                    false
                }
            };
            if status.is_closed() {
                return;
            }
            let now = self.fingerprint();
            // A read that failed is tried again every second, changed or not.
            let unread = status.borrow().read_error.is_some();
            if !notified && now == last && !unread {
                continue;
            }
            if now.is_empty() {
                watching = false;
            }
            last = now;
            self.reload_into(&status);
        }
    }

    /// Loads once and publishes the result: applied when it compiles (and differs), rejected
    /// when the store is wrong, a read error (logged when it differs from the last one) when
    /// the store could not be read.
    pub fn reload_into(&self, status: &watch::Sender<ConfigStatus>) {
        let result = self.load();
        if !matches!(result, Err(LoadError::Io(_))) {
            status.send_if_modified(|s| s.read_error.take().is_some());
        }
        match result {
            Err(LoadError::Io(errors)) => {
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                status.send_if_modified(|s| {
                    let same = s.read_error.as_ref().is_some_and(|r| r.problems == errors);
                    if !same {
                        for e in &errors {
                            tracing::error!("cannot read the store: {e}");
                        }
                        tracing::error!(
                            "store not read; nothing changed, still serving version {}; reading again every second",
                            s.serving_version()
                        );
                        s.read_error = Some(Rejected::now(errors));
                    }
                    !same
                });
            }
            Ok(loaded) => {
                status.send_if_modified(|s| {
                    let same = s.applied.as_ref().is_some_and(|a| {
                        a.config.version == loaded.config.version
                            && a.ignored == loaded.ignored
                            && a.not_enforced == loaded.not_enforced
                    });
                    if !same {
                        for w in &loaded.not_enforced {
                            tracing::warn!("{w}");
                        }
                        tracing::info!(version = %loaded.config.version, "config applied");
                        s.applied = Some(loaded);
                    }
                    !same
                });
            }
            Err(LoadError::Rejected(problems)) => {
                for p in &problems {
                    tracing::error!("config rejected: {p}");
                }
                tracing::error!(
                    "config rejected with {} problem(s); still serving version {}",
                    problems.len(),
                    status.borrow().serving_version()
                );
                status.send_modify(|s| {
                    s.last_rejected = Some(Rejected::now(
                        problems.iter().map(ToString::to_string).collect(),
                    ))
                });
            }
        }
    }

    /// Size and modification time of every file that feeds the config.
    /// Names, sizes and modification times of the store's files (and the Dataplane file):
    /// equal fingerprints mean nothing to reload.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        if let DataplaneSource::File(f) = &self.dataplane {
            files.push(f.clone());
        }
        files.sort();
        files
            .into_iter()
            .filter_map(|p| {
                let m = std::fs::metadata(&p).ok()?;
                Some((p, m.len(), m.modified().ok()))
            })
            .collect()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn plain_problem(file: &Path, message: String) -> Problem {
    Problem {
        file: file.to_path_buf(),
        line: 0,
        column: None,
        resource: None,
        field: None,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORE: &str = "type: Dataplane\nname: backend-1\nmesh: default\nnetworking:\n  address: 10.0.0.2\n  inbound:\n  - port: 8080\n    tags: {kuma.io/service: backend}\n";
    const ME: &str = "type: Dataplane\nname: {{ name }}\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 8080\n    tags: {kuma.io/service: web}\n  outbound:\n  - port: 10001\n    tags: {kuma.io/service: backend}\n";

    fn source(dir: &Path, dataplane: DataplaneSource) -> DirectorySource {
        DirectorySource {
            dir: dir.to_path_buf(),
            dataplane,
            vars: template::parse_vars(&["name=web-1".into()]).unwrap(),
            name: None,
            mesh: None,
            vips: VipOptions::default(),
            kind: ProxyKind::Dataplane,
            zone: None,
        }
    }

    #[test]
    fn loads_dataplane_file_with_vars() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("backend.yaml"), STORE).unwrap();
        let dp = dir.path().join("web.tpl");
        std::fs::write(&dp, ME).unwrap();
        let loaded = source(dir.path(), DataplaneSource::File(dp))
            .load()
            .unwrap();
        assert_eq!(loaded.config.identity.name, "web-1");
        assert_eq!(loaded.config.clusters["backend"].endpoints.len(), 1);
    }

    #[test]
    fn rejected_change_keeps_applied_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("backend.yaml"), STORE).unwrap();
        let src = source(dir.path(), DataplaneSource::Inline(ME.into()));
        let (tx, rx) = watch::channel(ConfigStatus::default());
        src.reload_into(&tx);
        let good = rx.borrow().applied.as_ref().unwrap().config.version.clone();
        std::fs::write(dir.path().join("broken.yaml"), "type: Dataplane\nname: x\n").unwrap();
        src.reload_into(&tx);
        let s = rx.borrow();
        assert_eq!(s.applied.as_ref().unwrap().config.version, good);
        let rejected = s.last_rejected.as_ref().unwrap();
        assert!(
            rejected.problems[0].contains("broken.yaml:1: Dataplane/x"),
            "{:?}",
            rejected.problems
        );
    }

    #[test]
    fn io_errors_stay_io_errors_and_keep_the_applied_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("backend.yaml"), STORE).unwrap();
        let mut src = source(dir.path(), DataplaneSource::Named);
        src.name = Some("backend-1".into());
        let (tx, rx) = watch::channel(ConfigStatus::default());
        src.reload_into(&tx);
        let good = rx.borrow().applied.as_ref().unwrap().config.version.clone();
        // EIO on read (the file is listed and stat-able, its content cannot be read), and the
        // Dataplane's own file unreadable (ELOOP): read errors naming the file, never "no
        // Dataplane", never a rejection.
        let eio = dir.path().join("eio.yaml");
        std::os::unix::fs::symlink("/proc/self/mem", &eio).unwrap();
        std::fs::remove_file(dir.path().join("backend.yaml")).unwrap();
        let looped = dir.path().join("backend.yaml");
        std::os::unix::fs::symlink(&looped, &looped).unwrap();
        let err = src.load().unwrap_err();
        let LoadError::Io(errors) = &err else {
            panic!("not an I/O error: {err:?}");
        };
        let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(
            texts.iter().any(|t| t
                .starts_with(&format!("{}:0: cannot read file:", looped.display()))
                && t.contains("symbolic links")),
            "{texts:?}"
        );
        assert!(
            texts.iter().any(
                |t| t.starts_with(&format!("{}:0: cannot read file:", eio.display()))
                    && t.contains("Input/output error")
            ),
            "{texts:?}"
        );
        src.reload_into(&tx);
        {
            let s = rx.borrow();
            assert_eq!(s.applied.as_ref().unwrap().config.version, good);
            assert!(s.last_rejected.is_none());
            assert_eq!(s.read_error.as_ref().unwrap().problems, texts);
        }
        // Readable again: the read error clears and the same config stays.
        std::fs::remove_file(&eio).unwrap();
        std::fs::remove_file(&looped).unwrap();
        std::fs::write(dir.path().join("backend.yaml"), STORE).unwrap();
        src.reload_into(&tx);
        let s = rx.borrow();
        assert!(s.read_error.is_none());
        assert_eq!(s.applied.as_ref().unwrap().config.version, good);
    }

    #[test]
    fn missing_dataplane_file_and_unknown_name_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.yaml");
        let err = source(dir.path(), DataplaneSource::File(missing))
            .load()
            .unwrap_err();
        assert!(matches!(err, LoadError::Io(_)), "{err:?}");
        assert!(
            err.problems()[0]
                .to_string()
                .contains("nope.yaml:0: cannot read dataplane file"),
            "{:?}",
            err
        );
        let mut named = source(dir.path(), DataplaneSource::Named);
        named.name = Some("ghost".into());
        let err = named.load().unwrap_err();
        assert!(matches!(err, LoadError::Rejected(_)), "{err:?}");
        assert!(
            err.problems()[0].message.contains("no Dataplane \"ghost\""),
            "{:?}",
            err
        );
    }
}

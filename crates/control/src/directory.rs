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
}

/// A config that did not compile, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    /// When it was rejected (seconds since the Unix epoch).
    pub at_unix_seconds: u64,
    /// Every problem, as `file:line: Type/name: field: problem`.
    pub problems: Vec<String>,
}

/// What the config source has produced so far; published on a `watch` channel.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigStatus {
    /// The config in force (None until a first valid one).
    pub applied: Option<Loaded>,
    /// The most recent rejected config, if any since start.
    pub last_rejected: Option<Rejected>,
}

impl DirectorySource {
    /// Reads the store and this proxy's Dataplane and compiles its config.
    pub fn load(&self) -> Result<Loaded, Vec<Problem>> {
        let mut store = Store::load_dir(&self.dir);
        let me = self.own_dataplane(&mut store)?;
        if !store.problems.is_empty() {
            return Err(store.problems);
        }
        let source = format!("directory store {}", self.dir.display());
        let options = CompileOptions {
            zone: self.zone.clone(),
            vips: self.vips.clone(),
        };
        let config = compile(&store, &me, &source, &options)?;
        Ok(Loaded {
            config: Arc::new(config),
            ignored: store.ignored,
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

    fn own_dataplane(&self, store: &mut Store) -> Result<Resource, Vec<Problem>> {
        let (text, file) = match &self.dataplane {
            DataplaneSource::Named => return self.named_dataplane(store),
            DataplaneSource::Inline(text) => (text.clone(), PathBuf::from("--dataplane")),
            DataplaneSource::File(path) => match std::fs::read_to_string(path) {
                Ok(t) => (t, path.clone()),
                Err(e) => {
                    return Err(vec![plain_problem(
                        path,
                        format!("cannot read dataplane file: {e}"),
                    )])
                }
            },
        };
        let rendered =
            template::render(&text, &self.vars).map_err(|m| vec![plain_problem(&file, m)])?;
        let mut own = Store::default();
        own.add_text(&rendered, &file);
        if !own.problems.is_empty() {
            return Err(own.problems);
        }
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
            if !notified && now == last {
                continue;
            }
            if now.is_empty() {
                watching = false;
            }
            last = now;
            self.reload_into(&status);
        }
    }

    /// Loads once and publishes the result: applied when it compiles (and differs), else rejected.
    pub fn reload_into(&self, status: &watch::Sender<ConfigStatus>) {
        match self.load() {
            Ok(loaded) => {
                status.send_if_modified(|s| {
                    let same = s.applied.as_ref().is_some_and(|a| {
                        a.config.version == loaded.config.version && a.ignored == loaded.ignored
                    });
                    if !same {
                        tracing::info!(version = %loaded.config.version, "config applied");
                        s.applied = Some(loaded);
                    }
                    !same
                });
            }
            Err(problems) => {
                for p in &problems {
                    tracing::error!("config rejected: {p}");
                }
                let kept = status
                    .borrow()
                    .applied
                    .as_ref()
                    .map(|a| a.config.version.clone());
                tracing::error!(
                    "config rejected with {} problem(s); still serving version {}",
                    problems.len(),
                    kept.as_deref().unwrap_or("(none yet)")
                );
                status.send_modify(|s| {
                    s.last_rejected = Some(Rejected {
                        at_unix_seconds: SystemTime::now()
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs()),
                        problems: problems.iter().map(ToString::to_string).collect(),
                    })
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

fn plain_problem(file: &Path, message: String) -> Problem {
    Problem {
        file: file.to_path_buf(),
        line: 0,
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
    fn missing_dataplane_file_and_unknown_name_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.yaml");
        let err = source(dir.path(), DataplaneSource::File(missing))
            .load()
            .unwrap_err();
        assert!(
            err[0]
                .to_string()
                .contains("nope.yaml:0: cannot read dataplane file"),
            "{}",
            err[0]
        );
        let mut named = source(dir.path(), DataplaneSource::Named);
        named.name = Some("ghost".into());
        let err = named.load().unwrap_err();
        assert!(
            err[0].message.contains("no Dataplane \"ghost\""),
            "{}",
            err[0]
        );
    }
}

//! Reading resources from YAML text and from a directory of `*.yaml`/`*.yml` files.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::resources::{Meta, Spec};
use crate::validate::{validate, validate_name};
use crate::yaml::{parse_documents, YamlDocument};

/// Where a resource was read from.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Origin {
    /// File (or pseudo-file such as `--dataplane`) the resource came from.
    pub file: PathBuf,
    /// 1-based line where the resource starts.
    pub line: usize,
}

/// A valid resource Bearing understands.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Resource {
    /// Name and labels.
    #[serde(flatten)]
    pub meta: Meta,
    /// Mesh of a mesh-scoped resource.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh: Option<String>,
    /// The typed content.
    #[serde(flatten)]
    pub spec: Spec,
    /// Where it was read from.
    #[serde(skip)]
    pub origin: Origin,
}

impl Resource {
    /// `Type/name`, the way problems and logs name a resource.
    pub fn key(&self) -> String {
        format!("{}/{}", self.spec.type_name(), self.meta.name)
    }
}

/// A resource of a type Bearing does not act on; listed in `/config_dump`, never dropped silently.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IgnoredResource {
    /// Its `type:`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its `name:`.
    pub name: String,
    /// Its `mesh:`, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh: Option<String>,
    /// `file:line` it was read from.
    pub origin: String,
}

/// One problem in the store: `file:line: Type/name: field: message`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    /// File at fault.
    pub file: PathBuf,
    /// 1-based line at fault.
    pub line: usize,
    /// `Type/name` of the resource at fault, when known.
    pub resource: Option<String>,
    /// Field path at fault, when known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        if let Some(r) = &self.resource {
            write!(f, "{r}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Everything read from a store: resources understood, resources ignored, problems found.
#[derive(Debug, Clone, Default)]
pub struct Store {
    /// Valid resources, in file-name then file order.
    pub resources: Vec<Resource>,
    /// Resources of types Bearing does not act on.
    pub ignored: Vec<IgnoredResource>,
    /// Every problem found; a store with problems must not be applied.
    pub problems: Vec<Problem>,
}

impl Store {
    /// Reads every `*.yaml`/`*.yml` file directly in `dir` (sorted by name, hidden files skipped).
    pub fn load_dir(dir: &Path) -> Store {
        let mut store = Store::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                store.problems.push(Problem {
                    file: dir.to_path_buf(),
                    line: 0,
                    resource: None,
                    field: None,
                    message: format!("cannot read store directory: {e}"),
                });
                return store;
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_store_file(p))
            .collect();
        files.sort();
        for part in parse_files(&files) {
            store.resources.extend(part.resources);
            store.ignored.extend(part.ignored);
            store.problems.extend(part.problems);
        }
        store.check_duplicates();
        store
    }

    /// Reads and parses one file into this store.
    fn add_file(&mut self, file: &Path) {
        match std::fs::read_to_string(file) {
            Ok(text) => self.add_text(&text, file),
            Err(e) => self.problems.push(Problem {
                file: file.to_path_buf(),
                line: 0,
                resource: None,
                field: None,
                message: format!("cannot read file: {e}"),
            }),
        }
    }

    /// Parses YAML text (one or more documents) read from `file` into this store.
    pub fn add_text(&mut self, text: &str, file: &Path) {
        let docs = match parse_documents(text) {
            Ok(d) => d,
            Err(e) => {
                self.problems.push(Problem {
                    file: file.to_path_buf(),
                    line: e.line,
                    resource: None,
                    field: None,
                    message: format!("invalid YAML (column {}): {}", e.column, e.message),
                });
                return;
            }
        };
        for doc in docs {
            if doc.value.is_null() {
                continue;
            }
            self.add_document(doc, file);
        }
    }

    fn add_document(&mut self, mut doc: YamlDocument, file: &Path) {
        // Taken, not cloned: the document's line map is all the problems below need.
        let value = std::mem::take(&mut doc.value);
        let problem = |field: Option<&str>, resource: Option<String>, message: String| Problem {
            file: file.to_path_buf(),
            line: field.map_or(doc.line, |f| doc.line_of(f)),
            resource,
            field: field.map(str::to_string),
            message,
        };
        let Value::Object(mut obj) = value else {
            self.problems.push(problem(
                None,
                None,
                "a resource must be a mapping with type, name and mesh".into(),
            ));
            return;
        };
        let kind = match obj.remove("type") {
            Some(Value::String(s)) if !s.is_empty() => s,
            _ => {
                self.problems
                    .push(problem(Some("type"), None, "type is required".into()));
                return;
            }
        };
        let name = match obj.get("name") {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let label = format!("{kind}/{name}");
        let mesh = match obj.remove("mesh") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => {
                self.problems.push(problem(
                    Some("mesh"),
                    Some(label),
                    "must be a string".into(),
                ));
                return;
            }
        };
        let origin = Origin {
            file: file.to_path_buf(),
            line: doc.line,
        };
        let spec_fields = split_meta(&mut obj);
        let meta: Meta = match serde_path_to_error::deserialize(Value::Object(obj)) {
            Ok(m) => m,
            Err(e) => {
                let path = e.path().to_string();
                self.problems.push(problem(
                    Some(&path),
                    Some(label),
                    e.into_inner().to_string(),
                ));
                return;
            }
        };
        let spec = match decode_spec(&kind, Value::Object(spec_fields)) {
            Decoded::Ignored => {
                self.ignored.push(IgnoredResource {
                    kind,
                    name,
                    mesh,
                    origin: format!("{}:{}", file.display(), doc.line),
                });
                return;
            }
            Decoded::Invalid(path, message) => {
                let field = (!path.is_empty() && path != ".").then_some(path.as_str());
                self.problems.push(problem(field, Some(label), message));
                return;
            }
            Decoded::Spec(spec) => *spec,
        };
        let mut problems = Vec::new();
        if let Some(m) = validate_name(&meta.name) {
            problems.push(problem(Some("name"), Some(label.clone()), m));
        }
        match (&mesh, Spec::is_mesh_scoped(&kind)) {
            (None, true) => problems.push(problem(
                None,
                Some(label.clone()),
                "mesh is required for this type".into(),
            )),
            (Some(_), false) => problems.push(problem(
                Some("mesh"),
                Some(label.clone()),
                format!("a {kind} does not belong to a mesh"),
            )),
            _ => {}
        }
        for (field, message) in validate(&spec) {
            problems.push(problem(Some(&field), Some(label.clone()), message));
        }
        if problems.is_empty() {
            self.resources.push(Resource {
                meta,
                mesh,
                spec,
                origin,
            });
        } else {
            self.problems.extend(problems);
        }
    }

    /// Reports a second resource with the same type, mesh and name.
    fn check_duplicates(&mut self) {
        let mut seen: HashMap<(&'static str, Option<String>, String), &Origin> = HashMap::new();
        let mut problems = Vec::new();
        for r in &self.resources {
            let key = (r.spec.type_name(), r.mesh.clone(), r.meta.name.clone());
            if let Some(first) = seen.insert(key, &r.origin) {
                problems.push(Problem {
                    file: r.origin.file.clone(),
                    line: r.origin.line,
                    resource: Some(r.key()),
                    field: None,
                    message: format!(
                        "defined again; first defined at {}:{}",
                        first.file.display(),
                        first.line
                    ),
                });
            }
        }
        self.problems.extend(problems);
    }
}

/// Moves spec fields out of `obj`, leaving only the metadata fields there.
fn split_meta(obj: &mut Map<String, Value>) -> Map<String, Value> {
    const META: [&str; 4] = ["name", "labels", "creationTime", "modificationTime"];
    let keys: Vec<String> = obj
        .keys()
        .filter(|k| !META.contains(&k.as_str()))
        .cloned()
        .collect();
    keys.into_iter()
        .filter_map(|k| obj.remove(&k).map(|v| (k, v)))
        .collect()
}

/// Each file parsed into a store of its own, in the order of `files`. Files are parsed on
/// as many threads as there are cores: YAML parsing is most of a large store's load time
/// (and of start-up), and files are independent.
fn parse_files(files: &[PathBuf]) -> Vec<Store> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let parse = |file: &PathBuf| {
        let mut store = Store::default();
        store.add_file(file);
        store
    };
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len());
    if workers <= 1 {
        return files.iter().map(parse).collect();
    }
    // Each thread takes the next unparsed file, so one large file does not hold up the rest.
    let parsed: Vec<Mutex<Store>> = files.iter().map(|_| Mutex::default()).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let (Some(file), Some(slot)) = (files.get(i), parsed.get(i)) else {
                    return;
                };
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = parse(file);
            });
        }
    });
    parsed
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect()
}

enum Decoded {
    Spec(Box<Spec>),
    Ignored,
    Invalid(String, String),
}

fn decode_spec(kind: &str, value: Value) -> Decoded {
    fn de<T: serde::de::DeserializeOwned>(value: Value, wrap: fn(T) -> Spec) -> Decoded {
        match serde_path_to_error::deserialize(value) {
            Ok(v) => Decoded::Spec(Box::new(wrap(v))),
            Err(e) => Decoded::Invalid(e.path().to_string(), e.into_inner().to_string()),
        }
    }
    match kind {
        "Mesh" => de(value, Spec::Mesh),
        "Dataplane" => de(value, Spec::Dataplane),
        "ZoneIngress" => de(value, Spec::ZoneIngress),
        "ZoneEgress" => de(value, Spec::ZoneEgress),
        "ExternalService" => de(value, Spec::ExternalService),
        "Secret" => de(value, Spec::Secret),
        "VirtualOutbound" => de(value, Spec::VirtualOutbound),
        "MeshService" => de(value, Spec::MeshService),
        "HostnameGenerator" => de(value, Spec::HostnameGenerator),
        "MeshGateway" => de(value, Spec::MeshGateway),
        "MeshGatewayRoute" => de(value, Spec::MeshGatewayRoute),
        _ => Decoded::Ignored,
    }
}

fn is_store_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    !hidden && yaml && path.is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Store {
        let mut s = Store::default();
        s.add_text(text, Path::new("store/a.yaml"));
        s.check_duplicates();
        s
    }

    #[test]
    fn loads_known_and_lists_ignored() {
        let s = load(
            "type: Mesh\nname: default\n---\ntype: MeshTrafficPermission\nname: mtp\nmesh: default\nspec: {}\n",
        );
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert_eq!(s.resources[0].key(), "Mesh/default");
        assert_eq!(s.ignored[0].kind, "MeshTrafficPermission");
        assert_eq!(s.ignored[0].origin, "store/a.yaml:4");
    }

    #[test]
    fn unknown_field_names_file_line_resource_and_field() {
        let s = load("type: Mesh\nname: default\n---\ntype: Dataplane\nname: web\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 80\n    prot: 8080\n    tags: {kuma.io/service: web}\n");
        assert_eq!(s.problems.len(), 1);
        let text = s.problems[0].to_string();
        assert!(
            text.starts_with("store/a.yaml:11: Dataplane/web: networking.inbound[0]"),
            "{text}"
        );
        assert!(text.contains("unknown field `prot`"), "{text}");
    }

    #[test]
    fn validation_problem_points_at_the_field_line() {
        let s = load("type: Dataplane\nname: web\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 70000\n    tags: {kuma.io/service: web}\n");
        assert_eq!(
            s.problems[0].to_string(),
            "store/a.yaml:7: Dataplane/web: networking.inbound[0].port: port 70000 must be in the range 1-65535"
        );
    }

    #[test]
    fn wrong_type_and_missing_mesh_and_duplicates() {
        let s = load("type: Dataplane\nname: web\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: eighty\n    tags: {kuma.io/service: web}\n---\ntype: Secret\nname: s\ndata: aGk=\n---\ntype: Mesh\nname: m\n---\ntype: Mesh\nname: m\n");
        let texts: Vec<String> = s.problems.iter().map(|p| p.to_string()).collect();
        assert!(
            texts[0].starts_with(
                "store/a.yaml:7: Dataplane/web: networking.inbound[0].port: invalid type"
            ),
            "{texts:?}"
        );
        assert!(texts[1].contains("Secret/s: mesh is required"), "{texts:?}");
        assert!(
            texts[2].contains(
                "store/a.yaml:17: Mesh/m: defined again; first defined at store/a.yaml:14"
            ),
            "{texts:?}"
        );
    }

    #[test]
    fn yaml_syntax_error_has_line() {
        let s = load("type: Mesh\nname: [unclosed\n");
        assert!(s.problems[0].to_string().starts_with("store/a.yaml:"));
        assert!(s.problems[0].message.contains("invalid YAML"));
    }

    #[test]
    fn load_dir_reads_yaml_files_only_and_reports_missing_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mesh.yaml"), "type: Mesh\nname: default\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not yaml: [").unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), "bad: [").unwrap();
        let s = Store::load_dir(dir.path());
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert_eq!(s.resources.len(), 1);
        let missing = Store::load_dir(&dir.path().join("nope"));
        assert!(missing.problems[0]
            .message
            .contains("cannot read store directory"));
    }
}

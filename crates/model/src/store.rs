//! Reading resources from YAML text and from a directory of `*.yaml`/`*.yml` files.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::policies;
use crate::resources::{Meta, Spec};
use crate::validate::{validate, validate_name};
use crate::yaml::{
    check_utf8, field_lines, parse_documents, split_documents, YamlDocument, YamlError,
};

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
    /// Everything in it but `type`, `name` and `mesh` (`spec`, `labels`, …), for the policies
    /// the compiler must still act on (a denying MeshTrafficPermission fails closed).
    #[serde(skip)]
    pub fields: Value,
}

/// One problem in the store: `file:line: Type/name: field: message`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    /// File at fault.
    pub file: PathBuf,
    /// 1-based line at fault.
    pub line: usize,
    /// 1-based column at fault, when known (YAML syntax and character errors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// `Type/name` of the resource at fault, when known.
    pub resource: Option<String>,
    /// Field path at fault, when known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)?;
        if let Some(column) = self.column {
            write!(f, ":{column}")?;
        }
        f.write_str(": ")?;
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
    /// What the store asks for that Bearing does not enforce (see [`crate::policies`]):
    /// reported loudly, never a reason to refuse the store.
    pub warnings: Vec<Problem>,
    /// Files (or the folder) that could not be read (`EMFILE`, `EACCES`, `EIO`, a file gone
    /// between listing and reading), each naming its file and the error. Not a problem of the
    /// config: what was read is incomplete, so nothing may be concluded from it; the caller
    /// keeps what it has and reads again later.
    pub io_errors: Vec<Problem>,
}

impl Store {
    /// Reads every `*.yaml`/`*.yml` file directly in `dir` (sorted by name, hidden files skipped).
    pub fn load_dir(dir: &Path) -> Store {
        let mut store = Store::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                store
                    .io_errors
                    .push(io_error(dir, "cannot read store directory", &e));
                return store;
            }
        };
        let mut files = Vec::new();
        for entry in entries {
            let path = match entry {
                Ok(entry) => entry.path(),
                Err(e) => {
                    store
                        .io_errors
                        .push(io_error(dir, "cannot list store directory", &e));
                    continue;
                }
            };
            match is_store_file(&path) {
                Ok(true) => files.push(path),
                Ok(false) => {}
                Err(e) => store
                    .io_errors
                    .push(io_error(&path, "cannot read file", &e)),
            }
        }
        files.sort();
        for part in parse_files(&files) {
            store.resources.extend(part.resources);
            store.ignored.extend(part.ignored);
            store.problems.extend(part.problems);
            store.warnings.extend(part.warnings);
            store.io_errors.extend(part.io_errors);
        }
        store.check_duplicates();
        store
    }

    /// Parses YAML text (one or more documents) read from `file` into this store.
    pub fn add_text(&mut self, text: &str, file: &Path) {
        self.add_text_at(text, file, 1);
    }

    /// Parses YAML text whose first line is line `first_line` of `file` (a piece of it).
    fn add_text_at(&mut self, text: &str, file: &Path, first_line: usize) {
        let docs = match parse_documents(text, first_line) {
            Ok(d) => d,
            Err(e) => {
                self.problems.push(yaml_problem(file, &e));
                return;
            }
        };
        // (is a warning, index into problems or warnings, index of its document) of each
        // problem or warning naming a field.
        let mut on_fields = Vec::new();
        for (index, doc) in docs.into_iter().enumerate() {
            if doc.value.is_null() {
                continue;
            }
            let warned = self.warnings.len();
            for problem in self.add_document(doc, file) {
                if problem.field.is_some() {
                    on_fields.push((false, self.problems.len(), index));
                }
                self.problems.push(problem);
            }
            for (i, warning) in self.warnings.iter().enumerate().skip(warned) {
                if warning.field.is_some() {
                    on_fields.push((true, i, index));
                }
            }
        }
        if !on_fields.is_empty() {
            self.place_on_fields(text, first_line, &on_fields);
        }
    }

    /// Moves each problem or warning of `on_fields` from its document's line to its field's
    /// line (or the closest ancestor's), parsing the text again to find them.
    fn place_on_fields(
        &mut self,
        text: &str,
        first_line: usize,
        on_fields: &[(bool, usize, usize)],
    ) {
        let Ok(docs) = field_lines(text, first_line) else {
            return;
        };
        for &(warning, at, doc) in on_fields {
            let list = if warning {
                &mut self.warnings
            } else {
                &mut self.problems
            };
            if let (Some(problem), Some(lines)) = (list.get_mut(at), docs.get(doc)) {
                if let Some(field) = &problem.field {
                    problem.line = lines.line_of(field);
                }
            }
        }
    }

    /// Adds one document's resource to this store, or returns what is wrong with it. A
    /// problem naming a field is put on the document's first line; `add_text_at` moves it to
    /// the field's line.
    fn add_document(&mut self, doc: YamlDocument, file: &Path) -> Vec<Problem> {
        let YamlDocument { value, line } = doc;
        let problem = |field: Option<&str>, resource: Option<String>, message: String| Problem {
            file: file.to_path_buf(),
            line,
            column: None,
            resource,
            field: field.map(str::to_string),
            message,
        };
        let Value::Object(mut obj) = value else {
            return vec![problem(
                None,
                None,
                "a resource must be a mapping with type, name and mesh".into(),
            )];
        };
        let kind = match obj.remove("type") {
            Some(Value::String(s)) if !s.is_empty() => s,
            _ => {
                return vec![problem(Some("type"), None, "type is required".into())];
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
                return vec![problem(
                    Some("mesh"),
                    Some(label),
                    "must be a string".into(),
                )];
            }
        };
        let origin = Origin {
            file: file.to_path_buf(),
            line,
        };
        let spec_fields = Value::Object(split_meta(&mut obj));
        let meta: Meta = match serde_path_to_error::deserialize(Value::Object(obj)) {
            Ok(m) => m,
            Err(e) => {
                let path = e.path().to_string();
                return vec![problem(
                    Some(&path),
                    Some(label),
                    e.into_inner().to_string(),
                )];
            }
        };
        let spec = match decode_spec(&kind, spec_fields.clone()) {
            Decoded::Ignored => {
                for (field, message) in policies::ignored_warnings(&kind, &spec_fields) {
                    let field = (!field.is_empty()).then_some(field.as_str());
                    self.warnings
                        .push(problem(field, Some(label.clone()), message));
                }
                self.ignored.push(IgnoredResource {
                    kind,
                    name,
                    mesh,
                    origin: format!("{}:{}", file.display(), line),
                    fields: spec_fields,
                });
                return Vec::new();
            }
            Decoded::Invalid(path, message) => {
                let field = (!path.is_empty() && path != ".").then_some(path.as_str());
                return vec![problem(field, Some(label), message)];
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
            for (field, message) in policies::spec_warnings(&spec) {
                self.warnings
                    .push(problem(Some(&field), Some(label.clone()), message));
            }
            self.resources.push(Resource {
                meta,
                mesh,
                spec,
                origin,
            });
        }
        problems
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
                    column: None,
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

/// Each file parsed into stores of its own, in the order of `files`. Parsing runs on as many
/// threads as there are cores: YAML parsing is most of a large store's load time (and of
/// start-up). A large file is cut into pieces of whole documents so that a file of a thousand
/// Dataplanes is not left to one thread: the harness's 1k-service store parsed in 17 ms on one
/// thread, and its largest file alone was two thirds of that.
fn parse_files(files: &[PathBuf]) -> Vec<Store> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    /// Pieces of about this size keep two threads evenly busy without many hand-offs.
    const PIECE_BYTES: usize = 32 * 1024;
    let texts: Vec<std::io::Result<Vec<u8>>> = files.iter().map(std::fs::read).collect();
    let pieces: Vec<Piece> = files
        .iter()
        .zip(&texts)
        .flat_map(|(file, bytes)| {
            let parts: Vec<_> = match bytes {
                Ok(bytes) => match check_utf8(bytes) {
                    Ok(text) => split_documents(text, PIECE_BYTES)
                        .into_iter()
                        .map(Part::Text)
                        .collect(),
                    Err(e) => vec![Part::NotUtf8(e)],
                },
                Err(e) => vec![Part::Unreadable(e)],
            };
            parts.into_iter().map(move |part| Piece { file, part })
        })
        .collect();
    let parse = |piece: &Piece| {
        let mut store = Store::default();
        match &piece.part {
            Part::Text((text, first_line)) => store.add_text_at(text, piece.file, *first_line),
            Part::NotUtf8(e) => store.problems.push(yaml_problem(piece.file, e)),
            Part::Unreadable(e) => {
                store
                    .io_errors
                    .push(io_error(piece.file, "cannot read file", e))
            }
        }
        store
    };
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(pieces.len());
    if workers <= 1 {
        return pieces.iter().map(parse).collect();
    }
    // Each thread takes the largest piece left, so a large one does not come last.
    let mut order: Vec<usize> = (0..pieces.len()).collect();
    order.sort_by_key(|&i| match pieces[i].part {
        Part::Text((text, _)) => std::cmp::Reverse(text.len()),
        _ => std::cmp::Reverse(0),
    });
    let parsed: Vec<Mutex<Store>> = pieces.iter().map(|_| Mutex::default()).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    return;
                };
                let (Some(piece), Some(slot)) = (pieces.get(i), parsed.get(i)) else {
                    return;
                };
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = parse(piece);
            });
        }
    });
    parsed
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect()
}

/// Whole documents of one store file and the line they start on, or why the file is unreadable.
struct Piece<'a> {
    file: &'a Path,
    part: Part<'a>,
}

/// What was read of a store file.
enum Part<'a> {
    /// Whole documents and the line they start on.
    Text((&'a str, usize)),
    /// Bytes that are not UTF-8: a problem of the file's content.
    NotUtf8(YamlError),
    /// Not read at all.
    Unreadable(&'a std::io::Error),
}

/// A YAML error of `file` (syntax, character or encoding) as a problem at its line and column.
fn yaml_problem(file: &Path, e: &YamlError) -> Problem {
    Problem {
        file: file.to_path_buf(),
        line: e.line,
        column: Some(e.column),
        resource: None,
        field: None,
        message: format!("invalid YAML: {}", e.message),
    }
}

/// An I/O error reading `path`, as a [`Store::io_errors`] entry.
fn io_error(path: &Path, what: &str, e: &std::io::Error) -> Problem {
    Problem {
        file: path.to_path_buf(),
        line: 0,
        column: None,
        resource: None,
        field: None,
        message: format!("{what}: {e}"),
    }
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

/// Whether `path` is a store file: a visible `*.yaml`/`*.yml` regular file (or a link to one).
/// A file gone since the folder was listed is not; any other failure to look at it is an error.
fn is_store_file(path: &Path) -> std::io::Result<bool> {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    if hidden || !yaml {
        return Ok(false);
    }
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.is_file()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
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
    fn what_is_not_enforced_is_warned_on_its_line_without_a_problem() {
        let s = load("type: Mesh\nname: default\nlogging:\n  backends: []\n---\ntype: MeshTrafficPermission\nname: deny-web\nmesh: default\nspec:\n  targetRef: {kind: MeshService, name: web}\n  from:\n  - targetRef: {kind: Mesh}\n    default:\n      action: Deny\n---\ntype: MeshTimeout\nname: t\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n");
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        let texts: Vec<String> = s.warnings.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            texts,
            [
                "store/a.yaml:3: Mesh/default: logging: not enforced by Bearing: no access log is written",
                "store/a.yaml:14: MeshTrafficPermission/deny-web: spec.from[0].default.action: Deny is not enforced per source by Bearing: it fails closed, the inbounds this policy targets refuse every connection",
                "store/a.yaml:19: MeshTimeout/t: spec: not enforced by Bearing: Bearing's built-in timeouts apply",
            ]
        );
        assert_eq!(s.ignored[0].fields["spec"]["targetRef"]["name"], "web");
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

    /// The VirtualOutbound seed's own example Dataplane, as printed in
    /// `seeds/virtual-outbound-2.2.txt`, is invalid for Kuma too: `inbound` sits at the top
    /// level and the tag `port: 1800` is a number. Each mistake gets its own clear message.
    #[test]
    fn the_virtual_outbound_seeds_dataplane_is_refused_with_clear_messages() {
        let seed = "type: Dataplane\nmesh: default\nname: backend-1\nnetworking:\n  address: 192.168.0.2\ninbound:\n  - port: 9000\n    servicePort: 6379\n    tags:\n      kuma.io/service: backend\n      version: v1\n      port: 1800\n";
        let s = load(seed);
        let texts: Vec<String> = s.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(texts.len(), 1, "{texts:?}");
        assert!(
            texts[0].starts_with(
                "store/a.yaml:6: Dataplane/backend-1: inbound: unknown field `inbound`"
            ),
            "{texts:?}"
        );
        // With `inbound` moved under `networking`, the unquoted tag value is what remains.
        let nested = "type: Dataplane\nmesh: default\nname: backend-1\nnetworking:\n  address: 192.168.0.2\n  inbound:\n    - port: 9000\n      servicePort: 6379\n      tags:\n        kuma.io/service: backend\n        version: v1\n        port: 1800\n";
        let s = load(nested);
        let texts: Vec<String> = s.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            texts,
            ["store/a.yaml:12: Dataplane/backend-1: networking.inbound[0].tags.port: invalid type: integer `1800`, expected a string"]
        );
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
    fn a_large_file_is_read_in_pieces_with_its_own_lines_and_order() {
        // 2000 Dataplanes of 6 lines each: about 190 KB, several pieces. One is invalid far into
        // the file, one is defined twice across pieces.
        let mut text = String::new();
        for i in 0..2000 {
            let port = if i == 1500 { 70000 } else { 8080 };
            let name = if i == 1999 { 3 } else { i };
            text.push_str(&format!(
                "---\ntype: Dataplane\nname: dp-{name}\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound: [{{port: {port}, tags: {{kuma.io/service: s}}}}]\n"
            ));
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dps.yaml"), &text).unwrap();
        let s = Store::load_dir(dir.path());
        let file = dir.path().join("dps.yaml");
        let problems: Vec<String> = s.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            problems,
            vec![
                format!("{}:10507: Dataplane/dp-1500: networking.inbound[0].port: port 70000 must be in the range 1-65535", file.display()),
                format!("{}:13995: Dataplane/dp-3: defined again; first defined at {}:23", file.display(), file.display()),
            ]
        );
        let names: Vec<&str> = s.resources.iter().map(|r| r.meta.name.as_str()).collect();
        let expected: Vec<String> = (0..1999)
            .filter(|&i| i != 1500)
            .map(|i| format!("dp-{i}"))
            .chain(["dp-3".to_string()])
            .collect();
        assert_eq!(names, expected);
        assert_eq!(s.resources[1998].origin.line, 13995);
    }

    #[test]
    fn forbidden_characters_alias_bombs_and_bad_utf8_are_problems_with_position() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mesh.yaml"), "type: Mesh\nname: default\n").unwrap();
        std::fs::write(dir.path().join("zeros.yaml"), [0u8; 64]).unwrap();
        std::fs::write(
            dir.path().join("latin1.yaml"),
            b"type: Mesh\nname: caf\xe9\n",
        )
        .unwrap();
        let mut bomb = String::from("type: Mesh\nname: b\nx0: &x0 [a, a, a, a, a, a, a, a, a]\n");
        for i in 1..9 {
            let p = format!("*x{}", i - 1);
            bomb.push_str(&format!("x{i}: &x{i} [{}]\n", vec![p; 9].join(", ")));
        }
        std::fs::write(dir.path().join("bomb.yaml"), bomb).unwrap();
        let s = Store::load_dir(dir.path());
        let texts: Vec<String> = s.problems.iter().map(|p| p.to_string()).collect();
        let at = |f: &str| dir.path().join(f).display().to_string();
        assert_eq!(texts.len(), 3, "{texts:?}");
        assert!(
            texts[0].starts_with(&format!(
                "{}:8:10: invalid YAML: aliases repeat more than 100000 nodes",
                at("bomb.yaml")
            )),
            "{texts:?}"
        );
        assert_eq!(
            texts[1],
            format!(
                "{}:2:10: invalid YAML: byte 0xE9 is not valid UTF-8 (YAML text must be UTF-8)",
                at("latin1.yaml")
            )
        );
        assert_eq!(
            texts[2],
            format!(
                "{}:1:1: invalid YAML: character U+0000 (NUL) is not allowed in YAML",
                at("zeros.yaml")
            )
        );
        assert_eq!(s.resources.len(), 1);
        assert!(s.io_errors.is_empty());
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
        assert!(missing.problems.is_empty());
        assert!(missing.io_errors[0]
            .message
            .contains("cannot read store directory"));
    }
}

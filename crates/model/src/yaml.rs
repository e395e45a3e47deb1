//! YAML to JSON-value conversion that remembers where every field came from.
//!
//! Kuma itself turns YAML into JSON before decoding resources; we do the same, so a resource
//! decodes exactly as `kumactl apply` would read it. Alongside the value we keep the source line
//! of every field path (`networking.inbound[0].port`), so that decode and validation errors can
//! name `file:line`.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One YAML document of a file, as a JSON value plus the line of each field path.
#[derive(Debug, Clone)]
pub struct YamlDocument {
    /// The document content converted to JSON (null for an empty document).
    pub value: Value,
    /// 1-based line where the document's content starts.
    pub line: usize,
    /// 1-based line of every field path, in `serde_path_to_error` notation (`a.b[0].c`).
    pub lines: HashMap<String, usize>,
}

impl YamlDocument {
    /// Line of `path`, or of its closest ancestor that has one, or the document's first line.
    pub fn line_of(&self, path: &str) -> usize {
        let mut p = path;
        loop {
            if let Some(line) = self.lines.get(p) {
                return *line;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return self.line,
            }
        }
    }
}

/// A YAML syntax error with its 1-based position.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{line}:{column}: invalid YAML: {message}")]
pub struct YamlError {
    /// 1-based line of the error.
    pub line: usize,
    /// 1-based column of the error.
    pub column: usize,
    /// What the parser found wrong.
    pub message: String,
}

/// Parses every document of a multi-document YAML text (`---` separated).
pub fn parse_documents(text: &str) -> Result<Vec<YamlDocument>, YamlError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, true).map_err(|e| YamlError {
        line: e.marker().line(),
        column: e.marker().col(),
        message: e.info().to_string(),
    })?;
    match builder.error {
        Some(e) => Err(e),
        None => Ok(builder.documents),
    }
}

/// A container being built: a mapping waiting for a key or a value, or a sequence.
enum Frame {
    Map {
        map: Map<String, Value>,
        path: String,
        key: Option<String>,
        anchor: usize,
    },
    Seq {
        items: Vec<Value>,
        path: String,
        anchor: usize,
    },
}

#[derive(Default)]
struct Builder {
    documents: Vec<YamlDocument>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Value>,
    lines: HashMap<String, usize>,
    doc_line: usize,
    root: Option<Value>,
    error: Option<YamlError>,
}

impl Builder {
    /// The path of the node about to be added, and whether it is a mapping key.
    fn next_path(&self) -> (String, bool) {
        match self.stack.last() {
            None => (String::new(), false),
            Some(Frame::Seq { items, path, .. }) => (format!("{path}[{}]", items.len()), false),
            Some(Frame::Map {
                key: None, path, ..
            }) => (path.clone(), true),
            Some(Frame::Map {
                key: Some(k), path, ..
            }) => (join(path, k), false),
        }
    }

    /// Adds a finished node to its parent (or makes it the document root).
    fn add(&mut self, value: Value, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, value.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map { map, key, .. }) => match key.take() {
                Some(k) => {
                    map.insert(k, value);
                }
                None => {
                    let k = match value {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    *key = Some(k);
                }
            },
        }
    }

    fn fail(&mut self, mark: Marker, message: String) {
        if self.error.is_none() {
            self.error = Some(YamlError {
                line: mark.line(),
                column: mark.col(),
                message,
            });
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::DocumentStart => {
                self.doc_line = mark.line();
                self.lines.clear();
                self.anchors.clear();
                self.root = None;
            }
            Event::DocumentEnd => {
                let value = self.root.take().unwrap_or(Value::Null);
                self.documents.push(YamlDocument {
                    value,
                    line: self.doc_line,
                    lines: std::mem::take(&mut self.lines),
                });
            }
            Event::Scalar(text, style, anchor, tag) => {
                // Only a key's path is kept; a value's would be built and dropped.
                let is_key = match self.stack.last() {
                    Some(Frame::Map {
                        key: None, path, ..
                    }) => {
                        self.lines.insert(join(path, &text), mark.line());
                        true
                    }
                    _ => false,
                };
                if self.stack.is_empty() && self.root.is_none() {
                    self.doc_line = mark.line();
                }
                let quoted = style != TScalarStyle::Plain;
                let tagged_str = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let value = if quoted || tagged_str || is_key {
                    Value::String(text)
                } else {
                    resolve_plain(text)
                };
                self.add(value, anchor);
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(v) => {
                    let (path, is_key) = self.next_path();
                    if !is_key {
                        self.lines.insert(path, mark.line());
                    }
                    self.add(v, 0);
                }
                None => self.fail(mark, format!("unknown alias {id}")),
            },
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                let (path, is_key) = self.next_path();
                if is_key {
                    self.fail(mark, "complex mapping keys are not supported".into());
                }
                if self.stack.is_empty() {
                    self.doc_line = mark.line();
                }
                let frame = if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map {
                        map: Map::new(),
                        path,
                        key: None,
                        anchor,
                    }
                } else {
                    Frame::Seq {
                        items: Vec::new(),
                        path,
                        anchor,
                    }
                };
                self.stack.push(frame);
            }
            Event::MappingEnd | Event::SequenceEnd => match self.stack.pop() {
                Some(Frame::Map { map, anchor, .. }) => self.add(Value::Object(map), anchor),
                Some(Frame::Seq { items, anchor, .. }) => self.add(Value::Array(items), anchor),
                None => self.fail(mark, "unbalanced collection end".into()),
            },
            Event::Nothing | Event::StreamStart | Event::StreamEnd => {}
        }
    }
}

/// Resolves a plain scalar by the YAML 1.2 core schema (null, bool, int, float, string).
fn resolve_plain(text: String) -> Value {
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return Value::Number(i.into());
    }
    if let Some(hex) = text.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return Value::Number(i.into());
        }
    }
    if let Some(oct) = text.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(oct, 8) {
            return Value::Number(i.into());
        }
    }
    let looks_numeric = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        && text.bytes().any(|b| b.is_ascii_digit());
    if looks_numeric {
        if let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_documents_and_records_lines() {
        let text = "type: Mesh\nname: default\n---\n# comment\ntype: Dataplane\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 8080\n    tags:\n      kuma.io/service: \"web\"\n";
        let docs = parse_documents(text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].value["name"], "default");
        assert_eq!(docs[1].line, 5);
        assert_eq!(docs[1].value["networking"]["inbound"][0]["port"], 8080);
        assert_eq!(docs[1].lines["networking.inbound[0].port"], 9);
        assert_eq!(docs[1].line_of("networking.inbound[0].tags.missing"), 10);
        assert_eq!(docs[1].line_of("nothing.here"), 5);
    }

    #[test]
    fn resolves_scalars_by_core_schema() {
        let docs =
            parse_documents("a: 1\nb: '1'\nc: true\nd: ~\ne: 1.5\nf: 1.2.3\ng: !!str 7\n").unwrap();
        let v = &docs[0].value;
        assert_eq!(v["a"], 1);
        assert_eq!(v["b"], "1");
        assert_eq!(v["c"], true);
        assert!(v["d"].is_null());
        assert_eq!(v["e"], 1.5);
        assert_eq!(v["f"], "1.2.3");
        assert_eq!(v["g"], "7");
    }

    #[test]
    fn anchors_and_aliases_are_expanded() {
        let docs = parse_documents("a: &x {k: v}\nb: *x\n").unwrap();
        assert_eq!(docs[0].value["b"]["k"], "v");
    }

    #[test]
    fn syntax_errors_carry_position() {
        let err = parse_documents("a: b\n  c: d\n").unwrap_err();
        assert_eq!(err.line, 2);
    }
}

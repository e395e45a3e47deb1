//! YAML to JSON-value conversion that remembers where every field came from.
//!
//! Kuma itself turns YAML into JSON before decoding resources; we do the same, so a resource
//! decodes exactly as `kumactl apply` would read it. Decode and validation errors name the
//! `file:line` of a field path (`networking.inbound[0].port`); those lines are found by a second
//! parse of the text, and only when there is an error ([`field_lines`]): recording every field's
//! path and line on every load was a fifth of the parse.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One YAML document of a file, as a JSON value.
#[derive(Debug, Clone)]
pub struct YamlDocument {
    /// The document content converted to JSON (null for an empty document).
    pub value: Value,
    /// 1-based line where the document's content starts.
    pub line: usize,
}

/// The line of every field path of one YAML document, for naming where an error is.
#[derive(Debug, Clone, Default)]
pub struct FieldLines {
    /// 1-based line where the document's content starts.
    pub line: usize,
    /// 1-based line of every field path, in `serde_path_to_error` notation (`a.b[0].c`).
    pub lines: HashMap<String, usize>,
}

impl FieldLines {
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

/// Parses every document of a multi-document YAML text (`---` separated) whose first line is
/// line `first_line` of its file (1 for a whole file).
pub fn parse_documents(text: &str, first_line: usize) -> Result<Vec<YamlDocument>, YamlError> {
    let builder = build(text, first_line, false)?;
    Ok(builder.documents)
}

/// The field lines of every document of `text`, in the order [`parse_documents`] returns the
/// documents. Parses the text again: meant for the rare load that reports a field.
pub fn field_lines(text: &str, first_line: usize) -> Result<Vec<FieldLines>, YamlError> {
    let builder = build(text, first_line, true)?;
    Ok(builder.field_lines)
}

fn build(text: &str, first_line: usize, record_lines: bool) -> Result<Builder, YamlError> {
    let mut builder = Builder {
        line_offset: first_line.saturating_sub(1),
        end: (
            first_line.saturating_sub(1) + text.split('\n').count(),
            text.rsplit('\n').next().unwrap_or_default().chars().count() + 1,
        ),
        record_lines,
        ..Builder::default()
    };
    let mut parser = Parser::new_from_str(text);
    parser
        .load(&mut builder, true)
        .map_err(|e| builder.error_at(*e.marker(), e.info().to_string()))?;
    match builder.error.take() {
        Some(e) => Err(e),
        None => Ok(builder),
    }
}

/// Cuts a YAML text into pieces of whole documents of about `size` bytes or more, each with
/// the 1-based line it starts on, so that the pieces of one large file can be parsed on
/// separate threads. A piece starts at a `---` line: YAML forbids that line inside any
/// content, so it always starts a document. A text with directives (`%YAML`) is not cut,
/// since a directive belongs to the document after it.
pub fn split_documents(text: &str, size: usize) -> Vec<(&str, usize)> {
    let mut pieces = Vec::new();
    if text.len() <= size || text.lines().any(|l| l.starts_with('%')) {
        pieces.push((text, 1));
        return pieces;
    }
    let (mut start, mut start_line) = (0, 1);
    let (mut offset, mut line) = (0, 1);
    for l in text.split_inclusive('\n') {
        let marker = l
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']));
        if marker && offset - start >= size {
            pieces.push((&text[start..offset], start_line));
            (start, start_line) = (offset, line);
        }
        offset += l.len();
        line += 1;
    }
    pieces.push((&text[start..], start_line));
    pieces
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
    /// Filled only when `record_lines`: each document's field lines.
    field_lines: Vec<FieldLines>,
    record_lines: bool,
    /// Lines of the file before the parsed text.
    line_offset: usize,
    /// File line and 1-based column just past the end of the parsed text.
    end: (usize, usize),
    stack: Vec<Frame>,
    anchors: HashMap<usize, Value>,
    lines: HashMap<String, usize>,
    doc_line: usize,
    root: Option<Value>,
    error: Option<YamlError>,
}

impl Builder {
    /// The path of the node about to be added (empty unless recording lines), and whether it
    /// is a mapping key.
    fn next_path(&self) -> (String, bool) {
        match self.stack.last() {
            None => (String::new(), false),
            Some(Frame::Map { key: None, .. }) => (String::new(), true),
            Some(_) if !self.record_lines => (String::new(), false),
            Some(Frame::Seq { items, path, .. }) => (format!("{path}[{}]", items.len()), false),
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

    /// The file line and 1-based column of a parser mark (whose column counts from 0). At the
    /// end of a text without a final newline the parser counts a line more than there is:
    /// such a mark is at the end of the last line.
    fn position(&self, mark: Marker) -> (usize, usize) {
        let line = mark.line() + self.line_offset;
        if line > self.end.0 {
            self.end
        } else {
            (line, mark.col() + 1)
        }
    }

    /// The file line of a parser mark.
    fn line(&self, mark: Marker) -> usize {
        self.position(mark).0
    }

    /// An error at `mark`.
    fn error_at(&self, mark: Marker, message: String) -> YamlError {
        let (line, column) = self.position(mark);
        YamlError {
            line,
            column,
            message,
        }
    }

    fn fail(&mut self, mark: Marker, message: String) {
        if self.error.is_none() {
            self.error = Some(self.error_at(mark, message));
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
                self.doc_line = self.line(mark);
                self.anchors.clear();
                self.root = None;
            }
            Event::DocumentEnd => {
                let value = self.root.take().unwrap_or(Value::Null);
                if self.record_lines {
                    self.field_lines.push(FieldLines {
                        line: self.doc_line,
                        lines: std::mem::take(&mut self.lines),
                    });
                }
                self.documents.push(YamlDocument {
                    value,
                    line: self.doc_line,
                });
            }
            Event::Scalar(text, style, anchor, tag) => {
                // Only a key's path is kept; a value's would be built and dropped.
                let is_key = match self.stack.last() {
                    Some(Frame::Map {
                        key: None, path, ..
                    }) => {
                        if self.record_lines {
                            let line = self.line(mark);
                            self.lines.insert(join(path, &text), line);
                        }
                        true
                    }
                    _ => false,
                };
                if self.stack.is_empty() && self.root.is_none() {
                    self.doc_line = self.line(mark);
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
                    if self.record_lines && !is_key {
                        let line = self.line(mark);
                        self.lines.insert(path, line);
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
                    self.doc_line = self.line(mark);
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
    fn converts_documents_and_finds_field_lines() {
        let text = "type: Mesh\nname: default\n---\n# comment\ntype: Dataplane\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 8080\n    tags:\n      kuma.io/service: \"web\"\n";
        let docs = parse_documents(text, 1).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].value["name"], "default");
        assert_eq!(docs[1].line, 5);
        assert_eq!(docs[1].value["networking"]["inbound"][0]["port"], 8080);
        let lines = field_lines(text, 1).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].line, 5);
        assert_eq!(lines[1].lines["networking.inbound[0].port"], 9);
        assert_eq!(lines[1].line_of("networking.inbound[0].tags.missing"), 10);
        assert_eq!(lines[1].line_of("nothing.here"), 5);
        // A piece starting at line 21 of its file counts from there.
        let piece = field_lines(text, 21).unwrap();
        assert_eq!(piece[1].lines["networking.inbound[0].port"], 29);
        assert_eq!(parse_documents(text, 21).unwrap()[1].line, 25);
        assert_eq!(parse_documents("a: b\n  c: d\n", 21).unwrap_err().line, 22);
    }

    #[test]
    fn splits_at_document_markers_only() {
        let doc = "---\na: |\n  --- not a marker\nb: 1\n";
        let text = doc.repeat(4);
        let pieces = split_documents(&text, 2 * doc.len());
        assert_eq!(
            pieces,
            vec![(&text[..2 * doc.len()], 1), (&text[2 * doc.len()..], 9)]
        );
        let whole: Vec<Value> = parse_documents(&text, 1)
            .unwrap()
            .into_iter()
            .map(|d| d.value)
            .collect();
        let cut: Vec<Value> = pieces
            .iter()
            .flat_map(|(t, line)| parse_documents(t, *line).unwrap())
            .map(|d| d.value)
            .collect();
        assert_eq!(whole, cut);
        assert_eq!(split_documents(&text, text.len()).len(), 1);
        assert_eq!(split_documents(&text, 1).len(), 4);
        // `---x` is content, not a marker; directives keep the text whole.
        assert_eq!(split_documents("a: 1\n---x: 2\n", 1).len(), 1);
        let directive = format!("%YAML 1.2\n{text}");
        assert_eq!(split_documents(&directive, 1).len(), 1);
    }

    #[test]
    fn resolves_scalars_by_core_schema() {
        let docs = parse_documents(
            "a: 1\nb: '1'\nc: true\nd: ~\ne: 1.5\nf: 1.2.3\ng: !!str 7\n",
            1,
        )
        .unwrap();
        let v = &docs[0].value;
        assert_eq!(v["a"], 1);
        assert_eq!(v["b"], "1");
        assert_eq!(v["c"], true);
        assert!(v["d"].is_null());
        assert_eq!(v["e"], 1.5);
        assert_eq!(v["f"], "1.2.3");
        assert_eq!(v["g"], "7");
    }

    /// Found by the `store_yaml` fuzz target: an error at the end of a text without a final
    /// newline was reported one line past the end, and columns counted from 0.
    #[test]
    fn errors_point_at_lines_and_columns_of_the_text() {
        for (text, first_line, line, column) in [
            ("a: [", 1, 1, 5),
            ("a: [\0\0", 1, 1, 7),
            ("x: 1\na: [", 1, 2, 5),
            ("a: [", 10, 10, 5),
            ("a: [\n", 1, 2, 1),
            ("a: b\n c: d\n", 1, 2, 3),
        ] {
            let e = parse_documents(text, first_line).unwrap_err();
            assert_eq!((e.line, e.column), (line, column), "{text:?}: {e}");
        }
    }

    #[test]
    fn anchors_and_aliases_are_expanded() {
        let docs = parse_documents("a: &x {k: v}\nb: *x\n", 1).unwrap();
        assert_eq!(docs[0].value["b"]["k"], "v");
    }

    #[test]
    fn syntax_errors_carry_position() {
        let err = parse_documents("a: b\n  c: d\n", 1).unwrap_err();
        assert_eq!(err.line, 2);
    }
}

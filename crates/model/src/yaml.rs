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

/// How many nodes aliases may repeat in one parsed text, in all: one per byte of the text, and
/// at least this many. Each alias costs the nodes of what it repeats (mappings, sequences and
/// scalars count one, plus one per [`ALIAS_SCALAR_BYTES_PER_NODE`] bytes of a scalar; a node
/// is some 64-100 bytes of memory), so a few hundred bytes of nested anchors (a "billion
/// laughs") cannot become gigabytes: like go-yaml's alias ratio, a budget that grows with the
/// text's size, here at most ~10 MB for a small file and ~100 bytes per byte of a large one.
pub const ALIAS_NODES_MIN: usize = 100_000;
/// See [`ALIAS_NODES_MIN`].
pub const ALIAS_SCALAR_BYTES_PER_NODE: usize = 64;

/// The alias budget of a text of `len` bytes (see [`ALIAS_NODES_MIN`]).
fn alias_budget(len: usize) -> usize {
    len.max(ALIAS_NODES_MIN)
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
    check_characters(text, first_line)?;
    // The parser would read a byte order mark as content of the first key.
    let text = match first_line {
        1 => text.strip_prefix('\u{feff}').unwrap_or(text),
        _ => text,
    };
    let mut builder = Builder {
        line_offset: first_line.saturating_sub(1),
        end: (
            first_line.saturating_sub(1) + text.split('\n').count(),
            text.rsplit('\n').next().unwrap_or_default().chars().count() + 1,
        ),
        record_lines,
        alias_budget: alias_budget(text.len()),
        text_len: text.len(),
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

/// Refuses a character YAML 1.2 does not allow in a stream (its `c-printable` set): C0 controls
/// but TAB, LF and CR (NUL included: a parser that stops there would read a zero-filled file
/// as empty), DEL, C1 controls but NEL, U+FFFE and U+FFFF, and a byte order mark anywhere but
/// at the very start. Surrogates and invalid UTF-8 never reach a `&str`; [`check_utf8`] names
/// where invalid bytes are. The error has the 1-based line and column (in characters).
pub fn check_characters(text: &str, first_line: usize) -> Result<(), YamlError> {
    // Byte by byte, as fast as the text can be read: a forbidden character is a control byte,
    // or one of the UTF-8 sequences C2 80-9F (C1, but C2 85), EF BB BF (BOM), EF BF BE/BF.
    // C2 and EF only ever start a character, so the position found is a character's start.
    let bytes = text.as_bytes();
    let bad = bytes.iter().enumerate().position(|(at, &b)| match b {
        b'\t' | b'\n' | b'\r' => false,
        0..0x20 | 0x7f => true,
        0xc2 => bytes
            .get(at + 1)
            .is_some_and(|&n| (0x80..=0x9f).contains(&n) && n != 0x85),
        0xef => match (bytes.get(at + 1), bytes.get(at + 2)) {
            (Some(0xbb), Some(0xbf)) => at != 0 || first_line != 1,
            (Some(0xbf), Some(0xbe | 0xbf)) => true,
            _ => false,
        },
        _ => false,
    });
    let Some((at, c)) = bad.and_then(|at| Some((at, text.get(at..)?.chars().next()?))) else {
        return Ok(());
    };
    let name = match c {
        '\0' => " (NUL)",
        '\u{7f}' => " (DEL)",
        '\u{feff}' => " (byte order mark, allowed only at the start of a file)",
        c if c < ' ' => " (control character)",
        c if ('\u{80}'..='\u{9f}').contains(&c) => " (C1 control character)",
        _ => " (noncharacter)",
    };
    Err(position_error(
        &text[..at],
        first_line,
        format!(
            "character U+{:04X}{name} is not allowed in YAML",
            u32::from(c)
        ),
    ))
}

/// `bytes` as UTF-8 text, or an error at the first byte that is not UTF-8 (line and column of
/// that byte, the column counting the characters before it).
pub fn check_utf8(bytes: &[u8]) -> Result<&str, YamlError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let valid = &bytes[..e.valid_up_to()];
        // The prefix is valid UTF-8 by construction; lossy conversion cannot change it.
        let before = String::from_utf8_lossy(valid);
        let byte = bytes.get(e.valid_up_to()).copied().unwrap_or(0);
        position_error(
            &before,
            1,
            format!("byte 0x{byte:02X} is not valid UTF-8 (YAML text must be UTF-8)"),
        )
    })
}

/// An error at the end of `before`, the text preceding the fault.
fn position_error(before: &str, first_line: usize, message: String) -> YamlError {
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    YamlError {
        line: first_line + before.matches('\n').count(),
        column: before[line_start..].chars().count() + 1,
        message,
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
        /// Nodes in it so far, itself included (what an alias of it would repeat).
        nodes: usize,
    },
    Seq {
        items: Vec<Value>,
        path: String,
        anchor: usize,
        /// Nodes in it so far, itself included.
        nodes: usize,
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
    /// Anchored values of the current document with their node counts.
    anchors: HashMap<usize, (Value, usize)>,
    /// Nodes aliases may still repeat in this text (see [`ALIAS_NODES_MIN`]).
    alias_budget: usize,
    /// The parsed text's length, for the alias budget's error message.
    text_len: usize,
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

    /// Adds a finished node of `nodes` nodes to its parent (or makes it the document root).
    fn add(&mut self, value: Value, anchor: usize, nodes: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, (value.clone(), nodes));
        }
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Seq {
                items, nodes: n, ..
            }) => {
                items.push(value);
                *n = n.saturating_add(nodes);
            }
            Some(Frame::Map {
                map, key, nodes: n, ..
            }) => {
                *n = n.saturating_add(nodes);
                match key.take() {
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
                }
            }
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
        // After an error the rest is only scanned (an alias bomb must not expand further).
        if self.error.is_some() {
            return;
        }
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
                let nodes = 1 + text.len() / ALIAS_SCALAR_BYTES_PER_NODE;
                let value = if quoted || tagged_str || is_key {
                    Value::String(text)
                } else {
                    resolve_plain(text)
                };
                self.add(value, anchor, nodes);
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some(&(_, nodes)) if nodes > self.alias_budget => {
                    let limit = alias_budget(self.text_len);
                    self.fail(
                        mark,
                        format!(
                            "aliases repeat more than {limit} nodes in all: too much alias \
                             expansion (the limit is one node per byte of the file, at least \
                             {ALIAS_NODES_MIN}; an alias counts every node it repeats, a \
                             scalar one per {ALIAS_SCALAR_BYTES_PER_NODE} bytes)"
                        ),
                    );
                }
                Some((v, nodes)) => {
                    let (v, nodes) = (v.clone(), *nodes);
                    self.alias_budget -= nodes;
                    let (path, is_key) = self.next_path();
                    if self.record_lines && !is_key {
                        let line = self.line(mark);
                        self.lines.insert(path, line);
                    }
                    self.add(v, 0, nodes);
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
                        nodes: 1,
                    }
                } else {
                    Frame::Seq {
                        items: Vec::new(),
                        path,
                        anchor,
                        nodes: 1,
                    }
                };
                self.stack.push(frame);
            }
            Event::MappingEnd | Event::SequenceEnd => match self.stack.pop() {
                Some(Frame::Map {
                    map, anchor, nodes, ..
                }) => self.add(Value::Object(map), anchor, nodes),
                Some(Frame::Seq {
                    items,
                    anchor,
                    nodes,
                    ..
                }) => self.add(Value::Array(items), anchor, nodes),
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
            ("a: [\0\0", 1, 1, 5),
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

    /// A "billion laughs": each level repeats the one before nine times.
    fn alias_bomb(levels: usize) -> String {
        let mut text = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..levels {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        text
    }

    #[test]
    fn alias_expansion_is_bounded_and_named() {
        // Nine levels would be 9^9 (387 million) nodes; refused at the level that crosses
        // the budget, fast, with its line and the rule.
        let text = alias_bomb(9);
        let started = std::time::Instant::now();
        let err = parse_documents(&text, 1).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert_eq!((err.line, err.column), (6, 10), "{err}");
        assert!(
            err.message
                .contains("aliases repeat more than 100000 nodes in all")
                && err
                    .message
                    .contains("one node per byte of the file, at least 100000"),
            "{err}"
        );
        assert!(field_lines(&text, 1).is_err());
        // Ordinary use of anchors, and a small bomb within the budget, still load.
        assert_eq!(
            parse_documents(&alias_bomb(4), 1).unwrap()[0].value["a3"][8][8][8][8],
            "lol"
        );
        // A large scalar repeated counts by its size, not as one node.
        let big = |n| {
            format!(
                "s: &s {}\nt: [{}]\n",
                "x".repeat(64 * 1024),
                vec!["*s"; n].join(", ")
            )
        };
        assert!(parse_documents(&big(90), 1).is_ok());
        assert!(parse_documents(&big(100), 1).is_err());
        // Anchors are per document: a later document cannot use an earlier one's.
        assert!(parse_documents("a: &x 1\n---\nb: *x\n", 1).is_err());
    }

    #[test]
    fn characters_yaml_forbids_are_refused_with_their_position() {
        for (c, name) in [
            ('\0', "NUL"),
            ('\u{1}', "control character"),
            ('\u{1b}', "control character"),
            ('\u{7f}', "DEL"),
            ('\u{80}', "C1 control character"),
            ('\u{9f}', "C1 control character"),
            ('\u{feff}', "byte order mark"),
            ('\u{fffe}', "noncharacter"),
            ('\u{ffff}', "noncharacter"),
        ] {
            let text = format!("type: Mesh\nname: d{c}x\n");
            let err = parse_documents(&text, 1).unwrap_err();
            assert_eq!((err.line, err.column), (2, 8), "{c:?}: {err}");
            assert!(
                err.message.contains(&format!("U+{:04X}", u32::from(c)))
                    && err.message.contains(name),
                "{err}"
            );
            // A piece starting further into its file counts its lines from there.
            assert_eq!(parse_documents(&text, 10).unwrap_err().line, 11);
        }
        // A zero-filled file is refused, not read as empty.
        assert_eq!(parse_documents("\0\0\0\0", 1).unwrap_err().line, 1);
        // Allowed: TAB, CR LF, NEL, other Unicode, and a byte order mark that starts the file.
        let ok = "\u{feff}type: Mesh\r\nname: \"d\tx\u{85}\u{a0}é€😀\u{fefe}\u{fffd}\u{d7ff}\u{e000}\u{10ffff}\"\n";
        assert_eq!(parse_documents(ok, 1).unwrap()[0].value["type"], "Mesh");
        assert!(
            parse_documents(ok, 5).is_err(),
            "a piece's first byte is not the file's"
        );
    }

    #[test]
    fn invalid_utf8_is_refused_with_its_position() {
        let err = check_utf8(b"type: Mesh\nname: d\xc3\x28\n").unwrap_err();
        assert_eq!((err.line, err.column), (2, 8), "{err}");
        assert!(
            err.message.contains("byte 0xC3 is not valid UTF-8"),
            "{err}"
        );
        // An encoded surrogate (U+D800) is invalid UTF-8 too.
        let err = check_utf8(
            "é\n"
                .as_bytes()
                .iter()
                .chain(b"ab\xed\xa0\x80")
                .copied()
                .collect::<Vec<_>>()
                .as_slice(),
        )
        .unwrap_err();
        assert_eq!((err.line, err.column), (2, 3), "{err}");
        assert_eq!(check_utf8("é€".as_bytes()).unwrap(), "é€");
    }

    #[test]
    fn syntax_errors_carry_position() {
        let err = parse_documents("a: b\n  c: d\n", 1).unwrap_err();
        assert_eq!(err.line, 2);
    }
}

//! The part of Go's `text/template` that Kuma's VirtualOutbound uses: literal text and field
//! actions `{{ .name }}` (with optional `{{-`/`-}}` whitespace trimming) over a string map.
//!
//! Anything else (pipelines, functions, conditionals) is a parse error naming the action, so a
//! template that would behave differently from Kuma's is rejected rather than misrendered. As in
//! Go, a key missing from the map renders as `<no value>`, which then fails the DNS-name or
//! port check that follows (`validate::is_dns_name`), exactly as in kuma-cp.

use std::collections::BTreeMap;

/// One parsed piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(String),
}

/// A parsed template, rendered many times (once per matching inbound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses `text`; the error says which action is unsupported or unterminated.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        let mut pending = String::new();
        while let Some(start) = rest.find("{{") {
            pending.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                return Err(format!("unclosed action at {:?}", &rest[start..]));
            };
            let mut action = &after[..end];
            if let Some(a) = action.strip_prefix('-') {
                action = a;
                pending.truncate(pending.trim_end().len());
            }
            let trim_after = action.ends_with('-');
            if trim_after {
                action = &action[..action.len() - 1];
            }
            let action = action.trim();
            let Some(field) = action.strip_prefix('.').filter(|f| is_identifier(f)) else {
                return Err(format!(
                    "unsupported action {{{{{action}}}}}: only field references like {{{{.name}}}} are supported"
                ));
            };
            if !pending.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut pending)));
            }
            pieces.push(Piece::Field(field.to_string()));
            rest = &after[end + 2..];
            if trim_after {
                rest = rest.trim_start();
            }
        }
        pending.push_str(rest);
        if !pending.is_empty() {
            pieces.push(Piece::Text(pending));
        }
        Ok(Template { pieces })
    }

    /// Renders with `values`; a missing key gives Go's `<no value>`.
    pub fn render(&self, values: &BTreeMap<&str, &str>) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(f) => out.push_str(values.get(f.as_str()).unwrap_or(&"<no value>")),
            }
        }
        out
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str, pairs: &[(&str, &str)]) -> Result<String, String> {
        let values = pairs.iter().copied().collect();
        Template::parse(t).map(|t| t.render(&values))
    }

    #[test]
    fn renders_fields_like_go() {
        let vals = [("service", "backend"), ("v", "v1")];
        assert_eq!(
            render("{{.v}}.{{.service}}.mesh", &vals).unwrap(),
            "v1.backend.mesh"
        );
        assert_eq!(render("{{ .service }}", &vals).unwrap(), "backend");
        assert_eq!(render("a {{- .v -}} b", &vals).unwrap(), "av1b");
        assert_eq!(render("80", &vals).unwrap(), "80");
        assert_eq!(render("{{.port}}", &vals).unwrap(), "<no value>");
    }

    #[test]
    fn rejects_what_it_cannot_render_faithfully() {
        assert!(render("{{.a", &[]).unwrap_err().contains("unclosed"));
        assert!(render("{{ printf \"%s\" .a }}", &[])
            .unwrap_err()
            .contains("unsupported action"));
        assert!(render("{{.a.b}}", &[]).is_err());
    }
}

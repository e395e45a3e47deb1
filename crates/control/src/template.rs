//! `--dataplane-var` substitution in a Dataplane template, as `kuma-dp run` does it.
//!
//! kuma-dp renders the template with mustache variables (`{{ name }}`); Bearing supports the
//! variable form (no sections) and, unlike mustache, reports a variable without a value instead
//! of rendering it empty, because an empty address or name only fails later and less clearly.

use std::collections::BTreeMap;

/// Replaces every `{{ var }}` in `text` with its value from `vars`.
pub fn render(text: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err("unclosed '{{' in dataplane template".into());
        };
        let name = after[..end].trim();
        match vars.get(name) {
            Some(value) => out.push_str(value),
            None => {
                return Err(format!(
                    "dataplane template uses {{{{ {name} }}}} but no --dataplane-var {name}=... was given"
                ))
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses `key=value` pairs given with `--dataplane-var`.
pub fn parse_vars(pairs: &[String]) -> Result<BTreeMap<String, String>, String> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => Err(format!("--dataplane-var {p:?} must be key=value")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_reports_missing() {
        let vars = parse_vars(&["name=dp-1".into(), "address=10.0.0.2".into()]).unwrap();
        assert_eq!(
            render("name: {{ name }}\naddress: {{address}}\n", &vars).unwrap(),
            "name: dp-1\naddress: 10.0.0.2\n"
        );
        let err = render("port: {{ port }}", &vars).unwrap_err();
        assert!(err.contains("--dataplane-var port="), "{err}");
        assert!(render("x: {{ name", &vars).is_err());
        assert!(parse_vars(&["novalue".into()]).is_err());
    }
}

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

/// Parses the `key=value` pairs given with `--dataplane-var` / `-v` (or
/// `KUMA_DATAPLANE_RUNTIME_RESOURCE_VARS`), as kuma-dp's flag reads them (pflag's
/// `StringToString`): a value with one `=` is one pair, commas included
/// (`-v tags=a,b`); a value with several is a comma-separated list of pairs
/// (`-v name=dp-1,address=10.0.0.2`), each optionally in double quotes.
pub fn parse_vars(values: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut vars = BTreeMap::new();
    for value in values {
        let pairs: Vec<&str> = if value.matches('=').count() > 1 {
            value.split(',').collect()
        } else {
            vec![value.as_str()]
        };
        for pair in pairs {
            let pair = pair.trim_matches('"');
            match pair.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    vars.insert(k.trim().to_string(), v.to_string());
                }
                _ => return Err(format!("--dataplane-var {pair:?} must be key=value")),
            }
        }
    }
    Ok(vars)
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

    #[test]
    fn vars_take_kuma_dps_comma_form() {
        let vars = parse_vars(&["name=dp-1,address=10.0.0.2".into(), "tags=a,b".into()]).unwrap();
        assert_eq!(vars["name"], "dp-1");
        assert_eq!(vars["address"], "10.0.0.2");
        assert_eq!(
            vars["tags"], "a,b",
            "one '=': the commas belong to the value"
        );
        let err = parse_vars(&["name=dp-1,oops,port=1".into()]).unwrap_err();
        assert!(err.contains("\"oops\""), "{err}");
    }
}

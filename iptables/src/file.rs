//! Kuma's transparent-proxy config file (`--config`, YAML or JSON; `kumactl install
//! transparent-proxy --config` and `kuma-dp --transparent-proxy-config` read the same schema).
//! Files apply in order, each field present overriding the previous value (lists replace).

use serde::Deserialize;
use serde_json::Value;

use crate::config::{
    parse_exclude_ports_for_uids, parse_ip_list, parse_port, parse_vnet, Config, ConfigError,
    IpFamilyMode, TrafficFlow,
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct File {
    #[serde(rename = "kumaDPUser")]
    kuma_dp_user: Option<Value>,
    redirect: Option<Redirect>,
    drop_invalid_packets: Option<bool>,
    verbose: Option<bool>,
    dry_run: Option<bool>,
    ip_family_mode: Option<String>,
    // Kuma fields Bearing accepts and does not act on (named in a warning when set).
    log: Option<Value>,
    wait: Option<Value>,
    wait_interval: Option<Value>,
    retry: Option<Value>,
    store_firewalld: Option<Value>,
    iptables_executables: Option<Value>,
    comments: Option<Value>,
    cni_mode: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Redirect {
    inbound: Option<Flow>,
    outbound: Option<Flow>,
    dns: Option<Dns>,
    vnet: Option<VNet>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Flow {
    enabled: Option<bool>,
    port: Option<Value>,
    include_ports: Option<Value>,
    exclude_ports: Option<Value>,
    #[serde(rename = "excludePortsForUIDs")]
    exclude_ports_for_uids: Option<Vec<Value>>,
    #[serde(rename = "excludePortsForIPs")]
    exclude_ports_for_ips: Option<Vec<Value>>,
    insert_redirect_instead_of_append: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Dns {
    enabled: Option<bool>,
    port: Option<Value>,
    capture_all: Option<bool>,
    skip_conntrack_zone_split: Option<bool>,
    resolv_config_path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VNet {
    networks: Option<Vec<String>>,
}

/// Applies one config file's text (`name` is used in errors) onto `config`; returns the
/// warnings (Kuma fields set that Bearing does not act on).
pub fn apply_file(config: &mut Config, name: &str, text: &str) -> Result<Vec<String>, ConfigError> {
    let err = |field: &str, value: &str, message: String| {
        ConfigError::new(format!("{name}: {field}"), value, message)
    };
    let docs = bearing_model::yaml::parse_documents(text, 1)
        .map_err(|e| err("", "", format!("invalid YAML or JSON: {e}")))?;
    let mut warnings = Vec::new();
    for doc in docs {
        if doc.value.is_null() {
            continue;
        }
        let file: File = serde_path_to_error::deserialize(doc.value)
            .map_err(|e| err(&e.path().to_string(), "", e.inner().to_string()))?;
        let ignored = [
            ("log", &file.log),
            ("wait", &file.wait),
            ("waitInterval", &file.wait_interval),
            ("retry", &file.retry),
            ("storeFirewalld", &file.store_firewalld),
            ("iptablesExecutables", &file.iptables_executables),
            ("comments", &file.comments),
            ("cniMode", &file.cni_mode),
        ];
        for (field, value) in ignored {
            if value.is_some() {
                warnings.push(format!(
                    "{name}: {field} is accepted but not acted on by Bearing"
                ));
            }
        }
        if let Some(user) = &file.kuma_dp_user {
            let user = scalar(user);
            config.kuma_dp_uid =
                crate::user::resolve(&user).map_err(|m| err("kumaDPUser", &user, m))?;
        }
        if let Some(mode) = &file.ip_family_mode {
            config.ip_family_mode =
                IpFamilyMode::parse(mode).map_err(|m| err("ipFamilyMode", mode, m))?;
        }
        set(&mut config.drop_invalid_packets, file.drop_invalid_packets);
        set(&mut config.verbose, file.verbose);
        set(&mut config.dry_run, file.dry_run);
        let Some(redirect) = file.redirect else {
            continue;
        };
        if let Some(flow) = &redirect.inbound {
            apply_flow(&mut config.inbound, flow, "redirect.inbound", &err)?;
            if flow.exclude_ports_for_uids.is_some() {
                return Err(err(
                    "redirect.inbound.excludePortsForUIDs",
                    "",
                    "excluding ports by UIDs applies to outbound traffic only".to_string(),
                ));
            }
        }
        if let Some(flow) = &redirect.outbound {
            apply_flow(&mut config.outbound, flow, "redirect.outbound", &err)?;
        }
        if let Some(dns) = &redirect.dns {
            set(&mut config.dns.enabled, dns.enabled);
            set(&mut config.dns.capture_all, dns.capture_all);
            set(
                &mut config.dns.skip_conntrack_zone_split,
                dns.skip_conntrack_zone_split,
            );
            if let Some(path) = &dns.resolv_config_path {
                config.dns.resolv_conf = path.into();
            }
            if let Some(port) = &dns.port {
                let port = scalar(port);
                config.dns.port =
                    parse_port(&port).map_err(|m| err("redirect.dns.port", &port, m))?;
            }
        }
        if let Some(networks) = redirect.vnet.and_then(|v| v.networks) {
            config.vnets = networks
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    parse_vnet(n).map_err(|m| err(&format!("redirect.vnet.networks[{i}]"), n, m))
                })
                .collect::<Result<_, _>>()?;
        }
    }
    Ok(warnings)
}

fn apply_flow(
    flow: &mut TrafficFlow,
    file: &Flow,
    path: &str,
    err: &dyn Fn(&str, &str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    set(&mut flow.enabled, file.enabled);
    set(
        &mut flow.insert_redirect_instead_of_append,
        file.insert_redirect_instead_of_append,
    );
    if let Some(port) = &file.port {
        let port = scalar(port);
        flow.port = parse_port(&port).map_err(|m| err(&format!("{path}.port"), &port, m))?;
    }
    let ports = |value: &Value, field: &str| {
        let text = port_list(value);
        crate::config::parse_port_list(&text).map_err(|m| err(&format!("{path}.{field}"), &text, m))
    };
    if let Some(v) = &file.include_ports {
        flow.include_ports = ports(v, "includePorts")?;
    }
    if let Some(v) = &file.exclude_ports {
        flow.exclude_ports = ports(v, "excludePorts")?;
    }
    if let Some(list) = &file.exclude_ports_for_uids {
        let mut all = Vec::new();
        for (i, v) in list.iter().enumerate() {
            let text = scalar(v);
            all.extend(
                parse_exclude_ports_for_uids(&text)
                    .map_err(|m| err(&format!("{path}.excludePortsForUIDs[{i}]"), &text, m))?,
            );
        }
        flow.exclude_ports_for_uids = all;
    }
    if let Some(list) = &file.exclude_ports_for_ips {
        let mut all = Vec::new();
        for (i, v) in list.iter().enumerate() {
            let text = scalar(v);
            all.extend(
                parse_ip_list(&text)
                    .map_err(|m| err(&format!("{path}.excludePortsForIPs[{i}]"), &text, m))?,
            );
        }
        flow.exclude_ips = all;
    }
    Ok(())
}

fn set(field: &mut bool, value: Option<bool>) {
    if let Some(v) = value {
        *field = v;
    }
}

/// A scalar as text (`1` and `"1"` alike).
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A port list given as a YAML list, a comma-separated string or a single number.
fn port_list(value: &Value) -> String {
    match value {
        Value::Array(items) => items.iter().map(scalar).collect::<Vec<_>>().join(","),
        other => scalar(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_files_override_and_lists_replace() {
        let mut c = Config::default();
        apply_file(
            &mut c,
            "1.yaml",
            "redirect:\n  dns:\n    enabled: false\n    port: 7777\n",
        )
        .unwrap();
        apply_file(&mut c, "2.yaml", "redirect:\n  dns:\n    enabled: true\n    port: 8888\n  inbound:\n    excludePorts: [10000, 20000]\n").unwrap();
        apply_file(&mut c, "-", "{\"redirect\": {\"inbound\": {\"excludePorts\": \"4444,55555\"}, \"outbound\": {\"excludePortsForUIDs\": [1, \"2-3:4-5\"]}}}").unwrap();
        assert!(c.dns.enabled);
        assert_eq!(c.dns.port, 8888);
        assert_eq!(c.inbound.exclude_ports, vec![4444, 55555]);
        assert_eq!(c.outbound.exclude_ports_for_uids.len(), 4);
    }

    #[test]
    fn errors_name_file_field_and_value() {
        let mut c = Config::default();
        let e = apply_file(&mut c, "a.yaml", "redirect:\n  outbound:\n    port: 0\n").unwrap_err();
        assert_eq!(e.to_string(), "a.yaml: redirect.outbound.port \"0\": value '0' is not a valid port (uint16 in the range [1, 65535])");
        let e = apply_file(&mut c, "a.yaml", "redirect:\n  outbund: {}\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `outbund`"), "{e}");
        let e = apply_file(
            &mut c,
            "a.yaml",
            "redirect:\n  vnet:\n    networks: [docker0]\n",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("redirect.vnet.networks[0] \"docker0\""),
            "{e}"
        );
    }
}

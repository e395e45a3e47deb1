//! The `install` flags (those of `kumactl install transparent-proxy`) and how they combine
//! with config files: defaults, then each `--config` in order, then the other flags.

use std::io::Read;

use crate::config::{
    parse_exclude_ports_for_uids, parse_ip_list, parse_port, parse_port_list, parse_vnet, Config,
    ConfigError, IpFamilyMode,
};

/// `bearing transparent-proxy install` flags. Values are parsed by [`InstallFlags::resolve`]
/// so that errors name the flag and the value. Booleans take an optional `=true|false`.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct InstallFlags {
    /// Outbound port redirected to (Dataplane networking.transparentProxying.redirectPortOutbound).
    #[arg(long, value_name = "PORT")]
    pub redirect_outbound_port: Option<String>,
    /// Inbound port redirected to (Dataplane networking.transparentProxying.redirectPortInbound).
    #[arg(long, value_name = "PORT")]
    pub redirect_inbound_port: Option<String>,
    /// Redirect inbound traffic (disable for gateways).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub redirect_inbound: Option<bool>,
    /// Redirect DNS requests to the nameservers of /etc/resolv.conf to the DNS port.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub redirect_dns: Option<bool>,
    /// Redirect all DNS requests to the DNS port.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub redirect_all_dns_traffic: Option<bool>,
    /// Port of the DNS proxy.
    #[arg(long, value_name = "PORT")]
    pub redirect_dns_port: Option<String>,
    /// Do not split DNS traffic into conntrack zones.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub skip_dns_conntrack_zone_split: Option<bool>,
    /// User name or uid the proxy runs as; its traffic is not redirected (default 5678).
    #[arg(long, value_name = "USER", conflicts_with = "kuma_dp_uid")]
    pub kuma_dp_user: Option<String>,
    /// Uid the proxy runs as (older kumactl flag; same as --kuma-dp-user).
    #[arg(long, value_name = "UID")]
    pub kuma_dp_uid: Option<String>,
    /// Inbound ports not redirected (comma list, repeatable).
    #[arg(long, value_name = "PORTS")]
    pub exclude_inbound_ports: Vec<String>,
    /// Outbound ports not redirected (comma list, repeatable).
    #[arg(long, value_name = "PORTS")]
    pub exclude_outbound_ports: Vec<String>,
    /// Source addresses or networks whose inbound traffic is not redirected (IPv4 and IPv6).
    #[arg(long, value_name = "IPS")]
    pub exclude_inbound_ips: Vec<String>,
    /// Destination addresses or networks not redirected (IPv4 and IPv6).
    #[arg(long, value_name = "IPS")]
    pub exclude_outbound_ips: Vec<String>,
    /// `[protocol:][ports:]uids`, e.g. `53,3000-5000:106-108` (repeatable).
    #[arg(long, value_name = "RULE")]
    pub exclude_outbound_ports_for_uids: Vec<String>,
    /// `dualstack` or `ipv4`.
    #[arg(long, value_name = "MODE")]
    pub ip_family_mode: Option<String>,
    /// Virtual network `IFACE:CIDR` (interface prefix with `+`, e.g. `br+:172.18.0.0/16`).
    #[arg(long, value_name = "IFACE:CIDR")]
    pub vnet: Vec<String>,
    /// Insert the PREROUTING jump to our chain at the top instead of appending it.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub redirect_inbound_insert_instead_of_append: Option<bool>,
    /// Insert the OUTPUT jump to our chain at the top instead of appending it.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub redirect_outbound_insert_instead_of_append: Option<bool>,
    /// Drop packets conntrack marks INVALID (mangle table).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub drop_invalid_packets: Option<bool>,
    /// Kuma transparent-proxy config file(s), YAML or JSON: comma list of paths, `-` for
    /// stdin; repeatable, later ones win, flags win over files.
    #[arg(long, value_name = "FILES")]
    pub config: Vec<String>,
    /// Print the rules and change nothing (works without root).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub dry_run: Option<bool>,
    /// Print the backend, the commands run and what changed.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub verbose: Option<bool>,
}

impl InstallFlags {
    /// The configuration these flags describe (config files read, user names looked up),
    /// and warnings for the user.
    pub fn resolve(&self) -> Result<(Config, Vec<String>), ConfigError> {
        if self.redirect_dns == Some(true) && self.redirect_all_dns_traffic == Some(true) {
            return Err(ConfigError::new(
                "--redirect-dns",
                "true",
                "only one of '--redirect-dns' or '--redirect-all-dns-traffic' should be specified",
            ));
        }
        let mut config = Config::default();
        let mut warnings = Vec::new();
        for value in &self.config {
            for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let text = read_source(name).map_err(|e| ConfigError::new("--config", name, e))?;
                warnings.extend(crate::file::apply_file(&mut config, name, &text)?);
            }
        }
        self.apply(&mut config)?;
        Ok((config, warnings))
    }

    fn apply(&self, c: &mut Config) -> Result<(), ConfigError> {
        let port = |flag: &str, v: &str| parse_port(v).map_err(|m| ConfigError::new(flag, v, m));
        if let Some(v) = &self.redirect_outbound_port {
            c.outbound.port = port("--redirect-outbound-port", v)?;
        }
        if let Some(v) = &self.redirect_inbound_port {
            c.inbound.port = port("--redirect-inbound-port", v)?;
        }
        if let Some(v) = &self.redirect_dns_port {
            c.dns.port = port("--redirect-dns-port", v)?;
        }
        let flags = [
            (&mut c.inbound.enabled, self.redirect_inbound),
            (&mut c.dns.enabled, self.redirect_dns),
            (&mut c.dns.capture_all, self.redirect_all_dns_traffic),
            (
                &mut c.dns.skip_conntrack_zone_split,
                self.skip_dns_conntrack_zone_split,
            ),
            (
                &mut c.inbound.insert_redirect_instead_of_append,
                self.redirect_inbound_insert_instead_of_append,
            ),
            (
                &mut c.outbound.insert_redirect_instead_of_append,
                self.redirect_outbound_insert_instead_of_append,
            ),
            (&mut c.drop_invalid_packets, self.drop_invalid_packets),
            (&mut c.dry_run, self.dry_run),
            (&mut c.verbose, self.verbose),
        ];
        for (field, value) in flags {
            if let Some(v) = value {
                *field = v;
            }
        }
        for (flag, value) in [
            ("--kuma-dp-user", &self.kuma_dp_user),
            ("--kuma-dp-uid", &self.kuma_dp_uid),
        ] {
            if let Some(v) = value {
                c.kuma_dp_uid =
                    crate::user::resolve(v).map_err(|m| ConfigError::new(flag, v, m))?;
            }
        }
        if let Some(v) = &self.ip_family_mode {
            c.ip_family_mode =
                IpFamilyMode::parse(v).map_err(|m| ConfigError::new("--ip-family-mode", v, m))?;
        }
        if let Some(ports) = list(
            &self.exclude_inbound_ports,
            "--exclude-inbound-ports",
            parse_port_list,
        )? {
            c.inbound.exclude_ports = ports;
        }
        if let Some(ports) = list(
            &self.exclude_outbound_ports,
            "--exclude-outbound-ports",
            parse_port_list,
        )? {
            c.outbound.exclude_ports = ports;
        }
        if let Some(ips) = list(
            &self.exclude_inbound_ips,
            "--exclude-inbound-ips",
            parse_ip_list,
        )? {
            c.inbound.exclude_ips = ips;
        }
        if let Some(ips) = list(
            &self.exclude_outbound_ips,
            "--exclude-outbound-ips",
            parse_ip_list,
        )? {
            c.outbound.exclude_ips = ips;
        }
        if let Some(e) = list(
            &self.exclude_outbound_ports_for_uids,
            "--exclude-outbound-ports-for-uids",
            parse_exclude_ports_for_uids,
        )? {
            c.outbound.exclude_ports_for_uids = e;
        }
        if let Some(v) = list(&self.vnet, "--vnet", |t| parse_vnet(t).map(|v| vec![v]))? {
            c.vnets = v;
        }
        Ok(())
    }
}

/// Parses every value of a repeatable flag and concatenates the results; `None` when the
/// flag was not given (the config file's value stays).
fn list<T>(
    values: &[String],
    flag: &str,
    parse: impl Fn(&str) -> Result<Vec<T>, String>,
) -> Result<Option<Vec<T>>, ConfigError> {
    if values.is_empty() {
        return Ok(None);
    }
    let mut all = Vec::new();
    for v in values {
        all.extend(parse(v).map_err(|m| ConfigError::new(flag, v.as_str(), m))?);
    }
    Ok(Some(all))
}

/// Reads a config file, or stdin for `-`.
fn read_source(name: &str) -> Result<String, String> {
    if name == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
        return Ok(text);
    }
    std::fs::read_to_string(name).map_err(|e| format!("cannot read: {e}"))
}

//! The typed transparent-proxy configuration, Kuma's defaults, and the parsers for every
//! value a flag or a config file can hold. Parse errors use Kuma's wording; the caller adds
//! where the value came from (see [`ConfigError`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

/// Kuma's default data-plane uid, excluded from redirection.
pub const DEFAULT_KUMA_DP_UID: u32 = 5678;
/// Default port of the outbound listener traffic is redirected to.
pub const DEFAULT_REDIRECT_OUTBOUND_PORT: u16 = 15001;
/// Default port of the inbound listener traffic is redirected to.
pub const DEFAULT_REDIRECT_INBOUND_PORT: u16 = 15006;
/// Default port of the DNS proxy.
pub const DEFAULT_REDIRECT_DNS_PORT: u16 = 15053;

/// A configuration value that could not be used: where it came from, the value, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin} {value:?}: {message}")]
pub struct ConfigError {
    /// The flag (`--vnet`) or file field (`a.yaml: redirect.vnet.networks[0]`).
    pub origin: String,
    /// The value as given.
    pub value: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// An error for `value` given through `origin`.
    pub fn new(
        origin: impl Into<String>,
        value: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            origin: origin.into(),
            value: value.into(),
            message: message.into(),
        }
    }
}

/// An IP family: rules are built and installed once per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `iptables`
    Ipv4,
    /// `ip6tables`
    Ipv6,
}

impl Family {
    /// `IPv4` or `IPv6`.
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        }
    }

    /// The localhost address as a /32 or /128 (127.0.0.1, ::1).
    pub fn localhost(self) -> Cidr {
        match self {
            Family::Ipv4 => Cidr::host(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Family::Ipv6 => Cidr::host(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        }
    }

    /// The source address of inbound passthrough traffic from the proxy (127.0.0.6, ::6).
    pub fn inbound_passthrough(self) -> Cidr {
        match self {
            Family::Ipv4 => Cidr::host(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6))),
            Family::Ipv6 => Cidr::host(IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6))),
        }
    }

    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

/// Which families get rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IpFamilyMode {
    /// IPv4 and, when the host has IPv6, IPv6.
    #[default]
    DualStack,
    /// IPv4 only.
    Ipv4,
}

impl IpFamilyMode {
    /// Parses `dualstack` or `ipv4` (any case; empty means dualstack, as in Kuma).
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "" | "dualstack" => Ok(Self::DualStack),
            "ipv4" => Ok(Self::Ipv4),
            _ => Err("must be one of 'dualstack' or 'ipv4'".to_string()),
        }
    }
}

/// A layer-4 protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TCP
    Tcp,
    /// UDP
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// An address or network, held as its network address (`::1/64` is `::/64`), the way
/// iptables stores and prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address (host bits cleared).
    pub network: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// A single address (/32 or /128).
    pub fn host(ip: IpAddr) -> Self {
        let prefix = match ip {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        Self {
            network: ip,
            prefix,
        }
    }

    /// Parses `ip` or `ip/prefix`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (text, None),
        };
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("invalid IP address: '{text}'"))?;
        let max = Cidr::host(ip).prefix;
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("invalid prefix length in '{text}'")),
            },
        };
        let network = match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        };
        Ok(Self { network, prefix })
    }

    /// The family of this network.
    pub fn family(&self) -> Family {
        Family::of(self.network)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// One `--exclude-outbound-ports-for-uids` rule for one protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidExclusion {
    /// The protocol matched.
    pub protocol: Protocol,
    /// Ports in iptables multiport syntax (`53,3000:5000`).
    pub ports: String,
    /// One uid or a range in iptables-save syntax (`106-108`).
    pub uids: String,
}

/// A `--vnet` entry: traffic arriving on `interface` (a name, or a prefix ending in `+`) and
/// not addressed to `cidr` goes to the outbound listener; its DNS to the DNS proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VNet {
    /// Interface name or prefix (`br+`).
    pub interface: String,
    /// The network, canonicalised.
    pub cidr: Cidr,
    /// The CIDR as written (Kuma's rule comment quotes it).
    pub text: String,
}

/// Inbound or outbound redirection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficFlow {
    /// Redirect this direction at all.
    pub enabled: bool,
    /// The listener port traffic is redirected to.
    pub port: u16,
    /// When not empty, only these destination ports are redirected.
    pub include_ports: Vec<u16>,
    /// Destination ports never redirected.
    pub exclude_ports: Vec<u16>,
    /// Port/uid exclusions (outbound only).
    pub exclude_ports_for_uids: Vec<UidExclusion>,
    /// Addresses never redirected (source for inbound, destination for outbound), both
    /// families mixed.
    pub exclude_ips: Vec<Cidr>,
    /// Insert the jump to our chain at the top of PREROUTING/OUTPUT instead of appending it.
    pub insert_redirect_instead_of_append: bool,
}

impl TrafficFlow {
    fn new(port: u16) -> Self {
        Self {
            enabled: true,
            port,
            include_ports: Vec::new(),
            exclude_ports: Vec::new(),
            exclude_ports_for_uids: Vec::new(),
            exclude_ips: Vec::new(),
            insert_redirect_instead_of_append: false,
        }
    }
}

/// DNS redirection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// Redirect DNS sent to the nameservers of `resolv_conf` (`--redirect-dns`).
    pub enabled: bool,
    /// Redirect all DNS (`--redirect-all-dns-traffic`); implies `enabled`.
    pub capture_all: bool,
    /// The DNS proxy port.
    pub port: u16,
    /// Do not split DNS into conntrack zones 1 and 2.
    pub skip_conntrack_zone_split: bool,
    /// Where the nameservers are read from.
    pub resolv_conf: PathBuf,
}

/// The whole transparent-proxy configuration (Kuma's `Config`, the parts Bearing acts on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The uid whose traffic is not redirected (the proxy's own).
    pub kuma_dp_uid: u32,
    /// Families to configure.
    pub ip_family_mode: IpFamilyMode,
    /// Inbound redirection.
    pub inbound: TrafficFlow,
    /// Outbound redirection.
    pub outbound: TrafficFlow,
    /// DNS redirection.
    pub dns: Dns,
    /// Virtual networks (`--vnet`), both families mixed.
    pub vnets: Vec<VNet>,
    /// Drop packets conntrack marks INVALID (mangle table).
    pub drop_invalid_packets: bool,
    /// Print what is done.
    pub verbose: bool,
    /// Print the rules, change nothing.
    pub dry_run: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            kuma_dp_uid: DEFAULT_KUMA_DP_UID,
            ip_family_mode: IpFamilyMode::DualStack,
            inbound: TrafficFlow::new(DEFAULT_REDIRECT_INBOUND_PORT),
            outbound: TrafficFlow::new(DEFAULT_REDIRECT_OUTBOUND_PORT),
            dns: Dns {
                enabled: false,
                capture_all: false,
                port: DEFAULT_REDIRECT_DNS_PORT,
                skip_conntrack_zone_split: false,
                resolv_conf: PathBuf::from("/etc/resolv.conf"),
            },
            vnets: Vec::new(),
            drop_invalid_packets: false,
            verbose: false,
            dry_run: false,
        }
    }
}

impl Config {
    /// Whether DNS is redirected at all.
    pub fn dns_enabled(&self) -> bool {
        self.dns.enabled || self.dns.capture_all
    }
}

/// Parses a port (1-65535), with Kuma's message.
pub fn parse_port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!(
            "value '{text}' is not a valid port (uint16 in the range [1, 65535])"
        )),
    }
}

/// Parses a comma-separated port list (empty items skipped).
pub fn parse_port_list(text: &str) -> Result<Vec<u16>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(parse_port)
        .collect()
}

/// Parses a comma-separated list of addresses or networks, v4 and v6 mixed.
pub fn parse_ip_list(text: &str) -> Result<Vec<Cidr>, String> {
    if text.is_empty() {
        return Err("invalid exclusion rule: the rule cannot be empty".to_string());
    }
    text.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            Cidr::parse(a).map_err(|_| {
                format!(
                    "invalid exclusion rule: invalid IP address: '{a}'. Expected format: <ip> or <ip>/<cidr> (e.g., 10.0.0.1, 172.16.0.0/16, fe80::1, fe80::/10)"
                )
            })
        })
        .collect()
}

/// Parses `IFACE:CIDR` (split at the first colon, so `iface:::1/64` works).
pub fn parse_vnet(text: &str) -> Result<VNet, String> {
    let Some((interface, cidr)) = text.split_once(':') else {
        return Err(format!("invalid virtual network definition: {text}"));
    };
    if !cidr.contains('/') {
        return Err(format!("invalid CIDR definition for {cidr}"));
    }
    let parsed =
        Cidr::parse(cidr).map_err(|e| format!("invalid CIDR definition for {cidr}: {e}"))?;
    Ok(VNet {
        interface: interface.to_string(),
        cidr: parsed,
        text: cidr.to_string(),
    })
}

/// Parses one `--exclude-outbound-ports-for-uids` value, `[protocol:][ports:]uids`:
/// protocol `tcp`, `udp`, a comma list of them or `*`; ports a comma list of values and
/// `a-b` ranges or `*`; uids one value or one range. Messages follow Kuma's.
pub fn parse_exclude_ports_for_uids(text: &str) -> Result<Vec<UidExclusion>, String> {
    const CONTEXT: &str = "parsing excluded outbound ports for uids failed";
    let parts: Vec<&str> = text.split(':').collect();
    let (protocols, ports, uids) = match parts.as_slice() {
        [uids] => ("*", "*", *uids),
        [ports, uids] => ("*", *ports, *uids),
        [protocols, ports, uids] => (*protocols, *ports, *uids),
        _ => {
            return Err(format!(
                "{CONTEXT}: invalid format for excluding ports by UIDs: '{text}'. Expected format: <protocol:>?<ports:>?<uids>"
            ))
        }
    };
    if uids == "*" {
        return Err(format!("{CONTEXT}: wildcard '*' is not allowed for UIDs"));
    }
    let ports = if ports == "*" || ports.is_empty() {
        "1-65535"
    } else {
        ports
    };
    validate_values_or_ranges(ports).map_err(|e| format!("{CONTEXT}: invalid port range: {e}"))?;
    if uids.contains(',') {
        return Err(format!(
            "{CONTEXT}: invalid UID entry: '{uids}'. It should either be a single item or a range"
        ));
    }
    validate_values_or_ranges(uids).map_err(|e| format!("{CONTEXT}: invalid UID range: {e}"))?;
    let protocols = if protocols.is_empty() || protocols == "*" {
        vec![Protocol::Tcp, Protocol::Udp]
    } else {
        protocols
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| match p.trim().to_ascii_lowercase().as_str() {
                "tcp" => Ok(Protocol::Tcp),
                "udp" => Ok(Protocol::Udp),
                _ => Err(format!("{CONTEXT}: invalid or unsupported protocol: '{p}'")),
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    Ok(protocols
        .into_iter()
        .map(|protocol| UidExclusion {
            protocol,
            ports: ports.replace('-', ":"),
            uids: uids.to_string(),
        })
        .collect())
}

/// Checks `80,1000-2000`: every item a uint16 or a range of two.
fn validate_values_or_ranges(text: &str) -> Result<(), String> {
    for item in text.split(',').filter(|i| !i.trim().is_empty()) {
        for value in item.split('-') {
            if value.parse::<u16>().is_err() {
                return Err(format!(
                    "validation failed for value or range '{text}': invalid uint16 value: '{value}'"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_canonical() {
        let c = |t| Cidr::parse(t).map(|c| c.to_string());
        assert_eq!(c("10.0.0.1").unwrap(), "10.0.0.1/32");
        assert_eq!(c("172.32.16.8/16").unwrap(), "172.32.0.0/16");
        assert_eq!(c("::1/64").unwrap(), "::/64");
        assert_eq!(c("fe80::1").unwrap(), "fe80::1/128");
        assert_eq!(c("0.0.0.0/0").unwrap(), "0.0.0.0/0");
        assert!(c("10.0.0.1/33").is_err());
        assert!(c("nope").is_err());
    }

    #[test]
    fn uid_exclusions() {
        let e = parse_exclude_ports_for_uids("53,3000-5000:106-108").unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].protocol, e[0].ports.as_str()),
            (Protocol::Tcp, "53,3000:5000")
        );
        assert_eq!(
            (e[1].protocol, e[1].uids.as_str()),
            (Protocol::Udp, "106-108")
        );
        let e = parse_exclude_ports_for_uids("tcp:*:0").unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].ports, "1:65535");
        let err = |t| parse_exclude_ports_for_uids(t).unwrap_err();
        assert!(err("a3000-5000:1").ends_with("invalid port range: validation failed for value or range 'a3000-5000': invalid uint16 value: 'a3000'"));
        assert!(err("http:3000-5000:1").ends_with("invalid or unsupported protocol: 'http'"));
        assert!(err("3000-5000:1:*").ends_with("wildcard '*' is not allowed for UIDs"));
        assert!(err("3000-5000:1:1,2,3")
            .ends_with("invalid UID entry: '1,2,3'. It should either be a single item or a range"));
        assert!(err("tcp,http:1:1").ends_with("invalid or unsupported protocol: 'http'"));
        assert!(err("1:2:3:4").contains("Expected format"));
    }

    #[test]
    fn ports_vnets_and_modes() {
        assert_eq!(parse_port_list("1, 22,,333").unwrap(), vec![1, 22, 333]);
        assert!(parse_port("0").unwrap_err().contains("not a valid port"));
        assert!(parse_port("70000").is_err());
        let v = parse_vnet("iface:::1/64").unwrap();
        assert_eq!(
            (v.interface.as_str(), v.cidr.to_string(), v.text.as_str()),
            ("iface", "::/64".into(), "::1/64")
        );
        assert!(parse_vnet("docker0").is_err());
        assert!(parse_vnet("docker0:10.0.0.0").is_err());
        assert_eq!(IpFamilyMode::parse("IPv4").unwrap(), IpFamilyMode::Ipv4);
        assert!(IpFamilyMode::parse("ipv6").is_err());
        assert!(parse_ip_list("10.0.0.1,fd00::/8").is_ok());
        assert!(parse_ip_list("10.0.0.300")
            .unwrap_err()
            .contains("'10.0.0.300'"));
    }
}

//! The rule builder: a pure function from [`Config`] and the host facts it needs
//! ([`Environment`]) to one family's tables, chains and rules, in Kuma's order and with
//! Kuma's comments (so kumactl-compatible tooling and Kuma's golden files match).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::config::{Cidr, Config, Family, Protocol};
use crate::rule::{PortMatch, Rule, Target};

/// Chain PREROUTING jumps to.
pub const INBOUND: &str = "KUMA_MESH_INBOUND";
/// Chain that redirects inbound TCP to the inbound listener.
pub const INBOUND_REDIRECT: &str = "KUMA_MESH_INBOUND_REDIRECT";
/// Chain OUTPUT jumps to.
pub const OUTBOUND: &str = "KUMA_MESH_OUTBOUND";
/// Chain that redirects outbound TCP to the outbound listener.
pub const OUTBOUND_REDIRECT: &str = "KUMA_MESH_OUTBOUND_REDIRECT";
/// Docker's chain for its embedded DNS in custom networks; kuma-dp's DNS goes there when it
/// exists.
pub const DOCKER_OUTPUT: &str = "DOCKER_OUTPUT";

const DNS_PORT: u16 = 53;

/// Facts about the host the rules depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    /// Name of the loopback interface (`lo`).
    pub loopback: String,
    /// Nameservers from resolv.conf (used by `--redirect-dns`), both families mixed.
    pub nameservers: Vec<IpAddr>,
    /// Whether the nat table has Docker's `DOCKER_OUTPUT` chain.
    pub docker_output: bool,
}

/// One table's part of the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// `raw`, `nat` or `mangle`.
    pub name: &'static str,
    /// Chains to create.
    pub chains: Vec<String>,
    /// Rules, in the order they are added.
    pub rules: Vec<Rule>,
}

/// Everything one family needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// The family.
    pub family: Family,
    /// Tables holding rules (raw, nat, mangle; empty ones left out).
    pub tables: Vec<Table>,
    /// Things worth telling the user (a feature turned off for this family, and why).
    pub warnings: Vec<String>,
}

/// Builds the rules of `family`.
pub fn build(config: &Config, family: Family, env: &Environment) -> Ruleset {
    let mut warnings = Vec::new();
    let uid = config.kuma_dp_uid.to_string();
    let dns_servers: Vec<IpAddr> = env
        .nameservers
        .iter()
        .copied()
        .filter(|ip| Family::of(*ip) == family)
        .collect();
    let mut dns_enabled = config.dns_enabled();
    if dns_enabled && !config.dns.capture_all && dns_servers.is_empty() {
        dns_enabled = false;
        warnings.push(format!(
            "no {0} DNS servers found in {1}. DNS traffic capture for {0} will be disabled",
            family.name(),
            config.dns.resolv_conf.display()
        ));
    }
    let mut conntrack_split = dns_enabled && !config.dns.skip_conntrack_zone_split;
    if conntrack_split && env.docker_output && config.dns.capture_all {
        conntrack_split = false;
        warnings.push("conntrack zone splitting is unsupported when capturing all DNS traffic inside Docker containers with custom networks".to_string());
    }
    let facts = Facts {
        config,
        family,
        env,
        uid,
        dns_enabled,
        dns_servers,
    };
    let tables = [
        Table {
            name: "raw",
            chains: Vec::new(),
            rules: if conntrack_split {
                facts.raw()
            } else {
                Vec::new()
            },
        },
        facts.nat(),
        Table {
            name: "mangle",
            chains: Vec::new(),
            rules: if config.drop_invalid_packets {
                vec![Rule::append("PREROUTING", "drop packets in the INVALID state to prevent potential issues with malformed or out-of-order packets", Target::Drop).ctstate_invalid()]
            } else {
                Vec::new()
            },
        },
    ];
    Ruleset {
        family,
        tables: tables.into_iter().filter(|t| !t.rules.is_empty()).collect(),
        warnings,
    }
}

/// The inputs of one family's build, resolved.
struct Facts<'a> {
    config: &'a Config,
    family: Family,
    env: &'a Environment,
    uid: String,
    dns_enabled: bool,
    dns_servers: Vec<IpAddr>,
}

impl Facts<'_> {
    fn ips(&self, list: &[Cidr]) -> Vec<Cidr> {
        list.iter()
            .copied()
            .filter(|c| c.family() == self.family)
            .collect()
    }

    /// Conntrack zones: zone 1 between the DNS proxy and upstream resolvers, zone 2 between
    /// applications and the DNS proxy.
    fn raw(&self) -> Vec<Rule> {
        let dns_port = self.config.dns.port;
        let mut prerouting = Vec::new();
        let mut output = vec![
            Rule::append(
                "OUTPUT",
                format!(
                    "assign connection tracking zone 1 to DNS traffic from the kuma-dp user (UID {})",
                    self.uid
                ),
                Target::CtZone(1),
            )
            .port(Protocol::Udp, PortMatch::Dport(DNS_PORT))
            .uid(false, &self.uid),
            Rule::append(
                "OUTPUT",
                "assign connection tracking zone 2 to DNS responses from the kuma-dp DNS proxy",
                Target::CtZone(2),
            )
            .port(Protocol::Udp, PortMatch::Sport(dns_port))
            .uid(false, &self.uid),
        ];
        if self.config.dns.capture_all {
            output.push(
                Rule::append(
                    "OUTPUT",
                    "assign connection tracking zone 2 to all DNS requests",
                    Target::CtZone(2),
                )
                .port(Protocol::Udp, PortMatch::Dport(DNS_PORT)),
            );
            prerouting.push(
                Rule::append(
                    "PREROUTING",
                    "assign connection tracking zone 1 to all DNS responses",
                    Target::CtZone(1),
                )
                .port(Protocol::Udp, PortMatch::Sport(DNS_PORT)),
            );
        } else {
            for ip in &self.dns_servers {
                let server = Cidr::host(*ip);
                output.push(
                    Rule::append(
                        "OUTPUT",
                        format!(
                            "assign connection tracking zone 2 to DNS requests destined for {ip}"
                        ),
                        Target::CtZone(2),
                    )
                    .dst(server)
                    .port(Protocol::Udp, PortMatch::Dport(DNS_PORT)),
                );
                // A resolver on a loopback address (Docker's 127.0.0.11) may answer from a
                // port altered by DNAT: its responses to localhost go to zone 1 too.
                if ip.is_loopback() {
                    output.push(
                        Rule::append("OUTPUT", "assign conntrack zone 1 to DNS responses from the local DNS server to localhost, needed when the DNS query port is altered by a DNAT iptables rule, such as with Docker containers in a custom network", Target::CtZone(1))
                            .src(server)
                            .dst(self.family.localhost())
                            .proto(Protocol::Udp),
                    );
                }
                prerouting.push(
                    Rule::append(
                        "PREROUTING",
                        format!("assign connection tracking zone 1 to DNS responses from {ip}"),
                        Target::CtZone(1),
                    )
                    .src(server)
                    .port(Protocol::Udp, PortMatch::Sport(DNS_PORT)),
                );
            }
        }
        prerouting.extend(output);
        prerouting
    }

    fn nat(&self) -> Table {
        let mut rules = self.prerouting();
        rules.extend(self.output());
        rules.extend(self.mesh_inbound());
        rules.extend(self.mesh_outbound());
        rules.push(redirect_chain(INBOUND_REDIRECT, self.config.inbound.port));
        rules.push(redirect_chain(OUTBOUND_REDIRECT, self.config.outbound.port));
        Table {
            name: "nat",
            chains: [INBOUND, OUTBOUND, INBOUND_REDIRECT, OUTBOUND_REDIRECT]
                .map(String::from)
                .to_vec(),
            rules,
        }
    }

    fn prerouting(&self) -> Vec<Rule> {
        let vnets: BTreeMap<&str, &crate::config::VNet> = self
            .config
            .vnets
            .iter()
            .filter(|v| v.cidr.family() == self.family)
            .map(|v| (v.interface.as_str(), v))
            .collect();
        let inbound = Target::Jump(INBOUND.to_string());
        if vnets.is_empty() && !self.config.inbound.insert_redirect_instead_of_append {
            return vec![Rule::append(
                "PREROUTING",
                "redirect inbound TCP traffic to our custom chain for processing",
                inbound,
            )
            .proto(Protocol::Tcp)];
        }
        let (dns_port, outbound_port) = (self.config.dns.port, self.config.outbound.port);
        let mut rules = Vec::new();
        for (iface, vnet) in vnets {
            rules.push(
                Rule::insert(
                    "PREROUTING",
                    format!("redirect DNS requests on interface {iface} to the kuma-dp DNS proxy (listening on port {dns_port})"),
                    Target::Redirect(dns_port),
                )
                .in_iface(iface)
                .port(Protocol::Udp, PortMatch::Dport(DNS_PORT)),
            );
            rules.push(
                Rule::insert(
                    "PREROUTING",
                    format!("redirect TCP traffic on interface {iface}, excluding destination {}, to the envoy's outbound passthrough port {outbound_port}", vnet.text),
                    Target::Redirect(outbound_port),
                )
                .not_dst(vnet.cidr)
                .in_iface(iface)
                .proto(Protocol::Tcp),
            );
        }
        rules.push(
            Rule::insert(
                "PREROUTING",
                "redirect remaining TCP traffic to our custom chain for processing",
                inbound,
            )
            .proto(Protocol::Tcp),
        );
        rules
    }

    fn output(&self) -> Vec<Rule> {
        const SKIP: &str = "skip further processing for configured IP addresses, ports and UIDs";
        let outbound = &self.config.outbound;
        let mut rules = Vec::new();
        for e in &outbound.exclude_ports_for_uids {
            rules.push(
                Rule::insert("OUTPUT", SKIP, Target::Return)
                    .port(e.protocol, PortMatch::Dports(e.ports.clone()))
                    .uid(false, &e.uids),
            );
        }
        for ip in self.ips(&outbound.exclude_ips) {
            rules.push(Rule::insert("OUTPUT", SKIP, Target::Return).dst(ip));
        }
        if self.dns_enabled {
            let dns_port = self.config.dns.port;
            let (target, comment) = if self.env.docker_output {
                (
                    Target::Jump(DOCKER_OUTPUT.to_string()),
                    format!("redirect DNS traffic from kuma-dp to the {DOCKER_OUTPUT} chain"),
                )
            } else {
                (
                    Target::Return,
                    "return early for DNS traffic from kuma-dp".to_string(),
                )
            };
            rules.push(
                Rule::insert("OUTPUT", comment, target)
                    .port(Protocol::Udp, PortMatch::Dport(DNS_PORT))
                    .uid(false, &self.uid),
            );
            rules.push(
                Rule::append(
                    "OUTPUT",
                    format!("allow applications to perform DNS queries over TCP to port {DNS_PORT} without mesh redirection (only traffic not owned by UID {} (kuma-dp user))", self.uid),
                    Target::Return,
                )
                .port(Protocol::Tcp, PortMatch::Dport(DNS_PORT))
                .uid(true, &self.uid),
            );
            if self.config.dns.capture_all {
                rules.push(
                    Rule::insert(
                        "OUTPUT",
                        format!("redirect all DNS requests to the kuma-dp DNS proxy (listening on port {dns_port})"),
                        Target::Redirect(dns_port),
                    )
                    .port(Protocol::Udp, PortMatch::Dport(DNS_PORT)),
                );
            } else {
                for ip in &self.dns_servers {
                    rules.push(
                        Rule::insert(
                            "OUTPUT",
                            format!("redirect DNS requests to {ip} to the kuma-dp DNS proxy (listening on port {dns_port})"),
                            Target::Redirect(dns_port),
                        )
                        .dst(Cidr::host(*ip))
                        .port(Protocol::Udp, PortMatch::Dport(DNS_PORT)),
                    );
                }
            }
        }
        let comment = "redirect outbound TCP traffic to our custom chain for processing";
        let jump = Target::Jump(OUTBOUND.to_string());
        rules.push(
            if outbound.insert_redirect_instead_of_append {
                Rule::insert("OUTPUT", comment, jump)
            } else {
                Rule::append("OUTPUT", comment, jump)
            }
            .proto(Protocol::Tcp),
        );
        rules
    }

    fn mesh_inbound(&self) -> Vec<Rule> {
        let inbound = &self.config.inbound;
        if !inbound.enabled {
            return vec![Rule::append(
                INBOUND,
                "inbound traffic redirection is disabled",
                Target::Return,
            )
            .proto(Protocol::Tcp)];
        }
        let redirect = Target::Jump(INBOUND_REDIRECT.to_string());
        let mut rules: Vec<Rule> = self
            .ips(&inbound.exclude_ips)
            .into_iter()
            .map(|ip| {
                Rule::append(
                    INBOUND,
                    "skip further processing for configured IP address",
                    Target::Return,
                )
                .src(ip)
            })
            .collect();
        for port in &inbound.include_ports {
            rules.push(
                Rule::append(
                    INBOUND,
                    format!("redirect inbound traffic from port {port} to the custom chain for processing"),
                    redirect.clone(),
                )
                .port(Protocol::Tcp, PortMatch::Dport(*port)),
            );
        }
        if inbound.include_ports.is_empty() {
            for port in &inbound.exclude_ports {
                rules.push(
                    Rule::append(
                        INBOUND,
                        format!("exclude inbound traffic from port {port} from redirection"),
                        Target::Return,
                    )
                    .port(Protocol::Tcp, PortMatch::Dport(*port)),
                );
            }
            rules.push(
                Rule::append(
                    INBOUND,
                    "redirect all inbound traffic to the custom chain for processing",
                    redirect,
                )
                .proto(Protocol::Tcp),
            );
        }
        rules
    }

    fn mesh_outbound(&self) -> Vec<Rule> {
        let outbound = &self.config.outbound;
        if !outbound.enabled {
            return vec![Rule::append(
                OUTBOUND,
                "outbound traffic redirection is disabled",
                Target::Return,
            )
            .proto(Protocol::Tcp)];
        }
        let mut rules = Vec::new();
        if outbound.include_ports.is_empty() {
            for port in &outbound.exclude_ports {
                rules.push(
                    Rule::append(
                        OUTBOUND,
                        format!("exclude outbound traffic from port {port} from redirection"),
                        Target::Return,
                    )
                    .port(Protocol::Tcp, PortMatch::Dport(*port)),
                );
            }
        }
        let (lo, uid) = (self.env.loopback.as_str(), self.uid.as_str());
        let passthrough = self.family.inbound_passthrough();
        let localhost = self.family.localhost();
        rules.extend([
            Rule::append(
                OUTBOUND,
                format!("prevent traffic loops by ensuring traffic from the sidecar proxy (using {passthrough}) to loopback interface is not redirected again"),
                Target::Return,
            )
            .src(passthrough)
            .out_iface(lo),
            Rule::append(
                OUTBOUND,
                format!("redirect outbound TCP traffic destined for loopback interface, but not targeting address {localhost}, and owned by UID {uid} (kuma-dp user) to {INBOUND_REDIRECT} chain for proper handling"),
                Target::Jump(INBOUND_REDIRECT.to_string()),
            )
            .proto(Protocol::Tcp)
            .out_iface(lo)
            .not_dst(localhost)
            .uid(false, uid),
            Rule::append(
                OUTBOUND,
                format!("return outbound TCP traffic destined for loopback interface, owned by any UID other than {uid} (kuma-dp user)"),
                Target::Return,
            )
            .proto(Protocol::Tcp)
            .out_iface(lo)
            .uid(true, uid),
            Rule::append(
                OUTBOUND,
                format!("return outbound traffic owned by UID {uid} (kuma-dp user)"),
                Target::Return,
            )
            .uid(false, uid),
            Rule::append(
                OUTBOUND,
                format!("return traffic destined for localhost ({localhost}) to avoid redirection"),
                Target::Return,
            )
            .dst(localhost),
        ]);
        let redirect = Target::Jump(OUTBOUND_REDIRECT.to_string());
        for port in &outbound.include_ports {
            rules.push(
                Rule::append(
                    OUTBOUND,
                    format!("redirect outbound TCP traffic to port {port} to our custom chain for further processing"),
                    redirect.clone(),
                )
                .port(Protocol::Tcp, PortMatch::Dport(*port)),
            );
        }
        if outbound.include_ports.is_empty() {
            rules.push(Rule::append(
                OUTBOUND,
                "redirect all other outbound traffic to our custom chain for further processing",
                redirect,
            ));
        }
        rules
    }
}

fn redirect_chain(chain: &str, port: u16) -> Rule {
    Rule::append(
        chain,
        format!("redirect TCP traffic to envoy (port {port})"),
        Target::Redirect(port),
    )
    .proto(Protocol::Tcp)
}

//! One iptables rule, typed, and its text in iptables-save's canonical option order
//! (`! -d … -i … -o … -p … -m comment … -m tcp/udp/multiport … -m owner … -j …`), so that our
//! output compares equal to what `iptables-save` prints after installing it.

use crate::config::{Cidr, Protocol};

/// Prefix of every comment we put on a rule; it also marks rules as ours for uninstall.
pub const COMMENT_PREFIX: &str = "kuma/mesh/transparent/proxy/";
/// Prefix of the chains we create.
pub const CHAIN_PREFIX: &str = "KUMA_MESH_";

/// What a matching packet does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `-j CHAIN` (a chain of ours).
    Jump(String),
    /// `-j RETURN`
    Return,
    /// `-j REDIRECT --to-ports PORT`
    Redirect(u16),
    /// `-j CT --zone N`
    CtZone(u8),
    /// `-j DROP`
    Drop,
}

/// A port match, with its module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMatch {
    /// `-m tcp|udp --dport N`
    Dport(u16),
    /// `-m tcp|udp --sport N`
    Sport(u16),
    /// `-m multiport --dports LIST` (iptables list syntax, `53,3000:5000`)
    Dports(String),
}

/// An iptables rule of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Chain it belongs to.
    pub chain: String,
    /// Inserted at the top of the chain (in build order) rather than appended.
    pub insert: bool,
    /// `-s`
    pub source: Option<Cidr>,
    /// `-d`, negated when `not_destination`.
    pub destination: Option<Cidr>,
    /// Negates `destination`.
    pub not_destination: bool,
    /// `-i`
    pub in_interface: Option<String>,
    /// `-o`
    pub out_interface: Option<String>,
    /// `-p`
    pub protocol: Option<Protocol>,
    /// Comment text without [`COMMENT_PREFIX`].
    pub comment: String,
    /// `-m conntrack --ctstate INVALID`
    pub ctstate_invalid: bool,
    /// Port match (needs `protocol`).
    pub ports: Option<PortMatch>,
    /// `-m owner [!] --uid-owner UIDS`: (negated, uid or range).
    pub owner: Option<(bool, String)>,
    /// `-j`
    pub target: Target,
}

impl Rule {
    /// An appended rule in `chain` with `comment` and `target`, matching everything.
    pub fn append(chain: &str, comment: impl Into<String>, target: Target) -> Self {
        Self {
            chain: chain.to_string(),
            insert: false,
            source: None,
            destination: None,
            not_destination: false,
            in_interface: None,
            out_interface: None,
            protocol: None,
            comment: comment.into(),
            ctstate_invalid: false,
            ports: None,
            owner: None,
            target,
        }
    }

    /// Like [`Rule::append`], inserted at the top of the chain instead.
    pub fn insert(chain: &str, comment: impl Into<String>, target: Target) -> Self {
        Self {
            insert: true,
            ..Self::append(chain, comment, target)
        }
    }

    /// Matches `protocol`.
    pub fn proto(mut self, protocol: Protocol) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// Matches `protocol` and a port.
    pub fn port(mut self, protocol: Protocol, ports: PortMatch) -> Self {
        self.protocol = Some(protocol);
        self.ports = Some(ports);
        self
    }

    /// Matches source `cidr`.
    pub fn src(mut self, cidr: Cidr) -> Self {
        self.source = Some(cidr);
        self
    }

    /// Matches destination `cidr`.
    pub fn dst(mut self, cidr: Cidr) -> Self {
        self.destination = Some(cidr);
        self
    }

    /// Matches every destination but `cidr`.
    pub fn not_dst(mut self, cidr: Cidr) -> Self {
        self.destination = Some(cidr);
        self.not_destination = true;
        self
    }

    /// Matches packets arriving on `iface`.
    pub fn in_iface(mut self, iface: &str) -> Self {
        self.in_interface = Some(iface.to_string());
        self
    }

    /// Matches packets leaving through `iface`.
    pub fn out_iface(mut self, iface: &str) -> Self {
        self.out_interface = Some(iface.to_string());
        self
    }

    /// Matches packets owned by `uids` (one uid or a range), or by anyone else if `negated`.
    pub fn uid(mut self, negated: bool, uids: impl Into<String>) -> Self {
        self.owner = Some((negated, uids.into()));
        self
    }

    /// Matches packets conntrack considers INVALID.
    pub fn ctstate_invalid(mut self) -> Self {
        self.ctstate_invalid = true;
        self
    }

    /// The rule's options after `-A CHAIN`, as iptables-save prints them.
    pub fn spec(&self) -> String {
        let mut out: Vec<String> = Vec::new();
        if let Some(s) = &self.source {
            out.push(format!("-s {s}"));
        }
        if let Some(d) = &self.destination {
            let not = if self.not_destination { "! " } else { "" };
            out.push(format!("{not}-d {d}"));
        }
        if let Some(i) = &self.in_interface {
            out.push(format!("-i {i}"));
        }
        if let Some(o) = &self.out_interface {
            out.push(format!("-o {o}"));
        }
        if let Some(p) = self.protocol {
            out.push(format!("-p {}", p.name()));
        }
        out.push(format!(
            "-m comment --comment {}",
            quote(&format!("{COMMENT_PREFIX}{}", self.comment))
        ));
        if self.ctstate_invalid {
            out.push("-m conntrack --ctstate INVALID".to_string());
        }
        match (&self.ports, self.protocol) {
            (Some(PortMatch::Dport(p)), Some(proto)) => {
                out.push(format!("-m {0} --dport {p}", proto.name()));
            }
            (Some(PortMatch::Sport(p)), Some(proto)) => {
                out.push(format!("-m {0} --sport {p}", proto.name()));
            }
            (Some(PortMatch::Dports(list)), _) => out.push(format!("-m multiport --dports {list}")),
            _ => {}
        }
        if let Some((negated, uids)) = &self.owner {
            let not = if *negated { "! " } else { "" };
            out.push(format!("-m owner {not}--uid-owner {uids}"));
        }
        out.push(match &self.target {
            Target::Jump(chain) => format!("-j {chain}"),
            Target::Return => "-j RETURN".to_string(),
            Target::Redirect(port) => format!("-j REDIRECT --to-ports {port}"),
            Target::CtZone(zone) => format!("-j CT --zone {zone}"),
            Target::Drop => "-j DROP".to_string(),
        });
        out.join(" ")
    }
}

/// Quotes a comment the way iptables-save does: in double quotes, with `\`, `"` and `'`
/// escaped by a backslash (iptables-restore reads it back unchanged).
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if matches!(c, '\\' | '"' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_order() {
        let r = Rule::append(
            "KUMA_MESH_OUTBOUND",
            "x's",
            Target::Jump("KUMA_MESH_INBOUND_REDIRECT".into()),
        )
        .proto(Protocol::Tcp)
        .out_iface("lo")
        .not_dst(Cidr::parse("127.0.0.1").unwrap())
        .uid(false, "5678");
        assert_eq!(
            r.spec(),
            r#"! -d 127.0.0.1/32 -o lo -p tcp -m comment --comment "kuma/mesh/transparent/proxy/x\'s" -m owner --uid-owner 5678 -j KUMA_MESH_INBOUND_REDIRECT"#
        );
        let r = Rule::insert("OUTPUT", "c", Target::Return)
            .port(Protocol::Udp, PortMatch::Dports("53,3000:5000".into()))
            .uid(true, "1-2");
        assert_eq!(
            r.spec(),
            r#"-p udp -m comment --comment "kuma/mesh/transparent/proxy/c" -m multiport --dports 53,3000:5000 -m owner ! --uid-owner 1-2 -j RETURN"#
        );
    }
}

//! `ProxyConfig`, the one internal model of what a Bearing proxy serves.
//!
//! Every config source (directory store today, xDS later) produces exactly this; the runtime
//! reads nothing else. It is immutable once built and shared as `Arc<ProxyConfig>`, so a reload
//! swaps one pointer and connections keep the snapshot they started with.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;

/// Everything one proxy serves, as compiled from its config source.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProxyConfig {
    /// Content hash of this config (hex); equal configs have equal versions.
    pub version: String,
    /// Where the config came from, e.g. `directory store /etc/mesh`.
    pub source: String,
    /// Which proxy this is.
    pub identity: ProxyIdentity,
    /// Listeners, sorted by name.
    pub listeners: Vec<Listener>,
    /// Clusters by name.
    pub clusters: BTreeMap<String, Cluster>,
    /// Present when iptables redirects the workload's traffic to this proxy.
    pub transparent_proxy: Option<TransparentProxy>,
}

/// Transparent proxying: the capture ports iptables redirects to, and what happens to
/// captured traffic that no listener claims.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TransparentProxy {
    /// Port receiving redirected outbound connections (Kuma: 15001), on every address.
    pub outbound_port: u16,
    /// Port receiving redirected inbound connections (Kuma: 15006), on every address.
    pub inbound_port: u16,
    /// Whether IPv6 is captured too (the capture ports are also bound on `[::]`).
    pub ipv6: bool,
    /// Outbound connections no listener claims go to their original destination (Mesh
    /// `networking.outbound.passthrough`, true by default); when false they are refused.
    pub outbound_passthrough: bool,
}

impl ProxyConfig {
    /// The cluster a listener forwards to, if the config names one that exists.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.get(name)
    }
}

/// The proxy's own identity in the mesh.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProxyIdentity {
    /// Dataplane name.
    pub name: String,
    /// Mesh name.
    pub mesh: String,
    /// `dataplane`, `ingress` or `egress`.
    pub proxy_type: String,
}

/// Which side of the workload a listener serves.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic from the mesh to the local application.
    Inbound,
    /// Traffic from the local application to the mesh.
    Outbound,
}

/// How a listener or cluster handles bytes, from the `kuma.io/protocol` tag.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Opaque bytes, copied both ways (also used for `kafka`).
    Tcp,
    /// HTTP/1.1 or HTTP/2 downstream, HTTP/1.1 upstream.
    Http,
    /// HTTP/2 both ways.
    Http2,
    /// gRPC: HTTP/2 both ways, no response timeout (streams may be long).
    Grpc,
}

impl Protocol {
    /// Parses a `kuma.io/protocol` value; unknown or missing values are TCP, as in Kuma.
    pub fn from_tag(value: Option<&str>) -> Protocol {
        match value {
            Some("http") => Protocol::Http,
            Some("http2") => Protocol::Http2,
            Some("grpc") => Protocol::Grpc,
            _ => Protocol::Tcp,
        }
    }

    /// Whether traffic is handled as HTTP requests (L7) rather than bytes.
    pub fn is_http(self) -> bool {
        self != Protocol::Tcp
    }

    /// The protocol several endpoints of one service agree on, as Kuma derives it:
    /// all equal gives that protocol, a mix of HTTP/1 and HTTP/2 gives `http`, otherwise `tcp`.
    pub fn common(protocols: impl IntoIterator<Item = Protocol>) -> Option<Protocol> {
        protocols.into_iter().fold(None, |acc, p| match acc {
            None => Some(p),
            Some(a) if a == p => Some(a),
            Some(a) if a.is_http() && p.is_http() => Some(Protocol::Http),
            Some(_) => Some(Protocol::Tcp),
        })
    }
}

/// A socket the proxy accepts connections on, and where they go.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Listener {
    /// Unique name, Kuma style: `inbound:10.0.0.1:8080`, `outbound:127.0.0.1:10001`.
    pub name: String,
    /// Address to bind.
    pub address: SocketAddr,
    /// Inbound or outbound.
    pub direction: Direction,
    /// L4 or L7 handling.
    pub protocol: Protocol,
    /// Cluster every connection or request goes to.
    pub cluster: String,
    /// Service this listener belongs to (`kuma.io/service`).
    pub service: String,
    /// Whether the listener has a socket of its own. With transparent proxying, listeners
    /// are virtual as in Kuma (`bind_to_port: false`): connections reach them through the
    /// capture ports by their original destination.
    pub bind: bool,
}

/// A set of interchangeable endpoints.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Cluster {
    /// Unique name: `localhost:<port>` for the local application, the service name for outbounds.
    pub name: String,
    /// Protocol spoken to the endpoints.
    pub protocol: Protocol,
    /// Endpoints, load balanced round robin; an endpoint that refuses the connection is skipped.
    pub endpoints: Vec<Endpoint>,
    /// Limit for establishing one upstream connection.
    #[serde(serialize_with = "millis::serialize")]
    pub connect_timeout: Duration,
    /// Limit for receiving the response headers of an HTTP request (`None`: no limit).
    #[serde(serialize_with = "opt_millis::serialize")]
    pub request_timeout: Option<Duration>,
}

/// One upstream address.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Address to connect to.
    pub address: SocketAddr,
    /// Dataplane (or `local application`) serving it, for logs and `/config_dump`.
    pub origin: String,
}

/// One hostname the mesh DNS server answers for, as Kuma's DNS table lists it: a service
/// (`backend.mesh`) or virtual-outbound host with its virtual IPs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DnsRecord {
    /// Hostname without trailing dot, e.g. `backend.mesh`; matched case-insensitively.
    pub name: String,
    /// Addresses answered for it: IPv4 virtual IPs (`A`) and, when the dataplane has IPv6,
    /// their IPv4-mapped IPv6 forms such as `::ffff:240.0.0.1` (`AAAA`).
    pub ips: Vec<IpAddr>,
}

mod millis {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

mod opt_millis {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_u64(d.as_millis() as u64),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_protocol_follows_kuma() {
        use Protocol::*;
        assert_eq!(Protocol::common([Http, Http]), Some(Http));
        assert_eq!(Protocol::common([Http, Http2]), Some(Http));
        assert_eq!(Protocol::common([Grpc, Grpc]), Some(Grpc));
        assert_eq!(Protocol::common([Http, Tcp]), Some(Tcp));
        assert_eq!(Protocol::common([]), None);
        assert_eq!(Protocol::from_tag(Some("kafka")), Tcp);
    }
}

//! Server settings and the upstream resolvers from `/etc/resolv.conf`.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use crate::Error;

/// The port Kuma's DNS proxy listens on (iptables redirects the workload's DNS there).
pub const DEFAULT_PORT: u16 = 15053;

/// At most this many `nameserver` lines are used, as glibc does (`MAXNS`).
const MAX_NAMESERVERS: usize = 3;

/// How the mesh DNS server listens and where it forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsServerConfig {
    /// Addresses served on both UDP and TCP (Kuma: port 15053).
    pub listen: Vec<SocketAddr>,
    /// Resolvers for names outside the mesh, asked in order.
    pub upstreams: Vec<SocketAddr>,
    /// TTL of answers from the table (Kuma: 30 s).
    pub ttl: Duration,
    /// Limit for one upstream to answer; the next one is tried after it. A forwarded query
    /// takes at most `upstream_timeout` × number of upstreams before SERVFAIL.
    pub upstream_timeout: Duration,
}

impl Default for DnsServerConfig {
    /// `127.0.0.1:15053`, no upstreams, TTL 30 s, 2 s per upstream.
    fn default() -> Self {
        DnsServerConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT))],
            upstreams: Vec::new(),
            ttl: Duration::from_secs(30),
            upstream_timeout: Duration::from_secs(2),
        }
    }
}

/// Reads the `nameserver` lines of a resolv.conf (port 53), the first three as glibc does.
///
/// IPv6 zones (`fe80::1%eth0`) are ignored: the address is used without a scope. Entries
/// equal to one of `listen` (or loopback on the port of an unspecified listen address) are
/// skipped, since forwarding to ourselves would loop. Lines that do not parse are skipped with
/// a warning. The file being unreadable or naming no usable nameserver is an error naming it.
pub fn upstreams_from_resolv_conf(
    path: &Path,
    listen: &[SocketAddr],
) -> Result<Vec<SocketAddr>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ResolvConf {
        path: path.to_path_buf(),
        source,
    })?;
    let mut upstreams = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(word) = words.next() else {
            continue;
        };
        let address = word
            .split_once('%')
            .map_or(word, |(address, _zone)| address);
        let Ok(ip) = address.parse::<IpAddr>() else {
            tracing::warn!(
                "{}:{}: nameserver {word:?} is not an IP address, skipped",
                path.display(),
                number + 1
            );
            continue;
        };
        let upstream = SocketAddr::new(ip, 53);
        if is_own(upstream, listen) {
            tracing::warn!(
                "{}:{}: nameserver {upstream} is this DNS server, skipped",
                path.display(),
                number + 1
            );
            continue;
        }
        if !upstreams.contains(&upstream) {
            upstreams.push(upstream);
        }
    }
    if upstreams.is_empty() {
        return Err(Error::NoNameservers {
            path: path.to_path_buf(),
        });
    }
    upstreams.truncate(MAX_NAMESERVERS);
    Ok(upstreams)
}

/// Whether sending to `upstream` reaches one of our own listen addresses.
fn is_own(upstream: SocketAddr, listen: &[SocketAddr]) -> bool {
    listen.iter().any(|l| {
        l.port() == upstream.port()
            && (l.ip() == upstream.ip() || (l.ip().is_unspecified() && upstream.ip().is_loopback()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn resolv(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn reads_nameservers_v4_and_v6() {
        let file = resolv(
            "# generated\nsearch default.svc.cluster.local\nnameserver 10.96.0.10\n\
             nameserver   fd00::10 # comment\n;nameserver 1.1.1.1\nnameserver fe80::1%eth0\n\
             nameserver 10.96.0.10\nnameserver 9.9.9.9\noptions ndots:5\n",
        );
        let upstreams = upstreams_from_resolv_conf(file.path(), &[]).unwrap();
        let expected: Vec<SocketAddr> = ["10.96.0.10:53", "[fd00::10]:53", "[fe80::1]:53"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            upstreams, expected,
            "deduplicated, zone dropped, first three"
        );
    }

    #[test]
    fn skips_our_own_address_and_bad_lines() {
        let file = resolv("nameserver 127.0.0.1\nnameserver not-an-ip\nnameserver 10.0.0.2\n");
        let listen: SocketAddr = "0.0.0.0:53".parse().unwrap();
        let upstreams = upstreams_from_resolv_conf(file.path(), &[listen]).unwrap();
        assert_eq!(
            upstreams,
            vec!["10.0.0.2:53".parse::<SocketAddr>().unwrap()]
        );
        // Our usual port 15053 never collides with a nameserver on 53.
        let listen: SocketAddr = "127.0.0.1:15053".parse().unwrap();
        let upstreams = upstreams_from_resolv_conf(file.path(), &[listen]).unwrap();
        assert_eq!(upstreams.len(), 2);
    }

    #[test]
    fn errors_name_the_file() {
        let file = resolv("search example.com\n");
        let err = upstreams_from_resolv_conf(file.path(), &[]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&file.path().display().to_string()), "{text}");
        assert!(text.contains("no nameserver"), "{text}");

        let missing = Path::new("/nonexistent/resolv.conf");
        let text = upstreams_from_resolv_conf(missing, &[])
            .unwrap_err()
            .to_string();
        assert!(text.contains("/nonexistent/resolv.conf"), "{text}");
    }
}

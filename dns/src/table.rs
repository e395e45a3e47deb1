//! The DNS table: mesh hostnames and their virtual IPs, immutable once built.
//!
//! Names are stored lowercase without the trailing dot. A lookup lowercases the asked name into
//! a stack buffer, so answering a query does not allocate for the table part.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bearing_proxy_config::DnsRecord;

/// Longest name in presentation form without the trailing dot (RFC 1035: 255 octets on the
/// wire, which is 253 characters).
const MAX_NAME: usize = 253;

/// Addresses of one hostname, split by record type.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Addresses {
    a: Vec<Ipv4Addr>,
    aaaa: Vec<Ipv6Addr>,
}

/// Hostnames the mesh DNS server answers for, and the domain it is authoritative for.
///
/// Immutable: the proxy builds a new table for every config and swaps it in whole.
#[derive(Debug, Clone, Default)]
pub struct DnsTable {
    /// Lowercase names without trailing dot. Empty non-terminals under the domain (the
    /// domain itself, `backend.mesh` when only `v1.backend.mesh` exists) have no addresses.
    names: HashMap<Box<[u8]>, Addresses>,
    /// `.mesh`: lowercase, with a leading dot and no trailing one; empty when no domain.
    suffix: Box<[u8]>,
}

/// What the table says about a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The name exists: its IPv4 (`A`) and IPv6 (`AAAA`) addresses. Both may be empty (an
    /// empty non-terminal such as the domain itself): the name exists but has no data.
    Found {
        /// Addresses for `A` queries.
        a: &'a [Ipv4Addr],
        /// Addresses for `AAAA` queries.
        aaaa: &'a [Ipv6Addr],
    },
    /// Under the mesh domain but not in the table: the name does not exist (NXDOMAIN).
    NotFound,
    /// Not under the mesh domain and not in the table: someone else's name (forwarded).
    Outside,
}

impl DnsTable {
    /// Builds a table for `domain` (`mesh` by default in Kuma) from `records`.
    ///
    /// Names and the domain are matched case-insensitively and a trailing dot is ignored.
    /// Records with the same name are merged (addresses deduplicated, first order kept).
    /// A record may lie outside the domain (a virtual-outbound host such as
    /// `backend.default.svc`); it is answered all the same, but names around it are not
    /// claimed. An empty `domain` claims nothing beyond the records themselves.
    pub fn new(domain: &str, records: impl IntoIterator<Item = DnsRecord>) -> DnsTable {
        let domain = normalize(domain);
        let suffix: Box<[u8]> = if domain.is_empty() {
            Box::default()
        } else {
            format!(".{domain}").into_bytes().into_boxed_slice()
        };
        let mut names: HashMap<Box<[u8]>, Addresses> = HashMap::new();
        for record in records {
            let name = normalize(&record.name);
            if name.is_empty() || name.len() > MAX_NAME {
                continue;
            }
            let entry = names
                .entry(name.into_bytes().into_boxed_slice())
                .or_default();
            for ip in record.ips {
                match ip {
                    IpAddr::V4(v4) if !entry.a.contains(&v4) => entry.a.push(v4),
                    IpAddr::V6(v6) if !entry.aaaa.contains(&v6) => entry.aaaa.push(v6),
                    _ => {}
                }
            }
        }
        let mut table = DnsTable { names, suffix };
        table.add_empty_non_terminals();
        table
    }

    /// Looks `name` up (any case, with or without trailing dot).
    pub fn lookup(&self, name: &str) -> Lookup<'_> {
        let name = name.strip_suffix('.').unwrap_or(name).as_bytes();
        let mut buf = [0u8; MAX_NAME];
        let Some(lower) = buf.get_mut(..name.len()) else {
            return Lookup::Outside;
        };
        lower.copy_from_slice(name);
        lower.make_ascii_lowercase();
        self.lookup_lower(lower)
    }

    /// Looks up a name already lowercase and without trailing dot.
    pub(crate) fn lookup_lower(&self, name: &[u8]) -> Lookup<'_> {
        match self.names.get(name) {
            Some(addresses) => Lookup::Found {
                a: &addresses.a,
                aaaa: &addresses.aaaa,
            },
            None if self.in_domain(name) => Lookup::NotFound,
            None => Lookup::Outside,
        }
    }

    /// Looks up a name given as its wire labels, lowercase, root excluded. Compared label by
    /// label: a label holding a dot (`a\.b`) is one label, never the two of `a.b`. No table
    /// name has such a label, so the name is never found; it is [`Lookup::NotFound`] when the
    /// labels after the last dotted one are the domain or under it, else [`Lookup::Outside`].
    /// Writes into a stack buffer: no allocation.
    pub(crate) fn lookup_labels<'l>(&self, labels: impl Iterator<Item = &'l [u8]>) -> Lookup<'_> {
        let mut buf = [0u8; MAX_NAME];
        let mut len = 0;
        let mut dotted = false;
        for label in labels {
            if label.contains(&b'.') {
                // Only what follows can match the domain's labels.
                dotted = true;
                len = 0;
                continue;
            }
            let start = if len > 0 { len + 1 } else { 0 };
            let Some(slot) = buf.get_mut(start..start + label.len()) else {
                return Lookup::Outside;
            };
            slot.copy_from_slice(label);
            if len > 0 {
                buf[len] = b'.';
            }
            len = start + label.len();
        }
        let name = &buf[..len];
        match (dotted, len) {
            (_, 0) => Lookup::Outside,
            (true, _) if self.in_domain(name) => Lookup::NotFound,
            (true, _) => Lookup::Outside,
            (false, _) => self.lookup_lower(name),
        }
    }

    /// Number of names with at least one address.
    pub fn len(&self) -> usize {
        self.names
            .values()
            .filter(|a| !a.a.is_empty() || !a.aaaa.is_empty())
            .count()
    }

    /// Whether no name has an address.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The domain itself or a name under it.
    fn in_domain(&self, name: &[u8]) -> bool {
        match self.suffix.split_first() {
            None => false,
            Some((_, domain)) => name == domain || name.ends_with(&self.suffix),
        }
    }

    /// Every ancestor of a record that lies under (or is) the domain exists: it answers NODATA
    /// rather than NXDOMAIN, which a resolver may take to mean nothing exists below it
    /// (RFC 8020).
    fn add_empty_non_terminals(&mut self) {
        let mut ancestors = Vec::new();
        for name in self.names.keys() {
            let mut rest: &[u8] = name;
            while let Some(dot) = rest.iter().position(|&b| b == b'.') {
                rest = &rest[dot + 1..];
                if self.in_domain(rest) {
                    ancestors.push(Box::<[u8]>::from(rest));
                }
            }
        }
        for ancestor in ancestors {
            if let Entry::Vacant(vacant) = self.names.entry(ancestor) {
                vacant.insert(Addresses::default());
            }
        }
    }
}

/// Lowercase, without surrounding whitespace and trailing dot.
fn normalize(name: &str) -> String {
    let name = name.trim();
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, ips: &[&str]) -> DnsRecord {
        DnsRecord {
            name: name.to_string(),
            ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
        }
    }

    /// Kuma's table for `xds-generator/dns/1-dataplane.input.yaml` (dataplane with IPv6).
    fn kuma_table() -> DnsTable {
        DnsTable::new(
            "mesh",
            [
                record(
                    "backend.test-ns.svc.8080.mesh",
                    &["240.0.0.0", "::ffff:f000:0"],
                ),
                record(
                    "backend_test-ns_svc_8080.mesh",
                    &["240.0.0.0", "::ffff:f000:0"],
                ),
                record("httpbin.mesh", &["240.0.0.1", "::ffff:f000:1"]),
            ],
        )
    }

    #[test]
    fn found_with_a_and_mapped_aaaa() {
        let table = kuma_table();
        assert_eq!(table.len(), 3);
        let v4: Ipv4Addr = "240.0.0.1".parse().unwrap();
        let v6: Ipv6Addr = "::ffff:240.0.0.1".parse().unwrap();
        assert_eq!(
            table.lookup("httpbin.mesh"),
            Lookup::Found {
                a: &[v4],
                aaaa: &[v6]
            }
        );
        assert_eq!(v6.to_ipv4_mapped(), Some(v4));
    }

    #[test]
    fn case_and_trailing_dot_are_ignored() {
        let table = kuma_table();
        let expected = table.lookup("httpbin.mesh");
        assert!(matches!(expected, Lookup::Found { .. }));
        assert_eq!(table.lookup("HTTPBin.Mesh."), expected);
        assert_eq!(table.lookup("httpbin.mesh."), expected);
        let upper = DnsTable::new("MESH.", [record("HttpBin.MESH.", &["240.0.0.1"])]);
        assert_eq!(
            upper.lookup("httpbin.mesh"),
            Lookup::Found {
                a: &["240.0.0.1".parse().unwrap()],
                aaaa: &[]
            }
        );
        assert_eq!(upper.lookup("other.mesh"), Lookup::NotFound);
    }

    #[test]
    fn ipv4_only_dataplane_has_no_aaaa() {
        // xds-generator/dns/3: ipFamilyMode IPv4 lists only the IPv4 VIP.
        let table = DnsTable::new("mesh", [record("httpbin.mesh", &["240.0.0.1"])]);
        let Lookup::Found { a, aaaa } = table.lookup("httpbin.mesh") else {
            panic!("httpbin.mesh not found");
        };
        assert_eq!(a.len(), 1);
        assert!(aaaa.is_empty(), "AAAA is NODATA, not NXDOMAIN");
    }

    #[test]
    fn unknown_under_domain_is_not_found_else_outside() {
        let table = kuma_table();
        assert_eq!(table.lookup("nope.mesh"), Lookup::NotFound);
        assert_eq!(table.lookup("x.httpbin.mesh"), Lookup::NotFound);
        assert_eq!(table.lookup("example.com"), Lookup::Outside);
        assert_eq!(table.lookup("notmesh"), Lookup::Outside);
        assert_eq!(table.lookup("foo.meshy"), Lookup::Outside);
        assert_eq!(table.lookup(&"a".repeat(300)), Lookup::Outside);
    }

    #[test]
    fn empty_non_terminals_exist_without_addresses() {
        let table = kuma_table();
        let empty = Lookup::Found { a: &[], aaaa: &[] };
        assert_eq!(table.lookup("mesh"), empty);
        assert_eq!(table.lookup("svc.8080.mesh"), empty);
        assert_eq!(table.lookup("test-ns.svc.8080.mesh"), empty);
        assert_eq!(table.len(), 3, "empty non-terminals are not counted");
        // Ancestors outside the domain stay someone else's.
        let table = DnsTable::new("mesh", [record("backend.default.svc", &["240.0.0.9"])]);
        assert!(matches!(
            table.lookup("backend.default.svc"),
            Lookup::Found { .. }
        ));
        assert_eq!(table.lookup("default.svc"), Lookup::Outside);
        assert_eq!(table.lookup("mesh"), Lookup::NotFound);
    }

    #[test]
    fn duplicate_records_merge() {
        let table = DnsTable::new(
            "mesh",
            [
                record("a.mesh", &["240.0.0.1"]),
                record("A.mesh", &["240.0.0.1", "240.0.0.2"]),
            ],
        );
        let Lookup::Found { a, .. } = table.lookup("a.mesh") else {
            panic!("a.mesh not found");
        };
        assert_eq!(
            a,
            [
                "240.0.0.1".parse::<Ipv4Addr>().unwrap(),
                "240.0.0.2".parse().unwrap()
            ]
        );
    }

    #[test]
    fn labels_are_compared_one_by_one() {
        let table = kuma_table();
        let lookup = |labels: &[&[u8]]| table.lookup_labels(labels.iter().copied());
        assert!(matches!(
            lookup(&[b"httpbin", b"mesh"]),
            Lookup::Found { .. }
        ));
        // `httpbin\.mesh` as one label is a top-level name of its own, not the mesh's.
        assert_eq!(lookup(&[b"httpbin.mesh"]), Lookup::Outside);
        // A dotted label under the domain: a name the table cannot have.
        assert_eq!(lookup(&[b"httpbin.x", b"mesh"]), Lookup::NotFound);
        assert_eq!(
            lookup(&[b"backend.test-ns", b"svc", b"8080", b"mesh"]),
            Lookup::NotFound
        );
        // The domain's own labels must match whole: `x\.mesh` is not `mesh`.
        assert_eq!(lookup(&[b"httpbin", b"x.mesh"]), Lookup::Outside);
        assert_eq!(lookup(&[]), Lookup::Outside);
        let long = [&b"a"[..]; 200];
        assert_eq!(lookup(&long), Lookup::Outside);
    }

    #[test]
    fn empty_domain_claims_nothing() {
        let table = DnsTable::new("", [record("a.mesh", &["240.0.0.1"])]);
        assert!(matches!(table.lookup("a.mesh"), Lookup::Found { .. }));
        assert_eq!(table.lookup("b.mesh"), Lookup::Outside);
        assert!(DnsTable::default().is_empty());
    }
}

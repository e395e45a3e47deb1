//! Envoy's DNS clusters (`STRICT_DNS`, `LOGICAL_DNS`) as kuma-cp renders them: an
//! ExternalService or MeshExternalService named by hostname, a tracing or metrics collector.
//! Endpoints whose address is an IP stay `Cluster.endpoints`; those naming a host become the
//! cluster's [`DnsEndpoints`], resolved by the runtime off the hot path, with the cluster's
//! `dns_refresh_rate` (Envoy's 5 s when unset), `respect_dns_ttl` and `dns_lookup_family`.
//! The other DNS fields (`dns_failure_refresh_rate`, `dns_jitter`, custom resolvers, ...) are
//! NACKed by name by the field guard.

use super::{duration, Translator};
use crate::decode::CLUSTER;
use bearing_proxy_config::{DnsDiscovery, DnsEndpoints, DnsLookupFamily, HostEndpoint};
use envoy_types::pb::envoy::config::cluster::v3 as cluster_pb;
use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint_pb;
use std::net::IpAddr;
use std::time::Duration;

/// Envoy's lower bound of `dns_refresh_rate` (its proto requires more than 1 ms).
const MIN_REFRESH_RATE: Duration = Duration::from_millis(1);

/// The discovery of a cluster type that resolves hostnames (`type`'s value), if it is one.
pub(super) fn discovery(kind: i32) -> Option<DnsDiscovery> {
    use cluster_pb::cluster::DiscoveryType;
    match DiscoveryType::try_from(kind) {
        Ok(DiscoveryType::StrictDns) => Some(DnsDiscovery::Strict),
        Ok(DiscoveryType::LogicalDns) => Some(DnsDiscovery::Logical),
        _ => None,
    }
}

/// The hostname and port of a TCP socket address that names a host rather than an IP.
pub(super) fn hostname_address(address: Option<&core_pb::Address>) -> Option<(String, u16)> {
    use core_pb::address::Address as A;
    use core_pb::socket_address::PortSpecifier;
    let Some(A::SocketAddress(s)) = address.and_then(|a| a.address.as_ref()) else {
        return None;
    };
    let tcp = s.protocol == core_pb::socket_address::Protocol::Tcp as i32;
    let port = match s.port_specifier {
        Some(PortSpecifier::PortValue(p)) => u16::try_from(p).ok()?,
        _ => return None,
    };
    let is_name = !s.address.is_empty() && s.address.parse::<IpAddr>().is_err();
    (tcp && is_name).then(|| (s.address.clone(), port))
}

/// Envoy's `dns_lookup_family` value as the model's.
fn lookup_family(value: i32) -> Option<DnsLookupFamily> {
    use cluster_pb::cluster::DnsLookupFamily as F;
    Some(match F::try_from(value).ok()? {
        F::Auto => DnsLookupFamily::Auto,
        F::V4Only => DnsLookupFamily::V4Only,
        F::V6Only => DnsLookupFamily::V6Only,
        F::V4Preferred => DnsLookupFamily::V4Preferred,
        F::All => DnsLookupFamily::All,
    })
}

impl Translator<'_> {
    /// The DNS resolution of a cluster of `discovery` whose endpoints name `hosts` (none:
    /// every endpoint is an IP, served as it is, as Envoy's resolution of an IP gives it
    /// back). A LOGICAL_DNS cluster must have exactly one endpoint, as Envoy requires.
    pub(super) fn dns_endpoints(
        &mut self,
        name: &str,
        path: &str,
        cluster: &cluster_pb::Cluster,
        discovery: DnsDiscovery,
        assignment: Option<&endpoint_pb::ClusterLoadAssignment>,
        hosts: Vec<HostEndpoint>,
    ) -> Option<DnsEndpoints> {
        if discovery == DnsDiscovery::Logical {
            let localities = assignment.map_or(&[][..], |a| &a.endpoints[..]);
            let one = matches!(localities, [one] if one.lb_endpoints.len() == 1);
            if !one {
                let field = format!("{path}.load_assignment.endpoints");
                let reason = "a LOGICAL_DNS cluster has exactly one locality with one endpoint";
                self.nack(CLUSTER, name, field, reason);
                return None;
            }
        }
        // Deprecated in Envoy's proto for the `envoy.cluster.dns` extension; kuma-cp sets them.
        #[allow(deprecated)]
        let (refresh_rate, respect_ttl) =
            (cluster.dns_refresh_rate.as_ref(), cluster.respect_dns_ttl);
        let refresh_rate = refresh_rate.map_or(DnsEndpoints::DEFAULT_REFRESH_RATE, duration);
        if refresh_rate <= MIN_REFRESH_RATE {
            let reason = "must be more than 1ms";
            self.nack(CLUSTER, name, format!("{path}.dns_refresh_rate"), reason);
            return None;
        }
        let Some(lookup_family) = lookup_family(cluster.dns_lookup_family) else {
            let field = format!("{path}.dns_lookup_family");
            let reason = format!("unknown value {}", cluster.dns_lookup_family);
            self.nack(CLUSTER, name, field, reason);
            return None;
        };
        (!hosts.is_empty()).then_some(DnsEndpoints {
            discovery,
            hosts,
            refresh_rate,
            respect_ttl,
            lookup_family,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::translate::gateway::tests::translated;
    use bearing_proxy_config::{DnsDiscovery, DnsLookupFamily};
    use std::time::Duration;

    /// One cluster `c` of `type` with `extra` fields and these endpoints (`address:port`).
    fn cluster(kind: &str, extra: &str, endpoints: &[(&str, u16)]) -> String {
        let endpoints: String = endpoints
            .iter()
            .map(|(a, p)| {
                format!(
                    "        - endpoint: {{address: {{socketAddress: {{address: {a}, portValue: {p}}}}}}}\n          metadata: {{filterMetadata: {{envoy.lb: {{mesh: mesh-1}}}}}}\n"
                )
            })
            .collect();
        format!(
            "resources:\n- name: c\n  resource:\n    '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster\n    name: c\n    type: {kind}\n    connectTimeout: 5s\n{extra}    loadAssignment:\n      clusterName: c\n      endpoints:\n      - lbEndpoints:\n{endpoints}"
        )
    }

    /// kuma-cp's ExternalService shape: a STRICT_DNS cluster mixing an IP and a hostname keeps
    /// the IP as an endpoint and resolves the hostname, with Envoy's defaults and the
    /// endpoint's tags.
    #[test]
    fn strict_dns_hostnames_become_dns_endpoints() {
        let yaml = cluster(
            "STRICT_DNS",
            "    dnsLookupFamily: V4_ONLY\n",
            &[("127.0.0.1", 8080), ("example.com", 1234)],
        );
        let config = translated(&yaml).unwrap();
        let c = &config.clusters["c"];
        assert_eq!(c.endpoints.len(), 1);
        assert_eq!(c.endpoints[0].address.to_string(), "127.0.0.1:8080");
        let dns = c.dns.as_ref().unwrap();
        assert_eq!(dns.discovery, DnsDiscovery::Strict);
        assert_eq!(dns.lookup_family, DnsLookupFamily::V4Only);
        assert_eq!(dns.refresh_rate, Duration::from_secs(5));
        assert!(!dns.respect_ttl);
        assert_eq!(dns.hosts.len(), 1);
        assert_eq!(dns.hosts[0].hostname, "example.com");
        assert_eq!(dns.hosts[0].port, 1234);
        assert_eq!(dns.hosts[0].tags["mesh"], "mesh-1");
    }

    /// The DNS settings Envoy has: refresh rate, TTL, every lookup family; AUTO is Envoy's
    /// default when the field is unset.
    #[test]
    fn dns_settings_are_translated() {
        let yaml = cluster(
            "LOGICAL_DNS",
            "    dnsRefreshRate: 1.500s\n    respectDnsTtl: true\n    dnsLookupFamily: ALL\n",
            &[("collector.observability", 4317)],
        );
        let dns = translated(&yaml).unwrap().clusters["c"]
            .dns
            .clone()
            .unwrap();
        assert_eq!(dns.discovery, DnsDiscovery::Logical);
        assert_eq!(dns.refresh_rate, Duration::from_millis(1500));
        assert!(dns.respect_ttl);
        assert_eq!(dns.lookup_family, DnsLookupFamily::All);
        for (value, family) in [
            ("V6_ONLY", DnsLookupFamily::V6Only),
            ("V4_PREFERRED", DnsLookupFamily::V4Preferred),
            ("AUTO", DnsLookupFamily::Auto),
        ] {
            let extra = format!("    dnsLookupFamily: {value}\n");
            let yaml = cluster("STRICT_DNS", &extra, &[("a.test", 80)]);
            let dns = translated(&yaml).unwrap().clusters["c"]
                .dns
                .clone()
                .unwrap();
            assert_eq!(dns.lookup_family, family, "{value}");
        }
        let yaml = cluster("STRICT_DNS", "", &[("a.test", 80)]);
        let dns = translated(&yaml).unwrap().clusters["c"]
            .dns
            .clone()
            .unwrap();
        assert_eq!(dns.lookup_family, DnsLookupFamily::Auto);
    }

    /// What Envoy refuses, or Bearing does not implement, is NACKed by its field: a
    /// LOGICAL_DNS cluster of two endpoints, a refresh rate of 1 ms, a hostname in a STATIC
    /// cluster, `dns_failure_refresh_rate`.
    #[test]
    fn dns_shapes_not_served_are_nacked_by_field() {
        let field_of = |yaml: String| {
            let nacks = translated(&yaml).unwrap_err();
            assert_eq!(nacks.len(), 1, "{nacks:?}");
            (nacks[0].field.clone(), nacks[0].reason.clone())
        };
        let two = cluster("LOGICAL_DNS", "", &[("a.test", 80), ("b.test", 80)]);
        let (field, reason) = field_of(two);
        assert_eq!(field, "clusters[\"c\"].load_assignment.endpoints");
        assert!(reason.contains("exactly one"), "{reason}");
        let fast = cluster(
            "STRICT_DNS",
            "    dnsRefreshRate: 0.001s\n",
            &[("a.test", 80)],
        );
        assert_eq!(field_of(fast).0, "clusters[\"c\"].dns_refresh_rate");
        let (field, reason) = field_of(cluster("STATIC", "", &[("a.test", 80)]));
        assert_eq!(
            field,
            "clusters[\"c\"].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address"
        );
        assert!(
            reason.contains("only STRICT_DNS and LOGICAL_DNS"),
            "{reason}"
        );
        let backoff = "    dnsFailureRefreshRate: {baseInterval: 1s}\n";
        let (field, _) = field_of(cluster("STRICT_DNS", backoff, &[("a.test", 80)]));
        assert_eq!(field, "clusters[\"c\"].dns_failure_refresh_rate");
    }

    /// kuma-cp's tracing collector (xds-generator tracing golden): a STRICT_DNS cluster to
    /// `localhost`.
    #[test]
    fn kumas_tracing_collector_cluster_translates() {
        let file = format!(
            "{}/../../../shared/kuma-corpus/xds-generator/tracing/datadog.envoy-config.golden.yaml",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
        let config = translated(&text).unwrap();
        let dns = config.clusters["tracing:datadog"].dns.clone().unwrap();
        assert_eq!(dns.hosts[0].hostname, "localhost");
        assert_eq!(dns.hosts[0].port, 2304);
        assert_eq!(dns.lookup_family, DnsLookupFamily::V4Only);
    }
}

//! Fault injection (kuma-cp's MeshFaultInjection, Envoy's HTTP `fault` filter): a share of
//! requests is delayed, a share aborted with a status, each drawn per request, unless the
//! filter's matcher skips it for the request's connection (kuma-cp: a source identity or SNI
//! it does not target).

use std::time::Duration;

use bearing_gateway::HeaderCondition;
use bearing_proxy_config::Fault;
use http::HeaderMap;
use prometheus_client::metrics::counter::Counter;

use crate::rbac::Peer;

/// The body of Envoy's answer to a request its fault filter aborts.
pub(crate) const FAULT_ABORT: &str = "fault filter abort";

/// The counters of a listener's fault filters (Envoy's `fault.aborts_injected`,
/// `fault.delays_injected`).
#[derive(Clone, Default)]
pub struct FaultStats {
    /// Requests aborted.
    pub aborts_injected: Counter,
    /// Requests delayed.
    pub delays_injected: Counter,
}

/// One fault filter with its listener's counters.
pub struct FaultRuntime {
    config: Fault,
    /// `config.headers`, prepared.
    headers: Vec<HeaderCondition>,
    stats: FaultStats,
}

impl FaultRuntime {
    /// `config` counting into `stats`; an error names a header condition that cannot be
    /// prepared.
    pub fn new(config: Fault, stats: FaultStats) -> Result<FaultRuntime, String> {
        let headers = config
            .headers
            .iter()
            .map(|h| HeaderCondition::new(h, "fault filter"))
            .collect::<Result<_, _>>()?;
        Ok(FaultRuntime {
            config,
            headers,
            stats,
        })
    }

    /// Whether the filter reads the request's headers (its `headers` match).
    pub(crate) fn reads_headers(&self) -> bool {
        !self.headers.is_empty()
    }

    /// Whether `headers` meet every condition of the filter's `headers` match (read before
    /// the route edits the request, as Envoy's filter runs before its router).
    pub(crate) fn headers_hold(&self, headers: &HeaderMap) -> bool {
        self.headers.iter().all(|h| h.holds(headers))
    }

    /// Whether the filter reads the connection (its matcher).
    pub(crate) fn reads_peer(&self) -> bool {
        self.config.skip.is_some()
    }

    /// Whether the filter applies to a request of a connection read as `peer` (`None`: not
    /// read, as a connection without TLS): skipped only where its matcher holds; one that
    /// cannot tell (no TLS for a URI SAN) takes no action, as Envoy's, so it applies.
    pub(crate) fn applies(&self, peer: Option<&Peer>) -> bool {
        let peer = peer.unwrap_or(&crate::rbac::PLAINTEXT);
        let skip = |p| crate::rbac::predicate_state(p, peer) == Some(true);
        !self.config.skip.as_ref().is_some_and(skip)
    }

    /// The delay drawn for one request, counted.
    pub(crate) fn delay(&self) -> Option<Duration> {
        let delay = self.config.delay.as_ref()?;
        if !delay.percentage.holds(rand::random()) {
            return None;
        }
        self.stats.delays_injected.inc();
        Some(delay.fixed)
    }

    /// The abort status drawn for one request, counted.
    pub(crate) fn abort(&self) -> Option<u16> {
        let abort = self.config.abort.as_ref()?;
        if !abort.percentage.holds(rand::random()) {
            return None;
        }
        self.stats.aborts_injected.inc();
        Some(abort.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bearing_proxy_config::{
        FaultAbort, FaultDelay, HeaderMatch, RbacInput, RbacPredicate, RbacString, Share,
        ValueMatch,
    };

    fn fault(numerator: u32, denominator: u32) -> FaultRuntime {
        let percentage = Share {
            numerator,
            denominator,
        };
        FaultRuntime::new(
            Fault {
                skip: None,
                headers: Vec::new(),
                delay: Some(FaultDelay {
                    fixed: Duration::from_secs(5),
                    percentage,
                }),
                abort: Some(FaultAbort {
                    status: 503,
                    percentage,
                }),
            },
            FaultStats::default(),
        )
        .unwrap()
    }

    #[test]
    fn faults_hit_about_their_share_of_requests_and_are_counted() {
        let f = fault(250, 10_000);
        let aborted = (0..20_000).filter(|_| f.abort().is_some()).count();
        // 2.5%: 500 expected.
        assert!((350..650).contains(&aborted), "{aborted}");
        assert_eq!(f.stats.aborts_injected.get(), aborted as u64);
        let all = fault(100, 100);
        assert!((0..100).all(|_| all.delay() == Some(Duration::from_secs(5))));
        let none = fault(0, 100);
        assert!((0..100).all(|_| none.abort().is_none() && none.delay().is_none()));
    }

    #[test]
    fn the_matcher_skips_the_fault_for_connections_it_holds_for() {
        let mut f = fault(100, 100);
        f.config.skip = Some(RbacPredicate::Not(Box::new(RbacPredicate::Single {
            input: RbacInput::UriSan,
            value: RbacString::Prefix("spiffe://default".into()),
        })));
        assert!(f.reads_peer());
        let peer = crate::rbac::tests::peer;
        // A source outside the prefix is skipped; one inside gets the fault.
        assert!(!f.applies(Some(&peer(&["spiffe://other/web"], None))));
        assert!(f.applies(Some(&peer(&["spiffe://default/web"], None))));
        // Plaintext: the matcher cannot read a URI SAN, so Envoy applies the fault.
        assert!(f.applies(None));
        assert!(f.applies(Some(&crate::rbac::PLAINTEXT)));
        assert!(fault(100, 100).applies(None));
    }

    #[test]
    fn a_header_match_reads_the_callers_tags_as_kumas_legacy_fault_injection() {
        let mut config = fault(100, 100).config;
        config.headers = vec![HeaderMatch {
            name: "x-kuma-tags".into(),
            value: ValueMatch::Regex(".*&kuma.io/service=[^&]*frontend[,&].*".into()),
        }];
        let f = FaultRuntime::new(config.clone(), FaultStats::default()).unwrap();
        assert!(f.reads_headers());
        let tags = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("x-kuma-tags", http::HeaderValue::from_static(v));
            h
        };
        assert!(f.headers_hold(&tags("&kuma.io/service=frontend&&kuma.io/zone=z&")));
        assert!(!f.headers_hold(&tags("&kuma.io/service=backend&")));
        assert!(!f.headers_hold(&HeaderMap::new()));
        assert!(!fault(100, 100).reads_headers());
        assert!(fault(100, 100).headers_hold(&HeaderMap::new()));
        config.headers[0].value = ValueMatch::Regex("(".into());
        let bad = FaultRuntime::new(config, FaultStats::default());
        assert!(bad.is_err_and(|e| e.contains("invalid regular expression")));
    }
}

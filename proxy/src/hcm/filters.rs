//! The HTTP filters a listener runs after RBAC (kuma-cp's MeshFaultInjection and
//! MeshRateLimit), in the connection manager's order, once a request's route is known and
//! before it is forwarded or answered: a fault's delay holds the request, then its abort or
//! a route's rate limit may answer it instead. Both codecs run them; a listener without them
//! has none ([`HttpFilters::new`] gives `None`) and pays one `Option` check per request.

use bearing_gateway::HeaderEdits;
use bearing_proxy_config::{HttpFilter, ResponseFlags};
use http::{HeaderMap, StatusCode};

use crate::fault::{FaultRuntime, FaultStats, FAULT_ABORT};
use crate::rate_limit::{RouteLimit, Verdict};
use crate::rbac::Peer;

/// The body of Envoy's answer to a request its local rate limit refuses.
pub(crate) const LOCAL_RATE_LIMITED: &str = "local_rate_limited";

/// A listener's HTTP filters after RBAC.
pub struct HttpFilters {
    filters: Vec<Filter>,
    /// A filter reads the connection (a fault's matcher).
    reads_peer: bool,
    /// A filter reads the request headers (a fault's `headers`).
    reads_headers: bool,
}

/// Which filters' header matches a request met, read before its route edits it: bit `i` for
/// the filter at `i` (translation refuses a header-matching fault past the 64th filter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HeadersHeld(u64);

impl HeadersHeld {
    /// Every filter applies as far as headers go (no filter reads them).
    pub(crate) const ALL: HeadersHeld = HeadersHeld(u64::MAX);

    fn holds(self, filter: usize) -> bool {
        filter >= 64 || self.0 & (1 << filter) != 0
    }
}

enum Filter {
    Fault(FaultRuntime),
    /// Where the route's rate limit applies.
    LocalRateLimit,
}

/// A request a filter answers itself: the status, Envoy's body and the headers to add (a
/// rate limit's).
pub(crate) struct FilterReply<'r> {
    pub status: StatusCode,
    pub message: &'static str,
    pub headers: Option<&'r HeaderEdits>,
    /// Envoy's response flags of the reply (`FI`, `RL`; `DI` too after a delay).
    pub flags: ResponseFlags,
}

impl HttpFilters {
    /// The runtime of `config` counting faults into what `stats` gives (asked only when
    /// there is a fault); `None` without filters.
    /// An error names a filter that cannot be prepared.
    pub fn new(
        config: &[HttpFilter],
        stats: impl FnOnce() -> FaultStats,
    ) -> Result<Option<HttpFilters>, String> {
        let faults = match config.iter().any(|f| matches!(f, HttpFilter::Fault(_))) {
            true => stats(),
            false => FaultStats::default(),
        };
        let filters: Vec<Filter> = config
            .iter()
            .map(|f| match f {
                HttpFilter::Fault(fault) => {
                    FaultRuntime::new(fault.clone(), faults.clone()).map(Filter::Fault)
                }
                HttpFilter::LocalRateLimit => Ok(Filter::LocalRateLimit),
            })
            .collect::<Result<_, _>>()?;
        let reads = |what: fn(&FaultRuntime) -> bool| {
            filters
                .iter()
                .any(|f| matches!(f, Filter::Fault(fault) if what(fault)))
        };
        let (reads_peer, reads_headers) = (
            reads(FaultRuntime::reads_peer),
            reads(FaultRuntime::reads_headers),
        );
        Ok((!filters.is_empty()).then_some(HttpFilters {
            filters,
            reads_peer,
            reads_headers,
        }))
    }

    /// Whether a filter reads the request headers (a fault's `headers` match).
    pub(crate) fn reads_headers(&self) -> bool {
        self.reads_headers
    }

    /// Which filters' header matches `headers` meet, to be read before the route edits them.
    pub(crate) fn headers_held(&self, headers: &HeaderMap) -> HeadersHeld {
        if !self.reads_headers {
            return HeadersHeld::ALL;
        }
        let mut held = 0u64;
        for (i, filter) in self.filters.iter().enumerate().take(64) {
            if !matches!(filter, Filter::Fault(fault) if !fault.headers_hold(headers)) {
                held |= 1 << i;
            }
        }
        HeadersHeld(held)
    }

    /// Whether a filter reads the connection (a fault's matcher), which is then read at its
    /// handshake.
    pub(crate) fn read_peer(&self) -> bool {
        self.reads_peer
    }

    /// Runs the filters for one request of a connection read as `peer`, whose route has
    /// `limit` (with its response headers): each fault that applies delays it, then may abort
    /// it; the rate limit may refuse it. `None`: the request goes on.
    /// With it, the response flags of what the filters did to a request that goes on (`DI`
    /// after a delay).
    pub(crate) async fn run<'r>(
        &self,
        (peer, held): (Option<&Peer>, HeadersHeld),
        limit: Option<(&RouteLimit, &'r HeaderEdits)>,
    ) -> (Option<FilterReply<'r>>, ResponseFlags) {
        let mut flags = ResponseFlags::default();
        for (i, filter) in self.filters.iter().enumerate() {
            match filter {
                Filter::Fault(fault) if held.holds(i) && fault.applies(peer) => {
                    if let Some(delay) = fault.delay() {
                        flags.insert(ResponseFlags::DELAY_INJECTED);
                        tokio::time::sleep(delay).await;
                    }
                    if let Some(status) = fault.abort() {
                        flags.insert(ResponseFlags::FAULT_INJECTED);
                        let reply = FilterReply {
                            status: StatusCode::from_u16(status)
                                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                            message: FAULT_ABORT,
                            headers: None,
                            flags,
                        };
                        return (Some(reply), flags);
                    }
                }
                Filter::Fault(_) => {}
                Filter::LocalRateLimit => {
                    let Some((limit, headers)) = limit else {
                        continue;
                    };
                    if limit.check() == Verdict::Refuse {
                        flags.insert(ResponseFlags::RATE_LIMITED);
                        let reply = FilterReply {
                            status: StatusCode::from_u16(limit.config.status)
                                .unwrap_or(StatusCode::TOO_MANY_REQUESTS),
                            message: LOCAL_RATE_LIMITED,
                            headers: Some(headers),
                            flags,
                        };
                        return (Some(reply), flags);
                    }
                }
            }
        }
        (None, flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bearing_proxy_config::{
        Fault, FaultAbort, HeaderFilter, HeaderMatch, LocalRateLimit, Share, TokenBucket,
        ValueMatch,
    };
    use prometheus_client::metrics::counter::Counter;
    use std::time::Duration;

    fn abort(status: u16) -> HttpFilter {
        HttpFilter::Fault(Fault {
            skip: None,
            headers: Vec::new(),
            delay: None,
            abort: Some(FaultAbort {
                status,
                percentage: Share::ALL,
            }),
        })
    }

    #[test]
    fn no_filters_no_runtime() {
        assert!(HttpFilters::new(&[], FaultStats::default)
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn filters_run_in_order_and_the_route_limit_applies_where_its_filter_is() {
        let limit = RouteLimit::new(
            LocalRateLimit {
                bucket: TokenBucket {
                    max_tokens: 1,
                    tokens_per_fill: 1,
                    fill_interval: Duration::from_secs(3600),
                },
                enabled: Share::ALL,
                enforced: Share::ALL,
                status: 423,
                response_headers: HeaderFilter::default(),
            },
            Counter::default(),
        );
        let edits = HeaderEdits::default();
        let stats = FaultStats::default();
        let config = [HttpFilter::LocalRateLimit, abort(503)];
        let limited = HttpFilters::new(&config, || stats.clone())
            .unwrap()
            .unwrap();
        // The limit first: its one token, then its refusal; the abort after it.
        let first = limited
            .run((None, HeadersHeld::ALL), Some((&limit, &edits)))
            .await
            .0
            .unwrap();
        assert_eq!((first.status.as_u16(), first.message), (503, FAULT_ABORT));
        assert_eq!(first.flags, ResponseFlags::FAULT_INJECTED);
        let second = limited
            .run((None, HeadersHeld::ALL), Some((&limit, &edits)))
            .await
            .0
            .unwrap();
        assert_eq!(
            (second.status.as_u16(), second.message),
            (423, LOCAL_RATE_LIMITED)
        );
        assert_eq!(second.flags, ResponseFlags::RATE_LIMITED);
        // A route without a limit passes the rate limit filter.
        let only_limit = HttpFilters::new(&[HttpFilter::LocalRateLimit], FaultStats::default)
            .unwrap()
            .unwrap();
        assert!(only_limit
            .run((None, HeadersHeld::ALL), None)
            .await
            .0
            .is_none());
        assert_eq!(stats.aborts_injected.get(), 1);
    }

    /// A delay that lets the request go on flags it `DI`, as Envoy's fault filter does.
    #[tokio::test]
    async fn a_delay_flags_the_request_it_lets_through() {
        let delay = HttpFilter::Fault(Fault {
            skip: None,
            headers: Vec::new(),
            delay: Some(bearing_proxy_config::FaultDelay {
                fixed: Duration::from_millis(1),
                percentage: Share::ALL,
            }),
            abort: None,
        });
        let filters = HttpFilters::new(&[delay], FaultStats::default)
            .unwrap()
            .unwrap();
        let (reply, flags) = filters.run((None, HeadersHeld::ALL), None).await;
        assert!(reply.is_none());
        assert_eq!(flags, ResponseFlags::DELAY_INJECTED);
    }

    #[tokio::test]
    async fn a_fault_with_a_header_match_applies_only_where_the_headers_held_before_routing() {
        let HttpFilter::Fault(mut tagged) = abort(500) else {
            unreachable!()
        };
        tagged.headers = vec![HeaderMatch {
            name: "x-kuma-tags".into(),
            value: ValueMatch::Contains("kuma.io/service=frontend&".into()),
        }];
        let config = [abort(503), HttpFilter::Fault(tagged)];
        let filters = HttpFilters::new(&config[1..], FaultStats::default)
            .unwrap()
            .unwrap();
        assert!(filters.reads_headers());
        let mut headers = HeaderMap::new();
        let untagged = filters.headers_held(&headers);
        assert!(filters.run((None, untagged), None).await.0.is_none());
        headers.insert(
            "x-kuma-tags",
            http::HeaderValue::from_static("&kuma.io/service=frontend&"),
        );
        // Read before routing: a route removing the header afterwards changes nothing.
        let tagged = filters.headers_held(&headers);
        headers.clear();
        let reply = filters.run((None, tagged), None).await.0.unwrap();
        assert_eq!(reply.status.as_u16(), 500);
        // Without a header-matching filter nothing is read.
        let plain = HttpFilters::new(&config[..1], FaultStats::default)
            .unwrap()
            .unwrap();
        assert!(!plain.reads_headers());
        assert_eq!(plain.headers_held(&headers), HeadersHeld::ALL);
    }
}

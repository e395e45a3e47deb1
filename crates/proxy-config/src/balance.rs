//! Load balancing (kuma-cp's MeshLoadBalancingStrategy): how a cluster picks the endpoint of
//! each connection or request among those serving it (Envoy's `Cluster.lb_policy` and its
//! config), and what a route hashes a request by for the consistent-hashing policies
//! (Envoy's `RouteAction.hash_policy`).

use serde::Serialize;

/// A cluster's load balancing policy (Envoy's `Cluster.lb_policy`).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case", tag = "policy")]
pub enum LoadBalancer {
    /// Each endpoint in turn (Envoy's `ROUND_ROBIN`, its default).
    #[default]
    RoundRobin,
    /// The endpoint with the fewest active requests among `choice_count` drawn at random
    /// (Envoy's `LEAST_REQUEST`, power of two choices by default); endpoints of different
    /// weights by Envoy's EDF over weight / (active requests + 1)^`active_request_bias`.
    LeastRequest {
        /// How many endpoints are drawn per pick (Envoy's default 2).
        choice_count: u32,
        /// How much active requests weigh against endpoint weights (Envoy's default 1).
        #[serde(skip_serializing_if = "ActiveRequestBias::is_default")]
        active_request_bias: ActiveRequestBias,
    },
    /// An endpoint drawn at random (Envoy's `RANDOM`).
    Random,
    /// Ketama consistent hashing on a ring of xxHash64 points (Envoy's `RING_HASH`): each
    /// request's hash (its route's `HashPolicy`s) picks the first point at or after it.
    RingHash {
        /// The ring has at least this many points (Envoy's default 1024).
        minimum_ring_size: u64,
        /// And at most this many (Envoy's default 8M).
        maximum_ring_size: u64,
        /// How the ring's points are hashed (requests are hashed with xxHash64 either way).
        #[serde(skip_serializing_if = "RingHashFunction::is_xx_hash")]
        hash_function: RingHashFunction,
    },
    /// Maglev consistent hashing (Envoy's `MAGLEV`): a lookup table of a prime size filled
    /// from each endpoint's permutation; a request's hash picks its slot.
    Maglev {
        /// The table's size, a prime (Envoy's default 65537).
        table_size: u64,
    },
}

/// The exponent of least request's weighting (Envoy's `LeastRequestLbConfig.active_request_bias`):
/// an endpoint of weight `w` with `a` active requests weighs `w / (a + 1)^bias` where weights
/// differ (0: weights alone, as round robin). Kept as the bits of an `f64`, so the model
/// stays comparable and hashable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ActiveRequestBias(u64);

impl ActiveRequestBias {
    /// Envoy's default, 1.
    pub const DEFAULT: ActiveRequestBias = ActiveRequestBias(0x3ff0_0000_0000_0000);

    /// The bias `value`.
    pub fn new(value: f64) -> ActiveRequestBias {
        ActiveRequestBias(value.to_bits())
    }

    /// Its value.
    pub fn get(self) -> f64 {
        f64::from_bits(self.0)
    }

    /// Whether it is Envoy's default (left out of `/config_dump`).
    pub fn is_default(&self) -> bool {
        *self == ActiveRequestBias::DEFAULT
    }
}

impl Default for ActiveRequestBias {
    fn default() -> ActiveRequestBias {
        ActiveRequestBias::DEFAULT
    }
}

impl Serialize for ActiveRequestBias {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.get())
    }
}

/// The hash of a ring's points (Envoy's `RingHashLbConfig.hash_function`).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum RingHashFunction {
    /// xxHash64 with seed 0 (Envoy's default).
    #[default]
    XxHash,
    /// 64-bit MurmurHash2 as libstdc++'s `std::hash` (seed `0xc70f6907`).
    MurmurHash2,
}

impl RingHashFunction {
    /// Whether this is xxHash, the default (left out of `/config_dump`).
    pub fn is_xx_hash(&self) -> bool {
        *self == RingHashFunction::XxHash
    }
}

impl LoadBalancer {
    /// Whether this is round robin (the default, left out of `/config_dump`).
    pub fn is_round_robin(&self) -> bool {
        *self == LoadBalancer::RoundRobin
    }

    /// Whether it hashes requests onto a ring or table (ring hash, Maglev).
    pub fn is_consistent_hashing(&self) -> bool {
        matches!(
            self,
            LoadBalancer::RingHash { .. } | LoadBalancer::Maglev { .. }
        )
    }
}

/// One part of what a route hashes a request by (Envoy's `RouteAction.HashPolicy`): the
/// hashes of a request's policies that give one are combined in order (each earlier
/// result rotated left by one, then XORed), a `terminal` one that gives a hash ending the
/// list.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash)]
pub struct HashPolicy {
    /// What is hashed.
    pub source: HashSource,
    /// Stop at this policy when it gave a hash.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub terminal: bool,
}

/// What a [`HashPolicy`] hashes; a request without it gives no hash from that policy.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum HashSource {
    /// The values of a request header (the name in lower case), sorted and concatenated.
    Header(String),
    /// The value of a cookie of the `Cookie` header (no cookie is generated).
    Cookie(String),
    /// The value of a cookie of the `Cookie` header, generated when the request lacks it
    /// (Envoy's cookie policy with a `ttl`).
    GeneratedCookie(GeneratedCookie),
    /// The downstream peer's IP address as text.
    SourceIp,
    /// The first value of a query parameter, percent-decoded.
    QueryParameter(String),
    /// The filter-state object under a key (Envoy's `filter_state` policy). Envoy hashes
    /// only objects that are hashable, and no filter Bearing accepts puts one in a
    /// connection's or request's filter state, so it never gives a hash; it still counts in
    /// the list (a `terminal` one ends it after an earlier policy's hash).
    FilterState(String),
}

/// A cookie a route generates when a request lacks it, as Envoy's router does for a cookie
/// hash policy with a `ttl`: its value is the hex xxHash64 of the downstream connection's
/// addresses (peer then local, `ip:port` each), which the request is hashed by, and the
/// response from upstream carries `Set-Cookie: <name>="<value>"`, then `; Max-Age=<ttl>`
/// (unless 0), `; Path=<path>` (unless empty), each attribute (`; name` or `; name=value`)
/// and `; HttpOnly`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash)]
pub struct GeneratedCookie {
    /// The cookie's name.
    pub name: String,
    /// Its `Max-Age` in seconds (the `ttl`'s whole seconds); 0: none given.
    pub max_age: u64,
    /// Its `Path`; empty: none given.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Further attributes, in order, as (name, value); an empty value is written bare.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<(String, String)>,
}

//! Load balancing (kuma-cp's MeshLoadBalancingStrategy): a cluster's `lb_policy` with its
//! config, locality weighting and the ClusterLoadAssignment's `policy` checked against what
//! the runtime does, and a route's `hash_policy`.

use crate::routes::Problem;
use bearing_proxy_config::{
    ActiveRequestBias, GeneratedCookie, HashPolicy, HashSource, LoadBalancer, RingHashFunction,
    MAX_ROUND_ROBIN_WEIGHT,
};
use envoy_types::pb::envoy::config::cluster::v3 as cluster_pb;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint_pb;
use envoy_types::pb::envoy::config::route::v3 as route_pb;
use std::collections::{BTreeMap, BTreeSet};

/// Envoy's default minimum ring size (`RingHashLbConfig.minimum_ring_size`).
const DEFAULT_MIN_RING: u64 = 1024;
/// Envoy's default and largest ring size (`RingHashLbConfig.maximum_ring_size`).
const MAX_RING: u64 = 8 * 1024 * 1024;
/// Envoy's default Maglev table size.
const DEFAULT_MAGLEV_TABLE: u64 = 65537;
/// The largest Maglev table Envoy takes (`MaglevLbConfig.table_size`'s bound).
const MAX_MAGLEV_TABLE: u64 = 5_000_011;
/// Envoy's default number of choices of the least request balancer.
const DEFAULT_CHOICES: u32 = 2;

/// The cluster's load balancer from `lb_policy` and the config of that policy (at `path`);
/// a config for another policy, or a value Envoy refuses or Bearing does not implement, is
/// a problem naming its field.
pub(crate) fn load_balancer(
    cluster: &cluster_pb::Cluster,
    path: &str,
) -> Result<LoadBalancer, Vec<Problem>> {
    use cluster_pb::cluster::{LbConfig, LbPolicy};
    let mut problems = Vec::new();
    let policy = LbPolicy::try_from(cluster.lb_policy).ok();
    let config = cluster.lb_config.as_ref();
    let balancer = match (policy, config) {
        (Some(LbPolicy::RoundRobin), None | Some(LbConfig::RoundRobinLbConfig(_))) => {
            LoadBalancer::RoundRobin
        }
        (Some(LbPolicy::LeastRequest), None) => LoadBalancer::LeastRequest {
            choice_count: DEFAULT_CHOICES,
            active_request_bias: ActiveRequestBias::DEFAULT,
        },
        (Some(LbPolicy::LeastRequest), Some(LbConfig::LeastRequestLbConfig(c))) => {
            least_request(c, &format!("{path}.least_request_lb_config"), &mut problems)
        }
        (Some(LbPolicy::Random), None) => LoadBalancer::Random,
        (Some(LbPolicy::RingHash), None) => LoadBalancer::RingHash {
            minimum_ring_size: DEFAULT_MIN_RING,
            maximum_ring_size: MAX_RING,
            hash_function: RingHashFunction::XxHash,
        },
        (Some(LbPolicy::RingHash), Some(LbConfig::RingHashLbConfig(c))) => {
            ring_hash(c, &format!("{path}.ring_hash_lb_config"), &mut problems)
        }
        (Some(LbPolicy::Maglev), None) => LoadBalancer::Maglev {
            table_size: DEFAULT_MAGLEV_TABLE,
        },
        (Some(LbPolicy::Maglev), Some(LbConfig::MaglevLbConfig(c))) => {
            maglev(c, &format!("{path}.maglev_lb_config"), &mut problems)
        }
        (Some(LbPolicy::ClusterProvided | LbPolicy::LoadBalancingPolicyConfig) | None, _) => {
            problems.push((
                format!("{path}.lb_policy"),
                "only ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH and MAGLEV are implemented (CLUSTER_PROVIDED with ORIGINAL_DST)".into(),
            ));
            LoadBalancer::RoundRobin
        }
        (Some(policy), Some(other)) => {
            problems.push((
                format!("{path}.{}", config_field(other)),
                format!(
                    "a config of another policy than the cluster's lb_policy {}",
                    policy.as_str_name()
                ),
            ));
            LoadBalancer::RoundRobin
        }
    };
    if problems.is_empty() {
        Ok(balancer)
    } else {
        Err(problems)
    }
}

/// The field name of an `lb_config`.
fn config_field(config: &cluster_pb::cluster::LbConfig) -> &'static str {
    use cluster_pb::cluster::LbConfig;
    match config {
        LbConfig::RingHashLbConfig(_) => "ring_hash_lb_config",
        LbConfig::MaglevLbConfig(_) => "maglev_lb_config",
        LbConfig::OriginalDstLbConfig(_) => "original_dst_lb_config",
        LbConfig::LeastRequestLbConfig(_) => "least_request_lb_config",
        LbConfig::RoundRobinLbConfig(_) => "round_robin_lb_config",
    }
}

/// LEAST_REQUEST's config: the number of choices (Envoy refuses fewer than 2) and the
/// active request bias: its `default_value` (no runtime layer Bearing accepts sets its
/// `runtime_key`, so Envoy's runtime gives the default too), a negative or NaN one taken as
/// 1 as Envoy does (with a warning there); an infinite one, which would leave every weight 0
/// or undefined, is refused.
fn least_request(
    c: &cluster_pb::cluster::LeastRequestLbConfig,
    path: &str,
    problems: &mut Vec<Problem>,
) -> LoadBalancer {
    let choice_count = c.choice_count.as_ref().map_or(DEFAULT_CHOICES, |v| v.value);
    if choice_count < 2 {
        problems.push((
            format!("{path}.choice_count"),
            format!("{choice_count}: Envoy takes 2 or more"),
        ));
    }
    let active_request_bias = match c.active_request_bias.as_ref().map(|b| b.default_value) {
        None => ActiveRequestBias::DEFAULT,
        Some(bias) if bias.is_infinite() => {
            problems.push((
                format!("{path}.active_request_bias.default_value"),
                format!("{bias}: an infinite bias is not implemented"),
            ));
            ActiveRequestBias::DEFAULT
        }
        Some(bias) if bias.is_nan() || bias < 0.0 => ActiveRequestBias::DEFAULT,
        Some(bias) => ActiveRequestBias::new(bias),
    };
    LoadBalancer::LeastRequest {
        choice_count,
        active_request_bias,
    }
}

/// RING_HASH's config: the ring's bounds (Envoy's defaults 1024 and 8M; at most 8M, the
/// minimum no larger than the maximum) and the hash of its points.
fn ring_hash(
    c: &cluster_pb::cluster::RingHashLbConfig,
    path: &str,
    problems: &mut Vec<Problem>,
) -> LoadBalancer {
    use cluster_pb::cluster::ring_hash_lb_config::HashFunction;
    let hash_function = match HashFunction::try_from(c.hash_function) {
        Ok(HashFunction::XxHash) => RingHashFunction::XxHash,
        Ok(HashFunction::MurmurHash2) => RingHashFunction::MurmurHash2,
        Err(_) => {
            problems.push((
                format!("{path}.hash_function"),
                format!("{}: not a hash function", c.hash_function),
            ));
            RingHashFunction::XxHash
        }
    };
    let minimum_ring_size = c
        .minimum_ring_size
        .as_ref()
        .map_or(DEFAULT_MIN_RING, |v| v.value);
    let maximum_ring_size = c.maximum_ring_size.as_ref().map_or(MAX_RING, |v| v.value);
    for (field, size) in [
        ("minimum_ring_size", minimum_ring_size),
        ("maximum_ring_size", maximum_ring_size),
    ] {
        if size > MAX_RING {
            problems.push((
                format!("{path}.{field}"),
                format!("{size}: Envoy takes at most {MAX_RING}"),
            ));
        }
    }
    if minimum_ring_size > maximum_ring_size {
        problems.push((
            format!("{path}.minimum_ring_size"),
            format!("ring hash: minimum_ring_size ({minimum_ring_size}) > maximum_ring_size ({maximum_ring_size})"),
        ));
    }
    LoadBalancer::RingHash {
        minimum_ring_size,
        maximum_ring_size,
        hash_function,
    }
}

/// MAGLEV's config: the table size, a prime no larger than Envoy's bound (default 65537).
fn maglev(
    c: &cluster_pb::cluster::MaglevLbConfig,
    path: &str,
    problems: &mut Vec<Problem>,
) -> LoadBalancer {
    let table_size = c
        .table_size
        .as_ref()
        .map_or(DEFAULT_MAGLEV_TABLE, |v| v.value);
    if table_size > MAX_MAGLEV_TABLE || !is_prime(table_size) {
        problems.push((
            format!("{path}.table_size"),
            format!("{table_size}: the table size of maglev must be a prime number no larger than {MAX_MAGLEV_TABLE}"),
        ));
    }
    LoadBalancer::Maglev { table_size }
}

/// Whether `n` is prime (trial division: table sizes are at most a few million).
fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// Checks the endpoints' weights (`LbEndpoint.load_balancing_weight`) against what the
/// runtime does with them, per priority level: round robin, least request (Envoy's EDF over
/// weight / (active requests + 1)), ring hash and Maglev share a level by weight
/// (`proxy::balance`), random ignores weights as Envoy's does; a round robin level whose
/// weights sum past [`MAX_ROUND_ROBIN_WEIGHT`] (the schedule keeps an entry per unit of
/// weight) or a level past `u32::MAX` (Envoy refuses it) is refused.
pub(crate) fn check_weights(
    balancer: &LoadBalancer,
    assignment: &endpoint_pb::ClusterLoadAssignment,
    path: &str,
) -> Vec<Problem> {
    // Per level: the weights seen (0 is refused where it is read) and their sum.
    let mut levels: BTreeMap<u32, (u32, u32, u64)> = BTreeMap::new();
    for locality in &assignment.endpoints {
        for lb in &locality.lb_endpoints {
            let weight = lb.load_balancing_weight.as_ref().map_or(1, |w| w.value);
            if weight == 0 {
                continue;
            }
            let level = levels
                .entry(locality.priority)
                .or_insert((weight, weight, 0));
            level.0 = level.0.min(weight);
            level.1 = level.1.max(weight);
            level.2 += u64::from(weight);
        }
    }
    let mut problems = Vec::new();
    let at = format!("{path}.load_assignment.endpoints");
    for (priority, (least, most, sum)) in levels {
        if least == most {
            continue;
        }
        if sum > u64::from(u32::MAX) {
            problems.push((
                at.clone(),
                format!(
                    "the weights at priority {priority} sum to {sum}, past {}: Envoy refuses it",
                    u32::MAX
                ),
            ));
            continue;
        }
        if *balancer == LoadBalancer::RoundRobin && sum > MAX_ROUND_ROBIN_WEIGHT {
            problems.push((at.clone(), format!("the weights at priority {priority} sum to {sum}: a weighted round robin schedule over more than {MAX_ROUND_ROBIN_WEIGHT} is not implemented")));
        }
    }
    problems
}

/// Whether the cluster balances across weighted localities (`locality_weighted_lb_config`).
pub(crate) fn locality_weighted(cluster: &cluster_pb::Cluster) -> bool {
    use cluster_pb::cluster::common_lb_config::LocalityConfigSpecifier;
    cluster.common_lb_config.as_ref().is_some_and(|c| {
        matches!(
            c.locality_config_specifier,
            Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
        )
    })
}

/// What locality-weighted balancing makes of one locality of an assignment, by Envoy's
/// rules per priority level (checked against Envoy 1.40): in a level where no locality with
/// endpoints has a weight, its hosts are balanced as without locality weighting; in one
/// where some have a weight, a locality without one gets no traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LocalityRole {
    /// Its level has no weighted locality: balanced as without locality weighting.
    Unweighted,
    /// Without a weight beside weighted localities: no traffic.
    Idle,
    /// Picked by its weight among its level's weighted localities; `order`: its place
    /// among them in Envoy's order (by locality, lexicographically: region, zone,
    /// sub-zone; kuma-dp's bootstrap gives Envoy no locality of its own to put first).
    Weighed {
        /// Its `load_balancing_weight`.
        weight: u32,
        /// Its place in Envoy's order of the level's localities.
        order: u32,
    },
}

/// The [`LocalityRole`] of each locality of `assignment`, in order.
pub(crate) fn locality_roles(assignment: &endpoint_pb::ClusterLoadAssignment) -> Vec<LocalityRole> {
    let weight = |l: &endpoint_pb::LocalityLbEndpoints| {
        l.load_balancing_weight.as_ref().map_or(0, |w| w.value)
    };
    let weighted_levels: BTreeSet<u32> = assignment
        .endpoints
        .iter()
        .filter(|l| !l.lb_endpoints.is_empty() && weight(l) > 0)
        .map(|l| l.priority)
        .collect();
    // Per level, its localities in Envoy's order.
    let mut orders: BTreeMap<u32, BTreeSet<LocalityName>> = BTreeMap::new();
    for l in &assignment.endpoints {
        orders
            .entry(l.priority)
            .or_default()
            .insert(locality_name(l));
    }
    let order = |l: &endpoint_pb::LocalityLbEndpoints| {
        let names = orders.get(&l.priority);
        let at = names.and_then(|n| n.iter().position(|n| *n == locality_name(l)));
        at.unwrap_or_default() as u32
    };
    assignment
        .endpoints
        .iter()
        .map(
            |l| match (weighted_levels.contains(&l.priority), weight(l)) {
                (false, _) => LocalityRole::Unweighted,
                (true, 0) => LocalityRole::Idle,
                (true, weight) => LocalityRole::Weighed {
                    weight,
                    order: order(l),
                },
            },
        )
        .collect()
}

/// A locality as Envoy orders them (`LocalityLess`): region, zone, sub-zone.
type LocalityName = (String, String, String);

/// The locality of `l` (empty names where it has none).
fn locality_name(l: &endpoint_pb::LocalityLbEndpoints) -> LocalityName {
    let locality = l.locality.clone().unwrap_or_default();
    (locality.region, locality.zone, locality.sub_zone)
}

/// Checks locality weighting and the assignment's `policy` against what the runtime does:
/// an overprovisioning factor of 100 or more weighs a level's health and a weighted
/// locality's availability (their healthy share times it, capped at 100%; without a health
/// signal every level is whole), a smaller one would spill traffic to lower levels while
/// every host is healthy and is refused; with `locality_weighted_lb_config`, a level whose
/// endpoints all belong to one weighted locality is balanced as without it, several
/// localities in one level are balanced by locality weight (`proxy::balance`) under round
/// robin, least request and random (scaled by each locality's availability under a health
/// signal, `proxy::priority`) and folded into the hosts' under ring hash and Maglev, and
/// refused in a DNS cluster (`dns`) and past [`MAX_ROUND_ROBIN_WEIGHT`]; a locality without a weight (no traffic in Envoy)
/// beside weighted ones is refused under a health signal. Without it, locality weights have
/// no effect in Envoy either.
pub(crate) fn check_localities(
    cluster: &cluster_pb::Cluster,
    (balancer, dns): (&LoadBalancer, bool),
    assignment: Option<&endpoint_pb::ClusterLoadAssignment>,
    path: &str,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let Some(assignment) = assignment else {
        return problems;
    };
    if let Some(factor) = assignment
        .policy
        .as_ref()
        .and_then(|p| p.overprovisioning_factor.as_ref())
    {
        // With a health signal the factor weighs each level's health and each weighted
        // locality's availability (`proxy::priority`); without one every level is whole.
        if factor.value < 100 {
            problems.push((
                format!("{path}.load_assignment.policy.overprovisioning_factor"),
                format!("{}: a factor below 100 sends traffic to lower priority levels while all hosts are healthy, which is not implemented", factor.value),
            ));
        }
    }
    if !locality_weighted(cluster) {
        return problems;
    }
    let health = !cluster.health_checks.is_empty() || cluster.outlier_detection.is_some();
    // Per level: its weighted localities with endpoints, and the sum of their weights.
    let mut levels: BTreeMap<u32, (usize, u64)> = BTreeMap::new();
    let roles = locality_roles(assignment);
    // The localities seen, by level and order; the levels without a locality weight.
    let (mut seen, mut empty_levels) = (BTreeSet::new(), BTreeSet::new());
    for (i, (locality, role)) in assignment.endpoints.iter().zip(roles).enumerate() {
        if locality.lb_endpoints.is_empty() {
            continue;
        }
        match role {
            // Envoy's ring or table folds locality weights into the hosts': with none, it
            // holds no host (seen against Envoy 1.40: 503 `no healthy upstream`).
            LocalityRole::Unweighted
                if balancer.is_consistent_hashing() && empty_levels.insert(locality.priority) =>
            {
                problems.push((
                    format!("{path}.load_assignment.endpoints[{i}].load_balancing_weight"),
                    format!("no locality at priority {} has a weight: under RING_HASH or MAGLEV Envoy's ring or table then holds no host (no healthy upstream), which is not implemented", locality.priority),
                ))
            }
            LocalityRole::Unweighted => {}
            // Its hosts would still count in the level's health.
            LocalityRole::Idle if health => problems.push((
                format!("{path}.load_assignment.endpoints[{i}].load_balancing_weight"),
                "a locality without a weight beside weighted ones (Envoy sends it no traffic) on a cluster with health checks or outlier detection is not implemented".into(),
            )),
            LocalityRole::Idle => {}
            LocalityRole::Weighed { weight, order } => {
                let level = levels.entry(locality.priority).or_default();
                level.0 += 1;
                level.1 += u64::from(weight);
                // Envoy merges the hosts of entries naming one locality into one group.
                if !seen.insert((locality.priority, order)) && balancer.is_consistent_hashing() {
                    problems.push((
                        format!("{path}.load_assignment.endpoints[{i}].locality"),
                        "a locality named twice in one priority level under RING_HASH or MAGLEV is not implemented".into(),
                    ));
                }
            }
        }
    }
    // Why several weighted localities in a level whose weights sum to `sum` are refused.
    let refused = |sum: u64| -> Option<String> {
        if dns {
            Some("in a DNS cluster".into())
        } else if balancer.is_consistent_hashing() {
            (sum > u64::from(u32::MAX)).then(|| {
                format!(
                    "whose weights sum to {sum}, past {} (Envoy refuses it)",
                    u32::MAX
                )
            })
        } else if sum > MAX_ROUND_ROBIN_WEIGHT {
            Some(format!("whose weights sum to {sum}, past {MAX_ROUND_ROBIN_WEIGHT} (the locality schedule keeps an entry per unit of weight)"))
        } else {
            None
        }
    };
    let mut several = levels.iter().filter(|(_, (n, _))| *n > 1);
    if let Some((priority, why)) = several.find_map(|(p, (_, sum))| Some((p, refused(*sum)?))) {
        problems.push((
            format!("{path}.common_lb_config.locality_weighted_lb_config"),
            format!("several localities at priority {priority}: balancing across weighted localities {why} is not implemented"),
        ));
    }
    problems
}

/// The most hash policies a route takes (the runtime flags the cookies a request generated
/// in one `u64`).
pub(crate) const MAX_HASH_POLICIES: usize = 64;

/// A route's `hash_policy` (at `path`): header, cookie (generated when absent where it has
/// a `ttl`, [`cookie`]), source IP, query parameter and filter-state policies; the guard
/// refuses a header's `regex_rewrite`. More than [`MAX_HASH_POLICIES`] are refused.
pub(crate) fn hash_policies(
    policies: &[route_pb::route_action::HashPolicy],
    path: &str,
    problems: &mut Vec<Problem>,
) -> Vec<HashPolicy> {
    use route_pb::route_action::hash_policy::PolicySpecifier as P;
    if policies.len() > MAX_HASH_POLICIES {
        problems.push((
            path.to_string(),
            format!(
                "{} hash policies: more than {MAX_HASH_POLICIES} on a route are not implemented",
                policies.len()
            ),
        ));
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, p) in policies.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let (field, name) = match &p.policy_specifier {
            Some(P::Header(h)) => ("header.header_name", &h.header_name),
            Some(P::Cookie(c)) => ("cookie.name", &c.name),
            Some(P::QueryParameter(q)) => ("query_parameter.name", &q.name),
            Some(P::FilterState(f)) => ("filter_state.key", &f.key),
            // No source IP asked for: Envoy adds no hash method.
            Some(P::ConnectionProperties(c)) if !c.source_ip => continue,
            Some(P::ConnectionProperties(_)) => ("", &String::new()),
            // Envoy refuses a policy without a specifier.
            None => {
                problems.push((at, "a hash policy without what it hashes".into()));
                continue;
            }
        };
        if !field.is_empty() && name.is_empty() {
            problems.push((format!("{at}.{field}"), "an empty name".into()));
            continue;
        }
        let source = match &p.policy_specifier {
            Some(P::Header(_)) => HashSource::Header(name.to_ascii_lowercase()),
            Some(P::Cookie(c)) => {
                let before = problems.len();
                let generated = cookie(c, &format!("{at}.cookie"), problems);
                match generated {
                    _ if problems.len() > before => continue,
                    Some(generated) => HashSource::GeneratedCookie(generated),
                    None => HashSource::Cookie(name.clone()),
                }
            }
            Some(P::QueryParameter(_)) => HashSource::QueryParameter(name.clone()),
            Some(P::FilterState(_)) => HashSource::FilterState(name.clone()),
            _ => HashSource::SourceIp,
        };
        out.push(HashPolicy {
            source,
            terminal: p.terminal,
        });
    }
    out
}

/// The cookie a cookie policy generates when a request lacks it: with a `ttl` (its whole
/// seconds the `Max-Age`, as Envoy takes it), its `path` and `attributes`; `None` without a
/// `ttl` (the cookie is only read; `path` and `attributes` then have no effect in Envoy).
/// A negative `ttl`, and a name, path or attribute that cannot be written in a header
/// value, are problems naming the field.
fn cookie(
    c: &route_pb::route_action::hash_policy::Cookie,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<GeneratedCookie> {
    let ttl = c.ttl.as_ref()?;
    let before = problems.len();
    let mut texts = vec![
        (format!("{path}.name"), &c.name),
        (format!("{path}.path"), &c.path),
    ];
    for (i, a) in c.attributes.iter().enumerate() {
        if a.name.is_empty() {
            problems.push((
                format!("{path}.attributes[{i}].name"),
                "an empty name".into(),
            ));
        }
        texts.push((format!("{path}.attributes[{i}].name"), &a.name));
        texts.push((format!("{path}.attributes[{i}].value"), &a.value));
    }
    for (field, text) in texts {
        // Visible ASCII, tabs and bytes past ASCII: what a header value may hold.
        if !text.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f)) {
            problems.push((field, format!("{text:?} cannot be written in Set-Cookie")));
        }
    }
    let Ok(max_age) = u64::try_from(ttl.seconds) else {
        problems.push((
            format!("{path}.ttl"),
            format!("{}s: a negative ttl is not implemented", ttl.seconds),
        ));
        return None;
    };
    (problems.len() == before).then(|| GeneratedCookie {
        name: c.name.clone(),
        max_age,
        path: c.path.clone(),
        attributes: c
            .attributes
            .iter()
            .map(|a| (a.name.clone(), a.value.clone()))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{UInt32Value, UInt64Value};

    fn cluster(policy: cluster_pb::cluster::LbPolicy) -> cluster_pb::Cluster {
        cluster_pb::Cluster {
            lb_policy: policy as i32,
            ..Default::default()
        }
    }

    fn fields(problems: Vec<Problem>) -> Vec<String> {
        problems.into_iter().map(|(field, _)| field).collect()
    }

    /// Each policy with Envoy's defaults; sizes and counts Envoy refuses, MurmurHash2 and a
    /// config of another policy are NACKed by their field.
    #[test]
    fn balancers_take_envoys_defaults_and_refuse_what_envoy_refuses() {
        use cluster_pb::cluster::{LbConfig, LbPolicy, MaglevLbConfig, RingHashLbConfig};
        let at = "clusters[\"c\"]";
        let lb = |c: &cluster_pb::Cluster| load_balancer(c, at);
        assert_eq!(
            lb(&cluster(LbPolicy::RoundRobin)),
            Ok(LoadBalancer::RoundRobin)
        );
        assert_eq!(
            lb(&cluster(LbPolicy::LeastRequest)),
            Ok(LoadBalancer::LeastRequest {
                choice_count: 2,
                active_request_bias: ActiveRequestBias::DEFAULT
            })
        );
        assert_eq!(lb(&cluster(LbPolicy::Random)), Ok(LoadBalancer::Random));
        assert_eq!(
            lb(&cluster(LbPolicy::RingHash)),
            Ok(LoadBalancer::RingHash {
                minimum_ring_size: 1024,
                maximum_ring_size: 8 << 20,
                hash_function: RingHashFunction::XxHash,
            })
        );
        assert_eq!(
            lb(&cluster(LbPolicy::Maglev)),
            Ok(LoadBalancer::Maglev { table_size: 65537 })
        );
        let with = |policy, config| cluster_pb::Cluster {
            lb_config: Some(config),
            ..cluster(policy)
        };
        let ring = |min: u64, max: u64, murmur: bool| {
            LbConfig::RingHashLbConfig(RingHashLbConfig {
                minimum_ring_size: Some(UInt64Value { value: min }),
                maximum_ring_size: Some(UInt64Value { value: max }),
                hash_function: i32::from(murmur),
            })
        };
        let maglev = |size: u64| {
            LbConfig::MaglevLbConfig(MaglevLbConfig {
                table_size: Some(UInt64Value { value: size }),
            })
        };
        assert_eq!(
            lb(&with(LbPolicy::RingHash, ring(100, 10000, true))),
            Ok(LoadBalancer::RingHash {
                minimum_ring_size: 100,
                maximum_ring_size: 10000,
                hash_function: RingHashFunction::MurmurHash2,
            })
        );
        let refused = |c| fields(lb(&c).expect_err("refused"));
        assert_eq!(
            refused(with(LbPolicy::RingHash, ring(200, 100, false))),
            [format!("{at}.ring_hash_lb_config.minimum_ring_size")]
        );
        assert_eq!(
            refused(with(LbPolicy::RingHash, ring(1, 9 << 20, true))),
            [format!("{at}.ring_hash_lb_config.maximum_ring_size")]
        );
        assert_eq!(
            lb(&with(LbPolicy::Maglev, maglev(17))),
            Ok(LoadBalancer::Maglev { table_size: 17 })
        );
        for size in [16, 5_000_101] {
            assert_eq!(
                refused(with(LbPolicy::Maglev, maglev(size))),
                [format!("{at}.maglev_lb_config.table_size")]
            );
        }
        assert_eq!(
            refused(with(LbPolicy::RoundRobin, maglev(17))),
            [format!("{at}.maglev_lb_config")]
        );
        let one_choice =
            LbConfig::LeastRequestLbConfig(cluster_pb::cluster::LeastRequestLbConfig {
                choice_count: Some(UInt32Value { value: 1 }),
                ..Default::default()
            });
        assert_eq!(
            refused(with(LbPolicy::LeastRequest, one_choice)),
            [format!("{at}.least_request_lb_config.choice_count")]
        );
        assert_eq!(
            refused(cluster(LbPolicy::ClusterProvided)),
            [format!("{at}.lb_policy")]
        );
    }

    /// kuma-cp's `activeRequestBias` (a `RuntimeDouble` with its default only) is taken;
    /// a negative or NaN one is 1 as in Envoy, an infinite one is NACKed.
    #[test]
    fn least_request_takes_the_active_request_bias() {
        use cluster_pb::cluster::{LbConfig, LbPolicy, LeastRequestLbConfig};
        use envoy_types::pb::envoy::config::core::v3::RuntimeDouble;
        let at = "clusters[\"c\"]";
        let biased = |bias: f64| cluster_pb::Cluster {
            lb_config: Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                active_request_bias: Some(RuntimeDouble {
                    default_value: bias,
                    runtime_key: String::new(),
                }),
                ..Default::default()
            })),
            ..cluster(LbPolicy::LeastRequest)
        };
        let bias = |value: f64| match load_balancer(&biased(value), at) {
            Ok(LoadBalancer::LeastRequest {
                choice_count: 2,
                active_request_bias,
            }) => Ok(active_request_bias.get()),
            other => Err(other),
        };
        assert_eq!(bias(0.5), Ok(0.5));
        assert_eq!(bias(0.0), Ok(0.0));
        assert_eq!(bias(-1.0), Ok(1.0));
        assert_eq!(bias(f64::NAN), Ok(1.0));
        assert_eq!(
            fields(load_balancer(&biased(f64::INFINITY), at).expect_err("refused")),
            [format!(
                "{at}.least_request_lb_config.active_request_bias.default_value"
            )]
        );
        assert_eq!(ActiveRequestBias::DEFAULT.get(), 1.0);
    }

    /// Locality weighting passes where the runtime balances as Envoy (one weighted locality
    /// per priority; several under every policy, with or without a health signal) and is
    /// NACKed by path otherwise (a DNS cluster, weights past the schedule's bound); an
    /// overprovisioning factor below 100 too.
    #[test]
    fn locality_weighting_and_overprovisioning_pass_where_the_runtime_follows_envoy() {
        use cluster_pb::cluster::common_lb_config::{
            LocalityConfigSpecifier, LocalityWeightedLbConfig,
        };
        let at = "clusters[\"c\"]";
        let weighted = cluster_pb::Cluster {
            common_lb_config: Some(cluster_pb::cluster::CommonLbConfig {
                locality_config_specifier: Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(
                    LocalityWeightedLbConfig {},
                )),
                ..Default::default()
            }),
            ..Default::default()
        };
        let locality = |priority: u32, weight: Option<u32>| endpoint_pb::LocalityLbEndpoints {
            lb_endpoints: vec![endpoint_pb::LbEndpoint::default()],
            priority,
            load_balancing_weight: weight.map(|value| UInt32Value { value }),
            ..Default::default()
        };
        let assignment = |localities, factor: Option<u32>| endpoint_pb::ClusterLoadAssignment {
            endpoints: localities,
            policy: factor.map(|f| endpoint_pb::cluster_load_assignment::Policy {
                overprovisioning_factor: Some(UInt32Value { value: f }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let check = |c: &cluster_pb::Cluster, a| {
            fields(check_localities(
                c,
                (&LoadBalancer::RoundRobin, false),
                Some(&a),
                at,
            ))
        };
        // kuma-cp's locality awareness in one zone: one weighted locality, factor 200.
        let kuma = assignment(vec![locality(0, Some(1))], Some(200));
        assert!(check(&weighted, kuma).is_empty());
        let two = assignment(vec![locality(0, Some(1)), locality(1, Some(1))], None);
        assert!(check(&weighted, two).is_empty());
        // Several weighted localities in a level: balanced by weight under round robin,
        // least request and random without a health signal; NACKed otherwise.
        let shared = assignment(vec![locality(0, Some(1)), locality(0, Some(3))], None);
        assert!(check(&weighted, shared.clone()).is_empty());
        let refused = [format!("{at}.common_lb_config.locality_weighted_lb_config")];
        let problems =
            check_localities(&weighted, (&LoadBalancer::Random, true), Some(&shared), at);
        assert_eq!(fields(problems), refused);
        // Under ring hash and Maglev the locality weights fold into the hosts' (Envoy's
        // `normalizeWeights`); a locality named twice in a level (merged by Envoy; unnamed
        // ones too) is NACKed.
        let maglev = LoadBalancer::Maglev { table_size: 17 };
        let named = |zone: &str, weight| endpoint_pb::LocalityLbEndpoints {
            locality: Some(envoy_types::pb::envoy::config::core::v3::Locality {
                zone: zone.into(),
                ..Default::default()
            }),
            ..locality(0, Some(weight))
        };
        let zones = assignment(vec![named("b", 3), named("a", 1)], None);
        let problems = check_localities(&weighted, (&maglev, false), Some(&zones), at);
        assert!(problems.is_empty(), "{problems:?}");
        let twice = assignment(vec![named("b", 3), named("a", 1), named("b", 1)], None);
        use LocalityRole::*;
        assert_eq!(
            locality_roles(&twice),
            [
                Weighed {
                    weight: 3,
                    order: 1
                },
                Weighed {
                    weight: 1,
                    order: 0
                },
                Weighed {
                    weight: 1,
                    order: 1
                }
            ]
        );
        let problems = check_localities(&weighted, (&maglev, false), Some(&twice), at);
        assert_eq!(
            fields(problems),
            [format!("{at}.load_assignment.endpoints[2].locality")]
        );
        // A level without any locality weight: Envoy's ring or table is empty; NACKed.
        let none = assignment(vec![locality(0, None), locality(0, None)], None);
        let problems = check_localities(&weighted, (&maglev, false), Some(&none), at);
        assert_eq!(
            fields(problems),
            [format!(
                "{at}.load_assignment.endpoints[0].load_balancing_weight"
            )]
        );
        // With a health signal: scaled by availability under round robin, folded over the
        // healthy hosts under a ring or table.
        let checked = cluster_pb::Cluster {
            health_checks: vec![Default::default()],
            ..weighted.clone()
        };
        assert!(check(&checked, shared.clone()).is_empty());
        let problems = check_localities(&checked, (&maglev, false), Some(&zones), at);
        assert!(problems.is_empty(), "{problems:?}");
        let heavy = assignment(vec![locality(0, Some(1)), locality(0, Some(1 << 16))], None);
        assert_eq!(check(&weighted, heavy), refused);
        // No weight in a level: balanced as without locality weighting (Envoy 1.40); a
        // locality without one beside a weighted one gets no traffic, which a health signal
        // would still count.
        let unweighted = assignment(vec![locality(0, None)], None);
        assert!(check(&weighted, unweighted.clone()).is_empty());
        let idle = assignment(vec![locality(0, None), locality(0, Some(2))], None);
        assert!(check(&weighted, idle.clone()).is_empty());
        assert_eq!(
            locality_roles(&idle),
            [
                Idle,
                Weighed {
                    weight: 2,
                    order: 0
                }
            ]
        );
        assert_eq!(locality_roles(&unweighted), [Unweighted]);
        assert_eq!(
            check(&checked, idle),
            [format!(
                "{at}.load_assignment.endpoints[0].load_balancing_weight"
            )]
        );
        // Without locality weighting, locality weights have no effect.
        let plain = cluster_pb::Cluster::default();
        assert!(check(&plain, unweighted).is_empty());
        let spill = assignment(vec![locality(0, Some(1))], Some(50));
        assert_eq!(
            check(&plain, spill),
            [format!(
                "{at}.load_assignment.policy.overprovisioning_factor"
            )]
        );
        // With a health signal the factor weighs level health: any of 100 or more is taken.
        let checked = cluster_pb::Cluster {
            outlier_detection: Some(Default::default()),
            ..Default::default()
        };
        for factor in [100, 140, 200] {
            let kuma = assignment(vec![locality(0, Some(1))], Some(factor));
            assert!(check(&checked, kuma).is_empty());
        }
    }

    /// Endpoint weights pass where the runtime balances by them (round robin, least request,
    /// ring hash, Maglev, random ignoring them) and are NACKed by path past a round robin
    /// schedule's bound (per level) or `u32::MAX`.
    #[test]
    fn endpoint_weights_pass_where_the_runtime_weighs_them() {
        let at = "clusters[\"c\"]";
        let endpoint = |w: u32| endpoint_pb::LbEndpoint {
            load_balancing_weight: Some(UInt32Value { value: w }),
            ..Default::default()
        };
        let level = |priority: u32, weights: &[u32]| endpoint_pb::LocalityLbEndpoints {
            lb_endpoints: weights.iter().map(|w| endpoint(*w)).collect(),
            priority,
            ..Default::default()
        };
        let assignment = |levels| endpoint_pb::ClusterLoadAssignment {
            endpoints: levels,
            ..Default::default()
        };
        let kuma = assignment(vec![level(0, &[1]), level(0, &[3])]);
        let least = LoadBalancer::LeastRequest {
            choice_count: 2,
            active_request_bias: ActiveRequestBias::DEFAULT,
        };
        for balancer in [
            LoadBalancer::RoundRobin,
            least,
            LoadBalancer::Random,
            LoadBalancer::Maglev { table_size: 65537 },
        ] {
            assert!(
                check_weights(&balancer, &kuma, at).is_empty(),
                "{balancer:?}"
            );
        }
        // The round robin schedule's bound counts per level.
        let per_level = assignment(vec![level(0, &[1, 1 << 15]), level(1, &[1, 1 << 15])]);
        assert!(check_weights(&LoadBalancer::RoundRobin, &per_level, at).is_empty());
        let heavy = assignment(vec![level(0, &[1, 1 << 16])]);
        assert_eq!(
            fields(check_weights(&LoadBalancer::RoundRobin, &heavy, at)),
            [format!("{at}.load_assignment.endpoints")]
        );
        assert!(check_weights(&least, &heavy, at).is_empty());
        let huge = assignment(vec![level(0, &[u32::MAX, 1])]);
        assert_eq!(
            fields(check_weights(&LoadBalancer::Random, &huge, at)),
            [format!("{at}.load_assignment.endpoints")]
        );
    }

    /// Every balancer takes a cluster with a health signal: a consistent-hashing one builds
    /// its rings or tables over each level's eligible hosts (the runtime's plan).
    #[test]
    fn balancers_take_a_cluster_with_a_health_signal() {
        use cluster_pb::cluster::LbPolicy;
        let at = "clusters[\"c\"]";
        let with_health = |policy| cluster_pb::Cluster {
            health_checks: vec![Default::default()],
            ..cluster(policy)
        };
        for policy in [
            LbPolicy::RoundRobin,
            LbPolicy::LeastRequest,
            LbPolicy::Random,
            LbPolicy::RingHash,
            LbPolicy::Maglev,
        ] {
            assert!(
                load_balancer(&with_health(policy), at).is_ok(),
                "{policy:?}"
            );
        }
    }

    /// A route's hash policies in order, header names lower-cased; a connection policy
    /// without `source_ip` adds none; empty names are NACKed.
    #[test]
    fn hash_policies_translate_in_order() {
        use route_pb::route_action::hash_policy::{
            ConnectionProperties, Cookie, Header, PolicySpecifier, QueryParameter,
        };
        use route_pb::route_action::HashPolicy as Pb;
        let policy = |p, terminal| Pb {
            policy_specifier: Some(p),
            terminal,
        };
        let header = |name: &str| {
            PolicySpecifier::Header(Header {
                header_name: name.into(),
                ..Default::default()
            })
        };
        let policies = [
            policy(header("X-User"), false),
            policy(
                PolicySpecifier::Cookie(Cookie {
                    name: "session_id".into(),
                    ..Default::default()
                }),
                true,
            ),
            policy(
                PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: false }),
                false,
            ),
            policy(
                PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true }),
                false,
            ),
            policy(
                PolicySpecifier::QueryParameter(QueryParameter { name: "u".into() }),
                false,
            ),
            policy(header(""), false),
        ];
        let mut problems = Vec::new();
        let out = hash_policies(&policies, "r.hash_policy", &mut problems);
        let sources: Vec<_> = out.iter().map(|p| (p.source.clone(), p.terminal)).collect();
        assert_eq!(
            sources,
            [
                (HashSource::Header("x-user".into()), false),
                (HashSource::Cookie("session_id".into()), true),
                (HashSource::SourceIp, false),
                (HashSource::QueryParameter("u".into()), false),
            ]
        );
        assert_eq!(fields(problems), ["r.hash_policy[5].header.header_name"]);
    }

    /// A cookie policy with a `ttl` generates its cookie (whole seconds as `Max-Age`, path
    /// and attributes kept); without one, its path has no effect; a filter-state policy
    /// keeps its place (and `terminal`); a negative `ttl`, an empty key or attribute name,
    /// text no header can hold and more than 64 policies are NACKed by path.
    #[test]
    fn generated_cookies_and_filter_state_policies_translate() {
        use envoy_types::pb::google::protobuf::Duration;
        use route_pb::route_action::hash_policy::PolicySpecifier;
        use route_pb::route_action::hash_policy::{Cookie, CookieAttribute, FilterState};
        use route_pb::route_action::HashPolicy as Pb;
        let cookie = |ttl: Option<i64>, path: &str, attributes: &[(&str, &str)]| Pb {
            policy_specifier: Some(PolicySpecifier::Cookie(Cookie {
                name: "sid".into(),
                ttl: ttl.map(|seconds| Duration {
                    seconds,
                    nanos: 500,
                }),
                path: path.into(),
                attributes: attributes
                    .iter()
                    .map(|(name, value)| CookieAttribute {
                        name: (*name).into(),
                        value: (*value).into(),
                    })
                    .collect(),
            })),
            terminal: false,
        };
        let state = |key: &str| Pb {
            policy_specifier: Some(PolicySpecifier::FilterState(FilterState {
                key: key.into(),
            })),
            terminal: true,
        };
        let policies = [
            cookie(Some(3600), "/", &[("SameSite", "Lax")]),
            cookie(None, "/ignored", &[]),
            state("kuma.mesh_rate_limit.match.spiffe_id"),
        ];
        let mut problems = Vec::new();
        let out = hash_policies(&policies, "r", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let sources: Vec<_> = out.iter().map(|p| (p.source.clone(), p.terminal)).collect();
        let generated = GeneratedCookie {
            name: "sid".into(),
            max_age: 3600,
            path: "/".into(),
            attributes: vec![("SameSite".into(), "Lax".into())],
        };
        assert_eq!(
            sources,
            [
                (HashSource::GeneratedCookie(generated), false),
                (HashSource::Cookie("sid".into()), false),
                (
                    HashSource::FilterState("kuma.mesh_rate_limit.match.spiffe_id".into()),
                    true
                ),
            ]
        );
        let refused = [
            cookie(Some(-1), "", &[]),
            state(""),
            cookie(Some(1), "/a\nb", &[("", "x")]),
        ];
        let mut problems = Vec::new();
        assert_eq!(hash_policies(&refused, "r", &mut problems).len(), 0);
        assert_eq!(
            fields(problems),
            [
                "r[0].cookie.ttl",
                "r[1].filter_state.key",
                "r[2].cookie.attributes[0].name",
                "r[2].cookie.path",
            ]
        );
        let many = vec![state("k"); MAX_HASH_POLICIES + 1];
        let mut problems = Vec::new();
        assert!(hash_policies(&many, "r", &mut problems).is_empty());
        assert_eq!(fields(problems), ["r"]);
    }

    #[test]
    fn primes_are_told_apart() {
        let primes: Vec<u64> = (0..30).filter(|n| is_prime(*n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65537));
        assert!(!is_prime(65536));
    }
}

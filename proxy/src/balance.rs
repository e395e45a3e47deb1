//! Load balancing (kuma-cp's MeshLoadBalancingStrategy, Envoy's `lb_policy`): which endpoint
//! of a cluster's serving priority level a connection or request goes to first.
//!
//! A [`Picker`] is made when a cluster's endpoints are applied (a config, or a DNS answer
//! that changed them), over the endpoints of the level that serves (`crate::priority`), so
//! a pick costs no allocation or lock: round robin is the cluster's relaxed counter, as
//! before; least request draws `choice_count` endpoints and takes the first with the fewest
//! active requests (the pools' relaxed counters, kept only under this policy); random draws
//! one; ring hash and Maglev look a request's hash up in a ring or table built here, a
//! request without a hash (no route hash policy read anything, a TCP connection) drawing a
//! random one, as Envoy does. The ring and the table are Envoy's, byte for byte: the same
//! xxHash64 keys (the endpoint's address as `ip:port`, or its `envoy.lb` `hash_key`), ring
//! sizes, permutations and lookups, so a hash picks the same endpoint as Envoy 1.40 given
//! the same endpoints in the same order.
//!
//! Endpoint weights (`Endpoint::weight`) count as in Envoy: round robin over different
//! weights follows Envoy's EDF scheduler ([`Schedule`]: one cycle of its picks, computed
//! here, walked by the cluster's counter); the ring gives each endpoint points in proportion
//! to its normalised weight and Maglev's table lets an endpoint claim a slot on a turn only
//! as often as its weight allows (both Envoy's arithmetic); least request over different
//! weights is Envoy's EDF over weight / (active requests + 1) ([`LoadSchedule`]); random
//! ignores weights, as Envoy's does. A level whose weights are all equal is balanced exactly
//! as without weights. Several weighted localities in a level ([`Localities`]) pick a
//! locality by Envoy's EDF over their weights (each scaled by its availability under a
//! health signal), then an endpoint of it by the policy.
//!
//! Only the start is chosen here: the order of further attempts (the rest of the level,
//! for a connect that fails over) is `crate::upstream::Rotation`'s.

use std::cmp::Ordering as Order;
use std::collections::{BTreeMap, BinaryHeap};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bearing_proxy_config::{Endpoint, LoadBalancer, LocalityWeight, RingHashFunction};
use xxhash_rust::xxh64::xxh64;

/// The `envoy.lb` metadata key that replaces an endpoint's address as its hash key.
const HASH_KEY: &str = "hash_key";

/// How a cluster picks the first endpoint of a connection or request among its serving
/// level.
pub(crate) enum Picker {
    /// Each endpoint in turn.
    RoundRobin,
    /// Endpoints of different weights in Envoy's EDF order.
    Weighted(Schedule),
    /// A weighted locality in Envoy's EDF order, then an endpoint of it by the policy.
    Localities(Localities),
    /// The least loaded of `choice_count` random endpoints.
    LeastRequest { choice_count: usize },
    /// Endpoints of different weights by Envoy's EDF over weight / (active requests +
    /// 1)^bias.
    WeightedLeast(LoadSchedule),
    /// A random endpoint.
    Random,
    /// The ring point at or after the request's hash.
    Ring(Ring),
    /// The table slot of the request's hash.
    Maglev(Maglev),
}

impl Picker {
    /// The picker of `balancer` over `serving`, the endpoints of the serving level in their
    /// order; a ring or table is built here.
    pub(crate) fn new(balancer: &LoadBalancer, serving: &[Endpoint]) -> Picker {
        Picker::with_availability(balancer, serving, &|_| 1.0)
    }

    /// [`Picker::new`] where each weighted locality (by its order) is `availability`
    /// available (0 to 1), which scales its weight (a health plan's level, `crate::priority`).
    pub(crate) fn with_availability(
        balancer: &LoadBalancer,
        serving: &[Endpoint],
        availability: &dyn Fn(u32) -> f64,
    ) -> Picker {
        // A ring or table folds locality weights into its hosts' (`hash_hosts`).
        let localities = match balancer.is_consistent_hashing() {
            true => None,
            false => Localities::of(balancer, serving, availability),
        };
        if let Some(localities) = localities {
            return Picker::Localities(localities);
        }
        Picker::by_policy(balancer, serving, None)
    }

    /// The ring or table of `balancer` (ring hash or Maglev) over `eligible`, the eligible
    /// hosts of a level whose localities' weights sum to `locality_total` (with localities
    /// left without an eligible host: Envoy's `normalizeLocalityWeights` sums them all).
    pub(crate) fn hashing(
        balancer: &LoadBalancer,
        eligible: &[Endpoint],
        locality_total: u64,
    ) -> Picker {
        Picker::by_policy(balancer, eligible, Some(locality_total))
    }

    /// The picker of `balancer`'s policy over `serving`, without locality picks; a ring's or
    /// table's localities' weights sum to `locality_total` (`None`: those of `serving`).
    fn by_policy(
        balancer: &LoadBalancer,
        serving: &[Endpoint],
        locality_total: Option<u64>,
    ) -> Picker {
        match *balancer {
            LoadBalancer::RoundRobin if equal_weights(serving) => Picker::RoundRobin,
            LoadBalancer::RoundRobin => Picker::Weighted(Schedule::new(&weights(serving))),
            LoadBalancer::LeastRequest {
                active_request_bias,
                ..
            } if !equal_weights(serving) => Picker::WeightedLeast(LoadSchedule::new(
                &serving
                    .iter()
                    .map(|e| f64::from(e.weight))
                    .collect::<Vec<_>>(),
                active_request_bias.get(),
            )),
            LoadBalancer::LeastRequest { choice_count, .. } => Picker::LeastRequest {
                choice_count: choice_count as usize,
            },
            LoadBalancer::Random => Picker::Random,
            LoadBalancer::RingHash {
                minimum_ring_size,
                maximum_ring_size,
                hash_function,
            } => Picker::Ring(Ring::new(
                &hash_hosts(serving, locality_total),
                (minimum_ring_size, maximum_ring_size),
                hash_function,
            )),
            LoadBalancer::Maglev { table_size } => Picker::Maglev(Maglev::new(
                &hash_hosts(serving, locality_total),
                table_size,
            )),
        }
    }

    /// Whether it hashes requests onto a ring or table (ring hash, Maglev).
    pub(crate) fn is_consistent_hashing(&self) -> bool {
        matches!(self, Picker::Ring(_) | Picker::Maglev(_))
    }

    /// Whether picks count the endpoints' active requests (least request).
    pub(crate) fn counts_requests(&self) -> bool {
        match self {
            Picker::LeastRequest { .. } | Picker::WeightedLeast(_) => true,
            Picker::Localities(l) => l.members.iter().any(|m| m.1.counts_requests()),
            _ => false,
        }
    }

    /// The index, among the `n` serving endpoints, of the first one to try: `turn` is the
    /// cluster's round robin counter, `hash` the request's (`None`: none), `active` an
    /// endpoint's active requests; `attempt`: how many picks of this selection a retry host
    /// predicate rejected before (Envoy's consistent hashing moves on from its pick by it).
    /// `n` is at least 1.
    pub(crate) fn start(
        &self,
        (n, attempt): (usize, u32),
        turn: &AtomicUsize,
        hash: Option<u64>,
        active: impl Fn(usize) -> u32,
    ) -> usize {
        match self {
            Picker::RoundRobin => turn.fetch_add(1, Ordering::Relaxed) % n,
            Picker::Weighted(schedule) => schedule.pick(turn.fetch_add(1, Ordering::Relaxed)),
            Picker::Localities(localities) => localities.start(attempt, turn, hash, &active),
            Picker::LeastRequest { choice_count } => least_request(n, *choice_count, active),
            Picker::WeightedLeast(schedule) => schedule.pick(active),
            Picker::Random => random_below(n),
            Picker::Ring(ring) => ring
                .pick(hash.unwrap_or_else(rand::random), attempt)
                .unwrap_or(0),
            Picker::Maglev(table) => table
                .pick(hash.unwrap_or_else(rand::random), attempt)
                .unwrap_or(0),
        }
    }
}

/// Whether `balancer`'s picks over `endpoints` depend on which endpoints are eligible (a
/// ring, a table, a round robin or least request schedule over different weights), so that
/// a health plan keeps a picker per level over its eligible hosts.
pub(crate) fn picks_by_endpoints(balancer: &LoadBalancer, endpoints: &[Endpoint]) -> bool {
    balancer.is_consistent_hashing()
        || (matches!(
            balancer,
            LoadBalancer::RoundRobin | LoadBalancer::LeastRequest { .. }
        ) && !equal_weights(endpoints))
        || endpoints
            .windows(2)
            .any(|w| w[0].priority == w[1].priority && w[0].locality != w[1].locality)
}

/// Whether `endpoints` all have the same weight (Envoy then balances them unweighted).
pub(crate) fn equal_weights(endpoints: &[Endpoint]) -> bool {
    endpoints.windows(2).all(|w| w[0].weight == w[1].weight)
}

/// Each endpoint's weight.
fn weights(endpoints: &[Endpoint]) -> Vec<u32> {
    endpoints.iter().map(|e| e.weight).collect()
}

/// Envoy's weighted round robin: the picks of its EDF scheduler (`EdfScheduler`) over the
/// endpoints' weights, one cycle of them (each endpoint as often as its weight), walked by
/// the cluster's counter. Envoy's scheduler starts fresh as `createWithPicks` makes it,
/// with each entry's weight raised by 1e-13, deadline `1 / weight` and ties going to the
/// entry queued first; a pick moves the clock to the picked deadline and queues the entry
/// again at `clock + 1 / weight`. After a cycle every endpoint was picked its weight's
/// number of times and the deadlines stand where they started, one unit of time later, so
/// the cycle repeats. (Envoy starts each worker at a random number of picks into it.)
pub(crate) struct Schedule {
    /// Endpoint indices in pick order.
    order: Box<[u32]>,
}

/// An entry of the EDF queue: its deadline, then its order of queueing, as Envoy's
/// `EdfEntry` compares them (the earliest first).
struct Due(f64, u64, u32);

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Order::Equal
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Order> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    /// Reversed, so that `BinaryHeap` pops the earliest deadline, then the first queued.
    fn cmp(&self, other: &Self) -> Order {
        other
            .0
            .total_cmp(&self.0)
            .then_with(|| other.1.cmp(&self.1))
    }
}

impl Schedule {
    /// The cycle of Envoy's EDF picks over endpoints of `weights` (each 1 or more).
    pub(crate) fn new(weights: &[u32]) -> Schedule {
        let cycle: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        let mut queue: BinaryHeap<Due> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| Due(1.0 / (f64::from(*w) + 1e-13), i as u64, i as u32))
            .collect();
        let mut queued = weights.len() as u64;
        let mut order = Vec::with_capacity(cycle as usize);
        while (order.len() as u64) < cycle {
            let Some(Due(deadline, _, index)) = queue.pop() else {
                break;
            };
            order.push(index);
            let weight = weights.get(index as usize).map_or(1, |w| *w);
            queue.push(Due(deadline + 1.0 / f64::from(weight), queued, index));
            queued += 1;
        }
        Schedule {
            order: order.into_boxed_slice(),
        }
    }

    /// The endpoint of the `turn`th pick.
    fn pick(&self, turn: usize) -> usize {
        match self.order.len() {
            0 => 0,
            n => self.order[turn % n] as usize,
        }
    }
}

/// Envoy's least request over endpoints of different weights: its EDF scheduler where a
/// picked endpoint is queued again with the weight `weight / (active requests + 1)^bias`
/// (`active_request_bias`, computed as Envoy's `hostWeight`: 1 divides, 0 leaves the weight
/// alone), its active requests read as it is picked. The queue is
/// each endpoint's deadline in an atomic (as `f64` bits), starting as Envoy's fresh
/// `createWithPicks` sets it (`1 / (weight + 1e-13)`): a pick takes the earliest deadline
/// (the first endpoint on a tie, where Envoy takes the first queued), moves the clock there
/// and sets that endpoint's next deadline with a compare-and-swap, scanning again if another
/// pick moved it first. Lock- and allocation-free; a scan of the level per pick, where Envoy
/// pops a heap per worker.
pub(crate) struct LoadSchedule {
    /// Per endpoint: its weight and its deadline's bits.
    entries: Box<[(f64, AtomicU64)]>,
    /// The active request bias (0 or more).
    bias: f64,
}

impl LoadSchedule {
    /// The schedule of endpoints of `weights` (each above 0) under active request bias
    /// `bias`.
    pub(crate) fn new(weights: &[f64], bias: f64) -> LoadSchedule {
        let entries = weights
            .iter()
            .map(|w| {
                let deadline = 1.0 / (*w + 1e-13);
                (*w, AtomicU64::new(deadline.to_bits()))
            })
            .collect();
        LoadSchedule { entries, bias }
    }

    /// Envoy's `hostWeight`: `weight` scaled down by `active` requests as the bias asks.
    fn load(&self, weight: f64, active: u32) -> f64 {
        let requests = f64::from(active) + 1.0;
        if self.bias == 1.0 {
            weight / requests
        } else if self.bias != 0.0 {
            weight / requests.powf(self.bias)
        } else {
            weight
        }
    }

    /// The endpoint of the next pick; `active` gives an endpoint's active requests.
    fn pick(&self, active: impl Fn(usize) -> u32) -> usize {
        loop {
            let mut earliest: Option<(usize, u64, f64)> = None;
            for (i, (_, deadline)) in self.entries.iter().enumerate() {
                let bits = deadline.load(Ordering::Relaxed);
                let at = f64::from_bits(bits);
                if earliest.is_none_or(|(_, _, best)| at < best) {
                    earliest = Some((i, bits, at));
                }
            }
            let Some((i, bits, at)) = earliest else {
                return 0;
            };
            let (weight, deadline) = &self.entries[i];
            let load = self.load(*weight, active(i));
            let next = (at + 1.0 / load).to_bits();
            if deadline
                .compare_exchange(bits, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return i;
            }
        }
    }
}

/// Envoy's locality-weighted balancing (`locality_weighted_lb_config`) over a level of
/// several weighted localities: a locality is picked by Envoy's EDF scheduler over the
/// localities' effective weights (its `chooseHealthyLocality`: a locality's weight times its
/// availability), then an endpoint of it by the cluster's policy with the locality's own
/// counter (Envoy keeps a round robin index per locality).
pub(crate) struct Localities {
    /// The localities' schedule.
    schedule: LocalitySchedule,
    /// Per locality: its endpoints' index range in the level, its picker, its counter.
    members: Box<[(Range<usize>, Picker, AtomicUsize)]>,
}

impl Localities {
    /// The localities of `serving` (each a run of endpoints of one `Endpoint::locality`),
    /// each `availability` available (by its order), when there are several; `None` for
    /// one or none. Localities with no availability take no traffic (Envoy leaves them out
    /// of its scheduler).
    fn of(
        balancer: &LoadBalancer,
        serving: &[Endpoint],
        availability: &dyn Fn(u32) -> f64,
    ) -> Option<Localities> {
        let mut runs: Vec<(Range<usize>, LocalityWeight)> = Vec::new();
        for (i, endpoint) in serving.iter().enumerate() {
            let locality = endpoint.locality?;
            match runs.last_mut() {
                Some((range, _)) if serving[range.start].locality == Some(locality) => {
                    range.end = i + 1
                }
                _ => runs.push((i..i + 1, locality)),
            }
        }
        // Envoy's scheduler takes the localities in its order (by name), which breaks ties.
        runs.sort_by_key(|(_, locality)| locality.order);
        let available: Vec<f64> = runs.iter().map(|(_, l)| availability(l.order)).collect();
        let mut weighted: Vec<((Range<usize>, LocalityWeight), f64)> = runs
            .into_iter()
            .zip(available)
            .filter(|(_, a)| *a > 0.0)
            .collect();
        if weighted.len() < 2 {
            return None;
        }
        let schedule = match weighted.iter().all(|(_, a)| *a >= 1.0) {
            true => LocalitySchedule::Cycle(Schedule::new(
                &weighted
                    .iter()
                    .map(|((_, l), _)| l.weight)
                    .collect::<Vec<_>>(),
            )),
            false => LocalitySchedule::Scaled(LoadSchedule::new(
                &weighted
                    .iter()
                    .map(|((_, l), a)| f64::from(l.weight) * a)
                    .collect::<Vec<_>>(),
                0.0,
            )),
        };
        let members = weighted
            .drain(..)
            .map(|((range, _), _)| {
                let picker = Picker::new(balancer, &serving[range.clone()]);
                (range, picker, AtomicUsize::new(0))
            })
            .collect();
        Some(Localities { schedule, members })
    }

    /// The index in the level of the endpoint a connection or request starts with
    /// (`active`: an endpoint's active requests, by its index in the level; `attempt` as
    /// [`Picker::start`]'s).
    fn start(
        &self,
        attempt: u32,
        turn: &AtomicUsize,
        hash: Option<u64>,
        active: &dyn Fn(usize) -> u32,
    ) -> usize {
        let locality = match &self.schedule {
            LocalitySchedule::Cycle(cycle) => cycle.pick(turn.fetch_add(1, Ordering::Relaxed)),
            LocalitySchedule::Scaled(scaled) => scaled.pick(|_| 0),
        };
        let Some((range, picker, own)) = self.members.get(locality) else {
            return 0;
        };
        // A locality's picker is never `Localities` (its endpoints are of one locality).
        let local = |i| active(range.start + i);
        range.start + picker.start((range.len(), attempt), own, hash, local)
    }
}

/// How [`Localities`] picks a locality: every locality whole, the cycle of Envoy's EDF picks
/// over their integer weights walked by the cluster's counter ([`Schedule`]); some partly
/// available, Envoy's EDF over the fractional effective weights run as picks come
/// ([`LoadSchedule`] without a bias).
enum LocalitySchedule {
    Cycle(Schedule),
    Scaled(LoadSchedule),
}

/// A random index below `n` (at least 1), as Envoy's `random() % n`.
fn random_below(n: usize) -> usize {
    (rand::random::<u64>() % n as u64) as usize
}

/// Envoy's least request pick among endpoints of equal weight (its `N_CHOICES`):
/// `choice_count` endpoints drawn at random (with replacement), the first drawn with the
/// fewest active requests winning.
fn least_request(n: usize, choice_count: usize, active: impl Fn(usize) -> u32) -> usize {
    let mut best = random_below(n);
    for _ in 1..choice_count {
        let sampled = random_below(n);
        if active(sampled) < active(best) {
            best = sampled;
        }
    }
    best
}

/// Each endpoint's hash key: its `envoy.lb` `hash_key`, else its address as Envoy writes it
/// (`10.0.0.1:80`, `[::1]:80`).
fn hash_keys(endpoints: &[Endpoint]) -> Vec<String> {
    endpoints
        .iter()
        .map(|e| match e.tags.get(HASH_KEY).filter(|k| !k.is_empty()) {
            Some(key) => key.clone(),
            None => e.address.to_string(),
        })
        .collect()
}

/// A host of a ring or table: its index in the level, its hash key, its normalised weight.
pub(crate) type HashHost = (u32, String, f64);

/// The hosts of a ring or table over `endpoints` (a level) in Envoy's order with their
/// normalised weights (its `normalizeWeights`): each endpoint in the level's order with
/// `weight / sum`; under locality weighting (every endpoint weighted by its locality),
/// the localities in Envoy's order (`LocalityWeight::order`), each endpoint
/// `weight * (locality weight / sum of them) / sum of its locality's weights`, the sum of
/// the localities' weights being `locality_total` when given (a level's eligible hosts:
/// the weights of its localities without one count too, as in Envoy, so the weights left
/// sum to less than 1 and the ring is sized over them).
fn hash_hosts(endpoints: &[Endpoint], locality_total: Option<u64>) -> Vec<HashHost> {
    let keys = hash_keys(endpoints);
    let localities: Option<Vec<LocalityWeight>> = endpoints.iter().map(|e| e.locality).collect();
    let Some(localities) = localities.filter(|l| !l.is_empty()) else {
        let normalized = normalize(&weights(endpoints));
        return (0u32..)
            .zip(keys)
            .zip(normalized)
            .map(|((i, k), w)| (i, k, w))
            .collect();
    };
    let mut order: Vec<usize> = (0..endpoints.len()).collect();
    order.sort_by_key(|i| localities[*i].order);
    // Per locality (by order): its weight and the sum of its endpoints' weights.
    let mut sums: BTreeMap<u32, (u32, u64)> = BTreeMap::new();
    for (e, l) in endpoints.iter().zip(&localities) {
        sums.entry(l.order).or_insert((l.weight, 0)).1 += u64::from(e.weight);
    }
    let total = locality_total.unwrap_or_else(|| sums.values().map(|(w, _)| u64::from(*w)).sum());
    order
        .into_iter()
        .map(|i| {
            let (weight, hosts) = sums[&localities[i].order];
            let share = f64::from(weight) / total as f64;
            let normalized = f64::from(endpoints[i].weight) * share / hosts as f64;
            (i as u32, keys[i].clone(), normalized)
        })
        .collect()
}

/// Envoy's ring hash (ketama): each endpoint's points are the hash (xxHash64, or
/// MurmurHash2) of `<key>_<i>`, sorted; a hash goes to the first point at or after it,
/// wrapping round.
pub(crate) struct Ring {
    /// (point, endpoint index), sorted by point.
    points: Box<[(u64, u32)]>,
}

impl Ring {
    /// The ring of `hosts` (in Envoy's order), sized as Envoy sizes it:
    /// `min(ceil(w * minimum) / w, maximum)` points for the smallest normalised weight `w`,
    /// shared out by running sums of each host's normalised weight, each point hashed by
    /// `function`.
    pub(crate) fn new(
        hosts: &[HashHost],
        (minimum, maximum): (u64, u64),
        function: RingHashFunction,
    ) -> Ring {
        let Some(smallest) = hosts.iter().map(|h| h.2).reduce(f64::min) else {
            return Ring {
                points: Box::new([]),
            };
        };
        let scale = ((smallest * minimum as f64).ceil() / smallest).min(maximum as f64);
        let mut points = Vec::with_capacity(scale.ceil() as usize);
        let (mut current, mut target) = (0.0f64, 0.0f64);
        let mut key = Vec::new();
        for (index, host, weight) in hosts {
            target += scale * weight;
            let mut i: u64 = 0;
            while current < target {
                key.clear();
                key.extend_from_slice(host.as_bytes());
                key.push(b'_');
                key.extend_from_slice(i.to_string().as_bytes());
                let point = match function {
                    RingHashFunction::XxHash => xxh64(&key, 0),
                    RingHashFunction::MurmurHash2 => murmur_hash2(&key, STD_HASH_SEED),
                };
                points.push((point, *index));
                i += 1;
                current += 1.0;
            }
        }
        points.sort_unstable_by_key(|(point, _)| *point);
        Ring {
            points: points.into_boxed_slice(),
        }
    }

    /// The endpoint of hash `h`: Envoy's port of ketama's binary search (the first point
    /// `p` with `previous < h <= p`, the first point past the last), moved on by `attempt`
    /// points as Envoy's ring does for a pick a retry host predicate rejected; `None` for no
    /// points.
    pub(crate) fn pick(&self, h: u64, attempt: u32) -> Option<usize> {
        let ring = &self.points;
        let size = ring.len() as i64;
        if size == 0 {
            return None;
        }
        let (mut low, mut high) = (0i64, size);
        let mid = loop {
            let mid = (low + high) / 2;
            if mid == size {
                break 0;
            }
            let value = ring[mid as usize].0;
            let before = if mid == 0 {
                0
            } else {
                ring[mid as usize - 1].0
            };
            if h <= value && h > before {
                break mid;
            }
            if value < h {
                low = mid + 1;
            } else {
                high = mid - 1;
            }
            if low > high {
                break low;
            }
        };
        let index = (mid as usize).wrapping_add(attempt as usize) % ring.len();
        ring.get(index).map(|p| p.1 as usize)
    }
}

/// Each weight over their sum, as Envoy's `normalizeHostWeights` computes it.
fn normalize(weights: &[u32]) -> Vec<f64> {
    let sum: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    weights.iter().map(|w| f64::from(*w) / sum as f64).collect()
}

/// The seed Envoy gives MurmurHash2 (libstdc++'s `std::hash` of a string).
const STD_HASH_SEED: u64 = 0xc70f_6907;

/// 64-bit MurmurHash2 as libstdc++'s `_Hash_bytes` and Envoy's `MurmurHash::murmurHash2`:
/// little-endian 8-byte words, then the tail's bytes as one little-endian number.
fn murmur_hash2(key: &[u8], seed: u64) -> u64 {
    const MUL: u64 = 0xc6a4_a793_5bd1_e995;
    let shift_mix = |v: u64| v ^ (v >> 47);
    let mut hash = seed ^ (key.len() as u64).wrapping_mul(MUL);
    let mut words = key.chunks_exact(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let data = shift_mix(u64::from_le_bytes(bytes).wrapping_mul(MUL)).wrapping_mul(MUL);
        hash ^= data;
        hash = hash.wrapping_mul(MUL);
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let data = tail
            .iter()
            .rev()
            .fold(0u64, |acc, b| (acc << 8) + u64::from(*b));
        hash ^= data;
        hash = hash.wrapping_mul(MUL);
    }
    shift_mix(shift_mix(hash).wrapping_mul(MUL))
}

/// Envoy's Maglev table: each endpoint's permutation of the slots starts at `xxHash64(key)
/// mod M` and steps by `xxHash64(key, seed 1) mod (M - 1) + 1`; the endpoints take turns
/// claiming their next free slot until the table is full, an endpoint of normalised weight
/// `w` taking the turn of round `r` only while `r * w` has reached its target (raised by the
/// largest normalised weight at each claim), so it claims in proportion to its weight; a
/// hash goes to slot `h mod M`.
pub(crate) struct Maglev {
    table: Box<[u32]>,
}

impl Maglev {
    /// The table of `size` slots (a prime) over `hosts` (in Envoy's order).
    pub(crate) fn new(hosts: &[HashHost], size: u64) -> Maglev {
        const EMPTY: u32 = u32::MAX;
        let Some(largest) = hosts.iter().map(|h| h.2).reduce(f64::max) else {
            return Maglev {
                table: Box::new([]),
            };
        };
        if size < 2 {
            return Maglev {
                table: Box::new([]),
            };
        }
        let mut table = vec![EMPTY; size as usize];
        // (offset, skip, next, normalised weight, target, index in the level) per host.
        let mut entries: Vec<(u64, u64, u64, f64, f64, u32)> = hosts
            .iter()
            .map(|(index, k, w)| {
                let offset = xxh64(k.as_bytes(), 0) % size;
                let skip = xxh64(k.as_bytes(), 1) % (size - 1) + 1;
                (offset, skip, 0, *w, 0.0, *index)
            })
            .collect();
        let mut filled = 0;
        let mut round: u32 = 1;
        while filled < size {
            for (offset, skip, next, weight, target, index) in entries.iter_mut() {
                if filled == size {
                    break;
                }
                if f64::from(round) * *weight < *target {
                    continue;
                }
                *target += largest;
                let mut slot = (*offset + *skip * *next) % size;
                while table[slot as usize] != EMPTY {
                    *next += 1;
                    slot = (*offset + *skip * *next) % size;
                }
                table[slot as usize] = *index;
                *next += 1;
                filled += 1;
            }
            round += 1;
        }
        Maglev {
            table: table.into_boxed_slice(),
        }
    }

    /// The endpoint of hash `h`; `None` for an empty table. A pick a retry host predicate
    /// rejected `attempt` times before takes `h` XOR `2⁶⁴ − attempt`, as Envoy's table.
    pub(crate) fn pick(&self, h: u64, attempt: u32) -> Option<usize> {
        let h = match attempt {
            0 => h,
            a => h ^ u64::from(a).wrapping_neg(),
        };
        let slot = h.checked_rem(self.table.len() as u64)?;
        self.table.get(slot as usize).map(|i| *i as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XX: RingHashFunction = RingHashFunction::XxHash;

    fn least(choice_count: u32, bias: f64) -> LoadBalancer {
        LoadBalancer::LeastRequest {
            choice_count,
            active_request_bias: bearing_proxy_config::ActiveRequestBias::new(bias),
        }
    }

    /// `keys` of `weights` in their order, as a ring's or table's hosts.
    fn flat(keys: &[String], weights: &[u32]) -> Vec<HashHost> {
        let normalized = normalize(weights);
        (0u32..)
            .zip(keys.iter().cloned())
            .zip(normalized)
            .map(|((i, k), w)| (i, k, w))
            .collect()
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{}:80", i + 1)).collect()
    }

    /// How many of `hashes` each endpoint of `pick` gets.
    fn spread(n: usize, pick: impl Fn(u64) -> Option<usize>) -> Vec<usize> {
        let mut counts = vec![0; n];
        for i in 0..20_000u64 {
            counts[pick(xxh64(&i.to_le_bytes(), 7)).unwrap()] += 1;
        }
        counts
    }

    /// Envoy's ring sizes: 100..10000 over 3 endpoints gives ceil(100/3)*3 = 102 points, 34
    /// each; the default bounds give 1024 over 2 (512 each); the maximum caps it.
    #[test]
    fn rings_are_sized_as_envoys() {
        let ring = Ring::new(
            &flat(&keys(3), &[1; 3]),
            (100, 10_000),
            RingHashFunction::XxHash,
        );
        assert_eq!(ring.points.len(), 102);
        for e in 0..3 {
            assert_eq!(ring.points.iter().filter(|p| p.1 == e).count(), 34);
        }
        assert_eq!(
            Ring::new(
                &flat(&keys(2), &[1; 2]),
                (1024, 8 << 20),
                RingHashFunction::XxHash
            )
            .points
            .len(),
            1024
        );
        assert_eq!(
            Ring::new(
                &flat(&keys(3), &[1; 3]),
                (1024, 500),
                RingHashFunction::XxHash
            )
            .points
            .len(),
            500
        );
        assert!(ring.points.windows(2).all(|w| w[0].0 <= w[1].0));
        // The points are xxHash64 of `<address>_<i>`.
        let first: Vec<u64> = ring
            .points
            .iter()
            .filter(|p| p.1 == 0)
            .map(|p| p.0)
            .collect();
        assert!(first.contains(&xxh64(b"10.0.0.1:80_0", 0)));
        assert!(first.contains(&xxh64(b"10.0.0.1:80_33", 0)));
    }

    /// MurmurHash2 is libstdc++'s `std::hash<std::string>` (values printed by g++ 12's).
    #[test]
    fn murmur_hash2_is_libstdcxx_std_hash() {
        let std_hash = |s: &str| murmur_hash2(s.as_bytes(), STD_HASH_SEED);
        assert_eq!(std_hash(""), 6142509188972423790);
        assert_eq!(std_hash("hello"), 2762169579135187400);
        assert_eq!(std_hash("10.0.0.1:80_0"), 13659246566588789388);
    }

    /// A hash goes to the first point at or after it, past the last to the first.
    #[test]
    fn a_ring_hash_takes_the_next_point_round_the_ring() {
        let ring = Ring::new(&flat(&keys(4), &[1; 4]), (64, 64), RingHashFunction::XxHash);
        let points = &ring.points;
        for (i, (point, endpoint)) in points.iter().enumerate() {
            assert_eq!(ring.pick(*point, 0), Some(*endpoint as usize));
            if i > 0 && points[i - 1].0 + 1 < *point {
                assert_eq!(ring.pick(points[i - 1].0 + 1, 0), Some(*endpoint as usize));
            }
        }
        // Past the last point (xxHash64 leaves room above it): the first.
        assert!(points[points.len() - 1].0 < u64::MAX);
        assert_eq!(ring.pick(u64::MAX, 0), Some(points[0].1 as usize));
        assert_eq!(ring.pick(0, 0), Some(points[0].1 as usize));
        assert_eq!(
            Ring::new(&flat(&[], &[]), (64, 64), RingHashFunction::XxHash).pick(5, 0),
            None
        );
    }

    /// Maglev's table is filled by turns over the permutations: every slot taken, each
    /// endpoint owning size/n slots or one more; Envoy's first choice for each endpoint is
    /// its offset.
    #[test]
    fn maglev_tables_are_filled_by_turns() {
        let table = Maglev::new(&flat(&keys(3), &[1; 3]), 17);
        assert_eq!(table.table.len(), 17);
        let owned: Vec<usize> = (0..3)
            .map(|e| table.table.iter().filter(|i| **i == e).count())
            .collect();
        assert_eq!(owned.iter().sum::<usize>(), 17);
        assert!(owned.iter().all(|n| *n == 5 || *n == 6), "{owned:?}");
        let offset = (xxh64(b"10.0.0.1:80", 0) % 17) as usize;
        assert_eq!(table.table[offset], 0);
        assert_eq!(table.pick(offset as u64 + 17 * 1000, 0), Some(0));
    }

    /// A pick a retry host predicate rejected moves on as Envoy's: the ring by `attempt`
    /// points from the hash's (wrapping round), Maglev to the slot of the hash XOR
    /// `2⁶⁴ − attempt`.
    #[test]
    fn a_rejected_pick_moves_on_as_envoys_consistent_hashing() {
        let ring = Ring::new(&flat(&keys(3), &[1; 3]), (64, 64), XX);
        let points = &ring.points;
        let h = points[10].0;
        for attempt in 0..3u32 {
            let at = points[10 + attempt as usize].1 as usize;
            assert_eq!(ring.pick(h, attempt), Some(at));
        }
        let last = points.len() - 1;
        assert_eq!(ring.pick(points[last].0, 2), Some(points[1].1 as usize));
        let table = Maglev::new(&flat(&keys(3), &[1; 3]), 17);
        for (h, attempt) in [(5u64, 1u32), (1000, 2), (u64::MAX, 7)] {
            let moved = h ^ (u64::MAX - u64::from(attempt) + 1);
            assert_eq!(table.pick(h, attempt), table.pick(moved, 0));
        }
        assert_eq!(table.pick(5, 0), Some(table.table[5] as usize));
    }

    /// Consistent hashing: the same hash always picks the same endpoint; both spread hashes
    /// evenly; removing one endpoint moves only the hashes it had on a ring whose endpoints
    /// keep their points (here 256 each: Envoy resizes a ring to keep its minimum size, and
    /// the points an endpoint gains then take some hashes too), and on Maglev's table the
    /// removed share and a few more.
    #[test]
    fn consistent_hashing_moves_only_the_removed_endpoints_share() {
        let all = keys(4);
        let fewer: Vec<String> = all.iter().filter(|k| *k != &all[2]).cloned().collect();
        let (ring, ring3) = (
            Ring::new(&flat(&all, &[1; 4]), (1024, 1024), XX),
            Ring::new(&flat(&fewer, &[1; 3]), (768, 768), XX),
        );
        let (maglev, maglev3) = (
            Maglev::new(&flat(&all, &[1; 4]), 65537),
            Maglev::new(&flat(&fewer, &[1; 3]), 65537),
        );
        for counts in [
            spread(4, |h| ring.pick(h, 0)),
            spread(4, |h| maglev.pick(h, 0)),
        ] {
            assert!(
                counts.iter().all(|c| (3_500..6_500).contains(c)),
                "{counts:?}"
            );
        }
        let name = |set: &[String], i: usize| set[i].clone();
        let (mut ring_moved, mut maglev_moved) = (0, 0);
        for i in 0..20_000u64 {
            let h = xxh64(&i.to_le_bytes(), 7);
            assert_eq!(ring.pick(h, 0), ring.pick(h, 0));
            let (before, after) = (
                name(&all, ring.pick(h, 0).unwrap()),
                name(&fewer, ring3.pick(h, 0).unwrap()),
            );
            if before != all[2] {
                assert_eq!(before, after, "hash {h} moved off a kept endpoint");
            }
            ring_moved += usize::from(before != after);
            let (before, after) = (
                name(&all, maglev.pick(h, 0).unwrap()),
                name(&fewer, maglev3.pick(h, 0).unwrap()),
            );
            maglev_moved += usize::from(before != after && before != all[2]);
        }
        assert!((3_500..6_500).contains(&ring_moved), "{ring_moved}");
        // Maglev's disruption beyond the removed share is small (the paper's bound).
        assert!(maglev_moved < 20_000 / 20, "{maglev_moved}");
    }

    /// Least request takes the least loaded of its choices (with 50 choices, all but
    /// surely the least loaded of all); random and round robin cover every endpoint.
    #[test]
    fn least_request_random_and_round_robin_spread() {
        let loads = [5u32, 0, 9, 9];
        let lr = Picker::LeastRequest { choice_count: 50 };
        let turn = AtomicUsize::new(0);
        for _ in 0..100 {
            assert_eq!(lr.start((4, 0), &turn, None, |i| loads[i]), 1);
        }
        let two = Picker::LeastRequest { choice_count: 2 };
        let mut counts = [0usize; 4];
        for _ in 0..20_000 {
            counts[two.start((4, 0), &turn, None, |i| loads[i])] += 1;
        }
        // Endpoint 1 wins whenever drawn (7/16 of pairs), endpoint 0 unless paired with 1.
        assert!(counts[1] > counts[0] && counts[0] > counts[2], "{counts:?}");
        assert!((8_000..9_500).contains(&counts[1]), "{counts:?}");
        let equal = spread(4, |_| Some(two.start((4, 0), &turn, None, |_| 0)));
        assert!(
            equal.iter().all(|c| (4_000..6_000).contains(c)),
            "{equal:?}"
        );
        let random = spread(4, |_| {
            Some(Picker::Random.start((4, 0), &turn, None, |_| 0))
        });
        assert!(
            random.iter().all(|c| (4_000..6_000).contains(c)),
            "{random:?}"
        );
        let rr = Picker::RoundRobin;
        let starts: Vec<usize> = (0..5)
            .map(|_| rr.start((4, 0), &turn, None, |_| 0))
            .collect();
        assert_eq!(starts, [0, 1, 2, 3, 0]);
    }

    /// Without a hash, ring hash and Maglev draw one at random: every endpoint is reached.
    #[test]
    fn hashing_without_a_hash_picks_at_random() {
        let endpoints: Vec<Endpoint> = (1..=3)
            .map(|i| crate::upstream::plain_endpoint(([10, 0, 0, i], 80).into()))
            .collect();
        let turn = AtomicUsize::new(0);
        for balancer in [
            LoadBalancer::RingHash {
                minimum_ring_size: 1024,
                maximum_ring_size: 8 << 20,
                hash_function: RingHashFunction::MurmurHash2,
            },
            LoadBalancer::Maglev { table_size: 65537 },
        ] {
            let picker = Picker::new(&balancer, &endpoints);
            let counts = spread(3, |_| Some(picker.start((3, 0), &turn, None, |_| 0)));
            assert!(counts.iter().all(|c| *c > 5_000), "{counts:?}");
            let same = picker.start((3, 0), &turn, Some(42), |_| 0);
            assert!((0..10).all(|_| picker.start((3, 0), &turn, Some(42), |_| 0) == same));
        }
    }

    /// Envoy's EDF order (its `RoundRobinLoadBalancerTest.Weighted`: weights 1 and 2 pick
    /// 1, 0, 1, 1, 0, 1); over one cycle every endpoint is picked its weight's number of times
    /// (Envoy's `EdfSchedulerTest.Weighted`, weights 1 to 128), and the cycle repeats.
    #[test]
    fn weighted_round_robin_follows_envoys_edf_schedule() {
        let schedule = Schedule::new(&[1, 2]);
        let picks: Vec<usize> = (0..6).map(|t| schedule.pick(t)).collect();
        assert_eq!(picks, [1, 0, 1, 1, 0, 1]);
        let one_three = Schedule::new(&[1, 3]);
        assert_eq!(*one_three.order, [1, 1, 0, 1]);
        let weights: Vec<u32> = (1..=128).collect();
        let schedule = Schedule::new(&weights);
        assert_eq!(schedule.order.len(), 128 * 129 / 2);
        let mut counts = vec![0u32; 128];
        for t in 0..schedule.order.len() {
            counts[schedule.pick(t)] += 1;
        }
        assert_eq!(counts, weights);
        assert_eq!(schedule.pick(schedule.order.len() + 5), schedule.pick(5));
        // The picker: equal weights stay plain round robin, different ones get the schedule.
        let endpoint = |i: u8, weight: u32| Endpoint {
            weight,
            ..crate::upstream::plain_endpoint(([10, 0, 0, i], 80).into())
        };
        let equal = [endpoint(1, 3), endpoint(2, 3)];
        assert!(matches!(
            Picker::new(&LoadBalancer::RoundRobin, &equal),
            Picker::RoundRobin
        ));
        let picker = Picker::new(&LoadBalancer::RoundRobin, &[endpoint(1, 1), endpoint(2, 3)]);
        let turn = AtomicUsize::new(0);
        let starts: Vec<usize> = (0..8)
            .map(|_| picker.start((2, 0), &turn, None, |_| 0))
            .collect();
        assert_eq!(starts, [1, 1, 0, 1, 1, 1, 0, 1]);
        // Random ignores weights, as Envoy's does.
        let random = Picker::new(&LoadBalancer::Random, &[endpoint(1, 1), endpoint(2, 3)]);
        let counts = spread(2, |_| Some(random.start((2, 0), &turn, None, |_| 0)));
        assert!(
            counts.iter().all(|c| (9_000..11_000).contains(c)),
            "{counts:?}"
        );
    }

    /// Weighted least request: with no request active it picks as weighted round robin
    /// (Envoy's EDF over weight / 1); an endpoint's active requests divide its weight as it
    /// is picked (weights 1 and 3, the heavy one holding 3 requests: 1 and 3/4, so the light
    /// one takes 4 of every 7 picks).
    #[test]
    fn weighted_least_request_divides_weights_by_active_requests() {
        let idle = LoadSchedule::new(&[1.0, 2.0], 1.0);
        let picks: Vec<usize> = (0..6).map(|_| idle.pick(|_| 0)).collect();
        assert_eq!(picks, [1, 0, 1, 1, 0, 1]);
        let busy = LoadSchedule::new(&[1.0, 3.0], 1.0);
        let mut counts = [0usize; 2];
        for _ in 0..700 {
            counts[busy.pick(|i| if i == 1 { 3 } else { 0 })] += 1;
        }
        assert!((398..=402).contains(&counts[0]), "{counts:?}");
        let endpoint = |i: u8, weight: u32| Endpoint {
            weight,
            ..crate::upstream::plain_endpoint(([10, 0, 0, i], 80).into())
        };
        let lr = least(2, 1.0);
        let picker = Picker::new(&lr, &[endpoint(1, 1), endpoint(2, 3)]);
        assert!(matches!(picker, Picker::WeightedLeast(_)) && picker.counts_requests());
        let equal = Picker::new(&lr, &[endpoint(1, 3), endpoint(2, 3)]);
        assert!(matches!(equal, Picker::LeastRequest { choice_count: 2 }));
        // Equal weights ignore the bias (power of two choices), as Envoy's.
        let biased = Picker::new(&least(2, 3.5), &[endpoint(1, 3), endpoint(2, 3)]);
        assert!(matches!(biased, Picker::LeastRequest { choice_count: 2 }));
    }

    /// The active request bias scales how much active requests weigh, as Envoy's
    /// `hostWeight`: 0 picks by weight alone (weighted round robin's order whatever the
    /// load), 2 divides by the square of active requests + 1 (weights 1 and 8, the heavy one
    /// holding 3 requests: 1 and 8/16, so the light one takes 2 of every 3 picks), 0.5 by the
    /// square root (1 and 8/sqrt(4) = 4: 1 of every 5).
    #[test]
    fn the_active_request_bias_scales_active_requests() {
        let busy = |i: usize| if i == 1 { 3 } else { 0 };
        let weights_alone = LoadSchedule::new(&[1.0, 2.0], 0.0);
        let picks: Vec<usize> = (0..6).map(|_| weights_alone.pick(|_| 9)).collect();
        assert_eq!(picks, [1, 0, 1, 1, 0, 1]);
        for (bias, light) in [(2.0, 600), (0.5, 180)] {
            let schedule = LoadSchedule::new(&[1.0, 8.0], bias);
            let mut counts = [0usize; 2];
            for _ in 0..900 {
                counts[schedule.pick(busy)] += 1;
            }
            assert!(
                light - 3 <= counts[0] && counts[0] <= light + 3,
                "{bias}: {counts:?}"
            );
        }
        assert_eq!(LoadSchedule::new(&[8.0], 2.0).load(8.0, 1), 2.0);
        assert_eq!(LoadSchedule::new(&[8.0], 0.5).load(8.0, 3), 4.0);
        assert_eq!(LoadSchedule::new(&[8.0], 1.0).load(8.0, 3), 2.0);
    }

    /// A ring's or table's hosts under locality weighting, as Envoy's `normalizeWeights`:
    /// the localities in their order (zone-1 before zone-2 whatever the assignment's
    /// order), each endpoint's weight times its locality's share over its locality's sum
    /// (zone-1 of weight 1 with two endpoints: 1/8 each; zone-2 of weight 3: 3/4); without
    /// localities, the level's order by weight over the sum.
    #[test]
    fn hash_hosts_fold_locality_weights_in_envoys_order() {
        use bearing_proxy_config::LocalityWeight;
        let endpoint = |i: u8, index: u32, weight: u32, order: u32| Endpoint {
            locality: Some(LocalityWeight {
                index,
                weight,
                order,
            }),
            ..crate::upstream::plain_endpoint(([10, 0, 0, i], 80).into())
        };
        let level = [
            endpoint(3, 0, 3, 1),
            endpoint(1, 1, 1, 0),
            endpoint(2, 1, 1, 0),
        ];
        let hosts = hash_hosts(&level, None);
        let expected = [
            (1, "10.0.0.1:80".to_string(), 0.125),
            (2, "10.0.0.2:80".to_string(), 0.125),
            (0, "10.0.0.3:80".to_string(), 0.75),
        ];
        assert_eq!(hosts, expected);
        // The eligible hosts of a level whose other locality (weight 4) has none: Envoy
        // still sums its weight in, and the ring is sized over weights summing to 1/2.
        let eligible = hash_hosts(&level, Some(8));
        assert_eq!(
            eligible.iter().map(|h| h.2).collect::<Vec<_>>(),
            [0.0625, 0.0625, 0.375]
        );
        let (whole, halved) = (
            Ring::new(&hosts, (64, 1024), XX),
            Ring::new(&eligible, (64, 1024), XX),
        );
        assert_eq!((whole.points.len(), halved.points.len()), (64, 32));
        // The ring and table pick by the level's indices.
        let ring = Ring::new(&hosts, (8, 8), XX);
        let on_ring: std::collections::BTreeSet<usize> =
            (0..2000u64).filter_map(|h| ring.pick(h << 53, 0)).collect();
        assert_eq!(on_ring, [0, 1, 2].into());
        let plain = |i: u8, weight| Endpoint {
            weight,
            ..crate::upstream::plain_endpoint(([10, 0, 0, i], 80).into())
        };
        let flat = hash_hosts(&[plain(1, 1), plain(2, 3)], None);
        assert_eq!(
            flat,
            [
                (0, "10.0.0.1:80".to_string(), 0.25),
                (1, "10.0.0.2:80".to_string(), 0.75)
            ]
        );
    }

    /// Weighted localities: the locality by Envoy's EDF order over the locality weights (1
    /// and 3: B, B, A, B), then round robin within it on its own counter; least request and
    /// random pick within the chosen locality too, counting its endpoints' requests.
    #[test]
    fn weighted_localities_pick_a_locality_then_an_endpoint() {
        use bearing_proxy_config::LocalityWeight;
        let endpoint = |i: u8, index: u32, weight: u32| Endpoint {
            locality: Some(LocalityWeight {
                index,
                weight,
                order: index,
            }),
            ..crate::upstream::plain_endpoint(([10, 0, 0, i], 80).into())
        };
        let level = [endpoint(1, 0, 1), endpoint(2, 1, 3), endpoint(3, 1, 3)];
        let picker = Picker::new(&LoadBalancer::RoundRobin, &level);
        assert!(matches!(picker, Picker::Localities(_)));
        let turn = AtomicUsize::new(0);
        let starts: Vec<usize> = (0..8)
            .map(|_| picker.start((3, 0), &turn, None, |_| 0))
            .collect();
        assert_eq!(starts, [1, 2, 0, 1, 2, 1, 0, 2]);
        let least = Picker::new(&least(50, 1.0), &level);
        assert!(least.counts_requests());
        let loads = [0u32, 7, 0];
        let starts: Vec<usize> = (0..4)
            .map(|_| least.start((3, 0), &turn, None, |i| loads[i]))
            .collect();
        assert_eq!(
            starts,
            [2, 2, 0, 2],
            "the idle endpoint of the heavy locality"
        );
        // The localities are scheduled in Envoy's order (by name), whatever the assignment's
        // (equal weights tie, and a tie goes to the first queued): the same picks, endpoint
        // by endpoint, as the level given in that order.
        let named = |i: u8, index: u32, weight: u32, order: u32| Endpoint {
            locality: Some(LocalityWeight {
                index,
                weight,
                order,
            }),
            ..crate::upstream::plain_endpoint(([10, 0, 0, i], 80).into())
        };
        let sorted = [named(1, 0, 2, 0), named(2, 1, 2, 1), named(3, 1, 2, 1)];
        let reversed = [named(2, 0, 2, 1), named(3, 0, 2, 1), named(1, 1, 2, 0)];
        let picks = |level: &[Endpoint]| -> Vec<std::net::SocketAddr> {
            let picker = Picker::new(&LoadBalancer::RoundRobin, level);
            let turn = AtomicUsize::new(0);
            (0..12)
                .map(|_| level[picker.start((3, 0), &turn, None, |_| 0)].address)
                .collect()
        };
        assert_eq!(picks(&reversed), picks(&sorted));
        // One locality: balanced as without locality weighting.
        let one = [endpoint(1, 0, 1), endpoint(2, 0, 1)];
        assert!(matches!(
            Picker::new(&LoadBalancer::RoundRobin, &one),
            Picker::RoundRobin
        ));
    }

    /// Weighted rings as Envoy builds them: weights 1, 2, 3 on a ring of at least 6 points
    /// give 1, 2 and 3 points (Envoy's `HostWeightedTinyRing`); at least 1024 points over
    /// weights 1 and 3 scale the smallest share (1/4) to 256 points and the other to 768.
    /// Equal weights build the same ring as no weights.
    #[test]
    fn weighted_rings_give_points_by_normalised_weight() {
        let count = |ring: &Ring, e: u32| ring.points.iter().filter(|p| p.1 == e).count();
        let tiny = Ring::new(&flat(&keys(3), &[1, 2, 3]), (6, 6), XX);
        assert_eq!(tiny.points.len(), 6);
        assert_eq!(
            (count(&tiny, 0), count(&tiny, 1), count(&tiny, 2)),
            (1, 2, 3)
        );
        let ring = Ring::new(&flat(&keys(2), &[1, 3]), (1024, 8 << 20), XX);
        assert_eq!((count(&ring, 0), count(&ring, 1)), (256, 768));
        let counts = spread(2, |h| ring.pick(h, 0));
        assert!((4_000..6_000).contains(&counts[0]), "{counts:?}");
        let (equal, plain) = (
            Ring::new(&flat(&keys(3), &[5; 3]), (100, 10_000), XX),
            Ring::new(&flat(&keys(3), &[1; 3]), (100, 10_000), XX),
        );
        assert_eq!(equal.points, plain.points);
    }

    /// Weighted Maglev tables: an endpoint claims slots in proportion to its weight (1 to 3
    /// here, over 65537 slots); equal weights fill the same table as no weights.
    #[test]
    fn weighted_maglev_tables_claim_by_weight() {
        let table = Maglev::new(&flat(&keys(2), &[1, 3]), 65537);
        let light = table.table.iter().filter(|i| **i == 0).count();
        assert_eq!(
            light,
            65537 / 4 + 1,
            "the light endpoint claims every third turn"
        );
        let (equal, plain) = (
            Maglev::new(&flat(&keys(3), &[7; 3]), 17),
            Maglev::new(&flat(&keys(3), &[1; 3]), 17),
        );
        assert_eq!(equal.table, plain.table);
    }

    /// An endpoint's `envoy.lb` `hash_key` replaces its address as its key.
    #[test]
    fn a_hash_key_replaces_the_address() {
        let mut endpoint = crate::upstream::plain_endpoint(([10, 0, 0, 1], 80).into());
        assert_eq!(hash_keys(std::slice::from_ref(&endpoint)), ["10.0.0.1:80"]);
        endpoint.tags.insert(HASH_KEY.into(), "pod-a".into());
        assert_eq!(hash_keys(&[endpoint]), ["pod-a"]);
        let v6 = crate::upstream::plain_endpoint("[::1]:8080".parse().unwrap());
        assert_eq!(hash_keys(&[v6]), ["[::1]:8080"]);
    }
}

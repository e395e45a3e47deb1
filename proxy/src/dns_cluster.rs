//! Clusters whose endpoints are hostnames (Envoy's STRICT_DNS and LOGICAL_DNS), resolved off
//! the hot path as Envoy resolves them.
//!
//! Each hostname of a cluster has its own task (Envoy's resolve target): it looks the name up,
//! puts the addresses in force and waits the cluster's refresh rate (or the answer's TTL with
//! `respect_ttl`) before the next lookup. The addresses reach the hot path through the
//! cluster's [`ResolvedPools`], an `ArcSwap` the request reads once, so picking an endpoint
//! takes no lock. A lookup that fails keeps the last addresses (Envoy's `Failure` status:
//! no host is removed) and is tried again after the refresh rate; an answer without records
//! (NXDOMAIN, no A/AAAA) is a completed resolution and removes the hostname's endpoints, as
//! c-ares reports it to Envoy. Until a hostname has resolved it has no endpoint, so a cluster
//! of only that name answers as an empty cluster does (503 `no healthy upstream`, TCP
//! closed). Each change (new addresses, a new failure, recovery) is logged once with the
//! cluster and hostname.
//!
//! Resolutions survive reloads: a config whose cluster has the same DNS settings keeps the
//! running resolution and its addresses; one whose settings changed, or whose cluster is gone,
//! stops it. The resolver ([`SystemResolver`]) is hickory's stub resolver, which reads
//! `/etc/resolv.conf` (nameservers, search list, ndots, timeout, attempts) and `/etc/hosts` as
//! Envoy's c-ares does, both read again when they change, without a cache of its own (each
//! refresh asks the nameserver, as c-ares without a query cache does).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bearing_proxy_config::{Cluster, DnsDiscovery, DnsEndpoints, DnsLookupFamily, Endpoint};
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Hosts, TokioResolver};
use tokio_util::sync::CancellationToken;

use crate::upstream::{EndpointPool, EndpointSet, ResolvedPools};

/// What one lookup of a hostname gave.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The addresses, in the resolver's order (empty: the name has no such record).
    pub addresses: Vec<IpAddr>,
    /// How long the answer may be used (its records' smallest TTL); `None` or zero: unknown.
    pub ttl: Option<Duration>,
}

/// The future of one lookup.
pub type Lookup<'a> = Pin<Box<dyn Future<Output = Result<Answer, String>> + Send + 'a>>;

/// Looks hostnames up; an error names what failed (timeout, no nameserver, SERVFAIL, ...).
pub trait Resolve: Send + Sync + 'static {
    /// The addresses of `host` in `family`.
    fn lookup<'a>(&'a self, host: &'a str, family: DnsLookupFamily) -> Lookup<'a>;
}

/// The system's resolver configuration, read as Envoy's c-ares reads it: `/etc/resolv.conf`
/// and `/etc/hosts`, each read again when its size, time or inode changed.
pub struct SystemResolver {
    resolv_conf: PathBuf,
    hosts: PathBuf,
    /// The resolvers built from the files as they were last seen, one per lookup family.
    built: tokio::sync::Mutex<Option<Built>>,
}

/// Resolvers built from one reading of the files.
struct Built {
    seen: [Option<FileStamp>; 2],
    by_family: HashMap<DnsLookupFamily, TokioResolver>,
    config: ResolverConfig,
    options: ResolverOpts,
    hosts: Arc<Hosts>,
}

/// What tells a file changed: size, modification time, inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp(u64, Option<std::time::SystemTime>, u64);

fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp(m.len(), m.modified().ok(), m.ino()))
}

impl Default for SystemResolver {
    fn default() -> Self {
        SystemResolver::with_files("/etc/resolv.conf", "/etc/hosts")
    }
}

impl SystemResolver {
    /// A resolver configured by these files instead of the system's.
    pub fn with_files(resolv_conf: impl Into<PathBuf>, hosts: impl Into<PathBuf>) -> Self {
        SystemResolver {
            resolv_conf: resolv_conf.into(),
            hosts: hosts.into(),
            built: tokio::sync::Mutex::new(None),
        }
    }

    /// Reads the files into a configuration. Without a usable resolv.conf the nameserver is
    /// 127.0.0.1, as glibc and c-ares assume; a hosts file that cannot be read holds nothing.
    fn read(&self) -> (ResolverConfig, ResolverOpts, Hosts) {
        let parsed = std::fs::read(&self.resolv_conf)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                hickory_resolver::system_conf::parse_resolv_conf(text).map_err(|e| e.to_string())
            });
        let (config, mut options) = parsed.unwrap_or_else(|e| {
            tracing::warn!(file = %self.resolv_conf.display(), "DNS clusters: {e}; asking 127.0.0.1");
            let local = NameServerConfig::udp_and_tcp(IpAddr::from([127, 0, 0, 1]));
            (
                ResolverConfig::from_name_servers(vec![local]),
                ResolverOpts::default(),
            )
        });
        // Every refresh asks again; the hosts file is the one read here.
        options.cache_size = 0;
        options.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        let mut hosts = Hosts::default();
        if let Ok(file) = std::fs::File::open(&self.hosts) {
            if let Err(e) = hosts.read_hosts_conf(file) {
                tracing::warn!(file = %self.hosts.display(), "DNS clusters: {e}");
            }
        }
        (config, options, hosts)
    }

    /// The resolver for `family`, built again when a file changed.
    async fn resolver(&self, family: DnsLookupFamily) -> Result<TokioResolver, String> {
        let seen = [stamp(&self.resolv_conf), stamp(&self.hosts)];
        let mut built = self.built.lock().await;
        if built.as_ref().is_none_or(|b| b.seen != seen) {
            let (config, options, hosts) = self.read();
            *built = Some(Built {
                seen,
                by_family: HashMap::new(),
                config,
                options,
                hosts: Arc::new(hosts),
            });
        }
        let Some(b) = built.as_mut() else {
            return Err("no resolver".into());
        };
        if let Some(r) = b.by_family.get(&family) {
            return Ok(r.clone());
        }
        let mut options = b.options.clone();
        options.ip_strategy = match family {
            DnsLookupFamily::Auto => LookupIpStrategy::Ipv6thenIpv4,
            DnsLookupFamily::V4Only => LookupIpStrategy::Ipv4Only,
            DnsLookupFamily::V6Only => LookupIpStrategy::Ipv6Only,
            DnsLookupFamily::V4Preferred => LookupIpStrategy::Ipv4thenIpv6,
            DnsLookupFamily::All => LookupIpStrategy::Ipv4AndIpv6,
        };
        let provider = TokioRuntimeProvider::default();
        let mut resolver = TokioResolver::builder_with_config(b.config.clone(), provider)
            .with_options(options)
            .build()
            .map_err(|e| format!("resolver: {e}"))?;
        resolver.set_hosts(b.hosts.clone());
        b.by_family.insert(family, resolver.clone());
        Ok(resolver)
    }
}

impl Resolve for SystemResolver {
    fn lookup<'a>(&'a self, host: &'a str, family: DnsLookupFamily) -> Lookup<'a> {
        Box::pin(async move {
            let resolver = self.resolver(family).await?;
            match resolver.lookup_ip(host).await {
                Ok(found) => {
                    let ttl = found.valid_until().checked_duration_since(Instant::now());
                    Ok(Answer {
                        addresses: found.iter().collect(),
                        ttl,
                    })
                }
                // NXDOMAIN or no record of the family: a completed answer without addresses.
                Err(e) if e.is_no_records_found() => Ok(Answer {
                    addresses: Vec::new(),
                    ttl: None,
                }),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

/// One hostname's resolution state: its addresses and the last failure, each change told
/// once (the state machine of a resolve target).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HostState {
    /// The addresses in force; `None` until the first answer.
    pub addresses: Option<Vec<IpAddr>>,
    /// The failure of the last lookup, if it failed.
    pub failure: Option<String>,
}

/// What a lookup changed, for the log and the endpoint set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing: same addresses, or the same failure again.
    None,
    /// The addresses changed (the endpoint set must follow).
    Addresses,
    /// The same addresses again after failures.
    Recovered,
    /// A lookup failed, or failed otherwise than before; the addresses stay.
    Failed,
}

impl HostState {
    /// Takes an answer: `first` keeps only the first address (LOGICAL_DNS).
    pub fn answered(&mut self, mut addresses: Vec<IpAddr>, first_only: bool) -> Change {
        if first_only {
            addresses.truncate(1);
        }
        let failed_before = self.failure.take().is_some();
        if self.addresses.as_ref() == Some(&addresses) {
            return match failed_before {
                true => Change::Recovered,
                false => Change::None,
            };
        }
        self.addresses = Some(addresses);
        Change::Addresses
    }

    /// Takes a failed lookup; the addresses stay.
    pub fn failed(&mut self, reason: String) -> Change {
        if self.failure.as_ref() == Some(&reason) {
            return Change::None;
        }
        self.failure = Some(reason);
        Change::Failed
    }
}

/// The resolution of one cluster's hostnames, kept across reloads while its settings are
/// the same.
struct Resolution {
    /// The cluster's name and DNS settings it was started for.
    cluster: String,
    dns: DnsEndpoints,
    /// The cluster's endpoints with IP addresses, which every endpoint set starts with.
    fixed: Vec<Endpoint>,
    state: Mutex<ResolutionState>,
    stop: CancellationToken,
}

struct ResolutionState {
    hosts: Vec<HostState>,
    /// The endpoint set of the runtime cluster of the config in force.
    target: Weak<ResolvedPools>,
}

impl Resolution {
    /// The endpoints of the current state: the fixed ones, then each hostname's addresses.
    fn endpoints(&self, hosts: &[HostState]) -> Vec<Endpoint> {
        let resolved = self.dns.hosts.iter().zip(hosts).flat_map(|(host, state)| {
            let addresses = state.addresses.as_deref().unwrap_or_default();
            addresses.iter().map(|ip| host.endpoint(*ip))
        });
        self.fixed.iter().cloned().chain(resolved).collect()
    }

    /// Takes the outcome of a lookup of hostname `i`, logs a change and updates the endpoint
    /// set; gives when to look up again.
    fn take(&self, i: usize, outcome: Result<Answer, String>) -> Duration {
        let host = &self.dns.hosts[i].hostname;
        let cluster = &self.cluster;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let first_only = self.dns.discovery == DnsDiscovery::Logical;
        let (change, next) = match outcome {
            Ok(answer) => {
                let ttl = answer.ttl.filter(|t| self.dns.respect_ttl && !t.is_zero());
                let change = state.hosts[i].answered(answer.addresses, first_only);
                (change, ttl.unwrap_or(self.dns.refresh_rate))
            }
            Err(reason) => (state.hosts[i].failed(reason), self.dns.refresh_rate),
        };
        let host_state = &state.hosts[i];
        let addresses = host_state.addresses.as_deref().unwrap_or_default();
        match change {
            Change::None => {}
            Change::Addresses if addresses.is_empty() => {
                tracing::warn!(%cluster, hostname = %host, "resolves to no address; its endpoints are removed")
            }
            Change::Addresses => {
                tracing::info!(%cluster, hostname = %host, ?addresses, "resolved")
            }
            Change::Recovered => {
                tracing::info!(%cluster, hostname = %host, ?addresses, "resolves again")
            }
            Change::Failed => {
                let reason = host_state.failure.as_deref().unwrap_or_default();
                match host_state.addresses {
                    Some(_) => {
                        tracing::warn!(%cluster, hostname = %host, "lookup failed: {reason}; keeping the last addresses {addresses:?}")
                    }
                    None => {
                        tracing::warn!(%cluster, hostname = %host, "lookup failed: {reason}; no endpoint until it resolves")
                    }
                }
            }
        }
        if change == Change::Addresses {
            if let Some(target) = state.target.upgrade() {
                target.update(self.endpoints(&state.hosts));
            }
        }
        next
    }

    /// Starts one task per hostname, each until `stop` is cancelled.
    fn start(self: &Arc<Self>, resolver: &Arc<dyn Resolve>) {
        for i in 0..self.dns.hosts.len() {
            let (me, resolver) = (self.clone(), resolver.clone());
            tokio::spawn(async move {
                let host = &me.dns.hosts[i].hostname;
                let family = me.dns.lookup_family;
                loop {
                    let outcome = tokio::select! {
                        outcome = resolver.lookup(host, family) => outcome,
                        () = me.stop.cancelled() => return,
                    };
                    let next = me.take(i, outcome);
                    tokio::select! {
                        () = tokio::time::sleep(next) => {}
                        () = me.stop.cancelled() => return,
                    }
                }
            });
        }
    }
}

/// Every running resolution, by cluster: what [`crate::runtime::Proxy`] keeps across
/// applies.
pub struct Resolutions {
    resolver: Arc<dyn Resolve>,
    by_cluster: Mutex<HashMap<String, Arc<Resolution>>>,
}

impl Resolutions {
    /// Resolutions made with `resolver`.
    pub fn new(resolver: Arc<dyn Resolve>) -> Self {
        Resolutions {
            resolver,
            by_cluster: Mutex::new(HashMap::new()),
        }
    }

    /// The endpoint set of `cluster` (which has `dns`) for a new runtime cluster: from the
    /// running resolution when its settings are the same (the addresses already resolved),
    /// else from a resolution started now (no hostname resolved yet). Pools come from `pool`.
    /// From now on the resolution updates this set.
    pub fn endpoints(
        &self,
        cluster: &Cluster,
        dns: &DnsEndpoints,
        pool: impl FnMut(&Endpoint) -> Arc<EndpointPool>,
    ) -> Arc<ResolvedPools> {
        let mut all = self.by_cluster.lock().unwrap_or_else(|p| p.into_inner());
        let running = all
            .get(&cluster.name)
            .filter(|r| r.dns == *dns && r.fixed == cluster.endpoints)
            .cloned();
        let resolution = running.unwrap_or_else(|| {
            let resolution = Arc::new(Resolution {
                cluster: cluster.name.clone(),
                dns: dns.clone(),
                fixed: cluster.endpoints.clone(),
                state: Mutex::new(ResolutionState {
                    hosts: vec![HostState::default(); dns.hosts.len()],
                    target: Weak::new(),
                }),
                stop: CancellationToken::new(),
            });
            resolution.start(&self.resolver);
            if let Some(old) = all.insert(cluster.name.clone(), resolution.clone()) {
                old.stop.cancel();
            }
            resolution
        });
        let mut state = resolution.state.lock().unwrap_or_else(|p| p.into_inner());
        let endpoints = resolution.endpoints(&state.hosts);
        let set = ResolvedPools::new(EndpointSet::new(endpoints, cluster.load_balancer, pool));
        state.target = Arc::downgrade(&set);
        set
    }

    /// Stops the resolutions of clusters `keep` does not name (removed, or no longer DNS).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut all = self.by_cluster.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|name, resolution| {
            let kept = keep(name);
            if !kept {
                resolution.stop.cancel();
            }
            kept
        });
    }

    /// The clusters being resolved.
    #[cfg(test)]
    fn running(&self) -> usize {
        self.by_cluster
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bearing_proxy_config::HostEndpoint;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Each change of a hostname's state is told once; a failure keeps the addresses; an
    /// answer without records removes them; LOGICAL_DNS keeps the first address only.
    #[test]
    fn host_state_tells_each_change_once() {
        let mut s = HostState::default();
        assert_eq!(s.failed("timeout".into()), Change::Failed);
        assert_eq!(s.addresses, None);
        assert_eq!(s.answered(vec![ip("10.0.0.1")], false), Change::Addresses);
        assert_eq!(s.answered(vec![ip("10.0.0.1")], false), Change::None);
        assert_eq!(s.failed("timeout".into()), Change::Failed);
        assert_eq!(s.failed("timeout".into()), Change::None);
        assert_eq!(s.failed("SERVFAIL".into()), Change::Failed);
        assert_eq!(s.addresses, Some(vec![ip("10.0.0.1")]));
        assert_eq!(s.answered(vec![ip("10.0.0.1")], false), Change::Recovered);
        assert_eq!(s.failure, None);
        let two = vec![ip("10.0.0.2"), ip("10.0.0.3")];
        assert_eq!(s.answered(two.clone(), false), Change::Addresses);
        assert_eq!(s.addresses, Some(two.clone()));
        assert_eq!(s.answered(two, true), Change::Addresses);
        assert_eq!(s.addresses, Some(vec![ip("10.0.0.2")]));
        assert_eq!(s.answered(Vec::new(), false), Change::Addresses);
        assert_eq!(s.addresses, Some(Vec::new()));
    }

    /// A resolver answering what the test sets, counting lookups.
    #[derive(Default)]
    struct Fake {
        answers: Mutex<HashMap<String, Result<Vec<IpAddr>, String>>>,
        lookups: AtomicUsize,
    }

    impl Fake {
        fn set(&self, host: &str, answer: Result<Vec<IpAddr>, String>) {
            self.answers.lock().unwrap().insert(host.into(), answer);
        }
    }

    impl Resolve for Fake {
        fn lookup<'a>(&'a self, host: &'a str, _: DnsLookupFamily) -> Lookup<'a> {
            self.lookups.fetch_add(1, Ordering::Relaxed);
            let answer = self.answers.lock().unwrap().get(host).cloned();
            Box::pin(async move {
                answer
                    .unwrap_or_else(|| Err("no answer set".into()))
                    .map(|addresses| Answer {
                        addresses,
                        ttl: None,
                    })
            })
        }
    }

    fn dns_cluster(hostname: &str) -> (Cluster, DnsEndpoints) {
        let dns = DnsEndpoints {
            discovery: DnsDiscovery::Strict,
            hosts: vec![HostEndpoint {
                hostname: hostname.into(),
                port: 80,
                origin: "test".into(),
                tags: Default::default(),
                tls_match: None,
                priority: 0,
            }],
            refresh_rate: Duration::from_millis(20),
            respect_ttl: false,
            lookup_family: DnsLookupFamily::V4Only,
        };
        let cluster = Cluster {
            dns: Some(dns.clone()),
            ..crate::upstream::test_cluster("external")
        };
        (cluster, dns)
    }

    fn addresses(set: &ResolvedPools) -> Vec<String> {
        let current = set.current();
        current
            .endpoints()
            .iter()
            .map(|e| e.address.to_string())
            .collect()
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not reached: {what}");
    }

    /// A cluster's endpoint set follows the answers: none before the first, the new address
    /// after a change, the last one kept while lookups fail; a reload with the same settings
    /// keeps the resolved state, other settings start again, and a removed cluster's
    /// resolution stops.
    #[tokio::test]
    async fn resolution_follows_answers_and_survives_reloads() {
        let fake = Arc::new(Fake::default());
        let resolutions = Resolutions::new(fake.clone());
        let (cluster, dns) = dns_cluster("origin.test");
        let set = resolutions.endpoints(&cluster, &dns, EndpointPool::new);
        assert!(addresses(&set).is_empty(), "nothing before an answer");
        fake.set("origin.test", Ok(vec![ip("10.0.0.1")]));
        until("first answer", || addresses(&set) == ["10.0.0.1:80"]).await;
        let first_pool = set.current().endpoints().len();
        assert_eq!(first_pool, 1);

        fake.set("origin.test", Ok(vec![ip("10.0.0.2")]));
        until("changed answer", || addresses(&set) == ["10.0.0.2:80"]).await;
        fake.set("origin.test", Err("timed out".into()));
        let before = fake.lookups.load(Ordering::Relaxed);
        until("failed lookups", || {
            fake.lookups.load(Ordering::Relaxed) > before + 3
        })
        .await;
        assert_eq!(addresses(&set), ["10.0.0.2:80"], "kept while lookups fail");

        // The same settings again (a reload): the resolved addresses at once.
        let again = resolutions.endpoints(&cluster, &dns, EndpointPool::new);
        assert_eq!(addresses(&again), ["10.0.0.2:80"]);
        assert_eq!(resolutions.running(), 1);
        fake.set("origin.test", Ok(vec![ip("10.0.0.3")]));
        until("the newest set follows", || {
            addresses(&again) == ["10.0.0.3:80"]
        })
        .await;
        assert_eq!(
            addresses(&set),
            ["10.0.0.2:80"],
            "the replaced set is left alone"
        );

        // Another hostname: a new resolution, nothing resolved yet.
        let (other, other_dns) = dns_cluster("other.test");
        let fresh = resolutions.endpoints(&other, &other_dns, EndpointPool::new);
        assert!(addresses(&fresh).is_empty());
        assert_eq!(resolutions.running(), 1);

        resolutions.retain(|_| false);
        assert_eq!(resolutions.running(), 0);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stopped = fake.lookups.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            fake.lookups.load(Ordering::Relaxed),
            stopped,
            "lookups stopped"
        );
    }

    /// The system resolver answers from the hosts file and reads it again when it changes.
    #[tokio::test]
    async fn system_resolver_reads_the_hosts_file_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (resolv, hosts) = (dir.path().join("resolv.conf"), dir.path().join("hosts"));
        std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
        std::fs::write(&hosts, "10.1.2.3 origin.test\n").unwrap();
        let resolver = SystemResolver::with_files(&resolv, &hosts);
        let found = resolver
            .lookup("origin.test", DnsLookupFamily::V4Only)
            .await
            .unwrap();
        assert_eq!(found.addresses, [ip("10.1.2.3")]);
        std::fs::write(&hosts, "10.1.2.40 origin.test other.test\n").unwrap();
        let found = resolver
            .lookup("origin.test", DnsLookupFamily::V4Only)
            .await
            .unwrap();
        assert_eq!(found.addresses, [ip("10.1.2.40")]);
    }
}

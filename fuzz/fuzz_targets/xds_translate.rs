//! xDS resource translation (`bearing_envoy_config`), fed what a control plane reaches: a full
//! ADS state of resources as protobuf bytes under the type URLs `bearing run --cp-address`
//! receives, decoded into a `ResourceSet` and translated as the CP sink (`proxy/src/
//! cp_source.rs`) does.
//!
//! Input: `[proxy type][record]*`, a record being `[type][name length][name][value length
//! (2 bytes, little-endian)][value]`; the type byte picks from [`TYPE_URLS`] (modulo), the
//! proxy type byte from [`PROXY_TYPES`]. A record cut short ends the input. Seeds are whole
//! states of Kuma's goldens (`fuzz/seeds/xds_translate/`, written by the ignored test
//! `fuzz_seeds::write_fuzz_seeds` of crates/envoy-config), so libFuzzer mutates the protobuf
//! bytes of real Listeners, Clusters, ClusterLoadAssignments, Secrets and RouteConfigurations.
//!
//! Properties: nothing panics; every NACK names a type URL, a field and a reason, and a
//! resource of the input (of its type URL; a NACK that awaits a Secret names the Listener or
//! Cluster that needs it, or the Secret, which the input lacks); the same state translates twice to the same result, with a version that is the
//! config's content version; a state that translates still translates, to the same config,
//! after its resources are encoded and decoded again (and decoding that encoding is stable);
//! and the config passes what the runtime checks before serving (`Runtime::apply`): every
//! listener's cluster exists (SNI routes' too), one listener per address, every mesh a listener
//! or cluster uses has its mTLS material, and that material parses (CA certificate, identity
//! chain and key).
#![no_main]

use bearing_envoy_config::decode::{
    CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION, RUNTIME, SECRET,
};
use bearing_envoy_config::{translate, Nack, NodeInfo, ResourceSet};
use bearing_proxy_config::{ProxyConfig, UpstreamTls};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};

/// The type URLs a record can carry: those the CP sink decodes (Runtime: gateway connection
/// limits) and one Bearing does not use.
pub const TYPE_URLS: [&str; 7] = [
    LISTENER,
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    SECRET,
    ROUTE_CONFIGURATION,
    RUNTIME,
    "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
];

/// The proxy types a bootstrap node can carry.
pub const PROXY_TYPES: [&str; 4] = ["dataplane", "ingress", "egress", "gateway"];

/// Resource bytes by `(type URL, name)`: one resource per name and type, as an ADS state.
type Resources<'a> = BTreeMap<(&'static str, String), &'a [u8]>;

/// The state an input describes: the proxy type and its resources (a later record replaces an
/// earlier one of the same type and name).
fn state(data: &[u8]) -> Option<(&'static str, Resources<'_>)> {
    let (&proxy, mut rest) = data.split_first()?;
    let mut resources = BTreeMap::new();
    while let [kind, name_len, tail @ ..] = rest {
        let name_len = usize::from(*name_len);
        let Some((name, tail)) = tail.split_at_checked(name_len) else {
            break;
        };
        let [lo, hi, tail @ ..] = tail else { break };
        let Some((value, tail)) =
            tail.split_at_checked(usize::from(u16::from_le_bytes([*lo, *hi])))
        else {
            break;
        };
        let type_url = TYPE_URLS[usize::from(*kind) % TYPE_URLS.len()];
        let name = String::from_utf8_lossy(name).into_owned();
        resources.insert((type_url, name), value);
        rest = tail;
    }
    Some((
        PROXY_TYPES[usize::from(proxy) % PROXY_TYPES.len()],
        resources,
    ))
}

/// Every resource of `set` encoded again, as the CP sink would receive it.
fn reencoded(set: &ResourceSet) -> Vec<(&'static str, &str, Vec<u8>)> {
    fn all<'a, M: Message>(
        type_url: &'static str,
        map: &'a BTreeMap<String, M>,
    ) -> impl Iterator<Item = (&'static str, &'a str, Vec<u8>)> + 'a {
        map.iter()
            .map(move |(name, m)| (type_url, name.as_str(), m.encode_to_vec()))
    }
    all(LISTENER, &set.listeners)
        .chain(all(CLUSTER, &set.clusters))
        .chain(all(CLUSTER_LOAD_ASSIGNMENT, &set.endpoints))
        .chain(all(SECRET, &set.secrets))
        .chain(all(ROUTE_CONFIGURATION, &set.routes))
        .chain(all(RUNTIME, &set.runtimes))
        .collect()
}

/// A NACK is well-formed and names what it is about.
fn check_nack(nack: &Nack, names: &BTreeSet<(&str, &str)>) {
    assert!(
        !nack.type_url.is_empty(),
        "NACK without a type URL: {nack:?}"
    );
    assert!(
        !nack.reason.trim().is_empty(),
        "NACK without a reason: {nack:?}"
    );
    assert!(
        !nack.field.trim().is_empty(),
        "NACK without a field: {nack:?}"
    );
    let named = names.contains(&(nack.type_url.as_str(), nack.resource.as_str()));
    if nack.awaiting && nack.type_url == SECRET {
        assert!(!named, "awaits a Secret the state holds: {nack:?}");
    } else {
        // Awaiting or not, a Listener or Cluster naming a Secret not yet come is one of the state.
        assert!(named, "NACK names no resource of the state: {nack:?}");
    }
}

/// What `Runtime::apply` (proxy/src/runtime.rs) and its mesh TLS build need of a config.
fn check_servable(config: &ProxyConfig) {
    let mut addresses = BTreeSet::new();
    for l in &config.listeners {
        assert!(
            addresses.insert(l.address),
            "two listeners on {} ({})",
            l.address,
            l.name
        );
        match &l.sni_routes {
            Some(routes) => {
                for r in routes {
                    assert!(
                        config.clusters.contains_key(&r.cluster),
                        "listener {}: SNI route to a missing cluster {:?}",
                        l.name,
                        r.cluster
                    );
                    if let Some(t) = &r.terminate {
                        assert!(
                            config.mtls.contains_key(&t.mesh),
                            "{}: no mTLS {}",
                            l.name,
                            t.mesh
                        );
                    }
                }
            }
            None => assert!(
                config.clusters.contains_key(&l.cluster),
                "listener {} names a missing cluster {:?}",
                l.name,
                l.cluster
            ),
        }
        assert!(
            l.gateway.is_none(),
            "a gateway listener over xDS: {}",
            l.name
        );
        if let Some(t) = &l.tls {
            assert!(
                config.mtls.contains_key(&t.mesh),
                "{}: no mTLS for {}",
                l.name,
                t.mesh
            );
        }
    }
    for (name, c) in &config.clusters {
        assert_eq!(name, &c.name, "cluster keyed by another name");
        if let Some(UpstreamTls::Mesh { mesh, .. }) = &c.tls {
            assert!(
                config.mtls.contains_key(mesh),
                "cluster {name}: no mTLS for {mesh}"
            );
        }
    }
    for (mesh, m) in &config.mtls {
        assert_eq!(mesh, &m.mesh);
        if let Err(e) = bearing_tls::MeshCa::from_cert_pem(&m.ca_cert_pem) {
            panic!("mesh {mesh}: the CA does not parse: {e}");
        }
        let identity = m.identity_pem.as_deref().unwrap_or_default();
        if let Err(e) = bearing_tls::load_identity_pem(identity, identity) {
            panic!("mesh {mesh}: the identity does not parse: {e}");
        }
    }
}

fuzz_target!(
    init: {
        // The field guard's descriptor pool is decoded once per process (~2 s under ASan):
        // done before the first input, so it does not count against that input's timeout.
        let _ = bearing_envoy_config::decode::descriptor_pool();
    },
    |data: &[u8]| {
    let Some((proxy_type, resources)) = state(data) else {
        return;
    };
    let node = NodeInfo {
        name: "fuzz".into(),
        mesh: "default".into(),
        proxy_type: proxy_type.into(),
        source: "fuzz".into(),
    };
    let names: BTreeSet<(&str, &str)> = resources.keys().map(|(t, n)| (*t, n.as_str())).collect();
    // The CP sink: decode every resource, NACK those that do not decode or are not used.
    let mut set = ResourceSet::default();
    let mut refused = Vec::new();
    for ((type_url, name), bytes) in &resources {
        if let Err(nack) = set.insert(name, type_url, bytes) {
            assert_eq!(&nack.type_url, type_url);
            assert_eq!(&nack.resource, name);
            refused.push(nack);
        }
    }
    for nack in &refused {
        check_nack(nack, &names);
    }
    if !refused.is_empty() {
        return;
    }
    let first = translate(&set, &node);
    let again = translate(&set, &node);
    assert_eq!(first, again, "translation is not deterministic");
    let config = match first {
        Ok(config) => config,
        Err(nacks) => {
            assert!(!nacks.is_empty(), "refused without a NACK");
            for nack in &nacks {
                check_nack(nack, &names);
            }
            return;
        }
    };
    assert_eq!(config.version, config.content_version());
    assert!(
        serde_json::to_string(&config).is_ok(),
        "the config does not serialize"
    );
    check_servable(&config);

    let mut decoded_again = ResourceSet::default();
    for (type_url, name, bytes) in reencoded(&set) {
        if let Err(nack) = decoded_again.insert(name, type_url, &bytes) {
            panic!("an encoded resource does not decode again: {nack:?}");
        }
    }
    // Compared decoded: maps (`Struct`s, metadata) encode in a different order every time.
    assert!(
        set.listeners == decoded_again.listeners
            && set.clusters == decoded_again.clusters
            && set.endpoints == decoded_again.endpoints
            && set.secrets == decoded_again.secrets
            && set.routes == decoded_again.routes,
        "decode→encode→decode is not stable"
    );
    match translate(&decoded_again, &node) {
        Ok(again) => assert_eq!(config, again, "re-encoded resources translate differently"),
        Err(nacks) => panic!("re-encoded resources are refused: {nacks:?}"),
    }
});

//! Writes the seeds of the fuzz target `xds_translate` (`fuzz/fuzz_targets/xds_translate.rs`)
//! from Kuma's goldens: each seed is one golden's whole state (placeholders replaced, the mesh
//! Secrets it names added, as `corpus::load` gives them) in the target's input format
//! `[proxy type][type, name length, name, value length (u16 LE), value]*`.
//!
//! Kept modest: at most `MAX_SEED` bytes (the run's `-max_len`), and per corpus folder (its
//! first two levels) the smallest golden with resources that translates with mesh mTLS, the
//! smallest that translates without, and the smallest that is NACKed. Run it with
//! `cargo test -p bearing-envoy-config --test fuzz_seeds -- --ignored` after the corpus or the
//! translation changes; the seeds it replaces are those named `golden-*`.

mod corpus;

use bearing_envoy_config::decode::{
    CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION, RUNTIME, SECRET,
};
use bearing_envoy_config::{translate, ResourceSet};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The target's type bytes, in its order (`TYPE_URLS` there).
const TYPE_URLS: [&str; 6] = [
    LISTENER,
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    SECRET,
    ROUTE_CONFIGURATION,
    RUNTIME,
];
/// The target's proxy type bytes, in its order (`PROXY_TYPES` there).
const PROXY_TYPES: [&str; 4] = ["dataplane", "ingress", "egress", "gateway"];
/// `-max_len` of `benches/fuzz.sh` for this target: a longer seed would be cut.
const MAX_SEED: usize = 16384;

/// One golden as a seed, and its outcome (`nacked`, `translates`, `translates with mTLS`);
/// `None` if it does not fit the format.
fn seed(file: &std::path::Path) -> Option<(Vec<u8>, &'static str)> {
    let short = corpus::short(file);
    let node = corpus::node_for(&short);
    let proxy = PROXY_TYPES.iter().position(|p| *p == node.proxy_type)?;
    let mut out = vec![u8::try_from(proxy).ok()?];
    let mut set = ResourceSet::default();
    let mut decodes = true;
    for r in corpus::load(file).ok()? {
        let kind = TYPE_URLS.iter().position(|t| *t == r.type_url)?;
        out.push(u8::try_from(kind).ok()?);
        out.push(u8::try_from(r.name.len()).ok()?);
        out.extend_from_slice(r.name.as_bytes());
        out.extend_from_slice(&u16::try_from(r.resource.value.len()).ok()?.to_le_bytes());
        out.extend_from_slice(&r.resource.value);
        decodes &= set.insert(&r.name, &r.type_url, &r.resource.value).is_ok();
    }
    let outcome = match translate(&set, &node) {
        Ok(config) if decodes && !config.mtls.is_empty() => "translates with mTLS",
        Ok(_) if decodes => "translates",
        _ => "nacked",
    };
    Some((out, outcome))
}

#[test]
#[ignore = "writes fuzz/seeds/xds_translate; run by hand"]
fn write_fuzz_seeds() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/xds_translate");
    std::fs::create_dir_all(&dir).unwrap();
    for old in std::fs::read_dir(&dir).unwrap().flatten() {
        if old.file_name().to_string_lossy().starts_with("golden-") {
            std::fs::remove_file(old.path()).unwrap();
        }
    }
    // Per folder and outcome, the smallest seed.
    let mut chosen: BTreeMap<(String, &str), (String, Vec<u8>)> = BTreeMap::new();
    for file in corpus::envoy_goldens() {
        let Some((bytes, outcome)) = seed(&file) else {
            continue;
        };
        if bytes.len() > MAX_SEED || bytes.len() == 1 {
            continue;
        }
        let short = corpus::short(&file);
        let parent = short.rsplit_once('/').map_or("", |(dir, _)| dir);
        let folder: Vec<&str> = parent.split('/').take(2).collect();
        let folder = folder.join("/");
        let slot = chosen
            .entry((folder, outcome))
            .or_insert((short.clone(), bytes.clone()));
        if bytes.len() < slot.1.len() {
            *slot = (short, bytes);
        }
    }
    let translated = chosen.keys().filter(|(_, o)| *o != "nacked").count();
    assert!(translated >= 5, "only {translated} translating seeds");
    assert!(
        chosen.keys().any(|(_, o)| *o == "translates with mTLS"),
        "no seed with mTLS"
    );
    let mut total = 0;
    for ((_, outcome), (short, bytes)) in &chosen {
        let name = format!("golden-{}", short.replace(['/', '.'], "-"));
        println!("{name}: {} bytes, {outcome}", bytes.len());
        total += bytes.len();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    println!("{} seeds, {total} bytes", chosen.len());
}

//! Every `kuma-sidecar` container kuma-cp's injector writes (Kuma's injector goldens) starts
//! Bearing: its arguments and `KUMA_*` environment parse as `bearing run`'s, so existing
//! manifests keep working with Bearing in place of kuma-dp.
//!
//! One test function: it sets process environment variables, which no other test here reads.

use bearing::args::{Cli, Command};
use clap::Parser;

const INJECTOR: &str = "../../shared/kuma-corpus/injector";

/// A container's arguments and its `KUMA_*` variables with a literal value.
type Sidecar = (Vec<String>, Vec<(String, String)>);

/// The `kuma-sidecar` containers of a Pod (a container, or a native sidecar: an init
/// container that keeps running).
fn sidecars(pod: &serde_json::Value) -> Vec<Sidecar> {
    let list = |key: &str| pod["spec"][key].as_array().cloned().unwrap_or_default();
    let containers = list("containers");
    let init_containers = list("initContainers");
    containers
        .iter()
        .chain(&init_containers)
        .filter(|c| c["name"] == "kuma-sidecar")
        .map(|c| {
            let args = c["args"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let env = c["env"]
                .as_array()
                .map(|vars| {
                    vars.iter()
                        .filter_map(|v| {
                            let name = v["name"].as_str()?;
                            let value = v["value"].as_str()?;
                            name.starts_with("KUMA_")
                                .then(|| (name.to_string(), value.to_string()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            (args, env)
        })
        .collect()
}

/// Removes every `KUMA_*` and `BEARING_*` variable (this test is the only thread of its
/// binary that touches the environment).
fn clear_kuma_env() {
    for (name, _) in std::env::vars() {
        if name.starts_with("KUMA_") || name.starts_with("BEARING_") {
            std::env::remove_var(name);
        }
    }
}

#[test]
fn injected_sidecar_args_and_env_parse() {
    let dir = format!("{}/{INJECTOR}", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".golden.yaml"))
        .collect();
    files.sort();
    let mut checked = 0;
    let mut variables = std::collections::BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let docs = bearing_model::yaml::parse_documents(&text, 1).unwrap();
        for doc in docs {
            for (args, env) in sidecars(&doc.value) {
                clear_kuma_env();
                for (name, value) in &env {
                    std::env::set_var(name, value);
                    variables.insert(name.clone());
                }
                let argv = std::iter::once("bearing".to_string()).chain(args.iter().cloned());
                let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| {
                    panic!("{}: args {args:?} with env {env:?}: {e}", file.display())
                });
                assert!(matches!(cli.command, Command::Run(_)), "{}", file.display());
                checked += 1;
            }
        }
    }
    clear_kuma_env();
    assert_eq!(
        checked, 86,
        "kuma-sidecar containers in the injector goldens"
    );
    assert!(variables.contains("KUMA_CONTROL_PLANE_CA_CERT"));
    assert!(variables.contains("KUMA_DNS_ENABLED"));

    // An unknown flag is still an error naming it.
    let err = Cli::try_parse_from(["bearing", "run", "--log-level=info", "--no-such-flag=1"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--no-such-flag"), "{err}");
    // A malformed value in a variable the injector sets is an error naming its flag.
    std::env::set_var("KUMA_DNS_ENABLED", "maybe");
    let err = Cli::try_parse_from(["bearing", "run"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--dns-enabled"), "{err}");
    clear_kuma_env();
}

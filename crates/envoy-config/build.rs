//! Finds the protobuf descriptor set that `envoy-types` ships (`src/generated/types.bin`, every
//! Envoy v3 message the crate generated code for) so the decoder can embed it: the crate does
//! not export it, and with it Kuma's JSON/YAML goldens decode by reflection without compiling
//! the .proto files again.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = std::env::var("TARGET").unwrap_or_default();
    // Offline first (every package this build uses is downloaded by now); a machine that has
    // not downloaded the other platforms' packages metadata reads may need the registry.
    let run = |offline: bool| {
        let mut command = Command::new(&cargo);
        command.args([
            "metadata",
            "--format-version",
            "1",
            "--filter-platform",
            &target,
        ]);
        if offline {
            command.arg("--offline");
        }
        command
            .arg("--manifest-path")
            .arg(PathBuf::from(&manifest_dir).join("Cargo.toml"))
            .output()
            .expect("running cargo metadata to find envoy-types")
    };
    let mut output = run(true);
    if !output.status.success() {
        output = run(false);
    }
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let manifest = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == "envoy-types")
        .filter_map(|p| p["manifest_path"].as_str())
        .max()
        .expect("envoy-types is a dependency");
    let bin = PathBuf::from(manifest)
        .parent()
        .expect("a manifest path has a parent")
        .join("src/generated/types.bin");
    assert!(bin.is_file(), "{} is missing", bin.display());
    println!("cargo:rerun-if-changed={}", bin.display());
    println!("cargo:rustc-env=ENVOY_TYPES_DESCRIPTORS={}", bin.display());
}

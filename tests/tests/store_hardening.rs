//! End-to-end: hostile or unreadable store files never reach a running proxy's config, and a
//! MeshTrafficPermission that denies fails closed on the inbounds it targets.
//!
//! Host `a` runs the `web` sidecar (outbounds 10001 → backend over HTTP, 10002 → redis over
//! TCP); host `b` runs `backend-1` in front of nginx (80) and redis (6379).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Result};
use bearing_e2e::*;

const MESH: &str = "type: Mesh\nname: default\n";
const OUT_HTTP: &str = "http://127.0.0.1:10001/";

fn web(a: &Host) -> String {
    let networking = r#"  inbound:
  - port: 18080
    servicePort: 8080
    tags: {kuma.io/service: web, kuma.io/protocol: http}
  outbound:
  - port: 10001
    tags: {kuma.io/service: backend}
  - port: 10002
    tags: {kuma.io/service: redis}
"#;
    dataplane_yaml("web", a, networking)
}

fn backend(b: &Host) -> String {
    let networking = r#"  inbound:
  - port: 18080
    servicePort: 80
    tags: {kuma.io/service: backend, kuma.io/protocol: http}
  - port: 16379
    servicePort: 6379
    tags: {kuma.io/service: redis, kuma.io/protocol: tcp}
"#;
    dataplane_yaml("backend-1", b, networking)
}

/// Topology a+b with nginx and redis on b, and a store with web (a) and backend-1 (b).
fn two_hosts() -> Result<(Topology, PathBuf)> {
    require_root_and_tools()?;
    let topo = Topology::new(&["a", "b"])?;
    let (a, b) = (topo.host("a"), topo.host("b"));
    start_nginx(b, 80)?;
    start_redis(b, 6379)?;
    let dir = write_store(
        &topo,
        &[
            ("mesh.yaml", MESH.into()),
            ("web.yaml", web(a)),
            ("backend-1.yaml", backend(b)),
        ],
    )?;
    Ok((topo, dir))
}

/// Waits until the proxy's `last_rejected` names `needle`, then checks that the version did not
/// move, the proxy still runs and still serves `url` from `client`.
fn rejected_and_still_serving(
    proxy: &Bearing,
    client: &Host,
    good: &serde_json::Value,
    needle: &str,
) -> Result<()> {
    wait_until_ok(Duration::from_secs(15), || {
        let problems = proxy.config_dump()?["last_rejected"]["problems"].to_string();
        ensure!(problems.contains(needle), "not rejected yet: {problems}");
        Ok(())
    })?;
    ensure!(proxy.process().is_running(), "the proxy died");
    ensure!(
        proxy.config_dump()?["version"] == *good,
        "the version moved"
    );
    let (code, _) = curl(client, [OUT_HTTP])?;
    ensure!(code == 200, "the old config stopped serving: {code}");
    Ok(())
}

/// Peak resident memory of a process, in kB (`VmHWM`).
fn peak_rss_kb(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or_else(|| anyhow::anyhow!("no VmHWM"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

#[test]
fn alias_bomb_nul_file_and_unreadable_file_leave_the_running_proxy_serving() -> Result<()> {
    let (topo, dir) = two_hosts()?;
    let (a, b) = (topo.host("a"), topo.host("b"));
    let web = Bearing::start(a, &dir, &["--name", "web"])?;
    let _backend = Bearing::start(b, &dir, &["--name", "backend-1"])?;
    let good = web.config_dump()?["version"].clone();
    let (code, _) = curl(a, [OUT_HTTP])?;
    ensure!(code == 200, "no baseline: {code}");

    // A 400-byte "billion laughs" (9^9 nodes): refused at its line, memory stays small.
    let mut bomb = String::from(
        "type: Mesh\nname: bomb\nx0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..9 {
        let p = format!("*x{}", i - 1);
        bomb.push_str(&format!("x{i}: &x{i} [{}]\n", vec![p; 9].join(", ")));
    }
    write_store_file(&dir, "bomb.yaml", &bomb)?;
    rejected_and_still_serving(
        &web,
        a,
        &good,
        "bomb.yaml:8:10: invalid YAML: aliases repeat more than 100000 nodes",
    )?;
    let peak = peak_rss_kb(web.process().pid())?;
    ensure!(peak < 200_000, "peak RSS {peak} kB after the alias bomb");
    std::fs::remove_file(dir.join("bomb.yaml"))?;

    // The backend's Dataplane file zero-filled: refused, its endpoint stays.
    let size = std::fs::metadata(dir.join("backend-1.yaml"))?.len() as usize;
    write_store_file(&dir, "backend-1.yaml", &"\0".repeat(size))?;
    rejected_and_still_serving(
        &web,
        a,
        &good,
        "backend-1.yaml:1:1: invalid YAML: character U+0000 (NUL) is not allowed in YAML",
    )?;
    let endpoints = &web.config_dump()?["config"]["clusters"]["backend"]["endpoints"];
    ensure!(
        endpoints.as_array().map_or(0, Vec::len) == 1,
        "endpoints: {endpoints}"
    );
    write_store_file(&dir, "backend-1.yaml", &backend(b))?;

    // A file that cannot be read (EIO): a read error naming it, no rejection, no change;
    // once it is gone the read error clears.
    let eio = dir.join("eio.yaml");
    std::os::unix::fs::symlink("/proc/self/mem", &eio)?;
    wait_until_ok(Duration::from_secs(15), || {
        let dump = web.config_dump()?;
        let errors = dump["read_error"]["problems"].to_string();
        ensure!(
            errors.contains(&format!(
                "{}:0: cannot read file: Input/output error",
                eio.display()
            )),
            "no read error yet: {errors}"
        );
        ensure!(dump["version"] == good, "the version moved");
        Ok(())
    })?;
    let (code, _) = curl(a, [OUT_HTTP])?;
    ensure!(code == 200, "stopped serving on a read error: {code}");
    ensure!(
        web.process()
            .log_contents()
            .contains("cannot read the store"),
        "read error not logged"
    );
    std::fs::remove_file(&eio)?;
    wait_until_ok(Duration::from_secs(15), || {
        ensure!(
            web.config_dump()?["read_error"].is_null(),
            "read error not cleared"
        );
        Ok(())
    })?;
    Ok(())
}

#[test]
fn mesh_traffic_permission_deny_fails_closed_on_the_inbound_it_targets() -> Result<()> {
    let (topo, dir) = two_hosts()?;
    let (a, b) = (topo.host("a"), topo.host("b"));
    let _web = Bearing::start(a, &dir, &["--name", "web"])?;
    let backend = Bearing::start(b, &dir, &["--name", "backend-1"])?;
    let (code, _) = curl(a, [OUT_HTTP])?;
    ensure!(code == 200, "no baseline: {code}");

    let policy = "type: MeshTrafficPermission\nname: deny-backend\nmesh: default\nspec:\n  targetRef: {kind: MeshService, name: backend}\n  from:\n  - targetRef: {kind: Mesh}\n    default:\n      action: Deny\n";
    write_store_file(&dir, "mtp.yaml", policy)?;
    let http_inbound = format!("inbound:{}:18080", b.ip4());
    wait_until_ok(Duration::from_secs(15), || {
        let dump = backend.config_dump()?;
        let listeners = dump["config"]["listeners"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let denied = listeners
            .iter()
            .find(|l| l["name"] == http_inbound.as_str())
            .map(|l| l["deny_all"].clone());
        ensure!(
            denied == Some("MeshTrafficPermission/deny-backend".into()),
            "not applied yet: {denied:?}"
        );
        Ok(())
    })?;
    // The targeted inbound refuses; the other inbound of the same proxy keeps serving.
    let (code, _) = curl(a, [OUT_HTTP])?;
    ensure!(code == 503, "denied inbound answered {code}");
    let pong = redis_cli(a, [127, 0, 0, 1], 10002, ["PING"])?;
    ensure!(pong == "PONG", "the other inbound stopped: {pong:?}");
    let refused = backend.metric(&format!(
        "bearing_rbac_denied_total{{listener=\"{http_inbound}\"}}"
    ))?;
    ensure!(refused >= 1.0, "refusals not counted: {refused}");
    let dump = backend.config_dump()?;
    let not_enforced = dump["not_enforced"].to_string();
    ensure!(
        not_enforced.contains("mtp.yaml:9: MeshTrafficPermission/deny-backend: spec.from[0].default.action: Deny is not enforced per source by Bearing"),
        "{not_enforced}"
    );
    let log = backend.process().log_contents();
    let logged = log
        .lines()
        .filter(|l| l.contains("refusing every connection") && l.contains("deny-backend"))
        .count();
    ensure!(logged == 1, "logged {logged} times:\n{log}");

    // `bearing validate` prints the warning and exits 0: a warning is not an error.
    let out = a.run(bearing_bin()?, [Path::new("validate"), dir.as_path()])?;
    ensure!(
        out.code() == Some(0),
        "validate exit {:?}: {}",
        out.code(),
        out.stdout
    );
    ensure!(
        out.stdout
            .contains("MeshTrafficPermission/deny-backend: spec.from[0].default.action"),
        "{}",
        out.stdout
    );

    // Removing the policy restores the inbound.
    std::fs::remove_file(dir.join("mtp.yaml"))?;
    wait_until_ok(Duration::from_secs(15), || {
        let (code, _) = curl(a, [OUT_HTTP])?;
        ensure!(code == 200, "still refused: {code}");
        Ok(())
    })?;
    Ok(())
}

//! End-to-end transparent proxying: `bearing transparent-proxy install` puts the iptables
//! rules into host namespaces, the sidecars run as uid 5678, and unmodified clients (curl as
//! root) address services by their real (or virtual) IP and port.
//!
//! Host `a` runs the `web` sidecar, host `b` the `backend-1` sidecar in front of nginx on port
//! 80 (an inbound) and nginx on 9090 (not an inbound: inbound passthrough). Host `c` is
//! outside the mesh: no sidecar, no rules.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Result};
use bearing_e2e::*;

/// The virtual IP `web`'s explicit outbound to `backend` listens on (captured, never bound).
const BACKEND_VIP: &str = "240.0.0.10";

fn mesh(passthrough: bool) -> String {
    format!("type: Mesh\nname: default\nnetworking:\n  outbound:\n    passthrough: {passthrough}\n")
}

/// The `transparentProxying` line of a captured Dataplane.
const TRANSPARENT: &str =
    "  transparentProxying: {redirectPortInbound: 15006, redirectPortOutbound: 15001}\n";

fn web(a: &Host) -> String {
    let networking = format!(
        "{TRANSPARENT}  inbound:\n  - port: 8080\n    tags: {{kuma.io/service: web, kuma.io/protocol: http}}\n  outbound:\n  - address: {BACKEND_VIP}\n    port: 80\n    tags: {{kuma.io/service: backend}}\n"
    );
    dataplane_yaml("web", a, &networking)
}

fn backend(b: &Host) -> String {
    let networking = format!(
        "{TRANSPARENT}  inbound:\n  - port: 80\n    tags: {{kuma.io/service: backend, kuma.io/protocol: http}}\n"
    );
    dataplane_yaml("backend-1", b, &networking)
}

fn transparent_proxy(host: &Host, action: &str) -> Result<Output> {
    let bin = bearing_bin()?;
    host.run(&bin, ["transparent-proxy", action])?.check()
}

fn listener_metric(b: &Bearing, metric: &str, listener: &str) -> Result<f64> {
    b.metric(&format!(
        "bearing_listener_{metric}{{listener=\"{listener}\"}}"
    ))
}

fn inbound_2xx(b: &Bearing, listener: &str) -> Result<f64> {
    b.metric(&format!(
        "bearing_listener_http_requests_total{{listener=\"{listener}\",class=\"2xx\"}}"
    ))
}

/// Topology a, b, c with the peers started, rules installed on a and b, and the store.
struct Mesh {
    topo: Topology,
    dir: PathBuf,
    before: Vec<String>,
}

fn mesh_setup(passthrough: bool) -> Result<Mesh> {
    require_root_and_tools()?;
    let topo = Topology::new(&["a", "b", "c"])?;
    let (a, b, c) = (topo.host("a"), topo.host("b"), topo.host("c"));
    NginxConfig::new(80).start(b)?;
    NginxConfig::new(9090)
        .server_snippet("location /whoami { return 200 \"$remote_addr\\n\"; }")
        .start(b)?;
    NginxConfig::new(80).start(c)?;
    let before = vec![firewall_rules(a)?, firewall_rules(b)?];
    transparent_proxy(a, "install")?;
    transparent_proxy(b, "install")?;
    let dir = write_store(
        &topo,
        &[
            ("mesh.yaml", mesh(passthrough)),
            ("web.yaml", web(a)),
            ("backend-1.yaml", backend(b)),
        ],
    )?;
    Ok(Mesh { topo, dir, before })
}

#[test]
fn captured_traffic_crosses_both_sidecars_and_uninstall_restores_rules() -> Result<()> {
    let m = mesh_setup(true)?;
    let (a, b, c) = (m.topo.host("a"), m.topo.host("b"), m.topo.host("c"));
    let web = Bearing::start(a, &m.dir, &["--name", "web"])?;
    let backend = Bearing::start(b, &m.dir, &["--name", "backend-1"])?;
    let inbound = format!("inbound:{}:80", b.ip4());
    wait_until(Duration::from_secs(5), || {
        a.udp_listening(15053).unwrap_or(false)
    })?;

    // The explicit outbound on a virtual IP: no socket is bound there, iptables brings it.
    let (code, body) = curl(a, [format!("http://{BACKEND_VIP}/")])?;
    ensure!(code == 200, "status {code}: {body}");
    ensure!(body.contains("hello from b"), "body: {body}");
    ensure!(inbound_2xx(&web, &format!("outbound:{BACKEND_VIP}:80"))? == 1.0);
    ensure!(
        inbound_2xx(&backend, &inbound)? == 1.0,
        "crossed b's inbound"
    );

    // b's real addresses, IPv4 and IPv6: a passes it through, b's inbound listener serves it.
    for (url, family) in [
        (http_url(b.ip4(), 80, "/"), "ipv4"),
        (http_url(b.ip6(), 80, "/"), "ipv6"),
    ] {
        let passthrough = format!("outbound:passthrough:{family}");
        let seen = listener_metric(&web, "downstream_connections_total", &passthrough)?;
        let served = inbound_2xx(&backend, &inbound)?;
        let (code, body) = curl(a, [&url])?;
        ensure!(
            code == 200 && body.contains("hello from b"),
            "{url}: {code} {body}"
        );
        ensure!(
            listener_metric(&web, "downstream_connections_total", &passthrough)? == seen + 1.0,
            "{url} went through a's {passthrough}"
        );
        ensure!(
            inbound_2xx(&backend, &inbound)? == served + 1.0,
            "{url} crossed b's inbound listener"
        );
    }

    // A port of b that is no inbound: passed to the application from 127.0.0.6 / ::6.
    let (code, body) = curl(a, [http_url(b.ip4(), 9090, "/whoami")])?;
    ensure!(code == 200 && body.trim() == "127.0.0.6", "{code} {body}");
    let (code, body) = curl(a, [http_url(b.ip6(), 9090, "/whoami")])?;
    ensure!(code == 200 && body.trim() == "::6", "{code} {body}");

    // Outside the mesh: passthrough to c, which has no sidecar.
    let (code, body) = curl(a, [http_url(c.ip4(), 80, "/")])?;
    ensure!(
        code == 200 && body.contains("hello from c"),
        "{code} {body}"
    );

    drop((web, backend));
    transparent_proxy(a, "uninstall")?;
    transparent_proxy(b, "uninstall")?;
    ensure!(
        firewall_rules(a)? == m.before[0] && firewall_rules(b)? == m.before[1],
        "uninstall left the rules as they were:\nbefore:\n{}\nafter:\n{}",
        m.before[0],
        firewall_rules(a)?
    );
    Ok(())
}

#[test]
fn mesh_without_passthrough_refuses_outside_destinations() -> Result<()> {
    let m = mesh_setup(false)?;
    let (a, b, c) = (m.topo.host("a"), m.topo.host("b"), m.topo.host("c"));
    let web = Bearing::start(a, &m.dir, &["--name", "web", "--dns-enabled=false"])?;
    ensure!(
        !a.udp_listening(15053)?,
        "--dns-enabled=false: no DNS server"
    );
    let _backend = Bearing::start(b, &m.dir, &["--name", "backend-1"])?;

    let out = curl_output(a, [http_url(c.ip4(), 80, "/")])?;
    ensure!(
        !out.ok(),
        "c is outside the mesh and passthrough is off: {out:?}"
    );
    ensure!(
        listener_metric(&web, "downstream_errors_total", "outbound:passthrough:ipv4")? >= 1.0,
        "the refusal is counted"
    );
    // Mesh destinations still work.
    let (code, _) = curl(a, [format!("http://{BACKEND_VIP}/")])?;
    ensure!(code == 200, "status {code}");

    // Turning passthrough on applies live.
    let version = web.config_dump()?["version"].clone();
    write_store_file(&m.dir, "mesh.yaml", &mesh(true))?;
    wait_until(Duration::from_secs(10), || {
        web.config_dump().is_ok_and(|d| d["version"] != version)
    })?;
    let (code, body) = curl(a, [http_url(c.ip4(), 80, "/")])?;
    ensure!(
        code == 200 && body.contains("hello from c"),
        "{code} {body}"
    );
    Ok(())
}

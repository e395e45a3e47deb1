//! End-to-end mesh DNS and virtual outbounds: host `a` has the transparent proxy installed
//! with all DNS redirected to the sidecar's DNS server (15053). Its resolv.conf names a real
//! upstream resolver (dnsmasq on host `d`), so `dig` and `curl` are unmodified clients.
//!
//! `backend-1` (host `b`, version v1, instance 1) and `backend-2` (host `c`, version v2,
//! instance 2) serve nginx behind plain (non-transparent) sidecars.
//!
//! The DNS limits test asks the sidecar's DNS server on 127.0.0.1:15053 directly (no
//! redirection), with a python resolver on host `d` that answers beyond the client's size.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bearing_e2e::*;

const VIRTUAL_OUTBOUNDS: &str = r#"type: VirtualOutbound
mesh: default
name: versioned
selectors:
  - match:
      kuma.io/service: "*"
conf:
  host: "{{.service}}.{{.version}}.mesh"
  port: "80"
  parameters:
    - name: service
      tagKey: "kuma.io/service"
    - name: version
      tagKey: "kuma.io/version"
---
type: VirtualOutbound
mesh: default
name: instance
selectors:
  - match:
      kuma.io/service: "*"
      kuma.io/instance: "*"
conf:
  host: "inst-{{.instance}}.{{.service}}.mesh"
  port: "8080"
  parameters:
    - name: service
      tagKey: "kuma.io/service"
    - name: instance
      tagKey: "kuma.io/instance"
"#;

fn web(a: &Host) -> String {
    let networking = r#"  transparentProxying: {redirectPortInbound: 15006, redirectPortOutbound: 15001}
  inbound:
  - port: 9999
    tags: {kuma.io/service: web, kuma.io/protocol: http}
"#;
    dataplane_yaml("web", a, networking)
}

fn backend(n: u8, host: &Host) -> String {
    let networking = format!(
        r#"  inbound:
  - port: 8080
    servicePort: 80
    tags:
      kuma.io/service: backend
      kuma.io/protocol: http
      kuma.io/version: v{n}
      kuma.io/instance: "{n}"
"#
    );
    dataplane_yaml(&format!("backend-{n}"), host, &networking)
}

fn mesh(mesh_services: &str) -> String {
    format!("type: Mesh\nname: default\nmeshServices:\n  mode: {mesh_services}\n")
}

/// `dig +short` from `host` through its resolv.conf (and so through the redirection).
fn dig(host: &Host, args: &[&str]) -> Result<String> {
    let mut all = vec!["+short", "+tries=1", "+time=3"];
    all.extend_from_slice(args);
    let out = host.run("dig", all)?.check()?;
    Ok(out.stdout.trim().to_string())
}

/// The `status:` of a full `dig` answer (NOERROR, NXDOMAIN, SERVFAIL).
fn dig_status(host: &Host, name: &str) -> Result<String> {
    let out = host.run("dig", ["+tries=1", "+time=5", name])?;
    let status = out
        .stdout
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .with_context(|| format!("no status in dig output: {}{}", out.stdout, out.stderr))?;
    Ok(status.to_string())
}

/// Waits until the sidecar's config has no record for `name`, then requires that `dig` from
/// `host` gets no VIP for it either.
fn wait_until_no_vip(host: &Host, proxy: &Bearing, name: &str) -> Result<()> {
    wait_until(Duration::from_secs(10), || {
        proxy.dns_vip(name).is_ok_and(|v| v.is_none())
    })?;
    ensure!(
        !dig(host, &[name]).is_ok_and(|ip| is_vip(&ip)),
        "{name} still resolves to a VIP"
    );
    Ok(())
}

/// Whether `ip` is in the default VIP range 240.0.0.0/4.
fn is_vip(ip: &str) -> bool {
    ip.parse::<std::net::Ipv4Addr>()
        .is_ok_and(|ip| ip.octets()[0] >= 240)
}

/// Bodies of `n` requests to `url` from `host`.
fn bodies(host: &Host, url: &str, n: usize) -> Result<Vec<String>> {
    (0..n)
        .map(|_| {
            let (code, body) = curl(host, [url])?;
            ensure!(code == 200, "{url}: status {code}: {body}");
            Ok(body)
        })
        .collect()
}

#[test]
fn mesh_names_resolve_to_vips_that_reach_the_selected_instances() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["dig", "dnsmasq"])?;
    let topo = Topology::new(&["a", "b", "c", "d"])?;
    let (a, b, c, d) = (
        topo.host("a"),
        topo.host("b"),
        topo.host("c"),
        topo.host("d"),
    );
    start_nginx(b, 80)?;
    start_nginx(c, 80)?;
    // The upstream resolver for names outside the mesh.
    let dnsmasq = d.spawn(
        "dnsmasq",
        [
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={}", d.ip4()),
            &format!("--address=/outside.test/{}", c.ip4()),
        ],
    )?;
    wait_until(Duration::from_secs(10), || {
        d.udp_listening(53).unwrap_or(false)
    })?;
    a.set_etc_file("resolv.conf", &format!("nameserver {}\n", d.ip4()))?;
    let bin = bearing_bin()?;
    a.run(
        &bin,
        ["transparent-proxy", "install", "--redirect-all-dns-traffic"],
    )?
    .check()?;

    let dir = write_store(
        &topo,
        &[
            ("mesh.yaml", mesh("Everywhere")),
            ("vo.yaml", VIRTUAL_OUTBOUNDS.into()),
            ("web.yaml", web(a)),
            ("backend-1.yaml", backend(1, b)),
            ("backend-2.yaml", backend(2, c)),
        ],
    )?;
    let sidecar = Bearing::start(a, &dir, &["--name", "web"])?;
    let _b = Bearing::start(b, &dir, &["--name", "backend-1"])?;
    let _c = Bearing::start(c, &dir, &["--name", "backend-2"])?;
    wait_until(Duration::from_secs(10), || {
        a.udp_listening(15053).unwrap_or(false)
    })?;

    // dig answers every mesh name with the VIP of the sidecar's table.
    for name in [
        "backend.mesh",
        "backend.v1.mesh",
        "inst-2.backend.mesh",
        "backend.svc.mesh.local",
    ] {
        let vip = sidecar
            .dns_vip(name)?
            .with_context(|| format!("{name} has no VIP"))?;
        ensure!(dig(a, &[name])? == vip, "dig {name} returned the VIP {vip}");
        ensure!(is_vip(&vip), "{name}: {vip} is in 240.0.0.0/4");
    }
    ensure!(
        dig(a, &["AAAA", "backend.mesh"])?.starts_with("::ffff:"),
        "AAAA is the IPv4-mapped VIP"
    );

    // Each hostname reaches exactly the instances its virtual outbound selected.
    let from_b = "hello from b";
    let from_c = "hello from c";
    let v1 = bodies(a, "http://backend.v1.mesh/", 6)?;
    ensure!(v1.iter().all(|b| b.contains(from_b)), "v1 only: {v1:?}");
    let v2 = bodies(a, "http://backend.v2.mesh/", 6)?;
    ensure!(v2.iter().all(|b| b.contains(from_c)), "v2 only: {v2:?}");
    let inst = bodies(a, "http://inst-1.backend.mesh:8080/", 4)?;
    ensure!(
        inst.iter().all(|b| b.contains(from_b)),
        "instance 1: {inst:?}"
    );
    let all = bodies(a, "http://backend.mesh/", 6)?;
    ensure!(
        all.iter().any(|b| b.contains(from_b)) && all.iter().any(|b| b.contains(from_c)),
        "the whole service: {all:?}"
    );
    // The MeshService generated from kuma.io/service, on its port.
    let ms = bodies(a, "http://backend.svc.mesh.local:8080/", 6)?;
    ensure!(
        ms.iter().any(|b| b.contains(from_b)) && ms.iter().any(|b| b.contains(from_c)),
        "MeshService: {ms:?}"
    );

    // A custom HostnameGenerator adds its name; kuma-cp's default one keeps its own.
    write_store_file(
        &dir,
        "hostname-generator.yaml",
        "type: HostnameGenerator\nname: team\nspec:\n  selector:\n    meshService:\n      matchLabels:\n        kuma.io/origin: zone\n  template: \"{{ .DisplayName }}.team.local\"\n",
    )?;
    wait_until(Duration::from_secs(10), || {
        dig(a, &["backend.team.local"]).is_ok_and(|ip| is_vip(&ip))
    })?;
    for url in [
        "http://backend.team.local:8080/",
        "http://backend.svc.mesh.local:8080/",
    ] {
        let got = bodies(a, url, 4)?;
        ensure!(
            got.iter().all(|b| b.contains(from_b) || b.contains(from_c)),
            "{url} beside a custom HostnameGenerator: {got:?}"
        );
    }

    // A name outside the mesh is answered by the real upstream (dnsmasq on d).
    ensure!(dig(a, &["outside.test"])? == c.ip4().to_string());
    // An unknown mesh name does not exist.
    ensure!(dig_status(a, "nope.mesh")? == "NXDOMAIN");

    // The table follows the store: a v3 instance appears, then goes.
    ensure!(dig_status(a, "backend.v3.mesh")? == "NXDOMAIN");
    write_store_file(&dir, "backend-3.yaml", &backend(3, d))?;
    wait_until(Duration::from_secs(10), || {
        dig(a, &["backend.v3.mesh"]).is_ok_and(|ip| is_vip(&ip))
    })?;
    let v1_vip = dig(a, &["backend.v1.mesh"])?;
    ensure!(
        Some(v1_vip) == sidecar.dns_vip("backend.v1.mesh")?,
        "existing VIPs do not move when hostnames are added"
    );
    std::fs::remove_file(dir.join("backend-3.yaml"))?;
    wait_until(Duration::from_secs(10), || {
        dig_status(a, "backend.v3.mesh").is_ok_and(|s| s == "NXDOMAIN")
    })?;

    // The seed's migration: `reachableBackends` leaves web only the MeshServices it lists (here
    // none of backend's), the kuma.io/service names stay.
    let only_web = web(a).replace(
        "redirectPortOutbound: 15001}",
        "redirectPortOutbound: 15001, reachableBackends: {refs: [{kind: MeshService, name: web}]}}",
    );
    write_store_file(&dir, "web.yaml", &only_web)?;
    wait_until_no_vip(a, &sidecar, "backend.svc.mesh.local")
        .context("backend's MeshService is still reachable without being listed")?;
    ensure!(
        bodies(a, "http://backend.mesh/", 2).is_ok(),
        "the kuma.io/service name went with the MeshService"
    );
    // `Exclusive`: MeshService names only, no kuma.io/service ones.
    write_store_file(&dir, "web.yaml", &web(a))?;
    write_store_file(&dir, "mesh.yaml", &mesh("Exclusive"))?;
    // (backend.v1.mesh, a VirtualOutbound name, is below it: NODATA, not NXDOMAIN.)
    wait_until_no_vip(a, &sidecar, "backend.mesh")
        .context("Exclusive mode still serves backend.mesh")?;
    let ms = bodies(a, "http://backend.svc.mesh.local:8080/", 2)?;
    ensure!(
        ms.iter().all(|b| b.contains(from_b) || b.contains(from_c)),
        "Exclusive: {ms:?}"
    );

    // The upstream gone: a clear SERVFAIL, not a hang.
    dnsmasq.stop(Duration::from_secs(2));
    ensure!(dig_status(a, "outside.test")? == "SERVFAIL");

    drop(sidecar);
    a.run(&bin, ["transparent-proxy", "uninstall"])?.check()?;
    Ok(())
}

/// A resolver on `argv[1]:53` (UDP and TCP) answering every A query with 60 addresses,
/// about 1 KB, whatever the client's buffer: over UDP it ignores the 512-byte limit, as a
/// misbehaving upstream would.
const BIG_ANSWER_RESOLVER_PY: &str = r#"
import socket, struct, sys, threading
ip = sys.argv[1]
def answer(query):
    qend = 12
    while query[qend] != 0:
        qend += query[qend] + 1
    question = query[12:qend + 5]
    header = query[:2] + struct.pack(">HHHHH", 0x8180, 1, 60, 0, 0)
    records = b"".join(struct.pack(">HHHIH", 0xC00C, 1, 1, 60, 4) + bytes([198, 51, 100, i]) for i in range(60))
    return header + question + records
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, 53))
    while True:
        data, peer = s.recvfrom(4096)
        s.sendto(answer(data), peer)
def tcp():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, 53))
    s.listen(16)
    while True:
        c, _ = s.accept()
        n = struct.unpack(">H", c.recv(2))[0]
        data = b""
        while len(data) < n:
            data += c.recv(n - len(data))
        reply = answer(data)
        c.sendall(struct.pack(">H", len(reply)) + reply)
        c.close()
threading.Thread(target=udp, daemon=True).start()
tcp()
"#;

/// Opens `argv[2]` TCP connections to `argv[1]:15053`, each announcing a 65,535-byte query
/// and sending two bytes of it, holds them, and prints the RSS of pid `argv[3]` (kB) once
/// all are open, then how many the server had closed after `argv[4]` seconds.
const TCP_FLOOD_PY: &str = r#"
import resource, socket, sys, time
host, count, pid, hold = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
resource.setrlimit(resource.RLIMIT_NOFILE, (count + 100, count + 100))
def rss():
    for line in open("/proc/%s/status" % pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
conns = []
for _ in range(count):
    s = socket.socket()
    try:
        s.connect((host, 15053))
        s.send(b"\xff\xff\x01\x02")
    except OSError:
        pass
    conns.append(s)
print("peak_rss_kb", rss())
time.sleep(hold)
closed = 0
for s in conns:
    s.setblocking(False)
    try:
        if s.recv(1) == b"":
            closed += 1
    except BlockingIOError:
        pass
    except OSError:
        closed += 1
print("closed", closed)
"#;

/// The resident set of process `pid`, in kB.
fn rss_kb(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

#[test]
fn dns_over_tcp_flood_is_bounded_and_big_answers_are_truncated() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["dig", "python3"])?;
    let topo = Topology::new(&["a", "d"])?;
    let (a, d) = (topo.host("a"), topo.host("d"));
    let _resolver = d.spawn(
        "python3",
        ["-c", BIG_ANSWER_RESOLVER_PY, &d.ip4().to_string()],
    )?;
    wait_until(Duration::from_secs(10), || {
        d.udp_listening(53).unwrap_or(false) && d.tcp_listening(53).unwrap_or(false)
    })?;
    // dig asks the sidecar's DNS server directly: no redirection is needed here.
    a.set_etc_file("resolv.conf", &format!("nameserver {}\n", d.ip4()))?;
    let at = ["@127.0.0.1", "-p", "15053", "+tries=1", "+time=5"];
    let dig_at = |args: &[&str]| -> Result<String> {
        let out = a.run("dig", at.iter().chain(args))?.check()?;
        Ok(out.stdout)
    };
    let dir = write_store(
        &topo,
        &[("mesh.yaml", mesh("Disabled")), ("web.yaml", web(a))],
    )?;
    let sidecar = Bearing::start(a, &dir, &["--name", "web"])?;
    wait_until(Duration::from_secs(10), || {
        a.tcp_listening(15053).unwrap_or(false)
    })?;

    // About 1 KB over UDP to a client without EDNS: relayed truncated with TC, not SERVFAIL.
    let udp = dig_at(&["+noedns", "+ignore", "big.test"])?;
    ensure!(
        udp.contains("status: NOERROR") && udp.contains(" tc"),
        "UDP answer not truncated with TC:\n{udp}"
    );
    // dig's own retry over TCP gets all 60 addresses.
    let retried = dig_at(&["+short", "+noedns", "big.test"])?;
    ensure!(
        retried.lines().count() == 60,
        "TCP retry: {} addresses:\n{retried}",
        retried.lines().count()
    );

    // 8,000 connections announcing 0xFFFF bytes.
    let pid = sidecar.process().pid();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
    ensure!(comm.trim() == "bearing", "pid {pid} is {comm:?}");
    let before = rss_kb(pid)?;
    let flood = a
        .command("python3")
        .args([
            "-c",
            TCP_FLOOD_PY,
            "127.0.0.1",
            "8000",
            &pid.to_string(),
            "3",
        ])
        .timeout(Duration::from_secs(120))
        .output()?
        .check()?;
    let field = |name: &str| -> Result<u64> {
        flood
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no {name} in {:?}", flood.stdout))
    };
    let peak = field("peak_rss_kb")?;
    let closed = field("closed")?;
    // Mesh names are still answered, over UDP and TCP.
    let udp = dig_at(&["nothing.mesh"])?;
    ensure!(
        udp.contains("status: NXDOMAIN"),
        "UDP query after the flood:\n{udp}"
    );
    let tcp = dig_at(&["+tcp", "nothing.mesh"])?;
    ensure!(
        tcp.contains("status: NXDOMAIN"),
        "TCP query after the flood:\n{tcp}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kb(pid)?;
    let refused = sidecar.metric("bearing_dns_tcp_refused_total")?;
    eprintln!(
        "DNS TCP flood of 8000 connections: RSS {before} kB before, {peak} kB with all open, \
         {after} kB after; {closed} closed by the server within 3 s, {refused} refused at accept"
    );
    ensure!(
        closed == 8000,
        "{closed} of 8000 flood connections closed within 3 s"
    );
    ensure!(refused >= 7000.0, "{refused} connections refused at accept");
    ensure!(
        peak < before + 20 * 1024,
        "RSS grew from {before} to {peak} kB during the flood"
    );
    ensure!(
        after < before + 10 * 1024,
        "RSS {after} kB after the flood, {before} before"
    );
    Ok(())
}

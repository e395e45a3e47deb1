#!/usr/bin/env python3
"""Mesh DNS and hostname-table benchmark (issue #4).

Inside a network namespace of its own (removed at the end), with a store of N services
(one Dataplane each) and a VirtualOutbound giving each service a second hostname:

* compile: time from `bearing run` to `/ready` and the proxy's peak RSS, for a store of
  N services and N virtual-outbound hostnames (2N hostnames with VIPs and listeners);
* DNS: dnsperf queries per second, and latency, for A queries over all mesh names against
  Bearing's DNS server and against dnsmasq serving the same table (name → VIP, taken from
  Bearing's /config_dump), both single-threaded, alternating, several runs each.

Usage: python3 benches/mesh_dns.py [--services 10000] [--runs 3] [--seconds 10]
Writes benches/results/mesh-dns.md (and .json). Needs root, dnsperf, dnsmasq, a release build.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benches" / "results"
NETNS = f"bench-dns-{os.getpid()}"
ADMIN = "127.0.0.1:9901"
BEARING_DNS_PORT = 15053
DNSMASQ_PORT = 25353


def die(msg: str) -> None:
    print(f"mesh_dns.py: {msg}", file=sys.stderr)
    sys.exit(1)


def ns(*argv: str) -> list[str]:
    return ["ip", "netns", "exec", NETNS, *argv]


def write_store(store: Path, services: int) -> None:
    """Mesh, N backends (one inbound each, 10.1.x.y:8080) and the client with TP."""
    store.mkdir(parents=True)
    (store / "mesh.yaml").write_text("type: Mesh\nname: default\n")
    vo = """type: VirtualOutbound
mesh: default
name: alias
selectors:
  - match:
      kuma.io/service: "*"
conf:
  host: "{{.service}}.alias.mesh"
  port: "80"
  parameters:
    - name: service
      tagKey: kuma.io/service
"""
    (store / "vo.yaml").write_text(vo)
    docs = []
    for i in range(services):
        docs.append(
            f"type: Dataplane\nmesh: default\nname: svc-{i}\nnetworking:\n"
            f"  address: 10.1.{i // 250}.{i % 250 + 1}\n  inbound:\n  - port: 8080\n"
            f"    tags: {{kuma.io/service: svc-{i}, kuma.io/protocol: http}}\n"
        )
    (store / "backends.yaml").write_text("---\n".join(docs))
    (store / "client.yaml").write_text(
        "type: Dataplane\nmesh: default\nname: client\nnetworking:\n  address: 10.0.0.1\n"
        "  transparentProxying: {redirectPortInbound: 15006, redirectPortOutbound: 15001}\n"
        "  inbound:\n  - port: 9999\n    tags: {kuma.io/service: client}\n"
    )


def admin(path: str) -> tuple[int, bytes]:
    out = subprocess.run(
        ns("curl", "-s", "-o", "-", "-w", "\n%{http_code}", f"http://{ADMIN}{path}"),
        capture_output=True,
        check=False,
    )
    body, _, code = out.stdout.rpartition(b"\n")
    return int(code or b"0"), body


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def dnsperf(port: int, queries: Path, seconds: int) -> dict:
    out = subprocess.run(
        ns("dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries),
           "-l", str(seconds), "-c", "4", "-T", "1", "-q", "200"),
        capture_output=True,
        text=True,
        check=False,
    )
    text = out.stdout
    qps = re.search(r"Queries per second:\s+([\d.]+)", text)
    lat = re.search(r"Average Latency \(s\):\s+([\d.]+)", text)
    lost = re.search(r"Queries lost:\s+(\d+)", text)
    noerror = re.search(r"NOERROR (\d+)", text)
    if not qps:
        die(f"dnsperf gave no result:\n{text}\n{out.stderr}")
    return {
        "qps": float(qps.group(1)),
        "avg_ms": float(lat.group(1)) * 1000 if lat else None,
        "lost": int(lost.group(1)) if lost else None,
        "noerror": int(noerror.group(1)) if noerror else None,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--services", type=int, default=10000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=int, default=10)
    args = p.parse_args()
    if os.geteuid() != 0:
        die("run as root (it creates a network namespace)")
    for tool in ("dnsperf", "dnsmasq", "ip", "curl"):
        if not shutil.which(tool):
            die(f"{tool} is missing (apt-get install dnsperf dnsmasq-base iproute2 curl)")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "bearing"], cwd=ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    binary = target / "release" / "bearing"

    work = Path(tempfile.mkdtemp(prefix="bench-dns-"))
    os.chmod(work, 0o755)
    procs: list[subprocess.Popen] = []
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        subprocess.run(ns("ip", "link", "set", "lo", "up"), check=True)
        store = work / "store"
        write_store(store, args.services)
        subprocess.run(["chmod", "-R", "a+rX", str(work)], check=True)
        resolv = work / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.1\n")

        # Compile: exec → /ready, and peak RSS.
        start = time.monotonic()
        bearing = subprocess.Popen(
            ns("setpriv", "--reuid", "5678", "--regid", "5678", "--clear-groups", str(binary),
               "run", "--config-dir", str(store), "--name", "client", "--concurrency", "1",
               "--dns-resolv-conf", str(resolv), "--log-level", "warn"),
            stdout=subprocess.DEVNULL,
            stderr=open(work / "bearing.log", "w"),
        )
        procs.append(bearing)
        while admin("/ready")[0] != 200:
            if bearing.poll() is not None:
                die(f"bearing exited: {(work / 'bearing.log').read_text()[-2000:]}")
            if time.monotonic() - start > 120:
                die("bearing not ready in 120 s")
            time.sleep(0.005)
        ready_s = time.monotonic() - start
        pids = subprocess.run(["ip", "netns", "pids", NETNS], capture_output=True, text=True,
                              check=True).stdout.split()
        pid = next(int(p) for p in pids if Path(f"/proc/{p}/comm").read_text().strip() == "bearing")
        # Memory before /config_dump, whose JSON of every listener would count in the peak.
        rss_kb = status_kb(pid, "VmHWM")
        settled_kb = status_kb(pid, "VmRSS")
        _, dump = admin("/config_dump")
        config = json.loads(dump)["config"]
        records = config["dns"]
        listeners = len(config["listeners"])

        # The same table for dnsmasq, and the query file: every name, A.
        hosts = work / "mesh.hosts"
        hosts.write_text("".join(f"{r['ips'][0]} {r['name']}\n" for r in records))
        queries = work / "queries.txt"
        queries.write_text("".join(f"{r['name']} A\n" for r in records))
        dnsmasq = subprocess.Popen(
            ns("dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--bind-interfaces",
               "--listen-address=127.0.0.1", f"--port={DNSMASQ_PORT}", f"--addn-hosts={hosts}",
               "--cache-size=0", "--user=root", "--local-ttl=30"),
            stdout=subprocess.DEVNULL,
            stderr=open(work / "dnsmasq.log", "w"),
        )
        procs.append(dnsmasq)
        time.sleep(1.0)

        results: dict[str, list[dict]] = {"bearing": [], "dnsmasq": []}
        for _ in range(args.runs):
            for name, port in (("bearing", BEARING_DNS_PORT), ("dnsmasq", DNSMASQ_PORT)):
                results[name].append(dnsperf(port, queries, args.seconds))
        summary = {
            "services": args.services,
            "hostnames": len(records),
            "listeners": listeners,
            "ready_ms": round(ready_s * 1000, 1),
            "peak_rss_mb": round(rss_kb / 1024, 1),
            "rss_mb": round(settled_kb / 1024, 1),
            "dns": {
                k: {
                    "qps_median": statistics.median(r["qps"] for r in v),
                    "avg_ms_median": statistics.median(r["avg_ms"] for r in v),
                    "runs": v,
                }
                for k, v in results.items()
            },
        }
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        subprocess.run(["ip", "netns", "del", NETNS], check=False)
        shutil.rmtree(work, ignore_errors=True)

    b, d = summary["dns"]["bearing"], summary["dns"]["dnsmasq"]
    md = f"""# Mesh DNS and hostname table

{summary['services']} services (one Dataplane each) plus a VirtualOutbound giving each a second
hostname: {summary['hostnames']} DNS names, {summary['listeners']} listeners. Shared 2-core VM;
Bearing with `--concurrency 1`, dnsmasq single-threaded; dnsperf `-c 4 -T 1`, {args.seconds} s,
{args.runs} alternating runs each, medians.

| measure | Bearing | dnsmasq | ratio |
|---|---|---|---|
| A queries/s over all mesh names | {b['qps_median']:.0f} | {d['qps_median']:.0f} | {b['qps_median'] / d['qps_median']:.2f}x |
| average latency (ms) | {b['avg_ms_median']:.2f} | {d['avg_ms_median']:.2f} | |

| compile | value |
|---|---|
| `bearing run` to `/ready` (load, compile, VIPs, bind) | {summary['ready_ms']} ms |
| peak RSS until ready | {summary['peak_rss_mb']} MB |
| RSS when ready | {summary['rss_mb']} MB |
"""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mesh-dns.md").write_text(md)
    (RESULTS / "mesh-dns.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(md)


if __name__ == "__main__":
    main()

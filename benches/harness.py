#!/usr/bin/env python3
"""Bearing benchmark harness (issue #7): direct, Bearing, Envoy, HAProxy and nginx in one run.

Started by benches/run.sh, which installs the peers first. Python 3.11, standard library only.
Every contender runs with the same worker count (1, then 2); contenders alternate within each
scenario (A B C D E, then E D C B A, ...); the median of the runs is reported. Results go to
benches/results/results.{md,json} and benches/results/*.svg; `--only mtls` (the mesh mTLS
scenarios of issue #5, Bearing and Envoy) to benches/results/mtls.{md,json} and mtls/*.svg;
`--only gateway` (the builtin gateway of issue #6 with 50 routes, plain and HTTPS, against
Envoy, HAProxy and nginx with the same routes) to benches/results/gateway.{md,json}.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benches" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Origin (a separate nginx) and the TCP sink/source.
ORIGIN_H1 = 18100
ORIGIN_H2 = 18101
ORIGIN_TCP = 18102  # iperf3 -s

CONTENDERS = ["direct", "bearing", "envoy", "haproxy", "nginx"]
PROXIES = CONTENDERS[1:]
SMALL_BODY = "hello from the origin\n"

# Load scenarios and who runs them. Mesh mTLS (#5) is Bearing against Envoy with the same CA.
MTLS_SCENARIOS = ["sidecar-pair-mtls", "mtls-handshakes"]
SCENARIOS = {s: CONTENDERS for s in ["http1-small", "http1-100k", "http2-multiplexed",
                                      "conn-per-request", "tcp-bulk", "sidecar-pair"]}
SCENARIOS.update({s: ["bearing", "envoy"] for s in MTLS_SCENARIOS})
# The builtin gateway (#6): GATEWAY_ROUTES PREFIX routes /r0../r49 to the origin, the request
# hits a middle one; the same routes in every proxy, plain HTTP and HTTPS (one certificate).
GATEWAY_SCENARIOS = ["gateway-http", "gateway-https"]
SCENARIOS.update({s: PROXIES for s in GATEWAY_SCENARIOS})
GATEWAY_ROUTES = 50
GATEWAY_PATH = f"/r{GATEWAY_ROUTES // 2}/small"
GATEWAY_HOSTNAME = "gateway.bench"
# The targets are judged on these scenarios with 1 worker, so they get more runs there: a
# single 5 s run of them varies by 10-20% on a shared 2-core machine, and the median of five
# decides met or missed less by chance than the median of three.
TARGET_SCENARIOS = ("http1-small", "tcp-bulk")
# --only accepts these names for groups of scenarios; each also writes its own report.
GROUPS = {"mtls": ["sidecar-pair", *MTLS_SCENARIOS], "gateway": GATEWAY_SCENARIOS}

# The mesh of the sidecar pairs: its services, their SPIFFE ids and Kuma's SNI for the backend.
MESH = "default"
WEB, BACKEND = "bench-web", "bench-backend"
MTLS_BACKEND = "ca-1"
MTLS_MESH = f"""type: Mesh
name: {MESH}
mtls:
  enabledBackend: {MTLS_BACKEND}
  backends:
  - name: {MTLS_BACKEND}
    type: builtin
    mode: STRICT
"""


def spiffe(service: str) -> str:
    return f"spiffe://{MESH}/{service}"


def kuma_sni(service: str) -> str:
    return f"{service}{{mesh={MESH}}}"


def base_port(name: str) -> int:
    """Each proxy gets 20 ports: +0 HTTP/1.1, +1 HTTP/2, +2 TCP, +3 pair outbound,
    +4 pair inbound, +5 pair client inbound (Bearing only), +6..+8 the same for the mTLS pair,
    +10..+14 admin ports (single, pair out/in, mTLS pair out/in), +15 gateway HTTP, +16 gateway
    HTTPS, +17 gateway admin."""
    return 18200 + 20 * PROXIES.index(name)


def die(msg: str) -> None:
    print(f"harness: {msg}", file=sys.stderr)
    sys.exit(1)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# processes: CPU seconds and RSS from /proc


def tree_pids(pid: int) -> list[int]:
    """`pid` and its descendants (nginx workers)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_times(pids: list[int]) -> tuple[float, float]:
    """The user and system (kernel) CPU seconds of `pids` so far."""
    user = system = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])  # utime
        system += int(fields[12])  # stime
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_times(pids))


def read_text(path: str) -> str:
    """A one-line /proc or /sys value, or `?` when it cannot be read."""
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "?"


def status_kb(pids: list[int], key: str) -> int:
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def reset_peak(pids: list[int]) -> None:
    for p in pids:
        try:
            Path(f"/proc/{p}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            pass


@dataclass
class Proc:
    """A started server process, with the processes it forked."""

    name: str
    popen: subprocess.Popen

    def pids(self) -> list[int]:
        return tree_pids(self.popen.pid)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


STARTED: list[Proc] = []


def start(name: str, argv: list[str], logfile: Path) -> Proc:
    """Starts a server process; every one started is stopped when the harness ends."""
    with open(logfile, "ab") as out:
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    proc = Proc(name, p)
    STARTED.append(proc)
    return proc


def http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def wait_tcp(port: int, proc: Proc, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            die(f"{proc.name} exited with {proc.popen.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    die(f"{proc.name} did not listen on {port} within {limit}s")


def wait_ready(url: str, proc: Proc, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            die(f"{proc.name} exited with {proc.popen.returncode} before {url} answered 200")
        if http_status(url, 0.5) == 200:
            return
        time.sleep(0.02)
    die(f"{proc.name}: {url} not 200 within {limit}s")


# ---------------------------------------------------------------------------------------------
# configuration of the origin and of each contender


def origin_conf(work: Path) -> str:
    return f"""
worker_processes 1;
daemon off;
pid {work}/origin.pid;
error_log {work}/origin-error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {work}/origin-tmp;
    server {{
        listen 127.0.0.1:{ORIGIN_H1} reuseport backlog=4096;
        listen 127.0.0.1:{ORIGIN_H2} http2 reuseport backlog=4096;
        root {work}/www;
        location = /small {{ default_type text/plain; return 200 "{SMALL_BODY.strip()}\\n"; }}
        location ~ ^/r[0-9]+/small$ {{ default_type text/plain; return 200 "{SMALL_BODY.strip()}\\n"; }}
    }}
}}
"""


def bearing_single_store(d: Path, b: int) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "mesh.yaml").write_text("type: Mesh\nname: default\n")
    (d / "proxy.yaml").write_text(f"""type: Dataplane
name: bench-proxy
mesh: default
networking:
  address: 127.0.0.1
  inbound:
  - port: {b}
    servicePort: {ORIGIN_H1}
    tags:
      kuma.io/service: bench-http
      kuma.io/protocol: http
  - port: {b + 1}
    servicePort: {ORIGIN_H2}
    tags:
      kuma.io/service: bench-h2
      kuma.io/protocol: http2
  - port: {b + 2}
    servicePort: {ORIGIN_TCP}
    tags:
      kuma.io/service: bench-tcp
      kuma.io/protocol: tcp
""")


def bearing_pair_store(d: Path, b: int, mesh: str = f"type: Mesh\nname: {MESH}\n") -> None:
    """The sidecar pair's store: web (outbound on b+3, inbound b+5) and backend (inbound b+4)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "mesh.yaml").write_text(mesh)
    (d / "web.yaml").write_text(f"""type: Dataplane
name: {WEB}
mesh: {MESH}
networking:
  address: 127.0.0.1
  inbound:
  - port: {b + 5}
    servicePort: {ORIGIN_H1}
    tags:
      kuma.io/service: {WEB}
      kuma.io/protocol: http
  outbound:
  - port: {b + 3}
    tags:
      kuma.io/service: {BACKEND}
""")
    (d / "backend.yaml").write_text(f"""type: Dataplane
name: {BACKEND}
mesh: {MESH}
networking:
  address: 127.0.0.1
  inbound:
  - port: {b + 4}
    servicePort: {ORIGIN_H1}
    tags:
      kuma.io/service: {BACKEND}
      kuma.io/protocol: http
""")


# ---------------------------------------------------------------------------------------------
# mesh PKI: the CA of `bearing ca generate`, and leaves issued from it with openssl for Envoy


def openssl(*argv: str) -> str:
    out = subprocess.run(["openssl", *argv], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        die(f"openssl {' '.join(argv)}: {out.stderr.strip()}")
    return out.stdout


def read_secrets(path: Path) -> dict[str, bytes]:
    """The decoded `data` of each Kuma Secret (`type: Secret`, `name`, base64 `data`) in a
    multi-document YAML file, by name; enough YAML for the files `bearing ca generate` writes."""
    secrets = {}
    for doc in re.split(r"^---\s*$", path.read_text(), flags=re.M):
        fields = dict(re.findall(r"^(type|name|data):\s*['\"]?([^'\"\s]+)", doc, re.M))
        if fields.get("type") == "Secret" and "name" in fields and "data" in fields:
            secrets[fields["name"]] = base64.b64decode(fields["data"])
    return secrets


@dataclass
class MeshPki:
    """The mesh CA as PEM files, a leaf (cert, key) per pair service, and the Secrets' YAML."""

    secrets_yaml: Path
    ca: Path
    leaves: dict[str, tuple[Path, Path]]


def issue_leaf(d: Path, ca: Path, ca_key: Path, service: str) -> tuple[Path, Path]:
    """An ECDSA P-256 leaf for `service` like the one a Kuma sidecar gets: URI SAN = its SPIFFE
    id, server and client auth, 1 day."""
    cert, key, csr, ext = (d / f"{service}{x}" for x in (".pem", ".key", ".csr", ".ext"))
    ext.write_text(f"subjectAltName = URI:{spiffe(service)}\n"
                   "basicConstraints = critical, CA:FALSE\n"
                   "keyUsage = critical, digitalSignature, keyEncipherment\n"
                   "extendedKeyUsage = serverAuth, clientAuth\n")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-subj", f"/O={MESH}/CN={service}", "-out", str(csr))
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-set_serial",
            str(int.from_bytes(os.urandom(8), "big")), "-days", "1", "-sha256", "-extfile", str(ext),
            "-out", str(cert))
    return cert, key


def envoy_cluster(name: str, port: int, h2: bool = False, tls: dict | None = None) -> dict:
    c = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": port}}}}]}],
        },
    }
    if h2:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    if tls:
        c["transport_socket"] = tls
    return c


def envoy_http_listener(name: str, port: int, cluster: str, address: str = "127.0.0.1",
                        tls: dict | None = None, routes: list | None = None) -> dict:
    """An HTTP listener: every request to `cluster`, or the given route list."""
    routes = routes or [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]
    return {
        "name": name,
        "address": {"socket_address": {"address": address, "port_value": port}},
        "filter_chains": [{**({"transport_socket": tls} if tls else {}), "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network."
                         "http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "codec_type": "AUTO",
                "route_config": {"virtual_hosts": [{
                    "name": "all", "domains": ["*"],
                    "routes": routes,
                }]},
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }],
            },
        }]}],
    }


def envoy_mtls(pki: MeshPki, service: str, peer: str | None = None) -> dict:
    """Envoy's transport socket for mesh mTLS as `service`, configured as Kuma configures it:
    TLS 1.3 only, the mesh CA as the only trust. With `peer`: upstream, verifying the exact
    SPIFFE id of `peer`, Kuma's SNI for it and ALPN `kuma`; without: downstream, a client
    certificate of the mesh required."""
    cert, key = pki.leaves[service]
    common = {
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_3",
                       "tls_maximum_protocol_version": "TLSv1_3"},
        "tls_certificates": [{"certificate_chain": {"filename": str(cert)},
                              "private_key": {"filename": str(key)}}],
        "validation_context": {"trusted_ca": {"filename": str(pki.ca)}},
    }
    tls = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
    if peer:
        common["alpn_protocols"] = ["kuma"]
        common["validation_context"]["match_typed_subject_alt_names"] = [
            {"san_type": "URI", "matcher": {"exact": spiffe(peer)}}]
        ctx = {"@type": tls + "UpstreamTlsContext", "common_tls_context": common, "sni": kuma_sni(peer)}
    else:
        ctx = {"@type": tls + "DownstreamTlsContext", "common_tls_context": common,
               "require_client_certificate": True}
    return {"name": "envoy.transport_sockets.tls", "typed_config": ctx}


def envoy_tcp_listener(name: str, port: int, cluster: str) -> dict:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": name, "cluster": cluster,
            },
        }]}],
    }


def envoy_bootstrap(admin: int, listeners: list, clusters: list) -> str:
    return json.dumps({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    })


def haproxy_conf(w: int, frontends: str, pin: bool) -> str:
    cpu_map = f"\n    cpu-map auto:1/1-{w} 0-{w - 1}" if pin else ""
    return f"""global
    nbthread {w}{cpu_map}
    maxconn 12000
    no strict-limits
defaults
    mode http
    maxconn 12000
    timeout connect 5s
    timeout client 60s
    timeout server 60s
{frontends}"""


def nginx_conf(work: Path, tag: str, w: int, pin: bool, http: str, stream: str = "") -> str:
    stream_block = f"stream {{\n{stream}\n}}" if stream else ""
    affinity = "\nworker_cpu_affinity auto;" if pin else ""
    return f"""load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes {w};{affinity}
daemon off;
pid {work}/{tag}.pid;
error_log {work}/{tag}-error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 19000; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_max_temp_file_size 0;
    client_body_temp_path {work}/{tag}-tmp;
    proxy_temp_path {work}/{tag}-tmp;
{http}
}}
{stream_block}
"""


# ---------------------------------------------------------------------------------------------
# the builtin gateway (#6) and the same routes in Envoy, HAProxy and nginx


def gateway_cert(d: Path) -> tuple[Path, Path]:
    """One self-signed ECDSA P-256 certificate for every HTTPS listener (clients do not verify)."""
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / "gateway.pem", d / "gateway.key"
    if not cert.exists():
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj",
                f"/CN={GATEWAY_HOSTNAME}", "-addext", f"subjectAltName = DNS:{GATEWAY_HOSTNAME}")
    return cert, key


def bearing_gateway_store(d: Path, b: int, cert: Path, key: Path) -> None:
    """A builtin gateway Dataplane, a MeshGateway with an HTTP (b+15) and an HTTPS (b+16)
    listener, one MeshGatewayRoute of GATEWAY_ROUTES PREFIX rules to the origin's Dataplane
    (no sidecar: the gateway connects to the origin directly), and the certificate as a Kuma
    Secret (key and chain PEM in one base64 `data`)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "mesh.yaml").write_text(f"type: Mesh\nname: {MESH}\n")
    (d / "gateway.yaml").write_text(f"""type: Dataplane
name: bench-gateway
mesh: {MESH}
networking:
  address: 127.0.0.1
  gateway:
    type: BUILTIN
    tags:
      kuma.io/service: bench-gateway
""")
    (d / "origin.yaml").write_text(f"""type: Dataplane
name: bench-origin
mesh: {MESH}
networking:
  address: 127.0.0.1
  inbound:
  - port: {ORIGIN_H1}
    tags:
      kuma.io/service: bench-origin
      kuma.io/protocol: http
""")
    pem = key.read_bytes() + cert.read_bytes()
    (d / "secret.yaml").write_text(f"type: Secret\nname: bench-gateway-cert\nmesh: {MESH}\n"
                                   f"data: {base64.b64encode(pem).decode()}\n")
    (d / "mesh-gateway.yaml").write_text(f"""type: MeshGateway
mesh: {MESH}
name: bench-gateway
selectors:
- match:
    kuma.io/service: bench-gateway
conf:
  listeners:
  - port: {b + 15}
    protocol: HTTP
    tags:
      port: http
  - port: {b + 16}
    protocol: HTTPS
    tags:
      port: https
    tls:
      mode: TERMINATE
      certificates:
      - secret: bench-gateway-cert
""")
    rules = "".join(f"""    - matches:
      - path:
          match: PREFIX
          value: /r{i}
      backends:
      - destination:
          kuma.io/service: bench-origin
""" for i in range(GATEWAY_ROUTES))
    (d / "routes.yaml").write_text(f"""type: MeshGatewayRoute
mesh: {MESH}
name: bench-gateway-routes
selectors:
- match:
    kuma.io/service: bench-gateway
conf:
  http:
    rules:
{rules}""")


def envoy_gateway(b: int, cert: Path, key: Path) -> str:
    """Envoy with GATEWAY_ROUTES `path_separated_prefix` routes (Kuma's PREFIX: /r2 matches /r2
    and /r2/x, not /r25) in one virtual host, on b+15 and, with a DownstreamTlsContext, b+16."""
    routes = [{"match": {"path_separated_prefix": f"/r{i}"}, "route": {"cluster": "origin"}}
              for i in range(GATEWAY_ROUTES)]
    tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": {
            "alpn_protocols": ["h2", "http/1.1"],
            "tls_certificates": [{"certificate_chain": {"filename": str(cert)},
                                  "private_key": {"filename": str(key)}}]}}}
    return envoy_bootstrap(b + 17, [
        envoy_http_listener("gw-http", b + 15, "origin", routes=routes),
        envoy_http_listener("gw-https", b + 16, "origin", tls=tls, routes=routes),
    ], [envoy_cluster("origin", ORIGIN_H1)])


def haproxy_gateway(b: int, pem: Path) -> str:
    """HAProxy: one frontend with GATEWAY_ROUTES acls (path or path_beg path/), plain and ssl
    binds, use_backend per route; no match is a 404."""
    acls = "".join(f"    acl r{i} path /r{i}\n    acl r{i} path_beg /r{i}/\n"
                   f"    use_backend origin if r{i}\n" for i in range(GATEWAY_ROUTES))
    return f"""frontend gateway
    bind 127.0.0.1:{b + 15}
    bind 127.0.0.1:{b + 16} ssl crt {pem} alpn h2,http/1.1
{acls}    default_backend notfound
backend origin
    server o 127.0.0.1:{ORIGIN_H1}
backend notfound
    http-request return status 404
"""


def nginx_gateway(b: int, cert: Path, key: Path) -> str:
    """nginx: GATEWAY_ROUTES `location = /rN` + `location /rN/` blocks in a plain and an ssl
    server; no match is a 404."""
    locs = "".join(f"        location = /r{i} {{ proxy_pass http://gw_origin; }}\n"
                   f"        location /r{i}/ {{ proxy_pass http://gw_origin; }}\n"
                   for i in range(GATEWAY_ROUTES))
    return f"""    upstream gw_origin {{ server 127.0.0.1:{ORIGIN_H1}; keepalive 64; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{b + 15};
        listen 127.0.0.1:{b + 16} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ return 404; }}
{locs}    }}"""


# ---------------------------------------------------------------------------------------------
# contenders


@dataclass
class Contender:
    """A running contender: its processes and the ports of each scenario."""

    name: str
    single: list[Proc] = field(default_factory=list)
    pair: list[Proc] = field(default_factory=list)
    mtls: list[Proc] = field(default_factory=list)  # outbound, inbound
    gateway: list[Proc] = field(default_factory=list)
    http1: int = 0
    h2: int = 0
    tcp: int = 0
    pair_port: int = 0
    idle_rss_kb: int = 0

    def procs(self, scenario: str) -> list[Proc]:
        if scenario in GATEWAY_SCENARIOS:
            return self.gateway
        return {"sidecar-pair": self.pair, "sidecar-pair-mtls": self.mtls,
                "mtls-handshakes": self.mtls[1:]}.get(scenario, self.single)

    def stop(self) -> None:
        for p in self.single + self.pair + self.mtls + self.gateway:
            p.stop()


def selected(only: str | None) -> list[str]:
    """The load scenarios --only names (scenarios or GROUPS), in SCENARIOS order; all without."""
    if not only:
        return list(SCENARIOS)
    wanted = {s for name in only.split(",") for s in GROUPS.get(name, [name])}
    if unknown := wanted - set(SCENARIOS):
        die(f"--only: unknown scenario(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join([*SCENARIOS, *GROUPS])}")
    return [s for s in SCENARIOS if s in wanted]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="bearing-bench-"))
        self.work.chmod(0o755)  # nginx workers (user nobody) read the origin's files
        self.origin: Proc | None = None
        self.iperf: Proc | None = None
        self.results: dict = {"load": [], "memory": [], "startup": [], "apply": []}
        self.scenarios = list(SCENARIOS)
        self.pki: MeshPki | None = None

    # -- origin ------------------------------------------------------------------------------

    def start_origin(self) -> None:
        www = self.work / "www"
        www.mkdir()
        (www / "100k").write_bytes(os.urandom(100 * 1024))
        (self.work / "origin-tmp").mkdir()
        conf = self.work / "origin.conf"
        conf.write_text(origin_conf(self.work))
        self.origin = start("origin", ["nginx", "-c", str(conf), "-p", str(self.work)],
                            self.work / "origin.log")
        wait_tcp(ORIGIN_H1, self.origin)
        self.iperf = start("iperf3", ["iperf3", "-s", "-p", str(ORIGIN_TCP)], self.work / "iperf3.log")
        wait_tcp(ORIGIN_TCP, self.iperf)
        # The connect above counts as a test for iperf3 -s; give it a moment to reset.
        time.sleep(0.3)

    # -- contenders --------------------------------------------------------------------------

    def bearing_pin(self) -> list[str]:
        """Bearing's flag for --pin: each worker on its own CPU, as cpu-map and
        worker_cpu_affinity do for HAProxy and nginx."""
        return ["--pin-workers"] if self.args.pin else []

    def start_contender(self, name: str, w: int) -> Contender:
        if name == "direct":
            return Contender(name, http1=ORIGIN_H1, h2=ORIGIN_H2, tcp=ORIGIN_TCP, pair_port=ORIGIN_H1)
        b = base_port(name)
        c = Contender(name, http1=b, h2=b + 1, tcp=b + 2, pair_port=b + 3)
        d = self.work / f"{name}-w{w}"
        d.mkdir()
        logf = d / "log"
        if name == "bearing":
            bearing_single_store(d / "single", b)
            bearing_pair_store(d / "pair", b)
            pairs = [("", d / "pair", c.pair)]
            if self.wants_mtls():
                # Mesh mTLS, builtin CA: each Bearing issues its own leaf from the mesh CA.
                bearing_pair_store(d / "mtls", b + 3, MTLS_MESH)
                shutil.copy(self.mesh_pki().secrets_yaml, d / "mtls")
                pairs.append(("-mtls", d / "mtls", c.mtls))
            run = [self.args.bearing, "run", "--log-level", "warn", "--concurrency", str(w),
                   *self.bearing_pin()]
            c.single.append(start("bearing", run + ["--config-dir", str(d / "single"), "--name",
                                                    "bench-proxy", "--admin-address",
                                                    f"127.0.0.1:{b + 10}"], logf))
            for suffix, store, procs in pairs:
                for role, dataplane in (("out", WEB), ("in", BACKEND)):
                    admin = b + 11 + len(c.pair) + len(c.mtls)
                    procs.append(start(f"bearing-{role}{suffix}", run + [
                        "--config-dir", str(store), "--name", dataplane,
                        "--admin-address", f"127.0.0.1:{admin}"], logf))
            for i, p in enumerate(c.single + c.pair + c.mtls):
                wait_ready(f"http://127.0.0.1:{b + 10 + i}/ready", p)
        elif name == "envoy":
            files = {
                "single": envoy_bootstrap(b + 10, [
                    envoy_http_listener("h1", b, "origin_h1"),
                    envoy_http_listener("h2", b + 1, "origin_h2"),
                    envoy_tcp_listener("tcp", b + 2, "origin_tcp"),
                ], [envoy_cluster("origin_h1", ORIGIN_H1), envoy_cluster("origin_h2", ORIGIN_H2, True),
                    envoy_cluster("origin_tcp", ORIGIN_TCP)]),
                "out": envoy_bootstrap(b + 11, [envoy_http_listener("out", b + 3, "backend")],
                                       [envoy_cluster("backend", b + 4)]),
                "in": envoy_bootstrap(b + 12, [envoy_http_listener("in", b + 4, "local")],
                                      [envoy_cluster("local", ORIGIN_H1)]),
            }
            if self.wants_mtls():
                pki = self.mesh_pki()
                files["out-mtls"] = envoy_bootstrap(
                    b + 13, [envoy_http_listener("out", b + 6, "backend")],
                    [envoy_cluster("backend", b + 7, tls=envoy_mtls(pki, WEB, BACKEND))])
                files["in-mtls"] = envoy_bootstrap(
                    b + 14, [envoy_http_listener("in", b + 7, "local", tls=envoy_mtls(pki, BACKEND))],
                    [envoy_cluster("local", ORIGIN_H1)])
            for i, (tag, text) in enumerate(files.items()):
                f = d / f"{tag}.json"
                f.write_text(text)
                p = start(f"envoy-{tag}", [self.args.envoy, "-c", str(f), "--concurrency", str(w),
                                           "--disable-hot-restart", "--log-level", "warn"], logf)
                {"single": c.single, "out": c.pair, "in": c.pair}.get(tag, c.mtls).append(p)
                wait_ready(f"http://127.0.0.1:{b + 10 + i}/ready", p)
        elif name == "haproxy":
            confs = {
                "single": f"""frontend h1
    bind 127.0.0.1:{b}
    default_backend origin_h1
backend origin_h1
    server o 127.0.0.1:{ORIGIN_H1}
frontend h2
    bind 127.0.0.1:{b + 1} proto h2
    default_backend origin_h2
backend origin_h2
    server o 127.0.0.1:{ORIGIN_H2} proto h2
listen tcp
    mode tcp
    bind 127.0.0.1:{b + 2}
    server o 127.0.0.1:{ORIGIN_TCP}
""",
                "out": f"listen out\n    bind 127.0.0.1:{b + 3}\n    server in 127.0.0.1:{b + 4}\n",
                "in": f"listen in\n    bind 127.0.0.1:{b + 4}\n    server o 127.0.0.1:{ORIGIN_H1}\n",
            }
            for tag, text in confs.items():
                f = d / f"{tag}.cfg"
                f.write_text(haproxy_conf(w, text, self.args.pin))
                p = start(f"haproxy-{tag}", ["haproxy", "-f", str(f), "-db"], logf)
                (c.single if tag == "single" else c.pair).append(p)
                wait_tcp({"single": b, "out": b + 3, "in": b + 4}[tag], p)
        elif name == "nginx":
            loc = "        location / { proxy_pass http://%s; }"
            confs = {
                "single": (f"""    upstream o1 {{ server 127.0.0.1:{ORIGIN_H1}; keepalive 64; keepalive_requests 1000000; }}
    server {{ listen 127.0.0.1:{b}; {loc % 'o1'} }}
    server {{ listen 127.0.0.1:{b + 1} http2; {loc % 'o1'} }}""",
                           f"    server {{ listen 127.0.0.1:{b + 2}; proxy_pass 127.0.0.1:{ORIGIN_TCP}; }}"),
                "out": (f"""    upstream in {{ server 127.0.0.1:{b + 4}; keepalive 64; keepalive_requests 1000000; }}
    server {{ listen 127.0.0.1:{b + 3}; {loc % 'in'} }}""", ""),
                "in": (f"""    upstream o1 {{ server 127.0.0.1:{ORIGIN_H1}; keepalive 64; keepalive_requests 1000000; }}
    server {{ listen 127.0.0.1:{b + 4}; {loc % 'o1'} }}""", ""),
            }
            for tag, (http, stream) in confs.items():
                f = d / f"{tag}.conf"
                f.write_text(nginx_conf(d, tag, w, self.args.pin, http, stream))
                (d / f"{tag}-tmp").mkdir()
                p = start(f"nginx-{tag}", ["nginx", "-c", str(f), "-p", str(d)], logf)
                (c.single if tag == "single" else c.pair).append(p)
                wait_tcp({"single": b, "out": b + 3, "in": b + 4}[tag], p)
        if c.mtls:
            self.check_mtls(c, b)
        if self.wants_gateway():
            self.start_gateway(c, w, d, b)
        time.sleep(0.5)
        c.idle_rss_kb = status_kb(c.single[0].pids(), "VmRSS")
        return c

    # -- builtin gateway (#6) ----------------------------------------------------------------

    def wants_gateway(self) -> bool:
        return any(s in GATEWAY_SCENARIOS for s in self.scenarios)

    def start_gateway(self, c: Contender, w: int, d: Path, b: int) -> None:
        """The contender's gateway process (same worker count), then check_gateway."""
        cert, key = gateway_cert(self.work / "gateway-cert")
        logf = d / "gateway.log"
        if c.name == "bearing":
            bearing_gateway_store(d / "gateway", b, cert, key)
            p = start("bearing-gateway", [self.args.bearing, "run", "--log-level", "warn",
                                          *self.bearing_pin(),
                                          "--concurrency", str(w), "--config-dir", str(d / "gateway"),
                                          "--name", "bench-gateway", "--admin-address",
                                          f"127.0.0.1:{b + 17}"], logf)
            c.gateway.append(p)
            wait_ready(f"http://127.0.0.1:{b + 17}/ready", p)
        elif c.name == "envoy":
            f = d / "gateway.json"
            f.write_text(envoy_gateway(b, cert, key))
            p = start("envoy-gateway", [self.args.envoy, "-c", str(f), "--concurrency", str(w),
                                        "--disable-hot-restart", "--log-level", "warn"], logf)
            c.gateway.append(p)
            wait_ready(f"http://127.0.0.1:{b + 17}/ready", p)
        elif c.name == "haproxy":
            pem = d / "gateway-crt.pem"
            pem.write_bytes(cert.read_bytes() + key.read_bytes())
            f = d / "gateway.cfg"
            f.write_text(haproxy_conf(w, haproxy_gateway(b, pem), self.args.pin))
            p = start("haproxy-gateway", ["haproxy", "-f", str(f), "-db"], logf)
            c.gateway.append(p)
            wait_tcp(b + 16, p)
        elif c.name == "nginx":
            f = d / "gateway.conf"
            f.write_text(nginx_conf(d, "gateway", w, self.args.pin, nginx_gateway(b, cert, key)))
            (d / "gateway-tmp").mkdir()
            p = start("nginx-gateway", ["nginx", "-c", str(f), "-p", str(d)], logf)
            c.gateway.append(p)
            wait_tcp(b + 16, p)
        self.check_gateway(c, b)

    def check_gateway(self, c: Contender, b: int) -> None:
        """Fails loudly (never skips) unless both gateway listeners route: GATEWAY_PATH answers
        200 with the origin's body over HTTP and HTTPS, and a path no route matches is a 404 (the
        routes are really there, not a catch-all)."""
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        for scheme, port, ctx in (("http", b + 15, None), ("https", b + 16, insecure)):
            for path, want in ((GATEWAY_PATH, 200), (f"/r{GATEWAY_ROUTES}/small", 404)):
                url = f"{scheme}://127.0.0.1:{port}{path}"
                try:
                    with urllib.request.urlopen(url, timeout=5, context=ctx) as r:
                        status, body = r.status, r.read().decode(errors="replace")
                except urllib.error.HTTPError as e:
                    status, body = e.code, ""
                except OSError as e:
                    status, body = None, str(e)
                if status != want or (want == 200 and body != SMALL_BODY):
                    hint = (" (the builtin gateway, issue #6, is not in this binary?)"
                            if c.name == "bearing" else "")
                    die(f"{c.name} gateway: GET {url} gave {status} {body[:200]!r}, want {want}{hint}; "
                        f"see {self.work}/{c.name}-w*/gateway.log")

    # -- mesh mTLS ---------------------------------------------------------------------------

    def wants_mtls(self) -> bool:
        return any(s in MTLS_SCENARIOS for s in self.scenarios)

    def mesh_pki(self) -> MeshPki:
        """The mesh CA, made once by `bearing ca generate` (every Bearing mTLS store gets a copy
        of its Secrets), decoded to PEM for Envoy and openssl, and an openssl leaf per service."""
        if self.pki:
            return self.pki
        d = self.work / "mesh-ca"
        d.mkdir()
        out = subprocess.run([self.args.bearing, "ca", "generate", "--mesh", MESH, "--backend",
                              MTLS_BACKEND, "--store", str(d)], capture_output=True, text=True, check=False)
        yaml = d / f"ca-{MESH}-{MTLS_BACKEND}.yaml"
        if out.returncode != 0 or not yaml.exists():
            die(f"`bearing ca generate` failed (exit {out.returncode}; mesh mTLS, #5, not in this "
                f"binary?): {(out.stdout + out.stderr).strip()}")
        secrets = read_secrets(yaml)
        pki = d / "pki"  # outside the store: Bearing reads only the Secrets
        pki.mkdir()
        for kind in ("cert", "key"):
            name = f"{MESH}.ca-builtin-{kind}-{MTLS_BACKEND}"
            if name not in secrets:
                die(f"{yaml}: no Secret {name} (has {', '.join(secrets) or 'none'})")
            (pki / f"ca.{kind}").write_bytes(secrets[name])
        (pki / "ca.key").chmod(0o600)
        ca, ca_key = pki / "ca.cert", pki / "ca.key"
        self.pki = MeshPki(yaml, ca, {s: issue_leaf(pki, ca, ca_key, s) for s in (WEB, BACKEND)})
        return self.pki

    def mtls_client(self, service: str | None = WEB) -> ssl.SSLContext:
        """A mesh client: TLS 1.3, ALPN kuma, trusting only the mesh CA, presenting the leaf of
        `service` (none: no client certificate)."""
        pki = self.mesh_pki()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False  # the identity is the URI SAN, checked by the caller
        ctx.load_verify_locations(pki.ca)
        ctx.set_alpn_protocols(["kuma"])
        if service:
            ctx.load_cert_chain(*pki.leaves[service])
        return ctx

    @staticmethod
    def mesh_get(port: int, ctx: ssl.SSLContext | None) -> tuple[str, bytes]:
        """GET /small with `Connection: close` (as the handshake client sends it) over mesh
        mTLS, or plaintext without `ctx`: the server's URI SAN(s) and the status line."""
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                (ctx.wrap_socket(raw, server_hostname=kuma_sni(BACKEND)) if ctx else raw) as s:
            sans = [v for k, v in s.getpeercert().get("subjectAltName", ()) if k == "URI"] if ctx else []
            s.sendall(b"GET /small HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
            resp = b""
            while chunk := s.recv(4096):
                resp += chunk
            return ",".join(sans), resp.split(b"\r\n", 1)[0]

    def check_mtls(self, c: Contender, b: int) -> None:
        """Fails loudly unless the mTLS pair really is one: the inbound accepts a mesh client
        with the backend's SPIFFE id, refuses plaintext and clients without a certificate, and
        a request through the outbound reaches the origin."""
        port, who = b + 7, f"{c.name} mTLS inbound 127.0.0.1:{b + 7}"
        try:
            san, status = self.mesh_get(port, self.mtls_client())
        except OSError as e:  # ssl.SSLError is one
            die(f"{who}: no mesh mTLS exchange ({e}); see {self.work}/{c.name}-w*/log")
        if san != spiffe(BACKEND) or not status.startswith(b"HTTP/1.1 200 "):
            die(f"{who}: SAN {san!r} (want {spiffe(BACKEND)}), response {status!r}")
        for ctx, what in ((self.mtls_client(None), "a TLS client without a mesh certificate"),
                          (None, "plaintext HTTP (STRICT mTLS expected)")):
            try:
                answered = self.mesh_get(port, ctx)[1].startswith(b"HTTP/")
            except OSError:
                answered = False
            if answered:
                die(f"{who} answered {what}")
        if (st := http_status(f"http://127.0.0.1:{b + 6}/small", 5)) != 200:
            die(f"{c.name} mTLS pair: GET through the outbound answered {st}, not 200")

    # -- load generators ---------------------------------------------------------------------

    def wrk(self, port: int, path: str, extra: list[str], scheme: str = "http") -> dict:
        script = ROOT / "benches" / "wrk-report.lua"
        out = subprocess.run(
            ["wrk", "-t1", f"-c{self.args.connections}", f"-d{self.args.duration}s", "--latency",
             "-s", str(script), *extra, f"{scheme}://127.0.0.1:{port}{path}"],
            capture_output=True, text=True, check=False)
        m = re.search(r"^JSON (.*)$", out.stdout, re.M)
        if out.returncode != 0 or not m:
            die(f"wrk failed on port {port}: {out.stdout}{out.stderr}")
        r = json.loads(m.group(1))
        secs = r["duration_us"] / 1e6
        return {"rps": r["requests"] / secs, "p50_ms": r["p50"] / 1000, "p99_ms": r["p99"] / 1000,
                "p999_ms": r["p999"] / 1000, "errors": r["errors"] + r["non2xx"],
                "mbps": r["bytes"] * 8 / secs / 1e6}

    def h2load(self, port: int) -> dict:
        logf = self.work / "h2load.log"
        logf.unlink(missing_ok=True)
        out = subprocess.run(
            ["h2load", "-c", "10", "-m", "10", "-t", "1", "-D", str(self.args.duration),
             "--log-file", str(logf), f"http://127.0.0.1:{port}/small"],
            capture_output=True, text=True, check=False)
        m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out.stdout)
        fail = re.search(r"(\d+) failed, (\d+) errored", out.stdout)
        if out.returncode != 0 or not m or not fail:
            die(f"h2load failed on port {port}: {out.stdout}{out.stderr}")
        lat = sorted(int(line.split()[2]) for line in logf.read_text().splitlines() if line.strip())
        if not lat:
            die(f"h2load on port {port}: no request completed")

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(len(lat) * p / 100))] / 1000

        return {"rps": float(m.group(1)), "p50_ms": pct(50), "p99_ms": pct(99), "p999_ms": pct(99.9),
                "errors": int(fail.group(1)) + int(fail.group(2))}

    def iperf3(self, port: int) -> dict:
        for attempt in range(3):
            out = subprocess.run(
                ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(self.args.duration), "-J"],
                capture_output=True, text=True, check=False)
            try:
                r = json.loads(out.stdout)
                bps = r["end"]["sum_received"]["bits_per_second"]
                return {"gbps": bps / 1e9, "retransmits": r["end"]["sum_sent"].get("retransmits", 0)}
            except (ValueError, KeyError):
                time.sleep(1)  # the iperf3 server is still busy with the previous test
        die(f"iperf3 failed on port {port}: {out.stdout[-500:]}{out.stderr}")
        return {}

    def handshakes(self, port: int) -> dict:
        """New mesh mTLS connections per second: benches/tls-handshakes, one full TLS 1.3
        handshake with the web leaf plus GET /small and close per connection, from
        --handshake-clients threads. Its CPU seconds (run_load's `client_cpu_s`) are reported
        next to the server's."""
        cert, key = self.mesh_pki().leaves[WEB]
        out = subprocess.run(
            [self.args.tls_client, f"127.0.0.1:{port}", str(self.args.duration),
             str(self.args.handshake_clients), str(cert), str(key), "/small"],
            capture_output=True, text=True, check=False)
        m = re.search(r"^JSON (.*)$", out.stdout, re.M)
        if out.returncode != 0 or not m:
            die(f"tls-handshakes failed on port {port}: {out.stdout}{out.stderr}")
        r = json.loads(m.group(1))
        if not r["connections"]:
            die(f"tls-handshakes on port {port}: no connection got a 200 ({r['errors']} errors)")
        return {"hps": r["connections"] / r["seconds"], "p50_ms": r["p50"] / 1000,
                "p99_ms": r["p99"] / 1000, "p999_ms": r["p999"] / 1000, "errors": r["errors"]}

    def run_load(self, c: Contender, scenario: str) -> dict:
        procs = c.procs(scenario)
        pids = [p for proc in procs for p in proc.pids()]
        for proc in procs:
            if proc.popen.poll() is not None:
                die(f"{proc.name} exited with {proc.popen.returncode}")
        reset_peak(pids)
        # The load generator's and the origin's CPU too: with all of them on the same cores,
        # what they take per request bounds what any proxy can reach (the host budget).
        origin_pids = [p for proc in (self.origin, self.iperf) if proc for p in proc.pids()]
        client0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        origin0 = cpu_seconds(origin_pids)
        cpu0 = cpu_seconds(pids)
        if scenario == "http1-small":
            r = self.wrk(c.http1, "/small", [])
        elif scenario == "http1-100k":
            r = self.wrk(c.http1, "/100k", [])
        elif scenario == "http2-multiplexed":
            r = self.h2load(c.h2)
        elif scenario == "conn-per-request":
            r = self.wrk(c.http1, "/small", ["-H", "Connection: close"])
        elif scenario == "tcp-bulk":
            r = self.iperf3(c.tcp)
        elif scenario == "sidecar-pair":
            r = self.wrk(c.pair_port, "/small", [])
        elif scenario == "sidecar-pair-mtls":  # ports: see base_port
            r = self.wrk(c.pair_port + 3, "/small", [])
        elif scenario == "mtls-handshakes":
            r = self.handshakes(c.pair_port + 4)
        elif scenario == "gateway-http":  # ports: see base_port
            r = self.wrk(c.http1 + 15, GATEWAY_PATH, [])
        elif scenario == "gateway-https":
            r = self.wrk(c.http1 + 16, GATEWAY_PATH, [], scheme="https")
        else:
            raise ValueError(scenario)
        client1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        r["client_cpu_s"] = (client1.ru_utime + client1.ru_stime
                             - client0.ru_utime - client0.ru_stime)
        r["origin_cpu_s"] = cpu_seconds(origin_pids) - origin0
        if pids:
            r["cpu_s"] = cpu_seconds(pids) - cpu0
            r["peak_rss_mb"] = status_kb(pids, "VmHWM") / 1024
        return r

    # -- idle connections --------------------------------------------------------------------

    def idle_connections(self, c: Contender, n: int) -> float:
        """RSS (MB) of the single-proxy process(es) with `n` idle connections open."""
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", c.http1))
                socks.append(s)
                if i % 500 == 499:
                    time.sleep(0.05)
            time.sleep(2.0)
            return status_kb(c.single[0].pids(), "VmRSS") / 1024
        finally:
            for s in socks:
                s.close()

    def idle_mtls_connections(self, c: Contender, n: int) -> dict:
        """RSS (MB) of the mTLS pair's inbound process before and with `n` mesh mTLS connections
        open and idle: each one a full handshake (client certificate of `web`, SNI, ALPN kuma),
        then no request. Also how many were still open when RSS was read."""
        inbound, port = c.mtls[1], base_port(c.name) + 7
        before = status_kb(inbound.pids(), "VmRSS") / 1024
        ctx, socks = self.mtls_client(), []
        try:
            for _ in range(n):
                raw = socket.create_connection(("127.0.0.1", port), timeout=10)
                socks.append(ctx.wrap_socket(raw, server_hostname=kuma_sni(BACKEND)))
            time.sleep(2.0)
            rss = status_kb(inbound.pids(), "VmRSS") / 1024
            open_ = 0
            for s in socks:
                s.setblocking(False)
                try:
                    open_ += s.recv(1) != b""
                except (ssl.SSLWantReadError, BlockingIOError):
                    open_ += 1
                except OSError:
                    pass
            return {"mtls_rss_before_mb": before, "mtls_conns": n, "mtls_conns_open": open_,
                    "mtls_conns_rss_mb": rss}
        finally:
            for s in socks:
                s.close()

    # -- start-up and apply ------------------------------------------------------------------

    def services_store(self, n: int) -> Path:
        d = self.work / f"store-{n}"
        d.mkdir()
        (d / "mesh.yaml").write_text("type: Mesh\nname: default\n")
        outs = []
        for i in range(n):
            outs.append(f"""  - port: 8080
    address: 127.2.{i // 250}.{i % 250 + 1}
    tags:
      kuma.io/service: svc-{i}
""")
        (d / "client.yaml").write_text(
            "type: Dataplane\nname: bench-client\nmesh: default\nnetworking:\n  address: 127.0.0.1\n"
            "  inbound:\n  - port: 18199\n    servicePort: 18100\n    tags:\n"
            "      kuma.io/service: bench-client\n      kuma.io/protocol: http\n"
            "  outbound:\n" + "".join(outs))
        docs = [self.service_dp(i, 8080) for i in range(1, n)]
        (d / "services.yaml").write_text("---\n".join(docs))
        (d / "svc-0.yaml").write_text(self.service_dp(0, 8080))
        return d

    @staticmethod
    def service_dp(i: int, port: int) -> str:
        return f"""type: Dataplane
name: svc-{i}
mesh: default
networking:
  address: 10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}
  inbound:
  - port: {port}
    tags:
      kuma.io/service: svc-{i}
      kuma.io/protocol: http
"""

    def bearing_startup(self, store: Path) -> tuple[float, Proc]:
        admin = 18190
        t0 = time.monotonic()
        p = start("bearing-startup", [self.args.bearing, "run", "--log-level", "warn", "--config-dir",
                                      str(store), "--name", "bench-client", "--admin-address",
                                      f"127.0.0.1:{admin}"], self.work / "startup.log")
        deadline = t0 + 60
        while time.monotonic() < deadline:
            if p.popen.poll() is not None:
                die(f"bearing exited with {p.popen.returncode} during start-up; see {self.work}/startup.log")
            try:
                with socket.create_connection(("127.0.0.1", admin), timeout=1) as s:
                    s.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        return (time.monotonic() - t0) * 1000, p
            except OSError:
                pass
            time.sleep(0.001)
        die("bearing not ready within 60 s")
        raise AssertionError

    def envoy_startup(self, n: int) -> float:
        listeners, clusters = [], []
        for i in range(n):
            listeners.append(envoy_http_listener(f"out-{i}", 8080, f"svc-{i}",
                                                 f"127.2.{i // 250}.{i % 250 + 1}"))
            clusters.append(envoy_cluster(f"svc-{i}", 8080))
        listeners.append(envoy_http_listener("in", 18199, "local"))
        clusters.append(envoy_cluster("local", ORIGIN_H1))
        f = self.work / f"envoy-startup-{n}.json"
        f.write_text(envoy_bootstrap(18191, listeners, clusters))
        t0 = time.monotonic()
        p = start("envoy-startup", [self.args.envoy, "-c", str(f), "--concurrency", "1",
                                    "--disable-hot-restart", "--log-level", "warn"],
                  self.work / "envoy-startup.log")
        try:
            while time.monotonic() < t0 + 300:
                if p.popen.poll() is not None:
                    die(f"envoy exited with {p.popen.returncode} during start-up")
                if http_status("http://127.0.0.1:18191/ready", 1) == 200:
                    return (time.monotonic() - t0) * 1000
                time.sleep(0.002)
            die("envoy not ready within 300 s")
        finally:
            p.stop()
        raise AssertionError

    def config_version(self, admin: int) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/config_dump", timeout=60) as r:
                return json.loads(r.read()).get("version")
        except (OSError, ValueError):
            return None

    def startup_and_apply(self) -> None:
        runs = self.args.runs
        for n in (1000, 10000):
            log(f"start-up with {n} services")
            store = self.services_store(n)
            times, rss = [], []
            for _ in range(runs):
                ms, p = self.bearing_startup(store)
                times.append(ms)
                rss.append(status_kb(p.pids(), "VmRSS") / 1024)
                p.stop()
            self.results["startup"].append({"contender": "bearing", "services": n,
                                            "ready_ms": statistics.median(times), "runs": times,
                                            "rss_mb": statistics.median(rss)})
            envoy_ms = [self.envoy_startup(n) for _ in range(1 if n == 10000 else runs)]
            self.results["startup"].append({"contender": "envoy", "services": n,
                                            "ready_ms": statistics.median(envoy_ms), "runs": envoy_ms})
            log(f"ready with {n} services: bearing {statistics.median(times):.1f} ms, "
                f"envoy {statistics.median(envoy_ms):.1f} ms")
            if n == 10000:
                self.apply_change(store)

    def apply_change(self, store: Path) -> None:
        """Time from rewriting one Dataplane file of the store to the new version being
        published: the `config applied version=...` log line, written when /config_dump's
        version changes (checked against /config_dump after each change). Watching the log
        instead of polling /config_dump keeps a 5 MB JSON dump per poll out of the figure."""
        admin = 18190
        logf = self.work / "apply.log"
        p = start("bearing-apply", [self.args.bearing, "run", "--log-level", "info", "--config-dir",
                                    str(store), "--name", "bench-client", "--admin-address",
                                    f"127.0.0.1:{admin}"], logf)
        wait_ready(f"http://127.0.0.1:{admin}/ready", p, 120)
        time.sleep(2.0)  # the watcher's start-up reload
        times = []
        try:
            for k in range(max(3, self.args.runs)):
                before = self.config_version(admin)
                if before is None:
                    die("bearing /config_dump unreadable")
                offset = logf.stat().st_size
                t0 = time.monotonic()
                (store / "svc-0.yaml").write_text(self.service_dp(0, 8081 + k))
                version = None
                while version is None and time.monotonic() < t0 + 120:
                    with open(logf, "rb") as f:
                        f.seek(offset)
                        m = re.search(rb"config applied version=(\w+)", f.read())
                    if m and m.group(1).decode() != before:
                        version = m.group(1).decode()
                        times.append((time.monotonic() - t0) * 1000)
                    else:
                        time.sleep(0.002)
                if version is None:
                    die("store change not applied within 120 s")
                if self.config_version(admin) != version:
                    die(f"/config_dump does not show version {version} after the change")
                time.sleep(1.5)  # let the once-a-second fallback check see the change too
        finally:
            p.stop()
        self.results["apply"].append({"contender": "bearing", "services": 10000,
                                      "apply_ms": statistics.median(times), "runs": times})

    # -- the whole run -----------------------------------------------------------------------

    def run(self) -> None:
        scenarios = self.scenarios = selected(self.args.only)
        contenders = [n for n in CONTENDERS if any(n in SCENARIOS[s] for s in scenarios)
                      and (not self.args.contenders or n in self.args.contenders)]
        self.start_origin()
        for w in self.args.workers:
            log(f"== {w} worker(s): starting contenders")
            cs = {name: self.start_contender(name, w) for name in contenders}
            try:
                for name in (n for n in contenders if n in PROXIES):
                    self.results["memory"].append({"contender": name, "workers": w,
                                                   "idle_rss_mb": cs[name].idle_rss_kb / 1024})
                raw: dict[tuple, list] = {}
                runs = {s: self.args.target_runs if w == 1 and s in TARGET_SCENARIOS
                        else self.args.runs for s in scenarios}
                for run in range(max(runs.values())):
                    order = contenders if run % 2 == 0 else contenders[::-1]
                    for s in (s for s in scenarios if run < runs[s]):
                        for name in (n for n in order if n in SCENARIOS[s]):
                            r = self.run_load(cs[name], s)
                            raw.setdefault((s, name), []).append(r)
                            log(f"w={w} run {run + 1} {s:18} {name:8} " +
                                " ".join(f"{k}={v:.2f}" for k, v in r.items()))
                for (s, name), rs in raw.items():
                    med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
                    self.results["load"].append({"scenario": s, "contender": name, "workers": w,
                                                 "runs": len(rs), **med})
                if self.args.mtls_idle and any(s in MTLS_SCENARIOS for s in scenarios):
                    for name in (n for n in contenders if n in SCENARIOS[MTLS_SCENARIOS[0]]):
                        m = self.idle_mtls_connections(cs[name], self.args.mtls_idle)
                        log(f"w={w} {name}: mTLS inbound {m['mtls_rss_before_mb']:.1f} MB, "
                            f"{m['mtls_conns_rss_mb']:.1f} MB with {m['mtls_conns_open']} of "
                            f"{m['mtls_conns']} idle mTLS connections open")
                        self.results.setdefault("mtls_memory", []).append(
                            {"contender": name, "workers": w, **m})
                if not self.args.only:
                    for name in PROXIES:
                        mb = self.idle_connections(cs[name], self.args.idle_connections)
                        log(f"w={w} {name}: {mb:.1f} MB with {self.args.idle_connections} idle connections")
                        for m in self.results["memory"]:
                            if m["contender"] == name and m["workers"] == w:
                                m["idle_conns_rss_mb"] = mb
            finally:
                for c in cs.values():
                    c.stop()
        if not self.args.only:
            self.startup_and_apply()

    def stop(self) -> None:
        for p in STARTED:
            p.stop()


# ---------------------------------------------------------------------------------------------
# report


def find(rows: list, **kw) -> dict | None:
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def targets(res: dict) -> list[dict]:
    out = []

    def add(name: str, value: float | None, ref: float | None, goal: str, ok) -> None:
        if value is None or ref is None or ref == 0:
            out.append({"target": name, "status": "not measured", "ratio": None, "goal": goal})
            return
        ratio = value / ref
        out.append({"target": name, "status": "met" if ok(ratio) else "missed", "ratio": ratio,
                    "goal": goal, "value": value, "reference": ref})

    load = res["load"]

    def get(s, c, k, w=1):
        r = find(load, scenario=s, contender=c, workers=w)
        return r[k] if r else None

    add("HTTP/1.1 small, 1 worker: rps vs HAProxy", get("http1-small", "bearing", "rps"),
        get("http1-small", "haproxy", "rps"), ">= 1.0x", lambda x: x >= 1.0)
    add("HTTP/1.1 small, 1 worker: rps vs Envoy", get("http1-small", "bearing", "rps"),
        get("http1-small", "envoy", "rps"), ">= 3.0x", lambda x: x >= 3.0)
    add("HTTP/1.1 small, 1 worker: p99 vs HAProxy", get("http1-small", "bearing", "p99_ms"),
        get("http1-small", "haproxy", "p99_ms"), "<= 1.0x", lambda x: x <= 1.0)
    add("TCP bulk, 1 worker: throughput vs direct", get("tcp-bulk", "bearing", "gbps"),
        get("tcp-bulk", "direct", "gbps"), ">= 0.9x", lambda x: x >= 0.9)
    m = find(res["memory"], contender="bearing", workers=1)
    add("idle RSS (MB, 1 worker) vs 10 MB", m and m["idle_rss_mb"], 10.0, "<= 1.0x", lambda x: x <= 1.0)
    s = find(res["startup"], contender="bearing", services=1000)
    add("ready with 1k services (ms) vs 50 ms", s and s["ready_ms"], 50.0, "< 1.0x", lambda x: x < 1.0)
    return out


def host_budget(res: dict) -> str | None:
    """What the 3x-Envoy target leaves a proxy on this host: the load generator, the origin and
    the proxy share the same CPUs, so at 3x Envoy's rate the CPU that wrk and the origin take
    per request (measured in Bearing's runs) is spent before the proxy's, and the rest bounds
    the proxy's CPU per request with every CPU busy."""
    load, dur, cpus = res["load"], res["meta"]["duration"], res["meta"]["cpus"]

    def row(c: str) -> dict:
        return find(load, scenario="http1-small", contender=c, workers=1) or {}

    b, h, e = row("bearing"), row("haproxy"), row("envoy")
    others = cpu_us_per_op(b, dur, "client_cpu_s", "origin_cpu_s")
    if others is None or not e.get("rps"):
        return None
    goal = 3 * e["rps"]
    budget = cpus * 1e6 / goal - others
    busy = sum(b[k] for k in ("cpu_s", "client_cpu_s", "origin_cpu_s")) / (dur * cpus) * 100
    return (f"Host budget for 3x Envoy (HTTP/1.1 small, 1 worker): 3 x {e['rps']:.0f} = {goal:.0f} req/s. "
            f"wrk and the origin took {others:.1f} µs of CPU per request in Bearing's runs "
            f"({fmt(cpu_us_per_op(h, dur, 'client_cpu_s', 'origin_cpu_s'))} in HAProxy's), so at that rate "
            f"the {cpus} CPUs leave at most {budget:.1f} µs per request for the proxy, with no CPU idle. "
            f"Proxy CPU per request: Bearing {fmt(cpu_us_per_op(b, dur, 'cpu_s'))} µs, HAProxy "
            f"{fmt(cpu_us_per_op(h, dur, 'cpu_s'))}, Envoy {fmt(cpu_us_per_op(e, dur, 'cpu_s'))}. All CPUs were "
            f"{busy:.0f}% busy in Bearing's runs.")


def fmt(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


def cpu_us_per_op(r: dict, duration: float, *keys: str) -> float | None:
    """CPU µs per operation of the run `r` (per request, or per handshake): the CPU seconds
    under `keys` (the proxy's `cpu_s` unless named) over the operations of the run."""
    keys = keys or ("cpu_s",)
    unit = UNITS.get(r.get("scenario"), ("rps",))[0]
    if not r.get(unit) or any(r.get(k) is None for k in keys):
        return None
    return sum(r[k] for k in keys) / (r[unit] * duration) * 1e6


UNITS = {"tcp-bulk": ("gbps", "Gbit/s"), "mtls-handshakes": ("hps", "handshakes/s")}


def mtls_ratios(res: dict) -> list[dict]:
    """mTLS against plaintext for each proxy, and Bearing against Envoy with mTLS, per worker
    count; CPU per operation is the proxies' CPU seconds over the operations of the run."""
    out = []
    for w in sorted({r["workers"] for r in res["load"]}):
        def row(s: str, c: str) -> dict:
            return find(res["load"], scenario=s, contender=c, workers=w) or {}

        def cpu_us(r: dict) -> float | None:
            return cpu_us_per_op(r, res["meta"]["duration"])

        def add(name: str, value: float | None, ref: float | None) -> None:
            out.append({"workers": w, "ratio": name, "value": value, "reference": ref,
                        "x": value / ref if value is not None and ref else None})

        for c in ("bearing", "envoy"):
            plain, mtls = row("sidecar-pair", c), row("sidecar-pair-mtls", c)
            add(f"{c} pair, mTLS / plain: req/s", mtls.get("rps"), plain.get("rps"))
            add(f"{c} pair, mTLS / plain: CPU µs per request", cpu_us(mtls), cpu_us(plain))
        for s, label in (("sidecar-pair-mtls", "mTLS pair"), ("mtls-handshakes", "mTLS handshakes")):
            b, e = row(s, "bearing"), row(s, "envoy")
            key, unit = UNITS.get(s, ("rps", "req/s"))
            add(f"{label}, bearing / envoy: {unit}", b.get(key), e.get(key))
            add(f"{label}, bearing / envoy: p99 ms", b.get("p99_ms"), e.get("p99_ms"))
            add(f"{label}, bearing / envoy: CPU µs per {'handshake' if key == 'hps' else 'request'}",
                cpu_us(b), cpu_us(e))
    return [r for r in out if r["value"] is not None or r["reference"] is not None]


def gateway_ratios(res: dict) -> list[dict]:
    """Bearing's gateway against each peer's, per scenario and worker count: requests per
    second (higher is better), p99 and CPU µs per request (lower is better)."""
    out = []
    for r in res["load"]:
        if r["scenario"] not in GATEWAY_SCENARIOS or r["contender"] == "bearing":
            continue
        b = find(res["load"], scenario=r["scenario"], contender="bearing", workers=r["workers"]) or {}

        def cpu_us(x: dict) -> float | None:
            return cpu_us_per_op(x, res["meta"]["duration"])

        for what, value, ref in (("req/s", b.get("rps"), r.get("rps")),
                                 ("p99 ms", b.get("p99_ms"), r.get("p99_ms")),
                                 ("CPU µs per request", cpu_us(b), cpu_us(r))):
            out.append({"workers": r["workers"], "ratio": f"{r['scenario']}, bearing / {r['contender']}: {what}",
                        "value": value, "reference": ref,
                        "x": value / ref if value is not None and ref else None})
    return out


def markdown(res: dict, charts_dir: str = "") -> str:
    """The report: `charts_dir` is where its SVGs are, relative to it."""
    meta = res["meta"]
    scen = list(dict.fromkeys(r["scenario"] for r in res["load"]))
    handshake_client = (f", benches/tls-handshakes with {meta['handshake_clients']} threads"
                        if "mtls-handshakes" in scen else "")
    lines = [
        "# Bearing benchmark results" + (f": {meta['report']}" if meta["report"] != "results" else ""),
        "",
        f"Run {meta['date']} on `{meta['host']}` ({meta['cpus']} CPUs, {meta['kernel']}), mode "
        f"`{meta['mode']}`: {meta['runs']} run(s) per contender and scenario ({meta['target_runs']} for "
        f"{' and '.join(TARGET_SCENARIOS)} with 1 worker, which the targets are judged on), "
        f"{meta['duration']} s each, median reported; wrk -t1 -c{meta['connections']}, h2load -c10 -m10 -t1{handshake_client}. "
        "**A shared 2-core VM**: the load generator, the origin (nginx, 1 worker) and the proxy share the "
        "same two cores and other engineers were compiling. "
        + ("**Pinned** (`--pin`): each worker thread of Bearing (`--pin-workers`), HAProxy (`cpu-map`) and "
           "nginx (`worker_cpu_affinity auto`) runs on its own CPU; Envoy has no such setting and is not "
           "pinned; the load generator and the origin are not. " if meta.get("pin") else
           "Nothing is pinned. ")
        + "Compare ratios within a run, not absolute figures across machines.",
        "",
        f"Versions: {meta['versions']}.",
        "",
        f"Contenders: {', '.join(meta.get('contenders', CONTENDERS))}.",
        "",
    ]
    if res.get("targets"):
        lines += ["## Targets", "", "| target | goal | ratio | status |", "|---|---|---|---|"]
        for t in res["targets"]:
            lines.append(f"| {t['target']} | {t['goal']} | {fmt(t['ratio'], '.2f')}x | **{t['status']}** |")
        lines.append("")
        if budget := host_budget(res):
            lines += [budget, ""]
    lines += ["## Load scenarios", "",
              "CPU s: user+system seconds of the proxy process(es) during the run (both proxies for the "
              "sidecar pairs, the inbound proxy for mTLS handshakes); peak RSS: VmHWM, reset before each "
              "run. Latencies from wrk's (or h2load's) per-request timings, not corrected for coordinated "
              "omission; for handshakes, from connect to the end of the response.", ""]
    if any(s in MTLS_SCENARIOS for s in scen):
        lines += [
            "Mesh mTLS (`sidecar-pair-mtls`, `mtls-handshakes`): Bearing and Envoy with the same CA, made by "
            "`bearing ca generate`. Each Bearing issues its own leaf (Mesh `mtls.enabledBackend`, builtin, "
            "STRICT); Envoy gets openssl-issued ECDSA P-256 leaves with the same SPIFFE ids and Kuma's "
            "settings (TLS 1.3 only, client certificate required on the inbound, the outbound verifying "
            f"`{spiffe(BACKEND)}` exactly, SNI `{kuma_sni(BACKEND)}` from both, ALPN `kuma`). `mtls-handshakes`: "
            "a fresh connection per request against the inbound proxy (full TLS 1.3 handshake with the "
            "web leaf, no resumption, `GET /small`, `Connection: close`); the client skips verifying the "
            "server to stay cheaper than it, and its own CPU seconds are in the ratios below.", ""]
    if any(s in GATEWAY_SCENARIOS for s in scen):
        lines += [
            f"Builtin gateway (`gateway-http`, `gateway-https`): {GATEWAY_ROUTES} PREFIX routes `/r0` .. "
            f"`/r{GATEWAY_ROUTES - 1}` (segment-bounded, as Kuma's PREFIX) to the origin, wrk asking for "
            f"`{GATEWAY_PATH}` (a middle route); HTTPS with one self-signed ECDSA P-256 certificate, "
            "handshakes only when wrk opens its connections. Bearing: a store with the gateway Dataplane, a "
            "MeshGateway (an HTTP and an HTTPS listener, the certificate as a Kuma Secret) and one "
            "MeshGatewayRoute; Envoy: the routes as `path_separated_prefix` matches in one virtual host, "
            "DownstreamTlsContext; HAProxy: `path`/`path_beg` acls with `use_backend`, `ssl crt`; nginx: "
            "`location = /rN` and `location /rN/` blocks, `ssl`. Each answers 404 when no route matches "
            "(checked before the run, with the 200 on both listeners).", ""]
    for s in scen:
        unit_key, unit = UNITS.get(s, ("rps", "req/s"))
        lines += [f"### {s}", "", f"![{s}]({charts_dir}{s}.svg)", "",
                  f"| workers | contender | {unit} | p50 ms | p99 ms | p99.9 ms | CPU s | peak RSS MB | errors |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in res["load"]:
            if r["scenario"] != s:
                continue
            lines.append(
                f"| {r['workers']} | {r['contender']} | {fmt(r.get(unit_key), '.2f' if unit_key == 'gbps' else '.0f')} "
                f"| {fmt(r.get('p50_ms'), '.2f')} | {fmt(r.get('p99_ms'), '.2f')} | {fmt(r.get('p999_ms'), '.2f')} "
                f"| {fmt(r.get('cpu_s'), '.2f')} | {fmt(r.get('peak_rss_mb'))} | {fmt(r.get('errors'), '.0f')} |")
        if s == "tcp-bulk":
            retrans = ", ".join(f"{r['contender']} {fmt(r.get('retransmits'), '.0f')}"
                                for r in res["load"] if r["scenario"] == s and r["workers"] == 1)
            lines += ["", f"TCP congestion control on this host: `{meta.get('tcp_congestion', '?')}`. "
                      f"Sender retransmits per run (median, 1 worker): {retrans}. On loopback these are "
                      "spurious, from segments delivered out of order; they are not what limits a proxy "
                      "under BBR: each paced sender on loopback tops out near direct's figure, and a proxy "
                      "adds a second one (see benches/README.md)."]
        lines.append("")
    if ratios := mtls_ratios(res):
        lines += ["## mTLS ratios", "", "| workers | ratio | value | reference | x |", "|---|---|---|---|---|"]
        for r in ratios:
            lines.append(f"| {r['workers']} | {r['ratio']} | {fmt(r['value'], '.2f')} | "
                         f"{fmt(r['reference'], '.2f')} | {fmt(r['x'], '.2f')}x |")
        for r in res["load"]:
            if r["scenario"] == "mtls-handshakes" and r.get("client_cpu_s") is not None:
                lines.append(f"\nHandshake client, {r['workers']} worker(s), {r['contender']}: "
                             f"{r['client_cpu_s']:.2f} CPU s (the server: {fmt(r.get('cpu_s'), '.2f')}).")
        lines.append("")
    if res.get("mtls_memory"):
        lines += ["## Idle mTLS connections", "",
                  "RSS of the mTLS pair's inbound process before and with N mesh mTLS connections open "
                  "and idle (each a full handshake with a client certificate, then no request), read "
                  "2 s after the last was opened; `open` counts those still open then.", "",
                  "| workers | contender | RSS MB before | N (open) | RSS MB with N | KiB per connection |",
                  "|---|---|---|---|---|---|"]
        for m in res["mtls_memory"]:
            per = (m["mtls_conns_rss_mb"] - m["mtls_rss_before_mb"]) * 1024 / m["mtls_conns"]
            lines.append(f"| {m['workers']} | {m['contender']} | {fmt(m['mtls_rss_before_mb'])} | "
                         f"{m['mtls_conns']} ({m['mtls_conns_open']}) | {fmt(m['mtls_conns_rss_mb'])} | "
                         f"{per:.1f} |")
        lines.append("")
    if ratios := gateway_ratios(res):
        lines += ["## Gateway ratios", "", "| workers | ratio | bearing | peer | x |", "|---|---|---|---|---|"]
        for r in ratios:
            lines.append(f"| {r['workers']} | {r['ratio']} | {fmt(r['value'], '.2f')} | "
                         f"{fmt(r['reference'], '.2f')} | {fmt(r['x'], '.2f')}x |")
        lines.append("")
    if res["memory"] and meta["report"] == "results":
        lines += ["## Memory", "", "![memory](memory.svg)", "",
                  f"RSS of the single-proxy process(es) (nginx: master + workers) right after start, and "
                  f"with {meta['idle_connections']} idle TCP connections open to the HTTP/1.1 listener "
                  "(no request sent).", "",
                  "| workers | contender | idle RSS MB | RSS MB with idle connections |", "|---|---|---|---|"]
        for m in res["memory"]:
            lines.append(f"| {m['workers']} | {m['contender']} | {fmt(m['idle_rss_mb'])} | "
                         f"{fmt(m.get('idle_conns_rss_mb'))} |")
        lines.append("")
    if meta["report"] != "results":
        return "\n".join(lines)
    if res["startup"]:
        lines += ["## Start-up and config change", "", "![startup](startup.svg)", "",
                  "From exec to the first 200 on /ready (polled every 1-2 ms). Bearing: a store with a "
                  "Dataplane of N outbounds (N listeners on 127.2.x.y:8080), each to a service with one "
                  "other Dataplane. Envoy: a static bootstrap with the same N HTTP listeners and N clusters "
                  "(one run at 10k). Time to apply a store change: one Dataplane file rewritten (endpoint "
                  "port changes) until /config_dump shows a new version; it includes the watcher's 100 ms "
                  "settle time and is read from the `config applied` log line, which Bearing writes when "
                  "/config_dump's version changes (checked against /config_dump). Envoy has no store, "
                  "so no Envoy figure for that.", "",
                  "| contender | services | ready ms | runs |", "|---|---|---|---|"]
        for s in res["startup"]:
            lines.append(f"| {s['contender']} | {s['services']} | {fmt(s['ready_ms'])} | "
                         f"{', '.join(fmt(x) for x in s['runs'])} |")
        for a in res["apply"]:
            lines.append("")
            lines.append(f"Store change with {a['services']} services applied in **{fmt(a['apply_ms'])} ms** "
                         f"(median; runs {', '.join(fmt(x) for x in a['runs'])}).")
        lines.append("")
    lines += ["## Not measured yet", "",
              "- DNS queries per second (dnsperf is installed): needs the DNS server (#4).",
              ""]
    return "\n".join(lines)


COLORS = {"direct": "#888888", "bearing": "#d9480f", "envoy": "#1c7ed6", "haproxy": "#37b24d",
          "nginx": "#7048e8"}


def bar_chart(title: str, unit: str, groups: list[tuple[str, list[tuple[str, float]]]]) -> str:
    """A grouped bar chart: one group per label, one bar per contender."""
    width, height, left, top, bottom = 720, 320, 70, 40, 60
    plot_w, plot_h = width - left - 20, height - top - bottom
    vmax = max((v for _, bars in groups for _, v in bars if v is not None), default=1) or 1
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>']
    for i in range(5):
        y = top + plot_h - plot_h * i / 4
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 20}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 5}" y="{y + 4:.1f}" text-anchor="end">{vmax * i / 4:.3g}</text>')
    out.append(f'<text x="14" y="{top + plot_h / 2}" transform="rotate(-90 14 {top + plot_h / 2})" '
               f'text-anchor="middle">{unit}</text>')
    gw = plot_w / max(1, len(groups))
    for gi, (label, bars) in enumerate(groups):
        bw = gw * 0.8 / max(1, len(bars))
        x0 = left + gi * gw + gw * 0.1
        for bi, (name, v) in enumerate(bars):
            if v is None:
                continue
            h = plot_h * v / vmax
            x = x0 + bi * bw
            out.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bw - 2:.1f}" '
                       f'height="{h:.1f}" fill="{COLORS.get(name, "#333")}"><title>{name}: {v:.4g}</title></rect>')
            out.append(f'<text x="{x + bw / 2 - 1:.1f}" y="{top + plot_h - h - 3:.1f}" text-anchor="middle" '
                       f'font-size="9">{v:.3g}</text>')
        out.append(f'<text x="{left + gi * gw + gw / 2:.1f}" y="{top + plot_h + 16}" '
                   f'text-anchor="middle">{label}</text>')
    names = list(dict.fromkeys(n for _, bars in groups for n, _ in bars))
    for i, name in enumerate(names):
        x = left + i * 110
        out.append(f'<rect x="{x}" y="{height - 22}" width="10" height="10" fill="{COLORS.get(name, "#333")}"/>')
        out.append(f'<text x="{x + 14}" y="{height - 13}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out)


def charts(res: dict) -> dict[str, str]:
    out = {}
    scen = list(dict.fromkeys(r["scenario"] for r in res["load"]))
    for s in scen:
        key, unit = UNITS.get(s, ("rps", "requests per second"))
        groups = []
        for w in sorted({r["workers"] for r in res["load"]}):
            bars = [(r["contender"], r.get(key)) for r in res["load"] if r["scenario"] == s and r["workers"] == w]
            groups.append((f"{w} worker(s)", bars))
        out[f"{s}.svg"] = bar_chart(f"{s} (median, higher is better)", unit, groups)
    if res["memory"] and res["meta"]["report"] == "results":
        groups = []
        for w in sorted({m["workers"] for m in res["memory"]}):
            ms = [m for m in res["memory"] if m["workers"] == w]
            groups.append((f"idle, {w}w", [(m["contender"], m["idle_rss_mb"]) for m in ms]))
            groups.append((f"idle conns, {w}w", [(m["contender"], m.get("idle_conns_rss_mb")) for m in ms]))
        out["memory.svg"] = bar_chart("RSS (lower is better)", "MB", groups)
    if res["startup"]:
        groups = [(f"{n} services", [(s["contender"], s["ready_ms"]) for s in res["startup"] if s["services"] == n])
                  for n in sorted({s["services"] for s in res["startup"]})]
        out["startup.svg"] = bar_chart("time to /ready (lower is better)", "ms", groups)
    return out


def versions(args: argparse.Namespace) -> str:
    def first_line(argv: list[str]) -> str:
        p = subprocess.run(argv, capture_output=True, text=True, check=False)
        return (p.stdout + p.stderr).strip().splitlines()[0] if (p.stdout + p.stderr).strip() else "?"

    envoy = first_line([args.envoy, "--version"]).split("version:")[-1].strip()
    return "; ".join([
        "bearing " + first_line([args.bearing, "version"]),
        first_line(["openssl", "version"]),
        "envoy " + envoy,
        first_line(["haproxy", "-v"]).split(" - ")[0],
        first_line(["nginx", "-v"]),
        first_line(["wrk", "-v"]).split(" [")[0],
        first_line(["h2load", "--version"]),
        first_line(["iperf3", "--version"]).split(" (")[0],
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--envoy", required=True)
    ap.add_argument("--bearing", required=True)
    ap.add_argument("--quick", action="store_true", help="1 run each, 2 s per run")
    ap.add_argument("--only", help="comma-separated load scenarios, or `mtls` for the mesh mTLS ones "
                    "and the plaintext pair, or `gateway` for the builtin gateway ones (skips memory "
                    "and start-up)")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--pin", action="store_true",
                    help="pin each worker thread of Bearing, HAProxy and nginx to its own CPU (Envoy "
                         "has no such setting); for a host the proxy owns, not the default")
    ap.add_argument("--contenders", help="comma-separated subset of the contenders (development: e.g. "
                    "checking the peers' configuration of a scenario Bearing cannot run yet); the "
                    "report names who ran")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--report", help="name of the report: OUT/NAME.{md,json}, its charts in OUT/NAME/ "
                    "(default: the group's name for --only mtls or --only gateway, else `results` with "
                    "its charts in OUT)")
    ap.add_argument("--tls-client", default=str(ROOT / "benches/tls-handshakes/target/release/tls-handshakes"),
                    help="the mTLS handshake client (built by run.sh)")
    ap.add_argument("--handshake-clients", type=int, default=4, help="threads of the handshake client")
    ap.add_argument("--mtls-idle", type=int, default=10000,
                    help="mesh mTLS connections held idle to each mTLS inbound to read its RSS (0: skip)")
    args = ap.parse_args()
    args.report = args.report or (args.only if args.only in GROUPS else "results")
    args.workers = [int(w) for w in args.workers.split(",")]
    if args.contenders:
        args.contenders = args.contenders.split(",")
        if unknown := set(args.contenders) - set(CONTENDERS):
            die(f"--contenders: unknown {', '.join(sorted(unknown))}; known: {', '.join(CONTENDERS)}")
    args.runs = 1 if args.quick else 3
    args.target_runs = 1 if args.quick else 5
    args.duration = 2 if args.quick else 5
    args.connections = 50
    args.idle_connections = 10000
    mtls = any(s in MTLS_SCENARIOS for s in selected(args.only))
    for tool in ("nginx", "haproxy", "wrk", "h2load", "iperf3", "dnsperf", "openssl", args.envoy,
                 args.bearing, *([args.tls_client] if mtls else [])):
        if not shutil.which(tool):
            die(f"{tool} not found: benches/run.sh installs it; a contender is never skipped")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 15000:
        die(f"open-file limit {soft} is too low for 10k idle connections; run through benches/run.sh")
    bench = Bench(args)
    try:
        bench.run()
    finally:
        bench.stop()
    res = bench.results
    res["meta"] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(), "cpus": os.cpu_count(),
        "kernel": platform.release(), "mode": "quick" if args.quick else "full", "runs": args.runs,
        "target_runs": args.target_runs, "pin": args.pin,
        "tcp_congestion": read_text("/proc/sys/net/ipv4/tcp_congestion_control"),
        "duration": args.duration, "connections": args.connections,
        "idle_connections": args.idle_connections, "versions": versions(args),
        "report": args.report, "handshake_clients": args.handshake_clients,
        "contenders": sorted({r["contender"] for r in res["load"]}, key=CONTENDERS.index),
    }
    res["targets"] = targets(res) if args.report == "results" else []
    res["mtls_ratios"] = mtls_ratios(res)
    res["gateway_ratios"] = gateway_ratios(res)
    out = Path(args.out)
    sub = "" if args.report == "results" else f"{args.report}/"
    (out / sub).mkdir(parents=True, exist_ok=True)
    for old in (out / sub).glob("*.svg"):
        old.unlink()
    (out / f"{args.report}.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / f"{args.report}.md").write_text(markdown(res, sub))
    for name, svg in charts(res).items():
        (out / sub / name).write_text(svg + "\n")
    if res["targets"]:
        print("\nTargets:")
    for t in res["targets"]:
        print(f"  {t['status']:>12}  {t['target']}: {fmt(t['ratio'], '.2f')}x (goal {t['goal']})")
    for r in res["mtls_ratios"] + res["gateway_ratios"]:
        print(f"  w={r['workers']} {r['ratio']}: {fmt(r['value'], '.2f')} / {fmt(r['reference'], '.2f')} "
              f"= {fmt(r['x'], '.2f')}x")
    print(f"\nResults in {out}/{args.report}.md; work files in {bench.work}")


if __name__ == "__main__":
    main()

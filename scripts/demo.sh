#!/usr/bin/env bash
# Builds Bearing and runs it on the example store in examples/demo, next to a small HTTP
# application (python3's http.server on 127.0.0.1:8080 serving examples/). Then, in another
# terminal:  curl http://127.0.0.1:10080/demo/mesh.yaml   (outbound → inbound → application)
#            curl http://127.0.0.1:9901/config_dump       (admin API)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/packages.sh
source scripts/packages.sh
# python3 serves the demo application; ensure_commands adds what building Bearing needs.
declare -A need=([python3]=python3)
ensure_commands demo.sh need
python3 -m http.server 8080 --bind 127.0.0.1 --directory examples >/dev/null 2>&1 &
app=$!
trap 'kill $app 2>/dev/null' EXIT
echo "demo application on 127.0.0.1:8080; try: curl http://127.0.0.1:10080/demo/mesh.yaml" >&2
cargo run --release -q -p bearing -- run --config-dir examples/demo --name demo-app-1 "$@"

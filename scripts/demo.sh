#!/usr/bin/env bash
# Builds Bearing and runs it on the example store in examples/demo, next to a small HTTP
# application (python3's http.server on 127.0.0.1:8080 serving examples/). Then, in another
# terminal:  curl http://127.0.0.1:10080/demo/mesh.yaml   (outbound → inbound → application)
#            curl http://127.0.0.1:9901/config_dump       (admin API)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "demo.sh: python3 is required for the demo application" >&2; exit 1; }
python3 -m http.server 8080 --bind 127.0.0.1 --directory examples >/dev/null 2>&1 &
app=$!
trap 'kill $app 2>/dev/null' EXIT
echo "demo application on 127.0.0.1:8080; try: curl http://127.0.0.1:10080/demo/mesh.yaml" >&2
cargo run --release -q -p bearing -- run --config-dir examples/demo --name demo-app-1 "$@"

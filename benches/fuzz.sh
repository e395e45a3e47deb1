#!/usr/bin/env bash
# Runs Bearing's fuzz targets (fuzz/, issue 23) for a given time each and prints what they
# did: executions, coverage, corpus, and the crashes, timeouts and OOMs they found. Not CI.
#
#   bash benches/fuzz.sh                       # every target, 1200 s each, one at a time
#   bash benches/fuzz.sh 60 http1_request dns_handler
#   JOBS=2 NICE=19 bash benches/fuzz.sh 1260   # two targets at once, at low priority
#   BEARING_FUZZ_SKIP=cl-list,host bash benches/fuzz.sh   # see benches/README.md, "Fuzzing"
#   bash benches/fuzz.sh 0                     # only the summary of the last runs
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Each target runs in
# libFuzzer's fork mode, so a crash, timeout or OOM is saved under fuzz/artifacts/<target>/ and
# the run goes on until its time is up. The corpus grows in fuzz/corpus/<target>/ (kept between
# runs), starting from the committed seeds in fuzz/seeds/<target>/. Logs: fuzz/logs/<target>.log.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

ALL=(http1_request http1_response tls_client_hello dns_handler store_yaml gotemplate gateway_path xds_translate)
SECONDS_EACH=${1:-1200}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL[@]}")
JOBS=${JOBS:-1}
NICE=${NICE:-0}

command -v cargo-fuzz >/dev/null || { echo "fuzz.sh: cargo install cargo-fuzz" >&2; exit 1; }
[ "$SECONDS_EACH" -eq 0 ] || cargo +nightly fuzz build --release >&2
BIN=target/x86_64-unknown-linux-gnu/release

run() {
    local target=$1
    mkdir -p "corpus/$target" "artifacts/$target" logs
    local started=$(date +%s)
    # Whole xDS states with their mesh certificates do not fit the 8 KiB of the others.
    local max_len=8192
    [ "$target" != xds_translate ] || max_len=16384
    nice -n "$NICE" "$BIN/$target" "corpus/$target" "seeds/$target" \
        -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
        -max_len="$max_len" -artifact_prefix="artifacts/$target/" \
        >"logs/$target.log" 2>&1 || true
    echo $(( $(date +%s) - started )) >"logs/$target.wall"
}

for target in "${TARGETS[@]}"; do
    [ "$SECONDS_EACH" -gt 0 ] || break
    [ -x "$BIN/$target" ] || { echo "fuzz.sh: no target $target" >&2; exit 1; }
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
    echo "$(date -u +%H:%M:%S) $target: ${SECONDS_EACH}s" >&2
    run "$target" &
done
wait

# The last fork-mode status line holds the totals:
#   #<execs>: cov: <edges> ft: <features> corp: <inputs> exec/s: <rate> oom/timeout/crash: a/b/c time: <s>s ...
printf '| target | wall s | execs | exec/s | cov | ft | corpus | oom/timeout/crash | artifacts |\n'
printf '|---|---|---|---|---|---|---|---|---|\n'
for target in "${TARGETS[@]}"; do
    if [ ! -f "logs/$target.log" ]; then
        printf '| %s | not run |\n' "$target"
        continue
    fi
    line=$(grep -E '^#[0-9]+: cov:' "logs/$target.log" | tail -1 || true)
    wall=$(cat "logs/$target.wall" 2>/dev/null || echo '?')
    execs=$(sed -E 's/^#([0-9]+):.*/\1/' <<<"$line")
    field() { sed -nE "s|.* $1: ([^ ]+).*|\1|p" <<<"$line"; }
    artifacts=$(find "artifacts/$target" -type f 2>/dev/null | wc -l)
    rate='?'
    [ -n "$execs" ] && [ "$wall" != '?' ] && [ "$wall" -gt 0 ] && rate=$((execs / wall))
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$target" "$wall" "${execs:-?}" \
        "$rate" "$(field cov)" "$(field ft)" "$(field corp)" "$(field oom/timeout/crash)" "$artifacts"
done

#!/usr/bin/env bash
# Runs the integration tests N times (default 20) while two busy loops keep both cores loaded, so
# that a test depending on timing shows itself. Logs go to target/stress/. Usage: scripts/stress.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-20}"
binary="$(cargo test --test it --no-run --message-format json 2> /dev/null |
    python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable") and m["target"]["name"] == "it"][-1])')"
mkdir -p target/stress
burners=()
for _ in 1 2; do
    (while :; do :; done) &
    burners+=($!)
done
trap 'kill "${burners[@]}" 2> /dev/null || true' EXIT
failed=0
for i in $(seq 1 "$n"); do
    start=$(date +%s)
    if "$binary" > "target/stress/loop-$i.log" 2>&1; then
        echo "loop $i: ok ($(($(date +%s) - start)) s)"
    else
        echo "loop $i: FAILED, see target/stress/loop-$i.log"
        failed=$((failed + 1))
    fi
done
echo "$((n - failed)) of $n loops passed under two busy cores"
[ "$failed" -eq 0 ]

#!/usr/bin/env bash
# What a snapshot costs: starts the release build of ringserve on ROOT
# (loopback, a free port), reports its load time, the bytes the snapshot
# holds, the process's resident memory, and the compression obtained, then
# stops it by PID. Usage: bash ci/snapshot-cost.sh ROOT [ringserve flags...]
# Example: python3 ci/gen-tree.py /tmp/tree 10000 && bash ci/snapshot-cost.sh /tmp/tree
set -euo pipefail
cd "$(dirname "$0")/.."
root=$1
shift
cargo build --quiet --release --bin ringserve
log=$(mktemp)
target/release/ringserve --root "$root" --listen 127.0.0.1:0 "$@" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 600); do
    grep -q "compressed files" "$log" && break
    kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.1
done
grep -E "listening|snapshot holds" "$log"
rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
echo "process RSS: $rss KiB"
line=$(grep -o 'compressed files: [0-9]* bytes, [0-9]* bytes' "$log")
original=$(echo "$line" | awk '{print $3}')
smallest=$(echo "$line" | awk '{print $5}')
if [ "$original" -gt 0 ]; then
    awk -v o="$original" -v s="$smallest" 'BEGIN {
        printf "compression of the compressible files: %d -> %d bytes (%.1f%% of the original, ratio %.2f)\n", o, s, 100 * s / o, o / s }'
fi

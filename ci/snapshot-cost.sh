#!/usr/bin/env bash
# What a snapshot costs.
#
#   bash ci/snapshot-cost.sh ROOT [ringserve flags...]
#       one tree: starts the release build on ROOT and prints time to the
#       first 200, time to all variants, RSS at the first 200, after the
#       variants and after 10 reloads of the unchanged tree (see
#       ci/snapshot_cost.py), then the server's own stage lines.
#
#   bash ci/snapshot-cost.sh --matrix [OLD_BINARY]
#       the table of docs/limits.md: generates (once, under
#       ${RINGSERVE_TREES:-/tmp/ringserve-trees}) trees of 5, 10,000 and
#       50,000 files (ci/gen-tree.py; the 50,000 twice: the issue's 73.5 MB
#       of small files, and gen-tree's default sizes, 313 MiB) and a root
#       with one 2 GiB file, adds Debian's Python documentation
#       (/usr/share/doc/python3.11/html, package python3-doc) if installed,
#       and measures each with the release build, and with OLD_BINARY too if
#       given (a build of an earlier commit, for a before/after table),
#       alternating the two. Prints the load average first: other builds on
#       the machine move the times (not the RSS).
#
# Example: python3 ci/gen-tree.py /tmp/tree 10000 && bash ci/snapshot-cost.sh /tmp/tree
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --release --bin ringserve
if [ "${1:-}" != "--matrix" ]; then
    root=$1
    shift
    exec python3 ci/snapshot_cost.py target/release/ringserve "$root" "$@"
fi
old=${2:-}
trees=${RINGSERVE_TREES:-/tmp/ringserve-trees}
mkdir -p "$trees"
for files in 5 10000 50000; do
    [ -d "$trees/files-$files" ] || python3 ci/gen-tree.py "$trees/files-$files" "$files"
done
[ -d "$trees/files-50000-small" ] || python3 ci/gen-tree.py "$trees/files-50000-small" 50000 --mean-bytes 1470
[ -f "$trees/large-2g/large.bin" ] || python3 ci/gen-tree.py "$trees/large-2g" --large 2
roots=("$trees/files-5" "$trees/files-10000" "$trees/files-50000-small" "$trees/files-50000" "$trees/large-2g")
python_docs=/usr/share/doc/python3.11/html
[ -d "$python_docs" ] && roots+=("$python_docs")
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for root in "${roots[@]}"; do
    size=$(du -sbL "$root" | cut -f1)
    for binary in ${old:+"$old"} target/release/ringserve; do
        printf '%s (%s bytes), %s: ' "$root" "$size" "$binary"
        RINGSERVE_COST_QUIET=1 python3 ci/snapshot_cost.py "$binary" "$root"
    done
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"

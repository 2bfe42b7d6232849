#!/usr/bin/env bash
# Builds the man page and shell completions from the clap definition
# (examples/gen-docs.rs) into OUT_DIR (default target/gen-docs), and checks
# that they name the options and their environment variables.
#   bash ci/gen-docs.sh [OUT_DIR]
#   man -l target/gen-docs/ringserve.1
#   source target/gen-docs/ringserve.bash
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/gen-docs}"
cargo run --quiet --example gen-docs -- "$out"
for needle in 'follow\\-symlinks' 'RINGSERVE_PORT' 'print\\-config'; do
    grep -q -e "$needle" "$out/ringserve.1" || { echo "ringserve.1 lacks $needle" >&2; exit 1; }
done
grep -q -e '--follow-symlinks' "$out/ringserve.bash" || { echo "bash completion lacks --follow-symlinks" >&2; exit 1; }
echo "man page and completions in $out"

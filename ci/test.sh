#!/usr/bin/env bash
# The checks CI runs, in order: formatting, lints, the test suite, and that
# the benches still compile. Run from anywhere: `bash ci/test.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

# The README's test command.
echo "== cargo test"
cargo test

echo "== cargo bench --no-run"
cargo bench --no-run

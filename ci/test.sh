#!/usr/bin/env bash
# The checks CI runs, in order: formatting, lints, the test suite (property
# tests included), and that the benches and fuzz targets still compile. Run from anywhere: `bash ci/test.sh`.
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

# The fuzz targets are their own workspace (fuzz/Cargo.toml); running them
# needs nightly (`cargo +nightly fuzz run session`), but they must keep
# compiling on stable. Their checks run on stable above, in tests/properties.rs.
echo "== cargo build --manifest-path fuzz/Cargo.toml"
cargo build --manifest-path fuzz/Cargo.toml

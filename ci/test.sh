#!/usr/bin/env bash
# The checks CI runs, in order: the tools the tests drive (installed if
# missing), formatting, lints, the test suite (property tests included), the
# man page and completions, and that the benches and fuzz targets still compile. Run from anywhere: `bash ci/test.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools the end-to-end tests drive (tests/binary.rs): strace injects an
# io_uring_setup failure (the auto-engine fallback test), and
# systemd-socket-activate (Debian's systemd package) hands the server a socket.
need=()
command -v strace >/dev/null || need+=(strace)
command -v systemd-socket-activate >/dev/null || need+=(systemd)
if ((${#need[@]})); then
    echo "== apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

# The README's test command.
echo "== cargo test"
cargo test

echo "== man page and shell completions (ci/gen-docs.sh)"
bash ci/gen-docs.sh

echo "== cargo bench --no-run"
cargo bench --no-run

# The fuzz targets are their own workspace (fuzz/Cargo.toml); running them
# needs nightly (`cargo +nightly fuzz run session`), but they must keep
# compiling on stable. Their checks run on stable above, in tests/properties.rs.
echo "== cargo build --manifest-path fuzz/Cargo.toml"
cargo build --manifest-path fuzz/Cargo.toml

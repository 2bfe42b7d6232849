#!/usr/bin/env bash
# A real browser against ringserve: starts the server on the bundled site
# (loopback, a free port), loads / in headless Chromium, and checks that the
# page rendered with its JavaScript (data-js), the JSON it fetches
# (data-book), its stylesheet (data-css: a computed style only site.css
# sets) and its image (data-img: the logo decoded). Saves a screenshot.
#
# Installs Debian's chromium if it is missing. The server is stopped by PID
# at the end, also on failure. Usage: bash ci/browser-check.sh [engine...]
# (default: every engine). Artifacts go to $BROWSER_CHECK_OUT
# (default: target/browser-check).
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM=${CHROMIUM:-}
if [ -z "$CHROMIUM" ]; then
    CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
fi
if [ -z "$CHROMIUM" ]; then
    echo "== installing chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
    CHROMIUM=$(command -v chromium)
fi

echo "== building ringserve"
cargo build --quiet --bin ringserve
BIN=target/debug/ringserve
OUT=${BROWSER_CHECK_OUT:-target/browser-check}
mkdir -p "$OUT"

SERVER_PID=
PROFILE=
cleanup() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [ -n "$PROFILE" ]; then
        rm -rf "$PROFILE"
    fi
}
trap cleanup EXIT

chromium_run() {
    # A fresh profile each time; no network but the loopback server.
    PROFILE=$(mktemp -d)
    timeout 60 "$CHROMIUM" --headless --no-sandbox --disable-gpu \
        --disable-background-networking --disable-component-update --disable-sync \
        --no-first-run --user-data-dir="$PROFILE" --virtual-time-budget=5000 "$@" 2>/dev/null
    rm -rf "$PROFILE"
    PROFILE=
}

engines=("$@")
if [ ${#engines[@]} -eq 0 ]; then
    engines=(uring epoll tokio-uring tokio)
fi

started=$(date +%s)
for engine in "${engines[@]}"; do
    echo "== $engine"
    "$BIN" --root static --listen 127.0.0.1:0 --workers 1 --engine "$engine" \
        >"$OUT/server-$engine.log" 2>&1 &
    SERVER_PID=$!
    url=
    for _ in $(seq 1 100); do
        url=$(grep -so 'http://127\.0\.0\.1:[0-9]*' "$OUT/server-$engine.log" | head -n1 || true)
        [ -n "$url" ] && break
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    if [ -z "$url" ]; then
        echo "FAIL: ringserve did not start:"
        cat "$OUT/server-$engine.log"
        exit 1
    fi

    chromium_run --dump-dom "$url/" >"$OUT/dom-$engine.html"
    chromium_run --screenshot="$OUT/screenshot-$engine.png" --window-size=1024,900 "$url/" >/dev/null

    failed=0
    for marker in 'data-js="ringserve-js-ok"' 'data-book="loaded"' 'data-css="applied"' 'data-img="loaded"'; do
        if grep -q "$marker" "$OUT/dom-$engine.html"; then
            echo "ok   $marker"
        else
            echo "FAIL $marker missing from the rendered DOM"
            failed=1
        fi
    done
    if grep -q 'The Great Gatsby' "$OUT/dom-$engine.html"; then
        echo "ok   /book rendered"
    else
        echo "FAIL /book content missing"
        failed=1
    fi
    if [ -s "$OUT/screenshot-$engine.png" ]; then
        echo "ok   screenshot $OUT/screenshot-$engine.png"
    else
        echo "FAIL no screenshot"
        failed=1
    fi
    kill "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
    if [ "$failed" -ne 0 ]; then
        echo "DOM dump: $OUT/dom-$engine.html"
        exit 1
    fi
done
echo "browser check passed for ${engines[*]} in $(($(date +%s) - started)) s"

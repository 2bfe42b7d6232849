#!/usr/bin/env bash
# A real browser against ringserve: starts the server on the bundled site
# (loopback, a free port), loads / in headless Chromium, and checks that the
# page rendered with its JavaScript (data-js), the JSON it fetches
# (data-book), its stylesheet (data-css: a computed style only site.css
# sets) and its image (data-img: the logo decoded). Saves a screenshot.
# Each engine is checked twice: over http://, and over https:// with a test
# CA and server certificate made here with openssl (ECDSA P-256), which
# Chromium trusts by the SPKI hash of the server key
# (--ignore-certificate-errors-spki-list; nothing else is trusted).
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

if ! command -v openssl >/dev/null; then
    echo "== installing openssl"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends openssl >/dev/null
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

# The test PKI for the HTTPS runs.
PKI="$OUT/pki"
mkdir -p "$PKI"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=ringserve browser-check CA" -keyout "$PKI/ca.key" -out "$PKI/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=localhost" -keyout "$PKI/server.key" -out "$PKI/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
    >"$PKI/ext.cnf"
openssl x509 -req -in "$PKI/server.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 2 -extfile "$PKI/ext.cnf" -out "$PKI/server.pem" 2>/dev/null
SPKI=$(openssl x509 -in "$PKI/server.pem" -pubkey -noout | openssl pkey -pubin -outform der \
    | openssl dgst -sha256 -binary | base64)

started=$(date +%s)
for run in "${engines[@]/%/ http}" "${engines[@]/%/ https}"; do
    read -r engine scheme <<<"$run"
    echo "== $engine $scheme"
    tls_args=()
    chromium_tls=()
    if [ "$scheme" = https ]; then
        tls_args=(--tls-cert "$PKI/server.pem" --tls-key "$PKI/server.key")
        chromium_tls=(--ignore-certificate-errors-spki-list="$SPKI")
    fi
    "$BIN" --root static --listen 127.0.0.1:0 --workers 1 --engine "$engine" "${tls_args[@]}" \
        >"$OUT/server-$engine-$scheme.log" 2>&1 &
    SERVER_PID=$!
    url=
    for _ in $(seq 1 100); do
        url=$(grep -so "$scheme://127\.0\.0\.1:[0-9]*" "$OUT/server-$engine-$scheme.log" | head -n1 || true)
        [ -n "$url" ] && break
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    if [ -z "$url" ]; then
        echo "FAIL: ringserve did not start:"
        cat "$OUT/server-$engine-$scheme.log"
        exit 1
    fi

    dom="$OUT/dom-$engine-$scheme.html"
    shot="$OUT/screenshot-$engine-$scheme.png"
    chromium_run "${chromium_tls[@]}" --dump-dom "$url/" >"$dom"
    chromium_run "${chromium_tls[@]}" --screenshot="$shot" --window-size=1024,900 "$url/" >/dev/null

    failed=0
    for marker in 'data-js="ringserve-js-ok"' 'data-book="loaded"' 'data-css="applied"' 'data-img="loaded"'; do
        if grep -q "$marker" "$dom"; then
            echo "ok   $marker"
        else
            echo "FAIL $marker missing from the rendered DOM"
            failed=1
        fi
    done
    if grep -q 'The Great Gatsby' "$dom"; then
        echo "ok   /book rendered"
    else
        echo "FAIL /book content missing"
        failed=1
    fi
    if [ -s "$shot" ]; then
        echo "ok   screenshot $shot"
    else
        echo "FAIL no screenshot"
        failed=1
    fi
    kill "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
    if [ "$failed" -ne 0 ]; then
        echo "DOM dump: $dom"
        exit 1
    fi
done
echo "browser check passed for ${engines[*]}, over http and https, in $(($(date +%s) - started)) s"

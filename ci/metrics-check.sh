#!/usr/bin/env bash
# Checks the metrics endpoint with Prometheus's own tools, on every engine:
# 1. starts the binary (a debug build, as ci/browser-check.sh) with --health and --metrics-listen on
#    127.0.0.1 (ports picked by the kernel), sends known traffic, scrapes
#    /metrics and runs `promtool check metrics` on what it got (format and
#    naming lints), then checks a few exact values;
# 2. unless SKIP_PROMETHEUS=1: starts a real Prometheus on 127.0.0.1 with a
#    scrape config pointing at the metrics listener, and asks its HTTP API
#    that the target is up and a ringserve series is stored. Bounded: at most
#    30 s of waiting, and Prometheus and the server are killed by PID after.
#
# Installs Debian's `prometheus` package (promtool and the server) if
# promtool is missing: `apt-get update` once, then `apt-get install`.
# Run from anywhere: `bash ci/metrics-check.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null; then
    echo "== installing prometheus (promtool)"
    apt-get update -qq
    apt-get install -y -qq prometheus >/dev/null
fi
PROMETHEUS=$(command -v prometheus || true)

echo "== cargo build --bin ringserve"
cargo build --quiet --bin ringserve
BIN=target/debug/ringserve

WORK=$(mktemp -d)
SERVER_PID=""
PROM_PID=""
cleanup() {
    [ -n "$PROM_PID" ] && kill "$PROM_PID" 2>/dev/null || true
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/site"
printf '<h1>home</h1>' >"$WORK/site/index.html"

# Prints the value of the sample line `$2` (name and labels as written) in file `$1`.
sample() {
    awk -v series="$2" '$1 == series { print $2 }' "$1"
}

# Waits until file `$1` contains `$2`, at most 10 s.
wait_for_line() {
    for _ in $(seq 100); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "timed out waiting for '$2' in $1:" >&2
    cat "$1" >&2
    return 1
}

for engine in uring epoll tokio-uring tokio; do
    echo "== engine $engine"
    "$BIN" --root "$WORK/site" --listen 127.0.0.1:0 --workers 2 --no-pin --engine "$engine" \
        --health --metrics-listen 127.0.0.1:0 >"$WORK/out" 2>"$WORK/err" &
    SERVER_PID=$!
    # The two lines go to two streams, in no fixed order: wait for both.
    wait_for_line "$WORK/err" "metrics on http://"
    wait_for_line "$WORK/out" "listening on http://"
    ADDR=$(sed -n 's|.*listening on http://\([^ ]*\) .*|\1|p' "$WORK/out")
    METRICS=$(sed -n 's|.*metrics on http://\([^/]*\)/metrics.*|\1|p' "$WORK/err")
    for _ in 1 2 3; do curl -sf -o /dev/null "http://$ADDR/"; done
    curl -s -o /dev/null "http://$ADDR/missing" || true
    [ "$(curl -s "http://$ADDR/healthz")" = "ok" ] || { echo "health check failed" >&2; exit 1; }
    curl -sf "http://$METRICS/metrics" -o "$WORK/metrics.txt"
    echo "-- promtool check metrics"
    promtool check metrics <"$WORK/metrics.txt"
    # Every request above used its own connection; each may land on either worker.
    [ "$(sample "$WORK/metrics.txt" 'ringserve_requests_total{class="2xx",method="GET"}')" = 3 ]
    [ "$(sample "$WORK/metrics.txt" 'ringserve_requests_total{class="4xx",method="GET"}')" = 1 ]
    [ "$(sample "$WORK/metrics.txt" 'ringserve_health_checks_total')" = 1 ]
    [ "$(sample "$WORK/metrics.txt" 'ringserve_workers')" = 2 ]
    [ "$(sample "$WORK/metrics.txt" "ringserve_engine_info{engine=\"$engine\"}")" = 1 ]
    echo "-- counts as expected"

    if [ "${SKIP_PROMETHEUS:-0}" != 1 ] && [ -n "$PROMETHEUS" ] && [ "$engine" = uring ]; then
        echo "-- a real Prometheus scrapes it"
        PROM_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: ringserve
    static_configs:
      - targets: ["$METRICS"]
EOF
        promtool check config "$WORK/prometheus.yml" >/dev/null
        "$PROMETHEUS" --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
            --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
        PROM_PID=$!
        found=""
        for _ in $(seq 60); do
            sleep 0.5
            up=$(curl -s "http://127.0.0.1:$PROM_PORT/api/v1/query?query=up%7Bjob%3D%22ringserve%22%7D" || true)
            series=$(curl -s "http://127.0.0.1:$PROM_PORT/api/v1/query?query=ringserve_workers" || true)
            if echo "$up" | grep -q '"value":\[[0-9.]*,"1"\]' && echo "$series" | grep -q '"value":\[[0-9.]*,"2"\]'; then
                found=yes
                break
            fi
        done
        kill "$PROM_PID" 2>/dev/null || true
        wait "$PROM_PID" 2>/dev/null || true
        PROM_PID=""
        if [ -z "$found" ]; then
            echo "Prometheus did not report the target up with ringserve_workers 2:" >&2
            echo "up: $up" >&2
            echo "series: $series" >&2
            tail -20 "$WORK/prometheus.log" >&2
            exit 1
        fi
        echo "-- target up, ringserve_workers == 2 in Prometheus"
    fi

    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID"
    SERVER_PID=""
done
echo "metrics check passed"

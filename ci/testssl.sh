#!/usr/bin/env bash
# testssl.sh against ringserve's HTTPS: starts the server on 127.0.0.1 (a
# free port) with a test CA and an ECDSA P-256 certificate made here, runs
# Debian's testssl.sh (installed if missing) and fails on any finding about
# the server's TLS: a vulnerability, an offered weak protocol or cipher,
# anything testssl rates MEDIUM, HIGH or CRITICAL. Findings about the test
# certificate's provenance (no OCSP or CRL URI, no CT, no CAA record: a CA
# made a second ago has none) are listed but not held against the server;
# nor is BREACH, which testssl reports for any HTTP compression but which
# needs secrets and reflected input in compressed bodies (a static-file
# server has neither).
#
# Usage: bash ci/testssl.sh [--full] [engine]
#   default (CI): protocols, cipher categories, forward secrecy, server
#   preferences and defaults, and every vulnerability check (-p -s -f -P -S -U),
#   about a minute;
#   --full: testssl's whole default run (adds the HTTP header checks, ciphers
#   per protocol and client simulations), several minutes:
#   bash ci/testssl.sh --full uring
# The JSON report and the log go to $TESTSSL_OUT (default: target/testssl).
set -euo pipefail
cd "$(dirname "$0")/.."

full=0
if [ "${1:-}" = --full ]; then
    full=1
    shift
fi
engine=${1:-uring}

if ! command -v testssl >/dev/null; then
    echo "== installing testssl.sh"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends testssl.sh openssl bsdextrautils >/dev/null
fi

OUT=${TESTSSL_OUT:-target/testssl}
rm -rf "$OUT"
mkdir -p "$OUT/pki"
PKI="$OUT/pki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 400 \
    -subj "/CN=ringserve testssl CA" -keyout "$PKI/ca.key" -out "$PKI/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=localhost" -keyout "$PKI/server.key" -out "$PKI/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' \
    >"$PKI/ext.cnf"
openssl x509 -req -in "$PKI/server.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 200 -extfile "$PKI/ext.cnf" -out "$PKI/server.pem" 2>/dev/null

echo "== building ringserve"
cargo build --quiet --release --bin ringserve
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
target/release/ringserve --root static --listen 127.0.0.1:0 --workers 1 --engine "$engine" \
    --tls-cert "$PKI/server.pem" --tls-key "$PKI/server.key" >"$OUT/server.log" 2>&1 &
SERVER_PID=$!
addr=
for _ in $(seq 1 100); do
    addr=$(grep -so 'https://127\.0\.0\.1:[0-9]*' "$OUT/server.log" | head -n1 | sed 's|https://||' || true)
    [ -n "$addr" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$addr" ]; then
    echo "FAIL: ringserve did not start:"
    cat "$OUT/server.log"
    exit 1
fi

if [ "$full" -eq 1 ]; then
    checks=()
else
    checks=(-p -s -f -P -S -U)
fi
echo "== testssl ${checks[*]:-(full default run)} $addr (engine $engine)"
started=$(date +%s)
# testssl's exit status counts findings of every kind; the JSON is judged below.
timeout 1200 testssl --quiet --color 0 --warnings off --add-ca "$PKI/ca.pem" \
    --jsonfile "$OUT/report.json" ${checks[@]+"${checks[@]}"} "$addr" >"$OUT/testssl.log" 2>&1 || true
echo "   took $(($(date +%s) - started)) s; log: $OUT/testssl.log"

python3 - "$OUT/report.json" <<'EOF'
import json, sys

findings = json.load(open(sys.argv[1]))
# Findings about where the test certificate comes from, not about the
# server's TLS (a throwaway CA has no revocation, CT or CAA).
PROVENANCE = ("cert_crlDistributionPoints", "cert_ocspURL", "OCSP_stapling", "cert_revocation",
              "cert_certificateTransparency", "DNS_CAArecord", "cert_mustStapleExtension",
              "cert_trust", "cert_chain_of_trust", "intermediate_cert")
BAD = {"MEDIUM", "HIGH", "CRITICAL"}
# BREACH needs a compressed response that reflects both a secret and
# attacker-controlled input; ringserve serves precompressed static files
# only (nothing reflected, no secrets). testssl flags any compression.
NOT_APPLICABLE = {"BREACH": "static files only: no secret and no reflected input in any compressed body"}
protocols, vulns, bad, waived = [], [], [], []
for f in findings:
    fid, sev, text = f.get("id", ""), f.get("severity", ""), f.get("finding", "")
    if fid in ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3"):
        protocols.append(f"{fid}: {text}")
    if fid in ("SSLv2", "SSLv3", "TLS1", "TLS1_1") and "not offered" not in text:
        bad.append(f"weak protocol {fid}: {text}")
    if fid.startswith("cipherlist_") and fid not in ("cipherlist_STRONG",) and sev not in ("OK", "INFO") \
            and "not offered" not in text and "offered" in text:
        bad.append(f"{fid} ({sev}): {text}")
    if sev in BAD:
        if fid in NOT_APPLICABLE:
            waived.append(f"{fid} ({sev}): {text} -- not applicable: {NOT_APPLICABLE[fid]}")
        elif fid.startswith(PROVENANCE):
            waived.append(f"{fid} ({sev}): {text}")
        else:
            bad.append(f"{fid} ({sev}): {text}")
    if f.get("cve") or fid in ("heartbleed", "CCS", "ticketbleed", "ROBOT", "secure_renego",
                               "secure_client_renego", "CRIME_TLS", "BREACH", "POODLE_SSL",
                               "fallback_SCSV", "SWEET32", "FREAK", "DROWN", "LOGJAM", "BEAST",
                               "LUCKY13", "winshock", "RC4"):
        vulns.append(f"{fid} ({sev}): {text}")
print("== testssl summary")
print("protocols:")
for line in protocols:
    print("  " + line)
print(f"vulnerability checks: {len(vulns)}")
for line in vulns:
    print("  " + line)
if waived:
    print("waived (the test certificate's provenance, or not applicable to a static server):")
    for line in waived:
        print("  " + line)
if bad:
    print("FAIL:")
    for line in bad:
        print("  " + line)
    sys.exit(1)
print("testssl: no vulnerability, no weak protocol or cipher")
EOF

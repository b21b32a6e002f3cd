#!/usr/bin/env bash
# User-space instructions per proxied HTTP/1.1 keep-alive request, counted by valgrind's callgrind:
# the same number on every run (to ~1%), so it shows a change of a few percent of the gateway's
# own work that bench/gateway/run.sh's CPU-time columns cannot see through this machine's noise.
# It counts only user space (no system-call or TCP work), and instructions, not time.
#
#   sudo bench/gateway/instructions.sh [--requests N] [--keep DIR] BINARY [BINARY ...]
#
# For each binary: the echo backend on CPU 1, the gateway under callgrind on CPU 0 (--threads 1,
# --access-log=false, the same Ingress as run.sh's plain-HTTP cells), 2,000 warm-up requests
# (connections pooled, buffers allocated), then instrumentation on for N (default 20,000)
# requests from `h2load --h1 -c64`, off, dump. Prints Ir (instructions executed) per request.
# GW_ARGS: extra flags for every gateway (e.g. --work-stealing=false).
# --keep DIR keeps each binary's callgrind output as DIR/callgrind.<n>.out
# (`callgrind_annotate --tree=caller FILE` shows who spends them).
set -euo pipefail

REQUESTS=20000
KEEP=
while [ $# -gt 0 ]; do
    case "$1" in
        --requests) REQUESTS="$2"; shift 2 ;;
        --keep) KEEP="$2"; shift 2 ;;
        -h|--help) sed -n 2,15p "$0"; exit 0 ;;
        --*) echo "unknown argument $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || { echo "usage: $0 [--requests N] [--keep DIR] BINARY [BINARY ...]" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
ECHO_BIN="${ECHO_BIN:-$ROOT/target/release/drawbridge-echo}"

# shellcheck source=lib.sh
source "$ROOT/bench/gateway/lib.sh"
install_missing valgrind:valgrind callgrind_control:valgrind h2load:nghttp2-client

BACKEND=127.0.0.1:18180
LISTEN=127.0.0.1:18183
TMP="$(mktemp -d /tmp/gateway-instructions.XXXXXX)"
PIDS=()
CGROUPS=()
trap stop_all EXIT INT TERM

mkdir -p "$TMP/manifests"
python3 "$ROOT/bench/gateway/manifests.py" "$TMP" "$BACKEND"

taskset -c 1 "$ECHO_BIN" --listen "$BACKEND" --pod-name bench >"$TMP/echo.log" 2>&1 &
PIDS+=($!)

n=0
for bin in "$@"; do
    n=$((n + 1))
    mkdir -p "$TMP/state-$n"
    read -r -a extra <<<"${GW_ARGS:-}"
    RUST_LOG=warn taskset -c 0 valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$TMP/callgrind.$n.out" "$bin" --manifests "$TMP/manifests" \
        --state-dir "$TMP/state-$n" --http-addr "$LISTEN" --https-addr 127.0.0.1:18443 \
        --metrics-addr 127.0.0.1:18197 --threads 1 --access-log=false "${extra[@]}" >"$TMP/gateway-$n.log" 2>&1 &
    gw=$!
    PIDS+=($gw)
    for _ in $(seq 1 300); do curl -fsS -o /dev/null "http://$LISTEN/" 2>/dev/null && break; sleep 0.2; done
    curl -fsS -o /dev/null "http://$LISTEN/" || { echo "$bin does not answer" >&2; tail "$TMP/gateway-$n.log" >&2; exit 1; }
    taskset -c 1 h2load --h1 -n 2000 -c 64 "http://$LISTEN/" >/dev/null 2>&1
    callgrind_control -i on "$gw" >/dev/null 2>&1
    taskset -c 1 h2load --h1 -n "$REQUESTS" -c 64 "http://$LISTEN/" >"$TMP/h2load-$n.txt" 2>&1
    callgrind_control -i off "$gw" >/dev/null 2>&1
    callgrind_control -d "$gw" >/dev/null 2>&1
    kill -INT "$gw"
    wait "$gw" 2>/dev/null || true
    ok=$(awk '/^requests:/{gsub(/,/,""); print $8}' "$TMP/h2load-$n.txt")
    # The dump taken while instrumentation was on (the largest file; the exit dump is empty).
    out=$(ls -S "$TMP"/callgrind.$n.out* | head -1)
    # (awk reads to the end: an early exit would fail the pipe under pipefail)
    ir=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !n++ {gsub(/,/,""); print $1}')
    [ "$ok" = "$REQUESTS" ] || echo "$bin: only $ok of $REQUESTS requests succeeded" >&2
    printf '%s: %s requests, %s instructions, %s per request\n' "$bin" "$ok" "$ir" \
        "$(awk -v a="$ir" -v n="$ok" 'BEGIN{ if (n > 0) printf "%.0f", a/n; else print "?" }')"
    if [ -n "$KEEP" ]; then mkdir -p "$KEEP"; cp "$out" "$KEEP/callgrind.$n.out"; fi
done

#!/usr/bin/env bash
# Two gateway builds' (or flags') CPU time per request, interleaved finely: both run at once
# (each --threads 1 on CPU 0, each capped at half a core in its own cgroup), and each round loads
# one, then the other, for SECONDS each (on CPU 1; which goes first alternates by round). Slow
# drifts of this machine then hit both alike, which run.sh's cells, minutes apart, do not. Prints
# each round's µs/request and the geometric mean of the per-round ratio A ÷ B with its standard
# error.
#
#   sudo [ARGS_A=...] [ARGS_B=...] bench/gateway/ab.sh [--rounds N] [--seconds S] [--load L] BINARY_A BINARY_B
#
# --load h1 (default): HTTP/1.1 keep-alive, wrk -t1 -c64; https: the same over TLS 1.3;
# h2: h2load -t1 -c64 -m10 over TLS (ALPN h2). ARGS_A / ARGS_B: extra gateway flags for each side
# (e.g. the same binary twice with ARGS_B=--work-stealing=false).
#
# Caveat, measured (docs/benchmarks.md, Gateway, 2026-12-08 (b)): two processes of the SAME binary
# differed by 2–5% here (A ÷ B = 1.022 ± 0.019 and 1.052 ± 0.013 over 30 rounds), so run every
# comparison both ways (A B, then B A) and take the geometric mean of A÷B and 1 ÷ (B÷A);
# differences under ~3–5% stay unresolved. Proxy CPU comes from /proc/PID/stat (10 ms ticks).
set -euo pipefail

ROUNDS=20
SECONDS_PER=2
LOAD=h1
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --seconds) SECONDS_PER="$2"; shift 2 ;;
        --load) LOAD="$2"; shift 2 ;;
        -h|--help) sed -n 2,18p "$0"; exit 0 ;;
        --*) echo "unknown argument $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
[ $# -eq 2 ] || { echo "usage: $0 [--rounds N] [--seconds S] [--load h1|https|h2] BINARY_A BINARY_B" >&2; exit 2; }
case "$LOAD" in h1|https|h2) ;; *) echo "--load: h1, https or h2" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
ECHO_BIN="${ECHO_BIN:-$ROOT/target/release/drawbridge-echo}"
# shellcheck source=lib.sh
source "$ROOT/bench/gateway/lib.sh"
install_missing wrk:wrk h2load:nghttp2-client openssl:openssl

BACKEND=127.0.0.1:18180
declare -A BIN=([A]="$1" [B]="$2") PORT=([A]=18183 [B]=18184) TLS_PORT=([A]=18443 [B]=18444)
declare -A METRICS=([A]=18197 [B]=18198) ARGS=([A]="${ARGS_A:-}" [B]="${ARGS_B:-}") PID=()
TMP="$(mktemp -d /tmp/gateway-ab.XXXXXX)"
PIDS=()
CGROUPS=()
trap stop_all EXIT INT TERM

mkdir -p "$TMP/manifests"
# ECDSA P-256 for host localhost (the SNI wrk and h2load send), as run.sh.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
python3 "$ROOT/bench/gateway/manifests.py" "$TMP" "$BACKEND" --tls

taskset -c 1 "$ECHO_BIN" --listen "$BACKEND" --pod-name bench >"$TMP/echo.log" 2>&1 &
PIDS+=($!)
for x in A B; do
    mkdir -p "$TMP/state-$x"
    read -r -a extra <<<"${ARGS[$x]}"
    RUST_LOG=warn taskset -c 0 "${BIN[$x]}" --manifests "$TMP/manifests" --state-dir "$TMP/state-$x" \
        --http-addr "127.0.0.1:${PORT[$x]}" --https-addr "127.0.0.1:${TLS_PORT[$x]}" \
        --metrics-addr "127.0.0.1:${METRICS[$x]}" --threads 1 --access-log=false "${extra[@]}" \
        >"$TMP/gateway-$x.log" 2>&1 &
    PIDS+=($!)
    PID[$x]=$!
done
for x in A B; do
    for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://127.0.0.1:${PORT[$x]}/" 2>/dev/null && break; sleep 0.1; done
    curl -fsS -o /dev/null "http://127.0.0.1:${PORT[$x]}/" || { echo "${BIN[$x]} does not answer" >&2; exit 1; }
    curl -fsS -k -o /dev/null "https://localhost:${TLS_PORT[$x]}/" || { echo "${BIN[$x]} does not answer over TLS" >&2; exit 1; }
done

# load SIDE SECONDS → requests completed
load() {
    local x="$1" secs="$2" out
    case "$LOAD" in
        h1) out=$(taskset -c 1 wrk -t1 -c64 -d"${secs}s" "http://127.0.0.1:${PORT[$x]}/" 2>&1)
            awk '/requests in/{print $1}' <<<"$out" ;;
        https) out=$(taskset -c 1 wrk -t1 -c64 -d"${secs}s" "https://localhost:${TLS_PORT[$x]}/" 2>&1)
            awk '/requests in/{print $1}' <<<"$out" ;;
        h2) out=$(taskset -c 1 h2load -t1 -c64 -m10 -D "$secs" "https://localhost:${TLS_PORT[$x]}/" 2>&1)
            awk '/^requests:/{gsub(/,/,""); print $8+0}' <<<"$out" ;;
    esac
}

# Half a core each, as run.sh --proxy-cpu 50.
for x in A B; do cpu_cap "ab-$x" 50 "${PID[$x]}"; done

cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$1/stat"; }
for x in A B; do load "$x" 2 >/dev/null; done # warm-up
echo "round first A_us_per_request B_us_per_request A/B"
for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order=(A B); else order=(B A); fi
    declare -A US=()
    for x in "${order[@]}"; do
        c0=$(cpu_s "${PID[$x]}")
        n=$(load "$x" "$SECONDS_PER")
        c1=$(cpu_s "${PID[$x]}")
        US[$x]=$(awk -v a="$c0" -v b="$c1" -v n="$n" 'BEGIN{printf "%.2f", (b-a)*1e6/n}')
    done
    echo "$r ${order[0]} ${US[A]} ${US[B]} $(awk -v a="${US[A]}" -v b="${US[B]}" 'BEGIN{printf "%.3f", a/b}')"
done | tee "$TMP/rounds.txt"
awk '$1 ~ /^[0-9]+$/ && NF == 5 { l=log($5); s+=l; ss+=l*l; n++ } END {
    m=s/n; sd=sqrt((ss-n*m*m)/(n-1)); g=exp(m)
    printf "A = %s\nB = %s\nA/B geometric mean %.3f ± %.3f (1 standard error, %d rounds, load %s)\n", A, B, g, g*sd/sqrt(n), n, L }' \
    A="${BIN[A]} ${ARGS[A]}" B="${BIN[B]} ${ARGS[B]}" L="$LOAD" "$TMP/rounds.txt"

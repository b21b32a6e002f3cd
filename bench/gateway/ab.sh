#!/usr/bin/env bash
# Two gateway builds' CPU time per HTTP/1.1 keep-alive request, interleaved finely: both run at
# once (each --threads 1 on CPU 0, each capped at half a core in its own cgroup), and each round
# loads one, then the other, for SECONDS each (wrk -t1 -c64 on CPU 1; which goes first alternates
# by round). Slow drifts of this machine then hit both alike, which run.sh's cells, minutes apart,
# do not. Prints each round's µs/request and the geometric mean of the per-round ratio A ÷ B with
# its standard error.
#
#   sudo bench/gateway/ab.sh [--rounds N] [--seconds S] BINARY_A BINARY_B
#
# Caveat, measured (docs/benchmarks.md, Gateway, 2026-12-08 (b)): two processes of the SAME binary
# differed by 5% here (A ÷ B = 1.052 ± 0.013 over 30 rounds), so run every comparison both ways
# (A B, then B A) and take the geometric mean of A÷B and 1 ÷ (B÷A); differences under ~5% stay
# unresolved. Proxy CPU comes from /proc/PID/stat (10 ms ticks).
set -euo pipefail

ROUNDS=20
SECONDS_PER=2
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --seconds) SECONDS_PER="$2"; shift 2 ;;
        -h|--help) sed -n 2,15p "$0"; exit 0 ;;
        --*) echo "unknown argument $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
[ $# -eq 2 ] || { echo "usage: $0 [--rounds N] [--seconds S] BINARY_A BINARY_B" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
ECHO_BIN="${ECHO_BIN:-$ROOT/target/release/drawbridge-echo}"
command -v wrk >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y wrk; }

BACKEND=127.0.0.1:18180
declare -A BIN=([A]="$1" [B]="$2") PORT=([A]=18183 [B]=18184) METRICS=([A]=18197 [B]=18198) PID=()
TMP="$(mktemp -d /tmp/gateway-ab.XXXXXX)"
PIDS=()
CGROUPS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    sleep 1
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    sleep 0.2
    for d in "${CGROUPS[@]}"; do rmdir "$d" 2>/dev/null || echo "cannot remove cgroup $d" >&2; done
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

mkdir -p "$TMP/manifests"
python3 - "$TMP" "$BACKEND" <<'PY'
import json, sys
tmp, backend = sys.argv[1], sys.argv[2]
ip, port = backend.split(":")
items = [
    {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "drawbridge"},
     "spec": {"controller": "drawbridge.dev/ingress-gateway"}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": "echo"},
     "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}]}},
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
     "metadata": {"namespace": "default", "name": "echo-0", "labels": {"kubernetes.io/service-name": "echo"}},
     "addressType": "IPv4", "ports": [{"name": "http", "port": int(port), "protocol": "TCP"}],
     "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}]},
    {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"namespace": "default", "name": "bench"},
     "spec": {"ingressClassName": "drawbridge",
              "rules": [{"http": {"paths": [{"path": "/", "pathType": "Prefix",
                                              "backend": {"service": {"name": "echo", "port": {"number": 80}}}}]}}]}},
]
json.dump({"apiVersion": "v1", "kind": "List", "items": items}, open(f"{tmp}/manifests/objects.yaml", "w"))
PY

taskset -c 1 "$ECHO_BIN" --listen "$BACKEND" --pod-name bench >"$TMP/echo.log" 2>&1 &
PIDS+=($!)
for x in A B; do
    mkdir -p "$TMP/state-$x"
    RUST_LOG=warn taskset -c 0 "${BIN[$x]}" --manifests "$TMP/manifests" --state-dir "$TMP/state-$x" \
        --http-addr "127.0.0.1:${PORT[$x]}" --https-addr "127.0.0.1:$((PORT[$x] + 260))" \
        --metrics-addr "127.0.0.1:${METRICS[$x]}" --threads 1 --access-log=false >"$TMP/gateway-$x.log" 2>&1 &
    PIDS+=($!)
    PID[$x]=$!
done
for x in A B; do
    for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://127.0.0.1:${PORT[$x]}/" 2>/dev/null && break; sleep 0.1; done
    curl -fsS -o /dev/null "http://127.0.0.1:${PORT[$x]}/" || { echo "${BIN[$x]} does not answer" >&2; exit 1; }
done

# Half a core each (CFS quota 5 ms per 10 ms; cgroup v2 cpu.max or v1 cpu), as run.sh --proxy-cpu 50.
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control || echo +cpu >/sys/fs/cgroup/cgroup.subtree_control
    cg_root=/sys/fs/cgroup
else
    cg_root=/sys/fs/cgroup/cpu
fi
for x in A B; do
    d="$cg_root/drawbridge-ab-$$-$x"
    mkdir "$d"
    CGROUPS+=("$d")
    if [ -f "$d/cpu.max" ]; then echo "5000 10000" >"$d/cpu.max"
    else echo 10000 >"$d/cpu.cfs_period_us"; echo 5000 >"$d/cpu.cfs_quota_us"; fi
    echo "${PID[$x]}" >"$d/cgroup.procs"
done

cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$1/stat"; }
for x in A B; do taskset -c 1 wrk -t1 -c64 -d2s "http://127.0.0.1:${PORT[$x]}/" >/dev/null 2>&1; done # warm-up
echo "round first A_us_per_request B_us_per_request A/B"
for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order=(A B); else order=(B A); fi
    declare -A US=()
    for x in "${order[@]}"; do
        c0=$(cpu_s "${PID[$x]}")
        out=$(taskset -c 1 wrk -t1 -c64 -d"${SECONDS_PER}s" "http://127.0.0.1:${PORT[$x]}/" 2>&1)
        c1=$(cpu_s "${PID[$x]}")
        n=$(awk '/requests in/{print $1}' <<<"$out")
        US[$x]=$(awk -v a="$c0" -v b="$c1" -v n="$n" 'BEGIN{printf "%.2f", (b-a)*1e6/n}')
    done
    echo "$r ${order[0]} ${US[A]} ${US[B]} $(awk -v a="${US[A]}" -v b="${US[B]}" 'BEGIN{printf "%.3f", a/b}')"
done | tee "$TMP/rounds.txt"
awk '$1 ~ /^[0-9]+$/ && NF == 5 { l=log($5); s+=l; ss+=l*l; n++ } END {
    m=s/n; sd=sqrt((ss-n*m*m)/(n-1)); g=exp(m)
    printf "A = %s\nB = %s\nA/B geometric mean %.3f ± %.3f (1 standard error, %d rounds)\n", A, B, g, g*sd/sqrt(n), n }' \
    A="${BIN[A]}" B="${BIN[B]}" "$TMP/rounds.txt"

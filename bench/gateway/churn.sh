#!/usr/bin/env bash
# Memory of one ingress-gateway as idle connections come and go (docs/benchmarks.md, Gateway,
# 2026-12-07 (f)): N idle keep-alive connections (one request each, idle_connections.py) are
# opened, held, closed; three rounds. Prints VmRSS after each step; RSS − start ÷ N per round is
# the memory per connection once freed memory is reused (run.sh --idle sees fresh memory only).
#
#   bench/gateway/churn.sh GATEWAY_BINARY [N] [https|http|h2]     (default: 2000 https)
#
# Needs target/release/drawbridge-echo (cargo build --release -p drawbridge-echo). Loopback only,
# ports 18181/18443/18197 and 18190; the gateway on CPU 0, the client on CPU 1.
set -euo pipefail
BIN=$1 N=${2:-2000} PROTO=${3:-https}
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TMP=$(mktemp -d /tmp/gateway-churn.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
BACKEND=127.0.0.1:18190
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
mkdir -p "$TMP/manifests" "$TMP/state"
# The same objects as run.sh (its manifest generator, taken from it so the two cannot drift).
sed -n '/^python3 - "\$TMP" "\$BACKEND" <<.PY.$/,/^PY$/p' "$ROOT/bench/gateway/run.sh" | sed '1d;$d' >"$TMP/objects.py"
python3 "$TMP/objects.py" "$TMP" "$BACKEND"
"$ROOT/target/release/drawbridge-echo" --listen "$BACKEND" --pod-name bench >"$TMP/echo.log" 2>&1 &
PIDS+=($!)
RUST_LOG=warn taskset -c 0 "$BIN" --manifests "$TMP/manifests" --state-dir "$TMP/state" --http-addr 127.0.0.1:18181 \
    --https-addr 127.0.0.1:18443 --metrics-addr 127.0.0.1:18197 --threads 1 --access-log=false >"$TMP/gw.log" 2>&1 &
GW=$!
PIDS+=($GW)
for _ in $(seq 1 100); do curl -sk -o /dev/null -w '%{http_code}' https://localhost:18443/ 2>/dev/null | grep -q 200 && break; sleep 0.2; done
case $PROTO in
    http) target=(127.0.0.1 18181) ;;
    https) target=(127.0.0.1 18443 --tls localhost) ;;
    h2) target=(127.0.0.1 18443 --tls localhost --h2) ;;
    *) echo "unknown protocol $PROTO" >&2; exit 2 ;;
esac
rss() { awk '/^VmRSS:/{print $2}' "/proc/$GW/status"; }
start=$(rss)
echo "start: $start KiB"
for round in 1 2 3; do
    rm -f "$TMP/in"; mkfifo "$TMP/in"
    taskset -c 1 python3 "$ROOT/bench/gateway/idle_connections.py" "${target[@]:0:2}" "$N" "${target[@]:2}" <"$TMP/in" >"$TMP/out" 2>&1 &
    holder=$!
    exec 7>"$TMP/in"
    for _ in $(seq 1 600); do grep -q '^ready' "$TMP/out" && break; kill -0 "$holder" 2>/dev/null || break; sleep 0.1; done
    sleep 1
    now=$(rss)
    echo "round $round, $(head -1 "$TMP/out"): $now KiB ($(awk -v a="$now" -v b="$start" -v n="$N" 'BEGIN { printf "%.1f", (a - b) / n }') KiB per connection)"
    exec 7>&-
    wait "$holder" || true
    sleep 2
    echo "round $round, closed: $(rss) KiB"
done

#!/usr/bin/env bash
# Route propagation (Ingress change → first request served by the new route) and RSS of
# ingress-gateway at 10, 1,000 and 10,000 Ingress rules, through the manifest-directory source.
#
#   sudo bench/gateway/propagation.sh [--rules "10 1000 10000"] [--changes 50] [--no-build]
#   GW_BIN=/path/to/ingress-gateway ECHO_BIN=/path/to/drawbridge-echo bench/gateway/propagation.sh --no-build
#
# Setup per rule count N (loopback only, gateway pinned to CPU 0 with --threads 1, the poller and
# the echo backend on CPU 1):
#   manifests/base.yaml        IngressClass, Service `echo`, its EndpointSlice (127.0.0.1:18090)
#   manifests/ingresses-K.yaml N Ingresses (1,000 YAML documents per file), Ingress i has one rule:
#                              host h<i>.bench.test, path / (Prefix) → echo:80 — N rules, N hosts
#   manifests/change.yaml      one more Ingress `change`: host change.bench.test, Exact /v<n> → echo
# Start-up: time until the last host answers 200 ("initial load"); then RSS (VmRSS) is read.
# Each of --changes changes rewrites change.yaml (temp file + rename) with path /v<n+1> and polls
# GET /v<n+1> on one keep-alive connection (back to back, ~0.1 ms per poll) until it answers 200:
# the propagation time includes the source's 10 ms file-watch debounce, re-reading change.yaml,
# translating the changed Ingress (config::Translator reuses the other N), rebuilding the route
# table from all N rules, and publishing it. Then VmRSS and VmHWM (peak).
# Profiling: GW_BIN may be a wrapper script that execs the gateway (e.g. under heaptrack's
# LD_PRELOAD with a --no-default-features build); `perf record -p` can attach after the load.
# Prints one Markdown table row per N.
set -euo pipefail
RULES="10 1000 10000"
CHANGES=50
BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --rules) RULES="$2"; shift 2 ;;
        --changes) CHANGES="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n 2,25p "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
if [ "$BUILD" = 1 ]; then
    # Pingora builds zlib-ng with cmake.
    command -v cmake >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake; }
    (cd "$ROOT" && cargo build --release -p drawbridge-echo -p ingress-gateway)
fi
GW_BIN="${GW_BIN:-$ROOT/target/release/ingress-gateway}"
ECHO_BIN="${ECHO_BIN:-$ROOT/target/release/drawbridge-echo}"
BACKEND=127.0.0.1:18090
GW_HTTP=127.0.0.1:18093
TMP="$(mktemp -d /tmp/gateway-propagation.XXXXXX)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

taskset -c 1 "$ECHO_BIN" --listen "$BACKEND" --pod-name bench >"$TMP/echo.log" 2>&1 &
PIDS+=($!)

echo "| Ingress rules (= hosts) | initial load s | propagation p50 ms | p99 ms | max ms | RSS after load MiB | RSS after changes MiB | peak RSS (VmHWM) MiB |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
for N in $RULES; do
    rm -rf "$TMP/m" "$TMP/state"; mkdir -p "$TMP/m" "$TMP/state"
    python3 - "$TMP/m" "$N" "$BACKEND" <<'PY'
import sys
d, n, backend = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ip, port = backend.split(":")
open(f"{d}/base.yaml", "w").write(f"""apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: drawbridge
spec:
  controller: drawbridge.dev/ingress-gateway
---
apiVersion: v1
kind: Service
metadata:
  namespace: default
  name: echo
spec:
  ports:
  - name: http
    port: 80
    targetPort: web
    protocol: TCP
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: default
  name: echo-0
  labels:
    kubernetes.io/service-name: echo
addressType: IPv4
ports:
- name: http
  port: {port}
  protocol: TCP
endpoints:
- addresses: ["{ip}"]
  conditions:
    ready: true
""")
def ingress(name, host, path, path_type):
    return f"""apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  namespace: default
  name: {name}
spec:
  ingressClassName: drawbridge
  rules:
  - host: {host}
    http:
      paths:
      - path: {path}
        pathType: {path_type}
        backend:
          service:
            name: echo
            port:
              number: 80
"""
for k in range(0, n, 1000):
    docs = [ingress(f"site-{i}", f"h{i}.bench.test", "/", "Prefix") for i in range(k, min(n, k + 1000))]
    open(f"{d}/ingresses-{k // 1000:03}.yaml", "w").write("---\n".join(docs))
open(f"{d}/change.yaml", "w").write(ingress("change", "change.bench.test", "/v0", "Exact"))
PY
    START=$(date +%s.%N)
    RUST_LOG=warn taskset -c 0 "$GW_BIN" --manifests "$TMP/m" --state-dir "$TMP/state" \
        --http-addr "$GW_HTTP" --https-addr 127.0.0.1:18094 --metrics-addr off --threads 1 \
        >"$TMP/gateway-$N.log" 2>&1 &
    GW=$!
    PIDS+=($GW)
    taskset -c 1 python3 - "$TMP/m" "$N" "$GW_HTTP" "$GW" "$CHANGES" "$START" <<'PY'
import os, socket, sys, time
d, n, addr, pid, changes, start = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
host, port = addr.split(":")

def rss():
    f = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status"))
    kib = lambda k: int(f[k].split()[0])
    return kib("VmRSS") / 1024, kib("VmHWM") / 1024

class Conn:
    def __init__(self):
        self.s = None
    def get(self, h, path):
        """Status of GET path with Host h (keep-alive; reconnects when needed); None if refused."""
        for _ in range(2):
            try:
                if self.s is None:
                    self.s = socket.create_connection((host, int(port)), timeout=5)
                    self.buf = b""
                self.s.sendall(f"GET {path} HTTP/1.1\r\nHost: {h}\r\n\r\n".encode())
                while b"\r\n\r\n" not in self.buf:
                    chunk = self.s.recv(65536)
                    if not chunk: raise ConnectionError("closed")
                    self.buf += chunk
                head, _, rest = self.buf.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                status = int(lines[0].split()[1])
                length = 0
                for l in lines[1:]:
                    k, _, v = l.partition(b":")
                    if k.strip().lower() == b"content-length": length = int(v)
                while len(rest) < length:
                    chunk = self.s.recv(65536)
                    if not chunk: raise ConnectionError("closed")
                    rest += chunk
                self.buf = rest[length:]
                return status
            except (ConnectionError, OSError):
                if self.s: self.s.close()
                self.s = None
                time.sleep(0.01)
        return None

c = Conn()
deadline = time.time() + 300
while c.get(f"h{n-1}.bench.test", "/") != 200 or c.get("change.bench.test", "/v0") != 200:
    if time.time() > deadline: sys.exit("gateway did not serve the initial configuration within 300 s")
    time.sleep(0.005)
loaded = time.time() - start
rss_loaded, _ = rss()
ingress = open(f"{d}/change.yaml").read()
samples = []
for i in range(1, changes + 1):
    text = ingress.replace("path: /v0", f"path: /v{i}")
    tmp = f"{d}/.change.yaml.tmp"
    open(tmp, "w").write(text)
    t0 = time.perf_counter()
    os.rename(tmp, f"{d}/change.yaml")
    while c.get("change.bench.test", f"/v{i}") != 200:
        if time.perf_counter() - t0 > 30: sys.exit(f"change {i} not served within 30 s")
    samples.append((time.perf_counter() - t0) * 1000)
    time.sleep(0.05)
samples.sort()
pct = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]
rss_after, hwm = rss()
print(f"| {n} | {loaded:.1f} | {pct(0.5):.1f} | {pct(0.99):.1f} | {samples[-1]:.1f} | {rss_loaded:.1f} | {rss_after:.1f} | {hwm:.1f} |", flush=True)
PY
    kill "$GW" 2>/dev/null || true
    wait "$GW" 2>/dev/null || true
done
echo
echo "$CHANGES changes per row; gateway: $GW_BIN"

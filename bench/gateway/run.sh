#!/usr/bin/env bash
# Side-by-side HTTP proxy benchmark: ingress-gateway vs nginx vs haproxy (Debian packages), one run.
#
#   sudo bench/gateway/run.sh [--duration SECONDS] [--scenarios h1,https,handshake,h2,connect,mixed,upload] [--proxy-cpu PERCENT]
#                             [--connections N] [--mixed-connections N] [--profile] [--syscalls] [--no-build]
#                             [--idle N | --idle-only N] [--floor]
#
# Layout (loopback only):
#   CPU 0: the proxy under test (ONE worker: nginx worker_processes 1, haproxy nbthread 1,
#          ingress-gateway --threads 1); all three run at once, idle unless addressed.
#   CPU 1: the load generator (wrk -t1 / h2load -t1) and the shared backend
#          (target/release/drawbridge-echo, one process, JSON body of ~190 bytes).
# Scenarios, each run for every proxy back to back (interleaved, so drift hits all alike):
#   h1        HTTP/1.1 keep-alive, wrk -t1 -c64 --latency
#   https     the same over TLS 1.3 (ECDSA P-256 certificate, SNI localhost)
#   handshake wrk -t1 -c64 over https with "Connection: close": every request is a new TCP
#             connection with a full TLS handshake (wrk never resumes sessions) → req/s = handshakes/s
#   h2        h2load -t1 -c64 -m10 over TLS (ALPN h2), percentiles from h2load --log-file
#   connect   (not in the default set) plain HTTP/1.1 with "Connection: close": a new TCP
#             connection per request (accepts/s without TLS)
#   mixed     (not in the default set) HTTPS keep-alive on --mixed-connections (16) connections,
#             measured while a second wrk floods the same proxy with new TLS handshakes
#             ("Connection: close", 64 connections): how a proxy shares its core between
#             established connections and new ones under overload
#   upload    (not in the default set) HTTPS keep-alive, every request a POST of UPLOAD_BYTES
#             (default 256 KiB; bench/gateway/upload.lua): request bodies streamed through TLS
#             reads, req/s × UPLOAD_BYTES is the upload rate; nginx streams them too
#             (proxy_request_buffering off), as the gateway and haproxy do
# Besides req/s and latency, each cell reports the proxy's CPU time per request (/proc/PID/stat),
# TCP segments sent per request on the host (nstat TcpOutSegs: 4 carry data, the rest are pure
# ACKs and window updates) and the proxy's context switches per request (all threads: how often
# it parked waiting for events or was preempted).
# --connections N: concurrent connections of every load generator (default 64).
# --proxy-cpu PERCENT: caps every proxy process at PERCENT of one core (its own cgroup, CFS quota
#            PERCENT × 100 µs per 10 ms period), so the proxy, not the load side on CPU 1, is the
#            limit: req/s then measures requests per (PERCENT % of a) core. Without it CPU 1 (load
#            generator + backend) saturates first in the HTTP/1.1 and HTTPS cells.
# --profile: afterwards, `perf record -e cpu-clock -g` on the pinned gateway, then on nginx's
#            worker, under one cell's load (PROFILE_LOAD=h1 (default), https, h2 or connect; PROFILE_OUT
#            overrides the directory); writes the top symbols and a Pingora/rustls/malloc/kernel/
#            our-code split. --profile-only skips the table.
# --syscalls: afterwards, `strace -c -f` on each proxy (all threads) during an HTTP/1.1 wrk run
#            (SYSCALLS_LOAD=upload: the upload scenario's load instead); prints system calls per
#            request by name (strace slows the proxy; only the counts per request are meant).
# --idle N: afterwards, memory per idle keep-alive connection: N connections to each proxy (one
#            request each, then idle; bench/gateway/idle_connections.py), plain HTTP, then HTTPS,
#            then HTTP/2 over TLS (Python's `h2` package, installed with pip when missing);
#            prints the proxy's RSS growth per connection in KiB (gateway: its process; nginx: its
#            one worker; haproxy: its process). --idle-only N skips the table.
# --floor:   adds "floor" (bench/gateway/floor.c, built here with cc) to the plain-HTTP cells (h1,
#            connect) and to --profile: a one-thread epoll relay that parses nothing and gives each
#            client connection its own upstream connection, i.e. the 4 system calls of a proxied
#            request with almost no user-space work. nginx's CPU µs/request ÷ the floor's is the
#            highest per-CPU-second ratio against nginx that a proxy on the socket API can reach here.
set -euo pipefail

DURATION=10
PROFILE=0
SYSCALLS=0
IDLE=0
FLOOR=0
TABLE=1
BUILD=1
SCENARIOS=h1,https,handshake,h2
PROXY_CPU=
CONNS=64
MIXED_CONNS=16
UPLOAD_BYTES=${UPLOAD_BYTES:-262144}
export UPLOAD_BYTES # read by upload.lua
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION="$2"; shift 2 ;;
        --profile) PROFILE=1; shift ;;
        --profile-only) PROFILE=1; TABLE=0; shift ;;
        --syscalls) SYSCALLS=1; shift ;;
        --syscalls-only) SYSCALLS=1; TABLE=0; shift ;;
        --idle) IDLE="$2"; shift 2 ;;
        --idle-only) IDLE="$2"; TABLE=0; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --floor) FLOOR=1; shift ;;
        --scenarios) SCENARIOS="$2"; shift 2 ;;
        --proxy-cpu) PROXY_CPU="$2"; shift 2 ;;
        --connections) CONNS="$2"; shift 2 ;;
        --mixed-connections) MIXED_CONNS="$2"; shift 2 ;;
        -h|--help) sed -n 2,54p "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WARMUP=2

need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v perf >/dev/null || need+=(linux-perf)
command -v strace >/dev/null || need+=(strace)
command -v openssl >/dev/null || need+=(openssl)
[ "$FLOOR" = 1 ] && ! command -v cc >/dev/null && need+=(gcc)
# Pingora builds zlib-ng with cmake (the gateway build below).
[ "$BUILD" = 1 ] && ! command -v cmake >/dev/null && need+=(cmake)
if [ "$IDLE" -gt 0 ] && ! python3 -c 'import h2' 2>/dev/null; then
    python3 -m pip install -q h2 # the HTTP/2 client of idle_connections.py
fi
if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}"
fi

if [ "$BUILD" = 1 ]; then
    (cd "$ROOT" && cargo build --release -p drawbridge-echo -p ingress-gateway)
fi
# Binaries: the workspace build unless given. GW_BIN_B (optional) adds a second gateway build as
# proxy "gateway-b" (e.g. the same commit built with --no-default-features, i.e. glibc malloc
# instead of mimalloc), measured in the same run on the same footing.
GW_BIN="${GW_BIN:-$ROOT/target/release/ingress-gateway}"
ECHO_BIN="${ECHO_BIN:-$ROOT/target/release/drawbridge-echo}"
GW_BIN_B="${GW_BIN_B:-}"

TMP="$(mktemp -d /tmp/gateway-bench.XXXXXX)"
PIDS=()
# shellcheck source=lib.sh
source "$ROOT/bench/gateway/lib.sh"
cleanup() {
    # nginx forks its worker from the master we started; stop it through its pid file too.
    [ -f "$TMP/nginx.pid" ] && PIDS+=("$(cat "$TMP/nginx.pid")")
    stop_all
}
CGROUPS=()
trap cleanup EXIT INT TERM

BACKEND=127.0.0.1:18080
declare -A HTTP=([nginx]=127.0.0.1:18081 [haproxy]=127.0.0.1:18082 [gateway]=127.0.0.1:18083 [gateway-b]=127.0.0.1:18084 [floor]=127.0.0.1:18085)
declare -A HTTPS=([nginx]=18441 [haproxy]=18442 [gateway]=18443 [gateway-b]=18444)
# Gateways' /metrics (upstream connects are read from drawbridge_gateway_upstream_connect_duration_seconds_count).
declare -A METRICS=([gateway]=127.0.0.1:18097 [gateway-b]=127.0.0.1:18098)
PROXIES=(nginx haproxy gateway)
[ -n "$GW_BIN_B" ] && PROXIES+=(gateway-b)
[ "$FLOOR" = 1 ] && PROXIES+=(floor)
# PROXY_ORDER="gateway nginx ...": the order of the cells in every scenario (default: nginx first).
# Each name must be one of the proxies of this run; the others follow in the default order.
if [ -n "${PROXY_ORDER:-}" ]; then
    ordered=()
    for p in $PROXY_ORDER; do
        [[ " ${PROXIES[*]} " == *" $p "* ]] || { echo "PROXY_ORDER: $p is not measured in this run (${PROXIES[*]})" >&2; exit 2; }
        ordered+=("$p")
    done
    for p in "${PROXIES[@]}"; do [[ " ${ordered[*]} " == *" $p "* ]] || ordered+=("$p"); done
    PROXIES=("${ordered[@]}")
fi
TLS_PROXIES=()
for p in "${PROXIES[@]}"; do [ "$p" = floor ] || TLS_PROXIES+=("$p"); done # the floor speaks plain HTTP only
# The proxies measured in a scenario's cells.
cell_proxies() { case "$1" in h1|connect) echo "${PROXIES[@]}" ;; *) echo "${TLS_PROXIES[@]}" ;; esac; }
# The floor adds no header, so its load generator sends the ones the others add (same values, a
# fixed 32-hex X-Request-ID): the backend sees and echoes the same bytes; only the client's leg
# to the floor carries ~170 bytes more than to the others (in the floor's disfavour).
FLOOR_HEADERS=(-H "X-Forwarded-For: 127.0.0.1" -H "X-Forwarded-Proto: http" -H "X-Forwarded-Host: ${HTTP[floor]}"
               -H "X-Forwarded-Port: ${HTTP[floor]##*:}" -H "X-Real-IP: 127.0.0.1"
               -H "X-Request-ID: 0123456789abcdef0123456789abcdef")
load_headers() { [ "$1" = floor ] && printf '%s\n' "${FLOOR_HEADERS[@]}"; true; } # proxy → wrk -H args, one per line

# --- certificate (ECDSA P-256, CN/SAN localhost: wrk and h2load send the URL host as SNI) ---
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
cat "$TMP/cert.pem" "$TMP/key.pem" >"$TMP/combined.pem"

# --- backend on CPU 1 ---
taskset -c 1 "$ECHO_BIN" --listen "$BACKEND" --pod-name bench >"$TMP/echo.log" 2>&1 &
PIDS+=($!)

# --- the request headers nginx and haproxy add, as the gateway does ---
# PEER_HEADERS=equivalent (default): both forward what the gateway forwards (and ingress-nginx's
# nginx.tmpl sets): X-Forwarded-For (appended), X-Forwarded-Proto, X-Real-IP, X-Forwarded-Host
# (the client's Host), X-Forwarded-Port (the listener's port) and X-Request-ID (the client's, else
# 32 random hex digits: nginx's $request_id; haproxy: a UUID). The echo backend copies these into
# its answer, so with them every proxy moves about the same bytes both ways (checked at start: the
# "forwarded:" line per proxy). PEER_HEADERS=minimal: only X-Forwarded-For/-Proto (the
# configuration of the results before 2026-12-08), while the gateway still adds all six.
PEER_HEADERS="${PEER_HEADERS:-equivalent}"
NGINX_EXTRA_HEADERS= NGINX_HTTP_EXTRA= HAPROXY_EXTRA_HEADERS=
case "$PEER_HEADERS" in
    equivalent)
        NGINX_HTTP_EXTRA='    map $http_x_request_id $req_id { default $http_x_request_id; "" $request_id; }'
        NGINX_EXTRA_HEADERS='            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Forwarded-Port $server_port;
            proxy_set_header X-Request-ID $req_id;'
        HAPROXY_EXTRA_HEADERS='    http-request set-header X-Real-IP %[src]
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Forwarded-Port %[dst_port]
    http-request set-header X-Request-ID %[uuid] unless { req.hdr(x-request-id) -m found }' ;;
    minimal) ;;
    *) echo "PEER_HEADERS must be equivalent or minimal" >&2; exit 2 ;;
esac

# --- nginx: one worker on CPU 0, upstream keep-alive ---
cat >"$TMP/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    # The upload scenario: bodies up to 2 MiB, streamed to the backend as they arrive (the
    # gateway and haproxy stream; nginx would otherwise write them to a temporary file first).
    client_max_body_size 2m;
    proxy_request_buffering off;
    upstream echo { server $BACKEND; keepalive 64; keepalive_requests 1000000; }
$NGINX_HTTP_EXTRA
    server {
        listen ${HTTP[nginx]} reuseport;
        listen 127.0.0.1:${HTTPS[nginx]} ssl http2;
        server_name localhost;
        ssl_certificate $TMP/cert.pem;
        ssl_certificate_key $TMP/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
$NGINX_EXTRA_HEADERS
        }
    }
}
EOF
taskset -c 0 nginx -c "$TMP/nginx.conf" -p "$TMP" >"$TMP/nginx.out" 2>&1 &
PIDS+=($!)

# --- haproxy: one thread on CPU 0, server-side connection reuse (http-reuse safe, the default) ---
cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option forwardfor
    http-reuse safe
frontend fe
    bind ${HTTP[haproxy]}
    bind 127.0.0.1:${HTTPS[haproxy]} ssl crt $TMP/combined.pem alpn h2,http/1.1
    http-request set-header X-Forwarded-Proto https if { ssl_fc }
    http-request set-header X-Forwarded-Proto http if !{ ssl_fc }
$HAPROXY_EXTRA_HEADERS
    default_backend be
backend be
    server echo $BACKEND
EOF
taskset -c 0 haproxy -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
PIDS+=($!)
declare -A PROC=([haproxy]=$!)

# --- ingress-gateway: --threads 1 on CPU 0 (the whole process: Pingora + discovery thread) ---
mkdir -p "$TMP/manifests" "$TMP/state"
python3 "$ROOT/bench/gateway/manifests.py" "$TMP" "$BACKEND" --tls
start_gateway() { # name binary [extra flags...]
    local name="$1" bin="$2" extra=("${@:3}")
    # Per-request access log (when the build has one): off, like nginx's access_log off.
    "$bin" --help 2>/dev/null | grep -q -- '--access-log' && extra+=(--access-log=false)
    mkdir -p "$TMP/state-$name"
    RUST_LOG="${RUST_LOG:-warn}" taskset -c 0 "$bin" --manifests "$TMP/manifests" --state-dir "$TMP/state-$name" \
        --http-addr "${HTTP[$name]}" --https-addr "127.0.0.1:${HTTPS[$name]}" \
        --metrics-addr "${METRICS[$name]}" --threads 1 "${extra[@]}" >"$TMP/$name.log" 2>&1 &
    PIDS+=($!)
    PROC[$name]=$!
}
# GW_ARGS / GW_ARGS_B: extra flags for each (e.g. GW_BIN_B=$GW_BIN GW_ARGS_B=--http1-fast-path=false
# measures the same binary with and without a feature in one run).
read -r -a GW_EXTRA <<<"${GW_ARGS:-}"
read -r -a GW_EXTRA_B <<<"${GW_ARGS_B:-}"
start_gateway gateway "$GW_BIN" "${GW_EXTRA[@]}"
GW_PID=${PIDS[-1]}
[ -n "$GW_BIN_B" ] && start_gateway gateway-b "$GW_BIN_B" "${GW_EXTRA_B[@]}"

# --- --floor: the yardstick relay (floor.c), one thread on CPU 0 ---
if [ "$FLOOR" = 1 ]; then
    cc -O2 -Wall -o "$TMP/floor" "$ROOT/bench/gateway/floor.c"
    taskset -c 0 "$TMP/floor" "${HTTP[floor]}" "$BACKEND" >"$TMP/floor.log" 2>&1 &
    PIDS+=($!)
    PROC[floor]=$!
fi

# --- wait until every proxy answers 200 through to the backend, over HTTP and HTTPS ---
for p in "${PROXIES[@]}"; do
    ok=0
    for _ in $(seq 1 100); do
        if curl -fsS -o /dev/null "http://${HTTP[$p]}/" 2>/dev/null &&
           { [ "$p" = floor ] || curl -fsS -o /dev/null -k "https://localhost:${HTTPS[$p]}/" 2>/dev/null; }; then ok=1; break; fi
        sleep 0.1
    done
    if [ "$ok" != 1 ]; then
        echo "$p does not answer; logs:" >&2; tail -n 20 "$TMP"/*.log "$TMP"/*.out >&2 2>/dev/null || true; exit 1
    fi
    if [ "$p" = floor ]; then
        echo "ready: floor (plain HTTP only)" >&2
    else
        h2=$(curl -sk --http2 -o /dev/null -w '%{http_version}' "https://localhost:${HTTPS[$p]}/")
        tls=$(echo | openssl s_client -connect "127.0.0.1:${HTTPS[$p]}" -servername localhost 2>/dev/null |
              grep -m1 '^New,' || true)
        echo "ready: $p (HTTP/$h2 over TLS; $tls)" >&2
    fi
    # What reached the backend (the echo's "headers" object) and the answer's size in bytes.
    mapfile -t hs < <(load_headers "$p")
    curl -fsS "${hs[@]}" "http://${HTTP[$p]}/" | python3 -c 'import json, sys
b = sys.stdin.read(); h = json.loads(b)["headers"]
h = {k: (v if k != "x-request-id" else "<%d chars>" % len(v)) for k, v in h.items()}
print("forwarded: %s (%d-byte body)" % (", ".join("%s=%s" % kv for kv in sorted(h.items())), len(b)))' >&2
done

PROC[nginx]=$(pgrep -P "$(cat "$TMP/nginx.pid")" | head -1) # the one worker

# --- --proxy-cpu: one cgroup per proxy, CFS bandwidth PERCENT % of a core (cgroup v2 or v1) ---
if [ -n "$PROXY_CPU" ]; then
    for p in "${PROXIES[@]}"; do
        if [ "$p" = nginx ]; then cpu_cap nginx "$PROXY_CPU" "$(cat "$TMP/nginx.pid")" "${PROC[nginx]}" # the idle master too
        else cpu_cap "$p" "$PROXY_CPU" "${PROC[$p]}"; fi
    done
    echo "proxies capped at ${PROXY_CPU}% of a core each ($((PROXY_CPU * 100)) µs per 10 ms)" >&2
fi

# --- helpers: numbers out of wrk / h2load output, latency in ms ---
# CPU seconds (user + system, all threads) a proxy process has used so far, from /proc/PID/stat.
proc_cpu() { # proxy → seconds, or "" (direct)
    local pid="${PROC[$1]:-}"
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || { echo ""; return; }
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$pid/stat"
}
declare -A CPUUS SEGS SWITCHES
# TCP segments sent on the whole host so far (loopback: client ↔ proxy ↔ backend); per request
# 4 carry data, the rest are pure ACKs, window updates and the like.
tcp_segs() { nstat -az TcpOutSegs 2>/dev/null | awk '$1=="TcpOutSegs"{print $2}'; }
# Context switches of all the proxy's threads so far (voluntary: it parked waiting for events;
# involuntary: preempted), from /proc/PID/task/*/status.
proc_switches() { # proxy → count, or "" (direct)
    local pid="${PROC[$1]:-}"
    [ -n "$pid" ] && [ -d "/proc/$pid/task" ] || { echo ""; return; }
    cat /proc/"$pid"/task/*/status 2>/dev/null | awk '/ctxt_switches/{n+=$2} END{print n+0}'
}
per_req() { # before after requests → "%.2f" or ""
    [ -n "$1" ] && [ -n "$2" ] && [ -n "$3" ] && [ "$3" -gt 0 ] &&
        awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN{printf "%.2f", (b-a)/n}' || echo ""
}
to_ms() { # 1.23ms | 456.00us | 1.20s
    awk -v v="$1" 'BEGIN{ if (v ~ /us$/) { sub(/us$/,"",v); printf "%.3f", v/1000 }
                          else if (v ~ /ms$/) { sub(/ms$/,"",v); printf "%.3f", v }
                          else if (v ~ /s$/) { sub(/s$/,"",v); printf "%.3f", v*1000 }
                          else print "?" }'
}
declare -A RPS P50 P99 ERR CPU
cpu_snap() { awk '/^cpu[01] /{busy=$2+$3+$4+$7+$8; tot=busy+$5+$6; printf "%s %s ", busy, tot}' /proc/stat; }
cpu_busy() { # snapshot-before snapshot-after → "cpu0%/cpu1%"
    awk -v a="$1" -v b="$2" 'BEGIN{ split(a,x," "); split(b,y," ");
        printf "%.0f/%.0f", 100*(y[1]-x[1])/(y[2]-x[2]), 100*(y[3]-x[3])/(y[4]-x[4]) }'
}
# Upstream connections a gateway opened so far (new connections only; pooled reuse is not counted).
upstream_connects() { # proxy → count, or "" for nginx/haproxy
    [ -n "${METRICS[$1]:-}" ] || { echo ""; return; }
    { curl -fsS "http://${METRICS[$1]}/metrics" 2>/dev/null || true; } |
        awk '/^drawbridge_gateway_upstream_connect_duration_seconds_count/ && !n++ {print $2}'
}
declare -A CONNECTS FLOOD
run_wrk() { # key url [extra wrk args...]
    local key="$1" url="$2"; shift 2
    local proxy="${key%-*}" before after
    taskset -c 1 wrk -t1 -c"$CONNS" -d"${WARMUP}s" "$@" "$url" >/dev/null 2>&1 || true
    before=$(upstream_connects "$proxy")
    local c0; c0=$(cpu_snap)
    local p0; p0=$(proc_cpu "$proxy")
    local s0 x0; s0=$(tcp_segs); x0=$(proc_switches "$proxy")
    local out; out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$@" "$url" 2>&1)
    CPU[$key]=$(cpu_busy "$c0" "$(cpu_snap)")
    local p1; p1=$(proc_cpu "$proxy")
    local s1 x1; s1=$(tcp_segs); x1=$(proc_switches "$proxy")
    local n; n=$(awk '/requests in/{print $1}' <<<"$out")
    SEGS[$key]=$(per_req "$s0" "$s1" "$n")
    SWITCHES[$key]=$(per_req "$x0" "$x1" "$n")
    # The proxy's own CPU time per request (µs): robust against other load on the machine.
    CPUUS[$key]=$([ -n "$p0" ] && [ -n "$n" ] && [ "$n" -gt 0 ] && awk -v a="$p0" -v b="$p1" -v n="$n" 'BEGIN{printf "%.1f", (b-a)*1e6/n}' || echo "")
    after=$(upstream_connects "$proxy")
    CONNECTS[$key]=$([ -n "$before" ] && [ -n "$after" ] && echo $((after - before)) || echo "")
    echo "$out" >"$TMP/wrk-$key.txt"
    RPS[$key]=$(awk '/^Requests\/sec:/{printf "%.0f", $2}' <<<"$out")
    P50[$key]=$(to_ms "$(awk '$1=="50%"{print $2}' <<<"$out")")
    P99[$key]=$(to_ms "$(awk '$1=="99%"{print $2}' <<<"$out")")
    ERR[$key]=$(awk '/Non-2xx/{e+=$NF} /Socket errors/{gsub(/,/,""); e+=$4+$6+$8+$10} END{print e+0}' <<<"$out")
    echo "  $key: ${RPS[$key]} req/s p50 ${P50[$key]} ms p99 ${P99[$key]} ms errors ${ERR[$key]} cpu0/cpu1 ${CPU[$key]}%${CPUUS[$key]:+ proxy CPU ${CPUUS[$key]} µs/req}${CONNECTS[$key]:+ upstream connects ${CONNECTS[$key]}}${SEGS[$key]:+ TCP segs/req ${SEGS[$key]}}${SWITCHES[$key]:+ switches/req ${SWITCHES[$key]}}" >&2
}
run_h2() { # key port
    local key="$1" port="$2"
    local proxy="${key%-*}" before after
    before=$(upstream_connects "$proxy")
    taskset -c 1 h2load -t1 -c"$CONNS" -m10 -D "$DURATION" --warm-up-time="$WARMUP" \
        --log-file="$TMP/h2-$key.log" "https://localhost:$port/" >"$TMP/h2load-$key.txt" 2>&1 &
    local h2pid=$!
    # CPU snapshots around the measured part only (h2load counts nothing during its warm-up).
    sleep "$WARMUP"
    local c0; c0=$(cpu_snap)
    local p0; p0=$(proc_cpu "$proxy")
    local s0 x0; s0=$(tcp_segs); x0=$(proc_switches "$proxy")
    wait "$h2pid" || true
    CPU[$key]=$(cpu_busy "$c0" "$(cpu_snap)")
    local p1; p1=$(proc_cpu "$proxy")
    local s1 x1; s1=$(tcp_segs); x1=$(proc_switches "$proxy")
    local out; out=$(cat "$TMP/h2load-$key.txt")
    local n; n=$(awk '/^requests:/{gsub(/,/,""); print $8+0}' <<<"$out") # "N succeeded"
    SEGS[$key]=$(per_req "$s0" "$s1" "$n")
    SWITCHES[$key]=$(per_req "$x0" "$x1" "$n")
    CPUUS[$key]=$([ -n "$p0" ] && [ -n "$n" ] && [ "$n" -gt 0 ] && awk -v a="$p0" -v b="$p1" -v n="$n" 'BEGIN{printf "%.1f", (b-a)*1e6/n}' || echo "")
    after=$(upstream_connects "$proxy")
    CONNECTS[$key]=$([ -n "$before" ] && [ -n "$after" ] && echo $((after - before)) || echo "")
    RPS[$key]=$(awk '/^finished in/{gsub(/,/,""); printf "%.0f", $4}' <<<"$out")
    # log file: start time, status, duration in µs (one line per request)
    read -r p50 p99 < <(awk '{print $3}' "$TMP/h2-$key.log" | sort -n |
        awk '{a[NR]=$1} END{ if (NR==0) {print "? ?"; exit} i=int(NR*0.5); if(i<1)i=1; j=int(NR*0.99); if(j<1)j=1;
                             printf "%.3f %.3f\n", a[i]/1000, a[j]/1000 }')
    P50[$key]=$p50; P99[$key]=$p99
    ERR[$key]=$(awk '/^requests:/{gsub(/,/,""); print $10+0}' <<<"$out") # "N failed"
    echo "  $key: ${RPS[$key]} req/s p50 ${P50[$key]} ms p99 ${P99[$key]} ms failed ${ERR[$key]} cpu0/cpu1 ${CPU[$key]}%${CPUUS[$key]:+ proxy CPU ${CPUUS[$key]} µs/req}${CONNECTS[$key]:+ upstream connects ${CONNECTS[$key]}}${SEGS[$key]:+ TCP segs/req ${SEGS[$key]}}${SWITCHES[$key]:+ switches/req ${SWITCHES[$key]}}" >&2
}

START=$(date +%s)
if [ "$TABLE" = 1 ]; then
has() { [[ ",$SCENARIOS," == *",$1,"* ]]; }
echo "== direct to backend (no proxy), HTTP/1.1" >&2
run_wrk direct-h1 "http://$BACKEND/"
if has h1; then
echo "== HTTP/1.1 keep-alive" >&2
for p in "${PROXIES[@]}"; do mapfile -t hs < <(load_headers "$p"); run_wrk "$p-h1" "http://${HTTP[$p]}/" "${hs[@]}"; done
fi
if has https; then
echo "== HTTPS keep-alive" >&2
for p in "${TLS_PROXIES[@]}"; do run_wrk "$p-https" "https://localhost:${HTTPS[$p]}/"; done
fi
if has handshake; then
echo "== new TLS handshakes (Connection: close)" >&2
for p in "${TLS_PROXIES[@]}"; do run_wrk "$p-handshake" "https://localhost:${HTTPS[$p]}/" -H "Connection: close"; done
fi
if has connect; then
echo "== new TCP connection per request (HTTP/1.1, Connection: close)" >&2
for p in "${PROXIES[@]}"; do mapfile -t hs < <(load_headers "$p"); run_wrk "$p-connect" "http://${HTTP[$p]}/" -H "Connection: close" "${hs[@]}"; done
fi
if has mixed; then
echo "== HTTPS keep-alive ($MIXED_CONNS connections) during a flood of new TLS handshakes ($CONNS connections)" >&2
for p in "${TLS_PROXIES[@]}"; do
    taskset -c 1 wrk -t1 -c"$CONNS" -d"$((WARMUP + DURATION + 2))s" -H "Connection: close" \
        "https://localhost:${HTTPS[$p]}/" > "$TMP/flood-$p.txt" 2>&1 &
    flood=$!
    sleep 1
    CONNS=$MIXED_CONNS run_wrk "$p-mixed" "https://localhost:${HTTPS[$p]}/"
    wait "$flood" || true
    echo "    flood beside it: $(awk '/^Requests\/sec:/{printf "%.0f", $2}' "$TMP/flood-$p.txt") handshakes/s" >&2
    FLOOD[$p]=$(awk '/^Requests\/sec:/{printf "%.0f", $2}' "$TMP/flood-$p.txt")
done
fi
if has upload; then
echo "== HTTPS upload: POST of $UPLOAD_BYTES bytes per request" >&2
head -c "$UPLOAD_BYTES" /dev/zero >"$TMP/upload.bin"
for p in "${TLS_PROXIES[@]}"; do
    # The backend must have read the whole body through this proxy, or the cell measures nothing.
    got=$(curl -fsS -k --data-binary @"$TMP/upload.bin" -H 'Content-Type: application/octet-stream' \
        "https://localhost:${HTTPS[$p]}/" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("body_bytes"))' || true)
    [ "$got" = "$UPLOAD_BYTES" ] || { echo "$p: the backend read ${got:-nothing} of $UPLOAD_BYTES body bytes" >&2; exit 1; }
    run_wrk "$p-upload" "https://localhost:${HTTPS[$p]}/" -s "$ROOT/bench/gateway/upload.lua"
done
fi
if has h2; then
echo "== HTTP/2 over TLS" >&2
for p in "${TLS_PROXIES[@]}"; do run_h2 "$p-h2" "${HTTPS[$p]}"; done
fi
END=$(date +%s)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b+0==0 || a=="?" || b=="?") print "—"; else printf "%.2f×", a/b }'; }
echo
# req per CPU-second vs nginx = nginx's CPU µs/request ÷ this proxy's (higher is better).
cpu_ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a+0==0 || b+0==0) print "—"; else printf "%.2f×", b/a }'; }
echo "| scenario | proxy | req/s | p50 ms | p99 ms | errors | CPU0/CPU1 busy % | req/s vs nginx | p99 vs nginx | proxy CPU µs/req | req per CPU-s vs nginx | upstream connects | TCP segments/req | proxy switches/req |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
echo "| HTTP/1.1 keep-alive | direct (no proxy) | ${RPS[direct-h1]} | ${P50[direct-h1]} | ${P99[direct-h1]} | ${ERR[direct-h1]} | ${CPU[direct-h1]} | — | — | — | — | — | ${SEGS[direct-h1]:-—} | — |"
for s in ${SCENARIOS//,/ }; do
    case $s in
        h1) name="HTTP/1.1 keep-alive" ;; https) name="HTTPS keep-alive (TLS 1.3)" ;;
        handshake) name="new TLS handshake per request" ;; h2) name="HTTP/2 (TLS, -m10)" ;;
        mixed) name="HTTPS keep-alive ($MIXED_CONNS conns) during a handshake flood" ;;
        connect) name="new TCP connection per request (HTTP/1.1)" ;;
        upload) name="HTTPS upload ($((UPLOAD_BYTES / 1024)) KiB POST)" ;;
    esac
    for p in $(cell_proxies "$s"); do
        k="$p-$s"
        echo "| $name | $p | ${RPS[$k]} | ${P50[$k]} | ${P99[$k]} | ${ERR[$k]} | ${CPU[$k]} | $(ratio "${RPS[$k]}" "${RPS[nginx-$s]}") | $(ratio "${P99[$k]}" "${P99[nginx-$s]}") | ${CPUUS[$k]:-—} | $(cpu_ratio "${CPUUS[$k]:-}" "${CPUUS[nginx-$s]:-}") | ${CONNECTS[$k]:-—} | ${SEGS[$k]:-—} | ${SWITCHES[$k]:-—} |"
    done
done
echo
echo "measured in $((END-START)) s; $CONNS connections; ${DURATION} s per cell after ${WARMUP} s warm-up${PROXY_CPU:+; every proxy capped at ${PROXY_CPU}% of a core}"
# wrk's latency starts when a request is written, i.e. after connect + TLS handshake. A proxy that
# leaves new connections in its accept queue (nginx here: most of the 64 wait there under load)
# has its handshake waits outside that window; one that accepts at once (the gateway) has them
# inside. The mean lifetime of a connection (connections ÷ handshakes/s, Little's law) counts both.
if has handshake; then
    printf "new TLS handshakes, mean connection lifetime (connect to close, %s ÷ req/s):" "$CONNS"
    for p in "${TLS_PROXIES[@]}"; do
        awk -v p="$p" -v c="$CONNS" -v r="${RPS[$p-handshake]}" 'BEGIN{ if (r+0>0) printf " %s %.1f ms;", p, 1000*c/r }'
    done
    echo
fi
if has upload; then
    printf "upload rate (req/s × %s bytes), MiB/s:" "$UPLOAD_BYTES"
    for p in "${TLS_PROXIES[@]}"; do
        awk -v p="$p" -v r="${RPS[$p-upload]}" -v b="$UPLOAD_BYTES" -v us="${CPUUS[$p-upload]:-}" 'BEGIN{
            printf " %s %.0f", p, r*b/1048576; if (us != "") printf " (%.2f proxy CPU-ms per MiB)", us*1048576/b/1000; printf ";" }'
    done
    echo
fi
# The keep-alive cell's proxy CPU per request also pays for the flood's handshakes: compare its
# req/s and latency, and the flood's rate, not its µs/req.
if has mixed; then
    printf "handshake flood beside the mixed cell (handshakes/s):"
    for p in "${TLS_PROXIES[@]}"; do printf " %s %s;" "$p" "${FLOOD[$p]:-?}"; done
    echo
fi
fi

split_of() { # symbols.txt → "| category | % |" rows
    awk '{ pct=$1; sub(/%/,"",pct); $1=""; s=$0
           if (s ~ /\[k\]/) c="kernel (syscalls, TCP loopback, epoll)"
           else if (s ~ /malloc|free|realloc|calloc|_int_|tcache|memalign|cfree|\] _*mi_/) c="malloc/free (glibc or mimalloc)"
           else if (s ~ /memcpy|memmove|memset|memcmp|strlen|__memchr|memchr/) c="libc mem*/str*"
           else if (s ~ /rustls|aws_lc|ring_core|ring::|aes_|gcm_|ChaCha|chacha|poly1305|sha256|p256|ecp_nistz|x25519|bn_/) c="rustls + crypto"
           else if (s ~ /pingora/) c="pingora"
           else if (s ~ /tokio|mio::/) c="tokio/mio"
           else if (s ~ /ingress_gateway|drawbridge/) c="ingress_gateway (our code)"
           else if (s ~ /http::|httparse|bytes::|hashbrown|core::|alloc::|std::/) c="http/httparse/bytes/std"
           else c="other"
           sum[c]+=pct }
         END { for (c in sum) printf "| %s | %.1f%% |\n", c, sum[c] }' "$1" | sort -t'|' -k3 -rn
}

# profile_load PROXY OUTFILE: the load of the profiled cell (PROFILE_LOAD) on PROXY, in the
# background, for DURATION + 2 s; its report goes to OUTFILE.
profile_load() {
    local hs; mapfile -t hs < <(load_headers "$1")
    case "${PROFILE_LOAD:-h1}" in
        h2) taskset -c 1 h2load -t1 -c"$CONNS" -m10 -D "$((DURATION + 2))" "https://localhost:${HTTPS[$1]}/" >"$2" 2>&1 & ;;
        https) taskset -c 1 wrk -t1 -c"$CONNS" -d"$((DURATION + 2))s" "https://localhost:${HTTPS[$1]}/" >"$2" 2>&1 & ;;
        connect) taskset -c 1 wrk -t1 -c"$CONNS" -d"$((DURATION + 2))s" "http://${HTTP[$1]}/" -H "Connection: close" "${hs[@]}" >"$2" 2>&1 & ;;
        *) taskset -c 1 wrk -t1 -c"$CONNS" -d"$((DURATION + 2))s" "http://${HTTP[$1]}/" "${hs[@]}" >"$2" 2>&1 & ;;
    esac
}

if [ "$PROFILE" = 1 ]; then
    # PROFILE_LOAD=h1 (default, into bench/gateway/profile), https (wrk over TLS 1.3, into
    # bench/gateway/profile-https), h2 (h2load -m10 over TLS, into bench/gateway/profile-h2) or
    # connect (a new TCP connection per request, into bench/gateway/profile-connect):
    # the gateway, then nginx's worker, each under that cell's load.
    case "${PROFILE_LOAD:-h1}" in
        h2) LOAD_NAME="HTTP/2 over TLS (h2load -m10)"; OUT="${PROFILE_OUT:-$ROOT/bench/gateway/profile-h2}" ;;
        https) LOAD_NAME="HTTPS keep-alive (wrk)"; OUT="${PROFILE_OUT:-$ROOT/bench/gateway/profile-https}" ;;
        connect) LOAD_NAME="new TCP connection per request (wrk, Connection: close)"; OUT="${PROFILE_OUT:-$ROOT/bench/gateway/profile-connect}" ;;
        *) LOAD_NAME="HTTP/1.1 keep-alive"; OUT="${PROFILE_OUT:-$ROOT/bench/gateway/profile}" ;;
    esac
    echo "== perf: ingress-gateway (pid $GW_PID), $LOAD_NAME" >&2
    profile_load gateway /dev/null
    WRK=$!
    mkdir -p "$OUT"
    sleep 1
    # PERF_CALLGRAPH="--call-graph dwarf" for user-space callers (the build has no frame pointers).
    perf record -e cpu-clock ${PERF_CALLGRAPH:--g} -p "$GW_PID" -o "$TMP/perf.data" -- sleep "$DURATION" >/dev/null 2>&1
    ps -L -o tid=,comm=,pcpu=,psr= -p "$GW_PID" >"$OUT/threads.txt"
    wait "$WRK" || true
    # who calls the top kernel symbols (callers, from the -g call chains)
    perf report -i "$TMP/perf.data" --no-children --stdio --sort sym -G --percent-limit 3 2>/dev/null |
        grep -v '^$' | head -150 >"$OUT/callers.txt"
    perf report -i "$TMP/perf.data" --no-children --sort sym --stdio --percent-limit 0.01 -g none 2>/dev/null |
        grep -E '^ +[0-9.]+%' >"$OUT/symbols.txt"
    perf report -i "$TMP/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null |
        grep -E '^ +[0-9.]+%' >"$OUT/dso.txt"
    # per thread, and the top symbols of each thread
    perf report -i "$TMP/perf.data" --no-children --sort pid --stdio -g none 2>/dev/null |
        grep -E '^ +[0-9.]+%' >>"$OUT/threads.txt" || true
    perf report -i "$TMP/perf.data" --no-children --sort pid,sym --stdio -g none --percent-limit 0.7 2>/dev/null |
        grep -E '^ +[0-9.]+%' | cut -c1-200 >"$OUT/thread-symbols.txt" || true
    [ -n "${KEEP_PERF:-}" ] && cp "$TMP/perf.data" "$KEEP_PERF"
    echo
    echo "Top 15 symbols (self time, ingress-gateway on CPU 0, ${PROFILE_LOAD:-h1} load):"
    echo '```'
    head -15 "$OUT/symbols.txt" | cut -c1-150
    echo '```'
    echo
    echo "Split of self time by symbol (patterns in run.sh):"
    split_of "$OUT/symbols.txt"
    echo "(full lists: $OUT/symbols.txt, $OUT/dso.txt; call chains of symbols ≥ 3%: $OUT/callers.txt; threads: $OUT/threads.txt)"

    # profile_peer NAME PID TITLE SPLIT_NOTE: the same for another proxy under the same load
    # (its kernel share per request to compare), into $OUT/NAME-symbols.txt and NAME-dso.txt.
    profile_peer() {
        local name="$1" pid="$2" title="$3" note="$4"
        echo "== perf: $title (pid $pid), $LOAD_NAME" >&2
        profile_load "$name" "$TMP/load-$name-prof.txt"
        WRK=$!
        sleep 1
        perf record -e cpu-clock -g -p "$pid" -o "$TMP/perf-$name.data" -- sleep "$DURATION" >/dev/null 2>&1
        wait "$WRK" || true
        perf report -i "$TMP/perf-$name.data" --no-children --sort sym --stdio --percent-limit 0.01 -g none 2>/dev/null |
            grep -E '^ +[0-9.]+%' >"$OUT/$name-symbols.txt"
        perf report -i "$TMP/perf-$name.data" --no-children --sort dso --stdio -g none 2>/dev/null |
            grep -E '^ +[0-9.]+%' >"$OUT/$name-dso.txt"
        echo
        echo "$title, top 15 symbols (self time, same load):"
        echo '```'
        head -15 "$OUT/$name-symbols.txt" | cut -c1-150
        echo '```'
        echo "$title split (same patterns$note):"
        split_of "$OUT/$name-symbols.txt"
        echo "(req/s during the $title profile: $(awk '/^Requests\/sec:/{print $2} /^finished in/{print $4}' "$TMP/load-$name-prof.txt"))"
    }
    profile_peer nginx "$(pgrep -P "$(cat "$TMP/nginx.pid")" | head -1)" "nginx worker" \
        "; nginx's own code lands in \"other\""
    # --floor, plain-HTTP loads: the yardstick relay too (its share in the kernel is the floor's).
    if [ "$FLOOR" = 1 ] && { [ "${PROFILE_LOAD:-h1}" = h1 ] || [ "${PROFILE_LOAD:-h1}" = connect ]; }; then
        profile_peer floor "${PROC[floor]}" floor ""
    fi
fi

if [ "$SYSCALLS" = 1 ]; then
    echo
    # SYSCALLS_LOAD=upload: the upload scenario's load (HTTPS, POST of UPLOAD_BYTES) instead.
    if [ "${SYSCALLS_LOAD:-h1}" = upload ]; then sc_load="HTTPS upload, POST of $UPLOAD_BYTES bytes"
    else sc_load="HTTP/1.1 keep-alive"; fi
    echo "System calls per request, $sc_load (strace -c -f on the proxy, all threads, during wrk -t1 -c$CONNS -d${DURATION}s):"
    echo
    declare -A SC
    if [ "${SYSCALLS_LOAD:-h1}" = upload ]; then SC_PROXIES=("${TLS_PROXIES[@]}"); else SC_PROXIES=("${PROXIES[@]}"); fi
    for p in "${SC_PROXIES[@]}"; do
        pid="${PROC[$p]}"
        if [ "${SYSCALLS_LOAD:-h1}" = upload ]; then
            load=(-s "$ROOT/bench/gateway/upload.lua" "https://localhost:${HTTPS[$p]}/")
        else
            load=("http://${HTTP[$p]}/")
        fi
        strace -c -f -q -p "$pid" -o "$TMP/strace-$p.txt" &
        ST=$!
        sleep 1
        out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" "${load[@]}" 2>&1)
        kill -INT "$ST"; wait "$ST" 2>/dev/null || true
        n=$(awk '/requests in/{print $1}' <<<"$out")
        # strace -c rows: % time, seconds, usecs/call, calls, [errors], syscall
        SC[$p]=$(awk -v n="$n" '/^ *[0-9.]+ +[0-9.]+ +[0-9]+ +[0-9]+/ {
                    name=$NF; calls=$4; errs=(NF==6)?$5:0
                    if (name=="total") { total=calls; next }
                    if (calls/n >= 0.01) { row[name]=sprintf("%s %.2f", name, calls/n); if (errs/n >= 0.01) row[name]=row[name] sprintf(" (%.2f failed)", errs/n) } }
                 END { printf "%.2f|", total/n; for (k in row) printf "%s; ", row[k] }' "$TMP/strace-$p.txt")
        echo "  $p: $n requests; ${SC[$p]}" >&2
        cp "$TMP/strace-$p.txt" "${SYSCALLS_OUT:-$ROOT/bench/gateway/profile}/strace-$p.txt" 2>/dev/null || true
    done
    echo "| proxy | syscalls/request | by name (≥ 0.01 per request) |"
    echo "|---|---:|---|"
    for p in "${SC_PROXIES[@]}"; do echo "| $p | ${SC[$p]%%|*} | ${SC[$p]#*|} |"; done
fi

if [ "$IDLE" -gt 0 ]; then
    echo
    echo "Memory per idle keep-alive connection ($IDLE plain-HTTP connections per proxy, then $IDLE HTTPS ones beside them, then $IDLE HTTP/2 ones; one request each, then idle; RSS growth ÷ $IDLE):"
    echo
    rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
    declare -A IDLE_KIB
    for p in "${TLS_PROXIES[@]}"; do
        pid="${PROC[$p]}"
        holders=()
        holder_fds=()
        sleep 1
        before=$(rss_kib "$pid")
        for proto in http https h2; do
            case $proto in
                http) target=(${HTTP[$p]%:*} ${HTTP[$p]##*:}) ;;
                https) target=(127.0.0.1 ${HTTPS[$p]} --tls localhost) ;;
                h2) target=(127.0.0.1 ${HTTPS[$p]} --tls localhost --h2) ;;
            esac
            rm -f "$TMP/hold-in-$proto"; mkfifo "$TMP/hold-in-$proto"
            taskset -c 1 python3 "$ROOT/bench/gateway/idle_connections.py" "${target[0]}" "${target[1]}" "$IDLE" "${target[@]:2}" \
                <"$TMP/hold-in-$proto" >"$TMP/hold-out-$proto" 2>&1 &
            holders+=($!)
            # Holds the helper's stdin open: the HTTP connections stay open while the HTTPS ones
            # are measured (memory they freed would otherwise be reused and hide the growth).
            exec {fd}>"$TMP/hold-in-$proto"
            holder_fds+=("$fd")
            for _ in $(seq 1 600); do grep -q '^ready' "$TMP/hold-out-$proto" && break; kill -0 "${holders[-1]}" 2>/dev/null || break; sleep 0.1; done
            sleep 1
            after=$(rss_kib "$pid")
            line=$(head -1 "$TMP/hold-out-$proto")
            if [ "$line" = "ready $IDLE" ]; then
                IDLE_KIB[$p-$proto]=$(awk -v a="$after" -v b="$before" -v n="$IDLE" 'BEGIN { printf "%.1f", (a - b) / n }')
                echo "  $p $proto: RSS $before → $after KiB" >&2
            else
                echo "  $p $proto: the connections were not all served ($line)" >&2
                IDLE_KIB[$p-$proto]="—"
            fi
            before=$after
        done
        for fd in "${holder_fds[@]}"; do exec {fd}>&-; done
        for h in "${holders[@]}"; do wait "$h" || true; done
    done
    echo "| proxy | plain HTTP, KiB per idle connection | HTTPS (TLS 1.3), KiB per idle connection | HTTP/2 (TLS 1.3), KiB per idle connection |"
    echo "|---|---:|---:|---:|"
    for p in "${TLS_PROXIES[@]}"; do echo "| $p | ${IDLE_KIB[$p-http]} | ${IDLE_KIB[$p-https]} | ${IDLE_KIB[$p-h2]} |"; done
fi

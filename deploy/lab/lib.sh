# shellcheck shell=bash disable=SC2034 # constants are used by the scripts sourcing this file
# Shared definitions for the drawbridge network-namespace lab: topology tables and small helpers.
# Sourced by deploy/lab/up.sh, deploy/lab/down.sh and tests/e2e/lab.sh; defines nothing that runs
# on its own.
#
#   client 192.0.2.10 ─┐
#                      ├─ br0 192.0.2.1 (namespace lab-br, the lab "router")
#   node-a 192.0.2.11 ─┤        node-a ── pods 198.18.1.0/24 (veth per pod, /32 routes)
#   node-b 192.0.2.12 ─┘        node-b ── pods 198.18.2.0/24
#
# Only the lab ranges are used: 192.0.2.0/24 (lab LAN), 198.18.0.0/15 (pods),
# 198.51.100.0/24 (ClusterIPs), 203.0.113.0/24 (external IPs).

LAB_DIR=${LAB_DIR:-/run/drawbridge-lab}
# Marker proving a directory is a lab directory before down.sh removes it.
LAB_MARKER=.drawbridge-lab

LAB_ROUTER_NS=lab-br
LAB_ROUTER_IP=192.0.2.1
LAB_PREFIX_LEN=24
CLIENT_NS=client
CLIENT_IP=192.0.2.10
# Static route on the client to the external-IP range (ARP announcement comes later).
CLIENT_EXTERNAL_ROUTE="203.0.113.0/24 via 192.0.2.11"

# node  lab-address  pod-subnet  gateway-for-its-pods
NODES="node-a 192.0.2.11 198.18.1.0/24 198.18.1.1
node-b 192.0.2.12 198.18.2.0/24 198.18.2.1"

# pod  node  address  role (web/api run the echo server, gw runs ingress-gateway)
# pod-web-3 exists from the start but is not in the initial EndpointSlice; the e2e test scales to it.
PODS="pod-web-1 node-a 198.18.1.11 web
pod-web-3 node-a 198.18.1.12 web
pod-gw-1 node-a 198.18.1.21 gw
pod-web-2 node-b 198.18.2.11 web
pod-api-1 node-b 198.18.2.31 api
pod-gw-2 node-b 198.18.2.21 gw"

ECHO_PORT=8080
WEB_CLUSTER_IP=198.51.100.10
WEB_NODE_PORT=30080
GATEWAY_LB_IP=203.0.113.20

# Packages the lab and its tests use, as "command package" pairs (installed only if missing).
LAB_TOOLS="nft nftables
iptables-legacy-restore iptables
conntrack conntrack
python3 python3
ip iproute2
cmake cmake
curl curl
openssl openssl
jq jq
sysctl procps
pgrep procps
setsid util-linux
base64 coreutils
cc build-essential
pkg-config pkg-config"

log() { printf '[lab] %s\n' "$*" >&2; }
die() { printf '[lab] error: %s\n' "$*" >&2; exit 1; }

# Every namespace the lab creates, pods first (they hang off nodes), the router last.
lab_namespaces() {
    local pod _rest
    while read -r pod _rest; do echo "$pod"; done <<<"$PODS"
    echo "$CLIENT_NS"
    local node
    while read -r node _rest; do echo "$node"; done <<<"$NODES"
    echo "$LAB_ROUTER_NS"
}

node_names() { local n _r; while read -r n _r; do echo "$n"; done <<<"$NODES"; }

ns_exists() { ip netns list | awk '{print $1}' | grep -qx -- "$1"; }

# Installs (apt) the packages behind any missing LAB_TOOLS command; does nothing when all exist.
ensure_packages() {
    local missing=() cmd pkg
    while read -r cmd pkg; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done <<<"$LAB_TOOLS"
    if ((${#missing[@]})); then
        mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
        log "installing: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# Prints the first external IP in status.loadBalancer.ingress of a Service state file, or nothing.
# python3+yaml when available; otherwise the first `ip:` line after `ingress:`.
state_lb_ip() {
    local file=$1
    [[ -s $file ]] || return 0
    if python3 -c 'import yaml' >/dev/null 2>&1; then
        python3 - "$file" <<'PY' 2>/dev/null && return 0
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1])) or {}
for entry in ((doc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
    if entry.get("ip"):
        print(entry["ip"]); break
PY
    fi
    awk '/^[[:space:]]*ingress:/ {seen=1; next}
         seen && /ip:/ {sub(/.*ip:[[:space:]]*/, ""); gsub(/["'"'"',}[:space:]]/, ""); print; exit}' "$file"
}

# Waits up to $2 seconds (default 30) for state file $1 to carry an external IP; prints it.
wait_lb_ip() {
    local file=$1 timeout=${2:-30} ip deadline=$((SECONDS + ${2:-30}))
    while ((SECONDS < deadline)); do
        ip=$(state_lb_ip "$file")
        if [[ -n $ip ]]; then echo "$ip"; return 0; fi
        sleep 0.2
    done
    log "no status.loadBalancer.ingress ip in $file after ${timeout}s"
    return 1
}

# curl from inside namespace $1; prints the body followed by a last line holding the HTTP status.
# Never fails: a transport error prints an empty body and status 000.
ns_curl() {
    local ns=$1; shift
    ip netns exec "$ns" curl -sS --max-time 2 --connect-timeout 1 -w '\n%{http_code}' "$@" 2>/dev/null \
        || true
}

# Runs ns_curl until the status is $2 (e.g. 200), at most $3 tries 0.5 s apart; prints the last answer.
ns_curl_until() {
    local ns=$1 want=$2 tries=$3 out i; shift 3
    for ((i = 0; i < tries; i++)); do
        out=$(ns_curl "$ns" "$@")
        [[ ${out##*$'\n'} == "$want" ]] && break
        sleep 0.5
    done
    printf '%s\n' "$out"
}

# Splits an ns_curl answer: answer_status prints the status, answer_body the body.
answer_status() { printf '%s' "${1##*$'\n'}"; }
answer_body() { [[ $1 == *$'\n'* ]] && printf '%s' "${1%$'\n'*}"; }

# The `pod` field of an echo answer (empty when the body is not echo JSON).
answer_pod() { answer_body "$1" | jq -r '.pod // empty' 2>/dev/null || true; }

# A namespace with its loopback up.
add_namespace() {
    ip netns add "$1"
    ip -n "$1" link set lo up
}

# Attaches pod namespace $1 to node namespace $2: address $3/32 on the pod's eth0, gateway $4/32 on
# the node's end (veth $5), /32 routes both ways and the pod's default route via the node.
attach_pod() {
    local pod=$1 node=$2 addr=$3 gw=$4 veth=$5
    ip -n "$node" link add "$veth" type veth peer name eth0 netns "$pod"
    ip -n "$node" addr add "$gw/32" dev "$veth"
    ip -n "$node" link set "$veth" up
    ip -n "$node" route add "$addr/32" dev "$veth"
    ip -n "$pod" addr add "$addr/32" dev eth0
    ip -n "$pod" link set eth0 up
    ip -n "$pod" route add "$gw" dev eth0
    ip -n "$pod" route add default via "$gw"
}

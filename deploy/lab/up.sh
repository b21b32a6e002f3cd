#!/usr/bin/env bash
# Builds the drawbridge network-namespace lab on this machine and shows that traffic flows.
#
#   sudo deploy/lab/up.sh            # LAB_DIR=/run/drawbridge-lab by default
#
# Steps: install missing tools (apt) -> build release binaries -> namespaces, bridge, veths,
# routes -> lab CA + TLS Secret + manifests -> start echo pods, lb-controller, node-programmer
# (one per node), ingress-gateway (two pods) -> wait for external IPs -> curl every path from
# the client. Exits non-zero if any path fails; the lab stays up for inspection either way
# (deploy/lab/down.sh removes it). Run again to rebuild from scratch: a previous lab is torn
# down first.
#
# Environment:
#   LAB_DIR        runtime state (pids, logs, manifests, state, tls); default /run/drawbridge-lab
#   LAB_SKIP_BUILD=1  use the binaries already built (BIN_DIR, default <cargo target>/release)
#   LAB_ECHO_ONLY=1   topology and echo pods only: no drawbridge components, topology checks only
#   LAB_WAIT       seconds to wait for external IPs (default 30)
set -euo pipefail
HERE=$(dirname "$(readlink -f "$0")")
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"
[[ $EUID -eq 0 ]] || die "run as root"
[[ -d $HOME/.cargo/bin ]] && PATH=$HOME/.cargo/bin:$PATH
LAB_ECHO_ONLY=${LAB_ECHO_ONLY:-0}
LAB_WAIT=${LAB_WAIT:-30}

# --- preparation -------------------------------------------------------------------------------

previous_lab_exists() {
    local ns
    [[ -f $LAB_DIR/$LAB_MARKER ]] && return 0
    for ns in $(lab_namespaces); do ns_exists "$ns" && return 0; done
    return 1
}

prepare_lab_dir() {
    if [[ -d $LAB_DIR && -n $(ls -A "$LAB_DIR") && ! -f $LAB_DIR/$LAB_MARKER ]]; then
        die "$LAB_DIR exists, is not empty and was not created by up.sh; choose another LAB_DIR"
    fi
    mkdir -p "$LAB_DIR"
    touch "$LAB_DIR/$LAB_MARKER"
    mkdir -p "$LAB_DIR"/{pids,logs,manifests,state,tls,tmp}
    # down.sh uses `node-programmer --cleanup` from here when it exists.
    echo "$BIN_DIR" >"$LAB_DIR/bin-dir"
}

build() {
    local packages=(-p drawbridge-echo)
    ((LAB_ECHO_ONLY)) || packages+=(-p lb-controller -p node-programmer -p ingress-gateway)
    if [[ -z ${BIN_DIR:-} ]]; then
        BIN_DIR="$(cd "$REPO" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/release"
    fi
    if [[ ${LAB_SKIP_BUILD:-0} != 1 ]]; then
        log "building ${packages[*]} (release)"
        (cd "$REPO" && cargo build --release "${packages[@]}")
    fi
    local bin
    for bin in drawbridge-echo lb-controller node-programmer ingress-gateway; do
        ((LAB_ECHO_ONLY)) && [[ $bin != drawbridge-echo ]] && continue
        [[ -x $BIN_DIR/$bin ]] || die "missing binary $BIN_DIR/$bin"
    done
}

# --- topology ----------------------------------------------------------------------------------

ns_sysctl() { ip netns exec "$1" sysctl -qw "$2"; }

create_router() {
    add_namespace "$LAB_ROUTER_NS"
    ip -n "$LAB_ROUTER_NS" link add br0 type bridge
    ip -n "$LAB_ROUTER_NS" addr add "$LAB_ROUTER_IP/$LAB_PREFIX_LEN" dev br0
    ip -n "$LAB_ROUTER_NS" link set br0 up
}

# Connects namespace $1 to br0 with address $2: eth0 in $1, v-$1 in the router namespace.
attach_to_lan() {
    local ns=$1 addr=$2
    ip -n "$LAB_ROUTER_NS" link add "v-$ns" type veth peer name eth0 netns "$ns"
    ip -n "$LAB_ROUTER_NS" link set "v-$ns" master br0 up
    ip -n "$ns" addr add "$addr/$LAB_PREFIX_LEN" dev eth0
    ip -n "$ns" link set eth0 up
}

create_client() {
    add_namespace "$CLIENT_NS"
    attach_to_lan "$CLIENT_NS" "$CLIENT_IP"
    # shellcheck disable=SC2086 # the route is a word list on purpose
    ip -n "$CLIENT_NS" route add $CLIENT_EXTERNAL_ROUTE
}

create_nodes() {
    local node addr _subnet _gw other oaddr osubnet _ogw
    while read -r node addr _subnet _gw; do
        add_namespace "$node"
        # Before any link exists: interfaces copy `default` at creation, and a node that routes
        # a packet back out of its incoming interface must not send ICMP redirects (lab-notes.md).
        ns_sysctl "$node" net.ipv4.conf.all.send_redirects=0
        ns_sysctl "$node" net.ipv4.conf.default.send_redirects=0
        ns_sysctl "$node" net.ipv4.conf.all.rp_filter=0
        ns_sysctl "$node" net.ipv4.conf.default.rp_filter=0
        ns_sysctl "$node" net.ipv4.ip_forward=1
        attach_to_lan "$node" "$addr"
        ip -n "$node" route add default via "$LAB_ROUTER_IP"
        while read -r other oaddr osubnet _ogw; do
            [[ $other == "$node" ]] && continue
            ip -n "$node" route add "$osubnet" via "$oaddr"
        done <<<"$NODES"
    done <<<"$NODES"
}

node_pod_gateway() { awk -v n="$1" '$1 == n {print $4}' <<<"$NODES"; }

# Pod $1 on node $2 with address $3: eth0 in the pod, p-<pod> on the node, /32 routes both ways.
create_pod() {
    local pod=$1 node=$2 addr=$3
    add_namespace "$pod"
    attach_pod "$pod" "$node" "$addr" "$(node_pod_gateway "$node")" "p-${pod#pod-}"
}

create_topology() {
    log "creating namespaces, bridge, veths and routes"
    create_router
    create_client
    create_nodes
    local pod node addr _role
    while read -r pod node addr _role; do create_pod "$pod" "$node" "$addr"; done <<<"$PODS"
}

# --- TLS and manifests -------------------------------------------------------------------------

create_tls() {
    local dir=$LAB_DIR/tls
    log "creating lab CA and certificate for app.example.test"
    openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj "/CN=drawbridge lab CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=app.example.test" \
        -keyout "$dir/app.key" -out "$dir/app.csr" 2>/dev/null
    printf '%s\n' "subjectAltName=DNS:app.example.test" "basicConstraints=CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >"$dir/app.ext"
    openssl x509 -req -days 7 -in "$dir/app.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -CAcreateserial -extfile "$dir/app.ext" -out "$dir/app.crt" 2>/dev/null
}

write_manifests() {
    cp "$REPO"/deploy/examples/*.yaml "$LAB_DIR/manifests/"
    cat >"$LAB_DIR/manifests/app-tls.yaml" <<YAML
# Generated by deploy/lab/up.sh: certificate for app.example.test signed by the lab CA ($LAB_DIR/tls/ca.crt).
apiVersion: v1
kind: Secret
metadata:
  name: app-tls
  namespace: default
type: kubernetes.io/tls
data:
  tls.crt: $(base64 -w0 "$LAB_DIR/tls/app.crt")
  tls.key: $(base64 -w0 "$LAB_DIR/tls/app.key")
YAML
}

# --- processes ---------------------------------------------------------------------------------

# Starts "$@" as process $1 in namespace $2, in its own session, logging to logs/$1.log.
start_process() {
    local name=$1 ns=$2; shift 2
    RUST_LOG=info ip netns exec "$ns" setsid "$@" >"$LAB_DIR/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$LAB_DIR/pids/$name.pid"
}

start_processes() {
    local pod _node _addr role node
    log "starting processes (logs in $LAB_DIR/logs)"
    while read -r pod _node _addr role; do
        [[ $role == web || $role == api ]] || continue
        start_process "echo-$pod" "$pod" "$BIN_DIR/drawbridge-echo" --listen "0.0.0.0:$ECHO_PORT" --pod-name "$pod"
    done <<<"$PODS"
    ((LAB_ECHO_ONLY)) && return 0
    local common=(--manifests "$LAB_DIR/manifests" --state-dir "$LAB_DIR/state")
    start_process lb-controller node-a "$BIN_DIR/lb-controller" "${common[@]}"
    for node in $(node_names); do
        start_process "node-programmer-$node" "$node" "$BIN_DIR/node-programmer" --node-name "$node" "${common[@]}"
    done
    while read -r pod _node _addr role; do
        [[ $role == gw ]] || continue
        start_process "ingress-gateway-$pod" "$pod" "$BIN_DIR/ingress-gateway" "${common[@]}" \
            --http-addr 0.0.0.0:80 --https-addr 0.0.0.0:443
    done <<<"$PODS"
}

# Fails (showing the log tail) if a recorded process has already exited.
check_processes_alive() {
    local f name failed=0
    sleep 1
    for f in "$LAB_DIR"/pids/*.pid; do
        name=$(basename "$f" .pid)
        if ! kill -0 "$(<"$f")" 2>/dev/null; then
            log "process $name exited early; last lines of $LAB_DIR/logs/$name.log:"
            tail -n 20 "$LAB_DIR/logs/$name.log" | sed 's/^/    /' >&2
            failed=1
        fi
    done
    return "$failed"
}

# --- smoke checks ------------------------------------------------------------------------------

FAILED=0
report() { # report OK|FAIL description
    printf '%-4s %s\n' "$1" "$2"
    [[ $1 == OK ]] || FAILED=1
}

# One path: curl (retried until 200) from namespace $2 and report which pod answered.
check_path() {
    local what=$1 ns=$2 answer status pod; shift 2
    answer=$(ns_curl_until "$ns" 200 10 "$@")
    status=$(answer_status "$answer")
    pod=$(answer_pod "$answer")
    if [[ $status == 200 && -n $pod ]]; then
        report OK "$what -> $pod"
    else
        report FAIL "$what -> HTTP $status $(answer_body "$answer" | head -c 200)"
    fi
}

# True when a TCP connection from namespace $1 to $2:$3 is answered (accepted or refused).
tcp_answers() {
    local rc=0
    ip netns exec "$1" curl -s -o /dev/null --connect-timeout 1 --max-time 2 "http://$2:$3/" || rc=$?
    [[ $rc == 0 || $rc == 7 ]]
}

topology_checks() {
    local node addr _s _g
    while read -r node addr _s _g; do
        if tcp_answers "$CLIENT_NS" "$addr" 9; then report OK "client -> $node $addr"; else report FAIL "client -> $node $addr"; fi
    done <<<"$NODES"
    check_path "pod-web-2 -> pod-web-1 (across nodes)" pod-web-2 "http://198.18.1.11:$ECHO_PORT/"
    check_path "pod-web-1 -> pod-api-1 (across nodes)" pod-web-1 "http://198.18.2.31:$ECHO_PORT/"
    check_path "pod-web-1 -> pod-web-3 (same node)" pod-web-1 "http://198.18.1.12:$ECHO_PORT/"
    check_path "node-b -> pod-web-3 (other node's pod)" node-b "http://198.18.1.12:$ECHO_PORT/"
    check_path "pod-gw-2 -> pod-web-2" pod-gw-2 "http://198.18.2.11:$ECHO_PORT/"
}

drawbridge_checks() {
    local web_ip gw_ip i answer pods=()
    web_ip=$(wait_lb_ip "$LAB_DIR/state/services/default/web.yaml" "$LAB_WAIT") || { report FAIL "default/web got no external IP"; return; }
    report OK "default/web external IP $web_ip"
    gw_ip=$(wait_lb_ip "$LAB_DIR/state/services/drawbridge-system/ingress-gateway.yaml" "$LAB_WAIT") ||
        { report FAIL "drawbridge-system/ingress-gateway got no external IP"; return; }
    report OK "drawbridge-system/ingress-gateway external IP $gw_ip"
    WEB_IP=$web_ip GW_IP=$gw_ip

    ns_curl_until "$CLIENT_NS" 200 10 "http://$web_ip/" >/dev/null
    for ((i = 0; i < 6; i++)); do
        answer=$(ns_curl "$CLIENT_NS" "http://$web_ip/")
        pods+=("$(answer_status "$answer"):$(answer_pod "$answer")")
    done
    if printf '%s\n' "${pods[@]}" | grep -q '^200:pod-web-'; then
        report OK "client curl http://$web_ip/ x6 -> ${pods[*]}"
    else
        report FAIL "client curl http://$web_ip/ x6 -> ${pods[*]}"
    fi
    check_path "client curl https://app.example.test/ (gateway $gw_ip, lab CA)" "$CLIENT_NS" \
        --resolve "app.example.test:443:$gw_ip" --cacert "$LAB_DIR/tls/ca.crt" https://app.example.test/
    check_path "client curl http://api.example.test/ (gateway $gw_ip)" "$CLIENT_NS" \
        --resolve "api.example.test:80:$gw_ip" http://api.example.test/
    check_path "client curl http://192.0.2.12:$WEB_NODE_PORT/ (NodePort)" "$CLIENT_NS" "http://192.0.2.12:$WEB_NODE_PORT/"
    check_path "pod-api-1 curl http://$WEB_CLUSTER_IP/ (ClusterIP)" pod-api-1 "http://$WEB_CLUSTER_IP/"
}

usage_notes() {
    cat <<TXT

The lab is up. LAB_DIR=$LAB_DIR
  namespaces:  $(lab_namespaces | tr '\n' ' ')
  logs:        $LAB_DIR/logs/*.log      pids: $LAB_DIR/pids/
  manifests:   $LAB_DIR/manifests/ (edit live; components watch it)   state: $LAB_DIR/state/
  lab CA:      $LAB_DIR/tls/ca.crt
Try:
  ip netns exec client curl -s http://${WEB_IP:-<web external IP>}/ | jq .
  ip netns exec client curl -s --resolve app.example.test:443:${GW_IP:-$GATEWAY_LB_IP} --cacert $LAB_DIR/tls/ca.crt https://app.example.test/ | jq .
  ip netns exec client curl -s --resolve api.example.test:80:${GW_IP:-$GATEWAY_LB_IP} http://api.example.test/ | jq .
  ip netns exec client curl -s http://192.0.2.11:$WEB_NODE_PORT/ | jq .
  ip netns exec pod-api-1 curl -s http://$WEB_CLUSTER_IP/ | jq .
  ip netns exec node-a nft list table ip drawbridge
Tear down:
  LAB_DIR=$LAB_DIR $HERE/down.sh
TXT
}

# --- main --------------------------------------------------------------------------------------

ensure_packages
if previous_lab_exists; then
    log "a previous lab exists; tearing it down first"
    "$HERE/down.sh"
fi
build
prepare_lab_dir
create_topology
create_tls
write_manifests
start_processes
check_processes_alive || FAILED=1
if ((LAB_ECHO_ONLY)); then topology_checks; else drawbridge_checks; fi
usage_notes
if ((FAILED)); then
    log "some paths FAILED (see above and $LAB_DIR/logs)"
    exit 1
fi

#!/usr/bin/env bash
# drawbridge in Kubernetes mode, end to end, against the API double over real HTTP (root).
#
#   k8s-client 192.0.2.10 ──veth── k8s-node-a 192.0.2.11 ── pods (veth, /32 routes via 198.18.1.1):
#     api-double (0.0.0.0:6440 test driver,       k8s-pod-web-1 198.18.1.11  k8s-pod-web-3 198.18.1.12
#       one labelled listener per component)      k8s-pod-web-2 198.18.2.11  k8s-pod-api-1 198.18.2.31
#     lb-controller x2 (Lease), node-programmer    k8s-pod-gw-1 198.18.1.21 / k8s-pod-gw-2 198.18.2.21
#                                                   (ingress-gateway; API at 198.18.1.1:6445/6446)
#
# Every component runs its real release binary with a kubeconfig of its own listener, so the double
# records each API call with the component's name: they end up in target/k8s-mode/api-calls.jsonl
# ({"component","verb","group","resource","subresource","namespace","name"}), which
# tests/deploy/rbac_check.py checks against the rendered RBAC when both exist.
#
# Prints `ok - ...` / `not ok - ...` per check and `N passed, M failed`; exits 1 on any failure.
# Everything (namespaces, processes) is removed on exit, failure or not. K8S_MODE_KEEP=1 keeps the
# logs only (target/k8s-mode/logs). K8S_MODE_SKIP_BUILD=1 uses the binaries already built.
set -euo pipefail
HERE=$(dirname "$(readlink -f "$0")")
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=../../deploy/lab/lib.sh
source "$REPO/deploy/lab/lib.sh"
[[ $EUID -eq 0 ]] || die "run as root (network namespaces)"
[[ -d $HOME/.cargo/bin ]] && PATH=$HOME/.cargo/bin:$PATH

TARGET=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
BIN=$TARGET/release
OUT=$TARGET/k8s-mode
NODE=k8s-node-a
CLIENT=k8s-client
NODE_IP=192.0.2.11
CLIENT_IP=192.0.2.10
POD_GW=198.18.1.1 # the node's address on every pod veth
# pod  address  role
K8S_PODS="k8s-pod-web-1 198.18.1.11 web
k8s-pod-web-2 198.18.2.11 web
k8s-pod-web-3 198.18.1.12 web
k8s-pod-api-1 198.18.2.31 api
k8s-pod-gw-1 198.18.1.21 gw
k8s-pod-gw-2 198.18.2.21 gw"
API_PORT=6440
API=http://127.0.0.1:$API_PORT # as seen from the node namespace
# listener label = component (+ replica suffix): port, address the component dials
LISTENERS="lb-controller-1 6441 127.0.0.1
lb-controller-2 6442 127.0.0.1
node-programmer 6443 127.0.0.1
ingress-gateway-1 6445 $POD_GW
ingress-gateway-2 6446 $POD_GW"

PIDS=()
PASSED=0
FAILED=0
ok() { echo "ok - $*"; PASSED=$((PASSED + 1)); }
not_ok() { echo "not ok - $*"; FAILED=$((FAILED + 1)); }
check() { # check DESCRIPTION COMMAND...
    local what=$1; shift
    if "$@"; then ok "$what"; else not_ok "$what"; fi
}

namespaces() {
    local pod _r
    while read -r pod _r; do echo "$pod"; done <<<"$K8S_PODS"
    echo "$CLIENT"; echo "$NODE"
}

teardown() {
    local pid ns i reversed=()
    # Components first, the API double (started first) last: clean shutdowns can still reach it.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do reversed+=("${PIDS[i]}"); done
    for pid in "${reversed[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${reversed[@]}"; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for ns in $(namespaces); do ns_exists "$ns" && ip netns delete "$ns"; done
    [[ ${K8S_MODE_KEEP:-0} == 1 ]] || rm -rf "$OUT/tls" "$OUT/objects" "$OUT/kubeconfig"
}
trap teardown EXIT

# --- set-up ------------------------------------------------------------------------------------

ensure_packages
if [[ ${K8S_MODE_SKIP_BUILD:-0} != 1 ]]; then
    (cd "$REPO" && cargo build --release -p lb-controller -p node-programmer -p ingress-gateway \
        -p drawbridge-echo -p drawbridge-api-double)
fi
for b in api-double lb-controller node-programmer ingress-gateway drawbridge-echo; do
    [[ -x $BIN/$b ]] || die "missing $BIN/$b"
done
for ns in $(namespaces); do ns_exists "$ns" && ip netns delete "$ns"; done
rm -rf "$OUT" && mkdir -p "$OUT"/{logs,tls,objects,kubeconfig}

nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

ip netns add "$NODE"
nsx "$NODE" ip link set lo up
for s in net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.default.send_redirects=0 \
    net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 net.ipv4.ip_forward=1; do
    nsx "$NODE" sysctl -qw "$s"
done
ip netns add "$CLIENT"
nsx "$CLIENT" ip link set lo up
ip -n "$NODE" link add eth0 type veth peer name eth0 netns "$CLIENT"
ip -n "$NODE" addr add "$NODE_IP/24" dev eth0 && ip -n "$NODE" link set eth0 up
ip -n "$CLIENT" addr add "$CLIENT_IP/24" dev eth0 && ip -n "$CLIENT" link set eth0 up
ip -n "$CLIENT" route add 203.0.113.0/24 via "$NODE_IP"
while read -r pod addr _role; do
    add_namespace "$pod"
    attach_pod "$pod" "$NODE" "$addr" "$POD_GW" "p-${pod#k8s-pod-}"
done <<<"$K8S_PODS"

# TLS Secret for app.example.test, signed by a throw-away CA.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=drawbridge k8s-mode CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
    -keyout "$OUT/tls/ca.key" -out "$OUT/tls/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=app.example.test" \
    -keyout "$OUT/tls/app.key" -out "$OUT/tls/app.csr" 2>/dev/null
printf '%s\n' "subjectAltName=DNS:app.example.test" "extendedKeyUsage=serverAuth" >"$OUT/tls/app.ext"
openssl x509 -req -days 1 -in "$OUT/tls/app.csr" -CA "$OUT/tls/ca.crt" -CAkey "$OUT/tls/ca.key" \
    -CAcreateserial -extfile "$OUT/tls/app.ext" -out "$OUT/tls/app.crt" 2>/dev/null
cat >"$OUT/objects/cluster.yaml" <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Namespace
metadata: {name: drawbridge-system}
---
apiVersion: v1
kind: Node
metadata: {name: node-a, labels: {kubernetes.io/hostname: node-a}}
status:
  addresses: [{type: InternalIP, address: $NODE_IP}]
---
apiVersion: v1
kind: Node
metadata: {name: node-b, labels: {kubernetes.io/hostname: node-b}}
status:
  addresses: [{type: InternalIP, address: 192.0.2.12}]
---
apiVersion: v1
kind: Secret
metadata: {name: app-tls, namespace: default}
type: kubernetes.io/tls
data:
  tls.crt: $(base64 -w0 "$OUT/tls/app.crt")
  tls.key: $(base64 -w0 "$OUT/tls/app.key")
YAML
LOADS=("$OUT/objects/cluster.yaml")
# The example L2Announcement needs its CRD, which this test does not load (L2 is tested in
# lb-controller/tests/announce_api.rs and node-programmer/tests/l2.rs).
for f in "$REPO"/deploy/examples/*.yaml; do [[ $f == */l2-announcement.yaml ]] || LOADS+=("$f"); done

# --- processes ---------------------------------------------------------------------------------

start() { # start NAME NAMESPACE [ENV=VALUE...] -- COMMAND...
    local name=$1 ns=$2 envs=(); shift 2
    while [[ $1 != -- ]]; do envs+=("$1"); shift; done; shift
    ip netns exec "$ns" env RUST_LOG="${RUST_LOG:-info}" "${envs[@]}" "$@" >"$OUT/logs/$name.log" 2>&1 </dev/null &
    PIDS+=($!)
    eval "PID_${name//-/_}=$!"
}

listen_args=()
while read -r label port _dial; do
    listen_args+=(--listen-as "$label=0.0.0.0:$port")
    cat >"$OUT/kubeconfig/$label" <<YAML
apiVersion: v1
kind: Config
clusters: [{name: api-double, cluster: {server: "http://$_dial:$port"}}]
users: [{name: api-double, user: {}}]
contexts: [{name: api-double, context: {cluster: api-double, user: api-double, namespace: default}}]
current-context: api-double
YAML
done <<<"$LISTENERS"
start api-double "$NODE" -- "$BIN/api-double" --listen "0.0.0.0:$API_PORT" "${listen_args[@]}" --load "${LOADS[@]}"

api() { ip netns exec "$NODE" curl -sS --max-time 5 "$@"; }
for _ in $(seq 50); do api "$API/version" >/dev/null 2>&1 && break; sleep 0.1; done
check "api-double serves $API with $(wc -l <<<"$LISTENERS") component listeners" api -f "$API/version" -o /dev/null

while read -r pod _addr role; do
    [[ $role == web || $role == api ]] || continue
    start "echo-$pod" "$pod" -- "$BIN/drawbridge-echo" --listen 0.0.0.0:8080 --pod-name "${pod#k8s-}"
done <<<"$K8S_PODS"

# Optional flags of parallel work (observability): pass them only when the binary has them.
has_flag() { "$BIN/$1" --help 2>/dev/null | grep -q -- "$2"; }
metrics() { if has_flag "$1" --metrics-addr; then echo "--metrics-addr=$2"; fi; }
kc() { echo "KUBECONFIG=$OUT/kubeconfig/$1"; }
for i in 1 2; do
    # shellcheck disable=SC2046
    start "lb-controller-$i" "$NODE" "$(kc "lb-controller-$i")" POD_NAME="lb-controller-$i" POD_NAMESPACE=drawbridge-system \
        -- "$BIN/lb-controller" $(metrics lb-controller "127.0.0.1:1909$i")
done
# shellcheck disable=SC2046
start node-programmer "$NODE" "$(kc node-programmer)" -- "$BIN/node-programmer" --node-name node-a \
    $(metrics node-programmer 127.0.0.1:19100)
for i in 1 2; do
    # shellcheck disable=SC2046
    start "ingress-gateway-$i" "k8s-pod-gw-$i" "$(kc "ingress-gateway-$i")" POD_NAME="ingress-gateway-$i" POD_NAMESPACE=drawbridge-system \
        -- "$BIN/ingress-gateway" --http-addr 0.0.0.0:80 --https-addr 0.0.0.0:443 --threads 1 \
        $(metrics ingress-gateway 127.0.0.1:19110)
done

# --- helpers -----------------------------------------------------------------------------------

# svc_ip NS NAME: first status.loadBalancer.ingress ip, read from the API.
svc_ip() { api "$API/api/v1/namespaces/$1/services/$2" 2>/dev/null | jq -r '.status.loadBalancer.ingress[0].ip // empty' 2>/dev/null || true; }
# until_ TIMEOUT_S COMMAND...: retries every 0.2 s.
until_() {
    local deadline=$((SECONDS + $1)); shift
    while ((SECONDS < deadline)); do "$@" && return 0; sleep 0.2; done
    return 1
}
has_ip() { [[ -n $(svc_ip "$1" "$2") ]]; }
# reaches NS URL POD [curl args...]: an echo answer from POD.
reaches() {
    local ns=$1 url=$2 pod=$3; shift 3
    [[ $(answer_pod "$(ns_curl "$ns" "$@" "$url")") == "$pod" ]]
}
reaches_eventually() { until_ "$1" reaches "${@:2}"; }
# reaches_like NS URL GLOB [curl args...]: the answering pod matches GLOB.
reaches_like() {
    local ns=$1 url=$2 glob=$3; shift 3
    # shellcheck disable=SC2053 # glob match on purpose
    [[ $(answer_pod "$(ns_curl "$ns" "$@" "$url")") == $glob ]]
}
unreachable() { [[ $(answer_status "$(ns_curl "$1" "$2")") == 000 ]]; }
# requests [jq filter]: the double's recorded requests (JSON lines).
requests() { api "$API/_double/requests"; }
count_requests() { requests | jq -s "[.[] | select($1)] | length"; }
open_watches() { api "$API/_double/open-watches" | jq -r .openWatches; }
now_ms() { date +%s%3N; }
put_json() { api -f -X PUT -H 'Content-Type: application/json' --data-binary @- "$API/$1" -o /dev/null; }
post_json() { api -f -X POST -H 'Content-Type: application/json' --data-binary @- "$API/$1" -o /dev/null; }
delete() { api -f -X DELETE "$API/$1" -o /dev/null; }
mk_lb_service() { # NAME CLUSTER_IP NODE_PORT: a LoadBalancer Service + its EndpointSlice (pod-web-3)
    jq -n --arg n "$1" --arg ip "$2" --argjson np "$3" '{apiVersion:"v1",kind:"Service",metadata:{name:$n,namespace:"default"},
      spec:{type:"LoadBalancer",clusterIP:$ip,clusterIPs:[$ip],ipFamilies:["IPv4"],
            ports:[{name:"http",port:80,protocol:"TCP",targetPort:8080,nodePort:$np}],externalTrafficPolicy:"Cluster"}}' |
        post_json api/v1/namespaces/default/services
    jq -n --arg n "$1" '{apiVersion:"discovery.k8s.io/v1",kind:"EndpointSlice",
      metadata:{name:($n+"-1"),namespace:"default",labels:{"kubernetes.io/service-name":$n}},addressType:"IPv4",
      ports:[{name:"http",port:8080,protocol:"TCP"}],
      endpoints:[{addresses:["198.18.1.12"],nodeName:"node-a",conditions:{ready:true,serving:true,terminating:false}}]}' |
        post_json apis/discovery.k8s.io/v1/namespaces/default/endpointslices
}
delete_lb_service() {
    delete "apis/discovery.k8s.io/v1/namespaces/default/endpointslices/$1-1"
    delete "api/v1/namespaces/default/services/$1"
}
nft_has() { nsx "$NODE" nft list map ip drawbridge service-ips 2>/dev/null | grep -qwF "$1"; }
no_nft() { ! nft_has "$1"; }
lease_holder() { api "$API/apis/coordination.k8s.io/v1/namespaces/drawbridge-system/leases/drawbridge-lb-controller" | jq -r '.spec.holderIdentity // empty'; }
status_writers() { # distinct listener labels that wrote Service status
    requests | jq -rs '[.[] | select(.resource=="services" and .subresource=="status" and (.verb=="patch" or .verb=="update")) | .client] | unique | join(",")'
}

# --- checks: initial convergence ---------------------------------------------------------------
# From here on a failing command is a failed check, not the end of the run.
set +e

sleep 1
for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null || { not_ok "a process exited at start (see $OUT/logs)"; }; done

t0=$(now_ms)
if until_ 20 has_ip default web; then
    WEB_IP=$(svc_ip default web)
    ok "lb-controller allocated default/web $WEB_IP (status read from the API, $(($(now_ms) - t0)) ms)"
else
    WEB_IP=; not_ok "default/web got no status.loadBalancer.ingress within 20 s"
fi
GW_IP=$(until_ 10 has_ip drawbridge-system ingress-gateway && svc_ip drawbridge-system ingress-gateway || true)
check "drawbridge-system/ingress-gateway got its requested 203.0.113.20 (got '${GW_IP}')" test "$GW_IP" == 203.0.113.20
LEADER=$(lease_holder)
check "Lease drawbridge-system/drawbridge-lb-controller is held by a replica (${LEADER:-none})" \
    test -n "$LEADER"
check "only the Lease holder wrote Service status (writers: $(status_writers))" test "$(status_writers)" == "$LEADER"

check "client -> http://$WEB_IP/ reaches a web pod through node-programmer's rules" \
    until_ 10 reaches_like "$CLIENT" "http://$WEB_IP/" 'pod-web-*'
both=$(for _ in $(seq 12); do answer_pod "$(ns_curl "$CLIENT" "http://$WEB_IP/")"; echo; done | sort -u | grep -c pod-web || true)
check "both web endpoints answer on $WEB_IP (saw $both distinct pods)" test "$both" -ge 2
check "client -> NodePort $NODE_IP:30080 reaches a web pod" \
    until_ 5 reaches_like "$CLIENT" "http://$NODE_IP:30080/" 'pod-web-*'
check "pod-api-1 -> ClusterIP 198.51.100.10 reaches a web pod" \
    until_ 5 reaches_like k8s-pod-api-1 http://198.51.100.10/ 'pod-web-*'
APP_TLS=(--resolve "app.example.test:443:$GW_IP" --cacert "$OUT/tls/ca.crt")
check "gateway serves https://app.example.test/ (TLS by SNI, verified against the test CA) -> web" \
    until_ 10 reaches_like "$CLIENT" https://app.example.test/ 'pod-web-*' "${APP_TLS[@]}"
check "gateway serves http://api.example.test/ -> pod-api-1" \
    reaches_eventually 10 "$CLIENT" http://api.example.test/ pod-api-1 --resolve "api.example.test:80:$GW_IP"
ingress_ip() { api "$API/apis/networking.k8s.io/v1/namespaces/default/ingresses/demo" | jq -r '.status.loadBalancer.ingress[0].ip // empty'; }
ingress_has_gw_ip() { [[ $(ingress_ip) == "$GW_IP" && -n $GW_IP ]]; }
allocated_event() {
    api "$API/apis/events.k8s.io/v1/namespaces/default/events" |
        jq -e '[.items[] | select(.regarding.name == "web" and .reportingController == "drawbridge.dev/lb-controller"
                and .reportingInstance == "'"$LEADER"'")] | length > 0' >/dev/null
}
check "lb-controller's Event about default/web reached the API (events.k8s.io/v1, instance $LEADER)" until_ 5 allocated_event
until_ 10 ingress_has_gw_ip
check "Ingress default/demo status carries the gateway Service's address ($(ingress_ip))" ingress_has_gw_ip

# --- checks: watch behaviours while everything runs --------------------------------------------

# 1. MODIFIED: the web EndpointSlice now lists pod-web-3 only.
api "$API/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/web-1" |
    jq '.endpoints = [{addresses:["198.18.1.12"],nodeName:"node-a",conditions:{ready:true,serving:true,terminating:false}}]' |
    put_json apis/discovery.k8s.io/v1/namespaces/default/endpointslices/web-1
check "EndpointSlice MODIFIED: $WEB_IP reaches the new endpoint pod-web-3" \
    reaches_eventually 5 "$CLIENT" "http://$WEB_IP/" pod-web-3
only3=$(for _ in $(seq 6); do answer_pod "$(ns_curl "$CLIENT" "http://$WEB_IP/")"; echo; done | grep -v '^$' | sort -u | tr '\n' ' ')
check "EndpointSlice MODIFIED: only pod-web-3 answers now ($only3)" test "$only3" == "pod-web-3 "
check "EndpointSlice MODIFIED: the gateway follows too (https://app.example.test/ -> pod-web-3)" \
    until_ 5 reaches_like "$CLIENT" https://app.example.test/ pod-web-3 "${APP_TLS[@]}"

# 2. ADDED then DELETED: a new LoadBalancer Service gets an address and rules, then loses them.
mk_lb_service extra 198.51.100.30 30090
EXTRA_IP=$(until_ 10 has_ip default extra && svc_ip default extra || true)
check "Service ADDED: default/extra allocated ($EXTRA_IP) and reachable" \
    reaches_eventually 5 "$CLIENT" "http://$EXTRA_IP/" pod-web-3
delete_lb_service extra
check "Service DELETED: $EXTRA_IP leaves nft map service-ips" until_ 5 no_nft "$EXTRA_IP"
check "Service DELETED: $EXTRA_IP no longer answers" until_ 5 unreachable "$CLIENT" "http://$EXTRA_IP/"
check "Service DELETED: the API has no default/extra (no status left behind)" \
    bash -c "! ip netns exec $NODE curl -sf $API/api/v1/namespaces/default/services/extra -o /dev/null"

# 3. Watches end cleanly: components resume from their resourceVersion (no relist).
watches_before=$(open_watches)
lists_before=$(count_requests '.client != null and .verb == "list"')
api -f -X POST "$API/_double/close-watches" -o /dev/null
sleep 0.5
resumed() { (($(open_watches) >= watches_before)); }
check "watches closed ($watches_before open before): every component re-opened its watches" until_ 10 resumed
check "closed watches resumed without a relist (list requests $lists_before -> $(count_requests '.client != null and .verb == "list"'))" \
    test "$(count_requests '.client != null and .verb == "list"')" == "$lists_before"
api "$API/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/web-1" |
    jq '.endpoints = [{addresses:["198.18.1.11"],nodeName:"node-a",conditions:{ready:true,serving:true,terminating:false}}]' |
    put_json apis/discovery.k8s.io/v1/namespaces/default/endpointslices/web-1
check "after resume: a change made afterwards is programmed ($WEB_IP -> pod-web-1)" \
    reaches_eventually 5 "$CLIENT" "http://$WEB_IP/" pod-web-1

# 4. History expired + watches closed: 410 Gone, every component relists, and still converges.
COMPONENT_LABELS="lb-controller-1 lb-controller-2 node-programmer ingress-gateway-1 ingress-gateway-2"
for c in $COMPONENT_LABELS; do
    count_requests ".client == \"$c\" and .verb == \"list\"" >"$OUT/lists-$c"
done
api -f -X POST "$API/_double/expire-history" -o /dev/null
api -f -X POST "$API/_double/close-watches" -o /dev/null
relisted() {
    local c
    for c in $COMPONENT_LABELS; do
        (($(count_requests ".client == \"$c\" and .verb == \"list\"") > $(<"$OUT/lists-$c"))) || return 1
    done
}
check "history expired + watches closed: 410 Gone made every component relist" until_ 30 relisted
mk_lb_service late 198.51.100.31 30091
LATE_IP=$(until_ 10 has_ip default late && svc_ip default late || true)
check "after the relist: new Service default/late allocated ($LATE_IP) and reachable" \
    reaches_eventually 5 "$CLIENT" "http://$LATE_IP/" pod-web-3
api "$API/apis/networking.k8s.io/v1/namespaces/default/ingresses/demo" |
    jq '(.spec.rules[] | select(.host == "api.example.test") | .http.paths) =
        [{path:"/",pathType:"Prefix",backend:{service:{name:"web",port:{number:80}}}}]' |
    put_json apis/networking.k8s.io/v1/namespaces/default/ingresses/demo
check "after the relist: an Ingress edit is served (api.example.test -> web -> pod-web-1)" \
    reaches_eventually 5 "$CLIENT" http://api.example.test/ pod-web-1 --resolve "api.example.test:80:$GW_IP"

# 5. Leader election with the real binaries: kill -9 the holder, the other replica takes over.
if [[ -n $LEADER ]]; then
    pid_var="PID_${LEADER//-/_}"
    { kill -9 "${!pid_var}"; wait "${!pid_var}"; } 2>/dev/null
    killed=$(now_ms)
    mk_lb_service failover 198.51.100.32 30092
    if until_ 15 has_ip default failover; then
        took=$(($(now_ms) - killed))
        ok "leader $LEADER killed (SIGKILL): $(lease_holder) took over and allocated default/failover in ${took} ms"
        echo "# takeover after SIGKILL of the leader: ${took} ms"
        check "takeover within a few seconds (${took} ms <= 8000 ms)" test "$took" -le 8000
    else
        not_ok "no replica allocated default/failover within 15 s of killing leader $LEADER"
    fi
    check "the Lease moved to the surviving replica ($(lease_holder))" bash -c "[[ -n '$(lease_holder)' && '$(lease_holder)' != '$LEADER' ]]"
    check "earlier allocations kept across the failover (web still $WEB_IP)" test "$(svc_ip default web)" == "$WEB_IP"
fi

# --- API calls per component, RBAC -------------------------------------------------------------

requests | jq -c 'select(.client != null and .resource != null)
    | {component: (.client | sub("-[0-9]+$"; "")), verb, group, resource,
       subresource: (.subresource // ""), namespace: (.namespace // "")}
      + (if .name then {name} else {} end)' | sort -u >"$OUT/api-calls.jsonl"
check "recorded $(wc -l <"$OUT/api-calls.jsonl") distinct API calls of 3 components -> $OUT/api-calls.jsonl" \
    test "$(jq -r .component "$OUT/api-calls.jsonl" | sort -u | wc -l)" == 3
echo "# non-resource requests by components (discovery, /version): $(count_requests '.client != null and .resource == null')"
echo "# API calls per component (verb group/resource[/subresource]):"
jq -r '"#   \(.component) \(.verb) \(if .group == "" then "core" else .group end)/\(.resource)\(if .subresource != "" then "/" + .subresource else "" end)"' \
    "$OUT/api-calls.jsonl" | sort -u
if [[ -f $REPO/tests/deploy/rbac_check.py ]] && command -v kubectl >/dev/null && [[ -f $REPO/deploy/kustomization.yaml ]]; then
    if kubectl kustomize "$REPO/deploy" >"$OUT/rendered.yaml" 2>"$OUT/logs/kustomize.log"; then
        if python3 "$REPO/tests/deploy/rbac_check.py" "$OUT/rendered.yaml" "$OUT/api-calls.jsonl" >"$OUT/rbac-check.log" 2>&1; then
            ok "rbac_check.py: every recorded call is granted by the rendered RBAC"
        else
            not_ok "rbac_check.py: $(grep -c '^not ok' "$OUT/rbac-check.log") recorded call(s) not granted (see $OUT/rbac-check.log)"
            grep '^not ok' "$OUT/rbac-check.log" | sed 's/^/#   /' | head -20
        fi
    else
        not_ok "kubectl kustomize deploy/ failed (see $OUT/logs/kustomize.log)"
    fi
else
    echo "# skipped RBAC check: tests/deploy/rbac_check.py, kubectl or deploy/kustomization.yaml missing"
fi

for name in lb-controller-1 lb-controller-2 node-programmer ingress-gateway-1 ingress-gateway-2; do
    n=$(grep -cE 'ERROR|WARN' "$OUT/logs/$name.log" || true)
    echo "# $name: $n warning/error log lines (410 Gone relists log one per watch)"
done
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))

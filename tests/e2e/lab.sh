#!/usr/bin/env bash
# End-to-end test of drawbridge in the network-namespace lab: real namespaces, real packets,
# real curl from the `client` namespace, echo JSON parsed with jq.
#
#   sudo tests/e2e/lab.sh        # LAB_DIR defaults to a fresh temporary directory
#
# Brings the lab up with deploy/lab/up.sh, always tears it down with deploy/lab/down.sh (EXIT
# trap, also on failure, Ctrl-C or SIGTERM), prints `ok - name` / `not ok - name` per check and,
# after teardown, one final line `N passed, M failed`; exits non-zero when M > 0. On failure the
# component logs, manifests and state are copied to $E2E_LOG_DIR/<lab dir name> (default
# /tmp/drawbridge-e2e-logs) first. LAB_SKIP_BUILD=1 is passed through to up.sh.
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
REQUESTED_LAB_DIR=${LAB_DIR:-}
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=../../deploy/lab/lib.sh
source "$REPO/deploy/lab/lib.sh"
[[ $EUID -eq 0 ]] || die "run as root"

export LAB_DIR=${REQUESTED_LAB_DIR:-$(mktemp -d /tmp/drawbridge-e2e.XXXXXX)}
E2E_LOG_DIR=${E2E_LOG_DIR:-/tmp/drawbridge-e2e-logs}
# Budget for live edits (manifest written -> traffic follows), in milliseconds.
LIVE_EDIT_BUDGET_MS=2000
PASSED=0 FAILED=0 COMPLETED=0

teardown() {
    ((COMPLETED)) || not_ok "e2e script ran to completion" "aborted early (see the error above)"
    if ((FAILED)) && [[ -d $LAB_DIR/logs ]]; then
        local keep
        keep=$E2E_LOG_DIR/$(basename "$LAB_DIR")
        mkdir -p "$keep" && cp -r "$LAB_DIR"/logs "$LAB_DIR"/manifests "$LAB_DIR"/state "$keep"/ 2>/dev/null
        log "logs, manifests and state kept in $keep"
    fi
    "$REPO/deploy/lab/down.sh" || log "down.sh failed"
    # up.sh marks the directory only once it gets that far; an empty temporary one is ours.
    [[ -d $LAB_DIR ]] && rmdir "$LAB_DIR" 2>/dev/null
    echo "$PASSED passed, $FAILED failed"
    ((FAILED == 0)) || exit 1
}
trap teardown EXIT
trap 'exit 130' INT TERM

# --- reporting ---------------------------------------------------------------------------------

ok() { echo "ok - $1"; PASSED=$((PASSED + 1)); }
not_ok() { echo "not ok - $1"; shift; [[ $# -gt 0 ]] && printf '#   %s\n' "$@"; FAILED=$((FAILED + 1)); }
# verdict NAME DETAIL COMMAND...: ok when COMMAND succeeds, otherwise not ok with DETAIL.
verdict() { local name=$1 detail=$2; shift 2; if "$@"; then ok "$name"; else not_ok "$name" "$detail"; fi; }
matches() { [[ $1 =~ $2 ]]; }

# --- probes ------------------------------------------------------------------------------------

# expect_answer NAME STATUS POD_REGEX NS CURL_ARGS...: retried until the answer has STATUS and,
# when POD_REGEX is not empty, an echo `pod` matching it (6 tries, at most ~15 s). Leaves the last
# answer in LAST_ANSWER for extra assertions.
LAST_ANSWER=
expect_answer() {
    local name=$1 want_status=$2 want_pod=$3 ns=$4 i status pod; shift 4
    for ((i = 0; i < 6; i++)); do
        LAST_ANSWER=$(ns_curl "$ns" "$@")
        status=$(answer_status "$LAST_ANSWER")
        pod=$(answer_pod "$LAST_ANSWER")
        if [[ $status == "$want_status" && ( -z $want_pod || $pod =~ $want_pod ) ]]; then
            ok "$name"
            return 0
        fi
        sleep 0.5
    done
    not_ok "$name" "curl $* from $ns: HTTP $status pod '${pod}' (wanted $want_status ${want_pod:-any})" \
        "body: $(answer_body "$LAST_ANSWER" | head -c 300)"
    return 1
}

# Pods that answered $1 requests (one new connection each) from namespace $2; one per line.
pods_seen() {
    local count=$1 ns=$2 i; shift 2
    for ((i = 0; i < count; i++)); do answer_pod "$(ns_curl "$ns" "$@")"; echo; done | sed '/^$/d' | sort -u
}

now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }

# expect_within NAME POD NS CURL_ARGS...: polls until POD answers, at most LIVE_EDIT_BUDGET_MS
# after START_MS (set when the edit was written); reports the measured time.
expect_within() {
    local name=$1 want_pod=$2 ns=$3 elapsed pod; shift 3
    while :; do
        pod=$(answer_pod "$(ns_curl "$ns" --max-time 1 "$@")")
        elapsed=$(($(now_ms) - START_MS))
        if [[ $pod == "$want_pod" ]]; then
            ok "$name (${elapsed} ms)"
            return 0
        fi
        if ((elapsed > LIVE_EDIT_BUDGET_MS)); then
            not_ok "$name" "$want_pod not seen within ${LIVE_EDIT_BUDGET_MS} ms (last answer from '${pod}')"
            return 1
        fi
        sleep 0.05
    done
}

# Replaces manifest $1 atomically with stdin (rename within the lab dir) and starts the clock.
replace_manifest() {
    cat >"$LAB_DIR/tmp/$1"
    mv -f "$LAB_DIR/tmp/$1" "$LAB_DIR/manifests/$1"
    START_MS=$(now_ms)
}

# --- the lab -----------------------------------------------------------------------------------

log "LAB_DIR=$LAB_DIR"
verdict "lab up (deploy/lab/up.sh)" "up.sh failed, see its output above" "$REPO/deploy/lab/up.sh"

WEB_IP=$(state_lb_ip "$LAB_DIR/state/services/default/web.yaml")
GW_IP=$(state_lb_ip "$LAB_DIR/state/services/drawbridge-system/ingress-gateway.yaml")
CA=(--cacert "$LAB_DIR/tls/ca.crt")
verdict "default/web external IP ($WEB_IP) is from pool lab" "got '$WEB_IP'" \
    matches "$WEB_IP" '^203\.0\.113\.[0-9]+$'
verdict "ingress-gateway got its requested IP $GATEWAY_LB_IP" "got '$GW_IP'" test "$GW_IP" = "$GATEWAY_LB_IP"
WEB_IP=${WEB_IP:-unassigned.invalid} GW_IP=${GW_IP:-$GATEWAY_LB_IP}

# --- L4: external IP, NodePort, ClusterIP ------------------------------------------------------

expect_answer "external IP http://$WEB_IP/ answered by a web pod" 200 '^pod-web-[12]$' client "http://$WEB_IP/"

seen=$(pods_seen 20 client "http://$WEB_IP/" | tr '\n' ' ')
verdict "20 calls to $WEB_IP reach both pod-web-1 and pod-web-2, nothing else" "seen: '$seen'" \
    test "$seen" = "pod-web-1 pod-web-2 "

for node_ip in 192.0.2.11 192.0.2.12; do
    expect_answer "NodePort http://$node_ip:$WEB_NODE_PORT/ answered by a web pod" 200 '^pod-web-[12]$' \
        client "http://$node_ip:$WEB_NODE_PORT/"
done

expect_answer "ClusterIP http://$WEB_CLUSTER_IP/ from pod-api-1 answered by a web pod" 200 '^pod-web-[12]$' \
    pod-api-1 "http://$WEB_CLUSTER_IP/"

# --- L7: ingress gateway -----------------------------------------------------------------------

if expect_answer "https://app.example.test/ via gateway (verified with lab CA) answered by a web pod" 200 \
    '^pod-web-[12]$' client --resolve "app.example.test:443:$GW_IP" "${CA[@]}" https://app.example.test/; then
    proto=$(answer_body "$LAST_ANSWER" | jq -r '.headers["x-forwarded-proto"] // empty')
    verdict "gateway sets x-forwarded-proto: https" "got '$proto'" test "$proto" = https
else
    not_ok "gateway sets x-forwarded-proto: https" "no HTTPS answer to inspect"
fi

expect_answer "http://api.example.test/ via gateway answered by pod-api-1" 200 '^pod-api-1$' \
    client --resolve "api.example.test:80:$GW_IP" http://api.example.test/

expect_answer "unknown host via gateway -> 404" 404 '' \
    client --resolve "unknown.example.test:80:$GW_IP" http://unknown.example.test/

# --- live edits --------------------------------------------------------------------------------

# (a) Scale default/web to three endpoints: pod-web-3 (node-a) joins the EndpointSlice.
web_scaled() {
    sed '/^---$/,$d' "$REPO/deploy/examples/web.yaml"
    echo '---'
    cat <<'YAML'
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
  - {name: http, port: 8080, protocol: TCP}
endpoints:
  - addresses: [198.18.1.11]
    nodeName: node-a
    conditions: {ready: true, serving: true, terminating: false}
    targetRef: {kind: Pod, namespace: default, name: pod-web-1}
  - addresses: [198.18.2.11]
    nodeName: node-b
    conditions: {ready: true, serving: true, terminating: false}
    targetRef: {kind: Pod, namespace: default, name: pod-web-2}
  - addresses: [198.18.1.12]
    nodeName: node-a
    conditions: {ready: true, serving: true, terminating: false}
    targetRef: {kind: Pod, namespace: default, name: pod-web-3}
YAML
}
replace_manifest web.yaml < <(web_scaled)
expect_within "scale-up: pod-web-3 answers on $WEB_IP within ${LIVE_EDIT_BUDGET_MS} ms" pod-web-3 client "http://$WEB_IP/"

# (b) Add an Exact path /only-api under app.example.test routed to api:80.
replace_manifest ingress.yaml <<'YAML'
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: drawbridge
spec:
  controller: drawbridge.dev/ingress-gateway
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: demo
  namespace: default
spec:
  ingressClassName: drawbridge
  tls:
    - hosts: [app.example.test]
      secretName: app-tls
  rules:
    - host: app.example.test
      http:
        paths:
          - path: /only-api
            pathType: Exact
            backend: {service: {name: api, port: {number: 80}}}
          - path: /
            pathType: Prefix
            backend: {service: {name: web, port: {number: 80}}}
    - host: api.example.test
      http:
        paths:
          - path: /
            pathType: Prefix
            backend: {service: {name: api, port: {name: http}}}
YAML
expect_within "ingress edit: https://app.example.test/only-api answered by pod-api-1 within ${LIVE_EDIT_BUDGET_MS} ms" \
    pod-api-1 client --resolve "app.example.test:443:$GW_IP" "${CA[@]}" https://app.example.test/only-api
expect_answer "Exact path: https://app.example.test/only-api/x still goes to a web pod" 200 '^pod-web-[123]$' \
    client --resolve "app.example.test:443:$GW_IP" "${CA[@]}" https://app.example.test/only-api/x

COMPLETED=1  # the EXIT trap tears the lab down, prints the summary and sets the exit status

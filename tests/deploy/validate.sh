#!/usr/bin/env bash
# Validates the install manifests (deploy/) without a cluster:
#   1. renders `kubectl kustomize deploy/` and every deploy/overlays/* (l2: L2 announcement +
#      gossip; its args, env, port and example are checked below),
#   2. validates every object against the Kubernetes 1.35 OpenAPI schemas with kubernetes-validate
#      (PyPI, strict: unknown fields fail; the CRDs as apiextensions.k8s.io/v1),
#   3. checks what the install promises (properties.py: no RBAC wildcards, Secrets only for the
#      gateway, node-programmer capabilities, runAsNonRoot, probes, replicas, PDB, …),
#   4. checks RBAC against the API calls the code makes (rbac_check.py: the static table, its
#      self-test, and target/k8s-mode/api-calls.jsonl when the Kubernetes-mode test recorded it).
# Needs kubectl (its built-in kustomize) and python3 with venv; installs kubernetes-validate into
# target/deploy-venv. Prints `ok - …` / `not ok - …` and `N passed, M failed`; exits 1 on failure.
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
REPO=$(cd "$HERE/../.." && pwd)
K8S_VERSION=1.35.0
VALIDATOR="kubernetes-validate==1.35.0" # its schema set for Kubernetes 1.35
OUT=$REPO/target/deploy
VENV=$REPO/target/deploy-venv
passed=0 failed=0

ok() { echo "ok - $*"; passed=$((passed + 1)); }
not_ok() { echo "not ok - $*"; failed=$((failed + 1)); }
# tap PREFIX DESC CMD…: runs a checker that prints ok/not ok lines and counts them, prefixed with
# PREFIX (its own summary line is dropped).
tap() {
    local prefix=$1 desc=$2 line out rc n_before=$((passed + failed))
    shift 2
    out=$("$@" 2>&1)
    rc=$?
    while IFS= read -r line; do
        case $line in
        "ok - "*) echo "ok - $prefix${line#ok - }"; passed=$((passed + 1)) ;;
        "not ok - "*) echo "not ok - $prefix${line#not ok - }"; failed=$((failed + 1)) ;;
        *" passed, "*" failed") ;;
        *) [[ -n $line ]] && echo "# $line" ;;
        esac
    done <<<"$out"
    if ((rc != 0)) && ! grep -q '^not ok - ' <<<"$out"; then
        not_ok "$desc (exit $rc)"
    elif ((passed + failed == n_before)); then
        not_ok "$desc printed no result"
    fi
}

command -v kubectl >/dev/null || { not_ok "kubectl is installed (renders with its built-in kustomize)"; echo "$passed passed, $failed failed"; exit 1; }
if [[ $("$VENV/bin/kubernetes-validate" --version 2>/dev/null) != "${VALIDATOR#*==}" ]]; then
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; } >/dev/null
    fi
    rm -rf "$VENV"
    if ! { python3 -m venv "$VENV" && "$VENV/bin/pip" install --quiet --disable-pip-version-check "$VALIDATOR"; }; then
        not_ok "install $VALIDATOR"
        echo "$passed passed, $failed failed"
        exit 1
    fi
fi
PY=$VENV/bin/python
mkdir -p "$OUT"

variants=(base)
for d in "$REPO"/deploy/overlays/*/; do variants+=("$(basename "$d")"); done

for v in "${variants[@]}"; do
    dir=$REPO/deploy
    [[ $v != base ]] && dir=$REPO/deploy/overlays/$v
    file=$OUT/$v.yaml
    echo "# --- $v (${dir#"$REPO"/})"
    if ! kubectl kustomize "$dir" >"$file" 2>"$OUT/$v.err"; then
        not_ok "$v: kubectl kustomize renders: $(head -c 300 "$OUT/$v.err")"
        continue
    fi
    ok "$v: kubectl kustomize renders ($(grep -c '^kind:' "$file") objects)"
    if out=$("$VENV/bin/kubernetes-validate" --kubernetes-version "$K8S_VERSION" --strict --quiet "$file" 2>&1); then
        ok "$v: every object validates against the Kubernetes $K8S_VERSION OpenAPI schemas (strict)"
    else
        not_ok "$v: kubernetes-validate --strict -k $K8S_VERSION"
        while IFS= read -r line; do echo "#   $line"; done <<<"$out"
    fi
    tap "$v: " "properties.py" "$PY" "$HERE/properties.py" "$v" "$file"
    tap "$v: " "rbac_check.py --static" "$PY" "$HERE/rbac_check.py" --static "$file"
done

echo "# --- L2 announcement overlay (deploy/overlays/l2) and its example"
if [[ -s $OUT/l2.yaml ]]; then
    tap "l2: " "L2 overlay checks" "$PY" - "$OUT" "$REPO/deploy/examples/l2-announcement.yaml" <<'PYEOF'
import sys, yaml, jsonschema
from pathlib import Path
out, example = Path(sys.argv[1]), Path(sys.argv[2])
def check(ok, what, detail=""):
    print(f"ok - {what}" if ok else f"not ok - {what}" + (f": {detail}" if detail else ""))
def load(p):
    return [d for d in yaml.safe_load_all(p.read_text()) if d]
def find(docs, kind, name):
    return next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name), None)
docs = load(out / "l2.yaml")
ds = find(docs, "DaemonSet", "node-programmer")
pod = ds["spec"]["template"]["spec"]
c = pod["containers"][0]
args = c.get("args", [])
env = {e["name"]: e.get("valueFrom", {}) for e in c.get("env", [])}
check("--l2-interfaces=$(L2_INTERFACES)" in args, "node-programmer runs --l2-interfaces=$(L2_INTERFACES)", str(args))
check("--gossip-bind=$(NODE_IP):7946" in args, "node-programmer runs --gossip-bind=$(NODE_IP):7946", str(args))
check(pod.get("hostNetwork") is True, "node-programmer is hostNetwork (status.hostIP is the node's address)")
check(env.get("NODE_IP", {}).get("fieldRef", {}).get("fieldPath") == "status.hostIP",
      "NODE_IP comes from the downward API status.hostIP", str(env.get("NODE_IP")))
ref = env.get("L2_INTERFACES", {}).get("configMapKeyRef", {})
cm = find(docs, "ConfigMap", ref.get("name", ""))
value = (cm or {}).get("data", {}).get(ref.get("key", ""), "")
check(cm is not None and cm["metadata"].get("namespace") == "drawbridge-system" and value == "eth0",
      "L2_INTERFACES comes from a rendered ConfigMap in drawbridge-system (default eth0)", f"{ref} -> {value!r}")
ports = [(p.get("name"), p.get("containerPort"), p.get("protocol")) for p in c.get("ports", [])]
check(("gossip", 7946, "UDP") in ports, "containerPort 7946/UDP named gossip", str(ports))
check(("metrics", 9501, "TCP") in ports, "the metrics port is kept", str(ports))
# L2 stays off everywhere else: no variant but l2 sets --l2-interfaces or --gossip-bind.
for f in sorted(out.glob("*.yaml")):
    if f.stem == "l2":
        continue
    other = find(load(f), "DaemonSet", "node-programmer")
    a = other["spec"]["template"]["spec"]["containers"][0].get("args", []) if other else []
    on = [x for x in a if x.startswith(("--l2-interfaces", "--gossip-bind"))]
    check(not on, f"{f.stem} leaves L2 announcement and gossip off", str(on))
# The example L2Announcement: valid against the rendered CRD's schema, nothing pruned.
crd = find(docs, "CustomResourceDefinition", "l2announcements.drawbridge.dev")
schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
ex = yaml.safe_load(example.read_text())
body = {k: v for k, v in ex.items() if k == "spec"}
try:
    jsonschema.validate(body, schema)
    check(ex["kind"] == "L2Announcement", "deploy/examples/l2-announcement.yaml validates against the L2Announcement CRD schema")
except jsonschema.ValidationError as e:
    check(False, "deploy/examples/l2-announcement.yaml validates against the L2Announcement CRD schema", e.message)
def unknown(obj, schema, path=""):
    if isinstance(obj, dict) and "properties" in schema:
        return [x for k, v in obj.items() for x in
                (unknown(v, schema["properties"][k], f"{path}.{k}") if k in schema["properties"] else [f"{path}.{k}"])]
    if isinstance(obj, list) and "items" in schema:
        return [x for i, v in enumerate(obj) for x in unknown(v, schema["items"], f"{path}[{i}]")]
    return []
pruned = unknown(body, schema)
check(not pruned, "the API server would prune no field of deploy/examples/l2-announcement.yaml", ", ".join(pruned))
check(bool(ex["spec"].get("interfaces")), "the example shows spec.interfaces")
PYEOF
else
    not_ok "l2: deploy/overlays/l2 rendered"
fi

echo "# --- RBAC against recorded API calls"
tap "" "rbac_check.py --self-test" "$PY" "$HERE/rbac_check.py" --self-test
calls=$REPO/target/k8s-mode/api-calls.jsonl
if [[ -s $calls && -s $OUT/base.yaml ]]; then
    tap "recorded calls: " "rbac_check.py on ${calls#"$REPO"/}" "$PY" "$HERE/rbac_check.py" "$OUT/base.yaml" "$calls"
else
    echo "ok - recorded API calls checked # SKIP ${calls#"$REPO"/} absent (written by the Kubernetes-mode test)"
    passed=$((passed + 1))
fi

echo "$passed passed, $failed failed"
((failed == 0))

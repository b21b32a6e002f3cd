#!/usr/bin/env bash
# Validates the install manifests (deploy/) without a cluster:
#   1. renders `kubectl kustomize deploy/` and every deploy/overlays/*,
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

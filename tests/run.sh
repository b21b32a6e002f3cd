#!/usr/bin/env bash
# The whole drawbridge test suite, as CI runs it (as root, on Debian 12):
#   1. install missing tools with apt (same list as the lab, see deploy/lab/lib.sh),
#   2. cargo test --workspace --release --no-fail-fast (every test binary runs even if one fails),
#   3. tests/deploy/validate.sh (install manifests: schemas, promised properties, RBAC vs code),
#   4. tests/k8s-mode/run.sh (all three components in Kubernetes mode against the API double),
#   5. tests/e2e/lab.sh (network-namespace lab, real traffic).
# Every test stage runs even if an earlier one fails; exits non-zero if any failed.
set -euo pipefail
HERE=$(dirname "$(readlink -f "$0")")
REPO=$(cd "$HERE/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=../deploy/lab/lib.sh
source "$REPO/deploy/lab/lib.sh"
[[ $EUID -eq 0 ]] || die "run as root (the lab creates network namespaces)"
[[ -d $HOME/.cargo/bin ]] && PATH=$HOME/.cargo/bin:$PATH

ensure_packages

status=0
echo "=== cargo test --workspace --release"
(cd "$REPO" && cargo test --workspace --release --no-fail-fast) || { echo "=== cargo test FAILED"; status=1; }
echo "=== tests/deploy/validate.sh"
"$REPO/tests/deploy/validate.sh" || { echo "=== deploy validation FAILED"; status=1; }
echo "=== tests/k8s-mode/run.sh"
"$REPO/tests/k8s-mode/run.sh" || { echo "=== Kubernetes-mode test FAILED"; status=1; }
echo "=== tests/e2e/lab.sh"
"$REPO/tests/e2e/lab.sh" || { echo "=== e2e lab FAILED"; status=1; }
exit "$status"

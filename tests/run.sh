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

failed=() # the stages that failed
# cargo's output is also kept, so the recap at the end can name a failed test: CI may show only
# the tail of this script's output, which is the later stages.
CARGO_LOG=$(mktemp /tmp/drawbridge-cargo-test.XXXXXX)
trap 'rm -f "$CARGO_LOG"' EXIT
echo "=== cargo test --workspace --release"
(cd "$REPO" && cargo test --workspace --release --no-fail-fast 2>&1 | tee "$CARGO_LOG") ||
    { echo "=== cargo test FAILED"; failed+=("cargo test"); }
echo "=== tests/deploy/validate.sh"
"$REPO/tests/deploy/validate.sh" || { echo "=== deploy validation FAILED"; failed+=("tests/deploy/validate.sh"); }
echo "=== tests/k8s-mode/run.sh"
"$REPO/tests/k8s-mode/run.sh" || { echo "=== Kubernetes-mode test FAILED"; failed+=("tests/k8s-mode/run.sh"); }
echo "=== tests/e2e/lab.sh"
"$REPO/tests/e2e/lab.sh" || { echo "=== e2e lab FAILED"; failed+=("tests/e2e/lab.sh"); }

echo "=== recap"
awk '/^test result: /{p+=$4; f+=$6} END {printf "cargo test: %d passed, %d failed\n", p, f}' "$CARGO_LOG"
if ((${#failed[@]})); then
    echo "FAILED stages: ${failed[*]}"
    # Which cargo tests failed, and the first lines of each panic (the assertion and its message).
    grep -E "^test .* \.\.\. FAILED$|^error: test failed|^error: [0-9]+ targets? failed" "$CARGO_LOG" || true
    grep -E -A4 "^thread .* panicked at " "$CARGO_LOG" | cut -c1-400 | head -n 80 || true
else
    echo "all stages passed"
fi
exit $((${#failed[@]} > 0))

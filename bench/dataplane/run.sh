#!/usr/bin/env bash
# Dataplane bench for node-programmer: sync time, one-Service change, first-packet cost, RSS,
# against kube-proxy's iptables layout and alternative nftables shapes. Run as root.
#
#   bench/dataplane/run.sh [--sizes 100,1000,10000,30000] [--quick] [--binary PATH]
#                          [--out DIR] [-- extra bench.py options]
#
#   --quick      sizes 100,1000, 1,000 connections, 20 changes, 120 s load timeout (~2 min)
#   --binary     use this node-programmer instead of building target/release/node-programmer
#   --iptables-bench  use this examples/iptables_bench (rule set node-programmer-iptables) instead
#                of building it
#   --out        results directory (default bench/dataplane/results/<date>)
#   --keep-tx    also keep node-programmer's captured transactions (np-N/tx-*.in: the full sync and
#                the latest one) in the results directory, for nft-cost.sh
# bench.py options after `--`: --timeout S, --connections N, --changes N, --change-budget S,
#   --rule-sets LIST, --shapes LIST, --endpoints E, --np-args "ARGS" (see bench.py --help).
#
# Creates only the network namespaces dbb-client, dbb-node, dbb-pod and removes them (and every
# process it started) on exit, failure or Ctrl-C. Prints a Markdown table at the end.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
sizes=100,1000,10000,30000
quick=false
binary=
ipt_bench=
out=
keep_tx=false
extra=()
while (($#)); do
    case $1 in
        --sizes) sizes=$2; shift 2 ;;
        --quick) quick=true; shift ;;
        --binary) binary=$2; shift 2 ;;
        --iptables-bench) ipt_bench=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --keep-tx) keep_tx=true; shift ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $(id -u) == 0 ]] || { echo "run.sh: needs root (network namespaces, nft, iptables)" >&2; exit 1; }
for tool in ip nft iptables-legacy-restore python3 cc; do
    command -v "$tool" >/dev/null || { echo "run.sh: missing $tool" >&2; exit 1; }
done

if $quick; then
    [[ $sizes == 100,1000,10000,30000 ]] && sizes=100,1000
    extra=(--connections 1000 --warmup 50 --changes 20 --timeout 120 "${extra[@]}")
fi

if [[ -z $binary ]]; then
    echo "[bench] cargo build --release -p node-programmer" >&2
    (cd "$root" && cargo build --release -p node-programmer)
    binary=$root/target/release/node-programmer
fi
if [[ -z $ipt_bench ]]; then
    echo "[bench] cargo build --release -p node-programmer --example iptables_bench" >&2
    (cd "$root" && cargo build --release -p node-programmer --example iptables_bench)
    ipt_bench=$root/target/release/examples/iptables_bench
fi
out=${out:-$here/results/$(date +%Y%m%d-%H%M%S)}
work=$(mktemp -d /tmp/drawbridge-bench.XXXXXX)
mkdir -p "$out"
cc -O2 -Wall -o "$work/tcpping" "$here/tcpping.c"
# Freeze the binary under test: a concurrent `cargo build` must not swap it mid-run.
cp "$binary" "$work/node-programmer"
cp "$ipt_bench" "$work/iptables_bench"

cleanup() {
    # bench.py cleans up after itself; this catches a bench.py that was killed outright:
    # every process it started leads its own session, listed in $work/pids.
    if [[ -f $work/pids ]]; then
        while read -r pid; do
            [[ $(ps -o sid= -p "$pid" 2>/dev/null | tr -d ' ') == "$pid" ]] && kill -KILL -- "-$pid" 2>/dev/null
        done <"$work/pids"
    fi
    for ns in dbb-client dbb-node dbb-pod; do
        ip netns del "$ns" 2>/dev/null || true
    done
    # Keep node-programmer's logs and transaction timings; drop manifests and rule texts.
    for d in "$work"/np-*; do
        [[ -d $d ]] && mkdir -p "$out/${d##*/}" && cp "$d"/*.log "$out/${d##*/}/" 2>/dev/null
        [[ -d $d ]] && $keep_tx && cp "$d"/tx-*.in "$out/${d##*/}/" 2>/dev/null
    done
    rm -rf "$work"
}
trap cleanup EXIT

python3 "$here/bench.py" --sizes "$sizes" --binary "$work/node-programmer" --tcpping "$work/tcpping" \
    --iptables-bench "$work/iptables_bench" --work "$work" --out "$out" "${extra[@]}"
echo "[bench] results: $out/results.md, $out/results.json" >&2

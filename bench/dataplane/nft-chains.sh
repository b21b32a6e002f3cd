#!/usr/bin/env bash
# Does nft's per-transaction cost follow the number of chains in the table? For each N, loads
# `table ip t` with N chains (one `counter` rule each) into a private namespace dbbc-<pid>, then
# times (median of REPEAT) `nft -f` of one `add rule ip t c0 counter` and of a no-op
# `add table ip t`. Run as root; removes its namespace on exit.
#
#   bench/dataplane/nft-chains.sh [REPEAT=5] N...      e.g. nft-chains.sh 5 10000 110000
set -euo pipefail
repeat=$1; shift
ns=dbbc-$$
tmp=$(mktemp -d)
trap 'ip netns del "$ns" 2>/dev/null || true; rm -rf "$tmp"' EXIT
echo "add rule ip t c0 counter" >"$tmp/rule.nft"
echo "add table ip t" >"$tmp/noop.nft"
median() {
    local xs=()
    for _ in $(seq "$repeat"); do
        local t=$EPOCHREALTIME
        ip netns exec "$ns" nft -f "$1"
        xs+=("$(bc <<<"($EPOCHREALTIME - $t) * 1000")")
    done
    printf '%s\n' "${xs[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]}'
}
for n in "$@"; do
    python3 -c "
import sys
n = int(sys.argv[1])
print('table ip t {')
for i in range(n):
    print(f'\tchain c{i} {{\n\t\tcounter\n\t}}')
print('}')" "$n" >"$tmp/t.nft"
    ip netns add "$ns"
    t=$EPOCHREALTIME
    ip netns exec "$ns" nft -f "$tmp/t.nft"
    load=$(bc <<<"($EPOCHREALTIME - $t) * 1000")
    echo "chains $n: load ${load%.*} ms; add one rule $(median "$tmp/rule.nft") ms; no-op $(median "$tmp/noop.nft") ms"
    ip netns del "$ns"
done

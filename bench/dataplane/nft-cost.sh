#!/usr/bin/env bash
# Where a partial sync's time goes in `nft` itself: loads a captured full transaction (tx-1.in of a
# bench run, kept by run.sh --keep-tx) into a private network namespace, then times REPEAT
# runs each of
#   partial   `nft -f PARTIAL` (a captured partial transaction; must be idempotent, e.g. a
#             flush-chain + rewrite of one Service's chains, no element changes)
#   no-op     `nft -f` of `add table ip drawbridge` (touches nothing)
#   one-flush `nft -f` of `flush chain ip drawbridge <the first Service chain>`
#   one-rule  `nft -f` of `add rule ip drawbridge <that chain> counter` (a rule, no chain reference)
#   one-jump  `nft -f` of flush + `add rule ip drawbridge <that chain> jump mark-for-masquerade`
#             (one rule that references another chain)
#   list      `nft list chains ip` (a read of every chain)
# and prints min / median in ms. Run as root; creates only namespace dbbx-<pid> and removes it on
# exit. (The full table is then left with that one chain flushed: load it anew for other runs.)
#
#   bench/dataplane/nft-cost.sh FULL.nft PARTIAL.nft [REPEAT=7]
set -euo pipefail
full=$1 partial=$2 repeat=${3:-7}
ns=dbbx-$$
ip netns add "$ns"
trap 'ip netns del "$ns" 2>/dev/null || true; rm -f "$tmp"/*; rmdir "$tmp" 2>/dev/null || true' EXIT
tmp=$(mktemp -d)
t0=$EPOCHREALTIME
ip netns exec "$ns" nft -f "$full"
echo "full load: $(bc <<<"($EPOCHREALTIME - $t0) * 1000" | cut -d. -f1) ms ($(stat -c %s "$full") bytes)"
echo "add table ip drawbridge" >"$tmp/noop.nft"
chain=$(grep -m1 -o 'chain service-[^ ]*' "$full" | cut -d' ' -f2)
echo "flush chain ip drawbridge $chain" >"$tmp/flush.nft"
printf 'flush chain ip drawbridge %s\nadd rule ip drawbridge %s counter\n' "$chain" "$chain" >"$tmp/rule.nft"
printf 'flush chain ip drawbridge %s\nadd rule ip drawbridge %s jump mark-for-masquerade\n' "$chain" "$chain" >"$tmp/jump.nft"

measure() {
    local name=$1; shift
    local xs=()
    for _ in $(seq "$repeat"); do
        local t=$EPOCHREALTIME
        ip netns exec "$ns" "$@" >/dev/null
        xs+=("$(bc <<<"($EPOCHREALTIME - $t) * 1000")")
    done
    printf '%s\n' "${xs[@]}" | sort -n | awk -v n="$name" '{a[NR]=$1} END {printf "%-10s min %7.1f ms  median %7.1f ms  (n=%d)\n", n, a[1], a[int((NR+1)/2)], NR}'
}
measure partial nft -f "$partial"
measure no-op nft -f "$tmp/noop.nft"
measure one-flush nft -f "$tmp/flush.nft"
measure one-rule nft -f "$tmp/rule.nft"
measure one-jump nft -f "$tmp/jump.nft"
measure list nft list chains ip

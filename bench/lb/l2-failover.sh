#!/usr/bin/env bash
# L2 failover gap, measured in network namespaces with the real node-programmer binary while a
# client connects to the VIP every 5 ms. Per trial: time until the client's neighbour entry
# carries the new node's MAC, and until answers come from the new node. Needs root.
#
#   sudo bench/lb/l2-failover.sh [TRIALS]      # default 20
#
# 1. gossip, hard node loss (issue 4): three nodes rank node-a,node-b,node-c in
#    drawbridge.dev/announcing-candidates; node-a loses its link (even trials) or its
#    node-programmer is frozen with SIGSTOP (odd trials); NO annotation edit — node-b's gossip
#    (foca SWIM + heartbeats) must detect it and take over. node-a comes back and takes the IP
#    back between trials. (node-programmer/tests/l2.rs gossip_hard_node_loss_moves_the_mac_within_a_second)
# 2. gossip partition: node-a's gossip cut by nft; when node-a goes quiet and node-b answers
#    (one run; gossip_partition_silences_the_minority_before_the_majority_takes_over)
# 3. annotation move (no gossip): node-a's link goes down and the annotation moves to node-b at the
#    same instant — the responder's own reaction time (failover_moves_the_mac_within_a_second)
set -euo pipefail
cd "$(dirname "$0")/../.."
trials=${1:-20}
report=$(mktemp)
trap 'rm -f "$report"' EXIT
for test in gossip_hard_node_loss_moves_the_mac_within_a_second \
            gossip_partition_silences_the_minority_before_the_majority_takes_over \
            failover_moves_the_mac_within_a_second; do
  L2_FAILOVER_TRIALS=$trials L2_FAILOVER_REPORT=$report \
    cargo test -p node-programmer --release --test l2 "$test" -- --exact --nocapture --test-threads=1 2>&1 \
    | grep -E '^trial [0-9]+|^test result' || true
done
echo "---"
cat "$report"

#!/usr/bin/env bash
# L2 failover gap: the announcing node loses its link and the announcement moves to the other
# node at the same instant, while a client connects to the VIP every 5 ms. Per trial: time until
# the client's neighbour entry carries the new node's MAC, and until answers come from the new
# node. Runs node-programmer/tests/l2.rs's failover test (real namespaces, bridge, ARP) with
# TRIALS trials and prints p50/max. Needs root.
#
#   sudo bench/lb/l2-failover.sh [TRIALS]      # default 20
set -euo pipefail
cd "$(dirname "$0")/../.."
trials=${1:-20}
report=$(mktemp)
trap 'rm -f "$report"' EXIT
L2_FAILOVER_TRIALS=$trials L2_FAILOVER_REPORT=$report \
  cargo test -p node-programmer --release --test l2 failover_moves_the_mac_within_a_second \
  -- --nocapture --test-threads=1 2>&1 | grep -E '^trial [0-9]+:|^test result' || true
echo "---"
cat "$report"

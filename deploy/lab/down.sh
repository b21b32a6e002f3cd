#!/usr/bin/env bash
# Tears the drawbridge network-namespace lab down: stops its processes, removes the drawbridge
# nftables tables from the node namespaces, deletes every lab namespace and removes $LAB_DIR.
# Safe to run when nothing (or only part of the lab) exists. Touches only lab namespaces: the
# host's interfaces, routes and nftables tables are never modified.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$(readlink -f "$0")")/lib.sh"
[[ $EUID -eq 0 ]] || die "run as root"

mapfile -t namespaces < <(lab_namespaces)

# True when process $1 runs inside one of the lab namespaces (guards against a recycled pid).
in_lab_namespace() {
    local ns
    ns=$(ip netns identify "$1" 2>/dev/null) || return 1
    [[ -n $ns ]] && printf '%s\n' "${namespaces[@]}" | grep -qx -- "$ns"
}

# Pids of everything to stop: the recorded ones that are still in a lab namespace, plus anything
# else running inside a lab namespace.
lab_pids() {
    local f pid ns
    if [[ -d $LAB_DIR/pids ]]; then
        for f in "$LAB_DIR"/pids/*.pid; do
            [[ -f $f ]] || continue
            pid=$(<"$f")
            [[ $pid =~ ^[0-9]+$ ]] && in_lab_namespace "$pid" && echo "$pid"
        done
    fi
    for ns in "${namespaces[@]}"; do
        ns_exists "$ns" && ip netns pids "$ns" 2>/dev/null
    done
    return 0
}

stop_processes() {
    local pids i
    mapfile -t pids < <(lab_pids | sort -un)
    ((${#pids[@]})) || return 0
    log "stopping ${#pids[@]} process(es): ${pids[*]}"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        mapfile -t pids < <(lab_pids | sort -un)
        ((${#pids[@]})) || return 0
        sleep 0.1
    done
    log "killing what is left: ${pids[*]}"
    kill -KILL "${pids[@]}" 2>/dev/null || true
    sleep 0.2
}

# Table `ip drawbridge` in each node namespace: `node-programmer --cleanup` when the binary the lab
# ran is still there, plain nft otherwise (the namespace deletion would drop it anyway).
remove_nft_tables() {
    local node programmer=
    [[ -f $LAB_DIR/bin-dir ]] && programmer="$(<"$LAB_DIR/bin-dir")/node-programmer"
    for node in $(node_names); do
        ns_exists "$node" || continue
        if [[ -x $programmer ]] && ip netns exec "$node" "$programmer" --cleanup >/dev/null 2>&1; then
            continue
        fi
        if ip netns exec "$node" nft list table ip drawbridge >/dev/null 2>&1; then
            ip netns exec "$node" nft delete table ip drawbridge || log "could not delete table in $node"
        fi
    done
}

delete_namespaces() {
    local ns
    for ns in "${namespaces[@]}"; do
        ns_exists "$ns" || continue
        ip netns delete "$ns" || log "could not delete namespace $ns"
    done
}

remove_lab_dir() {
    [[ -e $LAB_DIR ]] || return 0
    if [[ -f $LAB_DIR/$LAB_MARKER ]]; then
        rm -rf -- "$LAB_DIR"
    else
        log "not removing $LAB_DIR: no $LAB_MARKER marker (not created by up.sh)"
    fi
}

stop_processes
remove_nft_tables
delete_namespaces
remove_lab_dir
log "lab is down"

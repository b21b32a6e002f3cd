# Shared by bench/gateway's scripts (sourced): process cleanup and CPU caps.
# Callers keep the processes they start in PIDS, the cgroups made by cpu_cap in CGROUPS, and
# their scratch directory in TMP.

# install_missing COMMAND:PACKAGE ...: installs (apt) the Debian package of every command not found.
install_missing() {
    local need=() pair
    for pair in "$@"; do command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}"); done
    if [ ${#need[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}"
    fi
}

# Stops every process in PIDS (SIGINT, then SIGKILL after 1 s), removes the cgroups in CGROUPS
# and TMP.
stop_all() {
    for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    sleep 1
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    sleep 0.2
    for d in "${CGROUPS[@]}"; do rmdir "$d" 2>/dev/null || echo "cannot remove cgroup $d" >&2; done
    rm -rf "$TMP"
}

# cpu_cap NAME PERCENT PID...: a new cgroup (cgroup v2 `cpu.max`, or v1 `cpu`) capping the given
# processes together at PERCENT of one core (CFS quota PERCENT × 100 µs per 10 ms period);
# recorded in CGROUPS for stop_all.
cpu_cap() {
    local name="$1" quota=$(($2 * 100)) root d pid
    shift 2
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control || echo +cpu >/sys/fs/cgroup/cgroup.subtree_control
        root=/sys/fs/cgroup
    else
        root=/sys/fs/cgroup/cpu
    fi
    d="$root/drawbridge-bench-$$-$name"
    mkdir "$d"
    CGROUPS+=("$d")
    if [ -f "$d/cpu.max" ]; then echo "$quota 10000" >"$d/cpu.max"
    else echo 10000 >"$d/cpu.cfs_period_us"; echo "$quota" >"$d/cpu.cfs_quota_us"; fi
    for pid in "$@"; do echo "$pid" >"$d/cgroup.procs"; done
}

#!/usr/bin/env python3
"""Dataplane bench for node-programmer (run through run.sh, as root).

For every size N (Services x E endpoints, all ClusterIP/TCP, Cluster policy) it measures, each
rule set in a fresh set of network namespaces:

  client ns (dbb-client) 192.0.2.2 ──veth── 192.0.2.1 node ns (dbb-node) 203.0.113.1 ──veth──
      203.0.113.2 pod ns (dbb-pod): 198.19.0.0/16 is local (AnyIP), tcpping listens on the ports
  client routes 198.18.0.0/16 (ClusterIPs) and 198.19.0.0/16 (endpoints) via the node; only the
  node holds rules.

  baseline          no rules; connect straight to an endpoint address (routing only)
  kube-proxy ipt    gen.py's kube-proxy iptables layout, `iptables-legacy-restore --noflush`
  node-programmer   the real binary, `--manifests DIR`, `nft` replaced by capture-wrapper so its
                    exact transaction is timed (full sync, then one-Service changes)
  shape:*           node-programmer's captured transaction rewritten by `gen.py nft-shape`,
                    loaded with `nft -f`

and the TCP connect latency (tcpping, C, CLOCK_MONOTONIC around connect()) to the LAST Service's
ClusterIP (for iptables: its rule is the last in KUBE-SERVICES).

Writes results JSON + Markdown to --out and prints the Markdown.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen  # noqa: E402

CLIENT, NODE, POD = "dbb-client", "dbb-node", "dbb-pod"
NAMESPACES = (CLIENT, NODE, POD)
CLIENT_IP, NODE_CLIENT_IP = "192.0.2.2", "192.0.2.1"
NODE_POD_IP, POD_IP = "203.0.113.1", "203.0.113.2"

# Every process we start, by pid (each leads its own process group): killed on any exit.
STARTED = []
# Also written here (one pid a line) so run.sh can clean up if this script is killed outright.
PIDFILE = None


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, text=True, **kw)


def netns(name, *cmd):
    return ["ip", "netns", "exec", name, *cmd]


def kill_started():
    while STARTED:
        pid = STARTED.pop()
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(40):
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            time.sleep(0.05)
        else:
            try:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def stop(proc):
    """SIGTERM the process group we started (SIGKILL after 3 s) and forget it."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=3)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if proc.pid in STARTED:
        STARTED.remove(proc.pid)


def spawn(cmd, **kw):
    proc = subprocess.Popen(cmd, start_new_session=True, **kw)
    STARTED.append(proc.pid)
    if PIDFILE:
        with open(PIDFILE, "a") as f:
            f.write(f"{proc.pid}\n")
    return proc


def delete_namespaces():
    existing = run(["ip", "netns", "list"], capture_output=True).stdout.split()
    for name in NAMESPACES:
        if name in existing:
            run(["ip", "netns", "del", name], check=False)


# === topology ===


class Topology:
    """client -> node (rules) -> pod, created fresh for each measured rule set."""

    def __init__(self, a, ports, baseline_target=None):
        self.tcpping, self.ports, self.server = a.tcpping, ports, None
        self.count, self.warmup = a.connections, a.warmup
        self.baseline_target, self.baseline = baseline_target, None

    def __enter__(self):
        delete_namespaces()
        for name in NAMESPACES:
            run(["ip", "netns", "add", name])
            run(["ip", "-n", name, "link", "set", "lo", "up"])
            run(netns(name, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0",
                      "net.ipv4.conf.default.rp_filter=0"))
        run(["ip", "-n", CLIENT, "link", "add", "c0", "type", "veth", "peer", "name", "nc0", "netns", NODE])
        run(["ip", "-n", NODE, "link", "add", "np0", "type", "veth", "peer", "name", "p0", "netns", POD])
        for ns, dev, addr in ((CLIENT, "c0", CLIENT_IP), (NODE, "nc0", NODE_CLIENT_IP),
                              (NODE, "np0", NODE_POD_IP), (POD, "p0", POD_IP)):
            run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
        run(["ip", "-n", CLIENT, "route", "add", "198.18.0.0/16", "via", NODE_CLIENT_IP])
        run(["ip", "-n", CLIENT, "route", "add", "198.19.0.0/16", "via", NODE_CLIENT_IP])
        run(["ip", "-n", NODE, "route", "add", "198.19.0.0/16", "via", POD_IP])
        run(netns(NODE, "sysctl", "-qw", "net.ipv4.ip_forward=1"))
        run(["ip", "-n", POD, "route", "add", "default", "via", NODE_POD_IP])
        run(["ip", "-n", POD, "route", "add", "local", "198.19.0.0/16", "dev", "lo"])
        run(netns(POD, "sysctl", "-qw", "net.core.somaxconn=4096"))
        self.server = spawn(netns(POD, *PIN, self.tcpping, "serve", ",".join(map(str, self.ports))))
        # Ready when an endpoint answers straight through the node (no NAT needed).
        for _ in range(100):
            r = run(netns(CLIENT, self.tcpping, "connect", "198.19.0.1", str(self.ports[0]), "1", "0"),
                    check=False, capture_output=True)
            if r.returncode == 0:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("tcpping server in the pod namespace never answered")
        # Routed baseline in this very topology, before any rule is loaded: the same probe
        # straight to an endpoint address, so each row carries its own noise reference.
        if self.baseline_target:
            self.baseline = connect_latency(self.tcpping, *self.baseline_target, self.count, self.warmup)
        return self

    def __exit__(self, *exc):
        if self.server:
            stop(self.server)
        delete_namespaces()
        return False


# Client and server share one CPU, SCHED_FIFO: measured here, a server on the other vCPU adds a
# cross-CPU wake-up (~15-20 µs in this VM) to a random share of the runs, and builds running on
# the same machine would otherwise delay the probe.
PIN = ["taskset", "-c", str((os.cpu_count() or 1) - 1), "chrt", "-f", "10"]


def connect_latency(tcpping, ip, port, count, warmup):
    r = run(netns(CLIENT, *PIN, tcpping, "connect", ip, str(port), str(count), str(warmup)),
            check=False, capture_output=True, timeout=600)
    fields = dict(kv.split("=") for kv in r.stdout.split())
    out = {k: float(v) for k, v in fields.items()}
    out["ok"] = r.returncode == 0 and int(out.get("n", 0)) == count
    return out


def timed(cmd, timeout, stdin=None):
    """(seconds, error or None), killing cmd after timeout seconds."""
    t0 = time.monotonic()
    proc = spawn(cmd, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        return time.monotonic() - t0, f"timeout after {timeout} s"
    if proc.pid in STARTED:
        STARTED.remove(proc.pid)
    dt = time.monotonic() - t0
    return dt, (None if proc.returncode == 0 else f"exit {proc.returncode}: {err.strip()[:300]}")


# === node-programmer ===


def read_tx_log(path):
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                p = line.split()
                if len(p) == 8:
                    rows.append(dict(seq=int(p[0]), prog=p[1], t_start=float(p[2]), t_read=float(p[3]),
                                     t_done=float(p[4]), rc=int(p[5]), hwm_kb=int(p[6]), bytes=int(p[7])))
    return rows


def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "VmRSS"):
                    out[k] = int(v.split()[0])
    except FileNotFoundError:
        pass
    return out


def wait_tx(txlog, after_seq, deadline, proc, not_before=0.0):
    """First transaction with seq > after_seq started at or after not_before (wall clock), or
    None at the deadline / if proc died."""
    while time.time() < deadline:
        rows = [r for r in read_tx_log(txlog) if r["seq"] > after_seq and r["t_start"] >= not_before]
        if rows:
            return rows[0]
        if proc.poll() is not None:
            return None
        time.sleep(0.002)
    return None


def run_node_programmer(a, n, mdir, work, topo_ports, target):
    """Full sync, first packet, one-Service changes, RSS. Returns (result, captured text path)."""
    res = {"rule_set": "node-programmer nftables", "services": n}
    txdir = os.path.join(work, f"np-{n}")
    os.makedirs(txdir, exist_ok=True)
    for f in os.listdir(txdir):
        os.remove(os.path.join(txdir, f))
    txlog = os.path.join(txdir, "tx.log")
    fakebin = os.path.join(work, "fakebin")
    env = dict(os.environ, PATH=f"{fakebin}:{os.environ['PATH']}", DBB_REAL_PATH=os.environ["PATH"],
               DBB_TX_LOG=txlog, DBB_TX_DIR=txdir, RUST_LOG=os.environ.get("RUST_LOG", "info"))
    with Topology(a, topo_ports, target[2]) as topo:
        res["baseline"] = topo.baseline
        with open(os.path.join(txdir, "node-programmer.log"), "w") as out:
            t0 = time.time()
            proc = spawn(netns(NODE, a.binary, "--node-name", "bench", "--manifests", mdir, *a.np_args),
                         env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            first_in = os.path.join(txdir, "tx-1.in")
            if a.capture_only:
                # Only the text, for the shapes: stop as soon as node-programmer has handed it over.
                while not os.path.exists(first_in + ".read") and proc.poll() is None \
                        and time.time() < t0 + a.timeout:
                    time.sleep(0.01)
                res["render_s"] = time.time() - t0
                res["capture_only"] = True
                return res, (first_in if os.path.exists(first_in + ".read") else None)
            tx = wait_tx(txlog, 0, t0 + a.timeout, proc)
            # The wrapper saves the text before nft runs, so the redesign shapes can use it even
            # when the load itself times out.
            if tx is None:
                rows = read_tx_log(txlog)
                res["error"] = (f"> {a.timeout} s (stopped)" if proc.poll() is None
                                else f"node-programmer exited {proc.returncode} (see {txdir}/node-programmer.log)")
                if os.path.exists(first_in):
                    res["tx_bytes"] = os.path.getsize(first_in)
                    res["render_s"] = None
                st = proc_status(proc.pid)
                if proc.poll() is None and os.path.exists(first_in):
                    res["vmhwm_kb_at_render"] = st.get("VmHWM")
                log(f"node-programmer N={n}: {res['error']}")
                return res, (first_in if os.path.exists(first_in) else None)
            st = proc_status(proc.pid)
            res.update(full_sync_s=tx["t_done"] - t0, render_s=tx["t_start"] - t0,
                       apply_s=tx["t_done"] - tx["t_read"], tx_bytes=tx["bytes"], rc=tx["rc"],
                       vmhwm_kb_at_render=tx["hwm_kb"], vmhwm_kb_after_sync=st.get("VmHWM"),
                       vmrss_kb_after_sync=st.get("VmRSS"))
            if tx["rc"] != 0:
                res["error"] = f"nft failed rc={tx['rc']} (see {txdir}/node-programmer.log)"
                return res, first_in
            log(f"node-programmer N={n}: full sync {res['full_sync_s']:.2f} s "
                f"(render {res['render_s']:.2f} s, nft {res['apply_s']:.2f} s), "
                f"VmHWM {res['vmhwm_kb_after_sync']} kB")
            res["first_packet"] = connect_latency(a.tcpping, target[0], target[1], a.connections, a.warmup)
            nplog = os.path.join(txdir, "node-programmer.log")
            res["changes"] = one_service_changes(a, n, mdir, txlog, tx, proc, res["full_sync_s"], nplog)
            st = proc_status(proc.pid)
            res["vmhwm_kb_end"] = st.get("VmHWM")
            res["vmrss_kb_end"] = st.get("VmRSS")
            # Read after the changes: node-programmer logs the full sync only after nft returned.
            first = np_log_syncs(nplog)
            if first:
                res["np_full_ms"], res["np_full_kind"] = first[0][1], first[0][2]
        finally:
            stop(proc)
    return res, first_in


def one_service_changes(a, n, mdir, txlog, first_tx, proc, full_s, np_log=None):
    """Rewrite one Service's EndpointSlice file (atomic rename) up to a.changes times and time
    file write -> transaction done. Skipped when one change would cost more than the budget
    allows (today every change rewrites the whole table, so it costs about a full sync)."""
    if a.changes == 0:
        return {"skipped": "--changes 0"}
    # No skip up front any more (incremental sync): the budget stops the loop instead, and one
    # change may take up to about a full sync if the binary still rewrites the table.
    expected = full_s * 1.2
    svc = n // 2
    samples, last_seq, started = [], first_tx["seq"], time.time()
    # Let the watcher settle after the initial load.
    time.sleep(0.2)
    for g in range(1, a.changes + 1):
        if time.time() - started > a.change_budget:
            break
        t_write = time.time()
        gen.write_atomic(gen.slice_path(mdir, svc),
                         gen.slice_yaml(svc, gen.changed_endpoints(svc, a.endpoints, g), g))
        tx = wait_tx(txlog, last_seq, t_write + max(10, expected * 3), proc, not_before=t_write)
        if tx is None:
            return {"error": f"change {g}: no transaction", "n": len(samples)}
        last_seq = tx["seq"]
        if tx["rc"] != 0:
            return {"error": f"change {g}: nft rc={tx['rc']}", "n": len(samples)}
        samples.append((tx["t_done"] - t_write, tx["t_start"] - t_write, tx["t_done"] - tx["t_read"],
                        tx["bytes"], t_write, tx["t_done"] - tx["t_start"]))
        # node-programmer deletes the chains a change made stale 1 s later (STALE_CHAIN_DELAY),
        # in a transaction of its own: let it happen before the next change, so a change is
        # never timed against that cleanup (wait_tx also ignores transactions started earlier).
        time.sleep(a.change_gap)
    total = sorted(s[0] for s in samples)
    internal = np_sync_times(np_log, [s[4] for s in samples]) if np_log else []
    out = {
        "n": len(samples),
        "p50_ms": pct(total, 0.5) * 1e3, "p99_ms": pct(total, 0.99) * 1e3,
        "render_p50_ms": pct(sorted(s[1] for s in samples), 0.5) * 1e3,
        "nft_p50_ms": pct(sorted(s[2] for s in samples), 0.5) * 1e3,
        "nft_p99_ms": pct(sorted(s[2] for s in samples), 0.99) * 1e3,
        "nft_wall_p50_ms": pct(sorted(s[5] for s in samples), 0.5) * 1e3,
        "tx_bytes": samples[-1][3] if samples else None,
    }
    if internal:
        kinds = sorted({k for _, k in internal})
        ms = sorted(v for v, _ in internal)
        out.update(np_n=len(ms), np_p50_ms=pct(ms, 0.5), np_p99_ms=pct(ms, 0.99), np_kinds=kinds)
    return out


def np_log_syncs(path):
    """node-programmer's own `programmed Service rules` log lines: [(unix time, elapsed_ms, kind)].
    elapsed_ms covers one whole sync pass (model build, render, `nft -f`), the same span as
    `kubeproxy_sync_{full,partial}_proxy_rules_duration_seconds`."""
    import datetime
    import re
    rows = []
    if not os.path.exists(path):
        return rows
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    with open(path, errors="replace") as f:
        for line in f:
            if "programmed Service rules" not in line:
                continue
            line = ansi.sub("", line)
            m = re.search(r"elapsed_ms=(\d+)", line)
            ts = re.match(r"\s*(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z", line)
            if not m or not ts:
                continue
            t = datetime.datetime.fromisoformat(ts.group(1)[:26]).replace(
                tzinfo=datetime.timezone.utc).timestamp()
            kind = "Full" if "Full" in line else "Partial" if "Partial" in line else "?"
            rows.append((t, int(m.group(1)), kind))
    return rows


def np_sync_times(path, writes):
    """For each change (file write time), node-programmer's elapsed_ms of the first sync logged
    after it: [(ms, kind)]."""
    rows = np_log_syncs(path)
    out = []
    for w in writes:
        nxt = [(ms, k) for t, ms, k in rows if t >= w]
        if nxt:
            out.append(nxt[0])
    return out


def pct(sorted_values, q):
    if not sorted_values:
        return float("nan")
    return sorted_values[int(q * (len(sorted_values) - 1) + 0.5)]


# === node-programmer iptables backend ===


def run_np_iptables(a, n, topo_ports, target):
    """Our iptables backend through `iptables_bench` (node-programmer/examples): the same
    Services as gen.py built in memory, full sync + one-Service changes timed in-process, each a
    real `iptables-legacy-restore --noflush` in dbb-node; then the first packet."""
    res = {"rule_set": f"node-programmer iptables ({a.iptables_flavour})", "services": n}
    with Topology(a, topo_ports, target[2]) as topo:
        res["baseline"] = topo.baseline
        cmd = netns(NODE, a.iptables_bench, str(n), str(a.endpoints), str(a.changes), a.iptables_flavour)
        proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=a.timeout + a.change_budget)
        except subprocess.TimeoutExpired:
            stop(proc)
            res["error"] = f"> {a.timeout + a.change_budget} s (stopped)"
            return res
        if proc.pid in STARTED:
            STARTED.remove(proc.pid)
        if proc.returncode != 0:
            res["error"] = f"iptables_bench exit {proc.returncode}: {err.strip()[:300]}"
            log(f"{res['rule_set']} N={n}: {res['error']}")
            return res
        r = json.loads(out)
        ch = r["changes"]
        res.update(full_sync_s=r["full_sync_s"], render_s=r["full_sync_s"] - r["full_restore_s"],
                   apply_s=r["full_restore_s"], tx_bytes=r["full_bytes"],
                   vmhwm_kb_after_sync=r["vmhwm_kb"],
                   changes={"n": ch["n"], "p50_ms": ch["p50_ms"], "p99_ms": ch["p99_ms"],
                            "nft_p50_ms": ch["restore_p50_ms"], "restore_p99_ms": ch["restore_p99_ms"],
                            "tx_bytes": ch["bytes"]} if ch["n"] else {"skipped": "--changes 0"})
        log(f"{res['rule_set']} N={n}: full sync {r['full_sync_s']:.2f} s (restore {r['full_restore_s']:.2f} s), "
            f"change p50/p99 {ch['p50_ms']:.0f}/{ch['p99_ms']:.0f} ms (restore p50 {ch['restore_p50_ms']:.0f} ms, "
            f"{ch['bytes']} B)")
        res["first_packet"] = connect_latency(a.tcpping, target[0], target[1], a.connections, a.warmup)
    return res


# === static rule sets ===


def run_static(a, name, n, load_cmd, stdin_path, topo_ports, target):
    res = {"rule_set": name, "services": n}
    with Topology(a, topo_ports, target[2]) as topo:
        res["baseline"] = topo.baseline
        stdin = open(stdin_path) if stdin_path else None
        try:
            dt, err = timed(load_cmd, a.timeout, stdin=stdin)
        finally:
            if stdin:
                stdin.close()
        res["load_s"] = dt
        if err:
            res["error"] = f"> {a.timeout} s (stopped)" if err.startswith("timeout") else err
            log(f"{name} N={n}: {res['error']}")
            return res
        log(f"{name} N={n}: load {dt:.2f} s")
        if name == "shape: skeleton":
            return res  # it DNATs nothing
        res["first_packet"] = connect_latency(a.tcpping, target[0], target[1], a.connections, a.warmup)
    return res


def run_size(a, n, work, results):
    mdir = os.path.join(work, f"manifests-{n}")
    run(["rm", "-rf", mdir])
    t = time.time()
    gen.gen_manifests(n, a.endpoints, mdir)
    ipt = os.path.join(work, f"kube-proxy-iptables-{n}.rules")
    gen.gen_iptables(n, a.endpoints, ipt)
    last = n - 1
    cip = gen.cluster_ip(last)
    ports = sorted({p for i in range(n) for _, p in gen.endpoints(i, a.endpoints)[:1]})
    # (ClusterIP, port, (an endpoint of that Service for the routed baseline))
    target = (cip, gen.SERVICE_PORT, gen.endpoints(last, a.endpoints)[0])
    log(f"N={n}: generated in {time.time() - t:.1f} s; target {cip}:{gen.SERVICE_PORT}")

    def record(r):
        results.append(r)
        save(a, results)

    if "baseline" in a.rule_sets:
        with Topology(a, ports, target[2]) as topo:
            record({"rule_set": "baseline (no rules, routed)", "services": n, "first_packet": topo.baseline})
    if "kube-proxy-iptables" in a.rule_sets:
        record(run_static(a, "kube-proxy iptables layout (legacy)", n,
                          netns(NODE, "iptables-legacy-restore", "--noflush"), ipt, ports, target))
    if "kube-proxy-iptables-nft" in a.rule_sets:
        record(run_static(a, "kube-proxy iptables layout (iptables-nft)", n,
                          netns(NODE, "iptables-nft-restore", "--noflush"), ipt, ports, target))
    if "node-programmer-iptables" in a.rule_sets:
        record(run_np_iptables(a, n, ports, target))
    captured = None
    if "node-programmer" in a.rule_sets or a.shapes:
        r, captured = run_node_programmer(a, n, mdir, work, ports, target)
        if not r.get("capture_only"):
            record(r)
    for shape in a.shapes:
        if not captured:
            record({"rule_set": f"shape: {shape}", "services": n, "error": "no captured transaction"})
            continue
        path = os.path.join(work, f"shape-{shape}-{n}.nft")
        with open(captured) as f:
            text = gen.gen_shape(shape, f.read())
        with open(path, "w") as f:
            f.write(text)
        r = run_static(a, f"shape: {shape}", n, netns(NODE, "nft", "-f", path), None, ports, target)
        r["tx_bytes"] = len(text)
        record(r)
    run(["rm", "-rf", mdir])


# === report ===


def fmt_s(v):
    if v is None:
        return "—"
    return f"{v * 1e3:.0f} ms" if v < 1 else f"{v:.2f} s" if v < 10 else f"{v:.1f} s"


def fmt_fp(fp):
    if not fp:
        return "—"
    if not fp.get("ok"):
        return f"failed ({int(fp.get('n', 0))} ok, {int(fp.get('failed', 0))} failed)"
    return f"{fp['p50_us']:.0f} / {fp['p99_us']:.0f}"


def markdown(a, results):
    kp = {r["services"]: r for r in results if r["rule_set"].startswith("kube-proxy iptables layout (legacy)")}
    lines = [
        f"Services × {a.endpoints} endpoints; first packet = TCP connect() to the last Service's "
        f"ClusterIP, {a.connections} connections (+{a.warmup} warm-up), µs. "
        "'vs kube-proxy' = kube-proxy iptables layout p50 ÷ this p50 at the same size.",
        "",
        "| rule set | Services | full sync / load | one-Service change p50 / p99 | first packet p50 / p99 µs "
        "| same-topology routed baseline p50 µs | vs kube-proxy ipt (p50) | text | node-programmer VmHWM |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "error" in r and not r.get("full_sync_s"):
            sync = r["error"]
        elif "full_sync_s" in r:
            sync = f"{fmt_s(r['full_sync_s'])} (render {fmt_s(r['render_s'])}, apply {fmt_s(r['apply_s'])}"
            if r.get("np_full_ms") is not None:
                sync += f"; own elapsed_ms {r['np_full_ms']:,} ({r.get('np_full_kind')})"
            sync += ")"
        elif "load_s" in r:
            sync = fmt_s(r["load_s"])
        else:
            sync = "—"
        ch = r.get("changes")
        if not ch:
            change = "—"
        elif "skipped" in ch:
            change = "not run: " + ch["skipped"]
        elif "error" in ch:
            change = ch["error"]
        else:
            change = (f"{ch['p50_ms']:.0f} / {ch['p99_ms']:.0f} ms (n={ch['n']}; apply p50 "
                      f"{ch['nft_p50_ms']:.0f} ms")
            if ch.get("np_n"):
                change += (f"; own elapsed_ms p50 / p99 {ch['np_p50_ms']} / {ch['np_p99_ms']} "
                           f"({'/'.join(ch['np_kinds'])}, n={ch['np_n']})")
            change += ")"
        fp = r.get("first_packet")
        ratio = "—"
        base = kp.get(r["services"], {}).get("first_packet")
        if fp and fp.get("ok") and base and base.get("ok") and not r["rule_set"].startswith("baseline"):
            ratio = f"{base['p50_us'] / fp['p50_us']:.1f}×"
        text = f"{r['tx_bytes'] / 1e6:.1f} MB" if r.get("tx_bytes") else "—"
        hwm = r.get("vmhwm_kb_end") or r.get("vmhwm_kb_after_sync") or r.get("vmhwm_kb_at_render")
        mem = f"{hwm / 1024:.0f} MiB" if hwm else "—"
        if r.get("vmrss_kb_end"):
            mem += f" (VmRSS {r['vmrss_kb_end'] / 1024:.0f} MiB)"
        b = r.get("baseline")
        bl = f"{b['p50_us']:.0f}" if b and b.get("ok") else "—"
        lines.append(f"| {r['rule_set']} | {r['services']:,} | {sync} | {change} | {fmt_fp(fp)} | {bl} | {ratio} "
                     f"| {text} | {mem} |")
    return "\n".join(lines) + "\n"


def save(a, results):
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "argv": sys.argv, "endpoints": a.endpoints,
            "connections": a.connections, "warmup": a.warmup, "timeout_s": a.timeout,
            "versions": a.versions}
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(markdown(a, results))


def versions():
    def out(cmd):
        r = run(cmd, check=False, capture_output=True)
        return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr) else "?"
    return {"kernel": os.uname().release, "nft": out(["nft", "--version"]),
            "iptables-legacy": out(["iptables-legacy", "--version"]),
            "iptables": out(["iptables", "--version"]), "cpus": os.cpu_count(),
            "model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100,1000,10000,30000")
    p.add_argument("--endpoints", type=int, default=10)
    p.add_argument("--binary", required=True, help="node-programmer binary")
    p.add_argument("--np-args", default="", help="extra node-programmer arguments (e.g. a future --proxy-mode iptables)")
    p.add_argument("--tcpping", required=True)
    p.add_argument("--iptables-bench", help="node-programmer's examples/iptables_bench binary "
                   "(rule set node-programmer-iptables)")
    p.add_argument("--iptables-flavour", default="legacy", choices=["legacy", "nft"],
                   help="iptables-restore flavour for node-programmer-iptables")
    p.add_argument("--work", required=True, help="scratch directory (manifests, captured transactions)")
    p.add_argument("--out", required=True, help="where results.json / results.md go")
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--timeout", type=float, default=300, help="stop any single load after this many seconds")
    p.add_argument("--changes", type=int, default=50)
    p.add_argument("--change-budget", type=float, default=120, help="seconds of one-Service changes per size")
    p.add_argument("--change-gap", type=float, default=1.3,
                   help="seconds between changes (> node-programmer's 1 s stale-chain delay)")
    p.add_argument("--rule-sets", default="kube-proxy-iptables,node-programmer",
                   help="comma list of baseline, kube-proxy-iptables, kube-proxy-iptables-nft, node-programmer, "
                   "node-programmer-iptables")
    p.add_argument("--capture-only", action="store_true",
                   help="run node-programmer only to capture its text for the shapes (no node-programmer row)")
    p.add_argument("--shapes", default=",".join(gen.SHAPES), help="comma list (empty: none) of " + ", ".join(gen.SHAPES))
    a = p.parse_args()
    a.rule_sets = a.rule_sets.split(",")
    a.capture_only = a.capture_only or "node-programmer" not in a.rule_sets
    a.shapes = [s for s in a.shapes.split(",") if s]
    a.np_args = a.np_args.split()
    a.versions = versions()
    global PIDFILE
    PIDFILE = os.path.join(a.work, "pids")
    os.makedirs(a.out, exist_ok=True)
    os.makedirs(os.path.join(a.work, "fakebin"), exist_ok=True)
    for prog in ("nft", "iptables-restore", "iptables-legacy-restore", "iptables-nft-restore"):
        link = os.path.join(a.work, "fakebin", prog)
        if not os.path.lexists(link):
            os.symlink(os.path.join(HERE, "capture-wrapper"), link)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    results = []
    try:
        for n in [int(s) for s in a.sizes.split(",")]:
            run_size(a, n, a.work, results)
    finally:
        kill_started()
        delete_namespaces()
    md = markdown(a, results)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""lb-controller benchmark, standalone mode (manifest directory + state directory).

    bench.py BINARY [--latency N] [--bulk N]

1. latency: the controller runs; N Services are created one after another (one file each, written
   atomically); for each, the time from the rename to the moment its state file
   (`state/services/default/<name>.yaml`, written after the claim) shows an `ingress` IP. p50/p99/max.
2. bulk: N Services (one file each; `--one-file` puts them in one multi-document file) written
   before the controller starts; the time from start until
   every one has an IP in its state file (claims included: N files created with link(2)), and the
   controller's RSS (VmRSS, VmHWM) once done.
Prints a Markdown table. Everything lives in a temporary directory, removed at the end.
"""
import argparse, os, shutil, signal, statistics, subprocess, sys, tempfile, time

POOL = """apiVersion: drawbridge.dev/v1alpha1
kind: IPAddressPool
metadata: {name: bench}
spec: {addresses: [198.18.0.0/16]}
"""

def svc(name, i):
    return (f"apiVersion: v1\nkind: Service\nmetadata:\n  namespace: default\n  name: {name}\n"
            f"  uid: uid-{name}\n  creationTimestamp: \"2026-01-01T00:00:00Z\"\n"
            f"spec: {{type: LoadBalancer, selector: {{app: {name}}}, ports: [{{port: 80}}]}}\n")

def has_ip(path):
    try:
        with open(path) as f:
            return "ip:" in f.read()
    except FileNotFoundError:
        return False

def start(binary, manifests, state):
    return subprocess.Popen([binary, "--manifests", manifests, "--state-dir", state,
                             "--metrics-addr", "off"], env={**os.environ, "RUST_LOG": "warn"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

def rss_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                k, v = line.split(":")
                out[k] = int(v.split()[0])
    return out

def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]

def latency(binary, n):
    root = tempfile.mkdtemp(prefix=f"lbbench-{os.getpid()}-")
    try:
        manifests, state = os.path.join(root, "m"), os.path.join(root, "s")
        os.makedirs(manifests)
        with open(os.path.join(manifests, "pool.yaml"), "w") as f:
            f.write(POOL)
        proc = start(binary, manifests, state)
        try:
            time.sleep(1.0)
            out = []
            for i in range(n):
                name = f"lat-{i:05d}"
                tmp = os.path.join(manifests, f".{name}.tmp")
                with open(tmp, "w") as f:
                    f.write(svc(name, i))
                status = os.path.join(state, "services", "default", f"{name}.yaml")
                t0 = time.perf_counter()
                os.rename(tmp, os.path.join(manifests, f"{name}.yaml"))
                deadline = t0 + 10
                while not has_ip(status):
                    if time.perf_counter() > deadline:
                        sys.exit(f"{name}: no IP within 10 s")
                    time.sleep(0.0002)
                out.append((time.perf_counter() - t0) * 1000)
            return out
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
    finally:
        shutil.rmtree(root)

def bulk(binary, n, one_file):
    root = tempfile.mkdtemp(prefix=f"lbbench-{os.getpid()}-")
    try:
        manifests, state = os.path.join(root, "m"), os.path.join(root, "s")
        os.makedirs(manifests)
        with open(os.path.join(manifests, "pool.yaml"), "w") as f:
            f.write(POOL)
        if one_file:
            with open(os.path.join(manifests, "services.yaml"), "w") as f:
                f.write("---\n".join(svc(f"bulk-{i:05d}", i) for i in range(n)))
        else:
            for i in range(n):
                with open(os.path.join(manifests, f"bulk-{i:05d}.yaml"), "w") as f:
                    f.write(svc(f"bulk-{i:05d}", i))
        claims = os.path.join(state, "ipaddressclaims")
        statuses = os.path.join(state, "services", "default")
        t0 = time.perf_counter()
        proc = start(binary, manifests, state)
        try:
            while True:
                done = len(os.listdir(statuses)) if os.path.isdir(statuses) else 0
                if done >= n:
                    break
                if time.perf_counter() - t0 > 120:
                    sys.exit(f"bulk: only {done}/{n} statuses after 120 s")
                time.sleep(0.01)
            elapsed = time.perf_counter() - t0
            time.sleep(0.5)
            mem = rss_kib(proc.pid)
            missing = [x for x in os.listdir(statuses) if not has_ip(os.path.join(statuses, x))]
            n_claims = len([c for c in os.listdir(claims) if c.endswith(".claim")])
            if missing or n_claims != n:
                sys.exit(f"bulk: {len(missing)} statuses without IP, {n_claims} claims")
            return elapsed, mem, n_claims
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
    finally:
        shutil.rmtree(root)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--latency", type=int, default=1000)
    ap.add_argument("--bulk", type=int, default=10000)
    ap.add_argument("--one-file", action="store_true")
    a = ap.parse_args()
    lat = latency(a.binary, a.latency)
    print(f"| create → IP in status (n={len(lat)}) | p50 {pct(lat, 50):.1f} ms | "
          f"p99 {pct(lat, 99):.1f} ms | max {max(lat):.1f} ms | mean {statistics.mean(lat):.1f} ms |")
    elapsed, mem, n_claims = bulk(a.binary, a.bulk, a.one_file)
    layout = "one file" if a.one_file else "one file each"
    print(f"| {a.bulk} Services ({layout}) from cold start to every IP in status ({n_claims} claims) | "
          f"{elapsed:.2f} s | RSS {mem['VmRSS'] / 1024:.1f} MiB | peak {mem['VmHWM'] / 1024:.1f} MiB |")

if __name__ == "__main__":
    main()

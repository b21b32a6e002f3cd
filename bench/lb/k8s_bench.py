#!/usr/bin/env python3
"""lb-controller benchmark, Kubernetes mode: the real binary against the API double over HTTP.

    k8s_bench.py LB_CONTROLLER API_DOUBLE [--latency N] [--bulk N]

The API double (tests/api-double) stands in for the API server: list + watch + status PATCH +
IPAddressClaim POST, all over real HTTP on loopback. One lb-controller, leader election off
(`--leader-election=false`: one replica, no Lease wait in the numbers).
1. latency: N Services POSTed one after another; for each, the time from the POST's start to the
   watch event (a watch on Services opened before, read in a thread) that shows an `ingress` IP in
   its status. p50/p99/max.
2. bulk: N Services POSTed before the controller starts; the time from its start until the watch
   has seen an IP for every one, then the number of IPAddressClaims, the controller's RSS, and the
   CPU seconds the controller and the API double each spent meanwhile (they share the machine).
Prints Markdown table rows. The double and the controller are stopped at the end.
"""
import argparse, http.client, json, os, signal, subprocess, sys, tempfile, threading, time

from bench import pct, rss_kib  # same directory

POOL = {"apiVersion": "drawbridge.dev/v1alpha1", "kind": "IPAddressPool",
        "metadata": {"name": "bench"}, "spec": {"addresses": ["198.18.0.0/16"]}}


def service(name):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "default", "name": name},
            "spec": {"type": "LoadBalancer", "selector": {"app": name},
                     "ports": [{"port": 80, "protocol": "TCP"}]}}


class Api:
    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)

    def request(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=data,
                          headers={"Content-Type": "application/json"} if data else {})
        resp = self.conn.getresponse()
        out = resp.read()
        if resp.status >= 300:
            sys.exit(f"{method} {path}: {resp.status} {out[:300]!r}")
        return json.loads(out) if out else None


class Watcher(threading.Thread):
    """Reads a Service watch; records the first time each name shows an ingress IP."""

    def __init__(self, addr, rv):
        super().__init__(daemon=True)
        host, port = addr.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=600)
        self.conn.request("GET", f"/api/v1/services?watch=true&resourceVersion={rv}")
        self.resp = self.conn.getresponse()
        self.seen = {}
        self.cond = threading.Condition()

    def run(self):
        for line in self.resp:
            if not line.strip():
                continue
            ev = json.loads(line)
            obj = ev.get("object", {})
            ingress = (obj.get("status", {}).get("loadBalancer", {}).get("ingress") or [])
            if any("ip" in i for i in ingress):
                name = obj["metadata"]["name"]
                with self.cond:
                    if name not in self.seen:
                        self.seen[name] = time.perf_counter()
                        self.cond.notify_all()

    def wait_for(self, pred, timeout):
        deadline = time.perf_counter() + timeout
        with self.cond:
            while not pred(self.seen):
                left = deadline - time.perf_counter()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True


def cpu_s(pid):
    """User + system CPU seconds of a process so far (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_double(binary, tmp):
    kubeconfig = os.path.join(tmp, "kubeconfig")
    proc = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--kubeconfig-out", kubeconfig],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("listening on http://"):
            return proc, line.strip().removeprefix("listening on http://"), kubeconfig
    sys.exit("api-double did not start")


def start_controller(binary, kubeconfig):
    wrap = os.environ.get("LBC_WRAP", "").split()  # e.g. "perf record -g -o /tmp/lbc.data --"
    return subprocess.Popen([*wrap, binary, "--leader-election=false", "--metrics-addr", "off"],
                            env={**os.environ, "RUST_LOG": "warn", "KUBECONFIG": kubeconfig,
                                 "POD_NAME": "bench", "POD_NAMESPACE": "default"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(*procs):
    for p in procs:
        if p and p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        if p:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


def list_rv(api, path):
    return api.request("GET", path)["metadata"]["resourceVersion"]


def latency(lbc, double, n):
    with tempfile.TemporaryDirectory(prefix="lbk8s-") as tmp:
        dproc, addr, kubeconfig = start_double(double, tmp)
        ctl = None
        try:
            api = Api(addr)
            api.request("POST", "/apis/drawbridge.dev/v1alpha1/ipaddresspools", POOL)
            ctl = start_controller(lbc, kubeconfig)
            time.sleep(1.5)
            watch = Watcher(addr, list_rv(api, "/api/v1/services"))
            watch.start()
            out = []
            for i in range(n):
                name = f"lat-{i:05d}"
                t0 = time.perf_counter()
                api.request("POST", "/api/v1/namespaces/default/services", service(name))
                if not watch.wait_for(lambda s: name in s, 10):
                    sys.exit(f"{name}: no IP within 10 s")
                out.append((watch.seen[name] - t0) * 1000)
            return out
        finally:
            stop(ctl, dproc)


def bulk(lbc, double, n):
    with tempfile.TemporaryDirectory(prefix="lbk8s-") as tmp:
        dproc, addr, kubeconfig = start_double(double, tmp)
        ctl = None
        try:
            api = Api(addr)
            api.request("POST", "/apis/drawbridge.dev/v1alpha1/ipaddresspools", POOL)
            for i in range(n):
                api.request("POST", "/api/v1/namespaces/default/services", service(f"bulk-{i:05d}"))
            watch = Watcher(addr, list_rv(api, "/api/v1/services"))
            watch.start()
            double_cpu0 = cpu_s(dproc.pid)
            t0 = time.perf_counter()
            ctl = start_controller(lbc, kubeconfig)
            if not watch.wait_for(lambda s: len(s) >= n, 300):
                sys.exit(f"bulk: only {len(watch.seen)}/{n} IPs after 300 s")
            elapsed = max(watch.seen.values()) - t0
            cpu = (cpu_s(ctl.pid), cpu_s(dproc.pid) - double_cpu0)
            time.sleep(0.5)
            mem = rss_kib(ctl.pid)
            claims = len(api.request("GET", "/apis/drawbridge.dev/v1alpha1/ipaddressclaims")["items"])
            ips = [s["status"]["loadBalancer"]["ingress"][0]["ip"]
                   for s in api.request("GET", "/api/v1/namespaces/default/services")["items"]]
            if claims != n or len(set(ips)) != n:
                sys.exit(f"bulk: {claims} claims, {len(set(ips))} distinct IPs for {n} Services")
            return elapsed, mem, claims, cpu
        finally:
            stop(ctl, dproc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("lb_controller")
    ap.add_argument("api_double")
    ap.add_argument("--latency", type=int, default=1000)
    ap.add_argument("--bulk", type=int, default=10000)
    a = ap.parse_args()
    if a.latency:
        lat = latency(a.lb_controller, a.api_double, a.latency)
        print(f"| Kubernetes mode: create → IP in status (n={len(lat)}) | p50 {pct(lat, 50):.1f} ms | "
              f"p99 {pct(lat, 99):.1f} ms | max {max(lat):.1f} ms |", flush=True)
    if a.bulk:
        elapsed, mem, claims, cpu = bulk(a.lb_controller, a.api_double, a.bulk)
        print(f"| Kubernetes mode: {a.bulk} Services, controller start → every IP in status "
              f"({claims} claims) | {elapsed:.2f} s | RSS {mem['VmRSS'] / 1024:.1f} MiB | "
              f"peak {mem['VmHWM'] / 1024:.1f} MiB | CPU: controller {cpu[0]:.2f} s, "
              f"API double {cpu[1]:.2f} s |")


if __name__ == "__main__":
    main()

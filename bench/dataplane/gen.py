#!/usr/bin/env python3
"""Generate the dataplane bench inputs for N Services x E endpoints.

    gen.py manifests  --services N --endpoints E --out DIR
        Services (with clusterIP) + EndpointSlices for `node-programmer --manifests DIR`:
        DIR/services/services-NNN.yaml (1,000 Services per file) and
        DIR/endpointslices/svc-NNNNN.yaml (one EndpointSlice per file, so a one-Service change
        rewrites one small file).
    gen.py iptables   --services N --endpoints E --out FILE
        The same Services in kube-proxy's iptables layout (pkg/proxy/iptables/proxier.go), as an
        `iptables-restore --noflush` input.
    gen.py nft-shape  --shape SHAPE --in OURS.nft --out FILE
        Rewrites node-programmer's own transaction (captured by the nft wrapper) into an alternative
        nftables shape for the redesign comparison; everything but the per-Service chains is kept.
    gen.py target     --services N --endpoints E
        Prints "CLUSTER_IP PORT ENDPOINT_PORTS" of the last Service (the connect-latency target).

Addresses (RFC 2544 benchmarking space): ClusterIPs from 198.18.0.0/16 (Service i gets
198.18.0.0 + i + 1), endpoints from 198.19.0.0/16. 30,000 x 10 endpoints do not fit in one /16,
so Services come in blocks of floor(65534 / E): within a block endpoint addresses are unique,
and block b uses target port 8080 + b (an EndpointSlice has one port list, so one port per
Service). Every (address, port) endpoint is unique.

Everything is deterministic: the same arguments give byte-identical output.
"""

import argparse
import base64
import hashlib
import ipaddress
import os
import re
import sys

NAMESPACE = "bench"
PORT_NAME = "http"
SERVICE_PORT = 80
BASE_TARGET_PORT = 8080
CLUSTER_IP_BASE = int(ipaddress.IPv4Address("198.18.0.0"))
ENDPOINT_BASE = int(ipaddress.IPv4Address("198.19.0.0"))
SERVICES_PER_FILE = 1000
# kube-proxy drops rule comments above this many endpoints ("large cluster mode",
# largeClusterEndpointsThreshold in pkg/proxy/iptables/proxier.go).
LARGE_CLUSTER_ENDPOINTS = 1000


def ip(n):
    return str(ipaddress.IPv4Address(n))


def service_name(i):
    return f"svc-{i:05d}"


def cluster_ip(i):
    if i + 1 > 65534:
        raise SystemExit("more than 65,534 Services do not fit in 198.18.0.0/16")
    return ip(CLUSTER_IP_BASE + i + 1)


def endpoints(i, e):
    """[(ip, port)] of Service i: unique across all Services (see module doc)."""
    per_block = 65534 // e
    block, slot = divmod(i, per_block)
    port = BASE_TARGET_PORT + block
    return [(ip(ENDPOINT_BASE + slot * e + j + 1), port) for j in range(e)]


def target_ports(n, e):
    return sorted({p for i in range(n) for _, p in endpoints(i, e)[:1]})


# === manifests ===


def service_yaml(i):
    cip = cluster_ip(i)
    return (
        "apiVersion: v1\n"
        "kind: Service\n"
        f"metadata: {{name: {service_name(i)}, namespace: {NAMESPACE}}}\n"
        "spec:\n"
        "  type: ClusterIP\n"
        f"  clusterIP: {cip}\n"
        f"  clusterIPs: [{cip}]\n"
        "  ipFamilies: [IPv4]\n"
        f"  selector: {{app: {service_name(i)}}}\n"
        f"  ports: [{{name: {PORT_NAME}, port: {SERVICE_PORT}, protocol: TCP, targetPort: {PORT_NAME}}}]\n"
    )


def slice_yaml(i, eps, generation=0):
    name = service_name(i)
    lines = [
        "apiVersion: discovery.k8s.io/v1",
        "kind: EndpointSlice",
        "metadata:",
        f"  name: {name}-abcde",
        f"  namespace: {NAMESPACE}",
        f"  labels: {{kubernetes.io/service-name: {name}}}",
        f"  annotations: {{bench/generation: \"{generation}\"}}",
        "addressType: IPv4",
        f"ports: [{{name: {PORT_NAME}, port: {eps[0][1]}, protocol: TCP}}]",
        "endpoints:",
    ]
    for k, (addr, _) in enumerate(eps):
        lines.append(
            f"- {{addresses: [{addr}], nodeName: node-{(i + k) % 100}, "
            "conditions: {ready: true, serving: true, terminating: false}}"
        )
    return "\n".join(lines) + "\n"


def changed_endpoints(i, e, generation):
    """Endpoints of Service i after change number `generation`: the last endpoint alternates
    between its own address and one from 198.19.255.0/24, so every write changes one endpoint."""
    eps = endpoints(i, e)
    if generation % 2 == 1:
        addr, port = eps[-1]
        eps[-1] = (ip(ENDPOINT_BASE + 0xFF00 + (i % 250) + 1), port)
    return eps


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def gen_manifests(n, e, out):
    os.makedirs(os.path.join(out, "services"), exist_ok=True)
    os.makedirs(os.path.join(out, "endpointslices"), exist_ok=True)
    for start in range(0, n, SERVICES_PER_FILE):
        docs = [service_yaml(i) for i in range(start, min(n, start + SERVICES_PER_FILE))]
        path = os.path.join(out, "services", f"services-{start // SERVICES_PER_FILE:03d}.yaml")
        with open(path, "w") as f:
            f.write("---\n".join(docs))
    for i in range(n):
        with open(slice_path(out, i), "w") as f:
            f.write(slice_yaml(i, endpoints(i, e)))


def slice_path(out, i):
    return os.path.join(out, "endpointslices", f"{service_name(i)}.yaml")


# === kube-proxy iptables layout ===


def kp_hash(text):
    """kube-proxy portProtoHash / servicePortEndpointChainName: base32(sha256(text))[:16]."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def gen_iptables(n, e, out):
    """kube-proxy's iptables layout for ClusterIP Services with Cluster policy, as
    syncProxyRules writes it (no --cluster-cidr, so no "masquerade off-cluster ClusterIP
    traffic" rule, matching node-programmer, which has no local-traffic detector either).
    Written for `iptables-restore --noflush`, with the builtin-chain jumps kube-proxy installs
    with `iptables -I` added at the end of each table section."""
    comments = n * e <= LARGE_CLUSTER_ENDPOINTS

    def c(text):
        return f'-m comment --comment "{text}" ' if comments else ""

    filt = [
        "*filter",
        ":KUBE-SERVICES - [0:0]",
        ":KUBE-EXTERNAL-SERVICES - [0:0]",
        ":KUBE-FORWARD - [0:0]",
        ":KUBE-NODEPORTS - [0:0]",
        ":KUBE-PROXY-FIREWALL - [0:0]",
        '-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP',
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT',
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
        '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        '-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS',
        '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES',
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES',
        '-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        '-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        "COMMIT",
    ]
    chains = [":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]", ":KUBE-POSTROUTING - [0:0]",
              ":KUBE-MARK-MASQ - [0:0]"]
    rules = []
    services_rules = []
    for i in range(n):
        name = service_name(i)
        spn = f"{NAMESPACE}/{name}:{PORT_NAME}"
        svc_chain = "KUBE-SVC-" + kp_hash(spn + "tcp")
        chains.append(f":{svc_chain} - [0:0]")
        services_rules.append(
            f"-A KUBE-SERVICES {c(spn + ' cluster IP')}-m tcp -p tcp -d {cluster_ip(i)} "
            f"--dport {SERVICE_PORT} -j {svc_chain}"
        )
        eps = endpoints(i, e)
        sep_rules = []
        for k, (addr, port) in enumerate(eps):
            ep = f"{addr}:{port}"
            sep = "KUBE-SEP-" + kp_hash(spn + "tcp" + ep)
            chains.append(f":{sep} - [0:0]")
            remaining = len(eps) - k
            prob = "" if remaining == 1 else f"-m statistic --mode random --probability {1.0 / remaining:0.10f} "
            rules.append(f"-A {svc_chain} {c(spn + ' -> ' + ep)}{prob}-j {sep}")
            sep_rules.append(f"-A {sep} {c(spn)}-s {addr}/32 -j KUBE-MARK-MASQ")
            sep_rules.append(f"-A {sep} {c(spn)}-m tcp -p tcp -j DNAT --to-destination {ep}")
        rules.extend(sep_rules)
    nat = ["*nat"] + chains
    nat += [
        '-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN',
        '-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000',
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
        '-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000',
    ]
    nat += services_rules
    nat.append(
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the '
        'last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS'
    )
    nat += rules
    nat += [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "COMMIT",
    ]
    with open(out, "w") as f:
        f.write("\n".join(filt + nat) + "\n")


# === alternative nftables shapes, derived from node-programmer's own text ===

SHAPES = {
    "numgen-goto": "per-Service chain of `numgen random mod (n-i) 0 goto endpoint-…` rules instead "
    "of one anonymous `numgen … vmap { … }`; endpoint chains kept (exact hairpin, room for affinity)",
    "numgen-dnat": "per-Service chain of `numgen random mod (n-i) 0 dnat to ep_i` rules; no endpoint "
    "chains, no anonymous sets (hairpin masquerade NOT handled)",
    "numgen-dnat-hairpin": "numgen-dnat plus one named set `hairpin` (ipv4_addr . ipv4_addr, one "
    "element per endpoint) matched in nat-postrouting: `ct status dnat ip saddr . ip daddr @hairpin`",
    "skeleton": "floor, not a proxy: the maps/sets with all their elements and one EMPTY chain per "
    "Service (no endpoint chains, no rules): what any shape keeping these maps pays",
}

CHAIN_RE = re.compile(r"^\tchain (\S+) \{$")
VMAP_RE = re.compile(r"^\t\tnumgen random mod (\d+) vmap \{ (.*) \}$")
DNAT_RE = re.compile(r"^\t\tmeta l4proto (\w+) dnat to (\S+):(\d+)$")


def split_chains(text):
    """Yields ('chain', name, [lines]) for every `\\tchain NAME {` block and ('text', None,
    [lines]) for everything in between. Relies on render.rs's layout: one tab before `chain`,
    two before rules, `\\t}` closing."""
    lines = text.split("\n")
    out, i = [], 0
    plain = []
    while i < len(lines):
        m = CHAIN_RE.match(lines[i])
        if not m:
            plain.append(lines[i])
            i += 1
            continue
        if plain:
            out.append(("text", None, plain))
            plain = []
        j = i + 1
        while lines[j] != "\t}":
            j += 1
        out.append(("chain", m.group(1), lines[i:j + 1]))
        i = j + 1
    if plain:
        out.append(("text", None, plain))
    return out


def numgen_rules(targets):
    """Uniform choice among `targets` (rule tails) with one random draw per rule, as
    kube-proxy's iptables `--probability 1/(n-i)` chain: rule i fires with 1/(n-i)."""
    n = len(targets)
    rules = []
    for k, tail in enumerate(targets):
        remaining = n - k
        rules.append(f"\t\t{tail}" if remaining == 1 else f"\t\tnumgen random mod {remaining} 0 {tail}")
    return rules


def gen_shape(shape, text):
    if shape not in SHAPES:
        raise SystemExit(f"unknown shape {shape}; known: {', '.join(SHAPES)}")
    blocks = split_chains(text)
    dnat = {}
    for kind, name, lines in blocks:
        if kind == "chain" and name.startswith("endpoint-"):
            for line in lines:
                m = DNAT_RE.match(line)
                if m:
                    dnat[name] = (m.group(1), m.group(2), m.group(3))
    out = []
    hairpin = set()
    for kind, name, lines in blocks:
        if kind == "chain" and name.startswith("endpoint-") and shape != "numgen-goto":
            continue
        if kind == "chain" and shape == "skeleton" and VMAP_RE.match(lines[1] if len(lines) > 2 else ""):
            out.append("\n".join([lines[0], lines[-1]]))
            continue
        if kind == "chain":
            new = [lines[0]]
            for line in lines[1:-1]:
                m = VMAP_RE.match(line)
                if not m:
                    new.append(line)
                    continue
                arms = [a.split(" : goto ")[1] for a in m.group(2).split(", ")]
                if shape == "numgen-goto":
                    new += numgen_rules([f"goto {a}" for a in arms])
                else:
                    tails = []
                    for a in arms:
                        proto, addr, port = dnat[a]
                        tails.append(f"meta l4proto {proto} dnat to {addr}:{port}")
                        hairpin.add(addr)
                    new += numgen_rules(tails)
            if shape == "numgen-dnat-hairpin" and name == "masquerading":
                # Before the mark check: hairpin traffic carries no mark in this shape.
                new.insert(1, "\t\tct status dnat ip saddr . ip daddr @hairpin masquerade fully-random")
            new.append(lines[-1])
            out.append("\n".join(new))
        else:
            out.append("\n".join(lines))
    result = "\n".join(out)
    if shape == "numgen-dnat-hairpin":
        elems = ",\n".join(f"\t\t\t{a} . {a}" for a in sorted(hairpin, key=lambda s: ipaddress.IPv4Address(s)))
        decl = f"\n\tset hairpin {{\n\t\ttype ipv4_addr . ipv4_addr\n\t\telements = {{\n{elems}\n\t\t}}\n\t}}\n"
        # Sets before chains that use them.
        head, sep, rest = result.partition("\n\tchain ")
        result = head + decl + sep + rest
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["manifests", "iptables", "nft-shape", "target", "change"])
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--endpoints", type=int, default=10)
    p.add_argument("--out")
    p.add_argument("--in", dest="inp")
    p.add_argument("--shape")
    p.add_argument("--service", type=int, help="change: which Service")
    p.add_argument("--generation", type=int, default=1, help="change: change number")
    a = p.parse_args()
    if a.what == "manifests":
        gen_manifests(a.services, a.endpoints, a.out)
    elif a.what == "iptables":
        gen_iptables(a.services, a.endpoints, a.out)
    elif a.what == "nft-shape":
        with open(a.inp) as f:
            text = f.read()
        with open(a.out, "w") as f:
            f.write(gen_shape(a.shape, text))
    elif a.what == "change":
        write_atomic(slice_path(a.out, a.service),
                     slice_yaml(a.service, changed_endpoints(a.service, a.endpoints, a.generation), a.generation))
    elif a.what == "target":
        last = a.services - 1
        ports = sorted({port for _, port in endpoints(last, a.endpoints)})
        print(cluster_ip(last), SERVICE_PORT, ",".join(map(str, ports)))


if __name__ == "__main__":
    sys.exit(main())

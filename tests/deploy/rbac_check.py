#!/usr/bin/env python3
"""RBAC in the rendered install versus the API calls drawbridge's code makes.

    rendered YAML ──(Cluster)RoleBindings → ServiceAccount = component──> granted (verb, group, resource[/sub], scope)
    EXPECTED table (below) ─┬─ every entry must be granted, nothing else may be      (--static)
                            └─ must cover what the Rust code uses (Kind::X reads, status patches,
                               Events, the Lease) — a scan of */src, so the table cannot drift
    recorded calls (JSON lines from the API double) ── each must be granted           (CALLS.jsonl)

Usage:
    rbac_check.py RENDERED.yaml CALLS.jsonl   check recorded calls (target/k8s-mode/api-calls.jsonl)
    rbac_check.py --static RENDERED.yaml      check the table against the roles and the code
    rbac_check.py --self-test                 prove the checks fail when they should

A recorded call is one JSON object per line:
    {"component": "lb-controller", "verb": "patch", "group": "", "resource": "services",
     "subresource": "status"}
with optional "namespace" ("" = cluster-wide / all namespaces; absent = any namespace a binding of the
component covers — the recorder does not always know) and "name" (checked against resourceNames).
Verbs are RBAC verbs: a `?watch=true` list is "watch", a PUT is "update".

Output: `ok - …` / `not ok - …` lines (TAP-like); exit status 1 if any check failed.
"""

import json
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "drawbridge-system"
# component → its ServiceAccount (in NAMESPACE) and the crate whose code it runs.
COMPONENTS = {
    "lb-controller": {"service_account": "lb-controller", "crate": "lb-controller"},
    "node-programmer": {"service_account": "node-programmer", "crate": "node-programmer"},
    "ingress-gateway": {"service_account": "ingress-gateway", "crate": "ingress-gateway"},
}

CLUSTER = ""  # scope of a grant or call that spans all namespaces (or is cluster-scoped)
READ = ("list", "watch")  # kube-runtime watchers: an initial list, then watches
EVENTS = [(v, g, "events", "", CLUSTER) for g in ("events.k8s.io", "") for v in ("create", "patch")]

# What each component calls: component → [(verb, group, resource, subresource, namespace)].
# This is the agreed contract; `--static` checks it against the roles (both ways: nothing missing,
# nothing extra) and against the code (scan below). Change it together with deploy/base/*.yaml.
EXPECTED = {
    "lb-controller": [
        *[(v, "", "services", "", CLUSTER) for v in READ],
        *[(v, "drawbridge.dev", "ipaddresspools", "", CLUSTER) for v in READ],
        *[(v, "", "namespaces", "", CLUSTER) for v in READ],
        # L2 announcement: Nodes, EndpointSlices (ETP=Local), L2Announcements; the Service
        # annotation drawbridge.dev/announcing-node (metadata merge patch).
        *[(v, "", "nodes", "", CLUSTER) for v in READ],
        *[(v, "discovery.k8s.io", "endpointslices", "", CLUSTER) for v in READ],
        *[(v, "drawbridge.dev", "l2announcements", "", CLUSTER) for v in READ],
        ("patch", "", "services", "", CLUSTER),
        *[(v, "drawbridge.dev", "ipaddressclaims", "", CLUSTER) for v in ("list", "get", "create", "delete")],
        ("patch", "drawbridge.dev", "ipaddresspools", "status", CLUSTER),
        ("patch", "", "services", "status", CLUSTER),
        *EVENTS,
        # Leader election (kube-lease-manager): the Lease drawbridge-lb-controller in its namespace.
        *[(v, "coordination.k8s.io", "leases", "", NAMESPACE)
          for v in ("get", "list", "watch", "create", "update", "patch")],
    ],
    "node-programmer": [
        *[(v, "", "services", "", CLUSTER) for v in READ],
        *[(v, "discovery.k8s.io", "endpointslices", "", CLUSTER) for v in READ],
        *[(v, "", "nodes", "", CLUSTER) for v in ("get", "list", "watch")],
        *EVENTS,
    ],
    "ingress-gateway": [
        *[(v, "networking.k8s.io", r, "", CLUSTER) for r in ("ingresses", "ingressclasses") for v in READ],
        *[(v, "", "services", "", CLUSTER) for v in READ],
        *[(v, "discovery.k8s.io", "endpointslices", "", CLUSTER) for v in READ],
        # Field selector type=kubernetes.io/tls in the code; RBAC cannot express that.
        *[(v, "", "secrets", "", CLUSTER) for v in ("get", "list", "watch")],
        ("patch", "networking.k8s.io", "ingresses", "status", CLUSTER),
        *EVENTS,
    ],
}

# resources::Kind → (API group, plural); mirrors Kind::api_version / Kind::plural in
# resources/src/source/mod.rs (a Kind missing here fails the code scan).
KINDS = {
    "Service": ("", "services"),
    "EndpointSlice": ("discovery.k8s.io", "endpointslices"),
    "Ingress": ("networking.k8s.io", "ingresses"),
    "IngressClass": ("networking.k8s.io", "ingressclasses"),
    "Secret": ("", "secrets"),
    "Node": ("", "nodes"),
    "IPAddressPool": ("drawbridge.dev", "ipaddresspools"),
    "L2Announcement": ("drawbridge.dev", "l2announcements"),
}


# === results ===

class Report:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
            print(f"ok - {what}")
        else:
            self.failed += 1
            print(f"not ok - {what}" + (f": {detail}" if detail else ""))
        return ok


# === rendered RBAC ===

def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def grants(docs):
    """component → list of (rule, scope, role name) from the bindings of its ServiceAccount."""
    roles = {}
    for d in docs:
        if d.get("kind") == "ClusterRole":
            roles[("ClusterRole", d["metadata"]["name"])] = d.get("rules") or []
        elif d.get("kind") == "Role":
            roles[("Role", d["metadata"]["name"], d["metadata"].get("namespace"))] = d.get("rules") or []
    by_sa = {(NAMESPACE, c["service_account"]): name for name, c in COMPONENTS.items()}
    out = {name: [] for name in COMPONENTS}
    for d in docs:
        kind = d.get("kind")
        if kind not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        ref = d["roleRef"]
        if kind == "ClusterRoleBinding":
            scope = CLUSTER
            rules = roles.get(("ClusterRole", ref["name"]))
        else:
            scope = d["metadata"].get("namespace")
            rules = (roles.get(("ClusterRole", ref["name"])) if ref["kind"] == "ClusterRole"
                     else roles.get(("Role", ref["name"], scope)))
        for s in d.get("subjects") or []:
            component = by_sa.get((s.get("namespace"), s.get("name"))) if s.get("kind") == "ServiceAccount" else None
            if component is not None and rules is not None:
                out[component].extend((rule, scope, ref["name"]) for rule in rules)
    return out


def allowed(component_grants, verb, group, resource, subresource, namespace=None, name=None):
    """Whether one call is allowed. namespace None = unknown (any binding scope counts)."""
    full = f"{resource}/{subresource}" if subresource else resource
    for rule, scope, _ in component_grants:
        if namespace is not None and scope != CLUSTER and scope != namespace:
            continue
        if group not in (rule.get("apiGroups") or []) and "*" not in (rule.get("apiGroups") or []):
            continue
        if full not in (rule.get("resources") or []) and "*" not in (rule.get("resources") or []):
            continue
        if verb not in (rule.get("verbs") or []) and "*" not in (rule.get("verbs") or []):
            continue
        names = rule.get("resourceNames")
        if names and name not in names:
            continue
        return True
    return False


def granted_tuples(component_grants):
    """Every (verb, group, resource, subresource, scope) the grants spell out (wildcards kept)."""
    out = set()
    for rule, scope, _ in component_grants:
        for g in rule.get("apiGroups") or []:
            for r in rule.get("resources") or []:
                res, _, sub = r.partition("/")
                for v in rule.get("verbs") or []:
                    out.add((v, g, res, sub, scope))
    return out


def fmt(t):
    verb, group, resource, sub, *scope = t
    where = f" in {scope[0]}" if scope and scope[0] else ""
    return f"{verb} {group or 'core'}/{resource}{'/' + sub if sub else ''}{where}"


# === checks ===

def check_calls(report, docs, calls):
    g = grants(docs)
    denied = []
    for c in calls:
        comp = c.get("component")
        if comp not in g:
            denied.append(f"unknown component {comp!r} in {c}")
            continue
        if not allowed(g[comp], c["verb"], c.get("group", ""), c["resource"], c.get("subresource") or "",
                       c.get("namespace"), c.get("name")):
            denied.append(f"{comp}: {fmt((c['verb'], c.get('group', ''), c['resource'], c.get('subresource') or '', c.get('namespace') or ''))}")
    report.check(not denied, f"RBAC allows all {len(calls)} recorded API calls",
                 "; ".join(sorted(set(denied))))


def check_static(report, docs):
    g = grants(docs)
    for comp, expected in EXPECTED.items():
        missing = [fmt(t) for t in expected if not allowed(g[comp], t[0], t[1], t[2], t[3], t[4])]
        report.check(not missing, f"{comp}: RBAC grants every call in the table", ", ".join(missing))
        extra = sorted(fmt(t) for t in granted_tuples(g[comp]) - set(expected))
        report.check(not extra, f"{comp}: RBAC grants nothing beyond the table", ", ".join(extra))
        uncovered = [f"{fmt(t)} ({why})" for t, why in code_calls(comp)
                     if not any(t[:4] == e[:4] for e in expected)]
        report.check(not uncovered, f"{comp}: table covers the API calls found in {COMPONENTS[comp]['crate']}/src",
                     ", ".join(uncovered))


# === code scan ===

def code_calls(component):
    """(call, reason) pairs derived from the component's non-test Rust source. Heuristic by design:
    every `Kind::X` it names is read (list + watch), `patch_status` + `ObjectKey::…(Kind::X` in one
    file is a status patch, Events and the Lease are recognised by their APIs."""
    out = []
    for path in sorted((REPO / COMPONENTS[component]["crate"] / "src").rglob("*.rs")):
        if path.name == "tests.rs" or "tests" in path.relative_to(REPO).parts[2:-1]:
            continue
        text = path.read_text().split("#[cfg(test)]")[0]
        text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
        rel = path.relative_to(REPO)
        for kind in sorted(set(re.findall(r"\bKind::([A-Z]\w*)", text))):
            if kind not in KINDS:
                out.append((("list", "?", f"<Kind::{kind} unknown to rbac_check.py KINDS>", "", ""), str(rel)))
                continue
            group, plural = KINDS[kind]
            out += [((v, group, plural, "", ""), f"Kind::{kind} in {rel}") for v in READ]
        if "patch_status" in text:
            # An ObjectKey that goes into an Event (`Event::warning(key, …)` right after it) names
            # the object an Event is about, not a status target.
            targets = {m.group(1) for m in re.finditer(r"ObjectKey::\w+\(\s*Kind::([A-Z]\w*)", text)
                       if "Event::" not in text[m.end():m.end() + 250]}
            for kind in sorted(targets):
                if kind in KINDS:
                    group, plural = KINDS[kind]
                    out.append((("patch", group, plural, "status", ""), f"patch_status in {rel}"))
        if re.search(r"\bEventRecorder\b|\.events\b|\bEventSet\b|\bLastEvents\b", text):
            out.append((("create", "events.k8s.io", "events", "", ""), f"Events in {rel}"))
        if "kube_lease_manager" in text or "LeaseManager" in text:
            out += [((v, "coordination.k8s.io", "leases", "", ""), f"Lease in {rel}")
                    for v in ("get", "create", "patch")]
    return out


# === self-test ===

SELF_TEST_RBAC = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: r}
rules:
- {apiGroups: [""], resources: [services], verbs: [list, watch]}
- {apiGroups: [""], resources: [services/status], verbs: [patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: r}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: r}
subjects: [{kind: ServiceAccount, name: lb-controller, namespace: drawbridge-system}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: le, namespace: drawbridge-system}
rules:
- {apiGroups: [coordination.k8s.io], resources: [leases], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: le, namespace: drawbridge-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: le}
subjects: [{kind: ServiceAccount, name: lb-controller, namespace: drawbridge-system}]
"""


def self_test(report):
    docs = list(yaml.safe_load_all(SELF_TEST_RBAC))
    g = grants(docs)["lb-controller"]
    cases = [
        ("list services is allowed", True, ("list", "", "services", "", None)),
        ("patch services/status is allowed", True, ("patch", "", "services", "status", None)),
        ("patch services (no subresource) is denied", False, ("patch", "", "services", "", None)),
        ("get services is denied", False, ("get", "", "services", "", None)),
        ("list services in another API group is denied", False, ("list", "apps", "services", "", None)),
        ("get Lease in its namespace is allowed", True, ("get", "coordination.k8s.io", "leases", "", NAMESPACE)),
        ("get Lease, namespace unrecorded, is allowed", True, ("get", "coordination.k8s.io", "leases", "", None)),
        ("get Lease in another namespace is denied", False, ("get", "coordination.k8s.io", "leases", "", "default")),
        ("get Lease cluster-wide is denied", False, ("get", "coordination.k8s.io", "leases", "", CLUSTER)),
    ]
    for what, want, call in cases:
        report.check(allowed(g, *call) == want, f"self-test: {what}")
    # The whole path a calls file takes: a call missing from RBAC must fail the check.
    inner = Report()
    calls = [json.loads(line) for line in SELF_TEST_CALLS.strip().splitlines()]
    saved, sys.stdout = sys.stdout, open("/dev/null", "w")
    try:
        check_calls(inner, docs, calls[:2])
        check_calls(inner, docs, calls)
    finally:
        sys.stdout.close()
        sys.stdout = saved
    report.check((inner.passed, inner.failed) == (1, 1),
                 "self-test: a calls file with a call RBAC lacks (create events) fails, one without passes")
    # The static check must catch a role that lacks a table entry and one that grants extra.
    inner = Report()
    saved, sys.stdout = sys.stdout, open("/dev/null", "w")
    try:
        check_static(inner, docs)
    finally:
        sys.stdout.close()
        sys.stdout = saved
    report.check(inner.failed >= 3, "self-test: --static fails on the incomplete self-test RBAC")


SELF_TEST_CALLS = """
{"component": "lb-controller", "verb": "list", "group": "", "resource": "services"}
{"component": "lb-controller", "verb": "patch", "group": "", "resource": "services", "subresource": "status"}
{"component": "lb-controller", "verb": "create", "group": "events.k8s.io", "resource": "events"}
"""


def main(argv):
    report = Report()
    if argv[1:] == ["--self-test"]:
        self_test(report)
    elif len(argv) == 3 and argv[1] == "--static":
        check_static(report, load_docs(argv[2]))
    elif len(argv) == 3 and not argv[1].startswith("-"):
        with open(argv[2]) as f:
            calls = [json.loads(line) for line in f if line.strip()]
        check_calls(report, load_docs(argv[1]), calls)
    else:
        print(__doc__.strip().split("\n\n")[2], file=sys.stderr)
        return 2
    print(f"{report.passed} passed, {report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

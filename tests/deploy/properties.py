#!/usr/bin/env python3
"""Checks a rendered drawbridge install for what the install issue promises (schemas are checked
separately by kubernetes-validate; RBAC-versus-code by rbac_check.py).

    properties.py VARIANT RENDERED.yaml     VARIANT: base | keep-kube-proxy | replace-kube-proxy | dual-stack | l2

Output: `ok - …` / `not ok - …` lines and `N passed, M failed`; exit status 1 if any failed.
"""

import sys
from pathlib import Path

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "drawbridge-system"
IMAGE = "ghcr.io/drawbridge-dev/drawbridge"
# component → (workload kind, health/metrics port) — the fixed contract.
WORKLOADS = {
    "lb-controller": ("Deployment", 9500),
    "node-programmer": ("DaemonSet", 9501),
    "ingress-gateway": ("Deployment", 9502),
}
PASSED, FAILED = [0], [0]


def check(ok, what, detail=""):
    if ok:
        PASSED[0] += 1
        print(f"ok - {what}")
    else:
        FAILED[0] += 1
        print(f"not ok - {what}" + (f": {detail}" if detail else ""))


def ids_of(docs):
    return {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs}


def find(docs, kind, name):
    return next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name), None)


def container(workload):
    return workload["spec"]["template"]["spec"]["containers"][0]


def effective(pod, c, key):
    """A securityContext field as the kubelet applies it: container level over pod level."""
    return (c.get("securityContext") or {}).get(key, (pod.get("securityContext") or {}).get(key))


def unknown_fields(obj, schema, path=""):
    """Fields of `obj` a structural schema does not declare: the API server silently drops them."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(obj, dict) and "properties" in schema:
        out = []
        for k, v in obj.items():
            if k in schema["properties"]:
                out += unknown_fields(v, schema["properties"][k], f"{path}.{k}")
            elif not schema.get("additionalProperties"):
                out.append(f"{path}.{k}")
        return out
    if isinstance(obj, list) and "items" in schema:
        return [f for i, v in enumerate(obj) for f in unknown_fields(v, schema["items"], f"{path}[{i}]")]
    return []


def base_checks(docs, variant):
    def ids(paths):
        return {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for p in paths
                for d in yaml.safe_load_all(p.read_text()) if d and d.get("kind") and d.get("metadata")}
    # Objects only the lab's examples define (the examples also carry their own gateway Service).
    lab_only = ids(sorted((REPO / "deploy/examples").glob("*.yaml"))) - ids(sorted((REPO / "deploy/base").glob("*.yaml")))
    leaked = sorted("/".join(filter(None, i)) for i in lab_only & ids_of(docs))
    check(bool(lab_only) and not leaked, "nothing only deploy/examples defines is rendered", ", ".join(leaked))
    ns = find(docs, "Namespace", NAMESPACE)
    check(ns is not None, f"Namespace {NAMESPACE} exists")
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "IngressClass"}
    stray = [f"{d['kind']}/{d['metadata']['name']}" for d in docs
             if d["kind"] not in cluster_scoped and d["metadata"].get("namespace") != NAMESPACE]
    check(not stray, f"every namespaced object is in {NAMESPACE}", ", ".join(stray))

    # --- CRDs: apiextensions.k8s.io/v1, and exactly the committed generated set
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    generated = [d for d in yaml.safe_load_all((REPO / "deploy/base/crds.yaml").read_text()) if d]
    check(sorted(c["metadata"]["name"] for c in crds) == sorted(g["metadata"]["name"] for g in generated)
          and len(crds) > 0, "the generated CRDs (deploy/base/crds.yaml) are all rendered")
    for crd in crds:
        name = crd["metadata"]["name"]
        check(crd["apiVersion"] == "apiextensions.k8s.io/v1", f"CRD {name} is apiextensions.k8s.io/v1")
        versions = crd["spec"]["versions"]
        check(sum(1 for v in versions if v.get("storage")) == 1, f"CRD {name} has exactly one storage version")
        for v in versions:
            schema = v.get("schema", {}).get("openAPIV3Schema", {})
            check(schema.get("type") == "object", f"CRD {name} {v['name']}: structural schema (type: object)")
            # Kinds with a status (pools, announcements) need the subresource; IPAddressClaim has
            # none (like KEP-1880's IPAddress) and is only created and deleted.
            if "status" in schema.get("properties", {}):
                check("status" in (v.get("subresources") or {}), f"CRD {name} {v['name']}: status subresource")
    pool_crd = find(docs, "CustomResourceDefinition", "ipaddresspools.drawbridge.dev")
    if pool_crd:
        schema = pool_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        example = yaml.safe_load((REPO / "deploy/examples/pool.yaml").read_text())
        body = {k: v for k, v in example.items() if k in ("spec", "status")}
        try:
            jsonschema.validate(body, schema)
            check(True, "deploy/examples/pool.yaml validates against the IPAddressPool CRD schema")
        except jsonschema.ValidationError as e:
            check(False, "deploy/examples/pool.yaml validates against the IPAddressPool CRD schema", e.message)
        pruned = unknown_fields(body, schema)
        check(not pruned, "the API server would prune no field of deploy/examples/pool.yaml", ", ".join(pruned))

    # --- RBAC: no wildcards; Secrets only for the gateway; one ServiceAccount per component
    roles = [d for d in docs if d["kind"] in ("ClusterRole", "Role")]
    wild = [f"{r['kind']}/{r['metadata']['name']}" for r in roles for rule in r.get("rules") or []
            if any("*" in x for k in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs")
                   for x in rule.get(k) or [])]
    check(not wild, "no RBAC rule uses a wildcard", ", ".join(wild))
    secrets = sorted(f"{r['kind']}/{r['metadata']['name']}" for r in roles for rule in r.get("rules") or []
                     if any(x.split("/")[0] == "secrets" for x in rule.get("resources") or []))
    check(secrets == ["ClusterRole/drawbridge-ingress-gateway"], "only the gateway's ClusterRole names secrets",
          ", ".join(secrets))
    for comp in WORKLOADS:
        check(find(docs, "ServiceAccount", comp) is not None, f"ServiceAccount {comp} exists")

    # --- every workload: image, command, health endpoints on the contract port, requests
    for comp, (kind, port) in WORKLOADS.items():
        w = find(docs, kind, comp)
        check(w is not None, f"{kind} {comp} exists")
        if w is None:
            continue
        pod = w["spec"]["template"]["spec"]
        c = container(w)
        check(pod.get("serviceAccountName") == comp, f"{comp} runs as ServiceAccount {comp}")
        check(c["image"].rpartition(":")[0] == IMAGE and c.get("command") == [f"/usr/local/bin/{comp}"],
              f"{comp} runs /usr/local/bin/{comp} from {IMAGE}")
        check(f"--metrics-addr=0.0.0.0:{port}" in c.get("args", []), f"{comp} serves health/metrics on :{port}")
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = (c.get(probe) or {}).get("httpGet") or {}
            target = ports.get(get.get("port"), get.get("port"))
            check(get.get("path") == path and target == port, f"{comp} {probe} GET {path} on :{port}")
        req = (c.get("resources") or {}).get("requests") or {}
        check("cpu" in req and "memory" in req, f"{comp} requests cpu and memory")
        check(effective(pod, c, "allowPrivilegeEscalation") is False, f"{comp} allowPrivilegeEscalation: false")
        check(effective(pod, c, "readOnlyRootFilesystem") is True, f"{comp} readOnlyRootFilesystem")
        check((c.get("securityContext") or {}).get("capabilities", {}).get("drop") == ["ALL"],
              f"{comp} drops ALL capabilities")
        if comp != "node-programmer":
            check(effective(pod, c, "runAsNonRoot") is True, f"{comp} runAsNonRoot")
            check(not (c.get("securityContext") or {}).get("capabilities", {}).get("add"), f"{comp} adds no capability")

    # --- lb-controller: 2 replicas, leader election through the downward API
    lbc = find(docs, "Deployment", "lb-controller")
    if lbc:
        c = container(lbc)
        check(lbc["spec"].get("replicas") == 2, "lb-controller has 2 replicas")
        check("--leader-election=true" in c.get("args", []), "lb-controller runs with --leader-election=true")
        env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in c.get("env", [])}
        check(env.get("POD_NAMESPACE") == "metadata.namespace" and env.get("POD_NAME") == "metadata.name",
              "lb-controller gets POD_NAMESPACE and POD_NAME from the downward API")
        role = find(docs, "Role", "drawbridge-lb-controller-leader-election")
        check(role is not None and role["metadata"].get("namespace") == NAMESPACE
              and any("leases" in r.get("resources", []) for r in role.get("rules", [])),
              f"Lease access is a Role in {NAMESPACE}, not cluster-wide")

    # --- node-programmer: hostNetwork, not privileged, NET_ADMIN + NET_RAW only, tolerates control plane
    npg = find(docs, "DaemonSet", "node-programmer")
    if npg:
        pod = npg["spec"]["template"]["spec"]
        c = container(npg)
        sc = c.get("securityContext") or {}
        check(pod.get("hostNetwork") is True, "node-programmer uses hostNetwork")
        check(not sc.get("privileged") and not (pod.get("securityContext") or {}).get("privileged"),
              "node-programmer is not privileged")
        caps = sc.get("capabilities") or {}
        check(sorted(caps.get("add") or []) == ["NET_ADMIN", "NET_RAW"], "node-programmer adds exactly NET_ADMIN and NET_RAW",
              str(caps.get("add")))
        tol = pod.get("tolerations") or []
        check(any(t.get("operator") == "Exists" and t.get("key") in (None, "node-role.kubernetes.io/control-plane")
                  and t.get("effect") in (None, "NoSchedule") for t in tol),
              "node-programmer tolerates the control-plane taint")
        env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in c.get("env", [])}
        check(env.get("NODE_NAME") == "spec.nodeName" and "--node-name=$(NODE_NAME)" in c.get("args", []),
              "node-programmer --node-name comes from spec.nodeName")
        mode = [a for a in c.get("args", []) if a.startswith("--proxy-mode=")]
        want = "--proxy-mode=none" if variant == "keep-kube-proxy" else "--proxy-mode=nftables"
        check(mode == [want], f"node-programmer runs {want}", str(mode))

    # --- gateway: LoadBalancer Service, IngressClass, PodDisruptionBudget
    gw_labels = (find(docs, "Deployment", "ingress-gateway") or {}).get("spec", {}).get("template", {}) \
        .get("metadata", {}).get("labels", {})

    def selects(selector):
        return bool(selector) and all(gw_labels.get(k) == v for k, v in selector.items())

    svc = find(docs, "Service", "ingress-gateway")
    check(svc is not None and svc["spec"].get("type") == "LoadBalancer" and selects(svc["spec"].get("selector")),
          "Service ingress-gateway is type LoadBalancer and selects the gateway pods")
    if svc:
        ports = {p["port"]: p.get("targetPort") for p in svc["spec"]["ports"]}
        check(ports == {80: "http", 443: "https"}, "gateway Service maps 80 → http (8080), 443 → https (8443)")
    ic = find(docs, "IngressClass", "drawbridge")
    check(ic is not None and ic["spec"].get("controller") == "drawbridge.dev/ingress-gateway",
          "IngressClass drawbridge (controller drawbridge.dev/ingress-gateway)")
    pdb = find(docs, "PodDisruptionBudget", "ingress-gateway")
    check(pdb is not None and selects(pdb["spec"].get("selector", {}).get("matchLabels")),
          "PodDisruptionBudget covers the gateway pods")


def variant_checks(docs, variant):
    npg = find(docs, "DaemonSet", "node-programmer")
    pod = npg["spec"]["template"]["spec"]
    if variant == "replace-kube-proxy":
        check(any(t == {"operator": "Exists"} for t in pod.get("tolerations") or []),
              "replace-kube-proxy: node-programmer tolerates every taint")
        check(pod.get("priorityClassName") == "system-node-critical",
              "replace-kube-proxy: node-programmer is system-node-critical")
        refs = [e["configMapRef"]["name"] for e in container(npg).get("envFrom", []) if "configMapRef" in e]
        cm = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] in refs]
        check(len(cm) == 1 and {"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"} <= set(cm[0].get("data", {})),
              "replace-kube-proxy: node-programmer reaches the API server directly (KUBERNETES_SERVICE_HOST/PORT)")
    if variant == "dual-stack":
        spec = find(docs, "Service", "ingress-gateway")["spec"]
        check(spec.get("ipFamilyPolicy") == "PreferDualStack" and spec.get("ipFamilies") == ["IPv4", "IPv6"],
              "dual-stack: gateway Service is PreferDualStack with IPv4 and IPv6")


def main(argv):
    if len(argv) != 3 or argv[1] not in ("base", "keep-kube-proxy", "replace-kube-proxy", "dual-stack", "l2"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    variant, path = argv[1], argv[2]
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    base_checks(docs, variant)
    variant_checks(docs, variant)
    print(f"{PASSED[0]} passed, {FAILED[0]} failed")
    return 1 if FAILED[0] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

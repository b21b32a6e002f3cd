"""The bench's objects, as a user would `kubectl apply` them, into DIR/manifests/objects.yaml.

    python3 bench/gateway/manifests.py DIR BACKEND_IP:PORT [--tls]

An IngressClass for drawbridge, Service `default/echo` (port 80 → targetPort `web`), its
EndpointSlice with BACKEND as the one ready endpoint, and Ingress `default/bench` sending every
path of every host there. With --tls also Secret `default/bench-cert` from DIR/cert.pem and
DIR/key.pem, and the Ingress's `tls` entry for host `localhost` (plain-HTTP requests for other
hosts are not redirected). Used by run.sh, instructions.sh and ab.sh.
"""
import json
import sys

tmp, backend = sys.argv[1], sys.argv[2]
tls = "--tls" in sys.argv[3:]
ip, port = backend.split(":")
ingress_spec = {
    "ingressClassName": "drawbridge",
    "rules": [{"http": {"paths": [{"path": "/", "pathType": "Prefix",
                                   "backend": {"service": {"name": "echo", "port": {"number": 80}}}}]}}],
}
items = [
    {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "drawbridge"},
     "spec": {"controller": "drawbridge.dev/ingress-gateway"}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": "echo"},
     "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}]}},
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
     "metadata": {"namespace": "default", "name": "echo-0", "labels": {"kubernetes.io/service-name": "echo"}},
     "addressType": "IPv4", "ports": [{"name": "http", "port": int(port), "protocol": "TCP"}],
     "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}]},
]
if tls:
    crt, key = open(f"{tmp}/cert.pem").read(), open(f"{tmp}/key.pem").read()
    items.append({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                  "metadata": {"namespace": "default", "name": "bench-cert"},
                  "stringData": {"tls.crt": crt, "tls.key": key}})
    ingress_spec["tls"] = [{"hosts": ["localhost"], "secretName": "bench-cert"}]
items.append({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
              "metadata": {"namespace": "default", "name": "bench"}, "spec": ingress_spec})
json.dump({"apiVersion": "v1", "kind": "List", "items": items}, open(f"{tmp}/manifests/objects.yaml", "w"))

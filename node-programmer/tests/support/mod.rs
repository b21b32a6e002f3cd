//! Shared harness of node-programmer's network-namespace tests: root check, command runner, and
//! a [`Lab`] guard owning namespaces and processes (removed on drop, also when a test fails).
#![allow(dead_code)] // Each test binary uses a different subset.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Whether this process runs as root (network namespaces, nft and iptables need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs `args` and panics with its stderr unless it succeeds.
pub fn run(args: &[&str]) -> Output {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Owns namespaces and processes; `Drop` kills the processes, then deletes the namespaces (which
/// removes their veths, rules and conntrack entries). Names carry the test process id, so
/// parallel test binaries never collide.
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Lab {
    /// A lab whose namespaces are named `db-<pid>-<tag>-<role>`.
    pub fn new(tag: &str) -> Lab {
        Lab {
            prefix: format!("db-{}-{tag}", std::process::id()),
            namespaces: vec![],
            children: vec![],
        }
    }

    /// Creates namespace `<prefix>-<role>` with `lo` up.
    pub fn netns(&mut self, role: &str) -> String {
        let name = format!("{}-{role}", self.prefix);
        run(&["ip", "netns", "add", &name]);
        self.namespaces.push(name.clone());
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// Starts `program` inside `ns`; killed on drop.
    pub fn spawn(&mut self, ns: &str, program: &[&str]) -> &mut Child {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(program)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program:?}: {e}"));
        self.children.push(child);
        self.children.last_mut().expect("just pushed")
    }
}

impl Lab {
    /// The `i`-th process started with [`Lab::spawn`].
    pub fn child(&mut self, i: usize) -> &mut Child {
        &mut self.children[i]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

// === the one-node topology of netns.rs and netns_iptables.rs ===

/// The pod's HTTP server: answers with the peer address it sees (client IP preserved or not).
pub const BACKEND: &str = r#"
import http.server
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.client_address[0].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128  # the default of 5 drops SYNs under load (lab-notes.md)
    allow_reuse_address = True
Server(("0.0.0.0", 8080), Handler).serve_forever()
"#;

pub struct Topology {
    pub client: String,
    pub node: String,
    pub pod: String,
}

pub fn topology(lab: &mut Lab) -> Topology {
    let client = lab.netns("client");
    let node = lab.netns("node");
    let pod = lab.netns("pod");
    // Before the links exist: per-interface values are copied from `default` (lab-notes.md).
    run(&[
        "ip",
        "netns",
        "exec",
        &node,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.send_redirects=0",
        "net.ipv4.conf.default.send_redirects=0",
    ]);
    run(&[
        "ip", "link", "add", "c0", "netns", &client, "type", "veth", "peer", "name", "n0", "netns",
        &node,
    ]);
    run(&[
        "ip", "link", "add", "p0", "netns", &pod, "type", "veth", "peer", "name", "n1", "netns",
        &node,
    ]);
    for (ns, dev, addr) in [
        (&client, "c0", "198.51.100.2/24"),
        (&node, "n0", "198.51.100.1/24"),
        (&node, "n1", "192.0.2.1/24"),
        (&pod, "p0", "192.0.2.10/24"),
    ] {
        run(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
        run(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }
    run(&[
        "ip",
        "-n",
        &client,
        "route",
        "add",
        "default",
        "via",
        "198.51.100.1",
    ]);
    run(&[
        "ip",
        "-n",
        &node,
        "route",
        "add",
        "default",
        "via",
        "198.51.100.2",
    ]);
    run(&[
        "ip",
        "-n",
        &pod,
        "route",
        "add",
        "default",
        "via",
        "192.0.2.1",
    ]);
    Topology { client, node, pod }
}

pub struct Fetch {
    /// curl's exit code: 0 ok, 7 connection refused, 28 timeout.
    pub code: i32,
    pub body: String,
    pub elapsed: Duration,
}

pub fn curl(ns: &str, url: &str) -> Fetch {
    let started = Instant::now();
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "-sS",
            "--connect-timeout",
            "3",
            "--max-time",
            "5",
            url,
        ])
        .output()
        .expect("run curl");
    Fetch {
        code: output.status.code().unwrap_or(-1),
        body: String::from_utf8_lossy(&output.stdout).into_owned(),
        elapsed: started.elapsed(),
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// === worlds as the JSON a user would apply ===

/// `demo/<name>`: a LoadBalancer Service, port 80 → 8080 (`http`), one ClusterIP, NodePort and
/// LB IP (`ipMode: VIP`), `externalTrafficPolicy: etp`.
pub fn service(
    name: &str,
    cluster_ip: &str,
    node_port: u16,
    lb_ip: &str,
    etp: &str,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "demo", "name": name},
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "externalTrafficPolicy": etp,
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": node_port}],
        },
        "status": {"loadBalancer": {"ingress": [{"ip": lb_ip, "ipMode": "VIP"}]}},
    })
}

/// EndpointSlice `demo/<service>-abc`: one ready IPv4 endpoint `ip` on `node`, port `http` 8080.
pub fn slice(service: &str, ip: &str, node: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "demo", "name": format!("{service}-abc"),
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "nodeName": node, "conditions": {"ready": true}}],
    })
}

/// Splits JSON objects into typed Services and EndpointSlices (panics on any other kind).
pub fn split(
    world: &[serde_json::Value],
) -> (
    Vec<k8s_openapi::api::core::v1::Service>,
    Vec<k8s_openapi::api::discovery::v1::EndpointSlice>,
) {
    let mut services = vec![];
    let mut slices = vec![];
    for object in world {
        match object["kind"].as_str() {
            Some("Service") => {
                services.push(serde_json::from_value(object.clone()).expect("Service"))
            }
            Some("EndpointSlice") => {
                slices.push(serde_json::from_value(object.clone()).expect("EndpointSlice"))
            }
            other => panic!("unexpected kind {other:?}"),
        }
    }
    (services, slices)
}

/// The `ServiceTable` of `world` as node-a sees it; panics if anything was skipped.
pub fn table_of(world: &[serde_json::Value]) -> node_programmer::model::ServiceTable {
    let (services, slices) = split(world);
    let (table, skipped) =
        node_programmer::model::ServiceTable::build(&services, &slices, "node-a");
    assert!(skipped.is_empty(), "{skipped:?}");
    table
}

// === several endpoints in the pod namespace (spread and affinity tests) ===

/// TCP server on every address :8080 that answers each connection with the address it was
/// reached at (after DNAT: the endpoint's address) and closes.
pub const WHOAMI: &str = r#"
import socketserver
class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(self.request.getsockname()[0].encode())
class Server(socketserver.ThreadingTCPServer):
    request_queue_size = 128
    allow_reuse_address = True
    daemon_threads = True
Server(("0.0.0.0", 8080), Handler).serve_forever()
"#;

/// Opens `n` new TCP connections to `ip:port` one after another; prints `{address: count}` of
/// the replies as JSON (`"error"` counts failures).
const CONNECT_MANY: &str = r#"
import json, socket, sys
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
counts = {}
for _ in range(n):
    try:
        with socket.create_connection((ip, port), timeout=3) as s:
            who = s.recv(64).decode() or "empty"
    except OSError:
        who = "error"
    counts[who] = counts.get(who, 0) + 1
print(json.dumps(counts))
"#;

/// The three endpoint addresses [`whoami_endpoints`] serves in the pod namespace.
pub const ENDPOINTS: [&str; 3] = ["192.0.2.10", "192.0.2.11", "192.0.2.12"];

/// Adds [`ENDPOINTS`]' second and third address to the pod's `p0` (the first is the topology's)
/// and starts [`WHOAMI`] there.
pub fn whoami_endpoints(lab: &mut Lab, t: &Topology) {
    for ip in &ENDPOINTS[1..] {
        run(&[
            "ip",
            "-n",
            &t.pod,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "p0",
        ]);
    }
    lab.spawn(&t.pod, &["python3", "-c", WHOAMI]);
}

/// Opens `n` new connections from `ns` to `ip:port` ([`CONNECT_MANY`]): `{address: count}`.
pub fn connect_many(ns: &str, ip: &str, port: &str, n: usize) -> serde_json::Value {
    let out = run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "python3",
        "-c",
        CONNECT_MANY,
        ip,
        port,
        &n.to_string(),
    ]);
    serde_json::from_slice(&out.stdout).expect("counts as JSON")
}

/// Waits until [`WHOAMI`] answers on every one of [`ENDPOINTS`] (from inside the pod).
pub fn wait_for_whoami(t: &Topology) {
    wait_for("the backend to listen", Duration::from_secs(10), || {
        ENDPOINTS
            .iter()
            .all(|ip| connect_many(&t.pod, ip, "8080", 1).get(*ip).is_some())
    });
}

/// A ClusterIP Service `demo/spread` (198.18.0.30:80 → 8080) with [`ENDPOINTS`] ready on node-a.
pub fn spread_world() -> Vec<serde_json::Value> {
    use serde_json::json;
    vec![
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "demo", "name": "spread"},
            "spec": {
                "type": "ClusterIP", "clusterIP": "198.18.0.30", "clusterIPs": ["198.18.0.30"],
                "ports": [{"name": "tcp", "port": 80, "protocol": "TCP", "targetPort": 8080}],
            },
        }),
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": "demo", "name": "spread-abc",
                         "labels": {"kubernetes.io/service-name": "spread"}},
            "addressType": "IPv4",
            "ports": [{"name": "tcp", "port": 8080, "protocol": "TCP"}],
            "endpoints": ENDPOINTS.iter().map(|ip| json!({
                "addresses": [ip], "nodeName": "node-a", "conditions": {"ready": true},
            })).collect::<Vec<_>>(),
        }),
    ]
}

/// `connections` new connections from the client to 198.18.0.30:80 must all reach one of
/// [`ENDPOINTS`], each endpoint 15%–52% of them (300 connections: expected 100 ± 8.2 (1σ); the
/// bounds are > 6σ away, so this does not flake).
pub fn assert_even_spread(t: &Topology, connections: usize) {
    use serde_json::Value;
    let counts = connect_many(&t.client, "198.18.0.30", "80", connections);
    let count = |ip: &str| counts.get(ip).and_then(Value::as_u64).unwrap_or(0) as usize;
    eprintln!("connections per endpoint: {counts}");
    assert_eq!(
        ENDPOINTS.iter().map(|ip| count(ip)).sum::<usize>(),
        connections,
        "every connection must reach one of the endpoints: {counts}"
    );
    for ip in ENDPOINTS {
        let share = count(ip) as f64 / connections as f64;
        assert!(
            (0.15..=0.52).contains(&share),
            "{ip} got {:.0}% of new connections (expected ~33%): {counts}",
            share * 100.0
        );
    }
}

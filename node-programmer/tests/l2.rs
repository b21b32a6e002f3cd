//! L2 announcement in network namespaces: real ARP / NDP between a client and two nodes on one
//! bridge, answered by the real `node-programmer` binary (`--l2-interfaces eth0`), following a
//! manifest directory whose Service names the announcing node.
//!
//! ```text
//!   client ns: c0 192.0.2.2/24, 2001:db8::2/64 ─┐
//!   node-a ns: eth0 192.0.2.11/24, ::11 ─────────┼── lan ns: bridge br0
//!   node-b ns: eth0 192.0.2.12/24, ::12 ─────────┘
//!   VIPs 192.0.2.100 / 2001:db8::100: on no interface that answers for them (on the nodes' `lo`
//!   with arp_ignore=1, only so a TCP server there can say which node the client reached).
//! ```
//!
//! Needs root. Every namespace and process belongs to a [`Lab`] whose `Drop` removes them, also
//! when a test fails; names carry the test process id. `L2_FAILOVER_TRIALS` (default 4) and
//! `L2_FAILOVER_REPORT` (a file to append per-trial gaps to) drive the benchmark
//! (`bench/lb/l2-failover.sh`).

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

const VIP4: &str = "192.0.2.100";
const VIP6: &str = "2001:db8::100";

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("SKIPPED: this test needs root (network namespaces, raw sockets)");
            return;
        }
    };
}

fn run(args: &[&str]) -> Output {
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
/// removes their veths and the bridge).
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        Lab {
            prefix: format!("dbl2-{}-{tag}", std::process::id()),
            namespaces: vec![],
            children: vec![],
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn netns(&mut self, role: &str) -> String {
        let name = format!("{}-{role}", self.prefix);
        run(&["ip", "netns", "add", &name]);
        self.namespaces.push(name.clone());
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        name
    }

    fn spawn(&mut self, ns: &str, program: &[&str], stdout: Stdio) -> u32 {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(program)
            .stdin(Stdio::null())
            .stdout(stdout)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program:?}: {e}"));
        let pid = child.id();
        self.children.push(child);
        pid
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

/// Answers every TCP connection on :8080 (IPv4 and IPv6) with the node's name.
const NAME_SERVER: &str = r#"
import socket, sys, threading
def serve(family, addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, 8080)); s.listen(128)
    while True:
        c, _ = s.accept(); c.sendall(sys.argv[1].encode()); c.close()
threading.Thread(target=serve, args=(socket.AF_INET6, "::"), daemon=True).start()
serve(socket.AF_INET, "0.0.0.0")
"#;

/// Connects to VIP:8080 every 5 ms and prints `<unix time> <answering node or ->`.
const CLIENT_LOOP: &str = r#"
import socket, sys, time
while True:
    t = time.time()
    try:
        c = socket.create_connection((sys.argv[1], 8080), timeout=0.05)
        name = c.recv(64).decode() or "-"
        c.close()
    except OSError:
        name = "-"
    print(f"{t:.6f} {name}", flush=True)
    time.sleep(0.005)
"#;

struct Topology {
    client: String,
    nodes: [(String, String); 2],
    macs: [String; 2],
}

fn mac_of(ns: &str, dev: &str) -> String {
    let out = run(&["ip", "-n", ns, "-j", "link", "show", dev]);
    let links: Value = serde_json::from_slice(&out.stdout).expect("ip -j link");
    links[0]["address"]
        .as_str()
        .expect("address")
        .to_lowercase()
}

fn sysctl(ns: &str, settings: &[&str]) {
    let mut args = vec!["ip", "netns", "exec", ns, "sysctl", "-qw"];
    args.extend_from_slice(settings);
    run(&args);
}

fn topology(lab: &mut Lab) -> Topology {
    let lan = lab.netns("lan");
    let client = lab.netns("client");
    let node_a = lab.netns("node-a");
    let node_b = lab.netns("node-b");
    run(&["ip", "-n", &lan, "link", "add", "br0", "type", "bridge"]);
    run(&["ip", "-n", &lan, "link", "set", "br0", "up"]);
    for ns in [&client, &node_a, &node_b] {
        // Before the links exist: per-interface values are copied from `default`.
        sysctl(
            ns,
            &[
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ],
        );
    }
    for ns in [&node_a, &node_b] {
        // The VIP sits on `lo` only for the name server: the kernel must never answer ARP/NDP for
        // it (arp_ignore=1: only for addresses on the asking interface; NDP is strict already).
        sysctl(
            ns,
            &[
                "net.ipv4.conf.all.arp_ignore=1",
                "net.ipv4.conf.all.arp_announce=2",
                "net.ipv4.conf.default.arp_ignore=1",
                "net.ipv4.conf.default.arp_announce=2",
            ],
        );
    }
    let links = [
        (&client, "c0", "p-client", "192.0.2.2/24", "2001:db8::2/64"),
        (
            &node_a,
            "eth0",
            "p-node-a",
            "192.0.2.11/24",
            "2001:db8::11/64",
        ),
        (
            &node_b,
            "eth0",
            "p-node-b",
            "192.0.2.12/24",
            "2001:db8::12/64",
        ),
    ];
    for (ns, dev, port, v4, v6) in links {
        run(&[
            "ip", "link", "add", dev, "netns", ns, "type", "veth", "peer", "name", port, "netns",
            &lan,
        ]);
        run(&["ip", "-n", &lan, "link", "set", port, "master", "br0", "up"]);
        run(&["ip", "-n", ns, "addr", "add", v4, "dev", dev]);
        run(&["ip", "-n", ns, "addr", "add", v6, "dev", dev, "nodad"]);
        run(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }
    for ns in [&node_a, &node_b] {
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{VIP4}/32"),
            "dev",
            "lo",
        ]);
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{VIP6}/128"),
            "dev",
            "lo",
            "nodad",
        ]);
    }
    let macs = [mac_of(&node_a, "eth0"), mac_of(&node_b, "eth0")];
    Topology {
        client,
        nodes: [(node_a, "node-a".into()), (node_b, "node-b".into())],
        macs,
    }
}

fn service(announcing: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "demo", "name": "web",
                     "annotations": {"drawbridge.dev/announcing-node": announcing}},
        "spec": {
            "type": "LoadBalancer", "clusterIP": "198.18.0.10", "clusterIPs": ["198.18.0.10"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80, "nodePort": 30080}],
        },
        "status": {"loadBalancer": {"ingress": [
            {"ip": VIP4, "ipMode": "VIP"}, {"ip": VIP6, "ipMode": "VIP"}]}},
    })
}

/// JSON is YAML: the manifest source reads a `kind: List` document; renamed into place.
fn write_manifests(dir: &Path, announcing: &str) {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [service(announcing)]});
    std::fs::create_dir_all(dir).expect("manifests dir");
    let tmp = dir.join(".world.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&list).expect("json"))
        .expect("write manifests");
    std::fs::rename(&tmp, dir.join("world.yaml")).expect("rename manifests");
}

/// Starts name servers and node-programmers on both nodes; returns the node-programmer pids.
fn start_nodes(lab: &mut Lab, topo: &Topology) -> Vec<u32> {
    let manifests = lab.dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifests dir");
    let manifests = manifests.to_string_lossy().into_owned();
    let mut pids = vec![];
    for (ns, name) in &topo.nodes {
        lab.spawn(ns, &["python3", "-c", NAME_SERVER, name], Stdio::null());
        let pid = lab.spawn(
            ns,
            &[
                env!("CARGO_BIN_EXE_node-programmer"),
                "--node-name",
                name,
                "--manifests",
                &manifests,
                "--metrics-addr",
                "off",
                "--l2-interfaces",
                "eth0",
            ],
            Stdio::null(),
        );
        pids.push(pid);
    }
    pids
}

/// The client's neighbour entry for `ip`: (lladdr, state) if it has one.
fn neighbour(client: &str, ip: &str) -> Option<(String, String)> {
    let out = Command::new("ip")
        .args(["-n", client, "-j", "neigh", "show", ip])
        .output()
        .ok()?;
    let entries: Value = serde_json::from_slice(&out.stdout).ok()?;
    let e = entries.as_array()?.first()?;
    let mac = e.get("lladdr")?.as_str()?.to_lowercase();
    let state = e["state"]
        .as_array()
        .and_then(|s| s.first())
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    Some((mac, state))
}

/// One TCP connect from the client to `ip`:8080: the answering node's name.
fn connect(client: &str, ip: &str) -> Option<String> {
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            client,
            "curl",
            "-s",
            "--max-time",
            "2",
            "--http0.9",
            &format!("http://{host}:8080/"),
        ])
        .output()
        .ok()?;
    let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!body.is_empty()).then_some(body)
}

fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// === tests ===

/// ARP and NDP: the client resolves both VIPs to node-a's MAC (the annotated node) and reaches
/// node-a's server; node-b stays silent; no node has the VIP on its interface.
#[test]
fn arp_and_ndp_resolve_to_the_announcing_node() {
    require_root!();
    let mut lab = Lab::new("res");
    let topo = topology(&mut lab);
    write_manifests(&lab.dir.path().join("manifests"), "node-a");
    start_nodes(&mut lab, &topo);
    let client = topo.client.clone();

    for vip in [VIP4, VIP6] {
        let answered = wait_for(
            &format!("a TCP answer from {vip}"),
            Duration::from_secs(10),
            || connect(&client, vip),
        );
        assert_eq!(answered, "node-a", "{vip} reached the announcing node");
        let (mac, state) = neighbour(&client, vip).expect("neighbour entry");
        assert_eq!(
            mac, topo.macs[0],
            "{vip} resolves to node-a's MAC ({state})"
        );
        assert_ne!(mac, topo.macs[1]);
    }
    // The responder answers from userspace: the VIP was not added to eth0.
    for (ns, _) in &topo.nodes {
        let addrs =
            String::from_utf8_lossy(&run(&["ip", "-n", ns, "addr", "show", "dev", "eth0"]).stdout)
                .into_owned();
        assert!(
            !addrs.contains(VIP4) && !addrs.contains("2001:db8::100"),
            "{addrs}"
        );
    }

    // Flush and ask again with nobody announcing: no answer at all (node-b must not answer).
    write_manifests(&lab.dir.path().join("manifests"), "node-c");
    std::thread::sleep(Duration::from_millis(300));
    run(&["ip", "-n", &client, "neigh", "flush", "dev", "c0"]);
    assert_eq!(connect(&client, VIP4), None, "nobody announces: ARP fails");
    let entry = neighbour(&client, VIP4);
    assert!(
        entry.is_none(),
        "no lladdr learned while nobody announces: {entry:?}"
    );
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Failover while a client loops: the announcing node loses its link (hard node loss) and the
/// annotation moves to the other node at the same instant. Measured per trial: time until the
/// client's neighbour entry carries the new MAC (the gratuitous ARP must update it; without it
/// Linux would keep the dead MAC for seconds of unicast probes), and until the client loop gets
/// answers from the new node. Both must stay under 1 s.
#[test]
fn failover_moves_the_mac_within_a_second() {
    require_root!();
    let trials: usize = std::env::var("L2_FAILOVER_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut lab = Lab::new("fo");
    let topo = topology(&mut lab);
    let manifests = lab.dir.path().join("manifests");
    write_manifests(&manifests, "node-a");
    start_nodes(&mut lab, &topo);
    let client = topo.client.clone();
    wait_for("first answer", Duration::from_secs(10), || {
        connect(&client, VIP4).filter(|n| n == "node-a")
    });
    let log_path = lab.dir.path().join("client.log");
    let log = std::fs::File::create(&log_path).expect("client log");
    lab.spawn(
        &client,
        &["python3", "-u", "-c", CLIENT_LOOP, VIP4],
        Stdio::from(log),
    );

    let mut mac_gaps = vec![];
    let mut answer_gaps = vec![];
    let mut owner = 0usize;
    for trial in 0..trials {
        let (from, to) = (owner, 1 - owner);
        let (from_ns, _) = &topo.nodes[from];
        let (_, to_name) = &topo.nodes[to];
        wait_for(
            "steady state on the old owner",
            Duration::from_secs(10),
            || neighbour(&client, VIP4).filter(|(mac, _)| *mac == topo.macs[from]),
        );
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        let t0_unix = now_unix();
        run(&["ip", "-n", from_ns, "link", "set", "eth0", "down"]);
        write_manifests(&manifests, to_name);
        let mac_gap = wait_for("the MAC to move", Duration::from_secs(10), || {
            neighbour(&client, VIP4)
                .filter(|(mac, _)| *mac == topo.macs[to])
                .map(|_| t0.elapsed())
        });
        // First answer from the new owner in the client loop's log.
        let answer_gap = wait_for(
            "answers from the new owner",
            Duration::from_secs(10),
            || {
                let text = std::fs::read_to_string(&log_path).ok()?;
                text.lines().find_map(|line| {
                    let (t, name) = line.split_once(' ')?;
                    let t: f64 = t.parse().ok()?;
                    (t >= t0_unix && name == to_name).then_some(t - t0_unix)
                })
            },
        );
        eprintln!(
            "trial {trial}: {} -> {to_name}: MAC moved after {:.1} ms, answers after {:.1} ms",
            topo.nodes[from].1,
            mac_gap.as_secs_f64() * 1e3,
            answer_gap * 1e3
        );
        mac_gaps.push(mac_gap.as_secs_f64() * 1e3);
        answer_gaps.push(answer_gap * 1e3);
        run(&["ip", "-n", from_ns, "link", "set", "eth0", "up"]);
        owner = to;
    }
    mac_gaps.sort_by(f64::total_cmp);
    answer_gaps.sort_by(f64::total_cmp);
    let summary = format!(
        "trials={trials} mac_move_ms p50={:.1} max={:.1} answers_resume_ms p50={:.1} max={:.1}",
        percentile(&mac_gaps, 0.5),
        mac_gaps[mac_gaps.len() - 1],
        percentile(&answer_gaps, 0.5),
        answer_gaps[answer_gaps.len() - 1],
    );
    eprintln!("{summary}");
    if let Ok(path) = std::env::var("L2_FAILOVER_REPORT") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("report file");
        writeln!(f, "{summary}").expect("write report");
    }
    assert!(
        mac_gaps[mac_gaps.len() - 1] < 1000.0,
        "MAC move under 1 s: {mac_gaps:?}"
    );
    assert!(
        answer_gaps[answer_gaps.len() - 1] < 1000.0,
        "answers resume under 1 s: {answer_gaps:?}"
    );
}

/// IPv6 takeover: the unsolicited neighbour advertisement (Override) moves the client's entry.
#[test]
fn unsolicited_advertisement_moves_the_ipv6_neighbour() {
    require_root!();
    let mut lab = Lab::new("na");
    let topo = topology(&mut lab);
    let manifests = lab.dir.path().join("manifests");
    write_manifests(&manifests, "node-a");
    start_nodes(&mut lab, &topo);
    let client = topo.client.clone();
    let answered = wait_for("IPv6 answer", Duration::from_secs(10), || {
        connect(&client, VIP6)
    });
    assert_eq!(answered, "node-a");
    assert_eq!(
        neighbour(&client, VIP6).map(|n| n.0),
        Some(topo.macs[0].clone())
    );
    write_manifests(&manifests, "node-b");
    // No traffic from the client in between: only the unsolicited NA can move the entry.
    let (mac, state) = wait_for("the IPv6 neighbour to move", Duration::from_secs(3), || {
        neighbour(&client, VIP6).filter(|(mac, _)| *mac == topo.macs[1])
    });
    assert_eq!(mac, topo.macs[1], "{state}");
    assert_eq!(connect(&client, VIP6).as_deref(), Some("node-b"));
}

//! UDP conntrack cleanup against a real kernel (service-proxy.md §1.16), in network namespaces:
//! real UDP packets DNATed by nft create the entries, `NetlinkConntrack` lists and deletes them.
//!
//! ```text
//!   client ns                         node ns (nft DNAT, forwarding)              pod ns
//!   c0 198.51.100.2/24 ───veth─── n0 198.51.100.1/24     n1 192.0.2.1/24 ───veth─── p0 192.0.2.10 (A)
//!      2001:db8:1::2/64              2001:db8:1::1/64        2001:db8:2::1/64            192.0.2.11 (B)
//!                                                                                      2001:db8:2::10 (A6)
//!   Service dns: ClusterIP 198.18.0.10 + 2001:db8::10, UDP 53 → :5353, NodePort 30053    2001:db8:2::11 (B6)
//! ```
//!
//! The DNAT rules pick the endpoint by client source port, so each test flow lands where the
//! test wants it. Needs root (netns, nft, ctnetlink); skips with a message otherwise. The
//! [`Lab`] guard deletes every namespace it made, also when the test fails.

mod support;
use support::{Lab, is_root, run};

use std::fs::File;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use node_programmer::conntrack::{
    ConntrackTable, Flow, IPPROTO_UDP, NetlinkConntrack, UdpServicePort, cleanup, stale_flows,
};

/// Runs `f` on a thread that has entered network namespace `ns`; sockets it opens stay there.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = File::open(format!("/run/netns/{ns}")).expect("open netns");
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("netns thread")
    })
}

fn nft(ns: &str, script: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write nft script");
    let output = child.wait_with_output().expect("nft");
    assert!(
        output.status.success(),
        "nft -f failed: {}\n{script}",
        String::from_utf8_lossy(&output.stderr)
    );
}

struct Topology {
    client: String,
    node: String,
    pod: String,
}

fn topology(lab: &mut Lab) -> Topology {
    let client = lab.netns("client");
    let node = lab.netns("node");
    let pod = lab.netns("pod");
    run(&[
        "ip",
        "netns",
        "exec",
        &node,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
    ]);
    run(&[
        "ip", "link", "add", "c0", "netns", &client, "type", "veth", "peer", "name", "n0", "netns",
        &node,
    ]);
    run(&[
        "ip", "link", "add", "p0", "netns", &pod, "type", "veth", "peer", "name", "n1", "netns",
        &node,
    ]);
    for (ns, dev, addrs) in [
        (&client, "c0", &["198.51.100.2/24", "2001:db8:1::2/64"][..]),
        (&node, "n0", &["198.51.100.1/24", "2001:db8:1::1/64"][..]),
        (&node, "n1", &["192.0.2.1/24", "2001:db8:2::1/64"][..]),
        (
            &pod,
            "p0",
            &[
                "192.0.2.10/24",
                "192.0.2.11/24",
                "2001:db8:2::10/64",
                "2001:db8:2::11/64",
            ][..],
        ),
    ] {
        for addr in addrs {
            let mut args = vec!["ip", "-n", ns.as_str(), "addr", "add", addr, "dev", dev];
            if addr.contains(':') {
                args.push("nodad");
            }
            run(&args);
        }
        run(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }
    for (ns, via) in [
        (&client, "198.51.100.1"),
        (&client, "2001:db8:1::1"),
        (&pod, "192.0.2.1"),
        (&pod, "2001:db8:2::1"),
        // Un-NATed packets to the ClusterIP leave the node back towards the client.
        (&node, "198.51.100.2"),
    ] {
        run(&["ip", "-n", ns, "route", "add", "default", "via", via]);
    }
    Topology { client, node, pod }
}

/// The node's DNAT rules. `a_port_goes_to` says where client source port 40001 is sent.
fn rules(a_port_goes_to: &str) -> String {
    format!(
        r#"
table inet dbct
delete table inet dbct
table inet dbct {{
    chain pre {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr 198.18.0.10 udp dport 53 udp sport 40001 dnat ip to {a_port_goes_to}:5353
        ip daddr 198.18.0.10 udp dport 53 udp sport 40002 dnat ip to 192.0.2.11:5353
        ip daddr 198.51.100.1 udp dport 30053 udp sport 40003 dnat ip to 192.0.2.10:5353
        ip6 daddr 2001:db8::10 udp dport 53 udp sport 40001 dnat ip6 to [2001:db8:2::10]:5353
        ip6 daddr 2001:db8::10 udp dport 53 udp sport 40002 dnat ip6 to [2001:db8:2::11]:5353
    }}
}}
"#
    )
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// A client socket in the client namespace, bound to `src`.
fn client_socket(ns: &str, src: &str) -> UdpSocket {
    let src = sa(src);
    in_netns(ns, move || UdpSocket::bind(src).expect("bind client"))
}

/// An endpoint socket in the pod namespace, bound to `addr`, with a 100 ms read timeout.
fn endpoint_socket(ns: &str, addr: &str) -> UdpSocket {
    let addr = sa(addr);
    in_netns(ns, move || {
        let socket = UdpSocket::bind(addr).expect("bind endpoint");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        socket
    })
}

/// Sends `payload` from `client` to `dst` until `endpoint` has received it (the first packets
/// may wait for neighbour discovery on fresh links); every retry reuses the same conntrack
/// entry (same 5-tuple). Panics after 5 s.
fn deliver(client: &UdpSocket, dst: &str, payload: &str, endpoint: &UdpSocket) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 256];
    loop {
        client
            .send_to(payload.as_bytes(), sa(dst))
            .unwrap_or_else(|e| panic!("send to {dst}: {e}"));
        while let Ok((n, _)) = endpoint.recv_from(&mut buf) {
            if &buf[..n] == payload.as_bytes() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{payload:?} to {dst} never reached {:?}",
            endpoint.local_addr()
        );
    }
}

fn udp_flows(table: &mut NetlinkConntrack) -> Vec<Flow> {
    table
        .list()
        .expect("list conntrack")
        .into_iter()
        .filter(|f| f.protocol == IPPROTO_UDP)
        .collect()
}

/// The UDP flow from client port `sport` to `dst`, if present.
fn find(flows: &[Flow], sport: u16, dst: &str) -> Option<Flow> {
    flows
        .iter()
        .find(|f| f.original.src.port() == sport && f.original.dst == sa(dst))
        .copied()
}

/// Polls until every (sport, dst) has an entry (packets cross veths asynchronously).
fn wait_for(table: &mut NetlinkConntrack, wanted: &[(u16, &str)]) -> Vec<Flow> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let flows = udp_flows(table);
        if wanted.iter().all(|(p, d)| find(&flows, *p, d).is_some()) {
            return flows;
        }
        assert!(
            Instant::now() < deadline,
            "entries {wanted:?} not all present after 5 s: {flows:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn conntrack_cli(ns: &str) -> Option<String> {
    let output = Command::new("ip")
        .args(["netns", "exec", ns, "conntrack", "-L", "-p", "udp"])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn stale_udp_entries_are_deleted_and_serving_ones_kept() {
    if !is_root() {
        eprintln!("SKIPPED: this test needs root (network namespaces, nft, ctnetlink)");
        return;
    }
    let mut lab = Lab::new("udp");
    let t = topology(&mut lab);
    nft(&t.node, &rules("192.0.2.10"));

    let endpoint_a = endpoint_socket(&t.pod, "192.0.2.10:5353");
    let endpoint_b = endpoint_socket(&t.pod, "192.0.2.11:5353");
    let endpoint_a6 = endpoint_socket(&t.pod, "[2001:db8:2::10]:5353");
    let endpoint_b6 = endpoint_socket(&t.pod, "[2001:db8:2::11]:5353");
    let to_a = client_socket(&t.client, "198.51.100.2:40001");
    let to_b = client_socket(&t.client, "198.51.100.2:40002");
    let node_port = client_socket(&t.client, "198.51.100.2:40003");
    let unnated = client_socket(&t.client, "198.51.100.2:40004");
    let unrelated = client_socket(&t.client, "198.51.100.2:40005");
    let to_a6 = client_socket(&t.client, "[2001:db8:1::2]:40001");
    let to_b6 = client_socket(&t.client, "[2001:db8:1::2]:40002");

    deliver(&to_a, "198.18.0.10:53", "first", &endpoint_a);
    deliver(&to_b, "198.18.0.10:53", "b", &endpoint_b);
    deliver(&node_port, "198.51.100.1:30053", "np", &endpoint_a);
    deliver(&to_a6, "[2001:db8::10]:53", "a6", &endpoint_a6);
    deliver(&to_b6, "[2001:db8::10]:53", "b6", &endpoint_b6);
    // No endpoint answers these two; their entries exist after the first packet.
    unnated
        .send_to(b"before-endpoints", sa("198.18.0.10:53"))
        .expect("send");
    unrelated
        .send_to(b"unrelated", sa("192.0.2.10:9999"))
        .expect("send");

    let node = t.node.clone();
    let mut table = in_netns(&node, || {
        NetlinkConntrack::open().expect("ctnetlink socket")
    });
    let wanted = [
        (40001, "198.18.0.10:53"),
        (40002, "198.18.0.10:53"),
        (40003, "198.51.100.1:30053"),
        (40004, "198.18.0.10:53"),
        (40005, "192.0.2.10:9999"),
        (40001, "[2001:db8::10]:53"),
        (40002, "[2001:db8::10]:53"),
    ];
    let flows = wait_for(&mut table, &wanted);
    // The dump decodes what the kernel NATed: reply source = the chosen endpoint.
    let reply_src = |sport, dst| find(&flows, sport, dst).expect("flow").reply.src.ip();
    assert_eq!(reply_src(40001, "198.18.0.10:53"), ip("192.0.2.10"));
    assert_eq!(reply_src(40002, "198.18.0.10:53"), ip("192.0.2.11"));
    assert_eq!(reply_src(40003, "198.51.100.1:30053"), ip("192.0.2.10"));
    assert_eq!(reply_src(40004, "198.18.0.10:53"), ip("198.18.0.10"));
    assert_eq!(reply_src(40001, "[2001:db8::10]:53"), ip("2001:db8:2::10"));

    // Endpoint A (and A6) goes away: the rules now send everything to B ...
    nft(&t.node, &rules("192.0.2.11"));
    // ... but the existing entry still steers client port 40001 to A: the bug being fixed.
    deliver(&to_a, "198.18.0.10:53", "stale", &endpoint_a);

    let dns = UdpServicePort {
        service: "kube-system/dns:dns".into(),
        ips: vec![ip("198.18.0.10"), ip("2001:db8::10")],
        port: 53,
        node_port: 30053,
        serving_endpoints: [ip("192.0.2.11"), ip("2001:db8:2::11")].into(),
    };
    let expected_stale: Vec<Flow> = {
        let mut v: Vec<Flow> = [
            (40001, "198.18.0.10:53"),
            (40003, "198.51.100.1:30053"),
            (40004, "198.18.0.10:53"),
            (40001, "[2001:db8::10]:53"),
        ]
        .iter()
        .map(|(p, d)| find(&flows, *p, d).expect("flow"))
        .collect();
        v.sort();
        v
    };
    assert_eq!(
        stale_flows(&flows, std::slice::from_ref(&dns)),
        expected_stale
    );

    let report = cleanup(&mut table, std::slice::from_ref(&dns)).expect("cleanup");
    assert_eq!(
        (report.stale, report.deleted, report.failed),
        (4, 4, 0),
        "{report:?}"
    );

    let after = udp_flows(&mut table);
    for (sport, dst) in &wanted {
        let present = find(&after, *sport, dst).is_some();
        let should = !expected_stale
            .iter()
            .any(|f| f.original.src.port() == *sport && f.original.dst == sa(dst));
        assert_eq!(present, should, "entry {sport} → {dst}: {after:#?}");
    }
    if let Some(listing) = conntrack_cli(&t.node) {
        // Cross-check with conntrack-tools' own view of the same table.
        assert!(listing.contains("sport=40002 dport=53"), "{listing}");
        assert!(!listing.contains("sport=40001 dport=53"), "{listing}");
        assert!(!listing.contains("sport=40003 dport=30053"), "{listing}");
    } else {
        eprintln!("note: no `conntrack` binary; cross-check skipped (netlink listing checked)");
    }

    // With the stale entry gone, client port 40001 now reaches B; B6's flow was kept.
    deliver(&to_a, "198.18.0.10:53", "fresh", &endpoint_b);
    deliver(&to_b6, "[2001:db8::10]:53", "still-b6", &endpoint_b6);
    let flows = wait_for(&mut table, &[(40001, "198.18.0.10:53")]);
    assert_eq!(
        find(&flows, 40001, "198.18.0.10:53")
            .expect("flow")
            .reply
            .src
            .ip(),
        ip("192.0.2.11")
    );

    // Level-triggered: nothing more to delete; an unknown entry's delete is NotFound, not a
    // failure.
    let report = cleanup(&mut table, std::slice::from_ref(&dns)).expect("cleanup");
    assert_eq!((report.stale, report.deleted), (0, 0), "{report:?}");
    // (The NodePort flow: client port 40001's entry was re-created towards B above.)
    let gone = find(&expected_stale, 40003, "198.51.100.1:30053").expect("flow");
    assert!(matches!(
        table.delete(&gone),
        Err(node_programmer::conntrack::Error::NotFound)
    ));
}

//! Service semantics with real traffic, once per backend (nftables and iptables), dual-stack
//! (service-proxy.md §1; issue: "each with a real-traffic test in the lab … on both backends").
//!
//! ```text
//!  client ns                        node ns ("node-a": rules, forwarding)          pod-a ns (on node-a)
//!  c0 198.51.100.2 (+ .3)  ──veth── n0 198.51.100.1      n1 192.0.2.1/25  ──veth── 192.0.2.10 / 2001:db8:2::10
//!     2001:db8:100::2                 2001:db8:100::1    n2 192.0.2.129/25 ──veth── pod-b ns ("node-b")
//!                                                                                 192.0.2.138 / 2001:db8:3::10
//! ```
//!
//! pod-b really sits behind this node too, but its EndpointSlice entries name `node-b`, so for
//! the rules it is a remote endpoint. Each pod answers HTTP on :8080 with `<pod> <peer address>`,
//! so a test sees which endpoint answered and whether the client address was kept.
//!
//! Needs root. Every namespace and process belongs to a `Lab` guard that removes them on drop.

mod support;
use support::{Lab, is_root, run, split};

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use node_programmer::apply::NftCli;
use node_programmer::iptables::{Family as IptFamily, Flavour, IptablesCli};
use node_programmer::model::{IpFamily, NodeContext, ServiceTable};
use node_programmer::nftables::NftProxier;
use node_programmer::render::{self, Options};
use node_programmer::sync::{IptablesBackend, NodePortPolicy, Outcome, Programmer, Proxier};
use serde_json::{Value, json};

// === lab ===

/// Answers `<name> <peer>` on [::]:8080 (dual-stack; IPv4 peers without the ::ffff: prefix).
const BACKEND: &str = r#"
import http.server, socket, sys
NAME = sys.argv[1]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        peer = self.client_address[0].removeprefix("::ffff:")
        body = f"{NAME} {peer}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    request_queue_size = 128
    allow_reuse_address = True
Server(("::", 8080), Handler).serve_forever()
"#;

struct Topology {
    client: String,
    node: String,
    pod_b: String,
}

fn topology(lab: &mut Lab) -> Topology {
    let client = lab.netns("client");
    let node = lab.netns("node");
    let pod_a = lab.netns("pod-a");
    let pod_b = lab.netns("pod-b");
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
        "net.ipv6.conf.all.forwarding=1",
        // ICMPv6 errors (REJECT) are rate-limited to one per second by default; several checks
        // in a row expect an immediate "connection refused".
        "net.ipv6.icmp.ratelimit=0",
    ]);
    for (a, a_ns, b, b_ns) in [
        ("c0", &client, "n0", &node),
        ("p0", &pod_a, "n1", &node),
        ("p0", &pod_b, "n2", &node),
    ] {
        run(&[
            "ip", "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns,
        ]);
    }
    for (ns, dev, addrs) in [
        (
            &client,
            "c0",
            &["198.51.100.2/24", "198.51.100.3/24", "2001:db8:100::2/64"][..],
        ),
        (&node, "n0", &["198.51.100.1/24", "2001:db8:100::1/64"][..]),
        (&node, "n1", &["192.0.2.1/25", "2001:db8:2::1/64"][..]),
        (&node, "n2", &["192.0.2.129/25", "2001:db8:3::1/64"][..]),
        // 198.18.0.99: an unallocated Service-CIDR address that *would* answer if routed (so the
        // ServiceCIDR drop is observable).
        (
            &pod_a,
            "p0",
            &["192.0.2.10/25", "2001:db8:2::10/64", "198.18.0.99/32"][..],
        ),
        (&pod_b, "p0", &["192.0.2.138/25", "2001:db8:3::10/64"][..]),
    ] {
        for addr in addrs {
            let mut args = vec!["ip", "-n", ns, "addr", "add", addr, "dev", dev];
            if addr.contains(':') {
                args.push("nodad");
            }
            run(&args);
        }
        run(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }
    run(&[
        "ip",
        "-n",
        &node,
        "route",
        "add",
        "198.18.0.99/32",
        "via",
        "192.0.2.10",
    ]);
    for (ns, v4, v6) in [
        (&client, "198.51.100.1", "2001:db8:100::1"),
        (&node, "198.51.100.2", "2001:db8:100::2"),
        (&pod_a, "192.0.2.1", "2001:db8:2::1"),
        (&pod_b, "192.0.2.129", "2001:db8:3::1"),
    ] {
        run(&["ip", "-n", ns, "route", "add", "default", "via", v4]);
        run(&["ip", "-n", ns, "-6", "route", "add", "default", "via", v6]);
    }
    lab.spawn(&pod_a, &["python3", "-c", BACKEND, "pod-a"]);
    lab.spawn(&pod_b, &["python3", "-c", BACKEND, "pod-b"]);
    for (ns, url) in [
        (&pod_a, "http://127.0.0.1:8080/"),
        (&pod_b, "http://127.0.0.1:8080/"),
    ] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while curl(ns, url, &[]).code != 0 {
            assert!(Instant::now() < deadline, "backend in {ns} did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Settle IPv6 neighbour discovery on every link before the first measured connection (no
    // ping here: a TCP connect that is answered, even refused, proves the path).
    for (ns, url, want) in [
        (&client, "http://[2001:db8:100::1]:9/", 7),
        (&node, "http://[2001:db8:2::10]:8080/", 0),
        (&node, "http://[2001:db8:3::10]:8080/", 0),
    ] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while curl(ns, url, &[]).code != want {
            assert!(Instant::now() < deadline, "no IPv6 path {ns} -> {url}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Topology {
        client,
        node,
        pod_b,
    }
}

#[derive(Debug)]
struct Fetch {
    /// curl's exit code: 0 ok, 7 connection refused, 28 timeout.
    code: i32,
    body: String,
    elapsed: Duration,
}

fn curl(ns: &str, url: &str, extra: &[&str]) -> Fetch {
    let started = Instant::now();
    let output = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sS", "--connect-timeout", "2"])
        .args(["--max-time", "4"])
        .args(extra)
        .arg(url)
        .output()
        .expect("run curl");
    Fetch {
        code: output.status.code().unwrap_or(-1),
        body: String::from_utf8_lossy(&output.stdout).into_owned(),
        elapsed: started.elapsed(),
    }
}

// === the world ===

#[derive(Default)]
struct Svc {
    name: &'static str,
    cluster_ips: &'static [&'static str],
    node_port: Option<u16>,
    lb_ips: &'static [&'static str],
    external_ips: &'static [&'static str],
    etp_local: bool,
    itp_local: bool,
    affinity: bool,
    source_ranges: &'static [&'static str],
}

impl Svc {
    fn to_json(&self) -> Value {
        let mut port = json!({"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080});
        if let Some(np) = self.node_port {
            port["nodePort"] = json!(np);
        }
        let ty = if self.lb_ips.is_empty() {
            if self.node_port.is_some() {
                "NodePort"
            } else {
                "ClusterIP"
            }
        } else {
            "LoadBalancer"
        };
        let mut spec = json!({
            "type": ty,
            "clusterIP": self.cluster_ips[0],
            "clusterIPs": self.cluster_ips,
            "ports": [port],
            "externalIPs": self.external_ips,
            "internalTrafficPolicy": if self.itp_local { "Local" } else { "Cluster" },
            "loadBalancerSourceRanges": self.source_ranges,
        });
        if ty != "ClusterIP" {
            spec["externalTrafficPolicy"] = json!(if self.etp_local { "Local" } else { "Cluster" });
        }
        if self.affinity {
            spec["sessionAffinity"] = json!("ClientIP");
            spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 60}});
        }
        let ingress: Vec<Value> = self
            .lb_ips
            .iter()
            .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
            .collect();
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "demo", "name": self.name},
            "spec": spec,
            "status": {"loadBalancer": {"ingress": ingress}},
        })
    }
}

/// `(pod, node, ready, serving, terminating)` endpoints of one Service, both families.
fn slices(service: &str, endpoints: &[(&str, &str, bool, bool, bool)]) -> Vec<Value> {
    let mut out = vec![];
    for (family, a, b) in [
        ("IPv4", "192.0.2.10", "192.0.2.138"),
        ("IPv6", "2001:db8:2::10", "2001:db8:3::10"),
    ] {
        let eps: Vec<Value> = endpoints
            .iter()
            .map(|(pod, node, ready, serving, terminating)| {
                let ip = if *pod == "pod-a" { a } else { b };
                json!({"addresses": [ip], "nodeName": node,
                       "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
            })
            .collect();
        out.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": "demo", "name": format!("{service}-{}", family.to_lowercase()),
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": family,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": eps,
        }));
    }
    out
}

const A: (&str, &str, bool, bool, bool) = ("pod-a", "node-a", true, true, false);
const B: (&str, &str, bool, bool, bool) = ("pod-b", "node-b", true, true, false);
const A_TERMINATING: (&str, &str, bool, bool, bool) = ("pod-a", "node-a", false, true, true);

fn world() -> (Vec<Service>, Vec<EndpointSlice>) {
    let services = [
        Svc {
            name: "web",
            cluster_ips: &["198.18.0.10", "2001:db8:ffff::10"],
            node_port: Some(30080),
            lb_ips: &["203.0.113.10", "2001:db8:1::10"],
            ..Svc::default()
        },
        Svc {
            name: "local",
            cluster_ips: &["198.18.0.11", "2001:db8:ffff::11"],
            node_port: Some(30081),
            lb_ips: &["203.0.113.11", "2001:db8:1::11"],
            etp_local: true,
            ..Svc::default()
        },
        Svc {
            name: "local-elsewhere",
            cluster_ips: &["198.18.0.12"],
            node_port: Some(30082),
            lb_ips: &["203.0.113.12"],
            etp_local: true,
            ..Svc::default()
        },
        Svc {
            name: "itp",
            cluster_ips: &["198.18.0.13"],
            itp_local: true,
            ..Svc::default()
        },
        Svc {
            name: "sticky",
            cluster_ips: &["198.18.0.14", "2001:db8:ffff::14"],
            affinity: true,
            ..Svc::default()
        },
        Svc {
            name: "ranges",
            cluster_ips: &["198.18.0.15"],
            lb_ips: &["203.0.113.15"],
            source_ranges: &["198.51.100.2/32"],
            ..Svc::default()
        },
        Svc {
            name: "empty",
            cluster_ips: &["198.18.0.20", "2001:db8:ffff::20"],
            node_port: Some(30090),
            ..Svc::default()
        },
        Svc {
            name: "terminating",
            cluster_ips: &["198.18.0.21"],
            ..Svc::default()
        },
        Svc {
            name: "zoned",
            cluster_ips: &["198.18.0.23"],
            ..Svc::default()
        },
        Svc {
            name: "ext",
            cluster_ips: &["198.18.0.22"],
            external_ips: &["203.0.113.50"],
            ..Svc::default()
        },
    ];
    let mut objects: Vec<Value> = services.iter().map(Svc::to_json).collect();
    objects.extend(slices("web", &[A, B]));
    objects.extend(slices("local", &[A, B]));
    objects.extend(slices("local-elsewhere", &[B]));
    objects.extend(slices("itp", &[B]));
    objects.extend(slices("sticky", &[A, B]));
    objects.extend(slices("ranges", &[A]));
    objects.extend(slices("terminating", &[A_TERMINATING]));
    objects.extend(slices("ext", &[A]));
    // Topology hints: pod-a for zone-a (this node's zone), pod-b for zone-b.
    for mut slice in slices("zoned", &[A, B]) {
        slice["endpoints"][0]["hints"] = json!({"forZones": [{"name": "zone-a"}]});
        slice["endpoints"][1]["hints"] = json!({"forZones": [{"name": "zone-b"}]});
        objects.push(slice);
    }
    split(&objects)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    Nftables,
    Iptables,
}

/// Pod CIDRs of the lab (`--cluster-cidr`): both pods, both families.
fn pod_cidrs() -> Vec<ipnet::IpNet> {
    ["192.0.2.0/24", "2001:db8:2::/47"]
        .iter()
        .map(|c| c.parse().expect("cidr"))
        .collect()
}

/// Both families, `--cluster-cidr` = the pods, `--nodeport-addresses` = the client-facing
/// addresses only.
fn programmer(backend: Backend, node_ns: &str) -> Programmer<Box<dyn Proxier>> {
    let proxiers: Vec<Box<dyn Proxier>> = [IpFamily::V4, IpFamily::V6]
        .into_iter()
        .map(|family| match backend {
            Backend::Nftables => Box::new(NftProxier::new(
                Options {
                    local_traffic: pod_cidrs(),
                    service_cidrs: vec![
                        "198.18.0.0/24".parse().expect("cidr"),
                        "2001:db8:ffff::/112".parse().expect("cidr"),
                    ],
                    ..Options::for_family(family)
                },
                NftCli::in_netns(node_ns),
            )) as Box<dyn Proxier>,
            Backend::Iptables => Box::new(
                IptablesBackend::new(IptablesCli::in_netns(Flavour::detect(), node_ns), family)
                    .with_local_traffic(pod_cidrs()),
            ) as Box<dyn Proxier>,
        })
        .collect();
    let node = NodeContext {
        zone: Some("zone-a".into()),
        ..NodeContext::named("node-a")
    };
    Programmer::with_proxiers(node, proxiers).with_nodeport_policy(NodePortPolicy::Cidrs(vec![
        "198.51.100.1/32".parse().expect("cidr"),
        "2001:db8:100::1/128".parse().expect("cidr"),
    ]))
}

/// Collects failures instead of stopping at the first, so one run shows every broken semantic.
struct Checks {
    backend: Backend,
    failures: Vec<String>,
    passed: usize,
}

impl Checks {
    fn check(&mut self, what: &str, ok: bool, detail: impl std::fmt::Debug) {
        if ok {
            self.passed += 1;
        } else {
            self.failures
                .push(format!("[{:?}] {what}: {detail:?}", self.backend));
        }
    }
}

fn semantics(backend: Backend) {
    if !is_root() {
        eprintln!("SKIPPED: needs root (network namespaces, nft, iptables)");
        return;
    }
    if backend == Backend::Iptables
        && !(Flavour::detect().present(IptFamily::V4) && Flavour::detect().present(IptFamily::V6))
    {
        panic!("iptables/ip6tables binaries missing: install the iptables package");
    }
    let mut lab = Lab::new(match backend {
        Backend::Nftables => "nft",
        Backend::Iptables => "ipt",
    });
    let t = topology(&mut lab);
    let mut p = programmer(backend, &t.node);
    let (services, endpoint_slices) = world();
    let outcome = p.sync(&services, &endpoint_slices);
    assert!(matches!(outcome, Outcome::Applied), "{outcome:?}");
    assert!(p.skipped().is_empty(), "{:?}", p.skipped());

    let mut c = Checks {
        backend,
        failures: vec![],
        passed: 0,
    };
    let client = t.client.as_str();
    let node = t.node.as_str();
    let served = |f: &Fetch| f.code == 0 && f.body.starts_with("pod-");
    let dropped = |f: &Fetch| f.code == 28;
    let refused = |f: &Fetch| f.code == 7 && f.elapsed < Duration::from_secs(1);

    // ClusterIP from a client behind the node and from the node itself, both families (§1.2, §1.17).
    let f = curl(client, "http://198.18.0.10/", &[]);
    c.check("ClusterIP from client", served(&f), &f);
    let f = curl(node, "http://198.18.0.10/", &[]);
    c.check("ClusterIP from host", served(&f), &f);
    let f = curl(client, "http://[2001:db8:ffff::10]/", &[]);
    c.check("IPv6 ClusterIP from client", served(&f), &f);
    let f = curl(node, "http://[2001:db8:ffff::10]/", &[]);
    c.check("IPv6 ClusterIP from host", served(&f), &f);

    // NodePort on the node's address, both families; never on 127.0.0.1 (§1.3).
    let f = curl(client, "http://198.51.100.1:30080/", &[]);
    c.check("NodePort", served(&f), &f);
    let f = curl(client, "http://[2001:db8:100::1]:30080/", &[]);
    c.check("IPv6 NodePort", served(&f), &f);
    let f = curl(node, "http://127.0.0.1:30080/", &[]);
    c.check("no NodePort on 127.0.0.1", f.code != 0, &f);
    // --nodeport-addresses: the node's pod-facing address is local but not listed.
    let f = curl(client, "http://192.0.2.1:30080/", &[]);
    c.check("no NodePort outside --nodeport-addresses", f.code != 0, &f);

    // --cluster-cidr detector: off-cluster ClusterIP traffic is masqueraded, pod traffic is not.
    let f = curl(client, "http://198.18.0.21/", &[]);
    c.check(
        "off-cluster ClusterIP traffic is masqueraded",
        served(&f) && !f.body.ends_with(" 198.51.100.2"),
        &f,
    );
    let f = curl(&t.pod_b, "http://198.18.0.21/", &[]);
    c.check(
        "pod ClusterIP traffic keeps its source",
        f.code == 0 && f.body == "pod-a 192.0.2.138",
        &f,
    );
    // eTP=Local without a local endpoint: pod traffic short-circuits to the cluster endpoints.
    let f = curl(&t.pod_b, "http://203.0.113.12/", &[]);
    c.check(
        "pod traffic to an eTP=Local LB IP short-circuits",
        f.code == 0 && f.body.starts_with("pod-b"),
        &f,
    );

    // LB IP, eTP=Cluster: served and masqueraded (the pod sees a node address).
    let f = curl(client, "http://203.0.113.10/", &[]);
    c.check(
        "LB IP eTP=Cluster is masqueraded",
        served(&f) && !f.body.ends_with(" 198.51.100.2"),
        &f,
    );
    let f = curl(client, "http://[2001:db8:1::10]/", &[]);
    c.check("IPv6 LB IP", served(&f), &f);

    // eTP=Local: local endpoint only, client source kept (§1.6).
    for _ in 0..5 {
        let f = curl(client, "http://203.0.113.11/", &[]);
        c.check(
            "LB IP eTP=Local keeps the client address, local endpoint only",
            f.code == 0 && f.body == "pod-a 198.51.100.2",
            &f,
        );
    }
    let f = curl(client, "http://[2001:db8:1::11]/", &[]);
    c.check(
        "IPv6 LB IP eTP=Local keeps the client address",
        f.code == 0 && f.body == "pod-a 2001:db8:100::2",
        &f,
    );
    let f = curl(client, "http://198.51.100.1:30081/", &[]);
    c.check(
        "NodePort eTP=Local keeps the client address",
        f.code == 0 && f.body == "pod-a 198.51.100.2",
        &f,
    );
    // eTP=Local, no local endpoint: external traffic dropped, host traffic short-circuited.
    let f = curl(client, "http://203.0.113.12/", &[]);
    c.check("eTP=Local without local endpoint drops", dropped(&f), &f);
    let f = curl(client, "http://198.51.100.1:30082/", &[]);
    c.check(
        "NodePort eTP=Local without local endpoint drops",
        dropped(&f),
        &f,
    );
    let f = curl(node, "http://203.0.113.12/", &[]);
    c.check(
        "host traffic to an eTP=Local LB IP short-circuits",
        f.code == 0 && f.body.starts_with("pod-b"),
        &f,
    );
    // ClusterIP of an eTP=Local Service still uses every endpoint.
    let f = curl(client, "http://198.18.0.12/", &[]);
    c.check("ClusterIP of eTP=Local Service", served(&f), &f);

    // iTP=Local with endpoints only elsewhere: ClusterIP traffic dropped (§1.9).
    let f = curl(client, "http://198.18.0.13/", &[]);
    c.check("iTP=Local without local endpoint drops", dropped(&f), &f);

    // ClientIP affinity: every connection from one client goes to one endpoint (§1.10).
    let first = curl(client, "http://198.18.0.14/", &[]);
    let mut same = served(&first);
    for _ in 0..15 {
        let f = curl(client, "http://198.18.0.14/", &[]);
        same &= f.code == 0 && f.body == first.body;
    }
    c.check("sessionAffinity ClientIP sticks", same, &first);
    let first6 = curl(client, "http://[2001:db8:ffff::14]/", &[]);
    let mut same6 = served(&first6);
    for _ in 0..10 {
        let f = curl(client, "http://[2001:db8:ffff::14]/", &[]);
        same6 &= f.code == 0 && f.body == first6.body;
    }
    c.check("IPv6 sessionAffinity ClientIP sticks", same6, &first6);

    // loadBalancerSourceRanges: only listed sources reach the LB IP (§1.12); not the ClusterIP.
    let f = curl(
        client,
        "http://203.0.113.15/",
        &["--interface", "198.51.100.2"],
    );
    c.check("source range admits a listed client", served(&f), &f);
    let f = curl(
        client,
        "http://203.0.113.15/",
        &["--interface", "198.51.100.3"],
    );
    c.check("source range drops an unlisted client", dropped(&f), &f);
    let f = curl(
        client,
        "http://198.18.0.15/",
        &["--interface", "198.51.100.3"],
    );
    c.check(
        "source ranges do not apply to the ClusterIP",
        served(&f),
        &f,
    );

    // No endpoints: REJECT at once, ClusterIP and NodePort, both families (§1.11).
    let f = curl(client, "http://198.18.0.20/", &[]);
    c.check("no endpoints: ClusterIP refused at once", refused(&f), &f);
    let f = curl(client, "http://198.51.100.1:30090/", &[]);
    c.check("no endpoints: NodePort refused at once", refused(&f), &f);
    let f = curl(client, "http://[2001:db8:ffff::20]/", &[]);
    c.check(
        "no endpoints: IPv6 ClusterIP refused at once",
        refused(&f),
        &f,
    );
    let f = curl(node, "http://[2001:db8:ffff::20]/", &[]);
    c.check(
        "no endpoints: IPv6 ClusterIP from host refused at once",
        refused(&f),
        &f,
    );

    // Serving-terminating endpoints as the last resort (§1.15).
    let f = curl(client, "http://198.18.0.21/", &[]);
    c.check(
        "terminating-but-serving endpoint used as last resort",
        served(&f),
        &f,
    );

    // Topology hints: only the endpoint hinted for this node's zone (§1.14).
    let mut zoned = true;
    for _ in 0..10 {
        let f = curl(client, "http://198.18.0.23/", &[]);
        zoned &= f.code == 0 && f.body.starts_with("pod-a");
    }
    c.check(
        "zone hints keep ClusterIP traffic in this node's zone",
        zoned,
        (),
    );

    // An unallocated address of the Service CIDR is dropped (nftables only, as kube-proxy).
    let f = curl(client, "http://198.18.0.99:8080/", &[]);
    if backend == Backend::Nftables {
        c.check("unallocated ClusterIP dropped", dropped(&f), &f);
    } else {
        // The control: without the drop the address is routed to pod-a, which answers.
        c.check(
            "unallocated ClusterIP routed (iptables mode has no drop)",
            served(&f),
            &f,
        );
    }

    // externalIPs (§1.5).
    let f = curl(client, "http://203.0.113.50/", &[]);
    c.check("externalIP", served(&f), &f);

    // A change is applied partially and keeps everything else working.
    let (services2, mut slices2) = world();
    slices2.retain(|s| {
        s.metadata.name.as_deref() != Some("local-elsewhere-ipv4")
            && s.metadata.name.as_deref() != Some("local-elsewhere-ipv6")
    });
    let (_, extra) = split(&slices("local-elsewhere", &[A, B]));
    slices2.extend(extra);
    let outcome = p.sync(&services2, &slices2);
    c.check(
        "partial sync applied",
        matches!(outcome, Outcome::Applied),
        &outcome,
    );
    let f = curl(client, "http://203.0.113.12/", &[]);
    c.check(
        "after the change, eTP=Local serves the new local endpoint",
        f.code == 0 && f.body == "pod-a 198.51.100.2",
        &f,
    );
    let f = curl(client, "http://198.18.0.10/", &[]);
    c.check(
        "after the change, other Services still served",
        served(&f),
        &f,
    );
    let outcome = p.sync(&services2, &slices2);
    c.check(
        "an unchanged world sends nothing",
        matches!(outcome, Outcome::Unchanged),
        &outcome,
    );

    eprintln!("[{backend:?}] {} checks passed", c.passed);
    assert!(c.failures.is_empty(), "failed:\n{}", c.failures.join("\n"));
}

#[test]
fn nftables_backend_semantics() {
    semantics(Backend::Nftables);
}

#[test]
fn iptables_backend_semantics() {
    semantics(Backend::Iptables);
}

// === partial syncs leave the kernel exactly as a full sync would ===

/// `nft list table` as comparable data: per block (chain/set/map), its header and its lines, with
/// map/set elements sorted (a partial sync creates chains and elements in another order).
fn normalized_listing(text: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut blocks = std::collections::BTreeMap::new();
    let mut current: Option<(String, Vec<String>)> = None;
    let mut in_elements = false;
    let mut elements: Vec<String> = vec![];
    for line in text.lines().map(str::trim) {
        if let Some(name) = ["chain ", "set ", "map "]
            .iter()
            .find(|p| line.starts_with(**p) && line.ends_with('{'))
            .map(|_| line.trim_end_matches('{').trim().to_string())
        {
            current = Some((name, vec![]));
            continue;
        }
        let Some((_, lines)) = current.as_mut() else {
            continue;
        };
        if line.starts_with("elements = {") {
            in_elements = true;
            let rest = line.trim_start_matches("elements = {");
            elements.extend(
                rest.split(',')
                    .map(|e| e.trim().trim_end_matches('}').trim().to_string()),
            );
            if line.ends_with('}') {
                in_elements = false;
            }
            continue;
        }
        if in_elements {
            elements.extend(
                line.split(',')
                    .map(|e| e.trim().trim_end_matches('}').trim().to_string()),
            );
            if line.ends_with('}') {
                in_elements = false;
            }
            continue;
        }
        if line == "}" {
            let (name, mut lines) = current.take().expect("inside a block");
            elements.retain(|e| !e.is_empty());
            elements.sort();
            lines.extend(elements.drain(..).map(|e| format!("element {e}")));
            blocks.insert(name, lines);
            continue;
        }
        lines.push(line.to_string());
    }
    blocks
}

fn list(ns: &str, family: &str) -> String {
    let out = run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "nft",
        "list",
        "table",
        family,
        "drawbridge",
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn partial_syncs_converge_to_the_full_ruleset() {
    if !is_root() {
        eprintln!("SKIPPED: needs root");
        return;
    }
    let mut lab = Lab::new("conv");
    let incremental = lab.netns("inc");
    let fresh = lab.netns("full");
    let mut p = NftProxier::new(Options::default(), NftCli::in_netns(&incremental));

    // A sequence of worlds: scale up/down, lose all endpoints, add/remove Services, toggle
    // affinity and source ranges, change eTP.
    let world = |step: usize| -> ServiceTable {
        let mut objects = vec![];
        for i in 0..6usize {
            if (i + step) % 7 == 6 {
                continue; // Service i is absent at this step.
            }
            let svc = Svc {
                name: ["s0", "s1", "s2", "s3", "s4", "s5"][i],
                cluster_ips: [
                    &["198.18.1.0"][..],
                    &["198.18.1.1"],
                    &["198.18.1.2"],
                    &["198.18.1.3"],
                    &["198.18.1.4"],
                    &["198.18.1.5"],
                ][i],
                node_port: Some(30100 + i as u16),
                lb_ips: [
                    &["203.0.113.100"][..],
                    &["203.0.113.101"],
                    &["203.0.113.102"],
                    &["203.0.113.103"],
                    &["203.0.113.104"],
                    &["203.0.113.105"],
                ][i],
                etp_local: (i + step).is_multiple_of(2),
                affinity: (i + step).is_multiple_of(3),
                source_ranges: if (i + step).is_multiple_of(4) {
                    &["198.51.100.0/24"]
                } else {
                    &[]
                },
                ..Svc::default()
            };
            objects.push(svc.to_json());
            let endpoints: Vec<(&str, &str, bool, bool, bool)> = match (i * 3 + step) % 4 {
                0 => vec![],
                1 => vec![A],
                2 => vec![B],
                _ => vec![A, B],
            };
            objects.extend(slices(svc.name, &endpoints));
        }
        let (services, endpoint_slices) = split(&objects);
        ServiceTable::build(&services, &endpoint_slices, "node-a").0
    };

    let t0 = Instant::now();
    let mut partial = 0;
    for step in 0..12 {
        let table = world(step);
        // Pretend time passes so stale chains get deleted along the way.
        let kind = p
            .sync(&table, t0 + Duration::from_secs(step as u64 * 2))
            .unwrap_or_else(|e| panic!("step {step}: {e}"));
        if matches!(kind, node_programmer::nftables::SyncKind::Partial { .. }) {
            partial += 1;
        }
        // The same world, fully rendered into a fresh table.
        run(&["ip", "netns", "exec", &fresh, "nft", "flush", "ruleset"]);
        let text = render::transaction(&table);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &fresh, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
        assert!(child.wait().expect("nft").success(), "full render loads");

        let mut got = normalized_listing(&list(&incremental, "ip"));
        let want = normalized_listing(&list(&fresh, "ip"));
        // Flushed-but-not-yet-deleted chains are empty and unreferenced; ignore them.
        got.retain(|name, lines| want.contains_key(name) || !lines.is_empty());
        assert_eq!(
            got, want,
            "step {step}: partial sync differs from a full sync"
        );
    }
    assert!(
        partial >= 10,
        "expected mostly partial syncs, got {partial}"
    );
}

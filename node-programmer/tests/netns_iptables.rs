//! Data-plane tests of the iptables backend in network namespaces: the same scenarios as
//! `tests/netns.rs` (nftables), with the rules written by `IptablesProxier` through the real
//! `iptables-restore` (legacy flavour when present, as in production).
//!
//! ```text
//!   client ns                      node ns (rules, ip_forward=1)                pod ns
//!   c0 198.51.100.2/24 ───veth─── n0 198.51.100.1/24   n1 192.0.2.1/24 ───veth─── p0 192.0.2.10/24
//!   default via node               default via client                          default via node
//!                                                                              HTTP :8080 answers
//!                                                                              with the client IP
//! ```
//!
//! Needs root (netns, iptables). Skips with a message otherwise. Every namespace and process a
//! test creates is owned by a [`Lab`] guard whose `Drop` removes them, also when the test fails
//! (deleting a namespace removes its iptables tables with it).

mod support;
use support::{BACKEND, Lab, curl, is_root, service, slice, table_of, topology, wait_for};

use std::time::Duration;

use node_programmer::iptables::{
    self, Family, Flavour, IptablesCli, IptablesProxier, Runner, SyncKind, Table,
};
use serde_json::{Value, json};

// === the world ===

/// - `web`: eTP=Cluster, ClusterIP 198.18.0.10, LB 203.0.113.10, NodePort 30080 → pod;
/// - `local`: eTP=Local, ClusterIP 198.18.0.11, LB 203.0.113.11, NodePort 30081 → pod (on node-a);
/// - `elsewhere`: eTP=Local, ClusterIP 198.18.0.12, LB 203.0.113.12, NodePort 30082 → the pod,
///   but the slice says it runs on node-b (so this node has no local endpoint);
/// - `empty`: no endpoints, ClusterIP 198.18.0.20, LB 203.0.113.20, NodePort 30090.
fn world() -> Vec<Value> {
    vec![
        service("web", "198.18.0.10", 30080, "203.0.113.10", "Cluster"),
        slice("web", "192.0.2.10", "node-a"),
        service("local", "198.18.0.11", 30081, "203.0.113.11", "Local"),
        slice("local", "192.0.2.10", "node-a"),
        service("elsewhere", "198.18.0.12", 30082, "203.0.113.12", "Local"),
        slice("elsewhere", "192.0.2.10", "node-b"),
        service("empty", "198.18.0.20", 30090, "203.0.113.20", "Cluster"),
    ]
}

// === the lab ===

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("SKIPPED: this test needs root (network namespaces and iptables)");
            return;
        }
    };
}

fn save(runner: &IptablesCli, table: Table) -> String {
    runner.save(Family::V4, table).expect("iptables-save")
}

/// Every `DRAWBRIDGE` mention in nat and filter of `runner`'s flavour.
fn drawbridge_lines(runner: &IptablesCli) -> Vec<String> {
    [Table::Nat, Table::Filter]
        .into_iter()
        .flat_map(|t| {
            save(runner, t)
                .lines()
                .filter(|l| l.contains("DRAWBRIDGE"))
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Counts restores really sent.
struct Counting {
    inner: IptablesCli,
    restores: std::cell::Cell<usize>,
}

impl Runner for Counting {
    fn restore(&self, family: Family, text: &str) -> iptables::Result<()> {
        self.restores.set(self.restores.get() + 1);
        self.inner.restore(family, text)
    }
    fn save(&self, family: Family, table: Table) -> iptables::Result<String> {
        self.inner.save(family, table)
    }
    fn run(&self, family: Family, table: Table, args: &[String]) -> iptables::Result<bool> {
        self.inner.run(family, table, args)
    }
}

// === tests ===

/// For each flavour present (legacy and nf_tables): the kernel accepts the full ruleset; an
/// unchanged world sends nothing; a one-Service change is a partial restore that deletes the
/// stale chains; a broken restore changes nothing and forces a full one; cleanup leaves no
/// DRAWBRIDGE chain or jump (twice without error) and never touches someone else's chain.
#[test]
fn kernel_accepts_the_rules_partial_restores_and_cleanup() {
    require_root!();
    for flavour in [Flavour::Legacy, Flavour::Nft] {
        if !flavour.present(Family::V4) {
            eprintln!("{flavour:?} iptables not installed; not tested");
            continue;
        }
        let mut lab = Lab::new(&format!("k{flavour:?}"));
        let ns = lab.netns("node");
        let cli = IptablesCli::in_netns(flavour, &ns);
        // Someone else's chain and jump in the same tables must survive everything we do.
        cli.restore(
            Family::V4,
            "*nat\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n",
        )
        .expect("someone else's rules");

        let mut proxier = IptablesProxier::new(
            Counting {
                inner: cli.clone(),
                restores: 0.into(),
            },
            Family::V4,
        );
        assert_eq!(
            proxier.sync(&table_of(&world())).expect("full"),
            SyncKind::Full
        );
        let nat = save(&cli, Table::Nat);
        assert!(
            nat.contains("-j DNAT --to-destination 192.0.2.10:8080"),
            "{nat}"
        );
        assert!(
            nat.contains("-A PREROUTING -m comment --comment \"drawbridge service portals\" -j DRAWBRIDGE-SERVICES"),
            "{nat}"
        );
        let filter = save(&cli, Table::Filter);
        assert!(
            filter.lines().any(
                |l| l.starts_with("-A DRAWBRIDGE-SERVICES -d 198.18.0.20/32")
                    && l.contains("--dport 80 -j REJECT")
            ),
            "{filter}"
        );
        let sent = proxier.runner().restores.get();

        assert_eq!(
            proxier.sync(&table_of(&world())).expect("noop"),
            SyncKind::Unchanged
        );
        assert_eq!(
            proxier.runner().restores.get(),
            sent,
            "unchanged world re-sent"
        );

        // One Service changes (empty gets an endpoint, web loses its LB): partial restore.
        let mut changed = world();
        changed[0] = service("web", "198.18.0.10", 30080, "203.0.113.99", "Cluster");
        changed.push(slice("empty", "192.0.2.10", "node-a"));
        assert_eq!(
            proxier.sync(&table_of(&changed)).expect("partial"),
            SyncKind::Partial
        );
        let nat = save(&cli, Table::Nat);
        assert!(nat.contains("-d 203.0.113.99/32"), "{nat}");
        assert!(!nat.contains("-d 203.0.113.10/32"), "{nat}");
        assert!(!save(&cli, Table::Filter).contains("198.18.0.20"));

        // A Service disappears: its chains are deleted, not left behind.
        let before: Vec<String> = iptables::our_chains(&nat).into_iter().collect();
        let fewer: Vec<Value> = changed[2..].to_vec();
        assert_eq!(
            proxier.sync(&table_of(&fewer)).expect("partial"),
            SyncKind::Partial
        );
        let after = iptables::our_chains(&save(&cli, Table::Nat));
        assert!(after.len() < before.len(), "{before:?} -> {after:?}");
        let want = iptables::Ruleset::build(&table_of(&fewer), Family::V4);
        let wanted: std::collections::BTreeSet<String> = want
            .nat_top
            .iter()
            .chain(&want.nat_service)
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(after, wanted, "kernel chains differ from the desired ones");

        // A broken restore is refused as a whole; the next sync is full and restores order.
        assert!(cli
            .restore(Family::V4, "*nat\n:DRAWBRIDGE-SERVICES - [0:0]\n-A DRAWBRIDGE-SERVICES -j NO-SUCH-CHAIN\nCOMMIT\n")
            .is_err());
        assert!(
            save(&cli, Table::Nat).contains("DRAWBRIDGE-NODEPORTS"),
            "partial damage"
        );
        proxier.force_full_sync();
        assert_eq!(
            proxier.sync(&table_of(&world())).expect("full"),
            SyncKind::Full
        );
        let nat = save(&cli, Table::Nat);
        let after = iptables::our_chains(&nat);
        let want = iptables::Ruleset::build(&table_of(&world()), Family::V4);
        assert_eq!(after.len(), want.nat_top.len() + want.nat_service.len());
        // A second full sync adds no second copy of the jump rules.
        for (table, text) in [("nat", &nat), ("filter", &save(&cli, Table::Filter))] {
            let jumps = text
                .lines()
                .filter(|l| {
                    l.starts_with("-A ")
                        && !l.starts_with("-A DRAWBRIDGE")
                        && l.contains("-j DRAWBRIDGE")
                })
                .count();
            let expected = iptables::jump_rules()
                .iter()
                .filter(|(t, _, _)| t.as_str() == table)
                .count();
            assert_eq!(jumps, expected, "{table} jump rules:\n{text}");
        }

        for _ in 0..2 {
            proxier.cleanup().expect("cleanup");
        }
        let left = drawbridge_lines(&cli);
        assert!(left.is_empty(), "left behind: {left:?}");
        let nat = save(&cli, Table::Nat);
        assert!(
            nat.contains("-A PREROUTING -j KUBE-SERVICES"),
            "cleanup touched another chain:\n{nat}"
        );

        // cleanup_everywhere finds rules of either flavour.
        let mut again = IptablesProxier::new(cli.clone(), Family::V4);
        again.sync(&table_of(&world())).expect("full");
        iptables::cleanup_everywhere(Some(&ns)).expect("cleanup_everywhere");
        let left = drawbridge_lines(&cli);
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

/// Real connections through the node: ClusterIP from the node, LB IP and NodePort from outside
/// (masqueraded), eTP=Local keeps the client address and DROPs when this node has no local
/// endpoint (but still short-circuits host traffic), no endpoints → refused at once, a partial
/// restore for one Service keeps every other Service working, cleanup removes everything.
#[test]
fn traffic_through_a_programmed_node() {
    require_root!();
    let mut lab = Lab::new("t");
    let t = topology(&mut lab);
    lab.spawn(&t.pod, &["python3", "-c", BACKEND]);
    wait_for("the backend to listen", Duration::from_secs(10), || {
        curl(&t.pod, "http://192.0.2.10:8080/").code == 0
    });
    let cli = IptablesCli::in_netns(Flavour::detect(), &t.node);
    let mut proxier = IptablesProxier::new(cli.clone(), Family::V4);
    assert_eq!(
        proxier.sync(&table_of(&world())).expect("full"),
        SyncKind::Full
    );

    let ok = |ns: &str, url: &str, from: &str, what: &str| {
        let f = curl(ns, url);
        assert_eq!((f.code, f.body.as_str()), (0, from), "{what} ({url})");
    };
    // ClusterIP from the node itself (nat OUTPUT); no SNAT.
    ok(
        &t.node,
        "http://198.18.0.10/",
        "198.51.100.1",
        "ClusterIP from the node",
    );
    // ClusterIP from outside (nat PREROUTING): no SNAT either (no masquerade for ClusterIP).
    ok(
        &t.client,
        "http://198.18.0.10/",
        "198.51.100.2",
        "ClusterIP from the client",
    );
    // LB IP and NodePort from outside, eTP=Cluster: DNAT + masquerade.
    ok(
        &t.client,
        "http://203.0.113.10/",
        "192.0.2.1",
        "LB IP from the client",
    );
    ok(
        &t.client,
        "http://198.51.100.1:30080/",
        "192.0.2.1",
        "NodePort from the client",
    );
    // eTP=Local keeps the client's source address.
    ok(
        &t.client,
        "http://203.0.113.11/",
        "198.51.100.2",
        "eTP=Local LB IP",
    );
    ok(
        &t.client,
        "http://198.51.100.1:30081/",
        "198.51.100.2",
        "eTP=Local NodePort",
    );
    // eTP=Local with no local endpoint: external traffic is dropped (a timeout, not a refusal)...
    for url in ["http://203.0.113.12/", "http://198.51.100.1:30082/"] {
        let f = curl(&t.client, url);
        assert_eq!(
            f.code, 28,
            "{url}: expected a timeout (DROP), got {} {:?}",
            f.code, f.body
        );
    }
    // ...but the node's own traffic to the LB IP is short-circuited to the cluster set (masqueraded).
    ok(
        &t.node,
        "http://203.0.113.12/",
        "192.0.2.1",
        "eTP=Local LB IP from the node",
    );
    // The ClusterIP of that Service serves from any endpoint.
    ok(
        &t.client,
        "http://198.18.0.12/",
        "198.51.100.2",
        "ClusterIP of eTP=Local",
    );

    // No endpoints: refused at once.
    for (ns, url) in [
        (&t.client, "http://203.0.113.20/"),
        (&t.client, "http://198.51.100.1:30090/"),
        (&t.client, "http://198.18.0.20/"),
        (&t.node, "http://198.18.0.20/"),
    ] {
        let f = curl(ns, url);
        assert_eq!(
            f.code, 7,
            "{url} from {ns}: expected refused, got {} {:?}",
            f.code, f.body
        );
        assert!(
            f.elapsed < Duration::from_secs(1),
            "{url}: refused after {:?}",
            f.elapsed
        );
    }
    // 127.0.0.1 is not a NodePort address (no route_localnet): refused by the node's own stack.
    let f = curl(&t.node, "http://127.0.0.1:30080/");
    assert_eq!(f.code, 7, "127.0.0.1 NodePort: {} {:?}", f.code, f.body);

    // One Service changes: a partial restore; the change works and everything else still does.
    let mut changed = world();
    changed.push(slice("empty", "192.0.2.10", "node-a"));
    assert_eq!(
        proxier.sync(&table_of(&changed)).expect("partial"),
        SyncKind::Partial
    );
    ok(
        &t.client,
        "http://203.0.113.20/",
        "192.0.2.1",
        "LB IP after the change",
    );
    ok(
        &t.client,
        "http://198.51.100.1:30090/",
        "192.0.2.1",
        "NodePort after the change",
    );
    ok(
        &t.client,
        "http://203.0.113.10/",
        "192.0.2.1",
        "untouched LB IP",
    );
    ok(
        &t.client,
        "http://203.0.113.11/",
        "198.51.100.2",
        "untouched eTP=Local LB IP",
    );
    ok(
        &t.node,
        "http://198.18.0.10/",
        "198.51.100.1",
        "untouched ClusterIP",
    );

    // A restart: a new proxier (no memory of what it wrote) takes over the rules in place with a
    // full sync; traffic keeps flowing and nothing is duplicated.
    drop(proxier);
    let mut proxier = IptablesProxier::new(cli.clone(), Family::V4);
    assert_eq!(
        proxier.sync(&table_of(&changed)).expect("full"),
        SyncKind::Full
    );
    ok(
        &t.client,
        "http://203.0.113.20/",
        "192.0.2.1",
        "LB IP after a restart",
    );
    ok(
        &t.client,
        "http://203.0.113.11/",
        "198.51.100.2",
        "eTP=Local after a restart",
    );
    let nat = save(&cli, Table::Nat);
    assert_eq!(
        nat.lines()
            .filter(|l| l.starts_with("-A PREROUTING") && l.contains("DRAWBRIDGE"))
            .count(),
        1,
        "{nat}"
    );

    proxier.cleanup().expect("cleanup");
    let left = drawbridge_lines(&cli);
    assert!(left.is_empty(), "left behind: {left:?}");
    // Without rules the LB IP is not ours any more: the node routes it back out (no answer).
    assert_ne!(curl(&t.client, "http://203.0.113.10/").code, 0);
}

/// `-m statistic --probability 1/(n-i)` spreads real new connections evenly: 300 connections to
/// a ClusterIP with 3 endpoints, each must get 15%–52% ([`support::assert_even_spread`]).
#[test]
fn new_connections_spread_evenly_over_endpoints() {
    require_root!();
    let mut lab = Lab::new("d");
    let t = topology(&mut lab);
    support::whoami_endpoints(&mut lab, &t);
    let table = table_of(&support::spread_world());
    let text = iptables::Ruleset::build(&table, Family::V4).full_text();
    assert!(text.contains("--probability 0.3333333333"), "{text}");
    assert!(text.contains("--probability 0.5000000000"), "{text}");
    let mut proxier = IptablesProxier::new(
        IptablesCli::in_netns(Flavour::detect(), &t.node),
        Family::V4,
    );
    proxier.sync(&table).expect("sync");
    support::wait_for_whoami(&t);
    support::assert_even_spread(&t, 300);
}

/// The golden rule sets with ClientIP affinity (`-m recent`), `loadBalancerSourceRanges`
/// (`DRAWBRIDGE-FW-*` + `DRAWBRIDGE-PROXY-FIREWALL`) and a healthCheckNodePort load into a real
/// kernel in both families (`iptables-restore` / `ip6tables-restore`) and both flavours present.
#[test]
fn feature_rules_load_in_both_families() {
    require_root!();
    let mut lab = Lab::new("f");
    let ns = lab.netns("node");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/iptables/golden");
    for flavour in [Flavour::Legacy, Flavour::Nft] {
        for (family, file) in [
            (Family::V4, "features-v4.rules"),
            (Family::V6, "features-v6.rules"),
        ] {
            if !flavour.present(family) {
                continue;
            }
            let text = std::fs::read_to_string(dir.join(file)).expect("golden file");
            let cli = IptablesCli::in_netns(flavour, &ns);
            cli.restore(family, &text)
                .unwrap_or_else(|e| panic!("{flavour:?} {family:?} {file}: {e}"));
            let nat = cli.save(family, Table::Nat).expect("save");
            assert!(nat.contains("--rcheck --seconds 600 --reap"), "{nat}");
            let filter = cli.save(family, Table::Filter).expect("save");
            assert!(filter.contains("-A DRAWBRIDGE-PROXY-FIREWALL"), "{filter}");
            assert!(filter.contains("--dport 32071 -j ACCEPT"), "{filter}");
            iptables::cleanup_with(&cli, family).expect("cleanup");
            let nat = cli.save(family, Table::Nat).expect("save");
            assert!(!nat.contains("DRAWBRIDGE"), "{nat}");
        }
    }
}

/// ClientIP affinity (`-m recent`): 30 new connections from one client all reach the same one of
/// three endpoints (without affinity the chance of that is 3 × (1/3)^30). And
/// `loadBalancerSourceRanges`: the LB IP is dropped for a client outside the ranges and served once
/// the client's range is allowed, while the NodePort ignores the ranges (§1.12).
#[test]
fn session_affinity_and_source_ranges() {
    require_root!();
    let mut lab = Lab::new("a");
    let t = topology(&mut lab);
    let endpoints = support::ENDPOINTS;
    support::whoami_endpoints(&mut lab, &t);
    let world = |ranges: &[&str]| -> Vec<Value> {
        vec![
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"namespace": "demo", "name": "sticky"},
                "spec": {
                    "type": "LoadBalancer", "clusterIP": "198.18.0.40", "clusterIPs": ["198.18.0.40"],
                    "sessionAffinity": "ClientIP",
                    "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
                    "loadBalancerSourceRanges": ranges,
                    "ports": [{"name": "tcp", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30040}],
                },
                "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.40", "ipMode": "VIP"}]}},
            }),
            json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"namespace": "demo", "name": "sticky-abc",
                             "labels": {"kubernetes.io/service-name": "sticky"}},
                "addressType": "IPv4",
                "ports": [{"name": "tcp", "port": 8080, "protocol": "TCP"}],
                "endpoints": endpoints.iter().map(|ip| json!({
                    "addresses": [ip], "nodeName": "node-a", "conditions": {"ready": true},
                })).collect::<Vec<_>>(),
            }),
        ]
    };
    let mut proxier = IptablesProxier::new(
        IptablesCli::in_netns(Flavour::detect(), &t.node),
        Family::V4,
    );
    proxier
        .sync(&table_of(&world(&["192.0.2.0/24"])))
        .expect("sync");
    let connect = support::connect_many;
    support::wait_for_whoami(&t);

    let counts = connect(&t.client, "198.18.0.40", "80", 30);
    let map = counts.as_object().expect("object");
    assert_eq!(map.len(), 1, "affinity broken: {counts}");
    assert!(
        endpoints.contains(&map.keys().next().expect("one").as_str()),
        "{counts}"
    );

    // Source ranges: the client (198.51.100.2) is outside 192.0.2.0/24 → dropped at the LB IP.
    let f = curl(&t.client, "http://203.0.113.40/");
    assert_eq!(
        f.code, 28,
        "outside the source ranges: {} {:?}",
        f.code, f.body
    );
    // The NodePort is not subject to the ranges.
    let counts = connect(&t.client, "198.51.100.1", "30040", 1);
    assert!(counts.get("error").is_none(), "NodePort: {counts}");
    // Allow the client's range: the LB IP answers.
    assert_eq!(
        proxier
            .sync(&table_of(&world(&["192.0.2.0/24", "198.51.100.0/24"])))
            .expect("partial"),
        SyncKind::Partial
    );
    let counts = connect(&t.client, "203.0.113.40", "80", 1);
    assert!(
        counts.get("error").is_none(),
        "LB IP inside the ranges: {counts}"
    );
}

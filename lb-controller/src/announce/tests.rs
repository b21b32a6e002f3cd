use super::*;

use drawbridge_resources::crd_l2::NodeSelectorRequirement;
use drawbridge_resources::events::RecordingEventRecorder;
use serde_json::json;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn node(name: &str) -> NodeView {
    NodeView {
        name: name.into(),
        labels: BTreeMap::new(),
        ready: true,
        network_unavailable: false,
    }
}

fn nodes(names: &[&str]) -> Vec<NodeView> {
    names.iter().map(|n| node(n)).collect()
}

fn all_pools() -> Vec<Policy> {
    vec![Policy {
        name: "all".into(),
        ..Default::default()
    }]
}

fn selector(key: &str, value: &str) -> NodeLabelSelector {
    NodeLabelSelector {
        match_labels: [(key.to_string(), value.to_string())].into(),
        match_expressions: vec![],
    }
}

const VIP: &str = "203.0.113.10";

/// The winner among `names` with every filter open.
fn winner(names: &[&str], ip_: &str) -> Option<String> {
    elect(
        ip(ip_),
        "lab",
        &nodes(names),
        &all_pools(),
        false,
        &BTreeSet::new(),
    )
}

#[test]
fn eligibility_table() {
    let everyone = ["node-a", "node-b", "node-c"];
    let first = winner(&everyone, VIP).expect("someone wins");
    // Knock out the winner in each way in turn: the election must move to someone else, and
    // never to the knocked-out node.
    type Knock = fn(&mut NodeView);
    let knocks: [(&str, Knock); 4] = [
        ("not Ready", |n| n.ready = false),
        ("NetworkUnavailable", |n| n.network_unavailable = true),
        ("exclude label", |n| {
            n.labels
                .insert(LABEL_EXCLUDE_FROM_EXTERNAL_LB.into(), String::new());
        }),
        ("not selected", |n| {
            n.labels.insert("zone".into(), "b".into());
        }),
    ];
    let policies = vec![Policy {
        name: "zone-a".into(),
        pools: vec![],
        node_selectors: vec![NodeLabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![NodeSelectorRequirement {
                key: "zone".into(),
                operator: "NotIn".into(),
                values: vec!["b".into()],
            }],
        }],
        interfaces: vec![],
    }];
    for (what, knock) in knocks {
        let mut ns = nodes(&everyone);
        knock(ns.iter_mut().find(|n| n.name == first).expect("winner"));
        let got = elect(ip(VIP), "lab", &ns, &policies, false, &BTreeSet::new());
        assert!(got.is_some(), "{what}: another node takes over");
        assert_ne!(got.as_deref(), Some(first.as_str()), "{what}");
    }
}

#[test]
fn policies_table() {
    let mut labelled = nodes(&["node-a", "node-b"]);
    labelled[0].labels.insert("role".into(), "edge".into());
    let cases: Vec<(&str, Vec<Policy>, &str, Option<&str>)> = vec![
        (
            "no L2Announcement: nothing announced (MetalLB)",
            vec![],
            "lab",
            None,
        ),
        (
            "policy for another pool",
            vec![Policy {
                name: "other".into(),
                pools: vec!["other".into()],
                node_selectors: vec![],
                interfaces: vec![],
            }],
            "lab",
            None,
        ),
        (
            "policy for this pool, selecting node-a only",
            vec![Policy {
                name: "edge".into(),
                pools: vec!["lab".into()],
                node_selectors: vec![selector("role", "edge")],
                interfaces: vec![],
            }],
            "lab",
            Some("node-a"),
        ),
        (
            "selectors are ORed",
            vec![Policy {
                name: "edge".into(),
                pools: vec![],
                node_selectors: vec![selector("role", "edge"), selector("role", "nope")],
                interfaces: vec![],
            }],
            "lab",
            Some("node-a"),
        ),
        (
            "a selector with a bad operator matches nothing",
            vec![Policy {
                name: "bad".into(),
                pools: vec![],
                node_selectors: vec![NodeLabelSelector {
                    match_labels: BTreeMap::new(),
                    match_expressions: vec![NodeSelectorRequirement {
                        key: "role".into(),
                        operator: "Like".into(),
                        values: vec![],
                    }],
                }],
                interfaces: vec![],
            }],
            "lab",
            None,
        ),
    ];
    for (what, policies, pool, want) in cases {
        let got = elect(ip(VIP), pool, &labelled, &policies, false, &BTreeSet::new());
        assert_eq!(got.as_deref(), want, "{what}");
    }
}

#[test]
fn local_traffic_policy_needs_a_ready_local_endpoint() {
    let ns = nodes(&["node-a", "node-b", "node-c"]);
    for holder in ["node-a", "node-b", "node-c"] {
        let endpoints: BTreeSet<String> = [holder.to_string()].into();
        for i in 0..20 {
            let addr = format!("203.0.113.{i}");
            let got = elect(ip(&addr), "lab", &ns, &all_pools(), true, &endpoints);
            assert_eq!(got.as_deref(), Some(holder), "{addr}");
        }
    }
    let got = elect(ip(VIP), "lab", &ns, &all_pools(), true, &BTreeSet::new());
    assert_eq!(got, None, "ETP=Local without endpoints: nobody");
    // An endpoint on a node that is not eligible does not count.
    let mut down = ns.clone();
    down[0].ready = false;
    let got = elect(
        ip(VIP),
        "lab",
        &down,
        &all_pools(),
        true,
        &["node-a".to_string()].into(),
    );
    assert_eq!(got, None);
}

#[test]
fn election_is_deterministic_and_order_free() {
    let a = winner(&["node-a", "node-b", "node-c", "node-d"], VIP);
    let b = winner(&["node-d", "node-c", "node-b", "node-a"], VIP);
    assert_eq!(a, b);
    // The documented rule, computed independently: lowest sha256("node#ip").
    let mut scored: Vec<(Vec<u8>, &str)> = ["node-a", "node-b", "node-c", "node-d"]
        .iter()
        .map(|n| (Sha256::digest(format!("{n}#{VIP}").as_bytes()).to_vec(), *n))
        .collect();
    scored.sort();
    assert_eq!(a.as_deref(), Some(scored[0].1));
}

#[test]
fn rendezvous_moves_only_what_the_leaving_node_held() {
    let all = ["node-a", "node-b", "node-c"];
    let mut wins: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..300u32 {
        let addr = format!("198.18.{}.{}", i / 250, i % 250);
        let before = winner(&all, &addr).expect("winner");
        *wins.entry(before.clone()).or_default() += 1;
        for leaving in all {
            let rest: Vec<&str> = all.iter().copied().filter(|n| *n != leaving).collect();
            let after = winner(&rest, &addr).expect("winner");
            if before != leaving {
                assert_eq!(after, before, "{addr}: {leaving} left but did not hold it");
            } else {
                assert_ne!(after, leaving);
            }
        }
    }
    // Spread: each of 3 nodes wins a fair share of 300 IPs (binomial, p=1/3: 100 ± 8 σ=8.2).
    for (n, count) in &wins {
        assert!((60..=140).contains(count), "{n} wins {count} of 300");
    }
    assert_eq!(wins.len(), 3);
}

fn svc(ips: &[&str]) -> ServiceView {
    ServiceView {
        key: ("demo".into(), "web".into()),
        uid: Some("uid-1".into()),
        ips: ips.iter().map(|i| (ip(i), "lab".to_string())).collect(),
        ..Default::default()
    }
}

#[test]
fn annotation_format_and_parse_round_trip() {
    let ns = nodes(&["node-a", "node-b", "node-c", "node-d", "node-e"]);
    // Find a dual-stack pair that elects different nodes, and one that elects the same.
    let v6s: Vec<String> = (1..200).map(|i| format!("2001:db8::{i:x}")).collect();
    let v4 = ip(VIP);
    let elect_all = |addr: IpAddr| elect(addr, "lab", &ns, &all_pools(), false, &BTreeSet::new());
    let same = v6s
        .iter()
        .find(|v6| elect_all(ip(v6)) == elect_all(v4))
        .expect("some IPv6 address elects the same node");
    let differ = v6s
        .iter()
        .find(|v6| elect_all(ip(v6)) != elect_all(v4))
        .expect("some IPv6 address elects another node");

    let one = desired_annotation(&svc(&[VIP, same]), &ns, &all_pools()).expect("announced");
    assert_eq!(
        Some(one.clone()),
        elect_all(v4),
        "one announcer: plain node name"
    );
    let parsed = parse_annotation(&one, &[v4, ip(same)]);
    assert_eq!(parsed.len(), 2);
    assert!(parsed.values().all(|n| *n == one));

    let two = desired_annotation(&svc(&[VIP, differ]), &ns, &all_pools()).expect("announced");
    assert!(two.contains('=') && two.contains(','), "{two}");
    let parsed = parse_annotation(&two, &[v4, ip(differ)]);
    assert_eq!(parsed.get(&v4), elect_all(v4).as_ref());
    assert_eq!(parsed.get(&ip(differ)), elect_all(ip(differ)).as_ref());

    // Parser tolerance: junk entries and IPs the Service does not hold are skipped.
    let parsed = parse_annotation(
        "203.0.113.10=node-a, bogus, 203.0.113.99=node-b, 2001:db8::1=",
        &[v4, ip("2001:db8::1")],
    );
    assert_eq!(parsed, [(v4, "node-a".to_string())].into());
    assert!(parse_annotation("  ", &[v4]).is_empty());
}

#[test]
fn plan_writes_only_differences() {
    let ns = nodes(&["node-a", "node-b"]);
    let want = desired_annotation(&svc(&[VIP]), &ns, &all_pools()).expect("announced");
    let want_candidates = desired_candidates(&svc(&[VIP]), &ns, &all_pools()).expect("ranked");
    let mut settled = svc(&[VIP]);
    settled.current = Some(want.clone());
    settled.current_candidates = Some(want_candidates.clone());
    assert!(
        plan(&[settled.clone()], &ns, &all_pools()).is_empty(),
        "resync of a settled world"
    );

    let fresh = svc(&[VIP]);
    let changes = plan(&[fresh], &ns, &all_pools());
    assert_eq!(
        changes,
        vec![Change {
            key: ("demo".into(), "web".into()),
            uid: Some("uid-1".into()),
            from: None,
            to: Some(want.clone()),
            unannounced: false,
            candidates_from: None,
            candidates_to: Some(want_candidates.clone()),
            interfaces_from: None,
            interfaces_to: None,
        }]
    );

    // Only the ranking behind the announcer is stale: rewritten, announcer unchanged.
    let mut stale = settled.clone();
    stale.current_candidates = Some(want.clone());
    let changes = plan(&[stale], &ns, &all_pools());
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].from, changes[0].to);
    assert_eq!(changes[0].candidates_to, Some(want_candidates.clone()));

    // Every node gone: removal, flagged as unannounced.
    let changes = plan(&[settled.clone()], &[], &all_pools());
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].to, None);
    assert!(changes[0].unannounced);

    // IP released: stale annotation removed, not flagged.
    let mut released = settled;
    released.ips.clear();
    let changes = plan(&[released], &ns, &all_pools());
    assert_eq!(changes.len(), 1);
    assert_eq!(
        (changes[0].to.clone(), changes[0].unannounced),
        (None, false)
    );
}

#[test]
fn candidates_rank_every_eligible_node_winner_first() {
    let everyone = ["node-a", "node-b", "node-c", "node-d"];
    let ranked = candidates(
        ip(VIP),
        "lab",
        &nodes(&everyone),
        &all_pools(),
        false,
        &BTreeSet::new(),
    );
    assert_eq!(ranked.len(), 4);
    assert_eq!(ranked.first(), winner(&everyone, VIP).as_ref());
    // The rank is the election repeated without the ones before: removing the first makes the
    // second the winner, and so on (what node-programmer relies on for gossip takeover).
    for i in 0..ranked.len() {
        let rest: Vec<&str> = everyone
            .iter()
            .copied()
            .filter(|n| !ranked[..i].iter().any(|r| r == n))
            .collect();
        assert_eq!(winner(&rest, VIP).as_ref(), Some(&ranked[i]), "rank {i}");
    }
    // Not-Ready nodes and, for ETP=Local, nodes without endpoints are not candidates.
    let mut ns = nodes(&everyone);
    ns[1].ready = false;
    let local: BTreeSet<String> = ["node-a".to_string(), "node-b".into(), "node-c".into()].into();
    let ranked = candidates(ip(VIP), "lab", &ns, &all_pools(), true, &local);
    let mut sorted = ranked.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["node-a".to_string(), "node-c".into()]);
    assert!(candidates(ip(VIP), "lab", &[], &all_pools(), false, &BTreeSet::new()).is_empty());
}

#[test]
fn candidates_annotation_format_and_parse_table() {
    let ns = nodes(&["node-a", "node-b", "node-c"]);
    let v4 = ip(VIP);
    let rank = |a: IpAddr| candidates(a, "lab", &ns, &all_pools(), false, &BTreeSet::new());
    // One IP: a plain comma list.
    let one = desired_candidates(&svc(&[VIP]), &ns, &all_pools()).expect("ranked");
    assert_eq!(one, rank(v4).join(","));
    assert_eq!(parse_candidates(&one, &[v4]), [(v4, rank(v4))].into());
    // Dual-stack with different rankings: `IP=a,b,c;IP=...`, both parsed back.
    let v6 = (1..200)
        .map(|i| ip(&format!("2001:db8::{i:x}")))
        .find(|a| rank(*a) != rank(v4))
        .expect("some IPv6 address ranks differently");
    let two = desired_candidates(&svc(&[VIP, &v6.to_string()]), &ns, &all_pools()).expect("ranked");
    assert!(two.contains(';') && two.contains('='), "{two}");
    assert_eq!(
        parse_candidates(&two, &[v4, v6]),
        [(v4, rank(v4)), (v6, rank(v6))].into()
    );
    // No node: no annotation.
    assert_eq!(desired_candidates(&svc(&[VIP]), &[], &all_pools()), None);
    // Parser table: (value, IPs held, expected).
    type Row<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a [&'a str])]);
    let table: &[Row<'_>] = &[
        ("", &[VIP], &[]),
        (" , ", &[VIP], &[]),
        ("a, b ,a", &[VIP], &[(VIP, &["a", "b"])]),
        (
            "a",
            &[VIP, "2001:db8::1"],
            &[(VIP, &["a"]), ("2001:db8::1", &["a"])],
        ),
        (
            "203.0.113.10=a,b;2001:db8::1=b",
            &[VIP, "2001:db8::1"],
            &[(VIP, &["a", "b"]), ("2001:db8::1", &["b"])],
        ),
        ("203.0.113.10=a;203.0.113.99=b", &[VIP], &[(VIP, &["a"])]),
        (
            "junk=a;203.0.113.10=;203.0.113.10=c",
            &[VIP],
            &[(VIP, &["c"])],
        ),
    ];
    for (value, held, want) in table {
        let held: Vec<IpAddr> = held.iter().map(|h| ip(h)).collect();
        let want: BTreeMap<IpAddr, Vec<String>> = want
            .iter()
            .map(|(a, ns)| (ip(a), ns.iter().map(|n| n.to_string()).collect()))
            .collect();
        assert_eq!(parse_candidates(value, &held), want, "{value:?}");
    }
}

// === from objects ===

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).expect("object"))
}

fn service_obj(
    name: &str,
    etp: &str,
    ingress: serde_json::Value,
    annotation: Option<&str>,
) -> Arc<Service> {
    let mut metadata = json!({"namespace": "demo", "name": name, "uid": format!("uid-{name}")});
    if let Some(a) = annotation {
        metadata["annotations"] = json!({ANNOTATION_ANNOUNCING_NODE: a});
    }
    obj(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": metadata,
        "spec": {"type": "LoadBalancer", "externalTrafficPolicy": etp,
                 "ports": [{"port": 80, "protocol": "TCP"}]},
        "status": {"loadBalancer": {"ingress": ingress}},
    }))
}

fn node_obj(name: &str, ready: &str, labels: serde_json::Value) -> Arc<Node> {
    obj(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {"conditions": [{"type": "Ready", "status": ready}]},
    }))
}

fn slice_obj(service: &str, endpoints: serde_json::Value) -> Arc<EndpointSlice> {
    obj(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "demo", "name": format!("{service}-1"),
                     "labels": {LABEL_SERVICE_NAME: service}},
        "addressType": "IPv4", "endpoints": endpoints,
    }))
}

fn pool_obj() -> Arc<IPAddressPool> {
    obj(json!({
        "apiVersion": "drawbridge.dev/v1alpha1", "kind": "IPAddressPool",
        "metadata": {"name": "lab"}, "spec": {"addresses": ["203.0.113.0/24", "2001:db8::/120"]},
    }))
}

#[test]
fn views_from_objects() {
    let services = vec![
        service_obj(
            "web",
            "Cluster",
            json!([{"ip": VIP, "ipMode": "VIP"}]),
            None,
        ),
        service_obj(
            "proxy",
            "Cluster",
            json!([{"ip": "203.0.113.11", "ipMode": "Proxy"}]),
            None,
        ),
        service_obj("foreign", "Cluster", json!([{"ip": "192.0.2.50"}]), None),
        service_obj("stale", "Cluster", json!([]), Some("node-a")),
        service_obj("local", "Local", json!([{"ip": "203.0.113.12"}]), None),
    ];
    let slices = vec![slice_obj(
        "local",
        json!([
            {"addresses": ["192.0.2.1"], "nodeName": "node-b", "conditions": {"ready": true}},
            {"addresses": ["192.0.2.2"], "nodeName": "node-c", "conditions": {"ready": false}},
            {"addresses": ["192.0.2.3"], "nodeName": "node-d"},
        ]),
    )];
    let views = service_views(&services, &slices, &[pool_obj()]);
    let names: Vec<&str> = views.iter().map(|v| v.key.1.as_str()).collect();
    assert_eq!(
        names,
        vec!["web", "stale", "local"],
        "Proxy and foreign IPs skipped"
    );
    assert_eq!(views[0].ips, vec![(ip(VIP), "lab".to_string())]);
    assert!(views[1].ips.is_empty() && views[1].current.as_deref() == Some("node-a"));
    assert!(views[2].local_only);
    assert_eq!(
        views[2].ready_endpoint_nodes,
        ["node-b".to_string(), "node-d".to_string()].into(),
        "ready absent counts as ready; ready=false does not"
    );

    let n = NodeView::from_node(&node_obj("node-x", "False", json!({"a": "b"}))).expect("view");
    assert!(!n.ready);
    assert_eq!(n.labels.get("a").map(String::as_str), Some("b"));
}

#[tokio::test]
async fn reconcile_writes_while_leader_and_reports() {
    let services = vec![
        service_obj(
            "web",
            "Cluster",
            json!([{"ip": VIP, "ipMode": "VIP"}]),
            None,
        ),
        service_obj(
            "local",
            "Local",
            json!([{"ip": "203.0.113.12"}]),
            Some("node-a"),
        ),
    ];
    let node_objs = vec![
        node_obj("node-a", "True", json!({})),
        node_obj("node-b", "True", json!({})),
    ];
    let l2: Arc<L2Announcement> = obj(json!({
        "apiVersion": "drawbridge.dev/v1alpha1", "kind": "L2Announcement",
        "metadata": {"name": "all"}, "spec": {},
    }));
    let inputs = Inputs {
        services: &services,
        slices: &[],
        nodes: &node_objs,
        announcements: &[l2],
        pools: &[pool_obj()],
    };
    let writer = RecordingAnnotationWriter::default();
    let events = RecordingEventRecorder::default();

    let (_tx, follower) = watch::channel(false);
    assert!(reconcile(&inputs, &writer, &events, &follower).await);
    assert!(writer.writes().is_empty(), "a follower writes nothing");

    let (_tx, leader) = watch::channel(true);
    assert!(reconcile(&inputs, &writer, &events, &leader).await);
    let expected = elect(
        ip(VIP),
        "lab",
        &nodes(&["node-a", "node-b"]),
        &all_pools(),
        false,
        &BTreeSet::new(),
    );
    assert_eq!(
        writer.writes(),
        vec![
            (("demo".into(), "web".into()), expected.clone()),
            // ETP=Local without endpoints: the stale announcer is withdrawn.
            (("demo".into(), "local".into()), None),
        ]
    );
    let events = events.events();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].reason, REASON_ANNOUNCING_NODE_CHANGED);
    assert_eq!(
        events[0].note,
        format!("<none> -> {}", expected.expect("announced"))
    );
    assert_eq!(events[0].uid.as_deref(), Some("uid-web"));
    assert_eq!(events[1].reason, REASON_NO_ANNOUNCING_NODE);
}

// === spec.interfaces ===

fn policy(name: &str, pools: &[&str], role: Option<&str>, interfaces: &[&str]) -> Policy {
    Policy {
        name: name.into(),
        pools: pools.iter().map(|p| p.to_string()).collect(),
        node_selectors: role.map(|r| selector("role", r)).into_iter().collect(),
        interfaces: interfaces.iter().map(|i| i.to_string()).collect(),
    }
}

fn ifs(names: &[&str]) -> Restriction {
    Some(names.iter().map(|n| n.to_string()).collect())
}

/// MetalLB's `ipAdvertisementFor`: union over the announcements covering the pool and selecting
/// the node; one without interfaces lifts the restriction.
#[test]
fn interfaces_union_table() {
    let mut edge = node("node-a");
    edge.labels.insert("role".into(), "edge".into());
    let plain = node("node-b");
    let cases: Vec<(&str, Vec<Policy>, &NodeView, Restriction)> = vec![
        (
            "no interfaces listed: all",
            vec![policy("p", &[], None, &[])],
            &edge,
            None,
        ),
        (
            "one announcement",
            vec![policy("p", &[], None, &["eth0"])],
            &edge,
            ifs(&["eth0"]),
        ),
        (
            "union of two announcements selecting the node",
            vec![
                policy("p", &["lab"], None, &["eth0"]),
                policy("q", &[], Some("edge"), &["eth1", "eth0"]),
            ],
            &edge,
            ifs(&["eth0", "eth1"]),
        ),
        (
            "an announcement not selecting the node does not add",
            vec![
                policy("p", &["lab"], None, &["eth0"]),
                policy("q", &[], Some("edge"), &["eth1"]),
            ],
            &plain,
            ifs(&["eth0"]),
        ),
        (
            "an announcement for another pool does not add",
            vec![
                policy("p", &["lab"], None, &["eth0"]),
                policy("q", &["other"], None, &["eth1"]),
            ],
            &edge,
            ifs(&["eth0"]),
        ),
        (
            "one covering announcement without interfaces: all",
            vec![
                policy("p", &["lab"], None, &["eth0"]),
                policy("q", &[], Some("edge"), &[]),
            ],
            &edge,
            None,
        ),
        (
            "an announcement with an invalid name covers nothing",
            vec![
                policy("p", &["lab"], None, &["eth0"]),
                policy("q", &[], None, &["eth1", "bad name"]),
            ],
            &edge,
            ifs(&["eth0"]),
        ),
    ];
    for (what, policies, n, want) in cases {
        assert_eq!(interfaces("lab", n, &policies), want, "{what}");
    }
    let bad = policy("q", &[], None, &["eth0", "a,b", "waytoolonginterfacename"]);
    assert_eq!(
        bad.invalid_interfaces(),
        vec!["a,b", "waytoolonginterfacename"]
    );
    assert_eq!(
        elect(
            ip(VIP),
            "lab",
            &[edge.clone()],
            &[bad],
            false,
            &BTreeSet::new()
        ),
        None,
        "an announcement with an invalid interface name elects nobody"
    );
}

/// The published value per election outcome (the grammar's forms).
#[test]
fn interfaces_annotation_table() {
    let mut ns = nodes(&["node-a", "node-b", "node-c"]);
    ns[0].labels.insert("role".into(), "edge".into());
    ns[1].labels.insert("role".into(), "plain".into());
    let v6 = "2001:db8::10";
    let mut two_pools = svc(&[VIP, v6]);
    two_pools.ips[1].1 = "lab6".into();
    let cases: Vec<(&str, Vec<Policy>, ServiceView, Option<&str>)> = vec![
        (
            "no interfaces anywhere: absent",
            vec![policy("p", &[], None, &[])],
            svc(&[VIP, v6]),
            None,
        ),
        (
            "every candidate the same set: compact",
            vec![policy("p", &[], None, &["eth1", "eth0"])],
            svc(&[VIP, v6]),
            Some("eth0,eth1"),
        ),
        (
            "per node (node-a adds eth1 through a second announcement)",
            vec![
                policy("p", &[], None, &["eth0"]),
                policy("q", &[], Some("edge"), &["eth1"]),
            ],
            svc(&[VIP, v6]),
            Some("node-a=eth0,eth1;node-b=eth0;node-c=eth0"),
        ),
        (
            "per node, unrestricted nodes left out",
            vec![
                policy("p", &[], Some("plain"), &[]),
                policy("q", &[], Some("edge"), &["eth1"]),
                policy("r", &[], Some("nobody"), &["eth9"]),
            ],
            svc(&[VIP]),
            Some("node-a=eth1"),
        ),
        (
            "per IP and node when pools differ",
            vec![
                policy("p", &["lab"], Some("edge"), &["eth0"]),
                policy("q", &["lab6"], Some("edge"), &["eth1"]),
            ],
            two_pools,
            Some("203.0.113.10/node-a=eth0;2001:db8::10/node-a=eth1"),
        ),
        (
            "no candidate: absent",
            vec![policy("p", &[], Some("nobody"), &["eth0"])],
            svc(&[VIP]),
            None,
        ),
    ];
    for (what, policies, view, want) in cases {
        assert_eq!(
            desired_interfaces(&view, &ns, &policies).as_deref(),
            want,
            "{what}"
        );
    }
}

/// A change of the interfaces alone rewrites all three annotations (one patch), keeps the
/// announcer, and is reported with an `AnnouncingInterfacesChanged` Event.
#[tokio::test]
async fn interfaces_only_change_is_written_and_reported() {
    let ns = nodes(&["node-a", "node-b"]);
    let eth0 = vec![policy("p", &[], None, &["eth0"])];
    let mut settled = svc(&[VIP]);
    settled.current = desired_annotation(&settled, &ns, &eth0);
    settled.current_candidates = desired_candidates(&settled, &ns, &eth0);
    settled.current_interfaces = desired_interfaces(&settled, &ns, &eth0);
    assert_eq!(settled.current_interfaces.as_deref(), Some("eth0"));
    assert!(plan(&[settled.clone()], &ns, &eth0).is_empty());
    let eth1 = vec![policy("p", &[], None, &["eth1"])];
    let changes = plan(&[settled.clone()], &ns, &eth1);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].from, changes[0].to, "announcer unchanged");
    assert_eq!(changes[0].candidates_from, changes[0].candidates_to);
    assert_eq!(
        (
            changes[0].interfaces_from.as_deref(),
            changes[0].interfaces_to.as_deref()
        ),
        (Some("eth0"), Some("eth1"))
    );
    let no_interfaces = vec![policy("p", &[], None, &[])];
    let changes = plan(&[settled], &ns, &no_interfaces);
    assert_eq!(
        changes[0].interfaces_to, None,
        "restriction lifted: removed"
    );

    // Through reconcile, from objects.
    let annotated = |interfaces: &str| {
        let announcer =
            elect(ip(VIP), "lab", &ns, &eth0, false, &BTreeSet::new()).expect("announced");
        let ranked = candidates(ip(VIP), "lab", &ns, &eth0, false, &BTreeSet::new()).join(",");
        let svc = service_obj(
            "web",
            "Cluster",
            json!([{"ip": VIP, "ipMode": "VIP"}]),
            Some(&announcer),
        );
        let mut svc = (*svc).clone();
        let a = svc.metadata.annotations.get_or_insert_default();
        a.insert(ANNOTATION_ANNOUNCING_CANDIDATES.into(), ranked);
        a.insert(ANNOTATION_ANNOUNCING_INTERFACES.into(), interfaces.into());
        Arc::new(svc)
    };
    let services = vec![annotated("eth0")];
    let node_objs = vec![
        node_obj("node-a", "True", json!({})),
        node_obj("node-b", "True", json!({})),
    ];
    let l2 = |interfaces: serde_json::Value| -> Arc<L2Announcement> {
        obj(json!({
            "apiVersion": "drawbridge.dev/v1alpha1", "kind": "L2Announcement",
            "metadata": {"name": "all"}, "spec": {"interfaces": interfaces},
        }))
    };
    let (_tx, leader) = watch::channel(true);
    for (spec, want_writes) in [(json!(["eth0"]), 0), (json!(["eth1"]), 1)] {
        let inputs = Inputs {
            services: &services,
            slices: &[],
            nodes: &node_objs,
            announcements: &[l2(spec)],
            pools: &[pool_obj()],
        };
        let writer = RecordingAnnotationWriter::default();
        let events = RecordingEventRecorder::default();
        assert!(reconcile(&inputs, &writer, &events, &leader).await);
        assert_eq!(writer.interface_writes().len(), want_writes);
        if want_writes == 1 {
            assert_eq!(
                writer.interface_writes()[0].1.as_deref(),
                Some("eth1"),
                "the new set"
            );
            let events = events.events();
            assert_eq!(events.len(), 1, "{events:?}");
            assert_eq!(events[0].reason, REASON_ANNOUNCING_INTERFACES_CHANGED);
            assert_eq!(events[0].note, "eth0 -> eth1");
        }
    }
}

use super::*;

fn pool(name: &str, addresses: &[&str], auto_assign: bool) -> Pool {
    Pool {
        auto_assign,
        avoid_buggy_ips: true,
        ..Pool::test(name, addresses)
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// Test builder: an eligible LoadBalancer Service created at `age` seconds after the epoch.
fn svc(name: &str, age: i64) -> ServiceView {
    ServiceView {
        key: ("default".into(), name.into()),
        uid: Some(format!("uid-{name}")),
        labels: BTreeMap::new(),
        namespace_labels: BTreeMap::new(),
        created: Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(age).expect("time"),
        )),
        eligible: true,
        foreign: false,
        requested: None,
        pool: None,
        families: vec![IpFamily::V4],
        family_policy: IpFamilyPolicy::SingleStack,
        sharing_key: None,
        ports: [("TCP".to_string(), 80)].into(),
        etp_local: false,
        selector: [("app".to_string(), name.to_string())].into(),
        current: vec![],
    }
}

impl ServiceView {
    fn with_current(mut self, s: &str) -> Self {
        self.current = vec![ip(s)];
        self
    }
    /// Status with several addresses (dual-stack), in this order.
    fn with_currents(mut self, list: &[&str]) -> Self {
        self.current = list.iter().map(|s| ip(s)).collect();
        self
    }
    /// One requested address, or a comma list (one per family), as the annotation reads.
    fn with_request(mut self, s: &str) -> Self {
        let entries: Vec<&str> = s.split(',').map(str::trim).collect();
        self.requested = Some(parse_requests("test", &entries));
        self
    }
    fn with_families(mut self, policy: IpFamilyPolicy, families: &[IpFamily]) -> Self {
        self.family_policy = policy;
        self.families = families.to_vec();
        self
    }
    fn with_key(mut self, key: &str) -> Self {
        self.sharing_key = Some(key.into());
        self
    }
    fn with_ports(mut self, ports: &[(&str, i32)]) -> Self {
        self.ports = ports.iter().map(|(p, n)| (p.to_string(), *n)).collect();
        self
    }
    fn with_selector(mut self, app: &str) -> Self {
        self.selector = [("app".to_string(), app.to_string())].into();
        self
    }
    fn etp_local(mut self) -> Self {
        self.etp_local = true;
        self
    }
    fn with_pool(mut self, p: &str) -> Self {
        self.pool = Some(p.into());
        self
    }
    fn not_eligible(mut self) -> Self {
        self.eligible = false;
        self
    }
}

/// The first (primary family) address of an allocated Service.
fn ip_of(out: &BTreeMap<ServiceKey, Outcome>, name: &str) -> Option<IpAddr> {
    ips_of(out, name).first().copied()
}

/// Every address of a Service, in family order; empty unless allocated.
fn ips_of(out: &BTreeMap<ServiceKey, Outcome>, name: &str) -> Vec<IpAddr> {
    out.get(&("default".to_string(), name.to_string()))
        .map(|o| o.assignments().iter().map(|a| a.ip).collect())
        .unwrap_or_default()
}

fn reason_of(out: &BTreeMap<ServiceKey, Outcome>, name: &str) -> Option<FailureReason> {
    match out.get(&("default".to_string(), name.to_string())) {
        Some(Outcome::Failed { reason, .. }) => Some(*reason),
        _ => None,
    }
}

#[test]
fn allocates_lowest_free_addresses_oldest_first() {
    let pools = [pool("lab", &["203.0.113.0/30"], true)];
    // Younger "a" listed first: age decides, not order or name.
    let out = allocate(&pools, &[svc("a", 20), svc("b", 10)]);
    assert_eq!(
        ip_of(&out, "b"),
        Some(ip("203.0.113.1")),
        ".0 skipped (avoidBuggyIPs)"
    );
    assert_eq!(ip_of(&out, "a"), Some(ip("203.0.113.2")));
}

#[test]
fn keeps_existing_addresses_across_restarts() {
    let pools = [pool("lab", &["203.0.113.0/24"], true)];
    let services = [svc("a", 1).with_current("203.0.113.77"), svc("b", 2)];
    let out = allocate(&pools, &services);
    assert_eq!(
        ip_of(&out, "a"),
        Some(ip("203.0.113.77")),
        "kept, not reshuffled"
    );
    assert_eq!(ip_of(&out, "b"), Some(ip("203.0.113.1")));
    // Recomputing from the written result changes nothing.
    let services = [
        svc("a", 1).with_current("203.0.113.77"),
        svc("b", 2).with_current("203.0.113.1"),
    ];
    assert_eq!(allocate(&pools, &services), out);
}

#[test]
fn never_gives_one_address_to_two_services() {
    let pools = [pool("lab", &["203.0.113.0/24"], true)];
    // Both claim the same address in status (e.g. after a split brain): the older keeps it.
    let services = [
        svc("young", 9).with_current("203.0.113.5"),
        svc("old", 1).with_current("203.0.113.5"),
    ];
    let out = allocate(&pools, &services);
    assert_eq!(ip_of(&out, "old"), Some(ip("203.0.113.5")));
    assert_eq!(ip_of(&out, "young"), Some(ip("203.0.113.1")));
    // A request for a taken address fails instead of duplicating.
    let services = [
        svc("a", 1).with_current("203.0.113.5"),
        svc("b", 2).with_request("203.0.113.5"),
    ];
    let out = allocate(&pools, &services);
    assert_eq!(
        reason_of(&out, "b"),
        Some(FailureReason::RequestedAddressUnavailable)
    );
}

#[test]
fn honours_requests_and_moves_when_the_request_changes() {
    let pools = [
        pool("lab", &["203.0.113.0/24"], true),
        pool("manual", &["198.51.100.0/28"], false),
    ];
    let out = allocate(
        &pools,
        &[svc("a", 1)
            .with_current("203.0.113.1")
            .with_request("203.0.113.50")],
    );
    assert_eq!(ip_of(&out, "a"), Some(ip("203.0.113.50")));
    // Explicit requests may use a pool without autoAssign.
    let out = allocate(&pools, &[svc("a", 1).with_request("198.51.100.3")]);
    assert_eq!(ip_of(&out, "a"), Some(ip("198.51.100.3")));
    let out = allocate(&pools, &[svc("a", 1).with_request("192.0.2.1")]);
    assert_eq!(
        reason_of(&out, "a"),
        Some(FailureReason::RequestedAddressUnavailable)
    );
    let out = allocate(&pools, &[svc("a", 1).with_request("not-an-ip")]);
    assert_eq!(
        reason_of(&out, "a"),
        Some(FailureReason::RequestedAddressUnavailable)
    );
}

#[test]
fn pool_selection_by_annotation_and_auto_assign() {
    let pools = [
        pool("lab", &["203.0.113.0/24"], true),
        pool("manual", &["198.51.100.0/28"], false),
    ];
    let out = allocate(&pools, &[svc("a", 1).with_pool("manual")]);
    assert_eq!(ip_of(&out, "a"), Some(ip("198.51.100.1")));
    let out = allocate(&pools, &[svc("a", 1).with_pool("missing")]);
    assert_eq!(reason_of(&out, "a"), Some(FailureReason::NoMatchingPool));
    // An address from a non-auto-assign pool is not kept without a request.
    let out = allocate(&pools, &[svc("a", 1).with_current("198.51.100.4")]);
    assert_eq!(ip_of(&out, "a"), Some(ip("203.0.113.1")));
    let out = allocate(
        &[pool("manual", &["198.51.100.0/28"], false)],
        &[svc("a", 1)],
    );
    assert_eq!(reason_of(&out, "a"), Some(FailureReason::NoMatchingPool));
}

#[test]
fn reports_exhaustion_and_releases_non_load_balancers() {
    let pools = [pool("tiny", &["203.0.113.1-203.0.113.1"], true)];
    let out = allocate(&pools, &[svc("a", 1), svc("b", 2)]);
    assert_eq!(ip_of(&out, "a"), Some(ip("203.0.113.1")));
    assert_eq!(reason_of(&out, "b"), Some(FailureReason::PoolExhausted));

    let out = allocate(
        &pools,
        &[
            svc("a", 1).with_current("203.0.113.1").not_eligible(),
            svc("b", 2),
        ],
    );
    assert_eq!(
        out.get(&("default".into(), "a".into())),
        Some(&Outcome::Released)
    );
    assert_eq!(
        ip_of(&out, "b"),
        Some(ip("203.0.113.1")),
        "the released address is reusable at once"
    );
}

#[test]
fn reads_services() {
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "default",
                     "annotations": {"drawbridge.dev/load-balancer-ips": " 203.0.113.9, 2001:db8::9"}},
        "spec": {"type": "LoadBalancer", "loadBalancerIP": "203.0.113.1"},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9", "ipMode": "VIP"}]}}
    }))
    .expect("service");
    let view = ServiceView::from_service(&svc, true);
    assert!(view.eligible && !view.foreign);
    assert_eq!(
        view.requested,
        Some(Ok(vec![ip("203.0.113.9"), ip("2001:db8::9")])),
        "annotation wins over spec.loadBalancerIP"
    );
    assert_eq!(
        view.families,
        vec![IpFamily::V4],
        "SingleStack by default, family of the first request"
    );
    assert_eq!(view.current, vec![ip("203.0.113.9")]);
    assert!(
        !ServiceView::from_service(&svc, false).eligible,
        "class-less handling off"
    );

    let mut other = svc.clone();
    other.spec.as_mut().expect("spec").load_balancer_class = Some("example.com/other".into());
    let view = ServiceView::from_service(&other, true);
    assert!(!view.eligible && view.foreign);
    let out = allocate(&[pool("lab", &["203.0.113.0/24"], true)], &[view]);
    assert!(out.is_empty(), "other classes are never touched");
}

// === dual-stack ===

use IpFamily::{V4, V6};
use IpFamilyPolicy::{PreferDualStack, RequireDualStack, SingleStack};

fn dual_pools() -> [Pool; 2] {
    [
        pool("lab", &["203.0.113.0/24"], true),
        pool("lab6", &["2001:db8::10-2001:db8::1f"], true),
    ]
}

#[test]
fn family_policies() {
    let pools = dual_pools();
    let cases: &[(IpFamilyPolicy, &[IpFamily], &[&str])] = &[
        (SingleStack, &[V4], &["203.0.113.1"]),
        (SingleStack, &[V6], &["2001:db8::10"]),
        (PreferDualStack, &[V4, V6], &["203.0.113.1", "2001:db8::10"]),
        (PreferDualStack, &[V6, V4], &["2001:db8::10", "203.0.113.1"]),
        (
            RequireDualStack,
            &[V6, V4],
            &["2001:db8::10", "203.0.113.1"],
        ),
    ];
    for (policy, families, want) in cases {
        let out = allocate(&pools, &[svc("a", 1).with_families(*policy, families)]);
        let want: Vec<IpAddr> = want.iter().map(|s| ip(s)).collect();
        assert_eq!(ips_of(&out, "a"), want, "{policy:?} {families:?}");
    }
}

#[test]
fn prefer_dual_stack_settles_for_one_family_require_fails() {
    // No IPv6 pool at all.
    let v4_only = [pool("lab", &["203.0.113.0/24"], true)];
    let out = allocate(
        &v4_only,
        &[svc("a", 1).with_families(PreferDualStack, &[V6, V4])],
    );
    assert_eq!(
        ips_of(&out, "a"),
        vec![ip("203.0.113.1")],
        "the other family when the first cannot be had"
    );
    let out = allocate(
        &v4_only,
        &[svc("a", 1).with_families(RequireDualStack, &[V4, V6])],
    );
    assert_eq!(reason_of(&out, "a"), Some(FailureReason::NoMatchingPool));

    // The IPv6 pool is full.
    let pools = [
        pool("lab", &["203.0.113.0/24"], true),
        pool("lab6", &["2001:db8::10"], true),
    ];
    let services = [
        svc("old", 1).with_families(SingleStack, &[V6]),
        svc("prefer", 2).with_families(PreferDualStack, &[V4, V6]),
        svc("require", 3).with_families(RequireDualStack, &[V4, V6]),
    ];
    let out = allocate(&pools, &services);
    assert_eq!(ips_of(&out, "old"), vec![ip("2001:db8::10")]);
    assert_eq!(ips_of(&out, "prefer"), vec![ip("203.0.113.1")]);
    assert_eq!(
        reason_of(&out, "require"),
        Some(FailureReason::PoolExhausted)
    );
    // A failed RequireDualStack Service holds nothing: .2 is not reserved for it.
    let out = allocate(
        &pools,
        &[services[0].clone(), services[2].clone(), svc("v4", 4)],
    );
    assert_eq!(ips_of(&out, "v4"), vec![ip("203.0.113.1")]);

    // Once IPv6 frees up, the PreferDualStack Service keeps its IPv4 and gains IPv6.
    let out = allocate(&pools, &[services[1].clone().with_current("203.0.113.1")]);
    assert_eq!(
        ips_of(&out, "prefer"),
        vec![ip("203.0.113.1"), ip("2001:db8::10")]
    );
}

#[test]
fn require_dual_stack_that_fails_releases_what_it_kept() {
    let pools = [
        pool("lab", &["203.0.113.1-203.0.113.2"], true),
        pool("lab6", &["2001:db8::10"], true),
    ];
    let services = [
        // Held IPv4 .2 and IPv6, but its IPv6 is now taken by an older Service's status.
        svc("r", 2)
            .with_families(RequireDualStack, &[V4, V6])
            .with_currents(&["203.0.113.2", "2001:db8::10"]),
        svc("old6", 1)
            .with_families(SingleStack, &[V6])
            .with_current("2001:db8::10"),
        svc("x", 3).with_current("203.0.113.1"),
        svc("y", 4),
    ];
    let out = allocate(&pools, &services);
    assert_eq!(reason_of(&out, "r"), Some(FailureReason::PoolExhausted));
    assert_eq!(
        ips_of(&out, "y"),
        vec![ip("203.0.113.2")],
        "r's old IPv4 is free for others in the same pass"
    );
}

#[test]
fn requested_addresses_one_per_family() {
    let pools = dual_pools();
    let dual = |name, age| svc(name, age).with_families(RequireDualStack, &[V4, V6]);
    let out = allocate(
        &pools,
        &[dual("a", 1).with_request("2001:db8::15, 203.0.113.50")],
    );
    assert_eq!(
        ips_of(&out, "a"),
        vec![ip("203.0.113.50"), ip("2001:db8::15")],
        "family order, not request order"
    );
    let out = allocate(&pools, &[dual("a", 1).with_request("2001:db8::15")]);
    assert_eq!(
        ips_of(&out, "a"),
        vec![ip("203.0.113.1"), ip("2001:db8::15")],
        "the other family auto-assigned"
    );

    let out = allocate(&pools, &[svc("a", 1).with_request("2001:db8::15")]);
    assert_eq!(
        reason_of(&out, "a"),
        Some(FailureReason::RequestedAddressUnavailable),
        "IPv6 on an IPv4 Service"
    );
    let out = allocate(
        &pools,
        &[dual("a", 1).with_request("203.0.113.50, 203.0.113.51")],
    );
    assert_eq!(
        reason_of(&out, "a"),
        Some(FailureReason::RequestedAddressUnavailable),
        "two IPv4 addresses"
    );
    // PreferDualStack never drops an unavailable request silently.
    let prefer = svc("a", 1)
        .with_families(PreferDualStack, &[V4, V6])
        .with_request("2001:db8:1::1");
    assert_eq!(
        reason_of(&allocate(&pools, &[prefer]), "a"),
        Some(FailureReason::RequestedAddressUnavailable)
    );

    // Changing one family's request moves that family only.
    let current = dual("a", 1).with_currents(&["203.0.113.50", "2001:db8::15"]);
    let out = allocate(
        &pools,
        &[current.with_request("203.0.113.60, 2001:db8::15")],
    );
    assert_eq!(
        ips_of(&out, "a"),
        vec![ip("203.0.113.60"), ip("2001:db8::15")]
    );
}

#[test]
fn reads_families_sharing_and_ports() {
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "dns", "namespace": "default",
                     "annotations": {"drawbridge.dev/allow-shared-ip": "dns"}},
        "spec": {"type": "LoadBalancer", "ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv6"],
                 "externalTrafficPolicy": "Local", "selector": {"app": "dns"},
                 "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "2001:db8::10"}, {"ip": "203.0.113.1"}]}}
    }))
    .expect("service");
    let view = ServiceView::from_service(&svc, true);
    assert_eq!(
        view.families,
        vec![V6, V4],
        "completed with the other family"
    );
    assert_eq!(view.family_policy, PreferDualStack);
    assert_eq!(view.sharing_key.as_deref(), Some("dns"));
    assert_eq!(
        view.ports,
        [("TCP".to_string(), 53), ("UDP".to_string(), 53)].into()
    );
    assert!(view.etp_local);
    assert_eq!(
        view.selector,
        [("app".to_string(), "dns".to_string())].into()
    );
    assert_eq!(view.current, vec![ip("2001:db8::10"), ip("203.0.113.1")]);
    let out = allocate(&dual_pools(), &[view]);
    assert_eq!(
        ips_of(&out, "dns"),
        vec![ip("2001:db8::10"), ip("203.0.113.1")],
        "kept, family order"
    );
}

// === sharing ===

#[test]
fn sharing_needs_the_same_key_and_disjoint_ports() {
    let pools = [pool("lab", &["203.0.113.0/24"], true)];
    let services = [
        svc("a", 1).with_key("k").with_ports(&[("TCP", 80)]),
        svc("b", 2).with_key("k").with_ports(&[("TCP", 443)]),
        svc("udp", 3).with_key("k").with_ports(&[("UDP", 80)]),
        svc("overlap", 4)
            .with_key("k")
            .with_ports(&[("TCP", 443), ("TCP", 8443)]),
        svc("other-key", 5)
            .with_key("j")
            .with_ports(&[("TCP", 9000)]),
        svc("no-key", 6).with_ports(&[("TCP", 9001)]),
        svc("no-key-2", 7).with_ports(&[("TCP", 9002)]),
    ];
    let out = allocate(&pools, &services);
    let table = [
        ("a", "203.0.113.1"),
        ("b", "203.0.113.1"),
        ("udp", "203.0.113.1"),     // UDP/80 does not overlap TCP/80
        ("overlap", "203.0.113.2"), // 443 taken on .1: another address, no failure
        ("other-key", "203.0.113.3"),
        ("no-key", "203.0.113.4"),
        ("no-key-2", "203.0.113.5"), // without a key, never shared even with disjoint ports
    ];
    for (name, want) in table {
        assert_eq!(ip_of(&out, name), Some(ip(want)), "{name}");
    }
    // A later Service with key k and a free port joins the lowest shareable address.
    let mut more = services.to_vec();
    more.push(svc("late", 8).with_key("k").with_ports(&[("TCP", 8080)]));
    assert_eq!(
        ip_of(&allocate(&pools, &more), "late"),
        Some(ip("203.0.113.1"))
    );
}

#[test]
fn sharing_with_etp_local_needs_identical_selectors() {
    let pools = [pool("lab", &["203.0.113.0/24"], true)];
    let cases = [
        // (first ETP Local, second ETP Local, same selector, shared)
        (false, false, false, true),
        (true, false, false, false),
        (false, true, false, false),
        (true, true, false, false),
        (true, true, true, true),
        (true, false, true, true),
    ];
    for (local_a, local_b, same_selector, shared) in cases {
        let mut a = svc("a", 1).with_key("k").with_ports(&[("TCP", 80)]);
        let mut b = svc("b", 2).with_key("k").with_ports(&[("TCP", 443)]);
        if same_selector {
            b = b.with_selector("a");
        }
        if local_a {
            a = a.etp_local();
        }
        if local_b {
            b = b.etp_local();
        }
        let out = allocate(&pools, &[a, b]);
        assert_eq!(
            ip_of(&out, "a") == ip_of(&out, "b"),
            shared,
            "{local_a} {local_b} {same_selector}"
        );
    }
}

#[test]
fn sharing_conflict_for_a_request() {
    let pools = [pool("lab", &["203.0.113.0/24"], true)];
    let holder = svc("a", 1)
        .with_key("k")
        .with_ports(&[("TCP", 80)])
        .with_current("203.0.113.5");
    let cases = [
        (
            svc("b", 2).with_key("k").with_ports(&[("TCP", 80)]),
            Some(FailureReason::SharingConflict),
        ),
        (
            svc("b", 2).with_key("j").with_ports(&[("TCP", 443)]),
            Some(FailureReason::SharingConflict),
        ),
        (
            svc("b", 2)
                .with_key("k")
                .with_ports(&[("TCP", 443)])
                .etp_local(),
            Some(FailureReason::SharingConflict),
        ),
        (
            svc("b", 2).with_ports(&[("TCP", 443)]),
            Some(FailureReason::RequestedAddressUnavailable),
        ),
        (svc("b", 2).with_key("k").with_ports(&[("TCP", 443)]), None),
    ];
    for (b, want) in cases {
        let out = allocate(
            &pools,
            &[holder.clone(), b.clone().with_request("203.0.113.5")],
        );
        assert_eq!(
            ip_of(&out, "a"),
            Some(ip("203.0.113.5")),
            "the holder is never disturbed"
        );
        assert_eq!(reason_of(&out, "b"), want, "{b:?}");
        if want.is_none() {
            assert_eq!(ip_of(&out, "b"), Some(ip("203.0.113.5")));
        }
    }
}

#[test]
fn keeps_shared_addresses_across_restarts() {
    let pools = [pool("lab", &["203.0.113.0/24"], true)];
    let a = svc("a", 1)
        .with_key("k")
        .with_ports(&[("TCP", 80)])
        .with_current("203.0.113.7");
    let b = svc("b", 2)
        .with_key("k")
        .with_ports(&[("TCP", 443)])
        .with_current("203.0.113.7");
    let c = svc("c", 3).with_key("k").with_ports(&[("TCP", 8080)]);
    let out = allocate(&pools, &[c.clone(), b.clone(), a.clone()]);
    for name in ["a", "b", "c"] {
        assert_eq!(ip_of(&out, name), Some(ip("203.0.113.7")), "{name}");
    }
    let restarted = [a.clone(), b.clone(), c.clone().with_current("203.0.113.7")];
    assert_eq!(
        allocate(&pools, &restarted),
        out,
        "a restart changes nothing"
    );

    // b changes its port to clash with a: b (younger) moves, reported; a and c stay.
    let clash = [
        a.clone(),
        b.clone().with_ports(&[("TCP", 80)]),
        c.with_current("203.0.113.7"),
    ];
    let out = allocate(&pools, &clash);
    assert_eq!(ip_of(&out, "a"), Some(ip("203.0.113.7")));
    assert_eq!(ip_of(&out, "c"), Some(ip("203.0.113.7")));
    assert_eq!(ip_of(&out, "b"), Some(ip("203.0.113.1")));
    // b drops its key: it may share with nobody.
    let out = allocate(
        &pools,
        &[a, {
            let mut b = b;
            b.sharing_key = None;
            b
        }],
    );
    assert_eq!(ip_of(&out, "b"), Some(ip("203.0.113.1")));
}

#[test]
fn no_duplicate_across_unrelated_services() {
    let pools = [pool("lab", &["203.0.113.0/24"], true)];
    // Five Services claim .9 in status (split brain), with disjoint ports but no common key.
    let services: Vec<ServiceView> = (0..5)
        .map(|i| {
            let s = svc(&format!("s{i}"), 10 - i)
                .with_ports(&[("TCP", 8000 + i as i32)])
                .with_current("203.0.113.9");
            if i % 2 == 0 {
                s.with_key(&format!("key{i}"))
            } else {
                s
            }
        })
        .collect();
    let out = allocate(&pools, &services);
    let ips: BTreeSet<IpAddr> = out
        .values()
        .flat_map(|o| o.assignments().iter().map(|a| a.ip))
        .collect();
    assert_eq!(ips.len(), 5, "{out:?}");
    assert_eq!(
        ip_of(&out, "s4"),
        Some(ip("203.0.113.9")),
        "the oldest keeps it"
    );
}

// === property: fixed point, never an unshareable duplicate ===

/// xorshift64: deterministic, dependency-free randomness for the property test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const ADDRESSES: &[&str] = &[
    "203.0.113.1",
    "203.0.113.2",
    "203.0.113.3",
    "203.0.113.4",
    "198.51.100.1",
    "198.51.100.2",
    "2001:db8::1",
    "2001:db8::2",
    "2001:db8::3",
    "192.0.2.1",
];

fn random_service(rng: &mut Rng, i: usize) -> ServiceView {
    let mut s = svc(&format!("s{i:02}"), rng.below(6) as i64);
    s.eligible = rng.below(10) != 0;
    s.sharing_key = rng
        .pick(&[None, Some("k"), Some("k"), Some("j")])
        .map(str::to_string);
    let ports = [("TCP", 80), ("TCP", 443), ("UDP", 53), ("UDP", 80)];
    s = s.with_ports(&[*rng.pick(&ports), *rng.pick(&ports)]);
    s.etp_local = rng.below(3) == 0;
    s = s.with_selector(rng.pick::<&str>(&["x", "y"]));
    let (policy, families): (IpFamilyPolicy, &[IpFamily]) = *rng.pick(&[
        (SingleStack, &[V4][..]),
        (SingleStack, &[V4][..]),
        (SingleStack, &[V6][..]),
        (PreferDualStack, &[V4, V6][..]),
        (PreferDualStack, &[V6, V4][..]),
        (RequireDualStack, &[V4, V6][..]),
    ]);
    s = s.with_families(policy, families);
    match rng.below(8) {
        0 => s = s.with_request(rng.pick::<&str>(ADDRESSES)),
        1 => s = s.with_request(&format!("{}, {}", rng.pick(ADDRESSES), rng.pick(ADDRESSES))),
        2 => s.requested = Some(Err("not an address".into())),
        _ => {}
    }
    s.pool = match rng.below(10) {
        0 => Some("manual".into()),
        1 => Some("missing".into()),
        _ => None,
    };
    s.current = (0..rng.below(3))
        .map(|_| ip(rng.pick::<&str>(ADDRESSES)))
        .collect();
    s
}

/// What the next pass observes once every outcome has been written as status.
fn apply(services: &[ServiceView], out: &BTreeMap<ServiceKey, Outcome>) -> Vec<ServiceView> {
    services
        .iter()
        .map(|s| {
            let mut s = s.clone();
            if let Some(outcome) = out.get(&s.key) {
                s.current = outcome.assignments().iter().map(|a| a.ip).collect();
            }
            s
        })
        .collect()
}

fn without_released(out: &BTreeMap<ServiceKey, Outcome>) -> BTreeMap<ServiceKey, Outcome> {
    out.iter()
        .filter(|(_, o)| **o != Outcome::Released)
        .map(|(k, o)| (k.clone(), o.clone()))
        .collect()
}

fn check_invariants(
    pools: &[Pool],
    services: &[ServiceView],
    out: &BTreeMap<ServiceKey, Outcome>,
    seed: u64,
) {
    let by_key: BTreeMap<&ServiceKey, &ServiceView> =
        services.iter().map(|s| (&s.key, s)).collect();
    let mut holders: BTreeMap<IpAddr, Vec<&ServiceView>> = BTreeMap::new();
    for (key, outcome) in out {
        let svc = by_key[key];
        let Outcome::Allocated { ips } = outcome else {
            continue;
        };
        assert!(svc.eligible, "seed {seed}: {key:?}");
        let families: Vec<IpFamily> = ips.iter().map(|a| IpFamily::of(a.ip)).collect();
        let wanted: Vec<IpFamily> = svc
            .families
            .iter()
            .copied()
            .filter(|f| families.contains(f))
            .collect();
        assert_eq!(
            families, wanted,
            "seed {seed}: {key:?} families in the Service's order"
        );
        if svc.family_policy != PreferDualStack {
            assert_eq!(families, svc.families, "seed {seed}: {key:?}");
        }
        if let Some(Ok(requested)) = &svc.requested {
            for r in requested {
                assert!(
                    ips.iter().any(|a| a.ip == *r),
                    "seed {seed}: {key:?} request {r} honoured"
                );
            }
        }
        for a in ips {
            let pool = pools
                .iter()
                .find(|p| p.name == a.pool)
                .expect("a known pool");
            assert!(pool.offers(a.ip), "seed {seed}: {a}");
            if let Some(named) = &svc.pool {
                assert_eq!(*named, a.pool, "seed {seed}");
            }
            holders.entry(a.ip).or_default().push(svc);
        }
    }
    for (ip, hs) in &holders {
        for (i, x) in hs.iter().enumerate() {
            for y in &hs[i + 1..] {
                assert!(
                    x.may_share(y),
                    "seed {seed}: {ip} given to {:?} and {:?}",
                    x.key,
                    y.key
                );
            }
        }
    }
}

#[test]
fn random_services_reach_a_fixed_point_without_forbidden_duplicates() {
    let pools = [
        pool("lab", &["203.0.113.1-203.0.113.4"], true),
        pool("lab6", &["2001:db8::1-2001:db8::3"], true),
        pool("manual", &["198.51.100.1-198.51.100.2"], false),
    ];
    for seed in 1..=2000u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let n = 1 + rng.below(12) as usize;
        let services: Vec<ServiceView> = (0..n).map(|i| random_service(&mut rng, i)).collect();
        let first = allocate(&pools, &services);
        check_invariants(&pools, &services, &first, seed);

        let mut written = apply(&services, &first);
        written.reverse(); // input order never matters
        let second = allocate(&pools, &written);
        check_invariants(&pools, &written, &second, seed);
        assert_eq!(
            without_released(&second),
            without_released(&first),
            "seed {seed}: not a fixed point"
        );
        let third = allocate(&pools, &apply(&written, &second));
        assert_eq!(third, without_released(&second), "seed {seed}");
    }
}

// === serviceAllocation ===

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn selector(yaml: &str) -> drawbridge_resources::crd::LabelSelector {
    serde_yaml::from_str(yaml).expect("selector")
}

impl ServiceView {
    fn in_namespace(mut self, ns: &str, ns_labels: &[(&str, &str)]) -> Self {
        self.key.0 = ns.into();
        self.namespace_labels = labels(ns_labels);
        self
    }
    fn with_labels(mut self, pairs: &[(&str, &str)]) -> Self {
        self.labels = labels(pairs);
        self
    }
}

fn ip_in(out: &BTreeMap<ServiceKey, Outcome>, ns: &str, name: &str) -> Option<(IpAddr, String)> {
    out.get(&(ns.to_string(), name.to_string()))
        .and_then(|o| o.assignments().first().cloned())
        .map(|a| (a.ip, a.pool))
}

#[test]
fn priority_picks_lower_number_first_and_unprioritised_last() {
    // Table: (pools as (name, priority, range), expected pool of the first Service).
    // (pool name, priority, range)
    type PoolSpec<'a> = (&'a str, Option<i32>, &'a str);
    let table: &[(&[PoolSpec], &str)] = &[
        (
            &[
                ("a", None, "192.0.2.0/24"),
                ("b", Some(5), "198.51.100.0/24"),
            ],
            "b",
        ),
        (
            &[
                ("a", Some(5), "192.0.2.0/24"),
                ("b", Some(1), "198.51.100.0/24"),
            ],
            "b",
        ),
        (
            &[
                ("a", Some(1), "192.0.2.0/24"),
                ("b", Some(1), "198.51.100.0/24"),
            ],
            "a",
        ),
        (
            &[("z", None, "192.0.2.0/24"), ("a", None, "198.51.100.0/24")],
            "a",
        ),
        (
            &[
                ("a", Some(-3), "192.0.2.0/24"),
                ("b", Some(0), "198.51.100.0/24"),
            ],
            "a",
        ),
    ];
    for (pools, want) in table {
        let pools: Vec<Pool> = pools
            .iter()
            .map(|(n, prio, r)| Pool {
                priority: *prio,
                ..pool(n, &[r], true)
            })
            .collect();
        let out = allocate(&pools, &[svc("web", 1)]);
        let got = &out[&("default".to_string(), "web".to_string())].assignments()[0].pool;
        assert_eq!(got, want, "{pools:?}");
    }
}

#[test]
fn priority_pool_full_falls_through_to_the_next() {
    let pools = [
        Pool {
            priority: Some(1),
            ..pool("small", &["192.0.2.1/32"], true)
        },
        pool("big", &["198.51.100.0/24"], true),
    ];
    let out = allocate(&pools, &[svc("a", 1), svc("b", 2)]);
    assert_eq!(ip_of(&out, "a"), Some(ip("192.0.2.1")));
    assert_eq!(ip_of(&out, "b"), Some(ip("198.51.100.1")));
}

#[test]
fn namespaces_and_selectors_filter_pools() {
    let prod_only = Pool {
        priority: Some(1),
        namespaces: vec!["prod".into()],
        namespace_selector: Some(selector("{matchLabels: {env: production}}")),
        ..pool("prod", &["192.0.2.0/24"], true)
    };
    let web_only = Pool {
        priority: Some(2),
        service_selector: Some(selector(
            "{matchExpressions: [{key: tier, operator: In, values: [web]}]}",
        )),
        ..pool("web", &["198.51.100.0/24"], true)
    };
    let rest = pool("rest", &["203.0.113.0/24"], true);
    let pools = [prod_only, web_only, rest];
    let services = [
        svc("a", 1).in_namespace("prod", &[]),
        svc("b", 2).in_namespace("shop", &[("env", "production")]),
        svc("c", 3)
            .in_namespace("dev", &[])
            .with_labels(&[("tier", "web")]),
        svc("d", 4).in_namespace("dev", &[]),
        // Asks for the prod pool by name but is not admitted.
        svc("e", 5).in_namespace("dev", &[]).with_pool("prod"),
        // Requests an address of the prod pool but is not admitted.
        svc("f", 6)
            .in_namespace("dev", &[])
            .with_request("192.0.2.200"),
    ];
    let out = allocate(&pools, &services);
    let pool_of = |ns: &str, n: &str| ip_in(&out, ns, n).map(|(_, p)| p);
    assert_eq!(
        pool_of("prod", "a").as_deref(),
        Some("prod"),
        "listed namespace"
    );
    assert_eq!(
        pool_of("shop", "b").as_deref(),
        Some("prod"),
        "selected namespace"
    );
    assert_eq!(
        pool_of("dev", "c").as_deref(),
        Some("web"),
        "service selector"
    );
    assert_eq!(
        pool_of("dev", "d").as_deref(),
        Some("rest"),
        "filtered out of both"
    );
    match &out[&("dev".to_string(), "e".to_string())] {
        Outcome::Failed { reason, message } => {
            assert_eq!(*reason, FailureReason::NoMatchingPool);
            assert!(message.contains("does not admit"), "{message}");
        }
        other => panic!("e: {other:?}"),
    }
    match &out[&("dev".to_string(), "f".to_string())] {
        Outcome::Failed { reason, .. } => {
            assert_eq!(*reason, FailureReason::RequestedAddressUnavailable)
        }
        other => panic!("f: {other:?}"),
    }
}

#[test]
fn a_pool_that_stops_admitting_a_service_moves_it_in_one_step() {
    let narrowed = Pool {
        priority: Some(1),
        namespaces: vec!["prod".into()],
        ..pool("first", &["192.0.2.0/24"], true)
    };
    let pools = [narrowed, pool("second", &["198.51.100.0/24"], true)];
    let s = svc("web", 1)
        .in_namespace("dev", &[])
        .with_current("192.0.2.1");
    let out = allocate(&pools, &[s]);
    assert_eq!(
        ip_in(&out, "dev", "web"),
        Some((ip("198.51.100.1"), "second".into()))
    );
}

#[test]
fn overlapping_pools_never_hand_out_an_address_twice() {
    // a: .0-.15, b: .8-.23 (overlap .8-.15); b tried first by priority.
    let pools = [
        pool("a", &["192.0.2.0/28"], true),
        Pool {
            priority: Some(1),
            ..pool("b", &["192.0.2.8-192.0.2.23"], true)
        },
    ];
    let services: Vec<ServiceView> = (0..30).map(|i| svc(&format!("s{i:02}"), i)).collect();
    let out = allocate(&pools, &services);
    let mut seen = BTreeSet::new();
    let mut allocated = 0;
    for o in out.values() {
        for a in o.assignments() {
            assert!(seen.insert(a.ip), "{} handed out twice", a.ip);
            allocated += 1;
        }
    }
    // .1-.23 (.0 buggy) = 23 distinct addresses in the union; 7 Services fail.
    assert_eq!(allocated, 23);
    assert_eq!(
        out.values()
            .filter(|o| matches!(
                o,
                Outcome::Failed {
                    reason: FailureReason::PoolExhausted,
                    ..
                }
            ))
            .count(),
        7
    );
}

// === claims ===

fn claim(ip_: &str, owner: &str) -> ClaimView {
    ClaimView {
        ip: ip(ip_),
        owner: ("default".into(), owner.into()),
        uid: Some(format!("uid-{owner}")),
    }
}

#[test]
fn a_claim_reserves_its_address_for_its_owner() {
    let pools = [pool("lab", &["203.0.113.0/29"], true)];
    // "new" is older but "owner" claims .1: "new" must not get it, not even through its status.
    let services = [
        svc("new", 1).with_current("203.0.113.1"),
        svc("owner", 2).with_current("203.0.113.1"),
    ];
    let out = allocate_with_claims(&pools, &services, &[claim("203.0.113.1", "owner")]);
    assert_eq!(ip_of(&out, "owner"), Some(ip("203.0.113.1")));
    assert_eq!(ip_of(&out, "new"), Some(ip("203.0.113.2")));
    // A requested address claimed by someone else is unavailable.
    let services = [svc("asks", 1).with_request("203.0.113.1"), svc("owner", 2)];
    let out = allocate_with_claims(&pools, &services, &[claim("203.0.113.1", "owner")]);
    assert_eq!(
        reason_of(&out, "asks"),
        Some(FailureReason::RequestedAddressUnavailable)
    );
    assert_eq!(ip_of(&out, "owner"), Some(ip("203.0.113.1")));
}

#[test]
fn a_claim_without_status_is_recovered_after_a_crash() {
    // The controller died after creating the claim, before writing status: the Service gets the
    // claimed address, not the lowest free one.
    let pools = [pool("lab", &["203.0.113.0/29"], true)];
    let out = allocate_with_claims(&pools, &[svc("web", 1)], &[claim("203.0.113.5", "web")]);
    assert_eq!(ip_of(&out, "web"), Some(ip("203.0.113.5")));
    // Status wins over a stale claim of the same family (the claim is then garbage).
    let out = allocate_with_claims(
        &pools,
        &[svc("web", 1).with_current("203.0.113.3")],
        &[claim("203.0.113.5", "web")],
    );
    assert_eq!(ip_of(&out, "web"), Some(ip("203.0.113.3")));
}

#[test]
fn claims_of_gone_or_recreated_services_reserve_nothing() {
    let pools = [pool("lab", &["203.0.113.1/32"], true)];
    let out = allocate_with_claims(&pools, &[svc("web", 1)], &[claim("203.0.113.1", "gone")]);
    assert_eq!(ip_of(&out, "web"), Some(ip("203.0.113.1")), "orphan claim");
    let mut stale = claim("203.0.113.1", "other");
    stale.uid = Some("uid-of-an-older-incarnation".into());
    let out = allocate_with_claims(&pools, &[svc("web", 1), svc("other", 2)], &[stale]);
    assert_eq!(ip_of(&out, "web"), Some(ip("203.0.113.1")), "uid differs");
    assert_eq!(reason_of(&out, "other"), Some(FailureReason::PoolExhausted));
}

#[test]
fn a_claimed_shared_address_admits_compatible_sharers_only() {
    let pools = [pool("lab", &["203.0.113.0/30"], true)];
    let owner = svc("owner", 5).with_key("k").with_ports(&[("TCP", 80)]);
    let sharer = svc("sharer", 1).with_key("k").with_ports(&[("TCP", 443)]);
    let clash = svc("clash", 2).with_key("k").with_ports(&[("TCP", 80)]);
    let out = allocate_with_claims(
        &pools,
        &[
            owner,
            sharer.with_request("203.0.113.1"),
            clash.with_request("203.0.113.1"),
        ],
        &[claim("203.0.113.1", "owner")],
    );
    assert_eq!(ip_of(&out, "owner"), Some(ip("203.0.113.1")));
    assert_eq!(ip_of(&out, "sharer"), Some(ip("203.0.113.1")));
    assert_eq!(
        reason_of(&out, "clash"),
        Some(FailureReason::SharingConflict)
    );
}

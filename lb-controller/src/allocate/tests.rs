use super::*;
use crate::pool::AddressRange;

fn pool(name: &str, addresses: &[&str], auto_assign: bool) -> Pool {
    Pool {
        name: name.into(),
        ranges: addresses.iter().map(|a| AddressRange::parse(a).expect("valid")).collect(),
        auto_assign,
        avoid_buggy_ips: true,
        problems: vec![],
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// Test builder: an eligible LoadBalancer Service created at `age` seconds after the epoch.
fn svc(name: &str, age: i64) -> ServiceView {
    ServiceView {
        key: ("default".into(), name.into()),
        created: Some(Time(k8s_openapi::jiff::Timestamp::from_second(age).expect("time"))),
        eligible: true,
        foreign: false,
        requested: None,
        pool: None,
        ipv6: false,
        current: vec![],
    }
}

impl ServiceView {
    fn with_current(mut self, s: &str) -> Self {
        self.current = vec![ip(s)];
        self
    }
    fn with_request(mut self, s: &str) -> Self {
        self.requested = Some(s.parse::<IpAddr>().map_err(|e| e.to_string()));
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

fn ip_of(out: &BTreeMap<ServiceKey, Outcome>, name: &str) -> Option<IpAddr> {
    match out.get(&("default".to_string(), name.to_string())) {
        Some(Outcome::Allocated { ip, .. }) => Some(*ip),
        _ => None,
    }
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
    assert_eq!(ip_of(&out, "b"), Some(ip("203.0.113.1")), ".0 skipped (avoidBuggyIPs)");
    assert_eq!(ip_of(&out, "a"), Some(ip("203.0.113.2")));
}

#[test]
fn keeps_existing_addresses_across_restarts() {
    let pools = [pool("lab", &["203.0.113.0/24"], true)];
    let services = [svc("a", 1).with_current("203.0.113.77"), svc("b", 2)];
    let out = allocate(&pools, &services);
    assert_eq!(ip_of(&out, "a"), Some(ip("203.0.113.77")), "kept, not reshuffled");
    assert_eq!(ip_of(&out, "b"), Some(ip("203.0.113.1")));
    // Recomputing from the written result changes nothing.
    let services = [svc("a", 1).with_current("203.0.113.77"), svc("b", 2).with_current("203.0.113.1")];
    assert_eq!(allocate(&pools, &services), out);
}

#[test]
fn never_gives_one_address_to_two_services() {
    let pools = [pool("lab", &["203.0.113.0/24"], true)];
    // Both claim the same address in status (e.g. after a split brain): the older keeps it.
    let services = [svc("young", 9).with_current("203.0.113.5"), svc("old", 1).with_current("203.0.113.5")];
    let out = allocate(&pools, &services);
    assert_eq!(ip_of(&out, "old"), Some(ip("203.0.113.5")));
    assert_eq!(ip_of(&out, "young"), Some(ip("203.0.113.1")));
    // A request for a taken address fails instead of duplicating.
    let services = [svc("a", 1).with_current("203.0.113.5"), svc("b", 2).with_request("203.0.113.5")];
    let out = allocate(&pools, &services);
    assert_eq!(reason_of(&out, "b"), Some(FailureReason::RequestedAddressUnavailable));
}

#[test]
fn honours_requests_and_moves_when_the_request_changes() {
    let pools = [pool("lab", &["203.0.113.0/24"], true), pool("manual", &["198.51.100.0/28"], false)];
    let out = allocate(&pools, &[svc("a", 1).with_current("203.0.113.1").with_request("203.0.113.50")]);
    assert_eq!(ip_of(&out, "a"), Some(ip("203.0.113.50")));
    // Explicit requests may use a pool without autoAssign.
    let out = allocate(&pools, &[svc("a", 1).with_request("198.51.100.3")]);
    assert_eq!(ip_of(&out, "a"), Some(ip("198.51.100.3")));
    let out = allocate(&pools, &[svc("a", 1).with_request("192.0.2.1")]);
    assert_eq!(reason_of(&out, "a"), Some(FailureReason::RequestedAddressUnavailable));
    let out = allocate(&pools, &[svc("a", 1).with_request("not-an-ip")]);
    assert_eq!(reason_of(&out, "a"), Some(FailureReason::RequestedAddressUnavailable));
}

#[test]
fn pool_selection_by_annotation_and_auto_assign() {
    let pools = [pool("lab", &["203.0.113.0/24"], true), pool("manual", &["198.51.100.0/28"], false)];
    let out = allocate(&pools, &[svc("a", 1).with_pool("manual")]);
    assert_eq!(ip_of(&out, "a"), Some(ip("198.51.100.1")));
    let out = allocate(&pools, &[svc("a", 1).with_pool("missing")]);
    assert_eq!(reason_of(&out, "a"), Some(FailureReason::NoMatchingPool));
    // An address from a non-auto-assign pool is not kept without a request.
    let out = allocate(&pools, &[svc("a", 1).with_current("198.51.100.4")]);
    assert_eq!(ip_of(&out, "a"), Some(ip("203.0.113.1")));
    let out = allocate(&[pool("manual", &["198.51.100.0/28"], false)], &[svc("a", 1)]);
    assert_eq!(reason_of(&out, "a"), Some(FailureReason::NoMatchingPool));
}

#[test]
fn reports_exhaustion_and_releases_non_load_balancers() {
    let pools = [pool("tiny", &["203.0.113.1-203.0.113.1"], true)];
    let out = allocate(&pools, &[svc("a", 1), svc("b", 2)]);
    assert_eq!(ip_of(&out, "a"), Some(ip("203.0.113.1")));
    assert_eq!(reason_of(&out, "b"), Some(FailureReason::PoolExhausted));

    let out = allocate(&pools, &[svc("a", 1).with_current("203.0.113.1").not_eligible(), svc("b", 2)]);
    assert_eq!(out.get(&("default".into(), "a".into())), Some(&Outcome::Released));
    assert_eq!(ip_of(&out, "b"), Some(ip("203.0.113.1")), "the released address is reusable at once");
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
    assert_eq!(view.requested, Some(Ok(ip("203.0.113.9"))), "annotation wins over spec.loadBalancerIP");
    assert_eq!(view.current, vec![ip("203.0.113.9")]);
    assert!(!ServiceView::from_service(&svc, false).eligible, "class-less handling off");

    let mut other = svc.clone();
    other.spec.as_mut().expect("spec").load_balancer_class = Some("example.com/other".into());
    let view = ServiceView::from_service(&other, true);
    assert!(!view.eligible && view.foreign);
    let out = allocate(&[pool("lab", &["203.0.113.0/24"], true)], &[view]);
    assert!(out.is_empty(), "other classes are never touched");
}

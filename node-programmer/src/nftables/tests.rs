//! Unit tests of the sync engine against the recording fake. The real-kernel equivalence of
//! partial and full syncs is checked in `tests/netns.rs`.

use super::*;
use crate::apply::RecordingApply;
use crate::model::IpFamily;
use crate::model::tests::{mk_service, mk_slice};

fn world(endpoints_of_b: &[&str]) -> ServiceTable {
    let services = [
        mk_service("ns", "a")
            .cluster_ip("198.18.0.1")
            .port("http", 80)
            .node_port(30001)
            .build(),
        mk_service("ns", "b")
            .cluster_ip("198.18.0.2")
            .port("http", 80)
            .lb_ip("203.0.113.2")
            .build(),
    ];
    let mut slice_b = mk_slice("ns", "b-1", "b").port("http", 8080);
    for ip in endpoints_of_b {
        slice_b = slice_b.ready(ip, "node-a");
    }
    let slices = [
        mk_slice("ns", "a-1", "a")
            .port("http", 8080)
            .ready("192.0.2.1", "node-a")
            .build(),
        slice_b.build(),
    ];
    ServiceTable::build(&services, &slices, "node-a").0
}

fn proxier() -> NftProxier<RecordingApply> {
    NftProxier::new(Options::for_family(IpFamily::V4), RecordingApply::default())
}

fn last(p: &NftProxier<RecordingApply>) -> &str {
    p.applier().transactions.last().expect("a transaction")
}

#[test]
fn first_sync_is_full_then_unchanged_sends_nothing() {
    let mut p = proxier();
    let now = Instant::now();
    let table = world(&["192.0.2.10"]);
    assert!(matches!(p.sync(&table, now), Ok(SyncKind::Full { .. })));
    assert!(matches!(p.sync(&table, now), Ok(SyncKind::Unchanged)));
    assert_eq!(p.applier().transactions.len(), 1);
}

#[test]
fn an_endpoint_change_touches_only_that_service() {
    let mut p = proxier();
    let now = Instant::now();
    p.sync(&world(&["192.0.2.10"]), now).expect("full");
    let kind = p
        .sync(&world(&["192.0.2.10", "192.0.2.11"]), now)
        .expect("partial");
    assert!(
        matches!(
            kind,
            SyncKind::Partial {
                changed_ports: 1,
                ..
            }
        ),
        "{kind:?}"
    );
    let text = last(&p);
    assert!(!text.contains("ns/a/"), "service a untouched:\n{text}");
    assert!(
        text.contains("flush chain ip drawbridge service-"),
        "{text}"
    );
    assert!(text.contains("dnat to 192.0.2.11:8080"), "{text}");
    // The ClusterIP element already points at the same chain: no element churn.
    assert!(!text.contains("element"), "{text}");
    assert!(!text.contains("add table"), "{text}");
}

#[test]
fn losing_all_endpoints_moves_elements_and_stales_chains() {
    let mut p = proxier();
    let t0 = Instant::now();
    p.sync(&world(&["192.0.2.10"]), t0).expect("full");
    p.sync(&world(&[]), t0).expect("partial");
    let text = last(&p).to_string();
    assert!(
        text.contains("delete element ip drawbridge service-ips { 198.18.0.2 . tcp . 80, 203.0.113.2 . tcp . 80 }"),
        "{text}"
    );
    assert!(
        text.contains("add element ip drawbridge no-endpoint-services { 198.18.0.2 . tcp . 80 : goto reject-chain, 203.0.113.2 . tcp . 80 : goto reject-chain }"),
        "{text}"
    );
    assert!(
        text.contains("flush chain ip drawbridge endpoint-"),
        "{text}"
    );
    assert!(
        !text.contains("delete chain"),
        "deleted only later:\n{text}"
    );
    // Due one second later, even without a change.
    let due = p.next_wakeup().expect("a stale chain is pending");
    assert_eq!(due, t0 + STALE_CHAIN_DELAY);
    assert!(matches!(
        p.sync(&world(&[]), t0 + Duration::from_millis(500)),
        Ok(SyncKind::Unchanged)
    ));
    p.sync(&world(&[]), due).expect("deletes");
    let text = last(&p);
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("delete chain"))
            .count(),
        3, // endpoint, service and external chains of ns/b
        "{text}"
    );
    assert_eq!(p.next_wakeup(), None);
}

#[test]
fn a_chain_wanted_again_before_deletion_is_kept() {
    let mut p = proxier();
    let t0 = Instant::now();
    p.sync(&world(&["192.0.2.10"]), t0).expect("full");
    p.sync(&world(&[]), t0).expect("stale");
    p.sync(&world(&["192.0.2.10"]), t0 + Duration::from_millis(100))
        .expect("back");
    assert_eq!(p.next_wakeup(), None);
    assert!(!last(&p).contains("delete chain"));
}

#[test]
fn a_failed_transaction_forces_a_full_sync() {
    let mut p = proxier();
    let now = Instant::now();
    p.sync(&world(&["192.0.2.10"]), now).expect("full");
    p.applier_mut().fail_next = 1;
    assert!(p.sync(&world(&["192.0.2.11"]), now).is_err());
    assert!(matches!(
        p.sync(&world(&["192.0.2.11"]), now),
        Ok(SyncKind::Full { .. })
    ));
}

#[test]
fn an_option_change_forces_a_full_sync() {
    let mut p = proxier();
    let now = Instant::now();
    let table = world(&["192.0.2.10"]);
    p.sync(&table, now).expect("full");
    let mut options = p.options().clone();
    options.local_traffic = vec!["192.0.2.0/24".parse().expect("cidr")];
    p.set_options(options);
    assert!(matches!(p.sync(&table, now), Ok(SyncKind::Full { .. })));
}

#[test]
fn a_removed_service_loses_its_elements_and_sets() {
    let mut p = proxier();
    let now = Instant::now();
    let services = [mk_service("ns", "s")
        .cluster_ip("198.18.0.9")
        .port("http", 80)
        .client_ip_affinity(60)
        .build()];
    let slices = [mk_slice("ns", "s-1", "s")
        .port("http", 8080)
        .ready("192.0.2.1", "node-a")
        .build()];
    let (table, _) = ServiceTable::build(&services, &slices, "node-a");
    p.sync(&table, now).expect("full");
    assert!(last(&p).contains("timeout 60s"));
    p.sync(&ServiceTable::default(), now).expect("partial");
    let text = last(&p);
    assert!(
        text.contains("delete element ip drawbridge service-ips { 198.18.0.9 . tcp . 80 }"),
        "{text}"
    );
    assert!(
        text.contains("delete element ip drawbridge cluster-ips { 198.18.0.9 }"),
        "{text}"
    );
    assert!(
        text.contains("delete set ip drawbridge affinity-"),
        "{text}"
    );
}

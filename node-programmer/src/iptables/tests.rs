//! Golden-file and proxier tests for the iptables backend. `src/iptables/golden/<name>.rules`
//! holds the expected full `iptables-restore` input; regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p node-programmer --release --lib iptables` and review the diff.
//! `tests/netns_iptables.rs` loads the same layout into a real kernel and sends traffic through it.

use super::*;
use crate::model::ServiceTable;
use crate::model::tests::{mk_service, mk_slice};

fn golden(name: &str, actual: &str) {
    crate::model::tests::golden("src/iptables/golden", &format!("{name}.rules"), actual);
}

/// The small world of the nftables golden test ([`crate::model::tests::small_world_with`]) plus
/// `demo/itp`: ClusterIP with iTP=Local and its only endpoint on node-b (DROP).
fn small_world() -> ServiceTable {
    crate::model::tests::small_world_with(
        vec![
            mk_service("demo", "itp")
                .cluster_ip("198.18.0.60")
                .port("http", 80)
                .itp_local()
                .build(),
        ],
        vec![
            mk_slice("demo", "itp-abc", "itp")
                .port("http", 8080)
                .ready("192.0.2.60", "node-b")
                .build(),
        ],
    )
}

fn rules_of<'a>(text: &'a str, chain: &str) -> Vec<&'a str> {
    let prefix = format!("-A {chain} ");
    text.lines().filter(|l| l.starts_with(&prefix)).collect()
}

#[test]
fn golden_empty() {
    golden(
        "empty",
        &Ruleset::build(&ServiceTable::default(), Family::V4).full_text(),
    );
}

#[test]
fn golden_small_world() {
    golden(
        "small-world",
        &Ruleset::build(&small_world(), Family::V4).full_text(),
    );
}

/// ClientIP affinity, loadBalancerSourceRanges and a healthCheckNodePort, in both families:
/// - `demo/sticky`: ClusterIP, ClientIP affinity 600 s, two endpoints;
/// - `demo/fenced`: LoadBalancer with `loadBalancerSourceRanges`, eTP=Local, a healthCheckNodePort.
fn features_world(family: crate::model::IpFamily) -> ServiceTable {
    use crate::model::{IpFamily, NodeContext};
    let services = [
        mk_service("demo", "sticky")
            .cluster_ips(&["198.18.0.70", "2001:db8:18::70"])
            .port("http", 80)
            .client_ip_affinity(600)
            .build(),
        mk_service("demo", "fenced")
            .cluster_ips(&["198.18.0.71", "2001:db8:18::71"])
            .port("http", 80)
            .node_port(30071)
            .lb_ip("203.0.113.71")
            .lb_ip("2001:db8:203::71")
            .etp_local()
            .source_range("198.51.100.0/24")
            .source_range("2001:db8:51::/48")
            .health_check_node_port(32071)
            .build(),
    ];
    let (v4, v6) = (family == IpFamily::V4, family == IpFamily::V6);
    let addr = |a: &str, b: &str| if v4 { a.to_string() } else { b.to_string() };
    let slices = [
        mk_slice("demo", "sticky-abc", "sticky")
            .address_type(if v6 { "IPv6" } else { "IPv4" })
            .port("http", 8080)
            .ready(&addr("192.0.2.70", "2001:db8:2::70"), "node-a")
            .ready(&addr("192.0.2.71", "2001:db8:2::71"), "node-b")
            .build(),
        mk_slice("demo", "fenced-abc", "fenced")
            .address_type(if v6 { "IPv6" } else { "IPv4" })
            .port("http", 8080)
            .ready(&addr("192.0.2.72", "2001:db8:2::72"), "node-a")
            .build(),
    ];
    let (table, skipped) =
        ServiceTable::build_for(&services, &slices, &NodeContext::named("node-a"), family);
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(table.ports.len(), 2, "{table:?}");
    table
}

#[test]
fn golden_features_v4() {
    golden(
        "features-v4",
        &Ruleset::build(&features_world(crate::model::IpFamily::V4), Family::V4).full_text(),
    );
}

#[test]
fn golden_features_v6() {
    golden(
        "features-v6",
        &Ruleset::build(&features_world(crate::model::IpFamily::V6), Family::V6).full_text(),
    );
}

/// kube-proxy's own test vectors (`pkg/proxy/iptables/proxier_test.go`: `KUBE-SVC-XPGD46QRK7WJZT7O`
/// for `ns1/svc1:p80` tcp, `KUBE-SEP-SXIVWICOYRO3J4NJ` for its endpoint 10.180.0.1:80).
#[test]
fn hash_matches_kube_proxy() {
    assert_eq!(kube_proxy_hash("ns1/svc1:p80tcp"), "XPGD46QRK7WJZT7O");
    assert_eq!(
        kube_proxy_hash("ns1/svc1:p80tcp10.180.0.1:80"),
        "SXIVWICOYRO3J4NJ"
    );
    let table = ServiceTable::build(
        &[mk_service("ns1", "svc1")
            .cluster_ip("10.20.30.41")
            .port("p80", 80)
            .build()],
        &[mk_slice("ns1", "svc1-abc", "svc1")
            .port("p80", 80)
            .ready("10.180.0.1", "node-a")
            .build()],
        "node-a",
    )
    .0;
    let text = Ruleset::build(&table, Family::V4).full_text();
    assert!(
        text.contains(":DRAWBRIDGE-SVC-XPGD46QRK7WJZ - [0:0]"),
        "{text}"
    );
    assert!(
        text.contains(":DRAWBRIDGE-SEP-SXIVWICOYRO3J - [0:0]"),
        "{text}"
    );
}

#[test]
fn chain_names_fit_iptables() {
    let text = Ruleset::build(&small_world(), Family::V4).full_text();
    for line in text.lines().filter(|l| l.starts_with(':')) {
        let name = line[1..].split_whitespace().next().expect("name");
        assert!(name.len() <= 28, "{name} is longer than 28 characters");
    }
}

#[test]
fn probabilities_are_kube_proxys() {
    assert_eq!(probability(2), "0.5000000000");
    assert_eq!(probability(3), "0.3333333333");
    assert_eq!(probability(10), "0.1000000000");
    // 1/(n-i) for 4 endpoints: 0.25, 0.333…, 0.5, then unconditional.
    let slice = (1..=4).fold(
        mk_slice("demo", "four-abc", "four").port("http", 8080),
        |s, i| s.ready(&format!("192.0.2.{i}"), "node-a"),
    );
    let table = ServiceTable::build(
        &[mk_service("demo", "four")
            .cluster_ip("198.18.0.4")
            .port("http", 80)
            .build()],
        &[slice.build()],
        "node-a",
    )
    .0;
    let ruleset = Ruleset::build(&table, Family::V4);
    let svc = ruleset
        .nat_service
        .iter()
        .find(|c| c.name.starts_with("DRAWBRIDGE-SVC-"))
        .expect("SVC chain");
    let probabilities: Vec<&str> = svc
        .rules
        .lines()
        .map(|l| {
            l.split("--probability ")
                .nth(1)
                .map_or("-", |r| r.split(' ').next().unwrap_or("?"))
        })
        .collect();
    assert_eq!(
        probabilities,
        ["0.2500000000", "0.3333333333", "0.5000000000", "-"]
    );
}

/// §1.11 verdicts land in the filter chains kube-proxy uses.
#[test]
fn no_endpoint_verdicts() {
    let text = Ruleset::build(&small_world(), Family::V4).full_text();
    let filter = text.split("*filter").nth(1).expect("filter table");
    // No endpoints at all: REJECT ClusterIP (SERVICES), LB IP and NodePort (EXTERNAL-SERVICES).
    assert!(
        rules_of(filter, SERVICES)
            .iter()
            .any(|r| r.contains("-d 198.18.0.20 --dport 80 -j REJECT")),
        "{filter}"
    );
    let external = rules_of(filter, EXTERNAL_SERVICES);
    assert!(
        external
            .iter()
            .any(|r| r.contains("-d 203.0.113.20 --dport 80 -j REJECT"))
    );
    assert!(
        external
            .iter()
            .any(|r| r
                .contains("-m addrtype --dst-type LOCAL -p tcp -m tcp --dport 30090 -j REJECT"))
    );
    // eTP=Local with endpoints elsewhere only: DROP external, ClusterIP still served.
    assert!(
        external
            .iter()
            .any(|r| r.contains("-d 203.0.113.12 --dport 80 -j DROP"))
    );
    assert!(external.iter().any(|r| r.contains("--dport 30082 -j DROP")));
    // iTP=Local with the endpoint elsewhere: DROP the ClusterIP.
    assert!(
        rules_of(filter, SERVICES)
            .iter()
            .any(|r| r.contains("-d 198.18.0.60 --dport 80 -j DROP"))
    );
    // Served destinations have no filter rule.
    assert!(!filter.contains("198.18.0.10 "), "{filter}");
    assert!(!filter.contains("203.0.113.11 "), "{filter}");
}

#[test]
fn nodeports_jump_is_the_last_rule_and_skips_loopback() {
    let ruleset = Ruleset::build(&small_world(), Family::V4);
    let services = &ruleset.nat_top[0];
    let last = services.rules.lines().last().expect("a rule");
    assert!(
        last.ends_with("-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j DRAWBRIDGE-NODEPORTS"),
        "{last}"
    );
    let v6 = Ruleset::build(&ServiceTable::default(), Family::V6);
    assert!(
        v6.nat_top[0]
            .rules
            .contains("! -d ::1/128 -j DRAWBRIDGE-NODEPORTS")
    );
}

#[test]
fn etp_local_external_chain_short_circuits_host_traffic() {
    let ruleset = Ruleset::build(&small_world(), Family::V4);
    let text = ruleset.full_text();
    // The `local` Service's LB IP rule names its EXT chain.
    let lb = text
        .lines()
        .find(|l| l.contains("-d 203.0.113.11 --dport 80"))
        .expect("LB rule");
    let ext = lb.rsplit(' ').next().expect("target");
    let rules = rules_of(&text, ext);
    assert_eq!(rules.len(), 3, "{rules:?}");
    assert!(rules[0].ends_with("-m addrtype --src-type LOCAL -j DRAWBRIDGE-MARK-MASQ"));
    assert!(rules[1].contains("-m addrtype --src-type LOCAL -j DRAWBRIDGE-SVC-"));
    assert!(rules[2].contains("-j DRAWBRIDGE-SVL-"));
    // local-elsewhere: no local endpoint, so no final jump (falls through to the filter DROP).
    let lb = text
        .lines()
        .find(|l| {
            l.contains("-d 203.0.113.12 --dport 80") && l.starts_with("-A DRAWBRIDGE-SERVICES")
        })
        .expect("LB rule");
    let ext = lb.rsplit(' ').next().expect("target");
    let rules = rules_of(&text, ext);
    assert_eq!(rules.len(), 2, "{rules:?}");
}

#[test]
fn comments_are_dropped_in_large_clusters() {
    let mut slice = mk_slice("demo", "big-abc", "big").port("http", 8080);
    for i in 0..(LARGE_CLUSTER_ENDPOINTS + 1) {
        slice = slice.ready(&format!("10.0.{}.{}", i / 250, i % 250 + 1), "node-a");
    }
    let table = ServiceTable::build(
        &[mk_service("demo", "big")
            .cluster_ip("198.18.0.4")
            .port("http", 80)
            .build()],
        &[slice.build()],
        "node-a",
    )
    .0;
    let text = Ruleset::build(&table, Family::V4).full_text();
    assert!(
        !text.contains("--comment"),
        "comments in large-cluster mode"
    );
    let small = Ruleset::build(&small_world(), Family::V4).full_text();
    assert!(small.contains("-m comment --comment \"demo/web:http cluster IP\""));
}

/// ClientIP affinity, as kube-proxy writes it: one `-m recent --rcheck` rule per endpoint before the
/// random choice (§1.10). (`Ruleset::build` passes the Service's timeout once the model has it.)
#[test]
fn affinity_rules_precede_the_random_choice() {
    let table = world_with(&["192.0.2.10", "192.0.2.11"]);
    let port = table
        .ports
        .iter()
        .find(|p| p.id.name == "web")
        .expect("web");
    let names = PortChains::new(port);
    let chain = policy_chain(
        &names.svc,
        &names,
        &port.cluster_endpoints,
        Some(10800),
        false,
    );
    let rules: Vec<&str> = chain.rules.lines().collect();
    assert_eq!(rules.len(), 4, "{rules:?}");
    for (rule, (_, sep)) in rules[..2].iter().zip(&names.endpoints) {
        assert_eq!(
            *rule,
            format!(
                "-A {} -m recent --name {sep} --rcheck --seconds 10800 --reap -j {sep}",
                names.svc
            )
        );
    }
    assert!(rules[2].contains("--probability 0.5000000000"));
}

// === proxier ===

fn world_with(web_endpoints: &[&str]) -> ServiceTable {
    let services = [
        mk_service("demo", "web")
            .cluster_ip("198.18.0.10")
            .port("http", 80)
            .node_port(30080)
            .build(),
        mk_service("demo", "other")
            .cluster_ip("198.18.0.11")
            .port("http", 80)
            .build(),
    ];
    let web = web_endpoints.iter().fold(
        mk_slice("demo", "web-abc", "web").port("http", 8080),
        |s, ip| s.ready(ip, "node-a"),
    );
    let slices = [
        web.build(),
        mk_slice("demo", "other-abc", "other")
            .port("http", 8080)
            .ready("192.0.2.50", "node-a")
            .build(),
    ];
    ServiceTable::build(&services, &slices, "node-a").0
}

#[test]
fn first_sync_is_full_and_ensures_jumps_once() {
    let mut proxier = IptablesProxier::new(FakeRunner::default(), Family::V4);
    let table = world_with(&["192.0.2.10"]);
    assert_eq!(proxier.sync(&table).expect("sync"), SyncKind::Full);
    let fake = proxier.runner();
    let rules = fake.rules.lock().expect("rules").clone();
    assert_eq!(rules.len(), jump_rules().len(), "{rules:?}");
    assert!(rules.contains(
        "nat PREROUTING -m comment --comment drawbridge service portals -j DRAWBRIDGE-SERVICES"
    ));
    let restores = fake.restores();
    assert_eq!(restores.len(), 1);
    assert!(restores[0].contains("-j DNAT --to-destination 192.0.2.10:8080"));

    // Unchanged world: nothing at all is run.
    let commands = fake.commands.lock().expect("commands").len();
    assert_eq!(proxier.sync(&table).expect("sync"), SyncKind::Unchanged);
    assert_eq!(proxier.runner().restores().len(), 1);
    assert_eq!(
        proxier.runner().commands.lock().expect("commands").len(),
        commands
    );
}

#[test]
fn partial_sync_writes_only_the_changed_service() {
    let mut proxier = IptablesProxier::new(FakeRunner::default(), Family::V4);
    proxier.sync(&world_with(&["192.0.2.10"])).expect("full");
    let full = proxier.runner().restores().last().cloned().expect("full");
    let other_sep = full
        .lines()
        .find(|l| l.contains("--to-destination 192.0.2.50:8080"))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("other's SEP chain")
        .to_string();

    // web gains an endpoint: web's SVC and new SEP written, other's chains not.
    let kind = proxier
        .sync(&world_with(&["192.0.2.10", "192.0.2.11"]))
        .expect("partial");
    assert_eq!(kind, SyncKind::Partial);
    let text = proxier
        .runner()
        .restores()
        .last()
        .cloned()
        .expect("partial");
    assert!(text.contains("--to-destination 192.0.2.11:8080"), "{text}");
    assert!(
        !text.contains(&other_sep),
        "unchanged chain rewritten:\n{text}"
    );
    // The unchanged SEP of web (192.0.2.10) is not rewritten either.
    assert!(!text.contains("--to-destination 192.0.2.10:8080"), "{text}");
    // Top-level chains are always whole.
    assert!(text.contains(":DRAWBRIDGE-SERVICES - [0:0]"));
    assert!(text.contains("-d 198.18.0.11 --dport 80 -j DRAWBRIDGE-SVC-"));
    assert!(!text.contains("-X "), "{text}");

    // web loses 192.0.2.10: its SEP chain is flushed and deleted.
    proxier.sync(&world_with(&["192.0.2.11"])).expect("partial");
    let text = proxier
        .runner()
        .restores()
        .last()
        .cloned()
        .expect("partial");
    let stale: Vec<&str> = text.lines().filter(|l| l.starts_with("-X ")).collect();
    assert_eq!(stale.len(), 1, "{text}");
    let name = &stale[0][3..];
    assert!(
        text.contains(&format!(":{name} - [0:0]")),
        "stale chain not flushed first"
    );
    let position = |needle: &str| text.find(needle).expect(needle);
    assert!(position("-X ") > position("-A DRAWBRIDGE-SERVICES"));
}

#[test]
fn a_failed_restore_forces_a_full_one() {
    let mut proxier = IptablesProxier::new(FakeRunner::default(), Family::V4);
    proxier.sync(&world_with(&["192.0.2.10"])).expect("full");
    *proxier.runner().fail_next.lock().expect("lock") = 1;
    let changed = world_with(&["192.0.2.12"]);
    assert!(proxier.sync(&changed).is_err());
    // Same world again: not "unchanged" (the kernel did not take it), and written in full.
    let before = proxier.runner().restores().len();
    assert_eq!(proxier.sync(&changed).expect("retry"), SyncKind::Full);
    let restores = proxier.runner().restores();
    assert_eq!(restores.len(), before + 1, "one full restore");
    let text = restores.last().expect("full");
    assert!(text.contains("--to-destination 192.0.2.50:8080"), "{text}");
}

#[test]
fn full_sync_deletes_leftover_chains_found_in_the_kernel() {
    let fake = FakeRunner::default();
    fake.saved.lock().expect("lock").insert(
        "nat",
        "*nat\n:PREROUTING ACCEPT [0:0]\n:DRAWBRIDGE-SERVICES - [0:0]\n:DRAWBRIDGE-SVC-OLDOLDOLDOLDO - [0:0]\n:KUBE-SERVICES - [0:0]\nCOMMIT\n"
            .to_string(),
    );
    let mut proxier = IptablesProxier::new(fake, Family::V4);
    proxier.sync(&world_with(&["192.0.2.10"])).expect("full");
    let text = proxier.runner().restores().last().cloned().expect("full");
    assert!(text.contains("-X DRAWBRIDGE-SVC-OLDOLDOLDOLDO\n"), "{text}");
    assert!(!text.contains("-X DRAWBRIDGE-SERVICES"));
    assert!(!text.contains("KUBE-"), "touched someone else's chain");
}

#[test]
fn cleanup_removes_jumps_and_chains_only_ours() {
    let fake = FakeRunner::default();
    fake.saved.lock().expect("lock").insert(
        "nat",
        concat!(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:DRAWBRIDGE-SERVICES - [0:0]\n:DRAWBRIDGE-SEP-AAAAAAAAAAAAA - [0:0]\n",
            ":KUBE-SERVICES - [0:0]\n",
            "-A PREROUTING -m comment --comment \"drawbridge service portals\" -j DRAWBRIDGE-SERVICES\n",
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
            "-A DRAWBRIDGE-SERVICES -j DRAWBRIDGE-SEP-AAAAAAAAAAAAA\nCOMMIT\n"
        )
        .to_string(),
    );
    let proxier = IptablesProxier::new(fake, Family::V4);
    proxier.cleanup().expect("cleanup");
    let commands = proxier.runner().commands.lock().expect("lock").clone();
    assert_eq!(
        commands,
        [
            "nat -D PREROUTING -m comment --comment drawbridge service portals -j DRAWBRIDGE-SERVICES"
        ]
    );
    let restores = proxier.runner().restores();
    assert_eq!(
        restores,
        [
            "*nat\n:DRAWBRIDGE-SEP-AAAAAAAAAAAAA - [0:0]\n:DRAWBRIDGE-SERVICES - [0:0]\n-X DRAWBRIDGE-SEP-AAAAAAAAAAAAA\n-X DRAWBRIDGE-SERVICES\nCOMMIT\n"
        ]
    );
}

/// Jump rules already in the kernel (as `iptables-save` prints them, matches reordered) are not
/// inserted again.
#[test]
fn existing_jumps_are_not_inserted_again() {
    let fake = FakeRunner::default();
    fake.saved.lock().expect("lock").insert(
        "nat",
        concat!(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:DRAWBRIDGE-SERVICES - [0:0]\n",
            "-A PREROUTING -m comment --comment \"drawbridge service portals\" -j DRAWBRIDGE-SERVICES\n",
            "-A OUTPUT -m comment --comment \"drawbridge service portals\" -j DRAWBRIDGE-SERVICES\n",
            "-A POSTROUTING -m comment --comment \"drawbridge postrouting rules\" -j DRAWBRIDGE-POSTROUTING\n",
            "COMMIT\n"
        )
        .to_string(),
    );
    let mut proxier = IptablesProxier::new(fake, Family::V4);
    proxier.sync(&world_with(&["192.0.2.10"])).expect("full");
    let commands = proxier.runner().commands.lock().expect("lock").clone();
    assert!(
        commands.iter().all(|c| c.starts_with("filter -I ")),
        "{commands:?}"
    );
    assert_eq!(commands.len(), jump_rules().len() - 3, "{commands:?}");
}

#[test]
fn save_rules_split_like_a_shell() {
    assert_eq!(
        split_save_rule("PREROUTING -m comment --comment \"a b\" -j X"),
        ["PREROUTING", "-m", "comment", "--comment", "a b", "-j", "X"]
    );
}

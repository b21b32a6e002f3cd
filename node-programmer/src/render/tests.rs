//! Golden-file tests: `src/render/golden/<name>.nft` holds the expected `table ip drawbridge {…}`.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p node-programmer render::` and review the diff.
//! The integration test `tests/netns.rs` loads the same worlds into a real kernel.

use super::*;
use crate::model::ServiceTable;
use crate::model::tests::{mk_service, mk_slice};

fn golden(name: &str, actual: &str) {
    crate::model::tests::golden("src/render/golden", &format!("{name}.nft"), actual);
}

/// The small world of the end-to-end slice ([`crate::model::tests::small_world_with`]) plus
/// `demo/sticky`: ClientIP affinity (60 s) and loadBalancerSourceRanges on its LB IP.
pub(crate) fn small_world() -> ServiceTable {
    crate::model::tests::small_world_with(
        vec![
            mk_service("demo", "sticky")
                .cluster_ip("198.18.0.40")
                .port("http", 80)
                .lb_ip("203.0.113.40")
                .client_ip_affinity(60)
                .source_range("198.51.100.0/24")
                .source_range("203.0.113.0/24")
                .build(),
        ],
        vec![
            mk_slice("demo", "sticky-abc", "sticky")
                .port("http", 8080)
                .ready("192.0.2.40", "node-a")
                .ready("192.0.2.41", "node-b")
                .build(),
        ],
    )
}

#[test]
fn golden_empty() {
    golden("empty", &ruleset(&ServiceTable::default()));
}

#[test]
fn golden_small_world() {
    golden("small-world", &ruleset(&small_world()));
}

/// The IPv6 table of a dual-stack world, with a pod-CIDR detector and `--nodeport-addresses`.
#[test]
fn golden_ipv6_world() {
    use crate::model::{IpFamily, NodeContext};
    let services = [
        mk_service("demo", "web")
            .cluster_ips(&["198.18.0.10", "2001:db8:ffff::10"])
            .port("http", 80)
            .node_port(30080)
            .lb_ip("203.0.113.10")
            .lb_ip("2001:db8:1::10")
            .source_range("2001:db8:3::/48")
            .build(),
        mk_service("demo", "local")
            .cluster_ips(&["2001:db8:ffff::11"])
            .port("http", 80)
            .node_port(30081)
            .lb_ip("2001:db8:1::11")
            .etp_local()
            .client_ip_affinity(30)
            .build(),
    ];
    let slices = [
        mk_slice("demo", "web-v6", "web")
            .address_type("IPv6")
            .port("http", 8080)
            .ready("2001:db8:2::10", "node-a")
            .ready("2001:db8:2::11", "node-b")
            .build(),
        mk_slice("demo", "local-v6", "local")
            .address_type("IPv6")
            .port("http", 8080)
            .ready("2001:db8:2::20", "node-a")
            .build(),
    ];
    let (table, skipped) = ServiceTable::build_for(
        &services,
        &slices,
        &NodeContext::named("node-a"),
        IpFamily::V6,
    );
    assert!(skipped.is_empty(), "{skipped:?}");
    let options = Options {
        family: IpFamily::V6,
        local_traffic: vec!["2001:db8:2::/64".parse().expect("cidr")],
        nodeport_addresses: NodePortAddresses::Cidrs(vec![
            "2001:db8:4::1/128".parse().expect("cidr"),
            "198.51.100.1/32".parse().expect("cidr"),
        ]),
        service_cidrs: vec![
            "2001:db8:ffff::/112".parse().expect("cidr"),
            "198.18.0.0/15".parse().expect("cidr"),
        ],
    };
    golden("ipv6-world", &ruleset_with(&table, &options));
}

#[test]
fn rendering_is_deterministic() {
    assert_eq!(transaction(&small_world()), transaction(&small_world()));
}

#[test]
fn transaction_replaces_only_our_table() {
    let text = transaction(&small_world());
    assert!(text.starts_with(
        "add table ip drawbridge\ndelete table ip drawbridge\ntable ip drawbridge {\n"
    ));
    let tables: Vec<&str> = text.lines().filter(|l| l.contains("table ")).collect();
    assert_eq!(tables.len(), 3, "{tables:?}");
    assert!(tables.iter().all(|l| l.contains("table ip drawbridge")));
    assert!(!text.contains("flush ruleset"));
}

/// Names from kube-proxy's own nftables tests (`pkg/proxy/nftables/proxier_test.go`), so our
/// chains are named exactly as kube-proxy names them.
#[test]
fn chain_names_match_kube_proxy() {
    let id = ServicePortName {
        namespace: "ns1".into(),
        name: "svc1".into(),
        port: "p80".into(),
        protocol: Protocol::Tcp,
    };
    assert_eq!(
        policy_chain("service", &id),
        "service-ULMVA6XW-ns1/svc1/tcp/p80"
    );
    let endpoint = Endpoint {
        ip: "10.180.0.1".parse().expect("ip"),
        port: 80,
    };
    assert_eq!(
        endpoint_chain(&id, &endpoint),
        "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    );
}

#[test]
fn long_names_are_truncated_with_the_hash_kept() {
    let base = "n".repeat(300);
    let name = hash_and_truncate(&base);
    assert_eq!(name.len(), 240);
    assert!(name.ends_with("..."));
    assert_eq!(&name[8..9], "-");
}

#[test]
fn element_placement_follows_kube_proxy() {
    let text = ruleset(&small_world());
    let web = policy_chain(
        "external",
        &small_world()
            .ports
            .iter()
            .find(|p| p.id.name == "web")
            .expect("web")
            .id,
    );
    // LB IP, externalIP and NodePort of an eTP=Cluster Service go to its external chain.
    assert!(text.contains(&format!("203.0.113.10 . tcp . 80 : goto {web},")));
    assert!(text.contains(&format!("198.51.100.100 . tcp . 80 : goto {web},")));
    assert!(text.contains(&format!("tcp . 30080 : goto {web},")));
    // No endpoints: REJECT ClusterIP, LB IP and NodePort.
    assert!(text.contains("198.18.0.20 . tcp . 80 : goto reject-chain,"));
    assert!(text.contains("203.0.113.20 . tcp . 80 : goto reject-chain,"));
    assert!(text.contains("tcp . 30090 : goto reject-chain,"));
    // eTP=Local with endpoints elsewhere only: external traffic DROPped, ClusterIP still served.
    assert!(text.contains("203.0.113.12 . tcp . 80 : drop,"));
    assert!(text.contains("tcp . 30082 : drop,"));
    assert!(!text.contains("198.18.0.12 . tcp . 80 : drop"));
    // Not-ready endpoints get no chain.
    assert!(!text.contains("192.0.2.11"));
}

/// One ClusterIP Service `demo/svc` with `n` Ready endpoints (192.0.2.1 … 192.0.2.n, port 8080).
fn world_with_endpoints(n: usize) -> ServiceTable {
    let service = mk_service("demo", "svc")
        .cluster_ip("198.18.0.10")
        .port("http", 80)
        .build();
    let mut slice = mk_slice("demo", "svc-abc", "svc").port("http", 8080);
    for i in 1..=n {
        slice = slice.ready(&format!("192.0.2.{i}"), "node-a");
    }
    let (table, skipped) = ServiceTable::build([&service], [&slice.build()], "node-a");
    assert!(skipped.is_empty(), "{skipped:?}");
    table
}

/// The rules of chain `name` in rendered `text`.
fn chain_rules<'t>(text: &'t str, name: &str) -> Vec<&'t str> {
    let open = format!("\tchain {name} {{");
    text.lines()
        .skip_while(|l| *l != open)
        .skip(1)
        .take_while(|l| *l != "\t}")
        .map(str::trim)
        .collect()
}

fn gcd(a: u128, b: u128) -> u128 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// An exact probability `num / den`, kept reduced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ratio(u128, u128);

impl Ratio {
    fn new(num: u128, den: u128) -> Ratio {
        let g = gcd(num, den).max(1);
        Ratio(num / g, den / g)
    }
    fn mul(self, other: Ratio) -> Ratio {
        Ratio::new(self.0 * other.0, self.1 * other.1)
    }
    fn add(self, other: Ratio) -> Ratio {
        Ratio::new(self.0 * other.1 + other.0 * self.1, self.1 * other.1)
    }
    fn complement(self) -> Ratio {
        Ratio::new(self.1 - self.0, self.1)
    }
}

/// The policy chain is `numgen random mod (n-i) 0 goto e_i` … `goto e_{n-1}`, and — read back
/// from the rendered rules, each `mod K 0` rule firing with 1/K of what reaches it — every
/// endpoint gets exactly 1/n of new connections, for n = 1..16.
#[test]
fn policy_chain_spreads_uniformly() {
    for n in 1..=16usize {
        let table = world_with_endpoints(n);
        let port = &table.ports[0];
        let text = ruleset(&table);
        let rules = chain_rules(&text, &policy_chain("service", &port.id));
        assert_eq!(rules.len(), n, "n={n}: {rules:?}");

        let mut reach = Ratio::new(1, 1); // probability that a packet gets to this rule
        let mut total = Ratio::new(0, 1);
        for (i, (rule, endpoint)) in rules.iter().zip(&port.cluster_endpoints).enumerate() {
            let target = endpoint_chain(&port.id, endpoint);
            let fires = if i + 1 < n {
                let expected = format!("numgen random mod {} 0 goto {target}", n - i);
                assert_eq!(*rule, expected, "n={n} rule {i}");
                let k: u128 = rule
                    .strip_prefix("numgen random mod ")
                    .and_then(|r| r.split(' ').next())
                    .and_then(|k| k.parse().ok())
                    .expect("modulus");
                Ratio::new(1, k)
            } else {
                assert_eq!(
                    *rule,
                    format!("goto {target}"),
                    "n={n}: the last rule is unconditional"
                );
                Ratio::new(1, 1)
            };
            let chosen = reach.mul(fires);
            assert_eq!(chosen, Ratio::new(1, n as u128), "n={n}: endpoint {i}");
            total = total.add(chosen);
            reach = reach.mul(fires.complement());
        }
        assert_eq!(total, Ratio::new(1, 1), "n={n}");
        assert_eq!(reach, Ratio::new(0, 1), "n={n}: nothing falls through");
    }
}

/// nft 1.0.6 spends superlinear userspace time on anonymous sets and maps (service-proxy.md
/// "Measured on this machine"): rules must not carry `{ … }`. Only named sets/maps do.
#[test]
fn rules_use_no_anonymous_sets_or_maps() {
    let text = ruleset(&small_world());
    for line in text.lines().filter(|l| l.contains('{') || l.contains('}')) {
        let l = line.trim();
        let declaration = l == "}"
            || l == "elements = {"
            || (l.ends_with(" {")
                && ["table ", "chain ", "set ", "map "]
                    .iter()
                    .any(|p| l.starts_with(p)))
            // `update @set { ip saddr }` is a set update, not an anonymous set; a firewall
            // chain's source ranges are the one deliberate anonymous set (small, per Service).
            || line.trim_start().starts_with("update @")
            || line.contains("drop comment \"loadBalancerSourceRanges\"");
        assert!(declaration, "anonymous set or map in a rule: {line}");
    }
}

/// The up-front capacity covers the text (no reallocation while rendering) without holding much
/// more than it: checked on the small world and on 300 Services × 10 endpoints.
#[test]
fn estimated_len_bounds_the_text() {
    let services: Vec<_> = (0..300)
        .map(|i| {
            mk_service("bench", &format!("svc-{i}"))
                .cluster_ip(&format!("198.18.{}.{}", i / 250, i % 250 + 1))
                .port("http", 80)
                .build()
        })
        .collect();
    let slices: Vec<_> = (0..300)
        .map(|i| {
            let mut slice =
                mk_slice("bench", &format!("svc-{i}-abc"), &format!("svc-{i}")).port("http", 8080);
            for e in 0..10 {
                slice = slice.ready(
                    &format!("198.19.{}.{}", i / 25, (i % 25) * 10 + e + 1),
                    "node-b",
                );
            }
            slice.build()
        })
        .collect();
    let (big, skipped) = ServiceTable::build(&services, &slices, "node-a");
    assert!(skipped.is_empty(), "{skipped:?}");
    for (name, table) in [("small world", small_world()), ("300 x 10", big)] {
        let text = transaction(&table);
        let estimate = estimated_len(&table);
        assert!(
            estimate >= text.len(),
            "{name}: estimate {estimate} < {}",
            text.len()
        );
        if table.ports.len() > 100 {
            assert!(
                estimate <= text.len() * 5 / 4,
                "{name}: estimate {estimate} is far above {}",
                text.len()
            );
        }
    }
}

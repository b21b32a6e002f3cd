//! Golden-file tests: `src/render/golden/<name>.nft` holds the expected `table ip drawbridge {…}`.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p node-programmer render::` and review the diff.
//! The integration test `tests/netns.rs` loads the same worlds into a real kernel.

use std::path::PathBuf;

use super::*;
use crate::model::ServiceTable;
use crate::model::tests::{mk_service, mk_slice};

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/render/golden")
        .join(format!("{name}.nft"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("golden dir")).expect("create golden dir");
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b);
        panic!(
            "{} differs from the rendered text (first differing line: {:?}); rerun with UPDATE_GOLDEN=1 \
             if the change is intended.\n--- rendered ---\n{actual}",
            path.display(),
            first.map(|l| l + 1)
        );
    }
}

/// The small world of the end-to-end slice, as seen from `node-a`:
/// - `demo/web`: ClusterIP + NodePort 30080 + LB IP 203.0.113.10 + externalIP 198.51.100.100,
///   eTP=Cluster, two Ready endpoints (one per node) and one not-ready;
/// - `demo/local`: LoadBalancer with eTP=Local, one endpoint here and one on node-b;
/// - `demo/local-elsewhere`: eTP=Local LoadBalancer whose only endpoint is on node-b (DROP external);
/// - `demo/empty`: LoadBalancer without endpoints (REJECT everywhere);
/// - `demo/dns`: UDP + TCP ports of the same number, matched by port name.
pub(crate) fn small_world() -> ServiceTable {
    let services = [
        mk_service("demo", "web")
            .cluster_ip("198.18.0.10")
            .port("http", 80)
            .node_port(30080)
            .lb_ip("203.0.113.10")
            .external_ip("198.51.100.100")
            .build(),
        mk_service("demo", "local")
            .cluster_ip("198.18.0.11")
            .port("http", 80)
            .node_port(30081)
            .lb_ip("203.0.113.11")
            .etp_local()
            .build(),
        mk_service("demo", "local-elsewhere")
            .cluster_ip("198.18.0.12")
            .port("http", 80)
            .node_port(30082)
            .lb_ip("203.0.113.12")
            .etp_local()
            .build(),
        mk_service("demo", "empty")
            .cluster_ip("198.18.0.20")
            .port("http", 80)
            .node_port(30090)
            .lb_ip("203.0.113.20")
            .build(),
        mk_service("demo", "dns")
            .cluster_ip("198.18.0.53")
            .port_proto("dns", 53, "UDP")
            .port_proto("dns-tcp", 53, "TCP")
            .build(),
    ];
    let slices = [
        mk_slice("demo", "web-abc", "web")
            .port("http", 8080)
            .ready("192.0.2.10", "node-a")
            .ready("192.0.2.9", "node-b")
            .not_ready("192.0.2.11", "node-a")
            .build(),
        mk_slice("demo", "local-abc", "local")
            .port("http", 8080)
            .ready("192.0.2.20", "node-a")
            .ready("192.0.2.21", "node-b")
            .build(),
        mk_slice("demo", "local-elsewhere-abc", "local-elsewhere")
            .port("http", 8080)
            .ready("192.0.2.30", "node-b")
            .build(),
        mk_slice("demo", "dns-abc", "dns")
            .port_proto("dns", 1053, "UDP")
            .port_proto("dns-tcp", 1053, "TCP")
            .ready("192.0.2.53", "node-b")
            .build(),
    ];
    let (table, skipped) = ServiceTable::build(&services, &slices, "node-a");
    assert!(skipped.is_empty(), "{skipped:?}");
    table
}

#[test]
fn golden_empty() {
    golden("empty", &ruleset(&ServiceTable::default()));
}

#[test]
fn golden_small_world() {
    golden("small-world", &ruleset(&small_world()));
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

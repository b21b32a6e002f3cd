//! `Kind::L2Announcement` in both source implementations: manifest parsing (typed, cluster-scoped,
//! namespace dropped), the standalone store following an edit, and the Kubernetes watcher listing
//! from the API double.

use std::time::Duration;

use drawbridge_api_double::{ApiDouble, ResourceType};
use drawbridge_resources::source::manifests::parse_manifests;
use drawbridge_resources::source::{self, Kind, ObjectKey, SourceArgs, kubernetes};
use serde_json::json;

const L2: &str = "apiVersion: drawbridge.dev/v1alpha1\nkind: L2Announcement\nmetadata: {name: lab, namespace: wrong}\nspec:\n  ipAddressPools: [lab]\n  nodeSelectors:\n  - matchLabels: {drawbridge.dev/announcer: \"true\"}\n  interfaces: [eth0]\n";

#[test]
fn kind_metadata_is_spelled_as_the_crd() {
    assert_eq!(
        Kind::from_type("drawbridge.dev/v1alpha1", "L2Announcement"),
        Some(Kind::L2Announcement)
    );
    assert_eq!(Kind::L2Announcement.plural(), "l2announcements");
    assert!(!Kind::L2Announcement.namespaced());
    assert!(Kind::ALL.contains(&Kind::L2Announcement));
}

#[test]
fn manifest_parses_as_a_cluster_scoped_object() {
    let (objects, problems) = parse_manifests(L2, &Kind::ALL).expect("valid YAML");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(objects.len(), 1);
    let (key, object) = &objects[0];
    assert_eq!(key, &ObjectKey::cluster(Kind::L2Announcement, "lab"));
    assert!(
        object["metadata"].get("namespace").is_none(),
        "cluster-scoped objects lose a namespace"
    );
    let typed: drawbridge_resources::crd_l2::L2Announcement =
        serde_json::from_value(object.clone()).expect("typed");
    assert_eq!(typed.spec.ip_address_pools, ["lab"]);
    assert_eq!(typed.spec.interfaces, ["eth0"]);
    assert_eq!(
        typed.spec.node_selectors[0].match_labels["drawbridge.dev/announcer"],
        "true"
    );
    // Not asked for: not read.
    let (objects, _) = parse_manifests(L2, &[Kind::Service]).expect("valid YAML");
    assert!(objects.is_empty());
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn standalone_store_loads_and_follows_edits() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("l2.yaml"), L2).expect("write");
    let args = SourceArgs {
        manifests: Some(dir.path().to_path_buf()),
        state_dir: None,
    };
    let source = source::start(&args, &[Kind::L2Announcement])
        .await
        .expect("source");
    tokio::time::timeout(Duration::from_secs(10), source.resources.wait_synced())
        .await
        .expect("synced");
    let store = source.resources.l2_announcements.clone();
    assert_eq!(store.state().len(), 1);
    assert_eq!(store.state()[0].spec.ip_address_pools, ["lab"]);

    std::fs::write(
        dir.path().join("l2.yaml"),
        L2.replace("ipAddressPools: [lab]", "ipAddressPools: [other]"),
    )
    .expect("rewrite");
    eventually("edit reaches the store", || {
        store
            .state()
            .first()
            .is_some_and(|a| a.spec.ip_address_pools == ["other"])
    })
    .await;
    std::fs::remove_file(dir.path().join("l2.yaml")).expect("remove");
    eventually("delete reaches the store", || store.state().is_empty()).await;
}

#[tokio::test]
async fn kubernetes_source_lists_and_watches_l2_announcements() {
    let double = ApiDouble::start().await.expect("double");
    double.register(ResourceType {
        api_version: "drawbridge.dev/v1alpha1".into(),
        kind: "L2Announcement".into(),
        plural: "l2announcements".into(),
        namespaced: false,
        status_subresource: false,
    });
    double.create(json!({
        "apiVersion": "drawbridge.dev/v1alpha1", "kind": "L2Announcement",
        "metadata": {"name": "lab"}, "spec": {"ipAddressPools": ["lab"]},
    }));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = kube::Config::new(double.url().parse().expect("url"));
    let client = kube::Client::try_from(config).expect("client");
    let source = kubernetes::start(client, &[Kind::L2Announcement]);
    tokio::time::timeout(Duration::from_secs(10), source.resources.wait_synced())
        .await
        .expect("initial list within 10 s");
    let store = source.resources.l2_announcements.clone();
    assert_eq!(store.state().len(), 1);
    double.create(json!({
        "apiVersion": "drawbridge.dev/v1alpha1", "kind": "L2Announcement",
        "metadata": {"name": "second"}, "spec": {},
    }));
    eventually("watch delivers the second object", || {
        store.state().len() == 2
    })
    .await;
    let asked: Vec<String> = double
        .requests()
        .iter()
        .map(|q| format!("{} {}", q.verb, q.resource.clone().unwrap_or_default()))
        .collect();
    assert!(
        asked.contains(&"list l2announcements".to_string()),
        "{asked:?}"
    );
    assert!(
        asked.contains(&"watch l2announcements".to_string()),
        "{asked:?}"
    );
}

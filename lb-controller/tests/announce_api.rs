//! L2 announcement wired into the controller loop, through a real HTTP API (the API double): two
//! Ready Nodes and an L2Announcement → the Service gets `drawbridge.dev/announcing-node`; the chosen
//! Node turns NotReady → the annotation moves; a replica that is not the leader writes nothing;
//! `spec.interfaces` set → `drawbridge.dev/announcing-interfaces` written (and reported), lifted →
//! removed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drawbridge_api_double::{ApiDouble, ResourceType};
use drawbridge_resources::Kind;
use drawbridge_resources::source::kubernetes;
use kube::{Client, Config};
use lb_controller::announce::{
    ANNOTATION_ANNOUNCING_CANDIDATES, ANNOTATION_ANNOUNCING_INTERFACES, ANNOTATION_ANNOUNCING_NODE,
    KubeAnnotationWriter, REASON_ANNOUNCING_INTERFACES_CHANGED, REASON_ANNOUNCING_NODE_CHANGED,
};
use lb_controller::claim_store::KubeClaims;
use lb_controller::controller::{self, Claims, Namespaces, Settings};
use lb_controller::leader::{Leadership, ManualLeadership};
use lb_controller::observe::Observe;
use serde_json::{Value, json};

const V1A1: &str = "drawbridge.dev/v1alpha1";

fn client_for(addr: SocketAddr) -> Client {
    let config = Config::new(format!("http://{addr}").parse().expect("valid URL"));
    Client::try_from(config).expect("client")
}

fn node(name: &str, ready: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
}

fn announcer(double: &ApiDouble) -> Option<String> {
    let svc = double.get("v1", "Service", Some("default"), "web")?;
    svc["metadata"]["annotations"][ANNOTATION_ANNOUNCING_NODE]
        .as_str()
        .map(str::to_string)
}

fn candidates(double: &ApiDouble) -> Option<String> {
    let svc = double.get("v1", "Service", Some("default"), "web")?;
    svc["metadata"]["annotations"][ANNOTATION_ANNOUNCING_CANDIDATES]
        .as_str()
        .map(str::to_string)
}

fn interfaces(double: &ApiDouble) -> Option<String> {
    let svc = double.get("v1", "Service", Some("default"), "web")?;
    svc["metadata"]["annotations"][ANNOTATION_ANNOUNCING_INTERFACES]
        .as_str()
        .map(str::to_string)
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcing_node_is_elected_moves_on_not_ready_and_waits_for_the_lease() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let double = ApiDouble::start().await.expect("double");
    double.register(ResourceType {
        api_version: V1A1.into(),
        kind: "L2Announcement".into(),
        plural: "l2announcements".into(),
        namespaced: false,
        status_subresource: false,
    });
    double.create(
        json!({"apiVersion": V1A1, "kind": "IPAddressPool", "metadata": {"name": "lab"},
                         "spec": {"addresses": ["203.0.113.0/24"], "avoidBuggyIPs": true}}),
    );
    double.create(
        json!({"apiVersion": V1A1, "kind": "L2Announcement", "metadata": {"name": "lab"},
                         "spec": {"ipAddressPools": ["lab"]}}),
    );
    double.create(node("node-a", true));
    double.create(node("node-b", true));
    double.create(json!({"apiVersion": "v1", "kind": "Service",
                         "metadata": {"name": "web", "namespace": "default"},
                         "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}}));

    let client = client_for(double.addr());
    let source = kubernetes::start(
        client.clone(),
        &[
            Kind::Service,
            Kind::IPAddressPool,
            Kind::Node,
            Kind::EndpointSlice,
            Kind::L2Announcement,
        ],
    );
    let leadership = ManualLeadership::new(true);
    let (observe, events) = Observe::test();
    let task = tokio::spawn(controller::run_announcing(
        source.resources,
        source.status,
        Claims::new(Arc::new(KubeClaims::new(client.clone()))),
        Namespaces::Unknown,
        Settings { class_less: true },
        leadership.subscribe(),
        observe,
        Some(Arc::new(KubeAnnotationWriter::new(client))),
    ));

    wait_for("an announcing node", || announcer(&double).is_some()).await;
    let first = announcer(&double).expect("annotated");
    assert!(first == "node-a" || first == "node-b", "{first}");
    let other = if first == "node-a" {
        "node-b"
    } else {
        "node-a"
    };
    // The whole ranking, announcer first, in the same write.
    assert_eq!(
        candidates(&double).as_deref(),
        Some(format!("{first},{other}").as_str())
    );
    let svc = double
        .get("v1", "Service", Some("default"), "web")
        .expect("web");
    assert_eq!(
        svc["status"]["loadBalancer"]["ingress"][0]["ip"], "203.0.113.1",
        "{svc}"
    );
    // The annotation went through a metadata merge patch on the Service, not /status.
    assert!(
        double.requests().iter().any(|q| q.verb == "patch"
            && q.resource.as_deref() == Some("services")
            && q.subresource.is_none()),
        "no metadata patch of services recorded"
    );

    // The elected node goes NotReady: the other one takes over.
    double.update(node(&first, false));
    wait_for("the annotation moves to the other node", || {
        announcer(&double).as_deref() == Some(other)
    })
    .await;
    assert_eq!(
        candidates(&double).as_deref(),
        Some(other),
        "a NotReady node leaves the candidates (the API server is the ground truth)"
    );
    let changed: Vec<String> = events
        .events()
        .into_iter()
        .filter(|e| e.reason == REASON_ANNOUNCING_NODE_CHANGED)
        .map(|e| e.note)
        .collect();
    assert!(
        changed.contains(&format!("{first} -> {other}")),
        "{changed:?}"
    );

    // Not the leader: the first node coming back (it wins the hash) changes nothing...
    leadership.set(false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    double.update(node(&first, true));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(announcer(&double).as_deref(), Some(other), "standby wrote");
    // ...until this replica holds the lease again.
    leadership.set(true);
    wait_for("the annotation moves back to the winner", || {
        announcer(&double).as_deref() == Some(first.as_str())
    })
    .await;

    // spec.interfaces set: published in the same kind of merge patch, announcer unchanged, and
    // reported (a human changed where the IP is answered).
    assert_eq!(
        interfaces(&double),
        None,
        "no interfaces listed: no annotation"
    );
    double.update(
        json!({"apiVersion": V1A1, "kind": "L2Announcement", "metadata": {"name": "lab"},
               "spec": {"ipAddressPools": ["lab"], "interfaces": ["eth1"]}}),
    );
    wait_for("the interfaces annotation", || {
        interfaces(&double).as_deref() == Some("eth1")
    })
    .await;
    assert_eq!(announcer(&double).as_deref(), Some(first.as_str()));
    let reported: Vec<String> = events
        .events()
        .into_iter()
        .filter(|e| e.reason == REASON_ANNOUNCING_INTERFACES_CHANGED)
        .map(|e| e.note)
        .collect();
    assert_eq!(reported, vec!["<all> -> eth1".to_string()]);
    // Lifted again: the merge patch's null removes it.
    double.update(
        json!({"apiVersion": V1A1, "kind": "L2Announcement", "metadata": {"name": "lab"},
               "spec": {"ipAddressPools": ["lab"]}}),
    );
    wait_for("the interfaces annotation to go", || {
        interfaces(&double).is_none()
    })
    .await;
    assert_eq!(announcer(&double).as_deref(), Some(first.as_str()));
    task.abort();
}

/// Without the L2Announcement CRD (the API answers 404 for it) allocation still works: only the
/// announcement pass waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_l2_announcement_crd_does_not_stop_allocation() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let double = ApiDouble::start().await.expect("double");
    double.create(
        json!({"apiVersion": V1A1, "kind": "IPAddressPool", "metadata": {"name": "lab"},
                         "spec": {"addresses": ["203.0.113.0/24"], "avoidBuggyIPs": true}}),
    );
    double.create(node("node-a", true));
    double.create(json!({"apiVersion": "v1", "kind": "Service",
                         "metadata": {"name": "web", "namespace": "default"},
                         "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}}));
    let client = client_for(double.addr());
    let source = kubernetes::start(
        client.clone(),
        &[
            Kind::Service,
            Kind::IPAddressPool,
            Kind::Node,
            Kind::EndpointSlice,
            Kind::L2Announcement,
        ],
    );
    let leadership = ManualLeadership::new(true);
    let task = tokio::spawn(controller::run_announcing(
        source.resources,
        source.status,
        Claims::new(Arc::new(KubeClaims::new(client.clone()))),
        Namespaces::Unknown,
        Settings { class_less: true },
        leadership.subscribe(),
        Observe::test().0,
        Some(Arc::new(KubeAnnotationWriter::new(client))),
    ));
    wait_for("web allocated", || {
        double
            .get("v1", "Service", Some("default"), "web")
            .is_some_and(|s| s["status"]["loadBalancer"]["ingress"][0]["ip"] == "203.0.113.1")
    })
    .await;
    assert_eq!(
        announcer(&double),
        None,
        "announced without any L2Announcement"
    );
    task.abort();
}

//! The Kubernetes Event recorder over real HTTP against the API double: one events.k8s.io/v1
//! Event per change, with the fields `kubectl describe` matches on.

use drawbridge_api_double::ApiDouble;
use drawbridge_resources::events::{Event, KubeEventRecorder, LastEvents};
use drawbridge_resources::{Kind, ObjectKey};

#[tokio::test]
async fn publishes_events_k8s_io_v1_events_once_per_change() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let double = ApiDouble::start().await.expect("api double");
    let config = kube::Config::new(double.url().parse().expect("url"));
    let client = kube::Client::try_from(config).expect("client");
    let recorder = KubeEventRecorder::new(client);
    let mut last = LastEvents::default();

    let service = ObjectKey::namespaced(Kind::Service, "shop", "web");
    let failed = Event::warning(
        service,
        "AllocationFailed",
        "Allocate",
        "PoolExhausted: pool lab has no free address",
    )
    .with_uid(Some("uid-web".into()));
    for _ in 0..3 {
        last.publish(&recorder, failed.clone()).await;
    }

    let events = double.list("events.k8s.io/v1", "Event");
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    assert_eq!(e["metadata"]["namespace"], "shop");
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["reason"], "AllocationFailed");
    assert_eq!(e["action"], "Allocate");
    assert_eq!(e["note"], "PoolExhausted: pool lab has no free address");
    assert_eq!(e["regarding"]["kind"], "Service");
    assert_eq!(e["regarding"]["apiVersion"], "v1");
    assert_eq!(e["regarding"]["name"], "web");
    assert_eq!(e["regarding"]["uid"], "uid-web");
    let controller = e["reportingController"]
        .as_str()
        .expect("reportingController");
    assert!(controller.starts_with("drawbridge.dev/"), "{controller}");
    assert!(
        e["reportingInstance"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
}

//! The Kubernetes implementation of the resource source, over real HTTP against the API double:
//! list, watch (add, modify, delete), a watch that expires (410 Gone → relist), status patch.

use std::time::Duration;

use drawbridge_api_double::ApiDouble;
use drawbridge_resources::source::{Kind, ObjectKey, kubernetes};
use drawbridge_resources::{Resources, Source};
use serde_json::{Value, json};

fn service(name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "198.51.100.10", "ports": [{"name": "http", "port": port}]},
    })
}

fn secret(name: &str, type_: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "default"}, "type": type_})
}

async fn start(double: &ApiDouble, kinds: &[Kind]) -> Source {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = kube::Config::new(double.url().parse().expect("url"));
    let client = kube::Client::try_from(config).expect("client");
    let source = kubernetes::start(client, kinds);
    tokio::time::timeout(Duration::from_secs(10), source.resources.wait_synced())
        .await
        .expect("initial list within 10 s");
    source
}

/// Polls until `f` holds, at most 10 s.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn port(r: &Resources, name: &str) -> Option<i32> {
    let svc = r
        .services
        .state()
        .into_iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))?;
    svc.spec.as_ref()?.ports.as_ref()?.first().map(|p| p.port)
}

#[tokio::test]
async fn lists_then_follows_adds_modifies_and_deletes() {
    let double = ApiDouble::start().await.expect("double");
    double.create(service("web", 80));
    double.create(secret("tls", "kubernetes.io/tls"));
    double.create(secret("opaque", "Opaque"));
    let source = start(&double, &[Kind::Service, Kind::Secret]).await;
    let mut r = source.resources.clone();
    assert_eq!(port(&r, "web"), Some(80), "listed");
    let secrets: Vec<String> = r
        .secrets
        .state()
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    assert_eq!(
        secrets,
        ["tls"],
        "only kubernetes.io/tls Secrets are watched"
    );
    assert!(
        r.endpoint_slices.state().is_empty(),
        "kinds not asked for stay empty"
    );

    double.create(service("api", 81));
    eventually("ADDED", || port(&r, "api") == Some(81)).await;
    assert!(
        tokio::time::timeout(Duration::from_secs(1), r.changed())
            .await
            .expect("a change tick")
    );
    double.update(service("web", 8080));
    eventually("MODIFIED", || port(&r, "web") == Some(8080)).await;
    double.delete("v1", "Service", Some("default"), "api");
    eventually("DELETED", || port(&r, "api").is_none()).await;

    // The watch history expires while the watch is cut: the watcher relists and the store is
    // replaced (the object deleted meanwhile drops out).
    double.expire_history();
    double.close_watches();
    double.delete("v1", "Service", Some("default"), "web");
    double.create(service("late", 82));
    eventually("relist after 410", || {
        port(&r, "late") == Some(82) && port(&r, "web").is_none()
    })
    .await;

    let watched: Vec<String> = double
        .requests()
        .iter()
        .map(|q| format!("{} {}", q.verb, q.resource.clone().unwrap_or_default()))
        .collect();
    assert!(
        watched.contains(&"list services".to_string()),
        "{watched:?}"
    );
    assert!(
        watched.contains(&"watch services".to_string()),
        "{watched:?}"
    );
}

#[tokio::test]
async fn patches_status_and_sees_its_own_write() {
    let double = ApiDouble::start().await.expect("double");
    double.create(service("web", 80));
    double.create(json!({
        "apiVersion": "drawbridge.dev/v1alpha1", "kind": "IPAddressPool",
        "metadata": {"name": "lab"}, "spec": {"addresses": ["203.0.113.0/24"]},
    }));
    let source = start(&double, &[Kind::Service, Kind::IPAddressPool]).await;
    let pools = source.resources.pools.state();
    assert_eq!(pools.len(), 1);
    assert!(pools[0].spec.auto_assign, "autoAssign defaults to true");

    let key = ObjectKey::namespaced(Kind::Service, "default", "web");
    let status = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.1", "ipMode": "VIP"}]}});
    source
        .status
        .patch_status(key, status)
        .await
        .expect("patch");
    let stored = double
        .get("v1", "Service", Some("default"), "web")
        .expect("exists");
    assert_eq!(
        stored["status"]["loadBalancer"]["ingress"][0]["ip"],
        "203.0.113.1"
    );
    let patch = double
        .requests()
        .into_iter()
        .find(|q| q.verb == "patch")
        .expect("a patch request");
    assert_eq!(patch.subresource.as_deref(), Some("status"));
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );

    let r = source.resources.clone();
    eventually("status arrives through the watch", || {
        r.services
            .state()
            .first()
            .and_then(|s| s.status.clone())
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .is_some_and(|i| i[0].ip.as_deref() == Some("203.0.113.1"))
    })
    .await;
}

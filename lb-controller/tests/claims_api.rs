//! IPAddressClaims through a real HTTP API (the API double): claims are listed, honoured, created
//! before status and deleted when released.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drawbridge_api_double::ApiDouble;
use drawbridge_resources::Kind;
use drawbridge_resources::source::kubernetes;
use kube::{Client, Config};
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

fn mk_service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
           "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}})
}

fn ip_of(double: &ApiDouble, name: &str) -> Option<String> {
    let svc = double.get("v1", "Service", Some("default"), name)?;
    svc["status"]["loadBalancer"]["ingress"][0]["ip"]
        .as_str()
        .map(str::to_string)
}

/// claim name → serviceRef name.
fn claims(double: &ApiDouble) -> Vec<(String, String)> {
    double
        .list(V1A1, "IPAddressClaim")
        .iter()
        .map(|c| {
            (
                c["metadata"]["name"].as_str().unwrap_or("").to_string(),
                c["spec"]["serviceRef"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_honoured_created_before_status_and_released() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let double = ApiDouble::start().await.expect("double");
    double.create(
        json!({"apiVersion": V1A1, "kind": "IPAddressPool", "metadata": {"name": "lab"},
                         "spec": {"addresses": ["203.0.113.0/24"], "avoidBuggyIPs": true}}),
    );
    // "owner" holds 203.0.113.1 by claim only (another replica died before writing its status).
    let owner = double.create(mk_service("owner"));
    let uid = owner["metadata"]["uid"].as_str().expect("uid").to_string();
    double.create(json!({"apiVersion": V1A1, "kind": "IPAddressClaim", "metadata": {"name": "203.0.113.1"},
                         "spec": {"serviceRef": {"namespace": "default", "name": "owner", "uid": uid},
                                  "pool": "lab"}}));
    // "a-web" sorts first (same creation second, name order): without the claim it would get .1.
    double.create(mk_service("a-web"));

    let client = client_for(double.addr());
    let source = kubernetes::start(client.clone(), &[Kind::Service, Kind::IPAddressPool]);
    let leadership = ManualLeadership::new(true);
    let task = tokio::spawn(controller::run_with(
        source.resources,
        source.status,
        Claims::new(Arc::new(KubeClaims::new(client))),
        Namespaces::Unknown,
        Settings { class_less: true },
        leadership.subscribe(),
        Observe::test().0,
    ));

    wait_for("both Services allocated", || {
        ip_of(&double, "owner").is_some() && ip_of(&double, "a-web").is_some()
    })
    .await;
    assert_eq!(ip_of(&double, "owner").as_deref(), Some("203.0.113.1"));
    assert_eq!(ip_of(&double, "a-web").as_deref(), Some("203.0.113.2"));
    assert_eq!(
        claims(&double),
        [
            ("203.0.113.1".to_string(), "owner".to_string()),
            ("203.0.113.2".to_string(), "a-web".to_string())
        ]
    );
    let pool = double
        .get(V1A1, "IPAddressPool", None, "lab")
        .expect("pool");
    assert_eq!(pool["status"]["assignedIPv4"], 2, "{pool}");

    // Deleting the Service releases its claim; its address becomes free for the next Service.
    double.delete("v1", "Service", Some("default"), "a-web");
    wait_for("claim 203.0.113.2 released", || claims(&double).len() == 1).await;
    double.create(mk_service("z-next"));
    wait_for("z-next allocated", || ip_of(&double, "z-next").is_some()).await;
    assert_eq!(ip_of(&double, "z-next").as_deref(), Some("203.0.113.2"));
    task.abort();
}

//! Leader election over real HTTP against the API double: two lb-controller replicas, each on its
//! own tokio runtime (killing a replica = dropping its runtime: no goodbye, no Lease release) and
//! its own labelled listener of the double (so every API call is attributed to its replica).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use drawbridge_api_double::ApiDouble;
use drawbridge_resources::Kind;
use drawbridge_resources::observe::Health;
use drawbridge_resources::source::kubernetes;
use drawbridge_resources::status::RecordingStatusWriter;
use kube::{Client, Config};
use lb_controller::controller::{self, Settings};
use lb_controller::leader::{
    LEASE_REQUEST_TIMEOUT, Leadership, LeaseElection, LeaseSettings, ManualLeadership,
};
use lb_controller::observe::{Metrics, Observe};
use serde_json::{Value, json};

const LEASE: &str = "drawbridge-lb-controller";
const NAMESPACE: &str = "drawbridge-system";
/// "A new leader takes over within a few seconds."
const TAKEOVER_LIMIT: Duration = Duration::from_secs(8);

fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn mk_pool() -> Value {
    json!({"apiVersion": "drawbridge.dev/v1alpha1", "kind": "IPAddressPool", "metadata": {"name": "lab"},
           "spec": {"addresses": ["203.0.113.0/24"], "avoidBuggyIPs": true}})
}

fn mk_service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
           "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}})
}

fn client_for(addr: SocketAddr, timeout: Option<Duration>) -> Client {
    let mut config = Config::new(format!("http://{addr}").parse().expect("valid URL"));
    if timeout.is_some() {
        config.connect_timeout = timeout;
        config.read_timeout = timeout;
        config.write_timeout = timeout;
    }
    Client::try_from(config).expect("client")
}

/// One replica: source + election + controller on a runtime of its own.
struct Replica {
    name: String,
    runtime: Option<tokio::runtime::Runtime>,
    election: Option<LeaseElection>,
}

impl Replica {
    async fn start(double: &ApiDouble, name: &str) -> Replica {
        let addr = double
            .listen_as(name, SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("listener");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let identity = name.to_string();
        let election = runtime
            .spawn(async move {
                let source = kubernetes::start(
                    client_for(addr, None),
                    &[Kind::Service, Kind::IPAddressPool],
                );
                let settings = LeaseSettings {
                    name: LEASE.into(),
                    namespace: NAMESPACE.into(),
                    identity,
                };
                let election =
                    LeaseElection::start(client_for(addr, Some(LEASE_REQUEST_TIMEOUT)), settings);
                let gate = election.subscribe();
                let observe = Observe::new(Metrics::default(), source.events, Health::default());
                let settings = Settings { class_less: true };
                tokio::spawn(controller::run(
                    source.resources,
                    source.status,
                    settings,
                    gate,
                    observe,
                ));
                election
            })
            .await
            .expect("replica starts");
        Replica {
            name: name.to_string(),
            runtime: Some(runtime),
            election: Some(election),
        }
    }

    /// A crash: every task of the replica stops at once, the Lease is not released.
    fn kill(&mut self) {
        drop(self.election.take());
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// A clean stop (SIGTERM): step down (release the Lease), then stop.
    async fn stop(&mut self) {
        if let (Some(election), Some(runtime)) = (self.election.take(), self.runtime.as_ref()) {
            runtime
                .spawn(election.step_down())
                .await
                .expect("step down");
        }
        self.kill();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

fn lb_ip(double: &ApiDouble, name: &str) -> Option<String> {
    let svc = double.get("v1", "Service", Some("default"), name)?;
    svc["status"]["loadBalancer"]["ingress"][0]["ip"]
        .as_str()
        .map(str::to_string)
}

async fn wait_lb_ip(double: &ApiDouble, name: &str, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(ip) = lb_ip(double, name) {
            return Some(ip);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn holder(double: &ApiDouble) -> Option<String> {
    let lease = double.get("coordination.k8s.io/v1", "Lease", Some(NAMESPACE), LEASE)?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_string)
}

/// Labels of the listeners that carried a Service status write.
fn status_writers(double: &ApiDouble) -> Vec<String> {
    let mut writers: Vec<String> = double
        .requests()
        .into_iter()
        .filter(|r| {
            r.resource.as_deref() == Some("services") && r.subresource.as_deref() == Some("status")
        })
        .filter(|r| matches!(r.verb.as_str(), "patch" | "update"))
        .filter_map(|r| r.client)
        .collect();
    writers.sort();
    writers.dedup();
    writers
}

async fn two_replicas() -> (ApiDouble, Replica, Replica, String) {
    install_crypto_provider();
    let double = ApiDouble::start().await.expect("double");
    double.create(mk_pool());
    double.create(mk_service("web"));
    let a = Replica::start(&double, "replica-a").await;
    let b = Replica::start(&double, "replica-b").await;
    let ip = wait_lb_ip(&double, "web", Duration::from_secs(10))
        .await
        .expect("web allocated by the leader");
    (double, a, b, ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_holder_writes_and_a_follower_takes_over_after_a_crash() {
    let (double, mut a, mut b, web_ip) = two_replicas().await;
    let leader = holder(&double).expect("a holder");
    assert_eq!(
        status_writers(&double),
        vec![leader.clone()],
        "only the Lease holder wrote status"
    );

    double.create(mk_service("web2"));
    wait_lb_ip(&double, "web2", Duration::from_secs(5))
        .await
        .expect("web2 allocated");
    // Let a few renewals pass with both replicas watching: still one writer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(status_writers(&double), vec![leader.clone()]);

    let (dead, survivor) = if leader == a.name {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    let killed = Instant::now();
    dead.kill();
    double.create(mk_service("web3"));
    let ip = wait_lb_ip(&double, "web3", TAKEOVER_LIMIT).await;
    let takeover = killed.elapsed();
    println!(
        "takeover after killing the leader: {:.2} s",
        takeover.as_secs_f64()
    );
    assert!(
        ip.is_some(),
        "the follower allocated web3 within {TAKEOVER_LIMIT:?}"
    );
    assert_eq!(holder(&double).as_deref(), Some(survivor.name.as_str()));
    assert_eq!(status_writers(&double), {
        let mut both = vec![leader.clone(), survivor.name.clone()];
        both.sort();
        both
    });
    assert_eq!(
        lb_ip(&double, "web").as_deref(),
        Some(web_ip.as_str()),
        "allocations are kept, never reshuffled"
    );
}

/// Two replicas that campaign for a free Lease at the same instant are never both leaders, not
/// even for a moment: kube-lease-manager locks with a server-side apply of `spec.holderIdentity`,
/// and the API server answers the second applier `409 Conflict`. (Before the double modelled
/// apply conflicts, both won now and then, and a k8s-mode CI run saw both write status.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_campaigning_at_once_never_both_lead() {
    /// Without apply conflicts, about one round in ten ended with two leaders (the earlier applier
    /// read the Lease back before the later one overwrote it); 40 rounds caught it every time.
    const ROUNDS: usize = 40;
    /// Both first lock attempts take milliseconds; a double leadership shows at once.
    const WINDOW: Duration = Duration::from_millis(500);
    install_crypto_provider();
    for round in 0..ROUNDS {
        let double = ApiDouble::start().await.expect("double");
        // A free Lease (as a step-down leaves it): both replicas go straight to the lock.
        double.create(
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                             "metadata": {"name": LEASE, "namespace": NAMESPACE}, "spec": {}}),
        );
        let mut clients = Vec::new();
        for name in ["replica-a", "replica-b"] {
            let addr = double
                .listen_as(name, SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .expect("listener");
            // Clients first: building one takes long enough to hand the other replica a head start.
            clients.push((name, client_for(addr, Some(LEASE_REQUEST_TIMEOUT))));
        }
        let mut elections = Vec::new();
        for (name, client) in clients {
            let settings = LeaseSettings {
                name: LEASE.into(),
                namespace: NAMESPACE.into(),
                identity: name.into(),
            };
            elections.push(LeaseElection::start(client, settings));
        }
        let (mut a, mut b) = (elections[0].subscribe(), elections[1].subscribe());
        let deadline = tokio::time::Instant::now() + WINDOW;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                changed = a.changed() => changed.expect("election a runs"),
                changed = b.changed() => changed.expect("election b runs"),
            }
            assert!(
                !(*a.borrow() && *b.borrow()),
                "round {round}: both replicas led at once (Lease holder now {:?})",
                holder(&double)
            );
        }
        let leaders: Vec<&str> = [("replica-a", *a.borrow()), ("replica-b", *b.borrow())]
            .into_iter()
            .filter_map(|(name, leads)| leads.then_some(name))
            .collect();
        assert_eq!(
            leaders
                .iter()
                .map(|l| Some(l.to_string()))
                .collect::<Vec<_>>(),
            vec![holder(&double)],
            "round {round}: exactly one replica leads, the Lease holder"
        );
        for election in elections {
            election.step_down().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_steps_down_releases_the_lease() {
    let (double, mut a, mut b, _) = two_replicas().await;
    let leader = holder(&double).expect("a holder");
    let (stopping, survivor) = if leader == a.name {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    let stopped = Instant::now();
    stopping.stop().await;
    double.create(mk_service("web2"));
    let ip = wait_lb_ip(&double, "web2", TAKEOVER_LIMIT).await;
    println!(
        "takeover after the leader stepped down: {:.2} s",
        stopped.elapsed().as_secs_f64()
    );
    assert!(ip.is_some());
    assert_eq!(holder(&double).as_deref(), Some(survivor.name.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_keeps_its_cache_warm_but_never_writes() {
    install_crypto_provider();
    let double = ApiDouble::start().await.expect("double");
    double.create(mk_pool());
    double.create(mk_service("web"));
    let source = kubernetes::start(
        client_for(double.addr(), None),
        &[Kind::Service, Kind::IPAddressPool],
    );
    let resources = source.resources.clone();
    let writer = std::sync::Arc::new(RecordingStatusWriter::default());
    let leadership = ManualLeadership::new(false);
    let task = tokio::spawn(controller::run(
        source.resources,
        writer.clone(),
        Settings { class_less: true },
        leadership.subscribe(),
        Observe::test().0,
    ));
    // Not `resources.wait_synced()`: the loop waits on it already, and kube-runtime's
    // `Store::wait_until_ready` wakes only one of several concurrent waiters (one oneshot waker).
    let deadline = Instant::now() + Duration::from_secs(5);
    while resources.services.state().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    double.create(mk_service("web2"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        resources.services.state().len(),
        2,
        "the follower's store follows the API"
    );
    assert!(writer.patches().is_empty(), "a follower writes nothing");

    leadership.set(true);
    let deadline = Instant::now() + Duration::from_secs(5);
    while writer.patches().len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The pool's status is written too (IPAddressPool "lab"); this is about the Services.
    let mut written: Vec<String> = writer
        .patches()
        .into_iter()
        .filter(|(key, _)| key.kind == Kind::Service)
        .map(|(key, _)| key.name)
        .collect();
    written.sort();
    written.dedup();
    assert_eq!(
        written,
        ["web", "web2"],
        "the new leader allocates both Services at once"
    );

    leadership.set(false);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = writer.patches().len();
    double.create(mk_service("web3"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        writer.patches().len(),
        before,
        "no writes after losing the lease"
    );

    drop(leadership);
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("the loop ends when the election is gone")
        .expect("no panic");
}

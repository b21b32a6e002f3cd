//! Standalone L2 announcement: the real `lb-controller` binary on a manifest directory + state
//! directory elects the announcing node and publishes it in the state directory, where a
//! node-programmer-like consumer (the same manifest source node-programmer uses, on the same two
//! directories) reads it.
//!
//! ```text
//!  manifests/ (pool, L2Announcement, Nodes node-a/node-b, Service web)
//!        │                                  state/services/default/web.yaml
//!        └──> lb-controller --manifests --state-dir ──> status.loadBalancer.ingress + metadata.annotations
//!                                                        │
//!        consumer: source::start(--manifests, --state-dir) <┘  (what node-programmer runs)
//! ```
//! The elected Node turns NotReady in its manifest → the annotation moves to the other Node.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drawbridge_resources::l2_interfaces;
use drawbridge_resources::source::{self, Kind, SourceArgs};
use lb_controller::announce::{
    ANNOTATION_ANNOUNCING_INTERFACES, ANNOTATION_ANNOUNCING_NODE, parse_annotation,
};

/// Kills the controller whatever happens.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node_yaml(name: &str, ready: bool) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{kubernetes.io/hostname: {name}}}}}\n\
         status: {{conditions: [{{type: Ready, status: \"{}\"}}]}}\n",
        if ready { "True" } else { "False" }
    )
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-edit");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// `(ip, annotation)` of Service web in its state file, if any.
fn state_of(state: &Path) -> (Option<String>, Option<String>) {
    let Ok(text) = std::fs::read_to_string(state.join("services/default/web.yaml")) else {
        return (None, None);
    };
    let doc: serde_json::Value = serde_yaml::from_str(&text).expect("state yaml");
    let ip = doc["status"]["loadBalancer"]["ingress"][0]["ip"]
        .as_str()
        .map(str::to_string);
    let node = doc["metadata"]["annotations"][ANNOTATION_ANNOUNCING_NODE]
        .as_str()
        .map(str::to_string);
    (ip, node)
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_mode_publishes_and_moves_the_announcing_node() {
    let root = tempfile::tempdir().expect("tempdir");
    let manifests: PathBuf = root.path().join("manifests");
    let state: PathBuf = root.path().join("state");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    std::fs::write(
        manifests.join("pool.yaml"),
        "apiVersion: drawbridge.dev/v1alpha1\nkind: IPAddressPool\nmetadata: {name: lab}\n\
         spec: {addresses: [203.0.113.10-203.0.113.20]}\n---\n\
         apiVersion: drawbridge.dev/v1alpha1\nkind: L2Announcement\nmetadata: {name: lab}\n\
         spec: {ipAddressPools: [lab]}\n",
    )
    .expect("pool");
    for node in ["node-a", "node-b"] {
        std::fs::write(
            manifests.join(format!("{node}.yaml")),
            node_yaml(node, true),
        )
        .expect("node");
    }
    std::fs::write(
        manifests.join("web.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default, uid: uid-web}\n\
         spec: {type: LoadBalancer, selector: {app: web}, ports: [{port: 80}]}\n",
    )
    .expect("svc");

    let _controller = Guard(
        Command::new(env!("CARGO_BIN_EXE_lb-controller"))
            .arg("--manifests")
            .arg(&manifests)
            .arg("--state-dir")
            .arg(&state)
            .args(["--metrics-addr", "off"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start lb-controller"),
    );

    // 1. Allocated, then announced: both in the Service's state file.
    let (ip, first) = wait_for(
        "an IP and an announcing node in the state file",
        || match state_of(&state) {
            (Some(ip), Some(node)) => Some((ip, node)),
            _ => None,
        },
    );
    assert!(ip.starts_with("203.0.113."), "{ip}");
    assert!(first == "node-a" || first == "node-b", "{first}");

    // 2. A node-programmer-like consumer on the same directories sees the annotation (and the
    //    IP it covers) through the manifest source.
    let consumer = source::start(
        &SourceArgs {
            manifests: Some(manifests.clone()),
            state_dir: Some(state.clone()),
        },
        &[Kind::Service],
    )
    .await
    .expect("consumer source");
    consumer.resources.wait_synced().await;
    let seen = |resources: &drawbridge_resources::Resources| -> Option<(String, String)> {
        let svc = resources.services.state().into_iter().next()?;
        let value = svc
            .metadata
            .annotations
            .as_ref()?
            .get(ANNOTATION_ANNOUNCING_NODE)?
            .clone();
        let ip = svc
            .status
            .as_ref()?
            .load_balancer
            .as_ref()?
            .ingress
            .as_ref()?
            .first()?
            .ip
            .clone()?;
        let by_ip = parse_annotation(&value, &[ip.parse().ok()?]);
        Some((ip, by_ip.into_values().next()?))
    };
    assert_eq!(seen(&consumer.resources), Some((ip.clone(), first.clone())));

    // 3. The elected Node turns NotReady: the announcement moves to the other one, the IP stays.
    write_atomically(
        &manifests.join(format!("{first}.yaml")),
        &node_yaml(&first, false),
    );
    let other = if first == "node-a" {
        "node-b"
    } else {
        "node-a"
    };
    wait_for("the announcement to move", || {
        (state_of(&state) == (Some(ip.clone()), Some(other.to_string()))).then_some(())
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen(&consumer.resources) != Some((ip.clone(), other.to_string())) {
        assert!(Instant::now() < deadline, "the consumer never saw the move");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 4. No Node eligible: the annotation is removed (not left pointing at a NotReady node).
    write_atomically(
        &manifests.join(format!("{other}.yaml")),
        &node_yaml(other, false),
    );
    wait_for("the annotation to be removed", || {
        (state_of(&state) == (Some(ip.clone()), None)).then_some(())
    });
}

/// `drawbridge.dev/announcing-interfaces` of Service web in its state file, if any.
fn interfaces_of(state: &Path) -> Option<String> {
    let text = std::fs::read_to_string(state.join("services/default/web.yaml")).ok()?;
    let doc: serde_json::Value = serde_yaml::from_str(&text).ok()?;
    doc["metadata"]["annotations"][ANNOTATION_ANNOUNCING_INTERFACES]
        .as_str()
        .map(str::to_string)
}

fn l2_yaml(interfaces: &str) -> String {
    format!(
        "apiVersion: drawbridge.dev/v1alpha1\nkind: L2Announcement\nmetadata: {{name: lab}}\n\
         spec: {{ipAddressPools: [lab], interfaces: {interfaces}}}\n"
    )
}

/// `L2Announcement.spec.interfaces` in standalone mode: published in the state file beside the
/// announcing node, rewritten when only the interfaces change (the announcer stays), removed when
/// the restriction is lifted; a consumer on the same directories reads it with the shared parser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_mode_publishes_the_announcing_interfaces() {
    let root = tempfile::tempdir().expect("tempdir");
    let manifests: PathBuf = root.path().join("manifests");
    let state: PathBuf = root.path().join("state");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    std::fs::write(
        manifests.join("pool.yaml"),
        "apiVersion: drawbridge.dev/v1alpha1\nkind: IPAddressPool\nmetadata: {name: lab}\n\
         spec: {addresses: [203.0.113.10-203.0.113.20]}\n",
    )
    .expect("pool");
    let l2 = manifests.join("l2.yaml");
    std::fs::write(&l2, l2_yaml("[eth1]")).expect("l2");
    for node in ["node-a", "node-b"] {
        std::fs::write(
            manifests.join(format!("{node}.yaml")),
            node_yaml(node, true),
        )
        .expect("node");
    }
    std::fs::write(
        manifests.join("web.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default, uid: uid-web}\n\
         spec: {type: LoadBalancer, selector: {app: web}, ports: [{port: 80}]}\n",
    )
    .expect("svc");
    let _controller = Guard(
        Command::new(env!("CARGO_BIN_EXE_lb-controller"))
            .arg("--manifests")
            .arg(&manifests)
            .arg("--state-dir")
            .arg(&state)
            .args(["--metrics-addr", "off"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start lb-controller"),
    );

    // Every candidate restricted alike: the compact form.
    let (ip, node) = wait_for("an announcement with interfaces", || {
        match (state_of(&state), interfaces_of(&state)) {
            ((Some(ip), Some(node)), Some(ifs)) if ifs == "eth1" => Some((ip, node)),
            _ => None,
        }
    });
    let consumer = source::start(
        &SourceArgs {
            manifests: Some(manifests.clone()),
            state_dir: Some(state.clone()),
        },
        &[Kind::Service],
    )
    .await
    .expect("consumer source");
    consumer.resources.wait_synced().await;
    let read = |resources: &drawbridge_resources::Resources| -> Option<String> {
        let svc = resources.services.state().into_iter().next()?;
        let value = svc
            .metadata
            .annotations
            .as_ref()?
            .get(ANNOTATION_ANNOUNCING_INTERFACES)?
            .clone();
        let parsed = l2_interfaces::parse(&value).ok()?;
        let set = parsed.for_node(ip.parse().ok()?, &node)?;
        Some(set.iter().cloned().collect::<Vec<_>>().join(","))
    };
    assert_eq!(read(&consumer.resources).as_deref(), Some("eth1"));

    // Only the interfaces change: rewritten, same announcer.
    write_atomically(&l2, &l2_yaml("[eth0, eth2]"));
    wait_for("the interfaces to be rewritten", || {
        (interfaces_of(&state).as_deref() == Some("eth0,eth2")).then_some(())
    });
    assert_eq!(state_of(&state), (Some(ip.clone()), Some(node.clone())));
    let deadline = Instant::now() + Duration::from_secs(5);
    while read(&consumer.resources).as_deref() != Some("eth0,eth2") {
        assert!(
            Instant::now() < deadline,
            "the consumer never saw the new interfaces"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Restriction lifted: the annotation goes, the announcement stays.
    write_atomically(&l2, &l2_yaml("[]"));
    wait_for("the interfaces annotation to be removed", || {
        interfaces_of(&state).is_none().then_some(())
    });
    assert_eq!(state_of(&state), (Some(ip), Some(node)));
}

//! The real binary switching `--proxy-mode` and `--cleanup` (issue: "Switching modes removes the
//! other mode's rules"; "`--cleanup` removes everything it ever created, in both modes").
//!
//! One network namespace (pid in its name, removed on drop); the binary runs inside it on a
//! manifest directory holding one Service with an endpoint.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

struct Netns {
    name: String,
    child: Option<Child>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn output(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("run");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn has_nft_tables(ns: &str) -> bool {
    let tables = output(ns, &["nft", "list", "tables"]);
    tables.contains("ip drawbridge") || tables.contains("ip6 drawbridge")
}

fn has_iptables_chains(ns: &str) -> bool {
    ["iptables-legacy-save", "ip6tables-legacy-save"]
        .iter()
        .any(|save| output(ns, &[save]).contains("DRAWBRIDGE-"))
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const WORLD: &str = r#"
apiVersion: v1
kind: Service
metadata: {namespace: demo, name: web}
spec:
  type: ClusterIP
  clusterIP: 198.18.0.10
  clusterIPs: [198.18.0.10]
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: demo
  name: web-abc
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [192.0.2.10], nodeName: node-a, conditions: {ready: true}}]
"#;

fn start(ns: &mut Netns, dir: &Path, mode: &str) {
    if let Some(mut old) = ns.child.take() {
        let _ = old.kill();
        let _ = old.wait();
    }
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            env!("CARGO_BIN_EXE_node-programmer"),
        ])
        .args(["--node-name", "node-a", "--manifests"])
        .arg(dir)
        .args([
            "--proxy-mode",
            mode,
            "--metrics-addr",
            "off",
            "--healthz-addr",
            "off",
        ])
        .stdin(Stdio::null())
        .spawn()
        .expect("start node-programmer");
    ns.child = Some(child);
}

#[test]
fn switching_modes_removes_the_other_modes_rules_and_cleanup_removes_all() {
    if !is_root() {
        eprintln!("SKIPPED: needs root");
        return;
    }
    let name = format!("dbmode-{}", std::process::id());
    assert!(
        Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip")
            .success()
    );
    let mut ns = Netns { name, child: None };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("world.yaml"), WORLD).expect("write");
    let n = ns.name.clone();

    start(&mut ns, dir.path(), "iptables");
    wait_for("DRAWBRIDGE chains", || has_iptables_chains(&n));
    assert!(!has_nft_tables(&n));

    start(&mut ns, dir.path(), "nftables");
    wait_for("nft tables", || has_nft_tables(&n));
    wait_for("iptables chains removed", || !has_iptables_chains(&n));
    let table = output(&n, &["nft", "list", "table", "ip", "drawbridge"]);
    assert!(table.contains("198.18.0.10 . tcp . 80"), "{table}");

    start(&mut ns, dir.path(), "none");
    wait_for("nft tables removed", || !has_nft_tables(&n));
    assert!(!has_iptables_chains(&n));

    start(&mut ns, dir.path(), "iptables");
    wait_for("DRAWBRIDGE chains again", || has_iptables_chains(&n));
    if let Some(mut child) = ns.child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let status = Command::new("ip")
        .args([
            "netns",
            "exec",
            &n,
            env!("CARGO_BIN_EXE_node-programmer"),
            "--cleanup",
        ])
        .status()
        .expect("cleanup");
    assert!(status.success());
    assert!(
        !has_iptables_chains(&n),
        "{}",
        output(&n, &["iptables-legacy-save"])
    );
    assert!(!has_nft_tables(&n));
}

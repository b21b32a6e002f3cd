//! Shared harness of node-programmer's network-namespace tests: root check, command runner, and
//! a [`Lab`] guard owning namespaces and processes (removed on drop, also when a test fails).
#![allow(dead_code)] // Each test binary uses a different subset.

use std::process::{Child, Command, Output, Stdio};

/// Whether this process runs as root (network namespaces, nft and iptables need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs `args` and panics with its stderr unless it succeeds.
pub fn run(args: &[&str]) -> Output {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Owns namespaces and processes; `Drop` kills the processes, then deletes the namespaces (which
/// removes their veths, rules and conntrack entries). Names carry the test process id, so
/// parallel test binaries never collide.
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Lab {
    /// A lab whose namespaces are named `db-<pid>-<tag>-<role>`.
    pub fn new(tag: &str) -> Lab {
        Lab {
            prefix: format!("db-{}-{tag}", std::process::id()),
            namespaces: vec![],
            children: vec![],
        }
    }

    /// Creates namespace `<prefix>-<role>` with `lo` up.
    pub fn netns(&mut self, role: &str) -> String {
        let name = format!("{}-{role}", self.prefix);
        run(&["ip", "netns", "add", &name]);
        self.namespaces.push(name.clone());
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// Starts `program` inside `ns`; killed on drop.
    pub fn spawn(&mut self, ns: &str, program: &[&str]) -> &mut Child {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(program)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program:?}: {e}"));
        self.children.push(child);
        self.children.last_mut().expect("just pushed")
    }
}

impl Lab {
    /// The `i`-th process started with [`Lab::spawn`].
    pub fn child(&mut self, i: usize) -> &mut Child {
        &mut self.children[i]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

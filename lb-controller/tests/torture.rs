//! Torture: SIGKILL the real `lb-controller` binary at random moments, 1,000 times, while Services
//! are created, edited and deleted; afterwards (and after every kill) no address is held twice and
//! no Service that lived throughout ever changed address.
//!
//! ```text
//!  manifests/ (pool + stable-* + churn-* Services, one file each)  ──>  lb-controller --manifests
//!  state/services/…/*.yaml (status)   state/ipaddressclaims/*.claim  <──  (killed after 5–60 ms,
//!                                                                        or after its first write)
//!        └── checked after every kill: duplicates, changed addresses of stable-*
//! ```
//!
//! Standalone mode (manifest directory + state directory): the claim is an exclusive file create,
//! the status an atomic rename, so a kill can fall between any two writes. Half the kills come at
//! a random 5–60 ms after start (often before the controller has done anything); the other half
//! come 0–20 ms after the state directory first changed (at most 2 s), so at least half the kills
//! land in a working controller however slow a loaded machine makes its start. `TORTURE_KILLS`
//! overrides the number of kills (default 1,000); the seed is printed for replay
//! (`TORTURE_SEED`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// xorshift64*: deterministic per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Kills the controller if the test panics.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

const STABLE: usize = 40;

fn service_yaml(name: &str, uid: &str, created_s: i64, rev: u64) -> String {
    let ts = k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + created_s).expect("time");
    // Edits change a label and add/remove a second port: nothing that may move the address.
    let extra = if rev % 2 == 1 { ", {port: 8443}" } else { "" };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  namespace: default\n  name: {name}\n  uid: {uid}\n  \
         creationTimestamp: \"{ts}\"\n  labels: {{rev: \"{rev}\"}}\n\
         spec: {{type: LoadBalancer, selector: {{app: {name}}}, ports: [{{port: 80}}{extra}]}}\n"
    )
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-edit");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// The file's text, or `None` when it no longer exists (released by a running controller after
/// its directory was listed); any other error fails the test.
fn read_unless_gone(path: &Path) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

/// `name → addresses` from the state directory's Service status files.
fn statuses(state: &Path) -> BTreeMap<String, Vec<String>> {
    let dir = state.join("services/default");
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        // The controller may remove the file between the listing and this read (the final
        // phase runs it while we look): gone is not an error.
        let Some(text) = read_unless_gone(&path) else {
            continue;
        };
        let doc: serde_json::Value = serde_yaml::from_str(&text).expect("status yaml");
        let name = doc["metadata"]["name"].as_str().expect("name").to_string();
        let ips = doc["status"]["loadBalancer"]["ingress"]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|i| i["ip"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        out.insert(name, ips);
    }
    out
}

fn claims(state: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(state.join("ipaddressclaims"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let file = entry.file_name().to_string_lossy().into_owned();
        if let Some(name) = file.strip_suffix(".claim") {
            let Some(text) = read_unless_gone(&entry.path()) else {
                continue;
            };
            let doc: serde_json::Value = serde_yaml::from_str(&text).expect("claim yaml");
            let owner = doc["spec"]["serviceRef"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string();
            out.insert(name.to_string(), owner);
        }
    }
    out
}

/// Names, sizes and modification times of the state directory's status and claim files: cheap,
/// and safe to take while a controller is writing (files that vanish are skipped).
fn fingerprint(state: &Path) -> BTreeSet<(PathBuf, u64, std::time::SystemTime)> {
    [
        state.join("services/default"),
        state.join("ipaddressclaims"),
    ]
    .iter()
    .filter_map(|dir| std::fs::read_dir(dir).ok())
    .flatten()
    .flatten()
    .filter_map(|entry| {
        let meta = entry.metadata().ok()?;
        Some((entry.path(), meta.len(), meta.modified().ok()?))
    })
    .collect()
}

fn start(bin: &Path, manifests: &Path, state: &Path) -> Child {
    Command::new(bin)
        .arg("--manifests")
        .arg(manifests)
        .arg("--state-dir")
        .arg(state)
        .args(["--metrics-addr", "off"])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start lb-controller")
}

#[test]
fn a_thousand_sigkills_leave_no_duplicate_and_no_changed_address() {
    let kills: usize = std::env::var("TORTURE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let seed: u64 = std::env::var("TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 | 1)
                .unwrap_or(1)
        });
    eprintln!("torture: {kills} kills, TORTURE_SEED={seed}");
    let mut rng = Rng(seed);
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_lb-controller"));
    let root = tempfile::tempdir().expect("tempdir");
    let manifests = root.path().join("manifests");
    let state = root.path().join("state");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    std::fs::write(
        manifests.join("pool.yaml"),
        "apiVersion: drawbridge.dev/v1alpha1\nkind: IPAddressPool\nmetadata: {name: torture}\n\
         spec: {addresses: [198.18.0.0/23]}\n",
    )
    .expect("pool");
    let mut revs = vec![0u64; STABLE];
    for (i, rev) in revs.iter().enumerate() {
        let name = format!("stable-{i:02}");
        let yaml = service_yaml(&name, &format!("uid-{name}"), i as i64, *rev);
        std::fs::write(manifests.join(format!("{name}.yaml")), yaml).expect("svc");
    }
    let mut churn: BTreeSet<usize> = BTreeSet::new();
    let mut next_churn = 0usize;
    let mut first_ip: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let (mut created, mut deleted, mut edited) = (0, 0, 0);
    let mut guard = Guard(None);
    let started = Instant::now();

    let check =
        |first_ip: &mut BTreeMap<String, Vec<String>>, churn: &BTreeSet<usize>, when: &str| {
            let live: BTreeSet<String> = (0..STABLE)
                .map(|i| format!("stable-{i:02}"))
                .chain(churn.iter().map(|i| format!("churn-{i:05}")))
                .collect();
            let status = statuses(&state);
            let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
            for (name, ips) in status.iter().filter(|(n, _)| live.contains(*n)) {
                for ip in ips {
                    if let Some(other) = seen.insert(ip, name) {
                        panic!("{when}: {ip} held by both {other} and {name} (seed {seed})");
                    }
                }
                if name.starts_with("stable-") && !ips.is_empty() {
                    let first = first_ip.entry(name.clone()).or_insert_with(|| ips.clone());
                    assert_eq!(first, ips, "{when}: {name} changed address (seed {seed})");
                }
            }
        };

    // Kills after which the state directory had changed: the controller was at work.
    let mut productive = 0usize;
    for kill in 0..kills {
        let before = (statuses(&state), claims(&state));
        guard.0 = Some(start(&bin, &manifests, &state));
        let files_before = fingerprint(&state);
        let spawned = Instant::now();
        let mut life = spawned + Duration::from_millis(5 + rng.below(56));
        // Odd kills wait for the controller's first write (bounded), then a little more.
        let mut await_write = kill % 2 == 1;
        // Mutate the world while it runs.
        while Instant::now() < life || await_write {
            if await_write
                && Instant::now() >= life
                && (fingerprint(&state) != files_before
                    || spawned.elapsed() > Duration::from_secs(2))
            {
                await_write = false;
                life = Instant::now() + Duration::from_millis(rng.below(21));
            }
            match rng.below(4) {
                0 if churn.len() < 120 => {
                    let i = next_churn;
                    next_churn += 1;
                    let name = format!("churn-{i:05}");
                    let yaml = service_yaml(&name, &format!("uid-{name}"), 1000 + i as i64, 0);
                    write_atomically(&manifests.join(format!("{name}.yaml")), &yaml);
                    churn.insert(i);
                    created += 1;
                }
                1 if !churn.is_empty() => {
                    let nth = rng.below(churn.len() as u64) as usize;
                    let i = *churn.iter().nth(nth).expect("nth");
                    std::fs::remove_file(manifests.join(format!("churn-{i:05}.yaml")))
                        .expect("delete");
                    churn.remove(&i);
                    deleted += 1;
                }
                2 => {
                    let i = rng.below(STABLE as u64) as usize;
                    revs[i] += 1;
                    let name = format!("stable-{i:02}");
                    let yaml = service_yaml(&name, &format!("uid-{name}"), i as i64, revs[i]);
                    write_atomically(&manifests.join(format!("{name}.yaml")), &yaml);
                    edited += 1;
                }
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(1 + rng.below(8)));
        }
        if let Some(mut child) = guard.0.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
        if (statuses(&state), claims(&state)) != before {
            productive += 1;
        }
        check(&mut first_ip, &churn, &format!("after kill {}", kill + 1));
    }
    let churn_time = started.elapsed();
    assert!(
        productive * 4 >= kills,
        "only {productive} of {kills} kills hit a working controller: the test proves little"
    );

    // Let one controller run to completion and check the end state.
    guard.0 = Some(start(&bin, &manifests, &state));
    let live: BTreeSet<String> = (0..STABLE)
        .map(|i| format!("stable-{i:02}"))
        .chain(churn.iter().map(|i| format!("churn-{i:05}")))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = statuses(&state);
        let claims = claims(&state);
        let all_allocated = live
            .iter()
            .all(|n| status.get(n).is_some_and(|ips| ips.len() == 1));
        let held: BTreeSet<&String> = live
            .iter()
            .filter_map(|n| status.get(n))
            .flatten()
            .collect();
        let claimed: BTreeSet<&String> = claims.keys().collect();
        if all_allocated && held == claimed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no convergence: {} live, {} held, {} claims (seed {seed})",
            live.len(),
            held.len(),
            claimed.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    check(&mut first_ip, &churn, "at the end");
    let claims = claims(&state);
    let status = statuses(&state);
    for (name, owner) in &claims {
        assert_eq!(
            status.get(owner).map(|ips| ips.contains(name)),
            Some(true),
            "claim {name} names {owner}, which does not hold it"
        );
    }
    assert_eq!(
        first_ip.len(),
        STABLE,
        "every stable Service got an address"
    );
    eprintln!(
        "torture: {kills} SIGKILLs ({productive} after the controller had written something) in \
         {:.1} s; {created} Services created, {deleted} deleted, {edited} edits; {} live at the \
         end, {} claims; 0 duplicates, 0 changed addresses",
        churn_time.as_secs_f64(),
        live.len(),
        claims.len()
    );
}

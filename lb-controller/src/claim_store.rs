//! Where `IPAddressClaim`s live (edge ring): the API server, a state directory, or memory (tests).
//!
//! ```text
//!  ClaimStore::create ──> KubeClaims: POST ipaddressclaims      (409 AlreadyExists → Exists(get))
//!                    └──> DirClaims:  write .tmp, link(2) to <name>.claim (EEXIST → Exists(read))
//!                    └──> MemoryClaims (tests; can plant a foreign claim)
//! ```
//!
//! Every implementation makes `create` exclusive: of two concurrent creates of one name, exactly one
//! returns [`Created`](CreateResult::Created). For the directory this is `link(2)`, which fails with
//! `EEXIST` atomically, after the whole file was written under a temporary name — so a reader never
//! sees half a claim, and a process killed mid-create leaves at most a `.tmp-*` file (removed
//! by the next start once older than a minute). Files are not fsynced: claims survive a killed process, not a power loss.
//!
//! Standalone layout: `<state-dir>/ipaddressclaims/<name>.claim`, each one YAML document of kind
//! `IPAddressClaim`. The suffix is `.claim`, not `.yaml`, because the manifest source reads every
//! `*.yaml` under the state directory as a status overlay of a known kind.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use drawbridge_resources::crd::IPAddressClaim;
use futures::future::BoxFuture;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

/// What can go wrong talking to the claim store. Callers retry at their next reconcile; nothing is
/// written to a Service while its claim is uncertain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API request failed (other than the expected `409` / `404`).
    #[error("IPAddressClaim {what} failed")]
    ClaimRequestFailed {
        /// `list`, `create 203.0.113.7`, ...
        what: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// A state-directory file could not be read or written.
    #[error("IPAddressClaim file {path}")]
    ClaimFileFailed {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Outcome of [`ClaimStore::create`].
#[derive(Clone, Debug)]
pub enum CreateResult {
    /// Our claim now exists.
    Created,
    /// A claim of that name existed already; here it is (the caller decides whose it is).
    Exists(Box<IPAddressClaim>),
}

/// Claims: list, create exclusively, delete.
pub trait ClaimStore: Send + Sync {
    /// Every claim.
    fn list(&self) -> BoxFuture<'_, Result<Vec<IPAddressClaim>>>;
    /// Creates `claim` unless one of its name exists (then returns that one).
    fn create(&self, claim: IPAddressClaim) -> BoxFuture<'_, Result<CreateResult>>;
    /// Deletes the claim `name`; a claim already gone is success.
    fn delete(&self, name: String) -> BoxFuture<'_, Result<()>>;
}

// === impl KubeClaims ===

/// Claims as `drawbridge.dev/v1alpha1` `IPAddressClaim` objects in the API server.
pub struct KubeClaims {
    api: Api<IPAddressClaim>,
}

impl KubeClaims {
    /// Claims through `client`.
    pub fn new(client: Client) -> Self {
        KubeClaims {
            api: Api::all(client),
        }
    }
}

impl ClaimStore for KubeClaims {
    fn list(&self) -> BoxFuture<'_, Result<Vec<IPAddressClaim>>> {
        Box::pin(async move {
            self.api
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .map_err(|source| Error::ClaimRequestFailed {
                    what: "list".into(),
                    source,
                })
        })
    }

    fn create(&self, claim: IPAddressClaim) -> BoxFuture<'_, Result<CreateResult>> {
        Box::pin(async move {
            let name = claim.metadata.name.clone().unwrap_or_default();
            match self.api.create(&PostParams::default(), &claim).await {
                Ok(_) => Ok(CreateResult::Created),
                Err(kube::Error::Api(status)) if status.is_already_exists() => {
                    match self.api.get(&name).await {
                        Ok(existing) => Ok(CreateResult::Exists(Box::new(existing))),
                        Err(source) => Err(Error::ClaimRequestFailed {
                            what: format!("get {name}"),
                            source,
                        }),
                    }
                }
                Err(source) => Err(Error::ClaimRequestFailed {
                    what: format!("create {name}"),
                    source,
                }),
            }
        })
    }

    fn delete(&self, name: String) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            match self.api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
                Err(source) => Err(Error::ClaimRequestFailed {
                    what: format!("delete {name}"),
                    source,
                }),
            }
        })
    }
}

// === impl DirClaims ===

/// Claims as files in `<state-dir>/ipaddressclaims/` (standalone mode).
pub struct DirClaims {
    dir: PathBuf,
    counter: AtomicU64,
}

/// File suffix of a claim.
pub const CLAIM_SUFFIX: &str = ".claim";

impl DirClaims {
    /// Claims under `state_dir/ipaddressclaims` (created if missing); stale `.tmp-*` files of
    /// killed processes are removed.
    pub fn new(state_dir: &std::path::Path) -> Result<Self> {
        let dir = state_dir.join("ipaddressclaims");
        std::fs::create_dir_all(&dir).map_err(|source| Error::ClaimFileFailed {
            path: dir.clone(),
            source,
        })?;
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                // Only leftovers of killed processes: a live process's temporary file exists
                // for microseconds, so anything older than a minute is abandoned.
                let abandoned = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > std::time::Duration::from_secs(60));
                if entry.file_name().to_string_lossy().starts_with(".tmp-") && abandoned {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(DirClaims {
            dir,
            counter: AtomicU64::new(0),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{CLAIM_SUFFIX}"))
    }

    fn read(&self, path: &std::path::Path) -> Result<Option<IPAddressClaim>> {
        match std::fs::read_to_string(path) {
            Ok(text) => match serde_yaml::from_str(&text) {
                Ok(claim) => Ok(Some(claim)),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "claim file does not parse; ignoring it");
                    Ok(None)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::ClaimFileFailed {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    fn create_sync(&self, claim: &IPAddressClaim) -> Result<CreateResult> {
        let name = claim.metadata.name.clone().unwrap_or_default();
        let path = self.path(&name);
        let io = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| Error::ClaimFileFailed { path, source }
        };
        // Unique per process *and* per store: two stores in one process (tests, or a restart of
        // the loop) must never share a temporary name.
        static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed),
            self.counter.fetch_add(1, Ordering::Relaxed)
        ));
        let text = serde_yaml::to_string(claim).unwrap_or_default();
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(CreateResult::Created),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match self.read(&path)? {
                Some(existing) => Ok(CreateResult::Exists(Box::new(existing))),
                // Deleted in between, or unreadable: treat as a conflict, next pass retries.
                None => Ok(CreateResult::Exists(Box::new(IPAddressClaim::new(
                    &name,
                    Default::default(),
                )))),
            },
            Err(source) => Err(Error::ClaimFileFailed { path, source }),
        }
    }
}

impl ClaimStore for DirClaims {
    fn list(&self) -> BoxFuture<'_, Result<Vec<IPAddressClaim>>> {
        Box::pin(async move {
            let entries =
                std::fs::read_dir(&self.dir).map_err(|source| Error::ClaimFileFailed {
                    path: self.dir.clone(),
                    source,
                })?;
            let mut out = Vec::new();
            for entry in entries.flatten() {
                let file = entry.file_name();
                let file = file.to_string_lossy();
                if file.starts_with('.') || !file.ends_with(CLAIM_SUFFIX) {
                    continue;
                }
                if let Some(claim) = self.read(&entry.path())? {
                    out.push(claim);
                }
            }
            Ok(out)
        })
    }

    fn create(&self, claim: IPAddressClaim) -> BoxFuture<'_, Result<CreateResult>> {
        Box::pin(async move { self.create_sync(&claim) })
    }

    fn delete(&self, name: String) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let path = self.path(&name);
            match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(Error::ClaimFileFailed { path, source }),
            }
        })
    }
}

// === impl MemoryClaims ===

/// Test fake: claims in memory, with the same exclusive create.
#[derive(Default)]
pub struct MemoryClaims {
    claims: Mutex<BTreeMap<String, IPAddressClaim>>,
}

impl MemoryClaims {
    /// Plants a claim as another controller would have created it.
    pub fn insert(&self, claim: IPAddressClaim) {
        let name = claim.metadata.name.clone().unwrap_or_default();
        self.claims
            .lock()
            .expect("lock poisoned")
            .insert(name, claim);
    }

    /// Every claim, by name.
    pub fn snapshot(&self) -> BTreeMap<String, IPAddressClaim> {
        self.claims.lock().expect("lock poisoned").clone()
    }
}

impl ClaimStore for MemoryClaims {
    fn list(&self) -> BoxFuture<'_, Result<Vec<IPAddressClaim>>> {
        let all = self.snapshot().into_values().collect();
        Box::pin(async move { Ok(all) })
    }

    fn create(&self, claim: IPAddressClaim) -> BoxFuture<'_, Result<CreateResult>> {
        let name = claim.metadata.name.clone().unwrap_or_default();
        let mut claims = self.claims.lock().expect("lock poisoned");
        let result = match claims.get(&name) {
            Some(existing) => CreateResult::Exists(Box::new(existing.clone())),
            None => {
                claims.insert(name, claim);
                CreateResult::Created
            }
        };
        Box::pin(async move { Ok(result) })
    }

    fn delete(&self, name: String) -> BoxFuture<'_, Result<()>> {
        self.claims.lock().expect("lock poisoned").remove(&name);
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drawbridge_resources::crd::{IPAddressClaimSpec, ServiceRef};

    fn claim(name: &str, owner: &str) -> IPAddressClaim {
        IPAddressClaim::new(
            name,
            IPAddressClaimSpec {
                service_ref: ServiceRef {
                    namespace: "default".into(),
                    name: owner.into(),
                    uid: String::new(),
                },
                pool: "lab".into(),
                sharing_key: None,
            },
        )
    }

    #[tokio::test]
    async fn dir_claims_are_exclusive_across_processes_and_threads() {
        let state = tempfile::tempdir().expect("tempdir");
        // Two stores on one directory stand for two processes.
        let one = std::sync::Arc::new(DirClaims::new(state.path()).expect("store"));
        let two = std::sync::Arc::new(DirClaims::new(state.path()).expect("store"));
        let mut tasks = Vec::new();
        for i in 0..16 {
            let store = if i % 2 == 0 { one.clone() } else { two.clone() };
            tasks.push(tokio::task::spawn_blocking(move || {
                store.create_sync(&claim("203.0.113.7", &format!("svc-{i}")))
            }));
        }
        let mut created = 0;
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.expect("join").expect("create") {
                CreateResult::Created => created += 1,
                CreateResult::Exists(c) => winners.push(c.spec.service_ref.name.clone()),
            }
        }
        assert_eq!(created, 1, "exactly one create wins");
        let listed = one.list().await.expect("list");
        assert_eq!(listed.len(), 1);
        let owner = listed[0].spec.service_ref.name.clone();
        assert!(winners.iter().all(|w| *w == owner), "losers see the winner");
        let files: Vec<String> = std::fs::read_dir(state.path().join("ipaddressclaims"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files, ["203.0.113.7.claim"], "no temporary files left");
        two.delete("203.0.113.7".into()).await.expect("delete");
        two.delete("203.0.113.7".into())
            .await
            .expect("deleting twice is fine");
        assert!(one.list().await.expect("list").is_empty());
    }

    #[test]
    fn stale_temporary_files_are_removed_at_start() {
        let state = tempfile::tempdir().expect("tempdir");
        let dir = state.path().join("ipaddressclaims");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(".tmp-1-1"), "half").expect("write");
        std::fs::write(dir.join(".tmp-2-1"), "in flight").expect("write");
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
        std::fs::File::options()
            .write(true)
            .open(dir.join(".tmp-1-1"))
            .expect("open")
            .set_modified(old)
            .expect("set mtime");
        let _store = DirClaims::new(state.path()).expect("store");
        assert!(!dir.join(".tmp-1-1").exists(), "abandoned file removed");
        assert!(
            dir.join(".tmp-2-1").exists(),
            "a fresh one may be another process's"
        );
    }
}

//! Leader election (edge ring): only the holder of a `coordination.k8s.io/v1` Lease writes status.
//!
//! ```text
//!   every replica: Source (watch + stores, always warm) ──> controller::run ──┐ writes only while
//!                                                                             │ the gate is `true`
//!   LeaseElection task ── kube-lease-manager `changed()` ──> watch<bool> gate ┘
//!        ▲ get / create / patch Lease NS/NAME (its own client, 2 s request timeout)
//! ```
//!
//! The election itself is kube-lease-manager's (server-side-apply lock, renew, expiry, force
//! release of an expired holder); this module only turns it into a `watch::Receiver<bool>` and
//! adds two safety rules of its own:
//!
//! - **Any lease error stops the writes at once.** kube-lease-manager's `watch()` keeps the last
//!   state when a renewal fails, so a leader cut off from the API server would go on writing after
//!   its lease expired and a new leader took over. Here an error from `changed()` publishes
//!   `false`, and a fresh manager is built (it reports `true` again at once if the Lease still
//!   names this identity).
//! - **Lease requests time out after [`LEASE_REQUEST_TIMEOUT`]**, well inside the lease duration,
//!   so a hung renewal turns into an error (and `false`) before the lease can expire.
//!
//! Timing ([`LEASE_DURATION_SECS`] = 4, [`LEASE_GRACE_SECS`] = 3): the holder renews when 3 s are
//! left, i.e. about once a second; followers re-read the Lease when it would expire. A holder that
//! dies is replaced 3–5 s later (lease expiry after its last renewal + kube-lease-manager's random
//! 0.1–1 s back-off after force-releasing the expired lock). A holder that stops cleanly
//! ([`LeaseElection::step_down`], on SIGTERM) releases the Lease, and a follower takes over within
//! about a second of its next look. Clock skew between replicas must stay below the grace (3 s).

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Seconds a Lease stays valid after its last renewal (`spec.leaseDurationSeconds`).
pub const LEASE_DURATION_SECS: u64 = 4;
/// The holder renews when this many seconds of validity are left (so every ~1 s); also the
/// largest tolerated clock skew between replicas.
pub const LEASE_GRACE_SECS: u64 = 3;
/// Connect/read/write timeout of every Lease request; shorter than the renew margin.
pub const LEASE_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before building a new lease manager after an error.
const RETRY: Duration = Duration::from_secs(1);

/// Leader-election flags of `lb-controller`.
#[derive(clap::Args, Clone, Debug)]
pub struct LeaderArgs {
    /// Elect a leader through a Lease; only the leader writes status. Kubernetes mode only:
    /// standalone (`--manifests`) mode always writes.
    #[arg(long, env = "DRAWBRIDGE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the Lease.
    #[arg(
        long,
        env = "DRAWBRIDGE_LEASE_NAME",
        default_value = "drawbridge-lb-controller"
    )]
    pub lease_name: String,
    /// Namespace of the Lease (the Pod's own namespace through the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "drawbridge-system")]
    pub lease_namespace: String,
    /// This replica's holder identity (the Pod name through the downward API); default
    /// `HOSTNAME-PID`.
    #[arg(long, env = "POD_NAME")]
    pub lease_identity: Option<String>,
}

impl LeaderArgs {
    /// The identity to hold the Lease as.
    pub fn identity(&self) -> String {
        self.lease_identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "lb-controller".to_string());
            format!("{host}-{}", std::process::id())
        })
    }
}

/// Why the election could not start. Not retried: the configuration is wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No kubeconfig / in-cluster configuration.
    #[error("no Kubernetes configuration for the lease client")]
    KubeConfig(#[source] kube::config::InferConfigError),
    /// The client could not be built from it.
    #[error("cannot build the lease client")]
    KubeClient(#[source] kube::Error),
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who may write now. The controller only ever reads the receiver: `true` = write.
pub trait Leadership: Send + Sync {
    /// The current answer and its changes. A closed channel means the election is gone: stop.
    fn subscribe(&self) -> watch::Receiver<bool>;
}

// === impl ManualLeadership ===

/// Leadership set by hand: always `true` in standalone mode or with `--leader-election=false`, and
/// the fake tests flip.
pub struct ManualLeadership {
    tx: watch::Sender<bool>,
}

impl ManualLeadership {
    /// Starts as `leader`.
    pub fn new(leader: bool) -> Self {
        ManualLeadership {
            tx: watch::Sender::new(leader),
        }
    }

    /// Becomes (or stops being) the leader.
    pub fn set(&self, leader: bool) {
        self.tx.send_replace(leader);
    }
}

impl Leadership for ManualLeadership {
    fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }
}

// === impl Election ===

/// What `main` runs: a Lease election, or permanent leadership.
pub enum Election {
    /// Kubernetes mode with `--leader-election=true`.
    Lease(LeaseElection),
    /// Standalone mode, or `--leader-election=false`.
    Always(ManualLeadership),
}

/// Starts the election `args` ask for. `standalone`: the source is a manifest directory, where
/// there is no Lease to hold (one process per state directory) and this replica always writes.
pub async fn start(args: &LeaderArgs, standalone: bool) -> Result<Election> {
    if standalone || !args.leader_election {
        return Ok(Election::Always(ManualLeadership::new(true)));
    }
    let settings = LeaseSettings {
        name: args.lease_name.clone(),
        namespace: args.lease_namespace.clone(),
        identity: args.identity(),
    };
    Ok(Election::Lease(LeaseElection::start(
        lease_client().await?,
        settings,
    )))
}

impl Election {
    /// Stops writing and releases the Lease if held.
    pub async fn step_down(self) {
        match self {
            Election::Lease(election) => election.step_down().await,
            Election::Always(manual) => manual.set(false),
        }
    }
}

impl Leadership for Election {
    fn subscribe(&self) -> watch::Receiver<bool> {
        match self {
            Election::Lease(election) => election.subscribe(),
            Election::Always(manual) => manual.subscribe(),
        }
    }
}

// === impl LeaseElection ===

/// Where and as whom to hold the Lease.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// Holder identity; unique per replica.
    pub identity: String,
}

/// A running election: a task keeping kube-lease-manager's `changed()` going.
pub struct LeaseElection {
    tx: Arc<watch::Sender<bool>>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

/// A client for Lease requests only: the ambient configuration with short timeouts (the source's
/// client keeps the long read timeout its watches need).
pub async fn lease_client() -> Result<Client> {
    // As `resources::source::start` does: ring is the provider Pingora links too; an error only
    // means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = kube::Config::infer().await.map_err(Error::KubeConfig)?;
    config.connect_timeout = Some(LEASE_REQUEST_TIMEOUT);
    config.read_timeout = Some(LEASE_REQUEST_TIMEOUT);
    config.write_timeout = Some(LEASE_REQUEST_TIMEOUT);
    Client::try_from(config).map_err(Error::KubeClient)
}

impl LeaseElection {
    /// Starts campaigning for the Lease on `client` (see [`lease_client`]). Starts as follower.
    pub fn start(client: Client, settings: LeaseSettings) -> LeaseElection {
        let tx = Arc::new(watch::Sender::new(false));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(campaign(client, settings, tx.clone(), shutdown.clone()));
        LeaseElection { tx, shutdown, task }
    }

    /// Stops writing, releases the Lease if held (so a follower takes over without waiting for
    /// expiry) and ends the election. Call on shutdown.
    pub async fn step_down(self) {
        self.tx.send_replace(false);
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

impl Leadership for LeaseElection {
    fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }
}

async fn campaign(
    client: Client,
    settings: LeaseSettings,
    tx: Arc<watch::Sender<bool>>,
    shutdown: CancellationToken,
) {
    let LeaseSettings {
        name,
        namespace,
        identity,
    } = &settings;
    tracing::info!(lease = %name, %namespace, %identity, duration_secs = LEASE_DURATION_SECS, "campaigning for the lease");
    loop {
        let manager = tokio::select! {
            _ = shutdown.cancelled() => return,
            built = build(client.clone(), &settings) => built,
        };
        let manager = match manager {
            Ok(manager) => manager,
            Err(error) => {
                tracing::warn!(%error, lease = %name, "cannot set up the lease; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        loop {
            let changed = tokio::select! {
                _ = shutdown.cancelled() => {
                    tx.send_replace(false);
                    match tokio::time::timeout(LEASE_REQUEST_TIMEOUT * 2, manager.release()).await {
                        Ok(Ok(())) => tracing::info!(lease = %name, "lease released"),
                        Ok(Err(error)) => tracing::warn!(%error, lease = %name, "releasing the lease failed"),
                        Err(_) => tracing::warn!(lease = %name, "releasing the lease timed out"),
                    }
                    return;
                }
                changed = manager.changed() => changed,
            };
            match changed {
                Ok(leader) => {
                    tx.send_replace(leader);
                    if leader {
                        tracing::info!(lease = %name, %identity, "became the leader; writing status");
                    } else {
                        tracing::info!(lease = %name, %identity, "lost the lease; status writes stopped");
                    }
                }
                Err(error) => {
                    // Cannot confirm the lease: stop writing now, not at the next state change.
                    if tx.send_replace(false) {
                        tracing::warn!(%error, lease = %name, "lease renewal failed; status writes stopped");
                    } else {
                        tracing::warn!(%error, lease = %name, "lease request failed; retrying");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(RETRY) => break,
                    }
                }
            }
        }
    }
}

async fn build(
    client: Client,
    settings: &LeaseSettings,
) -> kube_lease_manager::Result<LeaseManager> {
    LeaseManagerBuilder::new(client, &settings.name)
        .with_namespace(&settings.namespace)
        .with_identity(&settings.identity)
        .with_duration(LEASE_DURATION_SECS)
        .with_grace(LEASE_GRACE_SECS)
        .with_field_manager(format!("drawbridge-lb-controller-{}", settings.identity))
        .build()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_leadership_publishes_changes() {
        let leadership = ManualLeadership::new(false);
        let mut rx = leadership.subscribe();
        assert!(!*rx.borrow_and_update());
        leadership.set(true);
        assert!(rx.has_changed().expect("sender alive"));
        assert!(*rx.borrow_and_update());
    }

    #[test]
    fn identity_defaults_to_host_and_pid() {
        let args = LeaderArgs {
            leader_election: true,
            lease_name: "x".into(),
            lease_namespace: "y".into(),
            lease_identity: None,
        };
        assert!(
            args.identity()
                .ends_with(&format!("-{}", std::process::id()))
        );
        let args = LeaderArgs {
            lease_identity: Some("pod-1".into()),
            ..args
        };
        assert_eq!(args.identity(), "pod-1");
    }
}

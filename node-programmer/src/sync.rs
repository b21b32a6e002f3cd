//! The loop: wait until Services and EndpointSlices are listed once, then on every change tick
//! recompute the whole desired table, render it, and apply it only if the text differs from what
//! was last applied successfully (level-triggered, idempotent; service-proxy.md §1.0, §1.18).
//!
//! ```text
//!  Resources::changed() ─(debounce 10 ms)─> Programmer::sync
//!      ServiceTable::build ─> render::transaction ─> same as last applied? ── yes ─> nothing
//!                                                            └─ no ─> Apply::apply ─ ok ─> remember text
//!                                                                                └ err ─> log, back off, retry
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use drawbridge_resources::Resources;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tracing::{debug, error, info, warn};

use crate::apply::{self, Apply};
use crate::model::{ServiceTable, Skipped};
use crate::render;

/// Change ticks closer together than this are handled as one sync.
pub const DEBOUNCE: Duration = Duration::from_millis(10);
/// First retry delay after a failed transaction.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Longest retry delay (doubling stops here).
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Errors that end the loop. Transaction failures never do (they are retried).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The resource source stopped delivering changes; the process should exit and be restarted.
    #[error("the resource source ended")]
    SourceEnded,
    /// A sync panicked on the blocking thread (a bug).
    #[error("sync task failed")]
    SyncTaskFailed(#[source] tokio::task::JoinError),
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What one [`Programmer::sync`] did.
#[derive(Debug)]
pub enum Outcome {
    /// The desired text equals the last applied one: nothing was sent to nft.
    Unchanged,
    /// A transaction was applied.
    Applied,
    /// The transaction failed; the previous ruleset stays in force.
    Failed(apply::Error),
}

/// Synchronous core of the loop: desired state → text → apply if changed. Owns the applier and
/// the memory of what the kernel holds.
pub struct Programmer<A> {
    node_name: String,
    applier: A,
    /// Text of the last transaction that succeeded; `None` until the first one (so the first sync
    /// after a restart always rewrites the table, replacing whatever a previous run left).
    last_applied: Option<String>,
    /// Problems reported last time, so an unchanged bad object is logged once, not every tick.
    last_skipped: Vec<Skipped>,
}

impl<A: Apply> Programmer<A> {
    /// A programmer for node `node_name` (endpoints with this `nodeName` are local).
    pub fn new(node_name: impl Into<String>, applier: A) -> Self {
        Programmer {
            node_name: node_name.into(),
            applier,
            last_applied: None,
            last_skipped: vec![],
        }
    }

    /// The applier (tests inspect the fake).
    pub fn applier(&self) -> &A {
        &self.applier
    }

    /// The applier, mutably (tests inject failures).
    pub fn applier_mut(&mut self) -> &mut A {
        &mut self.applier
    }

    /// One full pass over the current world.
    pub fn sync<'a>(
        &mut self,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> Outcome {
        let started = Instant::now();
        let (table, skipped) = ServiceTable::build(services, slices, &self.node_name);
        if skipped != self.last_skipped {
            for s in &skipped {
                warn!(kind = s.kind, namespace = %s.namespace, name = %s.name, error = %s.error, "skipping malformed object");
            }
            self.last_skipped = skipped;
        }
        let text = render::transaction(&table);
        if self.last_applied.as_deref() == Some(text.as_str()) {
            debug!("nftables table already up to date");
            return Outcome::Unchanged;
        }
        match self.applier.apply(&text) {
            Ok(()) => {
                info!(
                    service_ports = table.ports.len(),
                    bytes = text.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "programmed nftables table {} {}",
                    render::FAMILY,
                    render::TABLE
                );
                self.last_applied = Some(text);
                Outcome::Applied
            }
            Err(e) => {
                // Whatever state the kernel is in, the next attempt rewrites the whole table.
                self.last_applied = None;
                Outcome::Failed(e)
            }
        }
    }
}

/// Doubling retry delay, [`BACKOFF_INITIAL`] up to [`BACKOFF_MAX`].
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            next: BACKOFF_INITIAL,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }

    fn reset(&mut self) {
        self.next = BACKOFF_INITIAL;
    }
}

/// Runs until the source ends: nothing is programmed before both stores have synced once
/// (kube-proxy `isInitialized`). Failed transactions are logged and retried; they never end it.
pub async fn run<A: Apply + Send + 'static>(
    mut resources: Resources,
    programmer: Programmer<A>,
) -> Result<()> {
    resources.wait_synced().await;
    info!("Services and EndpointSlices synced; programming");
    let mut programmer = programmer;
    let mut backoff = Backoff::new();
    loop {
        let services: Vec<Arc<Service>> = resources.services.state();
        let slices: Vec<Arc<EndpointSlice>> = resources.endpoint_slices.state();
        // nft may take a while on big tables; keep it off the async workers.
        let (returned, outcome) = tokio::task::spawn_blocking(move || {
            let mut programmer = programmer;
            let outcome = programmer.sync(
                services.iter().map(Arc::as_ref),
                slices.iter().map(Arc::as_ref),
            );
            (programmer, outcome)
        })
        .await
        .map_err(Error::SyncTaskFailed)?;
        programmer = returned;

        if let Outcome::Failed(e) = outcome {
            let delay = backoff.next_delay();
            error!(error = %e, retry_in_s = delay.as_secs(), "nftables transaction failed; keeping the previous rules");
            // Changes during the wait are not lost: the retry reads the stores afresh.
            tokio::time::sleep(delay).await;
            continue;
        }
        backoff.reset();
        if !resources.changed().await {
            return Err(Error::SourceEnded);
        }
        tokio::time::sleep(DEBOUNCE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::RecordingApply;
    use crate::model::tests::{mk_service, mk_slice};

    #[test]
    fn identical_world_is_applied_once() {
        let services = [mk_service("ns", "web")
            .cluster_ip("198.18.0.10")
            .port("http", 80)
            .build()];
        let slices = [mk_slice("ns", "web-1", "web")
            .port("http", 8080)
            .ready("192.0.2.10", "node-a")
            .build()];
        let mut p = Programmer::new("node-a", RecordingApply::default());
        assert!(matches!(p.sync(&services, &slices), Outcome::Applied));
        assert!(matches!(p.sync(&services, &slices), Outcome::Unchanged));
        assert_eq!(p.applier().transactions.len(), 1);
        let text = &p.applier().transactions[0];
        assert!(text.starts_with(
            "add table ip drawbridge\ndelete table ip drawbridge\ntable ip drawbridge {"
        ));
    }

    #[test]
    fn a_change_is_applied() {
        let services = [mk_service("ns", "web")
            .cluster_ip("198.18.0.10")
            .port("http", 80)
            .build()];
        let one = [mk_slice("ns", "web-1", "web")
            .port("http", 8080)
            .ready("192.0.2.10", "node-a")
            .build()];
        let two = [mk_slice("ns", "web-1", "web")
            .port("http", 8080)
            .ready("192.0.2.10", "node-a")
            .ready("192.0.2.11", "node-b")
            .build()];
        let mut p = Programmer::new("node-a", RecordingApply::default());
        p.sync(&services, &one);
        assert!(matches!(p.sync(&services, &two), Outcome::Applied));
        assert_eq!(p.applier().transactions.len(), 2);
        assert!(p.applier().transactions[1].contains("dnat to 192.0.2.11:8080"));
    }

    #[test]
    fn failed_transaction_is_retried_with_the_same_text() {
        let services = [mk_service("ns", "web")
            .cluster_ip("198.18.0.10")
            .port("http", 80)
            .build()];
        let mut p = Programmer::new(
            "node-a",
            RecordingApply {
                fail_next: 1,
                ..Default::default()
            },
        );
        assert!(matches!(p.sync(&services, []), Outcome::Failed(_)));
        assert!(matches!(p.sync(&services, []), Outcome::Applied));
        assert!(matches!(p.sync(&services, []), Outcome::Unchanged));
        let t = &p.applier().transactions;
        assert_eq!(t.len(), 2);
        assert_eq!(t[0], t[1]);
    }

    #[test]
    fn backoff_doubles_to_thirty_seconds() {
        let mut b = Backoff::new();
        let delays: Vec<u64> = (0..7).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        b.reset();
        assert_eq!(b.next_delay(), BACKOFF_INITIAL);
    }
}

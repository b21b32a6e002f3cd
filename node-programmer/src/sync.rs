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
//!
//! Observability (kube-proxy's metric names, so existing dashboards and alerts work unchanged):
//! `kubeproxy_sync_proxy_rules_duration_seconds`, `kubeproxy_sync_proxy_rules_last_timestamp_seconds`,
//! `kubeproxy_sync_proxy_rules_nftables_sync_failures_total` and
//! `kubeproxy_network_programming_duration_seconds` (from the EndpointSlice annotation
//! `endpoints.kubernetes.io/last-change-trigger-time`). Malformed Services and EndpointSlices get
//! one `SkippedService` Warning Event each (again only when the problem changes). `/readyz` turns
//! 200 after the first successful sync.

use sha2::Digest;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use drawbridge_resources::events::{Event, EventRecorder, EventSet};
use drawbridge_resources::observe::{Health, unix_now};
use drawbridge_resources::{Kind, ObjectKey, Resources};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::ObjectRef;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
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

/// EndpointSlice annotation: when the change this slice reflects happened (set by the
/// EndpointSlice controller; kube-proxy's network-programming latency SLI).
pub const ANNOTATION_LAST_CHANGE_TRIGGER_TIME: &str =
    "endpoints.kubernetes.io/last-change-trigger-time";

/// Event reason for a Service or EndpointSlice that was left out of the rules.
pub const REASON_SKIPPED: &str = "SkippedService";

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
    /// SHA-256 of the text of the last transaction that succeeded; `None` until the first one (so
    /// the first sync after a restart always rewrites the table, replacing whatever a previous run
    /// left). A digest, not the text: at 10,000 Services the text is ~28 MB.
    last_applied: Option<[u8; 32]>,
    /// Problems reported last time, so an unchanged bad object is logged once, not every tick.
    last_skipped: Vec<Skipped>,
    /// Metric handles (unregistered unless [`Programmer::with_metrics`]).
    metrics: Metrics,
    /// Last `last-change-trigger-time` seen per EndpointSlice `(namespace, name)`, so each change
    /// is observed once in `network_programming_duration_seconds`.
    trigger_times: HashMap<(String, String), String>,
    /// Trigger times before this (Unix seconds) are not observed: they predate this process
    /// (kube-proxy ignores changes before its tracker started, too).
    started_at: f64,
}

// === impl Metrics ===

/// node-programmer's metrics, under kube-proxy's names (`pkg/proxy/metrics`, subsystem `kubeproxy`).
#[derive(Clone, Debug)]
pub struct Metrics {
    /// `kubeproxy_sync_proxy_rules_duration_seconds`: one sync (model, render, nft), every outcome.
    pub sync_duration: Histogram,
    /// `kubeproxy_sync_proxy_rules_last_timestamp_seconds`: end of the last successful sync.
    pub last_sync_timestamp: Gauge<f64, AtomicU64>,
    /// `kubeproxy_sync_proxy_rules_nftables_sync_failures_total`: failed `nft -f -` transactions.
    pub nftables_sync_failures: Counter,
    /// `kubeproxy_network_programming_duration_seconds`: from an EndpointSlice's
    /// `last-change-trigger-time` to the sync that made the rules reflect it.
    pub network_programming_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        // kube-proxy's buckets: sync 1 ms doubling ×15; network programming 0.25 s … 5 min.
        let programming = [0.25, 0.5]
            .into_iter()
            .chain((1..=59).map(f64::from))
            .chain((0..12).map(|i| 60.0 + 5.0 * f64::from(i)))
            .chain((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
        Metrics {
            sync_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            last_sync_timestamp: Gauge::default(),
            nftables_sync_failures: Counter::default(),
            network_programming_duration: Histogram::new(programming),
        }
    }
}

impl Metrics {
    /// New metrics, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        registry.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            m.sync_duration.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            m.last_sync_timestamp.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_nftables_sync_failures",
            "Cumulative proxy nftables sync failures",
            m.nftables_sync_failures.clone(),
        );
        registry.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            m.network_programming_duration.clone(),
        );
        m
    }
}

impl<A: Apply> Programmer<A> {
    /// A programmer for node `node_name` (endpoints with this `nodeName` are local).
    pub fn new(node_name: impl Into<String>, applier: A) -> Self {
        Programmer {
            node_name: node_name.into(),
            applier,
            last_applied: None,
            last_skipped: vec![],
            metrics: Metrics::default(),
            trigger_times: HashMap::new(),
            // Whole seconds: trigger times may be written with second precision.
            started_at: unix_now().floor(),
        }
    }

    /// The same programmer recording into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Objects left out by the last sync, and why.
    pub fn skipped(&self) -> &[Skipped] {
        &self.last_skipped
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
        let slices: Vec<&EndpointSlice> = slices.into_iter().collect();
        let outcome = self.sync_inner(services, &slices, started);
        self.metrics
            .sync_duration
            .observe(started.elapsed().as_secs_f64());
        match &outcome {
            Outcome::Failed(_) => {
                self.metrics.nftables_sync_failures.inc();
            }
            Outcome::Applied | Outcome::Unchanged => {
                let now = unix_now();
                self.metrics.last_sync_timestamp.set(now);
                self.observe_programming(&slices, now);
            }
        }
        outcome
    }

    /// Observes, once per change, the time from each EndpointSlice's last-change-trigger-time to
    /// `now` (the rules reflect it now); forgets slices that are gone.
    fn observe_programming(&mut self, slices: &[&EndpointSlice], now: f64) {
        let mut seen = HashMap::with_capacity(self.trigger_times.len());
        for slice in slices {
            let Some(value) = slice
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_LAST_CHANGE_TRIGGER_TIME))
            else {
                continue;
            };
            let key = (
                slice.metadata.namespace.clone().unwrap_or_default(),
                slice.metadata.name.clone().unwrap_or_default(),
            );
            if self.trigger_times.get(&key) != Some(value) {
                let at = value
                    .parse::<k8s_openapi::jiff::Timestamp>()
                    .ok()
                    .map(|t| t.as_nanosecond() as f64 / 1e9);
                if let Some(at) = at.filter(|at| *at >= self.started_at) {
                    self.metrics
                        .network_programming_duration
                        .observe((now - at).max(0.0));
                }
            }
            seen.insert(key, value.clone());
        }
        self.trigger_times = seen;
    }

    fn sync_inner<'a>(
        &mut self,
        services: impl IntoIterator<Item = &'a Service>,
        slices: &[&'a EndpointSlice],
        started: Instant,
    ) -> Outcome {
        let (table, skipped) =
            ServiceTable::build(services, slices.iter().copied(), &self.node_name);
        if skipped != self.last_skipped {
            for s in &skipped {
                warn!(kind = s.kind, namespace = %s.namespace, name = %s.name, error = %s.error, "skipping malformed object");
            }
            self.last_skipped = skipped;
        }
        let text = render::transaction(&table);
        let digest: [u8; 32] = sha2::Sha256::digest(text.as_bytes()).into();
        if self.last_applied == Some(digest) {
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
                self.last_applied = Some(digest);
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
    observe: Observers,
) -> Result<()> {
    let _alive = observe.health.liveness_guard("sync");
    let mut events = EventSet::default();
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
        events
            .publish(
                observe.events.as_ref(),
                skipped_events(&resources, programmer.skipped()),
            )
            .await;

        if let Outcome::Failed(e) = outcome {
            let delay = backoff.next_delay();
            error!(error = %e, retry_in_s = delay.as_secs(), "nftables transaction failed; keeping the previous rules");
            // Changes during the wait are not lost: the retry reads the stores afresh.
            tokio::time::sleep(delay).await;
            continue;
        }
        backoff.reset();
        observe.health.set_ready();
        if !resources.changed().await {
            return Err(Error::SourceEnded);
        }
        tokio::time::sleep(DEBOUNCE).await;
    }
}

/// What the loop reports to besides logs: Events and readiness.
pub struct Observers {
    /// Where `SkippedService` Events go.
    pub events: Arc<dyn EventRecorder>,
    /// Ready after the first successful sync; not alive once the loop ends.
    pub health: Health,
}

/// One `SkippedService` Warning per skipped object, with its uid when the store has it.
fn skipped_events(resources: &Resources, skipped: &[Skipped]) -> Vec<Event> {
    skipped
        .iter()
        .map(|s| {
            let (kind, uid) = match s.kind {
                "EndpointSlice" => (
                    Kind::EndpointSlice,
                    resources
                        .endpoint_slices
                        .get(&ObjectRef::new(&s.name).within(&s.namespace))
                        .and_then(|o| o.metadata.uid.clone()),
                ),
                _ => (
                    Kind::Service,
                    resources
                        .services
                        .get(&ObjectRef::new(&s.name).within(&s.namespace))
                        .and_then(|o| o.metadata.uid.clone()),
                ),
            };
            let key = ObjectKey::namespaced(kind, &s.namespace, &s.name);
            Event::warning(
                key,
                REASON_SKIPPED,
                "Program",
                format!("left out of the node's service rules: {}", s.error),
            )
            .with_uid(uid)
        })
        .collect()
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
    fn metrics_use_kube_proxy_names_and_count_once_per_change() {
        use prometheus_client::encoding::text::encode;

        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let mut p = Programmer::new(
            "node-a",
            RecordingApply {
                fail_next: 1,
                ..Default::default()
            },
        )
        .with_metrics(metrics);
        let services = [mk_service("ns", "web")
            .cluster_ip("198.18.0.10")
            .port("http", 80)
            .build()];
        let mut slice = mk_slice("ns", "web-1", "web")
            .port("http", 8080)
            .ready("192.0.2.10", "node-a")
            .build();
        let triggered = k8s_openapi::jiff::Timestamp::now().to_string();
        slice.metadata.annotations = Some(
            [(ANNOTATION_LAST_CHANGE_TRIGGER_TIME.to_string(), triggered)]
                .into_iter()
                .collect(),
        );
        let mut old = mk_slice("ns", "web-2", "web")
            .port("http", 8080)
            .ready("192.0.2.11", "node-b")
            .build();
        old.metadata.annotations = Some(
            [(
                ANNOTATION_LAST_CHANGE_TRIGGER_TIME.to_string(),
                "2020-01-01T00:00:00Z".to_string(),
            )]
            .into_iter()
            .collect(),
        );
        let slices = [slice, old];
        assert!(matches!(p.sync(&services, &slices), Outcome::Failed(_)));
        assert!(matches!(p.sync(&services, &slices), Outcome::Applied));
        assert!(matches!(p.sync(&services, &slices), Outcome::Unchanged));

        let mut text = String::new();
        encode(&mut text, &registry).expect("encode");
        for line in [
            "kubeproxy_sync_proxy_rules_duration_seconds_count 3",
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total 1",
            // web-1 changed after start: observed once; web-2's change predates the process.
            "kubeproxy_network_programming_duration_seconds_count 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(
            !text.contains("kubeproxy_sync_proxy_rules_last_timestamp_seconds 0.0"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn skipped_objects_become_one_event_each() {
        use drawbridge_resources::events::RecordingEventRecorder;
        use drawbridge_resources::source::manifests;

        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("bad.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: ns, name: bad, uid: u-1}\n\
             spec: {clusterIP: not-an-ip, ports: [{port: 80}]}\n",
        )
        .expect("write");
        let source = manifests::start(
            dir.path().to_path_buf(),
            None,
            &[Kind::Service, Kind::EndpointSlice],
        )
        .await
        .expect("source");
        source.resources.wait_synced().await;
        let mut p = Programmer::new("node-a", RecordingApply::default());
        let recorder = RecordingEventRecorder::default();
        let mut set = EventSet::default();
        for _ in 0..2 {
            let services = source.resources.services.state();
            p.sync(services.iter().map(Arc::as_ref), []);
            set.publish(&recorder, skipped_events(&source.resources, p.skipped()))
                .await;
        }
        let events = recorder.events();
        assert_eq!(events.len(), 1, "{events:#?}");
        assert_eq!(events[0].reason, REASON_SKIPPED);
        assert_eq!(
            events[0].regarding,
            ObjectKey::namespaced(Kind::Service, "ns", "bad")
        );
        assert_eq!(events[0].uid.as_deref(), Some("u-1"));
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

//! What lb-controller tells operators: Prometheus metrics, Events, readiness.
//!
//! ```text
//!  reconcile() ── outcomes ──────────────► pool gauges (allocations, addresses assigned/available)
//!              ── status write result ───► drawbridge_lb_status_writes_total{result}
//!                   └ Ok(Failed)  ───────► drawbridge_lb_allocation_failures_total{reason}
//!                                          + Event AllocationFailed (Warning)  ┐ LastEvents: once
//!                   └ Ok(Allocated) ─────► Event IPAllocated (Normal)           ┘ per change
//!              ── elapsed ───────────────► drawbridge_lb_reconcile_duration_seconds
//! ```
//!
//! Events are published only after the status write for that outcome succeeded, so what an
//! operator reads in `kubectl describe service` always matches the Service's status.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use drawbridge_resources::ObjectKey;
use drawbridge_resources::events::{Event, EventRecorder, LastEvents, RecordingEventRecorder};
use drawbridge_resources::observe::Health;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::allocate::{FailureReason, Outcome, ServiceKey, describe};
use crate::pool::Pool;

/// Event reason: an address was written to the Service's status.
pub const REASON_ALLOCATED: &str = "IPAllocated";
/// Event reason: no address could be given; the note starts with the [`FailureReason`].
pub const REASON_ALLOCATION_FAILED: &str = "AllocationFailed";
/// Event reason: an address of ours was removed from a Service that is no longer ours.
pub const REASON_RELEASED: &str = "IPReleased";
/// Event action of all of the above.
pub const ACTION_ALLOCATE: &str = "Allocate";

type PoolLabel = [(&'static str, String); 1];

/// lb-controller's metrics (names in the README's "Metrics and health").
#[derive(Clone, Debug)]
pub struct Metrics {
    /// `drawbridge_lb_allocations{pool}`: Services holding an address from the pool.
    pub allocations: Family<PoolLabel, Gauge>,
    /// `drawbridge_lb_pool_addresses_available{pool}`: addresses the pool could still hand out.
    pub addresses_available: Family<PoolLabel, Gauge>,
    /// `drawbridge_lb_pool_addresses_assigned{pool}`: distinct addresses of the pool in use.
    pub addresses_assigned: Family<PoolLabel, Gauge>,
    /// `drawbridge_lb_allocation_failures_total{reason}`: failures written to a Service's status.
    pub allocation_failures: Family<[(&'static str, &'static str); 1], Counter>,
    /// `drawbridge_lb_reconcile_duration_seconds`: one full pass, writes included.
    pub reconcile_duration: Histogram,
    /// `drawbridge_lb_status_writes_total{result="success"|"error"}`.
    pub status_writes: Family<[(&'static str, &'static str); 1], Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            allocations: Family::default(),
            addresses_available: Family::default(),
            addresses_assigned: Family::default(),
            allocation_failures: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            status_writes: Family::default(),
        }
    }
}

impl Metrics {
    /// New metrics, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        registry.register(
            "drawbridge_lb_allocations",
            "Services holding an external address, by pool",
            m.allocations.clone(),
        );
        registry.register(
            "drawbridge_lb_pool_addresses_available",
            "Addresses a pool can still hand out (avoidBuggyIPs honoured)",
            m.addresses_available.clone(),
        );
        registry.register(
            "drawbridge_lb_pool_addresses_assigned",
            "Distinct addresses of a pool in use",
            m.addresses_assigned.clone(),
        );
        registry.register(
            "drawbridge_lb_allocation_failures",
            "Allocation failures written to a Service's status, by reason",
            m.allocation_failures.clone(),
        );
        registry.register(
            "drawbridge_lb_reconcile_duration_seconds",
            "Duration of one reconcile pass, status writes included",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "drawbridge_lb_status_writes",
            "Service status writes, by result",
            m.status_writes.clone(),
        );
        m
    }
}

/// Metrics, Events and readiness of the reconcile loop, in one value the loop owns.
pub struct Observe {
    /// Metric handles.
    pub metrics: Metrics,
    /// Where Events go.
    pub events: Arc<dyn EventRecorder>,
    /// Readiness: set after the first reconcile pass (or, on a standby replica, once synced).
    pub health: Health,
    last_events: LastEvents,
    known_pools: BTreeSet<String>,
}

impl Observe {
    /// The loop's observers (metrics from [`Metrics::register`]).
    pub fn new(metrics: Metrics, events: Arc<dyn EventRecorder>, health: Health) -> Self {
        Observe {
            metrics,
            events,
            health,
            last_events: LastEvents::default(),
            known_pools: BTreeSet::new(),
        }
    }

    /// Unregistered metrics, a recording Event fake; for tests.
    pub fn test() -> (Self, Arc<RecordingEventRecorder>) {
        let events = Arc::new(RecordingEventRecorder::default());
        let observe = Observe::new(Metrics::default(), events.clone(), Health::default());
        (observe, events)
    }

    /// Sets the pool gauges from this pass's outcomes; pools that disappeared lose their series.
    pub fn record_pools(&mut self, pools: &[Pool], outcomes: &BTreeMap<ServiceKey, Outcome>) {
        let mut allocations: BTreeMap<&str, i64> = BTreeMap::new();
        let mut assigned: BTreeMap<&str, BTreeSet<IpAddr>> = BTreeMap::new();
        for outcome in outcomes.values() {
            // A dual-stack Service counts once per pool it holds an address of; shared addresses
            // count once in `assigned`.
            let pools_of_service: BTreeSet<&str> = outcome
                .assignments()
                .iter()
                .map(|a| a.pool.as_str())
                .collect();
            for pool in pools_of_service {
                *allocations.entry(pool).or_default() += 1;
            }
            for a in outcome.assignments() {
                assigned.entry(a.pool.as_str()).or_default().insert(a.ip);
            }
        }
        let m = &self.metrics;
        let current: BTreeSet<String> = pools.iter().map(|p| p.name.clone()).collect();
        for gone in self.known_pools.difference(&current) {
            let label = [("pool", gone.clone())];
            m.allocations.remove(&label);
            m.addresses_available.remove(&label);
            m.addresses_assigned.remove(&label);
        }
        for pool in pools {
            let label = [("pool", pool.name.clone())];
            let used = assigned
                .get(pool.name.as_str())
                .map_or(0, |s| s.len() as u128);
            m.allocations
                .get_or_create(&label)
                .set(allocations.get(pool.name.as_str()).copied().unwrap_or(0));
            m.addresses_assigned
                .get_or_create(&label)
                .set(saturate(used));
            m.addresses_available
                .get_or_create(&label)
                .set(saturate(usable_addresses(pool).saturating_sub(used)));
        }
        self.known_pools = current;
    }

    /// Counts one status write and, when it succeeded, publishes the outcome's Event (once per
    /// change per Service) and counts a failure.
    pub async fn status_written(
        &mut self,
        service: ObjectKey,
        uid: Option<String>,
        outcome: &Outcome,
        ok: bool,
    ) {
        let result = if ok { "success" } else { "error" };
        self.metrics
            .status_writes
            .get_or_create(&[("result", result)])
            .inc();
        if !ok {
            return;
        }
        let event = match outcome {
            Outcome::Allocated { ips } => {
                Event::normal(service, REASON_ALLOCATED, ACTION_ALLOCATE, describe(ips))
            }
            Outcome::Failed { reason, message } => {
                self.metrics
                    .allocation_failures
                    .get_or_create(&[("reason", reason.as_str())])
                    .inc();
                Event::warning(
                    service,
                    REASON_ALLOCATION_FAILED,
                    ACTION_ALLOCATE,
                    failure_note(*reason, message),
                )
            }
            Outcome::Released => Event::normal(
                service,
                REASON_RELEASED,
                ACTION_ALLOCATE,
                "external address released",
            ),
        };
        self.last_events
            .publish(self.events.as_ref(), event.with_uid(uid))
            .await;
    }

    /// Forgets Event history of Services that no longer exist. `existing`: `(namespace, name)` of
    /// every Service (borrowed: this runs every pass over every Service, so no key is cloned).
    pub fn retain_services(&mut self, existing: &HashSet<(&str, &str)>) {
        self.last_events.retain(|k| {
            k.namespace
                .as_deref()
                .is_some_and(|ns| existing.contains(&(ns, k.name.as_str())))
        });
    }
}

/// `PoolExhausted: <message>`: the reason first, so it can be filtered on.
pub fn failure_note(reason: FailureReason, message: &str) -> String {
    format!("{}: {message}", reason.as_str())
}

fn saturate(n: u128) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Addresses `pool` can hand out: the size of its ranges, less IPv4 `.0`/`.255` addresses when
/// `avoidBuggyIPs` is set.
pub fn usable_addresses(pool: &Pool) -> u128 {
    pool.usable(true).saturating_add(pool.usable(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn pool(name: &str, ranges: &[&str], avoid_buggy_ips: bool) -> Pool {
        Pool {
            avoid_buggy_ips,
            ..Pool::test(name, ranges)
        }
    }

    #[test]
    fn usable_addresses_skip_buggy_ones() {
        assert_eq!(usable_addresses(&pool("p", &["192.0.2.0/24"], false)), 256);
        assert_eq!(usable_addresses(&pool("p", &["192.0.2.0/24"], true)), 254);
        assert_eq!(usable_addresses(&pool("p", &["192.0.2.0/23"], true)), 508);
        assert_eq!(
            usable_addresses(&pool("p", &["192.0.2.1-192.0.2.10"], true)),
            10
        );
        assert_eq!(usable_addresses(&pool("p", &["2001:db8::/120"], true)), 256);
    }
}

#[cfg(test)]
mod reconcile_tests {
    use std::collections::BTreeSet;

    use drawbridge_resources::source::{Kind, manifests};
    use drawbridge_resources::status::RecordingStatusWriter;
    use prometheus_client::encoding::text::encode;

    use super::*;
    use crate::controller::{Settings, reconcile};

    const WORLD: &str = r#"
apiVersion: drawbridge.dev/v1alpha1
kind: IPAddressPool
metadata: {name: tiny}
spec: {addresses: ["203.0.113.1/32"]}
---
apiVersion: v1
kind: Service
metadata: {namespace: default, name: first, uid: uid-first, creationTimestamp: "2024-01-01T00:00:00Z"}
spec: {type: LoadBalancer, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {namespace: default, name: second, uid: uid-second, creationTimestamp: "2024-01-02T00:00:00Z"}
spec: {type: LoadBalancer, ports: [{port: 80}]}
"#;

    #[tokio::test]
    async fn exhausted_pool_emits_allocation_failed_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("world.yaml"), WORLD).expect("write");
        let source = manifests::start(
            dir.path().to_path_buf(),
            None,
            &[Kind::Service, Kind::IPAddressPool],
        )
        .await
        .expect("source");
        source.resources.wait_synced().await;
        // The fake does not feed status back into the stores, so every pass writes again: the
        // Events must still come once.
        let status = RecordingStatusWriter::default();
        let (mut observe, events) = Observe::test();
        let mut registry = Registry::default();
        observe.metrics = Metrics::register(&mut registry);
        let (_tx, leader) = tokio::sync::watch::channel(true);
        let settings = Settings { class_less: true };
        for _ in 0..3 {
            let mut problems = BTreeSet::new();
            assert!(
                reconcile(
                    &source.resources,
                    &status,
                    &settings,
                    &mut problems,
                    &leader,
                    &mut observe
                )
                .await
            );
        }
        let service_patches = status
            .patches()
            .iter()
            .filter(|(k, _)| k.kind == Kind::Service)
            .count();
        assert_eq!(service_patches, 6, "two Services, three passes");
        let pool_patches: Vec<serde_json::Value> = status
            .patches()
            .into_iter()
            .filter(|(k, _)| k.kind == Kind::IPAddressPool)
            .map(|(_, p)| p)
            .collect();
        assert_eq!(
            pool_patches.len(),
            3,
            "one pool, three passes (the fake does not feed back)"
        );
        assert_eq!(pool_patches[0]["assignedIPv4"], 1);
        assert_eq!(pool_patches[0]["availableIPv4"], 0);
        let got: Vec<(String, &str, String, Option<String>)> = events
            .events()
            .into_iter()
            .map(|e| (e.regarding.name, e.reason, e.note, e.uid))
            .collect();
        // Failures are written before allocations (addresses are freed before they are given).
        assert_eq!(got.len(), 2, "{got:#?}");
        assert_eq!(got[0].0, "second");
        assert_eq!(got[0].1, REASON_ALLOCATION_FAILED);
        assert!(got[0].2.starts_with("PoolExhausted: "), "{}", got[0].2);
        assert_eq!(got[0].3.as_deref(), Some("uid-second"));
        assert_eq!(got[1].0, "first");
        assert_eq!(got[1].1, REASON_ALLOCATED);
        assert_eq!(got[1].2, "203.0.113.1 from IPAddressPool tiny");

        let mut text = String::new();
        encode(&mut text, &registry).expect("encode");
        for line in [
            r#"drawbridge_lb_allocations{pool="tiny"} 1"#,
            r#"drawbridge_lb_pool_addresses_assigned{pool="tiny"} 1"#,
            r#"drawbridge_lb_pool_addresses_available{pool="tiny"} 0"#,
            // Counted per successful write of the failure (the fake makes each pass write).
            r#"drawbridge_lb_allocation_failures_total{reason="PoolExhausted"} 3"#,
            r#"drawbridge_lb_status_writes_total{result="success"} 6"#,
            "drawbridge_lb_reconcile_duration_seconds_count 3",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn pool_gauges_count_every_assignment_and_shared_addresses_once() {
        use crate::allocate::Assignment;
        let a = |ip: &str, pool: &str| Assignment {
            ip: ip.parse().expect("ip"),
            pool: pool.into(),
        };
        let pool = super::tests::pool;
        let pools = [
            pool("lab", &["203.0.113.1-203.0.113.4"], true),
            pool("lab6", &["2001:db8::1-2001:db8::2"], true),
        ];
        let key = |n: &str| ("default".to_string(), n.to_string());
        let outcomes: BTreeMap<ServiceKey, Outcome> = [
            (
                key("dual"),
                Outcome::Allocated {
                    ips: vec![a("203.0.113.1", "lab"), a("2001:db8::1", "lab6")],
                },
            ),
            (
                key("shared"),
                Outcome::Allocated {
                    ips: vec![a("203.0.113.1", "lab")],
                },
            ),
            (
                key("single"),
                Outcome::Allocated {
                    ips: vec![a("203.0.113.2", "lab")],
                },
            ),
        ]
        .into();
        let (mut observe, _events) = Observe::test();
        let mut registry = Registry::default();
        observe.metrics = Metrics::register(&mut registry);
        observe.record_pools(&pools, &outcomes);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encode");
        for line in [
            r#"drawbridge_lb_allocations{pool="lab"} 3"#,
            r#"drawbridge_lb_pool_addresses_assigned{pool="lab"} 2"#,
            r#"drawbridge_lb_pool_addresses_available{pool="lab"} 2"#,
            r#"drawbridge_lb_allocations{pool="lab6"} 1"#,
            r#"drawbridge_lb_pool_addresses_assigned{pool="lab6"} 1"#,
            r#"drawbridge_lb_pool_addresses_available{pool="lab6"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}

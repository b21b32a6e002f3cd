//! The reconcile loop (edge ring): read the stores, run the pure allocator, write status diffs.
//!
//! ```text
//!   Resources::changed() ─┐
//!   retry / resync timer ─┼─> reconcile(): pools + Services ─allocate()─> outcomes
//!   leader gate (watch) ──┘       └─ desired_patch() per Service ─> StatusWriter (only differences;
//!                                    releases and failures before new allocations; only while
//!                                    the gate says leader)
//! ```
//!
//! The stores stay current on every replica (warm cache for a new leader); only the reconcile
//! passes, and therefore the writes, wait for the leader gate (see [`crate::leader`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use drawbridge_resources::status::StatusWriter;
use drawbridge_resources::{Kind, ObjectKey, Resources};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::watch;

use crate::allocate::{Outcome, ServiceKey, ServiceView, allocate, describe};
use crate::observe::Observe;
use crate::pool::Pool;
use crate::status::desired_patch;

/// Without any change, recompute this often anyway (seconds); cheap, and it repairs status edited
/// behind our back.
const RESYNC_SECS: u64 = 60;
/// After a failed write, retry this soon (seconds).
const RETRY_SECS: u64 = 1;
/// Coalesce bursts of changes (milliseconds).
const DEBOUNCE_MS: u64 = 10;

/// Settings of the loop.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Handle Services without `spec.loadBalancerClass` (MetalLB's default behaviour).
    pub class_less: bool,
}

/// Runs until the source ends or the leader gate closes. Never returns early on bad input or
/// write failures. `leader`: `true` while this replica may write (always `true` without election).
pub async fn run(
    mut resources: Resources,
    status: Arc<dyn StatusWriter>,
    settings: Settings,
    mut leader: watch::Receiver<bool>,
    mut observe: Observe,
) {
    let _alive = observe.health.liveness_guard("reconcile");
    resources.wait_synced().await;
    tracing::info!(class_less = settings.class_less, "lb-controller synced");
    let mut reported_problems = BTreeSet::new();
    loop {
        if !*leader.borrow_and_update() {
            // A synced standby is ready: it is what a rollout waits for.
            observe.health.set_ready();
            tracing::info!("not the leader; waiting for the lease before writing");
            if leader.wait_for(|is_leader| *is_leader).await.is_err() {
                return;
            }
            tracing::info!("leader; allocating");
        }
        let ok = reconcile(
            &resources,
            status.as_ref(),
            &settings,
            &mut reported_problems,
            &leader,
            &mut observe,
        )
        .await;
        observe.health.set_ready();
        let wait = Duration::from_secs(if ok { RESYNC_SECS } else { RETRY_SECS });
        tokio::select! {
            alive = resources.changed() => if !alive { return },
            gate = leader.changed() => if gate.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
        tokio::time::sleep(Duration::from_millis(DEBOUNCE_MS)).await;
    }
}

/// One level-triggered pass. Returns `false` if a write failed (retry soon). Stops writing the
/// moment `leader` turns `false` (lease lost mid-pass).
pub async fn reconcile(
    resources: &Resources,
    status: &dyn StatusWriter,
    settings: &Settings,
    reported_problems: &mut BTreeSet<String>,
    leader: &watch::Receiver<bool>,
    observe: &mut Observe,
) -> bool {
    let started = std::time::Instant::now();
    let pools: Vec<Pool> = resources
        .pools
        .state()
        .iter()
        .map(|p| Pool::from_object(p))
        .collect();
    for pool in &pools {
        for problem in &pool.problems {
            let line = format!("{}: {problem}", pool.name);
            if reported_problems.insert(line) {
                tracing::warn!(pool = %pool.name, %problem, "IPAddressPool entry skipped");
            }
        }
    }
    let services = resources.services.state();
    let views: Vec<ServiceView> = services
        .iter()
        .map(|s| ServiceView::from_service(s, settings.class_less))
        .collect();
    let outcomes = allocate(&pools, &views);
    observe.record_pools(&pools, &outcomes);
    observe.retain_services(&services.iter().map(|s| service_key(s)).collect());

    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut patches = Vec::new();
    for svc in &services {
        let key = service_key(svc);
        let Some(outcome) = outcomes.get(&key) else {
            continue;
        };
        if let Some(patch) = desired_patch(svc, outcome, &now) {
            patches.push((
                matches!(outcome, Outcome::Allocated { .. }),
                key,
                outcome,
                patch,
                svc.metadata.uid.clone(),
            ));
        }
    }
    // Free addresses before handing them to someone else.
    patches.sort_by_key(|(allocates, key, ..)| (*allocates, key.clone()));

    let mut ok = true;
    for (_, (namespace, name), outcome, patch, uid) in patches {
        if !*leader.borrow() {
            tracing::info!("lease lost; remaining status writes dropped");
            observe
                .metrics
                .reconcile_duration
                .observe(started.elapsed().as_secs_f64());
            return true;
        }
        let object = ObjectKey::namespaced(Kind::Service, &namespace, &name);
        let result = status.patch_status(object.clone(), patch).await;
        observe
            .status_written(object, uid, outcome, result.is_ok())
            .await;
        match (&result, outcome) {
            (Err(error), _) => {
                ok = false;
                tracing::warn!(%namespace, %name, error = %error, "status write failed; will retry");
            }
            (Ok(()), Outcome::Allocated { ips }) => {
                let addresses = describe(ips);
                tracing::info!(%namespace, %name, %addresses, "external address allocated");
            }
            (Ok(()), Outcome::Failed { reason, message }) => {
                tracing::warn!(%namespace, %name, reason = reason.as_str(), %message, "no external address");
            }
            (Ok(()), Outcome::Released) => {
                tracing::info!(%namespace, %name, "external address released")
            }
        }
    }
    observe
        .metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    ok
}

fn service_key(svc: &k8s_openapi::api::core::v1::Service) -> ServiceKey {
    (
        svc.metadata.namespace.clone().unwrap_or_default(),
        svc.metadata.name.clone().unwrap_or_default(),
    )
}

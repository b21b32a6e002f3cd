//! The reconcile loop (edge ring): read the stores, run the pure allocator, write claims and
//! status diffs.
//!
//! ```text
//!   Resources::changed() ─┐
//!   retry / resync timer ─┼─> reconcile(): pools + Services + claims ─allocate_with_claims()─> outcomes
//!   leader gate (watch) ──┘    1. claim::plan ─> ClaimStore: create / replace   (409 from someone
//!                                 else → add their claim, allocate again; ≤ 3 rounds)
//!                              2. desired_patch() per Service ─> StatusWriter (only differences;
//!                                 releases and failures first; never an address whose claim
//!                                 could not be made)
//!                              3. ClaimStore: delete released / orphan claims
//!                              4. IPAddressPool status (counts, Valid, Overlapping)
//!                              5. L2 announcement (with an AnnotationWriter): elect one node per
//!                                 LoadBalancer IP, write `drawbridge.dev/announcing-node`
//!                                 ([`crate::announce`])
//! ```
//!
//! Step 5 reads the Services as the stores show them, so an address written in step 2 is
//! announced in the pass its own watch event triggers (level-triggered, one pass later).
//!
//! The stores stay current on every replica (warm cache for a new leader); only the reconcile
//! passes, and therefore the writes, wait for the leader gate (see [`crate::leader`]). Claims are
//! listed at start, whenever this replica becomes the leader, and at every resync; in between the
//! leader is their only writer and keeps its index current from its own requests.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drawbridge_resources::crd::IPAddressClaim;
use drawbridge_resources::status::StatusWriter;
use drawbridge_resources::{Kind, ObjectKey, Resources};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::reflector::Store;
use tokio::sync::watch;

use crate::allocate::{Outcome, ServiceKey, ServiceView, allocate_with_claims, describe};
use crate::announce::{self, AnnotationWriter};
use crate::claim::{self, ExistingClaim};
use crate::claim_store::{ClaimStore, CreateResult, MemoryClaims};
use crate::observe::Observe;
use crate::pool::Pool;
use crate::pool_status::{desired_status, pool_statuses};
use crate::status::desired_patch;

/// Without any change, recompute this often anyway (seconds); cheap, and it repairs status edited
/// behind our back.
const RESYNC_SECS: u64 = 60;
/// After a failed write, retry this soon (seconds).
const RETRY_SECS: u64 = 1;
/// Coalesce bursts of changes (milliseconds).
const DEBOUNCE_MS: u64 = 10;

/// Kinds only the L2 announcement pass reads.
const ANNOUNCE_KINDS: [Kind; 3] = [Kind::Node, Kind::EndpointSlice, Kind::L2Announcement];

/// Rounds of "allocate, claim, someone else owns it, allocate again" in one pass.
const CLAIM_ROUNDS: usize = 3;

/// Settings of the loop.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Handle Services without `spec.loadBalancerClass` (MetalLB's default behaviour).
    pub class_less: bool,
}

/// Labels of Namespaces, for `serviceAllocation.namespaceSelector`.
#[derive(Clone, Default)]
pub enum Namespaces {
    /// Unknown: every Namespace has no labels (selectors with requirements match nothing).
    #[default]
    Unknown,
    /// Watched Namespaces (Kubernetes mode).
    Store(Store<Namespace>),
    /// A fixed map (standalone mode: the Namespace objects of the manifest directory at start,
    /// [`Namespaces::from_manifests`]).
    Fixed(BTreeMap<String, BTreeMap<String, String>>),
}

impl Namespaces {
    /// Labels of Namespace `name` (empty when unknown).
    pub fn labels(&self, name: &str) -> BTreeMap<String, String> {
        match self {
            Namespaces::Unknown => BTreeMap::new(),
            Namespaces::Store(store) => store
                .get(&kube::runtime::reflector::ObjectRef::new(name))
                .and_then(|ns| ns.metadata.labels.clone())
                .unwrap_or_default(),
            Namespaces::Fixed(map) => map.get(name).cloned().unwrap_or_default(),
        }
    }

    /// Standalone mode: the labels of every `kind: Namespace` (`apiVersion: v1`) document in the
    /// `*.yaml` / `*.yml` files below `dir` (recursively; hidden files and `skip`, the state
    /// directory, left out; `kind: List` unwrapped), read once at start — a Namespace added or
    /// relabelled later needs a restart. A file that does not parse is reported and skipped (the
    /// manifest source reports it too). Without any Namespace document every Namespace has no
    /// labels, as before.
    pub fn from_manifests(dir: &std::path::Path, skip: Option<&std::path::Path>) -> Namespaces {
        use serde::Deserialize as _;
        let mut map: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        let mut files = Vec::new();
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let hidden = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_none_or(|n| n.starts_with('.'));
                if hidden || skip.is_some_and(|s| path.starts_with(s)) {
                    continue;
                }
                if path.is_dir() {
                    stack.push(path);
                } else if matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml")
                ) {
                    files.push(path);
                }
            }
        }
        files.sort();
        for path in files {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for document in serde_yaml::Deserializer::from_str(&text) {
                let value = match serde_json::Value::deserialize(document) {
                    Ok(value) => value,
                    Err(error) => {
                        tracing::warn!(path = %path.display(), %error, "manifest file does not parse; its Namespaces are skipped");
                        break;
                    }
                };
                let items = match value.get("items").and_then(|i| i.as_array()) {
                    Some(items) => items.clone(),
                    None => vec![value],
                };
                for object in items {
                    let is_namespace = object.get("apiVersion").and_then(|v| v.as_str())
                        == Some("v1")
                        && object.get("kind").and_then(|v| v.as_str()) == Some("Namespace");
                    let Some(name) = object.pointer("/metadata/name").and_then(|v| v.as_str())
                    else {
                        continue;
                    };
                    if !is_namespace {
                        continue;
                    }
                    let labels = object
                        .pointer("/metadata/labels")
                        .and_then(|l| serde_json::from_value(l.clone()).ok())
                        .unwrap_or_default();
                    map.insert(name.to_string(), labels);
                }
            }
        }
        tracing::info!(
            namespaces = map.len(),
            "Namespace labels read from the manifest directory"
        );
        Namespaces::Fixed(map)
    }
}

/// The claims this replica knows, and where they live.
pub struct Claims {
    store: Arc<dyn ClaimStore>,
    /// By name; current as of the last list plus this replica's own requests.
    known: BTreeMap<String, IPAddressClaim>,
    listed_at: Option<Instant>,
}

impl Claims {
    /// An index over `store`, listed at the first reconcile.
    pub fn new(store: Arc<dyn ClaimStore>) -> Self {
        Claims {
            store,
            known: BTreeMap::new(),
            listed_at: None,
        }
    }

    /// Forces a fresh list at the next reconcile (leadership changed hands).
    pub fn invalidate(&mut self) {
        self.listed_at = None;
    }

    async fn refresh_if_stale(&mut self) -> bool {
        if self
            .listed_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(RESYNC_SECS))
        {
            return true;
        }
        match self.store.list().await {
            Ok(list) => {
                self.known = list
                    .into_iter()
                    .filter_map(|c| Some((c.metadata.name.clone()?, c)))
                    .collect();
                self.listed_at = Some(Instant::now());
                tracing::debug!(claims = self.known.len(), "IPAddressClaims listed");
                true
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot list IPAddressClaims; no writes until it works");
                false
            }
        }
    }

    fn all(&self) -> Vec<IPAddressClaim> {
        self.known.values().cloned().collect()
    }
}

/// [`run_with`] keeping claims in memory only (no uniqueness across restarts); for tests that are
/// about something else.
pub async fn run(
    resources: Resources,
    status: Arc<dyn StatusWriter>,
    settings: Settings,
    leader: watch::Receiver<bool>,
    observe: Observe,
) {
    let claims = Claims::new(Arc::new(MemoryClaims::default()));
    run_with(
        resources,
        status,
        claims,
        Namespaces::Unknown,
        settings,
        leader,
        observe,
    )
    .await
}

/// [`run_announcing`] without L2 announcement.
pub async fn run_with(
    resources: Resources,
    status: Arc<dyn StatusWriter>,
    claims: Claims,
    namespaces: Namespaces,
    settings: Settings,
    leader: watch::Receiver<bool>,
    observe: Observe,
) {
    run_announcing(
        resources, status, claims, namespaces, settings, leader, observe, None,
    )
    .await
}

/// Runs until the source ends or the leader gate closes. Never returns early on bad input or
/// write failures. `leader`: `true` while this replica may write (always `true` without election).
///
/// `announcer`: when set, every pass ends with an L2 announcement pass ([`announce::reconcile`]:
/// Nodes, EndpointSlices and L2Announcements from `resources`, so the source must have been
/// started with [`Kind::Node`], [`Kind::EndpointSlice`] and [`Kind::L2Announcement`]); its
/// writes, like all others, happen only while `leader` is `true`. Events go to `observe.events`.
#[allow(clippy::too_many_arguments)]
pub async fn run_announcing(
    mut resources: Resources,
    status: Arc<dyn StatusWriter>,
    mut claims: Claims,
    namespaces: Namespaces,
    settings: Settings,
    mut leader: watch::Receiver<bool>,
    mut observe: Observe,
    announcer: Option<Arc<dyn AnnotationWriter>>,
) {
    let _alive = observe.health.liveness_guard("reconcile");
    if announcer.is_some() {
        // Allocation never waits for the announcement kinds (a missing L2Announcement CRD must not
        // stop IP allocation); the announcement pass waits for them instead.
        let kinds: Vec<Kind> = resources
            .kinds()
            .iter()
            .copied()
            .filter(|k| !ANNOUNCE_KINDS.contains(k))
            .collect();
        resources.wait_synced_kinds(&kinds).await;
    } else {
        resources.wait_synced().await;
    }
    let mut announce_waiting_reported = false;
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
            // Another replica may have written claims meanwhile.
            claims.invalidate();
            tracing::info!("leader; allocating");
        }
        let ok = reconcile_with(
            &resources,
            status.as_ref(),
            &mut claims,
            &namespaces,
            &settings,
            &mut reported_problems,
            &leader,
            &mut observe,
        )
        .await;
        let announced = match &announcer {
            Some(writer) if ANNOUNCE_KINDS.iter().all(|k| resources.is_synced(*k)) => {
                announce_pass(&resources, writer.as_ref(), &observe, &leader).await
            }
            Some(_) => {
                // Never elect from a half-loaded world (no Nodes yet would remove every
                // annotation). Retried on every pass; a change in any store wakes the loop.
                if !announce_waiting_reported {
                    announce_waiting_reported = true;
                    tracing::warn!(
                        "L2 announcement waits for the first complete list of Nodes, \
                         EndpointSlices and L2Announcements (is the L2Announcement CRD installed?)"
                    );
                }
                false
            }
            None => true,
        };
        let ok = ok && announced;
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

/// One L2 announcement pass over the current stores (see [`announce::reconcile`]). Returns
/// `false` when a write failed (retry soon).
pub async fn announce_pass(
    resources: &Resources,
    writer: &dyn AnnotationWriter,
    observe: &Observe,
    leader: &watch::Receiver<bool>,
) -> bool {
    let (services, slices, nodes, announcements, pools) = (
        resources.services.state(),
        resources.endpoint_slices.state(),
        resources.nodes.state(),
        resources.l2_announcements.state(),
        resources.pools.state(),
    );
    let inputs = announce::Inputs {
        services: &services,
        slices: &slices,
        nodes: &nodes,
        announcements: &announcements,
        pools: &pools,
    };
    announce::reconcile(&inputs, writer, observe.events.as_ref(), leader).await
}

/// [`reconcile_with`] with claims in memory and no Namespace labels; for tests.
pub async fn reconcile(
    resources: &Resources,
    status: &dyn StatusWriter,
    settings: &Settings,
    reported_problems: &mut BTreeSet<String>,
    leader: &watch::Receiver<bool>,
    observe: &mut Observe,
) -> bool {
    let mut claims = Claims::new(Arc::new(MemoryClaims::default()));
    reconcile_with(
        resources,
        status,
        &mut claims,
        &Namespaces::Unknown,
        settings,
        reported_problems,
        leader,
        observe,
    )
    .await
}

/// One level-triggered pass. Returns `false` if a write failed (retry soon). Stops writing the
/// moment `leader` turns `false` (lease lost mid-pass).
#[allow(clippy::too_many_arguments)]
pub async fn reconcile_with(
    resources: &Resources,
    status: &dyn StatusWriter,
    claims: &mut Claims,
    namespaces: &Namespaces,
    settings: &Settings,
    reported_problems: &mut BTreeSet<String>,
    leader: &watch::Receiver<bool>,
    observe: &mut Observe,
) -> bool {
    let started = std::time::Instant::now();
    if !claims.refresh_if_stale().await {
        return false;
    }
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
    let mut ns_labels: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let views: Vec<ServiceView> = services
        .iter()
        .map(|s| {
            let mut view = ServiceView::from_service(s, settings.class_less);
            view.namespace_labels = ns_labels
                .entry(view.key.0.clone())
                .or_insert_with(|| namespaces.labels(&view.key.0))
                .clone();
            view
        })
        .collect();

    // 1. Claims before status: allocate, claim what is new; if someone else owns an address,
    // learn their claim and allocate again.
    let mut ok = true;
    let mut unclaimed: BTreeSet<IpAddr> = BTreeSet::new();
    let mut outcomes = BTreeMap::new();
    let mut plan = claim::ClaimPlan::default();
    for round in 1..=CLAIM_ROUNDS {
        let claim_views: Vec<_> = claims.known.values().filter_map(claim::view).collect();
        outcomes = allocate_with_claims(&pools, &views, &claim_views);
        plan = claim::plan(&claims.all(), &views, &outcomes);
        unclaimed.clear();
        let mut conflict = false;
        let todo = plan
            .replace
            .iter()
            .map(|c| (true, c))
            .chain(plan.create.iter().map(|c| (false, c)));
        for (replace, wanted) in todo {
            if !*leader.borrow() {
                tracing::info!("lease lost; claims and status writes dropped");
                return true;
            }
            let name = wanted.metadata.name.clone().unwrap_or_default();
            let ip = claim::view(wanted).map(|v| v.ip);
            let made = claim_one(claims, wanted, replace, &views, &outcomes).await;
            match made {
                Ok(true) => {}
                Ok(false) => {
                    // Unclaimed unless the next round (which knows this claim) settles it.
                    conflict = true;
                    unclaimed.extend(ip);
                    tracing::warn!(claim = %name, round, "address claimed by another Service; allocating again");
                }
                Err(error) => {
                    ok = false;
                    unclaimed.extend(ip);
                    tracing::warn!(claim = %name, error = %error, "cannot claim address; its Service waits");
                }
            }
        }
        if !conflict {
            break;
        }
        if round == CLAIM_ROUNDS {
            ok = false;
        }
    }
    observe.record_pools(&pools, &outcomes);
    observe.retain_services(
        &services
            .iter()
            .map(|s| {
                let m = &s.metadata;
                (
                    m.namespace.as_deref().unwrap_or_default(),
                    m.name.as_deref().unwrap_or_default(),
                )
            })
            .collect(),
    );

    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut patches = Vec::new();
    let current: BTreeMap<&ServiceKey, &ServiceView> = views.iter().map(|v| (&v.key, v)).collect();
    for svc in &services {
        let key = service_key(svc);
        let Some(outcome) = outcomes.get(&key) else {
            continue;
        };
        let shows = |ip: &IpAddr| current.get(&key).is_some_and(|v| v.current.contains(ip));
        if outcome
            .assignments()
            .iter()
            .any(|a| unclaimed.contains(&a.ip) && !shows(&a.ip))
        {
            continue; // its claim is not made yet: never show an unclaimed address
        }
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

    let mut written: BTreeSet<ServiceKey> = BTreeSet::new();
    let mut write_failed: BTreeSet<ServiceKey> = BTreeSet::new();
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
        if result.is_ok() {
            written.insert((namespace.clone(), name.clone()));
        } else {
            write_failed.insert((namespace.clone(), name.clone()));
        }
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

    // 3. Release claims nobody should hold, once no Service shows the address any more.
    for (name, owner) in &plan.delete {
        if !*leader.borrow() {
            break;
        }
        let ip = drawbridge_resources::crd::claim_address(name);
        let still_shown = current
            .get(owner)
            .is_some_and(|v| ip.is_some_and(|ip| v.current.contains(&ip)));
        if write_failed.contains(owner) || (still_shown && !written.contains(owner)) {
            continue;
        }
        match claims.store.delete(name.clone()).await {
            Ok(()) => {
                claims.known.remove(name);
                tracing::debug!(claim = %name, "IPAddressClaim released");
            }
            Err(error) => {
                ok = false;
                tracing::warn!(claim = %name, error = %error, "cannot delete IPAddressClaim; will retry");
            }
        }
    }

    // 4. Pool status.
    let observed: BTreeMap<String, _> = resources
        .pools
        .state()
        .iter()
        .filter_map(|p| Some((p.metadata.name.clone()?, p.status.clone()?)))
        .collect();
    let stamp = now.0.to_string();
    for (name, desired) in pool_statuses(&pools, &outcomes, &observed, &stamp) {
        let Some(patch) = desired_status(&desired, observed.get(&name)) else {
            continue;
        };
        if !*leader.borrow() {
            break;
        }
        let object = ObjectKey::cluster(Kind::IPAddressPool, &name);
        if let Err(error) = status.patch_status(object, patch).await {
            ok = false;
            tracing::warn!(pool = %name, error = %error, "IPAddressPool status write failed; will retry");
        }
    }

    observe
        .metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    ok
}

/// Makes `wanted` exist (deleting the claim it replaces first). `Ok(false)`: another live Service
/// owns the address (its claim is now in the index).
async fn claim_one(
    claims: &mut Claims,
    wanted: &IPAddressClaim,
    replace: bool,
    views: &[ServiceView],
    outcomes: &BTreeMap<ServiceKey, Outcome>,
) -> crate::claim_store::Result<bool> {
    let name = claim::claim_name_of(wanted);
    if replace {
        claims.store.delete(name.clone()).await?;
        claims.known.remove(&name);
    }
    // One retry: an orphan found on the way is removed and the create repeated.
    for _ in 0..2 {
        match claims.store.create(wanted.clone()).await? {
            CreateResult::Created => {
                claims.known.insert(name, wanted.clone());
                return Ok(true);
            }
            CreateResult::Exists(existing) => {
                match claim::existing_is_ours(&existing, wanted, views, outcomes) {
                    ExistingClaim::Ours => {
                        claims.known.insert(name, *existing);
                        return Ok(true);
                    }
                    ExistingClaim::Foreign => {
                        claims.known.insert(name, *existing);
                        return Ok(false);
                    }
                    ExistingClaim::Orphan => {
                        claims.store.delete(name.clone()).await?;
                        claims.known.remove(&name);
                    }
                }
            }
        }
    }
    Ok(false)
}

fn service_key(svc: &k8s_openapi::api::core::v1::Service) -> ServiceKey {
    (
        svc.metadata.namespace.clone().unwrap_or_default(),
        svc.metadata.name.clone().unwrap_or_default(),
    )
}

#[cfg(test)]
mod namespace_tests {
    use super::*;

    #[test]
    fn namespaces_are_read_from_the_manifest_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        std::fs::create_dir_all(dir.path().join("sub")).expect("mkdir");
        std::fs::create_dir_all(state.join("namespaces")).expect("mkdir");
        std::fs::write(
            dir.path().join("ns.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a, labels: {tier: web}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: team-b, labels: {tier: wrong}}\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("sub/list.yml"),
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  \
             metadata: {name: team-c}\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("broken.yaml"), "kind: [unclosed\n").expect("write");
        std::fs::write(
            dir.path().join(".hidden.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: hidden}\n",
        )
        .expect("write");
        std::fs::write(
            state.join("namespaces/x.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: in-state}\n",
        )
        .expect("write");
        let Namespaces::Fixed(map) = Namespaces::from_manifests(dir.path(), Some(&state)) else {
            panic!("a fixed map");
        };
        let names: Vec<&str> = map.keys().map(String::as_str).collect();
        assert_eq!(names, ["team-a", "team-c"]);
        let ns = Namespaces::Fixed(map);
        assert_eq!(
            ns.labels("team-a").get("tier").map(String::as_str),
            Some("web")
        );
        assert!(ns.labels("team-c").is_empty());
        assert!(
            ns.labels("team-b").is_empty(),
            "a Service is not a Namespace"
        );
    }
}

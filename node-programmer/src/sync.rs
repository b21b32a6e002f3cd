//! The loop: wait until Services and EndpointSlices are listed once, then on every change tick
//! recompute the desired table of each IP family and hand it to that family's [`Proxier`], which
//! writes only the difference from what it last applied (level-triggered, idempotent;
//! service-proxy.md §1.0, §1.18, §2.5).
//!
//! ```text
//!  Resources::changed() ─(debounce 10 ms)─┐   (or a stale-chain deadline)
//!                                         ▼
//!  Programmer::sync ── for each family: ServiceTable::build_for ─> Proxier::sync
//!                                                                   ├ Unchanged: nothing sent
//!                                                                   ├ Partial / Full: one transaction
//!                                                                   └ Err: log, back off, next one is full
//! ```
//!
//! Observability (kube-proxy's metric names, so existing dashboards and alerts work unchanged):
//! `kubeproxy_sync_proxy_rules_duration_seconds` (+ `_full_` / `_partial_` variants),
//! `kubeproxy_sync_proxy_rules_last_timestamp_seconds`,
//! `kubeproxy_sync_proxy_rules_nftables_sync_failures_total`,
//! `kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy}` and
//! `kubeproxy_network_programming_duration_seconds` (from the EndpointSlice annotation
//! `endpoints.kubernetes.io/last-change-trigger-time`). Malformed Services and EndpointSlices get
//! one `SkippedService` Warning Event each (again only when the problem changes). `/readyz` turns
//! 200 after the first successful sync.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use drawbridge_resources::events::{Event, EventRecorder, EventSet};
use drawbridge_resources::observe::{Health, unix_now};
use drawbridge_resources::{Kind, ObjectKey, Resources};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::ObjectRef;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::{error, info, warn};

use crate::apply::Apply;
use crate::conntrack::UdpServicePort;
use crate::health::{self, ProxyHealth, ServiceHealth};
use crate::iptables::{self, IptablesProxier};
use crate::model::Protocol;
use crate::model::{IpFamily, NodeContext, ServiceTable, Skipped, TrafficPolicy};
use crate::nftables::{NftProxier, SyncKind};
use crate::render::{self, NodePortAddresses};
use ipnet::IpNet;

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
    /// Every family's kernel state already matched: nothing was sent.
    Unchanged,
    /// At least one transaction was applied, none failed.
    Applied,
    /// A transaction failed; that family's previous rules stay in force and its next sync is a
    /// full one.
    Failed(ProxierError),
}

/// A backend's failure, boxed so nftables and iptables backends share the loop.
pub type ProxierError = Box<dyn std::error::Error + Send + Sync>;

/// One backend instance owning one IP family's rules (nftables table or iptables chains).
///
/// Contract (service-proxy.md §2.5): `sync` brings the kernel to `table` with one atomic
/// transaction, sends nothing when nothing changed, and after an error does a full resync next
/// time. `next_wakeup` asks for a sync without a change (stale chains due for deletion).
pub trait Proxier: Send {
    /// The family this instance programs.
    fn family(&self) -> IpFamily;
    /// Brings the kernel to `table`.
    ///
    /// # Errors
    /// The backend's transaction failed; nothing changed.
    fn sync(&mut self, table: &ServiceTable, now: Instant) -> Result<SyncKind, ProxierError>;
    /// When a sync is due without a change, if ever.
    fn next_wakeup(&self) -> Option<Instant> {
        None
    }
    /// Where NodePorts are accepted from now on (resolved from `--nodeport-addresses` and the
    /// Node); a change takes effect at the next sync.
    fn set_nodeport_addresses(&mut self, _addresses: NodePortAddresses) {}
}

/// The iptables backend as a [`Proxier`] (`--proxy-mode iptables`).
pub struct IptablesBackend<R> {
    family: IpFamily,
    inner: IptablesProxier<R>,
}

impl<R: iptables::Runner> IptablesBackend<R> {
    /// The iptables proxier of `family` driving `runner`.
    pub fn new(runner: R, family: IpFamily) -> Self {
        let inner_family = match family {
            IpFamily::V4 => iptables::Family::V4,
            IpFamily::V6 => iptables::Family::V6,
        };
        IptablesBackend {
            family,
            inner: IptablesProxier::new(runner, inner_family),
        }
    }

    /// The same backend with a `--cluster-cidr` local-traffic detector.
    pub fn with_local_traffic(mut self, cidrs: Vec<IpNet>) -> Self {
        let mut options = self.inner.options().clone();
        options.local_traffic = cidrs;
        self.inner.set_options(options);
        self
    }

    /// The wrapped proxier.
    pub fn inner(&self) -> &IptablesProxier<R> {
        &self.inner
    }
}

impl<R: iptables::Runner + Send> Proxier for IptablesBackend<R> {
    fn family(&self) -> IpFamily {
        self.family
    }

    fn sync(&mut self, table: &ServiceTable, _now: Instant) -> Result<SyncKind, ProxierError> {
        match self.inner.sync(table) {
            Ok(iptables::SyncKind::Unchanged) => Ok(SyncKind::Unchanged),
            Ok(iptables::SyncKind::Partial) => Ok(SyncKind::Partial {
                changed_ports: 0,
                bytes: 0,
            }),
            Ok(iptables::SyncKind::Full) => Ok(SyncKind::Full { bytes: 0 }),
            Err(e) => Err(Box::new(e)),
        }
    }

    fn set_nodeport_addresses(&mut self, addresses: NodePortAddresses) {
        let mut options = self.inner.options().clone();
        options.nodeport_addresses = addresses;
        self.inner.set_options(options);
    }
}

/// The healthCheckNodePort servers wanted after a sync (§1.7): one per Service with a
/// `healthCheckNodePort` (eTP=Local LoadBalancer), with its Ready local endpoint count (the
/// largest over its ports and families). Sorted by namespace/name.
pub fn service_health(tables: &[ServiceTable]) -> Vec<ServiceHealth> {
    let mut by_service: BTreeMap<(String, String), ServiceHealth> = BTreeMap::new();
    for port in tables.iter().flat_map(|t| &t.ports) {
        let Some(health_check_node_port) = port.health_check_node_port else {
            continue;
        };
        let entry = by_service
            .entry((port.id.namespace.clone(), port.id.name.clone()))
            .or_insert_with(|| ServiceHealth {
                namespace: port.id.namespace.clone(),
                name: port.id.name.clone(),
                health_check_node_port,
                local_ready_endpoints: 0,
            });
        entry.local_ready_endpoints = entry.local_ready_endpoints.max(port.local_ready_endpoints);
    }
    by_service.into_values().collect()
}

/// The UDP Service ports whose stale conntrack entries are deleted after a sync (§1.16): ports
/// with at least one usable endpoint; frontends are the ClusterIP, externalIPs and LB IPs.
pub fn udp_service_ports(tables: &[ServiceTable]) -> Vec<UdpServicePort> {
    let mut out = Vec::new();
    for port in tables.iter().flat_map(|t| &t.ports) {
        if port.id.protocol != Protocol::Udp {
            continue;
        }
        let serving: std::collections::BTreeSet<std::net::IpAddr> = port
            .cluster_endpoints
            .iter()
            .chain(&port.local_endpoints)
            .map(|e| e.ip)
            .collect();
        if serving.is_empty() {
            continue;
        }
        let mut ips = vec![port.cluster_ip];
        ips.extend(&port.external_ips);
        ips.extend(&port.load_balancer_ips);
        out.push(UdpServicePort {
            service: port.id.to_string(),
            ips,
            port: port.port,
            node_port: port.node_port.unwrap_or(0),
            serving_endpoints: serving,
        });
    }
    out
}

/// `--nodeport-addresses` (service-proxy.md §1.3; kube-proxy nftables default `primary`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortPolicy {
    /// The Node's InternalIPs; every non-loopback local address until the Node is known.
    #[default]
    Primary,
    /// Every local address except loopback.
    All,
    /// Local addresses inside these CIDRs.
    Cidrs(Vec<IpNet>),
}

impl std::str::FromStr for NodePortPolicy {
    type Err = ipnet::AddrParseError;

    /// `primary`, `all`, or comma-separated CIDRs.
    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        match text.trim() {
            "primary" | "" => Ok(NodePortPolicy::Primary),
            "all" => Ok(NodePortPolicy::All),
            list => list
                .split(',')
                .map(|c| c.trim().parse::<IpNet>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map(NodePortPolicy::Cidrs),
        }
    }
}

impl NodePortPolicy {
    /// What the rules should accept for `node`.
    pub fn resolve(&self, node: &NodeContext) -> NodePortAddresses {
        match self {
            NodePortPolicy::All => NodePortAddresses::AllLocal,
            NodePortPolicy::Cidrs(cidrs) => NodePortAddresses::Cidrs(cidrs.clone()),
            NodePortPolicy::Primary if node.internal_ips.is_empty() => NodePortAddresses::AllLocal,
            NodePortPolicy::Primary => NodePortAddresses::Cidrs(
                node.internal_ips
                    .iter()
                    .map(|ip| IpNet::from(*ip))
                    .collect(),
            ),
        }
    }
}

impl<A: Apply + Send> Proxier for NftProxier<A> {
    fn family(&self) -> IpFamily {
        self.options().family
    }

    fn sync(&mut self, table: &ServiceTable, now: Instant) -> Result<SyncKind, ProxierError> {
        NftProxier::sync(self, table, now).map_err(|e| Box::new(e) as ProxierError)
    }

    fn next_wakeup(&self) -> Option<Instant> {
        NftProxier::next_wakeup(self)
    }

    fn set_nodeport_addresses(&mut self, addresses: NodePortAddresses) {
        let mut options = self.options().clone();
        options.nodeport_addresses = addresses;
        self.set_options(options);
    }
}

impl Proxier for Box<dyn Proxier> {
    fn family(&self) -> IpFamily {
        (**self).family()
    }

    fn sync(&mut self, table: &ServiceTable, now: Instant) -> Result<SyncKind, ProxierError> {
        (**self).sync(table, now)
    }

    fn next_wakeup(&self) -> Option<Instant> {
        (**self).next_wakeup()
    }

    fn set_nodeport_addresses(&mut self, addresses: NodePortAddresses) {
        (**self).set_nodeport_addresses(addresses);
    }
}

/// Synchronous core of the loop: desired state per family → its [`Proxier`]. Owns the
/// proxiers and what was last reported.
pub struct Programmer<P> {
    node: NodeContext,
    /// `--nodeport-addresses`, resolved against `node` at every sync.
    nodeport_policy: NodePortPolicy,
    /// One per IP family (IPv4 first).
    proxiers: Vec<P>,
    /// The tables last handed to the proxiers, per family (health-check servers and conntrack
    /// cleanup read them after a sync).
    tables: Vec<ServiceTable>,
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
    /// `kubeproxy_sync_full_proxy_rules_duration_seconds`: syncs that rewrote a whole table.
    pub sync_full_duration: Histogram,
    /// `kubeproxy_sync_partial_proxy_rules_duration_seconds`: syncs that wrote only changes.
    pub sync_partial_duration: Histogram,
    /// `kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy="internal"|"external"}`:
    /// Service ports with a Local policy and no local endpoint (their traffic is dropped here).
    pub no_local_endpoints: Family<NoLocalLabels, Gauge>,
}

/// Label of `kubeproxy_sync_proxy_rules_no_local_endpoints_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NoLocalLabels {
    /// `internal` (internalTrafficPolicy) or `external` (externalTrafficPolicy).
    pub traffic_policy: &'static str,
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
            sync_full_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            sync_partial_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            no_local_endpoints: Family::default(),
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
        registry.register(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            m.sync_full_duration.clone(),
        );
        registry.register(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            m.sync_partial_duration.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_no_local_endpoints",
            "Number of services with a Local traffic policy and no endpoints",
            m.no_local_endpoints.clone(),
        );
        m
    }
}

impl<A: Apply + Send> Programmer<NftProxier<A>> {
    /// An IPv4-only nftables programmer for node `node_name` (endpoints with this `nodeName` are
    /// local), applying through `applier`.
    pub fn new(node_name: impl Into<String>, applier: A) -> Self {
        Programmer::with_proxiers(
            NodeContext::named(node_name),
            vec![NftProxier::new(render::Options::default(), applier)],
        )
    }

    /// The first proxier's applier (tests inspect the fake).
    pub fn applier(&self) -> &A {
        self.proxiers[0].applier()
    }

    /// The first proxier's applier, mutably (tests inject failures).
    pub fn applier_mut(&mut self) -> &mut A {
        self.proxiers[0].applier_mut()
    }
}

impl<P: Proxier> Programmer<P> {
    /// A programmer for `node` driving `proxiers` (one per family).
    pub fn with_proxiers(node: NodeContext, proxiers: Vec<P>) -> Self {
        Programmer {
            node,
            nodeport_policy: NodePortPolicy::All,
            tables: proxiers.iter().map(|_| ServiceTable::default()).collect(),
            proxiers,
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

    /// The same programmer accepting NodePorts per `policy` (default in tests: every local
    /// address but loopback).
    pub fn with_nodeport_policy(mut self, policy: NodePortPolicy) -> Self {
        self.nodeport_policy = policy;
        self
    }

    /// Objects left out by the last sync, and why.
    pub fn skipped(&self) -> &[Skipped] {
        &self.last_skipped
    }

    /// The proxiers, one per family.
    pub fn proxiers(&self) -> &[P] {
        &self.proxiers
    }

    /// The tables of the last sync, one per proxier (same order).
    pub fn tables(&self) -> &[ServiceTable] {
        &self.tables
    }

    /// Updates what the model knows about this node (zone label for topology hints); takes
    /// effect at the next sync.
    pub fn set_node(&mut self, node: NodeContext) {
        self.node = node;
    }

    /// The earliest time a proxier wants a sync without a change.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.proxiers.iter().filter_map(P::next_wakeup).min()
    }

    /// One pass over the current world, every family.
    pub fn sync<'a>(
        &mut self,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> Outcome {
        let started = Instant::now();
        let services: Vec<&Service> = services.into_iter().collect();
        let slices: Vec<&EndpointSlice> = slices.into_iter().collect();
        let mut outcome = Outcome::Unchanged;
        let mut all_skipped = Vec::new();
        let mut full = false;
        let mut no_local = (0i64, 0i64);
        let nodeports = self.nodeport_policy.resolve(&self.node);
        for i in 0..self.proxiers.len() {
            self.proxiers[i].set_nodeport_addresses(nodeports.clone());
            let family = self.proxiers[i].family();
            let (table, skipped) = ServiceTable::build_for(
                services.iter().copied(),
                slices.iter().copied(),
                &self.node,
                family,
            );
            all_skipped.extend(skipped);
            for port in &table.ports {
                if port.internal_policy == TrafficPolicy::Local && port.local_endpoints.is_empty() {
                    no_local.0 += 1;
                }
                if port.external_policy == TrafficPolicy::Local && port.local_endpoints.is_empty() {
                    no_local.1 += 1;
                }
            }
            match self.proxiers[i].sync(&table, Instant::now()) {
                Ok(SyncKind::Unchanged) => {}
                Ok(kind) => {
                    full |= matches!(kind, SyncKind::Full { .. });
                    info!(
                        family = ?family,
                        service_ports = table.ports.len(),
                        ?kind,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "programmed Service rules"
                    );
                    if !matches!(outcome, Outcome::Failed(_)) {
                        outcome = Outcome::Applied;
                    }
                }
                Err(e) => outcome = Outcome::Failed(e),
            }
            self.tables[i] = table;
        }
        if all_skipped != self.last_skipped {
            for s in &all_skipped {
                warn!(kind = s.kind, namespace = %s.namespace, name = %s.name, error = %s.error, "skipping malformed object");
            }
            self.last_skipped = all_skipped;
        }
        let elapsed = started.elapsed().as_secs_f64();
        self.metrics.sync_duration.observe(elapsed);
        match &outcome {
            Outcome::Failed(_) => {
                self.metrics.nftables_sync_failures.inc();
            }
            Outcome::Applied | Outcome::Unchanged => {
                if matches!(outcome, Outcome::Applied) {
                    if full {
                        self.metrics.sync_full_duration.observe(elapsed);
                    } else {
                        self.metrics.sync_partial_duration.observe(elapsed);
                    }
                }
                let now = unix_now();
                self.metrics.last_sync_timestamp.set(now);
                self.observe_programming(&slices, now);
                self.metrics
                    .no_local_endpoints
                    .get_or_create(&NoLocalLabels {
                        traffic_policy: "internal",
                    })
                    .set(no_local.0);
                self.metrics
                    .no_local_endpoints
                    .get_or_create(&NoLocalLabels {
                        traffic_policy: "external",
                    })
                    .set(no_local.1);
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
/// Besides change ticks, the loop wakes when a proxier asks (stale chains due for deletion).
/// When the source carries Nodes, this node's `topology.kubernetes.io/zone` label feeds topology
/// hints (§1.14).
pub async fn run<P: Proxier + 'static>(
    mut resources: Resources,
    programmer: Programmer<P>,
    observe: Observers<P>,
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
        if let Some(proxy_health) = &observe.proxy_health
            && let Some(node) = resources.nodes.get(&ObjectRef::new(&programmer.node.name))
        {
            proxy_health.set_node_eligible(health::node_eligible(&node));
        }
        let node = node_context(&resources, &programmer.node.name);
        if node != programmer.node {
            info!(zone = ?node.zone, "node topology changed");
            programmer.set_node(node);
        }
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
        if let Some(after_sync) = &observe.after_sync {
            after_sync(
                &programmer,
                &resources,
                !matches!(outcome, Outcome::Failed(_)),
            );
        }

        if let Outcome::Failed(e) = outcome {
            let delay = backoff.next_delay();
            error!(error = %e, retry_in_s = delay.as_secs(), "rules transaction failed; keeping the previous rules");
            // Changes during the wait are not lost: the retry reads the stores afresh.
            tokio::time::sleep(delay).await;
            continue;
        }
        backoff.reset();
        observe.health.set_ready();
        if let Some(proxy_health) = &observe.proxy_health {
            proxy_health.updated();
        }
        let wakeup = programmer.next_wakeup();
        tokio::select! {
            changed = resources.changed() => {
                if !changed {
                    return Err(Error::SourceEnded);
                }
                if let Some(proxy_health) = &observe.proxy_health {
                    proxy_health.queued();
                }
                tokio::time::sleep(DEBOUNCE).await;
            }
            () = sleep_until(wakeup) => {}
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// This node as the model sees it: its name, and its zone label when the Node is known.
fn node_context(resources: &Resources, name: &str) -> NodeContext {
    let node = resources.nodes.get(&ObjectRef::new(name));
    let zone = node.as_ref().and_then(|node| {
        node.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("topology.kubernetes.io/zone").cloned())
    });
    let internal_ips = node
        .as_ref()
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    NodeContext {
        name: name.to_string(),
        zone,
        internal_ips,
    }
}

/// Called after every sync with the programmer (its last tables) and whether the sync
/// succeeded; runs on the async task, so it must not block (hand work to a task).
pub type AfterSync<P> = Box<dyn Fn(&Programmer<P>, &Resources, bool) + Send + Sync>;

/// What the loop reports to besides logs: Events, readiness, and an after-sync hook.
pub struct Observers<P> {
    /// Where `SkippedService` Events go.
    pub events: Arc<dyn EventRecorder>,
    /// Ready after the first successful sync; not alive once the loop ends.
    pub health: Health,
    /// Health-check servers, conntrack cleanup: whatever follows a sync.
    pub after_sync: Option<AfterSync<P>>,
    /// kube-proxy's `/healthz` / `/livez` state: `queued()` on every change, `updated()` after
    /// every successful sync, node eligibility from the Node (§1.8).
    pub proxy_health: Option<ProxyHealth>,
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

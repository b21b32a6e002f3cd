//! L2 announcement: which node answers ARP / NDP for each allocated LoadBalancer IP.
//!
//! ```text
//!  Nodes ───────────┐                 ┌──────────────── pure ────────────────┐
//!  L2Announcements ─┤                 │ eligible(ip) = Ready ∧ ¬NetworkUnavailable
//!  IPAddressPools ──┼─> views ──────> │   ∧ ¬exclude-from-external-load-balancers
//!  EndpointSlices ──┤                 │   ∧ ∃ L2Announcement covering ip's pool and
//!  Services ────────┘                 │     matching the node ∧ (ETP=Local ⇒ ready local endpoint)
//!                                     │ elect(ip) = argmin sha256(node "#" ip) over eligible
//!                                     │ rank(ip) = eligible sorted by that score
//!                                     └─> desired annotations `drawbridge.dev/announcing-node`
//!                                         (the first) + `drawbridge.dev/announcing-candidates`
//!                                         (the whole ranking) │ only differences, only while leader
//!                          AnnotationWriter (metadata merge patch) + Event AnnouncingNodeChanged
//! ```
//!
//! The election is stateless and deterministic (MetalLB's speaker does the same: sort the
//! candidate nodes by sha256(node + IP), the first wins — `shared/reference/lb-controller.md`,
//! "Announcing"). Rendezvous hashing means a node joining or leaving moves only the IPs it wins or
//! held, never reshuffles the rest. Services sharing an IP elect the same node for it because the
//! key is the IP, not the Service.
//!
//! The annotation value is the node name when every announced IP of the Service has the same
//! announcer (the usual case), else a comma list `IP=node,...` (dual-stack Services whose two IPs
//! elect different nodes). node-programmer parses both ([`parse_annotation`] is the reference).
//! No eligible node: the annotation is removed and a `NoAnnouncingNode` Warning Event says why.
//!
//! The whole ranking is published too, in [`ANNOTATION_ANNOUNCING_CANDIDATES`]: every eligible
//! node in rendezvous order, so node-programmers running gossip failure detection can move an IP
//! to the next candidate the moment the first one stops answering gossip — sub-second, without
//! waiting for the Node to turn NotReady (40 s `node-monitor-grace-period`) and for this
//! controller to write. The API server stays the ground truth: a node that turns NotReady leaves
//! the list. Format: a comma list `node-a,node-b` when every IP has the same ranking, else
//! `IP=node-a,node-b;IP=node-c,node-a` (entries separated by `;`). [`parse_candidates`] is the
//! reference parser.
//!
//! `L2Announcement.spec.interfaces` is resolved here too and published in
//! [`ANNOTATION_ANNOUNCING_INTERFACES`]: per IP and candidate node, the union of `spec.interfaces`
//! over the announcements that cover the IP's pool and select the node, or no restriction when
//! one of them lists none (MetalLB speaker's `ipAdvertisementFor`; [`interfaces`]). Grammar,
//! parser and writer: `drawbridge_resources::l2_interfaces`. The restriction does not change who
//! is elected (as in MetalLB): a node whose `--l2-interfaces` share nothing with its restriction
//! stays candidate and node-programmer there warns. An `L2Announcement` listing an interface
//! name Linux would refuse (or one holding `,` `;` `=`) covers nothing, like a selector with an
//! unknown operator, and is named in a warning on every pass.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use drawbridge_resources::ObjectKey;
use drawbridge_resources::crd::IPAddressPool;
use drawbridge_resources::crd_l2::{L2Announcement, NodeLabelSelector};
use drawbridge_resources::events::{Event, EventRecorder};
use drawbridge_resources::l2_interfaces::{self, Restriction};
use drawbridge_resources::names::{FIELD_MANAGER, LABEL_SERVICE_NAME};
use drawbridge_resources::source::Kind;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use crate::allocate::ServiceKey;
use crate::pool::AddressRange;

/// Service annotation written by lb-controller: the node that announces the Service's
/// LoadBalancer IPs on layer 2 (value format in the module docs).
pub const ANNOTATION_ANNOUNCING_NODE: &str = "drawbridge.dev/announcing-node";

/// Service annotation written by lb-controller: per LoadBalancer IP, every eligible node in
/// rendezvous order (first = [`ANNOTATION_ANNOUNCING_NODE`]); format in the module docs.
pub const ANNOTATION_ANNOUNCING_CANDIDATES: &str = "drawbridge.dev/announcing-candidates";

/// Service annotation written by lb-controller: per IP and candidate node, the interfaces it may
/// answer on (`L2Announcement.spec.interfaces`; grammar in `drawbridge_resources::l2_interfaces`;
/// absent: no restriction).
pub use drawbridge_resources::l2_interfaces::ANNOTATION_ANNOUNCING_INTERFACES;

/// Node label that keeps a node out of every external load balancer (Kubernetes well-known label;
/// the service controller and MetalLB honour it; its value is ignored).
pub const LABEL_EXCLUDE_FROM_EXTERNAL_LB: &str =
    "node.kubernetes.io/exclude-from-external-load-balancers";

/// Event reason: the announcing node of a Service changed (note: `old -> new`).
pub const REASON_ANNOUNCING_NODE_CHANGED: &str = "AnnouncingNodeChanged";
/// Event reason: a Service has LoadBalancer IPs but no node may announce them.
pub const REASON_NO_ANNOUNCING_NODE: &str = "NoAnnouncingNode";
/// Event reason: only the interfaces a Service's IPs are announced on changed (note: `old -> new`
/// values of [`ANNOTATION_ANNOUNCING_INTERFACES`], `<all>` when absent).
pub const REASON_ANNOUNCING_INTERFACES_CHANGED: &str = "AnnouncingInterfacesChanged";
/// Event action of the above.
pub const ACTION_ANNOUNCE: &str = "Announce";

// === views (pure inputs) ===

/// What the election needs to know about a Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// Condition `Ready` is `True` (kubelet posts it; the node lifecycle controller turns it
    /// `Unknown` after `node-monitor-grace-period`).
    pub ready: bool,
    /// Condition `NetworkUnavailable` is `True` (MetalLB skips such nodes too).
    pub network_unavailable: bool,
}

impl NodeView {
    /// The view of `node`; `None` without a name.
    pub fn from_node(node: &Node) -> Option<NodeView> {
        let name = node.metadata.name.clone()?;
        let conditions = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let is_true = |type_: &str| {
            conditions
                .iter()
                .any(|c| c.type_ == type_ && c.status == "True")
        };
        Some(NodeView {
            name,
            labels: node.metadata.labels.clone().unwrap_or_default(),
            ready: is_true("Ready"),
            network_unavailable: is_true("NetworkUnavailable"),
        })
    }
}

/// One `L2Announcement`, reduced to what the election reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    /// `metadata.name` (for messages).
    pub name: String,
    /// `spec.ipAddressPools`; empty: every pool.
    pub pools: Vec<String>,
    /// `spec.nodeSelectors`; empty: every node; else any one must match.
    pub node_selectors: Vec<NodeLabelSelector>,
    /// `spec.interfaces`; empty: every interface.
    pub interfaces: Vec<String>,
}

impl Policy {
    /// The policy of an `L2Announcement` object.
    pub fn from_object(l2: &L2Announcement) -> Policy {
        Policy {
            name: l2.metadata.name.clone().unwrap_or_default(),
            pools: l2.spec.ip_address_pools.clone(),
            node_selectors: l2.spec.node_selectors.clone(),
            interfaces: l2.spec.interfaces.clone(),
        }
    }

    /// The `spec.interfaces` entries that cannot be published
    /// (`drawbridge_resources::l2_interfaces::valid_interface_name`); a policy with any covers
    /// nothing.
    pub fn invalid_interfaces(&self) -> Vec<&str> {
        self.interfaces
            .iter()
            .map(String::as_str)
            .filter(|n| !l2_interfaces::valid_interface_name(n))
            .collect()
    }

    fn covers_pool(&self, pool: &str) -> bool {
        (self.pools.is_empty() || self.pools.iter().any(|p| p == pool))
            && self.invalid_interfaces().is_empty()
    }

    /// A selector with an unknown operator matches nothing (the API server would have refused it).
    fn selects(&self, node: &NodeView) -> bool {
        self.node_selectors.is_empty()
            || self
                .node_selectors
                .iter()
                .any(|s| s.matches(&node.labels).unwrap_or(false))
    }
}

/// A Service holding LoadBalancer IPs from our pools.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceView {
    /// (namespace, name).
    pub key: ServiceKey,
    /// `metadata.uid` (for Events).
    pub uid: Option<String>,
    /// Each `status.loadBalancer.ingress[].ip` that lies in a pool, with that pool's name.
    pub ips: Vec<(IpAddr, String)>,
    /// `spec.externalTrafficPolicy: Local`.
    pub local_only: bool,
    /// Nodes with at least one ready endpoint of this Service (EndpointSlice `nodeName`).
    pub ready_endpoint_nodes: BTreeSet<String>,
    /// The annotation as observed now.
    pub current: Option<String>,
    /// [`ANNOTATION_ANNOUNCING_CANDIDATES`] as observed now.
    pub current_candidates: Option<String>,
    /// [`ANNOTATION_ANNOUNCING_INTERFACES`] as observed now.
    pub current_interfaces: Option<String>,
}

// === election (pure) ===

/// The announcer of `ip` (of pool `pool`) among `nodes`, or `None` when no node is eligible:
/// the first of [`candidates`].
pub fn elect(
    ip: IpAddr,
    pool: &str,
    nodes: &[NodeView],
    policies: &[Policy],
    local_only: bool,
    endpoint_nodes: &BTreeSet<String>,
) -> Option<String> {
    candidates(ip, pool, nodes, policies, local_only, endpoint_nodes)
        .into_iter()
        .next()
}

/// Every node eligible to announce `ip` (of pool `pool`), best first; empty when none is.
///
/// Eligible: Ready, not NetworkUnavailable, without [`LABEL_EXCLUDE_FROM_EXTERNAL_LB`], selected by
/// some policy that covers `pool`, and — when `local_only` — in `endpoint_nodes`. Order: ascending
/// sha256(`node` "#" `ip`) (rendezvous hashing, MetalLB's speaker order; ties, impossible in
/// practice, by name). The first is the announcer; the others take over in this order when
/// gossip finds the ones before them down (node-programmer's `l2::decide`).
pub fn candidates(
    ip: IpAddr,
    pool: &str,
    nodes: &[NodeView],
    policies: &[Policy],
    local_only: bool,
    endpoint_nodes: &BTreeSet<String>,
) -> Vec<String> {
    let covering: Vec<&Policy> = policies.iter().filter(|p| p.covers_pool(pool)).collect();
    let mut ranked: Vec<([u8; 32], &str)> = nodes
        .iter()
        .filter(|n| n.ready && !n.network_unavailable)
        .filter(|n| !n.labels.contains_key(LABEL_EXCLUDE_FROM_EXTERNAL_LB))
        .filter(|n| covering.iter().any(|p| p.selects(n)))
        .filter(|n| !local_only || endpoint_nodes.contains(&n.name))
        .map(|n| (score(&n.name, ip), n.name.as_str()))
        .collect();
    ranked.sort();
    ranked.dedup_by(|a, b| a.1 == b.1);
    ranked.into_iter().map(|(_, n)| n.to_string()).collect()
}

/// The interfaces `node` may answer on for an IP of pool `pool` (`None`: all): the union of
/// `spec.interfaces` of every policy that covers `pool` and selects `node`, `None` as soon as one
/// of them lists no interface (MetalLB speaker `ipAdvertisementFor`). Also `None` when no policy
/// covers and selects the node (it is then no candidate, so nothing reads it).
pub fn interfaces(pool: &str, node: &NodeView, policies: &[Policy]) -> Restriction {
    let mut union = BTreeSet::new();
    let mut any = false;
    for p in policies
        .iter()
        .filter(|p| p.covers_pool(pool) && p.selects(node))
    {
        if p.interfaces.is_empty() {
            return None;
        }
        any = true;
        union.extend(p.interfaces.iter().cloned());
    }
    any.then_some(union)
}

fn score(node: &str, ip: IpAddr) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(node.as_bytes());
    h.update(b"#");
    h.update(ip.to_string().as_bytes());
    h.finalize().into()
}

/// The desired annotation value of `svc` (module docs for the format); `None` when no IP of it
/// has an announcer.
pub fn desired_annotation(
    svc: &ServiceView,
    nodes: &[NodeView],
    policies: &[Policy],
) -> Option<String> {
    let elected: Vec<(IpAddr, String)> = svc
        .ips
        .iter()
        .filter_map(|(ip, pool)| {
            elect(
                *ip,
                pool,
                nodes,
                policies,
                svc.local_only,
                &svc.ready_endpoint_nodes,
            )
            .map(|n| (*ip, n))
        })
        .collect();
    let distinct: BTreeSet<&str> = elected.iter().map(|(_, n)| n.as_str()).collect();
    match distinct.len() {
        0 => None,
        1 if elected.len() == svc.ips.len() => distinct.into_iter().next().map(str::to_string),
        _ => Some(
            elected
                .iter()
                .map(|(ip, n)| format!("{ip}={n}"))
                .collect::<Vec<_>>()
                .join(","),
        ),
    }
}

/// The desired [`ANNOTATION_ANNOUNCING_CANDIDATES`] value of `svc` (module docs for the format);
/// `None` when no IP of it has a candidate.
pub fn desired_candidates(
    svc: &ServiceView,
    nodes: &[NodeView],
    policies: &[Policy],
) -> Option<String> {
    let ranked: Vec<(IpAddr, Vec<String>)> = svc
        .ips
        .iter()
        .map(|(ip, pool)| {
            let list = candidates(
                *ip,
                pool,
                nodes,
                policies,
                svc.local_only,
                &svc.ready_endpoint_nodes,
            );
            (*ip, list)
        })
        .filter(|(_, list)| !list.is_empty())
        .collect();
    let first = ranked.first()?;
    if ranked.len() == svc.ips.len() && ranked.iter().all(|(_, l)| *l == first.1) {
        return Some(first.1.join(","));
    }
    Some(
        ranked
            .iter()
            .map(|(ip, list)| format!("{ip}={}", list.join(",")))
            .collect::<Vec<_>>()
            .join(";"),
    )
}

/// The desired [`ANNOTATION_ANNOUNCING_INTERFACES`] value of `svc`: [`interfaces`] of every
/// candidate of every IP, written by `drawbridge_resources::l2_interfaces::format` (`None` when no
/// candidate is restricted).
pub fn desired_interfaces(
    svc: &ServiceView,
    nodes: &[NodeView],
    policies: &[Policy],
) -> Option<String> {
    let by_name: BTreeMap<&str, &NodeView> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let restrictions: BTreeMap<IpAddr, BTreeMap<String, Restriction>> = svc
        .ips
        .iter()
        .map(|(ip, pool)| {
            let per_node = candidates(
                *ip,
                pool,
                nodes,
                policies,
                svc.local_only,
                &svc.ready_endpoint_nodes,
            )
            .into_iter()
            .filter_map(|name| {
                let node = by_name.get(name.as_str())?;
                Some((name, interfaces(pool, node, policies)))
            })
            .collect();
            (*ip, per_node)
        })
        .collect();
    l2_interfaces::format(&restrictions)
}

/// Reads an [`ANNOTATION_ANNOUNCING_CANDIDATES`] value: the ranked candidates of each of `ips`.
/// A plain comma list covers every IP; `IP=a,b;IP=c` covers the listed IPs. Empty names, entries
/// that do not parse and IPs not in `ips` are skipped; a node listed twice keeps its first place.
pub fn parse_candidates(value: &str, ips: &[IpAddr]) -> BTreeMap<IpAddr, Vec<String>> {
    let list = |s: &str| {
        let mut out: Vec<String> = vec![];
        for n in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !out.iter().any(|o| o == n) {
                out.push(n.to_string());
            }
        }
        out
    };
    let value = value.trim();
    if !value.contains('=') {
        let nodes = list(value);
        if nodes.is_empty() {
            return BTreeMap::new();
        }
        return ips.iter().map(|ip| (*ip, nodes.clone())).collect();
    }
    value
        .split(';')
        .filter_map(|entry| {
            let (ip, nodes) = entry.split_once('=')?;
            let ip: IpAddr = ip.trim().parse().ok()?;
            let nodes = list(nodes);
            (!nodes.is_empty() && ips.contains(&ip)).then_some((ip, nodes))
        })
        .collect()
}

/// Reads an annotation value: which node announces each of `ips`. A plain node name covers every
/// IP; an `IP=node` list covers the listed IPs. Entries that do not parse are skipped.
pub fn parse_annotation(value: &str, ips: &[IpAddr]) -> BTreeMap<IpAddr, String> {
    let value = value.trim();
    if value.is_empty() {
        return BTreeMap::new();
    }
    if !value.contains('=') {
        return ips.iter().map(|ip| (*ip, value.to_string())).collect();
    }
    value
        .split(',')
        .filter_map(|entry| {
            let (ip, node) = entry.split_once('=')?;
            let ip: IpAddr = ip.trim().parse().ok()?;
            let node = node.trim();
            (!node.is_empty() && ips.contains(&ip)).then(|| (ip, node.to_string()))
        })
        .collect()
}

/// One annotation to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The Service.
    pub key: ServiceKey,
    /// Its uid (for the Event).
    pub uid: Option<String>,
    /// Value now (`None`: absent).
    pub from: Option<String>,
    /// Value wanted (`None`: remove).
    pub to: Option<String>,
    /// [`ANNOTATION_ANNOUNCING_CANDIDATES`] now (`None`: absent).
    pub candidates_from: Option<String>,
    /// [`ANNOTATION_ANNOUNCING_CANDIDATES`] wanted (`None`: remove).
    pub candidates_to: Option<String>,
    /// [`ANNOTATION_ANNOUNCING_INTERFACES`] now (`None`: absent).
    pub interfaces_from: Option<String>,
    /// [`ANNOTATION_ANNOUNCING_INTERFACES`] wanted (`None`: remove).
    pub interfaces_to: Option<String>,
    /// The Service has IPs but no node may announce them (reported as a Warning).
    pub unannounced: bool,
}

/// Every Service whose annotations differ from the desired ones (compare, then write: a resync
/// of an unchanged world yields nothing). Services without IPs are only touched to remove stale
/// annotations.
pub fn plan(services: &[ServiceView], nodes: &[NodeView], policies: &[Policy]) -> Vec<Change> {
    services
        .iter()
        .filter_map(|svc| {
            let to = desired_annotation(svc, nodes, policies);
            let candidates_to = desired_candidates(svc, nodes, policies);
            let interfaces_to = desired_interfaces(svc, nodes, policies);
            (to != svc.current
                || candidates_to != svc.current_candidates
                || interfaces_to != svc.current_interfaces)
                .then(|| Change {
                    key: svc.key.clone(),
                    uid: svc.uid.clone(),
                    from: svc.current.clone(),
                    unannounced: to.is_none() && !svc.ips.is_empty(),
                    to,
                    candidates_from: svc.current_candidates.clone(),
                    candidates_to,
                    interfaces_from: svc.current_interfaces.clone(),
                    interfaces_to,
                })
        })
        .collect()
}

// === building views from objects ===

/// Views of every Service that holds an IP from `pools` or carries a stale annotation. `ipMode:
/// Proxy` ingress entries are skipped (the load balancer is not on layer 2 then).
pub fn service_views(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    pools: &[Arc<IPAddressPool>],
) -> Vec<ServiceView> {
    let ranges: Vec<(String, Vec<AddressRange>)> = pools
        .iter()
        .map(|p| {
            let ranges = p
                .spec
                .addresses
                .iter()
                .filter_map(|a| AddressRange::parse(a).ok())
                .collect();
            (p.metadata.name.clone().unwrap_or_default(), ranges)
        })
        .collect();
    let pool_of = |ip: IpAddr| {
        ranges
            .iter()
            .find(|(_, rs)| rs.iter().any(|r| r.contains(ip)))
            .map(|(name, _)| name.clone())
    };
    let mut endpoint_nodes: BTreeMap<ServiceKey, BTreeSet<String>> = BTreeMap::new();
    for slice in slices {
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_SERVICE_NAME))
        else {
            continue;
        };
        let key = (
            slice.metadata.namespace.clone().unwrap_or_default(),
            service.clone(),
        );
        for ep in &slice.endpoints {
            // `ready` absent means ready (discovery.k8s.io/v1 EndpointConditions).
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if let (true, Some(node)) = (ready, &ep.node_name) {
                endpoint_nodes
                    .entry(key.clone())
                    .or_default()
                    .insert(node.clone());
            }
        }
    }
    services
        .iter()
        .filter_map(|svc| {
            let key = (
                svc.metadata.namespace.clone().unwrap_or_default(),
                svc.metadata.name.clone()?,
            );
            let annotation = |name: &str| {
                svc.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(name))
                    .cloned()
            };
            let current = annotation(ANNOTATION_ANNOUNCING_NODE);
            let current_candidates = annotation(ANNOTATION_ANNOUNCING_CANDIDATES);
            let current_interfaces = annotation(ANNOTATION_ANNOUNCING_INTERFACES);
            let spec = svc.spec.as_ref();
            let is_lb = spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
            let ips: Vec<(IpAddr, String)> = if is_lb {
                svc.status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref())
                    .into_iter()
                    .flatten()
                    .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
                    .filter_map(|i| i.ip.as_deref()?.parse::<IpAddr>().ok())
                    .filter_map(|ip| Some((ip, pool_of(ip)?)))
                    .collect()
            } else {
                vec![]
            };
            if ips.is_empty()
                && current.is_none()
                && current_candidates.is_none()
                && current_interfaces.is_none()
            {
                return None;
            }
            Some(ServiceView {
                local_only: spec.and_then(|s| s.external_traffic_policy.as_deref())
                    == Some("Local"),
                ready_endpoint_nodes: endpoint_nodes.get(&key).cloned().unwrap_or_default(),
                uid: svc.metadata.uid.clone(),
                key,
                ips,
                current,
                current_candidates,
                current_interfaces,
            })
        })
        .collect()
}

// === edge: writing the annotation ===

/// Why an annotation write failed; the next pass computes the same change and retries.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error("annotating Service {namespace}/{name} failed")]
    AnnotateServiceFailed {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// A generic annotation write failed (standalone mode: the state directory;
    /// `crate::status::MetadataAnnotationWriter`).
    #[error("annotating Service failed")]
    AnnotationWriteFailed(#[source] drawbridge_resources::status::StatusError),
}

/// The annotations the election owns, written together (`None` removes one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Announcement<'a> {
    /// [`ANNOTATION_ANNOUNCING_NODE`].
    pub node: Option<&'a str>,
    /// [`ANNOTATION_ANNOUNCING_CANDIDATES`].
    pub candidates: Option<&'a str>,
    /// [`ANNOTATION_ANNOUNCING_INTERFACES`].
    pub interfaces: Option<&'a str>,
}

/// Sets or removes [`ANNOTATION_ANNOUNCING_NODE`] (and [`ANNOTATION_ANNOUNCING_CANDIDATES`],
/// [`ANNOTATION_ANNOUNCING_INTERFACES`]) on one Service.
pub trait AnnotationWriter: Send + Sync {
    /// `value: None` removes the annotation. Errors: [`Error::AnnotateServiceFailed`].
    fn set_announcing_node(
        &self,
        key: &ServiceKey,
        value: Option<&str>,
    ) -> BoxFuture<'_, Result<(), Error>>;

    /// Sets all three annotations (`None` removes one) in one write. The default writes only the
    /// announcing node — for writers that have no place for the others (node-programmers then
    /// fall back to the single announcer, without gossip takeover, on every interface). Errors:
    /// [`Error::AnnotateServiceFailed`].
    fn set_announcement(
        &self,
        key: &ServiceKey,
        announcement: Announcement<'_>,
    ) -> BoxFuture<'_, Result<(), Error>> {
        self.set_announcing_node(key, announcement.node)
    }
}

/// Writes the annotation with a JSON merge patch of `metadata.annotations` (RFC 7386; `null`
/// deletes), field manager `drawbridge`.
pub struct KubeAnnotationWriter {
    client: kube::Client,
}

impl KubeAnnotationWriter {
    /// A writer using `client`.
    pub fn new(client: kube::Client) -> Self {
        KubeAnnotationWriter { client }
    }
}

impl KubeAnnotationWriter {
    fn patch(
        &self,
        key: &ServiceKey,
        annotations: serde_json::Value,
    ) -> BoxFuture<'_, Result<(), Error>> {
        let (namespace, name) = key.clone();
        let patch = serde_json::json!({"metadata": {"annotations": annotations}});
        Box::pin(async move {
            let api: kube::Api<Service> = kube::Api::namespaced(self.client.clone(), &namespace);
            let params = kube::api::PatchParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..Default::default()
            };
            match api
                .patch(&name, &params, &kube::api::Patch::Merge(patch))
                .await
            {
                Ok(_) => Ok(()),
                Err(source) => Err(Error::AnnotateServiceFailed {
                    namespace,
                    name,
                    source,
                }),
            }
        })
    }
}

impl AnnotationWriter for KubeAnnotationWriter {
    fn set_announcing_node(
        &self,
        key: &ServiceKey,
        value: Option<&str>,
    ) -> BoxFuture<'_, Result<(), Error>> {
        self.patch(key, serde_json::json!({ANNOTATION_ANNOUNCING_NODE: value}))
    }

    /// One merge patch carrying all three annotations, so a reader never sees a new announcer
    /// with an old candidate list or old interfaces.
    fn set_announcement(
        &self,
        key: &ServiceKey,
        announcement: Announcement<'_>,
    ) -> BoxFuture<'_, Result<(), Error>> {
        self.patch(
            key,
            serde_json::json!({
                ANNOTATION_ANNOUNCING_NODE: announcement.node,
                ANNOTATION_ANNOUNCING_CANDIDATES: announcement.candidates,
                ANNOTATION_ANNOUNCING_INTERFACES: announcement.interfaces,
            }),
        )
    }
}

/// Test fake: records `(key, value)` of every write and succeeds.
#[derive(Default)]
pub struct RecordingAnnotationWriter {
    writes: std::sync::Mutex<Vec<(ServiceKey, Option<String>)>>,
    candidates: std::sync::Mutex<Vec<(ServiceKey, Option<String>)>>,
    interfaces: std::sync::Mutex<Vec<(ServiceKey, Option<String>)>>,
}

impl RecordingAnnotationWriter {
    /// Every announcing-node write so far, oldest first.
    pub fn writes(&self) -> Vec<(ServiceKey, Option<String>)> {
        self.writes.lock().expect("lock poisoned").clone()
    }

    /// Every announcing-candidates write so far, oldest first.
    pub fn candidate_writes(&self) -> Vec<(ServiceKey, Option<String>)> {
        self.candidates.lock().expect("lock poisoned").clone()
    }

    /// Every announcing-interfaces write so far, oldest first.
    pub fn interface_writes(&self) -> Vec<(ServiceKey, Option<String>)> {
        self.interfaces.lock().expect("lock poisoned").clone()
    }
}

impl AnnotationWriter for RecordingAnnotationWriter {
    fn set_announcing_node(
        &self,
        key: &ServiceKey,
        value: Option<&str>,
    ) -> BoxFuture<'_, Result<(), Error>> {
        self.writes
            .lock()
            .expect("lock poisoned")
            .push((key.clone(), value.map(str::to_string)));
        Box::pin(async { Ok(()) })
    }

    fn set_announcement(
        &self,
        key: &ServiceKey,
        announcement: Announcement<'_>,
    ) -> BoxFuture<'_, Result<(), Error>> {
        self.candidates
            .lock()
            .expect("lock poisoned")
            .push((key.clone(), announcement.candidates.map(str::to_string)));
        self.interfaces
            .lock()
            .expect("lock poisoned")
            .push((key.clone(), announcement.interfaces.map(str::to_string)));
        self.set_announcing_node(key, announcement.node)
    }
}

/// Everything one announcement pass reads, as the stores hold it.
pub struct Inputs<'a> {
    /// Services.
    pub services: &'a [Arc<Service>],
    /// EndpointSlices (for ETP=Local).
    pub slices: &'a [Arc<EndpointSlice>],
    /// Nodes.
    pub nodes: &'a [Arc<Node>],
    /// L2Announcements.
    pub announcements: &'a [Arc<L2Announcement>],
    /// IPAddressPools (an IP outside every pool is not ours to announce).
    pub pools: &'a [Arc<IPAddressPool>],
}

/// One level-triggered pass: plan, then write each change while `leader` holds, publishing an
/// Event after each successful write. Returns `false` when a write failed (retry soon).
pub async fn reconcile(
    inputs: &Inputs<'_>,
    writer: &dyn AnnotationWriter,
    events: &dyn EventRecorder,
    leader: &watch::Receiver<bool>,
) -> bool {
    let nodes: Vec<NodeView> = inputs
        .nodes
        .iter()
        .filter_map(|n| NodeView::from_node(n))
        .collect();
    let policies: Vec<Policy> = inputs
        .announcements
        .iter()
        .map(|a| Policy::from_object(a))
        .collect();
    for p in &policies {
        let invalid = p.invalid_interfaces();
        if !invalid.is_empty() {
            tracing::warn!(l2announcement = %p.name, interfaces = ?invalid, "L2Announcement lists interface names Linux would refuse (or holding , ; =); it covers nothing until fixed");
        }
    }
    let views = service_views(inputs.services, inputs.slices, inputs.pools);
    let mut ok = true;
    for change in plan(&views, &nodes, &policies) {
        if !*leader.borrow() {
            tracing::info!("lease lost; remaining announcement writes dropped");
            return true;
        }
        let (namespace, name) = &change.key;
        if let Err(error) = writer
            .set_announcement(
                &change.key,
                Announcement {
                    node: change.to.as_deref(),
                    candidates: change.candidates_to.as_deref(),
                    interfaces: change.interfaces_to.as_deref(),
                },
            )
            .await
        {
            tracing::warn!(%namespace, %name, error = %error, "announcing-node write failed; will retry");
            ok = false;
            continue;
        }
        let regarding = ObjectKey::namespaced(Kind::Service, namespace, name);
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "<none>".into());
        if change.interfaces_to != change.interfaces_from {
            // An L2Announcement's interfaces (or which candidates they apply to) changed: a
            // human edited something, so it is reported even when the announcer stays.
            let all = |v: &Option<String>| v.clone().unwrap_or_else(|| "<all>".into());
            tracing::info!(%namespace, %name, from = %all(&change.interfaces_from), to = %all(&change.interfaces_to), "announcing interfaces changed");
            events
                .publish(
                    Event::normal(
                        regarding.clone(),
                        REASON_ANNOUNCING_INTERFACES_CHANGED,
                        ACTION_ANNOUNCE,
                        format!(
                            "{} -> {}",
                            all(&change.interfaces_from),
                            all(&change.interfaces_to)
                        ),
                    )
                    .with_uid(change.uid.clone()),
                )
                .await;
        }
        if change.to == change.from {
            // Only the ranking behind the announcer changed: no Event (nothing a human acts on).
            tracing::debug!(%namespace, %name, candidates = ?change.candidates_to, "announcing candidates changed");
            continue;
        }
        let event = if change.unannounced {
            tracing::warn!(%namespace, %name, "no eligible node announces the LoadBalancer IPs");
            Event::warning(
                regarding,
                REASON_NO_ANNOUNCING_NODE,
                ACTION_ANNOUNCE,
                format!(
                    "no node may announce the LoadBalancer IPs (needs Ready, no {LABEL_EXCLUDE_FROM_EXTERNAL_LB} label, \
                     an L2Announcement covering the pool and selecting the node, and for \
                     externalTrafficPolicy=Local a ready local endpoint); was {}",
                    show(&change.from)
                ),
            )
        } else {
            tracing::info!(%namespace, %name, from = %show(&change.from), to = %show(&change.to), "announcing node changed");
            Event::normal(
                regarding,
                REASON_ANNOUNCING_NODE_CHANGED,
                ACTION_ANNOUNCE,
                format!("{} -> {}", show(&change.from), show(&change.to)),
            )
        };
        events.publish(event.with_uid(change.uid.clone())).await;
    }
    ok
}

#[cfg(test)]
mod tests;

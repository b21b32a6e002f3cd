//! Pure IPAM: Services + pools → the external IPs (or the failure) each Service should have.
//!
//! No I/O. Level-triggered: the input is everything observed now, including each Service's current
//! `status.loadBalancer.ingress` — which is how allocations survive a controller restart (they are
//! read back, never reshuffled).
//!
//! ```text
//!   ServiceView (families, request, sharing key, ports, ETP, selector, current status)
//!        │  oldest first
//!        ├─ 1. keep    per family: the address in status while still valid for the Service
//!        ├─ 2. assign  per family: requested address, else a shareable one, else lowest free
//!        └─ 3. release what non-LoadBalancer Services still carry from our pools
//!                      ──> Outcome::{Allocated{ips}, Failed{reason, message}, Released}
//! ```
//!
//! Order of decisions (deterministic; oldest Service first, by `creationTimestamp` then
//! namespace/name):
//! 0. **claims** ([`ClaimView`], the `IPAddressClaim` objects): an address claimed by a live Service
//!    is reserved for it — nobody else may take it unless allowed to share with the claim's owner;
//!    a claim whose Service is gone reserves nothing (it is garbage, see `claim`);
//! 1. **keep**: for each IP family a Service wants, it keeps the address of that family already in
//!    its status — or, when its status has none (a crash between claim and status write), the one
//!    it claims — while that address is still valid for it (a pool offers it and admits this
//!    Service; it matches the Service's request for that family, if any; every older holder and
//!    the claim's owner may share it);
//! 2. **assign**: every family still missing gets its requested address
//!    (`drawbridge.dev/load-balancer-ips`, one per family, else `spec.loadBalancerIP`) if a pool
//!    offers it and it is free or shareable, or else — with a sharing key — the lowest address
//!    already used by Services it may share with, or else the lowest free address of the requested
//!    pool (`drawbridge.dev/address-pool`) or of the auto-assign pools in priority order (lower
//!    `serviceAllocation.priority` first, pools without one last, then by name — MetalLB's order).
//!
//! Pools ([`Pool::admits`]): a pool's `serviceAllocation` namespaces / selectors limit which
//! Services may use it, whichever way they ask (auto-assign, pool annotation, requested address).
//! Overlapping pools are allowed (and flagged in their status); an address is one address whatever
//! pool offers it, so it is never handed out twice.
//!
//! Families (`spec.ipFamilies`, `spec.ipFamilyPolicy`): `SingleStack` wants the first family;
//! `PreferDualStack` wants both and settles for one when no pool can give the other;
//! `RequireDualStack` gets both or fails. A Service that fails holds nothing, so what it kept is
//! free for others in the same pass (the pass is recomputed without its status, so the result is
//! the same as the next pass would compute: allocations are a fixed point).
//!
//! Sharing (MetalLB's `allow-shared-ip` rule): two Services may hold the same address only when both
//! carry the same `drawbridge.dev/allow-shared-ip` key, no (protocol, port) overlaps, and both are
//! `externalTrafficPolicy: Cluster` or their selectors are identical. Without a key, never.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use drawbridge_resources::names::{
    ANNOTATION_ADDRESS_POOL, ANNOTATION_ALLOW_SHARED_IP, ANNOTATION_LOAD_BALANCER_IPS,
    LOAD_BALANCER_CLASS,
};

use crate::pool::{FreeCursor, Pool, pool_order};

/// `namespace/name` of a Service.
pub type ServiceKey = (String, String);

/// An IP family, as `spec.ipFamilies` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum IpFamily {
    /// `IPv4`.
    V4,
    /// `IPv6`.
    V6,
}

impl IpFamily {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> IpFamily {
        if ip.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }

    /// `IPv4` / `IPv6`.
    pub fn as_str(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }

    fn other(self) -> IpFamily {
        match self {
            IpFamily::V4 => IpFamily::V6,
            IpFamily::V6 => IpFamily::V4,
        }
    }
}

/// `spec.ipFamilyPolicy` (absent means `SingleStack`, the Kubernetes default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IpFamilyPolicy {
    /// One address, of the first family.
    #[default]
    SingleStack,
    /// Both families if the pools can give them, else one.
    PreferDualStack,
    /// Both families, or fail.
    RequireDualStack,
}

/// What the allocator needs to know about one Service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceView {
    /// Namespace and name.
    pub key: ServiceKey,
    /// `metadata.uid` (absent in standalone manifests that omit it).
    pub uid: Option<String>,
    /// `metadata.labels` (for `serviceAllocation.serviceSelector`).
    pub labels: BTreeMap<String, String>,
    /// Labels of the Service's Namespace (for `serviceAllocation.namespaceSelector`); filled by
    /// the caller, empty when the Namespace is unknown.
    pub namespace_labels: BTreeMap<String, String>,
    /// `metadata.creationTimestamp`; older Services win conflicts. Missing sorts first.
    pub created: Option<Time>,
    /// `type: LoadBalancer` and a class we handle.
    pub eligible: bool,
    /// `spec.loadBalancerClass` names another controller: never touched.
    pub foreign: bool,
    /// Requested addresses, at most one per family (annotation, else `spec.loadBalancerIP`), or why
    /// the request is unusable.
    pub requested: Option<Result<Vec<IpAddr>, String>>,
    /// Pool requested by annotation.
    pub pool: Option<String>,
    /// Families wanted, primary first: `spec.ipFamilies` (absent: the first requested address's
    /// family, else IPv4), completed with the other family for the dual-stack policies.
    pub families: Vec<IpFamily>,
    /// `spec.ipFamilyPolicy`.
    pub family_policy: IpFamilyPolicy,
    /// `drawbridge.dev/allow-shared-ip`: Services with the same key may share an address.
    pub sharing_key: Option<String>,
    /// `spec.ports[]` as (protocol, port); protocol defaults to `TCP`.
    pub ports: BTreeSet<(String, i32)>,
    /// `spec.externalTrafficPolicy: Local`.
    pub etp_local: bool,
    /// `spec.selector` (absent = empty).
    pub selector: BTreeMap<String, String>,
    /// Addresses currently in `status.loadBalancer.ingress[].ip`.
    pub current: Vec<IpAddr>,
}

impl ServiceView {
    /// Reads a Service. `class_less`: whether Services without `loadBalancerClass` are ours.
    pub fn from_service(svc: &Service, class_less: bool) -> ServiceView {
        let meta = &svc.metadata;
        let spec = svc.spec.clone().unwrap_or_default();
        let class = spec.load_balancer_class.as_deref();
        let ours = match class {
            None => class_less,
            Some(c) => c == LOAD_BALANCER_CLASS,
        };
        let annotations = meta.annotations.clone().unwrap_or_default();
        let requested = match annotations.get(ANNOTATION_LOAD_BALANCER_IPS) {
            Some(list) => {
                let entries: Vec<&str> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect();
                (!entries.is_empty())
                    .then(|| parse_requests(ANNOTATION_LOAD_BALANCER_IPS, &entries))
            }
            None => spec
                .load_balancer_ip
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(|s| parse_requests("spec.loadBalancerIP", &[s])),
        };
        let family_policy = match spec.ip_family_policy.as_deref() {
            Some("PreferDualStack") => IpFamilyPolicy::PreferDualStack,
            Some("RequireDualStack") => IpFamilyPolicy::RequireDualStack,
            _ => IpFamilyPolicy::SingleStack,
        };
        let mut families: Vec<IpFamily> = spec
            .ip_families
            .iter()
            .flatten()
            .filter_map(|f| match f.as_str() {
                "IPv4" => Some(IpFamily::V4),
                "IPv6" => Some(IpFamily::V6),
                _ => None,
            })
            .collect();
        families.dedup();
        if families.is_empty() {
            let from_request = match &requested {
                Some(Ok(ips)) => ips.first().map(|ip| IpFamily::of(*ip)),
                _ => None,
            };
            families.push(from_request.unwrap_or(IpFamily::V4));
        }
        families.truncate(match family_policy {
            IpFamilyPolicy::SingleStack => 1,
            _ => 2,
        });
        if family_policy != IpFamilyPolicy::SingleStack && families.len() == 1 {
            families.push(families[0].other());
        }
        let current = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .map(|ingress| {
                ingress
                    .iter()
                    .filter_map(|i| i.ip.as_deref()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let ports = spec
            .ports
            .iter()
            .flatten()
            .map(|p| {
                (
                    p.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
                    p.port,
                )
            })
            .collect();
        ServiceView {
            key: (
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
            ),
            uid: meta.uid.clone().filter(|u| !u.is_empty()),
            labels: meta.labels.clone().unwrap_or_default(),
            namespace_labels: BTreeMap::new(),
            created: meta.creation_timestamp.clone(),
            eligible: spec.type_.as_deref() == Some("LoadBalancer") && ours,
            foreign: !ours,
            requested,
            pool: annotations.get(ANNOTATION_ADDRESS_POOL).cloned(),
            families,
            family_policy,
            sharing_key: annotations
                .get(ANNOTATION_ALLOW_SHARED_IP)
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty()),
            ports,
            etp_local: spec.external_traffic_policy.as_deref() == Some("Local"),
            selector: spec.selector.clone().unwrap_or_default(),
            current,
        }
    }
}

/// Parses a request list: addresses, at most one per family.
fn parse_requests(source: &str, entries: &[&str]) -> Result<Vec<IpAddr>, String> {
    let mut ips: Vec<IpAddr> = Vec::new();
    for entry in entries {
        let ip: IpAddr = entry
            .parse()
            .map_err(|e| format!("{source}: {entry:?}: {e}"))?;
        if ips
            .iter()
            .any(|other| IpAddr::is_ipv4(other) == ip.is_ipv4())
        {
            return Err(format!(
                "{source}: more than one {} address",
                IpFamily::of(ip).as_str()
            ));
        }
        ips.push(ip);
    }
    Ok(ips)
}

/// Why a Service got no address; the `reason` of condition `drawbridge.dev/AddressAllocated=False`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// Every pool the Service may use is full.
    PoolExhausted,
    /// The requested address is in no pool that allows the Service, is taken, is of a family the
    /// Service does not use, or does not parse.
    RequestedAddressUnavailable,
    /// The requested address is used by a Service this one may not share it with.
    SharingConflict,
    /// No pool may serve the Service (the named pool does not exist, no pool auto-assigns, or none
    /// has a range of a family the Service requires).
    NoMatchingPool,
}

impl FailureReason {
    /// CamelCase reason string for conditions and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::PoolExhausted => "PoolExhausted",
            FailureReason::RequestedAddressUnavailable => "RequestedAddressUnavailable",
            FailureReason::SharingConflict => "SharingConflict",
            FailureReason::NoMatchingPool => "NoMatchingPool",
        }
    }
}

/// One address of a Service and the pool it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The external address.
    pub ip: IpAddr,
    /// The pool it came from.
    pub pool: String,
}

impl fmt::Display for Assignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} from IPAddressPool {}", self.ip, self.pool)
    }
}

/// `203.0.113.1 from IPAddressPool lab, 2001:db8::1 from IPAddressPool lab6`: for conditions,
/// Events and logs.
pub fn describe(ips: &[Assignment]) -> String {
    ips.iter()
        .map(Assignment::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The decision for one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The Service should carry these addresses, one per family, in the Service's family order.
    Allocated {
        /// Never empty.
        ips: Vec<Assignment>,
    },
    /// The Service should carry no address, with this reason and message.
    Failed {
        /// Machine-readable reason.
        reason: FailureReason,
        /// Human-readable detail.
        message: String,
    },
    /// The Service is no longer ours (not a LoadBalancer any more, or class-less handling is off)
    /// but still carries an address from one of our pools: clear it.
    Released,
}

impl Outcome {
    /// The addresses of an `Allocated` outcome; empty otherwise.
    pub fn assignments(&self) -> &[Assignment] {
        match self {
            Outcome::Allocated { ips } => ips,
            _ => &[],
        }
    }
}

/// One `IPAddressClaim` as the allocator sees it: the address and the Service it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimView {
    /// The claimed address.
    pub ip: IpAddr,
    /// `spec.serviceRef` namespace and name.
    pub owner: ServiceKey,
    /// `spec.serviceRef.uid`, when recorded.
    pub uid: Option<String>,
}

impl ClaimView {
    /// Whether `svc` is the Service this claim names (same namespace/name, and the same uid when
    /// both are known — a re-created Service of the same name is another Service).
    pub fn names(&self, svc: &ServiceView) -> bool {
        self.owner == svc.key
            && match (&self.uid, &svc.uid) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

// === impl ServiceView (sharing) ===

impl ServiceView {
    /// MetalLB's sharing rule: the same `drawbridge.dev/allow-shared-ip` key on both, no common
    /// (protocol, port), and both `externalTrafficPolicy: Cluster` or identical selectors.
    pub fn may_share(&self, other: &ServiceView) -> bool {
        let same_key =
            matches!((&self.sharing_key, &other.sharing_key), (Some(a), Some(b)) if a == b);
        same_key
            && self.ports.is_disjoint(&other.ports)
            && ((!self.etp_local && !other.etp_local) || self.selector == other.selector)
    }
}

/// Message of a `SharingConflict`; deliberately independent of which holder refused, so the
/// outcome does not depend on the order holders were found in.
const SHARING_RULE: &str = "sharing needs the same drawbridge.dev/allow-shared-ip key, no common port and \
                            protocol, and both externalTrafficPolicy Cluster or identical selectors";

/// Addresses held so far in one pass, and by whom.
#[derive(Default)]
struct Holders<'a> {
    /// Addresses claimed (`IPAddressClaim`) by a live Service: only it, or Services that may share
    /// with it, may hold them.
    reserved: BTreeMap<IpAddr, &'a ServiceView>,
    /// Every held or reserved address (what `Pool::first_free` must skip).
    used: BTreeSet<IpAddr>,
    /// Who holds each address; more than one only for Services that may share.
    by_ip: BTreeMap<IpAddr, Vec<&'a ServiceView>>,
    /// Addresses held by Services with each sharing key.
    by_key: BTreeMap<&'a str, BTreeSet<IpAddr>>,
    /// Per (pool name, IPv4?): where the next free-address scan resumes. Valid because `used`
    /// only grows during a pass; makes a pass allocating N addresses O(N) instead of O(N²).
    cursors: RefCell<BTreeMap<(String, bool), FreeCursor>>,
}

impl<'a> Holders<'a> {
    /// Whether `svc` may hold `ip` next to its current holders.
    fn may_use(&self, ip: IpAddr, svc: &ServiceView) -> bool {
        self.reserved
            .get(&ip)
            .is_none_or(|owner| owner.key == svc.key || svc.may_share(owner))
            && self
                .by_ip
                .get(&ip)
                .is_none_or(|holders| holders.iter().all(|h| svc.may_share(h)))
    }

    fn add(&mut self, ip: IpAddr, svc: &'a ServiceView) {
        self.used.insert(ip);
        self.by_ip.entry(ip).or_default().push(svc);
        if let Some(key) = &svc.sharing_key {
            self.by_key.entry(key.as_str()).or_default().insert(ip);
        }
    }
}

/// Per wanted family (in the Service's order): the family and the address requested for it.
type Plan = Vec<(IpFamily, Option<IpAddr>)>;
type Failure = (FailureReason, String);

fn plan(svc: &ServiceView) -> Result<Plan, Failure> {
    let requested: &[IpAddr] = match &svc.requested {
        None => &[],
        Some(Err(problem)) => {
            return Err((FailureReason::RequestedAddressUnavailable, problem.clone()));
        }
        Some(Ok(ips)) => ips,
    };
    if let Some(ip) = requested
        .iter()
        .find(|ip| !svc.families.contains(&IpFamily::of(**ip)))
    {
        let families: Vec<&str> = svc.families.iter().map(|f| f.as_str()).collect();
        let message = format!(
            "{ip} is {} but the Service's IP families are {}",
            IpFamily::of(*ip).as_str(),
            families.join(", ")
        );
        return Err((FailureReason::RequestedAddressUnavailable, message));
    }
    Ok(svc
        .families
        .iter()
        .map(|f| {
            (
                *f,
                requested.iter().copied().find(|ip| IpFamily::of(*ip) == *f),
            )
        })
        .collect())
}

/// Decides every Service's addresses without claims ([`allocate_with_claims`] with none).
pub fn allocate(pools: &[Pool], services: &[ServiceView]) -> BTreeMap<ServiceKey, Outcome> {
    allocate_with_claims(pools, services, &[])
}

/// Decides every Service's addresses, honouring `claims` (step 0 in the module docs). Services of
/// other classes, and non-LoadBalancer Services that carry nothing of ours, are absent from the
/// result. Cost: O(S log S + claims) plus the free-address scans.
pub fn allocate_with_claims(
    pools: &[Pool],
    services: &[ServiceView],
    claims: &[ClaimView],
) -> BTreeMap<ServiceKey, Outcome> {
    let mut order: Vec<&ServiceView> = services.iter().collect();
    order.sort_by(|a, b| {
        let ta = a.created.as_ref().map(|t| t.0);
        let tb = b.created.as_ref().map(|t| t.0);
        ta.cmp(&tb).then_with(|| a.key.cmp(&b.key))
    });
    let mut pools: Vec<&Pool> = pools.iter().collect();
    pools.sort_by(|a, b| pool_order(a, b));
    let by_key: BTreeMap<&ServiceKey, &ServiceView> =
        services.iter().map(|s| (&s.key, s)).collect();
    let reserved: BTreeMap<IpAddr, &ServiceView> = claims
        .iter()
        .filter_map(|c| {
            let owner = by_key.get(&c.owner)?;
            c.names(owner).then_some((c.ip, *owner))
        })
        .collect();
    let claimed_by: BTreeMap<&ServiceKey, Vec<IpAddr>> =
        reserved.iter().fold(BTreeMap::new(), |mut m, (ip, owner)| {
            m.entry(&owner.key).or_insert_with(Vec::new).push(*ip);
            m
        });

    // A Service that fails after keeping an address has blocked it for younger Services in this
    // pass; recompute without its status (what the next pass would see). Each round forgets at
    // least one more Service, so this ends.
    let mut forget: BTreeSet<ServiceKey> = BTreeSet::new();
    loop {
        match pass(&pools, &order, &reserved, &claimed_by, &forget) {
            Ok(out) => return out,
            Err(more) => forget.extend(more),
        }
    }
}

/// One keep → assign → release pass; `Err` lists Services that failed after keeping something.
fn pass<'a>(
    pools: &[&Pool],
    order: &[&'a ServiceView],
    reserved: &BTreeMap<IpAddr, &'a ServiceView>,
    claimed_by: &BTreeMap<&ServiceKey, Vec<IpAddr>>,
    forget: &BTreeSet<ServiceKey>,
) -> Result<BTreeMap<ServiceKey, Outcome>, Vec<ServiceKey>> {
    let mut holders = Holders {
        reserved: reserved.clone(),
        used: reserved.keys().copied().collect(),
        ..Holders::default()
    };
    let mut kept: BTreeMap<&ServiceKey, Vec<Option<Assignment>>> = BTreeMap::new();
    let mut out = BTreeMap::new();

    // 1. keep
    for svc in order
        .iter()
        .filter(|s| s.eligible && !forget.contains(&s.key))
    {
        let Ok(plan) = plan(svc) else { continue };
        let mut slots = vec![None; plan.len()];
        let claimed = claimed_by.get(&svc.key).map(Vec::as_slice).unwrap_or(&[]);
        for ((family, request), slot) in plan.iter().zip(slots.iter_mut()) {
            // Status first; a claim stands in when status has nothing of this family (the
            // controller died between creating the claim and writing the status).
            let in_status = svc.current.iter().find(|ip| IpFamily::of(**ip) == *family);
            let candidates = in_status.into_iter().chain(
                claimed
                    .iter()
                    .filter(|ip| in_status.is_none() && IpFamily::of(**ip) == *family),
            );
            for &ip in candidates {
                if request.is_some_and(|r| r != ip) || !holders.may_use(ip, svc) {
                    continue;
                }
                if let Some(pool) = pool_for(pools, ip, svc, request.is_some()) {
                    holders.add(ip, svc);
                    *slot = Some(Assignment {
                        ip,
                        pool: pool.name.clone(),
                    });
                    break;
                }
            }
        }
        if slots.iter().any(Option::is_some) {
            kept.insert(&svc.key, slots);
        }
    }

    // 2. assign
    let mut failed_after_keeping = Vec::new();
    for svc in order.iter().filter(|s| s.eligible) {
        let slots = kept.remove(&svc.key);
        let had_kept = slots.is_some();
        let result = plan(svc).and_then(|plan| {
            let slots = slots.unwrap_or_else(|| vec![None; plan.len()]);
            complete(pools, svc, &plan, slots, &holders)
        });
        let outcome = match result {
            Ok(ips) => {
                for a in &ips {
                    if !holders
                        .by_ip
                        .get(&a.ip)
                        .is_some_and(|h| h.iter().any(|h| h.key == svc.key))
                    {
                        holders.add(a.ip, svc);
                    }
                }
                Outcome::Allocated { ips }
            }
            Err((reason, message)) => {
                if had_kept {
                    failed_after_keeping.push(svc.key.clone());
                }
                Outcome::Failed { reason, message }
            }
        };
        out.insert(svc.key.clone(), outcome);
    }
    if !failed_after_keeping.is_empty() {
        return Err(failed_after_keeping);
    }
    // Say why against the final holders, not those seen at the Service's turn: a younger Service
    // may since have taken what a failed dual-stack Service had found for its other family. The
    // next pass (which sees those holders from the start) then reports exactly the same failure.
    for svc in order.iter().filter(|s| s.eligible) {
        if let Some(Outcome::Failed { reason, message }) = out.get_mut(&svc.key) {
            let again = plan(svc)
                .and_then(|plan| complete(pools, svc, &plan, vec![None; plan.len()], &holders));
            if let Err((r, m)) = again {
                (*reason, *message) = (r, m);
            }
        }
    }

    // 3. release what non-eligible Services still carry from our pools
    for svc in order.iter().filter(|s| !s.eligible && !s.foreign) {
        if svc
            .current
            .iter()
            .any(|ip| pools.iter().any(|p| p.offers(*ip)))
        {
            out.insert(svc.key.clone(), Outcome::Released);
        }
    }
    Ok(out)
}

/// Whether `pool` may serve `svc`: the pool it named, or any auto-assign pool, or — for an
/// explicitly requested address — any pool offering that address (MetalLB semantics); in every
/// case only if the pool's `serviceAllocation` admits the Service.
fn allows(pool: &Pool, svc: &ServiceView, explicit: bool) -> bool {
    let asked = match &svc.pool {
        Some(name) => *name == pool.name,
        None => pool.auto_assign || explicit,
    };
    asked && admits(pool, svc)
}

fn admits(pool: &Pool, svc: &ServiceView) -> bool {
    pool.admits(&svc.key.0, &svc.namespace_labels, &svc.labels)
}

/// The first pool (in [`pool_order`]) that offers `ip` and may serve `svc`: the pool an address is reported
/// from, the same whether it was just assigned or kept.
fn pool_for<'p>(
    pools: &[&'p Pool],
    ip: IpAddr,
    svc: &ServiceView,
    explicit: bool,
) -> Option<&'p Pool> {
    pools
        .iter()
        .copied()
        .find(|p| p.offers(ip) && allows(p, svc, explicit))
}

/// Fills every family `slots` (what was kept) lacks. `PreferDualStack` settles for the families it
/// can get, unless a requested address is unavailable (a request is never silently dropped).
fn complete(
    pools: &[&Pool],
    svc: &ServiceView,
    plan: &Plan,
    slots: Vec<Option<Assignment>>,
    holders: &Holders<'_>,
) -> Result<Vec<Assignment>, Failure> {
    let mut ips = Vec::new();
    let mut first_failure = None;
    for ((family, request), slot) in plan.iter().zip(slots) {
        let result = match (slot, request) {
            (Some(kept), _) => Ok(kept),
            (None, Some(ip)) => take_requested(pools, svc, *ip, holders),
            (None, None) => pick(pools, svc, *family, holders),
        };
        match result {
            Ok(assignment) => ips.push(assignment),
            Err(failure)
                if svc.family_policy == IpFamilyPolicy::PreferDualStack && request.is_none() =>
            {
                first_failure.get_or_insert(failure);
            }
            Err(failure) => return Err(failure),
        }
    }
    match (ips.is_empty(), first_failure) {
        (true, Some(failure)) => Err(failure),
        _ => Ok(ips),
    }
}

fn take_requested(
    pools: &[&Pool],
    svc: &ServiceView,
    ip: IpAddr,
    holders: &Holders<'_>,
) -> Result<Assignment, Failure> {
    let Some(pool) = pool_for(pools, ip, svc, true) else {
        let message = format!("{ip} is in no IPAddressPool this Service may use");
        return Err((FailureReason::RequestedAddressUnavailable, message));
    };
    if holders.may_use(ip, svc) {
        Ok(Assignment {
            ip,
            pool: pool.name.clone(),
        })
    } else if svc.sharing_key.is_none() {
        Err((
            FailureReason::RequestedAddressUnavailable,
            format!("{ip} is already allocated to another Service"),
        ))
    } else {
        let message =
            format!("{ip} is used by a Service this one may not share it with: {SHARING_RULE}");
        Err((FailureReason::SharingConflict, message))
    }
}

fn pick(
    pools: &[&Pool],
    svc: &ServiceView,
    family: IpFamily,
    holders: &Holders<'_>,
) -> Result<Assignment, Failure> {
    let candidates: Vec<&Pool> = pools
        .iter()
        .copied()
        .filter(|p| allows(p, svc, false))
        .collect();
    if candidates.is_empty() {
        let refused: Vec<&str> = pools
            .iter()
            .filter(|p| svc.pool.as_ref().is_none_or(|n| *n == p.name))
            .filter(|p| (p.auto_assign || svc.pool.is_some()) && !admits(p, svc))
            .map(|p| p.name.as_str())
            .collect();
        let message = match &svc.pool {
            Some(name) if refused.is_empty() => format!("IPAddressPool {name:?} does not exist"),
            None if refused.is_empty() => "no IPAddressPool has autoAssign enabled".to_string(),
            _ => format!(
                "serviceAllocation of IPAddressPool {} does not admit this Service (namespaces, \
                 namespaceSelector, serviceSelector)",
                refused.join(", ")
            ),
        };
        return Err((FailureReason::NoMatchingPool, message));
    }
    let names: Vec<&str> = candidates.iter().map(|p| p.name.as_str()).collect();
    let v4 = family == IpFamily::V4;
    let candidates: Vec<&Pool> = candidates
        .into_iter()
        .filter(|p| p.ranges.iter().any(|r| r.first.is_ipv4() == v4))
        .collect();
    if candidates.is_empty() {
        let message = format!("no {} addresses in {}", family.as_str(), names.join(", "));
        return Err((FailureReason::NoMatchingPool, message));
    }
    // With a key: the lowest address already used by Services it may share with.
    if let Some(shared) = svc
        .sharing_key
        .as_deref()
        .and_then(|k| holders.by_key.get(k))
    {
        for ip in shared.iter().copied().filter(|ip| ip.is_ipv4() == v4) {
            if holders.may_use(ip, svc)
                && let Some(pool) = pool_for(pools, ip, svc, false)
            {
                return Ok(Assignment {
                    ip,
                    pool: pool.name.clone(),
                });
            }
        }
    }
    for pool in &candidates {
        let mut cursors = holders.cursors.borrow_mut();
        let cursor = cursors.entry((pool.name.clone(), v4)).or_default();
        if let Some(ip) = pool.first_free_from(v4, &holders.used, cursor) {
            return Ok(Assignment {
                ip,
                pool: pool.name.clone(),
            });
        }
    }
    let names: Vec<&str> = candidates.iter().map(|p| p.name.as_str()).collect();
    Err((
        FailureReason::PoolExhausted,
        format!(
            "no free {} address in {}",
            family.as_str(),
            names.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests;

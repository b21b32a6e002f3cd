//! Pure IPAM: Services + pools → the external IP (or the failure) each Service should have.
//!
//! No I/O. Level-triggered: the input is everything observed now, including each Service's current
//! `status.loadBalancer.ingress` — which is how allocations survive a controller restart (they are
//! read back, never reshuffled).
//!
//! Order of decisions (deterministic; oldest Service first, by `creationTimestamp` then
//! namespace/name):
//! 1. **keep**: an eligible Service keeps the address already in its status while that address is
//!    still valid for it (a pool offers it and allows this Service; it matches the Service's
//!    request, if any; no older Service holds it);
//! 2. **assign**: every other eligible Service gets its requested address (`drawbridge.dev/load-balancer-ips`,
//!    else `spec.loadBalancerIP`) if a pool offers it and it is free, or else the lowest free address
//!    of the requested pool (`drawbridge.dev/address-pool`) or of the auto-assign pools in name order.
//!
//! Never one address for two Services. Sharing, dual-stack and announcement come with the
//! lb-controller issue.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use drawbridge_resources::names::{ANNOTATION_ADDRESS_POOL, ANNOTATION_LOAD_BALANCER_IPS, LOAD_BALANCER_CLASS};

use crate::pool::Pool;

/// `namespace/name` of a Service.
pub type ServiceKey = (String, String);

/// What the allocator needs to know about one Service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceView {
    /// Namespace and name.
    pub key: ServiceKey,
    /// `metadata.creationTimestamp`; older Services win conflicts. Missing sorts first.
    pub created: Option<Time>,
    /// `type: LoadBalancer` and a class we handle.
    pub eligible: bool,
    /// `spec.loadBalancerClass` names another controller: never touched.
    pub foreign: bool,
    /// Requested address (annotation, else `spec.loadBalancerIP`), or why the request is unusable.
    pub requested: Option<Result<IpAddr, String>>,
    /// Pool requested by annotation.
    pub pool: Option<String>,
    /// `true` for an IPv6 primary family (`spec.ipFamilies[0]`).
    pub ipv6: bool,
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
                let first = list.split(',').map(str::trim).find(|s| !s.is_empty());
                first.map(|s| s.parse::<IpAddr>().map_err(|e| format!("{ANNOTATION_LOAD_BALANCER_IPS}: {s:?}: {e}")))
            }
            None => spec
                .load_balancer_ip
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<IpAddr>().map_err(|e| format!("spec.loadBalancerIP: {s:?}: {e}"))),
        };
        let current = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .map(|ingress| ingress.iter().filter_map(|i| i.ip.as_deref()?.parse().ok()).collect())
            .unwrap_or_default();
        ServiceView {
            key: (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default()),
            created: meta.creation_timestamp.clone(),
            eligible: spec.type_.as_deref() == Some("LoadBalancer") && ours,
            foreign: !ours,
            requested,
            pool: annotations.get(ANNOTATION_ADDRESS_POOL).cloned(),
            ipv6: spec.ip_families.as_ref().and_then(|f| f.first()).is_some_and(|f| f == "IPv6"),
            current,
        }
    }
}

/// Why a Service got no address; the `reason` of condition `drawbridge.dev/AddressAllocated=False`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// Every pool the Service may use is full.
    PoolExhausted,
    /// The requested address is in no pool that allows the Service, is taken, or does not parse.
    RequestedAddressUnavailable,
    /// No pool may serve the Service (the named pool does not exist, or no pool auto-assigns).
    NoMatchingPool,
}

impl FailureReason {
    /// CamelCase reason string for conditions and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::PoolExhausted => "PoolExhausted",
            FailureReason::RequestedAddressUnavailable => "RequestedAddressUnavailable",
            FailureReason::NoMatchingPool => "NoMatchingPool",
        }
    }
}

/// The decision for one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The Service should carry `ip` (from `pool`).
    Allocated {
        /// The external address.
        ip: IpAddr,
        /// The pool it came from.
        pool: String,
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

/// Decides every Service's address. Services of other classes, and non-LoadBalancer Services that
/// carry nothing of ours, are absent from the result.
pub fn allocate(pools: &[Pool], services: &[ServiceView]) -> BTreeMap<ServiceKey, Outcome> {
    let mut order: Vec<&ServiceView> = services.iter().collect();
    order.sort_by(|a, b| {
        let ta = a.created.as_ref().map(|t| t.0);
        let tb = b.created.as_ref().map(|t| t.0);
        ta.cmp(&tb).then_with(|| a.key.cmp(&b.key))
    });
    let mut pools: Vec<&Pool> = pools.iter().collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));

    let mut used: BTreeSet<IpAddr> = BTreeSet::new();
    let mut out = BTreeMap::new();

    // 1. keep
    for svc in order.iter().filter(|s| s.eligible) {
        let Some(&ip) = svc.current.first() else { continue };
        let wanted = match &svc.requested {
            Some(Ok(req)) => *req == ip,
            Some(Err(_)) => false,
            None => true,
        };
        let pool = pools.iter().find(|p| p.offers(ip) && allows(p, svc));
        if let (true, Some(pool), false) = (wanted, pool, used.contains(&ip)) {
            used.insert(ip);
            out.insert(svc.key.clone(), Outcome::Allocated { ip, pool: pool.name.clone() });
        }
    }

    // 2. assign
    for svc in order.iter().filter(|s| s.eligible) {
        if out.contains_key(&svc.key) {
            continue;
        }
        let outcome = assign(&pools, svc, &used);
        if let Outcome::Allocated { ip, .. } = &outcome {
            used.insert(*ip);
        }
        out.insert(svc.key.clone(), outcome);
    }

    // 3. release what non-eligible Services still carry from our pools
    for svc in order.iter().filter(|s| !s.eligible && !s.foreign) {
        if svc.current.iter().any(|ip| pools.iter().any(|p| p.offers(*ip))) {
            out.insert(svc.key.clone(), Outcome::Released);
        }
    }
    out
}

/// Whether `pool` may serve `svc`: the pool it named, or any auto-assign pool, or — for an explicit
/// address request — any pool offering that address (MetalLB semantics).
fn allows(pool: &Pool, svc: &ServiceView) -> bool {
    match &svc.pool {
        Some(name) => *name == pool.name,
        None => pool.auto_assign || matches!(svc.requested, Some(Ok(_))),
    }
}

fn assign(pools: &[&Pool], svc: &ServiceView, used: &BTreeSet<IpAddr>) -> Outcome {
    let failed = |reason, message: String| Outcome::Failed { reason, message };
    match &svc.requested {
        Some(Err(problem)) => failed(FailureReason::RequestedAddressUnavailable, problem.clone()),
        Some(Ok(ip)) => match pools.iter().find(|p| p.offers(*ip) && allows(p, svc)) {
            None => failed(
                FailureReason::RequestedAddressUnavailable,
                format!("{ip} is in no IPAddressPool this Service may use"),
            ),
            Some(_) if used.contains(ip) => failed(
                FailureReason::RequestedAddressUnavailable,
                format!("{ip} is already allocated to another Service"),
            ),
            Some(pool) => Outcome::Allocated { ip: *ip, pool: pool.name.clone() },
        },
        None => {
            let candidates: Vec<&&Pool> = pools.iter().filter(|p| allows(p, svc)).collect();
            if candidates.is_empty() {
                let message = match &svc.pool {
                    Some(name) => format!("IPAddressPool {name:?} does not exist"),
                    None => "no IPAddressPool has autoAssign enabled".to_string(),
                };
                return failed(FailureReason::NoMatchingPool, message);
            }
            for pool in &candidates {
                if let Some(ip) = pool.first_free(!svc.ipv6, used) {
                    return Outcome::Allocated { ip, pool: pool.name.clone() };
                }
            }
            let names: Vec<&str> = candidates.iter().map(|p| p.name.as_str()).collect();
            let family = if svc.ipv6 { "IPv6" } else { "IPv4" };
            failed(FailureReason::PoolExhausted, format!("no free {family} address in {}", names.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests;

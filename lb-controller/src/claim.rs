//! Pure: which `IPAddressClaim`s to create before the status writes and which to delete after.
//!
//! ```text
//!  claims (listed) ─┐
//!  ServiceViews ────┼─> plan() ─> create: [claim]       (before any status write of the pass)
//!  outcomes ────────┘            replace: [claim]       (owner gone or moved: delete, then create)
//!                                delete: [name, owner]  (after the owner's status write succeeded)
//! ```
//!
//! The KEP-1880 pattern (Kubernetes' `IPAddress` objects for ClusterIPs): one cluster-scoped object
//! per address, named after it ([`claim_name`]), so the API server (or, standalone, an exclusive
//! file create) refuses a second owner. A Service may show an address in its status only after
//! the claim for it exists; an address is released (claim deleted) only after no Service shows it.
//!
//! Shared addresses (`drawbridge.dev/allow-shared-ip`) have one claim, owned by the oldest holder.
//! The claim names its Service in `spec.serviceRef` (as `IPAddress.spec.parentRef` does), **not**
//! with an `ownerReference`: Kubernetes garbage collection refuses cluster-scoped dependents of
//! namespaced owners (it reports `OwnerRefInvalidNamespace` and never deletes them), so
//! lb-controller collects orphan claims itself.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use drawbridge_resources::crd::{
    IPAddressClaim, IPAddressClaimSpec, ServiceRef, claim_address, claim_name,
};

use crate::allocate::{ClaimView, Outcome, ServiceKey, ServiceView};

/// The allocator's view of a claim, or `None` for an object whose name is not an address.
pub fn view(claim: &IPAddressClaim) -> Option<ClaimView> {
    let ip = claim_address(claim.metadata.name.as_deref()?)?;
    let r = &claim.spec.service_ref;
    Some(ClaimView {
        ip,
        owner: (r.namespace.clone(), r.name.clone()),
        uid: (!r.uid.is_empty()).then(|| r.uid.clone()),
    })
}

/// A new claim of `ip` for `owner`, from `pool`.
pub fn new_claim(ip: IpAddr, owner: &ServiceView, pool: &str) -> IPAddressClaim {
    IPAddressClaim::new(
        &claim_name(ip),
        IPAddressClaimSpec {
            service_ref: ServiceRef {
                namespace: owner.key.0.clone(),
                name: owner.key.1.clone(),
                uid: owner.uid.clone().unwrap_or_default(),
            },
            pool: pool.to_string(),
            sharing_key: owner.sharing_key.clone(),
        },
    )
}

/// `metadata.name` of a claim (empty if unset).
pub fn claim_name_of(claim: &IPAddressClaim) -> String {
    claim.metadata.name.clone().unwrap_or_default()
}

/// What to do with claims in one pass.
#[derive(Debug, Default)]
pub struct ClaimPlan {
    /// Addresses held by no claim: create these before any status write.
    pub create: Vec<IPAddressClaim>,
    /// Claims naming a Service that is gone or no longer holds the address while another Service
    /// does: delete the old one, create this one (before any status write).
    pub replace: Vec<IPAddressClaim>,
    /// `(claim name, its Service)`: nobody should hold the address any more. Delete after the
    /// status writes of the pass, and only when that Service is gone, shows no such address, or its
    /// status write in this pass succeeded.
    pub delete: Vec<(String, ServiceKey)>,
}

/// Plans claims for `outcomes`. `services` are all Services observed (claims of Services not among
/// them are orphans); `claims` are all claims known.
pub fn plan(
    claims: &[IPAddressClaim],
    services: &[ServiceView],
    outcomes: &BTreeMap<ServiceKey, Outcome>,
) -> ClaimPlan {
    let mut order: Vec<&ServiceView> = services.iter().collect();
    order.sort_by(|a, b| {
        let ta = a.created.as_ref().map(|t| t.0);
        let tb = b.created.as_ref().map(|t| t.0);
        ta.cmp(&tb).then_with(|| a.key.cmp(&b.key))
    });
    // Desired holders of every address, oldest first, with the pool it is reported from.
    let mut holders: BTreeMap<IpAddr, (Vec<&ServiceView>, &str)> = BTreeMap::new();
    for svc in &order {
        for a in outcomes.get(&svc.key).map_or(&[][..], Outcome::assignments) {
            holders
                .entry(a.ip)
                .or_insert_with(|| (Vec::new(), a.pool.as_str()))
                .0
                .push(svc);
        }
    }
    let existing: BTreeMap<IpAddr, (&IPAddressClaim, ClaimView)> = claims
        .iter()
        .filter_map(|c| view(c).map(|v| (v.ip, (c, v))))
        .collect();
    let mut plan = ClaimPlan::default();
    for (ip, (list, pool)) in &holders {
        match existing.get(ip) {
            Some((_, v)) if list.iter().any(|s| v.names(s)) => {}
            Some(_) => plan.replace.push(new_claim(*ip, list[0], pool)),
            None => plan.create.push(new_claim(*ip, list[0], pool)),
        }
    }
    let held: BTreeSet<&IpAddr> = holders.keys().collect();
    for (ip, (claim, v)) in &existing {
        if !held.contains(ip) {
            let name = claim.metadata.name.clone().unwrap_or_default();
            plan.delete.push((name, v.owner.clone()));
        }
    }
    plan
}

/// Whether the claim `existing` (found when creating ours failed with "already exists") lets us go
/// on: it names one of the Services meant to hold the address (ours or a Service sharing it).
/// Otherwise someone else owns the address, unless its Service is gone (`orphan`).
pub fn existing_is_ours(
    existing: &IPAddressClaim,
    ours: &IPAddressClaim,
    services: &[ServiceView],
    outcomes: &BTreeMap<ServiceKey, Outcome>,
) -> ExistingClaim {
    let Some(v) = view(existing) else {
        return ExistingClaim::Orphan;
    };
    let Some(owner) = services.iter().find(|s| v.names(s)) else {
        return ExistingClaim::Orphan;
    };
    let wanted_by_owner = outcomes
        .get(&owner.key)
        .is_some_and(|o| o.assignments().iter().any(|a| a.ip == v.ip));
    if wanted_by_owner || v.owner == ours.spec.service_ref_key() {
        ExistingClaim::Ours
    } else {
        ExistingClaim::Foreign
    }
}

/// See [`existing_is_ours`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExistingClaim {
    /// Names a Service meant to hold the address: nothing to do.
    Ours,
    /// Names a Service that does not exist: replace it.
    Orphan,
    /// Names another live Service: that Service owns the address; allocate again.
    Foreign,
}

trait ServiceRefKey {
    fn service_ref_key(&self) -> ServiceKey;
}

impl ServiceRefKey for IPAddressClaimSpec {
    fn service_ref_key(&self) -> ServiceKey {
        (
            self.service_ref.namespace.clone(),
            self.service_ref.name.clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocate::{Assignment, IpFamily, IpFamilyPolicy};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn svc(name: &str, age: i64) -> ServiceView {
        ServiceView {
            key: ("default".into(), name.into()),
            uid: Some(format!("uid-{name}")),
            labels: BTreeMap::new(),
            namespace_labels: BTreeMap::new(),
            created: Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(age).expect("time"),
            )),
            eligible: true,
            foreign: false,
            requested: None,
            pool: None,
            families: vec![IpFamily::V4],
            family_policy: IpFamilyPolicy::SingleStack,
            sharing_key: None,
            ports: BTreeSet::new(),
            etp_local: false,
            selector: BTreeMap::new(),
            current: vec![],
        }
    }

    fn at(ip: &str) -> Outcome {
        Outcome::Allocated {
            ips: vec![Assignment {
                ip: ip.parse().expect("ip"),
                pool: "lab".into(),
            }],
        }
    }

    fn key(n: &str) -> ServiceKey {
        ("default".into(), n.into())
    }

    fn claim(ip: &str, owner: &ServiceView) -> IPAddressClaim {
        new_claim(ip.parse().expect("ip"), owner, "lab")
    }

    fn names(list: &[IPAddressClaim]) -> Vec<(String, String)> {
        list.iter()
            .map(|c| {
                (
                    c.metadata.name.clone().expect("name"),
                    c.spec.service_ref.name.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn creates_missing_replaces_orphans_and_deletes_released() {
        let (a, b, c) = (svc("a", 1), svc("b", 2), svc("c", 3));
        let gone = svc("gone", 0);
        let claims = [
            claim("203.0.113.1", &a),    // kept
            claim("203.0.113.2", &gone), // orphan, but c now holds .2: replace
            claim("203.0.113.9", &b),    // b moved to .3: delete after b's write
            claim("203.0.113.8", &gone), // orphan nobody holds: delete
        ];
        let outcomes = [
            (key("a"), at("203.0.113.1")),
            (key("b"), at("203.0.113.3")),
            (key("c"), at("203.0.113.2")),
        ]
        .into();
        let p = plan(&claims, &[a, b, c], &outcomes);
        assert_eq!(names(&p.create), [("203.0.113.3".into(), "b".into())]);
        assert_eq!(names(&p.replace), [("203.0.113.2".into(), "c".into())]);
        assert_eq!(
            p.delete,
            [
                ("203.0.113.8".to_string(), key("gone")),
                ("203.0.113.9".to_string(), key("b"))
            ]
        );
    }

    #[test]
    fn shared_address_has_one_claim_owned_by_the_oldest_holder() {
        let (old, young) = (svc("old", 1), svc("young", 2));
        let outcomes: BTreeMap<ServiceKey, Outcome> = [
            (key("old"), at("203.0.113.1")),
            (key("young"), at("203.0.113.1")),
        ]
        .into();
        let p = plan(&[], &[young.clone(), old.clone()], &outcomes);
        assert_eq!(names(&p.create), [("203.0.113.1".into(), "old".into())]);
        // A claim by either holder is fine; once "old" is gone the claim moves to "young".
        let p = plan(
            &[claim("203.0.113.1", &young)],
            &[young.clone(), old],
            &outcomes,
        );
        assert!(p.create.is_empty() && p.replace.is_empty() && p.delete.is_empty());
        let outcomes = [(key("young"), at("203.0.113.1"))].into();
        let p = plan(&[claim("203.0.113.1", &svc("old", 1))], &[young], &outcomes);
        assert_eq!(names(&p.replace), [("203.0.113.1".into(), "young".into())]);
    }

    #[test]
    fn a_recreated_service_does_not_inherit_a_claim() {
        let mut again = svc("web", 5);
        again.uid = Some("uid-second-life".into());
        let outcomes = [(key("web"), at("203.0.113.1"))].into();
        let p = plan(&[claim("203.0.113.1", &svc("web", 1))], &[again], &outcomes);
        assert_eq!(names(&p.replace), [("203.0.113.1".into(), "web".into())]);
        assert_eq!(p.replace[0].spec.service_ref.uid, "uid-second-life");
    }

    #[test]
    fn classifies_an_existing_claim_after_a_conflict() {
        let (a, b) = (svc("a", 1), svc("b", 2));
        let ours = claim("203.0.113.1", &a);
        let outcomes: BTreeMap<ServiceKey, Outcome> = [(key("a"), at("203.0.113.1"))].into();
        let services = [a.clone(), b.clone()];
        assert_eq!(
            existing_is_ours(&claim("203.0.113.1", &a), &ours, &services, &outcomes),
            ExistingClaim::Ours
        );
        assert_eq!(
            existing_is_ours(&claim("203.0.113.1", &b), &ours, &services, &outcomes),
            ExistingClaim::Foreign
        );
        assert_eq!(
            existing_is_ours(
                &claim("203.0.113.1", &svc("x", 0)),
                &ours,
                &services,
                &outcomes
            ),
            ExistingClaim::Orphan
        );
    }
}

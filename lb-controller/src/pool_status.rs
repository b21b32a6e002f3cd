//! Pure: pools + this pass's outcomes → the `IPAddressPool.status` each pool should show.
//!
//! ```text
//!  pools ─┬─ usable addresses per family (avoidBuggyIPs honoured)
//!         ├─ overlaps between pools ─────────────> condition Overlapping (both pools flagged)
//!         └─ refused spec entries ───────────────> condition Valid
//!  outcomes ── addresses in use ──> assignedIPv4/6 (reported from this pool),
//!                                   availableIPv4/6 (usable here and held by nobody)
//! ```
//!
//! Counts follow MetalLB's pool status (`assignedIPv4`, `availableIPv4`, … ): an address in the
//! overlap of two pools counts as assigned in the pool it is reported from (the first admitting
//! pool in priority order) and as unavailable in both. Compute, compare, write: [`desired_status`]
//! returns `None` when the pool already shows it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use drawbridge_resources::crd::{IPAddressPoolStatus, PoolCondition};

use crate::allocate::{Outcome, ServiceKey};
use crate::pool::Pool;

/// Condition type: `True` when every `spec.addresses` / selector entry was accepted.
pub const CONDITION_VALID: &str = "Valid";
/// Condition type: `True` when the pool shares addresses with another pool.
pub const CONDITION_OVERLAPPING: &str = "Overlapping";

/// The status every pool should show, by pool name. `now` (RFC 3339) stamps conditions whose
/// status changed against `current` (the statuses observed on the pool objects).
pub fn pool_statuses(
    pools: &[Pool],
    outcomes: &BTreeMap<ServiceKey, Outcome>,
    current: &BTreeMap<String, IPAddressPoolStatus>,
    now: &str,
) -> BTreeMap<String, IPAddressPoolStatus> {
    let mut in_use: BTreeSet<IpAddr> = BTreeSet::new();
    let mut assigned: BTreeMap<&str, BTreeSet<IpAddr>> = BTreeMap::new();
    for a in outcomes.values().flat_map(Outcome::assignments) {
        in_use.insert(a.ip);
        assigned.entry(a.pool.as_str()).or_default().insert(a.ip);
    }
    pools
        .iter()
        .map(|pool| {
            let mine = assigned.get(pool.name.as_str());
            let count_assigned = |v4: bool| {
                mine.map_or(0, |s| s.iter().filter(|ip| ip.is_ipv4() == v4).count()) as u128
            };
            let held_here = |v4: bool| {
                in_use
                    .iter()
                    .filter(|ip| ip.is_ipv4() == v4 && pool.offers(**ip))
                    .count() as u128
            };
            let available = |v4: bool| pool.usable(v4).saturating_sub(held_here(v4));
            let overlapping: Vec<&str> = pools
                .iter()
                .filter(|other| other.name != pool.name && pool.overlaps(other))
                .map(|other| other.name.as_str())
                .collect();
            let previous = current.get(&pool.name);
            let condition = |type_: &str, status: bool, reason: &str, message: String| {
                let status = if status { "True" } else { "False" };
                let since = previous
                    .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
                    .filter(|c| c.status == status)
                    .map_or_else(|| now.to_string(), |c| c.last_transition_time.clone());
                PoolCondition {
                    type_: type_.to_string(),
                    status: status.to_string(),
                    reason: reason.to_string(),
                    message,
                    last_transition_time: since,
                }
            };
            let valid = if pool.problems.is_empty() {
                condition(CONDITION_VALID, true, "Valid", String::new())
            } else {
                let message = format!("entries skipped: {}", pool.problems.join("; "));
                condition(CONDITION_VALID, false, "InvalidEntries", message)
            };
            let overlap = if overlapping.is_empty() {
                condition(CONDITION_OVERLAPPING, false, "NoOverlap", String::new())
            } else {
                let message = format!(
                    "shares addresses with IPAddressPool {}; each address is still handed out once",
                    overlapping.join(", ")
                );
                condition(CONDITION_OVERLAPPING, true, "OverlapsPool", message)
            };
            let status = IPAddressPoolStatus {
                assigned_ipv4: saturate(count_assigned(true)),
                available_ipv4: saturate(available(true)),
                assigned_ipv6: saturate(count_assigned(false)),
                available_ipv6: saturate(available(false)),
                conditions: vec![valid, overlap],
            };
            (pool.name.clone(), status)
        })
        .collect()
}

/// The merge patch for a pool's `status` when `desired` differs from `current`.
pub fn desired_status(
    desired: &IPAddressPoolStatus,
    current: Option<&IPAddressPoolStatus>,
) -> Option<serde_json::Value> {
    (current != Some(desired)).then(|| serde_json::to_value(desired).unwrap_or_default())
}

fn saturate(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocate::Assignment;

    fn allocated(list: &[(&str, &str)]) -> Outcome {
        Outcome::Allocated {
            ips: list
                .iter()
                .map(|(ip, pool)| Assignment {
                    ip: ip.parse().expect("ip"),
                    pool: pool.to_string(),
                })
                .collect(),
        }
    }

    fn key(n: &str) -> ServiceKey {
        ("default".into(), n.into())
    }

    #[test]
    fn counts_per_family_and_flags_both_overlapping_pools() {
        let pools = [
            Pool {
                avoid_buggy_ips: true,
                ..Pool::test("a", &["192.0.2.0/28", "2001:db8::/120"])
            },
            Pool::test("b", &["192.0.2.8-192.0.2.23"]),
            Pool::test("c", &["198.51.100.0/30"]),
        ];
        let outcomes: BTreeMap<ServiceKey, Outcome> = [
            (
                key("x"),
                allocated(&[("192.0.2.1", "a"), ("2001:db8::1", "a")]),
            ),
            (key("y"), allocated(&[("192.0.2.9", "a")])),
            (key("z"), allocated(&[("192.0.2.20", "b")])),
        ]
        .into();
        let got = pool_statuses(&pools, &outcomes, &BTreeMap::new(), "2026-01-01T00:00:00Z");
        let a = &got["a"];
        // a: 16 IPv4 less .0 (buggy) = 15 usable; .1 and .9 held.
        assert_eq!((a.assigned_ipv4, a.available_ipv4), (2, 13));
        assert_eq!((a.assigned_ipv6, a.available_ipv6), (1, 255));
        let b = &got["b"];
        // b: 16 usable; .9 (held through a) and .20 held.
        assert_eq!((b.assigned_ipv4, b.available_ipv4), (1, 14));
        for (name, other) in [("a", "b"), ("b", "a")] {
            let c = &got[name].conditions[1];
            assert_eq!(
                (c.type_.as_str(), c.status.as_str()),
                (CONDITION_OVERLAPPING, "True")
            );
            assert!(c.message.contains(other), "{}", c.message);
        }
        let c = &got["c"];
        assert_eq!(c.conditions[1].status, "False");
        assert_eq!(c.conditions[0].status, "True");
        assert_eq!((c.assigned_ipv4, c.available_ipv4), (0, 4));
    }

    #[test]
    fn conditions_keep_their_transition_time_and_report_bad_entries() {
        let mut bad = Pool::test("p", &["192.0.2.0/30"]);
        bad.problems
            .push("\"nonsense\": invalid IP address syntax".into());
        let first = pool_statuses(&[bad.clone()], &BTreeMap::new(), &BTreeMap::new(), "t1");
        assert_eq!(first["p"].conditions[0].status, "False");
        assert!(first["p"].conditions[0].message.contains("nonsense"));
        assert_eq!(
            desired_status(&first["p"], first.get("p")),
            None,
            "unchanged: no write"
        );
        let again = pool_statuses(&[bad.clone()], &BTreeMap::new(), &first, "t2");
        assert_eq!(again["p"].conditions[0].last_transition_time, "t1");
        bad.problems.clear();
        let fixed = pool_statuses(&[bad], &BTreeMap::new(), &first, "t3");
        assert_eq!(fixed["p"].conditions[0].status, "True");
        assert_eq!(fixed["p"].conditions[0].last_transition_time, "t3");
        assert!(desired_status(&fixed["p"], first.get("p")).is_some());
    }
}

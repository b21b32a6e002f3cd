//! Address pools: parsing `IPAddressPool.spec.addresses` into ranges, `serviceAllocation` (which
//! Services may use a pool, in which order), and finding free addresses.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use drawbridge_resources::crd::{IPAddressPool, LabelSelector};

/// One inclusive address range of a pool (both ends in the same family).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressRange {
    /// First address, inclusive.
    pub first: IpAddr,
    /// Last address, inclusive.
    pub last: IpAddr,
}

impl AddressRange {
    /// Parses `203.0.113.0/24`, `2001:db8::/120`, `203.0.113.10-203.0.113.20` or a single address.
    ///
    /// Errors name the entry and why it was refused (mixed families, first > last, syntax).
    pub fn parse(entry: &str) -> Result<AddressRange, String> {
        let entry = entry.trim();
        if let Some((a, b)) = entry.split_once('-') {
            let first: IpAddr = a.trim().parse().map_err(|e| format!("{entry:?}: {e}"))?;
            let last: IpAddr = b.trim().parse().map_err(|e| format!("{entry:?}: {e}"))?;
            if first.is_ipv4() != last.is_ipv4() {
                return Err(format!("{entry:?}: range mixes IPv4 and IPv6"));
            }
            if first > last {
                return Err(format!("{entry:?}: first address is after the last"));
            }
            return Ok(AddressRange { first, last });
        }
        if entry.contains('/') {
            let net: ipnet::IpNet = entry.parse().map_err(|e| format!("{entry:?}: {e}"))?;
            return Ok(AddressRange {
                first: net.network(),
                last: net.broadcast(),
            });
        }
        let ip: IpAddr = entry.parse().map_err(|e| format!("{entry:?}: {e}"))?;
        Ok(AddressRange {
            first: ip,
            last: ip,
        })
    }

    /// Whether `ip` lies inside the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.first.is_ipv4() && self.first <= ip && ip <= self.last
    }

    /// Number of addresses in the range (saturating).
    pub fn size(&self) -> u128 {
        (to_u128(self.last) - to_u128(self.first)).saturating_add(1)
    }
}

/// A validated pool: its name, usable ranges and flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    /// `metadata.name`.
    pub name: String,
    /// Ranges that parsed; entries that did not are in `problems`.
    pub ranges: Vec<AddressRange>,
    /// `spec.autoAssign`.
    pub auto_assign: bool,
    /// `spec.avoidBuggyIPs`: skip IPv4 addresses ending in `.0` or `.255`.
    pub avoid_buggy_ips: bool,
    /// One message per `spec.addresses` (or selector) entry that was refused.
    pub problems: Vec<String>,
    /// `spec.serviceAllocation.priority`: lower first, `None` after every number.
    pub priority: Option<i32>,
    /// `spec.serviceAllocation.namespaces`.
    pub namespaces: Vec<String>,
    /// `spec.serviceAllocation.namespaceSelector`.
    pub namespace_selector: Option<LabelSelector>,
    /// `spec.serviceAllocation.serviceSelector`.
    pub service_selector: Option<LabelSelector>,
}

/// The order pools are tried in (MetalLB): lower `priority` first, pools without a priority last,
/// then by name.
pub fn pool_order(a: &Pool, b: &Pool) -> Ordering {
    let rank = |p: &Pool| (p.priority.is_none(), p.priority.unwrap_or(0));
    rank(a).cmp(&rank(b)).then_with(|| a.name.cmp(&b.name))
}

/// Whether `selector` matches `labels` (Kubernetes label-selector rules: every `matchLabels` pair
/// and every requirement must hold; `In`/`NotIn`/`Exists`/`DoesNotExist`). An unknown operator
/// matches nothing (the pool is then reported invalid, see [`selector_problems`]).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    selector
        .match_labels
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
        && selector.match_expressions.iter().all(|r| {
            let value = labels.get(&r.key);
            match r.operator.as_str() {
                "In" => value.is_some_and(|v| r.values.contains(v)),
                "NotIn" => value.is_none_or(|v| !r.values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// Why `selector` is malformed (unknown operator, `In`/`NotIn` without values), one line each.
pub fn selector_problems(field: &str, selector: &LabelSelector) -> Vec<String> {
    selector
        .match_expressions
        .iter()
        .filter_map(|r| match r.operator.as_str() {
            "In" | "NotIn" if r.values.is_empty() => {
                Some(format!("{field}: {:?} {} needs values", r.key, r.operator))
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => None,
            other => Some(format!("{field}: unknown operator {other:?}")),
        })
        .collect()
}

impl Pool {
    /// Builds a pool from its object; bad entries are kept as `problems`, never fatal.
    pub fn from_object(pool: &IPAddressPool) -> Pool {
        let mut ranges = Vec::new();
        let mut problems = Vec::new();
        for entry in &pool.spec.addresses {
            match AddressRange::parse(entry) {
                Ok(range) => ranges.push(range),
                Err(problem) => problems.push(problem),
            }
        }
        let allocation = pool.spec.service_allocation.clone().unwrap_or_default();
        for (field, selector) in [
            (
                "serviceAllocation.namespaceSelector",
                &allocation.namespace_selector,
            ),
            (
                "serviceAllocation.serviceSelector",
                &allocation.service_selector,
            ),
        ] {
            if let Some(selector) = selector {
                problems.extend(selector_problems(field, selector));
            }
        }
        Pool {
            name: pool.metadata.name.clone().unwrap_or_default(),
            ranges,
            auto_assign: pool.spec.auto_assign,
            avoid_buggy_ips: pool.spec.avoid_buggy_ips,
            problems,
            priority: allocation.priority,
            namespaces: allocation.namespaces,
            namespace_selector: allocation.namespace_selector,
            service_selector: allocation.service_selector,
        }
    }

    /// A pool with these ranges and defaults otherwise (auto-assign, no filters); for tests and
    /// benchmarks. Panics on a bad range.
    pub fn test(name: &str, ranges: &[&str]) -> Pool {
        Pool {
            name: name.into(),
            ranges: ranges
                .iter()
                .map(|r| AddressRange::parse(r).expect("valid test range"))
                .collect(),
            auto_assign: true,
            avoid_buggy_ips: false,
            problems: vec![],
            priority: None,
            namespaces: vec![],
            namespace_selector: None,
            service_selector: None,
        }
    }

    /// `serviceAllocation`'s filter: whether a Service in `namespace` (whose Namespace carries
    /// `namespace_labels`) with `service_labels` may use this pool. Namespaces: listed **or**
    /// selected (when either is given); Services: selected (when given); both must hold.
    pub fn admits(
        &self,
        namespace: &str,
        namespace_labels: &BTreeMap<String, String>,
        service_labels: &BTreeMap<String, String>,
    ) -> bool {
        let namespace_ok = (self.namespaces.is_empty() && self.namespace_selector.is_none())
            || self.namespaces.iter().any(|n| n == namespace)
            || self
                .namespace_selector
                .as_ref()
                .is_some_and(|s| selector_matches(s, namespace_labels));
        namespace_ok
            && self
                .service_selector
                .as_ref()
                .is_none_or(|s| selector_matches(s, service_labels))
    }

    /// How many addresses of one family (`v4`) the pool can hand out: the size of its ranges,
    /// less IPv4 `.0`/`.255` addresses when `avoidBuggyIPs` is set (saturating). Overlapping
    /// ranges of one pool count once per range.
    pub fn usable(&self, v4: bool) -> u128 {
        self.ranges
            .iter()
            .filter(|r| r.first.is_ipv4() == v4)
            .map(|r| {
                let size = r.size();
                match (self.avoid_buggy_ips, r.first, r.last) {
                    (true, IpAddr::V4(first), IpAddr::V4(last)) => {
                        let (first, last) = (u32::from(first) as u128, u32::from(last) as u128);
                        // Addresses n in [first, last] with n % 256 == 0 or 255.
                        let upto =
                            |n: u128, rem: u128| if n < rem { 0 } else { (n - rem) / 256 + 1 };
                        let count = |rem: u128| {
                            upto(last, rem) - if first == 0 { 0 } else { upto(first - 1, rem) }
                        };
                        size - count(0) - count(255)
                    }
                    _ => size,
                }
            })
            .fold(0u128, u128::saturating_add)
    }

    /// Whether the pool's ranges intersect `other`'s (same family).
    pub fn overlaps(&self, other: &Pool) -> bool {
        self.ranges.iter().any(|a| {
            other.ranges.iter().any(|b| {
                a.first.is_ipv4() == b.first.is_ipv4() && a.first <= b.last && b.first <= a.last
            })
        })
    }

    /// Whether the pool may hand out `ip` (inside a range, and not a skipped "buggy" address).
    pub fn offers(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip)) && !(self.avoid_buggy_ips && is_buggy(ip))
    }

    /// The lowest address of `family_v4` the pool offers that is not in `used`.
    ///
    /// Cost: O(addresses of `used` inside the scanned ranges), not O(pool size).
    pub fn first_free(&self, v4: bool, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
        self.first_free_from(v4, used, &mut FreeCursor::default())
    }

    /// [`Pool::first_free`], resuming where the previous call with the same `cursor` stopped.
    ///
    /// Valid only while `used` grows and never shrinks (one allocation pass): every address before
    /// the cursor was used (or skipped) then and still is. Allocating N addresses one after
    /// another costs O(N) in total instead of O(N²) (each call would otherwise step over every
    /// address taken so far). A fresh [`FreeCursor::default`] scans from the start.
    pub fn first_free_from(
        &self,
        v4: bool,
        used: &BTreeSet<IpAddr>,
        cursor: &mut FreeCursor,
    ) -> Option<IpAddr> {
        for (index, range) in self.ranges.iter().enumerate().skip(cursor.range) {
            if range.first.is_ipv4() != v4 {
                continue;
            }
            let first = to_u128(range.first);
            let last = to_u128(range.last);
            let mut candidate = match cursor.next {
                Some(next) if index == cursor.range => next.max(first),
                _ => first,
            };
            if candidate <= last {
                let from = from_u128(candidate, v4);
                let mut taken = used
                    .range(from..=range.last)
                    .map(|ip| to_u128(*ip))
                    .peekable();
                loop {
                    let ip = from_u128(candidate, v4);
                    // Skip every used address at or below the candidate.
                    while taken.peek().is_some_and(|t| *t < candidate) {
                        taken.next();
                    }
                    if taken.peek() != Some(&candidate) && !(self.avoid_buggy_ips && is_buggy(ip)) {
                        *cursor = FreeCursor {
                            range: index,
                            next: Some(candidate),
                        };
                        return Some(ip);
                    }
                    match candidate.checked_add(1) {
                        Some(next) if next <= last => candidate = next,
                        _ => break,
                    }
                }
            }
        }
        *cursor = FreeCursor {
            range: self.ranges.len(),
            next: None,
        };
        None
    }
}

/// Where [`Pool::first_free_from`] resumes: an index into the pool's ranges and the first address
/// of that range not yet known to be used. One per (pool, family) and allocation pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FreeCursor {
    range: usize,
    next: Option<u128>,
}

fn is_buggy(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => matches!(v4.octets()[3], 0 | 255),
        IpAddr::V6(_) => false,
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(addresses: &[&str], avoid: bool) -> Pool {
        Pool {
            avoid_buggy_ips: avoid,
            ..Pool::test("p", addresses)
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn selector(yaml: &str) -> LabelSelector {
        serde_yaml::from_str(yaml).expect("selector")
    }

    #[test]
    fn selectors_follow_kubernetes_rules() {
        let l = labels(&[("tier", "web"), ("team", "a")]);
        for (sel, want) in [
            ("{}", true),
            ("{matchLabels: {tier: web}}", true),
            ("{matchLabels: {tier: db}}", false),
            ("{matchLabels: {tier: web, team: b}}", false),
            (
                "{matchExpressions: [{key: tier, operator: In, values: [web, db]}]}",
                true,
            ),
            (
                "{matchExpressions: [{key: tier, operator: NotIn, values: [web]}]}",
                false,
            ),
            (
                "{matchExpressions: [{key: zone, operator: NotIn, values: [x]}]}",
                true,
            ),
            ("{matchExpressions: [{key: team, operator: Exists}]}", true),
            (
                "{matchExpressions: [{key: team, operator: DoesNotExist}]}",
                false,
            ),
            ("{matchExpressions: [{key: team, operator: Bogus}]}", false),
        ] {
            assert_eq!(selector_matches(&selector(sel), &l), want, "{sel}");
        }
        assert_eq!(
            selector_problems(
                "s",
                &selector("{matchExpressions: [{key: a, operator: In}]}")
            ),
            ["s: \"a\" In needs values"]
        );
    }

    #[test]
    fn admits_ors_namespaces_and_ands_service_selector() {
        let none = BTreeMap::new();
        let team_a = labels(&[("team", "a")]);
        let web = labels(&[("tier", "web")]);
        let open = Pool::test("p", &["192.0.2.0/24"]);
        assert!(open.admits("anything", &none, &none));
        let listed = Pool {
            namespaces: vec!["prod".into()],
            namespace_selector: Some(selector("{matchLabels: {team: a}}")),
            ..open.clone()
        };
        assert!(listed.admits("prod", &none, &none), "listed namespace");
        assert!(listed.admits("dev", &team_a, &none), "selected namespace");
        assert!(!listed.admits("dev", &none, &none), "neither");
        let only_web = Pool {
            service_selector: Some(selector("{matchLabels: {tier: web}}")),
            ..listed
        };
        assert!(only_web.admits("prod", &none, &web));
        assert!(!only_web.admits("prod", &none, &none), "service selector");
        assert!(
            !only_web.admits("dev", &none, &web),
            "namespace rule still holds"
        );
    }

    #[test]
    fn priority_orders_pools_and_unprioritised_last() {
        let mk = |name: &str, priority| Pool {
            priority,
            ..Pool::test(name, &["192.0.2.0/24"])
        };
        let mut pools = [
            mk("a", None),
            mk("b", Some(20)),
            mk("c", Some(10)),
            mk("d", Some(-5)),
            mk("e", Some(10)),
        ];
        pools.sort_by(pool_order);
        let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["d", "c", "e", "b", "a"]);
    }

    #[test]
    fn overlap_is_per_family_and_inclusive() {
        let a = Pool::test("a", &["192.0.2.0/28"]);
        assert!(a.overlaps(&Pool::test("b", &["192.0.2.15-192.0.2.20"])));
        assert!(!a.overlaps(&Pool::test("b", &["192.0.2.16/28"])));
        assert!(!a.overlaps(&Pool::test("b", &["2001:db8::/120"])));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn parses_cidrs_ranges_and_single_addresses() {
        let r = AddressRange::parse("203.0.113.0/30").expect("cidr");
        assert_eq!(
            (r.first, r.last, r.size()),
            (ip("203.0.113.0"), ip("203.0.113.3"), 4)
        );
        let r = AddressRange::parse("198.51.100.10 - 198.51.100.20").expect("range");
        assert_eq!(r.size(), 11);
        assert_eq!(
            AddressRange::parse("2001:db8::/120").expect("v6").size(),
            256
        );
        assert_eq!(AddressRange::parse("192.0.2.7").expect("single").size(), 1);
        assert!(AddressRange::parse("203.0.113.9-203.0.113.1").is_err());
        assert!(AddressRange::parse("203.0.113.1-2001:db8::1").is_err());
        assert!(AddressRange::parse("203.0.113.0/33").is_err());
    }

    #[test]
    fn first_free_skips_used_and_buggy_addresses() {
        let p = pool(&["203.0.113.254/31", "198.51.100.0/30"], true);
        let mut used = BTreeSet::new();
        // 203.0.113.255 is buggy, 203.0.113.254 free.
        assert_eq!(p.first_free(true, &used), Some(ip("203.0.113.254")));
        used.insert(ip("203.0.113.254"));
        // Next range: .0 is buggy.
        assert_eq!(p.first_free(true, &used), Some(ip("198.51.100.1")));
        used.insert(ip("198.51.100.1"));
        used.insert(ip("198.51.100.2"));
        assert_eq!(p.first_free(true, &used), Some(ip("198.51.100.3")));
        used.insert(ip("198.51.100.3"));
        assert_eq!(p.first_free(true, &used), None);
        assert_eq!(p.first_free(false, &used), None, "no IPv6 range");
        assert!(!p.offers(ip("198.51.100.0")));
        assert!(p.offers(ip("198.51.100.3")));
    }

    #[test]
    fn first_free_from_a_cursor_matches_a_fresh_scan() {
        // Two ranges, buggy addresses skipped, addresses used out of order and in the middle.
        let p = pool(&["203.0.113.250-203.0.113.255", "198.51.100.0/29"], true);
        let mut used: BTreeSet<IpAddr> = [ip("203.0.113.252"), ip("198.51.100.3")].into();
        let mut cursor = FreeCursor::default();
        let mut got = Vec::new();
        // Each result is taken (or, once, not: a failed dual-stack Service takes nothing).
        for round in 0.. {
            let fresh = p.first_free(true, &used);
            let resumed = p.first_free_from(true, &used, &mut cursor);
            assert_eq!(resumed, fresh, "round {round}");
            let Some(next) = resumed else { break };
            got.push(next.to_string());
            if round != 2 {
                used.insert(next);
            }
            if round == 4 {
                // Someone else takes an address ahead of the cursor.
                used.insert(ip("198.51.100.5"));
            }
        }
        assert_eq!(
            got,
            [
                "203.0.113.250",
                "203.0.113.251",
                "203.0.113.253",
                "203.0.113.253",
                "203.0.113.254",
                "198.51.100.1",
                "198.51.100.2",
                "198.51.100.4",
                "198.51.100.6",
                "198.51.100.7",
            ]
        );
    }
}

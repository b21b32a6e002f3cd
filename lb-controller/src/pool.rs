//! Address pools: parsing `IPAddressPool.spec.addresses` into ranges and finding free addresses.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use drawbridge_resources::crd::IPAddressPool;

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
    /// One message per `spec.addresses` entry that was refused.
    pub problems: Vec<String>,
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
        Pool {
            name: pool.metadata.name.clone().unwrap_or_default(),
            ranges,
            auto_assign: pool.spec.auto_assign,
            avoid_buggy_ips: pool.spec.avoid_buggy_ips,
            problems,
        }
    }

    /// Whether the pool may hand out `ip` (inside a range, and not a skipped "buggy" address).
    pub fn offers(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip)) && !(self.avoid_buggy_ips && is_buggy(ip))
    }

    /// The lowest address of `family_v4` the pool offers that is not in `used`.
    ///
    /// Cost: O(addresses of `used` inside the scanned ranges), not O(pool size).
    pub fn first_free(&self, v4: bool, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
        for range in self.ranges.iter().filter(|r| r.first.is_ipv4() == v4) {
            let mut candidate = to_u128(range.first);
            let last = to_u128(range.last);
            let taken = used.range(range.first..=range.last).map(|ip| to_u128(*ip));
            let mut taken = taken.peekable();
            while candidate <= last {
                let ip = from_u128(candidate, v4);
                // Skip every used address at or below the candidate.
                while taken.peek().is_some_and(|t| *t < candidate) {
                    taken.next();
                }
                if taken.peek() == Some(&candidate) || (self.avoid_buggy_ips && is_buggy(ip)) {
                    candidate += 1;
                    continue;
                }
                return Some(ip);
            }
        }
        None
    }
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
        let ranges = addresses
            .iter()
            .map(|a| AddressRange::parse(a).expect("valid"))
            .collect();
        Pool {
            name: "p".into(),
            ranges,
            auto_assign: true,
            avoid_buggy_ips: avoid,
            problems: vec![],
        }
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
}

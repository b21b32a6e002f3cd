//! `drawbridge.dev/announcing-interfaces`: on which interfaces each candidate node may answer
//! ARP / NDP for each LoadBalancer IP — `L2Announcement.spec.interfaces` as lb-controller's
//! election resolved it. Written by lb-controller (beside `announcing-node` and
//! `announcing-candidates`, in the same merge patch), read by node-programmer. This module is the
//! one definition of the value's grammar, shared by both.
//!
//! Semantics (MetalLB `L2Advertisement.spec.interfaces`, speaker `ipAdvertisementFor`): the
//! interfaces a node may use for an IP are the **union** of `spec.interfaces` over every
//! `L2Announcement` that covers the IP's pool and selects the node; if any of those lists no
//! interfaces, the node may use all of them (no restriction). node-programmer intersects the
//! result with its `--l2-interfaces`.
//!
//! Grammar (whitespace around tokens is not allowed; the writer never produces it):
//!
//! ```text
//!  value   = ifset                       every candidate of every IP: only these interfaces
//!          | entry *( ";" entry )        per node; a candidate not listed: no restriction
//!  entry   = node "=" ifset              this node, for every IP of the Service
//!          | ip "/" node "=" ifset       this node, for this IP (all entries qualified, or none)
//!  ifset   = ifname *( "," ifname )      Linux interface names (1–15 bytes, none of / : , ; =
//!                                        or whitespace, not . or ..)
//! ```
//!
//! Absent annotation: no candidate of any IP is restricted. Examples: `eth0`, `eth0,eth1`,
//! `node-a=eth0;node-b=eth1,eth2`, `192.0.2.10/node-a=eth0;2001:db8::10/node-a=eth1`.
//! [`format`] writes the shortest form that holds; [`parse`] refuses anything else
//! ([`ParseError`]) — what a reader does then is its decision (node-programmer answers nowhere
//! for that Service: see its `l2` module).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Service annotation: per IP and candidate node, the interfaces it may answer on (module docs).
pub const ANNOTATION_ANNOUNCING_INTERFACES: &str = "drawbridge.dev/announcing-interfaces";

/// Interfaces one node may answer on for one IP: `None` = every interface (no restriction).
pub type Restriction = Option<BTreeSet<String>>;

/// A parsed [`ANNOTATION_ANNOUNCING_INTERFACES`] value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnnouncingInterfaces {
    /// `ifset`: every candidate of every IP may answer only on these.
    Every(BTreeSet<String>),
    /// `node=ifset;…`: these nodes, for every IP; other nodes unrestricted.
    PerNode(BTreeMap<String, BTreeSet<String>>),
    /// `ip/node=ifset;…`: these (IP, node) pairs; other pairs unrestricted.
    PerIpNode(BTreeMap<(IpAddr, String), BTreeSet<String>>),
}

impl AnnouncingInterfaces {
    /// The interfaces `node` may answer on for `ip`; `None` = all.
    pub fn for_node(&self, ip: IpAddr, node: &str) -> Option<&BTreeSet<String>> {
        match self {
            AnnouncingInterfaces::Every(set) => Some(set),
            AnnouncingInterfaces::PerNode(map) => map.get(node),
            AnnouncingInterfaces::PerIpNode(map) => map.get(&(ip, node.to_string())),
        }
    }
}

/// Why a value does not parse (the whole value is refused; nothing of it is used).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Empty value (an absent annotation means "no restriction"; an empty one means nothing).
    #[error("empty value")]
    Empty,
    /// An interface name that Linux would refuse or that contains a separator.
    #[error("invalid interface name {0:?}")]
    BadInterface(String),
    /// An entry that is not `node=ifset` / `ip/node=ifset`, or a bad node name or IP.
    #[error("invalid entry {0:?}")]
    BadEntry(String),
    /// The same node (or IP and node) listed twice.
    #[error("{0:?} listed twice")]
    Duplicate(String),
    /// Some entries carry an IP and others do not.
    #[error("entries with and without an IP mixed")]
    Mixed,
}

/// Whether `name` can be written in the value: a valid Linux interface name (1–15 bytes, not `.`
/// or `..`, no `/`, `:` or whitespace — the kernel's `dev_valid_name`) without `,` `;` `=`.
pub fn valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '/' | ':' | ',' | ';' | '='))
}

fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '/' | ',' | ';' | '='))
}

fn parse_ifset(s: &str) -> Result<BTreeSet<String>, ParseError> {
    let mut out = BTreeSet::new();
    for name in s.split(',') {
        if !valid_interface_name(name) {
            return Err(ParseError::BadInterface(name.to_string()));
        }
        if !out.insert(name.to_string()) {
            return Err(ParseError::Duplicate(name.to_string()));
        }
    }
    Ok(out)
}

/// Parses a value (grammar in the module docs). Errors: [`ParseError`] — the value is refused as
/// a whole.
pub fn parse(value: &str) -> Result<AnnouncingInterfaces, ParseError> {
    if value.is_empty() {
        return Err(ParseError::Empty);
    }
    if !value.contains('=') {
        return parse_ifset(value).map(AnnouncingInterfaces::Every);
    }
    let mut per_node = BTreeMap::new();
    let mut per_ip_node = BTreeMap::new();
    for entry in value.split(';') {
        let bad = || ParseError::BadEntry(entry.to_string());
        let (lhs, ifs) = entry.split_once('=').ok_or_else(bad)?;
        let ifs = parse_ifset(ifs)?;
        match lhs.split_once('/') {
            None => {
                if !valid_node_name(lhs) {
                    return Err(bad());
                }
                if per_node.insert(lhs.to_string(), ifs).is_some() {
                    return Err(ParseError::Duplicate(lhs.to_string()));
                }
            }
            Some((ip, node)) => {
                let ip: IpAddr = ip.parse().map_err(|_| bad())?;
                if !valid_node_name(node) {
                    return Err(bad());
                }
                if per_ip_node.insert((ip, node.to_string()), ifs).is_some() {
                    return Err(ParseError::Duplicate(lhs.to_string()));
                }
            }
        }
    }
    match (per_node.is_empty(), per_ip_node.is_empty()) {
        (false, true) => Ok(AnnouncingInterfaces::PerNode(per_node)),
        (true, false) => Ok(AnnouncingInterfaces::PerIpNode(per_ip_node)),
        _ => Err(ParseError::Mixed),
    }
}

/// The value for `restrictions` (per IP, per candidate node), in the shortest form that holds:
/// `None` when no candidate is restricted; `ifset` when every candidate of every IP has the same
/// restriction; `node=ifset;…` when each node's restriction is the same for all its IPs; else
/// `ip/node=ifset;…`. Nodes and IPs in ascending order. Names must satisfy
/// [`valid_interface_name`] (callers drop policies that do not). Example: `{192.0.2.10: {a:
/// {eth0}, b: None}}` → `a=eth0`.
pub fn format(restrictions: &BTreeMap<IpAddr, BTreeMap<String, Restriction>>) -> Option<String> {
    let all: Vec<(IpAddr, &String, &Restriction)> = restrictions
        .iter()
        .flat_map(|(ip, nodes)| nodes.iter().map(move |(n, r)| (*ip, n, r)))
        .collect();
    if all.iter().all(|(_, _, r)| r.is_none()) {
        return None;
    }
    let first = all[0].2;
    if first.is_some() && all.iter().all(|(_, _, r)| *r == first) {
        return first.as_ref().map(join);
    }
    let mut per_node: BTreeMap<&String, &Restriction> = BTreeMap::new();
    let consistent = all
        .iter()
        .all(|(_, n, r)| *per_node.entry(n).or_insert(r) == *r);
    let entries: Vec<String> = if consistent {
        per_node
            .iter()
            .filter_map(|(n, r)| Some(format!("{n}={}", join(r.as_ref()?))))
            .collect()
    } else {
        all.iter()
            .filter_map(|(ip, n, r)| Some(format!("{ip}/{n}={}", join(r.as_ref()?))))
            .collect()
    };
    Some(entries.join(";"))
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter().map(String::as_str).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn parse_table() {
        use AnnouncingInterfaces::*;
        let table: Vec<(&str, Result<AnnouncingInterfaces, ParseError>)> = vec![
            ("eth0", Ok(Every(set(&["eth0"])))),
            ("eth1,eth0", Ok(Every(set(&["eth0", "eth1"])))),
            ("bond0.100", Ok(Every(set(&["bond0.100"])))),
            (
                "node-a=eth0;node-b=eth1,eth2",
                Ok(PerNode(
                    [
                        ("node-a".to_string(), set(&["eth0"])),
                        ("node-b".to_string(), set(&["eth1", "eth2"])),
                    ]
                    .into(),
                )),
            ),
            (
                "192.0.2.10/node-a=eth0;2001:db8::10/node-a=eth1",
                Ok(PerIpNode(
                    [
                        ((ip("192.0.2.10"), "node-a".to_string()), set(&["eth0"])),
                        ((ip("2001:db8::10"), "node-a".to_string()), set(&["eth1"])),
                    ]
                    .into(),
                )),
            ),
            ("", Err(ParseError::Empty)),
            ("eth0,", Err(ParseError::BadInterface(String::new()))),
            ("eth0, eth1", Err(ParseError::BadInterface(" eth1".into()))),
            (
                "averyveryverylongname",
                Err(ParseError::BadInterface("averyveryverylongname".into())),
            ),
            ("..", Err(ParseError::BadInterface("..".into()))),
            ("eth0,eth0", Err(ParseError::Duplicate("eth0".into()))),
            ("node-a=", Err(ParseError::BadInterface(String::new()))),
            ("=eth0", Err(ParseError::BadEntry("=eth0".into()))),
            ("node-a=eth0;", Err(ParseError::BadEntry(String::new()))),
            (
                "node-a=eth0=x",
                Err(ParseError::BadInterface("eth0=x".into())),
            ),
            (
                "node-a=eth0;node-a=eth1",
                Err(ParseError::Duplicate("node-a".into())),
            ),
            (
                "192.0.2.300/node-a=eth0",
                Err(ParseError::BadEntry("192.0.2.300/node-a=eth0".into())),
            ),
            (
                "192.0.2.10/=eth0",
                Err(ParseError::BadEntry("192.0.2.10/=eth0".into())),
            ),
            ("node-a=eth0;192.0.2.10/node-b=eth1", Err(ParseError::Mixed)),
        ];
        for (value, want) in table {
            assert_eq!(parse(value), want, "{value:?}");
        }
    }

    #[test]
    fn for_node_unlisted_is_unrestricted() {
        let v = parse("node-a=eth0").expect("parse");
        assert_eq!(
            v.for_node(ip("192.0.2.10"), "node-a"),
            Some(&set(&["eth0"]))
        );
        assert_eq!(v.for_node(ip("192.0.2.10"), "node-b"), None);
        let v = parse("192.0.2.10/node-a=eth0").expect("parse");
        assert_eq!(
            v.for_node(ip("192.0.2.10"), "node-a"),
            Some(&set(&["eth0"]))
        );
        assert_eq!(v.for_node(ip("192.0.2.11"), "node-a"), None);
        let v = parse("eth0").expect("parse");
        assert_eq!(
            v.for_node(ip("192.0.2.11"), "anyone"),
            Some(&set(&["eth0"]))
        );
    }

    /// The writer's forms, and every written value reads back to the same restrictions.
    #[test]
    fn format_table_and_round_trip() {
        let v4 = ip("192.0.2.10");
        let v6 = ip("2001:db8::10");
        let r = |names: &[&str]| Some(set(names));
        type Table = Vec<(
            Vec<(IpAddr, Vec<(&'static str, Restriction)>)>,
            Option<&'static str>,
        )>;
        let table: Table = vec![
            (vec![], None),
            (vec![(v4, vec![("a", None), ("b", None)])], None),
            (
                vec![(v4, vec![("a", r(&["eth0"])), ("b", r(&["eth0"]))])],
                Some("eth0"),
            ),
            (
                vec![
                    (
                        v4,
                        vec![("a", r(&["eth1", "eth0"])), ("b", r(&["eth0", "eth1"]))],
                    ),
                    (v6, vec![("b", r(&["eth0", "eth1"]))]),
                ],
                Some("eth0,eth1"),
            ),
            (
                vec![(v4, vec![("a", r(&["eth0"])), ("b", None)])],
                Some("a=eth0"),
            ),
            (
                vec![
                    (v4, vec![("a", r(&["eth0"])), ("b", r(&["eth1", "eth2"]))]),
                    (v6, vec![("b", r(&["eth1", "eth2"]))]),
                ],
                Some("a=eth0;b=eth1,eth2"),
            ),
            (
                vec![
                    (v4, vec![("a", r(&["eth0"])), ("b", None)]),
                    (v6, vec![("a", r(&["eth1"])), ("b", None)]),
                ],
                Some("192.0.2.10/a=eth0;2001:db8::10/a=eth1"),
            ),
            (
                vec![(v4, vec![("a", r(&["eth0"]))]), (v6, vec![("a", None)])],
                Some("192.0.2.10/a=eth0"),
            ),
        ];
        for (input, want) in table {
            let map: BTreeMap<IpAddr, BTreeMap<String, Restriction>> = input
                .iter()
                .map(|(ip, nodes)| {
                    (
                        *ip,
                        nodes
                            .iter()
                            .map(|(n, r)| (n.to_string(), r.clone()))
                            .collect(),
                    )
                })
                .collect();
            let got = format(&map);
            assert_eq!(got.as_deref(), want, "{input:?}");
            let Some(value) = got else { continue };
            let parsed = parse(&value).expect("written value parses");
            for (ip, nodes) in &map {
                for (node, r) in nodes {
                    assert_eq!(
                        parsed.for_node(*ip, node),
                        r.as_ref(),
                        "{value} {ip} {node}"
                    );
                }
            }
        }
    }
}

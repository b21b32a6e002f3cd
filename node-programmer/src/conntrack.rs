//! UDP conntrack cleanup after a sync (`shared/reference/service-proxy.md` §1.16; kube-proxy
//! `pkg/proxy/conntrack/cleanup.go`, PR #126847).
//!
//! UDP has no connection teardown: a conntrack entry created while a Service pointed at an
//! endpoint that is gone (or before it had any endpoint — an un-NATed entry to the ClusterIP
//! itself) keeps steering the client's packets into a black hole until it times out, and a
//! client that keeps sending never lets it time out. So after every successful sync:
//!
//! ```text
//!  ConntrackTable::list ── every entry (both families) ─┐
//!  UdpServicePort[] (from the model, after the sync) ───┤
//!                                                       ▼
//!  stale_flows (pure) ── UDP entries whose original destination is a Service IP:port
//!     │                  (ClusterIP, LoadBalancer ingress IP, externalIP) or *:NodePort of a
//!     │                  Service with ≥ 1 serving endpoint, and whose reply source is not one
//!     ▼                  of those serving endpoint IPs
//!  ConntrackTable::delete ── one ctnetlink IPCTNL_MSG_CT_DELETE per entry (by original tuple)
//! ```
//!
//! Services with no serving endpoint are skipped (their packets are rejected anyway). TCP is
//! never flushed (it breaks graceful shutdown, kubernetes PR #102631) and neither is SCTP
//! (kube-proxy only ever cleaned UDP, PR #115299). Traffic policy, topology and terminating
//! state are deliberately ignored: a flow to any serving endpoint stays (kube-proxy).
//!
//! The real table is [`NetlinkConntrack`]: NETLINK_NETFILTER through `netlink-sys` with the
//! ctnetlink messages of `netlink-packet-netfilter` (≥ 0.4 has conntrack GET/DELETE), no
//! `conntrack` binary. It is blocking; call [`cleanup`] from `spawn_blocking` on a runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

mod netlink;

pub use netlink::NetlinkConntrack;

/// IANA protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;

/// One endpoint of a conntrack tuple direction: source and destination address + port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    /// Source address and port (port 0 for protocols without ports).
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
}

/// One conntrack entry, reduced to what the cleanup reads and what deleting it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Flow {
    /// IANA protocol number (17 = UDP).
    pub protocol: u8,
    /// The original direction, as the client sent it (`--orig-src/--orig-dst`).
    pub original: Tuple,
    /// The reply direction; after DNAT its source is the endpoint (`--reply-src`).
    pub reply: Tuple,
    /// Conntrack zone (`CTA_ZONE`), 0 when absent.
    pub zone: u16,
}

/// One UDP Service port as programmed by the last sync (built by the caller from its model).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UdpServicePort {
    /// `namespace/name:port-name`, for logs only.
    pub service: String,
    /// Frontend IPs: ClusterIPs, LoadBalancer ingress IPs (`ipMode: VIP`), externalIPs.
    pub ips: Vec<IpAddr>,
    /// `spec.ports[].port`.
    pub port: u16,
    /// `spec.ports[].nodePort`, 0 when none.
    pub node_port: u16,
    /// IPs of the serving endpoints (`conditions.serving`, terminating or not), all nodes.
    pub serving_endpoints: BTreeSet<IpAddr>,
}

/// The pure selection: which of `flows` point at something other than a serving endpoint of a
/// UDP Service frontend (module docs). Sorted, without duplicates. When two Services claim the
/// same frontend, their endpoint sets are united (a flow valid for either is kept).
pub fn stale_flows(flows: &[Flow], services: &[UdpServicePort]) -> Vec<Flow> {
    let mut by_frontend: BTreeMap<SocketAddr, BTreeSet<IpAddr>> = BTreeMap::new();
    let mut by_node_port: BTreeMap<u16, BTreeSet<IpAddr>> = BTreeMap::new();
    for service in services {
        if service.serving_endpoints.is_empty() {
            continue;
        }
        for ip in &service.ips {
            by_frontend
                .entry(SocketAddr::new(canonical(*ip), service.port))
                .or_default()
                .extend(service.serving_endpoints.iter().map(|ip| canonical(*ip)));
        }
        if service.node_port != 0 {
            by_node_port
                .entry(service.node_port)
                .or_default()
                .extend(service.serving_endpoints.iter().map(|ip| canonical(*ip)));
        }
    }
    let mut stale = BTreeSet::new();
    for flow in flows {
        if flow.protocol != IPPROTO_UDP {
            continue;
        }
        let dst = SocketAddr::new(canonical(flow.original.dst.ip()), flow.original.dst.port());
        let reply_src = canonical(flow.reply.src.ip());
        let not_serving = |endpoints: &BTreeSet<IpAddr>| !endpoints.contains(&reply_src);
        let by_ip = by_frontend.get(&dst).is_some_and(not_serving);
        let by_port = by_node_port.get(&dst.port()).is_some_and(not_serving);
        if by_ip || by_port {
            stale.insert(*flow);
        }
    }
    stale.into_iter().collect()
}

/// IPv4-mapped IPv6 addresses compare as IPv4 (conntrack never reports them, the model might).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Errors of the conntrack edge. Listing failures abort one cleanup (the next sync retries);
/// a failed delete is counted and the cleanup goes on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Could not open or bind the NETLINK_NETFILTER socket (no CAP_NET_ADMIN, no nf_conntrack
    /// netlink support in the kernel).
    #[error("opening the ctnetlink socket failed: {0}")]
    SocketFailed(#[source] std::io::Error),
    /// Sending or receiving on the socket failed.
    #[error("ctnetlink I/O failed: {0}")]
    NetlinkIoFailed(#[source] std::io::Error),
    /// The kernel answered a request with an error (errno).
    #[error("kernel refused ctnetlink {request}: {source}")]
    KernelRefused {
        /// Which request: `dump` or `delete`.
        request: &'static str,
        /// The errno as an I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The entry was already gone (expired or deleted by someone else): not a failure.
    #[error("conntrack entry not found")]
    NotFound,
    /// A message from the kernel could not be decoded.
    #[error("undecodable ctnetlink message: {0}")]
    DecodeFailed(String),
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The conntrack table edge: the kernel ([`NetlinkConntrack`]) or a fake in tests.
pub trait ConntrackTable {
    /// Every entry of the table, both IP families, any protocol. Entries that cannot be
    /// decoded are skipped (logged), not an error.
    fn list(&mut self) -> Result<Vec<Flow>>;
    /// Deletes the entry with `flow`'s original tuple (and zone). [`Error::NotFound`] when it
    /// is already gone.
    fn delete(&mut self, flow: &Flow) -> Result<()>;
}

/// What one [`cleanup`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Entries in the table.
    pub listed: usize,
    /// Entries selected as stale.
    pub stale: usize,
    /// Stale entries deleted (including ones that had vanished meanwhile).
    pub deleted: usize,
    /// Deletes that failed (logged at warn); they are retried by the next cleanup.
    pub failed: usize,
}

/// Lists `table`, selects [`stale_flows`] for `services` and deletes them. Only a failed list
/// is an error; failed deletes are counted in the report.
pub fn cleanup<T: ConntrackTable + ?Sized>(
    table: &mut T,
    services: &[UdpServicePort],
) -> Result<CleanupReport> {
    let flows = table.list()?;
    let stale = stale_flows(&flows, services);
    let mut report = CleanupReport {
        listed: flows.len(),
        stale: stale.len(),
        ..CleanupReport::default()
    };
    for flow in &stale {
        match table.delete(flow) {
            Ok(()) | Err(Error::NotFound) => {
                tracing::debug!(?flow, "deleted stale UDP conntrack entry");
                report.deleted += 1;
            }
            Err(error) => {
                tracing::warn!(%error, ?flow, "deleting stale UDP conntrack entry failed");
                report.failed += 1;
            }
        }
    }
    Ok(report)
}

/// A recording in-memory table for tests of callers.
#[derive(Debug, Clone, Default)]
pub struct FakeConntrack {
    /// The table's entries; `delete` removes from here.
    pub flows: Vec<Flow>,
    /// Every delete asked for, in order.
    pub deleted: Vec<Flow>,
    /// When set, `list` fails with [`Error::NetlinkIoFailed`].
    pub fail_list: bool,
}

impl ConntrackTable for FakeConntrack {
    fn list(&mut self) -> Result<Vec<Flow>> {
        if self.fail_list {
            return Err(Error::NetlinkIoFailed(std::io::Error::other("fake")));
        }
        Ok(self.flows.clone())
    }

    fn delete(&mut self, flow: &Flow) -> Result<()> {
        self.deleted.push(*flow);
        let before = self.flows.len();
        self.flows.retain(|f| {
            (f.protocol, f.original, f.zone) != (flow.protocol, flow.original, flow.zone)
        });
        match self.flows.len() == before {
            true => Err(Error::NotFound),
            false => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// A flow from `client` to `dst`, answered by `reply_src` (the DNAT target).
    fn udp(client: &str, dst: &str, reply_src: &str) -> Flow {
        let (client, dst, reply_src) = (sa(client), sa(dst), sa(reply_src));
        Flow {
            protocol: IPPROTO_UDP,
            original: Tuple { src: client, dst },
            reply: Tuple {
                src: reply_src,
                dst: client,
            },
            zone: 0,
        }
    }

    fn dns(endpoints: &[&str]) -> UdpServicePort {
        UdpServicePort {
            service: "kube-system/dns:dns".into(),
            ips: vec![ip("198.18.0.10"), ip("203.0.113.10"), ip("2001:db8::10")],
            port: 53,
            node_port: 30053,
            serving_endpoints: endpoints.iter().map(|e| ip(e)).collect(),
        }
    }

    #[test]
    fn deletes_flows_to_frontends_not_answered_by_a_serving_endpoint() {
        let to_a = udp("198.51.100.2:40001", "198.18.0.10:53", "192.0.2.10:5353");
        let to_b = udp("198.51.100.2:40002", "198.18.0.10:53", "192.0.2.11:5353");
        let lb_to_a = udp("198.51.100.3:40001", "203.0.113.10:53", "192.0.2.10:5353");
        let unnated = udp("198.51.100.2:40003", "198.18.0.10:53", "198.18.0.10:53");
        let node_port_to_a = udp(
            "198.51.100.2:40004",
            "198.51.100.1:30053",
            "192.0.2.10:5353",
        );
        let v6_to_a = udp(
            "[2001:db8:1::2]:40001",
            "[2001:db8::10]:53",
            "[2001:db8:2::10]:5353",
        );
        let other_port = udp("198.51.100.2:40005", "198.18.0.10:54", "192.0.2.10:54");
        let elsewhere = udp("198.51.100.2:40006", "192.0.2.99:53", "192.0.2.99:53");
        let mut tcp = udp("198.51.100.2:40007", "198.18.0.10:53", "192.0.2.10:5353");
        tcp.protocol = 6;
        let flows = [
            to_a,
            to_b,
            lb_to_a,
            unnated,
            node_port_to_a,
            v6_to_a,
            other_port,
            elsewhere,
            tcp,
        ];
        let stale = stale_flows(&flows, &[dns(&["192.0.2.11", "2001:db8:2::11"])]);
        let mut expected = vec![to_a, lb_to_a, unnated, node_port_to_a, v6_to_a];
        expected.sort();
        assert_eq!(stale, expected);
    }

    #[test]
    fn services_without_serving_endpoints_are_skipped() {
        let flows = [udp(
            "198.51.100.2:40001",
            "198.18.0.10:53",
            "192.0.2.10:5353",
        )];
        assert!(stale_flows(&flows, &[dns(&[])]).is_empty());
    }

    #[test]
    fn node_port_matches_any_destination_ip() {
        let flows = [
            udp("198.51.100.2:1", "198.51.100.1:30053", "192.0.2.10:53"),
            udp("198.51.100.2:2", "127.0.0.1:30053", "192.0.2.10:53"),
            udp("198.51.100.2:3", "198.51.100.1:30053", "192.0.2.11:53"),
        ];
        let stale = stale_flows(&flows, &[dns(&["192.0.2.11"])]);
        assert_eq!(stale, vec![flows[0], flows[1]]);
    }

    #[test]
    fn shared_frontends_unite_endpoints() {
        let mut other = dns(&["192.0.2.20"]);
        other.node_port = 0;
        let flows = [
            udp("198.51.100.2:1", "198.18.0.10:53", "192.0.2.20:53"),
            udp("198.51.100.2:2", "198.18.0.10:53", "192.0.2.11:53"),
            udp("198.51.100.2:3", "198.18.0.10:53", "192.0.2.30:53"),
        ];
        let stale = stale_flows(&flows, &[dns(&["192.0.2.11"]), other]);
        assert_eq!(stale, vec![flows[2]]);
    }

    #[test]
    fn mapped_ipv4_in_the_model_matches_plain_ipv4_flows() {
        let mut service = dns(&["::ffff:192.0.2.11"]);
        service.ips = vec![ip("::ffff:198.18.0.10")];
        let flows = [
            udp("198.51.100.2:1", "198.18.0.10:53", "192.0.2.11:53"),
            udp("198.51.100.2:2", "198.18.0.10:53", "192.0.2.10:53"),
        ];
        assert_eq!(stale_flows(&flows, &[service]), vec![flows[1]]);
    }

    #[test]
    fn cleanup_deletes_through_the_table_and_counts() {
        let keep = udp("198.51.100.2:40002", "198.18.0.10:53", "192.0.2.11:5353");
        let gone = udp("198.51.100.2:40001", "198.18.0.10:53", "192.0.2.10:5353");
        let mut table = FakeConntrack {
            flows: vec![keep, gone],
            ..FakeConntrack::default()
        };
        let report = cleanup(&mut table, &[dns(&["192.0.2.11"])]).expect("cleanup");
        assert_eq!(
            report,
            CleanupReport {
                listed: 2,
                stale: 1,
                deleted: 1,
                failed: 0
            }
        );
        assert_eq!(table.flows, vec![keep]);
        assert_eq!(table.deleted, vec![gone]);
        // Level-triggered: a second run finds nothing to do.
        let report = cleanup(&mut table, &[dns(&["192.0.2.11"])]).expect("cleanup");
        assert_eq!((report.stale, report.deleted), (0, 0));
    }

    #[test]
    fn cleanup_reports_a_failed_list() {
        let mut table = FakeConntrack {
            fail_list: true,
            ..FakeConntrack::default()
        };
        assert!(matches!(
            cleanup(&mut table, &[dns(&["192.0.2.11"])]),
            Err(Error::NetlinkIoFailed(_))
        ));
    }
}

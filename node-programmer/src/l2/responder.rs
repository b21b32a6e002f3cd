//! The responder's decisions, pure: which IPs this node announces, what to answer to a frame, and
//! when to send gratuitous announcements after a takeover.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;

use super::{arp, ndp};

/// Service annotation naming the announcing node (written by lb-controller; format:
/// `node` or `IP=node,...`, see lb-controller's `announce` module).
pub const ANNOTATION_ANNOUNCING_NODE: &str = "drawbridge.dev/announcing-node";

/// When to send gratuitous ARP / unsolicited NA after this node takes an IP over, as offsets from
/// the takeover: a burst of three, then repeats (MetalLB repeats every 1.1 s for 5 s) so a host
/// that missed the burst, or a switch that was still learning, catches up.
pub const GRATUITOUS_SCHEDULE: [Duration; 6] = [
    Duration::ZERO,
    Duration::from_millis(20),
    Duration::from_millis(40),
    Duration::from_millis(1_100),
    Duration::from_millis(2_200),
    Duration::from_millis(4_400),
];

/// The LoadBalancer IPs that `node` must announce: every `status.loadBalancer.ingress[].ip`
/// (`ipMode` not `Proxy`) of a `type: LoadBalancer` Service whose announcing-node annotation names
/// `node` for that IP. Unparseable IPs and annotation entries are skipped.
pub fn announced_ips(services: &[Arc<Service>], node: &str) -> BTreeSet<IpAddr> {
    let mut out = BTreeSet::new();
    for svc in services {
        let Some(value) = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_ANNOUNCING_NODE))
        else {
            continue;
        };
        if svc.spec.as_ref().and_then(|s| s.type_.as_deref()) != Some("LoadBalancer") {
            continue;
        }
        let ips: Vec<IpAddr> = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|i| i.ip.as_deref()?.parse().ok())
            .collect();
        out.extend(
            announcers(value, &ips)
                .into_iter()
                .filter(|(_, n)| n == node)
                .map(|(ip, _)| ip),
        );
    }
    out
}

/// Parses the annotation value against the Service's IPs: a plain node name covers all of them;
/// an `IP=node` list covers the listed ones (same rules as lb-controller's `parse_annotation`).
pub fn announcers(value: &str, ips: &[IpAddr]) -> Vec<(IpAddr, String)> {
    let value = value.trim();
    if value.is_empty() {
        return vec![];
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

/// The frame to send back for `frame` received on an interface with MAC `our_mac`, if it asks
/// for an announced IP: an ARP reply to an ARP request, a solicited NA to a neighbour
/// solicitation. Our own frames (looped back by the packet socket) are never answered.
pub fn answer(frame: &[u8], our_mac: [u8; 6], announced: &BTreeSet<IpAddr>) -> Option<Vec<u8>> {
    if frame.get(6..12) == Some(&our_mac[..]) {
        return None;
    }
    if let Some(req) = arp::parse_request(frame) {
        return announced
            .contains(&IpAddr::V4(req.target_ip))
            .then(|| arp::reply(our_mac, &req));
    }
    let ns = ndp::parse_solicitation(frame)?;
    announced
        .contains(&IpAddr::V6(ns.target))
        .then(|| ndp::answer(our_mac, &ns))
}

/// The gratuitous frames announcing `ip` at `our_mac`: ARP request + reply (IPv4) or one
/// unsolicited NA (IPv6).
pub fn gratuitous(our_mac: [u8; 6], ip: IpAddr) -> Vec<Vec<u8>> {
    match ip {
        IpAddr::V4(v4) => arp::gratuitous(our_mac, v4).to_vec(),
        IpAddr::V6(v6) => vec![ndp::unsolicited(our_mac, v6)],
    }
}

/// Gratuitous-announcement bookkeeping for one interface: when each announced IP was taken over
/// and how far along [`GRATUITOUS_SCHEDULE`] it is. Pure; the caller passes the clock.
#[derive(Debug, Default)]
pub struct Takeovers {
    started: std::collections::BTreeMap<IpAddr, (std::time::Instant, usize)>,
}

impl Takeovers {
    /// Follows the announced set: IPs new to it start their schedule at `now`; IPs that left it
    /// are forgotten (a later takeover starts over).
    pub fn update(&mut self, announced: &BTreeSet<IpAddr>, now: std::time::Instant) {
        self.started.retain(|ip, _| announced.contains(ip));
        for ip in announced {
            self.started.entry(*ip).or_insert((now, 0));
        }
    }

    /// The IPs whose next gratuitous announcement is due at `now` (each schedule entry is
    /// returned once; entries missed by a slow caller collapse into one send).
    pub fn due(&mut self, now: std::time::Instant) -> Vec<IpAddr> {
        let mut out = vec![];
        for (ip, (start, next)) in &mut self.started {
            let elapsed = now.saturating_duration_since(*start);
            let reached = GRATUITOUS_SCHEDULE
                .iter()
                .filter(|d| **d <= elapsed)
                .count();
            if reached > *next {
                *next = reached;
                out.push(*ip);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{ArpEthIpv4Packet, ArpOperation, ArpPacket, PacketBuilder};
    use serde_json::json;

    const OURS: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
    const CLIENT: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc];

    fn svc(name: &str, annotation: Option<&str>, ips: &[&str], mode: &str) -> Arc<Service> {
        let mut metadata = json!({"namespace": "demo", "name": name});
        if let Some(a) = annotation {
            metadata["annotations"] = json!({ANNOTATION_ANNOUNCING_NODE: a});
        }
        let ingress: Vec<_> = ips
            .iter()
            .map(|ip| json!({"ip": ip, "ipMode": mode}))
            .collect();
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Service", "metadata": metadata,
                "spec": {"type": "LoadBalancer"},
                "status": {"loadBalancer": {"ingress": ingress}},
            }))
            .expect("Service"),
        )
    }

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().expect("ip")).collect()
    }

    #[test]
    fn announced_ips_table() {
        let services = vec![
            svc(
                "a",
                Some("node-a"),
                &["203.0.113.10", "2001:db8::10"],
                "VIP",
            ),
            svc("b", Some("node-b"), &["203.0.113.11"], "VIP"),
            svc("c", None, &["203.0.113.12"], "VIP"),
            svc("d", Some("node-a"), &["203.0.113.13"], "Proxy"),
            svc(
                "e",
                Some("203.0.113.14=node-a,2001:db8::14=node-b"),
                &["203.0.113.14", "2001:db8::14"],
                "VIP",
            ),
        ];
        assert_eq!(
            announced_ips(&services, "node-a"),
            ips(&["203.0.113.10", "2001:db8::10", "203.0.113.14"])
        );
        assert_eq!(
            announced_ips(&services, "node-b"),
            ips(&["203.0.113.11", "2001:db8::14"])
        );
        assert!(announced_ips(&services, "node-c").is_empty());
    }

    fn arp_request(target: [u8; 4], from: [u8; 6]) -> Vec<u8> {
        let b =
            PacketBuilder::ethernet2(from, arp::BROADCAST).arp(ArpPacket::from(ArpEthIpv4Packet {
                operation: ArpOperation::REQUEST,
                sender_mac: from,
                sender_ipv4: [192, 0, 2, 2],
                target_mac: [0; 6],
                target_ipv4: target,
            }));
        let mut v = vec![];
        b.write(&mut v).expect("write");
        v
    }

    #[test]
    fn answers_only_announced_ips_and_never_itself() {
        let announced = ips(&["203.0.113.10"]);
        let reply = answer(&arp_request([203, 0, 113, 10], CLIENT), OURS, &announced)
            .expect("announced IP answered");
        assert_eq!(&reply[..6], &CLIENT, "unicast back to the asker");
        assert_eq!(
            answer(&arp_request([203, 0, 113, 99], CLIENT), OURS, &announced),
            None
        );
        assert_eq!(
            answer(&arp_request([203, 0, 113, 10], OURS), OURS, &announced),
            None,
            "own frame seen by the packet socket"
        );
        // Our own gratuitous request must not trigger a reply storm.
        for frame in gratuitous(OURS, "203.0.113.10".parse().expect("ip")) {
            assert_eq!(answer(&frame, OURS, &announced), None);
        }
    }

    #[test]
    fn answers_neighbour_solicitations() {
        let vip: std::net::Ipv6Addr = "2001:db8::10".parse().expect("ip");
        let client: std::net::Ipv6Addr = "2001:db8::2".parse().expect("ip");
        let group = ndp::solicited_node_group(vip);
        let b = PacketBuilder::ethernet2(CLIENT, ndp::multicast_mac(group))
            .ipv6(client.octets(), group.octets(), 255)
            .icmpv6(etherparse::Icmpv6Type::NeighborSolicitation);
        let mut ns = vec![];
        b.write(&mut ns, &vip.octets()).expect("write");
        let announced = ips(&["2001:db8::10"]);
        let na = answer(&ns, OURS, &announced).expect("answered");
        assert_eq!(&na[..6], &CLIENT);
        assert_eq!(answer(&ns, OURS, &BTreeSet::new()), None);
    }

    #[test]
    fn takeovers_follow_the_schedule() {
        let t0 = std::time::Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = Takeovers::default();
        let a: IpAddr = "203.0.113.10".parse().expect("ip");
        let b: IpAddr = "2001:db8::10".parse().expect("ip");
        t.update(&[a].into(), t0);
        assert_eq!(t.due(t0), vec![a], "first frame at once");
        assert!(t.due(ms(5)).is_empty());
        assert_eq!(t.due(ms(25)), vec![a]);
        t.update(&[a, b].into(), ms(30));
        assert_eq!(t.due(ms(30)), vec![b], "b starts its own burst");
        assert_eq!(t.due(ms(60)), vec![a, b]);
        assert_eq!(t.due(ms(100)), vec![b], "b's third burst frame");
        assert!(t.due(ms(500)).is_empty());
        assert_eq!(
            t.due(ms(10_000)),
            vec![a, b],
            "late caller: one send, not a backlog"
        );
        assert!(t.due(ms(20_000)).is_empty(), "schedule exhausted");
        t.update(&[b].into(), ms(20_000));
        t.update(&[a, b].into(), ms(20_001));
        assert_eq!(t.due(ms(20_001)), vec![a], "a retaken: schedule restarts");
    }

    #[test]
    fn schedule_is_a_burst_then_repeats() {
        let burst = GRATUITOUS_SCHEDULE
            .iter()
            .filter(|d| **d < Duration::from_millis(100))
            .count();
        assert_eq!(burst, 3);
        assert!(GRATUITOUS_SCHEDULE.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            gratuitous(OURS, "2001:db8::1".parse().expect("ip")).len(),
            1
        );
        assert_eq!(gratuitous(OURS, "192.0.2.1".parse().expect("ip")).len(), 2);
    }
}

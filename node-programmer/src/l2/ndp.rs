//! NDP (RFC 4861) frames for IPv6 LoadBalancer IPs: parse neighbour solicitations, build solicited
//! and unsolicited neighbour advertisements. Pure: bytes in, bytes out.

use std::net::Ipv6Addr;

use etherparse::icmpv6::NeighborAdvertisementHeader;
use etherparse::{Icmpv6Type, LinkSlice, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

/// The all-nodes multicast group `ff02::1` (unsolicited advertisements go there, RFC 4861 §7.2.6).
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// NDP option type "Target Link-Layer Address" (RFC 4861 §4.6.1).
const OPTION_TARGET_LINK_LAYER_ADDRESS: u8 = 2;

/// A neighbour solicitation ("who has `target`?") seen on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighborSolicitation {
    /// Ethernet source of the frame (where the advertisement goes).
    pub frame_source: [u8; 6],
    /// IPv6 source of the solicitation.
    pub source: Ipv6Addr,
    /// The address asked for.
    pub target: Ipv6Addr,
}

/// Reads a valid neighbour solicitation from a whole Ethernet frame (RFC 4861 §7.1.1: hop limit
/// 255, code 0, good checksum, unicast target). Solicitations from `::` (duplicate address
/// detection) are ignored: the address is not ours to defend on the interface. `None` for
/// anything else.
pub fn parse_solicitation(frame: &[u8]) -> Option<NeighborSolicitation> {
    let sliced = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(LinkSlice::Ethernet2(eth)) = &sliced.link else {
        return None;
    };
    let Some(NetSlice::Ipv6(ip)) = &sliced.net else {
        return None;
    };
    let Some(TransportSlice::Icmpv6(icmp)) = &sliced.transport else {
        return None;
    };
    let header = ip.header();
    if header.hop_limit() != 255
        || icmp.icmp_type() != Icmpv6Type::NeighborSolicitation
        || icmp.code_u8() != 0
        || !icmp.is_checksum_valid(header.source(), header.destination())
    {
        return None;
    }
    let target: [u8; 16] = icmp.payload().get(..16)?.try_into().ok()?;
    let target = Ipv6Addr::from(target);
    let source = header.source_addr();
    if target.is_multicast() || source.is_unspecified() {
        return None;
    }
    Some(NeighborSolicitation {
        frame_source: eth.source(),
        source,
        target,
    })
}

/// The Ethernet address of an IPv6 multicast group (RFC 2464 §7: `33:33` + low 32 bits).
pub fn multicast_mac(group: Ipv6Addr) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The solicited-node multicast group of `ip` (`ff02::1:ffXX:XXXX`, RFC 4291 §2.7.1), where
/// solicitations for `ip` are sent; the responder joins it so NICs that filter multicast pass
/// them up.
pub fn solicited_node_group(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

fn advertisement(
    our_mac: [u8; 6],
    target: Ipv6Addr,
    destination_mac: [u8; 6],
    destination: Ipv6Addr,
    solicited: bool,
) -> Vec<u8> {
    // Source address: the target itself. The VIP is not on the interface (no link-local of ours
    // stands for it); RFC 4861 §7.1.2 puts no link-local rule on advertisements' sources.
    let builder = PacketBuilder::ethernet2(our_mac, destination_mac)
        .ipv6(target.octets(), destination.octets(), 255)
        .icmpv6(Icmpv6Type::NeighborAdvertisement(
            NeighborAdvertisementHeader {
                router: false,
                solicited,
                r#override: true,
            },
        ));
    let mut payload = Vec::with_capacity(24);
    payload.extend_from_slice(&target.octets());
    payload.extend_from_slice(&[OPTION_TARGET_LINK_LAYER_ADDRESS, 1]);
    payload.extend_from_slice(&our_mac);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    // Writing into a Vec cannot fail; the payload is far below the IPv6 length limit.
    let _ = builder.write(&mut out, &payload);
    out
}

/// The solicited advertisement answering `ns` (flags Solicited + Override, Target Link-Layer
/// Address option = `our_mac`), unicast to the solicitor.
pub fn answer(our_mac: [u8; 6], ns: &NeighborSolicitation) -> Vec<u8> {
    advertisement(our_mac, ns.target, ns.frame_source, ns.source, true)
}

/// An unsolicited advertisement of `ip` at `our_mac` to all nodes (Override set so receivers
/// replace a cached link-layer address at once, RFC 4861 §7.2.6 / §7.2.5).
pub fn unsolicited(our_mac: [u8; 6], ip: Ipv6Addr) -> Vec<u8> {
    advertisement(our_mac, ip, multicast_mac(ALL_NODES), ALL_NODES, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
    const CLIENT: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc];
    const CLIENT_IP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    const VIP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0xa, 0x10);

    fn ns_frame(target: Ipv6Addr, source: Ipv6Addr, hop_limit: u8) -> Vec<u8> {
        let group = solicited_node_group(target);
        let b = PacketBuilder::ethernet2(CLIENT, multicast_mac(group))
            .ipv6(source.octets(), group.octets(), hop_limit)
            .icmpv6(Icmpv6Type::NeighborSolicitation);
        let mut payload = target.octets().to_vec();
        payload.extend_from_slice(&[1, 1]); // source link-layer address option
        payload.extend_from_slice(&CLIENT);
        let mut out = vec![];
        b.write(&mut out, &payload).expect("write");
        out
    }

    #[test]
    fn groups_and_multicast_macs() {
        assert_eq!(
            solicited_node_group(VIP),
            "ff02::1:ff0a:10".parse::<Ipv6Addr>().expect("ip")
        );
        assert_eq!(multicast_mac(ALL_NODES), [0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(
            multicast_mac(solicited_node_group(VIP)),
            [0x33, 0x33, 0xff, 0x0a, 0x00, 0x10]
        );
    }

    #[test]
    fn parses_a_solicitation() {
        let ns = parse_solicitation(&ns_frame(VIP, CLIENT_IP, 255)).expect("NS");
        assert_eq!(
            ns,
            NeighborSolicitation {
                frame_source: CLIENT,
                source: CLIENT_IP,
                target: VIP
            }
        );
        assert_eq!(
            parse_solicitation(&ns_frame(VIP, CLIENT_IP, 64)),
            None,
            "hop limit"
        );
        assert_eq!(
            parse_solicitation(&ns_frame(VIP, Ipv6Addr::UNSPECIFIED, 255)),
            None,
            "DAD"
        );
        let mut corrupt = ns_frame(VIP, CLIENT_IP, 255);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        assert_eq!(parse_solicitation(&corrupt), None, "bad checksum");
    }

    /// Checks an advertisement with etherparse's decoder: addresses, flags, checksum, option.
    fn check_na(frame: &[u8], dst_mac: [u8; 6], dst_ip: Ipv6Addr, solicited: bool) {
        let p = SlicedPacket::from_ethernet(frame).expect("parse");
        let Some(LinkSlice::Ethernet2(eth)) = &p.link else {
            panic!("ethernet")
        };
        assert_eq!((eth.source(), eth.destination()), (OURS, dst_mac));
        let Some(NetSlice::Ipv6(ip)) = &p.net else {
            panic!("ipv6")
        };
        assert_eq!(ip.header().hop_limit(), 255);
        assert_eq!(ip.header().destination_addr(), dst_ip);
        let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else {
            panic!("icmpv6")
        };
        assert!(icmp.is_checksum_valid(ip.header().source(), ip.header().destination()));
        let Icmpv6Type::NeighborAdvertisement(h) = icmp.icmp_type() else {
            panic!("NA, got {:?}", icmp.icmp_type())
        };
        assert_eq!(
            (h.router, h.solicited, h.r#override),
            (false, solicited, true)
        );
        let payload = icmp.payload();
        assert_eq!(&payload[..16], &VIP.octets());
        assert_eq!(&payload[16..18], &[OPTION_TARGET_LINK_LAYER_ADDRESS, 1]);
        assert_eq!(&payload[18..24], &OURS);
    }

    #[test]
    fn builds_advertisements() {
        let ns = parse_solicitation(&ns_frame(VIP, CLIENT_IP, 255)).expect("NS");
        check_na(&answer(OURS, &ns), CLIENT, CLIENT_IP, true);
        check_na(
            &unsolicited(OURS, VIP),
            multicast_mac(ALL_NODES),
            ALL_NODES,
            false,
        );
    }
}

//! ARP (RFC 826) frames for IPv4 LoadBalancer IPs: parse requests, build replies and gratuitous
//! announcements (RFC 5227 §2.3 "ARP Announcement"). Pure: bytes in, bytes out.

use std::net::Ipv4Addr;

use etherparse::{
    ArpEthIpv4Packet, ArpHardwareId, ArpOperation, ArpPacket, EtherType, LinkSlice, NetSlice,
    PacketBuilder, SlicedPacket,
};

/// The Ethernet broadcast address.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// An ARP request ("who has `target_ip`? tell `sender_ip`") seen on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpRequest {
    /// Ethernet source of the frame (where the reply goes).
    pub frame_source: [u8; 6],
    /// Sender hardware address in the ARP payload.
    pub sender_mac: [u8; 6],
    /// Sender protocol address (`0.0.0.0` for an RFC 5227 probe).
    pub sender_ip: Ipv4Addr,
    /// The address asked for.
    pub target_ip: Ipv4Addr,
}

/// Reads an Ethernet/IPv4 ARP request from a whole Ethernet frame; `None` for anything else
/// (other ethertypes, replies, non-Ethernet/IPv4 ARP, truncated frames).
pub fn parse_request(frame: &[u8]) -> Option<ArpRequest> {
    let sliced = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(LinkSlice::Ethernet2(eth)) = &sliced.link else {
        return None;
    };
    let Some(NetSlice::Arp(arp)) = &sliced.net else {
        return None;
    };
    if arp.hw_addr_type() != ArpHardwareId::ETHERNET
        || arp.proto_addr_type() != EtherType::IPV4
        || arp.operation() != ArpOperation::REQUEST
    {
        return None;
    }
    let sender_mac: [u8; 6] = arp.sender_hw_addr().try_into().ok()?;
    let sender_ip: [u8; 4] = arp.sender_protocol_addr().try_into().ok()?;
    let target_ip: [u8; 4] = arp.target_protocol_addr().try_into().ok()?;
    Some(ArpRequest {
        frame_source: eth.source(),
        sender_mac,
        sender_ip: sender_ip.into(),
        target_ip: target_ip.into(),
    })
}

fn frame(destination: [u8; 6], source: [u8; 6], packet: ArpEthIpv4Packet) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(source, destination).arp(ArpPacket::from(packet));
    let mut out = Vec::with_capacity(builder.size());
    // Writing into a Vec cannot fail (no I/O error source).
    let _ = builder.write(&mut out);
    out
}

/// The reply to `request`: "`request.target_ip` is at `our_mac`", unicast to the asker.
pub fn reply(our_mac: [u8; 6], request: &ArpRequest) -> Vec<u8> {
    frame(
        request.frame_source,
        our_mac,
        ArpEthIpv4Packet {
            operation: ArpOperation::REPLY,
            sender_mac: our_mac,
            sender_ipv4: request.target_ip.octets(),
            target_mac: request.sender_mac,
            target_ipv4: request.sender_ip.octets(),
        },
    )
}

/// Gratuitous ARP for `ip` at `our_mac`, broadcast, in both forms MetalLB sends (some hosts only
/// honour one): an ARP Announcement request (sender = target = `ip`, target MAC zero) and an
/// unsolicited reply. Linux updates an existing neighbour entry from either (`arp_process`:
/// `is_garp` overrides the locktime).
pub fn gratuitous(our_mac: [u8; 6], ip: Ipv4Addr) -> [Vec<u8>; 2] {
    let announce = |operation, target_mac| ArpEthIpv4Packet {
        operation,
        sender_mac: our_mac,
        sender_ipv4: ip.octets(),
        target_mac,
        target_ipv4: ip.octets(),
    };
    [
        frame(BROADCAST, our_mac, announce(ArpOperation::REQUEST, [0; 6])),
        frame(BROADCAST, our_mac, announce(ArpOperation::REPLY, BROADCAST)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
    const CLIENT: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc];

    fn request_frame(target: Ipv4Addr) -> Vec<u8> {
        frame(
            BROADCAST,
            CLIENT,
            ArpEthIpv4Packet {
                operation: ArpOperation::REQUEST,
                sender_mac: CLIENT,
                sender_ipv4: [192, 0, 2, 2],
                target_mac: [0; 6],
                target_ipv4: target.octets(),
            },
        )
    }

    /// Decodes with etherparse's own owned types, independently of our parser.
    fn decode(frame: &[u8]) -> ([u8; 6], [u8; 6], ArpEthIpv4Packet) {
        let eth = etherparse::Ethernet2Slice::from_slice_without_fcs(frame).expect("ethernet");
        assert_eq!(eth.ether_type(), EtherType::ARP);
        let arp = ArpPacket::from_slice(eth.payload_slice())
            .expect("arp")
            .try_eth_ipv4()
            .expect("eth/ipv4 arp");
        (eth.destination(), eth.source(), arp)
    }

    #[test]
    fn parses_a_request_and_builds_the_reply() {
        let vip = Ipv4Addr::new(203, 0, 113, 10);
        let req = parse_request(&request_frame(vip)).expect("request");
        assert_eq!(
            req,
            ArpRequest {
                frame_source: CLIENT,
                sender_mac: CLIENT,
                sender_ip: Ipv4Addr::new(192, 0, 2, 2),
                target_ip: vip,
            }
        );
        let (dst, src, arp) = decode(&reply(OURS, &req));
        assert_eq!((dst, src), (CLIENT, OURS));
        assert_eq!(arp.operation, ArpOperation::REPLY);
        assert_eq!(arp.sender_mac, OURS);
        assert_eq!(arp.sender_ipv4_addr(), vip);
        assert_eq!(arp.target_mac, CLIENT);
        assert_eq!(arp.target_ipv4_addr(), Ipv4Addr::new(192, 0, 2, 2));
    }

    #[test]
    fn ignores_what_is_not_a_request() {
        let vip = Ipv4Addr::new(203, 0, 113, 10);
        let req = parse_request(&request_frame(vip)).expect("request");
        assert_eq!(parse_request(&reply(OURS, &req)), None, "a reply");
        assert_eq!(parse_request(&request_frame(vip)[..30]), None, "truncated");
        assert_eq!(parse_request(&[]), None);
        let ipv4_udp = {
            let b = PacketBuilder::ethernet2(CLIENT, OURS)
                .ipv4([192, 0, 2, 2], [203, 0, 113, 10], 64)
                .udp(1, 2);
            let mut v = vec![];
            b.write(&mut v, b"x").expect("write");
            v
        };
        assert_eq!(parse_request(&ipv4_udp), None, "IPv4, not ARP");
    }

    #[test]
    fn gratuitous_frames_announce_the_vip() {
        let vip = Ipv4Addr::new(203, 0, 113, 10);
        let [request, reply] = gratuitous(OURS, vip);
        for (frame, op) in [
            (request, ArpOperation::REQUEST),
            (reply, ArpOperation::REPLY),
        ] {
            let (dst, src, arp) = decode(&frame);
            assert_eq!((dst, src), (BROADCAST, OURS));
            assert_eq!(arp.operation, op);
            assert_eq!(arp.sender_mac, OURS);
            assert_eq!(arp.sender_ipv4_addr(), vip);
            assert_eq!(
                arp.target_ipv4_addr(),
                vip,
                "sender IP = target IP (RFC 5227)"
            );
        }
    }
}

//! The kernel conntrack table over NETLINK_NETFILTER (ctnetlink): a dump (`IPCTNL_MSG_CT_GET`
//! with `NLM_F_DUMP`, family `AF_UNSPEC` = both families) and deletes by original tuple
//! (`IPCTNL_MSG_CT_DELETE` + `CTA_TUPLE_ORIG` [+ `CTA_ZONE`]), as `conntrack -L` / `conntrack -D`
//! do. Message layouts come from `netlink-packet-netfilter`; this file only drives the socket.

use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, Nla,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple as NlTuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_NETFILTER};

use super::{ConntrackTable, Error, Flow, Result, Tuple};

/// `CTA_ZONE` (linux/netfilter/nfnetlink_conntrack.h): u16, network byte order.
const CTA_ZONE: u16 = 18;

/// The conntrack table of the network namespace the socket was opened in (the caller's, at
/// [`NetlinkConntrack::open`] time). Needs CAP_NET_ADMIN. Blocking I/O.
pub struct NetlinkConntrack {
    socket: Socket,
    sequence: u32,
}

impl std::fmt::Debug for NetlinkConntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetlinkConntrack")
            .field("sequence", &self.sequence)
            .finish()
    }
}

impl NetlinkConntrack {
    /// Opens and binds a NETLINK_NETFILTER socket in the current network namespace.
    pub fn open() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(Error::SocketFailed)?;
        socket.bind_auto().map_err(Error::SocketFailed)?;
        socket
            .connect(&NlAddr::new(0, 0))
            .map_err(Error::SocketFailed)?;
        // Big dumps arrive faster than we parse them; a larger buffer avoids ENOBUFS.
        let _ = socket.set_rx_buf_sz(4 << 20);
        Ok(NetlinkConntrack {
            socket,
            sequence: 1,
        })
    }

    fn send(&mut self, flags: u16, message: NetfilterMessage) -> Result<u32> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(Error::NetlinkIoFailed)?;
        Ok(self.sequence)
    }

    /// Receives datagrams and hands every message with sequence `seq` to `each` until it
    /// returns `Some` (the result).
    fn receive<T>(
        &mut self,
        seq: u32,
        mut each: impl FnMut(NetlinkMessage<NetfilterMessage>) -> Option<Result<T>>,
    ) -> Result<T> {
        loop {
            let (datagram, _) = self
                .socket
                .recv_from_full()
                .map_err(Error::NetlinkIoFailed)?;
            let mut offset = 0;
            while offset + 16 <= datagram.len() {
                let length = u32::from_ne_bytes(
                    datagram[offset..offset + 4]
                        .try_into()
                        .map_err(|_| Error::DecodeFailed("short header".into()))?,
                ) as usize;
                if length < 16 || offset + length > datagram.len() {
                    return Err(Error::DecodeFailed(format!(
                        "netlink length {length} at {offset} of {}",
                        datagram.len()
                    )));
                }
                let bytes = &datagram[offset..offset + length];
                offset += (length + 3) & !3;
                let message = match NetlinkMessage::<NetfilterMessage>::deserialize(bytes) {
                    Ok(message) => message,
                    Err(error) => {
                        // One odd entry (a protocol the parser does not know) must not stop
                        // the cleanup of the others.
                        tracing::debug!(%error, "skipping undecodable ctnetlink message");
                        continue;
                    }
                };
                if message.header.sequence_number != seq {
                    continue;
                }
                if let Some(result) = each(message) {
                    return result;
                }
            }
        }
    }
}

impl ConntrackTable for NetlinkConntrack {
    fn list(&mut self) -> Result<Vec<Flow>> {
        let request = NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
            ConntrackMessage::Get(vec![]),
        );
        let seq = self.send(NLM_F_REQUEST | NLM_F_DUMP, request)?;
        let mut flows = vec![];
        self.receive(seq, |message| match message.payload {
            NetlinkPayload::Done(_) => Some(Ok(())),
            NetlinkPayload::Error(error) => Some(match error.code {
                None => Ok(()),
                Some(code) => Err(Error::KernelRefused {
                    request: "dump",
                    source: std::io::Error::from_raw_os_error(-code.get()),
                }),
            }),
            NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::Conntrack(ct),
                ..
            }) => {
                let attributes = match &ct {
                    ConntrackMessage::New(a) | ConntrackMessage::Get(a) => a.as_slice(),
                    _ => &[],
                };
                match flow_from(attributes) {
                    Some(flow) => flows.push(flow),
                    None => tracing::debug!(?ct, "skipping conntrack entry without tuples"),
                }
                None
            }
            _ => None,
        })?;
        Ok(flows)
    }

    fn delete(&mut self, flow: &Flow) -> Result<()> {
        let family = match flow.original.src.ip() {
            IpAddr::V4(_) => NetfilterProtoFamily::IPv4,
            IpAddr::V6(_) => NetfilterProtoFamily::IPv6,
        };
        let mut attributes = vec![ConntrackAttribute::CtaTupleOrig(vec![
            NlTuple::Ip(vec![
                IPTuple::SourceAddress(flow.original.src.ip()),
                IPTuple::DestinationAddress(flow.original.dst.ip()),
            ]),
            NlTuple::Proto(vec![
                ProtoTuple::Protocol(Protocol::from(flow.protocol)),
                ProtoTuple::SourcePort(flow.original.src.port()),
                ProtoTuple::DestinationPort(flow.original.dst.port()),
            ]),
        ])];
        if flow.zone != 0 {
            attributes.push(ConntrackAttribute::Other(DefaultNla::new(
                CTA_ZONE,
                flow.zone.to_be_bytes().to_vec(),
            )));
        }
        let request = NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            ConntrackMessage::Delete(attributes),
        );
        let seq = self.send(NLM_F_REQUEST | NLM_F_ACK, request)?;
        self.receive(seq, |message| match message.payload {
            NetlinkPayload::Error(error) => Some(match error.code {
                None => Ok(()),
                Some(code) if -code.get() == ENOENT => Err(Error::NotFound),
                Some(code) => Err(Error::KernelRefused {
                    request: "delete",
                    source: std::io::Error::from_raw_os_error(-code.get()),
                }),
            }),
            _ => None,
        })
    }
}

/// `ENOENT` (asm-generic/errno-base.h): what the kernel answers for a missing entry.
const ENOENT: i32 = 2;

/// A [`Flow`] from a dumped entry's attributes; `None` without both tuples.
fn flow_from(attributes: &[ConntrackAttribute]) -> Option<Flow> {
    let mut original = None;
    let mut reply = None;
    let mut protocol = 0;
    let mut zone = 0;
    for attribute in attributes {
        match attribute {
            ConntrackAttribute::CtaTupleOrig(tuples) => {
                let (tuple, proto) = tuple_from(tuples)?;
                original = Some(tuple);
                protocol = proto;
            }
            ConntrackAttribute::CtaTupleReply(tuples) => reply = Some(tuple_from(tuples)?.0),
            ConntrackAttribute::Other(nla) if nla.kind() == CTA_ZONE && nla.value_len() == 2 => {
                let mut value = [0u8; 2];
                nla.emit_value(&mut value);
                zone = u16::from_be_bytes(value);
            }
            _ => {}
        }
    }
    Some(Flow {
        protocol,
        original: original?,
        reply: reply?,
        zone,
    })
}

/// (addresses + ports, protocol number) of one `CTA_TUPLE_*`.
fn tuple_from(tuples: &[NlTuple]) -> Option<(Tuple, u8)> {
    let (mut src, mut dst, mut sport, mut dport, mut protocol) = (None, None, 0, 0, 0);
    for tuple in tuples {
        match tuple {
            NlTuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            NlTuple::Proto(protos) => {
                for proto in protos {
                    match proto {
                        ProtoTuple::Protocol(p) => protocol = u8::from(*p),
                        ProtoTuple::SourcePort(p) => sport = *p,
                        ProtoTuple::DestinationPort(p) => dport = *p,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((
        Tuple {
            src: SocketAddr::new(src?, sport),
            dst: SocketAddr::new(dst?, dport),
        },
        protocol,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_from_reads_tuples_protocol_and_zone() {
        let tuple = |src: &str, dst: &str, sport, dport| {
            vec![
                NlTuple::Ip(vec![
                    IPTuple::SourceAddress(src.parse().expect("ip")),
                    IPTuple::DestinationAddress(dst.parse().expect("ip")),
                ]),
                NlTuple::Proto(vec![
                    ProtoTuple::Protocol(Protocol::Udp),
                    ProtoTuple::SourcePort(sport),
                    ProtoTuple::DestinationPort(dport),
                ]),
            ]
        };
        let attributes = vec![
            ConntrackAttribute::CtaTupleOrig(tuple("198.51.100.2", "198.18.0.10", 40001, 53)),
            ConntrackAttribute::CtaTupleReply(tuple("192.0.2.10", "198.51.100.2", 5353, 40001)),
            ConntrackAttribute::CtaMark(7),
            ConntrackAttribute::Other(DefaultNla::new(CTA_ZONE, vec![0, 5])),
        ];
        let flow = flow_from(&attributes).expect("flow");
        assert_eq!(flow.protocol, 17);
        assert_eq!(flow.original.src, "198.51.100.2:40001".parse().expect("sa"));
        assert_eq!(flow.original.dst, "198.18.0.10:53".parse().expect("sa"));
        assert_eq!(flow.reply.src, "192.0.2.10:5353".parse().expect("sa"));
        assert_eq!(flow.zone, 5);
        assert!(flow_from(&attributes[..1]).is_none(), "no reply tuple");
    }
}

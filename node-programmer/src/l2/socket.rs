//! The wire edge: one raw `AF_PACKET` socket per interface (through `pnet_datalink`, which keeps
//! the `unsafe` FFI out of this crate), behind two small traits so the responder loop runs
//! against in-memory fakes in tests.
//!
//! The socket is bound to `ETH_P_ALL` on the interface without promiscuous mode: it sees
//! broadcast ARP and, once the solicited-node group is joined ([`MulticastMembership`]), NDP
//! solicitations. It also sees every other frame of the interface; a BPF filter would cut that
//! cost on busy nodes (MetalLB attaches one) and is not done yet.

use std::io;
use std::net::{Ipv6Addr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pnet_datalink::{Channel, Config, DataLinkReceiver, DataLinkSender};

/// Errors opening or using an interface. The caller retries opening (an interface may appear
/// later) and logs send failures (the next announcement retries).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No interface of that name exists (now).
    #[error("interface {0} not found")]
    InterfaceNotFound(String),
    /// The interface has no Ethernet address (e.g. a tun device): ARP/NDP make no sense there.
    #[error("interface {0} has no MAC address")]
    NoMacAddress(String),
    /// The raw socket could not be opened (not root / no CAP_NET_RAW, interface down...).
    #[error("opening a packet socket on {name} failed")]
    OpenFailed {
        /// The interface.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The channel is not an Ethernet channel (never on Linux).
    #[error("packet socket on {0} is not an Ethernet channel")]
    NotEthernet(String),
}

/// Sends whole Ethernet frames on one interface.
pub trait FrameSender: Send + Sync {
    /// Sends `frame` (destination MAC first). Errors: the kernel's `send` error.
    fn send(&self, frame: &[u8]) -> io::Result<()>;
}

/// Receives whole Ethernet frames from one interface.
pub trait FrameReceiver: Send {
    /// The next frame, or `Ok(None)` when nothing arrived within the receive timeout (so the
    /// caller can run its timers).
    fn recv(&mut self) -> io::Result<Option<Vec<u8>>>;
}

/// An opened interface.
pub struct Link {
    /// Interface name.
    pub name: String,
    /// Interface index (for multicast joins).
    pub index: u32,
    /// Its MAC: what we answer with.
    pub mac: [u8; 6],
    /// Send half.
    pub sender: Arc<dyn FrameSender>,
    /// Receive half.
    pub receiver: Box<dyn FrameReceiver>,
}

struct PnetSender(Mutex<Box<dyn DataLinkSender>>);

impl FrameSender for PnetSender {
    fn send(&self, frame: &[u8]) -> io::Result<()> {
        let mut tx = self
            .0
            .lock()
            .map_err(|_| io::Error::other("packet sender lock poisoned"))?;
        tx.send_to(frame, None)
            .unwrap_or_else(|| Err(io::Error::other("packet sender gave no result")))
    }
}

struct PnetReceiver(Box<dyn DataLinkReceiver>);

impl FrameReceiver for PnetReceiver {
    fn recv(&mut self) -> io::Result<Option<Vec<u8>>> {
        match self.0.next() {
            Ok(frame) => Ok(Some(frame.to_vec())),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Opens interface `name` with receive timeout `tick`. Errors: [`Error`].
pub fn open(name: &str, tick: Duration) -> Result<Link, Error> {
    let interface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == name)
        .ok_or_else(|| Error::InterfaceNotFound(name.to_string()))?;
    let mac = interface
        .mac
        .filter(|m| m.octets() != [0; 6])
        .ok_or_else(|| Error::NoMacAddress(name.to_string()))?
        .octets();
    let config = Config {
        read_timeout: Some(tick),
        promiscuous: false,
        ..Config::default()
    };
    match pnet_datalink::channel(&interface, config) {
        Ok(Channel::Ethernet(tx, rx)) => Ok(Link {
            name: name.to_string(),
            index: interface.index,
            mac,
            sender: Arc::new(PnetSender(Mutex::new(tx))),
            receiver: Box::new(PnetReceiver(rx)),
        }),
        Ok(_) => Err(Error::NotEthernet(name.to_string())),
        Err(source) => Err(Error::OpenFailed {
            name: name.to_string(),
            source,
        }),
    }
}

/// Membership of one IPv6 multicast group on one interface, held by a UDP socket (the kernel
/// then accepts the group's frames and sends MLD reports, so snooping switches forward them);
/// dropping it leaves the group.
pub struct MulticastMembership(#[allow(dead_code)] UdpSocket);

impl MulticastMembership {
    /// Joins `group` on interface `index`. Errors: the kernel's `IPV6_ADD_MEMBERSHIP` error
    /// (e.g. IPv6 disabled on the interface).
    pub fn join(group: Ipv6Addr, index: u32) -> io::Result<Self> {
        let socket = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))?;
        socket.join_multicast_v6(&group, index)?;
        Ok(MulticastMembership(socket))
    }
}

//! L2 announcement: answer ARP (IPv4) and NDP neighbour solicitations (IPv6) for the LoadBalancer
//! IPs lb-controller assigned to this node, from userspace, without adding the IPs to any
//! interface (MetalLB's layer-2 mode; adding them makes kubelet and CNIs take them for node IPs).
//!
//! ```text
//!  Services (annotations drawbridge.dev/announcing-node / -candidates + status.loadBalancer.ingress)
//!     │ changed() ticks                       gossip (--gossip-bind): Membership view, republished
//!     ▼                                        every heartbeat and at once on every change
//!  run(): without gossip: responder::announced_ips(services, --node-name)  ── pure
//!         with gossip:    decide::answered_ips(decide::ranked_ips(services), view)  ── pure
//!         then interfaces::answers(ips, interfaces::scopes(services, node, --l2-interfaces))
//!     │ publish Arc<Answers> (IP -> interfaces, None = all) + valid-until (view.as_of +
//!     │ fence_after; renewed by every view, so a frozen or stalled node stops answering by itself)
//!     ▼
//!  one thread per --l2-interfaces interface: serve(), its own IP set precomputed per change
//!     ├─ socket::FrameReceiver ─ frame ─> responder::answer() ─> socket::FrameSender (reply)
//!     ├─ responder::Takeovers: gratuitous ARP / unsolicited NA burst + repeats on takeover
//!     └─ IPv6: join each announced IP's solicited-node group (socket::MulticastMembership)
//! ```
//!
//! A node whose annotation entry moves away stops answering at its next tick (≤ [`TICK`]); the
//! new node's gratuitous burst updates neighbours' caches at once (Linux honours gratuitous ARP
//! for existing entries and NAs with the Override flag). With gossip, the move happens without
//! any annotation change: see [`decide`] (takeover and quorum rules) and [`gossip`] (timing).

pub mod arp;
pub mod decide;
pub mod gossip;
pub mod interfaces;
pub mod ndp;
pub mod responder;
pub mod socket;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use drawbridge_resources::Resources;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use decide::Membership;
use interfaces::{Answers, Problem};
use responder::Takeovers;
use socket::{FrameReceiver, FrameSender, MulticastMembership};

/// Receive timeout of the interface threads: the granularity of the gratuitous schedule and the
/// longest a withdrawn IP is still answered after the set changed.
pub const TICK: Duration = Duration::from_millis(10);

/// First and longest wait before reopening an interface (doubling while opening fails).
const REOPEN_MIN: Duration = Duration::from_millis(20);
const REOPEN_MAX: Duration = Duration::from_millis(200);

/// The announced IPs (each with the interfaces to answer it on), shared between the watcher task
/// and the interface threads, with how long they may be acted on (`None`: until replaced —
/// without gossip).
#[derive(Clone, Default)]
pub struct Announced(Arc<RwLock<AnnouncedState>>);

/// The answers and their deadline, as [`Announced`] holds them.
type AnnouncedState = (Arc<Answers>, Option<Instant>);

impl Announced {
    /// The current answers (cheap: an `Arc` clone).
    pub fn get(&self) -> Arc<Answers> {
        self.snapshot().0
    }

    /// The current answers and their deadline.
    pub fn snapshot(&self) -> (Arc<Answers>, Option<Instant>) {
        match self.0.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the answers with `ips` on every interface; valid for ever.
    pub fn set(&self, ips: BTreeSet<IpAddr>) {
        self.set_until(ips.into_iter().map(|ip| (ip, None)).collect(), None);
    }

    /// Replaces the answers; they stop at `valid_until` unless renewed.
    pub fn set_until(&self, answers: Answers, valid_until: Option<Instant>) {
        let value = (Arc::new(answers), valid_until);
        match self.0.write() {
            Ok(mut guard) => *guard = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
    }

    /// Moves the deadline of the current set (the set itself, and so the takeover schedule,
    /// stays).
    pub fn renew(&self, valid_until: Option<Instant>) {
        match self.0.write() {
            Ok(mut guard) => guard.1 = valid_until,
            Err(poisoned) => poisoned.into_inner().1 = valid_until,
        }
    }
}

/// L2 metrics.
#[derive(Clone, Default)]
pub struct Metrics {
    /// `drawbridge_l2_announced_ips`: IPs this node answers for now.
    pub announced: Gauge,
    /// `drawbridge_l2_announcer_changes_total{change="gained"|"lost"}`: IPs this node took over
    /// or gave up.
    pub changes: Family<[(&'static str, &'static str); 1], Counter>,
    /// `drawbridge_l2_unanswered_ips{reason="no_interface"|"invalid_interfaces_annotation"}`:
    /// IPs this node is the announcer of but answers on no interface (`--l2-interfaces` ∩
    /// `drawbridge.dev/announcing-interfaces` empty, or that annotation malformed).
    pub unanswered: Family<[(&'static str, &'static str); 1], Gauge>,
    /// Gossip membership metrics.
    pub gossip: gossip::GossipMetrics,
}

impl Metrics {
    /// Registers the L2 and gossip metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            gossip: gossip::GossipMetrics::register(registry),
            ..Metrics::default()
        };
        registry.register(
            "drawbridge_l2_announced_ips",
            "LoadBalancer IPs this node answers ARP/NDP for",
            m.announced.clone(),
        );
        registry.register(
            "drawbridge_l2_announcer_changes",
            "LoadBalancer IPs this node took over (gained) or gave up (lost)",
            m.changes.clone(),
        );
        registry.register(
            "drawbridge_l2_unanswered_ips",
            "LoadBalancer IPs this node announces but answers on no interface (reason: no_interface = --l2-interfaces and the Service's announcing-interfaces share none; invalid_interfaces_annotation = that annotation does not parse)",
            m.unanswered.clone(),
        );
        m
    }
}

/// Follows Services (and, with `gossip`, the membership view) and answers for this node's IPs on
/// `interfaces` (each IP only on those its `drawbridge.dev/announcing-interfaces` entry for
/// `node` allows: [`interfaces`]) until the source ends. IPs answered nowhere are logged once per
/// change (a warning naming the Service and IP) and counted in `drawbridge_l2_unanswered_ips`. Interfaces that cannot be opened are logged and retried;
/// a gossip socket that cannot be bound is logged and L2 answers stay off (never answering without
/// the failure detector that would fence us). Nothing here stops the process.
pub async fn run(
    mut resources: Resources,
    node: String,
    interfaces: Vec<String>,
    gossip: Option<gossip::Settings>,
    metrics: Metrics,
) {
    let announced = Announced::default();
    for name in interfaces.clone() {
        let announced = announced.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("l2-{name}"))
            .spawn(move || open_and_serve(&name, &announced));
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start an L2 interface thread");
        }
    }
    let (view_tx, mut views) = watch::channel::<Option<Membership>>(None);
    let (seeds_tx, seeds_rx) = watch::channel(Vec::new());
    let fence_after = gossip.as_ref().map(|g| g.timing.fence_after);
    let gossip_port = gossip.as_ref().map(|g| g.bind);
    if let Some(settings) = gossip {
        let gossip_metrics = metrics.gossip.clone();
        tokio::spawn(async move {
            if let Err(error) = gossip::run(settings, seeds_rx, view_tx, gossip_metrics).await {
                tracing::error!(error = %error, source = ?std::error::Error::source(&error), "gossip failed to start; this node answers no ARP/NDP");
            }
        });
    } else {
        drop(view_tx);
    }
    resources.wait_synced().await;
    let mut ranked = Arc::new(BTreeMap::new());
    let mut scopes = BTreeMap::new();
    let mut reported: Vec<Problem> = vec![];
    let mut resources_changed = true;
    loop {
        if resources_changed {
            let services = resources.services.state();
            ranked = Arc::new(decide::ranked_ips(&services));
            scopes = interfaces::scopes(&services, &node, &interfaces);
            if let Some(bind) = gossip_port {
                seeds_tx.send_if_modified(|seeds| {
                    let wanted = node_seeds(&resources.nodes.state(), bind);
                    (*seeds != wanted).then(|| *seeds = wanted).is_some()
                });
            }
        }
        let (desired, valid_until) = match fence_after {
            None => (
                responder::announced_ips(&resources.services.state(), &node),
                None,
            ),
            Some(fence_after) => match views.borrow_and_update().as_ref() {
                Some(view) => (
                    decide::answered_ips(&ranked, view),
                    Some(view.as_of + fence_after),
                ),
                // Gossip not (yet) running: answer nothing.
                None => (BTreeSet::new(), Some(Instant::now())),
            },
        };
        let (answers, problems) = interfaces::answers(&desired, &scopes);
        if problems != reported {
            report_problems(&node, &reported, &problems, &metrics);
            reported = problems;
        }
        let current = announced.get();
        if *current != answers {
            let before: BTreeSet<IpAddr> = current.keys().copied().collect();
            let desired: BTreeSet<IpAddr> = answers.keys().copied().collect();
            let gained: Vec<String> = desired.difference(&before).map(|i| i.to_string()).collect();
            let lost: Vec<String> = before.difference(&desired).map(|i| i.to_string()).collect();
            if let Some(view) = views.borrow().as_ref() {
                let why: Vec<String> = before
                    .difference(&desired)
                    .filter_map(|ip| {
                        Some(format!(
                            "{ip}: {:?}",
                            decide::verdict(ranked.get(ip)?, view)
                        ))
                    })
                    .collect();
                tracing::info!(node = %node, gained = ?gained, lost = ?lost, why = ?why, "L2 announcements changed");
            } else if !gained.is_empty() || !lost.is_empty() {
                tracing::info!(node = %node, gained = ?gained, lost = ?lost, "L2 announcements changed");
            }
            let moved: Vec<String> = answers
                .iter()
                .filter(|(ip, only)| current.get(*ip).is_some_and(|was| was != *only))
                .map(|(ip, only)| match only {
                    None => format!("{ip}: all"),
                    Some(set) => format!(
                        "{ip}: {}",
                        set.iter().cloned().collect::<Vec<_>>().join(",")
                    ),
                })
                .collect();
            if !moved.is_empty() {
                tracing::info!(node = %node, interfaces = ?moved, "L2 answer interfaces changed");
            }
            metrics
                .changes
                .get_or_create(&[("change", "gained")])
                .inc_by(gained.len() as u64);
            metrics
                .changes
                .get_or_create(&[("change", "lost")])
                .inc_by(lost.len() as u64);
            metrics.announced.set(answers.len() as i64);
            announced.set_until(answers, valid_until);
        } else {
            announced.renew(valid_until);
        }
        tokio::select! {
            alive = resources.changed() => {
                if !alive {
                    return;
                }
                resources_changed = true;
            }
            changed = views.changed(), if fence_after.is_some() => {
                if changed.is_err() {
                    // The gossip task ended (it logged why): stop answering, follow Services only.
                    announced.set_until(Answers::new(), Some(Instant::now()));
                    if !resources.changed().await {
                        return;
                    }
                }
                resources_changed = false;
            }
        }
    }
}

/// Logs what changed between two problem lists (a warning per new IP answered nowhere, naming
/// the Service; an info line per resolved one) and sets `drawbridge_l2_unanswered_ips`.
fn report_problems(node: &str, before: &[Problem], now: &[Problem], metrics: &Metrics) {
    for problem in now.iter().filter(|p| !before.contains(p)) {
        match problem {
            Problem::NoInterface {
                ip,
                service,
                wanted,
            } => {
                tracing::warn!(node = %node, service = %service, %ip, wanted = %wanted, "this node announces the IP but none of its --l2-interfaces is in the Service's drawbridge.dev/announcing-interfaces (L2Announcement spec.interfaces): answering it nowhere")
            }
            Problem::Malformed { ip, service, error } => {
                tracing::warn!(node = %node, service = %service, %ip, error = %error, "drawbridge.dev/announcing-interfaces does not parse: answering the IP nowhere until lb-controller rewrites it")
            }
        }
    }
    for problem in before.iter().filter(|p| !now.contains(p)) {
        let (Problem::NoInterface { ip, service, .. } | Problem::Malformed { ip, service, .. }) =
            problem;
        tracing::info!(node = %node, service = %service, %ip, "no longer unanswerable for its interfaces");
    }
    for reason in ["no_interface", "invalid_interfaces_annotation"] {
        let count = now.iter().filter(|p| p.reason() == reason).count();
        metrics
            .unanswered
            .get_or_create(&[("reason", reason)])
            .set(count as i64);
    }
}

/// Gossip seeds from the Nodes: every `InternalIP` of `bind`'s family, at `bind`'s port
/// (this node's own address included; the gossip task skips it).
pub fn node_seeds(
    nodes: &[Arc<k8s_openapi::api::core::v1::Node>],
    bind: std::net::SocketAddr,
) -> Vec<std::net::SocketAddr> {
    let mut out: Vec<std::net::SocketAddr> = nodes
        .iter()
        .filter_map(|n| n.status.as_ref()?.addresses.as_ref())
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse::<IpAddr>().ok())
        .filter(|ip| ip.is_ipv4() == bind.is_ipv4())
        .map(|ip| std::net::SocketAddr::new(ip, bind.port()))
        .collect();
    out.sort();
    out.dedup();
    out
}

fn open_and_serve(name: &str, announced: &Announced) {
    // A link going down makes the socket report an error; reopen quickly so a node whose link
    // comes back answers again at once, doubling the wait (up to REOPEN_MAX) while the interface
    // keeps failing, and logging only the first failure of a streak.
    let mut backoff = REOPEN_MIN;
    let mut failing = false;
    loop {
        match socket::open(name, TICK) {
            Ok(link) => {
                if !failing {
                    tracing::info!(interface = %name, mac = %format_mac(link.mac), "answering ARP/NDP");
                }
                let opened = Instant::now();
                let error = serve(
                    name,
                    link.mac,
                    link.index,
                    link.sender.as_ref(),
                    link.receiver,
                    announced,
                    &|| false,
                );
                if opened.elapsed() > Duration::from_secs(1) {
                    backoff = REOPEN_MIN;
                    failing = false;
                }
                if !failing {
                    tracing::warn!(interface = %name, %error, "receive failed (link down?); reopening");
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(interface = %name, %error, "cannot open interface for L2 announcements; retrying");
                }
            }
        }
        failing = true;
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(REOPEN_MAX);
    }
}

/// One interface thread's view of [`Announced`]: its own IPs, their gratuitous schedule and
/// IPv6 group memberships, recomputed only when the shared answers change.
#[derive(Default)]
struct InterfaceState {
    seen: Option<Arc<Answers>>,
    local: BTreeSet<IpAddr>,
    takeovers: Takeovers,
    memberships: BTreeMap<IpAddr, Option<MulticastMembership>>,
}

impl InterfaceState {
    fn follow(&mut self, answers: &Arc<Answers>, interface: &str, index: u32) {
        if self.seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, answers)) {
            return;
        }
        self.local = interfaces::for_interface(answers, interface);
        self.takeovers.update(&self.local, Instant::now());
        let local = &self.local;
        self.memberships.retain(|ip, _| local.contains(ip));
        for ip in local {
            if let IpAddr::V6(v6) = ip {
                self.memberships.entry(*ip).or_insert_with(|| {
                    MulticastMembership::join(ndp::solicited_node_group(*v6), index)
                        .map_err(|error| tracing::warn!(%error, ip = %v6, "cannot join the solicited-node group"))
                        .ok()
                });
            }
        }
        self.seen = Some(answers.clone());
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The interface loop for `interface`: answer, announce on takeover, keep multicast
/// memberships — each only for the IPs [`Announced`] allows on `interface` (computed once per
/// change, not per frame) — until a receive error (returned) or `stop()` says so (tests). Send
/// errors are logged, not fatal.
pub fn serve(
    interface: &str,
    mac: [u8; 6],
    index: u32,
    sender: &dyn FrameSender,
    mut receiver: Box<dyn FrameReceiver>,
    announced: &Announced,
    stop: &dyn Fn() -> bool,
) -> std::io::Error {
    let mut state = InterfaceState::default();
    let send = |frame: &[u8]| {
        if let Err(error) = sender.send(frame) {
            tracing::warn!(%error, "sending an ARP/NDP frame failed");
        }
    };
    let nothing = BTreeSet::new();
    while !stop() {
        let (answers, valid_until) = announced.snapshot();
        // Past its deadline the set is not acted on (a stalled decision loop or a thawed
        // process must not answer from a stale view).
        let live = valid_until.is_none_or(|t| Instant::now() < t);
        state.follow(&answers, interface, index);
        if live {
            for ip in state.takeovers.due(Instant::now()) {
                for frame in responder::gratuitous(mac, ip) {
                    send(&frame);
                }
            }
        }
        match receiver.recv() {
            Ok(Some(frame)) => {
                // Re-read: the answers or their deadline may have changed while we waited (a
                // pointer comparison unless they did).
                let (answers, valid_until) = announced.snapshot();
                state.follow(&answers, interface, index);
                let live = valid_until.is_none_or(|t| Instant::now() < t);
                let answerable = if live { &state.local } else { &nothing };
                if let Some(reply) = responder::answer(&frame, mac, answerable) {
                    send(&reply);
                }
            }
            Ok(None) => {}
            Err(error) => return error,
        }
    }
    std::io::Error::other("stopped")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;

    const OURS: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];

    #[derive(Default)]
    struct Recorded(Mutex<Vec<Vec<u8>>>);
    impl FrameSender for Recorded {
        fn send(&self, frame: &[u8]) -> std::io::Result<()> {
            self.0.lock().expect("lock").push(frame.to_vec());
            Ok(())
        }
    }
    struct Fed(mpsc::Receiver<Vec<u8>>);
    impl FrameReceiver for Fed {
        fn recv(&mut self) -> std::io::Result<Option<Vec<u8>>> {
            match self.0.recv_timeout(Duration::from_millis(2)) {
                Ok(f) => Ok(Some(f)),
                Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
                Err(mpsc::RecvTimeoutError::Disconnected) => Err(std::io::Error::other("closed")),
            }
        }
    }

    /// The loop against fakes: a takeover sends the gratuitous burst, a request is answered,
    /// a withdrawn IP is not.
    #[test]
    fn serve_announces_answers_and_withdraws() {
        let vip: IpAddr = "203.0.113.10".parse().expect("ip");
        let announced = Announced::default();
        announced.set([vip].into());
        let sent = Arc::new(Recorded::default());
        let (feed, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (sent, announced, stop) = (sent.clone(), announced.clone(), stop.clone());
            std::thread::spawn(move || {
                serve(
                    "eth0",
                    OURS,
                    0,
                    sent.as_ref(),
                    Box::new(Fed(rx)),
                    &announced,
                    &move || stop.load(Ordering::Relaxed),
                )
            })
        };
        std::thread::sleep(Duration::from_millis(150));
        let burst = sent.0.lock().expect("lock").len();
        assert_eq!(burst, 6, "3 × (ARP announcement request + reply)");
        let client = [0x02, 0, 0, 0, 0, 0xc];
        let request = |target: [u8; 4]| {
            let b = etherparse::PacketBuilder::ethernet2(client, arp::BROADCAST).arp(
                etherparse::ArpPacket::from(etherparse::ArpEthIpv4Packet {
                    operation: etherparse::ArpOperation::REQUEST,
                    sender_mac: client,
                    sender_ipv4: [192, 0, 2, 2],
                    target_mac: [0; 6],
                    target_ipv4: target,
                }),
            );
            let mut v = vec![];
            b.write(&mut v).expect("write");
            v
        };
        feed.send(request([203, 0, 113, 10])).expect("feed");
        std::thread::sleep(Duration::from_millis(50));
        let frames = sent.0.lock().expect("lock").clone();
        assert_eq!(frames.len(), burst + 1);
        let reply = arp::parse_request(&frames[burst]);
        assert_eq!(reply, None, "the answer is a reply, not a request");
        assert_eq!(&frames[burst][..6], &client);

        announced.set(BTreeSet::new());
        std::thread::sleep(Duration::from_millis(30));
        feed.send(request([203, 0, 113, 10])).expect("feed");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            sent.0.lock().expect("lock").len(),
            burst + 1,
            "withdrawn: silent"
        );
        // An answer set past its deadline (gossip view too old: a frozen or stalled node) is not
        // acted on; renewing it brings the answers back without a new takeover burst.
        announced.set_until(
            [(vip, None)].into(),
            Some(Instant::now() + Duration::from_millis(100)),
        );
        std::thread::sleep(Duration::from_millis(150));
        let before = sent.0.lock().expect("lock").len();
        feed.send(request([203, 0, 113, 10])).expect("feed");
        std::thread::sleep(Duration::from_millis(50));
        let after_expiry = sent.0.lock().expect("lock").len();
        assert_eq!(after_expiry, before, "expired: silent");
        announced.renew(Some(Instant::now() + Duration::from_secs(10)));
        feed.send(request([203, 0, 113, 10])).expect("feed");
        std::thread::sleep(Duration::from_millis(50));
        let frames = sent.0.lock().expect("lock").clone();
        assert!(
            frames.len() > after_expiry && frames[after_expiry..].iter().any(|f| f[..6] == client),
            "renewed: answered again"
        );
        stop.store(true, Ordering::Relaxed);
        thread.join().expect("thread");
    }

    /// An IP restricted to another interface gets neither the gratuitous burst nor answers on
    /// this one; allowing this interface too starts both (a burst only for the newly allowed IP).
    #[test]
    fn serve_answers_only_where_the_interfaces_allow() {
        let vip: IpAddr = "203.0.113.10".parse().expect("ip");
        let only = |names: &[&str]| Some(Arc::new(names.iter().map(|n| n.to_string()).collect()));
        let announced = Announced::default();
        announced.set_until([(vip, only(&["eth1"]))].into(), None);
        let sent = Arc::new(Recorded::default());
        let (feed, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (sent, announced, stop) = (sent.clone(), announced.clone(), stop.clone());
            std::thread::spawn(move || {
                serve(
                    "eth0",
                    OURS,
                    0,
                    sent.as_ref(),
                    Box::new(Fed(rx)),
                    &announced,
                    &move || stop.load(Ordering::Relaxed),
                )
            })
        };
        let client = [0x02, 0, 0, 0, 0, 0xc];
        let mut request = vec![];
        etherparse::PacketBuilder::ethernet2(client, arp::BROADCAST)
            .arp(etherparse::ArpPacket::from(etherparse::ArpEthIpv4Packet {
                operation: etherparse::ArpOperation::REQUEST,
                sender_mac: client,
                sender_ipv4: [192, 0, 2, 2],
                target_mac: [0; 6],
                target_ipv4: [203, 0, 113, 10],
            }))
            .write(&mut request)
            .expect("write");
        std::thread::sleep(Duration::from_millis(100));
        feed.send(request.clone()).expect("feed");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            sent.0.lock().expect("lock").len(),
            0,
            "restricted to eth1: no burst, no answer on eth0"
        );
        announced.set_until([(vip, only(&["eth1", "eth0"]))].into(), None);
        std::thread::sleep(Duration::from_millis(100));
        feed.send(request).expect("feed");
        std::thread::sleep(Duration::from_millis(50));
        let frames = sent.0.lock().expect("lock").clone();
        assert_eq!(frames.len(), 7, "burst of 6, then the answer");
        assert_eq!(&frames[6][..6], &client);
        stop.store(true, Ordering::Relaxed);
        thread.join().expect("thread");
    }

    #[test]
    fn node_seeds_are_internal_ips_of_the_bind_family_at_the_bind_port() {
        let node = |name: &str, addrs: serde_json::Value| {
            Arc::new(
                serde_json::from_value::<k8s_openapi::api::core::v1::Node>(serde_json::json!({
                    "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                    "status": {"addresses": addrs},
                }))
                .expect("Node"),
            )
        };
        let nodes = vec![
            node(
                "a",
                serde_json::json!([
                    {"type": "InternalIP", "address": "192.0.2.11"},
                    {"type": "InternalIP", "address": "2001:db8::11"},
                    {"type": "ExternalIP", "address": "203.0.113.5"},
                    {"type": "Hostname", "address": "a"}
                ]),
            ),
            node(
                "b",
                serde_json::json!([{"type": "InternalIP", "address": "192.0.2.12"}]),
            ),
            node("c", serde_json::json!([])),
        ];
        let v4: std::net::SocketAddr = "192.0.2.11:7946".parse().expect("addr");
        let v6: std::net::SocketAddr = "[2001:db8::11]:7946".parse().expect("addr");
        assert_eq!(
            node_seeds(&nodes, v4),
            vec![v4, "192.0.2.12:7946".parse().expect("addr")]
        );
        assert_eq!(node_seeds(&nodes, v6), vec![v6]);
    }
}

//! Gossip failure detection among node-programmers: a SWIM membership (`foca`, SWIM + Inf. +
//! Susp.) over UDP, plus direct heartbeats for the quorum (fencing) rule of [`super::decide`].
//!
//! ```text
//!  UDP socket (--gossip-bind)
//!    ├─ 0x01 + foca message ──> Foca::handle_data ──> members: Alive / Suspect / Down
//!    │                           timers (probe, indirect probe, suspicion) ─> Foca::handle_timer
//!    └─ 0x02 + node name ─────> Heard: per node, streak of heartbeats (first, last)
//!  every `heartbeat`: send 0x02 to every active member; publish Membership (as_of = now)
//!  on every membership change: publish at once (the responder wakes, no Service event needed)
//! ```
//!
//! Identity = node name + gossip address + incarnation (start time in ms, +1 on every renewal):
//! a restarted or wrongly declared-down node rejoins under a fresh identity at once
//! (foca's `Identity::renew`). Seeds: `--gossip-peers` and the Nodes' InternalIPs of the bind
//! address's family at the bind port; re-announced every second while some seed is not a member.
//!
//! Timing ([`Timing::default`], for a LAN): probe every 100 ms (direct ack within 30 ms, then 2
//! indirect probes), Suspect → Down after 300 ms, heartbeats every 30 ms, a peer unheard for
//! 150 ms is unreachable and must be heard for 100 ms in a row to count again. A node therefore
//! fences itself (≤ 150 ms + one heartbeat + one responder tick) well before the others can
//! declare it Down (≥ one probe period + the suspicion timeout = 400 ms) — [`Timing::check`]
//! refuses settings without that margin. Cost per node, 3 nodes: ~10 probes/s + acks and
//! 33 heartbeats/s to each peer, ~60-byte datagrams: ≈ 10 kB/s out; heartbeats grow with the
//! cluster (N−1 per period), probes do not.
//!
//! Not authenticated or encrypted (like memberlist without a keyring): bind it to the node
//! network only.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use foca::{
    AccumulatingRuntime, Foca, OwnedNotification, PeriodicParams, PostcardCodec, State, Timer,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::decide::{Member, MemberState, Membership};

/// First byte of a foca datagram.
pub const KIND_FOCA: u8 = 0x01;
/// First byte of a heartbeat datagram (followed by the sender's node name, UTF-8).
pub const KIND_HEARTBEAT: u8 = 0x02;

/// A gossip member's identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeId {
    /// Node name (`--node-name`; what lb-controller's candidate lists name).
    pub name: String,
    /// Gossip address (`--gossip-bind`); foca's identity key.
    pub addr: SocketAddr,
    /// Start time in ms since the epoch, +1 on each renewal: the newer wins an address conflict.
    pub incarnation: u64,
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(NodeId {
            incarnation: self.incarnation.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

/// Failure-detection timing (module docs for the defaults and why).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// SWIM probe period: one member probed per period.
    pub probe_period: Duration,
    /// Wait for a direct ack before asking others to probe indirectly.
    pub probe_rtt: Duration,
    /// Suspect → Down.
    pub suspect_to_down: Duration,
    /// Heartbeat interval (also how often the view is republished).
    pub heartbeat: Duration,
    /// A peer not heard for this long is unreachable (quorum), and an answer set lives this long
    /// past the view that produced it.
    pub fence_after: Duration,
    /// A peer must be heard continuously this long to count as reachable again.
    pub hold: Duration,
    /// After this long in the cluster, candidates never heard of count as down.
    pub settle: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            probe_period: Duration::from_millis(100),
            probe_rtt: Duration::from_millis(30),
            suspect_to_down: Duration::from_millis(300),
            heartbeat: Duration::from_millis(30),
            fence_after: Duration::from_millis(150),
            hold: Duration::from_millis(100),
            settle: Duration::from_secs(2),
        }
    }
}

impl Timing {
    /// Checks the fencing margin: a cut-off node must go quiet (`fence_after` + one heartbeat +
    /// the responder tick) before the others can declare it Down (`probe_period` +
    /// `suspect_to_down`), and `probe_rtt` < `probe_period` (foca's rule). Errors: which rule.
    pub fn check(&self) -> Result<(), String> {
        if self.probe_rtt.is_zero() || self.probe_rtt >= self.probe_period {
            return Err("probe_rtt must be > 0 and < probe_period".into());
        }
        if self.heartbeat.is_zero() || self.heartbeat >= self.fence_after {
            return Err("heartbeat must be > 0 and < fence_after".into());
        }
        let quiet = self.fence_after + self.heartbeat + super::TICK;
        if quiet >= self.probe_period + self.suspect_to_down {
            return Err(format!(
                "fencing takes up to {quiet:?}, but a node may be declared Down after {:?}",
                self.probe_period + self.suspect_to_down
            ));
        }
        Ok(())
    }

    /// foca's configuration for these timings.
    pub fn foca_config(&self) -> foca::Config {
        let mut config = foca::Config::simple();
        config.probe_period = self.probe_period;
        config.probe_rtt = self.probe_rtt;
        config.num_indirect_probes = NonZeroUsize::MIN.saturating_add(1);
        config.suspect_to_down_after = self.suspect_to_down;
        config.max_transmissions = NonZeroU8::new(8).unwrap_or(NonZeroU8::MIN);
        config.notify_down_members = true;
        config.periodic_announce = Some(PeriodicParams {
            frequency: Duration::from_secs(5),
            num_members: NonZeroUsize::MIN,
        });
        // Heals partitions: a node declared down hears about it and rejoins (renewed identity).
        config.periodic_announce_to_down_members = Some(PeriodicParams {
            frequency: Duration::from_secs(1),
            num_members: NonZeroUsize::MIN.saturating_add(1),
        });
        config.periodic_gossip = Some(PeriodicParams {
            frequency: self.heartbeat,
            num_members: NonZeroUsize::MIN.saturating_add(2),
        });
        config
    }
}

/// What the gossip task needs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This node's name.
    pub node: String,
    /// UDP address to bind, also the address others reach us at (must not be unspecified).
    pub bind: SocketAddr,
    /// Seed addresses (`--gossip-peers`).
    pub peers: Vec<SocketAddr>,
    /// Timing.
    pub timing: Timing,
    /// [`Membership::answer_on_tie`].
    pub answer_on_tie: bool,
}

/// Why the gossip task could not start (the caller logs it; L2 answers stay off).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--gossip-bind` could not be bound.
    #[error("binding the gossip socket {addr} failed")]
    BindFailed {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `--gossip-bind` is `0.0.0.0` / `::`: others could not reach us at it.
    #[error("--gossip-bind {0} is unspecified; give the node's own address")]
    UnspecifiedBind(SocketAddr),
    /// The timing settings break the fencing margin.
    #[error("gossip timing: {0}")]
    BadTiming(String),
}

// === heard (pure) ===

/// Heartbeat streaks per node: when the current streak started and when it was last extended.
#[derive(Clone, Debug, Default)]
pub struct Heard {
    streaks: BTreeMap<String, (Instant, Instant)>,
}

impl Heard {
    /// Records a heartbeat from `node` at `now`; a gap longer than `fence_after` starts a new
    /// streak.
    pub fn heard(&mut self, node: &str, now: Instant, fence_after: Duration) {
        let entry = self.streaks.entry(node.to_string()).or_insert((now, now));
        if now.saturating_duration_since(entry.1) > fence_after {
            entry.0 = now;
        }
        entry.1 = now;
    }

    /// Heard within `fence_after` of `now`, in a streak at least `hold` long.
    pub fn reachable(&self, node: &str, now: Instant, timing: &Timing) -> bool {
        self.streaks.get(node).is_some_and(|(first, last)| {
            now.saturating_duration_since(*last) <= timing.fence_after
                && last.saturating_duration_since(*first) >= timing.hold
        })
    }
}

/// The membership view from foca's member list (`(identity, state)`, Down included) and the
/// heartbeat streaks. Several identities of one name (a rejoin under a renewed identity): the
/// highest incarnation speaks. This node's own name is left out.
pub fn membership(
    node: &str,
    members: impl IntoIterator<Item = (NodeId, MemberState)>,
    heard: &Heard,
    now: Instant,
    settled: bool,
    timing: &Timing,
    answer_on_tie: bool,
) -> Membership {
    let mut newest: BTreeMap<String, (u64, MemberState)> = BTreeMap::new();
    for (id, state) in members {
        if id.name == node {
            continue;
        }
        let entry = newest.entry(id.name).or_insert((id.incarnation, state));
        if id.incarnation > entry.0 {
            *entry = (id.incarnation, state);
        }
    }
    Membership {
        node: node.to_string(),
        members: newest
            .into_iter()
            .map(|(name, (_, state))| {
                let reachable = heard.reachable(&name, now, timing);
                (name, Member { state, reachable })
            })
            .collect(),
        settled,
        answer_on_tie,
        as_of: now,
    }
}

fn member_state(state: State) -> MemberState {
    match state {
        State::Alive => MemberState::Alive,
        State::Suspect => MemberState::Suspect,
        State::Down => MemberState::Down,
    }
}

// === metrics ===

/// Gossip metrics (registered by [`GossipMetrics::register`]).
#[derive(Clone, Default)]
pub struct GossipMetrics {
    /// `drawbridge_l2_gossip_members{state}`: other members by SWIM state in this node's view.
    pub members: Family<[(&'static str, &'static str); 1], Gauge>,
    /// `drawbridge_l2_gossip_unreachable_members`: members not heard within `fence_after`.
    pub unreachable: Gauge,
    /// `drawbridge_l2_gossip_membership_changes_total`: foca MemberUp/MemberDown notifications.
    pub changes: Counter,
}

impl GossipMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = GossipMetrics::default();
        registry.register(
            "drawbridge_l2_gossip_members",
            "Other gossip members by SWIM state (alive, suspect, down) in this node's view",
            m.members.clone(),
        );
        registry.register(
            "drawbridge_l2_gossip_unreachable_members",
            "Gossip members not heard from within the fencing interval",
            m.unreachable.clone(),
        );
        registry.register(
            "drawbridge_l2_gossip_membership_changes",
            "Gossip members that came up or went down",
            m.changes.clone(),
        );
        m
    }

    fn observe(&self, view: &Membership) {
        for (label, state) in [
            ("alive", MemberState::Alive),
            ("suspect", MemberState::Suspect),
            ("down", MemberState::Down),
        ] {
            let n = view.members.values().filter(|m| m.state == state).count();
            self.members
                .get_or_create(&[("state", label)])
                .set(n as i64);
        }
        let unreachable = view
            .members
            .values()
            .filter(|m| m.state != MemberState::Down && !m.reachable)
            .count();
        self.unreachable.set(unreachable as i64);
    }
}

// === the task ===

type Swim = Foca<NodeId, PostcardCodec, rand::rngs::StdRng, foca::NoCustomBroadcast>;

struct Node {
    socket: UdpSocket,
    settings: Settings,
    foca: Swim,
    runtime: AccumulatingRuntime<NodeId>,
    timers: BTreeMap<(Instant, u64), Timer<NodeId>>,
    next_timer_id: u64,
    heard: Heard,
    started: Instant,
    metrics: GossipMetrics,
}

impl Node {
    /// Sends what foca queued, schedules its timers; `true` when the membership changed.
    async fn drain(&mut self) -> bool {
        let mut changed = false;
        while let Some((to, data)) = self.runtime.to_send() {
            let mut datagram = Vec::with_capacity(data.len() + 1);
            datagram.push(KIND_FOCA);
            datagram.extend_from_slice(&data);
            if let Err(error) = self.socket.send_to(&datagram, to.addr).await {
                tracing::debug!(%error, to = %to.addr, "gossip send failed");
            }
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.next_timer_id += 1;
            self.timers
                .insert((Instant::now() + after, self.next_timer_id), timer);
        }
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(id) => {
                    tracing::info!(member = %id.name, addr = %id.addr, "gossip member up");
                    self.metrics.changes.inc();
                    changed = true;
                }
                OwnedNotification::MemberDown(id) => {
                    tracing::warn!(member = %id.name, addr = %id.addr, "gossip member down");
                    self.metrics.changes.inc();
                    changed = true;
                }
                OwnedNotification::Rejoin(id) => {
                    tracing::warn!(
                        incarnation = id.incarnation,
                        "declared down by the cluster; rejoined under a renewed identity"
                    );
                    changed = true;
                }
                OwnedNotification::Idle => {
                    tracing::warn!("gossip: no active member (alone or cut off)");
                    changed = true;
                }
                OwnedNotification::Active => changed = true,
                other => tracing::debug!(?other, "gossip notification"),
            }
        }
        changed
    }

    fn announce(&mut self, seeds: &BTreeSet<SocketAddr>) {
        let known: BTreeSet<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
        for seed in seeds {
            if *seed == self.settings.bind || known.contains(seed) {
                continue;
            }
            // foca only uses the destination's address; the real identity comes back in the
            // reply's header.
            let dst = NodeId {
                name: String::new(),
                addr: *seed,
                incarnation: 0,
            };
            if let Err(error) = self.foca.announce(dst, &mut self.runtime) {
                tracing::debug!(%error, %seed, "gossip announce failed");
            }
        }
    }

    async fn heartbeat(&mut self) {
        let mut datagram = vec![KIND_HEARTBEAT];
        datagram.extend_from_slice(self.settings.node.as_bytes());
        let targets: Vec<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
        for to in targets {
            if let Err(error) = self.socket.send_to(&datagram, to).await {
                tracing::debug!(%error, %to, "heartbeat send failed");
            }
        }
    }

    fn receive(&mut self, datagram: &[u8], now: Instant) {
        match datagram.split_first() {
            Some((&KIND_FOCA, data)) => {
                if let Err(error) = self.foca.handle_data(data, &mut self.runtime) {
                    tracing::debug!(%error, "gossip message ignored");
                }
            }
            Some((&KIND_HEARTBEAT, name)) => match std::str::from_utf8(name) {
                Ok(name) if name != self.settings.node => {
                    self.heard
                        .heard(name, now, self.settings.timing.fence_after)
                }
                _ => tracing::debug!("heartbeat with a bad or own name ignored"),
            },
            _ => tracing::debug!("unknown gossip datagram ignored"),
        }
    }

    fn view(&self, now: Instant) -> Membership {
        let members = self
            .foca
            .iter_membership_state()
            .map(|m| (m.id().clone(), member_state(m.state())));
        membership(
            &self.settings.node,
            members,
            &self.heard,
            now,
            now.saturating_duration_since(self.started) >= self.settings.timing.settle,
            &self.settings.timing,
            self.settings.answer_on_tie,
        )
    }
}

/// Runs the gossip member until `out` has no receiver: publishes the view every heartbeat and
/// on every membership change. `seeds` adds seed addresses (the Nodes' InternalIPs) to
/// `settings.peers`. Errors: [`Error::BindFailed`], [`Error::UnspecifiedBind`],
/// [`Error::BadTiming`] (at start only; later failures are logged and retried).
pub async fn run(
    settings: Settings,
    mut seeds: watch::Receiver<Vec<SocketAddr>>,
    out: watch::Sender<Option<Membership>>,
    metrics: GossipMetrics,
) -> Result<(), Error> {
    settings.timing.check().map_err(Error::BadTiming)?;
    if settings.bind.ip().is_unspecified() {
        return Err(Error::UnspecifiedBind(settings.bind));
    }
    let socket = UdpSocket::bind(settings.bind)
        .await
        .map_err(|source| Error::BindFailed {
            addr: settings.bind,
            source,
        })?;
    let incarnation = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let identity = NodeId {
        name: settings.node.clone(),
        addr: settings.bind,
        incarnation,
    };
    tracing::info!(bind = %settings.bind, peers = ?settings.peers, timing = ?settings.timing, "gossip started");
    let foca = Foca::new(
        identity,
        settings.timing.foca_config(),
        rand::make_rng(),
        PostcardCodec,
    );
    let heartbeat_every = settings.timing.heartbeat;
    let mut node = Node {
        socket,
        settings,
        foca,
        runtime: AccumulatingRuntime::new(),
        timers: BTreeMap::new(),
        next_timer_id: 0,
        heard: Heard::default(),
        started: Instant::now(),
        metrics,
    };
    let all_seeds = |node: &Node, extra: &[SocketAddr]| -> BTreeSet<SocketAddr> {
        node.settings.peers.iter().chain(extra).copied().collect()
    };
    let mut extra = seeds.borrow_and_update().clone();
    node.announce(&all_seeds(&node, &extra));
    node.drain().await;
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reannounce = tokio::time::interval(Duration::from_secs(1));
    let mut buf = vec![0u8; 65_536];
    loop {
        let next_timer = node
            .timers
            .first_key_value()
            .map(|((at, _), _)| *at)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let mut publish = false;
        tokio::select! {
            received = node.socket.recv_from(&mut buf) => match received {
                Ok((n, _from)) => {
                    let now = Instant::now();
                    // Read everything queued now: one view for a burst.
                    node.receive(&buf[..n], now);
                    while let Ok((n, _)) = node.socket.try_recv_from(&mut buf) {
                        node.receive(&buf[..n], now);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "gossip receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = tokio::time::sleep_until(next_timer.into()) => {
                let now = Instant::now();
                while let Some(entry) = node.timers.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    let timer = entry.remove();
                    if let Err(error) = node.foca.handle_timer(timer, &mut node.runtime) {
                        tracing::debug!(%error, "gossip timer");
                    }
                }
            },
            _ = heartbeat.tick() => {
                node.heartbeat().await;
                publish = true;
            },
            _ = reannounce.tick() => {
                let seeds = all_seeds(&node, &extra);
                node.announce(&seeds);
            },
            changed = seeds.changed() => {
                if changed.is_ok() {
                    extra = seeds.borrow_and_update().clone();
                    let seeds = all_seeds(&node, &extra);
                    node.announce(&seeds);
                }
            },
            _ = out.closed() => return Ok(()),
        }
        publish |= node.drain().await;
        if publish {
            let view = node.view(Instant::now());
            node.metrics.observe(&view);
            out.send_replace(Some(view));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str, port: u16, incarnation: u64) -> NodeId {
        NodeId {
            name: name.into(),
            addr: SocketAddr::from(([192, 0, 2, 1], port)),
            incarnation,
        }
    }

    #[test]
    fn default_timing_keeps_the_fencing_margin() {
        let t = Timing::default();
        assert_eq!(t.check(), Ok(()));
        let slow_fence = Timing {
            fence_after: Duration::from_millis(400),
            ..t.clone()
        };
        assert!(slow_fence.check().is_err());
        let fast_down = Timing {
            suspect_to_down: Duration::from_millis(50),
            ..t.clone()
        };
        assert!(fast_down.check().is_err());
        let config = t.foca_config();
        assert_eq!(config.probe_period, t.probe_period);
        assert_eq!(config.suspect_to_down_after, t.suspect_to_down);
    }

    #[test]
    fn heard_streaks_need_hold_and_expire_after_fence() {
        let t = Timing::default();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut heard = Heard::default();
        heard.heard("b", t0, t.fence_after);
        assert!(!heard.reachable("b", t0, &t), "one heartbeat is no streak");
        for n in (30..=120).step_by(30) {
            heard.heard("b", ms(n), t.fence_after);
        }
        assert!(heard.reachable("b", ms(120), &t), "streak of 120 ms ≥ hold");
        assert!(heard.reachable("b", ms(270), &t), "last heard 150 ms ago");
        assert!(!heard.reachable("b", ms(271), &t), "fenced after 150 ms");
        // Old heartbeats delivered in a burst (a thawed process) start a new streak: not enough.
        heard.heard("b", ms(1_000), t.fence_after);
        heard.heard("b", ms(1_000), t.fence_after);
        assert!(!heard.reachable("b", ms(1_000), &t));
        assert!(!heard.reachable("c", ms(1_000), &t), "never heard");
    }

    #[test]
    fn membership_keeps_the_newest_identity_and_drops_self() {
        let t = Timing::default();
        let now = Instant::now();
        let mut heard = Heard::default();
        heard.heard("b", now - Duration::from_millis(120), t.fence_after);
        heard.heard("b", now, t.fence_after);
        let view = membership(
            "a",
            [
                (id("a", 1, 5), MemberState::Alive),
                (id("b", 2, 1), MemberState::Down),
                (id("b", 2, 2), MemberState::Alive),
                (id("c", 3, 9), MemberState::Suspect),
            ],
            &heard,
            now,
            true,
            &t,
            false,
        );
        assert_eq!(
            view.members,
            [
                (
                    "b".to_string(),
                    Member {
                        state: MemberState::Alive,
                        reachable: true
                    }
                ),
                (
                    "c".to_string(),
                    Member {
                        state: MemberState::Suspect,
                        reachable: false
                    }
                ),
            ]
            .into()
        );
        assert!(view.settled && !view.answer_on_tie);
    }

    #[test]
    fn identity_renews_and_newer_wins() {
        use foca::Identity as _;
        let old = id("a", 1, 7);
        let new = old.renew().expect("renewable");
        assert_eq!(
            (new.name.as_str(), new.addr, new.incarnation),
            ("a", old.addr, 8)
        );
        assert!(new.win_addr_conflict(&old) && !old.win_addr_conflict(&new));
    }

    /// Three foca members over real UDP on loopback: they find each other from one seed, and
    /// a member that stops (its task ends) is declared Down by the others within a second.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_members_converge_and_detect_a_loss() {
        let ports: Vec<SocketAddr> = (0..3)
            .map(|_| {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("probe port");
                s.local_addr().expect("addr")
            })
            .collect();
        let mut views = vec![];
        let mut tasks = vec![];
        for (i, addr) in ports.iter().enumerate() {
            let settings = Settings {
                node: format!("n{i}"),
                bind: *addr,
                peers: vec![ports[0]],
                timing: Timing::default(),
                answer_on_tie: true,
            };
            let (_seed_tx, seed_rx) = watch::channel(vec![]);
            let (tx, rx) = watch::channel(None);
            tasks.push(tokio::spawn(async move {
                let _keep = _seed_tx;
                run(settings, seed_rx, tx, GossipMetrics::default()).await
            }));
            views.push(rx);
        }
        let all_alive = |v: &Option<Membership>| {
            v.as_ref().is_some_and(|v| {
                v.members.len() == 2
                    && v.members
                        .values()
                        .all(|m| m.state == MemberState::Alive && m.reachable)
            })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !views.iter().all(|v| all_alive(&v.borrow())) {
            assert!(Instant::now() < deadline, "members did not converge");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tasks[2].abort();
        let lost = Instant::now();
        let down = |v: &Option<Membership>| {
            v.as_ref()
                .and_then(|v| v.members.get("n2"))
                .is_some_and(|m| m.state == MemberState::Down && !m.reachable)
        };
        while !(down(&views[0].borrow()) && down(&views[1].borrow())) {
            assert!(lost.elapsed() < Duration::from_secs(2), "loss not detected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = lost.elapsed();
        assert!(took < Duration::from_secs(1), "detected after {took:?}");
        for task in tasks {
            task.abort();
        }
    }
}

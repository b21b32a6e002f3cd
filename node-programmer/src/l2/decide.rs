//! Which LoadBalancer IPs this node answers for, given the gossip membership view. Pure.
//!
//! ```text
//!  Service annotations                       gossip::Membership (this node's view)
//!   announcing-candidates: a,b,c  ─┐          members: name -> {Alive|Suspect|Down, reachable}
//!   (or announcing-node: a)        ├─> verdict(candidates, membership)
//!  status.loadBalancer.ingress[] ──┘     Answer | NotCandidate | NotFirst(x) | NoQuorum{r, n}
//! ```
//!
//! Two rules, both from lb-controller's ranked candidate list (rendezvous order, the API server's
//! view of eligible nodes):
//!
//! 1. **Takeover** — this node answers only if it is the first candidate that its SWIM view
//!    (`foca`) does not hold `Down`. `Suspect` still counts as up: a node moves an IP only once
//!    SWIM has confirmed the failure (probe period + suspicion timeout), which is what gives the
//!    fencing rule below its head start.
//! 2. **Quorum (fencing)** — this node answers only while it *hears* (direct heartbeats, fresh
//!    within `fence_after` and continuous for `hold`) a strict majority of the IP's candidates,
//!    itself included. A node cut off from the others loses its majority after `fence_after` —
//!    well before the majority side's SWIM declares it `Down` (≥ probe period + suspicion) — so
//!    the minority side has gone quiet before the majority side takes over: never two answering.
//!    Exactly half (2 candidates, one unheard; 4 with 2 unheard) is a tie, settled by
//!    [`Membership::answer_on_tie`] (`--gossip-tie-break`): `answer` keeps failover working for
//!    two-node clusters at the price of both answering during a gossip-only partition of two;
//!    `stop` never lets two answer but gives up two-node failover.
//!
//! Candidates the view has never seen count as up until the view is `settled` (just started:
//! do not grab an IP from a node we have not heard of yet) and as down after; the quorum never
//! counts them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Service;

use super::responder::{ANNOTATION_ANNOUNCING_NODE, announcers};

/// Service annotation written by lb-controller: per LoadBalancer IP, every eligible node in
/// rendezvous order (`a,b,c` for all IPs, or `IP=a,b;IP=c,a`; lb-controller's
/// `announce::parse_candidates` is the reference, [`parse_candidates`] follows it).
pub const ANNOTATION_ANNOUNCING_CANDIDATES: &str = "drawbridge.dev/announcing-candidates";

/// A member's SWIM state in this node's view (foca's `State`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MemberState {
    /// Answers probes.
    Alive,
    /// Missed a probe (direct and indirect); declared `Down` after the suspicion timeout unless it
    /// refutes.
    Suspect,
    /// Confirmed failed (or left).
    Down,
}

/// One other node as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// SWIM state (drives takeover).
    pub state: MemberState,
    /// Heard directly within `fence_after`, continuously for at least `hold` (drives quorum).
    pub reachable: bool,
}

/// This node's membership view, produced by the gossip task ([`super::gossip`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// This node's name (`--node-name`).
    pub node: String,
    /// Every other node known to gossip, by node name.
    pub members: BTreeMap<String, Member>,
    /// Joined long enough that a candidate never heard of is taken for down.
    pub settled: bool,
    /// What exactly half of the candidates reachable means (module docs).
    pub answer_on_tie: bool,
    /// When this view was computed: answers based on it stop at `as_of + fence_after` unless a
    /// newer view renews them (a frozen or stalled process goes quiet by itself).
    pub as_of: Instant,
}

/// Why this node does or does not answer for one IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// First live candidate and holding a quorum.
    Answer,
    /// Not in the candidate list.
    NotCandidate,
    /// Another candidate ranks first among the live ones.
    NotFirst(String),
    /// First, but `reachable` of `of` candidates (self included) is no strict majority (nor a
    /// tie with `answer_on_tie`).
    NoQuorum {
        /// Candidates heard (self included).
        reachable: usize,
        /// Candidates.
        of: usize,
    },
}

/// The verdict for one IP with ranked `candidates` (best first) under `view` (module docs).
pub fn verdict(candidates: &[String], view: &Membership) -> Verdict {
    if !candidates.contains(&view.node) {
        return Verdict::NotCandidate;
    }
    let up = |c: &String| {
        *c == view.node
            || match view.members.get(c) {
                Some(m) => m.state != MemberState::Down,
                None => !view.settled,
            }
    };
    if let Some(first) = candidates.iter().find(|c| up(c))
        && *first != view.node
    {
        return Verdict::NotFirst(first.clone());
    }
    let reachable = candidates
        .iter()
        .filter(|c| **c == view.node || view.members.get(*c).is_some_and(|m| m.reachable))
        .count();
    let of = candidates.len();
    if 2 * reachable > of || (2 * reachable == of && view.answer_on_tie) {
        Verdict::Answer
    } else {
        Verdict::NoQuorum { reachable, of }
    }
}

/// Reads an [`ANNOTATION_ANNOUNCING_CANDIDATES`] value against the Service's IPs: the ranked
/// candidates of each. A plain comma list covers every IP; `IP=a,b;IP=c` the listed ones. Empty
/// names, unparseable entries and IPs the Service does not hold are skipped; a repeated node keeps
/// its first place.
pub fn parse_candidates(value: &str, ips: &[IpAddr]) -> BTreeMap<IpAddr, Vec<String>> {
    let list = |s: &str| {
        let mut out: Vec<String> = vec![];
        for n in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !out.iter().any(|o| o == n) {
                out.push(n.to_string());
            }
        }
        out
    };
    let value = value.trim();
    if !value.contains('=') {
        let nodes = list(value);
        if nodes.is_empty() {
            return BTreeMap::new();
        }
        return ips.iter().map(|ip| (*ip, nodes.clone())).collect();
    }
    value
        .split(';')
        .filter_map(|entry| {
            let (ip, nodes) = entry.split_once('=')?;
            let ip: IpAddr = ip.trim().parse().ok()?;
            let nodes = list(nodes);
            (!nodes.is_empty() && ips.contains(&ip)).then_some((ip, nodes))
        })
        .collect()
}

/// The ranked candidates of every announced IP of every `type: LoadBalancer` Service
/// (`ipMode: Proxy` skipped): from [`ANNOTATION_ANNOUNCING_CANDIDATES`] when present, else the
/// single `drawbridge.dev/announcing-node` (a controller that does not publish the ranking).
pub fn ranked_ips(services: &[Arc<Service>]) -> BTreeMap<IpAddr, Vec<String>> {
    let mut out = BTreeMap::new();
    for svc in services {
        if svc.spec.as_ref().and_then(|s| s.type_.as_deref()) != Some("LoadBalancer") {
            continue;
        }
        let annotations = svc.metadata.annotations.as_ref();
        let candidates = annotations.and_then(|a| a.get(ANNOTATION_ANNOUNCING_CANDIDATES));
        let node = annotations.and_then(|a| a.get(ANNOTATION_ANNOUNCING_NODE));
        if candidates.is_none() && node.is_none() {
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
        let ranked = match (candidates, node) {
            (Some(c), _) => parse_candidates(c, &ips),
            (None, Some(n)) => announcers(n, &ips)
                .into_iter()
                .map(|(ip, n)| (ip, vec![n]))
                .collect(),
            (None, None) => BTreeMap::new(),
        };
        // Services sharing an IP carry the same ranking (the key is the IP); the first wins.
        for (ip, list) in ranked {
            out.entry(ip).or_insert(list);
        }
    }
    out
}

/// The IPs this node answers for under `view` (every IP whose [`verdict`] is `Answer`).
pub fn answered_ips(ranked: &BTreeMap<IpAddr, Vec<String>>, view: &Membership) -> BTreeSet<IpAddr> {
    ranked
        .iter()
        .filter(|(_, candidates)| verdict(candidates, view) == Verdict::Answer)
        .map(|(ip, _)| *ip)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// A view of `node` with `others` as (name, state, reachable).
    fn view(node: &str, others: &[(&str, MemberState, bool)]) -> Membership {
        Membership {
            node: node.into(),
            members: others
                .iter()
                .map(|(n, state, reachable)| {
                    (
                        n.to_string(),
                        Member {
                            state: *state,
                            reachable: *reachable,
                        },
                    )
                })
                .collect(),
            settled: true,
            answer_on_tie: true,
            as_of: Instant::now(),
        }
    }

    use MemberState::{Alive, Down, Suspect};

    #[test]
    fn verdict_table() {
        let abc = names(&["a", "b", "c"]);
        let ab = names(&["a", "b"]);
        let nq = |reachable, of| Verdict::NoQuorum { reachable, of };
        let nf = |n: &str| Verdict::NotFirst(n.into());
        // (case, candidates, this node, others, expected)
        type Row<'a> = (
            &'a str,
            &'a [String],
            &'a str,
            &'a [(&'a str, MemberState, bool)],
            Verdict,
        );
        let rows: &[Row<'_>] = &[
            (
                "healthy, first answers",
                &abc,
                "a",
                &[("b", Alive, true), ("c", Alive, true)],
                Verdict::Answer,
            ),
            (
                "healthy, second waits",
                &abc,
                "b",
                &[("a", Alive, true), ("c", Alive, true)],
                nf("a"),
            ),
            (
                "healthy, third waits",
                &abc,
                "c",
                &[("a", Alive, true), ("b", Alive, true)],
                nf("a"),
            ),
            (
                "not a candidate",
                &ab,
                "c",
                &[("a", Alive, true), ("b", Alive, true)],
                Verdict::NotCandidate,
            ),
            (
                "first suspect: not yet moved",
                &abc,
                "b",
                &[("a", Suspect, false), ("c", Alive, true)],
                nf("a"),
            ),
            (
                "first down: second takes over",
                &abc,
                "b",
                &[("a", Down, false), ("c", Alive, true)],
                Verdict::Answer,
            ),
            (
                "first down: third still waits",
                &abc,
                "c",
                &[("a", Down, false), ("b", Alive, true)],
                nf("b"),
            ),
            (
                "first and second down: third alone, no majority",
                &abc,
                "c",
                &[("a", Down, false), ("b", Down, false)],
                nq(1, 3),
            ),
            (
                "isolated first: no majority, silent",
                &abc,
                "a",
                &[("b", Alive, false), ("c", Alive, false)],
                nq(1, 3),
            ),
            (
                "first hears one of two: majority",
                &abc,
                "a",
                &[("b", Alive, true), ("c", Suspect, false)],
                Verdict::Answer,
            ),
            (
                "majority side after the first is down",
                &abc,
                "b",
                &[("a", Down, false), ("c", Alive, true)],
                Verdict::Answer,
            ),
            (
                "two nodes, peer down, tie answers",
                &ab,
                "b",
                &[("a", Down, false)],
                Verdict::Answer,
            ),
            (
                "two nodes, first cut off, tie answers",
                &ab,
                "a",
                &[("b", Alive, false)],
                Verdict::Answer,
            ),
            (
                "one candidate answers alone",
                &names(&["a"]),
                "a",
                &[],
                Verdict::Answer,
            ),
            (
                "down but heard (stale SWIM): still down for takeover",
                &abc,
                "b",
                &[("a", Down, true), ("c", Alive, true)],
                Verdict::Answer,
            ),
        ];
        for (case, candidates, node, others, want) in rows {
            assert_eq!(verdict(candidates, &view(node, others)), *want, "{case}");
        }
    }

    #[test]
    fn tie_break_stop_never_lets_two_answer() {
        let ab = names(&["a", "b"]);
        let mut a = view("a", &[("b", Alive, false)]);
        let mut b = view("b", &[("a", Down, false)]);
        a.answer_on_tie = false;
        b.answer_on_tie = false;
        assert_eq!(
            verdict(&ab, &a),
            Verdict::NoQuorum {
                reachable: 1,
                of: 2
            }
        );
        assert_eq!(
            verdict(&ab, &b),
            Verdict::NoQuorum {
                reachable: 1,
                of: 2
            }
        );
        let healthy = view("a", &[("b", Alive, true)]);
        assert_eq!(
            verdict(
                &ab,
                &Membership {
                    answer_on_tie: false,
                    ..healthy
                }
            ),
            Verdict::Answer
        );
    }

    #[test]
    fn unknown_candidates_are_up_until_settled() {
        let abc = names(&["a", "b", "c"]);
        let mut b = view("b", &[("c", Alive, true)]);
        b.settled = false;
        assert_eq!(
            verdict(&abc, &b),
            Verdict::NotFirst("a".into()),
            "just started"
        );
        b.settled = true;
        assert_eq!(verdict(&abc, &b), Verdict::Answer, "never heard of a: down");
    }

    /// Every combination of 3 nodes' views after a one-node split: whatever side each node is on,
    /// at most one node answers, and the majority side answers once SWIM has confirmed.
    #[test]
    fn a_split_never_leaves_two_answering() {
        let abc = names(&["a", "b", "c"]);
        for isolated in ["a", "b", "c"] {
            // Phase 1: everyone stopped hearing the isolated node; SWIM not yet confirmed.
            // Phase 2: the majority side has it Down.
            for confirmed in [false, true] {
                let answering: Vec<&str> = ["a", "b", "c"]
                    .into_iter()
                    .filter(|me| {
                        let others: Vec<(&str, MemberState, bool)> = ["a", "b", "c"]
                            .into_iter()
                            .filter(|o| o != me)
                            .map(|o| {
                                if *me == isolated {
                                    // The isolated node hears nobody; its SWIM view lags.
                                    (o, if confirmed { Down } else { Alive }, false)
                                } else if o == isolated {
                                    (o, if confirmed { Down } else { Suspect }, false)
                                } else {
                                    (o, Alive, true)
                                }
                            })
                            .collect();
                        verdict(&abc, &view(me, &others)) == Verdict::Answer
                    })
                    .collect();
                assert!(
                    answering.len() <= 1,
                    "{isolated} {confirmed}: {answering:?}"
                );
                if isolated != "a" || confirmed {
                    assert_eq!(
                        answering.len(),
                        1,
                        "{isolated} {confirmed}: someone answers"
                    );
                    assert_ne!(answering[0], isolated);
                }
            }
        }
    }

    fn svc(annotations: serde_json::Value, ips: &[&str]) -> Arc<Service> {
        let ingress: Vec<_> = ips
            .iter()
            .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
            .collect();
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"namespace": "demo", "name": "web", "annotations": annotations},
                "spec": {"type": "LoadBalancer"},
                "status": {"loadBalancer": {"ingress": ingress}},
            }))
            .expect("Service"),
        )
    }

    #[test]
    fn ranked_ips_prefer_candidates_and_fall_back_to_the_announcer() {
        let v4: IpAddr = "203.0.113.10".parse().expect("ip");
        let v6: IpAddr = "2001:db8::10".parse().expect("ip");
        let other: IpAddr = "203.0.113.11".parse().expect("ip");
        let services = vec![
            svc(
                json!({ANNOTATION_ANNOUNCING_NODE: "a",
                       ANNOTATION_ANNOUNCING_CANDIDATES: "203.0.113.10=a,b,c;2001:db8::10=c,a"}),
                &["203.0.113.10", "2001:db8::10"],
            ),
            svc(json!({ANNOTATION_ANNOUNCING_NODE: "b"}), &["203.0.113.11"]),
            svc(json!({}), &["203.0.113.12"]),
        ];
        let ranked = ranked_ips(&services);
        assert_eq!(
            ranked,
            [
                (v4, names(&["a", "b", "c"])),
                (v6, names(&["c", "a"])),
                (other, names(&["b"]))
            ]
            .into()
        );
        let b_view = view("b", &[("a", Down, false), ("c", Alive, true)]);
        assert_eq!(answered_ips(&ranked, &b_view), [v4, other].into());
    }

    #[test]
    fn parse_candidates_table() {
        let v4: IpAddr = "203.0.113.10".parse().expect("ip");
        let v6: IpAddr = "2001:db8::1".parse().expect("ip");
        type Row<'a> = (&'a str, &'a [IpAddr], &'a [(IpAddr, &'a [&'a str])]);
        let rows: &[Row<'_>] = &[
            ("", &[v4], &[]),
            (" , ", &[v4], &[]),
            ("a, b ,a", &[v4], &[(v4, &["a", "b"])]),
            ("a", &[v4, v6], &[(v4, &["a"]), (v6, &["a"])]),
            (
                "203.0.113.10=a,b;2001:db8::1=b",
                &[v4, v6],
                &[(v4, &["a", "b"]), (v6, &["b"])],
            ),
            ("203.0.113.10=a;203.0.113.99=b", &[v4], &[(v4, &["a"])]),
            (
                "junk=a;203.0.113.10=;203.0.113.10=c",
                &[v4],
                &[(v4, &["c"])],
            ),
        ];
        for (value, held, want) in rows {
            let want: BTreeMap<IpAddr, Vec<String>> =
                want.iter().map(|(ip, ns)| (*ip, names(ns))).collect();
            assert_eq!(parse_candidates(value, held), want, "{value:?}");
        }
    }
}

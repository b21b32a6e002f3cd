//! On which of its `--l2-interfaces` this node answers each LoadBalancer IP: the Service
//! annotation `drawbridge.dev/announcing-interfaces` (lb-controller's resolution of
//! `L2Announcement.spec.interfaces`; grammar in `drawbridge_resources::l2_interfaces`) for this
//! node's name, intersected with `--l2-interfaces`. Pure.
//!
//! ```text
//!  Services ──(on every Service change)──> scopes(services, node, --l2-interfaces)
//!                                             IP -> All | Only(allowed ∩ --l2-interfaces) | Malformed
//!  IPs this node answers (annotation or gossip verdict, every view) ─┐
//!                                                                   ├─> answers(): IP -> interfaces
//!                                                                   └─> problems: empty ∩, malformed
//! ```
//!
//! The restriction is looked up under this node's own name also when gossip made it the
//! announcer (a takeover): each candidate's own set applies.
//!
//! **A value that does not parse** makes this node answer that Service's IPs on **no** interface
//! (fail closed) and is reported (a warning naming the Service, once per change, and
//! `drawbridge_l2_unanswered_ips{reason="invalid_interfaces_annotation"}`). Why not "no
//! restriction": the restriction exists to keep answers off some networks (MetalLB's motivation:
//! bridges and bonds answering with the wrong MAC, management networks); answering there by
//! mistake is the failure the operator configured against, silence is visible and attributable.
//! Why not "keep the last good value": it does not survive a restart (every node would then differ
//! by its history) and hides the fault. lb-controller owns the value and rewrites any value that
//! differs from its election on its next pass, so a hand edit is undone within a pass.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use drawbridge_resources::l2_interfaces::{ANNOTATION_ANNOUNCING_INTERFACES, parse};
use k8s_openapi::api::core::v1::Service;

/// Per IP this node answers: the interfaces to answer on, `None` = every `--l2-interfaces`
/// interface. What the interface threads read ([`super::Announced`]).
pub type Answers = BTreeMap<IpAddr, Option<Arc<BTreeSet<String>>>>;

/// Where this node may answer one IP, per the annotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// No restriction for this node: every `--l2-interfaces` interface.
    All,
    /// These interfaces: the restriction ∩ `--l2-interfaces` (may be empty).
    Only(Arc<BTreeSet<String>>),
    /// The annotation did not parse (the error, for the log): nowhere.
    Malformed(Arc<str>),
}

/// [`Scope`] of one IP and the Service (`namespace/name`) it was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scoped {
    /// `namespace/name` of the Service holding the IP.
    pub service: Arc<str>,
    /// Where to answer.
    pub scope: Scope,
    /// The restriction as written (for the log when the intersection is empty).
    pub wanted: Option<Arc<str>>,
}

/// Why an IP this node should answer is answered nowhere.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Problem {
    /// `--l2-interfaces` and the restriction share no interface.
    NoInterface {
        /// The IP.
        ip: IpAddr,
        /// `namespace/name`.
        service: Arc<str>,
        /// The restriction for this node, `a,b`.
        wanted: Arc<str>,
    },
    /// The annotation does not parse.
    Malformed {
        /// The IP.
        ip: IpAddr,
        /// `namespace/name`.
        service: Arc<str>,
        /// The parse error.
        error: Arc<str>,
    },
}

impl Problem {
    /// Metric label value.
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::NoInterface { .. } => "no_interface",
            Problem::Malformed { .. } => "invalid_interfaces_annotation",
        }
    }
}

/// The [`Scoped`] of every LoadBalancer IP (`ipMode: Proxy` skipped) of every `type:
/// LoadBalancer` Service carrying the annotation, for `node`, with `interfaces` being
/// `--l2-interfaces`. IPs of Services without the annotation are absent (= [`Scope::All`]).
/// Services sharing an IP carry the same value (lb-controller keys by IP); the first wins.
pub fn scopes(
    services: &[Arc<Service>],
    node: &str,
    interfaces: &[String],
) -> BTreeMap<IpAddr, Scoped> {
    let mut out = BTreeMap::new();
    for svc in services {
        if svc.spec.as_ref().and_then(|s| s.type_.as_deref()) != Some("LoadBalancer") {
            continue;
        }
        let Some(value) = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_ANNOUNCING_INTERFACES))
        else {
            continue;
        };
        let service: Arc<str> = format!(
            "{}/{}",
            svc.metadata.namespace.as_deref().unwrap_or_default(),
            svc.metadata.name.as_deref().unwrap_or_default()
        )
        .into();
        let ips = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|i| i.ip.as_deref()?.parse::<IpAddr>().ok());
        let parsed = parse(value);
        for ip in ips {
            let (scope, wanted) = match &parsed {
                Err(error) => (Scope::Malformed(error.to_string().into()), None),
                Ok(value) => match value.for_node(ip, node) {
                    None => (Scope::All, None),
                    Some(set) => {
                        let allowed: BTreeSet<String> = interfaces
                            .iter()
                            .filter(|i| set.contains(*i))
                            .cloned()
                            .collect();
                        let wanted = set.iter().cloned().collect::<Vec<_>>().join(",");
                        (Scope::Only(Arc::new(allowed)), Some(wanted.into()))
                    }
                },
            };
            out.entry(ip).or_insert_with(|| Scoped {
                service: service.clone(),
                scope,
                wanted,
            });
        }
    }
    out
}

/// What to answer for `ips` (the IPs this node is the announcer of) under `scopes`, and the IPs
/// answered nowhere with why (sorted). Cheap: `Arc` clones only.
pub fn answers(
    ips: &BTreeSet<IpAddr>,
    scopes: &BTreeMap<IpAddr, Scoped>,
) -> (Answers, Vec<Problem>) {
    let mut answers = Answers::new();
    let mut problems = vec![];
    for ip in ips {
        match scopes.get(ip) {
            None => {
                answers.insert(*ip, None);
            }
            Some(scoped) => match &scoped.scope {
                Scope::All => {
                    answers.insert(*ip, None);
                }
                Scope::Only(set) if !set.is_empty() => {
                    answers.insert(*ip, Some(set.clone()));
                }
                Scope::Only(_) => problems.push(Problem::NoInterface {
                    ip: *ip,
                    service: scoped.service.clone(),
                    wanted: scoped.wanted.clone().unwrap_or_else(|| "".into()),
                }),
                Scope::Malformed(error) => problems.push(Problem::Malformed {
                    ip: *ip,
                    service: scoped.service.clone(),
                    error: error.clone(),
                }),
            },
        }
    }
    (answers, problems)
}

/// The IPs to answer on `interface` (precomputed by each interface thread when [`Answers`]
/// change, so a frame costs one set lookup).
pub fn for_interface(answers: &Answers, interface: &str) -> BTreeSet<IpAddr> {
    answers
        .iter()
        .filter(|(_, only)| only.as_ref().is_none_or(|set| set.contains(interface)))
        .map(|(ip, _)| *ip)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const V4: &str = "203.0.113.10";
    const V6: &str = "2001:db8::10";

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn svc(name: &str, interfaces: Option<&str>, ips: &[&str]) -> Arc<Service> {
        let mut annotations = json!({"drawbridge.dev/announcing-node": "node-a"});
        if let Some(v) = interfaces {
            annotations[ANNOTATION_ANNOUNCING_INTERFACES] = json!(v);
        }
        let ingress: Vec<_> = ips.iter().map(|i| json!({"ip": i})).collect();
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"namespace": "demo", "name": name, "annotations": annotations},
                "spec": {"type": "LoadBalancer"},
                "status": {"loadBalancer": {"ingress": ingress}},
            }))
            .expect("Service"),
        )
    }

    fn set(names: &[&str]) -> Option<Arc<BTreeSet<String>>> {
        Some(Arc::new(names.iter().map(|n| n.to_string()).collect()))
    }

    /// (annotation, --l2-interfaces) → what node-a answers for V4 and V6, and the problems.
    #[test]
    fn answers_table() {
        let eth01 = ["eth0".to_string(), "eth1".to_string()];
        let both: BTreeSet<IpAddr> = [ip(V4), ip(V6)].into();
        type Row = (
            &'static str,
            Option<&'static str>,
            Vec<(&'static str, Option<Arc<BTreeSet<String>>>)>,
            Vec<&'static str>,
        );
        let rows: Vec<Row> = vec![
            (
                "no annotation: everywhere",
                None,
                vec![(V4, None), (V6, None)],
                vec![],
            ),
            (
                "compact form, one of ours",
                Some("eth1"),
                vec![(V4, set(&["eth1"])), (V6, set(&["eth1"]))],
                vec![],
            ),
            (
                "intersected with --l2-interfaces",
                Some("eth1,eth7"),
                vec![(V4, set(&["eth1"])), (V6, set(&["eth1"]))],
                vec![],
            ),
            (
                "per node: another node's entry does not apply to node-a",
                Some("node-b=eth0"),
                vec![(V4, None), (V6, None)],
                vec![],
            ),
            (
                "per node: node-a's own set (also after a gossip takeover)",
                Some("node-b=eth0;node-a=eth1"),
                vec![(V4, set(&["eth1"])), (V6, set(&["eth1"]))],
                vec![],
            ),
            (
                "per IP",
                Some("203.0.113.10/node-a=eth0;2001:db8::10/node-b=eth1"),
                vec![(V4, set(&["eth0"])), (V6, None)],
                vec![],
            ),
            (
                "empty intersection: nowhere, reported",
                Some("eth9"),
                vec![],
                vec!["no_interface", "no_interface"],
            ),
            (
                "malformed: nowhere (fail closed), reported",
                Some("node-a=eth0;"),
                vec![],
                vec![
                    "invalid_interfaces_annotation",
                    "invalid_interfaces_annotation",
                ],
            ),
        ];
        for (what, value, want, problems) in rows {
            let services = vec![svc("web", value, &[V4, V6])];
            let scopes = scopes(&services, "node-a", &eth01);
            let (got, got_problems) = answers(&both, &scopes);
            let want: Answers = want.into_iter().map(|(i, s)| (ip(i), s)).collect();
            assert_eq!(got, want, "{what}");
            let reasons: Vec<&str> = got_problems.iter().map(Problem::reason).collect();
            assert_eq!(reasons, problems, "{what}");
        }
        // The problem names the Service and what was wanted.
        let services = vec![svc("web", Some("eth9,eth8"), &[V4])];
        let (_, problems) = answers(&[ip(V4)].into(), &scopes(&services, "node-a", &eth01));
        assert_eq!(
            problems,
            vec![Problem::NoInterface {
                ip: ip(V4),
                service: "demo/web".into(),
                wanted: "eth8,eth9".into()
            }]
        );
        // IPs this node does not announce are not reported.
        let (answers, problems) = answers(&BTreeSet::new(), &scopes(&services, "node-a", &eth01));
        assert!(answers.is_empty() && problems.is_empty());
    }

    #[test]
    fn per_interface_sets() {
        let answers: Answers = [
            (ip(V4), None),
            (ip(V6), set(&["eth1"])),
            (ip("203.0.113.11"), set(&["eth0", "eth1"])),
        ]
        .into();
        assert_eq!(
            for_interface(&answers, "eth0"),
            [ip(V4), ip("203.0.113.11")].into()
        );
        assert_eq!(
            for_interface(&answers, "eth1"),
            [ip(V4), ip(V6), ip("203.0.113.11")].into()
        );
        assert_eq!(for_interface(&answers, "eth2"), [ip(V4)].into());
    }
}

//! `L2Announcement` (`drawbridge.dev/v1alpha1`, cluster-scoped): which nodes may announce which
//! pools' addresses with ARP (IPv4) / NDP (IPv6), MetalLB's `L2Advertisement`.
//!
//! ```text
//!  IPAddressPool ──(ipAddressPools)──┐
//!  Node labels ────(nodeSelectors)───┼─> lb-controller: eligible nodes per LB IP ─> one announcer
//!  --l2-interfaces ∩ (interfaces) ───┘   node-programmer on that node answers ARP/NDP there
//! ```
//!
//! Semantics follow MetalLB's `L2Advertisement`: no `L2Announcement` at all means no address is
//! announced; an address is announced when at least one `L2Announcement` covers its pool, and a
//! node is eligible for it when it matches that announcement's `nodeSelectors`.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Announce addresses of some pools from some nodes on layer 2 (ARP / NDP).
///
/// ```yaml
/// apiVersion: drawbridge.dev/v1alpha1
/// kind: L2Announcement
/// metadata: {name: lab}
/// spec:
///   ipAddressPools: [lab]            # empty or absent: every pool
///   nodeSelectors:                   # empty or absent: every node
///     - matchLabels: {drawbridge.dev/announcer: "true"}
///   interfaces: [eth0]               # empty or absent: every --l2-interfaces interface
/// ```
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "drawbridge.dev",
    version = "v1alpha1",
    kind = "L2Announcement",
    plural = "l2announcements",
    shortname = "l2a"
)]
#[serde(rename_all = "camelCase")]
pub struct L2AnnouncementSpec {
    /// Names of the `IPAddressPool`s whose addresses this announcement covers. Empty: all pools
    /// (MetalLB `L2Advertisement.spec.ipAddressPools`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_address_pools: Vec<String>,
    /// Nodes that may announce: a node qualifies when it matches **any** selector (MetalLB ORs
    /// `nodeSelectors`). Empty: every node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<NodeLabelSelector>,
    /// Interfaces to answer on, intersected with node-programmer's `--l2-interfaces`. Empty: all
    /// of them (MetalLB `L2Advertisement.spec.interfaces`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
}

/// A `metav1.LabelSelector` over Node labels: every `matchLabels` pair and every
/// `matchExpressions` requirement must hold; an empty selector matches every node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeLabelSelector {
    /// `key: value` pairs that must all be present.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Requirements that must all hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<NodeSelectorRequirement>,
}

/// One `matchExpressions` entry: `operator` is `In`, `NotIn`, `Exists` or `DoesNotExist`
/// (metav1 `LabelSelectorRequirement`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelectorRequirement {
    /// Label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// Values for `In` / `NotIn`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// Why a selector cannot be evaluated (the selector then matches nothing, as the API server
/// would have refused it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// `operator` is none of `In`, `NotIn`, `Exists`, `DoesNotExist`.
    #[error("unknown matchExpressions operator {0:?}")]
    UnknownOperator(String),
}

impl NodeLabelSelector {
    /// Whether `labels` satisfy the selector (metav1 LabelSelector semantics: `NotIn` and
    /// `DoesNotExist` hold when the key is absent). Errors: [`SelectorError::UnknownOperator`].
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> Result<bool, SelectorError> {
        if !self
            .match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
        {
            return Ok(false);
        }
        for req in &self.match_expressions {
            let value = labels.get(&req.key);
            let holds = match req.operator.as_str() {
                "In" => value.is_some_and(|v| req.values.contains(v)),
                "NotIn" => value.is_none_or(|v| !req.values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                other => return Err(SelectorError::UnknownOperator(other.to_string())),
            };
            if !holds {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn spec_reads_metallb_spelling() {
        let l2: L2Announcement = serde_yaml::from_str(
            "apiVersion: drawbridge.dev/v1alpha1\nkind: L2Announcement\nmetadata: {name: lab}\n\
             spec:\n  ipAddressPools: [lab]\n  interfaces: [eth0]\n  nodeSelectors:\n\
             \x20   - matchLabels: {zone: a}\n\
             \x20     matchExpressions: [{key: role, operator: NotIn, values: [db]}]\n",
        )
        .expect("L2Announcement");
        assert_eq!(l2.spec.ip_address_pools, vec!["lab"]);
        assert_eq!(l2.spec.interfaces, vec!["eth0"]);
        let sel = &l2.spec.node_selectors[0];
        assert_eq!(sel.matches(&labels(&[("zone", "a")])), Ok(true));
        assert_eq!(
            sel.matches(&labels(&[("zone", "a"), ("role", "db")])),
            Ok(false)
        );
        assert_eq!(sel.matches(&labels(&[("zone", "b")])), Ok(false));
    }

    #[test]
    fn selector_operators() {
        let req = |op: &str, values: &[&str]| NodeLabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![NodeSelectorRequirement {
                key: "k".into(),
                operator: op.into(),
                values: values.iter().map(|v| v.to_string()).collect(),
            }],
        };
        let with = labels(&[("k", "x")]);
        let without = labels(&[]);
        let table = [
            ("In", &["x"][..], &with, Ok(true)),
            ("In", &["y"][..], &with, Ok(false)),
            ("In", &["x"][..], &without, Ok(false)),
            ("NotIn", &["x"][..], &with, Ok(false)),
            ("NotIn", &["y"][..], &with, Ok(true)),
            ("NotIn", &["x"][..], &without, Ok(true)),
            ("Exists", &[][..], &with, Ok(true)),
            ("Exists", &[][..], &without, Ok(false)),
            ("DoesNotExist", &[][..], &without, Ok(true)),
            ("DoesNotExist", &[][..], &with, Ok(false)),
            (
                "Matches",
                &[][..],
                &with,
                Err(SelectorError::UnknownOperator("Matches".into())),
            ),
        ];
        for (op, values, labels, want) in table {
            assert_eq!(
                req(op, values).matches(labels),
                want,
                "{op} {values:?} {labels:?}"
            );
        }
        assert_eq!(NodeLabelSelector::default().matches(&without), Ok(true));
    }
}

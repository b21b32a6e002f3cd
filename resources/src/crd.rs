//! drawbridge's own API types (`drawbridge.dev/v1alpha1`).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A pool of external addresses that lb-controller hands out to `type: LoadBalancer` Services.
///
/// Cluster-scoped, like MetalLB's `IPAddressPool` and Cilium's `CiliumLoadBalancerIPPool`.
///
/// ```yaml
/// apiVersion: drawbridge.dev/v1alpha1
/// kind: IPAddressPool
/// metadata: {name: lab}
/// spec:
///   addresses: ["203.0.113.0/24", "198.51.100.10-198.51.100.20"]
///   autoAssign: true
/// ```
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "drawbridge.dev",
    version = "v1alpha1",
    kind = "IPAddressPool",
    plural = "ipaddresspools",
    shortname = "ipp",
    status = "IPAddressPoolStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct IPAddressPoolSpec {
    /// Address blocks: CIDRs (`203.0.113.0/24`, `2001:db8::/120`) or inclusive ranges
    /// (`203.0.113.10-203.0.113.20`). An entry that does not parse is reported and skipped; the
    /// rest of the pool stays usable.
    pub addresses: Vec<String>,
    /// When false, addresses are handed out only to Services that ask for this pool by name
    /// (annotation `drawbridge.dev/address-pool`) or request an address inside it. Default true.
    #[serde(default = "default_true")]
    pub auto_assign: bool,
    /// Skip addresses ending in `.0` and `.255` (some old client stacks drop them). Default false.
    #[serde(default, rename = "avoidBuggyIPs")]
    pub avoid_buggy_ips: bool,
    /// Which Services may use the pool and in which order pools are tried (MetalLB's
    /// `serviceAllocation`). Absent: every Service, lowest priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_allocation: Option<ServiceAllocation>,
}

/// `IPAddressPool.spec.serviceAllocation`, MetalLB's semantics.
///
/// - `priority`: pools are tried lowest number first; pools without a priority come after every
///   pool with one; ties (and pools without) go by name.
/// - `namespaces` / `namespaceSelector`: when either is set, only Services in a listed namespace
///   **or** in a namespace whose labels match may use the pool (MetalLB ORs them).
/// - `serviceSelector`: when set, only Services whose labels match may use the pool (ANDed with the
///   namespace rule).
///
/// The filters apply to every way of getting an address: auto-assignment, the
/// `drawbridge.dev/address-pool` annotation and requested addresses.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAllocation {
    /// Lower numbers are tried first; absent sorts after every number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Namespaces whose Services may use the pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Namespaces (by their labels) whose Services may use the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Services (by their labels) that may use the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
}

/// A Kubernetes label selector (`metav1.LabelSelector`): every `matchLabels` pair and every
/// `matchExpressions` requirement must hold; an empty selector matches everything.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// `key: value` pairs that must all be present.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub match_labels: std::collections::BTreeMap<String, String>,
    /// Requirements that must all hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One `matchExpressions` entry: `operator` is `In`, `NotIn`, `Exists` or `DoesNotExist`
/// (`values` non-empty for the first two, empty for the others).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    /// Label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// Values for `In` / `NotIn`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

fn default_true() -> bool {
    true
}

/// Observed state of an [`IPAddressPool`], written by lb-controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPAddressPoolStatus {
    /// Number of IPv4 addresses currently assigned to Services.
    #[serde(default, rename = "assignedIPv4")]
    pub assigned_ipv4: u64,
    /// Number of IPv4 addresses still available (saturates at `u64::MAX`).
    #[serde(default, rename = "availableIPv4")]
    pub available_ipv4: u64,
    /// Number of IPv6 addresses currently assigned to Services.
    #[serde(default, rename = "assignedIPv6")]
    pub assigned_ipv6: u64,
    /// Number of IPv6 addresses still available (saturates at `u64::MAX`).
    #[serde(default, rename = "availableIPv6")]
    pub available_ipv6: u64,
    /// `Valid` (False when `spec.addresses` entries were refused) and `Overlapping` (True when the
    /// pool shares addresses with another pool; both pools carry it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<PoolCondition>,
}

/// A condition on an [`IPAddressPool`] (the shape of `metav1.Condition`, without
/// `observedGeneration`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolCondition {
    /// `Valid` or `Overlapping`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
    /// RFC 3339 time the status last changed.
    pub last_transition_time: String,
}

/// One external address held by one Service: the API-enforced uniqueness record (the pattern of
/// Kubernetes' `IPAddress` objects for ClusterIPs, KEP-1880).
///
/// Cluster-scoped and named after the address ([`claim_name`]), so the API server itself refuses a
/// second claim for the same address (`409 AlreadyExists`) even when two controllers race.
/// lb-controller creates the claim **before** it writes the address into the Service's status,
/// owner-references it to the Service (garbage-collected with it), rebuilds its state from claims
/// plus statuses at start, and deletes claims whose Service is gone or no longer holds the address.
/// Shared addresses (`drawbridge.dev/allow-shared-ip`) have one claim, owned by one of the sharing
/// Services and carrying the sharing key.
///
/// ```yaml
/// apiVersion: drawbridge.dev/v1alpha1
/// kind: IPAddressClaim
/// metadata: {name: 203.0.113.7}
/// spec:
///   serviceRef: {namespace: default, name: web, uid: 0f6e…}
///   pool: lab
/// ```
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "drawbridge.dev",
    version = "v1alpha1",
    kind = "IPAddressClaim",
    plural = "ipaddressclaims",
    shortname = "ipc",
    printcolumn = r#"{"name":"Namespace","type":"string","jsonPath":".spec.serviceRef.namespace"}"#,
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.serviceRef.name"}"#,
    printcolumn = r#"{"name":"Pool","type":"string","jsonPath":".spec.pool"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IPAddressClaimSpec {
    /// The Service holding the address.
    pub service_ref: ServiceRef,
    /// The `IPAddressPool` the address came from.
    pub pool: String,
    /// `drawbridge.dev/allow-shared-ip` key of the owner, when the address may be shared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharing_key: Option<String>,
}

/// Reference to a Service: namespace, name and (when known) uid, so a re-created Service of the same
/// name does not inherit the claim.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRef {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`; empty in standalone manifests without uids.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

/// The [`IPAddressClaim`] name for `ip`: a valid DNS-1123 subdomain (what every object name must be).
///
/// IPv4: the dotted address (`203.0.113.7`). IPv6: the compressed text form (RFC 5952) with `:`
/// replaced by `-`, and a `0` added at the start or end when the text begins or ends with `::`
/// (a name cannot start or end with `-`; `0::1` is still `::1`), e.g. `2001:db8::7` →
/// `2001-db8--7`, `::1` → `0--1`, `fe80::` → `fe80--0`. [`claim_address`] reverses it.
pub fn claim_name(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => {
            let mut name = v6.to_string().replace(':', "-");
            if name.starts_with('-') {
                name.insert(0, '0');
            }
            if name.ends_with('-') {
                name.push('0');
            }
            name
        }
    }
}

/// The address an [`IPAddressClaim`] name stands for ([`claim_name`] reversed), if it is one.
pub fn claim_address(name: &str) -> Option<std::net::IpAddr> {
    if name.contains('-') {
        name.replace('-', ":")
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(std::net::IpAddr::V6)
    } else {
        name.parse::<std::net::Ipv4Addr>()
            .ok()
            .map(std::net::IpAddr::V4)
    }
}

// === CRD manifests ===

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// Every CustomResourceDefinition drawbridge defines, in the order `crdgen` prints them. Add new
/// `#[derive(CustomResource)]` kinds here (the `crds_fresh` test then covers them).
pub fn crds() -> Vec<CustomResourceDefinition> {
    use kube::CustomResourceExt as _;
    vec![
        IPAddressPool::crd(),
        IPAddressClaim::crd(),
        crate::crd_l2::L2Announcement::crd(),
    ]
}

/// [`crds`] as multi-document YAML — exactly what `crdgen` prints and `deploy/base/crds.yaml` holds.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::from(
        "# Generated by `cargo run -p drawbridge-resources --bin crdgen` from resources/src/crd.rs.\n\
         # Do not edit; resources/tests/crds_fresh.rs fails when this file is stale.\n",
    );
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_fields_use_the_documented_spelling() {
        let pool: IPAddressPool = serde_yaml::from_str(
            "apiVersion: drawbridge.dev/v1alpha1\nkind: IPAddressPool\nmetadata: {name: lab}\n\
             spec: {addresses: [203.0.113.0/24], avoidBuggyIPs: true}\n",
        )
        .expect("pool");
        assert!(
            pool.spec.avoid_buggy_ips,
            "avoidBuggyIPs (MetalLB's spelling) is read"
        );
        assert!(pool.spec.auto_assign, "autoAssign defaults to true");
        let example = include_str!("../../deploy/examples/pool.yaml");
        let example: IPAddressPool =
            serde_yaml::from_str(example).expect("deploy/examples/pool.yaml");
        assert!(example.spec.avoid_buggy_ips);
    }

    #[test]
    fn service_allocation_reads_metallb_shaped_yaml() {
        let pool: IPAddressPool = serde_yaml::from_str(
            "apiVersion: drawbridge.dev/v1alpha1\nkind: IPAddressPool\nmetadata: {name: p}\n\
             spec:\n  addresses: [203.0.113.0/24]\n  serviceAllocation:\n    priority: 10\n\
             \x20   namespaces: [prod]\n    namespaceSelector: {matchLabels: {team: a}}\n\
             \x20   serviceSelector:\n      matchExpressions: [{key: tier, operator: In, values: [web]}]\n",
        )
        .expect("pool");
        let sa = pool.spec.service_allocation.expect("serviceAllocation");
        assert_eq!(sa.priority, Some(10));
        assert_eq!(sa.namespaces, ["prod"]);
        assert_eq!(
            sa.namespace_selector.expect("ns selector").match_labels["team"],
            "a"
        );
        let req = &sa.service_selector.expect("svc selector").match_expressions[0];
        assert_eq!(
            (req.key.as_str(), req.operator.as_str(), req.values.clone()),
            ("tier", "In", vec!["web".to_string()])
        );
    }

    #[test]
    fn claim_names_are_dns_subdomains_and_reversible() {
        let valid = |n: &str| {
            !n.is_empty()
                && n.len() <= 253
                && n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
                && n.starts_with(|c: char| c.is_ascii_alphanumeric())
                && n.ends_with(|c: char| c.is_ascii_alphanumeric())
        };
        for (ip, name) in [
            ("203.0.113.7", "203.0.113.7"),
            ("2001:db8::7", "2001-db8--7"),
            ("::1", "0--1"),
            ("fe80::", "fe80--0"),
            ("::", "0--0"),
            ("2001:db8:0:1:2:3:4:5", "2001-db8-0-1-2-3-4-5"),
            ("::ffff:192.0.2.1", "0--ffff-192.0.2.1"),
        ] {
            let ip: std::net::IpAddr = ip.parse().expect("ip");
            assert_eq!(claim_name(ip), name);
            assert!(valid(name), "{name} is not a DNS-1123 subdomain");
            assert_eq!(claim_address(name), Some(ip), "{name}");
        }
        assert_eq!(claim_address("web"), None);
        assert_eq!(claim_address("2001-zz--1"), None);
    }
}

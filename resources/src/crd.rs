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
    #[serde(default)]
    pub avoid_buggy_ips: bool,
}

fn default_true() -> bool {
    true
}

/// Observed state of an [`IPAddressPool`], written by lb-controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPAddressPoolStatus {
    /// Number of IPv4 addresses currently assigned to Services.
    #[serde(default)]
    pub assigned_ipv4: u64,
    /// Number of IPv4 addresses still available (saturates at `u64::MAX`).
    #[serde(default)]
    pub available_ipv4: u64,
}

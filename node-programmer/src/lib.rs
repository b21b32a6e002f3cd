//! node-programmer: drawbridge's per-node service proxy. It turns Services + EndpointSlices into
//! one nftables table, `ip drawbridge`, following kube-proxy's nftables layout (KEP-3866;
//! `shared/reference/service-proxy.md` §1, §2): ClusterIPs, NodePorts, LoadBalancer ingress IPs
//! (`ipMode: VIP`) and externalIPs are DNATed to a random usable endpoint; Services without
//! endpoints are REJECTed.
//!
//! ```text
//!  resource source (Kubernetes watch or --manifests DIR)
//!     │  Store<Service>, Store<EndpointSlice>, changed() ticks
//!     ▼
//!  sync   ── waits for the first complete list, debounces ticks, backs off on failure
//!     │
//!     ▼
//!  model  ── pure: Services + EndpointSlices + --node-name ─> ServiceTable (per Service port:
//!     │       destinations, traffic policies, cluster/local endpoint sets)
//!     ▼
//!  render ── pure: ServiceTable ─> nft text (`add`+`delete`+`table ip drawbridge { … }`), sorted
//!     │
//!     ▼  (only if the text differs from the last applied one)
//!  apply  ── edge: `nft -f -`, one atomic transaction (or a recording fake in tests)
//! ```
//!
//! Deliberately thin for now: full table rewrite on every change (no incremental sync), IPv4
//! only, no session affinity, no `loadBalancerSourceRanges`, no topology hints, no health-check
//! servers, no conntrack cleanup, no iptables backend.
#![forbid(unsafe_code)]

pub mod apply;
pub mod conntrack;
pub mod health;
pub mod iptables;
pub mod l2;
pub mod model;
pub mod nftables;
pub mod render;
pub mod sync;

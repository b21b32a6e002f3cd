//! node-programmer: drawbridge's per-node service proxy. It turns Services + EndpointSlices (+ its
//! own Node) into kernel rules with kube-proxy's semantics (KEP-3866; `shared/reference/
//! service-proxy.md` §1): one nftables table per IP family (`ip drawbridge`, `ip6 drawbridge`) in
//! kube-proxy's nftables layout, or `DRAWBRIDGE-*` iptables chains (`--proxy-mode iptables`).
//!
//! ```text
//!  resource source (Kubernetes watch or --manifests DIR)
//!     │  Store<Service>, Store<EndpointSlice>, Store<Node>, changed() ticks
//!     ▼
//!  sync     ── waits for the first complete list, debounces ticks, backs off on failure,
//!     │         proxy health queued()/updated()
//!     ▼
//!  model    ── pure: Services + EndpointSlices + NodeContext ─> ServiceTable per family
//!     │         (destinations, policies, cluster/local endpoint sets, affinity, source ranges)
//!     ▼
//!  nftables ── NftProxier: full or partial sync, element cache, stale chains (render = pure text)
//!  iptables ── IptablesProxier: full or partial iptables-restore --noflush
//!     │
//!     ▼  one atomic transaction per family (apply::NftCli / iptables::IptablesCli, or fakes)
//!  after a sync: health (healthCheckNodePort servers), conntrack (UDP cleanup over netlink)
//!  beside it:    l2 (ARP/NDP answers for LoadBalancer IPs announced by this node)
//! ```
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

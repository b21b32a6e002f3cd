//! lb-controller: external IPs for `type: LoadBalancer` Services on bare metal.
//!
//! ```text
//!  IPAddressPools ─┐                    ┌───────────── pure ─────────────┐
//!                  ├─ Resources ─> pool::Pool + allocate::ServiceView ─> allocate() ─> Outcome
//!  Services ───────┘   (source)                                          status::desired_patch()
//!                                                                                 │ only differences
//!                                       StatusWriter (API /status or state dir) <─┘
//! ```
//!
//! Allocations are recovered from `status.loadBalancer.ingress` on restart (kept, never reshuffled).
//! This is the end-to-end slice's version: one IPv4 or IPv6 address per Service; sharing,
//! dual-stack, API-enforced uniqueness (claims) and L2 announcement come with the lb-controller
//! issue. With several replicas only the holder of a Lease writes ([`leader`]).
#![forbid(unsafe_code)]

pub mod allocate;
pub mod announce;
pub mod claim;
pub mod claim_store;
pub mod controller;
pub mod leader;
pub mod observe;
pub mod pool;
pub mod pool_status;
pub mod status;

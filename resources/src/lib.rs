//! drawbridge's shared crate: API types, well-known names, and the resource source.
//!
//! ```text
//!            ┌──────────── source::start(&SourceArgs, &[Kind]) ────────────┐
//!  Kubernetes API (kube-runtime watchers)      manifest directory (+ state directory)
//!            └───────────────> Resources (reflector Stores) <──────────────┘
//!                                   │ changed() ticks
//!              lb-controller · node-programmer · ingress-gateway
//!                                   │ StatusWriter::patch_status
//!            API `/status` merge patch          or       state-dir YAML file
//! ```
#![forbid(unsafe_code)]

pub mod crd;
pub mod crd_l2;
pub mod events;
pub mod l2_interfaces;
pub mod names;
pub mod observe;
pub mod source;
pub mod status;
pub mod telemetry;

pub use source::{Kind, ObjectKey, Resources, Source, SourceArgs};

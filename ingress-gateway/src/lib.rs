//! drawbridge's ingress gateway: serves Kubernetes Ingress v1 (class `drawbridge`) with Pingora,
//! forwarding straight to EndpointSlice endpoints, terminating TLS with certificates from
//! `kubernetes.io/tls` Secrets chosen by SNI.
//!
//! ```text
//!  Kubernetes API / --manifests DIR
//!        │ drawbridge_resources::source (reflector stores + change ticks)
//!        ▼
//!  discovery (background task, level-triggered)
//!        │ config::translate ─► routes::RouteTable ──► ArcSwap ─┐
//!        │                  └─► tls::CertStore ─────► ArcSwap ─┼─┐
//!        │ status: Ingress.status.loadBalancer ◄─ publish Service  │ │
//!        ▼                                                         │ │
//!  client ─► :http / :https (rustls, SNI ─► tls::CertResolver) ◄───┼─┘
//!        ─► proxy::Gateway (lookup, round-robin) ◄─────────────────┘
//!        ─► endpoint (HTTP/1.1, pooled), X-Forwarded-For/-Proto added, Host kept
//! ```
//!
//! Modules, from pure to effectful: [`routes`] (matching rules, table-tested against
//! `shared/reference/ingress-v1.md`), [`config`] (objects → validated model), [`tls`]
//! (certificate store and resolver), [`discovery`] (publishing and status writes), [`proxy`]
//! (the `ProxyHttp` implementation), [`server`] (start-up wiring).
#![forbid(unsafe_code)]

pub mod config;
pub mod discovery;
pub mod fast;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod routes;
pub mod server;
pub mod tls;
pub mod upstream;

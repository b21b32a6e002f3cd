//! Health answers that load balancers and kubelets ask node-programmer, with kube-proxy's exact
//! contract (`shared/reference/service-proxy.md` §1.7, §1.8; kube-proxy
//! `pkg/proxy/healthcheck/{proxier_health,service_health}.go`).
//!
//! ```text
//!  sync loop ── queued() when a Service/EndpointSlice change arrives ─┐
//!            ── updated() after the data plane was written ───────────┤
//!  node watch ─ set_node_eligible(node_eligible(&node)) ──────────────┤
//!                                                                      ▼
//!                                                  ProxyHealth (atomics, Clone + Send)
//!                          ┌───────────────────────────┴───────────────────────────┐
//!                          ▼                                                       ▼
//!   proxy::serve: --healthz-addr (0.0.0.0:10256)        ServiceHealthServers::sync(&[ServiceHealth])
//!     /healthz  200/503 (health ∧ node eligible)          one HTTP server per Service on its
//!     /livez    200/503 (health)                          healthCheckNodePort, on every bind address;
//!     kubeproxy_proxy_{healthz,livez}_total{code}         any path: 200 iff localEndpoints > 0 ∧ health
//! ```
//!
//! "Health" is kube-proxy's: no update was queued and left unapplied for `healthTimeout`
//! (2 × syncPeriod, 60 s by default).

mod clock;
mod proxy;
mod server;
mod service;

pub use clock::{Clock, ManualClock, SystemClock, go_time_string};
pub use proxy::{
    DEFAULT_HEALTH_TIMEOUT, DEFAULT_HEALTHZ_ADDR, HealthzServer, ProxyHealth, TO_BE_DELETED_TAINT,
    node_eligible, serve,
};
pub use service::{BindFailure, ServiceHealth, ServiceHealthServers, service_health_body};

/// Errors of the health servers. Binding is the only failure: it is reported to the caller
/// (who emits an Event or fails start-up) and retried on the next call, never fatal to a loop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Could not listen on `addr` (port in use, address not on this host, no permission).
    #[error("failed to listen on {addr}: {source}")]
    BindFailed {
        /// The address that was asked for.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

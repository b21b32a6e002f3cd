//! healthCheckNodePort servers for `externalTrafficPolicy: Local` Services (kube-proxy
//! `pkg/proxy/healthcheck/service_health.go`; `shared/reference/service-proxy.md` §1.7).
//!
//! One HTTP server per Service, on its `healthCheckNodePort`, on every bind address. Any method,
//! any path: 200 iff the node has ≥ 1 Ready local endpoint and the proxy is healthy, else 503.
//! Node deletion does not matter here (a total outage would follow if every endpoint sat on
//! deleting nodes).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::StatusCode;
use tokio::task::JoinHandle;

use super::proxy::ProxyHealth;
use super::{Error, server};

/// What the caller wants served for one Service (built by the sync loop from the model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceHealth {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// `spec.healthCheckNodePort` (TCP). 0 is skipped (no port allocated).
    pub health_check_node_port: u16,
    /// Ready endpoints on this node (kube-proxy `LocalReadyEndpoints()`): terminating endpoints
    /// do not count, so a node with only terminating endpoints answers 503 while still forwarding
    /// to them (KEP-1669).
    pub local_ready_endpoints: usize,
}

/// A Service whose health-check server could not be started. The caller emits a Warning Event
/// `FailedToStartServiceHealthcheck` on the Service (reason kube-proxy uses). The server is not
/// recorded as running, so the next [`ServiceHealthServers::sync`] tries again (and fails again
/// while the port stays taken — kube-proxy emits an Event on every attempt too).
#[derive(Debug)]
pub struct BindFailure {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The healthCheckNodePort that could not be opened.
    pub port: u16,
    /// What failed: the address and the OS error.
    pub error: Error,
}

impl std::fmt::Display for BindFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // kube-proxy: "node %s failed to start healthcheck %q on port %d: %v" (the caller knows
        // the node name).
        write!(
            f,
            "failed to start healthcheck \"{}/{}\" on port {}: {}",
            self.namespace, self.name, self.port, self.error
        )
    }
}

/// The body kube-proxy writes, byte for byte: its `dedent`ed, `\n`-trimmed template, indented
/// with one tab per level (shown here with `→` for a tab):
///
/// ```text
/// {
/// →"service": {
/// →→"namespace": "<ns>",
/// →→"name": "<name>"
/// →},
/// →"localEndpoints": <n>,
/// →"serviceProxyHealthy": <bool>
/// }
/// ```
pub fn service_health_body(
    namespace: &str,
    name: &str,
    local_endpoints: usize,
    proxy_healthy: bool,
) -> String {
    // Go's %q and JSON quoting agree on every valid namespace and name (DNS labels/subdomains).
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""));
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {local_endpoints},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        quote(namespace),
        quote(name)
    )
}

/// One running Service health server (on every bind address).
struct Instance {
    /// The port it listens on; a different desired port closes and reopens it.
    port: u16,
    /// Read by every request, written by `sync`: changes are live, no restart.
    local_endpoints: Arc<AtomicUsize>,
    /// One accept loop per bind address; aborting it closes the port and its connections.
    tasks: Vec<JoinHandle<()>>,
    /// Where it listens (for logs and tests).
    addrs: Vec<SocketAddr>,
}

impl Instance {
    async fn close(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Level-triggered manager of the healthCheckNodePort servers: give it the full desired set on
/// every sync. Must be used from within a tokio runtime (it spawns the servers there).
pub struct ServiceHealthServers {
    /// `--nodeport-addresses` IPs to listen on; empty = every address (dual-stack `[::]`,
    /// falling back to `0.0.0.0` where IPv6 is unavailable — Go listens dual-stack on
    /// `0.0.0.0`).
    addresses: Vec<IpAddr>,
    /// Read by every request as `serviceProxyHealthy`.
    proxy: ProxyHealth,
    /// Running servers by (namespace, name).
    servers: BTreeMap<(String, String), Instance>,
}

impl std::fmt::Debug for ServiceHealthServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHealthServers")
            .field("addresses", &self.addresses)
            .field("servers", &self.servers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ServiceHealthServers {
    /// No servers yet; they will listen on `addresses` (empty: all addresses) and report
    /// `proxy`'s health.
    pub fn new(mut addresses: Vec<IpAddr>, proxy: ProxyHealth) -> Self {
        addresses.sort();
        addresses.dedup();
        ServiceHealthServers {
            addresses,
            proxy,
            servers: BTreeMap::new(),
        }
    }

    /// Makes the running servers match `desired`: closes servers of Services no longer desired
    /// (or whose port changed) first — freeing their ports — then opens missing ones, and sets
    /// every local endpoint count (live; running servers are not restarted). Entries with port 0
    /// are ignored; for a Service listed twice the last entry wins. Returns the Services whose
    /// server could not be started (nothing is left half-open: a Service with one failed address
    /// has all its listeners closed).
    pub async fn sync(&mut self, desired: &[ServiceHealth]) -> Vec<BindFailure> {
        let mut wanted: BTreeMap<(String, String), &ServiceHealth> = BTreeMap::new();
        for service in desired {
            if service.health_check_node_port == 0 {
                continue;
            }
            wanted.insert((service.namespace.clone(), service.name.clone()), service);
        }

        let stale: Vec<_> = self
            .servers
            .iter()
            .filter(|(key, instance)| {
                wanted
                    .get(*key)
                    .is_none_or(|w| w.health_check_node_port != instance.port)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            if let Some(instance) = self.servers.remove(&key) {
                tracing::info!(namespace = %key.0, name = %key.1, port = instance.port, "closing healthcheck");
                instance.close().await;
            }
        }

        let mut failures = vec![];
        for (key, service) in wanted {
            if let Some(instance) = self.servers.get(&key) {
                instance
                    .local_endpoints
                    .store(service.local_ready_endpoints, Ordering::Release);
                continue;
            }
            match self.open(service).await {
                Ok(instance) => {
                    tracing::info!(namespace = %key.0, name = %key.1, addrs = ?instance.addrs, "opened healthcheck");
                    self.servers.insert(key, instance);
                }
                Err(error) => {
                    let failure = BindFailure {
                        namespace: key.0,
                        name: key.1,
                        port: service.health_check_node_port,
                        error,
                    };
                    tracing::warn!(%failure, "failed to start healthcheck");
                    failures.push(failure);
                }
            }
        }
        failures
    }

    /// Where each running server listens, by (namespace, name).
    pub fn listening(&self) -> BTreeMap<(String, String), Vec<SocketAddr>> {
        self.servers
            .iter()
            .map(|(key, instance)| (key.clone(), instance.addrs.clone()))
            .collect()
    }

    /// Closes every server and waits until their ports are closed.
    pub async fn shutdown(mut self) {
        for (_, instance) in std::mem::take(&mut self.servers) {
            instance.close().await;
        }
    }

    async fn open(&self, service: &ServiceHealth) -> Result<Instance, Error> {
        let port = service.health_check_node_port;
        let local_endpoints = Arc::new(AtomicUsize::new(service.local_ready_endpoints));
        let mut listeners = vec![];
        if self.addresses.is_empty() {
            let any6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
            match server::bind(any6).await {
                Ok(listener) => listeners.push(listener),
                Err(Error::BindFailed { source, .. })
                    if source.kind() != std::io::ErrorKind::AddrInUse =>
                {
                    // No IPv6 on this host: IPv4 only.
                    let any4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
                    listeners.push(server::bind(any4).await?);
                }
                Err(error) => return Err(error),
            }
        } else {
            for ip in &self.addresses {
                // On error the listeners bound so far are dropped: closed at once.
                listeners.push(server::bind(SocketAddr::new(*ip, port)).await?);
            }
        }

        let namespace = service.namespace.clone();
        let name = service.name.clone();
        let proxy = self.proxy.clone();
        let count = local_endpoints.clone();
        let handler: server::Handler = Arc::new(move |_req| {
            let local = count.load(Ordering::Acquire);
            let healthy = proxy.is_healthy();
            let status = match local != 0 && healthy {
                true => StatusCode::OK,
                false => StatusCode::SERVICE_UNAVAILABLE,
            };
            server::json(
                status,
                service_health_body(&namespace, &name, local, healthy),
            )
        });
        let mut addrs = vec![];
        let mut tasks = vec![];
        for listener in listeners {
            if let Ok(addr) = listener.local_addr() {
                addrs.push(addr);
            }
            tasks.push(server::spawn(listener, handler.clone()));
        }
        Ok(Instance {
            port,
            local_endpoints,
            tasks,
            addrs,
        })
    }
}

impl Drop for ServiceHealthServers {
    fn drop(&mut self) {
        for instance in self.servers.values() {
            for task in &instance.tasks {
                task.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_kube_proxys_template() {
        assert_eq!(
            service_health_body("demo", "web", 2, true),
            "{\n\t\"service\": {\n\t\t\"namespace\": \"demo\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        assert_eq!(
            service_health_body("kube-system", "dns", 0, false),
            "{\n\t\"service\": {\n\t\t\"namespace\": \"kube-system\",\n\t\t\"name\": \"dns\"\n\t},\n\t\"localEndpoints\": 0,\n\t\"serviceProxyHealthy\": false\n}"
        );
    }
}

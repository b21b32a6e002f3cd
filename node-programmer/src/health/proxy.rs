//! Proxy-wide health: `/healthz` and `/livez` on `--healthz-addr` (kube-proxy
//! `pkg/proxy/healthcheck/proxier_health.go`; `shared/reference/service-proxy.md` §1.8).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use k8s_openapi::api::core::v1::Node;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use super::Result;
use super::clock::{Clock, SystemClock, go_time_string};
use super::server;

/// Default `--healthz-addr`, kube-proxy's `healthzBindAddress` default.
pub const DEFAULT_HEALTHZ_ADDR: &str = "0.0.0.0:10256";

/// kube-proxy's default `healthTimeout`: 2 × the default `syncPeriod` of 30 s.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// The taint Cluster Autoscaler puts on a node it is about to delete; `/healthz` fails while it
/// is present so load balancers drain the node (KEP-3836, GA in 1.31).
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// kube-proxy's node eligibility (`SyncNode`): not being deleted (no `deletionTimestamp`) and
/// not tainted [`TO_BE_DELETED_TAINT`] (any effect).
pub fn node_eligible(node: &Node) -> bool {
    if node.metadata.deletion_timestamp.is_some() {
        return false;
    }
    !node
        .spec
        .as_ref()
        .and_then(|spec| spec.taints.as_ref())
        .is_some_and(|taints| taints.iter().any(|t| t.key == TO_BE_DELETED_TAINT))
}

type CodeLabel = [(&'static str, &'static str); 1];

/// A cheap, cloneable handle on the proxy's health, shared by the sync loop (writer) and the
/// health servers (readers). All state is in atomics; every method is lock-free.
///
/// Healthy iff no update has been queued ([`ProxyHealth::queued`]) and left unapplied
/// ([`ProxyHealth::updated`]) for `health_timeout` or longer — also healthy before the first
/// update, "while starting up" (kube-proxy `isHealthy`).
#[derive(Clone)]
pub struct ProxyHealth {
    inner: Arc<Inner>,
}

struct Inner {
    clock: Arc<dyn Clock>,
    /// Written by `new`: kube-proxy's `healthTimeout`.
    health_timeout: Duration,
    /// Monotonic nanoseconds + 1 of the oldest queued-but-unapplied update; 0 = none pending.
    /// Set by `queued` only when 0 (compare-and-swap), cleared by `updated`.
    oldest_pending_queued: AtomicU64,
    /// Wall nanoseconds since the epoch of the last `updated`; 0 = never.
    last_updated_wall: AtomicU64,
    /// Monotonic nanoseconds of the last `updated` (for the Go-style " m=+…" suffix).
    last_updated_monotonic: AtomicU64,
    /// Written by the node watch through `set_node_eligible`; true until told otherwise.
    node_eligible: AtomicBool,
    healthz_total: Family<CodeLabel, Counter>,
    livez_total: Family<CodeLabel, Counter>,
}

impl std::fmt::Debug for ProxyHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyHealth")
            .field("health_timeout", &self.inner.health_timeout)
            .field("healthy", &self.is_healthy())
            .field("node_eligible", &self.node_eligible())
            .finish()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1)
}

// === impl ProxyHealth ===

impl ProxyHealth {
    /// A handle with the real clock. `health_timeout` is kube-proxy's `healthTimeout`
    /// (2 × syncPeriod; [`DEFAULT_HEALTH_TIMEOUT`]).
    pub fn new(health_timeout: Duration) -> Self {
        Self::with_clock(health_timeout, Arc::new(SystemClock::new()))
    }

    /// A handle reading time from `clock` (tests move a [`super::ManualClock`]).
    pub fn with_clock(health_timeout: Duration, clock: Arc<dyn Clock>) -> Self {
        ProxyHealth {
            inner: Arc::new(Inner {
                clock,
                health_timeout,
                oldest_pending_queued: AtomicU64::new(0),
                last_updated_wall: AtomicU64::new(0),
                last_updated_monotonic: AtomicU64::new(0),
                node_eligible: AtomicBool::new(true),
                healthz_total: Family::default(),
                livez_total: Family::default(),
            }),
        }
    }

    /// Registers `kubeproxy_proxy_healthz_total` and `kubeproxy_proxy_livez_total` (counters
    /// labelled `code="200"|"503"`, kube-proxy's names) in `registry`. Counting happens whether
    /// or not they are registered.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kubeproxy_proxy_healthz",
            "Cumulative proxy healthz HTTP status",
            self.inner.healthz_total.clone(),
        );
        registry.register(
            "kubeproxy_proxy_livez",
            "Cumulative proxy livez HTTP status",
            self.inner.livez_total.clone(),
        );
    }

    /// The sync loop saw a Service/EndpointSlice change that needs new rules. Only the oldest
    /// pending change counts: later calls before [`ProxyHealth::updated`] do nothing.
    pub fn queued(&self) {
        let now = nanos(self.inner.clock.monotonic()).saturating_add(1);
        let _ = self.inner.oldest_pending_queued.compare_exchange(
            0,
            now,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// The data plane now reflects everything queued so far.
    pub fn updated(&self) {
        let inner = &self.inner;
        inner.oldest_pending_queued.store(0, Ordering::Release);
        let wall = inner
            .clock
            .wall()
            .duration_since(UNIX_EPOCH)
            .map(nanos)
            .unwrap_or(1)
            .max(1);
        inner
            .last_updated_monotonic
            .store(nanos(inner.clock.monotonic()), Ordering::Release);
        inner.last_updated_wall.store(wall, Ordering::Release);
    }

    /// Sets node eligibility (see [`node_eligible`]); only `/healthz` looks at it.
    pub fn set_node_eligible(&self, eligible: bool) {
        self.inner.node_eligible.store(eligible, Ordering::Release);
    }

    /// Current node eligibility.
    pub fn node_eligible(&self) -> bool {
        self.inner.node_eligible.load(Ordering::Acquire)
    }

    /// kube-proxy's `IsHealthy()`: the proxy's own health, ignoring the node. This is what the
    /// healthCheckNodePort servers report as `serviceProxyHealthy`.
    pub fn is_healthy(&self) -> bool {
        self.is_healthy_at(self.inner.clock.monotonic())
    }

    fn is_healthy_at(&self, now: Duration) -> bool {
        match self.inner.oldest_pending_queued.load(Ordering::Acquire) {
            0 => true,
            queued_plus_one => {
                let queued = Duration::from_nanos(queued_plus_one - 1);
                now.saturating_sub(queued) < self.inner.health_timeout
            }
        }
    }

    /// The `/healthz` (`with_node = true`) or `/livez` answer: status and body, byte for byte
    /// kube-proxy's. When healthy, `lastUpdated` is the current time (kube-proxy keeps that for
    /// compatibility with older releases); otherwise the time of the last successful update.
    pub fn probe(&self, with_node: bool) -> (StatusCode, String) {
        let inner = &self.inner;
        let node_eligible = self.node_eligible();
        let now_monotonic = inner.clock.monotonic();
        let now_wall = inner.clock.wall();
        let healthy = self.is_healthy_at(now_monotonic) && (!with_node || node_eligible);
        let current = go_time_string(Some(now_wall), Some(now_monotonic));
        let last = if healthy {
            current.clone()
        } else {
            match inner.last_updated_wall.load(Ordering::Acquire) {
                0 => go_time_string(None, None),
                wall => go_time_string(
                    Some(UNIX_EPOCH + Duration::from_nanos(wall)),
                    Some(Duration::from_nanos(
                        inner.last_updated_monotonic.load(Ordering::Acquire),
                    )),
                ),
            }
        };
        let (status, code) = match healthy {
            true => (StatusCode::OK, "200"),
            false => (StatusCode::SERVICE_UNAVAILABLE, "503"),
        };
        let counter = match with_node {
            true => &inner.healthz_total,
            false => &inner.livez_total,
        };
        counter.get_or_create(&[("code", code)]).inc();
        // Go: fmt.Fprintf(resp, `{"lastUpdated": %q,"currentTime": %q, "nodeEligible": %v}`, …)
        let body = match with_node {
            true => format!(
                "{{\"lastUpdated\": \"{last}\",\"currentTime\": \"{current}\", \"nodeEligible\": {node_eligible}}}"
            ),
            false => format!("{{\"lastUpdated\": \"{last}\",\"currentTime\": \"{current}\"}}"),
        };
        (status, body)
    }

    /// Wall time of the last [`ProxyHealth::updated`], if any.
    pub fn last_updated(&self) -> Option<SystemTime> {
        match self.inner.last_updated_wall.load(Ordering::Acquire) {
            0 => None,
            wall => Some(UNIX_EPOCH + Duration::from_nanos(wall)),
        }
    }
}

/// The running `--healthz-addr` server. Dropping it stops serving (the port closes once the
/// runtime has run the abort); [`HealthzServer::shutdown`] waits for that.
#[derive(Debug)]
pub struct HealthzServer {
    local_addr: SocketAddr,
    /// `Some` until `shutdown` takes it.
    task: Option<JoinHandle<()>>,
}

impl HealthzServer {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving and waits until the port and every connection are closed.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for HealthzServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Binds `addr` and serves `/healthz` and `/livez` from `health` on the current tokio runtime
/// (any method; other paths 404, as Go's `ServeMux`). Fails only if binding fails — kube-proxy
/// then emits `FailedToStartProxierHealthcheck` on the Node; the caller decides.
pub async fn serve(addr: SocketAddr, health: ProxyHealth) -> Result<HealthzServer> {
    let listener = server::bind(addr).await?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| super::Error::BindFailed { addr, source })?;
    tracing::info!(addr = %local_addr, "serving proxy /healthz and /livez");
    let handler: server::Handler = Arc::new(move |req| match req.uri().path() {
        "/healthz" => {
            let (status, body) = health.probe(true);
            server::json(status, body)
        }
        "/livez" => {
            let (status, body) = health.probe(false);
            server::json(status, body)
        }
        _ => server::not_found(),
    });
    Ok(HealthzServer {
        local_addr,
        task: Some(server::spawn(listener, handler)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::ManualClock;

    const T0: u64 = 1_700_000_000; // 2023-11-14 22:13:20 UTC

    fn handle(timeout_s: u64) -> (ProxyHealth, ManualClock) {
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(T0));
        let health =
            ProxyHealth::with_clock(Duration::from_secs(timeout_s), Arc::new(clock.clone()));
        (health, clock)
    }

    #[test]
    fn healthy_while_starting_up() {
        let (health, clock) = handle(60);
        clock.advance(Duration::from_secs(3600));
        assert!(health.is_healthy());
        let (status, body) = health.probe(true);
        assert_eq!(status, StatusCode::OK);
        let now = "2023-11-14 23:13:20 +0000 UTC m=+3600.000000000";
        assert_eq!(
            body,
            format!(
                "{{\"lastUpdated\": \"{now}\",\"currentTime\": \"{now}\", \"nodeEligible\": true}}"
            )
        );
    }

    #[test]
    fn queued_update_turns_unhealthy_only_at_the_timeout() {
        let (health, clock) = handle(60);
        clock.advance(Duration::from_secs(1));
        health.updated();
        clock.advance(Duration::from_secs(9));
        health.queued();
        clock.advance(Duration::from_secs(30));
        health.queued(); // a later change does not restart the timer
        clock.advance(Duration::from_millis(29_999));
        assert!(
            health.is_healthy(),
            "59.999 s after the oldest queued update"
        );
        clock.advance(Duration::from_millis(1));
        assert!(!health.is_healthy(), "60 s after the oldest queued update");
        let (status, body) = health.probe(false);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            "{\"lastUpdated\": \"2023-11-14 22:13:21 +0000 UTC m=+1.000000000\",\
             \"currentTime\": \"2023-11-14 22:14:30 +0000 UTC m=+70.000000000\"}"
        );
        health.updated();
        assert!(health.is_healthy());
    }

    #[test]
    fn never_updated_shows_go_zero_time() {
        let (health, clock) = handle(60);
        health.queued();
        clock.advance(Duration::from_secs(61));
        let (status, body) = health.probe(false);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.starts_with(
                "{\"lastUpdated\": \"0001-01-01 00:00:00 +0000 UTC\",\"currentTime\": "
            ),
            "{body}"
        );
    }

    #[test]
    fn node_eligibility_affects_healthz_only() {
        let (health, _clock) = handle(60);
        health.set_node_eligible(false);
        let (status, body) = health.probe(true);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.ends_with(", \"nodeEligible\": false}"), "{body}");
        assert_eq!(health.probe(false).0, StatusCode::OK);
        assert!(health.is_healthy(), "IsHealthy ignores the node");
    }

    #[test]
    fn node_eligible_reads_deletion_and_autoscaler_taint() {
        let node = |v: serde_json::Value| -> Node { serde_json::from_value(v).expect("node") };
        assert!(node_eligible(&node(
            serde_json::json!({"metadata": {"name": "a"}})
        )));
        assert!(node_eligible(&node(serde_json::json!({
            "metadata": {"name": "a"},
            "spec": {"taints": [{"key": "other", "effect": "NoSchedule"}]}
        }))));
        assert!(!node_eligible(&node(serde_json::json!({
            "metadata": {"name": "a"},
            "spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "value": "1700000000", "effect": "NoSchedule"}]}
        }))));
        assert!(!node_eligible(&node(serde_json::json!({
            "metadata": {"name": "a", "deletionTimestamp": "2023-11-14T22:13:20Z"}
        }))));
    }

    #[test]
    fn probes_are_counted_by_code() {
        let (health, clock) = handle(1);
        let mut registry = Registry::default();
        health.register(&mut registry);
        health.probe(true);
        health.probe(false);
        health.queued();
        clock.advance(Duration::from_secs(2));
        health.probe(true);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains("kubeproxy_proxy_healthz_total{code=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kubeproxy_proxy_healthz_total{code=\"503\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kubeproxy_proxy_livez_total{code=\"200\"} 1"),
            "{text}"
        );
    }
}

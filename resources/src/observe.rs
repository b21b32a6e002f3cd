//! The metrics and health endpoint every binary serves on `--metrics-addr`.
//!
//! ```text
//!  component loops ── Health::set_ready() (first complete sync) ──┐
//!                  └─ LivenessGuard (dropped when a loop ends) ───┤
//!  component metrics ── registered in one prometheus-client Registry ──┤
//!                                                                      ▼
//!                 GET /metrics  (OpenMetrics text)   GET /healthz   GET /readyz
//! ```
//!
//! Probe semantics are the ones Kubernetes expects: `/healthz` (liveness) answers 200 while every
//! loop that holds a [`LivenessGuard`] is still running (a loop that returned or panicked makes it
//! 503, so the kubelet restarts the container); `/readyz` (readiness) answers 503 until the
//! component's first complete sync and until every [`ReadyGate`] it took is opened (the gateway's:
//! its listeners accept connections), then 200 for the rest of the process's life (a component that
//! once served keeps serving its last good state; a transient API outage is not a reason to pull
//! it from its Service).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// `Content-Type` of `/metrics`: prometheus-client writes the OpenMetrics text format.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Default `--metrics-addr` of lb-controller.
pub const LB_CONTROLLER_ADDR: &str = "0.0.0.0:9500";
/// Default `--metrics-addr` of node-programmer.
pub const NODE_PROGRAMMER_ADDR: &str = "0.0.0.0:9501";
/// Default `--metrics-addr` of ingress-gateway.
pub const INGRESS_GATEWAY_ADDR: &str = "0.0.0.0:9502";

/// `--metrics-addr`: a socket address, or `off` / empty for no endpoint at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<SocketAddr>);

impl FromStr for MetricsAddr {
    type Err = std::net::AddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "" | "off" => Ok(MetricsAddr(None)),
            addr => addr.parse().map(|a| MetricsAddr(Some(a))),
        }
    }
}

/// A registry with drawbridge's `drawbridge_build_info{component,version}` gauge (always 1) in it;
/// components add their own metrics before handing it to [`serve`].
pub fn registry(component: &str) -> Registry {
    let mut registry = Registry::default();
    let info =
        prometheus_client::metrics::family::Family::<[(&'static str, String); 2], Gauge>::default();
    info.get_or_create(&[
        ("component", component.to_string()),
        ("version", env!("CARGO_PKG_VERSION").to_string()),
    ])
    .set(1);
    registry.register(
        "drawbridge_build_info",
        "drawbridge component and version; always 1",
        info,
    );
    registry
}

// === impl Health ===

/// Readiness and liveness of one process. Cheap to clone; every clone shares the state.
#[derive(Clone, Debug)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Debug)]
struct HealthInner {
    /// Set once by the component after its first complete sync; never cleared.
    ready: AtomicBool,
    /// Cleared when any [`LivenessGuard`] is dropped (its loop ended or panicked).
    alive: AtomicBool,
    /// Set by [`Health::shutting_down`]: loops ending now are expected, not failures.
    stopping: AtomicBool,
    /// [`ReadyGate`]s taken and not opened yet; ready needs 0.
    closed_gates: AtomicUsize,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            inner: Arc::new(HealthInner {
                ready: AtomicBool::new(false),
                alive: AtomicBool::new(true),
                stopping: AtomicBool::new(false),
                closed_gates: AtomicUsize::new(0),
            }),
        }
    }
}

impl Health {
    /// Marks the component ready (first complete sync done). Idempotent.
    pub fn set_ready(&self) {
        if !self.inner.ready.swap(true, Ordering::Relaxed) {
            tracing::info!("ready");
        }
    }

    /// Whether [`Health::set_ready`] was called and every [`ReadyGate`] is open.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
            && self.inner.closed_gates.load(Ordering::Acquire) == 0
    }

    /// One more condition of readiness besides the first sync (for example "the listeners
    /// accept"): `/readyz` answers 503 until the returned gate is [opened](ReadyGate::open).
    /// Take gates before serving the endpoint; a gate dropped unopened stays closed.
    pub fn gate(&self, name: &'static str) -> ReadyGate {
        self.inner.closed_gates.fetch_add(1, Ordering::AcqRel);
        ReadyGate {
            health: self.clone(),
            name,
        }
    }

    /// Announces an orderly shutdown (SIGTERM): loops that end from now on are logged at `info`,
    /// not as failures. `/healthz` still turns 503 when they end.
    pub fn shutting_down(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
    }

    /// Whether every loop holding a guard is still running.
    pub fn is_alive(&self) -> bool {
        self.inner.alive.load(Ordering::Relaxed)
    }

    /// A guard for a loop named `name`: hold it for as long as the loop runs. Dropping it (the loop
    /// returned, or its task panicked and unwound) makes `/healthz` fail from then on.
    pub fn liveness_guard(&self, name: &'static str) -> LivenessGuard {
        LivenessGuard {
            health: self.clone(),
            name,
        }
    }
}

/// See [`Health::gate`].
#[derive(Debug)]
#[must_use = "readiness waits until the gate is opened"]
pub struct ReadyGate {
    health: Health,
    name: &'static str,
}

impl ReadyGate {
    /// Opens the gate (once: it is consumed).
    pub fn open(self) {
        self.health
            .inner
            .closed_gates
            .fetch_sub(1, Ordering::AcqRel);
        tracing::debug!(gate = self.name, "readiness condition met");
    }
}

/// See [`Health::liveness_guard`].
#[derive(Debug)]
pub struct LivenessGuard {
    health: Health,
    name: &'static str,
}

impl Drop for LivenessGuard {
    fn drop(&mut self) {
        self.health.inner.alive.store(false, Ordering::Relaxed);
        if self.health.inner.stopping.load(Ordering::Relaxed) {
            tracing::info!(r#loop = self.name, "loop stopped for shutdown");
        } else {
            tracing::error!(r#loop = self.name, "loop ended; /healthz now fails");
        }
    }
}

// === the server ===

/// A running endpoint.
#[derive(Debug)]
pub struct Server {
    /// Where it listens (useful with port 0).
    pub local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Stops accepting connections.
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves `/metrics`, `/healthz` and `/readyz` on it from a task on the current
/// tokio runtime. Only binding can fail; connection errors are logged at `debug` and dropped.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    health: Health,
) -> std::io::Result<Server> {
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    tracing::info!(addr = %local_addr, "serving /metrics, /healthz and /readyz");
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "metrics endpoint: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (registry, health) = (registry.clone(), health.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let response = respond(&req, &registry, &health);
                    async move { Ok::<_, Infallible>(response) }
                });
                if let Err(error) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%error, "metrics endpoint: connection error");
                }
            });
        }
    });
    Ok(Server { local_addr, task })
}

/// [`serve`] when `addr` is set; a bind failure is returned so `main` can fail loudly at start.
pub async fn serve_if(
    addr: MetricsAddr,
    registry: Registry,
    health: Health,
) -> std::io::Result<Option<Server>> {
    match addr.0 {
        Some(addr) => serve(addr, Arc::new(registry), health).await.map(Some),
        None => Ok(None),
    }
}

fn respond(req: &Request<Incoming>, registry: &Registry, health: &Health) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut body = String::with_capacity(4096);
            if let Err(error) = prometheus_client::encoding::text::encode(&mut body, registry) {
                tracing::warn!(%error, "encoding metrics failed");
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "encoding metrics failed\n",
                );
            }
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(METRICS_CONTENT_TYPE),
            );
            r
        }
        "/healthz" | "/livez" => match health.is_alive() {
            true => text(StatusCode::OK, "ok\n"),
            false => text(StatusCode::SERVICE_UNAVAILABLE, "a loop has ended\n"),
        },
        "/readyz" => match health.is_ready() {
            true => text(StatusCode::OK, "ok\n"),
            false => text(StatusCode::SERVICE_UNAVAILABLE, "first sync not complete\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "try /metrics, /healthz or /readyz\n"),
    }
}

/// Seconds since the Unix epoch, for `*_timestamp_seconds` gauges.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One HTTP/1.1 GET over a fresh connection: (status, content type, body).
    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read_to_string(&mut raw),
        )
        .await
        .expect("answer within 5 s")
        .expect("read");
        let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        let content_type = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type: ")
                    .map(str::to_string)
            })
            .unwrap_or_default();
        (status, content_type, body.to_string())
    }

    #[tokio::test]
    async fn serves_metrics_and_probes_over_http() {
        let mut registry = registry("test-component");
        let counter = Counter::<u64>::default();
        registry.register("drawbridge_test_things", "things", counter.clone());
        counter.inc_by(3);
        let health = Health::default();
        let server = serve(
            "127.0.0.1:0".parse().expect("addr"),
            Arc::new(registry),
            health.clone(),
        )
        .await
        .expect("bind");
        let addr = server.local_addr;

        let (status, content_type, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(content_type, METRICS_CONTENT_TYPE);
        assert!(body.contains("drawbridge_test_things_total 3"), "{body}");
        assert!(
            body.contains(r#"drawbridge_build_info{component="test-component""#),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");

        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(
            get(addr, "/readyz").await.0,
            503,
            "not ready before the first sync"
        );
        health.set_ready();
        assert_eq!(get(addr, "/readyz").await.0, 200);
        assert_eq!(get(addr, "/nope").await.0, 404);

        let guard = health.liveness_guard("test loop");
        assert_eq!(get(addr, "/healthz").await.0, 200);
        drop(guard);
        assert_eq!(get(addr, "/healthz").await.0, 503, "a loop ended");
        server.abort();
    }

    #[test]
    fn readiness_waits_for_the_first_sync_and_every_gate() {
        let health = Health::default();
        let (listeners, other) = (health.gate("listeners"), health.gate("other"));
        health.set_ready();
        assert!(!health.is_ready(), "two gates closed");
        listeners.open();
        assert!(!health.is_ready(), "one gate closed");
        other.open();
        assert!(health.is_ready());

        let late = Health::default();
        let gate = late.gate("listeners");
        gate.open();
        assert!(!late.is_ready(), "gates open, first sync not done");
        late.set_ready();
        assert!(late.is_ready());
    }

    #[tokio::test]
    async fn a_panicking_loop_fails_liveness() {
        let health = Health::default();
        let guard = health.liveness_guard("panicky");
        let task = tokio::spawn(async move {
            let _guard = guard;
            panic!("boom");
        });
        assert!(task.await.is_err());
        assert!(!health.is_alive());
    }

    #[test]
    fn metrics_addr_parses_off_and_addresses() {
        assert_eq!(
            "off".parse::<MetricsAddr>().expect("off"),
            MetricsAddr(None)
        );
        assert_eq!("".parse::<MetricsAddr>().expect("empty"), MetricsAddr(None));
        assert_eq!(
            LB_CONTROLLER_ADDR.parse::<MetricsAddr>().expect("addr"),
            MetricsAddr(Some("0.0.0.0:9500".parse().expect("addr")))
        );
        assert!("nonsense".parse::<MetricsAddr>().is_err());
    }
}

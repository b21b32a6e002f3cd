//! The gateway's Prometheus metrics, and the per-route handles the request path uses.
//!
//! ```text
//!  config (table build) ─► Backend { stats: RouteStats(ingress, host) } ─► RouteTable ─► ArcSwap
//!  proxy::logging (end of each request) ─► RouteStats: handle cached in a OnceLock per
//!        (method, status class) ─► Counter::inc / Histogram::observe   (no allocation, no map
//!        lookup after the first request of a route)
//!  discovery ─► config syncs, last sync time, certificate expiry per Secret
//! ```
//!
//! Label values are bounded: `ingress` and `host` come from the served Ingresses (the rule's host
//! as written, `*` for rules without a host and for `defaultBackend`; both empty when no rule
//! matched), `method` is one of the nine standard methods or `OTHER`, `status` is `1xx`…`5xx`.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A shared label value (cloning it copies a pointer).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Label(pub Arc<str>);

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

/// Request method, as a bounded label.
#[allow(clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum Method {
    GET,
    HEAD,
    POST,
    PUT,
    DELETE,
    PATCH,
    OPTIONS,
    CONNECT,
    TRACE,
    /// Any extension method.
    OTHER,
}

impl Method {
    const COUNT: usize = 10;

    /// The label for `method`.
    pub fn of(method: &http::Method) -> Method {
        match *method {
            http::Method::GET => Method::GET,
            http::Method::HEAD => Method::HEAD,
            http::Method::POST => Method::POST,
            http::Method::PUT => Method::PUT,
            http::Method::DELETE => Method::DELETE,
            http::Method::PATCH => Method::PATCH,
            http::Method::OPTIONS => Method::OPTIONS,
            http::Method::CONNECT => Method::CONNECT,
            http::Method::TRACE => Method::TRACE,
            _ => Method::OTHER,
        }
    }
}

/// Response status class: `1xx` … `5xx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StatusClass(u8);

impl StatusClass {
    /// The class of `status` (anything outside 100–599 counts as `5xx`: the gateway failed).
    pub fn of(status: u16) -> StatusClass {
        match status {
            100..=599 => StatusClass((status / 100) as u8),
            _ => StatusClass(5),
        }
    }
}

impl EncodeLabelValue for StatusClass {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        write!(encoder, "{}xx", self.0)
    }
}

/// Labels of `drawbridge_gateway_requests_total`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// `namespace/name` of the Ingress whose rule matched.
    pub ingress: Label,
    /// The rule's host as written (`*` = any).
    pub host: Label,
    /// Request method.
    pub method: Method,
    /// Response status class.
    pub status: StatusClass,
}

/// Labels of the per-route histograms and byte counters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    /// `namespace/name` of the Ingress whose rule matched.
    pub ingress: Label,
    /// The rule's host as written (`*` = any).
    pub host: Label,
}

/// The client's protocol, as a label (`HTTP/1.1`, `HTTP/2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    Http2,
}

impl EncodeLabelValue for Protocol {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
        })
    }
}

/// Labels of `drawbridge_gateway_pingora_path_requests_total`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HandOverLabels {
    pub protocol: Protocol,
    /// Why the fast path did not serve it (a fixed text from `crate::fast`, e.g. `no rule`,
    /// `request body`, `upstream is not HTTP/1.1`).
    pub reason: &'static str,
}

type SecretLabel = [(&'static str, String); 1];

fn duration_buckets() -> Histogram {
    // 1 ms doubling to ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every gateway metric. Built once; `proxy` and `discovery` share it through an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    /// `drawbridge_gateway_requests_total{ingress,host,method,status}`.
    pub requests: Family<RequestLabels, Counter>,
    /// `drawbridge_gateway_request_duration_seconds{ingress,host}`: request header received to
    /// response finished.
    pub request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// `drawbridge_gateway_request_bytes_total{ingress,host}`: request body bytes received.
    pub request_bytes: Family<RouteLabels, Counter>,
    /// `drawbridge_gateway_response_bytes_total{ingress,host}`: response body bytes sent.
    pub response_bytes: Family<RouteLabels, Counter>,
    /// `drawbridge_gateway_upstream_connect_duration_seconds`: new upstream TCP connections.
    pub upstream_connect_duration: Histogram,
    /// `drawbridge_gateway_upstream_connect_failures_total`: connects that failed (refused,
    /// timed out, unreachable); each one counts towards passive health.
    pub upstream_connect_failures: Counter,
    /// `drawbridge_gateway_endpoint_ejections_total`: endpoints ejected by passive health.
    pub endpoint_ejections: Counter,
    /// `drawbridge_gateway_config_syncs_total`: route tables published.
    pub config_syncs: Counter,
    /// `drawbridge_gateway_last_config_sync_timestamp_seconds`.
    pub last_config_sync: Gauge<f64, AtomicU64>,
    /// `drawbridge_gateway_certificate_expiry_timestamp_seconds{secret}`: `notAfter` of the leaf
    /// certificate of each loaded Secret (`namespace/name`).
    pub certificate_expiry: Family<SecretLabel, Gauge>,
    /// `drawbridge_gateway_pingora_path_requests_total{protocol,reason}`: hand-overs from the
    /// fast path to Pingora's proxy path, and why. HTTP/2: one per stream. HTTP/1.1: one per
    /// connection (the request that was handed over; the rest of that connection stays on
    /// Pingora's path uncounted). Nothing is counted with the fast path off.
    pub handovers: Family<HandOverLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(duration_buckets),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            upstream_connect_duration: duration_buckets(),
            upstream_connect_failures: Counter::default(),
            endpoint_ejections: Counter::default(),
            config_syncs: Counter::default(),
            last_config_sync: Gauge::default(),
            certificate_expiry: Family::default(),
            handovers: Family::default(),
        }
    }
}

impl Metrics {
    /// New metrics, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = Metrics::default();
        registry.register(
            "drawbridge_gateway_requests",
            "Requests, by Ingress, rule host, method and status class",
            m.requests.clone(),
        );
        registry.register(
            "drawbridge_gateway_request_duration_seconds",
            "Request duration, header received to response finished",
            m.request_duration.clone(),
        );
        registry.register(
            "drawbridge_gateway_request_bytes",
            "Request body bytes received",
            m.request_bytes.clone(),
        );
        registry.register(
            "drawbridge_gateway_response_bytes",
            "Response body bytes sent",
            m.response_bytes.clone(),
        );
        registry.register(
            "drawbridge_gateway_upstream_connect_duration_seconds",
            "Time to open a new connection to an endpoint",
            m.upstream_connect_duration.clone(),
        );
        registry.register(
            "drawbridge_gateway_upstream_connect_failures",
            "Upstream connects that failed",
            m.upstream_connect_failures.clone(),
        );
        registry.register(
            "drawbridge_gateway_endpoint_ejections",
            "Endpoints ejected by passive health (repeated connect failures)",
            m.endpoint_ejections.clone(),
        );
        registry.register(
            "drawbridge_gateway_config_syncs",
            "Route tables published",
            m.config_syncs.clone(),
        );
        registry.register(
            "drawbridge_gateway_last_config_sync_timestamp_seconds",
            "When the last route table was published",
            m.last_config_sync.clone(),
        );
        registry.register(
            "drawbridge_gateway_certificate_expiry_timestamp_seconds",
            "notAfter of the certificate in a kubernetes.io/tls Secret",
            m.certificate_expiry.clone(),
        );
        registry.register(
            "drawbridge_gateway_pingora_path_requests",
            "Requests the fast path handed to Pingora's proxy path, by client protocol and reason",
            m.handovers.clone(),
        );
        Arc::new(m)
    }

    /// Counts one request or stream handed to Pingora's path.
    pub fn handed_over(&self, protocol: Protocol, reason: &'static str) {
        self.handovers
            .get_or_create(&HandOverLabels { protocol, reason })
            .inc();
    }
}

// === impl RouteStats ===

/// `drawbridge_gateway_requests_total` handles of one route, by method and status class.
type RequestCells = [[OnceLock<Counter>; 5]; Method::COUNT];

/// The metric handles of one (Ingress, rule host): label values fixed at table build time,
/// handles resolved from the [`Metrics`] families on first use and cached, so a request costs a
/// few atomic operations.
///
/// Memory: the 50 (method × status class) request-counter cells are allocated on the route's
/// first request, not when the table is built: a backend that never sees traffic costs ~100
/// bytes here instead of ~900 (at 10,000 Ingresses that was ~8 MiB of the gateway's heap,
/// heaptrack under `bench/gateway/propagation.sh`).
#[derive(Debug)]
pub struct RouteStats {
    labels: RouteLabels,
    requests: OnceLock<Box<RequestCells>>,
    duration: OnceLock<Histogram>,
    request_bytes: OnceLock<Counter>,
    response_bytes: OnceLock<Counter>,
}

impl RouteStats {
    /// Handles for requests matched by a rule of `ingress` (`namespace/name`) with `host`.
    pub fn new(ingress: &str, host: &str) -> Self {
        RouteStats {
            labels: RouteLabels {
                ingress: Label(ingress.into()),
                host: Label(host.into()),
            },
            requests: OnceLock::new(),
            duration: OnceLock::new(),
            request_bytes: OnceLock::new(),
            response_bytes: OnceLock::new(),
        }
    }

    /// The labels (for logs and tests).
    pub fn labels(&self) -> &RouteLabels {
        &self.labels
    }

    /// Records one finished request.
    pub fn record(
        &self,
        metrics: &Metrics,
        method: Method,
        status: StatusClass,
        seconds: f64,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let class = usize::from(status.0.clamp(1, 5)) - 1;
        self.requests.get_or_init(Box::default)[method as usize][class]
            .get_or_init(|| {
                metrics.requests.get_or_create_owned(&RequestLabels {
                    ingress: self.labels.ingress.clone(),
                    host: self.labels.host.clone(),
                    method,
                    status,
                })
            })
            .inc();
        self.duration
            .get_or_init(|| metrics.request_duration.get_or_create_owned(&self.labels))
            .observe(seconds);
        if bytes_in > 0 {
            self.request_bytes
                .get_or_init(|| metrics.request_bytes.get_or_create_owned(&self.labels))
                .inc_by(bytes_in);
        }
        if bytes_out > 0 {
            self.response_bytes
                .get_or_init(|| metrics.response_bytes.get_or_create_owned(&self.labels))
                .inc_by(bytes_out);
        }
    }
}

impl Default for RouteStats {
    /// Requests that matched no rule: both labels empty.
    fn default() -> Self {
        RouteStats::new("", "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn route_stats_count_into_the_families() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let stats = RouteStats::new("default/web", "app.example.test");
        for _ in 0..3 {
            stats.record(&metrics, Method::GET, StatusClass::of(200), 0.01, 0, 12);
        }
        stats.record(
            &metrics,
            Method::of(&http::Method::from_bytes(b"PURGE").expect("method")),
            StatusClass::of(404),
            0.01,
            5,
            0,
        );
        let mut text = String::new();
        encode(&mut text, &registry).expect("encode");
        for line in [
            r#"drawbridge_gateway_requests_total{ingress="default/web",host="app.example.test",method="GET",status="2xx"} 3"#,
            r#"drawbridge_gateway_requests_total{ingress="default/web",host="app.example.test",method="OTHER",status="4xx"} 1"#,
            r#"drawbridge_gateway_response_bytes_total{ingress="default/web",host="app.example.test"} 36"#,
            r#"drawbridge_gateway_request_bytes_total{ingress="default/web",host="app.example.test"} 5"#,
            r#"drawbridge_gateway_request_duration_seconds_count{ingress="default/web",host="app.example.test"} 4"#,
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}

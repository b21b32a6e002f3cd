//! `ingress-gateway`: drawbridge's Ingress v1 gateway. See the library docs.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use clap::Parser;
use drawbridge_resources::observe::{self, MetricsAddr};
use drawbridge_resources::source::SourceArgs;
use drawbridge_resources::telemetry::{self, LogFormat};
use ingress_gateway::server::{self, Settings};

/// The process allocator: mimalloc (per-thread free lists, no `malloc_consolidate`), unless built
/// with `--no-default-features`. bench/gateway measured glibc malloc/free at ~14% of the proxy's
/// CPU time per request; docs/benchmarks.md has the before/after numbers.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Serves Ingresses of class `drawbridge` (controller `drawbridge.dev/ingress-gateway`).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// Plain HTTP listener.
    #[arg(
        long,
        env = "DRAWBRIDGE_HTTP_ADDR",
        value_name = "ADDR",
        default_value = "0.0.0.0:8080"
    )]
    http_addr: SocketAddr,
    /// HTTPS listener (certificates by SNI from the Ingresses' `spec.tls`).
    #[arg(
        long,
        env = "DRAWBRIDGE_HTTPS_ADDR",
        value_name = "ADDR",
        default_value = "0.0.0.0:8443"
    )]
    https_addr: SocketAddr,
    /// NAMESPACE/NAME of the LoadBalancer Service whose addresses go into Ingress status.
    #[arg(long, env = "DRAWBRIDGE_PUBLISH_SERVICE", value_name = "NS/NAME", default_value = "drawbridge-system/ingress-gateway", value_parser = parse_ns_name)]
    publish_service: (String, String),
    /// Proxy worker threads (default: available CPUs).
    #[arg(long, env = "DRAWBRIDGE_THREADS")]
    threads: Option<usize>,
    /// Log format.
    #[arg(long, env = "DRAWBRIDGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Serve /metrics, /healthz and /readyz here (`off` disables).
    #[arg(long, env = "DRAWBRIDGE_METRICS_ADDR", value_name = "ADDR", default_value = observe::INGRESS_GATEWAY_ADDR)]
    metrics_addr: MetricsAddr,
    /// One access log event per request (tracing target `access`; a JSON object per line with
    /// `--log-format json`). `--access-log=false` turns it off.
    #[arg(long, env = "DRAWBRIDGE_ACCESS_LOG", value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    access_log: bool,
    /// Pingora graceful upgrade: take the HTTP/HTTPS listening sockets over from the running
    /// process through `--upgrade-sock`, then send that process SIGQUIT (it hands the sockets over,
    /// keeps accepting 5 s, then drains). Exits with status 1 if nothing arrives within 5 s.
    #[arg(long, env = "DRAWBRIDGE_UPGRADE")]
    upgrade: bool,
    /// Unix socket of the listener hand-over; the old and the new process need the same path.
    #[arg(long, env = "DRAWBRIDGE_UPGRADE_SOCK", value_name = "PATH", default_value = server::DEFAULT_UPGRADE_SOCK)]
    upgrade_sock: std::path::PathBuf,
    /// NAMESPACE/NAME of a `kubernetes.io/tls` Secret served for unknown SNI (ingress-nginx's
    /// `--default-ssl-certificate`); default: a self-signed certificate generated at start.
    #[arg(long, env = "DRAWBRIDGE_DEFAULT_TLS_SECRET", value_name = "NS/NAME", value_parser = parse_ns_name)]
    default_tls_secret: Option<(String, String)>,
    /// Serve plain HTTP/1.1 keep-alive requests (Content-Length or no body, HTTP/1.1 endpoints)
    /// on the gateway's own fast path; everything else goes through Pingora's proxy path on the
    /// same connection. `--http1-fast-path=false`: Pingora's path only.
    #[arg(long, env = "DRAWBRIDGE_HTTP1_FAST_PATH", value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    http1_fast_path: bool,
    /// Serve HTTP/2 streams to HTTP/1.1 endpoints on the fast path's pooled upstream exchange
    /// (needs `--http1-fast-path`); every other stream goes through Pingora's proxy path on the
    /// same connection. `--http2-fast-path=false`: Pingora's path for all HTTP/2.
    #[arg(long, env = "DRAWBRIDGE_HTTP2_FAST_PATH", value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    http2_fast_path: bool,
    /// Seconds between two DNS lookups of each ExternalName Service's `spec.externalName`
    /// (system resolver; a failed lookup keeps the last addresses). Minimum 1.
    #[arg(
        long,
        env = "DRAWBRIDGE_EXTERNAL_NAME_REFRESH",
        value_name = "SECONDS",
        default_value_t = 30
    )]
    external_name_refresh: u64,
    /// Proxy threads share one multi-thread tokio runtime and steal each other's tasks
    /// (Pingora's default). `--work-stealing=false`: one current-thread runtime per thread, each
    /// serving the connections it accepted, like nginx workers. bench/gateway measured no
    /// HTTP/1.1 gain and up to 0.68× the HTTP/2 req/s without it (docs/benchmarks.md, 2026-12-06).
    #[arg(long, env = "DRAWBRIDGE_WORK_STEALING", value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    work_stealing: bool,
    /// Seconds one read of a request body may wait for the client (between two reads, not for
    /// the whole body; nginx's `client_body_timeout`, ingress-nginx's `client-body-timeout`). A
    /// stalled body is answered 408 and its upstream connection closed (an HTTP/2 upstream's
    /// stream reset). HTTP/1.x clients and HTTP/2 streams, on both paths.
    #[arg(
        long,
        env = "DRAWBRIDGE_CLIENT_BODY_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 60
    )]
    client_body_timeout: u64,
}

fn parse_ns_name(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("expected NAMESPACE/NAME, got {s:?}")),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.log_format);
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    server::run(Settings {
        source: args.source,
        http_addr: args.http_addr,
        https_addr: args.https_addr,
        publish_service: args.publish_service,
        threads,
        metrics_addr: args.metrics_addr,
        access_log: args.access_log,
        upgrade: args.upgrade,
        upgrade_sock: args.upgrade_sock,
        default_tls_secret: args.default_tls_secret,
        http1_fast_path: args.http1_fast_path,
        http2_fast_path: args.http2_fast_path,
        external_name_refresh: std::time::Duration::from_secs(args.external_name_refresh),
        work_stealing: args.work_stealing,
        client_body_timeout: std::time::Duration::from_secs(args.client_body_timeout.max(1)),
    })
}

//! Start-up wiring: source, first configuration, discovery task, Pingora server with the HTTP
//! and HTTPS listeners. Everything here runs once; errors are fatal (`anyhow`).
//!
//! Two runtimes: a small tokio runtime owns the resource source and the discovery task, and
//! Pingora runs its own per-service runtimes for the listeners. They share only the `ArcSwap`s.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use drawbridge_resources::observe::{self, Health, MetricsAddr};
use drawbridge_resources::source::{self, Kind, SourceArgs};
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::Server;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::services::listening::Service;
use tracing::{Instrument, info, info_span, warn};

use crate::config::ObjectRef;
use crate::discovery::{Discovery, Observers, Published};
use crate::fast::FastPath;
use crate::metrics::Metrics;
use crate::proxy::Gateway;
use crate::tls::{self, CertResolver};

/// Seconds Pingora keeps accepting after SIGTERM (lets endpoints and load balancers notice).
pub const GRACE_PERIOD_SECONDS: u64 = 5;

/// Seconds Pingora then waits for in-flight requests before exiting.
pub const SHUTDOWN_TIMEOUT_SECONDS: u64 = 10;

/// Default `--upgrade-sock`: the Unix socket over which listeners are handed to a new process.
pub const DEFAULT_UPGRADE_SOCK: &str = "/tmp/drawbridge-ingress-gateway-upgrade.sock";

/// How long a process started with `--upgrade` retries binding `--metrics-addr` while the old
/// process still holds it (the old one keeps it until it exits: Pingora's 5 s close timeout +
/// [`GRACE_PERIOD_SECONDS`] + at most [`SHUTDOWN_TIMEOUT_SECONDS`]).
pub const UPGRADE_METRICS_RETRY: Duration = Duration::from_secs(60);

/// Everything the gateway needs to start (the binary's flags, minus logging).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where objects come from.
    pub source: SourceArgs,
    /// Plain HTTP listener.
    pub http_addr: SocketAddr,
    /// HTTPS listener.
    pub https_addr: SocketAddr,
    /// The LoadBalancer Service whose addresses go into Ingress status.
    pub publish_service: ObjectRef,
    /// Pingora worker threads for the proxy.
    pub threads: usize,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (`None`: nowhere).
    pub metrics_addr: MetricsAddr,
    /// One access log event per request (target `access`).
    pub access_log: bool,
    /// Pingora graceful upgrade: take the listening sockets over from a running old process
    /// through [`Settings::upgrade_sock`] instead of binding them (the old process sends them when
    /// it gets `SIGQUIT`). Pingora's `Opt::upgrade`.
    pub upgrade: bool,
    /// The Unix socket of the listener hand-over (Pingora's `ServerConf::upgrade_sock`); the old
    /// and the new process must be given the same path.
    pub upgrade_sock: PathBuf,
    /// `--default-tls-secret NAMESPACE/NAME`: the certificate for unknown SNI (a `kubernetes.io/tls`
    /// Secret, followed live); `None` or while it does not load: a generated self-signed one.
    pub default_tls_secret: Option<ObjectRef>,
    /// Serve plain HTTP/1.1 keep-alive requests on [`crate::fast::FastPath`] (everything else
    /// still goes through Pingora's `ProxyHttp` path); `false`: Pingora's path only.
    pub http1_fast_path: bool,
    /// Serve HTTP/2 streams to HTTP/1.1 endpoints on the fast path too (only with
    /// `http1_fast_path`).
    pub http2_fast_path: bool,
    /// `--external-name-refresh`: how often ExternalName Services' names are looked up again.
    pub external_name_refresh: Duration,
    /// Pingora's `ServerConf::work_stealing`: one multi-thread tokio runtime whose threads
    /// steal each other's tasks (`true`, the default), or one current-thread runtime per thread,
    /// each keeping the connections it accepted, like nginx's workers (`false`). bench/gateway:
    /// HTTP/1.1 the same within noise, HTTP/2 0.68–1.01× without stealing (docs/benchmarks.md,
    /// 2026-12-06).
    pub work_stealing: bool,
    /// `--client-body-timeout`: the longest wait of one request body read before a 408
    /// ([`crate::proxy::CLIENT_BODY_TIMEOUT`]).
    pub client_body_timeout: Duration,
}

/// Starts the gateway and serves until the process is told to stop (never returns on success).
pub fn run(settings: Settings) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("discovery")
        .enable_all()
        .build()
        .context("cannot build the discovery runtime")?;

    // Probes answer from the start: alive, not ready until the first table is published.
    let (mut registry, health) = (observe::registry("ingress-gateway"), Health::default());
    // Ready also needs the listeners, which Pingora binds in `run_forever`, after the first sync.
    let listening = health.gate("listeners");
    let metrics = Metrics::register(&mut registry);
    let _metrics_server = start_metrics(&runtime, &settings, Arc::new(registry), health.clone())?;

    let kinds = [
        Kind::Ingress,
        Kind::IngressClass,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Secret,
    ];
    let source = runtime
        .block_on(source::start(&settings.source, &kinds))
        .context("cannot start the resource source")?;
    info!(
        standalone = source.standalone,
        "waiting for the first complete list of every kind"
    );
    runtime.block_on(source.resources.wait_synced());

    // Serve nothing until the first configuration is in place.
    let published = Published::default();
    let mut discovery = Discovery::new(
        source.resources,
        source.status,
        settings.publish_service.clone(),
        published.clone(),
        Observers {
            metrics: metrics.clone(),
            events: source.events,
            health,
        },
    )
    .with_default_tls_secret(settings.default_tls_secret.clone())
    .with_external_name_refresh(settings.external_name_refresh);
    // Routes and certificates only; status writes (API calls) happen in the task, off the start path.
    info_span!("discovery").in_scope(|| discovery.publish());
    runtime.spawn(discovery.run().instrument(info_span!("discovery")));

    let default_cert = Arc::new(tls::default_certificate().context("default certificate")?);
    let resolver = Arc::new(CertResolver::new(published.certs.clone(), default_cert));

    let upgrade_sock = settings
        .upgrade_sock
        .to_str()
        .context("--upgrade-sock must be valid UTF-8")?
        .to_string();
    let conf = ServerConf {
        upgrade_sock,
        threads: settings.threads.max(1),
        work_stealing: settings.work_stealing,
        grace_period_seconds: Some(GRACE_PERIOD_SECONDS),
        graceful_shutdown_timeout_seconds: Some(SHUTDOWN_TIMEOUT_SECONDS),
        // Upper bound of Pingora's retry loop; `Gateway::fail_to_connect` decides each retry.
        max_retries: crate::proxy::MAX_TRIES,
        // Idle upstream keep-alive connections per worker thread (Pingora keeps one LRU of
        // this × threads); sized above peak concurrency so bursts reuse instead of reconnecting.
        upstream_keepalive_pool_size: crate::proxy::UPSTREAM_KEEPALIVE_POOL_SIZE,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: settings.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    if settings.upgrade {
        info!(upgrade_sock = %settings.upgrade_sock.display(), "waiting for the listening sockets of the old process (send it SIGQUIT)");
    }
    // With `upgrade`, this receives the listeners from the old process (or exits the process
    // with status 1 when none arrive within Pingora's 5 tries, 1 s apart).
    server.bootstrap();

    let gateway = Gateway::new(published.routes.clone(), metrics.clone())
        .with_access_log(settings.access_log)
        .with_client_body_timeout(settings.client_body_timeout);
    // Paths are ignored once a resolver is set (`TlsSettings::set_cert_resolver` docs).
    let mut tls_settings =
        TlsSettings::intermediate("", "").map_err(|e| anyhow::anyhow!("TLS settings: {e}"))?;
    tls_settings.set_cert_resolver(resolver);
    tls_settings.enable_h2();
    let (http_addr, https_addr) = (
        settings.http_addr.to_string(),
        settings.https_addr.to_string(),
    );
    if settings.http1_fast_path {
        let proxy = pingora::proxy::http_proxy(&server.configuration, gateway);
        let app = FastPath::new(
            proxy,
            published.routes.clone(),
            metrics,
            settings.access_log,
            settings.work_stealing,
        )
        .with_client_body_timeout(settings.client_body_timeout)
        .with_http2(settings.http2_fast_path);
        let mut service = Service::new("ingress-gateway".to_string(), app);
        service.add_listener(plain_http_listener(&http_addr));
        service.add_listener(https_listener(&https_addr, tls_settings));
        server.add_service(service);
    } else {
        let mut proxy = pingora::proxy::http_proxy_service_with_name(
            &server.configuration,
            gateway,
            "ingress-gateway",
        );
        proxy.add_listener(plain_http_listener(&http_addr));
        proxy.add_listener(https_listener(&https_addr, tls_settings));
        server.add_service(proxy);
    }

    runtime.spawn(open_when_accepting(settings.http_addr, listening));
    info!(http = %settings.http_addr, https = %settings.https_addr, upgraded = settings.upgrade, http1_fast_path = settings.http1_fast_path, http2_fast_path = settings.http2_fast_path, work_stealing = settings.work_stealing, "ingress-gateway serving");
    // The discovery runtime lives as long as this frame, which `run_forever` never leaves.
    let _runtime = runtime;
    server.run_forever()
}

/// How often [`open_when_accepting`] tries to connect.
const LISTENER_PROBE_INTERVAL: Duration = Duration::from_millis(5);

/// Opens `gate` once a TCP connection to `addr` (the HTTP listener; an unspecified address is
/// tried on loopback) succeeds. Both listeners belong to one Pingora service, which binds all of
/// its listeners before it accepts on any (`Service::start_service`), so the HTTPS one is bound
/// too; it is not probed because a connection closed before the TLS handshake is logged as an
/// error. With `--upgrade` the sockets come from the old process and already accept.
async fn open_when_accepting(addr: SocketAddr, gate: observe::ReadyGate) {
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    while tokio::net::TcpStream::connect(target).await.is_err() {
        tokio::time::sleep(LISTENER_PROBE_INTERVAL).await;
    }
    gate.open();
}

/// The plain-HTTP listener, without Pingora's L4 read buffer (64 KiB per connection by default,
/// allocated zeroed when the connection's task starts; its write buffer, 1,460 bytes, stays).
///
/// Both HTTP/1 paths read into buffers of their own (the fast path's request buffer, Pingora's
/// header and body buffers), so the L4 buffer only added a copy per read and a 64 KiB `memset`
/// per connection: 5.3% of the gateway's CPU with a new TCP connection per request
/// (`bench/gateway/run.sh --profile` with `PROFILE_LOAD=connect`; `docs/benchmarks.md`,
/// 2026-12-07 (e)). Reads go to the socket, as nginx's do. The HTTPS listener has no standing
/// buffer either, only one while data streams in ([`https_listener`]).
fn plain_http_listener(addr: &str) -> ListenerConfig {
    ListenerConfig::tcp(addr).l4_buffer(L4BufferSettings {
        read: Some(0),
        write: None,
        read_ahead: false,
    })
}

/// The HTTPS listener, without Pingora's standing L4 read buffer but with a read-ahead buffer
/// while data streams in (`read_ahead`, a patch in `vendor/pingora-core`): rustls reads from
/// the socket into its own deframing buffer, 4 KiB at a time (up to a whole TLS record while one
/// is incomplete), so without any buffer under it a large request body takes many reads.
///
/// The standing 64 KiB buffer is allocated zeroed for every connection. Fresh from the OS its
/// pages stay untouched, but memory reused after other connections closed is zeroed in full, so
/// the RSS of a gateway whose TLS connections come and go grew with every round: 2,000 idle
/// HTTPS connections, closed, opened again, three times: 25 → 63 → 82 KiB per connection, never
/// given back; without it 17.9 KiB each round. Without any buffer, a 256 KiB upload
/// (`bench/gateway/run.sh --scenarios upload`) took 21 reads instead of 6 and 5–8% more CPU per
/// MiB. The read-ahead buffer (64 KiB, not zeroed) is allocated after a read fills rustls'
/// buffer (more is waiting) and freed once the socket has nothing more, so small requests and
/// idle connections never hold one. `docs/benchmarks.md`, Gateway, 2026-12-07 (f) and (g).
fn https_listener(addr: &str, tls: TlsSettings) -> ListenerConfig {
    ListenerConfig::tcp(addr)
        .tls(tls)
        .l4_buffer(L4BufferSettings {
            read: Some(0),
            write: None,
            read_ahead: true,
        })
}

/// Starts `/metrics`, `/healthz` and `/readyz` on `--metrics-addr`. Normally a failed bind is
/// fatal. A process started with `--upgrade` finds the address still held by the old process, so
/// on `AddrInUse` it serves without the endpoint and retries in the background every 250 ms for
/// [`UPGRADE_METRICS_RETRY`] (the old process releases it when it exits).
///
/// Returns the running server, `None` when disabled or when the retry runs in the background.
fn start_metrics(
    runtime: &tokio::runtime::Runtime,
    settings: &Settings,
    registry: Arc<prometheus_client::registry::Registry>,
    health: Health,
) -> anyhow::Result<Option<observe::Server>> {
    let Some(addr) = settings.metrics_addr.0 else {
        return Ok(None);
    };
    match runtime.block_on(observe::serve(addr, registry.clone(), health.clone())) {
        Ok(server) => Ok(Some(server)),
        Err(e) if settings.upgrade && e.kind() == std::io::ErrorKind::AddrInUse => {
            warn!(%addr, "metrics address still held by the old process; retrying until it exits");
            runtime.spawn(async move {
                let deadline = tokio::time::Instant::now() + UPGRADE_METRICS_RETRY;
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    match observe::serve(addr, registry.clone(), health.clone()).await {
                        Ok(server) => {
                            info!(%addr, "metrics endpoint serving");
                            // Held for the life of the process.
                            let _server = server;
                            std::future::pending::<()>().await;
                        }
                        Err(e) if tokio::time::Instant::now() >= deadline => {
                            tracing::error!(%addr, error = %e, "metrics endpoint not started");
                            return;
                        }
                        Err(_) => {}
                    }
                }
            });
            Ok(None)
        }
        Err(e) => Err(e).context("cannot start the metrics endpoint"),
    }
}

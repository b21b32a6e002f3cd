//! Start-up wiring: source, first configuration, discovery task, Pingora server with the HTTP
//! and HTTPS listeners. Everything here runs once; errors are fatal (`anyhow`).
//!
//! Two runtimes: a small tokio runtime owns the resource source and the discovery task, and
//! Pingora runs its own per-service runtimes for the listeners. They share only the `ArcSwap`s.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use drawbridge_resources::observe::{self, Health, MetricsAddr};
use drawbridge_resources::source::{self, Kind, SourceArgs};
use pingora::listeners::tls::TlsSettings;
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use tracing::{Instrument, info, info_span};

use crate::config::ObjectRef;
use crate::discovery::{Discovery, Observers, Published};
use crate::metrics::Metrics;
use crate::proxy::Gateway;
use crate::tls::{self, CertResolver};

/// Seconds Pingora keeps accepting after SIGTERM (lets endpoints and load balancers notice).
pub const GRACE_PERIOD_SECONDS: u64 = 5;

/// Seconds Pingora then waits for in-flight requests before exiting.
pub const SHUTDOWN_TIMEOUT_SECONDS: u64 = 10;

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
    let metrics = Metrics::register(&mut registry);
    let _metrics_server = runtime
        .block_on(observe::serve_if(
            settings.metrics_addr,
            registry,
            health.clone(),
        ))
        .context("cannot start the metrics endpoint")?;

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
    );
    // Routes and certificates only; status writes (API calls) happen in the task, off the start path.
    info_span!("discovery").in_scope(|| discovery.publish());
    runtime.spawn(discovery.run().instrument(info_span!("discovery")));

    let default_cert = Arc::new(tls::default_certificate().context("default certificate")?);
    let resolver = Arc::new(CertResolver::new(published.certs.clone(), default_cert));

    let conf = ServerConf {
        threads: settings.threads.max(1),
        grace_period_seconds: Some(GRACE_PERIOD_SECONDS),
        graceful_shutdown_timeout_seconds: Some(SHUTDOWN_TIMEOUT_SECONDS),
        // Upper bound of Pingora's retry loop; `Gateway::fail_to_connect` decides each retry.
        max_retries: crate::proxy::MAX_TRIES,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Gateway::new(published.routes.clone(), metrics).with_access_log(settings.access_log),
        "ingress-gateway",
    );
    proxy.add_tcp(&settings.http_addr.to_string());
    // Paths are ignored once a resolver is set (`TlsSettings::set_cert_resolver` docs).
    let mut tls_settings =
        TlsSettings::intermediate("", "").map_err(|e| anyhow::anyhow!("TLS settings: {e}"))?;
    tls_settings.set_cert_resolver(resolver);
    tls_settings.enable_h2();
    proxy.add_tls_with_settings(&settings.https_addr.to_string(), None, tls_settings);
    server.add_service(proxy);

    info!(http = %settings.http_addr, https = %settings.https_addr, "ingress-gateway serving");
    // The discovery runtime lives as long as this frame, which `run_forever` never leaves.
    let _runtime = runtime;
    server.run_forever()
}

//! `lb-controller`: see the crate docs.

use anyhow::Context;
use clap::Parser;
use drawbridge_resources::observe::{self, Health, MetricsAddr};
use drawbridge_resources::source::{self, Kind, SourceArgs};
use drawbridge_resources::telemetry::{self, LogFormat};
use lb_controller::controller::{self, Settings};
use lb_controller::leader::{self, LeaderArgs, Leadership};
use lb_controller::observe::{Metrics, Observe};

/// Allocates external IPs from IPAddressPools to `type: LoadBalancer` Services and writes
/// `status.loadBalancer.ingress`.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// Also handle Services without `spec.loadBalancerClass` (class `drawbridge.dev/lb` is always handled).
    #[arg(long, env = "DRAWBRIDGE_CLASS_LESS", default_value_t = true, action = clap::ArgAction::Set)]
    class_less: bool,
    /// Log format.
    #[arg(long, env = "DRAWBRIDGE_LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,
    /// Serve /metrics, /healthz and /readyz here (`off` disables).
    #[arg(long, env = "DRAWBRIDGE_METRICS_ADDR", value_name = "ADDR", default_value = observe::LB_CONTROLLER_ADDR)]
    metrics_addr: MetricsAddr,
    #[command(flatten)]
    leader: LeaderArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.log_format);
    let (mut registry, health) = (observe::registry("lb-controller"), Health::default());
    let metrics = Metrics::register(&mut registry);
    let _metrics_server = observe::serve_if(args.metrics_addr, registry, health.clone())
        .await
        .context("starting the metrics endpoint")?;
    let source = source::start(&args.source, &[Kind::Service, Kind::IPAddressPool])
        .await
        .context("starting the resource source")?;
    let election = leader::start(&args.leader, source.standalone)
        .await
        .context("starting leader election")?;
    let settings = Settings {
        class_less: args.class_less,
    };
    tokio::select! {
        () = controller::run(
            source.resources,
            source.status,
            settings,
            election.subscribe(),
            Observe::new(metrics, source.events, health.clone()),
        ) => {}
        // Mark the shutdown before `select!` drops the controller loop (and its liveness guard).
        () = async { shutdown_signal().await; health.shutting_down() } => tracing::info!("shutting down"),
    }
    election.step_down().await;
    Ok(())
}

/// SIGTERM (Kubernetes stopping the Pod) or Ctrl-C.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => term.recv().await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

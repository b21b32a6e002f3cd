//! `lb-controller`: see the crate docs.

use anyhow::Context;
use clap::Parser;
use drawbridge_resources::observe::{self, Health, MetricsAddr};
use drawbridge_resources::source::{self, Kind, SourceArgs};
use drawbridge_resources::telemetry::{self, LogFormat};
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use lb_controller::announce::{AnnotationWriter, KubeAnnotationWriter};
use lb_controller::claim_store::{ClaimStore, DirClaims, KubeClaims, MemoryClaims};
use lb_controller::controller::{self, Claims, Namespaces, Settings};
use lb_controller::leader::{self, LeaderArgs, Leadership};
use lb_controller::observe::{Metrics, Observe};
use lb_controller::status::MetadataAnnotationWriter;

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
    /// Elect one announcing node per LoadBalancer IP and write the Service annotation
    /// `drawbridge.dev/announcing-node` (read by node-programmer's ARP/NDP responder). Needs the
    /// L2Announcement CRD installed. Standalone mode: Nodes, EndpointSlices and L2Announcements
    /// come from the manifest directory and the annotation is written to the state directory
    /// (node-programmer must read the same `--state-dir`).
    #[arg(long, env = "DRAWBRIDGE_L2_ANNOUNCEMENT", default_value_t = true, action = clap::ArgAction::Set)]
    l2_announcement: bool,
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
    let announce = args.l2_announcement;
    let mut kinds = vec![Kind::Service, Kind::IPAddressPool];
    if announce {
        kinds.extend([Kind::Node, Kind::EndpointSlice, Kind::L2Announcement]);
    }
    let source = source::start(&args.source, &kinds)
        .await
        .context("starting the resource source")?;
    let election = leader::start(&args.leader, source.standalone)
        .await
        .context("starting leader election")?;
    let settings = Settings {
        class_less: args.class_less,
    };
    let mut announcer: Option<Arc<dyn AnnotationWriter>> = None;
    let (claims, namespaces): (Arc<dyn ClaimStore>, Namespaces) =
        match (source.standalone, &args.source.state_dir) {
            (true, Some(state_dir)) => {
                if announce {
                    announcer = Some(Arc::new(MetadataAnnotationWriter::new(
                        source.metadata.clone(),
                    )));
                }
                (
                    Arc::new(DirClaims::new(state_dir).context("opening the claim directory")?),
                    standalone_namespaces(&args.source),
                )
            }
            (true, None) => {
                tracing::warn!("no --state-dir: IPAddressClaims live in memory only");
                if announce {
                    tracing::warn!(
                        "no --state-dir: the announcing-node annotation lives in this process \
                         only (other processes cannot see it)"
                    );
                    announcer = Some(Arc::new(MetadataAnnotationWriter::new(
                        source.metadata.clone(),
                    )));
                }
                (
                    Arc::new(MemoryClaims::default()),
                    standalone_namespaces(&args.source),
                )
            }
            (false, _) => {
                let client = kube::Client::try_default()
                    .await
                    .context("building a Kubernetes client for IPAddressClaims")?;
                // Namespace labels for serviceAllocation.namespaceSelector.
                let (store, writer) = reflector::store();
                let stream = watcher(kube::Api::all(client.clone()), watcher::Config::default())
                    .default_backoff()
                    .reflect(writer);
                tokio::spawn(stream.for_each(|event| async move {
                    if let Err(error) = event {
                        tracing::warn!(%error, "Namespace watch failed; retrying with backoff");
                    }
                }));
                if announce {
                    announcer = Some(Arc::new(KubeAnnotationWriter::new(client.clone())));
                }
                (Arc::new(KubeClaims::new(client)), Namespaces::Store(store))
            }
        };
    tokio::select! {
        () = controller::run_announcing(
            source.resources,
            source.status,
            Claims::new(claims),
            namespaces,
            settings,
            election.subscribe(),
            Observe::new(metrics, source.events, health.clone()),
            announcer,
        ) => {}
        // Mark the shutdown before `select!` drops the controller loop (and its liveness guard).
        () = async { shutdown_signal().await; health.shutting_down() } => tracing::info!("shutting down"),
    }
    election.step_down().await;
    Ok(())
}

/// Standalone mode: Namespace labels (for `serviceAllocation.namespaceSelector`) from the
/// manifest directory, read once at start.
fn standalone_namespaces(args: &SourceArgs) -> Namespaces {
    match &args.manifests {
        Some(dir) => Namespaces::from_manifests(dir, args.state_dir.as_deref()),
        None => Namespaces::Unknown,
    }
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

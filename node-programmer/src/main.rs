//! `node-programmer`: one per node; programs table `ip drawbridge` from Services + EndpointSlices.

use anyhow::Context as _;
use clap::Parser;
use drawbridge_resources::observe::{self, Health, MetricsAddr};
use drawbridge_resources::source::{self, Kind, SourceArgs};
use drawbridge_resources::telemetry::{self, LogFormat};
use node_programmer::apply::NftCli;
use node_programmer::model::{IpFamily, NodeContext};
use node_programmer::nftables::NftProxier;
use node_programmer::render::Options;
use node_programmer::sync::{self, Metrics, NodePortPolicy, Observers, Programmer, Proxier};
use tracing::{Instrument as _, info, info_span};

/// Turns Services + EndpointSlices into the nftables table `ip drawbridge` on this node.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// This node's name: endpoints whose `nodeName` equals it are local (externalTrafficPolicy /
    /// internalTrafficPolicy Local). Usually the downward API's `spec.nodeName`.
    #[arg(
        long,
        env = "DRAWBRIDGE_NODE_NAME",
        required_unless_present = "cleanup"
    )]
    node_name: Option<String>,

    #[command(flatten)]
    source: SourceArgs,

    /// Delete table `ip drawbridge` (no error if absent) and exit.
    #[arg(long, env = "DRAWBRIDGE_CLEANUP")]
    cleanup: bool,

    /// Log output format.
    #[arg(long, env = "DRAWBRIDGE_LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,

    /// `nftables`: program Service rules. `none`: program nothing (kube-proxy keeps doing it),
    /// delete table `ip drawbridge` if a previous run left it, and stay up for health/metrics.
    #[arg(long, env = "DRAWBRIDGE_PROXY_MODE", value_enum, default_value_t)]
    proxy_mode: ProxyMode,

    /// IP families to program: one table each (`ip drawbridge`, `ip6 drawbridge`); dual-stack is
    /// two independent proxiers, as kube-proxy runs them (service-proxy.md §1.17).
    #[arg(
        long,
        env = "DRAWBRIDGE_IP_FAMILIES",
        value_delimiter = ',',
        default_value = "ipv4,ipv6"
    )]
    ip_families: Vec<Family>,

    /// Pod CIDRs of the cluster (kube-proxy `--cluster-cidr` with `--detect-local-mode
    /// ClusterCIDR`): traffic from them is pod traffic. Enables masquerading off-cluster
    /// ClusterIP traffic and the pod short-circuit of externalTrafficPolicy=Local. Empty = no
    /// detector.
    #[arg(long, env = "DRAWBRIDGE_CLUSTER_CIDR", value_delimiter = ',')]
    cluster_cidr: Vec<ipnet::IpNet>,

    /// Where NodePorts are accepted: `primary` (the Node's InternalIPs; every non-loopback local
    /// address until the Node is known), `all` (every local address except loopback), or a
    /// comma-separated list of CIDRs (local addresses inside them). Never 127.0.0.1.
    #[arg(long, env = "DRAWBRIDGE_NODEPORT_ADDRESSES", default_value = "primary")]
    nodeport_addresses: NodePortPolicy,

    /// Serve /metrics, /healthz and /readyz here (`off` disables).
    #[arg(long, env = "DRAWBRIDGE_METRICS_ADDR", value_name = "ADDR", default_value = observe::NODE_PROGRAMMER_ADDR)]
    metrics_addr: MetricsAddr,

    /// Answer ARP / NDP for the LoadBalancer IPs whose `drawbridge.dev/announcing-node`
    /// annotation names this node, on these interfaces (comma list; empty: L2 announcement off).
    #[arg(
        long,
        env = "DRAWBRIDGE_L2_INTERFACES",
        value_delimiter = ',',
        value_name = "IF[,IF]"
    )]
    l2_interfaces: Vec<String>,
}

/// `--ip-families` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    /// Table `ip drawbridge`.
    Ipv4,
    /// Table `ip6 drawbridge`.
    Ipv6,
}

/// Who programs Service rules on this node (`--proxy-mode`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
enum ProxyMode {
    /// node-programmer owns table `ip drawbridge`.
    #[default]
    Nftables,
    /// Another proxy (kube-proxy) does; see deploy/overlays/keep-kube-proxy.
    None,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.log_format);

    if args.cleanup {
        NftCli::new()
            .delete_table()
            .context("deleting table ip drawbridge")?;
        info!("table ip drawbridge deleted");
        return Ok(());
    }
    let node_name = args.node_name.context("--node-name is required")?;
    let (mut registry, health) = (observe::registry("node-programmer"), Health::default());
    let metrics = Metrics::register(&mut registry);
    let _metrics_server = observe::serve_if(args.metrics_addr, registry, health.clone())
        .await
        .context("starting the metrics endpoint")?;
    if args.proxy_mode == ProxyMode::None {
        NftCli::new()
            .delete_table()
            .context("deleting table ip drawbridge")?;
        info!(node = %node_name, "--proxy-mode none: table ip drawbridge removed; programming no Service rules");
        health.set_ready();
        // Nothing to sync; SIGTERM ends the process.
        std::future::pending::<()>().await;
    }
    let source = source::start(
        &args.source,
        &[Kind::Service, Kind::EndpointSlice, Kind::Node],
    )
    .await
    .context("starting the resource source")?;
    if !args.l2_interfaces.is_empty() {
        let l2 = node_programmer::l2::run(
            source.resources.clone(),
            node_name.clone(),
            args.l2_interfaces,
        );
        tokio::spawn(l2.instrument(info_span!("l2", node = %node_name)));
    }
    let span = info_span!("sync", node = %node_name, standalone = source.standalone);
    let observers = Observers {
        events: source.events,
        health,
        after_sync: None,
    };
    let proxiers: Vec<Box<dyn Proxier>> = args
        .ip_families
        .iter()
        .map(|family| {
            let family = match family {
                Family::Ipv4 => IpFamily::V4,
                Family::Ipv6 => IpFamily::V6,
            };
            let options = Options {
                family,
                local_traffic: args.cluster_cidr.clone(),
                ..Options::default()
            };
            Box::new(NftProxier::new(options, NftCli::new())) as Box<dyn Proxier>
        })
        .collect();
    let programmer = Programmer::with_proxiers(NodeContext::named(node_name), proxiers)
        .with_metrics(metrics)
        .with_nodeport_policy(args.nodeport_addresses);
    sync::run(source.resources, programmer, observers)
        .instrument(span)
        .await
        .context("sync loop ended")
}

//! `node-programmer`: one per node; programs Service rules (nftables tables `ip drawbridge` /
//! `ip6 drawbridge`, or `DRAWBRIDGE-*` iptables chains) from Services + EndpointSlices, serves
//! kube-proxy's health endpoints and healthCheckNodePorts, cleans stale UDP conntrack entries,
//! and answers ARP/NDP for announced LoadBalancer IPs.

use anyhow::Context as _;
use clap::Parser;
use drawbridge_resources::ObjectKey;
use drawbridge_resources::events::{Event, EventRecorder};
use drawbridge_resources::observe::{self, Health, MetricsAddr};
use drawbridge_resources::source::{self, Kind, SourceArgs};
use drawbridge_resources::telemetry::{self, LogFormat};
use node_programmer::apply::NftCli;
use node_programmer::conntrack::{self, NetlinkConntrack};
use node_programmer::health::{self, ProxyHealth, ServiceHealthServers};
use node_programmer::iptables::{self, Flavour, IptablesCli};
use node_programmer::l2::gossip;
use node_programmer::model::{IpFamily, NodeContext};
use node_programmer::nftables::NftProxier;
use node_programmer::render::Options;
use node_programmer::sync::{
    self, IptablesBackend, Metrics, NodePortPolicy, Observers, Programmer, Proxier,
};
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::{Instrument as _, info, info_span};
use tracing::{debug, warn};

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

    /// Remove everything node-programmer ever installed — tables `ip drawbridge` and
    /// `ip6 drawbridge`, every `DRAWBRIDGE-*` iptables chain and jump rule (both families, both
    /// iptables flavours) — and exit.
    #[arg(long, env = "DRAWBRIDGE_CLEANUP")]
    cleanup: bool,

    /// Log output format.
    #[arg(long, env = "DRAWBRIDGE_LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,

    /// `nftables`: program Service rules in nftables. `iptables`: in iptables chains (hosts without
    /// usable nftables). `none`: program nothing (kube-proxy keeps doing it), and stay up for L2
    /// announcements, health and metrics. Every mode removes the other modes' rules at start.
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

    /// The cluster's Service CIDRs (the API server's `--service-cluster-ip-range`): with nftables,
    /// traffic to an unallocated address inside them is dropped, not routed on. Empty = off.
    #[arg(long, env = "DRAWBRIDGE_SERVICE_CIDR", value_delimiter = ',')]
    service_cidr: Vec<ipnet::IpNet>,

    /// Where NodePorts are accepted: `primary` (the Node's InternalIPs; every non-loopback local
    /// address until the Node is known), `all` (every local address except loopback), or a
    /// comma-separated list of CIDRs (local addresses inside them). Never 127.0.0.1.
    #[arg(long, env = "DRAWBRIDGE_NODEPORT_ADDRESSES", default_value = "primary")]
    nodeport_addresses: NodePortPolicy,

    /// kube-proxy's proxy health server (`/healthz`, `/livez`; what cloud LBs probe for
    /// externalTrafficPolicy=Cluster) — `off` disables.
    #[arg(long, env = "DRAWBRIDGE_HEALTHZ_ADDR", default_value = health::DEFAULT_HEALTHZ_ADDR)]
    healthz_addr: String,

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

    /// Gossip failure detection for L2 announcement: UDP `IP:PORT` to bind, also the address the
    /// other node-programmers reach this one at (the node's InternalIP, e.g. `192.0.2.11:7946`).
    /// Unset: off — answers follow `drawbridge.dev/announcing-node` only. Set: answers follow
    /// `drawbridge.dev/announcing-candidates` and the membership view (README, L2 section).
    #[arg(long, env = "DRAWBRIDGE_GOSSIP_BIND", value_name = "IP:PORT")]
    gossip_bind: Option<SocketAddr>,

    /// Gossip seeds (comma list of `IP:PORT`), in addition to the Nodes' InternalIPs at the
    /// `--gossip-bind` port.
    #[arg(
        long,
        env = "DRAWBRIDGE_GOSSIP_PEERS",
        value_delimiter = ',',
        value_name = "IP:PORT[,IP:PORT]"
    )]
    gossip_peers: Vec<SocketAddr>,

    /// Exactly half of an IP's candidates reachable (two-node clusters): `answer` (failover
    /// works; a gossip-only partition of two leaves both answering) or `stop` (never two
    /// answering; no failover between two nodes until the API server drops one).
    #[arg(long, env = "DRAWBRIDGE_GOSSIP_TIE_BREAK", value_enum, default_value_t)]
    gossip_tie_break: TieBreak,
}

/// `--gossip-tie-break` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
enum TieBreak {
    /// Answer on a tie.
    #[default]
    Answer,
    /// Stay silent on a tie.
    Stop,
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
    /// node-programmer owns the `DRAWBRIDGE-*` chains of tables nat and filter
    /// (`iptables-legacy-restore` when installed, else `iptables-restore`).
    Iptables,
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
            .context("deleting tables ip/ip6 drawbridge")?;
        iptables::cleanup_everywhere(None).context("deleting DRAWBRIDGE-* iptables chains")?;
        info!("tables ip/ip6 drawbridge and DRAWBRIDGE-* iptables chains deleted");
        return Ok(());
    }
    let node_name = args.node_name.context("--node-name is required")?;
    let (mut registry, health) = (observe::registry("node-programmer"), Health::default());
    let metrics = Metrics::register(&mut registry);
    let proxy_health = ProxyHealth::new(health::DEFAULT_HEALTH_TIMEOUT);
    proxy_health.register(&mut registry);
    let l2_metrics = node_programmer::l2::Metrics::register(&mut registry);
    let _metrics_server = observe::serve_if(args.metrics_addr, registry, health.clone())
        .await
        .context("starting the metrics endpoint")?;
    let _healthz_server = match args.healthz_addr.as_str() {
        "off" | "" => None,
        addr => {
            let addr: SocketAddr = addr.parse().context("--healthz-addr")?;
            Some(
                health::serve(addr, proxy_health.clone())
                    .await
                    .context("starting the proxy health server")?,
            )
        }
    };

    // Switching modes removes the other modes' rules (kube-proxy does the same at start).
    if args.proxy_mode != ProxyMode::Nftables {
        NftCli::new()
            .delete_table()
            .context("deleting tables ip/ip6 drawbridge")?;
    }
    if args.proxy_mode != ProxyMode::Iptables
        && let Err(error) = iptables::cleanup_everywhere(None)
    {
        warn!(%error, "removing DRAWBRIDGE-* iptables chains left by an earlier run failed");
    }

    let source = source::start(
        &args.source,
        &[Kind::Service, Kind::EndpointSlice, Kind::Node],
    )
    .await
    .context("starting the resource source")?;
    if !args.l2_interfaces.is_empty() {
        let gossip = args.gossip_bind.map(|bind| gossip::Settings {
            node: node_name.clone(),
            bind,
            peers: args.gossip_peers.clone(),
            timing: gossip::Timing::default(),
            answer_on_tie: args.gossip_tie_break == TieBreak::Answer,
        });
        let l2 = node_programmer::l2::run(
            source.resources.clone(),
            node_name.clone(),
            args.l2_interfaces,
            gossip,
            l2_metrics,
        );
        tokio::spawn(l2.instrument(info_span!("l2", node = %node_name)));
    }
    if args.proxy_mode == ProxyMode::None {
        info!(node = %node_name, "--proxy-mode none: programming no Service rules");
        health.set_ready();
        proxy_health.updated();
        // Nothing to sync; SIGTERM ends the process.
        std::future::pending::<()>().await;
    }

    let span = info_span!("sync", node = %node_name, standalone = source.standalone);
    let after_sync = follow_syncs(proxy_health.clone(), source.events.clone());
    let observers = Observers {
        events: source.events,
        health,
        after_sync: Some(after_sync),
        proxy_health: Some(proxy_health),
    };
    let families: Vec<IpFamily> = args
        .ip_families
        .iter()
        .map(|family| match family {
            Family::Ipv4 => IpFamily::V4,
            Family::Ipv6 => IpFamily::V6,
        })
        .collect();
    let flavour = Flavour::detect();
    let proxiers: Vec<Box<dyn Proxier>> = families
        .into_iter()
        .map(|family| match args.proxy_mode {
            ProxyMode::Iptables => {
                Box::new(IptablesBackend::new(IptablesCli::new(flavour), family))
                    as Box<dyn Proxier>
            }
            _ => {
                let options = Options {
                    family,
                    local_traffic: args.cluster_cidr.clone(),
                    service_cidrs: args.service_cidr.clone(),
                    ..Options::default()
                };
                Box::new(NftProxier::new(options, NftCli::new())) as Box<dyn Proxier>
            }
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

/// What follows each sync (kube-proxy `syncProxyRules` epilogue, service-proxy.md §2.5 step 7):
/// the healthCheckNodePort servers follow the new tables (bind failures become Warning Events
/// `FailedToStartServiceHealthcheck`), and after a successful sync stale UDP conntrack entries
/// are deleted. Runs on its own task, fed the latest wanted state through a watch channel, so a
/// slow conntrack dump never holds up the rules.
fn follow_syncs(
    proxy_health: ProxyHealth,
    events: Arc<dyn EventRecorder>,
) -> sync::AfterSync<Box<dyn Proxier>> {
    let (tx, mut rx) = tokio::sync::watch::channel((Vec::new(), Vec::new(), false));
    tokio::spawn(
        async move {
            let mut servers = ServiceHealthServers::new(vec![], proxy_health);
            while rx.changed().await.is_ok() {
                let (wanted, udp, succeeded) = rx.borrow_and_update().clone();
                for failure in servers.sync(&wanted).await {
                    warn!(%failure, "healthCheckNodePort server not started");
                    let key =
                        ObjectKey::namespaced(Kind::Service, &failure.namespace, &failure.name);
                    events
                        .publish(Event::warning(
                            key,
                            "FailedToStartServiceHealthcheck",
                            "Listen",
                            failure.to_string(),
                        ))
                        .await;
                }
                if succeeded && !udp.is_empty() {
                    let cleaned = tokio::task::spawn_blocking(move || {
                        let mut table = NetlinkConntrack::open()?;
                        conntrack::cleanup(&mut table, &udp)
                    })
                    .await;
                    match cleaned {
                        Ok(Ok(report)) => debug!(?report, "UDP conntrack cleanup"),
                        Ok(Err(error)) => warn!(%error, "UDP conntrack cleanup failed"),
                        Err(error) => warn!(%error, "UDP conntrack cleanup task failed"),
                    }
                }
            }
        }
        .instrument(info_span!("after-sync")),
    );
    Box::new(move |programmer, _resources, succeeded| {
        let tables = programmer.tables();
        let wanted = sync::service_health(tables);
        let udp = sync::udp_service_ports(tables);
        tx.send_replace((wanted, udp, succeeded));
    })
}

//! `node-programmer`: one per node; programs table `ip drawbridge` from Services + EndpointSlices.

use anyhow::Context as _;
use clap::Parser;
use drawbridge_resources::source::{self, Kind, SourceArgs};
use drawbridge_resources::telemetry::{self, LogFormat};
use node_programmer::apply::NftCli;
use node_programmer::sync::{self, Programmer};
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
    let source = source::start(&args.source, &[Kind::Service, Kind::EndpointSlice])
        .await
        .context("starting the resource source")?;
    let span = info_span!("sync", node = %node_name, standalone = source.standalone);
    sync::run(source.resources, Programmer::new(node_name, NftCli::new()))
        .instrument(span)
        .await
        .context("sync loop ended")
}

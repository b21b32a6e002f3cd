//! `lb-controller`: see the crate docs.

use anyhow::Context;
use clap::Parser;
use drawbridge_resources::source::{self, Kind, SourceArgs};
use drawbridge_resources::telemetry::{self, LogFormat};
use lb_controller::controller::{self, Settings};

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.log_format);
    let source = source::start(&args.source, &[Kind::Service, Kind::IPAddressPool])
        .await
        .context("starting the resource source")?;
    controller::run(source.resources, source.status, Settings { class_less: args.class_less }).await;
    Ok(())
}

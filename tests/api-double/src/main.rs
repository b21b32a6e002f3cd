//! `api-double`: the Kubernetes API server double as a process, for multi-process tests.
//!
//! Prints `listening on http://ADDR` once serving, then runs until interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use drawbridge_api_double::ApiDouble;

#[derive(Parser, Debug)]
#[command(about = "A small Kubernetes API server double over plain HTTP")]
struct Args {
    /// Address to serve on (port 0 picks a free one).
    #[arg(long, env = "API_DOUBLE_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write a kubeconfig pointing at the double here.
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
    /// Multi-document YAML files of objects to create at start-up.
    #[arg(long, num_args = 1..)]
    load: Vec<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let double = ApiDouble::start_on(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    for file in &args.load {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        double
            .load_yaml(&text)
            .with_context(|| format!("loading {}", file.display()))?;
    }
    if let Some(path) = &args.kubeconfig_out {
        std::fs::write(path, double.kubeconfig_yaml())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("listening on {}", double.url());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}

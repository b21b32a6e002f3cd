//! `api-double`: the Kubernetes API server double as a process, for multi-process tests.
//!
//! Prints `listening on http://ADDR` once serving (after any `listening as NAME on http://ADDR`
//! lines for `--listen-as` listeners), then runs until interrupted. Control it over HTTP through
//! the `/_double/...` endpoints (crate docs).

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
    /// Extra listener NAME=ADDR serving the same state; its requests are recorded with
    /// `client: NAME` (one per component under test tells their API calls apart). Repeatable.
    #[arg(long, value_parser = parse_listen_as)]
    listen_as: Vec<(String, SocketAddr)>,
}

fn parse_listen_as(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=ADDR, got {s:?}"))?;
    let addr = addr.parse().map_err(|e| format!("{addr:?}: {e}"))?;
    Ok((name.to_string(), addr))
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
    for (name, addr) in &args.listen_as {
        let bound = double
            .listen_as(name, *addr)
            .await
            .with_context(|| format!("binding {addr} for {name}"))?;
        println!("listening as {name} on http://{bound}");
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

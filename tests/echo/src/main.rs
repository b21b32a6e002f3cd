//! `drawbridge-echo --listen ADDR [--listen ADDR ...] --pod-name NAME`: the lab's pod.
//! See the library docs for what it answers.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;

/// Command line of the echo pod.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (repeatable), e.g. `0.0.0.0:8080`.
    #[arg(
        long = "listen",
        required = true,
        env = "ECHO_LISTEN",
        value_delimiter = ','
    )]
    listen: Vec<SocketAddr>,
    /// Name reported in every answer (`pod` field and `x-pod` header); the lab uses the
    /// namespace name.
    #[arg(long, env = "POD_NAME")]
    pod_name: String,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let pod_name: Arc<str> = Arc::from(args.pod_name);
    let mut servers = tokio::task::JoinSet::new();
    for addr in args.listen {
        let listener = drawbridge_echo::bind(addr)
            .map_err(|e| std::io::Error::new(e.kind(), format!("listen on {addr}: {e}")))?;
        eprintln!("{pod_name}: listening on {}", listener.local_addr()?);
        servers.spawn(drawbridge_echo::serve(listener, Arc::clone(&pod_name)));
    }
    // Any listener failing is fatal: a half-serving pod would confuse the tests.
    match servers.join_next().await {
        Some(Ok(result)) => result,
        Some(Err(join)) => Err(std::io::Error::other(join)),
        None => Ok(()),
    }
}

//! `crdgen`: prints drawbridge's CustomResourceDefinitions (generated from the Rust types by kube's
//! `CustomResource` derive + schemars) as multi-document YAML on stdout.
//!
//! ```text
//!  resources::crd::crds() ──serde_yaml──> stdout ──> deploy/base/crds.yaml (committed)
//! ```
//!
//! `resources/tests/crds_fresh.rs` fails when the committed copy is stale; regenerate it with
//! `cargo run -p drawbridge-resources --bin crdgen > deploy/base/crds.yaml`.
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    let yaml = match drawbridge_resources::crd::crds_yaml() {
        Ok(yaml) => yaml,
        Err(error) => {
            eprintln!("crdgen: rendering CRDs as YAML: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = std::io::stdout().lock().write_all(yaml.as_bytes()) {
        eprintln!("crdgen: writing to stdout: {error}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

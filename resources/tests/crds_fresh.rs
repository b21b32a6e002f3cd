//! The committed `deploy/base/crds.yaml` must equal what `crdgen` prints from the Rust types.

use std::path::Path;

#[test]
fn committed_crds_match_the_rust_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/crds.yaml");
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let generated = drawbridge_resources::crd::crds_yaml().expect("CRDs serialize as YAML");
    assert!(
        committed == generated,
        "deploy/base/crds.yaml is stale (the CRD types in resources/src/crd.rs changed); \
         run `cargo run -p drawbridge-resources --bin crdgen > deploy/base/crds.yaml` and commit it"
    );
}

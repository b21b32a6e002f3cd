//! Bench driver for the iptables backend (`bench/dataplane`, rule set `node-programmer-iptables`).
//!
//! ```text
//! ip netns exec dbb-node iptables_bench SERVICES ENDPOINTS CHANGES [legacy|nft]
//! ```
//!
//! Builds the same Services × endpoints as `bench/dataplane/gen.py manifests` (namespace `bench`,
//! `svc-NNNNN`, ClusterIP 198.18.0.0 + i + 1, endpoints from 198.19.0.0/16 in blocks, port name
//! `http`) as API objects in memory, then in the current network namespace:
//! 1. full sync: `ServiceTable::build` + `IptablesProxier::sync` (render, jump rules, stale-chain
//!    scan, `iptables-restore --noflush`), timed;
//! 2. CHANGES one-Service changes: the EndpointSlice of Service N/2 flips its last endpoint
//!    (gen.py `changed_endpoints`), and each time the whole world is rebuilt and synced (a partial
//!    restore), timed from the change to the restore's exit;
//!
//! and prints one JSON object on stdout. The rules stay in place for the first-packet
//! measurement (bench.py deletes the namespace afterwards).

use std::cell::RefCell;
use std::time::Instant;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use node_programmer::iptables::{
    self, Family, Flavour, IptablesCli, IptablesProxier, Runner, SyncKind, Table,
};
use node_programmer::model::ServiceTable;
use serde_json::json;

const CLUSTER_IP_BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
const ENDPOINT_BASE: u32 = u32::from_be_bytes([198, 19, 0, 0]);

fn ip(n: u32) -> String {
    std::net::Ipv4Addr::from(n).to_string()
}

/// gen.py `endpoints(i, e)`.
fn endpoints(i: u32, e: u32) -> Vec<(String, u32)> {
    let per_block = 65534 / e;
    let (block, slot) = (i / per_block, i % per_block);
    (0..e)
        .map(|j| (ip(ENDPOINT_BASE + slot * e + j + 1), 8080 + block))
        .collect()
}

/// gen.py `changed_endpoints(i, e, generation)`.
fn changed_endpoints(i: u32, e: u32, generation: u32) -> Vec<(String, u32)> {
    let mut eps = endpoints(i, e);
    if generation % 2 == 1
        && let Some(last) = eps.last_mut()
    {
        last.0 = ip(ENDPOINT_BASE + 0xFF00 + (i % 250) + 1);
    }
    eps
}

fn service(i: u32) -> Service {
    let cip = ip(CLUSTER_IP_BASE + i + 1);
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "bench", "name": format!("svc-{i:05}")},
        "spec": {"type": "ClusterIP", "clusterIP": cip, "clusterIPs": [cip],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]},
    }))
    .expect("Service")
}

fn slice(i: u32, eps: &[(String, u32)]) -> EndpointSlice {
    let name = format!("svc-{i:05}");
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "bench", "name": format!("{name}-abcde"),
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": eps[0].1, "protocol": "TCP"}],
        "endpoints": eps.iter().enumerate().map(|(k, (addr, _))| json!({
            "addresses": [addr], "nodeName": format!("node-{}", (i as usize + k) % 100),
            "conditions": {"ready": true, "serving": true, "terminating": false},
        })).collect::<Vec<_>>(),
    }))
    .expect("EndpointSlice")
}

/// Times each restore and keeps its size.
struct Timed {
    inner: IptablesCli,
    /// (seconds, bytes) per restore.
    restores: RefCell<Vec<(f64, usize)>>,
}

impl Runner for Timed {
    fn restore(&self, family: Family, text: &str) -> iptables::Result<()> {
        let t = Instant::now();
        let r = self.inner.restore(family, text);
        self.restores
            .borrow_mut()
            .push((t.elapsed().as_secs_f64(), text.len()));
        r
    }
    fn save(&self, family: Family, table: Table) -> iptables::Result<String> {
        self.inner.save(family, table)
    }
    fn run(&self, family: Family, table: Table, args: &[String]) -> iptables::Result<bool> {
        self.inner.run(family, table, args)
    }
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(q * (sorted.len() - 1) as f64 + 0.5) as usize]
}

fn vm_hwm_kb() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: iptables_bench SERVICES ENDPOINTS CHANGES [legacy|nft]";
    let n: u32 = args.get(1).ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let e: u32 = args.get(2).ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let changes: u32 = args.get(3).ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let flavour = match args.get(4).map(String::as_str) {
        Some("nft") => Flavour::Nft,
        Some("legacy") => Flavour::Legacy,
        _ => Flavour::detect(),
    };

    let services: Vec<Service> = (0..n).map(service).collect();
    let mut slices: Vec<EndpointSlice> = (0..n).map(|i| slice(i, &endpoints(i, e))).collect();
    let mut proxier = IptablesProxier::new(
        Timed {
            inner: IptablesCli::new(flavour),
            restores: RefCell::new(vec![]),
        },
        Family::V4,
    );

    let t0 = Instant::now();
    let (table, _) = ServiceTable::build(&services, &slices, "bench");
    let build_s = t0.elapsed().as_secs_f64();
    let kind = proxier.sync(&table)?;
    anyhow::ensure!(kind == SyncKind::Full, "first sync was {kind:?}");
    let full_s = t0.elapsed().as_secs_f64();
    let (full_restore_s, full_bytes) = proxier
        .runner()
        .restores
        .borrow()
        .last()
        .copied()
        .unwrap_or_default();
    drop(table);

    let target = n / 2;
    let mut totals = vec![];
    let mut restore_times = vec![];
    let mut bytes = 0;
    for g in 1..=changes {
        let t = Instant::now();
        slices[target as usize] = slice(target, &changed_endpoints(target, e, g));
        let (table, _) = ServiceTable::build(&services, &slices, "bench");
        let kind = proxier.sync(&table)?;
        anyhow::ensure!(kind == SyncKind::Partial, "change {g} was {kind:?}");
        totals.push(t.elapsed().as_secs_f64());
        let (r, b) = proxier
            .runner()
            .restores
            .borrow()
            .last()
            .copied()
            .unwrap_or_default();
        restore_times.push(r);
        bytes = b;
    }
    totals.sort_by(f64::total_cmp);
    restore_times.sort_by(f64::total_cmp);
    // Leave the last change undone only if it was odd; either way the last Service is untouched.
    println!(
        "{}",
        json!({
            "flavour": format!("{flavour:?}"),
            "services": n, "endpoints": e,
            "full_sync_s": full_s, "build_s": build_s, "full_restore_s": full_restore_s,
            "full_bytes": full_bytes,
            "changes": {
                "n": totals.len(),
                "p50_ms": pct(&totals, 0.5) * 1e3, "p99_ms": pct(&totals, 0.99) * 1e3,
                "restore_p50_ms": pct(&restore_times, 0.5) * 1e3,
                "restore_p99_ms": pct(&restore_times, 0.99) * 1e3,
                "bytes": bytes,
            },
            "vmhwm_kb": vm_hwm_kb(),
        })
    );
    Ok(())
}

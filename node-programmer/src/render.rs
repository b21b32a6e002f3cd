//! Pure: [`ServiceTable`] → nft text for table `ip drawbridge`, in kube-proxy's nftables layout
//! (service-proxy.md §2; kube-proxy `pkg/proxy/nftables/proxier.go`).
//!
//! ```text
//!  nat-prerouting / nat-output (-100) ─> services ─┬─ ip daddr . proto . port  vmap @service-ips
//!                                                  └─ fib daddr type local ...  vmap @service-nodeports
//!      @service-ips:  ClusterIP ─> goto service-H-ns/svc/proto/port   (or local-… for iTP=Local)
//!                     LB IP / externalIP ─> goto external-H-… ─> mark-for-masquerade? ─> service-/local-…
//!      service-H-…:   numgen random mod N vmap { i : goto endpoint-H-…__ip/port }
//!      endpoint-H-…:  ip saddr <ep> jump mark-for-masquerade ; dnat to <ep>:<port>
//!  filter-input/forward/output (-110), filter-output-post-dnat (-90):
//!      @no-endpoint-services / @no-endpoint-nodeports ─> goto reject-chain | drop ; cluster-ips-check
//!  nat-postrouting (100) ─> masquerading: marked 0x4000 ─> masquerade fully-random
//! ```
//!
//! Output is deterministic (everything sorted) so that "same world" means "same text", which is
//! how the sync loop decides there is nothing to do. Chains are emitted before whatever refers to
//! them (endpoint → policy → external → maps → dispatch → base chains), so the text never depends
//! on nft resolving forward references.
//!
//! Not rendered yet (no inputs for them): `firewall-*` / `loadBalancerSourceRanges`, ClientIP
//! affinity sets, the ServiceCIDR drop in `cluster-ips-check`, the pod-source short-circuit of
//! eTP=Local external chains (needs a local-traffic detector), `nodeport-ips` (NodePorts are
//! accepted on every local address except 127.0.0.0/8).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

use crate::model::{Endpoint, Protocol, ServicePort, ServicePortName, ServiceTable, TrafficPolicy};

/// The nftables family we program (IPv4 only for now, §1.17).
pub const FAMILY: &str = "ip";
/// The one table node-programmer owns; nothing outside it is ever touched.
pub const TABLE: &str = "drawbridge";
/// Masquerade mark bit (kube-proxy default, bit 14; §1.13).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// kube-proxy's `chainNameBaseLengthMax` (knftables `NameLengthMax` 256 minus a 16-char prefix).
const CHAIN_NAME_BASE_MAX: usize = 240;

/// Priorities as numbers: nft 1.0.6 refuses the symbolic `dstnat` on the input/output hooks
/// (lab-notes.md).
const PRIORITY_DSTNAT: i32 = -100;
const PRIORITY_SRCNAT: i32 = 100;

/// The whole transaction for one sync: create-if-missing, delete, recreate — one atomic
/// `nft -f -` input that replaces table `ip drawbridge` and touches no other table.
///
/// Existing connections survive: their NAT bindings live in conntrack, not in the table.
pub fn transaction(table: &ServiceTable) -> String {
    format!(
        "add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n{}",
        ruleset(table)
    )
}

/// The transaction that removes everything node-programmer installed (no error if absent).
pub fn cleanup_transaction() -> String {
    format!("add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n")
}

/// The `table ip drawbridge { … }` block for `table` (what the golden files hold).
pub fn ruleset(table: &ServiceTable) -> String {
    let maps = Maps::build(table);
    let mut out = String::new();
    let o = &mut out;
    line(o, 0, &format!("table {FAMILY} {TABLE} {{"));
    line(
        o,
        1,
        "comment \"drawbridge node-programmer: Services and EndpointSlices; rewritten on every change\"",
    );

    // Helpers (§2.3).
    chain(
        o,
        "mark-for-masquerade",
        &[format!("mark set mark or {MASQUERADE_MARK:#x}")],
    );
    chain(o, "reject-chain", &["reject".to_string()]);
    chain(
        o,
        "masquerading",
        &[
            format!("mark and {MASQUERADE_MARK:#x} == 0 return"),
            format!("mark set mark xor {MASQUERADE_MARK:#x}"),
            "masquerade fully-random".to_string(),
        ],
    );

    // Per-endpoint chains (§2.4): every endpoint reachable under any policy, once.
    for port in &table.ports {
        let mut endpoints: Vec<&Endpoint> = port
            .cluster_endpoints
            .iter()
            .chain(&port.local_endpoints)
            .collect();
        endpoints.sort();
        endpoints.dedup();
        for endpoint in endpoints {
            chain(
                o,
                &endpoint_chain(&port.id, endpoint),
                &[
                    // Hairpin: a pod reaching itself through its Service must see a reply from
                    // the Service IP, so SNAT it.
                    format!("ip saddr {} jump mark-for-masquerade", endpoint.ip),
                    format!(
                        "meta l4proto {} dnat to {}:{}",
                        port.id.protocol.as_str(),
                        endpoint.ip,
                        endpoint.port
                    ),
                ],
            );
        }
    }

    // Policy chains: spread new connections at random over the selected endpoints.
    for port in &table.ports {
        if uses_cluster_chain(port) {
            chain(
                o,
                &policy_chain("service", &port.id),
                &[numgen(&port.id, &port.cluster_endpoints)],
            );
        }
        if uses_local_chain(port) {
            chain(
                o,
                &policy_chain("local", &port.id),
                &[numgen(&port.id, &port.local_endpoints)],
            );
        }
    }

    // External chains (§1.6): LB IPs, externalIPs and NodePorts enter here.
    for port in &table.ports {
        if uses_external_chain(port) {
            chain(
                o,
                &policy_chain("external", &port.id),
                &external_rules(port),
            );
        }
    }

    // Maps and sets (§2.2).
    set(
        o,
        "cluster-ips",
        "ipv4_addr",
        "Active ClusterIPs",
        maps.cluster_ips.iter().map(|ip| ip.to_string()),
    );
    vmap(
        o,
        "service-ips",
        "ipv4_addr . inet_proto . inet_service",
        "ClusterIP, ExternalIP and LoadBalancer IP traffic",
        &maps.service_ips,
    );
    vmap(
        o,
        "service-nodeports",
        "inet_proto . inet_service",
        "NodePort traffic",
        &maps.service_nodeports,
    );
    vmap(
        o,
        "no-endpoint-services",
        "ipv4_addr . inet_proto . inet_service",
        "vmap to drop or reject packets to services with no endpoints",
        &maps.no_endpoint_services,
    );
    vmap(
        o,
        "no-endpoint-nodeports",
        "inet_proto . inet_service",
        "vmap to drop or reject packets to service nodeports with no endpoints",
        &maps.no_endpoint_nodeports,
    );

    // Dispatch (§2.3).
    chain(
        o,
        "services",
        &[
            "ip daddr . meta l4proto . th dport vmap @service-ips".to_string(),
            "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"
                .to_string(),
        ],
    );
    chain(
        o,
        "service-endpoints-check",
        &["ip daddr . meta l4proto . th dport vmap @no-endpoint-services".to_string()],
    );
    chain(
        o,
        "nodeport-endpoints-check",
        &[
            "ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports"
                .to_string(),
        ],
    );
    // Reject traffic to an active ClusterIP on a port no Service defines (it was not DNATed).
    // kube-proxy's second rule, dropping unallocated IPs of the ServiceCIDRs, needs a ServiceCIDR
    // source we do not have yet.
    chain(o, "cluster-ips-check", &["ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"".to_string()]);

    // Base chains (§2.1). Filter chains run before DNAT so they see the Service address; every
    // filter jump is for new connections only. `reject` is not allowed in prerouting on kernels
    // before 5.9, hence input/forward/output.
    let filter = PRIORITY_DSTNAT - 10;
    base_chain(
        o,
        "filter-input",
        "filter",
        "input",
        filter,
        &[
            "ct state new jump nodeport-endpoints-check",
            "ct state new jump service-endpoints-check",
        ],
    );
    base_chain(
        o,
        "filter-forward",
        "filter",
        "forward",
        filter,
        &[
            "ct state new jump service-endpoints-check",
            "ct state new jump cluster-ips-check",
        ],
    );
    base_chain(
        o,
        "filter-output",
        "filter",
        "output",
        filter,
        &["ct state new jump service-endpoints-check"],
    );
    base_chain(
        o,
        "filter-output-post-dnat",
        "filter",
        "output",
        PRIORITY_DSTNAT + 10,
        &["ct state new jump cluster-ips-check"],
    );
    base_chain(
        o,
        "nat-prerouting",
        "nat",
        "prerouting",
        PRIORITY_DSTNAT,
        &["jump services"],
    );
    base_chain(
        o,
        "nat-output",
        "nat",
        "output",
        PRIORITY_DSTNAT,
        &["jump services"],
    );
    base_chain(
        o,
        "nat-postrouting",
        "nat",
        "postrouting",
        PRIORITY_SRCNAT,
        &["jump masquerading"],
    );

    line(o, 0, "}");
    out
}

// === chain names (kube-proxy `servicePortChainNameBase` / `hashAndTruncate`) ===

/// `<H>-<base>`: H = first 8 chars of base32(sha256(base)), the whole truncated to 240 chars.
/// The hash keeps truncated names unique and makes near-identical names visually distinct.
pub fn hash_and_truncate(base: &str) -> String {
    let digest = Sha256::digest(base.as_bytes());
    let encoded = base32::encode(base32::Alphabet::Rfc4648 { padding: true }, &digest);
    let mut name = format!("{}-{}", &encoded[..8], base);
    if name.len() > CHAIN_NAME_BASE_MAX {
        // Kubernetes names and IPs are ASCII, so byte truncation is a char boundary.
        name.truncate(CHAIN_NAME_BASE_MAX - 3);
        name.push_str("...");
    }
    name
}

/// `<prefix>-<H>-ns/svc/proto/portname`, prefix `service` (Cluster policy), `local` or `external`.
pub fn policy_chain(prefix: &str, id: &ServicePortName) -> String {
    let base = format!(
        "{}/{}/{}/{}",
        id.namespace,
        id.name,
        id.protocol.as_str(),
        id.port
    );
    format!("{prefix}-{}", hash_and_truncate(&base))
}

/// `endpoint-<H>-ns/svc/proto/portname__ip/port`.
pub fn endpoint_chain(id: &ServicePortName, endpoint: &Endpoint) -> String {
    let base = format!(
        "{}/{}/{}/{}__{}/{}",
        id.namespace,
        id.name,
        id.protocol.as_str(),
        id.port,
        endpoint.ip,
        endpoint.port
    );
    format!("endpoint-{}", hash_and_truncate(&base))
}

// === which chains exist (kube-proxy syncProxyRules) ===

fn uses_cluster_chain(port: &ServicePort) -> bool {
    port.uses_cluster_endpoints() && !port.cluster_endpoints.is_empty()
}

fn uses_local_chain(port: &ServicePort) -> bool {
    port.uses_local_endpoints() && !port.local_endpoints.is_empty()
}

/// The external chain exists whenever the port has any endpoint, even none for its external
/// policy, to keep the host short-circuit rules (kube-proxy `usesExternalTrafficChain`).
fn uses_external_chain(port: &ServicePort) -> bool {
    port.has_endpoints && port.externally_accessible()
}

fn internal_chain(port: &ServicePort) -> String {
    match port.internal_policy {
        TrafficPolicy::Cluster => policy_chain("service", &port.id),
        TrafficPolicy::Local => policy_chain("local", &port.id),
    }
}

fn external_rules(port: &ServicePort) -> Vec<String> {
    let cluster = policy_chain("service", &port.id);
    let mut rules = Vec::new();
    match port.external_policy {
        // The endpoint may be on another node: SNAT so the reply comes back through us.
        TrafficPolicy::Cluster => rules.push("jump mark-for-masquerade".to_string()),
        TrafficPolicy::Local => {
            // kube-proxy first short-circuits traffic from local pods to the cluster chain; that
            // needs a pod-CIDR / interface detector, which drawbridge does not have yet.
            // Host-originated traffic: the LB IP may be local and become the source, so SNAT it,
            // and serve it from the cluster set as if it had gone out to the LB and back.
            rules.push("fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\"".to_string());
            rules.push(format!(
                "fib saddr type local goto {cluster} comment \"short-circuit local traffic\""
            ));
        }
    }
    if port.has_external_endpoints() {
        let target = match port.external_policy {
            TrafficPolicy::Cluster => cluster,
            TrafficPolicy::Local => policy_chain("local", &port.id),
        };
        rules.push(format!("goto {target}"));
    }
    // Else (eTP=Local, no local endpoint): fall through un-NATed; @no-endpoint-services drops it.
    rules
}

fn numgen(id: &ServicePortName, endpoints: &[Endpoint]) -> String {
    let arms: Vec<String> = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{i} : goto {}", endpoint_chain(id, e)))
        .collect();
    format!(
        "numgen random mod {} vmap {{ {} }}",
        endpoints.len(),
        arms.join(", ")
    )
}

// === map contents ===

/// Map key `ip . proto . port`, ordered numerically.
type IpKey = (Ipv4Addr, Protocol, u16);
/// Map key `proto . nodePort`.
type PortKey = (Protocol, u16);

#[derive(Default)]
struct Maps {
    cluster_ips: BTreeSet<Ipv4Addr>,
    service_ips: Vec<(String, String)>,
    service_nodeports: Vec<(String, String)>,
    no_endpoint_services: Vec<(String, String)>,
    no_endpoint_nodeports: Vec<(String, String)>,
}

impl Maps {
    /// Element placement, as kube-proxy `syncProxyRules` (§1.11 table).
    fn build(table: &ServiceTable) -> Maps {
        let mut service_ips: BTreeMap<IpKey, String> = BTreeMap::new();
        let mut no_endpoint_services: BTreeMap<IpKey, String> = BTreeMap::new();
        let mut service_nodeports: BTreeMap<PortKey, String> = BTreeMap::new();
        let mut no_endpoint_nodeports: BTreeMap<PortKey, String> = BTreeMap::new();
        let mut cluster_ips = BTreeSet::new();

        for port in &table.ports {
            let proto = port.id.protocol;
            let (internal_verdict, external_verdict) = if !port.has_endpoints {
                ("goto reject-chain", "goto reject-chain")
            } else {
                ("drop", "drop")
            };
            let external = format!("goto {}", policy_chain("external", &port.id));

            cluster_ips.insert(port.cluster_ip);
            let key = (port.cluster_ip, proto, port.port);
            if port.has_internal_endpoints() {
                service_ips.insert(key, format!("goto {}", internal_chain(port)));
            } else {
                no_endpoint_services.insert(key, internal_verdict.to_string());
            }

            for ip in port.external_ips.iter().chain(&port.load_balancer_ips) {
                let key = (*ip, proto, port.port);
                if port.has_endpoints {
                    service_ips.insert(key, external.clone());
                }
                if !port.has_external_endpoints() {
                    no_endpoint_services.insert(key, external_verdict.to_string());
                }
            }

            if let Some(node_port) = port.node_port {
                let key = (proto, node_port);
                if port.has_endpoints {
                    service_nodeports.insert(key, external.clone());
                }
                if !port.has_external_endpoints() {
                    no_endpoint_nodeports.insert(key, external_verdict.to_string());
                }
            }
        }

        // Typed keys sort numerically (as text, "10.0.0.10" would sort before "10.0.0.9").
        let ip_elements = |m: BTreeMap<IpKey, String>| -> Vec<(String, String)> {
            m.into_iter()
                .map(|((ip, proto, port), v)| (format!("{ip} . {} . {port}", proto.as_str()), v))
                .collect()
        };
        let port_elements = |m: BTreeMap<PortKey, String>| -> Vec<(String, String)> {
            m.into_iter()
                .map(|((proto, port), v)| (format!("{} . {port}", proto.as_str()), v))
                .collect()
        };
        Maps {
            cluster_ips,
            service_ips: ip_elements(service_ips),
            service_nodeports: port_elements(service_nodeports),
            no_endpoint_services: ip_elements(no_endpoint_services),
            no_endpoint_nodeports: port_elements(no_endpoint_nodeports),
        }
    }
}

// === text helpers ===

fn line(out: &mut String, indent: usize, text: &str) {
    for _ in 0..indent {
        out.push('\t');
    }
    out.push_str(text);
    out.push('\n');
}

fn chain(out: &mut String, name: &str, rules: &[String]) {
    out.push('\n');
    line(out, 1, &format!("chain {name} {{"));
    for rule in rules {
        line(out, 2, rule);
    }
    line(out, 1, "}");
}

fn base_chain(out: &mut String, name: &str, kind: &str, hook: &str, priority: i32, rules: &[&str]) {
    out.push('\n');
    line(out, 1, &format!("chain {name} {{"));
    line(
        out,
        2,
        &format!("type {kind} hook {hook} priority {priority}; policy accept;"),
    );
    for rule in rules {
        line(out, 2, rule);
    }
    line(out, 1, "}");
}

fn set(
    out: &mut String,
    name: &str,
    ty: &str,
    comment: &str,
    elements: impl Iterator<Item = String>,
) {
    out.push('\n');
    line(out, 1, &format!("set {name} {{"));
    line(out, 2, &format!("type {ty}"));
    line(out, 2, &format!("comment \"{comment}\""));
    let elements: Vec<String> = elements.collect();
    if !elements.is_empty() {
        line(out, 2, "elements = {");
        for element in elements {
            line(out, 3, &format!("{element},"));
        }
        line(out, 2, "}");
    }
    line(out, 1, "}");
}

/// A verdict map with `(key, verdict)` elements, already in order.
fn vmap(out: &mut String, name: &str, ty: &str, comment: &str, elements: &[(String, String)]) {
    out.push('\n');
    line(out, 1, &format!("map {name} {{"));
    line(out, 2, &format!("type {ty} : verdict"));
    line(out, 2, &format!("comment \"{comment}\""));
    if !elements.is_empty() {
        line(out, 2, "elements = {");
        for (key, verdict) in elements {
            line(out, 3, &format!("{key} : {verdict},"));
        }
        line(out, 2, "}");
    }
    line(out, 1, "}");
}

#[cfg(test)]
mod tests;

//! Pure: [`ServiceTable`] → nft text for table `ip drawbridge`, in kube-proxy's nftables layout
//! (service-proxy.md §2; kube-proxy `pkg/proxy/nftables/proxier.go`), with one deliberate
//! departure: the policy chains pick an endpoint with one `numgen … goto` rule per endpoint
//! (kube-proxy iptables' `statistic --probability 1/(n-i)` spreading) instead of an anonymous
//! `numgen … vmap { … }`, which nft 1.0.6 loads superlinearly slowly (see `policy_rules`).
//!
//! ```text
//!  nat-prerouting / nat-output (-100) ─> services ─┬─ ip daddr . proto . port  vmap @service-ips
//!                                                  └─ fib daddr type local ...  vmap @service-nodeports
//!      @service-ips:  ClusterIP ─> goto service-H-ns/svc/proto/port   (or local-… for iTP=Local)
//!                     LB IP / externalIP ─> goto external-H-… ─> mark-for-masquerade? ─> service-/local-…
//!      service-H-…:   numgen random mod N 0 goto endpoint-H-…__ip_0/port ; … mod 2 0 … ; goto …_{N-1}
//!      endpoint-H-…:  ip saddr <ep> jump mark-for-masquerade ; dnat to <ep>:<port>
//!  filter-input/forward/output (-110), filter-output-post-dnat (-90):
//!      @no-endpoint-services / @no-endpoint-nodeports ─> goto reject-chain | drop ; cluster-ips-check
//!  nat-postrouting (100) ─> masquerading: marked 0x4000 ─> masquerade fully-random
//! ```
//!
//! Output is deterministic (everything sorted) so that "same world" means "same text", which is
//! how the sync loop decides there is nothing to do. Chains are emitted before whatever refers to
//! them (endpoint → policy → external → maps → dispatch → base chains), so the text never depends
//! on nft resolving forward references. No rule carries an anonymous set or map (`{ … }`);
//! only the named sets/maps do, which nft 1.0.6 loads in near-linear time.
//!
//! The text is written into one `String` sized up front ([`transaction`]); chain names are
//! hashed once per render.
//!
//! Not rendered yet (no inputs for them): `firewall-*` / `loadBalancerSourceRanges`, ClientIP
//! affinity sets, the ServiceCIDR drop in `cluster-ips-check`, the pod-source short-circuit of
//! eTP=Local external chains (needs a local-traffic detector), `nodeport-ips` (NodePorts are
//! accepted on every local address except 127.0.0.0/8).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

use crate::model::{Endpoint, Protocol, ServicePort, ServicePortName, ServiceTable, TrafficPolicy};

/// `write!` into the output `String` (which cannot fail): the text is built in one buffer, with
/// no intermediate `String` per line.
macro_rules! put {
    ($out:expr, $($arg:tt)*) => {
        $out.write_fmt(format_args!($($arg)*)).expect("writing to a String cannot fail")
    };
}
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
///
/// Written into one buffer sized up front: at 10,000 Services × 10 endpoints the text is ~27 MB,
/// and rendering it as a `ruleset` copied into a `format!` held it twice at the peak.
pub fn transaction(table: &ServiceTable) -> String {
    let mut out = String::with_capacity(estimated_len(table) + TRANSACTION_HEAD.len());
    out.push_str(TRANSACTION_HEAD);
    write_ruleset(&mut out, table);
    // The sync loop keeps the last applied text; give back the estimate's slack (in place).
    out.shrink_to_fit();
    out
}

/// Creates the table if missing (so the delete cannot fail), then deletes it.
const TRANSACTION_HEAD: &str = "add table ip drawbridge\ndelete table ip drawbridge\n";

/// The transaction that removes everything node-programmer installed (no error if absent).
pub fn cleanup_transaction() -> String {
    TRANSACTION_HEAD.to_string()
}

/// The `table ip drawbridge { … }` block for `table` (what the golden files hold).
pub fn ruleset(table: &ServiceTable) -> String {
    let mut out = String::with_capacity(estimated_len(table));
    write_ruleset(&mut out, table);
    out
}

/// Appends the `table ip drawbridge { … }` block to `out`.
fn write_ruleset(out: &mut String, table: &ServiceTable) {
    // Every chain name hashed once per sync (sha256 per name; three per port plus one per
    // endpoint, each used two or three times below).
    let names: Vec<PortChains> = table.ports.iter().map(PortChains::new).collect();
    let maps = Maps::build(table, &names);
    let o = out;
    put!(o, "table {FAMILY} {TABLE} {{\n");
    put!(
        o,
        "\tcomment \"drawbridge node-programmer: Services and EndpointSlices; rewritten on every change\"\n"
    );

    // Helpers (§2.3).
    chain(
        o,
        "mark-for-masquerade",
        &[&format!("mark set mark or {MASQUERADE_MARK:#x}")],
    );
    chain(o, "reject-chain", &["reject"]);
    chain(
        o,
        "masquerading",
        &[
            &format!("mark and {MASQUERADE_MARK:#x} == 0 return"),
            &format!("mark set mark xor {MASQUERADE_MARK:#x}"),
            "masquerade fully-random",
        ],
    );

    // Per-endpoint chains (§2.4): every endpoint reachable under any policy, once.
    for (port, names) in table.ports.iter().zip(&names) {
        let proto = port.id.protocol.as_str();
        for (endpoint, name) in &names.endpoints {
            open_chain(o, name);
            // Hairpin: a pod reaching itself through its Service must see a reply from the
            // Service IP, so SNAT it.
            put!(o, "\t\tip saddr {} jump mark-for-masquerade\n", endpoint.ip);
            put!(
                o,
                "\t\tmeta l4proto {proto} dnat to {}:{}\n",
                endpoint.ip,
                endpoint.port
            );
            close_chain(o);
        }
    }

    // Policy chains: spread new connections at random over the selected endpoints.
    for (port, names) in table.ports.iter().zip(&names) {
        if uses_cluster_chain(port) {
            policy_rules(o, &names.service, names, &port.cluster_endpoints);
        }
        if uses_local_chain(port) {
            policy_rules(o, &names.local, names, &port.local_endpoints);
        }
    }

    // External chains (§1.6): LB IPs, externalIPs and NodePorts enter here.
    for (port, names) in table.ports.iter().zip(&names) {
        if uses_external_chain(port) {
            open_chain(o, &names.external);
            external_rules(o, port, names);
            close_chain(o);
        }
    }

    // Maps and sets (§2.2).
    set(
        o,
        "cluster-ips",
        "ipv4_addr",
        "Active ClusterIPs",
        &maps.cluster_ips,
    );
    vmap(
        o,
        "service-ips",
        "ipv4_addr . inet_proto . inet_service",
        "ClusterIP, ExternalIP and LoadBalancer IP traffic",
        maps.service_ips.iter().map(|(k, v)| (IpKeyText(k), v)),
    );
    vmap(
        o,
        "service-nodeports",
        "inet_proto . inet_service",
        "NodePort traffic",
        maps.service_nodeports
            .iter()
            .map(|(k, v)| (PortKeyText(k), v)),
    );
    vmap(
        o,
        "no-endpoint-services",
        "ipv4_addr . inet_proto . inet_service",
        "vmap to drop or reject packets to services with no endpoints",
        maps.no_endpoint_services
            .iter()
            .map(|(k, v)| (IpKeyText(k), v)),
    );
    vmap(
        o,
        "no-endpoint-nodeports",
        "inet_proto . inet_service",
        "vmap to drop or reject packets to service nodeports with no endpoints",
        maps.no_endpoint_nodeports
            .iter()
            .map(|(k, v)| (PortKeyText(k), v)),
    );

    // Dispatch (§2.3).
    chain(
        o,
        "services",
        &[
            "ip daddr . meta l4proto . th dport vmap @service-ips",
            "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports",
        ],
    );
    chain(
        o,
        "service-endpoints-check",
        &["ip daddr . meta l4proto . th dport vmap @no-endpoint-services"],
    );
    chain(
        o,
        "nodeport-endpoints-check",
        &["ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports"],
    );
    // Reject traffic to an active ClusterIP on a port no Service defines (it was not DNATed).
    // kube-proxy's second rule, dropping unallocated IPs of the ServiceCIDRs, needs a ServiceCIDR
    // source we do not have yet.
    chain(
        o,
        "cluster-ips-check",
        &["ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""],
    );

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

    o.push_str("}\n");
}

/// An upper estimate of the rendered size, so the text is written into one allocation instead
/// of a chain of doubling reallocations (each briefly holding old + new). Counted from the
/// layout below with the longest IPv4 address and port; checked against the real size in tests.
fn estimated_len(table: &ServiceTable) -> usize {
    const FIXED: usize = 4096;
    table
        .ports
        .iter()
        .map(|port| {
            // `external-<H>-ns/svc/proto/port`, the longest policy chain name (protocol ≤ 4).
            let name =
                9 + 9 + port.id.namespace.len() + port.id.name.len() + port.id.port.len() + 7;
            // `endpoint-<H>-…__255.255.255.255/65535`.
            let endpoint_name = name + 23;
            let endpoints = port.cluster_endpoints.len() + port.local_endpoints.len();
            // Endpoint chain (its name, hairpin and DNAT rules) + its policy rule (name again).
            let per_endpoint = 2 * endpoint_name + 149;
            // Policy chain, ClusterIP element, cluster-ips element.
            let mut per_port = 2 * name + 70;
            if port.externally_accessible() {
                // Local and external chains and their rules, one element per external IP and
                // NodePort, in the served or the no-endpoint maps.
                let ips = port.external_ips.len() + port.load_balancer_ips.len() + 1;
                per_port += 4 * name + 250 + 2 * ips * (name + 40);
            }
            endpoints * per_endpoint + per_port
        })
        .sum::<usize>()
        + FIXED
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
    format!("{prefix}-{}", hash_and_truncate(&port_base(id)))
}

/// `endpoint-<H>-ns/svc/proto/portname__ip/port`.
pub fn endpoint_chain(id: &ServicePortName, endpoint: &Endpoint) -> String {
    let base = format!("{}__{}/{}", port_base(id), endpoint.ip, endpoint.port);
    format!("endpoint-{}", hash_and_truncate(&base))
}

/// kube-proxy `servicePortChainNameBase`: `ns/svc/proto/portname`.
fn port_base(id: &ServicePortName) -> String {
    format!(
        "{}/{}/{}/{}",
        id.namespace,
        id.name,
        id.protocol.as_str(),
        id.port
    )
}

/// The chain names of one Service port, each hashed once per render.
struct PortChains {
    /// `service-…`: Cluster-policy endpoint choice.
    service: String,
    /// `local-…`: Local-policy endpoint choice.
    local: String,
    /// `external-…`: entry for LB IPs, externalIPs and NodePorts.
    external: String,
    /// Every endpoint reachable under any policy (cluster ∪ local), sorted and deduplicated,
    /// with its `endpoint-…` chain name.
    endpoints: Vec<(Endpoint, String)>,
}

impl PortChains {
    fn new(port: &ServicePort) -> PortChains {
        // The three policy chains share one hash: kube-proxy hashes the base, not the prefix.
        let hashed = hash_and_truncate(&port_base(&port.id));
        let mut endpoints: Vec<&Endpoint> = port
            .cluster_endpoints
            .iter()
            .chain(&port.local_endpoints)
            .collect();
        endpoints.sort();
        endpoints.dedup();
        PortChains {
            service: format!("service-{hashed}"),
            local: format!("local-{hashed}"),
            external: format!("external-{hashed}"),
            endpoints: endpoints
                .into_iter()
                .map(|e| (*e, endpoint_chain(&port.id, e)))
                .collect(),
        }
    }

    fn endpoint(&self, endpoint: &Endpoint) -> &str {
        let i = self
            .endpoints
            .binary_search_by(|(e, _)| e.cmp(endpoint))
            .expect("every selected endpoint has a chain");
        &self.endpoints[i].1
    }

    /// The chain ClusterIP traffic goes to (iTP).
    fn internal(&self, port: &ServicePort) -> &str {
        match port.internal_policy {
            TrafficPolicy::Cluster => &self.service,
            TrafficPolicy::Local => &self.local,
        }
    }
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

fn external_rules(o: &mut String, port: &ServicePort, names: &PortChains) {
    let cluster = &names.service;
    match port.external_policy {
        // The endpoint may be on another node: SNAT so the reply comes back through us.
        TrafficPolicy::Cluster => put!(o, "\t\tjump mark-for-masquerade\n"),
        TrafficPolicy::Local => {
            // kube-proxy first short-circuits traffic from local pods to the cluster chain; that
            // needs a pod-CIDR / interface detector, which drawbridge does not have yet.
            // Host-originated traffic: the LB IP may be local and become the source, so SNAT it,
            // and serve it from the cluster set as if it had gone out to the LB and back.
            put!(
                o,
                "\t\tfib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\"\n"
            );
            put!(
                o,
                "\t\tfib saddr type local goto {cluster} comment \"short-circuit local traffic\"\n"
            );
        }
    }
    if port.has_external_endpoints() {
        let target = match port.external_policy {
            TrafficPolicy::Cluster => cluster,
            TrafficPolicy::Local => &names.local,
        };
        put!(o, "\t\tgoto {target}\n");
    }
    // Else (eTP=Local, no local endpoint): fall through un-NATed; @no-endpoint-services drops it.
}

/// A policy chain (`service-…` or `local-…`): a uniform random choice among `endpoints`, as one
/// rule per endpoint instead of kube-proxy's one anonymous verdict map.
///
/// For endpoints e_0 … e_{n-1}, rule i (i < n-1) is `numgen random mod (n-i) 0 goto <e_i>`: it
/// fires with probability 1/(n-i) among the packets that reach it, and the last rule is a plain
/// `goto <e_{n-1}>`. e_i is chosen with 1/(n-i) × Π_{j<i} (1 - 1/(n-j)) = 1/n (the product
/// telescopes to (n-i)/n), exactly kube-proxy's iptables `statistic --probability 1/(n-i)`
/// spreading. Each rule draws its own random number; the draws are independent, so the result is
/// the same uniform distribution as one draw into `numgen random mod n vmap { … }`.
///
/// This deliberately departs from kube-proxy's nftables layout (`numgen random mod n vmap
/// { 0 : goto …, … }`, one anonymous verdict map per chain) for nft 1.0.6's sake (Debian 12),
/// whose userspace spends superlinear time on anonymous sets and maps; the rules are the spreading
/// kube-proxy itself uses in iptables mode. Measured on this machine (service-proxy.md "Measured
/// on this machine"; docs/benchmarks.md "Dataplane"): 10,000 Services × 10 endpoints load in
/// ~275 s with the anonymous vmaps and in 5.8 s with these rules; at 30,000 the vmaps took more
/// than 300 s and these rules 25.5 s (node-programmer's own full sync at 10,000: 275 s → 11.3 s
/// on a loaded machine); the first-packet cost is the same (~12 µs p50). The endpoint chains
/// stay, so hairpin masquerade is exact and ClientIP affinity can be added as kube-proxy does it
/// (an `@affinity-…` check before these rules). A new connection evaluates up to n-1
/// numgen+cmp rules instead of one map lookup; conntrack handles every later packet.
fn policy_rules(o: &mut String, chain: &str, names: &PortChains, endpoints: &[Endpoint]) {
    open_chain(o, chain);
    let n = endpoints.len();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let target = names.endpoint(endpoint);
        let remaining = n - i;
        if remaining > 1 {
            // `mod K 0` is how nft lists `numgen random mod K == 0`; rendering the listed form
            // keeps our text and `nft list` output comparable.
            put!(o, "\t\tnumgen random mod {remaining} 0 goto {target}\n");
        } else {
            put!(o, "\t\tgoto {target}\n");
        }
    }
    close_chain(o);
}

// === map contents ===

/// Map key `ip . proto . port`, ordered numerically.
type IpKey = (Ipv4Addr, Protocol, u16);
/// Map key `proto . nodePort`.
type PortKey = (Protocol, u16);

/// `ip . proto . port`, as nft writes a concatenated key.
struct IpKeyText<'a>(&'a IpKey);

impl fmt::Display for IpKeyText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ip, proto, port) = self.0;
        write!(f, "{ip} . {} . {port}", proto.as_str())
    }
}

/// `proto . port`.
struct PortKeyText<'a>(&'a PortKey);

impl fmt::Display for PortKeyText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (proto, port) = self.0;
        write!(f, "{} . {port}", proto.as_str())
    }
}

/// A verdict-map value: a jump target or a fixed verdict. Borrowed names, so the maps hold no
/// copies of chain names.
#[derive(Clone, Copy)]
enum Verdict<'a> {
    Goto(&'a str),
    Drop,
}

impl fmt::Display for Verdict<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Goto(chain) => write!(f, "goto {chain}"),
            Verdict::Drop => f.write_str("drop"),
        }
    }
}

#[derive(Default)]
struct Maps<'a> {
    cluster_ips: BTreeSet<Ipv4Addr>,
    // Typed keys sort numerically (as text, "10.0.0.10" would sort before "10.0.0.9").
    service_ips: BTreeMap<IpKey, Verdict<'a>>,
    service_nodeports: BTreeMap<PortKey, Verdict<'a>>,
    no_endpoint_services: BTreeMap<IpKey, Verdict<'a>>,
    no_endpoint_nodeports: BTreeMap<PortKey, Verdict<'a>>,
}

impl<'a> Maps<'a> {
    /// Element placement, as kube-proxy `syncProxyRules` (§1.11 table). `names[i]` belongs to
    /// `table.ports[i]`.
    fn build(table: &ServiceTable, names: &'a [PortChains]) -> Maps<'a> {
        let mut maps = Maps::default();
        for (port, names) in table.ports.iter().zip(names) {
            let proto = port.id.protocol;
            let no_endpoint = if !port.has_endpoints {
                Verdict::Goto("reject-chain")
            } else {
                Verdict::Drop
            };
            let external = Verdict::Goto(&names.external);

            maps.cluster_ips.insert(port.cluster_ip);
            let key = (port.cluster_ip, proto, port.port);
            if port.has_internal_endpoints() {
                maps.service_ips
                    .insert(key, Verdict::Goto(names.internal(port)));
            } else {
                maps.no_endpoint_services.insert(key, no_endpoint);
            }

            for ip in port.external_ips.iter().chain(&port.load_balancer_ips) {
                let key = (*ip, proto, port.port);
                if port.has_endpoints {
                    maps.service_ips.insert(key, external);
                }
                if !port.has_external_endpoints() {
                    maps.no_endpoint_services.insert(key, no_endpoint);
                }
            }

            if let Some(node_port) = port.node_port {
                let key = (proto, node_port);
                if port.has_endpoints {
                    maps.service_nodeports.insert(key, external);
                }
                if !port.has_external_endpoints() {
                    maps.no_endpoint_nodeports.insert(key, no_endpoint);
                }
            }
        }
        maps
    }
}

// === text helpers ===

fn open_chain(out: &mut String, name: &str) {
    put!(out, "\n\tchain {name} {{\n");
}

fn close_chain(out: &mut String) {
    out.push_str("\t}\n");
}

fn chain(out: &mut String, name: &str, rules: &[&str]) {
    open_chain(out, name);
    for rule in rules {
        put!(out, "\t\t{rule}\n");
    }
    close_chain(out);
}

fn base_chain(out: &mut String, name: &str, kind: &str, hook: &str, priority: i32, rules: &[&str]) {
    open_chain(out, name);
    put!(
        out,
        "\t\ttype {kind} hook {hook} priority {priority}; policy accept;\n"
    );
    for rule in rules {
        put!(out, "\t\t{rule}\n");
    }
    close_chain(out);
}

fn set(out: &mut String, name: &str, ty: &str, comment: &str, elements: &BTreeSet<Ipv4Addr>) {
    put!(
        out,
        "\n\tset {name} {{\n\t\ttype {ty}\n\t\tcomment \"{comment}\"\n"
    );
    if !elements.is_empty() {
        out.push_str("\t\telements = {\n");
        for element in elements {
            put!(out, "\t\t\t{element},\n");
        }
        out.push_str("\t\t}\n");
    }
    out.push_str("\t}\n");
}

/// A verdict map with `(key, verdict)` elements, already in order.
fn vmap<K: fmt::Display, V: fmt::Display>(
    out: &mut String,
    name: &str,
    ty: &str,
    comment: &str,
    elements: impl ExactSizeIterator<Item = (K, V)>,
) {
    put!(
        out,
        "\n\tmap {name} {{\n\t\ttype {ty} : verdict\n\t\tcomment \"{comment}\"\n"
    );
    if elements.len() > 0 {
        out.push_str("\t\telements = {\n");
        for (key, verdict) in elements {
            put!(out, "\t\t\t{key} : {verdict},\n");
        }
        out.push_str("\t\t}\n");
    }
    out.push_str("\t}\n");
}

#[cfg(test)]
mod tests;

//! Pure: [`ServiceTable`] → nft text for table `ip drawbridge` (IPv4) or `ip6 drawbridge` (IPv6),
//! in kube-proxy's nftables layout (service-proxy.md §2; kube-proxy `pkg/proxy/nftables/proxier.go`),
//! with one deliberate departure: the policy chains pick an endpoint with one `numgen … goto` rule
//! per endpoint (kube-proxy iptables' `statistic --probability 1/(n-i)` spreading) instead of an
//! anonymous `numgen … vmap { … }`, which nft 1.0.6 loads superlinearly slowly (see `policy_rules`).
//!
//! ```text
//!  filter-prerouting / filter-output (-110) ─> firewall-check ─ @firewall-ips ─> firewall-H-… (source ranges)
//!  nat-prerouting / nat-output (-100) ─> services ─┬─ ip daddr . proto . port  vmap @service-ips
//!                                                  └─ fib daddr type local ...  vmap @service-nodeports
//!      @service-ips:  ClusterIP ─> goto service-H-ns/svc/proto/port   (or local-… for iTP=Local)
//!                     LB IP / externalIP ─> goto external-H-… ─> mark-for-masquerade? ─> service-/local-…
//!      service-H-…:   [ip saddr @affinity-… goto endpoint-…]* ; numgen random mod N 0 goto endpoint-… ; …
//!      endpoint-H-…:  ip saddr <ep> jump mark-for-masquerade ; [update @affinity-…] ; dnat to <ep>:<port>
//!  filter-input/forward/output (-110), filter-output-post-dnat (-90):
//!      @no-endpoint-services / @no-endpoint-nodeports ─> goto reject-chain | drop ; cluster-ips-check
//!  nat-postrouting (100) ─> masquerading: marked 0x4000 ─> masquerade fully-random
//! ```
//!
//! Two ways out:
//! - [`transaction`] / [`transaction_with`]: the whole table, replacing whatever is there (a full
//!   sync: first sync after start, after a failed transaction, after an option change);
//! - the per-port pieces ([`PortChains`], [`write_port_objects`]) and the map contents ([`Maps`])
//!   that `nftables::NftProxier` diffs against what it last applied for a partial sync
//!   (service-proxy.md §2.5).
//!
//! Output is deterministic (everything sorted) so that "same world" means "same text". Objects are
//! emitted before whatever refers to them (affinity sets → endpoint → policy → external/firewall →
//! maps → dispatch → base chains), so the text never depends on nft resolving forward references.
//! Per-Service rules carry no anonymous set or map except a `firewall-…` chain's source ranges
//! (one small set per Service with `loadBalancerSourceRanges`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::net::IpAddr;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::model::{
    Endpoint, IpFamily, Protocol, ServicePort, ServicePortName, ServiceTable, TrafficPolicy,
};

/// `write!` into the output `String` (which cannot fail): the text is built in one buffer, with
/// no intermediate `String` per line.
macro_rules! put {
    ($out:expr, $($arg:tt)*) => {
        $out.write_fmt(format_args!($($arg)*)).expect("writing to a String cannot fail")
    };
}
/// The nftables family of the IPv4 table.
pub const FAMILY: &str = "ip";
/// The one table name node-programmer owns (in families `ip` and `ip6`); nothing outside it is
/// ever touched.
pub const TABLE: &str = "drawbridge";
/// Masquerade mark bit (kube-proxy default, bit 14; §1.13).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// kube-proxy's `chainNameBaseLengthMax` (knftables `NameLengthMax` 256 minus a 16-char prefix).
const CHAIN_NAME_BASE_MAX: usize = 240;

/// Priorities as numbers: nft 1.0.6 refuses the symbolic `dstnat` on the input/output hooks
/// (lab-notes.md).
const PRIORITY_DSTNAT: i32 = -100;
const PRIORITY_SRCNAT: i32 = 100;

/// Where NodePorts are accepted (`--nodeport-addresses`, §1.3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every local address except loopback (`fib daddr type local`, never 127.0.0.0/8 or ::1).
    #[default]
    AllLocal,
    /// Only local addresses inside these CIDRs (set `nodeport-ips`, kube-proxy's
    /// `--nodeport-addresses`; `primary` resolves to the Node's InternalIPs as /32 or /128).
    Cidrs(Vec<IpNet>),
}

/// Rendering options that are not part of the Service world.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Which table: `ip drawbridge` (V4) or `ip6 drawbridge` (V6).
    pub family: IpFamily,
    /// Local pod traffic detector (kube-proxy `--detect-local-mode ClusterCIDR` with
    /// `--cluster-cidr`): sources inside these CIDRs are pods of this cluster. With it, ClusterIP
    /// traffic from other sources is masqueraded and eTP=Local external chains short-circuit pod
    /// traffic to the cluster endpoints (§1.2, §1.6). Empty = no detector (kube-proxy's
    /// default when the mode is unset): no ClusterIP masquerade, no pod short-circuit.
    pub local_traffic: Vec<IpNet>,
    /// Where NodePorts are accepted.
    pub nodeport_addresses: NodePortAddresses,
    /// The cluster's Service CIDRs (`--service-cidr`; kube-proxy reads ServiceCIDR objects):
    /// traffic to an address inside them that is no active ClusterIP is dropped instead of being
    /// routed on (§1.2, KEP-3866 "Behavior of service IPs"). Empty = no such drop.
    pub service_cidrs: Vec<IpNet>,
}

impl Options {
    /// Default options for `family`.
    pub fn for_family(family: IpFamily) -> Options {
        Options {
            family,
            ..Options::default()
        }
    }

    /// The detector CIDRs of this table's family.
    fn local_traffic(&self) -> Vec<IpNet> {
        self.local_traffic
            .iter()
            .filter(|net| net_family(net) == self.family)
            .copied()
            .collect()
    }
}

fn net_family(net: &IpNet) -> IpFamily {
    match net {
        IpNet::V4(_) => IpFamily::V4,
        IpNet::V6(_) => IpFamily::V6,
    }
}

/// Family-specific spellings.
#[derive(Clone, Copy, Debug)]
pub struct Syntax {
    /// Table family: `ip` or `ip6`.
    pub family: &'static str,
    /// Address match keyword: `ip` (`ip daddr`) or `ip6`.
    pub addr: &'static str,
    /// Set key type: `ipv4_addr` or `ipv6_addr`.
    pub addr_type: &'static str,
    /// Loopback, never a NodePort destination: `127.0.0.0/8` or `::1`.
    pub loopback: &'static str,
}

impl Syntax {
    /// The spellings of `family`.
    pub fn of(family: IpFamily) -> Syntax {
        match family {
            IpFamily::V4 => Syntax {
                family: "ip",
                addr: "ip",
                addr_type: "ipv4_addr",
                loopback: "127.0.0.0/8",
            },
            IpFamily::V6 => Syntax {
                family: "ip6",
                addr: "ip6",
                addr_type: "ipv6_addr",
                loopback: "::1",
            },
        }
    }
}

/// The whole IPv4 transaction with default options (see [`transaction_with`]).
pub fn transaction(table: &ServiceTable) -> String {
    transaction_with(table, &Options::default())
}

/// The whole transaction for one full sync: create-if-missing, delete, recreate — one atomic
/// `nft -f -` input that replaces table `<family> drawbridge` and touches no other table.
///
/// Existing connections survive: their NAT bindings live in conntrack, not in the table.
///
/// Written into one buffer sized up front: at 10,000 Services × 10 endpoints the text is ~27 MB.
pub fn transaction_with(table: &ServiceTable, options: &Options) -> String {
    let head = table_head(options.family);
    let mut out = String::with_capacity(estimated_len(table) + head.len());
    out.push_str(&head);
    let names: Vec<PortChains> = table.ports.iter().map(PortChains::new).collect();
    let maps = Maps::build(table, &names, options);
    write_ruleset(&mut out, table, &names, &maps, options);
    out.shrink_to_fit();
    out
}

/// Creates the table if missing (so the delete cannot fail), then deletes it.
fn table_head(family: IpFamily) -> String {
    let f = Syntax::of(family).family;
    format!("add table {f} {TABLE}\ndelete table {f} {TABLE}\n")
}

/// The transaction that removes everything node-programmer's nftables backend installed, both
/// families (no error if absent).
pub fn cleanup_transaction() -> String {
    IpFamily::ALL.into_iter().map(table_head).collect()
}

/// The `table ip drawbridge { … }` block for `table` with default options (the golden files).
pub fn ruleset(table: &ServiceTable) -> String {
    ruleset_with(table, &Options::default())
}

/// The `table <family> drawbridge { … }` block for `table`.
pub fn ruleset_with(table: &ServiceTable, options: &Options) -> String {
    let mut out = String::with_capacity(estimated_len(table));
    let names: Vec<PortChains> = table.ports.iter().map(PortChains::new).collect();
    let maps = Maps::build(table, &names, options);
    write_ruleset(&mut out, table, &names, &maps, options);
    out
}

/// Appends the `table <family> drawbridge { … }` block to `out`.
fn write_ruleset(
    o: &mut String,
    table: &ServiceTable,
    names: &[PortChains],
    maps: &Maps,
    options: &Options,
) {
    let sx = Syntax::of(options.family);
    put!(o, "table {} {TABLE} {{\n", sx.family);
    put!(
        o,
        "\tcomment \"drawbridge node-programmer: Services and EndpointSlices\"\n"
    );
    write_static_helpers(o);
    for (port, names) in table.ports.iter().zip(names) {
        write_port_objects(o, port, names, options);
    }
    write_maps(o, maps, options);
    write_dispatch(o, options);
    o.push_str("}\n");
}

/// Helper chains every port refers to (§2.3).
fn write_static_helpers(o: &mut String) {
    chain(
        o,
        "mark-for-masquerade",
        &[&format!("mark set mark or {MASQUERADE_MARK:#x}")],
    );
    // TCP gets a reset: with kube-proxy's plain `reject` (ICMP port-unreachable) an IPv6 TCP
    // connect retries for a second before failing (measured in tests/semantics.rs); a reset
    // refuses at once in both families.
    chain(
        o,
        "reject-chain",
        &["meta l4proto tcp reject with tcp reset", "reject"],
    );
    chain(
        o,
        "masquerading",
        &[
            &format!("mark and {MASQUERADE_MARK:#x} == 0 return"),
            &format!("mark set mark xor {MASQUERADE_MARK:#x}"),
            "masquerade fully-random",
        ],
    );
}

/// Every set and chain of one Service port, as blocks inside a `table … { }`: affinity sets,
/// endpoint chains, policy chains, the external chain and the firewall chain, in that order (each
/// refers only to objects before it). A partial sync emits exactly these for a changed port, after
/// flushing the chains that already exist.
pub fn write_port_objects(
    o: &mut String,
    port: &ServicePort,
    names: &PortChains,
    options: &Options,
) {
    let sx = Syntax::of(options.family);
    let proto = port.id.protocol.as_str();

    // ClientIP affinity (§1.10): one dynamic set per endpoint, keyed by client address.
    if let Some(timeout) = port.session_affinity {
        for endpoint in &names.endpoints {
            put!(
                o,
                "\n\tset {} {{\n\t\ttype {}\n\t\tflags dynamic,timeout\n\t\ttimeout {timeout}s\n\t}}\n",
                endpoint.affinity,
                sx.addr_type
            );
        }
    }

    // Per-endpoint chains (§2.4): every endpoint reachable under any policy, once.
    for endpoint in &names.endpoints {
        open_chain(o, &endpoint.chain);
        // Hairpin: a pod reaching itself through its Service must see a reply from the
        // Service IP, so SNAT it.
        put!(
            o,
            "\t\t{} saddr {} jump mark-for-masquerade\n",
            sx.addr,
            endpoint.endpoint.ip
        );
        if port.session_affinity.is_some() {
            put!(
                o,
                "\t\tupdate @{} {{ {} saddr }}\n",
                endpoint.affinity,
                sx.addr
            );
        }
        put!(
            o,
            "\t\tmeta l4proto {proto} dnat to {}\n",
            SocketText(&endpoint.endpoint)
        );
        close_chain(o);
    }

    // Policy chains: spread new connections at random over the selected endpoints. The chain
    // ClusterIP traffic uses first masquerades off-cluster sources (kube-proxy, with a
    // local-traffic detector; §1.2) — matched on the ClusterIP so short-circuited external
    // traffic is not affected.
    let detector = options.local_traffic();
    let internal_masquerade = |o: &mut String| {
        if !detector.is_empty() {
            put!(
                o,
                "\t\t{} daddr {} {proto} dport {} {} saddr != {} jump mark-for-masquerade\n",
                sx.addr,
                port.cluster_ip,
                port.port,
                sx.addr,
                SetText(&detector)
            );
        }
    };
    if uses_cluster_chain(port) {
        open_chain(o, &names.service);
        if port.internal_policy == TrafficPolicy::Cluster {
            internal_masquerade(o);
        }
        policy_rules(o, port, names, &port.cluster_endpoints, sx);
        close_chain(o);
    }
    if uses_local_chain(port) {
        open_chain(o, &names.local);
        if port.internal_policy == TrafficPolicy::Local {
            internal_masquerade(o);
        }
        policy_rules(o, port, names, &port.local_endpoints, sx);
        close_chain(o);
    }

    // External chain (§1.6): LB IPs, externalIPs and NodePorts enter here.
    if uses_external_chain(port) {
        open_chain(o, &names.external);
        external_rules(o, port, names, options);
        close_chain(o);
    }

    // Firewall chain (§1.12): LB IPs with loadBalancerSourceRanges.
    if uses_firewall_chain(port) {
        open_chain(o, &names.firewall);
        put!(
            o,
            "\t\t{} saddr != {} drop comment \"loadBalancerSourceRanges\"\n",
            sx.addr,
            SetText(&port.load_balancer_source_ranges)
        );
        close_chain(o);
    }
}

/// Every chain name [`write_port_objects`] emits for `port`, in emission order.
pub fn port_chain_names<'n>(port: &ServicePort, names: &'n PortChains) -> Vec<&'n str> {
    let mut out: Vec<&str> = names.endpoints.iter().map(|e| e.chain.as_str()).collect();
    if uses_cluster_chain(port) {
        out.push(&names.service);
    }
    if uses_local_chain(port) {
        out.push(&names.local);
    }
    if uses_external_chain(port) {
        out.push(&names.external);
    }
    if uses_firewall_chain(port) {
        out.push(&names.firewall);
    }
    out
}

/// Every set name [`write_port_objects`] emits for `port` (the affinity sets).
pub fn port_set_names<'n>(port: &ServicePort, names: &'n PortChains) -> Vec<&'n str> {
    if port.session_affinity.is_none() {
        return vec![];
    }
    names
        .endpoints
        .iter()
        .map(|e| e.affinity.as_str())
        .collect()
}

/// The named maps and sets with their contents (§2.2).
fn write_maps(o: &mut String, maps: &Maps, options: &Options) {
    let sx = Syntax::of(options.family);
    for (name, def) in map_definitions(sx, options) {
        let elements = maps.elements(name);
        put!(o, "\n\t{} {name} {{\n\t\t{}\n", def.kind, def.type_line);
        if def.interval {
            o.push_str("\t\tflags interval\n");
        }
        put!(o, "\t\tcomment \"{}\"\n", def.comment);
        if !elements.is_empty() {
            o.push_str("\t\telements = {\n");
            for (key, value) in elements {
                match value {
                    Some(v) => put!(o, "\t\t\t{key} : {v},\n"),
                    None => put!(o, "\t\t\t{key},\n"),
                }
            }
            o.push_str("\t\t}\n");
        }
        o.push_str("\t}\n");
    }
}

/// Shape of one named set or map.
pub struct MapDefinition {
    /// `set` or `map`.
    pub kind: &'static str,
    /// `type …` line.
    pub type_line: String,
    /// `flags interval` (CIDR elements).
    pub interval: bool,
    /// The comment nft keeps with it.
    pub comment: &'static str,
}

/// The named sets and maps of the table, in emission order.
pub fn map_definitions(sx: Syntax, options: &Options) -> Vec<(&'static str, MapDefinition)> {
    let addr = sx.addr_type;
    let ip_key = format!("type {addr} . inet_proto . inet_service : verdict");
    let port_key = "type inet_proto . inet_service : verdict".to_string();
    let mut defs = vec![
        (
            "cluster-ips",
            MapDefinition {
                kind: "set",
                type_line: format!("type {addr}"),
                interval: false,
                comment: "Active ClusterIPs",
            },
        ),
        (
            "service-ips",
            MapDefinition {
                kind: "map",
                type_line: ip_key.clone(),
                interval: false,
                comment: "ClusterIP, ExternalIP and LoadBalancer IP traffic",
            },
        ),
        (
            "service-nodeports",
            MapDefinition {
                kind: "map",
                type_line: port_key.clone(),
                interval: false,
                comment: "NodePort traffic",
            },
        ),
        (
            "no-endpoint-services",
            MapDefinition {
                kind: "map",
                type_line: ip_key.clone(),
                interval: false,
                comment: "vmap to drop or reject packets to services with no endpoints",
            },
        ),
        (
            "no-endpoint-nodeports",
            MapDefinition {
                kind: "map",
                type_line: port_key,
                interval: false,
                comment: "vmap to drop or reject packets to service nodeports with no endpoints",
            },
        ),
        (
            "firewall-ips",
            MapDefinition {
                kind: "map",
                type_line: ip_key,
                interval: false,
                comment: "destinations that are subject to LoadBalancerSourceRanges",
            },
        ),
    ];
    if matches!(options.nodeport_addresses, NodePortAddresses::Cidrs(_)) {
        defs.push((
            "nodeport-ips",
            MapDefinition {
                kind: "set",
                type_line: format!("type {addr}"),
                interval: true,
                comment: "IPs that accept NodePort traffic",
            },
        ));
    }
    defs
}

/// Dispatch and base chains (§2.1, §2.3): fixed for given options.
fn write_dispatch(o: &mut String, options: &Options) {
    let sx = Syntax::of(options.family);
    let a = sx.addr;
    let nodeports = match options.nodeport_addresses {
        NodePortAddresses::AllLocal => format!(
            "fib daddr type local {a} daddr != {} meta l4proto . th dport vmap @service-nodeports",
            sx.loopback
        ),
        NodePortAddresses::Cidrs(_) => format!(
            "fib daddr type local {a} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"
        ),
    };
    chain(
        o,
        "services",
        &[
            &format!("{a} daddr . meta l4proto . th dport vmap @service-ips"),
            &nodeports,
        ],
    );
    chain(
        o,
        "service-endpoints-check",
        &[&format!(
            "{a} daddr . meta l4proto . th dport vmap @no-endpoint-services"
        )],
    );
    chain(
        o,
        "nodeport-endpoints-check",
        &[&format!(
            "{a} daddr != {} meta l4proto . th dport vmap @no-endpoint-nodeports",
            sx.loopback
        )],
    );
    chain(
        o,
        "firewall-check",
        &[&format!(
            "{a} daddr . meta l4proto . th dport vmap @firewall-ips"
        )],
    );
    // Reject traffic to an active ClusterIP on a port no Service defines (it was not DNATed);
    // drop traffic to unallocated addresses of the Service CIDRs.
    let service_cidrs: Vec<IpNet> = options
        .service_cidrs
        .iter()
        .filter(|net| net_family(net) == options.family)
        .map(IpNet::trunc)
        .collect();
    let mut checks = vec![format!(
        "{a} daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""
    )];
    if !service_cidrs.is_empty() {
        checks.push(format!(
            "{a} daddr {} drop comment \"Drop traffic to unallocated ClusterIPs\"",
            SetText(&service_cidrs)
        ));
    }
    let checks: Vec<&str> = checks.iter().map(String::as_str).collect();
    chain(o, "cluster-ips-check", &checks);

    // Base chains (§2.1). Filter chains run before DNAT so they see the Service address; every
    // filter jump is for new connections only. `reject` is not allowed in prerouting on kernels
    // before 5.9, hence input/forward/output.
    let filter = PRIORITY_DSTNAT - 10;
    base_chain(
        o,
        "filter-prerouting",
        "filter",
        "prerouting",
        filter,
        &["ct state new jump firewall-check"],
    );
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
        &["ct state new jump firewall-check"],
    );
    // Host-originated traffic is checked against the no-endpoint verdicts *after* DNAT
    // (deliberate departure from kube-proxy, which checks before): an eTP=Local LB IP without a
    // local endpoint is short-circuited to the cluster endpoints in nat-output (§1.6), so only
    // traffic that was not DNATed still carries the Service address and is rejected or dropped.
    base_chain(
        o,
        "filter-output-post-dnat",
        "filter",
        "output",
        PRIORITY_DSTNAT + 10,
        &[
            "ct state new jump service-endpoints-check",
            "ct state new jump cluster-ips-check",
        ],
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
}

/// An upper estimate of the rendered size, so the text is written into one allocation instead
/// of a chain of doubling reallocations (each briefly holding old + new). Counted from the
/// layout with the longest IPv4 address and port; checked against the real size in tests.
fn estimated_len(table: &ServiceTable) -> usize {
    const FIXED: usize = 6144;
    table
        .ports
        .iter()
        .map(|port| {
            // `external-<H>-ns/svc/proto/port`, the longest policy chain name (protocol ≤ 4).
            let name =
                9 + 9 + port.id.namespace.len() + port.id.name.len() + port.id.port.len() + 7;
            // `endpoint-<H>-…__255.255.255.255/65535` (IPv6 addresses are longer).
            let ip_len = if port.cluster_ip.is_ipv6() { 39 } else { 15 };
            let ip_extra = ip_len - 15;
            let endpoint_name = name + 8 + ip_len;
            let endpoints = port.cluster_endpoints.len() + port.local_endpoints.len();
            // Endpoint chain (its name, hairpin and DNAT rules) + its policy rule (name again).
            let mut per_endpoint = 2 * endpoint_name + 149 + 2 * ip_extra;
            if port.session_affinity.is_some() {
                // Affinity set, update rule, policy check.
                per_endpoint += 3 * endpoint_name + 150;
            }
            // Policy chain, ClusterIP element, cluster-ips element (+ the detector's
            // masquerade rule).
            let mut per_port = 2 * name + 70 + 4 * ip_extra + 120;
            if port.externally_accessible() {
                // Local and external chains and their rules, one element per external IP and
                // NodePort, in the served or the no-endpoint maps.
                let ips = port.external_ips.len() + port.load_balancer_ips.len() + 1;
                per_port += 4 * name + 350 + 2 * ips * (name + 40 + ip_extra);
            }
            if !port.load_balancer_source_ranges.is_empty() {
                per_port += port.load_balancer_source_ranges.len() * (ip_len + 6)
                    + (2 + port.load_balancer_ips.len()) * (name + 60);
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

/// `<prefix>-<H>-ns/svc/proto/portname`, prefix `service` (Cluster policy), `local`, `external`
/// or `firewall`.
pub fn policy_chain(prefix: &str, id: &ServicePortName) -> String {
    format!("{prefix}-{}", hash_and_truncate(&port_base(id)))
}

/// `endpoint-<H>-ns/svc/proto/portname__ip/port` (IPv6 colons become dots: nft names allow no `:`).
pub fn endpoint_chain(id: &ServicePortName, endpoint: &Endpoint) -> String {
    format!(
        "endpoint-{}",
        hash_and_truncate(&endpoint_base(id, endpoint))
    )
}

fn endpoint_base(id: &ServicePortName, endpoint: &Endpoint) -> String {
    let ip = match endpoint.ip {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => ip.to_string().replace(':', "."),
    };
    format!("{}__{ip}/{}", port_base(id), endpoint.port)
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

/// One endpoint's object names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointNames {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// `endpoint-<H>-…`: its DNAT chain.
    pub chain: String,
    /// `affinity-<H>-…`: its ClientIP affinity set (kube-proxy names it after the endpoint chain).
    pub affinity: String,
}

/// The object names of one Service port, each hashed once per render.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortChains {
    /// `service-…`: Cluster-policy endpoint choice.
    pub service: String,
    /// `local-…`: Local-policy endpoint choice.
    pub local: String,
    /// `external-…`: entry for LB IPs, externalIPs and NodePorts.
    pub external: String,
    /// `firewall-…`: loadBalancerSourceRanges check.
    pub firewall: String,
    /// Every endpoint reachable under any policy (cluster ∪ local), sorted and deduplicated.
    pub endpoints: Vec<EndpointNames>,
}

impl PortChains {
    /// Names for `port`.
    pub fn new(port: &ServicePort) -> PortChains {
        // The policy chains share one hash: kube-proxy hashes the base, not the prefix.
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
            firewall: format!("firewall-{hashed}"),
            endpoints: endpoints
                .into_iter()
                .map(|e| {
                    let hashed = hash_and_truncate(&endpoint_base(&port.id, e));
                    EndpointNames {
                        endpoint: *e,
                        chain: format!("endpoint-{hashed}"),
                        affinity: format!("affinity-{hashed}"),
                    }
                })
                .collect(),
        }
    }

    /// Only the policy chain names (one hash), no endpoint names: enough for [`port_elements`].
    pub fn policy_only(port: &ServicePort) -> PortChains {
        let hashed = hash_and_truncate(&port_base(&port.id));
        PortChains {
            service: format!("service-{hashed}"),
            local: format!("local-{hashed}"),
            external: format!("external-{hashed}"),
            firewall: format!("firewall-{hashed}"),
            endpoints: vec![],
        }
    }

    fn endpoint(&self, endpoint: &Endpoint) -> &EndpointNames {
        let i = self
            .endpoints
            .binary_search_by(|e| e.endpoint.cmp(endpoint))
            .expect("every selected endpoint has a chain");
        &self.endpoints[i]
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

/// The firewall chain exists for LB IPs with source ranges (kube-proxy `usesFWChain`).
fn uses_firewall_chain(port: &ServicePort) -> bool {
    !port.load_balancer_source_ranges.is_empty() && !port.load_balancer_ips.is_empty()
}

fn external_rules(o: &mut String, port: &ServicePort, names: &PortChains, options: &Options) {
    let cluster = &names.service;
    let sx = Syntax::of(options.family);
    match port.external_policy {
        // The endpoint may be on another node: SNAT so the reply comes back through us.
        TrafficPolicy::Cluster => put!(o, "\t\tjump mark-for-masquerade\n"),
        TrafficPolicy::Local => {
            // Pod traffic (with a detector) goes to the cluster set as if it had gone out to the
            // LB and back; client source kept (kube-proxy "short-circuit pod traffic").
            let detector = options.local_traffic();
            if !detector.is_empty() && uses_cluster_chain(port) {
                put!(
                    o,
                    "\t\t{} saddr {} goto {cluster} comment \"short-circuit pod traffic\"\n",
                    sx.addr,
                    SetText(&detector)
                );
            }
            // Host-originated traffic: the LB IP may be local and become the source, so SNAT it,
            // and serve it from the cluster set.
            put!(
                o,
                "\t\tfib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\"\n"
            );
            if uses_cluster_chain(port) {
                put!(
                    o,
                    "\t\tfib saddr type local goto {cluster} comment \"short-circuit local traffic\"\n"
                );
            }
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

/// The rules of a policy chain (`service-…` or `local-…`): affinity checks (§1.10), then a
/// uniform random choice among `endpoints`, as one rule per endpoint instead of kube-proxy's one
/// anonymous verdict map.
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
/// whose userspace spends superlinear time on anonymous sets and maps. Measured on this machine
/// (docs/benchmarks.md "Dataplane"): 10,000 Services × 10 endpoints load in ~275 s with the
/// anonymous vmaps and in 5.8 s with these rules; the first-packet cost is the same (~12 µs p50).
/// A new connection evaluates up to n-1 numgen+cmp rules instead of one map lookup; conntrack
/// handles every later packet.
fn policy_rules(
    o: &mut String,
    port: &ServicePort,
    names: &PortChains,
    endpoints: &[Endpoint],
    sx: Syntax,
) {
    if port.session_affinity.is_some() {
        for endpoint in endpoints {
            let e = names.endpoint(endpoint);
            put!(
                o,
                "\t\t{} saddr @{} goto {}\n",
                sx.addr,
                e.affinity,
                e.chain
            );
        }
    }
    let n = endpoints.len();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let target = &names.endpoint(endpoint).chain;
        let remaining = n - i;
        if remaining > 1 {
            // `mod K 0` is how nft lists `numgen random mod K == 0`; rendering the listed form
            // keeps our text and `nft list` output comparable.
            put!(o, "\t\tnumgen random mod {remaining} 0 goto {target}\n");
        } else {
            put!(o, "\t\tgoto {target}\n");
        }
    }
}

// === map contents ===

/// Map key `ip . proto . port`, ordered numerically.
pub type IpKey = (IpAddr, Protocol, u16);
/// Map key `proto . nodePort`.
pub type PortKey = (Protocol, u16);

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

/// `ip:port` or `[ip6]:port`, as `dnat to` takes it.
struct SocketText<'a>(&'a Endpoint);

impl fmt::Display for SocketText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", self.0.port),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.0.port),
        }
    }
}

/// One value, or `{ a, b }` for several (an anonymous set; used only for CIDR lists).
struct SetText<'a>(&'a [IpNet]);

impl fmt::Display for SetText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [one] = self.0 {
            return write!(f, "{one}");
        }
        f.write_str("{ ")?;
        for (i, item) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{item}")?;
        }
        f.write_str(" }")
    }
}

/// Contents of the named sets and maps, typed and sorted (as text, "10.0.0.10" would sort before
/// "10.0.0.9"). Values are verdict texts (`goto <chain>`, `drop`). Owned, so the incremental sync
/// keeps the last applied copy and diffs it against the next (kube-proxy `nftElementStorage`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Maps {
    /// `cluster-ips`.
    pub cluster_ips: BTreeSet<IpAddr>,
    /// `service-ips`.
    pub service_ips: BTreeMap<IpKey, String>,
    /// `service-nodeports`.
    pub service_nodeports: BTreeMap<PortKey, String>,
    /// `no-endpoint-services`.
    pub no_endpoint_services: BTreeMap<IpKey, String>,
    /// `no-endpoint-nodeports`.
    pub no_endpoint_nodeports: BTreeMap<PortKey, String>,
    /// `firewall-ips`.
    pub firewall_ips: BTreeMap<IpKey, String>,
    /// `nodeport-ips` (only with [`NodePortAddresses::Cidrs`]).
    pub nodeport_ips: BTreeSet<IpNet>,
}

const REJECT: &str = "goto reject-chain";
const DROP: &str = "drop";

/// One verdict-map element's identity: map name and typed key. Keys are unique across ports
/// (`model` claims every destination for one port), so an element belongs to exactly one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ElementKey {
    /// `service-ips`, `no-endpoint-services` or `firewall-ips`: `ip . proto . port`.
    Ip(&'static str, IpKey),
    /// `service-nodeports` or `no-endpoint-nodeports`: `proto . nodePort`.
    Port(&'static str, PortKey),
}

impl ElementKey {
    /// The map this element lives in.
    pub fn map(&self) -> &'static str {
        match self {
            ElementKey::Ip(map, _) | ElementKey::Port(map, _) => map,
        }
    }

    /// The key as nft writes it.
    pub fn key_text(&self) -> String {
        match self {
            ElementKey::Ip(_, key) => IpKeyText(key).to_string(),
            ElementKey::Port(_, key) => PortKeyText(key).to_string(),
        }
    }
}

/// The verdict-map elements one port contributes, with their verdict text (§1.11 table; kube-proxy
/// `syncProxyRules`). Needs only the port's policy chain names (endpoint names may be empty).
pub fn port_elements(port: &ServicePort, names: &PortChains) -> Vec<(ElementKey, String)> {
    let mut out = Vec::new();
    let proto = port.id.protocol;
    let no_endpoint = if !port.has_endpoints { REJECT } else { DROP };
    let external = || format!("goto {}", names.external);

    let key = (port.cluster_ip, proto, port.port);
    if port.has_internal_endpoints() {
        out.push((
            ElementKey::Ip("service-ips", key),
            format!("goto {}", names.internal(port)),
        ));
    } else {
        out.push((
            ElementKey::Ip("no-endpoint-services", key),
            no_endpoint.into(),
        ));
    }
    for ip in port.external_ips.iter().chain(&port.load_balancer_ips) {
        let key = (*ip, proto, port.port);
        if port.has_endpoints {
            out.push((ElementKey::Ip("service-ips", key), external()));
        }
        if !port.has_external_endpoints() {
            out.push((
                ElementKey::Ip("no-endpoint-services", key),
                no_endpoint.into(),
            ));
        }
    }
    if uses_firewall_chain(port) {
        for ip in &port.load_balancer_ips {
            out.push((
                ElementKey::Ip("firewall-ips", (*ip, proto, port.port)),
                format!("goto {}", names.firewall),
            ));
        }
    }
    if let Some(node_port) = port.node_port {
        let key = (proto, node_port);
        if port.has_endpoints {
            out.push((ElementKey::Port("service-nodeports", key), external()));
        }
        if !port.has_external_endpoints() {
            out.push((
                ElementKey::Port("no-endpoint-nodeports", key),
                no_endpoint.into(),
            ));
        }
    }
    out
}

impl Maps {
    /// Element placement for the whole table. `names[i]` belongs to `table.ports[i]`.
    pub fn build(table: &ServiceTable, names: &[PortChains], options: &Options) -> Maps {
        let mut maps = Maps {
            cluster_ips: cluster_ips(table),
            nodeport_ips: nodeport_ips(options),
            ..Maps::default()
        };
        for (port, names) in table.ports.iter().zip(names) {
            for (key, value) in port_elements(port, names) {
                let target = match key {
                    ElementKey::Ip("service-ips", _) => &mut maps.service_ips,
                    ElementKey::Ip("no-endpoint-services", _) => &mut maps.no_endpoint_services,
                    ElementKey::Ip(_, _) => &mut maps.firewall_ips,
                    ElementKey::Port("service-nodeports", k) => {
                        maps.service_nodeports.insert(k, value);
                        continue;
                    }
                    ElementKey::Port(_, k) => {
                        maps.no_endpoint_nodeports.insert(k, value);
                        continue;
                    }
                };
                if let ElementKey::Ip(_, k) = key {
                    target.insert(k, value);
                }
            }
        }
        maps
    }

    /// The elements of set or map `name` as `(key text, value text)` (`None` for sets), sorted.
    pub fn elements(&self, name: &str) -> Vec<(String, Option<String>)> {
        fn ip_map(m: &BTreeMap<IpKey, String>) -> Vec<(String, Option<String>)> {
            m.iter()
                .map(|(k, v)| (IpKeyText(k).to_string(), Some(v.clone())))
                .collect()
        }
        fn port_map(m: &BTreeMap<PortKey, String>) -> Vec<(String, Option<String>)> {
            m.iter()
                .map(|(k, v)| (PortKeyText(k).to_string(), Some(v.clone())))
                .collect()
        }
        match name {
            "cluster-ips" => self
                .cluster_ips
                .iter()
                .map(|ip| (ip.to_string(), None))
                .collect(),
            "service-ips" => ip_map(&self.service_ips),
            "service-nodeports" => port_map(&self.service_nodeports),
            "no-endpoint-services" => ip_map(&self.no_endpoint_services),
            "no-endpoint-nodeports" => port_map(&self.no_endpoint_nodeports),
            "firewall-ips" => ip_map(&self.firewall_ips),
            "nodeport-ips" => self
                .nodeport_ips
                .iter()
                .map(|net| (net.to_string(), None))
                .collect(),
            _ => vec![],
        }
    }

    /// Every set/map name this struct holds contents for (the `cluster-ips` and `nodeport-ips`
    /// sets, then the verdict maps).
    pub const NAMES: [&'static str; 7] = [
        "cluster-ips",
        "service-ips",
        "service-nodeports",
        "no-endpoint-services",
        "no-endpoint-nodeports",
        "firewall-ips",
        "nodeport-ips",
    ];
}

/// Contents of set `cluster-ips`: every programmed ClusterIP.
pub fn cluster_ips(table: &ServiceTable) -> BTreeSet<IpAddr> {
    table.ports.iter().map(|p| p.cluster_ip).collect()
}

/// Contents of set `nodeport-ips` (empty unless [`NodePortAddresses::Cidrs`]).
pub fn nodeport_ips(options: &Options) -> BTreeSet<IpNet> {
    match &options.nodeport_addresses {
        NodePortAddresses::Cidrs(cidrs) => cidrs
            .iter()
            .filter(|c| net_family(c) == options.family)
            .map(IpNet::trunc)
            .collect(),
        NodePortAddresses::AllLocal => BTreeSet::new(),
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

#[cfg(test)]
mod tests;

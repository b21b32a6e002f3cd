//! The iptables backend (`--proxy-mode iptables`): [`ServiceTable`] → `iptables-restore` text in
//! kube-proxy's iptables layout (service-proxy.md §2.7; kube-proxy `pkg/proxy/iptables/proxier.go`
//! `syncProxyRules`) under our own chain names, applied with `iptables-restore --noflush` and
//! partial restores (KEP-3453).
//!
//! For hosts without usable nftables. Same semantics as the nftables backend (`render`):
//!
//! ```text
//!  nat PREROUTING / OUTPUT ─> DRAWBRIDGE-SERVICES
//!      -d <ClusterIP> -p P --dport p        ─> DRAWBRIDGE-SVC-<H> (iTP=Cluster) | DRAWBRIDGE-SVL-<H> (iTP=Local)
//!      -d <LB IP | externalIP> --dport p    ─> DRAWBRIDGE-EXT-<H>  (LB IP with source ranges: DRAWBRIDGE-FW-<H>)
//!      (last) -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 ─> DRAWBRIDGE-NODEPORTS: --dport <nodePort> ─> EXT
//!  DRAWBRIDGE-EXT-<H>:  eTP=Cluster: MARK-MASQ ; SVC
//!                       eTP=Local:   src LOCAL ─> MARK-MASQ ; src LOCAL ─> SVC ; SVL (if local endpoints)
//!  DRAWBRIDGE-SVC/SVL:  [-m recent --rcheck ─> SEP]* ; -m statistic --probability 1/(n-i) ─> SEP_i ; SEP_{n-1}
//!  DRAWBRIDGE-SEP-<H>:  -s <ep> ─> MARK-MASQ (hairpin) ; [-m recent --set] DNAT --to-destination <ep>
//!  nat POSTROUTING ─> DRAWBRIDGE-POSTROUTING: mark 0x4000 ─> MASQUERADE --random-fully
//!  filter INPUT/FORWARD/OUTPUT (ctstate NEW) ─> DRAWBRIDGE-SERVICES / -EXTERNAL-SERVICES:
//!      REJECT (no usable endpoint anywhere) | DROP (Local policy, none on this node);
//!      DRAWBRIDGE-PROXY-FIREWALL: DROP LB-IP traffic the FW chain did not DNAT;
//!      DRAWBRIDGE-FORWARD: ACCEPT marked and RELATED,ESTABLISHED; DRAWBRIDGE-NODEPORTS: health checks
//! ```
//!
//! Departures from kube-proxy, each deliberate:
//! - Chain names carry 13 hash characters, not 16: iptables chain names are at most 28 characters
//!   and `DRAWBRIDGE-SVC-` is 15. The hash is kube-proxy's (`base32(sha256(svcPortName + proto
//!   [+ endpoint]))`, see [`kube_proxy_hash`]), truncated; 65 bits keep collisions negligible.
//! - NodePorts are not accepted on 127.0.0.0/8 (`! -d 127.0.0.0/8`; no `route_localnet`, so no
//!   CVE-2020-8558 martian rule either), as nftables mode.
//! - No `ctstate INVALID` DROP in `DRAWBRIDGE-FORWARD` (nftables mode installs none either).
//! - No pod-source short-circuit / ClusterIP masquerade rules: drawbridge has no local-traffic
//!   detector yet (same as the nftables backend).
//!
//! The pure part is [`Ruleset::build`] + [`Ruleset::restore_text`]; the edge is the [`Runner`]
//! trait ([`IptablesCli`] runs the binaries, [`FakeRunner`] records); [`IptablesProxier`] holds
//! the per-chain digests that make partial restores possible.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hasher as _};
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::model::{Endpoint, ServicePort, ServiceTable, TrafficPolicy};

/// `write!` into a `String` (which cannot fail).
macro_rules! put {
    ($out:expr, $($arg:tt)*) => {
        $out.write_fmt(format_args!($($arg)*)).expect("writing to a String cannot fail")
    };
}

/// Prefix of every chain we own; `cleanup` removes every chain that starts with it.
pub const CHAIN_PREFIX: &str = "DRAWBRIDGE-";
/// nat and filter: the per-Service-IP dispatch (nat) / no-endpoint verdicts for ClusterIPs
/// (filter).
pub const SERVICES: &str = "DRAWBRIDGE-SERVICES";
/// nat: NodePort dispatch (last rule of `DRAWBRIDGE-SERVICES`); filter: health-check ACCEPTs.
pub const NODEPORTS: &str = "DRAWBRIDGE-NODEPORTS";
/// nat: `MARK --or-mark 0x4000`.
pub const MARK_MASQ: &str = "DRAWBRIDGE-MARK-MASQ";
/// nat: masquerade marked packets.
pub const POSTROUTING: &str = "DRAWBRIDGE-POSTROUTING";
/// filter: no-endpoint verdicts for external destinations (LB IPs, externalIPs, NodePorts).
pub const EXTERNAL_SERVICES: &str = "DRAWBRIDGE-EXTERNAL-SERVICES";
/// filter: ACCEPT our forwarded traffic past a restrictive FORWARD policy.
pub const FORWARD: &str = "DRAWBRIDGE-FORWARD";
/// filter: DROP LoadBalancer-IP traffic from outside `loadBalancerSourceRanges`.
pub const PROXY_FIREWALL: &str = "DRAWBRIDGE-PROXY-FIREWALL";

/// Masquerade mark bit (kube-proxy default, bit 14; §1.13), shared with the nftables backend.
pub const MASQUERADE_MARK: u32 = crate::render::MASQUERADE_MARK;

/// kube-proxy's `largeClusterEndpointsThreshold`: above this many endpoints rule comments are
/// dropped (they make up a large share of the restore text).
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// Hash characters in per-Service chain names: 28 (iptables' limit) − 15 (`DRAWBRIDGE-SVC-`).
const HASH_CHARS: usize = 13;

/// Address family of one proxier: decides the binaries (`iptables*` / `ip6tables*`) and the
/// spelling of addresses. One [`IptablesProxier`] per family (service-proxy.md §1.17).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4: `iptables-restore`.
    V4,
    /// IPv6: `ip6tables-restore`.
    V6,
}

impl Family {
    /// The loopback range NodePorts are never accepted on.
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    fn tool_prefix(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

impl From<crate::model::IpFamily> for Family {
    fn from(family: crate::model::IpFamily) -> Family {
        match family {
            crate::model::IpFamily::V4 => Family::V4,
            crate::model::IpFamily::V6 => Family::V6,
        }
    }
}

/// The two iptables tables we write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    /// `nat`: DNAT and masquerade.
    Nat,
    /// `filter`: REJECT/DROP of Services without usable endpoints, source-range firewall.
    Filter,
}

impl Table {
    /// The table's name as iptables spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Filter => "filter",
        }
    }
}

// === chain names (kube-proxy `servicePortChainName` / `servicePortEndpointChainName`) ===

/// kube-proxy's `portProtoHash`: the first 16 characters of base32(sha256(`text`)), where `text`
/// is `ns/svc[:port]` + `proto` (Service chains) or that + `ip:port` (endpoint chains).
pub fn kube_proxy_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut encoded = base32::encode(base32::Alphabet::Rfc4648 { padding: true }, &digest);
    encoded.truncate(16);
    encoded
}

/// kube-proxy's `ServicePortName.String()`: `ns/name`, plus `:port` when the port is named.
fn service_port_name(port: &ServicePort) -> String {
    let id = &port.id;
    if id.port.is_empty() {
        format!("{}/{}", id.namespace, id.name)
    } else {
        format!("{}/{}:{}", id.namespace, id.name, id.port)
    }
}

/// `ip:port`, or `[ip]:port` for IPv6 (Go's `net.JoinHostPort`, kube-proxy `Endpoint.String()`).
fn endpoint_text(endpoint: &Endpoint) -> String {
    let ip = endpoint.ip.to_string();
    if ip.contains(':') {
        format!("[{ip}]:{}", endpoint.port)
    } else {
        format!("{ip}:{}", endpoint.port)
    }
}

/// The chain names of one Service port (hashed once per render).
struct PortChains {
    /// `DRAWBRIDGE-SVC-<H>`: Cluster-policy endpoint choice.
    svc: String,
    /// `DRAWBRIDGE-SVL-<H>`: Local-policy endpoint choice.
    svl: String,
    /// `DRAWBRIDGE-EXT-<H>`: entry for LB IPs, externalIPs and NodePorts.
    ext: String,
    /// `DRAWBRIDGE-FW-<H>`: `loadBalancerSourceRanges` check before `ext`.
    fw: String,
    /// `ns/svc:port`, for comments.
    name: String,
    /// Every endpoint reachable under any policy, sorted, with its `DRAWBRIDGE-SEP-<H>` name.
    endpoints: Vec<(Endpoint, String)>,
}

impl PortChains {
    fn new(port: &ServicePort) -> PortChains {
        let name = service_port_name(port);
        let proto = port.id.protocol.as_str();
        let hash = kube_proxy_hash(&format!("{name}{proto}"));
        let short = &hash[..HASH_CHARS];
        let mut endpoints: Vec<&Endpoint> = port
            .cluster_endpoints
            .iter()
            .chain(&port.local_endpoints)
            .collect();
        endpoints.sort();
        endpoints.dedup();
        let endpoints = endpoints
            .into_iter()
            .map(|e| {
                let h = kube_proxy_hash(&format!("{name}{proto}{}", endpoint_text(e)));
                (*e, format!("DRAWBRIDGE-SEP-{}", &h[..HASH_CHARS]))
            })
            .collect();
        PortChains {
            svc: format!("DRAWBRIDGE-SVC-{short}"),
            svl: format!("DRAWBRIDGE-SVL-{short}"),
            ext: format!("DRAWBRIDGE-EXT-{short}"),
            fw: format!("DRAWBRIDGE-FW-{short}"),
            name,
            endpoints,
        }
    }

    fn endpoint(&self, endpoint: &Endpoint) -> &str {
        // Every endpoint of a policy set is in `endpoints` (built from both sets above).
        self.endpoints
            .binary_search_by(|(e, _)| e.cmp(endpoint))
            .map(|i| self.endpoints[i].1.as_str())
            .unwrap_or("DRAWBRIDGE-SEP-MISSING")
    }
}

// === per-port inputs ===

/// `sessionAffinity: ClientIP` timeout in seconds, if set (§1.10).
fn session_affinity(port: &ServicePort) -> Option<u32> {
    port.session_affinity
}

/// `loadBalancerSourceRanges` as iptables `-s` arguments (§1.12).
fn source_ranges(port: &ServicePort) -> Vec<String> {
    port.load_balancer_source_ranges
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Whether this node's own address is inside one of the source ranges (then kube-proxy also
/// allows the LB IPs as sources, §1.12). Not done: the table does not carry the node's
/// addresses (the nftables backend does not do it either).
fn node_in_source_ranges(_port: &ServicePort) -> bool {
    false
}

/// `healthCheckNodePort`, if any: ACCEPTed in filter `DRAWBRIDGE-NODEPORTS` (§1.3).
fn health_check_node_port(port: &ServicePort) -> Option<u16> {
    port.health_check_node_port
}

// === the ruleset ===

/// One chain of the desired ruleset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Chain name (≤ 28 characters).
    pub name: String,
    /// Its rules as `-A <name> …` lines, each ending in `\n`.
    pub rules: String,
}

impl Chain {
    fn new(name: impl Into<String>) -> Chain {
        Chain {
            name: name.into(),
            rules: String::new(),
        }
    }

    /// Appends `-A <name> <rule>\n`.
    fn rule(&mut self, rule: std::fmt::Arguments<'_>) {
        put!(self.rules, "-A {} ", self.name);
        self.rules.write_fmt(rule).expect("String");
        self.rules.push('\n');
    }

    /// 64-bit digest of the rules (change detection between syncs, within one process).
    fn digest(&self) -> u64 {
        let mut h = DefaultHasher::new();
        h.write(self.rules.as_bytes());
        h.finish()
    }
}

/// The desired iptables state for one family: every chain we own, with its rules.
///
/// Pure: built from a [`ServiceTable`] with no I/O. Deterministic (ports are sorted by the
/// model), so the same world gives the same chains and digests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// nat chains written whole on every restore: `DRAWBRIDGE-SERVICES`, `-NODEPORTS`,
    /// `-MARK-MASQ`, `-POSTROUTING`.
    pub nat_top: Vec<Chain>,
    /// nat chains owned by one Service port (`SVC`, `SVL`, `EXT`, `FW`, `SEP`): written only when
    /// their content changed (partial restore).
    pub nat_service: Vec<Chain>,
    /// filter chains, written whole on every restore.
    pub filter: Vec<Chain>,
}

/// `-m comment --comment "…" ` when comments are on, else nothing.
struct Comment<'a>(bool, &'a str);

impl std::fmt::Display for Comment<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 {
            write!(f, "-m comment --comment \"{}\" ", self.1)
        } else {
            Ok(())
        }
    }
}

impl Ruleset {
    /// Builds every chain for `table` in `family`, following kube-proxy `syncProxyRules`
    /// (§1.2–§1.13, §2.7). Comments are written unless the table has more than
    /// [`LARGE_CLUSTER_ENDPOINTS`] endpoints (kube-proxy's large-cluster mode).
    pub fn build(table: &ServiceTable, family: Family) -> Ruleset {
        Self::build_with(table, family, &crate::render::Options::default())
    }

    /// [`Ruleset::build`] with the options shared with the nftables backend: `--nodeport-addresses`
    /// (NodePorts only on local addresses inside the CIDRs, kube-proxy's `-d <ip> -j
    /// KUBE-NODEPORTS` per address) and the `--cluster-cidr` local-traffic detector (ClusterIP
    /// traffic from other sources is masqueraded; eTP=Local pod traffic short-circuits to the
    /// cluster chain, §1.2, §1.6). The options' `family` is ignored (`family` rules).
    pub fn build_with(
        table: &ServiceTable,
        family: Family,
        options: &crate::render::Options,
    ) -> Ruleset {
        let in_family = |net: &&ipnet::IpNet| match family {
            Family::V4 => matches!(net, ipnet::IpNet::V4(_)),
            Family::V6 => matches!(net, ipnet::IpNet::V6(_)),
        };
        let detector: Vec<ipnet::IpNet> = options
            .local_traffic
            .iter()
            .filter(in_family)
            .copied()
            .collect();
        let endpoints: usize = table
            .ports
            .iter()
            .map(|p| p.cluster_endpoints.len().max(p.local_endpoints.len()))
            .sum();
        let comments = endpoints <= LARGE_CLUSTER_ENDPOINTS;
        let c = |text: &str| Comment(comments, text).to_string();

        let mut services = Chain::new(SERVICES);
        let mut nodeports = Chain::new(NODEPORTS);
        let mut mark_masq = Chain::new(MARK_MASQ);
        let mut postrouting = Chain::new(POSTROUTING);
        let mut f_services = Chain::new(SERVICES);
        let mut f_external = Chain::new(EXTERNAL_SERVICES);
        let mut f_forward = Chain::new(FORWARD);
        let mut f_nodeports = Chain::new(NODEPORTS);
        let mut f_firewall = Chain::new(PROXY_FIREWALL);
        let mut per_service = Vec::new();

        mark_masq.rule(format_args!("-j MARK --or-mark {MASQUERADE_MARK:#x}"));
        postrouting.rule(format_args!(
            "-m mark ! --mark {MASQUERADE_MARK:#x}/{MASQUERADE_MARK:#x} -j RETURN"
        ));
        postrouting.rule(format_args!("-j MARK --xor-mark {MASQUERADE_MARK:#x}"));
        postrouting.rule(format_args!(
            "{}-j MASQUERADE --random-fully",
            c("drawbridge service traffic requiring SNAT")
        ));
        f_forward.rule(format_args!(
            "{}-m mark --mark {MASQUERADE_MARK:#x}/{MASQUERADE_MARK:#x} -j ACCEPT",
            c("drawbridge forwarding rules")
        ));
        f_forward.rule(format_args!(
            "{}-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            c("drawbridge forwarding conntrack rule")
        ));

        for port in &table.ports {
            let names = PortChains::new(port);
            let proto = port.id.protocol.as_str();
            let p = port.port;
            let name = &names.name;
            let affinity = session_affinity(port);
            let ranges = source_ranges(port);

            let uses_cluster = port.uses_cluster_endpoints() && !port.cluster_endpoints.is_empty();
            let uses_local = port.uses_local_endpoints() && !port.local_endpoints.is_empty();
            let uses_external = port.has_endpoints && port.externally_accessible();
            let uses_fw = uses_external && !ranges.is_empty() && !port.load_balancer_ips.is_empty();
            let internal_chain = match port.internal_policy {
                TrafficPolicy::Cluster => &names.svc,
                TrafficPolicy::Local => &names.svl,
            };
            let external_policy_chain = match port.external_policy {
                TrafficPolicy::Cluster => &names.svc,
                TrafficPolicy::Local => &names.svl,
            };
            // §1.11: no usable endpoint anywhere → REJECT; Local policy, none here → DROP.
            // TCP is refused with a reset: an ICMPv6 port-unreachable leaves IPv6 connects
            // retrying for a second before failing (measured in tests/semantics.rs).
            let no_endpoint_target = if port.has_endpoints {
                "DROP"
            } else if port.id.protocol == crate::model::Protocol::Tcp {
                "REJECT --reject-with tcp-reset"
            } else {
                "REJECT"
            };
            let none_comment = |what: &str| {
                if port.has_endpoints {
                    c(&format!("{name} has no local endpoints{what}"))
                } else {
                    c(&format!("{name} has no endpoints{what}"))
                }
            };

            // ClusterIP.
            if port.has_internal_endpoints() {
                services.rule(format_args!(
                    "{}-p {proto} -m {proto} -d {} --dport {p} -j {internal_chain}",
                    c(&format!("{name} cluster IP")),
                    port.cluster_ip
                ));
            } else {
                f_services.rule(format_args!(
                    "{}-p {proto} -m {proto} -d {} --dport {p} -j {no_endpoint_target}",
                    none_comment(""),
                    port.cluster_ip
                ));
            }
            // externalIPs (§1.5).
            for ip in &port.external_ips {
                if port.has_endpoints {
                    services.rule(format_args!(
                        "{}-p {proto} -m {proto} -d {ip} --dport {p} -j {}",
                        c(&format!("{name} external IP")),
                        names.ext
                    ));
                }
                if !port.has_external_endpoints() {
                    f_external.rule(format_args!(
                        "{}-p {proto} -m {proto} -d {ip} --dport {p} -j {no_endpoint_target}",
                        none_comment(" for external IP")
                    ));
                }
            }
            // LoadBalancer ingress IPs (§1.4, §1.12).
            for ip in &port.load_balancer_ips {
                if port.has_endpoints {
                    services.rule(format_args!(
                        "{}-p {proto} -m {proto} -d {ip} --dport {p} -j {}",
                        c(&format!("{name} loadbalancer IP")),
                        if uses_fw { &names.fw } else { &names.ext }
                    ));
                }
                if uses_fw {
                    f_firewall.rule(format_args!(
                        "{}-p {proto} -m {proto} -d {ip} --dport {p} -j DROP",
                        c(&format!("{name} traffic not accepted by {}", names.fw))
                    ));
                }
            }
            if !port.has_external_endpoints() {
                for ip in &port.load_balancer_ips {
                    f_external.rule(format_args!(
                        "{}-p {proto} -m {proto} -d {ip} --dport {p} -j {no_endpoint_target}",
                        none_comment(" for load balancer IP")
                    ));
                }
            }
            // NodePort (§1.3).
            if let Some(node_port) = port.node_port {
                if port.has_endpoints {
                    nodeports.rule(format_args!(
                        "{}-p {proto} -m {proto} --dport {node_port} -j {}",
                        c(&format!("{name} node port")),
                        names.ext
                    ));
                }
                if !port.has_external_endpoints() {
                    f_external.rule(format_args!(
                        "{}-m addrtype --dst-type LOCAL -p {proto} -m {proto} --dport {node_port} -j {no_endpoint_target}",
                        none_comment(" for node port")
                    ));
                }
            }
            // healthCheckNodePort: let it past a restrictive INPUT policy (§1.3).
            if let Some(hc) = health_check_node_port(port) {
                f_nodeports.rule(format_args!(
                    "{}-p tcp -m tcp --dport {hc} -j ACCEPT",
                    c(&format!("{name} health check node port"))
                ));
            }

            // External chain (§1.6).
            if uses_external {
                let mut ext = Chain::new(names.ext.clone());
                match port.external_policy {
                    TrafficPolicy::Cluster => ext.rule(format_args!(
                        "{}-j {MARK_MASQ}",
                        c(&format!(
                            "masquerade traffic for {name} external destinations"
                        ))
                    )),
                    TrafficPolicy::Local => {
                        if uses_cluster {
                            for cidr in &detector {
                                ext.rule(format_args!(
                                    "{}-s {cidr} -j {}",
                                    c(&format!("pod traffic for {name} external destinations")),
                                    names.svc
                                ));
                            }
                        }
                        ext.rule(format_args!(
                            "{}-m addrtype --src-type LOCAL -j {MARK_MASQ}",
                            c(&format!(
                                "masquerade LOCAL traffic for {name} external destinations"
                            ))
                        ));
                        ext.rule(format_args!(
                            "{}-m addrtype --src-type LOCAL -j {}",
                            c(&format!(
                                "route LOCAL traffic for {name} external destinations"
                            )),
                            names.svc
                        ));
                    }
                }
                if port.has_external_endpoints() {
                    ext.rule(format_args!("-j {external_policy_chain}"));
                }
                per_service.push(ext);
            }
            // Firewall chain (§1.12): allowed sources go on to EXT; the rest is not DNATed and
            // meets DRAWBRIDGE-PROXY-FIREWALL's DROP in filter.
            if uses_fw {
                let mut fw = Chain::new(names.fw.clone());
                let lb = c(&format!("{name} loadbalancer IP"));
                for range in &ranges {
                    fw.rule(format_args!("{lb}-s {range} -j {}", names.ext));
                }
                if node_in_source_ranges(port) {
                    for ip in &port.load_balancer_ips {
                        fw.rule(format_args!("{lb}-s {ip} -j {}", names.ext));
                    }
                }
                fw.rule(format_args!(
                    "{}",
                    c(&format!(
                        "other traffic to {name} will be dropped by {PROXY_FIREWALL}"
                    ))
                    .trim_end()
                ));
                per_service.push(fw);
            }
            // Policy chains.
            // Off-cluster sources of ClusterIP traffic are masqueraded (with a detector).
            let masquerade_first = |chain: Chain| -> Chain {
                if detector.is_empty() {
                    return chain;
                }
                let mut out = Chain::new(chain.name.clone());
                for cidr in &detector {
                    out.rule(format_args!(
                        "{}! -s {cidr} -d {} -p {proto} -m {proto} --dport {p} -j {MARK_MASQ}",
                        c(&format!("{name} cluster IP")),
                        port.cluster_ip
                    ));
                }
                out.rules.push_str(&chain.rules);
                out
            };
            if uses_cluster {
                let chain = policy_chain(
                    &names.svc,
                    &names,
                    &port.cluster_endpoints,
                    affinity,
                    comments,
                );
                per_service.push(if port.internal_policy == TrafficPolicy::Cluster {
                    masquerade_first(chain)
                } else {
                    chain
                });
            }
            if uses_local {
                let chain = policy_chain(
                    &names.svl,
                    &names,
                    &port.local_endpoints,
                    affinity,
                    comments,
                );
                per_service.push(if port.internal_policy == TrafficPolicy::Local {
                    masquerade_first(chain)
                } else {
                    chain
                });
            }
            // Endpoint chains.
            for (endpoint, chain) in &names.endpoints {
                let mut sep = Chain::new(chain.clone());
                let cm = c(name);
                sep.rule(format_args!("{cm}-s {} -j {MARK_MASQ}", endpoint.ip));
                let recent = match affinity {
                    Some(_) => format!("-m recent --name {chain} --set "),
                    None => String::new(),
                };
                sep.rule(format_args!(
                    "{cm}{recent}-p {proto} -m {proto} -j DNAT --to-destination {}",
                    endpoint_text(endpoint)
                ));
                per_service.push(sep);
            }
        }

        // "NOTE: this must be the last rule in this chain" (kube-proxy).
        match &options.nodeport_addresses {
            crate::render::NodePortAddresses::AllLocal => services.rule(format_args!(
                "{}-m addrtype --dst-type LOCAL ! -d {} -j {NODEPORTS}",
                c("drawbridge service nodeports; NOTE: this must be the last rule in this chain"),
                family.loopback()
            )),
            crate::render::NodePortAddresses::Cidrs(cidrs) => {
                for cidr in cidrs.iter().filter(in_family) {
                    services.rule(format_args!(
                        "{}-m addrtype --dst-type LOCAL -d {} -j {NODEPORTS}",
                        c("drawbridge service nodeports; NOTE: this must be the last rule in this chain"),
                        cidr.trunc()
                    ));
                }
            }
        }

        Ruleset {
            nat_top: vec![services, nodeports, mark_masq, postrouting],
            nat_service: per_service,
            filter: vec![f_services, f_external, f_forward, f_nodeports, f_firewall],
        }
    }

    /// The whole ruleset as one `iptables-restore --noflush` input (every chain declared, so
    /// flushed and rewritten). What a full sync writes, minus stale-chain deletions.
    pub fn full_text(&self) -> String {
        self.restore_text(|_| true, &[], &[])
    }

    /// `iptables-restore --noflush` input: the top-level nat chains and all filter chains whole,
    /// the per-Service nat chains for which `write` is true, and `stale_nat` / `stale_filter`
    /// chains flushed and deleted (`-X`, after every rule that could still refer to them is
    /// gone). Chains not written are left as the kernel holds them.
    pub fn restore_text(
        &self,
        write: impl Fn(&Chain) -> bool,
        stale_nat: &[String],
        stale_filter: &[String],
    ) -> String {
        let written: Vec<&Chain> = self.nat_service.iter().filter(|c| write(c)).collect();
        let size: usize = self
            .nat_top
            .iter()
            .chain(written.iter().copied())
            .chain(&self.filter)
            .map(|c| c.rules.len() + c.name.len() + 10)
            .sum::<usize>()
            + 64 * (stale_nat.len() + stale_filter.len())
            + 64;
        let mut out = String::with_capacity(size);
        out.push_str("*nat\n");
        for chain in self.nat_top.iter().chain(written.iter().copied()) {
            put!(out, ":{} - [0:0]\n", chain.name);
        }
        for name in stale_nat {
            put!(out, ":{name} - [0:0]\n");
        }
        for chain in self.nat_top.iter().chain(written.iter().copied()) {
            out.push_str(&chain.rules);
        }
        for name in stale_nat {
            put!(out, "-X {name}\n");
        }
        out.push_str("COMMIT\n*filter\n");
        for chain in &self.filter {
            put!(out, ":{} - [0:0]\n", chain.name);
        }
        for name in stale_filter {
            put!(out, ":{name} - [0:0]\n");
        }
        for chain in &self.filter {
            out.push_str(&chain.rules);
        }
        for name in stale_filter {
            put!(out, "-X {name}\n");
        }
        out.push_str("COMMIT\n");
        out
    }

    /// Digest of everything: equal digests mean there is nothing to send.
    fn digest(&self) -> u64 {
        let mut h = DefaultHasher::new();
        for chain in self
            .nat_top
            .iter()
            .chain(&self.nat_service)
            .chain(&self.filter)
        {
            h.write(chain.name.as_bytes());
            h.write_u8(0);
            h.write(chain.rules.as_bytes());
            h.write_u8(0);
        }
        h.finish()
    }
}

/// A policy chain (`SVC` or `SVL`): affinity checks first (§1.10), then kube-proxy's
/// `-m statistic --mode random --probability 1/(n-i)` spreading: rule i (i < n-1) fires with
/// probability 1/(n-i) among the packets that reach it, the last rule always; each endpoint is
/// chosen with probability 1/n.
fn policy_chain(
    name: &str,
    names: &PortChains,
    endpoints: &[Endpoint],
    affinity: Option<u32>,
    comments: bool,
) -> Chain {
    let mut chain = Chain::new(name);
    if let Some(seconds) = affinity {
        for endpoint in endpoints {
            let sep = names.endpoint(endpoint);
            chain.rule(format_args!(
                "{}-m recent --name {sep} --rcheck --seconds {seconds} --reap -j {sep}",
                Comment(
                    comments,
                    &format!("{} -> {}", names.name, endpoint_text(endpoint))
                )
            ));
        }
    }
    let n = endpoints.len();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let sep = names.endpoint(endpoint);
        let comment = Comment(
            comments,
            &format!("{} -> {}", names.name, endpoint_text(endpoint)),
        );
        if i + 1 < n {
            chain.rule(format_args!(
                "{comment}-m statistic --mode random --probability {} -j {sep}",
                probability(n - i)
            ));
        } else {
            chain.rule(format_args!("{comment}-j {sep}"));
        }
    }
    chain
}

/// `1/n` with 10 decimals, as kube-proxy's `probability()` (`%0.10f`).
pub fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

// === host jump rules ===

/// The rules in the built-in chains that lead into ours, kube-proxy's `iptablesJumpChains`
/// (`(table, built-in chain, rule arguments)`). Each is prepended (`-I CHAIN 1`) in this order,
/// so the last one listed ends up first.
pub fn jump_rules() -> Vec<(Table, &'static str, Vec<String>)> {
    let new = ["-m", "conntrack", "--ctstate", "NEW"];
    let rule = |pre: &[&str], comment: &str, target: &str| -> Vec<String> {
        let mut args: Vec<String> = pre.iter().map(|s| s.to_string()).collect();
        args.extend(["-m", "comment", "--comment", comment, "-j", target].map(String::from));
        args
    };
    vec![
        (
            Table::Filter,
            "INPUT",
            rule(
                &new,
                "drawbridge externally-visible service portals",
                EXTERNAL_SERVICES,
            ),
        ),
        (
            Table::Filter,
            "FORWARD",
            rule(
                &new,
                "drawbridge externally-visible service portals",
                EXTERNAL_SERVICES,
            ),
        ),
        (
            Table::Filter,
            "INPUT",
            rule(&[], "drawbridge health check service ports", NODEPORTS),
        ),
        (
            Table::Filter,
            "FORWARD",
            rule(&new, "drawbridge service portals", SERVICES),
        ),
        (
            Table::Filter,
            "OUTPUT",
            rule(&new, "drawbridge service portals", SERVICES),
        ),
        (
            Table::Filter,
            "FORWARD",
            rule(&[], "drawbridge forwarding rules", FORWARD),
        ),
        (
            Table::Filter,
            "INPUT",
            rule(&new, "drawbridge load balancer firewall", PROXY_FIREWALL),
        ),
        (
            Table::Filter,
            "OUTPUT",
            rule(&new, "drawbridge load balancer firewall", PROXY_FIREWALL),
        ),
        (
            Table::Filter,
            "FORWARD",
            rule(&new, "drawbridge load balancer firewall", PROXY_FIREWALL),
        ),
        (
            Table::Nat,
            "OUTPUT",
            rule(&[], "drawbridge service portals", SERVICES),
        ),
        (
            Table::Nat,
            "PREROUTING",
            rule(&[], "drawbridge service portals", SERVICES),
        ),
        (
            Table::Nat,
            "POSTROUTING",
            rule(&[], "drawbridge postrouting rules", POSTROUTING),
        ),
    ]
}

/// Whether `iptables-save` output already holds the jump rule `(chain, args)`: a rule in `chain`
/// with the same comment and target (iptables-save reorders matches, so the text is not compared
/// whole).
fn has_jump(save_output: &str, chain: &str, args: &[String]) -> bool {
    let comment = args
        .iter()
        .position(|a| a == "--comment")
        .and_then(|i| args.get(i + 1));
    let target = args.last();
    let prefix = format!("-A {chain} ");
    save_output.lines().any(|line| {
        line.starts_with(&prefix)
            && target.is_some_and(|t| line.ends_with(&format!("-j {t}")))
            && comment.is_none_or(|c| {
                line.contains(&format!("--comment \"{c}\""))
                    || line.contains(&format!("--comment {c} "))
            })
    })
}

/// Names of the chains starting with [`CHAIN_PREFIX`] in `iptables-save` output.
pub fn our_chains(save_output: &str) -> BTreeSet<String> {
    save_output
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with(CHAIN_PREFIX))
        .map(String::from)
        .collect()
}

/// Rules in built-in chains that jump to one of ours, as `-D` arguments (from `iptables-save`).
fn our_jumps(save_output: &str) -> Vec<Vec<String>> {
    save_output
        .lines()
        .filter_map(|l| l.strip_prefix("-A "))
        .filter(|l| {
            let chain = l.split_whitespace().next().unwrap_or("");
            !chain.starts_with(CHAIN_PREFIX) && l.contains(&format!("-j {CHAIN_PREFIX}"))
        })
        .map(split_save_rule)
        .collect()
}

/// Splits one `iptables-save` rule into arguments, honouring `"…"` quoting (comments).
fn split_save_rule(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut has = false;
    for ch in line.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                has = true;
            }
            ' ' if !quoted => {
                if has {
                    args.push(std::mem::take(&mut current));
                    has = false;
                }
            }
            _ => {
                current.push(ch);
                has = true;
            }
        }
    }
    if has {
        args.push(current);
    }
    args
}

// === the edge ===

/// Errors of the iptables edge.
///
/// Retry: a failed restore changes nothing (each table commits atomically); the proxier forces a
/// full restore next time, and the sync loop retries with its backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A binary could not be started or talked to.
    #[error("cannot run {program}")]
    SpawnFailed {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The command failed; for a restore, nothing was changed in the failing table.
    #[error("{command} failed ({status}): {stderr}")]
    CommandFailed {
        /// What ran (program and the first arguments).
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its stderr, trimmed (iptables-restore names the offending line).
        stderr: String,
    },
    /// A fake was told to fail.
    #[error("injected failure")]
    Injected,
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the proxier needs from iptables, per family. `&self` so that `cleanup` can run from a
/// shared reference.
pub trait Runner {
    /// `iptables-restore --noflush` with `text` on stdin (each table one atomic commit).
    fn restore(&self, family: Family, text: &str) -> Result<()>;
    /// `iptables-save -t <table>`.
    fn save(&self, family: Family, table: Table) -> Result<String>;
    /// `iptables -w 5 -t <table> <args>`: `Ok(true)` on success, `Ok(false)` when iptables exits 1
    /// (a `-C` that found no such rule), `Err` otherwise.
    fn run(&self, family: Family, table: Table, args: &[String]) -> Result<bool>;
}

/// Which iptables implementation the binaries drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavour {
    /// `iptables-legacy*` (x_tables). Preferred: Debian 12's nf_tables `iptables-restore` took
    /// 494 s where legacy took 9.5 s for 10,000 Services × 10 endpoints (service-proxy.md,
    /// "Measured on this machine").
    Legacy,
    /// `iptables-nft*` (nf_tables backend), or plain `iptables*` when no `-nft` names exist.
    Nft,
}

impl Flavour {
    /// [`Flavour::Legacy`] when `iptables-legacy-restore` is on `PATH`, else [`Flavour::Nft`].
    pub fn detect() -> Flavour {
        if on_path("iptables-legacy-restore") {
            Flavour::Legacy
        } else {
            Flavour::Nft
        }
    }

    /// The binary for `tool` (`""`, `"-restore"` or `"-save"`).
    fn binary(self, family: Family, tool: &str) -> String {
        let base = family.tool_prefix();
        match self {
            Flavour::Legacy => format!("{base}-legacy{tool}"),
            Flavour::Nft => {
                let named = format!("{base}-nft{tool}");
                if on_path(&named) {
                    named
                } else {
                    format!("{base}{tool}")
                }
            }
        }
    }

    /// Whether this flavour's restore binary exists for `family`.
    pub fn present(self, family: Family) -> bool {
        on_path(&self.binary(family, "-restore"))
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| Path::new(&dir).join(program).is_file())
    })
}

/// The real [`Runner`]: the iptables binaries of one [`Flavour`], optionally inside a network
/// namespace (`ip netns exec NAME …`, for tests and the bench).
#[derive(Clone, Debug)]
pub struct IptablesCli {
    flavour: Flavour,
    netns: Option<String>,
}

impl IptablesCli {
    /// Binaries of `flavour` in the current network namespace.
    pub fn new(flavour: Flavour) -> Self {
        IptablesCli {
            flavour,
            netns: None,
        }
    }

    /// Binaries of `flavour` inside network namespace `name` (as created by `ip netns add`).
    pub fn in_netns(flavour: Flavour, name: impl Into<String>) -> Self {
        IptablesCli {
            flavour,
            netns: Some(name.into()),
        }
    }

    /// The flavour in use.
    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    fn exec(&self, program: &str, args: &[String], stdin: Option<&str>) -> Result<(bool, String)> {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = crate::apply::run_program(self.netns.as_deref(), program, &argv, stdin)
            .map_err(|source| Error::SpawnFailed {
                program: program.to_string(),
                source,
            })?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            return Ok((true, stdout));
        }
        if output.status.code() == Some(1) && stdin.is_none() {
            return Ok((false, stdout));
        }
        let shown: Vec<&str> = args.iter().take(6).map(String::as_str).collect();
        Err(Error::CommandFailed {
            command: format!("{program} {}", shown.join(" ")),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

impl Runner for IptablesCli {
    fn restore(&self, family: Family, text: &str) -> Result<()> {
        let program = self.flavour.binary(family, "-restore");
        let args = ["--noflush", "--wait=5"].map(String::from);
        match self.exec(&program, &args, Some(text))? {
            (true, _) => Ok(()),
            // exec reports every non-zero exit of a stdin-fed command as an error.
            (false, _) => Err(Error::Injected),
        }
    }

    fn save(&self, family: Family, table: Table) -> Result<String> {
        let program = self.flavour.binary(family, "-save");
        let args = ["-t", table.as_str()].map(String::from);
        match self.exec(&program, &args, None)? {
            (true, out) => Ok(out),
            (false, _) => Ok(String::new()),
        }
    }

    fn run(&self, family: Family, table: Table, args: &[String]) -> Result<bool> {
        let program = self.flavour.binary(family, "");
        let mut all: Vec<String> = ["-w", "5", "-t", table.as_str()].map(String::from).to_vec();
        all.extend_from_slice(args);
        Ok(self.exec(&program, &all, None)?.0)
    }
}

/// Test fake: records restores and commands; `-C` answers from the rules it was given with
/// `-I`; `save` returns what was set in `saved`. Can be told to fail the next N restores.
#[derive(Debug, Default)]
pub struct FakeRunner {
    /// Every restore input received, in order (failed ones included).
    pub restores: Mutex<Vec<String>>,
    /// Every `run` call, as `table args…`.
    pub commands: Mutex<Vec<String>>,
    /// Rules inserted with `-I`, as `table chain args…`.
    pub rules: Mutex<BTreeSet<String>>,
    /// `iptables-save` output per table name.
    pub saved: Mutex<HashMap<&'static str, String>>,
    /// How many upcoming restores fail with [`Error::Injected`].
    pub fail_next: Mutex<usize>,
}

impl FakeRunner {
    /// The restores received so far.
    pub fn restores(&self) -> Vec<String> {
        self.restores.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Runner for FakeRunner {
    fn restore(&self, _family: Family, text: &str) -> Result<()> {
        if let Ok(mut r) = self.restores.lock() {
            r.push(text.to_string());
        }
        if let Ok(mut n) = self.fail_next.lock()
            && *n > 0
        {
            *n -= 1;
            return Err(Error::Injected);
        }
        Ok(())
    }

    fn save(&self, _family: Family, table: Table) -> Result<String> {
        Ok(self
            .saved
            .lock()
            .ok()
            .and_then(|s| s.get(table.as_str()).cloned())
            .unwrap_or_default())
    }

    fn run(&self, _family: Family, table: Table, args: &[String]) -> Result<bool> {
        let line = format!("{} {}", table.as_str(), args.join(" "));
        if let Ok(mut c) = self.commands.lock() {
            c.push(line);
        }
        let Some((op, rest)) = args.split_first() else {
            return Ok(true);
        };
        let key = format!("{} {}", table.as_str(), rest.join(" "));
        let mut rules = self.rules.lock().map_err(|_| Error::Injected)?;
        Ok(match op.as_str() {
            "-C" => rules.contains(&key),
            "-I" => {
                // `-I CHAIN 1 args…`: drop the position.
                let mut rest = rest.to_vec();
                if rest.len() > 1 {
                    rest.remove(1);
                }
                rules.insert(format!("{} {}", table.as_str(), rest.join(" ")));
                true
            }
            "-D" => rules.remove(&key),
            _ => true,
        })
    }
}

// === the proxier ===

/// What one [`IptablesProxier::sync`] sent to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncKind {
    /// Nothing: the desired state equals what the last successful sync wrote.
    Unchanged,
    /// Top-level chains plus only the per-Service chains whose content changed (and stale
    /// chains deleted).
    Partial,
    /// Every chain (first sync, or after a failure).
    Full,
}

/// The iptables proxier of one family: remembers a digest of every per-Service nat chain as the
/// last successful restore left it, so a sync writes only what changed (KEP-3453).
///
/// Level-triggered: [`IptablesProxier::sync`] takes the whole desired [`ServiceTable`] every
/// time; the diff is against what was written, not against change events.
#[derive(Debug)]
pub struct IptablesProxier<R> {
    runner: R,
    family: Family,
    /// Per-Service nat chain name → digest of its rules, as the kernel holds them.
    chains: HashMap<String, u64>,
    /// Digest of the whole ruleset last written successfully.
    last: Option<u64>,
    /// The next sync writes everything (start, or after a failure).
    need_full: bool,
    /// `--nodeport-addresses` and `--cluster-cidr` ([`Ruleset::build_with`]).
    options: crate::render::Options,
}

impl<R: Runner> IptablesProxier<R> {
    /// Sets the options the next sync renders with (a change shows up as changed chains).
    pub fn set_options(&mut self, options: crate::render::Options) {
        self.options = options;
    }

    /// The options syncs render with.
    pub fn options(&self) -> &crate::render::Options {
        &self.options
    }

    /// A proxier for `family` driving `runner`; its first sync is a full one.
    pub fn new(runner: R, family: Family) -> Self {
        IptablesProxier {
            runner,
            family,
            chains: HashMap::new(),
            last: None,
            need_full: true,
            options: crate::render::Options::default(),
        }
    }

    /// The runner (tests read the fake's records).
    pub fn runner(&self) -> &R {
        &self.runner
    }

    /// Makes the next sync a full one (e.g. after someone flushed our chains).
    pub fn force_full_sync(&mut self) {
        self.need_full = true;
    }

    /// Brings the kernel to `table`:
    /// - nothing sent when the rendered ruleset equals the last successfully written one;
    /// - full sync (first time, or after any failure): every chain is written, every
    ///   `DRAWBRIDGE-*` chain the kernel holds that is not wanted any more is flushed and deleted,
    ///   then the jump rules from the built-in chains that `iptables-save` did not show are
    ///   inserted (`-I … 1`);
    /// - partial sync: `DRAWBRIDGE-SERVICES` / `-NODEPORTS` / `-MARK-MASQ` / `-POSTROUTING` and
    ///   the filter chains whole, plus the per-Service chains whose rules changed; chains no
    ///   longer wanted are flushed and deleted in the same restore.
    ///
    /// Errors: a failed command or restore; the kernel keeps its previous rules (each table is
    /// one atomic commit) and the next sync is a full one.
    pub fn sync(&mut self, table: &ServiceTable) -> Result<SyncKind> {
        let ruleset = Ruleset::build_with(table, self.family, &self.options);
        let digest = ruleset.digest();
        if !self.need_full && self.last == Some(digest) {
            return Ok(SyncKind::Unchanged);
        }
        let result = if self.need_full {
            self.full_sync(&ruleset)
        } else {
            self.partial_sync(&ruleset)
        };
        match result {
            Ok(kind) => {
                self.chains = ruleset
                    .nat_service
                    .iter()
                    .map(|c| (c.name.clone(), c.digest()))
                    .collect();
                self.last = Some(digest);
                self.need_full = false;
                Ok(kind)
            }
            Err(error) => {
                self.need_full = true;
                self.last = None;
                Err(error)
            }
        }
    }

    fn full_sync(&mut self, ruleset: &Ruleset) -> Result<SyncKind> {
        let saved_nat = self.runner.save(self.family, Table::Nat)?;
        let saved_filter = self.runner.save(self.family, Table::Filter)?;
        let wanted: BTreeSet<&str> = ruleset
            .nat_top
            .iter()
            .chain(&ruleset.nat_service)
            .map(|c| c.name.as_str())
            .collect();
        let stale_nat: Vec<String> = our_chains(&saved_nat)
            .into_iter()
            .filter(|name| !wanted.contains(name.as_str()))
            .collect();
        let wanted_filter: BTreeSet<&str> =
            ruleset.filter.iter().map(|c| c.name.as_str()).collect();
        let stale_filter: Vec<String> = our_chains(&saved_filter)
            .into_iter()
            .filter(|name| !wanted_filter.contains(name.as_str()))
            .collect();
        let text = ruleset.restore_text(|_| true, &stale_nat, &stale_filter);
        self.runner.restore(self.family, &text)?;
        // After the restore, so that the chains exist; never before it (a restart must not
        // empty working chains before the new rules are in).
        self.ensure_jumps(&saved_nat, &saved_filter)?;
        Ok(SyncKind::Full)
    }

    fn partial_sync(&mut self, ruleset: &Ruleset) -> Result<SyncKind> {
        let wanted: BTreeSet<&str> = ruleset
            .nat_service
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        let mut stale: Vec<String> = self
            .chains
            .keys()
            .filter(|name| !wanted.contains(name.as_str()))
            .cloned()
            .collect();
        stale.sort();
        let previous = &self.chains;
        let text =
            ruleset.restore_text(|c| previous.get(&c.name) != Some(&c.digest()), &stale, &[]);
        self.runner.restore(self.family, &text)?;
        Ok(SyncKind::Partial)
    }

    /// Inserts (`-I CHAIN 1`) every jump rule that the `iptables-save` outputs taken before this
    /// full sync do not show. Checked against the saved text rather than with `iptables -C`: with
    /// the legacy flavour every `-C` reads the whole table out of the kernel (seconds at 10,000
    /// Services), while the text is already at hand.
    fn ensure_jumps(&self, saved_nat: &str, saved_filter: &str) -> Result<()> {
        for (table, chain, args) in jump_rules() {
            let saved = match table {
                Table::Nat => saved_nat,
                Table::Filter => saved_filter,
            };
            if !has_jump(saved, chain, &args) {
                let mut insert = vec!["-I".to_string(), chain.to_string(), "1".to_string()];
                insert.extend(args.iter().cloned());
                self.runner.run(self.family, table, &insert)?;
            }
        }
        Ok(())
    }

    /// Removes every jump rule into our chains and every `DRAWBRIDGE-*` chain, in nat and filter,
    /// for this proxier's runner and family. Idempotent; the next sync is a full one only if the
    /// caller says so ([`IptablesProxier::force_full_sync`]).
    pub fn cleanup(&self) -> Result<()> {
        cleanup_with(&self.runner, self.family)
    }
}

/// Removes every jump rule into `DRAWBRIDGE-*` chains and every such chain in nat and filter,
/// through `runner` for `family`. Tries everything, returns the first error.
pub fn cleanup_with<R: Runner + ?Sized>(runner: &R, family: Family) -> Result<()> {
    let mut first_error = None;
    for table in [Table::Nat, Table::Filter] {
        let saved = match runner.save(family, table) {
            Ok(s) => s,
            Err(e) => {
                first_error.get_or_insert(e);
                continue;
            }
        };
        for jump in our_jumps(&saved) {
            let mut args = vec!["-D".to_string()];
            args.extend(jump);
            if let Err(e) = runner.run(family, table, &args) {
                first_error.get_or_insert(e);
            }
        }
        let chains = our_chains(&saved);
        if chains.is_empty() {
            continue;
        }
        let mut text = format!("*{}\n", table.as_str());
        for name in &chains {
            put!(text, ":{name} - [0:0]\n");
        }
        for name in &chains {
            put!(text, "-X {name}\n");
        }
        text.push_str("COMMIT\n");
        if let Err(e) = runner.restore(family, &text) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// `--cleanup` / a switch to another proxy mode: [`cleanup_with`] for both families and both
/// flavours whose binaries exist, in the current network namespace or in `netns`. The legacy
/// flavour is skipped when the kernel has no legacy tables loaded (`/proc/net/ip_tables_names`
/// empty or missing), so cleanup never loads x_tables modules by itself. Returns the first
/// error after trying everything.
pub fn cleanup_everywhere(netns: Option<&str>) -> Result<()> {
    let mut first_error = None;
    for flavour in [Flavour::Legacy, Flavour::Nft] {
        for family in [Family::V4, Family::V6] {
            if !flavour.present(family) {
                continue;
            }
            let runner = match netns {
                Some(ns) => IptablesCli::in_netns(flavour, ns),
                None => IptablesCli::new(flavour),
            };
            if flavour == Flavour::Legacy && !legacy_tables_loaded(&runner, family) {
                continue;
            }
            if let Err(e) = cleanup_with(&runner, family) {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Whether the legacy (x_tables) `nat` or `filter` table exists in the runner's namespace.
fn legacy_tables_loaded(runner: &IptablesCli, family: Family) -> bool {
    let file = match family {
        Family::V4 => "/proc/net/ip_tables_names",
        Family::V6 => "/proc/net/ip6_tables_names",
    };
    let names = match &runner.netns {
        Some(ns) => Command::new("ip")
            .args(["netns", "exec", ns, "cat", file])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned()),
        None => std::fs::read_to_string(file).ok(),
    };
    names.is_some_and(|n| n.lines().any(|l| l == "nat" || l == "filter"))
}

#[cfg(test)]
mod tests;

//! Pure core: Services + EndpointSlices + this node ([`NodeContext`]) → one [`ServiceTable`] per IP
//! family, the desired state.
//!
//! No I/O here. The rules follow kube-proxy (`pkg/proxy/topology.go` `CategorizeEndpoints`,
//! `pkg/proxy/service.go`, `pkg/proxy/endpointslicecache.go`) as summarised in
//! `shared/reference/service-proxy.md` §1.0–§1.6, §1.9, §1.11, §1.15:
//!
//! - one [`ServicePort`] per `(Service, spec.ports[])` of every Service that has a ClusterIP of the
//!   table's [`IpFamily`] (headless `None` and `ExternalName` Services are skipped, §1.0); dual-stack
//!   is two independent tables, as kube-proxy runs one proxier per family (§1.17);
//! - Services labelled `service.kubernetes.io/service-proxy-name` with a value other than
//!   `drawbridge` are skipped (KEP-2447);
//! - EndpointSlices join their Service by label `kubernetes.io/service-name`, and a slice port joins
//!   a Service port by *name* and protocol (kube-proxy's `ServicePortName`);
//! - endpoints from all slices of a Service are merged and deduplicated by `(address, port)`;
//! - endpoint selection: Ready, else serving-and-terminating, per policy (§1.1, §1.15); the
//!   Cluster set is narrowed by topology hints (node, then zone) when every Ready endpoint carries
//!   them and one matches this node (§1.14, KEP-2433/4444/3015);
//! - `sessionAffinity: ClientIP` with `timeoutSeconds` (default 10800, §1.10),
//!   `loadBalancerSourceRanges` (§1.12), `healthCheckNodePort` (§1.7).
//!
//! A malformed object (an unparsable IP, a port out of range) is returned as a [`Skipped`] entry
//! and left out; everything else is still built.

use std::collections::{BTreeMap, btree_map::Entry};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use drawbridge_resources::names;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Why an object (or a part of it) was left out of the [`ServiceTable`].
///
/// Not retried by itself: the object is rebuilt from scratch on every sync, so fixing the object is
/// what makes it appear.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An address field does not parse as an IP address.
    #[error("{field}: {value:?} is not an IP address")]
    InvalidIp {
        /// The field, spelled as in the API (`spec.clusterIPs`, `endpoints[].addresses`, ...).
        field: &'static str,
        /// The text found.
        value: String,
    },
    /// A `loadBalancerSourceRanges` entry does not parse as a CIDR. Only that entry is dropped;
    /// the remaining ranges still apply (an all-invalid list admits nobody: fail closed).
    #[error("{field}: {value:?} is not a CIDR")]
    InvalidCidr {
        /// The field, spelled as in the API.
        field: &'static str,
        /// The text found.
        value: String,
    },
    /// A port field is outside 1..=65535.
    #[error("{field}: {value} is not a valid port")]
    InvalidPort {
        /// The field, spelled as in the API.
        field: &'static str,
        /// The number found.
        value: i32,
    },
    /// A protocol other than TCP, UDP or SCTP.
    #[error("{field}: unsupported protocol {value:?}")]
    UnsupportedProtocol {
        /// The field, spelled as in the API.
        field: &'static str,
        /// The text found.
        value: String,
    },
    /// The same destination is already claimed by another Service port (first in
    /// `namespace/name` order wins). Only that destination is dropped from this port.
    #[error("{destination} is already used by {owner}")]
    DuplicateDestination {
        /// `ip proto port` or `proto nodePort`.
        destination: String,
        /// The Service port that keeps it.
        owner: String,
    },
}

/// An object left out (wholly or partly) of the table, for the caller to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// `Service` or `EndpointSlice`.
    pub kind: &'static str,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// What is wrong with it.
    pub error: Error,
}

/// L4 protocol of a Service port (`spec.ports[].protocol`, default `TCP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// `TCP`.
    Tcp,
    /// `UDP`.
    Udp,
    /// `SCTP`.
    Sctp,
}

impl Protocol {
    /// Lower-case spelling, as nft's `inet_proto` and kube-proxy's chain names use it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    fn parse(field: &'static str, value: Option<&str>) -> Result<Self, Error> {
        match value.unwrap_or("TCP") {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(Error::UnsupportedProtocol {
                field,
                value: other.to_string(),
            }),
        }
    }
}

/// `spec.internalTrafficPolicy` / `spec.externalTrafficPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TrafficPolicy {
    /// Any Ready endpoint in the cluster (default).
    #[default]
    Cluster,
    /// Only endpoints on this node (`endpoints[].nodeName == --node-name`).
    Local,
}

impl TrafficPolicy {
    fn parse(value: Option<&str>) -> Self {
        match value {
            Some("Local") => TrafficPolicy::Local,
            _ => TrafficPolicy::Cluster,
        }
    }
}

/// The IP family of one table (kube-proxy runs one proxier per family, §1.17).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum IpFamily {
    /// IPv4: `ip` tables, `addressType: IPv4` slices.
    #[default]
    V4,
    /// IPv6: `ip6` tables, `addressType: IPv6` slices.
    V6,
}

impl IpFamily {
    /// The family of `ip`.
    pub fn of(ip: &IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// EndpointSlice `addressType` of this family.
    pub fn address_type(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }

    /// Both families, IPv4 first.
    pub const ALL: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];
}

/// What the model needs to know about the node it programs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeContext {
    /// `--node-name`: endpoints with this `nodeName` are local; node topology hints match it.
    pub name: String,
    /// The Node's `topology.kubernetes.io/zone` label, for zone hints (§1.14); `None` = no zone
    /// filtering.
    pub zone: Option<String>,
    /// The Node's `status.addresses[type=InternalIP]`: its primary addresses, where NodePorts
    /// are accepted by default (`--nodeport-addresses primary`, §1.3). Empty = not known.
    pub internal_ips: Vec<IpAddr>,
}

impl NodeContext {
    /// A node without a zone label.
    pub fn named(name: impl Into<String>) -> Self {
        NodeContext {
            name: name.into(),
            zone: None,
            internal_ips: vec![],
        }
    }
}

/// `sessionAffinityConfig.clientIP.timeoutSeconds` default: 3 hours (k8s.io/api `ClientIPConfig`).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10800;
/// Largest valid `timeoutSeconds` (1 day).
pub const MAX_AFFINITY_TIMEOUT_SECONDS: u32 = 86400;

/// kube-proxy's `ServicePortName`: the identity of one Service port, and the base of its chain names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    /// Service `metadata.namespace`.
    pub namespace: String,
    /// Service `metadata.name`.
    pub name: String,
    /// `spec.ports[].name`; empty for a Service's single unnamed port.
    pub port: String,
    /// `spec.ports[].protocol`.
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    /// `ns/name:port/proto`, the spelling used in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}:{}/{}",
            self.namespace,
            self.name,
            self.port,
            self.protocol.as_str()
        )
    }
}

/// One backend address for a Service port (from an EndpointSlice).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// `endpoints[].addresses[0]` (kube-proxy uses only the first address); of the table's family.
    pub ip: IpAddr,
    /// `ports[].port` of the slice port matching the Service port's name.
    pub port: u16,
}

/// Desired state for one Service port: its destinations, policies and chosen endpoints.
///
/// Written by [`ServiceTable::build`]; read by `render`. Every list is sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Identity, also the base of the nft chain names.
    pub id: ServicePortName,
    /// The entry of `spec.clusterIPs` (or `spec.clusterIP`) of the table's family.
    pub cluster_ip: IpAddr,
    /// `spec.ports[].port`.
    pub port: u16,
    /// `spec.ports[].nodePort`, if allocated.
    pub node_port: Option<u16>,
    /// `spec.externalIPs` of the table's family (§1.5).
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` of the table's family with `ipMode` VIP or unset;
    /// `Proxy` entries are ignored (KEP-1860, §1.4). Only for `type: LoadBalancer`.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges` of the table's family: new connections to the LB IPs (not
    /// NodePorts, not externalIPs) from other sources are dropped before DNAT (§1.12). Empty = no
    /// filtering. Only meaningful with `load_balancer_ips`.
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// `sessionAffinity: ClientIP`: `Some(timeoutSeconds)` (default 10800, §1.10); `None` for
    /// `sessionAffinity: None`.
    pub session_affinity: Option<u32>,
    /// `spec.healthCheckNodePort` (LoadBalancer with eTP=Local): the port of this Service's health
    /// server (§1.7).
    pub health_check_node_port: Option<u16>,
    /// Ready endpoints on this node (kube-proxy `LocalReadyEndpoints`, the health server's count;
    /// serving-terminating ones are not counted).
    pub local_ready_endpoints: usize,
    /// `spec.internalTrafficPolicy` (ClusterIP traffic, §1.9).
    pub internal_policy: TrafficPolicy,
    /// `spec.externalTrafficPolicy`, effective: `Local` only when the port is externally
    /// accessible (NodePort, LB IP or externalIP), as kube-proxy's `ExternalPolicyLocal`.
    pub external_policy: TrafficPolicy,
    /// Endpoints for Cluster policy: Ready ones cluster-wide, else serving-and-terminating ones
    /// (§1.1). Empty when no traffic uses Cluster policy.
    pub cluster_endpoints: Vec<Endpoint>,
    /// Endpoints for Local policy: Ready ones on this node, else serving-and-terminating ones on
    /// this node. Empty when no traffic uses Local policy.
    pub local_endpoints: Vec<Endpoint>,
    /// Whether any usable (Ready or serving-terminating) endpoint exists anywhere; decides
    /// REJECT (none at all) versus DROP (none for this policy) (§1.11).
    pub has_endpoints: bool,
}

impl ServicePort {
    /// NodePort, LB IP or externalIP traffic exists for this port (kube-proxy `ExternallyAccessible`).
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.load_balancer_ips.is_empty()
            || !self.external_ips.is_empty()
    }

    /// Some traffic uses the Cluster endpoint set: internal policy Cluster, or any external traffic
    /// (eTP=Local short-circuits host and pod traffic to the cluster set, §1.6).
    pub fn uses_cluster_endpoints(&self) -> bool {
        self.internal_policy == TrafficPolicy::Cluster || self.externally_accessible()
    }

    /// Some traffic uses the Local endpoint set.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy == TrafficPolicy::Local || self.external_policy == TrafficPolicy::Local
    }

    /// ClusterIP traffic has somewhere to go (else REJECT or, for iTP=Local, DROP).
    pub fn has_internal_endpoints(&self) -> bool {
        match self.internal_policy {
            TrafficPolicy::Cluster => self.has_endpoints,
            TrafficPolicy::Local => self.has_endpoints && !self.local_endpoints.is_empty(),
        }
    }

    /// External traffic from off-node sources has somewhere to go (else REJECT or, for
    /// eTP=Local, DROP).
    pub fn has_external_endpoints(&self) -> bool {
        match self.external_policy {
            TrafficPolicy::Cluster => self.has_endpoints,
            TrafficPolicy::Local => self.has_endpoints && !self.local_endpoints.is_empty(),
        }
    }
}

/// The desired service table of this node: every programmed Service port, sorted by
/// [`ServicePortName`]. Destinations are unique across ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceTable {
    /// One entry per Service port.
    pub ports: Vec<ServicePort>,
}

/// An endpoint as read from a slice, before selection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Candidate {
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
    /// `hints.forNodes`: `None` without node hints, else whether one names this node.
    node_hint: Option<bool>,
    /// `hints.forZones`: `None` without zone hints, else whether one is this node's zone.
    zone_hint: Option<bool>,
}

impl Candidate {
    fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }

    /// Preference when one endpoint appears in several slices: the most usable copy wins.
    fn rank(&self) -> u8 {
        if self.ready {
            2
        } else if self.serving_terminating() {
            1
        } else {
            0
        }
    }
}

/// Slice port key: `(ports[].name or "", protocol)`.
type SlicePortKey = (String, Protocol);
/// Endpoints of one Service, by slice port, deduplicated by address and port.
type ServiceEndpoints = BTreeMap<SlicePortKey, BTreeMap<Endpoint, Candidate>>;

// === impl ServiceTable ===

impl ServiceTable {
    /// The IPv4 table as seen by node `node_name` (no zone label). Shorthand for
    /// [`ServiceTable::build_for`].
    pub fn build<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        node_name: &str,
    ) -> (ServiceTable, Vec<Skipped>) {
        Self::build_for(
            services,
            slices,
            &NodeContext::named(node_name),
            IpFamily::V4,
        )
    }

    /// Builds the desired table of `family` from the current Services and EndpointSlices, as
    /// seen by `node`. Returns the table and the objects (or parts) that were left out.
    ///
    /// Deterministic: input order does not matter.
    pub fn build_for<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        node: &NodeContext,
        family: IpFamily,
    ) -> (ServiceTable, Vec<Skipped>) {
        let mut skipped = Vec::new();
        let endpoints = collect_endpoints(slices, node, family, &mut skipped);

        let mut services: Vec<&Service> = services.into_iter().collect();
        services.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });

        let mut ports = Vec::new();
        for service in services {
            let namespace = service.metadata.namespace.clone().unwrap_or_default();
            let name = service.metadata.name.clone().unwrap_or_default();
            let mut report = |error| {
                skipped.push(Skipped {
                    kind: "Service",
                    namespace: namespace.clone(),
                    name: name.clone(),
                    error,
                })
            };
            match service_ports(service, &namespace, &name, family, &mut report) {
                Ok(built) => {
                    let empty = ServiceEndpoints::new();
                    let eps = endpoints
                        .get(&(namespace.clone(), name.clone()))
                        .unwrap_or(&empty);
                    for mut port in built {
                        let key = (port.id.port.clone(), port.id.protocol);
                        if let Some(candidates) = eps.get(&key) {
                            select_endpoints(&mut port, candidates);
                        }
                        ports.push(port);
                    }
                }
                Err(error) => report(error),
            }
        }
        ports.sort_by(|a, b| a.id.cmp(&b.id));
        claim_destinations(&mut ports, &mut skipped);
        (ServiceTable { ports }, skipped)
    }
}

/// The Service's ports of `family`, without endpoints; `Ok(vec![])` for Services that are not
/// ours to program. Problems that drop only a part (a bad source range) go to `report`.
fn service_ports(
    service: &Service,
    namespace: &str,
    name: &str,
    family: IpFamily,
    report: &mut dyn FnMut(Error),
) -> Result<Vec<ServicePort>, Error> {
    let labels = service.metadata.labels.as_ref();
    if let Some(proxy) = labels.and_then(|l| l.get(names::LABEL_SERVICE_PROXY_NAME))
        && proxy != names::SERVICE_PROXY_NAME
    {
        return Ok(vec![]); // Another proxy owns it (KEP-2447).
    }
    let Some(spec) = &service.spec else {
        return Ok(vec![]);
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(vec![]);
    }

    let cluster_ips: Vec<&str> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    let mut cluster_ip = None;
    for text in cluster_ips {
        if text.is_empty() || text == "None" {
            return Ok(vec![]); // Headless.
        }
        let ip = parse_ip("spec.clusterIPs", text)?;
        if IpFamily::of(&ip) == family && cluster_ip.is_none() {
            cluster_ip = Some(ip);
        }
    }
    // No ClusterIP of this family: not this proxier's business (§1.17).
    let Some(cluster_ip) = cluster_ip else {
        return Ok(vec![]);
    };

    let mut external_ips = Vec::new();
    for text in spec.external_ips.iter().flatten() {
        let ip = parse_ip("spec.externalIPs", text)?;
        if IpFamily::of(&ip) == family {
            external_ips.push(ip);
        }
    }
    let mut load_balancer_ips = Vec::new();
    let mut source_ranges = Vec::new();
    if spec.type_.as_deref() == Some("LoadBalancer") {
        let ingress = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        for entry in ingress.into_iter().flatten() {
            // ipMode Proxy: the LB delivers to nodes or pods itself; ignore the IP (KEP-1860).
            if entry.ip_mode.as_deref().is_some_and(|mode| mode != "VIP") {
                continue;
            }
            let Some(text) = entry.ip.as_deref().filter(|t| !t.is_empty()) else {
                continue;
            };
            let ip = parse_ip("status.loadBalancer.ingress[].ip", text)?;
            if IpFamily::of(&ip) == family {
                load_balancer_ips.push(ip);
            }
        }
        let ranges = spec
            .load_balancer_source_ranges
            .as_deref()
            .unwrap_or_default();
        for text in ranges {
            match text.trim().parse::<IpNet>() {
                Ok(net) => {
                    let in_family = match family {
                        IpFamily::V4 => matches!(net, IpNet::V4(_)),
                        IpFamily::V6 => matches!(net, IpNet::V6(_)),
                    };
                    if in_family {
                        source_ranges.push(net.trunc());
                    }
                }
                Err(_) => report(Error::InvalidCidr {
                    field: "spec.loadBalancerSourceRanges",
                    value: text.clone(),
                }),
            }
        }
        if !ranges.is_empty() && source_ranges.is_empty() {
            // Ranges were given but none admits this family (or none parses): admit nobody
            // rather than everybody. The unspecified /32 (/128) matches no real source.
            source_ranges.push(match family {
                IpFamily::V4 => "0.0.0.0/32".parse().expect("literal CIDR"),
                IpFamily::V6 => "::/128".parse().expect("literal CIDR"),
            });
        }
    }
    external_ips.sort();
    external_ips.dedup();
    load_balancer_ips.sort();
    load_balancer_ips.dedup();
    source_ranges.sort();
    source_ranges.dedup();
    // An address listed both ways is dispatched once (same external chain either way).
    external_ips.retain(|ip| !load_balancer_ips.contains(ip));

    let internal_policy = TrafficPolicy::parse(spec.internal_traffic_policy.as_deref());
    let external_policy = TrafficPolicy::parse(spec.external_traffic_policy.as_deref());
    let session_affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| (1..=MAX_AFFINITY_TIMEOUT_SECONDS).contains(t))
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS)
    });
    let health_check_node_port = match spec.health_check_node_port {
        Some(n) if n != 0 && spec.type_.as_deref() == Some("LoadBalancer") => {
            Some(parse_port("spec.healthCheckNodePort", n)?)
        }
        _ => None,
    };

    let mut ports = Vec::new();
    for port in spec.ports.iter().flatten() {
        let protocol = Protocol::parse("spec.ports[].protocol", port.protocol.as_deref())?;
        let number = parse_port("spec.ports[].port", port.port)?;
        let node_port = match port.node_port {
            None | Some(0) => None,
            Some(n) => Some(parse_port("spec.ports[].nodePort", n)?),
        };
        let mut built = ServicePort {
            id: ServicePortName {
                namespace: namespace.to_string(),
                name: name.to_string(),
                port: port.name.clone().unwrap_or_default(),
                protocol,
            },
            cluster_ip,
            port: number,
            node_port,
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            load_balancer_source_ranges: if load_balancer_ips.is_empty() {
                vec![]
            } else {
                source_ranges.clone()
            },
            session_affinity,
            health_check_node_port: None,
            local_ready_endpoints: 0,
            internal_policy,
            external_policy: TrafficPolicy::Cluster,
            cluster_endpoints: vec![],
            local_endpoints: vec![],
            has_endpoints: false,
        };
        if built.externally_accessible() {
            built.external_policy = external_policy;
        }
        if built.external_policy == TrafficPolicy::Local {
            built.health_check_node_port = health_check_node_port;
        }
        ports.push(built);
    }
    Ok(ports)
}

/// Merges all EndpointSlices of `family` by owning Service (`(namespace, service-name label)`).
fn collect_endpoints<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &NodeContext,
    family: IpFamily,
    skipped: &mut Vec<Skipped>,
) -> BTreeMap<(String, String), ServiceEndpoints> {
    let mut slices: Vec<&EndpointSlice> = slices.into_iter().collect();
    slices.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });

    let mut by_service: BTreeMap<(String, String), ServiceEndpoints> = BTreeMap::new();
    for slice in slices {
        // Other families' and FQDN slices are not this proxier's (§1.17).
        if slice.address_type != family.address_type() {
            continue;
        }
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(names::LABEL_SERVICE_NAME))
        else {
            continue; // Not attached to a Service (custom slice without the label).
        };
        let namespace = slice.metadata.namespace.clone().unwrap_or_default();
        match slice_endpoints(slice, node, family) {
            Ok(ports) => {
                let merged = by_service.entry((namespace, service.clone())).or_default();
                for (key, endpoints) in ports {
                    let port = merged.entry(key).or_default();
                    for (endpoint, candidate) in endpoints {
                        match port.entry(endpoint) {
                            Entry::Vacant(v) => {
                                v.insert(candidate);
                            }
                            Entry::Occupied(mut o) if candidate.rank() > o.get().rank() => {
                                o.insert(candidate);
                            }
                            Entry::Occupied(_) => {}
                        }
                    }
                }
            }
            Err(error) => skipped.push(Skipped {
                kind: "EndpointSlice",
                namespace,
                name: slice.metadata.name.clone().unwrap_or_default(),
                error,
            }),
        }
    }
    by_service
}

/// One slice's endpoints by slice port; all-or-nothing (a bad address skips the slice).
fn slice_endpoints(
    slice: &EndpointSlice,
    node: &NodeContext,
    family: IpFamily,
) -> Result<ServiceEndpoints, Error> {
    let mut addresses = Vec::new();
    for endpoint in &slice.endpoints {
        let Some(text) = endpoint.addresses.first() else {
            continue;
        };
        let ip = parse_ip("endpoints[].addresses", text)?;
        if IpFamily::of(&ip) != family {
            return Err(Error::InvalidIp {
                field: "endpoints[].addresses",
                value: text.clone(),
            });
        }
        let conditions = endpoint.conditions.as_ref();
        // API defaults: nil ready/serving mean true, nil terminating means false
        // (kube-proxy endpointslicecache.go).
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let hints = endpoint.hints.as_ref();
        let candidate = Candidate {
            ready,
            serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            local: endpoint.node_name.as_deref() == Some(node.name.as_str()),
            node_hint: hints
                .and_then(|h| h.for_nodes.as_ref())
                .filter(|n| !n.is_empty())
                .map(|n| n.iter().any(|h| h.name == node.name)),
            zone_hint: hints
                .and_then(|h| h.for_zones.as_ref())
                .filter(|z| !z.is_empty())
                .map(|z| z.iter().any(|h| Some(&h.name) == node.zone.as_ref())),
        };
        addresses.push((ip, candidate));
    }

    let mut ports = ServiceEndpoints::new();
    for port in slice.ports.iter().flatten() {
        let protocol = Protocol::parse("ports[].protocol", port.protocol.as_deref())?;
        // kube-proxy ignores slice ports without a number.
        let Some(number) = port.port else { continue };
        let number = parse_port("ports[].port", number)?;
        let entry: &mut BTreeMap<Endpoint, Candidate> = ports
            .entry((port.name.clone().unwrap_or_default(), protocol))
            .or_default();
        for (ip, candidate) in &addresses {
            let endpoint = Endpoint {
                ip: *ip,
                port: number,
            };
            match entry.get(&endpoint) {
                Some(existing) if existing.rank() >= candidate.rank() => {}
                _ => {
                    entry.insert(endpoint, *candidate);
                }
            }
        }
    }
    Ok(ports)
}

/// kube-proxy `CategorizeEndpoints` (§1.1) with topology (§1.14): the Cluster set keeps only the
/// Ready endpoints hinted for this node when every Ready endpoint has node hints and one matches
/// (PreferSameNode), else those hinted for this node's zone when every Ready endpoint has zone
/// hints and one matches (PreferSameZone), else all Ready ones; partial hints are ignored.
fn select_endpoints(port: &mut ServicePort, candidates: &BTreeMap<Endpoint, Candidate>) {
    let pick = |filter: &dyn Fn(&Candidate) -> bool| -> Vec<Endpoint> {
        candidates
            .iter()
            .filter(|(_, c)| filter(c))
            .map(|(e, _)| *e)
            .collect()
    };
    let any_usable = candidates
        .values()
        .any(|c| c.ready || c.serving_terminating());

    if port.uses_cluster_endpoints() {
        let ready = || candidates.values().filter(|c| c.ready);
        let mut cluster = if ready().next().is_some()
            && ready().all(|c| c.node_hint.is_some())
            && ready().any(|c| c.node_hint == Some(true))
        {
            pick(&|c| c.ready && c.node_hint == Some(true))
        } else if ready().next().is_some()
            && ready().all(|c| c.zone_hint.is_some())
            && ready().any(|c| c.zone_hint == Some(true))
        {
            pick(&|c| c.ready && c.zone_hint == Some(true))
        } else {
            pick(&|c| c.ready)
        };
        if cluster.is_empty() {
            // Fallback ignores topology (kube-proxy topology.go).
            cluster = pick(&|c| c.serving_terminating());
        }
        port.cluster_endpoints = cluster;
    }
    if port.uses_local_endpoints() {
        let mut local = pick(&|c| c.local && c.ready);
        if local.is_empty() {
            local = pick(&|c| c.local && c.serving_terminating());
        }
        port.local_endpoints = local;
    }
    port.local_ready_endpoints = candidates.values().filter(|c| c.local && c.ready).count();
    port.has_endpoints = any_usable;
}

/// Makes every map key unique across ports: the first port (in sorted order) keeps a contested
/// destination, later ones lose it and are reported. nft refuses a transaction with conflicting
/// map elements, so one bad Service must not break everyone's.
fn claim_destinations(ports: &mut Vec<ServicePort>, skipped: &mut Vec<Skipped>) {
    let mut claimed: BTreeMap<String, String> = BTreeMap::new();
    let mut claim =
        |destination: String, owner: &ServicePortName, skipped: &mut Vec<Skipped>| -> bool {
            match claimed.entry(destination) {
                Entry::Vacant(v) => {
                    v.insert(owner.to_string());
                    true
                }
                Entry::Occupied(o) => {
                    skipped.push(Skipped {
                        kind: "Service",
                        namespace: owner.namespace.clone(),
                        name: owner.name.clone(),
                        error: Error::DuplicateDestination {
                            destination: o.key().clone(),
                            owner: o.get().clone(),
                        },
                    });
                    false
                }
            }
        };
    // Losing the ClusterIP key loses the whole port (its chains would be unreachable anyway).
    ports.retain_mut(|port| {
        let proto = port.id.protocol.as_str();
        let id = port.id.clone();
        let number = port.port;
        if !claim(
            format!("{} {proto} {number}", port.cluster_ip),
            &id,
            skipped,
        ) {
            return false;
        }
        port.external_ips
            .retain(|ip| claim(format!("{ip} {proto} {number}"), &id, skipped));
        port.load_balancer_ips
            .retain(|ip| claim(format!("{ip} {proto} {number}"), &id, skipped));
        if let Some(node_port) = port.node_port
            && !claim(format!("{proto} nodePort {node_port}"), &id, skipped)
        {
            port.node_port = None;
        }
        true
    });
}

fn parse_ip(field: &'static str, text: &str) -> Result<IpAddr, Error> {
    text.parse().map_err(|_| Error::InvalidIp {
        field,
        value: text.to_string(),
    })
}

fn parse_port(field: &'static str, value: i32) -> Result<u16, Error> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(Error::InvalidPort { field, value })
}

#[cfg(test)]
pub(crate) mod tests;

//! Pure core: Services + EndpointSlices + this node's name → [`ServiceTable`], the desired state.
//!
//! No I/O here. The rules follow kube-proxy (`pkg/proxy/topology.go` `CategorizeEndpoints`,
//! `pkg/proxy/service.go`, `pkg/proxy/endpointslicecache.go`) as summarised in
//! `shared/reference/service-proxy.md` §1.0–§1.6, §1.9, §1.11, §1.15:
//!
//! - one [`ServicePort`] per `(Service, spec.ports[])` of every Service that has an IPv4 ClusterIP
//!   (headless `None` and `ExternalName` Services are skipped, §1.0);
//! - Services labelled `service.kubernetes.io/service-proxy-name` with a value other than
//!   `drawbridge` are skipped (KEP-2447);
//! - EndpointSlices join their Service by label `kubernetes.io/service-name`, and a slice port joins
//!   a Service port by *name* and protocol (kube-proxy's `ServicePortName`);
//! - endpoints from all slices of a Service are merged and deduplicated by `(address, port)`;
//! - endpoint selection: Ready, else serving-and-terminating, per policy (§1.1, §1.15).
//!
//! A malformed object (an unparsable IP, a port out of range) is returned as a [`Skipped`] entry
//! and left out; everything else is still built.

use std::collections::{BTreeMap, btree_map::Entry};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

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
    /// `endpoints[].addresses[0]` (kube-proxy uses only the first address).
    pub ip: Ipv4Addr,
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
    /// The IPv4 entry of `spec.clusterIPs` (or `spec.clusterIP`).
    pub cluster_ip: Ipv4Addr,
    /// `spec.ports[].port`.
    pub port: u16,
    /// `spec.ports[].nodePort`, if allocated.
    pub node_port: Option<u16>,
    /// IPv4 `spec.externalIPs` (§1.5).
    pub external_ips: Vec<Ipv4Addr>,
    /// IPv4 `status.loadBalancer.ingress[].ip` with `ipMode` VIP or unset; `Proxy` entries are
    /// ignored (KEP-1860, §1.4). Only for `type: LoadBalancer`.
    pub load_balancer_ips: Vec<Ipv4Addr>,
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
    /// Builds the desired table from the current Services and EndpointSlices, as seen by the
    /// node named `node_name`. Returns the table and the objects that were left out.
    ///
    /// Deterministic: input order does not matter.
    pub fn build<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        node_name: &str,
    ) -> (ServiceTable, Vec<Skipped>) {
        let mut skipped = Vec::new();
        let endpoints = collect_endpoints(slices, node_name, &mut skipped);

        let mut services: Vec<&Service> = services.into_iter().collect();
        services.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });

        let mut ports = Vec::new();
        for service in services {
            let namespace = service.metadata.namespace.clone().unwrap_or_default();
            let name = service.metadata.name.clone().unwrap_or_default();
            match service_ports(service, &namespace, &name) {
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
                Err(error) => skipped.push(Skipped {
                    kind: "Service",
                    namespace,
                    name,
                    error,
                }),
            }
        }
        ports.sort_by(|a, b| a.id.cmp(&b.id));
        claim_destinations(&mut ports, &mut skipped);
        (ServiceTable { ports }, skipped)
    }
}

/// The Service's ports, without endpoints; `Ok(vec![])` for Services that are not ours to program.
fn service_ports(
    service: &Service,
    namespace: &str,
    name: &str,
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
        if let IpAddr::V4(ip) = parse_ip("spec.clusterIPs", text)?
            && cluster_ip.is_none()
        {
            cluster_ip = Some(ip);
        }
    }
    // No IPv4 ClusterIP: IPv6-only Service, not this (IPv4) proxier's business (§1.17).
    let Some(cluster_ip) = cluster_ip else {
        return Ok(vec![]);
    };

    let mut external_ips = Vec::new();
    for text in spec.external_ips.iter().flatten() {
        if let IpAddr::V4(ip) = parse_ip("spec.externalIPs", text)? {
            external_ips.push(ip);
        }
    }
    let mut load_balancer_ips = Vec::new();
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
            if let IpAddr::V4(ip) = parse_ip("status.loadBalancer.ingress[].ip", text)? {
                load_balancer_ips.push(ip);
            }
        }
    }
    external_ips.sort();
    external_ips.dedup();
    load_balancer_ips.sort();
    load_balancer_ips.dedup();
    // An address listed both ways is dispatched once (same external chain either way).
    external_ips.retain(|ip| !load_balancer_ips.contains(ip));

    let internal_policy = TrafficPolicy::parse(spec.internal_traffic_policy.as_deref());
    let external_policy = TrafficPolicy::parse(spec.external_traffic_policy.as_deref());

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
            internal_policy,
            external_policy: TrafficPolicy::Cluster,
            cluster_endpoints: vec![],
            local_endpoints: vec![],
            has_endpoints: false,
        };
        if built.externally_accessible() {
            built.external_policy = external_policy;
        }
        ports.push(built);
    }
    Ok(ports)
}

/// Merges all IPv4 EndpointSlices by owning Service (`(namespace, service-name label)`).
fn collect_endpoints<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node_name: &str,
    skipped: &mut Vec<Skipped>,
) -> BTreeMap<(String, String), ServiceEndpoints> {
    let mut slices: Vec<&EndpointSlice> = slices.into_iter().collect();
    slices.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });

    let mut by_service: BTreeMap<(String, String), ServiceEndpoints> = BTreeMap::new();
    for slice in slices {
        // IPv6 and FQDN slices are not this proxier's (§1.17).
        if slice.address_type != "IPv4" {
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
        match slice_endpoints(slice, node_name) {
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
fn slice_endpoints(slice: &EndpointSlice, node_name: &str) -> Result<ServiceEndpoints, Error> {
    let mut addresses = Vec::new();
    for endpoint in &slice.endpoints {
        let Some(text) = endpoint.addresses.first() else {
            continue;
        };
        let ip = match parse_ip("endpoints[].addresses", text)? {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(_) => {
                return Err(Error::InvalidIp {
                    field: "endpoints[].addresses",
                    value: text.clone(),
                });
            }
        };
        let conditions = endpoint.conditions.as_ref();
        // API defaults: nil ready/serving mean true, nil terminating means false
        // (kube-proxy endpointslicecache.go).
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let candidate = Candidate {
            ready,
            serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            local: endpoint.node_name.as_deref() == Some(node_name),
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

/// kube-proxy `CategorizeEndpoints` without topology hints (§1.1).
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
        let mut cluster = pick(&|c| c.ready);
        if cluster.is_empty() {
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

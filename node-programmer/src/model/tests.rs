//! Builders for Services / EndpointSlices (shared with render and sync tests) and model tests.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort as ApiServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint as ApiEndpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

// === builders ===

pub(crate) struct Svc(Service);

pub(crate) fn mk_service(namespace: &str, name: &str) -> Svc {
    Svc(Service {
        metadata: ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            ..Default::default()
        }),
        status: None,
    })
}

impl Svc {
    fn spec(&mut self) -> &mut ServiceSpec {
        self.0.spec.as_mut().expect("builder always sets spec")
    }

    pub(crate) fn cluster_ip(mut self, ip: &str) -> Self {
        self.spec().cluster_ip = Some(ip.into());
        self.spec().cluster_ips = Some(vec![ip.into()]);
        self
    }

    pub(crate) fn type_(mut self, t: &str) -> Self {
        self.spec().type_ = Some(t.into());
        self
    }

    pub(crate) fn port(self, name: &str, port: i32) -> Self {
        self.port_proto(name, port, "TCP")
    }

    pub(crate) fn port_proto(mut self, name: &str, port: i32, protocol: &str) -> Self {
        self.spec()
            .ports
            .get_or_insert_default()
            .push(ApiServicePort {
                name: (!name.is_empty()).then(|| name.into()),
                port,
                protocol: Some(protocol.into()),
                ..Default::default()
            });
        self
    }

    /// Sets the nodePort of the last port added.
    pub(crate) fn node_port(mut self, node_port: i32) -> Self {
        let last = self
            .spec()
            .ports
            .as_mut()
            .and_then(|p| p.last_mut())
            .expect("port() first");
        last.node_port = Some(node_port);
        self
    }

    pub(crate) fn external_ip(mut self, ip: &str) -> Self {
        self.spec()
            .external_ips
            .get_or_insert_default()
            .push(ip.into());
        self
    }

    fn ingress(mut self, ip: &str, mode: Option<&str>) -> Self {
        self.spec().type_ = Some("LoadBalancer".into());
        let status = self.0.status.get_or_insert_default();
        let lb = status
            .load_balancer
            .get_or_insert_with(LoadBalancerStatus::default);
        lb.ingress
            .get_or_insert_default()
            .push(LoadBalancerIngress {
                ip: Some(ip.into()),
                ip_mode: mode.map(Into::into),
                ..Default::default()
            });
        self
    }

    /// Adds `status.loadBalancer.ingress[].ip` (ipMode unset = VIP); makes the type LoadBalancer.
    pub(crate) fn lb_ip(self, ip: &str) -> Self {
        self.ingress(ip, None)
    }

    pub(crate) fn lb_ip_mode(self, ip: &str, mode: &str) -> Self {
        self.ingress(ip, Some(mode))
    }

    pub(crate) fn etp_local(mut self) -> Self {
        self.spec().external_traffic_policy = Some("Local".into());
        self
    }

    pub(crate) fn itp_local(mut self) -> Self {
        self.spec().internal_traffic_policy = Some("Local".into());
        self
    }

    pub(crate) fn label(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_default()
            .insert(key.into(), value.into());
        self
    }

    /// `sessionAffinity: ClientIP` with `timeoutSeconds`.
    pub(crate) fn client_ip_affinity(mut self, timeout: i32) -> Self {
        use k8s_openapi::api::core::v1::{ClientIPConfig, SessionAffinityConfig};
        self.spec().session_affinity = Some("ClientIP".into());
        self.spec().session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(timeout),
            }),
        });
        self
    }

    pub(crate) fn source_range(mut self, cidr: &str) -> Self {
        self.spec()
            .load_balancer_source_ranges
            .get_or_insert_default()
            .push(cidr.into());
        self
    }

    pub(crate) fn health_check_node_port(mut self, port: i32) -> Self {
        self.spec().health_check_node_port = Some(port);
        self
    }

    /// Sets `spec.clusterIPs` (dual-stack) and `spec.clusterIP` to the first.
    pub(crate) fn cluster_ips(mut self, ips: &[&str]) -> Self {
        self.spec().cluster_ip = Some(ips[0].into());
        self.spec().cluster_ips = Some(ips.iter().map(|s| s.to_string()).collect());
        self
    }

    pub(crate) fn build(self) -> Service {
        self.0
    }
}

pub(crate) struct Slice(EndpointSlice);

pub(crate) fn mk_slice(namespace: &str, name: &str, service: &str) -> Slice {
    Slice(EndpointSlice {
        address_type: "IPv4".into(),
        endpoints: vec![],
        metadata: ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(
                names::LABEL_SERVICE_NAME.to_string(),
                service.to_string(),
            )])),
            ..Default::default()
        },
        ports: None,
    })
}

impl Slice {
    pub(crate) fn port(self, name: &str, port: i32) -> Self {
        self.port_proto(name, port, "TCP")
    }

    pub(crate) fn port_proto(mut self, name: &str, port: i32, protocol: &str) -> Self {
        self.0.ports.get_or_insert_default().push(EndpointPort {
            name: (!name.is_empty()).then(|| name.into()),
            port: Some(port),
            protocol: Some(protocol.into()),
            ..Default::default()
        });
        self
    }

    pub(crate) fn address_type(mut self, t: &str) -> Self {
        self.0.address_type = t.into();
        self
    }

    fn endpoint(
        mut self,
        ip: &str,
        node: &str,
        ready: bool,
        serving: bool,
        terminating: bool,
    ) -> Self {
        self.0.endpoints.push(ApiEndpoint {
            addresses: vec![ip.into()],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            node_name: Some(node.into()),
            ..Default::default()
        });
        self
    }

    pub(crate) fn ready(self, ip: &str, node: &str) -> Self {
        self.endpoint(ip, node, true, true, false)
    }

    /// Terminating and still serving (graceful shutdown).
    pub(crate) fn serving_terminating(self, ip: &str, node: &str) -> Self {
        self.endpoint(ip, node, false, true, true)
    }

    /// Terminating and no longer serving: never used.
    pub(crate) fn terminating(self, ip: &str, node: &str) -> Self {
        self.endpoint(ip, node, false, false, true)
    }

    pub(crate) fn not_ready(self, ip: &str, node: &str) -> Self {
        self.endpoint(ip, node, false, false, false)
    }

    /// Sets topology hints on the last endpoint added.
    pub(crate) fn hints(mut self, zones: &[&str], nodes: &[&str]) -> Self {
        use k8s_openapi::api::discovery::v1::{EndpointHints, ForNode, ForZone};
        let last = self.0.endpoints.last_mut().expect("endpoint first");
        last.hints = Some(EndpointHints {
            for_zones: (!zones.is_empty()).then(|| {
                zones
                    .iter()
                    .map(|z| ForZone {
                        name: z.to_string(),
                    })
                    .collect()
            }),
            for_nodes: (!nodes.is_empty()).then(|| {
                nodes
                    .iter()
                    .map(|n| ForNode {
                        name: n.to_string(),
                    })
                    .collect()
            }),
        });
        self
    }

    pub(crate) fn build(self) -> EndpointSlice {
        self.0
    }
}

// === helpers ===

fn build(services: &[Service], slices: &[EndpointSlice]) -> (ServiceTable, Vec<Skipped>) {
    ServiceTable::build(services, slices, "node-a")
}

fn ep(ip: &str, port: u16) -> Endpoint {
    Endpoint {
        ip: ip.parse().expect("test IP"),
        port,
    }
}

fn only_port(table: &ServiceTable) -> &ServicePort {
    assert_eq!(table.ports.len(), 1, "{table:#?}");
    &table.ports[0]
}

fn web() -> Svc {
    mk_service("ns", "web")
        .cluster_ip("198.18.0.10")
        .port("http", 80)
}

// === shared by the render and iptables golden tests ===

/// Compares `actual` with the golden file `<crate>/<dir>/<file>`; with `UPDATE_GOLDEN` set, writes
/// it instead. Panics naming the first differing line.
pub(crate) fn golden(dir: &str, file: &str, actual: &str) {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(dir)
        .join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("golden dir")).expect("create golden dir");
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b);
        panic!(
            "{} differs from the rendered text (first differing line: {:?}); rerun with UPDATE_GOLDEN=1 \
             if the change is intended.\n--- rendered ---\n{actual}",
            path.display(),
            first.map(|l| l + 1)
        );
    }
}

/// The core of both backends' "small world", as seen from `node-a`:
/// - `demo/web`: ClusterIP + NodePort 30080 + LB IP 203.0.113.10 + externalIP 198.51.100.100,
///   eTP=Cluster, two Ready endpoints (one per node) and one not-ready;
/// - `demo/local`: LoadBalancer with eTP=Local, one endpoint here and one on node-b;
/// - `demo/local-elsewhere`: eTP=Local LoadBalancer whose only endpoint is on node-b (DROP external);
/// - `demo/empty`: LoadBalancer without endpoints (REJECT everywhere);
/// - `demo/dns`: UDP + TCP ports of the same number, matched by port name.
///
/// Each test module appends its own extra Services (`extra`, inserted before `demo/dns` so the
/// golden files keep their order) and slices, then builds the table with [`table_of`].
pub(crate) fn small_world_with(
    extra_services: Vec<Service>,
    extra_slices: Vec<EndpointSlice>,
) -> ServiceTable {
    let mut services = vec![
        mk_service("demo", "web")
            .cluster_ip("198.18.0.10")
            .port("http", 80)
            .node_port(30080)
            .lb_ip("203.0.113.10")
            .external_ip("198.51.100.100")
            .build(),
        mk_service("demo", "local")
            .cluster_ip("198.18.0.11")
            .port("http", 80)
            .node_port(30081)
            .lb_ip("203.0.113.11")
            .etp_local()
            .build(),
        mk_service("demo", "local-elsewhere")
            .cluster_ip("198.18.0.12")
            .port("http", 80)
            .node_port(30082)
            .lb_ip("203.0.113.12")
            .etp_local()
            .build(),
        mk_service("demo", "empty")
            .cluster_ip("198.18.0.20")
            .port("http", 80)
            .node_port(30090)
            .lb_ip("203.0.113.20")
            .build(),
    ];
    services.extend(extra_services);
    services.push(
        mk_service("demo", "dns")
            .cluster_ip("198.18.0.53")
            .port_proto("dns", 53, "UDP")
            .port_proto("dns-tcp", 53, "TCP")
            .build(),
    );
    let mut slices = vec![
        mk_slice("demo", "web-abc", "web")
            .port("http", 8080)
            .ready("192.0.2.10", "node-a")
            .ready("192.0.2.9", "node-b")
            .not_ready("192.0.2.11", "node-a")
            .build(),
        mk_slice("demo", "local-abc", "local")
            .port("http", 8080)
            .ready("192.0.2.20", "node-a")
            .ready("192.0.2.21", "node-b")
            .build(),
        mk_slice("demo", "local-elsewhere-abc", "local-elsewhere")
            .port("http", 8080)
            .ready("192.0.2.30", "node-b")
            .build(),
        mk_slice("demo", "dns-abc", "dns")
            .port_proto("dns", 1053, "UDP")
            .port_proto("dns-tcp", 1053, "TCP")
            .ready("192.0.2.53", "node-b")
            .build(),
    ];
    slices.extend(extra_slices);
    let (table, skipped) = ServiceTable::build(&services, &slices, "node-a");
    assert!(skipped.is_empty(), "{skipped:?}");
    table
}

// === tests ===

#[test]
fn ready_endpoints_are_used_and_not_ready_ones_are_not() {
    let slice = mk_slice("ns", "web-1", "web")
        .port("http", 8080)
        .ready("192.0.2.11", "node-b")
        .ready("192.0.2.10", "node-a")
        .not_ready("192.0.2.12", "node-a")
        .serving_terminating("192.0.2.13", "node-a")
        .build();
    let (table, skipped) = build(&[web().build()], &[slice]);
    assert!(skipped.is_empty());
    let port = only_port(&table);
    assert_eq!(
        port.cluster_endpoints,
        [ep("192.0.2.10", 8080), ep("192.0.2.11", 8080)]
    );
    assert!(port.local_endpoints.is_empty(), "no Local policy in use");
    assert!(port.has_endpoints);
}

#[test]
fn serving_terminating_endpoints_are_a_fallback_only() {
    let slice = mk_slice("ns", "web-1", "web")
        .port("http", 8080)
        .serving_terminating("192.0.2.13", "node-b")
        .terminating("192.0.2.14", "node-b")
        .not_ready("192.0.2.12", "node-a")
        .build();
    let (table, _) = build(&[web().build()], &[slice]);
    let port = only_port(&table);
    assert_eq!(port.cluster_endpoints, [ep("192.0.2.13", 8080)]);
    assert!(port.has_endpoints);
}

#[test]
fn terminating_not_serving_endpoints_are_never_used() {
    let slice = mk_slice("ns", "web-1", "web")
        .port("http", 8080)
        .terminating("192.0.2.14", "node-a")
        .build();
    let (table, _) = build(&[web().build()], &[slice]);
    let port = only_port(&table);
    assert!(port.cluster_endpoints.is_empty());
    assert!(!port.has_endpoints);
    assert!(!port.has_internal_endpoints());
}

#[test]
fn external_traffic_policy_local_selects_node_local_endpoints() {
    let svc = web()
        .node_port(30080)
        .lb_ip("203.0.113.10")
        .etp_local()
        .build();
    let slice = mk_slice("ns", "web-1", "web")
        .port("http", 8080)
        .ready("192.0.2.10", "node-a")
        .ready("192.0.2.11", "node-b")
        .build();
    let (table, _) = build(&[svc], &[slice]);
    let port = only_port(&table);
    assert_eq!(port.external_policy, TrafficPolicy::Local);
    assert_eq!(port.local_endpoints, [ep("192.0.2.10", 8080)]);
    // iTP=Cluster and the host short-circuit still use the whole cluster set.
    assert_eq!(port.cluster_endpoints.len(), 2);
    assert!(port.has_external_endpoints());
}

#[test]
fn external_traffic_policy_local_without_local_endpoints() {
    let svc = web().node_port(30080).etp_local().build();
    let slice = mk_slice("ns", "web-1", "web")
        .port("http", 8080)
        .ready("192.0.2.11", "node-b")
        .build();
    let (table, _) = build(&[svc], &[slice]);
    let port = only_port(&table);
    assert!(port.local_endpoints.is_empty());
    assert!(port.has_endpoints, "endpoints exist elsewhere");
    assert!(
        !port.has_external_endpoints(),
        "external traffic is dropped"
    );
    assert!(
        port.has_internal_endpoints(),
        "ClusterIP traffic still works"
    );
}

#[test]
fn local_fallback_is_to_local_serving_terminating_only() {
    let svc = web().node_port(30080).etp_local().build();
    let slice = mk_slice("ns", "web-1", "web")
        .port("http", 8080)
        .serving_terminating("192.0.2.10", "node-a")
        .ready("192.0.2.11", "node-b")
        .build();
    let (table, _) = build(&[svc], &[slice]);
    let port = only_port(&table);
    assert_eq!(port.local_endpoints, [ep("192.0.2.10", 8080)]);
    assert_eq!(
        port.cluster_endpoints,
        [ep("192.0.2.11", 8080)],
        "cluster set prefers Ready"
    );
}

#[test]
fn external_traffic_policy_is_ignored_for_cluster_ip_services() {
    let (table, _) = build(&[web().etp_local().build()], &[]);
    assert_eq!(only_port(&table).external_policy, TrafficPolicy::Cluster);
}

#[test]
fn internal_traffic_policy_local() {
    let slice = mk_slice("ns", "web-1", "web")
        .port("http", 8080)
        .ready("192.0.2.11", "node-b")
        .build();
    let (table, _) = build(&[web().itp_local().build()], &[slice]);
    let port = only_port(&table);
    assert!(port.has_endpoints);
    assert!(!port.has_internal_endpoints(), "DROP, not REJECT (§1.9)");
}

#[test]
fn slice_ports_match_service_ports_by_name_and_protocol() {
    let svc = mk_service("ns", "dns")
        .cluster_ip("198.18.0.53")
        .port_proto("dns", 53, "UDP")
        .port_proto("dns-tcp", 53, "TCP")
        .port("metrics", 9153)
        .build();
    let slice = mk_slice("ns", "dns-1", "dns")
        .port_proto("dns", 1053, "UDP")
        .port_proto("dns-tcp", 1054, "TCP")
        .port("metrics", 19153)
        .port("unrelated", 1)
        .port_proto("dns", 2053, "TCP") // same name, other protocol: not the UDP port
        .ready("192.0.2.10", "node-a")
        .build();
    let (table, _) = build(&[svc], &[slice]);
    let by_name: BTreeMap<_, _> = table
        .ports
        .iter()
        .map(|p| (p.id.port.as_str(), p))
        .collect();
    assert_eq!(by_name["dns"].id.protocol, Protocol::Udp);
    assert_eq!(by_name["dns"].cluster_endpoints, [ep("192.0.2.10", 1053)]);
    assert_eq!(
        by_name["dns-tcp"].cluster_endpoints,
        [ep("192.0.2.10", 1054)]
    );
    assert_eq!(
        by_name["metrics"].cluster_endpoints,
        [ep("192.0.2.10", 19153)]
    );
    assert_eq!(table.ports.len(), 3);
}

#[test]
fn unnamed_ports_match_unnamed_slice_ports() {
    let svc = mk_service("ns", "web")
        .cluster_ip("198.18.0.10")
        .port("", 80)
        .build();
    let slice = mk_slice("ns", "web-1", "web")
        .port("", 8080)
        .ready("192.0.2.10", "node-a")
        .build();
    let (table, _) = build(&[svc], &[slice]);
    assert_eq!(
        only_port(&table).cluster_endpoints,
        [ep("192.0.2.10", 8080)]
    );
}

#[test]
fn slices_are_merged_and_deduplicated() {
    let a = mk_slice("ns", "web-a", "web")
        .port("http", 8080)
        .not_ready("192.0.2.10", "node-a")
        .build();
    let b = mk_slice("ns", "web-b", "web")
        .port("http", 8080)
        .ready("192.0.2.10", "node-a")
        .ready("192.0.2.11", "node-b")
        .build();
    let other = mk_slice("ns", "api-1", "api")
        .port("http", 8080)
        .ready("192.0.2.99", "node-a")
        .build();
    let wrong_ns = mk_slice("other", "web-1", "web")
        .port("http", 8080)
        .ready("192.0.2.98", "node-a")
        .build();
    let (table, _) = build(&[web().build()], &[b, other, a, wrong_ns]);
    // The Ready copy of 192.0.2.10 wins over the not-ready one, whatever the slice order.
    assert_eq!(
        only_port(&table).cluster_endpoints,
        [ep("192.0.2.10", 8080), ep("192.0.2.11", 8080)]
    );
}

#[test]
fn ipv6_and_fqdn_slices_are_ignored() {
    let v6 = mk_slice("ns", "web-v6", "web")
        .address_type("IPv6")
        .port("http", 8080)
        .ready("2001:db8::1", "node-a");
    let (table, skipped) = build(&[web().build()], &[v6.build()]);
    assert!(skipped.is_empty());
    assert!(!only_port(&table).has_endpoints);
}

#[test]
fn skipped_services() {
    let headless = mk_service("ns", "headless")
        .cluster_ip("None")
        .port("http", 80)
        .build();
    let external_name = mk_service("ns", "ext")
        .type_("ExternalName")
        .port("http", 80)
        .build();
    let other_proxy = web()
        .label(names::LABEL_SERVICE_PROXY_NAME, "someone-else")
        .build();
    let ours = mk_service("ns", "ours")
        .cluster_ip("198.18.0.11")
        .port("http", 80)
        .label(names::LABEL_SERVICE_PROXY_NAME, names::SERVICE_PROXY_NAME)
        .build();
    let v6_only = mk_service("ns", "v6")
        .cluster_ip("2001:db8::10")
        .port("http", 80)
        .build();
    let (table, skipped) = build(&[headless, external_name, other_proxy, ours, v6_only], &[]);
    assert!(skipped.is_empty());
    assert_eq!(only_port(&table).id.name, "ours");
}

#[test]
fn load_balancer_ip_mode_proxy_is_ignored() {
    let svc = web()
        .lb_ip("203.0.113.10")
        .lb_ip_mode("203.0.113.11", "Proxy")
        .lb_ip_mode("203.0.113.12", "VIP")
        .build();
    let (table, _) = build(&[svc], &[]);
    let ips: Vec<String> = only_port(&table)
        .load_balancer_ips
        .iter()
        .map(|ip| ip.to_string())
        .collect();
    assert_eq!(ips, ["203.0.113.10", "203.0.113.12"]);
}

#[test]
fn load_balancer_ips_need_type_load_balancer() {
    let svc = web().lb_ip("203.0.113.10").type_("ClusterIP").build();
    let (table, _) = build(&[svc], &[]);
    assert!(only_port(&table).load_balancer_ips.is_empty());
}

#[test]
fn malformed_objects_are_reported_and_the_rest_is_built() {
    let bad_ip = mk_service("ns", "bad")
        .cluster_ip("198.18.0.300")
        .port("http", 80)
        .build();
    let bad_lb = mk_service("ns", "bad-lb")
        .cluster_ip("198.18.0.12")
        .port("http", 80)
        .lb_ip("nope")
        .build();
    let bad_slice = mk_slice("ns", "web-bad", "web")
        .port("http", 8080)
        .ready("192.0.2.x", "node-a")
        .build();
    let good_slice = mk_slice("ns", "web-good", "web")
        .port("http", 8080)
        .ready("192.0.2.10", "node-a")
        .build();
    let (table, skipped) = build(&[bad_ip, web().build(), bad_lb], &[bad_slice, good_slice]);
    assert_eq!(
        only_port(&table).cluster_endpoints,
        [ep("192.0.2.10", 8080)]
    );
    let names: Vec<(&str, &str)> = skipped.iter().map(|s| (s.kind, s.name.as_str())).collect();
    assert_eq!(
        names,
        [
            ("EndpointSlice", "web-bad"),
            ("Service", "bad"),
            ("Service", "bad-lb")
        ]
    );
    assert!(matches!(
        skipped[1].error,
        Error::InvalidIp {
            field: "spec.clusterIPs",
            ..
        }
    ));
}

#[test]
fn a_contested_destination_goes_to_the_first_service() {
    let a = mk_service("ns", "a")
        .cluster_ip("198.18.0.10")
        .port("http", 80)
        .lb_ip("203.0.113.10")
        .build();
    let b = mk_service("ns", "b")
        .cluster_ip("198.18.0.11")
        .port("http", 80)
        .lb_ip("203.0.113.10")
        .build();
    let (table, skipped) = build(&[b, a], &[]);
    assert_eq!(table.ports.len(), 2);
    assert_eq!(table.ports[0].load_balancer_ips.len(), 1);
    assert!(table.ports[1].load_balancer_ips.is_empty());
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].name, "b");
}

#[test]
fn input_order_does_not_matter() {
    let s1 = web().build();
    let s2 = mk_service("ns", "api")
        .cluster_ip("198.18.0.12")
        .port("grpc", 9000)
        .build();
    let e1 = mk_slice("ns", "web-1", "web")
        .port("http", 8080)
        .ready("192.0.2.10", "node-a")
        .build();
    let e2 = mk_slice("ns", "web-2", "web")
        .port("http", 8080)
        .ready("192.0.2.9", "node-b")
        .build();
    let (t1, _) = build(&[s1.clone(), s2.clone()], &[e1.clone(), e2.clone()]);
    let (t2, _) = build(&[s2, s1], &[e2, e1]);
    assert_eq!(t1, t2);
}

// === affinity, source ranges, health check, topology, dual-stack ===

#[test]
fn client_ip_affinity_defaults_and_bounds() {
    let table = |timeout| {
        let (t, _) = build(&[web().client_ip_affinity(timeout).build()], &[]);
        only_port(&t).session_affinity
    };
    assert_eq!(table(60), Some(60));
    // Out of range (API validation would refuse it): the default, 3 hours.
    assert_eq!(table(0), Some(DEFAULT_AFFINITY_TIMEOUT_SECONDS));
    assert_eq!(table(86401), Some(DEFAULT_AFFINITY_TIMEOUT_SECONDS));
    let (t, _) = build(&[web().build()], &[]);
    assert_eq!(only_port(&t).session_affinity, None);
}

#[test]
fn source_ranges_apply_to_lb_ips_only_and_fail_closed() {
    let (t, skipped) = build(
        &[web()
            .lb_ip("203.0.113.10")
            .source_range("198.51.100.0/24")
            .source_range("198.51.100.7/24")
            .source_range("2001:db8::/64")
            .source_range("not-a-cidr")
            .build()],
        &[],
    );
    let port = only_port(&t);
    // Host bits cleared and deduplicated; the IPv6 range belongs to the IPv6 table.
    assert_eq!(
        port.load_balancer_source_ranges,
        vec!["198.51.100.0/24".parse::<IpNet>().expect("cidr")]
    );
    assert!(
        matches!(skipped[0].error, Error::InvalidCidr { .. }),
        "{skipped:?}"
    );

    // Only invalid ranges: nobody is admitted, rather than everybody.
    let (t, _) = build(
        &[web().lb_ip("203.0.113.10").source_range("bad").build()],
        &[],
    );
    assert_eq!(
        only_port(&t).load_balancer_source_ranges,
        vec!["0.0.0.0/32".parse::<IpNet>().expect("cidr")]
    );
    // No LB IP: nothing to filter.
    let (t, _) = build(&[web().source_range("198.51.100.0/24").build()], &[]);
    assert!(only_port(&t).load_balancer_source_ranges.is_empty());
}

#[test]
fn health_check_node_port_and_local_ready_count() {
    let services = [web()
        .node_port(30080)
        .lb_ip("203.0.113.10")
        .etp_local()
        .health_check_node_port(32000)
        .build()];
    let slices = [mk_slice("ns", "web-1", "web")
        .port("http", 8080)
        .ready("192.0.2.1", "node-a")
        .ready("192.0.2.2", "node-b")
        .serving_terminating("192.0.2.3", "node-a")
        .build()];
    let (t, _) = build(&services, &slices);
    let port = only_port(&t);
    assert_eq!(port.health_check_node_port, Some(32000));
    // Serving-terminating local endpoints are not counted (KEP-1669).
    assert_eq!(port.local_ready_endpoints, 1);

    // eTP=Cluster: no health check server even if the field is set.
    let services = [web()
        .lb_ip("203.0.113.10")
        .health_check_node_port(32000)
        .build()];
    let (t, _) = build(&services, &[]);
    assert_eq!(only_port(&t).health_check_node_port, None);
}

fn zoned(node: &str, zone: &str, slices: &[EndpointSlice]) -> ServicePort {
    let node = NodeContext {
        name: node.into(),
        zone: Some(zone.into()),
        internal_ips: vec![],
    };
    let (t, _) = ServiceTable::build_for(&[web().build()], slices, &node, IpFamily::V4);
    only_port(&t).clone()
}

#[test]
fn zone_hints_narrow_the_cluster_set_only_when_complete() {
    let hinted = mk_slice("ns", "web-1", "web")
        .port("http", 8080)
        .ready("192.0.2.1", "node-a")
        .hints(&["zone-a"], &[])
        .ready("192.0.2.2", "node-b")
        .hints(&["zone-b"], &[])
        .build();
    assert_eq!(
        zoned("node-a", "zone-a", std::slice::from_ref(&hinted)).cluster_endpoints,
        vec![ep("192.0.2.1", 8080)]
    );
    // No endpoint for our zone: no filtering.
    assert_eq!(
        zoned("node-c", "zone-c", std::slice::from_ref(&hinted))
            .cluster_endpoints
            .len(),
        2
    );
    // Partial hints are ignored (safe transitions, KEP-2433).
    let partial = mk_slice("ns", "web-1", "web")
        .port("http", 8080)
        .ready("192.0.2.1", "node-a")
        .hints(&["zone-a"], &[])
        .ready("192.0.2.2", "node-b")
        .build();
    assert_eq!(
        zoned("node-a", "zone-a", &[partial])
            .cluster_endpoints
            .len(),
        2
    );
}

#[test]
fn node_hints_win_over_zone_hints() {
    let slice = mk_slice("ns", "web-1", "web")
        .port("http", 8080)
        .ready("192.0.2.1", "node-a")
        .hints(&["zone-a"], &["node-a"])
        .ready("192.0.2.2", "node-b")
        .hints(&["zone-a"], &["node-b"])
        .build();
    assert_eq!(
        zoned("node-b", "zone-a", &[slice]).cluster_endpoints,
        vec![ep("192.0.2.2", 8080)]
    );
}

#[test]
fn dual_stack_builds_one_table_per_family() {
    let services = [mk_service("ns", "web")
        .cluster_ips(&["198.18.0.10", "2001:db8:ffff::10"])
        .port("http", 80)
        .lb_ip("203.0.113.10")
        .lb_ip("2001:db8:1::10")
        .build()];
    let slices = [
        mk_slice("ns", "web-v4", "web")
            .port("http", 8080)
            .ready("192.0.2.1", "node-a")
            .build(),
        mk_slice("ns", "web-v6", "web")
            .address_type("IPv6")
            .port("http", 8080)
            .ready("2001:db8:2::1", "node-a")
            .build(),
    ];
    let node = NodeContext::named("node-a");
    let (v4, s4) = ServiceTable::build_for(&services, &slices, &node, IpFamily::V4);
    let (v6, s6) = ServiceTable::build_for(&services, &slices, &node, IpFamily::V6);
    assert!(s4.is_empty() && s6.is_empty(), "{s4:?} {s6:?}");
    assert_eq!(
        only_port(&v4).cluster_ip,
        "198.18.0.10".parse::<IpAddr>().expect("ip")
    );
    assert_eq!(
        only_port(&v4).cluster_endpoints,
        vec![ep("192.0.2.1", 8080)]
    );
    assert_eq!(
        only_port(&v6).cluster_ip,
        "2001:db8:ffff::10".parse::<IpAddr>().expect("ip")
    );
    assert_eq!(
        only_port(&v6).load_balancer_ips,
        vec!["2001:db8:1::10".parse::<IpAddr>().expect("ip")]
    );
    assert_eq!(
        only_port(&v6).cluster_endpoints,
        vec![ep("2001:db8:2::1", 8080)]
    );
}

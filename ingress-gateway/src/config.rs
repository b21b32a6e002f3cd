//! Kubernetes objects → the gateway's validated model (pure: no I/O, no clocks).
//!
//! ```text
//!  IngressClass ─► which Ingresses are ours ─┐
//!  Ingress ──────► validate, translate ──────┼─► Model { routes: RouteTable, served, tls, problems }
//!  Service ──────► port number/name ─► port name
//!  EndpointSlice ► (label kubernetes.io/service-name, port of that name) ─► ready endpoints
//! ```
//!
//! Rules (`shared/reference/ingress-v1.md`):
//! - **Class.** `spec.ingressClassName` must name an IngressClass whose `spec.controller` is
//!   [`names::INGRESS_CONTROLLER`]. Without it, the deprecated `kubernetes.io/ingress.class`
//!   annotation is honoured (ours when it names such a class, or is `drawbridge`). With neither,
//!   the Ingress is ours only if one of our IngressClasses carries
//!   `ingressclass.kubernetes.io/is-default-class: "true"`.
//! - **pathType `ImplementationSpecific`** is served as `Prefix` (drawbridge's documented choice);
//!   its path may be omitted and then means `/`.
//! - **Order.** Ingresses are taken in `(namespace, name)` order: on an exact duplicate rule, a
//!   conflicting TLS host, or several `spec.defaultBackend`s, the first one wins.
//! - **Backends.** The Service port is found by number or name; its *name* selects the
//!   EndpointSlice port (so `targetPort`, named or numbered, is honoured); endpoints are the `ready`
//!   ones (a missing condition counts as ready, per the API), or the `serving` + `terminating`
//!   ones when none is ready. No Service, no such port, or no endpoints: a backend without
//!   endpoints (the gateway answers 503).
//! - **Malformed Ingresses** (a path not starting with `/`, an unknown pathType, a `resource`
//!   backend, a bad wildcard host) are skipped whole and listed in [`Model::problems`]; the others
//!   are served.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use drawbridge_resources::names;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};

use crate::metrics::RouteStats;
use crate::routes::{Backend, HostMatch, PathType, Route, RouteTable};

/// Why an Ingress was not served. Not retried by itself: the Ingress is skipped until it is
/// edited (every change recomputes the model).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A path of pathType `Exact` / `Prefix` is missing or does not start with `/`.
    #[error("Ingress {ingress}: path {path:?} must start with '/'")]
    InvalidPath {
        /// `namespace/name`.
        ingress: String,
        /// The offending path.
        path: String,
    },
    /// `pathType` is not `Exact`, `Prefix` or `ImplementationSpecific`.
    #[error("Ingress {ingress}: unknown pathType {path_type:?}")]
    UnknownPathType {
        /// `namespace/name`.
        ingress: String,
        /// The offending value.
        path_type: String,
    },
    /// The backend is a `resource` reference (another kind), which a proxy cannot forward to.
    #[error("Ingress {ingress}: resource backends ({kind}) are not supported")]
    ResourceBackend {
        /// `namespace/name`.
        ingress: String,
        /// The referenced kind.
        kind: String,
    },
    /// The backend has no `service`, or its `service.port` has neither `number` nor `name`.
    #[error("Ingress {ingress}: backend needs service.name and service.port.number or .name")]
    IncompleteBackend {
        /// `namespace/name`.
        ingress: String,
    },
    /// A host is not a DNS name or a `*.` + DNS name wildcard.
    #[error("Ingress {ingress}: invalid host {host:?}")]
    InvalidHost {
        /// `namespace/name`.
        ingress: String,
        /// The offending host.
        host: String,
    },
}

impl Error {
    /// `namespace/name` of the Ingress that was skipped.
    pub fn ingress(&self) -> &str {
        match self {
            Error::InvalidPath { ingress, .. }
            | Error::UnknownPathType { ingress, .. }
            | Error::ResourceBackend { ingress, .. }
            | Error::IncompleteBackend { ingress }
            | Error::InvalidHost { ingress, .. } => ingress,
        }
    }
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The objects the model is computed from (snapshots of the reflector stores).
#[derive(Clone, Copy, Debug, Default)]
pub struct Input<'a> {
    /// All Ingresses.
    pub ingresses: &'a [Arc<Ingress>],
    /// All IngressClasses.
    pub ingress_classes: &'a [Arc<IngressClass>],
    /// All Services.
    pub services: &'a [Arc<Service>],
    /// All EndpointSlices.
    pub endpoint_slices: &'a [Arc<EndpointSlice>],
}

/// Namespace and name of an object.
pub type ObjectRef = (String, String);

/// A TLS host and the Secret holding its certificate (`spec.tls[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsBinding {
    /// The host as in `spec.tls[].hosts`, lower-cased (may be `*.suffix`).
    pub host: String,
    /// The Secret: the Ingress's namespace and `secretName`.
    pub secret: ObjectRef,
}

/// Everything the gateway serves, computed from one [`Input`].
#[derive(Debug, Default)]
pub struct Model {
    /// Host/path rules and the default backend.
    pub routes: RouteTable,
    /// The Ingresses served (ours and valid): they get `status.loadBalancer`.
    pub served: BTreeSet<ObjectRef>,
    /// TLS hosts in precedence order (first binding of a host wins).
    pub tls: Vec<TlsBinding>,
    /// Ingresses of our class that were skipped, and why.
    pub problems: Vec<Error>,
}

/// Computes the [`Model`] for `input`.
pub fn translate(input: Input<'_>) -> Model {
    let mut ingresses: Vec<&Ingress> = input
        .ingresses
        .iter()
        .map(|i| &**i)
        .filter(|i| is_ours(i, input.ingress_classes))
        .collect();
    ingresses.sort_by_cached_key(|i| key_of(i));

    let mut resolver = BackendResolver::new(input.services, input.endpoint_slices);
    let mut model = Model::default();
    let mut routes = Vec::new();
    let mut default_backend = None;
    for ingress in ingresses {
        let key = key_of(ingress);
        match translate_ingress(ingress, &key, &mut resolver) {
            Ok(translated) => {
                routes.extend(translated.routes);
                if default_backend.is_none() {
                    default_backend = translated.default_backend;
                }
                model.tls.extend(translated.tls);
                model.served.insert(key);
            }
            Err(error) => model.problems.push(error),
        }
    }
    model.routes = RouteTable::new(routes, default_backend);
    model
}

fn key_of(ingress: &Ingress) -> ObjectRef {
    (
        ingress.metadata.namespace.clone().unwrap_or_default(),
        ingress.metadata.name.clone().unwrap_or_default(),
    )
}

fn is_our_class(class: &IngressClass) -> bool {
    class.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(names::INGRESS_CONTROLLER)
}

/// Whether `ingress` belongs to drawbridge (see the module docs for the rules).
pub fn is_ours(ingress: &Ingress, classes: &[Arc<IngressClass>]) -> bool {
    let class_named = |name: &str| {
        classes
            .iter()
            .any(|c| c.metadata.name.as_deref() == Some(name) && is_our_class(c))
    };
    if let Some(name) = ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
    {
        return class_named(name);
    }
    let annotation = ingress
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(names::ANNOTATION_INGRESS_CLASS));
    if let Some(name) = annotation {
        return name == names::INGRESS_CLASS_NAME || class_named(name);
    }
    classes.iter().any(|c| {
        is_our_class(c)
            && c.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(names::ANNOTATION_DEFAULT_INGRESS_CLASS))
                .is_some_and(|v| v == "true")
    })
}

struct Translated {
    routes: Vec<Route>,
    default_backend: Option<Arc<Backend>>,
    tls: Vec<TlsBinding>,
}

fn translate_ingress(
    ingress: &Ingress,
    key: &ObjectRef,
    resolver: &mut BackendResolver<'_>,
) -> Result<Translated> {
    let (namespace, _) = key;
    let name = || format!("{}/{}", key.0, key.1);
    let mut out = Translated {
        routes: Vec::new(),
        default_backend: None,
        tls: Vec::new(),
    };
    let Some(spec) = &ingress.spec else {
        return Ok(out);
    };
    if let Some(backend) = &spec.default_backend {
        out.default_backend = Some(resolver.resolve(namespace, backend, &name, ANY_HOST)?);
    }
    for rule in spec.rules.iter().flatten() {
        let host = rule.host.as_deref().filter(|h| !h.is_empty());
        if let Some(h) = host {
            validate_host(h).map_err(|()| Error::InvalidHost {
                ingress: name(),
                host: h.to_string(),
            })?;
        }
        let host_label = host.unwrap_or(ANY_HOST);
        let host = HostMatch::from_ingress_host(host);
        for path in rule.http.iter().flat_map(|h| &h.paths) {
            let path_type = match path.path_type.as_str() {
                "Exact" => PathType::Exact,
                "Prefix" => PathType::Prefix,
                // Documented choice: ImplementationSpecific is Prefix.
                "ImplementationSpecific" => PathType::Prefix,
                other => {
                    return Err(Error::UnknownPathType {
                        ingress: name(),
                        path_type: other.to_string(),
                    });
                }
            };
            let p = match path.path.as_deref() {
                None | Some("") if path.path_type == "ImplementationSpecific" => "/",
                p => p.unwrap_or(""),
            };
            if !p.starts_with('/') {
                return Err(Error::InvalidPath {
                    ingress: name(),
                    path: p.to_string(),
                });
            }
            let backend = resolver.resolve(namespace, &path.backend, &name, host_label)?;
            out.routes.push(Route {
                host: host.clone(),
                path: p.to_string(),
                path_type,
                backend,
            });
        }
    }
    for tls in spec.tls.iter().flatten() {
        // "TLS will not work on the default rule": entries without hosts bind nothing.
        let Some(secret) = tls.secret_name.as_deref().filter(|s| !s.is_empty()) else {
            continue;
        };
        for h in tls.hosts.iter().flatten().filter(|h| !h.is_empty()) {
            validate_host(h).map_err(|()| Error::InvalidHost {
                ingress: name(),
                host: h.clone(),
            })?;
            out.tls.push(TlsBinding {
                host: h.trim_end_matches('.').to_ascii_lowercase(),
                secret: (namespace.clone(), secret.to_string()),
            });
        }
    }
    Ok(out)
}

/// A DNS name (RFC 1123 labels), optionally with a leading `*.` wildcard label.
fn validate_host(host: &str) -> Result<(), ()> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let name = name.strip_suffix('.').unwrap_or(name);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(());
    }
    Ok(())
}

// === impl BackendResolver ===

/// Which Service port a backend names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum PortRef {
    Number(i32),
    Name(String),
}

/// The `host` metric label of rules without a host and of `spec.defaultBackend`.
pub const ANY_HOST: &str = "*";

/// Resolves `IngressBackend`s to shared [`Backend`]s (one per Ingress, rule host and Service port,
/// so rules naming the same port share its round-robin cursor and metric labels).
struct BackendResolver<'a> {
    services: HashMap<(&'a str, &'a str), &'a Service>,
    slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
    /// Key: Service namespace, Service name, port, Ingress `namespace/name`, rule host.
    cache: HashMap<(String, String, PortRef, String, String), Arc<Backend>>,
}

impl<'a> BackendResolver<'a> {
    fn new(services: &'a [Arc<Service>], slices: &'a [Arc<EndpointSlice>]) -> Self {
        let services = services
            .iter()
            .filter_map(|s| {
                Some((
                    (
                        s.metadata.namespace.as_deref()?,
                        s.metadata.name.as_deref()?,
                    ),
                    &**s,
                ))
            })
            .collect();
        let mut by_service: HashMap<_, Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            let ns = slice.metadata.namespace.as_deref();
            let svc = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(names::LABEL_SERVICE_NAME));
            if let (Some(ns), Some(svc)) = (ns, svc) {
                by_service
                    .entry((ns, svc.as_str()))
                    .or_default()
                    .push(&**slice);
            }
        }
        BackendResolver {
            services,
            slices: by_service,
            cache: HashMap::new(),
        }
    }

    fn resolve(
        &mut self,
        namespace: &str,
        backend: &IngressBackend,
        ingress: &dyn Fn() -> String,
        host: &str,
    ) -> Result<Arc<Backend>> {
        if let Some(resource) = &backend.resource {
            return Err(Error::ResourceBackend {
                ingress: ingress(),
                kind: resource.kind.clone(),
            });
        }
        let incomplete = || Error::IncompleteBackend { ingress: ingress() };
        let service = backend
            .service
            .as_ref()
            .filter(|s| !s.name.is_empty())
            .ok_or_else(incomplete)?;
        let port = service.port.as_ref().ok_or_else(incomplete)?;
        let port = match (port.number, port.name.as_deref()) {
            (Some(n), _) if n > 0 => PortRef::Number(n),
            (_, Some(name)) if !name.is_empty() => PortRef::Name(name.to_string()),
            _ => return Err(incomplete()),
        };
        let cache_key = (
            namespace.to_string(),
            service.name.clone(),
            port,
            ingress(),
            host.to_string(),
        );
        if let Some(b) = self.cache.get(&cache_key) {
            return Ok(b.clone());
        }
        let (_, svc_name, port, ingress_name, _) = &cache_key;
        let label = match port {
            PortRef::Number(n) => format!("{namespace}/{svc_name}:{n}"),
            PortRef::Name(p) => format!("{namespace}/{svc_name}:{p}"),
        };
        let endpoints = self.endpoints(namespace, svc_name, port);
        let stats = RouteStats::new(ingress_name, host);
        let backend = Arc::new(Backend::for_route(label, endpoints, stats));
        self.cache.insert(cache_key, backend.clone());
        Ok(backend)
    }

    /// Endpoints of a Service port (empty when anything is missing).
    fn endpoints(&self, namespace: &str, service: &str, port: &PortRef) -> Vec<SocketAddr> {
        let Some(svc) = self.services.get(&(namespace, service)) else {
            return Vec::new();
        };
        // ExternalName Services have no endpoints; resolving their DNS name is not done yet.
        let Some(ports) = svc.spec.as_ref().and_then(|s| s.ports.as_ref()) else {
            return Vec::new();
        };
        let is_tcp = |p: Option<&str>| p.is_none_or(|p| p == "TCP");
        let service_port = ports.iter().find(|p| {
            is_tcp(p.protocol.as_deref())
                && match port {
                    PortRef::Number(n) => p.port == *n,
                    PortRef::Name(name) => p.name.as_deref() == Some(name.as_str()),
                }
        });
        let Some(service_port) = service_port else {
            return Vec::new();
        };
        let port_name = service_port.name.as_deref().unwrap_or("");
        let slices = self
            .slices
            .get(&(namespace, service))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        select_endpoints(slices, port_name)
    }
}

/// The endpoints of the EndpointSlice port named `port_name` (`""` = the unnamed port): the
/// `ready` ones, or — only when none is ready — the `serving` and `terminating` ones
/// (KEP-1672, kube-proxy's fallback). Sorted and de-duplicated (an endpoint may briefly be in two
/// slices). FQDN slices are skipped.
pub fn select_endpoints(slices: &[&EndpointSlice], port_name: &str) -> Vec<SocketAddr> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let port = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && p.protocol.as_deref().is_none_or(|p| p == "TCP")
        });
        let Some(port) = port
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            // All addresses of an endpoint are fungible; kube-proxy uses the first.
            let Some(ip) = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let addr = SocketAddr::new(ip, port);
            let c = endpoint.conditions.as_ref();
            // API: a nil `ready` means ready; nil `serving` means the same as `ready`.
            let is_ready = c.and_then(|c| c.ready).unwrap_or(true);
            let is_serving = c.and_then(|c| c.serving).unwrap_or(is_ready);
            let is_terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            if is_ready {
                ready.insert(addr);
            } else if is_serving && is_terminating {
                terminating.insert(addr);
            }
        }
    }
    let chosen = if ready.is_empty() { terminating } else { ready };
    chosen.into_iter().collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).expect("test object decodes"))
    }

    pub(crate) fn mk_class(name: &str, controller: &str, default: bool) -> Arc<IngressClass> {
        let mut annotations = serde_json::Map::new();
        if default {
            annotations.insert(
                names::ANNOTATION_DEFAULT_INGRESS_CLASS.into(),
                json!("true"),
            );
        }
        from_json(json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"controller": controller},
        }))
    }

    /// An Ingress with `spec` given as JSON.
    pub(crate) fn mk_ingress(ns: &str, name: &str, spec: serde_json::Value) -> Arc<Ingress> {
        from_json(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
    }

    fn with_annotation(ingress: Arc<Ingress>, key: &str, value: &str) -> Arc<Ingress> {
        let mut i = (*ingress).clone();
        i.metadata
            .annotations
            .get_or_insert_default()
            .insert(key.into(), value.into());
        Arc::new(i)
    }

    pub(crate) fn mk_service(ns: &str, name: &str, ports: serde_json::Value) -> Arc<Service> {
        from_json(json!({"metadata": {"namespace": ns, "name": name}, "spec": {"ports": ports}}))
    }

    pub(crate) fn mk_slice(
        ns: &str,
        name: &str,
        service: &str,
        ports: serde_json::Value,
        endpoints: serde_json::Value,
    ) -> Arc<EndpointSlice> {
        from_json(json!({
            "metadata": {"namespace": ns, "name": name, "labels": {names::LABEL_SERVICE_NAME: service}},
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints,
        }))
    }

    fn simple_rule(class: Option<&str>) -> serde_json::Value {
        let mut spec = json!({"rules": [{"host": "a.example", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}
        ]}}]});
        if let Some(c) = class {
            spec["ingressClassName"] = json!(c);
        }
        spec
    }

    fn ours() -> Arc<IngressClass> {
        mk_class("drawbridge", names::INGRESS_CONTROLLER, false)
    }

    /// (what, Ingress, IngressClasses, ours?)
    type ClassRow = (&'static str, Arc<Ingress>, Vec<Arc<IngressClass>>, bool);

    #[test]
    fn class_selection() {
        let other = mk_class("nginx", "k8s.io/ingress-nginx", true);
        let ours_default = mk_class("drawbridge", names::INGRESS_CONTROLLER, true);
        let custom = mk_class("edge", names::INGRESS_CONTROLLER, false);
        let named = |c| mk_ingress("ns", "i", simple_rule(Some(c)));
        let classless = mk_ingress("ns", "i", simple_rule(None));
        #[rustfmt::skip]
        let rows: Vec<ClassRow> = vec![
            ("ingressClassName names our class", named("drawbridge"), vec![ours(), other.clone()], true),
            ("any class name with our controller", named("edge"), vec![custom.clone()], true),
            ("ingressClassName names another controller's class", named("nginx"), vec![ours(), other.clone()], false),
            ("ingressClassName names a missing class", named("drawbridge"), vec![], false),
            ("class-less, our class is not default", classless.clone(), vec![ours(), other.clone()], false),
            ("class-less, our class is default", classless.clone(), vec![ours_default.clone()], true),
            ("class-less, only another class is default", classless.clone(), vec![ours(), other.clone()], false),
            ("deprecated annotation = drawbridge", with_annotation(classless.clone(), names::ANNOTATION_INGRESS_CLASS, "drawbridge"), vec![], true),
            ("deprecated annotation names our class", with_annotation(classless.clone(), names::ANNOTATION_INGRESS_CLASS, "edge"), vec![custom.clone()], true),
            ("deprecated annotation = nginx, even if we are default", with_annotation(classless.clone(), names::ANNOTATION_INGRESS_CLASS, "nginx"), vec![ours_default.clone(), other.clone()], false),
        ];
        for (what, ingress, classes, expected) in rows {
            assert_eq!(is_ours(&ingress, &classes), expected, "{what}");
        }
    }

    fn input_model(
        ingresses: &[Arc<Ingress>],
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
    ) -> Model {
        let classes = [ours()];
        translate(Input {
            ingresses,
            ingress_classes: &classes,
            services,
            endpoint_slices: slices,
        })
    }

    fn backend_for(model: &Model, host: &str, path: &str) -> Option<(String, Vec<SocketAddr>)> {
        model
            .routes
            .lookup(host, path)
            .map(|b| (b.name.clone(), b.endpoints().to_vec()))
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn port_resolution_by_number_and_name_honours_target_port() {
        // Service port 80 "http" → targetPort 8080 (named "web" in the pod); port 81 unnamed.
        let svc = mk_service(
            "ns",
            "web",
            json!([
                {"name": "http", "port": 80, "targetPort": "web"},
                {"name": "admin", "port": 81, "targetPort": 9090},
            ]),
        );
        let slice = mk_slice(
            "ns",
            "web-abc",
            "web",
            json!([{"name": "http", "port": 8080}, {"name": "admin", "port": 9090}]),
            json!([{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"], "conditions": {"ready": true}}]),
        );
        let spec = json!({"ingressClassName": "drawbridge", "rules": [{"http": {"paths": [
            {"path": "/num", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
            {"path": "/name", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"name": "admin"}}}},
            {"path": "/missing-port", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 8080}}}},
            {"path": "/missing-svc", "pathType": "Prefix", "backend": {"service": {"name": "nope", "port": {"number": 80}}}},
        ]}}]});
        let model = input_model(&[mk_ingress("ns", "i", spec)], &[svc], &[slice]);
        assert!(model.problems.is_empty(), "{:?}", model.problems);
        assert_eq!(
            backend_for(&model, "x", "/num"),
            Some((
                "ns/web:80".into(),
                addrs(&["10.0.0.1:8080", "10.0.0.2:8080"])
            ))
        );
        assert_eq!(
            backend_for(&model, "x", "/name"),
            Some((
                "ns/web:admin".into(),
                addrs(&["10.0.0.1:9090", "10.0.0.2:9090"])
            ))
        );
        assert_eq!(
            backend_for(&model, "x", "/missing-port").map(|b| b.1),
            Some(vec![])
        );
        assert_eq!(
            backend_for(&model, "x", "/missing-svc").map(|b| b.1),
            Some(vec![])
        );
    }

    #[test]
    fn unnamed_single_port_and_other_namespace_slices() {
        let svc = mk_service("ns", "web", json!([{"port": 80, "targetPort": 8080}]));
        let slice = mk_slice(
            "ns",
            "web-1",
            "web",
            json!([{"port": 8080}]),
            json!([{"addresses": ["10.0.0.1"]}]),
        );
        let foreign = mk_slice(
            "other",
            "web-1",
            "web",
            json!([{"port": 8080}]),
            json!([{"addresses": ["10.9.9.9"]}]),
        );
        let model = input_model(
            &[mk_ingress("ns", "i", simple_rule(Some("drawbridge")))],
            &[svc],
            &[slice, foreign],
        );
        assert_eq!(
            backend_for(&model, "a.example", "/").map(|b| b.1),
            Some(addrs(&["10.0.0.1:8080"]))
        );
    }

    #[test]
    fn ready_then_serving_terminating_selection() {
        let ports = json!([{"port": 8080}]);
        #[rustfmt::skip]
        let rows: &[(&str, serde_json::Value, &[&str])] = &[
            ("nil conditions count as ready", json!([{"addresses": ["10.0.0.1"]}]), &["10.0.0.1:8080"]),
            ("not-ready excluded while others are ready", json!([
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": false}},
            ]), &["10.0.0.1:8080"]),
            ("serving-terminating only when none ready", json!([
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": false, "terminating": true}},
                {"addresses": ["10.0.0.4"], "conditions": {"ready": false, "serving": true, "terminating": false}},
            ]), &["10.0.0.2:8080"]),
            ("none at all", json!([{"addresses": ["10.0.0.3"], "conditions": {"ready": false}}]), &[]),
            ("duplicates removed, first address used", json!([
                {"addresses": ["10.0.0.1", "10.0.0.9"]}, {"addresses": ["10.0.0.1"]},
            ]), &["10.0.0.1:8080"]),
        ];
        for (what, endpoints, expected) in rows {
            let slice = mk_slice("ns", "s", "web", ports.clone(), endpoints.clone());
            assert_eq!(select_endpoints(&[&slice], ""), addrs(expected), "{what}");
        }
        // A slice whose port name differs does not contribute.
        let slice = mk_slice(
            "ns",
            "s",
            "web",
            json!([{"name": "other", "port": 1}]),
            json!([{"addresses": ["10.0.0.1"]}]),
        );
        assert_eq!(select_endpoints(&[&slice], ""), vec![]);
    }

    #[test]
    fn malformed_ingresses_are_skipped_and_reported() {
        let bad = |ns: &str, name: &str, path: serde_json::Value| {
            mk_ingress(
                ns,
                name,
                json!({"ingressClassName": "drawbridge", "rules": [{"http": {"paths": [path]}}]}),
            )
        };
        let svc_backend = json!({"service": {"name": "web", "port": {"number": 80}}});
        let ingresses = vec![
            bad(
                "ns",
                "relative-path",
                json!({"path": "foo", "pathType": "Prefix", "backend": svc_backend}),
            ),
            bad(
                "ns",
                "no-path",
                json!({"pathType": "Exact", "backend": svc_backend}),
            ),
            bad(
                "ns",
                "bad-type",
                json!({"path": "/", "pathType": "Regex", "backend": svc_backend}),
            ),
            bad(
                "ns",
                "resource",
                json!({"path": "/", "pathType": "Prefix", "backend": {"resource": {"kind": "StorageBucket", "name": "b"}}}),
            ),
            bad(
                "ns",
                "no-port",
                json!({"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web"}}}),
            ),
            mk_ingress(
                "ns",
                "bad-host",
                json!({"ingressClassName": "drawbridge", "rules": [{"host": "foo.*.com"}]}),
            ),
            mk_ingress("ns", "good", simple_rule(Some("drawbridge"))),
        ];
        let model = input_model(&ingresses, &[], &[]);
        let kinds: Vec<String> = model.problems.iter().map(|e| e.to_string()).collect();
        assert_eq!(model.problems.len(), 6, "{kinds:#?}");
        // In (namespace, name) order: bad-host first, then bad-type.
        assert!(
            matches!(&model.problems[0], Error::InvalidHost { ingress, .. } if ingress == "ns/bad-host")
        );
        assert!(
            matches!(&model.problems[1], Error::UnknownPathType { ingress, .. } if ingress == "ns/bad-type")
        );
        assert!(
            kinds
                .iter()
                .any(|k| k.contains("ns/resource") && k.contains("StorageBucket"))
        );
        assert!(kinds.iter().any(|k| k.contains("ns/relative-path")));
        assert!(kinds.iter().any(|k| k.contains("ns/no-path")));
        assert_eq!(
            model.served,
            BTreeSet::from([("ns".to_string(), "good".to_string())])
        );
        assert!(model.routes.lookup("a.example", "/").is_some());
    }

    #[test]
    fn implementation_specific_is_prefix_and_may_omit_path() {
        let backend = json!({"service": {"name": "web", "port": {"number": 80}}});
        let spec = json!({"ingressClassName": "drawbridge", "rules": [
            {"host": "a.example", "http": {"paths": [{"path": "/app", "pathType": "ImplementationSpecific", "backend": backend}]}},
            {"host": "b.example", "http": {"paths": [{"pathType": "ImplementationSpecific", "backend": backend}]}},
        ]});
        let model = input_model(&[mk_ingress("ns", "i", spec)], &[], &[]);
        assert!(model.problems.is_empty());
        assert!(model.routes.lookup("a.example", "/app/x").is_some());
        assert!(model.routes.lookup("a.example", "/appx").is_none());
        assert!(model.routes.lookup("b.example", "/anything").is_some());
    }

    #[test]
    fn default_backend_tls_and_ordering() {
        let backend = |svc: &str| json!({"service": {"name": svc, "port": {"number": 80}}});
        let a = mk_ingress(
            "a",
            "first",
            json!({
                "ingressClassName": "drawbridge",
                "defaultBackend": backend("fallback"),
                "tls": [{"hosts": ["Secure.Example", "*.wild.example"], "secretName": "cert-a"}, {"secretName": "no-hosts"}],
            }),
        );
        let b = mk_ingress(
            "b",
            "second",
            json!({
                "ingressClassName": "drawbridge",
                "defaultBackend": backend("other"),
                "tls": [{"hosts": ["secure.example"], "secretName": "cert-b"}],
                "rules": [{"host": "b.example", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend("b")}]}}],
            }),
        );
        let ignored = mk_ingress(
            "a",
            "zzz-not-ours",
            json!({"ingressClassName": "nginx", "defaultBackend": backend("x")}),
        );
        let model = input_model(&[b, ignored, a], &[], &[]);
        assert_eq!(
            model.routes.lookup("nowhere", "/").map(|b| b.name.as_str()),
            Some("a/fallback:80")
        );
        assert_eq!(
            model
                .routes
                .lookup("b.example", "/")
                .map(|b| b.name.as_str()),
            Some("b/b:80")
        );
        assert_eq!(model.served.len(), 2);
        let tls: Vec<(&str, &str)> = model
            .tls
            .iter()
            .map(|t| (t.host.as_str(), t.secret.1.as_str()))
            .collect();
        assert_eq!(
            tls,
            vec![
                ("secure.example", "cert-a"),
                ("*.wild.example", "cert-a"),
                ("secure.example", "cert-b")
            ]
        );
    }
}

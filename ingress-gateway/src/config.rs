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
//! - **Order and conflicts.** Ingresses are taken oldest first (`metadata.creationTimestamp`,
//!   then `namespace/name`; ingress-nginx's rule): on an exact duplicate rule (same host, path
//!   and pathType — `Prefix` paths compared without trailing slashes, which match the same
//!   requests), a conflicting TLS host, or several `spec.defaultBackend`s, the first one wins.
//!   Each losing duplicate rule is listed in [`Model::conflicts`] (the loser is still served for
//!   its other rules).
//! - **Annotations** (`drawbridge.dev/*`, see [`crate::policy`]) give each Ingress its timeouts,
//!   body limit, redirect, balancing and upstream protocol; a bad value skips the Ingress.
//! - **Upstream protocol**: the annotation, else the Service port's `appProtocol`
//!   ([`UpstreamProtocol::resolve`]).
//! - **Backends.** The Service port is found by number or name; its *name* selects the
//!   EndpointSlice port (so `targetPort`, named or numbered, is honoured); endpoints are the `ready`
//!   ones (a missing condition counts as ready, per the API), or the `serving` + `terminating`
//!   ones when none is ready. No Service, no such port, or no endpoints: a backend without
//!   endpoints (the gateway answers 503).
//! - **ExternalName Services**: endpoints are the addresses `spec.externalName` resolved to
//!   ([`Input::external_names`], resolved by `discovery`), on the backend's port number (a port
//!   name is looked up in the Service's `ports`). Not resolved (yet): no endpoints.
//! - **Malformed Ingresses** (a path not starting with `/`, an unknown pathType, a `resource`
//!   backend, a bad wildcard host) are skipped whole and listed in [`Model::problems`]; the others
//!   are served.

use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasherDefault;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use drawbridge_resources::names;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};

use crate::metrics::RouteStats;
use crate::policy::{AnnotationError, Policy, UpstreamProtocol};
use crate::routes::{Backend, HostMatch, PathType, Route, RouteTable};
use crate::upstream::EndpointRegistry;

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
    /// A `drawbridge.dev/*` annotation has a value that does not parse.
    #[error("Ingress {ingress}: {source}")]
    InvalidAnnotation {
        /// `namespace/name`.
        ingress: String,
        /// Which annotation and why.
        #[source]
        source: AnnotationError,
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
            | Error::InvalidHost { ingress, .. }
            | Error::InvalidAnnotation { ingress, .. } => ingress,
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
    /// Where endpoint states (in-flight counts, passive health) live across tables; `None`:
    /// each backend gets fresh states.
    pub endpoint_registry: Option<&'a EndpointRegistry>,
    /// What each ExternalName Service's `spec.externalName` resolved to (lower-case name →
    /// addresses); `None` or a missing name: no endpoints.
    pub external_names: Option<&'a HashMap<String, Vec<IpAddr>>>,
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

/// A rule identical (host, path, pathType) to a rule of an older Ingress: not served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The rule's host as written (`*` when it has none).
    pub host: String,
    /// The rule's path as written.
    pub path: String,
    /// `Exact` or `Prefix` (`ImplementationSpecific` counts as `Prefix`).
    pub path_type: PathType,
    /// The Ingress whose rule is served.
    pub winner: ObjectRef,
    /// The Ingress whose rule is not.
    pub loser: ObjectRef,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rule host {:?} path {:?} ({:?}) of Ingress {}/{} is not served: Ingress {}/{} \
             (older) has the same rule",
            self.host,
            self.path,
            self.path_type,
            self.loser.0,
            self.loser.1,
            self.winner.0,
            self.winner.1
        )
    }
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
    /// Duplicate rules that lost to an older Ingress's (their Ingress is still served).
    pub conflicts: Vec<Conflict>,
}

/// The lower-cased `spec.externalName` of every ExternalName Service (what `discovery` resolves).
pub fn external_names(services: &[Arc<Service>]) -> BTreeSet<String> {
    services
        .iter()
        .filter_map(|s| external_name(s))
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        .collect()
}

fn external_name(svc: &Service) -> Option<&str> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() != Some("ExternalName") {
        return None;
    }
    spec.external_name.as_deref().filter(|n| !n.is_empty())
}

/// Computes the [`Model`] for `input` from scratch (a fresh [`Translator`]).
pub fn translate(input: Input<'_>) -> Model {
    Translator::default().translate(input)
}

// === impl Translator ===

/// [`translate`] that remembers its work between calls: the same [`Model`] for the same
/// [`Input`], but an unchanged Ingress is not parsed again and a backend whose Service,
/// EndpointSlices and resolved ExternalName addresses are unchanged keeps its `Arc<Backend>`
/// (so its round-robin cursor, endpoint states and cached metric handles carry over).
///
/// "Unchanged" is object identity: the reflector store replaces an object's `Arc` whenever the
/// object changes (watch event, or a manifest edit), so `Arc::ptr_eq` against the `Arc`s kept
/// here (kept alive, so an address cannot be reused by a new object) is exact. Level-triggered
/// still: every call rebuilds the route table, the conflict set, the TLS bindings and the served
/// set from all Ingresses; only the per-Ingress parse and the per-backend endpoint selection are
/// reused. Cost per call at 10,000 one-rule Ingresses: see docs/benchmarks.md (Gateway →
/// Propagation and memory); the whole-model rebuild it replaces was the largest part of the
/// propagation time there.
#[derive(Debug, Default)]
pub struct Translator {
    /// Last call's Ingresses of our class, in model order (oldest first, then namespace/name).
    sorted: Vec<IngressEntry>,
    /// The address of each entry's `Arc<Ingress>` (held in the entry) → its index in `sorted`.
    index: HashMap<usize, usize, BuildHasherDefault<AddressHasher>>,
}

/// Hashes an address (a `usize`) with one multiplication (Fibonacci hashing): addresses are
/// already unique, SipHash's DoS resistance buys nothing here and cost ~3% of a tick.
#[derive(Default)]
struct AddressHasher(u64);

impl std::hash::Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// One Ingress, parsed, with its backends as last resolved.
#[derive(Debug)]
struct IngressEntry {
    /// The object this entry was parsed from (held: see [`Translator`]).
    ingress: Arc<Ingress>,
    /// Sort key: `metadata.creationTimestamp`, then `namespace/name` (oldest first).
    order: (Option<k8s_openapi::jiff::Timestamp>, ObjectRef),
    /// The parse, or why the Ingress is skipped.
    parsed: Result<Parsed>,
}

/// An Ingress's rules with their backends referenced by index into `slots`.
#[derive(Debug)]
struct Parsed {
    default_backend: Option<usize>,
    rules: Vec<ParsedRule>,
    tls: Vec<TlsBinding>,
    /// One per (Service, port, rule host): rules naming the same share it (and its `Backend`).
    slots: Vec<Slot>,
    policy: Arc<Policy>,
}

#[derive(Debug)]
struct ParsedRule {
    host: HostMatch,
    path: String,
    path_type: PathType,
    slot: usize,
}

/// A backend reference of one Ingress and what it resolved to last time.
#[derive(Debug)]
struct Slot {
    service: String,
    port: PortRef,
    /// The rule's host as written (`*` without one): the `host` metric label.
    host_label: String,
    built: Option<Built>,
}

/// The inputs a [`Backend`] was built from (held, so pointer comparison is exact) and the result.
#[derive(Debug)]
struct Built {
    service: Option<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    external: Option<Vec<IpAddr>>,
    backend: Arc<Backend>,
}

impl Translator {
    /// Computes the [`Model`] for `input` (see [`translate`]), reusing what did not change since
    /// the last call. Entries of Ingresses no longer in `input` (or no longer ours) are dropped.
    pub fn translate(&mut self, input: Input<'_>) -> Model {
        let view = ServiceView::new(input);
        let previous = std::mem::take(&mut self.sorted);
        let mut seen = vec![false; previous.len()];
        let mut kept: Vec<usize> = Vec::with_capacity(previous.len());
        let mut fresh: Vec<IngressEntry> = Vec::new();
        for ingress in input.ingresses {
            if !is_ours(ingress, input.ingress_classes) {
                continue;
            }
            let id = Arc::as_ptr(ingress) as usize;
            match self.index.get(&id) {
                Some(&i) if !seen[i] => {
                    seen[i] = true;
                    kept.push(i);
                }
                _ => fresh.push(IngressEntry::parse(ingress.clone())),
            }
        }
        // Oldest first, then namespace/name (a missing timestamp sorts first: standalone
        // manifests carry none, and then namespace/name alone decides). The kept entries are
        // already in that order; only the new ones are sorted, then merged in (stable: kept
        // entries before new ones with an equal key).
        fresh.sort_by(|a, b| a.order.cmp(&b.order));
        let mut entries: Vec<IngressEntry> = Vec::with_capacity(kept.len() + fresh.len());
        let mut fresh = fresh.into_iter().peekable();
        for (entry, seen) in previous.into_iter().zip(seen) {
            if !seen {
                continue;
            }
            while let Some(new) = fresh.next_if(|new| new.order < entry.order) {
                entries.push(new);
            }
            entries.push(entry);
        }
        entries.extend(fresh);
        for entry in &mut entries {
            if let Ok(parsed) = &mut entry.parsed {
                let namespace = entry.order.1.0.as_str();
                let ingress_name = || format!("{}/{}", entry.order.1.0, entry.order.1.1);
                for slot in &mut parsed.slots {
                    slot.refresh(namespace, &ingress_name, &parsed.policy, &view);
                }
            }
        }

        let mut model = Model::default();
        let mut routes = Vec::new();
        let mut default_backend = None;
        let mut served = Vec::new();
        {
            // (host, path key, type) → the Ingress that owns the rule.
            let mut owners: HashMap<(&HostMatch, &str, PathType), &ObjectRef> = HashMap::new();
            for entry in &entries {
                let key = &entry.order.1;
                let parsed = match &entry.parsed {
                    Ok(parsed) => parsed,
                    Err(error) => {
                        model.problems.push(error.clone());
                        continue;
                    }
                };
                for rule in &parsed.rules {
                    let path_key = match rule.path_type {
                        PathType::Exact => rule.path.as_str(),
                        PathType::Prefix => rule.path.trim_end_matches('/'),
                    };
                    let slot = &parsed.slots[rule.slot];
                    match owners.get(&(&rule.host, path_key, rule.path_type)) {
                        Some(owner) if *owner != key => {
                            model.conflicts.push(Conflict {
                                host: slot.host_label.clone(),
                                path: rule.path.clone(),
                                path_type: rule.path_type,
                                winner: (*owner).clone(),
                                loser: key.clone(),
                            });
                            continue;
                        }
                        Some(_) => {}
                        None => {
                            owners.insert((&rule.host, path_key, rule.path_type), key);
                        }
                    }
                    routes.push(Route {
                        host: rule.host.clone(),
                        path: rule.path.clone(),
                        path_type: rule.path_type,
                        backend: slot.backend(),
                    });
                }
                if default_backend.is_none() {
                    default_backend = parsed.default_backend.map(|i| parsed.slots[i].backend());
                }
                model.tls.extend(parsed.tls.iter().cloned());
                served.push(key.clone());
            }
        }
        // Bulk-built (sorts, then fills the tree in one pass): `entries` is usually already in
        // namespace/name order, so this is linear.
        model.served = served.into_iter().collect();
        model.routes = RouteTable::new(routes, default_backend)
            .with_tls_hosts(model.tls.iter().map(|t| t.host.as_str()));
        self.index.clear();
        self.index.extend(
            entries
                .iter()
                .enumerate()
                .map(|(i, e)| (Arc::as_ptr(&e.ingress) as usize, i)),
        );
        self.sorted = entries;
        model
    }

    /// Number of Ingresses remembered (ours, from the last call).
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }
}

impl IngressEntry {
    fn parse(ingress: Arc<Ingress>) -> Self {
        let key = key_of(&ingress);
        let order = (
            ingress.metadata.creation_timestamp.clone().map(|t| t.0),
            key,
        );
        let parsed = parse_ingress(&ingress, &order.1);
        IngressEntry {
            ingress,
            order,
            parsed,
        }
    }
}

impl Slot {
    /// The backend built by the last [`Slot::refresh`].
    fn backend(&self) -> Arc<Backend> {
        match &self.built {
            Some(built) => built.backend.clone(),
            // `refresh` runs on every slot before the model is assembled; an empty backend
            // (503) is the safe answer should that ever not hold.
            None => Arc::new(Backend::new(String::new(), Vec::new())),
        }
    }

    /// Rebuilds the backend unless its Service, EndpointSlices and ExternalName addresses are
    /// the ones it was built from.
    fn refresh(
        &mut self,
        namespace: &str,
        ingress_name: &dyn Fn() -> String,
        policy: &Arc<Policy>,
        view: &ServiceView<'_>,
    ) {
        let service = view
            .services
            .get(&(namespace, self.service.as_str()))
            .copied();
        let slices = view
            .slices
            .get(&(namespace, self.service.as_str()))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let external = service
            .and_then(|s| external_name(s))
            .map(|name| view.external_addresses(name));
        if let Some(built) = &self.built {
            let same_service = match (&built.service, service) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            let same_slices = built.slices.len() == slices.len()
                && built
                    .slices
                    .iter()
                    .zip(slices)
                    .all(|(a, b)| Arc::ptr_eq(a, b));
            let same_external = built.external.as_deref() == external;
            if same_service && same_slices && same_external {
                return;
            }
        }
        let label = match &self.port {
            PortRef::Number(n) => format!("{namespace}/{}:{n}", self.service),
            PortRef::Name(p) => format!("{namespace}/{}:{p}", self.service),
        };
        let slice_refs: Vec<&EndpointSlice> = slices.iter().map(|s| &**s).collect();
        let (endpoints, app_protocol) =
            endpoints(service.map(|s| &**s), &slice_refs, external, &self.port);
        let stats = RouteStats::new(&ingress_name(), &self.host_label);
        let protocol = UpstreamProtocol::resolve(policy.backend_protocol, app_protocol);
        let mut backend =
            Backend::for_route(label, endpoints, stats).with_policy(policy.clone(), protocol);
        if let Some(registry) = view.registry {
            backend = backend.with_registry(registry);
        }
        self.built = Some(Built {
            service: service.cloned(),
            slices: slices.to_vec(),
            external: external.map(<[IpAddr]>::to_vec),
            backend: Arc::new(backend),
        });
    }
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

/// Parses one Ingress of our class (pure: depends on nothing but the object). Backends are
/// collected as [`Slot`]s, resolved later by [`Slot::refresh`]. The first problem found, in
/// document order, skips the whole Ingress.
fn parse_ingress(ingress: &Ingress, key: &ObjectRef) -> Result<Parsed> {
    let name = || format!("{}/{}", key.0, key.1);
    let mut out = Parsed {
        default_backend: None,
        rules: Vec::new(),
        tls: Vec::new(),
        slots: Vec::new(),
        policy: Arc::default(),
    };
    let Some(spec) = &ingress.spec else {
        return Ok(out);
    };
    out.policy = Arc::new(
        Policy::from_annotations(ingress.metadata.annotations.as_ref()).map_err(|source| {
            Error::InvalidAnnotation {
                ingress: name(),
                source,
            }
        })?,
    );
    if let Some(backend) = &spec.default_backend {
        out.default_backend = Some(out.slot(backend, &name, ANY_HOST)?);
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
            let slot = out.slot(&path.backend, &name, host_label)?;
            out.rules.push(ParsedRule {
                host: host.clone(),
                path: p.to_string(),
                path_type,
                slot,
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
                secret: (key.0.clone(), secret.to_string()),
            });
        }
    }
    Ok(out)
}

impl Parsed {
    /// The slot of `backend` for rules of `host_label` (shared with earlier rules naming the
    /// same Service port under the same host), or why the backend cannot be served.
    fn slot(
        &mut self,
        backend: &IngressBackend,
        ingress: &dyn Fn() -> String,
        host_label: &str,
    ) -> Result<usize> {
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
        if let Some(i) = self
            .slots
            .iter()
            .position(|s| s.service == service.name && s.port == port && s.host_label == host_label)
        {
            return Ok(i);
        }
        self.slots.push(Slot {
            service: service.name.clone(),
            port,
            host_label: host_label.to_string(),
            built: None,
        });
        Ok(self.slots.len() - 1)
    }
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

// === impl ServiceView ===

/// Which Service port a backend names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum PortRef {
    Number(i32),
    Name(String),
}

/// The `host` metric label of rules without a host and of `spec.defaultBackend`.
pub const ANY_HOST: &str = "*";

/// One call's Services and EndpointSlices, indexed by `(namespace, Service name)`.
struct ServiceView<'a> {
    services: HashMap<(&'a str, &'a str), &'a Arc<Service>>,
    /// By the `kubernetes.io/service-name` label, in input order.
    slices: HashMap<(&'a str, &'a str), Vec<Arc<EndpointSlice>>>,
    registry: Option<&'a EndpointRegistry>,
    external_names: Option<&'a HashMap<String, Vec<IpAddr>>>,
}

impl<'a> ServiceView<'a> {
    fn new(input: Input<'a>) -> Self {
        let services = input
            .services
            .iter()
            .filter_map(|s| {
                Some((
                    (
                        s.metadata.namespace.as_deref()?,
                        s.metadata.name.as_deref()?,
                    ),
                    s,
                ))
            })
            .collect();
        let mut slices: HashMap<_, Vec<Arc<EndpointSlice>>> = HashMap::new();
        for slice in input.endpoint_slices {
            let ns = slice.metadata.namespace.as_deref();
            let svc = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(names::LABEL_SERVICE_NAME));
            if let (Some(ns), Some(svc)) = (ns, svc) {
                slices
                    .entry((ns, svc.as_str()))
                    .or_default()
                    .push(slice.clone());
            }
        }
        ServiceView {
            services,
            slices,
            registry: input.endpoint_registry,
            external_names: input.external_names,
        }
    }

    /// What `spec.externalName` `name` resolved to (empty: not resolved, or no addresses).
    fn external_addresses(&self, name: &str) -> &'a [IpAddr] {
        let key = name.trim_end_matches('.').to_ascii_lowercase();
        self.external_names
            .and_then(|m| m.get(&key))
            .map_or(&[], Vec::as_slice)
    }
}

/// Endpoints of a Service port (empty when anything is missing), and the port's `appProtocol`.
/// `external`: for an ExternalName Service, the addresses its name resolved to.
fn endpoints<'s>(
    svc: Option<&'s Service>,
    slices: &[&EndpointSlice],
    external: Option<&[IpAddr]>,
    port: &PortRef,
) -> (Vec<SocketAddr>, Option<&'s str>) {
    let Some(svc) = svc else {
        return (Vec::new(), None);
    };
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or(&[]);
    if let Some(external) = external {
        let found = ports.iter().find(|p| match port {
            PortRef::Number(n) => p.port == *n,
            PortRef::Name(name) => p.name.as_deref() == Some(name.as_str()),
        });
        let number = match (port, found) {
            (_, Some(p)) => p.port,
            (PortRef::Number(n), None) => *n,
            (PortRef::Name(_), None) => return (Vec::new(), None),
        };
        let Ok(number) = u16::try_from(number) else {
            return (Vec::new(), None);
        };
        let mut addrs: Vec<SocketAddr> = external
            .iter()
            .map(|ip| SocketAddr::new(*ip, number))
            .collect();
        addrs.sort();
        addrs.dedup();
        return (addrs, found.and_then(|p| p.app_protocol.as_deref()));
    }
    let is_tcp = |p: Option<&str>| p.is_none_or(|p| p == "TCP");
    let service_port = ports.iter().find(|p| {
        is_tcp(p.protocol.as_deref())
            && match port {
                PortRef::Number(n) => p.port == *n,
                PortRef::Name(name) => p.name.as_deref() == Some(name.as_str()),
            }
    });
    let Some(service_port) = service_port else {
        return (Vec::new(), None);
    };
    let port_name = service_port.name.as_deref().unwrap_or("");
    (
        select_endpoints(slices, port_name),
        service_port.app_protocol.as_deref(),
    )
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
            ..Default::default()
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

    fn with_meta(
        ingress: Arc<Ingress>,
        created: &str,
        annotations: &[(&str, &str)],
    ) -> Arc<Ingress> {
        let mut i = (*ingress).clone();
        i.metadata.creation_timestamp =
            Some(serde_json::from_value(json!(created)).expect("timestamp"));
        for (k, v) in annotations {
            i.metadata
                .annotations
                .get_or_insert_default()
                .insert(k.to_string(), v.to_string());
        }
        Arc::new(i)
    }

    fn rule(host: &str, path: &str, path_type: &str, svc: &str) -> serde_json::Value {
        json!({"ingressClassName": "drawbridge", "rules": [{"host": host, "http": {"paths": [
            {"path": path, "pathType": path_type, "backend": {"service": {"name": svc, "port": {"number": 80}}}}
        ]}}]})
    }

    #[test]
    fn identical_rules_oldest_ingress_wins_and_loser_is_reported() {
        // "a/new" sorts first by name but is younger: "z/old" wins.
        let young = with_meta(
            mk_ingress("a", "new", rule("h.example", "/app/", "Prefix", "young")),
            "2026-01-02T00:00:00Z",
            &[],
        );
        let old = with_meta(
            mk_ingress("z", "old", rule("h.example", "/app", "Prefix", "old")),
            "2026-01-01T00:00:00Z",
            &[],
        );
        // Same host and path but another pathType: no conflict.
        let exact = with_meta(
            mk_ingress("b", "exact", rule("h.example", "/app", "Exact", "exact")),
            "2026-01-03T00:00:00Z",
            &[],
        );
        // Same timestamp: namespace/name decides.
        let twin = with_meta(
            mk_ingress("a", "twin", rule("t.example", "/", "Prefix", "twin-a")),
            "2026-01-01T00:00:00Z",
            &[],
        );
        let twin2 = with_meta(
            mk_ingress(
                "b",
                "twin",
                rule("t.example", "/", "ImplementationSpecific", "twin-b"),
            ),
            "2026-01-01T00:00:00Z",
            &[],
        );
        let model = input_model(&[young, old, exact, twin2, twin], &[], &[]);
        assert_eq!(
            backend_for(&model, "h.example", "/app/x").map(|b| b.0),
            Some("z/old:80".into())
        );
        assert_eq!(
            backend_for(&model, "h.example", "/app").map(|b| b.0),
            Some("b/exact:80".into())
        );
        assert_eq!(
            backend_for(&model, "t.example", "/").map(|b| b.0),
            Some("a/twin-a:80".into())
        );
        let conflicts: Vec<(ObjectRef, ObjectRef)> = model
            .conflicts
            .iter()
            .map(|c| (c.winner.clone(), c.loser.clone()))
            .collect();
        let r = |ns: &str, n: &str| (ns.to_string(), n.to_string());
        assert_eq!(
            conflicts,
            vec![
                (r("a", "twin"), r("b", "twin")),
                (r("z", "old"), r("a", "new"))
            ]
        );
        assert!(
            model.conflicts[1].to_string().contains("a/new"),
            "{}",
            model.conflicts[1]
        );
        assert_eq!(model.served.len(), 5, "losers are still served");
        assert!(model.problems.is_empty());
    }

    /// What a model answers, for comparing an incremental translation with a fresh one.
    fn summary(model: &Model, probes: &[(&str, &str)]) -> String {
        let answers: Vec<_> = probes
            .iter()
            .map(|(h, p)| backend_for(model, h, p))
            .collect();
        format!(
            "{answers:?} {:?} {:?} {:?} {:?}",
            model.served, model.problems, model.conflicts, model.tls
        )
    }

    /// `translator.translate` on these objects, checked against a fresh [`translate`].
    fn incremental(
        translator: &mut Translator,
        ingresses: &[Arc<Ingress>],
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
    ) -> Model {
        let classes = [ours()];
        let input = Input {
            ingresses,
            ingress_classes: &classes,
            services,
            endpoint_slices: slices,
            ..Default::default()
        };
        let model = translator.translate(input);
        let probes = [
            ("a.example", "/"),
            ("b.example", "/"),
            ("b.example", "/v2"),
            ("c.example", "/"),
            ("h.example", "/app"),
        ];
        assert_eq!(
            summary(&model, &probes),
            summary(&translate(input), &probes)
        );
        model
    }

    #[test]
    fn translator_reuses_unchanged_backends_and_rebuilds_changed_ones() {
        let web = mk_service("ns", "web", json!([{"name": "http", "port": 80}]));
        let other = mk_service("ns", "other", json!([{"name": "http", "port": 80}]));
        let slice = |name: &str, svc: &str, ip: &str| {
            mk_slice(
                "ns",
                name,
                svc,
                json!([{"name": "http", "port": 8080}]),
                json!([{"addresses": [ip]}]),
            )
        };
        let (web_1, other_1) = (
            slice("web-1", "web", "10.0.0.1"),
            slice("o-1", "other", "10.0.1.1"),
        );
        let a = mk_ingress("ns", "a", rule("a.example", "/", "Prefix", "web"));
        let b = mk_ingress("ns", "b", rule("b.example", "/", "Prefix", "web"));
        let c = mk_ingress("ns", "c", rule("c.example", "/", "Prefix", "other"));
        // Two Ingresses with the same rule: the conflict is found on every pass.
        let dup_old = mk_ingress("ns", "dup-1", rule("h.example", "/app", "Exact", "web"));
        let dup_new = mk_ingress("ns", "dup-2", rule("h.example", "/app", "Exact", "other"));
        let services = [web.clone(), other.clone()];
        let mut t = Translator::default();
        let all = [
            a.clone(),
            b.clone(),
            c.clone(),
            dup_old.clone(),
            dup_new.clone(),
        ];
        let m1 = incremental(&mut t, &all, &services, &[web_1.clone(), other_1.clone()]);
        assert_eq!(m1.conflicts.len(), 1);
        let arc = |m: &Model, host: &str, path: &str| {
            m.routes.lookup(host, path).cloned().expect("routed")
        };

        // Nothing changed: every backend is the same Arc.
        let m2 = incremental(&mut t, &all, &services, &[web_1.clone(), other_1.clone()]);
        for host in ["a.example", "b.example", "c.example"] {
            assert!(
                Arc::ptr_eq(&arc(&m1, host, "/"), &arc(&m2, host, "/")),
                "{host}"
            );
        }
        assert_eq!(m2.conflicts.len(), 1);

        // Ingress b edited: its backend is new, the others are kept.
        let b2 = mk_ingress("ns", "b", rule("b.example", "/v2", "Exact", "web"));
        let edited = [a.clone(), b2, c.clone(), dup_old.clone(), dup_new.clone()];
        let m3 = incremental(
            &mut t,
            &edited,
            &services,
            &[web_1.clone(), other_1.clone()],
        );
        assert!(m3.routes.lookup("b.example", "/").is_none());
        assert!(!Arc::ptr_eq(
            &arc(&m2, "b.example", "/"),
            &arc(&m3, "b.example", "/v2")
        ));
        assert!(Arc::ptr_eq(
            &arc(&m2, "a.example", "/"),
            &arc(&m3, "a.example", "/")
        ));

        // web's EndpointSlice replaced: web's backends get the new endpoint, other's are kept.
        let web_2 = slice("web-1", "web", "10.0.0.2");
        let m4 = incremental(
            &mut t,
            &edited,
            &services,
            &[web_2.clone(), other_1.clone()],
        );
        assert_eq!(
            arc(&m4, "a.example", "/").endpoints(),
            &addrs(&["10.0.0.2:8080"])[..]
        );
        assert!(Arc::ptr_eq(
            &arc(&m3, "c.example", "/"),
            &arc(&m4, "c.example", "/")
        ));

        // Service other deleted: c's backend has no endpoints (503), not a stale one.
        let m5 = incremental(
            &mut t,
            &edited,
            std::slice::from_ref(&web),
            &[web_2.clone(), other_1],
        );
        assert!(arc(&m5, "c.example", "/").endpoints().is_empty());

        // Ingress a deleted (and dup-2 no longer ours): forgotten.
        let not_ours = {
            let mut i = (*dup_new).clone();
            i.spec.as_mut().expect("spec").ingress_class_name = Some("nginx".into());
            Arc::new(i)
        };
        let rest = [edited[1].clone(), c, dup_old, not_ours];
        let m6 = incremental(&mut t, &rest, &[web], &[web_2]);
        assert!(m6.routes.lookup("a.example", "/").is_none());
        assert!(m6.conflicts.is_empty());
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn annotations_set_policy_and_bad_values_reject_the_ingress() {
        use crate::policy::{LoadBalance, UpstreamProtocol};
        let svc = mk_service(
            "ns",
            "web",
            json!([{"name": "h2", "port": 80, "appProtocol": "kubernetes.io/h2c"}, {"name": "plain", "port": 81}]),
        );
        let tuned = with_meta(
            mk_ingress("ns", "tuned", rule("a.example", "/", "Prefix", "web")),
            "2026-01-01T00:00:00Z",
            &[
                ("drawbridge.dev/proxy-body-size", "8m"),
                ("drawbridge.dev/load-balance", "least-request"),
            ],
        );
        let plain = mk_ingress(
            "ns",
            "plain",
            json!({"ingressClassName": "drawbridge", "rules": [{"host": "p.example", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"name": "plain"}}}}]}}]}),
        );
        let forced = with_meta(
            mk_ingress("ns", "forced", rule("f.example", "/", "Prefix", "web")),
            "2026-01-01T00:00:00Z",
            &[("drawbridge.dev/backend-protocol", "HTTP")],
        );
        let bad = with_meta(
            mk_ingress("ns", "bad", rule("b.example", "/", "Prefix", "web")),
            "2026-01-01T00:00:00Z",
            &[("drawbridge.dev/proxy-read-timeout", "soon")],
        );
        let model = input_model(&[tuned, plain, forced, bad], &[svc], &[]);
        let a = model.routes.lookup("a.example", "/").unwrap();
        assert_eq!(a.policy.body_limit, Some(8 << 20));
        assert_eq!(a.policy.load_balance, LoadBalance::LeastRequest);
        assert_eq!(
            a.protocol,
            UpstreamProtocol::H2c,
            "appProtocol kubernetes.io/h2c"
        );
        let p = model.routes.lookup("p.example", "/").unwrap();
        assert_eq!(
            (p.protocol, p.policy.body_limit),
            (UpstreamProtocol::Http1, Some(1 << 20))
        );
        assert_eq!(
            model.routes.lookup("f.example", "/").unwrap().protocol,
            UpstreamProtocol::Http1
        );
        assert!(model.routes.lookup("b.example", "/").is_none());
        assert!(
            matches!(&model.problems[..], [Error::InvalidAnnotation { ingress, .. }] if ingress == "ns/bad")
        );
    }

    #[test]
    fn tls_hosts_of_served_ingresses_are_marked() {
        let spec = json!({"ingressClassName": "drawbridge",
            "tls": [{"hosts": ["Secure.Example", "*.wild.example"], "secretName": "s"}],
            "rules": [{"host": "secure.example", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]});
        let model = input_model(&[mk_ingress("ns", "i", spec)], &[], &[]);
        assert!(model.routes.has_tls("secure.example"));
        assert!(model.routes.has_tls("x.wild.example"));
        assert!(!model.routes.has_tls("plain.example"));
    }

    #[test]
    fn external_name_services_use_resolved_addresses() {
        let svc: Arc<Service> = from_json(json!({"metadata": {"namespace": "ns", "name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "API.Example.",
                     "ports": [{"name": "http", "port": 8080}]}}));
        let unresolved = mk_service("ns", "other", json!([{"port": 80}]));
        let spec = json!({"ingressClassName": "drawbridge", "rules": [{"http": {"paths": [
            {"path": "/num", "pathType": "Prefix", "backend": {"service": {"name": "ext", "port": {"number": 9000}}}},
            {"path": "/name", "pathType": "Prefix", "backend": {"service": {"name": "ext", "port": {"name": "http"}}}},
            {"path": "/missing", "pathType": "Prefix", "backend": {"service": {"name": "ext", "port": {"name": "nope"}}}},
        ]}}]});
        let services = [svc, unresolved];
        assert_eq!(
            external_names(&services),
            BTreeSet::from(["api.example".to_string()])
        );
        let resolved = HashMap::from([(
            "api.example".to_string(),
            vec!["192.0.2.7".parse().unwrap(), "192.0.2.5".parse().unwrap()],
        )]);
        let ingresses = [mk_ingress("ns", "i", spec)];
        let classes = [ours()];
        let model = translate(Input {
            ingresses: &ingresses,
            ingress_classes: &classes,
            services: &services,
            external_names: Some(&resolved),
            ..Default::default()
        });
        assert_eq!(
            backend_for(&model, "x", "/num").map(|b| b.1),
            Some(addrs(&["192.0.2.5:9000", "192.0.2.7:9000"]))
        );
        assert_eq!(
            backend_for(&model, "x", "/name").map(|b| b.1),
            Some(addrs(&["192.0.2.5:8080", "192.0.2.7:8080"]))
        );
        assert_eq!(
            backend_for(&model, "x", "/missing").map(|b| b.1),
            Some(vec![])
        );
        // Not resolved yet: no endpoints (503), not a crash.
        let model = input_model(&ingresses, &services, &[]);
        assert_eq!(backend_for(&model, "x", "/num").map(|b| b.1), Some(vec![]));
    }
}

//! The resource source: one interface, two implementations.
//!
//! ```text
//!   Kubernetes API ──watch──┐                      ┌─> Store<Service>, Store<EndpointSlice>, ...
//!                           ├─> reflector Writers ─┤
//!   manifest dir ──notify───┘   (+ state-dir        └─> `changed()` ticks (level-triggered wake-ups)
//!                                status overlay)
//! ```
//!
//! Components never know which implementation feeds them: they read [`Resources`] (kube-runtime
//! reflector [`Store`]s, one per kind) and write status through a [`StatusWriter`]. A component
//! recomputes its whole desired state after every [`Resources::changed`] tick (level-triggered); the
//! tick carries no payload on purpose.

use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::reflector::{self, Store};
use tokio::sync::watch;

use crate::crd::IPAddressPool;
use crate::crd_l2::L2Announcement;
use crate::events::EventRecorder;
use crate::status::StatusWriter;

pub mod kubernetes;
pub mod manifests;

/// The kinds of object a component can ask the source for.
///
/// `api_version`/`kind` are spelled as in manifests; `plural` is the REST resource name (also the
/// state-directory folder name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// core/v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// networking.k8s.io/v1 Ingress.
    Ingress,
    /// networking.k8s.io/v1 IngressClass (cluster-scoped).
    IngressClass,
    /// core/v1 Secret; only `type: kubernetes.io/tls` Secrets are read.
    Secret,
    /// core/v1 Node (cluster-scoped).
    Node,
    /// drawbridge.dev/v1alpha1 IPAddressPool (cluster-scoped).
    IPAddressPool,
    /// drawbridge.dev/v1alpha1 L2Announcement (cluster-scoped; [`crate::crd_l2`]).
    L2Announcement,
}

impl Kind {
    /// Every kind, in a stable order.
    pub const ALL: [Kind; 8] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Ingress,
        Kind::IngressClass,
        Kind::Secret,
        Kind::Node,
        Kind::IPAddressPool,
        Kind::L2Announcement,
    ];

    /// `apiVersion` as written in manifests (`v1`, `discovery.k8s.io/v1`, ...).
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Secret | Kind::Node => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::Ingress | Kind::IngressClass => "networking.k8s.io/v1",
            Kind::IPAddressPool | Kind::L2Announcement => "drawbridge.dev/v1alpha1",
        }
    }

    /// `kind` as written in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Ingress => "Ingress",
            Kind::IngressClass => "IngressClass",
            Kind::Secret => "Secret",
            Kind::Node => "Node",
            Kind::IPAddressPool => "IPAddressPool",
            Kind::L2Announcement => "L2Announcement",
        }
    }

    /// Lower-case plural REST resource name (`services`, `endpointslices`, ...).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Ingress => "ingresses",
            Kind::IngressClass => "ingressclasses",
            Kind::Secret => "secrets",
            Kind::Node => "nodes",
            Kind::IPAddressPool => "ipaddresspools",
            Kind::L2Announcement => "l2announcements",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::IngressClass | Kind::Node | Kind::IPAddressPool | Kind::L2Announcement
        )
    }

    /// The kind for a manifest's `apiVersion` + `kind`, if drawbridge reads it.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.api_version() == api_version && k.name() == kind)
    }
}

/// Identity of one object: kind, namespace (`None` for cluster-scoped kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The object's kind.
    pub kind: Kind,
    /// `metadata.namespace`; `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
}

impl ObjectKey {
    /// Key of a namespaced object.
    pub fn namespaced(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            kind,
            namespace: Some(namespace.into()),
            name: name.into(),
        }
    }

    /// Key of a cluster-scoped object.
    pub fn cluster(kind: Kind, name: impl Into<String>) -> Self {
        ObjectKey {
            kind,
            namespace: None,
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind.name(), ns, self.name),
            None => write!(f, "{} {}", self.kind.name(), self.name),
        }
    }
}

/// Where a component reads its inputs: `--manifests DIR [--state-dir DIR]` for standalone mode,
/// else the Kubernetes API (in-cluster config or `KUBECONFIG`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SourceArgs {
    /// Standalone mode: read objects from every `*.yaml` / `*.yml` under DIR (multi-document,
    /// `kubectl apply` syntax, `kind: List` accepted) and follow edits live. Without it, the
    /// component watches the Kubernetes API.
    #[arg(long, env = "DRAWBRIDGE_MANIFESTS", value_name = "DIR")]
    pub manifests: Option<PathBuf>,

    /// Standalone mode: where status is written instead of patched in the API (one YAML file per
    /// object, `<DIR>/<plural>/<namespace>/<name>.yaml`), and read back as an overlay on the
    /// manifests, so several components share state the way they share it through the API server.
    /// Without it, status lives only in this process's memory.
    #[arg(
        long,
        env = "DRAWBRIDGE_STATE_DIR",
        value_name = "DIR",
        requires = "manifests"
    )]
    pub state_dir: Option<PathBuf>,
}

/// Errors starting a source. Start-up errors are fatal for the component (nothing to retry into).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No Kubernetes configuration (in-cluster or `KUBECONFIG`) could be loaded.
    #[error("cannot build a Kubernetes client")]
    KubeClient(#[source] kube::Error),
    /// The manifest or state directory cannot be read or watched.
    #[error("cannot watch {path}")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: notify::Error,
    },
    /// The manifest or state directory cannot be created or read.
    #[error("cannot read {path}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Read-only, always-current views of the objects a component asked for.
///
/// Stores of kinds that were not asked for stay empty. Cloning is cheap (stores are shared); each
/// clone has its own position in the change stream.
#[derive(Clone)]
pub struct Resources {
    /// core/v1 Services, all namespaces.
    pub services: Store<Service>,
    /// discovery.k8s.io/v1 EndpointSlices, all namespaces.
    pub endpoint_slices: Store<EndpointSlice>,
    /// networking.k8s.io/v1 Ingresses, all namespaces.
    pub ingresses: Store<Ingress>,
    /// networking.k8s.io/v1 IngressClasses.
    pub ingress_classes: Store<IngressClass>,
    /// core/v1 Secrets of type `kubernetes.io/tls`.
    pub secrets: Store<Secret>,
    /// core/v1 Nodes.
    pub nodes: Store<Node>,
    /// drawbridge.dev/v1alpha1 IPAddressPools.
    pub pools: Store<IPAddressPool>,
    /// drawbridge.dev/v1alpha1 L2Announcements.
    pub l2_announcements: Store<L2Announcement>,
    kinds: Vec<Kind>,
    changes: watch::Receiver<u64>,
}

impl Resources {
    /// Waits until something in any store changed since this handle last looked.
    ///
    /// Returns `false` when the source has shut down (no more changes will come).
    pub async fn changed(&mut self) -> bool {
        self.changes.changed().await.is_ok()
    }

    /// Waits until every requested kind has been listed completely at least once
    /// (kube-proxy's `isInitialized`: never act on a half-loaded world).
    pub async fn wait_synced(&self) {
        let kinds = self.kinds.clone();
        self.wait_synced_kinds(&kinds).await
    }

    /// Whether `kind` has been listed completely at least once (never blocks). A kind this handle
    /// was not started with is never synced.
    pub fn is_synced(&self, kind: Kind) -> bool {
        use futures::FutureExt as _;
        if !self.kinds.contains(&kind) {
            return false;
        }
        let ready = match kind {
            Kind::Service => self.services.wait_until_ready().now_or_never(),
            Kind::EndpointSlice => self.endpoint_slices.wait_until_ready().now_or_never(),
            Kind::Ingress => self.ingresses.wait_until_ready().now_or_never(),
            Kind::IngressClass => self.ingress_classes.wait_until_ready().now_or_never(),
            Kind::Secret => self.secrets.wait_until_ready().now_or_never(),
            Kind::Node => self.nodes.wait_until_ready().now_or_never(),
            Kind::IPAddressPool => self.pools.wait_until_ready().now_or_never(),
            Kind::L2Announcement => self.l2_announcements.wait_until_ready().now_or_never(),
        };
        matches!(ready, Some(Ok(())))
    }

    /// [`Resources::wait_synced`] for some of the kinds only (a component that can do part of its
    /// work before an optional kind, e.g. a CRD not installed, is listed). Kinds this handle was
    /// not started with are skipped.
    pub async fn wait_synced_kinds(&self, kinds: &[Kind]) {
        for kind in kinds.iter().filter(|k| self.kinds.contains(k)) {
            let ready = match kind {
                Kind::Service => self.services.wait_until_ready().await,
                Kind::EndpointSlice => self.endpoint_slices.wait_until_ready().await,
                Kind::Ingress => self.ingresses.wait_until_ready().await,
                Kind::IngressClass => self.ingress_classes.wait_until_ready().await,
                Kind::Secret => self.secrets.wait_until_ready().await,
                Kind::Node => self.nodes.wait_until_ready().await,
                Kind::IPAddressPool => self.pools.wait_until_ready().await,
                Kind::L2Announcement => self.l2_announcements.wait_until_ready().await,
            };
            if ready.is_err() {
                tracing::warn!(
                    kind = kind.name(),
                    "source stopped before the first complete list"
                );
            }
        }
    }

    /// The kinds this handle was started with.
    pub fn kinds(&self) -> &[Kind] {
        &self.kinds
    }
}

/// The write halves behind [`Resources`]; implementations feed watcher events into them.
pub(crate) struct Writers {
    pub services: reflector::store::Writer<Service>,
    pub endpoint_slices: reflector::store::Writer<EndpointSlice>,
    pub ingresses: reflector::store::Writer<Ingress>,
    pub ingress_classes: reflector::store::Writer<IngressClass>,
    pub secrets: reflector::store::Writer<Secret>,
    pub nodes: reflector::store::Writer<Node>,
    pub pools: reflector::store::Writer<IPAddressPool>,
    pub l2_announcements: reflector::store::Writer<L2Announcement>,
    pub changes: watch::Sender<u64>,
}

impl Writers {
    /// Tells every [`Resources`] handle that something changed.
    pub fn notify(&self) {
        self.changes
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }
}

pub(crate) fn stores(kinds: &[Kind]) -> (Resources, Writers) {
    let (services, services_w) = reflector::store();
    let (endpoint_slices, endpoint_slices_w) = reflector::store();
    let (ingresses, ingresses_w) = reflector::store();
    let (ingress_classes, ingress_classes_w) = reflector::store();
    let (secrets, secrets_w) = reflector::store();
    let (nodes, nodes_w) = reflector::store();
    let (pools, pools_w) = reflector::store();
    let (l2_announcements, l2_announcements_w) = reflector::store();
    let (changes_tx, changes) = watch::channel(0);
    let mut kinds = kinds.to_vec();
    kinds.sort();
    kinds.dedup();
    (
        Resources {
            services,
            endpoint_slices,
            ingresses,
            ingress_classes,
            secrets,
            nodes,
            pools,
            l2_announcements,
            kinds,
            changes,
        },
        Writers {
            services: services_w,
            endpoint_slices: endpoint_slices_w,
            ingresses: ingresses_w,
            ingress_classes: ingress_classes_w,
            secrets: secrets_w,
            nodes: nodes_w,
            pools: pools_w,
            l2_announcements: l2_announcements_w,
            changes: changes_tx,
        },
    )
}

/// A running source: the stores to read and the status writer that belongs with them.
pub struct Source {
    /// Read side.
    pub resources: Resources,
    /// Write side for `status` (API patch, or state directory in standalone mode).
    pub status: Arc<dyn StatusWriter>,
    /// Write side for drawbridge's annotations (API merge patch of `metadata.annotations`, or the
    /// state directory's annotation overlay in standalone mode).
    pub metadata: Arc<dyn crate::status::MetadataWriter>,
    /// Where Events go: events.k8s.io/v1 Events through the API, or (standalone mode) a
    /// `target: "event"` log line plus `<state-dir>/events.log`. Callers de-duplicate
    /// ([`crate::events::EventSet`], [`crate::events::LastEvents`]).
    pub events: Arc<dyn EventRecorder>,
    /// Whether this is the manifest-directory implementation (standalone mode).
    pub standalone: bool,
}

/// Starts the source selected by `args` for the given kinds, in the current tokio runtime.
///
/// Background tasks keep the stores current until the process exits. Errors: [`Error::KubeClient`]
/// when no Kubernetes configuration can be found, [`Error::Watch`] / [`Error::Io`] when the manifest
/// or state directory cannot be read.
pub async fn start(args: &SourceArgs, kinds: &[Kind]) -> Result<Source> {
    match &args.manifests {
        Some(dir) => manifests::start(dir.clone(), args.state_dir.clone(), kinds).await,
        None => {
            // Both rustls providers end up linked (Pingora uses ring); rustls then refuses to pick
            // one by itself, so pick Pingora's. Ignoring the error: someone installed it already.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client = kube::Client::try_default()
                .await
                .map_err(Error::KubeClient)?;
            Ok(kubernetes::start(client, kinds))
        }
    }
}

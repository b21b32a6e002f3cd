//! A small Kubernetes API server double over real HTTP, for testing drawbridge's Kubernetes
//! resource source (kube-rs `watcher`s, reflectors, `patch_status`) without a cluster.
//!
//! ```text
//!  test code ──create/update/delete──┐           ┌── GET list ───────── kube::Api / watcher
//!                                    ▼           │
//!                         ┌────────────────────┐ │   GET ?watch=true ── newline-delimited
//!                         │ Store              │◀┤                      {"type","object"} events
//!                         │  objects           │ │   POST/PUT/PATCH/DELETE (+ /status)
//!                         │  resourceVersion   │─┘
//!                         │  event log ────────┼──▶ broadcast ──▶ open watch streams
//!                         └────────────────────┘
//!                          requests() ◀── every HTTP request recorded (verb, path, query, body,
//!                                         listener label: listen_as() tells clients apart)
//!   /_double/... ◀── the same controls over HTTP, for the `api-double` binary (see below)
//! ```
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let double = drawbridge_api_double::ApiDouble::start().await?;
//! double.create(serde_json::json!({
//!     "apiVersion": "v1", "kind": "Service",
//!     "metadata": {"name": "web", "namespace": "shop"},
//!     "spec": {"type": "LoadBalancer"},
//! }));
//! // point a kube::Client at double.url() (or write double.kubeconfig_yaml() to a file)
//! # Ok(()) }
//! ```
//!
//! # Control endpoints
//!
//! For multi-process tests every listener also answers (unrecorded; not Kubernetes paths):
//!
//! | request | effect |
//! |---|---|
//! | `POST /_double/expire-history` | [`ApiDouble::expire_history`] |
//! | `POST /_double/close-watches` | [`ApiDouble::close_watches`] |
//! | `GET /_double/requests` | every recorded request, one JSON object a line (`client`, `verb`, `group`, `resource`, `subresource`, `namespace`, `name`, `method`, `path`, `query`, `user_agent`) |
//! | `GET /_double/open-watches` | `{"openWatches": N}` |
//!
//! # What is reproduced
//!
//! - Paths for core (`/api/v1/...`) and group (`/apis/{group}/{version}/...`) resources,
//!   namespaced and cluster-scoped, per [`catalog::BUILTIN`] plus run-time registrations
//!   ([`ApiDouble::register`], created `CustomResourceDefinition`s).
//! - One global `resourceVersion` counter; every effective write bumps it and is logged and
//!   broadcast as a watch event. A write that changes nothing keeps the version and emits nothing.
//! - `uid`, `creationTimestamp`, `generation` (1 on create, +1 when anything outside `metadata`
//!   and `status` changes) are server-owned.
//! - list (`{Kind}List` with `metadata.resourceVersion`), `labelSelector` (`=`, `==`, `!=`,
//!   exists, `!key`, `in`, `notin`), `fieldSelector` (`=`, `==`, `!=` on any dotted path).
//! - watch from a `resourceVersion` (replaying the log), from `""`/`"0"` (synthetic `ADDED` for
//!   the current state), `sendInitialEvents=true` (then a `BOOKMARK` annotated
//!   `k8s.io/initial-events-end`), `allowWatchBookmarks=true` (a `BOOKMARK` every
//!   [`BOOKMARK_INTERVAL`]), `timeoutSeconds`, `410 Expired` as an `ERROR` event, and objects
//!   entering/leaving a selector turned into `ADDED`/`DELETED`.
//! - get, create (`generateName` too; `409 AlreadyExists`), update (`409 Conflict` on a stale
//!   `metadata.resourceVersion`), delete, deletecollection, patch with merge, strategic-merge (as
//!   merge), apply (as merge, creating when absent; `fieldManager` required) and JSON patch.
//! - Field ownership for server-side apply (`fields`): a non-forced apply that would change a
//!   field another field manager owns fails with `409 Conflict`, as kube-lease-manager's lock
//!   expects; `force=true` takes the field over; updates take the fields they change.
//! - The status strategy for kinds with a `/status` subresource: client writes to the main
//!   resource keep the stored `status` (create drops it), writes to `/status` change only `status`.
//! - Errors as `meta/v1 Status` bodies with the API server's `code` and `reason`.
//! - `Accept: ...;as=PartialObjectMetadata[List]` (kube's metadata-only API).
//! - Discovery documents (`/version`, `/api`, `/apis`, `/api/v1`, `/apis/{group}/{version}`).
//!
//! # What the double does NOT reproduce
//!
//! - Authentication, authorization (RBAC), TLS, HTTP/2, protobuf/CBOR, gzip, API priority and
//!   fairness, request timeouts other than a watch's `timeoutSeconds`.
//! - Admission (mutating or validating webhooks, built-in admission plugins), OpenAPI/CRD schema
//!   validation, defaulting (no `clusterIP`, `ports[].protocol`, `sessionAffinity`, ... are filled
//!   in), pruning of unknown fields, immutability checks, and any controller (no Endpoints or
//!   EndpointSlices for Services, no namespace lifecycle: objects may be created in namespaces that
//!   do not exist).
//! - Server-side apply beyond the ownership above: no `metadata.managedFields` in objects (see
//!   [`ApiDouble::field_owners`]), lists are atomic, only `labels`/`annotations` of `metadata` are
//!   owned, and fields omitted from an apply body are not removed. Strategic merge
//!   patch does not merge lists by key (lists are replaced) and ignores `$patch` directives.
//! - Pagination (`limit`/`continue` are ignored: every list is one page), `resourceVersionMatch`
//!   and `resourceVersion` on get/list (always the latest state), consistent-read semantics, a
//!   watch from a future `resourceVersion` (it simply waits), `dryRun`, `fieldValidation`,
//!   `propagationPolicy`, `gracePeriodSeconds`, preconditions on delete.
//! - Deletion is immediate: finalizers and `deletionTimestamp` are not honoured, no garbage
//!   collection of `ownerReferences`, no cascading.
//! - One version per group/resource: no conversion between API versions, and `v1` `Event` and
//!   `events.k8s.io/v1` `Event` are separate collections (in a real cluster they are one).
//! - Field selectors are accepted on any field (a real server rejects unsupported fields with 400).
//! - Subresources other than `status` (`scale`, `log`, `exec`, `eviction`, `binding`, ...), and
//!   representations other than JSON objects and `PartialObjectMetadata` (no `as=Table`).
//! - The status strategy is uniform: a real server also resets some metadata on `/status` writes
//!   per kind and lets a few kinds change more than `status` there; the double changes exactly
//!   `status`.
//! - Watch caching details: the log keeps the last 10 000 events, and a watch that falls more than
//!   4096 events behind is ended (the client resumes).

#![forbid(unsafe_code)]

pub mod catalog;
mod failure;
mod fields;
mod patch;
mod route;
mod selector;
mod server;
mod store;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;

pub use catalog::ResourceType;

use fields::{TEST_MANAGER, Write};
use store::{ObjectKey, Store};

/// How often a watch with `allowWatchBookmarks=true` receives a `BOOKMARK`.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(2);

/// A running API server double. Clones share the same server and state.
///
/// The server task runs until the tokio runtime it was started on shuts down.
#[derive(Clone)]
pub struct ApiDouble {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    addr: SocketAddr,
    /// Objects, counter, event log: written by test code and HTTP handlers alike.
    store: Mutex<Store>,
    /// Every HTTP request, in arrival order.
    requests: Mutex<Vec<RecordedRequest>>,
    /// Bumped by [`ApiDouble::close_watches`]; every open watch ends when it changes.
    close_watches: tokio::sync::watch::Sender<u64>,
    /// Watch streams currently subscribed to changes (see [`ApiDouble::open_watches`]).
    open_watches: Arc<AtomicUsize>,
}

/// One HTTP request the double received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `GET`, `PATCH`, ...
    pub method: String,
    /// The request path, e.g. `/api/v1/namespaces/shop/services/web/status`.
    pub path: String,
    /// The raw query string without `?` (`""` when absent).
    pub query: String,
    /// The Kubernetes verb: `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`; the lower-case method for non-resource paths.
    pub verb: String,
    /// The resource plural (`services`), `None` for non-resource paths.
    pub resource: Option<String>,
    /// The API group (`""` for core, `discovery.k8s.io`, ...), `None` for non-resource paths.
    pub group: Option<String>,
    /// `status` for `/status` requests.
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The `Content-Type` header (tells merge from apply from JSON patch).
    pub content_type: Option<String>,
    /// The request body (lossy UTF-8).
    pub body: String,
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
    /// The label of the listener the request came in on ([`ApiDouble::listen_as`]); `None` for
    /// the main listener.
    pub client: Option<String>,
}

// === impl RecordedRequest ===

impl RecordedRequest {
    /// A decoded query parameter, e.g. `query_param("labelSelector")`.
    pub fn query_param(&self, key: &str) -> Option<String> {
        route::Query::parse(&self.query)
            .get(key)
            .map(str::to_string)
    }
}

// === impl ApiDouble ===

impl ApiDouble {
    /// Binds `127.0.0.1:0` and serves plain HTTP/1.1.
    pub async fn start() -> std::io::Result<ApiDouble> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Binds `addr` and serves plain HTTP/1.1.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<ApiDouble> {
        let listener = TcpListener::bind(addr).await?;
        let inner = Arc::new(Inner {
            addr: listener.local_addr()?,
            store: Mutex::new(Store::default()),
            requests: Mutex::new(Vec::new()),
            close_watches: tokio::sync::watch::Sender::new(0),
            open_watches: Arc::new(AtomicUsize::new(0)),
        });
        tokio::spawn(server::serve(listener, inner.clone(), None));
        Ok(ApiDouble { inner })
    }

    /// Serves the same state on one more address, recording every request that comes in there
    /// with [`RecordedRequest::client`] = `label`: give each client under test its own listener
    /// (its own kubeconfig, see [`kubeconfig_yaml_for`](Self::kubeconfig_yaml_for)) and its
    /// API calls can be told apart. Returns the bound address.
    pub async fn listen_as(&self, label: &str, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        tokio::spawn(server::serve(
            listener,
            self.inner.clone(),
            Some(label.into()),
        ));
        Ok(bound)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// A kubeconfig with one context pointing at [`url`](Self::url), no credentials, namespace
    /// `default`.
    pub fn kubeconfig_yaml(&self) -> String {
        Self::kubeconfig_yaml_for(&self.url())
    }

    /// The same kubeconfig for another server URL (e.g. a [`listen_as`](Self::listen_as)
    /// listener, or the address another network namespace reaches the double on).
    pub fn kubeconfig_yaml_for(url: &str) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: api-double\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: api-double\n  user: {{}}\n\
             contexts:\n\
             - name: api-double\n  context:\n    cluster: api-double\n    user: api-double\n    namespace: default\n\
             current-context: api-double\n"
        )
    }

    /// Stores a new object as given (status included: test code is not subject to the status
    /// strategy), setting `uid`, `resourceVersion`, `creationTimestamp` and `generation`, and
    /// emits `ADDED`. A namespaced object without `metadata.namespace` goes to `default`.
    ///
    /// # Panics
    /// If the object has no `apiVersion`/`kind`/`metadata.name`, its type is unknown, or it already
    /// exists (use [`update`](Self::update)).
    pub fn create(&self, obj: Value) -> Value {
        let mut store = self.inner.store();
        let (_, key) = store
            .identify(&obj)
            .unwrap_or_else(|e| panic!("ApiDouble::create: {e}"));
        assert!(
            store.get(&key).is_none(),
            "ApiDouble::create: {key:?} already exists"
        );
        store.insert(key, obj, Write::Update(TEST_MANAGER))
    }

    /// Replaces an object as given (keeping `uid` and `creationTimestamp`; `resourceVersion` in
    /// `obj` is ignored) and emits `MODIFIED`; creates it (emitting `ADDED`) when absent. A replace
    /// that changes nothing emits nothing.
    ///
    /// # Panics
    /// If the object has no `apiVersion`/`kind`/`metadata.name` or its type is unknown.
    pub fn update(&self, obj: Value) -> Value {
        let mut store = self.inner.store();
        let (_, key) = store
            .identify(&obj)
            .unwrap_or_else(|e| panic!("ApiDouble::update: {e}"));
        store.replace(key, obj, Write::Update(TEST_MANAGER))
    }

    /// Deletes an object and emits `DELETED`; returns its last state, `None` when absent or the
    /// type is unknown.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let mut store = self.inner.store();
        let key = Self::key(&store, api_version, kind, namespace, name)?;
        store.remove(&key)
    }

    /// The stored object, if any.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let store = self.inner.store();
        let key = Self::key(&store, api_version, kind, namespace, name)?;
        store.get(&key).cloned()
    }

    /// Field ownership of a stored object for server-side apply: the fields (`.spec.x`) each
    /// field manager owns; empty when the object or its type is unknown. See the crate docs for
    /// how the double tracks ownership.
    pub fn field_owners(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> std::collections::BTreeMap<String, Vec<String>> {
        let store = self.inner.store();
        Self::key(&store, api_version, kind, namespace, name)
            .map(|key| store.owners(&key).describe())
            .unwrap_or_default()
    }

    /// Every stored object of a type (all namespaces), in namespace/name order.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let store = self.inner.store();
        let Some(resource) = store.catalog.by_kind(api_version, kind).cloned() else {
            return Vec::new();
        };
        store.list(&resource, &selector::Filter::default())
    }

    fn key(
        store: &Store,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<ObjectKey> {
        let resource = store.catalog.by_kind(api_version, kind)?;
        Some(ObjectKey::new(resource, namespace, name))
    }

    /// Serves another resource type (replacing one with the same `apiVersion` and plural).
    pub fn register(&self, resource: ResourceType) {
        self.inner.store().catalog.register(resource);
    }

    /// The current global `resourceVersion`.
    pub fn resource_version(&self) -> u64 {
        self.inner.store().resource_version()
    }

    /// Watch streams currently open and subscribed to changes. A watch counts from the moment
    /// its request is handled until its stream ends (timeout, [`close_watches`](Self::close_watches),
    /// client gone), so tests can wait for a watcher to be established before acting.
    pub fn open_watches(&self) -> usize {
        self.inner.open_watches.load(Ordering::SeqCst)
    }

    /// Every request handled so far, in order. A request is recorded once handled: a recorded
    /// watch is already subscribed to changes.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.requests().clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.inner.requests().clear();
    }

    /// Forgets the event log (like an etcd compaction): a watch from any `resourceVersion` handed
    /// out before this call gets an `ERROR` event with a `410 Expired` `Status`, which makes a
    /// kube-rs watcher relist. Open watches are not affected; pair with
    /// [`close_watches`](Self::close_watches) to force them to resume.
    pub fn expire_history(&self) {
        self.inner.store().expire_history();
    }

    /// Ends every open watch stream cleanly (the terminating chunk is sent); clients resume
    /// from their last seen `resourceVersion`.
    pub fn close_watches(&self) {
        self.inner
            .close_watches
            .send_modify(|generation| *generation += 1);
    }

    /// Stores every object of a multi-document YAML (or JSON) text with [`update`](Self::update)
    /// semantics (created when absent, replaced when present); empty documents are skipped.
    /// Returns the stored objects. Documents before a failing one stay stored.
    pub fn load_yaml(&self, yaml: &str) -> Result<Vec<Value>, LoadError> {
        let mut stored = Vec::new();
        for (index, document) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
            let object: Value = serde::Deserialize::deserialize(document)
                .map_err(|source| LoadError::Yaml { index, source })?;
            if object.is_null() {
                continue;
            }
            let mut store = self.inner.store();
            let (_, key) = store
                .identify(&object)
                .map_err(|message| LoadError::Object { index, message })?;
            stored.push(store.replace(key, object, Write::Update(TEST_MANAGER)));
        }
        Ok(stored)
    }
}

impl std::fmt::Debug for ApiDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiDouble")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

/// Why [`ApiDouble::load_yaml`] stopped. Not retryable: the input is wrong.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Document `index` (0-based) is not valid YAML.
    #[error("document {index} is not valid YAML")]
    Yaml {
        index: usize,
        #[source]
        source: serde_yaml::Error,
    },
    /// Document `index` is not a storable object (no apiVersion/kind/name, or an unknown type).
    #[error("document {index}: {message}")]
    Object { index: usize, message: String },
}

// === impl Inner ===

impl Inner {
    /// The store; a panic while holding the lock (a bug in the double) does not wedge later tests.
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn requests(&self) -> MutexGuard<'_, Vec<RecordedRequest>> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

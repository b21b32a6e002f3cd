//! Standalone implementation: a directory of manifests, followed live, plus a state directory.
//!
//! ```text
//!   DIR/**/*.yaml ──parse──> objects by file ──┐
//!                                              ├─ effective object = manifest + status overlay ─> Writers
//!   STATE/<plural>/[<ns>/]<name>.yaml ─────────┘      (emitted only when it differs from last time)
//!       ^
//!       └── ManifestStatusWriter (merge patch, atomic write) ── the component's own status writes
//! ```
//!
//! Rules, chosen to match what `kubectl apply -f DIR` would leave in a cluster:
//! - every `*.yaml` / `*.yml` below DIR (recursively, hidden files skipped, sorted by path) holds any
//!   number of documents; `kind: List` / `*List` documents are unwrapped;
//! - a namespaced object without `metadata.namespace` lands in `default`;
//! - an object defined in two files: the file that sorts last wins (a later `kubectl apply` would
//!   overwrite); removing it from that file brings the other definition back;
//! - only Secrets of `type: kubernetes.io/tls` are read (the Kubernetes source uses the same field
//!   selector);
//! - a file that is not valid YAML is reported (`warn`, with its path and the parser's reason) and
//!   the objects it held before stay in force (last good config); an object that does not decode as
//!   its kind is reported and its last good version stays in force; everything else keeps working;
//! - status: a manifest may carry `status` (as in `kubectl get -o yaml`), and a state file for the
//!   same object replaces it. Status writes merge into the current status (RFC 7386, as the API
//!   server does for `application/merge-patch+json`) and are written atomically (temp + rename), so
//!   processes sharing a state directory never read half a file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::Event;
use notify::{EventKind, RecursiveMode, Watcher};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{Error, Kind, ObjectKey, Result, Source, Writers, stores};
use crate::names::SECRET_TYPE_TLS;
use crate::status::{Annotations, MetadataWriter, StatusError, StatusWriter};

/// File events closer together than this are applied as one batch (editors write a temp file and
/// rename it; `cp -r` creates many files at once). In milliseconds.
const DEBOUNCE_MS: u64 = 10;

/// Starts the manifest source: loads everything once (stores become ready), then follows changes.
pub async fn start(dir: PathBuf, state_dir: Option<PathBuf>, kinds: &[Kind]) -> Result<Source> {
    let dir = std::fs::canonicalize(&dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;
    let state_dir = match state_dir {
        Some(s) => {
            std::fs::create_dir_all(&s).map_err(|source| Error::Io {
                path: s.clone(),
                source,
            })?;
            Some(std::fs::canonicalize(&s).map_err(|source| Error::Io {
                path: s.clone(),
                source,
            })?)
        }
        None => None,
    };
    let (resources, writers) = stores(kinds);
    let inner = Arc::new(Mutex::new(Inner {
        dir: dir.clone(),
        state_dir: state_dir.clone(),
        kinds: resources.kinds().to_vec(),
        files: BTreeMap::new(),
        defined_in: HashMap::new(),
        status_files: BTreeMap::new(),
        overlay: HashMap::new(),
        emitted: HashMap::new(),
        writers,
        initializing: true,
        dirty: false,
    }));

    // Watch before the first scan, so nothing written in between is missed.
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = tx.send(event);
    })
    .map_err(|source| Error::Watch {
        path: dir.clone(),
        source,
    })?;
    watcher
        .watch(&dir, RecursiveMode::Recursive)
        .map_err(|source| Error::Watch {
            path: dir.clone(),
            source,
        })?;
    if let Some(s) = &state_dir
        && !s.starts_with(&dir)
    {
        watcher
            .watch(s, RecursiveMode::Recursive)
            .map_err(|source| Error::Watch {
                path: s.clone(),
                source,
            })?;
    }

    {
        let mut inner = inner.lock().expect("manifest source lock poisoned");
        inner.initial_load();
    }
    tokio::spawn(follow(inner.clone(), rx, watcher));

    Ok(Source {
        resources,
        status: Arc::new(ManifestStatusWriter {
            inner: inner.clone(),
        }),
        metadata: Arc::new(ManifestStatusWriter { inner }),
        events: Arc::new(crate::events::LogEventRecorder::new(state_dir.clone())),
        standalone: true,
    })
}

/// Applies file events until the process exits. Keeps the `notify` watcher alive.
async fn follow(
    inner: Arc<Mutex<Inner>>,
    mut rx: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    _watcher: notify::RecommendedWatcher,
) {
    while let Some(first) = rx.recv().await {
        tokio::time::sleep(Duration::from_millis(DEBOUNCE_MS)).await;
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut rescan = false;
        let mut paths = BTreeSet::new();
        for event in batch {
            match event {
                Ok(event) => {
                    // Reads (ours included) produce open/close events; only writes matter.
                    if matches!(
                        event.kind,
                        EventKind::Access(notify::event::AccessKind::Close(
                            notify::event::AccessMode::Write
                        ))
                    ) || !matches!(event.kind, EventKind::Access(_))
                    {
                        rescan |= event.need_rescan();
                        paths.extend(event.paths);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "file watch error; rescanning everything");
                    rescan = true;
                }
            }
        }
        let mut inner = inner.lock().expect("manifest source lock poisoned");
        if rescan {
            tracing::info!(
                "file events were lost (inotify queue overflow?); rescanning everything"
            );
            inner.rescan();
        } else {
            for path in &paths {
                inner.reload_path(path);
            }
        }
        inner.flush_notify();
    }
}

struct Inner {
    dir: PathBuf,
    state_dir: Option<PathBuf>,
    kinds: Vec<Kind>,
    /// Last good parse of every manifest file: the objects it defines (an object defined twice in
    /// one file: the later document). A map, so finding one object is O(1) however large the file.
    /// Each object is kept as compact JSON text, not a `Value` tree: the tree took ~10× the
    /// memory (57 MiB of the gateway's 88 MiB heap at 10,000 Ingresses, heaptrack under
    /// bench/gateway/propagation.sh); the text is parsed again only when the object is recomputed.
    files: BTreeMap<PathBuf, HashMap<ObjectKey, Box<str>>>,
    /// Which files define each object (the last one wins).
    defined_in: HashMap<ObjectKey, BTreeSet<PathBuf>>,
    /// State file -> the object it overlays, and a digest of the bytes we last read from or
    /// wrote to it (ordered: see `known_under`).
    status_files: BTreeMap<PathBuf, (ObjectKey, u64)>,
    /// What the state files (and our own writes) lay over the manifests.
    overlay: HashMap<ObjectKey, Overlay>,
    /// Digest of the effective object last handed to the stores (the object itself lives in the
    /// store; keeping only a digest here halves the memory of large manifest directories).
    emitted: HashMap<ObjectKey, u64>,
    writers: Writers,
    /// During the first load, objects go to the stores as `InitApply` (stores become ready at once).
    initializing: bool,
    /// Something was emitted since the last `notify`.
    dirty: bool,
}

impl Inner {
    fn initial_load(&mut self) {
        self.for_each_writer_event(&InitMarker::Init);
        if let Some(state_dir) = self.state_dir.clone() {
            for path in yaml_files_under(&state_dir, None) {
                self.load_status_file(&path);
            }
        }
        let skip = self.state_dir.clone();
        for path in yaml_files_under(&self.dir.clone(), skip.as_deref()) {
            self.load_manifest_file(&path);
        }
        self.for_each_writer_event(&InitMarker::Done);
        self.initializing = false;
        self.dirty = true;
        self.flush_notify();
        tracing::info!(
            dir = %self.dir.display(),
            files = self.files.len(),
            objects = self.emitted.len(),
            "manifest directory loaded"
        );
    }

    fn flush_notify(&mut self) {
        if std::mem::take(&mut self.dirty) {
            self.writers.notify();
        }
    }

    fn is_state_path(&self, path: &Path) -> bool {
        self.state_dir
            .as_deref()
            .is_some_and(|s| path.starts_with(s))
    }

    fn rescan(&mut self) {
        let dir = self.dir.clone();
        self.reload_path(&dir);
        if let Some(state_dir) = self.state_dir.clone() {
            self.reload_path(&state_dir);
        }
    }

    /// Brings everything at or below `path` up to date with the disk.
    ///
    /// Cost: O(log n) plus the files at or below `path` — never a scan of every known file, so a
    /// burst of events (each status write is ~5 inotify events, most for temporary files that
    /// are gone by the time we look) stays linear in the burst.
    fn reload_path(&mut self, path: &Path) {
        let state = self.is_state_path(path);
        let root = if state {
            self.state_dir.clone().unwrap_or_else(|| self.dir.clone())
        } else {
            self.dir.clone()
        };
        if hidden_below(&root, path) {
            // Temporary files (ours: `.<name>.tmp.<pid>`, claims' `.tmp-*`; editors' swap files).
            return;
        }
        if path.is_dir() {
            let skip = if state { None } else { self.state_dir.clone() };
            let present: BTreeSet<PathBuf> = yaml_files_under(path, skip.as_deref())
                .into_iter()
                .collect();
            let known = self.known_under(path, state);
            for gone in known.iter().filter(|p| !present.contains(*p)) {
                self.forget(gone, state);
            }
            for file in &present {
                self.load(file, state);
            }
        } else if path.is_file() {
            if is_yaml_file(path) {
                self.load(path, state);
            }
        } else {
            // Gone: a file or a whole directory.
            for gone in self.known_under(path, state) {
                self.forget(&gone, state);
            }
        }
    }

    /// Known manifest (or, with `state`, state) files at or below `path`.
    fn known_under(&self, path: &Path, state: bool) -> Vec<PathBuf> {
        if state {
            paths_under(&self.status_files, path)
        } else {
            paths_under(&self.files, path)
        }
    }

    fn load(&mut self, path: &Path, state: bool) {
        if state {
            self.load_status_file(path)
        } else {
            self.load_manifest_file(path)
        }
    }

    fn forget(&mut self, path: &Path, state: bool) {
        if state {
            if let Some((key, _)) = self.status_files.remove(path) {
                self.overlay.remove(&key);
                self.recompute(&key);
            }
        } else if let Some(objects) = self.files.remove(path) {
            tracing::info!(path = %path.display(), "manifest file removed");
            for (key, _) in objects {
                if let Some(files) = self.defined_in.get_mut(&key) {
                    files.remove(path);
                    if files.is_empty() {
                        self.defined_in.remove(&key);
                    }
                }
                self.recompute(&key);
            }
        }
    }

    fn load_manifest_file(&mut self, path: &Path) {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return self.forget(path, false);
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read manifest file; keeping its last good objects");
                return;
            }
        };
        let objects = match parse_manifests(&text, &self.kinds) {
            Ok((objects, problems)) => {
                for problem in problems {
                    tracing::warn!(path = %path.display(), %problem, "skipping object");
                }
                objects
            }
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "manifest file does not parse; keeping its last good objects");
                return;
            }
        };
        // Later documents win over earlier ones of the same object (a later `kubectl apply`).
        let objects: HashMap<ObjectKey, Box<str>> = objects
            .into_iter()
            .filter_map(|(key, object)| match compact_json(&object) {
                Some(text) => Some((key, text)),
                None => {
                    tracing::warn!(path = %path.display(), object = %key,
                        "skipping object: nested deeper than the JSON parser's limit (128)");
                    None
                }
            })
            .collect();
        let new_keys: Vec<ObjectKey> = objects.keys().cloned().collect();
        let old = self
            .files
            .insert(path.to_path_buf(), objects)
            .unwrap_or_default();
        let mut affected: BTreeSet<ObjectKey> = BTreeSet::new();
        for key in old.keys() {
            if let Some(files) = self.defined_in.get_mut(key) {
                files.remove(path);
                if files.is_empty() {
                    self.defined_in.remove(key);
                }
            }
            affected.insert(key.clone());
        }
        for key in &new_keys {
            self.defined_in
                .entry(key.clone())
                .or_default()
                .insert(path.to_path_buf());
            affected.insert(key.clone());
        }
        for key in &affected {
            self.recompute(key);
        }
    }

    fn load_status_file(&mut self, path: &Path) {
        let Ok(text) = std::fs::read_to_string(path) else {
            return self.forget(path, true);
        };
        let bytes = digest_bytes(text.as_bytes());
        if self
            .status_files
            .get(path)
            .is_some_and(|(_, d)| *d == bytes)
        {
            // The bytes we last read or wrote (every write of our own comes back through the
            // watcher): nothing to parse.
            return;
        }
        let parsed: Result<Value, String> = serde_yaml::from_str::<serde_yaml::Value>(&text)
            .map_err(|e| e.to_string())
            .and_then(|v| serde_json::to_value(v).map_err(|e| e.to_string()));
        let doc = match parsed {
            Ok(doc) => doc,
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "state file does not parse; ignoring it");
                return;
            }
        };
        let Some((key, _)) = object_key(&doc, &Kind::ALL) else {
            tracing::warn!(path = %path.display(), "state file names no known object; ignoring it");
            return;
        };
        let overlay = Overlay::from_state_file(&doc);
        self.status_files
            .insert(path.to_path_buf(), (key.clone(), bytes));
        if self.overlay.get(&key) != Some(&overlay) {
            self.overlay.insert(key.clone(), overlay);
            self.recompute(&key);
        }
    }

    /// The object as the stores should see it: the winning manifest with the state overlay.
    fn effective(&self, key: &ObjectKey) -> Option<Value> {
        let winner = self.defined_in.get(key)?.last()?;
        let manifest = self.files.get(winner)?.get(key)?;
        // Cannot fail: `compact_json` checked that the text parses back.
        let mut object: Value = serde_json::from_str(manifest).ok()?;
        if let Some(overlay) = self.overlay.get(key) {
            overlay.apply(&mut object);
        }
        Some(object)
    }

    fn recompute(&mut self, key: &ObjectKey) {
        if !self.kinds.contains(&key.kind) {
            return;
        }
        let desired = self.effective(key);
        let desired_digest = desired.as_ref().map(digest);
        if desired_digest.as_ref() == self.emitted.get(key) {
            return;
        }
        match desired {
            Some(object) => match self.emit(key.kind, &object, false) {
                Ok(()) => {
                    self.emitted
                        .insert(key.clone(), desired_digest.unwrap_or_default());
                    self.dirty = true;
                }
                Err(error) => {
                    let file = self
                        .defined_in
                        .get(key)
                        .and_then(|f| f.last())
                        .cloned()
                        .unwrap_or_default();
                    tracing::warn!(object = %key, path = %file.display(), %error,
                        "object does not decode; keeping its last good version");
                }
            },
            None => {
                if self.emitted.remove(key).is_some() {
                    self.delete(key);
                    self.dirty = true;
                }
            }
        }
    }

    fn emit(&mut self, kind: Kind, object: &Value, delete: bool) -> Result<(), serde_json::Error> {
        let init = self.initializing;
        let w = &mut self.writers;
        match kind {
            Kind::Service => apply(&mut w.services, object, delete, init),
            Kind::EndpointSlice => apply(&mut w.endpoint_slices, object, delete, init),
            Kind::Ingress => apply(&mut w.ingresses, object, delete, init),
            Kind::IngressClass => apply(&mut w.ingress_classes, object, delete, init),
            Kind::Secret => apply(&mut w.secrets, object, delete, init),
            Kind::Node => apply(&mut w.nodes, object, delete, init),
            Kind::IPAddressPool => apply(&mut w.pools, object, delete, init),
            Kind::L2Announcement => apply(&mut w.l2_announcements, object, delete, init),
        }
    }

    /// Removes `key` from its store (the store holds the last good typed object).
    fn delete(&mut self, key: &ObjectKey) {
        let w = &mut self.writers;
        match key.kind {
            Kind::Service => remove(&mut w.services, key),
            Kind::EndpointSlice => remove(&mut w.endpoint_slices, key),
            Kind::Ingress => remove(&mut w.ingresses, key),
            Kind::IngressClass => remove(&mut w.ingress_classes, key),
            Kind::Secret => remove(&mut w.secrets, key),
            Kind::Node => remove(&mut w.nodes, key),
            Kind::IPAddressPool => remove(&mut w.pools, key),
            Kind::L2Announcement => remove(&mut w.l2_announcements, key),
        }
    }

    fn for_each_writer_event(&mut self, marker: &InitMarker) {
        let w = &mut self.writers;
        marker.send(&mut w.services);
        marker.send(&mut w.endpoint_slices);
        marker.send(&mut w.ingresses);
        marker.send(&mut w.ingress_classes);
        marker.send(&mut w.secrets);
        marker.send(&mut w.nodes);
        marker.send(&mut w.pools);
        marker.send(&mut w.l2_announcements);
    }

    fn state_file_path(&self, state_dir: &Path, key: &ObjectKey) -> PathBuf {
        let mut path = state_dir.join(key.kind.plural());
        if let Some(ns) = &key.namespace {
            path.push(ns);
        }
        path.join(format!("{}.yaml", key.name))
    }

    fn patch_status(&mut self, key: &ObjectKey, patch: &Value) -> Result<(), StatusError> {
        let Some(current) = self.effective(key) else {
            tracing::debug!(object = %key, "status patch for an object that does not exist; dropped");
            return Ok(());
        };
        let mut status = current.get("status").cloned().unwrap_or(Value::Null);
        if !status.is_object() {
            status = Value::Object(Default::default());
        }
        json_patch::merge(&mut status, patch);
        if current.get("status") == Some(&status) {
            return Ok(());
        }
        let mut overlay = self.overlay.get(key).cloned().unwrap_or_default();
        overlay.status = Some(status);
        self.store_overlay(key, overlay)
    }

    /// Sets (`Some`) or removes (`None`) annotations of `key`, as a merge patch of
    /// `metadata.annotations` would. Nothing is written when the object already shows them.
    fn patch_annotations(
        &mut self,
        key: &ObjectKey,
        annotations: &BTreeMap<String, Option<String>>,
    ) -> Result<(), StatusError> {
        let Some(current) = self.effective(key) else {
            tracing::debug!(object = %key, "annotation patch for an object that does not exist; dropped");
            return Ok(());
        };
        let shown = current.pointer("/metadata/annotations");
        let already = annotations
            .iter()
            .all(|(k, v)| shown.and_then(|a| a.get(k)).and_then(Value::as_str) == v.as_deref());
        if already {
            return Ok(());
        }
        let mut overlay = self.overlay.get(key).cloned().unwrap_or_default();
        for (k, v) in annotations {
            let v = v.clone().map_or(Value::Null, Value::String);
            overlay.annotations.insert(k.clone(), v);
        }
        self.store_overlay(key, overlay)
    }

    /// Writes `overlay` to the object's state file (when there is a state directory), then makes
    /// it the object's overlay. The file is complete or absent, never half written.
    fn store_overlay(&mut self, key: &ObjectKey, overlay: Overlay) -> Result<(), StatusError> {
        if let Some(state_dir) = self.state_dir.clone() {
            let path = self.state_file_path(&state_dir, key);
            let doc = overlay.state_file(key);
            let text = serde_yaml::to_string(&doc).unwrap_or_default();
            write_atomically(&path, &text).map_err(|source| StatusError::StateFileWriteFailed {
                key: key.clone(),
                path: path.clone(),
                source,
            })?;
            self.status_files
                .insert(path, (key.clone(), digest_bytes(text.as_bytes())));
        }
        self.overlay.insert(key.clone(), overlay);
        self.recompute(key);
        Ok(())
    }
}

/// The keys of `map` at or below `path`, in O(log n + found): paths order component by component,
/// so everything below `path` is one contiguous range starting at `path` (`a/b/c` sorts before
/// `a/b.yaml` and `a/bc`).
fn paths_under<V>(map: &BTreeMap<PathBuf, V>, path: &Path) -> Vec<PathBuf> {
    use std::ops::Bound;
    map.range::<Path, _>((Bound::Included(path), Bound::Unbounded))
        .map(|(p, _)| p)
        .take_while(|p| p.starts_with(path))
        .cloned()
        .collect()
}

/// A 64-bit digest of a file's bytes (same bytes, same overlay: no need to parse again).
fn digest_bytes(bytes: &[u8]) -> u64 {
    use std::hash::Hasher as _;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    hasher.write(bytes);
    hasher.finish()
}

/// What a state file lays over an object's manifest.
///
/// State file: `{apiVersion, kind, metadata: {name, namespace, annotations}, status}`; `status`
/// replaces the manifest's whole `status`; each annotation replaces the manifest's value of that
/// key, and a `null` one removes it (the merge patch that removed it, RFC 7386). Only annotations
/// drawbridge writes appear there (e.g. `drawbridge.dev/announcing-node`); every other key
/// comes from the manifest.
#[derive(Clone, Debug, Default, PartialEq)]
struct Overlay {
    /// The whole `status`; `None`: the manifest's own status stands.
    status: Option<Value>,
    /// Annotation key → string value, or `null` (removed).
    annotations: BTreeMap<String, Value>,
}

impl Overlay {
    fn from_state_file(doc: &Value) -> Overlay {
        let annotations = doc
            .pointer("/metadata/annotations")
            .and_then(Value::as_object)
            .map(|a| {
                a.iter()
                    .filter(|(_, v)| v.is_string() || v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Overlay {
            status: doc.get("status").cloned(),
            annotations,
        }
    }

    fn apply(&self, object: &mut Value) {
        if let Some(status) = &self.status {
            object["status"] = status.clone();
        }
        if self.annotations.is_empty() {
            return;
        }
        let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
            return;
        };
        let annotations = metadata
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if !annotations.is_object() {
            *annotations = Value::Object(Default::default());
        }
        if let Some(map) = annotations.as_object_mut() {
            for (k, v) in &self.annotations {
                if v.is_null() {
                    map.remove(k);
                } else {
                    map.insert(k.clone(), v.clone());
                }
            }
        }
    }

    fn state_file(&self, key: &ObjectKey) -> Value {
        let mut metadata = serde_json::json!({ "name": key.name });
        if let Some(ns) = &key.namespace {
            metadata["namespace"] = Value::String(ns.clone());
        }
        if !self.annotations.is_empty() {
            metadata["annotations"] = serde_json::json!(self.annotations);
        }
        let mut doc = serde_json::json!({
            "apiVersion": key.kind.api_version(),
            "kind": key.kind.name(),
            "metadata": metadata,
        });
        if let Some(status) = &self.status {
            doc["status"] = status.clone();
        }
        doc
    }
}

enum InitMarker {
    Init,
    Done,
}

impl InitMarker {
    fn send<K>(&self, writer: &mut Writer<K>)
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        let event = match self {
            InitMarker::Init => Event::Init,
            InitMarker::Done => Event::InitDone,
        };
        writer.apply_watcher_event(&event);
    }
}

fn apply<K>(
    writer: &mut Writer<K>,
    object: &Value,
    delete: bool,
    init: bool,
) -> Result<(), serde_json::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + 'static,
{
    let object: K = serde_json::from_value(object.clone())?;
    let event = match (delete, init) {
        (true, _) => Event::Delete(object),
        (false, true) => Event::InitApply(object),
        (false, false) => Event::Apply(object),
    };
    writer.apply_watcher_event(&event);
    Ok(())
}

fn remove<K>(writer: &mut Writer<K>, key: &ObjectKey)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let mut reference = ObjectRef::<K>::new(&key.name);
    if let Some(ns) = &key.namespace {
        reference = reference.within(ns);
    }
    if let Some(object) = writer.as_reader().get(&reference) {
        writer.apply_watcher_event(&Event::Delete((*object).clone()));
    }
}

/// `object` as compact JSON text, if it parses back (serde_json refuses nesting deeper than 128
/// levels; only such objects are checked, by parsing them once).
fn compact_json(object: &Value) -> Option<Box<str>> {
    fn depth(v: &Value) -> usize {
        match v {
            Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
            Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    let text = object.to_string();
    if depth(object) >= 100 && serde_json::from_str::<Value>(&text).is_err() {
        return None;
    }
    Some(text.into_boxed_str())
}

/// A 64-bit digest of a JSON value, to notice changes without keeping a copy.
fn digest(value: &Value) -> u64 {
    use std::hash::Hasher;
    struct HashWriter(std::collections::hash_map::DefaultHasher);
    impl std::io::Write for HashWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.write(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut writer = HashWriter(Default::default());
    // Serializing a `Value` into a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut writer, value);
    writer.0.finish()
}

/// Writes `contents` to a temporary file beside `path` and renames it over `path`: readers see the
/// old or the new file, never a part. Not fsynced: survives a killed process, not a power loss.
fn write_atomically(path: &Path, contents: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("status");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    if let Err(error) = std::fs::write(&tmp, contents) {
        if error.kind() != std::io::ErrorKind::NotFound {
            return Err(error);
        }
        std::fs::create_dir_all(dir)?;
        std::fs::write(&tmp, contents)?;
    }
    std::fs::rename(&tmp, path)
}

/// Whether any component of `path` below `root` is hidden (`.git/`, editor temp files).
fn hidden_below(root: &Path, path: &Path) -> bool {
    path.strip_prefix(root)
        .map(|rel| {
            rel.components()
                .any(|c| c.as_os_str().to_str().is_none_or(|s| s.starts_with('.')))
        })
        .unwrap_or(false)
}

fn is_yaml_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    !hidden
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        )
}

/// Every YAML file below `root` (sorted; hidden files and directories skipped; `skip` pruned).
fn yaml_files_under(root: &Path, skip: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| n.starts_with('.'));
            if hidden || skip.is_some_and(|s| path.starts_with(s)) {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if is_yaml_file(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Key of a manifest object (defaulting the namespace) if it is of one of `kinds`.
fn object_key(object: &Value, kinds: &[Kind]) -> Option<(ObjectKey, bool)> {
    let api_version = object.get("apiVersion")?.as_str()?;
    let kind = Kind::from_type(api_version, object.get("kind")?.as_str()?)?;
    if !kinds.contains(&kind) {
        return None;
    }
    let metadata = object.get("metadata")?;
    let name = metadata.get("name")?.as_str()?.to_string();
    let namespace = metadata.get("namespace").and_then(Value::as_str);
    let defaulted = kind.namespaced() && namespace.is_none();
    let namespace = kind
        .namespaced()
        .then(|| namespace.unwrap_or("default").to_string());
    Some((
        ObjectKey {
            kind,
            namespace,
            name,
        },
        defaulted,
    ))
}

/// What [`parse_manifests`] returns: the objects (key, JSON) and per-object problem messages.
pub type ParsedManifests = (Vec<(ObjectKey, Value)>, Vec<String>);

/// Parses one file's documents into the objects of `kinds` it defines.
///
/// `Err` (the whole file is skipped) only for YAML syntax errors; per-object problems (no name,
/// not an object) come back as messages beside the good objects.
pub fn parse_manifests(text: &str, kinds: &[Kind]) -> Result<ParsedManifests, String> {
    use serde::Deserialize;
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| format!("document {}: {e}", index + 1))?;
        if value.is_null() {
            continue;
        }
        let value =
            serde_json::to_value(value).map_err(|e| format!("document {}: {e}", index + 1))?;
        let items = match value.get("items").and_then(Value::as_array) {
            Some(items)
                if value
                    .get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.ends_with("List")) =>
            {
                items.clone()
            }
            _ => vec![value],
        };
        for mut object in items {
            let type_known = object
                .get("apiVersion")
                .and_then(Value::as_str)
                .zip(object.get("kind").and_then(Value::as_str))
                .and_then(|(a, k)| Kind::from_type(a, k));
            let Some(kind) = type_known else { continue };
            if !kinds.contains(&kind) {
                continue;
            }
            let Some((key, defaulted)) = object_key(&object, kinds) else {
                problems.push(format!(
                    "document {}: {} without metadata.name",
                    index + 1,
                    kind.name()
                ));
                continue;
            };
            if kind == Kind::Secret
                && object.get("type").and_then(Value::as_str) != Some(SECRET_TYPE_TLS)
            {
                continue;
            }
            if defaulted {
                object["metadata"]["namespace"] = Value::String("default".into());
            } else if !kind.namespaced()
                && let Some(m) = object.get_mut("metadata").and_then(Value::as_object_mut)
            {
                m.remove("namespace");
            }
            objects.push((key, object));
        }
    }
    Ok((objects, problems))
}

// === impl ManifestStatusWriter ===

/// Status and annotation writer of standalone mode: merges into the in-memory overlay and, with
/// `--state-dir`, writes the object's state file (status and annotations in one file, replaced
/// atomically).
struct ManifestStatusWriter {
    inner: Arc<Mutex<Inner>>,
}

impl StatusWriter for ManifestStatusWriter {
    fn patch_status(
        &self,
        key: ObjectKey,
        status: Value,
    ) -> BoxFuture<'_, Result<(), StatusError>> {
        let result = {
            let mut inner = self.inner.lock().expect("manifest source lock poisoned");
            let result = inner.patch_status(&key, &status);
            inner.flush_notify();
            result
        };
        Box::pin(async move { result })
    }
}

impl MetadataWriter for ManifestStatusWriter {
    fn patch_annotations(
        &self,
        key: ObjectKey,
        annotations: Annotations,
    ) -> BoxFuture<'_, Result<(), StatusError>> {
        let result = {
            let mut inner = self.inner.lock().expect("manifest source lock poisoned");
            let result = inner.patch_annotations(&key, &annotations);
            inner.flush_notify();
            result
        };
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests;

//! The object store: objects by key, the global `resourceVersion` counter, the event log that
//! watches replay from, and the broadcast of live changes.
//!
//! All methods are synchronous and run under the double's one mutex, so a watch can read the log
//! and subscribe to live changes atomically (no gap, no duplicate).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::catalog::{Catalog, ResourceType};
use crate::failure::Failure;
use crate::fields::{FieldOwners, Write};
use crate::selector::Filter;

/// Events kept for watches to resume from; older ones are dropped and a watch from before them
/// gets `410 Expired` (the API server's watch cache keeps a bounded window too).
const MAX_HISTORY: usize = 10_000;

/// Live changes buffered per watch before it is ended as too slow (the client resumes).
const BROADCAST_CAPACITY: usize = 4096;

/// Identity of a stored object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ObjectKey {
    pub(crate) api_version: String,
    pub(crate) kind: String,
    /// `""` for cluster-scoped objects.
    pub(crate) namespace: String,
    pub(crate) name: String,
}

/// A watch event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One committed write, as kept in the log and broadcast to watches.
#[derive(Debug)]
pub(crate) struct Change {
    pub(crate) resource_version: u64,
    pub(crate) api_version: String,
    pub(crate) kind: String,
    pub(crate) event_type: EventType,
    /// The object after the write (for `Deleted`, the last state with the deletion's version).
    pub(crate) object: Value,
    /// The object before a `Modified`, so a selector-filtered watch can turn the change into
    /// `ADDED`/`DELETED` when the object enters or leaves the selection.
    pub(crate) previous: Option<Value>,
}

pub(crate) struct Store {
    pub(crate) catalog: Catalog,
    objects: BTreeMap<ObjectKey, Value>,
    /// The last issued `resourceVersion` (global, like etcd's revision).
    resource_version: u64,
    /// Every change with `resource_version > history_floor`, oldest first.
    history: VecDeque<Arc<Change>>,
    /// A watch may resume from any version `>= history_floor`.
    history_floor: u64,
    uid_prefix: u32,
    next_uid: u64,
    changes: broadcast::Sender<Arc<Change>>,
    /// Field ownership of every stored object (server-side apply), dropped with the object.
    owners: BTreeMap<ObjectKey, FieldOwners>,
}

// === impl ObjectKey ===

impl ObjectKey {
    pub(crate) fn new(resource: &ResourceType, namespace: Option<&str>, name: &str) -> Self {
        Self {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
            namespace: if resource.namespaced {
                namespace.unwrap_or("default").to_string()
            } else {
                String::new()
            },
            name: name.to_string(),
        }
    }
}

// === impl Store ===

impl Default for Store {
    fn default() -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Self {
            catalog: Catalog::default(),
            objects: BTreeMap::new(),
            resource_version: 1,
            history: VecDeque::new(),
            history_floor: 1,
            uid_prefix: seed,
            next_uid: 1,
            changes: broadcast::channel(BROADCAST_CAPACITY).0,
            owners: BTreeMap::new(),
        }
    }
}

impl Store {
    pub(crate) fn resource_version(&self) -> u64 {
        self.resource_version
    }

    /// Resolves an object's `apiVersion`/`kind` and `metadata.name`/`namespace` to its type and key.
    pub(crate) fn identify(&self, object: &Value) -> Result<(ResourceType, ObjectKey), String> {
        let api_version = object["apiVersion"]
            .as_str()
            .ok_or("object has no apiVersion")?;
        let kind = object["kind"].as_str().ok_or("object has no kind")?;
        let resource = self
            .catalog
            .by_kind(api_version, kind)
            .ok_or_else(|| format!("unknown resource type {api_version} {kind}: add it to catalog::BUILTIN or register it"))?
            .clone();
        let name = object["metadata"]["name"]
            .as_str()
            .ok_or("object has no metadata.name")?;
        let key = ObjectKey::new(&resource, object["metadata"]["namespace"].as_str(), name);
        Ok((resource, key))
    }

    pub(crate) fn get(&self, key: &ObjectKey) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Objects of one type that pass `filter`, in key order (namespace, then name).
    pub(crate) fn list(&self, resource: &ResourceType, filter: &Filter) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|(key, _)| key.api_version == resource.api_version && key.kind == resource.kind)
            .map(|(_, object)| object)
            .filter(|object| filter.matches(object))
            .cloned()
            .collect()
    }

    /// Stores a new object (the caller checked `key` is free): sets `uid`, `creationTimestamp`,
    /// `generation: 1` and a new `resourceVersion`, records `write`'s manager as the owner of its
    /// fields, and emits `ADDED`.
    pub(crate) fn insert(&mut self, key: ObjectKey, mut object: Value, write: Write<'_>) -> Value {
        self.next_uid += 1;
        let uid = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            self.uid_prefix, self.next_uid
        );
        normalize_identity(&mut object, &key);
        let metadata = &mut object["metadata"];
        metadata["uid"] = json!(uid);
        metadata["creationTimestamp"] = json!(rfc3339_now());
        metadata["generation"] = json!(1);
        let mut owners = FieldOwners::default();
        owners.record(write, None, &object);
        self.owners.insert(key.clone(), owners);
        self.commit(key, object, None)
    }

    /// Replaces a stored object (the caller checked it exists). Keeps `uid` and
    /// `creationTimestamp`, bumps `generation` when anything outside `metadata` and `status`
    /// changed, records field ownership for `write` (see [`crate::fields`]), and emits `MODIFIED`
    /// — unless nothing changed, which (like the API server) returns the stored object without a
    /// new `resourceVersion` or event.
    pub(crate) fn replace(&mut self, key: ObjectKey, mut object: Value, write: Write<'_>) -> Value {
        let Some(old) = self.objects.get(&key).cloned() else {
            return self.insert(key, object, write);
        };
        normalize_identity(&mut object, &key);
        for field in ["uid", "creationTimestamp", "resourceVersion"] {
            match old["metadata"].get(field) {
                Some(value) => object["metadata"][field] = value.clone(),
                None => drop(
                    object["metadata"]
                        .as_object_mut()
                        .and_then(|m| m.remove(field)),
                ),
            }
        }
        let generation = old["metadata"]["generation"].as_u64().unwrap_or(1);
        let spec_changed =
            without_metadata_and_status(&old) != without_metadata_and_status(&object);
        object["metadata"]["generation"] = json!(if spec_changed {
            generation + 1
        } else {
            generation
        });
        self.owners
            .entry(key.clone())
            .or_default()
            .record(write, Some(&old), &object);
        if object == old {
            return old;
        }
        self.commit(key, object, Some(old))
    }

    /// Field ownership of a stored object (empty when absent).
    pub(crate) fn owners(&self, key: &ObjectKey) -> FieldOwners {
        self.owners.get(key).cloned().unwrap_or_default()
    }

    /// Removes an object, emitting `DELETED` with a new `resourceVersion`.
    pub(crate) fn remove(&mut self, key: &ObjectKey) -> Option<Value> {
        let mut object = self.objects.remove(key)?;
        self.owners.remove(key);
        self.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        self.publish(key, EventType::Deleted, object.clone(), None);
        Some(object)
    }

    fn commit(&mut self, key: ObjectKey, mut object: Value, previous: Option<Value>) -> Value {
        self.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        if key.kind == "CustomResourceDefinition" && key.api_version == "apiextensions.k8s.io/v1" {
            self.catalog.register_crd(&object);
        }
        let event_type = if previous.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.objects.insert(key.clone(), object.clone());
        self.publish(&key, event_type, object.clone(), previous);
        object
    }

    fn publish(
        &mut self,
        key: &ObjectKey,
        event_type: EventType,
        object: Value,
        previous: Option<Value>,
    ) {
        let change = Arc::new(Change {
            resource_version: self.resource_version,
            api_version: key.api_version.clone(),
            kind: key.kind.clone(),
            event_type,
            object,
            previous,
        });
        self.history.push_back(change.clone());
        while self.history.len() > MAX_HISTORY {
            if let Some(dropped) = self.history.pop_front() {
                self.history_floor = dropped.resource_version;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.changes.send(change);
    }

    /// Live changes from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    /// Logged changes after `resource_version`, or `410 Expired` when the log no longer reaches
    /// back that far.
    pub(crate) fn changes_since(&self, resource_version: u64) -> Result<Vec<Arc<Change>>, Failure> {
        if resource_version < self.history_floor {
            return Err(Failure::expired(resource_version, self.history_floor));
        }
        Ok(self
            .history
            .iter()
            .filter(|c| c.resource_version > resource_version)
            .cloned()
            .collect())
    }

    /// Forgets the event log, like an etcd compaction. The counter advances by one (no event) so
    /// that every version handed out so far is now too old to watch from, while a fresh list
    /// returns a version that can be watched.
    pub(crate) fn expire_history(&mut self) {
        self.resource_version += 1;
        self.history.clear();
        self.history_floor = self.resource_version;
    }
}

/// Makes `apiVersion`, `kind`, `metadata.name` and `metadata.namespace` agree with the key.
fn normalize_identity(object: &mut Value, key: &ObjectKey) {
    if !object.is_object() {
        *object = json!({});
    }
    object["apiVersion"] = json!(key.api_version);
    object["kind"] = json!(key.kind);
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    let metadata = &mut object["metadata"];
    metadata["name"] = json!(key.name);
    if key.namespace.is_empty() {
        drop(metadata.as_object_mut().and_then(|m| m.remove("namespace")));
    } else {
        metadata["namespace"] = json!(key.namespace);
    }
}

fn without_metadata_and_status(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    object
}

/// `YYYY-MM-DDTHH:MM:SSZ`, the format of `metav1.Time`.
pub(crate) fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

fn rfc3339(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Write<'static> = Write::Update(crate::fields::TEST_MANAGER);

    fn svc(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "ns"}, "spec": {"type": "ClusterIP"}})
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_599), "2025-12-31T23:59:59Z");
    }

    #[test]
    fn writes_bump_versions_and_log() {
        let mut store = Store::default();
        let (_, key) = store.identify(&svc("a")).expect("known type");
        let created = store.insert(key.clone(), svc("a"), T);
        assert_eq!(created["metadata"]["resourceVersion"], "2");
        assert_eq!(created["metadata"]["generation"], 1);

        // Unchanged replace: no new version, no event.
        assert_eq!(store.replace(key.clone(), svc("a"), T), created);

        let mut status_only = svc("a");
        status_only["status"] = json!({"loadBalancer": {}});
        let updated = store.replace(key.clone(), status_only, T);
        assert_eq!(
            (
                updated["metadata"]["resourceVersion"].as_str(),
                updated["metadata"]["generation"].as_u64()
            ),
            (Some("3"), Some(1))
        );
        assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);

        let mut spec_change = updated.clone();
        spec_change["spec"]["type"] = json!("LoadBalancer");
        assert_eq!(
            store.replace(key.clone(), spec_change, T)["metadata"]["generation"],
            2
        );

        let deleted = store.remove(&key).expect("exists");
        assert_eq!(deleted["metadata"]["resourceVersion"], "5");
        let types: Vec<_> = store
            .changes_since(2)
            .expect("retained")
            .iter()
            .map(|c| c.event_type)
            .collect();
        assert_eq!(
            types,
            [EventType::Modified, EventType::Modified, EventType::Deleted]
        );

        store.expire_history();
        assert_eq!(store.changes_since(5).expect_err("expired").code, 410);
        assert!(
            store
                .changes_since(6)
                .expect("current version is watchable")
                .is_empty()
        );
    }
}

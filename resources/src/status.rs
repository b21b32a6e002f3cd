//! Writing `status` and drawbridge's annotations: two traits, API implementations and recording
//! fakes (the standalone implementations live with the manifest source, which overlays them).
//!
//! Every status write is a JSON merge patch (RFC 7386) of the object's `status`, the same request
//! kubectl and controllers send as `application/merge-patch+json` to the `/status` subresource.
//! Lists (`status.loadBalancer.ingress`, `status.conditions`) are replaced whole by a merge patch,
//! so callers always send the complete list they want.
//!
//! Annotation writes ([`MetadataWriter`]) are merge patches of `metadata.annotations` on the object
//! itself: only the keys named are touched (`null` removes one), so annotations users or other
//! controllers set stay as they are.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::future::BoxFuture;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};

use crate::names::FIELD_MANAGER;
use crate::source::ObjectKey;

/// Why a status write failed. Callers retry on their next reconcile (the write is level-triggered:
/// the same desired status is computed again).
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The API server refused or could not be reached.
    #[error("status patch of {key} failed")]
    PatchStatusFailed {
        /// The object.
        key: ObjectKey,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The API server refused or could not be reached (annotation patch).
    #[error("annotation patch of {key} failed")]
    PatchMetadataFailed {
        /// The object.
        key: ObjectKey,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The state directory file could not be written.
    #[error("writing status of {key} to {path} failed")]
    StateFileWriteFailed {
        /// The object.
        key: ObjectKey,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Writes `status` of one object.
pub trait StatusWriter: Send + Sync {
    /// Merge-patches `status` (RFC 7386; `null` members delete) onto the status of `key`.
    fn patch_status(
        &self,
        key: ObjectKey,
        status: serde_json::Value,
    ) -> BoxFuture<'_, Result<(), StatusError>>;
}

/// Annotation key → value to set (`Some`) or remove (`None`).
pub type Annotations = BTreeMap<String, Option<String>>;

/// Writes annotations of one object (the keys a component owns, e.g.
/// `drawbridge.dev/announcing-node`).
pub trait MetadataWriter: Send + Sync {
    /// Merge-patches `metadata.annotations` of `key` (RFC 7386): each `Some` sets its key, each
    /// `None` removes it; keys not named stay untouched. Errors:
    /// [`StatusError::PatchMetadataFailed`] (API) or [`StatusError::StateFileWriteFailed`]
    /// (standalone). Retried by the caller's next pass (level-triggered).
    fn patch_annotations(
        &self,
        key: ObjectKey,
        annotations: Annotations,
    ) -> BoxFuture<'_, Result<(), StatusError>>;
}

fn api_for(client: &Client, key: &ObjectKey) -> Api<DynamicObject> {
    let (group, version) = match key.kind.api_version().split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", key.kind.api_version()),
    };
    let resource = ApiResource {
        group: group.to_string(),
        version: version.to_string(),
        api_version: key.kind.api_version().to_string(),
        kind: key.kind.name().to_string(),
        plural: key.kind.plural().to_string(),
    };
    match &key.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

// === impl KubeStatusWriter ===

/// Patches the `/status` subresource through the Kubernetes API.
pub struct KubeStatusWriter {
    client: Client,
}

impl KubeStatusWriter {
    /// A writer using `client`.
    pub fn new(client: Client) -> Self {
        KubeStatusWriter { client }
    }
}

impl StatusWriter for KubeStatusWriter {
    fn patch_status(
        &self,
        key: ObjectKey,
        status: serde_json::Value,
    ) -> BoxFuture<'_, Result<(), StatusError>> {
        Box::pin(async move {
            let api = api_for(&self.client, &key);
            let patch = Patch::Merge(serde_json::json!({ "status": status }));
            match api
                .patch_status(&key.name, &PatchParams::apply(FIELD_MANAGER), &patch)
                .await
            {
                Ok(_) => Ok(()),
                Err(source) => Err(StatusError::PatchStatusFailed { key, source }),
            }
        })
    }
}

// === impl RecordingStatusWriter ===

/// Test fake: records every patch in order and succeeds.
#[derive(Default)]
pub struct RecordingStatusWriter {
    patches: Mutex<Vec<(ObjectKey, serde_json::Value)>>,
}

impl RecordingStatusWriter {
    /// Every patch so far, oldest first.
    pub fn patches(&self) -> Vec<(ObjectKey, serde_json::Value)> {
        self.patches.lock().expect("lock poisoned").clone()
    }
}

impl StatusWriter for RecordingStatusWriter {
    fn patch_status(
        &self,
        key: ObjectKey,
        status: serde_json::Value,
    ) -> BoxFuture<'_, Result<(), StatusError>> {
        self.patches
            .lock()
            .expect("lock poisoned")
            .push((key, status));
        Box::pin(async { Ok(()) })
    }
}

// === impl KubeMetadataWriter ===

/// Patches `metadata.annotations` through the Kubernetes API (JSON merge patch, field manager
/// `drawbridge`).
pub struct KubeMetadataWriter {
    client: Client,
}

impl KubeMetadataWriter {
    /// A writer using `client`.
    pub fn new(client: Client) -> Self {
        KubeMetadataWriter { client }
    }
}

impl MetadataWriter for KubeMetadataWriter {
    fn patch_annotations(
        &self,
        key: ObjectKey,
        annotations: Annotations,
    ) -> BoxFuture<'_, Result<(), StatusError>> {
        Box::pin(async move {
            let api = api_for(&self.client, &key);
            let patch =
                Patch::Merge(serde_json::json!({ "metadata": { "annotations": annotations } }));
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..Default::default()
            };
            match api.patch(&key.name, &params, &patch).await {
                Ok(_) => Ok(()),
                Err(source) => Err(StatusError::PatchMetadataFailed { key, source }),
            }
        })
    }
}

// === impl RecordingMetadataWriter ===

/// Test fake: records every annotation patch in order and succeeds.
#[derive(Default)]
pub struct RecordingMetadataWriter {
    patches: Mutex<Vec<(ObjectKey, Annotations)>>,
}

impl RecordingMetadataWriter {
    /// Every patch so far, oldest first.
    pub fn patches(&self) -> Vec<(ObjectKey, Annotations)> {
        self.patches.lock().expect("lock poisoned").clone()
    }
}

impl MetadataWriter for RecordingMetadataWriter {
    fn patch_annotations(
        &self,
        key: ObjectKey,
        annotations: Annotations,
    ) -> BoxFuture<'_, Result<(), StatusError>> {
        self.patches
            .lock()
            .expect("lock poisoned")
            .push((key, annotations));
        Box::pin(async { Ok(()) })
    }
}

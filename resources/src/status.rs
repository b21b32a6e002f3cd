//! Writing `status`: one trait, an API implementation and a recording fake.
//!
//! Every write is a JSON merge patch (RFC 7386) of the object's `status`, the same request kubectl
//! and controllers send as `application/merge-patch+json` to the `/status` subresource. Lists
//! (`status.loadBalancer.ingress`, `status.conditions`) are replaced whole by a merge patch, so
//! callers always send the complete list they want.

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
            let api: Api<DynamicObject> = match &key.namespace {
                Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
                None => Api::all_with(self.client.clone(), &resource),
            };
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

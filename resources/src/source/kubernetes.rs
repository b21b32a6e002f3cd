//! The production implementation: kube-runtime watchers feeding reflector stores.
//!
//! One watcher per requested kind, all namespaces, with kube-runtime's default backoff; a watch that
//! ends or expires (`410 Gone`) is resumed or relisted by the watcher itself, and the relist resets
//! the store (stale objects drop). Secrets are watched with the field selector
//! `type=kubernetes.io/tls`, so the gateway never holds other Secrets in memory.

use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::{Kind, Source, Writers, stores};
use crate::events::KubeEventRecorder;
use crate::names::SECRET_TYPE_TLS;
use crate::status::KubeStatusWriter;

/// Starts one watcher task per kind on `client`. Never fails: API errors are retried with backoff
/// and logged (`warn`, naming the kind).
pub fn start(client: Client, kinds: &[Kind]) -> Source {
    let (resources, writers) = stores(kinds);
    let Writers {
        services,
        endpoint_slices,
        ingresses,
        ingress_classes,
        secrets,
        nodes,
        pools,
        l2_announcements,
        changes,
    } = writers;
    let changes = Arc::new(changes);
    let wanted = |k: Kind| resources.kinds().contains(&k);
    let config = watcher::Config::default;
    if wanted(Kind::Service) {
        spawn(
            Api::all(client.clone()),
            config(),
            services,
            changes.clone(),
        );
    }
    if wanted(Kind::EndpointSlice) {
        spawn(
            Api::all(client.clone()),
            config(),
            endpoint_slices,
            changes.clone(),
        );
    }
    if wanted(Kind::Ingress) {
        spawn(
            Api::all(client.clone()),
            config(),
            ingresses,
            changes.clone(),
        );
    }
    if wanted(Kind::IngressClass) {
        spawn(
            Api::all(client.clone()),
            config(),
            ingress_classes,
            changes.clone(),
        );
    }
    if wanted(Kind::Secret) {
        let tls_only = config().fields(&format!("type={SECRET_TYPE_TLS}"));
        spawn(Api::all(client.clone()), tls_only, secrets, changes.clone());
    }
    if wanted(Kind::Node) {
        spawn(Api::all(client.clone()), config(), nodes, changes.clone());
    }
    if wanted(Kind::IPAddressPool) {
        spawn(Api::all(client.clone()), config(), pools, changes.clone());
    }
    if wanted(Kind::L2Announcement) {
        spawn(
            Api::all(client.clone()),
            config(),
            l2_announcements,
            changes.clone(),
        );
    }
    // Writers of kinds nobody asked for are dropped here; their stores simply stay empty.
    Source {
        resources,
        status: Arc::new(KubeStatusWriter::new(client.clone())),
        metadata: Arc::new(crate::status::KubeMetadataWriter::new(client.clone())),
        events: Arc::new(KubeEventRecorder::new(client)),
        standalone: false,
    }
}

fn spawn<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    changes: Arc<watch::Sender<u64>>,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let kind = K::kind(&());
        let mut events = std::pin::pin!(watcher(api, config).default_backoff().reflect(writer));
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(_) => changes.send_modify(|g| *g = g.wrapping_add(1)),
                Err(error) => tracing::warn!(%error, %kind, "watch failed; retrying with backoff"),
            }
        }
    });
}

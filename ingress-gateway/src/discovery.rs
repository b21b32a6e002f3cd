//! The background task: recompute the model on every change, publish it, write Ingress status.
//!
//! ```text
//!   Resources::changed() tick ──┐  (or the periodic resync, which retries failed status writes)
//!                               ▼
//!   stores ─► config::translate ─► RouteTable ──────────────► ArcSwap<RouteTable>  ─► proxy
//!                          └─────► TLS bindings ─► CertStore ► ArcSwap<CertStore>  ─► CertResolver
//!                          └─────► served set ─► status_patches (compare) ─► StatusWriter (only diffs)
//! ```
//!
//! Level-triggered: each tick recomputes everything from the stores and never acts on a delta, so
//! a missed or repeated tick is harmless. Publishing swaps an `Arc`; requests in flight keep the
//! table they loaded and finish normally. Status is written only where observed ≠ desired, so a
//! resync costs no API writes.
//!
//! ExternalName Services: their `spec.externalName` is resolved (system resolver) before a pass
//! when the set of names changed or the last lookup is older than the refresh period
//! ([`EXTERNAL_NAME_REFRESH`] unless set by [`Discovery::with_external_name_refresh`]); while any
//! name is resolved the task wakes at least once per period, so a changed answer moves traffic
//! within one period even when nothing else changes. A failed lookup keeps the last good addresses.
//!
//! Each pass also reports: a `RuleConflict` Warning Event on an Ingress whose rule lost to an
//! identical rule of an older Ingress, a `Rejected` Warning Event on every skipped Ingress, a
//! `CertificateInvalid` Warning Event on an unusable, missing or expired certificate's Secret and
//! on the Ingresses naming it (each published once, again only when it changes), the config-sync
//! and certificate-expiry metrics, and readiness after the first published table.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use drawbridge_resources::events::{Event, EventRecorder, EventSet};
use drawbridge_resources::observe::{Health, unix_now};
use drawbridge_resources::source::{Kind, ObjectKey, Resources};
use drawbridge_resources::status::StatusWriter;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use serde::Serialize;
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::config::{self, ObjectRef};
use crate::metrics::Metrics;
use crate::routes::RouteTable;
use crate::tls::{self, CertStore};
use crate::upstream::EndpointRegistry;

/// Event reason: an Ingress of our class was not served.
pub const REASON_REJECTED: &str = "Rejected";
/// Event reason: a `spec.tls` certificate is missing, unusable or expired.
pub const REASON_CERTIFICATE_INVALID: &str = "CertificateInvalid";
/// Event reason: a rule is not served because an older Ingress has the same host, path and type.
pub const REASON_RULE_CONFLICT: &str = "RuleConflict";

/// How often ExternalName Services' DNS names are looked up again by default (ingress-nginx
/// re-resolves on every sync; 30 s bounds both staleness and resolver load). The binary's
/// `--external-name-refresh` sets it.
pub const EXTERNAL_NAME_REFRESH: Duration = Duration::from_secs(30);
/// Longest wait for one ExternalName lookup.
pub const EXTERNAL_NAME_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the discovery task reports besides logs.
pub struct Observers {
    /// Metric handles (shared with the proxy).
    pub metrics: Arc<Metrics>,
    /// Where Events go.
    pub events: Arc<dyn EventRecorder>,
    /// Ready once the first table is published; not alive once the task ends.
    pub health: Health,
}

/// How often the model is recomputed even without a change: retries status writes that failed.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(30);

/// The discovery task's errors. None is fatal: each is logged and retried on the next tick.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing an Ingress's status failed (retried at the next tick or resync).
    #[error("status write failed")]
    PatchStatusFailed(#[source] drawbridge_resources::status::StatusError),
}

/// One `status.loadBalancer.ingress[]` entry (the fields drawbridge copies from the Service).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct LbAddress {
    /// IP address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// DNS name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// The state the proxy and the TLS listener read. Written only by [`Discovery`].
#[derive(Clone, Default)]
pub struct Published {
    /// Current routes; swapped whole.
    pub routes: Arc<ArcSwap<RouteTable>>,
    /// Current certificates by SNI; swapped whole.
    pub certs: Arc<ArcSwap<CertStore>>,
}

/// The discovery task's state.
pub struct Discovery {
    resources: Resources,
    status: Arc<dyn StatusWriter>,
    /// `--publish-service`: whose `status.loadBalancer` the served Ingresses get.
    publish_service: ObjectRef,
    published: Published,
    /// Problems already warned about (so a tick does not repeat them); rebuilt every tick.
    reported: HashSet<String>,
    /// Every address this process wrote into an Ingress status, so it can recognise (and clear)
    /// its own addresses even after the publish Service lost them.
    written: BTreeSet<LbAddress>,
    observe: Observers,
    /// The Events of the last `publish` (the complete current list; [`EventSet`] sends the new ones).
    events: Vec<Event>,
    published_events: EventSet,
    /// Secrets with a `certificate_expiry` series, to drop series of Secrets no longer loaded.
    expiry_series: BTreeSet<String>,
    /// Endpoint states (in-flight counts, passive health) shared by successive tables.
    registry: EndpointRegistry,
    /// ExternalName → addresses, from the last lookups.
    external_names: HashMap<String, Vec<IpAddr>>,
    /// When the names in `external_names` were last looked up.
    resolved_at: Option<Instant>,
    /// How old a lookup may get before the names are looked up again.
    external_name_refresh: Duration,
    /// The incremental translation (unchanged Ingresses and backends are reused between ticks).
    translator: config::Translator,
    /// `--default-tls-secret`: the certificate for unknown SNI (else the generated one).
    default_tls_secret: Option<ObjectRef>,
}

impl Discovery {
    /// A task reading `resources`, writing through `status`, publishing into `published`.
    pub fn new(
        resources: Resources,
        status: Arc<dyn StatusWriter>,
        publish_service: ObjectRef,
        published: Published,
        observe: Observers,
    ) -> Self {
        Discovery {
            resources,
            status,
            publish_service,
            published,
            reported: HashSet::new(),
            written: BTreeSet::new(),
            observe,
            events: Vec::new(),
            published_events: EventSet::default(),
            expiry_series: BTreeSet::new(),
            registry: EndpointRegistry::default(),
            external_names: HashMap::new(),
            resolved_at: None,
            external_name_refresh: EXTERNAL_NAME_REFRESH,
            translator: config::Translator::default(),
            default_tls_secret: None,
        }
    }

    /// The same task loading `secret` (`--default-tls-secret NS/NAME`) as the certificate for
    /// unknown SNI; while it does not load, the generated default certificate answers.
    pub fn with_default_tls_secret(mut self, secret: Option<ObjectRef>) -> Self {
        self.default_tls_secret = secret;
        self
    }

    /// The same task looking ExternalName Services' names up again every `period` (default
    /// [`EXTERNAL_NAME_REFRESH`]; `--external-name-refresh`). Zero is taken as one second.
    pub fn with_external_name_refresh(mut self, period: Duration) -> Self {
        self.external_name_refresh = period.max(Duration::from_secs(1));
        self
    }

    /// Runs until the source shuts down: reconcile, then wait for a change or the resync timer
    /// (the ExternalName refresh period instead, when shorter and some name is resolved).
    pub async fn run(mut self) {
        let _alive = self.observe.health.liveness_guard("discovery");
        loop {
            self.reconcile().await;
            let wait = if self.external_names.is_empty() {
                RESYNC_INTERVAL
            } else {
                RESYNC_INTERVAL.min(self.external_name_refresh)
            };
            tokio::select! {
                alive = self.resources.changed() => if !alive {
                    info!("resource source stopped; discovery ends");
                    return;
                },
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Looks up ExternalName Services' names when the set changed or is older than the refresh
    /// period. A failed lookup keeps the name's last addresses.
    async fn resolve_external_names(&mut self) {
        let names = config::external_names(&self.resources.services.state());
        let fresh = self
            .resolved_at
            .is_some_and(|t| t.elapsed() < self.external_name_refresh);
        if names
            .iter()
            .eq(self.external_names.keys().collect::<BTreeSet<_>>())
            && fresh
        {
            return;
        }
        let mut resolved = HashMap::new();
        for name in names {
            let lookup = tokio::time::timeout(
                EXTERNAL_NAME_TIMEOUT,
                tokio::net::lookup_host((name.clone(), 0)),
            )
            .await;
            let addrs = match lookup {
                Ok(Ok(addrs)) => {
                    let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                    ips.sort();
                    ips.dedup();
                    ips
                }
                Ok(Err(error)) => {
                    warn!(%error, name, "ExternalName lookup failed; keeping the last addresses");
                    self.external_names.get(&name).cloned().unwrap_or_default()
                }
                Err(_) => {
                    warn!(
                        name,
                        "ExternalName lookup timed out; keeping the last addresses"
                    );
                    self.external_names.get(&name).cloned().unwrap_or_default()
                }
            };
            resolved.insert(name, addrs);
        }
        self.external_names = resolved;
        self.resolved_at = Some(Instant::now());
    }

    /// One full pass: publish routes and certificates, then write the status differences.
    pub async fn reconcile(&mut self) {
        self.resolve_external_names().await;
        let served = self.publish();
        let events = std::mem::take(&mut self.events);
        self.published_events
            .publish(self.observe.events.as_ref(), events)
            .await;
        let ingresses = self.resources.ingresses.state();
        let service = self.resources.services.state().into_iter().find(|s| {
            s.metadata.namespace.as_deref() == Some(&self.publish_service.0)
                && s.metadata.name.as_deref() == Some(&self.publish_service.1)
        });
        let desired = service
            .as_deref()
            .map(publish_addresses)
            .unwrap_or_default();
        let ours: BTreeSet<LbAddress> = desired
            .iter()
            .cloned()
            .chain(self.written.iter().cloned())
            .collect();
        for (key, patch) in status_patches(&ingresses, &served, &desired, &ours) {
            debug!(object = %key, %patch, "writing Ingress status");
            match self
                .status
                .patch_status(key.clone(), patch)
                .await
                .map_err(Error::PatchStatusFailed)
            {
                Ok(()) => self.written.extend(desired.iter().cloned()),
                Err(error) => {
                    warn!(%error, object = %key, "Ingress status not written; will retry")
                }
            }
        }
    }

    /// Recomputes the model and swaps it in. Returns the served Ingresses.
    pub fn publish(&mut self) -> BTreeSet<ObjectRef> {
        let r = &self.resources;
        let (ingresses, classes) = (r.ingresses.state(), r.ingress_classes.state());
        let (services, slices, secrets) = (
            r.services.state(),
            r.endpoint_slices.state(),
            r.secrets.state(),
        );
        let model = self.translator.translate(config::Input {
            ingresses: &ingresses,
            ingress_classes: &classes,
            services: &services,
            endpoint_slices: &slices,
            endpoint_registry: Some(&self.registry),
            external_names: Some(&self.external_names),
        });
        // An unusable Secret keeps the certificate it has in the store in force (last good).
        let (certs, cert_errors) = CertStore::rebuild(
            &model.tls,
            &secrets,
            self.default_tls_secret.as_ref(),
            &self.published.certs.load(),
        );

        let mut reported = HashSet::new();
        for error in &model.problems {
            let text = error.to_string();
            if !self.reported.contains(&text) {
                warn!(%error, "Ingress skipped");
            }
            reported.insert(text);
        }
        for error in &cert_errors {
            let text = error.to_string();
            if !self.reported.contains(&text) {
                warn!(%error, consequence = error.consequence(), "certificate not loaded");
            }
            reported.insert(text);
        }
        for conflict in &model.conflicts {
            let text = conflict.to_string();
            if !self.reported.contains(&text) {
                warn!(%conflict, "Ingress rule conflict; the oldest Ingress wins");
            }
            reported.insert(text);
        }
        self.reported = reported;

        info!(
            served = model.served.len(),
            rules = model.routes.len(),
            certificates = certs.len(),
            skipped = model.problems.len(),
            "configuration published"
        );
        self.events = problem_events(&ingresses, &secrets, &model.problems, &cert_errors);
        self.events
            .extend(conflict_events(&ingresses, &model.conflicts));
        let now = unix_now();
        let mut expiry_series = BTreeSet::new();
        for ((namespace, name), key) in certs.secrets() {
            let Some(not_after) = tls::not_after(key) else {
                continue;
            };
            let secret = format!("{namespace}/{name}");
            self.observe
                .metrics
                .certificate_expiry
                .get_or_create(&[("secret", secret.clone())])
                .set(not_after);
            expiry_series.insert(secret);
            if (not_after as f64) < now {
                let expired = k8s_openapi::jiff::Timestamp::from_second(not_after)
                    .map_or_else(|_| not_after.to_string(), |t| t.to_string());
                let note = format!("Secret {namespace}/{name}: certificate expired at {expired}");
                self.events.extend(certificate_events(
                    &ingresses, &secrets, namespace, name, true, &note,
                ));
            }
        }
        for gone in self.expiry_series.difference(&expiry_series) {
            self.observe
                .metrics
                .certificate_expiry
                .remove(&[("secret", gone.clone())]);
        }
        self.expiry_series = expiry_series;

        self.published.routes.store(Arc::new(model.routes));
        // After the swap: states only the old table referenced can go.
        self.registry.prune();
        self.published.certs.store(Arc::new(certs));
        self.observe.metrics.config_syncs.inc();
        self.observe.metrics.last_config_sync.set(now);
        self.observe.health.set_ready();
        model.served
    }
}

/// The Warning Events for this pass's problems (pure): `Rejected` on each skipped Ingress,
/// `CertificateInvalid` on each unusable Secret and on the Ingresses naming a missing or unusable
/// Secret.
pub fn problem_events(
    ingresses: &[Arc<Ingress>],
    secrets: &[Arc<Secret>],
    problems: &[config::Error],
    cert_errors: &[tls::Error],
) -> Vec<Event> {
    // Built only when needed: with nothing to report it would be 10,000 inserts per tick.
    let uids: HashMap<(&str, &str), &str> = ingresses
        .iter()
        .take(if problems.is_empty() { 0 } else { usize::MAX })
        .filter_map(|i| {
            let m = &i.metadata;
            Some((
                (m.namespace.as_deref()?, m.name.as_deref()?),
                m.uid.as_deref()?,
            ))
        })
        .collect();
    let mut events = Vec::new();
    for problem in problems {
        let Some((namespace, name)) = problem.ingress().split_once('/') else {
            continue;
        };
        let key = ObjectKey::namespaced(Kind::Ingress, namespace, name);
        let uid = uids.get(&(namespace, name)).map(|u| u.to_string());
        events.push(
            Event::warning(key, REASON_REJECTED, "Translate", problem.to_string()).with_uid(uid),
        );
    }
    for error in cert_errors {
        let (namespace, name, on_secret) = match error {
            tls::Error::SecretNotFound { namespace, name } => (namespace, name, false),
            tls::Error::InvalidSecret {
                namespace, name, ..
            } => (namespace, name, true),
            _ => continue,
        };
        let note = format!("{error}; {}", error.consequence());
        events.extend(certificate_events(
            ingresses, secrets, namespace, name, on_secret, &note,
        ));
    }
    events
}

/// `RuleConflict` Warning Events (pure): one on each Ingress whose rule lost, naming the winner.
pub fn conflict_events(ingresses: &[Arc<Ingress>], conflicts: &[config::Conflict]) -> Vec<Event> {
    conflicts
        .iter()
        .map(|c| {
            let (namespace, name) = &c.loser;
            let uid = ingresses
                .iter()
                .find(|i| {
                    i.metadata.namespace.as_ref() == Some(namespace)
                        && i.metadata.name.as_ref() == Some(name)
                })
                .and_then(|i| i.metadata.uid.clone());
            let key = ObjectKey::namespaced(Kind::Ingress, namespace, name);
            Event::warning(key, REASON_RULE_CONFLICT, "Translate", c.to_string()).with_uid(uid)
        })
        .collect()
}

/// `CertificateInvalid` on the Secret (when `on_secret`) and on every Ingress naming it in `spec.tls`.
fn certificate_events(
    ingresses: &[Arc<Ingress>],
    secrets: &[Arc<Secret>],
    namespace: &str,
    name: &str,
    on_secret: bool,
    note: &str,
) -> Vec<Event> {
    let mut events = Vec::new();
    if on_secret {
        let uid = secrets
            .iter()
            .find(|s| {
                s.metadata.namespace.as_deref() == Some(namespace)
                    && s.metadata.name.as_deref() == Some(name)
            })
            .and_then(|s| s.metadata.uid.clone());
        let key = ObjectKey::namespaced(Kind::Secret, namespace, name);
        events.push(
            Event::warning(key, REASON_CERTIFICATE_INVALID, "LoadCertificate", note).with_uid(uid),
        );
    }
    for ingress in ingresses {
        let m = &ingress.metadata;
        let names_it = m.namespace.as_deref() == Some(namespace)
            && ingress
                .spec
                .as_ref()
                .and_then(|s| s.tls.as_ref())
                .is_some_and(|tls| tls.iter().any(|t| t.secret_name.as_deref() == Some(name)));
        if let (true, Some(ingress_name)) = (names_it, m.name.as_deref()) {
            let key = ObjectKey::namespaced(Kind::Ingress, namespace, ingress_name);
            events.push(
                Event::warning(key, REASON_CERTIFICATE_INVALID, "LoadCertificate", note)
                    .with_uid(m.uid.clone()),
            );
        }
    }
    events
}

/// `status.loadBalancer.ingress` of the publish Service, as Ingress status entries.
pub fn publish_addresses(service: &Service) -> Vec<LbAddress> {
    service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter(|i| i.ip.is_some() || i.hostname.is_some())
        .map(|i| LbAddress {
            ip: i.ip.clone(),
            hostname: i.hostname.clone(),
        })
        .collect()
}

fn observed_addresses(ingress: &Ingress) -> Vec<LbAddress> {
    ingress
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .map(|i| LbAddress {
            ip: i.ip.clone(),
            hostname: i.hostname.clone(),
        })
        .collect()
}

/// The status merge patches to send (pure): served Ingresses whose `status.loadBalancer.ingress`
/// differs from `desired` get `desired`; Ingresses not served that still carry one of `ours` are
/// cleared. Everything else: nothing.
pub fn status_patches(
    ingresses: &[Arc<Ingress>],
    served: &BTreeSet<ObjectRef>,
    desired: &[LbAddress],
    ours: &BTreeSet<LbAddress>,
) -> Vec<(ObjectKey, Value)> {
    let mut out = Vec::new();
    for ingress in ingresses {
        let (Some(ns), Some(name)) = (
            ingress.metadata.namespace.as_ref(),
            ingress.metadata.name.as_ref(),
        ) else {
            continue;
        };
        let observed = observed_addresses(ingress);
        if observed.is_empty() && desired.is_empty() {
            // Served or not, nothing to write (the common case without a publish Service, and
            // 10,000 key copies and tree lookups saved per tick).
            continue;
        }
        let key = (ns.clone(), name.clone());
        let patch = if served.contains(&key) {
            if observed == desired {
                continue;
            }
            // An empty list is removed rather than written as `[]`: one spelling of "none".
            let list = if desired.is_empty() {
                Value::Null
            } else {
                json!(desired)
            };
            json!({"loadBalancer": {"ingress": list}})
        } else if observed.iter().any(|a| ours.contains(a)) {
            json!({"loadBalancer": {"ingress": null}})
        } else {
            continue;
        };
        out.push((ObjectKey::namespaced(Kind::Ingress, ns, name), patch));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress_with_status(ns: &str, name: &str, ips: &[&str]) -> Arc<Ingress> {
        let list: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": ns, "name": name},
                "status": {"loadBalancer": {"ingress": list}},
            }))
            .unwrap(),
        )
    }

    fn ip(a: &str) -> LbAddress {
        LbAddress {
            ip: Some(a.into()),
            hostname: None,
        }
    }

    fn served(names: &[&str]) -> BTreeSet<ObjectRef> {
        names
            .iter()
            .map(|n| ("ns".to_string(), n.to_string()))
            .collect()
    }

    #[test]
    fn status_is_written_only_where_it_differs() {
        let ingresses = vec![
            ingress_with_status("ns", "fresh", &[]),
            ingress_with_status("ns", "current", &["192.0.2.1"]),
            ingress_with_status("ns", "stale", &["192.0.2.9"]),
            ingress_with_status("ns", "was-ours", &["192.0.2.1"]),
            ingress_with_status("ns", "foreign", &["198.51.100.7"]),
            ingress_with_status("ns", "foreign-empty", &[]),
        ];
        let desired = vec![ip("192.0.2.1")];
        let ours: BTreeSet<_> = desired.iter().cloned().collect();
        let patches = status_patches(
            &ingresses,
            &served(&["fresh", "current", "stale"]),
            &desired,
            &ours,
        );
        let got: Vec<(String, Value)> = patches.into_iter().map(|(k, v)| (k.name, v)).collect();
        assert_eq!(
            got,
            vec![
                (
                    "fresh".into(),
                    json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}})
                ),
                (
                    "stale".into(),
                    json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}})
                ),
                (
                    "was-ours".into(),
                    json!({"loadBalancer": {"ingress": null}})
                ),
            ]
        );
    }

    #[test]
    fn no_publish_address_clears_served_status_once() {
        let ingresses = vec![
            ingress_with_status("ns", "a", &["192.0.2.1"]),
            ingress_with_status("ns", "b", &[]),
        ];
        let ours = BTreeSet::from([ip("192.0.2.1")]);
        let patches = status_patches(&ingresses, &served(&["a", "b"]), &[], &ours);
        assert_eq!(patches.len(), 1);
        assert_eq!(patches[0].1, json!({"loadBalancer": {"ingress": null}}));
    }
}

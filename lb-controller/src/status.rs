//! Pure: an allocation [`Outcome`] + the Service as observed → the status merge patch, or nothing.
//!
//! Compute, compare, then write: `desired_patch` returns `None` when the Service already shows the
//! outcome, so a resync costs no API writes.
//!
//! What a Service shows (Kubernetes `ServiceStatus`):
//! - `status.loadBalancer.ingress: [{ip, ipMode: VIP}]`, one entry per family in the Service's
//!   family order (KEP-1860 `ipMode`; VIP = nodes deliver
//!   the traffic to the IP themselves);
//! - condition `drawbridge.dev/AddressAllocated`: `True` (reason `Allocated`) or `False` with the
//!   [`FailureReason`](crate::allocate::FailureReason); `lastTransitionTime` changes only when the
//!   condition's status flips. Other controllers' conditions are carried over untouched.
//!
//! Also the edge that writes the L2 announcement annotations through a generic
//! [`MetadataWriter`] ([`MetadataAnnotationWriter`]; standalone mode).

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{Value, json};

use std::sync::Arc;

use drawbridge_resources::status::{Annotations, MetadataWriter};
use drawbridge_resources::{Kind, ObjectKey};
use futures::future::BoxFuture;

use crate::allocate::{Outcome, ServiceKey, describe};
use crate::announce::{
    ANNOTATION_ANNOUNCING_CANDIDATES, ANNOTATION_ANNOUNCING_INTERFACES, ANNOTATION_ANNOUNCING_NODE,
    AnnotationWriter, Announcement, Error,
};

/// Condition type lb-controller owns on Services.
pub const CONDITION_ADDRESS_ALLOCATED: &str = "drawbridge.dev/AddressAllocated";

/// The merge patch for `status` that makes `svc` show `outcome`, or `None` if it already does.
/// `now` stamps `lastTransitionTime` when the condition's status changes.
pub fn desired_patch(svc: &Service, outcome: &Outcome, now: &Time) -> Option<Value> {
    let status = svc.status.clone().unwrap_or_default();
    let current_ips: Vec<String> = status
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ingress| ingress.iter().filter_map(|i| i.ip.clone()).collect())
        .unwrap_or_default();
    let current_modes_vip = status
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.ingress.as_ref())
        .is_none_or(|ingress| ingress.iter().all(|i| i.ip_mode.as_deref() == Some("VIP")));
    let conditions = status.conditions.unwrap_or_default();
    let ours = conditions
        .iter()
        .find(|c| c.type_ == CONDITION_ADDRESS_ALLOCATED);
    let mut others: Vec<Condition> = conditions
        .iter()
        .filter(|c| c.type_ != CONDITION_ADDRESS_ALLOCATED)
        .cloned()
        .collect();

    let (ips, condition) = match outcome {
        Outcome::Allocated { ips } => (
            ips.iter().map(|a| a.ip.to_string()).collect(),
            Some(("True", "Allocated", describe(ips))),
        ),
        Outcome::Failed { reason, message } => {
            (vec![], Some(("False", reason.as_str(), message.clone())))
        }
        Outcome::Released => (vec![], None),
    };

    let condition_same = match (&condition, ours) {
        (None, None) => true,
        (Some((s, r, m)), Some(c)) => c.status == *s && c.reason == *r && c.message == *m,
        _ => false,
    };
    if ips == current_ips && current_modes_vip && condition_same {
        return None;
    }

    if let Some((s, r, m)) = condition {
        let transition = match ours {
            Some(c) if c.status == s => c.last_transition_time.clone(),
            _ => now.clone(),
        };
        others.push(Condition {
            type_: CONDITION_ADDRESS_ALLOCATED.to_string(),
            status: s.to_string(),
            reason: r.to_string(),
            message: m,
            last_transition_time: transition,
            observed_generation: svc.metadata.generation,
        });
    }
    let ingress: Value = if ips.is_empty() {
        Value::Null
    } else {
        ips.iter()
            .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
            .collect()
    };
    let conditions = if others.is_empty() {
        Value::Null
    } else {
        json!(others)
    };
    Some(json!({ "loadBalancer": { "ingress": ingress }, "conditions": conditions }))
}

// === impl MetadataAnnotationWriter ===

/// The announcement writer ([`AnnotationWriter`]) on top of any [`MetadataWriter`]: each call is
/// one merge patch of `metadata.annotations` naming exactly the keys the election owns (today
/// `drawbridge.dev/announcing-node`, `drawbridge.dev/announcing-candidates` and
/// `drawbridge.dev/announcing-interfaces`; `None` removes).
/// In standalone mode the [`MetadataWriter`] is the manifest source's, so the annotation lands in
/// the state directory (`<state-dir>/services/<ns>/<name>.yaml`, `metadata.annotations`) where
/// every process reading the same manifest and state directories sees it.
pub struct MetadataAnnotationWriter {
    writer: Arc<dyn MetadataWriter>,
}

impl MetadataAnnotationWriter {
    /// Writes through `writer`.
    pub fn new(writer: Arc<dyn MetadataWriter>) -> Self {
        MetadataAnnotationWriter { writer }
    }

    fn patch(
        &self,
        key: &ServiceKey,
        annotations: Annotations,
    ) -> BoxFuture<'_, Result<(), Error>> {
        let object = ObjectKey::namespaced(Kind::Service, &key.0, &key.1);
        Box::pin(async move {
            self.writer
                .patch_annotations(object, annotations)
                .await
                .map_err(Error::AnnotationWriteFailed)
        })
    }
}

impl AnnotationWriter for MetadataAnnotationWriter {
    fn set_announcing_node(
        &self,
        key: &ServiceKey,
        value: Option<&str>,
    ) -> BoxFuture<'_, Result<(), Error>> {
        let annotations = [(
            ANNOTATION_ANNOUNCING_NODE.to_string(),
            value.map(str::to_string),
        )]
        .into();
        self.patch(key, annotations)
    }

    /// All three annotations in one patch (one state-file write): a reader never sees a new
    /// announcer with an old candidate list or old interfaces.
    fn set_announcement(
        &self,
        key: &ServiceKey,
        announcement: Announcement<'_>,
    ) -> BoxFuture<'_, Result<(), Error>> {
        let annotations = [
            (
                ANNOTATION_ANNOUNCING_NODE.to_string(),
                announcement.node.map(str::to_string),
            ),
            (
                ANNOTATION_ANNOUNCING_CANDIDATES.to_string(),
                announcement.candidates.map(str::to_string),
            ),
            (
                ANNOTATION_ANNOUNCING_INTERFACES.to_string(),
                announcement.interfaces.map(str::to_string),
            ),
        ]
        .into();
        self.patch(key, annotations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocate::{Assignment, FailureReason};

    fn assignment(ip: &str, pool: &str) -> Assignment {
        Assignment {
            ip: ip.parse().expect("ip"),
            pool: pool.into(),
        }
    }

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).expect("time"))
    }

    fn service(status: Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "default"}, "status": status}),
        )
        .expect("service")
    }

    /// Applies a merge patch the way the API server does, for round-trip checks.
    fn patched(svc: &Service, patch: &Value) -> Service {
        let mut value = serde_json::to_value(svc).expect("json");
        let mut status = value.get("status").cloned().unwrap_or(json!({}));
        json_patch::merge(&mut status, patch);
        value["status"] = status;
        serde_json::from_value(value).expect("service")
    }

    #[test]
    fn writes_address_and_condition_once() {
        let allocated = Outcome::Allocated {
            ips: vec![assignment("203.0.113.1", "lab")],
        };
        let svc = service(json!({}));
        let patch = desired_patch(&svc, &allocated, &now()).expect("a patch");
        assert_eq!(
            patch["loadBalancer"]["ingress"],
            json!([{"ip": "203.0.113.1", "ipMode": "VIP"}])
        );
        assert_eq!(patch["conditions"][0]["type"], CONDITION_ADDRESS_ALLOCATED);
        assert_eq!(patch["conditions"][0]["status"], "True");
        let svc = patched(&svc, &patch);
        assert_eq!(
            desired_patch(&svc, &allocated, &now()),
            None,
            "second pass writes nothing"
        );
    }

    #[test]
    fn failure_clears_address_and_keeps_other_conditions() {
        let svc = service(json!({
            "loadBalancer": {"ingress": [{"ip": "203.0.113.1", "ipMode": "VIP"}]},
            "conditions": [{"type": "example.com/Other", "status": "True", "reason": "X", "message": "",
                            "lastTransitionTime": "2020-01-01T00:00:00Z"}]
        }));
        let failed = Outcome::Failed {
            reason: FailureReason::PoolExhausted,
            message: "full".into(),
        };
        let patch = desired_patch(&svc, &failed, &now()).expect("a patch");
        assert_eq!(patch["loadBalancer"]["ingress"], Value::Null);
        let types: Vec<&str> = patch["conditions"]
            .as_array()
            .expect("list")
            .iter()
            .map(|c| c["type"].as_str().expect("type"))
            .collect();
        assert_eq!(types, ["example.com/Other", CONDITION_ADDRESS_ALLOCATED]);
        assert_eq!(patch["conditions"][1]["reason"], "PoolExhausted");
        let svc = patched(&svc, &patch);
        assert_eq!(desired_patch(&svc, &failed, &now()), None);
        let released = desired_patch(&svc, &Outcome::Released, &now()).expect("a patch");
        assert_eq!(released["conditions"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn dual_stack_lists_every_family_in_order() {
        let allocated = Outcome::Allocated {
            ips: vec![
                assignment("2001:db8::1", "lab6"),
                assignment("203.0.113.1", "lab"),
            ],
        };
        let svc =
            service(json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.1", "ipMode": "VIP"}]}}));
        let patch = desired_patch(&svc, &allocated, &now()).expect("a patch");
        assert_eq!(
            patch["loadBalancer"]["ingress"],
            json!([{"ip": "2001:db8::1", "ipMode": "VIP"}, {"ip": "203.0.113.1", "ipMode": "VIP"}])
        );
        assert_eq!(
            patch["conditions"][0]["message"],
            "2001:db8::1 from IPAddressPool lab6, 203.0.113.1 from IPAddressPool lab"
        );
        let svc = patched(&svc, &patch);
        assert_eq!(desired_patch(&svc, &allocated, &now()), None);
    }
}

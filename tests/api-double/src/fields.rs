//! Field ownership for server-side apply: which field manager owns which field of an object, and
//! the apply conflicts that follow from it (a simplified `metadata.managedFields`).
//!
//! The rules kept from the API server (<https://kubernetes.io/docs/reference/using-api/server-side-apply/>):
//!
//! - Every write records its field manager (`?fieldManager=`, else the `User-Agent` up to its
//!   first `/`, as the API server defaults it). An update, patch or create makes the writer the
//!   owner of every field it changed and takes those fields away from every other manager. A field
//!   that disappears is owned by nobody.
//! - An apply makes the applier an owner of every field in its body. It **conflicts** (409,
//!   reason `Conflict`) when it would change the value of a field that another manager owns,
//!   unless `?force=true`, which takes the field over. Applying the value a field already has
//!   shares its ownership.
//!
//! Leader election leans on the conflict: two replicas that both find a Lease free both apply
//! `spec.holderIdentity`, and only the first may win (kube-lease-manager's lock).
//!
//! Simplifications: a field is a leaf of the JSON object (a scalar, a list, or an empty map), so
//! lists are atomic (no `x-kubernetes-list-map-keys` merge); only `metadata.labels` and
//! `metadata.annotations` of `metadata` are tracked; an applier that drops a field from its next
//! apply keeps owning it (the double does not remove omitted fields, see the crate docs); the
//! owners are not shown in `metadata.managedFields`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// A field: the keys from the object's root to a leaf, e.g. `["spec", "holderIdentity"]`.
pub(crate) type FieldPath = Vec<String>;

/// How an object was written, and by whom.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Write<'a> {
    /// Create, update, or a JSON / merge / strategic-merge patch by this field manager.
    Update(&'a str),
    /// Server-side apply by `manager` of the apply body `applied`.
    Apply {
        manager: &'a str,
        applied: &'a Value,
    },
}

/// The field manager of test code writing through `ApiDouble::create` / `update`.
pub(crate) const TEST_MANAGER: &str = "api-double-test";

/// Owned fields of one object, by field manager.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FieldOwners(BTreeMap<String, BTreeSet<FieldPath>>);

/// A field another manager owns that an apply would change: `(manager, field)`.
pub(crate) type Conflict = (String, FieldPath);

impl Write<'_> {
    fn manager(&self) -> &str {
        match self {
            Write::Update(manager) | Write::Apply { manager, .. } => manager,
        }
    }
}

impl FieldOwners {
    /// Records a write that turned `before` (`None`: created) into `after`.
    pub(crate) fn record(&mut self, write: Write<'_>, before: Option<&Value>, after: &Value) {
        let before = before.map(leaves).unwrap_or_default();
        let after = leaves(after);
        let changed: BTreeSet<FieldPath> = before
            .iter()
            .filter(|(path, value)| after.get(*path) != Some(*value))
            .map(|(path, _)| path.clone())
            .chain(
                after
                    .iter()
                    .filter(|(path, value)| before.get(*path) != Some(*value))
                    .map(|(path, _)| path.clone()),
            )
            .collect();
        let writer = write.manager();
        for (manager, fields) in &mut self.0 {
            fields.retain(|path| {
                after.contains_key(path) && (manager == writer || !changed.contains(path))
            });
        }
        let mine = self.0.entry(writer.to_string()).or_default();
        match write {
            Write::Update(_) => mine.extend(changed.into_iter().filter(|p| after.contains_key(p))),
            Write::Apply { applied, .. } => mine.extend(
                leaves(applied)
                    .into_keys()
                    .filter(|path| after.contains_key(path)),
            ),
        }
        self.0.retain(|_, fields| !fields.is_empty());
    }

    /// The fields of `applied` that another manager owns and whose value in `current` differs:
    /// what makes a non-forced apply by `manager` fail. Empty when the apply may go ahead.
    pub(crate) fn conflicts(
        &self,
        manager: &str,
        current: Option<&Value>,
        applied: &Value,
    ) -> Vec<Conflict> {
        let current = current.map(leaves).unwrap_or_default();
        let mut conflicts = Vec::new();
        for (path, value) in leaves(applied) {
            if value.is_null() || current.get(&path) == Some(&value) {
                continue;
            }
            for (owner, fields) in &self.0 {
                if owner != manager && fields.contains(&path) {
                    conflicts.push((owner.clone(), path.clone()));
                }
            }
        }
        conflicts
    }

    /// Every owned field as `.a.b`, by manager (for tests and debugging).
    pub(crate) fn describe(&self) -> BTreeMap<String, Vec<String>> {
        self.0
            .iter()
            .map(|(manager, fields)| (manager.clone(), fields.iter().map(|p| dotted(p)).collect()))
            .collect()
    }
}

/// `.spec.holderIdentity`, as the API server names a field in a conflict.
pub(crate) fn dotted(path: &[String]) -> String {
    path.iter().map(|key| format!(".{key}")).collect()
}

/// The tracked leaves of an object: everything but `apiVersion`, `kind` and `metadata` (of which
/// only `labels` and `annotations` count).
fn leaves(object: &Value) -> BTreeMap<FieldPath, &Value> {
    let mut out = BTreeMap::new();
    let Some(map) = object.as_object() else {
        return out;
    };
    for (key, value) in map {
        match key.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                for tracked in ["labels", "annotations"] {
                    if let Some(value) = value.get(tracked) {
                        collect(value, &mut vec![key.clone(), tracked.to_string()], &mut out);
                    }
                }
            }
            _ => collect(value, &mut vec![key.clone()], &mut out),
        }
    }
    out
}

fn collect<'a>(value: &'a Value, path: &mut FieldPath, out: &mut BTreeMap<FieldPath, &'a Value>) {
    match value.as_object() {
        Some(map) if !map.is_empty() => {
            for (key, child) in map {
                path.push(key.clone());
                collect(child, path, out);
                path.pop();
            }
        }
        _ => drop(out.insert(path.clone(), value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lease(holder: Option<&str>) -> Value {
        match holder {
            Some(holder) => {
                json!({"kind": "Lease", "metadata": {"name": "l", "resourceVersion": "3"},
                                   "spec": {"holderIdentity": holder, "leaseDurationSeconds": 4}})
            }
            None => json!({"kind": "Lease", "metadata": {"name": "l"}, "spec": {}}),
        }
    }

    fn apply(holder: &str) -> Value {
        json!({"kind": "Lease", "metadata": {"name": "l"},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 4}})
    }

    #[test]
    fn the_second_applier_of_a_held_field_conflicts() {
        let mut owners = FieldOwners::default();
        let free = lease(None);
        owners.record(Write::Update("creator"), None, &free);
        // An empty `spec: {}` is a leaf the creator owns; nobody owns holderIdentity yet.
        assert_eq!(owners.conflicts("a", Some(&free), &apply("a")), vec![]);

        let body_a = apply("a");
        let held = lease(Some("a"));
        owners.record(
            Write::Apply {
                manager: "a",
                applied: &body_a,
            },
            Some(&free),
            &held,
        );
        assert_eq!(
            owners.describe()["a"],
            vec![".spec.holderIdentity", ".spec.leaseDurationSeconds"]
        );
        // B would change holderIdentity (a -> b); leaseDurationSeconds is equal, so shared.
        assert_eq!(
            owners.conflicts("b", Some(&held), &apply("b")),
            vec![(
                "a".to_string(),
                vec!["spec".to_string(), "holderIdentity".to_string()]
            )]
        );
        // The owner itself may change its own field; re-applying an equal value never conflicts.
        assert_eq!(owners.conflicts("a", Some(&held), &apply("c")), vec![]);
        assert_eq!(owners.conflicts("b", Some(&held), &apply("a")), vec![]);
    }

    #[test]
    fn an_update_takes_changed_fields_from_other_managers() {
        let mut owners = FieldOwners::default();
        let body_a = apply("a");
        let held = lease(Some("a"));
        owners.record(
            Write::Apply {
                manager: "a",
                applied: &body_a,
            },
            None,
            &held,
        );

        // B force-releases the expired lease: a patch removing the holder (kube-lease-manager).
        let released = json!({"kind": "Lease", "metadata": {"name": "l"}, "spec": {"leaseDurationSeconds": 4}});
        owners.record(Write::Update("b"), Some(&held), &released);
        assert_eq!(owners.describe()["a"], vec![".spec.leaseDurationSeconds"]);
        assert!(
            !owners.describe().contains_key("b"),
            "a removed field is owned by nobody"
        );
        assert_eq!(owners.conflicts("b", Some(&released), &apply("b")), vec![]);

        // An update that changes a field makes its writer the only owner.
        let renewed = json!({"kind": "Lease", "metadata": {"name": "l"}, "spec": {"leaseDurationSeconds": 9}});
        owners.record(Write::Update("c"), Some(&released), &renewed);
        assert_eq!(
            owners.describe(),
            BTreeMap::from([(
                "c".to_string(),
                vec![".spec.leaseDurationSeconds".to_string()]
            )])
        );
    }

    #[test]
    fn leaves_skip_identity_metadata_and_treat_lists_as_atomic() {
        let object = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "s", "namespace": "d", "uid": "u", "labels": {"app": "x"}},
            "spec": {"ports": [{"port": 80}], "selector": {}}});
        let paths: Vec<String> = leaves(&object).keys().map(|p| dotted(p)).collect();
        assert_eq!(
            paths,
            vec![".metadata.labels.app", ".spec.ports", ".spec.selector"]
        );
    }
}

//! The resource types the double serves: the one table mapping `apiVersion` + `kind` to the URL
//! plural, the scope and whether a `/status` subresource exists.
//!
//! To serve another built-in kind, add a row to [`BUILTIN`]. Tests may also call
//! [`crate::ApiDouble::register`], and creating a `CustomResourceDefinition` registers every served
//! version of it (as the real API server does once the CRD is `Established`).

use serde_json::Value;

/// One REST resource: `/api/v1/namespaces/{ns}/services` is `{api_version: "v1", plural: "services"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// `v1` for the core group, else `{group}/{version}`.
    pub api_version: String,
    /// `Service`; lists are served as `{kind}List`.
    pub kind: String,
    /// Lower-case plural used in URLs: `services`.
    pub plural: String,
    /// Namespaced resources live under `/namespaces/{ns}/`; cluster-scoped ones never do.
    pub namespaced: bool,
    /// With a `/status` subresource, writes to the main resource keep the stored `status`, and
    /// writes to `/status` change only `status` (the API server's status strategy).
    pub status_subresource: bool,
}

/// `(apiVersion, kind, plural, namespaced, status subresource)` of every built-in resource.
///
/// Scopes and subresources follow the Kubernetes 1.35 API reference.
pub const BUILTIN: &[(&str, &str, &str, bool, bool)] = &[
    ("v1", "Namespace", "namespaces", false, true),
    ("v1", "Node", "nodes", false, true),
    ("v1", "Service", "services", true, true),
    ("v1", "Secret", "secrets", true, false),
    ("v1", "ConfigMap", "configmaps", true, false),
    ("v1", "Event", "events", true, false),
    ("v1", "Pod", "pods", true, true),
    ("v1", "Endpoints", "endpoints", true, false),
    ("v1", "ServiceAccount", "serviceaccounts", true, false),
    (
        "discovery.k8s.io/v1",
        "EndpointSlice",
        "endpointslices",
        true,
        false,
    ),
    ("networking.k8s.io/v1", "Ingress", "ingresses", true, true),
    (
        "networking.k8s.io/v1",
        "IngressClass",
        "ingressclasses",
        false,
        false,
    ),
    ("events.k8s.io/v1", "Event", "events", true, false),
    ("coordination.k8s.io/v1", "Lease", "leases", true, false),
    (
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        true,
    ),
    (
        "drawbridge.dev/v1alpha1",
        "IPAddressPool",
        "ipaddresspools",
        false,
        true,
    ),
    (
        "drawbridge.dev/v1alpha1",
        "IPAddressClaim",
        "ipaddressclaims",
        false,
        true,
    ),
];

/// The registered resource types (built-ins plus anything registered at run time).
#[derive(Clone, Debug)]
pub(crate) struct Catalog {
    types: Vec<ResourceType>,
}

// === impl ResourceType ===

impl ResourceType {
    /// The group part of `api_version` (`""` for the core group).
    pub fn group(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map_or("", |(group, _)| group)
    }

    /// The version part of `api_version`.
    pub fn version(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map_or(self.api_version.as_str(), |(_, version)| version)
    }
}

// === impl Catalog ===

impl Default for Catalog {
    fn default() -> Self {
        let types = BUILTIN
            .iter()
            .map(
                |&(api_version, kind, plural, namespaced, status_subresource)| ResourceType {
                    api_version: api_version.to_string(),
                    kind: kind.to_string(),
                    plural: plural.to_string(),
                    namespaced,
                    status_subresource,
                },
            )
            .collect();
        Self { types }
    }
}

impl Catalog {
    pub(crate) fn by_plural(&self, api_version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.api_version == api_version && t.plural == plural)
    }

    pub(crate) fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.api_version == api_version && t.kind == kind)
    }

    /// Every served `apiVersion`, in table order, without duplicates.
    pub(crate) fn api_versions(&self) -> Vec<&str> {
        let mut versions: Vec<&str> = Vec::new();
        for t in &self.types {
            if !versions.contains(&t.api_version.as_str()) {
                versions.push(&t.api_version);
            }
        }
        versions
    }

    pub(crate) fn in_api_version<'a>(
        &'a self,
        api_version: &'a str,
    ) -> impl Iterator<Item = &'a ResourceType> {
        self.types
            .iter()
            .filter(move |t| t.api_version == api_version)
    }

    /// Adds `resource`, replacing an entry with the same `apiVersion` and plural.
    pub(crate) fn register(&mut self, resource: ResourceType) {
        self.types
            .retain(|t| !(t.api_version == resource.api_version && t.plural == resource.plural));
        self.types.push(resource);
    }

    /// Registers the served versions of a `CustomResourceDefinition` object; malformed CRDs are
    /// ignored (the double does not validate).
    pub(crate) fn register_crd(&mut self, crd: &Value) {
        let spec = &crd["spec"];
        let (Some(group), Some(kind), Some(plural)) = (
            spec["group"].as_str(),
            spec["names"]["kind"].as_str(),
            spec["names"]["plural"].as_str(),
        ) else {
            return;
        };
        let namespaced = spec["scope"].as_str() != Some("Cluster");
        for version in spec["versions"].as_array().into_iter().flatten() {
            let Some(name) = version["name"].as_str() else {
                continue;
            };
            if version["served"].as_bool() == Some(false) {
                continue;
            }
            self.register(ResourceType {
                api_version: format!("{group}/{name}"),
                kind: kind.to_string(),
                plural: plural.to_string(),
                namespaced,
                status_subresource: version["subresources"].get("status").is_some(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builtin_lookup() {
        let catalog = Catalog::default();
        let svc = catalog
            .by_plural("v1", "services")
            .expect("services are built in");
        assert_eq!(
            (
                svc.kind.as_str(),
                svc.namespaced,
                svc.group(),
                svc.version()
            ),
            ("Service", true, "", "v1")
        );
        let pool = catalog
            .by_kind("drawbridge.dev/v1alpha1", "IPAddressPool")
            .expect("pools are built in");
        assert_eq!(
            (pool.group(), pool.version(), pool.namespaced),
            ("drawbridge.dev", "v1alpha1", false)
        );
        assert!(catalog.by_plural("v1", "widgets").is_none());
    }

    #[test]
    fn crd_registers_served_versions() {
        let mut catalog = Catalog::default();
        catalog.register_crd(&json!({
            "spec": {
                "group": "example.com",
                "names": {"kind": "Widget", "plural": "widgets"},
                "scope": "Namespaced",
                "versions": [
                    {"name": "v1", "served": true, "subresources": {"status": {}}},
                    {"name": "v0", "served": false},
                ],
            }
        }));
        let widget = catalog
            .by_plural("example.com/v1", "widgets")
            .expect("v1 is served");
        assert!(widget.namespaced && widget.status_subresource);
        assert!(catalog.by_plural("example.com/v0", "widgets").is_none());
    }
}

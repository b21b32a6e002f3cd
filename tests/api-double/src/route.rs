//! Request paths and query strings.
//!
//! ```text
//! /api/v1/{plural}[/{name}[/{subresource}]]                     core, cluster-scoped or all namespaces
//! /api/v1/namespaces/{ns}/{plural}[/{name}[/{subresource}]]     core, namespaced
//! /apis/{group}/{version}/...                                    the same for named groups
//! /version, /api, /apis, /api/v1, /apis/{group}/{version}        discovery
//! ```

use hyper::Method;

use crate::catalog::{Catalog, ResourceType};

/// What a request path addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Version,
    /// `/api`: the core `APIVersions`.
    CoreVersions,
    /// `/apis`: the `APIGroupList`.
    Groups,
    /// `/api/v1` or `/apis/{group}/{version}`: an `APIResourceList`.
    GroupVersion(String),
    Resource(ResourcePath),
    Unknown,
}

/// A resource path, resolved against the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ResourcePath {
    pub(crate) resource: ResourceType,
    /// `None` for cluster-scoped resources and for collections across all namespaces.
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) subresource: Option<String>,
}

/// Decoded query parameters, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Query(Vec<(String, String)>);

// === impl Route ===

impl Route {
    pub(crate) fn parse(path: &str, catalog: &Catalog) -> Self {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (api_version, rest) = match segments.as_slice() {
            ["version"] => return Self::Version,
            ["api"] => return Self::CoreVersions,
            ["apis"] => return Self::Groups,
            ["api", version, rest @ ..] => (version.to_string(), rest),
            ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
            _ => return Self::Unknown,
        };
        if rest.is_empty() {
            return if catalog.api_versions().contains(&api_version.as_str()) {
                Self::GroupVersion(api_version)
            } else {
                Self::Unknown
            };
        }
        // `/api/v1/namespaces/{ns}/status` is the Namespace's status, not a resource `status`, so
        // the namespaced form applies only when the third segment is a namespaced plural.
        if let ["namespaces", namespace, plural, tail @ ..] = rest
            && let Some(resource) = catalog.by_plural(&api_version, plural)
            && resource.namespaced
        {
            return Self::resource(resource, Some(namespace), tail);
        }
        let [plural, tail @ ..] = rest else {
            return Self::Unknown;
        };
        match catalog.by_plural(&api_version, plural) {
            // A namespaced object is only addressable through its namespace.
            Some(resource) if resource.namespaced && !tail.is_empty() => Self::Unknown,
            Some(resource) => Self::resource(resource, None, tail),
            None => Self::Unknown,
        }
    }

    fn resource(resource: &ResourceType, namespace: Option<&str>, tail: &[&str]) -> Self {
        let (name, subresource) = match tail {
            [] => (None, None),
            [name] => (Some(name), None),
            [name, subresource] => (Some(name), Some(subresource)),
            _ => return Self::Unknown,
        };
        Self::Resource(ResourcePath {
            resource: resource.clone(),
            namespace: namespace.map(str::to_string),
            name: name.map(|n| n.to_string()),
            subresource: subresource.map(|s| s.to_string()),
        })
    }

    /// The Kubernetes verb (as audit logs and RBAC spell it) of `method` on this route.
    pub(crate) fn verb(&self, method: &Method, query: &Query) -> String {
        let Self::Resource(path) = self else {
            return method.as_str().to_ascii_lowercase();
        };
        let verb = match (method.as_str(), path.name.is_some()) {
            ("GET", true) => "get",
            ("GET", false) if query.flag("watch") => "watch",
            ("GET", false) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            (other, _) => return other.to_ascii_lowercase(),
        };
        verb.to_string()
    }
}

// === impl Query ===

impl Query {
    pub(crate) fn parse(raw: &str) -> Self {
        let pairs = raw
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(key), percent_decode(value))
            })
            .collect();
        Self(pairs)
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `true` / `1` (how Go's `strconv.ParseBool` reads `watch=`, `allowWatchBookmarks=`, ...).
    pub(crate) fn flag(&self, key: &str) -> bool {
        matches!(
            self.get(key),
            Some("true" | "1" | "True" | "TRUE" | "t" | "T")
        )
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(path: &str) -> Route {
        Route::parse(path, &Catalog::default())
    }

    fn resource(path: &str) -> (String, Option<String>, Option<String>, Option<String>) {
        let Route::Resource(p) = parse(path) else {
            panic!("{path} is not a resource path")
        };
        (p.resource.plural, p.namespace, p.name, p.subresource)
    }

    #[test]
    fn paths() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            resource("/api/v1/services"),
            ("services".into(), None, None, None)
        );
        assert_eq!(
            resource("/api/v1/namespaces/ns/services/web/status"),
            ("services".into(), s("ns"), s("web"), s("status"))
        );
        assert_eq!(
            resource("/api/v1/namespaces"),
            ("namespaces".into(), None, None, None)
        );
        assert_eq!(
            resource("/api/v1/namespaces/ns"),
            ("namespaces".into(), None, s("ns"), None)
        );
        assert_eq!(
            resource("/api/v1/namespaces/ns/status"),
            ("namespaces".into(), None, s("ns"), s("status"))
        );
        assert_eq!(
            resource("/api/v1/nodes/n1"),
            ("nodes".into(), None, s("n1"), None)
        );
        assert_eq!(
            resource("/apis/drawbridge.dev/v1alpha1/ipaddresspools/lab/status"),
            ("ipaddresspools".into(), None, s("lab"), s("status"))
        );
        assert_eq!(
            resource("/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices"),
            ("endpointslices".into(), s("ns"), None, None)
        );
        assert_eq!(parse("/api/v1/services/web"), Route::Unknown);
        assert_eq!(parse("/api/v1/namespaces/ns/nodes/n1"), Route::Unknown);
        assert_eq!(parse("/apis/example.com/v1/widgets"), Route::Unknown);
        assert_eq!(parse("/api/v1"), Route::GroupVersion("v1".into()));
        assert_eq!(parse("/version"), Route::Version);
    }

    #[test]
    fn queries() {
        let q = Query::parse("&watch=1&labelSelector=app%3Dweb%2Ctier+in+%28a%29&empty=");
        assert!(q.flag("watch"));
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert_eq!(q.get("empty"), Some(""));
        assert_eq!(q.get("missing"), None);
        assert_eq!(percent_decode("100%"), "100%");
    }
}

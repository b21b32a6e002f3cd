//! The immutable route table and the Ingress v1 matching rules (pure: no I/O, no clocks).
//!
//! Matching follows `shared/reference/ingress-v1.md` (Kubernetes "Ingress" concept page, sections
//! "Path types", "Examples" and "Hostname wildcards"); every row of its tables is a test below.
//!
//! ```text
//!  request Host ──strip port, lower-case──► exact host? ─► wildcard (*.one-label)? ─► rules without host?
//!                                               │ the FIRST host level that has rules is used (no fall-through)
//!  request path ──────────────────────────────► rules of that level, longest first, Exact before Prefix
//!                                               │ none matched
//!                                               ▼
//!                                     default backend (spec.defaultBackend) ─► else None (gateway 404)
//! ```
//!
//! Host levels do not fall through: once a request's host matches an exact host that has rules,
//! wildcard and host-less rules are not consulted for it, the way ingress-nginx and Contour build
//! one virtual host per hostname. (Gateway API's `*.example.com` matches one or more labels; Ingress
//! wildcards match exactly one. They are kept apart on purpose.)

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::metrics::RouteStats;

/// How a rule's path is compared with the request path (`spec.rules[].http.paths[].pathType`).
///
/// `ImplementationSpecific` is translated to [`PathType::Prefix`] by `config` (drawbridge's
/// documented choice for its IngressClass).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathType {
    /// Case-sensitive, whole-path equality.
    Exact,
    /// Element-wise (`/`-separated) prefix; a trailing slash on either side is ignored.
    Prefix,
}

/// Which request hosts a rule covers (`spec.rules[].host`), already lower-cased.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// No `host`: every request host.
    Any,
    /// `foo.bar.com`: exactly this host.
    Exact(String),
    /// `*.bar.com`, stored as its suffix `bar.com`: exactly one extra DNS label.
    Wildcard(String),
}

impl HostMatch {
    /// Parses an Ingress host as written (`None` or empty = every host). Lower-cases it (DNS names
    /// compare case-insensitively, RFC 4343). Validation of the syntax is `config`'s job.
    pub fn from_ingress_host(host: Option<&str>) -> Self {
        match host.map(str::trim).filter(|h| !h.is_empty()) {
            None => HostMatch::Any,
            Some(h) => {
                let h = h.trim_end_matches('.').to_ascii_lowercase();
                match h.strip_prefix("*.") {
                    Some(suffix) => HostMatch::Wildcard(suffix.to_string()),
                    None => HostMatch::Exact(h),
                }
            }
        }
    }
}

/// One `(host, path) → backend` rule, as translated by `config`.
#[derive(Clone, Debug)]
pub struct Route {
    /// The hosts the rule covers.
    pub host: HostMatch,
    /// The rule's path, as written (starts with `/`).
    pub path: String,
    /// How `path` is compared.
    pub path_type: PathType,
    /// Where matching requests go.
    pub backend: Arc<Backend>,
}

// === impl Backend ===

/// A resolved Service port: the endpoints requests are balanced over, round-robin.
///
/// Built by `config` from the Service and its EndpointSlices; immutable apart from the round-robin
/// cursor and the metric handles. One `Backend` is shared by every rule of the same Ingress and
/// host naming the same Service port, so they share the rotation and the metric labels. The
/// cursor restarts when a new table is published (harmless for round-robin).
#[derive(Debug)]
pub struct Backend {
    /// `namespace/service:port`, for logs.
    pub name: String,
    /// Metric handles labelled with the Ingress and rule host this backend was resolved for.
    pub stats: RouteStats,
    /// Ready endpoints (or serving-terminating ones when none is ready); empty = answer 503.
    endpoints: Box<[SocketAddr]>,
    /// Round-robin cursor; wraps.
    next: AtomicUsize,
}

impl Backend {
    /// A backend over `endpoints` (order kept; callers sort for determinism).
    pub fn new(name: impl Into<String>, endpoints: Vec<SocketAddr>) -> Self {
        Backend::for_route(name, endpoints, RouteStats::default())
    }

    /// A backend whose requests are counted under `stats`.
    pub fn for_route(
        name: impl Into<String>,
        endpoints: Vec<SocketAddr>,
        stats: RouteStats,
    ) -> Self {
        Backend {
            name: name.into(),
            stats,
            endpoints: endpoints.into_boxed_slice(),
            next: AtomicUsize::new(0),
        }
    }

    /// The next endpoint in round-robin order; `None` when the backend has no endpoints.
    pub fn pick(&self) -> Option<SocketAddr> {
        match self.endpoints.len() {
            0 => None,
            1 => Some(self.endpoints[0]),
            n => Some(self.endpoints[self.next.fetch_add(1, Ordering::Relaxed) % n]),
        }
    }

    /// Every endpoint of this backend.
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }
}

// === impl RouteTable ===

/// Rules of one host level, sorted for first-match lookup: longest path first, and at equal
/// length `Exact` before `Prefix` (the spec's tie-break). Input order breaks remaining ties, so
/// the Ingress `config` lists first wins a duplicate path.
#[derive(Debug, Default)]
struct HostRoutes {
    rules: Vec<PathRule>,
}

#[derive(Debug)]
struct PathRule {
    /// `Exact`: the path as written. `Prefix`: the path without trailing slashes (`/` becomes ``).
    key: Box<str>,
    path_type: PathType,
    backend: Arc<Backend>,
}

impl PathRule {
    fn matches(&self, path: &str) -> bool {
        match self.path_type {
            PathType::Exact => *self.key == *path,
            // Element-wise: `/aaa/bb` must not match `/aaa/bbb`, so the byte after the prefix
            // has to end an element. `key` has no trailing slash, which makes `/foo/` match
            // `/foo` and `/foo` match `/foo/`.
            PathType::Prefix => path
                .strip_prefix(&*self.key)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        }
    }
}

impl HostRoutes {
    fn push(&mut self, path: &str, path_type: PathType, backend: Arc<Backend>) {
        let key = match path_type {
            PathType::Exact => path,
            PathType::Prefix => path.trim_end_matches('/'),
        };
        self.rules.push(PathRule {
            key: key.into(),
            path_type,
            backend,
        });
    }

    fn sort(&mut self) {
        // Stable: equal keys keep input order.
        self.rules.sort_by(|a, b| {
            b.key.len().cmp(&a.key.len()).then_with(|| {
                (a.path_type == PathType::Prefix).cmp(&(b.path_type == PathType::Prefix))
            })
        });
    }

    fn lookup(&self, path: &str) -> Option<&Arc<Backend>> {
        self.rules
            .iter()
            .find(|r| r.matches(path))
            .map(|r| &r.backend)
    }
}

/// Every served rule, indexed for lookup. Immutable once built: `discovery` builds a new table
/// on every change and publishes it through an `ArcSwap`; the proxy only reads.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Rules whose host is exact, by lower-cased host.
    exact: HashMap<Box<str>, HostRoutes>,
    /// Rules with a `*.suffix` host, by lower-cased suffix.
    wildcard: HashMap<Box<str>, HostRoutes>,
    /// Rules without a host.
    any: HostRoutes,
    /// The first served Ingress's `spec.defaultBackend` (in `config`'s order).
    default_backend: Option<Arc<Backend>>,
}

impl RouteTable {
    /// Builds a table from rules (earlier rules win exact duplicates) and an optional default.
    pub fn new(
        routes: impl IntoIterator<Item = Route>,
        default_backend: Option<Arc<Backend>>,
    ) -> Self {
        let mut table = RouteTable {
            default_backend,
            ..RouteTable::default()
        };
        for route in routes {
            let level = match route.host {
                HostMatch::Any => &mut table.any,
                HostMatch::Exact(h) => table.exact.entry(h.into_boxed_str()).or_default(),
                HostMatch::Wildcard(s) => table.wildcard.entry(s.into_boxed_str()).or_default(),
            };
            level.push(&route.path, route.path_type, route.backend);
        }
        table.any.sort();
        table.exact.values_mut().for_each(HostRoutes::sort);
        table.wildcard.values_mut().for_each(HostRoutes::sort);
        table
    }

    /// The backend for a request, or `None` (the gateway answers 404).
    ///
    /// `host` is the `Host` header / `:authority` as received (port, trailing dot and upper case
    /// allowed); `path` is the URL path without the query. Allocates only when `host` contains
    /// upper-case letters.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<Backend>> {
        let host = normalize_host(host);
        let level = self
            .exact
            .get(&*host)
            .or_else(|| {
                let (first, suffix) = host.split_once('.')?;
                if first.is_empty() {
                    None
                } else {
                    self.wildcard.get(suffix)
                }
            })
            .unwrap_or(&self.any);
        level.lookup(path).or(self.default_backend.as_ref())
    }

    /// Number of rules (for logs).
    pub fn len(&self) -> usize {
        self.any.rules.len()
            + self.exact.values().map(|h| h.rules.len()).sum::<usize>()
            + self.wildcard.values().map(|h| h.rules.len()).sum::<usize>()
    }

    /// Whether the table has no rules (it may still have a default backend).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Request host without port and trailing dot, lower-cased (borrowed unless it had upper case).
fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: `[::1]:8080` → `[::1]`.
        match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        }
    } else {
        host.split_once(':').map_or(host, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str) -> Arc<Backend> {
        Arc::new(Backend::new(name, vec![]))
    }

    /// A table of host-less rules whose backend is named after `type:path`.
    fn table(paths: &[(PathType, &str)], default: bool) -> RouteTable {
        let routes = paths.iter().map(|(t, p)| Route {
            host: HostMatch::Any,
            path: p.to_string(),
            path_type: *t,
            backend: backend(&format!("{t:?}:{p}")),
        });
        RouteTable::new(routes, default.then(|| backend("default")))
    }

    fn lookup(t: &RouteTable, host: &str, path: &str) -> Option<String> {
        t.lookup(host, path).map(|b| b.name.clone())
    }

    use PathType::{Exact, Prefix};

    /// (rules, request path, winning rule).
    type PathRow = (
        &'static [(PathType, &'static str)],
        &'static str,
        Option<&'static str>,
    );

    /// ingress-v1.md "Path matching": every row. `expected` names the winning rule
    /// (`Type:path`), `default` for the default backend, `None` for no match.
    #[test]
    fn path_matching_table() {
        #[rustfmt::skip]
        let rows: &[PathRow] = &[
            // | Prefix | `/` | (all paths) | Yes |
            (&[(Prefix, "/")], "/", Some("Prefix:/")),
            (&[(Prefix, "/")], "/anything/at/all", Some("Prefix:/")),
            (&[(Prefix, "/")], "/foo/", Some("Prefix:/")),
            // | Exact | `/foo` | `/foo` | Yes |
            (&[(Exact, "/foo")], "/foo", Some("Exact:/foo")),
            // | Exact | `/foo` | `/bar` | No |
            (&[(Exact, "/foo")], "/bar", None),
            // | Exact | `/foo` | `/foo/` | No |
            (&[(Exact, "/foo")], "/foo/", None),
            // | Exact | `/foo/` | `/foo` | No |
            (&[(Exact, "/foo/")], "/foo", None),
            // | Prefix | `/foo` | `/foo`, `/foo/` | Yes |
            (&[(Prefix, "/foo")], "/foo", Some("Prefix:/foo")),
            (&[(Prefix, "/foo")], "/foo/", Some("Prefix:/foo")),
            // | Prefix | `/foo/` | `/foo`, `/foo/` | Yes |
            (&[(Prefix, "/foo/")], "/foo", Some("Prefix:/foo/")),
            (&[(Prefix, "/foo/")], "/foo/", Some("Prefix:/foo/")),
            // | Prefix | `/aaa/bb` | `/aaa/bbb` | No |
            (&[(Prefix, "/aaa/bb")], "/aaa/bbb", None),
            // | Prefix | `/aaa/bbb` | `/aaa/bbb` | Yes |
            (&[(Prefix, "/aaa/bbb")], "/aaa/bbb", Some("Prefix:/aaa/bbb")),
            // | Prefix | `/aaa/bbb/` | `/aaa/bbb` | Yes, ignores trailing slash |
            (&[(Prefix, "/aaa/bbb/")], "/aaa/bbb", Some("Prefix:/aaa/bbb/")),
            // | Prefix | `/aaa/bbb` | `/aaa/bbb/` | Yes, matches trailing slash |
            (&[(Prefix, "/aaa/bbb")], "/aaa/bbb/", Some("Prefix:/aaa/bbb")),
            // | Prefix | `/aaa/bbb` | `/aaa/bbb/ccc` | Yes, matches subpath |
            (&[(Prefix, "/aaa/bbb")], "/aaa/bbb/ccc", Some("Prefix:/aaa/bbb")),
            // | Prefix | `/aaa/bbb` | `/aaa/bbbxyz` | No, does not match string prefix |
            (&[(Prefix, "/aaa/bbb")], "/aaa/bbbxyz", None),
            // | Prefix | `/`, `/aaa` | `/aaa/ccc` | Yes, matches `/aaa` prefix |
            (&[(Prefix, "/"), (Prefix, "/aaa")], "/aaa/ccc", Some("Prefix:/aaa")),
            // | Prefix | `/`, `/aaa`, `/aaa/bbb` | `/aaa/bbb` | Yes, matches `/aaa/bbb` prefix |
            (&[(Prefix, "/"), (Prefix, "/aaa"), (Prefix, "/aaa/bbb")], "/aaa/bbb", Some("Prefix:/aaa/bbb")),
            // | Prefix | `/`, `/aaa`, `/aaa/bbb` | `/ccc` | Yes, matches `/` prefix |
            (&[(Prefix, "/"), (Prefix, "/aaa"), (Prefix, "/aaa/bbb")], "/ccc", Some("Prefix:/")),
            // | Prefix | `/aaa` | `/ccc` | No, uses default backend | (without a default: 404)
            (&[(Prefix, "/aaa")], "/ccc", None),
            // | Mixed | `/foo` (Prefix), `/foo` (Exact) | `/foo` | Yes, prefers Exact |
            (&[(Prefix, "/foo"), (Exact, "/foo")], "/foo", Some("Exact:/foo")),
            (&[(Exact, "/foo"), (Prefix, "/foo")], "/foo", Some("Exact:/foo")),
            // Not in the table, implied by it: case-sensitive paths, longest wins whatever the order.
            (&[(Exact, "/foo")], "/FOO", None),
            (&[(Prefix, "/foo")], "/Foo/bar", None),
            (&[(Prefix, "/aaa/bbb"), (Prefix, "/aaa")], "/aaa/bbb/c", Some("Prefix:/aaa/bbb")),
            (&[(Prefix, "/aaa"), (Exact, "/aaa/bbb")], "/aaa/bbb", Some("Exact:/aaa/bbb")),
            (&[(Prefix, "/aaa"), (Exact, "/aaa/bbb")], "/aaa/bbb/", Some("Prefix:/aaa")),
        ];
        for (paths, request, expected) in rows {
            let t = table(paths, false);
            assert_eq!(
                lookup(&t, "any.example", request).as_deref(),
                *expected,
                "paths {paths:?}, request {request}"
            );
        }
    }

    /// "No rule matches: the Ingress `spec.defaultBackend` if any" (the `/aaa` vs `/ccc` row).
    #[test]
    fn default_backend_when_no_rule_matches() {
        let t = table(&[(Prefix, "/aaa")], true);
        assert_eq!(lookup(&t, "x", "/ccc").as_deref(), Some("default"));
        assert_eq!(lookup(&t, "x", "/aaa/x").as_deref(), Some("Prefix:/aaa"));
        let empty = RouteTable::new([], Some(backend("default")));
        assert_eq!(lookup(&empty, "x", "/").as_deref(), Some("default"));
        assert_eq!(lookup(&RouteTable::default(), "x", "/"), None);
    }

    fn host_table(hosts: &[&str]) -> RouteTable {
        let routes = hosts.iter().map(|h| Route {
            host: HostMatch::from_ingress_host(Some(*h).filter(|h| !h.is_empty())),
            path: "/".into(),
            path_type: Prefix,
            backend: backend(if h.is_empty() { "<any>" } else { h }),
        });
        RouteTable::new(routes, None)
    }

    /// ingress-v1.md "Hosts": every row, plus the precedence rules stated under it.
    #[test]
    fn host_matching_table() {
        #[rustfmt::skip]
        let rows: &[(&[&str], &str, Option<&str>)] = &[
            // | `*.foo.com` | `bar.foo.com` | Yes (shared suffix) |
            (&["*.foo.com"], "bar.foo.com", Some("*.foo.com")),
            // | `*.foo.com` | `baz.bar.foo.com` | No, wildcard covers a single label |
            (&["*.foo.com"], "baz.bar.foo.com", None),
            // | `*.foo.com` | `foo.com` | No, wildcard covers a single label |
            (&["*.foo.com"], "foo.com", None),
            // An exact host beats a wildcard host.
            (&["*.foo.com", "bar.foo.com"], "bar.foo.com", Some("bar.foo.com")),
            (&["bar.foo.com", "*.foo.com"], "bar.foo.com", Some("bar.foo.com")),
            (&["bar.foo.com", "*.foo.com"], "qux.foo.com", Some("*.foo.com")),
            // A rule without host matches every host...
            (&[""], "anything.example", Some("<any>")),
            (&[""], "10.0.0.1", Some("<any>")),
            // ...but a host-specific rule is preferred.
            (&["", "foo.com"], "foo.com", Some("foo.com")),
            (&["", "*.foo.com"], "a.foo.com", Some("*.foo.com")),
            (&["", "*.foo.com"], "a.b.foo.com", Some("<any>")),
            // Host is compared without the port, case-insensitively, trailing dot ignored.
            (&["foo.com"], "foo.com:8443", Some("foo.com")),
            (&["foo.com"], "FOO.Com", Some("foo.com")),
            (&["FOO.com"], "foo.com", Some("FOO.com")), // (backend named after the rule as written)
            (&["foo.com"], "foo.com.", Some("foo.com")),
            (&["*.foo.com"], "Bar.FOO.com:80", Some("*.foo.com")),
            (&["foo.com"], "bar.com", None),
            (&["foo.com"], "", None),
            (&["*.foo.com"], ".foo.com", None),
            // IPv6 literal with port.
            (&[""], "[::1]:8080", Some("<any>")),
        ];
        for (hosts, request, expected) in rows {
            let t = host_table(hosts);
            assert_eq!(
                lookup(&t, request, "/x").as_deref(),
                *expected,
                "hosts {hosts:?}, Host {request}"
            );
        }
    }

    /// Host levels do not fall through: a host with rules that match no path gets the default.
    #[test]
    fn host_level_does_not_fall_through() {
        let routes = vec![
            Route {
                host: HostMatch::Any,
                path: "/".into(),
                path_type: Prefix,
                backend: backend("any"),
            },
            Route {
                host: HostMatch::Exact("foo.com".into()),
                path: "/api".into(),
                path_type: Prefix,
                backend: backend("foo-api"),
            },
        ];
        let t = RouteTable::new(routes, Some(backend("default")));
        assert_eq!(lookup(&t, "foo.com", "/api/v1").as_deref(), Some("foo-api"));
        assert_eq!(lookup(&t, "foo.com", "/other").as_deref(), Some("default"));
        assert_eq!(lookup(&t, "bar.com", "/other").as_deref(), Some("any"));
    }

    /// Several Ingresses may add rules to one host; an exact duplicate goes to the first one.
    #[test]
    fn rules_of_one_host_merge_and_first_duplicate_wins() {
        let mk = |path: &str, name: &str| Route {
            host: HostMatch::Exact("foo.com".into()),
            path: path.into(),
            path_type: Prefix,
            backend: backend(name),
        };
        let t = RouteTable::new(
            vec![
                mk("/a", "first-a"),
                mk("/b", "second-b"),
                mk("/a", "second-a"),
            ],
            None,
        );
        assert_eq!(lookup(&t, "foo.com", "/a").as_deref(), Some("first-a"));
        assert_eq!(lookup(&t, "foo.com", "/b").as_deref(), Some("second-b"));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn backend_round_robin() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:1".parse().unwrap();
        let be = Backend::new("x", vec![a, b]);
        let picks: Vec<_> = (0..4).map(|_| be.pick().unwrap()).collect();
        assert_eq!(picks, vec![a, b, a, b]);
        assert_eq!(Backend::new("none", vec![]).pick(), None);
    }
}

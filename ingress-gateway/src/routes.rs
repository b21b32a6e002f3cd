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
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::metrics::RouteStats;
use crate::policy::{LoadBalance, Policy, UpstreamProtocol};
use crate::upstream::{EndpointRegistry, EndpointState, fast_random};

/// How a rule's path is compared with the request path (`spec.rules[].http.paths[].pathType`).
///
/// `ImplementationSpecific` is translated to [`PathType::Prefix`] by `config` (drawbridge's
/// documented choice for its IngressClass).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

/// A resolved Service port: the endpoints requests are balanced over, and how to talk to them.
///
/// Built by `config` from the Service and its EndpointSlices; immutable apart from the round-robin
/// cursor, the metric handles and the shared [`EndpointState`]s. One `Backend` is shared by every
/// rule of the same Ingress and host naming the same Service port, so they share the rotation and
/// the metric labels. The cursor restarts when a new table is published (harmless for
/// round-robin); endpoint states do not (they come from the [`EndpointRegistry`]).
#[derive(Debug)]
pub struct Backend {
    /// `namespace/service:port`, for logs.
    pub name: String,
    /// Metric handles labelled with the Ingress and rule host this backend was resolved for.
    pub stats: RouteStats,
    /// The Ingress's annotations: timeouts, body limit, redirect, balancing.
    pub policy: Arc<Policy>,
    /// How to talk to the endpoints (annotation, else the Service port's `appProtocol`).
    pub protocol: UpstreamProtocol,
    /// Ready endpoints (or serving-terminating ones when none is ready); empty = answer 503.
    endpoints: Box<[SocketAddr]>,
    /// In-flight counts and passive health, index-aligned with `endpoints`.
    states: Box<[Arc<EndpointState>]>,
    /// Round-robin cursor; wraps.
    next: AtomicUsize,
}

impl Backend {
    /// A backend over `endpoints` (order kept; callers sort for determinism).
    pub fn new(name: impl Into<String>, endpoints: Vec<SocketAddr>) -> Self {
        Backend::for_route(name, endpoints, RouteStats::default())
    }

    /// A backend whose requests are counted under `stats`, with the default [`Policy`] and
    /// endpoint states of its own.
    pub fn for_route(
        name: impl Into<String>,
        endpoints: Vec<SocketAddr>,
        stats: RouteStats,
    ) -> Self {
        let states = endpoints.iter().map(|_| Arc::default()).collect();
        Backend {
            name: name.into(),
            stats,
            policy: Arc::default(),
            protocol: UpstreamProtocol::default(),
            endpoints: endpoints.into_boxed_slice(),
            states,
            next: AtomicUsize::new(0),
        }
    }

    /// The same backend with `policy` and `protocol`.
    pub fn with_policy(mut self, policy: Arc<Policy>, protocol: UpstreamProtocol) -> Self {
        self.policy = policy;
        self.protocol = protocol;
        self
    }

    /// The same backend sharing endpoint states through `registry`.
    pub fn with_registry(mut self, registry: &EndpointRegistry) -> Self {
        self.states = self.endpoints.iter().map(|a| registry.state(*a)).collect();
        self
    }

    /// The next endpoint in round-robin order; `None` when the backend has no endpoints.
    /// Ignores health and the load-balancing policy (see [`Backend::choose`]).
    pub fn pick(&self) -> Option<SocketAddr> {
        match self.endpoints.len() {
            0 => None,
            1 => Some(self.endpoints[0]),
            n => Some(self.endpoints[self.next.fetch_add(1, Ordering::Relaxed) % n]),
        }
    }

    /// Chooses an endpoint for one attempt: by the policy's [`LoadBalance`], among endpoints not
    /// in `tried` and not ejected; else any not tried (ejection ignored: fail open); else any
    /// (every endpoint was tried: start over). `None` only when there are no endpoints.
    pub fn choose(&self, tried: &[SocketAddr]) -> Option<(SocketAddr, &Arc<EndpointState>)> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let usable = |i: usize, check_health: bool| {
            !(tried.contains(&self.endpoints[i]) || check_health && self.states[i].is_ejected())
        };
        let chosen = match self.policy.load_balance {
            LoadBalance::RoundRobin => {
                let start = if n == 1 {
                    0
                } else {
                    self.next.fetch_add(1, Ordering::Relaxed)
                };
                let scan = |check| (0..n).map(|k| (start + k) % n).find(|&i| usable(i, check));
                scan(true).or_else(|| scan(false))
            }
            LoadBalance::LeastRequest => self
                .two_choices(|i| usable(i, true))
                .or_else(|| self.two_choices(|i| usable(i, false))),
        };
        let i = chosen.unwrap_or_else(|| (fast_random() % n as u64) as usize);
        Some((self.endpoints[i], &self.states[i]))
    }

    /// Power of two choices among the endpoints `ok` accepts: two drawn at random, the one with
    /// fewer requests in flight. With fewer than two candidates, the candidate (if any).
    fn two_choices(&self, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.endpoints.len();
        let r = fast_random();
        let a = (r % n as u64) as usize;
        // A second, different index: offset 1..n from the first.
        let b = if n > 1 {
            (a + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n
        } else {
            a
        };
        match (ok(a), ok(b)) {
            (true, true) => Some(if self.states[b].in_flight() < self.states[a].in_flight() {
                b
            } else {
                a
            }),
            (true, false) => Some(a),
            (false, true) => Some(b),
            // Both drawn unusable: the least loaded usable one, by a scan.
            (false, false) => (0..n)
                .filter(|&i| ok(i))
                .min_by_key(|&i| self.states[i].in_flight()),
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
    /// Hosts with a certificate in some served Ingress's `spec.tls` (exact, lower-case).
    tls_exact: HashSet<Box<str>>,
    /// Suffixes of `*.suffix` TLS hosts.
    tls_wildcard: HashSet<Box<str>>,
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

    /// The same table, with `hosts` (as in `spec.tls[].hosts`, lower-cased; `*.suffix` allowed)
    /// marked as TLS hosts: plain-HTTP requests for them are redirected to HTTPS.
    pub fn with_tls_hosts<'a>(mut self, hosts: impl IntoIterator<Item = &'a str>) -> Self {
        for h in hosts {
            match h.strip_prefix("*.") {
                Some(suffix) => self.tls_wildcard.insert(suffix.into()),
                None => self.tls_exact.insert(h.into()),
            };
        }
        self
    }

    /// Whether the request host (as received: port, case and trailing dot allowed) is covered by
    /// a TLS host (exact, or a wildcard one label up).
    pub fn has_tls(&self, host: &str) -> bool {
        if self.tls_exact.is_empty() && self.tls_wildcard.is_empty() {
            return false;
        }
        let host = normalize_host(host);
        self.tls_exact.contains(&*host)
            || host.split_once('.').is_some_and(|(first, suffix)| {
                !first.is_empty() && self.tls_wildcard.contains(suffix)
            })
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

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([192, 0, 2, i], 80)))
            .collect()
    }

    #[test]
    fn choose_skips_tried_and_ejected_endpoints() {
        let eps = addrs(3);
        let be = Backend::new("x", eps.clone());
        let picks: Vec<_> = (0..3).map(|_| be.choose(&[]).unwrap().0).collect();
        assert_eq!(picks, eps, "round robin");
        for _ in 0..3 {
            let (a, _) = be.choose(&[eps[0], eps[1]]).unwrap();
            assert_eq!(a, eps[2], "the only untried endpoint");
        }
        // Eject endpoint 1: never chosen while others are usable.
        let (_, s) = be.choose(&[eps[0], eps[2]]).unwrap();
        for _ in 0..3 {
            s.connect_failed();
        }
        for _ in 0..6 {
            assert_ne!(be.choose(&[]).unwrap().0, eps[1]);
        }
        // Only the ejected one left untried: chosen anyway (fail open).
        assert_eq!(be.choose(&[eps[0], eps[2]]).unwrap().0, eps[1]);
        // All tried: still an answer.
        assert!(be.choose(&eps).is_some());
        assert!(Backend::new("none", vec![]).choose(&[]).is_none());
    }

    #[test]
    fn least_request_prefers_fewer_in_flight() {
        let policy = Arc::new(Policy {
            load_balance: LoadBalance::LeastRequest,
            ..Policy::default()
        });
        let eps = addrs(2);
        let be = Backend::new("x", eps.clone()).with_policy(policy, UpstreamProtocol::Http1);
        // Endpoint 0 busy with 5 requests: with two endpoints, both are always drawn.
        let (_, s0) = be.choose(&[eps[1]]).unwrap();
        let busy: Vec<_> = (0..5).map(|_| s0.start()).collect();
        for _ in 0..20 {
            assert_eq!(be.choose(&[]).unwrap().0, eps[1]);
        }
        drop(busy);
        // Balanced load spreads over both.
        let mut seen = HashSet::new();
        let mut guards = Vec::new();
        for _ in 0..20 {
            let (a, s) = be.choose(&[]).unwrap();
            guards.push(s.start());
            seen.insert(a);
        }
        assert_eq!(seen.len(), 2);
        let (a, b) = (be.states[0].in_flight(), be.states[1].in_flight());
        assert!(a.abs_diff(b) <= 1, "in flight {a} vs {b}");
    }

    #[test]
    fn tls_hosts_exact_and_wildcard() {
        let t = RouteTable::default().with_tls_hosts(["secure.example", "*.wild.example"]);
        assert!(t.has_tls("secure.example"));
        assert!(t.has_tls("Secure.Example:80"));
        assert!(t.has_tls("a.wild.example"));
        assert!(!t.has_tls("a.b.wild.example"));
        assert!(!t.has_tls("wild.example"));
        assert!(!t.has_tls("other.example"));
        assert!(!RouteTable::default().has_tls("secure.example"));
    }
}

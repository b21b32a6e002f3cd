//! Host/path matching (`routes::RouteTable::lookup`) against an independent oracle.
//!
//! The input builds a rule set from a small alphabet of hosts and path elements (so rules collide,
//! nest and shadow each other) plus a few arbitrary strings, and a list of requests. For every
//! request the table's answer must equal the oracle's, which restates the Ingress v1 rules of
//! `shared/reference/ingress-v1.md` (Kubernetes "Ingress" concept page, "Path types", "Multiple
//! matches", "Hostname wildcards") in a different form:
//! - host level: exact host → `*.suffix` with exactly one more label → host-less rules (the first
//!   level that has rules is used, drawbridge's documented no-fall-through);
//! - `Prefix` matches whole `/`-separated elements, trailing slashes ignored; `Exact` is equality;
//! - the longest path wins, `Exact` before `Prefix` at equal length, then the earlier rule;
//! - nothing matched: the default backend, else none (404).
//!
//! Also: the answer does not depend on the case of the host, a `:port` suffix or a trailing dot,
//! and arbitrary (non-UTF-8-derived, bracketed, empty) hosts and paths never panic.
#![no_main]

use std::sync::Arc;

use arbitrary::{Arbitrary, Result, Unstructured};
use ingress_gateway::routes::{Backend, HostMatch, PathType, Route, RouteTable};
use libfuzzer_sys::fuzz_target;

const HOSTS: &[&str] = &[
    "a.test",
    "b.test",
    "x.a.test",
    "y.x.a.test",
    "test",
    "A.Test",
];
const RULE_HOSTS: &[&str] = &[
    "",
    "a.test",
    "b.test",
    "x.a.test",
    "*.a.test",
    "*.test",
    "*.x.a.test",
    "A.TEST.",
];
const ELEMS: &[&str] = &["", "a", "b", "aa", "a.b"];

#[derive(Debug)]
struct Rule {
    host: String,
    path: String,
    path_type: PathType,
}

fn pick<'a>(u: &mut Unstructured<'_>, from: &[&'a str]) -> Result<&'a str> {
    Ok(from[u.choose_index(from.len())?])
}

/// A path from the element alphabet (`/a//b/`), or (1 in 8) an arbitrary string.
fn path(u: &mut Unstructured<'_>) -> Result<String> {
    if u.ratio(1, 8)? {
        return String::arbitrary(u);
    }
    let n = u.int_in_range(0..=4)?;
    let mut p = String::new();
    for _ in 0..n {
        p.push('/');
        p.push_str(pick(u, ELEMS)?);
    }
    if n == 0 || u.ratio(1, 4)? {
        p.push('/');
    }
    Ok(p)
}

fn rule(u: &mut Unstructured<'_>) -> Result<Rule> {
    let host = if u.ratio(1, 10)? {
        String::arbitrary(u)?
    } else {
        pick(u, RULE_HOSTS)?.to_string()
    };
    let path_type = if bool::arbitrary(u)? {
        PathType::Exact
    } else {
        PathType::Prefix
    };
    Ok(Rule {
        host,
        path: path(u)?,
        path_type,
    })
}

// === oracle ===

fn host_level(rule: &HostMatch, request: &str) -> u8 {
    match rule {
        HostMatch::Exact(h) if h == request => 0,
        HostMatch::Wildcard(suffix) => match request.split_once('.') {
            Some((first, rest)) if !first.is_empty() && rest == suffix => 1,
            _ => 3,
        },
        HostMatch::Any => 2,
        HostMatch::Exact(_) => 3,
    }
}

/// Path elements with trailing slashes ignored: `/a/b/` → ["", "a", "b"].
fn elements(p: &str) -> Vec<&str> {
    p.trim_end_matches('/').split('/').collect()
}

fn path_matches(rule: &Rule, request: &str) -> bool {
    match rule.path_type {
        PathType::Exact => rule.path == request,
        PathType::Prefix => {
            let (r, q) = (elements(&rule.path), elements(request));
            r.len() <= q.len() && r.iter().zip(&q).all(|(a, b)| a == b)
        }
    }
}

/// Length the spec compares ("longest path"): trailing slashes do not count for `Prefix`.
fn path_len(rule: &Rule) -> usize {
    match rule.path_type {
        PathType::Exact => rule.path.len(),
        PathType::Prefix => rule.path.trim_end_matches('/').len(),
    }
}

fn oracle(rules: &[(HostMatch, Rule)], default: bool, host: &str, path: &str) -> Option<String> {
    let host = host.to_ascii_lowercase();
    let levels: Vec<u8> = rules.iter().map(|(h, _)| host_level(h, &host)).collect();
    // Exact before wildcard before host-less; a level counts when it has rules at all.
    let level = [0u8, 1, 2].into_iter().find(|l| levels.contains(l));
    let winner = level.and_then(|level| {
        rules
            .iter()
            .enumerate()
            .filter(|(i, (_, r))| levels[*i] == level && path_matches(r, path))
            // max by (length, Exact), earliest index on ties.
            .min_by_key(|(i, (_, r))| {
                (
                    std::cmp::Reverse(path_len(r)),
                    r.path_type == PathType::Prefix,
                    *i,
                )
            })
            .map(|(i, _)| format!("r{i}"))
    });
    winner.or_else(|| default.then(|| "default".to_string()))
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(n) = u.int_in_range(0..=24u8) else {
        return;
    };
    let mut rules = Vec::new();
    for _ in 0..n {
        let Ok(r) = rule(&mut u) else { return };
        rules.push((HostMatch::from_ingress_host(Some(&r.host)), r));
    }
    let default = bool::arbitrary(&mut u).unwrap_or(false);
    let table = RouteTable::new(
        rules.iter().enumerate().map(|(i, (host, r))| Route {
            host: host.clone(),
            path: r.path.clone(),
            path_type: r.path_type,
            backend: Arc::new(Backend::new(format!("r{i}"), vec![])),
        }),
        default.then(|| Arc::new(Backend::new("default", vec![]))),
    );
    assert_eq!(table.len(), rules.len());
    let name = |host: &str, path: &str| table.lookup(host, path).map(|b| b.name.clone());

    while !u.is_empty() {
        let Ok(structured) = bool::arbitrary(&mut u) else {
            return;
        };
        if !structured {
            // Anything at all: must not panic.
            let (Ok(h), Ok(p)) = (String::arbitrary(&mut u), String::arbitrary(&mut u)) else {
                return;
            };
            let _ = table.lookup(&h, &p);
            continue;
        }
        let (Ok(host), Ok(p)) = (pick(&mut u, HOSTS), path(&mut u)) else {
            return;
        };
        // Rule paths and hosts are the interesting requests too.
        let (host, p) = match (u.ratio(1, 3), rules.is_empty()) {
            (Ok(true), false) => {
                let Ok(i) = u.choose_index(rules.len()) else {
                    return;
                };
                let r = &rules[i].1;
                let h = match &rules[i].0 {
                    HostMatch::Exact(h) => h.clone(),
                    HostMatch::Wildcard(s) => format!("w.{s}"),
                    HostMatch::Any => host.to_string(),
                };
                (h, r.path.clone())
            }
            _ => (host.to_string(), p),
        };
        if host.contains([':', '[']) || host.ends_with('.') {
            // The oracle does not restate port/bracket stripping; lookup must still not panic.
            let _ = table.lookup(&host, &p);
            continue;
        }
        let expected = oracle(&rules, default, &host, &p);
        assert_eq!(
            name(&host, &p),
            expected,
            "host {host:?} path {p:?} rules {rules:?}"
        );
        assert_eq!(
            name(&host.to_ascii_uppercase(), &p),
            expected,
            "upper-case host {host:?}"
        );
        assert_eq!(
            name(&format!("{host}:8443"), &p),
            expected,
            "host {host:?} with port"
        );
        assert_eq!(
            name(&format!("{host}."), &p),
            expected,
            "host {host:?} with trailing dot"
        );
    }
});

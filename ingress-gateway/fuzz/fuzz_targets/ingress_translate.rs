//! Ingress → route-table translation on generated, often malformed objects: the incremental
//! `config::Translator` the binary runs (discovery keeps one across ticks) against a from-scratch
//! `config::translate` of the same world.
//!
//! The input is a sequence of steps on a world of IngressClasses, Services (ClusterIP and
//! ExternalName), EndpointSlices and Ingresses, built as Kubernetes JSON (the form the manifest
//! directory and the API deliver), choosing fields from small alphabets so that rules collide
//! across Ingresses, plus arbitrary strings for hosts, paths, pathTypes, port names, addresses and
//! annotation values. A step upserts an object (a new `Arc`, as a watch event or manifest edit
//! gives), deletes one, re-creates one with identical content (a relist), changes what an
//! ExternalName resolved to, or changes the order the stores list objects in. After every step
//! one long-lived `Translator` translates the world, and its model must equal a from-scratch
//! translation of it: served set, TLS bindings, problems, conflicts, rule count, and for every
//! probe request the backend (name, endpoints, policy, protocol), whether the host has TLS, and
//! which probes share one `Backend` (rules of one Ingress and host naming one Service port do).
//! Translating the unchanged world again must give back the very same `Arc<Backend>`s (the
//! reuse the Translator promises). On the final world, also:
//! - translation never panics (bad input is reported and skipped: house rule);
//! - it is level-triggered: the model does not depend on the order the store lists objects in
//!   (served set, TLS bindings, problems, and the backend answering every probe request);
//! - an Ingress is either served or reported, never both, and only Ingresses of our class are;
//! - every `Exact` rule with a plain host of a served Ingress is routed somewhere (its own
//!   backend or an older Ingress's identical rule).
#![no_main]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arbitrary::{Arbitrary, Result, Unstructured};
use ingress_gateway::config::{self, Input, Model, Translator};
use ingress_gateway::policy::{Policy, UpstreamProtocol};
use ingress_gateway::routes::Backend;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

const NAMESPACES: &[&str] = &["default", "other"];
const HOSTS: &[&str] = &[
    "", "a.test", "b.test", "x.a.test", "*.a.test", "A.Test", "bad_host", "*.", "-a.test",
];
const HOSTS_OK: &[&str] = &["", "a.test", "b.test", "x.a.test", "*.a.test", "A.Test"];
const PATHS_OK: &[&str] = &["/", "/a", "/a/", "/a/b", "/b"];
const PATH_TYPES_OK: &[&str] = &["Exact", "Prefix", "ImplementationSpecific"];
const PATHS: &[&str] = &["/", "/a", "/a/", "/a/b", "/b", "", "a", "//"];
const PATH_TYPES: &[&str] = &["Exact", "Prefix", "ImplementationSpecific", "Regex", ""];
const SERVICES: &[&str] = &["web", "api", "ext", "missing", ""];
/// Names Services get (so the steps replace and delete the same few).
const SERVICE_NAMES: &[&str] = &["web", "api", "ext"];
const EXTERNAL_NAMES: &[&str] = &["ext.test", "EXT.test.", "other.test", ""];
const EXTERNAL_ADDRESSES: &[&str] = &["192.0.2.10", "192.0.2.11", "2001:db8::10"];
const ANNOTATIONS: &[(&str, &[&str])] = &[
    (
        "drawbridge.dev/backend-protocol",
        &["HTTP", "H2C", "GRPC", "bogus"],
    ),
    ("drawbridge.dev/proxy-read-timeout", &["5", "-1", "x"]),
    (
        "drawbridge.dev/load-balance",
        &["round_robin", "ewma", "least_request"],
    ),
    ("drawbridge.dev/ssl-redirect", &["true", "false", "maybe"]),
];
const APP_PROTOCOLS: &[&str] = &["kubernetes.io/h2c", "kubernetes.io/ws", "grpc", "odd"];
const PORT_NAMES: &[&str] = &["http", "grpc", ""];
const ADDRESSES: &[&str] = &["192.0.2.1", "192.0.2.2", "2001:db8::1", "not-an-ip", ""];
const TIMESTAMPS: &[&str] = &["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"];

fn pick<'a>(u: &mut Unstructured<'_>, from: &[&'a str]) -> Result<&'a str> {
    Ok(from[u.choose_index(from.len())?])
}

thread_local! {
    /// Generating a well-formed Ingress (valid alphabets only, no arbitrary strings): most
    /// Ingresses are, so that the steps change served routes (a malformed one is skipped whole).
    static STRICT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn strict() -> bool {
    STRICT.with(std::cell::Cell::get)
}

/// `loose` normally; `strict` while a well-formed Ingress is generated.
fn alphabet<'a>(loose: &'a [&'a str], strict_: &'a [&'a str]) -> &'a [&'a str] {
    if strict() { strict_ } else { loose }
}

/// From the alphabet, or (1 in 10, not while strict) an arbitrary string.
fn text(u: &mut Unstructured<'_>, from: &[&str]) -> Result<String> {
    if !strict() && u.ratio(1, 10)? {
        String::arbitrary(u)
    } else {
        Ok(pick(u, from)?.to_string())
    }
}

fn backend(u: &mut Unstructured<'_>) -> Result<Value> {
    let kind = if strict() {
        pick(u, &["2", "4", "5"])?.parse().unwrap_or(2)
    } else {
        u.int_in_range(0..=5u8)?
    };
    Ok(match kind {
        0 => json!({"resource": {"apiGroup": "example.test", "kind": "Bucket", "name": "b"}}),
        1 => json!({"service": {"name": text(u, SERVICES)?}}),
        2 => {
            json!({"service": {"name": text(u, SERVICES)?, "port": {"name": text(u, PORT_NAMES)?}}})
        }
        3 => {
            json!({"service": {"name": text(u, SERVICES)?, "port": {"number": i32::arbitrary(u)?}}})
        }
        _ => {
            json!({"service": {"name": text(u, SERVICES)?, "port": {"number": pick(u, &["80", "8080"])?.parse::<i32>().unwrap_or(80)}}})
        }
    })
}

fn ingress(u: &mut Unstructured<'_>, i: usize) -> Result<Value> {
    let strict = u.ratio(2, 3)?;
    STRICT.with(|s| s.set(strict));
    let ingress = ingress_inner(u, i);
    STRICT.with(|s| s.set(false));
    ingress
}

fn ingress_inner(u: &mut Unstructured<'_>, i: usize) -> Result<Value> {
    let mut metadata = json!({
        "namespace": pick(u, NAMESPACES)?,
        "name": format!("ing{i}"),
        "creationTimestamp": pick(u, TIMESTAMPS)?,
    });
    let mut spec = serde_json::Map::new();
    let mut annotations = serde_json::Map::new();
    if u.ratio(1, 4)? {
        let (key, values) = ANNOTATIONS[u.choose_index(ANNOTATIONS.len())?];
        annotations.insert(key.into(), json!(text(u, values)?));
    }
    match u.int_in_range(0..=4u8)? {
        0 => {}
        1 => {
            annotations.insert(
                "kubernetes.io/ingress.class".into(),
                json!(pick(u, &["drawbridge", "nginx"])?),
            );
        }
        2 => {
            spec.insert("ingressClassName".into(), json!("nginx"));
        }
        _ => {
            spec.insert("ingressClassName".into(), json!("drawbridge"));
        }
    }
    if u.ratio(1, 5)? {
        spec.insert("defaultBackend".into(), backend(u)?);
    }
    let mut rules = Vec::new();
    for _ in 0..u.int_in_range(0..=4u8)? {
        let mut paths = Vec::new();
        for _ in 0..u.int_in_range(0..=4u8)? {
            let mut p = json!({"pathType": text(u, alphabet(PATH_TYPES, PATH_TYPES_OK))?, "backend": backend(u)?});
            if strict() || u.ratio(7, 8)? {
                p["path"] = json!(text(u, alphabet(PATHS, PATHS_OK))?);
            }
            paths.push(p);
        }
        let mut rule = json!({"http": {"paths": paths}});
        let host = text(u, alphabet(HOSTS, HOSTS_OK))?;
        if !host.is_empty() || bool::arbitrary(u)? {
            rule["host"] = json!(host);
        }
        rules.push(rule);
    }
    spec.insert("rules".into(), json!(rules));
    let mut tls = Vec::new();
    for _ in 0..u.int_in_range(0..=2u8)? {
        tls.push(json!({"hosts": [text(u, alphabet(HOSTS, HOSTS_OK))?], "secretName": text(u, &["cert", ""])?}));
    }
    spec.insert("tls".into(), json!(tls));
    if !annotations.is_empty() {
        metadata["annotations"] = Value::Object(annotations);
    }
    Ok(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": metadata, "spec": spec}),
    )
}

fn service(u: &mut Unstructured<'_>, name: &str) -> Result<Value> {
    let mut ports = Vec::new();
    for _ in 0..u.int_in_range(0..=2u8)? {
        let mut port = json!({"name": text(u, PORT_NAMES)?, "port": pick(u, &["80", "8080"])?.parse::<i32>().unwrap_or(80),
                          "protocol": pick(u, &["TCP", "UDP"])?, "targetPort": pick(u, &["web", "8080"])?});
        if u.ratio(1, 4)? {
            port["appProtocol"] = json!(text(u, APP_PROTOCOLS)?);
        }
        ports.push(port);
    }
    let mut spec = json!({"ports": ports});
    if u.ratio(if name == "ext" { 3 } else { 1 }, 4)? {
        spec["type"] = json!("ExternalName");
        spec["externalName"] = json!(text(u, EXTERNAL_NAMES)?);
    }
    Ok(json!({"apiVersion": "v1", "kind": "Service",
              "metadata": {"namespace": pick(u, NAMESPACES)?, "name": name}, "spec": spec}))
}

fn slice(u: &mut Unstructured<'_>, i: usize) -> Result<Value> {
    let mut endpoints = Vec::new();
    for _ in 0..u.int_in_range(0..=3u8)? {
        endpoints.push(json!({"addresses": [text(u, ADDRESSES)?], "conditions": {
            "ready": bool::arbitrary(u)?, "serving": bool::arbitrary(u)?, "terminating": bool::arbitrary(u)?}}));
    }
    Ok(
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
              "metadata": {"namespace": pick(u, NAMESPACES)?, "name": format!("slice{i}"),
                           "labels": {"kubernetes.io/service-name": pick(u, SERVICES)?}},
              "addressType": pick(u, &["IPv4", "IPv6", "FQDN"])?,
              "ports": [{"name": text(u, PORT_NAMES)?, "port": u.int_in_range(0..=70000i32)?, "protocol": "TCP"}],
              "endpoints": endpoints}),
    )
}

fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Option<Arc<T>> {
    serde_json::from_value(v).ok().map(Arc::new)
}

/// One listing of the world, as the reflector stores give it.
#[derive(Clone, Default)]
struct Objects {
    classes: Vec<Arc<IngressClass>>,
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    ingresses: Vec<Arc<Ingress>>,
}

/// An object of the world, as the stores hold it.
#[derive(Clone)]
enum Object {
    Class(Arc<IngressClass>),
    Service(Arc<Service>),
    Slice(Arc<EndpointSlice>),
    Ingress(Arc<Ingress>),
}

impl Object {
    /// The same content in a new `Arc` (what a relist or an unchanged re-read gives).
    fn recreated(&self) -> Object {
        match self {
            Object::Class(o) => Object::Class(Arc::new((**o).clone())),
            Object::Service(o) => Object::Service(Arc::new((**o).clone())),
            Object::Slice(o) => Object::Slice(Arc::new((**o).clone())),
            Object::Ingress(o) => Object::Ingress(Arc::new((**o).clone())),
        }
    }
}

/// Store key: kind, namespace, name.
type Key = (u8, String, String);

/// The cluster as the stores see it, plus what the ExternalNames resolved to.
#[derive(Default)]
struct World {
    objects: BTreeMap<Key, Object>,
    external: HashMap<String, Vec<IpAddr>>,
    /// Listing order: rotate each kind's list by this, and reverse it when odd.
    order: usize,
}

impl World {
    fn upsert(&mut self, kind: u8, value: Value) {
        let ns = value["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let object = match kind {
            0 => parse(value).map(Object::Class),
            1 => parse(value).map(Object::Service),
            2 => parse(value).map(Object::Slice),
            _ => parse(value).map(Object::Ingress),
        };
        if let Some(object) = object {
            self.objects.insert((kind, ns, name), object);
        }
    }

    fn listing(&self) -> Objects {
        let mut o = Objects::default();
        for object in self.objects.values() {
            match object {
                Object::Class(x) => o.classes.push(x.clone()),
                Object::Service(x) => o.services.push(x.clone()),
                Object::Slice(x) => o.slices.push(x.clone()),
                Object::Ingress(x) => o.ingresses.push(x.clone()),
            }
        }
        fn arrange<T>(v: &mut [T], order: usize) {
            if !v.is_empty() {
                v.rotate_left(order % v.len());
            }
            if order % 2 == 1 {
                v.reverse();
            }
        }
        arrange(&mut o.classes, self.order);
        arrange(&mut o.services, self.order / 2);
        arrange(&mut o.slices, self.order / 3);
        arrange(&mut o.ingresses, self.order / 5);
        o
    }
}

fn class(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut class = json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "drawbridge"}, "spec": {"controller": "drawbridge.dev/ingress-gateway"}});
    if bool::arbitrary(u)? {
        class["metadata"]["annotations"] =
            json!({"ingressclass.kubernetes.io/is-default-class": "true"});
    }
    Ok(class)
}

/// The starting world: the nginx class, maybe ours, both Services, some slices and Ingresses.
fn initial(u: &mut Unstructured<'_>) -> Result<World> {
    let mut w = World::default();
    w.upsert(
        0,
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}}),
    );
    if u.ratio(3, 4)? {
        w.upsert(0, class(u)?);
    }
    for name in SERVICE_NAMES {
        w.upsert(1, service(u, name)?);
    }
    for i in 0..u.int_in_range(0..=3usize)? {
        w.upsert(2, slice(u, i)?);
    }
    for i in 0..u.int_in_range(0..=6usize)? {
        w.upsert(3, ingress(u, i)?);
    }
    Ok(w)
}

/// One change to the world.
fn step(u: &mut Unstructured<'_>, w: &mut World) -> Result<()> {
    match u.int_in_range(0..=9u8)? {
        0 | 1 => {
            let i = u.int_in_range(0..=7usize)?;
            w.upsert(3, ingress(u, i)?);
        }
        2 => {
            let name = pick(u, SERVICE_NAMES)?;
            w.upsert(1, service(u, name)?);
        }
        3 => {
            let i = u.int_in_range(0..=4usize)?;
            w.upsert(2, slice(u, i)?);
        }
        4 => w.upsert(0, class(u)?),
        5 | 6 => {
            // Delete, or re-create with the same content.
            if !w.objects.is_empty() {
                let i = u.choose_index(w.objects.len())?;
                let key = w.objects.keys().nth(i).cloned().expect("index in range");
                if bool::arbitrary(u)? {
                    w.objects.remove(&key);
                } else {
                    let again = w.objects[&key].recreated();
                    w.objects.insert(key, again);
                }
            }
        }
        7 => {
            // An ExternalName's answer changes (or it stops resolving).
            let name = pick(u, &["ext.test", "other.test"])?.to_string();
            let mut addrs: Vec<IpAddr> = Vec::new();
            for a in EXTERNAL_ADDRESSES {
                if bool::arbitrary(u)? {
                    addrs.push(a.parse().expect("literal address"));
                }
            }
            if addrs.is_empty() && bool::arbitrary(u)? {
                w.external.remove(&name);
            } else {
                w.external.insert(name, addrs);
            }
        }
        _ => w.order = usize::from(u.int_in_range(0..=u8::MAX)?),
    }
    Ok(())
}

#[allow(clippy::needless_update)]
fn input<'a>(o: &'a Objects, external: &'a HashMap<String, Vec<IpAddr>>) -> Input<'a> {
    Input {
        ingresses: &o.ingresses,
        ingress_classes: &o.classes,
        services: &o.services,
        endpoint_slices: &o.slices,
        external_names: Some(external),
        // Fields added later keep their defaults.
        ..Default::default()
    }
}

/// Probe requests: every rule's host (a wildcard host with one label prepended) and path.
fn probes(o: &Objects) -> Vec<(String, String)> {
    let mut out = vec![("unknown.test".to_string(), "/".to_string())];
    for ing in &o.ingresses {
        for rule in ing.spec.iter().flat_map(|s| s.rules.iter().flatten()) {
            let host = rule.host.clone().unwrap_or_default();
            let host = host
                .strip_prefix("*.")
                .map_or(host.clone(), |s| format!("w.{s}"));
            for p in rule.http.iter().flat_map(|h| &h.paths) {
                let path = p.path.clone().unwrap_or_default();
                out.push((host.clone(), format!("{path}/x")));
                out.push((host.clone(), path));
            }
        }
    }
    out
}

/// What a probe gets: backend name, endpoints, policy, protocol.
type Answer = Option<(String, Vec<SocketAddr>, Policy, UpstreamProtocol)>;

fn answers(m: &Model, probes: &[(String, String)]) -> Vec<Answer> {
    probes
        .iter()
        .map(|(h, p)| {
            m.routes.lookup(h, p).map(|b| {
                (
                    b.name.clone(),
                    b.endpoints().to_vec(),
                    (*b.policy).clone(),
                    b.protocol,
                )
            })
        })
        .collect()
}

/// Everything observable about a model at the probes (see the module docs).
#[derive(Debug, PartialEq)]
struct View {
    served: BTreeSet<config::ObjectRef>,
    tls: Vec<config::TlsBinding>,
    problems: Vec<config::Error>,
    conflicts: Vec<config::Conflict>,
    rules: usize,
    answers: Vec<Answer>,
    has_tls: Vec<bool>,
    /// For each probe, the index of the first probe answered by the same `Arc<Backend>`.
    sharing: Vec<Option<usize>>,
}

fn backends<'m>(m: &'m Model, probes: &[(String, String)]) -> Vec<Option<&'m Arc<Backend>>> {
    probes.iter().map(|(h, p)| m.routes.lookup(h, p)).collect()
}

fn view(m: &Model, probes: &[(String, String)]) -> View {
    let found = backends(m, probes);
    let sharing = found
        .iter()
        .map(|b| {
            let b = (*b)?;
            found
                .iter()
                .position(|c| c.is_some_and(|c| Arc::ptr_eq(b, c)))
        })
        .collect();
    View {
        served: m.served.clone(),
        tls: m.tls.clone(),
        problems: m.problems.clone(),
        conflicts: m.conflicts.clone(),
        rules: m.routes.len(),
        answers: answers(m, probes),
        has_tls: probes.iter().map(|(h, _)| m.routes.has_tls(h)).collect(),
        sharing,
    }
}

fn reported(m: &Model) -> BTreeSet<String> {
    m.problems.iter().map(|e| e.ingress().to_string()).collect()
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(mut world) = initial(&mut u) else {
        return;
    };
    let mut translator = Translator::default();
    for n in 0..32 {
        if n > 0 && (u.is_empty() || step(&mut u, &mut world).is_err()) {
            break;
        }
        let o = world.listing();
        let probes = probes(&o);
        let incremental = translator.translate(input(&o, &world.external));
        let scratch = config::translate(input(&o, &world.external));
        let (got, want) = (view(&incremental, &probes), view(&scratch, &probes));
        assert_eq!(
            got, want,
            "step {n}: incremental translation differs from a from-scratch one"
        );
        // Nothing changed: every backend is reused as is.
        let again = translator.translate(input(&o, &world.external));
        for (i, (a, b)) in backends(&incremental, &probes)
            .into_iter()
            .zip(backends(&again, &probes))
            .enumerate()
        {
            match (a, b) {
                (Some(a), Some(b)) => assert!(
                    Arc::ptr_eq(a, b),
                    "step {n}: probe {:?} got a new Backend for an unchanged world",
                    probes[i]
                ),
                (None, None) => {}
                _ => panic!("step {n}: probe {:?} answered differently", probes[i]),
            }
        }
        assert_eq!(
            translator.len(),
            scratch.served.len() + scratch.problems.len()
        );
    }

    // The final world: served xor reported; only ours; Exact rules routed.
    let mut o = world.listing();
    let m = config::translate(input(&o, &world.external));
    let probes = probes(&o);
    let reported1 = reported(&m);
    for (ns, name) in &m.served {
        let key = format!("{ns}/{name}");
        assert!(
            !reported1.contains(&key),
            "{key} both served and reported: {:?}",
            m.problems
        );
        let ing = o.ingresses.iter().find(|i| {
            i.metadata.namespace.as_deref() == Some(ns) && i.metadata.name.as_deref() == Some(name)
        });
        let ing = ing.expect("served Ingress exists");
        assert!(
            config::is_ours(ing, &o.classes),
            "{key} served but not ours"
        );

        // Exact rules with a plain host are routed.
        for rule in ing.spec.iter().flat_map(|s| s.rules.iter().flatten()) {
            let Some(host) = rule
                .host
                .as_deref()
                .filter(|h| !h.is_empty() && !h.starts_with('*'))
            else {
                continue;
            };
            for p in rule
                .http
                .iter()
                .flat_map(|h| &h.paths)
                .filter(|p| p.path_type == "Exact")
            {
                let path = p.path.as_deref().unwrap_or_default();
                assert!(
                    m.routes.lookup(host, path).is_some(),
                    "{key}: Exact {host}{path} not routed"
                );
            }
        }
    }

    // Order of the stores does not matter.
    let before = view(&m, &probes);
    o.ingresses.reverse();
    o.slices.reverse();
    o.services.reverse();
    o.classes.reverse();
    let m2 = config::translate(input(&o, &world.external));
    assert_eq!(
        before,
        view(&m2, &probes),
        "translation depends on store order"
    );
});

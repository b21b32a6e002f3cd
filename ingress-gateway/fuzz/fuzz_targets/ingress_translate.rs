//! Ingress → route-table translation (`config::translate`) on generated, often malformed objects.
//!
//! The input builds IngressClasses, Services, EndpointSlices and Ingresses as Kubernetes JSON (the
//! form the manifest directory and the API deliver), choosing fields from small alphabets so that
//! rules collide across Ingresses, plus arbitrary strings for hosts, paths, pathTypes, port names
//! and addresses. Properties, for every input:
//! - translation never panics (bad input is reported and skipped: house rule);
//! - it is level-triggered: the model does not depend on the order the store lists objects in
//!   (served set, TLS bindings, problems, and the backend answering every probe request);
//! - an Ingress is either served or reported, never both, and only Ingresses of our class are;
//! - every `Exact` rule with a plain host of a served Ingress is routed somewhere (its own
//!   backend or an older Ingress's identical rule).
#![no_main]

use std::collections::BTreeSet;
use std::sync::Arc;

use arbitrary::{Arbitrary, Result, Unstructured};
use ingress_gateway::config::{self, Input, Model};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

const NAMESPACES: &[&str] = &["default", "other"];
const HOSTS: &[&str] = &[
    "", "a.test", "b.test", "x.a.test", "*.a.test", "A.Test", "bad_host", "*.", "-a.test",
];
const PATHS: &[&str] = &["/", "/a", "/a/", "/a/b", "/b", "", "a", "//"];
const PATH_TYPES: &[&str] = &["Exact", "Prefix", "ImplementationSpecific", "Regex", ""];
const SERVICES: &[&str] = &["web", "api", "missing", ""];
const PORT_NAMES: &[&str] = &["http", "grpc", ""];
const ADDRESSES: &[&str] = &["192.0.2.1", "192.0.2.2", "2001:db8::1", "not-an-ip", ""];
const TIMESTAMPS: &[&str] = &["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"];

fn pick<'a>(u: &mut Unstructured<'_>, from: &[&'a str]) -> Result<&'a str> {
    Ok(from[u.choose_index(from.len())?])
}

/// From the alphabet, or (1 in 10) an arbitrary string.
fn text(u: &mut Unstructured<'_>, from: &[&str]) -> Result<String> {
    if u.ratio(1, 10)? {
        String::arbitrary(u)
    } else {
        Ok(pick(u, from)?.to_string())
    }
}

fn backend(u: &mut Unstructured<'_>) -> Result<Value> {
    Ok(match u.int_in_range(0..=5u8)? {
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
    let mut metadata = json!({
        "namespace": pick(u, NAMESPACES)?,
        "name": format!("ing{i}"),
        "creationTimestamp": pick(u, TIMESTAMPS)?,
    });
    let mut spec = serde_json::Map::new();
    match u.int_in_range(0..=4u8)? {
        0 => {}
        1 => {
            metadata["annotations"] =
                json!({"kubernetes.io/ingress.class": pick(u, &["drawbridge", "nginx"])?});
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
            let mut p = json!({"pathType": text(u, PATH_TYPES)?, "backend": backend(u)?});
            if u.ratio(7, 8)? {
                p["path"] = json!(text(u, PATHS)?);
            }
            paths.push(p);
        }
        let mut rule = json!({"http": {"paths": paths}});
        let host = text(u, HOSTS)?;
        if !host.is_empty() || bool::arbitrary(u)? {
            rule["host"] = json!(host);
        }
        rules.push(rule);
    }
    spec.insert("rules".into(), json!(rules));
    let mut tls = Vec::new();
    for _ in 0..u.int_in_range(0..=2u8)? {
        tls.push(json!({"hosts": [text(u, HOSTS)?], "secretName": text(u, &["cert", ""])?}));
    }
    spec.insert("tls".into(), json!(tls));
    Ok(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": metadata, "spec": spec}),
    )
}

fn service(u: &mut Unstructured<'_>, name: &str) -> Result<Value> {
    let mut ports = Vec::new();
    for _ in 0..u.int_in_range(0..=2u8)? {
        ports.push(json!({"name": text(u, PORT_NAMES)?, "port": pick(u, &["80", "8080"])?.parse::<i32>().unwrap_or(80),
                          "protocol": pick(u, &["TCP", "UDP"])?, "targetPort": pick(u, &["web", "8080"])?}));
    }
    Ok(json!({"apiVersion": "v1", "kind": "Service",
              "metadata": {"namespace": pick(u, NAMESPACES)?, "name": name}, "spec": {"ports": ports}}))
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

struct Objects {
    classes: Vec<Arc<IngressClass>>,
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    ingresses: Vec<Arc<Ingress>>,
}

fn objects(u: &mut Unstructured<'_>) -> Result<Objects> {
    let mut classes = vec![
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}}),
    ];
    if u.ratio(3, 4)? {
        let mut class = json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "drawbridge"}, "spec": {"controller": "drawbridge.dev/ingress-gateway"}});
        if bool::arbitrary(u)? {
            class["metadata"]["annotations"] =
                json!({"ingressclass.kubernetes.io/is-default-class": "true"});
        }
        classes.push(class);
    }
    let services = ["web", "api"]
        .iter()
        .map(|n| service(u, n))
        .collect::<Result<Vec<_>>>()?;
    let slices = (0..u.int_in_range(0..=3usize)?)
        .map(|i| slice(u, i))
        .collect::<Result<Vec<_>>>()?;
    let ingresses = (0..u.int_in_range(0..=6usize)?)
        .map(|i| ingress(u, i))
        .collect::<Result<Vec<_>>>()?;
    Ok(Objects {
        classes: classes.into_iter().filter_map(parse).collect(),
        services: services.into_iter().filter_map(parse).collect(),
        slices: slices.into_iter().filter_map(parse).collect(),
        ingresses: ingresses.into_iter().filter_map(parse).collect(),
    })
}

#[allow(clippy::needless_update)]
fn model(o: &Objects) -> Model {
    config::translate(Input {
        ingresses: &o.ingresses,
        ingress_classes: &o.classes,
        services: &o.services,
        endpoint_slices: &o.slices,
        // Fields added later keep their defaults.
        ..Default::default()
    })
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

type Answer = Option<(String, Vec<std::net::SocketAddr>)>;

fn answers(m: &Model, probes: &[(String, String)]) -> Vec<Answer> {
    probes
        .iter()
        .map(|(h, p)| {
            m.routes
                .lookup(h, p)
                .map(|b| (b.name.clone(), b.endpoints().to_vec()))
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(mut o) = objects(&mut u) else { return };
    let m = model(&o);
    let probes = probes(&o);

    // Served xor reported; only ours.
    let reported: BTreeSet<String> = m.problems.iter().map(|e| e.ingress().to_string()).collect();
    for (ns, name) in &m.served {
        let key = format!("{ns}/{name}");
        assert!(
            !reported.contains(&key),
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
    let before = (
        m.served.clone(),
        m.tls.clone(),
        reported,
        answers(&m, &probes),
    );
    o.ingresses.reverse();
    o.slices.reverse();
    o.services.reverse();
    o.classes.reverse();
    let m2 = model(&o);
    let reported2: BTreeSet<String> = m2
        .problems
        .iter()
        .map(|e| e.ingress().to_string())
        .collect();
    let after = (
        m2.served.clone(),
        m2.tls.clone(),
        reported2,
        answers(&m2, &probes),
    );
    assert_eq!(before, after, "translation depends on store order");
});

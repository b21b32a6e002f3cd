//! End to end through the real binary: manifests in a temp dir, origins on 127.0.0.x, real HTTP
//! and TLS clients. Every step is bounded by a timeout; processes are killed on drop.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

fn path(p: &str, path_type: &str, service: &str, port: Value) -> Value {
    json!({"path": p, "pathType": path_type, "backend": {"service": {"name": service, "port": port}}})
}

fn ingress(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
           "metadata": {"namespace": "default", "name": name}, "spec": spec})
}

/// `ingress` with `drawbridge.dev/ssl-redirect: "false"`: its TLS hosts stay reachable over HTTP.
fn no_redirect(mut ingress: Value) -> Value {
    ingress["metadata"]["annotations"] = json!({"drawbridge.dev/ssl-redirect": "false"});
    ingress
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_tls_headers_and_status() {
    let a = Origin::start("a", "127.0.0.2").await;
    let b = Origin::start("b", "127.0.0.3").await;
    let ca = TestCa::new();
    let (site_crt, site_key) = ca.issue(&["a.example.test"]);
    let (wild_crt, wild_key) = ca.issue(&["*.wild.test"]);

    let mut objects = vec![
        mk_class(),
        mk_service("web-a"),
        mk_service("web-b"),
        mk_service("empty"),
        mk_tls_secret("site-cert", &site_crt, &site_key),
        mk_tls_secret("wild-cert", &wild_crt, &wild_key),
        mk_tls_secret("broken-cert", "not a certificate", "not a key"),
        no_redirect(ingress(
            "site",
            json!({
                "ingressClassName": "drawbridge",
                "tls": [
                    {"hosts": ["a.example.test"], "secretName": "site-cert"},
                    {"hosts": ["*.wild.test"], "secretName": "wild-cert"},
                    {"hosts": ["broken.test"], "secretName": "broken-cert"},
                ],
                "rules": [
                    {"host": "a.example.test", "http": {"paths": [
                        path("/", "Prefix", "web-a", json!({"number": 80})),
                        path("/b", "Prefix", "web-b", json!({"name": "http"})),
                        path("/exact", "Exact", "web-b", json!({"number": 80})),
                    ]}},
                    {"host": "*.wild.test", "http": {"paths": [path("/", "Prefix", "web-b", json!({"number": 80}))]}},
                    {"host": "empty.test", "http": {"paths": [path("/", "Prefix", "empty", json!({"number": 80}))]}},
                    {"host": "broken.test", "http": {"paths": [path("/", "Prefix", "web-a", json!({"number": 80}))]}},
                ],
            }),
        )),
        // A second Ingress adding a path to the same host.
        no_redirect(ingress(
            "site-extra",
            json!({"ingressClassName": "drawbridge", "rules": [
                {"host": "a.example.test", "http": {"paths": [path("/extra", "Prefix", "web-b", json!({"number": 80}))]}},
            ]}),
        )),
        // Another controller's Ingress: ignored entirely.
        ingress(
            "foreign",
            json!({"ingressClassName": "nginx", "rules": [
                {"host": "other.test", "http": {"paths": [path("/", "Prefix", "web-a", json!({"number": 80}))]}},
            ]}),
        ),
        // Malformed: skipped, the rest keeps working.
        ingress(
            "malformed",
            json!({"ingressClassName": "drawbridge", "rules": [
                {"host": "bad.test", "http": {"paths": [path("/", "Regex", "web-a", json!({"number": 80}))]}},
            ]}),
        ),
        // The publish Service with its external address.
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"namespace": "drawbridge-system", "name": "ingress-gateway"},
               "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80}]},
               "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}}),
    ];
    objects.extend(mk_slices("web-a", &[&a]));
    objects.extend(mk_slices("web-b", &[&b]));
    let gw = Gateway::start(&objects).await;

    // Host/path routing, Host preserved, forwarding headers.
    let r = get(&gw, "a.example.test", "/anything", &[]).await;
    assert_eq!((r.status, r.origin()), (200, Some("a")), "{r:?}");
    assert_eq!(r.field("host"), Some("a.example.test"));
    assert_eq!(r.field("path"), Some("/anything"));
    assert_eq!(r.field("xff"), Some("127.0.0.1"));
    assert_eq!(r.field("xfp"), Some("http"));
    let r = get(
        &gw,
        "A.Example.Test:8080",
        "/b/c",
        &[("x-forwarded-for", "203.0.113.9")],
    )
    .await;
    assert_eq!(
        r.origin(),
        Some("b"),
        "port name, case-insensitive host, port ignored: {r:?}"
    );
    assert_eq!(r.field("host"), Some("A.Example.Test:8080"));
    assert_eq!(r.field("xff"), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(
        get(&gw, "a.example.test", "/bb", &[]).await.origin(),
        Some("a"),
        "element-wise prefix"
    );
    assert_eq!(
        get(&gw, "a.example.test", "/exact", &[]).await.origin(),
        Some("b")
    );
    assert_eq!(
        get(&gw, "a.example.test", "/exact/x", &[]).await.origin(),
        Some("a")
    );
    assert_eq!(
        get(&gw, "a.example.test", "/extra/1", &[]).await.origin(),
        Some("b"),
        "second Ingress"
    );
    assert_eq!(get(&gw, "x.wild.test", "/", &[]).await.origin(), Some("b"));

    // Not found, ignored, malformed, no endpoints.
    assert_eq!(
        get(&gw, "y.x.wild.test", "/", &[]).await.status,
        404,
        "wildcard is one label"
    );
    assert_eq!(get(&gw, "unknown.test", "/", &[]).await.status, 404);
    assert_eq!(
        get(&gw, "other.test", "/", &[]).await.status,
        404,
        "other class ignored"
    );
    assert_eq!(
        get(&gw, "bad.test", "/", &[]).await.status,
        404,
        "malformed Ingress skipped"
    );
    assert_eq!(get(&gw, "empty.test", "/", &[]).await.status, 503);

    // TLS: SNI picks the certificate, verified against the test CA.
    let tls = handshake(&gw, "a.example.test", Some(ca.roots()), &[b"http/1.1"])
        .await
        .expect("verified handshake");
    assert_eq!(san_dns_names(&tls.leaf), vec!["a.example.test"]);
    let r = get_tls(tls, "a.example.test", "/").await;
    assert_eq!(
        (r.status, r.origin(), r.field("xfp")),
        (200, Some("a"), Some("https")),
        "{r:?}"
    );
    let tls = handshake(
        &gw,
        "foo.wild.test",
        Some(ca.roots()),
        &[b"h2", b"http/1.1"],
    )
    .await
    .expect("wildcard");
    assert_eq!(san_dns_names(&tls.leaf), vec!["*.wild.test"]);
    assert_eq!(tls.alpn.as_deref(), Some(&b"h2"[..]), "ALPN h2 offered");
    let r = get_h2(tls, "foo.wild.test", "/h2").await;
    assert_eq!(
        (r.status, r.origin(), r.field("xfp")),
        (200, Some("b"), Some("https")),
        "h2 by :authority: {r:?}"
    );
    assert_eq!(
        r.field("host"),
        Some("foo.wild.test"),
        "Host synthesized from :authority"
    );
    // Unknown SNI and the broken Secret's host: the self-signed default certificate.
    for sni in ["unknown.test", "broken.test"] {
        assert!(
            handshake(&gw, sni, Some(ca.roots()), &[]).await.is_err(),
            "{sni} must not verify"
        );
        let tls = handshake(&gw, sni, None, &[])
            .await
            .expect("default certificate");
        assert_eq!(
            san_dns_names(&tls.leaf),
            vec!["ingress-gateway.invalid"],
            "{sni}"
        );
    }

    // Status: served Ingresses carry the publish Service's address; others have none.
    let status_of = |name: &str| {
        std::fs::read_to_string(
            gw.state
                .join("ingresses/default")
                .join(format!("{name}.yaml")),
        )
    };
    let written = eventually(Duration::from_secs(2), || async {
        status_of("site").is_ok_and(|s| s.contains("192.0.2.10"))
            && status_of("site-extra").is_ok_and(|s| s.contains("192.0.2.10"))
    })
    .await;
    assert!(
        written,
        "status of served Ingresses: {:?}",
        status_of("site")
    );
    assert!(status_of("foreign").is_err(), "no status for another class");
    assert!(
        status_of("malformed").is_err(),
        "no status for a skipped Ingress"
    );

    // Observability: probes, per-route request counts, certificate expiry, Events.
    assert_eq!(scrape(&gw, "/healthz").await.status, 200);
    assert_eq!(scrape(&gw, "/readyz").await.status, 200);
    let site_2xx = r#"drawbridge_gateway_requests_total{ingress="default/site",host="a.example.test",method="GET",status="2xx"}"#;
    let counted = eventually(Duration::from_secs(2), || async {
        let m = scrape(&gw, "/metrics").await;
        sample(m.body.as_str().unwrap_or(""), site_2xx) == Some(6.0)
    })
    .await;
    let m = scrape(&gw, "/metrics").await;
    let text = m.body.as_str().expect("metrics text");
    assert!(
        counted,
        "six GETs to a.example.test via Ingress site:\n{text}"
    );
    for (series, at_least) in [
        (
            r#"drawbridge_gateway_requests_total{ingress="default/site-extra",host="a.example.test",method="GET",status="2xx"}"#,
            1.0,
        ),
        (
            r#"drawbridge_gateway_requests_total{ingress="default/site",host="*.wild.test",method="GET",status="2xx"}"#,
            2.0,
        ),
        (
            r#"drawbridge_gateway_requests_total{ingress="default/site",host="empty.test",method="GET",status="5xx"}"#,
            1.0,
        ),
        (
            r#"drawbridge_gateway_requests_total{ingress="",host="",method="GET",status="4xx"}"#,
            4.0,
        ),
        (
            r#"drawbridge_gateway_response_bytes_total{ingress="default/site",host="a.example.test"}"#,
            100.0,
        ),
        (
            r#"drawbridge_gateway_request_duration_seconds_count{ingress="default/site",host="a.example.test"}"#,
            6.0,
        ),
        (
            "drawbridge_gateway_upstream_connect_duration_seconds_count",
            1.0,
        ),
        ("drawbridge_gateway_config_syncs_total", 1.0),
        ("drawbridge_gateway_last_config_sync_timestamp_seconds", 1.0),
        (
            r#"drawbridge_gateway_certificate_expiry_timestamp_seconds{secret="default/site-cert"}"#,
            1.0,
        ),
    ] {
        let value = sample(text, series);
        assert!(
            value.is_some_and(|v| v >= at_least),
            "{series} = {value:?} (want >= {at_least}) in\n{text}"
        );
    }
    assert!(sample(text, r#"drawbridge_gateway_certificate_expiry_timestamp_seconds{secret="default/broken-cert"}"#).is_none());

    let events =
        std::fs::read_to_string(gw.state.join("events.log")).expect("events.log in the state dir");
    let events: Vec<Value> = events
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let has = |reason: &str, kind: &str, name: &str| {
        events
            .iter()
            .filter(|e| {
                e["reason"] == reason
                    && e["regarding"]["kind"] == kind
                    && e["regarding"]["name"] == name
            })
            .count()
    };
    assert_eq!(has("Rejected", "Ingress", "malformed"), 1, "{events:#?}");
    assert_eq!(
        has("CertificateInvalid", "Secret", "broken-cert"),
        1,
        "{events:#?}"
    );
    assert_eq!(
        has("CertificateInvalid", "Ingress", "site"),
        1,
        "{events:#?}"
    );
    assert_eq!(
        events.len(),
        3,
        "each problem once, however many passes: {events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_edits_apply_without_restart() {
    let a = Origin::start("a", "127.0.0.4").await;
    let b = Origin::start("b", "127.0.0.5").await;
    let objects = |p: &str, origins: &[&Origin]| {
        let mut o = vec![
            mk_class(),
            mk_service("web"),
            ingress(
                "live",
                json!({"ingressClassName": "drawbridge", "rules": [
                    {"host": "live.test", "http": {"paths": [path(p, "Exact", "web", json!({"number": 80}))]}},
                ]}),
            ),
        ];
        o.extend(mk_slices("web", origins));
        o
    };
    let gw = Gateway::start(&objects("/old", &[&a])).await;
    assert_eq!(get(&gw, "live.test", "/old", &[]).await.origin(), Some("a"));
    assert_eq!(get(&gw, "live.test", "/new", &[]).await.status, 404);

    // Change the path and add an endpoint; the gateway keeps running.
    gw.rewrite(&objects("/new", &[&a, &b]));
    let switched = eventually(Duration::from_secs(2), || async {
        get(&gw, "live.test", "/new", &[]).await.status == 200
            && get(&gw, "live.test", "/old", &[]).await.status == 404
    })
    .await;
    assert!(switched, "path edit applied within 2 s");
    let mut seen = BTreeSet::new();
    for _ in 0..6 {
        let r = get(&gw, "live.test", "/new", &[]).await;
        seen.insert(r.origin().map(str::to_string));
    }
    assert_eq!(
        seen,
        BTreeSet::from([Some("a".to_string()), Some("b".to_string())]),
        "round-robin over both endpoints"
    );

    // Endpoints gone: 503 right away.
    gw.rewrite(&objects("/new", &[]));
    assert!(
        eventually(Duration::from_secs(2), || async {
            get(&gw, "live.test", "/new", &[]).await.status == 503
        })
        .await
    );
}

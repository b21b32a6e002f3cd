//! Ingress semantics and backend handling through the real binary, the points of issue 3 that
//! other test files do not reach: the default IngressClass and the deprecated
//! `kubernetes.io/ingress.class` annotation, `ImplementationSpecific` as `Prefix`, ready endpoints
//! before serving-terminating ones, headless Services, least-request, the
//! `drawbridge.dev/backend-protocol` annotation, `proxy-connect-timeout`, the 3-try bound of
//! connect retries, and 503 at once when a backend has no endpoints.

mod support;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use support::*;
use tokio::net::TcpListener;

fn ingress(name: &str, annotations: Value, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
           "metadata": {"namespace": "default", "name": name, "annotations": annotations},
           "spec": spec})
}

fn rule(host: &str, path: &str, path_type: &str, service: &str) -> Value {
    json!({"host": host, "http": {"paths": [{"path": path, "pathType": path_type,
           "backend": {"service": {"name": service, "port": {"number": 80}}}}]}})
}

/// One EndpointSlice of `service` with `(address, port, ready, serving, terminating)` rows.
fn slice(service: &str, name: &str, port: u16, rows: &[(&str, bool, bool, bool)]) -> Value {
    let endpoints: Vec<Value> = rows
        .iter()
        .map(|(ip, ready, serving, terminating)| {
            json!({"addresses": [ip], "conditions":
                   {"ready": ready, "serving": serving, "terminating": terminating}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"namespace": "default", "name": name,
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
           "endpoints": endpoints})
}

fn metric(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_classes_default_and_deprecated_annotation() {
    let web = Origin::start("web", "127.0.0.36").await;
    let objects = |default: bool| {
        let mut class = mk_class();
        if default {
            class["metadata"]["annotations"] =
                json!({"ingressclass.kubernetes.io/is-default-class": "true"});
        }
        let mut o = vec![
            class,
            // Another controller's class, also claiming to be the default: not ours.
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                   "metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}}),
            mk_service("web"),
            ingress(
                "classless",
                json!({}),
                json!({"rules": [rule("classless.test", "/", "Prefix", "web")]}),
            ),
            ingress(
                "annotated",
                json!({"kubernetes.io/ingress.class": "drawbridge"}),
                json!({"rules": [rule("annotated.test", "/", "Prefix", "web")]}),
            ),
            ingress(
                "annotated-other",
                json!({"kubernetes.io/ingress.class": "nginx"}),
                json!({"rules": [rule("annotated-other.test", "/", "Prefix", "web")]}),
            ),
            // The publish Service: served Ingresses get its address in their status.
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"namespace": "drawbridge-system", "name": "ingress-gateway"},
                   "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80}]},
                   "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}}),
            ingress(
                "specific",
                json!({}),
                json!({"ingressClassName": "drawbridge",
                    "rules": [rule("specific.test", "/foo", "ImplementationSpecific", "web")]}),
            ),
        ];
        o.extend(mk_slices("web", &[&web]));
        o
    };
    let gw = Gateway::start(&objects(true)).await;
    assert_eq!(
        get(&gw, "classless.test", "/", &[]).await.status,
        200,
        "default class: class-less served"
    );
    assert_eq!(
        get(&gw, "annotated.test", "/", &[]).await.status,
        200,
        "deprecated annotation"
    );
    assert_eq!(
        get(&gw, "annotated-other.test", "/", &[]).await.status,
        404,
        "other class by annotation"
    );
    // ImplementationSpecific = Prefix, element-wise.
    for (path, want) in [
        ("/foo", 200),
        ("/foo/", 200),
        ("/foo/bar", 200),
        ("/foobar", 404),
        ("/", 404),
    ] {
        assert_eq!(
            get(&gw, "specific.test", path, &[]).await.status,
            want,
            "{path}"
        );
    }
    let status = |name: &str| {
        std::fs::read_to_string(
            gw.state
                .join("ingresses/default")
                .join(format!("{name}.yaml")),
        )
    };
    let has_address = |name: &str| status(name).is_ok_and(|s| s.contains("192.0.2.10"));
    let written = eventually(Duration::from_secs(3), || async {
        has_address("classless") && has_address("annotated") && has_address("specific")
    })
    .await;
    assert!(
        written,
        "status of served Ingresses: {:?}",
        status("classless")
    );
    assert!(
        !has_address("annotated-other"),
        "no status for another class"
    );

    // Our class not the default: class-less Ingresses are not ours.
    gw.rewrite(&objects(false));
    let dropped = eventually(Duration::from_secs(3), || async {
        get(&gw, "classless.test", "/", &[]).await.status == 404
    })
    .await;
    assert!(
        dropped,
        "class-less Ingress dropped when our class is not the default"
    );
    assert_eq!(get(&gw, "annotated.test", "/", &[]).await.status, 200);
    // No longer served: its status address is removed; the served ones keep theirs.
    let cleared = eventually(Duration::from_secs(3), || async {
        !has_address("classless")
    })
    .await;
    assert!(
        cleared,
        "status of an Ingress no longer served: {:?}",
        status("classless")
    );
    assert!(has_address("annotated"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_endpoints_first_terminating_last_headless_and_503_at_once() {
    let ready = Origin::start("ready", "127.0.0.37").await;
    let terminating = Origin::start("terminating", "127.0.0.38").await;
    let gone = Origin::start("not-serving", "127.0.0.39").await;
    // One slice per endpoint (each origin has its own port), conditions as given.
    let objects = |with_ready: bool| {
        let mut o = vec![
            mk_class(),
            mk_service("web"),
            // Headless: no ClusterIP at all; the gateway uses the endpoints anyway.
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": "headless"},
                   "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80, "targetPort": "web"}]}}),
            mk_service("empty"),
            ingress(
                "web",
                json!({}),
                json!({"ingressClassName": "drawbridge", "rules": [
                    rule("web.test", "/", "Prefix", "web"),
                    rule("headless.test", "/", "Prefix", "headless"),
                    rule("empty.test", "/", "Prefix", "empty"),
                ]}),
            ),
            slice(
                "web",
                "web-1",
                terminating.addr.port(),
                &[("127.0.0.38", false, true, true)],
            ),
            slice(
                "web",
                "web-2",
                gone.addr.port(),
                &[("127.0.0.39", false, false, true)],
            ),
            slice(
                "headless",
                "headless-0",
                ready.addr.port(),
                &[("127.0.0.37", true, true, false)],
            ),
        ];
        if with_ready {
            o.push(slice(
                "web",
                "web-0",
                ready.addr.port(),
                &[("127.0.0.37", true, true, false)],
            ));
        }
        o
    };
    let gw = Gateway::start(&objects(true)).await;
    for _ in 0..6 {
        assert_eq!(get(&gw, "web.test", "/", &[]).await.origin(), Some("ready"));
    }
    assert_eq!(
        get(&gw, "headless.test", "/", &[]).await.origin(),
        Some("ready")
    );
    // No ready endpoint left: the serving-terminating one, never the non-serving one.
    gw.rewrite(&objects(false));
    let moved = eventually(Duration::from_secs(3), || async {
        get(&gw, "web.test", "/", &[]).await.origin() == Some("terminating")
    })
    .await;
    assert!(moved);
    for _ in 0..6 {
        assert_eq!(
            get(&gw, "web.test", "/", &[]).await.origin(),
            Some("terminating")
        );
    }
    assert_eq!(gone.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    // No endpoints: 503 at once.
    let started = Instant::now();
    assert_eq!(get(&gw, "empty.test", "/", &[]).await.status, 503);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ready.name, "ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_avoids_the_busy_endpoint() {
    let a = Origin::start("a", "127.0.0.40").await;
    let b = Origin::start("b", "127.0.0.41").await;
    let mut objects = vec![
        mk_class(),
        mk_service("web"),
        ingress(
            "lr",
            json!({"drawbridge.dev/load-balance": "least-request"}),
            json!({"ingressClassName": "drawbridge", "rules": [rule("lr.test", "/", "Prefix", "web")]}),
        ),
        ingress(
            "rr",
            json!({}),
            json!({"ingressClassName": "drawbridge", "rules": [rule("rr.test", "/", "Prefix", "web")]}),
        ),
    ];
    objects.extend(mk_slices("web", &[&a, &b]));
    let gw = Gateway::start(&objects).await;
    // Hold one slow request on one endpoint; it is busy from the moment it accepted the
    // gateway's connection (the gateway counts the request in flight before connecting).
    let gw_http = gw.http;
    let slow = tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(gw_http).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/sleep/20000")
            .header("host", "lr.test")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let _ = sender.send_request(req).await;
    });
    let accepted = |o: &Origin| o.accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        eventually(STEP, || async { accepted(&a) + accepted(&b) > 0 }).await,
        "the slow request reached no endpoint"
    );
    let busy = if accepted(&a) > 0 { &a.name } else { &b.name }.clone();
    // Two endpoints: both are always the two choices, so every request avoids the busy one.
    let mut seen = BTreeSet::new();
    for _ in 0..10 {
        seen.insert(
            get(&gw, "lr.test", "/", &[])
                .await
                .origin()
                .map(str::to_string),
        );
    }
    assert!(!slow.is_finished(), "the slow request ended early");
    slow.abort();
    assert_eq!(seen.len(), 1, "least-request picked both: {seen:?}");
    assert_ne!(
        seen.into_iter().next().flatten(),
        Some(busy),
        "the busy endpoint was picked"
    );
    // Round robin (the other Ingress) alternates regardless.
    let mut rr = BTreeSet::new();
    for _ in 0..4 {
        rr.insert(
            get(&gw, "rr.test", "/", &[])
                .await
                .origin()
                .map(str::to_string),
        );
    }
    assert_eq!(rr.len(), 2);
}

/// An h2c origin reporting the protocol version it was spoken to with.
async fn h2c_origin(ip: &str) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let body = json!({"origin": "h2c", "version": format!("{:?}", req.version())});
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body.to_string()))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_protocol_annotation_connect_timeout_and_the_try_bound() {
    let (h2c, task) = h2c_origin("127.0.0.42").await;
    // A listener that never accepts, its backlog full: further SYNs go unanswered, so a connect
    // hangs (a connect timeout, not a refusal).
    let blackhole = tokio::net::TcpSocket::new_v4().unwrap();
    blackhole.bind("127.0.0.43:0".parse().unwrap()).unwrap();
    let blackhole = blackhole.listen(1).unwrap();
    let hole = blackhole.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..3 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(hole),
        )
        .await
        {
            fillers.push(s);
        }
    }
    // Four dead endpoints (connection refused).
    let dead: Vec<std::net::SocketAddr> = (0..4)
        .map(|i| {
            std::net::TcpListener::bind(format!("127.0.0.{}:0", 44 + i))
                .unwrap()
                .local_addr()
                .unwrap()
        })
        .collect();
    let svc = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": name},
                                  "spec": {"ports": [{"name": "http", "port": 80}]}})
    };
    let mut objects = vec![
        mk_class(),
        svc("grpc"),
        svc("hole"),
        svc("dead"),
        ingress(
            "grpc",
            json!({"drawbridge.dev/backend-protocol": "GRPC"}),
            json!({"ingressClassName": "drawbridge", "rules": [rule("grpc.test", "/", "Prefix", "grpc")]}),
        ),
        ingress(
            "hole",
            json!({"drawbridge.dev/proxy-connect-timeout": "1"}),
            json!({"ingressClassName": "drawbridge", "rules": [rule("hole.test", "/", "Prefix", "hole")]}),
        ),
        ingress(
            "dead",
            json!({}),
            json!({"ingressClassName": "drawbridge", "rules": [rule("dead.test", "/", "Prefix", "dead")]}),
        ),
        slice(
            "grpc",
            "grpc-0",
            h2c.port(),
            &[("127.0.0.42", true, true, false)],
        ),
        slice(
            "hole",
            "hole-0",
            hole.port(),
            &[("127.0.0.43", true, true, false)],
        ),
    ];
    for (i, d) in dead.iter().enumerate() {
        objects.push(slice(
            "dead",
            &format!("dead-{i}"),
            d.port(),
            &[(&d.ip().to_string(), true, true, false)],
        ));
    }
    let gw = Gateway::start(&objects).await;

    // The annotation alone (no appProtocol on the Service port) selects h2c.
    let r = get(&gw, "grpc.test", "/", &[]).await;
    assert_eq!(
        (r.status, r.origin(), r.field("version")),
        (200, Some("h2c"), Some("HTTP/2.0")),
        "{r:?}"
    );

    // proxy-connect-timeout 1 s: 504 after about 1 s (the only endpoint; nothing else to try).
    let started = Instant::now();
    let r = get(&gw, "hole.test", "/", &[]).await;
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3000),
        "{took:?}"
    );

    // Four refusing endpoints: exactly 3 connect attempts, then 502.
    let before = scrape(&gw, "/metrics").await;
    let before = metric(
        before.body.as_str().unwrap_or(""),
        "drawbridge_gateway_upstream_connect_failures_total",
    );
    let r = get(&gw, "dead.test", "/", &[]).await;
    assert_eq!(r.status, 502, "{r:?}");
    let after = scrape(&gw, "/metrics").await;
    let after = metric(
        after.body.as_str().unwrap_or(""),
        "drawbridge_gateway_upstream_connect_failures_total",
    );
    assert_eq!(after - before, 3.0, "tries per request");
    task.abort();
    drop(fillers);
}

//! Traffic handling through the real binary: HTTPS redirect, forwarding and hop-by-hop headers,
//! smuggling-shaped requests, body limits and timeouts, connect retries and passive health, h2c
//! (gRPC-shaped) upstreams, rule conflicts, ExternalName Services and the access log. Origins
//! are in-test servers on 127.0.0.x; raw requests are written byte for byte over TCP.

mod support;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn ingress(name: &str, annotations: Value, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
           "metadata": {"namespace": "default", "name": name, "annotations": annotations},
           "spec": spec})
}

fn host_rule(host: &str, service: &str) -> Value {
    json!({"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix",
           "backend": {"service": {"name": service, "port": {"number": 80}}}}]}})
}

/// Writes `request` as is and reads the response until the gateway closes the connection (or
/// the first response is complete for `Connection: close` requests). Returns the text.
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    tokio::time::timeout(STEP, async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .expect("raw exchange timed out")
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn header_of<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

fn body_json(response: &str) -> Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_redirect_forwarding_and_hop_by_hop_headers() {
    let web = Origin::start("web", "127.0.0.6").await;
    let ca = TestCa::new();
    let (crt, key) = ca.issue(&["secure.test", "optout.test"]);
    let mut objects = vec![
        mk_class(),
        mk_service("web"),
        mk_tls_secret("cert", &crt, &key),
        ingress(
            "secure",
            json!({}),
            json!({"ingressClassName": "drawbridge",
                   "tls": [{"hosts": ["secure.test"], "secretName": "cert"}],
                   "rules": [host_rule("secure.test", "web")]}),
        ),
        ingress(
            "optout",
            json!({"drawbridge.dev/ssl-redirect": "false"}),
            json!({"ingressClassName": "drawbridge",
                   "tls": [{"hosts": ["optout.test"], "secretName": "cert"}],
                   "rules": [host_rule("optout.test", "web")]}),
        ),
        ingress(
            "plain",
            json!({}),
            json!({"ingressClassName": "drawbridge", "rules": [host_rule("plain.test", "web")]}),
        ),
    ];
    objects.extend(mk_slices("web", &[&web]));
    let gw = Gateway::start(&objects).await;

    // 308 to HTTPS for a TLS host, path and query kept, nothing forwarded.
    let r = raw(
        gw.http,
        b"POST /p/q?x=1&y=2 HTTP/1.1\r\nHost: Secure.test:8080\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&r), 308, "{r}");
    assert_eq!(
        header_of(&r, "location"),
        Some("https://Secure.test/p/q?x=1&y=2")
    );
    assert_eq!(web.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Opted out, and hosts without TLS: served over plain HTTP.
    assert_eq!(get(&gw, "optout.test", "/", &[]).await.status, 200);
    // Over HTTPS the TLS host is served.
    let tls = handshake(&gw, "secure.test", Some(ca.roots()), &[b"http/1.1"])
        .await
        .expect("handshake");
    let r = get_tls(tls, "secure.test", "/s").await;
    assert_eq!((r.status, r.field("xfp")), (200, Some("https")), "{r:?}");
    let https_port = gw.https.port().to_string();
    assert_eq!(r.field("xfport"), Some(https_port.as_str()));

    // Forwarding headers.
    let r = get(&gw, "plain.test:81", "/h", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let http_port = gw.http.port().to_string();
    assert_eq!(r.field("xfh"), Some("plain.test:81"));
    assert_eq!(r.field("xfport"), Some(http_port.as_str()));
    assert_eq!(r.field("xri"), Some("127.0.0.1"));
    assert_eq!(r.field("xff"), Some("127.0.0.1"));
    let id = r.field("xrid").expect("X-Request-ID generated");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let other = get(&gw, "plain.test", "/h", &[]).await;
    assert_ne!(other.field("xrid"), Some(id), "a new ID per request");
    let r = get(
        &gw,
        "plain.test",
        "/h",
        &[
            ("x-request-id", "client-chosen-1"),
            ("x-real-ip", "203.0.113.50"),
            ("x-forwarded-host", "evil.test"),
        ],
    )
    .await;
    assert_eq!(r.field("xrid"), Some("client-chosen-1"), "kept");
    assert_eq!(r.field("xri"), Some("127.0.0.1"), "overwritten");
    assert_eq!(r.field("xfh"), Some("plain.test"), "overwritten");

    // Hop-by-hop: Connection and what it nominates, Keep-Alive, Proxy-Connection, TE never
    // reach the origin; end-to-end fields do.
    let r = raw(
        gw.http,
        b"GET /hop HTTP/1.1\r\nHost: plain.test\r\nConnection: close, x-secret\r\nX-Secret: 1\r\n\
          Keep-Alive: 300\r\nProxy-Connection: keep-alive\r\nTE: gzip\r\nX-End-To-End: 1\r\n\
          x-test-hop: 1\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&r), 200, "{r}");
    let names: Vec<String> = body_json(&r)["headers"]
        .as_array()
        .expect("header names")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    for gone in ["x-secret", "keep-alive", "proxy-connection", "te"] {
        assert!(
            !names.contains(&gone.to_string()),
            "{gone} forwarded: {names:?}"
        );
    }
    assert!(names.contains(&"x-end-to-end".to_string()), "{names:?}");
    // ... and the response's hop-by-hop fields do not reach the client.
    assert_eq!(header_of(&r, "x-hop"), None, "{r}");
    assert_eq!(header_of(&r, "keep-alive"), None, "{r}");
    assert_eq!(header_of(&r, "x-end-to-end"), Some("1"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shaped_requests_are_rejected_and_never_forwarded() {
    let web = Origin::start("web", "127.0.0.7").await;
    let mut objects = vec![
        mk_class(),
        mk_service("web"),
        ingress(
            "plain",
            json!({}),
            json!({"ingressClassName": "drawbridge", "rules": [host_rule("smuggle.test", "web")]}),
        ),
    ];
    objects.extend(mk_slices("web", &[&web]));
    let gw = Gateway::start(&objects).await;

    let cases: &[(&str, &[u8])] = &[
        (
            "CL + TE",
            b"POST / HTTP/1.1\r\nHost: smuggle.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "TE + CL, lower case, TE first",
            b"POST / HTTP/1.1\r\nHost: smuggle.test\r\ntransfer-encoding: chunked\r\ncontent-length: 30\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: smuggle.test\r\n\r\n",
        ),
        (
            "duplicate differing Content-Length",
            b"POST / HTTP/1.1\r\nHost: smuggle.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        (
            "Content-Length list with differing values",
            b"POST / HTTP/1.1\r\nHost: smuggle.test\r\nContent-Length: 5, 6\r\n\r\nhello!",
        ),
        (
            "malformed chunk size",
            b"POST / HTTP/1.1\r\nHost: smuggle.test\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "chunk size with junk",
            b"POST / HTTP/1.1\r\nHost: smuggle.test\r\nTransfer-Encoding: chunked\r\n\r\n5 x\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "non-chunked final encoding",
            b"POST / HTTP/1.1\r\nHost: smuggle.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        ),
    ];
    for (what, request) in cases {
        let r = raw(gw.http, request).await;
        assert_eq!(status_of(&r), 400, "{what}: {r}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        web.accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the origin"
    );
    // The same origin does receive a well-formed chunked request (the counter works).
    let r = raw(
        gw.http,
        b"POST / HTTP/1.1\r\nHost: smuggle.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&r), 200, "{r}");
    assert_eq!(body_json(&r)["body_len"], json!(11), "{r}");
    assert_eq!(web.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A POST of `len` bytes: `chunked` streams it in 64 KiB frames of unknown total length.
async fn post(gw: &Gateway, host: &str, len: usize, chunked: bool) -> (u16, Value) {
    tokio::time::timeout(Duration::from_secs(20), async {
        let stream = TcpStream::connect(gw.http).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let data = Bytes::from(vec![b'x'; len]);
        let req = Request::post("/upload").header("host", host);
        let body: http_body_util::combinators::BoxBody<Bytes, Infallible> = if chunked {
            let frames: Vec<Result<Frame<Bytes>, Infallible>> = data
                .chunks(64 * 1024)
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            StreamBody::new(futures::stream::iter(frames)).boxed()
        } else {
            Full::new(data).boxed()
        };
        let resp = sender.send_request(req.body(body).unwrap()).await;
        match resp {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let bytes = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                (
                    status,
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                )
            }
            // The gateway may answer 413 and close before the whole body is sent.
            Err(e) => panic!("request failed: {e}"),
        }
    })
    .await
    .expect("POST timed out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limits_and_timeouts_follow_annotations() {
    let web = Origin::start("web", "127.0.0.8").await;
    let mut objects = vec![
        mk_class(),
        mk_service("web"),
        ingress(
            "small",
            json!({}),
            json!({"ingressClassName": "drawbridge", "rules": [host_rule("small.test", "web")]}),
        ),
        ingress(
            "big",
            json!({"drawbridge.dev/proxy-body-size": "8m"}),
            json!({"ingressClassName": "drawbridge", "rules": [host_rule("big.test", "web")]}),
        ),
        ingress(
            "unlimited",
            json!({"drawbridge.dev/proxy-body-size": "0"}),
            json!({"ingressClassName": "drawbridge", "rules": [host_rule("unlimited.test", "web")]}),
        ),
        ingress(
            "slow",
            json!({"drawbridge.dev/proxy-read-timeout": "1"}),
            json!({"ingressClassName": "drawbridge", "rules": [host_rule("slow.test", "web")]}),
        ),
    ];
    objects.extend(mk_slices("web", &[&web]));
    let gw = Gateway::start(&objects).await;

    // Declared too large: 413 before anything is read or forwarded.
    let r = raw(
        gw.http,
        b"POST / HTTP/1.1\r\nHost: small.test\r\nContent-Length: 2097152\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&r), 413, "{r}");
    assert_eq!(web.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    // At the 1 MiB default limit: accepted.
    let (status, body) = post(&gw, "small.test", 1 << 20, false).await;
    assert_eq!((status, &body["body_len"]), (200, &json!(1 << 20)));
    // Streamed (chunked) past the limit: 413.
    let (status, _) = post(&gw, "small.test", 2 << 20, true).await;
    assert_eq!(status, 413);
    // Raised and removed limits, streamed through.
    for host in ["big.test", "unlimited.test"] {
        for chunked in [false, true] {
            let (status, body) = post(&gw, host, 3 << 20, chunked).await;
            assert_eq!(
                (status, &body["body_len"]),
                (200, &json!(3 << 20)),
                "{host} chunked={chunked}"
            );
        }
    }

    // proxy-read-timeout 1 s: an origin answering after 4 s gets 504 at about 1 s.
    let started = Instant::now();
    let r = get(&gw, "slow.test", "/sleep/4000", &[]).await;
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The default (60 s) waits for a 1.5 s answer.
    assert_eq!(get(&gw, "small.test", "/sleep/1500", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_retry_elsewhere_and_eject_the_endpoint() {
    let live = Origin::start("live", "127.0.0.9").await;
    // A port nobody listens on: connection refused.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.10:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut objects = vec![
        mk_class(),
        mk_service("web"),
        ingress(
            "retry",
            json!({}),
            json!({"ingressClassName": "drawbridge", "rules": [host_rule("retry.test", "web")]}),
        ),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"namespace": "default", "name": "web-dead",
                            "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": dead.port(), "protocol": "TCP"}],
               "endpoints": [{"addresses": [dead.ip().to_string()], "conditions": {"ready": true}}]}),
    ];
    objects.extend(mk_slices("web", &[&live]));
    let gw = Gateway::start(&objects).await;

    // Non-idempotent requests too: a refused connect sent nothing.
    for i in 0..12 {
        let r = raw(
            gw.http,
            b"POST /p HTTP/1.1\r\nHost: retry.test\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
        )
        .await;
        assert_eq!(status_of(&r), 200, "request {i}: {r}");
        assert_eq!(body_json(&r)["origin"], json!("live"));
    }
    let m = scrape(&gw, "/metrics").await;
    let text = m.body.as_str().unwrap_or("");
    // Round robin sends every other request to the dead endpoint until its third failure
    // ejects it (for 10 s): exactly three failed connects.
    assert_eq!(
        sample(text, "drawbridge_gateway_upstream_connect_failures_total"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(text, "drawbridge_gateway_endpoint_ejections_total"),
        Some(1.0)
    );
}

/// An h2c (HTTP/2 prior knowledge) origin answering gRPC-style: the request's protocol version,
/// content-type and TE in a data frame, then trailers `grpc-status: 0`.
async fn h2c_origin(ip: &str) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let h = |k: &str| {
                        req.headers()
                            .get(k)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    };
                    let info = json!({
                        "version": format!("{:?}", req.version()),
                        "content_type": h("content-type"),
                        "te": h("te"),
                        "path": req.uri().path(),
                    });
                    let received = req.into_body().collect().await.map(|b| b.to_bytes().len());
                    let mut info = info;
                    info["body_len"] = json!(received.ok());
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    trailers.insert("grpc-message", "ok".parse().unwrap());
                    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                        Ok(Frame::data(Bytes::from(info.to_string()))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let mut resp = Response::new(StreamBody::new(futures::stream::iter(frames)));
                    resp.headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                    Ok::<_, Infallible>(resp)
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
async fn h2c_upstream_by_app_protocol_carries_grpc_trailers() {
    let (origin, task) = h2c_origin("127.0.0.11").await;
    let ca = TestCa::new();
    let (crt, key) = ca.issue(&["grpc.test"]);
    let objects = vec![
        mk_class(),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": "grpc"},
               "spec": {"ports": [{"name": "grpc", "port": 80, "appProtocol": "kubernetes.io/h2c"}]}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"namespace": "default", "name": "grpc-0",
                            "labels": {"kubernetes.io/service-name": "grpc"}},
               "addressType": "IPv4",
               "ports": [{"name": "grpc", "port": origin.port(), "protocol": "TCP"}],
               "endpoints": [{"addresses": [origin.ip().to_string()]}]}),
        mk_tls_secret("grpc-cert", &crt, &key),
        ingress(
            "grpc",
            json!({}),
            json!({"ingressClassName": "drawbridge",
                   "tls": [{"hosts": ["grpc.test"], "secretName": "grpc-cert"}],
                   "rules": [host_rule("grpc.test", "grpc")]}),
        ),
    ];
    let gw = Gateway::start(&objects).await;
    let tls = handshake(&gw, "grpc.test", Some(ca.roots()), &[b"h2"])
        .await
        .expect("handshake");
    let (status, info, trailers) = tokio::time::timeout(STEP, async {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls.stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        // A gRPC message: 1-byte flag, 4-byte length, payload.
        let message = Bytes::from_static(b"\x00\x00\x00\x00\x03abc");
        let req = Request::post("https://grpc.test/pkg.Echo/Say")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(message))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        let info: Value = serde_json::from_slice(&collected.to_bytes()).unwrap_or(Value::Null);
        (status, info, trailers)
    })
    .await
    .expect("gRPC-shaped call timed out");
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["version"], json!("HTTP/2.0"), "h2c upstream: {info}");
    assert_eq!(info["content_type"], json!("application/grpc"));
    assert_eq!(info["te"], json!("trailers"));
    assert_eq!(info["body_len"], json!(8));
    let trailers = trailers.expect("trailers reach the client");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    task.abort();
}

fn events(gw: &Gateway) -> Vec<Value> {
    std::fs::read_to_string(gw.state.join("events.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn access_lines(gw: &Gateway) -> Vec<Value> {
    let log = std::fs::read_to_string(gw.log.as_ref().expect("captured log")).unwrap_or_default();
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_external_names_and_access_log() {
    let a = Origin::start("a", "127.0.0.12").await;
    let b = Origin::start("b", "127.0.0.13").await;
    let c = Origin::start("c", "127.0.0.1").await;
    let mut older = ingress(
        "zz-older",
        json!({}),
        json!({"ingressClassName": "drawbridge", "rules": [host_rule("dup.test", "web-a")]}),
    );
    older["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    let mut newer = ingress(
        "aa-newer",
        json!({}),
        json!({"ingressClassName": "drawbridge", "rules": [host_rule("dup.test", "web-b")]}),
    );
    newer["metadata"]["creationTimestamp"] = json!("2026-02-01T00:00:00Z");
    let mut objects = vec![
        mk_class(),
        mk_service("web-a"),
        mk_service("web-b"),
        older,
        newer,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": "ext"},
               "spec": {"type": "ExternalName", "externalName": "localhost"}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"namespace": "default", "name": "ext"},
               "spec": {"ingressClassName": "drawbridge", "rules": [{"host": "ext.test", "http": {"paths": [
                   {"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "ext", "port": {"number": c.addr.port()}}}}]}}]}}),
        // A resource backend: reported, the rest keeps serving.
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"namespace": "default", "name": "bucket"},
               "spec": {"ingressClassName": "drawbridge", "rules": [{"host": "bucket.test", "http": {"paths": [
                   {"path": "/", "pathType": "Prefix",
                    "backend": {"resource": {"apiGroup": "example.com", "kind": "Bucket", "name": "b"}}}]}}]}}),
    ];
    objects.extend(mk_slices("web-a", &[&a]));
    objects.extend(mk_slices("web-b", &[&b]));
    let gw = Gateway::start_with(&objects, &["--log-format", "json"]).await;

    // The older Ingress wins although its name sorts last; the newer one is told.
    for _ in 0..3 {
        assert_eq!(
            get(&gw, "dup.test", "/logme", &[]).await.origin(),
            Some("a")
        );
    }
    let reported = eventually(Duration::from_secs(3), || async {
        events(&gw).iter().any(|e| {
            e["reason"] == "RuleConflict"
                && e["regarding"]["name"] == "aa-newer"
                && e["note"].as_str().is_some_and(|n| n.contains("zz-older"))
        })
    })
    .await;
    assert!(reported, "{:#?}", events(&gw));
    assert!(
        events(&gw)
            .iter()
            .any(|e| e["reason"] == "Rejected" && e["regarding"]["name"] == "bucket"),
        "{:#?}",
        events(&gw)
    );
    assert_eq!(get(&gw, "bucket.test", "/", &[]).await.status, 404);

    // ExternalName: `localhost` resolved to 127.0.0.1, on the backend's port.
    let resolved = eventually(Duration::from_secs(5), || async {
        get(&gw, "ext.test", "/", &[]).await.origin() == Some("c")
    })
    .await;
    assert!(resolved, "ExternalName backend served");

    // Access log: one JSON line per request.
    let logged = eventually(Duration::from_secs(2), || async {
        access_lines(&gw)
            .iter()
            .filter(|l| l["fields"]["path"] == "/logme")
            .count()
            == 3
    })
    .await;
    let lines = access_lines(&gw);
    assert!(logged, "{lines:#?}");
    let line = lines
        .iter()
        .find(|l| l["fields"]["path"] == "/logme")
        .expect("access line");
    let f = &line["fields"];
    assert_eq!(f["status"], json!(200));
    assert_eq!(f["method"], json!("GET"));
    assert_eq!(f["host"], json!("dup.test"));
    assert_eq!(f["ingress"], json!("default/zz-older"));
    assert_eq!(f["upstream"], json!(a.addr.to_string()));
    assert_eq!(f["request_id"].as_str().map(str::len), Some(32));

    // --access-log=false: no access lines.
    let quiet =
        Gateway::start_with(&objects, &["--log-format", "json", "--access-log=false"]).await;
    assert_eq!(get(&quiet, "dup.test", "/quiet", &[]).await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(access_lines(&quiet).is_empty());
}

/// An HTTPS (HTTP/1.1 over TLS) origin with a certificate from `ca` for a name the gateway never
/// asks for (upstream certificates are not verified, as ingress-nginx's default).
async fn https_origin(
    ip: &str,
    ca: &TestCa,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let (crt, key) = ca.issue(&["origin.internal"]);
    let certs = rustls_pemfile::certs(&mut crt.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut key.as_bytes())
        .unwrap()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let body = json!({"origin": "tls", "path": req.uri().path()});
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body.to_string()))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_by_app_protocol() {
    let ca = TestCa::new();
    let (origin, task) = https_origin("127.0.0.14", &ca).await;
    let objects = vec![
        mk_class(),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": "secure"},
               "spec": {"ports": [{"name": "https", "port": 443, "appProtocol": "https"}]}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"namespace": "default", "name": "secure-0",
                            "labels": {"kubernetes.io/service-name": "secure"}},
               "addressType": "IPv4",
               "ports": [{"name": "https", "port": origin.port(), "protocol": "TCP"}],
               "endpoints": [{"addresses": [origin.ip().to_string()]}]}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"namespace": "default", "name": "secure"},
               "spec": {"ingressClassName": "drawbridge", "rules": [{"host": "up.test", "http": {"paths": [
                   {"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "secure", "port": {"number": 443}}}}]}}]}}),
    ];
    let gw = Gateway::start(&objects).await;
    for _ in 0..3 {
        let r = get(&gw, "up.test", "/over-tls", &[]).await;
        assert_eq!((r.status, r.origin()), (200, Some("tls")), "{r:?}");
    }
    task.abort();
}

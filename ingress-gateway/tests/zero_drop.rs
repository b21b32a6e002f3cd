//! Zero-drop configuration changes (issue 3, "Zero-drop configuration changes"): a load generator
//! runs against the real gateway binary while 1,000 changes are applied through the manifest
//! directory source, and an open WebSocket keeps echoing across all of them.
//!
//! ```text
//!  load: 3× HTTP/1.1 keep-alive, 2× HTTPS keep-alive (new TLS handshake every 25 requests,
//!        verified against the test CA), 1× HTTP/2 (8 streams in flight) ──► Host site.test
//!  ws:   one WebSocket (ws://site.test/ws) echoing a message every 5 ms
//!  changes (one manifest write each, then wait until it is served):
//!        i % 4 == 0  Ingress edit: site's extra path /alt-N → alt, annotation changed
//!        i % 4 == 1  endpoints scale up   (EndpointSlice of web: +1 endpoint, up to 4)
//!        i % 4 == 2  endpoints scale down (−1 endpoint, down to 1)
//!        i % 4 == 3  certificate rotation (new kubernetes.io/tls Secret data for site.test)
//!        every change also moves marker.test's Exact path to /change-i: the change counts as
//!        applied once /change-i is served (and, for rotations, once a new handshake returns the
//!        new certificate)
//! ```
//!
//! Asserted: no failed request (every answer `200` from one of the web origins, no transport error,
//! no keep-alive connection closed by the gateway), requests served in every 100-change window and
//! no gap over 2 s, every origin served (scale-up took effect), the WebSocket echoed throughout on
//! the same upstream connection (one upgrade at the origin).

mod support;
mod ws;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::SinkExt;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use ws::{WsOrigin, connect, next_message};

const CHANGES: usize = 1000;
const ORIGINS: usize = 4;
const HOST: &str = "site.test";

/// What a load task saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Keep-alive connections the gateway closed between requests (nothing was in flight).
    closed: AtomicU64,
    /// Answers per origin name.
    origins: Mutex<BTreeMap<String, u64>>,
    /// The first failures, for the assertion message.
    failures: Mutex<Vec<String>>,
    /// Longest time between two successful requests of one task while changes ran.
    max_gap: Mutex<Duration>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut f = self.failures.lock().unwrap();
        if f.len() < 20 {
            f.push(what);
        }
    }

    /// Checks an answer; returns whether it counts as served.
    fn answer(&self, task: &str, status: u16, body: &[u8]) -> bool {
        let origin = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("origin").and_then(Value::as_str).map(str::to_string));
        match (status, origin) {
            (200, Some(o)) if o.starts_with("web-") => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                *self.origins.lock().unwrap().entry(o).or_default() += 1;
                true
            }
            (status, _) => {
                self.fail(format!(
                    "{task}: status {status}, body {:?}",
                    String::from_utf8_lossy(body)
                ));
                false
            }
        }
    }
}

/// Tracks the longest gap between successes of one task.
struct Gaps<'a> {
    tally: &'a Tally,
    last: Instant,
}

impl Gaps<'_> {
    fn served(&mut self) {
        let now = Instant::now();
        let gap = now - self.last;
        self.last = now;
        let mut max = self.tally.max_gap.lock().unwrap();
        if gap > *max {
            *max = gap;
        }
    }
}

fn request(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header("host", HOST)
        .body(Empty::new())
        .unwrap()
}

/// HTTP/1.1 keep-alive over `connect()`'s streams; a new connection after `reconnect_every`
/// requests (or when the gateway closed the previous one, which is counted).
async fn h1_load<S, F, Fut>(
    name: String,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    reconnect_every: u64,
    connect: F,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<S, String>>,
{
    let mut gaps = Gaps {
        tally: &tally,
        last: Instant::now(),
    };
    while !stop.load(Ordering::Relaxed) {
        let stream = match connect().await {
            Ok(s) => s,
            Err(e) => {
                tally.fail(format!("{name}: connect: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(x) => x,
                Err(e) => {
                    tally.fail(format!("{name}: handshake: {e}"));
                    continue;
                }
            };
        tokio::spawn(conn);
        let mut sent = 0;
        while sent < reconnect_every && !stop.load(Ordering::Relaxed) {
            if sender.ready().await.is_err() {
                tally.closed.fetch_add(1, Ordering::Relaxed);
                break;
            }
            let outcome = tokio::time::timeout(STEP, async {
                let resp = sender.send_request(request("/")).await?;
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>((status, body))
            })
            .await;
            sent += 1;
            match outcome {
                Ok(Ok((status, body))) => {
                    if tally.answer(&name, status, &body) {
                        gaps.served();
                    }
                }
                Ok(Err(e)) => {
                    tally.fail(format!("{name}: {e}"));
                    break;
                }
                Err(_) => {
                    tally.fail(format!("{name}: timed out"));
                    break;
                }
            }
        }
    }
}

/// HTTP/2 over TLS (ALPN h2): `streams` requests in flight on one connection.
async fn h2_load(
    gw: Arc<Gateway>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    ca: rustls::RootCertStore,
) {
    let mut gaps = Gaps {
        tally: &tally,
        last: Instant::now(),
    };
    while !stop.load(Ordering::Relaxed) {
        let tls = match handshake(&gw, HOST, Some(ca.clone()), &[b"h2"]).await {
            Ok(t) => t,
            Err(e) => {
                tally.fail(format!("h2: TLS handshake: {e}"));
                continue;
            }
        };
        let (sender, conn) = match hyper::client::conn::http2::handshake(
            TokioExecutor::new(),
            TokioIo::new(tls.stream),
        )
        .await
        {
            Ok(x) => x,
            Err(e) => {
                tally.fail(format!("h2: handshake: {e}"));
                continue;
            }
        };
        tokio::spawn(conn);
        while !stop.load(Ordering::Relaxed) {
            let batch = (0..8).map(|_| {
                let mut sender = sender.clone();
                async move {
                    let req = Request::get(format!("https://{HOST}/"))
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    tokio::time::timeout(STEP, async {
                        let resp = sender.send_request(req).await?;
                        let status = resp.status().as_u16();
                        let body = resp.into_body().collect().await?.to_bytes();
                        Ok::<_, hyper::Error>((status, body))
                    })
                    .await
                }
            });
            let mut broken = false;
            for outcome in futures::future::join_all(batch).await {
                match outcome {
                    Ok(Ok((status, body))) => {
                        if tally.answer("h2", status, &body) {
                            gaps.served();
                        }
                    }
                    Ok(Err(e)) => {
                        tally.fail(format!("h2: {e}"));
                        broken = true;
                    }
                    Err(_) => {
                        tally.fail("h2: timed out".into());
                        broken = true;
                    }
                }
            }
            if broken {
                break;
            }
        }
    }
}

// === manifests ===

struct State {
    change: usize,
    /// Endpoints of `web` (a prefix of the origins).
    endpoints: usize,
    scaling_up: bool,
    /// The Ingress edit's alternative path.
    alt_path: String,
    cert: (String, String),
}

fn objects(s: &State, web: &[Origin], alt: &Origin, wso: &WsOrigin) -> Vec<Value> {
    let path = |p: &str, t: &str, svc: &str| json!({"path": p, "pathType": t, "backend": {"service": {"name": svc, "port": {"number": 80}}}});
    let mut out = vec![
        mk_class(),
        mk_service("web"),
        mk_service("alt"),
        mk_service("chat"),
        mk_tls_secret("site-cert", &s.cert.0, &s.cert.1),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"namespace": "default", "name": "site",
                     "annotations": {"drawbridge.test/alt": &s.alt_path,
                                            // plain HTTP load too: no redirect to https
                                            "drawbridge.dev/ssl-redirect": "false"}},
        "spec": {"ingressClassName": "drawbridge",
                 "tls": [{"hosts": [HOST], "secretName": "site-cert"}],
                 "rules": [{"host": HOST, "http": {"paths": [
                     path("/", "Prefix", "web"),
                     path("/ws", "Prefix", "chat"),
                     path(&s.alt_path, "Exact", "alt"),
                 ]}}]}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"namespace": "default", "name": "marker"},
               "spec": {"ingressClassName": "drawbridge",
                        "rules": [{"host": "marker.test", "http": {"paths": [
                            path(&format!("/change-{}", s.change), "Exact", "alt")]}}]}}),
    ];
    let active: Vec<&Origin> = web.iter().take(s.endpoints).collect();
    out.extend(mk_slices("web", &active));
    out.extend(mk_slices("alt", &[alt]));
    out.push(
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "default", "name": "chat-0",
                     "labels": {"kubernetes.io/service-name": "chat"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": wso.addr.port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": [wso.addr.ip().to_string()], "conditions": {"ready": true}}]}),
    );
    out
}

/// Polls (every 5 ms, up to 5 s) until `GET marker.test/change-N` is served by `alt`.
async fn wait_applied(gw: &Gateway, change: usize) -> Duration {
    let started = Instant::now();
    let path = format!("/change-{change}");
    loop {
        if get(gw, "marker.test", &path, &[]).await.origin() == Some("alt") {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "change {change} not served within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_changes_drop_nothing() {
    let mut web = Vec::new();
    for i in 0..ORIGINS {
        web.push(Origin::start(&format!("web-{i}"), &format!("127.0.0.{}", 2 + i)).await);
    }
    let alt = Origin::start("alt", "127.0.0.10").await;
    let wso = WsOrigin::start("chat", "127.0.0.11").await;
    let ca = TestCa::new();
    let mut state = State {
        change: 0,
        endpoints: 1,
        scaling_up: true,
        alt_path: "/alt-0".into(),
        cert: ca.issue(&[HOST]),
    };
    let gw = Arc::new(Gateway::start(&objects(&state, &web, &alt, &wso)).await);
    wait_applied(&gw, 0).await;

    // The WebSocket, opened before any change and kept across all of them.
    let tcp = TcpStream::connect(gw.http).await.unwrap();
    let (mut socket, greeting) = connect(&format!("ws://{HOST}/ws"), tcp).await;
    assert_eq!(greeting["origin"], "chat");
    let stop = Arc::new(AtomicBool::new(false));
    let ws_echoes = Arc::new(AtomicU64::new(0));
    let ws_task = {
        let (stop, echoes) = (stop.clone(), ws_echoes.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let msg = Message::text(format!("tick {n}"));
                socket.send(msg.clone()).await.expect("WebSocket send");
                assert_eq!(next_message(&mut socket).await, msg, "WebSocket echo");
                n += 1;
                echoes.store(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            socket
        })
    };

    // Load.
    let tally = Arc::new(Tally::default());
    let mut load = Vec::new();
    for i in 0..3 {
        let (stop, tally, addr) = (stop.clone(), tally.clone(), gw.http);
        load.push(tokio::spawn(h1_load(
            format!("http-{i}"),
            stop,
            tally,
            u64::MAX,
            move || async move { TcpStream::connect(addr).await.map_err(|e| e.to_string()) },
        )));
    }
    for i in 0..2 {
        let (stop, tally, gw2, roots) = (stop.clone(), tally.clone(), gw.clone(), ca.roots());
        load.push(tokio::spawn(async move {
            let gw3 = gw2.clone();
            h1_load(format!("https-{i}"), stop, tally, 25, move || {
                let (gw, roots) = (gw3.clone(), roots.clone());
                async move {
                    handshake(&gw, HOST, Some(roots), &[b"http/1.1"])
                        .await
                        .map(|t| t.stream)
                        .map_err(|e| format!("TLS handshake: {e}"))
                }
            })
            .await;
            drop(gw2);
        }));
    }
    load.push(tokio::spawn(h2_load(
        gw.clone(),
        stop.clone(),
        tally.clone(),
        ca.roots(),
    )));

    // Let the load start, then reset the gap clock's meaning: gaps are measured from here on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    *tally.max_gap.lock().unwrap() = Duration::ZERO;

    let mut served_at_window = vec![tally.ok.load(Ordering::Relaxed)];
    let mut apply_times = Vec::with_capacity(CHANGES);
    let mut rotations = 0;
    let started = Instant::now();
    for i in 1..=CHANGES {
        state.change = i;
        match i % 4 {
            0 => state.alt_path = format!("/alt-{i}"),
            1 | 2 => {
                if state.scaling_up && state.endpoints == ORIGINS {
                    state.scaling_up = false;
                } else if !state.scaling_up && state.endpoints == 1 {
                    state.scaling_up = true;
                }
                state.endpoints = if state.scaling_up {
                    state.endpoints + 1
                } else {
                    state.endpoints - 1
                };
            }
            _ => state.cert = ca.issue(&[HOST]),
        }
        gw.rewrite(&objects(&state, &web, &alt, &wso));
        apply_times.push(wait_applied(&gw, i).await);
        match i % 4 {
            0 => {
                let r = get(&gw, HOST, &state.alt_path, &[]).await;
                assert_eq!(
                    r.origin(),
                    Some("alt"),
                    "Ingress edit {i} not served: {r:?}"
                );
            }
            3 => {
                // The new certificate is presented to new handshakes (routes and certificates are
                // published one after the other, so allow a moment).
                let want = rustls_pemfile::certs(&mut state.cert.0.as_bytes())
                    .next()
                    .unwrap()
                    .unwrap();
                let ok = eventually(Duration::from_secs(2), || async {
                    let tls = handshake(&gw, HOST, Some(ca.roots()), &[b"http/1.1"]).await;
                    tls.is_ok_and(|t| t.leaf == want)
                })
                .await;
                assert!(ok, "rotation {i}: new certificate not served");
                rotations += 1;
            }
            _ => {}
        }
        if i % 100 == 0 {
            served_at_window.push(tally.ok.load(Ordering::Relaxed));
        }
    }
    let elapsed = started.elapsed();
    let max_gap = *tally.max_gap.lock().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("load task did not stop")
            .expect("load task panicked");
    }
    let mut socket = tokio::time::timeout(Duration::from_secs(10), ws_task)
        .await
        .expect("WebSocket task did not stop")
        .expect("WebSocket task failed");

    apply_times.sort();
    let ok = tally.ok.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    let origins = tally.origins.lock().unwrap().clone();
    let echoes = ws_echoes.load(Ordering::Relaxed);
    eprintln!(
        "{CHANGES} changes in {elapsed:?} (apply p50 {:?}, p99 {:?}, max {:?}); {ok} requests ok, \
         {failed} failed, {} keep-alive closes; max gap {max_gap:?}; origins {origins:?}; \
         {rotations} rotations; WebSocket echoes {echoes}; per 100 changes: {:?}",
        apply_times[CHANGES / 2],
        apply_times[CHANGES * 99 / 100],
        apply_times[CHANGES - 1],
        tally.closed.load(Ordering::Relaxed),
        served_at_window
            .windows(2)
            .map(|w| w[1] - w[0])
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        failed,
        0,
        "failed requests: {:?}",
        tally.failures.lock().unwrap()
    );
    assert_eq!(
        tally.closed.load(Ordering::Relaxed),
        0,
        "the gateway closed keep-alive connections"
    );
    for w in served_at_window.windows(2) {
        assert!(
            w[1] > w[0],
            "no request served during a window of 100 changes"
        );
    }
    assert!(
        ok >= 1000,
        "too little load to mean anything: {ok} requests"
    );
    assert!(
        max_gap < Duration::from_secs(2),
        "a task waited {max_gap:?} between answers"
    );
    assert_eq!(
        origins.len(),
        ORIGINS,
        "every scaled-up endpoint served requests: {origins:?}"
    );
    assert_eq!(rotations, CHANGES / 4);
    // The WebSocket: echoed throughout, still open, and it never reconnected.
    assert!(echoes >= 100, "WebSocket echoed only {echoes} times");
    ws::echo(&mut socket, Message::text("after all changes")).await;
    assert_eq!(
        wso.upgrades.load(Ordering::Relaxed),
        1,
        "WebSocket reconnected"
    );
}

//! Upstream keep-alive pool sizing with real HTTP/2 clients: 640 concurrent streams (8 TLS
//! connections × 80 streams, ALPN h2) to an HTTP/1.1 origin that holds each request until all
//! 640 are in flight (`/gate/640`), so the gateway needs 640 upstream connections at once, in
//! both bursts, however loaded the machine. After the burst all 640 are idle; the
//! second burst must reuse them (Pingora's default pool of 128 per thread closed the excess, and
//! bursts reconnected). Counted twice: TCP connections the origin accepted, and
//! `drawbridge_gateway_upstream_connect_duration_seconds_count` (one per new upstream connection).

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use support::*;

const CONNECTIONS: usize = 8;
const STREAMS_PER_CONNECTION: usize = 80;

async fn connect_count(gw: &Gateway) -> f64 {
    let m = scrape(gw, "/metrics").await;
    sample(
        m.body.as_str().unwrap_or(""),
        "drawbridge_gateway_upstream_connect_duration_seconds_count",
    )
    .unwrap_or(0.0)
}

/// One burst: every stream of every connection in flight at once; returns how many got 200.
async fn burst(senders: &[hyper::client::conn::http2::SendRequest<Empty<Bytes>>]) -> usize {
    let mut tasks = Vec::new();
    for sender in senders {
        for _ in 0..STREAMS_PER_CONNECTION {
            let mut sender = sender.clone();
            tasks.push(tokio::spawn(async move {
                let req = Request::get(format!(
                    "https://pool.test/gate/{}",
                    CONNECTIONS * STREAMS_PER_CONNECTION
                ))
                .body(Empty::<Bytes>::new())
                .unwrap();
                let resp = tokio::time::timeout(Duration::from_secs(20), sender.send_request(req))
                    .await
                    .ok()?
                    .ok()?;
                let status = resp.status().as_u16();
                resp.into_body().collect().await.ok()?;
                Some(status)
            }));
        }
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.ok().flatten() == Some(200) {
            ok += 1;
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_640_h2_streams_reuse_pooled_upstream_connections() {
    let origin = Origin::start("pool", "127.0.0.33").await;
    let ca = TestCa::new();
    let (crt, key) = ca.issue(&["pool.test"]);
    let mut objects = vec![
        mk_class(),
        mk_service("web"),
        mk_tls_secret("pool-cert", &crt, &key),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"namespace": "default", "name": "pool"},
               "spec": {"ingressClassName": "drawbridge",
                        "tls": [{"hosts": ["pool.test"], "secretName": "pool-cert"}],
                        "rules": [{"host": "pool.test", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                            "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}),
    ];
    objects.extend(mk_slices("web", &[&origin]));
    let gw = Gateway::start(&objects).await;

    let mut senders = Vec::new();
    for _ in 0..CONNECTIONS {
        let tls = handshake(&gw, "pool.test", Some(ca.roots()), &[b"h2"])
            .await
            .expect("handshake");
        assert_eq!(tls.alpn.as_deref(), Some(&b"h2"[..]));
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls.stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        senders.push(sender);
    }
    let total = CONNECTIONS * STREAMS_PER_CONNECTION;

    let ok = burst(&senders).await;
    assert_eq!(ok, total, "first burst");
    let first_accepts = origin.accepted.load(Ordering::SeqCst);
    let first_connects = connect_count(&gw).await;
    // The burst needed all 640 upstream connections at once.
    assert_eq!(first_accepts, total, "first burst opened {first_accepts}");
    assert_eq!(first_connects as usize, first_accepts, "metric = accepted");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok = burst(&senders).await;
    assert_eq!(ok, total, "second burst");
    let second_accepts = origin.accepted.load(Ordering::SeqCst) - first_accepts;
    let second_connects = connect_count(&gw).await - first_connects;
    eprintln!(
        "{total} concurrent h2 streams: burst 1 opened {first_accepts} upstream connections, \
         burst 2 opened {second_accepts} (metric: {first_connects} then +{second_connects})"
    );
    // Pingora's default pool (128 × 2 threads) would reconnect at least 640 − 256 = 384 here.
    assert!(
        second_accepts * 100 <= total * 2,
        "second burst opened {second_accepts} new upstream connections (> 2%)"
    );
    assert_eq!(
        second_connects as usize, second_accepts,
        "metric = accepted"
    );
}

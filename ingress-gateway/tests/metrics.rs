//! The observability list of issue 3 read from a real gateway's `/metrics` with exact values:
//! requests by ingress/host/method/status class, request and upstream-connect duration histograms
//! (seconds), body bytes in/out, config syncs and their last success timestamp, certificate expiry
//! (`notAfter`, Unix seconds) per Secret, and `/healthz` / `/readyz`.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn ingress() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
           "metadata": {"namespace": "default", "name": "site",
                        "annotations": {"drawbridge.dev/ssl-redirect": "false"}},
           "spec": {"ingressClassName": "drawbridge",
                    "tls": [{"hosts": ["m.test"], "secretName": "m-cert"}],
                    "rules": [{"host": "m.test", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix",
                         "backend": {"service": {"name": "web", "port": {"name": "http"}}}}]}}]}})
}

/// A self-signed leaf for `m.test` valid until 2031-05-06T00:00:00Z (1935792000).
fn cert() -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec!["m.test".to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(2031, 5, 6);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// One raw HTTP/1.1 exchange on a new connection (`Connection: close`); returns the response.
async fn raw(gw: &Gateway, req: &str) -> String {
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn body_of(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_the_issue_list_with_exact_values() {
    let origin = Origin::start("web-0", "127.0.0.1").await;
    let (crt, key) = cert();
    let mut objects = vec![
        mk_class(),
        mk_service("web"),
        ingress(),
        mk_tls_secret("m-cert", &crt, &key),
    ];
    objects.extend(mk_slices("web", &[&origin]));
    let started = now();
    let gw = Gateway::start(&objects).await;
    assert_eq!(scrape(&gw, "/healthz").await.status, 200);
    let ready = eventually(Duration::from_secs(5), || async {
        scrape(&gw, "/readyz").await.status == 200
    })
    .await;
    assert!(ready, "/readyz after the first sync");

    // 3 GETs, 2 POSTs with 7-byte bodies, 1 unmatched host (404 from the gateway).
    let mut response_bytes = 0;
    for _ in 0..3 {
        let r = raw(
            &gw,
            "GET /a HTTP/1.1\r\nHost: m.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        response_bytes += body_of(&r).len();
    }
    for _ in 0..2 {
        let r = raw(
            &gw,
            "POST /p HTTP/1.1\r\nHost: m.test\r\nContent-Length: 7\r\nConnection: close\r\n\r\npayload",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        response_bytes += body_of(&r).len();
    }
    let r = raw(
        &gw,
        "GET / HTTP/1.1\r\nHost: nowhere.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");

    let series = |s: &str| s.to_string();
    let route = r#"{ingress="default/site",host="m.test"}"#;
    let expect: Vec<(String, f64)> = vec![
        (
            series(
                r#"drawbridge_gateway_requests_total{ingress="default/site",host="m.test",method="GET",status="2xx"}"#,
            ),
            3.0,
        ),
        (
            series(
                r#"drawbridge_gateway_requests_total{ingress="default/site",host="m.test",method="POST",status="2xx"}"#,
            ),
            2.0,
        ),
        (
            series(
                r#"drawbridge_gateway_requests_total{ingress="",host="",method="GET",status="4xx"}"#,
            ),
            1.0,
        ),
        (
            format!("drawbridge_gateway_request_duration_seconds_count{route}"),
            5.0,
        ),
        (
            format!("drawbridge_gateway_request_bytes_total{route}"),
            14.0,
        ),
        (
            format!("drawbridge_gateway_response_bytes_total{route}"),
            response_bytes as f64,
        ),
        (
            series(
                r#"drawbridge_gateway_certificate_expiry_timestamp_seconds{secret="default/m-cert"}"#,
            ),
            1_935_792_000.0,
        ),
    ];
    // Counted at the end of each request (logging phase): poll briefly for the last one.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let text = loop {
        let t = scrape(&gw, "/metrics")
            .await
            .body
            .as_str()
            .unwrap_or("")
            .to_string();
        if expect.iter().all(|(s, v)| sample(&t, s) == Some(*v))
            || std::time::Instant::now() >= deadline
        {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (s, v) in &expect {
        assert_eq!(sample(&text, s), Some(*v), "{s} in\n{text}");
    }
    // Upstream connects: one histogram observation per TCP connection the origin accepted.
    let accepted = origin.accepted.load(std::sync::atomic::Ordering::SeqCst) as f64;
    assert!(accepted >= 1.0);
    assert_eq!(
        sample(
            &text,
            "drawbridge_gateway_upstream_connect_duration_seconds_count"
        ),
        Some(accepted),
        "{text}"
    );
    // Durations are seconds: 5 loopback requests sum to well under 5 s, and above 0.
    let sum = sample(
        &text,
        &format!("drawbridge_gateway_request_duration_seconds_sum{route}"),
    )
    .expect("duration sum");
    assert!(sum > 0.0 && sum < 5.0, "duration sum {sum} s");
    let syncs = sample(&text, "drawbridge_gateway_config_syncs_total").expect("syncs");
    assert!(syncs >= 1.0);
    let last = sample(
        &text,
        "drawbridge_gateway_last_config_sync_timestamp_seconds",
    )
    .expect("last sync");
    assert!(
        last >= started - 1.0 && last <= now(),
        "last sync {last} vs start {started}"
    );

    // A change: one more sync, a later timestamp; the Secret gone → its expiry series gone.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut changed = vec![mk_class(), mk_service("web"), ingress()];
    changed.extend(mk_slices("web", &[&origin]));
    gw.rewrite(&changed);
    let moved = eventually(Duration::from_secs(5), || async {
        let m = scrape(&gw, "/metrics").await;
        let t = m.body.as_str().unwrap_or("");
        sample(t, "drawbridge_gateway_config_syncs_total").is_some_and(|s| s > syncs)
            && sample(t, "drawbridge_gateway_last_config_sync_timestamp_seconds")
                .is_some_and(|l| l > last)
            && sample(
                t,
                r#"drawbridge_gateway_certificate_expiry_timestamp_seconds{secret="default/m-cert"}"#,
            )
            .is_none()
    })
    .await;
    let m = scrape(&gw, "/metrics").await;
    assert!(
        moved,
        "sync counted, timestamp moved, expiry series dropped:\n{}",
        m.body.as_str().unwrap_or("")
    );
}

//! `--client-body-timeout` (nginx's `client_body_timeout`): a client that sends a request head
//! and part of its body, then stops, is answered 408 after about the timeout — not after the
//! upstream read timeout, never not at all — and the upstream connection carrying the half-sent
//! request is closed, on the fast path (Content-Length) and on Pingora's path (Content-Length
//! with `--http1-fast-path=false`, and chunked); and for HTTP/2 streams with and without
//! `Content-Length`, on the HTTP/2 fast path and on Pingora's path to HTTP/1.1 and h2c endpoints
//! (Pingora's HTTP/2 server has no body read timeout of its own; without the `drawbridge patch`
//! in vendor/pingora-proxy, `read_downstream_body`, those requests got no answer within 20 s).

mod support;

use std::time::{Duration, Instant};

use http_body_util::StreamBody;
use hyper::body::{Bytes, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use support::{Gateway, h2c_silent_endpoint, handshake, sink_objects};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const BODY_TIMEOUT_SECS: u64 = 1;

/// An endpoint that reads whatever arrives and never answers; reports each connection's byte
/// count when the gateway closes it.
async fn silent_endpoint() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, closed_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let (mut total, mut buf) = (0, [0u8; 4096]);
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    total += n;
                }
                let _ = closed_tx.send(total);
            });
        }
    });
    (addr, closed_rx)
}

fn objects(endpoint: std::net::SocketAddr) -> Vec<serde_json::Value> {
    // The upstream read timeout is long: only the client body timeout can end the request
    // within the test's bounds.
    sink_objects(endpoint, json!({"drawbridge.dev/proxy-read-timeout": "30"}))
}

/// Sends the head and the first part of a body, then nothing (the socket stays open); returns
/// the status and when it came, measured from the last byte sent.
async fn stalled_body(gw: &Gateway, chunked: bool) -> (u16, Duration) {
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    let request = if chunked {
        "POST /upload HTTP/1.1\r\nHost: sink.test\r\nTransfer-Encoding: chunked\r\n\r\n\
         a\r\n0123456789\r\n"
    } else {
        "POST /upload HTTP/1.1\r\nHost: sink.test\r\nContent-Length: 1000\r\n\r\n0123456789"
    };
    stream.write_all(request.as_bytes()).await.unwrap();
    let start = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer within 20 s (chunked {chunked})"),
        }
    }
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer (chunked {chunked}): {text:?}"));
    (status, elapsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_is_answered_408_and_its_upstream_connection_closed() {
    let secs = BODY_TIMEOUT_SECS.to_string();
    for (fast, chunked) in [(true, false), (false, false), (true, true)] {
        let (endpoint, mut closed) = silent_endpoint().await;
        let mut args = vec!["--client-body-timeout", &secs];
        if !fast {
            args.push("--http1-fast-path=false");
        }
        let gw = Gateway::start_with(&objects(endpoint), &args).await;
        let (status, elapsed) = stalled_body(&gw, chunked).await;
        let case = format!("fast path {fast}, chunked {chunked}");
        assert_408_after_the_timeout(status, elapsed, &case);
        // The endpoint got the head and the 10 body bytes, then its connection was closed.
        let got = tokio::time::timeout(Duration::from_secs(5), closed.recv())
            .await
            .unwrap_or_else(|_| panic!("upstream connection left open (fast path {fast})"))
            .expect("endpoint task");
        assert!(got > 10, "the endpoint got {got} bytes");
    }
}

/// Sends an HTTP/2 request with 10 body bytes (declaring 1,000 when `sized`), then keeps the
/// body open and silent; returns the status and when it came.
async fn stalled_http2_body(gw: &Gateway, sized: bool) -> (u16, Duration) {
    let tls = handshake(gw, "sink.test", None, &[b"h2"]).await.unwrap();
    assert_eq!(tls.alpn.as_deref(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls.stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
    tx.send(Ok(Frame::data(Bytes::from_static(b"0123456789"))))
        .await
        .unwrap();
    let mut req = hyper::Request::post("https://sink.test/upload");
    if sized {
        req = req.header("content-length", "1000");
    }
    let req = req.body(StreamBody::new(stream_of(rx))).unwrap();
    let start = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(20), sender.send_request(req))
        .await
        .expect("no answer within 20 s")
        .expect("response");
    let elapsed = start.elapsed();
    drop(tx);
    (resp.status().as_u16(), elapsed)
}

/// 408, no sooner than the client body timeout and well before the upstream read timeout.
fn assert_408_after_the_timeout(status: u16, elapsed: Duration, case: &str) {
    eprintln!("{case}: {status} after {elapsed:?}");
    assert_eq!(status, 408, "{case}");
    assert!(
        elapsed >= Duration::from_millis(BODY_TIMEOUT_SECS * 1000 - 100),
        "{case}: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(BODY_TIMEOUT_SECS + 4),
        "{case}: {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http2_request_body_is_answered_408_and_its_upstream_connection_closed() {
    let secs = BODY_TIMEOUT_SECS.to_string();
    // The HTTP/2 fast path, and Pingora's path (HTTP/2 → HTTP/1.1, `proxy_h1`); with
    // Content-Length (forwarded as is) and without (forwarded chunked).
    for fast_path in ["true", "false"] {
        for sized in [true, false] {
            let (endpoint, mut closed) = silent_endpoint().await;
            let fast = format!("--http2-fast-path={fast_path}");
            let gw =
                Gateway::start_with(&objects(endpoint), &["--client-body-timeout", &secs, &fast])
                    .await;
            let (status, elapsed) = stalled_http2_body(&gw, sized).await;
            let case = format!("HTTP/2, {fast}, Content-Length {sized}");
            assert_408_after_the_timeout(status, elapsed, &case);
            let got = tokio::time::timeout(Duration::from_secs(5), closed.recv())
                .await
                .unwrap_or_else(|_| panic!("{case}: upstream connection left open"))
                .expect("endpoint task");
            assert!(got > 10, "{case}: the endpoint got {got} bytes");
        }
    }
}

/// An HTTP/2 client's stalled body to an h2c endpoint (Pingora's path, `proxy_h2`): 408, and the
/// upstream stream is reset (the endpoint sees its body end in an error after the 10 bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http2_request_body_to_an_h2c_endpoint_is_answered_408_and_its_stream_reset() {
    let secs = BODY_TIMEOUT_SECS.to_string();
    for sized in [true, false] {
        let (endpoint, mut seen, _task) = h2c_silent_endpoint(true).await;
        let mut objects = objects(endpoint);
        objects[3]["metadata"]["annotations"]["drawbridge.dev/backend-protocol"] = json!("h2c");
        let gw = Gateway::start_with(&objects, &["--client-body-timeout", &secs]).await;
        let (status, elapsed) = stalled_http2_body(&gw, sized).await;
        let case = format!("HTTP/2 to h2c, Content-Length {sized}");
        assert_408_after_the_timeout(status, elapsed, &case);
        let body = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .unwrap_or_else(|_| panic!("{case}: the upstream stream was left open"))
            .expect("endpoint task");
        assert_eq!(body.bytes, 10, "{case}: {body:?}");
        assert!(body.reset, "{case}: {body:?}");
    }
}

/// An mpsc receiver as a `Stream` (for `StreamBody`).
fn stream_of<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + Unpin + 'static {
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

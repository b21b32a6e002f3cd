//! `drawbridge.dev/proxy-send-timeout` ends a stalled upload: an endpoint that takes the request
//! head and then stops reading the body (and never answers) gets no more than the send timeout —
//! the client gets 504 after ~proxy-send-timeout, not after proxy-read-timeout.
//!
//! A real stalled upload over loopback: the client streams a 64 MiB body (chunked, so the request
//! takes Pingora's proxy path; `--http1-fast-path=false` covers a Content-Length body there too)
//! until the socket buffers between the gateway and the endpoint are full and the gateway's write
//! blocks. Pingora 0.9 on its own stops the write at the send timeout but then waits for a
//! response until the read timeout (vendor/README.md, `drawbridge patch` in
//! `vendor/pingora-proxy/src/proxy_h1.rs`). The same against an h2c endpoint whose flow-control
//! window stays closed (`proxy_h2.rs`).

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{Gateway, h2c_silent_endpoint, sink_objects};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SEND_TIMEOUT_SECS: u64 = 1;
const READ_TIMEOUT_SECS: u64 = 8;

/// An endpoint that reads the request head, then neither reads nor writes; keeps every
/// connection open until dropped.
async fn stalling_endpoint() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut byte).await {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            held.push(stream);
        }
    });
    (addr, task)
}

/// The sink Ingress with the test's timeouts, no body limit, and `backend_protocol` if given.
fn objects(
    endpoint: std::net::SocketAddr,
    backend_protocol: Option<&str>,
) -> Vec<serde_json::Value> {
    let mut annotations = json!({"drawbridge.dev/proxy-send-timeout": SEND_TIMEOUT_SECS.to_string(),
                                 "drawbridge.dev/proxy-read-timeout": READ_TIMEOUT_SECS.to_string(),
                                 "drawbridge.dev/proxy-body-size": "0"});
    if let Some(protocol) = backend_protocol {
        annotations["drawbridge.dev/backend-protocol"] = json!(protocol);
    }
    sink_objects(endpoint, annotations)
}

/// Uploads 64 MiB (chunked, or with Content-Length) while reading the answer; returns the status
/// code and how long after the first body byte it came.
async fn stalled_upload(gw: &Gateway, chunked: bool) -> (u16, Duration) {
    const TOTAL: usize = 64 << 20;
    let stream = TcpStream::connect(gw.http).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {TOTAL}")
    };
    let head = format!("POST /upload HTTP/1.1\r\nHost: sink.test\r\n{framing}\r\n\r\n");
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let piece = vec![b'x'; 64 << 10];
        let mut sent = 0;
        while sent < TOTAL {
            if chunked {
                wr.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                    .await?;
                wr.write_all(&piece).await?;
                wr.write_all(b"\r\n").await?;
            } else {
                wr.write_all(&piece).await?;
            }
            sent += piece.len();
        }
        if chunked {
            wr.write_all(b"0\r\n\r\n").await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let limit = Duration::from_secs(READ_TIMEOUT_SECS + 10);
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer within {limit:?}"),
        }
    }
    let elapsed = start.elapsed();
    writer.abort();
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    (status, elapsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_send_timeout_ends_a_stalled_upload() {
    let (endpoint, _task) = stalling_endpoint().await;
    for (args, chunked) in [
        (&[][..], true),
        (&["--http1-fast-path=false"][..], false),
        (&[][..], false),
    ] {
        // The first table is published before the listeners start: the route is in place.
        let gw = Gateway::start_with(&objects(endpoint, None), args).await;
        let (status, elapsed) = stalled_upload(&gw, chunked).await;
        eprintln!(
            "args {args:?}, chunked {chunked}: {status} after {elapsed:?} \
             (send timeout {SEND_TIMEOUT_SECS} s, read timeout {READ_TIMEOUT_SECS} s)"
        );
        assert_eq!(status, 504, "args {args:?}, chunked {chunked}");
        assert!(
            elapsed < Duration::from_secs(READ_TIMEOUT_SECS - 3),
            "args {args:?}, chunked {chunked}: 504 after {elapsed:?}: the read timeout \
             ({READ_TIMEOUT_SECS} s) ended the stalled upload, not the send timeout \
             ({SEND_TIMEOUT_SECS} s)"
        );
    }
}

/// The same against an h2c endpoint that never reads the body: the gateway's HTTP/2 body
/// writes wait for flow-control window that never comes. Pingora 0.9 stopped the write at the
/// send timeout and then waited for the read timeout (the `drawbridge patch` in
/// `vendor/pingora-proxy/src/proxy_h2.rs` gives up at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_send_timeout_ends_a_stalled_upload_to_an_h2c_endpoint() {
    let (endpoint, _seen, _task) = h2c_silent_endpoint(false).await;
    for chunked in [true, false] {
        let gw = Gateway::start_with(&objects(endpoint, Some("h2c")), &[]).await;
        let (status, elapsed) = stalled_upload(&gw, chunked).await;
        eprintln!(
            "h2c, chunked {chunked}: {status} after {elapsed:?} \
             (send timeout {SEND_TIMEOUT_SECS} s, read timeout {READ_TIMEOUT_SECS} s)"
        );
        assert_eq!(status, 504, "h2c, chunked {chunked}");
        assert!(
            elapsed < Duration::from_secs(READ_TIMEOUT_SECS - 3),
            "h2c, chunked {chunked}: 504 after {elapsed:?}: the read timeout ended the stalled \
             upload, not the send timeout"
        );
    }
}

//! HTTP/2 streams on the fast path (`ingress_gateway::fast`, `--http2-fast-path`), through the
//! real binary with a real HTTP/2 client (hyper over rustls, ALPN h2): the HTTP/1.1 head the
//! endpoint gets (Host from `:authority`, joined cookie crumbs, this hop's forwarding fields, no
//! `TE`), pooled upstream connections, chunked / close-delimited / HEAD answers turned into
//! HTTP/2 DATA, upstream errors (502, 504), streams handed to Pingora's path on the same
//! connection (a request body, no rule), and `--http2-fast-path=false`. Which path served a
//! stream is read from `drawbridge_gateway_pingora_path_requests_total`. Every step is bounded by
//! [`STEP`].

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::{BodyExt, Full, StreamBody};
use hyper::Request;
use hyper::body::{Bytes, Frame};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use support::*;

/// An HTTP/2 connection to the gateway's TLS port (any certificate accepted), for requests with
/// body type `B`.
async fn h2<B>(gw: &Gateway) -> SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls = handshake(gw, "fast.test", None, &[b"h2"])
        .await
        .expect("TLS handshake");
    assert_eq!(tls.alpn.as_deref(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls.stream))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    sender
}

#[derive(Debug)]
struct H2Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl H2Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn send<B>(sender: &mut SendRequest<B>, req: Request<B>) -> H2Answer
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::time::timeout(STEP, async {
        let resp = sender.send_request(req).await.expect("response");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        H2Answer {
            status,
            headers,
            body,
        }
    })
    .await
    .expect("HTTP/2 request timed out")
}

fn get(uri: &str) -> hyper::http::request::Builder {
    Request::get(uri)
}

/// `method uri` without a body.
async fn bodiless(
    sender: &mut SendRequest<Full<Bytes>>,
    method: hyper::Method,
    uri: &str,
) -> H2Answer {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(sender, req).await
}

async fn handovers(gw: &Gateway, reason: &str) -> Option<f64> {
    let text = scrape(gw, "/metrics").await.body;
    sample(
        text.as_str().unwrap_or(""),
        &format!(
            r#"drawbridge_gateway_pingora_path_requests_total{{protocol="HTTP/2",reason="{reason}"}}"#
        ),
    )
}

/// No stream went to Pingora's path (the hand-over counter has no series at all).
async fn assert_nothing_handed_over(gw: &Gateway) {
    let text = metrics_text(gw).await;
    assert!(
        !text.contains("drawbridge_gateway_pingora_path_requests_total{"),
        "a stream was handed to Pingora's path:\n{text}"
    );
}

async fn echo_gateway(args: &[&str]) -> (Gateway, Origin) {
    let origin = Origin::start("echo", "127.0.0.1").await;
    let objects = vec![
        mk_class(),
        mk_service("echo"),
        ingress_to("fast.test", "echo"),
        slice_at("echo", origin.addr),
    ];
    (Gateway::start_with(&objects, args).await, origin)
}

/// The endpoint's view of a GET with two cookie crumbs, a client X-Forwarded-For, a spoofed
/// X-Forwarded-Proto and `te: trailers`.
async fn forwarded_get(sender: &mut SendRequest<Full<Bytes>>) -> H2Answer {
    let req = get("https://fast.test/some/path?q=1")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("x-forwarded-for", "192.0.2.7")
        .header("x-forwarded-proto", "gopher")
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(sender, req).await
}

/// The request field names the echo endpoint reports (`headers` in its JSON).
fn header_names(echo: &Value) -> Vec<&str> {
    echo["headers"]
        .as_array()
        .expect("the endpoint's header names")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

fn check_forwarded(a: &H2Answer, gw: &Gateway) {
    assert_eq!(a.status, 200, "{a:?}");
    let j = a.json();
    assert_eq!(j["host"], "fast.test");
    assert_eq!(j["path"], "/some/path");
    assert_eq!(j["xff"], "192.0.2.7, 127.0.0.1");
    assert_eq!(j["xri"], "127.0.0.1");
    assert_eq!(j["xfp"], "https", "overwritten, not trusted");
    assert_eq!(j["xfh"], "fast.test");
    assert_eq!(j["xfport"], gw.https.port().to_string());
    let rid = j["xrid"].as_str().unwrap_or("");
    assert!(
        rid.len() == 32 && rid.bytes().all(|b| b.is_ascii_hexdigit()),
        "generated X-Request-ID: {rid:?}"
    );
    let names = header_names(&j);
    assert!(!names.contains(&"te"), "TE is hop-by-hop: {names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_to_http1_endpoints_are_served_on_the_fast_path_with_pooled_connections() {
    let (gw, origin) = echo_gateway(&[]).await;
    let mut sender: SendRequest<Full<Bytes>> = h2(&gw).await;
    for _ in 0..10 {
        let a = forwarded_get(&mut sender).await;
        check_forwarded(&a, &gw);
        // RFC 9113 §8.2.3: crumbs joined into one field for HTTP/1.1.
        assert_eq!(a.json()["cookie"], json!(["a=1; b=2"]));
        assert!(a.header("date").is_some());
    }
    // The client's own X-Request-ID is kept.
    let req = get("https://fast.test/")
        .header("x-request-id", "from-the-client")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        send(&mut sender, req).await.json()["xrid"],
        "from-the-client"
    );
    assert_eq!(
        origin.accepted.load(Ordering::SeqCst),
        1,
        "one pooled upstream connection for 11 sequential streams"
    );
    assert_nothing_handed_over(&gw).await;
    let text = metrics_text(&gw).await;
    assert_eq!(
        sample(
            &text,
            r#"drawbridge_gateway_requests_total{ingress="default/echo",host="fast.test",method="GET",status="2xx"}"#
        ),
        Some(11.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_the_fast_path_does_not_take_go_to_pingora_on_the_same_connection() {
    let (gw, _origin) = echo_gateway(&[]).await;
    let mut sender: SendRequest<Full<Bytes>> = h2(&gw).await;
    let a = bodiless(&mut sender, hyper::Method::GET, "https://nowhere.test/").await;
    assert_eq!(a.status, 404);
    // The connection still serves fast-path streams.
    check_forwarded(&forwarded_get(&mut sender).await, &gw);
    assert_eq!(handovers(&gw, "no rule").await, Some(1.0));
}

/// A body of unknown length (no `Content-Length`): `pieces` as DATA frames.
fn unsized_body(
    pieces: Vec<Bytes>,
) -> StreamBody<impl futures::Stream<Item = Result<Frame<Bytes>, std::convert::Infallible>> + Unpin>
{
    StreamBody::new(futures::stream::iter(
        pieces.into_iter().map(|p| Ok(Frame::data(p))),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_without_content_length_go_upstream_chunked() {
    let (gw, _origin) = echo_gateway(&[]).await;
    let mut sender = h2(&gw).await;
    let pieces = vec![
        Bytes::from_static(b"hel"),
        Bytes::new(),
        Bytes::from_static(b"lo"),
    ];
    let post = Request::post("https://fast.test/upload")
        .header("expect", "100-continue")
        .body(unsized_body(pieces))
        .unwrap();
    let a = send(&mut sender, post).await;
    assert_eq!(a.status, 200, "{a:?}");
    let j = a.json();
    assert_eq!(j["body_len"], 5);
    let names = header_names(&j);
    assert!(names.contains(&"transfer-encoding"), "{names:?}");
    assert!(
        !names.contains(&"expect"),
        "the body is sent unasked: {names:?}"
    );
    // Past the default proxy-body-size (1 MiB) while streaming: 413.
    let mut sender = h2(&gw).await;
    let post = Request::post("https://fast.test/upload")
        .body(unsized_body(vec![Bytes::from(vec![b'x'; 256 * 1024]); 8]))
        .unwrap();
    assert_eq!(send(&mut sender, post).await.status, 413);
    assert_nothing_handed_over(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_with_content_length_stream_upstream_on_the_fast_path() {
    let (gw, _origin) = echo_gateway(&[]).await;
    let mut sender: SendRequest<Full<Bytes>> = h2(&gw).await;
    for size in [5usize, 100_000, 1_000_000] {
        let post = Request::post("https://fast.test/upload")
            .header("content-length", size.to_string())
            .body(Full::new(Bytes::from(vec![b'x'; size])))
            .unwrap();
        let a = send(&mut sender, post).await;
        assert_eq!(a.status, 200, "{size} bytes");
        assert_eq!(a.json()["body_len"], size, "{size} bytes");
        assert_eq!(a.json()["method"], "POST");
    }
    assert_nothing_handed_over(&gw).await;
    let text = metrics_text(&gw).await;
    assert_eq!(
        sample(
            &text,
            r#"drawbridge_gateway_request_bytes_total{ingress="default/echo",host="fast.test"}"#
        ),
        Some((5 + 100_000 + 1_000_000) as f64),
        "{text}"
    );
    // Over the default proxy-body-size (1 MiB): Pingora's path answers 413.
    let post = Request::post("https://fast.test/upload")
        .header("content-length", "3000000")
        .body(Full::new(Bytes::from(vec![b'x'; 3_000_000])))
        .unwrap();
    assert_eq!(send(&mut sender, post).await.status, 413);
    assert_eq!(handovers(&gw, "body over the limit").await, Some(1.0));
}

/// A boxed stream of request body frames.
type BoxedFrames = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<Frame<Bytes>, std::convert::Infallible>> + Send>,
>;

/// `Content-Length: 5` sent as "hel" and "lo", then END_STREAM only after `end` (`None`: never).
fn late_end_body(end: Option<Duration>) -> StreamBody<BoxedFrames> {
    use futures::StreamExt;
    let pieces = futures::stream::iter([b"hel".as_slice(), b"lo".as_slice()])
        .map(|p| Ok(Frame::data(Bytes::from_static(p))));
    let tail = futures::stream::once(async move {
        match end {
            Some(after) => tokio::time::sleep(after).await,
            None => std::future::pending().await,
        }
    })
    .filter_map(|()| async { None });
    StreamBody::new(Box::pin(pieces.chain(tail)))
}

/// All `Content-Length` bytes arrive, END_STREAM later (an empty DATA frame) or never: the
/// answer is not held back for it, the client gets the whole answer (RFC 9113 §8.1: a server may
/// answer before the request is complete and then reset the stream with NO_ERROR), and the
/// connection keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_whose_end_stream_comes_late_or_never_is_answered_in_full() {
    let (gw, _origin) = echo_gateway(&[]).await;
    let mut sender = h2(&gw).await;
    for end in [Some(Duration::from_millis(500)), None] {
        let post = Request::post("https://fast.test/upload")
            .header("content-length", "5")
            .body(late_end_body(end))
            .unwrap();
        let started = std::time::Instant::now();
        let a = send(&mut sender, post).await;
        assert_eq!(a.status, 200, "END_STREAM after {end:?}: {a:?}");
        assert_eq!(a.json()["body_len"], 5, "END_STREAM after {end:?}");
        assert!(
            started.elapsed() < Duration::from_millis(450),
            "the answer waited for END_STREAM ({end:?}): {:?}",
            started.elapsed()
        );
    }
    // Give the late END_STREAM (and the resets) time to cross, then reuse the connection.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let post = Request::post("https://fast.test/upload")
        .header("content-length", "5")
        .body(late_end_body(Some(Duration::ZERO)))
        .unwrap();
    let a = send(&mut sender, post).await;
    assert_eq!(a.status, 200, "the connection still serves: {a:?}");
    assert_nothing_handed_over(&gw).await;
}

/// One HTTP/2 frame: 9-byte header (length, type, flags, stream) and payload (RFC 9113 §4.1).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `GET https://fast.test/...` answered 4xx: the 499 logged for a client that went away.
const CLIENT_GONE: &str = r#"drawbridge_gateway_requests_total{ingress="default/echo",host="fast.test",method="GET",status="4xx"}"#;

/// Waits (at most [`STEP`]) until the metric sample `key` reads 1.
async fn assert_counted_once(gw: &Gateway, key: &str) {
    let counted = eventually(STEP, || async {
        sample(&metrics_text(gw).await, key) == Some(1.0)
    })
    .await;
    assert!(counted, "{key} never read 1:\n{}", metrics_text(gw).await);
}

/// A new HTTP/2 connection still gets 200 on the fast path.
async fn assert_still_serving(gw: &Gateway) {
    let mut sender: SendRequest<Full<Bytes>> = h2(gw).await;
    let a = bodiless(&mut sender, hyper::Method::GET, "https://fast.test/").await;
    assert_eq!(a.status, 200);
    assert_nothing_handed_over(gw).await;
}

/// A raw HTTP/2 connection (TLS, ALPN h2) that has sent its preface, an empty SETTINGS and
/// stream 1: `GET https://fast.test{path}` with END_STREAM, or with `body` a `POST` with
/// `content-length` and the body in one DATA frame with END_STREAM. The header block is HPACK
/// without Huffman or the dynamic table (RFC 7541): :method GET or POST (static 2, 3), :scheme
/// https (static 7), :path, :authority and content-length as literals with an indexed name
/// (static 4, 1 and 28).
async fn raw_h2_request(
    gw: &Gateway,
    path: &str,
    body: Option<&[u8]>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let tls = handshake(gw, "fast.test", None, &[b"h2"]).await.unwrap();
    assert_eq!(tls.alpn.as_deref(), Some(&b"h2"[..]));
    let mut stream = tls.stream;
    let method = if body.is_some() { 0x83 } else { 0x82 };
    let mut block = vec![method, 0x87, 0x04, u8::try_from(path.len()).unwrap()];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"fast.test");
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    match body {
        None => hello.extend(frame(0x1, 0x5, 1, &block)), // HEADERS, END_STREAM | END_HEADERS
        Some(body) => {
            let length = body.len().to_string();
            block.extend_from_slice(&[0x0f, 28 - 15, u8::try_from(length.len()).unwrap()]);
            block.extend_from_slice(length.as_bytes());
            hello.extend(frame(0x1, 0x4, 1, &block)); // HEADERS, END_HEADERS
            hello.extend(frame(0x0, 0x1, 1, body)); // DATA, END_STREAM
        }
    }
    stream.write_all(&hello).await.unwrap();
    stream
}

/// A connection that fails (the client breaks the protocol: DATA on stream 0, a connection
/// error, RFC 9113 §6.1) while one of its streams waits on the endpoint: the connection ends,
/// the stream (which runs in the connection's task) is still finished, logged as 499 (the
/// client never got its answer) and counted, and the gateway keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_outliving_its_failed_connection_is_finished_and_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (gw, _origin) = echo_gateway(&[]).await;
    let mut stream = raw_h2_request(&gw, "/sleep/700", None).await;
    // Reaches the endpoint (which answers after 700 ms), then the protocol error.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(&frame(0x0, 0, 0, b"x")).await.unwrap();
    // The gateway answers with GOAWAY and closes; the stream's answer never comes.
    let mut got = Vec::new();
    let closed = tokio::time::timeout(STEP, stream.read_to_end(&mut got)).await;
    assert!(closed.is_ok(), "the connection was left open");
    let finished = r#"drawbridge_gateway_request_duration_seconds_count{ingress="default/echo",host="fast.test"}"#;
    assert_counted_once(&gw, finished).await;
    assert_eq!(sample(&metrics_text(&gw).await, CLIENT_GONE), Some(1.0));
    assert_still_serving(&gw).await;
}

/// A client that resets its stream (RST_STREAM CANCEL) while the endpoint has not answered yet,
/// with and without a request body (sent whole before the reset): the gateway stops waiting at
/// once and logs 499 (nginx's "client closed request"), long before the endpoint's answer
/// (4 s); the connection keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reset_while_the_endpoint_thinks_is_logged_499_at_once() {
    use tokio::io::AsyncWriteExt;
    for (body, method) in [(None, "GET"), (Some(&b"hello"[..]), "POST")] {
        let (gw, _origin) = echo_gateway(&[]).await;
        let mut stream = raw_h2_request(&gw, "/sleep/4000", body).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let reset = std::time::Instant::now();
        stream
            .write_all(&frame(0x3, 0, 1, &8u32.to_be_bytes())) // RST_STREAM, CANCEL
            .await
            .unwrap();
        let gone = CLIENT_GONE.replace("GET", method);
        assert_counted_once(&gw, &gone).await;
        assert!(
            reset.elapsed() < Duration::from_millis(2500),
            "{method}: logged {:?} after the reset: the gateway waited for the endpoint",
            reset.elapsed()
        );
        assert_still_serving(&gw).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_fast_path_off_serves_every_stream_through_pingora() {
    let (gw, _origin) = echo_gateway(&["--http2-fast-path=false"]).await;
    let mut sender: SendRequest<Full<Bytes>> = h2(&gw).await;
    check_forwarded(&forwarded_get(&mut sender).await, &gw);
    // With the HTTP/2 fast path off nothing is handed over (it is never taken).
    assert_nothing_handed_over(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_answers_become_data_frames_and_the_upstream_connection_is_reused() {
    const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: x-hop\r\nX-Hop: 1\r\nX-Kept: 1\r\n\r\n\
                          5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n";
    let (addr, accepted) = scripted_origin(RESP, 9, false).await;
    let gw = gateway_with_raw(addr).await;
    let mut sender: SendRequest<Full<Bytes>> = h2(&gw).await;
    for _ in 0..3 {
        let a = bodiless(&mut sender, hyper::Method::GET, "https://raw.test/c").await;
        assert_eq!(a.status, 200);
        assert_eq!(&a.body[..], b"hello, world");
        assert_eq!(a.header("x-kept"), Some("1"));
        assert_eq!(
            a.header("x-hop"),
            None,
            "Connection-nominated field removed"
        );
        assert_eq!(a.header("transfer-encoding"), None);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection"
    );
    let text = metrics_text(&gw).await;
    assert_eq!(
        sample(
            &text,
            r#"drawbridge_gateway_response_bytes_total{ingress="default/raw",host="raw.test"}"#
        ),
        Some(36.0),
        "payload bytes counted: {text}"
    );
    assert_nothing_handed_over(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delimited_and_head_answers() {
    const EOF: &[u8] = b"HTTP/1.1 200 OK\r\nX-Kind: eof\r\n\r\nuntil the end";
    let (addr, accepted) = scripted_origin(EOF, 20, true).await;
    let gw = gateway_with_raw(addr).await;
    let mut sender: SendRequest<Full<Bytes>> = h2(&gw).await;
    for _ in 0..2 {
        let a = bodiless(&mut sender, hyper::Method::GET, "https://raw.test/").await;
        assert_eq!(a.status, 200);
        assert_eq!(&a.body[..], b"until the end");
        assert_eq!(a.header("x-kind"), Some("eof"));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "never pooled");

    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
    let (addr, accepted) = scripted_origin(HEAD, 1000, false).await;
    let gw = gateway_with_raw(addr).await;
    let mut sender: SendRequest<Full<Bytes>> = h2(&gw).await;
    for _ in 0..2 {
        let a = bodiless(&mut sender, hyper::Method::HEAD, "https://raw.test/").await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("content-length"), Some("1000"));
        assert!(a.body.is_empty());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "HEAD answer pooled");
    assert_nothing_handed_over(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_answer_504_and_502() {
    // Reads the request, never answers: 504 after the 1 s read timeout.
    let (silent, _) = scripted_origin(b"", 1, false).await;
    // Nothing listens there: 502 after the connect tries.
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut slow = ingress_to("slow.test", "slow");
    slow["metadata"]["annotations"] = json!({"drawbridge.dev/proxy-read-timeout": "1"});
    let objects = vec![
        mk_class(),
        mk_service("slow"),
        mk_service("dead"),
        slow,
        ingress_to("dead.test", "dead"),
        slice_at("slow", silent),
        slice_at("dead", refused),
    ];
    let gw = Gateway::start_with(&objects, &[]).await;
    let mut sender: SendRequest<Full<Bytes>> = h2(&gw).await;
    let started = std::time::Instant::now();
    let a = bodiless(&mut sender, hyper::Method::GET, "https://slow.test/").await;
    assert_eq!(a.status, 504);
    assert!(started.elapsed() >= Duration::from_millis(900));
    let a = bodiless(&mut sender, hyper::Method::GET, "https://dead.test/").await;
    assert_eq!(a.status, 502);
    assert_nothing_handed_over(&gw).await;
}

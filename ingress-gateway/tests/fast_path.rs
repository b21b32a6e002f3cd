//! The HTTP/1.1 fast path's own edges (`ingress_gateway::fast`), through the real binary with
//! raw TCP clients and raw origins: pipelined requests, a request split across reads, heads too
//! large or too many fields for the fast path (handed to Pingora on the same connection), an
//! endpoint closing a pooled connection, chunked and close-delimited responses, a HEAD answer,
//! a client gone while the endpoint thinks, a request pipelined during that wait, requests after
//! an idle pause (buffers given back), and `--http1-fast-path=false`. Every step is bounded by
//! [`STEP`].

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A gateway serving `host` → the hyper origin of `support` (which echoes what it received).
async fn gateway_with_echo(args: &[&str]) -> (Gateway, Origin) {
    let origin = Origin::start("echo", "127.0.0.1").await;
    let objects = vec![
        mk_class(),
        mk_service("echo"),
        ingress_to("fast.test", "echo"),
        slice_at("echo", origin.addr),
    ];
    let gw = Gateway::start_with(&objects, args).await;
    (gw, origin)
}

/// One HTTP/1.1 response read from `s` (bytes already read are kept in `buf` across calls, so
/// pipelined responses are split correctly). Content-Length and chunked bodies; `head` says the
/// response has no body.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut tmp = [0u8; 8192];
    let n = tokio::time::timeout(STEP, s.read(&mut tmp))
        .await
        .expect("read timed out")
        .expect("read");
    assert!(
        n > 0,
        "connection closed early; have {:?}",
        String::from_utf8_lossy(buf)
    );
    buf.extend_from_slice(&tmp[..n]);
}

async fn read_resp(s: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Resp {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(s, buf).await;
    };
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    buf.drain(..end);
    let status = head[9..12].parse().unwrap();
    let mut r = Resp {
        status,
        head,
        body: Vec::new(),
    };
    if head_only {
        return r;
    }
    if let Some(n) = r.header("content-length") {
        let n: usize = n.parse().unwrap();
        while buf.len() < n {
            fill(s, buf).await;
        }
        r.body = buf.drain(..n).collect();
    } else if r
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(s, buf).await;
            };
            let line = String::from_utf8(buf[..line_end].to_vec()).unwrap();
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
            buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers until the empty line.
                loop {
                    let e = loop {
                        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                            break i;
                        }
                        fill(s, buf).await;
                    };
                    buf.drain(..e + 2);
                    if e == 0 {
                        break;
                    }
                }
                break;
            }
            while buf.len() < size + 2 {
                fill(s, buf).await;
            }
            r.body.extend(buf.drain(..size));
            assert_eq!(&buf[..2], b"\r\n");
            buf.drain(..2);
        }
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let (gw, origin) = gateway_with_echo(&[]).await;
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    // Three requests in one write, one with a body; then a fourth after the answers.
    let batch = "GET /one HTTP/1.1\r\nHost: fast.test\r\n\r\n\
                 POST /two HTTP/1.1\r\nHost: fast.test\r\nContent-Length: 5\r\n\r\nhello\
                 GET /three HTTP/1.1\r\nHost: fast.test\r\n\r\n";
    s.write_all(batch.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let r = read_resp(&mut s, &mut buf, false).await;
        assert_eq!(r.status, 200, "{r:?}");
        let j = r.json();
        seen.push((
            j["path"].as_str().unwrap().to_string(),
            j["body_len"].as_u64().unwrap(),
        ));
    }
    assert_eq!(
        seen,
        [("/one".into(), 0), ("/two".into(), 5), ("/three".into(), 0)]
    );
    s.write_all(b"GET /four HTTP/1.1\r\nHost: fast.test\r\n\r\n")
        .await
        .unwrap();
    let r = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(r.json()["path"], "/four");
    assert!(buf.is_empty(), "nothing more than four answers");
    // Four requests, one upstream connection (pooled between requests).
    assert_eq!(origin.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_split_across_reads_is_reassembled() {
    let (gw, _origin) = gateway_with_echo(&[]).await;
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    s.set_nodelay(true).unwrap();
    let req = "POST /split?q=1 HTTP/1.1\r\nHost: fast.test\r\nX-Forwarded-For: 192.0.2.9\r\n\
               X-Request-ID: split-1\r\nContent-Length: 10\r\n\r\n0123456789";
    for piece in req.as_bytes().chunks(7) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut buf = Vec::new();
    let r = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["path"], "/split");
    assert_eq!(j["body_len"], 10);
    assert_eq!(j["xff"], "192.0.2.9, 127.0.0.1");
    assert_eq!(j["xri"], "127.0.0.1");
    assert_eq!(j["xfp"], "http");
    assert_eq!(j["xfh"], "fast.test");
    assert_eq!(j["xfport"], gw.http.port().to_string());
    assert_eq!(j["xrid"], "split-1");
    // A generated request ID: 32 hex digits.
    s.write_all(b"GET / HTTP/1.1\r\nHost: fast.test\r\n\r\n")
        .await
        .unwrap();
    let j = read_resp(&mut s, &mut buf, false).await.json();
    let id = j["xrid"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
}

/// An idle keep-alive connection gives its buffers back and reads its next request through a
/// 4 KiB buffer on the stack (`fast::read_idle`): requests that arrive after a pause, split in
/// 7-byte pieces with a body, or with a 6 KiB target (more than one such read), arrive whole
/// on the fast path (no hand-over to Pingora), over the one pooled upstream connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_after_an_idle_pause_are_read_whole_with_the_buffers_given_back() {
    let (gw, origin) = gateway_with_echo(&[]).await;
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /first HTTP/1.1\r\nHost: fast.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_resp(&mut s, &mut buf, false).await.json()["path"],
        "/first"
    );

    // The gateway waits for the next request with its buffers released.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let split = "POST /split HTTP/1.1\r\nHost: fast.test\r\nContent-Length: 10\r\n\r\n0123456789";
    for piece in split.as_bytes().chunks(7) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let j = read_resp(&mut s, &mut buf, false).await.json();
    assert_eq!(
        (j["path"].as_str(), j["body_len"].as_u64()),
        (Some("/split"), Some(10))
    );

    tokio::time::sleep(Duration::from_millis(100)).await;
    // A 6 KiB request target, every 4 characters different: any byte lost or moved shows.
    let long: String = (0..1500).map(|i| format!("{i:04}")).collect();
    let big = format!("GET /long/{long} HTTP/1.1\r\nHost: fast.test\r\n\r\n");
    s.write_all(big.as_bytes()).await.unwrap();
    let r = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(
        r.json()["path"] == format!("/long/{long}"),
        "the long target arrived whole"
    );

    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"GET /last HTTP/1.1\r\nHost: fast.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_resp(&mut s, &mut buf, false).await.json()["path"],
        "/last"
    );
    assert!(buf.is_empty(), "four answers, nothing more");
    assert_eq!(
        origin.accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection"
    );
    let handed_over = || async {
        metrics_text(&gw)
            .await
            .lines()
            .filter(|l| l.starts_with("drawbridge_gateway_pingora_path_requests_total{"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        handed_over().await,
        Vec::<String>::new(),
        "all four on the fast path"
    );
    // The check sees a hand-over when there is one (HTTP/1.0 goes to Pingora's path).
    s.write_all(b"GET /old HTTP/1.0\r\nHost: fast.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_resp(&mut s, &mut buf, false).await.json()["path"],
        "/old"
    );
    assert_eq!(handed_over().await.len(), 1, "{:?}", handed_over().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_larger_than_the_fast_path_buffer_goes_through_pingora_on_the_same_connection() {
    let (gw, _origin) = gateway_with_echo(&[]).await;
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    let mut buf = Vec::new();
    // 100 KiB of header (past the fast path's 64 KiB buffer; Pingora allows 1 MiB).
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: fast.test\r\nX-Big: {}\r\n\r\n",
        "b".repeat(100 * 1024)
    );
    s.write_all(big.as_bytes()).await.unwrap();
    let r = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.json()["path"], "/big");
    assert_eq!(r.json()["xfp"], "http");
    // The same connection keeps working (now on Pingora's path).
    s.write_all(b"GET /after HTTP/1.1\r\nHost: fast.test\r\n\r\n")
        .await
        .unwrap();
    let r = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/after");
}

/// A raw origin answering each request with the number of header fields it received.
async fn counting_origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = read_request_head(&mut s, &mut buf).await else {
                        return;
                    };
                    let fields = buf[..end].windows(2).filter(|w| w == b"\r\n").count() - 2;
                    buf.drain(..end);
                    let body = fields.to_string();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_fields_than_the_fast_path_parses_are_handed_over() {
    let gw = gateway_with_raw(counting_origin().await).await;
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    let mut buf = Vec::new();
    // 10 fields on the fast path: Host + 9, plus X-Forwarded-For/-Proto/-Host/-Port, X-Real-IP
    // and X-Request-ID added.
    let few: String = (0..9).map(|i| format!("X-F{i}: v\r\n")).collect();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: raw.test\r\n{few}\r\n").as_bytes())
        .await
        .unwrap();
    let r = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(String::from_utf8(r.body).unwrap(), "16");
    // 150 fields (more than the fast path's 96): Pingora forwards them all, same connection.
    let many: String = (0..149).map(|i| format!("X-F{i}: v\r\n")).collect();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: raw.test\r\n{many}\r\n").as_bytes())
        .await
        .unwrap();
    let r = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 200);
    let forwarded: usize = String::from_utf8(r.body).unwrap().parse().unwrap();
    assert!(
        forwarded >= 150 + 5,
        "{forwarded} fields reached the origin"
    );
}

/// A raw origin: answers each request on a connection with `Content-Length` keep-alive, except
/// that the second request on every connection is read and then the connection is closed
/// without an answer (an endpoint closing an idle keep-alive connection as the gateway reuses
/// it). Counts connections.
async fn closing_origin() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut served = 0;
                loop {
                    if read_request_head(&mut s, &mut buf).await.is_none() {
                        return;
                    }
                    buf.clear();
                    served += 1;
                    if served == 2 {
                        return; // closes without answering
                    }
                    let body = format!("conn {n} req {served}");
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_endpoint_closed_is_retried_on_a_new_one() {
    let (addr, accepted) = closing_origin().await;
    let gw = gateway_with_raw(addr).await;
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    let mut buf = Vec::new();
    for i in 1..=3 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: raw.test\r\n\r\n")
            .await
            .unwrap();
        let r = read_resp(&mut s, &mut buf, false).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            format!("conn {i} req 1"),
            "request {i} answered on a new upstream connection"
        );
    }
    // Each later request first met the closing pooled connection, then a new one.
    assert_eq!(accepted.load(Ordering::SeqCst), 3);

    // A POST is not repeated on a new connection (it may have been processed): 502.
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: raw.test\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let r = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 502, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_responses_pass_through_and_the_upstream_connection_is_reused() {
    const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: x-hop\r\nX-Hop: 1\r\nX-Kept: 1\r\n\r\n\
                          5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n";
    let (addr, accepted) = scripted_origin(RESP, 9, false).await;
    let gw = gateway_with_raw(addr).await;
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..3 {
        s.write_all(b"GET /c HTTP/1.1\r\nHost: raw.test\r\n\r\n")
            .await
            .unwrap();
        let r = read_resp(&mut s, &mut buf, false).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello, world");
        assert_eq!(r.header("x-kept").as_deref(), Some("1"));
        assert_eq!(
            r.header("x-hop"),
            None,
            "Connection-nominated field removed"
        );
        assert_eq!(r.header("connection"), None);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection for three"
    );
    // The payload bytes (12 per response), not the chunk framing, are counted.
    let text = scrape(&gw, "/metrics").await.body;
    let text = text.as_str().unwrap();
    assert_eq!(
        sample(
            text,
            r#"drawbridge_gateway_response_bytes_total{ingress="default/raw",host="raw.test"}"#
        ),
        Some(36.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_delimited_response_is_rechunked_and_the_client_keeps_its_connection() {
    const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nX-Kind: eof\r\n\r\nuntil the end";
    let (addr, accepted) = scripted_origin(RESP, 20, true).await;
    let gw = gateway_with_raw(addr).await;
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: raw.test\r\n\r\n")
            .await
            .unwrap();
        let r = read_resp(&mut s, &mut buf, false).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("transfer-encoding").as_deref(), Some("chunked"));
        assert_eq!(r.body, b"until the end");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "never pooled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_requests_and_client_close() {
    const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
    let (addr, accepted) = scripted_origin(RESP, 1000, false).await;
    let gw = gateway_with_raw(addr).await;
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..2 {
        s.write_all(b"HEAD / HTTP/1.1\r\nHost: raw.test\r\n\r\n")
            .await
            .unwrap();
        let r = read_resp(&mut s, &mut buf, true).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length").as_deref(), Some("1000"));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // Connection: close is answered with connection: close, then the connection ends.
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: raw.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let r = read_resp(&mut s, &mut buf, true).await;
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    let mut rest = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(buf.is_empty() && rest.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_read_timeout_answers_504_on_the_fast_path() {
    // The origin reads the request and never answers.
    let (addr, _) = scripted_origin(b"", 1, false).await;
    let mut objects = vec![mk_class(), mk_service("raw"), slice_at("raw", addr)];
    let mut ing = ingress_to("raw.test", "raw");
    ing["metadata"]["annotations"] = json!({"drawbridge.dev/proxy-read-timeout": "1"});
    objects.push(ing);
    let gw = Gateway::start_with(&objects, &[]).await;
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: raw.test\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let r = read_resp(&mut s, &mut Vec::new(), false).await;
    assert_eq!(r.status, 504);
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_off_serves_through_pingora() {
    let (gw, _origin) = gateway_with_echo(&["--http1-fast-path=false"]).await;
    let a = get(&gw, "fast.test", "/off", &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.field("path"), Some("/off"));
    assert_eq!(a.field("xfp"), Some("http"));
    // Pingora's path without pipelining support answers the first of two pipelined requests
    // and closes (the fast path answers both: pipelined_requests_are_answered_in_order).
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    s.write_all(
        b"GET /1 HTTP/1.1\r\nHost: fast.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: fast.test\r\n\r\n",
    )
    .await
    .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 1, "{text}");
}

/// A raw origin answering the first request on each connection with `200` and never the
/// next ones (reads them and waits).
async fn first_only_origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut answered = false;
                loop {
                    if read_request_head(&mut s, &mut buf).await.is_none() {
                        return;
                    }
                    buf.clear();
                    if !answered {
                        // After a pause, so that the gateway waits for (and times) this read.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                        answered = true;
                    }
                }
            });
        }
    });
    addr
}

/// The fast path arms one timer per connection side lazily (`fast::timer::Deadline`): a timer
/// armed by an earlier request on the same connection must not cut a later one short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_timeout_armed_by_an_earlier_request_still_gives_the_next_its_full_time() {
    let addr = first_only_origin().await;
    let mut objects = vec![mk_class(), mk_service("raw"), slice_at("raw", addr)];
    let mut ing = ingress_to("raw.test", "raw");
    ing["metadata"]["annotations"] = json!({"drawbridge.dev/proxy-read-timeout": "1"});
    objects.push(ing);
    let gw = Gateway::start_with(&objects, &[]).await;
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: raw.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_resp(&mut s, &mut buf, false).await.status, 200);
    // The first request's 1 s timer would fire ~0.6 s into the second request.
    tokio::time::sleep(Duration::from_millis(600)).await;
    s.write_all(b"GET /2 HTTP/1.1\r\nHost: raw.test\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let r = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 504);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "timed out after {waited:?}, not the full 1 s"
    );
}

/// Upstream connections are reused with both runtimes: `--work-stealing=false` (one runtime
/// per thread, pool per thread) and `--work-stealing=true` (the default, shared pool). Eight
/// client connections one after another over two proxy threads need at most one upstream
/// connection per thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused_with_and_without_work_stealing() {
    const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    for flag in ["--work-stealing=false", "--work-stealing=true"] {
        let (addr, accepted) = scripted_origin(RESP, RESP.len(), false).await;
        let objects = vec![
            mk_class(),
            mk_service("raw"),
            ingress_to("raw.test", "raw"),
            slice_at("raw", addr),
        ];
        let gw = Gateway::start_with(&objects, &[flag]).await;
        for i in 0..8 {
            let mut s = TcpStream::connect(gw.http).await.unwrap();
            let mut buf = Vec::new();
            for _ in 0..3 {
                s.write_all(b"GET / HTTP/1.1\r\nHost: raw.test\r\n\r\n")
                    .await
                    .unwrap();
                let r = read_resp(&mut s, &mut buf, false).await;
                assert_eq!(r.status, 200, "{flag} connection {i}");
                assert_eq!(r.body, b"ok");
            }
            drop(s);
            // Lets the gateway return the upstream connection before the next client comes.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let n = accepted.load(Ordering::SeqCst);
        assert!(
            (1..=2).contains(&n),
            "{flag}: {n} upstream connections for 24 sequential requests on 2 threads"
        );
    }
}

/// What a [`silent_origin`] connection saw, and when.
#[derive(Debug, PartialEq)]
enum Seen {
    /// A whole request head (never answered).
    Request,
    /// The gateway closed the connection.
    Closed,
}

/// A raw origin that reads each request head and never answers (an endpoint thinking for
/// longer than any test), reporting each head and the end of each connection as they happen.
async fn silent_origin() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<(Seen, std::time::Instant)>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(end) = read_request_head(&mut s, &mut buf).await {
                    buf.drain(..end);
                    let _ = tx.send((Seen::Request, std::time::Instant::now()));
                }
                let _ = tx.send((Seen::Closed, std::time::Instant::now()));
            });
        }
    });
    (addr, rx)
}

/// A client that closes its connection, or only its sending half (nginx takes either for a
/// client that went away), while the endpoint has not answered: the gateway stops waiting at
/// once (not after the 60 s read timeout), closes the upstream connection too, closes the
/// client's, and counts the request as 499, as nginx does with `proxy_ignore_client_abort off`.
/// On the fast path and on Pingora's (`--http1-fast-path=false`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_while_the_endpoint_thinks_closes_the_upstream_at_once_and_is_logged_499() {
    for args in [&[][..], &["--http1-fast-path=false"]] {
        client_gone_while_the_endpoint_thinks(args).await;
    }
}

async fn client_gone_while_the_endpoint_thinks(args: &[&str]) {
    let (addr, mut seen) = silent_origin().await;
    let objects = vec![
        mk_class(),
        mk_service("raw"),
        ingress_to("raw.test", "raw"),
        slice_at("raw", addr),
    ];
    let gw = Gateway::start_with(&objects, args).await;
    for half in [false, true] {
        let mut s = TcpStream::connect(gw.http).await.unwrap();
        s.write_all(b"GET /think HTTP/1.1\r\nHost: raw.test\r\n\r\n")
            .await
            .unwrap();
        let (what, _) = tokio::time::timeout(STEP, seen.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(what, Seen::Request, "{args:?} half-close {half}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let gone = std::time::Instant::now();
        if half {
            s.shutdown().await.unwrap();
            let mut rest = Vec::new();
            let read = tokio::time::timeout(STEP, s.read_to_end(&mut rest)).await;
            assert!(read.is_ok(), "the client connection was left open");
            assert!(
                rest.is_empty(),
                "answered: {:?}",
                String::from_utf8_lossy(&rest)
            );
        } else {
            drop(s);
        }
        let (what, at) = tokio::time::timeout(STEP, seen.recv())
            .await
            .expect("the upstream connection was left open")
            .unwrap();
        assert_eq!(what, Seen::Closed, "{args:?} half-close {half}");
        assert!(
            at.duration_since(gone) < Duration::from_secs(1),
            "{args:?} half-close {half}: the upstream was closed {:?} after the client went",
            at.duration_since(gone)
        );
    }
    let gone = r#"drawbridge_gateway_requests_total{ingress="default/raw",host="raw.test",method="GET",status="4xx"}"#;
    let counted = eventually(STEP, || async {
        sample(&metrics_text(&gw).await, gone) == Some(2.0)
    })
    .await;
    assert!(
        counted,
        "{args:?}: {gone} never read 2:\n{}",
        metrics_text(&gw).await
    );
}

/// A request the client pipelines while the one before it waits for the endpoint (the gateway
/// reads the client during that wait, to notice it going away) is kept, and answered after the
/// first, in order: after a bodiless request, and after one whose body came in two reads (its
/// second part read straight from the connection, so the first request's bytes in the buffer are
/// fewer than its length).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_pipelined_during_the_wait_is_kept_and_answered_in_order() {
    let (gw, _origin) = gateway_with_echo(&[]).await;
    let first: [(&[u8], &[u8], u64); 2] = [
        (
            b"GET /sleep/600 HTTP/1.1\r\nHost: fast.test\r\n\r\n",
            b"",
            0,
        ),
        (
            b"POST /sleep/600 HTTP/1.1\r\nHost: fast.test\r\nContent-Length: 5\r\n\r\nab",
            b"cde",
            5,
        ),
    ];
    for (head, rest, body_len) in first {
        let mut s = TcpStream::connect(gw.http).await.unwrap();
        s.write_all(head).await.unwrap();
        if !rest.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            s.write_all(rest).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(b"POST /after HTTP/1.1\r\nHost: fast.test\r\nContent-Length: 3\r\n\r\nabc")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let a = read_resp(&mut s, &mut buf, false).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.json()["path"], "/sleep/600");
        assert_eq!(a.json()["body_len"], body_len);
        let b = read_resp(&mut s, &mut buf, false).await;
        assert_eq!(b.status, 200, "after a body of {body_len}: {b:?}");
        assert_eq!(
            (&b.json()["method"], &b.json()["path"]),
            (&json!("POST"), &json!("/after")),
            "after a body of {body_len}"
        );
        assert_eq!(b.json()["body_len"], 3, "after a body of {body_len}");
        assert!(buf.is_empty(), "nothing more than two answers");
    }
}

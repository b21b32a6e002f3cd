//! Request smuggling through the real binary, byte for byte: raw TCP clients write
//! smuggling-shaped HTTP/1.1 requests (in one write, or with the malformed part in a later write
//! after a valid start of the body), and a raw upstream records every byte it receives per
//! connection and parses it strictly (RFC 9112 framing). The rules (issue 3, RFC 9112 §6.1,
//! §6.3, §7.1):
//!
//! - the client gets `400` when nothing was answered yet, and its connection is closed;
//! - no smuggling-shaped request ever reaches the upstream as a complete request (the upstream
//!   may see the headers and the valid first chunks of a body that turns malformed later, never
//!   its end), and the upstream connection that carried such a partial request is closed, never
//!   reused for another request;
//! - well-formed requests keep working (the counters are live).
//!
//! Runs against whatever serves plain HTTP/1.1 in the binary (Pingora's proxy or a fast path).

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// === Raw upstream ===

/// What one upstream connection received.
#[derive(Clone, Default)]
struct ConnLog {
    /// Every byte, as received.
    bytes: Vec<u8>,
    /// Requests received whole (head and complete body), as `METHOD path body_len`.
    complete: Vec<String>,
    /// The upstream's strict parser found broken framing (a forwarded malformed message).
    invalid: Option<String>,
    /// The gateway closed the connection.
    closed: bool,
}

impl std::fmt::Debug for ConnLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let head_end = self.bytes.len().min(200);
        let tail_start = self.bytes.len().saturating_sub(60).max(head_end);
        f.debug_struct("ConnLog")
            .field("len", &self.bytes.len())
            .field("head", &String::from_utf8_lossy(&self.bytes[..head_end]))
            .field("tail", &String::from_utf8_lossy(&self.bytes[tail_start..]))
            .field("complete", &self.complete)
            .field("invalid", &self.invalid)
            .field("closed", &self.closed)
            .finish()
    }
}

/// A raw HTTP/1.1 origin that answers `200 ok` to every complete request (keep-alive) and records
/// everything. Requests to `/early` are answered as soon as their head arrives (before the body).
struct RawUpstream {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<ConnLog>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Framing of one message in `buf`: `Ok(Some((head_len, total_len, method, path, body_len)))`
/// when complete, `Ok(None)` when more bytes are needed, `Err` when malformed.
type Parsed = Option<(usize, usize, String, String, usize)>;

fn parse_request(buf: &[u8]) -> Result<Parsed, String> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|e| e.to_string())?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let (mut length, mut chunked, mut te_seen) = (None::<usize>, false, false);
    for line in lines {
        if line.starts_with(' ') || line.starts_with('\t') {
            return Err(format!("obs-fold forwarded: {line:?}"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header line without colon: {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| format!("bad Content-Length {value:?}"))?;
            if length.is_some_and(|l| l != n) {
                return Err("differing Content-Length forwarded".into());
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if te_seen {
                return Err("two Transfer-Encoding fields forwarded".into());
            }
            te_seen = true;
            if !value.eq_ignore_ascii_case("chunked") {
                return Err(format!("Transfer-Encoding {value:?} forwarded"));
            }
            chunked = true;
        }
    }
    if chunked && length.is_some() {
        return Err("Content-Length with Transfer-Encoding forwarded".into());
    }
    let body = head_end + 4;
    if !chunked {
        let n = length.unwrap_or(0);
        return Ok((buf.len() >= body + n).then(|| (body, body + n, method, path, n)));
    }
    // Strict chunked decoding: hex size, optional `;ext`, CRLF, data, CRLF; last chunk `0`,
    // trailer fields, empty line.
    let (mut at, mut body_len) = (body, 0usize);
    loop {
        let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[at..at + eol]).map_err(|e| e.to_string())?;
        let size_text = line.split(';').next().unwrap_or("");
        if size_text.is_empty() || !size_text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("chunk size {line:?} forwarded"));
        }
        let size = usize::from_str_radix(size_text, 16).map_err(|e| e.to_string())?;
        at += eol + 2;
        if size == 0 {
            // Trailer section up to the empty line.
            loop {
                let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, at, method, path, body_len)));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        at += size + 2;
        body_len += size;
    }
}

impl RawUpstream {
    async fn start(ip: &str) -> RawUpstream {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<ConnLog>>> = Arc::default();
        let log = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let index = {
                    let mut c = log.lock().unwrap();
                    c.push(ConnLog::default());
                    c.len() - 1
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    let mut answered_early = false;
                    let mut buf = [0u8; 8192];
                    loop {
                        let n = match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => {
                                log.lock().unwrap()[index].closed = true;
                                return;
                            }
                            Ok(n) => n,
                        };
                        log.lock().unwrap()[index]
                            .bytes
                            .extend_from_slice(&buf[..n]);
                        pending.extend_from_slice(&buf[..n]);
                        loop {
                            match parse_request(&pending) {
                                Ok(Some((_, total, method, path, body_len))) => {
                                    log.lock().unwrap()[index]
                                        .complete
                                        .push(format!("{method} {path} {body_len}"));
                                    pending.drain(..total);
                                    if !std::mem::take(&mut answered_early) {
                                        let _ = stream
                                            .write_all(
                                                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                                            )
                                            .await;
                                    }
                                }
                                Ok(None) => {
                                    let head_done = pending.windows(4).any(|w| w == b"\r\n\r\n");
                                    if head_done
                                        && !answered_early
                                        && pending.starts_with(b"POST /early ")
                                    {
                                        answered_early = true;
                                        let _ = stream
                                            .write_all(
                                                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly",
                                            )
                                            .await;
                                    }
                                    break;
                                }
                                Err(e) => {
                                    log.lock().unwrap()[index].invalid = Some(e);
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        RawUpstream { addr, conns, task }
    }

    fn conns(&self) -> Vec<ConnLog> {
        self.conns.lock().unwrap().clone()
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === Raw client ===

/// What the client saw: the response bytes, and whether the gateway closed the connection.
struct Seen {
    text: String,
    closed: bool,
}

impl Seen {
    fn status(&self) -> u16 {
        self.text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

/// Writes `parts` one write each, `gap` apart, then reads until the gateway closes the
/// connection or 3 s pass without it doing so.
async fn send_parts(addr: SocketAddr, parts: &[&[u8]], gap: Duration) -> Seen {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        // The gateway may already have answered and closed: later writes may fail.
        if s.write_all(part).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    Seen {
        text: String::from_utf8_lossy(&out).into_owned(),
        closed,
    }
}

fn objects(upstream: &RawUpstream) -> Vec<Value> {
    vec![
        mk_class(),
        mk_service("raw"),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"namespace": "default", "name": "raw-0",
                            "labels": {"kubernetes.io/service-name": "raw"}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": upstream.addr.port(), "protocol": "TCP"}],
               "endpoints": [{"addresses": [upstream.addr.ip().to_string()], "conditions": {"ready": true}}]}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"namespace": "default", "name": "raw"},
               "spec": {"ingressClassName": "drawbridge", "rules": [{"host": "raw.test", "http": {"paths": [
                   {"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "raw", "port": {"number": 80}}}}]}}]}}),
    ]
}

const HEAD: &[u8] =
    b"POST /upload HTTP/1.1\r\nHost: raw.test\r\nTransfer-Encoding: chunked\r\n\r\n";

/// Smuggling shapes sent whole in one write: each must get 400, close the connection and
/// contact no upstream at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_framing_in_the_head_or_first_chunk_never_reaches_the_upstream() {
    let upstream = RawUpstream::start("127.0.0.30").await;
    let gw = Gateway::start(&objects(&upstream)).await;

    #[rustfmt::skip]
    let cases: &[(&str, &[u8])] = &[
        ("CL + TE", b"POST / HTTP/1.1\r\nHost: raw.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("TE + CL, TE first, smuggled request after the 0 chunk",
         b"POST / HTTP/1.1\r\nHost: raw.test\r\ntransfer-encoding: chunked\r\ncontent-length: 48\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: raw.test\r\n\r\n"),
        ("duplicate differing Content-Length", b"POST / HTTP/1.1\r\nHost: raw.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        ("Content-Length list with differing values", b"POST / HTTP/1.1\r\nHost: raw.test\r\nContent-Length: 5, 6\r\n\r\nhello!"),
        ("Content-Length with a sign", b"POST / HTTP/1.1\r\nHost: raw.test\r\nContent-Length: +5\r\n\r\nhello"),
        ("Content-Length in hex", b"POST / HTTP/1.1\r\nHost: raw.test\r\nContent-Length: 0x5\r\n\r\nhello"),
        ("obs-fold continuing Transfer-Encoding", b"POST / HTTP/1.1\r\nHost: raw.test\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"),
        ("obs-fold on another field", b"POST / HTTP/1.1\r\nHost: raw.test\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n"),
        ("whitespace before the colon", b"POST / HTTP/1.1\r\nHost: raw.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        ("TE: chunked, gzip (final coding not chunked)", b"POST / HTTP/1.1\r\nHost: raw.test\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
        ("TE: chunked, identity", b"POST / HTTP/1.1\r\nHost: raw.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
        ("two TE lines, the last gzip", b"POST / HTTP/1.1\r\nHost: raw.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n"),
        ("TE: xchunked", b"POST / HTTP/1.1\r\nHost: raw.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        ("malformed first chunk size", b"POST / HTTP/1.1\r\nHost: raw.test\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n"),
        ("chunk size with junk", b"POST / HTTP/1.1\r\nHost: raw.test\r\nTransfer-Encoding: chunked\r\n\r\n5 x\r\nhello\r\n0\r\n\r\n"),
        ("oversize chunk size (overflows 64 bits)", b"POST / HTTP/1.1\r\nHost: raw.test\r\nTransfer-Encoding: chunked\r\n\r\n1FFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n"),
        ("chunk data without its CRLF", b"POST / HTTP/1.1\r\nHost: raw.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n"),
        ("chunk size line ended by a bare LF", b"POST / HTTP/1.1\r\nHost: raw.test\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"),
    ];
    let mut failures = Vec::new();
    for (what, request) in cases {
        let seen = send_parts(gw.http, &[request], Duration::ZERO).await;
        if seen.status() != 400 || !seen.closed {
            failures.push(format!(
                "{what}: status {} closed {}: {:?}",
                seen.status(),
                seen.closed,
                seen.text
            ));
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let conns = upstream.conns();
    assert!(
        failures.is_empty(),
        "{failures:#?}\nupstream saw {conns:#?}"
    );
    assert!(
        conns.is_empty(),
        "nothing may reach the upstream: {conns:#?}"
    );

    // Control: a well-formed chunked request is forwarded whole, once.
    let seen = send_parts(
        gw.http,
        &[HEAD, b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"],
        Duration::from_millis(100),
    )
    .await;
    assert_eq!(seen.status(), 200, "{}", seen.text);
    let conns = upstream.conns();
    assert_eq!(conns.len(), 1, "{conns:#?}");
    assert_eq!(conns[0].complete, vec!["POST /upload 11".to_string()]);
    assert_eq!(conns[0].invalid, None);
}

/// The body starts well (one valid chunk, forwarded upstream), and the malformed part arrives in
/// a later write. The client gets 400 (nothing was answered yet), the upstream never sees the
/// request complete, and the upstream connection that carried it is closed, never reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunk_in_a_later_write_ends_in_400_and_the_upstream_connection_is_dropped() {
    let upstream = RawUpstream::start("127.0.0.31").await;
    let gw = Gateway::start(&objects(&upstream)).await;
    let gap = Duration::from_millis(300);

    // A large valid first chunk, so the gateway streams it before the bad part arrives.
    let first: Vec<u8> = {
        let mut v = format!("{:x}\r\n", 100_000).into_bytes();
        v.extend(std::iter::repeat_n(b'a', 100_000));
        v.extend_from_slice(b"\r\n");
        v
    };
    #[rustfmt::skip]
    let later: &[(&str, &[u8])] = &[
        ("garbage chunk size", b"ZZ\r\nhello\r\n0\r\n\r\n"),
        ("chunk size with junk", b"5 x\r\nhello\r\n0\r\n\r\n"),
        ("oversize chunk size", b"FFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n"),
        ("chunk data without its CRLF", b"3\r\nabcXY0\r\n\r\n"),
        ("bare LF after the chunk size", b"3\nabc\r\n0\r\n\r\n"),
        ("smuggled request after a bad last chunk", b"0x\r\n\r\nGET /admin HTTP/1.1\r\nHost: raw.test\r\n\r\n"),
    ];
    for (what, bad) in later {
        let before = upstream.conns();
        let seen = send_parts(gw.http, &[HEAD, &first, bad], gap).await;
        assert_eq!(seen.status(), 400, "{what}: {}", seen.text);
        assert!(seen.closed, "{what}: client connection closed");
        // The connection that carried the partial request: it grew by the streamed first chunk
        // (a new one, or a clean pooled one).
        let grown = |conns: &[ConnLog]| {
            conns.iter().enumerate().find_map(|(i, c)| {
                let had = before.get(i).map_or(0, |b| b.bytes.len());
                (c.bytes.len() >= had + 100_000).then_some(i)
            })
        };
        let ok = eventually(Duration::from_secs(3), || async {
            let conns = upstream.conns();
            grown(&conns).is_some_and(|i| conns[i].closed)
        })
        .await;
        let conns = upstream.conns();
        assert!(ok, "{what}: the carrying connection is closed: {conns:#?}");
        let carrier = grown(&conns).expect("found above");
        let c = &conns[carrier];
        let completed_before = before.get(carrier).map_or(0, |b| b.complete.len());
        assert_eq!(
            c.complete.len(),
            completed_before,
            "{what}: the request completed upstream: {:?}",
            c.complete
        );
        assert_eq!(c.invalid, None, "{what}: malformed bytes forwarded");
        assert!(
            !c.bytes.windows(6).any(|w| w == b"/admin"),
            "{what}: smuggled request forwarded"
        );
        // A well-formed request afterwards is served, never over the closed connection.
        let seen = send_parts(
            gw.http,
            &[b"GET /after HTTP/1.1\r\nHost: raw.test\r\nConnection: close\r\n\r\n"],
            Duration::ZERO,
        )
        .await;
        assert_eq!(seen.status(), 200, "{what}: {}", seen.text);
        let conns = upstream.conns();
        assert_eq!(
            conns[carrier].complete.len(),
            completed_before,
            "{what}: the connection was reused: {conns:#?}"
        );
        let afters: usize = conns
            .iter()
            .map(|c| c.complete.iter().filter(|r| *r == "GET /after 0").count())
            .sum();
        let afters_before: usize = before
            .iter()
            .map(|c| c.complete.iter().filter(|r| *r == "GET /after 0").count())
            .sum();
        assert_eq!(afters, afters_before + 1, "{what}: {conns:#?}");
    }
}

/// The upstream answers before the body is complete (`/early`); the body then turns malformed.
/// The client already has its answer, so it gets no 400 — but its connection is closed and the
/// upstream connection that carried the partial body is never used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunk_after_an_early_answer_closes_both_sides() {
    let upstream = RawUpstream::start("127.0.0.32").await;
    let gw = Gateway::start(&objects(&upstream)).await;
    let seen = send_parts(
        gw.http,
        &[
            b"POST /early HTTP/1.1\r\nHost: raw.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            b"ZZ\r\nGET /admin HTTP/1.1\r\nHost: raw.test\r\n\r\n",
        ],
        Duration::from_millis(300),
    )
    .await;
    assert!(
        seen.closed,
        "client connection closed after the malformed chunk"
    );
    assert!(
        seen.text.matches("HTTP/1.1 ").count() <= 1,
        "one answer at most: {}",
        seen.text
    );
    let ok = eventually(Duration::from_secs(3), || async {
        upstream.conns().first().is_some_and(|c| c.closed)
    })
    .await;
    let conns = upstream.conns();
    assert!(ok, "upstream connection closed: {conns:#?}");
    assert!(conns[0].complete.is_empty(), "{conns:#?}");
    assert_eq!(conns[0].invalid, None, "{conns:#?}");
    // Next request: a new upstream connection.
    let seen = send_parts(
        gw.http,
        &[b"GET /next HTTP/1.1\r\nHost: raw.test\r\nConnection: close\r\n\r\n"],
        Duration::ZERO,
    )
    .await;
    assert_eq!(seen.status(), 200, "{}", seen.text);
    let conns = upstream.conns();
    assert_eq!(conns.len(), 2, "{conns:#?}");
    assert_eq!(conns[1].complete, vec!["GET /next 0".to_string()]);
}

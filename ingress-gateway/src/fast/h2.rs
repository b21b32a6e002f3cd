//! HTTP/2 streams on the fast path (`--http2-fast-path`, on by default): requests to HTTP/1.1
//! endpoints are answered from the fast path's pooled HTTP/1.1 upstream exchange
//! ([`FastPath::request_upstream`]); the other streams of the same connection go to Pingora's
//! proxy ([`crate::proxy::Gateway`]) unchanged.
//!
//! ```text
//!  TLS listener, ALPN h2 ─► FastPath::serve_h2: Pingora's h2 handshake and stream acceptance
//!     (HttpSession::from_h2_conn: forbidden bytes in :path, ambiguous Content-Length or
//!     authority are refused there, at most 32 per connection), GOAWAY on shutdown
//!     └─ per stream: route (RouteTable)
//!          ├─ no rule, redirect, no endpoints, upstream not HTTP/1.1, CONNECT, a declared
//!          │  body over proxy-body-size
//!          │  ─► a task of its own: HttpProxy<Gateway>::process_new_http (Pingora)
//!          └─ in the connection's task (FuturesUnordered): HTTP/1.1 head (Host = :authority,
//!             cookies joined, this hop's X-Forwarded-*, X-Real-IP, X-Request-ID)
//!             ─► request_upstream (pool, connect retries, passive
//!             health, timeouts; DATA frames streamed upstream (chunked without
//!             Content-Length, 413 past proxy-body-size), each wait bounded by
//!             --client-body-timeout → 408) ─► response head as HTTP/2 HEADERS ─► body
//!             unframed into DATA (Content-Length, chunked, or until close) ─► pooled again
//!             when reusable ─► metrics + access log
//! ```
//!
//! Why: bench/gateway's HTTP/2 cell (h2load, 64 connections × 10 streams) saturated the
//! gateway's core on Pingora's HTTP/2 → HTTP/1.1 path (per stream: a `Session`, header map
//! conversions, an mpsc duplex between two tasks); profile in bench/gateway/profile-h2.
//! docs/benchmarks.md has the before/after numbers.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use pingora::apps::HttpServerApp;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::v2::server::{self as h2_server, H2Accept, HttpSession};
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;

use super::framing::{BodyFraming, ChunkedTracker, Forwarding, write_forwarding};
use super::timer::Deadline;
use super::{
    Attempt, BODY_BUFFER, BodySource, ClientSide, Failure, FastPath, LogLine, Logged, UpSide,
    bad_chunk, client_ip, idempotent, new_request_id, read_upstream, server_port,
    upstream_read_failed,
};
use crate::metrics::Protocol;
use crate::proxy::request_host;
use crate::routes::Backend;

/// Streams refused during acceptance (malformed requests) before the connection is torn down
/// (Pingora's own accept loop uses the same bound, `MAX_MALFORMED_STREAMS_PER_CONN`).
const MAX_MALFORMED_STREAMS: usize = 32;

/// What every stream of one HTTP/2 connection shares.
struct H2Conn {
    /// The client address as text (X-Forwarded-For, X-Real-IP, access log).
    client_ip: Option<String>,
    /// The listener's port as text (X-Forwarded-Port).
    server_port: Option<String>,
    tls: bool,
    /// Upstream-side buffers and timers of finished streams, reused by the next ones (at most
    /// [`SPARE_SIDES`]). Never contended (one task), but the connection's future must be `Send`,
    /// so the cell must be `Sync`.
    spare: Mutex<Vec<UpSide>>,
}

/// Spare [`UpSide`]s kept per connection (its streams in flight at once, up to this).
const SPARE_SIDES: usize = 16;

impl H2Conn {
    fn side(&self) -> UpSide {
        self.spare
            .lock()
            .ok()
            .and_then(|mut spare| spare.pop())
            .unwrap_or_else(UpSide::new)
    }

    /// Gives back the buffers of the spare sides (their timers stay) once no fast-path stream
    /// is in flight, as an idle HTTP/1.1 connection gives back its own
    /// (`Conn::release_buffers`): an idle HTTP/2 connection then holds no
    /// upstream buffer (a 16 KiB read buffer and a 1 KiB head buffer per spare side before;
    /// docs/benchmarks.md, 2026-12-07 (f)). The next stream's head and reads grow them again.
    fn release_spare_buffers(&self) {
        if let Ok(mut spare) = self.spare.lock() {
            for side in spare.iter_mut() {
                side.out = Vec::new();
                side.rbuf = Vec::new();
            }
        }
    }

    fn put_side(&self, mut side: UpSide) {
        // A side that grew for a large head or body is not kept.
        if side.out.capacity() > 8 * 1024 || side.rbuf.capacity() > 4 * BODY_BUFFER {
            return;
        }
        side.out.clear();
        side.rbuf.clear();
        if let Ok(mut spare) = self.spare.lock()
            && spare.len() < SPARE_SIDES
        {
            spare.push(side);
        }
    }
}

impl FastPath {
    /// Serves one HTTP/2 connection: Pingora's handshake and stream acceptance; fast-path
    /// streams run in this task (a `FuturesUnordered` polled with the connection), streams for
    /// Pingora's proxy each on a task of their own (as Pingora does). On shutdown a GOAWAY is
    /// sent and the streams already opened are finished (as Pingora's own accept loop does).
    pub(super) async fn serve_h2(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        let socket = stream.get_socket_digest();
        // Borrowed by this connection's fast-path streams, which all run in this task.
        let conn = H2Conn {
            client_ip: client_ip(socket.as_deref()),
            server_port: server_port(socket.as_deref()),
            tls: stream.get_ssl_digest().is_some(),
            spare: Mutex::new(Vec::new()),
        };
        let digest = Arc::new(Digest {
            ssl_digest: stream.get_ssl_digest(),
            timing_digest: stream.get_timing_digest(),
            proxy_digest: stream.get_proxy_digest(),
            socket_digest: socket,
        });
        let mut h2 = match h2_server::handshake(stream, None).await {
            Ok(h2) => h2,
            Err(error) => {
                tracing::debug!(%error, "HTTP/2 handshake failed");
                return;
            }
        };
        let mut watch = shutdown.clone();
        let mut draining = false;
        let mut malformed = 0;
        // Fast-path streams run inside this task, next to the connection they write to: a
        // stream's frames and the connection's flush happen in one wake-up, and no task is
        // spawned per stream (one connection stays on one thread, like an nginx worker).
        let mut streams = FuturesUnordered::new();
        loop {
            let accepted = tokio::select! {
                biased;
                _ = watch.changed(), if !draining => {
                    h2.graceful_shutdown();
                    draining = true;
                    continue;
                }
                Some(()) = streams.next(), if !streams.is_empty() => {
                    if streams.is_empty() {
                        conn.release_spare_buffers();
                    }
                    continue;
                }
                // Cancel-safe: its only await is h2's `accept` (a `poll_accept`).
                accepted = HttpSession::from_h2_conn(&mut h2, digest.clone()) => accepted,
            };
            match accepted {
                Err(error) => {
                    // Clients often close TCP without a GOAWAY: not worth more than debug.
                    tracing::debug!(%error, "HTTP/2 connection ended");
                    break;
                }
                Ok(None) => break,
                Ok(Some(H2Accept::Rejected)) => {
                    malformed += 1;
                    if malformed >= MAX_MALFORMED_STREAMS {
                        tracing::warn!(
                            client = conn.client_ip.as_deref(),
                            "closing an HTTP/2 connection after {malformed} malformed requests"
                        );
                        break;
                    }
                }
                Ok(Some(H2Accept::Session(session))) => match self.h2_route(&session, &conn) {
                    Ok(backend) => streams.push(self.h2_stream(session, backend, &conn)),
                    Err(reason) => {
                        tracing::trace!(reason, "HTTP/2 stream handed to the Pingora path");
                        self.metrics.handed_over(Protocol::Http2, reason);
                        let this = self.clone();
                        let shutdown = shutdown.clone();
                        tokio::spawn(async move {
                            this.proxy
                                .process_new_http(ServerSession::new_http2(session), &shutdown)
                                .await;
                        });
                    }
                },
            }
        }
        // The connection is done, failed, or closed for malformed streams. Dropping it fails
        // the streams' pending and later HTTP/2 operations at once (h2 ends every stream when its
        // connection drops; kept but no longer polled, a stream waiting for flow-control window
        // would wait forever); those still waiting on an endpoint stop at once (their stream
        // watch in `h2_exchange` fires) and are logged 499.
        drop(h2);
        while streams.next().await.is_some() {}
    }

    /// One HTTP/2 stream on the fast path ([`Self::h2_route`] chose `backend`).
    async fn h2_stream(&self, mut session: HttpSession, backend: Arc<Backend>, conn: &H2Conn) {
        let started = Instant::now();
        let mut attempt = Attempt {
            close: false,
            request_id: new_request_id(),
            upstream: None,
            tries: 0,
            answered: false,
        };
        let mut side = conn.side();
        let result = self
            .h2_exchange(&mut session, conn, &backend, &mut attempt, &mut side)
            .await;
        conn.put_side(side);
        let (status, bytes_out, error) = match &result {
            Ok((status, bytes_out)) => (*status, *bytes_out, None),
            Err(f) => (f.status, 0, Some(f.error)),
        };
        if let Err(f) = &result
            && f.status != 0
            && !attempt.answered
        {
            let _ = session.write_response_header(error_response(f.status), true);
        }
        // An error after the response head: dropping the session resets the stream, so the
        // client cannot take a cut-short body for a whole one.
        let req = session.req_header();
        let line = LogLine {
            client: conn.client_ip.as_deref(),
            method: req.method.as_str().as_bytes(),
            host: request_host(req),
            path: req.uri.path(),
            request_id: req
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok()),
            bytes_in: session.body_bytes_read() as u64,
        };
        let logged = Logged {
            started,
            status,
            bytes_out,
            error,
            request_id: &attempt.request_id,
        };
        self.record(&line, &backend, &logged, &attempt);
    }

    /// The backend for a stream, or why the stream goes to Pingora's path: no rule (404), a
    /// redirect to HTTPS, no endpoints (503), an upstream that is not plain HTTP/1.1, CONNECT
    /// (WebSocket over HTTP/2, RFC 8441), or a declared body over `proxy-body-size` (413).
    fn h2_route(&self, session: &HttpSession, conn: &H2Conn) -> Result<Arc<Backend>, &'static str> {
        let req = session.req_header();
        if req.method == http::Method::CONNECT {
            return Err("CONNECT");
        }
        let backend = self.backend_for(request_host(req), req.uri.path(), conn.tls)?;
        if !session.is_body_done()
            && let Some(declared) = declared_length(req)
            && backend.policy.body_limit.is_some_and(|l| declared > l)
        {
            return Err("body over the limit");
        }
        Ok(backend)
    }

    /// One stream's exchange. `Ok((status, response body bytes))`; the client has its answer
    /// when this returns `Ok`, or when `attempt.answered`.
    async fn h2_exchange(
        &self,
        session: &mut HttpSession,
        conn: &H2Conn,
        backend: &Backend,
        attempt: &mut Attempt,
        side: &mut UpSide,
    ) -> Result<(u16, u64), Failure> {
        let req = session.req_header();
        let is_head = req.method == http::Method::HEAD;
        // `Some(None)`: a body of unknown length, sent chunked.
        let body = if session.is_body_done() {
            None
        } else {
            Some(declared_length(req))
        };
        // A stale pooled connection may be retried only without a body (it has been consumed).
        let replayable = body.is_none() && idempotent(req.method.as_str().as_bytes());
        let chunked = body == Some(None);
        // Given back while the connection was idle (`release_spare_buffers`): one allocation.
        side.out.reserve(super::HEAD_BUFFER);
        write_upstream_head(req, conn, &attempt.request_id, chunked, &mut side.out);
        // Without a body to send (or once it is sent), the stream is watched while the endpoint
        // is asked: a client that resets it (or closes the connection) ends the wait at once,
        // the upstream connection is closed mid-exchange (not pooled), and the request is
        // logged 499, as nginx finalizes an HTTP/2 request whose stream the client reset.
        let mut timer = Deadline::new();
        let client = ClientSide {
            from: match body {
                Some(None) => BodySource::Http2Chunked(&mut *session, backend.policy.body_limit),
                _ => BodySource::Http2(&mut *session),
            },
            timer: &mut timer,
            left: match body {
                None => 0,
                Some(length) => length.unwrap_or(u64::MAX),
            },
        };
        let (mut up, endpoint, head, _in_flight) = self
            .request_upstream(side, backend, attempt, replayable, is_head, client)
            .await?;
        let read_timeout = backend.policy.read_timeout;
        let start = head.head_len;
        let mut reusable = head.reusable;
        let response = response_header(&side.out, head.status);
        let bytes_out;
        match head.framing {
            BodyFraming::Empty => {
                reusable &= side.rbuf.len() == start;
                attempt.answered = true;
                session
                    .write_response_header(response, true)
                    .map_err(client_gone)?;
                bytes_out = 0;
            }
            BodyFraming::Length(n) => {
                let have = (side.rbuf.len() - start) as u64;
                let take = have.min(n) as usize;
                reusable &= have <= n;
                attempt.answered = true;
                session
                    .write_response_header(response, n == 0)
                    .map_err(client_gone)?;
                let mut left = n - take as u64;
                if take > 0 {
                    let first = Bytes::copy_from_slice(&side.rbuf[start..start + take]);
                    session
                        .write_body(first, left == 0)
                        .await
                        .map_err(client_gone)?;
                }
                let mut buf = BytesMut::new();
                while left > 0 {
                    buf.reserve(BODY_BUFFER);
                    let got = match side.timer.run(read_timeout, up.read_buf(&mut buf)).await {
                        Ok(0) => {
                            return Err(Failure {
                                status: 502,
                                error: "upstream closed inside the response body",
                            });
                        }
                        Ok(got) => got,
                        Err(timed_out) => return Err(upstream_read_failed(timed_out)),
                    };
                    reusable &= got as u64 <= left;
                    let take = (got as u64).min(left);
                    left -= take;
                    let piece = buf.split_to(take as usize).freeze();
                    buf.clear();
                    session
                        .write_body(piece, left == 0)
                        .await
                        .map_err(client_gone)?;
                }
                bytes_out = n;
            }
            BodyFraming::Chunked => {
                let mut tracker = ChunkedTracker::default();
                let mut payload = BytesMut::new();
                let data = &side.rbuf[start..];
                let used = tracker
                    .feed_with(data, |r| payload.extend_from_slice(&data[r]))
                    .map_err(bad_chunk)?;
                reusable &= start + used == side.rbuf.len();
                attempt.answered = true;
                session
                    .write_response_header(response, false)
                    .map_err(client_gone)?;
                loop {
                    if !payload.is_empty() || tracker.is_done() {
                        session
                            .write_body(payload.split().freeze(), tracker.is_done())
                            .await
                            .map_err(client_gone)?;
                    }
                    if tracker.is_done() {
                        break;
                    }
                    side.rbuf.clear();
                    let got = read_upstream(&mut up, &mut side.rbuf, &mut side.timer, read_timeout)
                        .await?;
                    let data = &side.rbuf[..got];
                    let used = tracker
                        .feed_with(data, |r| payload.extend_from_slice(&data[r]))
                        .map_err(bad_chunk)?;
                    reusable &= used == got;
                }
                bytes_out = tracker.payload;
            }
            BodyFraming::UntilClose { .. } => {
                reusable = false;
                attempt.answered = true;
                session
                    .write_response_header(response, false)
                    .map_err(client_gone)?;
                let mut total = (side.rbuf.len() - start) as u64;
                if total > 0 {
                    let first = Bytes::copy_from_slice(&side.rbuf[start..]);
                    session
                        .write_body(first, false)
                        .await
                        .map_err(client_gone)?;
                }
                let mut buf = BytesMut::new();
                loop {
                    buf.reserve(BODY_BUFFER);
                    let got = match side.timer.run(read_timeout, up.read_buf(&mut buf)).await {
                        Ok(got) => got,
                        Err(timed_out) => return Err(upstream_read_failed(timed_out)),
                    };
                    total += got as u64;
                    session
                        .write_body(buf.split().freeze(), got == 0)
                        .await
                        .map_err(client_gone)?;
                    if got == 0 {
                        break;
                    }
                }
                bytes_out = total;
            }
        }
        if reusable {
            self.pool.put(endpoint, up);
        }
        Ok((head.status, bytes_out))
    }
}

/// Writes the HTTP/1.1 upstream head of an HTTP/2 request into `out` (cleared first): the
/// request line; `Host` from `:authority` (else the `Host` field, as Pingora's HTTP/2 → HTTP/1
/// conversion); every field except the connection-specific ones (RFC 9113 §8.2.2; `TE`
/// included), `Expect`, and the ones this hop sets; `Cookie` crumbs joined with `; `
/// (RFC 9113 §8.2.3); then `x-forwarded-for` (appended), `x-real-ip`, `x-forwarded-proto`, `x-forwarded-host`,
/// `x-forwarded-port`, and `x-request-id` when the client sent none (crate::proxy's
/// `upstream_request_filter`); `transfer-encoding: chunked` when `chunked` (a body without
/// `Content-Length`). Field names are the lower case HTTP/2 requires.
fn write_upstream_head(
    req: &RequestHeader,
    conn: &H2Conn,
    request_id: &[u8; 32],
    chunked: bool,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        req.uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    match req.uri.authority() {
        Some(authority) => out.extend_from_slice(authority.as_str().as_bytes()),
        None => {
            if let Some(host) = req.headers.get(http::header::HOST) {
                out.extend_from_slice(host.as_bytes());
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    let mut forwarded_for: Option<&[u8]> = None;
    let mut has_request_id = false;
    let mut cookies = false;
    for (name, value) in &req.headers {
        match name.as_str() {
            "host" | "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding"
            | "upgrade" | "te" | "trailer" | "http2-settings" | "x-forwarded-proto"
            | "x-forwarded-host" | "x-forwarded-port" | "x-real-ip" => continue,
            // The body is read from the client and sent right after the head: an endpoint's
            // `100 Continue` would be skipped anyway (RFC 9110 §10.1.1 lets a proxy that does
            // not wait drop the expectation).
            "expect" => continue,
            "x-forwarded-for" => {
                // More than one: Pingora's path appends to the first; so do we.
                forwarded_for.get_or_insert(value.as_bytes());
                continue;
            }
            "cookie" => {
                cookies = true;
                continue;
            }
            "x-request-id" => has_request_id = true,
            _ => {}
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if cookies {
        out.extend_from_slice(b"cookie: ");
        for (i, crumb) in req.headers.get_all(http::header::COOKIE).iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(crumb.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    let fwd = Forwarding {
        client_ip: conn.client_ip.as_deref(),
        tls: conn.tls,
        server_port: conn.server_port.as_deref(),
        request_id,
    };
    write_forwarding(
        &fwd,
        forwarded_for,
        request_host(req).as_bytes(),
        has_request_id,
        out,
    );
}

/// The request's `Content-Length` (Pingora's stream acceptance has refused differing or
/// malformed ones).
fn declared_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The HTTP/2 response head for the downstream HTTP/1.1 head `framing::parse_response` wrote
/// (hop-by-hop fields already removed; Pingora's `write_response_header` drops the
/// connection-specific rest and adds `date`).
fn response_header(h1_head: &[u8], status: u16) -> Box<ResponseHeader> {
    let mut fields = [httparse::EMPTY_HEADER; super::framing::MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut fields);
    let _ = parsed.parse(h1_head);
    let mut header = ResponseHeader::build_no_case(status, Some(parsed.headers.len()))
        .unwrap_or_else(|_| ResponseHeader::build_no_case(502, None).expect("502 is a status"));
    for field in parsed.headers.iter() {
        if field.name.is_empty() {
            break;
        }
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(field.name.as_bytes()),
            http::HeaderValue::from_bytes(field.value),
        ) else {
            tracing::debug!(
                field = field.name,
                "response field not representable in HTTP/2"
            );
            continue;
        };
        let _ = header.append_header(name, value);
    }
    Box::new(header)
}

/// The answer when nothing was sent yet (Pingora's error response shape).
fn error_response(status: u16) -> Box<ResponseHeader> {
    let mut header =
        ResponseHeader::build_no_case(status, Some(2)).expect("408/502/503/504 are statuses");
    let _ = header.insert_header(http::header::CONTENT_LENGTH, 0);
    let _ = header.insert_header(http::header::CACHE_CONTROL, "private, no-store");
    Box::new(header)
}

fn client_gone(_: Box<pingora::Error>) -> Failure {
    Failure {
        status: 0,
        error: "client write failed",
    }
}

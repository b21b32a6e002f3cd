//! The HTTP/1.1 fast path (`--http1-fast-path`, on by default): a Pingora [`ServerApp`] that
//! serves the common keep-alive HTTP/1.1 request itself and hands everything else to the
//! Pingora [`ProxyHttp`](pingora::proxy::ProxyHttp) path ([`crate::proxy::Gateway`]) on the same
//! connection. Still Pingora's listeners, TLS acceptor and graceful upgrade.
//!
//! ```text
//!  Pingora listener (TCP or TLS) ─► FastPath::process_new(stream)
//!     ALPN h2 ─► h2::serve_h2 (streams to HTTP/1.1 endpoints: the pooled upstream exchange
//!                below; other streams: HttpProxy<Gateway>); `--http2-fast-path=false`
//!                ─► HttpProxy<Gateway>
//!     HTTP/1.x: read into a per-connection buffer ─► framing::parse_request
//!        ├─ hand-over (TE, Upgrade, Expect, HTTP/1.0, no route, redirect, 503, 413, non-HTTP/1.1
//!        │  upstream, anything httparse or the rules refuse) ─► ServerSession::new_http1(stream)
//!        │  with the bytes read so far as its pipelined prefix ─► HttpProxy<Gateway> for the
//!        │  rest of the connection
//!        └─ route lookup (RouteTable) ─► Backend::choose ─► pool::Pool or connect (retries,
//!           passive health) ─► upstream head = request line + fields as received + this hop's
//!           X-Forwarded-*/X-Real-IP/X-Request-ID ─► Content-Length body streamed
//!           ─► response head (hop-by-hop removed) + body by its framing (Content-Length,
//!           chunked passed through, or until close re-chunked) ─► pooled again when reusable
//!           ─► metrics (RouteStats) + access log ─► next request (pipelined bytes kept)
//! ```
//!
//! Why: bench/gateway profiled Pingora's HTTP/1 session machinery (header maps, `Bytes`
//! copies, per-request futures) as most of the gateway's user-space time per request; this path
//! keeps one set of buffers per connection (given back while the connection is idle, as nginx
//! does), copies each field once, and makes the same system calls as nginx (one read and one
//! write each side per request). docs/benchmarks.md has the numbers.
//!
//! Semantics are [`crate::proxy`]'s: upstream timeouts (connect → 504/502, read/send → 504)
//! from the Ingress [`Policy`](crate::policy::Policy), connect failures retried on another
//! endpoint (at most [`MAX_TRIES`] tries) with passive health ([`crate::upstream`]), a reused
//! pooled connection the endpoint had closed retried on a new connection for idempotent
//! requests, the same metrics and access log fields. A client that goes away while its request
//! waits for the endpoint ends the wait at once, logged 499 ([`ClientSide::gone`]).

pub mod framing;
mod h2;
pub mod pool;
pub mod spare;
pub mod timer;

use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Poll, ready};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{ALPN, SocketDigest, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::metrics::{Method, Metrics, Protocol, StatusClass};
use crate::policy::UpstreamProtocol;
use crate::proxy::{Gateway, MAX_TRIES, POOL_IDLE_TIMEOUT};
use crate::routes::{Backend, RouteTable};
use crate::upstream::{InFlight, fast_random};
use framing::{BodyFraming, ChunkedTracker, Copied, Forwarding, Parsed, Request};
use pool::Pool;
use spare::Spares;
use timer::Deadline;

/// How long an idle client keep-alive connection waits for its next request (Pingora's
/// default HTTP/1 keep-alive timeout, which the handed-over path keeps using).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Initial capacity of the per-connection request buffer (grows up to [`framing::MAX_HEAD`]
/// plus one read for long heads).
const REQUEST_BUFFER: usize = 4096;

/// Initial capacity of the buffer for the upstream request head, then the response head.
const HEAD_BUFFER: usize = 1024;

/// Capacity of the per-connection response / body buffer.
const BODY_BUFFER: usize = 16 * 1024;

const UNSPECIFIED: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// The fast path in front of the Pingora proxy. Built by `server::run` when
/// `--http1-fast-path` is on; shares the route table and metrics with the [`Gateway`] inside
/// `proxy`.
pub struct FastPath {
    /// Pingora's proxy, for HTTP/2 connections and handed-over requests.
    proxy: Arc<HttpProxy<Gateway>>,
    /// The route table `discovery` publishes.
    routes: Arc<ArcSwap<RouteTable>>,
    metrics: Arc<Metrics>,
    /// One access log event per request (`--access-log`).
    access_log: bool,
    /// `--client-body-timeout`: the longest wait of one request body read.
    client_body_timeout: Duration,
    /// `--http2-fast-path`: HTTP/2 streams to HTTP/1.1 endpoints served here too ([`h2`]).
    http2: bool,
    /// Idle upstream connections (HTTP/1.1 endpoints only).
    pool: Pool,
    /// Set when the service stops listening ([`ServerApp::cleanup`]): idle keep-alive
    /// connections close, as Pingora's own path does.
    stopping: AtomicBool,
    stop: Notify,
}

impl FastPath {
    /// A fast path over `proxy` (built with [`pingora::proxy::http_proxy`] from a [`Gateway`]
    /// reading the same `routes` and counting into the same `metrics`). `work_stealing`: how
    /// Pingora runs the service (`ServerConf::work_stealing`); without it every thread has its
    /// own runtime and I/O driver, so idle upstream connections are pooled per thread
    /// ([`Pool::per_thread`]).
    pub fn new(
        proxy: HttpProxy<Gateway>,
        routes: Arc<ArcSwap<RouteTable>>,
        metrics: Arc<Metrics>,
        access_log: bool,
        work_stealing: bool,
    ) -> Self {
        FastPath {
            proxy: Arc::new(proxy),
            routes,
            metrics,
            access_log,
            client_body_timeout: crate::proxy::CLIENT_BODY_TIMEOUT,
            http2: true,
            pool: if work_stealing {
                Pool::new(POOL_IDLE_TIMEOUT)
            } else {
                Pool::per_thread(POOL_IDLE_TIMEOUT)
            },
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
        }
    }

    /// The same fast path with another request body read timeout (default
    /// [`CLIENT_BODY_TIMEOUT`](crate::proxy::CLIENT_BODY_TIMEOUT); the Pingora path is given the
    /// same through [`Gateway::with_client_body_timeout`]).
    pub fn with_client_body_timeout(mut self, timeout: Duration) -> Self {
        self.client_body_timeout = timeout;
        self
    }

    /// Whether HTTP/2 connections use the fast path too (default on; off: every HTTP/2 stream
    /// goes to Pingora's proxy).
    pub fn with_http2(mut self, on: bool) -> Self {
        self.http2 = on;
        self
    }
}

/// Per-connection state, reused for every request on the connection.
struct Conn {
    /// Bytes read from the client not yet consumed (the current head, its body start, and any
    /// pipelined requests after it).
    buf: Vec<u8>,
    /// Buffers and timer of the upstream side.
    up: UpSide,
    copied: Copied,
    /// The client address (X-Forwarded-For, X-Real-IP, access log), formatted once.
    client_ip: Option<String>,
    /// The listener's port (X-Forwarded-Port), formatted once.
    server_port: Option<String>,
    tls: bool,
    /// Keep-alive / request head timeout of the client side.
    client_timer: Deadline,
    /// Requests answered on this connection so far. The first request of a connection is served
    /// even while shutting down (as Pingora's own path does): the client may have sent it
    /// already, and closing then fails it.
    answered: u64,
}

thread_local! {
    // Buffers of connections waiting for their next request ([`Conn::release_buffers`]), for
    // the next request on this thread ([`spare`]); bounds in elements.
    static SPARE_REQUEST: Spares<u8> = const { Spares::new(2 * REQUEST_BUFFER) };
    static SPARE_FIELDS: Spares<(Range<usize>, Range<usize>)> =
        const { Spares::new(framing::MAX_HEADERS) };
    static SPARE_HEAD: Spares<u8> = const { Spares::new(8 * HEAD_BUFFER) };
    static SPARE_BODY: Spares<u8> = const { Spares::new(2 * BODY_BUFFER) };
}

impl Conn {
    /// Gives up the buffers while the connection waits for its next request (all empty then):
    /// the request buffer, the field ranges, the upstream / response head, the upstream read
    /// buffer. They go to this thread's spares ([`spare`]; freed beyond its bound), from where
    /// the next request on the thread takes them ([`read_idle`], [`Conn::take_spares`]), or
    /// they are allocated again (`framing::parse_request`, [`HEAD_BUFFER`], [`BODY_BUFFER`]).
    fn release_buffers(&mut self) {
        debug_assert!(self.buf.is_empty(), "pipelined bytes are never released");
        SPARE_REQUEST.with(|s| s.give(&mut self.buf));
        SPARE_FIELDS.with(|s| s.give(&mut self.copied));
        SPARE_HEAD.with(|s| s.give(&mut self.up.out));
        SPARE_BODY.with(|s| s.give(&mut self.up.rbuf));
    }

    /// Once the next request has arrived after [`Conn::release_buffers`]: spare buffers for the
    /// ones this connection has none of (the request buffer was taken by [`read_idle`]).
    fn take_spares(&mut self) {
        SPARE_FIELDS.with(|s| s.take_into(&mut self.copied));
        SPARE_HEAD.with(|s| s.take_into(&mut self.up.out));
        SPARE_BODY.with(|s| s.take_into(&mut self.up.rbuf));
    }
}

/// Reads what the client sent, appending it to `buf`, through a buffer on the stack (live only
/// during a poll, so not part of the waiting future either): how an idle connection, which holds
/// no buffer of its own ([`Conn::release_buffers`]), waits for its next request, and how
/// [`ClientSide::gone`] watches the client. Resolves to the number of bytes appended (0: end of
/// stream), at most [`REQUEST_BUFFER`] per read. Bytes for a `buf` without an allocation go
/// into a spare request buffer of this thread when there is one ([`spare`]), else a new one of
/// [`REQUEST_BUFFER`] bytes.
fn read_idle<'a>(
    stream: &'a mut Stream,
    buf: &'a mut Vec<u8>,
) -> impl Future<Output = std::io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        let mut space = [MaybeUninit::<u8>::uninit(); REQUEST_BUFFER];
        let mut read = ReadBuf::uninit(&mut space);
        ready!(Pin::new(&mut *stream).poll_read(cx, &mut read))?;
        if buf.capacity() == 0 && !read.filled().is_empty() {
            SPARE_REQUEST.with(|s| s.take_into(buf));
            buf.reserve(REQUEST_BUFFER);
        }
        buf.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    })
}

/// The upstream side of an exchange: one per HTTP/1.1 client connection (reused for each of
/// its requests), one per HTTP/2 stream.
struct UpSide {
    /// Upstream request head, then the downstream response head (+ first body bytes).
    out: Vec<u8>,
    /// Bytes read from the upstream (and request body pieces read from the client).
    rbuf: Vec<u8>,
    /// Send / read timeouts.
    timer: Deadline,
}

impl UpSide {
    fn new() -> Self {
        UpSide {
            out: Vec::with_capacity(HEAD_BUFFER),
            rbuf: Vec::new(),
            timer: Deadline::new(),
        }
    }
}

/// The client half of one exchange while the endpoint is asked: the part of the request body
/// still to be read, and, once there is none, where to watch for the client going away
/// ([`ClientSide::gone`]).
struct ClientSide<'a> {
    from: BodySource<'a>,
    /// The client side's timer (`--client-body-timeout` per read).
    timer: &'a mut Deadline,
    /// Body bytes left to read: 0 without a body or once it is sent; `u64::MAX` for a chunked
    /// HTTP/2 body until its end.
    left: u64,
}

/// The most client bytes an HTTP/1.1 connection's buffer takes while its request waits for the
/// endpoint (the current request plus what the client pipelined after it); beyond, the client
/// is no longer read, so no longer watched, until the answer.
const WATCH_BUFFER_MAX: usize = framing::MAX_HEAD + REQUEST_BUFFER;

impl ClientSide<'_> {
    /// Resolves when the client has gone away while its request, all sent, waits for the
    /// endpoint; the caller then stops waiting, drops (closes) the upstream connection and logs
    /// 499. nginx does the same with `proxy_ignore_client_abort off`, its default.
    /// - HTTP/1.1: end of stream or a read error. A half-close counts, as for nginx, which
    ///   takes epoll's `EPOLLRDHUP` for a client that closed prematurely. Bytes the client
    ///   pipelines meanwhile are appended to the connection's buffer for the next request (up
    ///   to [`WATCH_BUFFER_MAX`]). A quiet client costs no system call: tokio marks the socket
    ///   not readable after the request's short read, so the poll only registers the waker.
    /// - HTTP/2: a reset of the stream or the end of its connection (h2's `poll_reset`).
    ///
    /// Never resolves while body bytes are still to come: they are the body, not a sign.
    async fn gone(&mut self) {
        if self.left > 0 {
            return std::future::pending().await;
        }
        match &mut self.from {
            BodySource::Http1(stream, buf) => loop {
                if buf.len() >= WATCH_BUFFER_MAX {
                    return std::future::pending().await;
                }
                if !matches!(read_idle(stream, buf).await, Ok(n) if n > 0) {
                    return;
                }
            },
            BodySource::Http2(session) | BodySource::Http2Chunked(session, _) => {
                let _ = session.idle().await;
            }
        }
    }
}

/// Where a request body comes from.
enum BodySource<'a> {
    /// The HTTP/1.1 connection, right after the bytes already read, and its buffer (`Conn::buf`,
    /// for bytes pipelined while the request waits).
    Http1(&'a mut Stream, &'a mut Vec<u8>),
    /// The DATA frames of an HTTP/2 stream (the h2 crate checks them against `Content-Length`).
    Http2(&'a mut pingora::protocols::http::v2::server::HttpSession),
    /// The DATA frames of an HTTP/2 stream without `Content-Length`, sent upstream chunked until
    /// the stream ends (`left` unused); more than `limit` bytes (`proxy-body-size`) → 413.
    Http2Chunked(
        &'a mut pingora::protocols::http::v2::server::HttpSession,
        Option<u64>,
    ),
}

/// The next non-empty DATA frame of an HTTP/2 request body; `None` at its end.
async fn next_data(
    session: &mut pingora::protocols::http::v2::server::HttpSession,
) -> std::io::Result<Option<bytes::Bytes>> {
    loop {
        match session.read_body_bytes().await {
            // An empty DATA frame that does not end the stream.
            Ok(Some(data)) if data.is_empty() => {}
            Ok(data) => return Ok(data),
            Err(e) => return Err(std::io::Error::other(e)),
        }
    }
}

/// How a connection left the fast path.
enum Outcome {
    /// Closed (or to be closed).
    Close,
    /// The request at the start of `buf` goes to Pingora.
    HandOver(framing::HandOverReason),
}

/// A failed exchange: what the client is told (when nothing was sent yet) and logged.
struct Failure {
    /// 408, 502, 503 or 504; 0 when the client went away (nothing to answer).
    status: u16,
    error: &'static str,
}

/// A finished exchange.
struct Exchanged {
    status: u16,
    bytes_out: u64,
    /// The client connection must close (response delimited by close, or a broken write).
    close: bool,
}

/// What the metrics and the access log need of a finished request.
#[derive(Clone, Copy)]
struct Logged<'a> {
    started: Instant,
    /// The answer's status; 0 when the client went away first (logged as 499).
    status: u16,
    /// Response payload bytes sent.
    bytes_out: u64,
    error: Option<&'static str>,
    /// The generated ID (used when the client sent no `X-Request-ID`).
    request_id: &'a [u8; 32],
}

/// One request's exchange: its inputs (`close`, `request_id`) and what happened (endpoint,
/// tries, whether the client has its answer), for metrics and the access log.
struct Attempt {
    /// Answer with `connection: close`, then close (client asked, or shutting down).
    close: bool,
    /// The `X-Request-ID` to add when the client sent none.
    request_id: [u8; 32],
    upstream: Option<SocketAddr>,
    tries: usize,
    /// The response head has been written to the client.
    answered: bool,
}

/// The client's address as text (X-Forwarded-For, X-Real-IP, access log), formatted once per
/// connection.
fn client_ip(socket: Option<&SocketDigest>) -> Option<String> {
    socket.and_then(|s| s.peer_addr()?.as_inet().map(|a| a.ip().to_string()))
}

/// The listener's port as text (X-Forwarded-Port), formatted once per connection.
fn server_port(socket: Option<&SocketDigest>) -> Option<String> {
    socket.and_then(|s| s.local_addr()?.as_inet().map(|a| a.port().to_string()))
}

fn new_request_id() -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (half, word) in [fast_random(), fast_random()].into_iter().enumerate() {
        for i in 0..16 {
            buf[half * 16 + i] = HEX[((word >> (i * 4)) & 0xf) as usize];
        }
    }
    buf
}

fn idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
}

/// Turns the L4 write buffer of a plain-TCP client connection off or on
/// (`pingora_core`'s `Stream::set_write_buffer`, a drawbridge patch); a TLS connection keeps it.
/// Only between two writes that were flushed.
fn set_write_buffer(stream: &mut Stream, on: bool) {
    if let Some(plain) = stream.as_any_mut().downcast_mut::<L4Stream>() {
        plain.set_write_buffer(on);
    }
}

async fn write_client(stream: &mut Stream, data: &[u8]) -> std::io::Result<()> {
    stream.write_all(data).await?;
    stream.flush().await
}

/// `tokio::time::timeout` for operations too rare for a [`Deadline`] (connects, shutdown).
async fn with_timeout<T>(
    limit: Duration,
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, bool> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(false),
        Err(_) => Err(true),
    }
}

#[async_trait]
impl ServerApp for FastPath {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // The HTTP/2 and hand-over futures are boxed: an HTTP/1.1 connection's task then holds
        // only what its own loop needs (memory per idle connection: docs/benchmarks.md).
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            if self.http2 {
                Box::pin(self.serve_h2(stream, shutdown)).await;
                return None;
            }
            return ServerApp::process_new(&self.proxy, stream, shutdown).await;
        }
        // Every write to the client is a whole message followed by a flush ([`write_client`]):
        // on plain TCP they go straight to the socket, not copied through Pingora's L4 write
        // buffer first (under TLS, rustls' records still gather there). Back on for Pingora's
        // path below.
        set_write_buffer(&mut stream, false);
        let socket = stream.get_socket_digest();
        let mut conn = Conn {
            buf: Vec::with_capacity(REQUEST_BUFFER),
            up: UpSide::new(),
            copied: Vec::new(),
            client_ip: client_ip(socket.as_deref()),
            server_port: server_port(socket.as_deref()),
            tls: stream.get_ssl_digest().is_some(),
            client_timer: Deadline::new(),
            answered: 0,
        };
        match self.serve(&mut stream, &mut conn, shutdown).await {
            Outcome::Close => {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    AsyncWriteExt::shutdown(&mut stream),
                )
                .await;
            }
            Outcome::HandOver(reason) => {
                tracing::trace!(reason, "request handed to the Pingora path");
                self.metrics.handed_over(Protocol::Http1, reason);
                set_write_buffer(&mut stream, true);
                Box::pin(self.hand_over(stream, conn.buf, shutdown)).await;
            }
        }
        None
    }

    async fn cleanup(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop.notify_waiters();
        ServerApp::cleanup(&*self.proxy).await;
    }
}

// === impl FastPath ===

impl FastPath {
    /// The rest of the connection on Pingora's HTTP/1 path (the loop of Pingora's own
    /// `ServerApp` for `HttpServerApp`), starting with the bytes already read.
    async fn hand_over(self: &Arc<Self>, stream: Stream, read: Vec<u8>, shutdown: &ShutdownWatch) {
        let mut session = ServerSession::new_http1(stream);
        session.set_keepalive(if *shutdown.borrow() {
            None
        } else {
            Some(KEEPALIVE_TIMEOUT.as_secs())
        });
        if !read.is_empty() {
            session.set_pipelined_prefix(BytesMut::from(&read[..]));
        }
        let mut result = self.proxy.process_new_http(session, shutdown).await;
        while let Some((stream, settings)) = result.map(|r| r.consume()) {
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            result = self.proxy.process_new_http(session, shutdown).await;
        }
    }

    fn is_stopping(&self, shutdown: &ShutdownWatch) -> bool {
        self.stopping.load(Ordering::Acquire) || *shutdown.borrow()
    }

    /// Reads more client bytes into `conn.buf`. `Ok(false)`: the connection is done (EOF,
    /// error, keep-alive timeout, or shutdown while idle between two requests; a new connection
    /// waits for its first request even while shutting down).
    ///
    /// Between two requests, a connection whose next request is not there yet releases its
    /// buffers (request, upstream head, upstream read: [`Conn::release_buffers`]) and waits with
    /// none, as nginx frees a keep-alive connection's buffers (`ngx_http_set_keepalive`); the
    /// next request is read into a buffer on the stack and copied out. An idle connection then
    /// holds no buffer (memory per idle connection: docs/benchmarks.md); a busy one pays for
    /// the copy of its request head, and takes its buffers back from the thread's spares
    /// ([`spare`]) or, when there are none, allocates them again.
    async fn read_client(
        &self,
        stream: &mut Stream,
        conn: &mut Conn,
        shutdown: &ShutdownWatch,
    ) -> bool {
        if !conn.buf.is_empty() || conn.answered == 0 {
            // Inside a request head, or before the first one: no shutdown check; the rest must
            // come within the timeout.
            conn.buf.reserve(REQUEST_BUFFER);
            let read = conn
                .client_timer
                .run(KEEPALIVE_TIMEOUT, stream.read_buf(&mut conn.buf));
            return matches!(read.await, Ok(n) if n > 0);
        }
        if self.is_stopping(shutdown) {
            return false;
        }
        // The next request is often there already: read it without registering for `stop`
        // (a lock and a list entry in the shared `Notify`).
        {
            let mut read = pin!(read_idle(stream, &mut conn.buf));
            if let Poll::Ready(r) =
                std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await
            {
                return matches!(r, Ok(n) if n > 0);
            }
        }
        conn.release_buffers();
        let read = read_idle(stream, &mut conn.buf);
        let stop = self.stop.notified();
        tokio::pin!(stop);
        stop.as_mut().enable();
        if self.is_stopping(shutdown) {
            return false;
        }
        let arrived = tokio::select! {
            biased;
            r = conn.client_timer.run(KEEPALIVE_TIMEOUT, read) => matches!(r, Ok(n) if n > 0),
            _ = &mut stop => false,
        };
        if arrived {
            conn.take_spares();
        }
        arrived
    }

    /// Serves requests until the connection closes or one must be handed over.
    async fn serve(
        self: &Arc<Self>,
        stream: &mut Stream,
        conn: &mut Conn,
        shutdown: &ShutdownWatch,
    ) -> Outcome {
        loop {
            let req = loop {
                if !conn.buf.is_empty() {
                    match framing::parse_request(&conn.buf, &mut conn.copied) {
                        Parsed::Request(req) => break req,
                        Parsed::Partial => {}
                        Parsed::HandOver(reason) => return Outcome::HandOver(reason),
                    }
                }
                if !self.read_client(stream, conn, shutdown).await {
                    return Outcome::Close;
                }
            };
            let started = Instant::now();
            let backend = match self.route(conn, &req) {
                Ok(b) => b,
                Err(reason) => return Outcome::HandOver(reason),
            };
            let close = req.close || self.is_stopping(shutdown);
            // The request's bytes in `buf` (head + the body start read with it; the rest of the
            // body is read straight from the connection), counted now: the exchange may append
            // what the client pipelines after it.
            let consumed = req
                .head_len
                .saturating_add(usize::try_from(req.content_length).unwrap_or(usize::MAX))
                .min(conn.buf.len());
            let mut attempt = Attempt {
                close,
                request_id: new_request_id(),
                upstream: None,
                tries: 0,
                answered: false,
            };
            let result = self
                .exchange(stream, conn, &req, &backend, &mut attempt)
                .await;
            let (status, bytes_out, error, keep) = match &result {
                Ok(done) => (done.status, done.bytes_out, None, !(close || done.close)),
                Err(f) => (f.status, 0, Some(f.error), false),
            };
            if let Err(f) = &result
                && f.status != 0
                && !attempt.answered
            {
                let _ = write_client(stream, error_response(f.status)).await;
            }
            let logged = Logged {
                started,
                status,
                bytes_out,
                error,
                request_id: &attempt.request_id,
            };
            self.log(conn, &req, &backend, &logged, &attempt);
            if !keep {
                return Outcome::Close;
            }
            conn.answered += 1;
            conn.buf.drain(..consumed);
        }
    }

    /// The backend for a parsed request, or why it goes to Pingora's path: no rule (404), a
    /// redirect to HTTPS, no endpoints (503), a declared body over the limit (413), or an
    /// upstream that is not plain HTTP/1.1.
    fn route(&self, conn: &Conn, req: &Request) -> Result<Arc<Backend>, &'static str> {
        let host = std::str::from_utf8(&conn.buf[req.host.clone()]).unwrap_or("");
        let path = std::str::from_utf8(&conn.buf[req.path.clone()]).unwrap_or("/");
        let backend = self.backend_for(host, path, conn.tls)?;
        if backend
            .policy
            .body_limit
            .is_some_and(|l| req.content_length > l)
        {
            return Err("body over the limit");
        }
        Ok(backend.clone())
    }

    /// The backend of `host` + `path` when the fast path may serve it, else why not: no rule
    /// (404), a redirect to HTTPS, an upstream that is not plain HTTP/1.1, no endpoints (503).
    fn backend_for(&self, host: &str, path: &str, tls: bool) -> Result<Arc<Backend>, &'static str> {
        let routes = self.routes.load();
        let backend = routes.lookup(host, path).ok_or("no rule")?;
        if !tls && backend.policy.ssl_redirect && routes.has_tls(host) {
            return Err("redirect to HTTPS");
        }
        if backend.protocol != UpstreamProtocol::Http1 {
            return Err("upstream is not HTTP/1.1");
        }
        if backend.endpoints().is_empty() {
            return Err("no endpoints");
        }
        Ok(backend.clone())
    }

    /// One request: endpoint, request out, response back. The client has been answered when
    /// this returns `Ok`, or when `attempt.answered`.
    async fn exchange(
        &self,
        stream: &mut Stream,
        conn: &mut Conn,
        req: &Request,
        backend: &Backend,
        attempt: &mut Attempt,
    ) -> Result<Exchanged, Failure> {
        let policy = &backend.policy;
        let (close, id) = (attempt.close, attempt.request_id);
        // Upstream head + the body bytes already read.
        let fwd = Forwarding {
            client_ip: conn.client_ip.as_deref(),
            tls: conn.tls,
            server_port: conn.server_port.as_deref(),
            request_id: &id,
        };
        // Released while the connection was idle ([`Conn::release_buffers`]): one allocation.
        conn.up.out.reserve(HEAD_BUFFER.max(req.head_len + 512));
        framing::write_upstream_head(&conn.buf, req, &conn.copied, &fwd, &mut conn.up.out);
        let body_in_buf = (conn.buf.len() - req.head_len).min(req.content_length as usize);
        conn.up
            .out
            .extend_from_slice(&conn.buf[req.head_len..req.head_len + body_in_buf]);
        let body_left = req.content_length - body_in_buf as u64;
        // A stale pooled connection may be retried only when nothing more must come from the
        // client and the method may be repeated.
        let replayable = body_left == 0 && idempotent(&conn.buf[req.method.clone()]);

        let client = ClientSide {
            from: BodySource::Http1(&mut *stream, &mut conn.buf),
            timer: &mut conn.client_timer,
            left: body_left,
        };
        let (mut up, endpoint, head, _in_flight) = self
            .request_upstream(
                &mut conn.up,
                backend,
                attempt,
                replayable,
                req.is_head,
                client,
            )
            .await?;
        // `conn.up.out` holds the downstream head, `conn.up.rbuf[head.head_len..]` the body start.
        let mut reusable = head.reusable;
        let start = head.head_len;
        let read_timeout = policy.read_timeout;
        let bytes_out;
        let mut close_client = close;
        match head.framing {
            BodyFraming::Empty => {
                reusable &= conn.up.rbuf.len() == start;
                attempt.answered = true;
                write_client(stream, &conn.up.out)
                    .await
                    .map_err(client_gone)?;
                bytes_out = 0;
            }
            BodyFraming::Length(n) => {
                let have = (conn.up.rbuf.len() - start) as u64;
                let take = have.min(n) as usize;
                reusable &= have <= n;
                conn.up
                    .out
                    .extend_from_slice(&conn.up.rbuf[start..start + take]);
                attempt.answered = true;
                write_client(stream, &conn.up.out)
                    .await
                    .map_err(client_gone)?;
                let mut left = n - take as u64;
                while left > 0 {
                    conn.up.rbuf.clear();
                    let got =
                        read_upstream(&mut up, &mut conn.up.rbuf, &mut conn.up.timer, read_timeout)
                            .await?;
                    let take = (got as u64).min(left) as usize;
                    reusable &= got as u64 <= left;
                    left -= take as u64;
                    write_client(stream, &conn.up.rbuf[..take])
                        .await
                        .map_err(client_gone)?;
                }
                bytes_out = n;
            }
            BodyFraming::Chunked => {
                let mut tracker = ChunkedTracker::default();
                let used = tracker.feed(&conn.up.rbuf[start..]).map_err(bad_chunk)?;
                reusable &= start + used == conn.up.rbuf.len();
                conn.up
                    .out
                    .extend_from_slice(&conn.up.rbuf[start..start + used]);
                attempt.answered = true;
                write_client(stream, &conn.up.out)
                    .await
                    .map_err(client_gone)?;
                while !tracker.is_done() {
                    conn.up.rbuf.clear();
                    let got =
                        read_upstream(&mut up, &mut conn.up.rbuf, &mut conn.up.timer, read_timeout)
                            .await?;
                    let used = tracker.feed(&conn.up.rbuf[..got]).map_err(bad_chunk)?;
                    reusable &= used == got;
                    write_client(stream, &conn.up.rbuf[..used])
                        .await
                        .map_err(client_gone)?;
                }
                bytes_out = tracker.payload;
            }
            BodyFraming::UntilClose { rechunk } => {
                reusable = false;
                close_client |= !rechunk;
                let mut total = 0u64;
                let first = conn.up.rbuf.len() - start;
                if first > 0 {
                    if rechunk {
                        push_chunk_header(&mut conn.up.out, first);
                    }
                    conn.up.out.extend_from_slice(&conn.up.rbuf[start..]);
                    if rechunk {
                        conn.up.out.extend_from_slice(b"\r\n");
                    }
                    total += first as u64;
                }
                attempt.answered = true;
                write_client(stream, &conn.up.out)
                    .await
                    .map_err(client_gone)?;
                loop {
                    conn.up.rbuf.clear();
                    let got = match conn
                        .up
                        .timer
                        .run(read_timeout, up.read_buf(&mut conn.up.rbuf))
                        .await
                    {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(timed_out) => return Err(upstream_read_failed(timed_out)),
                    };
                    total += got as u64;
                    if rechunk {
                        conn.up.out.clear();
                        push_chunk_header(&mut conn.up.out, got);
                        conn.up.out.extend_from_slice(&conn.up.rbuf[..got]);
                        conn.up.out.extend_from_slice(b"\r\n");
                        write_client(stream, &conn.up.out)
                            .await
                            .map_err(client_gone)?;
                    } else {
                        write_client(stream, &conn.up.rbuf[..got])
                            .await
                            .map_err(client_gone)?;
                    }
                }
                if rechunk {
                    write_client(stream, b"0\r\n\r\n")
                        .await
                        .map_err(client_gone)?;
                }
                bytes_out = total;
            }
        }
        if reusable {
            self.pool.put(endpoint, up);
        }
        Ok(Exchanged {
            status: head.status,
            bytes_out,
            close: close_client,
        })
    }

    /// The upstream half of one request: chooses an endpoint, takes a pooled connection or
    /// connects (connect failures retried on another endpoint, at most [`MAX_TRIES`] tries,
    /// with passive health), writes `side.out` (request head + body start) and the rest of the
    /// request body (from `client`), and reads the response head. A pooled connection the
    /// endpoint had closed is retried on a new one when `replayable`. On success `side.out`
    /// holds the downstream HTTP/1.1 head and `side.rbuf[head.head_len..]` the body start.
    /// While connecting and while waiting for the head, with no body left to read, the client is
    /// watched ([`ClientSide::gone`]): gone → `Err` with status 0 (logged 499), at once.
    async fn request_upstream(
        &self,
        side: &mut UpSide,
        backend: &Backend,
        attempt: &mut Attempt,
        replayable: bool,
        is_head: bool,
        mut client: ClientSide<'_>,
    ) -> Result<(TcpStream, SocketAddr, framing::ResponseHead, InFlight), Failure> {
        let policy = &backend.policy;
        let mut tried = [UNSPECIFIED; MAX_TRIES];
        let mut fresh_only = false;
        loop {
            let (endpoint, state) = backend.choose(&tried[..attempt.tries]).ok_or(Failure {
                status: 503,
                error: "backend has no endpoints",
            })?;
            if attempt.tries < MAX_TRIES {
                tried[attempt.tries] = endpoint;
                attempt.tries += 1;
            }
            attempt.upstream = Some(endpoint);
            let in_flight = state.start();
            let pooled = if fresh_only {
                None
            } else {
                self.pool.take(endpoint)
            };
            let reused = pooled.is_some();
            let mut up = match pooled {
                Some(up) => up,
                None => {
                    let connecting = Instant::now();
                    let connect =
                        with_timeout(policy.connect_timeout, TcpStream::connect(endpoint));
                    let connected = tokio::select! {
                        biased;
                        connected = connect => connected,
                        () = client.gone() => return Err(CLIENT_WENT_AWAY),
                    };
                    match connected {
                        Ok(up) => {
                            let _ = up.set_nodelay(true);
                            self.metrics
                                .upstream_connect_duration
                                .observe(connecting.elapsed().as_secs_f64());
                            up
                        }
                        Err(timed_out) => {
                            self.metrics.upstream_connect_failures.inc();
                            if in_flight.state().connect_failed() {
                                self.metrics.endpoint_ejections.inc();
                                tracing::warn!(%endpoint, "endpoint ejected after repeated connect failures");
                            }
                            let untried_left = backend
                                .endpoints()
                                .iter()
                                .any(|a| !tried[..attempt.tries].contains(a));
                            if attempt.tries < MAX_TRIES && untried_left {
                                continue;
                            }
                            return Err(Failure {
                                status: if timed_out { 504 } else { 502 },
                                error: if timed_out {
                                    "upstream connect timed out"
                                } else {
                                    "upstream connect failed"
                                },
                            });
                        }
                    }
                }
            };
            in_flight.state().connected();
            // Request head (+ body start) in one write.
            let sent = side
                .timer
                .run(policy.send_timeout, up.write_all(&side.out))
                .await;
            let got_head = match sent {
                Ok(()) => {
                    if client.left > 0 {
                        self.send_body(&mut client, side, &mut up, policy.send_timeout)
                            .await?;
                    }
                    let head =
                        self.read_head(&mut up, side, is_head, attempt.close, policy.read_timeout);
                    tokio::select! {
                        biased;
                        head = head => head,
                        () = client.gone() => return Err(CLIENT_WENT_AWAY),
                    }
                }
                Err(timed_out) => Err((timed_out, 0)),
            };
            match got_head {
                Ok(head) => return Ok((up, endpoint, head, in_flight)),
                // The endpoint closed a pooled connection before answering: retry on a new one.
                Err((false, 0)) if reused && replayable && attempt.tries < MAX_TRIES => {
                    fresh_only = true;
                    tried[attempt.tries - 1] = UNSPECIFIED;
                    continue;
                }
                Err((timed_out, _)) => {
                    return Err(Failure {
                        status: if timed_out { 504 } else { 502 },
                        error: if timed_out {
                            "upstream timed out"
                        } else {
                            "upstream closed or sent a malformed response"
                        },
                    });
                }
            }
        }
    }

    /// Streams the part of the request body not read yet from the client to `up`; `body.left`
    /// is 0 after.
    async fn send_body(
        &self,
        body: &mut ClientSide<'_>,
        side: &mut UpSide,
        up: &mut TcpStream,
        send_timeout: Duration,
    ) -> Result<(), Failure> {
        while body.left > 0 {
            side.rbuf.clear();
            side.rbuf.reserve(BODY_BUFFER);
            let read = match &mut body.from {
                BodySource::Http1(stream, _) => {
                    let want = (side.rbuf.capacity() as u64).min(body.left);
                    let mut read = (&mut **stream).take(want);
                    body.timer
                        .run(self.client_body_timeout, read.read_buf(&mut side.rbuf))
                        .await
                }
                BodySource::Http2(session) => body
                    .timer
                    .run(self.client_body_timeout, next_data(session))
                    .await
                    .map(|data| {
                        // At most `left` (h2 resets a stream whose DATA exceed it); 0 at the end.
                        let data = data.unwrap_or_default();
                        let take = data.len().min(body.left as usize);
                        side.rbuf.extend_from_slice(&data[..take]);
                        take
                    }),
                BodySource::Http2Chunked(session, limit) => {
                    self.send_chunked(session, body.timer, *limit, side, up, send_timeout)
                        .await?;
                    body.left = 0;
                    return Ok(());
                }
            };
            let got = match read {
                Ok(0) => return Err(client_body_failed(false)),
                Ok(n) => n,
                Err(timed_out) => return Err(client_body_failed(timed_out)),
            };
            body.left -= got as u64;
            side.timer
                .run(send_timeout, up.write_all(&side.rbuf[..got]))
                .await
                .map_err(upstream_write_failed)?;
        }
        Ok(())
    }

    /// Streams an HTTP/2 request body of unknown length to `up` as chunked (RFC 9112 §7.1), one
    /// chunk per DATA frame, then the last chunk. Each wait for the client is bounded by
    /// `--client-body-timeout` (408); more than `limit` bytes → 413 (nginx's
    /// `client_max_body_size` on a chunked body); the upstream connection is dropped on either.
    async fn send_chunked(
        &self,
        session: &mut pingora::protocols::http::v2::server::HttpSession,
        timer: &mut Deadline,
        limit: Option<u64>,
        side: &mut UpSide,
        up: &mut TcpStream,
        send_timeout: Duration,
    ) -> Result<(), Failure> {
        let mut total = 0u64;
        loop {
            let data = timer
                .run(self.client_body_timeout, next_data(session))
                .await
                .map_err(client_body_failed)?;
            side.rbuf.clear();
            match &data {
                Some(data) => {
                    total += data.len() as u64;
                    if limit.is_some_and(|l| total > l) {
                        return Err(Failure {
                            status: 413,
                            error: "request body over the limit",
                        });
                    }
                    push_chunk_header(&mut side.rbuf, data.len());
                    side.rbuf.extend_from_slice(data);
                    side.rbuf.extend_from_slice(b"\r\n");
                }
                None => side.rbuf.extend_from_slice(b"0\r\n\r\n"),
            }
            side.timer
                .run(send_timeout, up.write_all(&side.rbuf))
                .await
                .map_err(upstream_write_failed)?;
            if data.is_none() {
                return Ok(());
            }
        }
    }

    /// Reads the upstream response head (skipping 1xx interim responses) into `side.rbuf` and
    /// writes the downstream head into `side.out`. `Err((timed_out, bytes_received))`.
    async fn read_head(
        &self,
        up: &mut TcpStream,
        side: &mut UpSide,
        is_head: bool,
        close: bool,
        read_timeout: Duration,
    ) -> Result<framing::ResponseHead, (bool, usize)> {
        side.rbuf.clear();
        let mut received = 0;
        loop {
            if !side.rbuf.is_empty() {
                match framing::parse_response(&side.rbuf, is_head, close, &mut side.out) {
                    Ok(Some(head)) if head.status == 101 => return Err((false, received.max(1))),
                    Ok(Some(head)) if head.status < 200 => {
                        side.rbuf.drain(..head.head_len);
                        continue;
                    }
                    Ok(Some(head)) => return Ok(head),
                    Ok(None) => {}
                    Err(bad) => {
                        tracing::debug!(error = bad.0, "upstream response refused");
                        return Err((false, received.max(1)));
                    }
                }
            }
            side.rbuf.reserve(BODY_BUFFER);
            match side
                .timer
                .run(read_timeout, up.read_buf(&mut side.rbuf))
                .await
            {
                Ok(0) => return Err((false, received)),
                Ok(n) => received += n,
                Err(timed_out) => return Err((timed_out, received)),
            }
        }
    }

    /// Metrics and the access log event of an HTTP/1.1 request (see [`FastPath::record`]).
    fn log(
        &self,
        conn: &Conn,
        req: &Request,
        backend: &Backend,
        l: &Logged<'_>,
        attempt: &Attempt,
    ) {
        // Host, path and request ID are only logged (the metrics need the method alone).
        let text = |r: &Range<usize>| {
            if self.access_log {
                std::str::from_utf8(&conn.buf[r.clone()]).unwrap_or("")
            } else {
                ""
            }
        };
        let line = LogLine {
            client: conn.client_ip.as_deref(),
            method: &conn.buf[req.method.clone()],
            host: text(&req.host),
            path: text(&req.path),
            request_id: req.request_id.as_ref().map(text),
            bytes_in: req.content_length,
        };
        self.record(&line, backend, l, attempt);
    }

    /// Metrics (the backend's [`RouteStats`](crate::metrics::RouteStats)) and the access log
    /// event, with crate::proxy's fields.
    fn record(&self, line: &LogLine<'_>, backend: &Backend, l: &Logged<'_>, attempt: &Attempt) {
        let Logged {
            started,
            status,
            bytes_out,
            error,
            request_id,
        } = *l;
        let elapsed = started.elapsed();
        // Logged like Pingora's path: 499 when the client went away before an answer.
        let status = if status == 0 { 499 } else { status };
        let bytes_in = if error.is_some() && status == 499 {
            0
        } else {
            line.bytes_in
        };
        backend.stats.record(
            &self.metrics,
            method_label(line.method),
            StatusClass::of(status),
            elapsed.as_secs_f64(),
            bytes_in,
            bytes_out,
        );
        if self.access_log {
            let labels = backend.stats.labels();
            tracing::info!(
                target: "access",
                client = line.client,
                method = std::str::from_utf8(line.method).unwrap_or(""),
                host = line.host,
                path = line.path,
                status,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                bytes_in,
                bytes_out,
                ingress = &*labels.ingress.0,
                upstream = attempt.upstream.map(tracing::field::display),
                tries = attempt.tries,
                request_id = line
                    .request_id
                    .unwrap_or(std::str::from_utf8(request_id).unwrap_or("")),
                error,
            );
        }
    }
}

/// The access log's view of a request (both protocols).
struct LogLine<'a> {
    client: Option<&'a str>,
    method: &'a [u8],
    host: &'a str,
    path: &'a str,
    /// The client's `X-Request-ID`, if it sent one.
    request_id: Option<&'a str>,
    /// Request body bytes.
    bytes_in: u64,
}

/// The metrics label of a request method as received (methods are case-sensitive, RFC 9110
/// §9.1: `get` is an extension method, `OTHER`).
fn method_label(method: &[u8]) -> Method {
    match method {
        b"GET" => Method::GET,
        b"HEAD" => Method::HEAD,
        b"POST" => Method::POST,
        b"PUT" => Method::PUT,
        b"DELETE" => Method::DELETE,
        b"PATCH" => Method::PATCH,
        b"OPTIONS" => Method::OPTIONS,
        b"CONNECT" => Method::CONNECT,
        b"TRACE" => Method::TRACE,
        _ => Method::OTHER,
    }
}

fn push_chunk_header(out: &mut Vec<u8>, len: usize) {
    use std::io::Write;
    let _ = write!(out, "{len:x}\r\n");
}

async fn read_upstream(
    up: &mut TcpStream,
    rbuf: &mut Vec<u8>,
    timer: &mut Deadline,
    read_timeout: Duration,
) -> Result<usize, Failure> {
    rbuf.reserve(BODY_BUFFER);
    match timer.run(read_timeout, up.read_buf(rbuf)).await {
        Ok(0) => Err(Failure {
            status: 502,
            error: "upstream closed inside the response body",
        }),
        Ok(n) => Ok(n),
        Err(timed_out) => Err(upstream_read_failed(timed_out)),
    }
}

/// A request body read from the client failed: closed (nothing to answer), or stalled past
/// `--client-body-timeout` (nginx's `client_body_timeout`: 408; the upstream connection is
/// dropped).
fn client_body_failed(timed_out: bool) -> Failure {
    if timed_out {
        Failure {
            status: 408,
            error: "client request body timed out",
        }
    } else {
        Failure {
            status: 0,
            error: "client closed during the request body",
        }
    }
}

fn upstream_write_failed(timed_out: bool) -> Failure {
    Failure {
        status: if timed_out { 504 } else { 502 },
        error: "upstream write failed",
    }
}

fn upstream_read_failed(timed_out: bool) -> Failure {
    Failure {
        status: if timed_out { 504 } else { 502 },
        error: if timed_out {
            "upstream read timed out"
        } else {
            "upstream read failed"
        },
    }
}

/// The client went away while its request waited for the endpoint ([`ClientSide::gone`]).
const CLIENT_WENT_AWAY: Failure = Failure {
    status: 0,
    error: "client went away before the answer",
};

fn client_gone(_: std::io::Error) -> Failure {
    Failure {
        status: 0,
        error: "client write failed",
    }
}

fn bad_chunk(_: framing::BadChunk) -> Failure {
    Failure {
        status: 502,
        error: "malformed chunked response body",
    }
}

/// The answer when nothing was sent yet (Pingora's error response shape; the connection then
/// closes, as crate::proxy's `fail_to_proxy` does).
fn error_response(status: u16) -> &'static [u8] {
    match status {
        408 => b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\ncache-control: private, no-store\r\nconnection: close\r\n\r\n",
        503 => b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\ncache-control: private, no-store\r\nconnection: close\r\n\r\n",
        504 => b"HTTP/1.1 504 Gateway Timeout\r\ncontent-length: 0\r\ncache-control: private, no-store\r\nconnection: close\r\n\r\n",
        _ => b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\ncache-control: private, no-store\r\nconnection: close\r\n\r\n",
    }
}

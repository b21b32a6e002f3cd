//! The request path: a thin `impl ProxyHttp` that looks the request up in the current
//! [`RouteTable`] and forwards to one endpoint of the chosen backend.
//!
//! ```text
//!  request_filter ── Content-Length + Transfer-Encoding? ─────────────► 400, connection closed
//!      │            load RouteTable (ArcSwap, lock-free) ── lookup(host, path)
//!      ├─ no route ──────────────────────────────────────────────────► 404 (keep-alive kept)
//!      ├─ plain HTTP, TLS host, ssl-redirect ────────────────────────► 308 https://host/path
//!      ├─ backend, no endpoints ─────────────────────────────────────► 503
//!      ├─ Content-Length > proxy-body-size ──────────────────────────► 413
//!      ├─ HTTP/1.1 chunked: first body read checked before connecting ► 400 when malformed
//!      └─ X-Request-ID kept or generated ─► backend ─► ctx
//!  upstream_peer ─── Backend::choose (round robin | least request, skips tried and ejected)
//!                    ─► HttpPeer: protocol (HTTP/1.1, HTTPS, h2c, h2+TLS), timeouts; pooled
//!  fail_to_connect ─ endpoint failure counted (passive health); retry on another endpoint,
//!                    at most MAX_TRIES tries (nothing was sent, so any method may retry)
//!  upstream_request_filter ─ X-Forwarded-For += client, -Proto, -Host, -Port, X-Real-IP
//!  request_body_filter ───── streamed bodies counted against proxy-body-size ─► 413
//!  upstream_response_filter ─ Connection-nominated and hop-by-hop response fields removed
//!  upstream_response_body_filter ─ end of the upstream response: in-flight count released
//!  logging ───────────────── RouteStats (metrics) and one JSON-able access log event
//! ```
//!
//! Hop-by-hop request fields (RFC 9110 §7.6.1: `Connection` and the fields it nominates,
//! `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`) are removed
//! by Pingora's default `HttpUpstreamRequestPolicy` before `upstream_request_filter` runs; only
//! WebSocket upgrades are forwarded (re-normalised to `Connection: Upgrade`). A request whose
//! `Connection` nominates a protected field (`Host`, `X-Forwarded-*`) is rejected by that policy.
//!
//! The `Host` header is forwarded as received. Upstream connections are pooled by Pingora's
//! connector (keyed by address, protocol and TLS settings), idle ones closed after
//! [`POOL_IDLE_TIMEOUT`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::metrics::{Method, Metrics, RouteStats, StatusClass};
use crate::policy::UpstreamProtocol;
use crate::routes::{Backend, RouteTable};
use crate::upstream::{InFlight, fast_random};

/// Default connect timeout towards an endpoint (ingress-nginx's `proxy-connect-timeout`);
/// per Ingress: `drawbridge.dev/proxy-connect-timeout`.
pub const CONNECT_TIMEOUT: Duration = crate::policy::DEFAULT_CONNECT_TIMEOUT;

/// Idle time after which a pooled upstream connection is closed.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Tries per request, the first included (ingress-nginx's `proxy-next-upstream-tries` is 3).
/// Only connect failures are retried here (nothing was sent, so any method may be); Pingora
/// itself retries idempotent requests whose reused pooled connection turned out closed.
pub const MAX_TRIES: usize = 3;

/// Idle upstream keep-alive connections kept per proxy worker thread (Pingora's
/// `ServerConf::upstream_keepalive_pool_size`; the pool is one LRU of this × `--threads`, across
/// all endpoints, HTTP/1.1 and HTTP/2 connections alike). Pingora's default, 128, is below the
/// peak concurrency of a busy gateway: after a burst of N > 128 concurrent requests the
/// connections beyond 128 were closed and the next burst connected again (bench: 640 concurrent
/// HTTP/2 streams → ≈ 5% of requests opened a new upstream connection). An idle connection exists
/// only because that many were in use at once, so a large bound costs nothing until needed, and
/// idle ones still close after [`POOL_IDLE_TIMEOUT`]. nginx's equivalent is `keepalive N` per
/// worker (ingress-nginx default 320).
pub const UPSTREAM_KEEPALIVE_POOL_SIZE: usize = 1024;

/// Default of `--client-body-timeout`: how long a read of the request body may wait for the
/// client (nginx's `client_body_timeout` and ingress-nginx's `client-body-timeout`, 60 s; the time
/// between two successive reads, not for the whole body). A request whose body stalls longer is
/// answered 408 and its upstream connection closed.
pub const CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Concurrent streams per HTTP/2 upstream connection.
pub const H2_STREAMS_PER_CONNECTION: usize = 100;

/// The gateway's proxy logic. Reads the route table published by `discovery`.
pub struct Gateway {
    routes: Arc<ArcSwap<RouteTable>>,
    metrics: Arc<Metrics>,
    /// Where requests that matched no rule are counted (empty `ingress` and `host`).
    no_route: RouteStats,
    /// Emit one access log event per request (`--access-log`).
    access_log: bool,
    /// `--client-body-timeout`: the longest wait of one request body read (HTTP/1.x clients;
    /// HTTP/2 ones through the `drawbridge patch` in vendor/pingora-proxy).
    client_body_timeout: Duration,
}

impl Gateway {
    /// A gateway reading `routes`, counting into `metrics`, with the access log on.
    pub fn new(routes: Arc<ArcSwap<RouteTable>>, metrics: Arc<Metrics>) -> Self {
        Gateway {
            routes,
            metrics,
            no_route: RouteStats::default(),
            access_log: true,
            client_body_timeout: CLIENT_BODY_TIMEOUT,
        }
    }

    /// The same gateway with another request body read timeout (see [`CLIENT_BODY_TIMEOUT`]).
    pub fn with_client_body_timeout(mut self, timeout: Duration) -> Self {
        self.client_body_timeout = timeout;
        self
    }

    /// The same gateway with the access log on or off.
    pub fn with_access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }
}

/// Per-request state: the backend chosen in `request_filter`, tries, and timers.
pub struct RequestCtx {
    backend: Option<Arc<Backend>>,
    /// When the request started (its context was created).
    started: Instant,
    /// When `upstream_peer` chose an endpoint (start of a possible connect).
    connecting: Option<Instant>,
    /// Endpoints tried so far (the first `tries` entries).
    tried: [SocketAddr; MAX_TRIES],
    tries: usize,
    /// The current endpoint's in-flight count, held until the request ends or moves on.
    in_flight: Option<InFlight>,
    /// Request body bytes forwarded so far (against `proxy-body-size`).
    body_bytes: u64,
}

const UNSPECIFIED: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

impl RequestCtx {
    fn upstream(&self) -> Option<SocketAddr> {
        self.tries.checked_sub(1).map(|i| self.tried[i])
    }
}

/// The request's host: `:authority` / absolute-form URI first (HTTP/2), else the `Host` header.
pub(crate) fn request_host(req: &RequestHeader) -> &str {
    req.uri
        .host()
        .or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("")
}

/// `host` without its port (`[v6]:port` keeps the brackets).
fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

/// HTTP/1 request carrying both `Transfer-Encoding` and `Content-Length` (RFC 9112 §6.1: "ought
/// to be handled as an error"; the classic request-smuggling shape). Pingora drops the
/// `Content-Length` of such a request and reads it chunked; drawbridge rejects it instead, so
/// no request whose framing two parsers could read differently is ever forwarded. The raw header
/// is scanned only when `Transfer-Encoding` is present (rare).
fn has_te_and_content_length(session: &Session) -> bool {
    if !session
        .req_header()
        .headers
        .contains_key(http::header::TRANSFER_ENCODING)
    {
        return false;
    }
    let Some(h1) = session.as_http1() else {
        return false;
    };
    h1.get_headers_raw_bytes()
        .split(|&b| b == b'\n')
        .skip(1)
        .any(|line| {
            line.len() >= 15 && line[..15].eq_ignore_ascii_case(b"content-length:")
                || line.len() >= 14
                    && line[..14].eq_ignore_ascii_case(b"content-length")
                    && line[14..]
                        .iter()
                        .all(|b| *b == b' ' || *b == b'\t' || *b == b':')
        })
}

/// A new request ID: 128 random bits as 32 lower-case hex digits (ingress-nginx's `$request_id`
/// shape). Formatted on the stack; the header value is the only allocation.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (half, word) in [fast_random(), fast_random()].into_iter().enumerate() {
        for i in 0..16 {
            buf[half * 16 + i] = HEX[((word >> (i * 4)) & 0xf) as usize];
        }
    }
    HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value")
}

/// Writes a small complete response. `close`: the connection is not reused (the request body
/// was not read, or the request was malformed).
async fn respond(
    session: &mut Session,
    status: u16,
    body: &'static [u8],
    location: Option<String>,
    close: bool,
) -> Result<bool> {
    if close {
        session.set_keepalive(None);
    }
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    if let Some(location) = location {
        resp.insert_header(http::header::LOCATION, location)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(body)), true)
        .await?;
    Ok(true)
}

/// What `request_filter` decided before any await.
enum Decision {
    NotFound,
    Redirect(String),
    Forward(Arc<Backend>),
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            backend: None,
            started: Instant::now(),
            connecting: None,
            tried: [UNSPECIFIED; MAX_TRIES],
            tries: 0,
            in_flight: None,
            body_bytes: 0,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // Body reads. HTTP/1.x sessions apply it themselves; for HTTP/2 ones (no read timeout in
        // pingora-core) this is the `drawbridge patch` `Session::set_read_timeout`. A timeout
        // is a downstream `ReadTimedout`, answered 408 by `fail_to_proxy`.
        session.set_read_timeout(Some(self.client_body_timeout));
        if has_te_and_content_length(session) {
            return respond(
                session,
                400,
                b"Content-Length together with Transfer-Encoding\n",
                None,
                true,
            )
            .await;
        }
        let tls = is_tls(session);
        let decision = {
            let routes = self.routes.load();
            let req = session.req_header();
            let host = request_host(req);
            match routes.lookup(host, req.uri.path()) {
                None => Decision::NotFound,
                Some(b) if !tls && b.policy.ssl_redirect && routes.has_tls(host) => {
                    ctx.backend = Some(b.clone());
                    let pq = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
                    Decision::Redirect(format!("https://{}{pq}", host_without_port(host)))
                }
                Some(b) => Decision::Forward(b.clone()),
            }
        };
        let backend = match decision {
            Decision::NotFound => {
                return respond(
                    session,
                    404,
                    b"no Ingress rule matches this host and path\n",
                    None,
                    false,
                )
                .await;
            }
            // 308 keeps the method and body (RFC 9110 §15.4.9), as ingress-nginx's ssl-redirect.
            Decision::Redirect(location) => {
                return respond(session, 308, b"", Some(location), false).await;
            }
            Decision::Forward(b) => b,
        };
        ctx.backend = Some(backend.clone());
        if backend.endpoints().is_empty() {
            tracing::debug!(backend = %backend.name, "backend has no ready endpoints");
            return respond(
                session,
                503,
                b"backend has no ready endpoints\n",
                None,
                false,
            )
            .await;
        }
        let limit = backend.policy.body_limit;
        if let Some(limit) = limit {
            let declared = session
                .req_header()
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit) {
                return respond(session, 413, b"request body too large\n", None, true).await;
            }
        }
        if !session.req_header().headers.contains_key("x-request-id") {
            session
                .req_header_mut()
                .insert_header("x-request-id", new_request_id())?;
        }
        // Chunked HTTP/1.1 bodies: read (and so parse) the first piece before any upstream is
        // contacted; Pingora's retry buffer replays it upstream. A malformed first chunk gets
        // 400 and nothing is forwarded. Only one read: the retry buffer holds 64 KiB and a
        // second read could overflow it.
        let chunked = session.as_http1().is_some()
            && session
                .req_header()
                .headers
                .contains_key(http::header::TRANSFER_ENCODING);
        if chunked && !session.is_body_done() {
            let expects_continue = session
                .req_header()
                .headers
                .get(http::header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
            if expects_continue {
                // We answer the expectation; the upstream then gets the body without waiting.
                session
                    .req_header_mut()
                    .remove_header(&http::header::EXPECT);
                session.write_continue_response().await?;
            }
            session.as_downstream_mut().enable_retry_buffering();
            match session.read_request_body().await {
                Ok(first) => {
                    let n = first.map_or(0, |b| b.len() as u64);
                    if limit.is_some_and(|limit| n > limit) {
                        return respond(session, 413, b"request body too large\n", None, true)
                            .await;
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "malformed chunked request body");
                    return respond(session, 400, b"malformed chunked body\n", None, true).await;
                }
            }
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(b), Some(backend)) = (body.as_ref(), ctx.backend.as_ref()) {
            ctx.body_bytes += b.len() as u64;
            if backend
                .policy
                .body_limit
                .is_some_and(|l| ctx.body_bytes > l)
            {
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body too large");
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let backend = ctx
            .backend
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(503), "no backend chosen"))?;
        let (endpoint, state) = backend.choose(&ctx.tried[..ctx.tries]).ok_or_else(|| {
            Error::explain(ErrorType::HTTPStatus(503), "backend has no endpoints")
        })?;
        if ctx.tries < MAX_TRIES {
            ctx.tried[ctx.tries] = endpoint;
            ctx.tries += 1;
        }
        // Replacing the guard moves the in-flight count from the failed endpoint to this one.
        ctx.in_flight = Some(state.start());
        ctx.connecting = Some(Instant::now());
        let protocol = backend.protocol;
        // TLS: the endpoint IP as server name, so no SNI is sent (nginx's default
        // `proxy_ssl_server_name off`); rustls refuses an empty name.
        let sni = if protocol.tls() {
            endpoint.ip().to_string()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(endpoint, protocol.tls(), sni);
        let policy = &backend.policy;
        let o = &mut peer.options;
        o.connection_timeout = Some(policy.connect_timeout);
        o.read_timeout = Some(policy.read_timeout);
        o.write_timeout = Some(policy.send_timeout);
        o.idle_timeout = Some(POOL_IDLE_TIMEOUT);
        match protocol {
            UpstreamProtocol::Http1 => {}
            // HTTP/1.1 over TLS: like nginx's proxy_pass https:// (upgrades keep working).
            UpstreamProtocol::Https => o.set_http_version(1, 1),
            UpstreamProtocol::H2c | UpstreamProtocol::H2Tls => {
                o.set_http_version(2, 2);
                o.max_h2_streams = H2_STREAMS_PER_CONNECTION;
            }
        }
        if protocol.tls() {
            // ingress-nginx's default proxy-ssl-verify off: pod certificates rarely name pod IPs.
            o.verify_cert = false;
            o.verify_hostname = false;
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.metrics.upstream_connect_failures.inc();
        if let Some(f) = ctx.in_flight.take()
            && f.state().connect_failed()
        {
            self.metrics.endpoint_ejections.inc();
            tracing::warn!(endpoint = %peer._address, "endpoint ejected after repeated connect failures");
        }
        // Nothing reached the endpoint: another one may take any request.
        let untried_left = ctx.backend.as_ref().is_some_and(|b| {
            b.endpoints()
                .iter()
                .any(|a| !ctx.tried[..ctx.tries].contains(a))
        });
        e.set_retry(ctx.tries < MAX_TRIES && untried_left);
        e
    }

    /// The error answer ([`error_status`]), when the client is still there to get it.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = error_status(e);
        if code > 0
            && session.response_written().is_none()
            && let Err(error) = session.respond_error(code).await
        {
            tracing::debug!(%error, "error response not delivered");
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(f) = &ctx.in_flight {
            f.state().connected();
        }
        if let (false, Some(started)) = (reused, ctx.connecting.take()) {
            self.metrics
                .upstream_connect_duration
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        if let Some(ip) = client_ip {
            // Append to what earlier proxies said (RFC 7239's de-facto predecessor); one header.
            let value = match upstream
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prev) if !prev.is_empty() => format!("{prev}, {ip}"),
                _ => ip.to_string(),
            };
            upstream.insert_header("x-forwarded-for", value)?;
            upstream.insert_header("x-real-ip", ip.to_string())?;
        }
        // Overwritten, never trusted from the client: this hop terminated the client's connection.
        upstream.insert_header(
            "x-forwarded-proto",
            if is_tls(session) { "https" } else { "http" },
        )?;
        let host = request_host(session.req_header());
        if !host.is_empty() {
            let host = HeaderValue::from_str(host)
                .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "request host", e))?;
            upstream.insert_header("x-forwarded-host", host)?;
        }
        if let Some(port) = session
            .server_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.port())
        {
            upstream.insert_header("x-forwarded-port", HeaderValue::from(port))?;
        }
        // gRPC needs `TE: trailers` (its spec requires it; Pingora strips TE as hop-by-hop).
        if matches!(
            ctx.backend.as_ref().map(|b| b.protocol),
            Some(UpstreamProtocol::H2c | UpstreamProtocol::H2Tls)
        ) && session
            .req_header()
            .headers
            .get(http::header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"))
        {
            upstream.insert_header(http::header::TE, "trailers")?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        // RFC 9110 §7.6.1: fields the upstream nominated in `Connection` are for this hop only.
        // A 101 keeps its `Connection: upgrade` / `Upgrade` (the client needs them).
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
            return Ok(());
        }
        if let Some(connection) = resp.headers.get(http::header::CONNECTION).cloned() {
            for name in connection
                .to_str()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
            {
                let name = name.to_ascii_lowercase();
                if !matches!(name.as_str(), "close" | "keep-alive" | "upgrade") {
                    resp.remove_header(&name);
                }
            }
            resp.remove_header(&http::header::CONNECTION);
        }
        resp.remove_header("keep-alive");
        resp.remove_header("proxy-connection");
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        // The endpoint's part ends when its response has been read: stop counting the request
        // in flight (least-request) here, before the last bytes go to the client, not in
        // `logging` after them — else a client's next request still sees its previous one in
        // flight and least-request ties at random.
        if end_of_stream {
            ctx.in_flight = None;
        }
        Ok(None)
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        ctx.in_flight = None;
        let status = match (session.response_written(), error) {
            (Some(resp), _) => resp.status.as_u16(),
            // Nothing was sent: the client went away (499, nginx's "client closed request",
            // as on the fast path), or the error answer could not be delivered.
            (None, Some(e)) => match error_status(e) {
                0 => 499,
                code => code,
            },
            (None, None) => 499,
        };
        let stats = ctx.backend.as_ref().map_or(&self.no_route, |b| &b.stats);
        let elapsed = ctx.started.elapsed();
        let (bytes_in, bytes_out) = (
            session.body_bytes_read() as u64,
            session.body_bytes_sent() as u64,
        );
        let req = session.req_header();
        stats.record(
            &self.metrics,
            Method::of(&req.method),
            StatusClass::of(status),
            elapsed.as_secs_f64(),
            bytes_in,
            bytes_out,
        );
        if self.access_log {
            let labels = stats.labels();
            let request_id = req
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            tracing::info!(
                target: "access",
                client = session.client_addr().and_then(|a| a.as_inet()).map(|a| tracing::field::display(a.ip())),
                method = %req.method,
                host = request_host(req),
                path = req.uri.path(),
                status,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                bytes_in,
                bytes_out,
                ingress = &*labels.ingress.0,
                upstream = ctx.upstream().map(tracing::field::display),
                tries = ctx.tries,
                request_id,
                error = error.map(tracing::field::display),
            );
        }
    }
}

/// The status that answers a failed request: Pingora's default, except that upstream timeouts
/// answer 504 (nginx's `proxy_*_timeout` behaviour) instead of 502 and a request body the
/// client stopped sending answers 408 (nginx's `client_body_timeout`) instead of 400. 0: the
/// client went away (a read or write on its connection failed, or it closed it, also while
/// the endpoint was thinking); nothing to answer, logged 499.
fn error_status(e: &Error) -> u16 {
    use ErrorType::*;
    match e.etype() {
        HTTPStatus(code) => *code,
        ConnectTimedout | ReadTimedout | WriteTimedout if *e.esource() == ErrorSource::Upstream => {
            504
        }
        ReadTimedout if *e.esource() == ErrorSource::Downstream => 408,
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_hex_digits_and_differ() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(a, b);
    }

    #[test]
    fn host_port_stripping() {
        assert_eq!(host_without_port("a.example:8080"), "a.example");
        assert_eq!(host_without_port("a.example"), "a.example");
        assert_eq!(host_without_port("[::1]:8443"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
    }
}

//! The request path: a thin `impl ProxyHttp` that looks the request up in the current
//! [`RouteTable`] and forwards to one endpoint of the chosen backend.
//!
//! ```text
//!  request_filter ── load RouteTable (ArcSwap, lock-free) ── lookup(host, path)
//!      ├─ no route ──────────────► 404 (keep-alive kept)
//!      ├─ backend, no endpoints ─► 503
//!      └─ backend ─► ctx
//!  upstream_peer ─── round-robin endpoint ─► HttpPeer (HTTP/1.1, Pingora's connection pool)
//!  upstream_request_filter ─ X-Forwarded-For += client IP, X-Forwarded-Proto = http|https
//!  connected_to_upstream ─── new connection: upstream connect duration
//!  logging ───────────────── the matched backend's RouteStats: requests, duration, body bytes
//! ```
//!
//! The `Host` header is forwarded as received. Nothing is logged per request above `debug`;
//! metrics cost a few atomic operations per request (handles are cached per route).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Digest;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use crate::metrics::{Method, Metrics, RouteStats, StatusClass};
use crate::routes::{Backend, RouteTable};

/// Connect timeout towards an endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle time after which a pooled upstream connection is closed.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The gateway's proxy logic. Reads the route table published by `discovery`.
pub struct Gateway {
    routes: Arc<ArcSwap<RouteTable>>,
    metrics: Arc<Metrics>,
    /// Where requests that matched no rule are counted (empty `ingress` and `host`).
    no_route: RouteStats,
}

impl Gateway {
    /// A gateway reading `routes`, counting into `metrics`.
    pub fn new(routes: Arc<ArcSwap<RouteTable>>, metrics: Arc<Metrics>) -> Self {
        Gateway {
            routes,
            metrics,
            no_route: RouteStats::default(),
        }
    }
}

/// Per-request state: the backend chosen in `request_filter`, and timers.
pub struct RequestCtx {
    backend: Option<Arc<Backend>>,
    /// When the request started (its context was created).
    started: Instant,
    /// When `upstream_peer` chose an endpoint (start of a possible connect).
    connecting: Option<Instant>,
}

/// The request's host: `:authority` / absolute-form URI first (HTTP/2), else the `Host` header.
fn request_host(req: &RequestHeader) -> &str {
    req.uri
        .host()
        .or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("")
}

fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

async fn respond(session: &mut Session, status: u16, body: &'static [u8]) -> Result<bool> {
    let mut resp = ResponseHeader::build(status, Some(2))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(body)), true)
        .await?;
    Ok(true)
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            backend: None,
            started: Instant::now(),
            connecting: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let routes = self.routes.load();
        let req = session.req_header();
        let backend = routes.lookup(request_host(req), req.uri.path()).cloned();
        drop(routes);
        match backend {
            None => {
                respond(
                    session,
                    404,
                    b"no Ingress rule matches this host and path\n",
                )
                .await
            }
            Some(b) if b.endpoints().is_empty() => {
                tracing::debug!(backend = %b.name, "backend has no ready endpoints");
                ctx.backend = Some(b);
                respond(session, 503, b"backend has no ready endpoints\n").await
            }
            Some(b) => {
                ctx.backend = Some(b);
                Ok(false)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let endpoint = ctx.backend.as_ref().and_then(|b| b.pick()).ok_or_else(|| {
            Error::explain(ErrorType::HTTPStatus(503), "backend has no endpoints")
        })?;
        ctx.connecting = Some(Instant::now());
        let mut peer = HttpPeer::new(endpoint, false, String::new());
        peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
        peer.options.idle_timeout = Some(POOL_IDLE_TIMEOUT);
        Ok(Box::new(peer))
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
        if let (false, Some(started)) = (reused, ctx.connecting.take()) {
            self.metrics
                .upstream_connect_duration
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        let status = match (session.response_written(), error) {
            (Some(resp), _) => resp.status.as_u16(),
            // Nothing was sent: the client went away or the proxy failed before a response.
            (None, Some(_)) => 502,
            (None, None) => 499,
        };
        let stats = ctx.backend.as_ref().map_or(&self.no_route, |b| &b.stats);
        stats.record(
            &self.metrics,
            Method::of(&session.req_header().method),
            StatusClass::of(status),
            ctx.started.elapsed().as_secs_f64(),
            session.body_bytes_read() as u64,
            session.body_bytes_sent() as u64,
        );
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(client) = session.client_addr().and_then(|a| a.as_inet()) {
            let ip = client.ip();
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
        }
        // Overwritten, never trusted from the client: this hop terminated the client's connection.
        upstream.insert_header(
            "x-forwarded-proto",
            if is_tls(session) { "https" } else { "http" },
        )?;
        Ok(())
    }
}

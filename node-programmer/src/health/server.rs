//! The HTTP/1.1 plumbing shared by the proxy and Service health servers: an accept loop on a
//! bound listener whose task owns every connection task, so aborting it (and awaiting the
//! handle) closes the port and every open connection — Go's `http.Server.Close()`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use super::{Error, Result};

/// Answers one request; must not block (it runs on the connection task).
pub(crate) type Handler = Arc<dyn Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync>;

/// Binds `addr` (tokio sets `SO_REUSEADDR`, like Go, so a closed port can be reopened at once).
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::BindFailed { addr, source })
}

/// Serves `handler` on `listener` from a new task. Connection errors are logged at `debug`.
pub(crate) fn spawn(listener: TcpListener, handler: Handler) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Dropped with this task: aborts every connection still open.
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let handler = handler.clone();
                        connections.spawn(async move {
                            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                                let response = handler(&req);
                                async move { Ok::<_, Infallible>(response) }
                            });
                            if let Err(error) = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await
                            {
                                tracing::debug!(%error, "health server: connection error");
                            }
                        });
                    }
                    Err(error) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(%error, "health server: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    })
}

/// A response with `status`, the JSON headers kube-proxy sets on every health answer
/// (`Content-Type: application/json`, `X-Content-Type-Options: nosniff`) and `body`.
pub(crate) fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Go's `http.NotFound`: 404, `text/plain; charset=utf-8`, `404 page not found\n`.
pub(crate) fn not_found() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"404 page not found\n")));
    *response.status_mut() = StatusCode::NOT_FOUND;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

//! The lab's pod: an HTTP/1.1 echo server that tells the caller *who* answered.
//!
//! End-to-end tests send real requests through drawbridge (external IP, NodePort, ClusterIP,
//! the ingress gateway) and need to know which pod the packets reached and what the proxy
//! added on the way. Every request is answered `200` with a JSON body and an `x-pod` header:
//!
//! ```text
//!  client ──TCP──▶ listener (backlog 1024) ──▶ hyper http1 (keep-alive) ──▶ echo()
//!                                                                            │
//!   {"pod","ip","port","host","method","path","peer","headers":{x-forwarded-*,…}} ◀┘
//! ```
//!
//! A request body is read to its end before the answer is sent (so uploads through a proxy
//! complete, and the connection stays reusable) and its length is reported as `"body_bytes"`
//! (present only when the body was not empty, so GET answers keep their ~190 bytes).
//!
//! The listen backlog is raised to [`LISTEN_BACKLOG`] because a small backlog drops SYNs under a
//! connect storm and turns test latency into the 1 s SYN retransmit
//! (see `shared/reference/lab-notes.md`, Python's `http.server` backlog of 5).
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};

/// Accept-queue length requested from the kernel for every listener (capped by
/// `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u32 = 1024;

/// Request headers copied into the `headers` object of the answer: the ones a proxy adds, so
/// tests can check what the ingress gateway forwarded.
pub const ECHOED_HEADERS: [&str; 5] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "x-request-id",
];

/// Response header naming the pod that answered, for callers that do not parse the body.
pub const POD_HEADER: &str = "x-pod";

/// Binds `addr` with `SO_REUSEADDR` and a [`LISTEN_BACKLOG`]-long accept queue.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections on `listener` forever, serving each with HTTP/1.1 keep-alive on its own
/// task. Only a failing `accept` ends the loop; a broken connection ends only its own task.
pub async fn serve(listener: TcpListener, pod_name: Arc<str>) -> io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        // Lab requests are small and latency-sensitive; Nagle would only add delay.
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr()?;
        let pod_name = Arc::clone(&pod_name);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let pod_name = Arc::clone(&pod_name);
                async move {
                    let (parts, body) = req.into_parts();
                    let body_bytes = body_length(body).await;
                    let req = Request::from_parts(parts, ());
                    Ok::<_, Infallible>(echo(&req, body_bytes, &pod_name, local, peer))
                }
            });
            if let Err(error) = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection from {peer}: {error}");
            }
        });
    }
}

/// Reads a request body to its end and returns its length in bytes, frame by frame without
/// keeping the data. A body that fails half-way (the client went away) counts what arrived; the
/// answer is then written to a broken connection and dropped, which ends only that connection.
pub async fn body_length(mut body: Incoming) -> u64 {
    let mut length = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            length += data.len() as u64;
        }
    }
    length
}

/// Builds the answer to one request whose body (`body_bytes` long) was already read: always
/// `200`, JSON body, `x-pod` header.
///
/// `local` is the address the connection arrived on (after any DNAT, so the pod's own IP), `peer`
/// the address it came from (the client, or the node/gateway if it was masqueraded or proxied).
pub fn echo<B>(
    req: &Request<B>,
    body_bytes: u64,
    pod_name: &str,
    local: SocketAddr,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let mut body = echo_body(
        req.method().as_str(),
        req.uri()
            .path_and_query()
            .map_or_else(|| req.uri().path(), |pq| pq.as_str()),
        req.headers(),
        pod_name,
        local,
        peer,
    );
    if body_bytes > 0 {
        body["body_bytes"] = body_bytes.into();
    }
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(value) = HeaderValue::from_str(pod_name) {
        headers.insert(POD_HEADER, value);
    }
    response
}

/// The JSON document describing one request; see the crate docs for the shape.
pub fn echo_body(
    method: &str,
    path: &str,
    headers: &hyper::HeaderMap,
    pod_name: &str,
    local: SocketAddr,
    peer: SocketAddr,
) -> serde_json::Value {
    let text = |name: &str| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let selected: serde_json::Map<String, serde_json::Value> = ECHOED_HEADERS
        .iter()
        .filter_map(|name| text(name).map(|v| ((*name).to_owned(), v.into())))
        .collect();
    serde_json::json!({
        "pod": pod_name,
        "ip": canonical(local.ip()).to_string(),
        "port": local.port(),
        "host": text(HOST.as_str()).unwrap_or_default(),
        "method": method,
        "path": path,
        "peer": SocketAddr::new(canonical(peer.ip()), peer.port()).to_string(),
        "headers": selected,
    })
}

/// Shows IPv4-mapped IPv6 addresses (from a dual-stack `[::]` listener) as plain IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use tokio::net::TcpStream;

    async fn start(pod: &str) -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::from(pod)));
        addr
    }

    async fn get(
        sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        host: &str,
        path: &str,
        extra: &[(&str, &str)],
    ) -> (Response<()>, serde_json::Value) {
        let mut req = Request::get(path).header(HOST, host);
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        sender.ready().await.unwrap();
        let res = sender
            .send_request(req.body(Empty::new()).unwrap())
            .await
            .unwrap();
        let (parts, body) = res.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            Response::from_parts(parts, ()),
            serde_json::from_slice(&bytes).unwrap(),
        )
    }

    #[tokio::test]
    async fn answers_with_pod_address_and_request_fields_over_keep_alive() {
        let addr = start("pod-web-1").await;
        let stream = TcpStream::connect(addr).await.unwrap();
        let client_addr = stream.local_addr().unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);

        let (res, json) = get(
            &mut sender,
            "app.example.test",
            "/a/b?x=1",
            &[("x-forwarded-proto", "https"), ("x-unrelated", "no")],
        )
        .await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()[POD_HEADER], "pod-web-1");
        assert_eq!(json["pod"], "pod-web-1");
        assert_eq!(json["ip"], "127.0.0.1");
        assert_eq!(json["port"], addr.port());
        assert_eq!(json["host"], "app.example.test");
        assert_eq!(json["method"], "GET");
        assert_eq!(json["path"], "/a/b?x=1");
        assert_eq!(json["peer"], client_addr.to_string());
        assert_eq!(json["headers"]["x-forwarded-proto"], "https");
        assert!(json["headers"].get("x-unrelated").is_none());

        // Same connection again: keep-alive works and /healthz is answered too.
        let (res, json) = get(&mut sender, "h", "/healthz", &[]).await;
        assert_eq!(res.status(), 200);
        assert_eq!(json["path"], "/healthz");
        assert_eq!(json["peer"], client_addr.to_string());
    }

    #[tokio::test]
    async fn reads_a_large_body_whole_and_reports_its_length_then_serves_the_next_request() {
        let addr = start("pod-web-1").await;
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        for size in [3 * 1024 * 1024 + 7, 1] {
            let req = Request::post("/upload")
                .header(HOST, "h")
                .body(Full::new(Bytes::from(vec![b'x'; size])))
                .unwrap();
            sender.ready().await.unwrap();
            let res = sender.send_request(req).await.unwrap();
            assert_eq!(res.status(), 200);
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(json["method"], "POST");
            assert_eq!(json["body_bytes"], size);
        }
        // Same connection (the 3 MiB body did not break keep-alive); no body, no field.
        let req = Request::get("/")
            .header(HOST, "h")
            .body(Full::default())
            .unwrap();
        sender.ready().await.unwrap();
        let res = sender.send_request(req).await.unwrap();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert!(json.get("body_bytes").is_none(), "{json}");
    }

    #[test]
    fn ipv4_mapped_addresses_are_shown_as_ipv4() {
        assert_eq!(
            canonical("::ffff:198.18.1.11".parse().unwrap()),
            "198.18.1.11".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            canonical("::1".parse().unwrap()),
            "::1".parse::<IpAddr>().unwrap()
        );
    }
}

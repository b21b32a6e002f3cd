//! WebSocket (RFC 6455) through the gateway: the HTTP/1.1 `Upgrade` handshake is forwarded to the
//! endpoint, the `101 Switching Protocols` comes back, and then frames flow both ways, over plain
//! HTTP and over TLS (ALPN `http/1.1`, SNI certificate). Real binary, real tokio-tungstenite client
//! and server; every step bounded by `support::STEP`.

mod support;
mod ws;

use futures::SinkExt;
use serde_json::{Value, json};
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use ws::{WsOrigin, connect, echo, next_message};

fn ws_objects(origin: &WsOrigin, http: &Origin, crt: &str, key: &str) -> Vec<Value> {
    let slice = |service: &str, ip: String, port: u16| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"namespace": "default", "name": format!("{service}-0"),
                            "labels": {"kubernetes.io/service-name": service}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
               "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}]})
    };
    let path = |p: &str, svc: &str| {
        json!({"path": p, "pathType": "Prefix",
               "backend": {"service": {"name": svc, "port": {"number": 80}}}})
    };
    vec![
        mk_class(),
        mk_service("chat"),
        mk_service("web"),
        slice("chat", origin.addr.ip().to_string(), origin.addr.port()),
        slice("web", http.addr.ip().to_string(), http.addr.port()),
        mk_tls_secret("ws-cert", crt, key),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               // Plain ws:// is tested too, so no redirect of the TLS host to https.
               "metadata": {"namespace": "default", "name": "chat",
                            "annotations": {"drawbridge.dev/ssl-redirect": "false"}},
               "spec": {"ingressClassName": "drawbridge",
                        "tls": [{"hosts": ["ws.test"], "secretName": "ws-cert"}],
                        "rules": [{"host": "ws.test", "http": {"paths": [
                            path("/chat", "chat"), path("/", "web")]}}]}}),
    ]
}

/// Text, binary (up to 256 KiB, several TCP segments and frames' worth) and empty messages
/// echo unchanged; a ping is answered; the close handshake completes.
async fn exchange_messages<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for i in 0..50 {
        echo(ws, Message::text(format!("hello {i}"))).await;
    }
    for size in [0usize, 1, 125, 126, 65_535, 65_536, 256 * 1024] {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        echo(ws, Message::binary(data)).await;
    }
    // Several messages in flight at once, answered in order.
    for i in 0..20 {
        ws.send(Message::text(format!("pipelined {i}")))
            .await
            .unwrap();
    }
    for i in 0..20 {
        assert_eq!(
            next_message(ws).await,
            Message::text(format!("pipelined {i}"))
        );
    }
    // Ping → pong (answered by the origin's tungstenite, carried through the gateway).
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(STEP, async {
        loop {
            match futures::StreamExt::next(ws).await {
                Some(Ok(Message::Pong(p))) => return p,
                Some(Ok(_)) => continue,
                other => panic!("no pong: {other:?}"),
            }
        }
    })
    .await
    .expect("pong timed out");
    assert_eq!(&pong[..], b"are you there");
    // Close handshake: our Close is answered with the origin's Close, then the stream ends.
    ws.close(None).await.unwrap();
    let end = tokio::time::timeout(STEP, async {
        loop {
            match futures::StreamExt::next(ws).await {
                Some(Ok(Message::Close(_))) | None => return true,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("error while closing: {e}"),
            }
        }
    })
    .await
    .expect("close handshake timed out");
    assert!(end);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http_and_tls() {
    let origin = WsOrigin::start("chat", "127.0.0.2").await;
    let http = Origin::start("web", "127.0.0.3").await;
    let ca = TestCa::new();
    let (crt, key) = ca.issue(&["ws.test"]);
    let gw = Gateway::start(&ws_objects(&origin, &http, &crt, &key)).await;

    // Plain HTTP/1.1 upgrade.
    let ok = eventually(STEP, || async {
        get(&gw, "ws.test", "/", &[]).await.origin() == Some("web")
    })
    .await;
    assert!(
        ok,
        "route for ws.test not served: {:?}",
        get(&gw, "ws.test", "/", &[]).await
    );
    let tcp = TcpStream::connect(gw.http).await.unwrap();
    let (mut socket, greeting) = connect("ws://ws.test/chat/room-1", tcp).await;
    assert_eq!(greeting["origin"], "chat", "{greeting}");
    assert_eq!(greeting["host"], "ws.test", "Host forwarded: {greeting}");
    assert_eq!(greeting["path"], "/chat/room-1");
    assert_eq!(greeting["xff"], "127.0.0.1", "{greeting}");
    assert_eq!(greeting["xfp"], "http", "{greeting}");
    exchange_messages(&mut socket).await;

    // TLS (SNI ws.test, certificate from the Secret, verified against the test CA).
    let tls = handshake(&gw, "ws.test", Some(ca.roots()), &[b"http/1.1"])
        .await
        .expect("TLS handshake");
    assert_eq!(tls.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(san_dns_names(&tls.leaf), ["ws.test"]);
    let (mut socket, greeting) = connect("wss://ws.test/chat/room-2", tls.stream).await;
    assert_eq!(greeting["origin"], "chat", "{greeting}");
    assert_eq!(greeting["xfp"], "https", "{greeting}");
    assert_eq!(greeting["path"], "/chat/room-2");
    exchange_messages(&mut socket).await;

    // Two sockets open at once, independent of each other and of plain requests.
    let mut a = connect(
        "ws://ws.test/chat/a",
        TcpStream::connect(gw.http).await.unwrap(),
    )
    .await
    .0;
    let mut b = connect(
        "ws://ws.test/chat/b",
        TcpStream::connect(gw.http).await.unwrap(),
    )
    .await
    .0;
    echo(&mut a, Message::text("to a")).await;
    assert_eq!(
        get(&gw, "ws.test", "/page", &[]).await.origin(),
        Some("web")
    );
    echo(&mut b, Message::text("to b")).await;
    echo(&mut a, Message::text("to a again")).await;
    assert_eq!(
        origin.upgrades.load(std::sync::atomic::Ordering::Relaxed),
        4,
        "one upgrade reached the origin per client socket"
    );

    // An upgrade to a host without a rule is answered 404 by the gateway, not switched.
    let tcp = TcpStream::connect(gw.http).await.unwrap();
    let req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        "ws://nowhere.test/chat",
    )
    .unwrap();
    match tokio::time::timeout(STEP, tokio_tungstenite::client_async(req, tcp))
        .await
        .expect("handshake timed out")
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 404)
        }
        other => panic!("expected 404, got {:?}", other.map(|(_, r)| r)),
    }
}

/// Control: the same exchange straight to the origin, without the gateway. If this passes and the
/// gateway test fails, the difference is the gateway's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_direct_to_origin_control() {
    let origin = WsOrigin::start("chat", "127.0.0.2").await;
    let tcp = TcpStream::connect(origin.addr).await.unwrap();
    let (mut socket, greeting) = connect("ws://ws.test/chat/direct", tcp).await;
    assert_eq!(greeting["origin"], "chat");
    exchange_messages(&mut socket).await;
}

/// An upgrading origin that does not wait: on accept it writes `101` and a 4-byte frame at once,
/// then echoes every byte after the request head. Its `101` is waiting on the gateway's upstream
/// socket before the gateway has even sent the request, the ordering of Pingora issue #946.
async fn eager_upgrade_origin(ip: &str) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let head = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                            Connection: Upgrade\r\n\
                            Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
                let _ = s.set_nodelay(true);
                if s.write_all(&[head.as_bytes(), b"\x81\x02hi"].concat())
                    .await
                    .is_err()
                {
                    return;
                }
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                let Some(end) = read_request_head(&mut s, &mut seen).await else {
                    return;
                };
                if s.write_all(&seen[end..]).await.is_err() {
                    return;
                }
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

/// Regression for Pingora issue #946 (cloudflare/pingora; fix proposed in PR #1016, applied in
/// `vendor/pingora-proxy`): when the upstream's `101` is read before the upgrade request's own
/// empty body end, Pingora 0.9.1 took that body end for the end of the tunnel and closed the
/// client's connection right after the `101`. With an origin that answers before it is asked
/// (`eager_upgrade_origin`), every one of `UPGRADES` upgrades, with the fast path's hand-over and
/// with `--http1-fast-path=false`, must deliver the frame sent after the `101` and then echo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upgrade_survives_its_101() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const UPGRADES: usize = 200;
    let (eager, _task) = eager_upgrade_origin("127.0.0.2").await;
    let http = Origin::start("web", "127.0.0.3").await;
    let objects = vec![
        mk_class(),
        mk_service("chat"),
        mk_service("web"),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"namespace": "default", "name": "chat-0",
                            "labels": {"kubernetes.io/service-name": "chat"}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": eager.port(), "protocol": "TCP"}],
               "endpoints": [{"addresses": ["127.0.0.2"], "conditions": {"ready": true}}]}),
    ]
    .into_iter()
    .chain(mk_slices("web", &[&http]))
    .chain([
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"namespace": "default", "name": "chat"},
        "spec": {"ingressClassName": "drawbridge", "rules": [{"host": "ws.test", "http": {"paths": [
            {"path": "/chat", "pathType": "Prefix",
             "backend": {"service": {"name": "chat", "port": {"number": 80}}}},
            {"path": "/", "pathType": "Prefix",
             "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}),
    ])
    .collect::<Vec<_>>();
    let request = "GET /chat HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\n\
                   Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Version: 13\r\n\r\n";
    for args in [&[][..], &["--http1-fast-path=false"][..]] {
        let gw = Gateway::start_with(&objects, args).await;
        let ok = eventually(STEP, || async {
            get(&gw, "ws.test", "/", &[]).await.origin() == Some("web")
        })
        .await;
        assert!(ok, "route for ws.test not served ({args:?})");
        let mut failed = Vec::new();
        for i in 0..UPGRADES {
            let exchange = async {
                let mut s = TcpStream::connect(gw.http).await.unwrap();
                s.write_all(request.as_bytes()).await.unwrap();
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                // The 101 head, the origin's 4-byte frame, then our 4 bytes echoed.
                let mut sent = false;
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return Err(String::from_utf8_lossy(&got).into_owned());
                    }
                    got.extend_from_slice(&buf[..n]);
                    if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        assert!(got.starts_with(b"HTTP/1.1 101"), "{got:?}");
                        let rest = &got[end + 4..];
                        if rest.len() >= 4 && !sent {
                            assert_eq!(&rest[..4], b"\x81\x02hi");
                            s.write_all(b"ping").await.unwrap();
                            sent = true;
                        }
                        if rest.len() >= 8 {
                            assert_eq!(&rest[4..8], b"ping");
                            return Ok(());
                        }
                    }
                }
            };
            match tokio::time::timeout(STEP, exchange).await {
                Ok(Ok(())) => {}
                Ok(Err(got)) => failed.push((i, got)),
                Err(_) => failed.push((i, "timed out".into())),
            }
        }
        assert!(
            failed.is_empty(),
            "{} of {UPGRADES} upgrades ended early ({args:?}); first: {:?}",
            failed.len(),
            failed[0]
        );
    }
}

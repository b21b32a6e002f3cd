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

//! WebSocket origin and client helpers for `websocket.rs` and `zero_drop.rs` (tokio-tungstenite,
//! RFC 6455). The origin greets every connection with what it received (origin name, Host,
//! X-Forwarded-For, X-Forwarded-Proto), then echoes every text and binary message.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

/// A WebSocket echo server on `ip:0`; aborted on drop.
pub struct WsOrigin {
    pub name: String,
    pub addr: SocketAddr,
    /// Upgrades accepted so far.
    pub upgrades: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl WsOrigin {
    pub async fn start(name: &str, ip: &str) -> WsOrigin {
        let listener = TcpListener::bind((ip.parse::<IpAddr>().unwrap(), 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let upgrades = Arc::new(AtomicUsize::new(0));
        let (name_owned, counter) = (name.to_string(), upgrades.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (name, counter) = (name_owned.clone(), counter.clone());
                tokio::spawn(async move {
                    let mut seen = json!({"origin": name});
                    // The handshake callback's error type is tungstenite's (large) response.
                    #[allow(clippy::result_large_err)]
                    let callback = |req: &Request, resp: Response| {
                        let h = |k: &str| {
                            req.headers()
                                .get(k)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string)
                        };
                        seen["host"] = json!(h("host"));
                        seen["xff"] = json!(h("x-forwarded-for"));
                        seen["xfp"] = json!(h("x-forwarded-proto"));
                        seen["path"] = json!(req.uri().path());
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await
                    else {
                        return;
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if ws.send(Message::text(seen.to_string())).await.is_err() {
                        return;
                    }
                    // Until the stream ends: tungstenite queues the pong to a ping and the reply
                    // to a Close itself, and flushes them on the next read.
                    while let Some(Ok(msg)) = ws.next().await {
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        WsOrigin {
            name: name.to_string(),
            addr,
            upgrades,
            task,
        }
    }
}

impl Drop for WsOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// WebSocket handshake over `stream` (plain TCP or TLS) for `url` (`ws://host/path` or
/// `wss://…`: the URL's host is sent as `Host`). Returns the socket and the origin's greeting.
pub async fn connect<S>(url: &str, stream: S) -> (WebSocketStream<S>, Value)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let req = url.into_client_request().unwrap();
    let (mut ws, resp) = tokio::time::timeout(
        super::support::STEP,
        tokio_tungstenite::client_async(req, stream),
    )
    .await
    .expect("WebSocket handshake timed out")
    .expect("WebSocket handshake failed");
    assert_eq!(resp.status().as_u16(), 101, "{resp:?}");
    let greeting = next_message(&mut ws).await;
    let greeting = serde_json::from_str(greeting.to_text().unwrap()).unwrap();
    (ws, greeting)
}

/// The next data message (bounded by `STEP`); panics on close, error or timeout.
pub async fn next_message<S>(ws: &mut WebSocketStream<S>) -> Message
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let msg = tokio::time::timeout(super::support::STEP, ws.next())
            .await
            .expect("WebSocket read timed out")
            .expect("WebSocket closed")
            .expect("WebSocket error");
        match msg {
            Message::Text(_) | Message::Binary(_) => return msg,
            Message::Close(frame) => panic!("WebSocket closed by peer: {frame:?}"),
            _ => continue,
        }
    }
}

/// Sends `msg` and expects the same message back.
pub async fn echo<S>(ws: &mut WebSocketStream<S>, msg: Message)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(super::support::STEP, ws.send(msg.clone()))
        .await
        .expect("WebSocket write timed out")
        .expect("WebSocket write failed");
    let got = next_message(ws).await;
    assert_eq!(got, msg, "echo differs");
}

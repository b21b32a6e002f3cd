//! `/readyz` is 503 until the first complete sync and 200 after; `/healthz` is 200 throughout.
//! The real binary in Kubernetes mode against the API double (tests/api-double), through a small
//! HTTP relay in the test that holds every EndpointSlice request back until the test opens it:
//! the other four kinds (Ingress, IngressClass, Service, TLS Secret) are listed and watched, the
//! first sync is incomplete for as long as the relay holds, and readiness must wait for it; once
//! ready, the listeners accept at once.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use drawbridge_api_double::ApiDouble;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use support::free_port;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::sync::watch;

/// Every network step is bounded by this.
const STEP: Duration = Duration::from_secs(5);

/// Relays HTTP/1.1 requests to `upstream` (one upstream connection per request; watch responses
/// stream through), holding each request whose path contains `/endpointslices` until `open` is
/// true. `held` counts the requests that had to wait.
async fn gate(
    upstream: SocketAddr,
    open: watch::Receiver<bool>,
    held: Arc<AtomicUsize>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (open, held) = (open.clone(), held.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (mut open, held) = (open.clone(), held.clone());
                    async move {
                        if req.uri().path().contains("/endpointslices") && !*open.borrow() {
                            held.fetch_add(1, Ordering::SeqCst);
                            let _ = open.wait_for(|o| *o).await;
                        }
                        let stream = TcpStream::connect(upstream).await.unwrap();
                        let (mut sender, conn) =
                            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                        tokio::spawn(conn);
                        sender.send_request(req).await
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// An HTTP/1.1 origin answering `{"origin": "web"}`.
async fn origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    let body = json!({"origin": "web"}).to_string();
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// `GET path` with `Host: host`: (status, body). `None` when the connection is refused.
async fn get(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, Vec<u8>)> {
    tokio::time::timeout(STEP, async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Some((status, body))
    })
    .await
    .expect("request timed out")
}

async fn probe(metrics: SocketAddr, path: &str) -> Option<u16> {
    get(metrics, "metrics", path)
        .await
        .map(|(status, _)| status)
}

fn objects(origin: SocketAddr) -> Vec<Value> {
    vec![
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
               "metadata": {"name": "drawbridge"}, "spec": {"controller": "drawbridge.dev/ingress-gateway"}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": "web"},
               "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}]}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"namespace": "default", "name": "web-0",
                            "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": origin.port(), "protocol": "TCP"}],
               "endpoints": [{"addresses": [origin.ip().to_string()], "conditions": {"ready": true}}]}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"namespace": "default", "name": "web"},
               "spec": {"ingressClassName": "drawbridge", "rules": [{"host": "ready.test", "http": {"paths": [
                   {"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "web", "port": {"name": "http"}}}}]}}]}}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_the_first_complete_sync_and_healthz_200_throughout() {
    let double = ApiDouble::start().await.expect("API double");
    let origin = origin().await;
    for object in objects(origin) {
        double.create(object);
    }
    let (open_tx, open_rx) = watch::channel(false);
    let held = Arc::new(AtomicUsize::new(0));
    let relay = gate(double.addr(), open_rx, held.clone()).await;

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        ApiDouble::kubeconfig_yaml_for(&format!("http://{relay}")),
    )
    .unwrap();
    let (http, https, metrics) = (free_port(), free_port(), free_port());
    let log = dir.path().join("gateway.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ingress-gateway"))
        .args([
            "--http-addr",
            &http.to_string(),
            "--https-addr",
            &https.to_string(),
            "--metrics-addr",
            &metrics.to_string(),
            "--threads",
            "2",
            "--upgrade-sock",
        ])
        .arg(dir.path().join("upgrade.sock"))
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start ingress-gateway");
    let gateway_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // Probes answer from the start; the EndpointSlice list is held, the other kinds are listed.
    let deadline = Instant::now() + Duration::from_secs(20);
    let listed = |resource: &str| {
        double
            .requests()
            .iter()
            .any(|r| r.verb == "list" && r.resource.as_deref() == Some(resource))
    };
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("gateway exited ({status}): {}", gateway_log());
        }
        let kinds = ["ingresses", "ingressclasses", "services", "secrets"];
        if probe(metrics, "/healthz").await == Some(200)
            && held.load(Ordering::SeqCst) > 0
            && kinds.iter().all(|k| listed(k))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gateway did not start listing (held {}): {}",
            held.load(Ordering::SeqCst),
            gateway_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !listed("endpointslices"),
        "the relay let an EndpointSlice list through"
    );

    // While the first sync is incomplete: not ready, alive.
    let hold_until = Instant::now() + Duration::from_secs(3);
    let mut polls = 0;
    while Instant::now() < hold_until {
        assert_eq!(
            probe(metrics, "/readyz").await,
            Some(503),
            "ready before the first complete sync"
        );
        assert_eq!(probe(metrics, "/healthz").await, Some(200));
        polls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(polls >= 10, "only {polls} polls while held");

    // Release: ready soon after, alive throughout, and the route is served with its endpoints
    // (the EndpointSlice was part of the sync that made it ready).
    let released = Instant::now();
    open_tx.send(true).unwrap();
    loop {
        let ready = probe(metrics, "/readyz").await;
        assert_eq!(probe(metrics, "/healthz").await, Some(200));
        if ready == Some(200) {
            break;
        }
        assert_eq!(ready, Some(503));
        assert!(
            released.elapsed() < Duration::from_secs(15),
            "not ready 15 s after the EndpointSlice list was released: {}",
            gateway_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "ready {:?} after the EndpointSlice list was released",
        released.elapsed()
    );
    assert!(listed("endpointslices"));
    // Ready means the listeners accept too (server.rs: a readiness gate opened once a connect
    // to each listener succeeds), so the first request after 200 is served.
    let (status, body) = get(http, "ready.test", "/")
        .await
        .expect("HTTP listener refused a connection after /readyz said 200");
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    assert_eq!((status, body["origin"].as_str()), (200, Some("web")));
    for _ in 0..5 {
        assert_eq!(probe(metrics, "/readyz").await, Some(200));
        assert_eq!(probe(metrics, "/healthz").await, Some(200));
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

//! ExternalName Services against the real binary: the name is resolved with the system resolver,
//! and when its answer changes, traffic moves to the new address within the re-resolve period
//! (`--external-name-refresh`), with nothing else changing.
//!
//! The answer comes from a hosts file: the gateway runs in a private mount namespace
//! (`unshare --mount`) with the test's file bind-mounted over `/etc/hosts`, so glibc's resolver
//! (`hosts: files ...`, which re-reads the file on every lookup) sees it and nothing else does; the
//! namespace, and with it the mount, ends with the process. No DNS server, no internet, nothing on
//! the machine is changed. Needs root (as the netns tests do).

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use support::free_port;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

/// The name the ExternalName Service points at (`.test`: reserved, never resolvable for real).
const NAME: &str = "ext-origin.drawbridge.test";
/// `--external-name-refresh`, in seconds.
const REFRESH_SECS: u64 = 2;
/// Every network step is bounded by this.
const STEP: Duration = Duration::from_secs(5);

/// An HTTP/1.1 origin on a given address answering `{"origin": name}`; counts connections.
struct Origin {
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn origin(name: &'static str, listener: TcpListener) -> Origin {
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| async move {
                    let body = json!({"origin": name}).to_string();
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Origin { accepted, task }
}

/// Two origins on 127.0.0.2 and 127.0.0.3 with the same port (an ExternalName backend keeps the
/// Service's port; only the address changes).
async fn origin_pair() -> (Origin, Origin, u16) {
    for _ in 0..50 {
        let a = TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = a.local_addr().unwrap().port();
        if let Ok(b) = TcpListener::bind(("127.0.0.3", port)).await {
            return (origin("first", a), origin("second", b), port);
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

/// `GET /` with `Host: host` through the gateway: (status, the answering origin's name).
async fn get_origin(http: SocketAddr, host: &str) -> (u16, Option<String>) {
    tokio::time::timeout(STEP, async {
        let stream = TcpStream::connect(http).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/")
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, body["origin"].as_str().map(str::to_string))
    })
    .await
    .expect("request through the gateway timed out")
}

fn write_hosts(path: &Path, ip: &str) {
    // In place (same inode): the bind mount follows the file's inode, not its name.
    std::fs::write(path, format!("127.0.0.1 localhost\n{ip} {NAME}\n")).unwrap();
}

/// Polls until the gateway answers `host` from origin `want`; returns how long that took.
async fn wait_for_origin(http: SocketAddr, host: &str, want: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut last = (0, None);
    while start.elapsed() < limit {
        last = get_origin(http, host).await;
        if last.1.as_deref() == Some(want) {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{host} not answered by {want} within {limit:?}; last answer {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn externalname_is_re_resolved_and_traffic_moves_within_the_refresh_period() {
    let (first, second, port) = origin_pair().await;
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    write_hosts(&hosts, "127.0.0.2");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let objects = vec![
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
               "metadata": {"name": "drawbridge"}, "spec": {"controller": "drawbridge.dev/ingress-gateway"}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": "ext"},
               "spec": {"type": "ExternalName", "externalName": NAME,
                        "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"namespace": "default", "name": "ext"},
               "spec": {"ingressClassName": "drawbridge", "rules": [{"host": "ext.test", "http": {"paths": [
                   {"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "ext", "port": {"number": port}}}}]}}]}}),
    ];
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    std::fs::write(
        manifests.join("objects.yaml"),
        serde_json::to_vec(&list).unwrap(),
    )
    .unwrap();

    let (http, https, metrics) = (free_port(), free_port(), free_port());
    let log = dir.path().join("gateway.log");
    let refresh = REFRESH_SECS.to_string();
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
        .arg(&hosts)
        .arg(env!("CARGO_BIN_EXE_ingress-gateway"))
        .arg("--manifests")
        .arg(&manifests)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args([
            "--http-addr",
            &http.to_string(),
            "--https-addr",
            &https.to_string(),
            "--metrics-addr",
            &metrics.to_string(),
            "--threads",
            "2",
            "--external-name-refresh",
            &refresh,
        ])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start unshare + ingress-gateway");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(http).await.is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "gateway exited ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "gateway did not listen on {http}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The name resolves (first lookup right after start) to the first origin.
    wait_for_origin(http, "ext.test", "first", Duration::from_secs(10)).await;
    for _ in 0..5 {
        assert_eq!(
            get_origin(http, "ext.test").await,
            (200, Some("first".to_string()))
        );
    }

    // The answer changes; nothing else does. Traffic moves within one refresh period (plus the
    // polling step and the lookup itself: 1 s of slack).
    write_hosts(&hosts, "127.0.0.3");
    let moved = wait_for_origin(
        http,
        "ext.test",
        "second",
        Duration::from_secs(REFRESH_SECS + 10),
    )
    .await;
    assert!(
        moved <= Duration::from_secs(REFRESH_SECS + 1),
        "traffic moved after {moved:?}, refresh period {REFRESH_SECS} s"
    );
    eprintln!("traffic moved {moved:?} after the hosts file changed (refresh {REFRESH_SECS} s)");
    // And stays there: every request goes to the new address.
    let before = first.accepted.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(
            get_origin(http, "ext.test").await,
            (200, Some("second".to_string()))
        );
    }
    assert_eq!(
        first.accepted.load(Ordering::SeqCst),
        before,
        "the old address still got connections"
    );

    assert!(
        second.accepted.load(Ordering::SeqCst) > 0,
        "the new address got no connection"
    );

    // The machine's own /etc/hosts never saw the name (the mount was private to the gateway).
    let machine = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    assert!(
        !machine.contains(NAME),
        "/etc/hosts outside the namespace changed"
    );
    let _ = child.start_kill();
    let _ = child.wait().await;
}

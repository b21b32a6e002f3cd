//! Process upgrade with Pingora's graceful upgrade (issue 3, "Zero-drop configuration changes":
//! "Process upgrades use Pingora's graceful upgrade (listener hand-over) with 0 failed requests").
//!
//! ```text
//!  load: 3× HTTP/1.1 keep-alive (new connection every 50 requests), 2× new connection per request,
//!        2× HTTP/2 over TLS (2 streams at a time on one connection until a GOAWAY; the HTTP/2
//!        fast path) ──► Host site.test ──► old gateway (A)
//!  B = same binary, same --http-addr/--https-addr/--upgrade-sock, --upgrade, own --metrics-addr
//!  B binds the upgrade socket ─► test sends SIGQUIT to A ─► A hands the listeners over, accepts
//!  5 s more beside B, then drains and exits 0 ─► load runs on against B alone
//! ```
//!
//! Asserted: no failed request (every answer `200` from an origin, no error on a fresh connection),
//! A and B each counted requests in `drawbridge_gateway_requests_total`, B served requests after
//! A exited, A exited with status 0 while the load ran, and the counts add up (A + B ≤ answered).
//! A keep-alive connection that A closes while idle at its shutdown is reopened (nothing was
//! answered on it); a request written into such a connection in the instant A closes it gets no
//! byte back and is retried once on a new connection, as RFC 9110 §9.2.2 allows for idempotent
//! requests (counted as `raced`, printed, bounded by one per keep-alive connection A held).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use support::{Origin, eventually, free_port, mk_class, mk_service, mk_slices, sample};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const HOST: &str = "site.test";
const SERIES: &str = r#"drawbridge_gateway_requests_total{ingress="default/site",host="site.test",method="GET",status="2xx"}"#;

/// One gateway process (killed on drop if still running).
struct Proc {
    child: Child,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn spawn(dir: &Path, name: &str, http: SocketAddr, https: SocketAddr, extra: &[&str]) -> Proc {
    let metrics = free_port();
    let log = dir.join(format!("{name}.log"));
    let state = dir.join(format!("state-{name}"));
    let child = Command::new(env!("CARGO_BIN_EXE_ingress-gateway"))
        .arg("--manifests")
        .arg(dir.join("manifests"))
        .arg("--state-dir")
        .arg(&state)
        .arg("--upgrade-sock")
        .arg(dir.join("upgrade.sock"))
        .args([
            "--http-addr",
            &http.to_string(),
            "--https-addr",
            &https.to_string(),
            "--threads",
            "2",
            "--metrics-addr",
            &metrics.to_string(),
            "--access-log=false",
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start ingress-gateway");
    Proc {
        child,
        metrics,
        log,
    }
}

/// `GET path` on a metrics endpoint; `None` when it does not answer.
async fn scrape(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    tokio::time::timeout(Duration::from_secs(2), async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", "metrics")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    })
    .await
    .ok()
    .flatten()
}

async fn served(addr: SocketAddr) -> Option<f64> {
    let (_, text) = scrape(addr, "/metrics").await?;
    Some(sample(&text, SERIES).unwrap_or(0.0))
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    raced: AtomicU64,
    /// Keep-alive connections found closed while idle (reopened; nothing was lost).
    closed_idle: AtomicU64,
    /// Keep-alive connections opened.
    keepalive_conns: AtomicU64,
    /// HTTP/2 answers, and HTTP/2 connections that stopped taking streams (GOAWAY).
    h2_ok: AtomicU64,
    h2_closed: AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut f = self.failures.lock().unwrap();
        if f.len() < 20 {
            f.push(what);
        }
    }

    fn check(&self, task: &str, status: u16, body: &[u8]) {
        let origin = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("origin").and_then(Value::as_str).map(str::to_string));
        match (status, origin) {
            (200, Some(o)) if o.starts_with("web-") => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            (status, _) => self.fail(format!(
                "{task}: status {status}, body {:?}",
                String::from_utf8_lossy(body)
            )),
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn open(http: SocketAddr) -> Result<Sender, String> {
    let stream = TcpStream::connect(http)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

fn request(close: bool) -> Request<Empty<Bytes>> {
    let mut r = Request::get("/load").header("host", HOST);
    if close {
        r = r.header("connection", "close");
    }
    r.body(Empty::new()).unwrap()
}

/// One request on `sender`: `Ok((status, body))`, or `Err((no_response, error))` where
/// `no_response` means the exchange failed before any response head arrived (connection closed
/// or reset under the request).
async fn send(sender: &mut Sender, close: bool) -> Result<(u16, Bytes), (bool, String)> {
    answer(sender.send_request(request(close))).await
}

/// The status and body of a sent request (either protocol), or `(no_response, error)`.
async fn answer(
    sent: impl std::future::Future<Output = hyper::Result<hyper::Response<hyper::body::Incoming>>>,
) -> Result<(u16, Bytes), (bool, String)> {
    let resp = tokio::time::timeout(Duration::from_secs(5), sent)
        .await
        .map_err(|_| (false, "timeout".to_string()))?
        .map_err(|e| (true, format!("{e} ({e:?})")))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| (false, format!("body: {e}")))?
        .to_bytes();
    Ok((status, body))
}

async fn keepalive_load(name: String, http: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    while !stop.load(Ordering::Relaxed) {
        let mut sender = match open(http).await {
            Ok(s) => s,
            Err(e) => {
                tally.fail(format!("{name}: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        tally.keepalive_conns.fetch_add(1, Ordering::Relaxed);
        for n in 0..50 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if sender.ready().await.is_err() {
                // Closed by the gateway while idle: nothing was sent, reopen.
                tally.closed_idle.fetch_add(1, Ordering::Relaxed);
                break;
            }
            match send(&mut sender, false).await {
                Ok((status, body)) => tally.check(&name, status, &body),
                Err((true, e)) if n > 0 => {
                    // Written into an idle keep-alive connection the gateway was closing (no
                    // response head came back): retry once on a fresh connection.
                    tally.raced.fetch_add(1, Ordering::Relaxed);
                    match open(http).await {
                        Ok(mut fresh) => match send(&mut fresh, true).await {
                            Ok((status, body)) => tally.check(&name, status, &body),
                            Err((_, e2)) => tally.fail(format!("{name}: retry after {e}: {e2}")),
                        },
                        Err(e2) => tally.fail(format!("{name}: retry after {e}: {e2}")),
                    }
                    break;
                }
                Err((_, e)) => {
                    tally.fail(format!("{name}: request {n}: {e}"));
                    break;
                }
            }
        }
    }
}

type H2Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

async fn open_h2(https: SocketAddr) -> Result<H2Sender, String> {
    let tls = support::handshake_at(https, HOST, None, &[b"h2"])
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls.stream),
    )
    .await
    .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// HTTP/2 load: 2 streams at a time on one connection for as long as it takes new streams; a new
/// connection once the gateway's GOAWAY ends it (`ready()` fails: nothing was sent). Started
/// before the new process exists, each task's first connection is to the old one and must end by
/// its GOAWAY. A stream that fails before its response head is retried once on a new connection and
/// counted as raced (RFC 9113 §8.7: a stream above the GOAWAY's last stream ID was not processed).
async fn h2_load(name: String, https: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let get = || {
        Request::get(format!("https://{HOST}/load"))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    async fn exchange(
        sender: &mut H2Sender,
        req: Request<Empty<Bytes>>,
    ) -> Result<(u16, Bytes), (bool, String)> {
        answer(sender.send_request(req)).await
    }
    while !stop.load(Ordering::Relaxed) {
        let mut sender = match open_h2(https).await {
            Ok(s) => s,
            Err(e) => {
                tally.fail(format!("{name}: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if sender.ready().await.is_err() {
                tally.h2_closed.fetch_add(1, Ordering::Relaxed);
                break;
            }
            let (mut a, mut b) = (sender.clone(), sender.clone());
            let (ra, rb) = tokio::join!(exchange(&mut a, get()), exchange(&mut b, get()));
            let mut broken = false;
            for r in [ra, rb] {
                match r {
                    Ok((status, body)) => {
                        tally.h2_ok.fetch_add(1, Ordering::Relaxed);
                        tally.check(&name, status, &body)
                    }
                    Err((true, e)) => {
                        tally.raced.fetch_add(1, Ordering::Relaxed);
                        eprintln!("{name}: stream failed before its response head, retried: {e}");
                        if !broken {
                            tally.h2_closed.fetch_add(1, Ordering::Relaxed);
                        }
                        broken = true;
                        let retried = match open_h2(https).await {
                            Ok(mut fresh) => exchange(&mut fresh, get()).await,
                            Err(e2) => Err((false, e2)),
                        };
                        match retried {
                            Ok((status, body)) => tally.check(&name, status, &body),
                            Err((_, e2)) => tally.fail(format!("{name}: retry after {e}: {e2}")),
                        }
                    }
                    Err((false, e)) => {
                        tally.fail(format!("{name}: {e}"));
                        broken = true;
                    }
                }
            }
            if broken {
                break;
            }
        }
    }
}

async fn new_connection_load(
    name: String,
    http: SocketAddr,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    while !stop.load(Ordering::Relaxed) {
        match open(http).await {
            Ok(mut sender) => match send(&mut sender, true).await {
                Ok((status, body)) => tally.check(&name, status, &body),
                Err((_, e)) => tally.fail(format!("{name}: {e}")),
            },
            Err(e) => {
                tally.fail(format!("{name}: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_hands_listeners_over_without_failed_requests() {
    let origins = [
        Origin::start("web-0", "127.0.0.1").await,
        Origin::start("web-1", "127.0.0.1").await,
    ];
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let mut objects = vec![
        mk_class(),
        mk_service("web"),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"namespace": "default", "name": "site"},
               "spec": {"ingressClassName": "drawbridge", "rules": [{"host": HOST, "http": {"paths": [
                   {"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "web", "port": {"name": "http"}}}}]}}]}}),
    ];
    objects.extend(mk_slices("web", &origins.iter().collect::<Vec<_>>()));
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    std::fs::write(
        manifests.join("objects.yaml"),
        serde_json::to_vec(&list).unwrap(),
    )
    .unwrap();

    let (http, https) = (free_port(), free_port());
    let mut old = spawn(dir.path(), "old", http, https, &[]);
    let ready = eventually(Duration::from_secs(20), || async {
        TcpStream::connect(http).await.is_ok()
            && scrape(old.metrics, "/readyz")
                .await
                .is_some_and(|(s, _)| s == 200)
    })
    .await;
    assert!(ready, "old gateway not ready");

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for i in 0..3 {
        tasks.push(tokio::spawn(keepalive_load(
            format!("keepalive-{i}"),
            http,
            stop.clone(),
            tally.clone(),
        )));
    }
    for i in 0..2 {
        tasks.push(tokio::spawn(new_connection_load(
            format!("new-conn-{i}"),
            http,
            stop.clone(),
            tally.clone(),
        )));
    }
    for i in 0..2 {
        tasks.push(tokio::spawn(h2_load(
            format!("h2-{i}"),
            https,
            stop.clone(),
            tally.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old_before = served(old.metrics).await.expect("old /metrics");
    assert!(old_before > 0.0, "load reached the old process");

    // The new process: takes the listeners over through the upgrade socket.
    let mut new = spawn(dir.path(), "new", http, https, &["--upgrade"]);
    let sock = dir.path().join("upgrade.sock");
    let waiting = eventually(Duration::from_secs(20), || async { sock.exists() }).await;
    assert!(
        waiting,
        "new process never bound the upgrade socket; log:\n{}",
        std::fs::read_to_string(&new.log).unwrap_or_default()
    );
    let pid = old.child.id().expect("old pid").to_string();
    let quit = std::process::Command::new("kill")
        .args(["-QUIT", &pid])
        .status()
        .expect("kill -QUIT");
    assert!(quit.success());
    let quit_at = Instant::now();

    // Watch the old process's count until it exits (its last answer stands).
    let mut old_last = old_before;
    let old_status = loop {
        if let Some(v) = served(old.metrics).await {
            old_last = v;
        }
        if let Ok(Some(status)) = old.child.try_wait() {
            break status;
        }
        assert!(
            quit_at.elapsed() < Duration::from_secs(40),
            "old process did not exit; log:\n{}",
            std::fs::read_to_string(&old.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let exit_after = quit_at.elapsed();
    let new_at_old_exit = served(new.metrics).await.expect("new /metrics");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let new_final = served(new.metrics).await.expect("new /metrics");
    let new_ready = scrape(new.metrics, "/readyz").await;
    assert!(
        new.child.try_wait().unwrap().is_none(),
        "new process still runs"
    );

    let (ok, failed, raced) = (
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.raced.load(Ordering::Relaxed),
    );
    let (closed_idle, conns) = (
        tally.closed_idle.load(Ordering::Relaxed),
        tally.keepalive_conns.load(Ordering::Relaxed),
    );
    let (h2_ok, h2_closed) = (
        tally.h2_ok.load(Ordering::Relaxed),
        tally.h2_closed.load(Ordering::Relaxed),
    );
    eprintln!(
        "upgrade: {ok} answered ({h2_ok} over HTTP/2), {failed} failed, {raced} raced (retried), \
         {closed_idle} idle keep-alive closes, {h2_closed} HTTP/2 connections closed by GOAWAY, \
         {conns} keep-alive connections; old served {old_last} (last scrape), new {new_final} \
         ({new_at_old_exit} when old exited); old exited {exit_after:?} after SIGQUIT"
    );
    let old_log = std::fs::read_to_string(&old.log).unwrap_or_default();
    let new_log = std::fs::read_to_string(&new.log).unwrap_or_default();
    assert_eq!(
        failed,
        0,
        "failures: {:?}\nold log:\n{old_log}\nnew log:\n{new_log}",
        tally.failures.lock().unwrap()
    );
    assert!(old_status.success(), "old exit status {old_status:?}");
    assert!(old_last > old_before, "old kept serving after SIGQUIT");
    assert!(
        new_at_old_exit > 0.0,
        "new served while the old one drained"
    );
    assert!(
        new_final > new_at_old_exit + 10.0,
        "new served alone after the old one exited ({new_at_old_exit} → {new_final})"
    );
    assert!(
        old_last + new_final <= ok as f64,
        "gateway counts ({old_last} + {new_final}) exceed answers seen ({ok})"
    );
    // Only the keep-alive connections A held at its shutdown can race: at most one per HTTP/1.1
    // keep-alive task, two per HTTP/2 task (its two streams in flight).
    assert!(
        raced <= 3 + 2 * 2,
        "{raced} raced (3 keep-alive tasks, 2 HTTP/2 tasks)"
    );
    assert_eq!(new_ready.map(|(s, _)| s), Some(200), "new /readyz");
    assert!(h2_ok > 1000, "HTTP/2 load ran ({h2_ok} answers)");
    // Each HTTP/2 task's connection to the old process ended by its GOAWAY, and the clients
    // moved on without a failed stream.
    assert!(
        h2_closed >= 2,
        "{h2_closed} HTTP/2 connections ended by GOAWAY"
    );
    // Pingora's own log lines: the sockets went over the upgrade socket, not a fresh bind.
    assert!(
        old_log.contains("listener sockets sent"),
        "old process sent its listeners:\n{old_log}"
    );
    assert!(
        new_log.contains("waiting for the listening sockets of the old process")
            && new_log.contains("Bootstrap done"),
        "new process received them:\n{new_log}"
    );
}

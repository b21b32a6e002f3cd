//! Test harness: in-test HTTP origins, the gateway binary on ephemeral loopback ports with a
//! manifest directory, a test CA (rcgen), and small HTTP / HTTPS clients (hyper, tokio-rustls).
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// Every network step of a test is bounded by this.
pub const STEP: Duration = Duration::from_secs(5);

// === Origin ===

/// An HTTP/1.1 origin on `ip:0` answering every request with JSON: its name, and the Host,
/// path, X-Forwarded-For and X-Forwarded-Proto it received (plus the other forwarding headers,
/// the request header names, every `Cookie` field, the body length and the method). It reads the whole body first.
/// `/sleep/<ms>` answers after `ms` milliseconds; `/gate/<n>` answers once `n` gate requests are
/// in flight at the same time (or after 10 s), so a burst of `n` needs `n` upstream connections
/// at once however slowly it arrives; a request with `x-test-hop: 1` gets a response
/// carrying hop-by-hop fields (`Connection: x-hop`, `X-Hop`, `Keep-Alive`).
pub struct Origin {
    pub name: String,
    pub addr: SocketAddr,
    /// TCP connections accepted so far (did anything arrive?).
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    pub async fn start(name: &str, ip: &str) -> Origin {
        let listener = TcpListener::bind((ip.parse::<IpAddr>().unwrap(), 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let name_owned: Arc<str> = name.into();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Gate requests in flight, and a wake-up for each arrival.
        let gate = Arc::new((AtomicUsize::new(0), tokio::sync::Notify::new()));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let name = name_owned.clone();
                let gate = gate.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let name = name.clone();
                        let gate = gate.clone();
                        async move {
                            let h = |k: &str| {
                                req.headers()
                                    .get(k)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_string)
                            };
                            let names: Vec<String> = req
                                .headers()
                                .keys()
                                .map(|k| k.as_str().to_string())
                                .collect();
                            let hop = h("x-test-hop").is_some();
                            let method = req.method().to_string();
                            let path = req.uri().path().to_string();
                            let mut body = json!({
                                "origin": &*name,
                                "host": h("host"),
                                "path": &path,
                                "xff": h("x-forwarded-for"),
                                "xfp": h("x-forwarded-proto"),
                                "xfh": h("x-forwarded-host"),
                                "xfport": h("x-forwarded-port"),
                                "xri": h("x-real-ip"),
                                "xrid": h("x-request-id"),
                                "method": method,
                                "headers": names,
                                "cookie": req.headers().get_all("cookie").iter()
                                    .filter_map(|v| v.to_str().ok()).collect::<Vec<_>>(),
                            });
                            let received =
                                req.into_body().collect().await.map(|b| b.to_bytes().len());
                            body["body_len"] = json!(received.ok());
                            if let Some(ms) =
                                path.strip_prefix("/sleep/").and_then(|m| m.parse().ok())
                            {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            if let Some(n) = path
                                .strip_prefix("/gate/")
                                .and_then(|n| n.parse::<usize>().ok())
                            {
                                let (in_flight, arrived) = &*gate;
                                in_flight.fetch_add(1, Ordering::SeqCst);
                                arrived.notify_waiters();
                                let _ = tokio::time::timeout(Duration::from_secs(10), async {
                                    loop {
                                        let next = arrived.notified();
                                        if in_flight.load(Ordering::SeqCst) >= n {
                                            break;
                                        }
                                        next.await;
                                    }
                                })
                                .await;
                                // Everyone through before the count drops for the next burst.
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                in_flight.fetch_sub(1, Ordering::SeqCst);
                            }
                            let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
                            if hop {
                                let headers = resp.headers_mut();
                                headers.insert("connection", "x-hop".parse().unwrap());
                                headers.insert("x-hop", "1".parse().unwrap());
                                headers.insert("keep-alive", "timeout=5".parse().unwrap());
                                headers.insert("x-end-to-end", "1".parse().unwrap());
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Origin {
            name: name.to_string(),
            addr,
            accepted,
            task,
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What an [`h2c_silent_endpoint`] saw of one request body.
#[derive(Debug)]
pub struct H2cBodySeen {
    /// Body bytes read.
    pub bytes: usize,
    /// The body ended by an error (the gateway reset the stream), not by END_STREAM.
    pub reset: bool,
}

/// An h2c (HTTP/2 without TLS) endpoint on `127.0.0.1:0` that never answers. With `read_body`
/// it reads each request body and reports what it saw when the body ends; without, it never
/// reads it (so its flow-control window stays closed once full). Runs until the handle is
/// aborted or the test's runtime ends (dropping the handle does not stop it).
pub async fn h2c_silent_endpoint(
    read_body: bool,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<H2cBodySeen>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let seen_tx = seen_tx.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen_tx = seen_tx.clone();
                    async move {
                        let mut body = req.into_body();
                        if read_body {
                            let mut bytes = 0;
                            let reset = loop {
                                match body.frame().await {
                                    Some(Ok(frame)) => {
                                        bytes += frame.data_ref().map_or(0, |d| d.len())
                                    }
                                    Some(Err(_)) => break true,
                                    None => break false,
                                }
                            };
                            let _ = seen_tx.send(H2cBodySeen { bytes, reset });
                        }
                        std::future::pending::<()>().await;
                        drop(body);
                        Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
                    }
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    (addr, seen_rx, task)
}

// === Gateway process ===

/// The `ingress-gateway` binary, killed on drop.
pub struct Gateway {
    pub http: SocketAddr,
    pub https: SocketAddr,
    /// `--metrics-addr`: /metrics, /healthz, /readyz.
    pub metrics: SocketAddr,
    pub manifests: PathBuf,
    pub state: PathBuf,
    /// The gateway's stderr (logs), captured when started with [`Gateway::start_with`].
    pub log: Option<PathBuf>,
    child: Child,
    _dir: tempfile::TempDir,
}

/// A loopback address with a port free at the time of the call (the listener is closed again).
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

impl Gateway {
    /// Writes `objects` to `manifests/objects.yaml` and starts the gateway on it; returns once the
    /// listeners accept connections (both are one Pingora service, started together; only the
    /// HTTP port is probed, since a bare TCP probe of the HTTPS port logs a handshake error).
    pub async fn start(objects: &[Value]) -> Gateway {
        Gateway::start_inner(objects, &[], false).await
    }

    /// Like [`Gateway::start`] with extra flags; stderr goes to [`Gateway::log`].
    pub async fn start_with(objects: &[Value], args: &[&str]) -> Gateway {
        Gateway::start_inner(objects, args, true).await
    }

    async fn start_inner(objects: &[Value], extra: &[&str], capture: bool) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let log = capture.then(|| dir.path().join("gateway.log"));
        let manifests = dir.path().join("manifests");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&manifests).unwrap();
        write_manifests(&manifests, objects);
        let (http, https, metrics) = (free_port(), free_port(), free_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_ingress-gateway"));
        if let Some(log) = &log {
            command.stderr(std::fs::File::create(log).unwrap());
        }
        let child = command
            .arg("--manifests")
            .arg(&manifests)
            .arg("--state-dir")
            .arg(&state)
            .args([
                "--http-addr",
                &http.to_string(),
                "--https-addr",
                &https.to_string(),
                "--threads",
                "2",
                "--metrics-addr",
                &metrics.to_string(),
            ])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start ingress-gateway");
        let gw = Gateway {
            http,
            https,
            metrics,
            manifests,
            state,
            log,
            child,
            _dir: dir,
        };
        // Both listeners: Pingora binds them one after the other, and a test's first TLS
        // handshake must not race the second bind.
        let deadline = Instant::now() + Duration::from_secs(20);
        for addr in [http, https] {
            while TcpStream::connect(addr).await.is_err() {
                assert!(
                    Instant::now() < deadline,
                    "gateway did not listen on {addr}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        gw
    }

    /// The gateway's process id (for /proc reads).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("gateway running")
    }

    /// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
    pub fn proc_status_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("{field} in /proc status"))
    }

    /// Replaces the manifests (atomically: temp file + rename).
    pub fn rewrite(&self, objects: &[Value]) {
        write_manifests(&self.manifests, objects);
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn write_manifests(dir: &Path, objects: &[Value]) {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    // JSON is YAML. The temp name is hidden, so the watcher never reads a half-written file.
    let tmp = dir.join(".objects.yaml.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&list).unwrap()).unwrap();
    std::fs::rename(&tmp, dir.join("objects.yaml")).unwrap();
}

// === Manifest builders ===

pub fn mk_class() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
           "metadata": {"name": "drawbridge"}, "spec": {"controller": "drawbridge.dev/ingress-gateway"}})
}

/// A Service with one TCP port 80 named `http` (targetPort `web`: the slice carries the real port).
pub fn mk_service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": name},
           "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}]}})
}

/// EndpointSlices of `service`, one per origin (origins listen on different ephemeral ports, and a
/// slice has one port list), each with port `http` and one ready endpoint.
pub fn mk_slices(service: &str, origins: &[&Origin]) -> Vec<Value> {
    origins
        .iter()
        .enumerate()
        .map(|(i, o)| {
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"namespace": "default", "name": format!("{service}-{i}"),
                                "labels": {"kubernetes.io/service-name": service}},
                   "addressType": "IPv4",
                   "ports": [{"name": "http", "port": o.addr.port(), "protocol": "TCP"}],
                   "endpoints": [{"addresses": [o.addr.ip().to_string()], "conditions": {"ready": true}}]})
        })
        .collect()
}

pub fn mk_tls_secret(name: &str, crt: &str, key: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
           "metadata": {"namespace": "default", "name": name},
           "stringData": {"tls.crt": crt, "tls.key": key}})
}

// === Test CA ===

pub struct TestCa {
    pub cert: rcgen::Certificate,
    params: CertificateParams,
    key: KeyPair,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "drawbridge test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, params, key }
    }

    /// A leaf for `hosts`: (certificate PEM, key PEM).
    pub fn issue(&self, hosts: &[&str]) -> (String, String) {
        let params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        roots
    }
}

// === Clients ===

/// What an origin reported, plus the status the gateway answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn origin(&self) -> Option<&str> {
        self.body.get("origin").and_then(Value::as_str)
    }
    pub fn field(&self, k: &str) -> Option<&str> {
        self.body.get(k).and_then(Value::as_str)
    }
}

async fn exchange<S>(stream: S, host: &str, path: &str, headers: &[(&str, &str)]) -> Answer
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    Answer { status, body }
}

/// `GET path` with `Host: host` over plain HTTP.
pub async fn get(gw: &Gateway, host: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    tokio::time::timeout(STEP, async {
        let stream = TcpStream::connect(gw.http).await.unwrap();
        exchange(stream, host, path, headers).await
    })
    .await
    .expect("HTTP request timed out")
}

/// The Prometheus text of `/metrics` (empty when it has none).
pub async fn metrics_text(gw: &Gateway) -> String {
    scrape(gw, "/metrics")
        .await
        .body
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// `GET path` on the metrics endpoint; the body is a JSON string holding the text.
pub async fn scrape(gw: &Gateway, path: &str) -> Answer {
    tokio::time::timeout(STEP, async {
        let stream = TcpStream::connect(gw.metrics).await.unwrap();
        exchange(stream, "metrics", path, &[]).await
    })
    .await
    .expect("metrics request timed out")
}

/// The value of the first sample line starting with `series` (name and labels, as exposed).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next()?.parse().ok())
}

/// The result of a TLS handshake: the server's leaf certificate, the ALPN protocol, and the stream.
pub struct Tls {
    pub leaf: CertificateDer<'static>,
    pub alpn: Option<Vec<u8>>,
    pub stream: tokio_rustls::client::TlsStream<TcpStream>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Handshake with SNI `sni`, verifying against `roots` (or accepting anything when `None`).
pub async fn handshake(
    gw: &Gateway,
    sni: &str,
    roots: Option<rustls::RootCertStore>,
    alpn: &[&[u8]],
) -> Result<Tls, std::io::Error> {
    handshake_at(gw.https, sni, roots, alpn).await
}

/// [`handshake`] with the TLS listener at `addr`.
pub async fn handshake_at(
    addr: SocketAddr,
    sni: &str,
    roots: Option<rustls::RootCertStore>,
    alpn: &[&[u8]],
) -> Result<Tls, std::io::Error> {
    connect_tls(addr, sni, client_config(roots, alpn)).await
}

/// [`handshake_at`] with TLS records of at most `max_fragment_size` bytes of plaintext (rustls'
/// `max_fragment_size`, at least 32) from the client, so that the gateway receives each HTTP/2
/// frame or HTTP/1.1 body piece over many records.
pub async fn handshake_small_records(
    addr: SocketAddr,
    sni: &str,
    roots: Option<rustls::RootCertStore>,
    alpn: &[&[u8]],
    max_fragment_size: usize,
) -> Result<Tls, std::io::Error> {
    let mut config = client_config(roots, alpn);
    config.max_fragment_size = Some(max_fragment_size);
    connect_tls(addr, sni, config).await
}

/// A client configuration verifying against `roots` (or accepting anything when `None`),
/// offering `alpn`.
fn client_config(roots: Option<rustls::RootCertStore>, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let mut config = match roots {
        Some(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny))
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

async fn connect_tls(
    addr: SocketAddr,
    sni: &str,
    config: rustls::ClientConfig,
) -> Result<Tls, std::io::Error> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio::time::timeout(STEP, async {
        let tcp = TcpStream::connect(addr).await?;
        // As real clients do (curl, browsers): without it, Nagle on the client and delayed ACKs
        // on the gateway stall every HTTP/2 flow-control window for ~40 ms.
        tcp.set_nodelay(true)?;
        let stream = connector.connect(name, tcp).await?;
        let (_, conn) = stream.get_ref();
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .expect("server sent a certificate");
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        Ok(Tls { leaf, alpn, stream })
    })
    .await
    .expect("TLS handshake timed out")
}

/// `GET path` over an established TLS stream (HTTP/1.1).
pub async fn get_tls(tls: Tls, host: &str, path: &str) -> Answer {
    tokio::time::timeout(STEP, exchange(tls.stream, host, path, &[]))
        .await
        .expect("HTTPS request timed out")
}

/// `GET https://{host}{path}` as HTTP/2 over an established TLS stream (ALPN `h2`).
pub async fn get_h2(tls: Tls, host: &str, path: &str) -> Answer {
    tokio::time::timeout(STEP, async {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(tls.stream),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("https://{host}{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    })
    .await
    .expect("HTTP/2 request timed out")
}

/// DNS names in the certificate's subjectAltName.
pub fn san_dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
    let mut out = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = name {
                out.push(d.to_string());
            }
        }
    }
    out
}

/// Accepts any server certificate (to look at the default one). Signatures are still checked.
#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Polls `check` every 50 ms until it returns `true` or `within` elapses.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// === Raw origins (exact response bytes) ===

/// An Ingress `service` routing `host` / (Prefix) to Service `service` port 80.
pub fn ingress_to(host: &str, service: &str) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
           "metadata": {"namespace": "default", "name": service},
           "spec": {"ingressClassName": "drawbridge",
                    "rules": [{"host": host, "http": {"paths": [
                        {"path": "/", "pathType": "Prefix",
                         "backend": {"service": {"name": service, "port": {"number": 80}}}}]}}]}})
}

/// An EndpointSlice for `service` with one endpoint at `addr`.
pub fn slice_at(service: &str, addr: SocketAddr) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"namespace": "default", "name": format!("{service}-0"),
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": addr.port(), "protocol": "TCP"}],
           "endpoints": [{"addresses": [addr.ip().to_string()], "conditions": {"ready": true}}]})
}

/// A gateway serving `raw.test` → `addr`.
pub async fn gateway_with_raw(addr: SocketAddr) -> Gateway {
    let objects = vec![
        mk_class(),
        mk_service("raw"),
        ingress_to("raw.test", "raw"),
        slice_at("raw", addr),
    ];
    Gateway::start_with(&objects, &[]).await
}

/// Reads from `s` into `buf` until `buf` holds a whole request head (up to the blank line) and
/// returns the head's length in bytes, or `None` when the peer closes or the read fails first.
/// For the raw test origins; bytes after the head stay in `buf`.
pub async fn read_request_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut tmp = [0u8; 16384];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        match s.read(&mut tmp).await {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&tmp[..k]),
        }
    }
}

/// A raw origin answering every request with `response` (written in pieces `split` bytes apart,
/// 2 ms between them), keep-alive unless the response closes. Counts connections.
pub async fn scripted_origin(
    response: &'static [u8],
    split: usize,
    close: bool,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    if read_request_head(&mut s, &mut buf).await.is_none() {
                        return;
                    }
                    buf.clear();
                    for piece in response.chunks(split) {
                        if s.write_all(piece).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    if close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Service `sink` (port 80 → named port `http`), its EndpointSlice with the one endpoint
/// `endpoint`, and Ingress `sink` routing `sink.test` to it with `annotations` (tests of
/// timeouts against endpoints that stall).
pub fn sink_objects(endpoint: SocketAddr, annotations: Value) -> Vec<Value> {
    vec![
        mk_class(),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": "sink"},
               "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}]}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"namespace": "default", "name": "sink-0",
                            "labels": {"kubernetes.io/service-name": "sink"}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": endpoint.port(), "protocol": "TCP"}],
               "endpoints": [{"addresses": [endpoint.ip().to_string()], "conditions": {"ready": true}}]}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"namespace": "default", "name": "sink", "annotations": annotations},
               "spec": {"ingressClassName": "drawbridge", "rules": [{"host": "sink.test", "http": {"paths": [
                   {"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "sink", "port": {"name": "http"}}}}]}}]}}),
    ]
}

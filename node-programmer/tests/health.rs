//! Real HTTP against the health servers on 127.0.0.1 (service-proxy.md §1.7, §1.8): the proxy
//! `/healthz` + `/livez` server and the per-Service healthCheckNodePort servers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use node_programmer::health::{
    ManualClock, ProxyHealth, ServiceHealth, ServiceHealthServers, serve, service_health_body,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// One parsed HTTP/1.1 response.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive HTTP/1.1 client connection.
struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        Ok(Client {
            stream: BufReader::new(TcpStream::connect(addr).await?),
        })
    }

    async fn request(&mut self, method: &str, path: &str) -> Answer {
        tokio::time::timeout(Duration::from_secs(5), self.request_inner(method, path))
            .await
            .expect("answer within 5 s")
    }

    async fn request_inner(&mut self, method: &str, path: &str) -> Answer {
        let request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        self.stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .expect("write");
        let mut line = String::new();
        self.stream.read_line(&mut line).await.expect("status line");
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line {line:?}"));
        let mut headers = vec![];
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).await.expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':').expect("header line");
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().expect("content-length"))
            .unwrap_or(0);
        let mut body = vec![0; if method == "HEAD" { 0 } else { length }];
        self.stream.read_exact(&mut body).await.expect("body");
        Answer {
            status,
            headers,
            body: String::from_utf8(body).expect("utf-8"),
        }
    }
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    Client::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
        .request("GET", path)
        .await
}

/// A port that was free a moment ago (bind :0, read, release).
fn free_port() -> u16 {
    StdListener::bind((LOOPBACK, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn svc(ns: &str, name: &str, port: u16, local: usize) -> ServiceHealth {
    ServiceHealth {
        namespace: ns.into(),
        name: name.into(),
        health_check_node_port: port,
        local_ready_endpoints: local,
    }
}

fn manual() -> (ProxyHealth, ManualClock) {
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let health = ProxyHealth::with_clock(Duration::from_secs(60), Arc::new(clock.clone()));
    (health, clock)
}

fn assert_json_headers(answer: &Answer) {
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
}

// === proxy /healthz and /livez ===

#[tokio::test]
async fn proxy_healthz_and_livez_follow_queued_updates_and_node_eligibility() {
    let (health, clock) = manual();
    let mut registry = prometheus_client::registry::Registry::default();
    health.register(&mut registry);
    let server = serve(SocketAddr::new(LOOPBACK, 0), health.clone())
        .await
        .expect("bind");
    let addr = server.local_addr();

    // Starting up: healthy, lastUpdated = currentTime.
    clock.advance(Duration::from_secs(5));
    let now = "2023-11-14 22:13:25 +0000 UTC m=+5.000000000";
    let answer = get(addr, "/healthz").await;
    assert_eq!(answer.status, 200);
    assert_json_headers(&answer);
    assert_eq!(
        answer.body,
        format!(
            "{{\"lastUpdated\": \"{now}\",\"currentTime\": \"{now}\", \"nodeEligible\": true}}"
        )
    );
    let answer = get(addr, "/livez?verbose=1").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body,
        format!("{{\"lastUpdated\": \"{now}\",\"currentTime\": \"{now}\"}}")
    );
    assert_eq!(get(addr, "/").await.status, 404);
    assert_eq!(get(addr, "/healthz/extra").await.status, 404);

    // A sync, then a change that stays unapplied for the whole healthTimeout.
    health.updated();
    clock.advance(Duration::from_secs(1));
    health.queued();
    clock.advance(Duration::from_secs(59));
    assert_eq!(get(addr, "/livez").await.status, 200, "59 s: not late yet");
    clock.advance(Duration::from_secs(1));
    assert_eq!(get(addr, "/healthz").await.status, 503);
    let answer = get(addr, "/livez").await;
    assert_eq!(answer.status, 503);
    assert_json_headers(&answer);
    assert_eq!(
        answer.body,
        "{\"lastUpdated\": \"2023-11-14 22:13:25 +0000 UTC m=+5.000000000\",\
         \"currentTime\": \"2023-11-14 22:14:26 +0000 UTC m=+66.000000000\"}"
    );

    // Applied again: healthy; then the node is being drained: only /healthz fails.
    health.updated();
    assert_eq!(get(addr, "/livez").await.status, 200);
    health.set_node_eligible(false);
    let answer = get(addr, "/healthz").await;
    assert_eq!(answer.status, 503);
    assert!(
        answer.body.ends_with("\"nodeEligible\": false}"),
        "{}",
        answer.body
    );
    assert_eq!(get(addr, "/livez").await.status, 200);

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    for line in [
        "kubeproxy_proxy_healthz_total{code=\"200\"} 1",
        "kubeproxy_proxy_healthz_total{code=\"503\"} 2",
        "kubeproxy_proxy_livez_total{code=\"200\"} 4",
        "kubeproxy_proxy_livez_total{code=\"503\"} 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }

    server.shutdown().await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "port closed after shutdown"
    );
}

#[tokio::test]
async fn proxy_healthz_bind_conflict_is_an_error() {
    let blocker = StdListener::bind((LOOPBACK, 0)).expect("bind");
    let addr = blocker.local_addr().expect("addr");
    let error = serve(addr, ProxyHealth::new(Duration::from_secs(60)))
        .await
        .expect_err("port is taken");
    assert!(error.to_string().contains(&addr.to_string()), "{error}");
}

// === healthCheckNodePort servers ===

#[tokio::test]
async fn service_health_answers_any_path_with_kube_proxys_body() {
    let (health, _clock) = manual();
    let mut servers = ServiceHealthServers::new(vec![LOOPBACK], health.clone());
    let (p1, p2) = (free_port(), free_port());
    let failures = servers
        .sync(&[svc("demo", "web", p1, 2), svc("demo", "empty", p2, 0)])
        .await;
    assert!(failures.is_empty(), "{failures:?}");

    let web = SocketAddr::new(LOOPBACK, p1);
    for path in ["/", "/healthz", "/any/thing?x=1"] {
        let answer = get(web, path).await;
        assert_eq!(answer.status, 200, "{path}");
        assert_json_headers(&answer);
        assert_eq!(answer.body, service_health_body("demo", "web", 2, true));
    }
    assert_eq!(
        get(web, "/").await.body,
        "{\n\t\"service\": {\n\t\t\"namespace\": \"demo\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
    );
    let mut client = Client::connect(web).await.expect("connect");
    let answer = client.request("POST", "/x").await;
    assert_eq!(answer.status, 200, "any method");

    let answer = get(SocketAddr::new(LOOPBACK, p2), "/").await;
    assert_eq!(answer.status, 503, "no local endpoints");
    assert_eq!(answer.body, service_health_body("demo", "empty", 0, true));
    servers.shutdown().await;
}

#[tokio::test]
async fn service_health_counts_change_live_and_removal_closes_the_port() {
    let (health, _clock) = manual();
    let mut servers = ServiceHealthServers::new(vec![LOOPBACK], health);
    let port = free_port();
    let addr = SocketAddr::new(LOOPBACK, port);
    assert!(
        servers
            .sync(&[svc("demo", "web", port, 1)])
            .await
            .is_empty()
    );

    // Keep one connection open across the syncs: a restarted server would close it.
    let mut client = Client::connect(addr).await.expect("connect");
    assert_eq!(client.request("GET", "/").await.status, 200);

    assert!(
        servers
            .sync(&[svc("demo", "web", port, 0)])
            .await
            .is_empty()
    );
    let answer = client.request("GET", "/").await;
    assert_eq!(
        answer.status, 503,
        "count 0 is visible on the same connection"
    );
    assert_eq!(answer.body, service_health_body("demo", "web", 0, true));

    assert!(
        servers
            .sync(&[svc("demo", "web", port, 3)])
            .await
            .is_empty()
    );
    let answer = client.request("GET", "/").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, service_health_body("demo", "web", 3, true));

    // The Service disappears: its port is closed when sync returns.
    assert!(servers.sync(&[]).await.is_empty());
    assert!(servers.listening().is_empty());
    let error = TcpStream::connect(addr)
        .await
        .expect_err("port closed after removal");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        client.stream.get_mut().read(&mut buf),
    )
    .await
    .expect("open connection closed within 5 s");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "connection closed: {read:?}"
    );
}

#[tokio::test]
async fn service_health_port_change_moves_the_server() {
    let (health, _clock) = manual();
    let mut servers = ServiceHealthServers::new(vec![LOOPBACK], health);
    let (old, new) = (free_port(), free_port());
    assert!(servers.sync(&[svc("demo", "web", old, 1)]).await.is_empty());
    assert_eq!(get(SocketAddr::new(LOOPBACK, old), "/").await.status, 200);
    assert!(servers.sync(&[svc("demo", "web", new, 1)]).await.is_empty());
    assert!(
        TcpStream::connect(SocketAddr::new(LOOPBACK, old))
            .await
            .is_err()
    );
    assert_eq!(get(SocketAddr::new(LOOPBACK, new), "/").await.status, 200);
    // The port is reusable at once by another Service (SO_REUSEADDR, closed synchronously).
    assert!(
        servers
            .sync(&[svc("demo", "web", new, 1), svc("demo", "other", old, 1)])
            .await
            .is_empty()
    );
    assert_eq!(
        get(SocketAddr::new(LOOPBACK, old), "/").await.body,
        service_health_body("demo", "other", 1, true)
    );
}

#[tokio::test]
async fn service_health_bind_conflict_is_reported_and_retried() {
    let (health, _clock) = manual();
    let mut servers = ServiceHealthServers::new(vec![LOOPBACK], health);
    let blocker = StdListener::bind((LOOPBACK, 0)).expect("bind");
    let taken = blocker.local_addr().expect("addr").port();
    let free = free_port();

    let failures = servers
        .sync(&[
            svc("demo", "blocked", taken, 1),
            svc("demo", "web", free, 1),
        ])
        .await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(
        (
            failures[0].namespace.as_str(),
            failures[0].name.as_str(),
            failures[0].port
        ),
        ("demo", "blocked", taken)
    );
    let message = failures[0].to_string();
    assert!(
        message.starts_with(&format!(
            "failed to start healthcheck \"demo/blocked\" on port {taken}"
        )),
        "{message}"
    );
    assert_eq!(get(SocketAddr::new(LOOPBACK, free), "/").await.status, 200);

    // Level-triggered: still failing while taken, opens once the port is free.
    let desired = [
        svc("demo", "blocked", taken, 1),
        svc("demo", "web", free, 1),
    ];
    assert_eq!(servers.sync(&desired).await.len(), 1);
    drop(blocker);
    assert!(servers.sync(&desired).await.is_empty());
    assert_eq!(
        get(SocketAddr::new(LOOPBACK, taken), "/").await.body,
        service_health_body("demo", "blocked", 1, true)
    );
}

#[tokio::test]
async fn service_health_reports_unhealthy_proxy() {
    let (health, clock) = manual();
    let mut servers = ServiceHealthServers::new(vec![LOOPBACK], health.clone());
    let port = free_port();
    assert!(
        servers
            .sync(&[svc("demo", "web", port, 4)])
            .await
            .is_empty()
    );
    health.queued();
    clock.advance(Duration::from_secs(60));
    let answer = get(SocketAddr::new(LOOPBACK, port), "/").await;
    assert_eq!(answer.status, 503, "local endpoints but proxy unhealthy");
    assert_eq!(answer.body, service_health_body("demo", "web", 4, false));
    // Node eligibility does not matter for healthCheckNodePort answers (§1.7).
    health.updated();
    health.set_node_eligible(false);
    assert_eq!(get(SocketAddr::new(LOOPBACK, port), "/").await.status, 200);
}

#[tokio::test]
async fn service_health_without_addresses_listens_dual_stack() {
    let (health, _clock) = manual();
    let mut servers = ServiceHealthServers::new(vec![], health);
    let port = free_port();
    assert!(
        servers
            .sync(&[svc("demo", "web", port, 1)])
            .await
            .is_empty()
    );
    let listening = servers.listening();
    let addrs = &listening[&("demo".to_string(), "web".to_string())];
    assert_eq!(addrs.len(), 1, "{addrs:?}");
    assert!(addrs[0].ip().is_unspecified(), "{addrs:?}");
    assert_eq!(get(SocketAddr::new(LOOPBACK, port), "/").await.status, 200);
    if addrs[0].is_ipv6() {
        let v6 = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), port);
        assert_eq!(get(v6, "/").await.status, 200, "IPv6 loopback too");
    }
    servers.shutdown().await;
    assert!(
        TcpStream::connect(SocketAddr::new(LOOPBACK, port))
            .await
            .is_err()
    );
}

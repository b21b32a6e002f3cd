//! TLS through the real binary with real handshakes: protocol versions (1.2 and 1.3 accepted,
//! 1.0 and 1.1 refused — checked with `openssl s_client`, whose ability to speak TLS 1.1 is
//! proven against `openssl s_server` first), ALPN (`h2`, `http/1.1`), `--default-tls-secret`
//! for unknown SNI and for a ClientHello without SNI, an exact-host certificate beating a
//! wildcard one, live certificate swaps (an open connection keeps working), and an unusable
//! Secret update keeping the last good certificate in force (reported with a
//! `CertificateInvalid` Event).

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use support::*;
use tokio::net::TcpStream;

fn der(pem: &str) -> Vec<u8> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("PEM")
        .to_vec()
}

fn objects(host_cert: Option<&(String, String)>, fallback: &(String, String)) -> Vec<Value> {
    let mut o = vec![
        mk_class(),
        mk_service("web"),
        mk_tls_secret("fallback", &fallback.0, &fallback.1),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"namespace": "default", "name": "site",
                            "annotations": {"drawbridge.dev/ssl-redirect": "false"}},
               "spec": {"ingressClassName": "drawbridge",
                        "tls": [{"hosts": ["swap.test"], "secretName": "swap-cert"}],
                        "rules": [{"host": "swap.test", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                            "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}),
    ];
    if let Some((crt, key)) = host_cert {
        o.push(mk_tls_secret("swap-cert", crt, key));
    }
    o
}

/// A rustls client limited to `versions`; returns (negotiated version, ALPN, leaf).
async fn handshake_with(
    addr: SocketAddr,
    sni: Option<&str>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
    roots: Option<rustls::RootCertStore>,
) -> std::io::Result<(
    rustls::ProtocolVersion,
    Option<Vec<u8>>,
    CertificateDer<'static>,
    tokio_rustls::client::TlsStream<TcpStream>,
)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap();
    let mut config = match roots {
        Some(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify))
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // An IP address as the server name: rustls sends no SNI.
    let name = match sni {
        Some(s) => ServerName::try_from(s.to_string()).unwrap(),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    tokio::time::timeout(STEP, async {
        let tcp = TcpStream::connect(addr).await?;
        let stream = connector.connect(name, tcp).await?;
        let (_, conn) = stream.get_ref();
        Ok((
            conn.protocol_version().expect("negotiated"),
            conn.alpn_protocol().map(<[u8]>::to_vec),
            conn.peer_certificates().expect("certificate")[0].clone(),
            stream,
        ))
    })
    .await
    .expect("handshake timed out")
}

#[derive(Debug)]
struct NoVerify;

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `openssl s_client` with one protocol version flag; `true` when the handshake completed.
async fn openssl_handshake(addr: SocketAddr, version_flag: &str) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr.to_string(),
                "-servername",
                "swap.test",
                version_flag,
                // OpenSSL 3 refuses TLS < 1.2 at its default security level; level 0 lets it try.
                "-cipher",
                "DEFAULT:@SECLEVEL=0",
                "-brief",
            ])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("openssl s_client timed out")
    .expect("openssl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text.contains("CONNECTION ESTABLISHED"), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_alpn_and_the_default_tls_secret() {
    let web = Origin::start("web", "127.0.0.34").await;
    let ca = TestCa::new();
    let host = ca.issue(&["swap.test"]);
    let fallback = ca.issue(&["fallback.test"]);
    // Exact beats wildcard: `exact.wild.test` has its own certificate beside `*.wild.test`.
    let exact = ca.issue(&["exact.wild.test"]);
    let wild = ca.issue(&["*.wild.test"]);
    let mut o = objects(Some(&host), &fallback);
    o.extend(mk_slices("web", &[&web]));
    o.push(mk_tls_secret("exact-cert", &exact.0, &exact.1));
    o.push(mk_tls_secret("wild-cert", &wild.0, &wild.1));
    o.push(json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
           "metadata": {"namespace": "default", "name": "wild"},
           "spec": {"ingressClassName": "drawbridge",
                    "tls": [{"hosts": ["*.wild.test"], "secretName": "wild-cert"},
                            {"hosts": ["exact.wild.test"], "secretName": "exact-cert"}],
                    "rules": [{"host": "*.wild.test", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                        "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}));
    let gw = Gateway::start_with(&o, &["--default-tls-secret", "default/fallback"]).await;
    for (sni, want) in [("exact.wild.test", &exact.0), ("any.wild.test", &wild.0)] {
        let t = handshake(&gw, sni, Some(ca.roots()), &[]).await.expect(sni);
        assert_eq!(t.leaf.to_vec(), der(want), "{sni}");
    }
    use rustls::version::{TLS12, TLS13};

    // TLS 1.3 and 1.2 each negotiate (verified chain), ALPN as offered.
    let (v, alpn, leaf, _) = handshake_with(
        gw.https,
        Some("swap.test"),
        &[&TLS13],
        &[b"h2", b"http/1.1"],
        Some(ca.roots()),
    )
    .await
    .expect("TLS 1.3");
    assert_eq!(
        (v, alpn.as_deref(), leaf.to_vec()),
        (
            rustls::ProtocolVersion::TLSv1_3,
            Some(&b"h2"[..]),
            der(&host.0)
        )
    );
    let (v, alpn, _, stream) = handshake_with(
        gw.https,
        Some("swap.test"),
        &[&TLS12],
        &[b"http/1.1"],
        Some(ca.roots()),
    )
    .await
    .expect("TLS 1.2");
    assert_eq!(
        (v, alpn.as_deref()),
        (rustls::ProtocolVersion::TLSv1_2, Some(&b"http/1.1"[..]))
    );
    let tls = Tls {
        leaf: CertificateDer::from(der(&host.0)),
        alpn,
        stream,
    };
    assert_eq!(
        get_tls(tls, "swap.test", "/v12").await.origin(),
        Some("web")
    );
    // No ALPN offered: HTTP/1.1 is served.
    let (_, alpn, _, stream) = handshake_with(
        gw.https,
        Some("swap.test"),
        &[&TLS13],
        &[],
        Some(ca.roots()),
    )
    .await
    .expect("no ALPN");
    assert_eq!(alpn, None);
    let tls = Tls {
        leaf: CertificateDer::from(der(&host.0)),
        alpn,
        stream,
    };
    assert_eq!(get_tls(tls, "swap.test", "/noalpn").await.status, 200);

    // TLS 1.1 and 1.0 refused. Control first: this openssl does complete TLS 1.1 with a server
    // that allows it, so a refusal below is the gateway's.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.pem"), &fallback.0).unwrap();
    std::fs::write(dir.path().join("k.pem"), &fallback.1).unwrap();
    let control_port = std::net::TcpListener::bind("127.0.0.34:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut control = tokio::process::Command::new("openssl")
        .args(["s_server", "-accept", &control_port.to_string(), "-cert"])
        .arg(dir.path().join("c.pem"))
        .arg("-key")
        .arg(dir.path().join("k.pem"))
        .args(["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0", "-quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl s_server");
    let listening = eventually(Duration::from_secs(5), || async {
        TcpStream::connect(control_port).await.is_ok()
    })
    .await;
    assert!(listening, "control s_server listening");
    let (ok, text) = openssl_handshake(control_port, "-tls1_1").await;
    assert!(
        ok,
        "openssl must be able to speak TLS 1.1 (control): {text}"
    );
    let _ = control.start_kill();
    let _ = control.wait().await;
    for flag in ["-tls1_1", "-tls1"] {
        let (ok, text) = openssl_handshake(gw.https, flag).await;
        assert!(!ok, "gateway accepted {flag}: {text}");
    }
    let (ok, text) = openssl_handshake(gw.https, "-tls1_2").await;
    assert!(ok, "TLS 1.2 with openssl: {text}");

    // Unknown SNI and no SNI at all: the --default-tls-secret certificate (verifies for its name).
    let (_, _, leaf, _) = handshake_with(
        gw.https,
        Some("fallback.test"),
        &[&TLS13],
        &[],
        Some(ca.roots()),
    )
    .await
    .expect("default certificate for unknown SNI");
    assert_eq!(leaf.to_vec(), der(&fallback.0));
    let (_, _, leaf, _) = handshake_with(gw.https, None, &[&TLS13, &TLS12], &[], None)
        .await
        .expect("no SNI");
    assert_eq!(
        leaf.to_vec(),
        der(&fallback.0),
        "no SNI: the default Secret"
    );
    // The default Secret is followed live.
    let fallback2 = ca.issue(&["fallback.test"]);
    let mut o = objects(Some(&host), &fallback2);
    o.extend(mk_slices("web", &[&web]));
    gw.rewrite(&o);
    let swapped = eventually(Duration::from_secs(5), || async {
        handshake_with(gw.https, Some("other.test"), &[&TLS13], &[], None)
            .await
            .is_ok_and(|(_, _, leaf, _)| leaf.to_vec() == der(&fallback2.0))
    })
    .await;
    assert!(swapped, "new default certificate served");
}

fn events(gw: &Gateway) -> Vec<Value> {
    std::fs::read_to_string(gw.state.join("events.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_swap_live_and_an_unusable_update_keeps_the_last_good_one() {
    let web = Origin::start("web", "127.0.0.35").await;
    let ca = TestCa::new();
    let fallback = ca.issue(&["fallback.test"]);
    let a = ca.issue(&["swap.test"]);
    let b = ca.issue(&["swap.test"]);
    let with = |cert: Option<&(String, String)>| {
        let mut o = objects(cert, &fallback);
        o.extend(mk_slices("web", &[&web]));
        o
    };
    let gw = Gateway::start(&with(Some(&a))).await;
    let served = || async {
        handshake(&gw, "swap.test", Some(ca.roots()), &[b"http/1.1"])
            .await
            .map(|t| t.leaf.to_vec())
            .unwrap_or_default()
    };
    assert_eq!(served().await, der(&a.0));
    // A connection opened with A stays usable across the swap.
    let open = handshake(&gw, "swap.test", Some(ca.roots()), &[b"http/1.1"])
        .await
        .unwrap();

    // Swap to B: new handshakes get B, no restart.
    gw.rewrite(&with(Some(&b)));
    assert!(
        eventually(Duration::from_secs(5), || async {
            served().await == der(&b.0)
        })
        .await
    );
    assert_eq!(
        get_tls(open, "swap.test", "/still-open").await.origin(),
        Some("web")
    );

    // B's certificate with another key (mismatched), then garbage: B stays in force, reported.
    let other_key = ca.issue(&["swap.test"]).1;
    for (what, broken) in [
        ("mismatched key", (b.0.clone(), other_key)),
        (
            "garbage PEM",
            ("not a certificate".to_string(), "not a key".to_string()),
        ),
    ] {
        gw.rewrite(&with(Some(&broken)));
        let reported = eventually(Duration::from_secs(5), || async {
            events(&gw).iter().any(|e| {
                e["reason"] == "CertificateInvalid"
                    && e["regarding"]["kind"] == "Secret"
                    && e["regarding"]["name"] == "swap-cert"
                    && e["note"].as_str().is_some_and(|n| {
                        n.contains("keep the last good certificate")
                            && n.contains(if what == "garbage PEM" {
                                "no certificate"
                            } else {
                                "unusable key"
                            })
                    })
            })
        })
        .await;
        assert!(reported, "{what}: {:#?}", events(&gw));
        for _ in 0..3 {
            assert_eq!(served().await, der(&b.0), "{what}: last good kept");
        }
        assert_eq!(
            get_tls(
                handshake(&gw, "swap.test", Some(ca.roots()), &[])
                    .await
                    .unwrap(),
                "swap.test",
                "/x"
            )
            .await
            .status,
            200
        );
    }

    // A valid certificate again: served.
    let c = ca.issue(&["swap.test"]);
    gw.rewrite(&with(Some(&c)));
    assert!(
        eventually(Duration::from_secs(5), || async {
            served().await == der(&c.0)
        })
        .await
    );

    // Secret deleted: the generated default certificate (no --default-tls-secret here), which
    // does not verify for swap.test.
    gw.rewrite(&with(None));
    let fell_back = eventually(Duration::from_secs(5), || async {
        handshake(&gw, "swap.test", Some(ca.roots()), &[])
            .await
            .is_err()
    })
    .await;
    assert!(fell_back, "deleted Secret: default certificate");
    let t = handshake(&gw, "swap.test", None, &[]).await.unwrap();
    assert_eq!(san_dns_names(&t.leaf), ["ingress-gateway.invalid"]);
}

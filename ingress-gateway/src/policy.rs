//! Per-Ingress traffic policy from `drawbridge.dev/*` annotations, and the upstream protocol of a
//! Service port (pure: no I/O).
//!
//! ```text
//!  Ingress.metadata.annotations ─► Policy::from_annotations ─► Arc<Policy> (one per Ingress)
//!  Service port appProtocol ──┐                                    │ shared by its Backends
//!  drawbridge.dev/backend-protocol ─► UpstreamProtocol::resolve ───┘
//! ```
//!
//! Defaults are ingress-nginx's (`proxy-connect-timeout` 5 s, `proxy-read-timeout` and
//! `proxy-send-timeout` 60 s, `proxy-body-size` 1m, `ssl-redirect` true, round robin), and the
//! value syntax is ingress-nginx's: timeouts in whole seconds, sizes as nginx sizes (`0` =
//! unlimited, `512`, `8k`, `8m`, `1g`, case-insensitive). An annotation whose value does not parse
//! makes the Ingress invalid ([`AnnotationError`]): it is reported and skipped like any other
//! malformed Ingress, never served with a silently different limit.

use std::collections::BTreeMap;
use std::time::Duration;

/// Annotation: `"false"` turns off the 308 redirect of plain HTTP to HTTPS for TLS hosts.
pub const SSL_REDIRECT: &str = "drawbridge.dev/ssl-redirect";
/// Annotation: seconds to establish an upstream TCP (and TLS) connection (default 5).
pub const PROXY_CONNECT_TIMEOUT: &str = "drawbridge.dev/proxy-connect-timeout";
/// Annotation: seconds between two reads from the upstream (default 60).
pub const PROXY_READ_TIMEOUT: &str = "drawbridge.dev/proxy-read-timeout";
/// Annotation: seconds between two writes to the upstream (default 60).
pub const PROXY_SEND_TIMEOUT: &str = "drawbridge.dev/proxy-send-timeout";
/// Annotation: largest request body (nginx size syntax, `0` = unlimited; default `1m`).
pub const PROXY_BODY_SIZE: &str = "drawbridge.dev/proxy-body-size";
/// Annotation: `round-robin` (default) or `least-request` (power of two choices).
pub const LOAD_BALANCE: &str = "drawbridge.dev/load-balance";
/// Annotation: upstream protocol `HTTP`, `HTTPS`, `H2C`, `GRPC` or `GRPCS` (overrides the
/// Service port's `appProtocol`).
pub const BACKEND_PROTOCOL: &str = "drawbridge.dev/backend-protocol";

/// ingress-nginx's `proxy-connect-timeout` default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// ingress-nginx's `proxy-read-timeout` default.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// ingress-nginx's `proxy-send-timeout` default.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// ingress-nginx's `proxy-body-size` default (nginx `client_max_body_size 1m`), in bytes.
pub const DEFAULT_BODY_LIMIT: u64 = 1024 * 1024;

/// An annotation value that does not parse. The Ingress is skipped and reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key}: invalid value {value:?} ({expected})")]
pub struct AnnotationError {
    /// The annotation key.
    pub key: &'static str,
    /// The value as written.
    pub value: String,
    /// What would have been accepted.
    pub expected: &'static str,
}

/// How a backend spreads requests over its endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoadBalance {
    /// Each endpoint in turn (ingress-nginx's default `round_robin`).
    #[default]
    RoundRobin,
    /// Power of two choices: of two endpoints drawn at random, the one with fewer requests in
    /// flight (Envoy's `LEAST_REQUEST`, Mitzenmacher 2001).
    LeastRequest,
}

/// The protocol spoken to the endpoints of a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over TCP, pooled keep-alive connections (default).
    #[default]
    Http1,
    /// HTTP/1.1 or HTTP/2 over TLS (ALPN), certificate not verified (ingress-nginx's default
    /// `proxy-ssl-verify off`: in-cluster endpoints rarely carry certificates for their IPs).
    Https,
    /// HTTP/2 with prior knowledge over TCP (h2c, RFC 9113 §3.3). gRPC without TLS uses this.
    H2c,
    /// HTTP/2 only over TLS (gRPC with TLS), certificate not verified.
    H2Tls,
}

impl UpstreamProtocol {
    /// The protocol for a Service port: the Ingress annotation [`BACKEND_PROTOCOL`] wins, else the
    /// port's `appProtocol` (KEP-3726 standard values `kubernetes.io/h2c`, `kubernetes.io/ws`,
    /// `kubernetes.io/wss`, and the IANA names `http`, `https`, `h2c`, `grpc`, `grpcs`), else
    /// HTTP/1.1. `grpc` means h2c (the gRPC convention for an `appProtocol` without TLS);
    /// unknown `appProtocol` values fall back to HTTP/1.1.
    pub fn resolve(annotation: Option<UpstreamProtocol>, app_protocol: Option<&str>) -> Self {
        if let Some(p) = annotation {
            return p;
        }
        match app_protocol.map(str::to_ascii_lowercase).as_deref() {
            Some("kubernetes.io/h2c" | "h2c" | "grpc") => UpstreamProtocol::H2c,
            Some("https" | "kubernetes.io/wss" | "wss") => UpstreamProtocol::Https,
            Some("grpcs") => UpstreamProtocol::H2Tls,
            _ => UpstreamProtocol::Http1,
        }
    }

    /// Parses the [`BACKEND_PROTOCOL`] annotation (ingress-nginx's values, case-insensitive).
    fn from_annotation(value: &str) -> Option<Self> {
        match value.trim().to_ascii_uppercase().as_str() {
            "HTTP" => Some(UpstreamProtocol::Http1),
            "HTTPS" => Some(UpstreamProtocol::Https),
            "H2C" | "GRPC" => Some(UpstreamProtocol::H2c),
            "GRPCS" => Some(UpstreamProtocol::H2Tls),
            _ => None,
        }
    }

    /// Whether the connection is TLS.
    pub fn tls(self) -> bool {
        matches!(self, UpstreamProtocol::Https | UpstreamProtocol::H2Tls)
    }
}

/// Traffic settings of one Ingress, shared by all its backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Upstream connect timeout (TCP + TLS handshake).
    pub connect_timeout: Duration,
    /// Longest wait for the next read from the upstream (nginx `proxy_read_timeout`).
    pub read_timeout: Duration,
    /// Longest wait for the next write to the upstream (nginx `proxy_send_timeout`).
    pub send_timeout: Duration,
    /// Largest accepted request body in bytes; `None` = unlimited. Larger bodies get 413.
    pub body_limit: Option<u64>,
    /// Redirect plain-HTTP requests for TLS hosts to HTTPS (308).
    pub ssl_redirect: bool,
    /// Endpoint selection.
    pub load_balance: LoadBalance,
    /// [`BACKEND_PROTOCOL`], when set: overrides every Service port's `appProtocol`.
    pub backend_protocol: Option<UpstreamProtocol>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            body_limit: Some(DEFAULT_BODY_LIMIT),
            ssl_redirect: true,
            load_balance: LoadBalance::RoundRobin,
            backend_protocol: None,
        }
    }
}

impl Policy {
    /// The policy an Ingress's annotations ask for. Unknown annotations are ignored; a known one
    /// with a bad value is an error (the whole Ingress is skipped and reported).
    pub fn from_annotations(
        annotations: Option<&BTreeMap<String, String>>,
    ) -> Result<Self, AnnotationError> {
        let mut policy = Policy::default();
        let Some(a) = annotations else {
            return Ok(policy);
        };
        let bad = |key, value: &str, expected| AnnotationError {
            key,
            value: value.to_string(),
            expected,
        };
        if let Some(v) = a.get(SSL_REDIRECT) {
            policy.ssl_redirect = match v.trim() {
                "true" => true,
                "false" => false,
                _ => return Err(bad(SSL_REDIRECT, v, "\"true\" or \"false\"")),
            };
        }
        for (key, field) in [
            (PROXY_CONNECT_TIMEOUT, &mut policy.connect_timeout),
            (PROXY_READ_TIMEOUT, &mut policy.read_timeout),
            (PROXY_SEND_TIMEOUT, &mut policy.send_timeout),
        ] {
            if let Some(v) = a.get(key) {
                *field =
                    parse_seconds(v).ok_or_else(|| bad(key, v, "whole seconds, at least 1"))?;
            }
        }
        if let Some(v) = a.get(PROXY_BODY_SIZE) {
            let size = parse_size(v).ok_or_else(|| {
                bad(
                    PROXY_BODY_SIZE,
                    v,
                    "an nginx size: 0 (unlimited), 512, 8k, 8m, 1g",
                )
            })?;
            policy.body_limit = (size > 0).then_some(size);
        }
        if let Some(v) = a.get(LOAD_BALANCE) {
            policy.load_balance = match v.trim() {
                "round-robin" | "round_robin" => LoadBalance::RoundRobin,
                "least-request" | "least_request" => LoadBalance::LeastRequest,
                _ => return Err(bad(LOAD_BALANCE, v, "round-robin or least-request")),
            };
        }
        if let Some(v) = a.get(BACKEND_PROTOCOL) {
            policy.backend_protocol = Some(
                UpstreamProtocol::from_annotation(v)
                    .ok_or_else(|| bad(BACKEND_PROTOCOL, v, "HTTP, HTTPS, H2C, GRPC or GRPCS"))?,
            );
        }
        Ok(policy)
    }
}

/// Whole seconds, `1`..=`86400` (ingress-nginx accepts bare integers; a `s` suffix is tolerated).
fn parse_seconds(v: &str) -> Option<Duration> {
    let v = v.trim();
    let n: u64 = v.strip_suffix('s').unwrap_or(v).parse().ok()?;
    (1..=86_400).contains(&n).then(|| Duration::from_secs(n))
}

/// An nginx size (`client_max_body_size` syntax): bytes, or `k`/`m`/`g` (×1024ⁿ),
/// case-insensitive. `0` means unlimited.
pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let (digits, unit) = match v.as_bytes().last()? {
        b'k' | b'K' => (&v[..v.len() - 1], 1u64 << 10),
        b'm' | b'M' => (&v[..v.len() - 1], 1 << 20),
        b'g' | b'G' => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(pairs: &[(&str, &str)]) -> Result<Policy, AnnotationError> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Policy::from_annotations(Some(&map))
    }

    #[test]
    fn defaults_are_ingress_nginx_defaults() {
        let p = Policy::from_annotations(None).unwrap();
        assert_eq!(p.connect_timeout, Duration::from_secs(5));
        assert_eq!(p.read_timeout, Duration::from_secs(60));
        assert_eq!(p.send_timeout, Duration::from_secs(60));
        assert_eq!(p.body_limit, Some(1 << 20));
        assert!(p.ssl_redirect);
        assert_eq!(p.load_balance, LoadBalance::RoundRobin);
        assert_eq!(policy(&[("other/x", "y")]).unwrap(), p);
    }

    #[test]
    fn annotations_override() {
        let p = policy(&[
            (SSL_REDIRECT, "false"),
            (PROXY_CONNECT_TIMEOUT, "2"),
            (PROXY_READ_TIMEOUT, "120"),
            (PROXY_SEND_TIMEOUT, "30s"),
            (PROXY_BODY_SIZE, "8m"),
            (LOAD_BALANCE, "least-request"),
            (BACKEND_PROTOCOL, "grpc"),
        ])
        .unwrap();
        assert!(!p.ssl_redirect);
        assert_eq!(p.connect_timeout, Duration::from_secs(2));
        assert_eq!(p.read_timeout, Duration::from_secs(120));
        assert_eq!(p.send_timeout, Duration::from_secs(30));
        assert_eq!(p.body_limit, Some(8 << 20));
        assert_eq!(p.load_balance, LoadBalance::LeastRequest);
        assert_eq!(p.backend_protocol, Some(UpstreamProtocol::H2c));
        assert_eq!(policy(&[(PROXY_BODY_SIZE, "0")]).unwrap().body_limit, None);
    }

    #[test]
    fn sizes_in_nginx_syntax() {
        #[rustfmt::skip]
        let rows: &[(&str, Option<u64>)] = &[
            ("0", Some(0)), ("512", Some(512)), ("8k", Some(8192)), ("8K", Some(8192)),
            ("8m", Some(8 << 20)), ("1g", Some(1 << 30)), (" 2m ", Some(2 << 20)),
            ("", None), ("m", None), ("1.5m", None), ("-1", None), ("8mb", None), ("1t", None),
            ("99999999999999999999g", None),
        ];
        for (v, want) in rows {
            assert_eq!(parse_size(v), *want, "{v:?}");
        }
    }

    #[test]
    fn bad_values_are_errors() {
        for (k, v) in [
            (SSL_REDIRECT, "yes"),
            (PROXY_CONNECT_TIMEOUT, "0"),
            (PROXY_READ_TIMEOUT, "1m"),
            (PROXY_SEND_TIMEOUT, ""),
            (PROXY_BODY_SIZE, "lots"),
            (LOAD_BALANCE, "ewma"),
            (BACKEND_PROTOCOL, "FCGI"),
        ] {
            let e = policy(&[(k, v)]).unwrap_err();
            assert_eq!((e.key, e.value.as_str()), (k, v));
        }
    }

    #[test]
    fn upstream_protocol_resolution() {
        use UpstreamProtocol::*;
        #[rustfmt::skip]
        let rows: &[(Option<UpstreamProtocol>, Option<&str>, UpstreamProtocol)] = &[
            (None, None, Http1),
            (None, Some("http"), Http1),
            (None, Some("kubernetes.io/ws"), Http1),
            (None, Some("kubernetes.io/h2c"), H2c),
            (None, Some("grpc"), H2c),
            (None, Some("GRPC"), H2c),
            (None, Some("https"), Https),
            (None, Some("kubernetes.io/wss"), Https),
            (None, Some("grpcs"), H2Tls),
            (None, Some("example.com/custom"), Http1),
            (Some(Http1), Some("kubernetes.io/h2c"), Http1),
            (Some(H2c), None, H2c),
        ];
        for (annotation, app, want) in rows {
            assert_eq!(
                UpstreamProtocol::resolve(*annotation, *app),
                *want,
                "{annotation:?} {app:?}"
            );
        }
    }
}

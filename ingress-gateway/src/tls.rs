//! Certificates by SNI: a store built from `kubernetes.io/tls` Secrets, and the rustls resolver the
//! HTTPS listener asks on every handshake.
//!
//! ```text
//!  config::TlsBinding (host → Secret) ─┐
//!  Secrets (tls.crt / tls.key PEM) ────┴─► CertStore::build ─► ArcSwap<CertStore> ─► CertResolver::resolve(SNI)
//!                                                                                    exact host > *.wildcard > default
//! ```
//!
//! The default certificate answers an unknown SNI or a ClientHello without SNI ("TLS will not work
//! on the default rule"): the `--default-tls-secret` Secret when it loads (ingress-nginx's
//! `--default-ssl-certificate`), else a self-signed one generated at start (rcgen). Pingora's
//! rustls listener negotiates TLS 1.2 and 1.3 only.
//!
//! Last good certificate: when a Secret that loaded before turns unusable (malformed PEM, a key
//! that does not match the certificate), the certificate it had stays in force for its hosts and
//! the error is reported ([`Error::InvalidSecret`] with `last_good_kept`); ingress-nginx likewise
//! keeps serving the certificate it has until a valid one arrives. A deleted Secret is not
//! "unusable": its hosts fall back to the default certificate.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::Secret;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{ObjectRef, TlsBinding};

/// Why a certificate could not be loaded. A bad Secret is skipped (its hosts get the default
/// certificate) and retried when anything changes; only the `DefaultCertificate*` errors (start-up)
/// are fatal.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Secret named by `spec.tls[].secretName` does not exist (or is not `kubernetes.io/tls`).
    #[error("Secret {namespace}/{name} not found (or not of type kubernetes.io/tls)")]
    SecretNotFound {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// The certificate chain or key in the Secret is unusable.
    #[error("Secret {namespace}/{name}: {source}")]
    InvalidSecret {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Why.
        #[source]
        source: PemError,
        /// The certificate this Secret had in the previous store stays in force.
        last_good_kept: bool,
    },
    /// The self-signed default certificate could not be generated.
    #[error("cannot generate the default certificate")]
    DefaultCertificate(#[source] rcgen::Error),
    /// rustls refused the generated default certificate's key.
    #[error("cannot load the default certificate")]
    DefaultCertificateKey(#[source] rustls::Error),
}

/// Why PEM material does not make a certificate.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// `tls.crt` or `tls.key` is missing from the Secret.
    #[error("missing data key {0}")]
    MissingKey(&'static str),
    /// The PEM text does not parse.
    #[error("malformed PEM")]
    Malformed(#[source] std::io::Error),
    /// `tls.crt` holds no certificate.
    #[error("tls.crt holds no certificate")]
    NoCertificate,
    /// `tls.key` holds no private key.
    #[error("tls.key holds no private key")]
    NoPrivateKey,
    /// The key is of an unsupported type or does not belong to the certificate.
    #[error("unusable key")]
    InvalidKey(#[source] rustls::Error),
}

impl Error {
    /// What happens to the hosts of the Secret, for logs and Events: `"its hosts keep the last
    /// good certificate"` or `"its hosts get the default certificate"`.
    pub fn consequence(&self) -> &'static str {
        match self {
            Error::InvalidSecret {
                last_good_kept: true,
                ..
            } => "its hosts keep the last good certificate",
            _ => "its hosts get the default certificate",
        }
    }
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds a rustls [`CertifiedKey`] from PEM: a chain (leaf first) and a PKCS#8, PKCS#1 or SEC1 key.
/// Checks that the key matches the leaf certificate.
pub fn certified_key_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, PemError> {
    let chain = rustls_pemfile::certs(&mut &*cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(PemError::Malformed)?;
    if chain.is_empty() {
        return Err(PemError::NoCertificate);
    }
    let key = rustls_pemfile::private_key(&mut &*key_pem)
        .map_err(PemError::Malformed)?
        .ok_or(PemError::NoPrivateKey)?;
    CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
        .map_err(PemError::InvalidKey)
}

/// The self-signed certificate served for unknown SNI (`CN`/SAN `ingress-gateway.invalid`).
pub fn default_certificate() -> Result<CertifiedKey> {
    let generated = rcgen::generate_simple_self_signed(vec!["ingress-gateway.invalid".to_string()])
        .map_err(Error::DefaultCertificate)?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
    let chain = vec![generated.cert.der().clone()];
    CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
        .map_err(Error::DefaultCertificateKey)
}

fn secret_data<'a>(secret: &'a Secret, key: &'static str) -> Result<&'a [u8], PemError> {
    // `stringData` wins over `data`, as the API server merges it on write; manifests may use either.
    if let Some(s) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
        return Ok(s.as_bytes());
    }
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.as_slice())
        .ok_or(PemError::MissingKey(key))
}

/// `notAfter` of the leaf certificate (Unix seconds), if it parses.
pub fn not_after(key: &CertifiedKey) -> Option<i64> {
    let leaf = key.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

// === impl CertStore ===

/// Certificates by TLS host. Immutable once built; `discovery` publishes a new one on every change.
#[derive(Debug, Default)]
pub struct CertStore {
    /// Exact host (lower-case) → certificate.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Wildcard suffix (`*.foo.com` stored as `foo.com`) → certificate.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// Every Secret that loaded (or kept its last good certificate), once, in binding order (for
    /// expiry metrics, checks, and the next build's last good certificates).
    loaded: Vec<(ObjectRef, Arc<CertifiedKey>)>,
    /// The `--default-tls-secret` certificate, when it loaded (else the generated one is used).
    default: Option<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Builds the store for `bindings` (first binding of a host wins) from `secrets`, with no
    /// previous store and no default Secret. See [`CertStore::rebuild`].
    pub fn build(bindings: &[TlsBinding], secrets: &[Arc<Secret>]) -> (CertStore, Vec<Error>) {
        CertStore::rebuild(bindings, secrets, None, &CertStore::default())
    }

    /// Builds the store for `bindings` (first binding of a host wins) and the default Secret
    /// (`--default-tls-secret`) from `secrets`. Each Secret is parsed once, however many hosts it
    /// serves. Missing or unusable Secrets are returned as errors: a missing one's hosts fall
    /// back to the default certificate; an unusable one keeps the certificate it had in
    /// `previous` (the store in force) when it had one, else its hosts fall back too.
    pub fn rebuild(
        bindings: &[TlsBinding],
        secrets: &[Arc<Secret>],
        default_secret: Option<&ObjectRef>,
        previous: &CertStore,
    ) -> (CertStore, Vec<Error>) {
        let by_key: HashMap<(&str, &str), &Secret> = secrets
            .iter()
            .filter_map(|s| {
                Some((
                    (
                        s.metadata.namespace.as_deref()?,
                        s.metadata.name.as_deref()?,
                    ),
                    &**s,
                ))
            })
            .collect();
        let mut built: HashMap<&ObjectRef, Option<Arc<CertifiedKey>>> = HashMap::new();
        let mut errors = Vec::new();
        let mut store = CertStore::default();
        let mut load = |secret_ref: &ObjectRef, store: &mut CertStore| {
            let (namespace, name) = secret_ref;
            let Some(secret) = by_key.get(&(namespace.as_str(), name.as_str())) else {
                errors.push(Error::SecretNotFound {
                    namespace: namespace.clone(),
                    name: name.clone(),
                });
                return None;
            };
            let pem = secret_data(secret, "tls.crt")
                .and_then(|crt| Ok((crt, secret_data(secret, "tls.key")?)));
            let (key, error) = match pem.and_then(|(crt, key)| certified_key_from_pem(crt, key)) {
                Ok(key) => (Some(Arc::new(key)), None),
                Err(source) => {
                    let last_good = previous
                        .loaded
                        .iter()
                        .find(|(r, _)| r == secret_ref)
                        .map(|(_, k)| k.clone());
                    let error = Error::InvalidSecret {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        source,
                        last_good_kept: last_good.is_some(),
                    };
                    (last_good, Some(error))
                }
            };
            errors.extend(error);
            if let Some(key) = &key {
                store.loaded.push((secret_ref.clone(), key.clone()));
            }
            key
        };
        if let Some(default_secret) = default_secret {
            let key = load(default_secret, &mut store);
            built.insert(default_secret, key.clone());
            store.default = key;
        }
        for binding in bindings {
            let key = match built.get(&binding.secret) {
                Some(key) => key.clone(),
                None => {
                    let key = load(&binding.secret, &mut store);
                    built.insert(&binding.secret, key.clone());
                    key
                }
            };
            let Some(key) = key else { continue };
            let (map, host) = match binding.host.strip_prefix("*.") {
                Some(suffix) => (&mut store.wildcard, suffix),
                None => (&mut store.exact, binding.host.as_str()),
            };
            map.entry(host.to_string()).or_insert_with(|| key.clone());
        }
        (store, errors)
    }

    /// The certificate for an SNI name: exact host first, then a one-label wildcard.
    pub fn lookup(&self, sni: &str) -> Option<&Arc<CertifiedKey>> {
        let lower;
        let sni = if sni.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = sni.to_ascii_lowercase();
            lower.as_str()
        } else {
            sni
        };
        let sni = sni.strip_suffix('.').unwrap_or(sni);
        self.exact.get(sni).or_else(|| {
            let (first, suffix) = sni.split_once('.')?;
            if first.is_empty() {
                None
            } else {
                self.wildcard.get(suffix)
            }
        })
    }

    /// The Secrets that loaded (or kept their last good certificate) and their certificates.
    pub fn secrets(&self) -> &[(ObjectRef, Arc<CertifiedKey>)] {
        &self.loaded
    }

    /// The `--default-tls-secret` certificate, when that Secret loaded.
    pub fn default_certificate(&self) -> Option<&Arc<CertifiedKey>> {
        self.default.as_ref()
    }

    /// Number of hosts with a certificate.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// Whether no host has a certificate.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// === impl CertResolver ===

/// rustls's certificate hook for the HTTPS listener (`TlsSettings::set_cert_resolver`): loads the
/// current [`CertStore`] on every handshake, so certificate changes apply to new connections
/// without a restart. No host match: the store's `--default-tls-secret` certificate, else the
/// generated one.
pub struct CertResolver {
    store: Arc<ArcSwap<CertStore>>,
    default: Arc<CertifiedKey>,
}

impl CertResolver {
    /// A resolver reading `store`, answering the store's default certificate, else `default`,
    /// when no host matches.
    pub fn new(store: Arc<ArcSwap<CertStore>>, default: Arc<CertifiedKey>) -> Self {
        CertResolver { store, default }
    }
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver")
            .field("hosts", &self.store.load().len())
            .finish()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let store = self.store.load();
        let chosen = hello
            .server_name()
            .and_then(|sni| store.lookup(sni))
            .or(store.default.as_ref());
        Some(chosen.map_or_else(|| self.default.clone(), Arc::clone))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn pem_pair(hosts: &[&str]) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(
            hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    fn mk_secret(ns: &str, name: &str, crt: &str, key: &str) -> Arc<Secret> {
        Arc::new(Secret {
            metadata: kube::api::ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(BTreeMap::from([
                ("tls.crt".into(), ByteString(crt.as_bytes().to_vec())),
                ("tls.key".into(), ByteString(key.as_bytes().to_vec())),
            ])),
            ..Default::default()
        })
    }

    fn bind(host: &str, ns: &str, secret: &str) -> TlsBinding {
        TlsBinding {
            host: host.into(),
            secret: (ns.into(), secret.into()),
        }
    }

    fn leaf(store: &CertStore, sni: &str) -> Option<Vec<u8>> {
        store.lookup(sni).map(|k| k.cert[0].to_vec())
    }

    #[test]
    fn sni_selection_exact_beats_wildcard_and_first_binding_wins() {
        let (wild_crt, wild_key) = pem_pair(&["*.foo.com"]);
        let (exact_crt, exact_key) = pem_pair(&["bar.foo.com"]);
        let (late_crt, late_key) = pem_pair(&["bar.foo.com"]);
        let secrets = vec![
            mk_secret("ns", "wild", &wild_crt, &wild_key),
            mk_secret("ns", "exact", &exact_crt, &exact_key),
            mk_secret("ns", "late", &late_crt, &late_key),
        ];
        let bindings = vec![
            bind("*.foo.com", "ns", "wild"),
            bind("bar.foo.com", "ns", "exact"),
            bind("bar.foo.com", "ns", "late"),
        ];
        let (store, errors) = CertStore::build(&bindings, &secrets);
        assert!(errors.is_empty(), "{errors:?}");
        let der = |pem: &str| {
            rustls_pemfile::certs(&mut pem.as_bytes())
                .next()
                .unwrap()
                .unwrap()
                .to_vec()
        };
        assert_eq!(leaf(&store, "bar.foo.com"), Some(der(&exact_crt)));
        assert_eq!(leaf(&store, "BAR.foo.com"), Some(der(&exact_crt)));
        assert_eq!(leaf(&store, "qux.foo.com"), Some(der(&wild_crt)));
        assert_eq!(leaf(&store, "a.qux.foo.com"), None);
        assert_eq!(leaf(&store, "foo.com"), None);
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn bad_secrets_are_reported_and_skipped() {
        let (crt, key) = pem_pair(&["good.example"]);
        let (_, other_key) = pem_pair(&["x"]);
        let secrets = vec![
            mk_secret("ns", "good", &crt, &key),
            mk_secret("ns", "garbage", "not pem", "not pem"),
            mk_secret("ns", "mismatch", &crt, &other_key),
        ];
        let bindings = vec![
            bind("good.example", "ns", "good"),
            bind("garbage.example", "ns", "garbage"),
            bind("mismatch.example", "ns", "mismatch"),
            bind("missing.example", "ns", "missing"),
        ];
        let (store, errors) = CertStore::build(&bindings, &secrets);
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 3, "{text:?}");
        assert!(
            text.iter()
                .any(|t| t.contains("ns/garbage") && t.contains("no certificate")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("ns/mismatch") && t.contains("unusable key")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("ns/missing") && t.contains("not found")),
            "{text:?}"
        );
        assert!(store.lookup("good.example").is_some());
        assert!(store.lookup("garbage.example").is_none());
    }

    #[test]
    fn an_unusable_secret_keeps_its_last_good_certificate_and_a_deleted_one_does_not() {
        let (crt, key) = pem_pair(&["keep.example"]);
        let (_, other_key) = pem_pair(&["x"]);
        let (dcrt, dkey) = pem_pair(&["default.example"]);
        let bindings = vec![bind("keep.example", "ns", "keep")];
        let default = ("ns".to_string(), "default".to_string());
        let good = vec![
            mk_secret("ns", "keep", &crt, &key),
            mk_secret("ns", "default", &dcrt, &dkey),
        ];
        let (first, errors) =
            CertStore::rebuild(&bindings, &good, Some(&default), &CertStore::default());
        assert!(errors.is_empty(), "{errors:?}");
        let kept_leaf = leaf(&first, "keep.example").unwrap();
        let default_leaf = first.default_certificate().unwrap().cert[0].to_vec();
        // The key no longer matches, and the default Secret is garbage: both keep what they had.
        let broken = vec![
            mk_secret("ns", "keep", &crt, &other_key),
            mk_secret("ns", "default", "junk", "junk"),
        ];
        let (second, errors) = CertStore::rebuild(&bindings, &broken, Some(&default), &first);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().all(|e| matches!(
            e,
            Error::InvalidSecret {
                last_good_kept: true,
                ..
            }
        )));
        assert_eq!(
            errors[0].consequence(),
            "its hosts keep the last good certificate"
        );
        assert_eq!(leaf(&second, "keep.example"), Some(kept_leaf.clone()));
        assert_eq!(
            second.default_certificate().unwrap().cert[0].to_vec(),
            default_leaf
        );
        // Carried again on the next pass (from `second`, not only from `first`).
        let (third, _) = CertStore::rebuild(&bindings, &broken, Some(&default), &second);
        assert_eq!(leaf(&third, "keep.example"), Some(kept_leaf));
        // Without a last good one: nothing kept, reported as such.
        let (fresh, errors) =
            CertStore::rebuild(&bindings, &broken, Some(&default), &CertStore::default());
        assert!(fresh.lookup("keep.example").is_none() && fresh.default_certificate().is_none());
        assert!(
            errors
                .iter()
                .all(|e| e.consequence() == "its hosts get the default certificate")
        );
        // Deleted: the default certificate takes over.
        let (gone, errors) = CertStore::rebuild(&bindings, &[], None, &third);
        assert!(gone.lookup("keep.example").is_none());
        assert!(
            matches!(errors[..], [Error::SecretNotFound { .. }]),
            "{errors:?}"
        );
    }

    #[test]
    fn default_certificate_generates() {
        let key = default_certificate().unwrap();
        assert_eq!(key.cert.len(), 1);
    }
}

//! Certificates and the rustls configurations of both listeners.
//!
//! The certificates sit behind an atomic swap ([`CertStore`]) that both
//! listeners resolve through, so new ones can be installed without
//! rebuilding either listener. Several certificates are chosen by SNI
//! ([`CertSet`]): an exact DNS name first, then a wildcard, else the default.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::cluster::tickets::{Kind, TicketHub};
use crate::config::{CertPair, TlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Every certificate the gateway serves: the default one, and those chosen
/// by the name the client asks for (SNI).
#[derive(Debug)]
pub struct CertSet {
    default: Arc<CertifiedKey>,
    /// Lower-case DNS names (`*.example.com` for wildcards), in
    /// configuration order, each with its certificate.
    by_name: Vec<(String, Arc<CertifiedKey>)>,
}

impl CertSet {
    /// The certificate for `sni`: an exact name, then a wildcard covering
    /// it (one label), else the default.
    pub fn select(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni.map(|n| n.trim_end_matches('.').to_ascii_lowercase()) else {
            return self.default.clone();
        };
        let wildcard = name.split_once('.').map(|(_, rest)| format!("*.{rest}"));
        self.by_name
            .iter()
            .find(|(n, _)| *n == name)
            .or_else(|| {
                let w = wildcard.as_deref()?;
                self.by_name.iter().find(|(n, _)| n == w)
            })
            .map_or_else(|| self.default.clone(), |(_, k)| k.clone())
    }

    /// The soonest expiry among the served certificates (Unix time).
    pub fn earliest_expiry(&self) -> Option<i64> {
        std::iter::once(&self.default)
            .chain(self.by_name.iter().map(|(_, k)| k))
            .filter_map(|k| not_after(k))
            .min()
    }
}

/// The certificates both listeners serve, swappable at run time.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertSet>,
}

impl CertStore {
    pub fn new(certs: CertSet) -> Self {
        CertStore {
            current: ArcSwap::from_pointee(certs),
        }
    }

    /// Installs new certificates; connections already established keep theirs.
    pub fn replace(&self, certs: CertSet) {
        if let Some(expiry) = certs.earliest_expiry() {
            crate::metrics::certificate_expiry(expiry);
        }
        self.current.store(Arc::new(certs));
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().select(hello.server_name()))
    }
}

/// Loads the default certificate (generating a development one when
/// configured so) and every `[[tls.certificates]]` pair, indexed by the DNS
/// names in each certificate.
pub fn load_certs(cfg: &TlsConfig) -> Result<CertSet, TlsError> {
    let default = Arc::new(load_certified_key(cfg)?);
    let mut by_name = Vec::new();
    for pair in &cfg.certificates {
        let key = Arc::new(load_pair(pair)?);
        let names = dns_names(&key);
        if names.is_empty() {
            return Err(TlsError::Invalid {
                path: pair.cert.clone(),
                message: "the certificate names no DNS host (subjectAltName) to select it by"
                    .into(),
            });
        }
        for name in names {
            by_name.push((name, key.clone()));
        }
    }
    Ok(CertSet { default, by_name })
}

/// The DNS names of a certificate's subjectAltName, lower-cased.
fn dns_names(key: &CertifiedKey) -> Vec<String> {
    let Some(leaf) = key.cert.first() else {
        return Vec::new();
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// Loads the configured certificate chain and key, generating a development
/// pair first when configured so and the files are absent.
pub fn load_certified_key(cfg: &TlsConfig) -> Result<CertifiedKey, TlsError> {
    if cfg.generate_dev_cert && !cfg.cert.exists() && !cfg.key.exists() {
        let dir = cfg.cert.parent().unwrap_or_else(|| Path::new("."));
        let generated = generate_dev_cert(&cfg.dev_hosts)?;
        generated.write(dir, &cfg.cert, &cfg.key)?;
        tracing::warn!(
            cert = %cfg.cert.display(),
            ca = %dir.join(DEV_CA_FILE).display(),
            hosts = ?cfg.dev_hosts,
            "generated a development certificate (first run); trust its CA to connect, never use it in production"
        );
    }
    load_pair(&CertPair {
        cert: cfg.cert.clone(),
        key: cfg.key.clone(),
    })
}

/// One PEM certificate chain and its private key.
fn load_pair(pair: &CertPair) -> Result<CertifiedKey, TlsError> {
    let certs = CertificateDer::pem_file_iter(&pair.cert)
        .map_err(|e| pem_error(&pair.cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&pair.cert, e))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            path: pair.cert.clone(),
            message: "no CERTIFICATE block found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&pair.key).map_err(|e| pem_error(&pair.key, e))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(certs, key, &provider).map_err(|e| TlsError::Invalid {
        path: pair.key.clone(),
        message: format!("key does not match the certificate or is unsupported: {e}"),
    })
}

/// Re-reads the certificate when its files change (checked every 2 s), so
/// a renewed certificate is served to new connections without a restart or
/// a reload; existing connections keep theirs. Once a day (and at start) a
/// certificate expiring within 14 days is logged.
pub async fn watch(
    state: crate::state::SharedState,
    store: Arc<CertStore>,
    shutdown: crate::shutdown::Shutdown,
) {
    let stamp = |cfg: &TlsConfig| {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        std::iter::once((&cfg.cert, &cfg.key))
            .chain(cfg.certificates.iter().map(|p| (&p.cert, &p.key)))
            .map(|(c, k)| (m(c), m(k)))
            .collect::<Vec<_>>()
    };
    let mut last = stamp(&state.load().config.tls);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    let mut last_expiry_log: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.draining() => return,
            _ = tick.tick() => {}
        }
        let cfg = state.load().config.tls.clone();
        let now = stamp(&cfg);
        if now != last {
            last = now;
            match load_certs(&cfg) {
                Ok(certs) => {
                    store.replace(certs);
                    tracing::info!(cert = %cfg.cert.display(), "certificate files changed: new connections get the new certificate");
                }
                Err(e) => {
                    tracing::error!(error = %e, "certificate files changed but cannot be loaded; keeping the current certificate")
                }
            }
        }
        if last_expiry_log.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(86_400)) {
            last_expiry_log = Some(tokio::time::Instant::now());
            if let Some(expiry) = store.current.load().earliest_expiry() {
                let left = expiry - crate::clock::now_secs() as i64;
                if left < 14 * 86_400 {
                    tracing::warn!(days_left = left / 86_400, cert = %cfg.cert.display(), "the served certificate expires soon: renew it");
                }
            }
        }
    }
}

/// When the served (leaf) certificate expires, as Unix time.
pub fn not_after(key: &CertifiedKey) -> Option<i64> {
    let leaf = key.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

fn pem_error(path: &Path, e: rustls_pki_types::pem::Error) -> TlsError {
    match e {
        rustls_pki_types::pem::Error::Io(source) => TlsError::Read {
            path: path.to_path_buf(),
            source,
        },
        other => TlsError::Invalid {
            path: path.to_path_buf(),
            message: format!("not valid PEM: {other}"),
        },
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS for HTTP/3: TLS 1.3 only, ALPN `h3`. With 0-RTT, session tickets
/// are stateful and single use (rustls `take`s them from the bounded
/// in-memory store: a ticket presented twice resumes at most once) — never
/// stateless tickets with early data. QUIC takes early data all or nothing
/// (`u32::MAX` or 0); the gateway's own limits bound it.
///
/// With `tickets` (a cluster), the store is shared by the replicas whose
/// `[quic]` settings are the same (a ticket promises its transport limits
/// to the client's early data): see [`crate::cluster::tickets`]. Each call
/// makes a new store, as a new configuration should (a reload that changes
/// `[quic]` must not resume old tickets with 0-RTT).
pub fn quic_server_config(
    certs: Arc<CertStore>,
    quic: &crate::config::QuicConfig,
    tickets: Option<&TicketHub>,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![b"h3".to_vec()];
    let size = quic.session_cache_size.max(1) as usize;
    cfg.session_storage = match tickets {
        Some(hub) => hub.store(Kind::Quic, size, transport_fingerprint(quic)),
        None => rustls::server::ServerSessionMemoryCache::new(size),
    };
    cfg.max_early_data_size = if quic.zero_rtt { u32::MAX } else { 0 };
    Ok(cfg)
}

/// TLS for HTTP/1.1 and HTTP/2 on TCP: TLS 1.2 and 1.3, ALPN `h2`,
/// `http/1.1`; no early data. `sessions` replaces rustls' own session store
/// (a cluster's shared one).
pub fn tcp_server_config(
    certs: Arc<CertStore>,
    sessions: Option<Arc<dyn rustls::server::StoresServerSessions>>,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if let Some(store) = sessions {
        cfg.session_storage = store;
    }
    Ok(cfg)
}

/// The TCP listener's share of the cluster's session store, as large as
/// the QUIC one.
pub fn tcp_sessions(
    tickets: &TicketHub,
    quic: &crate::config::QuicConfig,
) -> Arc<dyn rustls::server::StoresServerSessions> {
    tickets.store(Kind::Tcp, quic.session_cache_size.max(1) as usize, 0)
}

/// What replicas must agree on to share 0-RTT tickets: the whole `[quic]`
/// section (the same rule that gives a replica a new store on reload).
fn transport_fingerprint(quic: &crate::config::QuicConfig) -> u64 {
    let text = serde_json::to_vec(quic).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, &text);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// File name of the development CA written next to the certificate.
pub const DEV_CA_FILE: &str = "ca.pem";

/// A development CA and a server certificate it signed.
pub struct DevCert {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Generates a development CA and a server certificate for `hosts` (names or IPs).
pub fn generate_dev_cert(hosts: &[String]) -> Result<DevCert, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa,
        KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "h3gate development CA");
    ca_params.distinguished_name = dn;
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut leaf = CertificateParams::new(hosts.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "h3gate development certificate");
    leaf.distinguished_name = dn;
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &ca)?;
    Ok(DevCert {
        ca_pem: ca.pem(),
        cert_pem: format!("{}{}", cert.pem(), ca.pem()),
        key_pem: key.serialize_pem(),
    })
}

impl DevCert {
    /// Writes `ca.pem` into `dir`, the chain to `cert` and the key (mode 0600) to `key`.
    pub fn write(&self, dir: &Path, cert: &Path, key: &Path) -> Result<(), TlsError> {
        let w = |path: &Path, contents: &str, private: bool| -> Result<(), TlsError> {
            let err = |source| TlsError::Write {
                path: path.to_path_buf(),
                source,
            };
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(err)?;
            }
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            if private {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            #[cfg(not(unix))]
            let _ = private;
            use std::io::Write;
            let mut f = opts.open(path).map_err(err)?;
            f.write_all(contents.as_bytes()).map_err(err)?;
            f.sync_all().map_err(err)
        };
        w(&dir.join(DEV_CA_FILE), &self.ca_pem, false)?;
        w(key, &self.key_pem, true)?;
        w(cert, &self.cert_pem, false)
    }
}

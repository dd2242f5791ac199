//! TLS on the proxy listener (`tls: {cert, key, client_ca}`), through
//! Pingora's rustls support: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`.
//!
//! The certificate is served through a resolver holding the current pair,
//! so a new pair takes effect for the next handshake with no listener
//! restart and no connection dropped. The pair is read again on SIGHUP and
//! when anything changes in the certificate's or the key's directory
//! (cert-manager swaps a symlink, certbot renames files); a pair that does
//! not load, or whose key does not match its certificate, leaves the
//! current one in place and says why.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert, RootCertStore};

use crate::config::ListenerTls;
use crate::metrics::Metrics;

/// Why a certificate, key or CA file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{what} {path} holds no {expected}")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("tls.key {key} does not go with tls.cert {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("tls.client_ca {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
}

/// The certificate the listener serves now, and where it is read from.
pub struct Certificates {
    current: ArcSwap<CertifiedKey>,
    cert: PathBuf,
    key: PathBuf,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl Certificates {
    /// Reads the pair; an error names the file and the reason.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            current: ArcSwap::from_pointee(load_pair(cert, key)?),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        })
    }

    /// Reads the pair again: served from the next handshake on when it
    /// loads and matches; otherwise the current one stays. `Ok(true)`
    /// when the served certificate changed.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let new = load_pair(&self.cert, &self.key)?;
        let changed = new.cert != self.current.load().cert;
        if changed {
            self.current.store(Arc::new(new));
        }
        Ok(changed)
    }

    /// The directories to watch: the certificate's and the key's.
    fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = [&self.cert, &self.key]
            .iter()
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .map(|d| {
                if d.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    d
                }
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

fn crypto() -> Arc<CryptoProvider> {
    pingora::tls::install_default_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// A certificate chain and its key, checked to go together.
fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs("tls.cert", cert)?;
    let der = read_key("tls.key", key)?;
    let signing = crypto()
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsError::Read {
            what: "tls.key",
            path: key.to_path_buf(),
            reason: e.to_string(),
        })?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().map_err(|e| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(pair)
}

/// The certificates of a PEM file, in order (a chain: the leaf first).
pub fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject as _;
    let read = |reason: String| TlsError::Read {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| read(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
            expected: "PEM certificate",
        });
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn read_key(
    what: &'static str,
    path: &Path,
) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsError> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what,
            path: path.to_path_buf(),
            expected: "PEM private key",
        },
        e => TlsError::Read {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    })
}

/// The listener's TLS settings: the reloadable certificate, ALPN `h2`
/// then `http/1.1`, and client certificates when `client_ca` is set.
pub fn settings(tls: &ListenerTls) -> Result<(TlsSettings, Arc<Certificates>), TlsError> {
    let certificates = Arc::new(Certificates::load(&tls.cert, &tls.key)?);
    let mut settings = TlsSettings::intermediate("", "").map_err(|e| TlsError::Read {
        what: "tls.cert",
        path: tls.cert.clone(),
        reason: e.to_string(),
    })?;
    settings.set_cert_resolver(certificates.clone());
    settings.enable_h2();
    if let Some(ca) = &tls.client_ca {
        let mut roots = RootCertStore::empty();
        for cert in read_certs("tls.client_ca", ca)? {
            roots.add(cert).map_err(|e| TlsError::ClientCa {
                path: ca.clone(),
                reason: e.to_string(),
            })?;
        }
        let verifier =
            pingora::tls::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto())
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
        settings.set_client_cert_verifier(verifier);
    }
    Ok((settings, certificates))
}

/// Changes closer together than this make one reload.
const SETTLE: Duration = Duration::from_millis(250);

/// Reads the certificate again on SIGHUP and on changes in its directory.
pub struct CertReloader {
    pub certificates: Arc<Certificates>,
    pub metrics: Arc<Metrics>,
}

impl CertReloader {
    fn reload(&self) {
        match self.certificates.reload() {
            Ok(true) => {
                self.metrics
                    .tls_reloads
                    .with_label_values(&["success"])
                    .inc();
                tracing::info!(cert = %self.certificates.cert.display(), "TLS certificate reloaded; new handshakes use it");
            }
            Ok(false) => {}
            Err(e) => {
                self.metrics.tls_reloads.with_label_values(&["error"]).inc();
                tracing::error!(error = %e, "TLS certificate not reloaded; keeping the current one");
            }
        }
    }

    fn watch(&self) -> Option<crate::reload::Changes> {
        crate::reload::watch(
            &self.certificates.dirs(),
            notify::RecursiveMode::NonRecursive,
            |_| true,
            "the TLS certificate's directory",
        )
    }
}

#[async_trait]
impl BackgroundService for CertReloader {
    async fn start(&self, shutdown: ShutdownWatch) {
        // Let a renewal finish writing both files, then read once.
        crate::reload::on_signal_or_change(
            shutdown,
            self.watch(),
            SETTLE,
            "the TLS certificate",
            || async { self.reload() },
        )
        .await;
    }
}

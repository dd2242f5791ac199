//! TLS on the proxy listener (`tls: {cert, key, client_ca}`), through
//! Pingora's rustls support: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`.
//!
//! The certificate is served through a resolver holding the current pair,
//! so a new pair takes effect for the next handshake with no listener
//! restart and no connection dropped. The pair is read again on SIGHUP and
//! when anything changes in the certificate's or the key's directory
//! (cert-manager swaps a symlink, certbot renames files); a pair that does
//! not load, or whose key does not match its certificate, leaves the
//! current one in place and says why. The client CA (`tls.client_ca`) is
//! read again with them, through a verifier that holds the current one.
//!
//! The directories are watched from before the files are first read, not
//! from when the reloader starts (after the listener already serves): a
//! renewal landing while taphook starts would otherwise go unseen, and
//! the old pair served until the next change.

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

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

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

/// The certificate the listener serves now, and where it is read from;
/// and the CA client certificates are verified against, if any.
pub struct Certificates {
    current: ArcSwap<CertifiedKey>,
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<Arc<ClientCa>>,
    /// The changes in the files' directories since just before they were
    /// first read, until the reloader takes them.
    changes: crate::reload::Pending,
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
    /// Reads the pair and the client CA; an error names the file and the
    /// reason. Their directories are watched first, so that every change
    /// after this read reaches the reloader, however late it starts.
    pub fn load(tls: &ListenerTls) -> Result<Self, TlsError> {
        let changes = watch(&dirs(&tls.cert, &tls.key, tls.client_ca.as_deref()));
        let client_ca = match &tls.client_ca {
            Some(path) => Some(Arc::new(ClientCa::load(path)?)),
            None => None,
        };
        Ok(Self {
            current: ArcSwap::from_pointee(load_pair(&tls.cert, &tls.key)?),
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            client_ca,
            changes: crate::reload::Pending::new(changes),
        })
    }

    /// Reads the pair and the client CA again, each on its own: one that
    /// loads (and, for the pair, matches) is used from the next handshake
    /// on; one that does not leaves the current one in place. Whether
    /// anything changed, and what did not load.
    pub fn reload(&self) -> (bool, Vec<TlsError>) {
        let (mut changed, mut errors) = (false, Vec::new());
        match load_pair(&self.cert, &self.key) {
            Ok(pair) if pair.cert != self.current.load().cert => {
                self.current.store(Arc::new(pair));
                changed = true;
            }
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
        if let Some(ca) = &self.client_ca {
            match ca.reload() {
                Ok(ca_changed) => changed |= ca_changed,
                Err(e) => errors.push(e),
            }
        }
        (changed, errors)
    }
}

/// The directories to watch: the certificate's, the key's and the client
/// CA's.
fn dirs(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = [Some(cert), Some(key), client_ca]
        .into_iter()
        .flatten()
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

/// Watches `dirs` for any change (a renewal renames, swaps a symlink or
/// writes in place).
fn watch(dirs: &[PathBuf]) -> Option<crate::reload::Changes> {
    crate::reload::watch(
        dirs,
        notify::RecursiveMode::NonRecursive,
        |_| true,
        "the TLS certificate's directory",
    )
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
    let certificates = Arc::new(Certificates::load(tls)?);
    let mut settings = TlsSettings::intermediate("", "").map_err(|e| TlsError::Read {
        what: "tls.cert",
        path: tls.cert.clone(),
        reason: e.to_string(),
    })?;
    settings.set_cert_resolver(certificates.clone());
    settings.enable_h2();
    if let Some(ca) = &certificates.client_ca {
        settings.set_client_cert_verifier(ca.clone());
    }
    Ok((settings, certificates))
}

/// The CA client certificates are verified against (`tls.client_ca`),
/// read again with the certificate. rustls lends out a verifier's list of
/// acceptable issuers for as long as the verifier lives, so each verifier
/// made is kept for the life of the process: a few KiB each time the CA
/// file changes (CA bundles rotate yearly), never per handshake.
pub struct ClientCa {
    path: PathBuf,
    current: ArcSwap<Verifier>,
}

/// One loaded CA: its certificates (to tell a change) and its verifier.
struct Verifier {
    certs: Vec<CertificateDer<'static>>,
    verify: &'static dyn ClientCertVerifier,
}

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCa")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ClientCa {
    fn load(path: &Path) -> Result<Self, TlsError> {
        let certs = read_certs("tls.client_ca", path)?;
        Ok(Self {
            path: path.to_path_buf(),
            current: ArcSwap::from_pointee(Self::verifier_of(path, certs)?),
        })
    }

    /// Reads the CA again; `Ok(true)` when it changed.
    fn reload(&self) -> Result<bool, TlsError> {
        let certs = read_certs("tls.client_ca", &self.path)?;
        if certs == self.current.load().certs {
            return Ok(false);
        }
        self.current
            .store(Arc::new(Self::verifier_of(&self.path, certs)?));
        Ok(true)
    }

    /// The verifier of the CA certificates read from `path`.
    fn verifier_of(path: &Path, certs: Vec<CertificateDer<'static>>) -> Result<Verifier, TlsError> {
        let invalid = |reason: String| TlsError::ClientCa {
            path: path.to_path_buf(),
            reason,
        };
        let mut roots = RootCertStore::empty();
        for cert in &certs {
            roots
                .add(cert.clone())
                .map_err(|e| invalid(e.to_string()))?;
        }
        let verifier =
            pingora::tls::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto())
                .build()
                .map_err(|e| invalid(e.to_string()))?;
        let verify: &'static Arc<dyn ClientCertVerifier> = Box::leak(Box::new(verifier));
        Ok(Verifier {
            certs,
            verify: verify.as_ref(),
        })
    }

    fn verifier(&self) -> &'static dyn ClientCertVerifier {
        self.current.load().verify
    }
}

impl ClientCertVerifier for ClientCa {
    fn offer_client_auth(&self) -> bool {
        self.verifier().offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.verifier().client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.verifier().root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verifier()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
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
        let (changed, errors) = self.certificates.reload();
        if changed {
            self.metrics
                .tls_reloads
                .with_label_values(&["success"])
                .inc();
            tracing::info!(cert = %self.certificates.cert.display(), "TLS certificate or client CA reloaded; new handshakes use it");
        }
        for e in errors {
            self.metrics.tls_reloads.with_label_values(&["error"]).inc();
            tracing::error!(error = %e, "TLS file not reloaded; keeping the current one");
        }
    }
}

#[async_trait]
impl BackgroundService for CertReloader {
    async fn start(&self, shutdown: ShutdownWatch) {
        // Let a renewal finish writing both files, then read once. A change
        // made since the first read, before this service started, is
        // waiting in `changes` and reloads at once.
        crate::reload::on_signal_or_change(
            shutdown,
            self.certificates.changes.take(),
            SETTLE,
            "the TLS certificate",
            || async { self.reload() },
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A new self-signed pair for `localhost`, written as a renewal does
    /// (the certificate, then the key, each through a rename); the
    /// certificate.
    fn renew(dir: &Path) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        for (name, text) in [
            ("server.pem", cert.pem()),
            ("server.key", key.serialize_pem()),
        ] {
            let tmp = dir.join("server.tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, dir.join(name)).unwrap();
        }
        cert.der().to_vec()
    }

    /// The listener serves from the first read on, but the reloader starts
    /// later, as a service of its own: a renewal in between is picked up
    /// as soon as it starts, not at the next change.
    #[tokio::test]
    async fn a_renewal_before_the_reloader_starts_is_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        renew(dir.path());
        let tls = ListenerTls {
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server.key"),
            client_ca: None,
        };
        let certificates = Arc::new(Certificates::load(&tls).unwrap());
        let renewed = renew(dir.path());
        let metrics = Arc::new(Metrics::new());
        let reloader = CertReloader {
            certificates: certificates.clone(),
            metrics: metrics.clone(),
        };
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(async move { reloader.start(shutdown).await });
        let success = metrics.tls_reloads.with_label_values(&["success"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while success.get() < 1 {
            assert!(
                Instant::now() < deadline,
                "a renewal made before the reloader started was not picked up"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(success.get(), 1);
        assert_eq!(certificates.current.load().cert[0].as_ref(), renewed);
        stop.send(true).unwrap();
        running.await.unwrap();
    }
}

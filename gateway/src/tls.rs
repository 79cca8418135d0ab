//! TLS for the HTTP/WebSocket listener. Input: the configured certificate chain and key (PEM);
//! output: the server config [`crate::listener`] accepts each TLS connection with, served by
//! the same routes as plain HTTP.
//!
//! The certificate is read again on SIGHUP: new connections get the new one, open ones keep
//! theirs, and a file that cannot be read or parsed leaves the old certificate in place (logged
//! and counted in `lakewire_tls_reloads_total{result="error"}`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The listener's TLS settings, reloadable.
pub struct Tls {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
    metrics: Metrics,
}

/// Builds a server config from PEM files: the chain (leaf first) and its private key.
pub fn load(cert_file: &Path, key_file: &Path) -> Result<ServerConfig, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert_file.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate in {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key_file.display()))?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                format!(
                    "the key in {} does not fit the certificate in {}: {e}",
                    key_file.display(),
                    cert_file.display()
                )
            })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

impl Tls {
    /// Reads the files now (a failure is a start-up error).
    pub fn new(cert_file: &Path, key_file: &Path, metrics: &Metrics) -> Result<Arc<Self>, String> {
        let config = load(cert_file, key_file)?;
        Ok(Arc::new(Self {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: RwLock::new(Arc::new(config)),
            metrics: metrics.clone(),
        }))
    }

    /// The certificate new connections get.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Reads the files again; keeps the old certificate when they are bad.
    pub fn reload(&self) -> Result<(), String> {
        match load(&self.cert_file, &self.key_file) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
                self.metrics.tls_reload("ok");
                tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                self.metrics.tls_reload("error");
                tracing::error!(error = %e, "TLS reload failed; keeping the current certificate");
                Err(e)
            }
        }
    }

    /// Reloads on every SIGHUP until `cancel`.
    pub async fn reload_on_sighup(self: Arc<Self>, cancel: CancellationToken) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; TLS certificates will not reload");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    let _ = self.reload();
                }
            }
        }
    }
}

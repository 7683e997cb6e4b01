//! Serving certificate from PEM files, hot-reloaded.
//!
//! The operator owns the webhook's certificate and rotates it by rewriting the mounted Secret.
//! A [`ReloadingResolver`] hands rustls the current certificate for every handshake; a poller
//! re-reads both files every interval and swaps in the new pair once it parses and the key
//! matches the certificate. Contents are compared, not mtimes: Secret volumes update through a
//! symlink swap, and a rewrite within the same mtime tick must still be seen. A half-written
//! pair (certificate updated, key not yet) fails to load; the old pair stays until the next
//! poll reads a consistent one.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// The crypto provider used for serving (ring, as the rest of the workspace).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Tls {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Parses a PEM certificate chain and private key into a key rustls can serve.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    paths: (&Path, &Path),
) -> Result<CertifiedKey> {
    let (cert_path, key_path) = paths;
    let certs = rustls_pemfile::certs(&mut BufReader::new(cert_pem))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(cert_path, format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(tls_err(cert_path, "no CERTIFICATE block"));
    }
    let key = rustls_pemfile::private_key(&mut BufReader::new(key_pem))
        .map_err(|e| tls_err(key_path, format!("not PEM: {e}")))?
        .ok_or_else(|| tls_err(key_path, "no PRIVATE KEY block"))?;
    Ok(CertifiedKey::from_der(certs, key, &provider())?)
}

/// Reads and parses the pair from disk.
pub fn load(cert_path: &Path, key_path: &Path) -> Result<(CertifiedKey, Vec<u8>)> {
    let cert = std::fs::read(cert_path).map_err(|e| tls_err(cert_path, e.to_string()))?;
    let key = std::fs::read(key_path).map_err(|e| tls_err(key_path, e.to_string()))?;
    let ck = certified_key(&cert, &key, (cert_path, key_path))?;
    Ok((ck, [cert, key].concat()))
}

/// Serves whichever certificate was loaded last.
#[derive(Debug)]
pub struct ReloadingResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadingResolver {
    /// Starts with `initial`.
    pub fn new(initial: CertifiedKey) -> Self {
        Self {
            current: RwLock::new(Arc::new(initial)),
        }
    }

    /// Replaces the served certificate.
    pub fn swap(&self, next: CertifiedKey) {
        // A poisoned lock only means a panic elsewhere mid-swap; the value is still a whole Arc.
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        *guard = Arc::new(next);
    }

    fn get(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// TLS 1.2 and 1.3, no client auth, HTTP/1.1 over ALPN, certificate from `resolver`.
pub fn server_config(resolver: Arc<ReloadingResolver>) -> Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Files to watch and how often.
#[derive(Clone, Debug)]
pub struct Watch {
    /// Certificate chain PEM.
    pub cert: PathBuf,
    /// Private key PEM.
    pub key: PathBuf,
    /// Poll interval.
    pub interval: Duration,
}

/// Polls the files forever, swapping in every new consistent pair. `loaded` is the contents
/// the resolver currently serves.
pub async fn watch(
    resolver: Arc<ReloadingResolver>,
    w: Watch,
    mut loaded: Vec<u8>,
    metrics: Arc<Metrics>,
) {
    let mut tick = tokio::time::interval(w.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error = None;
    loop {
        tick.tick().await;
        let (cert, key) = (w.cert.clone(), w.key.clone());
        let read = tokio::task::spawn_blocking(move || {
            let c = std::fs::read(&cert)?;
            let k = std::fs::read(&key)?;
            Ok::<_, std::io::Error>([c, k].concat())
        })
        .await;
        let Ok(Ok(contents)) = read else { continue };
        if contents == loaded {
            continue;
        }
        match load(&w.cert, &w.key) {
            Ok((ck, bytes)) => {
                resolver.swap(ck);
                loaded = bytes;
                last_error = None;
                metrics.tls_reloaded(true);
                tracing::info!(cert = %w.cert.display(), "serving certificate reloaded");
            }
            Err(e) => {
                let msg = e.to_string();
                // Log each distinct failure once; a rotation in progress fixes itself.
                if last_error.as_ref() != Some(&msg) {
                    metrics.tls_reloaded(false);
                    tracing::warn!(error = %msg, "certificate files changed but do not load; serving the previous certificate");
                    last_error = Some(msg);
                }
            }
        }
    }
}

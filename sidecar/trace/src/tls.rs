//! TLS to the collector: which roots a `https://` endpoint is verified against.
//!
//! By default the system's roots (what `rustls-native-certs` finds: `SSL_CERT_FILE`,
//! `SSL_CERT_DIR`, the distribution's bundle; the proxy image ships Debian's); with a CA
//! bundle (PEM), exactly the certificates in it, for in-cluster collectors signed by a
//! private CA. The server name is always checked against the endpoint's host.

use std::sync::Arc;

use rustls::RootCertStore;

/// The collector's trust anchors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CollectorRoots {
    /// The system's roots.
    #[default]
    System,
    /// Only the certificates of this PEM bundle.
    Bundle(Arc<[u8]>),
}

impl CollectorRoots {
    /// A bundle from PEM text, checked now: at least one certificate and nothing unreadable.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        parse_bundle(pem)?;
        Ok(Self::Bundle(Arc::from(pem)))
    }
}

fn parse_bundle(pem: &[u8]) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let mut reader = pem;
    for (i, cert) in rustls_pemfile::certs(&mut reader).enumerate() {
        let cert = cert.map_err(|e| format!("certificate {} of the CA bundle: {e}", i + 1))?;
        store
            .add(cert)
            .map_err(|e| format!("certificate {} of the CA bundle: {e}", i + 1))?;
    }
    if store.is_empty() {
        return Err("the CA bundle holds no PEM certificate".into());
    }
    Ok(store)
}

/// The rustls client configuration for `roots`. System roots that cannot be read leave the
/// store empty, which fails every https handshake (counted as send failures) rather than the
/// proxy: plain-http collectors keep working.
pub fn client_config(roots: &CollectorRoots) -> Result<rustls::ClientConfig, String> {
    let store = match roots {
        CollectorRoots::Bundle(pem) => parse_bundle(pem)?,
        CollectorRoots::System => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::debug!(error = %e, "reading the system's CA certificates");
            }
            let mut store = RootCertStore::empty();
            let (added, ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    ignored,
                    "no system CA certificates found: https collectors will fail verification"
                );
            }
            store
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(store)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_must_hold_certificates() {
        let e = CollectorRoots::from_pem(b"not pem").unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = CollectorRoots::from_pem(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap_err();
        assert!(e.contains("certificate 1"), "{e}");
        let cert = rcgen::generate_simple_self_signed(vec!["collector".into()])
            .expect("cert")
            .cert
            .pem();
        let roots = CollectorRoots::from_pem(cert.as_bytes()).expect("a real certificate");
        assert!(client_config(&roots).is_ok());
        assert!(client_config(&CollectorRoots::System).is_ok());
    }
}

//! Does the webhook's caBundle verify the certificate the injector serves? The API server
//! refuses to call a webhook whose certificate does not chain to the registration's caBundle
//! for the name it dials, so this is checked the same way: webpki path building and
//! signatures (rustls' verifier), for the name the registration dials. Pure: PEM text in.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// The certificates of a PEM text (anything else in it is ignored).
fn certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut reader = pem;
    rustls_pemfile::certs(&mut reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM: {e}"))
}

/// `Ok` when `serving_chain_pem` (leaf first, as in `tls.crt`) chains to one of the CAs in
/// `ca_bundle_pem` and is valid for `name` at `now_unix` (seconds); else why not, in words.
pub fn verify_serving_cert(
    ca_bundle_pem: &[u8],
    serving_chain_pem: &[u8],
    name: &str,
    now_unix: u64,
) -> Result<(), String> {
    let anchors = certs(ca_bundle_pem).map_err(|e| format!("caBundle: {e}"))?;
    if anchors.is_empty() {
        return Err("caBundle holds no certificate".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for ca in anchors {
        roots
            .add(ca)
            .map_err(|e| format!("caBundle: unusable CA certificate: {e}"))?;
    }
    let chain = certs(serving_chain_pem).map_err(|e| format!("serving certificate: {e}"))?;
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err("the serving certificate is empty".into());
    };
    let server_name = ServerName::try_from(name.to_owned())
        .map_err(|e| format!("{name:?} is not a DNS name or IP address: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| format!("caBundle: {e}"))?;
    verifier
        .verify_server_cert(
            leaf,
            intermediates,
            &server_name,
            &[],
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(now_unix)),
        )
        .map(|_| ())
        .map_err(|e| match e {
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
            | rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature) => {
                "the serving certificate is not signed by any CA in the caBundle".to_owned()
            }
            other => other.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    use super::*;

    struct Ca {
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_owned());
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("key");
        let cert = p.self_signed(&key).expect("ca");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    fn leaf(ca: &Ca, dns: &str) -> String {
        let p = CertificateParams::new(vec![dns.to_owned()]).expect("params");
        let key = KeyPair::generate().expect("key");
        p.signed_by(&key, &ca.issuer).expect("leaf").pem()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    const NAME: &str = "sidetrace-injector.sidetrace-system.svc";

    #[test]
    fn a_certificate_from_a_ca_in_the_bundle_verifies() {
        let current = ca("current");
        let previous = ca("previous");
        let cert = leaf(&current, NAME);
        // During rotation the bundle carries both CAs; either order verifies.
        let bundle = format!("{}{}", previous.pem, current.pem);
        assert_eq!(
            verify_serving_cert(bundle.as_bytes(), cert.as_bytes(), NAME, now()),
            Ok(())
        );
    }

    #[test]
    fn another_ca_a_wrong_name_and_junk_are_explained() {
        let ours = ca("ours");
        let other = ca("other");
        let cert = leaf(&ours, NAME);
        let e = verify_serving_cert(other.pem.as_bytes(), cert.as_bytes(), NAME, now())
            .expect_err("other CA");
        assert!(e.contains("not signed by any CA in the caBundle"), "{e}");
        let e = verify_serving_cert(ours.pem.as_bytes(), cert.as_bytes(), "elsewhere.svc", now())
            .expect_err("wrong name");
        assert!(e.to_lowercase().contains("name"), "{e}");
        let e = verify_serving_cert(b"", cert.as_bytes(), NAME, now()).expect_err("empty");
        assert!(e.contains("no certificate"), "{e}");
        let e = verify_serving_cert(ours.pem.as_bytes(), b"junk", NAME, now()).expect_err("junk");
        assert!(e.contains("empty"), "{e}");
    }
}

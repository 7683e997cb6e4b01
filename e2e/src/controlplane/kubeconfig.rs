//! Kubeconfig files for the control plane: one cluster, one user, one context. The same file
//! works for kube-rs, kubectl, helm and our own binaries run as local processes.

use base64::Engine as _;
use serde_json::{Value, json};

/// How a kubeconfig authenticates.
#[derive(Clone, Debug)]
pub enum Auth {
    /// A client certificate signed by the control plane's CA (CN = user, O = groups).
    ClientCert {
        /// Certificate PEM.
        cert_pem: String,
        /// PKCS#8 key PEM.
        key_pem: String,
    },
    /// A bearer token, e.g. a ServiceAccount token from the TokenRequest API.
    Token(String),
    /// Act as `user` with `groups`, authenticated by a (privileged) client certificate.
    /// The apiserver then authorises every request as the impersonated identity.
    Impersonate {
        /// Certificate PEM of the identity allowed to impersonate.
        cert_pem: String,
        /// PKCS#8 key PEM.
        key_pem: String,
        /// The impersonated user, e.g. `system:serviceaccount:ns:name`.
        user: String,
        /// The impersonated groups.
        groups: Vec<String>,
    },
}

/// The kubeconfig YAML for `server` (an `https://` URL) trusted through `ca_pem`.
pub fn kubeconfig_yaml(server: &str, ca_pem: &str, auth: &Auth) -> String {
    let user = match auth {
        Auth::ClientCert { cert_pem, key_pem } => json!({
            "client-certificate-data": b64(cert_pem),
            "client-key-data": b64(key_pem),
        }),
        Auth::Token(token) => json!({ "token": token }),
        Auth::Impersonate {
            cert_pem,
            key_pem,
            user,
            groups,
        } => json!({
            "client-certificate-data": b64(cert_pem),
            "client-key-data": b64(key_pem),
            "as": user,
            "as-groups": groups,
        }),
    };
    let doc: Value = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "sidetrace-e2e",
            "cluster": { "server": server, "certificate-authority-data": b64(ca_pem) },
        }],
        "users": [{ "name": "sidetrace-e2e", "user": user }],
        "contexts": [{
            "name": "sidetrace-e2e",
            "context": { "cluster": "sidetrace-e2e", "user": "sidetrace-e2e" },
        }],
        "current-context": "sidetrace-e2e",
    });
    serde_yaml::to_string(&doc).unwrap_or_default()
}

/// Standard base64, as kubeconfig `*-data` fields expect.
fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::config::Kubeconfig;

    #[test]
    fn kube_reads_the_impersonating_kubeconfig() {
        let auth = Auth::Impersonate {
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
            user: "system:serviceaccount:ns:op".into(),
            groups: vec!["system:serviceaccounts".into()],
        };
        let yaml = kubeconfig_yaml("https://10.250.250.2:6443", "CA", &auth);
        let kc = Kubeconfig::from_yaml(&yaml).expect("kube parses it");
        assert_eq!(kc.current_context.as_deref(), Some("sidetrace-e2e"));
        let cluster = kc.clusters[0].cluster.as_ref().expect("cluster");
        assert_eq!(cluster.server.as_deref(), Some("https://10.250.250.2:6443"));
        assert_eq!(cluster.certificate_authority_data.as_deref(), Some("Q0E="));
        let user = kc.auth_infos[0].auth_info.as_ref().expect("user");
        assert_eq!(
            user.impersonate.as_deref(),
            Some("system:serviceaccount:ns:op")
        );
        assert_eq!(
            user.impersonate_groups.as_deref(),
            Some(&["system:serviceaccounts".to_owned()][..])
        );
    }

    #[test]
    fn token_kubeconfig_has_only_the_token() {
        let yaml = kubeconfig_yaml("https://127.0.0.1:6443", "CA", &Auth::Token("t0k".into()));
        let kc = Kubeconfig::from_yaml(&yaml).expect("kube parses it");
        let user = kc.auth_infos[0].auth_info.as_ref().expect("user");
        assert!(user.client_certificate_data.is_none());
        assert!(yaml.contains("token: t0k"), "{yaml}");
    }
}

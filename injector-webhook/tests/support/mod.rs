//! Shared helpers for the component tests: a self-signed certificate in a temporary directory,
//! the real binary as a child process, and a tiny HTTPS client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "st-{}-injector-{tag}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A freshly generated self-signed certificate for localhost/127.0.0.1.
pub struct Cert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

pub fn self_signed() -> Cert {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("rcgen");
    Cert {
        cert_pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
        der: ck.cert.der().clone(),
    }
}

/// The injector binary, killed on drop.
pub struct Injector {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: TempDir,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Injector {
    /// Starts the binary over HTTPS with `cert`, plus `extra` flags, without cluster access.
    pub fn start(cert: &Cert, extra: &[&str]) -> Self {
        Self::start_inner(cert, extra, None)
    }

    /// Like [`Injector::start`], with a kubeconfig.
    pub fn start_with_kubeconfig(
        cert: &Cert,
        extra: &[&str],
        kubeconfig: &std::path::Path,
    ) -> Self {
        Self::start_inner(cert, extra, Some(kubeconfig))
    }

    fn start_inner(cert: &Cert, extra: &[&str], kubeconfig: Option<&std::path::Path>) -> Self {
        let dir = TempDir::new("https");
        let cert_path = dir.0.join("tls.crt");
        let key_path = dir.0.join("tls.key");
        std::fs::write(&cert_path, &cert.cert_pem).expect("write cert");
        std::fs::write(&key_path, &cert.key_pem).expect("write key");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sidetrace-injector"))
            .args(["--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(&cert_path)
            .arg("--tls-key")
            .arg(&key_path)
            .args(["--tls-reload-interval-ms", "100"])
            .args(extra)
            // No cluster: the webhook must log that and serve without TracedServices.
            .env(
                "KUBECONFIG",
                kubeconfig.map_or_else(
                    || dir.0.join("no-such-kubeconfig"),
                    std::path::Path::to_path_buf,
                ),
            )
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .args(["--log-level", "error"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sidetrace-injector");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listening line");
        let addr = line
            .trim()
            .rsplit("://")
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Self {
            child,
            addr,
            dir,
            cert_path,
            key_path,
        }
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// A TLS client configuration trusting exactly `root`.
pub fn client_config(
    root: &CertificateDer<'static>,
    tls12_only: bool,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).expect("add root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Result of one request: status, body, and the certificate the server presented.
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub server_cert: CertificateDer<'static>,
}

/// One HTTPS request over a fresh connection, with a timeout.
pub async fn request(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<Reply, String> {
    let fut = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let server_cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .ok_or("no peer certificate")?
            .into_owned();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes()
            .to_vec();
        Ok(Reply {
            status,
            body,
            server_cert,
        })
    };
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .map_err(|_| "request timed out".to_owned())?
}

/// An AdmissionReview v1 for creating `pod` in `namespace`.
pub fn review(uid: &str, namespace: &str, pod: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

/// A plain Deployment-style pod.
pub fn plain_pod() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-7d9c8b5f4-", "namespace": "shop",
            "labels": {"app": "web", "pod-template-hash": "7d9c8b5f4"}},
        "spec": {"containers": [{"name": "web", "image": "web:1",
            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]}
    })
}

/// Writes `request` as raw bytes over TLS (ignoring write errors: the server may answer and
/// close before reading everything) and returns what the server sent back.
pub async fn raw_exchange(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    request: String,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = ServerName::try_from("localhost").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("handshake");
        let _ = tls.write_all(request.as_bytes()).await;
        let _ = tls.flush().await;
        let mut buf = vec![0u8; 4096];
        let n = tls.read(&mut buf).await.unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("raw exchange timed out")
}

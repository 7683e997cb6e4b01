//! The crate's error type.

use std::net::SocketAddr;
use std::path::PathBuf;

use sidetrace_contract::exit;

/// Everything that can go wrong in the injector outside the pure core (which cannot fail).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request body is not an AdmissionReview the webhook can answer (HTTP 400).
    #[error("bad AdmissionReview: {0}")]
    BadReview(String),
    /// A TLS certificate or key file could not be read or parsed.
    #[error("TLS material {path}: {reason}")]
    Tls {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls rejected the certificate/key pair.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A socket or file operation failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The Kubernetes API could not be reached or answered with an error.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The kubeconfig or in-cluster configuration could not be loaded.
    #[error("Kubernetes client configuration: {0}")]
    KubeConfig(#[from] kube::config::InferConfigError),
    /// The listening socket could not be bound.
    #[error("binding --listen {0}: {1}")]
    Listen(SocketAddr, #[source] std::io::Error),
    /// The apiserver reported a version the injector cannot parse.
    #[error("unparseable Kubernetes version {0:?}")]
    Version(String),
}

impl Error {
    /// Short label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::BadReview(_) => "bad-review",
            Self::Tls { .. } => "tls",
            Self::Rustls(_) => "rustls",
            Self::Io(_) => "io",
            Self::Kube(_) => "kube",
            Self::KubeConfig(_) => "kube-config",
            Self::Version(_) => "version",
            Self::Listen(..) => "listen",
        }
    }

    /// The process exit code when this error ends the injector: unusable TLS material is bad
    /// configuration ([`exit::USAGE`]); anything else is a failure at run time.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Tls { .. } | Self::Rustls(_) => exit::USAGE,
            _ => exit::FAILURE,
        }
    }
}

/// Result alias for the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

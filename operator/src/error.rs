//! The operator's one error type.

/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed (transient: retried with backoff).
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An object lacks a field the apiserver always sets (namespace, uid).
    #[error("object {0} lacks {1}")]
    MissingField(String, &'static str),
    /// Certificate generation failed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// Leadership was lost; the process exits so a fresh start re-elects cleanly.
    #[error("leadership lost: {0}")]
    LeadershipLost(String),
    /// A call to the Kubernetes API did not answer within its deadline.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Bad operator configuration (flags), exit code 64.
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::MissingField(..) => "missing-field",
            Self::Certificate(_) => "certificate",
            Self::LeadershipLost(_) => "leadership",
            Self::Timeout(_) => "timeout",
            Self::Config(_) => "config",
        }
    }
}

/// Result with the operator's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

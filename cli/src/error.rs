//! The command line's errors: what failed, where.

/// Everything that can fail outside the pure modules.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable kubeconfig or context.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// An API request failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being read or written (`GET deployments sidetrace-system/x`).
        what: String,
        /// kube's error.
        #[source]
        source: kube::Error,
    },
    /// A request through the API server's proxy answered with an error status.
    #[error("{what}: {status}: {body}")]
    Status {
        /// What was asked.
        what: String,
        /// The HTTP status (the API server's, or the proxied pod's).
        status: http::StatusCode,
        /// The answer, trimmed.
        body: String,
    },
    /// A request through the API server's proxy did not answer in time.
    #[error("{what}: no answer within {secs}s")]
    Timeout {
        /// What was asked.
        what: String,
        /// The bound.
        secs: u64,
    },
    /// An answer that is not what it should be (not JSON, a missing field).
    #[error("{what}: {message}")]
    Invalid {
        /// Where the answer came from.
        what: String,
        /// What is wrong with it.
        message: String,
    },
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Output(String),
}

impl Error {
    /// The process exit code: bad usage or configuration (a kubeconfig that cannot be used)
    /// is the shared usage code; anything else a plain failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Kubeconfig(_) => sidetrace_contract::exit::USAGE,
            _ => sidetrace_contract::exit::FAILURE,
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

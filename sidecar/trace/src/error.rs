//! The crate's one error type. Errors only arise while exporting: propagation and span
//! building are total functions (bad input is dropped and counted, never an error).

/// Why a batch could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The collector endpoint cannot be used (https, no host, ...): nothing is retried.
    #[error("collector endpoint {endpoint} is unusable: {reason}")]
    InvalidEndpoint {
        /// The endpoint as configured.
        endpoint: String,
        /// Why.
        reason: &'static str,
    },
    /// Connecting or talking to the collector failed.
    #[error("collector request failed: {0}")]
    Request(String),
    /// The collector did not answer within the request timeout.
    #[error("collector did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The collector answered with a non-2xx status.
    #[error("collector answered HTTP {0}")]
    Status(u16),
}

impl Error {
    /// Short label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::InvalidEndpoint { .. } => "invalid_endpoint",
            Self::Request(_) => "request",
            Self::Timeout(_) => "timeout",
            Self::Status(_) => "status",
        }
    }

    /// Whether trying the same batch again may succeed: connection trouble, timeouts and
    /// 5xx. A 4xx means the collector rejects the payload; retrying would only repeat that.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Request(_) | Self::Timeout(_) => true,
            Self::Status(s) => *s >= 500,
            Self::InvalidEndpoint { .. } => false,
        }
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

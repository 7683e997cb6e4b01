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
    /// The collector answered with a non-2xx status (and, on 429/503, perhaps a
    /// `Retry-After` in seconds).
    #[error("collector answered HTTP {status}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The collector's `Retry-After`, when it sent one in seconds.
        retry_after: Option<std::time::Duration>,
    },
}

impl Error {
    /// Short label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::InvalidEndpoint { .. } => "invalid_endpoint",
            Self::Request(_) => "request",
            Self::Timeout(_) => "timeout",
            Self::Status { .. } => "status",
        }
    }

    /// Whether trying the same batch again may succeed, by the protocol's rules: connection
    /// trouble and timeouts always; for OTLP exactly the statuses its specification calls
    /// retryable (429, 502, 503, 504); for Zipkin v2, 429 and every 5xx (what the exporter
    /// always did). Any other 4xx means the collector rejects the payload; retrying would
    /// only repeat that.
    pub fn is_retryable(&self, protocol: sidetrace_contract::CollectorProtocol) -> bool {
        use sidetrace_contract::CollectorProtocol;
        match self {
            Self::Request(_) | Self::Timeout(_) => true,
            Self::Status { status, .. } => match protocol {
                CollectorProtocol::OtlpHttp => matches!(status, 429 | 502 | 503 | 504),
                CollectorProtocol::Zipkin => *status == 429 || *status >= 500,
            },
            Self::InvalidEndpoint { .. } => false,
        }
    }

    /// Whether the collector refused the payload itself (a 4xx other than 429): counted as
    /// rejected rather than as a failed send.
    pub fn is_rejection(&self) -> bool {
        matches!(self, Self::Status { status, .. } if *status < 500 && *status != 429)
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

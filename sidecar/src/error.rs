//! The crate's one error type.

use std::net::SocketAddr;

/// Result alias for the proxy crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the proxy, one variant per failure the operator cares about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag, environment variable or config-file field has a value the proxy cannot use.
    /// Always reported before any port is bound; the binary exits 64.
    #[error("invalid configuration: {field}: {reason}")]
    Config { field: String, reason: String },
    /// Binding a listener failed (port in use, address not available).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// Connecting to the upstream (the app, or the original destination) failed.
    #[error("upstream connect to {addr} failed: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    /// The upstream HTTP exchange failed after the connection was made.
    #[error("upstream request failed: {0}")]
    Upstream(#[from] hyper::Error),
    /// Any other I/O error on a connection.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Short label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Config { .. } => "config",
            Self::Bind { .. } => "bind",
            Self::Connect { .. } => "connect",
            Self::Upstream(_) => "upstream",
            Self::Io(_) => "io",
        }
    }

    /// Shorthand for a [`Error::Config`] naming the flag or field at fault.
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

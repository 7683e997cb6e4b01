//! `sidetrace-init`: the init container that makes a pod's TCP traffic flow through the
//! sidetrace proxy.
//!
//! It runs once per pod, before the app and the proxy, with NET_ADMIN and NET_RAW, and programs
//! the nat table of the pod's network namespace. Data flows one way:
//! flags → [`config::Config`] (validated, exit 64 when not) → [`rules::ruleset`] per family
//! (pure) → [`apply`] reads the table with `*-save`, plans one `*-restore --noflush`
//! transaction, and runs it with the flavour [`backend::detect`] picked.
//!
//! # The chains (Istio's shape, `SIDETRACE_` prefix)
//!
//! ```text
//! PREROUTING -p tcp ──► SIDETRACE_INBOUND ── excluded/admin port ──► RETURN
//!                             │ (every other port, or only the listed ones)
//!                             ▼
//!                       SIDETRACE_IN_REDIRECT ──► REDIRECT :15006 (proxy inbound)
//!
//! OUTPUT -p tcp ──► SIDETRACE_OUTPUT
//!   -s 127.0.0.6 -o lo            ──► RETURN   proxy → app at pod IP, passthrough source
//!   proxy uid/gid, -o lo, ! -d lo ──► SIDETRACE_INBOUND  proxy → own pod IP is inbound
//!   -o lo, not the proxy          ──► RETURN   app → itself, app → proxy ports
//!   proxy uid/gid                 ──► RETURN   the proxy's own traffic: no loop
//!   -d 127.0.0.0/8                ──► RETURN   anything else bound for loopback
//!   excluded ports, excluded CIDRs──► RETURN
//!   included CIDRs (default all)  ──► SIDETRACE_REDIRECT ──► REDIRECT :15001
//! ```
//!
//! The hard cases and how they fall out:
//! - **The proxy's own outbound connections** match the uid (or gid) owner exemption and are
//!   never redirected, so there is no loop.
//! - **The proxy calling the app**: it must use 127.0.0.1:port (loopback is never redirected)
//!   or bind 127.0.0.6 as its source when connecting to the pod IP. Connecting to the pod IP
//!   from any other source would be captured again as inbound.
//! - **The app calling its own pod IP or localhost** goes over `lo` and is left alone; the
//!   proxy calling the pod's own IP (after capturing the app's call) is treated as inbound, so
//!   the callee side gets its server span.
//! - **Kubelet probes** arrive from the node like any inbound connection: probes of app ports
//!   go through the proxy, probes of the admin port (15021, always excluded) reach it directly.
//! - **Where the proxy listens**: REDIRECT in PREROUTING rewrites the destination to the
//!   receiving interface's address, so the inbound port must listen on 0.0.0.0 / `[::]`;
//!   REDIRECT in OUTPUT rewrites to 127.0.0.1 / ::1, so the outbound port may listen on
//!   loopback or on all addresses. `SO_ORIGINAL_DST` gives both the address the client meant.
//! - **Excluded ports and CIDRs** return before the redirect; an include list limits outbound
//!   capture to its CIDRs, per family (a family without any CIDR in the list captures nothing).
//!
//! Applying is idempotent: own chains are declared (created or flushed) in the same
//! transaction that deletes every existing jump into them and appends each jump once.
//! `--cleanup` deletes the jumps and the chains (IPv6 too when ip6tables works); `--dry-run`
//! prints the restore input.

pub mod apply;
pub mod backend;
pub mod config;
pub mod loopback;
pub mod rules;

use sidetrace_contract::exit;

/// Everything that can go wrong, one variant per way it can be reported.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or environment value is invalid.
    #[error("invalid {flag} value {value:?}: {reason}")]
    InvalidConfig {
        /// The flag, e.g. `--inbound-port`.
        flag: &'static str,
        /// The offending value (one list item when it came from a list).
        value: String,
        /// Why it is rejected.
        reason: String,
    },
    /// Neither iptables flavour can be used.
    #[error("no usable iptables backend: {details}")]
    NoBackend {
        /// What each attempt said.
        details: String,
    },
    /// iptables refused for lack of privileges.
    #[error(
        "`{command}` was refused: {stderr}; sidetrace-init must run as root with the NET_ADMIN \
         and NET_RAW capabilities"
    )]
    PermissionDenied {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it ended.
        status: String,
        /// What it printed.
        stderr: String,
    },
    /// An rtnetlink request failed (the IPv6 passthrough address on `lo`).
    #[error("{what}: {source}")]
    Netlink {
        /// What was attempted.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A command could not be started.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Error {
    /// Short stable label, for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::InvalidConfig { .. } => "invalid_config",
            Error::NoBackend { .. } => "no_backend",
            Error::PermissionDenied { .. } => "permission_denied",
            Error::Command { .. } => "command_failed",
            Error::Spawn { .. } => "spawn_failed",
            Error::Netlink { .. } => "netlink_failed",
        }
    }

    /// Process exit code: 64 for bad configuration, 1 for anything that failed to apply.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::InvalidConfig { .. } => exit::USAGE,
            _ => exit::FAILURE,
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! `sidetrace-proxy` binary: parse and validate configuration (exit 64 on bad input, before
//! any port is bound), set up logging and the runtime, run until drained.
//!
//! Exit codes: 0 after a graceful drain (SIGTERM, SIGINT, `POST /shutdown`); 64 for a bad
//! flag, environment variable or config file (the message names it); 1 for runtime failures
//! such as a port already in use.

use std::process::ExitCode;

use clap::Parser;
use sidetrace_contract::exit;
use sidetrace_proxy::config::{Args, LogFormat, Settings};

/// Exit code for bad configuration: the contract's [`exit::USAGE`], shared by every sidetrace
/// binary, as the `u8` that `ExitCode` takes (checked at compile time).
const EXIT_CONFIG: u8 = {
    assert!(exit::USAGE >= 0 && exit::USAGE <= u8::MAX as i32);
    exit::USAGE as u8
};

/// How long `sidetrace-proxy wait` waits for readiness before failing the pod's start.
const WAIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

fn main() -> ExitCode {
    // `sidetrace-proxy wait`: the classic-mode postStart hold (see `wait.rs`).
    if std::env::args().nth(1).as_deref() == Some("wait") {
        let port = std::env::var(sidetrace_contract::names::env::ADMIN_PORT)
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(sidetrace_contract::defaults::ADMIN_PORT);
        let admin = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        return if sidetrace_proxy::wait::wait_ready(admin, WAIT_TIMEOUT) {
            ExitCode::SUCCESS
        } else {
            eprintln!("sidetrace-proxy wait: {admin}/ready not ready after {WAIT_TIMEOUT:?}");
            ExitCode::FAILURE
        };
    }
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&args.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("sidetrace-proxy: invalid configuration: --log-level: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let settings = match Settings::from_args(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sidetrace-proxy: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // One worker: a current-thread runtime (as linkerd2-proxy does for one core): one OS
    // thread, no hand-off between the thread that blocks on `run` and a worker, one allocator
    // arena.
    let mut builder = if settings.args.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(settings.args.worker_threads);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sidetrace-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sidetrace_proxy::run::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, kind = e.metric_label(), "sidetrace-proxy failed");
            eprintln!("sidetrace-proxy: {e}");
            if matches!(e, sidetrace_proxy::Error::Config { .. }) {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

//! `sidetrace-injector`: the mutating admission webhook binary. See the library docs for the
//! model; this file parses the command line, sets up logging and maps the outcome to an exit
//! code. The flags and the service live in [`sidetrace_injector::config`].

use clap::Parser;
use sidetrace_contract::exit;
use sidetrace_injector::config::{Args, run};

fn main() {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // --help and --version are not errors; every other parse failure is bad config.
            let code = if e.use_stderr() { exit::USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&args.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("sidetrace-injector: --log-level {:?}: {e}", args.log_level);
            std::process::exit(exit::USAGE);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if !sidetrace_injector::overrides::LOG_LEVELS.contains(&args.proxy_log_level.as_str()) {
        eprintln!(
            "sidetrace-injector: --proxy-log-level must be one of {}",
            sidetrace_injector::overrides::LOG_LEVELS.join(", ")
        );
        std::process::exit(exit::USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sidetrace-injector: cannot start the runtime: {e}");
            std::process::exit(exit::FAILURE);
        }
    };
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("sidetrace-injector: {e}");
        std::process::exit(e.exit_code());
    }
}

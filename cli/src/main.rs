//! `sidetrace`: see the crate docs (`sidetrace --help`). Installed on PATH as
//! `kubectl-sidetrace`, the same binary is `kubectl sidetrace`.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use kube::config::{KubeConfigOptions, Kubeconfig};
use sidetrace_cli::gather::{self, Scope, Target};
use sidetrace_cli::{Error, check, render, spans, status};
use sidetrace_contract::{defaults, exit, parse_duration};

#[derive(Debug, Parser)]
#[command(
    name = "sidetrace",
    version,
    about = "Check, inspect and read traces of a sidetrace install (also `kubectl sidetrace`)"
)]
struct Cli {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then the
    /// in-cluster service account).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Only this namespace (default: every namespace where sidetrace is in use).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Every namespace where sidetrace is in use (the default without -n).
    #[arg(short = 'A', long, global = true, conflicts_with = "namespace")]
    all_namespaces: bool,
    /// Output format (default: text for people).
    #[arg(short = 'o', long, global = true, value_enum)]
    output: Option<Output>,
    /// Namespace of the sidetrace control plane (operator, injector, Jaeger).
    #[arg(long, global = true, env = "SIDETRACE_NAMESPACE", default_value = defaults::CONTROL_PLANE_NAMESPACE)]
    control_plane_namespace: String,
    /// Bound on each request through the API server's proxies (e.g. 10s).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    request_timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Json,
    Yaml,
    /// More columns (status).
    Wide,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check everything spans need to arrive; exit 1 when anything fails.
    Check {
        /// How many injected pods per namespace to ask for their proxy's own view.
        #[arg(long, default_value_t = 3)]
        proxies: usize,
    },
    /// TracedServices and their pods: injected, ready, sampling, spans/s, drops.
    Status {
        /// Interval between the two readings spans/s is computed from (0s: no rate).
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        window: Duration,
    },
    /// One trace from the in-cluster Jaeger, as a span tree.
    Trace {
        /// The trace id (16 or 32 hex digits).
        id: String,
    },
    /// Recent traces of a service from the in-cluster Jaeger, newest first.
    Traces {
        /// The service name spans carry.
        #[arg(long)]
        service: String,
        /// At most this many traces.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// How far back to look (e.g. 1h).
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        lookback: Duration,
    },
}

/// Progress on stderr while it is a terminal; nothing otherwise.
struct Progress(bool);

impl Progress {
    fn say(&self, what: &str) {
        if self.0 {
            let _ = write!(std::io::stderr(), "\r\x1b[2K{what}…");
        }
    }

    fn done(&self) {
        if self.0 {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

async fn client(cli: &Cli) -> Result<kube::Client, Error> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| e.to_string())
        }
        None if cli.context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| e.to_string()),
        None => kube::Config::infer().await.map_err(|e| e.to_string()),
    }
    .map_err(Error::Kubeconfig)?;
    kube::Client::try_from(config).map_err(|e| Error::Kubeconfig(e.to_string()))
}

fn print(text: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Error::Output(e.to_string()))
}

/// Prints `value` as JSON or YAML when `-o` asks for it, else `text()` (for people).
fn emit<T: serde::Serialize>(
    value: &T,
    output: Option<Output>,
    text: impl FnOnce() -> String,
) -> Result<(), Error> {
    let out = match output {
        Some(Output::Yaml) => {
            serde_yaml::to_string(value).map_err(|e| Error::Output(e.to_string()))?
        }
        Some(Output::Json) => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| Error::Output(e.to_string()))?,
        _ => text(),
    };
    print(&out)
}

async fn run(cli: Cli) -> Result<ExitCode, Error> {
    let scope = match &cli.namespace {
        Some(ns) if !cli.all_namespaces => Scope::One(ns.clone()),
        _ => Scope::InUse,
    };
    let progress = Progress(std::io::stderr().is_terminal());
    let colour = render::colour_wanted(
        std::io::stdout().is_terminal(),
        std::env::var("NO_COLOR").ok().as_deref(),
    );
    // Bad input is refused before anything is asked of the cluster.
    if let Command::Trace { id } = &cli.command
        && !gather::is_trace_id(id)
    {
        eprintln!("sidetrace trace: {id:?} is not a trace id (16 or 32 hex digits)");
        return Ok(ExitCode::from(exit::USAGE as u8));
    }
    progress.say("connecting");
    let target = Target {
        client: client(&cli).await?,
        control_plane: cli.control_plane_namespace.clone(),
        timeout: cli.request_timeout,
    };
    match &cli.command {
        Command::Check { proxies } => {
            progress.say("checking the control plane, namespaces and proxies");
            let checks = gather::check(&target, &scope, *proxies).await?;
            progress.done();
            emit(&checks, cli.output, || render::checklist(&checks, colour))?;
            Ok(if check::any_failed(&checks) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Status { window } => {
            progress.say("reading TracedServices, pods and proxies");
            let rows = gather::status(&target, &scope, *window).await?;
            progress.done();
            emit(&rows, cli.output, || {
                status::render_table(&rows, cli.output == Some(Output::Wide))
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Trace { id } => {
            progress.say("asking Jaeger");
            let found = gather::trace(&target, id).await?;
            progress.done();
            if found.is_empty() {
                eprintln!(
                    "sidetrace trace: Jaeger ({}/{}) has no trace {id}",
                    target.control_plane,
                    defaults::JAEGER_QUERY_SERVICE
                );
                return Ok(ExitCode::FAILURE);
            }
            emit(&found, cli.output, || spans::render_tree(&found))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Traces {
            service,
            limit,
            lookback,
        } => {
            progress.say("asking Jaeger");
            let found = gather::traces(&target, service, *limit, *lookback).await?;
            progress.done();
            emit(&found, cli.output, || {
                found
                    .iter()
                    .map(|t| spans::render_tree(t))
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SIDETRACE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    // Bad usage exits with the shared usage code, like every sidetrace binary.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            e.print().context("printing help")?;
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => {
            let _ = e.print();
            return Ok(ExitCode::from(exit::USAGE as u8));
        }
    };
    match run(cli).await {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("\nsidetrace: {e}");
            Ok(ExitCode::from(e.exit_code() as u8))
        }
    }
}

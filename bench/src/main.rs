//! `sidetrace-bench`: the benchmark suite behind `make bench`.
//!
//! Model: every system under test is a separate process pinned with `taskset` to the "SUT"
//! CPU together with the upstream app (so "one vCPU shared with the upstream" is literal),
//! while this process (load generator, pacer thread) and the span sink run on the other CPU.
//! Targets are measured side by side in one run, in interleaved rounds (the order rotates every
//! round), and every table reports the median across rounds with the min–max spread. Timings
//! are figures for a human to read, never pass/fail checks: the only tests are unit tests of
//! the pure helpers in [`stats`] and the config generators.
//!
//! Subcommands: `all` (quick profile by default, `--full` for the long one), `http`, `memory`,
//! `export`, `h2`, `webhook`; hidden `upstream`, `relay`, `sink` run the peers.

mod envoy;
mod load;
mod procs;
mod scenarios;
mod servers;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Benchmarks of the sidetrace data plane and control plane, side by side with Envoy.
#[derive(Debug, Parser)]
#[command(name = "sidetrace-bench")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Every scenario; writes RESULTS.md.
    All(scenarios::Opts),
    /// Hop overhead: direct vs TCP relay vs sidetrace-proxy vs Envoy (tracer off/on).
    Http(scenarios::Opts),
    /// Anonymous memory idle, at 1,000 rps and with many idle keep-alive connections.
    Memory(scenarios::Opts),
    /// Span export to a real Zipkin; latency and memory with the collector down.
    Export(scenarios::Opts),
    /// HTTP/2 (h2c) unary through the proxy vs direct.
    H2(scenarios::Opts),
    /// Admission latency of the real sidetrace-injector over HTTPS.
    Webhook(scenarios::Opts),
    /// Peer: the upstream app.
    #[command(hide = true)]
    Upstream { listen: SocketAddr },
    /// Peer: plain TCP relay.
    #[command(hide = true)]
    Relay { listen: SocketAddr, to: SocketAddr },
    /// Peer: span sink.
    #[command(hide = true)]
    Sink { listen: SocketAddr },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (which, opts) = match cli.cmd {
        Cmd::Upstream { listen } => return servers::upstream(listen),
        Cmd::Relay { listen, to } => return servers::relay(listen, to),
        Cmd::Sink { listen } => return servers::sink(listen),
        Cmd::All(o) => (scenarios::Which::All, o),
        Cmd::Http(o) => (scenarios::Which::Http, o),
        Cmd::Memory(o) => (scenarios::Which::Memory, o),
        Cmd::Export(o) => (scenarios::Which::Export, o),
        Cmd::H2(o) => (scenarios::Which::H2, o),
        Cmd::Webhook(o) => (scenarios::Which::Webhook, o),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out: PathBuf = opts.out.clone();
    let report = rt.block_on(scenarios::run(which, opts))?;
    std::fs::write(&out, report)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

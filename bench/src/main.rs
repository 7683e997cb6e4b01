//! `sidetrace-bench`: the benchmark suite behind `make bench` (see the library docs).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use sidetrace_bench::{profile, scenarios, servers};

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
    /// Span export to a real Zipkin, OTLP/HTTP vs Zipkin v2 to a real Jaeger; latency and
    /// memory with the collector down.
    Export(scenarios::Opts),
    /// HTTP/2 (h2c) unary through the proxy vs direct.
    H2(scenarios::Opts),
    /// Admission latency of the real sidetrace-injector over HTTPS.
    Webhook(scenarios::Opts),
    /// Per-request instructions, heap allocations and syscalls of one hop (callgrind, dhat,
    /// strace), sidetrace-proxy vs the plain TCP relay; writes RESULTS-profile.md.
    Profile(profile::ProfileOpts),
    /// Parent inference on the outbound hop: header-less calls, the mode off vs on.
    Infer(scenarios::Opts),
    /// Peer: the upstream app.
    #[command(hide = true)]
    Upstream { listen: SocketAddr },
    /// Peer: plain TCP relay.
    #[command(hide = true)]
    Relay { listen: SocketAddr, to: SocketAddr },
    /// Peer: transparent TCP relay on the capture ports (sidecar position, netns bench).
    #[command(hide = true)]
    TransparentRelay {
        inbound: SocketAddr,
        outbound: SocketAddr,
        /// Runtime worker threads (1: a current-thread runtime).
        #[arg(long, default_value_t = 2)]
        workers: usize,
    },
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
        Cmd::TransparentRelay {
            inbound,
            outbound,
            workers,
        } => return servers::transparent_relay(inbound, outbound, workers),
        Cmd::Profile(o) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let out = o.out.clone();
            let report = rt.block_on(profile::run(o))?;
            std::fs::write(&out, report)?;
            eprintln!("wrote {}", out.display());
            return Ok(());
        }
        Cmd::All(o) => (scenarios::Which::All, o),
        Cmd::Http(o) => (scenarios::Which::Http, o),
        Cmd::Memory(o) => (scenarios::Which::Memory, o),
        Cmd::Export(o) => (scenarios::Which::Export, o),
        Cmd::H2(o) => (scenarios::Which::H2, o),
        Cmd::Webhook(o) => (scenarios::Which::Webhook, o),
        Cmd::Infer(o) => (scenarios::Which::Infer, o),
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

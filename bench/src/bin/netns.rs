//! `sidetrace-bench-netns`: latency through the full transparent path (iptables REDIRECT,
//! inbound and outbound sidetrace-proxy) in network-namespace pods, against the same topology
//! without sidecars, in interleaved rounds.
//!
//! Topology (the e2e harness, `sidetrace_e2e::netns`): client → front → service1 → service2,
//! each a demo app in its own namespace; with sidecars every meshed pod runs `sidetrace-init`
//! (real iptables) and the release `sidetrace-proxy` as uid 1337, spans to a Zipkin server.
//! Two paths: `GET service2/trace/2` (one inbound proxy) and `GET front/trace/1` (the whole
//! chain: five proxy traversals, three apps). Needs root; writes a Markdown section (default
//! bench/RESULTS-netns.md) that `sidetrace-bench all` embeds. Figures only.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use sidetrace_bench::load::{self, Client, Connector, Proto, Req};
use sidetrace_bench::stats::{Percentiles, Spread, spread_cell, us};
use sidetrace_e2e::netns::{Binaries, CollectorChoice, Front, Options, Pod, Topology, ns};

/// Transparent-path latency benchmark.
#[derive(Debug, Parser)]
struct Cli {
    /// Interleaved rounds.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 1.5)]
    secs: f64,
    /// Open-loop rate.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// sidetrace-proxy binary (default: target/release/sidetrace-proxy).
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// Output Markdown file.
    #[arg(long, default_value_os_t = root().join("bench/RESULTS-netns.md"))]
    out: PathBuf,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn connector(namespace: String) -> Connector {
    Arc::new(move |addr| {
        let namespace = namespace.clone();
        Box::pin(async move { ns::connect_in(&namespace, addr, Duration::from_secs(5)).await })
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut bins = match Binaries::find(CollectorChoice::Zipkin) {
        Ok(b) => b,
        Err(reason) => {
            std::fs::write(&cli.out, format!("Not measured: {reason}.\n"))?;
            eprintln!("netns bench: not measured: {reason}");
            return Ok(());
        }
    };
    // The proxy under test is the release build; the demo app too when one is built.
    let release = root().join("target/release");
    bins.proxy = cli
        .proxy_bin
        .clone()
        .unwrap_or_else(|| release.join("sidetrace-proxy"));
    let app_note = match [
        release.join("sidetrace-demo-app"),
        root().join("target/x86_64-unknown-linux-gnu/release/sidetrace-demo-app"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    {
        Some(app) => {
            bins.demo_app = app;
            "release"
        }
        None => "debug (no release build found; it is the same in both topologies)",
    };
    let result = run(&cli, &bins, app_note).await;
    // Never leave a stale section behind: a failed run says so in the file too.
    let text = match &result {
        Ok(t) => t.clone(),
        Err(e) => format!("Not measured: {e:#}\n"),
    };
    std::fs::write(&cli.out, &text)?;
    result?;
    eprintln!("wrote {}", cli.out.display());
    Ok(())
}

async fn run(cli: &Cli, bins: &Binaries, app_note: &str) -> Result<String> {
    let meshed = Topology::start(
        bins,
        Options {
            sidecars: true,
            front: Front::Sidetrace,
        },
    )
    .await
    .context("topology with sidecars")?;
    let plain = Topology::start(
        bins,
        Options {
            sidecars: false,
            front: Front::Sidetrace,
        },
    )
    .await
    .context("topology without sidecars")?;
    let paths = [
        (
            Pod::Service2,
            "/trace/2",
            "service2 /trace/2 (1 inbound proxy)",
        ),
        (
            Pod::Front,
            "/trace/1",
            "front /trace/1 → service1 → service2 (5 proxy traversals)",
        ),
    ];
    let topologies = [("no sidecars", &plain), ("sidetrace sidecars", &meshed)];
    // clients[path][topology]
    let mut clients = Vec::new();
    for (pod, _, _) in &paths {
        let mut row = Vec::new();
        for (_, t) in &topologies {
            row.push(
                Client::with_connector(Some(connector(t.ns(Pod::Client))), pod.app(), Proto::H1, 8)
                    .await?,
            );
        }
        clients.push(row);
    }
    let mut rounds: Vec<Vec<Vec<Percentiles>>> = vec![vec![Vec::new(); 2]; paths.len()];
    let mut errors = vec![vec![0u64; 2]; paths.len()];
    let dur = Duration::from_secs_f64(cli.secs);
    // Warm every path once (JIT of the Zipkin servers, connection pools of the apps).
    for (pi, (_, path, _)) in paths.iter().enumerate() {
        for c in &clients[pi] {
            let _ = load::open_loop(c, &Req::get(path), cli.rate, Duration::from_secs(2)).await;
        }
    }
    for round in 0..cli.rounds {
        for (pi, (_, path, _)) in paths.iter().enumerate() {
            let req = Req::get(path);
            for k in 0..2 {
                let ti = (k + round) % 2;
                let c = &clients[pi][ti];
                let _ = load::open_loop(c, &req, cli.rate, Duration::from_millis(300)).await;
                let mut run = load::open_loop(c, &req, cli.rate, dur).await;
                errors[pi][ti] += run.errors;
                rounds[pi][ti].push(Percentiles::of(&mut run.lat));
            }
        }
        eprintln!("  netns round {}/{}", round + 1, cli.rounds);
    }
    let mut out = format!(
        "Open loop at {} rps from the client pod (sockets opened inside its namespace), {} \
         rounds × {} s, interleaved; processes unpinned (the harness starts them). Demo app build: \
         {app_note}; proxy: {}; each topology has its own Zipkin \
         server. Added = sidecars minus no sidecars, per round.\n\n\
         | path | topology | p50 µs | p90 µs | p99 µs | added p50 µs | added p99 µs | errors |\n\
         |---|---|---|---|---|---|---|---|\n",
        cli.rate,
        cli.rounds,
        cli.secs,
        bins.proxy.display()
    );
    for (pi, (_, _, label)) in paths.iter().enumerate() {
        for (ti, (tname, _)) in topologies.iter().enumerate() {
            let r = &rounds[pi][ti];
            let sp = |f: fn(&Percentiles) -> u64| {
                Spread::of(&r.iter().map(|p| us(f(p))).collect::<Vec<_>>())
            };
            let added = |f: fn(&Percentiles) -> u64| {
                Spread::of(
                    &r.iter()
                        .zip(&rounds[pi][0])
                        .map(|(a, b)| us(f(a)) - us(f(b)))
                        .collect::<Vec<_>>(),
                )
            };
            let (a50, a99) = if ti == 0 {
                ("—".to_owned(), "—".to_owned())
            } else {
                (
                    spread_cell(added(|p| p.p50), 1),
                    spread_cell(added(|p| p.p99), 1),
                )
            };
            let _ = writeln!(
                out,
                "| {label} | {tname} | {} | {} | {} | {a50} | {a99} | {} |",
                spread_cell(sp(|p| p.p50), 1),
                spread_cell(sp(|p| p.p90), 1),
                spread_cell(sp(|p| p.p99), 1),
                errors[pi][ti]
            );
        }
    }
    drop(clients);
    drop(plain);
    drop(meshed);
    Ok(out)
}

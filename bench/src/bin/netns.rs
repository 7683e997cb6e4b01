//! `sidetrace-bench-netns`: latency and sidecar CPU on the path users run — transparent
//! interception with real iptables — with no sidecars, a plain TCP relay, sidetrace and Envoy
//! configured as Istio's sidecar, all in the same position, in one interleaved run.
//!
//! Topology (the e2e harness, `sidetrace_e2e::netns`): client → front → service1 → service2,
//! each a demo app in its own namespace. In every meshed pod `sidetrace-init` installs the
//! webhook's rules and the sidecar under test runs as uid 1337 on both capture ports:
//! - sidetrace: the release `sidetrace-proxy`, spans as Zipkin v2 JSON, RED metrics on (its
//!   defaults);
//! - Envoy: original-destination listeners, HTTP connection manager with the Zipkin tracer at
//!   100 %, ORIGINAL_DST clusters, inbound from 127.0.0.6 (`sidetrace_e2e::netns::envoy_sidecar`);
//! - TCP relay: `sidetrace-bench transparent-relay`, SO_ORIGINAL_DST and copy_bidirectional.
//!
//! Each topology has its own collector (Zipkin). Two paths: `GET service2/trace/2` (one inbound
//! sidecar) and `GET front/trace/1` (the whole chain: five sidecar traversals, three apps).
//! Placement as in the loopback bench: this process (the load generator) and the collectors on
//! CPU 0, apps and sidecars on CPU 1, one worker per sidecar. Needs root; writes a Markdown
//! section (default bench/RESULTS-netns.md) that `sidetrace-bench all` embeds. Figures only.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use sidetrace_bench::load::{self, Client, Connector, Proto, Req};
use sidetrace_bench::procs;
use sidetrace_bench::stats::{Percentiles, Spread, cell, ratio, spread_cell, us};
use sidetrace_contract::defaults;
use sidetrace_e2e::netns::{
    Binaries, CollectorChoice, Front, Options, Pod, Program, Sidecar, Topology, ns,
};

/// Transparent-path benchmark.
#[derive(Debug, Parser)]
struct Cli {
    /// Interleaved rounds.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// Open-loop rates (requests per second), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [500.0, 1000.0])]
    rates: Vec<f64>,
    /// sidetrace-proxy binary (default: target/release/sidetrace-proxy).
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// A second sidetrace-proxy build measured in the same run (before/after comparisons).
    #[arg(long)]
    baseline_proxy_bin: Option<PathBuf>,
    /// Worker threads of every sidecar (proxy `--worker-threads`, Envoy `--concurrency`,
    /// relay runtime); all sidecars and apps share CPU 1, so more would only contend.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Where the spans go: `sink` (a receiver that only counts them, as the loopback bench
    /// uses) or `zipkin` (the real server, whose JVM ingest competes with the load generator).
    #[arg(long, value_enum, default_value_t = SpanReceiver::Sink)]
    collector: SpanReceiver,
    /// Leave Envoy out even when it is installed.
    #[arg(long)]
    no_envoy: bool,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SpanReceiver {
    Sink,
    Zipkin,
}

/// How the report names the topology of `--baseline-proxy-bin`.
const BASELINE_LABEL: &str = "sidetrace sidecars, baseline build";

/// CPU for the load generator and the collectors; the pods get the other.
const GENERATOR_CPU: &str = "0";
const PODS_CPU: &str = "1";

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
        None => "debug (no release build found; it is the same in every topology)",
    };
    // The relay is this crate's own binary (a hidden subcommand); it sits beside this one.
    let me = std::env::current_exe()?;
    let bench_bin = me
        .parent()
        .map(|d| d.join("sidetrace-bench"))
        .filter(|p| p.is_file())
        .context("sidetrace-bench is not built next to sidetrace-bench-netns")?;
    if cli.collector == SpanReceiver::Sink {
        bins.collector = sidetrace_e2e::collector::Kind::CountingSink {
            program: bench_bin.clone(),
            args: vec![
                "sink".into(),
                format!("0.0.0.0:{}", sidetrace_e2e::collector::ZIPKIN_PORT),
            ],
        };
    }
    bins.relay = Some(Program {
        path: bench_bin,
        args: vec![
            "transparent-relay".into(),
            format!("0.0.0.0:{}", defaults::INBOUND_CAPTURE_PORT),
            format!("0.0.0.0:{}", defaults::OUTBOUND_CAPTURE_PORT),
            "--workers".into(),
            cli.workers.to_string(),
        ],
    });
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

/// One measured run.
struct Sample {
    lat: Percentiles,
    /// Sidecar CPU (all sidecars of the topology) per 1,000 requests, ms.
    cpu_ms_per_1k: f64,
    /// The collector's CPU per 1,000 requests, ms (on the load generator's CPU).
    collector_ms_per_1k: f64,
    achieved_rps: f64,
    errors: u64,
}

async fn run(cli: &Cli, bins: &Binaries, app_note: &str) -> Result<String> {
    procs::pin_self(GENERATOR_CPU)?;
    // (label, sidecar, binaries) of every topology; the first is the baseline of "added".
    let mut runs: Vec<(String, Sidecar, Binaries)> =
        [Sidecar::None, Sidecar::TcpRelay, Sidecar::Sidetrace]
            .into_iter()
            .map(|s| (s.label().to_owned(), s, bins.clone()))
            .collect();
    if let Some(before) = &cli.baseline_proxy_bin {
        let mut b = bins.clone();
        b.proxy = before.clone();
        runs.push((BASELINE_LABEL.to_owned(), Sidecar::Sidetrace, b));
    }
    let envoy_note = if cli.no_envoy {
        "left out (--no-envoy)".to_owned()
    } else if let Some(e) = &bins.envoy {
        runs.push((
            Sidecar::Envoy.label().to_owned(),
            Sidecar::Envoy,
            bins.clone(),
        ));
        envoy_version(e)
    } else {
        "not installed (`e2e/peers.sh envoy`): left out".to_owned()
    };
    let mut topologies = Vec::new();
    for (label, sidecar, bins) in &runs {
        let t = Topology::start(
            bins,
            Options {
                sidecar: *sidecar,
                front: Front::Sidetrace,
                sidecar_workers: Some(cli.workers),
                ..Options::default()
            },
        )
        .await
        .with_context(|| format!("topology with {label}"))?;
        for pid in t.pids() {
            procs::pin(pid, PODS_CPU)?;
        }
        if let Some(pid) = t.collector().pid() {
            procs::pin(pid, GENERATOR_CPU)?;
        }
        topologies.push((*sidecar, t));
    }
    let paths = [
        (
            Pod::Service2,
            "/trace/2",
            "service2 /trace/2 (1 inbound sidecar)",
        ),
        (
            Pod::Front,
            "/trace/1",
            "front /trace/1 → service1 → service2 (5 sidecar traversals)",
        ),
    ];
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
    // Warm every path (the JVMs of the collectors, the apps' pools), then check that the
    // tracing sidecars really trace: their spans are in their collector.
    for (pi, (_, path, _)) in paths.iter().enumerate() {
        for c in &clients[pi] {
            let _ = load::open_loop(c, &Req::get(path), 200.0, Duration::from_secs(2)).await;
        }
    }
    for (sidecar, t) in &topologies {
        if matches!(sidecar, Sidecar::Sidetrace | Sidecar::Envoy) {
            let received = match cli.collector {
                SpanReceiver::Sink => t.collector().span_count().await? > 0,
                SpanReceiver::Zipkin => !t
                    .collector()
                    .traces(Pod::Service2.service_name(), 5)
                    .await?
                    .is_empty(),
            };
            if !received {
                bail!(
                    "{}: no span reached the collector after the warm-up",
                    sidecar.label()
                );
            }
        }
    }
    let n = topologies.len();
    // samples[path][rate][topology]
    let mut samples: Vec<Vec<Vec<Vec<Sample>>>> = (0..paths.len())
        .map(|_| {
            (0..cli.rates.len())
                .map(|_| (0..n).map(|_| Vec::new()).collect())
                .collect()
        })
        .collect();
    let dur = Duration::from_secs_f64(cli.secs);
    for round in 0..cli.rounds {
        for (pi, (_, path, _)) in paths.iter().enumerate() {
            let req = Req::get(path);
            for (ri, &rate) in cli.rates.iter().enumerate() {
                for k in 0..n {
                    let ti = (k + round) % n;
                    let c = &clients[pi][ti];
                    let t = &topologies[ti].1;
                    let _ = load::open_loop(c, &req, rate, Duration::from_millis(300)).await;
                    let pids = t.sidecar_pids();
                    let collector = t.collector().pid().unwrap_or(0);
                    let cpu0: u64 = pids.iter().map(|&p| procs::cpu_ns(p)).sum();
                    let col0 = procs::cpu_ns(collector);
                    let mut run = load::open_loop(c, &req, rate, dur).await;
                    let cpu1: u64 = pids.iter().map(|&p| procs::cpu_ns(p)).sum();
                    let col1 = procs::cpu_ns(collector);
                    let per_1k = |ns: u64| ns as f64 / 1e6 / run.done.max(1) as f64 * 1000.0;
                    samples[pi][ri][ti].push(Sample {
                        lat: Percentiles::of(&mut run.lat),
                        cpu_ms_per_1k: per_1k(cpu1.saturating_sub(cpu0)),
                        collector_ms_per_1k: per_1k(col1.saturating_sub(col0)),
                        achieved_rps: run.done as f64 / run.elapsed.as_secs_f64(),
                        errors: run.errors,
                    });
                }
            }
        }
        eprintln!("  netns round {}/{}", round + 1, cli.rounds);
    }
    for (_, t) in &mut topologies {
        t.check_alive()?;
    }
    let labels: Vec<&str> = runs.iter().map(|(l, _, _)| l.as_str()).collect();
    let report = report(
        cli,
        &paths.map(|p| p.2),
        &labels,
        &samples,
        app_note,
        &envoy_note,
        bins,
    );
    drop(clients);
    drop(topologies);
    Ok(report)
}

fn envoy_version(bin: &Path) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .find(|w| {
                    w.contains('/') && w.chars().next().is_some_and(|c| c.is_ascii_hexdigit())
                })
                .and_then(|w| w.split('/').nth(1).map(str::to_owned))
        })
        .map_or_else(|| "Envoy".to_owned(), |v| format!("Envoy {v}"))
}

fn report(
    cli: &Cli,
    paths: &[&str],
    labels: &[&str],
    samples: &[Vec<Vec<Vec<Sample>>>],
    app_note: &str,
    envoy_note: &str,
    bins: &Binaries,
) -> String {
    let mut out = format!(
        "Open loop from the client pod (sockets opened inside its namespace), {} rounds × {} s \
         per rate, every topology measured in every round (the order rotates). The load \
         generator (this process) and the collectors on CPU 0; apps and sidecars on CPU 1, \
         {} worker per sidecar. Real iptables (`sidetrace-init`'s rules) in every topology with \
         a sidecar; the sidecar runs as uid 1337 on both capture ports. Demo app build: \
         {app_note}; proxy: {}{}; Envoy: {envoy_note}. Each topology has its own span receiver ({}); \
         sidetrace and Envoy trace every request. Added = topology minus no sidecars, per \
         round; sidecar CPU = CPU time of all the topology's sidecars over the run, per 1,000 \
         requests; collector CPU = its span receiver's, which shares CPU 0 with the load \
         generator (span ingest is the collector's cost, not the sidecar's, but it runs \
         beside the generator). Cells: median of rounds (min–max).\n\n",
        cli.rounds,
        cli.secs,
        cli.workers,
        bins.proxy.display(),
        cli.baseline_proxy_bin
            .as_ref()
            .map(|b| format!(" (baseline build: {})", b.display()))
            .unwrap_or_default(),
        bins.collector.label(),
    );
    out.push_str(
        "| path | rate | topology | p50 µs | p99 µs | added p50 µs | added p99 µs | sidecar CPU ms/1k | collector CPU ms/1k | achieved rps | errors |\n\
         |---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    let spread = |v: Vec<f64>| Spread::of(&v);
    for (pi, path) in paths.iter().enumerate() {
        for (ri, rate) in cli.rates.iter().enumerate() {
            let base = &samples[pi][ri][0];
            for (ti, label) in labels.iter().enumerate() {
                let s = &samples[pi][ri][ti];
                let f =
                    |g: fn(&Percentiles) -> u64| spread(s.iter().map(|x| us(g(&x.lat))).collect());
                let added = |g: fn(&Percentiles) -> u64| {
                    spread(
                        s.iter()
                            .zip(base)
                            .map(|(a, b)| us(g(&a.lat)) - us(g(&b.lat)))
                            .collect(),
                    )
                };
                let (a50, a99, cpu) = if ti == 0 {
                    ("—".to_owned(), "—".to_owned(), "—".to_owned())
                } else {
                    (
                        spread_cell(added(|p| p.p50), 1),
                        spread_cell(added(|p| p.p99), 1),
                        spread_cell(spread(s.iter().map(|x| x.cpu_ms_per_1k).collect()), 1),
                    )
                };
                let _ = writeln!(
                    out,
                    "| {path} | {rate} | {label} | {} | {} | {a50} | {a99} | {cpu} | {} | {} | {} |",
                    spread_cell(f(|p| p.p50), 1),
                    spread_cell(f(|p| p.p99), 1),
                    cell(
                        spread(s.iter().map(|x| x.collector_ms_per_1k).collect()).median,
                        1
                    ),
                    cell(spread(s.iter().map(|x| x.achieved_rps).collect()).median, 0),
                    s.iter().map(|x| x.errors).sum::<u64>(),
                );
            }
        }
    }
    // The comparison the issue asks for: sidetrace against the relay floor and against Envoy.
    let find = |l: &str| labels.iter().position(|x| *x == l);
    let (relay, st, envoy) = (
        find(Sidecar::TcpRelay.label()),
        find(Sidecar::Sidetrace.label()),
        find(Sidecar::Envoy.label()),
    );
    if let (Some(relay), Some(st)) = (relay, st) {
        out.push_str(
            "\n| path | rate | relay added p50 µs | sidetrace added p50 µs | Envoy added p50 µs | sidetrace / relay p50 | sidetrace / Envoy p50 | relay CPU ms/1k | sidetrace CPU ms/1k | Envoy CPU ms/1k | sidetrace / relay CPU | sidetrace / Envoy CPU |\n\
             |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
        );
        for (pi, path) in paths.iter().enumerate() {
            for (ri, rate) in cli.rates.iter().enumerate() {
                let base = &samples[pi][ri][0];
                let added50 = |ti: usize| {
                    spread(
                        samples[pi][ri][ti]
                            .iter()
                            .zip(base)
                            .map(|(a, b)| us(a.lat.p50) - us(b.lat.p50))
                            .collect(),
                    )
                    .median
                };
                let cpu = |ti: usize| {
                    spread(
                        samples[pi][ri][ti]
                            .iter()
                            .map(|x| x.cpu_ms_per_1k)
                            .collect(),
                    )
                    .median
                };
                let (r50, s50, rc, sc) = (added50(relay), added50(st), cpu(relay), cpu(st));
                let (e50, ec) = envoy.map_or((f64::NAN, f64::NAN), |e| (added50(e), cpu(e)));
                let _ = writeln!(
                    out,
                    "| {path} | {rate} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    cell(r50, 1),
                    cell(s50, 1),
                    cell(e50, 1),
                    cell(ratio(s50, r50), 2),
                    cell(ratio(s50, e50), 2),
                    cell(rc, 1),
                    cell(sc, 1),
                    cell(ec, 1),
                    cell(ratio(sc, rc), 2),
                    cell(ratio(sc, ec), 2),
                );
            }
        }
    }
    out
}

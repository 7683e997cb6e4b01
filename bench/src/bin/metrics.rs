//! `sidetrace-bench-metrics`: the cost of one RED observation on the proxy's request path, the
//! proxy's own plain-atomics series (`sidetrace_proxy::red`) against the Prometheus project's
//! `prometheus-client` crate (a `Family` of `HistogramWithExemplars` plus
//! `CounterWithExemplar`, what the proxy would use otherwise), with and without an exemplar, on
//! one thread and on two threads hitting the same series. Writes a Markdown section (default
//! bench/RESULTS-metrics.md) that `sidetrace-bench all` embeds. Figures only, medians of
//! interleaved rounds.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use clap::Parser;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::exemplar::{CounterWithExemplar, HistogramWithExemplars};
use prometheus_client::metrics::family::Family;
use sidetrace_proxy::red::{LATENCY_BUCKETS, Observation, Red};
use sidetrace_trace::{Direction, TraceId};

/// Per-observation cost of the RED metrics.
#[derive(Debug, Parser)]
struct Cli {
    /// Interleaved rounds.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Observations per thread per round.
    #[arg(long, default_value_t = 500_000)]
    n: usize,
    /// Output Markdown file.
    #[arg(long, default_value_os_t = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("RESULTS-metrics.md"))]
    out: PathBuf,
}

/// A service's operations, so lookups hit a map of realistic size.
const OPERATIONS: [&str; 8] = [
    "GET /orders/{id}",
    "POST /orders",
    "checkStock",
    "GET /healthz",
    "GET service2:8000/trace/{id}",
    "PUT /cart/{id}",
    "DELETE /cart/{id}",
    "GET /",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SeriesLabels {
    direction: &'static str,
    operation: String,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TraceLabel {
    trace_id: String,
}

/// The `prometheus-client` equivalent of [`Red`].
struct Library {
    requests: Family<SeriesLabels, CounterWithExemplar<TraceLabel>>,
    latency: Family<SeriesLabels, HistogramWithExemplars<TraceLabel>>,
}

impl Library {
    fn new() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                HistogramWithExemplars::new(LATENCY_BUCKETS.into_iter())
            }),
        }
    }

    fn observe(&self, op: &str, latency: Duration, trace: Option<TraceId>, now: SystemTime) {
        let labels = SeriesLabels {
            direction: "inbound",
            operation: op.to_owned(),
            status_class: "2xx",
        };
        let ex = trace.map(|t| TraceLabel {
            trace_id: t.to_hex_32(),
        });
        self.latency
            .get_or_create(&labels)
            .observe(latency.as_secs_f64(), ex.clone(), Some(now));
        self.requests
            .get_or_create(&labels)
            .inc_by(1, ex, Some(now));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    Atomics,
    Library,
}

/// Nanoseconds per observation of `threads` threads doing `n` observations each.
fn run(which: Impl, threads: usize, n: usize, exemplars: bool) -> f64 {
    let red = Arc::new(Red::default());
    let lib = Arc::new(Library::new());
    let trace = TraceId::from_hex("463ac35c9f6413ad48485a3953bb6124");
    let now = SystemTime::now();
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (red, lib) = (Arc::clone(&red), Arc::clone(&lib));
            s.spawn(move || {
                for i in 0..n {
                    let op = OPERATIONS[(i + t) % OPERATIONS.len()];
                    let latency = Duration::from_micros(200 + (i % 4000) as u64);
                    let sampled = if exemplars { trace } else { None };
                    match which {
                        Impl::Atomics => red.observe(
                            &Observation {
                                direction: Direction::Inbound,
                                operation: op,
                                class: 1,
                                latency,
                                sampled_trace: sampled,
                            },
                            now,
                        ),
                        Impl::Library => lib.observe(op, latency, sampled, now),
                    }
                }
            });
        }
    });
    start.elapsed().as_nanos() as f64 / (n * threads) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let cells: Vec<(Impl, usize, bool)> = [Impl::Atomics, Impl::Library]
        .into_iter()
        .flat_map(|i| {
            [(1, false), (1, true), (2, false), (2, true)]
                .into_iter()
                .map(move |(t, e)| (i, t, e))
        })
        .collect();
    let mut results = vec![Vec::new(); cells.len()];
    for round in 0..cli.rounds {
        // Rotate the order every round so drift on a shared machine spreads over all cells.
        for k in 0..cells.len() {
            let c = (k + round) % cells.len();
            let (i, t, e) = cells[c];
            results[c].push(run(i, t, cli.n, e));
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "One RED observation (request counter + latency histogram, labels direction/operation/\
         status_class, {} operations), ns per observation, median of {} interleaved rounds of \
         {} observations per thread. `sidetrace` is `sidetrace_proxy::red` (one bucket \
         increment + the sum under a map read lock; the exemplar under a per-series mutex); \
         `prometheus-client` 0.26 is a `Family` of `HistogramWithExemplars` and \
         `CounterWithExemplar` (a write lock per observation, owned label strings per lookup).\n",
        OPERATIONS.len(),
        cli.rounds,
        cli.n
    );
    out.push_str("| implementation | threads | exemplar | ns/observation |\n|---|---|---|---|\n");
    for (c, (i, t, e)) in cells.iter().enumerate() {
        let name = match i {
            Impl::Atomics => "sidetrace (plain atomics)",
            Impl::Library => "prometheus-client",
        };
        let _ = writeln!(
            out,
            "| {name} | {t} | {} | {:.0} |",
            if *e { "yes" } else { "no" },
            median(results[c].clone())
        );
    }
    print!("{out}");
    std::fs::write(&cli.out, out)?;
    Ok(())
}

//! The scenarios and the Markdown they render. Each scenario starts its own processes (killed
//! on drop), measures its targets in interleaved rounds and returns a section of RESULTS.md.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;

use crate::envoy::{self, EnvoyPorts};
use crate::load::{self, Client, Proto, Req, Run};
use crate::procs::{self, Proc, lo};
use crate::published::{self, Measure};
use crate::stats::{self, Percentiles, Spread, cell, ratio, spread_cell, us};

/// Options shared by every scenario subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// The long profile (more rounds, longer runs, minutes with the collector down).
    #[arg(long)]
    pub full: bool,
    /// Rounds per scenario (default 5 quick, 7 full).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Measured seconds per open-loop run (default 1.5 quick, 8 full).
    #[arg(long)]
    pub secs: Option<f64>,
    /// Open-loop rates for the HTTP/1.1 scenario, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![500.0, 1000.0, 5000.0])]
    pub rates: Vec<f64>,
    /// Seconds the proxy runs with its collector down (default 40 quick, 240 full).
    #[arg(long)]
    pub down_secs: Option<u64>,
    /// Idle keep-alive connections for the memory scenario (capped by the open-files limit).
    #[arg(long, default_value_t = 10_000)]
    pub idle_conns: usize,
    /// Output file (default: bench/RESULTS.md in the workspace).
    #[arg(long, default_value_os_t = procs::workspace_root().join("bench/RESULTS.md"))]
    pub out: PathBuf,
    /// sidetrace-proxy binary (default: target/release/sidetrace-proxy).
    #[arg(long)]
    pub proxy_bin: Option<PathBuf>,
    /// A second sidetrace-proxy binary (an earlier build) measured beside the first as
    /// `sidetrace-baseline` in the HTTP/1.1 and memory scenarios: before/after in one run.
    #[arg(long)]
    pub baseline_proxy_bin: Option<PathBuf>,
    /// sidetrace-proxy exports OTLP/HTTP (protobuf) instead of Zipkin v2 JSON in the HTTP/1.1
    /// and memory scenarios (the sink answers both).
    #[arg(long)]
    pub otlp: bool,
    /// sidetrace-injector binary (default: target/release/sidetrace-injector).
    #[arg(long)]
    pub injector_bin: Option<PathBuf>,
    /// Envoy binary (default: $SIDETRACE_CACHE/bin/envoy).
    #[arg(long)]
    pub envoy_bin: Option<PathBuf>,
    /// Zipkin server jar (default: $SIDETRACE_CACHE/bin/zipkin.jar).
    #[arg(long)]
    pub zipkin_jar: Option<PathBuf>,
}

/// Which scenarios to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Everything.
    All,
    /// HTTP/1.1 hop overhead and throughput.
    Http,
    /// Memory.
    Memory,
    /// Span export.
    Export,
    /// HTTP/2.
    H2,
    /// Admission webhook.
    Webhook,
    /// Parent inference on the outbound hop, off vs on.
    Infer,
}

/// Resolved profile and environment.
struct Env {
    exe: PathBuf,
    proxy: PathBuf,
    baseline_proxy: Option<PathBuf>,
    /// Collector path of the sink the HTTP/1.1 and memory scenarios export to.
    span_path: &'static str,
    injector: PathBuf,
    envoy: Option<PathBuf>,
    zipkin: Option<PathBuf>,
    jaeger: Option<PathBuf>,
    tmp: PathBuf,
    gen_cpu: String,
    sut_cpu: String,
    rounds: usize,
    secs: f64,
    warm: f64,
    rates: Vec<f64>,
    down_secs: u64,
    idle_conns: usize,
    nofile: u64,
    commands: Mutex<Vec<String>>,
    /// Ratios to Envoy+Zipkin that go next to linkerd2-proxy's published ones.
    ours: Mutex<Vec<published::Ours>>,
}

impl Env {
    /// Keeps a ratio for the published-reference table.
    fn compare(&self, measure: Measure, label: &str, ratio: f64) {
        if let Ok(mut o) = self.ours.lock() {
            o.push(published::Ours {
                measure,
                label: label.to_owned(),
                ratio,
            });
        }
    }

    fn record(&self, p: &Proc) {
        if let Ok(mut c) = self.commands.lock() {
            // Ports differ between starts; keep the first command line of each kind.
            if !c.iter().any(|x| x.starts_with(&format!("{}: ", p.name))) {
                c.push(format!("{}: {}", p.name, p.cmdline));
            }
        }
    }

    fn spawn(&self, name: &str, cpus: &str, program: &Path, args: &[String]) -> Result<Proc> {
        self.spawn_env(name, cpus, program, args, &[])
    }

    fn spawn_env(
        &self,
        name: &str,
        cpus: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<Proc> {
        let log = self.tmp.join(format!("{name}.log"));
        let p = Proc::spawn(name, cpus, program, args, env, Some(&log))?;
        self.record(&p);
        Ok(p)
    }

    fn dur(&self) -> Duration {
        Duration::from_secs_f64(self.secs)
    }

    fn warm_dur(&self) -> Duration {
        Duration::from_secs_f64(self.warm)
    }
}

/// A system under test: an address and the processes whose CPU and memory it costs.
struct Sut {
    name: String,
    addr: SocketAddr,
    procs: Vec<Proc>,
    admin: Option<u16>,
}

impl Sut {
    fn cpu_ns(&self) -> u64 {
        self.procs.iter().map(Proc::cpu_ns).sum()
    }

    fn rss_anon(&self) -> u64 {
        self.procs.iter().map(Proc::rss_anon).sum()
    }

    fn check(&mut self) -> Result<()> {
        for p in &mut self.procs {
            p.check_alive()?;
        }
        Ok(())
    }
}

fn start_upstream(env: &Env) -> Result<(Proc, u16)> {
    let port = procs::free_port()?;
    let p = env.spawn(
        "upstream",
        &env.sut_cpu,
        &env.exe,
        &["upstream".to_owned(), lo(port).to_string()],
    )?;
    procs::wait_port(lo(port), Duration::from_secs(10))?;
    Ok((p, port))
}

fn start_sink(env: &Env) -> Result<(Proc, u16)> {
    let port = procs::free_port()?;
    let p = env.spawn(
        "sink",
        &env.gen_cpu,
        &env.exe,
        &["sink".to_owned(), lo(port).to_string()],
    )?;
    procs::wait_port(lo(port), Duration::from_secs(10))?;
    Ok((p, port))
}

fn direct(up: u16) -> Sut {
    Sut {
        name: "direct".to_owned(),
        addr: lo(up),
        procs: Vec::new(),
        admin: None,
    }
}

fn start_relay(env: &Env, up: u16) -> Result<Sut> {
    let port = procs::free_port()?;
    let p = env.spawn(
        "tcp-relay",
        &env.sut_cpu,
        &env.exe,
        &["relay".to_owned(), lo(port).to_string(), lo(up).to_string()],
    )?;
    procs::wait_port(lo(port), Duration::from_secs(10))?;
    Ok(Sut {
        name: "tcp-relay".to_owned(),
        addr: lo(port),
        procs: vec![p],
        admin: None,
    })
}

/// Which of the proxy's listeners a scenario loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// Requests to the pod (SERVER spans).
    Inbound,
    /// The app's calls (CLIENT spans).
    Outbound,
}

/// Command line of sidetrace-proxy in explicit mode on loopback: `ports` are the inbound,
/// outbound and admin ports; `listener` forwards to `upstream`; every request is traced
/// (sampling 1) and exported to `collector`; one worker thread.
pub fn proxy_args(
    ports: [u16; 3],
    listener: Listener,
    upstream: SocketAddr,
    collector: &str,
    max_connections: usize,
) -> Vec<String> {
    let [inb, outb, admin] = ports;
    [
        "--listen-address",
        "127.0.0.1",
        "--admin-address",
        "127.0.0.1",
        "--inbound-port",
        &inb.to_string(),
        "--outbound-port",
        &outb.to_string(),
        "--admin-port",
        &admin.to_string(),
        match listener {
            Listener::Inbound => "--inbound-forward-to",
            Listener::Outbound => "--outbound-forward-to",
        },
        &upstream.to_string(),
        "--collector",
        collector,
        "--sampling",
        "1",
        "--service-name",
        "bench",
        "--worker-threads",
        "1",
        "--max-connections",
        &max_connections.to_string(),
        "--log-level",
        "error",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// sidetrace-proxy in explicit mode: inbound listener forwarding to the upstream, tracing
/// every request (sampling 1) to `collector`, one worker thread, plus `extra` flags.
fn start_proxy(env: &Env, name: &str, up: u16, collector: &str, extra: &[&str]) -> Result<Sut> {
    start_proxy_on(
        env,
        name,
        &env.proxy,
        up,
        collector,
        Listener::Inbound,
        extra,
    )
}

/// [`start_proxy`] with another sidetrace-proxy binary.
fn start_proxy_bin(
    env: &Env,
    name: &str,
    bin: &Path,
    up: u16,
    collector: &str,
    extra: &[&str],
) -> Result<Sut> {
    start_proxy_on(env, name, bin, up, collector, Listener::Inbound, extra)
}

/// [`start_proxy_bin`] on `listener`.
fn start_proxy_on(
    env: &Env,
    name: &str,
    bin: &Path,
    up: u16,
    collector: &str,
    listener: Listener,
    extra: &[&str],
) -> Result<Sut> {
    let (inb, outb, admin) = (
        procs::free_port()?,
        procs::free_port()?,
        procs::free_port()?,
    );
    // Above the memory scenario's idle connections: the default cap (sized for a 64 Mi
    // container) would close most of them.
    let mut args = proxy_args(
        [inb, outb, admin],
        listener,
        lo(up),
        collector,
        env.idle_conns + 1000,
    );
    // An `--option value` in `extra` replaces the default one (the proxy refuses repeats).
    for pair in extra.chunks(2) {
        if let [flag, _] = pair
            && flag.starts_with("--")
            && let Some(i) = args.iter().position(|a| a == flag)
        {
            args.drain(i..i + 2);
        }
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let p = env.spawn(name, &env.sut_cpu, bin, &args)?;
    let listen = match listener {
        Listener::Inbound => inb,
        Listener::Outbound => outb,
    };
    procs::wait_port(lo(listen), Duration::from_secs(10))?;
    procs::wait_port(lo(admin), Duration::from_secs(10))?;
    Ok(Sut {
        name: name.to_owned(),
        addr: lo(listen),
        procs: vec![p],
        admin: Some(admin),
    })
}

/// Adds `sidetrace-baseline` (the `--baseline-proxy-bin` build) to `suts`, when asked for.
fn push_baseline(env: &Env, suts: &mut Vec<Sut>, up: u16, collector: &str) -> Result<()> {
    if let Some(bin) = &env.baseline_proxy {
        suts.push(start_proxy_bin(
            env,
            "sidetrace-baseline",
            bin,
            up,
            collector,
            &[],
        )?);
    }
    Ok(())
}

/// Envoy as the same reverse proxy, one worker (`--concurrency 1`), tracer on or off.
fn start_envoy(env: &Env, name: &str, up: u16, collector: u16, tracing: bool) -> Result<Sut> {
    let Some(bin) = &env.envoy else {
        bail!("envoy binary not found (e2e/peers.sh envoy)");
    };
    let ports = EnvoyPorts {
        listen: procs::free_port()?,
        admin: procs::free_port()?,
        upstream: up,
        collector,
    };
    let cfg = env.tmp.join(format!("{name}.yaml"));
    std::fs::write(&cfg, envoy::config(ports, tracing))?;
    let args: Vec<String> = vec![
        "-c".into(),
        cfg.display().to_string(),
        "--concurrency".into(),
        "1".into(),
        "--disable-hot-restart".into(),
        "--log-level".into(),
        "error".into(),
    ];
    let p = env.spawn(name, &env.sut_cpu, bin, &args)?;
    procs::wait_port(lo(ports.listen), Duration::from_secs(30))
        .with_context(|| format!("{name} did not start; see {}", env.tmp.display()))?;
    Ok(Sut {
        name: name.to_owned(),
        addr: lo(ports.listen),
        procs: vec![p],
        admin: Some(ports.admin),
    })
}

/// GET over a fresh connection (admin endpoints, the sink's count); body as text.
async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nhost: localhost\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        Ok::<_, anyhow::Error>(
            text.split_once("\r\n\r\n")
                .map(|x| x.1.to_owned())
                .unwrap_or_default(),
        )
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .context("admin GET timed out")?
}

async fn proxy_metric(sut: &Sut, name: &str) -> f64 {
    match sut.admin {
        Some(a) => http_get(lo(a), "/metrics")
            .await
            .map_or(f64::NAN, |t| stats::prom_sum(&t, name)),
        None => f64::NAN,
    }
}

/// Per-(scenario cell, target) figures across rounds.
#[derive(Debug, Default)]
struct Cell {
    rounds: Vec<Percentiles>,
    pooled: Vec<u64>,
    cpu_per_1k_ms: Vec<f64>,
    achieved_rps: Vec<f64>,
    errors: u64,
}

impl Cell {
    fn push(&mut self, mut run: Run, cpu_ns: Option<u64>) {
        let p = Percentiles::of(&mut run.lat);
        if let Some(ns) = cpu_ns
            && run.done > 0
        {
            self.cpu_per_1k_ms
                .push(ns as f64 / 1e6 / (run.done as f64 / 1000.0));
        }
        self.achieved_rps
            .push(run.done as f64 / run.elapsed.as_secs_f64().max(1e-9));
        self.errors += run.errors;
        self.pooled.extend_from_slice(&run.lat);
        self.rounds.push(p);
    }

    fn spread(&self, f: impl Fn(&Percentiles) -> u64) -> Spread {
        Spread::of(&self.rounds.iter().map(|p| us(f(p))).collect::<Vec<_>>())
    }

    /// Per-round difference to `base` (same round), µs.
    fn added(&self, base: &Cell, f: impl Fn(&Percentiles) -> u64) -> Spread {
        Spread::of(
            &self
                .rounds
                .iter()
                .zip(&base.rounds)
                .map(|(a, b)| us(f(a)) - us(f(b)))
                .collect::<Vec<_>>(),
        )
    }

    fn pooled(&self) -> Percentiles {
        let mut v = self.pooled.clone();
        Percentiles::of(&mut v)
    }
}

const LAT_HEADER: &str = "| target | p50 µs | p90 µs | p99 µs | p99.9 µs (pooled) | max µs (pooled) | added p50 µs | added p99 µs | CPU ms / 1k req | errors |\n|---|---|---|---|---|---|---|---|---|---|\n";

fn lat_row(out: &mut String, name: &str, c: &Cell, base: Option<&Cell>) {
    let pooled = c.pooled();
    let (a50, a99) = match base {
        Some(b) => (
            spread_cell(c.added(b, |p| p.p50), 1),
            spread_cell(c.added(b, |p| p.p99), 1),
        ),
        None => ("—".to_owned(), "—".to_owned()),
    };
    let cpu = if c.cpu_per_1k_ms.is_empty() {
        "—".to_owned()
    } else {
        spread_cell(Spread::of(&c.cpu_per_1k_ms), 1)
    };
    let _ = writeln!(
        out,
        "| {name} | {} | {} | {} | {} | {} | {a50} | {a99} | {cpu} | {} |",
        spread_cell(c.spread(|p| p.p50), 1),
        spread_cell(c.spread(|p| p.p90), 1),
        spread_cell(c.spread(|p| p.p99), 1),
        cell(us(pooled.p999), 0),
        cell(us(pooled.max), 0),
        c.errors
    );
}

/// Runs the chosen scenarios and returns the whole RESULTS.md text.
pub async fn run(which: Which, opts: Opts) -> Result<String> {
    let nofile = procs::raise_nofile().unwrap_or(0);
    let nproc = std::fs::read_to_string("/proc/cpuinfo").map_or(1, |c| {
        c.lines().filter(|l| l.starts_with("processor")).count()
    });
    let (gen_cpu, sut_cpu) = if nproc >= 2 {
        ("0".to_owned(), "1".to_owned())
    } else {
        ("0".to_owned(), "0".to_owned())
    };
    procs::pin_self(&gen_cpu)?;
    let root = procs::workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("release");
    let cache = procs::cache_dir();
    let existing = |p: PathBuf| p.exists().then_some(p);
    let tmp = std::env::temp_dir().join(format!("st-{}-bench", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let env = Env {
        exe: std::env::current_exe()?,
        proxy: opts
            .proxy_bin
            .clone()
            .unwrap_or_else(|| target.join("sidetrace-proxy")),
        baseline_proxy: opts.baseline_proxy_bin.clone(),
        span_path: if opts.otlp {
            "v1/traces"
        } else {
            "api/v2/spans"
        },
        injector: opts
            .injector_bin
            .clone()
            .unwrap_or_else(|| target.join("sidetrace-injector")),
        envoy: opts
            .envoy_bin
            .clone()
            .or_else(|| existing(cache.join("bin/envoy"))),
        zipkin: opts
            .zipkin_jar
            .clone()
            .or_else(|| existing(cache.join("bin/zipkin.jar"))),
        jaeger: existing(cache.join("bin/jaeger")),
        tmp: tmp.clone(),
        gen_cpu,
        sut_cpu,
        rounds: opts.rounds.unwrap_or(if opts.full { 7 } else { 5 }).max(1),
        secs: opts.secs.unwrap_or(if opts.full { 8.0 } else { 1.5 }),
        warm: if opts.full { 1.0 } else { 0.3 },
        rates: opts.rates.clone(),
        down_secs: opts.down_secs.unwrap_or(if opts.full { 240 } else { 40 }),
        idle_conns: opts.idle_conns,
        nofile,
        commands: Mutex::new(Vec::new()),
        ours: Mutex::new(Vec::new()),
    };
    let started = Instant::now();
    let mut md = String::new();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let _ = writeln!(md, "# sidetrace benchmark results\n");
    let _ = writeln!(
        md,
        "Generated by `make bench`: `cargo run --release -p sidetrace-bench -- {}` (the operator \
         section by `sidetrace-bench-operator`). Figures are read by a human; nothing here is a \
         pass/fail test.\n",
        args.join(" "),
    );
    let _ = writeln!(md, "## Machine\n\n{}", procs::machine());
    let _ = writeln!(
        md,
        "## Method\n\n\
         - Placement: every system under test and the upstream app run pinned to CPU {sut} \
           (`taskset -c {sut}`), so a proxy shares one vCPU with its upstream; the load generator \
           (this process, all threads) and the span sink are pinned to CPU {gen}. \
           sidetrace-proxy runs with `--worker-threads 1`, Envoy with `--concurrency 1`.\n\
         - Open loop: a pacer thread (1 µs timer slack) releases each request at its intended send \
           time (evenly spaced); the request goes out on an idle keep-alive connection or a new one; \
           latency is measured from the intended send time (corrected for coordinated omission). \
           {warm} s warm-up at the same rate before each measured run of {secs} s.\n\
         - Rounds: {rounds}, interleaved (every round measures every target; the order rotates each \
           round). Cells show the median across rounds with (min–max). p99.9 and max are over all \
           rounds pooled: the VM stalls 10–200 ms now and then, so trust p50/p90 and ratios more.\n\
         - Added latency = target minus direct in the same round (per-round difference, then median).\n\
         - CPU per 1,000 requests: the proxy process's CPU time (sum of /proc/PID/task/*/schedstat) \
           over the run, excluding the upstream. Memory: RssAnon from /proc/PID/status (anonymous \
           memory, not file-backed pages).\n\
         - Request: `GET /small` (128-byte response) or `GET /16k` (16 KiB response), HTTP/1.1 keep-alive.\n\
         - Open-files limit raised to {nofile} for this process and its children.\n",
        sut = env.sut_cpu,
        gen = env.gen_cpu,
        warm = env.warm,
        secs = env.secs,
        rounds = env.rounds,
        nofile = env.nofile,
    );
    type Section = (Which, &'static str);
    let sections: [Section; 6] = [
        (Which::Http, "HTTP/1.1 hop overhead"),
        (Which::Infer, "Parent inference (outbound hop, off vs on)"),
        (Which::H2, "HTTP/2 (h2c) unary"),
        (Which::Memory, "Memory"),
        (Which::Export, "Span export"),
        (Which::Webhook, "Admission webhook"),
    ];
    for (w, title) in sections {
        if which != Which::All && which != w {
            continue;
        }
        eprintln!(
            "== {title} ({:.0} s so far)",
            started.elapsed().as_secs_f64()
        );
        let body = match w {
            Which::Http => http(&env).await,
            Which::H2 => h2(&env).await,
            Which::Memory => memory(&env).await,
            Which::Export => export(&env).await,
            Which::Webhook => webhook(&env).await,
            Which::Infer => infer(&env).await,
            Which::All => Ok(String::new()),
        };
        let _ = writeln!(md, "## {title}\n");
        match body {
            Ok(text) => md.push_str(&text),
            Err(e) => {
                eprintln!("{title}: not measured: {e:#}");
                let _ = writeln!(md, "Not measured: {e:#}\n");
            }
        }
    }
    if which == Which::All {
        // Scenarios that are separate runs (`make bench` runs them first): the transparent
        // path and the operator need root and peers, the metrics micro benchmark links the
        // proxy's library, the profile counts under valgrind and strace with the profiling
        // build's symbols. Their sections are embedded here.
        for (file, bin, title, run) in [
            (
                "RESULTS-netns.md",
                "sidetrace-bench-netns",
                "Transparent path in network namespaces",
                "--features operator --bin sidetrace-bench-netns` as root",
            ),
            (
                "RESULTS-operator.md",
                "sidetrace-bench-operator",
                "Operator",
                "--features operator --bin sidetrace-bench-operator` as root",
            ),
            (
                "RESULTS-metrics.md",
                "sidetrace-bench-metrics",
                "RED metrics on the request path",
                "--release --bin sidetrace-bench-metrics`",
            ),
            (
                "RESULTS-profile.md",
                "sidetrace-bench profile",
                "Per-request profile",
                "--profile profiling -- profile` (make bench-profile)",
            ),
        ] {
            let section = std::fs::read_to_string(procs::workspace_root().join("bench").join(file))
                .unwrap_or_else(|_| {
                    format!(
                        "Not measured: bench/{file} is missing (run `cargo run -p sidetrace-bench {run}, or `make bench`).\n"
                    )
                });
            let _ = writeln!(md, "## {title} (from `{bin}`, bench/{file})\n\n{section}");
        }
    }
    if matches!(which, Which::All | Which::Http | Which::Memory) {
        let ours = env.ours.lock().map(|o| o.clone()).unwrap_or_default();
        let _ = writeln!(
            md,
            "## Published reference: linkerd2-proxy\n\n{}",
            published::render(&ours)
        );
    }
    let _ = writeln!(
        md,
        "## Commands\n\nProcesses as started (ports vary per run):\n"
    );
    if let Ok(c) = env.commands.lock() {
        for line in c.iter() {
            let _ = writeln!(md, "- `{line}`");
        }
    }
    let _ = writeln!(
        md,
        "\nTotal wall time: {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(md)
}

/// One measured open-loop run of every target at `rate`, each after a warm-up at the same
/// rate, in an order that rotates with `round`; target `i`'s figures go to `cells[i]`.
async fn open_loop_round(
    env: &Env,
    suts: &mut [Sut],
    clients: &[Arc<Client>],
    req: &Req,
    rate: f64,
    round: usize,
    cells: &mut [Cell],
) -> Result<()> {
    let n = suts.len();
    for k in 0..n {
        let si = (k + round) % n;
        suts[si].check()?;
        let _ = load::open_loop(&clients[si], req, rate, env.warm_dur()).await;
        let c0 = suts[si].cpu_ns();
        let run = load::open_loop(&clients[si], req, rate, env.dur()).await;
        let cpu = (!suts[si].procs.is_empty()).then(|| suts[si].cpu_ns() - c0);
        cells[si].push(run, cpu);
    }
    Ok(())
}

async fn http(env: &Env) -> Result<String> {
    let (_up, up) = start_upstream(env)?;
    let (_sink, sink) = start_sink(env)?;
    let collector = format!("http://127.0.0.1:{sink}/{}", env.span_path);
    let mut suts = vec![
        direct(up),
        start_relay(env, up)?,
        start_proxy(env, "sidetrace", up, &collector, &[])?,
        // The cost of the RED metrics: every request is sampled, so every one also stores an
        // exemplar in the default (`sidetrace`); these two drop the exemplars, then the series.
        start_proxy(
            env,
            "sidetrace-metrics-no-exemplars",
            up,
            &collector,
            &["--request-metrics", "on"],
        )?,
        start_proxy(
            env,
            "sidetrace-metrics-off",
            up,
            &collector,
            &["--request-metrics", "off"],
        )?,
        // The HTTP proxy without its tracing: nothing sampled, so no span is built or
        // exported (headers are still parsed, propagated and counted). What is left over the
        // relay is the cost of being an HTTP proxy at all.
        start_proxy(
            env,
            "sidetrace-untraced",
            up,
            &collector,
            &["--sampling", "0"],
        )?,
    ];
    push_baseline(env, &mut suts, up, &collector)?;
    let mut notes = String::new();
    match start_envoy(env, "envoy-tracer-off", up, sink, false) {
        Ok(s) => suts.push(s),
        Err(e) => {
            let _ = writeln!(notes, "Envoy not measured: {e:#}\n");
        }
    }
    if let Ok(s) = start_envoy(env, "envoy-zipkin", up, sink, true) {
        suts.push(s);
    }
    let mut clients = Vec::new();
    for s in &suts {
        clients.push(Client::new(s.addr, Proto::H1, 8).await?);
    }
    let bodies = [("small (128 B)", "/small"), ("16 KiB", "/16k")];
    let n = suts.len();
    let mut cells: Vec<Cell> = (0..bodies.len() * env.rates.len() * n)
        .map(|_| Cell::default())
        .collect();
    let idx = |b: usize, r: usize, s: usize| (b * env.rates.len() + r) * n + s;
    for round in 0..env.rounds {
        for (bi, (_, path)) in bodies.iter().enumerate() {
            let req = Req::get(path);
            for (ri, &rate) in env.rates.iter().enumerate() {
                let at = idx(bi, ri, 0);
                let cells = &mut cells[at..at + n];
                open_loop_round(env, &mut suts, &clients, &req, rate, round, cells).await?;
            }
        }
        eprintln!("  http round {}/{} done", round + 1, env.rounds);
    }
    // Closed loop: maximum throughput, and requests per CPU-second of the proxy.
    let closed_rounds = env.rounds.min(3);
    let mut tput: Vec<(Vec<f64>, Vec<f64>, u64)> = (0..n).map(|_| Default::default()).collect();
    let req = Req::get("/small");
    for round in 0..closed_rounds {
        for k in 0..n {
            let si = (k + round) % n;
            let c0 = suts[si].cpu_ns();
            let run = load::closed_loop(&clients[si], &req, 16, env.dur()).await;
            let cpu = suts[si].cpu_ns() - c0;
            tput[si].0.push(run.done as f64 / run.elapsed.as_secs_f64());
            if cpu > 0 {
                tput[si].1.push(run.done as f64 / (cpu as f64 / 1e9));
            }
            tput[si].2 += run.errors;
        }
    }
    let mut out = notes;
    let direct_i = 0;
    let envoy_on = suts.iter().position(|s| s.name == "envoy-zipkin");
    let side = suts.iter().position(|s| s.name == "sidetrace");
    let relay = suts.iter().position(|s| s.name == "tcp-relay");
    let mut summary = String::from(
        "| body | rate rps | sidetrace added p50 µs | Envoy+Zipkin added p50 µs | ratio p50 | sidetrace added p99 µs | Envoy+Zipkin added p99 µs | ratio p99 | relay added p50 µs | CPU/1k sidetrace ms | CPU/1k Envoy+Zipkin ms | CPU ratio |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (bi, (bname, _)) in bodies.iter().enumerate() {
        for (ri, rate) in env.rates.iter().enumerate() {
            let _ = writeln!(out, "### {bname} body at {rate} rps (open loop)\n");
            out.push_str(LAT_HEADER);
            let base = &cells[idx(bi, ri, direct_i)];
            for (si, s) in suts.iter().enumerate() {
                let c = &cells[idx(bi, ri, si)];
                lat_row(&mut out, &s.name, c, (si != direct_i).then_some(base));
            }
            let achieved: Vec<String> = suts
                .iter()
                .enumerate()
                .map(|(si, s)| {
                    format!(
                        "{} {:.0}",
                        s.name,
                        Spread::of(&cells[idx(bi, ri, si)].achieved_rps).median
                    )
                })
                .collect();
            let _ = writeln!(out, "\nAchieved rps (median): {}\n", achieved.join(", "));
            if let (Some(sd), Some(en)) = (side, envoy_on) {
                let sc = &cells[idx(bi, ri, sd)];
                let ec = &cells[idx(bi, ri, en)];
                let s50 = sc.added(base, |p| p.p50).median;
                let e50 = ec.added(base, |p| p.p50).median;
                let s99 = sc.added(base, |p| p.p99).median;
                let e99 = ec.added(base, |p| p.p99).median;
                let r50 = relay.map_or(f64::NAN, |r| {
                    cells[idx(bi, ri, r)].added(base, |p| p.p50).median
                });
                let scpu = Spread::of(&sc.cpu_per_1k_ms).median;
                let ecpu = Spread::of(&ec.cpu_per_1k_ms).median;
                // A saturated Envoy queues: its latency is queueing time and its CPU per
                // request is a floor, so a ratio to it says nothing. Show why instead.
                let e_rps = Spread::of(&ec.achieved_rps).median;
                let saturated = e_rps < 0.95 * rate;
                let r = |a: f64, b: f64| if saturated { f64::NAN } else { ratio(a, b) };
                let shown = |a: f64, b: f64| {
                    if saturated {
                        format!("— (Envoy+Zipkin saturated: {e_rps:.0} rps)")
                    } else {
                        cell(ratio(a, b), 2)
                    }
                };
                if bi == 0 {
                    let label = if saturated {
                        format!("{bname}, {rate} rps: Envoy+Zipkin saturated at {e_rps:.0} rps")
                    } else {
                        format!("{bname}, {rate} rps")
                    };
                    env.compare(Measure::MedianAdded, &label, r(s50, e50));
                    env.compare(Measure::TailAdded, &label, r(s99, e99));
                    env.compare(Measure::Cpu, &label, r(scpu, ecpu));
                }
                let _ = writeln!(
                    summary,
                    "| {bname} | {rate} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    cell(s50, 1),
                    cell(e50, 1),
                    shown(s50, e50),
                    cell(s99, 1),
                    cell(e99, 1),
                    shown(s99, e99),
                    cell(r50, 1),
                    cell(scpu, 1),
                    cell(ecpu, 1),
                    shown(scpu, ecpu)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "### Summary: sidetrace vs Envoy with its Zipkin tracer (medians of per-round figures)\n\n{summary}\n\
         Targets (issue 4/10): added latency ≤ ½ of Envoy+Zipkin's at p50 and p99 (ratio ≤ 0.5); \
         p50 < 100 µs and p99 < 1 ms at 1,000 rps; CPU per 1k requests ≤ ⅓ of Envoy+Zipkin's (ratio ≤ 0.33).\n"
    );
    let _ = writeln!(
        out,
        "### Closed loop (16 connections, `GET /small`, {closed_rounds} rounds × {} s)\n\n\
         | target | throughput rps | requests per proxy CPU-second | errors |\n|---|---|---|---|",
        env.secs
    );
    for (si, s) in suts.iter().enumerate() {
        let (rps, per_core, errors) = &tput[si];
        let per = if per_core.is_empty() {
            "— (no proxy)".to_owned()
        } else {
            spread_cell(Spread::of(per_core), 0)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {per} | {errors} |",
            s.name,
            spread_cell(Spread::of(rps), 0)
        );
    }
    let spans = http_get(lo(sink), "/count").await.unwrap_or_default();
    let _ = writeln!(
        out,
        "\nThe load generator has one CPU; the upstream shares the SUT CPU, so \"requests per proxy \
         CPU-second\" is the throughput-per-core figure. Spans received by the sink during this \
         scenario (sidetrace + Envoy): {}.\n",
        spans.trim()
    );
    Ok(out)
}

/// What parent inference costs on the app's calls: header-less `GET /small` through the
/// outbound listener, the mode off vs on (`--infer-parents-override true`), side by side in
/// each round. On, every call takes the snapshot of the pod's inbound requests in flight (none
/// here, so each is tagged `absent`); the inbound side keeps that set in both modes.
async fn infer(env: &Env) -> Result<String> {
    let (_up, up) = start_upstream(env)?;
    let (_sink, sink) = start_sink(env)?;
    let collector = format!("http://127.0.0.1:{sink}/api/v2/spans");
    let on = ["--infer-parents-override", "true"];
    let mut suts = vec![
        direct(up),
        start_proxy_on(
            env,
            "inference-off",
            &env.proxy,
            up,
            &collector,
            Listener::Outbound,
            &[],
        )?,
        start_proxy_on(
            env,
            "inference-on",
            &env.proxy,
            up,
            &collector,
            Listener::Outbound,
            &on,
        )?,
    ];
    let mut clients = Vec::new();
    for s in &suts {
        clients.push(Client::new(s.addr, Proto::H1, 8).await?);
    }
    let n = suts.len();
    let mut cells: Vec<Cell> = (0..env.rates.len() * n).map(|_| Cell::default()).collect();
    let req = Req::get("/small");
    for round in 0..env.rounds {
        for (ri, &rate) in env.rates.iter().enumerate() {
            let at = ri * n;
            let cells = &mut cells[at..at + n];
            open_loop_round(env, &mut suts, &clients, &req, rate, round, cells).await?;
        }
        eprintln!("  infer round {}/{} done", round + 1, env.rounds);
    }
    let mut out = String::new();
    for (ri, rate) in env.rates.iter().enumerate() {
        let _ = writeln!(out, "### `GET /small` at {rate} rps (open loop)\n");
        out.push_str(LAT_HEADER);
        let base = &cells[ri * n];
        for (si, s) in suts.iter().enumerate() {
            lat_row(
                &mut out,
                &s.name,
                &cells[ri * n + si],
                (si != 0).then_some(base),
            );
        }
        out.push('\n');
    }
    let decisions = proxy_metric(&suts[2], "sidetrace_parent_inference_total").await;
    let _ = writeln!(
        out,
        "Decisions counted by the inference-on proxy: {decisions:.0} (every call, all `absent`); \
         by the inference-off proxy: {:.0}.\n",
        proxy_metric(&suts[1], "sidetrace_parent_inference_total").await
    );
    Ok(out)
}

async fn h2(env: &Env) -> Result<String> {
    let (_up, up) = start_upstream(env)?;
    let (_sink, sink) = start_sink(env)?;
    let collector = format!("http://127.0.0.1:{sink}/api/v2/spans");
    let mut suts = vec![
        direct(up),
        start_proxy(env, "sidetrace", up, &collector, &[])?,
    ];
    let mut clients = Vec::new();
    for s in &suts {
        clients.push(Client::new(s.addr, Proto::H2, 0).await?);
    }
    let rates = [1000.0, 5000.0];
    let n = suts.len();
    let mut cells: Vec<Cell> = (0..rates.len() * n).map(|_| Cell::default()).collect();
    let req = Req::get("/small");
    for round in 0..env.rounds {
        for (ri, &rate) in rates.iter().enumerate() {
            for k in 0..n {
                let si = (k + round) % n;
                suts[si].check()?;
                let _ = load::open_loop(&clients[si], &req, rate, env.warm_dur()).await;
                let c0 = suts[si].cpu_ns();
                let run = load::open_loop(&clients[si], &req, rate, env.dur()).await;
                let cpu = (!suts[si].procs.is_empty()).then(|| suts[si].cpu_ns() - c0);
                cells[ri * n + si].push(run, cpu);
            }
        }
    }
    let mut out = String::from(
        "One h2c (prior knowledge) connection per target, requests multiplexed, `GET /small`.\n\n",
    );
    for (ri, rate) in rates.iter().enumerate() {
        let _ = writeln!(out, "### h2c at {rate} rps (open loop)\n");
        out.push_str(LAT_HEADER);
        for (si, s) in suts.iter().enumerate() {
            lat_row(
                &mut out,
                &s.name,
                &cells[ri * n + si],
                (si != 0).then(|| &cells[ri * n]),
            );
        }
        out.push('\n');
    }
    Ok(out)
}

async fn memory(env: &Env) -> Result<String> {
    let (_up, up) = start_upstream(env)?;
    let (_sink, sink) = start_sink(env)?;
    let collector = format!("http://127.0.0.1:{sink}/{}", env.span_path);
    let mut suts = vec![start_proxy(env, "sidetrace", up, &collector, &[])?];
    let mut notes = String::new();
    match start_envoy(env, "envoy-zipkin", up, sink, true) {
        Ok(s) => suts.push(s),
        Err(e) => {
            let _ = writeln!(notes, "Envoy not measured: {e:#}\n");
        }
    }
    if let Ok(s) = start_envoy(env, "envoy-tracer-off", up, sink, false) {
        suts.push(s);
    }
    push_baseline(env, &mut suts, up, &collector)?;
    // Each target holds 2 descriptors per idle client connection (client side + upstream side).
    let budget = (env.nofile.saturating_sub(400) / 2) as usize;
    let conns = env.idle_conns.min(budget);
    if conns < env.idle_conns {
        let _ = writeln!(
            notes,
            "Idle connections capped at {conns} (open-files hard limit {}: the proxy needs one \
             descriptor for the client side and one for the upstream side of each).\n",
            env.nofile
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut rows = Vec::new();
    for s in &mut suts {
        // Idle after a handful of requests (the first request allocates lazily built state).
        let client = Client::new(s.addr, Proto::H1, 1).await?;
        for _ in 0..10 {
            client.send(&Req::get("/small")).await?;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let idle = s.rss_anon();
        let load_secs = (env.secs * 2.0).max(3.0) as u64;
        let mut peak = 0;
        for _ in 0..load_secs {
            let _ =
                load::open_loop(&client, &Req::get("/small"), 1000.0, Duration::from_secs(1)).await;
            peak = peak.max(s.rss_anon());
        }
        let loaded = s.rss_anon();
        drop(client);
        let (held, err) = load::idle_connections(s.addr, conns).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let with_conns = s.rss_anon();
        let opened = held.len();
        drop(held);
        // Long enough for the proxy's periodic reclaim check (5 s) to see the drop.
        tokio::time::sleep(Duration::from_secs(7)).await;
        let after = s.rss_anon();
        s.check()?;
        rows.push((
            s.name.clone(),
            idle,
            loaded,
            peak,
            opened,
            with_conns,
            after,
            err,
        ));
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let mut out = notes;
    let _ = writeln!(
        out,
        "Anonymous memory (RssAnon) of the proxy process. Idle: after 10 requests and 1.5 s quiet. \
         Loaded: at the end of {} s at 1,000 rps (`GET /small`, tracing 100%), and the peak sampled \
         each second. Idle conns: N keep-alive connections, each after one request, held open; after closing: 7 s \
         after they all closed.\n\n\
         | target | idle MiB | 1,000 rps MiB (peak) | idle conns N | with N conns MiB | per conn KiB | after closing MiB |\n|---|---|---|---|---|---|---|",
        (env.secs * 2.0).max(3.0) as u64
    );
    for (name, idle, loaded, peak, opened, with_conns, after, err) in &rows {
        let per_conn = if *opened > 0 {
            (*with_conns as f64 - *idle as f64) / 1024.0 / *opened as f64
        } else {
            f64::NAN
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {} ({}) | {opened}{} | {} | {} | {} |",
            cell(mib(*idle), 2),
            cell(mib(*loaded), 2),
            cell(mib(*peak), 2),
            err.as_ref()
                .map_or(String::new(), |e| format!(" (stopped: {e})")),
            cell(mib(*with_conns), 2),
            cell(per_conn, 2),
            cell(mib(*after), 2),
        );
    }
    if rows.len() >= 2 {
        let (s, e) = (&rows[0], &rows[1]);
        if e.0 == "envoy-zipkin" {
            env.compare(Measure::Memory, "1,000 rps", ratio(s.2 as f64, e.2 as f64));
        }
        let _ = writeln!(
            out,
            "\nRatios sidetrace / {}: idle {}, 1,000 rps {}, with N conns {}. Targets: < 10 MiB idle, ≤ 0.5 of Envoy's under load.\n",
            e.0,
            cell(ratio(s.1 as f64, e.1 as f64), 2),
            cell(ratio(s.2 as f64, e.2 as f64), 2),
            cell(ratio(s.5 as f64, e.5 as f64), 2)
        );
    }
    Ok(out)
}

async fn export(env: &Env) -> Result<String> {
    let mut out = String::new();
    let (_up, up) = start_upstream(env)?;
    // A. Spans/s to the real Zipkin server.
    match &env.zipkin {
        None => {
            out.push_str("Zipkin jar not found (e2e/peers.sh zipkin): spans/s not measured.\n\n")
        }
        Some(jar) => match export_zipkin(env, jar, up).await {
            Ok(t) => out.push_str(&t),
            Err(e) => {
                let _ = writeln!(out, "Zipkin export not measured: {e:#}\n");
            }
        },
    }
    // A'. OTLP/HTTP vs Zipkin v2 side by side, to the real Jaeger.
    match &env.jaeger {
        None => out.push_str(
            "Jaeger not built (e2e/peers.sh jaeger): OTLP vs Zipkin export not measured.\n\n",
        ),
        Some(bin) => match export_protocols(env, bin, up).await {
            Ok(t) => out.push_str(&t),
            Err(e) => {
                let _ = writeln!(out, "OTLP vs Zipkin export not measured: {e:#}\n");
            }
        },
    }
    // B. Latency with the collector up vs down.
    let (_sink, sink) = start_sink(env)?;
    let dead = procs::free_port()?; // nothing listens here
    let mut suts = vec![
        direct(up),
        start_proxy(
            env,
            "collector-up",
            up,
            &format!("http://127.0.0.1:{sink}/api/v2/spans"),
            &[],
        )?,
        start_proxy(
            env,
            "collector-down",
            up,
            &format!("http://127.0.0.1:{dead}/api/v2/spans"),
            &[],
        )?,
    ];
    let mut clients = Vec::new();
    for s in &suts {
        clients.push(Client::new(s.addr, Proto::H1, 8).await?);
    }
    let n = suts.len();
    let mut cells: Vec<Cell> = (0..n).map(|_| Cell::default()).collect();
    let req = Req::get("/small");
    for round in 0..env.rounds {
        for k in 0..n {
            let si = (k + round) % n;
            suts[si].check()?;
            let _ = load::open_loop(&clients[si], &req, 1000.0, env.warm_dur()).await;
            let c0 = suts[si].cpu_ns();
            let run = load::open_loop(&clients[si], &req, 1000.0, env.dur()).await;
            let cpu = (!suts[si].procs.is_empty()).then(|| suts[si].cpu_ns() - c0);
            cells[si].push(run, cpu);
        }
    }
    let _ = writeln!(
        out,
        "### Latency with the collector up vs down (1,000 rps, tracing 100%)\n\n\
         `collector-down` exports to a port nothing listens on (connection refused; retries then drops).\n"
    );
    out.push_str(LAT_HEADER);
    for (si, s) in suts.iter().enumerate() {
        lat_row(&mut out, &s.name, &cells[si], (si != 0).then(|| &cells[0]));
    }
    let down_p50 = cells[2].added(&cells[1], |p| p.p50);
    let down_p99 = cells[2].added(&cells[1], |p| p.p99);
    let _ = writeln!(
        out,
        "\nDown minus up, per round: p50 {} µs, p99 {} µs (should be 0 within noise).\n",
        spread_cell(down_p50, 1),
        spread_cell(down_p99, 1)
    );
    // C. Memory with the collector down for a while: must plateau.
    let down = &mut suts[2];
    let chunk = 5u64.min(env.down_secs.max(1));
    let _ = writeln!(
        out,
        "### Memory with the collector down ({} s at 1,000 rps)\n\n\
         | t s | RssAnon MiB | requests ok (failed) | proxy requests total | spans exported | spans dropped | export queue depth |\n|---|---|---|---|---|---|---|",
        env.down_secs
    );
    let t0 = Instant::now();
    let mut t = 0;
    let (mut ok, mut failed) = (0, 0);
    while t < env.down_secs {
        let run = load::open_loop(&clients[2], &req, 1000.0, Duration::from_secs(chunk)).await;
        ok += run.done;
        failed += run.errors;
        t += chunk;
        down.check()?;
        let _ = writeln!(
            out,
            "| {:.0} | {:.2} | {ok} ({failed}) | {} | {} | {} | {} |",
            t0.elapsed().as_secs_f64(),
            down.rss_anon() as f64 / (1 << 20) as f64,
            proxy_metric(down, "sidetrace_proxy_requests_total").await,
            proxy_metric(down, "sidetrace_spans_exported_total").await,
            proxy_metric(down, "sidetrace_spans_dropped_total").await,
            proxy_metric(down, "sidetrace_span_queue_depth").await
        );
    }
    out.push('\n');
    Ok(out)
}

async fn export_zipkin(env: &Env, jar: &Path, up: u16) -> Result<String> {
    let port = procs::free_port()?;
    let java = PathBuf::from("java");
    let port_s = port.to_string();
    let args = vec![
        "-Xms256m".to_owned(),
        "-Xmx768m".to_owned(),
        "-jar".to_owned(),
        jar.display().to_string(),
    ];
    let mut zipkin = env.spawn_env(
        "zipkin",
        &env.gen_cpu,
        &java,
        &args,
        &[
            ("QUERY_PORT", port_s.as_str()),
            ("STORAGE_TYPE", "mem"),
            ("MEM_MAX_SPANS", "300000"),
        ],
    )?;
    procs::wait_port(lo(port), Duration::from_secs(120))?;
    zipkin.check_alive()?;
    let mut proxy = start_proxy(
        env,
        "sidetrace-to-zipkin",
        up,
        &format!("http://127.0.0.1:{port}/api/v2/spans"),
        &[],
    )?;
    let client = Client::new(proxy.addr, Proto::H1, 16).await?;
    let req = Req::get("/small");
    // Warm the JVM's collector path.
    let _ = load::open_loop(&client, &req, 1000.0, Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut out = String::from(
        "### Spans/s to a real Zipkin server (in-memory storage)\n\n\
         Latency here is inflated: Zipkin's JVM shares the generator's CPU.\n\n\
         | load | requests/s | spans exported/s | spans dropped | Zipkin received/s | drain wait s | p50 µs | p99 µs |\n|---|---|---|---|---|---|---|---|\n",
    );
    let zipkin_count = || async {
        http_get(lo(port), "/prometheus")
            .await
            .map_or(f64::NAN, |t| {
                stats::prom_sum(&t, "zipkin_collector_spans_total")
            })
    };
    let secs = (env.secs * 4.0).max(5.0);
    for (label, closed, rate) in [
        ("open loop 5,000 rps", false, 5000.0),
        ("closed loop, 16 conns", true, 0.0),
    ] {
        let e0 = proxy_metric(&proxy, "sidetrace_spans_exported_total").await;
        let d0 = proxy_metric(&proxy, "sidetrace_spans_dropped_total").await;
        let z0 = zipkin_count().await;
        let mut run = if closed {
            load::closed_loop(&client, &req, 16, Duration::from_secs_f64(secs)).await
        } else {
            load::open_loop(&client, &req, rate, Duration::from_secs_f64(secs)).await
        };
        let run_secs = run.elapsed.as_secs_f64();
        // The exporter flushes at least every second: wait until every span of the run is
        // accounted for (exported or dropped), bounded.
        let flush = Instant::now();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        while flush.elapsed() < Duration::from_secs(20) {
            let e = proxy_metric(&proxy, "sidetrace_spans_exported_total").await;
            let d = proxy_metric(&proxy, "sidetrace_spans_dropped_total").await;
            if (e - e0) + (d - d0) >= run.done as f64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let drain = flush.elapsed().as_secs_f64();
        let e1 = proxy_metric(&proxy, "sidetrace_spans_exported_total").await;
        let d1 = proxy_metric(&proxy, "sidetrace_spans_dropped_total").await;
        let z1 = zipkin_count().await;
        let p = Percentiles::of(&mut run.lat);
        let lat = |x: u64| {
            if closed {
                "—".to_owned()
            } else {
                cell(us(x), 1)
            }
        };
        let _ = writeln!(
            out,
            "| {label} | {:.0} | {:.0} | {} | {} | {drain:.1} | {} | {} |",
            run.done as f64 / run_secs,
            (e1 - e0) / run_secs,
            d1 - d0,
            cell((z1 - z0) / run_secs, 0),
            lat(p.p50),
            lat(p.p99)
        );
        proxy.check()?;
    }
    zipkin.check_alive()?;
    let _ = writeln!(
        out,
        "\nOne SERVER span per request (inbound hop). spans/s = spans the proxy counted as exported \
         during the run (plus the drain wait: until exported + dropped covers every request, at most 20 s) divided by the run time; Zipkin's own \
         `zipkin_collector_spans_total` is shown beside it. Zipkin runs on the generator CPU.\n"
    );
    Ok(out)
}

/// A TCP relay on loopback to `to` that counts the bytes the proxy sends through it as they
/// pass (the exporter keeps its connections open): the export's bytes on the wire, HTTP
/// headers and bodies, whatever the protocol.
async fn counting_relay(to: SocketAddr) -> Result<(u16, Arc<AtomicU64>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&sent);
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                let (mut ri, mut wi) = inbound.into_split();
                let (mut ro, mut wo) = outbound.into_split();
                let up = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = ri.read(&mut buf).await {
                        if n == 0 || wo.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    let _ = wo.shutdown().await;
                };
                let down = async move {
                    let _ = tokio::io::copy(&mut ro, &mut wi).await;
                };
                tokio::join!(up, down);
            });
        }
    });
    Ok((port, sent))
}

/// One measured export run: spans exported per second of run, proxy CPU ns per 1,000 spans
/// exported, bytes on the wire per span exported, spans dropped.
type ExportRow = (f64, f64, f64, f64);

/// Measures one [`ExportRow`] (see its docs).
async fn export_run(
    sut: &mut Sut,
    client: &Arc<Client>,
    bytes: &AtomicU64,
    rate: Option<f64>,
    secs: f64,
) -> Result<ExportRow> {
    let req = Req::get("/small");
    sut.check()?;
    settle(sut).await;
    let e0 = proxy_metric(sut, "sidetrace_spans_exported_total").await;
    let d0 = proxy_metric(sut, "sidetrace_spans_dropped_total").await;
    let b0 = bytes.load(Ordering::Relaxed);
    let c0 = sut.cpu_ns();
    let run = match rate {
        Some(r) => load::open_loop(client, &req, r, Duration::from_secs_f64(secs)).await,
        None => load::closed_loop(client, &req, 16, Duration::from_secs_f64(secs)).await,
    };
    let run_secs = run.elapsed.as_secs_f64();
    let want = run.done as f64;
    let flush = Instant::now();
    while flush.elapsed() < Duration::from_secs(20) {
        let e = proxy_metric(sut, "sidetrace_spans_exported_total").await - e0;
        let d = proxy_metric(sut, "sidetrace_spans_dropped_total").await - d0;
        if e + d >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu = sut.cpu_ns() - c0;
    let e = proxy_metric(sut, "sidetrace_spans_exported_total").await - e0;
    let d = proxy_metric(sut, "sidetrace_spans_dropped_total").await - d0;
    let b = bytes.load(Ordering::Relaxed) - b0;
    Ok((
        e / run_secs,
        cpu as f64 / (e.max(1.0) / 1000.0),
        b as f64 / e.max(1.0),
        d,
    ))
}

/// Spans/s, proxy CPU per 1,000 spans and bytes on the wire per span, OTLP/HTTP and Zipkin v2
/// side by side in one run against one real Jaeger (its 4318 and 9411 receivers), rounds
/// alternating the order: an open loop at 2,000 rps (every span exported: CPU and bytes per
/// span compare like for like) and a closed loop (the most the exporter sustains; the rest is
/// dropped and counted).
async fn export_protocols(env: &Env, jaeger: &Path, up: u16) -> Result<String> {
    let (otlp_port, zipkin_port, query_port, health_port) = (4318, 9411, 16686, 13133);
    for p in [otlp_port, zipkin_port, query_port, health_port] {
        if std::net::TcpStream::connect(lo(p)).is_ok() {
            bail!("port {p} is already in use on 127.0.0.1 (another Jaeger?)");
        }
    }
    let mut jaeger_proc = env.spawn_env(
        "jaeger",
        &env.gen_cpu,
        jaeger,
        &[],
        &[("JAEGER_LISTEN_HOST", "127.0.0.1")],
    )?;
    for p in [otlp_port, zipkin_port, query_port] {
        procs::wait_port(lo(p), Duration::from_secs(60))?;
    }
    jaeger_proc.check_alive()?;
    let (otlp_relay, otlp_bytes) = counting_relay(lo(otlp_port)).await?;
    let (zipkin_relay, zipkin_bytes) = counting_relay(lo(zipkin_port)).await?;
    let mut suts = [
        (
            start_proxy(
                env,
                "otlp-http",
                up,
                &format!("http://127.0.0.1:{otlp_relay}/v1/traces"),
                &[],
            )?,
            otlp_bytes,
        ),
        (
            start_proxy(
                env,
                "zipkin",
                up,
                &format!("http://127.0.0.1:{zipkin_relay}/api/v2/spans"),
                &[],
            )?,
            zipkin_bytes,
        ),
    ];
    let mut clients = Vec::new();
    for (s, _) in &suts {
        clients.push(Client::new(s.addr, Proto::H1, 16).await?);
    }
    let secs = (env.secs * 2.0).max(3.0);
    let loads: [(&str, Option<f64>); 2] = [
        ("open loop 2,000 rps", Some(2000.0)),
        ("closed loop, 16 conns", None),
    ];
    // [load][protocol] -> per-round rows.
    let mut rows: Vec<Vec<Vec<ExportRow>>> = vec![vec![Vec::new(); 2]; 2];
    for round in 0..env.rounds {
        for (li, (_, rate)) in loads.iter().enumerate() {
            for k in 0..2 {
                let si = (k + round) % 2;
                let _ = load::open_loop(&clients[si], &Req::get("/small"), 1000.0, env.warm_dur())
                    .await;
                let (sut, bytes) = &mut suts[si];
                let row = export_run(sut, &clients[si], bytes, *rate, secs).await?;
                rows[li][si].push(row);
            }
        }
    }
    jaeger_proc.check_alive()?;
    let mut out = String::from(
        "### OTLP/HTTP vs Zipkin v2 to a real Jaeger (side by side, one run)\n\n\
         | load | protocol | spans exported/s | proxy CPU ms per 1,000 spans | bytes on the wire per span | spans dropped |\n\
         |---|---|---|---|---|---|\n",
    );
    for (li, (label, _)) in loads.iter().enumerate() {
        for (si, (sut, _)) in suts.iter().enumerate() {
            let r = &rows[li][si];
            let med = |f: fn(&ExportRow) -> f64| {
                let mut v: Vec<f64> = r.iter().map(f).collect();
                v.sort_by(f64::total_cmp);
                v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
            };
            let dropped: f64 = r.iter().map(|x| x.3).sum();
            let _ = writeln!(
                out,
                "| {label} | {} | {:.0} | {:.1} | {:.0} | {dropped} |",
                sut.name,
                med(|x| x.0),
                med(|x| x.1) / 1e6,
                med(|x| x.2),
            );
        }
    }
    let _ = writeln!(
        out,
        "\nMedians of {} rounds of {secs:.1} s per load, protocol order alternating per round; \
         one SERVER span per request, batches of up to 100. spans/s: spans the proxy counted as \
         exported (after the run, until exported + dropped covers every request) per second of \
         run. CPU: the proxy's whole CPU (proxying the requests and exporting) during the run \
         and the drain, per 1,000 spans exported; at 2,000 rps nothing is dropped, so the \
         difference between the two rows is the encoding's. Bytes: what the proxy sent to the \
         collector (HTTP headers and bodies), counted by a relay as it passes, per span \
         exported. Jaeger runs on the generator CPU; the closed loop's drops are the bounded \
         queue doing its job.\n",
        env.rounds
    );
    Ok(out)
}

/// Waits until a proxy's export queue is empty after a warm-up, so one run's spans do not
/// spill into the next measurement (bounded).
async fn settle(sut: &Sut) {
    let t = Instant::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    while t.elapsed() < Duration::from_secs(10)
        && proxy_metric(sut, "sidetrace_span_queue_depth").await > 0.0
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn webhook(env: &Env) -> Result<String> {
    if !env.injector.exists() {
        bail!(
            "{} not built (cargo build --release -p sidetrace-injector)",
            env.injector.display()
        );
    }
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let cert = env.tmp.join("tls.crt");
    let key = env.tmp.join("tls.key");
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.signing_key.serialize_pem())?;
    let port = procs::free_port()?;
    let no_kubeconfig = env.tmp.join("no-such-kubeconfig");
    let args = vec![
        "--listen".to_owned(),
        lo(port).to_string(),
        "--tls-cert".to_owned(),
        cert.display().to_string(),
        "--tls-key".to_owned(),
        key.display().to_string(),
        "--log-level".to_owned(),
        "error".to_owned(),
    ];
    let kc = no_kubeconfig.display().to_string();
    let inj = env.spawn_env(
        "sidetrace-injector",
        &env.sut_cpu,
        &env.injector,
        &args,
        &[("KUBECONFIG", kc.as_str())],
    )?;
    procs::wait_port(lo(port), Duration::from_secs(20))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone())?;
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "bench", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "web-7d9c8b5f4-", "namespace": "shop",
                    "labels": {"app": "web", "pod-template-hash": "7d9c8b5f4"}},
                "spec": {"containers": [{"name": "web", "image": "web:1",
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]}},
            "oldObject": null, "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    });
    let req = Req {
        method: http::Method::POST,
        path: "/mutate".to_owned(),
        body: Bytes::from(serde_json::to_vec(&review)?),
        content_type: Some("application/json"),
    };
    let client = Client::new(lo(port), Proto::H1Tls(config), 8).await?;
    let reply = client.send(&req).await?;
    let patched = String::from_utf8_lossy(&reply).contains("\"patch\"");
    let sut = Sut {
        name: "sidetrace-injector".to_owned(),
        addr: lo(port),
        procs: vec![inj],
        admin: None,
    };
    let rates = [100.0, 1000.0];
    let mut cells: Vec<Cell> = (0..rates.len()).map(|_| Cell::default()).collect();
    for _ in 0..env.rounds {
        for (ri, &rate) in rates.iter().enumerate() {
            let _ = load::open_loop(&client, &req, rate, env.warm_dur()).await;
            let c0 = sut.cpu_ns();
            let run = load::open_loop(&client, &req, rate, env.dur()).await;
            cells[ri].push(run, Some(sut.cpu_ns() - c0));
        }
    }
    let mut out = format!(
        "The real `sidetrace-injector` over HTTPS (self-signed cert, no cluster access), \
         `POST /mutate` with a {} byte AdmissionReview of a plain Deployment pod (the reply {} a \
         JSONPatch), keep-alive TLS connections (opened: {}), injector pinned to CPU {}. RssAnon at \
         the end: {:.2} MiB.\n\n",
        req.body.len(),
        if patched { "carries" } else { "does NOT carry" },
        client.opened.load(std::sync::atomic::Ordering::Relaxed),
        env.sut_cpu,
        sut.rss_anon() as f64 / (1 << 20) as f64
    );
    out.push_str(
        "| admissions/s | p50 µs | p90 µs | p99 µs | p99.9 µs (pooled) | max µs (pooled) | CPU ms / 1k | errors |\n|---|---|---|---|---|---|---|---|\n",
    );
    for (ri, rate) in rates.iter().enumerate() {
        let c = &cells[ri];
        let pooled = c.pooled();
        let _ = writeln!(
            out,
            "| {rate} | {} | {} | {} | {} | {} | {} | {} |",
            spread_cell(c.spread(|p| p.p50), 1),
            spread_cell(c.spread(|p| p.p90), 1),
            spread_cell(c.spread(|p| p.p99), 1),
            cell(us(pooled.p999), 0),
            cell(us(pooled.max), 0),
            spread_cell(Spread::of(&c.cpu_per_1k_ms), 1),
            c.errors
        );
    }
    out.push('\n');
    Ok(out)
}

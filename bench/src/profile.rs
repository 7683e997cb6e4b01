//! Per-request cost of one explicit-mode hop, counted rather than timed: instructions
//! (valgrind callgrind), heap allocations (valgrind dhat) and syscalls (strace -c), for
//! sidetrace-proxy and for the plain TCP relay (the floor).
//!
//! Counts do not depend on the machine's load, so they compare builds where timings on a
//! shared machine cannot. Each target runs twice under each tool, with `warm` and with
//! `warm + requests` keep-alive `GET /small` requests; the difference divided by `requests`
//! is the steady-state cost of one request: start-up, connection set-up and shutdown cancel
//! out. The proxy stops through `POST /shutdown` (a clean exit, so the tools write their
//! reports); the relay by SIGTERM.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::load::{Client, Proto, Req};
use crate::procs::{self, Proc, lo};
use crate::scenarios::{Listener, proxy_args};

/// The proxy's own default `--max-connections` (the profile opens fewer than this).
const DEFAULT_MAX_CONNECTIONS: usize = 2048;

/// Options of `sidetrace-bench profile`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProfileOpts {
    /// Measured requests (the difference between the two runs of each target).
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Requests of the shorter run (start-up and warm-up, subtracted).
    #[arg(long, default_value_t = 200)]
    pub warm: usize,
    /// Keep-alive connections the requests are spread over.
    #[arg(long, default_value_t = 4)]
    pub conns: usize,
    /// sidetrace-proxy binary; built with `--profile profiling` so functions have names.
    #[arg(long)]
    pub proxy_bin: Option<PathBuf>,
    /// Tools to run (callgrind, dhat, strace).
    #[arg(long, value_delimiter = ',', default_values_t = vec!["callgrind".to_owned(), "dhat".to_owned(), "strace".to_owned()])]
    pub tools: Vec<String>,
    /// Idle keep-alive connections for the heap-per-connection breakdown (0: skip it).
    #[arg(long, default_value_t = 1000)]
    pub idle_conns: usize,
    /// Functions and allocation sites listed per table.
    #[arg(long, default_value_t = 25)]
    pub top: usize,
    /// Keep the tools' raw reports (printed: the directory) for a closer look
    /// (`callgrind_annotate`, dhat's viewer).
    #[arg(long)]
    pub keep_reports: bool,
    /// Output file (default: bench/RESULTS-profile.md in the workspace).
    #[arg(long, default_value_os_t = procs::workspace_root().join("bench/RESULTS-profile.md"))]
    pub out: PathBuf,
}

/// Counts of one run: a total and a breakdown by key (function, site or syscall).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Counts {
    /// Everything counted.
    pub total: f64,
    /// The breakdown.
    pub by: BTreeMap<String, f64>,
}

impl Counts {
    /// `(long - short) / n`: the per-request cost, total and breakdown.
    pub fn per_request(long: &Self, short: &Self, n: usize) -> Self {
        let n = n.max(1) as f64;
        let mut by = BTreeMap::new();
        for (k, v) in &long.by {
            let d = (v - short.by.get(k).copied().unwrap_or(0.0)) / n;
            by.insert(k.clone(), d);
        }
        Self {
            total: (long.total - short.total) / n,
            by,
        }
    }

    /// The `top` largest entries, largest first.
    pub fn top(&self, top: usize) -> Vec<(&str, f64)> {
        let mut v: Vec<(&str, f64)> = self.by.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v.truncate(top);
        v
    }

    /// [`Counts::top`] without the entries below `min` (noise of the subtraction).
    pub fn top_at_least(&self, top: usize, min: f64) -> Vec<(&str, f64)> {
        let mut v = self.top(top);
        v.retain(|(_, x)| *x >= min);
        v
    }

    /// The breakdown summed by `group(key)`.
    pub fn grouped(&self, group: impl Fn(&str) -> String) -> Self {
        let mut by = BTreeMap::new();
        for (k, v) in &self.by {
            *by.entry(group(k)).or_insert(0.0) += v;
        }
        Self {
            total: self.total,
            by,
        }
    }
}

fn number(s: &str) -> Option<f64> {
    s.replace(',', "").parse().ok()
}

/// `callgrind_annotate` output: the program total and the self cost of each function.
pub fn parse_callgrind_annotate(text: &str) -> Counts {
    let mut c = Counts::default();
    for line in text.lines() {
        let t = line.trim();
        let Some(first) = t.split_whitespace().next() else {
            continue;
        };
        let Some(n) = number(first) else { continue };
        if t.contains("PROGRAM TOTALS") {
            c.total = n;
            continue;
        }
        // "1,234 (12.34%)  file:function [object]"
        let Some(rest) = t.split_once("%)").map(|(_, r)| r.trim()) else {
            continue;
        };
        let func = rest.rsplit_once(" [").map_or(rest, |(f, _)| f);
        let func = func.split_once(':').map_or(func, |(_, f)| f).trim();
        *c.by.entry(func.to_owned()).or_insert(0.0) += n;
    }
    c
}

/// The crate (or library) a demangled function belongs to: the first path segment of its
/// name, `<T as Trait>` read as `T`; C functions (malloc, memcpy) as "libc".
pub fn crate_of(func: &str) -> String {
    let f = func.trim_start_matches('<').trim_start_matches('&');
    let f = f.trim_start_matches("mut ").trim_start_matches("dyn ");
    match f.split_once("::") {
        Some((head, _)) if !head.is_empty() && !head.contains(' ') => head.to_owned(),
        _ => "libc/other".to_owned(),
    }
}

/// Frames of an allocation stack that only say "this allocates", not who asked.
fn allocator_frame(f: &str) -> bool {
    [
        "malloc",
        "calloc",
        "realloc",
        "__rust_",
        "alloc::alloc::",
        "alloc::raw_vec",
        "<alloc::raw_vec",
        "alloc::boxed::Box<T>::new",
        "alloc::sync::Arc<T>::new",
        "alloc::vec::Vec<T",
        "<alloc::vec::Vec<T",
        "alloc::string::String",
        "<alloc::string::String",
        "alloc::fmt::format",
        "alloc::borrow::",
        "core::fmt::",
        "<core::fmt::",
        "alloc::str::",
        "<str as alloc",
        "<T as alloc",
        "alloc::slice::",
        "<alloc::boxed",
        "<alloc::sync",
    ]
    .iter()
    .any(|p| f.starts_with(p))
}

/// A dhat frame ("0x1234: name (in /bin)" or "... (file.rs:12:3)") as the function name.
fn frame_name(f: &str) -> &str {
    let f = f.split_once(": ").map_or(f, |(_, r)| r);
    f.rsplit_once(" (").map_or(f, |(n, _)| n).trim()
}

/// A dhat JSON report: `field` (`tbk`: heap blocks allocated over the run; `gb`: bytes live
/// at the heap's peak) in total and by allocation site (the first frame that is not the
/// allocator itself).
pub fn parse_dhat(json: &serde_json::Value, field: &str) -> Counts {
    let ftbl: Vec<&str> = json["ftbl"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let mut c = Counts::default();
    for pp in json["pps"].as_array().into_iter().flatten() {
        let blocks = pp[field].as_f64().unwrap_or(0.0);
        c.total += blocks;
        let site = pp["fs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| ftbl.get(usize::try_from(i.as_u64()?).ok()?))
            .map(|f| frame_name(f))
            .find(|f| !allocator_frame(f))
            .unwrap_or("?");
        *c.by.entry(site.to_owned()).or_insert(0.0) += blocks;
    }
    c
}

/// `strace -c` summary: calls in total and per syscall.
pub fn parse_strace(text: &str) -> Counts {
    let mut c = Counts::default();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // "% time  seconds  usecs/call  calls  [errors]  syscall"
        if cols.len() < 5 || number(cols[0]).is_none() {
            continue;
        }
        let Some(calls) = number(cols[3]) else {
            continue;
        };
        let name = cols[cols.len() - 1];
        if name == "total" {
            c.total = calls;
        } else {
            c.by.insert(name.to_owned(), calls);
        }
    }
    c
}

/// Which process is profiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Relay,
    /// `red`: the per-request RED metrics at the proxy's default (`--request-metrics
    /// exemplars`, as in production); false runs with `--request-metrics off`, to show what
    /// they cost.
    Proxy {
        otlp: bool,
        red: bool,
    },
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Self::Relay => "tcp-relay",
            Self::Proxy {
                otlp: false,
                red: true,
            } => "sidetrace (Zipkin JSON export)",
            Self::Proxy {
                otlp: true,
                red: true,
            } => "sidetrace (OTLP export)",
            Self::Proxy {
                otlp: false,
                red: false,
            } => "sidetrace (Zipkin JSON export, request metrics off)",
            Self::Proxy {
                otlp: true,
                red: false,
            } => "sidetrace (OTLP export, request metrics off)",
        }
    }

    /// A file-name-safe name, distinct per target (the tools' reports are named by it).
    fn slug(self) -> &'static str {
        match self {
            Self::Relay => "relay",
            Self::Proxy { otlp, red } => match (otlp, red) {
                (false, true) => "zipkin",
                (true, true) => "otlp",
                (false, false) => "zipkin-nored",
                (true, false) => "otlp-nored",
            },
        }
    }
}

struct Setup {
    exe: PathBuf,
    proxy: PathBuf,
    tmp: PathBuf,
    up: u16,
    sink: u16,
    cpu: String,
}

/// Starts `target` under `tool`, sends `n` requests, stops it cleanly and returns the tool's
/// counts.
///
/// With `idle` > 0, that many more connections are opened after the requests, each after one
/// request, and held open (until just before the stop): dhat then reports the bytes live at
/// the heap's peak (`gb`) rather than blocks allocated.
async fn one_run(
    s: &Setup,
    target: Target,
    tool: &str,
    n: usize,
    conns: usize,
    idle: usize,
) -> Result<Counts> {
    let listen = procs::free_port()?;
    let report = s
        .tmp
        .join(format!("{tool}-{}-{n}-{idle}.out", target.slug()));
    let (program, mut args): (PathBuf, Vec<String>) = match target {
        Target::Relay => (
            s.exe.clone(),
            vec!["relay".into(), lo(listen).to_string(), lo(s.up).to_string()],
        ),
        Target::Proxy { otlp, red } => {
            let path = if otlp { "v1/traces" } else { "api/v2/spans" };
            let ports = [listen, procs::free_port()?, procs::free_port()?];
            let collector = format!("http://127.0.0.1:{}/{path}", s.sink);
            let mut args = proxy_args(
                ports,
                Listener::Inbound,
                lo(s.up),
                &collector,
                DEFAULT_MAX_CONNECTIONS,
            );
            if !red {
                args.extend(["--request-metrics".to_owned(), "off".to_owned()]);
            }
            (s.proxy.clone(), args)
        }
    };
    let admin = match target {
        Target::Proxy { .. } => args
            .iter()
            .position(|a| a == "--admin-port")
            .and_then(|i| args[i + 1].parse::<u16>().ok()),
        Target::Relay => None,
    };
    let report_s = report.display().to_string();
    let (wrapper, mut wrap): (&str, Vec<String>) = match tool {
        "callgrind" => (
            "valgrind",
            vec![
                "--tool=callgrind".into(),
                format!("--callgrind-out-file={report_s}"),
            ],
        ),
        "dhat" => (
            "valgrind",
            vec!["--tool=dhat".into(), format!("--dhat-out-file={report_s}")],
        ),
        "strace" => (
            "strace",
            vec!["-f".into(), "-c".into(), "-o".into(), report_s.clone()],
        ),
        other => bail!("unknown tool {other} (callgrind, dhat, strace)"),
    };
    wrap.push(program.display().to_string());
    wrap.append(&mut args);
    let which = Command::new("which").arg(wrapper).output()?;
    if !which.status.success() {
        bail!("{wrapper} is not installed");
    }
    let wrapper = PathBuf::from(String::from_utf8_lossy(&which.stdout).trim());
    let log = report.with_extension("log");
    let mut p = Proc::spawn(target.label(), &s.cpu, &wrapper, &wrap, &[], Some(&log))?;
    procs::wait_port(lo(listen), Duration::from_secs(120)).with_context(|| {
        format!(
            "{} under {tool} did not start; see {}",
            target.label(),
            log.display()
        )
    })?;
    if let Some(admin) = admin {
        procs::wait_port(lo(admin), Duration::from_secs(60))?;
    }
    drive(lo(listen), n, conns).await?;
    if idle > 0 {
        let (held, err) = crate::load::idle_connections(lo(listen), idle).await;
        if let Some(e) = err {
            bail!("opening {idle} idle connections: {e}");
        }
        drop(held);
    }
    match admin {
        Some(port) => {
            let mut c = tokio::net::TcpStream::connect(lo(port)).await?;
            tokio::io::AsyncWriteExt::write_all(
                &mut c,
                b"POST /shutdown HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
            .await?;
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut c, &mut sink).await;
        }
        None => {
            // strace stays attached through a SIGTERM of its own: stop the traced process.
            let pid = if tool == "strace" {
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", p.pid()))?
                    .split_whitespace()
                    .next()
                    .map(str::to_owned)
                    .context("strace has no traced child")?
            } else {
                p.pid().to_string()
            };
            Command::new("kill").arg("-TERM").arg(pid).status()?;
        }
    }
    p.wait_exit(Duration::from_secs(120))?;
    match tool {
        "callgrind" => {
            let out = Command::new("callgrind_annotate")
                .arg("--threshold=100")
                .arg(&report)
                .output()
                .context("callgrind_annotate")?;
            Ok(parse_callgrind_annotate(&String::from_utf8_lossy(
                &out.stdout,
            )))
        }
        "dhat" => {
            let text = std::fs::read_to_string(&report)?;
            let field = if idle > 0 { "gb" } else { "tbk" };
            Ok(parse_dhat(&serde_json::from_str(&text)?, field))
        }
        _ => Ok(parse_strace(&std::fs::read_to_string(&report)?)),
    }
}

/// `n` keep-alive `GET /small` requests, spread over `conns` connections, back to back.
async fn drive(addr: std::net::SocketAddr, n: usize, conns: usize) -> Result<()> {
    let conns = conns.clamp(1, n.max(1));
    // Opening each connection sends one request: count those in.
    let client = Client::new(addr, Proto::H1, conns).await?;
    let rest = n.saturating_sub(conns);
    let mut tasks = Vec::new();
    for i in 0..conns {
        let share = rest / conns + usize::from(i < rest % conns);
        let client = Arc::clone(&client);
        tasks.push(tokio::spawn(async move {
            let req = Req::get("/small");
            for _ in 0..share {
                client.send(&req).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// A two-column table; `head` names the key, `per` the unit of the figures.
fn render_table(out: &mut String, head: &str, per: &str, rows: &[(&str, f64)], digits: usize) {
    let _ = writeln!(out, "| {head} | {per} |\n|---|--:|");
    for (k, v) in rows {
        let k: String = k.chars().take(110).collect();
        let _ = writeln!(out, "| `{}` | {v:.digits$} |", k.replace('|', "\\|"));
    }
    out.push('\n');
}

/// Runs the profile and returns its Markdown section.
pub async fn run(opts: ProfileOpts) -> Result<String> {
    let root = procs::workspace_root();
    let exe = std::env::current_exe()?;
    let proxy = opts.proxy_bin.clone().unwrap_or_else(|| {
        exe.parent()
            .map_or_else(|| root.join("target/profiling"), Path::to_path_buf)
            .join("sidetrace-proxy")
    });
    let tmp = std::env::temp_dir().join(format!("st-{}-profile", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let cpu = "1".to_owned();
    // The upstream app and the span sink, on the other CPU than the profiled process.
    let mut peers = Vec::new();
    for which in ["upstream", "sink"] {
        let port = procs::free_port()?;
        let args = [which.to_owned(), lo(port).to_string()];
        peers.push((Proc::spawn(which, "0", &exe, &args, &[], None)?, port));
        procs::wait_port(lo(port), Duration::from_secs(10))?;
    }
    let (up_port, sink_port) = (peers[0].1, peers[1].1);
    let s = Setup {
        exe: exe.clone(),
        proxy: proxy.clone(),
        tmp: tmp.clone(),
        up: up_port,
        sink: sink_port,
        cpu,
    };
    let started = Instant::now();
    let targets = [
        Target::Relay,
        Target::Proxy {
            otlp: false,
            red: true,
        },
        Target::Proxy {
            otlp: true,
            red: true,
        },
        Target::Proxy {
            otlp: false,
            red: false,
        },
        Target::Proxy {
            otlp: true,
            red: false,
        },
    ];
    let n = opts.requests;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Counted, not timed: each target runs twice under each tool, with {w} and with {w}+{n} \
         keep-alive `GET /small` requests (128 B response) over {c} connections, back to back; \
         the figures are the difference divided by {n}, so start-up, connection set-up and \
         shutdown cancel out. sidetrace-proxy: explicit mode (inbound listener forwarding to the \
         upstream), `--sampling 1` (every request traced and exported to a sink that answers \
         202), one worker thread, request (RED) metrics at their default (`exemplars`, as in \
         production) unless the row says `request metrics off`. tcp-relay: the bench's own tokio `copy_bidirectional` relay \
         (the floor for one user-space hop). Instructions are user space only (callgrind); \
         syscalls are every thread's (strace -f -c); allocations are heap blocks (dhat).\n\n\
         Proxy binary: `{}` (the release build with symbols: `cargo build --profile profiling \
         -p sidetrace-proxy`).\n",
        proxy.display(),
        w = opts.warm,
        c = opts.conns,
    );
    let mut summary: Vec<(String, String, f64)> = Vec::new();
    let mut details = String::new();
    for tool in &opts.tools {
        for target in targets {
            eprintln!(
                "profile: {tool} {} ({:.0} s so far)",
                target.label(),
                started.elapsed().as_secs_f64()
            );
            let short = one_run(&s, target, tool, opts.warm, opts.conns, 0).await;
            let long = match &short {
                Ok(_) => one_run(&s, target, tool, opts.warm + n, opts.conns, 0).await,
                Err(e) => Err(anyhow::anyhow!("{e:#}")),
            };
            let (short, long) = match (short, long) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => {
                    let _ = writeln!(details, "{tool} {}: not measured: {e:#}\n", target.label());
                    continue;
                }
            };
            let per = Counts::per_request(&long, &short, n);
            summary.push((tool.clone(), target.label().to_owned(), per.total));
            if matches!(target, Target::Relay) && tool != "strace" {
                continue;
            }
            // Without request metrics: the totals only (the difference is the metrics).
            if matches!(target, Target::Proxy { red: false, .. }) {
                continue;
            }
            match tool.as_str() {
                "callgrind" => {
                    let _ = writeln!(
                        details,
                        "### Instructions per request, {}: by crate (self cost)\n",
                        target.label()
                    );
                    render_table(
                        &mut details,
                        "crate",
                        "per request",
                        &per.grouped(crate_of).top(opts.top),
                        0,
                    );
                    let _ = writeln!(
                        details,
                        "### Instructions per request, {}: top functions (self cost)\n",
                        target.label()
                    );
                    render_table(
                        &mut details,
                        "function",
                        "per request",
                        &per.top(opts.top),
                        0,
                    );
                }
                "dhat" => {
                    let _ = writeln!(
                        details,
                        "### Heap allocations per request, {}: by site (first non-allocator frame)\n",
                        target.label()
                    );
                    let rows = per.top_at_least(opts.top, 0.05);
                    render_table(&mut details, "site", "per request", &rows, 2);
                }
                _ => {
                    let _ = writeln!(details, "### Syscalls per request, {}\n", target.label());
                    let rows = per.top_at_least(opts.top, 0.01);
                    render_table(&mut details, "syscall", "per request", &rows, 2);
                }
            }
        }
    }
    if opts.idle_conns > 0 {
        eprintln!(
            "profile: heap per idle connection ({:.0} s so far)",
            started.elapsed().as_secs_f64()
        );
        let target = Target::Proxy {
            otlp: false,
            red: true,
        };
        let k = opts.idle_conns;
        let base = one_run(&s, target, "dhat", 10, 1, 0).await;
        let held = match &base {
            Ok(_) => one_run(&s, target, "dhat", 10, 1, k).await,
            Err(e) => Err(anyhow::anyhow!("{e:#}")),
        };
        match (base, held) {
            (Ok(base), Ok(held)) => {
                let per = Counts::per_request(&held, &base, k);
                summary.push(("dhat-idle".to_owned(), target.label().to_owned(), per.total));
                let _ = writeln!(
                    details,
                    "### Heap bytes per idle keep-alive connection, sidetrace: by site\n\n\
                     Bytes live at the heap's peak with {k} idle connections (each after one \
                     request) minus the same without them, divided by {k}; malloc's own overhead \
                     and untouched pages are not in it (RssAnon in the memory scenario is the \
                     figure of record).\n"
                );
                let rows = per.top_at_least(opts.top, 1.0);
                render_table(&mut details, "site", "bytes per connection", &rows, 0);
            }
            (Err(e), _) | (_, Err(e)) => {
                let _ = writeln!(details, "heap per idle connection: not measured: {e:#}\n");
            }
        }
    }
    let _ = writeln!(
        md,
        "| tool | measure | target | per request |\n|---|---|---|--:|"
    );
    for (tool, target, v) in &summary {
        let measure = match tool.as_str() {
            "callgrind" => "instructions (user space)",
            "dhat" => "heap allocations",
            "dhat-idle" => "heap bytes per idle connection (not per request)",
            _ => "syscalls",
        };
        let digits = if tool == "callgrind" { 0 } else { 2 };
        let _ = writeln!(md, "| {tool} | {measure} | {target} | {v:.digits$} |");
    }
    md.push('\n');
    md.push_str(&details);
    let _ = writeln!(
        md,
        "Reproduce: `cargo build --profile profiling -p sidetrace-proxy && cargo build --profile profiling -p sidetrace-bench --bin \
         sidetrace-bench && target/profiling/sidetrace-bench profile` ({} s here).",
        started.elapsed().as_secs_f64().round()
    );
    if opts.keep_reports {
        eprintln!("reports kept in {}", tmp.display());
    } else {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_request_is_the_difference_over_n() {
        let short = Counts {
            total: 100.0,
            by: BTreeMap::from([("a".to_owned(), 40.0)]),
        };
        let long = Counts {
            total: 300.0,
            by: BTreeMap::from([("a".to_owned(), 140.0), ("b".to_owned(), 60.0)]),
        };
        let per = Counts::per_request(&long, &short, 100);
        assert_eq!(per.total, 2.0);
        assert_eq!(per.by["a"], 1.0);
        assert_eq!(per.top(1), vec![("a", 1.0)]);
    }

    #[test]
    fn reads_callgrind_annotate() {
        let text = "\
--------------------------------------------------------------------------------
Ir
--------------------------------------------------------------------------------
1,234,567 (100.0%)  PROGRAM TOTALS

--------------------------------------------------------------------------------
Ir                 file:function
--------------------------------------------------------------------------------
200,000 (16.20%)  ???:hyper::proto::h1::role::Server::parse [/bin/proxy]
100,000 ( 8.10%)  ./malloc/malloc.c:malloc [/usr/lib/libc.so.6]
";
        let c = parse_callgrind_annotate(text);
        assert_eq!(c.total, 1_234_567.0);
        assert_eq!(c.by["hyper::proto::h1::role::Server::parse"], 200_000.0);
        assert_eq!(c.by["malloc"], 100_000.0);
        let g = c.grouped(crate_of);
        assert_eq!(g.by["hyper"], 200_000.0);
        assert_eq!(g.by["libc/other"], 100_000.0);
        assert_eq!(
            crate_of("<tokio::runtime::task::Task as core::ops::Drop>::drop"),
            "tokio"
        );
    }

    #[test]
    fn reads_dhat_sites_past_the_allocator() {
        let json = serde_json::json!({
            "ftbl": [
                "[root]",
                "0x1: malloc (in /lib/vgpreload_dhat.so)",
                "0x2: alloc::raw_vec::RawVec<T,A>::grow_one (in /bin/p)",
                "0x3: http::header::map::HeaderMap<T>::insert (in /bin/p)"
            ],
            "pps": [
                {"tbk": 7, "fs": [1, 2, 3]},
                {"tbk": 3, "fs": [1, 3]}
            ]
        });
        let c = parse_dhat(&json, "tbk");
        assert_eq!(c.total, 10.0);
        assert_eq!(c.by["http::header::map::HeaderMap<T>::insert"], 10.0);
    }

    #[test]
    fn reads_strace_summaries() {
        let text = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 50.00    0.010000           5      2000           sendto
 30.00    0.006000           3      2000      1000 recvfrom
 20.00    0.004000           2      1000           epoll_wait
------ ----------- ----------- --------- --------- ----------------
100.00    0.020000           4      5000      1000 total
";
        let c = parse_strace(text);
        assert_eq!(c.total, 5000.0);
        assert_eq!(c.by["recvfrom"], 2000.0);
        assert_eq!(c.by["epoll_wait"], 1000.0);
    }
}

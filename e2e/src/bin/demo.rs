//! `sidetrace-demo` (what `make demo` runs): Envoy's tracing sandbox with sidetrace, on one
//! machine. It builds the network-namespace topology of `sidetrace_e2e::netns` (front-proxy →
//! service1 → service2, each pod with real iptables and a real `sidetrace-proxy`, spans to
//! Jaeger when `e2e/peers.sh jaeger` has built it, else to the Zipkin server), sends a few
//! requests, and prints each trace as an indented tree with durations.
//!
//! With a terminal on stdin it then keeps everything running and forwards the collector's UI
//! and the front service to 127.0.0.1 (the pods have no route to the host, so a small
//! forwarder dials into their namespaces) until Ctrl-C. Without one (scripts, CI) it tears
//! down and exits 0 after printing. Missing prerequisites (root, iptables, java, the binaries)
//! are explained and exit 2.
//!
//! `--headerless` shows what parent inference does for apps that copy no trace headers: the
//! apps copy nothing, and the same requests run twice, first with the TracedServices as they
//! are (each pod's call starts a trace of its own: three pieces per request), then with
//! `inferParents: true` (one whole trace per request, the calls tagged
//! `sidetrace.parent=inferred`).

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use sidetrace_e2e::collector::{Span, render_tree};
use sidetrace_e2e::netns::{Binaries, CollectorChoice, Front, Options, Pod, Topology, client};

#[derive(Debug, Parser)]
#[command(name = "sidetrace-demo", about = "The local sidetrace tracing demo")]
struct Args {
    /// Host port for the collector UI (127.0.0.1); another free port is used when it is taken.
    #[arg(long)]
    ui_port: Option<u16>,
    /// Host port forwarded to the front service (127.0.0.1).
    #[arg(long, default_value_t = 18080)]
    front_port: u16,
    /// Tear down after printing even on a terminal.
    #[arg(long)]
    no_wait: bool,
    /// Run Envoy (e2e/peers.sh envoy) as the front proxy, as in the classic sandbox, in front
    /// of the sidetrace-meshed services.
    #[arg(long)]
    envoy_front: bool,
    /// Apps that copy no trace headers, without and then with parent inference
    /// (`inferParents`).
    #[arg(long, conflicts_with = "envoy_front")]
    headerless: bool,
}

/// One demo request: path, headers, and how many spans its trace should end up with.
type DemoRequest = (&'static str, &'static [(&'static str, &'static str)], usize);

/// The demo's requests.
const REQUESTS: &[DemoRequest] = &[
    ("/trace/1", &[], 5),
    ("/trace/2", &[], 3),
    (
        "/trace/1",
        &[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")],
        5,
    ),
    (
        "/trace/1",
        &[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )],
        5,
    ),
    ("/trace/1", &[("x-b3-sampled", "0")], 0),
];

/// Upper bound on waiting for spans: a hang guard.
const SPANS_WAIT: Duration = Duration::from_secs(45);

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();
    let bins = match Binaries::find(CollectorChoice::PreferJaeger) {
        Ok(b) => b,
        Err(reason) => {
            eprintln!("make demo cannot run here: {reason}");
            eprintln!(
                "It needs root (network namespaces, iptables), iptables, java + the Zipkin jar \
                 (e2e/peers.sh zipkin) or Jaeger (e2e/peers.sh jaeger), and the workspace binaries."
            );
            return ExitCode::from(2);
        }
    };
    // Ctrl-C or SIGTERM at any point still runs the topology's Drop (namespaces deleted).
    // Biased: once the demo is serving, its own Ctrl-C wait wins and the exit is a clean 0.
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("demo failed: installing the SIGTERM handler: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        biased;
        r = run(args, bins) => match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("demo failed: {e:#}");
                ExitCode::FAILURE
            }
        },
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\ninterrupted; tearing down");
            ExitCode::from(130)
        }
        _ = term.recv() => {
            eprintln!("terminated; tearing down");
            ExitCode::from(143)
        }
    }
}

async fn run(args: Args, bins: Binaries) -> Result<()> {
    let label = bins.collector.label();
    println!("==> starting pods front-proxy, service1, service2 and {label} in network namespaces");
    // OTLP/HTTP to Jaeger (its native receiver), Zipkin v2 JSON to the Zipkin server.
    println!(
        "    the sidecars export {} to {label}",
        match bins.collector.protocol() {
            sidetrace_contract::CollectorProtocol::OtlpHttp => "OTLP/HTTP (protobuf, /v1/traces)",
            sidetrace_contract::CollectorProtocol::Zipkin => "Zipkin v2 JSON (/api/v2/spans)",
        }
    );
    if args.headerless {
        return run_headerless(&args, &bins).await;
    }
    let front = if args.envoy_front {
        if bins.envoy.is_none() {
            bail!("--envoy-front: Envoy is not installed; run `e2e/peers.sh envoy`");
        }
        Front::Envoy
    } else {
        Front::Sidetrace
    };
    let t = start(
        &bins,
        Options {
            front,
            ..Options::default()
        },
    )
    .await?;
    match send_and_print(&t, front).await {
        Ok(()) => {}
        Err(e) => {
            t.keep_logs();
            return Err(e);
        }
    }
    if args.no_wait || !std::io::stdin().is_terminal() {
        println!("==> not a terminal: tearing down");
        return Ok(());
    }
    serve_until_ctrl_c(&t, &args).await
}

async fn start(bins: &Binaries, opts: Options) -> Result<Topology> {
    let t0 = Instant::now();
    let t = Topology::start(bins, opts).await?;
    println!(
        "    ready in {:.1}s (10.250.1.0/24: front {}, service1 {}, service2 {}, {} {})",
        t0.elapsed().as_secs_f64(),
        Pod::Front.ip(),
        Pod::Service1.ip(),
        Pod::Service2.ip(),
        bins.collector.label(),
        Pod::Collector.ip()
    );
    Ok(t)
}

/// Requests per pass of `--headerless`.
const HEADERLESS_REQUESTS: usize = 2;

/// `--headerless`: the same requests through apps that copy no headers, inference off then on.
async fn run_headerless(args: &Args, bins: &Binaries) -> Result<()> {
    let mut last = None;
    for infer_parents in [false, true] {
        println!(
            "==> apps that copy no trace headers; TracedServices with inferParents: {infer_parents}"
        );
        let t = start(
            bins,
            Options {
                copy_trace_headers: false,
                infer_parents,
                ..Options::default()
            },
        )
        .await?;
        if let Err(e) = send_headerless(&t).await {
            t.keep_logs();
            return Err(e);
        }
        last = Some(t);
    }
    println!(
        "    Off, each pod's call starts a trace of its own; on, each call continues the one \
         request its pod was serving (tag sidetrace.parent=inferred). With several requests in \
         flight at once a call is not linked (tag sidetrace.parent=ambiguous): never a guess."
    );
    match last {
        Some(t) if !args.no_wait && std::io::stdin().is_terminal() => {
            serve_until_ctrl_c(&t, args).await
        }
        _ => {
            println!("==> not a terminal: tearing down");
            Ok(())
        }
    }
}

async fn send_headerless(t: &Topology) -> Result<()> {
    for _ in 0..HEADERLESS_REQUESTS {
        let r = t.get(Pod::Client, Pod::Front, "/trace/1", &[]).await?;
        println!(
            "    GET /trace/1 -> {} {}",
            r.status,
            r.body.lines().next().unwrap_or("")
        );
        if !r.status.is_success() {
            bail!("GET /trace/1 answered {}:\n{}", r.status, r.body);
        }
    }
    let spans = t.wait_spans(HEADERLESS_REQUESTS * 5, SPANS_WAIT).await?;
    let mut traces: std::collections::BTreeMap<&str, Vec<Span>> = Default::default();
    for s in &spans {
        traces.entry(&s.trace_id).or_default().push(s.clone());
    }
    let mut traces: Vec<Vec<Span>> = traces.into_values().collect();
    traces.sort_by_key(|tr| tr.iter().filter_map(|s| s.timestamp).min());
    println!(
        "==> {} requests, {} traces in {}",
        HEADERLESS_REQUESTS,
        traces.len(),
        t.collector().kind().label()
    );
    for trace in &traces {
        println!();
        print!("{}", render_tree(trace));
    }
    println!();
    Ok(())
}

async fn send_and_print(t: &Topology, front: Front) -> Result<()> {
    println!(
        "==> requests from the client pod to front-proxy ({})",
        Pod::Front.app()
    );
    let mut want_traces = Vec::new();
    for (path, headers, spans) in REQUESTS {
        let r = t.get(Pod::Client, Pod::Front, path, headers).await?;
        let shown: Vec<String> = headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        println!(
            "    GET {path} {}-> {} {}",
            if shown.is_empty() {
                String::new()
            } else {
                format!("[{}] ", shown.join(", "))
            },
            r.status,
            r.body.lines().next().unwrap_or("")
        );
        if !r.status.is_success() {
            bail!("GET {path} answered {}:\n{}", r.status, r.body);
        }
        if *spans > 0 {
            // Envoy records one span per request where a sidetrace front records two.
            want_traces.push(if front == Front::Envoy {
                spans - 1
            } else {
                *spans
            });
        }
    }
    println!(
        "==> traces in {} (sampled=0 request excluded)",
        t.collector().kind().label()
    );
    let traces = wait_traces(t, &want_traces).await?;
    for trace in &traces {
        println!();
        print!("{}", render_tree(trace));
    }
    println!();
    Ok(())
}

/// Wait until the collector holds as many complete front-proxy traces as requested, and
/// return them oldest first.
async fn wait_traces(t: &Topology, want: &[usize]) -> Result<Vec<Vec<Span>>> {
    let deadline = Instant::now() + SPANS_WAIT;
    let total: usize = want.iter().sum();
    loop {
        let mut traces = t
            .collector()
            .traces(Pod::Front.service_name(), 50)
            .await
            .unwrap_or_default();
        let spans: usize = traces.iter().map(Vec::len).sum();
        if traces.len() >= want.len() && spans >= total {
            traces.sort_by_key(|tr| tr.iter().filter_map(|s| s.timestamp).min());
            return Ok(traces);
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {} traces ({spans} of {total} spans) after {SPANS_WAIT:?}; logs in {}",
                traces.len(),
                want.len(),
                t.dir().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn bind(port: u16) -> Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => Ok(l),
        Err(_) => tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding a port on 127.0.0.1"),
    }
}

async fn serve_until_ctrl_c(t: &Topology, args: &Args) -> Result<()> {
    let collector = t.collector();
    let ui = bind(args.ui_port.unwrap_or(collector.kind().query_port())).await?;
    let ui_addr: SocketAddr = ui.local_addr()?;
    let front = bind(args.front_port).await?;
    let front_addr: SocketAddr = front.local_addr()?;
    let ui_task = tokio::spawn(client::forward(
        ui,
        collector.namespace().to_owned(),
        collector.query_addr(),
    ));
    let front_task = tokio::spawn(client::forward(front, t.ns(Pod::Client), Pod::Front.app()));
    let ui_url = match collector.kind() {
        sidetrace_e2e::collector::Kind::Zipkin { .. } => format!("http://{ui_addr}/zipkin/"),
        sidetrace_e2e::collector::Kind::Jaeger { .. } => format!("http://{ui_addr}/"),
        // The demo never picks the benchmarks' sink.
        sidetrace_e2e::collector::Kind::CountingSink { .. } => format!("http://{ui_addr}/count"),
    };
    println!("==> running until Ctrl-C");
    println!("    {} UI:      {ui_url}", collector.kind().label());
    println!("    front-proxy:    curl http://{front_addr}/trace/1");
    println!("    logs:           {}", t.dir().display());
    let r = tokio::signal::ctrl_c().await;
    ui_task.abort();
    front_task.abort();
    println!("\n==> tearing down");
    r.context("waiting for Ctrl-C")
}

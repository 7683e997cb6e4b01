//! `sidetrace-injector`: the mutating admission webhook binary. See the library docs for the
//! model; this file parses the command line, wires the shell together and serves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use sidetrace_contract::defaults;
use sidetrace_injector::metrics::Metrics;
use sidetrace_injector::review::{ClusterView, StaticView};
use sidetrace_injector::server::{self, AppState};
use sidetrace_injector::settings::DEFAULT_HOLD_COMMAND;
use sidetrace_injector::{Settings, SidecarMode, cluster, tls};

/// Exit code for unusable configuration (sysexits EX_USAGE), as every sidetrace binary.
const EXIT_CONFIG: i32 = 64;

/// Whether to inject the proxy as a native sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum NativeSidecars {
    /// Ask the apiserver's /version at start-up (1.29+ → native); false when unreachable.
    Auto,
    /// Always native (`restartPolicy: Always` init container).
    True,
    /// Always classic (first regular container with a postStart hold).
    False,
}

/// Mutating admission webhook that injects the sidetrace init container and sidecar into pods.
#[derive(Debug, Parser)]
#[command(name = "sidetrace-injector", version, about)]
struct Args {
    /// Address to serve HTTPS on.
    #[arg(
        long,
        env = "SIDETRACE_INJECTOR_LISTEN",
        default_value = "0.0.0.0:9443"
    )]
    listen: SocketAddr,
    /// PEM certificate chain served to the apiserver; re-read when it changes.
    #[arg(
        long,
        env = "SIDETRACE_INJECTOR_TLS_CERT",
        required_unless_present = "plain_http"
    )]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert; re-read when it changes.
    #[arg(
        long,
        env = "SIDETRACE_INJECTOR_TLS_KEY",
        required_unless_present = "plain_http"
    )]
    tls_key: Option<PathBuf>,
    /// How often to check the certificate files for changes, in milliseconds.
    #[arg(long, env = "SIDETRACE_INJECTOR_TLS_RELOAD_INTERVAL_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(10..))]
    tls_reload_interval_ms: u64,
    /// Serve plain HTTP instead of HTTPS (local testing only: the apiserver requires HTTPS).
    /// How long to wait at start for usable --tls-cert/--tls-key files (0: fail at once).
    #[arg(long, env = "SIDETRACE_INJECTOR_TLS_WAIT_SECS", default_value_t = 120)]
    tls_wait_secs: u64,
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    plain_http: bool,
    /// Inject the proxy as a native sidecar: auto, true or false.
    #[arg(
        long,
        env = "SIDETRACE_INJECTOR_NATIVE_SIDECARS",
        value_enum,
        default_value = "auto"
    )]
    native_sidecars: NativeSidecars,
    /// Collector endpoint (OTLP/HTTP `.../v1/traces` or Zipkin v2 `.../api/v2/spans`) when no
    /// TracedService overrides it; checked with the same rule as the proxy's (`http://` or
    /// `https://`, a host, no credentials).
    #[arg(long, env = "SIDETRACE_INJECTOR_COLLECTOR", default_value = defaults::COLLECTOR_ENDPOINT,
          value_parser = parse_collector)]
    collector: String,
    /// Protocol of `--collector` (`otlp-http` or `zipkin`), passed to every proxy; by default
    /// the proxy follows the endpoint's path.
    #[arg(long, env = "SIDETRACE_INJECTOR_COLLECTOR_PROTOCOL")]
    collector_protocol: Option<sidetrace_contract::CollectorProtocol>,
    /// PEM bundle of the CAs an `https://` collector is verified against (instead of the
    /// system's roots), passed to every injected proxy.
    #[arg(long, env = "SIDETRACE_INJECTOR_COLLECTOR_CA_BUNDLE", hide_env_values = true,
          value_parser = parse_ca_bundle)]
    collector_ca_bundle: Option<String>,
    /// Image of the sidetrace-proxy container.
    #[arg(long, env = "SIDETRACE_INJECTOR_PROXY_IMAGE",
          default_value = concat!("sidetrace/proxy:", env!("CARGO_PKG_VERSION")))]
    proxy_image: String,
    /// Image of the sidetrace-init container.
    #[arg(long, env = "SIDETRACE_INJECTOR_INIT_IMAGE",
          default_value = concat!("sidetrace/init:", env!("CARGO_PKG_VERSION")))]
    init_image: String,
    /// Namespace of the sidetrace control plane; never injected.
    #[arg(long, env = "SIDETRACE_INJECTOR_CONTROL_PLANE_NAMESPACE", default_value = defaults::CONTROL_PLANE_NAMESPACE)]
    control_plane_namespace: String,
    /// uid of the proxy (its traffic is exempt from capture).
    #[arg(long, env = "SIDETRACE_INJECTOR_PROXY_UID", default_value_t = defaults::PROXY_UID)]
    proxy_uid: u32,
    /// gid of the proxy.
    #[arg(long, env = "SIDETRACE_INJECTOR_PROXY_GID", default_value_t = defaults::PROXY_GID)]
    proxy_gid: u32,
    /// Proxy port for redirected inbound connections.
    #[arg(long, env = "SIDETRACE_INJECTOR_INBOUND_PORT", default_value_t = defaults::INBOUND_CAPTURE_PORT)]
    inbound_port: u16,
    /// Proxy port for redirected outbound connections.
    #[arg(long, env = "SIDETRACE_INJECTOR_OUTBOUND_PORT", default_value_t = defaults::OUTBOUND_CAPTURE_PORT)]
    outbound_port: u16,
    /// Proxy health/readiness/metrics port (never captured).
    #[arg(long, env = "SIDETRACE_INJECTOR_ADMIN_PORT", default_value_t = defaults::ADMIN_PORT)]
    admin_port: u16,
    /// Proxy log level unless a pod's sidetrace.dev/log-level says otherwise.
    #[arg(
        long,
        env = "SIDETRACE_INJECTOR_PROXY_LOG_LEVEL",
        default_value = "info"
    )]
    proxy_log_level: String,
    /// imagePullPolicy of the injected containers (Always, IfNotPresent, Never).
    #[arg(long, env = "SIDETRACE_INJECTOR_IMAGE_PULL_POLICY", default_value = "IfNotPresent",
          value_parser = ["Always", "IfNotPresent", "Never"])]
    image_pull_policy: String,
    /// Sampling rate (0..1) given to proxies unless a pod's sidetrace.dev/sampling says
    /// otherwise; a matched TracedService's rendered config wins inside the proxy.
    #[arg(long, env = "SIDETRACE_INJECTOR_SAMPLING", default_value_t = defaults::SAMPLING_RATE,
          value_parser = parse_rate)]
    sampling: f64,
    /// Proxy CPU request (a pod's sidetrace.dev/proxy-cpu overrides it and also sets a limit).
    #[arg(long, env = "SIDETRACE_INJECTOR_PROXY_CPU_REQUEST", default_value = defaults::PROXY_CPU_REQUEST,
          value_parser = parse_quantity)]
    proxy_cpu_request: String,
    /// Proxy memory request (a pod's sidetrace.dev/proxy-memory overrides request and limit).
    #[arg(long, env = "SIDETRACE_INJECTOR_PROXY_MEMORY_REQUEST", default_value = defaults::PROXY_MEMORY_REQUEST,
          value_parser = parse_quantity)]
    proxy_memory_request: String,
    /// Proxy memory limit.
    #[arg(long, env = "SIDETRACE_INJECTOR_PROXY_MEMORY_LIMIT", default_value = defaults::PROXY_MEMORY_LIMIT,
          value_parser = parse_quantity)]
    proxy_memory_limit: String,
    /// IPv6 capture by sidetrace-init: `auto` (when the pod has an IPv6 address), `on`
    /// (always; fail the pod's init when ip6tables cannot be programmed) or `off`.
    #[arg(long, env = "SIDETRACE_INJECTOR_INIT_IPV6", default_value = "auto", num_args = 0..=1,
          default_missing_value = "on", value_parser = sidetrace_contract::Ipv6Capture::from_str)]
    init_ipv6: sidetrace_contract::Ipv6Capture,
    /// The injector's own log filter (a tracing EnvFilter directive such as `info` or
    /// `sidetrace_injector=debug`).
    #[arg(long, env = "SIDETRACE_INJECTOR_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Classic mode: the proxy's postStart command that returns once the proxy is ready
    /// (whitespace-separated; empty for no hold).
    #[arg(long, env = "SIDETRACE_INJECTOR_PROXY_HOLD_COMMAND", default_value_t = DEFAULT_HOLD_COMMAND.join(" "))]
    proxy_hold_command: String,
    /// Watch TracedServices (and namespace labels) cluster-wide. Without cluster access the
    /// webhook logs that and runs without them.
    #[arg(long, env = "SIDETRACE_INJECTOR_WATCH_TRACED_SERVICES", default_value_t = true,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    watch_traced_services: bool,
    /// On SIGTERM, keep serving (with /readyz failing) this many seconds so that the
    /// apiserver stops sending requests before the listener closes.
    #[arg(
        long,
        env = "SIDETRACE_INJECTOR_SHUTDOWN_DELAY_SECS",
        default_value_t = 3
    )]
    shutdown_delay_secs: u64,
    /// Longest wait for the caches' first sync before /readyz reports ready anyway, in seconds.
    #[arg(
        long,
        env = "SIDETRACE_INJECTOR_CACHE_SYNC_TIMEOUT_SECS",
        default_value_t = 30
    )]
    cache_sync_timeout_secs: u64,
}

fn parse_rate(raw: &str) -> Result<f64, String> {
    sidetrace_injector::overrides::parse_sampling(raw).map_err(|e| format!("{raw:?} {e}"))
}

fn parse_quantity(raw: &str) -> Result<String, String> {
    sidetrace_injector::overrides::parse_quantity(raw).map_err(|e| format!("{raw:?} {e}"))
}

fn parse_collector(text: &str) -> Result<String, String> {
    sidetrace_contract::check_collector_endpoint(text).map(|()| text.to_owned())
}

/// A PEM bundle with at least one certificate and nothing unreadable (what the proxy checks).
fn parse_ca_bundle(text: &str) -> Result<String, String> {
    let mut reader = text.as_bytes();
    let mut n = 0;
    for cert in rustls_pemfile::certs(&mut reader) {
        cert.map_err(|e| format!("certificate {} of the bundle: {e}", n + 1))?;
        n += 1;
    }
    if n == 0 {
        return Err("the bundle holds no PEM certificate".into());
    }
    Ok(text.to_owned())
}

fn main() {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // --help and --version are not errors; every other parse failure is bad config.
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&args.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("sidetrace-injector: --log-level {:?}: {e}", args.log_level);
            std::process::exit(EXIT_CONFIG);
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
        std::process::exit(EXIT_CONFIG);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sidetrace-injector: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("sidetrace-injector: {e:#}");
        std::process::exit(EXIT_CONFIG);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    // kube's client and the server both use rustls; pick the process default explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Arc::new(Metrics::default());

    // TLS material is loaded before anything else so that a bad file fails fast (exit 64).
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            // In a cluster the chart creates the Secret empty and the operator fills it a few
            // seconds later: wait for it rather than crash-loop into the kubelet's back-off.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(args.tls_wait_secs);
            let (ck, bytes) = loop {
                match tls::load(cert, key) {
                    Ok(loaded) => break loaded,
                    // Only "not written yet" (missing or empty files) is waited for; a file
                    // with bad content is a configuration error and fails at once.
                    Err(e)
                        if tokio::time::Instant::now() < deadline
                            && [cert, key]
                                .iter()
                                .any(|p| std::fs::metadata(p).map_or(true, |m| m.len() == 0)) =>
                    {
                        tracing::info!(error = %e, "waiting for the webhook certificate");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => return Err(e).context("loading --tls-cert/--tls-key"),
                }
            };
            let resolver = Arc::new(tls::ReloadingResolver::new(ck));
            let config = tls::server_config(Arc::clone(&resolver))?;
            let watch = tls::Watch {
                cert: cert.clone(),
                key: key.clone(),
                interval: Duration::from_millis(args.tls_reload_interval_ms),
            };
            Some((config, resolver, watch, bytes))
        }
        _ => None,
    };

    let ready = Arc::new(AtomicBool::new(false));
    let wants_client = args.watch_traced_services || args.native_sidecars == NativeSidecars::Auto;
    let client = if wants_client {
        match cluster::client().await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "no Kubernetes API access: running without TracedServices or namespace labels");
                None
            }
        }
    } else {
        None
    };
    let native = match args.native_sidecars {
        NativeSidecars::True => true,
        NativeSidecars::False => false,
        NativeSidecars::Auto => match &client {
            Some(c) => match tokio::time::timeout(
                Duration::from_secs(10),
                cluster::detect_native_sidecars(c),
            )
            .await
            {
                Ok(Ok(native)) => {
                    tracing::info!(
                        native,
                        "detected native sidecar support from the apiserver version"
                    );
                    native
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read the apiserver version; using classic sidecars");
                    false
                }
                Err(_) => {
                    tracing::warn!("apiserver version request timed out; using classic sidecars");
                    false
                }
            },
            None => {
                tracing::warn!(
                    "no Kubernetes API access to detect native sidecar support; using classic sidecars"
                );
                false
            }
        },
    };
    let view: Arc<dyn ClusterView> = match client {
        Some(c) if args.watch_traced_services => Arc::new(cluster::start(
            c,
            true,
            Arc::clone(&ready),
            Duration::from_secs(args.cache_sync_timeout_secs),
        )),
        _ => {
            ready.store(true, std::sync::atomic::Ordering::Relaxed);
            Arc::new(StaticView::default())
        }
    };

    let settings = Settings {
        proxy_image: args.proxy_image,
        init_image: args.init_image,
        mode: if native {
            SidecarMode::Native
        } else {
            SidecarMode::Classic
        },
        collector: args.collector,
        collector_protocol: args.collector_protocol,
        collector_ca_bundle: args.collector_ca_bundle,
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        admin_port: args.admin_port,
        proxy_uid: i64::from(args.proxy_uid),
        proxy_gid: i64::from(args.proxy_gid),
        log_level: args.proxy_log_level,
        image_pull_policy: args.image_pull_policy,
        sampling: args.sampling,
        proxy_cpu_request: args.proxy_cpu_request,
        proxy_memory_request: args.proxy_memory_request,
        proxy_memory_limit: args.proxy_memory_limit,
        init_ipv6: args.init_ipv6,
        hold_command: args
            .proxy_hold_command
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        control_plane_namespace: args.control_plane_namespace,
    };
    tracing::info!(mode = settings.mode.as_str(), proxy_image = %settings.proxy_image,
        init_image = %settings.init_image, "injector settings");
    let state = Arc::new(AppState {
        settings,
        view,
        metrics: Arc::clone(&metrics),
        ready: Arc::clone(&ready),
    });
    let router = server::router(state);

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let addr = listener.local_addr()?;
    let delay = Duration::from_secs(args.shutdown_delay_secs);
    let shutdown = async move {
        shutdown_signal().await;
        ready.store(false, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            delay_secs = delay.as_secs(),
            "shutting down: unready, still serving"
        );
        tokio::time::sleep(delay).await;
    };
    match tls {
        Some((config, resolver, watch, bytes)) => {
            tokio::spawn(tls::watch(resolver, watch, bytes, metrics));
            // Tests and scripts read this line to learn the bound port.
            println!("sidetrace-injector listening on https://{addr}");
            server::serve_tls(listener, config, router, shutdown).await;
        }
        None => {
            println!("sidetrace-injector listening on http://{addr}");
            server::serve_plain(listener, router, shutdown).await?;
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

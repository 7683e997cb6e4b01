//! The injector's command line and the service it starts: flags parsed once into [`Args`]
//! (clap, every flag with an environment variable), then [`run`] loads TLS, connects to the
//! cluster, builds [`Settings`] and serves. Kept out of `main.rs` so flags are testable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use sidetrace_contract::defaults;

use crate::metrics::Metrics;
use crate::review::{ClusterView, StaticView};
use crate::server::{self, AppState};
use crate::settings::DEFAULT_HOLD_COMMAND;
use crate::{Error, Result, Settings, SidecarMode, cluster, tls};

/// Whether to inject the proxy as a native sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NativeSidecars {
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
pub struct Args {
    /// Address to serve HTTPS on.
    #[arg(
        long,
        env = "SIDETRACE_INJECTOR_LISTEN",
        default_value = "0.0.0.0:9443"
    )]
    pub listen: SocketAddr,
    /// PEM certificate chain served to the apiserver; re-read when it changes.
    #[arg(
        long,
        env = "SIDETRACE_INJECTOR_TLS_CERT",
        required_unless_present = "plain_http"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert; re-read when it changes.
    #[arg(
        long,
        env = "SIDETRACE_INJECTOR_TLS_KEY",
        required_unless_present = "plain_http"
    )]
    pub tls_key: Option<PathBuf>,
    /// How often to check the certificate files for changes, in milliseconds.
    #[arg(long, env = "SIDETRACE_INJECTOR_TLS_RELOAD_INTERVAL_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub tls_reload_interval_ms: u64,
    /// How long to wait at start for usable --tls-cert/--tls-key files (0: fail at once).
    #[arg(long, env = "SIDETRACE_INJECTOR_TLS_WAIT_SECS", default_value_t = 120)]
    pub tls_wait_secs: u64,
    /// Serve plain HTTP instead of HTTPS (local testing only: the apiserver requires HTTPS).
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub plain_http: bool,
    /// Inject the proxy as a native sidecar: auto, true or false.
    #[arg(
        long,
        env = "SIDETRACE_INJECTOR_NATIVE_SIDECARS",
        value_enum,
        default_value = "auto"
    )]
    pub native_sidecars: NativeSidecars,
    /// Collector endpoint (OTLP/HTTP `.../v1/traces` or Zipkin v2 `.../api/v2/spans`) when no
    /// TracedService overrides it; checked with the same rule as the proxy's (`http://` or
    /// `https://`, a host, no credentials).
    #[arg(long, env = "SIDETRACE_INJECTOR_COLLECTOR", default_value = defaults::COLLECTOR_ENDPOINT,
          value_parser = parse_collector)]
    pub collector: String,
    /// Protocol of `--collector` (`otlp-http` or `zipkin`), passed to every proxy; by default
    /// the proxy follows the endpoint's path.
    #[arg(long, env = "SIDETRACE_INJECTOR_COLLECTOR_PROTOCOL")]
    pub collector_protocol: Option<sidetrace_contract::CollectorProtocol>,
    /// PEM bundle of the CAs an `https://` collector is verified against (instead of the
    /// system's roots), passed to every injected proxy.
    #[arg(long, env = "SIDETRACE_INJECTOR_COLLECTOR_CA_BUNDLE", hide_env_values = true,
          value_parser = parse_ca_bundle)]
    pub collector_ca_bundle: Option<String>,
    /// Image of the sidetrace-proxy container.
    #[arg(long, env = "SIDETRACE_INJECTOR_PROXY_IMAGE",
          default_value = concat!("sidetrace/proxy:", env!("CARGO_PKG_VERSION")))]
    pub proxy_image: String,
    /// Image of the sidetrace-init container.
    #[arg(long, env = "SIDETRACE_INJECTOR_INIT_IMAGE",
          default_value = concat!("sidetrace/init:", env!("CARGO_PKG_VERSION")))]
    pub init_image: String,
    /// Namespace of the sidetrace control plane; never injected.
    #[arg(long, env = "SIDETRACE_INJECTOR_CONTROL_PLANE_NAMESPACE", default_value = defaults::CONTROL_PLANE_NAMESPACE)]
    pub control_plane_namespace: String,
    /// uid of the proxy (its traffic is exempt from capture).
    #[arg(long, env = "SIDETRACE_INJECTOR_PROXY_UID", default_value_t = defaults::PROXY_UID)]
    pub proxy_uid: u32,
    /// gid of the proxy.
    #[arg(long, env = "SIDETRACE_INJECTOR_PROXY_GID", default_value_t = defaults::PROXY_GID)]
    pub proxy_gid: u32,
    /// Proxy port for redirected inbound connections.
    #[arg(long, env = "SIDETRACE_INJECTOR_INBOUND_PORT", default_value_t = defaults::INBOUND_CAPTURE_PORT)]
    pub inbound_port: u16,
    /// Proxy port for redirected outbound connections.
    #[arg(long, env = "SIDETRACE_INJECTOR_OUTBOUND_PORT", default_value_t = defaults::OUTBOUND_CAPTURE_PORT)]
    pub outbound_port: u16,
    /// Proxy health/readiness/metrics port (never captured).
    #[arg(long, env = "SIDETRACE_INJECTOR_ADMIN_PORT", default_value_t = defaults::ADMIN_PORT)]
    pub admin_port: u16,
    /// Proxy log level unless a pod's sidetrace.dev/log-level says otherwise.
    #[arg(
        long,
        env = "SIDETRACE_INJECTOR_PROXY_LOG_LEVEL",
        default_value = "info"
    )]
    pub proxy_log_level: String,
    /// imagePullPolicy of the injected containers (Always, IfNotPresent, Never).
    #[arg(long, env = "SIDETRACE_INJECTOR_IMAGE_PULL_POLICY", default_value = "IfNotPresent",
          value_parser = ["Always", "IfNotPresent", "Never"])]
    pub image_pull_policy: String,
    /// Sampling rate (0..1) given to proxies unless a pod's sidetrace.dev/sampling says
    /// otherwise; a matched TracedService's rendered config wins inside the proxy.
    #[arg(long, env = "SIDETRACE_INJECTOR_SAMPLING", default_value_t = defaults::SAMPLING_RATE,
          value_parser = parse_rate)]
    pub sampling: f64,
    /// Proxy CPU request (a pod's sidetrace.dev/proxy-cpu overrides it and also sets a limit).
    #[arg(long, env = "SIDETRACE_INJECTOR_PROXY_CPU_REQUEST", default_value = defaults::PROXY_CPU_REQUEST,
          value_parser = parse_quantity)]
    pub proxy_cpu_request: String,
    /// Proxy memory request (a pod's sidetrace.dev/proxy-memory overrides request and limit).
    #[arg(long, env = "SIDETRACE_INJECTOR_PROXY_MEMORY_REQUEST", default_value = defaults::PROXY_MEMORY_REQUEST,
          value_parser = parse_quantity)]
    pub proxy_memory_request: String,
    /// Proxy memory limit.
    #[arg(long, env = "SIDETRACE_INJECTOR_PROXY_MEMORY_LIMIT", default_value = defaults::PROXY_MEMORY_LIMIT,
          value_parser = parse_quantity)]
    pub proxy_memory_limit: String,
    /// IPv6 capture by sidetrace-init: `auto` (when the pod has an IPv6 address), `on`
    /// (always; fail the pod's init when ip6tables cannot be programmed) or `off`.
    #[arg(long, env = "SIDETRACE_INJECTOR_INIT_IPV6", default_value = "auto", num_args = 0..=1,
          default_missing_value = "on", value_parser = sidetrace_contract::Ipv6Capture::from_str)]
    pub init_ipv6: sidetrace_contract::Ipv6Capture,
    /// The injector's own log filter (a tracing EnvFilter directive such as `info` or
    /// `sidetrace_injector=debug`).
    #[arg(long, env = "SIDETRACE_INJECTOR_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Classic mode: the proxy's postStart command that returns once the proxy is ready
    /// (whitespace-separated; empty for no hold).
    #[arg(long, env = "SIDETRACE_INJECTOR_PROXY_HOLD_COMMAND", default_value_t = DEFAULT_HOLD_COMMAND.join(" "))]
    pub proxy_hold_command: String,
    /// Annotate injected pods for annotation-based Prometheus scraping of the proxy's metrics
    /// (`prometheus.io/scrape`, `/port`, `/path`), unless the pod has `prometheus.io/`
    /// annotations of its own (its app's metrics, which are left as they are).
    #[arg(long, env = "SIDETRACE_INJECTOR_PROMETHEUS_ANNOTATIONS", default_value_t = true,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub prometheus_annotations: bool,
    /// Watch TracedServices (and namespace labels) cluster-wide. Without cluster access the
    /// webhook logs that and runs without them.
    #[arg(long, env = "SIDETRACE_INJECTOR_WATCH_TRACED_SERVICES", default_value_t = true,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub watch_traced_services: bool,
    /// On SIGTERM, keep serving (with /readyz failing) this many seconds so that the
    /// apiserver stops sending requests before the listener closes.
    #[arg(
        long,
        env = "SIDETRACE_INJECTOR_SHUTDOWN_DELAY_SECS",
        default_value_t = 3
    )]
    pub shutdown_delay_secs: u64,
    /// Longest wait for the caches' first sync before /readyz reports ready anyway, in seconds.
    #[arg(
        long,
        env = "SIDETRACE_INJECTOR_CACHE_SYNC_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub cache_sync_timeout_secs: u64,
}

fn parse_rate(raw: &str) -> Result<f64, String> {
    crate::overrides::parse_sampling(raw).map_err(|e| format!("{raw:?} {e}"))
}

fn parse_quantity(raw: &str) -> Result<String, String> {
    crate::overrides::parse_quantity(raw).map_err(|e| format!("{raw:?} {e}"))
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

/// Serves the webhook until SIGTERM or Ctrl-C, after the shutdown delay. Errors say, through
/// [`Error::exit_code`], whether the configuration was unusable or the service failed.
pub async fn run(args: Args) -> Result<()> {
    // kube's client and the server both use rustls; pick the process default explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Arc::new(Metrics::default());

    // TLS material is loaded before anything else so that a bad file fails fast, as bad
    // configuration, before a port is bound.
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
                    Err(e) => return Err(e),
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
        prometheus_annotations: args.prometheus_annotations,
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
        .map_err(|e| Error::Listen(args.listen, e))?;
    let addr = listener.local_addr()?;
    let delay = Duration::from_secs(args.shutdown_delay_secs);
    let signalled = shutdown_signal();
    let shutdown = async move {
        signalled.await;
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

/// Registers for SIGTERM and SIGINT now and returns a future that resolves on either.
/// Registering before the listener serves matters: a SIGTERM that arrives before a lazily
/// registered handler exists would kill the process at once, skipping the unready delay.
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let recv = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                // Without a handler the signal keeps its default action.
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = recv(term) => {},
            () = recv(int) => {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn help_describes_each_flag_with_its_own_text() {
        let help = Args::command().render_long_help().to_string();
        let after = |flag: &str| {
            let at = help
                .find(flag)
                .unwrap_or_else(|| panic!("{flag} in {help}"));
            help[at..].lines().take(3).collect::<Vec<_>>().join(" ")
        };
        assert!(after("--plain-http").contains("Serve plain HTTP"), "{help}");
        assert!(
            after("--tls-wait-secs").contains("How long to wait"),
            "{help}"
        );
    }

    #[test]
    fn flags_parse_into_typed_values() {
        let args = Args::try_parse_from([
            "sidetrace-injector",
            "--plain-http",
            "--native-sidecars",
            "false",
            "--sampling",
            "0.5",
        ])
        .expect("parse");
        assert!(args.plain_http);
        assert_eq!(args.native_sidecars, NativeSidecars::False);
        assert!((args.sampling - 0.5).abs() < f64::EPSILON);
        assert!(
            Args::try_parse_from(["sidetrace-injector", "--plain-http", "--sampling", "2"])
                .is_err()
        );
    }
}

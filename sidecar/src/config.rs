//! Command-line flags (each with an environment variable) and the validated [`Settings`] built
//! from them plus the optional `--config` file.
//!
//! Precedence for the values the config file can also set (service name, sampling rate,
//! collector): the file wins over the flag, because the file is what the operator renders from
//! the TracedService and it is the part that hot-reloads; the flags are the pod-level defaults
//! the injector writes. The `--*-override` flags beat the file: the injector sets them only
//! from a pod's own annotations, which override everything.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use sidetrace_contract::names::env;
use sidetrace_contract::sampling::check_rate;
use sidetrace_contract::{CollectorProtocol, ProxyConfig, defaults};
use sidetrace_trace::{CollectorRoots, Resource};

use crate::error::{Error, Result};

/// hyper refuses (panics on) an HTTP/1 read buffer below this size.
pub const MIN_HEADER_BYTES: usize = 8192;

/// Default `--max-connections`, sized for the default memory limit of the proxy container
/// (`PROXY_MEMORY_LIMIT`, 64 Mi): an idle HTTP/1 client connection costs about 16 KiB (hyper's
/// 8 KiB read and write buffers, connection state, the task; bench/RESULTS.md), so 2048 of
/// them take about 32 MiB and leave some 32 MiB for the runtime, the span queue
/// (`--export-queue-size` spans), the upstream pool and allocator slack. Raise it together
/// with the memory limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 2048;

/// Transparent tracing sidecar: intercepts a pod's HTTP traffic, propagates B3/W3C context and
/// exports spans over OTLP/HTTP or as Zipkin v2 JSON.
#[derive(Debug, Clone, Parser)]
#[command(name = "sidetrace-proxy", version, about)]
pub struct Args {
    /// Port of the inbound capture listener (iptables redirects inbound traffic here).
    #[arg(long, env = env::INBOUND_PORT, default_value_t = defaults::INBOUND_CAPTURE_PORT)]
    pub inbound_port: u16,
    /// Port of the outbound capture listener (iptables redirects the app's outbound traffic here).
    #[arg(long, env = env::OUTBOUND_PORT, default_value_t = defaults::OUTBOUND_CAPTURE_PORT)]
    pub outbound_port: u16,
    /// Port of the admin server (/healthz, /ready, /metrics, /config, POST /shutdown).
    #[arg(long, env = env::ADMIN_PORT, default_value_t = defaults::ADMIN_PORT)]
    pub admin_port: u16,
    /// Address the capture listeners bind. `::` listens on IPv4 and IPv6 (falls back to
    /// 0.0.0.0 where IPv6 is off).
    #[arg(long, env = "SIDETRACE_LISTEN_ADDRESS", default_value = "::")]
    pub listen_address: IpAddr,
    /// Address the admin server binds (kubelet probes reach it on the pod IP).
    #[arg(long, env = "SIDETRACE_ADMIN_ADDRESS", default_value = "::")]
    pub admin_address: IpAddr,
    /// Service name in spans (the config file's `serviceName` wins when set).
    #[arg(long, env = env::SERVICE_NAME)]
    pub service_name: Option<String>,
    /// Collector endpoint spans are POSTed to (the config file's `collector` wins when set):
    /// `http://` or `https://` (verified against the system's roots or `--collector-ca-file`).
    /// A path ending in `/v1/traces` speaks OTLP/HTTP, `/api/v2/spans` Zipkin v2, unless
    /// `--collector-protocol` says otherwise.
    #[arg(long, env = env::COLLECTOR, default_value = defaults::COLLECTOR_ENDPOINT)]
    pub collector: String,
    /// Protocol of `--collector`: `otlp-http` or `zipkin`; by default it follows the
    /// endpoint's path (Zipkin v2 when the path says neither).
    #[arg(long, env = env::COLLECTOR_PROTOCOL)]
    pub collector_protocol: Option<CollectorProtocol>,
    /// Protocol that beats the config file's `collectorProtocol` (the webhook sets it from the
    /// pod's `sidetrace.dev/collector-protocol` annotation only).
    #[arg(long, env = env::COLLECTOR_PROTOCOL_OVERRIDE)]
    pub collector_protocol_override: Option<CollectorProtocol>,
    /// PEM bundle of the CAs an `https://` collector's certificate must chain to, instead of
    /// the system's roots (a collector signed by a private, in-cluster CA).
    #[arg(long, env = env::COLLECTOR_CA_FILE, conflicts_with = "collector_ca")]
    pub collector_ca_file: Option<PathBuf>,
    /// The same CA bundle as PEM text (the webhook injects the chart's `collector.caBundle`).
    #[arg(long, env = env::COLLECTOR_CA, hide_env_values = true)]
    pub collector_ca: Option<String>,
    /// Probability in 0..=1 that a new trace is sampled (the config file's `samplingRate` wins).
    #[arg(long, env = env::SAMPLING, default_value_t = defaults::SAMPLING_RATE)]
    pub sampling: f64,
    /// Service name that beats the config file's (the webhook sets it from the pod's
    /// `sidetrace.dev/service-name` annotation only).
    #[arg(long, env = env::SERVICE_NAME_OVERRIDE)]
    pub service_name_override: Option<String>,
    /// Sampling rate that beats the config file's (from the pod's `sidetrace.dev/sampling`).
    #[arg(long, env = env::SAMPLING_OVERRIDE)]
    pub sampling_override: Option<f64>,
    /// Parent inference that beats the config file's `inferParents`, `true` or `false` (the
    /// webhook sets it from the pod's `sidetrace.dev/infer-parents` annotation only).
    #[arg(long, env = env::INFER_PARENTS_OVERRIDE, value_parser = sidetrace_contract::parse_switch)]
    pub infer_parents_override: Option<bool>,
    /// Sidecar config file (YAML, the ConfigMap the operator renders); watched and reloaded.
    #[arg(long, env = env::CONFIG)]
    pub config: Option<PathBuf>,
    /// Log filter (error, warn, info, debug, trace, or a tracing EnvFilter directive).
    #[arg(long, env = env::LOG_LEVEL, default_value = "info")]
    pub log_level: String,
    /// Log line format.
    #[arg(long, env = "SIDETRACE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Pod IP reported as the span's localEndpoint.ipv4.
    #[arg(long, env = env::POD_IP)]
    pub pod_ip: Option<IpAddr>,
    /// Pod name, added to every span as tag `k8s.pod.name` (the file's `tags` win on a clash).
    #[arg(long, env = env::POD_NAME)]
    pub pod_name: Option<String>,
    /// Pod namespace, added to every span as tag `k8s.namespace.name`; with the pod name, the
    /// OTLP resource's `service.namespace` and `service.instance.id` (`<namespace>.<pod>`).
    #[arg(long, env = env::POD_NAMESPACE)]
    pub pod_namespace: Option<String>,
    /// Node the pod runs on: the OTLP resource's `k8s.node.name`.
    #[arg(long, env = env::NODE_NAME)]
    pub node_name: Option<String>,
    /// The owning workload as OTLP resource attributes, `key=value,...` (the webhook derives
    /// it from the pod's owner references: `k8s.deployment.name=shop,...`).
    #[arg(long, env = env::WORKLOAD_ATTRIBUTES)]
    pub workload_attributes: Option<String>,
    /// Explicit mode: send inbound connections that were not redirected by iptables here
    /// instead of refusing them (component tests on loopback, local runs).
    #[arg(long, env = "SIDETRACE_INBOUND_FORWARD_TO")]
    pub inbound_forward_to: Option<SocketAddr>,
    /// Explicit mode: send outbound connections that were not redirected by iptables here.
    #[arg(long, env = "SIDETRACE_OUTBOUND_FORWARD_TO")]
    pub outbound_forward_to: Option<SocketAddr>,
    /// How long to wait for a client's first bytes before treating the connection as opaque
    /// TCP (server-speaks-first protocols such as SMTP and MySQL).
    #[arg(long, env = "SIDETRACE_DETECT_TIMEOUT", default_value = "100ms", value_parser = parse_duration)]
    pub detect_timeout: Duration,
    /// Longest a drain may take on SIGTERM or POST /shutdown, from the signal to exit; what is
    /// still open then is closed. Below the pod's terminationGracePeriodSeconds (30 s).
    #[arg(long, env = "SIDETRACE_DRAIN_TIMEOUT", default_value = "25s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// After SIGTERM, how long the outbound side keeps accepting new connections at least,
    /// so the app's own calls during its graceful shutdown still work (Istio's
    /// terminationDrainDuration); then the proxy exits once no connection is open. Inbound
    /// stops accepting at once. 0 where the app is already gone when the proxy gets SIGTERM
    /// (native sidecars); POST /shutdown (the app saying it is done) skips it.
    #[arg(long, env = "SIDETRACE_DRAIN_PERIOD", default_value = "5s", value_parser = parse_duration)]
    pub drain_period: Duration,
    /// Time a client has to send a complete HTTP/1 request head (slowloris guard). hyper runs
    /// this clock while a keep-alive connection waits for its next request too, so it is also
    /// the idle timeout of HTTP/1 client connections (or `--idle-timeout`, when shorter): long
    /// enough that pooled clients rarely race it.
    #[arg(long, env = "SIDETRACE_HEADER_READ_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Timeout for connecting to an upstream.
    #[arg(long, env = "SIDETRACE_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Upstream response timeout: the longest from forwarding a request (connecting included,
    /// when no pooled connection is free) until the upstream's response headers arrive; the
    /// body may stream for as long as it takes. The client then gets 504 (gRPC: status 4,
    /// DEADLINE_EXCEEDED). `0s` is off, the default, as in Linkerd: the proxy cannot know
    /// how long an app's requests may legitimately take (long polls, reports), and a default
    /// that cuts them would be an outage. A TracedService sets it per inbound port and per
    /// operation (`timeout`), which win over this flag.
    #[arg(long, env = "SIDETRACE_RESPONSE_TIMEOUT", default_value = "0s", value_parser = parse_duration)]
    pub response_timeout: Duration,
    /// Client connections that stay idle this long are closed: opaque TCP and upgraded
    /// (WebSocket, CONNECT) connections with no byte either way, HTTP/2 connections with no
    /// open stream, HTTP/1 keep-alive connections waiting for their next request (those
    /// already close after `--header-read-timeout` when it is shorter: hyper runs one clock
    /// for both). `0s` is off. 1 h is Envoy's default idle timeout for both HTTP and TCP
    /// proxying: long enough for pooled database and gRPC connections that idle between
    /// bursts, short enough that connections whose peer vanished without a FIN (a node gone,
    /// a NAT entry dropped) stop holding memory and a `--max-connections` slot forever.
    #[arg(long, env = "SIDETRACE_IDLE_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Most client connections open at once, both listeners together. Past it a new
    /// connection is accepted and closed at once (counted as refused with reason `limit`):
    /// the client fails fast and may retry elsewhere, instead of waiting in a full accept
    /// backlog until its own timeout. The default fits the default 64 Mi memory limit
    /// (see [`DEFAULT_MAX_CONNECTIONS`]).
    #[arg(long, env = "SIDETRACE_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Per-request RED metrics: `exemplars` (with the trace id of sampled requests, served to
    /// OpenMetrics scrapers), `on` (no exemplars) or `off`.
    #[arg(long, env = "SIDETRACE_REQUEST_METRICS", value_enum, default_value_t = crate::red::RequestMetrics::Exemplars)]
    pub request_metrics: crate::red::RequestMetrics,
    /// Largest request or response head accepted, in bytes (at least 8192).
    #[arg(long, env = "SIDETRACE_MAX_HEADER_BYTES", default_value_t = 65536)]
    pub max_header_bytes: usize,
    /// Span export queue capacity; spans beyond it are dropped and counted.
    #[arg(long, env = "SIDETRACE_EXPORT_QUEUE_SIZE", default_value_t = 2048)]
    pub export_queue_size: usize,
    /// Most spans per POST to the collector.
    #[arg(long, env = "SIDETRACE_EXPORT_BATCH_SIZE", default_value_t = 128)]
    pub export_batch_size: usize,
    /// Longest a span waits in the queue before its batch is sent.
    #[arg(long, env = "SIDETRACE_EXPORT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub export_interval: Duration,
    /// Timeout of one POST to the collector.
    #[arg(long, env = "SIDETRACE_EXPORT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub export_timeout: Duration,
    /// Retries of a failed batch (connection error or 5xx), with backoff, before it is dropped.
    #[arg(long, env = "SIDETRACE_EXPORT_RETRIES", default_value_t = 2)]
    pub export_retries: u32,
    /// How often the config file is checked for changes.
    #[arg(long, env = "SIDETRACE_RELOAD_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub reload_interval: Duration,
    /// Tokio worker threads (a sidecar should not take every core of the node); 1 runs
    /// everything on a single thread.
    #[arg(long, env = "SIDETRACE_WORKER_THREADS", default_value_t = 2)]
    pub worker_threads: usize,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log pipelines).
    Json,
}

/// Parses a duration flag: `250ms`, `2s`, `1m`, `1h` or a bare number of seconds. The same
/// syntax as the config file's and the TracedService's `timeout` fields (one parser, in
/// `sidetrace-contract`).
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    sidetrace_contract::parse_duration(text)
}

/// Validated settings: everything the proxy needs, checked before any port is bound.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Raw flags (after validation), kept for `/config`.
    pub args: Args,
    /// Collector endpoint from the flag, parsed.
    pub collector_flag: http::Uri,
    /// Trust anchors of an `https://` collector.
    pub collector_roots: CollectorRoots,
    /// Why the config file was not used at start, if it was not: the proxy then runs on its
    /// flags (never a crash loop) and picks up the next good version of the file.
    pub file_error: Option<String>,
    /// The config file as first read (empty default when there is no `--config`).
    pub file: ProxyConfig,
    /// The file's text as first read, so the watcher can tell a change (None: no file yet).
    pub file_text: Option<String>,
}

impl Settings {
    /// Validates flags and reads the config file. Never binds or connects.
    pub fn from_args(args: Args) -> Result<Self> {
        let ports = [
            ("--inbound-port", args.inbound_port),
            ("--outbound-port", args.outbound_port),
            ("--admin-port", args.admin_port),
        ];
        for (i, (flag, port)) in ports.iter().enumerate() {
            if *port == 0 {
                return Err(Error::config(*flag, "must be in 1..=65535"));
            }
            if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
                return Err(Error::config(
                    *flag,
                    format!("port {port} is already used by {other}"),
                ));
            }
        }
        if let Some(rate) = args.sampling_override {
            check_rate(rate).map_err(|r| Error::config("--sampling-override", r))?;
        }
        if args
            .service_name_override
            .as_ref()
            .is_some_and(|n| n.trim().is_empty())
        {
            return Err(Error::config(
                "--service-name-override",
                "must not be empty",
            ));
        }
        check_rate(args.sampling).map_err(|r| Error::config("--sampling", r))?;
        let collector_flag =
            parse_collector(&args.collector).map_err(|r| Error::config("--collector", r))?;
        let collector_roots = match (&args.collector_ca_file, &args.collector_ca) {
            (Some(path), _) => std::fs::read(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|pem| CollectorRoots::from_pem(&pem))
                .map_err(|r| Error::config("--collector-ca-file", r))?,
            (None, Some(pem)) => CollectorRoots::from_pem(pem.as_bytes())
                .map_err(|r| Error::config("--collector-ca", r))?,
            (None, None) => CollectorRoots::System,
        };
        if args.max_header_bytes < MIN_HEADER_BYTES {
            return Err(Error::config(
                "--max-header-bytes",
                format!(
                    "{} is below the minimum {MIN_HEADER_BYTES}",
                    args.max_header_bytes
                ),
            ));
        }
        if args.max_header_bytes > u32::MAX as usize {
            return Err(Error::config("--max-header-bytes", "too large"));
        }
        if args.max_connections > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(Error::config("--max-connections", "too large"));
        }
        for (flag, v) in [
            ("--export-queue-size", args.export_queue_size),
            ("--export-batch-size", args.export_batch_size),
            ("--worker-threads", args.worker_threads),
            ("--max-connections", args.max_connections),
        ] {
            if v == 0 {
                return Err(Error::config(flag, "must be at least 1"));
            }
        }
        for (flag, d) in [
            ("--detect-timeout", args.detect_timeout),
            ("--header-read-timeout", args.header_read_timeout),
            ("--connect-timeout", args.connect_timeout),
            ("--export-interval", args.export_interval),
            ("--export-timeout", args.export_timeout),
            ("--reload-interval", args.reload_interval),
        ] {
            if d.is_zero() {
                return Err(Error::config(flag, "must be greater than zero"));
            }
        }
        if args
            .service_name
            .as_ref()
            .is_some_and(|n| n.trim().is_empty())
        {
            return Err(Error::config("--service-name", "must not be empty"));
        }
        for (flag, addr) in [
            ("--inbound-forward-to", args.inbound_forward_to),
            ("--outbound-forward-to", args.outbound_forward_to),
        ] {
            if let Some(a) = addr.filter(|a| a.port() == 0 || a.ip().is_unspecified()) {
                return Err(Error::config(
                    flag,
                    format!("{a} is not a connectable address"),
                ));
            }
        }
        let mut file_error = None;
        let (file, file_text) = match &args.config {
            None => (ProxyConfig::default(), None),
            Some(path) => match std::fs::read_to_string(path) {
                // The injector mounts the ConfigMap as optional: before the operator renders
                // it the file is absent. Start on the flags and pick the file up when it lands.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    (ProxyConfig::default(), None)
                }
                Err(e) => {
                    return Err(Error::config(
                        "--config",
                        format!("cannot read {}: {e}", path.display()),
                    ));
                }
                Ok(text) => match parse_file(&text) {
                    Ok(file) => (file, Some(text)),
                    // The file comes from a TracedService: nothing written there may stop the
                    // pod. Run on the flags, report it (log, metric, /config), and keep the
                    // text so the watcher swaps in the next version that differs.
                    Err(reason) => {
                        file_error = Some(format!("{}: {reason}", path.display()));
                        (ProxyConfig::default(), Some(text))
                    }
                },
            },
        };
        Ok(Self {
            args,
            collector_flag,
            collector_roots,
            file,
            file_text,
            file_error,
        })
    }

    /// Address the inbound capture listener binds.
    pub fn inbound_addr(&self) -> SocketAddr {
        SocketAddr::new(self.args.listen_address, self.args.inbound_port)
    }

    /// Address the outbound capture listener binds.
    pub fn outbound_addr(&self) -> SocketAddr {
        SocketAddr::new(self.args.listen_address, self.args.outbound_port)
    }

    /// Address the admin server binds.
    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::new(self.args.admin_address, self.args.admin_port)
    }
}

/// Parses and validates a config file's text, including the collector URL the file may carry.
/// The error names the field.
pub fn parse_file(text: &str) -> std::result::Result<ProxyConfig, String> {
    let file = ProxyConfig::from_yaml(text).map_err(|e| e.to_string())?;
    if let Some(c) = &file.collector {
        parse_collector(c).map_err(|r| format!("invalid value at collector: {r}"))?;
    }
    Ok(file)
}

/// The collector must be an absolute `http://` URL (the exporter speaks plain HTTP; TLS to the
/// collector is out of scope for an in-cluster Jaeger).
pub fn parse_collector(text: &str) -> std::result::Result<http::Uri, String> {
    // The same rule as every other layer, then the parse the exporter needs.
    sidetrace_contract::check_collector_endpoint(text)?;
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{text:?} has no host"));
    }
    Ok(uri)
}

/// The OTLP resource attributes of this pod besides `service.name` (fixed for the life of the
/// process: the pod does not move). Kubernetes attributes follow OpenTelemetry's conventions;
/// `service.instance.id` is `<namespace>.<pod>`, unique per pod in the cluster.
pub fn resource(args: &Args) -> Resource {
    let mut r = Resource::default();
    if let Some(attrs) = &args.workload_attributes {
        for (k, v) in sidetrace_contract::workload::parse_attributes(attrs) {
            r.set(&k, v);
        }
    }
    if let Some(ns) = &args.pod_namespace {
        r.set("k8s.namespace.name", ns.clone());
        r.set("service.namespace", ns.clone());
    }
    if let Some(pod) = &args.pod_name {
        r.set("k8s.pod.name", pod.clone());
    }
    if let Some(node) = &args.node_name {
        r.set("k8s.node.name", node.clone());
    }
    if let (Some(ns), Some(pod)) = (&args.pod_namespace, &args.pod_name)
        && !ns.is_empty()
        && !pod.is_empty()
    {
        r.set("service.instance.id", format!("{ns}.{pod}"));
    }
    r
}

/// Fallback bind address when `::` is not available (IPv6 disabled in the pod).
pub fn ipv4_fallback(ip: IpAddr) -> Option<IpAddr> {
    (ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED)).then_some(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["sidetrace-proxy"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).expect("flags parse")
    }

    #[test]
    fn defaults_are_the_contract_ports() {
        let s = Settings::from_args(args(&[])).expect("defaults are valid");
        assert_eq!(s.args.inbound_port, 15006);
        assert_eq!(s.args.outbound_port, 15001);
        assert_eq!(s.args.admin_port, 15021);
        assert_eq!(s.args.detect_timeout, Duration::from_millis(100));
        // The chart's Jaeger, over OTLP/HTTP (its Zipkin receiver stays for Zipkin clients).
        assert_eq!(s.collector_flag.path(), "/v1/traces");
        assert_eq!(s.collector_flag.port_u16(), Some(4318));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn timeouts_and_limits_default_to_off_one_hour_and_the_memory_sized_cap() {
        let s = Settings::from_args(args(&[])).expect("defaults are valid");
        assert_eq!(
            s.args.response_timeout,
            Duration::ZERO,
            "off, as in Linkerd"
        );
        assert_eq!(s.args.idle_timeout, Duration::from_secs(3600));
        assert_eq!(s.args.max_connections, DEFAULT_MAX_CONNECTIONS);
        let s = Settings::from_args(args(&[
            "--response-timeout",
            "1.5s",
            "--idle-timeout",
            "0s",
            "--max-connections",
            "2",
        ]))
        .expect("valid");
        assert_eq!(s.args.response_timeout, Duration::from_millis(1500));
        assert_eq!(s.args.idle_timeout, Duration::ZERO);
        assert_eq!(s.args.max_connections, 2);
    }

    #[test]
    fn invalid_values_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--inbound-port", "0"], "--inbound-port"),
            (&["--outbound-port", "15006"], "--outbound-port"),
            (&["--sampling", "1.5"], "--sampling"),
            (&["--collector", "jaeger:9411"], "--collector"),
            (&["--collector", "http://u:p@j/api"], "--collector"),
            (&["--max-header-bytes", "100"], "--max-header-bytes"),
            (&["--export-queue-size", "0"], "--export-queue-size"),
            (
                &["--drain-timeout", "5s", "--detect-timeout", "0ms"],
                "--detect-timeout",
            ),
            (
                &["--inbound-forward-to", "0.0.0.0:80"],
                "--inbound-forward-to",
            ),
            (&["--config", "/"], "--config"),
            (&["--service-name", " "], "--service-name"),
            (&["--max-connections", "0"], "--max-connections"),
        ];
        for (flags, name) in cases {
            let err = Settings::from_args(args(flags)).expect_err(name);
            assert_eq!(err.metric_label(), "config");
            assert!(err.to_string().contains(name), "{flags:?}: {err}");
        }
    }

    #[test]
    fn config_file_errors_name_the_field() {
        let dir =
            std::env::temp_dir().join(format!("sidetrace-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("proxy.yaml");
        std::fs::write(&path, "samplingRate: 2\n").expect("write");
        let p = path.to_string_lossy().to_string();
        let s = Settings::from_args(args(&["--config", &p])).expect("a bad file is not fatal");
        let err = s.file_error.expect("bad rate reported");
        assert!(err.contains("samplingRate"), "{err}");
        std::fs::write(&path, "serviceName: cart\nsamplingRate: 0.25\n").expect("write");
        let s = Settings::from_args(args(&["--config", &p])).expect("valid file");
        assert_eq!(s.file.service_name.as_deref(), Some("cart"));
        assert!(s.file_text.is_some());
        std::fs::remove_file(&path).expect("remove");
        let s = Settings::from_args(args(&["--config", &p])).expect("a missing file is not fatal");
        assert_eq!(s.file, ProxyConfig::default());
        assert!(s.file_text.is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn collectors_may_be_http_or_https_with_the_contract_rule() {
        assert!(parse_file("collector: https://jaeger:9411/api/v2/spans").is_ok());
        assert!(parse_file("collector: http://jaeger:9411/api/v2/spans").is_ok());
        let e = parse_file("collector: grpc://jaeger:4317").unwrap_err();
        assert!(e.contains("collector"), "{e}");
        assert!(parse_collector("http://u:p@jaeger:9411/x").is_err());
    }

    #[test]
    fn an_unusable_config_file_at_start_is_reported_not_fatal() {
        let dir = std::env::temp_dir().join(format!("st-badfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("proxy.yaml");
        std::fs::write(&path, "collector: jaeger:9411\n").expect("write");
        let p = path.to_string_lossy().into_owned();
        let s = Settings::from_args(args(&["--config", &p])).expect("a bad file is not fatal");
        assert_eq!(s.file, ProxyConfig::default());
        assert!(
            s.file_text.is_some(),
            "kept, so only a changed file is tried again"
        );
        let e = s.file_error.expect("reported");
        assert!(e.contains("collector"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_collector_ca_file_must_hold_certificates() {
        let dir = std::env::temp_dir().join(format!("st-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("ca.pem");
        std::fs::write(&path, "no certificate here\n").expect("write");
        let p = path.to_string_lossy().into_owned();
        let e = Settings::from_args(args(&["--collector-ca-file", &p])).unwrap_err();
        assert!(e.to_string().contains("--collector-ca-file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

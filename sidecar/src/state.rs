//! State shared by every connection: validated settings, counters, the upstream pool, the span
//! exporter, and the reloadable part of the configuration.
//!
//! The reloadable part ([`Live`]) sits behind `RwLock<Arc<Live>>`: a request clones the `Arc`
//! once at its start (a read lock held for one pointer copy) and keeps that snapshot for its
//! whole life, so a reload never changes a request half-way and never waits for one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use sidetrace_contract::{CollectorProtocol, Direction, ProxyConfig};
use sidetrace_trace::{ExportHandle, InFlight, TracerConfig, TracerFlags};
use tokio::sync::watch;

use crate::config::{Settings, parse_collector};
use crate::error::{Error, Result};
use crate::limits::{ConnectionLimit, ResponseTimeouts};
use crate::metrics::Metrics;
use crate::upstream::Upstream;

/// Service name when neither the flag nor the file names one (OpenTelemetry's convention).
pub const UNKNOWN_SERVICE: &str = "unknown_service";
/// Span tag carrying the pod name (OpenTelemetry semantic convention).
pub const POD_NAME_TAG: &str = "k8s.pod.name";
/// Span tag carrying the pod namespace (OpenTelemetry semantic convention).
pub const POD_NAMESPACE_TAG: &str = "k8s.namespace.name";

/// The configuration that hot-reloads: the config file and what is derived from it.
#[derive(Debug, Clone)]
pub struct Live {
    /// The config file (default when there is none).
    pub file: ProxyConfig,
    /// Tracing settings derived from flags + file.
    pub tracer: TracerConfig,
    /// Effective collector endpoint.
    pub collector: http::Uri,
    /// Effective protocol towards it.
    pub collector_protocol: CollectorProtocol,
    /// Upstream response timeouts: `--response-timeout` and the file's port and operation
    /// `timeout`s.
    pub timeouts: ResponseTimeouts,
}

impl Live {
    /// Combines the flags with a (validated) config file; the file wins where both speak.
    pub fn build(settings: &Settings, file: ProxyConfig) -> Result<Self> {
        let args = &settings.args;
        // The protocol goes with the endpoint it was chosen for: the file's endpoint with the
        // file's protocol (or its path), the flag's with the file's protocol, else the flag's
        // (or its path); the pod's annotation beats them all.
        let (collector, protocol) = match &file.collector {
            Some(c) => (
                parse_collector(c).map_err(|r| Error::config("collector", r))?,
                CollectorProtocol::resolve(file.collector_protocol, c),
            ),
            None => (
                settings.collector_flag.clone(),
                CollectorProtocol::resolve(
                    file.collector_protocol.or(args.collector_protocol),
                    &args.collector,
                ),
            ),
        };
        let collector_protocol = args.collector_protocol_override.unwrap_or(protocol);
        let mut tags = std::collections::BTreeMap::new();
        if let Some(name) = &args.pod_name {
            tags.insert(POD_NAME_TAG.to_owned(), name.clone());
        }
        if let Some(ns) = &args.pod_namespace {
            tags.insert(POD_NAMESPACE_TAG.to_owned(), ns.clone());
        }
        let flags = TracerFlags {
            service_name_override: args.service_name_override.clone(),
            service_name: args
                .service_name
                .clone()
                .unwrap_or_else(|| UNKNOWN_SERVICE.to_string()),
            sampling_override: args.sampling_override,
            sampling_rate: args.sampling,
            tags,
            local_ipv4: match args.pod_ip {
                Some(std::net::IpAddr::V4(ip)) => Some(ip),
                _ => None,
            },
            infer_parents_override: args.infer_parents_override,
        };
        let tracer = TracerConfig::from_proxy_config(&file, &flags);
        let timeouts = ResponseTimeouts::new(args.response_timeout, &file)?;
        Ok(Self {
            file,
            tracer,
            collector,
            collector_protocol,
            timeouts,
        })
    }
}

/// Everything connections share.
pub struct Shared {
    /// Validated startup settings.
    pub settings: Settings,
    /// Counters.
    pub metrics: Metrics,
    /// Upstream connection pool.
    pub upstream: Arc<Upstream>,
    /// Span exporter handle (never blocks).
    pub export: ExportHandle,
    /// Room left under `--max-connections`.
    pub limit: ConnectionLimit,
    /// The pod's inbound requests in flight, kept whether or not the config infers parents
    /// (a reload that turns inference on must see requests already in flight).
    pub in_flight: Arc<InFlight>,
    live: RwLock<Arc<Live>>,
    ready: AtomicBool,
    draining: AtomicBool,
    shutdown: watch::Sender<bool>,
    outbound_closed: watch::Sender<bool>,
    file_error: std::sync::Mutex<Option<String>>,
}

impl Shared {
    /// Builds the shared state around an already spawned exporter.
    pub fn new(settings: Settings, live: Live, export: ExportHandle) -> Arc<Self> {
        let upstream = Upstream::new(
            settings.args.connect_timeout,
            settings.args.max_header_bytes,
        );
        let settings_file_error = settings.file_error.clone();
        let limit = ConnectionLimit::new(settings.args.max_connections);
        let request_metrics = settings.args.request_metrics;
        Arc::new(Self {
            settings,
            metrics: Metrics::with_name_budget(Arc::clone(&live.tracer.name_budget))
                .with_request_metrics(request_metrics),
            upstream,
            export,
            limit,
            in_flight: InFlight::new(),
            live: RwLock::new(Arc::new(live)),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            shutdown: watch::channel(false).0,
            outbound_closed: watch::channel(false).0,
            file_error: std::sync::Mutex::new(settings_file_error),
        })
    }

    /// The current reloadable configuration.
    pub fn live(&self) -> Arc<Live> {
        Arc::clone(
            &self
                .live
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Swaps in a new reloadable configuration. The default span-name budget is carried over:
    /// it bounds the names one proxy process gives out, and a reload must not reopen it. So is
    /// the trace limiter while its limit stays the same (a reload must not refill it).
    pub fn set_live(&self, mut live: Live) {
        let mut current = self
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        live.tracer.name_budget = Arc::clone(&current.tracer.name_budget);
        if live.tracer.trace_limiter == current.tracer.trace_limiter {
            live.tracer
                .trace_limiter
                .clone_from(&current.tracer.trace_limiter);
        }
        *current = Arc::new(live);
    }

    /// Why the config file on disk is not the one in use, if it is not (shown in `/config`).
    pub fn file_error(&self) -> Option<String> {
        self.file_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Records the outcome of reading the config file.
    pub fn set_file_error(&self, error: Option<String>) {
        *self
            .file_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = error;
    }

    /// Marks both listeners bound.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Ready: listeners bound and not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst)
    }

    /// Whether shutdown has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Starts shutdown (SIGTERM, SIGINT or POST /shutdown): readiness goes false and the
    /// inbound side stops; the outbound side keeps serving until [`Shared::close_outbound`].
    /// Idempotent.
    pub fn trigger_shutdown(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.shutdown.send_replace(true);
    }

    /// Ends the drain's outbound phase: the outbound listener closes and its connections
    /// finish their in-flight requests.
    pub fn close_outbound(&self) {
        self.outbound_closed.send_replace(true);
    }

    /// Resolves once shutdown has been triggered.
    pub fn shutdown_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    }

    /// Resolves when `direction`'s listener and connections must stop: inbound at the start
    /// of shutdown, outbound when the drain closes it.
    pub fn stop_signal(
        &self,
        direction: Direction,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = match direction {
            Direction::Inbound => self.shutdown.subscribe(),
            Direction::Outbound => self.outbound_closed.subscribe(),
        };
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn settings(flags: &[&str]) -> Settings {
        let mut v = vec!["sidetrace-proxy"];
        v.extend_from_slice(flags);
        Settings::from_args(crate::config::Args::try_parse_from(v).expect("flags")).expect("valid")
    }

    #[test]
    fn the_file_wins_over_flags_and_pod_tags_are_added() {
        let s = settings(&[
            "--service-name",
            "from-flag",
            "--sampling",
            "0.5",
            "--pod-ip",
            "10.1.2.3",
            "--pod-name",
            "cart-7d9",
            "--pod-namespace",
            "shop",
        ]);
        let file = ProxyConfig::from_yaml(
            "serviceName: from-file\ncollector: http://zipkin:9411/api/v2/spans\ntags: {k8s.pod.name: override, team: a}\n",
        )
        .expect("file");
        let live = Live::build(&s, file).expect("live");
        assert_eq!(live.tracer.service_name, "from-file");
        assert_eq!(live.tracer.sampling_rate, 0.5);
        assert_eq!(
            live.collector.to_string(),
            "http://zipkin:9411/api/v2/spans"
        );
        assert_eq!(
            live.tracer.local_ipv4,
            Some(std::net::Ipv4Addr::new(10, 1, 2, 3))
        );
        assert_eq!(live.tracer.tags["k8s.pod.name"], "override");
        assert_eq!(live.tracer.tags["k8s.namespace.name"], "shop");
        assert_eq!(live.tracer.tags["team"], "a");
    }

    #[test]
    fn the_protocol_goes_with_its_endpoint() {
        use CollectorProtocol::{OtlpHttp, Zipkin};
        let build = |args: &[&str], file: &str| {
            let live = Live::build(&settings(args), ProxyConfig::from_yaml(file).expect("file"))
                .expect("live");
            (live.collector.to_string(), live.collector_protocol)
        };
        let otlp = "http://jaeger:4318/v1/traces";
        let zipkin = "http://jaeger:9411/api/v2/spans";
        // The path decides when nobody says.
        assert_eq!(build(&["--collector", otlp], ""), (otlp.into(), OtlpHttp));
        assert_eq!(build(&["--collector", zipkin], ""), (zipkin.into(), Zipkin));
        // An explicit flag beats the path.
        assert_eq!(
            build(
                &[
                    "--collector",
                    "http://c:1/x",
                    "--collector-protocol",
                    "otlp-http"
                ],
                ""
            ),
            ("http://c:1/x".into(), OtlpHttp)
        );
        // The file's endpoint brings its own protocol; the flag's does not leak onto it.
        assert_eq!(
            build(
                &["--collector", otlp, "--collector-protocol", "otlp-http"],
                &format!("collector: {zipkin}\n")
            ),
            (zipkin.into(), Zipkin)
        );
        assert_eq!(
            build(&["--collector", otlp], "collectorProtocol: zipkin\n"),
            (otlp.into(), Zipkin)
        );
        // The annotation's override beats everything.
        assert_eq!(
            build(
                &["--collector-protocol-override", "zipkin"],
                &format!("collector: {otlp}\ncollectorProtocol: otlp-http\n")
            ),
            (otlp.into(), Zipkin)
        );
        assert!(
            crate::config::Args::try_parse_from(["p", "--collector-protocol", "otlp"]).is_err()
        );
    }

    #[test]
    fn the_resource_names_the_pod_and_its_workload() {
        let s = settings(&[
            "--pod-name",
            "cart-7d9f8-x2x4k",
            "--pod-namespace",
            "shop",
            "--node-name",
            "node-1",
            "--workload-attributes",
            "k8s.replicaset.name=cart-7d9f8,k8s.deployment.name=cart",
        ]);
        let r = crate::config::resource(&s.args);
        let got: Vec<(&str, &str)> = r
            .attributes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("k8s.deployment.name", "cart"),
                ("k8s.namespace.name", "shop"),
                ("k8s.node.name", "node-1"),
                ("k8s.pod.name", "cart-7d9f8-x2x4k"),
                ("k8s.replicaset.name", "cart-7d9f8"),
                ("service.instance.id", "shop.cart-7d9f8-x2x4k"),
                ("service.namespace", "shop"),
            ]
        );
        assert!(
            crate::config::resource(&settings(&[]).args)
                .attributes
                .is_empty()
        );
    }

    #[test]
    fn flags_apply_when_the_file_is_silent() {
        let s = settings(&["--sampling", "0.25"]);
        let live = Live::build(&s, ProxyConfig::default()).expect("live");
        assert_eq!(live.tracer.service_name, UNKNOWN_SERVICE);
        assert_eq!(live.tracer.sampling_rate, 0.25);
        assert_eq!(
            live.collector.to_string(),
            sidetrace_contract::defaults::COLLECTOR_ENDPOINT
        );
        assert_eq!(
            live.tracer.formats,
            sidetrace_contract::proxy_config::DEFAULT_PROPAGATION
        );
    }

    #[test]
    fn pod_annotation_overrides_beat_the_file() {
        let s = settings(&[
            "--service-name",
            "default",
            "--service-name-override",
            "from-annotation",
            "--sampling-override",
            "0.1",
        ]);
        let file =
            ProxyConfig::from_yaml("serviceName: from-file\nsamplingRate: 0.9\n").expect("file");
        let live = Live::build(&s, file).expect("live");
        assert_eq!(live.tracer.service_name, "from-annotation");
        assert_eq!(live.tracer.sampling_rate, 0.1);
    }

    #[test]
    fn response_timeouts_combine_the_flag_and_the_file() {
        let s = settings(&["--response-timeout", "3s"]);
        let file = ProxyConfig::from_yaml("ports: [{port: 8080, timeout: 250ms}]\n").expect("file");
        let live = Live::build(&s, file).expect("live");
        let at = |port| {
            live.timeouts
                .resolve(Direction::Inbound, port, "GET", "/", "h")
        };
        assert_eq!(at(8080), Some(std::time::Duration::from_millis(250)));
        assert_eq!(at(9090), Some(std::time::Duration::from_secs(3)));
        let off = Live::build(&settings(&[]), ProxyConfig::default()).expect("live");
        assert_eq!(
            off.timeouts
                .resolve(Direction::Inbound, 8080, "GET", "/", "h"),
            None
        );
    }

    #[test]
    fn record_query_string_comes_from_the_file() {
        let s = settings(&[]);
        let live = Live::build(&s, ProxyConfig::default()).expect("live");
        assert!(!live.tracer.record_query_string);
        let file = ProxyConfig::from_yaml("recordQueryString: true\n").expect("file");
        assert!(
            Live::build(&s, file)
                .expect("live")
                .tracer
                .record_query_string
        );
    }

    #[tokio::test]
    async fn a_reload_keeps_the_span_name_budget_and_metrics_count_it() {
        let s = settings(&[]);
        let live = Live::build(&s, ProxyConfig::default()).expect("live");
        let (export, _task) = sidetrace_trace::Exporter::spawn(
            sidetrace_trace::ExporterConfig::new(live.collector.clone()),
        );
        let shared = Shared::new(s.clone(), live, export);
        let budget = Arc::clone(&shared.live().tracer.name_budget);
        let file = ProxyConfig::from_yaml("serviceName: reloaded\n").expect("file");
        shared.set_live(Live::build(&s, file).expect("live"));
        let live = shared.live();
        assert_eq!(live.tracer.service_name, "reloaded");
        assert!(Arc::ptr_eq(&live.tracer.name_budget, &budget));
        for i in 0..=sidetrace_trace::MAX_DEFAULT_NAMES {
            live.tracer.operation_name(
                sidetrace_contract::Direction::Inbound,
                "GET",
                &format!("/p{i}"),
                "h",
            );
        }
        let mut out = String::new();
        shared
            .metrics
            .render(&mut out, crate::red::Exposition::Prometheus);
        assert!(
            out.lines()
                .any(|l| l == "sidetrace_span_names_overflow_total 1"),
            "{out}"
        );
    }
}

//! State shared by every connection: validated settings, counters, the upstream pool, the span
//! exporter, and the reloadable part of the configuration.
//!
//! The reloadable part ([`Live`]) sits behind `RwLock<Arc<Live>>`: a request clones the `Arc`
//! once at its start (a read lock held for one pointer copy) and keeps that snapshot for its
//! whole life, so a reload never changes a request half-way and never waits for one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use sidetrace_contract::ProxyConfig;
use sidetrace_trace::{ExportHandle, TracerConfig};
use tokio::sync::watch;

use crate::config::{Settings, parse_collector};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::upstream::Upstream;

/// Service name when neither the flag nor the file names one (OpenTelemetry's convention).
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// The configuration that hot-reloads: the config file and what is derived from it.
#[derive(Debug, Clone)]
pub struct Live {
    /// The config file (default when there is none).
    pub file: ProxyConfig,
    /// Tracing settings derived from flags + file.
    pub tracer: TracerConfig,
    /// Effective collector endpoint.
    pub collector: http::Uri,
}

impl Live {
    /// Combines the flags with a (validated) config file; the file wins where both speak.
    pub fn build(settings: &Settings, file: ProxyConfig) -> Result<Self> {
        let args = &settings.args;
        let collector = match &file.collector {
            Some(c) => parse_collector(c).map_err(|r| Error::config("collector", r))?,
            None => settings.collector_flag.clone(),
        };
        let service_name = file
            .service_name
            .clone()
            .or_else(|| args.service_name.clone())
            .unwrap_or_else(|| UNKNOWN_SERVICE.to_string());
        let tracer = TracerConfig {
            service_name,
            sampling_rate: file.sampling_rate.unwrap_or(args.sampling),
            formats: file.propagation_formats().to_vec(),
            operations: file.operations.clone(),
            exclude_paths: file.exclude_paths.clone(),
            tags: file.tags.clone(),
            local_ipv4: match args.pod_ip {
                Some(std::net::IpAddr::V4(ip)) => Some(ip),
                _ => None,
            },
        };
        Ok(Self {
            file,
            tracer,
            collector,
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
    live: RwLock<Arc<Live>>,
    ready: AtomicBool,
    draining: AtomicBool,
    shutdown: watch::Sender<bool>,
}

impl Shared {
    /// Builds the shared state around an already spawned exporter.
    pub fn new(settings: Settings, live: Live, export: ExportHandle) -> Arc<Self> {
        let upstream = Upstream::new(
            settings.args.connect_timeout,
            settings.args.max_header_bytes,
        );
        Arc::new(Self {
            settings,
            metrics: Metrics::default(),
            upstream,
            export,
            live: RwLock::new(Arc::new(live)),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            shutdown: watch::channel(false).0,
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

    /// Swaps in a new reloadable configuration.
    pub fn set_live(&self, live: Live) {
        *self
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(live);
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

    /// Starts shutdown (SIGTERM, SIGINT or POST /shutdown); idempotent.
    pub fn trigger_shutdown(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.shutdown.send_replace(true);
    }

    /// Resolves once shutdown has been triggered.
    pub fn shutdown_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    }
}

//! The batched Zipkin v2 exporter.
//!
//! Data flow: the request path calls [`ExportHandle::record`], which `try_send`s into a bounded
//! queue and, when the queue is full, drops the span and counts it: it never waits. One tokio
//! task drains the queue into a batch and POSTs it when it reaches `max_batch` spans or when
//! `flush_interval` ticks. A failed POST (connection error, timeout, 5xx) is retried with
//! exponential backoff up to `max_retries` times, then dropped and counted; a 4xx is dropped at
//! once (counted as rejected). While a batch is being sent, new spans wait in the queue, so
//! memory is bounded by the queue capacity plus one batch in flight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::propagation::malformed_context_total;
use crate::span::{Span, encode_zipkin_v2};

/// Exporter settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExporterConfig {
    /// Zipkin v2 endpoint, e.g. `http://jaeger-collector:9411/api/v2/spans`. Plain http only:
    /// an https endpoint is reported (logged, spans counted as `invalid_endpoint`).
    pub endpoint: Uri,
    /// Spans waiting to be sent; beyond it spans are dropped (`queue_full`).
    pub queue_capacity: usize,
    /// Spans per POST; a full batch is sent at once.
    pub max_batch: usize,
    /// A partial batch is sent after at most this long.
    pub flush_interval: Duration,
    /// Timeout of one POST, connect included.
    pub request_timeout: Duration,
    /// Retries of a failed batch after the first attempt.
    pub max_retries: u32,
    /// Wait before the first retry; doubled per retry, capped at [`MAX_BACKOFF`].
    pub initial_backoff: Duration,
}

/// Longest wait between two attempts at one batch.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl ExporterConfig {
    /// Defaults: 1000 queued spans (Linkerd holds 100; a bigger queue rides out a collector
    /// restart), batches of 100, 1 s interval, 2 s timeout, 3 retries from 200 ms.
    pub fn new(endpoint: Uri) -> Self {
        Self {
            endpoint,
            queue_capacity: 1000,
            max_batch: 100,
            flush_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
            max_retries: 3,
            initial_backoff: Duration::from_millis(200),
        }
    }
}

/// A snapshot of the exporter's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Spans the collector accepted (2xx).
    pub exported: u64,
    /// Batches the collector accepted.
    pub batches_sent: u64,
    /// POST attempts that were retried.
    pub retries: u64,
    /// Spans dropped because the queue was full.
    pub dropped_queue_full: u64,
    /// Spans dropped after the retries ran out (collector down, slow, or 5xx).
    pub dropped_send_failed: u64,
    /// Spans the collector refused with a 4xx.
    pub dropped_rejected: u64,
    /// Spans dropped because the endpoint is unusable (https, no host).
    pub dropped_invalid_endpoint: u64,
    /// Spans waiting in the queue now.
    pub queue_depth: u64,
    /// Queue capacity.
    pub queue_capacity: u64,
    /// Requests whose trace context was malformed (process-wide).
    pub malformed_context: u64,
}

impl ExportStats {
    /// All dropped spans, whatever the reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_queue_full
            + self.dropped_send_failed
            + self.dropped_rejected
            + self.dropped_invalid_endpoint
    }
}

#[derive(Default)]
struct Counters {
    exported: AtomicU64,
    batches_sent: AtomicU64,
    retries: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_send_failed: AtomicU64,
    dropped_rejected: AtomicU64,
    dropped_invalid_endpoint: AtomicU64,
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

struct Shared {
    counters: Counters,
    endpoint: RwLock<Uri>,
}

impl Shared {
    fn endpoint(&self) -> Uri {
        // A poisoned lock still holds a valid Uri; keep exporting rather than panic.
        match self.endpoint.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// The exporter task. See the module docs.
pub struct Exporter;

/// Cheap, cloneable handle used by the request path to hand over finished spans.
#[derive(Clone)]
pub struct ExportHandle {
    spans: mpsc::Sender<Span>,
    flushes: mpsc::Sender<oneshot::Sender<()>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ExportHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Exporter {
    /// Spawns the exporter task on the current tokio runtime. The task ends (after sending
    /// what is queued) when every [`ExportHandle`] clone is dropped.
    pub fn spawn(cfg: ExporterConfig) -> (ExportHandle, JoinHandle<()>) {
        let queue_capacity = cfg.queue_capacity.max(1);
        let (spans_tx, spans_rx) = mpsc::channel(queue_capacity);
        let (flush_tx, flush_rx) = mpsc::channel(4);
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            endpoint: RwLock::new(cfg.endpoint.clone()),
        });
        let task = Task {
            cfg,
            client: build_client(),
            shared: shared.clone(),
        };
        let join = tokio::spawn(task.run(spans_rx, flush_rx));
        (
            ExportHandle {
                spans: spans_tx,
                flushes: flush_tx,
                shared,
            },
            join,
        )
    }
}

impl ExportHandle {
    /// Queues a finished span; drops and counts it when the queue is full or the exporter
    /// has stopped. Never blocks.
    pub fn record(&self, span: Span) {
        if self.spans.try_send(span).is_err() {
            add(&self.shared.counters.dropped_queue_full, 1);
        }
    }

    /// The counters now.
    pub fn stats(&self) -> ExportStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let capacity = self.spans.max_capacity();
        ExportStats {
            exported: get(&c.exported),
            batches_sent: get(&c.batches_sent),
            retries: get(&c.retries),
            dropped_queue_full: get(&c.dropped_queue_full),
            dropped_send_failed: get(&c.dropped_send_failed),
            dropped_rejected: get(&c.dropped_rejected),
            dropped_invalid_endpoint: get(&c.dropped_invalid_endpoint),
            queue_depth: (capacity - self.spans.capacity()) as u64,
            queue_capacity: capacity as u64,
            malformed_context: malformed_context_total(),
        }
    }

    /// Sends everything queued now and waits until it is delivered or dropped, or until
    /// `timeout` passes (used on shutdown).
    pub async fn flush(&self, timeout: Duration) {
        let (tx, rx) = oneshot::channel();
        let wait = async {
            if self.flushes.send(tx).await.is_ok() {
                let _ = rx.await;
            }
        };
        if tokio::time::timeout(timeout, wait).await.is_err() {
            tracing::warn!(?timeout, "span flush did not finish in time");
        }
    }

    /// Points later batches at a new collector (config reload).
    pub fn set_endpoint(&self, uri: Uri) {
        match self.shared.endpoint.write() {
            Ok(mut g) => *g = uri,
            Err(p) => *p.into_inner() = uri,
        }
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn build_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(2)
        .build(connector)
}

struct Task {
    cfg: ExporterConfig,
    client: HttpClient,
    shared: Arc<Shared>,
}

impl Task {
    async fn run(
        self,
        mut spans: mpsc::Receiver<Span>,
        mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
    ) {
        let max_batch = self.cfg.max_batch.max(1);
        let mut batch: Vec<Span> = Vec::with_capacity(max_batch);
        let mut tick = tokio::time::interval(self.cfg.flush_interval.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                span = spans.recv() => match span {
                    Some(span) => {
                        batch.push(span);
                        if batch.len() >= max_batch {
                            self.send(std::mem::take(&mut batch)).await;
                        }
                    }
                    None => break,
                },
                Some(done) = flushes.recv() => {
                    // Drain at most what is queued now, so a busy proxy cannot keep the
                    // flush going forever.
                    let mut budget = spans.len();
                    while budget > 0 {
                        let Ok(span) = spans.try_recv() else { break };
                        budget -= 1;
                        batch.push(span);
                        if batch.len() >= max_batch {
                            self.send(std::mem::take(&mut batch)).await;
                        }
                    }
                    if !batch.is_empty() {
                        self.send(std::mem::take(&mut batch)).await;
                    }
                    let _ = done.send(());
                }
                _ = tick.tick() => {
                    if !batch.is_empty() {
                        self.send(std::mem::take(&mut batch)).await;
                    }
                }
            }
        }
        if !batch.is_empty() {
            self.send(batch).await;
        }
    }

    /// Delivers one batch with retries, and accounts for every span in it exactly once.
    async fn send(&self, batch: Vec<Span>) {
        let n = batch.len();
        let body = Bytes::from(encode_zipkin_v2(&batch));
        drop(batch);
        let c = &self.shared.counters;
        let mut attempt = 0;
        loop {
            let endpoint = self.shared.endpoint();
            match self.post(&endpoint, body.clone()).await {
                Ok(()) => {
                    add(&c.exported, n);
                    add(&c.batches_sent, 1);
                    return;
                }
                Err(e) if e.is_retryable() && attempt < self.cfg.max_retries => {
                    add(&c.retries, 1);
                    let backoff = self
                        .cfg
                        .initial_backoff
                        .saturating_mul(1 << attempt.min(16))
                        .min(MAX_BACKOFF);
                    tracing::debug!(error = %e, attempt, ?backoff, spans = n, "span batch failed; retrying");
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => {
                    let counter = match &e {
                        Error::InvalidEndpoint { .. } => &c.dropped_invalid_endpoint,
                        Error::Status(s) if *s < 500 => &c.dropped_rejected,
                        _ => &c.dropped_send_failed,
                    };
                    add(counter, n);
                    tracing::warn!(
                        error = %e,
                        reason = e.metric_label(),
                        spans = n,
                        attempts = attempt + 1,
                        "span batch dropped"
                    );
                    return;
                }
            }
        }
    }

    async fn post(&self, endpoint: &Uri, body: Bytes) -> Result<()> {
        check_endpoint(endpoint)?;
        let req = Request::post(endpoint.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| Error::Request(e.to_string()))?;
        let timeout = self.cfg.request_timeout;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| Error::Request(error_chain(&e)))?;
            let status = resp.status();
            // Read (a bounded amount of) the body so the connection can be reused.
            let _ = Limited::new(resp.into_body(), 64 * 1024).collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(Error::Status(status.as_u16()))
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| Error::Timeout(timeout))?
    }
}

/// The hyper client's error plus its sources ("client error (Connect): tcp connect error:
/// Connection refused"), which is what an operator needs to see.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn check_endpoint(uri: &Uri) -> Result<()> {
    let invalid = |reason| Error::InvalidEndpoint {
        endpoint: uri.to_string(),
        reason,
    };
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(invalid(
                "https is not supported by the exporter; use an http:// collector endpoint",
            ));
        }
        _ => return Err(invalid("the endpoint must be an absolute http:// URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("the endpoint has no host"));
    }
    Ok(())
}

/// Appends the export and trace-context counters in Prometheus text format.
pub fn render_metrics(stats: &ExportStats, out: &mut String) {
    use std::fmt::Write;
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "# HELP sidetrace_spans_exported_total Spans accepted by the collector.\n\
         # TYPE sidetrace_spans_exported_total counter\n\
         sidetrace_spans_exported_total {}\n\
         # HELP sidetrace_span_batches_sent_total Span batches accepted by the collector.\n\
         # TYPE sidetrace_span_batches_sent_total counter\n\
         sidetrace_span_batches_sent_total {}\n\
         # HELP sidetrace_span_export_retries_total Span batch POSTs that were retried.\n\
         # TYPE sidetrace_span_export_retries_total counter\n\
         sidetrace_span_export_retries_total {}\n\
         # HELP sidetrace_spans_dropped_total Spans dropped before reaching the collector, by reason.\n\
         # TYPE sidetrace_spans_dropped_total counter\n\
         sidetrace_spans_dropped_total{{reason=\"queue_full\"}} {}\n\
         sidetrace_spans_dropped_total{{reason=\"send_failed\"}} {}\n\
         sidetrace_spans_dropped_total{{reason=\"rejected\"}} {}\n\
         sidetrace_spans_dropped_total{{reason=\"invalid_endpoint\"}} {}\n\
         # HELP sidetrace_span_queue_depth Spans waiting to be exported.\n\
         # TYPE sidetrace_span_queue_depth gauge\n\
         sidetrace_span_queue_depth {}\n\
         # HELP sidetrace_span_queue_capacity Capacity of the span export queue.\n\
         # TYPE sidetrace_span_queue_capacity gauge\n\
         sidetrace_span_queue_capacity {}\n\
         # HELP sidetrace_trace_context_malformed_total Requests whose trace context was malformed and replaced by a new trace.\n\
         # TYPE sidetrace_trace_context_malformed_total counter\n\
         sidetrace_trace_context_malformed_total {}\n",
        stats.exported,
        stats.batches_sent,
        stats.retries,
        stats.dropped_queue_full,
        stats.dropped_send_failed,
        stats.dropped_rejected,
        stats.dropped_invalid_endpoint,
        stats.queue_depth,
        stats.queue_capacity,
        stats.malformed_context,
    );
}

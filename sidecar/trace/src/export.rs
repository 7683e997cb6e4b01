//! The batched span exporter: OTLP/HTTP (protobuf) or Zipkin v2 JSON, one queue for both.
//!
//! Data flow: the request path calls [`ExportHandle::record`], which `try_send`s into a bounded
//! queue and, when the queue is full, drops the span and counts it: it never waits. One tokio
//! task drains the queue into a batch and POSTs it when it reaches `max_batch` spans or when
//! `flush_interval` ticks, encoded for the collector's protocol ([`encode_otlp`] to
//! `.../v1/traces`, [`encode_zipkin_v2`] to `.../api/v2/spans`). A failed POST that the
//! protocol calls retryable (connection error, timeout; OTLP: 429/502/503/504; Zipkin: 429 and
//! 5xx) is retried with exponential backoff, or after the collector's `Retry-After` (capped at
//! [`MAX_RETRY_AFTER`]), up to `max_retries` times, then dropped and counted; any other answer
//! is dropped at once (a 4xx counted as rejected). While a batch is being sent, new spans wait
//! in the queue, so memory is bounded by the queue capacity plus one batch in flight.
//!
//! The exporter keeps its own queue rather than the OpenTelemetry SDK's pipeline: the SDK's
//! batch processor would take away the drop counters, the per-reason accounting and the
//! switch of endpoint and protocol on config reload.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::otlp::{Resource, encode_otlp};
use crate::span::{Span, encode_zipkin_v2};
use crate::tls::CollectorRoots;
use sidetrace_contract::CollectorProtocol;

/// Exporter settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExporterConfig {
    /// Collector endpoint, e.g. `http://jaeger-collector:4318/v1/traces` (OTLP) or
    /// `http://jaeger-collector:9411/api/v2/spans` (Zipkin v2); `https://` is verified against
    /// [`ExporterConfig::roots`] and the endpoint's host name.
    pub endpoint: Uri,
    /// How batches are encoded and which answers are retried.
    pub protocol: CollectorProtocol,
    /// OTLP resource attributes besides `service.name` (the pod, its workload).
    pub resource: Resource,
    /// Trust anchors of `https://` endpoints (the system's by default).
    pub roots: CollectorRoots,
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

/// Longest `Retry-After` honoured: the batch in hand waits that long at most, while new spans
/// queue (and are dropped once the queue is full), so an overloaded collector asking for
/// minutes cannot park the exporter for minutes.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

impl ExporterConfig {
    /// Defaults: 1000 queued spans (Linkerd holds 100; a bigger queue rides out a collector
    /// restart), batches of 100, 1 s interval, 2 s timeout, 3 retries from 200 ms; the
    /// protocol the endpoint's path names ([`CollectorProtocol::resolve`]); no resource
    /// attributes.
    pub fn new(endpoint: Uri) -> Self {
        Self {
            protocol: CollectorProtocol::resolve(None, &endpoint.to_string()),
            resource: Resource::default(),
            endpoint,
            roots: CollectorRoots::System,
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
    collector: RwLock<(Uri, CollectorProtocol)>,
}

impl Shared {
    fn collector(&self) -> (Uri, CollectorProtocol) {
        // A poisoned lock still holds a valid pair; keep exporting rather than panic.
        match self.collector.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set_collector(&self, f: impl FnOnce(&mut (Uri, CollectorProtocol))) {
        match self.collector.write() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
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
        warn_if_unusable(&cfg.endpoint);
        let queue_capacity = cfg.queue_capacity.max(1);
        let (spans_tx, spans_rx) = mpsc::channel(queue_capacity);
        let (flush_tx, flush_rx) = mpsc::channel(4);
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            collector: RwLock::new((cfg.endpoint.clone(), cfg.protocol)),
        });
        let client = build_client(&cfg.roots);
        let task = Task {
            cfg,
            client,
            shared: shared.clone(),
            failing: 0,
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

    /// Points later batches at a new collector, same protocol (config reload).
    pub fn set_endpoint(&self, uri: Uri) {
        warn_if_unusable(&uri);
        self.shared.set_collector(|c| c.0 = uri);
    }

    /// Points later batches at a new collector and protocol (config reload): the batch in
    /// flight, if retried, goes to the new one in the new encoding. Request connections are
    /// not touched.
    pub fn set_collector(&self, uri: Uri, protocol: CollectorProtocol) {
        warn_if_unusable(&uri);
        self.shared.set_collector(|c| *c = (uri, protocol));
    }

    /// The collector and protocol later batches go to.
    pub fn collector(&self) -> (Uri, CollectorProtocol) {
        self.shared.collector()
    }
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One client for `http://` and `https://` endpoints (an endpoint may change on reload).
fn build_client(roots: &CollectorRoots) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let tls = crate::tls::client_config(roots).unwrap_or_else(|e| {
        // Only an unusable bundle gets here, and the proxy refuses those at start: fail
        // https handshakes (counted as send failures), keep plain http working.
        tracing::error!(error = %e, "collector TLS roots unusable; https exports will fail");
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
    });
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(2)
        .build(connector)
}

struct Task {
    cfg: ExporterConfig,
    client: HttpClient,
    shared: Arc<Shared>,
    /// Batches dropped since the last success: a collector that stays down is logged once
    /// (and every [`LOG_EVERY_FAILED_BATCHES`] batches), not once per batch.
    failing: u64,
}

/// While the collector stays unreachable, one warning per this many dropped batches.
const LOG_EVERY_FAILED_BATCHES: u64 = 100;

impl Task {
    async fn run(
        mut self,
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
    async fn send(&mut self, batch: Vec<Span>) {
        let n = batch.len();
        let c = &self.shared.counters;
        let mut attempt = 0;
        // Encoded once per protocol: a reload that switches protocol between two attempts
        // re-encodes, otherwise retries reuse the bytes.
        let mut encoded: Option<(CollectorProtocol, Bytes)> = None;
        loop {
            let (endpoint, protocol) = self.shared.collector();
            let body = match &encoded {
                Some((p, body)) if *p == protocol => body.clone(),
                _ => {
                    let body = Bytes::from(match protocol {
                        CollectorProtocol::OtlpHttp => encode_otlp(&batch, &self.cfg.resource),
                        CollectorProtocol::Zipkin => encode_zipkin_v2(&batch),
                    });
                    encoded = Some((protocol, body.clone()));
                    body
                }
            };
            match self.post(&endpoint, protocol, body).await {
                Ok(rejected) => {
                    // OTLP partial success: the collector took the batch but refused some.
                    let rejected = usize::try_from(rejected).unwrap_or(n).min(n);
                    add(&c.exported, n - rejected);
                    add(&c.dropped_rejected, rejected);
                    add(&c.batches_sent, 1);
                    if self.failing > 0 {
                        tracing::info!(
                            dropped_batches = self.failing,
                            "collector accepts spans again"
                        );
                        self.failing = 0;
                    }
                    return;
                }
                Err(e) if e.is_retryable(protocol) && attempt < self.cfg.max_retries => {
                    add(&c.retries, 1);
                    let backoff = self
                        .cfg
                        .initial_backoff
                        .saturating_mul(1 << attempt.min(16))
                        .min(MAX_BACKOFF);
                    let wait = retry_wait(backoff, &e);
                    tracing::debug!(error = %e, attempt, ?wait, spans = n, "span batch failed; retrying");
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    let counter = match &e {
                        Error::InvalidEndpoint { .. } => &c.dropped_invalid_endpoint,
                        e if e.is_rejection() => &c.dropped_rejected,
                        _ => &c.dropped_send_failed,
                    };
                    add(counter, n);
                    self.failing += 1;
                    if self.failing == 1 || self.failing.is_multiple_of(LOG_EVERY_FAILED_BATCHES) {
                        tracing::warn!(
                            error = %e,
                            reason = e.metric_label(),
                            %protocol,
                            spans = n,
                            attempts = attempt + 1,
                            consecutive_failed_batches = self.failing,
                            "span batch dropped"
                        );
                    } else {
                        tracing::debug!(error = %e, spans = n, "span batch dropped");
                    }
                    return;
                }
            }
        }
    }

    /// One POST. `Ok` carries the spans an OTLP collector reported as rejected in a partial
    /// success (0 otherwise).
    async fn post(&self, endpoint: &Uri, protocol: CollectorProtocol, body: Bytes) -> Result<i64> {
        check_endpoint(endpoint)?;
        let content_type = match protocol {
            CollectorProtocol::OtlpHttp => OTLP_CONTENT_TYPE,
            CollectorProtocol::Zipkin => "application/json",
        };
        let req = Request::post(endpoint.clone())
            .header(header::CONTENT_TYPE, content_type)
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
            let retry_after = resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            // Read (a bounded amount of) the body so the connection can be reused.
            let body = Limited::new(resp.into_body(), 64 * 1024)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if status.is_success() {
                Ok(match protocol {
                    CollectorProtocol::OtlpHttp => crate::otlp::rejected_spans(&body),
                    CollectorProtocol::Zipkin => 0,
                })
            } else {
                Err(Error::Status {
                    status: status.as_u16(),
                    retry_after,
                })
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| Error::Timeout(timeout))?
    }
}

/// Content type of OTLP/HTTP protobuf bodies.
pub const OTLP_CONTENT_TYPE: &str = "application/x-protobuf";

/// How long to wait before retrying after `e`: the collector's `Retry-After` when it sent
/// one (at least the backoff, at most [`MAX_RETRY_AFTER`]), else the backoff.
fn retry_wait(backoff: Duration, e: &Error) -> Duration {
    match e {
        Error::Status {
            retry_after: Some(after),
            ..
        } => (*after).min(MAX_RETRY_AFTER).max(backoff),
        _ => backoff,
    }
}

/// `Retry-After` as delay-seconds. The HTTP-date form is not honoured (collectors send
/// seconds); the exponential backoff applies instead.
fn parse_retry_after(text: &str) -> Option<Duration> {
    text.trim().parse::<u64>().ok().map(Duration::from_secs)
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

/// Says at configuration time, not only per batch, that an endpoint cannot work.
fn warn_if_unusable(uri: &Uri) {
    if let Err(e) = check_endpoint(uri) {
        tracing::error!(error = %e, "spans will be dropped until the collector endpoint is fixed");
    }
}

fn check_endpoint(uri: &Uri) -> Result<()> {
    let invalid = |reason| Error::InvalidEndpoint {
        endpoint: uri.to_string(),
        reason,
    };
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(invalid(
                "the endpoint must be an absolute http:// or https:// URL",
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("the endpoint has no host"));
    }
    Ok(())
}

/// Appends the export counters in Prometheus text format.
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
         sidetrace_span_queue_capacity {}\n",
        stats.exported,
        stats.batches_sent,
        stats.retries,
        stats.dropped_queue_full,
        stats.dropped_send_failed,
        stats.dropped_rejected,
        stats.dropped_invalid_endpoint,
        stats.queue_depth,
        stats.queue_capacity,
    );
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::time::SystemTime;

    use http::{HeaderMap, Response};
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use sidetrace_contract::Direction;
    use tokio::net::TcpListener;

    use super::*;
    use crate::hop::{RequestInfo, ResponseInfo, TracerConfig, start_hop};

    /// Generous bound on waits for the exporter; never a timing assertion, only a hang guard.
    const WAIT: Duration = Duration::from_secs(20);

    struct Post {
        path: String,
        content_type: String,
        body: Vec<u8>,
    }

    struct Collector {
        addr: SocketAddr,
        posts: mpsc::UnboundedReceiver<Post>,
    }

    impl Collector {
        fn endpoint(&self) -> Uri {
            format!("http://{}/api/v2/spans", self.addr)
                .parse()
                .expect("uri")
        }

        async fn next(&mut self) -> Post {
            tokio::time::timeout(WAIT, self.posts.recv())
                .await
                .expect("a POST within the wait bound")
                .expect("collector running")
        }
    }

    /// A tiny real HTTP/1.1 collector on loopback that answers with `statuses` in order,
    /// then 202.
    async fn start_collector(statuses: &[u16]) -> Collector {
        let answers: Vec<(u16, Option<&str>)> = statuses.iter().map(|s| (*s, None)).collect();
        start_collector_answering(&answers).await
    }

    /// Like [`start_collector`], each answer with an optional `Retry-After`. It stands in for
    /// a collector's overload answers (429, 503 + Retry-After), which a real Jaeger does not
    /// produce on demand.
    async fn start_collector_answering(answers: &[(u16, Option<&str>)]) -> Collector {
        let statuses: Vec<(u16, Option<String>)> = answers
            .iter()
            .map(|(s, h)| (*s, h.map(str::to_owned)))
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, posts) = mpsc::unbounded_channel();
        let statuses = Arc::new(Mutex::new(statuses.into_iter().collect::<VecDeque<_>>()));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let statuses = statuses.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let tx = tx.clone();
                        let statuses = statuses.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let content_type = req
                                .headers()
                                .get(header::CONTENT_TYPE)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .unwrap_or_default();
                            let _ = tx.send(Post {
                                path,
                                content_type,
                                body,
                            });
                            let (status, retry_after) = statuses
                                .lock()
                                .expect("lock")
                                .pop_front()
                                .unwrap_or((202, None));
                            let mut resp = Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() =
                                http::StatusCode::from_u16(status).expect("test status");
                            if let Some(after) = retry_after {
                                resp.headers_mut().insert(
                                    header::RETRY_AFTER,
                                    after.parse().expect("header value"),
                                );
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Collector { addr, posts }
    }

    /// A loopback port nobody listens on: connecting to it is refused.
    async fn refused_endpoint() -> Uri {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        format!("http://{addr}/api/v2/spans").parse().expect("uri")
    }

    fn config(endpoint: Uri) -> ExporterConfig {
        ExporterConfig {
            queue_capacity: 100,
            max_batch: 100,
            // Only size or an explicit flush sends, unless a test says otherwise.
            flush_interval: Duration::from_secs(3600),
            request_timeout: Duration::from_secs(5),
            max_retries: 2,
            initial_backoff: Duration::from_millis(1),
            ..ExporterConfig::new(endpoint)
        }
    }

    fn span(path: &str) -> Span {
        let cfg = TracerConfig::new("exporter-test");
        let req = RequestInfo {
            direction: Direction::Inbound,
            method: "GET",
            path,
            authority: Some("svc:80"),
            scheme: "http",
            user_agent: None,
            local_addr: "10.0.0.1:80".parse().expect("addr"),
            peer_addr: "10.0.0.2:5000".parse().expect("addr"),
            upstream_addr: "127.0.0.1:80".parse().expect("addr"),
            protocol: "HTTP/1.1",
            conn_tags: None,
        };
        let mut h = HeaderMap::new();
        start_hop(&cfg, &req, &mut h, SystemTime::now())
            .expect("traced")
            .finish_after(
                &ResponseInfo {
                    status: Some(200),
                    ..ResponseInfo::default()
                },
                Duration::from_micros(5),
            )
            .expect("sampled")
    }

    async fn wait_for(handle: &ExportHandle, what: &str, done: impl Fn(&ExportStats) -> bool) {
        let poll = async {
            while !done(&handle.stats()) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        if tokio::time::timeout(WAIT, poll).await.is_err() {
            panic!("{what}: stats {:?}", handle.stats());
        }
    }

    #[tokio::test]
    async fn a_full_batch_is_posted_as_zipkin_json() {
        let mut collector = start_collector(&[]).await;
        let (handle, _task) = Exporter::spawn(ExporterConfig {
            max_batch: 2,
            ..config(collector.endpoint())
        });
        let spans = [span("/a"), span("/b")];
        for s in &spans {
            handle.record(s.clone());
        }
        let post = collector.next().await;
        assert_eq!(post.path, "/api/v2/spans");
        assert_eq!(post.content_type, "application/json");
        assert_eq!(
            String::from_utf8(post.body).expect("utf8"),
            String::from_utf8(encode_zipkin_v2(&spans)).expect("utf8")
        );
        wait_for(&handle, "exported", |s| s.exported == 2).await;
        let stats = handle.stats();
        assert_eq!((stats.batches_sent, stats.dropped_total()), (1, 0));
    }

    #[tokio::test]
    async fn a_partial_batch_is_posted_when_the_interval_ticks() {
        let mut collector = start_collector(&[]).await;
        let (handle, _task) = Exporter::spawn(ExporterConfig {
            flush_interval: Duration::from_millis(20),
            ..config(collector.endpoint())
        });
        handle.record(span("/tick"));
        let post = collector.next().await;
        let json: serde_json::Value = serde_json::from_slice(&post.body).expect("json");
        assert_eq!(json[0]["tags"]["http.path"], "/tick");
        assert_eq!(json.as_array().map(Vec::len), Some(1));
    }

    #[tokio::test]
    async fn flush_drains_the_queue_and_dropping_the_handles_sends_the_rest() {
        let mut collector = start_collector(&[]).await;
        let (handle, task) = Exporter::spawn(config(collector.endpoint()));
        for p in ["/1", "/2", "/3"] {
            handle.record(span(p));
        }
        handle.flush(WAIT).await;
        assert_eq!(handle.stats().exported, 3);
        let post = collector.next().await;
        let json: serde_json::Value = serde_json::from_slice(&post.body).expect("json");
        assert_eq!(json.as_array().map(Vec::len), Some(3));

        handle.record(span("/last"));
        drop(handle);
        tokio::time::timeout(WAIT, task)
            .await
            .expect("task ends")
            .expect("no panic");
        let post = collector.next().await;
        assert!(String::from_utf8_lossy(&post.body).contains("/last"));
    }

    #[tokio::test]
    async fn server_errors_are_retried_with_backoff() {
        let mut collector = start_collector(&[503, 500]).await;
        let (handle, _task) = Exporter::spawn(config(collector.endpoint()));
        handle.record(span("/retry"));
        handle.flush(WAIT).await;
        for _ in 0..3 {
            let post = collector.next().await;
            assert!(String::from_utf8_lossy(&post.body).contains("/retry"));
        }
        let stats = handle.stats();
        assert_eq!(
            (stats.exported, stats.retries, stats.dropped_total()),
            (1, 2, 0)
        );
    }

    #[tokio::test]
    async fn server_errors_beyond_the_retries_drop_the_batch() {
        let mut collector = start_collector(&[503, 503, 503]).await;
        let (handle, _task) = Exporter::spawn(config(collector.endpoint()));
        handle.record(span("/x"));
        handle.record(span("/y"));
        handle.flush(WAIT).await;
        for _ in 0..3 {
            collector.next().await;
        }
        let stats = handle.stats();
        assert_eq!(
            (stats.exported, stats.retries, stats.dropped_send_failed),
            (0, 2, 2)
        );
    }

    #[tokio::test]
    async fn client_errors_are_rejected_without_retry() {
        let mut collector = start_collector(&[400]).await;
        let (handle, _task) = Exporter::spawn(config(collector.endpoint()));
        handle.record(span("/bad"));
        handle.flush(WAIT).await;
        collector.next().await;
        let stats = handle.stats();
        assert_eq!(
            (stats.dropped_rejected, stats.retries, stats.exported),
            (1, 0, 0)
        );
    }

    #[tokio::test]
    async fn collector_down_drops_and_counts_after_retries() {
        let (handle, _task) = Exporter::spawn(config(refused_endpoint().await));
        handle.record(span("/down"));
        handle.flush(WAIT).await;
        let stats = handle.stats();
        assert_eq!(
            (stats.dropped_send_failed, stats.retries, stats.exported),
            (1, 2, 0)
        );
        let mut text = String::new();
        render_metrics(&stats, &mut text);
        assert!(text.contains("sidetrace_spans_dropped_total{reason=\"send_failed\"} 1\n"));
    }

    #[tokio::test]
    async fn a_collector_that_never_answers_times_out() {
        // Accepts connections and never reads: every POST hits the request timeout.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let (handle, _task) = Exporter::spawn(ExporterConfig {
            request_timeout: Duration::from_millis(50),
            max_retries: 1,
            ..config(format!("http://{addr}/api/v2/spans").parse().expect("uri"))
        });
        handle.record(span("/slow"));
        handle.flush(WAIT).await;
        let stats = handle.stats();
        assert_eq!((stats.dropped_send_failed, stats.retries), (1, 1));
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_blocking() {
        // Current-thread runtime: the exporter task cannot run between these calls, so the
        // queue holds exactly its capacity and every later record must return at once.
        let (handle, _task) = Exporter::spawn(ExporterConfig {
            queue_capacity: 4,
            ..config(refused_endpoint().await)
        });
        let s = span("/full");
        for _ in 0..100 {
            handle.record(s.clone());
        }
        let stats = handle.stats();
        assert_eq!(stats.dropped_queue_full, 96);
        assert_eq!((stats.queue_depth, stats.queue_capacity), (4, 4));
        let mut text = String::new();
        render_metrics(&stats, &mut text);
        assert!(text.contains("sidetrace_spans_dropped_total{reason=\"queue_full\"} 96\n"));
        assert!(text.contains("sidetrace_span_queue_depth 4\n"));
    }

    /// A TLS collector on loopback with a certificate for `localhost` from a private CA:
    /// answers 202 to every POST and counts them.
    async fn tls_collector() -> (Uri, Vec<u8>, Arc<AtomicU64>) {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("cert");
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let posts = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&posts);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let counted = Arc::clone(&counted);
                            async move {
                                let _ = req.into_body().collect().await;
                                counted.fetch_add(1, Ordering::SeqCst);
                                Ok::<_, std::convert::Infallible>(
                                    http::Response::builder()
                                        .status(202)
                                        .body(Full::new(Bytes::new()))
                                        .expect("response"),
                                )
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        let uri = format!("https://localhost:{port}/api/v2/spans")
            .parse()
            .expect("uri");
        (uri, ca.pem().into_bytes(), posts)
    }

    #[tokio::test]
    async fn https_collectors_are_verified_against_the_given_ca() {
        let (uri, ca_pem, posts) = tls_collector().await;
        let (handle, _task) = Exporter::spawn(ExporterConfig {
            roots: CollectorRoots::from_pem(&ca_pem).expect("bundle"),
            ..config(uri.clone())
        });
        handle.record(span("/tls"));
        handle.flush(WAIT).await;
        let stats = handle.stats();
        assert_eq!((stats.exported, stats.dropped_total()), (1, 0), "{stats:?}");
        assert_eq!(posts.load(Ordering::SeqCst), 1);

        // The system's roots do not know the private CA: the handshake fails, the span is
        // dropped and counted, nothing reaches the collector.
        let (handle, _task) = Exporter::spawn(config(uri));
        handle.record(span("/untrusted"));
        handle.flush(WAIT).await;
        let stats = handle.stats();
        assert_eq!(
            (stats.exported, stats.dropped_send_failed),
            (0, 1),
            "{stats:?}"
        );
        assert_eq!(posts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn otlp_uses_the_same_tls_as_zipkin() {
        let (uri, ca_pem, posts) = tls_collector().await;
        let (handle, _task) = Exporter::spawn(ExporterConfig {
            roots: CollectorRoots::from_pem(&ca_pem).expect("bundle"),
            protocol: CollectorProtocol::OtlpHttp,
            ..config(uri.clone())
        });
        handle.record(span("/tls-otlp"));
        handle.flush(WAIT).await;
        let stats = handle.stats();
        assert_eq!((stats.exported, stats.dropped_total()), (1, 0), "{stats:?}");
        assert_eq!(posts.load(Ordering::SeqCst), 1);
        // Unknown CA: refused at the handshake, counted, nothing delivered.
        let (handle, _task) = Exporter::spawn(ExporterConfig {
            protocol: CollectorProtocol::OtlpHttp,
            ..config(uri)
        });
        handle.record(span("/untrusted"));
        handle.flush(WAIT).await;
        assert_eq!(handle.stats().dropped_send_failed, 1);
        assert_eq!(posts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn set_endpoint_redirects_later_batches() {
        let mut collector = start_collector(&[]).await;
        let (handle, _task) = Exporter::spawn(config(refused_endpoint().await));
        handle.set_endpoint(collector.endpoint());
        handle.record(span("/moved"));
        handle.flush(WAIT).await;
        assert_eq!(handle.stats().exported, 1);
        assert!(String::from_utf8_lossy(&collector.next().await.body).contains("/moved"));
    }

    fn otlp_endpoint(c: &Collector) -> Uri {
        format!("http://{}/v1/traces", c.addr).parse().expect("uri")
    }

    fn decode_otlp(
        body: &[u8],
    ) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
        use prost::Message;
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(body)
            .expect("an OTLP protobuf body")
    }

    #[tokio::test]
    async fn a_v1_traces_endpoint_gets_otlp_protobuf_with_the_resource() {
        let mut collector = start_collector(&[]).await;
        let mut resource = Resource::default();
        resource.set("k8s.pod.name", "p-1");
        let cfg = ExporterConfig {
            max_batch: 2,
            resource: resource.clone(),
            ..config(otlp_endpoint(&collector))
        };
        assert_eq!(
            cfg.protocol,
            CollectorProtocol::OtlpHttp,
            "follows the path"
        );
        let (handle, _task) = Exporter::spawn(cfg);
        let spans = [span("/a"), span("/b")];
        for s in &spans {
            handle.record(s.clone());
        }
        let post = collector.next().await;
        assert_eq!(post.path, "/v1/traces");
        assert_eq!(post.content_type, "application/x-protobuf");
        assert_eq!(post.body, encode_otlp(&spans, &resource));
        let req = decode_otlp(&post.body);
        assert_eq!(req.resource_spans[0].scope_spans[0].spans.len(), 2);
        wait_for(&handle, "exported", |s| s.exported == 2).await;
    }

    #[tokio::test]
    async fn otlp_overload_answers_are_retried_after_retry_after() {
        let mut collector =
            start_collector_answering(&[(429, Some("1")), (503, Some("1")), (502, None)]).await;
        let (handle, _task) = Exporter::spawn(ExporterConfig {
            max_retries: 3,
            ..config(otlp_endpoint(&collector))
        });
        handle.record(span("/busy"));
        let started = std::time::Instant::now();
        handle.flush(WAIT).await;
        // Two Retry-After: 1 answers: the exporter waited for them, not its 1 ms backoff.
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        for _ in 0..4 {
            let post = collector.next().await;
            assert_eq!(post.content_type, "application/x-protobuf");
        }
        let stats = handle.stats();
        assert_eq!(
            (stats.exported, stats.retries, stats.dropped_total()),
            (1, 3, 0),
            "{stats:?}"
        );
    }

    #[tokio::test]
    async fn otlp_rejections_and_other_server_errors_are_not_retried() {
        let mut collector = start_collector(&[400, 500]).await;
        let (handle, _task) = Exporter::spawn(config(otlp_endpoint(&collector)));
        handle.record(span("/bad"));
        handle.flush(WAIT).await;
        handle.record(span("/broken"));
        handle.flush(WAIT).await;
        collector.next().await;
        collector.next().await;
        let stats = handle.stats();
        assert_eq!(
            (
                stats.dropped_rejected,
                stats.dropped_send_failed,
                stats.retries,
                stats.exported
            ),
            (1, 1, 0, 0),
            "{stats:?}"
        );
    }

    #[tokio::test]
    async fn overload_beyond_the_retries_drops_and_counts() {
        let mut collector = start_collector(&[429, 429, 429]).await;
        let (handle, _task) = Exporter::spawn(config(otlp_endpoint(&collector)));
        handle.record(span("/x"));
        handle.flush(WAIT).await;
        for _ in 0..3 {
            collector.next().await;
        }
        let stats = handle.stats();
        assert_eq!(
            (stats.exported, stats.retries, stats.dropped_send_failed),
            (0, 2, 1),
            "{stats:?}"
        );
    }

    #[test]
    fn retry_after_is_honoured_within_bounds() {
        let status = |s: u16, after: Option<u64>| Error::Status {
            status: s,
            retry_after: after.map(Duration::from_secs),
        };
        let backoff = Duration::from_millis(200);
        assert_eq!(
            retry_wait(backoff, &status(503, Some(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            retry_wait(backoff, &status(429, Some(3600))),
            MAX_RETRY_AFTER
        );
        assert_eq!(retry_wait(backoff, &status(429, Some(0))), backoff);
        assert_eq!(retry_wait(backoff, &status(503, None)), backoff);
        assert_eq!(retry_wait(backoff, &Error::Timeout(backoff)), backoff);
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn retryable_statuses_follow_each_protocol() {
        let status = |s: u16| Error::Status {
            status: s,
            retry_after: None,
        };
        let otlp: Vec<u16> = (400..600)
            .filter(|s| status(*s).is_retryable(CollectorProtocol::OtlpHttp))
            .collect();
        assert_eq!(otlp, [429, 502, 503, 504]);
        let zipkin = (400..600)
            .filter(|s| status(*s).is_retryable(CollectorProtocol::Zipkin))
            .count();
        assert_eq!(zipkin, 101, "429 and every 5xx");
        assert!(status(400).is_rejection() && !status(429).is_rejection());
    }

    #[tokio::test]
    async fn set_collector_switches_protocol_for_later_batches() {
        let mut collector = start_collector(&[]).await;
        let (handle, _task) = Exporter::spawn(config(collector.endpoint()));
        handle.record(span("/zipkin"));
        handle.flush(WAIT).await;
        assert_eq!(collector.next().await.content_type, "application/json");
        handle.set_collector(otlp_endpoint(&collector), CollectorProtocol::OtlpHttp);
        handle.record(span("/otlp"));
        handle.flush(WAIT).await;
        let post = collector.next().await;
        assert_eq!(
            (post.path.as_str(), post.content_type.as_str()),
            ("/v1/traces", "application/x-protobuf")
        );
        decode_otlp(&post.body);
        assert_eq!(handle.stats().exported, 2);
    }

    #[test]
    fn metrics_text_names_every_counter() {
        let stats = ExportStats {
            exported: 7,
            batches_sent: 2,
            retries: 1,
            dropped_queue_full: 3,
            dropped_send_failed: 4,
            dropped_rejected: 5,
            dropped_invalid_endpoint: 6,
            queue_depth: 8,
            queue_capacity: 1000,
        };
        let mut text = String::new();
        render_metrics(&stats, &mut text);
        for line in [
            "sidetrace_spans_exported_total 7",
            "sidetrace_span_batches_sent_total 2",
            "sidetrace_span_export_retries_total 1",
            "sidetrace_spans_dropped_total{reason=\"queue_full\"} 3",
            "sidetrace_spans_dropped_total{reason=\"send_failed\"} 4",
            "sidetrace_spans_dropped_total{reason=\"rejected\"} 5",
            "sidetrace_spans_dropped_total{reason=\"invalid_endpoint\"} 6",
            "sidetrace_span_queue_depth 8",
            "sidetrace_span_queue_capacity 1000",
            "# TYPE sidetrace_spans_dropped_total counter",
            "# TYPE sidetrace_span_queue_depth gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert_eq!(stats.dropped_total(), 18);
    }
}

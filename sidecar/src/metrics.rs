//! Proxy counters and their Prometheus / OpenMetrics text rendering. Plain atomics: the
//! request path only does relaxed increments, `/metrics` reads a snapshot. The per-request
//! RED series (count, errors, latency by operation, with exemplars) live in [`crate::red`].

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;

use sidetrace_contract::Direction;
use sidetrace_trace::sampling::Reason;
use sidetrace_trace::{Inference, NameBudget};

use crate::detect::Detected;
use crate::red::{Exposition, Observation, Red, RequestMetrics};

const DIRECTIONS: [Direction; 2] = [Direction::Inbound, Direction::Outbound];
const PROTOCOLS: [Detected; 4] = [
    Detected::Http1,
    Detected::Http2,
    Detected::Tls,
    Detected::Opaque,
];

/// Why a connection was closed without being proxied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The original destination is the proxy itself (a direct connect, not a redirect).
    Loop,
    /// No original destination and no explicit forward address.
    NoOriginalDst,
    /// `--max-connections` client connections were already open.
    Limit,
}

/// Every [`Refusal`], in the order they are rendered.
const REFUSALS: [Refusal; 3] = [Refusal::Loop, Refusal::NoOriginalDst, Refusal::Limit];

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Self::Loop => "loop",
            Self::NoOriginalDst => "no_original_dst",
            Self::Limit => "limit",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Loop => 0,
            Self::NoOriginalDst => 1,
            Self::Limit => 2,
        }
    }
}

#[derive(Default)]
struct PerDirection {
    connections_open: AtomicI64,
    connections_total: AtomicU64,
    protocols: [AtomicU64; PROTOCOLS.len()],
    grpc_requests: AtomicU64,
    refused: [AtomicU64; REFUSALS.len()],
    upstream_errors: AtomicU64,
    upstream_timeouts: AtomicU64,
    idle_timeouts: AtomicU64,
}

/// All proxy counters.
#[derive(Default)]
pub struct Metrics {
    dirs: [PerDirection; 2],
    /// Requests, errors and latency by operation and status class.
    red: Red,
    /// What [`Metrics::request`] records.
    request_metrics: RequestMetrics,
    /// Highest open-connection count (both directions) since [`Metrics::take_peak_open`].
    peak_open: AtomicI64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// Sampling decisions by reason ([`Reason::ALL`] order), not sampled and sampled.
    sampling: [[AtomicU64; 2]; Reason::ALL.len()],
    /// Requests whose trace context was malformed and dropped (counted by the request path,
    /// which learns it from the hop).
    malformed_context: AtomicU64,
    /// Outbound requests without context of their own, by how their parent was inferred
    /// (indexed like [`Inference::ALL`]).
    parent_inference: [AtomicU64; Inference::ALL.len()],
    /// The tracer's default span-name budget, whose overflow counter is reported here.
    span_names: Arc<NameBudget>,
}

fn idx(d: Direction) -> usize {
    match d {
        Direction::Inbound => 0,
        Direction::Outbound => 1,
    }
}

/// Label value of a direction.
pub fn direction_label(d: Direction) -> &'static str {
    match d {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    }
}

/// Decrements the open-connection gauge when the connection ends, however it ends.
pub struct ConnGuard<'a> {
    gauge: &'a AtomicI64,
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.gauge.fetch_sub(1, Relaxed);
    }
}

impl Metrics {
    /// Counters that report the overflow of the tracer's default span-name budget `names`.
    pub fn with_name_budget(names: Arc<NameBudget>) -> Self {
        Self {
            span_names: names,
            ..Self::default()
        }
    }

    /// Counts an accepted connection; the gauge goes down when the guard drops.
    pub fn connection(&self, d: Direction) -> ConnGuard<'_> {
        let p = &self.dirs[idx(d)];
        p.connections_total.fetch_add(1, Relaxed);
        p.connections_open.fetch_add(1, Relaxed);
        self.peak_open.fetch_max(self.open_connections(), Relaxed);
        ConnGuard {
            gauge: &p.connections_open,
        }
    }

    /// Connections currently open in both directions.
    pub fn open_connections(&self) -> i64 {
        self.dirs
            .iter()
            .map(|p| p.connections_open.load(Relaxed))
            .sum()
    }

    /// The highest open-connection count since the previous call (at least the count now),
    /// restarting the high-water mark from the count now. A burst that opened and closed
    /// between two calls still shows.
    pub fn take_peak_open(&self) -> i64 {
        let now = self.open_connections();
        self.peak_open.swap(now, Relaxed).max(now)
    }

    /// Counts a protocol detection result.
    pub fn detected(&self, d: Direction, proto: Detected) {
        let i = PROTOCOLS
            .iter()
            .position(|p| *p == proto)
            .unwrap_or(PROTOCOLS.len() - 1);
        self.dirs[idx(d)].protocols[i].fetch_add(1, Relaxed);
    }

    /// Counts a refused connection.
    pub fn refused(&self, d: Direction, why: Refusal) {
        self.dirs[idx(d)].refused[why.index()].fetch_add(1, Relaxed);
    }

    /// Counts a failed upstream connect or exchange.
    pub fn upstream_error(&self, d: Direction) {
        self.dirs[idx(d)].upstream_errors.fetch_add(1, Relaxed);
    }

    /// Counts a request whose upstream response headers did not arrive within its timeout.
    pub fn upstream_timeout(&self, d: Direction) {
        self.dirs[idx(d)].upstream_timeouts.fetch_add(1, Relaxed);
    }

    /// Counts a client connection closed for being idle.
    pub fn idle_timeout(&self, d: Direction) {
        self.dirs[idx(d)].idle_timeouts.fetch_add(1, Relaxed);
    }

    /// The same counters recording `mode` per request.
    pub fn with_request_metrics(self, mode: RequestMetrics) -> Self {
        Self {
            request_metrics: mode,
            ..self
        }
    }

    /// Counts a finished exchange in the RED series (see [`crate::red`]), as far as
    /// `--request-metrics` says.
    pub fn request(&self, o: &Observation<'_>) {
        match self.request_metrics {
            RequestMetrics::Exemplars => self.red.observe(o, SystemTime::now()),
            RequestMetrics::On => self.red.observe(
                &Observation {
                    sampled_trace: None,
                    ..*o
                },
                SystemTime::now(),
            ),
            RequestMetrics::Off => {}
        }
    }

    /// Counts a gRPC request (when its head arrives).
    pub fn grpc_request(&self, d: Direction) {
        self.dirs[idx(d)].grpc_requests.fetch_add(1, Relaxed);
    }

    /// Counts a sampling decision.
    pub fn sampling_decision(&self, reason: Reason, sampled: bool) {
        self.sampling[reason.index()][usize::from(sampled)].fetch_add(1, Relaxed);
    }

    /// Counts a request whose trace context was malformed and replaced by a new trace.
    pub fn malformed_context(&self) {
        self.malformed_context.fetch_add(1, Relaxed);
    }

    /// Counts how an outbound request's parent was inferred.
    pub fn parent_inference(&self, how: Inference) {
        let i = Inference::ALL.iter().position(|h| *h == how).unwrap_or(0);
        self.parent_inference[i].fetch_add(1, Relaxed);
    }

    /// Counts a config reload attempt.
    pub fn reload(&self, ok: bool) {
        if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        }
        .fetch_add(1, Relaxed);
    }

    /// Renders every counter as Prometheus text, with the RED series' exemplars when `format`
    /// is OpenMetrics (the caller converts the whole text with [`crate::red::to_openmetrics`]).
    pub fn render(&self, out: &mut String, format: Exposition) {
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        self.red.render(out, format);
        head(
            out,
            "sidetrace_proxy_grpc_requests_total",
            "counter",
            "gRPC requests proxied, by direction.",
        );
        for d in DIRECTIONS {
            let _ = writeln!(
                out,
                "sidetrace_proxy_grpc_requests_total{{direction=\"{}\"}} {}",
                direction_label(d),
                self.dirs[idx(d)].grpc_requests.load(Relaxed)
            );
        }
        head(
            out,
            "sidetrace_proxy_connections_open",
            "gauge",
            "Connections currently open, by direction.",
        );
        for d in DIRECTIONS {
            let _ = writeln!(
                out,
                "sidetrace_proxy_connections_open{{direction=\"{}\"}} {}",
                direction_label(d),
                self.dirs[idx(d)].connections_open.load(Relaxed)
            );
        }
        head(
            out,
            "sidetrace_proxy_connections_total",
            "counter",
            "Connections accepted, by direction.",
        );
        for d in DIRECTIONS {
            let _ = writeln!(
                out,
                "sidetrace_proxy_connections_total{{direction=\"{}\"}} {}",
                direction_label(d),
                self.dirs[idx(d)].connections_total.load(Relaxed)
            );
        }
        head(
            out,
            "sidetrace_proxy_detected_protocol_total",
            "counter",
            "Connections by detected protocol and direction.",
        );
        for d in DIRECTIONS {
            for (i, proto) in PROTOCOLS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "sidetrace_proxy_detected_protocol_total{{direction=\"{}\",protocol=\"{}\"}} {}",
                    direction_label(d),
                    proto.label(),
                    self.dirs[idx(d)].protocols[i].load(Relaxed)
                );
            }
        }
        head(
            out,
            "sidetrace_proxy_connections_refused_total",
            "counter",
            "Connections closed unproxied, by reason.",
        );
        for d in DIRECTIONS {
            for why in REFUSALS {
                let _ = writeln!(
                    out,
                    "sidetrace_proxy_connections_refused_total{{direction=\"{}\",reason=\"{}\"}} {}",
                    direction_label(d),
                    why.label(),
                    self.dirs[idx(d)].refused[why.index()].load(Relaxed)
                );
            }
        }
        head(
            out,
            "sidetrace_proxy_upstream_errors_total",
            "counter",
            "Failed upstream connects or exchanges, by direction.",
        );
        for d in DIRECTIONS {
            let _ = writeln!(
                out,
                "sidetrace_proxy_upstream_errors_total{{direction=\"{}\"}} {}",
                direction_label(d),
                self.dirs[idx(d)].upstream_errors.load(Relaxed)
            );
        }
        head(
            out,
            "sidetrace_proxy_upstream_timeouts_total",
            "counter",
            "Requests answered 504 (gRPC: status 4) because the upstream's response headers did not arrive within the response timeout, by direction.",
        );
        for d in DIRECTIONS {
            let _ = writeln!(
                out,
                "sidetrace_proxy_upstream_timeouts_total{{direction=\"{}\"}} {}",
                direction_label(d),
                self.dirs[idx(d)].upstream_timeouts.load(Relaxed)
            );
        }
        head(
            out,
            "sidetrace_proxy_idle_timeouts_total",
            "counter",
            "Client connections closed after --idle-timeout without activity (opaque and upgraded: no bytes; HTTP/2: no open stream; HTTP/1: no request head), by direction.",
        );
        for d in DIRECTIONS {
            let _ = writeln!(
                out,
                "sidetrace_proxy_idle_timeouts_total{{direction=\"{}\"}} {}",
                direction_label(d),
                self.dirs[idx(d)].idle_timeouts.load(Relaxed)
            );
        }
        head(
            out,
            "sidetrace_proxy_config_reloads_total",
            "counter",
            "Config file reloads, by result.",
        );
        let _ = writeln!(
            out,
            "sidetrace_proxy_config_reloads_total{{result=\"ok\"}} {}\nsidetrace_proxy_config_reloads_total{{result=\"failed\"}} {}",
            self.reloads_ok.load(Relaxed),
            self.reloads_failed.load(Relaxed)
        );
        head(
            out,
            "sidetrace_span_names_overflow_total",
            "counter",
            "Spans named `<METHOD> {other}` because the proxy had already given out its cap of distinct default span names.",
        );
        let _ = writeln!(
            out,
            "sidetrace_span_names_overflow_total {}",
            self.span_names.overflow_total()
        );
        head(
            out,
            "sidetrace_proxy_sampling_decisions_total",
            "counter",
            "Head sampling decisions of traced requests, by reason (rate, limit: the rate said yes but maxTracesPerSecond had no token, parent_sampled, parent_unsampled, debug, untrusted: the caller's decision was ignored) and outcome.",
        );
        for reason in Reason::ALL {
            for (sampled, label) in [(1, "true"), (0, "false")] {
                let _ = writeln!(
                    out,
                    "sidetrace_proxy_sampling_decisions_total{{reason=\"{}\",sampled=\"{label}\"}} {}",
                    reason.label(),
                    self.sampling[reason.index()][sampled].load(Relaxed)
                );
            }
        }
        head(
            out,
            "sidetrace_trace_context_malformed_total",
            "counter",
            "Requests whose trace context was malformed and replaced by a new trace.",
        );
        let _ = writeln!(
            out,
            "sidetrace_trace_context_malformed_total {}",
            self.malformed_context.load(Relaxed)
        );
        head(
            out,
            "sidetrace_parent_inference_total",
            "counter",
            "Outbound requests without trace context of their own, by how their parent was inferred: inferred (the one inbound request in flight), ambiguous (several), absent (none traced).",
        );
        for (how, n) in Inference::ALL.iter().zip(&self.parent_inference) {
            let _ = writeln!(
                out,
                "sidetrace_parent_inference_total{{decision=\"{}\"}} {}",
                how.as_str(),
                n.load(Relaxed)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders `m` for Prometheus, checks that every one of `lines` is a whole line of it,
    /// and returns the text.
    fn assert_renders_lines(m: &Metrics, lines: &[&str]) -> String {
        let mut out = String::new();
        m.render(&mut out, Exposition::Prometheus);
        for line in lines {
            assert!(out.lines().any(|l| l == *line), "missing {line}\n{out}");
        }
        out
    }

    #[test]
    fn renders_red_series_grpc_and_gauges() {
        let m = Metrics::default();
        m.request(&Observation {
            direction: Direction::Inbound,
            operation: "GET /",
            class: crate::red::status_class(Some(200), None),
            latency: std::time::Duration::from_millis(3),
            sampled_trace: None,
        });
        m.grpc_request(Direction::Outbound);
        let g = m.connection(Direction::Inbound);
        m.detected(Direction::Inbound, Detected::Http2);
        m.refused(Direction::Outbound, Refusal::Loop);
        m.refused(Direction::Inbound, Refusal::Limit);
        m.upstream_timeout(Direction::Outbound);
        m.idle_timeout(Direction::Inbound);
        assert_renders_lines(
            &m,
            &[
                "sidetrace_proxy_requests_total{direction=\"inbound\",operation=\"GET /\",status_class=\"2xx\"} 1",
                "sidetrace_proxy_grpc_requests_total{direction=\"outbound\"} 1",
                "sidetrace_proxy_connections_open{direction=\"inbound\"} 1",
                "sidetrace_proxy_detected_protocol_total{direction=\"inbound\",protocol=\"http2\"} 1",
                "sidetrace_proxy_connections_refused_total{direction=\"outbound\",reason=\"loop\"} 1",
                "sidetrace_proxy_connections_refused_total{direction=\"inbound\",reason=\"limit\"} 1",
                "sidetrace_proxy_connections_refused_total{direction=\"outbound\",reason=\"limit\"} 0",
                "sidetrace_proxy_upstream_timeouts_total{direction=\"outbound\"} 1",
                "sidetrace_proxy_upstream_timeouts_total{direction=\"inbound\"} 0",
                "sidetrace_proxy_idle_timeouts_total{direction=\"inbound\"} 1",
                "# TYPE sidetrace_proxy_upstream_timeouts_total counter",
                "# TYPE sidetrace_proxy_idle_timeouts_total counter",
            ],
        );
        drop(g);
        assert_eq!(m.open_connections(), 0);
    }

    #[test]
    fn renders_the_span_name_overflow_counter() {
        let budget = Arc::new(NameBudget::new(1));
        let m = Metrics::with_name_budget(Arc::clone(&budget));
        assert!(budget.admit("GET /a"));
        assert!(!budget.admit("GET /b"));
        assert!(!budget.admit("GET /c"));
        let out = assert_renders_lines(
            &m,
            &[
                "# TYPE sidetrace_span_names_overflow_total counter",
                "sidetrace_span_names_overflow_total 2",
            ],
        );
        assert!(out.contains("# HELP sidetrace_span_names_overflow_total "));
    }

    #[test]
    fn request_metrics_off_or_without_exemplars() {
        let o = Observation {
            direction: Direction::Inbound,
            operation: "GET /",
            class: 1,
            latency: std::time::Duration::from_millis(1),
            sampled_trace: sidetrace_trace::TraceId::from_u128(7),
        };
        let text = |mode| {
            let m = Metrics::default().with_request_metrics(mode);
            m.request(&o);
            let mut out = String::new();
            m.render(&mut out, Exposition::OpenMetrics);
            out
        };
        assert!(text(RequestMetrics::Exemplars).contains("trace_id="));
        let on = text(RequestMetrics::On);
        assert!(
            on.contains("operation=\"GET /\"") && !on.contains("trace_id="),
            "{on}"
        );
        assert!(!text(RequestMetrics::Off).contains("operation="));
    }

    #[test]
    fn renders_sampling_decisions_by_reason_and_outcome() {
        let m = Metrics::default();
        m.sampling_decision(Reason::Limit, false);
        m.sampling_decision(Reason::Untrusted, true);
        m.sampling_decision(Reason::Untrusted, true);
        assert_renders_lines(
            &m,
            &[
                "# TYPE sidetrace_proxy_sampling_decisions_total counter",
                "sidetrace_proxy_sampling_decisions_total{reason=\"limit\",sampled=\"false\"} 1",
                "sidetrace_proxy_sampling_decisions_total{reason=\"untrusted\",sampled=\"true\"} 2",
                "sidetrace_proxy_sampling_decisions_total{reason=\"rate\",sampled=\"true\"} 0",
            ],
        );
    }

    #[test]
    fn renders_parent_inference_decisions() {
        let m = Metrics::default();
        m.parent_inference(Inference::Inferred);
        m.parent_inference(Inference::Inferred);
        m.parent_inference(Inference::Absent);
        assert_renders_lines(
            &m,
            &[
                "# TYPE sidetrace_parent_inference_total counter",
                "sidetrace_parent_inference_total{decision=\"inferred\"} 2",
                "sidetrace_parent_inference_total{decision=\"ambiguous\"} 0",
                "sidetrace_parent_inference_total{decision=\"absent\"} 1",
            ],
        );
    }

    #[test]
    fn renders_the_malformed_context_counter() {
        let m = Metrics::default();
        m.malformed_context();
        m.malformed_context();
        assert_renders_lines(
            &m,
            &[
                "# TYPE sidetrace_trace_context_malformed_total counter",
                "sidetrace_trace_context_malformed_total 2",
            ],
        );
    }

    #[test]
    fn the_peak_sees_a_burst_that_closed_between_two_looks() {
        let m = Metrics::default();
        assert_eq!(m.take_peak_open(), 0);
        let burst: Vec<_> = (0..300).map(|_| m.connection(Direction::Inbound)).collect();
        let kept = m.connection(Direction::Outbound);
        drop(burst);
        assert_eq!(m.open_connections(), 1);
        assert_eq!(m.take_peak_open(), 301);
        // The mark restarts from the count at the look.
        assert_eq!(m.take_peak_open(), 1);
        drop(kept);
        assert_eq!(m.take_peak_open(), 1);
        assert_eq!(m.take_peak_open(), 0);
    }
}

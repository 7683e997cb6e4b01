//! RED metrics (rate, errors, duration) per direction, operation and status class, with
//! OpenMetrics exemplars that link a latency bucket and a request counter to a sampled trace.
//!
//! Series: `sidetrace_proxy_requests_total` and `sidetrace_proxy_request_duration_seconds`
//! labelled `direction`, `operation` (the span name) and `status_class` (`1xx`..`5xx`, `other`
//! when no response arrived; for gRPC `grpc_<code>`, `grpc_other` past code 16), and
//! `sidetrace_proxy_request_errors_total` labelled `direction` and `operation` (5xx, no
//! response, or a gRPC code that is an error by the span rule,
//! [`sidetrace_trace::hop::grpc_status_is_error`]).
//!
//! Cardinality is bounded by the operation names: default span names are capped per proxy by
//! the tracer's [`sidetrace_trace::NameBudget`] (200, then ten `<METHOD> {other}` names), rule
//! names by the TracedService (at most 256 rules), plus [`UNTRACED_OPERATION`]; so at most
//! 2 directions × (200 + 10 + 256 + 1) operations × [`CLASS_LABELS`] classes, in practice the
//! operations a service really has × the few classes they answer with. A series exists once a
//! request landed in it.
//!
//! Hot path: a read lock on the direction's map (held for the update, no clone), one increment
//! of the bucket the latency falls in (buckets are stored per bucket and summed when rendered,
//! so an observation is one increment, not one per bucket) and one of the latency sum; the
//! request count is the sum of the buckets. A sampled request also stores its exemplar under a
//! per-series mutex. `bench/src/bin/metrics.rs` measures this against the Prometheus project's
//! `prometheus-client` crate, whose histogram takes a lock per observation.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sidetrace_contract::Direction;
use sidetrace_trace::{SpanKind, TraceId};

/// Upper bounds of the request latency histogram, in seconds (time to response headers).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets stored per series: the bounded ones and `+Inf`.
const SLOTS: usize = LATENCY_BUCKETS.len() + 1;

/// The `operation` of requests proxied but not traced (excluded paths, kubelet probes): they
/// have no span name, and one shared value keeps them out of the real operations.
pub const UNTRACED_OPERATION: &str = "{untraced}";

/// Highest gRPC status code with a label of its own (16, UNAUTHENTICATED, is the last one the
/// gRPC spec defines).
const MAX_GRPC_CODE: usize = 16;
/// Index of the first gRPC class in [`CLASS_LABELS`].
const GRPC_BASE: usize = 6;
/// Index of `other` (no response) in [`CLASS_LABELS`].
const NO_RESPONSE: usize = 5;

/// Every `status_class` label value, indexed by [`status_class`].
pub const CLASS_LABELS: [&str; GRPC_BASE + MAX_GRPC_CODE + 2] = [
    "1xx",
    "2xx",
    "3xx",
    "4xx",
    "5xx",
    "other",
    "grpc_0",
    "grpc_1",
    "grpc_2",
    "grpc_3",
    "grpc_4",
    "grpc_5",
    "grpc_6",
    "grpc_7",
    "grpc_8",
    "grpc_9",
    "grpc_10",
    "grpc_11",
    "grpc_12",
    "grpc_13",
    "grpc_14",
    "grpc_15",
    "grpc_16",
    "grpc_other",
];

/// The index into [`CLASS_LABELS`] of an exchange's outcome: the gRPC status when there is one
/// (gRPC answers HTTP 200 whatever happened), else the HTTP status class, else `other`.
pub fn status_class(status: Option<u16>, grpc_status: Option<&str>) -> usize {
    if let Some(code) = grpc_status {
        return match code.trim().parse::<usize>() {
            Ok(c) if c <= MAX_GRPC_CODE => GRPC_BASE + c,
            _ => CLASS_LABELS.len() - 1,
        };
    }
    match status {
        Some(s @ 100..=599) => usize::from(s / 100) - 1,
        _ => NO_RESPONSE,
    }
}

/// Whether an outcome counts as an error: 5xx or no response; for gRPC, the span's rule for
/// its direction (a SERVER counts the codes that blame it, a CLIENT every non-OK code).
pub fn is_error(direction: Direction, class: usize) -> bool {
    match class {
        4 | NO_RESPONSE => true,
        c if c >= GRPC_BASE => {
            let kind = match direction {
                Direction::Inbound => SpanKind::Server,
                Direction::Outbound => SpanKind::Client,
            };
            let label = CLASS_LABELS[c];
            let code = label.strip_prefix("grpc_").unwrap_or(label);
            code == "other" || sidetrace_trace::hop::grpc_status_is_error(code, kind)
        }
        _ => false,
    }
}

/// Which bucket slot a latency falls in (the last is `+Inf`).
fn slot(latency: Duration) -> usize {
    let secs = latency.as_secs_f64();
    LATENCY_BUCKETS.partition_point(|le| *le < secs)
}

/// One sampled request remembered for a bucket or a counter.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Exemplar {
    trace_id: TraceId,
    /// Latency in seconds.
    seconds: f64,
    /// When it was observed, seconds since the epoch.
    at: f64,
}

#[derive(Default)]
struct Exemplars {
    buckets: [Option<Exemplar>; SLOTS],
    /// The latest one, for the request counter.
    last: Option<Exemplar>,
}

#[derive(Default)]
struct Series {
    /// Observations per bucket slot, not cumulative.
    buckets: [AtomicU64; SLOTS],
    sum_us: AtomicU64,
    exemplars: Mutex<Exemplars>,
}

impl Series {
    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }
}

/// The series of one operation, one per status class, made when first used.
#[derive(Default)]
struct Operation {
    classes: [OnceLock<Box<Series>>; CLASS_LABELS.len()],
}

/// An operation's series under its name, as rendered.
type Named = (Box<str>, Arc<Operation>);

/// The RED series of one proxy.
#[derive(Default)]
pub struct Red {
    dirs: [RwLock<HashMap<Box<str>, Arc<Operation>>>; 2],
}

fn dir_index(d: Direction) -> usize {
    match d {
        Direction::Inbound => 0,
        Direction::Outbound => 1,
    }
}

/// How much the proxy records per request (`--request-metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestMetrics {
    /// The RED series, and exemplars for sampled requests (the default).
    #[default]
    Exemplars,
    /// The RED series without exemplars.
    On,
    /// No per-request series (the connection and sampling counters stay).
    Off,
}

/// One finished exchange, as [`Red::observe`] counts it.
#[derive(Clone, Copy, Debug)]
pub struct Observation<'a> {
    /// Which listener served it.
    pub direction: Direction,
    /// The span name ([`UNTRACED_OPERATION`] when not traced).
    pub operation: &'a str,
    /// Index from [`status_class`].
    pub class: usize,
    /// Request head to response head.
    pub latency: Duration,
    /// The trace, when the request was sampled: it becomes the exemplar of the bucket and
    /// the counter.
    pub sampled_trace: Option<TraceId>,
}

/// Exposition format of `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposition {
    /// Prometheus text 0.0.4: no exemplars.
    Prometheus,
    /// OpenMetrics text 1.0.0: exemplars on buckets and counters, `# EOF`.
    OpenMetrics,
}

impl Exposition {
    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Content negotiation on the scraper's `Accept` header: OpenMetrics when the scraper ranks
/// `application/openmetrics-text` at least as high as plain text (by `q`, ties to OpenMetrics,
/// the richer one), plain Prometheus text otherwise or without the header. Prometheus sends
/// OpenMetrics first; curl and older scrapers get plain text.
pub fn negotiate(accept: Option<&str>) -> Exposition {
    let Some(accept) = accept else {
        return Exposition::Prometheus;
    };
    let (mut open_metrics, mut plain) = (None::<f32>, None::<f32>);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let mut q = 1.0_f32;
        let mut om_version_ok = true;
        for param in parts {
            let Some((k, v)) = param.split_once('=') else {
                continue;
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "q" => q = v.trim().parse().unwrap_or(0.0),
                // 0.0.1 and 1.0.0 are the same text for what is written here.
                "version" => om_version_ok = matches!(v.trim(), "1.0.0" | "0.0.1"),
                _ => {}
            }
        }
        let slot = match media.as_str() {
            "application/openmetrics-text" if om_version_ok => &mut open_metrics,
            "text/plain" | "*/*" | "text/*" => &mut plain,
            _ => continue,
        };
        *slot = Some(slot.map_or(q, |old| old.max(q)));
    }
    match (open_metrics, plain) {
        (Some(om), p) if om > 0.0 && om >= p.unwrap_or(0.0) => Exposition::OpenMetrics,
        _ => Exposition::Prometheus,
    }
}

/// Turns Prometheus text into OpenMetrics text: a counter family is named without its
/// `_total` suffix in `# HELP` and `# TYPE` (its samples keep it), and `# EOF` ends the text.
/// Every other line is already valid OpenMetrics as this crate writes it.
pub fn to_openmetrics(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut counters = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name);
        }
    }
    for line in text.lines() {
        let family = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
            .and_then(|rest| rest.split(' ').next());
        match family {
            Some(name) if counters.contains(name) && name.ends_with("_total") => {
                let _ = writeln!(out, "{}", line.replacen(name, &name[..name.len() - 6], 1));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out.push_str("# EOF\n");
    out
}

fn seconds_since_epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// ` # {trace_id="..."} value timestamp`, the OpenMetrics exemplar suffix.
fn write_exemplar(out: &mut String, e: Option<&Exemplar>, value: Option<f64>) {
    if let Some(e) = e {
        let _ = write!(
            out,
            " # {{trace_id=\"{}\"}} {} {:.3}",
            e.trace_id.to_hex_32(),
            value.unwrap_or(e.seconds),
            e.at
        );
    }
}

/// Escapes a label value (`\`, `"` and newlines), as both text formats require.
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

impl Red {
    /// Counts one exchange: one bucket increment, the latency sum, and the exemplar when the
    /// request was sampled.
    pub fn observe(&self, o: &Observation<'_>, now: SystemTime) {
        let class = o.class.min(CLASS_LABELS.len() - 1);
        let map = &self.dirs[dir_index(o.direction)];
        {
            let ops = map.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(op) = ops.get(o.operation) {
                record(op, class, o, now);
                return;
            }
        }
        let op = {
            let mut ops = map.write().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(ops.entry(o.operation.into()).or_default())
        };
        record(&op, class, o, now);
    }

    /// Writes the three families; exemplars only for OpenMetrics (Prometheus text has none).
    pub fn render(&self, out: &mut String, format: Exposition) {
        let exemplars = format == Exposition::OpenMetrics;
        let snapshot: Vec<(Direction, Vec<Named>)> = [Direction::Inbound, Direction::Outbound]
            .into_iter()
            .map(|d| {
                let ops = self.dirs[dir_index(d)]
                    .read()
                    .unwrap_or_else(PoisonError::into_inner);
                let mut v: Vec<_> = ops
                    .iter()
                    .map(|(k, v)| (k.clone(), Arc::clone(v)))
                    .collect();
                v.sort_by(|a, b| a.0.cmp(&b.0));
                (d, v)
            })
            .collect();
        let series = || {
            snapshot.iter().flat_map(|(d, ops)| {
                ops.iter().flat_map(move |(name, op)| {
                    op.classes
                        .iter()
                        .enumerate()
                        .filter_map(move |(c, s)| s.get().map(|s| (*d, escape(name), c, s)))
                })
            })
        };

        out.push_str("# HELP sidetrace_proxy_requests_total HTTP and gRPC requests proxied, by direction, operation (span name) and status class (gRPC: grpc_<status>).\n# TYPE sidetrace_proxy_requests_total counter\n");
        for (d, op, c, s) in series() {
            let _ = write!(
                out,
                "sidetrace_proxy_requests_total{{direction=\"{}\",operation=\"{op}\",status_class=\"{}\"}} {}",
                crate::metrics::direction_label(d),
                CLASS_LABELS[c],
                s.count()
            );
            if exemplars {
                let ex = s.exemplars.lock().unwrap_or_else(PoisonError::into_inner);
                write_exemplar(out, ex.last.as_ref(), Some(1.0));
            }
            out.push('\n');
        }

        out.push_str("# HELP sidetrace_proxy_request_errors_total Requests that failed (5xx, no response, or a gRPC error status), by direction and operation.\n# TYPE sidetrace_proxy_request_errors_total counter\n");
        for (d, ops) in &snapshot {
            for (name, op) in ops {
                let errors: u64 = op
                    .classes
                    .iter()
                    .enumerate()
                    .filter(|(c, _)| is_error(*d, *c))
                    .filter_map(|(_, s)| s.get().map(|s| s.count()))
                    .sum();
                let _ = writeln!(
                    out,
                    "sidetrace_proxy_request_errors_total{{direction=\"{}\",operation=\"{}\"}} {errors}",
                    crate::metrics::direction_label(*d),
                    escape(name)
                );
            }
        }

        out.push_str("# HELP sidetrace_proxy_request_duration_seconds Time from request head to response head, by direction, operation and status class.\n# TYPE sidetrace_proxy_request_duration_seconds histogram\n");
        for (d, op, c, s) in series() {
            let labels = format!(
                "direction=\"{}\",operation=\"{op}\",status_class=\"{}\"",
                crate::metrics::direction_label(d),
                CLASS_LABELS[c]
            );
            let ex = exemplars.then(|| s.exemplars.lock().unwrap_or_else(PoisonError::into_inner));
            let mut cumulative = 0;
            for (i, bucket) in s.buckets.iter().enumerate() {
                cumulative += bucket.load(Relaxed);
                let le = LATENCY_BUCKETS
                    .get(i)
                    .map_or_else(|| "+Inf".to_owned(), f64::to_string);
                let _ = write!(
                    out,
                    "sidetrace_proxy_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                );
                if let Some(ex) = &ex {
                    write_exemplar(out, ex.buckets[i].as_ref(), None);
                }
                out.push('\n');
            }
            let _ = writeln!(
                out,
                "sidetrace_proxy_request_duration_seconds_sum{{{labels}}} {}\nsidetrace_proxy_request_duration_seconds_count{{{labels}}} {cumulative}",
                s.sum_us.load(Relaxed) as f64 / 1e6
            );
        }
    }
}

fn record(op: &Operation, class: usize, o: &Observation<'_>, now: SystemTime) {
    let s = op.classes[class].get_or_init(Box::default);
    let i = slot(o.latency);
    s.buckets[i].fetch_add(1, Relaxed);
    s.sum_us.fetch_add(
        u64::try_from(o.latency.as_micros()).unwrap_or(u64::MAX),
        Relaxed,
    );
    if let Some(trace_id) = o.sampled_trace {
        let e = Exemplar {
            trace_id,
            seconds: o.latency.as_secs_f64(),
            at: seconds_since_epoch(now),
        };
        let mut ex = s.exemplars.lock().unwrap_or_else(PoisonError::into_inner);
        ex.buckets[i] = Some(e);
        ex.last = Some(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "463ac35c9f6413ad48485a3953bb6124";

    fn obs(op: &str, class: usize, ms: u64, sampled: bool) -> Observation<'_> {
        Observation {
            direction: Direction::Inbound,
            operation: op,
            class,
            latency: Duration::from_millis(ms),
            sampled_trace: sampled.then(|| TraceId::from_hex(T).expect("id")),
        }
    }

    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn lines(red: &Red, f: Exposition) -> String {
        let mut out = String::new();
        red.render(&mut out, f);
        out
    }

    fn has(out: &str, line: &str) {
        assert!(out.lines().any(|l| l == line), "missing {line}\n{out}");
    }

    #[test]
    fn classes_cover_http_grpc_and_no_response() {
        assert_eq!(CLASS_LABELS[status_class(Some(200), None)], "2xx");
        assert_eq!(CLASS_LABELS[status_class(Some(503), None)], "5xx");
        assert_eq!(CLASS_LABELS[status_class(None, None)], "other");
        assert_eq!(CLASS_LABELS[status_class(Some(700), None)], "other");
        assert_eq!(CLASS_LABELS[status_class(Some(200), Some("0"))], "grpc_0");
        assert_eq!(
            CLASS_LABELS[status_class(Some(200), Some(" 14 "))],
            "grpc_14"
        );
        assert_eq!(
            CLASS_LABELS[status_class(Some(200), Some("17"))],
            "grpc_other"
        );
        assert_eq!(
            CLASS_LABELS[status_class(Some(200), Some("x"))],
            "grpc_other"
        );
    }

    #[test]
    fn errors_follow_the_span_rule_per_direction() {
        let c = |s, g| status_class(s, g);
        assert!(is_error(Direction::Inbound, c(Some(500), None)));
        assert!(is_error(Direction::Inbound, c(None, None)));
        assert!(!is_error(Direction::Inbound, c(Some(404), None)));
        // NOT_FOUND blames the caller, not the server; a client sees it as a failure.
        assert!(!is_error(Direction::Inbound, c(Some(200), Some("5"))));
        assert!(is_error(Direction::Outbound, c(Some(200), Some("5"))));
        assert!(is_error(Direction::Inbound, c(Some(200), Some("14"))));
        assert!(!is_error(Direction::Outbound, c(Some(200), Some("0"))));
    }

    #[test]
    fn one_observation_lands_in_one_bucket_and_renders_cumulative() {
        let red = Red::default();
        red.observe(&obs("checkStock", 1, 3, false), at());
        red.observe(&obs("checkStock", 1, 20_000, false), at());
        red.observe(&obs("checkStock", 4, 1, false), at());
        let out = lines(&red, Exposition::Prometheus);
        let l = "direction=\"inbound\",operation=\"checkStock\",status_class=\"2xx\"";
        for line in [
            format!("sidetrace_proxy_requests_total{{{l}}} 2"),
            format!("sidetrace_proxy_request_duration_seconds_bucket{{{l},le=\"0.0025\"}} 0"),
            format!("sidetrace_proxy_request_duration_seconds_bucket{{{l},le=\"0.005\"}} 1"),
            format!("sidetrace_proxy_request_duration_seconds_bucket{{{l},le=\"10\"}} 1"),
            format!("sidetrace_proxy_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} 2"),
            format!("sidetrace_proxy_request_duration_seconds_count{{{l}}} 2"),
            format!("sidetrace_proxy_request_duration_seconds_sum{{{l}}} 20.003"),
            "sidetrace_proxy_request_errors_total{direction=\"inbound\",operation=\"checkStock\"} 1".to_owned(),
            "# TYPE sidetrace_proxy_request_duration_seconds histogram".to_owned(),
        ] {
            has(&out, &line);
        }
        assert!(!out.contains("trace_id"), "{out}");
        assert!(!out.contains("# EOF"));
    }

    #[test]
    fn a_bucket_edge_belongs_to_that_bucket() {
        assert_eq!(slot(Duration::from_millis(1)), 1, "le=0.001 includes 1ms");
        assert_eq!(slot(Duration::ZERO), 0);
        assert_eq!(slot(Duration::from_secs(11)), SLOTS - 1);
    }

    #[test]
    fn sampled_requests_leave_exemplars_in_openmetrics_only() {
        let red = Red::default();
        red.observe(&obs("GET /orders/{id}", 1, 3, true), at());
        red.observe(&obs("GET /orders/{id}", 1, 30, false), at());
        let om = to_openmetrics(&lines(&red, Exposition::OpenMetrics));
        let l = "direction=\"inbound\",operation=\"GET /orders/{id}\",status_class=\"2xx\"";
        has(
            &om,
            &format!(
                "sidetrace_proxy_request_duration_seconds_bucket{{{l},le=\"0.005\"}} 1 # {{trace_id=\"{T}\"}} 0.003 1700000000.000"
            ),
        );
        has(
            &om,
            &format!("sidetrace_proxy_request_duration_seconds_bucket{{{l},le=\"0.05\"}} 2"),
        );
        has(
            &om,
            &format!(
                "sidetrace_proxy_requests_total{{{l}}} 2 # {{trace_id=\"{T}\"}} 1 1700000000.000"
            ),
        );
        has(&om, "# TYPE sidetrace_proxy_requests counter");
        has(&om, "# TYPE sidetrace_proxy_request_errors counter");
        assert_eq!(om.lines().last(), Some("# EOF"));
        let plain = lines(&red, Exposition::Prometheus);
        assert!(!plain.contains("trace_id"), "{plain}");
    }

    #[test]
    fn label_values_are_escaped() {
        let red = Red::default();
        red.observe(&obs("a\"b\\c", 1, 1, false), at());
        let out = lines(&red, Exposition::Prometheus);
        assert!(out.contains("operation=\"a\\\"b\\\\c\""), "{out}");
    }

    #[test]
    fn negotiation_prefers_what_the_scraper_ranks_higher() {
        use Exposition::*;
        // Prometheus 3's default scrape protocols.
        let prometheus = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        for (accept, want) in [
            (None, Prometheus),
            (Some(prometheus), OpenMetrics),
            (Some("application/openmetrics-text"), OpenMetrics),
            (
                Some("text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5"),
                Prometheus,
            ),
            (Some("*/*"), Prometheus),
            (Some("application/openmetrics-text;q=0"), Prometheus),
            (
                Some("application/openmetrics-text; version=2.0.0"),
                Prometheus,
            ),
            (Some("garbage;;;=,"), Prometheus),
        ] {
            assert_eq!(negotiate(accept), want, "{accept:?}");
        }
    }

    /// The Accept header is network input: arbitrary tokens, parameters and bytes never
    /// panic, and without an `openmetrics` media range the answer is always plain text.
    #[test]
    fn negotiation_never_panics_on_garbage() {
        use rand::{Rng, SeedableRng};
        const PIECES: [&str; 16] = [
            "application/openmetrics-text",
            "text/plain",
            "*/*",
            ";",
            ",",
            "q=",
            "0.5",
            "1",
            "version=",
            "1.0.0",
            "=",
            " ",
            "\u{e9}",
            "q=nan",
            "q=-1",
            "escaping=allow-utf-8",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        for _ in 0..20_000 {
            let accept: String = (0..rng.random_range(0..12))
                .map(|_| PIECES[rng.random_range(0..PIECES.len())])
                .collect();
            let got = negotiate(Some(&accept));
            if !accept.contains("openmetrics") {
                assert_eq!(got, Exposition::Prometheus, "{accept:?}");
            }
        }
    }

    #[test]
    fn openmetrics_names_counter_families_without_total() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n# HELP g G.\n# TYPE g gauge\ng 1\n";
        assert_eq!(
            to_openmetrics(text),
            "# HELP a A.\n# TYPE a counter\na_total{x=\"1\"} 2\n# HELP g G.\n# TYPE g gauge\ng 1\n# EOF\n"
        );
    }
}

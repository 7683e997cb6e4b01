//! Health and Prometheus metrics for the operator, served on `--metrics-addr`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the reconcile duration histogram.
const BUCKETS: [f64; 8] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// The content type of the OpenMetrics text that prometheus-client writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// Counters the controller updates, registered once and rendered by prometheus-client. Every
/// labelled series exists from the start, so a scrape shows zeros rather than gaps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles that succeeded.
    pub reconcile_ok: Counter,
    /// Reconciles that failed (retried with backoff).
    pub reconcile_errors: Counter,
    /// Reconciles that found an invalid spec (the last rendered config is kept).
    pub invalid_specs: Counter,
    /// ConfigMaps written.
    pub config_map_writes: Counter,
    /// Status subresource writes.
    pub status_writes: Counter,
    /// Events published.
    pub events_published: Counter,
    duration: Histogram,
    leader: Gauge,
    /// Whether the controller's caches are running (readiness).
    pub ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::<OutcomeLabel, Counter>::default();
        let outcome = |o| {
            reconciles
                .get_or_create(&OutcomeLabel { outcome: o })
                .clone()
        };
        let (reconcile_ok, reconcile_errors, invalid_specs) =
            (outcome("ok"), outcome("error"), outcome("invalid_spec"));
        let writes = Family::<KindLabel, Counter>::default();
        let kind = |k| writes.get_or_create(&KindLabel { kind: k }).clone();
        let (config_map_writes, status_writes, events_published) =
            (kind("configmap"), kind("status"), kind("event"));
        let duration = Histogram::new(BUCKETS);
        let leader = Gauge::default();
        registry.register(
            "sidetrace_operator_reconciles",
            "TracedService reconciles, by outcome.",
            reconciles,
        );
        registry.register(
            "sidetrace_operator_writes",
            "Writes to the Kubernetes API, by kind of object.",
            writes,
        );
        registry.register(
            "sidetrace_operator_reconcile_duration_seconds",
            "Time one reconcile took.",
            duration.clone(),
        );
        registry.register(
            "sidetrace_operator_leader",
            "1 while this replica holds the leader Lease and reconciles, else 0.",
            leader.clone(),
        );
        Self {
            registry,
            reconcile_ok,
            reconcile_errors,
            invalid_specs,
            config_map_writes,
            status_writes,
            events_published,
            duration,
            leader,
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// Records one reconcile's duration.
    pub fn observe_reconcile(&self, took: Duration) {
        self.duration.observe(took.as_secs_f64());
    }

    /// Marks whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Whether this replica leads.
    pub fn is_leader(&self) -> bool {
        self.leader.get() == 1
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The health/metrics router. /readyz is 200 for a follower too (it is healthy, just waiting),
/// and for the leader once its caches run.
pub fn router(metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.ready.load(Ordering::Relaxed) || !m.is_leader() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "caches starting")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                ([(header::CONTENT_TYPE, CONTENT_TYPE)], m.render()).into_response()
            }),
        )
        .with_state(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        m.observe_reconcile(Duration::from_millis(7));
        m.observe_reconcile(Duration::from_secs(2));
        let text = m.render();
        assert!(text.contains("le=\"0.005\"} 0"), "{text}");
        assert!(text.contains("le=\"0.01\"} 1"), "{text}");
        assert!(text.contains("le=\"5.0\"} 2"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 2"), "{text}");
        assert!(text.contains("sidetrace_operator_reconcile_duration_seconds_count 2"));
    }

    #[test]
    fn every_series_is_named_helped_and_present_from_the_start() {
        let m = Metrics::default();
        m.set_leader(true);
        m.reconcile_errors.inc();
        let text = m.render();
        for line in [
            "# HELP sidetrace_operator_reconciles TracedService reconciles, by outcome.",
            "sidetrace_operator_reconciles_total{outcome=\"ok\"} 0",
            "sidetrace_operator_reconciles_total{outcome=\"error\"} 1",
            "sidetrace_operator_reconciles_total{outcome=\"invalid_spec\"} 0",
            "sidetrace_operator_writes_total{kind=\"configmap\"} 0",
            "sidetrace_operator_writes_total{kind=\"status\"} 0",
            "sidetrace_operator_writes_total{kind=\"event\"} 0",
            "# HELP sidetrace_operator_leader ",
            "sidetrace_operator_leader 1",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(line)),
                "{line} in {text}"
            );
        }
        assert!(m.is_leader());
    }
}

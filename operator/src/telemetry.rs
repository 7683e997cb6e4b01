//! Health and Prometheus metrics for the operator, served on `--metrics-addr`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

/// Upper bounds (seconds) of the reconcile duration histogram.
const BUCKETS: [f64; 8] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// Counters the controller updates; rendered as Prometheus text.
#[derive(Debug, Default)]
pub struct Metrics {
    pub reconcile_ok: AtomicU64,
    pub reconcile_errors: AtomicU64,
    pub invalid_specs: AtomicU64,
    pub config_map_writes: AtomicU64,
    pub status_writes: AtomicU64,
    pub events_published: AtomicU64,
    duration_buckets: [AtomicU64; BUCKETS.len()],
    duration_count: AtomicU64,
    duration_sum_micros: AtomicU64,
    /// Whether this replica leads.
    pub leader: AtomicBool,
    /// Whether the controller's caches are running (readiness).
    pub ready: AtomicBool,
}

impl Metrics {
    /// Records one reconcile's duration.
    pub fn observe_reconcile(&self, took: Duration) {
        let secs = took.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.duration_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.duration_count.fetch_add(1, Ordering::Relaxed);
        self.duration_sum_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(out, "# TYPE sidetrace_operator_reconciles_total counter");
        let _ = writeln!(
            out,
            "sidetrace_operator_reconciles_total{{outcome=\"ok\"}} {}",
            g(&self.reconcile_ok)
        );
        let _ = writeln!(
            out,
            "sidetrace_operator_reconciles_total{{outcome=\"error\"}} {}",
            g(&self.reconcile_errors)
        );
        let _ = writeln!(
            out,
            "sidetrace_operator_reconciles_total{{outcome=\"invalid_spec\"}} {}",
            g(&self.invalid_specs)
        );
        let _ = writeln!(out, "# TYPE sidetrace_operator_writes_total counter");
        let _ = writeln!(
            out,
            "sidetrace_operator_writes_total{{kind=\"configmap\"}} {}",
            g(&self.config_map_writes)
        );
        let _ = writeln!(
            out,
            "sidetrace_operator_writes_total{{kind=\"status\"}} {}",
            g(&self.status_writes)
        );
        let _ = writeln!(
            out,
            "sidetrace_operator_writes_total{{kind=\"event\"}} {}",
            g(&self.events_published)
        );
        let _ = writeln!(
            out,
            "# TYPE sidetrace_operator_reconcile_duration_seconds histogram"
        );
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "sidetrace_operator_reconcile_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                g(&self.duration_buckets[i])
            );
        }
        let count = g(&self.duration_count);
        let _ = writeln!(
            out,
            "sidetrace_operator_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "sidetrace_operator_reconcile_duration_seconds_sum {}",
            g(&self.duration_sum_micros) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "sidetrace_operator_reconcile_duration_seconds_count {count}"
        );
        let _ = writeln!(out, "# TYPE sidetrace_operator_leader gauge");
        let _ = writeln!(
            out,
            "sidetrace_operator_leader {}",
            u8::from(self.leader.load(Ordering::Relaxed))
        );
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
                if m.ready.load(Ordering::Relaxed) || !m.leader.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "caches starting")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move { m.render() }),
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
        assert!(text.contains("le=\"5\"} 2"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 2"), "{text}");
        assert!(text.contains("sidetrace_operator_reconcile_duration_seconds_count 2"));
    }
}

//! Prometheus metrics: admissions by outcome and reason, admission latency histogram, bad
//! requests and certificate reloads, registered once and rendered by prometheus-client.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::review::Outcome;

/// Upper bounds of the latency buckets, in seconds: admission is sub-millisecond work, the
/// apiserver's default webhook timeout is 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// The content type of the OpenMetrics text that prometheus-client writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdmissionLabels {
    outcome: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// All metrics of the injector.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    admissions: Family<AdmissionLabels, Counter>,
    duration: Histogram,
    bad_requests: Counter,
    tls_reloads: Counter,
    tls_reload_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let admissions = Family::<AdmissionLabels, Counter>::default();
        let duration = Histogram::new(LATENCY_BUCKETS.iter().copied());
        let bad_requests = Counter::default();
        let reloads = Family::<ResultLabel, Counter>::default();
        let result = |r| reloads.get_or_create(&ResultLabel { result: r }).clone();
        let (tls_reloads, tls_reload_errors) = (result("ok"), result("error"));
        registry.register(
            "sidetrace_injector_admissions",
            "Pod admissions answered, by outcome and skip reason.",
            admissions.clone(),
        );
        registry.register(
            "sidetrace_injector_bad_requests",
            "Requests rejected with HTTP 400 (not an AdmissionReview).",
            bad_requests.clone(),
        );
        registry.register(
            "sidetrace_injector_admission_duration_seconds",
            "Time to answer POST /mutate.",
            duration.clone(),
        );
        registry.register(
            "sidetrace_injector_tls_reloads",
            "Serving certificate reloads, by result.",
            reloads,
        );
        Self {
            registry,
            admissions,
            duration,
            bad_requests,
            tls_reloads,
            tls_reload_errors,
        }
    }
}

impl Metrics {
    /// Records one answered admission.
    pub fn admission(&self, outcome: &Outcome, elapsed: Duration) {
        let reason = match outcome {
            Outcome::Skipped(r) => r,
            _ => "",
        };
        self.admissions
            .get_or_create(&AdmissionLabels {
                outcome: outcome.label(),
                reason,
            })
            .inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Records one request answered with HTTP 400/413.
    pub fn bad_request(&self, elapsed: Duration) {
        self.bad_requests.inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Records a certificate reload attempt.
    pub fn tls_reloaded(&self, ok: bool) {
        if ok {
            self.tls_reloads.inc();
        } else {
            self.tls_reload_errors.inc();
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.admission(&Outcome::Injected, Duration::from_micros(300));
        m.admission(&Outcome::Skipped("pod-opt-out"), Duration::from_millis(30));
        m.bad_request(Duration::from_micros(50));
        let text = m.render();
        assert!(
            text.contains(
                "sidetrace_injector_admissions_total{outcome=\"injected\",reason=\"\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("{outcome=\"skipped\",reason=\"pod-opt-out\"} 1"),
            "{text}"
        );
        assert!(text.contains("sidetrace_injector_bad_requests_total 1"));
        assert!(
            text.contains("duration_seconds_bucket{le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("duration_seconds_bucket{le=\"0.0005\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("duration_seconds_bucket{le=\"0.05\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("duration_seconds_count 3\n"));
    }
}

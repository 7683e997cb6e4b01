//! Prometheus text metrics: admissions by outcome and reason, admission latency histogram,
//! bad requests and certificate reloads. Hand-rolled because the set is tiny and fixed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::review::Outcome;

/// Upper bounds of the latency buckets, in seconds: admission is sub-millisecond work, the
/// apiserver's default webhook timeout is 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// All counters.
#[derive(Debug, Default)]
pub struct Metrics {
    outcomes: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
    bad_requests: AtomicU64,
    tls_reloads: AtomicU64,
    tls_reload_errors: AtomicU64,
}

impl Metrics {
    /// Records one answered admission.
    pub fn admission(&self, outcome: &Outcome, elapsed: Duration) {
        let reason = match outcome {
            Outcome::Skipped(r) => r,
            _ => "",
        };
        {
            let mut m = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
            *m.entry((outcome.label(), reason)).or_default() += 1;
        }
        self.observe(elapsed);
    }

    /// Records one request answered with HTTP 400/413.
    pub fn bad_request(&self, elapsed: Duration) {
        self.bad_requests.fetch_add(1, Ordering::Relaxed);
        self.observe(elapsed);
    }

    /// Records a certificate reload attempt.
    pub fn tls_reloaded(&self, ok: bool) {
        let c = if ok {
            &self.tls_reloads
        } else {
            &self.tls_reload_errors
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP sidetrace_injector_admissions_total Pod admissions answered, by outcome and skip reason.\n");
        out.push_str("# TYPE sidetrace_injector_admissions_total counter\n");
        {
            let m = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
            for ((outcome, reason), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "sidetrace_injector_admissions_total{{outcome=\"{outcome}\",reason=\"{reason}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP sidetrace_injector_bad_requests_total Requests rejected with HTTP 400 (not an AdmissionReview).\n");
        out.push_str("# TYPE sidetrace_injector_bad_requests_total counter\n");
        let _ = writeln!(
            out,
            "sidetrace_injector_bad_requests_total {}",
            self.bad_requests.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP sidetrace_injector_admission_duration_seconds Time to answer POST /mutate.\n",
        );
        out.push_str("# TYPE sidetrace_injector_admission_duration_seconds histogram\n");
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "sidetrace_injector_admission_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "sidetrace_injector_admission_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(
            out,
            "sidetrace_injector_admission_duration_seconds_sum {sum}"
        );
        let _ = writeln!(
            out,
            "sidetrace_injector_admission_duration_seconds_count {count}"
        );
        out.push_str(
            "# HELP sidetrace_injector_tls_reloads_total Serving certificate reloads, by result.\n",
        );
        out.push_str("# TYPE sidetrace_injector_tls_reloads_total counter\n");
        let _ = writeln!(
            out,
            "sidetrace_injector_tls_reloads_total{{result=\"ok\"}} {}",
            self.tls_reloads.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "sidetrace_injector_tls_reloads_total{{result=\"error\"}} {}",
            self.tls_reload_errors.load(Ordering::Relaxed)
        );
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

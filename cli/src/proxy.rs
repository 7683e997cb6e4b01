//! The proxy's own view, read from its admin port (`/ready`, `/config`, `/metrics`) through the
//! API server's pod proxy. This module parses those answers; nothing here panics on what a
//! pod sends back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Span export counters and config reloads from the proxy's `/metrics` (Prometheus text).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyMetrics {
    /// `sidetrace_spans_exported_total`: spans the collector accepted.
    pub exported: u64,
    /// `sidetrace_spans_dropped_total` by its `reason` label (queue_full, send_failed, ...).
    pub dropped: BTreeMap<String, u64>,
    /// `sidetrace_span_queue_depth`: spans waiting to be exported.
    pub queue_depth: u64,
    /// `sidetrace_proxy_config_reloads_total{result="ok"}`.
    pub reloads_ok: u64,
    /// `sidetrace_proxy_config_reloads_total{result="failed"}`.
    pub reloads_failed: u64,
    /// `sidetrace_proxy_requests_total`, every label set summed.
    pub requests: u64,
}

impl ProxyMetrics {
    /// Spans dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }

    /// `send_failed 3, rejected 1` (reasons with a non-zero count), or "".
    pub fn drop_reasons(&self) -> String {
        self.dropped
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{r} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One sample line: metric name, labels, value. `None` for comments, blank lines and lines
/// that are not a sample.
pub fn parse_sample(line: &str) -> Option<(&str, BTreeMap<&str, &str>, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let close = inner.find('}')?;
        for pair in inner[..close].split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = pair.split_once('=')?;
            let v = v.trim().strip_prefix('"')?.strip_suffix('"')?;
            labels.insert(k.trim(), v);
        }
        rest = &inner[close + 1..];
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    if name.is_empty() || !value.is_finite() {
        return None;
    }
    Some((name, labels, value))
}

/// The counters `sidetrace check` and `status` read, from a `/metrics` body. Unknown metrics
/// and malformed lines are ignored (a newer proxy may add some).
pub fn parse_metrics(text: &str) -> ProxyMetrics {
    let mut m = ProxyMetrics::default();
    for (name, labels, value) in text.lines().filter_map(parse_sample) {
        // Counters are whole numbers; the float conversion saturates for anything else.
        let n = value.max(0.0) as u64;
        match name {
            "sidetrace_spans_exported_total" => m.exported = n,
            "sidetrace_spans_dropped_total" => {
                let reason = labels.get("reason").copied().unwrap_or("unknown");
                *m.dropped.entry(reason.to_owned()).or_default() += n;
            }
            "sidetrace_span_queue_depth" => m.queue_depth = n,
            "sidetrace_proxy_config_reloads_total" => match labels.get("result") {
                Some(&"ok") => m.reloads_ok = n,
                Some(&"failed") => m.reloads_failed = n,
                _ => {}
            },
            "sidetrace_proxy_requests_total" => m.requests = m.requests.saturating_add(n),
            _ => {}
        }
    }
    m
}

/// What `sidetrace` reads of the proxy's `/config` (its effective configuration).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfigView {
    /// The service name spans carry.
    #[serde(default)]
    pub service_name: Option<String>,
    /// The sampling rate in effect.
    #[serde(default)]
    pub sampling_rate: Option<f64>,
    /// Where spans go.
    #[serde(default)]
    pub collector: Option<String>,
    /// How (`otlp-http`, `zipkin`).
    #[serde(default)]
    pub collector_protocol: Option<String>,
    /// The mounted config file, when there is one.
    #[serde(default)]
    pub config_file: Option<String>,
    /// Why the config file is not in use (the proxy keeps its last good config).
    #[serde(default)]
    pub config_file_error: Option<String>,
}

/// Parses a `/config` body; the error says what was wrong.
pub fn parse_config(body: &str) -> Result<ProxyConfigView, String> {
    serde_json::from_str(body).map_err(|e| format!("/config is not the proxy's JSON: {e}"))
}

/// Everything read from one proxy. `None` fields could not be read (see `errors`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyView {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// `/ready`: `Ok` when ready, else what it answered (`starting`, `draining`) or why it
    /// could not be asked.
    pub ready: Result<(), String>,
    /// `/config`.
    pub config: Option<ProxyConfigView>,
    /// `/metrics`.
    pub metrics: Option<ProxyMetrics>,
    /// Why `config` or `metrics` is missing.
    pub errors: Vec<String>,
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    /// What the proxy's `/metrics` serves (abridged, same shapes).
    const SAMPLE: &str = "\
# HELP sidetrace_proxy_requests_total Requests.
# TYPE sidetrace_proxy_requests_total counter
sidetrace_proxy_requests_total{direction=\"inbound\",protocol=\"http1\",code=\"200\"} 12
sidetrace_proxy_requests_total{direction=\"outbound\",protocol=\"http1\",code=\"200\"} 3
sidetrace_proxy_config_reloads_total{result=\"ok\"} 2
sidetrace_proxy_config_reloads_total{result=\"failed\"} 1
sidetrace_spans_exported_total 40
sidetrace_spans_dropped_total{reason=\"queue_full\"} 0
sidetrace_spans_dropped_total{reason=\"send_failed\"} 7
sidetrace_spans_dropped_total{reason=\"rejected\"} 1
sidetrace_span_queue_depth 5
";

    #[test]
    fn reads_the_counters_the_checks_need() {
        let m = parse_metrics(SAMPLE);
        assert_eq!(m.exported, 40);
        assert_eq!(m.requests, 15);
        assert_eq!((m.reloads_ok, m.reloads_failed), (2, 1));
        assert_eq!(m.queue_depth, 5);
        assert_eq!(m.dropped_total(), 8);
        assert_eq!(m.drop_reasons(), "rejected 1, send_failed 7");
    }

    #[test]
    fn samples_parse_with_and_without_labels() {
        assert_eq!(
            parse_sample("a_total 3"),
            Some(("a_total", BTreeMap::new(), 3.0))
        );
        let (n, l, v) = parse_sample("b{x=\"1\",y=\"z\"} 2.5 1700000000").expect("sample");
        assert_eq!(
            (n, l.get("x").copied(), l.get("y").copied(), v),
            ("b", Some("1"), Some("z"), 2.5)
        );
        for junk in [
            "# HELP x",
            "",
            "b{x=1} 2",
            "b{x=\"1\" 2",
            "c NaN",
            "c",
            "{x=\"1\"} 1",
        ] {
            assert_eq!(parse_sample(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn config_reads_the_fields_and_names_bad_json() {
        let c = parse_config(
            r#"{"serviceName":"shop","samplingRate":0.25,"collector":"http://c:4318/v1/traces",
                "collectorProtocol":"otlp-http","configFile":"/etc/sidetrace/proxy.yaml",
                "configFileError":null,"inboundPort":15006}"#,
        )
        .expect("config");
        assert_eq!(c.sampling_rate, Some(0.25));
        assert_eq!(c.collector_protocol.as_deref(), Some("otlp-http"));
        assert!(parse_config("<html>").unwrap_err().contains("/config"));
    }

    /// Deterministic random mutations of a real body: the parser never panics, and a counter
    /// whose name was mutated away reads as zero rather than as something else's value.
    #[test]
    fn mutated_metrics_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(23);
        let alphabet = b"{}\"=, \n#_abcdefgxyz0123456789.eE+-";
        for _ in 0..5_000 {
            let mut bytes = SAMPLE.as_bytes().to_vec();
            for _ in 0..rng.random_range(1..12) {
                let at = rng.random_range(0..bytes.len());
                match rng.random_range(0..3) {
                    0 => bytes[at] = alphabet[rng.random_range(0..alphabet.len())],
                    1 => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            let m = parse_metrics(&text);
            if !text.contains("sidetrace_spans_exported_total") {
                assert_eq!(m.exported, 0, "{text}");
            }
            let _ = m.drop_reasons();
        }
    }
}

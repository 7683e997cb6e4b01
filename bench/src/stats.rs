//! Pure helpers: the open-loop send schedule, exact percentiles over recorded latencies, and
//! the spread of a figure across rounds. No I/O here, so all of it is unit-tested.

use std::time::Duration;

/// Intended send offsets (from the start of a run) for `rate` requests per second over
/// `duration`: request `i` is due at `i / rate`. An open-loop generator sends each request at
/// its due time whatever happened to the previous ones, and measures latency from the due time,
/// so a stall shows up in every request it delayed (no coordinated omission).
pub fn schedule(rate: f64, duration: Duration) -> Vec<Duration> {
    if rate <= 0.0 || !rate.is_finite() {
        return Vec::new();
    }
    let count = (duration.as_secs_f64() * rate).round() as u64;
    let period_ns = 1e9 / rate;
    (0..count)
        .map(|i| Duration::from_nanos((i as f64 * period_ns).round() as u64))
        .collect()
}

/// The `q`-quantile (0..=1) of `sorted` by the nearest-rank method; 0 when empty.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let q = q.clamp(0.0, 1.0);
    // Nearest rank: the smallest value with at least q of the samples at or below it.
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Latency percentiles of one run, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Number of samples.
    pub count: usize,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

impl Percentiles {
    /// Percentiles of `samples` (sorted in place).
    pub fn of(samples: &mut [u64]) -> Self {
        samples.sort_unstable();
        Self {
            count: samples.len(),
            p50: quantile(samples, 0.50),
            p90: quantile(samples, 0.90),
            p99: quantile(samples, 0.99),
            p999: quantile(samples, 0.999),
            max: samples.last().copied().unwrap_or(0),
        }
    }
}

/// Median, minimum and maximum of one figure across rounds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spread {
    /// Median across rounds (mean of the middle two for an even count).
    pub median: f64,
    /// Smallest round.
    pub min: f64,
    /// Largest round.
    pub max: f64,
}

impl Spread {
    /// Spread of `values`; all zero when empty.
    pub fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }
}

/// Microseconds from nanoseconds, for tables.
pub fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// `a / b`, or NaN when `b` is not positive (printed as "n/a").
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

/// Formats a float for a table cell: "n/a" for NaN, otherwise `digits` decimals.
pub fn cell(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "n/a".to_owned()
    }
}

/// "median (min–max)" of a spread, `digits` decimals.
pub fn spread_cell(s: Spread, digits: usize) -> String {
    format!(
        "{} ({}–{})",
        cell(s.median, digits),
        cell(s.min, digits),
        cell(s.max, digits)
    )
}

/// Sum of the per-thread CPU times in `/proc/<pid>/task/*/schedstat` text lines (first field,
/// nanoseconds on CPU).
pub fn schedstat_ns(lines: &[String]) -> u64 {
    lines
        .iter()
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// A `/proc/<pid>/status` field in kB (e.g. `RssAnon`), as bytes.
pub fn status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

/// Value of a Prometheus counter/gauge line `name` (no labels, or the sum over all label sets).
pub fn prom_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let base = key.split('{').next()?;
            (base == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// Length of an HTTP/1.1 response whose head is complete in `buf` (head + Content-Length body),
/// or None while the head is incomplete. Responses without Content-Length count as head only.
pub fn http1_response_len(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let body = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    Some(end + body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_evenly_spaced_and_open_loop() {
        let s = schedule(5000.0, Duration::from_millis(2));
        assert_eq!(
            s,
            (0..10)
                .map(|i| Duration::from_micros(200 * i))
                .collect::<Vec<_>>()
        );
        let s = schedule(3.0, Duration::from_secs(1));
        assert_eq!(s[1], Duration::from_nanos(333_333_333));
        assert_eq!(s[2], Duration::from_nanos(666_666_667));
        assert!(schedule(0.0, Duration::from_secs(1)).is_empty());
        assert!(schedule(f64::NAN, Duration::from_secs(1)).is_empty());
    }

    #[test]
    fn quantiles_use_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 50);
        assert_eq!(quantile(&v, 0.9), 90);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&v, 0.999), 100);
        assert_eq!(quantile(&v, 0.0), 1);
        assert_eq!(quantile(&v, 1.0), 100);
        assert_eq!(quantile(&[], 0.5), 0);
        assert_eq!(quantile(&[7], 0.999), 7);
    }

    #[test]
    fn percentiles_sort_their_input() {
        let mut v = vec![5, 1, 4, 2, 3];
        let p = Percentiles::of(&mut v);
        assert_eq!(p.count, 5);
        assert_eq!(p.p50, 3);
        assert_eq!(p.max, 5);
        assert_eq!(v, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn spread_takes_the_median_and_ignores_nan() {
        let s = Spread::of(&[3.0, 1.0, f64::NAN, 2.0]);
        assert_eq!(
            s,
            Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0
            }
        );
        assert_eq!(Spread::of(&[1.0, 2.0, 3.0, 10.0]).median, 2.5);
        assert_eq!(Spread::of(&[]), Spread::default());
    }

    #[test]
    fn cells_and_ratios() {
        assert_eq!(cell(ratio(1.0, 0.0), 2), "n/a");
        assert_eq!(cell(ratio(1.0, 4.0), 2), "0.25");
        assert_eq!(
            spread_cell(Spread::of(&[1.0, 2.0, 3.0]), 1),
            "2.0 (1.0–3.0)"
        );
        assert_eq!(us(1500), 1.5);
    }

    #[test]
    fn proc_parsers() {
        let lines = vec!["1000 5 6".to_owned(), "250 1 1".to_owned(), "x".to_owned()];
        assert_eq!(schedstat_ns(&lines), 1250);
        let status = "Name:\tx\nRssAnon:\t    2048 kB\nRssFile:\t 10 kB\n";
        assert_eq!(status_kb(status, "RssAnon"), Some(2048 * 1024));
        assert_eq!(status_kb(status, "VmHWM"), None);
    }

    #[test]
    fn prometheus_sum_over_labels() {
        let text = "# HELP a b\nsidetrace_spans_dropped_total{reason=\"a\"} 3\n\
                    sidetrace_spans_dropped_total{reason=\"b\"} 4\nsidetrace_spans_exported_total 10\n";
        assert_eq!(prom_sum(text, "sidetrace_spans_dropped_total"), 7.0);
        assert_eq!(prom_sum(text, "sidetrace_spans_exported_total"), 10.0);
        assert_eq!(prom_sum(text, "missing"), 0.0);
    }

    #[test]
    fn http1_response_length() {
        assert_eq!(http1_response_len(b"HTTP/1.1 200 OK\r\ncontent-le"), None);
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(http1_response_len(r), Some(r.len()));
        assert_eq!(http1_response_len(b"HTTP/1.1 204 No\r\n\r\n"), Some(19));
    }
}

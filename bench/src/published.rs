//! Published figures for linkerd2-proxy, the reference footprint sidetrace aims at, and the
//! side-by-side table that puts this run's ratios next to them.
//!
//! linkerd2-proxy cannot run here (it needs the Linkerd control plane for identity and
//! discovery), so the comparison is by ratio to Envoy: Linkerd's own benchmark measured
//! linkerd2-proxy against Istio's Envoy; this suite measures sidetrace against Envoy with its
//! Zipkin tracer. Only those ratios are comparable, and only loosely (see [`CAVEATS`]).

use std::fmt::Write as _;

/// Where the figures come from.
pub const SOURCE: &str = "William Morgan, \"Benchmarking Linkerd and Istio: 2021 Redux\", linkerd.io, \
    2021-11-29 (https://linkerd.io/2021/11/29/linkerd-vs-istio-benchmarks-2021/; source text in \
    github.com/linkerd/website, linkerd.io/content/blog/2021/1129-linkerd-vs-istio-benchmarks/index.md)";

/// How their setup differs from ours; printed under the table.
pub const CAVEATS: &str = "Their setup: Linkerd 2.11.1 (default install) vs Istio 1.12.0 (minimal), \
    the Kinvolk service-mesh-benchmark harness (a whole microservice app, HTTP and gRPC, latency \
    from the client), bare metal (Xeon 4214, 24 cores), mutual TLS on, no distributed tracing, \
    10-minute runs at 20, 200 and 2,000 RPS, mean of 5 runs. Ours: one proxy hop on a 2-vCPU VM, \
    tracing 100 %, no TLS, seconds-long runs. Latency there is for the whole request path through \
    several proxies; the post itself notes one linkerd2-proxy adds under 1 ms at the median.";

/// One published figure pair: linkerd2-proxy and Istio's Envoy, same unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    /// What was measured, as the post reports it.
    pub what: &'static str,
    /// Unit of both values.
    pub unit: &'static str,
    /// linkerd2-proxy.
    pub linkerd: f64,
    /// Envoy in Istio.
    pub envoy: f64,
}

impl Pair {
    /// linkerd2-proxy's figure as a fraction of Envoy's.
    pub fn ratio(&self) -> f64 {
        self.linkerd / self.envoy
    }
}

/// The 2,000 RPS figures ("these numbers are fairly consistent across all throughput levels").
pub const MEMORY: Pair = Pair {
    what: "max data-plane memory per proxy, 2,000 RPS",
    unit: "MB",
    linkerd: 26.3,
    envoy: 156.2,
};
/// Max proxy CPU time at 2,000 RPS.
pub const CPU: Pair = Pair {
    what: "max proxy CPU time, 2,000 RPS",
    unit: "ms",
    linkerd: 36.0,
    envoy: 67.0,
};
/// Added median latency over the no-mesh baseline (6 ms) at 2,000 RPS.
pub const MEDIAN_ADDED: Pair = Pair {
    what: "added median latency, 2,000 RPS",
    unit: "ms",
    linkerd: 6.0,
    envoy: 17.0,
};
/// Added maximum latency at 2,000 RPS ("~350 ms" for Istio).
pub const MAX_ADDED: Pair = Pair {
    what: "added max latency, 2,000 RPS",
    unit: "ms",
    linkerd: 42.0,
    envoy: 350.0,
};

/// Which of this run's ratios sits next to a published pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Measure {
    /// Proxy memory under load.
    Memory,
    /// Proxy CPU per request.
    Cpu,
    /// Added p50 latency per hop.
    MedianAdded,
    /// Added p99 latency per hop (the closest we report to their max).
    TailAdded,
}

/// One ratio sidetrace / Envoy+Zipkin from this run, with where it was measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Ours {
    /// Which published pair it compares with.
    pub measure: Measure,
    /// Where in this run, e.g. "small body, 1,000 rps".
    pub label: String,
    /// sidetrace / Envoy+Zipkin.
    pub ratio: f64,
}

/// The section text: the published figures, their ratios, ours next to them.
pub fn render(ours: &[Ours]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Source: {SOURCE}.\n\n\
         | measure | linkerd2-proxy | Envoy (Istio) | linkerd2-proxy / Envoy (published) | sidetrace / Envoy+Zipkin (this run) |\n\
         |---|---|---|---|---|"
    );
    for (pair, measure) in [
        (MEMORY, Measure::Memory),
        (CPU, Measure::Cpu),
        (MEDIAN_ADDED, Measure::MedianAdded),
        (MAX_ADDED, Measure::TailAdded),
    ] {
        // A ratio that means nothing (no reference, saturated reference) keeps its label.
        let mine: Vec<String> = ours
            .iter()
            .filter(|o| o.measure == measure)
            .map(|o| {
                if o.ratio.is_finite() {
                    format!("{:.2} ({})", o.ratio, o.label)
                } else {
                    format!("n/a ({})", o.label)
                }
            })
            .collect();
        let mine = if mine.is_empty() {
            "not measured in this run".to_owned()
        } else {
            mine.join("; ")
        };
        let _ = writeln!(
            out,
            "| {} | {} {} | {} {} | {:.2} | {} |",
            pair.what,
            pair.linkerd,
            pair.unit,
            pair.envoy,
            pair.unit,
            pair.ratio(),
            mine
        );
    }
    let _ = writeln!(
        out,
        "\nOur tail column is added p99 per hop (their figure is the max over a 10-minute run; \
         our max is dominated by VM stalls). Memory: ours is RssAnon at 1,000 rps; theirs is the \
         container's max memory. CPU: ours is CPU per 1,000 requests; theirs is the max CPU time \
         the harness recorded for one proxy.\n\n{CAVEATS}\n"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_ratios_are_what_the_post_states() {
        // The post: "1/6th the memory and 55% of the CPU ... 1/3rd the additional median
        // latency and 1/8th the additional maximum latency of Istio".
        assert!(
            (MEMORY.ratio() - 1.0 / 6.0).abs() < 0.01,
            "{}",
            MEMORY.ratio()
        );
        assert!((CPU.ratio() - 0.55).abs() < 0.02, "{}", CPU.ratio());
        assert!(
            (MEDIAN_ADDED.ratio() - 1.0 / 3.0).abs() < 0.03,
            "{}",
            MEDIAN_ADDED.ratio()
        );
        assert!(
            (MAX_ADDED.ratio() - 1.0 / 8.0).abs() < 0.01,
            "{}",
            MAX_ADDED.ratio()
        );
    }

    #[test]
    fn render_puts_our_ratios_on_the_right_rows() {
        let text = render(&[
            Ours {
                measure: Measure::Cpu,
                label: "small, 1000 rps".into(),
                ratio: 0.31,
            },
            Ours {
                measure: Measure::Cpu,
                label: "small, 500 rps".into(),
                ratio: 0.3,
            },
            Ours {
                measure: Measure::Memory,
                label: "1,000 rps".into(),
                ratio: f64::NAN,
            },
        ]);
        let cpu_row = text
            .lines()
            .find(|l| l.starts_with("| max proxy CPU time"))
            .expect("cpu row");
        assert!(cpu_row.contains("| 0.54 |"), "{cpu_row}");
        assert!(
            cpu_row.ends_with("0.31 (small, 1000 rps); 0.30 (small, 500 rps) |"),
            "{cpu_row}"
        );
        let mem_row = text
            .lines()
            .find(|l| l.starts_with("| max data-plane memory"))
            .expect("memory row");
        assert!(mem_row.ends_with("| n/a (1,000 rps) |"), "{mem_row}");
        let median_row = text
            .lines()
            .find(|l| l.starts_with("| added median latency"))
            .expect("median row");
        assert!(
            median_row.ends_with("not measured in this run |"),
            "{median_row}"
        );
        assert!(text.contains("linkerd.io/2021/11/29"));
    }
}

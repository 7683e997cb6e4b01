//! `sidetrace status`: TracedServices and their pods in one table. Pure: rows from facts, the
//! table from rows.

use serde::Serialize;

use crate::render::table;

/// One pod (or a TracedService without pods) in the status table.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRow {
    /// Namespace.
    pub namespace: String,
    /// The TracedService that selects the pod (the one that wins it); None: none does.
    pub traced_service: Option<String>,
    /// Pod name; None for a TracedService that selects no pod.
    pub pod: Option<String>,
    /// Carries the sidecar.
    pub injected: bool,
    /// Ready containers and all containers (`2/2`, as kubectl prints it).
    pub ready: String,
    /// The sampling rate the proxy uses (its `/config`).
    pub sampling: Option<f64>,
    /// Spans exported per second over the sampling window.
    pub spans_per_second: Option<f64>,
    /// Spans exported since the proxy started.
    pub exported: Option<u64>,
    /// Spans dropped since the proxy started.
    pub dropped: Option<u64>,
    /// Non-zero drop counts by reason (`send_failed 3`).
    pub drop_reasons: String,
    /// Where the proxy sends spans.
    pub collector: Option<String>,
}

/// Spans per second between two `exported` counter readings `window_secs` apart; None without
/// both readings, or when the counter went back (the proxy restarted in between).
pub fn rate(before: Option<u64>, after: Option<u64>, window_secs: f64) -> Option<f64> {
    match (before, after) {
        (Some(b), Some(a)) if a >= b && window_secs > 0.0 => Some((a - b) as f64 / window_secs),
        _ => None,
    }
}

fn or_dash<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

/// The table: `wide` adds the totals, the drop reasons and the collector.
pub fn render_table(rows: &[PodRow], wide: bool) -> String {
    let mut header = vec![
        "NAMESPACE",
        "TRACEDSERVICE",
        "POD",
        "INJECTED",
        "READY",
        "SAMPLING",
        "SPANS/S",
        "DROPS",
    ];
    if wide {
        header.extend(["EXPORTED", "DROP-REASONS", "COLLECTOR"]);
    }
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut cells = vec![
                r.namespace.clone(),
                r.traced_service.clone().unwrap_or_else(|| "-".into()),
                r.pod.clone().unwrap_or_else(|| "<none>".into()),
                if r.pod.is_none() {
                    "-".into()
                } else if r.injected {
                    "yes".into()
                } else {
                    "no".into()
                },
                r.ready.clone(),
                or_dash(&r.sampling),
                r.spans_per_second
                    .map_or_else(|| "-".to_owned(), |s| format!("{s:.1}")),
                or_dash(&r.dropped),
            ];
            if wide {
                cells.extend([
                    or_dash(&r.exported),
                    if r.drop_reasons.is_empty() {
                        "-".into()
                    } else {
                        r.drop_reasons.clone()
                    },
                    or_dash(&r.collector),
                ]);
            }
            cells
        })
        .collect();
    table(&header, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_needs_two_readings_and_a_counter_that_did_not_go_back() {
        assert_eq!(rate(Some(10), Some(30), 2.0), Some(10.0));
        assert_eq!(rate(Some(30), Some(10), 2.0), None);
        assert_eq!(rate(None, Some(10), 2.0), None);
        assert_eq!(rate(Some(1), Some(2), 0.0), None);
    }

    #[test]
    fn a_traced_service_without_pods_gets_a_row_of_its_own() {
        let rows = [PodRow {
            namespace: "shop".into(),
            traced_service: Some("idle".into()),
            ready: "-".into(),
            ..PodRow::default()
        }];
        let t = render_table(&rows, false);
        assert!(
            t.lines()
                .nth(1)
                .is_some_and(|l| l.contains("idle") && l.contains("<none>")),
            "{t}"
        );
    }
}

//! Head sampling settings and their rules, one place for every layer: the CRD's schema bounds
//! say the same, the operator validates a TracedService with [`ProxyConfig::validate`], the
//! webhook parses the `sidetrace.dev/sampling` annotation with [`check_rate`], the proxy
//! validates its config file and flags with them, and [`ineffective_settings`] says which
//! settings cannot take effect (the operator's status and the proxy's `/config` report them).
//!
//! [`ProxyConfig::validate`]: crate::ProxyConfig::validate

use serde::{Deserialize, Serialize};

use crate::proxy_config::OperationRule;

/// A sampling rate for the traces of one operation (span name), overriding the service-wide
/// rate for traces that start at this proxy with that operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperationSampling {
    /// The span name: an operation rule's `name` (`checkStock`) or a default name
    /// (`GET /orders/{id}`, `POST service2:8000/trace/{id}` outbound).
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub name: String,
    /// Probability in 0..1 that a new trace of this operation is recorded.
    #[cfg_attr(feature = "schema", schemars(range(min = 0.0, max = 1.0)))]
    pub rate: f64,
}

/// The one rule for a sampling rate: a number in 0..=1.
pub fn check_rate(rate: f64) -> Result<(), String> {
    if rate.is_nan() || !(0.0..=1.0).contains(&rate) {
        return Err(format!("{rate} is outside 0..1"));
    }
    Ok(())
}

/// The one rule for `maxTracesPerSecond`: a finite number above 0 (a fraction is a trace every
/// few seconds; 0 would be "never", which is `rate: 0`).
pub fn check_max_traces_per_second(limit: f64) -> Result<(), String> {
    if !limit.is_finite() || limit <= 0.0 {
        return Err(format!("{limit} is not a number above 0"));
    }
    Ok(())
}

/// Checks per-operation rates: each name non-empty and listed once, each rate by
/// [`check_rate`]. Errors name the entry (`[2].rate`), for the caller to prefix.
pub fn check_operation_rates(ops: &[OperationSampling]) -> Result<(), (String, String)> {
    for (i, op) in ops.iter().enumerate() {
        if op.name.trim().is_empty() {
            return Err((format!("[{i}].name"), "must not be empty".into()));
        }
        if ops[..i].iter().any(|o| o.name == op.name) {
            return Err((
                format!("[{i}].name"),
                format!("{:?} is listed twice", op.name),
            ));
        }
        check_rate(op.rate).map_err(|r| (format!("[{i}].rate"), r))?;
    }
    Ok(())
}

/// HTTP methods a default span name starts with (and `HTTP` for the others).
const DEFAULT_NAME_METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "HTTP",
];

/// Whether `name` could be a default span name: `<METHOD> <route>` (the tracer's naming).
fn looks_like_default_name(name: &str) -> bool {
    name.split_once(' ')
        .is_some_and(|(m, rest)| DEFAULT_NAME_METHODS.contains(&m) && !rest.is_empty())
}

/// What the sampling settings of a config say that cannot take effect, one sentence each,
/// naming the field (empty when everything can):
/// - a per-operation rate whose name no operation rule gives and that is not a default span
///   name (`<METHOD> <route>`): no span is ever called that;
/// - `maxTracesPerSecond` while every rate is 0: no trace is started to limit.
pub fn ineffective_settings(
    rate: Option<f64>,
    operation_rates: &[OperationSampling],
    max_traces_per_second: Option<f64>,
    operations: &[OperationRule],
) -> Vec<String> {
    let mut notes = Vec::new();
    for (i, op) in operation_rates.iter().enumerate() {
        if !operations.iter().any(|r| r.name == op.name) && !looks_like_default_name(&op.name) {
            notes.push(format!(
                "sampling.operations[{i}]: no operation rule is named {:?} and it is not a default span name (\"<METHOD> <route>\"), so no request gets this rate",
                op.name
            ));
        }
    }
    if let Some(limit) = max_traces_per_second
        && rate == Some(0.0)
        && operation_rates.iter().all(|o| o.rate == 0.0)
    {
        notes.push(format!(
            "sampling.maxTracesPerSecond: {limit} limits nothing, every sampling rate is 0"
        ));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: &str, rate: f64) -> OperationSampling {
        OperationSampling {
            name: name.into(),
            rate,
        }
    }

    #[test]
    fn rates_are_in_zero_to_one() {
        for ok in [0.0, 0.5, 1.0] {
            assert!(check_rate(ok).is_ok(), "{ok}");
        }
        for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            assert!(check_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(check_rate(2.0).unwrap_err(), "2 is outside 0..1");
    }

    #[test]
    fn the_trace_limit_is_above_zero_and_finite() {
        for ok in [0.001, 1.0, 500.0] {
            assert!(check_max_traces_per_second(ok).is_ok(), "{ok}");
        }
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(check_max_traces_per_second(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn operation_rates_name_the_bad_entry() {
        assert!(check_operation_rates(&[op("a", 0.1), op("GET /", 1.0)]).is_ok());
        assert_eq!(
            check_operation_rates(&[op("a", 0.1), op("a", 0.2)]).unwrap_err(),
            ("[1].name".to_owned(), "\"a\" is listed twice".to_owned())
        );
        assert_eq!(
            check_operation_rates(&[op(" ", 0.1)]).unwrap_err().0,
            "[0].name"
        );
        assert_eq!(
            check_operation_rates(&[op("a", 3.0)]).unwrap_err(),
            ("[0].rate".to_owned(), "3 is outside 0..1".to_owned())
        );
    }

    #[test]
    fn settings_that_cannot_take_effect_are_named() {
        let rules = [OperationRule {
            name: "checkStock".into(),
            ..OperationRule::default()
        }];
        assert!(
            ineffective_settings(
                Some(0.1),
                &[op("checkStock", 1.0), op("GET /orders/{id}", 0.5)],
                Some(10.0),
                &rules
            )
            .is_empty()
        );
        let notes = ineffective_settings(Some(0.0), &[op("chekStock", 0.0)], Some(5.0), &rules);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].starts_with("sampling.operations[0]: "),
            "{notes:?}"
        );
        assert!(notes[0].contains("\"chekStock\""), "{notes:?}");
        assert!(
            notes[1].starts_with("sampling.maxTracesPerSecond: "),
            "{notes:?}"
        );
    }
}

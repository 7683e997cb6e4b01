//! Per-pod override annotations (`sidetrace.dev/...`), parsed once into typed values.
//!
//! A tracing add-on must never block a workload, so an invalid value does not fail the
//! admission: that one setting falls back to its default and a warning naming the annotation
//! and the problem is returned, which the webhook puts into the admission response (kubectl
//! prints it) and the log.

use std::collections::BTreeMap;
use std::net::IpAddr;

use sidetrace_contract::CollectorProtocol;
use sidetrace_contract::names::annotations as ann;

/// Proxy log levels the sidecar understands.
pub const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];

/// Longest annotation value quoted back in a warning; warnings should stay short (kubectl
/// truncates long ones).
const MAX_QUOTED: usize = 40;

/// The overrides a pod asks for; `None`/empty means "use the default".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    /// `sidetrace.dev/service-name`.
    pub service_name: Option<String>,
    /// `sidetrace.dev/sampling`, in 0..=1.
    pub sampling: Option<f64>,
    /// `sidetrace.dev/exclude-inbound-ports`, numbers or the pod's named container ports.
    pub exclude_inbound_ports: Vec<u16>,
    /// `sidetrace.dev/exclude-outbound-ports`.
    pub exclude_outbound_ports: Vec<u16>,
    /// `sidetrace.dev/exclude-outbound-cidrs`, normalised to `addr/prefix`.
    pub exclude_outbound_cidrs: Vec<String>,
    /// `sidetrace.dev/include-outbound-cidrs`: `None` captures every destination (`*`),
    /// otherwise only these, normalised to `addr/prefix`.
    pub include_outbound_cidrs: Option<Vec<String>>,
    /// `sidetrace.dev/proxy-cpu`, a Kubernetes quantity.
    pub proxy_cpu: Option<String>,
    /// `sidetrace.dev/proxy-memory`, a Kubernetes quantity.
    pub proxy_memory: Option<String>,
    /// `sidetrace.dev/log-level`, lower-cased.
    pub log_level: Option<String>,
    /// `sidetrace.dev/collector-protocol`, by the one rule ([`CollectorProtocol::parse`]).
    pub collector_protocol: Option<CollectorProtocol>,
    /// `sidetrace.dev/infer-parents`, by the one rule ([`sidetrace_contract::parse_switch`]).
    pub infer_parents: Option<bool>,
}

/// Parses every override annotation. `named_ports` maps the pod's container port names to
/// numbers so that `exclude-inbound-ports: metrics` works. Returns the overrides and one
/// warning per invalid annotation.
pub fn parse(
    annotations: &BTreeMap<String, String>,
    named_ports: &BTreeMap<String, u16>,
) -> (Overrides, Vec<String>) {
    let mut warnings = Vec::new();
    let o = Overrides {
        service_name: checked(
            field(annotations, ann::SERVICE_NAME),
            &mut warnings,
            parse_service_name,
        ),
        sampling: checked(
            field(annotations, ann::SAMPLING),
            &mut warnings,
            parse_sampling,
        ),
        exclude_inbound_ports: checked(
            field(annotations, ann::EXCLUDE_INBOUND_PORTS),
            &mut warnings,
            |v| parse_ports(v, Some(named_ports)),
        )
        .unwrap_or_default(),
        exclude_outbound_ports: checked(
            field(annotations, ann::EXCLUDE_OUTBOUND_PORTS),
            &mut warnings,
            |v| parse_ports(v, None),
        )
        .unwrap_or_default(),
        exclude_outbound_cidrs: checked(
            field(annotations, ann::EXCLUDE_OUTBOUND_CIDRS),
            &mut warnings,
            parse_cidrs,
        )
        .unwrap_or_default(),
        include_outbound_cidrs: checked(
            field(annotations, ann::INCLUDE_OUTBOUND_CIDRS),
            &mut warnings,
            parse_include_cidrs,
        )
        .flatten(),
        proxy_cpu: checked(
            field(annotations, ann::PROXY_CPU),
            &mut warnings,
            parse_quantity,
        ),
        proxy_memory: checked(
            field(annotations, ann::PROXY_MEMORY),
            &mut warnings,
            parse_quantity,
        ),
        log_level: checked(
            field(annotations, ann::LOG_LEVEL),
            &mut warnings,
            parse_log_level,
        ),
        collector_protocol: checked(
            field(annotations, ann::COLLECTOR_PROTOCOL),
            &mut warnings,
            parse_collector_protocol,
        ),
        infer_parents: checked(
            field(annotations, ann::INFER_PARENTS),
            &mut warnings,
            parse_infer_parents,
        ),
    };
    (o, warnings)
}

fn field<'a>(
    annotations: &'a BTreeMap<String, String>,
    key: &'a str,
) -> Option<(&'a str, &'a str)> {
    annotations.get(key).map(|raw| (key, raw.as_str()))
}

/// Parses one annotation when present; on failure records a warning and yields `None` so the
/// caller uses the default.
fn checked<T>(
    entry: Option<(&str, &str)>,
    warnings: &mut Vec<String>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Option<T> {
    let (key, raw) = entry?;
    match parse(raw) {
        Ok(v) => Some(v),
        Err(problem) => {
            warnings.push(format!(
                "{key}: {} {problem}; using the default",
                quote(raw)
            ));
            None
        }
    }
}

/// Quotes a value for a warning, shortened so that warnings stay readable.
fn quote(raw: &str) -> String {
    if raw.chars().count() > MAX_QUOTED {
        let short: String = raw.chars().take(MAX_QUOTED).collect();
        format!("{short:?}…")
    } else {
        format!("{raw:?}")
    }
}

fn parse_service_name(raw: &str) -> Result<String, String> {
    let v = raw.trim();
    if v.is_empty() {
        return Err("is empty".into());
    }
    if v.len() > 253 {
        return Err("is longer than 253 characters".into());
    }
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or control characters".into());
    }
    Ok(v.to_owned())
}

/// A sampling rate, by the contract's one rule for rates.
pub fn parse_sampling(raw: &str) -> Result<f64, String> {
    let rate: f64 = raw
        .trim()
        .parse()
        .map_err(|_| "is not a number (expected a rate in 0..1)".to_owned())?;
    // The caller puts the raw value first: keep the rule, drop the repeated number.
    sidetrace_contract::sampling::check_rate(rate).map_err(|_| "is outside 0..1".to_owned())?;
    Ok(rate)
}

/// Comma-separated ports; names resolve through `named` when given. Duplicates are dropped,
/// order is kept. An empty value is an empty list.
fn parse_ports(raw: &str, named: Option<&BTreeMap<String, u16>>) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let port = match item.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => n as u16,
            Ok(_) => return Err(format!("has port {item} outside 1..65535")),
            Err(_) => match named.and_then(|m| m.get(item)) {
                Some(p) => *p,
                None if named.is_some() => {
                    return Err(format!(
                        "has {} which is neither a port number nor a named container port",
                        quote(item)
                    ));
                }
                None => return Err(format!("has {} which is not a port number", quote(item))),
            },
        };
        if !out.contains(&port) {
            out.push(port);
        }
    }
    Ok(out)
}

/// Comma-separated CIDRs (a bare address means a single host).
/// `*` (capture everything: `None`) or a non-empty CIDR list, as sidetrace-init takes it.
fn parse_include_cidrs(raw: &str) -> Result<Option<Vec<String>>, String> {
    if raw.trim() == "*" {
        return Ok(None);
    }
    let cidrs = parse_cidrs(raw)?;
    if cidrs.is_empty() {
        return Err("is empty (use * to capture every destination)".into());
    }
    Ok(Some(cidrs))
}

fn parse_cidrs(raw: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (addr, prefix) = match item.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (item, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("has {} which is not an IP address or CIDR", quote(item)))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("has {} with an invalid prefix length", quote(item))),
            },
        };
        let cidr = format!("{ip}/{prefix}");
        if !out.contains(&cidr) {
            out.push(cidr);
        }
    }
    Ok(out)
}

/// A Kubernetes resource quantity: a positive decimal with an optional SI, binary or exponent
/// suffix (`100m`, `0.5`, `64Mi`, `1e3`).
pub fn parse_quantity(raw: &str) -> Result<String, String> {
    const PROBLEM: &str = "is not a Kubernetes quantity (e.g. 100m, 0.5, 64Mi)";
    let v = raw.trim();
    let body = v.strip_prefix('+').unwrap_or(v);
    let number_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(number_end);
    let digits = number.chars().filter(char::is_ascii_digit).count();
    if digits == 0 || number.matches('.').count() > 1 {
        return Err(PROBLEM.into());
    }
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
        .is_some_and(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_digit()));
    if !suffix_ok {
        return Err(PROBLEM.into());
    }
    if number.chars().all(|c| c == '0' || c == '.') {
        return Err("is zero".into());
    }
    Ok(v.to_owned())
}

/// The contract's rule, worded for a warning that already quotes the value.
fn parse_collector_protocol(raw: &str) -> Result<CollectorProtocol, String> {
    CollectorProtocol::parse(raw).map_err(|_| {
        let names: Vec<&str> = CollectorProtocol::ALL.iter().map(|p| p.as_str()).collect();
        format!("is not one of {}", names.join(", "))
    })
}

/// The contract's rule, worded for a warning that already quotes the value.
fn parse_infer_parents(raw: &str) -> Result<bool, String> {
    sidetrace_contract::parse_switch(raw).map_err(|_| "is neither true nor false".to_owned())
}

fn parse_log_level(raw: &str) -> Result<String, String> {
    let v = raw.trim().to_ascii_lowercase();
    if LOG_LEVELS.contains(&v.as_str()) {
        Ok(v)
    } else {
        Err(format!("is not one of {}", LOG_LEVELS.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn named() -> BTreeMap<String, u16> {
        [("metrics".to_owned(), 9090), ("http".to_owned(), 8080)].into()
    }

    #[test]
    fn no_annotations_means_defaults_and_no_warnings() {
        let (o, w) = parse(&BTreeMap::new(), &named());
        assert_eq!(o, Overrides::default());
        assert!(w.is_empty());
    }

    #[test]
    fn valid_values_are_parsed() {
        let (o, w) = parse(
            &annotations(&[
                (ann::SERVICE_NAME, " checkout "),
                (ann::SAMPLING, "0.25"),
                (ann::EXCLUDE_INBOUND_PORTS, "metrics, 9000,9090"),
                (ann::EXCLUDE_OUTBOUND_PORTS, "5432,6379"),
                (
                    ann::EXCLUDE_OUTBOUND_CIDRS,
                    "10.0.0.0/8, 169.254.169.254, fd00::/8",
                ),
                (
                    ann::INCLUDE_OUTBOUND_CIDRS,
                    "10.96.0.0/12, fd00:10:96::/112",
                ),
                (ann::PROXY_CPU, "100m"),
                (ann::PROXY_MEMORY, "128Mi"),
                (ann::LOG_LEVEL, "DEBUG"),
                (ann::INFER_PARENTS, "true"),
            ]),
            &named(),
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(o.service_name.as_deref(), Some("checkout"));
        assert_eq!(o.sampling, Some(0.25));
        assert_eq!(o.exclude_inbound_ports, vec![9090, 9000]);
        assert_eq!(o.exclude_outbound_ports, vec![5432, 6379]);
        assert_eq!(
            o.exclude_outbound_cidrs,
            vec!["10.0.0.0/8", "169.254.169.254/32", "fd00::/8"]
        );
        assert_eq!(
            o.include_outbound_cidrs,
            Some(vec!["10.96.0.0/12".into(), "fd00:10:96::/112".into()])
        );
        assert_eq!(o.proxy_cpu.as_deref(), Some("100m"));
        assert_eq!(o.proxy_memory.as_deref(), Some("128Mi"));
        assert_eq!(o.log_level.as_deref(), Some("debug"));
        assert_eq!(o.infer_parents, Some(true));
    }

    #[test]
    fn each_invalid_value_falls_back_with_a_warning_naming_the_annotation() {
        let cases = [
            (ann::SERVICE_NAME, "two words", "whitespace"),
            (ann::SERVICE_NAME, "  ", "empty"),
            (ann::SAMPLING, "1.5", "outside 0..1"),
            (ann::SAMPLING, "half", "not a number"),
            (ann::SAMPLING, "NaN", "outside 0..1"),
            (
                ann::EXCLUDE_INBOUND_PORTS,
                "8080,admin",
                "named container port",
            ),
            (ann::EXCLUDE_INBOUND_PORTS, "70000", "outside 1..65535"),
            (ann::EXCLUDE_OUTBOUND_PORTS, "metrics", "not a port number"),
            (ann::EXCLUDE_OUTBOUND_CIDRS, "10.0.0.0/33", "prefix length"),
            (ann::EXCLUDE_OUTBOUND_CIDRS, "example.com", "not an IP"),
            (ann::INCLUDE_OUTBOUND_CIDRS, "10.0.0.0/33", "prefix length"),
            (ann::INCLUDE_OUTBOUND_CIDRS, " , ", "empty"),
            (ann::PROXY_CPU, "lots", "quantity"),
            (ann::PROXY_CPU, "0", "zero"),
            (ann::PROXY_MEMORY, "64MB", "quantity"),
            (ann::PROXY_MEMORY, "1.2.3", "quantity"),
            (ann::LOG_LEVEL, "verbose", "one of error"),
            (ann::INFER_PARENTS, "yes", "neither true nor false"),
            (ann::INFER_PARENTS, "True", "neither true nor false"),
        ];
        for (key, value, problem) in cases {
            let (o, w) = parse(&annotations(&[(key, value)]), &named());
            assert_eq!(o, Overrides::default(), "{key}={value}");
            assert_eq!(w.len(), 1, "{key}={value}: {w:?}");
            assert!(w[0].starts_with(key), "{}", w[0]);
            assert!(w[0].contains(problem), "{key}={value}: {}", w[0]);
            assert!(w[0].ends_with("using the default"), "{}", w[0]);
        }
    }

    #[test]
    fn one_bad_annotation_does_not_spoil_the_others() {
        let (o, w) = parse(
            &annotations(&[(ann::SAMPLING, "2"), (ann::LOG_LEVEL, "warn")]),
            &named(),
        );
        assert_eq!(w.len(), 1);
        assert_eq!(o.sampling, None);
        assert_eq!(o.log_level.as_deref(), Some("warn"));
    }

    #[test]
    fn long_values_are_shortened_in_warnings() {
        let long = "x".repeat(500);
        let (_, w) = parse(&annotations(&[(ann::SAMPLING, &long)]), &named());
        assert!(w[0].len() < 160, "{}", w[0]);
    }

    #[test]
    fn quantities() {
        for ok in ["1", "0.5", ".5", "100m", "1Gi", "1e3", "1E-2", "+2"] {
            assert!(parse_quantity(ok).is_ok(), "{ok}");
        }
        for bad in ["", "m", "1mm", "1Gb", "-1", "1e", "0.0"] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
    }
}

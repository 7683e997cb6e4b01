//! The sidecar configuration file: what the operator renders from a TracedService into a
//! ConfigMap and what `sidetrace-proxy --config` reads. One type for both sides, so they cannot
//! drift. Field names are camelCase like the TracedService spec they come from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::duration::parse_duration;
use crate::sampling::{self, OperationSampling};

/// Errors from reading or validating a [`ProxyConfig`].
#[derive(Debug, thiserror::Error)]
pub enum ProxyConfigError {
    /// The text is not YAML of the expected shape; the message carries line and column.
    #[error("config is not valid YAML of the expected shape: {0}")]
    Parse(#[from] serde_yaml::Error),
    /// A field has a value outside what the proxy accepts.
    #[error("invalid value at {field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl ProxyConfigError {
    /// Short label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Parse(_) => "parse",
            Self::Invalid { .. } => "invalid",
        }
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ProxyConfigError {
    ProxyConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Application protocol spoken on an inbound port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Peek the first bytes and decide (HTTP/1, HTTP/2 prior knowledge, else opaque TCP).
    #[default]
    Auto,
    /// HTTP/1.1.
    Http,
    /// HTTP/2 cleartext with prior knowledge.
    Http2,
    /// gRPC over HTTP/2 cleartext.
    Grpc,
    /// Opaque TCP: never parsed, never traced, no detection delay.
    Tcp,
}

/// Wire protocol towards the span collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum CollectorProtocol {
    /// OTLP/HTTP with protobuf bodies (`POST /v1/traces`): Jaeger v2's and every
    /// OpenTelemetry backend's native receiver.
    #[serde(rename = "otlp-http")]
    OtlpHttp,
    /// Zipkin v2 JSON (`POST /api/v2/spans`): Zipkin servers and Jaeger's Zipkin receiver.
    #[serde(rename = "zipkin")]
    Zipkin,
}

impl CollectorProtocol {
    /// Every protocol the proxy speaks, in the spelling of flags, annotations and the CRD.
    pub const ALL: &[Self] = &[Self::OtlpHttp, Self::Zipkin];

    /// The name used in flags, env, the annotation, the CRD and the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OtlpHttp => "otlp-http",
            Self::Zipkin => "zipkin",
        }
    }

    /// The one rule for a protocol name, applied by every layer (proxy flag and config file,
    /// webhook annotation and flag, CRD enum): exactly one of [`CollectorProtocol::ALL`].
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL
            .iter()
            .copied()
            .find(|p| p.as_str() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|p| p.as_str()).collect();
                format!("{text:?} is not one of {}", names.join(", "))
            })
    }

    /// The protocol a collector URL names by its path: `.../v1/traces` is OTLP/HTTP,
    /// `.../api/v2/spans` is Zipkin v2; `None` when the path says neither.
    pub fn from_endpoint(endpoint: &str) -> Option<Self> {
        let after_scheme = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
        let path = after_scheme
            .split(['?', '#'])
            .next()
            .unwrap_or_default()
            .split_once('/')
            .map_or("", |(_, p)| p)
            .trim_end_matches('/');
        if path.ends_with("v1/traces") {
            Some(Self::OtlpHttp)
        } else if path.ends_with("api/v2/spans") {
            Some(Self::Zipkin)
        } else {
            None
        }
    }

    /// The protocol to use: an explicit choice wins, else the URL's path, else Zipkin v2 (what
    /// every endpoint meant before OTLP existed here, so old configurations keep working).
    pub fn resolve(explicit: Option<Self>, endpoint: &str) -> Self {
        explicit
            .or_else(|| Self::from_endpoint(endpoint))
            .unwrap_or(Self::Zipkin)
    }
}

impl std::fmt::Display for CollectorProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CollectorProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

/// Direction of a request relative to the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// A request the pod serves (SERVER span).
    Inbound,
    /// A request the pod makes (CLIENT span).
    Outbound,
}

/// A trace-context header format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum PropagationFormat {
    /// `x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`, `x-b3-flags`.
    #[serde(rename = "b3multi")]
    B3Multi,
    /// The single `b3` header.
    #[serde(rename = "b3single")]
    B3Single,
    /// W3C `traceparent` / `tracestate`.
    #[serde(rename = "w3c")]
    W3c,
}

/// An inbound application port and the protocol spoken on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSpec {
    /// Container port number.
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 65535)))]
    pub port: u16,
    /// Protocol on this port; `auto` detects it from the first bytes.
    #[serde(default)]
    pub protocol: Protocol,
    /// Upstream response timeout of requests to this port: the longest the app may take,
    /// from the proxy forwarding a request until the response headers arrive (a body may
    /// stream for longer). A duration such as `500ms`, `2s` or `1m`; `0s` turns the proxy's
    /// default (`--response-timeout`) off for this port. A matching operation's `timeout`
    /// wins over this one. When it fires the client gets 504 (gRPC: `grpc-status` 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schemars(regex(pattern = crate::duration::DURATION_PATTERN))
    )]
    pub timeout: Option<String>,
}

/// Names the spans of requests that match, like Envoy's `decorator.operation`.
/// Every field that is set must match; the first matching rule wins.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperationRule {
    /// Span name given to matching requests, e.g. `checkStock`.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub name: String,
    /// Only requests in this direction; both when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// HTTP method, case-insensitive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Path prefix the request path must start with (query string excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Host (authority without port), case-insensitive; `*.example` matches subdomains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Upstream response timeout of matching requests (this rule must be the first that
    /// matches): from forwarding the request until the response headers arrive. A duration
    /// such as `500ms`, `2s` or `1m`; `0s` turns any port or proxy default off for them.
    /// Wins over the port's `timeout` and the proxy's `--response-timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schemars(regex(pattern = crate::duration::DURATION_PATTERN))
    )]
    pub timeout: Option<String>,
}

impl OperationRule {
    /// Whether a request matches this rule. `host` may carry a port, which is ignored.
    pub fn matches(&self, direction: Direction, method: &str, path: &str, host: &str) -> bool {
        if self.direction.is_some_and(|d| d != direction) {
            return false;
        }
        if let Some(m) = &self.method
            && !m.eq_ignore_ascii_case(method)
        {
            return false;
        }
        if let Some(prefix) = &self.path_prefix {
            let path = path.split('?').next().unwrap_or(path);
            if !path.starts_with(prefix.as_str()) {
                return false;
            }
        }
        if let Some(want) = &self.host {
            let host = strip_port(host);
            let matched = match want.strip_prefix("*.") {
                Some(suffix) => host.len().checked_sub(suffix.len() + 1).is_some_and(|dot| {
                    host.as_bytes()[dot] == b'.' && host[dot + 1..].eq_ignore_ascii_case(suffix)
                }),
                None => want.eq_ignore_ascii_case(host),
            };
            if !matched {
                return false;
            }
        }
        true
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.split(']').next().map_or(host, |h| &h[1..]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h,
        _ => host,
    }
}

/// The sidecar's configuration file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    /// Service name in spans; the proxy's flag/env value when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Probability in 0..=1 that a new trace is sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_rate: Option<f64>,
    /// Rates for the new traces of single operations (span names), overriding
    /// `samplingRate`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operation_sampling: Vec<OperationSampling>,
    /// At most this many new traces per second are sampled by this proxy (a token bucket
    /// that holds one second's worth, at least one); the rest are not recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_traces_per_second: Option<f64>,
    /// Ignore the sampling decision (sampled and debug flags) of incoming requests and decide
    /// here, for an edge service whose callers must not be able to force recording. The
    /// incoming trace id is still continued.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_incoming_sampling: bool,
    /// Inbound ports and their protocols; unlisted ports are auto-detected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    /// Span naming rules, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<OperationRule>,
    /// Formats written on forwarded requests; all formats are always read.
    /// Empty means the default (B3 multi-header and W3C).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub propagation: Vec<PropagationFormat>,
    /// Collector endpoint spans are posted to (OTLP/HTTP `.../v1/traces` or Zipkin v2
    /// `.../api/v2/spans`); the proxy's flag/env value when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector: Option<String>,
    /// Wire protocol towards `collector`; when absent it follows the endpoint's path
    /// ([`CollectorProtocol::resolve`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector_protocol: Option<CollectorProtocol>,
    /// Static tags added to every span.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Request paths (exact, or prefix when ending in `*`) proxied but never traced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_paths: Vec<String>,
    /// Keep the query string in the `http.url` span tag. Off by default: query strings carry
    /// tokens and personal data that must not reach the tracing backend. Omitted from the
    /// rendered file when false, so configs written before the field existed stay byte-equal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub record_query_string: bool,
    /// Infer the parent of the app's outbound requests that carry no trace context: when
    /// exactly one inbound request of the pod is in flight, the outbound request continues
    /// its trace; otherwise it starts a new one, as without this. Off by default; for apps
    /// that copy no trace headers. Omitted from the rendered file when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub infer_parents: bool,
}

/// The one rule for an on/off switch written as text (the pod annotation
/// `sidetrace.dev/infer-parents` and the proxy's `--infer-parents-override`, which the webhook
/// sets from it): exactly `true` or `false`, what a Kubernetes annotation's YAML string and
/// the CRD's boolean spell. Anything else is an error naming the accepted values.
pub fn parse_switch(text: &str) -> Result<bool, String> {
    match text {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("{other:?} is neither true nor false")),
    }
}

/// Formats written when the config names none: B3 multi-header (what the Envoy demo's apps
/// copy) and W3C (what OpenTelemetry SDKs read).
pub const DEFAULT_PROPAGATION: &[PropagationFormat] =
    &[PropagationFormat::B3Multi, PropagationFormat::W3c];

impl ProxyConfig {
    /// Parses and validates a YAML config file.
    pub fn from_yaml(text: &str) -> Result<Self, ProxyConfigError> {
        let config: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_yaml::from_str(text)?
        };
        config.validate()?;
        Ok(config)
    }

    /// Renders the config as YAML (stable field order, for ConfigMaps that do not churn).
    pub fn to_yaml(&self) -> String {
        // Serialising plain structs of strings and numbers cannot fail.
        serde_yaml::to_string(self).unwrap_or_default()
    }

    /// Checks bounds the type system does not.
    pub fn validate(&self) -> Result<(), ProxyConfigError> {
        if let Some(name) = &self.service_name
            && name.trim().is_empty()
        {
            return Err(invalid("serviceName", "must not be empty"));
        }
        if let Some(rate) = self.sampling_rate {
            sampling::check_rate(rate).map_err(|r| invalid("samplingRate", r))?;
        }
        sampling::check_operation_rates(&self.operation_sampling)
            .map_err(|(at, r)| invalid(format!("operationSampling{at}"), r))?;
        if let Some(limit) = self.max_traces_per_second {
            sampling::check_max_traces_per_second(limit)
                .map_err(|r| invalid("maxTracesPerSecond", r))?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            if p.port == 0 {
                return Err(invalid(format!("ports[{i}].port"), "must be in 1..=65535"));
            }
            if !seen.insert(p.port) {
                return Err(invalid(
                    format!("ports[{i}].port"),
                    format!("port {} is listed twice", p.port),
                ));
            }
            check_timeout(p.timeout.as_deref(), || format!("ports[{i}].timeout"))?;
        }
        for (i, op) in self.operations.iter().enumerate() {
            if op.name.trim().is_empty() {
                return Err(invalid(
                    format!("operations[{i}].name"),
                    "must not be empty",
                ));
            }
            check_timeout(op.timeout.as_deref(), || format!("operations[{i}].timeout"))?;
        }
        if let Some(c) = &self.collector {
            check_collector_endpoint(c).map_err(|reason| invalid("collector", reason))?;
        }
        for (i, p) in self.exclude_paths.iter().enumerate() {
            if !p.starts_with('/') {
                return Err(invalid(
                    format!("excludePaths[{i}]"),
                    format!("{p:?} does not start with '/'"),
                ));
            }
        }
        Ok(())
    }

    /// Formats to write on forwarded requests.
    pub fn propagation_formats(&self) -> &[PropagationFormat] {
        if self.propagation.is_empty() {
            DEFAULT_PROPAGATION
        } else {
            &self.propagation
        }
    }

    /// Protocol declared for an inbound port (`auto` when not declared).
    pub fn protocol_for(&self, port: u16) -> Protocol {
        self.ports
            .iter()
            .find(|p| p.port == port)
            .map_or(Protocol::Auto, |p| p.protocol)
    }

    /// The name of the first matching operation rule.
    pub fn operation_for(
        &self,
        direction: Direction,
        method: &str,
        path: &str,
        host: &str,
    ) -> Option<&str> {
        self.operations
            .iter()
            .find(|r| r.matches(direction, method, path, host))
            .map(|r| r.name.as_str())
    }

    /// Sampling settings that cannot take effect (see [`sampling::ineffective_settings`]).
    pub fn ineffective_sampling(&self) -> Vec<String> {
        sampling::ineffective_settings(
            self.sampling_rate,
            &self.operation_sampling,
            self.max_traces_per_second,
            &self.operations,
        )
    }

    /// Whether a request path is excluded from tracing (see [`path_is_excluded`]).
    pub fn is_excluded_path(&self, path: &str) -> bool {
        path_is_excluded(&self.exclude_paths, path)
    }
}

/// The one `excludePaths` rule, shared by [`ProxyConfig::is_excluded_path`] and the proxy's
/// tracer: `path` (its query string ignored) equals a pattern, or starts with a pattern's
/// prefix when the pattern ends in `*`.
pub fn path_is_excluded(exclude_paths: &[String], path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    exclude_paths.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => path == p,
    })
}

/// A `timeout` field must be a duration in the one syntax ([`parse_duration`]).
fn check_timeout(
    text: Option<&str>,
    field: impl FnOnce() -> String,
) -> Result<(), ProxyConfigError> {
    match text.map(parse_duration) {
        Some(Err(reason)) => Err(invalid(field(), reason)),
        _ => Ok(()),
    }
}

/// The one rule for a collector endpoint, applied by every layer (the CRD's validation, the
/// operator, the chart's flags through the injector, the proxy at start and on reload): an
/// absolute `http://` or `https://` URL with a host, an optional numeric port and no
/// whitespace or credentials (they would end up in logs and status).
pub fn check_collector_endpoint(text: &str) -> Result<(), String> {
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))
        .ok_or_else(|| format!("{text:?} is not an http:// or https:// URL"))?;
    if text.chars().any(char::is_whitespace) {
        return Err(format!("{text:?} contains whitespace"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(format!("{text:?} carries credentials; use a plain host"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        // [v6]:port or host:port; a bare IPv6 literal in brackets has no port.
        Some((h, p)) if !p.contains(']') => (h, Some(p)),
        _ => (authority, None),
    };
    if host.is_empty() || host == "[]" {
        return Err(format!("{text:?} has no host"));
    }
    if let Some(p) = port
        && !p.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(format!("{text:?} has an invalid port {p:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = r#"
serviceName: service1
samplingRate: 0.5
ports:
  - port: 8080
    protocol: http
operations:
  - name: checkStock
    direction: outbound
    pathPrefix: /trace/2
propagation: [b3multi, b3single]
collector: http://jaeger-collector:9411/api/v2/spans
tags:
  team: shop
excludePaths: [/healthz, "/debug/*"]
recordQueryString: true
"#;

    #[test]
    fn parses_the_demo_config_and_round_trips() {
        let c = ProxyConfig::from_yaml(DEMO).expect("valid");
        assert_eq!(c.service_name.as_deref(), Some("service1"));
        assert_eq!(c.protocol_for(8080), Protocol::Http);
        assert_eq!(c.protocol_for(9090), Protocol::Auto);
        assert_eq!(
            c.propagation_formats(),
            &[PropagationFormat::B3Multi, PropagationFormat::B3Single]
        );
        assert!(c.record_query_string);
        let again = ProxyConfig::from_yaml(&c.to_yaml()).expect("round trip");
        assert_eq!(again, c);
    }

    #[test]
    fn query_strings_are_dropped_unless_the_file_opts_in() {
        let c = ProxyConfig::from_yaml("serviceName: a\n").expect("valid");
        assert!(!c.record_query_string, "off by default");
        assert!(
            !c.to_yaml().contains("recordQueryString"),
            "the default is not written, so existing ConfigMaps do not churn"
        );
        let c = ProxyConfig::from_yaml("recordQueryString: true\n").expect("valid");
        assert!(c.record_query_string);
        assert!(c.to_yaml().contains("recordQueryString: true"));
        let err = ProxyConfig::from_yaml("recordQueryString: sometimes\n").expect_err("not a bool");
        assert_eq!(err.metric_label(), "parse");
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn parent_inference_is_off_unless_the_file_opts_in() {
        let c = ProxyConfig::from_yaml("serviceName: a\n").expect("valid");
        assert!(!c.infer_parents, "off by default");
        assert!(
            !c.to_yaml().contains("inferParents"),
            "the default is not written"
        );
        let c = ProxyConfig::from_yaml("inferParents: true\n").expect("valid");
        assert!(c.infer_parents);
        assert_eq!(ProxyConfig::from_yaml(&c.to_yaml()).expect("round trip"), c);
        let err = ProxyConfig::from_yaml("inferParents: maybe\n").expect_err("not a bool");
        assert_eq!(err.metric_label(), "parse");
    }

    #[test]
    fn switches_are_exactly_true_or_false() {
        assert_eq!(parse_switch("true"), Ok(true));
        assert_eq!(parse_switch("false"), Ok(false));
        for bad in ["", "True", "yes", "1", " true", "on"] {
            let err = parse_switch(bad).expect_err(bad);
            assert!(err.contains("neither true nor false"), "{err}");
        }
    }

    #[test]
    fn timeouts_round_trip_and_are_omitted_when_unset() {
        let text = "ports:\n- port: 8080\n  timeout: 2s\noperations:\n- name: stream\n  pathPrefix: /events\n  timeout: 0s\n";
        let c = ProxyConfig::from_yaml(text).expect("valid");
        assert_eq!(c.ports[0].timeout.as_deref(), Some("2s"));
        assert_eq!(c.operations[0].timeout.as_deref(), Some("0s"));
        assert_eq!(ProxyConfig::from_yaml(&c.to_yaml()).expect("round trip"), c);
        let plain = ProxyConfig::from_yaml(DEMO).expect("valid");
        assert!(
            !plain.to_yaml().contains("timeout"),
            "configs without timeouts render as before"
        );
    }

    #[test]
    fn empty_file_is_the_default() {
        let c = ProxyConfig::from_yaml("  \n").expect("empty is fine");
        assert_eq!(c, ProxyConfig::default());
        assert_eq!(c.propagation_formats(), DEFAULT_PROPAGATION);
    }

    #[test]
    fn operation_rules_match_by_direction_method_path_and_host() {
        let c = ProxyConfig::from_yaml(DEMO).expect("valid");
        assert_eq!(
            c.operation_for(Direction::Outbound, "GET", "/trace/2?x=1", "service2:8000"),
            Some("checkStock")
        );
        assert_eq!(
            c.operation_for(Direction::Inbound, "GET", "/trace/2", "service2"),
            None
        );
        let rule = OperationRule {
            name: "n".into(),
            method: Some("post".into()),
            host: Some("*.shop.svc".into()),
            ..Default::default()
        };
        assert!(rule.matches(Direction::Inbound, "POST", "/", "cart.shop.svc:80"));
        assert!(!rule.matches(Direction::Inbound, "GET", "/", "cart.shop.svc"));
        assert!(!rule.matches(Direction::Inbound, "POST", "/", "shop.svc"));
        assert!(!rule.matches(Direction::Inbound, "POST", "/", "xshop.svc"));
    }

    #[test]
    fn excluded_paths_are_exact_or_prefix() {
        let c = ProxyConfig::from_yaml(DEMO).expect("valid");
        assert!(c.is_excluded_path("/healthz"));
        assert!(c.is_excluded_path("/healthz?verbose"));
        assert!(!c.is_excluded_path("/healthzz"));
        assert!(c.is_excluded_path("/debug/pprof"));
    }

    #[test]
    fn invalid_values_name_the_field() {
        let cases = [
            ("samplingRate: 1.5", "samplingRate"),
            ("ports: [{port: 0}]", "ports[0].port"),
            ("ports: [{port: 80}, {port: 80}]", "ports[1].port"),
            ("operations: [{name: ' '}]", "operations[0].name"),
            ("collector: jaeger:9411", "collector"),
            ("excludePaths: [healthz]", "excludePaths[0]"),
            ("ports: [{port: 80, timeout: soon}]", "ports[0].timeout"),
            (
                "operations: [{name: a}, {name: b, timeout: 1d}]",
                "operations[1].timeout",
            ),
        ];
        for (text, field) in cases {
            let err = ProxyConfig::from_yaml(text).expect_err(text);
            assert!(err.to_string().contains(field), "{text}: {err}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_enums_are_parse_errors_with_a_location() {
        let err = ProxyConfig::from_yaml("serviceName: a\nsampling: 1\n").expect_err("unknown");
        assert!(err.to_string().contains("sampling"), "{err}");
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = ProxyConfig::from_yaml("ports: [{port: 80, protocol: udp}]").expect_err("enum");
        assert!(err.to_string().contains("udp"), "{err}");
        let err = ProxyConfig::from_yaml("ports: [{port: 70000}]").expect_err("range");
        assert_eq!(err.metric_label(), "parse");
    }

    #[test]
    fn collector_endpoints_follow_one_rule() {
        for ok in [
            "http://jaeger-collector:9411/api/v2/spans",
            "https://otel.example.com/v1/traces",
            "http://10.0.0.1:9411",
            "https://[fd00::1]:4318/v1/traces",
            "http://[fd00::1]/api/v2/spans",
        ] {
            assert_eq!(check_collector_endpoint(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("jaeger:9411", "not an http"),
            ("grpc://jaeger:4317", "not an http"),
            ("http:///api/v2/spans", "no host"),
            ("http://jaeger:99999/x", "invalid port"),
            ("http://jaeger:0/x", "invalid port"),
            ("http://user:pw@jaeger:9411/x", "credentials"),
            ("http://jaeger :9411/x", "whitespace"),
        ] {
            let e = check_collector_endpoint(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn collector_protocols_follow_one_rule() {
        for p in CollectorProtocol::ALL {
            assert_eq!(CollectorProtocol::parse(p.as_str()), Ok(*p));
        }
        for bad in ["otlp", "OTLP-HTTP", "otlp-grpc", "", "zipkin "] {
            let e = CollectorProtocol::parse(bad).unwrap_err();
            assert!(e.contains("otlp-http, zipkin"), "{bad}: {e}");
        }
        use CollectorProtocol::{OtlpHttp, Zipkin};
        for (url, want) in [
            ("http://jaeger:4318/v1/traces", Some(OtlpHttp)),
            ("https://otel.example.com/v1/traces/", Some(OtlpHttp)),
            ("http://jaeger:9411/api/v2/spans", Some(Zipkin)),
            ("http://jaeger:9411/api/v2/spans?x=1", Some(Zipkin)),
            ("http://jaeger:9411", None),
            ("http://jaeger:4318/", None),
        ] {
            assert_eq!(CollectorProtocol::from_endpoint(url), want, "{url}");
        }
        assert_eq!(CollectorProtocol::resolve(None, "http://j:9411/x"), Zipkin);
        assert_eq!(
            CollectorProtocol::resolve(Some(Zipkin), "http://j:4318/v1/traces"),
            Zipkin
        );
        let cfg = ProxyConfig::from_yaml("collectorProtocol: otlp-http\n").expect("valid");
        assert_eq!(cfg.collector_protocol, Some(OtlpHttp));
        assert!(ProxyConfig::from_yaml("collectorProtocol: otlp\n").is_err());
    }
}

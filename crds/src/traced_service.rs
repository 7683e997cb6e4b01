use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sidetrace_contract::{
    CollectorProtocol, OperationRule, OperationSampling, PortSpec, PropagationFormat, ProxyConfig,
};

/// Desired tracing behaviour for the pods a TracedService selects.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "sidetrace.dev",
    version = "v1alpha1",
    kind = "TracedService",
    plural = "tracedservices",
    shortname = "tsvc",
    namespaced,
    status = "TracedServiceStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.serviceName"}"#,
    printcolumn = r#"{"name":"Sampling","type":"number","jsonPath":".spec.sampling.rate"}"#,
    printcolumn = r#"{"name":"Selected","type":"integer","jsonPath":".status.selectedPods"}"#,
    printcolumn = r#"{"name":"Injected","type":"integer","jsonPath":".status.injectedPods"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.ports) || self.ports.all(p, self.ports.exists_one(q, q.port == p.port))",
    "message": "ports must be unique: a port number is listed twice",
    "fieldPath": ".ports",
}]))]
pub struct TracedServiceSpec {
    /// Pods in this namespace whose labels match are traced with this configuration.
    /// Must not be empty: an empty selector would claim every pod in the namespace.
    #[schemars(schema_with = "selector_schema")]
    pub selector: LabelSelector,
    /// Service name in spans; defaults to the pod's `app.kubernetes.io/name` or `app` label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_name: Option<String>,
    /// Head sampling of new traces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
    /// Inbound application ports and their protocols; unlisted ports are auto-detected.
    /// Port numbers must be unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub ports: Vec<PortSpec>,
    /// Span names for matching requests (first match wins), like Envoy's decorator operation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub operations: Vec<OperationRule>,
    /// Context formats written on forwarded requests; all are always read.
    /// Defaults to b3multi and w3c.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub propagation: Vec<PropagationFormat>,
    /// Where spans go; the chart's in-cluster Jaeger when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector: Option<Collector>,
    /// Static tags added to every span.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Paths proxied but never traced: exact, or a prefix when ending in `*` (e.g. /healthz).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub exclude_paths: Vec<String>,
    /// Keep the query string in the `http.url` span tag. Off by default, because query
    /// strings often carry tokens and personal data; turn it on only for services whose
    /// query strings are known to be safe to store in the tracing backend.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub record_query_string: bool,
    /// For apps that copy no trace headers: when the app calls out without trace context and
    /// exactly one request to the pod is in flight, the call continues that request's trace
    /// (its span is tagged sidetrace.parent=inferred). With none or several in flight no link
    /// is made (tagged absent or ambiguous). Off by default. The pod annotation
    /// sidetrace.dev/infer-parents overrides it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub infer_parents: bool,
}

/// Head sampling settings. The effective values of each pod are on its proxy's `/config`
/// (admin port); settings that cannot take effect are reported in the `Sampling` condition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.operations) || self.operations.all(o, self.operations.exists_one(p, p.name == o.name))",
    "message": "sampling.operations must name each operation once",
    "fieldPath": ".operations",
}, {
    "rule": "!has(self.maxTracesPerSecond) || self.maxTracesPerSecond > 0.0",
    "message": "sampling.maxTracesPerSecond must be above 0",
    "fieldPath": ".maxTracesPerSecond",
}]))]
pub struct Sampling {
    /// Probability in 0..1 that a new trace is recorded; the proxy's default (the chart's
    /// `proxy.sampling`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub rate: Option<f64>,
    /// Rates for single operations (span names: an operation rule's name or a default name
    /// such as `GET /orders/{id}`) that override `rate` for the traces they start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub operations: Vec<OperationSampling>,
    /// At most this many new traces per second per pod (a token bucket holding one second's
    /// worth, at least one trace), so a traffic spike cannot flood the collector. Traces
    /// continued from a caller that decided to sample are not limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_traces_per_second: Option<f64>,
    /// Whether the sampling decisions of callers (`x-b3-sampled`, `x-b3-flags: 1`, the
    /// `traceparent` flags) are followed. `false` for an edge service facing clients: the
    /// proxy decides itself (by `rate`, `operations` and `maxTracesPerSecond`) and still
    /// continues the caller's trace id. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_incoming: Option<bool>,
}

/// Span collector override.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Collector {
    /// Collector endpoint: OTLP/HTTP, e.g. http://jaeger-collector.tracing:4318/v1/traces, or
    /// Zipkin v2 JSON, e.g. http://jaeger-collector.tracing:9411/api/v2/spans; https:// is
    /// verified against the system roots or the chart's collector.caBundle.
    #[schemars(regex(pattern = r"^https?://[^\s/@]+(/.*)?$"))]
    pub endpoint: String,
    /// Wire protocol: otlp-http (protobuf to /v1/traces) or zipkin (Zipkin v2 JSON). When
    /// absent it follows the endpoint's path (/v1/traces is OTLP, anything else Zipkin v2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<CollectorProtocol>,
}

/// What the operator observed, written through the status subresource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TracedServiceStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready and its reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Pods the selector matches.
    #[serde(default)]
    pub selected_pods: i32,
    /// Selected pods that carry the sidecar.
    #[serde(default)]
    pub injected_pods: i32,
    /// Selected pods that should carry the sidecar but do not (restart them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uninjected_pods: Vec<String>,
    /// Name of the ConfigMap holding the rendered sidecar config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
}

fn selector_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<LabelSelector>();
    // Resolve the reference so the CEL rule can sit beside the properties.
    if let Some(reference) = schema
        .get("$ref")
        .and_then(|r| r.as_str())
        .map(str::to_owned)
    {
        let name = reference.rsplit('/').next().unwrap_or_default().to_owned();
        if let Some(def) = generator.definitions().get(&name)
            && let Ok(resolved) = schemars::Schema::try_from(def.clone())
        {
            schema = resolved;
        }
    }
    schema.insert(
        "x-kubernetes-validations".into(),
        serde_json::json!([{
            "rule": "(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)",
            "message": "selector must not be empty: set matchLabels or matchExpressions",
        }]),
    );
    schema
}

/// A spec that the schema admits but the operator cannot use.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("spec.{field}: {reason}")]
pub struct InvalidSpec {
    /// Path below `spec`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl TracedServiceSpec {
    /// Checks what the CRD's CEL rules check, plus what the proxy config validator checks, so a
    /// spec stored under an older CRD is reported instead of rendered.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        let empty_labels = self
            .selector
            .match_labels
            .as_ref()
            .is_none_or(|m| m.is_empty());
        let empty_exprs = self
            .selector
            .match_expressions
            .as_ref()
            .is_none_or(|m| m.is_empty());
        if empty_labels && empty_exprs {
            return Err(InvalidSpec {
                field: "selector".into(),
                reason: "selector must not be empty: set matchLabels or matchExpressions".into(),
            });
        }
        self.to_proxy_config(None).validate().map_err(|e| match e {
            sidetrace_contract::ProxyConfigError::Invalid { field, reason } => InvalidSpec {
                field: spec_field(&field),
                reason,
            },
            other => InvalidSpec {
                field: String::new(),
                reason: other.to_string(),
            },
        })
    }

    /// Renders the sidecar config file for the pods this spec selects. `default_service_name`
    /// is used when the spec names none (the operator passes the TracedService's name).
    pub fn to_proxy_config(&self, default_service_name: Option<&str>) -> ProxyConfig {
        ProxyConfig {
            service_name: self
                .service_name
                .clone()
                .or_else(|| default_service_name.map(str::to_owned)),
            sampling_rate: self.sampling.as_ref().and_then(|s| s.rate),
            operation_sampling: self
                .sampling
                .as_ref()
                .map(|s| s.operations.clone())
                .unwrap_or_default(),
            max_traces_per_second: self.sampling.as_ref().and_then(|s| s.max_traces_per_second),
            ignore_incoming_sampling: self
                .sampling
                .as_ref()
                .and_then(|s| s.trust_incoming)
                .is_some_and(|trust| !trust),
            ports: self.ports.clone(),
            operations: self.operations.clone(),
            propagation: self.propagation.clone(),
            collector: self.collector.as_ref().map(|c| c.endpoint.clone()),
            collector_protocol: self.collector.as_ref().and_then(|c| c.protocol),
            tags: self.tags.clone(),
            exclude_paths: self.exclude_paths.clone(),
            record_query_string: self.record_query_string,
            infer_parents: self.infer_parents,
        }
    }
}

/// Maps a proxy-config field name back to where it lives in the spec.
fn spec_field(config_field: &str) -> String {
    if let Some(rest) = config_field.strip_prefix("samplingRate") {
        return format!("sampling.rate{rest}");
    }
    if let Some(rest) = config_field.strip_prefix("operationSampling") {
        return format!("sampling.operations{rest}");
    }
    if let Some(rest) = config_field.strip_prefix("maxTracesPerSecond") {
        return format!("sampling.maxTracesPerSecond{rest}");
    }
    if let Some(rest) = config_field.strip_prefix("collectorProtocol") {
        return format!("collector.protocol{rest}");
    }
    if let Some(rest) = config_field.strip_prefix("collector") {
        return format!("collector.endpoint{rest}");
    }
    config_field.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> TracedServiceSpec {
        serde_yaml::from_str(yaml).expect("spec parses")
    }

    #[test]
    fn renders_the_proxy_config() {
        let s = spec(
            "selector: {matchLabels: {app: service1}}\nsampling: {rate: 0.25}\ncollector: {endpoint: 'http://c:9411/api/v2/spans'}\noperations: [{name: checkStock, direction: outbound}]",
        );
        let c = s.to_proxy_config(Some("service1-ts"));
        assert_eq!(c.service_name.as_deref(), Some("service1-ts"));
        assert_eq!(c.sampling_rate, Some(0.25));
        assert_eq!(c.collector.as_deref(), Some("http://c:9411/api/v2/spans"));
        assert_eq!(c.operations[0].name, "checkStock");
        assert!(
            !c.record_query_string,
            "query strings are dropped by default"
        );
        assert!(s.validate().is_ok());
    }

    #[test]
    fn record_query_string_is_carried_into_the_proxy_config() {
        let s = spec("selector: {matchLabels: {app: a}}\nrecordQueryString: true");
        assert!(s.record_query_string);
        let c = s.to_proxy_config(None);
        assert!(c.record_query_string);
        assert!(
            c.to_yaml().contains("recordQueryString: true"),
            "{}",
            c.to_yaml()
        );
        let off = spec("selector: {matchLabels: {app: a}}").to_proxy_config(None);
        assert!(!off.to_yaml().contains("recordQueryString"));
    }

    #[test]
    fn infer_parents_is_carried_into_the_proxy_config() {
        let s = spec("selector: {matchLabels: {app: a}}\ninferParents: true");
        assert!(s.to_proxy_config(None).infer_parents);
        assert!(
            s.to_proxy_config(None)
                .to_yaml()
                .contains("inferParents: true")
        );
        let off = spec("selector: {matchLabels: {app: a}}").to_proxy_config(None);
        assert!(!off.infer_parents, "off by default");
        assert!(!off.to_yaml().contains("inferParents"));
    }

    #[test]
    fn port_and_operation_timeouts_are_carried_and_validated() {
        let s = spec(
            "selector: {matchLabels: {app: a}}\nports: [{port: 8080, protocol: http, timeout: 2s}]\noperations: [{name: events, pathPrefix: /events, timeout: 0s}]",
        );
        assert!(s.validate().is_ok());
        let c = s.to_proxy_config(None);
        assert_eq!(c.ports[0].timeout.as_deref(), Some("2s"));
        assert_eq!(c.operations[0].timeout.as_deref(), Some("0s"));
        assert!(c.to_yaml().contains("timeout: 2s"), "{}", c.to_yaml());
        let err = spec("selector: {matchLabels: {a: b}}\noperations: [{name: x, timeout: 5 min}]")
            .validate()
            .expect_err("not a duration");
        assert!(
            err.to_string().starts_with("spec.operations[0].timeout:"),
            "{err}"
        );
    }

    #[test]
    fn empty_selector_and_duplicate_ports_are_invalid() {
        let err = spec("selector: {}").validate().expect_err("empty selector");
        assert_eq!(err.field, "selector");
        let err = spec("selector: {matchLabels: {a: b}}\nports: [{port: 80}, {port: 80}]")
            .validate()
            .expect_err("dup");
        assert_eq!(
            err.to_string(),
            "spec.ports[1].port: port 80 is listed twice"
        );
        let err = spec("selector: {matchLabels: {a: b}}\nsampling: {rate: 2}")
            .validate()
            .expect_err("rate");
        assert!(err.to_string().starts_with("spec.sampling.rate:"), "{err}");
    }

    #[test]
    fn sampling_settings_are_carried_and_validated_by_the_contract_rules() {
        let s = spec(
            "selector: {matchLabels: {app: a}}\nsampling: {rate: 0.1, maxTracesPerSecond: 20, trustIncoming: false, operations: [{name: checkStock, rate: 1}]}",
        );
        assert!(s.validate().is_ok());
        let c = s.to_proxy_config(None);
        assert_eq!(c.sampling_rate, Some(0.1));
        assert_eq!(c.max_traces_per_second, Some(20.0));
        assert!(c.ignore_incoming_sampling);
        assert_eq!(c.operation_sampling[0].name, "checkStock");
        let yaml = c.to_yaml();
        assert_eq!(
            ProxyConfig::from_yaml(&yaml).expect("round trip"),
            c,
            "{yaml}"
        );
        let trusted = spec("selector: {matchLabels: {app: a}}\nsampling: {trustIncoming: true}")
            .to_proxy_config(None);
        assert!(!trusted.ignore_incoming_sampling);
        assert_eq!(trusted.sampling_rate, None);
        for (yaml, field) in [
            (
                "sampling: {operations: [{name: a, rate: 1.5}]}",
                "spec.sampling.operations[0].rate:",
            ),
            (
                "sampling: {operations: [{name: a, rate: 1}, {name: a, rate: 0}]}",
                "spec.sampling.operations[1].name:",
            ),
            (
                "sampling: {maxTracesPerSecond: 0}",
                "spec.sampling.maxTracesPerSecond:",
            ),
        ] {
            let err = spec(&format!("selector: {{matchLabels: {{a: b}}}}\n{yaml}"))
                .validate()
                .expect_err(yaml);
            assert!(err.to_string().starts_with(field), "{yaml}: {err}");
        }
    }
}

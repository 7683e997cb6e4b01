//! The `TracedService` custom resource (`sidetrace.dev/v1alpha1`).
//!
//! A TracedService selects pods in its namespace and says how their sidecar traces: the service
//! name, the sampling rate, port protocols, operation names, propagation formats, the collector,
//! static tags and paths never traced. The operator renders it into the sidecar config file
//! ([`sidetrace_contract::ProxyConfig`], see [`TracedServiceSpec::to_proxy_config`]) and
//! reports what it found in the status.
//!
//! The CRD YAML is generated from these types ([`crd_yaml`], `make crds`); a test fails when the
//! checked-in copies drift. Bounds the apiserver enforces live in the schema (schemars
//! attributes) and in CEL rules; [`TracedServiceSpec::validate`] mirrors the CEL rules so that
//! the operator can explain a spec that slipped past an older CRD.

pub mod schema_check;
pub mod selection;
mod traced_service;

pub use traced_service::*;

/// Condition types of a TracedService's status (the operator writes them, `sidetrace check`
/// reads them).
pub mod condition {
    /// The config is rendered and nothing prevents the selected pods from using it.
    pub const READY: &str = "Ready";
    /// Every selected pod that should carry the sidecar does.
    pub const PODS_INJECTED: &str = "PodsInjected";
    /// Every sampling setting of the spec takes effect on the selected pods.
    pub const SAMPLING: &str = "Sampling";
}

use kube::CustomResourceExt;

/// Header written above the generated YAML.
const GENERATED_HEADER: &str =
    "# Generated from crds/src/traced_service.rs by `make crds`. Do not edit.\n";

/// The CRD manifest as YAML, exactly as checked in under `crds/` and the chart.
pub fn crd_yaml() -> String {
    let crd = TracedService::crd();
    let body = serde_yaml::to_string(&crd).unwrap_or_default();
    format!("{GENERATED_HEADER}{body}")
}

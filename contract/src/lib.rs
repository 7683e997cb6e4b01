//! The contract between sidetrace's components.
//!
//! The webhook writes a pod spec, the init container programs iptables from its arguments, the
//! sidecar listens on ports and reads a config file the operator renders. Each of those is a
//! promise between two binaries; this crate is the one place where those promises are written,
//! with no Kubernetes client dependency so that the sidecar and the init container stay small.
//!
//! - [`names`]: labels, annotations, container names, env var names.
//! - [`defaults`]: ports, uid/gid and other well-known values (Istio's, so rules read familiar).
//! - [`capture`]: capture choices the webhook passes to the init container (IPv6).
//! - [`exit`]: the process exit codes every sidetrace binary shares.
//! - [`duration`]: the one duration syntax of flags, the config file and the CRD (`500ms`).
//! - [`injection`]: whether a pod carries the sidecar, decided once for the webhook and the
//!   operator.
//! - [`workload`]: the pod's owning workload as OpenTelemetry resource attributes.
//! - [`sampling`]: head sampling settings and their rules (rates, the trace limit).
//! - [`proxy_config`]: the YAML file the operator renders into a ConfigMap and
//!   `sidetrace-proxy --config` reads.

pub mod capture;
pub mod defaults;
pub mod duration;
pub mod exit;
pub mod injection;
pub mod names;
pub mod proxy_config;
pub mod sampling;
pub mod workload;

pub use capture::Ipv6Capture;
pub use duration::parse_duration;
pub use proxy_config::{
    CollectorProtocol, Direction, OperationRule, PortSpec, PropagationFormat, Protocol,
    ProxyConfig, ProxyConfigError, check_collector_endpoint, parse_switch,
};
pub use sampling::OperationSampling;

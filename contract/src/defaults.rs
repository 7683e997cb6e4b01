//! Well-known default values. They are Istio's, so that iptables rules, ports and uids read
//! familiar to anyone who has debugged a mesh before.

/// Port the proxy listens on for redirected outbound connections.
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// Port the proxy listens on for redirected inbound connections.
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// Proxy health, readiness, metrics and admin port; never captured.
pub const ADMIN_PORT: u16 = 15021;
/// uid the proxy runs as; its own connections are exempt from capture by this uid.
pub const PROXY_UID: u32 = 1337;
/// gid the proxy runs as.
pub const PROXY_GID: u32 = 1337;
/// Collector endpoint of the chart's in-cluster Jaeger (Zipkin v2 receiver).
pub const COLLECTOR_ENDPOINT: &str = "http://jaeger-collector.sidetrace-system:9411/api/v2/spans";
/// Sampling rate when nothing else says: trace everything (a demo-friendly default, like the
/// Envoy tracing sandbox; production users set a TracedService rate).
pub const SAMPLING_RATE: f64 = 1.0;
/// Namespace the chart installs the control plane into by default.
pub const CONTROL_PLANE_NAMESPACE: &str = "sidetrace-system";
/// Proxy image resources when no annotation overrides them.
pub const PROXY_CPU_REQUEST: &str = "10m";
pub const PROXY_MEMORY_REQUEST: &str = "16Mi";
pub const PROXY_MEMORY_LIMIT: &str = "64Mi";

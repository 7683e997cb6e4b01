//! Well-known default values. They are Istio's, so that iptables rules, ports and uids read
//! familiar to anyone who has debugged a mesh before.

/// Port the proxy listens on for redirected outbound connections.
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// Port the proxy listens on for redirected inbound connections.
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// Proxy health, readiness, metrics and admin port; never captured.
pub const ADMIN_PORT: u16 = 15021;
/// Source address of the proxy's connection to the app when it forwards an inbound
/// connection to its original destination (the pod IP): the init rules leave traffic from it
/// on `lo` alone, so it is not captured again, and the app still sees a connection to the pod
/// IP, never to 127.0.0.1 (a port bound to loopback stays private to the pod). Istio's value.
pub const PASSTHROUGH_SOURCE_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 6);
/// The IPv6 passthrough source, `::6`. Unlike 127.0.0.6 it is not on `lo` by itself: the init
/// container adds it (`::6/128`, host scope) when it programs IPv6.
pub const PASSTHROUGH_SOURCE_V6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);
/// uid the proxy runs as; its own connections are exempt from capture by this uid.
pub const PROXY_UID: u32 = 1337;
/// gid the proxy runs as.
pub const PROXY_GID: u32 = 1337;
/// Collector endpoint of the chart's in-cluster Jaeger: its OTLP/HTTP receiver (Jaeger v2 is
/// built on the OpenTelemetry Collector and recommends OTLP; its Zipkin receiver on 9411 stays
/// for Zipkin clients).
pub const COLLECTOR_ENDPOINT: &str = "http://jaeger-collector.sidetrace-system:4318/v1/traces";
/// Sampling rate when nothing else says: trace everything (a demo-friendly default, like the
/// Envoy tracing sandbox; production users set a TracedService rate).
pub const SAMPLING_RATE: f64 = 1.0;
/// Namespace the chart installs the control plane into by default.
pub const CONTROL_PLANE_NAMESPACE: &str = "sidetrace-system";
/// Proxy image resources when no annotation overrides them.
pub const PROXY_CPU_REQUEST: &str = "10m";
pub const PROXY_MEMORY_REQUEST: &str = "16Mi";
pub const PROXY_MEMORY_LIMIT: &str = "64Mi";

/// The chart's control-plane object names, which the operator's flags default to and
/// `sidetrace check` inspects: the operator's Deployment and its leader-election Lease.
pub const OPERATOR_NAME: &str = "sidetrace-operator";
/// The injector's Deployment, Service and MutatingWebhookConfiguration.
pub const INJECTOR_NAME: &str = "sidetrace-injector";
/// The Secret holding the webhook's serving certificate, key and CA bundle.
pub const WEBHOOK_SECRET: &str = "sidetrace-injector-tls";
/// The chart's Jaeger query Service (API and UI) and its port.
pub const JAEGER_QUERY_SERVICE: &str = "jaeger-query";
/// Port of [`JAEGER_QUERY_SERVICE`].
pub const JAEGER_QUERY_PORT: u16 = 16686;

//! Names shared by the webhook, the operator, the init container and the sidecar.

/// API group of every sidetrace resource.
pub const API_GROUP: &str = "sidetrace.dev";
/// API version of the TracedService resource.
pub const API_VERSION: &str = "v1alpha1";

/// Namespace label (`enabled`) and pod label (`true`/`false`) that switch injection on or off.
pub const INJECT_LABEL: &str = "sidetrace.dev/inject";
/// Value of [`INJECT_LABEL`] on a namespace that turns injection on.
pub const INJECT_NAMESPACE_ENABLED: &str = "enabled";

/// Pod annotation the webhook writes describing what it injected (JSON).
pub const STATUS_ANNOTATION: &str = "sidetrace.dev/status";
/// Pod annotation the webhook writes on a pod it admitted without injecting: why (JSON, see
/// `injection::SkipRecord`). The operator reads it for facts it cannot see (the pod spec).
pub const SKIP_ANNOTATION: &str = "sidetrace.dev/skipped";

/// Per-pod override annotations.
pub mod annotations {
    /// Service name reported in spans.
    pub const SERVICE_NAME: &str = "sidetrace.dev/service-name";
    /// Sampling rate, a decimal in 0..=1.
    pub const SAMPLING: &str = "sidetrace.dev/sampling";
    /// Comma-separated inbound ports that are not captured.
    pub const EXCLUDE_INBOUND_PORTS: &str = "sidetrace.dev/exclude-inbound-ports";
    /// Comma-separated outbound ports that are not captured.
    pub const EXCLUDE_OUTBOUND_PORTS: &str = "sidetrace.dev/exclude-outbound-ports";
    /// Comma-separated outbound CIDRs that are not captured.
    pub const EXCLUDE_OUTBOUND_CIDRS: &str = "sidetrace.dev/exclude-outbound-cidrs";
    /// Outbound destination CIDRs to capture (`*` for all, the default): everything else
    /// bypasses the proxy (Istio's `traffic.sidecar.istio.io/includeOutboundIPRanges`).
    pub const INCLUDE_OUTBOUND_CIDRS: &str = "sidetrace.dev/include-outbound-cidrs";
    /// CPU request/limit of the proxy container (Kubernetes quantity).
    pub const PROXY_CPU: &str = "sidetrace.dev/proxy-cpu";
    /// Memory request/limit of the proxy container (Kubernetes quantity).
    pub const PROXY_MEMORY: &str = "sidetrace.dev/proxy-memory";
    /// Log level of the proxy (error, warn, info, debug, trace).
    pub const LOG_LEVEL: &str = "sidetrace.dev/log-level";
    /// Wire protocol towards the collector (`otlp-http` or `zipkin`, checked by
    /// [`crate::CollectorProtocol::parse`]); beats the TracedService and the chart.
    pub const COLLECTOR_PROTOCOL: &str = "sidetrace.dev/collector-protocol";
    /// `true` or `false` (checked by [`crate::parse_switch`]): infer the parent of the app's
    /// outbound calls that carry no trace context; beats the TracedService's `inferParents`.
    pub const INFER_PARENTS: &str = "sidetrace.dev/infer-parents";
}

/// Name of the injected init container that programs iptables.
pub const INIT_CONTAINER_NAME: &str = "sidetrace-init";
/// Name of the injected sidecar proxy container.
pub const PROXY_CONTAINER_NAME: &str = "sidetrace-proxy";
/// Names of other meshes' proxies: a pod carrying one is never injected.
pub const FOREIGN_PROXY_CONTAINERS: &[&str] = &["istio-proxy", "linkerd-proxy"];

/// Path prefix on the proxy's admin port of the tcpSocket probe check: the webhook rewrites an
/// app's `tcpSocket: {port: P}` probe to `httpGet: {path: <prefix>P, port: <admin>}`, and the
/// proxy dials the app's port from inside the pod.
pub const APP_TCP_PROBE_PATH_PREFIX: &str = "/app-health/tcp/";

/// The namespace label with which Pod Security admission enforces a level.
pub const POD_SECURITY_ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";
/// Pod Security levels that reject the init container (root, NET_ADMIN and NET_RAW): an
/// injected pod there would be refused, so it is not injected.
pub const POD_SECURITY_LEVELS_REJECTING_INIT: &[&str] = &["baseline", "restricted"];
/// Volume under which the rendered sidecar config is mounted in the pod.
pub const CONFIG_VOLUME_NAME: &str = "sidetrace-config";
/// Directory where the config volume is mounted in the proxy container.
pub const CONFIG_MOUNT_PATH: &str = "/etc/sidetrace";
/// File name of the proxy config inside the ConfigMap and the mount.
pub const CONFIG_FILE_NAME: &str = "proxy.yaml";

/// Labels put on every ConfigMap the operator renders, so a watch can find them.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY_VALUE: &str = "sidetrace-operator";
/// Label on a rendered ConfigMap naming the TracedService it belongs to.
pub const TRACED_SERVICE_LABEL: &str = "sidetrace.dev/traced-service";

/// Environment variables the webhook sets and the sidecar reads (each matches a proxy flag).
pub mod env {
    pub const INBOUND_PORT: &str = "SIDETRACE_INBOUND_PORT";
    pub const OUTBOUND_PORT: &str = "SIDETRACE_OUTBOUND_PORT";
    pub const ADMIN_PORT: &str = "SIDETRACE_ADMIN_PORT";
    pub const SERVICE_NAME: &str = "SIDETRACE_SERVICE_NAME";
    pub const COLLECTOR: &str = "SIDETRACE_COLLECTOR";
    /// The proxy's `--collector-protocol`: the protocol of `COLLECTOR` (the chart's or the
    /// TracedService's choice); when absent it follows the endpoint's path.
    pub const COLLECTOR_PROTOCOL: &str = "SIDETRACE_COLLECTOR_PROTOCOL";
    /// Set by the webhook only from the pod's collector-protocol annotation: beats the
    /// config file's `collectorProtocol` (see SERVICE_NAME_OVERRIDE).
    pub const COLLECTOR_PROTOCOL_OVERRIDE: &str = "SIDETRACE_COLLECTOR_PROTOCOL_OVERRIDE";
    /// PEM bundle file the proxy verifies an https collector against.
    pub const COLLECTOR_CA_FILE: &str = "SIDETRACE_COLLECTOR_CA_FILE";
    /// The same bundle as PEM text (what the webhook injects from the chart's value).
    pub const COLLECTOR_CA: &str = "SIDETRACE_COLLECTOR_CA";
    pub const SAMPLING: &str = "SIDETRACE_SAMPLING";
    /// Set by the webhook only from a pod annotation: beats the TracedService config file
    /// (a pod's own annotation is its most specific setting, so it wins), while
    /// SERVICE_NAME/SAMPLING are the defaults the file may replace.
    pub const SERVICE_NAME_OVERRIDE: &str = "SIDETRACE_SERVICE_NAME_OVERRIDE";
    /// Sampling rate from the pod annotation; beats the config file. See SERVICE_NAME_OVERRIDE.
    pub const SAMPLING_OVERRIDE: &str = "SIDETRACE_SAMPLING_OVERRIDE";
    /// Parent inference from the pod annotation; beats the config file's `inferParents`.
    pub const INFER_PARENTS_OVERRIDE: &str = "SIDETRACE_INFER_PARENTS_OVERRIDE";
    pub const CONFIG: &str = "SIDETRACE_CONFIG";
    pub const LOG_LEVEL: &str = "SIDETRACE_LOG_LEVEL";
    /// The proxy's `--drain-period` (how long its outbound side outlives SIGTERM).
    pub const DRAIN_PERIOD: &str = "SIDETRACE_DRAIN_PERIOD";
    pub const POD_NAME: &str = "SIDETRACE_POD_NAME";
    pub const POD_NAMESPACE: &str = "SIDETRACE_POD_NAMESPACE";
    pub const POD_IP: &str = "SIDETRACE_POD_IP";
    /// The node the pod runs on (downward API `spec.nodeName`): `k8s.node.name`.
    pub const NODE_NAME: &str = "SIDETRACE_NODE_NAME";
    /// The pod's owning workload as OTLP resource attributes, `key=value` pairs joined by
    /// commas (`OTEL_RESOURCE_ATTRIBUTES`' format), e.g.
    /// `k8s.replicaset.name=shop-7c9d8,k8s.deployment.name=shop`. The webhook derives it from
    /// the pod's owner references ([`crate::workload::workload_attributes`]).
    pub const WORKLOAD_ATTRIBUTES: &str = "SIDETRACE_WORKLOAD_ATTRIBUTES";
}

/// Name of the ConfigMap the operator renders for a TracedService (and the webhook mounts).
pub fn config_map_name(traced_service: &str) -> String {
    format!("sidetrace-{traced_service}")
}

/// Field manager for every server-side apply the operator makes.
pub const OPERATOR_FIELD_MANAGER: &str = "sidetrace-operator";

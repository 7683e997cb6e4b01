//! Injector-wide settings: what the command line configures, shared by every admission.

use sidetrace_contract::{CollectorProtocol, Ipv6Capture, defaults};

/// How the sidecar is placed in the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SidecarMode {
    /// Kubernetes 1.29+: the proxy is an init container with `restartPolicy: Always`, started
    /// (startup probe passed) before the app's init containers and the app, stopped after them.
    Native,
    /// Older clusters: the proxy is the first regular container with a postStart hold.
    Classic,
}

impl SidecarMode {
    /// Name recorded in the status annotation and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native-sidecar",
            Self::Classic => "classic",
        }
    }
}

/// Everything the patch builder needs besides the pod.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Image of the `sidetrace-proxy` container.
    pub proxy_image: String,
    /// Image of the `sidetrace-init` container.
    pub init_image: String,
    /// Placement of the proxy.
    pub mode: SidecarMode,
    /// Collector endpoint when no TracedService overrides it.
    pub collector: String,
    /// Protocol of `collector` when set explicitly; `None` lets the proxy follow the path.
    pub collector_protocol: Option<CollectorProtocol>,
    /// PEM bundle an https collector is verified against, passed to every proxy.
    pub collector_ca_bundle: Option<String>,
    /// Port the proxy listens on for redirected inbound connections.
    pub inbound_port: u16,
    /// Port the proxy listens on for redirected outbound connections.
    pub outbound_port: u16,
    /// Proxy health/readiness/metrics port; never captured.
    pub admin_port: u16,
    /// uid of the proxy; its traffic is exempt from capture.
    pub proxy_uid: i64,
    /// gid of the proxy.
    pub proxy_gid: i64,
    /// Proxy log level when no annotation overrides it.
    pub log_level: String,
    /// `imagePullPolicy` of both injected containers.
    pub image_pull_policy: String,
    /// Sampling rate passed to the proxy when no annotation overrides it (a TracedService's
    /// rendered config takes precedence inside the proxy).
    pub sampling: f64,
    /// Proxy CPU request when no annotation overrides it.
    pub proxy_cpu_request: String,
    /// Proxy memory request when no annotation overrides it.
    pub proxy_memory_request: String,
    /// Proxy memory limit when no annotation overrides it.
    pub proxy_memory_limit: String,
    /// IPv6 capture by sidetrace-init (auto: when the pod has an IPv6 address).
    pub init_ipv6: Ipv6Capture,
    /// Classic mode: the command of the proxy's postStart hook, which returns once the proxy
    /// is ready so that the kubelet starts the app containers only then. Empty: no hook.
    pub hold_command: Vec<String>,
    /// Namespace of the sidetrace control plane (never injected).
    pub control_plane_namespace: String,
    /// Add `prometheus.io/scrape`, `/port` and `/path` for the proxy's admin port to injected
    /// pods that carry no `prometheus.io/` annotation of their own.
    pub prometheus_annotations: bool,
}

/// Default postStart hold command: the proxy binary polls its own readiness endpoint.
pub const DEFAULT_HOLD_COMMAND: &[&str] = &["/usr/local/bin/sidetrace-proxy", "wait"];

impl Default for Settings {
    fn default() -> Self {
        Self {
            proxy_image: "sidetrace/proxy:latest".into(),
            init_image: "sidetrace/init:latest".into(),
            mode: SidecarMode::Native,
            collector: defaults::COLLECTOR_ENDPOINT.into(),
            collector_protocol: None,
            collector_ca_bundle: None,
            inbound_port: defaults::INBOUND_CAPTURE_PORT,
            outbound_port: defaults::OUTBOUND_CAPTURE_PORT,
            admin_port: defaults::ADMIN_PORT,
            proxy_uid: i64::from(defaults::PROXY_UID),
            proxy_gid: i64::from(defaults::PROXY_GID),
            log_level: "info".into(),
            image_pull_policy: "IfNotPresent".into(),
            sampling: defaults::SAMPLING_RATE,
            proxy_cpu_request: defaults::PROXY_CPU_REQUEST.into(),
            proxy_memory_request: defaults::PROXY_MEMORY_REQUEST.into(),
            proxy_memory_limit: defaults::PROXY_MEMORY_LIMIT.into(),
            init_ipv6: Ipv6Capture::Auto,
            hold_command: DEFAULT_HOLD_COMMAND
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            control_plane_namespace: defaults::CONTROL_PLANE_NAMESPACE.into(),
            prometheus_annotations: true,
        }
    }
}

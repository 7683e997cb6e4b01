//! Pod + settings + resolved per-pod values → the JSON Patch that injects sidetrace.
//!
//! Two placements:
//! - **native sidecar** (Kubernetes 1.29+): `sidetrace-init` becomes the first init container
//!   and `sidetrace-proxy` the second, with `restartPolicy: Always` and a startup probe on the
//!   proxy's `/ready`, so the kubelet starts the app's own init containers and the app only
//!   once the proxy is ready, and stops the proxy after them (Jobs complete).
//! - **classic**: `sidetrace-init` goes last among the init containers (the app's init
//!   containers keep an uncaptured network, as there is no proxy yet to forward their traffic)
//!   and the proxy becomes the first regular container with a postStart hook that returns once
//!   the proxy is ready; the kubelet starts containers in order and waits for each postStart, so
//!   the app starts after the proxy (Istio's holdApplicationUntilProxyStarts). Jobs must call
//!   `POST :<admin>/shutdown` on the proxy when done.
//!
//! httpGet and gRPC probes need no rewriting: they reach the pod IP, inbound capture forwards
//! them to the app like any request (a stopped app fails them), and the proxy does not trace
//! requests whose user agent starts with `kube-probe/`. tcpSocket probes are rewritten: every
//! connection to a captured port is accepted by the proxy before it dials the app, so the
//! kubelet's dial would succeed with the app down. They become an httpGet on the proxy's admin
//! port (`/app-health/tcp/<port>`, excluded from capture), where the proxy dials the app the
//! way it forwards inbound connections and answers 503 when the app refuses. The proxy's own
//! probes go straight to the admin port.
//!
//! JSON Patch paths: an absent array or map is added whole (adding `/spec/initContainers/0` to a
//! pod without init containers fails), and `/` in annotation keys is escaped as `~1`.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation};
use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;
use serde_json::{Value, json};
use sidetrace_contract::injection::{SkipReason, SkipRecord};
use sidetrace_contract::{Ipv6Capture, names};

use crate::overrides::Overrides;
use crate::settings::{Settings, SidecarMode};

/// Annotation kubectl uses to pick the container for `logs`/`exec`; set in classic mode so the
/// proxy, now first, does not become everyone's default.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";
/// Name of the proxy's admin port in the pod (at most 15 characters, an IANA service name).
pub const ADMIN_PORT_NAME: &str = "sidetrace-admin";

/// Prefix of the annotations Prometheus' annotation-based pod discovery reads.
const PROMETHEUS_ANNOTATION_PREFIX: &str = "prometheus.io/";
/// `true`: scrape this pod.
const PROMETHEUS_SCRAPE: &str = "prometheus.io/scrape";
/// The port to scrape (the proxy's admin port).
const PROMETHEUS_PORT: &str = "prometheus.io/port";
/// The path to scrape.
const PROMETHEUS_PATH: &str = "prometheus.io/path";
/// Readiness path of the proxy.
pub const READY_PATH: &str = "/ready";
/// Liveness path of the proxy.
pub const LIVENESS_PATH: &str = "/healthz";
/// Init container resources: it runs iptables-restore once and exits.
const INIT_CPU_REQUEST: &str = "10m";
const INIT_MEMORY_REQUEST: &str = "10Mi";
const INIT_MEMORY_LIMIT: &str = "50Mi";
/// Startup probe budget in native mode: one second apart, a minute in all, enough for a cold
/// image on a busy node.
const STARTUP_FAILURE_THRESHOLD: i32 = 60;

/// Per-pod values resolved from annotations, the matched TracedService and defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    /// Service name in spans.
    pub service_name: String,
    /// Collector endpoint.
    pub collector: String,
    /// Protocol chosen for that endpoint (TracedService or chart); `None`: the proxy follows
    /// the endpoint's path.
    pub collector_protocol: Option<sidetrace_contract::CollectorProtocol>,
    /// The pod's owning workload as OTLP resource attributes (`key=value,...`).
    pub workload_attributes: Option<String>,
    /// Sampling rate: the pod's annotation, else the injector's default. (Inside the proxy a
    /// mounted TracedService config's rate takes precedence and hot-reloads.)
    pub sampling: f64,
    /// Proxy log level.
    pub log_level: String,
    /// Matched TracedService and the ConfigMap rendered from it.
    pub traced_service: Option<String>,
    /// The pod's parsed annotations (ports, CIDRs, resources).
    pub overrides: Overrides,
}

impl Resolved {
    /// Name of the ConfigMap mounted into the proxy, when a TracedService matched.
    pub fn config_map(&self) -> Option<String> {
        self.traced_service.as_deref().map(names::config_map_name)
    }
}

/// What the webhook injected, written as JSON into the `sidetrace.dev/status` annotation.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InjectionStatus {
    /// `native-sidecar` or `classic`.
    pub mode: &'static str,
    /// Init containers added, in pod order.
    pub init_containers: Vec<&'static str>,
    /// Regular containers added.
    pub containers: Vec<&'static str>,
    /// Volumes added.
    pub volumes: Vec<&'static str>,
    /// Service name the proxy reports.
    pub service_name: String,
    /// TracedService whose config is mounted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traced_service: Option<String>,
    /// ConfigMap mounted at the config path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
}

/// The `sidetrace-init` container: programs iptables as root with NET_ADMIN and NET_RAW only.
pub fn init_container(settings: &Settings, resolved: &Resolved) -> Value {
    let o = &resolved.overrides;
    // The proxy's admin port is always excluded: kubelet probes it directly.
    let mut inbound = vec![settings.admin_port];
    inbound.extend(
        o.exclude_inbound_ports
            .iter()
            .filter(|p| **p != settings.admin_port),
    );
    let mut args = vec![
        "--proxy-uid".to_owned(),
        settings.proxy_uid.to_string(),
        "--proxy-gid".to_owned(),
        settings.proxy_gid.to_string(),
        "--inbound-port".to_owned(),
        settings.inbound_port.to_string(),
        "--outbound-port".to_owned(),
        settings.outbound_port.to_string(),
        "--admin-port".to_owned(),
        settings.admin_port.to_string(),
        "--exclude-inbound-ports".to_owned(),
        join(&inbound),
    ];
    if !o.exclude_outbound_ports.is_empty() {
        args.push("--exclude-outbound-ports".to_owned());
        args.push(join(&o.exclude_outbound_ports));
    }
    if !o.exclude_outbound_cidrs.is_empty() {
        args.push("--exclude-outbound-cidrs".to_owned());
        args.push(o.exclude_outbound_cidrs.join(","));
    }
    if let Some(include) = &o.include_outbound_cidrs {
        args.push("--include-outbound-cidrs".to_owned());
        args.push(include.join(","));
    }
    // Auto is sidetrace-init's own default: nothing to pass.
    match settings.init_ipv6 {
        Ipv6Capture::Auto => {}
        Ipv6Capture::On => args.push("--ipv6".to_owned()),
        Ipv6Capture::Off => args.push("--ipv6=off".to_owned()),
    }
    json!({
        "name": names::INIT_CONTAINER_NAME,
        "image": settings.init_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": args,
        "resources": {
            "requests": {"cpu": INIT_CPU_REQUEST, "memory": INIT_MEMORY_REQUEST},
            "limits": {"memory": INIT_MEMORY_LIMIT},
        },
        "securityContext": {
            // iptables needs uid 0 in the pod's network namespace, and its lock file
            // (/run/xtables.lock) needs a writable root filesystem, as in Istio's istio-init.
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}

/// The `sidetrace-proxy` container, for the given placement.
pub fn proxy_container(settings: &Settings, resolved: &Resolved) -> Value {
    let o = &resolved.overrides;
    let field = |path: &str| json!({"fieldRef": {"apiVersion": "v1", "fieldPath": path}});
    let mut env = vec![
        json!({"name": names::env::POD_NAME, "valueFrom": field("metadata.name")}),
        json!({"name": names::env::POD_NAMESPACE, "valueFrom": field("metadata.namespace")}),
        json!({"name": names::env::POD_IP, "valueFrom": field("status.podIP")}),
        json!({"name": names::env::NODE_NAME, "valueFrom": field("spec.nodeName")}),
        json!({"name": names::env::INBOUND_PORT, "value": settings.inbound_port.to_string()}),
        json!({"name": names::env::OUTBOUND_PORT, "value": settings.outbound_port.to_string()}),
        json!({"name": names::env::ADMIN_PORT, "value": settings.admin_port.to_string()}),
        json!({"name": names::env::SERVICE_NAME, "value": resolved.service_name}),
        json!({"name": names::env::COLLECTOR, "value": resolved.collector}),
    ];
    env.push(json!({"name": names::env::SAMPLING, "value": resolved.sampling.to_string()}));
    if let Some(p) = resolved.collector_protocol {
        env.push(json!({"name": names::env::COLLECTOR_PROTOCOL, "value": p.as_str()}));
    }
    if let Some(attrs) = &resolved.workload_attributes {
        env.push(json!({"name": names::env::WORKLOAD_ATTRIBUTES, "value": attrs}));
    }
    if let Some(pem) = &settings.collector_ca_bundle {
        env.push(json!({"name": names::env::COLLECTOR_CA, "value": pem}));
    }
    // Annotations beat the TracedService's config file inside the proxy; the plain values
    // above are defaults the file may replace.
    if let Some(name) = &o.service_name {
        env.push(json!({"name": names::env::SERVICE_NAME_OVERRIDE, "value": name}));
    }
    if let Some(rate) = o.sampling {
        env.push(json!({"name": names::env::SAMPLING_OVERRIDE, "value": rate.to_string()}));
    }
    if let Some(p) = o.collector_protocol {
        env.push(json!({"name": names::env::COLLECTOR_PROTOCOL_OVERRIDE, "value": p.as_str()}));
    }
    if let Some(on) = o.infer_parents {
        env.push(json!({"name": names::env::INFER_PARENTS_OVERRIDE, "value": on.to_string()}));
    }
    env.push(json!({"name": names::env::LOG_LEVEL, "value": resolved.log_level}));
    if settings.mode == SidecarMode::Native {
        // A native sidecar gets SIGTERM only after the app containers have exited: nothing is
        // left to keep the outbound side open for. Classic mode keeps the proxy's default
        // period, since there the app and the proxy are told to stop at the same time.
        env.push(json!({"name": names::env::DRAIN_PERIOD, "value": "0s"}));
    }
    if resolved.traced_service.is_some() {
        env.push(json!({"name": names::env::CONFIG, "value": config_path()}));
    }

    // The CPU annotation sets request and limit; without it there is no CPU limit, because
    // throttling a proxy adds latency to every request of the app.
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    let cpu = o.proxy_cpu.as_deref();
    requests.insert("cpu", cpu.unwrap_or(&settings.proxy_cpu_request));
    if let Some(cpu) = cpu {
        limits.insert("cpu", cpu);
    }
    let memory = o.proxy_memory.as_deref();
    requests.insert("memory", memory.unwrap_or(&settings.proxy_memory_request));
    limits.insert("memory", memory.unwrap_or(&settings.proxy_memory_limit));

    let http_get = |path: &str| json!({"path": path, "port": settings.admin_port});
    let mut c = json!({
        "name": names::PROXY_CONTAINER_NAME,
        "image": settings.proxy_image,
        "imagePullPolicy": settings.image_pull_policy,
        "ports": [{"name": ADMIN_PORT_NAME, "containerPort": settings.admin_port, "protocol": "TCP"}],
        "env": env,
        "resources": {"requests": requests, "limits": limits},
        "readinessProbe": {"httpGet": http_get(READY_PATH), "periodSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 3},
        "livenessProbe": {"httpGet": http_get(LIVENESS_PATH), "periodSeconds": 10, "timeoutSeconds": 1, "failureThreshold": 3},
        "securityContext": {
            "runAsUser": settings.proxy_uid,
            "runAsGroup": settings.proxy_gid,
            "runAsNonRoot": true,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    match settings.mode {
        SidecarMode::Native => {
            c["restartPolicy"] = json!("Always");
            c["startupProbe"] = json!({"httpGet": http_get(READY_PATH), "periodSeconds": 1,
                "timeoutSeconds": 1, "failureThreshold": STARTUP_FAILURE_THRESHOLD});
        }
        SidecarMode::Classic if !settings.hold_command.is_empty() => {
            c["lifecycle"] = json!({"postStart": {"exec": {"command": settings.hold_command}}});
        }
        SidecarMode::Classic => {}
    }
    if resolved.traced_service.is_some() {
        c["volumeMounts"] = json!([{"name": names::CONFIG_VOLUME_NAME,
            "mountPath": names::CONFIG_MOUNT_PATH, "readOnly": true}]);
    }
    c
}

/// Path of the mounted proxy config file.
pub fn config_path() -> String {
    format!("{}/{}", names::CONFIG_MOUNT_PATH, names::CONFIG_FILE_NAME)
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn add<'t>(tokens: impl IntoIterator<Item = &'t str>, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens),
        value,
    })
}

/// The patch that writes the skip record on a pod the webhook leaves alone, so the operator
/// (which sees pod metadata only) and a person reading the pod know why. Nothing when the
/// reason is not recorded, or when the pod already carries this exact record (a reinvoked
/// webhook must not patch twice).
pub fn record_skip(pod: &Pod, reason: &SkipReason) -> Option<Vec<PatchOperation>> {
    if !reason.is_recorded() {
        return None;
    }
    let value = SkipRecord::of(reason).to_annotation();
    let annotations = pod.metadata.annotations.as_ref();
    if annotations.and_then(|a| a.get(names::SKIP_ANNOTATION)) == Some(&value) {
        return None;
    }
    Some(vec![match annotations {
        Some(_) => add(
            ["metadata", "annotations", names::SKIP_ANNOTATION],
            json!(value),
        ),
        None => add(
            ["metadata", "annotations"],
            json!({ names::SKIP_ANNOTATION: value }),
        ),
    }])
}

/// Replaces each app container's `tcpSocket` probe (liveness, readiness, startup) with the
/// proxy's check of the same port; timing fields are kept. A probe with its own `host` (not
/// the pod) or a named port the container does not declare is left as it is.
fn tcp_probe_rewrites(pod: &Pod, admin_port: u16) -> Vec<PatchOperation> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let mut ops = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        let index = i.to_string();
        for (field, probe) in [
            ("livenessProbe", &c.liveness_probe),
            ("readinessProbe", &c.readiness_probe),
            ("startupProbe", &c.startup_probe),
        ] {
            let Some(probe) = probe else { continue };
            let Some(tcp) = probe.tcp_socket.as_ref().filter(|t| t.host.is_none()) else {
                continue;
            };
            let port = match &tcp.port {
                IntOrString::Int(n) => u16::try_from(*n).ok(),
                IntOrString::String(name) => c
                    .ports
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .and_then(|p| u16::try_from(p.container_port).ok()),
            };
            let Some(port) = port.filter(|p| *p != 0) else {
                continue;
            };
            let Ok(mut value) = serde_json::to_value(probe) else {
                continue;
            };
            if let Some(obj) = value.as_object_mut() {
                obj.remove("tcpSocket");
                obj.insert(
                    "httpGet".into(),
                    json!({"path": format!("{}{port}", names::APP_TCP_PROBE_PATH_PREFIX),
                        "port": admin_port}),
                );
            }
            ops.push(PatchOperation::Replace(json_patch::ReplaceOperation {
                path: PointerBuf::from_tokens(["spec", "containers", index.as_str(), field]),
                value,
            }));
        }
    }
    ops
}

/// The patch operations that inject sidetrace into `pod`, and the status they record.
/// The caller has already decided that the pod is to be injected.
pub fn build(
    pod: &Pod,
    settings: &Settings,
    resolved: &Resolved,
) -> (Vec<PatchOperation>, InjectionStatus) {
    let spec = pod.spec.as_ref();
    let has_init = spec.and_then(|s| s.init_containers.as_ref()).is_some();
    let has_containers = spec.is_some_and(|s| !s.containers.is_empty());
    let has_volumes = spec.and_then(|s| s.volumes.as_ref()).is_some();
    let init = init_container(settings, resolved);
    let proxy = proxy_container(settings, resolved);
    let mut ops = Vec::new();
    let mut status = InjectionStatus {
        mode: settings.mode.as_str(),
        init_containers: vec![names::INIT_CONTAINER_NAME],
        containers: vec![],
        volumes: vec![],
        service_name: resolved.service_name.clone(),
        traced_service: resolved.traced_service.clone(),
        config_map: resolved.config_map(),
    };

    // First, while container indices are still the pod's own (classic mode inserts the proxy
    // at index 0 below).
    ops.extend(tcp_probe_rewrites(pod, settings.admin_port));
    match settings.mode {
        SidecarMode::Native => {
            status.init_containers.push(names::PROXY_CONTAINER_NAME);
            if has_init {
                ops.push(add(["spec", "initContainers", "0"], init));
                ops.push(add(["spec", "initContainers", "1"], proxy));
            } else {
                ops.push(add(["spec", "initContainers"], json!([init, proxy])));
            }
        }
        SidecarMode::Classic => {
            status.containers.push(names::PROXY_CONTAINER_NAME);
            if has_init {
                ops.push(add(["spec", "initContainers", "-"], init));
            } else {
                ops.push(add(["spec", "initContainers"], json!([init])));
            }
            if has_containers {
                ops.push(add(["spec", "containers", "0"], proxy));
            } else {
                ops.push(add(["spec", "containers"], json!([proxy])));
            }
        }
    }

    if let Some(cm) = resolved.config_map() {
        status.volumes.push(names::CONFIG_VOLUME_NAME);
        let volume = json!({"name": names::CONFIG_VOLUME_NAME,
            // Optional: the pod starts even if the operator has not rendered the ConfigMap yet;
            // the kubelet fills the volume when it appears and the proxy hot-reloads it.
            "configMap": {"name": cm, "optional": true}});
        if has_volumes {
            ops.push(add(["spec", "volumes", "-"], volume));
        } else {
            ops.push(add(["spec", "volumes"], json!([volume])));
        }
    }

    let mut new_annotations = BTreeMap::new();
    // serde_json cannot fail on this struct (string keys, plain values).
    let status_json = serde_json::to_string(&status).unwrap_or_default();
    new_annotations.insert(names::STATUS_ANNOTATION, status_json);
    let annotations = pod.metadata.annotations.as_ref();
    if settings.mode == SidecarMode::Classic
        && !annotations.is_some_and(|a| a.contains_key(DEFAULT_CONTAINER_ANNOTATION))
        && let Some(first) = spec.and_then(|s| s.containers.first())
    {
        new_annotations.insert(DEFAULT_CONTAINER_ANNOTATION, first.name.clone());
    }
    // The convention of Prometheus' `kubernetes-pods` scrape job; a pod that already uses it
    // for its app keeps it (one pod, one annotated endpoint).
    if settings.prometheus_annotations
        && !annotations.is_some_and(|a| {
            a.keys()
                .any(|k| k.starts_with(PROMETHEUS_ANNOTATION_PREFIX))
        })
    {
        new_annotations.insert(PROMETHEUS_SCRAPE, "true".to_owned());
        new_annotations.insert(PROMETHEUS_PORT, settings.admin_port.to_string());
        new_annotations.insert(PROMETHEUS_PATH, "/metrics".to_owned());
    }
    match annotations {
        Some(_) => {
            for (k, v) in new_annotations {
                ops.push(add(["metadata", "annotations", k], json!(v)));
            }
        }
        None => ops.push(add(["metadata", "annotations"], json!(new_annotations))),
    }
    (ops, status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved() -> Resolved {
        Resolved {
            service_name: "web".into(),
            collector: sidetrace_contract::defaults::COLLECTOR_ENDPOINT.into(),
            collector_protocol: None,
            workload_attributes: None,
            sampling: 1.0,
            log_level: "info".into(),
            traced_service: None,
            overrides: Overrides::default(),
        }
    }

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    fn paths(ops: &[PatchOperation]) -> Vec<String> {
        ops.iter().map(|op| op.path().to_string()).collect()
    }

    #[test]
    fn absent_arrays_and_maps_are_added_whole_and_keys_escaped() {
        let p = pod(json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "app"}]}}));
        let (ops, _) = build(&p, &Settings::default(), &resolved());
        assert_eq!(
            paths(&ops),
            ["/spec/initContainers", "/metadata/annotations"]
        );
        let p = pod(
            json!({"metadata": {"annotations": {}}, "spec": {"initContainers": [], "volumes": [],
            "containers": [{"name": "app"}]}}),
        );
        let r = Resolved {
            traced_service: Some("ts".into()),
            ..resolved()
        };
        let (ops, status) = build(&p, &Settings::default(), &r);
        assert_eq!(
            paths(&ops),
            [
                "/spec/initContainers/0",
                "/spec/initContainers/1",
                "/spec/volumes/-",
                "/metadata/annotations/prometheus.io~1path",
                "/metadata/annotations/prometheus.io~1port",
                "/metadata/annotations/prometheus.io~1scrape",
                "/metadata/annotations/sidetrace.dev~1status"
            ]
        );
        assert_eq!(status.config_map.as_deref(), Some("sidetrace-ts"));
    }

    #[test]
    fn prometheus_annotations_name_the_admin_port_unless_the_app_uses_them() {
        let added = |p: &Pod, settings: &Settings| {
            let (ops, _) = build(p, settings, &resolved());
            let v = serde_json::to_value(&ops).expect("json");
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|op| {
                    let path = op["path"].as_str()?;
                    if path == "/metadata/annotations" {
                        Some(op["value"].clone())
                    } else {
                        None
                    }
                })
                .next()
                .unwrap_or(Value::Null)
        };
        let plain =
            pod(json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "app"}]}}));
        let a = added(&plain, &Settings::default());
        assert_eq!(a["prometheus.io/scrape"], "true");
        assert_eq!(a["prometheus.io/port"], "15021");
        assert_eq!(a["prometheus.io/path"], "/metrics");
        let off = Settings {
            prometheus_annotations: false,
            ..Settings::default()
        };
        assert!(added(&plain, &off).get("prometheus.io/scrape").is_none());
        let app_scraped = pod(
            json!({"metadata": {"annotations": {"prometheus.io/port": "9100"}},
            "spec": {"containers": [{"name": "app"}]}}),
        );
        let (ops, _) = build(&app_scraped, &Settings::default(), &resolved());
        assert!(
            !paths(&ops).iter().any(|p| p.contains("prometheus.io")),
            "the app's own annotations stay: {:?}",
            paths(&ops)
        );
    }

    #[test]
    fn classic_mode_appends_init_and_prepends_proxy() {
        let settings = Settings {
            mode: SidecarMode::Classic,
            prometheus_annotations: false,
            ..Settings::default()
        };
        let p = pod(
            json!({"metadata": {"annotations": {"x": "y"}}, "spec": {"initContainers": [{"name": "migrate"}],
            "containers": [{"name": "app"}]}}),
        );
        let (ops, status) = build(&p, &settings, &resolved());
        assert_eq!(
            paths(&ops),
            [
                "/spec/initContainers/-",
                "/spec/containers/0",
                "/metadata/annotations/kubectl.kubernetes.io~1default-container",
                "/metadata/annotations/sidetrace.dev~1status"
            ]
        );
        assert_eq!(status.containers, [names::PROXY_CONTAINER_NAME]);
    }

    #[test]
    fn containers_deserialize_as_kubernetes_containers() {
        for mode in [SidecarMode::Native, SidecarMode::Classic] {
            let settings = Settings {
                mode,
                ..Settings::default()
            };
            let r = Resolved {
                traced_service: Some("ts".into()),
                sampling: 0.5,
                ..resolved()
            };
            for c in [
                init_container(&settings, &r),
                proxy_container(&settings, &r),
            ] {
                let typed: k8s_openapi::api::core::v1::Container =
                    serde_json::from_value(c.clone()).expect("valid container");
                assert_eq!(serde_json::to_value(&typed).expect("json"), c);
            }
        }
    }

    #[test]
    fn the_infer_parents_annotation_reaches_the_proxy_as_its_override() {
        let env = |r: &Resolved| {
            proxy_container(&Settings::default(), r)["env"]
                .as_array()
                .expect("env")
                .iter()
                .find(|e| e["name"] == names::env::INFER_PARENTS_OVERRIDE)
                .map(|e| e["value"].clone())
        };
        assert_eq!(env(&resolved()), None, "absent: the TracedService decides");
        for on in [true, false] {
            let mut r = resolved();
            r.overrides.infer_parents = Some(on);
            assert_eq!(env(&r), Some(Value::from(on.to_string())));
        }
    }

    #[test]
    fn admin_port_is_always_excluded_once() {
        let mut r = resolved();
        r.overrides.exclude_inbound_ports = vec![15021, 9090];
        let c = init_container(&Settings::default(), &r);
        let args: Vec<&str> = c["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let i = args
            .iter()
            .position(|a| *a == "--exclude-inbound-ports")
            .expect("flag");
        assert_eq!(args[i + 1], "15021,9090");
        assert!(!args.contains(&"--exclude-outbound-ports"));
    }
}

//! Should this pod be injected? A pure function over the pod, its namespace and the namespace's
//! labels, returning the reason either way so that logs, metrics and the admission response can
//! say why.
//!
//! The model is Istio's: the namespace label `sidetrace.dev/inject=enabled` turns injection on;
//! the pod label `sidetrace.dev/inject=false` opts a pod out, `=true` opts it in where the
//! namespace carries no label. The MutatingWebhookConfiguration's selectors already filter, but
//! the webhook checks again so that it is safe under any configuration (a hand-written or
//! over-broad webhook registration must never inject into kube-system).

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use sidetrace_contract::names;

/// Namespaces that are never injected, whatever their labels say: the cluster's own machinery.
pub const SYSTEM_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];

/// Why a pod is injected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InjectReason {
    /// The namespace carries `sidetrace.dev/inject=enabled`.
    NamespaceEnabled,
    /// The pod carries `sidetrace.dev/inject=true` and the namespace has no injection label.
    PodOptIn,
    /// The namespace's labels are not known to the webhook (no cluster watch, or the namespace
    /// is not in the cache yet); the webhook registration's selectors sent this pod here.
    SelectedByWebhookConfiguration,
}

/// Why a pod is left alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The pod already carries the sidecar or the status annotation (reinvocation).
    AlreadyInjected,
    /// kube-system, kube-public or kube-node-lease.
    SystemNamespace(String),
    /// The namespace the sidetrace control plane runs in.
    ControlPlaneNamespace(String),
    /// The pod shares the node's network namespace: iptables rules would capture the node.
    HostNetwork,
    /// The pod already carries another mesh's proxy.
    ForeignProxy(String),
    /// The pod carries `sidetrace.dev/inject=false`.
    PodOptOut,
    /// The namespace carries `sidetrace.dev/inject` with a value other than `enabled`.
    NamespaceDisabled(String),
    /// Neither the namespace nor the pod asks for injection.
    NotEnabled,
    /// The namespace enforces a Pod Security level (baseline, restricted) that rejects the
    /// init container: the injected pod would be refused, the plain one is admitted.
    PodSecurity(String),
    /// The pod has no spec or no containers (it will fail validation anyway).
    NoContainers,
}

/// The verdict with its reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Inject the init container and the sidecar.
    Inject(InjectReason),
    /// Leave the pod unchanged.
    Skip(SkipReason),
}

impl InjectReason {
    /// Short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NamespaceEnabled => "namespace-enabled",
            Self::PodOptIn => "pod-opt-in",
            Self::SelectedByWebhookConfiguration => "webhook-selector",
        }
    }
}

impl SkipReason {
    /// Short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::AlreadyInjected => "already-injected",
            Self::SystemNamespace(_) => "system-namespace",
            Self::ControlPlaneNamespace(_) => "control-plane-namespace",
            Self::HostNetwork => "host-network",
            Self::ForeignProxy(_) => "foreign-proxy",
            Self::PodOptOut => "pod-opt-out",
            Self::NamespaceDisabled(_) => "namespace-disabled",
            Self::NotEnabled => "not-enabled",
            Self::PodSecurity(_) => "pod-security",
            Self::NoContainers => "no-containers",
        }
    }
}

impl fmt::Display for InjectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NamespaceEnabled => write!(
                f,
                "namespace is labelled {}={}",
                names::INJECT_LABEL,
                names::INJECT_NAMESPACE_ENABLED
            ),
            Self::PodOptIn => write!(f, "pod is labelled {}=true", names::INJECT_LABEL),
            Self::SelectedByWebhookConfiguration => f.write_str(
                "namespace labels unknown to the webhook; trusting the webhook configuration's selectors",
            ),
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyInjected => f.write_str("pod is already injected"),
            Self::SystemNamespace(ns) => write!(f, "namespace {ns} is a system namespace"),
            Self::ControlPlaneNamespace(ns) => {
                write!(f, "namespace {ns} runs the sidetrace control plane")
            }
            Self::HostNetwork => f.write_str("pod uses the host network"),
            Self::ForeignProxy(c) => write!(f, "pod already carries the {c} mesh proxy"),
            Self::PodOptOut => write!(f, "pod is labelled {}=false", names::INJECT_LABEL),
            Self::NamespaceDisabled(v) => {
                write!(f, "namespace is labelled {}={v}", names::INJECT_LABEL)
            }
            Self::NoContainers => f.write_str("pod has no containers"),
            Self::PodSecurity(level) => write!(
                f,
                "namespace enforces Pod Security level {level:?} ({}), which rejects \
                 sidetrace-init (it runs as root with NET_ADMIN and NET_RAW); not injected so \
                 the pod still starts. To trace it, enforce \"privileged\" on this namespace",
                names::POD_SECURITY_ENFORCE_LABEL
            ),
            Self::NotEnabled => write!(
                f,
                "neither the namespace ({}={}) nor the pod ({}=true) asks for injection",
                names::INJECT_LABEL,
                names::INJECT_NAMESPACE_ENABLED,
                names::INJECT_LABEL
            ),
        }
    }
}

/// Names of every container (init, regular, ephemeral) in the pod.
fn container_names(pod: &Pod) -> impl Iterator<Item = &str> {
    let spec = pod.spec.as_ref();
    let init = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|c| c.name.as_str());
    let regular = spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| c.name.as_str());
    init.chain(regular)
}

/// True when the pod already carries what the webhook injects.
pub fn is_injected(pod: &Pod) -> bool {
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(names::STATUS_ANNOTATION));
    annotated
        || container_names(pod)
            .any(|n| n == names::PROXY_CONTAINER_NAME || n == names::INIT_CONTAINER_NAME)
}

/// Decides whether `pod`, created in `namespace`, gets the sidecar.
///
/// `namespace_labels` is `None` when the webhook does not know them (no cluster access or a
/// namespace not yet in the cache); the decision then trusts the webhook registration's
/// selectors, which is what sent the request here, and only the pod's own opt-out applies.
pub fn decide(
    pod: &Pod,
    namespace: &str,
    namespace_labels: Option<&BTreeMap<String, String>>,
    control_plane_namespace: &str,
) -> Decision {
    // Checked first: a reinvoked webhook must always see "already injected", whatever else
    // changed, so that a second pass never patches.
    if is_injected(pod) {
        return Decision::Skip(SkipReason::AlreadyInjected);
    }
    if pod.spec.as_ref().is_none_or(|s| s.containers.is_empty()) {
        return Decision::Skip(SkipReason::NoContainers);
    }
    if SYSTEM_NAMESPACES.contains(&namespace) {
        return Decision::Skip(SkipReason::SystemNamespace(namespace.to_owned()));
    }
    if namespace == control_plane_namespace {
        return Decision::Skip(SkipReason::ControlPlaneNamespace(namespace.to_owned()));
    }
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
    {
        return Decision::Skip(SkipReason::HostNetwork);
    }
    if let Some(foreign) =
        container_names(pod).find(|n| names::FOREIGN_PROXY_CONTAINERS.contains(n))
    {
        return Decision::Skip(SkipReason::ForeignProxy(foreign.to_owned()));
    }
    let pod_label = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(names::INJECT_LABEL))
        .map(String::as_str);
    if pod_label == Some("false") {
        return Decision::Skip(SkipReason::PodOptOut);
    }
    let Some(ns_labels) = namespace_labels else {
        return Decision::Inject(InjectReason::SelectedByWebhookConfiguration);
    };
    let verdict = match ns_labels.get(names::INJECT_LABEL).map(String::as_str) {
        Some(names::INJECT_NAMESPACE_ENABLED) => Decision::Inject(InjectReason::NamespaceEnabled),
        // An explicit namespace value other than "enabled" (e.g. "disabled") wins over a pod's
        // opt-in, as in Istio: the namespace owner has the last word.
        Some(other) => Decision::Skip(SkipReason::NamespaceDisabled(other.to_owned())),
        None if pod_label == Some("true") => Decision::Inject(InjectReason::PodOptIn),
        None => Decision::Skip(SkipReason::NotEnabled),
    };
    // Pod Security is checked after mutation: injecting where the level forbids the init
    // container turns an admitted pod into a refused one, which failurePolicy cannot undo.
    match (&verdict, ns_labels.get(names::POD_SECURITY_ENFORCE_LABEL)) {
        (Decision::Inject(_), Some(level))
            if names::POD_SECURITY_LEVELS_REJECTING_INIT.contains(&level.as_str()) =>
        {
            Decision::Skip(SkipReason::PodSecurity(level.clone()))
        }
        _ => verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod fixture")
    }

    fn plain() -> Pod {
        pod(
            json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app", "image": "app"}]}}),
        )
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn enabled() -> BTreeMap<String, String> {
        labels(&[(names::INJECT_LABEL, names::INJECT_NAMESPACE_ENABLED)])
    }

    const CP: &str = "sidetrace-system";

    #[test]
    fn labelled_namespace_injects() {
        assert_eq!(
            decide(&plain(), "shop", Some(&enabled()), CP),
            Decision::Inject(InjectReason::NamespaceEnabled)
        );
    }

    #[test]
    fn unlabelled_namespace_needs_pod_opt_in() {
        let none = BTreeMap::new();
        assert_eq!(
            decide(&plain(), "shop", Some(&none), CP),
            Decision::Skip(SkipReason::NotEnabled)
        );
        let mut p = plain();
        p.metadata.labels = Some(labels(&[(names::INJECT_LABEL, "true")]));
        assert_eq!(
            decide(&p, "shop", Some(&none), CP),
            Decision::Inject(InjectReason::PodOptIn)
        );
        // A namespace that says no wins over the pod's opt-in.
        let disabled = labels(&[(names::INJECT_LABEL, "disabled")]);
        assert_eq!(
            decide(&p, "shop", Some(&disabled), CP),
            Decision::Skip(SkipReason::NamespaceDisabled("disabled".into()))
        );
    }

    #[test]
    fn pod_opt_out_wins_over_namespace_and_unknown_labels() {
        let mut p = plain();
        p.metadata.labels = Some(labels(&[(names::INJECT_LABEL, "false")]));
        assert_eq!(
            decide(&p, "shop", Some(&enabled()), CP),
            Decision::Skip(SkipReason::PodOptOut)
        );
        assert_eq!(
            decide(&p, "shop", None, CP),
            Decision::Skip(SkipReason::PodOptOut)
        );
        assert_eq!(
            decide(&plain(), "shop", None, CP),
            Decision::Inject(InjectReason::SelectedByWebhookConfiguration)
        );
    }

    #[test]
    fn system_and_control_plane_namespaces_are_never_injected() {
        for ns in ["kube-system", "kube-public"] {
            assert_eq!(
                decide(&plain(), ns, Some(&enabled()), CP),
                Decision::Skip(SkipReason::SystemNamespace(ns.into()))
            );
        }
        assert_eq!(
            decide(&plain(), CP, Some(&enabled()), CP),
            Decision::Skip(SkipReason::ControlPlaneNamespace(CP.into()))
        );
    }

    #[test]
    fn host_network_foreign_proxy_and_injected_pods_are_skipped() {
        let hn = pod(
            json!({"metadata": {}, "spec": {"hostNetwork": true, "containers": [{"name": "a"}]}}),
        );
        assert_eq!(
            decide(&hn, "shop", Some(&enabled()), CP),
            Decision::Skip(SkipReason::HostNetwork)
        );
        for proxy in names::FOREIGN_PROXY_CONTAINERS {
            let p = pod(
                json!({"metadata": {}, "spec": {"containers": [{"name": "a"}, {"name": proxy}]}}),
            );
            assert_eq!(
                decide(&p, "shop", Some(&enabled()), CP),
                Decision::Skip(SkipReason::ForeignProxy((*proxy).into()))
            );
        }
        let native = pod(json!({"metadata": {}, "spec": {
            "initContainers": [{"name": names::PROXY_CONTAINER_NAME}], "containers": [{"name": "a"}]}}));
        assert_eq!(
            decide(&native, "shop", Some(&enabled()), CP),
            Decision::Skip(SkipReason::AlreadyInjected)
        );
        let annotated = pod(
            json!({"metadata": {"annotations": {names::STATUS_ANNOTATION: "{}"}},
            "spec": {"containers": [{"name": "a"}]}}),
        );
        assert_eq!(
            decide(&annotated, "kube-system", None, CP),
            Decision::Skip(SkipReason::AlreadyInjected)
        );
    }

    #[test]
    fn reasons_have_labels_and_messages() {
        let d = SkipReason::ForeignProxy("istio-proxy".into());
        assert_eq!(d.label(), "foreign-proxy");
        assert!(d.to_string().contains("istio-proxy"));
        assert!(
            InjectReason::PodOptIn
                .to_string()
                .contains("sidetrace.dev/inject=true")
        );
    }

    #[test]
    fn namespaces_enforcing_baseline_or_restricted_are_not_injected() {
        for level in ["baseline", "restricted"] {
            let ns = labels(&[
                (names::INJECT_LABEL, "enabled"),
                (names::POD_SECURITY_ENFORCE_LABEL, level),
            ]);
            let d = decide(&plain(), "shop", Some(&ns), "sidetrace-system");
            assert_eq!(d, Decision::Skip(SkipReason::PodSecurity(level.into())));
            if let Decision::Skip(r) = d {
                assert_eq!(r.label(), "pod-security");
                let text = r.to_string();
                assert!(
                    text.contains(level) && text.contains("privileged"),
                    "{text}"
                );
            }
        }
        let ns = labels(&[
            (names::INJECT_LABEL, "enabled"),
            (names::POD_SECURITY_ENFORCE_LABEL, "privileged"),
        ]);
        assert!(matches!(
            decide(&plain(), "shop", Some(&ns), "sidetrace-system"),
            Decision::Inject(_)
        ));
    }
}

//! The webhook's side of the injection decision: the facts of the pod it admits, handed to the
//! one rule in `sidetrace_contract::injection` that the operator applies too.
//!
//! The MutatingWebhookConfiguration's selectors already filter, but the webhook checks again so
//! that it is safe under any configuration (a hand-written or over-broad webhook registration
//! must never inject into kube-system).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use sidetrace_contract::names;

use sidetrace_contract::injection::{self, PodFacts};
pub use sidetrace_contract::injection::{Decision, InjectReason, SYSTEM_NAMESPACES, SkipReason};

/// Names of every container (init, regular) in the pod.
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

/// The facts of `pod`, created in `namespace`, that the decision reads.
pub fn facts<'a>(pod: &'a Pod, namespace: &'a str) -> PodFacts<'a> {
    let spec = pod.spec.as_ref();
    PodFacts {
        namespace,
        inject_label: pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(names::INJECT_LABEL))
            .map(String::as_str),
        injected: is_injected(pod),
        no_containers: spec.is_none_or(|s| s.containers.is_empty()),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        foreign_proxy: container_names(pod).find(|n| names::FOREIGN_PROXY_CONTAINERS.contains(n)),
    }
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
    injection::decide(
        &facts(pod, namespace),
        namespace_labels,
        control_plane_namespace,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod fixture")
    }

    fn enabled() -> BTreeMap<String, String> {
        [(
            names::INJECT_LABEL.to_owned(),
            names::INJECT_NAMESPACE_ENABLED.to_owned(),
        )]
        .into()
    }

    const CP: &str = "sidetrace-system";

    /// The pod-spec facts reach the shared rule (the rule itself is tested in `contract`).
    #[test]
    fn facts_come_from_the_whole_pod() {
        let plain = pod(
            json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app", "image": "app"}]}}),
        );
        assert_eq!(
            decide(&plain, "shop", Some(&enabled()), CP),
            Decision::Inject(InjectReason::NamespaceEnabled)
        );
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
        let empty = pod(json!({"metadata": {}, "spec": {"containers": []}}));
        assert_eq!(
            decide(&empty, "shop", Some(&enabled()), CP),
            Decision::Skip(SkipReason::NoContainers)
        );
        let opted_out = pod(
            json!({"metadata": {"labels": {names::INJECT_LABEL: "false"}}, "spec": {"containers": [{"name": "a"}]}}),
        );
        assert_eq!(
            decide(&opted_out, "shop", None, CP),
            Decision::Skip(SkipReason::PodOptOut)
        );
    }
}

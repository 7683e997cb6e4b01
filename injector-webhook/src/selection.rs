//! Which TracedService applies to a pod, and what the pod is called in spans when nothing says.
//!
//! Candidates are the TracedServices of the pod's namespace (from the watched cache). Their
//! label selectors are matched with Kubernetes semantics (`matchLabels` plus `matchExpressions`
//! with `In`, `NotIn`, `Exists`, `DoesNotExist`; [`sidetrace_crds::selection`], shared with the
//! operator). When several match, the oldest (creationTimestamp, then name) wins so that the
//! choice is stable across webhook replicas and restarts, and the conflict is reported as an
//! admission warning.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use sidetrace_crds::TracedService;

/// Label whose value is the ReplicaSet's hash suffix on Deployment pods.
const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// Labels that name the application, in order of preference (the recommended label first).
const NAME_LABELS: &[&str] = &["app.kubernetes.io/name", "app"];

pub use sidetrace_crds::selection::selector_matches;

/// The TracedService chosen for a pod, and a warning when there was a conflict.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// The winner, if any matched.
    pub traced_service: Option<TracedService>,
    /// Set when more than one matched.
    pub warning: Option<String>,
}

/// Picks the TracedService for a pod with `labels` in `namespace` among `candidates` (which may
/// include other namespaces; they are filtered out). Matching and precedence are the CRD
/// crate's, shared with the operator so that both agree on who wins a conflict.
pub fn select(
    candidates: &[Arc<TracedService>],
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Selection {
    let matched =
        sidetrace_crds::selection::matching(candidates.iter().map(Arc::as_ref), namespace, labels);
    let warning = (matched.len() > 1).then(|| {
        let all: Vec<String> = matched.iter().map(|ts| ts.name_any()).collect();
        format!(
            "pod matches {} TracedServices ({}); using {}, the oldest",
            all.len(),
            all.join(", "),
            all[0]
        )
    });
    Selection {
        traced_service: matched.first().map(|ts| (*ts).clone()),
        warning,
    }
}

/// The service name a pod gets when neither an annotation nor a TracedService names it:
/// `app.kubernetes.io/name`, then `app`, then the controlling owner's name (a ReplicaSet's
/// minus its pod-template hash, i.e. the Deployment's), then `generateName` likewise, then the
/// pod's name, then the namespace.
pub fn default_service_name(pod: &Pod, namespace: &str) -> String {
    let labels = pod.metadata.labels.as_ref();
    if let Some(name) = NAME_LABELS
        .iter()
        .filter_map(|l| labels.and_then(|m| m.get(*l)))
        .map(|v| v.trim())
        .find(|v| !v.is_empty())
    {
        return name.to_owned();
    }
    let hash = labels
        .and_then(|m| m.get(POD_TEMPLATE_HASH_LABEL))
        .map(String::as_str);
    let owners = pod.metadata.owner_references.as_deref().unwrap_or_default();
    let owner = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first());
    if let Some(owner) = owner.filter(|o| !o.name.is_empty()) {
        if owner.kind == "ReplicaSet" {
            return strip_hash(&owner.name, hash);
        }
        return owner.name.clone();
    }
    if let Some(generate) = pod
        .metadata
        .generate_name
        .as_deref()
        .map(|g| g.trim_end_matches('-'))
        .filter(|g| !g.is_empty())
    {
        return strip_hash(generate, hash);
    }
    match pod.metadata.name.as_deref() {
        Some(n) if !n.is_empty() => n.to_owned(),
        _ => namespace.to_owned(),
    }
}

/// `web-7d9c8b5f4` → `web`: removes the pod-template hash when the label says which it is,
/// otherwise the last dash-separated segment (ReplicaSets always end in one).
fn strip_hash(name: &str, hash: Option<&str>) -> String {
    if let Some(stripped) = hash.and_then(|h| name.strip_suffix(h)?.strip_suffix('-')) {
        return stripped.to_owned();
    }
    match name.rsplit_once('-') {
        Some((base, _)) if !base.is_empty() => base.to_owned(),
        _ => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn selector(
        v: serde_json::Value,
    ) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        serde_json::from_value(v).expect("selector")
    }

    fn ts(
        ns: &str,
        name: &str,
        created: Option<&str>,
        sel: serde_json::Value,
    ) -> Arc<TracedService> {
        let mut meta = json!({"name": name, "namespace": ns});
        if let Some(c) = created {
            meta["creationTimestamp"] = json!(c);
        }
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "sidetrace.dev/v1alpha1", "kind": "TracedService",
                "metadata": meta, "spec": {"selector": sel}
            }))
            .expect("traced service"),
        )
    }

    #[test]
    fn match_labels_and_expressions() {
        let pod = labels(&[("app", "web"), ("tier", "front"), ("track", "stable")]);
        let cases = [
            (json!({"matchLabels": {"app": "web"}}), true),
            (json!({"matchLabels": {"app": "api"}}), false),
            (
                json!({"matchLabels": {"app": "web", "tier": "front"}}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "edge"]}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["back"]}]}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "missing", "operator": "In", "values": ["x"]}]}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "track", "operator": "NotIn", "values": ["canary"]}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "track", "operator": "NotIn", "values": ["stable"]}]}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "missing", "operator": "NotIn", "values": ["x"]}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "app", "operator": "Exists"}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "missing", "operator": "Exists"}]}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "missing", "operator": "DoesNotExist"}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "app", "operator": "Bogus"}]}),
                false,
            ),
            (
                json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}),
                false,
            ),
            (json!({}), false),
            (json!({"matchLabels": {}}), false),
        ];
        for (sel, want) in cases {
            assert_eq!(
                selector_matches(&selector(sel.clone()), &pod),
                want,
                "{sel}"
            );
        }
    }

    #[test]
    fn oldest_wins_then_name_and_conflict_is_reported() {
        let sel = json!({"matchLabels": {"app": "web"}});
        let candidates = vec![
            ts("shop", "newer", Some("2026-01-02T00:00:00Z"), sel.clone()),
            ts(
                "shop",
                "b-oldest",
                Some("2026-01-01T00:00:00Z"),
                sel.clone(),
            ),
            ts(
                "shop",
                "a-oldest",
                Some("2026-01-01T00:00:00Z"),
                sel.clone(),
            ),
            ts(
                "other",
                "elsewhere",
                Some("2020-01-01T00:00:00Z"),
                sel.clone(),
            ),
            ts(
                "shop",
                "unrelated",
                Some("2019-01-01T00:00:00Z"),
                json!({"matchLabels": {"app": "api"}}),
            ),
        ];
        let s = select(&candidates, "shop", &labels(&[("app", "web")]));
        assert_eq!(
            s.traced_service.map(|t| t.name_any()).as_deref(),
            Some("a-oldest")
        );
        let w = s.warning.expect("conflict warning");
        assert_eq!(
            w,
            "pod matches 3 TracedServices (a-oldest, b-oldest, newer); using a-oldest, the oldest"
        );
        // The order of the cache does not matter.
        let mut reversed = candidates.clone();
        reversed.reverse();
        let s2 = select(&reversed, "shop", &labels(&[("app", "web")]));
        assert_eq!(
            s2.traced_service.map(|t| t.name_any()).as_deref(),
            Some("a-oldest")
        );
    }

    #[test]
    fn single_match_has_no_warning_and_no_match_is_empty() {
        let candidates = vec![ts(
            "shop",
            "only",
            None,
            json!({"matchLabels": {"app": "web"}}),
        )];
        let s = select(&candidates, "shop", &labels(&[("app", "web")]));
        assert!(s.traced_service.is_some() && s.warning.is_none());
        let s = select(&candidates, "shop", &labels(&[("app", "api")]));
        assert!(s.traced_service.is_none() && s.warning.is_none());
    }

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    #[test]
    fn service_name_defaults() {
        let cases = [
            (
                json!({"labels": {"app.kubernetes.io/name": "shop", "app": "x"}}),
                "shop",
            ),
            (json!({"labels": {"app": "cart"}}), "cart"),
            (
                json!({"labels": {"pod-template-hash": "7d9c8b5f4"}, "generateName": "web-7d9c8b5f4-",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9c8b5f4", "uid": "u", "controller": true}]}),
                "web",
            ),
            (
                json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "my-api-5f6b", "uid": "u"}]}),
                "my-api",
            ),
            (
                json!({"ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "backup-28472910", "uid": "u", "controller": true}]}),
                "backup-28472910",
            ),
            (
                json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u", "controller": true}]}),
                "db",
            ),
            (json!({"generateName": "worker-", "labels": {}}), "worker"),
            (
                json!({"generateName": "web-abc12-", "labels": {"pod-template-hash": "abc12"}}),
                "web",
            ),
            (json!({"name": "standalone"}), "standalone"),
            (json!({}), "shop-ns"),
        ];
        for (meta, want) in cases {
            let p = pod(json!({"metadata": meta, "spec": {"containers": []}}));
            assert_eq!(default_service_name(&p, "shop-ns"), want, "{meta}");
        }
    }
}

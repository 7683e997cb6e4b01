//! AdmissionReview in, AdmissionReview out: the HTTP-free heart of `POST /mutate`.
//!
//! Anything that is not a readable AdmissionReview is an error (HTTP 400 with the reason).
//! Everything else is answered `allowed: true` — a tracing add-on never blocks a workload — with
//! a JSON Patch when the pod is injected, and warnings the apiserver hands to the client.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use sidetrace_crds::TracedService;

use crate::decision::Decision;
use crate::error::{Error, Result};
use crate::mutate::{self, PodContext};
use crate::settings::Settings;

/// What the webhook knows about the cluster: namespace labels and TracedServices, from watched
/// caches in production and from fixed data in tests.
pub trait ClusterView: Send + Sync {
    /// Labels of `namespace`; `None` when unknown.
    fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>>;
    /// Every cached TracedService (all namespaces).
    fn traced_services(&self) -> Vec<Arc<TracedService>>;
}

/// A fixed [`ClusterView`]: used when the webhook runs without cluster access, and in tests.
#[derive(Clone, Debug, Default)]
pub struct StaticView {
    /// Namespace labels by namespace; `None` means every namespace's labels are unknown.
    pub namespaces: Option<BTreeMap<String, BTreeMap<String, String>>>,
    /// TracedServices.
    pub traced_services: Vec<Arc<TracedService>>,
}

impl ClusterView for StaticView {
    fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.namespaces.as_ref()?.get(namespace).cloned()
    }
    fn traced_services(&self) -> Vec<Arc<TracedService>> {
        self.traced_services.clone()
    }
}

/// How an admission ended, for metrics and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Patched.
    Injected,
    /// A pod the decision left alone (label of the skip reason).
    Skipped(&'static str),
    /// Not a Pod (the registration should not send these).
    NotPod,
    /// A Pod operation other than CREATE.
    NotCreate,
    /// A Pod object the webhook could not read; allowed unchanged with a warning.
    UnreadablePod,
}

impl Outcome {
    /// Short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Skipped(_) => "skipped",
            Self::NotPod => "not-pod",
            Self::NotCreate => "not-create",
            Self::UnreadablePod => "unreadable-pod",
        }
    }
}

/// The answer to one review.
#[derive(Debug)]
pub struct Reviewed {
    /// The AdmissionReview response, serialised.
    pub body: Vec<u8>,
    /// How it ended.
    pub outcome: Outcome,
    /// Why, in words (the decision's reason), for the log.
    pub reason: String,
    /// Warnings sent back.
    pub warnings: Vec<String>,
    /// The request's uid, for the log.
    pub uid: String,
}

/// Answers one AdmissionReview body.
pub fn review(body: &[u8], view: &dyn ClusterView, settings: &Settings) -> Result<Reviewed> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)
        .map_err(|e| Error::BadReview(format!("body is not an AdmissionReview: {e}")))?;
    let request: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| Error::BadReview("AdmissionReview has no request".into()))?;
    let mut response = AdmissionResponse::from(&request);
    let uid = request.uid.clone();
    let done =
        |mut response: AdmissionResponse, outcome, reason: String, warnings| -> Result<Reviewed> {
            // kube serialises `patch` (a Vec<u8>) as an array of numbers; the API defines it
            // as []byte, which Go's JSON encodes as base64, so write it that way.
            let patch = response.patch.take();
            let mut value = serde_json::to_value(response.into_review())
                .map_err(|e| Error::BadReview(format!("response does not serialise: {e}")))?;
            if let (Some(patch), Some(obj)) = (
                patch,
                value.get_mut("response").and_then(|r| r.as_object_mut()),
            ) {
                obj.insert("patch".into(), BASE64.encode(patch).into());
            }
            let body = serde_json::to_vec(&value)
                .map_err(|e| Error::BadReview(format!("response does not serialise: {e}")))?;
            Ok(Reviewed {
                body,
                outcome,
                reason,
                warnings,
                uid: uid.clone(),
            })
        };

    let kind = &request.kind;
    if !(kind.group.is_empty() && kind.kind == "Pod") {
        let reason = format!("kind {}/{} is not a Pod", kind.group, kind.kind);
        return done(response, Outcome::NotPod, reason, vec![]);
    }
    if request.operation != Operation::Create {
        let reason = format!("operation {:?} is not CREATE", request.operation);
        return done(response, Outcome::NotCreate, reason, vec![]);
    }
    let pod: Pod = match request
        .object
        .as_ref()
        .map(|o| serde_json::to_value(o).and_then(serde_json::from_value))
    {
        Some(Ok(pod)) => pod,
        Some(Err(e)) => {
            let warning =
                format!("sidetrace: pod not injected, the webhook could not read it: {e}");
            response.warnings = Some(vec![warning.clone()]);
            return done(
                response,
                Outcome::UnreadablePod,
                e.to_string(),
                vec![warning],
            );
        }
        None => {
            return done(
                response,
                Outcome::UnreadablePod,
                "request has no object".into(),
                vec![],
            );
        }
    };
    let namespace = request
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_else(|| "default".to_owned());
    let labels = view.namespace_labels(&namespace);
    let traced = view.traced_services();
    let ctx = PodContext {
        namespace: &namespace,
        namespace_labels: labels.as_ref(),
        traced_services: &traced,
    };
    let m = mutate::mutate(&pod, ctx, settings);
    let (outcome, reason) = match &m.decision {
        Decision::Inject(r) => (Outcome::Injected, r.to_string()),
        Decision::Skip(r) => (Outcome::Skipped(r.label()), r.to_string()),
    };
    response.audit_annotations.insert(
        "decision".into(),
        match &m.decision {
            Decision::Inject(r) => r.label().to_owned(),
            Decision::Skip(r) => r.label().to_owned(),
        },
    );
    if let Some(patch) = m.patch {
        response = response
            .with_patch(patch)
            .map_err(|e| Error::BadReview(format!("patch does not serialise: {e}")))?;
    }
    if !m.warnings.is_empty() {
        response.warnings = Some(m.warnings.clone());
    }
    done(response, outcome, reason, m.warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use sidetrace_contract::names;

    fn body(operation: &str, kind: &str, namespace: &str, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u-1", "kind": {"group": "", "version": "v1", "kind": kind},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": namespace, "operation": operation, "userInfo": {},
                "object": object, "oldObject": null
            }
        }))
        .expect("json")
    }

    fn pod() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "web"}]}})
    }

    fn response(r: &Reviewed) -> Value {
        let v: Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        assert_eq!(v["response"]["uid"], "u-1");
        assert_eq!(v["response"]["allowed"], true);
        v["response"].clone()
    }

    fn view(ns_labels: &[(&str, &str)]) -> StaticView {
        let labels = ns_labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        StaticView {
            namespaces: Some([("shop".to_owned(), labels)].into()),
            traced_services: vec![],
        }
    }

    #[test]
    fn injected_pod_gets_a_base64_patch_and_audit_decision() {
        let v = view(&[(names::INJECT_LABEL, names::INJECT_NAMESPACE_ENABLED)]);
        let r = review(
            &body("CREATE", "Pod", "shop", pod()),
            &v,
            &Settings::default(),
        )
        .expect("review");
        assert_eq!(r.outcome, Outcome::Injected);
        let resp = response(&r);
        assert_eq!(resp["patchType"], "JSONPatch");
        let patch = BASE64
            .decode(resp["patch"].as_str().expect("string"))
            .expect("base64");
        let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("patch");
        assert!(!patch.0.is_empty());
        assert_eq!(resp["auditAnnotations"]["decision"], "namespace-enabled");
    }

    #[test]
    fn a_pod_left_alone_gets_only_the_skip_record() {
        let r = review(
            &body("CREATE", "Pod", "shop", pod()),
            &view(&[]),
            &Settings::default(),
        )
        .expect("review");
        assert_eq!(r.outcome, Outcome::Skipped("not-enabled"));
        let resp = response(&r);
        let patch = BASE64
            .decode(resp["patch"].as_str().expect("string"))
            .expect("base64");
        let patch: Value = serde_json::from_slice(&patch).expect("patch");
        assert_eq!(patch.as_array().map(Vec::len), Some(1), "{patch}");
        assert_eq!(patch[0]["path"], "/metadata/annotations");
        let record = patch[0]["value"][names::SKIP_ANNOTATION]
            .as_str()
            .expect("record");
        assert!(record.contains("\"not-enabled\""), "{record}");
        // kube-system pods are never touched, not even by a record.
        let r = review(
            &body("CREATE", "Pod", "kube-system", pod()),
            &view(&[]),
            &Settings::default(),
        )
        .expect("review");
        assert!(response(&r).get("patch").is_none());
    }

    #[test]
    fn deletes_non_pods_and_unreadable_pods_are_allowed_unchanged() {
        let s = Settings::default();
        let v = StaticView::default();
        let r = review(&body("DELETE", "Pod", "shop", Value::Null), &v, &s).expect("review");
        assert_eq!(r.outcome, Outcome::NotCreate);
        assert!(response(&r).get("patch").is_none());
        let r = review(
            &body("CREATE", "Service", "shop", json!({"metadata": {}})),
            &v,
            &s,
        )
        .expect("review");
        assert_eq!(r.outcome, Outcome::NotPod);
        let broken = json!({"metadata": {}, "spec": {"containers": [{"name": 5}]}});
        let r = review(&body("CREATE", "Pod", "shop", broken), &v, &s).expect("review");
        assert_eq!(r.outcome, Outcome::UnreadablePod);
        let resp = response(&r);
        assert!(
            resp["warnings"][0]
                .as_str()
                .expect("warning")
                .contains("could not read")
        );
    }

    #[test]
    fn bodies_that_are_not_reviews_are_errors() {
        let s = Settings::default();
        let v = StaticView::default();
        for bad in [&b""[..], b"{}", b"[1]", b"{\"request\": 5}"] {
            let e = review(bad, &v, &s).expect_err("must fail");
            assert_eq!(e.metric_label(), "bad-review");
        }
    }
}

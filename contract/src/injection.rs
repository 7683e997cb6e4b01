//! Should a pod carry the sidecar? One rule, used by the webhook at admission (over the whole
//! pod) and by the operator afterwards (over pod metadata plus what the webhook recorded), so
//! that the two can never disagree about a pod.
//!
//! The model is Istio's: the namespace label `sidetrace.dev/inject=enabled` turns injection on;
//! the pod label `sidetrace.dev/inject=false` opts a pod out, `=true` opts it in where the
//! namespace carries no label. Some facts live only in the pod spec (host network, another
//! mesh's proxy), which the operator does not watch: the webhook writes its verdict on every
//! pod it leaves alone into [`SKIP_ANNOTATION`](crate::names::SKIP_ANNOTATION), and
//! [`SkipRecord`] turns that back into facts.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names;

/// Namespaces that are never injected, whatever their labels say: the cluster's own machinery.
pub const SYSTEM_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];

/// What the decision needs to know about a pod. The webhook fills every field from the pod it
/// admits; the operator fills the spec-only ones from the webhook's [`SkipRecord`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodFacts<'a> {
    /// Namespace the pod lives in.
    pub namespace: &'a str,
    /// Value of the pod's `sidetrace.dev/inject` label, if any.
    pub inject_label: Option<&'a str>,
    /// The pod already carries what the webhook injects (status annotation or containers).
    pub injected: bool,
    /// The pod has no containers (it fails validation anyway).
    pub no_containers: bool,
    /// `spec.hostNetwork` is true.
    pub host_network: bool,
    /// Name of another mesh's proxy container in the pod.
    pub foreign_proxy: Option<&'a str>,
}

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
    /// Short label for metrics, logs and the skip record.
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

    /// The value a label-less reason carries (namespace, proxy container, level), if any.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::SystemNamespace(s)
            | Self::ControlPlaneNamespace(s)
            | Self::ForeignProxy(s)
            | Self::NamespaceDisabled(s)
            | Self::PodSecurity(s) => Some(s),
            _ => None,
        }
    }

    /// Whether the webhook writes this skip onto the pod. Not for pods it already injected
    /// (their status annotation says everything), nor for the cluster's and sidetrace's own
    /// namespaces, whose pods the webhook never touches at all.
    pub fn is_recorded(&self) -> bool {
        !matches!(
            self,
            Self::AlreadyInjected | Self::SystemNamespace(_) | Self::ControlPlaneNamespace(_)
        )
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

/// Decides whether a pod gets the sidecar.
///
/// `namespace_labels` is `None` when the labels are not known (the webhook without a cluster
/// watch, or a namespace not yet cached); the decision then trusts the webhook registration's
/// selectors, which is what sent the request, and only the pod's own opt-out applies.
pub fn decide(
    pod: &PodFacts<'_>,
    namespace_labels: Option<&BTreeMap<String, String>>,
    control_plane_namespace: &str,
) -> Decision {
    // Checked first: a reinvoked webhook must always see "already injected", whatever else
    // changed, so that a second pass never patches.
    if pod.injected {
        return Decision::Skip(SkipReason::AlreadyInjected);
    }
    if pod.no_containers {
        return Decision::Skip(SkipReason::NoContainers);
    }
    if SYSTEM_NAMESPACES.contains(&pod.namespace) {
        return Decision::Skip(SkipReason::SystemNamespace(pod.namespace.to_owned()));
    }
    if pod.namespace == control_plane_namespace {
        return Decision::Skip(SkipReason::ControlPlaneNamespace(pod.namespace.to_owned()));
    }
    if pod.host_network {
        return Decision::Skip(SkipReason::HostNetwork);
    }
    if let Some(foreign) = pod.foreign_proxy {
        return Decision::Skip(SkipReason::ForeignProxy(foreign.to_owned()));
    }
    if pod.inject_label == Some("false") {
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
        None if pod.inject_label == Some("true") => Decision::Inject(InjectReason::PodOptIn),
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

/// What the webhook writes into [`SKIP_ANNOTATION`](crate::names::SKIP_ANNOTATION) on a pod it
/// admitted without injecting (JSON), so that the operator, `kubectl describe` and a person can
/// see why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipRecord {
    /// [`SkipReason::label`].
    pub reason: String,
    /// [`SkipReason::detail`], when the reason carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// [`SkipReason`]'s message, for people.
    #[serde(default)]
    pub message: String,
}

impl SkipRecord {
    /// The record of `reason`.
    pub fn of(reason: &SkipReason) -> Self {
        Self {
            reason: reason.label().to_owned(),
            detail: reason.detail().map(str::to_owned),
            message: reason.to_string(),
        }
    }

    /// The annotation value (compact JSON; cannot fail on this struct).
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads an annotation value; `None` when it is not a record (hand-edited, or from a
    /// future version): the operator then decides from metadata alone.
    pub fn parse(value: &str) -> Option<Self> {
        serde_json::from_str(value).ok()
    }

    /// Fills the spec-only facts this record proves (host network, a foreign proxy, no
    /// containers). Facts from labels are taken from the pod as it is now, not from the record.
    pub fn apply_to<'a>(&'a self, facts: &mut PodFacts<'a>) {
        match self.reason.as_str() {
            "host-network" => facts.host_network = true,
            "foreign-proxy" => {
                facts.foreign_proxy = Some(self.detail.as_deref().unwrap_or("unknown"))
            }
            "no-containers" => facts.no_containers = true,
            _ => {}
        }
    }
}

/// Where an existing pod stands, judged from its metadata: what the webhook wrote on it and
/// the labels of the pod and its namespace now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodState {
    /// Carries the sidecar; `config_from` is the TracedService whose config the webhook
    /// mounted, from the status annotation's `tracedService` (None: injected without one).
    Injected { config_from: Option<String> },
    /// The rule says it should carry the sidecar and it does not: a restart injects it.
    /// `why` says how it came to be without one.
    Missing { why: String },
    /// The rule leaves it alone, for this reason.
    Skipped(SkipReason),
}

/// Judges an existing pod from its metadata and its namespace's labels with the same rule the
/// webhook applied at admission ([`decide`]); the facts only the pod spec holds (host network,
/// another mesh's proxy) come from the [`SkipRecord`] the webhook wrote on the pod. The
/// operator's status and `sidetrace check` both read pods through this.
pub fn pod_state(
    namespace: &str,
    pod_labels: &BTreeMap<String, String>,
    pod_annotations: &BTreeMap<String, String>,
    namespace_labels: &BTreeMap<String, String>,
    control_plane_namespace: &str,
) -> PodState {
    if let Some(status) = pod_annotations.get(names::STATUS_ANNOTATION) {
        let config_from = serde_json::from_str::<serde_json::Value>(status)
            .ok()
            .and_then(|v| v["tracedService"].as_str().map(str::to_owned));
        return PodState::Injected { config_from };
    }
    let record = pod_annotations
        .get(names::SKIP_ANNOTATION)
        .and_then(|v| SkipRecord::parse(v));
    let mut facts = PodFacts {
        namespace,
        inject_label: pod_labels.get(names::INJECT_LABEL).map(String::as_str),
        ..PodFacts::default()
    };
    if let Some(r) = &record {
        r.apply_to(&mut facts);
    }
    match decide(&facts, Some(namespace_labels), control_plane_namespace) {
        Decision::Skip(reason) => PodState::Skipped(reason),
        Decision::Inject(_) => PodState::Missing {
            why: match &record {
                Some(r) => format!(
                    "admitted without it when {}; that has changed since",
                    r.message
                ),
                None => "created before injection was enabled, or while the webhook was \
                         unreachable"
                    .to_owned(),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn enabled() -> BTreeMap<String, String> {
        labels(&[(names::INJECT_LABEL, names::INJECT_NAMESPACE_ENABLED)])
    }

    fn plain() -> PodFacts<'static> {
        PodFacts {
            namespace: "shop",
            ..PodFacts::default()
        }
    }

    const CP: &str = "sidetrace-system";

    #[test]
    fn labelled_namespace_injects() {
        assert_eq!(
            decide(&plain(), Some(&enabled()), CP),
            Decision::Inject(InjectReason::NamespaceEnabled)
        );
    }

    #[test]
    fn unlabelled_namespace_needs_pod_opt_in_and_a_disabled_namespace_wins() {
        let none = BTreeMap::new();
        assert_eq!(
            decide(&plain(), Some(&none), CP),
            Decision::Skip(SkipReason::NotEnabled)
        );
        let p = PodFacts {
            inject_label: Some("true"),
            ..plain()
        };
        assert_eq!(
            decide(&p, Some(&none), CP),
            Decision::Inject(InjectReason::PodOptIn)
        );
        let disabled = labels(&[(names::INJECT_LABEL, "disabled")]);
        assert_eq!(
            decide(&p, Some(&disabled), CP),
            Decision::Skip(SkipReason::NamespaceDisabled("disabled".into()))
        );
    }

    #[test]
    fn pod_opt_out_wins_over_namespace_and_unknown_labels() {
        let p = PodFacts {
            inject_label: Some("false"),
            ..plain()
        };
        assert_eq!(
            decide(&p, Some(&enabled()), CP),
            Decision::Skip(SkipReason::PodOptOut)
        );
        assert_eq!(decide(&p, None, CP), Decision::Skip(SkipReason::PodOptOut));
        assert_eq!(
            decide(&plain(), None, CP),
            Decision::Inject(InjectReason::SelectedByWebhookConfiguration)
        );
    }

    #[test]
    fn system_and_control_plane_namespaces_are_never_injected() {
        for ns in ["kube-system", "kube-public"] {
            let p = PodFacts {
                namespace: ns,
                ..plain()
            };
            assert_eq!(
                decide(&p, Some(&enabled()), CP),
                Decision::Skip(SkipReason::SystemNamespace(ns.into()))
            );
        }
        let p = PodFacts {
            namespace: CP,
            ..plain()
        };
        assert_eq!(
            decide(&p, Some(&enabled()), CP),
            Decision::Skip(SkipReason::ControlPlaneNamespace(CP.into()))
        );
    }

    #[test]
    fn spec_facts_skip_and_injected_pods_are_always_already_injected() {
        let hn = PodFacts {
            host_network: true,
            ..plain()
        };
        assert_eq!(
            decide(&hn, Some(&enabled()), CP),
            Decision::Skip(SkipReason::HostNetwork)
        );
        let istio = PodFacts {
            foreign_proxy: Some("istio-proxy"),
            ..plain()
        };
        assert_eq!(
            decide(&istio, Some(&enabled()), CP),
            Decision::Skip(SkipReason::ForeignProxy("istio-proxy".into()))
        );
        let injected = PodFacts {
            namespace: "kube-system",
            injected: true,
            ..plain()
        };
        assert_eq!(
            decide(&injected, None, CP),
            Decision::Skip(SkipReason::AlreadyInjected)
        );
    }

    #[test]
    fn namespaces_enforcing_baseline_or_restricted_are_not_injected() {
        for level in ["baseline", "restricted"] {
            let ns = labels(&[
                (names::INJECT_LABEL, "enabled"),
                (names::POD_SECURITY_ENFORCE_LABEL, level),
            ]);
            let d = decide(&plain(), Some(&ns), CP);
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
            decide(&plain(), Some(&ns), CP),
            Decision::Inject(_)
        ));
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

    /// Every skip the webhook records gives the operator the same verdict from the record and
    /// the pod's labels as the webhook reached from the whole pod.
    #[test]
    fn a_skip_record_reproduces_the_webhooks_verdict() {
        let disabled = labels(&[(names::INJECT_LABEL, "off")]);
        let baseline = labels(&[
            (names::INJECT_LABEL, "enabled"),
            (names::POD_SECURITY_ENFORCE_LABEL, "baseline"),
        ]);
        let cases: Vec<(PodFacts<'static>, BTreeMap<String, String>)> = vec![
            (
                PodFacts {
                    host_network: true,
                    ..plain()
                },
                enabled(),
            ),
            (
                PodFacts {
                    foreign_proxy: Some("linkerd-proxy"),
                    ..plain()
                },
                enabled(),
            ),
            (
                PodFacts {
                    no_containers: true,
                    ..plain()
                },
                enabled(),
            ),
            (
                PodFacts {
                    inject_label: Some("false"),
                    ..plain()
                },
                enabled(),
            ),
            (
                PodFacts {
                    inject_label: Some("true"),
                    ..plain()
                },
                disabled,
            ),
            (plain(), BTreeMap::new()),
            (plain(), baseline),
        ];
        for (webhook_facts, ns) in cases {
            let Decision::Skip(reason) = decide(&webhook_facts, Some(&ns), CP) else {
                panic!("{webhook_facts:?} is injected");
            };
            assert!(reason.is_recorded(), "{reason:?}");
            let record =
                SkipRecord::parse(&SkipRecord::of(&reason).to_annotation()).expect("round trip");
            // What the operator knows: namespace and labels, nothing from the spec.
            let mut operator_facts = PodFacts {
                namespace: webhook_facts.namespace,
                inject_label: webhook_facts.inject_label,
                ..PodFacts::default()
            };
            record.apply_to(&mut operator_facts);
            assert_eq!(
                decide(&operator_facts, Some(&ns), CP),
                Decision::Skip(reason.clone()),
                "{record:?}"
            );
        }
        assert!(!SkipReason::AlreadyInjected.is_recorded());
        assert!(!SkipReason::SystemNamespace("kube-system".into()).is_recorded());
        assert!(SkipRecord::parse("not json").is_none());
    }
}

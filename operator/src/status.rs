//! What a TracedService's status should say, from what the caches show. Pure.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use sidetrace_contract::injection::{self, SkipReason};
use sidetrace_contract::names;
use sidetrace_crds::TracedServiceStatus;

pub use sidetrace_crds::condition;

/// Condition reasons, stable for alerting and `kubectl wait`.
pub mod reason {
    pub const CONFIG_RENDERED: &str = "ConfigRendered";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const SELECTOR_CONFLICT: &str = "SelectorConflict";
    pub const COLLECTOR_UNRESOLVABLE: &str = "CollectorUnresolvable";
    pub const ALL_INJECTED: &str = "AllInjected";
    pub const PODS_NOT_INJECTED: &str = "PodsNotInjected";
    /// Pods carry the sidecar but were injected before this TracedService selected them, so
    /// they run without its config (the webhook mounts a TracedService's ConfigMap at
    /// injection); a restart applies it.
    pub const PODS_NEED_RESTART: &str = "PodsNeedRestart";
    pub const NO_PODS: &str = "NoPodsSelected";
    /// The namespace enforces a Pod Security level that rejects the init container, so the
    /// webhook admits its pods without the sidecar.
    pub const BLOCKED_BY_POD_SECURITY: &str = "BlockedByPodSecurity";
    /// Neither the namespace nor the pods ask for injection: the selected pods run untraced.
    pub const INJECTION_NOT_ENABLED: &str = "InjectionNotEnabled";
    /// The sampling settings take effect as written.
    pub const SAMPLING_EFFECTIVE: &str = "SamplingEffective";
    /// A sampling setting cannot take effect (a rate for an operation no request is named,
    /// a limit with nothing to limit) or is overridden by a pod's own annotation.
    pub const SAMPLING_INEFFECTIVE: &str = "SamplingIneffective";
}

/// How many uninjected pod names the status lists (the count is always exact).
pub const MAX_LISTED_PODS: usize = 20;

pub use sidetrace_contract::injection::PodState;

/// One selected pod, as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    pub name: String,
    pub state: PodState,
}

impl PodFacts {
    /// Judges a pod from its metadata and its namespace's labels with the same rule the webhook
    /// applied at admission; the facts only the pod spec holds (host network, another mesh's
    /// proxy) come from the skip record the webhook wrote on the pod.
    pub fn from_metadata(
        name: &str,
        namespace: &str,
        pod_labels: &BTreeMap<String, String>,
        pod_annotations: &BTreeMap<String, String>,
        namespace_labels: &BTreeMap<String, String>,
        control_plane_namespace: &str,
    ) -> Self {
        Self {
            name: name.to_owned(),
            state: injection::pod_state(
                namespace,
                pod_labels,
                pod_annotations,
                namespace_labels,
                control_plane_namespace,
            ),
        }
    }

    fn is_injected(&self) -> bool {
        matches!(self.state, PodState::Injected { .. })
    }
}

/// Everything reconcile observed about one TracedService.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The TracedService's name (what injected pods record when they mount its config).
    pub name: String,
    /// `metadata.generation` of the TracedService.
    pub generation: Option<i64>,
    /// Why the spec cannot be used, if it cannot.
    pub invalid_spec: Option<String>,
    /// Pods the selector matches.
    pub pods: Vec<PodFacts>,
    /// Older TracedServices that also select some of these pods, and so win them.
    pub outranked_by: Vec<String>,
    /// Younger TracedServices this one wins pods from.
    pub outranks: Vec<String>,
    /// The collector host did not resolve: the message.
    pub collector_unresolvable: Option<String>,
    /// The rendered ConfigMap's name.
    pub config_map: Option<String>,
    /// Sampling settings of the spec that cannot take effect
    /// (`ProxyConfig::ineffective_sampling`).
    pub sampling_ineffective: Vec<String>,
    /// Selected pods whose `sidetrace.dev/sampling` annotation beats the spec's `sampling.rate`.
    pub sampling_overridden: Vec<String>,
}

fn cond(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

fn list(names: &[String]) -> String {
    let shown: Vec<&str> = names
        .iter()
        .take(MAX_LISTED_PODS)
        .map(String::as_str)
        .collect();
    let more = names.len().saturating_sub(MAX_LISTED_PODS);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// The status to write. `previous` keeps `lastTransitionTime` stable for conditions whose
/// status did not change, so an unchanged world yields an identical status (and no write).
pub fn desired_status(
    observed: &Observed,
    previous: Option<&TracedServiceStatus>,
    now: Time,
) -> TracedServiceStatus {
    let g = observed.generation;
    let selected = observed.pods.len();
    let injected = observed.pods.iter().filter(|p| p.is_injected()).count();
    // Each group is sorted by name (the pods are).
    let mut missing: Vec<(String, &str)> = Vec::new();
    let mut stale: Vec<String> = Vec::new();
    let mut blocked: Vec<(String, &SkipReason)> = Vec::new();
    let mut not_enabled: Vec<String> = Vec::new();
    let mut by_design: Vec<(String, &SkipReason)> = Vec::new();
    for p in &observed.pods {
        match &p.state {
            // Injected before this TracedService selected them: no config, or another one's.
            PodState::Injected { config_from } => {
                if config_from.as_deref() != Some(observed.name.as_str()) {
                    stale.push(p.name.clone());
                }
            }
            PodState::Missing { why } => missing.push((p.name.clone(), why)),
            PodState::Skipped(r @ SkipReason::PodSecurity(_)) => blocked.push((p.name.clone(), r)),
            PodState::Skipped(SkipReason::NotEnabled) => not_enabled.push(p.name.clone()),
            PodState::Skipped(r) => by_design.push((p.name.clone(), r)),
        }
    }
    let mut uninjected: Vec<String> = missing.iter().map(|(n, _)| n.clone()).collect();
    uninjected.sort();

    let ready = if let Some(why) = &observed.invalid_spec {
        cond(
            condition::READY,
            false,
            reason::INVALID_SPEC,
            why.clone(),
            g,
            &now,
        )
    } else if !observed.outranked_by.is_empty() {
        cond(
            condition::READY,
            false,
            reason::SELECTOR_CONFLICT,
            format!(
                "pods selected here are also selected by older TracedService(s) {}, which win; narrow one selector",
                observed.outranked_by.join(", ")
            ),
            g,
            &now,
        )
    } else if let Some(why) = &observed.collector_unresolvable {
        cond(
            condition::READY,
            false,
            reason::COLLECTOR_UNRESOLVABLE,
            why.clone(),
            g,
            &now,
        )
    } else {
        let mut message = format!(
            "sidecar config rendered to ConfigMap {}",
            observed.config_map.as_deref().unwrap_or("?")
        );
        if !observed.outranks.is_empty() {
            message.push_str(&format!(
                "; also selected by younger TracedService(s) {}, which this one wins",
                observed.outranks.join(", ")
            ));
        }
        cond(
            condition::READY,
            true,
            reason::CONFIG_RENDERED,
            message,
            g,
            &now,
        )
    };

    let pods = if selected == 0 {
        cond(
            condition::PODS_INJECTED,
            true,
            reason::NO_PODS,
            "the selector matches no pods".into(),
            g,
            &now,
        )
    } else {
        let mut parts: Vec<String> = Vec::new();
        let mut failing: Option<&str> = None;
        let mut fail = |r: &'static str| {
            failing.get_or_insert(r);
        };
        if !missing.is_empty() {
            fail(reason::PODS_NOT_INJECTED);
            let named: Vec<String> = missing
                .iter()
                .map(|(n, why)| format!("{n} ({why})"))
                .collect();
            parts.push(format!(
                "{} selected pod(s) should carry the sidecar but do not; restart them: {}",
                missing.len(),
                list(&named)
            ));
        }
        if !stale.is_empty() {
            fail(reason::PODS_NEED_RESTART);
            parts.push(format!(
                "{} selected pod(s) carry the sidecar but not this TracedService's config (injected before it selected them); restart them: {}",
                stale.len(),
                list(&stale)
            ));
        }
        if let Some((_, r)) = blocked.first() {
            fail(reason::BLOCKED_BY_POD_SECURITY);
            let names: Vec<String> = blocked.iter().map(|(n, _)| n.clone()).collect();
            parts.push(format!(
                "{} selected pod(s) run without the sidecar: {r}: {}",
                blocked.len(),
                list(&names)
            ));
        }
        if !not_enabled.is_empty() {
            fail(reason::INJECTION_NOT_ENABLED);
            parts.push(format!(
                "{} selected pod(s) run without the sidecar: neither their namespace ({}={}) nor the pods ({}=true) ask for injection: {}",
                not_enabled.len(),
                names::INJECT_LABEL,
                names::INJECT_NAMESPACE_ENABLED,
                names::INJECT_LABEL,
                list(&not_enabled)
            ));
        }
        let mut summary = format!("{injected} of {selected} selected pods carry the sidecar");
        if !by_design.is_empty() {
            let named: Vec<String> = by_design
                .iter()
                .map(|(n, r)| format!("{n} ({r})"))
                .collect();
            summary.push_str(&format!(
                "; {} left alone as asked: {}",
                by_design.len(),
                list(&named)
            ));
        }
        match failing {
            None => cond(
                condition::PODS_INJECTED,
                true,
                reason::ALL_INJECTED,
                summary,
                g,
                &now,
            ),
            Some(r) => cond(
                condition::PODS_INJECTED,
                false,
                r,
                parts.join("; "),
                g,
                &now,
            ),
        }
    };

    let mut notes = observed.sampling_ineffective.clone();
    if !observed.sampling_overridden.is_empty() {
        notes.push(format!(
            "sampling.rate: overridden by the {} annotation of {} pod(s): {}",
            names::annotations::SAMPLING,
            observed.sampling_overridden.len(),
            list(&observed.sampling_overridden)
        ));
    }
    let sampling = if notes.is_empty() {
        cond(
            condition::SAMPLING,
            true,
            reason::SAMPLING_EFFECTIVE,
            "every sampling setting takes effect (each pod's proxy shows them on its admin port's /config)"
                .into(),
            g,
            &now,
        )
    } else {
        cond(
            condition::SAMPLING,
            false,
            reason::SAMPLING_INEFFECTIVE,
            notes.join("; "),
            g,
            &now,
        )
    };

    let mut conditions = vec![ready, pods];
    // An invalid spec is not rendered: its sampling is in force nowhere, Ready says why.
    if observed.invalid_spec.is_none() {
        conditions.push(sampling);
    }
    for c in &mut conditions {
        let before = previous
            .into_iter()
            .flat_map(|p| p.conditions.iter())
            .find(|p| p.type_ == c.type_);
        if let Some(before) = before
            && before.status == c.status
        {
            c.last_transition_time = before.last_transition_time.clone();
        }
    }
    uninjected.truncate(MAX_LISTED_PODS);
    TracedServiceStatus {
        observed_generation: g,
        conditions,
        selected_pods: i32::try_from(selected).unwrap_or(i32::MAX),
        injected_pods: i32::try_from(injected).unwrap_or(i32::MAX),
        uninjected_pods: uninjected,
        config_map: observed.config_map.clone(),
    }
}

/// A condition change worth a Kubernetes Event: (type, reason, message, is_warning).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub reason: String,
    pub message: String,
    pub warning: bool,
}

/// Events for conditions whose reason changed since `previous` (none on a steady state).
pub fn transitions(
    previous: Option<&TracedServiceStatus>,
    next: &TracedServiceStatus,
) -> Vec<Transition> {
    next.conditions
        .iter()
        .filter(|c| {
            let before = previous
                .into_iter()
                .flat_map(|p| p.conditions.iter())
                .find(|p| p.type_ == c.type_);
            before.is_none_or(|b| b.reason != c.reason || b.status != c.status)
        })
        .map(|c| Transition {
            reason: c.reason.clone(),
            message: c.message.clone(),
            warning: c.status != "True",
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidetrace_contract::injection::SkipRecord;

    fn t(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).expect("ts"))
    }

    /// A selected pod; injected ones mount the config of the TracedService `svc`, skipped ones
    /// opted out.
    fn pod(name: &str, injected: bool, should: bool) -> PodFacts {
        let state = if injected {
            PodState::Injected {
                config_from: Some("svc".into()),
            }
        } else if should {
            PodState::Missing {
                why: "created before injection was enabled".into(),
            }
        } else {
            PodState::Skipped(SkipReason::PodOptOut)
        };
        PodFacts {
            name: name.into(),
            state,
        }
    }

    fn pods_condition(s: &TracedServiceStatus) -> &Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == condition::PODS_INJECTED)
            .expect("pods condition")
    }

    fn m(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const CP: &str = "sidetrace-system";

    fn ready(s: &TracedServiceStatus) -> &Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == condition::READY)
            .expect("ready")
    }

    #[test]
    fn healthy_service_is_ready_and_counts_pods() {
        let o = Observed {
            name: "svc".into(),
            generation: Some(3),
            pods: vec![
                pod("a", true, true),
                pod("b", false, true),
                pod("c", false, false),
            ],
            config_map: Some("sidetrace-s".into()),
            ..Default::default()
        };
        let s = desired_status(&o, None, t(10));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!((s.selected_pods, s.injected_pods), (3, 1));
        assert_eq!(s.uninjected_pods, vec!["b".to_owned()]);
        assert_eq!(ready(&s).status, "True");
        assert_eq!(ready(&s).reason, reason::CONFIG_RENDERED);
        let pods = &s.conditions[1];
        assert_eq!(
            (pods.status.as_str(), pods.reason.as_str()),
            ("False", reason::PODS_NOT_INJECTED)
        );
        assert!(pods.message.contains("restart them: b"), "{}", pods.message);
    }

    #[test]
    fn invalid_spec_beats_conflict_beats_collector() {
        let mut o = Observed {
            invalid_spec: Some("spec.selector: empty".into()),
            outranked_by: vec!["old".into()],
            collector_unresolvable: Some("no such host".into()),
            ..Default::default()
        };
        assert_eq!(
            ready(&desired_status(&o, None, t(1))).reason,
            reason::INVALID_SPEC
        );
        o.invalid_spec = None;
        let s = desired_status(&o, None, t(1));
        assert_eq!(ready(&s).reason, reason::SELECTOR_CONFLICT);
        assert!(ready(&s).message.contains("old"));
        o.outranked_by.clear();
        assert_eq!(
            ready(&desired_status(&o, None, t(1))).reason,
            reason::COLLECTOR_UNRESOLVABLE
        );
    }

    #[test]
    fn steady_state_is_identical_and_emits_no_events() {
        let o = Observed {
            pods: vec![pod("a", true, true)],
            ..Default::default()
        };
        let first = desired_status(&o, None, t(1));
        let second = desired_status(&o, Some(&first), t(99));
        assert_eq!(first, second, "transition times must be kept");
        assert!(transitions(Some(&first), &second).is_empty());
        assert_eq!(
            transitions(None, &first).len(),
            3,
            "Ready, PodsInjected, Sampling"
        );
        let conflict = Observed {
            outranked_by: vec!["x".into()],
            ..o
        };
        let third = desired_status(&conflict, Some(&second), t(100));
        let ev = transitions(Some(&second), &third);
        assert_eq!(ev.len(), 1);
        assert!(ev[0].warning);
        assert_eq!(ev[0].reason, reason::SELECTOR_CONFLICT);
        assert_eq!(ready(&third).last_transition_time, t(100));
    }

    #[test]
    fn pod_facts_follow_the_one_rule() {
        let ns_on = m(&[(names::INJECT_LABEL, "enabled")]);
        let empty = m(&[]);
        let facts = |labels: &BTreeMap<String, String>,
                     annotations: &BTreeMap<String, String>,
                     ns: &BTreeMap<String, String>| {
            PodFacts::from_metadata("p", "shop", labels, annotations, ns, CP).state
        };
        assert!(matches!(
            facts(&empty, &empty, &ns_on),
            PodState::Missing { .. }
        ));
        assert_eq!(
            facts(&m(&[(names::INJECT_LABEL, "false")]), &empty, &ns_on),
            PodState::Skipped(SkipReason::PodOptOut)
        );
        assert!(matches!(
            facts(&m(&[(names::INJECT_LABEL, "true")]), &empty, &empty),
            PodState::Missing { .. }
        ));
        assert_eq!(
            facts(&empty, &empty, &empty),
            PodState::Skipped(SkipReason::NotEnabled)
        );
        // A pod opted in where the namespace says no: the webhook skips it, and so does this.
        assert_eq!(
            facts(
                &m(&[(names::INJECT_LABEL, "true")]),
                &empty,
                &m(&[(names::INJECT_LABEL, "disabled")])
            ),
            PodState::Skipped(SkipReason::NamespaceDisabled("disabled".into()))
        );
        assert!(matches!(
            facts(&empty, &m(&[(names::STATUS_ANNOTATION, "{}")]), &empty),
            PodState::Injected { config_from: None }
        ));
        // The control plane's own pods are never expected to carry the sidecar.
        assert_eq!(
            PodFacts::from_metadata("p", CP, &empty, &empty, &ns_on, CP).state,
            PodState::Skipped(SkipReason::ControlPlaneNamespace(CP.into()))
        );
    }

    #[test]
    fn the_webhooks_skip_record_supplies_what_only_the_spec_shows() {
        let ns_on = m(&[(names::INJECT_LABEL, "enabled")]);
        let empty = m(&[]);
        let recorded = |reason: &SkipReason| {
            m(&[(
                names::SKIP_ANNOTATION,
                SkipRecord::of(reason).to_annotation().as_str(),
            )])
        };
        for reason in [
            SkipReason::HostNetwork,
            SkipReason::ForeignProxy("istio-proxy".into()),
        ] {
            let p = PodFacts::from_metadata("p", "shop", &empty, &recorded(&reason), &ns_on, CP);
            assert_eq!(p.state, PodState::Skipped(reason));
        }
        // Skipped at admission because the namespace was not enabled; it is now: restart it,
        // and say why it has no sidecar.
        let p = PodFacts::from_metadata(
            "p",
            "shop",
            &empty,
            &recorded(&SkipReason::NotEnabled),
            &ns_on,
            CP,
        );
        let PodState::Missing { why } = p.state else {
            panic!("{:?}", p.state)
        };
        assert!(
            why.contains("neither the namespace") && why.contains("changed since"),
            "{why}"
        );
        // Unreadable records are ignored: the labels decide.
        let junk = m(&[(names::SKIP_ANNOTATION, "{oops")]);
        assert!(matches!(
            PodFacts::from_metadata("p", "shop", &empty, &junk, &ns_on, CP).state,
            PodState::Missing { .. }
        ));
    }

    #[test]
    fn pods_left_untraced_say_why_and_those_left_alone_as_asked_do_not_fail() {
        let status_of = |pods: Vec<PodFacts>| {
            desired_status(
                &Observed {
                    name: "svc".into(),
                    pods,
                    ..Default::default()
                },
                None,
                t(1),
            )
        };
        let s = status_of(vec![
            pod("a", true, true),
            PodFacts {
                name: "hn".into(),
                state: PodState::Skipped(SkipReason::HostNetwork),
            },
            pod("out", false, false),
        ]);
        let c = pods_condition(&s);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", reason::ALL_INJECTED)
        );
        assert!(
            c.message.starts_with("1 of 3 selected pods carry the sidecar; 2 left alone as asked: hn (pod uses the host network), out (pod is labelled"),
            "{}",
            c.message
        );
        assert!(s.uninjected_pods.is_empty());

        let s = status_of(vec![
            pod("a", true, true),
            PodFacts {
                name: "ps".into(),
                state: PodState::Skipped(SkipReason::PodSecurity("restricted".into())),
            },
        ]);
        let c = pods_condition(&s);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reason::BLOCKED_BY_POD_SECURITY)
        );
        assert!(
            c.message.contains("\"restricted\"") && c.message.ends_with(": ps"),
            "{}",
            c.message
        );

        let s = status_of(vec![PodFacts {
            name: "plain".into(),
            state: PodState::Skipped(SkipReason::NotEnabled),
        }]);
        let c = pods_condition(&s);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reason::INJECTION_NOT_ENABLED)
        );
        assert!(c.message.ends_with(": plain"), "{}", c.message);

        // Several problems: the first in order of urgency names the reason, all are said.
        let s = status_of(vec![
            pod("miss", false, true),
            PodFacts {
                name: "plain".into(),
                state: PodState::Skipped(SkipReason::NotEnabled),
            },
        ]);
        let c = pods_condition(&s);
        assert_eq!(c.reason, reason::PODS_NOT_INJECTED);
        assert!(
            c.message
                .contains("restart them: miss (created before injection was enabled)")
                && c.message.contains(": plain"),
            "{}",
            c.message
        );
        assert_eq!(s.uninjected_pods, vec!["miss".to_owned()]);
    }

    #[test]
    fn sampling_settings_that_cannot_take_effect_are_reported() {
        let sampling = |o: &Observed| {
            desired_status(o, None, t(1))
                .conditions
                .into_iter()
                .find(|c| c.type_ == condition::SAMPLING)
                .expect("Sampling condition")
        };
        let mut o = Observed {
            name: "svc".into(),
            pods: vec![pod("a", true, true)],
            ..Observed::default()
        };
        let c = sampling(&o);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", reason::SAMPLING_EFFECTIVE)
        );
        o.sampling_ineffective = vec!["sampling.operations[0]: no rule".into()];
        o.sampling_overridden = vec!["a".into()];
        let c = sampling(&o);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reason::SAMPLING_INEFFECTIVE)
        );
        assert_eq!(
            c.message,
            "sampling.operations[0]: no rule; sampling.rate: overridden by the sidetrace.dev/sampling annotation of 1 pod(s): a"
        );
    }

    #[test]
    fn long_pod_lists_are_capped_but_counted() {
        let pods: Vec<PodFacts> = (0..30)
            .map(|i| pod(&format!("p{i:02}"), false, true))
            .collect();
        let s = desired_status(
            &Observed {
                pods,
                ..Default::default()
            },
            None,
            t(1),
        );
        assert_eq!(s.uninjected_pods.len(), MAX_LISTED_PODS);
        assert!(s.conditions[1].message.starts_with("30 selected pod(s)"));
        assert!(s.conditions[1].message.ends_with("and 10 more"));
    }

    #[test]
    fn pods_injected_before_the_traced_service_are_named_for_a_restart() {
        let mut early = pod("early", true, true);
        early.state = PodState::Injected { config_from: None };
        let mut other = pod("other", true, true);
        other.state = PodState::Injected {
            config_from: Some("older".into()),
        };
        let o = Observed {
            name: "svc".into(),
            pods: vec![early, other, pod("fine", true, true)],
            config_map: Some("sidetrace-svc".into()),
            ..Default::default()
        };
        let s = desired_status(&o, None, t(1));
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == condition::PODS_INJECTED)
            .expect("pods condition");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reason::PODS_NEED_RESTART)
        );
        assert!(c.message.contains("early, other"), "{}", c.message);
        assert_eq!(s.injected_pods, 3);
        assert!(s.uninjected_pods.is_empty());
    }

    #[test]
    fn the_status_annotation_names_the_mounted_config() {
        let empty = BTreeMap::new();
        let m = |v: &str| BTreeMap::from([(names::STATUS_ANNOTATION.to_owned(), v.to_owned())]);
        let p = PodFacts::from_metadata(
            "p",
            "shop",
            &empty,
            &m(r#"{"tracedService":"web"}"#),
            &empty,
            CP,
        );
        assert_eq!(
            p.state,
            PodState::Injected {
                config_from: Some("web".into())
            }
        );
        let p = PodFacts::from_metadata("p", "shop", &empty, &m("{}"), &empty, CP);
        assert_eq!(p.state, PodState::Injected { config_from: None });
    }
}

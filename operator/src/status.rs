//! What a TracedService's status should say, from what the caches show. Pure.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use sidetrace_contract::names;
use sidetrace_crds::TracedServiceStatus;

/// Condition types.
pub mod condition {
    /// The config is rendered and nothing prevents the selected pods from using it.
    pub const READY: &str = "Ready";
    /// Every selected pod that should carry the sidecar does.
    pub const PODS_INJECTED: &str = "PodsInjected";
}

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
}

/// How many uninjected pod names the status lists (the count is always exact).
pub const MAX_LISTED_PODS: usize = 20;

/// One selected pod, as the operator sees it (metadata only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    pub name: String,
    /// Carries the `sidetrace.dev/status` annotation the webhook writes.
    pub injected: bool,
    /// The namespace label or the pod label asks for injection and the pod did not opt out.
    pub should_be_injected: bool,
    /// The TracedService whose config the webhook mounted, from the status annotation's
    /// `tracedService` (None: injected without one).
    pub config_from: Option<String>,
}

impl PodFacts {
    /// Builds the facts from a pod's labels/annotations and its namespace's labels.
    pub fn from_metadata(
        name: &str,
        pod_labels: &BTreeMap<String, String>,
        pod_annotations: &BTreeMap<String, String>,
        namespace_labels: &BTreeMap<String, String>,
    ) -> Self {
        let pod_choice = pod_labels.get(names::INJECT_LABEL).map(String::as_str);
        let ns_enabled = namespace_labels
            .get(names::INJECT_LABEL)
            .map(String::as_str)
            == Some(names::INJECT_NAMESPACE_ENABLED);
        let should_be_injected = match pod_choice {
            Some("false") => false,
            Some("true") => true,
            _ => ns_enabled,
        };
        let status = pod_annotations.get(names::STATUS_ANNOTATION);
        let config_from = status
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .and_then(|v| v["tracedService"].as_str().map(str::to_owned));
        Self {
            name: name.to_owned(),
            injected: status.is_some(),
            should_be_injected,
            config_from,
        }
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
    let injected = observed.pods.iter().filter(|p| p.injected).count();
    let mut uninjected: Vec<String> = observed
        .pods
        .iter()
        .filter(|p| p.should_be_injected && !p.injected)
        .map(|p| p.name.clone())
        .collect();
    uninjected.sort();
    // Injected before this TracedService selected them: no config, or another one's.
    let mut stale: Vec<String> = observed
        .pods
        .iter()
        .filter(|p| p.injected && p.config_from.as_deref() != Some(observed.name.as_str()))
        .map(|p| p.name.clone())
        .collect();
    stale.sort();

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
    } else if uninjected.is_empty() && stale.is_empty() {
        cond(
            condition::PODS_INJECTED,
            true,
            reason::ALL_INJECTED,
            format!("{injected} of {selected} selected pods carry the sidecar"),
            g,
            &now,
        )
    } else if uninjected.is_empty() {
        cond(
            condition::PODS_INJECTED,
            false,
            reason::PODS_NEED_RESTART,
            format!(
                "{} selected pod(s) carry the sidecar but not this TracedService's config (injected before it selected them); restart them: {}",
                stale.len(),
                list(&stale)
            ),
            g,
            &now,
        )
    } else {
        cond(
            condition::PODS_INJECTED,
            false,
            reason::PODS_NOT_INJECTED,
            format!(
                "{} selected pod(s) should carry the sidecar but do not (created before injection was enabled, or while the webhook was down); restart them: {}",
                uninjected.len(),
                list(&uninjected)
            ),
            g,
            &now,
        )
    };

    let mut conditions = vec![ready, pods];
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

    fn t(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).expect("ts"))
    }

    /// A selected pod; injected ones mount the config of the TracedService `svc`.
    fn pod(name: &str, injected: bool, should: bool) -> PodFacts {
        PodFacts {
            name: name.into(),
            injected,
            should_be_injected: should,
            config_from: injected.then(|| "svc".into()),
        }
    }

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
        assert_eq!(transitions(None, &first).len(), 2);
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
    fn pod_facts_follow_the_labels() {
        let m = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let ns_on = m(&[(names::INJECT_LABEL, "enabled")]);
        let empty = m(&[]);
        assert!(PodFacts::from_metadata("p", &empty, &empty, &ns_on).should_be_injected);
        assert!(
            !PodFacts::from_metadata("p", &m(&[(names::INJECT_LABEL, "false")]), &empty, &ns_on)
                .should_be_injected
        );
        assert!(
            PodFacts::from_metadata("p", &m(&[(names::INJECT_LABEL, "true")]), &empty, &empty)
                .should_be_injected
        );
        assert!(!PodFacts::from_metadata("p", &empty, &empty, &empty).should_be_injected);
        assert!(
            PodFacts::from_metadata("p", &empty, &m(&[(names::STATUS_ANNOTATION, "{}")]), &empty)
                .injected
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
        early.config_from = None;
        let mut other = pod("other", true, true);
        other.config_from = Some("older".into());
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
        let p = PodFacts::from_metadata("p", &empty, &m(r#"{"tracedService":"web"}"#), &empty);
        assert_eq!(p.config_from.as_deref(), Some("web"));
        let p = PodFacts::from_metadata("p", &empty, &m("{}"), &empty);
        assert!(p.injected && p.config_from.is_none());
    }
}

//! Which TracedService applies to a pod. The webhook (which config to mount) and the operator
//! (which pods a TracedService reports, and who wins a conflict) must agree, so both call this.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use crate::TracedService;

/// Whether `labels` satisfy `selector` (matchLabels and matchExpressions, ANDed), by kube's
/// own [`Selector`]. An empty selector matches nothing here: the CRD forbids it, and claiming
/// every pod would surprise. A selector kube cannot parse (an unknown operator, `In` without
/// values) matches nothing either, as the apiserver would reject it anyway.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    match Selector::try_from(selector.clone()) {
        Ok(parsed) => !parsed.selects_all() && parsed.matches(labels),
        Err(_) => false,
    }
}

/// Orders TracedServices so the first is the one that wins: oldest creation, then name.
fn precedence(ts: &TracedService) -> (Option<k8s_openapi::jiff::Timestamp>, String) {
    (
        ts.metadata.creation_timestamp.as_ref().map(|t| t.0),
        ts.name_any(),
    )
}

/// The TracedServices in `namespace` that select a pod with `labels`, winner first.
pub fn matching<'a>(
    candidates: impl IntoIterator<Item = &'a TracedService>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a TracedService> {
    let mut found: Vec<&TracedService> = candidates
        .into_iter()
        .filter(|ts| ts.metadata.namespace.as_deref() == Some(namespace))
        .filter(|ts| ts.metadata.deletion_timestamp.is_none())
        .filter(|ts| selector_matches(&ts.spec.selector, labels))
        .collect();
    found.sort_by_key(|ts| precedence(ts));
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, Time};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "a")])),
            match_expressions: Some(vec![
                expr("track", "In", &["stable", "canary"]),
                expr("legacy", "DoesNotExist", &[]),
            ]),
        };
        assert!(selector_matches(
            &sel,
            &labels(&[("app", "a"), ("track", "stable")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("app", "a"), ("track", "dev")])
        ));
        assert!(!selector_matches(&sel, &labels(&[("app", "a")])));
        assert!(!selector_matches(
            &sel,
            &labels(&[("app", "a"), ("track", "stable"), ("legacy", "1")])
        ));
        let notin = LabelSelector {
            match_expressions: Some(vec![
                expr("env", "NotIn", &["prod"]),
                expr("app", "Exists", &[]),
            ]),
            ..Default::default()
        };
        assert!(selector_matches(&notin, &labels(&[("app", "x")])));
        assert!(!selector_matches(
            &notin,
            &labels(&[("app", "x"), ("env", "prod")])
        ));
        assert!(!selector_matches(
            &LabelSelector::default(),
            &labels(&[("app", "x")])
        ));
    }

    #[test]
    fn a_selector_kube_cannot_parse_matches_nothing() {
        let unknown = LabelSelector {
            match_expressions: Some(vec![expr("app", "Like", &["a"])]),
            ..Default::default()
        };
        assert!(!selector_matches(&unknown, &labels(&[("app", "a")])));
        let in_without_values = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: "In".into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert!(!selector_matches(
            &in_without_values,
            &labels(&[("app", "a")])
        ));
    }

    fn ts(name: &str, ns: &str, created: i64, app: &str) -> TracedService {
        let mut t = TracedService::new(
            name,
            serde_json::from_value(serde_json::json!({"selector": {"matchLabels": {"app": app}}}))
                .expect("spec"),
        );
        t.metadata.namespace = Some(ns.into());
        t.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(created).expect("ts"),
        ));
        t
    }

    #[test]
    fn oldest_then_name_wins_and_other_namespaces_never_match() {
        let all = [
            ts("young", "shop", 200, "a"),
            ts("old-b", "shop", 100, "a"),
            ts("old-a", "shop", 100, "a"),
            ts("elsewhere", "other", 1, "a"),
            ts("unrelated", "shop", 1, "b"),
        ];
        let found: Vec<String> = matching(&all, "shop", &labels(&[("app", "a")]))
            .iter()
            .map(|t| t.name_any())
            .collect();
        assert_eq!(found, ["old-a", "old-b", "young"]);
    }
}

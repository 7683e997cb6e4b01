//! TracedService → the sidecar config ConfigMap. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use sidetrace_contract::names;
use sidetrace_crds::TracedService;

/// The ConfigMap a TracedService renders to, owned by it (a controller reference, so the
/// garbage collector removes it with the TracedService). `None` when the object lacks a uid or
/// namespace (never the case for objects read from the apiserver).
pub fn desired_config_map(ts: &TracedService) -> Option<ConfigMap> {
    let owner: OwnerReference = ts.controller_owner_ref(&())?;
    let namespace = ts.namespace()?;
    let name = names::config_map_name(&ts.name_any());
    // The service name is left to the pod (the webhook sets it from the pod's labels) unless
    // the spec names one: one TracedService may select several workloads.
    let config = ts.spec.to_proxy_config(None);
    Some(ConfigMap {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace),
            labels: Some(BTreeMap::from([
                (
                    names::MANAGED_BY_LABEL.to_owned(),
                    names::MANAGED_BY_VALUE.to_owned(),
                ),
                (names::TRACED_SERVICE_LABEL.to_owned(), ts.name_any()),
            ])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            names::CONFIG_FILE_NAME.to_owned(),
            config.to_yaml(),
        )])),
        ..ConfigMap::default()
    })
}

/// Whether the existing ConfigMap already carries what we would write: same data, labels and
/// owner. Skipping the write keeps a steady state free of API writes.
pub fn is_up_to_date(existing: &ConfigMap, desired: &ConfigMap) -> bool {
    let labels_ok = desired
        .metadata
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| existing.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v));
    let owner_ok = desired.metadata.owner_references.iter().flatten().all(|o| {
        existing
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|e| e.uid == o.uid)
    });
    existing.data == desired.data && labels_ok && owner_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts() -> TracedService {
        let mut t = TracedService::new(
            "service1",
            serde_json::from_value(serde_json::json!({
                "selector": {"matchLabels": {"app": "service1"}},
                "sampling": {"rate": 0.5},
                "operations": [{"name": "checkStock", "direction": "outbound", "pathPrefix": "/trace/2"}],
            }))
            .expect("spec"),
        );
        t.metadata.namespace = Some("demo".into());
        t.metadata.uid = Some("uid-1".into());
        t
    }

    #[test]
    fn renders_the_proxy_config_owned_by_the_traced_service() {
        let cm = desired_config_map(&ts()).expect("renders");
        assert_eq!(cm.metadata.name.as_deref(), Some("sidetrace-service1"));
        let owner = &cm.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(owner.kind, "TracedService");
        assert_eq!(owner.controller, Some(true));
        let yaml = &cm.data.as_ref().expect("data")[names::CONFIG_FILE_NAME];
        let parsed = sidetrace_contract::ProxyConfig::from_yaml(yaml).expect("proxy reads it");
        assert_eq!(parsed.sampling_rate, Some(0.5));
        assert_eq!(parsed.operations[0].name, "checkStock");
        assert_eq!(parsed.service_name, None);
        assert!(
            !parsed.record_query_string,
            "query strings dropped by default"
        );
    }

    #[test]
    fn renders_record_query_string_when_the_spec_opts_in() {
        let mut t = ts();
        t.spec.record_query_string = true;
        let cm = desired_config_map(&t).expect("renders");
        let yaml = &cm.data.as_ref().expect("data")[names::CONFIG_FILE_NAME];
        let parsed = sidetrace_contract::ProxyConfig::from_yaml(yaml).expect("proxy reads it");
        assert!(parsed.record_query_string, "{yaml}");
    }

    #[test]
    fn up_to_date_ignores_server_fields_but_not_data() {
        let desired = desired_config_map(&ts()).expect("renders");
        let mut existing = desired.clone();
        existing.metadata.resource_version = Some("7".into());
        existing
            .metadata
            .labels
            .as_mut()
            .expect("labels")
            .insert("extra".into(), "x".into());
        assert!(is_up_to_date(&existing, &desired));
        existing
            .data
            .as_mut()
            .expect("data")
            .insert("proxy.yaml".into(), "samplingRate: 1\n".into());
        assert!(!is_up_to_date(&existing, &desired));
        let mut no_data = desired.clone();
        no_data.data = None;
        assert!(!is_up_to_date(&no_data, &desired));
    }

    #[test]
    fn no_uid_no_config_map() {
        let mut t = ts();
        t.metadata.uid = None;
        assert!(desired_config_map(&t).is_none());
    }
}

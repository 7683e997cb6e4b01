//! Applying YAML manifests the way `kubectl apply --server-side` does: every document of a
//! (multi-document) YAML stream, resolved through discovery, server-side applied under
//! [`FIELD_MANAGER`](super::FIELD_MANAGER) with strict field validation, so an unknown field is
//! an error rather than a warning.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use kube::Client;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::{self, Scope};
use serde_json::Value;

use super::FIELD_MANAGER;

/// Parse a YAML stream into its non-empty documents.
pub fn documents(yaml: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = <Value as serde::Deserialize>::deserialize(doc)?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// The `*.yaml` files of a directory, sorted by name.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Server-side apply one object. `namespace` overrides the object's own namespace (tests
/// isolate themselves by namespace); cluster-scoped objects ignore it. The error keeps the
/// [`kube::Error`] inside (use [`api_rejection`]) so tests can assert on the apiserver's message.
pub async fn apply(
    client: &Client,
    object: &Value,
    namespace: Option<&str>,
) -> Result<DynamicObject> {
    let (api, obj, name) = resolve(client, object, namespace).await?;
    let params = PatchParams::apply(FIELD_MANAGER)
        .force()
        .validation_strict();
    let applied = api.patch(&name, &params, &Patch::Apply(&obj)).await?;
    Ok(applied)
}

/// Create one object (POST, as `kubectl create`) with strict field validation, so unknown or
/// duplicate fields are a 422 like every other schema error. (Server-side apply reports an
/// unknown field as HTTP 500 "failed to create typed patch object"; see the tests.)
pub async fn create_strict(
    client: &Client,
    object: &Value,
    namespace: Option<&str>,
) -> Result<DynamicObject> {
    let (api, obj, _) = resolve(client, object, namespace).await?;
    let url = format!(
        "{}?fieldValidation=Strict&fieldManager={FIELD_MANAGER}",
        api.resource_url()
    );
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&obj)?)?;
    Ok(client.request::<DynamicObject>(request).await?)
}

/// The typed handle, the object (namespace set) and its name, through discovery.
async fn resolve(
    client: &Client,
    object: &Value,
    namespace: Option<&str>,
) -> Result<(Api<DynamicObject>, DynamicObject, String)> {
    let mut obj: DynamicObject =
        serde_json::from_value(object.clone()).context("manifest is not a Kubernetes object")?;
    let types = obj
        .types
        .clone()
        .ok_or_else(|| anyhow!("manifest has no apiVersion/kind"))?;
    let gvk = GroupVersionKind::try_from(&types)?;
    let name = obj
        .metadata
        .name
        .clone()
        .ok_or_else(|| anyhow!("manifest has no metadata.name"))?;
    let (resource, caps) = discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("discovering {}/{}", gvk.group, gvk.kind))?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Cluster => Api::all_with(client.clone(), &resource),
        Scope::Namespaced => {
            let ns = namespace
                .map(str::to_owned)
                .or_else(|| obj.metadata.namespace.clone())
                .unwrap_or_else(|| "default".to_owned());
            obj.metadata.namespace = Some(ns.clone());
            Api::namespaced_with(client.clone(), &ns, &resource)
        }
    };
    Ok((api, obj, name))
}

/// Apply every document of `yaml` in order.
pub async fn apply_yaml(
    client: &Client,
    yaml: &str,
    namespace: Option<&str>,
) -> Result<Vec<DynamicObject>> {
    let mut applied = Vec::new();
    for doc in documents(yaml)? {
        applied.push(apply(client, &doc, namespace).await?);
    }
    Ok(applied)
}

/// The apiserver's rejection inside an [`apply`] error: (HTTP code, message).
pub fn api_rejection(err: &anyhow::Error) -> Option<(u16, String)> {
    match err.downcast_ref::<kube::Error>()? {
        kube::Error::Api(status) => Some((status.code, status.message.clone())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_multi_document_yaml_and_drops_empty_documents() {
        let docs = documents("# head\n---\na: 1\n---\n---\nb: 2\n").expect("yaml");
        assert_eq!(
            docs,
            vec![serde_json::json!({"a": 1}), serde_json::json!({"b": 2})]
        );
    }
}

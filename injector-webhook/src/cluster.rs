//! The webhook's view of the cluster: the apiserver's version (native sidecar support) and
//! reflector caches of namespace labels and TracedServices, so that no admission waits on an
//! API call.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use sidetrace_crds::TracedService;

use crate::error::{Error, Result};
use crate::review::ClusterView;

/// First Kubernetes minor version (1.x) with native sidecars (`restartPolicy: Always` on init
/// containers) enabled by default.
pub const NATIVE_SIDECAR_MINOR: u32 = 29;

/// Builds a client from the kubeconfig or the in-cluster service account.
pub async fn client() -> Result<Client> {
    let config = kube::Config::infer().await?;
    Ok(Client::try_from(config)?)
}

/// Parses the apiserver's `major`/`minor` (`"1"`, `"29+"` on some distributions).
pub fn parse_version(major: &str, minor: &str) -> Option<(u32, u32)> {
    let digits = |s: &str| -> Option<u32> {
        let d: String = s.chars().take_while(char::is_ascii_digit).collect();
        d.parse().ok()
    };
    Some((digits(major)?, digits(minor)?))
}

/// True when the version supports native sidecars.
pub fn supports_native_sidecars(version: (u32, u32)) -> bool {
    version.0 > 1 || (version.0 == 1 && version.1 >= NATIVE_SIDECAR_MINOR)
}

/// Asks the apiserver's `/version` whether native sidecars are available.
pub async fn detect_native_sidecars(client: &Client) -> Result<bool> {
    let info = client.apiserver_version().await?;
    let v = parse_version(&info.major, &info.minor)
        .ok_or_else(|| Error::Version(format!("{}.{}", info.major, info.minor)))?;
    Ok(supports_native_sidecars(v))
}

/// A [`ClusterView`] backed by reflector stores.
#[derive(Clone)]
pub struct WatchedView {
    namespaces: Store<PartialObjectMeta<Namespace>>,
    traced_services: Option<Store<TracedService>>,
    namespaces_synced: Arc<AtomicBool>,
}

impl WatchedView {
    /// A view over existing stores; `namespaces_synced` is set once the namespace store has
    /// completed its first list.
    pub fn from_stores(
        namespaces: Store<PartialObjectMeta<Namespace>>,
        traced_services: Option<Store<TracedService>>,
        namespaces_synced: Arc<AtomicBool>,
    ) -> Self {
        Self {
            namespaces,
            traced_services,
            namespaces_synced,
        }
    }
}

impl ClusterView for WatchedView {
    fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        // Before the first list completes, an absent namespace means "not known yet", not
        // "unlabelled"; answering None defers to the webhook registration's selectors.
        if !self.namespaces_synced.load(Ordering::Relaxed) {
            return None;
        }
        let ns = self.namespaces.get(&ObjectRef::new(namespace))?;
        Some(ns.metadata.labels.clone().unwrap_or_default())
    }

    fn traced_services(&self) -> Vec<Arc<TracedService>> {
        self.traced_services
            .as_ref()
            .map(Store::state)
            .unwrap_or_default()
    }
}

/// Starts the reflectors (namespaces' metadata always; TracedServices when `traced_services`),
/// and a task that flips `ready` once both caches have listed, or after `sync_timeout` with a
/// warning (a missing CRD or RBAC rule must not keep the webhook unready forever).
pub fn start(
    client: Client,
    traced_services: bool,
    ready: Arc<AtomicBool>,
    sync_timeout: Duration,
) -> WatchedView {
    let (ns_reader, ns_writer) = reflector::store();
    let ns_stream = watcher::watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    tokio::spawn(drain(
        "namespaces",
        reflector::reflector(ns_writer, ns_stream),
    ));

    let ts_reader = traced_services.then(|| {
        let (reader, writer) = reflector::store();
        let stream = watcher::watcher(
            Api::<TracedService>::all(client),
            watcher::Config::default(),
        )
        .default_backoff();
        tokio::spawn(drain(
            "tracedservices",
            reflector::reflector(writer, stream),
        ));
        reader
    });

    let namespaces_synced = Arc::new(AtomicBool::new(false));
    let view = WatchedView {
        namespaces: ns_reader.clone(),
        traced_services: ts_reader.clone(),
        namespaces_synced: Arc::clone(&namespaces_synced),
    };
    tokio::spawn(async move {
        let ns_wait = async {
            if ns_reader.wait_until_ready().await.is_ok() {
                namespaces_synced.store(true, Ordering::Relaxed);
            }
        };
        let ts_wait = async {
            if let Some(r) = ts_reader {
                let _ = r.wait_until_ready().await;
            }
        };
        match tokio::time::timeout(sync_timeout, futures::future::join(ns_wait, ts_wait)).await {
            Ok(_) => tracing::info!("namespace and TracedService caches synced"),
            Err(_) => tracing::warn!(
                timeout_secs = sync_timeout.as_secs(),
                "caches not synced in time (CRD installed? RBAC list/watch on namespaces and tracedservices?); serving anyway"
            ),
        }
        ready.store(true, Ordering::Relaxed);
    });
    view
}

/// Drives a reflector stream, logging errors (the watcher retries with backoff).
async fn drain<S, T>(what: &'static str, stream: S)
where
    S: futures::Stream<Item = watcher::Result<T>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        if let Err(e) = item {
            tracing::warn!(watch = what, error = %e, "watch error; retrying");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use kube::runtime::watcher::Event;

    fn namespace(name: &str, labels: &[(&str, &str)]) -> PartialObjectMeta<Namespace> {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels.iter().cloned().collect::<BTreeMap<_, _>>()}
        }))
        .expect("namespace meta")
    }

    #[test]
    fn watched_view_answers_from_the_stores_once_synced() {
        let (ns_reader, mut ns_writer) = reflector::store();
        let (ts_reader, mut ts_writer) = reflector::store::<TracedService>();
        let synced = Arc::new(AtomicBool::new(false));
        let view = WatchedView::from_stores(ns_reader, Some(ts_reader), Arc::clone(&synced));
        ns_writer.apply_watcher_event(&Event::Apply(namespace(
            "shop",
            &[("sidetrace.dev/inject", "enabled")],
        )));
        ns_writer.apply_watcher_event(&Event::Apply(namespace("plain", &[])));
        // Before the first list completes nothing is known.
        assert_eq!(view.namespace_labels("shop"), None);
        synced.store(true, Ordering::Relaxed);
        assert_eq!(
            view.namespace_labels("shop")
                .and_then(|l| l.get("sidetrace.dev/inject").cloned()),
            Some("enabled".to_owned())
        );
        assert_eq!(view.namespace_labels("plain"), Some(BTreeMap::new()));
        assert_eq!(view.namespace_labels("created-a-moment-ago"), None);

        let ts: TracedService = serde_json::from_value(serde_json::json!({
            "apiVersion": "sidetrace.dev/v1alpha1", "kind": "TracedService",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}}
        }))
        .expect("traced service");
        ts_writer.apply_watcher_event(&Event::Apply(ts.clone()));
        assert_eq!(view.traced_services().len(), 1);
        ts_writer.apply_watcher_event(&Event::Delete(ts));
        assert!(view.traced_services().is_empty());
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("1", "29+"), Some((1, 29)));
        assert_eq!(parse_version("1", "x"), None);
        assert!(supports_native_sidecars((1, 29)));
        assert!(supports_native_sidecars((1, 34)));
        assert!(!supports_native_sidecars((1, 28)));
        assert!(supports_native_sidecars((2, 0)));
    }
}

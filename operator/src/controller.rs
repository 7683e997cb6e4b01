//! The TracedService controller: watches TracedServices, their ConfigMaps, pod metadata and
//! namespace labels; reconciles each TracedService into its ConfigMap and status.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use sidetrace_contract::names;
use sidetrace_crds::TracedService;
use sidetrace_crds::selection::{matching, selector_matches};

use crate::pod_matches::PodMatches;
use crate::render::{desired_config_map, is_up_to_date};
use crate::status::{Observed, PodFacts, desired_status, transitions};
use crate::telemetry::Metrics;
use crate::{Error, Result};

/// How often a TracedService is reconciled with no event (collector DNS, missed pod moves).
const RESYNC: Duration = Duration::from_secs(300);
/// Backoff bounds for failed reconciles.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How long a collector DNS lookup may take.
const DNS_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything reconcile needs, handed to it by the controller.
pub struct Context {
    pub client: Client,
    pub pods: Store<PartialObjectMeta<Pod>>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    pub traced_services: Store<TracedService>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub check_collector_dns: bool,
    /// The namespace the control plane runs in, whose pods are never injected.
    pub control_plane_namespace: String,
    failures: Mutex<HashMap<ObjectRef<TracedService>, u32>>,
}

impl Context {
    /// Builds the context from a client and the caches (the tests hand in a mocked client and
    /// stores they fill themselves).
    pub fn new(
        client: Client,
        pods: Store<PartialObjectMeta<Pod>>,
        namespaces: Store<PartialObjectMeta<Namespace>>,
        traced_services: Store<TracedService>,
        metrics: Arc<Metrics>,
        check_collector_dns: bool,
        control_plane_namespace: String,
    ) -> Self {
        let reporter = Reporter {
            controller: "sidetrace-operator".into(),
            instance: None,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            pods,
            namespaces,
            traced_services,
            metrics,
            check_collector_dns,
            control_plane_namespace,
            failures: Mutex::new(HashMap::new()),
        }
    }
}

fn labels_of<K: Resource>(obj: &K) -> BTreeMap<String, String> {
    obj.meta().labels.clone().unwrap_or_default()
}

/// Bounded exponential backoff for the n-th consecutive failure.
pub fn backoff(failures: u32) -> Duration {
    let factor = 1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX);
    BACKOFF_MIN.saturating_mul(factor).min(BACKOFF_MAX)
}

/// What the caches say about the pods a TracedService selects, and who else selects them.
pub fn observe_pods(
    ts: &TracedService,
    pods: &[Arc<PartialObjectMeta<Pod>>],
    namespace_labels: &BTreeMap<String, String>,
    all: &[Arc<TracedService>],
    control_plane_namespace: &str,
    observed: &mut Observed,
) {
    let ns = ts.namespace().unwrap_or_default();
    let me = ts.name_any();
    let mut outranked_by = BTreeSet::new();
    let mut outranks = BTreeSet::new();
    for pod in pods {
        if pod.namespace().as_deref() != Some(ns.as_str())
            || pod.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let labels = labels_of(pod.as_ref());
        if !selector_matches(&ts.spec.selector, &labels) {
            continue;
        }
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        if ts.spec.sampling.as_ref().is_some_and(|s| s.rate.is_some())
            && annotations.contains_key(names::annotations::SAMPLING)
        {
            observed.sampling_overridden.push(pod.name_any());
        }
        observed.pods.push(PodFacts::from_metadata(
            &pod.name_any(),
            &ns,
            &labels,
            &annotations,
            namespace_labels,
            control_plane_namespace,
        ));
        let rivals = matching(all.iter().map(Arc::as_ref), &ns, &labels);
        let mut winner_seen = false;
        for (rank, rival) in rivals.iter().enumerate() {
            let name = rival.name_any();
            if name == me {
                winner_seen = rank == 0;
                continue;
            }
            if !winner_seen && rank == 0 {
                outranked_by.insert(name);
            } else if winner_seen {
                outranks.insert(name);
            }
        }
    }
    observed.outranked_by = outranked_by.into_iter().collect();
    observed.outranks = outranks.into_iter().collect();
    observed.pods.sort_by(|a, b| a.name.cmp(&b.name));
}

async fn collector_unresolvable(endpoint: &str) -> Option<String> {
    let rest = endpoint.split("://").nth(1)?;
    let authority = rest.split('/').next()?;
    let default_port = if endpoint.starts_with("https") {
        443
    } else {
        80
    };
    let target = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    };
    match tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host(target.clone())).await {
        Ok(Ok(mut addrs)) => match addrs.next() {
            Some(_) => None,
            None => Some(format!("collector host {target} resolves to no address")),
        },
        Ok(Err(e)) => Some(format!("collector host {target} does not resolve: {e}")),
        Err(_) => Some(format!(
            "collector host {target} did not resolve within {DNS_TIMEOUT:?}"
        )),
    }
}

async fn publish(ctx: &Context, ts: &TracedService, reason: &str, note: String, warning: bool) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    match ctx.recorder.publish(&event, &ts.object_ref(&())).await {
        Ok(()) => {
            ctx.metrics.events_published.inc();
        }
        // Events are best effort: a failure must not fail the reconcile.
        Err(e) => tracing::warn!(error = %e, "publishing event failed"),
    }
}

/// Reconciles one TracedService.
#[tracing::instrument(skip_all, fields(namespace = ts.namespace().unwrap_or_default(), name = ts.name_any()))]
pub async fn reconcile(ts: Arc<TracedService>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_inner(&ts, &ctx).await;
    ctx.metrics.observe_reconcile(started.elapsed());
    let key = ObjectRef::from_obj(ts.as_ref());
    if result.is_ok() {
        ctx.metrics.reconcile_ok.inc();
        if let Ok(mut f) = ctx.failures.lock() {
            f.remove(&key);
        }
    }
    result
}

async fn reconcile_inner(ts: &TracedService, ctx: &Context) -> Result<Action> {
    let ns = ts
        .namespace()
        .ok_or_else(|| Error::MissingField(ts.name_any(), "metadata.namespace"))?;
    let name = ts.name_any();
    let mut observed = Observed {
        name: name.clone(),
        generation: ts.metadata.generation,
        ..Observed::default()
    };

    match ts.spec.validate() {
        Err(invalid) => {
            tracing::info!(reason = %invalid, "invalid spec; keeping the last rendered config");
            ctx.metrics.invalid_specs.inc();
            observed.invalid_spec = Some(invalid.to_string());
        }
        Ok(()) => {
            observed.sampling_ineffective = ts.spec.to_proxy_config(None).ineffective_sampling();
            let desired = desired_config_map(ts)
                .ok_or_else(|| Error::MissingField(name.clone(), "metadata.uid"))?;
            let cm_name = names::config_map_name(&name);
            let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
            let existing = cms.get_opt(&cm_name).await?;
            if existing
                .as_ref()
                .is_none_or(|e| !is_up_to_date(e, &desired))
            {
                let params = PatchParams::apply(names::OPERATOR_FIELD_MANAGER).force();
                cms.patch(&cm_name, &params, &Patch::Apply(&desired))
                    .await?;
                ctx.metrics.config_map_writes.inc();
                tracing::info!(config_map = %cm_name, "sidecar config rendered");
                publish(
                    ctx,
                    ts,
                    "ConfigRendered",
                    format!("rendered sidecar config to ConfigMap {cm_name}"),
                    false,
                )
                .await;
            }
            observed.config_map = Some(cm_name);
            if ctx.check_collector_dns
                && let Some(c) = &ts.spec.collector
            {
                observed.collector_unresolvable = collector_unresolvable(&c.endpoint).await;
            }
        }
    }

    let ns_labels = ctx
        .namespaces
        .get(&ObjectRef::new(&ns))
        .map(|n| labels_of(n.as_ref()))
        .unwrap_or_default();
    observe_pods(
        ts,
        &ctx.pods.state(),
        &ns_labels,
        &ctx.traced_services.state(),
        &ctx.control_plane_namespace,
        &mut observed,
    );

    let status = desired_status(
        &observed,
        ts.status.as_ref(),
        Time(k8s_openapi::jiff::Timestamp::now()),
    );
    if ts.status.as_ref() != Some(&status) {
        let api: Api<TracedService> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = serde_json::json!({
            "apiVersion": TracedService::api_version(&()),
            "kind": TracedService::kind(&()),
            "status": status,
        });
        let params = PatchParams::apply(names::OPERATOR_FIELD_MANAGER).force();
        api.patch_status(&name, &params, &Patch::Apply(&patch))
            .await?;
        ctx.metrics.status_writes.inc();
        for t in transitions(ts.status.as_ref(), &status) {
            publish(ctx, ts, &t.reason, t.message, t.warning).await;
        }
    }
    Ok(Action::requeue(RESYNC))
}

/// Failed reconciles back off exponentially per object, bounded by [`BACKOFF_MAX`].
pub fn error_policy(ts: Arc<TracedService>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.inc();
    let key = ObjectRef::from_obj(ts.as_ref());
    let n = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(key).or_insert(0);
            *n = n.saturating_add(1);
            *n
        })
        .unwrap_or(1);
    let wait = backoff(n - 1);
    tracing::warn!(error = %error, kind = error.metric_label(), retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

/// Builds the caches and runs the controller until shutdown.
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    check_collector_dns: bool,
    control_plane_namespace: String,
) -> Result<()> {
    let ts_api: Api<TracedService> = Api::all(client.clone());
    // Fail fast with a clear message when the CRD is not installed.
    ts_api.list(&ListParams::default().limit(1)).await?;

    let (pods, pod_writer) = reflector::store();
    let pod_stream = reflector::reflector(
        pod_writer,
        // Metadata only: labels and annotations are all the status needs, at a fraction of the memory.
        watcher(
            Api::<PartialObjectMeta<Pod>>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects();
    let (namespaces, ns_writer) = reflector::store();
    let ns_stream = reflector::reflector(
        ns_writer,
        watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects();

    let controller = Controller::new(ts_api, watcher::Config::default());
    let traced_services = controller.store();
    let by_pod = traced_services.clone();
    let by_namespace = traced_services.clone();
    let pod_matches = PodMatches::default();
    let pod_cache = pods.clone();
    let managed = format!("{}={}", names::MANAGED_BY_LABEL, names::MANAGED_BY_VALUE);

    let ctx = Arc::new(Context::new(
        client.clone(),
        pods.clone(),
        namespaces.clone(),
        traced_services,
        metrics.clone(),
        check_collector_dns,
        control_plane_namespace,
    ));
    let ready = metrics.clone();
    tokio::spawn(async move {
        if pods.wait_until_ready().await.is_ok() && namespaces.wait_until_ready().await.is_ok() {
            ready
                .ready
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });

    controller
        .owns(
            Api::<ConfigMap>::all(client.clone()),
            watcher::Config::default().labels(&managed),
        )
        .watches_stream(pod_stream, move |pod: PartialObjectMeta<Pod>| {
            let ns = pod.namespace().unwrap_or_default();
            let labels = labels_of(&pod);
            let now = by_pod
                .state()
                .iter()
                .filter(|ts| ts.namespace().as_deref() == Some(ns.as_str()))
                .filter(|ts| selector_matches(&ts.spec.selector, &labels))
                .map(|ts| ObjectRef::from_obj(ts.as_ref()))
                .collect::<Vec<_>>();
            // Plus the TracedServices it matched before (a relabelled pod leaves one).
            let all = pod_matches.update(&ns, &pod.name_any(), now);
            pod_matches.prune(|ns, name| pod_cache.get(&ObjectRef::new(name).within(ns)).is_some());
            all
        })
        .watches_stream(ns_stream, move |ns: PartialObjectMeta<Namespace>| {
            let name = ns.name_any();
            by_namespace
                .state()
                .iter()
                .filter(|ts| ts.namespace().as_deref() == Some(name.as_str()))
                .map(|ts| ObjectRef::from_obj(ts.as_ref()))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::PodState;

    #[test]
    fn backoff_is_exponential_and_bounded() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(20), BACKOFF_MAX);
    }

    fn ts(name: &str, created: i64, app: &str) -> Arc<TracedService> {
        let mut t = TracedService::new(
            name,
            serde_json::from_value(serde_json::json!({"selector": {"matchLabels": {"app": app}}}))
                .expect("spec"),
        );
        t.metadata.namespace = Some("shop".into());
        t.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(created).expect("t"),
        ));
        Arc::new(t)
    }

    fn pod(name: &str, ns: &str, app: &str, injected: bool) -> Arc<PartialObjectMeta<Pod>> {
        let mut p: PartialObjectMeta<Pod> = PartialObjectMeta::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some(ns.into());
        p.metadata.labels = Some(BTreeMap::from([("app".to_owned(), app.to_owned())]));
        if injected {
            p.metadata.annotations = Some(BTreeMap::from([(
                names::STATUS_ANNOTATION.to_owned(),
                "{}".to_owned(),
            )]));
        }
        Arc::new(p)
    }

    #[test]
    fn pods_are_counted_and_conflicts_ranked() {
        let old = ts("old", 100, "cart");
        let young = ts("young", 200, "cart");
        let other = ts("other", 50, "pay");
        let all = vec![old.clone(), young.clone(), other.clone()];
        let pods = vec![
            pod("cart-1", "shop", "cart", true),
            pod("cart-2", "shop", "cart", false),
            pod("cart-3", "elsewhere", "cart", false),
            pod("pay-1", "shop", "pay", false),
        ];
        let ns_labels = BTreeMap::from([(names::INJECT_LABEL.to_owned(), "enabled".to_owned())]);

        let mut o = Observed::default();
        observe_pods(&young, &pods, &ns_labels, &all, "sidetrace-system", &mut o);
        assert_eq!(o.pods.len(), 2);
        assert_eq!(o.outranked_by, vec!["old".to_owned()]);
        assert!(o.outranks.is_empty());

        let mut o = Observed::default();
        observe_pods(&old, &pods, &ns_labels, &all, "sidetrace-system", &mut o);
        assert_eq!(o.outranks, vec!["young".to_owned()]);
        assert!(o.outranked_by.is_empty());
        assert_eq!(
            o.pods
                .iter()
                .filter(|p| matches!(p.state, PodState::Injected { .. }))
                .count(),
            1
        );
        assert_eq!(
            o.pods
                .iter()
                .filter(|p| matches!(p.state, PodState::Missing { .. }))
                .count(),
            1
        );

        let mut o = Observed::default();
        observe_pods(&other, &pods, &ns_labels, &all, "sidetrace-system", &mut o);
        assert_eq!(o.pods.len(), 1);
        assert!(o.outranked_by.is_empty() && o.outranks.is_empty());
    }
}

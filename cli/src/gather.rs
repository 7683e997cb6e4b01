//! The I/O edge: reads the cluster into the plain facts that [`crate::check`] and
//! [`crate::status`] judge. The proxies' admin ports and Jaeger's query API are reached through
//! the API server's pod and service proxies, so nothing needs a port-forward or a route to the
//! pod network.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, CustomResourceExt as _, ResourceExt as _};
use serde::de::DeserializeOwned;
use sidetrace_contract::injection::{self, PodState, SkipRecord};
use sidetrace_contract::{defaults, names, workload};
use sidetrace_crds::TracedService;

use crate::check::{
    self, Check, CollectorFacts, ConditionFacts, CrdFacts, DeploymentFacts, LeaseFacts,
    NamespaceFacts, PodFacts, Probe, WebhookFacts,
};
use crate::proxy::{self, ProxyView};
use crate::spans::{self, Span};
use crate::status::{self, PodRow};
use crate::{Error, Result};

/// The key of a `kubernetes.io/tls` Secret that holds the serving certificate chain.
const TLS_CERT_KEY: &str = "tls.crt";

/// Which namespaces a command looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `-n NS`.
    One(String),
    /// `-A`, or no `-n`: every namespace where sidetrace is in use (labelled for injection,
    /// holding a TracedService or pods that opt in or carry the sidecar).
    InUse,
}

/// Where the control plane is and how long one request may take.
#[derive(Clone)]
pub struct Target {
    /// The API client.
    pub client: Client,
    /// The control plane's namespace.
    pub control_plane: String,
    /// Bound on each request through the API server's proxies.
    pub timeout: Duration,
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Api { what, source }
}

async fn get_opt<K>(api: Api<K>, name: &str, what: &str) -> Result<Option<K>>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name)
        .await
        .map_err(api_err(format!("GET {what} {name}")))
}

async fn list<K>(api: Api<K>, lp: &ListParams, what: &str) -> Result<Vec<K>>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    Ok(api
        .list(lp)
        .await
        .map_err(api_err(format!("LIST {what}")))?
        .items)
}

impl Target {
    /// GET `path` on the API server (a pod or service proxy path), as text, within the bound;
    /// an error status is [`Error::Status`] with the answer's text (a proxied pod's answer is
    /// not the API server's Status object, so kube's own error mapping would lose it).
    async fn get_text(&self, path: &str) -> Result<String> {
        let what = format!("GET {path}");
        let req = http::Request::get(path)
            .body(kube::client::Body::from(Vec::new()))
            .map_err(|e| Error::Invalid {
                what: what.clone(),
                message: e.to_string(),
            })?;
        let exchange = async {
            let resp = self.client.send(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect_bytes().await?;
            Ok::<_, kube::Error>((status, String::from_utf8_lossy(&body).into_owned()))
        };
        let (status, body) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r.map_err(api_err(what.clone()))?,
            Err(_) => {
                return Err(Error::Timeout {
                    what,
                    secs: self.timeout.as_secs(),
                });
            }
        };
        if status.is_success() {
            Ok(body)
        } else {
            Err(Error::Status {
                what,
                status,
                body: body.trim().chars().take(500).collect(),
            })
        }
    }

    /// A path on a pod's admin port through the API server's pod proxy.
    async fn admin(&self, namespace: &str, pod: &str, path: &str) -> Result<String> {
        self.get_text(&format!(
            "/api/v1/namespaces/{namespace}/pods/{pod}:{}/proxy{path}",
            defaults::ADMIN_PORT
        ))
        .await
    }

    /// The namespaces in scope with their labels, sorted by name.
    async fn namespaces(&self, scope: &Scope) -> Result<Vec<Namespace>> {
        let all: Api<Namespace> = Api::all(self.client.clone());
        match scope {
            Scope::One(ns) => Ok(vec![get_opt(all, ns, "namespace").await?.ok_or_else(
                || Error::Invalid {
                    what: format!("namespace {ns}"),
                    message: "not found".into(),
                },
            )?]),
            Scope::InUse => {
                let mut in_use: BTreeSet<String> = BTreeSet::new();
                let tss: Api<TracedService> = Api::all(self.client.clone());
                for ts in list(tss, &ListParams::default(), "tracedservices").await? {
                    in_use.extend(ts.namespace());
                }
                let pods: Api<Pod> = Api::all(self.client.clone());
                let lp = ListParams::default().labels(names::INJECT_LABEL);
                for p in list(pods.clone(), &lp, "pods").await? {
                    in_use.extend(p.namespace());
                }
                for p in list(pods, &ListParams::default(), "pods").await? {
                    if p.annotations().contains_key(names::STATUS_ANNOTATION) {
                        in_use.extend(p.namespace());
                    }
                }
                let mut out = Vec::new();
                for ns in list(all, &ListParams::default(), "namespaces").await? {
                    let name = ns.name_any();
                    let labelled = ns.labels().contains_key(names::INJECT_LABEL);
                    let ours = name == self.control_plane
                        || injection::SYSTEM_NAMESPACES.contains(&name.as_str());
                    if !ours && (labelled || in_use.contains(&name)) {
                        out.push(ns);
                    }
                }
                Ok(out)
            }
        }
    }

    /// The pods of `namespace` that have not finished.
    async fn live_pods(&self, namespace: &str) -> Result<Vec<Pod>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let mut out = list(pods, &ListParams::default(), "pods").await?;
        out.retain(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
                && p.metadata.deletion_timestamp.is_none()
        });
        out.sort_by_key(|p| p.name_any());
        Ok(out)
    }

    /// What one proxy says about itself.
    pub async fn proxy_view(&self, namespace: &str, pod: &str) -> ProxyView {
        let mut view = ProxyView {
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
            ready: Ok(()),
            config: None,
            metrics: None,
            errors: Vec::new(),
        };
        view.ready = match self.admin(namespace, pod, "/ready").await {
            Ok(_) => Ok(()),
            Err(Error::Status { status, body, .. }) => Err(format!("{status}: {body}")),
            Err(e) => Err(e.to_string()),
        };
        match self.admin(namespace, pod, "/config").await {
            Ok(body) => match proxy::parse_config(&body) {
                Ok(c) => view.config = Some(c),
                Err(e) => view.errors.push(e),
            },
            Err(e) => view.errors.push(e.to_string()),
        }
        match self.admin(namespace, pod, "/metrics").await {
            Ok(body) => view.metrics = Some(proxy::parse_metrics(&body)),
            Err(e) => view.errors.push(e.to_string()),
        }
        view
    }
}

fn is_injected(p: &Pod) -> bool {
    p.annotations().contains_key(names::STATUS_ANNOTATION)
}

fn is_running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// The pod's workload as `kind/name` for `kubectl rollout restart`, by the owner rule the
/// webhook uses for resource attributes; None when only deleting the pod restarts it.
fn restartable_workload(p: &Pod) -> Option<String> {
    let owner = p
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))?;
    let hash = p.labels().get(workload::POD_TEMPLATE_HASH_LABEL);
    let attrs = workload::workload_attributes(&owner.kind, &owner.name, hash.map(String::as_str));
    let (key, name) = attrs.last()?;
    let kind = key.strip_prefix("k8s.")?.strip_suffix(".name")?;
    matches!(kind, "deployment" | "statefulset" | "daemonset").then(|| format!("{kind}/{name}"))
}

/// Ready containers over containers (native sidecars count as containers, as kubectl shows).
fn ready_column(p: &Pod) -> String {
    let Some(spec) = &p.spec else {
        return "-".into();
    };
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .count();
    let total = spec.containers.len() + sidecars;
    let status = p.status.as_ref();
    let ready = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .chain(status.and_then(|s| s.init_container_statuses.as_ref()))
        .flatten()
        .filter(|s| s.ready)
        .count();
    format!("{ready}/{total}")
}

fn deployment_facts(d: &Deployment) -> DeploymentFacts {
    DeploymentFacts {
        desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        available: d
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0),
    }
}

/// The name the API server dials for a webhook: the URL's host, or the Service's DNS name.
fn dialled_name(w: &k8s_openapi::api::admissionregistration::v1::MutatingWebhook) -> String {
    let cc = &w.client_config;
    if let Some(url) = &cc.url {
        return url
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_owned()))
            .unwrap_or_else(|| url.clone());
    }
    cc.service
        .as_ref()
        .map(|s| format!("{}.{}.svc", s.name, s.namespace))
        .unwrap_or_default()
}

fn webhook_target(w: &k8s_openapi::api::admissionregistration::v1::MutatingWebhook) -> String {
    let cc = &w.client_config;
    match (&cc.url, &cc.service) {
        (Some(url), _) => url.clone(),
        (None, Some(s)) => format!(
            "service {}/{}:{}",
            s.namespace,
            s.name,
            s.port.unwrap_or(443)
        ),
        (None, None) => "nowhere".into(),
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A server-side dry-run pod in `namespace`: what the webhook did with it.
async fn probe_webhook(client: &Client, namespace: &str) -> Probe {
    let pod: Pod = match serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "sidetrace-check-", "namespace": namespace},
        // Never pulled: a dry run stores and runs nothing.
        "spec": {"containers": [{"name": "app", "image": "sidetrace.invalid/check:dry-run"}]}
    })) {
        Ok(p) => p,
        Err(e) => {
            return Probe::Refused {
                namespace: namespace.to_owned(),
                message: e.to_string(),
            };
        }
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pp = PostParams {
        dry_run: true,
        field_manager: None,
    };
    match pods.create(&pp, &pod).await {
        Ok(admitted) => {
            let spec = admitted.spec.as_ref();
            let injected = spec
                .map(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                })
                .into_iter()
                .flatten()
                .any(|c| c.name == names::PROXY_CONTAINER_NAME);
            if injected {
                return Probe::Injected {
                    namespace: namespace.to_owned(),
                };
            }
            match admitted
                .annotations()
                .get(names::SKIP_ANNOTATION)
                .and_then(|v| SkipRecord::parse(v))
            {
                Some(r) => Probe::Skipped {
                    namespace: namespace.to_owned(),
                    message: r.message,
                },
                None => Probe::Untouched {
                    namespace: namespace.to_owned(),
                },
            }
        }
        Err(kube::Error::Api(s)) => Probe::Refused {
            namespace: namespace.to_owned(),
            message: s.message,
        },
        Err(e) => Probe::Refused {
            namespace: namespace.to_owned(),
            message: e.to_string(),
        },
    }
}

/// The control plane's checks: CRD, operator and its Lease, injector, webhook registration,
/// caBundle, and (through a dry-run pod in `probe_namespace`) reachability.
async fn control_plane(t: &Target, probe_namespace: Option<&str>) -> Result<Vec<Check>> {
    let cp = t.control_plane.as_str();
    let c = &t.client;
    let mut out = Vec::new();
    let crd_name = TracedService::crd_name();
    let crd = get_opt(
        Api::<CustomResourceDefinition>::all(c.clone()),
        crd_name,
        "customresourcedefinition",
    )
    .await?
    .map(|crd| CrdFacts {
        established: crd
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Established" && c.status == "True"),
        served: crd
            .spec
            .versions
            .iter()
            .filter(|v| v.served)
            .map(|v| v.name.clone())
            .collect(),
    });
    out.push(check::crd(crd_name, crd.as_ref()));

    let deployment = |role: &'static str, name: &'static str| async move {
        let api: Api<Deployment> = Api::namespaced(c.clone(), cp);
        let d = get_opt(api, name, "deployment").await?;
        Ok::<_, Error>(check::deployment(
            role,
            cp,
            name,
            d.as_ref().map(deployment_facts),
        ))
    };
    out.push(deployment("operator", defaults::OPERATOR_NAME).await?);
    let lease = get_opt(
        Api::<Lease>::namespaced(c.clone(), cp),
        defaults::OPERATOR_NAME,
        "lease",
    )
    .await?
    .map(|l| {
        let spec = l.spec.unwrap_or_default();
        LeaseFacts {
            holder: spec.holder_identity,
            renewed_secs_ago: spec
                .renew_time
                .map(|t| k8s_openapi::jiff::Timestamp::now().as_second() - t.0.as_second()),
            duration_secs: spec.lease_duration_seconds,
        }
    });
    out.push(check::leader(cp, defaults::OPERATOR_NAME, lease.as_ref()));
    out.push(deployment("injector", defaults::INJECTOR_NAME).await?);

    let mwc = get_opt(
        Api::<MutatingWebhookConfiguration>::all(c.clone()),
        defaults::INJECTOR_NAME,
        "mutatingwebhookconfiguration",
    )
    .await?;
    let webhooks = mwc.as_ref().map(|m| m.webhooks.clone().unwrap_or_default());
    let facts: Option<Vec<WebhookFacts>> = webhooks.as_ref().map(|ws| {
        ws.iter()
            .map(|w| WebhookFacts {
                name: w.name.clone(),
                target: webhook_target(w),
                failure_policy: w.failure_policy.clone().unwrap_or_else(|| "Fail".into()),
                has_ca_bundle: w
                    .client_config
                    .ca_bundle
                    .as_ref()
                    .is_some_and(|b| !b.0.is_empty()),
            })
            .collect()
    });
    out.push(check::webhook_registered(
        defaults::INJECTOR_NAME,
        facts.as_deref(),
    ));
    if let Some(w) = webhooks.as_ref().and_then(|ws| ws.first())
        && let Some(bundle) = &w.client_config.ca_bundle
    {
        let secret = get_opt(
            Api::<Secret>::namespaced(c.clone(), cp),
            defaults::WEBHOOK_SECRET,
            "secret",
        )
        .await?;
        let serving = secret
            .as_ref()
            .and_then(|s| s.data.as_ref())
            .and_then(|d| d.get(TLS_CERT_KEY))
            .map(|b| b.0.clone());
        let name = dialled_name(w);
        let outcome = match serving {
            Some(cert) => crate::ca::verify_serving_cert(&bundle.0, &cert, &name, now_unix()),
            None => Err(format!(
                "secret {cp}/{} holds no {TLS_CERT_KEY}",
                defaults::WEBHOOK_SECRET
            )),
        };
        out.push(check::ca_bundle(
            &format!("{cp}/{}", defaults::WEBHOOK_SECRET),
            &name,
            &outcome,
        ));
    }
    if mwc.is_some() {
        let probe = match probe_namespace {
            Some(ns) => probe_webhook(c, ns).await,
            None => Probe::NoNamespace,
        };
        out.push(check::webhook_reachable(
            defaults::INJECTOR_NAME,
            cp,
            &probe,
        ));
    }
    Ok(out)
}

/// A namespace that admits injected pods, to probe the webhook in: the one asked for if it
/// does, else the first labelled one.
fn probe_namespace<'a>(scope: &Scope, all: &'a [Namespace]) -> Option<&'a str> {
    let admits = |ns: &Namespace| {
        ns.labels().get(names::INJECT_LABEL).map(String::as_str)
            == Some(names::INJECT_NAMESPACE_ENABLED)
            && !ns
                .labels()
                .get(names::POD_SECURITY_ENFORCE_LABEL)
                .is_some_and(|l| names::POD_SECURITY_LEVELS_REJECTING_INIT.contains(&l.as_str()))
    };
    let candidates = all.iter().filter(|ns| admits(ns));
    match scope {
        Scope::One(want) => all
            .iter()
            .find(|ns| ns.name_any() == *want && admits(ns))
            .or_else(|| candidates.clone().next()),
        Scope::InUse => candidates.clone().next(),
    }
    .and_then(|ns| ns.metadata.name.as_deref())
}

/// The Service a collector URL names, `(namespace, name)`, by DNS name (`svc`, `svc.ns`,
/// `svc.ns.svc[.cluster.local]`) or by ClusterIP; None when it is not one of this cluster's.
async fn collector_service(
    t: &Target,
    url: &str,
    pod_namespace: &str,
) -> Result<Option<(String, String)>> {
    let Some(host) = url
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_owned()))
    else {
        return Ok(None);
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        let services: Api<Service> = Api::all(t.client.clone());
        let all = list(services, &ListParams::default(), "services").await?;
        return Ok(all
            .into_iter()
            .find(|s| {
                s.spec
                    .as_ref()
                    .and_then(|s| s.cluster_ips.as_ref())
                    .into_iter()
                    .flatten()
                    .any(|c| c.parse::<IpAddr>().ok() == Some(ip))
            })
            .map(|s| (s.namespace().unwrap_or_default(), s.name_any())));
    }
    let parts: Vec<&str> = host.split('.').collect();
    let (name, ns) = match parts.as_slice() {
        [name] => (*name, pod_namespace),
        [name, ns] => (*name, *ns),
        [name, ns, "svc", ..] => (*name, *ns),
        _ => return Ok(None),
    };
    Ok(Some((ns.to_owned(), name.to_owned())))
}

async fn ready_endpoints(t: &Target, namespace: &str, service: &str) -> Result<usize> {
    let slices: Api<EndpointSlice> = Api::namespaced(t.client.clone(), namespace);
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    Ok(list(slices, &lp, "endpointslices")
        .await?
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .count())
}

/// Every check, in order: control plane, then each namespace (its labels, pods and
/// TracedServices, and up to `proxies` sampled proxies), then the collectors they post to.
pub async fn check(t: &Target, scope: &Scope, proxies: usize) -> Result<Vec<Check>> {
    let namespaces = t.namespaces(scope).await?;
    let all_namespaces = list(
        Api::<Namespace>::all(t.client.clone()),
        &ListParams::default(),
        "namespaces",
    )
    .await?;
    let mut out = control_plane(t, probe_namespace(scope, &all_namespaces)).await?;
    let mut collectors: BTreeMap<String, String> = BTreeMap::new();
    for ns in &namespaces {
        let name = ns.name_any();
        let pods = t.live_pods(&name).await?;
        let tss = list(
            Api::<TracedService>::namespaced(t.client.clone(), &name),
            &ListParams::default(),
            "tracedservices",
        )
        .await?;
        let ns_labels = ns.labels().clone();
        let facts = NamespaceFacts {
            name: name.clone(),
            labels: ns_labels.clone(),
            traced_services: tss.len(),
            pods: pods
                .iter()
                .map(|p| PodFacts {
                    name: p.name_any(),
                    state: injection::pod_state(
                        &name,
                        p.labels(),
                        p.annotations(),
                        &ns_labels,
                        &t.control_plane,
                    ),
                    workload: restartable_workload(p),
                })
                .collect(),
        };
        out.extend(check::namespace(&facts));
        for ts in &tss {
            let conditions: Vec<ConditionFacts> = ts
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|c| ConditionFacts {
                    type_: c.type_,
                    status: c.status,
                    reason: c.reason,
                    message: c.message,
                })
                .collect();
            out.push(check::traced_service(&name, &ts.name_any(), &conditions));
        }
        let sampled = facts
            .pods
            .iter()
            .zip(&pods)
            .filter(|(f, p)| matches!(f.state, PodState::Injected { .. }) && is_running(p))
            .take(proxies);
        for (f, _) in sampled {
            let view = t.proxy_view(&name, &f.name).await;
            if let Some(url) = view.config.as_ref().and_then(|c| c.collector.clone()) {
                collectors.entry(url).or_insert_with(|| name.clone());
            }
            out.extend(check::proxy(&view));
        }
    }
    for (url, pod_namespace) in collectors {
        let service = collector_service(t, &url, &pod_namespace).await?;
        let ready = match &service {
            Some((ns, name)) => ready_endpoints(t, ns, name).await?,
            None => 0,
        };
        out.push(check::collector(&CollectorFacts {
            url,
            service: service.map(|(ns, name)| format!("{ns}/{name}")),
            ready_endpoints: ready,
        }));
    }
    Ok(out)
}

/// `status`: one row per pod that carries the sidecar or is selected by a TracedService, one
/// per TracedService that selects none; spans/s from two `/metrics` readings `window` apart.
pub async fn status(t: &Target, scope: &Scope, window: Duration) -> Result<Vec<PodRow>> {
    let mut rows = Vec::new();
    let mut sampled: Vec<(usize, Option<u64>)> = Vec::new();
    for ns in t.namespaces(scope).await? {
        let name = ns.name_any();
        let tss = list(
            Api::<TracedService>::namespaced(t.client.clone(), &name),
            &ListParams::default(),
            "tracedservices",
        )
        .await?;
        let mut with_pods: BTreeSet<String> = BTreeSet::new();
        for p in t.live_pods(&name).await? {
            let winner = sidetrace_crds::selection::matching(&tss, &name, p.labels())
                .first()
                .map(|ts| ts.name_any());
            let injected = is_injected(&p);
            if winner.is_none() && !injected {
                continue;
            }
            with_pods.extend(winner.clone());
            let mut row = PodRow {
                namespace: name.clone(),
                traced_service: winner,
                pod: Some(p.name_any()),
                injected,
                ready: ready_column(&p),
                ..PodRow::default()
            };
            if injected && is_running(&p) {
                let view = t.proxy_view(&name, &p.name_any()).await;
                row.sampling = view.config.as_ref().and_then(|c| c.sampling_rate);
                row.collector = view.config.as_ref().and_then(|c| c.collector.clone());
                if let Some(m) = &view.metrics {
                    row.exported = Some(m.exported);
                    row.dropped = Some(m.dropped_total());
                    row.drop_reasons = m.drop_reasons();
                }
                sampled.push((rows.len(), row.exported));
            }
            rows.push(row);
        }
        for ts in &tss {
            if !with_pods.contains(&ts.name_any()) {
                rows.push(PodRow {
                    namespace: name.clone(),
                    traced_service: Some(ts.name_any()),
                    ready: "-".into(),
                    ..PodRow::default()
                });
            }
        }
    }
    if !window.is_zero() && !sampled.is_empty() {
        tokio::time::sleep(window).await;
        for (i, before) in sampled {
            let row = &rows[i];
            let (ns, pod) = (row.namespace.clone(), row.pod.clone().unwrap_or_default());
            let after = t
                .admin(&ns, &pod, "/metrics")
                .await
                .ok()
                .map(|b| proxy::parse_metrics(&b).exported);
            rows[i].spans_per_second = status::rate(before, after, window.as_secs_f64());
        }
    }
    Ok(rows)
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters).
fn query_value(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Whether `id` is a trace id: 16 or 32 hex digits.
pub fn is_trace_id(id: &str) -> bool {
    matches!(id.len(), 16 | 32) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Jaeger's query API through the API server's service proxy.
fn jaeger_path(t: &Target, rest: &str) -> String {
    format!(
        "/api/v1/namespaces/{}/services/{}:{}/proxy{rest}",
        t.control_plane,
        defaults::JAEGER_QUERY_SERVICE,
        defaults::JAEGER_QUERY_PORT
    )
}

fn jaeger_json(what: &str, body: &str) -> Result<serde_json::Value> {
    serde_json::from_str(body).map_err(|e| Error::Invalid {
        what: what.to_owned(),
        message: format!("not Jaeger's JSON: {e}"),
    })
}

/// The spans of trace `id` from the in-cluster Jaeger (empty when it has none).
pub async fn trace(t: &Target, id: &str) -> Result<Vec<Span>> {
    let path = jaeger_path(t, &format!("/api/traces/{}", id.to_ascii_lowercase()));
    match t.get_text(&path).await {
        Ok(body) => Ok(spans::jaeger_spans(&jaeger_json(&path, &body)?)),
        // Jaeger's own 404 (its JSON errors); the API server's 404 for a missing Service is
        // a Status object naming the kind.
        Err(Error::Status { status, body, .. })
            if status == http::StatusCode::NOT_FOUND && !body.contains("\"kind\":\"Status\"") =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// Recent traces involving `service`, newest first, from the in-cluster Jaeger.
pub async fn traces(
    t: &Target,
    service: &str,
    limit: usize,
    lookback: Duration,
) -> Result<Vec<Vec<Span>>> {
    let path = jaeger_path(
        t,
        &format!(
            "/api/traces?service={}&limit={limit}&lookback={}s",
            query_value(service),
            lookback.as_secs().max(1)
        ),
    );
    let body = t.get_text(&path).await?;
    let mut traces = spans::jaeger_traces(&jaeger_json(&path, &body)?);
    traces.sort_by_key(|tr| std::cmp::Reverse(tr.iter().filter_map(|s| s.timestamp).min()));
    Ok(traces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_are_16_or_32_hex_digits() {
        assert!(is_trace_id("463ac35c9f6413ad"));
        assert!(is_trace_id("463ac35c9f6413ad48485a3953bb6124"));
        assert!(!is_trace_id("463ac35c9f6413a"));
        assert!(!is_trace_id("zz3ac35c9f6413ad"));
        assert!(!is_trace_id("../../api/v1/secrets"));
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_value("front-proxy"), "front-proxy");
        assert_eq!(query_value("a b&c=d"), "a%20b%26c%3Dd");
    }

    #[test]
    fn restart_commands_name_the_deployment_behind_a_replicaset() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop-7c9d8-x2x4k", "labels": {"pod-template-hash": "7c9d8"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "shop-7c9d8", "uid": "u", "controller": true}]}
        }))
        .expect("pod");
        assert_eq!(
            restartable_workload(&pod).as_deref(),
            Some("deployment/shop")
        );
        let bare: Pod =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}})).expect("pod");
        assert_eq!(restartable_workload(&bare), None);
    }
}

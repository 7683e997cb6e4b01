//! `sidetrace check`: each check's verdict from plain facts, with what to do for every
//! failure. Pure: [`crate::gather`] reads the facts, [`crate::render`] prints the lines.
//!
//! Which pods should carry the sidecar is not decided here: [`PodState`] comes from
//! `sidetrace_contract::injection::pod_state`, the rule the webhook and the operator apply.

use std::collections::BTreeMap;

use serde::Serialize;
use sidetrace_contract::injection::{PodState, SkipReason};
use sidetrace_contract::names;

use crate::proxy::ProxyView;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Holds.
    Pass,
    /// Worth a look; does not fail the run.
    Warn,
    /// Spans will not arrive (or not from every pod) until this is fixed; the exit code is
    /// non-zero.
    Fail,
}

/// One line of the checklist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The group it is printed under (`control plane`, `namespace shop`, ...).
    pub section: String,
    /// What holds, or what does not.
    pub summary: String,
    /// The verdict.
    pub verdict: Verdict,
    /// What to do, for a warning or a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn pass(section: &str, summary: impl Into<String>) -> Self {
        Self {
            section: section.to_owned(),
            summary: summary.into(),
            verdict: Verdict::Pass,
            fix: None,
        }
    }

    fn fail(section: &str, summary: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            section: section.to_owned(),
            summary: summary.into(),
            verdict: Verdict::Fail,
            fix: Some(fix.into()),
        }
    }

    fn warn(section: &str, summary: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Warn,
            ..Self::fail(section, summary, fix)
        }
    }
}

/// The section name of the control plane's checks.
pub const CONTROL_PLANE: &str = "control plane";

/// Whether any check failed (the exit code is then non-zero).
pub fn any_failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.verdict == Verdict::Fail)
}

/// The CustomResourceDefinition as the API server reports it. `None`: not installed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrdFacts {
    /// Its `Established` condition is True.
    pub established: bool,
    /// Versions with `served: true`.
    pub served: Vec<String>,
}

/// The CRD is installed, established and serves the version sidetrace writes.
pub fn crd(name: &str, facts: Option<&CrdFacts>) -> Check {
    let install = "install the chart: helm install sidetrace ./helm/sidetrace -n \
                   sidetrace-system --create-namespace";
    match facts {
        None => Check::fail(
            CONTROL_PLANE,
            format!("CRD {name} is not installed"),
            install,
        ),
        Some(f) if !f.established => Check::fail(
            CONTROL_PLANE,
            format!("CRD {name} is not established"),
            format!("kubectl get crd {name} -o yaml   (its conditions say why)"),
        ),
        Some(f) if !f.served.iter().any(|v| v == names::API_VERSION) => Check::fail(
            CONTROL_PLANE,
            format!(
                "CRD {name} does not serve {} (serves: {})",
                names::API_VERSION,
                f.served.join(", ")
            ),
            format!("upgrade the chart, or: kubectl apply -f crds/{name}.yaml"),
        ),
        Some(_) => Check::pass(
            CONTROL_PLANE,
            format!("CRD {name} is installed and serves {}", names::API_VERSION),
        ),
    }
}

/// A Deployment's replica counts. `None`: it does not exist.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeploymentFacts {
    /// `spec.replicas`.
    pub desired: i32,
    /// `status.availableReplicas`.
    pub available: i32,
}

/// A control-plane Deployment has an available replica.
pub fn deployment(
    role: &str,
    namespace: &str,
    name: &str,
    facts: Option<DeploymentFacts>,
) -> Check {
    let what = format!("{role} (deployment {namespace}/{name})");
    match facts {
        None => Check::fail(
            CONTROL_PLANE,
            format!("{what} does not exist"),
            "install the chart, or pass --control-plane-namespace where it is installed",
        ),
        Some(d) if d.desired == 0 => Check::fail(
            CONTROL_PLANE,
            format!("{what} is scaled to zero"),
            format!("kubectl -n {namespace} scale deployment {name} --replicas=1"),
        ),
        Some(d) if d.available == 0 => Check::fail(
            CONTROL_PLANE,
            format!("{what} has no available replica (0 of {})", d.desired),
            format!(
                "kubectl -n {namespace} describe deployment {name}; kubectl -n {namespace} \
                 logs deployment/{name}"
            ),
        ),
        Some(d) => Check::pass(
            CONTROL_PLANE,
            format!(
                "{what} is running ({} of {} available)",
                d.available, d.desired
            ),
        ),
    }
}

/// The operator's leader-election Lease. `None`: it does not exist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseFacts {
    /// `spec.holderIdentity`.
    pub holder: Option<String>,
    /// Seconds since `spec.renewTime` (None: never renewed).
    pub renewed_secs_ago: Option<i64>,
    /// `spec.leaseDurationSeconds`.
    pub duration_secs: Option<i32>,
}

/// A leader holds the operator's Lease and renewed it within its duration.
pub fn leader(namespace: &str, name: &str, facts: Option<&LeaseFacts>) -> Check {
    let logs = format!("kubectl -n {namespace} logs deployment/{name}");
    let Some(l) = facts else {
        return Check::fail(
            CONTROL_PLANE,
            format!("no leader elected: Lease {namespace}/{name} does not exist"),
            format!("the operator creates it when it starts: {logs}"),
        );
    };
    let Some(holder) = l.holder.as_deref().filter(|h| !h.is_empty()) else {
        return Check::fail(
            CONTROL_PLANE,
            format!("no leader elected: Lease {namespace}/{name} has no holder"),
            logs,
        );
    };
    match (l.renewed_secs_ago, l.duration_secs) {
        (Some(ago), Some(d)) if ago <= i64::from(d) => Check::pass(
            CONTROL_PLANE,
            format!("operator leader elected: {holder} (renewed {ago}s ago)"),
        ),
        (ago, d) => Check::fail(
            CONTROL_PLANE,
            format!(
                "operator leader {holder} stopped renewing Lease {namespace}/{name} (renewed {} ago, \
                 lease {}s)",
                ago.map_or_else(|| "never".to_owned(), |a| format!("{a}s")),
                d.unwrap_or(0)
            ),
            logs,
        ),
    }
}

/// One webhook of the MutatingWebhookConfiguration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebhookFacts {
    /// The webhook's name.
    pub name: String,
    /// What the API server dials (`https://host/path` or `service ns/name:port`).
    pub target: String,
    /// `failurePolicy`.
    pub failure_policy: String,
    /// Whether `clientConfig.caBundle` is set.
    pub has_ca_bundle: bool,
}

/// The MutatingWebhookConfiguration exists with its webhooks and a caBundle.
pub fn webhook_registered(name: &str, webhooks: Option<&[WebhookFacts]>) -> Check {
    match webhooks {
        None => Check::fail(
            CONTROL_PLANE,
            format!("webhook {name} is not registered (no MutatingWebhookConfiguration)"),
            "install the chart: helm install sidetrace ./helm/sidetrace ...",
        ),
        Some([]) => Check::fail(
            CONTROL_PLANE,
            format!("webhook {name} is registered with no webhooks"),
            "helm upgrade sidetrace ./helm/sidetrace --reuse-values",
        ),
        Some(w) => match w.iter().find(|w| !w.has_ca_bundle) {
            Some(bare) => Check::fail(
                CONTROL_PLANE,
                format!("webhook {} has no caBundle", bare.name),
                "the operator writes it once it has issued the certificate: check the \
                 operator (above) and its logs",
            ),
            None => Check::pass(
                CONTROL_PLANE,
                format!(
                    "webhook {name} is registered ({}; failurePolicy {})",
                    w[0].target, w[0].failure_policy
                ),
            ),
        },
    }
}

/// The outcome of [`crate::ca::verify_serving_cert`] for the registration's caBundle and the
/// certificate in the webhook Secret, for the name the API server dials.
pub fn ca_bundle(secret: &str, name: &str, outcome: &Result<(), String>) -> Check {
    match outcome {
        Ok(()) => Check::pass(
            CONTROL_PLANE,
            format!("webhook caBundle matches the serving certificate in secret {secret} ({name})"),
        ),
        Err(why) => Check::fail(
            CONTROL_PLANE,
            format!(
                "webhook caBundle does not match the serving certificate in secret {secret}: {why}"
            ),
            "the operator re-syncs the caBundle from that Secret on its next certificate check \
             (--cert-check-interval): make sure it runs and read its logs; with \
             webhook.certMode=external, cert-manager's CA injector owns the caBundle",
        ),
    }
}

/// What happened to a server-side dry-run pod created to see the webhook answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The webhook injected it.
    Injected {
        /// The namespace probed.
        namespace: String,
    },
    /// The webhook answered and recorded why it left the pod alone.
    Skipped {
        /// The namespace probed.
        namespace: String,
        /// The recorded message.
        message: String,
    },
    /// The pod came back untouched with no record: the API server did not reach the webhook
    /// and `failurePolicy: Ignore` admitted the pod as it was.
    Untouched {
        /// The namespace probed.
        namespace: String,
    },
    /// The API server refused the pod (failurePolicy Fail and the webhook failed, or another
    /// admission refused it).
    Refused {
        /// The namespace probed.
        namespace: String,
        /// The API server's message.
        message: String,
    },
    /// No namespace is labelled for injection, so there was nowhere to probe.
    NoNamespace,
}

/// The webhook answers the API server (seen through a dry-run pod).
pub fn webhook_reachable(injector: &str, control_plane_namespace: &str, probe: &Probe) -> Check {
    let logs = format!(
        "kubectl -n {control_plane_namespace} get deployment,endpoints {injector}; kubectl -n \
         {control_plane_namespace} logs deployment/{injector}"
    );
    match probe {
        Probe::Injected { namespace } => Check::pass(
            CONTROL_PLANE,
            format!("webhook is reachable: a dry-run pod in {namespace} was injected"),
        ),
        Probe::Skipped { namespace, message } => Check::pass(
            CONTROL_PLANE,
            format!("webhook is reachable: it left a dry-run pod in {namespace} alone: {message}"),
        ),
        Probe::Untouched { namespace } => Check::fail(
            CONTROL_PLANE,
            format!(
                "webhook is not reachable: a dry-run pod in {namespace} was admitted without it \
                 (failurePolicy Ignore hides the error; such pods start without the sidecar)"
            ),
            logs,
        ),
        Probe::Refused { namespace, message } => Check::fail(
            CONTROL_PLANE,
            format!("webhook refused or failed a dry-run pod in {namespace}: {message}"),
            logs,
        ),
        Probe::NoNamespace => Check::warn(
            CONTROL_PLANE,
            "webhook reachability not probed: no namespace is labelled for injection",
            format!(
                "kubectl label namespace NS {}={}",
                names::INJECT_LABEL,
                names::INJECT_NAMESPACE_ENABLED
            ),
        ),
    }
}

/// A pod of a checked namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    /// Its name.
    pub name: String,
    /// What the one injection rule says of it.
    pub state: PodState,
    /// Its owning workload as `kind/name` (`deployment/shop`), for the restart command.
    pub workload: Option<String>,
}

/// One namespace in scope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceFacts {
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// TracedServices in it.
    pub traced_services: usize,
    /// Its pods (not finished ones).
    pub pods: Vec<PodFacts>,
}

/// A namespace's checks: labelled for injection (or its pods opting in), no Pod Security level
/// that blocks injection, and every pod that should carry the sidecar carrying it.
pub fn namespace(ns: &NamespaceFacts) -> Vec<Check> {
    let section = format!("namespace {}", ns.name);
    let mut out = Vec::new();
    let label = format!(
        "{}={}",
        names::INJECT_LABEL,
        names::INJECT_NAMESPACE_ENABLED
    );
    let opted_in = ns
        .pods
        .iter()
        .filter(|p| matches!(p.state, PodState::Injected { .. }))
        .count();
    match ns.labels.get(names::INJECT_LABEL).map(String::as_str) {
        Some(names::INJECT_NAMESPACE_ENABLED) => {
            out.push(Check::pass(
                &section,
                format!("namespace is labelled {label}"),
            ));
        }
        Some(other) => out.push(Check::fail(
            &section,
            format!(
                "namespace is labelled {}={other}, which turns injection off (even for pods \
                 labelled {}=true)",
                names::INJECT_LABEL,
                names::INJECT_LABEL
            ),
            format!(
                "kubectl label namespace {} {label} --overwrite, then restart its workloads",
                ns.name
            ),
        )),
        None if opted_in > 0 && ns.traced_services == 0 => out.push(Check::pass(
            &section,
            format!(
                "namespace is not labelled {label}; {opted_in} pod(s) opt in with {}=true",
                names::INJECT_LABEL
            ),
        )),
        None => out.push(Check::fail(
            &section,
            format!("namespace is not labelled {label}: its pods get no sidecar"),
            format!(
                "kubectl label namespace {} {label}, then restart its workloads \
                 (kubectl -n {} rollout restart deployment)",
                ns.name, ns.name
            ),
        )),
    }
    if let Some(level) = ns
        .labels
        .get(names::POD_SECURITY_ENFORCE_LABEL)
        .filter(|l| names::POD_SECURITY_LEVELS_REJECTING_INIT.contains(&l.as_str()))
    {
        out.push(Check::fail(
            &section,
            format!(
                "Pod Security level {level:?} ({}) blocks injection: sidetrace-init needs root \
                 with NET_ADMIN and NET_RAW",
                names::POD_SECURITY_ENFORCE_LABEL
            ),
            format!(
                "kubectl label namespace {} {}=privileged --overwrite (or exempt the namespace \
                 in the cluster's PodSecurity admission configuration)",
                ns.name,
                names::POD_SECURITY_ENFORCE_LABEL
            ),
        ));
    }
    out.push(pods(&section, &ns.name, &ns.pods));
    out
}

/// Every pod that should carry the sidecar does; the ones that do not, each with why.
fn pods(section: &str, namespace: &str, pods: &[PodFacts]) -> Check {
    let injected = pods
        .iter()
        .filter(|p| matches!(p.state, PodState::Injected { .. }))
        .count();
    let missing: Vec<&PodFacts> = pods
        .iter()
        .filter(|p| matches!(p.state, PodState::Missing { .. }))
        .collect();
    let blocked = pods
        .iter()
        .filter(|p| matches!(p.state, PodState::Skipped(SkipReason::PodSecurity(_))))
        .count();
    if missing.is_empty() {
        return Check::pass(
            section,
            format!(
                "{injected} of {} pod(s) carry the sidecar; none is missing it{}",
                pods.len(),
                if blocked > 0 {
                    format!(" ({blocked} blocked by Pod Security, above)")
                } else {
                    String::new()
                }
            ),
        );
    }
    let lines: Vec<String> = missing
        .iter()
        .map(|p| match &p.state {
            PodState::Missing { why } => format!("pod {}: {why}", p.name),
            _ => String::new(),
        })
        .collect();
    let mut restart: Vec<String> = missing
        .iter()
        .map(|p| match &p.workload {
            Some(w) => format!("kubectl -n {namespace} rollout restart {w}"),
            None => format!("kubectl -n {namespace} delete pod {}", p.name),
        })
        .collect();
    restart.dedup();
    Check::fail(
        section,
        format!(
            "{} pod(s) should carry the sidecar and do not:\n{}",
            missing.len(),
            lines.join("\n")
        ),
        format!("restart them: {}", restart.join("; ")),
    )
}

/// One condition of a TracedService's status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConditionFacts {
    /// `type`.
    pub type_: String,
    /// `status` (True, False, Unknown).
    pub status: String,
    /// `reason`.
    pub reason: String,
    /// `message`.
    pub message: String,
}

/// A TracedService's `Ready` and `PodsInjected` conditions, as the operator wrote them.
pub fn traced_service(namespace: &str, name: &str, conditions: &[ConditionFacts]) -> Check {
    let section = format!("namespace {namespace}");
    let what = format!("TracedService {name}");
    let find = |t: &str| conditions.iter().find(|c| c.type_ == t);
    let describe = format!("kubectl -n {namespace} describe tracedservice {name}");
    let (Some(ready), Some(injected)) = (
        find(sidetrace_crds::condition::READY),
        find(sidetrace_crds::condition::PODS_INJECTED),
    ) else {
        return Check::fail(
            &section,
            format!("{what} has no status yet: the operator has not reconciled it"),
            "check the operator (above) and its logs",
        );
    };
    for c in [ready, injected] {
        if c.status != "True" {
            return Check::fail(
                &section,
                format!(
                    "{what}: {} is {} ({}): {}",
                    c.type_, c.status, c.reason, c.message
                ),
                describe,
            );
        }
    }
    Check::pass(
        &section,
        format!(
            "{what} is Ready ({}); PodsInjected: {}",
            ready.reason, injected.reason
        ),
    )
}

/// The collector a proxy sends to, as far as the cluster can tell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CollectorFacts {
    /// The URL the proxies post to.
    pub url: String,
    /// The Service it names (by DNS name or ClusterIP), `namespace/name`; None when it is not
    /// a Service of this cluster.
    pub service: Option<String>,
    /// Ready endpoints of that Service.
    pub ready_endpoints: usize,
}

/// The collector the proxies post to has somewhere to go.
pub fn collector(facts: &CollectorFacts) -> Check {
    let section = "collector";
    match &facts.service {
        Some(svc) if facts.ready_endpoints == 0 => {
            let (ns, name) = svc.split_once('/').unwrap_or(("", svc));
            Check::fail(
                section,
                format!(
                    "collector {} is unreachable: service {svc} has no ready endpoints",
                    facts.url
                ),
                format!(
                    "kubectl -n {ns} get endpointslices -l kubernetes.io/service-name={name}; \
                     start the collector behind it (the chart's: kubectl -n {ns} get \
                     deployment jaeger)"
                ),
            )
        }
        Some(svc) => Check::pass(
            section,
            format!(
                "collector {} is served by service {svc} ({} ready endpoint(s))",
                facts.url, facts.ready_endpoints
            ),
        ),
        None => Check::pass(
            section,
            format!(
                "collector {} is outside the cluster; judged by the proxies' counters",
                facts.url
            ),
        ),
    }
}

/// A sampled proxy's own view: ready, its config in use, spans leaving it.
pub fn proxy(view: &ProxyView) -> Vec<Check> {
    let section = format!("proxy {}/{}", view.namespace, view.pod);
    let logs = format!(
        "kubectl -n {} logs {} -c {}",
        view.namespace,
        view.pod,
        names::PROXY_CONTAINER_NAME
    );
    let mut out = Vec::new();
    out.push(match &view.ready {
        Ok(()) => Check::pass(&section, "proxy is ready"),
        Err(why) => Check::fail(&section, format!("proxy is not ready: {why}"), logs.clone()),
    });
    if !view.errors.is_empty() {
        out.push(Check::fail(
            &section,
            format!("admin port unreadable: {}", view.errors.join("; ")),
            logs.clone(),
        ));
    }
    if let Some(c) = &view.config {
        let reloads = view
            .metrics
            .as_ref()
            .map(|m| format!(", {} reload(s), {} failed", m.reloads_ok, m.reloads_failed))
            .unwrap_or_default();
        let what = format!(
            "config {}: service {}, sampling {}, {} to {}{reloads}",
            c.config_file.as_deref().unwrap_or("(flags only)"),
            c.service_name.as_deref().unwrap_or("?"),
            c.sampling_rate
                .map_or_else(|| "?".to_owned(), |r| r.to_string()),
            c.collector_protocol.as_deref().unwrap_or("?"),
            c.collector.as_deref().unwrap_or("?"),
        );
        out.push(match &c.config_file_error {
            Some(e) => Check::fail(
                &section,
                format!("{what}; the config file is not in use (last good config kept): {e}"),
                format!(
                    "fix the TracedService that renders it: kubectl -n {} get tracedservice",
                    view.namespace
                ),
            ),
            None => Check::pass(&section, what),
        });
    }
    if let Some(m) = &view.metrics {
        let counts = format!(
            "{} span(s) exported, {} dropped{}, {} queued",
            m.exported,
            m.dropped_total(),
            match m.drop_reasons() {
                r if r.is_empty() => String::new(),
                r => format!(" ({r})"),
            },
            m.queue_depth
        );
        let collector_fix = format!(
            "the collector does not accept spans from this proxy: check the collector (above) \
             and the URL in its config; {logs}"
        );
        out.push(if m.dropped_total() > 0 && m.exported == 0 {
            Check::fail(
                &section,
                format!("spans do not reach the collector: {counts}"),
                collector_fix,
            )
        } else if m.dropped_total() > 0 {
            Check::warn(
                &section,
                format!("some spans were dropped: {counts}"),
                collector_fix,
            )
        } else {
            Check::pass(&section, counts)
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{ProxyConfigView, ProxyMetrics};

    #[test]
    fn crd_names_each_failure() {
        let n = "tracedservices.sidetrace.dev";
        assert_eq!(crd(n, None).verdict, Verdict::Fail);
        let not_established = CrdFacts::default();
        assert!(
            crd(n, Some(&not_established))
                .summary
                .contains("not established")
        );
        let old = CrdFacts {
            established: true,
            served: vec!["v1alpha0".into()],
        };
        assert!(
            crd(n, Some(&old))
                .summary
                .contains("does not serve v1alpha1")
        );
        let good = CrdFacts {
            established: true,
            served: vec!["v1alpha1".into()],
        };
        assert_eq!(crd(n, Some(&good)).verdict, Verdict::Pass);
    }

    #[test]
    fn a_deployment_scaled_to_zero_says_so_and_how_to_scale_it_back() {
        let c = deployment(
            "injector",
            "sidetrace-system",
            "sidetrace-injector",
            Some(DeploymentFacts {
                desired: 0,
                available: 0,
            }),
        );
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(c.summary.contains("scaled to zero"), "{c:?}");
        assert!(c.fix.as_deref().unwrap_or("").contains("--replicas=1"));
        let up = DeploymentFacts {
            desired: 2,
            available: 1,
        };
        assert_eq!(deployment("x", "n", "d", Some(up)).verdict, Verdict::Pass);
        let down = DeploymentFacts {
            desired: 1,
            available: 0,
        };
        assert!(
            deployment("x", "n", "d", Some(down))
                .summary
                .contains("no available")
        );
    }

    #[test]
    fn the_lease_must_have_a_holder_that_renews() {
        let fresh = LeaseFacts {
            holder: Some("op-1".into()),
            renewed_secs_ago: Some(3),
            duration_secs: Some(15),
        };
        assert_eq!(leader("n", "l", Some(&fresh)).verdict, Verdict::Pass);
        let stale = LeaseFacts {
            renewed_secs_ago: Some(60),
            ..fresh.clone()
        };
        assert!(
            leader("n", "l", Some(&stale))
                .summary
                .contains("stopped renewing")
        );
        let empty = LeaseFacts::default();
        assert!(leader("n", "l", Some(&empty)).summary.contains("no holder"));
        assert!(leader("n", "l", None).summary.contains("does not exist"));
    }

    #[test]
    fn an_unreachable_webhook_fails_and_an_answer_passes() {
        let untouched = Probe::Untouched {
            namespace: "shop".into(),
        };
        let c = webhook_reachable("sidetrace-injector", "sidetrace-system", &untouched);
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(c.summary.contains("not reachable"));
        let skipped = Probe::Skipped {
            namespace: "shop".into(),
            message: "pod uses the host network".into(),
        };
        assert_eq!(webhook_reachable("i", "n", &skipped).verdict, Verdict::Pass);
        assert_eq!(
            webhook_reachable("i", "n", &Probe::NoNamespace).verdict,
            Verdict::Warn
        );
    }

    fn pod(name: &str, state: PodState) -> PodFacts {
        PodFacts {
            name: name.into(),
            state,
            workload: Some(format!("deployment/{name}")),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn an_unlabelled_namespace_and_a_missing_sidecar_are_named_with_the_fix() {
        let ns = NamespaceFacts {
            name: "shop".into(),
            labels: BTreeMap::new(),
            traced_services: 1,
            pods: vec![pod("web", PodState::Skipped(SkipReason::NotEnabled))],
        };
        let checks = namespace(&ns);
        assert_eq!(checks[0].verdict, Verdict::Fail);
        assert!(
            checks[0]
                .summary
                .contains("not labelled sidetrace.dev/inject=enabled")
        );
        assert!(
            checks[0]
                .fix
                .as_deref()
                .unwrap_or("")
                .contains("kubectl label namespace shop")
        );

        let ns = NamespaceFacts {
            labels: labels(&[(names::INJECT_LABEL, names::INJECT_NAMESPACE_ENABLED)]),
            pods: vec![
                pod(
                    "old",
                    PodState::Missing {
                        why: "created before injection was enabled".into(),
                    },
                ),
                pod("new", PodState::Injected { config_from: None }),
            ],
            ..ns
        };
        let checks = namespace(&ns);
        assert_eq!(checks[0].verdict, Verdict::Pass);
        let missing = checks.last().expect("pods check");
        assert_eq!(missing.verdict, Verdict::Fail);
        assert!(
            missing
                .summary
                .contains("pod old: created before injection was enabled")
        );
        assert!(
            missing
                .fix
                .as_deref()
                .unwrap_or("")
                .contains("rollout restart deployment/old")
        );
    }

    #[test]
    fn pod_security_that_blocks_injection_fails_and_pod_opt_in_passes() {
        let ns = NamespaceFacts {
            name: "locked".into(),
            labels: labels(&[
                (names::INJECT_LABEL, names::INJECT_NAMESPACE_ENABLED),
                (names::POD_SECURITY_ENFORCE_LABEL, "restricted"),
            ]),
            ..NamespaceFacts::default()
        };
        let checks = namespace(&ns);
        assert!(checks.iter().any(|c| c.verdict == Verdict::Fail
            && c.summary.contains("Pod Security level \"restricted\"")));
        let opt_in = NamespaceFacts {
            name: "mixed".into(),
            pods: vec![pod("p", PodState::Injected { config_from: None })],
            ..NamespaceFacts::default()
        };
        assert!(
            namespace(&opt_in)
                .iter()
                .all(|c| c.verdict == Verdict::Pass)
        );
    }

    #[test]
    fn traced_service_conditions_fail_with_their_reason() {
        let c = |t: &str, s: &str, r: &str| ConditionFacts {
            type_: t.into(),
            status: s.into(),
            reason: r.into(),
            message: "m".into(),
        };
        let ok = [
            c("Ready", "True", "ConfigRendered"),
            c("PodsInjected", "True", "AllInjected"),
        ];
        assert_eq!(traced_service("n", "t", &ok).verdict, Verdict::Pass);
        let bad = [
            c("Ready", "True", "ConfigRendered"),
            c("PodsInjected", "False", "PodsNotInjected"),
        ];
        let check = traced_service("n", "t", &bad);
        assert_eq!(check.verdict, Verdict::Fail);
        assert!(check.summary.contains("PodsNotInjected"));
        assert!(traced_service("n", "t", &[]).summary.contains("no status"));
    }

    #[test]
    fn a_collector_without_endpoints_is_unreachable() {
        let f = CollectorFacts {
            url: "http://jaeger-collector.sidetrace-system:4318/v1/traces".into(),
            service: Some("sidetrace-system/jaeger-collector".into()),
            ready_endpoints: 0,
        };
        let c = collector(&f);
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(c.summary.contains("unreachable"));
        let up = CollectorFacts {
            ready_endpoints: 1,
            ..f
        };
        assert_eq!(collector(&up).verdict, Verdict::Pass);
    }

    #[test]
    fn a_proxy_that_exports_nothing_and_drops_fails() {
        let view = |exported: u64, failed: u64| ProxyView {
            namespace: "shop".into(),
            pod: "web-1".into(),
            ready: Ok(()),
            config: Some(ProxyConfigView {
                sampling_rate: Some(1.0),
                ..ProxyConfigView::default()
            }),
            metrics: Some(ProxyMetrics {
                exported,
                dropped: [("send_failed".to_owned(), failed)].into(),
                ..ProxyMetrics::default()
            }),
            errors: Vec::new(),
        };
        let worst = |v: &ProxyView| proxy(v).iter().map(|c| c.verdict).max();
        assert_eq!(worst(&view(10, 0)), Some(Verdict::Pass));
        assert_eq!(worst(&view(10, 2)), Some(Verdict::Warn));
        let down = proxy(&view(0, 4));
        let line = down
            .iter()
            .find(|c| c.verdict == Verdict::Fail)
            .expect("a failure");
        assert!(
            line.summary.contains("spans do not reach the collector"),
            "{line:?}"
        );
        assert!(line.summary.contains("send_failed 4"), "{line:?}");
        let not_ready = ProxyView {
            ready: Err("draining".into()),
            ..view(1, 0)
        };
        assert!(proxy(&not_ready)[0].summary.contains("not ready: draining"));
    }
}

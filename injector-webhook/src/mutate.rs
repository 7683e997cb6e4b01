//! The whole per-pod pipeline as one pure function: decide, parse overrides, select the
//! TracedService, resolve values, build the patch, collect warnings.

use std::collections::BTreeMap;
use std::sync::Arc;

use json_patch::Patch;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use sidetrace_contract::names;
use sidetrace_crds::TracedService;

use crate::decision::{self, Decision};
use crate::overrides;
use crate::patch::{self, InjectionStatus, Resolved};
use crate::selection;
use crate::settings::{Settings, SidecarMode};

/// What the webhook knows about the pod's surroundings at admission time.
#[derive(Clone, Copy, Debug)]
pub struct PodContext<'a> {
    /// Namespace the pod is created in.
    pub namespace: &'a str,
    /// The namespace's labels; `None` when unknown (no cluster watch, or not yet cached).
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
    /// TracedServices from the cache (any namespace; filtered here).
    pub traced_services: &'a [Arc<TracedService>],
}

/// Result of one admission.
#[derive(Clone, Debug)]
pub struct Mutation {
    /// The decision and its reason.
    pub decision: Decision,
    /// The patch: the injection, or the skip record on a pod left alone.
    pub patch: Option<Patch>,
    /// What was injected, when injecting.
    pub status: Option<InjectionStatus>,
    /// Warnings for the admission response (invalid annotations, TracedService conflicts,
    /// port or uid collisions).
    pub warnings: Vec<String>,
}

/// Runs the pipeline for one pod.
pub fn mutate(pod: &Pod, ctx: PodContext<'_>, settings: &Settings) -> Mutation {
    let decision = decision::decide(
        pod,
        ctx.namespace,
        ctx.namespace_labels,
        &settings.control_plane_namespace,
    );
    // A typo in the pod's opt-in/opt-out label silently changes nothing; say so.
    let label_warning = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(names::INJECT_LABEL))
        .filter(|v| !matches!(v.as_str(), "true" | "false"))
        .map(|v| {
            format!(
                "label {}={v:?} is ignored: use \"true\" or \"false\"",
                names::INJECT_LABEL
            )
        });
    if let Decision::Skip(reason) = &decision {
        // Skips that leave a pod untraced against the user's wish are said to the user.
        let pod_security =
            matches!(reason, decision::SkipReason::PodSecurity(_)).then(|| reason.to_string());
        return Mutation {
            patch: patch::record_skip(pod, reason).map(Patch),
            decision,
            status: None,
            warnings: label_warning.into_iter().chain(pod_security).collect(),
        };
    }
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let named_ports: BTreeMap<String, u16> = containers
        .iter()
        .flat_map(|c| c.ports.as_deref().unwrap_or_default())
        .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
        .collect();
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let (overrides, mut warnings) = overrides::parse(annotations, &named_ports);
    warnings.extend(label_warning);

    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let selection = selection::select(ctx.traced_services, ctx.namespace, labels);
    warnings.extend(selection.warning);
    let ts = selection.traced_service.as_ref();

    let service_name = overrides
        .service_name
        .clone()
        .or_else(|| ts.and_then(|t| t.spec.service_name.clone()))
        .unwrap_or_else(|| selection::default_service_name(pod, ctx.namespace));
    // A TracedService's endpoint brings its own protocol (or none: the proxy follows the
    // path); the chart's protocol belongs to the chart's endpoint.
    let (collector, collector_protocol) = match ts.and_then(|t| t.spec.collector.as_ref()) {
        Some(c) => (c.endpoint.clone(), c.protocol),
        None => (settings.collector.clone(), settings.collector_protocol),
    };
    let resolved = Resolved {
        service_name,
        collector,
        collector_protocol,
        workload_attributes: workload_attributes(pod),
        sampling: overrides.sampling.unwrap_or(settings.sampling),
        log_level: overrides
            .log_level
            .clone()
            .unwrap_or_else(|| settings.log_level.clone()),
        traced_service: ts.map(|t| t.name_any()),
        overrides,
    };
    warnings.extend(collisions(pod, settings));
    warnings.extend(classic_job_warning(pod, settings));
    let (ops, status) = patch::build(pod, settings, &resolved);
    Mutation {
        decision,
        patch: Some(Patch(ops)),
        status: Some(status),
        warnings,
    }
}

/// The pod's owning workload as OTLP resource attributes (the env text the proxy reads), from
/// its controlling owner reference; `None` for a bare pod or an unknown controller.
fn workload_attributes(pod: &Pod) -> Option<String> {
    let owner = pod
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|o| o.controller == Some(true))?;
    let hash = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(sidetrace_contract::workload::POD_TEMPLATE_HASH_LABEL))
        .map(String::as_str);
    let attrs = sidetrace_contract::workload::workload_attributes(&owner.kind, &owner.name, hash);
    (!attrs.is_empty()).then(|| sidetrace_contract::workload::format_attributes(&attrs))
}

/// A Job's pod (CronJobs run Jobs) in classic mode never completes by itself: the sidecar is a
/// regular container that keeps running after the app exits. Native sidecars do not have the
/// problem; classic mode is used where the cluster does not support them.
fn classic_job_warning(pod: &Pod, settings: &Settings) -> Option<String> {
    if settings.mode != SidecarMode::Classic {
        return None;
    }
    let job = pod
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|o| o.kind == "Job" && o.api_version.starts_with("batch/"))?;
    Some(format!(
        "pod of Job {}: with classic sidecars (this cluster has no native sidecars) the pod \
         completes only when the app calls POST http://127.0.0.1:{}/shutdown on the proxy as \
         it finishes; or opt the pod out with the label {}=false",
        job.name,
        settings.admin_port,
        names::INJECT_LABEL
    ))
}

/// Configurations that admit the pod but break tracing: an app port equal to a proxy port, or
/// an app running as the proxy's uid (its traffic would bypass capture).
fn collisions(pod: &Pod, settings: &Settings) -> Vec<String> {
    let mut warnings = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        return warnings;
    };
    let proxy_ports = [
        settings.inbound_port,
        settings.outbound_port,
        settings.admin_port,
    ];
    for c in &spec.containers {
        for p in c.ports.as_deref().unwrap_or_default() {
            if u16::try_from(p.container_port).is_ok_and(|n| proxy_ports.contains(&n)) {
                warnings.push(format!(
                    "container {} port {} collides with a sidetrace-proxy port; requests to it will fail",
                    c.name, p.container_port
                ));
            }
        }
        let uid = c
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_user)
            .or_else(|| spec.security_context.as_ref().and_then(|s| s.run_as_user));
        if uid == Some(settings.proxy_uid) {
            warnings.push(format!(
                "container {} runs as uid {}, the proxy's uid: its traffic is not traced",
                c.name, settings.proxy_uid
            ));
        }
    }
    warnings
}

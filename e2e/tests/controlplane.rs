//! Control-plane end-to-end tests against a real kube-apiserver + etcd + controller-manager
//! (see `sidetrace_e2e::controlplane`). One control plane serves every case of this binary;
//! each case works in its own namespace. Cases run in sequence and all run even when one
//! fails, so one run reports every failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{CustomResourceExt, ResourceExt};
use sidetrace_crds::TracedService;
use sidetrace_e2e::controlplane::{ControlPlane, manifests, poll};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane() {
    let Some(cp) = ControlPlane::start_or_skip("control_plane").await else {
        return;
    };
    eprintln!(
        "control plane at {} (kubeconfig {})",
        cp.url(),
        cp.kubeconfig().display()
    );

    let mut failures = Vec::new();
    let mut record = |case: &str, r: Result<()>| match r {
        Ok(()) => eprintln!("ok   {case}"),
        Err(e) => {
            eprintln!("FAIL {case}: {e:#}");
            failures.push(format!("{case}: {e:#}"));
        }
    };
    let crd = crd_is_established(&cp).await;
    let crd_ok = crd.is_ok();
    record("crd_is_established", crd);
    if crd_ok {
        record("examples_apply", examples_apply(&cp).await);
        record(
            "invalid_manifests_are_rejected",
            invalid_manifests_are_rejected(&cp).await,
        );
    }
    record(
        "deployment_yields_replicaset_and_pending_pods",
        deployment_yields_pods(&cp).await,
    );
    record(
        "service_account_identity_is_bound_by_rbac",
        service_account_rbac(&cp).await,
    );

    if !failures.is_empty() {
        eprintln!(
            "kube-controller-manager log tail:\n{}",
            cp.log_tail("kube-controller-manager", 20)
        );
        panic!(
            "{} case(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}

/// The generated CRD is accepted (structural schema, CEL cost) and becomes Established.
async fn crd_is_established(cp: &ControlPlane) -> Result<()> {
    let client = cp.client();
    let yaml = std::fs::read_to_string(repo().join("crds/tracedservices.sidetrace.dev.yaml"))?;
    let docs = manifests::documents(&yaml)?;
    ensure!(
        docs.len() == 1,
        "expected one CRD document, got {}",
        docs.len()
    );
    // The checked-in YAML is the generated one (the crds drift test guarantees it); applying
    // it here also proves that file, not just the Rust value, is what the apiserver accepts.
    let applied = manifests::apply(&client, &docs[0], None)
        .await
        .context("applying the CRD")?;
    let name = TracedService::crd_name();
    ensure!(
        applied.name_any() == name,
        "applied {} instead of {name}",
        applied.name_any()
    );
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds, name, conditions::is_crd_established()),
    )
    .await
    .context("CRD not Established within 30s")??;
    Ok(())
}

/// Every manifest under `crds/examples/` applies, in a namespace of its own.
async fn examples_apply(cp: &ControlPlane) -> Result<()> {
    let ns = "e2e-examples";
    cp.create_namespace(ns, &[]).await?;
    let files = manifests::yaml_files(&repo().join("crds/examples"))?;
    ensure!(!files.is_empty(), "no examples found");
    for file in files {
        let yaml = std::fs::read_to_string(&file)?;
        let applied = manifests::apply_yaml(&cp.client(), &yaml, Some(ns))
            .await
            .with_context(|| format!("{} was rejected", file.display()))?;
        ensure!(!applied.is_empty(), "{} has no documents", file.display());
    }
    // And they read back as the typed resource.
    let api: Api<TracedService> = Api::namespaced(cp.client(), ns);
    let listed = api.list(&ListParams::default()).await?;
    ensure!(!listed.items.is_empty(), "no TracedService stored");
    Ok(())
}

/// The field path a rejection must name, from the file's `# expect: <path>: ...` line (or
/// `unknown field "<path>"`).
fn expected_field_path(first_line: &str) -> Option<String> {
    let expect = first_line.strip_prefix("# expect:")?.trim();
    if let Some(rest) = expect.strip_prefix("unknown field \"") {
        return rest.split('"').next().map(str::to_owned);
    }
    expect.split(':').next().map(|p| p.trim().to_owned())
}

/// The apiserver's field paths differ from our offline validator's in a few known ways; map
/// the path we expect to the one the apiserver reports.
fn apiserver_paths(path: &str) -> Vec<String> {
    let mut candidates = vec![path.to_owned()];
    // A CEL rule with fieldPath `.ports` is reported on `spec.ports`, not on the item.
    if let Some(idx) = path.find('[') {
        candidates.push(path[..idx].to_owned());
    }
    candidates
}

/// Server-side apply rejects an unknown field with HTTP 500 and this message instead of a 422
/// (the typed-patch conversion fails before validation); the field path is still named.
const SSA_UNKNOWN_FIELD: &str = "field not declared in schema";

/// How the apiserver answered one invalid manifest through one write path.
fn judge(
    how: &str,
    outcome: Result<kube::api::DynamicObject>,
    wanted: &[String],
) -> Result<String> {
    let err = match outcome {
        Ok(_) => bail!("{how}: ACCEPTED by the real apiserver (a schema/CEL gap)"),
        Err(e) => e,
    };
    let (code, message) = manifests::api_rejection(&err)
        .with_context(|| format!("{how}: failed without an apiserver rejection: {err:#}"))?;
    ensure!(
        wanted.iter().any(|p| message.contains(p.as_str())),
        "{how}: HTTP {code}, message does not name {wanted:?}: {message}"
    );
    let ssa_quirk = how == "apply" && code == 500 && message.contains(SSA_UNKNOWN_FIELD);
    // 422 Invalid for schema and CEL errors; 400 BadRequest for strict decoding (unknown field).
    ensure!(
        code == 422 || code == 400 || ssa_quirk,
        "{how}: HTTP {code}, want 422 or 400: {message}"
    );
    Ok(format!("{how} HTTP {code}: {message}"))
}

/// Every manifest under `crds/tests/invalid/` is rejected — through server-side apply and
/// through a strict create — with a message naming the field its `# expect:` line names.
async fn invalid_manifests_are_rejected(cp: &ControlPlane) -> Result<()> {
    let ns = "e2e-invalid";
    cp.create_namespace(ns, &[]).await?;
    let files = manifests::yaml_files(&repo().join("crds/tests/invalid"))?;
    ensure!(!files.is_empty(), "no invalid manifests found");
    let mut problems = Vec::new();
    for file in &files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let yaml = std::fs::read_to_string(file)?;
        let path = expected_field_path(yaml.lines().next().unwrap_or_default())
            .with_context(|| format!("{name}: first line is not `# expect: ...`"))?;
        let doc = manifests::documents(&yaml)?
            .into_iter()
            .next()
            .with_context(|| format!("{name}: no document"))?;
        let wanted = apiserver_paths(&path);
        let applied = manifests::apply(&cp.client(), &doc, Some(ns)).await;
        let created = manifests::create_strict(&cp.client(), &doc, Some(ns)).await;
        for verdict in [
            judge("apply", applied, &wanted),
            judge("create", created, &wanted),
        ] {
            match verdict {
                Ok(line) => eprintln!("     {name}: {line}"),
                Err(e) => problems.push(format!("{name}: {e:#}")),
            }
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(())
}

/// A Deployment yields a ReplicaSet and Pods that pass admission and stay Pending (no
/// scheduler, no kubelet): proof that the controller-manager runs.
async fn deployment_yields_pods(cp: &ControlPlane) -> Result<()> {
    let ns = "e2e-deploy";
    cp.create_namespace(ns, &[]).await?;
    let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
    let deploy: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "web", "labels": labels },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": labels },
            "template": {
                "metadata": { "labels": labels },
                // Never pulled: there is no kubelet.
                "spec": { "containers": [{ "name": "web", "image": "registry.invalid/web:1" }] },
            },
        },
    }))?;
    let deploys: Api<Deployment> = Api::namespaced(cp.client(), ns);
    let created = deploys.create(&PostParams::default(), &deploy).await?;
    let deploy_uid = created.uid().context("deployment has no uid")?;

    let rss: Api<ReplicaSet> = Api::namespaced(cp.client(), ns);
    poll(
        Duration::from_secs(60),
        "a ReplicaSet owned by the Deployment",
        || async {
            let list = rss.list(&ListParams::default()).await?;
            Ok(list
                .items
                .iter()
                .any(|rs| owned_by(rs.owner_references(), &deploy_uid)))
        },
    )
    .await?;
    let rs = rss
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .next()
        .context("no ReplicaSet")?;
    let rs_uid = rs.uid().context("replicaset has no uid")?;

    let pods: Api<Pod> = Api::namespaced(cp.client(), ns);
    poll(
        Duration::from_secs(60),
        "2 Pods owned by the ReplicaSet",
        || async {
            let list = pods.list(&ListParams::default().labels("app=web")).await?;
            Ok(list
                .items
                .iter()
                .filter(|p| owned_by(p.owner_references(), &rs_uid))
                .count()
                == 2)
        },
    )
    .await?;
    for pod in pods.list(&ListParams::default().labels("app=web")).await? {
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        ensure!(
            phase == "Pending",
            "pod {} is {phase:?}, want Pending",
            pod.name_any()
        );
        // Admission ran: the ServiceAccount plugin mounted the API token volume.
        let spec = pod.spec.as_ref().context("pod has no spec")?;
        ensure!(
            spec.service_account_name.as_deref() == Some("default"),
            "pod {} did not pass ServiceAccount admission",
            pod.name_any()
        );
    }
    Ok(())
}

fn owned_by(
    refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference],
    uid: &str,
) -> bool {
    refs.iter()
        .any(|r| r.uid == uid && r.controller == Some(true))
}

/// A ServiceAccount's token and impersonation both act with that ServiceAccount's RBAC only:
/// what the chart's RBAC tests will rely on.
async fn service_account_rbac(cp: &ControlPlane) -> Result<()> {
    let ns = "e2e-rbac";
    cp.create_namespace(ns, &[]).await?;
    let rbac = format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: pod-reader, namespace: {ns}}}
rules: [{{apiGroups: [""], resources: [pods], verbs: [list]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: pod-reader, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}}
subjects: [{{kind: ServiceAccount, name: default, namespace: {ns}}}]
"#
    );
    manifests::apply_yaml(&cp.client(), &rbac, Some(ns)).await?;

    let by_token = cp.service_account_client(ns, "default").await?;
    let by_impersonation = sidetrace_e2e::controlplane::client_from_kubeconfig(
        &cp.impersonation_kubeconfig(ns, "default")?,
    )
    .await?;
    for (how, client) in [("token", by_token), ("impersonation", by_impersonation)] {
        Api::<Pod>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .with_context(|| format!("{how}: listing pods is granted"))?;
        match Api::<Pod>::namespaced(client.clone(), "default")
            .list(&ListParams::default())
            .await
        {
            Err(kube::Error::Api(s)) if s.code == 403 => {}
            other => {
                bail!("{how}: listing pods in another namespace should be forbidden, got {other:?}")
            }
        }
        match Api::<Deployment>::namespaced(client, ns)
            .list(&ListParams::default())
            .await
        {
            Err(kube::Error::Api(s)) if s.code == 403 => {}
            other => bail!("{how}: listing deployments should be forbidden, got {other:?}"),
        }
    }
    Ok(())
}

#[test]
fn expected_paths_come_from_the_expect_line() {
    assert_eq!(
        expected_field_path("# expect: spec.sampling.rate: Invalid value: 1.5: must be <= 1")
            .as_deref(),
        Some("spec.sampling.rate")
    );
    assert_eq!(
        expected_field_path("# expect: unknown field \"spec.samplingRate\"").as_deref(),
        Some("spec.samplingRate")
    );
    assert_eq!(expected_field_path("apiVersion: v1"), None);
    assert_eq!(
        apiserver_paths("spec.ports[1].port"),
        vec!["spec.ports[1].port", "spec.ports"]
    );
}

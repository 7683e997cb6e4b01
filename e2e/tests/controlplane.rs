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
    record(
        "webhook_by_url_on_the_host_address_is_called",
        webhook_by_url(&cp).await,
    );
    record(
        "webhook_by_service_fails_inside_the_namespace",
        webhook_by_service(&cp).await,
    );
    record("kubectl_and_helm_reach_the_apiserver", cli_tools(&cp).await);

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

/// The apiserver reaches a webhook registered by `clientConfig.url` on the host side of the
/// veth pair (the path the injector tests use), and honours its answer.
async fn webhook_by_url(cp: &ControlPlane) -> Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let ns = "e2e-webhook";
    let cert = cp.issue_serving_cert(&[], &[cp.host_address()])?;
    let calls = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind((cp.host_address(), 0)).await?;
    let port = listener.local_addr()?.port();
    let server = tokio::spawn(probe_webhook::serve(listener, cert, calls.clone()));

    let url = format!("https://{}:{port}/validate", cp.host_address());
    let config = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": { "name": "sidetrace-e2e-probe" },
        "webhooks": [{
            "name": "probe.e2e.sidetrace.dev",
            "clientConfig": {
                "url": url,
                "caBundle": base64_std(cp.ca_pem()),
            },
            "rules": [{
                "apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE"], "resources": ["configmaps"],
            }],
            "namespaceSelector": { "matchLabels": { "e2e-probe": "on" } },
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
        }],
    });
    manifests::apply(&cp.client(), &config, None).await?;
    cp.create_namespace(ns, &[("e2e-probe", "on")]).await?;

    // The apiserver picks the configuration up asynchronously: create until it is enforced.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(cp.client(), ns);
    let mut n = 0;
    let outcome = poll(
        Duration::from_secs(30),
        "the probe webhook to deny a ConfigMap",
        || {
            n += 1;
            let cms = cms.clone();
            let name = format!("probe-{n}");
            async move {
                let cm =
                    serde_json::from_value(serde_json::json!({ "metadata": { "name": name } }))?;
                match cms.create(&PostParams::default(), &cm).await {
                    Ok(_) => Ok(false),
                    Err(kube::Error::Api(s)) if s.message.contains(probe_webhook::DENIAL) => {
                        Ok(true)
                    }
                    Err(e) => Err(e.into()),
                }
            }
        },
    )
    .await;
    let _ = kube::Api::<kube::api::DynamicObject>::all_with(
        cp.client(),
        &kube::api::ApiResource::erase::<
            k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration,
        >(&()),
    )
    .delete("sidetrace-e2e-probe", &Default::default())
    .await;
    server.abort();
    outcome?;
    ensure!(
        calls.load(Ordering::Relaxed) >= 1,
        "the webhook was never called"
    );
    Ok(())
}

/// A webhook registered by `service:` makes the apiserver dial the Service's ClusterIP, which
/// has no route from the control plane's namespace: the call fails right there (and, with
/// failurePolicy Fail, so does the request) instead of sending traffic anywhere.
async fn webhook_by_service(cp: &ControlPlane) -> Result<()> {
    let ns = "e2e-webhook-svc";
    let config = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": { "name": "sidetrace-e2e-by-service" },
        "webhooks": [{
            "name": "by-service.e2e.sidetrace.dev",
            // A real Service with a ClusterIP (not `kubernetes`, which the apiserver
            // short-circuits to its loopback): so only routing can fail.
            "clientConfig": {
                "service": { "namespace": ns, "name": "nowhere", "port": 443 },
                "caBundle": base64_std(cp.ca_pem()),
            },
            "rules": [{
                "apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE"], "resources": ["configmaps"],
            }],
            "namespaceSelector": { "matchLabels": { "e2e-probe": "by-service" } },
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
        }],
    });
    cp.create_namespace(ns, &[("e2e-probe", "by-service")])
        .await?;
    let service = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": "nowhere" },
        "spec": { "ports": [{ "port": 443 }], "selector": { "app": "nowhere" } },
    });
    let service = manifests::apply(&cp.client(), &service, Some(ns)).await?;
    let cluster_ip = service.data["spec"]["clusterIP"]
        .as_str()
        .context("Service got no ClusterIP")?
        .to_owned();
    ensure!(
        cluster_ip.starts_with("10.251.0."),
        "ClusterIP {cluster_ip} outside 10.251.0.0/24"
    );
    manifests::apply(&cp.client(), &config, None).await?;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(cp.client(), ns);
    // The configuration is picked up asynchronously: create until the webhook is in force.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    let message = loop {
        n += 1;
        let cm = serde_json::from_value(
            serde_json::json!({ "metadata": { "name": format!("probe-{n}") } }),
        )?;
        match cms.create(&PostParams::default(), &cm).await {
            Err(kube::Error::Api(s)) if s.message.contains("failed calling webhook") => {
                break s.message;
            }
            Err(e) => return Err(e.into()),
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(_) => bail!("the by-service webhook was never called within 30s"),
        }
    };
    let _ = kube::Api::<kube::api::DynamicObject>::all_with(
        cp.client(),
        &kube::api::ApiResource::erase::<
            k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration,
        >(&()),
    )
    .delete("sidetrace-e2e-by-service", &Default::default())
    .await;
    ensure!(
        message.contains(&cluster_ip) && message.contains("unreachable"),
        "the failure does not say the ClusterIP {cluster_ip} is unreachable: {message}"
    );
    eprintln!("     by-service webhook: {message}");
    Ok(())
}

fn base64_std(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A minimal HTTPS admission webhook that denies everything with [`probe_webhook::DENIAL`].
mod probe_webhook {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use anyhow::{Context, Result};
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use sidetrace_e2e::controlplane::CertPair;

    pub const DENIAL: &str = "denied by the sidetrace-e2e probe webhook";

    pub async fn serve(
        listener: tokio::net::TcpListener,
        cert: CertPair,
        calls: Arc<AtomicUsize>,
    ) -> Result<()> {
        let certs = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("certificate PEM")?;
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).context("key PEM")?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        loop {
            let (tcp, _) = listener.accept().await?;
            let acceptor = acceptor.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let calls = calls.clone();
                    async move {
                        calls.fetch_add(1, Ordering::Relaxed);
                        let body = req.into_body().collect().await?.to_bytes();
                        let review: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        let uid = review["request"]["uid"].clone();
                        let answer = serde_json::json!({
                            "apiVersion": "admission.k8s.io/v1",
                            "kind": "AdmissionReview",
                            "response": {
                                "uid": uid,
                                "allowed": false,
                                "status": { "code": 403, "message": DENIAL },
                            },
                        });
                        let bytes = Bytes::from(serde_json::to_vec(&answer).unwrap_or_default());
                        Ok::<_, hyper::Error>(
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(bytes))
                                .unwrap_or_default(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    }
}

/// Run a CLI to completion; its stdout, or an error with its stderr.
fn run(mut cmd: std::process::Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The real CLIs work against the control plane with the admin kubeconfig.
async fn cli_tools(cp: &ControlPlane) -> Result<()> {
    let mut kubectl = cp.kubectl();
    kubectl.args(["get", "crd", TracedService::crd_name(), "-o", "name"]);
    let got = tokio::task::spawn_blocking(move || run(kubectl, "kubectl get crd")).await??;
    ensure!(
        got.contains(TracedService::crd_name()),
        "kubectl printed {got:?}"
    );
    let mut helm = cp.helm();
    helm.args(["list", "--all-namespaces", "--output", "json"]);
    let got = tokio::task::spawn_blocking(move || run(helm, "helm list")).await??;
    ensure!(got.trim().starts_with('['), "helm list printed {got:?}");

    // A long-running host process (as operator and webhook tests start theirs): a kubectl
    // watch logs what it sees, and stops on SIGTERM.
    let mut watch = cp.kubectl();
    watch.args(["get", "namespaces", "--watch", "--output", "name"]);
    let mut watch = cp.spawn_host_process("kubectl-watch", watch)?;
    let log = cp.dir().join("kubectl-watch.log");
    poll(
        Duration::from_secs(20),
        "kubectl --watch to list namespace/e2e-deploy",
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            async move { Ok(text.contains("namespace/e2e-deploy")) }
        },
    )
    .await
    .with_context(|| watch.log_tail(10))?;
    ensure!(
        watch.is_running(),
        "kubectl --watch exited: {}",
        watch.log_tail(10)
    );
    ensure!(
        watch.terminate(Duration::from_secs(10)),
        "kubectl ignored SIGTERM"
    );
    Ok(())
}

/// `e2e/peers.sh` parses, and `check` runs without building anything.
#[test]
fn peers_script_parses_and_checks() {
    let script = repo().join("e2e/peers.sh");
    let syntax = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("bash");
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    let cache = std::env::temp_dir().join(format!("sidetrace-peers-check-{}", std::process::id()));
    let check = std::process::Command::new(&script)
        .arg("check")
        .env("SIDETRACE_CACHE", &cache)
        .output()
        .expect("peers.sh check");
    let _ = std::fs::remove_dir_all(&cache);
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    for name in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kubectl",
        "helm",
        "zipkin.jar",
    ] {
        assert!(out.contains(name), "check does not list {name}: {out}");
    }
}

/// The Kubernetes the peers are built at is the one k8s-openapi is compiled for: the minor in
/// `K8S_VERSION=v1.N.x` matches the workspace's `k8s-openapi` feature `v1_N`.
#[test]
fn pinned_kubernetes_matches_k8s_openapi() {
    let script = std::fs::read_to_string(repo().join("e2e/peers.sh")).expect("peers.sh");
    let version = script
        .lines()
        .find_map(|l| l.strip_prefix("K8S_VERSION="))
        .and_then(|v| v.split_whitespace().next())
        .expect("K8S_VERSION= line");
    let minor = version
        .trim_start_matches("v1.")
        .split('.')
        .next()
        .expect("minor");
    let staging = script
        .lines()
        .find_map(|l| l.strip_prefix("K8S_STAGING_VERSION="))
        .and_then(|v| v.split_whitespace().next())
        .expect("K8S_STAGING_VERSION= line");
    assert_eq!(
        staging,
        version.replacen("v1.", "v0.", 1),
        "staging modules must match {version}"
    );
    let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).expect("Cargo.toml");
    let feature = format!("\"v1_{minor}\"");
    let openapi = cargo
        .lines()
        .find(|l| l.starts_with("k8s-openapi"))
        .expect("k8s-openapi in [workspace.dependencies]");
    assert!(
        openapi.contains(&feature),
        "peers pin Kubernetes {version} but {openapi}"
    );
}

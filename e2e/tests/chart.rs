//! The Helm chart, rendered by the real `helm` (cached by `e2e/peers.sh controlplane`):
//! lint, the default render, a matrix of non-default values, values the schema must reject,
//! and every flag the chart passes to our binaries exists in that binary's `--help`.
//! The install into a real apiserver lives in the control-plane tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sidetrace_e2e::controlplane::manifests::documents;
use sidetrace_e2e::controlplane::peers::{bin, skip_or_fail};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    root().join("helm/sidetrace")
}

fn helm() -> Option<PathBuf> {
    let helm = bin("helm");
    helm.exists().then_some(helm)
}

/// `helm template` with `--set` pairs; Ok(stdout) or Err(stderr).
fn template(helm: &Path, sets: &[&str]) -> Result<Vec<Value>, String> {
    let mut cmd = Command::new(helm);
    cmd.args(["template", "sidetrace"]).arg(chart()).args([
        "--namespace",
        "sidetrace-system",
        "--kube-version",
        "v1.34.4",
    ]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    documents(&String::from_utf8_lossy(&out.stdout)).map_err(|e| e.to_string())
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

fn container_args(docs: &[Value], deployment: &str) -> Vec<String> {
    let d = find(docs, "Deployment", deployment)
        .unwrap_or_else(|| panic!("Deployment {deployment} rendered"));
    d["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn chart_lints_renders_and_rejects_bad_values() {
    let Some(helm) = helm() else {
        return skip_or_fail("chart", "helm is not cached: run e2e/peers.sh controlplane");
    };

    let lint = Command::new(&helm)
        .args(["lint", "--strict"])
        .arg(chart())
        .output()
        .expect("helm runs");
    assert!(
        lint.status.success(),
        "helm lint: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    // Defaults.
    let docs = template(&helm, &[]).expect("default values render");
    for (kind, name) in [
        ("Deployment", "sidetrace-operator"),
        ("Deployment", "sidetrace-injector"),
        ("Service", "sidetrace-injector"),
        ("PodDisruptionBudget", "sidetrace-injector"),
        ("MutatingWebhookConfiguration", "sidetrace-injector"),
        ("ClusterRole", "sidetrace-operator"),
        ("ClusterRole", "sidetrace-injector"),
        ("Role", "sidetrace-operator"),
        ("Deployment", "jaeger"),
        ("Service", "jaeger-collector"),
        ("Service", "jaeger-query"),
    ] {
        assert!(find(&docs, kind, name).is_some(), "{kind}/{name} missing");
    }
    let op = find(&docs, "Deployment", "sidetrace-operator").expect("operator");
    assert_eq!(op["spec"]["replicas"], 2);
    let mwc = find(&docs, "MutatingWebhookConfiguration", "sidetrace-injector").expect("mwc");
    let hooks = mwc["webhooks"].as_array().expect("webhooks");
    assert_eq!(hooks.len(), 2, "namespace and object opt-in webhooks");
    for h in hooks {
        assert_eq!(h["failurePolicy"], "Ignore");
        assert_eq!(h["sideEffects"], "None");
        assert_eq!(h["reinvocationPolicy"], "IfNeeded");
        assert_eq!(h["admissionReviewVersions"][0], "v1");
        assert_eq!(h["clientConfig"]["service"]["name"], "sidetrace-injector");
        let excluded = h["namespaceSelector"]["matchExpressions"][1]["values"].to_string();
        for ns in ["kube-system", "kube-public", "sidetrace-system"] {
            assert!(excluded.contains(ns), "{ns} not excluded: {excluded}");
        }
    }
    // Every control-plane container is locked down.
    for d in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let spec = &d["spec"]["template"]["spec"];
        assert_eq!(
            spec["securityContext"]["runAsNonRoot"], true,
            "{}",
            d["metadata"]["name"]
        );
        for c in spec["containers"].as_array().expect("containers") {
            assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
            assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
        }
    }
    // The default collector is the in-cluster Jaeger's OTLP/HTTP receiver, which its Service
    // and container expose; the protocol follows the path unless set.
    let collector = "--collector=http://jaeger-collector.sidetrace-system:4318/v1/traces";
    let args = container_args(&docs, "sidetrace-injector");
    assert!(args.contains(&collector.to_owned()), "{args:?}");
    assert!(!args.iter().any(|a| a.starts_with("--collector-protocol")));
    let svc = find(&docs, "Service", "jaeger-collector").expect("jaeger-collector Service");
    assert!(
        svc["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["port"] == 4318 && p["targetPort"] == "otlp-http"),
        "{svc}"
    );
    let jaeger = find(&docs, "Deployment", "jaeger").expect("jaeger Deployment");
    assert!(
        jaeger["spec"]["template"]["spec"]["containers"][0]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["containerPort"] == 4318 && p["name"] == "otlp-http")
    );

    // Non-default values.
    let docs = template(
        &helm,
        &[
            "webhook.url=https://10.250.250.1:9443",
            "webhook.failurePolicy=Fail",
            "jaeger.enabled=false",
            "collector.endpoint=http://zipkin.tracing:9411/api/v2/spans",
            "collector.protocol=zipkin",
            "images.registry=registry.example",
            "images.tag=dev",
            "webhook.certMode=external",
        ],
    )
    .expect("non-default values render");
    let mwc = find(&docs, "MutatingWebhookConfiguration", "sidetrace-injector").expect("mwc");
    assert_eq!(
        mwc["webhooks"][0]["clientConfig"]["url"],
        "https://10.250.250.1:9443/mutate"
    );
    assert!(mwc["webhooks"][0]["clientConfig"]["service"].is_null());
    assert_eq!(mwc["webhooks"][0]["failurePolicy"], "Fail");
    assert!(mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].is_string());
    assert!(find(&docs, "Deployment", "jaeger").is_none());
    let args = container_args(&docs, "sidetrace-injector");
    assert!(args.contains(&"--collector=http://zipkin.tracing:9411/api/v2/spans".to_owned()));
    assert!(args.contains(&"--collector-protocol=zipkin".to_owned()));
    assert!(args.contains(&"--proxy-image=registry.example/sidetrace/proxy:dev".to_owned()));

    // The chart's protocol enum is the contract's list: every protocol the proxy speaks renders
    // and reaches the injector's flag.
    for p in sidetrace_contract::CollectorProtocol::ALL {
        let set = format!("collector.protocol={p}");
        let docs = template(&helm, &[set.as_str()]).expect("a contract protocol renders");
        let args = container_args(&docs, "sidetrace-injector");
        assert!(
            args.contains(&format!("--collector-protocol={p}")),
            "{args:?}"
        );
    }

    // Values the schema or the templates must reject, each with a message naming the value.
    for (set, expect) in [
        ("webhook.failurePolicy=Sometimes", "failurePolicy"),
        ("proxy.samplingRate=2", "samplingRate"),
        ("proxy.inboundPort=70000", "inboundPort"),
        ("operator.replica=2", "replica"),
        ("webhook.url=http://insecure", "url"),
        ("jaeger.enabled=false", "collector.endpoint is required"),
        ("collector.protocol=otlp", "protocol"),
    ] {
        let err = template(&helm, &[set]).expect_err(set);
        assert!(
            err.contains(expect),
            "--set {set}: expected {expect:?} in: {err}"
        );
    }
}

/// The chart and the binaries must agree on flags: a renamed flag would crash-loop a pod.
#[test]
fn every_flag_the_chart_passes_exists() {
    let Some(helm) = helm() else {
        return skip_or_fail(
            "chart flags",
            "helm is not cached: run e2e/peers.sh controlplane",
        );
    };
    let docs = template(&helm, &["webhook.extraSANs={10.0.0.1}"]).expect("renders");
    for (deployment, binary) in [
        ("sidetrace-operator", "sidetrace-operator"),
        ("sidetrace-injector", "sidetrace-injector"),
    ] {
        let exe = root().join("target/debug").join(binary);
        if !exe.exists() {
            return skip_or_fail(
                "chart flags",
                &format!(
                    "{} is not built: run cargo build --workspace --bins",
                    exe.display()
                ),
            );
        }
        let help = Command::new(&exe)
            .arg("--help")
            .output()
            .expect("binary runs");
        let help = String::from_utf8_lossy(&help.stdout);
        for arg in container_args(&docs, deployment) {
            let flag = arg.split('=').next().unwrap_or_default();
            assert!(
                help.contains(&format!("{flag} "))
                    || help.contains(&format!("{flag}\n"))
                    || help.contains(&format!("{flag} <")),
                "{deployment} passes {flag}, which `{binary} --help` does not list"
            );
        }
    }
}

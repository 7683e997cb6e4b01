//! The Helm chart, rendered by the real `helm` (cached by `e2e/peers.sh controlplane`):
//! lint, the default render, a matrix of non-default values, values the schema must reject,
//! rendering without a cluster (GitOps, review) and the Kubernetes version floor, and every flag
//! the chart passes to our binaries exists in that binary's `--help`. The values table in the
//! chart's README is the one generated from values.yaml (no helm needed for that).
//! The install into a real apiserver lives in the control-plane tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sidetrace_e2e::chartdocs;
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

/// `helm template` against Kubernetes v1.34.4 with `--set` pairs; Ok(stdout) or Err(stderr).
fn template(helm: &Path, sets: &[&str]) -> Result<Vec<Value>, String> {
    render(helm, Some("v1.34.4"), &[], sets)
}

/// `helm template` with `--kube-version` when given; see [`render`].
fn template_at(helm: &Path, kube: Option<&str>, sets: &[&str]) -> Result<Vec<Value>, String> {
    render(helm, kube, &[], sets)
}

/// `helm template` with `--kube-version` when given (without it: helm's offline placeholder, as
/// a user without a cluster runs it) and `--api-versions` for each of `apis` (what
/// `.Capabilities.APIVersions.Has` sees), isolated from the user's helm configuration.
fn render(
    helm: &Path,
    kube: Option<&str>,
    apis: &[&str],
    sets: &[&str],
) -> Result<Vec<Value>, String> {
    let mut cmd = Command::new(helm);
    cmd.args(["template", "sidetrace"])
        .arg(chart())
        .args(["--namespace", "sidetrace-system"]);
    if let Some(v) = kube {
        cmd.args(["--kube-version", v]);
    }
    for api in apis {
        cmd.args(["--api-versions", api]);
    }
    // No kubeconfig: nothing to talk to, as on a reviewer's laptop or in a GitOps renderer.
    cmd.env("KUBECONFIG", "/nonexistent/kubeconfig");
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
fn chart_makes_the_proxies_scrapeable() {
    let Some(helm) = helm() else {
        return skip_or_fail("chart", "helm is not cached: run e2e/peers.sh controlplane");
    };
    const POD_MONITOR: &str = "monitoring.coreos.com/v1/PodMonitor";
    // Without the Prometheus Operator's CRD: no PodMonitor, the chart installs the same.
    let docs = template(&helm, &[]).expect("renders");
    assert!(find(&docs, "PodMonitor", "sidetrace-proxies").is_none());
    // With it: one PodMonitor for the sidecars' named admin port, in every namespace.
    let docs = render(
        &helm,
        Some("v1.34.4"),
        &[POD_MONITOR],
        &["metrics.podMonitor.labels.release=prometheus"],
    )
    .expect("renders");
    let pm = find(&docs, "PodMonitor", "sidetrace-proxies").expect("PodMonitor rendered");
    assert_eq!(pm["metadata"]["labels"]["release"], "prometheus", "{pm}");
    assert_eq!(pm["spec"]["namespaceSelector"]["any"], true, "{pm}");
    let ep = &pm["spec"]["podMetricsEndpoints"][0];
    // The port name the webhook gives the sidecar's admin port (injector `patch::ADMIN_PORT_NAME`).
    assert_eq!(ep["port"], "sidetrace-admin", "{pm}");
    assert_eq!(ep["path"], "/metrics", "{pm}");
    let off = render(
        &helm,
        Some("v1.34.4"),
        &[POD_MONITOR],
        &["metrics.podMonitor.enabled=false"],
    )
    .expect("renders");
    assert!(find(&off, "PodMonitor", "sidetrace-proxies").is_none());
    // Annotation-based scraping: the webhook annotates injected pods unless told not to.
    let args = container_args(&docs, "sidetrace-injector");
    assert!(
        args.contains(&"--prometheus-annotations=true".to_owned()),
        "{args:?}"
    );
    let docs = template(&helm, &["proxy.prometheusAnnotations=false"]).expect("renders");
    let args = container_args(&docs, "sidetrace-injector");
    assert!(
        args.contains(&"--prometheus-annotations=false".to_owned()),
        "{args:?}"
    );
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
    // Jaeger: the Jaeger project's own image (UI, OTLP, Zipkin) at the release the tests run,
    // with the receivers the sidecars and users send to.
    let jaeger = find(&docs, "Deployment", "jaeger").expect("jaeger");
    assert_eq!(
        jaeger["spec"]["template"]["spec"]["containers"][0]["image"],
        "docker.io/jaegertracing/jaeger:2.12.0"
    );
    assert!(
        jaeger["spec"]["template"]["spec"]["containers"][0]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["containerPort"] == 4318 && p["name"] == "otlp-http")
    );
    let ports: Vec<i64> =
        find(&docs, "Service", "jaeger-collector").expect("collector")["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .filter_map(|p| p["port"].as_i64())
            .collect();
    assert_eq!(ports, [9411, 4317, 4318], "zipkin, OTLP gRPC, OTLP HTTP");
    // The default collector is the in-cluster Jaeger's OTLP/HTTP receiver; the protocol
    // follows the path unless set.
    let collector = "--collector=http://jaeger-collector.sidetrace-system:4318/v1/traces";
    let args = container_args(&docs, "sidetrace-injector");
    assert!(args.contains(&collector.to_owned()), "{args:?}");
    assert!(!args.iter().any(|a| a.starts_with("--collector-protocol")));

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
    let op = find(&docs, "Deployment", "sidetrace-operator").expect("operator");
    assert_eq!(
        op["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/sidetrace/operator:dev"
    );
    // images.registry is where the sidetrace images were pushed; it never renames Jaeger's.
    let docs = template(&helm, &["images.registry=registry.example/team"]).expect("renders");
    let jaeger = find(&docs, "Deployment", "jaeger").expect("jaeger");
    assert_eq!(
        jaeger["spec"]["template"]["spec"]["containers"][0]["image"],
        "docker.io/jaegertracing/jaeger:2.12.0"
    );
    assert!(
        container_args(&docs, "sidetrace-injector")
            .contains(&"--init-image=registry.example/team/sidetrace/init:0.1.0".to_owned())
    );

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

/// `helm template` needs no cluster: without `--kube-version` helm assumes its placeholder
/// v1.20.0, which a kubeVersion in Chart.yaml would refuse. The floor still holds where the
/// version is real: a version named with `--kube-version` below 1.27 fails with a message that
/// says what is needed. (Against a live cluster the same check runs; the control-plane and
/// cluster tiers install on v1.34.)
#[test]
fn chart_renders_offline_and_keeps_its_kubernetes_floor() {
    let Some(helm) = helm() else {
        return skip_or_fail(
            "chart offline",
            "helm is not cached: run e2e/peers.sh controlplane",
        );
    };
    let docs =
        template_at(&helm, None, &[]).expect("renders with no cluster and no --kube-version");
    assert!(find(&docs, "Deployment", "sidetrace-injector").is_some());
    assert!(find(&docs, "MutatingWebhookConfiguration", "sidetrace-injector").is_some());
    for ok in ["v1.27.0", "1.29.3", "v1.34.4"] {
        template_at(&helm, Some(ok), &[]).unwrap_or_else(|e| panic!("--kube-version {ok}: {e}"));
    }
    for old in ["v1.26.9", "1.22.0"] {
        let err = template_at(&helm, Some(old), &[]).expect_err(old);
        assert!(
            err.contains("sidetrace needs Kubernetes >= 1.27.0"),
            "--kube-version {old}: {err}"
        );
    }
    // Lint, as a chart repository's CI runs it: offline, both plain and strict.
    for args in [&["lint"][..], &["lint", "--strict"]] {
        let out = Command::new(&helm)
            .args(args)
            .arg(chart())
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .output()
            .expect("helm runs");
        assert!(
            out.status.success(),
            "helm {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The values table in helm/sidetrace/README.md is generated from values.yaml's comments, as
/// the CRD YAML is from the Rust types: a value added without a `# -- ` comment, or a README
/// edited by hand, fails here.
#[test]
fn chart_readme_values_table_matches_values_yaml() {
    let values = std::fs::read_to_string(chart().join("values.yaml")).expect("values.yaml");
    let readme = std::fs::read_to_string(chart().join("README.md")).expect("chart README.md");
    let table = chartdocs::values_table(&values).unwrap_or_else(|e| panic!("values.yaml: {e}"));
    let want = chartdocs::render_readme(&readme, &table).expect("README markers");
    assert!(
        readme == want,
        "helm/sidetrace/README.md has drifted from values.yaml: run `make chart-docs`"
    );
    // Every top-level value is in the table, with its default.
    for row in [
        "| `images.registry` | string | `\"\"` |",
        "| `images.jaeger.tag` | string | `\"2.12.0\"` |",
    ] {
        assert!(readme.contains(row), "missing row {row}");
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

/// The README's demo on a user's cluster (e2e/demo/kubernetes.yaml) names the demo app image
/// `make images` builds (the chart's appVersion), in the namespace its TracedServices use, with
/// the namespace labelled and the client opted out.
#[test]
fn readme_demo_manifest_matches_the_images_and_the_examples() {
    let text = std::fs::read_to_string(root().join("e2e/demo/kubernetes.yaml")).expect("demo");
    let docs = documents(&text).expect("YAML");
    let chart_yaml: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(chart().join("Chart.yaml")).expect("Chart.yaml"),
    )
    .expect("Chart.yaml");
    let image = format!(
        "sidetrace/demo-app:{}",
        chart_yaml["appVersion"].as_str().expect("appVersion")
    );
    let ns = &docs[0];
    assert_eq!(ns["kind"], "Namespace");
    assert_eq!(ns["metadata"]["labels"]["sidetrace.dev/inject"], "enabled");
    let deployments: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    assert_eq!(deployments.len(), 4);
    for d in &deployments {
        assert_eq!(d["metadata"]["namespace"], ns["metadata"]["name"]);
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["image"],
            image.as_str()
        );
    }
    let client = find(&docs, "Deployment", "client").expect("client");
    assert_eq!(
        client["spec"]["template"]["metadata"]["labels"]["sidetrace.dev/inject"],
        "false"
    );
    for example in ["demo-front-proxy", "demo-service1", "demo-service2"] {
        let ts = std::fs::read_to_string(root().join(format!("crds/examples/{example}.yaml")))
            .expect("example");
        let ts: serde_yaml::Value = serde_yaml::from_str(&ts).expect("example YAML");
        assert_eq!(
            ts["metadata"]["namespace"].as_str(),
            ns["metadata"]["name"].as_str(),
            "{example}"
        );
    }
}

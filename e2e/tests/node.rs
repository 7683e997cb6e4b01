//! The cluster suite: one suite, driven by the env file of the cluster it runs on (see
//! `sidetrace_e2e::cluster`): the kind cluster (`make e2e-kind`) and the one-node cluster
//! (`make cluster-up`, then `make e2e-node`). A real kubelet creates the pods from Deployments,
//! containerd + runc run our images (loaded, never pulled), sidetrace-init programs iptables in
//! each pod's own network namespace, the sidecar proxies through real Service ClusterIPs
//! (kube-proxy, iptables mode), and the spans land in the chart's in-cluster Jaeger pod, read
//! back through its query API.
//!
//! `make test` starts the clusters for this suite; without one (or without root) each test
//! follows the one skip policy: a SKIP line, or a failure under `CI=true`.
//!
//! Where the cluster runs CoreDNS (kind), the demo apps call each other by DNS name
//! (`service2.<ns>.svc`) as real apps do, so DNS through the captured pods is exercised too, and
//! the sidecars use the chart's default collector name. The one-node cluster has no DNS add-on:
//! the apps find each other through the Service environment variables, and the collector
//! endpoint is set to the Jaeger Service's ClusterIP with a `helm upgrade`. Pods are reached
//! from inside the node's network (pod IPs and ClusterIPs have no route anywhere else).

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use sidetrace_e2e::cluster::Cluster;
use sidetrace_e2e::collector::{Span, jaeger_traces as traces_of, render_tree};

const RELEASE: &str = "sidetrace";
const SYSTEM_NS: &str = "sidetrace-system";
const WAIT: Duration = Duration::from_secs(120);

fn chart_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/sidetrace")
}

fn say(msg: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "[node-e2e] {msg}");
}

/// Deletes a namespace when the test ends, pass or fail.
struct NamespaceGuard<'a> {
    cluster: &'a Cluster,
    name: String,
}

impl Drop for NamespaceGuard<'_> {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .kc(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

fn json(cluster: &Cluster, args: &[&str]) -> Result<Value> {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    Ok(serde_json::from_str(&cluster.kc(&a)?)?)
}

/// The pods of `ns` matching `selector`.
fn pods(cluster: &Cluster, ns: &str, selector: &str) -> Result<Vec<Value>> {
    let v = json(cluster, &["get", "pods", "-n", ns, "-l", selector])?;
    Ok(v["items"].as_array().cloned().unwrap_or_default())
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
        && pod["metadata"]["deletionTimestamp"].is_null()
}

fn all_ready(cluster: &Cluster, ns: &str, selector: &str, n: usize) -> Result<bool> {
    let p = pods(cluster, ns, selector)?;
    Ok(p.len() == n && p.iter().all(is_ready))
}

fn container_names(pod: &Value, field: &str) -> Vec<String> {
    pod["spec"][field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}

/// Restarts of every container of the pod, the native sidecar's (counted in
/// `initContainerStatuses`) included.
fn restart_count(pod: &Value) -> u64 {
    ["initContainerStatuses", "containerStatuses"]
        .iter()
        .flat_map(|f| pod["status"][*f].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s["restartCount"].as_u64())
        .sum()
}

fn pod_ip(pod: &Value) -> Result<String> {
    pod["status"]["podIP"]
        .as_str()
        .map(str::to_owned)
        .context("pod has no IP")
}

fn cluster_ip(cluster: &Cluster, ns: &str, svc: &str) -> Result<String> {
    let ip = cluster.kc(&[
        "get",
        "svc",
        "-n",
        ns,
        svc,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    ensure!(!ip.is_empty(), "Service {ns}/{svc} has no ClusterIP");
    Ok(ip)
}

/// A demo-app Deployment; `args` may reference Service env vars as `$(NAME_SERVICE_HOST)`.
fn deployment(ns: &str, name: &str, args: &[&str]) -> String {
    demo_deployment(
        ns,
        name,
        args,
        "",
        "[{containerPort: 8080}]",
        "{httpGet: {path: /healthz, port: 8080}, periodSeconds: 2}",
    )
}

/// A demo-app Deployment with extra pod labels (`, key: value` YAML), its ports and its
/// readiness probe (flow-style YAML).
fn demo_deployment(
    ns: &str,
    name: &str,
    args: &[&str],
    extra_labels: &str,
    ports: &str,
    readiness: &str,
) -> String {
    let mut all: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    all.push(format!("\"--name={name}\""));
    format!(
        r#"---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}{extra_labels}}}}}
    spec:
      containers:
      - name: app
        image: sidetrace/demo-app:0.1.0
        imagePullPolicy: Never
        args: [{args}]
        ports: {ports}
        readinessProbe: {readiness}
"#,
        args = all.join(", ")
    )
}

fn service(ns: &str, name: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{selector: {{app: {name}}}, ports: [{{name: http, port: 8080}}]}}\n"
    )
}

fn namespace(name: &str, inject: bool) -> String {
    let labels = if inject {
        "{sidetrace.dev/inject: enabled}"
    } else {
        "{}"
    };
    format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {labels}}}\n")
}

// ---------------------------------------------------------------------------------------------

/// A pod runs: the kubelet creates a sandbox from our pause image and starts the demo app in
/// it; the app answers on its pod IP and through its Service's ClusterIP (kube-proxy).
#[test]
fn pod_with_pause_sandbox_and_demo_app_runs_and_serves_through_its_service() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("node::pod_runs") else {
        return Ok(());
    };
    let ns = format!("st-{}-smoke", std::process::id());
    let _guard = NamespaceGuard {
        cluster: &cluster,
        name: ns.clone(),
    };
    cluster.apply(&format!(
        "{}{}{}",
        namespace(&ns, false),
        service(&ns, "hello"),
        deployment(&ns, "hello", &[])
    ))?;
    cluster.wait("hello pod Ready", &ns, WAIT, || {
        all_ready(&cluster, &ns, "app=hello", 1)
    })?;
    let pod = pods(&cluster, &ns, "app=hello")?.remove(0);
    let (code, body) = cluster.http_get(&format!("http://{}:8080/", pod_ip(&pod)?))?;
    ensure!(
        code == 200 && body.contains("(hello)"),
        "pod IP: {code} {body}"
    );
    let svc = cluster_ip(&cluster, &ns, "hello")?;
    // kube-proxy programs the new endpoint asynchronously (within its sync period): poll.
    cluster.wait("hello through its ClusterIP", &ns, WAIT, || {
        let (code, body) = cluster.http_get(&format!("http://{svc}:8080/"))?;
        Ok(code == 200 && body.contains("(hello)"))
    })?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// Uninstalls the chart if the scenario stops half-way.
struct ReleaseGuard<'a> {
    cluster: &'a Cluster,
    done: bool,
}

impl Drop for ReleaseGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self
                .cluster
                .helm()
                .args(["uninstall", RELEASE, "-n", SYSTEM_NS, "--wait"])
                .output();
        }
    }
}

fn helm(cluster: &Cluster, args: &[&str]) -> Result<String> {
    let out = cluster.helm().args(args).output().context("running helm")?;
    ensure!(
        out.status.success(),
        "helm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The deployment's current spec is rolled out: observed by the controller (right after a
/// `helm upgrade` the status still describes the old ReplicaSet, whose injector pods would
/// inject the old collector endpoint), every replica updated and available, no old pod left.
fn deployment_available(cluster: &Cluster, ns: &str, name: &str) -> Result<bool> {
    let d = json(cluster, &["get", "deployment", "-n", ns, name])?;
    let want = d["spec"]["replicas"].as_u64().unwrap_or(1);
    let observed = d["status"]["observedGeneration"].as_i64();
    Ok(observed.is_some()
        && observed == d["metadata"]["generation"].as_i64()
        && d["status"]["updatedReplicas"].as_u64() == Some(want)
        && d["status"]["availableReplicas"].as_u64() == Some(want)
        && d["status"]["replicas"].as_u64() == Some(want))
}

/// The pod the webhook would make of a demo-app pod labelled `app: <app>` in `ns` (a
/// server-side dry run: nothing is created).
fn webhook_view(cluster: &Cluster, ns: &str, app: &str) -> Result<Value> {
    Ok(serde_json::from_str(&cluster.kc(&[
        "run",
        &format!("{app}-probe"),
        "-n",
        ns,
        "--image=sidetrace/demo-app:0.1.0",
        &format!("--labels=app={app}"),
        "--restart=Never",
        "--dry-run=server",
        "-o",
        "json",
    ])?)?)
}

/// The traces Jaeger holds for `service`, each as Zipkin-shaped spans.
fn jaeger_traces(cluster: &Cluster, query: &str, service: &str) -> Result<Vec<Vec<Span>>> {
    let (code, body) = cluster.http_get(&format!(
        "http://{query}:16686/api/traces?service={service}&limit=50&lookback=1h"
    ))?;
    ensure!(code == 200, "jaeger query: {code} {body}");
    Ok(traces_of(&serde_json::from_str(&body)?))
}

/// `sidetrace ARGS` against the cluster: its exit code and stdout (stderr appended).
fn sidetrace(cluster: &Cluster, args: &[&str]) -> Result<(i32, String)> {
    sidetrace_e2e::cli::run(&cluster.env().kubeconfig, args)
}

/// Poll `sidetrace check ARGS` (running `between` before each attempt) until `want(exit code,
/// output)`; the output that satisfied it.
fn wait_check(
    cluster: &Cluster,
    what: &str,
    args: &[&str],
    mut between: impl FnMut() -> Result<()>,
    want: impl Fn(i32, &str) -> bool,
) -> Result<String> {
    let mut last = String::new();
    let ns = args
        .windows(2)
        .find(|w| w[0] == "-n")
        .map_or(SYSTEM_NS, |w| w[1]);
    let mut full = vec!["check"];
    full.extend(args);
    cluster
        .wait(what, ns, WAIT, || {
            between()?;
            let (code, out) = sidetrace(cluster, &full)?;
            let ok = want(code, &out);
            last = format!("exit {code}\n{out}");
            Ok(ok)
        })
        .with_context(|| format!("last `sidetrace {}`: {last}", full.join(" ")))?;
    say(&format!("sidetrace {}: {last}", full.join(" ")));
    Ok(last)
}

fn no_op() -> Result<()> {
    Ok(())
}

fn scale(cluster: &Cluster, deployment: &str, replicas: u32) -> Result<()> {
    cluster.kc(&[
        "scale",
        "deployment",
        "-n",
        SYSTEM_NS,
        deployment,
        &format!("--replicas={replicas}"),
    ])?;
    if replicas == 0 {
        cluster.wait(&format!("{deployment} pods gone"), SYSTEM_NS, WAIT, || {
            Ok(pods(
                cluster,
                SYSTEM_NS,
                &format!("app.kubernetes.io/name={deployment}"),
            )?
            .is_empty())
        })
    } else {
        cluster.wait(&format!("{deployment} available"), SYSTEM_NS, WAIT, || {
            deployment_available(cluster, SYSTEM_NS, deployment)
        })
    }
}

/// `sidetrace trace ID` prints the demo's five-span tree read from the Jaeger pod through the
/// API server's service proxy, shaped as `make demo` prints it; `traces --service` lists it.
fn cli_reads_the_trace(cluster: &Cluster, query: &str, s1_op: &str) -> Result<()> {
    let traces = jaeger_traces(cluster, query, "front-proxy")?;
    let t = traces
        .iter()
        .find(|t| t.len() == 5)
        .context("no five-span trace in Jaeger")?;
    let id = t[0].trace_id.as_str();
    let (code, out) = sidetrace(cluster, &["trace", id])?;
    ensure!(code == 0, "sidetrace trace {id}: exit {code}\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    let shape = [
        format!("trace {id} (5 spans)"),
        "● front-proxy SERVER".to_owned(),
        "   └─ front-proxy CLIENT".to_owned(),
        "      └─ service1 SERVER".to_owned(),
        format!("         └─ service1 CLIENT  {}", s1_op.to_lowercase()),
        "            └─ service2 SERVER".to_owned(),
    ];
    ensure!(
        lines.len() == shape.len()
            && lines
                .iter()
                .zip(&shape)
                .all(|(l, want)| l.to_lowercase().starts_with(&want.to_lowercase())),
        "sidetrace trace {id} printed:\n{out}\nJaeger's API holds:\n{}",
        render_tree(t)
    );
    let (code, out) = sidetrace(
        cluster,
        &["traces", "--service", "front-proxy", "--limit", "50"],
    )?;
    ensure!(
        code == 0 && out.contains(&format!("trace {id} (5 spans)")),
        "sidetrace traces --service front-proxy: exit {code}\n{out}"
    );
    let (code, out) = sidetrace(cluster, &["trace", "0123456789abcdef"])?;
    ensure!(
        code == 1 && out.contains("has no trace 0123456789abcdef"),
        "an unknown trace: exit {code}\n{out}"
    );
    Ok(())
}

fn find<'a>(spans: &'a [Span], service: &str, kind: &str) -> Result<&'a Span> {
    spans
        .iter()
        .find(|s| s.service() == service && s.kind() == kind)
        .with_context(|| format!("no {service} {kind} span in\n{}", render_tree(spans)))
}

/// The data-plane suite's trace shape: front-proxy → service1 → (operation `s1_op`) →
/// service2, five spans linked SERVER → CLIENT → SERVER → CLIENT → SERVER, one trace id, one
/// request id, status and method tagged.
fn assert_demo_trace(spans: &[Span], s1_op: &str) -> Result<()> {
    let tree = render_tree(spans);
    ensure!(spans.len() == 5, "five spans expected:\n{tree}");
    ensure!(
        spans.iter().all(|s| s.trace_id == spans[0].trace_id),
        "one trace id:\n{tree}"
    );
    let front_server = find(spans, "front-proxy", "SERVER")?;
    let front_client = find(spans, "front-proxy", "CLIENT")?;
    let s1_server = find(spans, "service1", "SERVER")?;
    let s1_client = find(spans, "service1", "CLIENT")?;
    let s2_server = find(spans, "service2", "SERVER")?;
    ensure!(
        front_client.parent_id.as_ref() == Some(&front_server.id),
        "{tree}"
    );
    ensure!(
        s1_server.parent_id.as_ref() == Some(&front_client.id),
        "{tree}"
    );
    ensure!(
        s1_client.parent_id.as_ref() == Some(&s1_server.id),
        "{tree}"
    );
    ensure!(
        s2_server.parent_id.as_ref() == Some(&s1_client.id),
        "{tree}"
    );
    ensure!(
        front_client.name().eq_ignore_ascii_case("routeToService1"),
        "front's outbound call named by its TracedService:\n{tree}"
    );
    ensure!(
        s1_client.name().eq_ignore_ascii_case(s1_op),
        "service1's outbound call named {s1_op}:\n{tree}"
    );
    for s in spans {
        ensure!(
            s.tag("http.status_code") == Some("200") && s.tag("http.method") == Some("GET"),
            "{} {} tags:\n{tree}",
            s.service(),
            s.kind()
        );
    }
    let rid = front_server.tag("guid:x-request-id");
    ensure!(
        rid.is_some_and(|r| !r.is_empty())
            && spans.iter().all(|s| s.tag("guid:x-request-id") == rid),
        "one request id on every hop:\n{tree}"
    );
    // The spans came over OTLP (the chart's default): semantic-convention attributes, and the
    // pod's workload as resource attributes, which the webhook took from owner references.
    for s in spans {
        ensure!(
            s.tags.contains_key("http.request.method")
                && s.process_tags
                    .get("k8s.deployment.name")
                    .map(String::as_str)
                    == Some(s.service())
                && s.process_tags.contains_key("k8s.pod.name"),
            "{} {}: not OTLP with the pod's resource: tags {:?}, process {:?}",
            s.service(),
            s.kind(),
            s.tags,
            s.process_tags
        );
    }
    Ok(())
}

/// Send requests through the client pod until Jaeger returns a complete trace whose service1
/// outbound span is named `s1_op`; assert its shape.
fn request_and_read_trace(
    cluster: &Cluster,
    ns: &str,
    client_ip: &str,
    query: &str,
    s1_op: &str,
) -> Result<()> {
    let mut last = String::new();
    cluster
        .wait(
            &format!("a complete trace with {s1_op} in Jaeger"),
            ns,
            WAIT,
            || {
                let (code, body) = cluster.http_get(&format!("http://{client_ip}:8080/go"))?;
                ensure!(
                    code == 200 && body.contains("(service2)"),
                    "client → front-proxy → service1 → service2: {code}\n{body}"
                );
                std::thread::sleep(Duration::from_secs(2));
                let traces = jaeger_traces(cluster, query, "front-proxy")?;
                last = traces.iter().map(|t| render_tree(t)).collect();
                Ok(traces.iter().any(|t| {
                    t.len() == 5
                        && t.iter().any(|s| {
                            s.service() == "service1"
                                && s.kind() == "CLIENT"
                                && s.name().eq_ignore_ascii_case(s1_op)
                        })
                }))
            },
        )
        .with_context(|| format!("traces seen:\n{last}"))?;
    let traces = jaeger_traces(cluster, query, "front-proxy")?;
    let t = traces
        .iter()
        .find(|t| {
            t.len() == 5
                && t.iter()
                    .any(|s| s.kind() == "CLIENT" && s.name().eq_ignore_ascii_case(s1_op))
        })
        .context("the trace vanished")?;
    say(&format!("trace:\n{}", render_tree(t)));
    assert_demo_trace(t, s1_op)
}

/// The whole product on a real node, in order, sharing one install:
/// helm install → demo topology as Deployments, injected (init completed, proxy ready) →
/// requests from a client pod through the Services → the full trace from the Jaeger pod's
/// query API → the opted-out client has no sidecar → a TracedService update renames an
/// operation without restarting a pod → with the injector gone (failurePolicy Ignore) pods
/// are still created, uninjected → helm uninstall leaves nothing of the release behind.
#[test]
fn chart_injects_deployments_and_jaeger_holds_the_full_trace() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("node::chart_full_flow") else {
        return Ok(());
    };
    let ns = format!("st-{}-shop", std::process::id());
    let _ns_guard = NamespaceGuard {
        cluster: &cluster,
        name: ns.clone(),
    };
    // A release left by an interrupted run would make `helm install` fail.
    let _ = helm(&cluster, &["uninstall", RELEASE, "-n", SYSTEM_NS, "--wait"]);
    let mut release = ReleaseGuard {
        cluster: &cluster,
        done: false,
    };

    // 1. helm install with the images imported into containerd (never pulled).
    say("helm install");
    let chart = chart_dir();
    let chart = chart.to_string_lossy();
    // Jaeger: the locally built image instead of the chart's default (the Jaeger project's),
    // which cannot be pulled here.
    let jaeger = sidetrace_e2e::cluster::local_jaeger_set_args()?;
    let mut args = vec![
        "install",
        RELEASE,
        &chart,
        "-n",
        SYSTEM_NS,
        "--create-namespace",
        "--set",
        "images.pullPolicy=Never",
    ];
    args.extend(jaeger.iter().map(String::as_str));
    helm(&cluster, &args)?;
    // The chart creates the webhook's Secret empty and the operator fills it: the injector
    // waits for the certificate instead of exiting, so it starts once, without a restart.
    cluster.wait("injector available", SYSTEM_NS, WAIT, || {
        deployment_available(&cluster, SYSTEM_NS, "sidetrace-injector")
    })?;
    for pod in pods(
        &cluster,
        SYSTEM_NS,
        "app.kubernetes.io/name=sidetrace-injector",
    )? {
        let restarts = restart_count(&pod);
        ensure!(
            restarts == 0,
            "the injector restarted {restarts} time(s) while waiting for its certificate: {}",
            pod["status"]["containerStatuses"]
        );
    }
    // The chart's default collector is the Jaeger Service's DNS name, on the chart's default
    // protocol (OTLP/HTTP to Jaeger's 4318 receiver). Without a DNS add-on the sidecars get
    // the collector by its ClusterIP instead.
    let collector = cluster_ip(&cluster, SYSTEM_NS, "jaeger-collector")?;
    // The endpoint the sidecars are given (what `sidetrace check` names, too).
    let expected = if cluster.env().dns {
        format!("http://jaeger-collector.{SYSTEM_NS}:4318/v1/traces")
    } else {
        let endpoint = format!("http://{collector}:4318/v1/traces");
        helm(
            &cluster,
            &[
                "upgrade",
                RELEASE,
                &chart,
                "-n",
                SYSTEM_NS,
                "--reuse-values",
                "--set",
                &format!("collector.endpoint={endpoint}"),
            ],
        )?;
        endpoint
    };
    for d in ["sidetrace-operator", "sidetrace-injector", "jaeger"] {
        cluster.wait(
            &format!("deployment {d} available"),
            SYSTEM_NS,
            WAIT,
            || deployment_available(&cluster, SYSTEM_NS, d),
        )?;
    }
    let query = cluster_ip(&cluster, SYSTEM_NS, "jaeger-query")?;

    // 2. The demo topology in a labelled namespace, with its TracedServices.
    say("demo topology");
    let mut yaml = namespace(&ns, true);
    for s in ["service2", "service1", "front-proxy"] {
        yaml.push_str(&service(&ns, s));
    }
    cluster.apply(&yaml)?;
    // After an upgrade the new collector reaches pods only through the new injector pods; until
    // kube-proxy stops sending the apiserver's webhook calls to the old ones, pods would get
    // the old one. Ask the webhook with a dry-run pod.
    cluster.wait("the webhook injects the collector", &ns, WAIT, || {
        let pod = webhook_view(&cluster, &ns, "collector-probe")?;
        let proxy_env = ["initContainers", "containers"]
            .iter()
            .flat_map(|f| pod["spec"][*f].as_array().cloned().unwrap_or_default())
            .find(|c| c["name"] == "sidetrace-proxy")
            .map(|c| c["env"].clone())
            .unwrap_or_default();
        Ok(proxy_env.as_array().into_iter().flatten().any(|e| {
            e["name"] == "SIDETRACE_COLLECTOR" && e["value"].as_str() == Some(expected.as_str())
        }))
    })?;
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/examples");
    for s in ["front-proxy", "service1", "service2"] {
        let text = std::fs::read_to_string(examples.join(format!("demo-{s}.yaml")))?;
        cluster.apply(&text.replace("namespace: demo", &format!("namespace: {ns}")))?;
    }
    // The webhook learns TracedServices from a watch: a pod admitted before it has seen its
    // TracedService would get no config. Ask it (dry-run pods) until each one is known.
    for s in ["front-proxy", "service1", "service2"] {
        let config_map = format!("sidetrace-{s}");
        cluster.wait(
            &format!("the webhook knows TracedService {s}"),
            &ns,
            WAIT,
            || {
                let pod = webhook_view(&cluster, &ns, s)?;
                Ok(pod["spec"]["volumes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|v| v["configMap"]["name"] == config_map.as_str()))
            },
        )?;
    }
    // Services exist before the pods, so the kubelet sets their env vars.
    let host = |svc: &str| cluster.service_host(&ns, svc);
    let yaml = [
        deployment(&ns, "service2", &[]),
        deployment(
            &ns,
            "service1",
            &[&format!(
                "--route=/trace/1=http://{}:8080/trace/2",
                host("service2")
            )],
        ),
        deployment(
            &ns,
            "front-proxy",
            &[
                &format!("--route=/trace/1=http://{}:8080/trace/1", host("service1")),
                &format!("--route=/trace/2=http://{}:8080/trace/2", host("service2")),
            ],
        ),
    ]
    .concat();
    cluster.apply(&yaml)?;
    for app in ["service2", "service1", "front-proxy"] {
        cluster.wait(&format!("{app} Ready"), &ns, WAIT, || {
            all_ready(&cluster, &ns, &format!("app={app}"), 1)
        })?;
        let pod = pods(&cluster, &ns, &format!("app={app}"))?.remove(0);
        let inits = pod["status"]["initContainerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let init = inits
            .iter()
            .find(|s| s["name"] == "sidetrace-init")
            .with_context(|| format!("{app}: no sidetrace-init: {inits:?}"))?;
        ensure!(
            init["state"]["terminated"]["reason"] == "Completed"
                && init["state"]["terminated"]["exitCode"] == 0,
            "{app}: sidetrace-init did not complete: {init}"
        );
        // The proxy is a native sidecar (init container, restartPolicy Always) or a container.
        let statuses: Vec<&Value> = inits
            .iter()
            .chain(
                pod["status"]["containerStatuses"]
                    .as_array()
                    .into_iter()
                    .flatten(),
            )
            .collect();
        let proxy = statuses
            .iter()
            .find(|s| s["name"] == "sidetrace-proxy")
            .with_context(|| format!("{app}: no sidetrace-proxy"))?;
        ensure!(proxy["ready"] == true, "{app}: proxy not ready: {proxy}");
    }

    // 3. A client pod, opted out of injection, calls the front through its Service.
    say("client pod (opted out) and requests");
    cluster.apply(&format!(
        r#"---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {ns}, labels: {{app: client, sidetrace.dev/inject: "false"}}}}
spec:
  containers:
  - name: app
    image: sidetrace/demo-app:0.1.0
    imagePullPolicy: Never
    args: ["--name=client", "--route=/go=http://{front}:8080/trace/1"]
    readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 2}}
"#,
        front = host("front-proxy")
    ))?;
    cluster.wait("client Ready", &ns, WAIT, || {
        all_ready(&cluster, &ns, "app=client", 1)
    })?;
    let client = pods(&cluster, &ns, "app=client")?.remove(0);
    let names = [
        container_names(&client, "containers"),
        container_names(&client, "initContainers"),
    ]
    .concat();
    ensure!(
        names == ["app"],
        "opted-out pod must carry no sidetrace container: {names:?}"
    );
    let client_ip = pod_ip(&client)?;

    // 4. The full trace from Jaeger's query API.
    request_and_read_trace(&cluster, &ns, &client_ip, &query, "checkStock")?;

    // 4b. The command line on the healthy install: `check` passes, `trace` prints the tree
    // from the Jaeger pod, `status` lists the injected pods.
    say("sidetrace check, trace and status on the healthy install");
    let healthy = wait_check(
        &cluster,
        "sidetrace check passes",
        &["-n", &ns, "--proxies", "10"],
        no_op,
        |code, _| code == 0,
    )?;
    for line in [
        "✓ CRD tracedservices.sidetrace.dev is installed",
        "✓ operator leader elected",
        "✓ webhook caBundle matches the serving certificate",
        "✓ webhook is reachable: a dry-run pod",
        "✓ namespace is labelled sidetrace.dev/inject=enabled",
        &format!("proxy {ns}/front-proxy-"),
        "✓ proxy is ready",
        "is served by service sidetrace-system/jaeger-collector",
    ] {
        ensure!(healthy.contains(line), "no {line:?} in:\n{healthy}");
    }
    cli_reads_the_trace(&cluster, &query, "checkStock")?;
    let (code, table) = sidetrace(&cluster, &["status", "-n", &ns, "--window", "1s"])?;
    ensure!(
        code == 0
            && ["front-proxy", "service1", "service2"].iter().all(|app| {
                table.lines().any(|l| {
                    let cells: Vec<&str> = l.split_whitespace().collect();
                    cells.len() >= 4
                        && cells[1] == *app
                        && cells[2].starts_with(&format!("{app}-"))
                        && cells[3] == "yes"
                })
            }),
        "sidetrace status: exit {code}\n{table}"
    );

    // 4c. A namespace that is not labelled, then a pod created before it was.
    say("sidetrace check: namespace not labelled, pod created before the label");
    let late = format!("{ns}-late");
    let _late_guard = NamespaceGuard {
        cluster: &cluster,
        name: late.clone(),
    };
    cluster.apply(&format!(
        "{}{}",
        namespace(&late, false),
        deployment(&late, "early", &[])
    ))?;
    wait_check(
        &cluster,
        "check names the unlabelled namespace",
        &["-n", &late],
        no_op,
        |code, out| {
            code == 1
                && out.contains("✗ namespace is not labelled sidetrace.dev/inject=enabled")
                && out.contains(&format!(
                    "kubectl label namespace {late} sidetrace.dev/inject=enabled"
                ))
        },
    )?;
    cluster.kc(&["label", "namespace", &late, "sidetrace.dev/inject=enabled"])?;
    wait_check(
        &cluster,
        "check names the pod created before the label",
        &["-n", &late],
        no_op,
        |code, out| {
            code == 1
                && out.contains("✓ namespace is labelled")
                && out.contains("should carry the sidecar and do not")
                && out.contains("pod early-")
                && out.contains("created before injection was enabled")
                && out.contains(&format!(
                    "kubectl -n {late} rollout restart deployment/early"
                ))
        },
    )?;

    // 4d. A caBundle that does not verify the serving certificate (the operator, which would
    // repair it, is stopped first): another CA's, the cluster's own.
    say("sidetrace check: caBundle mismatch");
    scale(&cluster, "sidetrace-operator", 0)?;
    let cluster_ca = cluster.kc(&[
        "get",
        "configmap",
        "kube-root-ca.crt",
        "-n",
        "default",
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ])?;
    ensure!(
        cluster_ca.contains("BEGIN CERTIFICATE"),
        "kube-root-ca.crt: {cluster_ca}"
    );
    {
        use base64::Engine as _;
        let other = base64::engine::general_purpose::STANDARD.encode(cluster_ca);
        let patch: Vec<Value> = (0..2)
            .map(|i| {
                serde_json::json!({"op": "replace",
                    "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": other})
            })
            .collect();
        cluster.kc(&[
            "patch",
            "mutatingwebhookconfiguration",
            "sidetrace-injector",
            "--type=json",
            "-p",
            &Value::Array(patch).to_string(),
        ])?;
    }
    wait_check(
        &cluster,
        "check names the caBundle mismatch",
        &["-n", &ns],
        no_op,
        |code, out| {
            code == 1
                && out.contains(
                    "✗ webhook caBundle does not match the serving certificate in secret \
                     sidetrace-system/sidetrace-injector-tls: the serving certificate is not \
                     signed by any CA in the caBundle",
                )
                && out.contains(
                    "✗ operator (deployment sidetrace-system/sidetrace-operator) is scaled to zero",
                )
        },
    )?;
    scale(&cluster, "sidetrace-operator", 1)?;
    wait_check(
        &cluster,
        "the operator repairs the caBundle and check sees it",
        &["-n", &ns],
        no_op,
        |_, out| {
            out.contains("✓ webhook caBundle matches") && out.contains("✓ operator leader elected")
        },
    )?;

    // 5. A TracedService update renames service1's operation; no pod restarts.
    say("TracedService update");
    let before = pods(&cluster, &ns, "app=service1")?.remove(0);
    let uid = before["metadata"]["uid"].clone();
    cluster.kc(&[
        "patch",
        "tracedservice",
        "-n",
        &ns,
        "service1",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/operations/0/name","value":"checkInventory"}]"#,
    ])?;
    request_and_read_trace(&cluster, &ns, &client_ip, &query, "checkInventory")?;
    let after = pods(&cluster, &ns, "app=service1")?;
    ensure!(
        after.len() == 1 && after[0]["metadata"]["uid"] == uid,
        "service1 was not redeployed"
    );
    let restarts = restart_count(&after[0]);
    ensure!(restarts == 0, "no container restarted: {restarts} restarts");

    // 5b. Nothing a TracedService says stops a pod: service2's collector becomes an https://
    // URL (a plain-HTTP receiver behind it, so every export fails its TLS handshake). A new
    // service2 pod starts with that config, becomes Ready and serves; before TLS support the
    // proxy exited 64 on such a URL and the pod never became Ready.
    say("a collector the proxy cannot export to");
    let old_uid = pods(&cluster, &ns, "app=service2")?.remove(0)["metadata"]["uid"].clone();
    let https = format!("https://{collector}:4318/v1/traces");
    cluster.kc(&[
        "patch",
        "tracedservice",
        "-n",
        &ns,
        "service2",
        "--type=merge",
        "-p",
        &serde_json::json!({"spec": {"collector": {"endpoint": https}}}).to_string(),
    ])?;
    cluster.wait(
        "service2's ConfigMap names the https collector",
        &ns,
        WAIT,
        || {
            let cm = json(
                &cluster,
                &["get", "configmap", "-n", &ns, "sidetrace-service2"],
            )?;
            Ok(cm["data"].to_string().contains(&https))
        },
    )?;
    cluster.kc(&[
        "delete",
        "pod",
        "-n",
        &ns,
        "-l",
        "app=service2",
        "--wait=false",
    ])?;
    cluster.wait(
        "a new service2 pod Ready with that collector",
        &ns,
        WAIT,
        || {
            let p = pods(&cluster, &ns, "app=service2")?;
            Ok(p.len() == 1 && p[0]["metadata"]["uid"] != old_uid && is_ready(&p[0]))
        },
    )?;
    cluster.wait(
        "requests flow through the new service2 pod",
        &ns,
        WAIT,
        || {
            let (code, body) = cluster.http_get(&format!("http://{client_ip}:8080/go"))?;
            Ok(code == 200 && body.contains("(service2)"))
        },
    )?;
    // The proxy's own view, through the API server's pod proxy: nothing exported, every span
    // dropped because the collector cannot be reached over TLS.
    let service2_pod = pods(&cluster, &ns, "app=service2")?.remove(0)["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    wait_check(
        &cluster,
        "check names service2's collector as unreachable from its proxy",
        &["-n", &ns, "--proxies", "10"],
        || {
            cluster.http_get(&format!("http://{client_ip}:8080/go"))?;
            Ok(())
        },
        |code, out| {
            code == 1
                && out
                    .split(&format!("proxy {ns}/{service2_pod}"))
                    .nth(1)
                    .is_some_and(|rest| {
                        rest.contains("✗ spans do not reach the collector: 0 span(s) exported")
                            && rest.contains(&https)
                    })
        },
    )?;

    // 5c. tcpSocket probes follow the app, not the proxy: the same readiness probe on an
    // injected pod and on an opted-out one; when the app closes the probed port, both pods go
    // NotReady. (Without the rewrite the kubelet's connection is captured and accepted by the
    // proxy, and the injected pod stays Ready.)
    say("tcpSocket probes follow the app");
    let probed = |name: &str, inject: bool| {
        demo_deployment(
            &ns,
            name,
            &["--tcp-echo=0.0.0.0:9000"],
            &format!(", sidetrace.dev/inject: \"{inject}\""),
            "[{containerPort: 8080}, {containerPort: 9000}]",
            "{tcpSocket: {port: 9000}, periodSeconds: 1, failureThreshold: 1}",
        )
    };
    cluster.apply(&format!(
        "{}{}",
        probed("probed", true),
        probed("probed-plain", false)
    ))?;
    for (app, injected) in [("probed", true), ("probed-plain", false)] {
        cluster.wait(&format!("{app} Ready"), &ns, WAIT, || {
            all_ready(&cluster, &ns, &format!("app={app}"), 1)
        })?;
        let pod = pods(&cluster, &ns, &format!("app={app}"))?.remove(0);
        let probe = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "app")
            .map(|c| c["readinessProbe"].clone())
            .unwrap_or_default();
        let rewritten = probe["httpGet"]["path"] == "/app-health/tcp/9000";
        ensure!(
            rewritten == injected && (injected || probe["tcpSocket"]["port"] == 9000),
            "{app}: readiness probe {probe}"
        );
        let ip = pod_ip(&pod)?;
        let (code, _) = cluster.http_get(&format!("http://{ip}:8080/admin/close-tcp-echo"))?;
        ensure!(code == 200, "{app}: closing its tcp port answered {code}");
        cluster.wait(
            &format!("{app} NotReady once its probed port is closed"),
            &ns,
            WAIT,
            || {
                let p = pods(&cluster, &ns, &format!("app={app}"))?;
                Ok(p.len() == 1
                    && !is_ready(&p[0])
                    && p[0]["metadata"]["uid"] == pod["metadata"]["uid"])
            },
        )?;
    }

    // 5d. A Job's pod completes with the native sidecar, after an outbound call through it.
    say("a Job completes");
    cluster.apply(&format!(
        r#"---
apiVersion: batch/v1
kind: Job
metadata: {{name: batch, namespace: {ns}}}
spec:
  backoffLimit: 0
  template:
    metadata: {{labels: {{app: batch}}}}
    spec:
      restartPolicy: Never
      containers:
      - name: app
        image: sidetrace/demo-app:0.1.0
        imagePullPolicy: Never
        args: ["--name=batch", "--once=http://{service1}:8080/"]
"#,
        service1 = host("service1")
    ))?;
    cluster.wait("the Job succeeded", &ns, WAIT, || {
        let job = json(&cluster, &["get", "job", "-n", &ns, "batch"])?;
        if job["status"]["failed"].as_u64().unwrap_or(0) > 0 {
            bail!("the Job failed: {}", job["status"]);
        }
        Ok(job["status"]["succeeded"].as_u64() == Some(1))
    })?;
    let batch = pods(&cluster, &ns, "app=batch")?.remove(0);
    let native_proxy = batch["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["name"] == "sidetrace-proxy" && c["restartPolicy"] == "Always");
    ensure!(
        native_proxy && batch["status"]["phase"] == "Succeeded",
        "the Job's pod: native proxy {native_proxy}, phase {}",
        batch["status"]["phase"]
    );

    // 5e. The collector with nothing behind it. Last of the steps that read traces: the
    // Jaeger pod that comes back holds none of the earlier ones.
    say("sidetrace check: collector unreachable");
    scale(&cluster, "jaeger", 0)?;
    wait_check(
        &cluster,
        "check names the unreachable collector",
        &["-n", &ns],
        no_op,
        |code, out| {
            code == 1
                && out.contains(&format!(
                    "✗ collector {expected} is unreachable: service \
                     sidetrace-system/jaeger-collector has no ready endpoints"
                ))
        },
    )?;
    // 5f. The collector comes back, a new pod behind the same Service: the running proxies
    // export to it with no restart. (service2's proxy still exports to the https URL of 5b,
    // so a new trace holds the front's and service1's spans.)
    say("collector back");
    scale(&cluster, "jaeger", 1)?;
    let mut seen = String::new();
    cluster
        .wait(
            "the new Jaeger pod receives front-proxy's and service1's spans",
            &ns,
            WAIT,
            || {
                let (code, _) = cluster.http_get(&format!("http://{client_ip}:8080/go"))?;
                ensure!(code == 200, "client → front-proxy: {code}");
                std::thread::sleep(Duration::from_secs(2));
                let traces = jaeger_traces(&cluster, &query, "front-proxy")?;
                seen = traces.iter().map(|t| render_tree(t)).collect();
                Ok(traces.iter().any(|t| {
                    ["front-proxy", "service1"]
                        .iter()
                        .all(|svc| t.iter().any(|s| s.service() == *svc))
                }))
            },
        )
        .with_context(|| format!("traces in the new Jaeger pod:\n{seen}"))?;

    // 6. Webhook loss with failurePolicy Ignore: pods are still created, without a sidecar.
    say("webhook loss");
    scale(&cluster, "sidetrace-injector", 0)?;
    wait_check(
        &cluster,
        "check names the injector scaled to zero",
        &["-n", &ns],
        no_op,
        |code, out| {
            code == 1
                && out.contains(
                    "✗ injector (deployment sidetrace-system/sidetrace-injector) is scaled to zero",
                )
                && out.contains("--replicas=1")
                && (out.contains("✗ webhook is not reachable")
                    || out.contains("✗ webhook refused or failed"))
        },
    )?;
    cluster.apply(&deployment(&ns, "lonely", &[]))?;
    cluster.wait("lonely Ready without the injector", &ns, WAIT, || {
        all_ready(&cluster, &ns, "app=lonely", 1)
    })?;
    let lonely = pods(&cluster, &ns, "app=lonely")?.remove(0);
    let names = [
        container_names(&lonely, "containers"),
        container_names(&lonely, "initContainers"),
    ]
    .concat();
    ensure!(
        names == ["app"],
        "created uninjected while the webhook is down: {names:?}"
    );

    // 7. helm uninstall leaves nothing of the release behind.
    say("helm uninstall");
    helm(&cluster, &["uninstall", RELEASE, "-n", SYSTEM_NS, "--wait"])?;
    release.done = true;
    let selector = format!("app.kubernetes.io/instance={RELEASE}");
    cluster.wait("release objects gone", SYSTEM_NS, WAIT, || {
        let left = cluster.kc(&[
            "get",
            "all,configmaps,secrets,serviceaccounts,roles,rolebindings,poddisruptionbudgets",
            "-n",
            SYSTEM_NS,
            "-l",
            &selector,
            "-o",
            "name",
        ])?;
        let cluster_wide = cluster.kc(&[
            "get",
            "clusterroles,clusterrolebindings,mutatingwebhookconfigurations",
            "-l",
            &selector,
            "-o",
            "name",
        ])?;
        let left = format!("{left}{cluster_wide}");
        if !left.trim().is_empty() {
            bail!("left behind:\n{left}");
        }
        Ok(true)
    })?;
    Ok(())
}

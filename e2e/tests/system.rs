//! The control plane of sidetrace against a real kube-apiserver, etcd and
//! kube-controller-manager: `helm install` of the real chart (webhook registered by URL on the
//! control plane's host address, failurePolicy Fail so a TLS or admission mistake shows), then
//! the real `sidetrace-operator` and `sidetrace-injector` binaries run as local processes with
//! their chart ServiceAccounts' tokens — so a permission the chart forgot fails a test.
//!
//! One test function runs the scenario in order, sharing one control plane:
//! certificates and caBundle → TracedService rendered with status → pods injected (or not) →
//! spec update → leader election → certificate rotation without a failed admission →
//! garbage collection on delete → webhook loss with failurePolicy Ignore → `helm uninstall`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use sidetrace_contract::injection::SkipRecord;
use sidetrace_contract::names;
use sidetrace_crds::TracedService;
use sidetrace_e2e::controlplane::{ControlPlane, poll};

const NS: &str = "sidetrace-system";
const WAIT: Duration = Duration::from_secs(90);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn binary(name: &str) -> Result<PathBuf> {
    let exe = root().join("target/debug").join(name);
    ensure!(
        exe.exists(),
        "{} is not built: run cargo build --workspace --bins",
        exe.display()
    );
    Ok(exe)
}

fn free_port(ip: IpAddr) -> Result<u16> {
    Ok(TcpListener::bind(SocketAddr::new(ip, 0))?
        .local_addr()?
        .port())
}

/// A child process killed on drop, with its log kept in the control plane's directory.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(
        dir: &Path,
        name: &str,
        exe: &Path,
        args: &[String],
        env: &[(&str, &Path)],
    ) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- last lines of {} ---\n{}",
            self.name,
            lines[lines.len().saturating_sub(25)..].join("\n")
        )
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn helm(cp: &ControlPlane, args: &[&str]) -> Result<String> {
    let out = Command::new(&cp.bins().helm)
        .args(args)
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .output()?;
    ensure!(
        out.status.success(),
        "helm {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn secret_text(s: &Secret, key: &str) -> String {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default()
}

/// Copies the webhook Secret's certificate into files, as the kubelet does for a mounted
/// Secret, so the injector's file reload is exercised.
async fn sync_cert_files(secrets: Api<Secret>, cert: PathBuf, key: PathBuf) {
    loop {
        if let Ok(Some(s)) = secrets.get_opt("sidetrace-injector-tls").await {
            let (c, k) = (secret_text(&s, "tls.crt"), secret_text(&s, "tls.key"));
            if !c.is_empty() && std::fs::read_to_string(&cert).unwrap_or_default() != c {
                // Key first, then cert, each renamed into place atomically.
                let _ = std::fs::write(key.with_extension("tmp"), &k)
                    .and_then(|()| std::fs::rename(key.with_extension("tmp"), &key));
                let _ = std::fs::write(cert.with_extension("tmp"), &c)
                    .and_then(|()| std::fs::rename(cert.with_extension("tmp"), &cert));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn pod(name: &str, labels: &[(&str, &str)]) -> Pod {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "demo:1", "ports": [{"containerPort": 8080}]}]},
    }))
    .expect("pod literal")
}

fn container_names(p: &Pod) -> (Vec<String>, Vec<String>) {
    let spec = p.spec.as_ref();
    let init = spec
        .and_then(|s| s.init_containers.as_ref())
        .map(|c| c.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    let main = spec
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    (init, main)
}

fn is_injected(p: &Pod) -> bool {
    let (init, main) = container_names(p);
    let has_proxy = init.iter().chain(&main).any(|n| n == "sidetrace-proxy");
    init.iter().any(|n| n == "sidetrace-init")
        && has_proxy
        && p.annotations().contains_key("sidetrace.dev/status")
}

fn mounts_config(p: &Pod, config_map: &str) -> bool {
    p.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|v| {
            v.iter()
                .any(|v| v.config_map.as_ref().is_some_and(|c| c.name == config_map))
        })
}

async fn create_pod(client: &Client, ns: &str, p: Pod) -> Result<Pod> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &p)
        .await
        .with_context(|| format!("creating pod {ns}/{}", p.name_any()))
}

/// The pod as admission (the webhook included) would store it, without storing it.
async fn dry_run(api: &Api<Pod>, p: &Pod) -> Option<Pod> {
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    api.create(&dry, p).await.ok()
}

async fn ts_status_matches(
    api: &Api<TracedService>,
    name: &str,
    check: impl Fn(&TracedService) -> bool,
) -> Result<bool> {
    Ok(api.get_opt(name).await?.is_some_and(|t| check(&t)))
}

fn ready(t: &TracedService) -> Option<(String, String)> {
    t.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| (c.status.clone(), c.reason.clone()))
    })
}

/// The skip record the webhook wrote on a pod it left alone.
fn skip_record(p: &Pod) -> Option<SkipRecord> {
    p.annotations()
        .get(names::SKIP_ANNOTATION)
        .and_then(|v| SkipRecord::parse(v))
}

/// The TracedService's PodsInjected condition: (status, reason, message).
fn pods_injected(t: &TracedService) -> Option<(String, String, String)> {
    t.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "PodsInjected")
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    })
}

/// Waits until `name`'s PodsInjected condition satisfies `check`; the error shows the last one.
async fn wait_pods_injected(
    tss: &Api<TracedService>,
    name: &str,
    what: &str,
    check: impl Fn(&str, &str, &str) -> bool,
) -> Result<()> {
    let last = std::sync::Mutex::new(None);
    poll(WAIT, what, || async {
        let cond = tss.get_opt(name).await?.as_ref().and_then(pods_injected);
        let ok = cond
            .as_ref()
            .is_some_and(|(s, r, m)| check(s.as_str(), r.as_str(), m.as_str()));
        *last.lock().expect("lock") = cond;
        Ok(ok)
    })
    .await
    .with_context(|| {
        format!(
            "last PodsInjected of {name}: {:?}",
            last.lock().expect("lock")
        )
    })
}

/// A TracedService named `name` selecting `app=<name>` in `ns`.
fn traced_service(name: &str, ns: &str) -> Result<TracedService> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "sidetrace.dev/v1alpha1", "kind": "TracedService",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"matchLabels": {"app": name}}},
    }))?)
}

async fn every_skip_reason_is_recorded_and_reported(
    cp: &ControlPlane,
    client: &Client,
    injector: &Proc,
    operator: &Proc,
) -> Result<()> {
    let with_spec = |name: &str, labels: &[(&str, &str)], spec: serde_json::Value| -> Result<Pod> {
        let mut v = serde_json::to_value(pod(name, labels))?;
        if let (Some(dst), Some(src)) = (v["spec"].as_object_mut(), spec.as_object()) {
            dst.extend(src.clone());
        }
        Ok(serde_json::from_value(v)?)
    };
    let app = ("app", "skips");

    // A labelled namespace: one pod injected, three left alone as asked.
    cp.create_namespace("skips", &[("sidetrace.dev/inject", "enabled")])
        .await?;
    let tss: Api<TracedService> = Api::namespaced(client.clone(), "skips");
    tss.create(&PostParams::default(), &traced_service("skips", "skips")?)
        .await?;
    let injected = create_pod(client, "skips", pod("traced", &[app])).await?;
    ensure!(is_injected(&injected), "plain pod in skips not injected");
    let host = with_spec("host-net", &[app], json!({"hostNetwork": true}))?;
    let host = create_pod(client, "skips", host).await?;
    ensure!(!is_injected(&host), "hostNetwork pod was injected");
    ensure!(
        skip_record(&host).is_some_and(|r| r.reason == "host-network"),
        "hostNetwork pod's record: {:?}",
        host.annotations().get(names::SKIP_ANNOTATION)
    );
    let istio = with_spec(
        "istio",
        &[app],
        json!({"containers": [{"name": "app", "image": "demo:1"}, {"name": "istio-proxy", "image": "proxyv2:1"}]}),
    )?;
    let istio = create_pod(client, "skips", istio).await?;
    ensure!(!is_injected(&istio), "pod with istio-proxy was injected");
    ensure!(
        skip_record(&istio).is_some_and(
            |r| r.reason == "foreign-proxy" && r.detail.as_deref() == Some("istio-proxy")
        ),
        "istio pod's record: {:?}",
        istio.annotations().get(names::SKIP_ANNOTATION)
    );
    // Opted out: the webhook registration's objectSelector keeps it from the webhook, so
    // there is no record; the label itself says why.
    let out = create_pod(
        client,
        "skips",
        pod("opted-out", &[app, ("sidetrace.dev/inject", "false")]),
    )
    .await?;
    ensure!(
        !is_injected(&out) && skip_record(&out).is_none(),
        "opted-out pod touched"
    );
    wait_pods_injected(
        &tss,
        "skips",
        "skips: left-alone pods do not fail",
        |s, r, m| {
            s == "True"
                && r == "AllInjected"
                && m.starts_with("1 of 4 selected pods carry the sidecar; 3 left alone as asked:")
                && m.contains("host-net (pod uses the host network)")
                && m.contains("istio (pod already carries the istio-proxy mesh proxy)")
                && m.contains("opted-out (pod is labelled sidetrace.dev/inject=false)")
        },
    )
    .await
    .with_context(|| operator.tail())?;

    // A pod opted in where the namespace says no: the webhook is called and records it.
    cp.create_namespace("says-no", &[("sidetrace.dev/inject", "disabled")])
        .await?;
    let says_no = Api::<Pod>::namespaced(client.clone(), "says-no");
    let opted_in = pod(
        "opted-in",
        &[("app", "says-no"), ("sidetrace.dev/inject", "true")],
    );
    // Until the injector's namespace cache has the label it trusts its registration: dry runs.
    poll(
        WAIT,
        "a disabled namespace's opt-in pod is recorded",
        || async {
            Ok(dry_run(&says_no, &opted_in)
                .await
                .is_some_and(|p| skip_record(&p).is_some_and(|r| r.reason == "namespace-disabled")))
        },
    )
    .await
    .with_context(|| injector.tail())?;
    let stored = create_pod(client, "says-no", opted_in.clone()).await?;
    ensure!(
        !is_injected(&stored)
            && skip_record(&stored).is_some_and(|r| r.detail.as_deref() == Some("disabled")),
        "opt-in pod in a disabled namespace: {:?}",
        stored.annotations()
    );

    // Pod Security: the pod created in "psa" above carries the record; a TracedService
    // selecting it says the level blocks injection.
    let psa = Api::<Pod>::namespaced(client.clone(), "psa")
        .get("psa")
        .await?;
    ensure!(
        skip_record(&psa)
            .is_some_and(|r| r.reason == "pod-security" && r.detail.as_deref() == Some("baseline")),
        "Pod Security pod's record: {:?}",
        psa.annotations()
    );
    let psa_tss: Api<TracedService> = Api::namespaced(client.clone(), "psa");
    let mut x = traced_service("x", "psa")?;
    x.metadata.name = Some("psa-x".into());
    psa_tss.create(&PostParams::default(), &x).await?;
    wait_pods_injected(
        &psa_tss,
        "psa-x",
        "psa: blocked by Pod Security",
        |s, r, m| {
            s == "False"
                && r == "BlockedByPodSecurity"
                && m.contains("\"baseline\"")
                && m.contains("psa")
        },
    )
    .await
    .with_context(|| operator.tail())?;

    // A pod created before its namespace was labelled: first "not enabled", then, once the
    // namespace enables injection, the one pod to restart, with the reason.
    cp.create_namespace("later", &[]).await?;
    let early = create_pod(client, "later", pod("before-label", &[("app", "later")])).await?;
    ensure!(
        !is_injected(&early) && skip_record(&early).is_none(),
        "pod in an unlabelled namespace touched"
    );
    let later_tss: Api<TracedService> = Api::namespaced(client.clone(), "later");
    later_tss
        .create(&PostParams::default(), &traced_service("later", "later")?)
        .await?;
    wait_pods_injected(
        &later_tss,
        "later",
        "later: injection not enabled",
        |s, r, m| s == "False" && r == "InjectionNotEnabled" && m.ends_with(": before-label"),
    )
    .await
    .with_context(|| operator.tail())?;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(
            "later",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"sidetrace.dev/inject": "enabled"}}})),
        )
        .await?;
    wait_pods_injected(
        &later_tss,
        "later",
        "later: the early pod is named for a restart",
        |s, r, m| {
            s == "False"
                && r == "PodsNotInjected"
                && m.contains("restart them: before-label (created before injection was enabled")
        },
    )
    .await
    .with_context(|| operator.tail())?;
    let later = later_tss.get("later").await?;
    ensure!(
        later.status.as_ref().map(|s| s.uninjected_pods.clone())
            == Some(vec!["before-label".to_owned()]),
        "uninjectedPods: {:?}",
        later.status
    );
    for (api, name) in [(&tss, "skips"), (&psa_tss, "psa-x"), (&later_tss, "later")] {
        api.delete(name, &DeleteParams::default()).await?;
    }
    Ok(())
}

/// Whether the TLS server at `addr` presents a certificate for its address that `bundle_pem`
/// verifies.
async fn verified_by(addr: SocketAddr, bundle_pem: &str) -> bool {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()).flatten() {
        let _ = roots.add(cert);
    }
    let Ok(builder) = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions() else {
        return false;
    };
    let config = builder.with_root_certificates(roots).with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let name = ServerName::IpAddress(addr.ip().into());
    tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// A TCP forwarder to the apiserver that a test can pause: while paused, what a client sends
/// stays unanswered, as on a network that silently drops traffic (no reset, no error).
struct PausableProxy {
    addr: SocketAddr,
    paused: tokio::sync::watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl PausableProxy {
    async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind((IpAddr::from([127, 0, 0, 1]), 0)).await?;
        let addr = listener.local_addr()?;
        let (paused, watch) = tokio::sync::watch::channel(false);
        let accept = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let watch = watch.clone();
                tokio::spawn(async move {
                    let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (down_read, down_write) = down.into_split();
                    let (up_read, up_write) = up.into_split();
                    tokio::join!(
                        forward(down_read, up_write, watch.clone()),
                        forward(up_read, down_write, watch)
                    );
                });
            }
        });
        Ok(Self {
            addr,
            paused,
            accept,
        })
    }

    fn pause(&self) {
        let _ = self.paused.send(true);
    }
}

impl Drop for PausableProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `from` to `to`, holding each chunk while the proxy is paused.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let resumed = paused.wait_for(|p| !*p).await.is_ok();
        if !resumed || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

async fn metrics_leader(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    use std::io::{Read, Write};
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find(|l| l.starts_with("sidetrace_operator_leader "))
        .map(|l| {
            l.trim_start_matches("sidetrace_operator_leader ")
                .to_owned()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_injector_and_chart_against_a_real_apiserver() -> Result<()> {
    let Some(cp) = ControlPlane::start_or_skip("system").await else {
        return Ok(());
    };
    let result = scenario(&cp).await;
    if result.is_err() {
        cp.keep_logs();
        eprintln!("logs kept in {}", cp.dir().display());
        eprintln!("{}", cp.log_tail("kube-apiserver", 15));
    }
    result
}

async fn scenario(cp: &ControlPlane) -> Result<()> {
    let client = cp.client();
    let host = cp.host_address();
    let webhook_port = free_port(host)?;
    let webhook_url = format!("https://{host}:{webhook_port}");
    let operator_exe = binary("sidetrace-operator")?;
    let injector_exe = binary("sidetrace-injector")?;

    // 1. The chart installs into the real apiserver (no --wait: there is no kubelet).
    let chart = root().join("helm/sidetrace");
    helm(
        cp,
        &[
            "install",
            "sidetrace",
            chart.to_str().unwrap_or_default(),
            "--namespace",
            NS,
            "--create-namespace",
            "--set",
            &format!("webhook.url={webhook_url}"),
            "--set",
            &format!("webhook.extraSANs={{{host}}}"),
            "--set",
            "webhook.failurePolicy=Fail",
            "--set",
            "webhook.timeoutSeconds=10",
        ],
    )?;
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    ensure!(
        mwcs.get_opt("sidetrace-injector").await?.is_some(),
        "webhook configuration installed"
    );

    // 2. The operator, with its chart ServiceAccount's token, creates the webhook's TLS.
    let op_kubeconfig = cp
        .service_account_kubeconfig(NS, "sidetrace-operator")
        .await?;
    // A replica `op-<x>` logs to operator-<x>.log and serves /metrics on its own loopback port.
    let spawn_operator = |identity: &str, kubeconfig: &Path| -> Result<(Proc, SocketAddr)> {
        let loopback = IpAddr::from([127, 0, 0, 1]);
        let metrics = SocketAddr::new(loopback, free_port(loopback)?);
        let args = vec![
            format!("--namespace={NS}"),
            format!("--metrics-addr={metrics}"),
            format!("--webhook-extra-san={host}"),
            format!("--identity={identity}"),
            "--lease-duration=6s".into(),
            "--cert-check-interval=1s".into(),
            "--cert-overlap=3s".into(),
            "--check-collector-dns=false".into(),
            "--log-level=info,kube=warn".into(),
        ];
        let name = format!("operator-{}", identity.trim_start_matches("op-"));
        let proc = Proc::spawn(
            cp.dir(),
            &name,
            &operator_exe,
            &args,
            &[("KUBECONFIG", kubeconfig)],
        )?;
        Ok((proc, metrics))
    };
    let (mut op_a, _) = spawn_operator("op-a", &op_kubeconfig)?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let tls_ready = poll(WAIT, "webhook Secret and caBundle", || async {
        let Some(s) = secrets.get_opt("sidetrace-injector-tls").await? else {
            return Ok(false);
        };
        let bundle = secret_text(&s, "ca.crt");
        let mwc = mwcs.get("sidetrace-injector").await?;
        Ok(!bundle.is_empty()
            && mwc.webhooks.unwrap_or_default().iter().all(|w| {
                w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice())
                    == Some(bundle.as_bytes())
            }))
    })
    .await;
    tls_ready.with_context(|| op_a.tail())?;

    // 3. The injector serves with that certificate (synced to files like a Secret mount).
    let cert = cp.dir().join("webhook-tls.crt");
    let key = cp.dir().join("webhook-tls.key");
    let sync = tokio::spawn(sync_cert_files(secrets.clone(), cert.clone(), key.clone()));
    poll(WAIT, "certificate files", || async {
        Ok(cert.exists() && key.exists())
    })
    .await?;
    let inj_kubeconfig = cp
        .service_account_kubeconfig(NS, "sidetrace-injector")
        .await?;
    let injector_args = vec![
        format!("--listen={host}:{webhook_port}"),
        format!("--tls-cert={}", cert.display()),
        format!("--tls-key={}", key.display()),
        format!("--control-plane-namespace={NS}"),
        "--collector=http://10.250.1.9:9411/api/v2/spans".into(),
        "--tls-reload-interval-ms=500".into(),
    ];
    let mut injector = Proc::spawn(
        cp.dir(),
        "injector",
        &injector_exe,
        &injector_args,
        &[("KUBECONFIG", &inj_kubeconfig)],
    )?;
    let listen = SocketAddr::new(host, webhook_port);
    poll(WAIT, "injector listening", || async {
        Ok(TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok())
    })
    .await
    .with_context(|| injector.tail())?;

    // 4. A TracedService renders to a ConfigMap and reports Ready.
    cp.create_namespace("shop", &[("sidetrace.dev/inject", "enabled")])
        .await?;
    let tss: Api<TracedService> = Api::namespaced(client.clone(), "shop");
    let example = std::fs::read_to_string(root().join("crds/examples/demo-service1.yaml"))?;
    let mut ts: TracedService = serde_yaml::from_str(&example)?;
    ts.metadata.namespace = Some("shop".into());
    tss.create(&PostParams::default(), &ts).await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "shop");
    poll(WAIT, "ConfigMap sidetrace-service1", || async {
        Ok(cms.get_opt("sidetrace-service1").await?.is_some_and(|cm| {
            cm.data
                .unwrap_or_default()
                .get("proxy.yaml")
                .is_some_and(|y| y.contains("checkStock"))
        }))
    })
    .await
    .with_context(|| op_a.tail())?;
    poll(WAIT, "TracedService Ready", || async {
        ts_status_matches(&tss, "service1", |t| {
            ready(t) == Some(("True".into(), "ConfigRendered".into()))
                && t.status.as_ref().and_then(|s| s.observed_generation) == t.metadata.generation
        })
        .await
    })
    .await
    .with_context(|| op_a.tail())?;
    // The injector's TracedService cache has the object once a dry-run pod it selects is
    // admitted with its config mounted.
    let shop_pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    poll(
        WAIT,
        "the injector's cache has TracedService service1",
        || async {
            Ok(
                dry_run(&shop_pods, &pod("cache-probe", &[("app", "service1")]))
                    .await
                    .is_some_and(|p| mounts_config(&p, "sidetrace-service1")),
            )
        },
    )
    .await
    .with_context(|| injector.tail())?;

    // 5. Pods: a Deployment in the labelled namespace is injected with the config mounted.
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "service1"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "service1"}},
            "template": {
                "metadata": {"labels": {"app": "service1"}},
                "spec": {"containers": [{"name": "app", "image": "demo:1", "ports": [{"containerPort": 8080}]}]},
            },
        },
    }))?;
    Api::<Deployment>::namespaced(client.clone(), "shop")
        .create(&PostParams::default(), &deploy)
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    poll(WAIT, "Deployment pod stored", || async {
        Ok(!pods
            .list(&ListParams::default().labels("app=service1"))
            .await?
            .items
            .is_empty())
    })
    .await
    .with_context(|| injector.tail())?;
    let stored = pods
        .list(&ListParams::default().labels("app=service1"))
        .await?
        .items;
    let p = &stored[0];
    ensure!(
        is_injected(p),
        "Deployment pod not injected: {:?}\n{}",
        container_names(p),
        injector.tail()
    );
    ensure!(
        mounts_config(p, "sidetrace-service1"),
        "TracedService config not mounted\n{}",
        injector.tail()
    );

    // Opted-out pod, unlabelled namespace, kube-system: no injection.
    let out = create_pod(
        &client,
        "shop",
        pod(
            "opted-out",
            &[("app", "service1"), ("sidetrace.dev/inject", "false")],
        ),
    )
    .await?;
    ensure!(!is_injected(&out), "opted-out pod was injected");
    cp.create_namespace("plain", &[]).await?;
    let plain = create_pod(&client, "plain", pod("plain", &[("app", "x")])).await?;
    ensure!(
        !is_injected(&plain),
        "pod in an unlabelled namespace was injected"
    );
    let opted_in = create_pod(
        &client,
        "plain",
        pod(
            "opted-in",
            &[("app", "x"), ("sidetrace.dev/inject", "true")],
        ),
    )
    .await?;
    ensure!(
        is_injected(&opted_in),
        "pod labelled inject=true in an unlabelled namespace was not injected"
    );
    let sys = create_pod(
        &client,
        "kube-system",
        pod("system", &[("sidetrace.dev/inject", "true")]),
    )
    .await?;
    ensure!(!is_injected(&sys), "kube-system pod was injected");

    // 5a. `sidetrace check` against this apiserver: the control plane as it sees it (the CRD,
    // the Lease, the caBundle against the Secret's certificate for the URL's address, the
    // webhook answering a dry-run pod), a namespace that is not labelled, then a pod created
    // before it was. (The chart's Deployments have no kubelet here: their lines fail, truly.)
    cp.create_namespace("late", &[]).await?;
    create_pod(&client, "late", pod("early", &[("app", "early")])).await?;
    let (code, out) = sidetrace_e2e::cli::run(cp.kubeconfig(), &["check", "-n", "late"])?;
    for line in [
        "✓ CRD tracedservices.sidetrace.dev is installed and serves v1alpha1",
        "✓ operator leader elected: op-a",
        &format!(
            "✓ webhook caBundle matches the serving certificate in secret \
             {NS}/sidetrace-injector-tls ({host})"
        ),
        "✓ webhook is reachable: a dry-run pod in shop was injected",
        "✗ namespace is not labelled sidetrace.dev/inject=enabled",
        "fix: kubectl label namespace late sidetrace.dev/inject=enabled",
    ] {
        ensure!(
            code == 1 && out.contains(line),
            "no {line:?} in (exit {code}):\n{out}"
        );
    }
    Api::<Namespace>::all(client.clone())
        .patch(
            "late",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"sidetrace.dev/inject": "enabled"}}})),
        )
        .await?;
    let (code, out) = sidetrace_e2e::cli::run(cp.kubeconfig(), &["check", "-n", "late"])?;
    for line in [
        "✓ namespace is labelled sidetrace.dev/inject=enabled",
        "✗ 1 pod(s) should carry the sidecar and do not:",
        "pod early: created before injection was enabled, or while the webhook was unreachable",
        "fix: restart them: kubectl -n late delete pod early",
    ] {
        ensure!(
            code == 1 && out.contains(line),
            "no {line:?} in (exit {code}):\n{out}"
        );
    }

    // Pod Security: a namespace enforcing baseline would refuse the injected pod (the init
    // container runs as root with NET_ADMIN and NET_RAW), so the webhook leaves the pod alone
    // and it is admitted. Dry runs until the injector's namespace cache has the new labels
    // (before that it trusts the webhook configuration's selectors and injects).
    cp.create_namespace(
        "psa",
        &[
            ("sidetrace.dev/inject", "enabled"),
            ("pod-security.kubernetes.io/enforce", "baseline"),
        ],
    )
    .await?;
    let psa_pods = Api::<Pod>::namespaced(client.clone(), "psa");
    poll(
        WAIT,
        "a pod in a baseline namespace is admitted uninjected",
        || async {
            Ok(dry_run(&psa_pods, &pod("psa-probe", &[("app", "x")]))
                .await
                .is_some_and(|p| !is_injected(&p)))
        },
    )
    .await
    .with_context(|| injector.tail())?;
    let psa = create_pod(&client, "psa", pod("psa", &[("app", "x")])).await?;
    ensure!(
        !is_injected(&psa),
        "pod in a namespace enforcing Pod Security baseline was injected"
    );

    // 5b. Every skip reason, end to end: the webhook records why it left a pod alone, and a
    // TracedService selecting such pods reports them from that record with the one rule the
    // webhook applied: left alone as asked (no failure), blocked by Pod Security, injection not
    // enabled, or missing the sidecar with the reason (the only ones to restart).
    every_skip_reason_is_recorded_and_reported(cp, &client, &injector, &op_a).await?;

    // The status counts the selected pods: 1 injected, 1 opted out.
    poll(WAIT, "status counts pods", || async {
        ts_status_matches(&tss, "service1", |t| {
            t.status
                .as_ref()
                .is_some_and(|s| s.selected_pods == 2 && s.injected_pods == 1)
        })
        .await
    })
    .await
    .with_context(|| op_a.tail())?;
    // A pod relabelled out of the selector leaves the count at once (not at the 5-minute
    // resync): the opted-out pod moves to another app.
    pods.patch(
        "opted-out",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "elsewhere"}}})),
    )
    .await?;
    poll(WAIT, "status drops the relabelled pod", || async {
        ts_status_matches(&tss, "service1", |t| {
            t.status
                .as_ref()
                .is_some_and(|s| s.selected_pods == 1 && s.injected_pods == 1)
        })
        .await
    })
    .await
    .with_context(|| op_a.tail())?;

    // 6. An update re-renders and advances observedGeneration.
    tss.patch(
        "service1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"sampling": {"rate": 0.25}}})),
    )
    .await?;
    poll(WAIT, "ConfigMap re-rendered", || async {
        Ok(cms
            .get("sidetrace-service1")
            .await?
            .data
            .unwrap_or_default()
            .get("proxy.yaml")
            .is_some_and(|y| y.contains("samplingRate: 0.25")))
    })
    .await?;
    poll(WAIT, "observedGeneration 2", || async {
        ts_status_matches(&tss, "service1", |t| {
            t.status.as_ref().and_then(|s| s.observed_generation) == Some(2)
        })
        .await
    })
    .await?;

    // An invalid spec is rejected by the CRD schema.
    let bad: TracedService =
        serde_yaml::from_str(&example.replace("name: service1\n", "name: bad\n"))?;
    let mut bad_json = serde_json::to_value(&bad)?;
    bad_json["spec"]["sampling"] = json!({"rate": 2});
    bad_json["metadata"]["namespace"] = json!("shop");
    let err = tss
        .create(&PostParams::default(), &serde_json::from_value(bad_json)?)
        .await
        .err()
        .ok_or_else(|| anyhow!("a sampling rate of 2 was accepted"))?;
    ensure!(
        err.to_string().contains("spec.sampling.rate"),
        "unexpected rejection: {err}"
    );

    // 7. Leader election: a second replica waits, and takes over when the leader dies.
    let (mut op_b, metrics_b) = spawn_operator("op-b", &op_kubeconfig)?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let holder = |l: Lease| l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
    let renewed = |l: &Lease| l.spec.as_ref().and_then(|s| s.renew_time.clone());
    poll(WAIT, "op-b reports follower", || async {
        Ok(metrics_leader(metrics_b).await.as_deref() == Some("0"))
    })
    .await
    .with_context(|| op_b.tail())?;
    // op-b is up and contending: op-a still leads when it next renews the Lease.
    let seen = renewed(&leases.get("sidetrace-operator").await?);
    poll(WAIT, "op-a renews the lease while op-b runs", || async {
        let l = leases.get("sidetrace-operator").await?;
        Ok(renewed(&l) != seen && holder(l) == "op-a")
    })
    .await
    .with_context(|| op_b.tail())?;
    ensure!(
        holder(leases.get("sidetrace-operator").await?) == "op-a",
        "op-a should lead"
    );
    ensure!(
        metrics_leader(metrics_b).await.as_deref() == Some("0"),
        "op-b should follow"
    );
    op_a.stop();
    poll(WAIT, "op-b takes the lease", || async {
        Ok(holder(leases.get("sidetrace-operator").await?) == "op-b")
    })
    .await
    .with_context(|| op_b.tail())?;

    // 8. Certificate rotation with failurePolicy Fail: pods keep being admitted throughout.
    let before = secrets.get("sidetrace-injector-tls").await?;
    let old_ca = secret_text(&before, "ca-current.crt");
    let old_cert = secret_text(&before, "tls.crt");
    let soon = k8s_openapi::jiff::Timestamp::now().to_string();
    secrets
        .patch(
            "sidetrace-injector-tls",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"sidetrace.dev/ca-not-after": soon}}}),
            ),
        )
        .await?;
    let mut admitted = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let name = format!("rotation-{admitted}");
        let p = create_pod(&client, "shop", pod(&name, &[("app", "rotation")]))
            .await
            .with_context(|| {
                format!(
                    "admission failed during rotation\n{}\n{}",
                    injector.tail(),
                    op_b.tail()
                )
            })?;
        ensure!(is_injected(&p), "{name} not injected during rotation");
        admitted += 1;
        let s = secrets.get("sidetrace-injector-tls").await?;
        let bundle = secret_text(&s, "ca.crt");
        let done = secret_text(&s, "ca-current.crt") != old_ca
            && secret_text(&s, "tls.crt") != old_cert
            && !bundle.contains(old_ca.trim());
        if done {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "rotation did not complete; last bundle has {} certificates\n{}",
                bundle.matches("BEGIN CERT").count(),
                op_b.tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // One more admission with the final certificate and bundle, once the injector serves a
    // certificate the final bundle (the new CA only) verifies.
    let final_bundle = secret_text(&secrets.get("sidetrace-injector-tls").await?, "ca.crt");
    poll(
        WAIT,
        "the injector serves the rotated certificate",
        || async { Ok(verified_by(SocketAddr::new(host, webhook_port), &final_bundle).await) },
    )
    .await
    .with_context(|| injector.tail())?;
    let p = create_pod(
        &client,
        "shop",
        pod("after-rotation", &[("app", "rotation")]),
    )
    .await?;
    ensure!(is_injected(&p), "not injected after rotation");
    eprintln!("rotation completed with {admitted} admissions, none failed");

    // 8b. A pod injected before any TracedService selected it mounts no config; the
    // TracedService that selects it later says so, and names it for a restart.
    let early = create_pod(&client, "shop", pod("early", &[("app", "late")])).await?;
    ensure!(is_injected(&early), "early pod not injected");
    let mut late = ts.clone();
    late.metadata = kube::api::ObjectMeta {
        name: Some("late".into()),
        namespace: Some("shop".into()),
        ..Default::default()
    };
    late.spec.selector = serde_json::from_value(json!({"matchLabels": {"app": "late"}}))?;
    tss.create(&PostParams::default(), &late).await?;
    poll(
        WAIT,
        "the late TracedService names the pod to restart",
        || async {
            ts_status_matches(&tss, "late", |t| {
                t.status.as_ref().is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.type_ == "PodsInjected"
                            && c.status == "False"
                            && c.reason == "PodsNeedRestart"
                            && c.message.contains("early")
                    })
                })
            })
            .await
        },
    )
    .await?;
    tss.delete("late", &DeleteParams::default()).await?;

    // 9. Deleting the TracedService garbage-collects its ConfigMap (real controller-manager).
    tss.delete("service1", &DeleteParams::default()).await?;
    poll(WAIT, "ConfigMap garbage-collected", || async {
        Ok(cms.get_opt("sidetrace-service1").await?.is_none())
    })
    .await?;

    // 10. Webhook gone, failurePolicy Ignore: pods are still created (untraced).
    helm(
        cp,
        &[
            "upgrade",
            "sidetrace",
            chart.to_str().unwrap_or_default(),
            "--namespace",
            NS,
            "--reuse-values",
            "--set",
            "webhook.failurePolicy=Ignore",
        ],
    )?;
    // helm upgrade must not wipe the caBundle the operator wrote.
    let mwc = mwcs.get("sidetrace-injector").await?;
    ensure!(
        mwc.webhooks.unwrap_or_default().iter().all(|w| w
            .client_config
            .ca_bundle
            .as_ref()
            .is_some_and(|b| !b.0.is_empty())),
        "helm upgrade removed the caBundle"
    );
    injector.stop();
    let p = create_pod(&client, "shop", pod("webhook-down", &[("app", "x")])).await?;
    ensure!(!is_injected(&p), "injected with the webhook down?");
    let (code, out) = sidetrace_e2e::cli::run(cp.kubeconfig(), &["check", "-n", "shop"])?;
    ensure!(
        code == 1
            && out.contains(
                "✗ webhook is not reachable: a dry-run pod in shop was admitted without it"
            ),
        "sidetrace check with the webhook down (exit {code}):\n{out}"
    );

    // 10b. A leader whose renewals hang stops leading before another replica could take the
    // Lease: op-c reaches the apiserver through a proxy that stops forwarding, as a network
    // that silently drops traffic does.
    let upstream: SocketAddr = cp
        .url()
        .trim_start_matches("https://")
        .parse()
        .context("apiserver address")?;
    let proxy = PausableProxy::start(upstream).await?;
    let proxied_kubeconfig = cp.dir().join("operator-c.kubeconfig");
    std::fs::write(
        &proxied_kubeconfig,
        std::fs::read_to_string(&op_kubeconfig)?
            .replace(cp.url(), &format!("https://{}", proxy.addr)),
    )?;
    let (mut op_c, metrics_c) = spawn_operator("op-c", &proxied_kubeconfig)?;
    poll(WAIT, "op-c reports follower", || async {
        Ok(metrics_leader(metrics_c).await.as_deref() == Some("0"))
    })
    .await
    .with_context(|| op_c.tail())?;
    op_b.stop();
    poll(WAIT, "op-c takes the lease", || async {
        Ok(holder(leases.get("sidetrace-operator").await?) == "op-c"
            && metrics_leader(metrics_c).await.as_deref() == Some("1"))
    })
    .await
    .with_context(|| op_c.tail())?;
    proxy.pause();
    let paused_at = tokio::time::Instant::now();
    // The last renewal that got through was sent before the pause; another replica may take
    // the Lease a lease duration (6 s) after it saw that renewal, so op-c must be gone by then.
    let exited = loop {
        if let Some(status) = op_c.child.try_wait()? {
            break status;
        }
        ensure!(
            paused_at.elapsed() < Duration::from_secs(6),
            "op-c still runs {:?} after its renewals started hanging\n{}",
            paused_at.elapsed(),
            op_c.tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ensure!(
        exited.code() == Some(1),
        "op-c exited with {exited}, not 1 (leadership lost)\n{}",
        op_c.tail()
    );
    ensure!(
        std::fs::read_to_string(cp.dir().join("operator-c.log"))?.contains("not renewed within"),
        "op-c exited for another reason\n{}",
        op_c.tail()
    );
    eprintln!(
        "op-c stopped {:?} after its renewals started hanging",
        paused_at.elapsed()
    );
    drop(proxy);

    // 11. helm uninstall removes what it installed (the CRD stays, as Helm keeps crds/).
    sync.abort();
    helm(cp, &["uninstall", "sidetrace", "--namespace", NS])?;
    poll(WAIT, "webhook configuration removed", || async {
        Ok(mwcs.get_opt("sidetrace-injector").await?.is_none())
    })
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    ensure!(
        deployments
            .list(&ListParams::default())
            .await?
            .items
            .is_empty(),
        "deployments left after uninstall"
    );
    ensure!(
        secrets.get_opt("sidetrace-injector-tls").await?.is_none(),
        "webhook Secret left after uninstall"
    );
    // The leader Lease is owned by that Secret, so the garbage collector removes it too.
    poll(WAIT, "leader Lease garbage-collected", || async {
        Ok(leases.get_opt("sidetrace-operator").await?.is_none())
    })
    .await?;
    Ok(())
}

//! `sidetrace-bench-operator`: time and memory of the real `sidetrace-operator` (release
//! build) reconciling 1,000 TracedServices against a real kube-apiserver.
//!
//! Needs root and the cached control-plane peers (`e2e/peers.sh all`): it boots etcd,
//! kube-apiserver and kube-controller-manager with the e2e harness, `helm install`s the chart,
//! runs the operator with its chart ServiceAccount's token, creates N TracedServices in one
//! namespace (16 creates in flight) and polls until every one reports `Ready=True` for its
//! current generation. Writes a Markdown section (default bench/RESULTS-operator.md) that
//! `sidetrace-bench all` embeds in RESULTS.md. Figures only; nothing here passes or fails.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use futures::StreamExt as _;
use kube::api::{Api, ListParams, PostParams};
use sidetrace_crds::TracedService;
use sidetrace_e2e::controlplane::ControlPlane;

const NS: &str = "sidetrace-system";

/// Reconcile-time benchmark of the operator against a real apiserver.
#[derive(Debug, Parser)]
struct Cli {
    /// TracedServices to create.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Output Markdown file.
    #[arg(long, default_value_os_t = root().join("bench/RESULTS-operator.md"))]
    out: PathBuf,
    /// Operator binary (default target/release/sidetrace-operator).
    #[arg(long)]
    operator_bin: Option<PathBuf>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn rss_anon(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let kb: u64 = l
                    .strip_prefix("RssAnon:")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()?;
                Some(kb * 1024)
            })
        })
        .unwrap_or(0)
}

fn cpu_ns(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn ready_now(t: &TracedService) -> bool {
    let Some(status) = &t.status else {
        return false;
    };
    status.observed_generation == t.metadata.generation
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let operator = cli
        .operator_bin
        .clone()
        .unwrap_or_else(|| root().join("target/release/sidetrace-operator"));
    if !operator.exists() {
        bail!(
            "{} is not built (cargo build --release -p sidetrace-operator)",
            operator.display()
        );
    }
    if let Err(reason) = ControlPlane::prerequisites() {
        let text = format!("Not measured: {reason}.\n");
        std::fs::write(&cli.out, &text)?;
        eprintln!("operator bench: {text}");
        return Ok(());
    }
    let result = match ControlPlane::start().await {
        Ok(cp) => {
            let r = run(&cp, &cli, &operator).await;
            if r.is_err() {
                cp.keep_logs();
                eprintln!("logs kept in {}", cp.dir().display());
            }
            r
        }
        Err(e) => Err(e),
    };
    // Never leave a stale section behind: a failed run says so in the file too.
    let text = match &result {
        Ok(t) => t.clone(),
        Err(e) => format!("Not measured: {e:#}\n"),
    };
    std::fs::write(&cli.out, &text)?;
    result?;
    eprintln!("wrote {}", cli.out.display());
    Ok(())
}

async fn run(cp: &ControlPlane, cli: &Cli, operator: &Path) -> Result<String> {
    let host = cp.host_address();
    let chart = root().join("helm/sidetrace");
    let out = Command::new(&cp.bins().helm)
        .args(["install", "sidetrace"])
        .arg(&chart)
        .args(["--namespace", NS, "--create-namespace", "--set"])
        .arg(format!("webhook.url=https://{host}:1"))
        .args(["--set", "webhook.failurePolicy=Ignore"])
        .env("KUBECONFIG", cp.kubeconfig())
        .output()?;
    if !out.status.success() {
        bail!("helm install: {}", String::from_utf8_lossy(&out.stderr));
    }
    let kubeconfig = cp
        .service_account_kubeconfig(NS, "sidetrace-operator")
        .await?;
    let metrics = {
        let l = TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let log = cp.dir().join("operator-bench.log");
    let args = [
        format!("--namespace={NS}"),
        format!("--metrics-addr={metrics}"),
        format!("--webhook-extra-san={host}"),
        "--identity=bench".to_owned(),
        "--check-collector-dns=false".to_owned(),
        "--log-level=warn".to_owned(),
    ];
    let mut child = Command::new("taskset")
        .arg("-c")
        .arg("1")
        .arg(operator)
        .args(&args)
        .env("KUBECONFIG", &kubeconfig)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(cp.dir().join("operator-bench.err"))?)
        .spawn()?;
    let pid = child.id();
    let result = measure(cp, cli, pid).await;
    let _ = child.kill();
    let _ = child.wait();
    let mut text = result?;
    let _ = writeln!(
        text,
        "\nOperator command: `KUBECONFIG=<chart ServiceAccount token> taskset -c 1 {} {}`; \
         the control plane (etcd, kube-apiserver, kube-controller-manager from `e2e/peers.sh`) \
         runs unpinned on the same 2-vCPU machine.\n",
        operator.display(),
        args.join(" ")
    );
    Ok(text)
}

async fn measure(cp: &ControlPlane, cli: &Cli, pid: u32) -> Result<String> {
    cp.create_namespace("bench", &[]).await?;
    // Let the operator start, win its lease and settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = rss_anon(pid);
    let cpu0 = cpu_ns(pid);
    let example = std::fs::read_to_string(root().join("crds/examples/demo-service1.yaml"))?;
    let template: serde_json::Value = serde_yaml::from_str(&example)?;
    let api: Api<TracedService> = Api::namespaced(cp.client(), "bench");
    let start = Instant::now();
    let creates = futures::stream::iter(0..cli.count)
        .map(|i| {
            // Distinct names, service names and selectors: overlapping selectors would be a
            // conflict the operator reports instead of rendering.
            let name = format!("svc-{i:04}");
            let mut v = template.clone();
            v["metadata"]["name"] = name.clone().into();
            v["metadata"]["namespace"] = "bench".into();
            v["spec"]["serviceName"] = name.clone().into();
            v["spec"]["selector"] = serde_json::json!({"matchLabels": {"app": name}});
            let api = api.clone();
            async move {
                let ts: TracedService = serde_json::from_value(v)?;
                api.create(&PostParams::default(), &ts)
                    .await
                    .map_err(anyhow::Error::from)
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let created_in = start.elapsed();
    let failed = creates.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        bail!(
            "{failed} creates failed: {:?}",
            creates.iter().find(|r| r.is_err())
        );
    }
    let mut peak = rss_anon(pid);
    let mut ready = 0;
    let limit = Duration::from_secs(600);
    while start.elapsed() < limit {
        let list = api
            .list(&ListParams::default())
            .await
            .context("listing TracedServices")?;
        ready = list.items.iter().filter(|t| ready_now(t)).count();
        peak = peak.max(rss_anon(pid));
        if ready >= cli.count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_ready = start.elapsed();
    let cpu = cpu_ns(pid).saturating_sub(cpu0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_anon(pid);
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(cp.client(), "bench");
    // kube-root-ca.crt is the controller-manager's, not the operator's.
    let cm_count = cms
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|c| c.metadata.name.as_deref() != Some("kube-root-ca.crt"))
        .count();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{} TracedServices (crds/examples/demo-service1.yaml, renamed) created in one namespace, \
         16 creates in flight, against a real kube-apiserver; the operator reconciles each into a \
         ConfigMap and sets `Ready=True`. Readiness is polled \
         with a LIST every ~200 ms (part of the apiserver's load).\n\n\
         | figure | value |\n|---|---|\n\
         | creates done | {:.2} s |\n\
         | all {} Ready (from the first create) | {} |\n\
         | last Ready after the last create | {:.2} s |\n\
         | ConfigMaps rendered | {cm_count} |\n\
         | operator CPU time over the run | {:.2} s |\n\
         | operator RssAnon idle | {:.2} MiB |\n\
         | operator RssAnon peak (sampled every ~200 ms) | {:.2} MiB |\n\
         | operator RssAnon 3 s after | {:.2} MiB |",
        cli.count,
        created_in.as_secs_f64(),
        cli.count,
        if ready >= cli.count {
            format!("{:.2} s", all_ready.as_secs_f64())
        } else {
            format!("not reached: {ready} Ready after {limit:?}")
        },
        all_ready.saturating_sub(created_in).as_secs_f64(),
        cpu as f64 / 1e9,
        mib(idle),
        mib(peak),
        mib(after),
    );
    Ok(text)
}

//! The cluster suite's harness, for the two clusters it runs on: the one-node cluster (a real
//! kubelet, containerd, CNI and kube-proxy next to the control plane, all inside one network
//! namespace with no default route) and a kind cluster (its node a Docker container).
//!
//! `e2e/cluster/cluster-up.sh` (`make cluster-up`) and `e2e/kind/kind-up.sh` (`make e2e-kind`)
//! write the same env file (`<dir>/env`: `KUBECONFIG=`, `NODE_NAME=`, and how to enter the node:
//! `NETNS=` or `NODE_CONTAINER=`; `DNS=coredns` where the cluster runs CoreDNS). This module reads
//! it from `SIDETRACE_CLUSTER_DIR` (default: the one-node cluster's directory) and gives the
//! tests `kubectl`/`helm` commands bound to that kubeconfig and a way to run a program inside
//! the node's network, the only place from which pod IPs and Service ClusterIPs are reachable.
//!
//! `make test` brings the cluster up (and down again) around the test run; without a running
//! cluster, or without root, [`Cluster::connect_or_skip`] follows the one skip policy
//! (sidetrace-testkit): a SKIP line outside CI, a failure under `CI=true`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::controlplane::peers::{bin, is_root, skip_or_fail};

/// Where cluster-up.sh keeps its state unless `SIDETRACE_CLUSTER_DIR` says otherwise.
pub const DEFAULT_CLUSTER_DIR: &str = "/var/lib/sidetrace-cluster";

/// The cluster's directory (state, logs, kubeconfig, env file).
pub fn cluster_dir() -> PathBuf {
    std::env::var_os("SIDETRACE_CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CLUSTER_DIR))
}

/// How the tests get into the node's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAccess {
    /// The one-node cluster: its network namespace (`st-<pid>-node`).
    Netns(String),
    /// kind: the node's Docker container.
    Container(String),
}

/// What the cluster's up script wrote to its env file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterEnv {
    /// Where programs run to reach pod IPs and ClusterIPs.
    pub node: NodeAccess,
    /// Admin kubeconfig (its server reachable from the host).
    pub kubeconfig: PathBuf,
    /// The node's name.
    pub node_name: String,
    /// The cluster runs a DNS add-on: pods find Services by name (`service2.<ns>.svc`).
    pub dns: bool,
}

/// Parse the env file (`KEY=VALUE` lines); `None` names the first missing key.
pub fn parse_env(text: &str) -> std::result::Result<ClusterEnv, String> {
    let map: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .collect();
    let get = |k: &str| {
        map.get(k)
            .filter(|v| !v.is_empty())
            .map(|v| (*v).to_owned())
            .ok_or_else(|| format!("env file lacks {k}"))
    };
    let node = match (get("NETNS"), get("NODE_CONTAINER")) {
        (Ok(netns), Err(_)) => NodeAccess::Netns(netns),
        (Err(_), Ok(container)) => NodeAccess::Container(container),
        (Ok(_), Ok(_)) => return Err("env file has both NETNS and NODE_CONTAINER".into()),
        (Err(_), Err(_)) => return Err("env file lacks NETNS or NODE_CONTAINER".into()),
    };
    Ok(ClusterEnv {
        kubeconfig: PathBuf::from(get("KUBECONFIG")?),
        node_name: get("NODE_NAME")?,
        dns: map.get("DNS").is_some_and(|d| *d != "none"),
        node,
    })
}

/// A running one-node cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    env: ClusterEnv,
    dir: PathBuf,
}

impl Cluster {
    /// The cluster, or `None` after printing why the test is skipped (see the module docs).
    pub fn connect_or_skip(test: &str) -> Option<Self> {
        match Self::connect() {
            Ok(c) => Some(c),
            Err(reason) => {
                skip_or_fail(test, &reason);
                None
            }
        }
    }

    /// The cluster described by the env file, if it is up.
    pub fn connect() -> std::result::Result<Self, String> {
        if !is_root() {
            return Err("needs root (the cluster's namespace, kubelet, containerd)".into());
        }
        let dir = cluster_dir();
        let path = dir.join("env");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "no cluster: {} unreadable ({e}); run `make cluster-up` (or `make test`, which starts it)",
                path.display()
            )
        })?;
        let env = parse_env(&text)?;
        let c = Self { env, dir };
        let out = c
            .kubectl()
            .args(["get", "--raw", "/readyz"])
            .output()
            .map_err(|e| format!("running kubectl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cluster in {} is not answering (make cluster-down && make cluster-up): {}",
                c.dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(c)
    }

    /// The env file's contents.
    pub fn env(&self) -> &ClusterEnv {
        &self.env
    }

    /// `kubectl` bound to the cluster's admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(bin("kubectl"));
        c.arg("--kubeconfig").arg(&self.env.kubeconfig);
        c
    }

    /// `helm` bound to the cluster's admin kubeconfig.
    pub fn helm(&self) -> Command {
        let mut c = Command::new(bin("helm"));
        c.arg("--kubeconfig").arg(&self.env.kubeconfig);
        c
    }

    /// `program` run inside the node's network (reaches pod IPs and ClusterIPs).
    pub fn in_node(&self, program: &str) -> Command {
        match &self.env.node {
            NodeAccess::Netns(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns, program]);
                c
            }
            NodeAccess::Container(container) => {
                let mut c = Command::new("docker");
                c.args(["exec", container, program]);
                c
            }
        }
    }

    /// How a pod of `namespace` names `service` in a URL: its DNS name where the cluster runs
    /// CoreDNS (as real apps do), else the `$(NAME_SERVICE_HOST)` environment variable that
    /// the kubelet expands in container args.
    pub fn service_host(&self, namespace: &str, service: &str) -> String {
        if self.env.dns {
            format!("{service}.{namespace}.svc")
        } else {
            format!(
                "$({}_SERVICE_HOST)",
                service.to_ascii_uppercase().replace('-', "_")
            )
        }
    }

    /// Run kubectl with `args`; its stdout, or an error with its stderr.
    pub fn kc(&self, args: &[&str]) -> Result<String> {
        run(self.kubectl().args(args))
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) -> Result<()> {
        let mut child = self
            .kubectl()
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("kubectl apply")?;
        child
            .stdin
            .take()
            .context("kubectl stdin")?
            .write_all(yaml.as_bytes())?;
        check(child.wait_with_output()?, "kubectl apply").map(|_| ())
    }

    /// An HTTP GET from inside the node's namespace: (status, body).
    pub fn http_get(&self, url: &str) -> Result<(u16, String)> {
        let out = self
            .in_node("curl")
            .args(["-sS", "-m", "10", "-w", "\n%{http_code}", url])
            .output()
            .context("curl in the node namespace")?;
        let text = check(out, &format!("curl {url}"))?;
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        Ok((code.trim().parse().unwrap_or(0), body.to_owned()))
    }

    /// The last `lines` of a cluster component's log (kubelet, containerd, kube-apiserver, ...).
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        let text = match &self.env.node {
            NodeAccess::Netns(_) => {
                std::fs::read_to_string(self.dir.join("logs").join(format!("{component}.log")))
                    .unwrap_or_default()
            }
            // kind's node runs the kubelet and containerd as systemd units.
            NodeAccess::Container(_) => self
                .in_node("journalctl")
                .args(["--no-pager", "-u", component, "-n", &lines.to_string()])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default(),
        };
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// What a human needs when a wait fails: pods, events and the kubelet's last lines.
    pub fn diagnostics(&self, namespace: &str) -> String {
        let pods = self
            .kc(&["get", "pods", "-o", "wide", "-n", namespace])
            .unwrap_or_else(|e| format!("{e:#}"));
        let events = self
            .kc(&["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"])
            .unwrap_or_else(|e| format!("{e:#}"));
        format!(
            "pods in {namespace}:\n{pods}\nevents:\n{events}\nkubelet:\n{}",
            self.log_tail("kubelet", 15)
        )
    }

    /// Poll `check` until it returns true; on timeout fail with [`Self::diagnostics`].
    pub fn wait(
        &self,
        what: &str,
        namespace: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<bool>,
    ) -> Result<()> {
        let t0 = Instant::now();
        let mut last = String::new();
        loop {
            match check() {
                Ok(true) => {
                    let _ = writeln!(
                        std::io::stderr(),
                        "  {what}: ok after {:.1}s",
                        t0.elapsed().as_secs_f64()
                    );
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) => last = format!("{e:#}"),
            }
            if t0.elapsed() > timeout {
                bail!(
                    "{what}: not true after {timeout:?} (last error: {last})\n{}",
                    self.diagnostics(namespace)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn check(out: Output, what: &str) -> Result<String> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(cmd: &mut Command) -> Result<String> {
    let what = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    check(out, &what)
}

/// The chart's in-cluster Jaeger defaults to the Jaeger project's own image, which nothing here
/// can pull. The clusters under test run the image images/build.sh built from the same Jaeger
/// release instead: these `--set` values name it, read from its line in `images.tsv`
/// (`jaeger<TAB>docker.io/sidetrace/jaeger:1.75.0<TAB>archive`). `None` when no Jaeger image
/// was built.
pub fn local_jaeger_values(images_tsv: &str) -> Option<Vec<String>> {
    let reference = images_tsv
        .lines()
        .find_map(|l| l.strip_prefix("jaeger\t"))?
        .split('\t')
        .next()?;
    let (name, tag) = reference.rsplit_once(':')?;
    let (registry, repository) = name.split_once('/')?;
    Some(vec![
        format!("images.jaeger.registry={registry}"),
        format!("images.jaeger.repository={repository}"),
        format!("images.jaeger.tag={tag}"),
    ])
}

/// [`local_jaeger_values`] of `$SIDETRACE_CACHE/images/images.tsv`, or an error saying how to
/// build the image.
pub fn local_jaeger_set_args() -> Result<Vec<String>> {
    let tsv = crate::controlplane::peers::cache_dir().join("images/images.tsv");
    let text = std::fs::read_to_string(&tsv).unwrap_or_default();
    let values = local_jaeger_values(&text).with_context(|| {
        format!(
            "no jaeger image in {} (e2e/peers.sh jaeger, then make images)",
            tsv.display()
        )
    })?;
    Ok(values
        .into_iter()
        .flat_map(|v| ["--set".to_owned(), v])
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_jaeger_values_name_the_built_image() {
        let tsv = "demo-app\tdocker.io/sidetrace/demo-app:0.1.0\t/a.tar\n\
                   jaeger\tdocker.io/sidetrace/jaeger:1.75.0\t/j.tar\n";
        assert_eq!(
            local_jaeger_values(tsv).expect("jaeger line"),
            [
                "images.jaeger.registry=docker.io",
                "images.jaeger.repository=sidetrace/jaeger",
                "images.jaeger.tag=1.75.0"
            ]
        );
        assert_eq!(
            local_jaeger_values("proxy\tdocker.io/sidetrace/proxy:0.1.0\t/p.tar\n"),
            None
        );
    }

    #[test]
    fn env_file_round_trip() {
        let env = parse_env(
            "NETNS=st-42-node\nHOST_IF=st42h\nKUBECONFIG=/var/lib/sidetrace-cluster/kubeconfig\n\
             NODE_NAME=sidetrace-node\nDNS=none\n",
        )
        .expect("parses");
        assert_eq!(env.node, NodeAccess::Netns("st-42-node".into()));
        assert!(!env.dns);
        assert_eq!(
            env.kubeconfig,
            PathBuf::from("/var/lib/sidetrace-cluster/kubeconfig")
        );
        assert_eq!(env.node_name, "sidetrace-node");
    }

    #[test]
    fn kind_env_file_names_the_node_container_and_dns() {
        let env = parse_env(
            "KUBECONFIG=/var/lib/sidetrace-kind/kubeconfig\nNODE_NAME=st-control-plane\n\
             NODE_CONTAINER=st-control-plane\nKIND_CLUSTER=st\nDNS=coredns\n",
        )
        .expect("parses");
        assert_eq!(env.node, NodeAccess::Container("st-control-plane".into()));
        assert!(env.dns);
    }

    #[test]
    fn env_file_missing_key_is_named() {
        let err = parse_env("NETNS=st-1-node\nKUBECONFIG=\n").expect_err("incomplete");
        assert_eq!(err, "env file lacks KUBECONFIG");
        let err = parse_env("KUBECONFIG=/k\nNODE_NAME=n\n").expect_err("no node access");
        assert_eq!(err, "env file lacks NETNS or NODE_CONTAINER");
    }
}

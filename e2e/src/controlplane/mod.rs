//! A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager
//! (the binaries `e2e/peers.sh controlplane` builds), as envtest runs them, plus the
//! controller-manager so that Deployments yield ReplicaSets and Pods and ownerReference garbage
//! collection works. No scheduler, no kubelet: Pods are stored and stay Pending.
//!
//! The model:
//! - Everything runs inside a network namespace of its own (`st-<pid>-cp`) with no default route,
//!   reached over a veth pair: the tests talk to `https://<inner>:6443`, and webhooks registered
//!   by `clientConfig.url` listen on [`ControlPlane::host_address`], the host side of the pair.
//!   A webhook registered by `service:` would make the apiserver dial a ClusterIP from
//!   10.251.0.0/24, which has no route: such a mistake fails here instead of leaving the machine.
//! - Certificates are generated per run ([`pki`]): a CA, the apiserver's serving certificate,
//!   an admin client certificate in `system:masters`, the service-account signing key.
//!   Authorization is RBAC, so identities other than the admin (see
//!   [`ControlPlane::service_account_client`]) get exactly what RBAC grants them.
//! - One control plane per test binary; tests isolate themselves by namespace
//!   ([`ControlPlane::create_namespace`]).
//! - Dropping the handle kills the processes, deletes the namespace and removes the temporary
//!   directory — unless the thread is panicking (a failed test) or `SIDETRACE_KEEP_LOGS=1`, in
//!   which case the logs are kept and their path printed.

//!
//! Writing a test against it (each `tests/*.rs` file is one binary, so one control plane):
//!
//! ```text
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn chart() {
//!     let Some(cp) = ControlPlane::start_or_skip("chart").await else { return };
//!     cp.create_namespace("t-chart", &[("sidetrace.dev/inject", "enabled")]).await.unwrap();
//!     let operator = cp.spawn_host_process("operator", {
//!         let mut c = Command::new(env!("CARGO_BIN_EXE_..."));   // or a path under target/
//!         c.env("KUBECONFIG", cp.impersonation_kubeconfig("sidetrace-system", "sidetrace-operator")?);
//!         c
//!     })?;
//!     // webhooks: bind cp.host_address(), register https://{host_address}:{port}/... with
//!     // caBundle = cp.ca_pem() and a certificate from cp.issue_serving_cert(&[], &[host]).
//!     let out = cp.helm().args(["install", ...]).output()?;
//! }
//! ```

pub mod kubeconfig;
pub mod manifests;
pub mod netns;
pub mod peers;
pub mod pki;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub use kubeconfig::Auth;
pub use peers::{ControlPlaneBins, skip_or_fail};
pub use pki::CertPair;

/// The apiserver's port inside the namespace (its own network stack, so a fixed port is safe).
pub const APISERVER_PORT: u16 = 6443;
/// The Service ClusterIP range: nothing in it is routable from the namespace.
pub const SERVICE_CIDR: &str = "10.251.0.0/24";
/// The field manager tests apply with.
pub const FIELD_MANAGER: &str = "sidetrace-e2e";

/// How long the apiserver may take to report /readyz on a cold, busy 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A running control plane. See the module docs.
pub struct ControlPlane {
    client: Client,
    url: String,
    kubeconfig: PathBuf,
    ca: pki::Ca,
    admin: CertPair,
    bins: ControlPlaneBins,
    host: Ipv4Addr,
    // Last: torn down after everything above is unused.
    guard: Guard,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("url", &self.url)
            .field("dir", &self.guard.dir)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Start a control plane for `test`, or apply the skip-or-fail rule when a prerequisite is
    /// missing (peer binaries, root, or `SIDETRACE_SKIP_E2E=1`): `None` means "skipped".
    /// A start-up failure with every prerequisite present panics: that is a real failure.
    pub async fn start_or_skip(test: &str) -> Option<Self> {
        if let Err(reason) = Self::prerequisites() {
            skip_or_fail(test, &reason);
            return None;
        }
        match Self::start().await {
            Ok(cp) => Some(cp),
            Err(e) => panic!("{test}: the control plane did not start: {e:#}"),
        }
    }

    /// Why a control plane cannot run here, if it cannot.
    pub fn prerequisites() -> Result<ControlPlaneBins, String> {
        sidetrace_testkit::e2e_allowed()?;
        if !peers::is_root() {
            return Err("network namespaces need root (run the tests as root)".into());
        }
        ControlPlaneBins::find()
    }

    /// Start etcd, kube-apiserver and kube-controller-manager and wait until the apiserver is
    /// ready. On failure the logs are kept and the error says where.
    pub async fn start() -> Result<Self> {
        let bins = Self::prerequisites().map_err(|reason| anyhow!(reason))?;
        let dir = unique_temp_dir()?;
        let mut guard = Guard {
            dir,
            procs: Vec::new(),
            netns: None,
            keep: AtomicBool::new(false),
        };
        match boot(&mut guard, bins).await {
            Ok(p) => Ok(Self {
                client: p.client,
                url: p.url,
                kubeconfig: p.kubeconfig,
                ca: p.ca,
                admin: p.admin,
                bins: p.bins,
                host: p.host,
                guard,
            }),
            Err(e) => {
                guard.keep.store(true, Ordering::Relaxed);
                Err(e.context(format!(
                    "control plane logs kept in {}",
                    guard.dir.display()
                )))
            }
        }
    }

    /// A client authenticated as the admin (`system:masters`).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The apiserver's URL, `https://<namespace address>:6443`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The admin kubeconfig (for kubectl, helm and local processes).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The host side of the veth pair: bind webhooks here and register them by
    /// `clientConfig.url` with this address; the apiserver reaches nothing else.
    pub fn host_address(&self) -> IpAddr {
        IpAddr::V4(self.host)
    }

    /// The CA that signed the apiserver's certificate (trust it to talk to the apiserver).
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// The admin's client certificate (`system:masters`).
    pub fn admin_cert(&self) -> &CertPair {
        &self.admin
    }

    /// The peer binaries (kubectl and helm for tests that drive the real CLIs).
    pub fn bins(&self) -> &ControlPlaneBins {
        &self.bins
    }

    /// `kubectl` (the cached v1.34 build) with the admin kubeconfig; add the arguments.
    pub fn kubectl(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.bins.kubectl);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()));
        cmd
    }

    /// `helm` (the cached build) with the admin kubeconfig and its cache/config/data dirs in
    /// the scratch directory, so tests never read or write the user's helm state.
    pub fn helm(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.bins.helm);
        let home = self.guard.dir.join("helm");
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        cmd
    }

    /// A serving certificate signed by the cluster CA for `ips` (e.g. [`Self::host_address`]):
    /// what a test webhook presents; its caBundle is [`Self::ca_pem`].
    pub fn issue_serving_cert(&self, dns: &[&str], ips: &[IpAddr]) -> Result<CertPair> {
        self.ca.issue_server("sidetrace-e2e-webhook", dns, ips)
    }

    /// This run's scratch directory (logs, certificates, kubeconfigs).
    pub fn dir(&self) -> &Path {
        &self.guard.dir
    }

    /// Keep the logs and scratch directory after drop even if no test panics.
    pub fn keep_logs(&self) {
        self.guard.keep.store(true, Ordering::Relaxed);
    }

    /// A new client certificate for `user` in `groups`, signed by the cluster CA.
    pub fn issue_client_cert(&self, user: &str, groups: &[&str]) -> Result<CertPair> {
        self.ca.issue_client(user, groups)
    }

    /// Write a kubeconfig named `<name>.kubeconfig` in the scratch directory for `auth`.
    pub fn write_kubeconfig(&self, name: &str, auth: &Auth) -> Result<PathBuf> {
        let path = self.guard.dir.join(format!("{name}.kubeconfig"));
        write_private(
            &path,
            &kubeconfig::kubeconfig_yaml(&self.url, self.ca_pem(), auth),
        )?;
        Ok(path)
    }

    /// A kubeconfig that acts as ServiceAccount `namespace/name` through impersonation by the
    /// admin: every request is authorised with exactly that ServiceAccount's RBAC.
    pub fn impersonation_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let auth = Auth::Impersonate {
            cert_pem: self.admin.cert_pem.clone(),
            key_pem: self.admin.key_pem.clone(),
            user: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_owned(),
            ],
        };
        self.write_kubeconfig(&format!("impersonate-{namespace}-{name}"), &auth)
    }

    /// A kubeconfig with a real token for ServiceAccount `namespace/name` (TokenRequest API,
    /// one hour): the same credential a pod of that ServiceAccount would get.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client(), namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(3600),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let token = api
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("TokenRequest for {namespace}/{name}"))?
            .status
            .map(|s| s.token)
            .ok_or_else(|| anyhow!("TokenRequest for {namespace}/{name} returned no token"))?;
        self.write_kubeconfig(&format!("sa-{namespace}-{name}"), &Auth::Token(token))
    }

    /// A kube client authenticated as ServiceAccount `namespace/name` (by token).
    pub async fn service_account_client(&self, namespace: &str, name: &str) -> Result<Client> {
        client_from_kubeconfig(&self.service_account_kubeconfig(namespace, name).await?).await
    }

    /// Create namespace `name` (with `labels`) and wait until the controller-manager has
    /// given it its `default` ServiceAccount, so Pods in it pass admission.
    pub async fn create_namespace(&self, name: &str, labels: &[(&str, &str)]) -> Result<()> {
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "labels": labels.iter().copied().collect::<std::collections::BTreeMap<_, _>>(),
            },
        }))?;
        Api::<Namespace>::all(self.client())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        let sas: Api<ServiceAccount> = Api::namespaced(self.client(), name);
        poll(
            Duration::from_secs(60),
            &format!("ServiceAccount {name}/default"),
            || async { Ok(sas.get_opt("default").await?.is_some()) },
        )
        .await
    }

    /// The last `lines` lines of a component's log (`etcd`, `kube-apiserver`,
    /// `kube-controller-manager`), for failure messages.
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        tail(&self.guard.dir.join(format!("{component}.log")), lines)
    }
}

impl ControlPlane {
    /// Start a process on the host (an operator, a webhook) with its stdout and stderr in
    /// `<name>.log` in the scratch directory (kept with the other logs when a test fails).
    /// The handle kills it on drop.
    pub fn spawn_host_process(
        &self,
        name: &str,
        mut cmd: std::process::Command,
    ) -> Result<HostProcess> {
        let log = self.guard.dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(HostProcess {
            name: name.to_owned(),
            child,
            log,
        })
    }
}

/// A host process started by [`ControlPlane::spawn_host_process`]; killed on drop.
#[derive(Debug)]
pub struct HostProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl HostProcess {
    /// Its pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kill it (SIGKILL) and wait for it; a no-op once it has exited.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Ask it to stop (SIGTERM), wait up to `timeout`, then kill it. Returns whether it
    /// exited on its own: how tests check graceful shutdown.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if !self.is_running() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        false
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        format!(
            "{} log ({}):\n{}",
            self.name,
            self.log.display(),
            tail(&self.log, lines)
        )
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Poll `check` every 250 ms until it returns `Ok(true)`; fail after `timeout` with `what`.
pub async fn poll<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if tokio::time::Instant::now() >= deadline {
            let why = last_err
                .map(|e| format!(" (last error: {e:#})"))
                .unwrap_or_default();
            bail!("timed out after {timeout:?} waiting for {what}{why}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A kube client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

// ---------------------------------------------------------------------------------------------

/// Everything with a lifetime: processes, the namespace, the scratch directory.
struct Guard {
    dir: PathBuf,
    procs: Vec<Proc>,
    netns: Option<netns::Netns>,
    keep: AtomicBool,
}

struct Proc {
    /// Component name; its log is `<name>.log`.
    name: &'static str,
    child: Child,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Reverse start order: controller-manager, apiserver, etcd.
        while let Some(mut p) = self.procs.pop() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        drop(self.netns.take());
        let keep_env = std::env::var("SIDETRACE_KEEP_LOGS").is_ok_and(|v| v == "1");
        if std::thread::panicking() || keep_env || self.keep.load(Ordering::Relaxed) {
            eprintln!("control plane logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Guard {
    /// Start `program` inside the namespace with its output in `<name>.log`.
    fn spawn(&mut self, name: &'static str, program: &Path, args: &[String]) -> Result<()> {
        let ns = self
            .netns
            .as_ref()
            .ok_or_else(|| anyhow!("no network namespace"))?;
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let child = ns
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        self.procs.push(Proc { name, child });
        Ok(())
    }

    /// Fail with the log tail of the first process that has exited.
    fn check_alive(&mut self) -> Result<()> {
        for p in &mut self.procs {
            if let Some(status) = p.child.try_wait()? {
                let log = tail(&self.dir.join(format!("{}.log", p.name)), 30);
                bail!(
                    "{} exited early ({status}); last lines of its log:\n{log}",
                    p.name
                );
            }
        }
        Ok(())
    }
}

/// What [`boot`] builds; the guard is added by [`ControlPlane::start`].
struct Parts {
    client: Client,
    url: String,
    kubeconfig: PathBuf,
    ca: pki::Ca,
    admin: CertPair,
    bins: ControlPlaneBins,
    host: Ipv4Addr,
}

async fn boot(guard: &mut Guard, bins: ControlPlaneBins) -> Result<Parts> {
    let dir = guard.dir.clone();
    let ns = netns::Netns::create().context("creating the control plane's network namespace")?;
    let (host, inner) = (ns.host_address(), ns.inner_address());
    guard.netns = Some(ns);

    // Certificates and keys.
    let ca = pki::Ca::generate("sidetrace-e2e-ca")?;
    let serving = ca.issue_server(
        "kube-apiserver",
        &[
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "localhost",
        ],
        &[
            IpAddr::V4(inner),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::new(10, 251, 0, 1)),
        ],
    )?;
    let admin = ca.issue_client("sidetrace-e2e-admin", &["system:masters"])?;
    let (sa_key, sa_pub) = pki::service_account_key()?;
    let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
    write_private(&dir.join("ca.crt"), ca.cert_pem())?;
    write_private(&dir.join("apiserver.crt"), &serving.cert_pem)?;
    write_private(&dir.join("apiserver.key"), &serving.key_pem)?;
    write_private(&dir.join("sa.key"), &sa_key)?;
    write_private(&dir.join("sa.pub"), &sa_pub)?;

    let url = format!("https://{inner}:{APISERVER_PORT}");
    let admin_auth = Auth::ClientCert {
        cert_pem: admin.cert_pem.clone(),
        key_pem: admin.key_pem.clone(),
    };
    let kubeconfig = dir.join("admin.kubeconfig");
    write_private(
        &kubeconfig,
        &kubeconfig::kubeconfig_yaml(&url, ca.cert_pem(), &admin_auth),
    )?;
    // The controller-manager runs inside the namespace and talks to the apiserver on loopback.
    let kcm_kubeconfig = dir.join("kcm.kubeconfig");
    let loopback_url = format!("https://127.0.0.1:{APISERVER_PORT}");
    write_private(
        &kcm_kubeconfig,
        &kubeconfig::kubeconfig_yaml(&loopback_url, ca.cert_pem(), &admin_auth),
    )?;

    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    guard.spawn(
        "etcd",
        &bins.etcd,
        &[
            s(&["--name=default", "--log-level=warn", "--unsafe-no-fsync"]),
            vec![format!("--data-dir={}", file("etcd-data"))],
            s(&[
                "--listen-client-urls=http://127.0.0.1:2379",
                "--advertise-client-urls=http://127.0.0.1:2379",
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=default=http://127.0.0.1:2380",
            ]),
        ]
        .concat(),
    )?;
    guard.spawn(
        "kube-apiserver",
        &bins.apiserver,
        &[
            s(&[
                "--etcd-servers=http://127.0.0.1:2379",
                "--bind-address=0.0.0.0",
            ]),
            vec![
                format!("--secure-port={APISERVER_PORT}"),
                format!("--advertise-address={inner}"),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                format!("--client-ca-file={}", file("ca.crt")),
                format!("--tls-cert-file={}", file("apiserver.crt")),
                format!("--tls-private-key-file={}", file("apiserver.key")),
                format!("--service-account-key-file={}", file("sa.pub")),
                format!("--service-account-signing-key-file={}", file("sa.key")),
                format!("--cert-dir={}", file("apiserver-certs")),
            ],
            s(&[
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ]),
        ]
        .concat(),
    )?;

    let client = client_from_kubeconfig(&kubeconfig).await?;
    let readyz = || async {
        let req = http::Request::get("/readyz").body(Vec::new())?;
        Ok(client
            .request_text(req)
            .await
            .map(|t| t.trim() == "ok")
            .unwrap_or(false))
    };
    wait_ready(guard, READY_TIMEOUT, readyz)
        .await
        .context("kube-apiserver /readyz")?;

    guard.spawn(
        "kube-controller-manager",
        &bins.controller_manager,
        &[
            vec![
                format!("--kubeconfig={}", kcm_kubeconfig.display()),
                format!("--service-account-private-key-file={}", file("sa.key")),
                format!("--root-ca-file={}", file("ca.crt")),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            ],
            s(&[
                "--controllers=*",
                "--use-service-account-credentials=false",
                "--leader-elect=false",
                "--secure-port=0",
                "--v=1",
            ]),
        ]
        .concat(),
    )?;
    // Give a crash-on-flags a moment to show, so a broken controller-manager fails here with
    // its log rather than as a mysterious timeout in the first test.
    tokio::time::sleep(Duration::from_millis(500)).await;
    guard.check_alive()?;

    Ok(Parts {
        client,
        url,
        kubeconfig,
        ca,
        admin,
        bins,
        host,
    })
}

/// Poll `ready` until true, failing early (with the log) if a process exits.
async fn wait_ready<F, Fut>(guard: &mut Guard, timeout: Duration, ready: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        guard.check_alive()?;
        if ready().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let log = tail(&guard.dir.join("kube-apiserver.log"), 30);
            bail!("not ready after {timeout:?}; last lines of kube-apiserver.log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn unique_temp_dir() -> Result<PathBuf> {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("sidetrace-cp-{}-{n}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

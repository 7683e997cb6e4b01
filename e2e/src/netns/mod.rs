//! The local data-plane topology: Envoy's tracing sandbox (front proxy → service1 → service2,
//! spans to a collector) rebuilt from network-namespace "pods" on one machine.
//!
//! ```text
//!            st-<pid>-dp<n>-net:  bridge br0   (10.250.1.0/24, no default route anywhere)
//!        ┌──────────┬──────────────┼──────────────┬──────────────┐
//!     client     collector       front          service1       service2
//!     .100       .5 zipkin       .11            .12            .13
//!                :9411           app :8080      app :8080      app :8080, tcp echo :9000
//!                                proxy (1337)   proxy (1337)   proxy (1337)
//!                                iptables       iptables       iptables
//! ```
//!
//! The bridge lives in a namespace of its own, so nothing touches the host's interfaces or
//! routes; every pod reaches the others and nothing else. In each pod the harness does what a
//! kubelet does with the injected spec: runs `sidetrace-init` (real iptables) with the webhook's
//! arguments, starts the demo app (uid [`APP_UID`]) and `sidetrace-proxy` as uid/gid 1337 with
//! the webhook's environment and the config the operator renders from
//! `crds/examples/demo-*.yaml`, and waits for the proxy's `/ready` (probed from outside the pod,
//! like kubelet). The test process talks to pods by opening sockets inside their namespaces
//! ([`ns::connect_in`]), so it needs no route either.
//!
//! [`Front::Envoy`] replaces the front pod's app and sidecar with Envoy configured as the
//! classic sandbox's front proxy (`e2e/demo/front-envoy.yaml`: Zipkin tracer, HTTP_JSON,
//! shared_span_context false) — the interop check against the real thing.
//!
//! Dropping the [`Topology`] kills every process, deletes every namespace (which takes the
//! iptables rules with it) and removes the log directory — unless the thread is panicking or
//! [`Topology::keep_logs`] was called, in which case the logs stay and their path is printed.
//! Namespaces left by a killed run (their pid is gone) are removed by the next run.

pub mod client;
pub mod envoy_sidecar;
pub mod ns;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sidetrace_contract::{CollectorProtocol, defaults, names};

use crate::collector::{self, Collector};
use crate::controlplane::peers;

pub use client::Reply;

/// The pods' subnet (each topology has its own bridge namespace, so topologies never collide).
pub const SUBNET: [u8; 3] = [10, 250, 1];
/// Port every demo app serves HTTP on.
pub const APP_PORT: u16 = 8080;
/// Port service2's opaque TCP echo listens on.
pub const TCP_ECHO_PORT: u16 = 9000;
/// uid/gid the demo apps run as: an ordinary user, neither root nor the proxy's 1337.
pub const APP_UID: u32 = 1000;
/// Kubernetes namespace the pods pretend to live in (the proxy reports it).
pub const POD_NAMESPACE: &str = "demo";

/// How long a pod may take to become ready on a busy 2-core machine: a hang guard.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

const FRONT_CONFIG: &str = include_str!("../../../crds/examples/demo-front-proxy.yaml");
const SERVICE1_CONFIG: &str = include_str!("../../../crds/examples/demo-service1.yaml");
const SERVICE2_CONFIG: &str = include_str!("../../../crds/examples/demo-service2.yaml");
/// The classic sandbox's front Envoy (Zipkin tracer), for [`Front::Envoy`].
pub const FRONT_ENVOY_YAML: &str = include_str!("../../demo/front-envoy.yaml");
/// Front Envoy's admin port (loopback inside the front pod).
const ENVOY_ADMIN_PORT: u16 = 9901;

/// The pods of the topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pod {
    /// Where test requests come from (no sidecar, like a user outside the mesh).
    Client,
    /// The collector.
    Collector,
    /// The front proxy's pod.
    Front,
    /// service1.
    Service1,
    /// service2.
    Service2,
}

impl Pod {
    /// The meshed pods, in start order (callees first).
    pub const MESHED: [Pod; 3] = [Pod::Service2, Pod::Service1, Pod::Front];

    /// Short name (namespace suffix, log file prefix).
    pub fn name(self) -> &'static str {
        match self {
            Pod::Client => "client",
            Pod::Collector => "collector",
            Pod::Front => "front",
            Pod::Service1 => "service1",
            Pod::Service2 => "service2",
        }
    }

    /// Service name the pod's spans carry (what the webhook would take from the pod's labels).
    pub fn service_name(self) -> &'static str {
        match self {
            Pod::Front => "front-proxy",
            other => other.name(),
        }
    }

    /// Last octet of the pod's address.
    fn octet(self) -> u8 {
        match self {
            Pod::Client => 100,
            Pod::Collector => 5,
            Pod::Front => 11,
            Pod::Service1 => 12,
            Pod::Service2 => 13,
        }
    }

    /// The pod's address.
    pub fn ip(self) -> Ipv4Addr {
        Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], self.octet())
    }

    /// The pod's app address.
    pub fn app(self) -> SocketAddr {
        SocketAddr::from((self.ip(), APP_PORT))
    }

    /// The TracedService example the operator would render this pod's config from.
    fn traced_service_yaml(self) -> Option<&'static str> {
        match self {
            Pod::Front => Some(FRONT_CONFIG),
            Pod::Service1 => Some(SERVICE1_CONFIG),
            Pod::Service2 => Some(SERVICE2_CONFIG),
            Pod::Client | Pod::Collector => None,
        }
    }

    /// The demo app's arguments: the sandbox's routes, and how the app behaves (`opts`).
    fn app_args(self, opts: Options) -> Vec<String> {
        let mut a = vec![
            "--listen".to_owned(),
            format!("0.0.0.0:{APP_PORT}"),
            "--name".to_owned(),
            self.service_name().to_owned(),
            format!("--copy-trace-headers={}", opts.copy_trace_headers),
        ];
        if let Some(n) = opts.app_workers {
            a.push(format!("--workers={n}"));
        }
        if opts.app_h2 {
            a.push("--downstream-h2".to_owned());
        }
        let route = |path: &str, to: Pod, to_path: &str| {
            [
                "--route".to_owned(),
                format!("{path}=http://{}{to_path}", to.app()),
            ]
        };
        match self {
            Pod::Front => {
                a.extend(route("/trace/1", Pod::Service1, "/trace/1"));
                a.extend(route("/trace/2", Pod::Service2, "/trace/2"));
            }
            Pod::Service1 => a.extend(route("/trace/1", Pod::Service2, "/trace/2")),
            Pod::Service2 => {
                a.push("--tcp-echo".to_owned());
                a.push(format!("0.0.0.0:{TCP_ECHO_PORT}"));
            }
            Pod::Client | Pod::Collector => {}
        }
        a
    }
}

impl fmt::Display for Pod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The sidecar config the operator renders from the pod's TracedService example.
pub fn proxy_config_yaml(pod: Pod) -> Result<Option<String>> {
    proxy_config_yaml_for(pod, Options::default())
}

/// [`proxy_config_yaml`], with the example's `inferParents` set when `opts` asks for it.
fn proxy_config_yaml_for(pod: Pod, opts: Options) -> Result<Option<String>> {
    let Some(text) = pod.traced_service_yaml() else {
        return Ok(None);
    };
    let mut ts: sidetrace_crds::TracedService =
        serde_yaml::from_str(text).with_context(|| format!("parsing the {pod} TracedService"))?;
    ts.spec.infer_parents |= opts.infer_parents;
    Ok(Some(ts.spec.to_proxy_config(None).to_yaml()))
}

/// `sidetrace-init`'s arguments exactly as the webhook injects them for a pod without
/// overrides (the admin port is always excluded from inbound capture: kubelet probes it).
pub fn init_args() -> Vec<String> {
    vec![
        "--proxy-uid".to_owned(),
        defaults::PROXY_UID.to_string(),
        "--proxy-gid".to_owned(),
        defaults::PROXY_GID.to_string(),
        "--inbound-port".to_owned(),
        defaults::INBOUND_CAPTURE_PORT.to_string(),
        "--outbound-port".to_owned(),
        defaults::OUTBOUND_CAPTURE_PORT.to_string(),
        "--exclude-inbound-ports".to_owned(),
        defaults::ADMIN_PORT.to_string(),
    ]
}

/// The node every netns pod "runs on" (the OTLP resource's `k8s.node.name`).
pub const NODE_NAME: &str = "e2e-node";

/// A pod's owning workload as the webhook would pass it: each netns pod stands for the one
/// replica of a Deployment named after it (`front-proxy-0` of ReplicaSet `front-proxy-5d8c7`).
pub fn workload_attributes(pod: Pod) -> String {
    let rs = format!("{}-5d8c7", pod.name());
    sidetrace_contract::workload::format_attributes(
        &sidetrace_contract::workload::workload_attributes("ReplicaSet", &rs, Some("5d8c7")),
    )
}

/// The proxy's environment as the webhook injects it (the downward API values filled in).
pub fn proxy_env(pod: Pod, collector_url: &str, config: Option<&Path>) -> Vec<(String, String)> {
    let mut env = vec![
        (names::env::POD_NAME, format!("{}-0", pod.name())),
        (names::env::POD_NAMESPACE, POD_NAMESPACE.to_owned()),
        (names::env::POD_IP, pod.ip().to_string()),
        (names::env::NODE_NAME, NODE_NAME.to_owned()),
        (names::env::WORKLOAD_ATTRIBUTES, workload_attributes(pod)),
        (
            names::env::INBOUND_PORT,
            defaults::INBOUND_CAPTURE_PORT.to_string(),
        ),
        (
            names::env::OUTBOUND_PORT,
            defaults::OUTBOUND_CAPTURE_PORT.to_string(),
        ),
        (names::env::ADMIN_PORT, defaults::ADMIN_PORT.to_string()),
        (names::env::SERVICE_NAME, pod.service_name().to_owned()),
        (names::env::COLLECTOR, collector_url.to_owned()),
        (
            names::env::LOG_LEVEL,
            std::env::var("SIDETRACE_E2E_PROXY_LOG").unwrap_or_else(|_| "info".to_owned()),
        ),
    ];
    if let Some(path) = config {
        env.push((names::env::CONFIG, path.display().to_string()));
    }
    // For benchmarks comparing runtime sizes; unset, the proxy's own default applies.
    if let Ok(n) = std::env::var("SIDETRACE_E2E_PROXY_WORKER_THREADS") {
        env.push(("SIDETRACE_WORKER_THREADS", n));
    }
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Everything the topology runs; [`Binaries::find`] says what is missing.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// `sidetrace-init`.
    pub init: PathBuf,
    /// `sidetrace-proxy`.
    pub proxy: PathBuf,
    /// `sidetrace-demo-app`.
    pub demo_app: PathBuf,
    /// The collector to run.
    pub collector: collector::Kind,
    /// Envoy (`e2e/peers.sh envoy`), when installed: the interop front proxy, and the
    /// sidecar of [`Sidecar::Envoy`].
    pub envoy: Option<PathBuf>,
    /// The relay of [`Sidecar::TcpRelay`]; [`Binaries::find`] leaves it unset (the benchmark
    /// brings its own).
    pub relay: Option<Program>,
}

/// A program and its arguments.
#[derive(Clone, Debug)]
pub struct Program {
    /// The executable.
    pub path: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

/// The cargo output directory holding this executable (`target/debug` for tests and bins).
pub(crate) fn cargo_bin_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SIDETRACE_BIN_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    let exe = std::env::current_exe().ok()?;
    // target/debug/deps/<test> or target/debug/<bin>
    exe.ancestors()
        .skip(1)
        .take(2)
        .find(|d| d.join("sidetrace-demo-app").exists())
        .map(Path::to_path_buf)
}

fn in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Whether a process of another, unprivileged uid can execute `path`: the file and every
/// ancestor directory carry the "others" execute bit.
fn others_can_execute(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    path.ancestors()
        .all(|p| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// Which collector [`Binaries::find`] picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CollectorChoice {
    /// The Zipkin jar (the tests' default).
    Zipkin,
    /// Jaeger when `bin/jaeger` is built, else Zipkin (the demo).
    PreferJaeger,
    /// Jaeger, or a reason to skip (the Jaeger tier of the tests).
    Jaeger,
}

impl CollectorChoice {
    /// The tests' choice: `SIDETRACE_E2E_COLLECTOR=jaeger` selects the Jaeger tier.
    pub fn from_env() -> Self {
        match std::env::var("SIDETRACE_E2E_COLLECTOR").as_deref() {
            Ok("jaeger") => Self::Jaeger,
            _ => Self::Zipkin,
        }
    }
}

/// The protocol the tests' proxies speak: Zipkin v2 to the Zipkin server, else
/// [`jaeger_protocol`] (Zipkin v2 when the variable is malformed; `Binaries::find` reports it).
pub fn collector_protocol() -> CollectorProtocol {
    match CollectorChoice::from_env() {
        CollectorChoice::Zipkin => CollectorProtocol::Zipkin,
        c => jaeger_protocol(c).unwrap_or(CollectorProtocol::Zipkin),
    }
}

/// The protocol the proxies speak to Jaeger: `SIDETRACE_E2E_COLLECTOR_PROTOCOL` (`otlp-http`
/// or `zipkin`) when set, else OTLP for the demo (Jaeger's native receiver) and Zipkin v2
/// for the test tier (its first pass; e2e/test.sh runs the OTLP pass with the variable set).
/// A value outside the contract's names is an error, not a silent fallback.
pub fn jaeger_protocol(choice: CollectorChoice) -> Result<CollectorProtocol, String> {
    match std::env::var("SIDETRACE_E2E_COLLECTOR_PROTOCOL") {
        Ok(v) => CollectorProtocol::parse(&v)
            .map_err(|e| format!("SIDETRACE_E2E_COLLECTOR_PROTOCOL: {e}")),
        Err(_) if choice == CollectorChoice::PreferJaeger => Ok(CollectorProtocol::OtlpHttp),
        Err(_) => Ok(CollectorProtocol::Zipkin),
    }
}

impl Binaries {
    /// Find every binary and check root, iptables and java; `Err` is the reason to skip.
    pub fn find(choice: CollectorChoice) -> Result<Self, String> {
        sidetrace_testkit::e2e_allowed()?;
        if !peers::is_root() {
            return Err(
                "network namespaces and iptables need root (run as root, e.g. sudo -E make ...)"
                    .into(),
            );
        }
        for tool in ["ip", "iptables", "iptables-restore"] {
            if in_path(tool).is_none() {
                return Err(format!(
                    "`{tool}` not found: install iproute2 and iptables (apt-get install iproute2 iptables)"
                ));
            }
        }
        let dir = cargo_bin_dir().ok_or_else(|| {
            "cannot find target/debug/sidetrace-demo-app next to this executable: run \
             `cargo build -p sidetrace-e2e -p sidetrace-init -p sidetrace-proxy` \
             (or set SIDETRACE_BIN_DIR)"
                .to_owned()
        })?;
        let need = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(format!(
                    "{} is missing: run `cargo build -p sidetrace-init -p sidetrace-proxy -p sidetrace-e2e`",
                    p.display()
                ))
            }
        };
        let init = need("sidetrace-init")?;
        let proxy = need("sidetrace-proxy")?;
        let demo_app = need("sidetrace-demo-app")?;
        // The proxy must run as 1337 (the rules exempt that uid), so it must be able to exec
        // its binary: a checkout under a private home directory cannot work.
        if !others_can_execute(&proxy) {
            return Err(format!(
                "{} is not executable by uid {} (a parent directory is not world-searchable): \
                 build in a checkout outside private directories such as /root",
                proxy.display(),
                defaults::PROXY_UID
            ));
        }
        let jaeger = peers::bin("jaeger");
        if choice == CollectorChoice::Jaeger && !jaeger.is_file() {
            return Err(format!(
                "{} is missing (SIDETRACE_E2E_COLLECTOR=jaeger): run `e2e/peers.sh jaeger`",
                jaeger.display()
            ));
        }
        let collector = if choice != CollectorChoice::Zipkin && jaeger.is_file() {
            collector::Kind::Jaeger {
                bin: jaeger,
                protocol: jaeger_protocol(choice)?,
            }
        } else {
            let java = in_path("java").ok_or_else(|| {
                "`java` not found: the Zipkin server needs Java 17+ (apt-get install openjdk-17-jre-headless)"
                    .to_owned()
            })?;
            let jar = peers::bin("zipkin.jar");
            if !jar.is_file() {
                return Err(format!(
                    "{} is missing: run `e2e/peers.sh zipkin`",
                    jar.display()
                ));
            }
            collector::Kind::Zipkin { java, jar }
        };
        let envoy = Some(peers::bin("envoy")).filter(|p| p.is_file());
        Ok(Self {
            init,
            proxy,
            demo_app,
            collector,
            envoy,
            relay: None,
        })
    }
}

/// What runs in the front pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Front {
    /// The demo app behind a sidetrace sidecar, like service1 and service2.
    #[default]
    Sidetrace,
    /// Envoy configured as the sandbox's front proxy ([`FRONT_ENVOY_YAML`]), no sidecar: the
    /// interop test of sidetrace against the real thing.
    Envoy,
}

/// What runs beside the app in each meshed pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sidecar {
    /// The app alone: no rules, no sidecar (the harness's own baseline).
    None,
    /// `sidetrace-init`'s rules and `sidetrace-proxy`, as the webhook injects them.
    #[default]
    Sidetrace,
    /// `sidetrace-init`'s rules and Envoy in the proxy's place, configured as Istio runs its
    /// sidecar ([`envoy_sidecar::config`]): the reference the transparent-path benchmark
    /// compares against. Needs [`Binaries::envoy`].
    Envoy,
    /// `sidetrace-init`'s rules and a plain TCP relay on both capture ports
    /// ([`Binaries::relay`]): the floor of any sidecar in that position.
    TcpRelay,
}

impl Sidecar {
    /// How reports name it.
    pub fn label(self) -> &'static str {
        match self {
            Sidecar::None => "no sidecars",
            Sidecar::Sidetrace => "sidetrace sidecars",
            Sidecar::Envoy => "Envoy sidecars (Istio-style, Zipkin tracer)",
            Sidecar::TcpRelay => "TCP relay sidecars",
        }
    }
}

/// The process names ([`Topology::spawn`]'s `what`) of the sidecars of every [`Sidecar`].
const SIDECAR_PROCESSES: [&str; 3] = ["proxy", "sidecar-envoy", "relay"];

/// How to build the topology.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// What runs beside the app in the meshed pods.
    pub sidecar: Sidecar,
    /// What runs in the front pod.
    pub front: Front,
    /// The apps copy the trace headers of their inbound requests onto their calls (the
    /// seed's apps); `false`: they copy nothing.
    pub copy_trace_headers: bool,
    /// The apps are synchronous servers with this many workers (`None`: async servers).
    pub app_workers: Option<usize>,
    /// The apps call their downstreams over HTTP/2 cleartext (prior knowledge).
    pub app_h2: bool,
    /// The pods' TracedServices set `inferParents`.
    pub infer_parents: bool,
    /// Worker threads of each sidecar (`None`: each sidecar's own default).
    pub sidecar_workers: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            sidecar: Sidecar::Sidetrace,
            front: Front::Sidetrace,
            copy_trace_headers: true,
            app_workers: None,
            app_h2: false,
            infer_parents: false,
            sidecar_workers: None,
        }
    }
}

struct Proc {
    name: String,
    child: Child,
}

/// A running topology. See the module docs.
pub struct Topology {
    prefix: String,
    dir: PathBuf,
    procs: Vec<Proc>,
    namespaces: Vec<String>,
    collector: Option<Collector>,
    keep: AtomicBool,
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topology")
            .field("prefix", &self.prefix)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Number of topologies this process has created (part of every namespace name).
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The pid that created namespace `name`, when it is a data-plane namespace of ours
/// (`st-<pid>-dp<n>-<pod>`).
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("st-")?;
    let (pid, rest) = rest.split_once('-')?;
    let (n, pod) = rest.strip_prefix("dp")?.split_once('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || pod.is_empty() {
        return None;
    }
    pid.parse().ok()
}

fn remove_stale() {
    for name in ns::list() {
        if let Some(pid) = owner_pid(&name)
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            ns::destroy(&name);
        }
    }
}

impl Topology {
    /// Build the namespaces, start the collector and every pod, and wait until all are ready.
    /// On failure everything started so far is torn down and the logs are kept.
    pub async fn start(bins: &Binaries, opts: Options) -> Result<Self> {
        remove_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("st-{}-dp{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("sidetrace-{prefix}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // The proxy (uid 1337) reads its config from here.
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        }
        let mut me = Self {
            prefix,
            dir,
            procs: Vec::new(),
            namespaces: Vec::new(),
            collector: None,
            keep: AtomicBool::new(false),
        };
        match me.build(bins, opts).await {
            Ok(()) => Ok(me),
            Err(e) => {
                me.keep_logs();
                Err(e.context(format!(
                    "starting the topology (logs in {})",
                    me.dir.display()
                )))
            }
        }
    }

    async fn build(&mut self, bins: &Binaries, opts: Options) -> Result<()> {
        let net = format!("{}-net", self.prefix);
        self.add_namespace(&net)?;
        ns::ip(&["-n", &net, "link", "add", "br0", "type", "bridge"])?;
        ns::ip(&["-n", &net, "link", "set", "br0", "up"])?;
        ns::ip(&["-n", &net, "link", "set", "lo", "up"])?;
        for pod in [
            Pod::Client,
            Pod::Collector,
            Pod::Front,
            Pod::Service1,
            Pod::Service2,
        ] {
            let pod_ns = self.ns(pod);
            self.add_namespace(&pod_ns)?;
            let veth = format!("v-{}", pod.name());
            ns::ip(&[
                "-n", &net, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &pod_ns,
            ])?;
            ns::ip(&["-n", &net, "link", "set", &veth, "master", "br0", "up"])?;
            ns::ip(&[
                "-n",
                &pod_ns,
                "addr",
                "add",
                &format!("{}/24", pod.ip()),
                "dev",
                "eth0",
            ])?;
            ns::ip(&["-n", &pod_ns, "link", "set", "eth0", "up"])?;
            ns::ip(&["-n", &pod_ns, "link", "set", "lo", "up"])?;
        }

        let collector = Collector::start(
            bins.collector.clone(),
            &self.ns(Pod::Collector),
            Pod::Collector.ip(),
            &self.dir.join("collector.log"),
        )
        .await?;
        let collector_url = collector.spans_url();
        self.collector = Some(collector);

        for pod in Pod::MESHED {
            if pod == Pod::Front && opts.front == Front::Envoy {
                self.start_envoy_front(bins).await?;
            } else {
                self.start_pod(bins, opts, pod, &collector_url).await?;
            }
        }
        Ok(())
    }

    async fn start_envoy_front(&mut self, bins: &Binaries) -> Result<()> {
        let envoy = bins
            .envoy
            .as_ref()
            .context("Envoy is not installed: run `e2e/peers.sh envoy`")?;
        let config = self.dir.join("front-envoy.yaml");
        std::fs::write(&config, FRONT_ENVOY_YAML)?;
        let mut cmd = Command::new(envoy);
        cmd.arg("-c")
            .arg(&config)
            .args([
                "--service-cluster",
                Pod::Front.service_name(),
                "--service-node",
                "front-0",
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                "info",
            ])
            .env_clear();
        self.spawn(Pod::Front, "envoy", cmd)?;
        let admin = SocketAddr::from(([127, 0, 0, 1], ENVOY_ADMIN_PORT));
        self.wait_ok(&self.ns(Pod::Front), admin, "/ready", "front-envoy")
            .await
    }

    async fn start_pod(
        &mut self,
        bins: &Binaries,
        opts: Options,
        pod: Pod,
        collector_url: &str,
    ) -> Result<()> {
        let pod_ns = self.ns(pod);
        // The app first, checked on loopback inside the pod before any rule exists.
        let mut app = Command::new(&bins.demo_app);
        app.args(pod.app_args(opts))
            .env_clear()
            .env("RUST_LOG", "info");
        // An ordinary uid, like an app container — unless it could not exec the binary (see
        // `others_can_execute`; the proxy check already guarantees that for the same directory).
        if others_can_execute(&bins.demo_app) {
            app.uid(APP_UID).gid(APP_UID);
        }
        self.spawn(pod, "app", app)?;
        let local = SocketAddr::from(([127, 0, 0, 1], APP_PORT));
        self.wait_ok(&pod_ns, local, "/healthz", &format!("{pod}-app"))
            .await?;
        if opts.sidecar == Sidecar::None {
            return Ok(());
        }

        // The init container: real iptables in the pod's namespace.
        let mut init = Command::new(&bins.init);
        init.args(init_args())
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        let out =
            ns::output_in(&pod_ns, init).with_context(|| format!("sidetrace-init in {pod}"))?;
        std::fs::write(self.dir.join(format!("{pod}-init.log")), out)?;
        match opts.sidecar {
            Sidecar::Envoy => return self.start_envoy_sidecar(bins, opts, pod).await,
            Sidecar::TcpRelay => return self.start_relay_sidecar(bins, pod).await,
            Sidecar::None | Sidecar::Sidetrace => {}
        }

        // The sidecar, as uid/gid 1337.
        let config = match proxy_config_yaml_for(pod, opts)? {
            Some(yaml) => {
                let path = self.dir.join(format!("{pod}-proxy.yaml"));
                std::fs::write(&path, yaml)?;
                Some(path)
            }
            None => None,
        };
        let mut proxy = Command::new(&bins.proxy);
        proxy
            .env_clear()
            .envs(proxy_env(pod, collector_url, config.as_deref()))
            .envs(
                opts.sidecar_workers
                    .map(|n| ("SIDETRACE_WORKER_THREADS", n.to_string())),
            )
            .uid(defaults::PROXY_UID)
            .gid(defaults::PROXY_GID);
        self.spawn(pod, "proxy", proxy)?;
        // Probed from outside the pod, as kubelet does.
        let admin = SocketAddr::from((pod.ip(), defaults::ADMIN_PORT));
        self.wait_ok(
            &self.ns(Pod::Client),
            admin,
            "/ready",
            &format!("{pod}-proxy"),
        )
        .await
    }

    /// Envoy in the proxy's place (see [`Sidecar::Envoy`]), as uid/gid 1337 like the proxy.
    async fn start_envoy_sidecar(
        &mut self,
        bins: &Binaries,
        opts: Options,
        pod: Pod,
    ) -> Result<()> {
        let envoy = bins
            .envoy
            .as_ref()
            .context("Envoy is not installed: run `e2e/peers.sh envoy`")?;
        let envoy = self.executable_by_proxy_uid(envoy, "envoy")?;
        let config = self.dir.join(format!("{pod}-envoy.yaml"));
        std::fs::write(
            &config,
            envoy_sidecar::config(&envoy_sidecar::Params {
                collector: SocketAddr::from((Pod::Collector.ip(), collector::ZIPKIN_PORT)),
            }),
        )?;
        let mut cmd = Command::new(envoy);
        cmd.arg("-c")
            .arg(&config)
            .args([
                "--service-cluster",
                pod.service_name(),
                "--service-node",
                &format!("{}-0", pod.name()),
                "--concurrency",
                // Istio's default for sidecars, and the proxy's default worker count.
                &opts.sidecar_workers.unwrap_or(2).to_string(),
                "--disable-hot-restart",
                "--log-level",
                "warning",
            ])
            .env_clear()
            .uid(defaults::PROXY_UID)
            .gid(defaults::PROXY_GID);
        self.spawn(pod, "sidecar-envoy", cmd)?;
        self.wait_through_sidecar(pod).await
    }

    /// The plain TCP relay in the proxy's place (see [`Sidecar::TcpRelay`]), as uid/gid 1337.
    async fn start_relay_sidecar(&mut self, bins: &Binaries, pod: Pod) -> Result<()> {
        let relay = bins
            .relay
            .as_ref()
            .context("no TCP relay program given (Binaries::relay)")?;
        let mut cmd = Command::new(&relay.path);
        cmd.args(&relay.args)
            .env_clear()
            .uid(defaults::PROXY_UID)
            .gid(defaults::PROXY_GID);
        self.spawn(pod, "relay", cmd)?;
        self.wait_through_sidecar(pod).await
    }

    /// Ready once the app answers from another pod: the request crosses the inbound capture,
    /// so it only succeeds when the sidecar listens (REDIRECT to a closed port is refused).
    async fn wait_through_sidecar(&mut self, pod: Pod) -> Result<()> {
        let what = format!("{pod} through its sidecar");
        self.wait_ok(&self.ns(Pod::Client), pod.app(), "/healthz", &what)
            .await
    }

    /// `path` itself when uid 1337 can execute it; otherwise a hard link (or copy) in the
    /// topology's directory, which it can (peers live under root's private home).
    fn executable_by_proxy_uid(&self, path: &Path, name: &str) -> Result<PathBuf> {
        if others_can_execute(path) {
            return Ok(path.to_owned());
        }
        let target = self.dir.join(name);
        if !target.exists() {
            let real = std::fs::canonicalize(path)
                .with_context(|| format!("resolving {}", path.display()))?;
            if std::fs::hard_link(&real, &target).is_err() {
                std::fs::copy(&real, &target)
                    .with_context(|| format!("copying {} for uid 1337", real.display()))?;
            }
        }
        Ok(target)
    }

    /// The pids of every process the topology started (the collector's included), for
    /// benchmarks that pin them to CPUs.
    pub fn pids(&self) -> Vec<u32> {
        self.procs
            .iter()
            .map(|p| p.child.id())
            .chain(self.collector.as_ref().and_then(Collector::pid))
            .collect()
    }

    /// The pids of the sidecars (sidetrace's proxies, Envoys or relays; the front Envoy of
    /// [`Front::Envoy`] is not one), for benchmarks that count their CPU time.
    pub fn sidecar_pids(&self) -> Vec<u32> {
        self.procs
            .iter()
            .filter(|p| {
                Pod::MESHED.iter().any(|pod| {
                    SIDECAR_PROCESSES
                        .iter()
                        .any(|what| p.name == format!("{pod}-{what}"))
                })
            })
            .map(|p| p.child.id())
            .collect()
    }

    fn add_namespace(&mut self, name: &str) -> Result<()> {
        ns::ip(&["netns", "add", name])?;
        self.namespaces.push(name.to_owned());
        Ok(())
    }

    fn spawn(&mut self, pod: Pod, what: &str, mut cmd: Command) -> Result<()> {
        let name = format!("{pod}-{what}");
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = ns::spawn_in(&self.ns(pod), cmd).with_context(|| format!("starting {name}"))?;
        self.procs.push(Proc { name, child });
        Ok(())
    }

    /// Fail with a log tail if a process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        for p in &mut self.procs {
            if let Some(status) = p.child.try_wait()? {
                bail!(
                    "{} exited ({status}); log:\n{}",
                    p.name,
                    collector::tail(&self.dir.join(format!("{}.log", p.name)), 30)
                );
            }
        }
        Ok(())
    }

    async fn wait_ok(
        &mut self,
        from: &str,
        addr: SocketAddr,
        path: &str,
        what: &str,
    ) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_alive()?;
            match client::get(from, addr, path, &[]).await {
                Ok(r) if r.status.is_success() => return Ok(()),
                Ok(r) if Instant::now() > deadline => {
                    bail!("{what}: {path} answered {} {}", r.status, r.body)
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("{what} not ready after {READY_TIMEOUT:?}")));
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The namespace of `pod`.
    pub fn ns(&self, pod: Pod) -> String {
        format!("{}-{}", self.prefix, pod.name())
    }

    /// The directory holding every process's log and the rendered proxy configs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keep the logs after drop (and print where they are).
    pub fn keep_logs(&self) {
        self.keep.store(true, Ordering::Relaxed);
    }

    /// The collector.
    pub fn collector(&self) -> &Collector {
        self.collector
            .as_ref()
            .expect("the collector exists once start() returned")
    }

    /// The collector, to stop and resume it.
    pub fn collector_mut(&mut self) -> &mut Collector {
        self.collector
            .as_mut()
            .expect("the collector exists once start() returned")
    }

    /// GET `path` on `to`'s app port from inside `from`, with extra headers.
    pub async fn get(
        &self,
        from: Pod,
        to: Pod,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply> {
        client::get(&self.ns(from), to.app(), path, headers).await
    }

    /// Where `pod`'s proxy reads its config (the "mounted ConfigMap"), when it has one.
    pub fn proxy_config_path(&self, pod: Pod) -> Option<PathBuf> {
        let p = self.dir.join(format!("{pod}-proxy.yaml"));
        p.is_file().then_some(p)
    }

    /// Replace `pod`'s proxy config atomically (write, then rename over it), as a kubelet
    /// swaps a ConfigMap volume's contents.
    pub fn update_proxy_config(&self, pod: Pod, yaml: &str) -> Result<()> {
        let path = self
            .proxy_config_path(pod)
            .with_context(|| format!("{pod} has no proxy config"))?;
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// The proxy's Prometheus text from `pod`'s admin port (probed from the client pod).
    pub async fn metrics(&self, pod: Pod) -> Result<String> {
        let admin = SocketAddr::from((pod.ip(), defaults::ADMIN_PORT));
        let r = client::get(&self.ns(Pod::Client), admin, "/metrics", &[]).await?;
        if !r.status.is_success() {
            bail!("{pod} /metrics: {} {}", r.status, r.body);
        }
        Ok(r.body)
    }

    /// One series' value from `pod`'s proxy metrics (0 when the series is absent).
    pub async fn metric(&self, pod: Pod, series: &str) -> Result<f64> {
        Ok(metric_value(&self.metrics(pod).await?, series).unwrap_or(0.0))
    }

    /// Every span the collector holds for the meshed pods' services (deduplicated: a trace
    /// through several services is listed for each), polled until there are at least `want`;
    /// an error saying how many arrived after `timeout` (a hang guard).
    pub async fn wait_spans(&self, want: usize, timeout: Duration) -> Result<Vec<collector::Span>> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut seen = std::collections::BTreeSet::new();
            let mut spans = Vec::new();
            for pod in Pod::MESHED {
                let traces = self
                    .collector()
                    .traces(pod.service_name(), 10_000)
                    .await
                    .unwrap_or_default();
                for s in traces.into_iter().flatten() {
                    if seen.insert((s.trace_id.clone(), s.id.clone(), s.kind().to_owned())) {
                        spans.push(s);
                    }
                }
            }
            if spans.len() >= want {
                return Ok(spans);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} of {want} spans after {timeout:?}; front proxy log:\n{}",
                    spans.len(),
                    self.log_tail("front-proxy", 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The last lines of a process's log (`front-proxy`, `service1-app`, `collector`, ...).
    pub fn log_tail(&self, name: &str, n: usize) -> String {
        collector::tail(&self.dir.join(format!("{name}.log")), n)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        drop(self.collector.take());
        // Pods before the bridge namespace; destroy() also kills anything left inside.
        while let Some(name) = self.namespaces.pop() {
            ns::destroy(&name);
        }
        if std::thread::panicking() || self.keep.load(Ordering::Relaxed) {
            eprintln!("data-plane logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The value of `series` (name with its exact label set, e.g.
/// `sidetrace_proxy_connections_total{direction="inbound"}`) in Prometheus text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execute_permission_is_checked_along_the_path() {
        assert!(others_can_execute(Path::new("/bin/sh")));
        assert!(!others_can_execute(Path::new("/nonexistent/binary")));
        let dir = std::env::temp_dir().join(format!("st-exec-{}", std::process::id()));
        let private = dir.join("private");
        std::fs::create_dir_all(&private).unwrap();
        let bin = private.join("tool");
        std::fs::write(&bin, "").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o755)).unwrap();
        let open = others_can_execute(&bin);
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let closed = others_can_execute(&bin);
        let _ = std::fs::remove_dir_all(&dir);
        // /tmp itself may be mounted without o+x in odd sandboxes; only compare the two.
        assert!(!closed);
        assert!(open || !others_can_execute(&dir));
    }

    #[test]
    fn metric_values_are_found_by_exact_series() {
        let text =
            "# HELP x y\nsidetrace_a{d=\"in\"} 3\nsidetrace_a{d=\"inbound\"} 7\nsidetrace_b 1.5\n";
        assert_eq!(metric_value(text, "sidetrace_a{d=\"inbound\"}"), Some(7.0));
        assert_eq!(metric_value(text, "sidetrace_a{d=\"in\"}"), Some(3.0));
        assert_eq!(metric_value(text, "sidetrace_b"), Some(1.5));
        assert_eq!(metric_value(text, "sidetrace_c"), None);
    }

    #[test]
    fn recognises_only_data_plane_namespaces() {
        assert_eq!(owner_pid("st-4242-dp0-front"), Some(4242));
        assert_eq!(owner_pid("st-4242-dp13-net"), Some(4242));
        assert_eq!(owner_pid("st-4242-cp"), None);
        assert_eq!(owner_pid("st-4242-dp-front"), None);
        assert_eq!(owner_pid("st-x-dp0-front"), None);
        assert_eq!(owner_pid("other"), None);
    }

    #[test]
    fn init_args_match_the_webhook() {
        let a = init_args();
        let pos = a
            .iter()
            .position(|x| x == "--exclude-inbound-ports")
            .unwrap();
        assert_eq!(a[pos + 1], "15021");
        assert!(
            a.windows(2)
                .any(|w| w[0] == "--proxy-uid" && w[1] == "1337")
        );
    }

    #[test]
    fn service1_config_names_check_stock_outbound() {
        let yaml = proxy_config_yaml(Pod::Service1).unwrap().unwrap();
        let cfg = sidetrace_contract::ProxyConfig::from_yaml(&yaml).unwrap();
        let rule = &cfg.operations[0];
        assert_eq!(rule.name, "checkStock");
        assert!(rule.matches(
            sidetrace_contract::Direction::Outbound,
            "GET",
            "/trace/2",
            "10.250.1.13:8080"
        ));
        assert!(cfg.exclude_paths.contains(&"/healthz".to_owned()));
        assert!(proxy_config_yaml(Pod::Client).unwrap().is_none());
    }

    #[test]
    fn routes_follow_the_sandbox() {
        let a = Pod::Service1.app_args(Options::default());
        assert!(a.contains(&"/trace/1=http://10.250.1.13:8080/trace/2".to_owned()));
        let env = proxy_env(Pod::Front, "http://10.250.1.5:9411/api/v2/spans", None);
        assert!(env.contains(&(
            "SIDETRACE_SERVICE_NAME".to_owned(),
            "front-proxy".to_owned()
        )));
        assert!(!env.iter().any(|(k, _)| k == "SIDETRACE_CONFIG"));
    }
}

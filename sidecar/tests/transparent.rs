//! The real proxy in transparent mode: real iptables `REDIRECT` rules in a "pod" network
//! namespace wired by a veth pair to a "network" namespace, so the original destination comes
//! from `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST` exactly as in a pod (IPv4 and IPv6, through
//! the default dual-stack `::` listener).
//!
//! Rules are written by hand here (the init container's own rule generation is tested in
//! init-iptables); they are the minimal Istio-style pair: inbound app ports → 15006 in
//! PREROUTING, the app's outbound traffic to the peer → 15001 in OUTPUT except uid 1337. As
//! the init container does, `::6/128` is put on the pod's `lo`: the proxy forwards inbound
//! connections to the pod IP from the passthrough source 127.0.0.6 / ::6.
//! Processes run inside the namespaces with `ip netns exec` (the proxy as uid 1337 and the app
//! as uid 4242 through `setpriv`); the app, the peer and the collector are small Python HTTP
//! servers; curl is the client.
//!
//! Needs root, ip, iptables, ip6tables, setpriv, curl and python3; otherwise prints
//! `SKIP <test>: <reason>` and passes, except under `CI=true`, where it fails.
//! `SIDETRACE_SKIP_E2E=1` counts as a missing prerequisite. Namespaces are named
//! `st-<pid>-...`, use 10.250.7.0/24 and fd00:250:7::/64, have no default route, and are
//! deleted by a drop guard even when a test panics.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sidetrace-proxy");
const PROXY_UID: u32 = sidetrace_contract::defaults::PROXY_UID;
const APP_UID: u32 = 4242;
const APP_PORT: u16 = 8080;
/// A second app port, also captured, for apps bound to one address only.
const LOOPBACK_APP_PORT: u16 = 8081;
const PEER_PORT: u16 = 9000;
const COLLECTOR_PORT: u16 = 9411;
/// Bound on waiting for anything; a guard against hangs, never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(20);
/// The system Python: the app and proxy run as other uids, which cannot reach a per-user
/// interpreter (pyenv under /root).
const PYTHON: &str = "/usr/bin/python3";

const SERVERS_PY: &str = r#"
import http.server, json, socket, sys
mode, port = sys.argv[1], int(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def reply(self, body):
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        seen = {k.lower(): v for k, v in self.headers.items()}
        seen[":peer"] = self.client_address[0]
        self.reply(json.dumps(seen).encode())
    def do_POST(self):
        data = self.rfile.read(int(self.headers.get("content-length", "0")))
        with open(sys.argv[3], "ab") as f:
            f.write(data.replace(b"\n", b"") + b"\n")
        self.reply(b"{}")
    def log_message(self, *args):
        pass
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
class S4(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET
# argv[4] (optional): the one address to listen on, e.g. loopback only or the pod IP only.
bind = sys.argv[4] if len(sys.argv) > 4 else "::"
(S4 if "." in bind else S)((bind, port), H).serve_forever()
"#;

/// Returns why the test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if let Err(reason) = sidetrace_testkit::e2e_allowed() {
        return Some(reason);
    }
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(str::to_owned))
        });
    if uid.as_deref() != Some("0") {
        return Some("needs root (network namespaces and iptables)".into());
    }
    if !std::path::Path::new(PYTHON).exists() {
        return Some(format!("{PYTHON} not found"));
    }
    for tool in ["ip", "iptables", "ip6tables", "setpriv", "curl"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("{tool} not found"));
        }
    }
    None
}

fn skip_or_fail(test: &str) -> bool {
    sidetrace_testkit::skipped(test, missing_prerequisite().map_or(Ok(()), Err))
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A pod namespace and a network namespace joined by a veth pair; deleted on drop, with the
/// processes started in them.
struct Netns {
    pod: String,
    net: String,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Netns {
    fn new(tag: &str) -> Self {
        let pid = std::process::id();
        let pod = format!("st-{pid}-{tag}pod");
        let net = format!("st-{pid}-{tag}net");
        let dir = std::env::temp_dir().join(format!("st-{pid}-{tag}"));
        std::fs::create_dir_all(&dir).expect("dir");
        // Permissions: the proxy (1337) and app (4242) read the script and write nothing.
        std::fs::write(dir.join("servers.py"), SERVERS_PY).expect("script");
        let me = Self {
            pod,
            net,
            dir,
            children: Vec::new(),
        };
        let (vp, vn) = (format!("st{pid}{tag}p"), format!("st{pid}{tag}n"));
        run(&["ip", "netns", "add", &me.pod]);
        run(&["ip", "netns", "add", &me.net]);
        run(&[
            "ip", "link", "add", &vp, "netns", &me.pod, "type", "veth", "peer", "name", &vn,
            "netns", &me.net,
        ]);
        for (ns, dev, v4, v6) in [
            (&me.pod, &vp, "10.250.7.2/24", "fd00:250:7::2/64"),
            (&me.net, &vn, "10.250.7.1/24", "fd00:250:7::1/64"),
        ] {
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            run(&["ip", "-n", ns, "addr", "add", v4, "dev", dev]);
            run(&["ip", "-n", ns, "addr", "add", v6, "dev", dev, "nodad"]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        run(&[
            "ip", "-n", &me.pod, "-6", "addr", "add", "::6/128", "dev", "lo", "nodad",
        ]);
        for (tool, peer) in [("iptables", "10.250.7.1"), ("ip6tables", "fd00:250:7::1")] {
            let inbound = format!(
                "-t nat -A PREROUTING -p tcp --dport {APP_PORT}:{LOOPBACK_APP_PORT} -j REDIRECT --to-ports 15006"
            );
            let outbound = format!(
                "-t nat -A OUTPUT -p tcp -d {peer} --dport {PEER_PORT} -m owner ! --uid-owner {PROXY_UID} -j REDIRECT --to-ports 15001"
            );
            for rule in [inbound, outbound] {
                let mut args = vec!["ip", "netns", "exec", &me.pod, tool];
                args.extend(rule.split(' '));
                run(&args);
            }
        }
        me
    }

    fn spawn(&mut self, ns_is_pod: bool, uid: Option<u32>, cmd: &[&str], log: &str) {
        let ns = if ns_is_pod { &self.pod } else { &self.net };
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]);
        if let Some(uid) = uid {
            c.args([
                "setpriv",
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
            ]);
        }
        let log = std::fs::File::create(self.dir.join(log)).expect("log");
        c.args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.children.push(c.spawn().expect("spawn in netns"));
    }

    fn exec(&self, ns_is_pod: bool, uid: Option<u32>, cmd: &[&str]) -> Output {
        let ns = if ns_is_pod { &self.pod } else { &self.net };
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]);
        if let Some(uid) = uid {
            c.args([
                "setpriv",
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
            ]);
        }
        c.args(cmd).output().expect("exec in netns")
    }

    fn curl(&self, ns_is_pod: bool, uid: Option<u32>, url: &str) -> Option<Value> {
        let out = self.exec(
            ns_is_pod,
            uid,
            &[
                "curl",
                "-sS",
                "-g",
                "--max-time",
                "10",
                "-H",
                "x-request-id: netns-1",
                url,
            ],
        );
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("JSON from the echo server"))
    }

    fn wait_until(&self, what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for name in ["proxy.log", "app.log", "peer.log", "collector.log"] {
            s += &format!(
                "--- {name} ---\n{}\n",
                std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
            );
        }
        s
    }

    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("spans.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Vec<Value>>(l).ok())
            .flatten()
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for ns in [&self.pod, &self.net] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn transparent_proxying(tag: &str, pod_ip: &str, peer_ip: &str) {
    let mut ns = Netns::new(tag);
    let script = ns.dir.join("servers.py");
    let script = script.to_str().expect("utf-8 path");
    let spans = ns.dir.join("spans.jsonl");
    let spans_path = spans.to_str().expect("utf-8 path");
    let pod_url = |port: u16, path: &str| format!("http://{}{path}", host_port(pod_ip, port));
    let peer_url = |port: u16, path: &str| format!("http://{}{path}", host_port(peer_ip, port));
    let collector = peer_url(COLLECTOR_PORT, "/api/v2/spans");

    ns.spawn(
        true,
        Some(APP_UID),
        &[PYTHON, script, "echo", &APP_PORT.to_string()],
        "app.log",
    );
    ns.spawn(
        false,
        None,
        &[PYTHON, script, "echo", &PEER_PORT.to_string()],
        "peer.log",
    );
    ns.spawn(
        false,
        None,
        &[
            PYTHON,
            script,
            "collect",
            &COLLECTOR_PORT.to_string(),
            spans_path,
        ],
        "collector.log",
    );
    ns.spawn(
        true,
        Some(PROXY_UID),
        &[
            BIN,
            "--service-name",
            "pod-svc",
            "--collector",
            &collector,
            "--export-interval",
            "50ms",
            "--pod-ip",
            "10.250.7.2",
            "--log-level",
            "debug",
        ],
        "proxy.log",
    );
    ns.wait_until("proxy ready", || {
        ns.exec(true, None, &["curl", "-sf", "http://127.0.0.1:15021/ready"])
            .status
            .success()
    });
    ns.wait_until("app and peer up", || {
        ns.exec(
            true,
            Some(PROXY_UID),
            &["curl", "-sf", &format!("http://127.0.0.1:{APP_PORT}/")],
        )
        .status
        .success()
            && ns
                .exec(
                    false,
                    None,
                    &["curl", "-sf", "-g", &peer_url(PEER_PORT, "/")],
                )
                .status
                .success()
    });

    // Inbound: the network namespace calls the pod's app port; iptables sends it to 15006, the
    // proxy reads the original destination and forwards to the app on loopback.
    let seen = ns
        .curl(false, None, &pod_url(APP_PORT, "/in"))
        .expect("inbound request through the proxy");
    let trace = seen["x-b3-traceid"]
        .as_str()
        .expect("x-b3-traceid added by the proxy");
    assert_eq!(trace.len(), 32, "{seen}");
    assert_eq!(seen["x-request-id"], "netns-1");
    let passthrough = if pod_ip.contains(':') {
        "::6"
    } else {
        "127.0.0.6"
    };
    assert!(
        seen[":peer"]
            .as_str()
            .is_some_and(|p| p.trim_start_matches("::ffff:") == passthrough),
        "the proxy reaches the app at the pod IP from the passthrough source: {seen}"
    );

    // Outbound: the app (uid 4242) calls the peer; iptables sends it to 15001, the proxy
    // forwards to the original destination as uid 1337, which is not captured again.
    let seen = ns
        .curl(true, Some(APP_UID), &peer_url(PEER_PORT, "/out"))
        .expect("outbound request through the proxy");
    assert!(
        seen["x-b3-spanid"].as_str().is_some_and(|s| s.len() == 16),
        "{seen}"
    );

    // A direct connect to the capture port is not a redirect: closed, never looped.
    let direct = ns.exec(
        false,
        None,
        &[
            "curl",
            "-sS",
            "-g",
            "--max-time",
            "10",
            &pod_url(15006, "/"),
        ],
    );
    assert!(
        !direct.status.success(),
        "direct connect must be refused: {}",
        String::from_utf8_lossy(&direct.stdout)
    );
    let metrics = ns.exec(
        true,
        None,
        &["curl", "-sf", "http://127.0.0.1:15021/metrics"],
    );
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("sidetrace_proxy_connections_refused_total{direction=\"inbound\"")
            && !l.ends_with(" 0")),
        "{metrics}"
    );

    ns.wait_until("two spans at the collector", || ns.spans().len() >= 2);
    let spans = ns.spans();
    let server = spans
        .iter()
        .find(|s| s["kind"] == "SERVER")
        .expect("server span");
    assert_eq!(server["traceId"], trace);
    assert_eq!(server["name"], "GET /in");
    assert_eq!(server["localEndpoint"]["serviceName"], "pod-svc");
    assert_eq!(server["localEndpoint"]["port"], APP_PORT);
    let client = spans
        .iter()
        .find(|s| s["kind"] == "CLIENT")
        .expect("client span");
    assert_eq!(
        client["tags"]["upstream_address"],
        host_port(peer_ip, PEER_PORT)
    );
    // Endpoints name the right sides: the pod is local on both spans, the callee is remote.
    let family = if pod_ip.contains(':') { "ipv6" } else { "ipv4" };
    assert_eq!(server["localEndpoint"][family], pod_ip, "{server}");
    assert_eq!(client["localEndpoint"][family], pod_ip, "{client}");
    assert_eq!(client["localEndpoint"]["serviceName"], "pod-svc");
    assert_eq!(client["remoteEndpoint"][family], peer_ip, "{client}");
    assert_eq!(client["remoteEndpoint"]["port"], PEER_PORT, "{client}");
    assert_eq!(server["remoteEndpoint"][family], peer_ip, "{server}");
}

/// Inbound connections go to the original destination (the pod IP), never to loopback: an app
/// port bound only to 127.0.0.1 / ::1 stays private to the pod even though the proxy captures
/// it, and an app bound only to the pod IP is reachable through the proxy.
fn inbound_keeps_loopback_private(tag: &str, pod_ip: &str, loopback: &str) {
    let mut ns = Netns::new(tag);
    let script = ns.dir.join("servers.py");
    let script = script.to_str().expect("utf-8 path");
    let url = |port: u16| format!("http://{}/x", host_port(pod_ip, port));
    let (app, private) = (APP_PORT.to_string(), LOOPBACK_APP_PORT.to_string());
    ns.spawn(
        true,
        Some(APP_UID),
        &[PYTHON, script, "echo", &app, "-", pod_ip],
        "app.log",
    );
    ns.spawn(
        true,
        Some(APP_UID),
        &[PYTHON, script, "echo", &private, "-", loopback],
        "peer.log",
    );
    ns.spawn(
        true,
        Some(PROXY_UID),
        &[
            BIN,
            "--service-name",
            "pod-svc",
            "--collector",
            "http://127.0.0.1:1/api/v2/spans",
            "--log-level",
            "debug",
        ],
        "proxy.log",
    );
    ns.wait_until("proxy ready", || {
        ns.exec(true, None, &["curl", "-sf", "http://127.0.0.1:15021/ready"])
            .status
            .success()
    });
    let loopback_url = format!("http://{}/x", host_port(loopback, LOOPBACK_APP_PORT));
    ns.wait_until("both apps listening", || {
        ns.exec(
            true,
            Some(PROXY_UID),
            &["curl", "-sf", "-g", &url(APP_PORT)],
        )
        .status
        .success()
            && ns
                .exec(true, Some(PROXY_UID), &["curl", "-sf", "-g", &loopback_url])
                .status
                .success()
    });
    let seen = ns
        .curl(false, None, &url(APP_PORT))
        .expect("an app bound only to the pod IP is reachable through the proxy");
    assert_eq!(seen["x-request-id"], "netns-1", "{seen}");
    let out = ns.exec(
        false,
        None,
        &[
            "curl",
            "-sS",
            "-g",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url(LOOPBACK_APP_PORT),
        ],
    );
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_ne!(
        code,
        "200",
        "a port bound to {loopback} answered another pod through the proxy\n{}",
        ns.logs()
    );
}

fn host_port(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

#[test]
fn transparent_ipv4_inbound_and_outbound_use_so_original_dst() {
    if skip_or_fail("transparent_ipv4_inbound_and_outbound_use_so_original_dst") {
        return;
    }
    transparent_proxying("4", "10.250.7.2", "10.250.7.1");
}

#[test]
fn transparent_ipv6_inbound_and_outbound_use_ip6t_so_original_dst() {
    if skip_or_fail("transparent_ipv6_inbound_and_outbound_use_ip6t_so_original_dst") {
        return;
    }
    transparent_proxying("6", "fd00:250:7::2", "fd00:250:7::1");
}

#[test]
fn inbound_ipv4_goes_to_the_pod_ip_and_loopback_only_ports_stay_private() {
    if skip_or_fail("inbound_ipv4_goes_to_the_pod_ip_and_loopback_only_ports_stay_private") {
        return;
    }
    inbound_keeps_loopback_private("4l", "10.250.7.2", "127.0.0.1");
}

#[test]
fn inbound_ipv6_goes_to_the_pod_ip_and_loopback_only_ports_stay_private() {
    if skip_or_fail("inbound_ipv6_goes_to_the_pod_ip_and_loopback_only_ports_stay_private") {
        return;
    }
    inbound_keeps_loopback_private("6l", "fd00:250:7::2", "::1");
}

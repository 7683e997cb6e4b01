//! The real `sidetrace-init` binary in real network namespaces, proven with real sockets.
//!
//! Each test builds a "pod" namespace wired by a veth pair to a "network" namespace (addresses
//! in 10.250.0.0/16 and fd00:250::/64, no default route, names `st-<pid>-...`), runs the binary
//! inside the pod with `ip netns exec`, then opens listeners for the proxy's capture ports, the
//! app and the remote peer, makes connections, and checks which listener each one lands on and
//! what `SO_ORIGINAL_DST` reports. Sockets are created inside a namespace by a short-lived
//! thread that `setns`es first; connections that must come from another uid (the proxy's 1337,
//! an app uid) come from this very test binary re-executed under `setpriv` as a tiny client.
//!
//! It has its own `main` (harness = false) for that re-execution. Needs root, `ip`, `setpriv`
//! and iptables; otherwise it prints `SKIP netns: <reason>` and passes, except under
//! `CI=true`, where it fails. `SIDETRACE_SKIP_E2E=1` counts as a missing prerequisite.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Child, Command, ExitCode, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sidetrace-init");
const HELPER: &str = "--st-helper";
/// Upper bound for a connection to show up; a bound for failure, never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(5);

const PROXY_UID: u32 = sidetrace_contract::defaults::PROXY_UID;
const INBOUND: u16 = sidetrace_contract::defaults::INBOUND_CAPTURE_PORT;
const OUTBOUND: u16 = sidetrace_contract::defaults::OUTBOUND_CAPTURE_PORT;
const ADMIN: u16 = sidetrace_contract::defaults::ADMIN_PORT;
/// A uid that is neither root nor the proxy: the app.
const APP_UID: u32 = 4242;
const APP_PORT: u16 = 8080;

const POD4: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
const PEER4: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
/// A second peer address, behind a route (not on-link), for CIDR exclusion and inclusion.
const FAR4: Ipv4Addr = Ipv4Addr::new(10, 250, 1, 1);
const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 2);
const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 1);

// ---------------------------------------------------------------------------------------------
// Runner

type Test = (&'static str, fn());

const TESTS: &[Test] = &[
    (
        "default_rules_capture_inbound_and_outbound",
        default_rules_capture_inbound_and_outbound,
    ),
    ("loopback_and_self_calls", loopback_and_self_calls),
    (
        "excluded_ports_and_cidrs_are_not_redirected",
        excluded_ports_and_cidrs_are_not_redirected,
    ),
    (
        "include_cidrs_limit_outbound_capture",
        include_cidrs_limit_outbound_capture,
    ),
    (
        "inbound_port_list_captures_only_listed_ports",
        inbound_port_list_captures_only_listed_ports,
    ),
    (
        "rerun_is_idempotent_and_cleanup_restores",
        rerun_is_idempotent_and_cleanup_restores,
    ),
    ("dry_run_changes_nothing", dry_run_changes_nothing),
    (
        "golden_rules_load_verbatim_in_both_backends",
        golden_rules_load_verbatim_in_both_backends,
    ),
    (
        "detection_follows_existing_legacy_rules",
        detection_follows_existing_legacy_rules,
    ),
    (
        "without_privileges_exit_1_naming_net_admin",
        without_privileges_exit_1_naming_net_admin,
    ),
    ("ipv6_inbound_and_outbound", ipv6_inbound_and_outbound),
    (
        "ipv6_is_captured_by_default_exactly_when_the_pod_has_an_ipv6_address",
        ipv6_is_captured_by_default_exactly_when_the_pod_has_an_ipv6_address,
    ),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(HELPER) {
        return helper(&args[2..]);
    }
    // libtest-style arguments: the first free word filters tests by substring.
    let filter = args.iter().skip(1).find(|a| !a.starts_with('-')).cloned();
    let selected: Vec<&Test> = TESTS
        .iter()
        .filter(|(name, _)| filter.as_deref().is_none_or(|f| name.contains(f)))
        .collect();
    if selected.is_empty() {
        return ExitCode::SUCCESS;
    }
    if let Err(reason) = prerequisites() {
        return match sidetrace_testkit::skip_or_ci_failure("netns", &reason) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("FAIL {message}");
                ExitCode::FAILURE
            }
        };
    }
    println!("\nrunning {} tests", selected.len());
    let mut failed = Vec::new();
    for (name, test) in selected.iter().copied() {
        let result = catch_unwind(AssertUnwindSafe(test));
        println!(
            "test {name} ... {}",
            if result.is_ok() { "ok" } else { "FAILED" }
        );
        if result.is_err() {
            failed.push(*name);
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        selected.len() - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failures: {failed:?}");
        ExitCode::from(101)
    }
}

fn prerequisites() -> Result<(), String> {
    sidetrace_testkit::e2e_allowed()?;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned));
    if euid.as_deref() != Some("0") {
        return Err("network namespaces and iptables need root (run the tests as root)".into());
    }
    for tool in ["ip", "setpriv", "iptables-nft-save", "iptables-legacy-save"] {
        let found = Command::new(tool)
            .arg(if tool == "ip" { "-V" } else { "--version" })
            .env("PATH", path())
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!("`{tool}` is not installed"));
        }
    }
    Ok(())
}

fn path() -> String {
    let current = std::env::var("PATH").unwrap_or_default();
    format!("{current}:/usr/local/sbin:/usr/sbin:/sbin")
}

// ---------------------------------------------------------------------------------------------
// Helper mode: the test binary re-executed (under setpriv, inside the pod) as a client.

fn helper(args: &[String]) -> ExitCode {
    let result = match args.first().map(String::as_str) {
        Some("connect") => helper_connect(&args[1..]),
        Some("udp") => helper_udp(&args[1..]),
        other => Err(format!("unknown helper command {other:?}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("helper: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Connects, reports `connected`, and holds the connection until stdin closes.
/// Arguments: the destination, and optionally an IPv4 source address to bind first.
fn helper_connect(args: &[String]) -> Result<(), String> {
    let addr: SocketAddr = args
        .first()
        .ok_or("missing address")?
        .parse()
        .map_err(|e| format!("bad address: {e}"))?;
    let stream = match (args.get(1), addr) {
        (None, _) => TcpStream::connect_timeout(&addr, PATIENCE),
        (Some(source), SocketAddr::V4(to)) => {
            let source: Ipv4Addr = source.parse().map_err(|e| format!("bad source: {e}"))?;
            connect_from(source, to)
        }
        (Some(_), SocketAddr::V6(_)) => return Err("a source address is IPv4 only".into()),
    }
    .map_err(|e| format!("connect {addr}: {e}"))?;
    println!(
        "connected {}",
        stream.local_addr().map_err(|e| e.to_string())?
    );
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

/// Arguments: destination and payload; sends one datagram.
fn helper_udp(args: &[String]) -> Result<(), String> {
    let (Some(addr), Some(payload)) = (args.first(), args.get(1)) else {
        return Err("usage: udp <addr> <payload>".into());
    };
    let addr: SocketAddr = addr.parse().map_err(|e| format!("bad address: {e}"))?;
    let socket = UdpSocket::bind(any4(0)).map_err(|e| e.to_string())?;
    socket
        .send_to(payload.as_bytes(), addr)
        .map_err(|e| format!("send to {addr}: {e}"))?;
    Ok(())
}

fn sockaddr_v4(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Binds `source` and then connects: what a proxy does to forward from 127.0.0.6. std has no
/// bind-before-connect for TCP, hence the raw calls.
#[allow(unsafe_code)]
fn connect_from(source: Ipv4Addr, to: SocketAddrV4) -> std::io::Result<TcpStream> {
    let last = std::io::Error::last_os_error;
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: socket(2) takes no pointers; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last());
    }
    // SAFETY: fd is a fresh, valid socket that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let src = sockaddr_v4(source, 0);
    // SAFETY: src lives on the stack for the call and len is its size.
    if unsafe { libc::bind(sock.as_raw_fd(), (&raw const src).cast(), len) } != 0 {
        return Err(last());
    }
    let dst = sockaddr_v4(*to.ip(), to.port());
    // SAFETY: as above, for dst.
    if unsafe { libc::connect(sock.as_raw_fd(), (&raw const dst).cast(), len) } != 0 {
        return Err(last());
    }
    Ok(TcpStream::from(sock))
}

// ---------------------------------------------------------------------------------------------
// Namespaces

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A pod namespace and a network namespace joined by a veth pair; deleted on drop.
struct Topology {
    pod: String,
    net: String,
}

fn sh(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("PATH", path())
        .output()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"))
}

fn must(program: &str, args: &[&str]) -> String {
    let out = sh(program, args);
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Topology {
    fn new() -> Topology {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let topo = Topology {
            pod: format!("st-{pid}-{n}-pod"),
            net: format!("st-{pid}-{n}-net"),
        };
        // Drop deletes both names, so even a failure half-way leaves nothing behind.
        must("ip", &["netns", "add", &topo.pod]);
        must("ip", &["netns", "add", &topo.net]);
        let (pod, net) = (topo.pod.as_str(), topo.net.as_str());
        for ns in [pod, net] {
            must("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        must(
            "ip",
            &[
                "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
                net,
            ],
        );
        must(
            "ip",
            &["-n", pod, "addr", "add", "10.250.0.2/30", "dev", "eth0"],
        );
        must(
            "ip",
            &["-n", net, "addr", "add", "10.250.0.1/30", "dev", "eth0"],
        );
        must(
            "ip",
            &["-n", net, "addr", "add", "10.250.1.1/32", "dev", "eth0"],
        );
        must(
            "ip",
            &[
                "-n",
                pod,
                "-6",
                "addr",
                "add",
                "fd00:250::2/64",
                "dev",
                "eth0",
                "nodad",
            ],
        );
        must(
            "ip",
            &[
                "-n",
                net,
                "-6",
                "addr",
                "add",
                "fd00:250::1/64",
                "dev",
                "eth0",
                "nodad",
            ],
        );
        for ns in [pod, net] {
            must("ip", &["-n", ns, "link", "set", "eth0", "up"]);
        }
        // The far address is reached through the peer; there is no default route.
        must(
            "ip",
            &[
                "-n",
                pod,
                "route",
                "add",
                "10.250.1.0/24",
                "via",
                "10.250.0.1",
            ],
        );
        topo
    }

    /// Runs the real binary inside the pod namespace.
    fn init(&self, args: &[&str]) -> Output {
        let mut argv = vec!["netns", "exec", self.pod.as_str(), BIN];
        argv.extend_from_slice(args);
        sh("ip", &argv)
    }

    fn init_ok(&self, args: &[&str]) -> String {
        let out = self.init(args);
        assert!(
            out.status.success(),
            "sidetrace-init {args:?} failed ({:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pod's nat table as a save tool prints it, minus comments and counters.
    fn nat(&self, tool: &str) -> String {
        normalize(&must(
            "ip",
            &["netns", "exec", &self.pod, tool, "-t", "nat"],
        ))
    }

    /// A client in the pod running as `uid`/`gid`, connected to `addr` until dropped.
    fn client_as(&self, uid: u32, gid: u32, addr: SocketAddr) -> HelperClient {
        self.client_from(uid, gid, addr, None)
    }

    /// Like [`Topology::client_as`], binding an IPv4 `source` address first.
    fn client_from(
        &self,
        uid: u32,
        gid: u32,
        addr: SocketAddr,
        source: Option<Ipv4Addr>,
    ) -> HelperClient {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.pod, "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg("--")
            .arg(exe)
            .args([HELPER, "connect", &addr.to_string()])
            .args(source.map(|s| s.to_string()))
            .env("PATH", path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn helper");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("helper stdout");
        let _ = BufReader::new(stdout).read_line(&mut line);
        let client = HelperClient { child };
        if !line.starts_with("connected") {
            let mut client = client;
            let mut err = String::new();
            if let Some(mut e) = client.child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("helper as uid {uid} gid {gid} could not connect to {addr}: {err}");
        }
        client
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.net] {
            let _ = sh("ip", &["netns", "del", ns]);
        }
    }
}

/// A connected helper process; dropping it closes its stdin, kills and reaps it.
struct HelperClient {
    child: Child,
}

impl Drop for HelperClient {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn normalize(save: &str) -> String {
    save.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.rfind(" [") {
            Some(i) if l.starts_with(':') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `f` on a thread that first joins the network namespace `ns`; sockets `f` creates
/// belong to that namespace for their whole life, whichever thread uses them later.
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let file = File::open(format!("/run/netns/{ns}")).expect("open netns");
    thread::scope(|s| {
        s.spawn(|| {
            setns(&file).expect("setns");
            f()
        })
        .join()
        .expect("namespace thread panicked")
    })
}

#[allow(unsafe_code)]
fn setns(file: &File) -> std::io::Result<()> {
    // SAFETY: setns reads a valid fd that `file` keeps open for the call and only changes the
    // calling thread's network namespace; `in_ns` runs it on a thread of its own.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The destination a connection had before NAT (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`).
#[allow(unsafe_code)]
fn original_dst(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let fd = stream.as_raw_fd();
    let v4 = match stream.local_addr()? {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    if v4 {
        let mut addr = libc::sockaddr_in {
            sin_family: 0,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: 0 },
            sin_zero: [0; 8],
        };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: addr and len are valid, writable, and len holds addr's size.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IP,
                libc::SO_ORIGINAL_DST,
                (&raw mut addr).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        Ok(SocketAddr::new(IpAddr::V4(ip), u16::from_be(addr.sin_port)))
    } else {
        let mut addr = libc::sockaddr_in6 {
            sin6_family: 0,
            sin6_port: 0,
            sin6_flowinfo: 0,
            sin6_addr: libc::in6_addr { s6_addr: [0; 16] },
            sin6_scope_id: 0,
        };
        let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: as above, with a sockaddr_in6.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IPV6,
                libc::IP6T_SO_ORIGINAL_DST,
                (&raw mut addr).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
        Ok(SocketAddr::new(
            IpAddr::V6(ip),
            u16::from_be(addr.sin6_port),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Listeners and landings

/// Named listeners; a connection "lands" on exactly one of them.
struct Listeners {
    all: Vec<(String, TcpListener)>,
}

/// Where a connection arrived and what the kernel says its original destination was.
#[derive(Debug)]
struct Landing {
    on: String,
    original_dst: SocketAddr,
    _stream: TcpStream,
}

impl Listeners {
    fn new() -> Listeners {
        Listeners { all: Vec::new() }
    }

    fn add(&mut self, ns: &str, label: &str, addr: SocketAddr) {
        let listener = in_ns(ns, || TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("bind {label} {addr}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        self.all.push((label.to_owned(), listener));
    }

    /// Waits for the one connection just made and says where it landed.
    fn landing(&self) -> Landing {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut got: Vec<Landing> = Vec::new();
            for (label, listener) in &self.all {
                while let Ok((stream, _)) = listener.accept() {
                    // Without a conntrack entry (the network namespace has no nat table)
                    // nothing was translated: the original destination is the local address.
                    let original_dst = match original_dst(&stream) {
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            stream.local_addr().expect("local address")
                        }
                        other => other.expect("SO_ORIGINAL_DST"),
                    };
                    got.push(Landing {
                        on: label.clone(),
                        original_dst,
                        _stream: stream,
                    });
                }
            }
            match got.len() {
                0 if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                0 => panic!("the connection reached none of the listeners"),
                1 => return got.pop().expect("one landing"),
                _ => panic!("one connection, several landings: {got:?}"),
            }
        }
    }

    /// Connects from namespace `ns` as root and checks where it lands.
    fn expect(&self, ns: &str, to: SocketAddr, on: &str, original_dst: SocketAddr) {
        let stream = in_ns(ns, || TcpStream::connect_timeout(&to, PATIENCE))
            .unwrap_or_else(|e| panic!("connect to {to} from {ns}: {e}"));
        self.check(&format!("root in {ns} -> {to}"), on, original_dst);
        drop(stream);
    }

    fn check(&self, what: &str, on: &str, original_dst: SocketAddr) {
        let landing = self.landing();
        assert_eq!(landing.on, on, "{what}: landed on {}", landing.on);
        assert_eq!(
            landing.original_dst, original_dst,
            "{what}: original destination"
        );
    }

    /// Connects from the pod as `uid`/`gid` and checks where it lands.
    fn expect_as(
        &self,
        topo: &Topology,
        uid: u32,
        gid: u32,
        to: SocketAddr,
        on: &str,
        original_dst: SocketAddr,
    ) {
        let client = topo.client_as(uid, gid, to);
        self.check(&format!("uid {uid} gid {gid} -> {to}"), on, original_dst);
        drop(client);
    }
}

fn v4(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

fn v6(ip: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(ip), port)
}

fn any4(port: u16) -> SocketAddr {
    v4(Ipv4Addr::UNSPECIFIED, port)
}

/// The pod's listeners (proxy inbound/outbound/admin, the app on 8080 and 9090) and the
/// network's (8080 and 9000 on every address).
fn standard_listeners(topo: &Topology) -> Listeners {
    let mut l = Listeners::new();
    l.add(&topo.pod, "proxy-inbound", any4(INBOUND));
    l.add(&topo.pod, "proxy-outbound", any4(OUTBOUND));
    l.add(&topo.pod, "proxy-admin", any4(ADMIN));
    l.add(&topo.pod, "app", any4(APP_PORT));
    l.add(&topo.pod, "app-9090", any4(9090));
    l.add(&topo.net, "peer", any4(APP_PORT));
    l.add(&topo.net, "peer-9000", any4(9000));
    l
}

// ---------------------------------------------------------------------------------------------
// Tests

fn default_rules_capture_inbound_and_outbound() {
    let topo = Topology::new();
    let l = standard_listeners(&topo);
    topo.init_ok(&[]);
    let (pod, net) = (&topo.pod, &topo.net);

    // Inbound from the network to an app port reaches the proxy, which learns the original.
    l.expect(net, v4(POD4, APP_PORT), "proxy-inbound", v4(POD4, APP_PORT));
    l.expect(net, v4(POD4, 9090), "proxy-inbound", v4(POD4, 9090));
    // The admin port (kubelet probes) is never captured.
    l.expect(net, v4(POD4, ADMIN), "proxy-admin", v4(POD4, ADMIN));

    // Outbound from root and from the app's uid reaches the proxy's outbound port.
    l.expect(
        pod,
        v4(PEER4, APP_PORT),
        "proxy-outbound",
        v4(PEER4, APP_PORT),
    );
    l.expect_as(
        &topo,
        APP_UID,
        APP_UID,
        v4(PEER4, APP_PORT),
        "proxy-outbound",
        v4(PEER4, APP_PORT),
    );
    l.expect_as(
        &topo,
        APP_UID,
        APP_UID,
        v4(FAR4, APP_PORT),
        "proxy-outbound",
        v4(FAR4, APP_PORT),
    );

    // The proxy's own connections, by uid or by gid alone, go straight out: no loop.
    l.expect_as(
        &topo,
        PROXY_UID,
        PROXY_UID,
        v4(PEER4, APP_PORT),
        "peer",
        v4(PEER4, APP_PORT),
    );
    l.expect_as(
        &topo,
        APP_UID,
        PROXY_UID,
        v4(PEER4, APP_PORT),
        "peer",
        v4(PEER4, APP_PORT),
    );
}

fn loopback_and_self_calls() {
    let topo = Topology::new();
    let l = standard_listeners(&topo);
    topo.init_ok(&[]);
    let lo = Ipv4Addr::LOCALHOST;

    // The proxy forwarding to the app on 127.0.0.1 is not redirected.
    l.expect_as(
        &topo,
        PROXY_UID,
        PROXY_UID,
        v4(lo, APP_PORT),
        "app",
        v4(lo, APP_PORT),
    );
    // The app calling itself, on localhost or its pod IP, stays direct.
    l.expect_as(
        &topo,
        APP_UID,
        APP_UID,
        v4(lo, APP_PORT),
        "app",
        v4(lo, APP_PORT),
    );
    l.expect_as(
        &topo,
        APP_UID,
        APP_UID,
        v4(POD4, APP_PORT),
        "app",
        v4(POD4, APP_PORT),
    );
    // The app reaching the proxy's admin port locally stays direct.
    l.expect_as(
        &topo,
        APP_UID,
        APP_UID,
        v4(lo, ADMIN),
        "proxy-admin",
        v4(lo, ADMIN),
    );
    // The proxy calling the pod's own IP (the app called itself through the outbound proxy)
    // is inbound traffic for the app: it goes through the inbound port...
    l.expect_as(
        &topo,
        PROXY_UID,
        PROXY_UID,
        v4(POD4, APP_PORT),
        "proxy-inbound",
        v4(POD4, APP_PORT),
    );
    // ...except to ports excluded from inbound capture, like the admin port.
    l.expect_as(
        &topo,
        PROXY_UID,
        PROXY_UID,
        v4(POD4, ADMIN),
        "proxy-admin",
        v4(POD4, ADMIN),
    );
    // The proxy forwarding to the app at the pod IP from the passthrough source 127.0.0.6
    // is not captured again.
    let client = topo.client_from(
        PROXY_UID,
        PROXY_UID,
        v4(POD4, APP_PORT),
        Some(Ipv4Addr::new(127, 0, 0, 6)),
    );
    l.check("proxy from 127.0.0.6 -> pod IP", "app", v4(POD4, APP_PORT));
    drop(client);
}

fn excluded_ports_and_cidrs_are_not_redirected() {
    let topo = Topology::new();
    let l = standard_listeners(&topo);
    topo.init_ok(&[
        "--exclude-outbound-ports",
        "9000",
        "--exclude-outbound-cidrs",
        "10.250.1.0/24",
        "--exclude-inbound-ports",
        "9090",
    ]);
    let (pod, net) = (&topo.pod, &topo.net);
    l.expect(pod, v4(PEER4, 9000), "peer-9000", v4(PEER4, 9000));
    l.expect(pod, v4(FAR4, APP_PORT), "peer", v4(FAR4, APP_PORT));
    l.expect(
        pod,
        v4(PEER4, APP_PORT),
        "proxy-outbound",
        v4(PEER4, APP_PORT),
    );
    l.expect(net, v4(POD4, 9090), "app-9090", v4(POD4, 9090));
    l.expect(net, v4(POD4, APP_PORT), "proxy-inbound", v4(POD4, APP_PORT));
}

fn include_cidrs_limit_outbound_capture() {
    let topo = Topology::new();
    let l = standard_listeners(&topo);
    topo.init_ok(&["--include-outbound-cidrs", "10.250.1.0/24"]);
    let pod = &topo.pod;
    l.expect(pod, v4(PEER4, APP_PORT), "peer", v4(PEER4, APP_PORT));
    l.expect(
        pod,
        v4(FAR4, APP_PORT),
        "proxy-outbound",
        v4(FAR4, APP_PORT),
    );
}

fn inbound_port_list_captures_only_listed_ports() {
    let topo = Topology::new();
    let l = standard_listeners(&topo);
    topo.init_ok(&["--inbound-ports", "8080"]);
    let net = &topo.net;
    l.expect(net, v4(POD4, APP_PORT), "proxy-inbound", v4(POD4, APP_PORT));
    l.expect(net, v4(POD4, 9090), "app-9090", v4(POD4, 9090));
    l.expect(net, v4(POD4, ADMIN), "proxy-admin", v4(POD4, ADMIN));
}

fn rerun_is_idempotent_and_cleanup_restores() {
    let topo = Topology::new();
    let l = standard_listeners(&topo);
    let pristine = topo.nat("iptables-nft-save");
    topo.init_ok(&[]);
    let once = topo.nat("iptables-nft-save");
    topo.init_ok(&[]);
    let twice = topo.nat("iptables-nft-save");
    assert_eq!(once, twice, "a second run changed the table");
    assert_eq!(
        once.matches("-A PREROUTING -p tcp -j SIDETRACE_INBOUND")
            .count(),
        1
    );
    assert_eq!(
        once.matches("-A OUTPUT -p tcp -j SIDETRACE_OUTPUT").count(),
        1
    );

    // A changed configuration replaces the old one, stale rules and jumps included: without
    // inbound capture PREROUTING has no jump and SIDETRACE_INBOUND no rule; both come back.
    topo.init_ok(&["--inbound-ports", ""]);
    let outbound_only = topo.nat("iptables-nft-save");
    assert!(
        !outbound_only.contains("-A PREROUTING -p tcp -j SIDETRACE_INBOUND"),
        "{outbound_only}"
    );
    assert!(
        !outbound_only.contains("-A SIDETRACE_INBOUND -p tcp -j SIDETRACE_IN_REDIRECT"),
        "{outbound_only}"
    );
    assert!(
        outbound_only.contains("-A OUTPUT -p tcp -j SIDETRACE_OUTPUT"),
        "{outbound_only}"
    );
    topo.init_ok(&[]);
    assert_eq!(
        topo.nat("iptables-nft-save"),
        once,
        "turning inbound capture back on left residue or lost a rule"
    );

    topo.init_ok(&["--cleanup"]);
    let cleaned = topo.nat("iptables-nft-save");
    assert!(!cleaned.contains("SIDETRACE"), "{cleaned}");
    assert_eq!(cleaned, pristine);
    assert!(!topo.nat("iptables-legacy-save").contains("SIDETRACE"));
    // Traffic flows directly again.
    l.expect(&topo.net, v4(POD4, APP_PORT), "app", v4(POD4, APP_PORT));
    l.expect(&topo.pod, v4(PEER4, APP_PORT), "peer", v4(PEER4, APP_PORT));
    // Cleaning a clean namespace is fine.
    topo.init_ok(&["--cleanup"]);
    assert_eq!(topo.nat("iptables-nft-save"), pristine);
}

fn dry_run_changes_nothing() {
    let topo = Topology::new();
    let before = topo.nat("iptables-nft-save");
    let printed = topo.init_ok(&["--dry-run"]);
    assert_eq!(topo.nat("iptables-nft-save"), before);
    let golden = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/default.rules"
    ))
    .unwrap();
    assert_eq!(printed, golden);

    topo.init_ok(&[]);
    let applied = topo.nat("iptables-nft-save");
    let preview = topo.init_ok(&["--cleanup", "--dry-run"]);
    assert!(preview.contains("-X SIDETRACE_INBOUND"), "{preview}");
    assert_eq!(
        topo.nat("iptables-nft-save"),
        applied,
        "--cleanup --dry-run changed the table"
    );
}

/// Golden sections restored by hand must come back from `*-save` as the same `-A` lines:
/// the generator writes rules exactly as iptables prints them, in both backends.
fn golden_rules_load_verbatim_in_both_backends() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 6, "golden files missing");
    for flavour in ["nft", "legacy"] {
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            let topo = Topology::new();
            for section in text.split("# ").filter(|s| !s.is_empty()) {
                let base = if section.starts_with("IPv6") {
                    "ip6tables"
                } else {
                    "iptables"
                };
                let body: String = section.lines().skip(1).map(|l| format!("{l}\n")).collect();
                let restore = format!("{base}-{flavour}-restore");
                let mut child = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &topo.pod,
                        &restore,
                        "--noflush",
                        "--wait=30",
                    ])
                    .env("PATH", path())
                    .stdin(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(body.as_bytes())
                    .unwrap();
                let out = child.wait_with_output().unwrap();
                assert!(
                    out.status.success(),
                    "{restore} rejected {}: {}",
                    file.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                let saved = topo.nat(&format!("{base}-{flavour}-save"));
                let mut want: Vec<&str> = body.lines().filter(|l| l.starts_with("-A ")).collect();
                let mut got: Vec<&str> = saved.lines().filter(|l| l.starts_with("-A ")).collect();
                // Save groups rules by chain; within a chain the order must be the same.
                want.sort_by_key(|l| l.split_whitespace().nth(1).map(str::to_owned));
                got.sort_by_key(|l| l.split_whitespace().nth(1).map(str::to_owned));
                assert_eq!(got, want, "{flavour} {} {base}", file.display());
            }
        }
    }
}

fn detection_follows_existing_legacy_rules() {
    let topo = Topology::new();
    let l = standard_listeners(&topo);
    // Something on the "node" already uses legacy iptables in this namespace.
    must(
        "ip",
        &[
            "netns",
            "exec",
            &topo.pod,
            "iptables-legacy",
            "--wait=30",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-j",
            "RETURN",
        ],
    );
    topo.init_ok(&[]);
    let legacy = topo.nat("iptables-legacy-save");
    assert!(legacy.contains(":SIDETRACE_INBOUND"), "{legacy}");
    topo.init_ok(&[]);
    assert_eq!(
        topo.nat("iptables-legacy-save"),
        legacy,
        "legacy re-run is not idempotent"
    );
    assert!(!topo.nat("iptables-nft-save").contains("SIDETRACE"));
    l.expect(
        &topo.net,
        v4(POD4, APP_PORT),
        "proxy-inbound",
        v4(POD4, APP_PORT),
    );
    // An explicit choice wins over detection.
    topo.init_ok(&["--cleanup"]);
    topo.init_ok(&["--backend", "nft"]);
    assert!(topo.nat("iptables-nft-save").contains(":SIDETRACE_INBOUND"));
    l.expect(
        &topo.pod,
        v4(PEER4, APP_PORT),
        "proxy-outbound",
        v4(PEER4, APP_PORT),
    );
}

fn without_privileges_exit_1_naming_net_admin() {
    let topo = Topology::new();
    let out = sh(
        "ip",
        &[
            "netns",
            "exec",
            &topo.pod,
            "setpriv",
            "--reuid=4242",
            "--regid=4242",
            "--clear-groups",
            "--",
            BIN,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("NET_ADMIN"), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    // Bad configuration is told apart from a failure to apply.
    let out = topo.init(&["--inbound-port", "70000"]);
    assert_eq!(out.status.code(), Some(64));
}

fn ipv6_inbound_and_outbound() {
    let topo = Topology::new();
    let mut l = Listeners::new();
    let any6 = |port| v6(Ipv6Addr::UNSPECIFIED, port);
    l.add(&topo.pod, "proxy-inbound", any6(INBOUND));
    l.add(&topo.pod, "proxy-outbound", any6(OUTBOUND));
    l.add(&topo.pod, "proxy-admin", any6(ADMIN));
    l.add(&topo.pod, "app", any6(APP_PORT));
    l.add(&topo.net, "peer", any6(APP_PORT));
    topo.init_ok(&["--ipv6"]);
    assert!(
        topo.nat("ip6tables-nft-save")
            .contains("-A SIDETRACE_OUTPUT -d ::1/128 -j RETURN")
    );
    // The proxy's IPv6 passthrough source is on lo, so it can bind it and the app can answer.
    let lo = must("ip", &["-n", &topo.pod, "-6", "addr", "show", "dev", "lo"]);
    assert!(lo.contains("inet6 ::6/128 "), "{lo}");
    topo.init_ok(&["--ipv6"]);
    let (pod, net) = (&topo.pod, &topo.net);
    l.expect(net, v6(POD6, APP_PORT), "proxy-inbound", v6(POD6, APP_PORT));
    l.expect(net, v6(POD6, ADMIN), "proxy-admin", v6(POD6, ADMIN));
    l.expect(
        pod,
        v6(PEER6, APP_PORT),
        "proxy-outbound",
        v6(PEER6, APP_PORT),
    );
    l.expect_as(
        &topo,
        PROXY_UID,
        PROXY_UID,
        v6(PEER6, APP_PORT),
        "peer",
        v6(PEER6, APP_PORT),
    );
    l.expect_as(
        &topo,
        PROXY_UID,
        PROXY_UID,
        v6(Ipv6Addr::LOCALHOST, APP_PORT),
        "app",
        v6(Ipv6Addr::LOCALHOST, APP_PORT),
    );
    // IPv4 is still captured alongside.
    l.expect(net, v4(POD4, APP_PORT), "proxy-inbound", v4(POD4, APP_PORT));
    // A plain cleanup removes the IPv6 rules too.
    topo.init_ok(&["--cleanup"]);
    assert!(!topo.nat("ip6tables-nft-save").contains("SIDETRACE"));
    l.expect(net, v6(POD6, APP_PORT), "app", v6(POD6, APP_PORT));
}

/// `--ipv6` defaults to auto: a pod with a global IPv6 address gets ip6tables rules without
/// any flag (a dual-stack pod's IPv6 calls cannot go around the proxy), a pod with only
/// link-local IPv6 gets none, and `--ipv6=off` leaves ip6tables alone.
fn ipv6_is_captured_by_default_exactly_when_the_pod_has_an_ipv6_address() {
    let topo = Topology::new();
    topo.init_ok(&[]);
    let v6 = topo.nat("ip6tables-nft-save");
    assert!(
        v6.contains("-A OUTPUT -p tcp -j SIDETRACE_OUTPUT"),
        "auto with fd00:250::2 on eth0 programs ip6tables:\n{v6}"
    );
    assert!(
        topo.nat("iptables-nft-save")
            .contains("-A OUTPUT -p tcp -j SIDETRACE_OUTPUT")
    );

    topo.init_ok(&["--cleanup"]);
    topo.init_ok(&["--ipv6=off"]);
    let off = topo.nat("ip6tables-nft-save");
    assert!(
        !off.contains("SIDETRACE"),
        "--ipv6=off touched ip6tables:\n{off}"
    );

    // Without the global address only link-local IPv6 is left: nothing to capture.
    topo.init_ok(&["--cleanup"]);
    must(
        "ip",
        &[
            "-n",
            &topo.pod,
            "-6",
            "addr",
            "del",
            "fd00:250::2/64",
            "dev",
            "eth0",
        ],
    );
    topo.init_ok(&[]);
    let none = topo.nat("ip6tables-nft-save");
    assert!(
        !none.contains("SIDETRACE"),
        "no global IPv6 address, yet:\n{none}"
    );
    assert!(
        topo.nat("iptables-nft-save")
            .contains("-A OUTPUT -p tcp -j SIDETRACE_OUTPUT")
    );
}

//! Network namespaces by name (`ip netns add`), and the one primitive everything else is built
//! on: run a closure on a fresh thread that has joined a namespace.
//!
//! A network namespace belongs to a thread, and a child process inherits its parent thread's
//! namespace. So a process is started "in a pod" by spawning it from a thread that joined the
//! pod's namespace — which lets the harness use plain `Command::uid/gid` for the proxy (no
//! `ip netns exec` wrapper, whose own setns would need the privileges the proxy must not
//! have). A socket likewise stays in the namespace it was created in, so the test process can
//! talk to any pod without a route from the host. The thread is never reused: a pooled thread
//! left in a pod's namespace would silently move unrelated work there.

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

/// Where `ip netns add` mounts named namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Join the network namespace `file` refers to, for the calling thread only.
#[allow(unsafe_code)]
fn join(file: &File) -> std::io::Result<()> {
    // SAFETY: setns(2) takes a file descriptor we own for the duration of the call and changes
    // only the calling thread's network namespace; no memory is shared with the kernel.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Run `f` on a new thread inside namespace `ns` and return its result (blocking).
pub fn run_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = Path::new(NETNS_DIR).join(ns);
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let ns_name = ns.to_owned();
    std::thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || {
            join(&file).with_context(|| format!("joining network namespace {ns_name}"))?;
            f()
        })
        .context("spawning a namespace thread")?
        .join()
        .map_err(|_| anyhow!("namespace thread for {ns} panicked"))?
}

/// Start `cmd` inside namespace `ns`.
pub fn spawn_in(ns: &str, mut cmd: Command) -> Result<Child> {
    let what = format!("{:?}", cmd.get_program());
    run_in(ns, move || {
        cmd.spawn().with_context(|| format!("starting {what}"))
    })
    .with_context(|| format!("in namespace {ns}"))
}

/// Run `cmd` inside namespace `ns` to completion; fail with its output when it fails.
pub fn output_in(ns: &str, mut cmd: Command) -> Result<String> {
    let what = format!("{cmd:?}");
    let out = run_in(ns, move || cmd.output().context("running"))
        .with_context(|| format!("{what} in namespace {ns}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{what} in namespace {ns} failed ({}):\n{text}", out.status);
    }
    Ok(text)
}

/// Open a TCP connection to `addr` from inside namespace `ns`.
pub async fn connect_in(
    ns: &str,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<tokio::net::TcpStream> {
    let ns = ns.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let path = Path::new(NETNS_DIR).join(&ns);
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    // A plain thread, not spawn_blocking: see the module docs.
    std::thread::Builder::new()
        .name(format!("connect-{ns}"))
        .spawn(move || {
            let r = join(&file)
                .with_context(|| format!("joining network namespace {ns}"))
                .and_then(|()| {
                    let s = std::net::TcpStream::connect_timeout(&addr, timeout)
                        .with_context(|| format!("connecting to {addr} from {ns}"))?;
                    s.set_nonblocking(true)?;
                    s.set_nodelay(true)?;
                    Ok(s)
                });
            let _ = tx.send(r);
        })
        .context("spawning a connect thread")?;
    let std_stream = rx.await.map_err(|_| anyhow!("connect thread vanished"))??;
    tokio::net::TcpStream::from_std(std_stream).context("registering the socket with tokio")
}

/// Bind a TCP listener at `addr` inside namespace `ns`.
pub fn listen_in(ns: &str, addr: SocketAddr) -> Result<std::net::TcpListener> {
    run_in(ns, move || {
        let l = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
}

/// `ip ARGS...`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Names of every named network namespace.
pub fn list() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Kill every process still inside namespace `ns`, then delete it.
pub fn destroy(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for p in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", p]).status();
        }
    }
    let _ = ip(&["netns", "del", ns]);
}

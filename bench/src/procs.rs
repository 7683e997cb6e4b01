//! Child processes under test (pinned with `taskset`), their CPU time and anonymous memory
//! from /proc, free ports, and the machine description.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::stats;

/// A child process killed on drop, with the command line it was started with.
pub struct Proc {
    /// Short name for tables.
    pub name: String,
    /// The command line, for RESULTS.md.
    pub cmdline: String,
    child: Child,
}

impl Proc {
    /// Starts `program args` pinned to `cpus` (a taskset list such as "1"), output discarded
    /// unless `log` names a file.
    pub fn spawn(
        name: &str,
        cpus: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> Result<Self> {
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg(cpus).arg(program).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null());
        match log {
            Some(path) => {
                let f = std::fs::File::create(path)
                    .with_context(|| format!("create {}", path.display()))?;
                cmd.stdout(f.try_clone()?).stderr(f);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", program.display()))?;
        let cmdline = format!("taskset -c {cpus} {} {}", program.display(), args.join(" "));
        Ok(Self {
            name: name.to_owned(),
            cmdline,
            child,
        })
    }

    /// Process id (taskset execs the program, so this is the program's pid).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early: {status}", self.name);
        }
        Ok(())
    }

    /// Waits up to `limit` for the process to exit on its own (it was asked to stop).
    pub fn wait_exit(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {limit:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// CPU time so far (all threads, nanoseconds).
    pub fn cpu_ns(&self) -> u64 {
        cpu_ns(self.pid())
    }

    /// Anonymous resident memory (RssAnon) in bytes.
    pub fn rss_anon(&self) -> u64 {
        rss_anon(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time of every live thread of `pid`, from /proc/<pid>/task/*/schedstat (ns resolution;
/// /proc/<pid>/stat only has clock ticks of 10 ms). Threads of the processes measured here
/// live as long as the process, so nothing is lost to exited threads.
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let lines: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .collect();
    stats::schedstat_ns(&lines)
}

/// RssAnon of `pid` in bytes (0 when unreadable).
pub fn rss_anon(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| stats::status_kb(&s, "RssAnon"))
        .unwrap_or(0)
}

/// A free loopback port (bound and released; the tiny race is acceptable for a benchmark).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Loopback address for `port`.
pub fn lo(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until `addr` accepts TCP connections.
pub fn wait_port(addr: SocketAddr, limit: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {addr} after {limit:?}")
}

/// Pins the calling process (all its threads) to `cpus`.
pub fn pin_self(cpus: &str) -> Result<()> {
    pin(std::process::id(), cpus)
}

/// Pins process `pid` (all its threads) to `cpus`.
pub fn pin(pid: u32, cpus: &str) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("taskset -a -p -c {cpus} {pid} failed");
    }
    Ok(())
}

/// Raises this process's open-files soft limit to the hard limit (children inherit it);
/// returns the new limit.
pub fn raise_nofile() -> Result<u64> {
    let pid = std::process::id().to_string();
    let out = Command::new("prlimit")
        .args(["--pid", &pid, "--nofile", "--output=HARD", "--noheadings"])
        .output()?;
    let hard: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("prlimit --nofile output")?;
    let status = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .status()?;
    if !status.success() {
        bail!("prlimit --nofile={hard} failed");
    }
    Ok(hard)
}

/// Lowers the timer slack of the calling thread to 1 µs so sleeps wake on time (the default
/// 50 µs slack would delay every scheduled send). Best effort.
pub fn tight_timer_slack() {
    let _ = std::fs::write("/proc/thread-self/timerslack_ns", "1000");
}

/// Sleeps until `deadline` with sub-millisecond precision (thread sleep, not the runtime timer).
pub fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

/// nproc, CPU model, kernel and memory of this machine, as Markdown bullet lines.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|x| x.1))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    // Count CPUs from /proc/cpuinfo: available_parallelism reflects this process's pinning.
    let nproc = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| stats::status_kb(&m, "MemTotal"))
        .map_or(0, |b| b / (1 << 20));
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "- date: {date}\n- nproc: {nproc}; CPU: {model}\n- kernel: {kernel}; memory: {mem} MiB\n- load average at start: {load}\n"
    )
}

/// Workspace root (the bench crate's parent).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The peer cache (`SIDETRACE_CACHE`, default ~/.cache/sidetrace).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SIDETRACE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/sidetrace")
        })
}

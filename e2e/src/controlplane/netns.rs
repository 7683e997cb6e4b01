//! The control plane's network namespace: `st-<pid>-cp`, joined to the host by one veth pair
//! on a /30 from 10.250.250.0/24, loopback up, and NO default route — the apiserver can reach
//! the host-side address (where webhooks listen) and nothing else.
//!
//! Several test binaries (or several developers' runs) may hold a control plane at once, so the
//! /30 is chosen at run time: slot N uses 10.250.250.(4N+1) on the host and .(4N+2) inside,
//! claimed with a lock file so two runs never pick the same one. Namespaces left behind by a
//! killed run (their pid is gone) are removed before a new one is made.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// How many /30 slots 10.250.250.0/24 holds.
const SLOTS: u8 = 64;

/// Name prefix and suffix of the namespaces this module creates (`st-<pid>-cp`).
const PREFIX: &str = "st-";
const SUFFIX: &str = "-cp";

/// The addresses of slot `slot`: (host side, namespace side).
pub fn slot_addresses(slot: u8) -> (Ipv4Addr, Ipv4Addr) {
    let base = slot.wrapping_mul(4);
    (
        Ipv4Addr::new(10, 250, 250, base + 1),
        Ipv4Addr::new(10, 250, 250, base + 2),
    )
}

/// The pid that created namespace `name`, when it is one of ours.
pub fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?
        .strip_suffix(SUFFIX)?
        .parse()
        .ok()
}

/// A live namespace + veth pair; dropping it deletes both.
#[derive(Debug)]
pub struct Netns {
    name: String,
    host_if: String,
    host: Ipv4Addr,
    inner: Ipv4Addr,
    // Held for the namespace's lifetime: the slot's lock.
    _slot_lock: File,
}

impl Netns {
    /// Create the namespace, its veth pair and addresses.
    pub fn create() -> Result<Self> {
        remove_stale();
        let pid = std::process::id();
        let name = format!("{PREFIX}{pid}{SUFFIX}");
        let (slot, lock) = claim_slot()?;
        let (host, inner) = slot_addresses(slot);
        // Interface names are limited to 15 bytes: "st" + pid (<= 7 digits) + "cph" fits.
        let host_if = format!("st{pid}cph");
        let ns_if = format!("st{pid}cpn");
        // Build the guard first so a failure half-way still cleans up.
        let me = Self {
            name,
            host_if,
            host,
            inner,
            _slot_lock: lock,
        };
        let ns = me.name.as_str();
        ip(&["netns", "add", ns])?;
        ip(&[
            "link",
            "add",
            &me.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", ns])?;
        ip(&["addr", "add", &format!("{host}/30"), "dev", &me.host_if])?;
        ip(&["link", "set", &me.host_if, "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{inner}/30"),
            "dev",
            &ns_if,
        ])?;
        ip(&["-n", ns, "link", "set", &ns_if, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(me)
    }

    /// The namespace name, for `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host side of the veth pair: where webhooks and other host processes listen.
    pub fn host_address(&self) -> Ipv4Addr {
        self.host
    }

    /// The namespace side: the apiserver's address.
    pub fn inner_address(&self) -> Ipv4Addr {
        self.inner
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its veth end and so the host end; delete the host
        // end explicitly too in case the namespace was never populated.
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn ip(args: &[&str]) -> Result<()> {
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

fn addresses_in_use() -> String {
    Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn claim_slot() -> Result<(u8, File)> {
    let in_use = addresses_in_use();
    for slot in 0..SLOTS {
        let (host, _) = slot_addresses(slot);
        if in_use.contains(&format!(" {host}/")) {
            continue;
        }
        let path = std::env::temp_dir().join(format!("sidetrace-cp-slot-{slot}.lock"));
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        if file.try_lock().is_ok() {
            return Ok((slot, file));
        }
    }
    bail!("all {SLOTS} control-plane address slots in 10.250.250.0/24 are in use")
}

/// Remove namespaces `st-<pid>-cp` whose creating process is gone (a run killed by SIGKILL),
/// killing what still runs inside them: those are the peers that run started.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = owner_pid(name) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
            for p in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", p]).status();
            }
        }
        let _ = ip(&["link", "del", &format!("st{pid}cph")]);
        let _ = ip(&["netns", "del", name]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_disjoint_slash_30s() {
        assert_eq!(
            slot_addresses(0),
            (
                Ipv4Addr::new(10, 250, 250, 1),
                Ipv4Addr::new(10, 250, 250, 2)
            )
        );
        assert_eq!(
            slot_addresses(1),
            (
                Ipv4Addr::new(10, 250, 250, 5),
                Ipv4Addr::new(10, 250, 250, 6)
            )
        );
        assert_eq!(
            slot_addresses(SLOTS - 1),
            (
                Ipv4Addr::new(10, 250, 250, 253),
                Ipv4Addr::new(10, 250, 250, 254)
            )
        );
    }

    #[test]
    fn recognises_only_its_own_namespace_names() {
        assert_eq!(owner_pid("st-4242-cp"), Some(4242));
        assert_eq!(owner_pid("st-4242-pod-front"), None);
        assert_eq!(owner_pid("st-cp-4242"), None);
        assert_eq!(owner_pid("other"), None);
    }
}

//! Where `e2e/peers.sh` caches the peer binaries, and the skip-or-fail rule for tests that
//! need them.

use std::path::{Path, PathBuf};

/// The cache root: `$SIDETRACE_CACHE`, else `~/.cache/sidetrace` (as in `e2e/peers.sh`).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SIDETRACE_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache").join("sidetrace")
}

/// A cached peer binary by its stable name (`bin/kube-apiserver` etc.).
pub fn bin(name: &str) -> PathBuf {
    cache_dir().join("bin").join(name)
}

/// The control plane's binaries; `Err` names the first missing one.
#[derive(Clone, Debug)]
pub struct ControlPlaneBins {
    /// etcd
    pub etcd: PathBuf,
    /// kube-apiserver
    pub apiserver: PathBuf,
    /// kube-controller-manager
    pub controller_manager: PathBuf,
    /// kubectl (for tests that want the real CLI)
    pub kubectl: PathBuf,
    /// helm
    pub helm: PathBuf,
}

impl ControlPlaneBins {
    /// Find every control-plane binary in the cache.
    pub fn find() -> Result<Self, String> {
        let found = Self {
            etcd: bin("etcd"),
            apiserver: bin("kube-apiserver"),
            controller_manager: bin("kube-controller-manager"),
            kubectl: bin("kubectl"),
            helm: bin("helm"),
        };
        for path in [
            &found.etcd,
            &found.apiserver,
            &found.controller_manager,
            &found.kubectl,
            &found.helm,
        ] {
            if !is_executable(path) {
                return Err(format!(
                    "{} is missing: run e2e/peers.sh controlplane",
                    path.display()
                ));
            }
        }
        Ok(found)
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether we run as root (network namespaces need it).
pub fn is_root() -> bool {
    // /proc/self/status "Uid:\treal\teffective..." avoids an unsafe geteuid().
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

// The skip policy is written once, in sidetrace-testkit; re-exported for the harnesses here.
pub use sidetrace_testkit::{in_ci, skip as skip_or_fail};

//! Contract check between the webhook and the init container: every `sidetrace-init` argument
//! list in the golden fixtures is accepted by the real `sidetrace-init --dry-run`.
//! The binary comes from the workspace build (`cargo build -p sidetrace-init`); without it the
//! test prints SKIP, except under CI=true where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn init_binary() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let exe = target.join("debug/sidetrace-init");
    exe.exists().then_some(exe)
}

fn init_args(patched_pod: &Value) -> Option<Vec<String>> {
    patched_pod["spec"]["initContainers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == "sidetrace-init")?["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
}

#[test]
fn sidetrace_init_accepts_every_injected_argument_list() {
    let Some(exe) = init_binary() else {
        return sidetrace_testkit::skip(
            "sidetrace_init_accepts_every_injected_argument_list",
            "target/debug/sidetrace-init is not built (cargo build -p sidetrace-init)",
        );
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut checked = 0;
    for entry in std::fs::read_dir(&root).expect("fixtures") {
        let path = entry.expect("entry").path().join("patched-pod.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let pod: Value = serde_json::from_str(&text).expect("json");
        let Some(args) = init_args(&pod) else {
            continue;
        };
        let out = Command::new(&exe)
            .arg("--dry-run")
            .args(&args)
            .output()
            .expect("run sidetrace-init");
        assert!(
            out.status.success(),
            "{}: sidetrace-init {args:?} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let rules = String::from_utf8_lossy(&out.stdout);
        assert!(
            rules.contains("REDIRECT --to-ports 15006"),
            "{}: {rules}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} injected fixtures");
}

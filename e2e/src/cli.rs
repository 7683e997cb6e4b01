//! The `sidetrace` command line as the end-to-end tiers run it: the binary built beside the
//! tests (`target/debug/sidetrace`), against a kubeconfig, with plain output. Driven by the
//! kubeconfig alone, so the same calls work on the real apiserver tier, the one-node cluster
//! and kind.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// `sidetrace ARGS` with `kubeconfig`: its exit code and stdout (stderr appended, marked).
pub fn run(kubeconfig: &Path, args: &[&str]) -> Result<(i32, String)> {
    let dir = crate::netns::cargo_bin_dir().context("locating target/debug")?;
    let exe = dir.join("sidetrace");
    if !exe.exists() {
        bail!(
            "{} is not built: cargo build -p sidetrace-cli",
            exe.display()
        );
    }
    let out = Command::new(&exe)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        text.push_str("[stderr] ");
        text.push_str(&err);
    }
    Ok((out.status.code().unwrap_or(-1), text))
}

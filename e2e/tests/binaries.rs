//! Every shipped binary answers `--help` and `--version`, and rejects an unknown flag with the
//! configuration exit code (64) rather than starting.

use std::path::{Path, PathBuf};
use std::process::Command;

use sidetrace_e2e::controlplane::peers::skip_or_fail;

const BINARIES: &[&str] = &[
    "sidetrace-operator",
    "sidetrace-injector",
    "sidetrace-proxy",
    "sidetrace-init",
];

fn exe(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/debug")
        .join(name)
}

#[test]
fn every_binary_answers_help_and_version() {
    for name in BINARIES {
        let path = exe(name);
        if !path.exists() {
            return skip_or_fail(
                "binaries",
                &format!(
                    "{} is not built: run cargo build --workspace --bins",
                    path.display()
                ),
            );
        }
        let help = Command::new(&path).arg("--help").output().expect("runs");
        assert!(help.status.success(), "{name} --help failed");
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(text.contains("Usage:"), "{name} --help: {text}");
        let version = Command::new(&path).arg("--version").output().expect("runs");
        assert!(version.status.success(), "{name} --version failed");
        let text = String::from_utf8_lossy(&version.stdout);
        assert!(
            text.trim() == format!("{name} {}", env!("CARGO_PKG_VERSION")),
            "{name} --version printed {text:?}"
        );
    }
}

#[test]
fn unknown_flags_are_configuration_errors() {
    for name in BINARIES {
        let path = exe(name);
        if !path.exists() {
            return skip_or_fail("binaries", "not built: run cargo build --workspace --bins");
        }
        let out = Command::new(&path)
            .arg("--no-such-flag")
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--no-such-flag"), "{name}: {stderr}");
        assert_eq!(
            out.status.code(),
            Some(64),
            "{name}: bad configuration must exit 64"
        );
    }
}

//! Golden files of the generated rules: config in, `iptables-restore` input out.
//!
//! Each case is a flag list and a file under `tests/golden/`. The library's dry-run text and
//! the real binary's `--dry-run` stdout must both equal the file byte for byte, so reviewers
//! can read behaviour in the golden files. `UPDATE_GOLDEN=1 cargo test -p sidetrace-init`
//! rewrites them.

use std::path::PathBuf;
use std::process::Command;

use clap::Parser;
use sidetrace_init::config::{Args, Config};
use sidetrace_init::rules::dry_run_text;

/// (golden file stem, flags)
const CASES: &[(&str, &[&str])] = &[
    ("default", &[]),
    (
        "exclude_ports_and_cidrs",
        &[
            "--exclude-inbound-ports",
            "9090,8443",
            "--exclude-outbound-ports",
            "5432,6379",
            "--exclude-outbound-cidrs",
            "10.96.0.0/12,169.254.169.254/32",
        ],
    ),
    (
        "include_cidrs",
        &["--include-outbound-cidrs", "10.0.0.0/8,172.16.0.0/12"],
    ),
    (
        "ipv6",
        &[
            "--ipv6",
            "--exclude-outbound-cidrs",
            "169.254.169.254/32,fd00:ec2::254/128",
            "--include-outbound-cidrs",
            "10.0.0.0/8,fd00::/8",
        ],
    ),
    ("inbound_ports", &["--inbound-ports", "8080,9080"]),
    (
        "custom_ids_and_ports",
        &[
            "--proxy-uid",
            "2102",
            "--proxy-gid",
            "2103",
            "--inbound-port",
            "4143",
            "--outbound-port",
            "4140",
            "--admin-port",
            "4191",
        ],
    ),
];

fn golden_path(stem: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{stem}.rules"))
}

fn rendered(flags: &[&str]) -> String {
    let args = Args::try_parse_from(std::iter::once("sidetrace-init").chain(flags.iter().copied()))
        .expect("flags parse");
    dry_run_text(&Config::from_args(&args).expect("valid config"))
}

fn check(stem: &str, actual: &str) -> Result<(), String> {
    let path = golden_path(stem);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).map_err(|e| format!("writing {}: {e}", path.display()))?;
        return Ok(());
    }
    let expected = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "reading {}: {e} (run `UPDATE_GOLDEN=1 cargo test -p sidetrace-init` to create it)",
            path.display()
        )
    })?;
    if expected == actual {
        Ok(())
    } else {
        Err(format!(
            "{} differs from the generated rules; if the change is intended, run \
             `UPDATE_GOLDEN=1 cargo test -p sidetrace-init` and review the diff.\n\
             --- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        ))
    }
}

#[test]
fn generated_rules_match_golden_files() {
    let failures: Vec<String> = CASES
        .iter()
        .filter_map(|(stem, flags)| check(stem, &rendered(flags)).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn binary_dry_run_prints_exactly_the_golden_rules() {
    for (stem, flags) in CASES {
        let out = Command::new(env!("CARGO_BIN_EXE_sidetrace-init"))
            .env_clear()
            .arg("--dry-run")
            .args(*flags)
            .output()
            .expect("run sidetrace-init");
        assert!(out.status.success(), "{stem}: {out:?}");
        let expected = std::fs::read_to_string(golden_path(stem)).expect("golden file");
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{stem}");
    }
}

#[test]
fn env_variables_are_equivalent_to_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_sidetrace-init"))
        .env_clear()
        .env("SIDETRACE_INIT_DRY_RUN", "true")
        .env("SIDETRACE_INIT_EXCLUDE_INBOUND_PORTS", "9090,8443")
        .env("SIDETRACE_INIT_EXCLUDE_OUTBOUND_PORTS", "5432,6379")
        .env(
            "SIDETRACE_INIT_EXCLUDE_OUTBOUND_CIDRS",
            "10.96.0.0/12,169.254.169.254/32",
        )
        .output()
        .expect("run sidetrace-init");
    assert!(out.status.success(), "{out:?}");
    let expected = std::fs::read_to_string(golden_path("exclude_ports_and_cidrs")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
}

#[test]
fn golden_set_has_no_orphans() {
    // A golden file without a case would never be checked again.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for entry in std::fs::read_dir(dir).expect("golden dir") {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let stem = name.trim_end_matches(".rules");
        assert!(
            CASES.iter().any(|(s, _)| *s == stem),
            "tests/golden/{name} has no case in tests/golden.rs"
        );
    }
}

//! The binary's exit codes and messages for bad configuration (no root needed).

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sidetrace-init"))
        .env_clear()
        .args(args)
        .output()
        .expect("run sidetrace-init")
}

fn assert_usage_error(args: &[&str], needle: &str) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: {needle:?} not in {stderr}"
    );
    assert!(out.stdout.is_empty(), "{args:?} printed rules");
}

#[test]
fn invalid_values_exit_64_naming_the_value() {
    assert_usage_error(&["--dry-run", "--inbound-port", "0"], "\"0\"");
    assert_usage_error(&["--dry-run", "--outbound-port", "65536"], "65536");
    assert_usage_error(
        &["--dry-run", "--exclude-outbound-ports", "80,99999"],
        "99999",
    );
    assert_usage_error(
        &[
            "--dry-run",
            "--exclude-outbound-cidrs",
            "10.0.0.0/8,300.1.1.1/32",
        ],
        "300.1.1.1/32",
    );
    assert_usage_error(
        &["--dry-run", "--exclude-inbound-ports", "8080,8080"],
        "8080 is listed twice",
    );
    assert_usage_error(&["--dry-run", "--proxy-uid=-5"], "\"-5\"");
}

#[test]
fn invalid_env_values_exit_64_too() {
    let out = Command::new(env!("CARGO_BIN_EXE_sidetrace-init"))
        .env_clear()
        .env("SIDETRACE_INIT_INCLUDE_OUTBOUND_CIDRS", "not-a-cidr")
        .arg("--dry-run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-a-cidr"));
}

#[test]
fn unknown_flags_exit_64_and_help_exits_0() {
    assert_usage_error(&["--no-such-flag"], "--no-such-flag");
    let help = run(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--proxy-uid",
        "--proxy-gid",
        "--inbound-port",
        "--outbound-port",
        "--exclude-inbound-ports",
        "--exclude-outbound-ports",
        "--exclude-outbound-cidrs",
        "--include-outbound-cidrs",
        "--ipv6",
        "--dry-run",
        "--cleanup",
        "SIDETRACE_INIT_PROXY_UID",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn boolean_env_values_accept_the_usual_spellings() {
    let sections = |value: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_sidetrace-init"))
            .env_clear()
            .env("SIDETRACE_INIT_IPV6", value)
            .arg("--dry-run")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout)
                .matches("# IPv6")
                .count(),
        )
    };
    for yes in ["true", "1", "yes", "on"] {
        assert_eq!(sections(yes), (Some(0), 1), "{yes}");
    }
    for no in ["false", "0", "no", "off"] {
        assert_eq!(sections(no), (Some(0), 0), "{no}");
    }
    assert_eq!(sections("maybe").0, Some(64));
}

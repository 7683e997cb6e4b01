//! The one skip policy of every sidetrace test tier, written once.
//!
//! A test whose prerequisite is missing (root, iptables, a peer binary, the one-node cluster)
//! calls [`skip`] with its name and the reason, then returns:
//!
//! - outside CI it prints `SKIP <test>: <reason>` straight to the process's stderr (libtest
//!   captures `eprintln!` of passing tests, which would hide the line) and appends the same line
//!   to the file named by `SIDETRACE_SKIP_LOG`, where `make test` collects every skip of the run
//!   and lists them at the end;
//! - under `CI=true` it panics, so a tier that cannot run is a failure, never a pass.
//!
//! `SIDETRACE_SKIP_E2E=1` (what `make unit` sets) is one more missing prerequisite, with the
//! same rule: under `CI=true` it fails too. Nothing else in the tree decides whether a skip is
//! allowed.

use std::io::Write as _;

/// The variable that asks for no end-to-end tiers (`make unit`).
pub const SKIP_E2E_VAR: &str = "SIDETRACE_SKIP_E2E";

/// The file every skip is appended to, when set (`make test` sets it).
pub const SKIP_LOG_VAR: &str = "SIDETRACE_SKIP_LOG";

/// Whether we run under CI (`CI=true` or `CI=1`), where a missing prerequisite is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `Err(reason)` when the caller asked for no end-to-end tiers (`SIDETRACE_SKIP_E2E=1`).
pub fn e2e_allowed() -> Result<(), String> {
    if std::env::var(SKIP_E2E_VAR).is_ok_and(|v| v == "1") {
        Err(format!("{SKIP_E2E_VAR}=1 (end-to-end tiers not requested)"))
    } else {
        Ok(())
    }
}

/// The line a skip prints and records.
pub fn skip_line(test: &str, reason: &str) -> String {
    format!("SKIP {test}: {reason}")
}

/// The failure message of a skip under CI.
pub fn ci_failure(test: &str, reason: &str) -> String {
    format!(
        "{test}: cannot run: {reason} (CI=true: a tier that cannot run fails instead of skipping)"
    )
}

/// Apply the policy for `test`, which cannot run for `reason`: under CI panic, otherwise print
/// and record the skip. The caller returns right after.
#[track_caller]
pub fn skip(test: &str, reason: &str) {
    if let Err(message) = skip_or_ci_failure(test, reason) {
        panic!("{message}");
    }
}

/// The policy without panicking, for harnesses with their own `main` (`harness = false`):
/// `Ok(())` when the skip was printed and recorded, `Err(message)` under CI, where the caller
/// must fail (print the message and exit non-zero).
pub fn skip_or_ci_failure(test: &str, reason: &str) -> Result<(), String> {
    if in_ci() {
        return Err(ci_failure(test, reason));
    }
    let line = skip_line(test, reason);
    let _ = writeln!(std::io::stderr().lock(), "{line}");
    if let Some(path) = std::env::var_os(SKIP_LOG_VAR) {
        // One write of a whole line with O_APPEND: test binaries running at once never
        // interleave within a line.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
    Ok(())
}

/// [`skip`] when `prerequisite` is `Err`: `true` means "skipped, return now".
#[track_caller]
pub fn skipped(test: &str, prerequisite: Result<(), String>) -> bool {
    match prerequisite {
        Ok(()) => false,
        Err(reason) => {
            skip(test, &reason);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_the_test_and_the_reason() {
        assert_eq!(skip_line("t", "no root"), "SKIP t: no root");
        let m = ci_failure("t", "no root");
        assert!(m.starts_with("t: cannot run: no root"), "{m}");
        assert!(m.contains("CI=true"), "{m}");
    }
}

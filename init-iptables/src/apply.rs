//! Applying and removing the rules: read the nat table with `*-save`, plan one
//! `*-restore --noflush` transaction from what is there, run it.
//!
//! Planning is pure ([`plan_apply`], [`plan_cleanup`] over save text); only [`apply`] and
//! [`cleanup`] run commands. One transaction per family means a pod never sees half a ruleset.

use std::fmt::Write as _;

use crate::Result;
use crate::backend::{Exec, Flavour, run_checked};
use crate::config::Config;
use crate::rules::{CHAIN_PREFIX, Family, families, ruleset};

/// What of ours is in a nat table already.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatState {
    /// Own chains (`SIDETRACE_*`) that exist.
    pub own_chains: Vec<String>,
    /// `-A` lines of other chains that jump or go to an own chain, exactly as saved.
    pub jumps: Vec<String>,
}

fn is_own(chain: &str) -> bool {
    chain.starts_with(CHAIN_PREFIX)
}

/// Reads the nat section of `iptables-save` output.
pub fn parse_nat(save: &str) -> NatState {
    let mut state = NatState::default();
    let mut in_nat = false;
    for line in save.lines() {
        if let Some(table) = line.strip_prefix('*') {
            in_nat = table == "nat";
            continue;
        }
        if !in_nat {
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if is_own(name) {
                state.own_chains.push(name.to_owned());
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest.split_whitespace().next().unwrap_or_default();
            let words: Vec<&str> = rest.split_whitespace().collect();
            let targets_own = words
                .windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && is_own(w[1]));
            if !is_own(chain) && targets_own {
                state.jumps.push(line.to_owned());
            }
        }
    }
    state
}

/// Restore input that brings a family to exactly `ruleset`, given the current save output:
/// own chains created or flushed, stale own chains and every existing jump removed, then the
/// rules and the jumps added once. Re-running it yields the same table.
pub fn plan_apply(ruleset: &crate::rules::Ruleset, current_save: &str) -> String {
    let state = parse_nat(current_save);
    let stale: Vec<&String> = state
        .own_chains
        .iter()
        .filter(|c| !ruleset.chains.contains(&c.as_str()))
        .collect();
    let mut out = String::from("*nat\n");
    for chain in &ruleset.chains {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for chain in &stale {
        // Flushed first so nothing references another stale chain when it is deleted.
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for jump in &state.jumps {
        let _ = writeln!(out, "-D{}", &jump[2..]);
    }
    for chain in &stale {
        let _ = writeln!(out, "-X {chain}");
    }
    for rule in ruleset.rules.iter().chain(&ruleset.jumps) {
        out.push_str(&rule.append_line());
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

/// Restore input that removes every jump into an own chain and every own chain, or `None` when
/// there is nothing of ours in the table.
pub fn plan_cleanup(current_save: &str) -> Option<String> {
    let state = parse_nat(current_save);
    if state.own_chains.is_empty() && state.jumps.is_empty() {
        return None;
    }
    let mut out = String::from("*nat\n");
    for chain in &state.own_chains {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for jump in &state.jumps {
        let _ = writeln!(out, "-D{}", &jump[2..]);
    }
    for chain in &state.own_chains {
        let _ = writeln!(out, "-X {chain}");
    }
    out.push_str("COMMIT\n");
    Some(out)
}

// `--wait` matters for the legacy flavour, whose lock file is shared by every network
// namespace on the node; the nft flavour accepts and ignores it.
const RESTORE_ARGS: &[&str] = &["--noflush", "--wait=30"];

fn save_nat(exec: &dyn Exec, flavour: Flavour, family: Family) -> Result<String> {
    run_checked(exec, &flavour.save(family), &["-t", "nat"], None)
}

/// Whether `family`'s nat table can be read with `flavour` (what programming it needs first).
pub fn family_usable(exec: &dyn Exec, flavour: Flavour, family: Family) -> Result<()> {
    save_nat(exec, flavour, family).map(drop)
}

/// Programs every family of `config` with `flavour`.
pub fn apply(exec: &dyn Exec, flavour: Flavour, config: &Config) -> Result<()> {
    for family in families(config) {
        let rules = ruleset(config, family);
        let current = save_nat(exec, flavour, family)?;
        let input = plan_apply(&rules, &current);
        tracing::debug!(family = family.name(), input = %input, "restore input");
        run_checked(exec, &flavour.restore(family), RESTORE_ARGS, Some(&input))?;
        tracing::info!(
            family = family.name(),
            flavour = flavour.name(),
            rules = rules.rules.len() + rules.jumps.len(),
            replaced_jumps = parse_nat(&current).jumps.len(),
            "rules applied"
        );
    }
    Ok(())
}

/// The nat table of each family cleanup looks at: those of `config`, plus IPv6 on a
/// best-effort basis when `config` is IPv4-only, so a pod set up with `--ipv6` is cleaned by a
/// plain `--cleanup` too (an unusable ip6tables then means there is nothing of ours there).
fn cleanup_targets(
    exec: &dyn Exec,
    flavour: Flavour,
    config: &Config,
) -> Result<Vec<(Family, String)>> {
    let mut out = Vec::new();
    for family in [Family::V4, Family::V6] {
        let required = families(config).contains(&family);
        match save_nat(exec, flavour, family) {
            Ok(save) => out.push((family, save)),
            Err(e) if !required => {
                tracing::debug!(family = family.name(), error = %e, "skipping optional family");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Removes everything of ours with `flavour`: the families of `config`, and IPv6 whenever
/// ip6tables works.
pub fn cleanup(exec: &dyn Exec, flavour: Flavour, config: &Config) -> Result<()> {
    for (family, current) in cleanup_targets(exec, flavour, config)? {
        match plan_cleanup(&current) {
            Some(input) => {
                run_checked(exec, &flavour.restore(family), RESTORE_ARGS, Some(&input))?;
                tracing::info!(
                    family = family.name(),
                    flavour = flavour.name(),
                    "rules removed"
                );
            }
            None => tracing::info!(family = family.name(), "nothing to remove"),
        }
    }
    Ok(())
}

/// What `--cleanup --dry-run` prints: per family the restore input cleanup would run.
pub fn cleanup_preview(exec: &dyn Exec, flavour: Flavour, config: &Config) -> Result<String> {
    let mut out = String::new();
    for (family, current) in cleanup_targets(exec, flavour, config)? {
        let cmd = flavour.restore(family);
        match plan_cleanup(&current) {
            Some(input) => {
                let _ = writeln!(out, "# {}: input of `{cmd} --noflush`", family.name());
                out.push_str(&input);
            }
            None => {
                let _ = writeln!(out, "# {}: nothing to remove", family.name());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::io;

    use super::*;
    use crate::Error;
    use crate::backend::CommandOutput;
    use crate::rules::Family;

    const SAVED: &str = "\
# Generated by iptables-nft-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j SIDETRACE_NOT_NAT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:SIDETRACE_INBOUND - [0:0]
:SIDETRACE_OLD - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A PREROUTING -p tcp -j SIDETRACE_INBOUND
-A PREROUTING -p tcp -j SIDETRACE_INBOUND
-A OUTPUT -p udp -m udp --dport 53 -g SIDETRACE_OLD
-A SIDETRACE_INBOUND -p tcp -j SIDETRACE_OLD
COMMIT
";

    #[test]
    fn parse_finds_own_chains_and_every_jump_in_nat_only() {
        let s = parse_nat(SAVED);
        assert_eq!(s.own_chains, vec!["SIDETRACE_INBOUND", "SIDETRACE_OLD"]);
        assert_eq!(
            s.jumps,
            vec![
                "-A PREROUTING -p tcp -j SIDETRACE_INBOUND",
                "-A PREROUTING -p tcp -j SIDETRACE_INBOUND",
                "-A OUTPUT -p udp -m udp --dport 53 -g SIDETRACE_OLD",
            ]
        );
    }

    #[test]
    fn apply_plan_removes_duplicates_and_stale_chains_then_adds_once() {
        let rs = ruleset(&Config::default(), Family::V4);
        let plan = plan_apply(&rs, SAVED);
        assert_eq!(
            plan.matches("-D PREROUTING -p tcp -j SIDETRACE_INBOUND\n")
                .count(),
            2
        );
        assert_eq!(
            plan.matches("-A PREROUTING -p tcp -j SIDETRACE_INBOUND\n")
                .count(),
            1
        );
        let flush = plan.find(":SIDETRACE_OLD - [0:0]").unwrap();
        let delete = plan.find("-X SIDETRACE_OLD").unwrap();
        let unjump = plan
            .find("-D OUTPUT -p udp -m udp --dport 53 -g SIDETRACE_OLD")
            .unwrap();
        assert!(flush < delete && unjump < delete);
        assert!(!plan.contains("KUBE-SERVICES"));
        // On an empty table the plan is the plain ruleset.
        assert_eq!(plan_apply(&rs, "*nat\nCOMMIT\n"), rs.restore_text());
    }

    #[test]
    fn cleanup_plan_removes_everything_of_ours() {
        let plan = plan_cleanup(SAVED).unwrap();
        assert_eq!(
            plan,
            "*nat\n:SIDETRACE_INBOUND - [0:0]\n:SIDETRACE_OLD - [0:0]\n\
             -D PREROUTING -p tcp -j SIDETRACE_INBOUND\n-D PREROUTING -p tcp -j SIDETRACE_INBOUND\n\
             -D OUTPUT -p udp -m udp --dport 53 -g SIDETRACE_OLD\n\
             -X SIDETRACE_INBOUND\n-X SIDETRACE_OLD\nCOMMIT\n"
        );
        assert_eq!(
            plan_cleanup("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"),
            None
        );
    }

    /// Answers save with a fixed table and records every call; `v6_missing` makes every
    /// ip6tables command "not installed".
    struct Scripted {
        save: &'static str,
        restore_fails: Option<&'static str>,
        v6_missing: bool,
        calls: RefCell<Vec<(String, Option<String>)>>,
    }

    impl Exec for Scripted {
        fn run(
            &self,
            program: &str,
            args: &[&str],
            stdin: Option<&str>,
        ) -> io::Result<CommandOutput> {
            self.calls.borrow_mut().push((
                format!("{program} {}", args.join(" ")),
                stdin.map(str::to_owned),
            ));
            if self.v6_missing && program.starts_with("ip6tables") {
                return Err(io::Error::new(io::ErrorKind::NotFound, "not installed"));
            }
            let fail = program
                .contains("restore")
                .then_some(self.restore_fails)
                .flatten();
            Ok(CommandOutput {
                success: fail.is_none(),
                code: Some(if fail.is_some() { 2 } else { 0 }),
                stdout: if program.contains("save") {
                    self.save.to_owned()
                } else {
                    String::new()
                },
                stderr: fail.unwrap_or_default().to_owned(),
            })
        }
    }

    #[test]
    fn apply_runs_save_then_restore_per_family() {
        let exec = Scripted {
            save: "*nat\nCOMMIT\n",
            restore_fails: None,
            v6_missing: false,
            calls: RefCell::default(),
        };
        let config = Config {
            ipv6: true,
            ..Config::default()
        };
        apply(&exec, Flavour::Nft, &config).unwrap();
        let calls = exec.calls.into_inner();
        let cmds: Vec<&str> = calls.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(
            cmds,
            vec![
                "iptables-nft-save -t nat",
                "iptables-nft-restore --noflush --wait=30",
                "ip6tables-nft-save -t nat",
                "ip6tables-nft-restore --noflush --wait=30",
            ]
        );
        assert_eq!(
            calls[3].1.as_deref(),
            Some(ruleset(&config, Family::V6).restore_text().as_str())
        );
    }

    #[test]
    fn a_failed_restore_names_the_command_and_its_stderr() {
        let exec = Scripted {
            save: "*nat\nCOMMIT\n",
            restore_fails: Some("line 7: RULE_APPEND failed (Invalid argument)"),
            v6_missing: false,
            calls: RefCell::default(),
        };
        let err = apply(&exec, Flavour::Legacy, &Config::default()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Command { .. }));
        assert!(msg.contains("iptables-legacy-restore --noflush"), "{msg}");
        assert!(msg.contains("RULE_APPEND failed"), "{msg}");
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn cleanup_of_a_clean_table_runs_no_restore() {
        let exec = Scripted {
            save: "*nat\nCOMMIT\n",
            restore_fails: None,
            v6_missing: false,
            calls: RefCell::default(),
        };
        cleanup(&exec, Flavour::Nft, &Config::default()).unwrap();
        let calls = exec.calls.into_inner();
        let cmds: Vec<&str> = calls.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(
            cmds,
            vec!["iptables-nft-save -t nat", "ip6tables-nft-save -t nat"]
        );
    }

    #[test]
    fn cleanup_also_removes_ipv6_rules_without_the_ipv6_flag() {
        let exec = Scripted {
            save: SAVED,
            restore_fails: None,
            v6_missing: false,
            calls: RefCell::default(),
        };
        cleanup(&exec, Flavour::Nft, &Config::default()).unwrap();
        let calls = exec.calls.into_inner();
        assert!(
            calls
                .iter()
                .any(|(c, _)| c.starts_with("ip6tables-nft-restore"))
        );
    }

    #[test]
    fn missing_ip6tables_only_fails_cleanup_when_ipv6_is_asked_for() {
        let exec = Scripted {
            save: SAVED,
            restore_fails: None,
            v6_missing: true,
            calls: RefCell::default(),
        };
        cleanup(&exec, Flavour::Nft, &Config::default()).unwrap();
        let config = Config {
            ipv6: true,
            ..Config::default()
        };
        let err = cleanup(&exec, Flavour::Nft, &config).unwrap_err();
        assert!(err.to_string().contains("ip6tables-nft-save"), "{err}");
        assert_eq!(err.exit_code(), 1);
    }
}

//! Which iptables binaries to run, and running them.
//!
//! A node's kube-proxy and CNI use either the nf_tables or the legacy x_tables kernel API, and
//! rules written through one are invisible to the other. Like Istio and the Kubernetes
//! iptables-wrapper, detection asks both `*-save` binaries and prefers the flavour that already
//! holds rules (the one the node's tooling uses, or our own from an earlier run), then nft when
//! it works, then legacy. Only when neither suffixed binary exists does it fall back to the
//! plain `iptables-save` / `iptables-restore` names.

use std::io::{self, Write as _};
use std::process::{Command, Stdio};

use crate::config::BackendChoice;
use crate::rules::Family;
use crate::{Error, Result};

/// Output of one finished command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// Whether it exited 0.
    pub success: bool,
    /// Exit code, `None` when killed by a signal.
    pub code: Option<i32>,
    /// Captured stdout (lossy UTF-8).
    pub stdout: String,
    /// Captured stderr (lossy UTF-8).
    pub stderr: String,
}

/// Runs external programs. The real one is [`System`]; tests script the answers.
pub trait Exec {
    /// Runs `program args...`, feeding `stdin` if given, and waits for it.
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<CommandOutput>;
}

/// Runs programs from `PATH`.
#[derive(Debug, Clone, Copy, Default)]
pub struct System;

impl Exec for System {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<CommandOutput> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // Restore input is a few kilobytes, far below the pipe buffer, so writing before
            // reading the output cannot deadlock.
            pipe.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        Ok(CommandOutput {
            success: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// An iptables flavour: which binary names to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// `iptables-nft-save`, `iptables-nft-restore`, `ip6tables-nft-*`.
    Nft,
    /// `iptables-legacy-save`, `iptables-legacy-restore`, `ip6tables-legacy-*`.
    Legacy,
    /// `iptables-save`, `iptables-restore`: whatever the image links them to.
    Unsuffixed,
}

impl Flavour {
    fn suffix(self) -> &'static str {
        match self {
            Flavour::Nft => "-nft",
            Flavour::Legacy => "-legacy",
            Flavour::Unsuffixed => "",
        }
    }

    /// Short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Nft => "nft",
            Flavour::Legacy => "legacy",
            Flavour::Unsuffixed => "unsuffixed",
        }
    }

    fn tool(self, family: Family, verb: &str) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        format!("{base}{}-{verb}", self.suffix())
    }

    /// The `*-save` binary for a family.
    pub fn save(self, family: Family) -> String {
        self.tool(family, "save")
    }

    /// The `*-restore` binary for a family.
    pub fn restore(self, family: Family) -> String {
        self.tool(family, "restore")
    }
}

/// What asking one flavour's `iptables-save` told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The binary is not installed.
    Missing,
    /// It ran but was refused: no root or no NET_ADMIN.
    Denied {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
    /// It ran and failed for another reason (e.g. the kernel lacks that API).
    Failed {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
    /// It works; `rules` counts the rules it already holds across all tables.
    Works {
        /// Number of `-A` lines in the save output.
        rules: usize,
    },
}

/// Whether a command's stderr says it lacks privileges (iptables prints "Permission denied
/// (you must be root)" for both EPERM and EACCES).
pub fn is_permission_error(stderr: &str) -> bool {
    stderr.contains("Permission denied")
        || stderr.contains("Operation not permitted")
        || stderr.contains("you must be root")
}

/// Runs one flavour's IPv4 save and classifies the answer.
pub fn probe(exec: &dyn Exec, flavour: Flavour) -> Probe {
    let program = flavour.save(Family::V4);
    match exec.run(&program, &[], None) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Probe::Missing,
        Err(e) => Probe::Failed {
            command: program,
            stderr: e.to_string(),
        },
        Ok(out) if out.success => Probe::Works {
            rules: out.stdout.lines().filter(|l| l.starts_with("-A ")).count(),
        },
        Ok(out) if is_permission_error(&out.stderr) => Probe::Denied {
            command: program,
            stderr: out.stderr.trim().to_owned(),
        },
        Ok(out) => Probe::Failed {
            command: program,
            stderr: out.stderr.trim().to_owned(),
        },
    }
}

fn describe(flavour: Flavour, probe: &Probe) -> String {
    let name = flavour.save(Family::V4);
    match probe {
        Probe::Missing => format!("{name}: not installed"),
        Probe::Denied { stderr, .. } | Probe::Failed { stderr, .. } => {
            format!("{name}: {stderr}")
        }
        Probe::Works { rules } => format!("{name}: works, {rules} rules"),
    }
}

fn denied(probe: &Probe) -> Option<Error> {
    match probe {
        Probe::Denied { command, stderr } => Some(Error::PermissionDenied {
            command: command.clone(),
            stderr: stderr.clone(),
        }),
        _ => None,
    }
}

/// Picks a flavour from the probes of nft, legacy and the unsuffixed names (pure).
pub fn choose(
    choice: BackendChoice,
    nft: &Probe,
    legacy: &Probe,
    plain: &Probe,
) -> Result<Flavour> {
    let explicit = match choice {
        BackendChoice::Nft => Some((Flavour::Nft, nft)),
        BackendChoice::Legacy => Some((Flavour::Legacy, legacy)),
        BackendChoice::Auto => None,
    };
    if let Some((flavour, probe)) = explicit {
        return match probe {
            Probe::Works { .. } => Ok(flavour),
            other => Err(denied(other).unwrap_or_else(|| Error::NoBackend {
                details: describe(flavour, other),
            })),
        };
    }
    match (nft, legacy) {
        (Probe::Works { rules: n }, Probe::Works { rules: l }) => {
            // Both APIs answer: follow the one that holds rules; nft on a tie (fresh pod).
            Ok(if l > n { Flavour::Legacy } else { Flavour::Nft })
        }
        (Probe::Works { .. }, _) => Ok(Flavour::Nft),
        (_, Probe::Works { .. }) => Ok(Flavour::Legacy),
        (Probe::Missing, Probe::Missing) => match plain {
            Probe::Works { .. } => Ok(Flavour::Unsuffixed),
            other => Err(denied(other).unwrap_or_else(|| Error::NoBackend {
                details: describe(Flavour::Unsuffixed, other),
            })),
        },
        _ => Err(denied(nft)
            .or_else(|| denied(legacy))
            .unwrap_or_else(|| Error::NoBackend {
                details: format!(
                    "{}; {}",
                    describe(Flavour::Nft, nft),
                    describe(Flavour::Legacy, legacy)
                ),
            })),
    }
}

/// Probes the system and picks a flavour.
pub fn detect(exec: &dyn Exec, choice: BackendChoice) -> Result<Flavour> {
    let nft = probe(exec, Flavour::Nft);
    let legacy = probe(exec, Flavour::Legacy);
    let plain = if nft == Probe::Missing && legacy == Probe::Missing {
        probe(exec, Flavour::Unsuffixed)
    } else {
        Probe::Missing
    };
    tracing::debug!(nft = ?nft, legacy = ?legacy, plain = ?plain, "probed iptables flavours");
    choose(choice, &nft, &legacy, &plain)
}

/// Runs a command and turns anything but success into an error naming it and its stderr.
pub fn run_checked(
    exec: &dyn Exec,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let out = exec
        .run(program, args, stdin)
        .map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.success {
        return Ok(out.stdout);
    }
    let stderr = out.stderr.trim().to_owned();
    if is_permission_error(&stderr) {
        return Err(Error::PermissionDenied { command, stderr });
    }
    Err(Error::Command {
        command,
        status: out
            .code
            .map_or_else(|| "killed by a signal".to_owned(), |c| format!("exit {c}")),
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn works(rules: usize) -> Probe {
        Probe::Works { rules }
    }

    fn denied_probe() -> Probe {
        Probe::Denied {
            command: "iptables-nft-save".into(),
            stderr: "Permission denied (you must be root)".into(),
        }
    }

    fn failed() -> Probe {
        Probe::Failed {
            command: "x".into(),
            stderr: "Protocol not supported".into(),
        }
    }

    const AUTO: BackendChoice = BackendChoice::Auto;

    #[test]
    fn prefers_the_flavour_holding_rules() {
        let m = Probe::Missing;
        assert_eq!(
            choose(AUTO, &works(0), &works(12), &m).unwrap(),
            Flavour::Legacy
        );
        assert_eq!(
            choose(AUTO, &works(3), &works(0), &m).unwrap(),
            Flavour::Nft
        );
        assert_eq!(
            choose(AUTO, &works(0), &works(0), &m).unwrap(),
            Flavour::Nft
        );
    }

    #[test]
    fn falls_back_to_whichever_works() {
        let m = Probe::Missing;
        assert_eq!(
            choose(AUTO, &failed(), &works(0), &m).unwrap(),
            Flavour::Legacy
        );
        assert_eq!(
            choose(AUTO, &works(0), &Probe::Missing, &m).unwrap(),
            Flavour::Nft
        );
        assert_eq!(
            choose(AUTO, &Probe::Missing, &Probe::Missing, &works(0)).unwrap(),
            Flavour::Unsuffixed
        );
    }

    #[test]
    fn permission_problems_are_reported_as_such() {
        let e = choose(AUTO, &denied_probe(), &denied_probe(), &Probe::Missing).unwrap_err();
        assert!(matches!(e, Error::PermissionDenied { .. }), "{e}");
        assert!(e.to_string().contains("NET_ADMIN"), "{e}");
        let e = choose(
            BackendChoice::Nft,
            &denied_probe(),
            &works(0),
            &Probe::Missing,
        )
        .unwrap_err();
        assert!(matches!(e, Error::PermissionDenied { .. }), "{e}");
    }

    #[test]
    fn nothing_usable_names_every_attempt() {
        let e = choose(AUTO, &Probe::Missing, &failed(), &Probe::Missing).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("iptables-nft-save: not installed"), "{msg}");
        assert!(msg.contains("Protocol not supported"), "{msg}");
        let e = choose(
            BackendChoice::Legacy,
            &works(0),
            &Probe::Missing,
            &Probe::Missing,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("iptables-legacy-save: not installed")
        );
    }

    #[test]
    fn binary_names() {
        assert_eq!(Flavour::Nft.save(Family::V6), "ip6tables-nft-save");
        assert_eq!(
            Flavour::Legacy.restore(Family::V4),
            "iptables-legacy-restore"
        );
        assert_eq!(Flavour::Unsuffixed.restore(Family::V6), "ip6tables-restore");
    }
}

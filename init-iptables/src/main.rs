//! `sidetrace-init` binary: parse, validate, then print (dry run), apply or clean up.
//! Exit codes: 0 done, 64 bad configuration, 1 failure to apply.

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use sidetrace_contract::Ipv6Capture;
use sidetrace_init::backend::{self, System};
use sidetrace_init::config::{Args, Config, has_global_ipv6};
use sidetrace_init::rules::Family;
use sidetrace_init::{Error, apply, loopback, rules};

/// The kernel's list of this network namespace's IPv6 addresses.
const IF_INET6: &str = "/proc/net/if_inet6";

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => exit(sidetrace_contract::exit::USAGE),
            };
        }
    };
    // Logs go to stderr so that `--dry-run` output on stdout stays pure restore input.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SIDETRACE_INIT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, kind = e.label(), "sidetrace-init failed");
            eprintln!("sidetrace-init: error: {e}");
            exit(e.exit_code())
        }
    }
}

fn run(args: &Args) -> Result<(), Error> {
    let mut config = Config::from_args(args)?;
    if args.dry_run && !args.cleanup {
        // Needs no privileges: the rules depend on the configuration alone (`auto` is decided
        // from the pod's addresses when applying, so a dry run shows IPv6 with --ipv6=on).
        print!("{}", rules::dry_run_text(&config));
        return Ok(());
    }
    let flavour = backend::detect(&System, args.backend)?;
    let pod_has_ipv6 = args.ipv6 == Ipv6Capture::Auto
        && std::fs::read_to_string(IF_INET6).is_ok_and(|text| has_global_ipv6(&text));
    if pod_has_ipv6 {
        // Auto: capture IPv6 because the pod has an IPv6 address. Where ip6tables cannot work
        // (no ip6table_nat on the node) the pod still starts, IPv4-only, and says so: a pod
        // that never starts is worse than IPv6 calls that go untraced.
        match apply::family_usable(&System, flavour, Family::V6) {
            Ok(()) => config.ipv6 = true,
            Err(e) => tracing::warn!(
                error = %e,
                "the pod has an IPv6 address but ip6tables is unusable: IPv6 traffic is NOT \
                 captured (set --ipv6=on to make this an error, --ipv6=off to silence it)"
            ),
        }
    }
    tracing::info!(
        flavour = flavour.name(),
        ipv6 = config.ipv6,
        "iptables backend selected"
    );
    if args.dry_run {
        // What cleanup removes depends on what is there, so this one reads the table.
        print!("{}", apply::cleanup_preview(&System, flavour, &config)?);
        Ok(())
    } else if args.cleanup {
        apply::cleanup(&System, flavour, &config)
    } else {
        apply::apply(&System, flavour, &config)?;
        if config.ipv6 {
            // The proxy forwards inbound IPv6 connections from ::6, which must be on lo.
            loopback::add_passthrough_source_v6()?;
            tracing::info!("::6/128 on lo (the proxy's IPv6 passthrough source)");
        }
        Ok(())
    }
}

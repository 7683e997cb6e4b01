//! Command-line flags (each with a `SIDETRACE_INIT_*` environment variable) and the typed,
//! validated [`Config`] they become.
//!
//! Flags are read as plain strings and validated here rather than by clap's value parsers, so
//! that every bad value ends in the same place: an [`Error::InvalidConfig`] naming the flag and
//! the value, and exit code 64.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser, ValueEnum};
use ipnet::IpNet;
use sidetrace_contract::{Ipv6Capture, defaults};

use crate::{Error, Result};

/// Which iptables flavour to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// Detect: the flavour that already holds rules, else nft when it works, else legacy.
    Auto,
    /// `iptables-nft-*` (the nf_tables kernel API).
    Nft,
    /// `iptables-legacy-*` (the x_tables kernel API).
    Legacy,
}

/// Flags of `sidetrace-init`, exactly as given. [`Config::from_args`] validates them.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "sidetrace-init",
    version,
    about = "Redirects a pod's TCP traffic through the sidetrace proxy with iptables",
    long_about = "Programs the pod's network namespace (nat table, SIDETRACE_* chains) so that \
        inbound TCP connections reach the proxy's inbound port and outbound ones its outbound \
        port, except the proxy's own traffic. Exit codes: 0 done, 64 bad configuration, \
        1 failure to apply."
)]
pub struct Args {
    /// uid the proxy runs as; its connections are never redirected.
    #[arg(long, env = "SIDETRACE_INIT_PROXY_UID", default_value_t = defaults::PROXY_UID.to_string())]
    pub proxy_uid: String,
    /// gid the proxy runs as; connections of this group are never redirected.
    #[arg(long, env = "SIDETRACE_INIT_PROXY_GID", default_value_t = defaults::PROXY_GID.to_string())]
    pub proxy_gid: String,
    /// Port the proxy accepts redirected inbound connections on.
    #[arg(long, env = "SIDETRACE_INIT_INBOUND_PORT", default_value_t = defaults::INBOUND_CAPTURE_PORT.to_string())]
    pub inbound_port: String,
    /// Port the proxy accepts redirected outbound connections on.
    #[arg(long, env = "SIDETRACE_INIT_OUTBOUND_PORT", default_value_t = defaults::OUTBOUND_CAPTURE_PORT.to_string())]
    pub outbound_port: String,
    /// The proxy's admin/health port: never captured inbound (kubelet probes reach it directly).
    #[arg(long, env = "SIDETRACE_INIT_ADMIN_PORT", default_value_t = defaults::ADMIN_PORT.to_string())]
    pub admin_port: String,
    /// Inbound destination ports to capture: `*` for all, a comma-separated list, or empty for none.
    #[arg(long, env = "SIDETRACE_INIT_INBOUND_PORTS", default_value = "*")]
    pub inbound_ports: String,
    /// Comma-separated inbound ports never captured (the admin port is always added).
    #[arg(long, env = "SIDETRACE_INIT_EXCLUDE_INBOUND_PORTS", default_value = "")]
    pub exclude_inbound_ports: String,
    /// Comma-separated outbound destination ports never captured.
    #[arg(
        long,
        env = "SIDETRACE_INIT_EXCLUDE_OUTBOUND_PORTS",
        default_value = ""
    )]
    pub exclude_outbound_ports: String,
    /// Comma-separated outbound destination CIDRs never captured (IPv4 and IPv6 may be mixed; a
    /// bare address is one host).
    #[arg(
        long,
        env = "SIDETRACE_INIT_EXCLUDE_OUTBOUND_CIDRS",
        default_value = ""
    )]
    pub exclude_outbound_cidrs: String,
    /// Outbound destination CIDRs to capture: `*` for all, or a comma-separated list; a family
    /// with no CIDR in the list captures nothing outbound.
    #[arg(
        long,
        env = "SIDETRACE_INIT_INCLUDE_OUTBOUND_CIDRS",
        default_value = "*"
    )]
    pub include_outbound_cidrs: String,
    /// IPv6 capture (ip6tables as well as iptables): `auto` when the pod has a global IPv6
    /// address, `on` always (a bare `--ipv6` means on), `off` never.
    #[arg(long, env = "SIDETRACE_INIT_IPV6", default_value = "auto", num_args = 0..=1,
          default_missing_value = "on", value_parser = Ipv6Capture::from_str)]
    pub ipv6: Ipv6Capture,
    /// iptables flavour to use.
    #[arg(long, env = "SIDETRACE_INIT_BACKEND", value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Print the exact iptables-restore input and change nothing (from the flags alone: IPv6
    /// appears with `--ipv6=on`, since `auto` is decided from the pod's addresses on apply).
    #[arg(long, env = "SIDETRACE_INIT_DRY_RUN", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub dry_run: bool,
    /// Remove every jump and chain this program added, instead of adding them (IPv4, and IPv6
    /// too whenever ip6tables works, with or without `--ipv6`).
    #[arg(long, env = "SIDETRACE_INIT_CLEANUP", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub cleanup: bool,
}

/// A TCP/UDP port number, never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(u16);

impl Port {
    /// The port number.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl TryFrom<u16> for Port {
    type Error = String;

    fn try_from(n: u16) -> std::result::Result<Self, String> {
        if n == 0 {
            Err("port 0 is not a valid port".to_owned())
        } else {
            Ok(Port(n))
        }
    }
}

impl FromStr for Port {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let n: u32 = s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a port number"))?;
        let n = u16::try_from(n).map_err(|_| format!("port {n} is above 65535"))?;
        Port::try_from(n)
    }
}

/// Which inbound destination ports are captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundPorts {
    /// Every port except the excluded ones (`*`).
    All,
    /// Only these ports (never empty: an empty list is [`InboundPorts::None`]).
    Only(Vec<Port>),
    /// No inbound capture at all.
    None,
}

/// Which outbound destinations are captured, per address family after [`Config::from_args`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncludeCidrs {
    /// Every destination (`*`, `0.0.0.0/0` or `::/0`).
    All,
    /// Only these networks (may hold both families; each ruleset takes its own).
    Only(Vec<IpNet>),
}

/// Validated configuration: everything the rule generator needs, nothing it has to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// uid whose connections are never redirected.
    pub proxy_uid: u32,
    /// gid whose connections are never redirected.
    pub proxy_gid: u32,
    /// Redirect target for inbound connections.
    pub inbound_port: Port,
    /// Redirect target for outbound connections.
    pub outbound_port: Port,
    /// Inbound ports that are captured.
    pub inbound_ports: InboundPorts,
    /// Inbound ports never captured, sorted, the admin port included.
    pub exclude_inbound_ports: Vec<Port>,
    /// Outbound ports never captured, sorted.
    pub exclude_outbound_ports: Vec<Port>,
    /// Outbound CIDRs never captured, in the order given.
    pub exclude_outbound_cidrs: Vec<IpNet>,
    /// Outbound CIDRs captured.
    pub include_outbound_cidrs: IncludeCidrs,
    /// Program IPv6 too. [`Config::from_args`] sets it for `--ipv6 on`; `auto` is resolved by
    /// the binary from the pod's addresses ([`has_global_ipv6`]).
    pub ipv6: bool,
}

impl Default for Config {
    /// The configuration of `sidetrace-init` with no flags.
    fn default() -> Self {
        Config {
            proxy_uid: defaults::PROXY_UID,
            proxy_gid: defaults::PROXY_GID,
            inbound_port: Port(defaults::INBOUND_CAPTURE_PORT),
            outbound_port: Port(defaults::OUTBOUND_CAPTURE_PORT),
            inbound_ports: InboundPorts::All,
            exclude_inbound_ports: vec![Port(defaults::ADMIN_PORT)],
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            include_outbound_cidrs: IncludeCidrs::All,
            ipv6: false,
        }
    }
}

fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        flag,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

fn parse_port(flag: &'static str, value: &str) -> Result<Port> {
    value.parse().map_err(|reason| invalid(flag, value, reason))
}

fn parse_id(flag: &'static str, value: &str) -> Result<u32> {
    let id: u32 = value
        .trim()
        .parse()
        .map_err(|_| invalid(flag, value, "not a numeric id"))?;
    if id == 0 {
        // uid 0 would exempt every root process, including whatever the app runs as root.
        return Err(invalid(flag, value, "id 0 (root) cannot be the proxy's id"));
    }
    Ok(id)
}

/// Splits a comma-separated list, ignoring blanks around items; an all-blank string is empty.
fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn parse_port_list(flag: &'static str, value: &str) -> Result<Vec<Port>> {
    let mut seen = BTreeSet::new();
    for item in split_list(value) {
        let port: Port = item.parse().map_err(|reason| invalid(flag, item, reason))?;
        if !seen.insert(port) {
            return Err(invalid(flag, item, format!("port {port} is listed twice")));
        }
    }
    Ok(seen.into_iter().collect())
}

/// One CIDR; a bare address means that single host. Host bits are masked off, as iptables
/// itself would do (`10.1.2.3/8` is `10.0.0.0/8`): the webhook passes annotation values through
/// verbatim, and a pod must not fail to start over a notation iptables accepts.
fn parse_cidr(flag: &'static str, item: &str) -> Result<IpNet> {
    let net: IpNet = match item.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => item
            .parse::<std::net::IpAddr>()
            .map(IpNet::from)
            .map_err(|_| {
                invalid(
                    flag,
                    item,
                    "not a CIDR or address (expected e.g. 10.0.0.0/8, 10.1.2.3 or fd00::/8)",
                )
            })?,
    };
    Ok(net.trunc())
}

/// A list of CIDRs in the order given; entries that mask to an earlier one are dropped (they
/// would only add identical rules).
fn parse_cidr_list(flag: &'static str, value: &str) -> Result<Vec<IpNet>> {
    let mut out: Vec<IpNet> = Vec::new();
    for item in split_list(value) {
        let net = parse_cidr(flag, item)?;
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

impl Config {
    /// Validates flags into a configuration; the error names the offending flag and value.
    pub fn from_args(args: &Args) -> Result<Config> {
        let proxy_uid = parse_id("--proxy-uid", &args.proxy_uid)?;
        let proxy_gid = parse_id("--proxy-gid", &args.proxy_gid)?;
        let inbound_port = parse_port("--inbound-port", &args.inbound_port)?;
        let outbound_port = parse_port("--outbound-port", &args.outbound_port)?;
        let admin_port = parse_port("--admin-port", &args.admin_port)?;
        if inbound_port == outbound_port {
            return Err(invalid(
                "--outbound-port",
                &args.outbound_port,
                "must differ from --inbound-port",
            ));
        }
        if admin_port == inbound_port || admin_port == outbound_port {
            return Err(invalid(
                "--admin-port",
                &args.admin_port,
                "must differ from the capture ports",
            ));
        }

        let mut exclude_inbound_ports =
            parse_port_list("--exclude-inbound-ports", &args.exclude_inbound_ports)?;
        if !exclude_inbound_ports.contains(&admin_port) {
            exclude_inbound_ports.push(admin_port);
            exclude_inbound_ports.sort();
        }

        let inbound_ports = if args.inbound_ports.trim() == "*" {
            InboundPorts::All
        } else {
            let ports = parse_port_list("--inbound-ports", &args.inbound_ports)?;
            if let Some(p) = ports.iter().find(|p| exclude_inbound_ports.contains(p)) {
                let reason = if *p == admin_port {
                    format!("port {p} is the proxy admin port, which is never captured")
                } else {
                    format!("port {p} is also in --exclude-inbound-ports")
                };
                return Err(invalid("--inbound-ports", &p.to_string(), reason));
            }
            if ports.is_empty() {
                InboundPorts::None
            } else {
                InboundPorts::Only(ports)
            }
        };

        let exclude_outbound_ports =
            parse_port_list("--exclude-outbound-ports", &args.exclude_outbound_ports)?;
        let exclude_outbound_cidrs =
            parse_cidr_list("--exclude-outbound-cidrs", &args.exclude_outbound_cidrs)?;

        let include_outbound_cidrs = if args.include_outbound_cidrs.trim() == "*" {
            IncludeCidrs::All
        } else {
            let nets = parse_cidr_list("--include-outbound-cidrs", &args.include_outbound_cidrs)?;
            if nets.is_empty() {
                return Err(invalid(
                    "--include-outbound-cidrs",
                    &args.include_outbound_cidrs,
                    "empty; use `*` for all destinations",
                ));
            }
            let all_v4 = nets
                .iter()
                .any(|n| matches!(n, IpNet::V4(_)) && n.prefix_len() == 0);
            let all_v6 = nets
                .iter()
                .any(|n| matches!(n, IpNet::V6(_)) && n.prefix_len() == 0);
            if all_v4 && all_v6 {
                IncludeCidrs::All
            } else {
                IncludeCidrs::Only(nets)
            }
        };

        Ok(Config {
            proxy_uid,
            proxy_gid,
            inbound_port,
            outbound_port,
            inbound_ports,
            exclude_inbound_ports,
            exclude_outbound_ports,
            exclude_outbound_cidrs,
            include_outbound_cidrs,
            ipv6: args.ipv6 == Ipv6Capture::On,
        })
    }
}

/// Whether `/proc/net/if_inet6` (one address a line: 32 hex digits, interface index, prefix
/// length, scope, flags, interface name) lists a global address (scope 0x00) on an interface
/// other than `lo`. Link-local (0x20) and host (0x10) scopes do not make a pod reachable over
/// IPv6, and `lo` holds only loopback and the proxy's own `::6` (added by an earlier run).
pub fn has_global_ipv6(if_inet6: &str) -> bool {
    if_inet6.lines().any(|line| {
        let mut f = line.split_whitespace();
        let (Some(addr), Some(_), Some(_), Some(scope), Some(_), Some(name)) =
            (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            return false;
        };
        addr.len() == 32 && name != "lo" && u8::from_str_radix(scope, 16) == Ok(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["sidetrace-init"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).expect("flags parse")
    }

    fn err(extra: &[&str]) -> String {
        Config::from_args(&args(extra))
            .expect_err("config should be rejected")
            .to_string()
    }

    #[test]
    fn no_flags_is_the_default_config() {
        assert_eq!(Config::from_args(&args(&[])).unwrap(), Config::default());
    }

    #[test]
    fn ports_zero_and_too_large_are_rejected_naming_the_value() {
        let e = err(&["--inbound-port", "0"]);
        assert!(e.contains("--inbound-port") && e.contains("\"0\""), "{e}");
        let e = err(&["--exclude-outbound-ports", "80,70000"]);
        assert!(e.contains("70000") && e.contains("above 65535"), "{e}");
        let e = err(&["--exclude-inbound-ports", "abc"]);
        assert!(e.contains("abc"), "{e}");
    }

    #[test]
    fn duplicate_ports_are_rejected() {
        let e = err(&["--exclude-outbound-ports", "80, 443,80"]);
        assert!(e.contains("port 80 is listed twice"), "{e}");
    }

    #[test]
    fn cidrs_are_normalised_like_iptables_does() {
        let c = Config::from_args(&args(&[
            "--exclude-outbound-cidrs",
            "10.1.2.3/8, 10.0.0.0/8,192.168.1.7,fd00::1",
        ]))
        .unwrap();
        let want: Vec<IpNet> = ["10.0.0.0/8", "192.168.1.7/32", "fd00::1/128"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(c.exclude_outbound_cidrs, want);
    }

    #[test]
    fn bad_cidrs_are_rejected_naming_the_value() {
        let e = err(&["--exclude-outbound-cidrs", "10.0.0.0/33"]);
        assert!(e.contains("10.0.0.0/33"), "{e}");
        let e = err(&["--include-outbound-cidrs", "10.0.0.0/8,nope"]);
        assert!(e.contains("\"nope\""), "{e}");
        let e = err(&["--include-outbound-cidrs", ","]);
        assert!(e.contains("use `*`"), "{e}");
    }

    #[test]
    fn admin_port_is_always_excluded_and_cannot_be_included() {
        let c = Config::from_args(&args(&["--exclude-inbound-ports", "9090"])).unwrap();
        assert_eq!(
            c.exclude_inbound_ports,
            vec![Port(9090), Port(defaults::ADMIN_PORT)]
        );
        let e = err(&["--inbound-ports", "8080,15021"]);
        assert!(e.contains("admin port"), "{e}");
        let e = err(&["--inbound-ports", "8080", "--exclude-inbound-ports", "8080"]);
        assert!(e.contains("also in --exclude-inbound-ports"), "{e}");
    }

    #[test]
    fn inbound_port_list_forms() {
        let c = Config::from_args(&args(&["--inbound-ports", "9080, 8080"])).unwrap();
        assert_eq!(
            c.inbound_ports,
            InboundPorts::Only(vec![Port(8080), Port(9080)])
        );
        let c = Config::from_args(&args(&["--inbound-ports", ""])).unwrap();
        assert_eq!(c.inbound_ports, InboundPorts::None);
    }

    #[test]
    fn include_all_spelled_as_cidrs_is_all() {
        let c = Config::from_args(&args(&["--include-outbound-cidrs", "0.0.0.0/0,::/0"])).unwrap();
        assert_eq!(c.include_outbound_cidrs, IncludeCidrs::All);
        let c = Config::from_args(&args(&["--include-outbound-cidrs", "0.0.0.0/0"])).unwrap();
        assert!(matches!(c.include_outbound_cidrs, IncludeCidrs::Only(_)));
    }

    #[test]
    fn capture_ports_must_differ_and_ids_must_not_be_root() {
        assert!(err(&["--outbound-port", "15006"]).contains("must differ"));
        assert!(err(&["--admin-port", "15001"]).contains("must differ"));
        assert!(err(&["--proxy-uid", "0"]).contains("root"));
        assert!(err(&["--proxy-gid", "x"]).contains("\"x\""));
    }

    #[test]
    fn ipv6_is_auto_by_default_and_a_bare_flag_means_on() {
        assert_eq!(args(&[]).ipv6, Ipv6Capture::Auto);
        assert!(
            !Config::from_args(&args(&[])).unwrap().ipv6,
            "auto is resolved by the binary"
        );
        assert_eq!(args(&["--ipv6"]).ipv6, Ipv6Capture::On);
        assert!(Config::from_args(&args(&["--ipv6"])).unwrap().ipv6);
        assert_eq!(args(&["--ipv6", "off"]).ipv6, Ipv6Capture::Off);
        assert_eq!(args(&["--ipv6=true"]).ipv6, Ipv6Capture::On);
        assert!(Args::try_parse_from(["sidetrace-init", "--ipv6", "maybe"]).is_err());
    }

    #[test]
    fn only_global_addresses_count() {
        let lo = "00000000000000000000000000000001 01 80 10 80       lo\n";
        let link_local = "fe80000000000000a8c0fffe00000002 02 40 20 80     eth0\n";
        let global = "fd000250000000000000000000000002 02 40 00 80     eth0\n";
        assert!(!has_global_ipv6(""));
        assert!(!has_global_ipv6(lo));
        assert!(!has_global_ipv6(&format!("{lo}{link_local}")));
        assert!(has_global_ipv6(&format!("{lo}{link_local}{global}")));
        assert!(!has_global_ipv6("garbage\n12 34\n"));
        let passthrough_on_lo = "00000000000000000000000000000006 01 80 00 80       lo\n";
        assert!(!has_global_ipv6(&format!(
            "{lo}{passthrough_on_lo}{link_local}"
        )));
    }
}

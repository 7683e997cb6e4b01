//! Pure rule generation: a [`Config`] and an address [`Family`] in, a [`Ruleset`] out.
//!
//! Rules are written exactly as `iptables-save` prints them (`-p tcp -m tcp --dport N`, `/0`
//! destinations omitted), so the text a reviewer reads in a golden file is the text they will
//! later see in the pod.

use std::fmt::Write as _;

use ipnet::IpNet;
use sidetrace_contract::defaults;

use crate::config::{Config, InboundPorts, IncludeCidrs, Port};

/// Prefix of every chain this program owns; cleanup removes exactly the chains with it.
pub const CHAIN_PREFIX: &str = "SIDETRACE_";
/// Inbound decisions, jumped to from PREROUTING (and from OUTPUT for the proxy's calls to its
/// own pod IP).
pub const INBOUND: &str = "SIDETRACE_INBOUND";
/// Inbound redirect to the proxy's inbound port.
pub const IN_REDIRECT: &str = "SIDETRACE_IN_REDIRECT";
/// Outbound decisions, jumped to from OUTPUT.
pub const OUTPUT: &str = "SIDETRACE_OUTPUT";
/// Outbound redirect to the proxy's outbound port.
pub const REDIRECT: &str = "SIDETRACE_REDIRECT";

/// The address family a ruleset is for: `iptables` or `ip6tables`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4, `iptables-restore`.
    V4,
    /// IPv6, `ip6tables-restore`.
    V6,
}

impl Family {
    /// Every loopback address of the family: traffic to these never leaves the pod and never
    /// needs the proxy.
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    /// Source address the proxy may bind when it forwards an inbound connection to the app at
    /// the pod IP (Istio's 127.0.0.6 / ::6 convention); such connections are left alone.
    fn passthrough_source(self) -> String {
        match self {
            Family::V4 => format!("{}/32", defaults::PASSTHROUGH_SOURCE_V4),
            Family::V6 => format!("{}/128", defaults::PASSTHROUGH_SOURCE_V6),
        }
    }

    fn contains(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }

    /// Human name, for logs and the dry-run header.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// One rule: the chain it is appended to and the rest of the `-A` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Chain the rule belongs to.
    pub chain: &'static str,
    /// Match and target, as `iptables-save` prints them after `-A CHAIN `.
    pub spec: String,
}

impl Rule {
    fn new(chain: &'static str, spec: impl Into<String>) -> Rule {
        Rule {
            chain,
            spec: spec.into(),
        }
    }

    /// The rule as an `iptables-restore` append line.
    pub fn append_line(&self) -> String {
        format!("-A {} {}", self.chain, self.spec)
    }
}

/// Everything one family needs: own chains, their rules, and the jumps into them from the
/// built-in chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// Family the rules are for.
    pub family: Family,
    /// Own chains, in declaration order.
    pub chains: Vec<&'static str>,
    /// Rules of the own chains, grouped by chain in declaration order.
    pub rules: Vec<Rule>,
    /// Rules in PREROUTING / OUTPUT that jump into the own chains.
    pub jumps: Vec<Rule>,
}

fn dport(port: Port) -> String {
    format!("-p tcp -m tcp --dport {port}")
}

/// `-d NET ` or nothing for a /0 network, as iptables-save prints it.
fn dest(net: &IpNet) -> String {
    if net.prefix_len() == 0 {
        String::new()
    } else {
        format!("-d {net} ")
    }
}

/// Builds the ruleset for one family.
///
/// The shape is Istio's (see the crate docs for the walk through each chain); two deliberate
/// differences: loopback is the whole 127.0.0.0/8 rather than 127.0.0.1, and the proxy's calls
/// to its own pod IP enter `SIDETRACE_INBOUND` (so excluded inbound ports and the admin port
/// stay excluded) instead of jumping straight to the redirect.
pub fn ruleset(config: &Config, family: Family) -> Ruleset {
    let chains = vec![INBOUND, IN_REDIRECT, OUTPUT, REDIRECT];
    let mut rules = Vec::new();
    let mut jumps = Vec::new();
    let uid = config.proxy_uid;
    let gid = config.proxy_gid;
    let lo = family.loopback();

    // SIDETRACE_INBOUND: which inbound connections the proxy sees.
    let capture_inbound = config.inbound_ports != InboundPorts::None;
    match &config.inbound_ports {
        InboundPorts::All => {
            for port in &config.exclude_inbound_ports {
                rules.push(Rule::new(INBOUND, format!("{} -j RETURN", dport(*port))));
            }
            rules.push(Rule::new(INBOUND, format!("-p tcp -j {IN_REDIRECT}")));
        }
        InboundPorts::Only(ports) => {
            for port in ports {
                rules.push(Rule::new(
                    INBOUND,
                    format!("{} -j {IN_REDIRECT}", dport(*port)),
                ));
            }
        }
        InboundPorts::None => {}
    }

    // SIDETRACE_IN_REDIRECT
    rules.push(Rule::new(
        IN_REDIRECT,
        format!("-p tcp -j REDIRECT --to-ports {}", config.inbound_port),
    ));

    // SIDETRACE_OUTPUT: locally originated connections, first those that stay on lo.
    rules.push(Rule::new(
        OUTPUT,
        format!("-s {} -o lo -j RETURN", family.passthrough_source()),
    ));
    for (kind, id) in [("uid", uid), ("gid", gid)] {
        if capture_inbound {
            // The proxy calling the pod's own IP (app -> pod IP -> outbound proxy -> pod IP):
            // that connection is inbound for the app, so it takes the inbound path.
            rules.push(Rule::new(
                OUTPUT,
                format!("! -d {lo} -o lo -m owner --{kind}-owner {id} -j {INBOUND}"),
            ));
        }
        // Anyone else talking over lo (the app to itself, the app to the proxy's ports) is
        // left alone, as is everything else the proxy sends, including the proxy calling the
        // app on 127.0.0.1.
        rules.push(Rule::new(
            OUTPUT,
            format!("-o lo -m owner ! --{kind}-owner {id} -j RETURN"),
        ));
        rules.push(Rule::new(
            OUTPUT,
            format!("-m owner --{kind}-owner {id} -j RETURN"),
        ));
    }
    rules.push(Rule::new(OUTPUT, format!("-d {lo} -j RETURN")));
    for port in &config.exclude_outbound_ports {
        rules.push(Rule::new(OUTPUT, format!("{} -j RETURN", dport(*port))));
    }
    for net in config
        .exclude_outbound_cidrs
        .iter()
        .filter(|n| family.contains(n))
    {
        rules.push(Rule::new(OUTPUT, format!("{}-j RETURN", dest(net))));
    }
    match &config.include_outbound_cidrs {
        IncludeCidrs::All => rules.push(Rule::new(OUTPUT, format!("-j {REDIRECT}"))),
        IncludeCidrs::Only(nets) => {
            for net in nets.iter().filter(|n| family.contains(n)) {
                rules.push(Rule::new(OUTPUT, format!("{}-j {REDIRECT}", dest(net))));
            }
        }
    }

    // SIDETRACE_REDIRECT
    rules.push(Rule::new(
        REDIRECT,
        format!("-p tcp -j REDIRECT --to-ports {}", config.outbound_port),
    ));

    if capture_inbound {
        jumps.push(Rule::new("PREROUTING", format!("-p tcp -j {INBOUND}")));
    }
    jumps.push(Rule::new("OUTPUT", format!("-p tcp -j {OUTPUT}")));

    Ruleset {
        family,
        chains,
        rules,
        jumps,
    }
}

impl Ruleset {
    /// The `iptables-restore --noflush` input that creates (or flushes) the own chains and fills
    /// them. With `--noflush`, a `:CHAIN` line empties an existing user chain and leaves every
    /// other chain alone. It does not remove stale jumps; [`crate::apply::plan_apply`] adds that.
    pub fn restore_text(&self) -> String {
        let mut out = String::from("*nat\n");
        for chain in &self.chains {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for rule in self.rules.iter().chain(&self.jumps) {
            out.push_str(&rule.append_line());
            out.push('\n');
        }
        out.push_str("COMMIT\n");
        out
    }
}

/// The families a configuration programs.
pub fn families(config: &Config) -> Vec<Family> {
    if config.ipv6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

/// What `--dry-run` prints: per family a comment naming the restore command, then its input.
/// Each section is valid restore input on its own (iptables-restore skips `#` lines).
pub fn dry_run_text(config: &Config) -> String {
    let mut out = String::new();
    for family in families(config) {
        let cmd = match family {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        };
        let _ = writeln!(out, "# {}: input of `{cmd} --noflush`", family.name());
        out.push_str(&ruleset(config, family).restore_text());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn lines(config: &Config, family: Family) -> Vec<String> {
        let rs = ruleset(config, family);
        rs.rules
            .iter()
            .chain(&rs.jumps)
            .map(Rule::append_line)
            .collect()
    }

    fn index_of(lines: &[String], needle: &str) -> usize {
        lines
            .iter()
            .position(|l| l == needle)
            .unwrap_or_else(|| panic!("missing rule {needle:?} in {lines:#?}"))
    }

    #[test]
    fn proxy_uid_is_exempt_before_any_redirect() {
        let l = lines(&Config::default(), Family::V4);
        let exempt = index_of(
            &l,
            "-A SIDETRACE_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        );
        let redirect = index_of(&l, "-A SIDETRACE_OUTPUT -j SIDETRACE_REDIRECT");
        assert!(exempt < redirect);
        let gid = index_of(
            &l,
            "-A SIDETRACE_OUTPUT -m owner --gid-owner 1337 -j RETURN",
        );
        assert!(gid < redirect);
    }

    #[test]
    fn admin_port_returns_before_the_inbound_redirect() {
        let l = lines(&Config::default(), Family::V4);
        let admin = index_of(
            &l,
            "-A SIDETRACE_INBOUND -p tcp -m tcp --dport 15021 -j RETURN",
        );
        let all = index_of(&l, "-A SIDETRACE_INBOUND -p tcp -j SIDETRACE_IN_REDIRECT");
        assert!(admin < all);
    }

    #[test]
    fn loopback_rules_keep_the_proxy_to_app_path_direct() {
        let l = lines(&Config::default(), Family::V4);
        // proxy -> 127.0.0.1:app is not matched by the self-call rule (`! -d lo`) and returns.
        let self_call = index_of(
            &l,
            "-A SIDETRACE_OUTPUT ! -d 127.0.0.0/8 -o lo -m owner --uid-owner 1337 -j SIDETRACE_INBOUND",
        );
        let app_lo = index_of(
            &l,
            "-A SIDETRACE_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
        );
        assert!(self_call < app_lo);
        index_of(&l, "-A SIDETRACE_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN");
    }

    #[test]
    fn ipv6_uses_ipv6_loopback_and_only_ipv6_cidrs() {
        let c = Config {
            exclude_outbound_cidrs: vec![
                "10.0.0.0/8".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
            ..Config::default()
        };
        let l = lines(&c, Family::V6);
        index_of(&l, "-A SIDETRACE_OUTPUT -d ::1/128 -j RETURN");
        index_of(&l, "-A SIDETRACE_OUTPUT -d fd00::/8 -j RETURN");
        assert!(!l.iter().any(|r| r.contains("10.0.0.0/8")));
        let v4 = lines(&c, Family::V4);
        assert!(!v4.iter().any(|r| r.contains("fd00::/8")));
    }

    #[test]
    fn include_list_without_the_family_captures_nothing_outbound() {
        let c = Config {
            include_outbound_cidrs: IncludeCidrs::Only(vec!["10.96.0.0/12".parse().unwrap()]),
            ..Config::default()
        };
        let v6 = lines(&c, Family::V6);
        assert!(!v6.iter().any(|r| r.ends_with("-j SIDETRACE_REDIRECT")));
        let v4 = lines(&c, Family::V4);
        index_of(
            &v4,
            "-A SIDETRACE_OUTPUT -d 10.96.0.0/12 -j SIDETRACE_REDIRECT",
        );
    }

    #[test]
    fn no_inbound_capture_means_no_prerouting_jump() {
        let c = Config {
            inbound_ports: InboundPorts::None,
            ..Config::default()
        };
        let rs = ruleset(&c, Family::V4);
        assert!(rs.jumps.iter().all(|j| j.chain != "PREROUTING"));
        assert!(rs.rules.iter().all(|r| !r.spec.ends_with(INBOUND)));
    }

    #[test]
    fn restore_text_declares_chains_before_rules_and_ends_with_commit() {
        let text = ruleset(&Config::default(), Family::V4).restore_text();
        assert!(text.starts_with("*nat\n:SIDETRACE_INBOUND - [0:0]\n"));
        assert!(text.ends_with("-A OUTPUT -p tcp -j SIDETRACE_OUTPUT\nCOMMIT\n"));
    }
}

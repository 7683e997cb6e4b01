//! The operator's configuration: flags with env equivalents, parsed and checked once.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use sidetrace_contract::defaults;

/// Who provides the webhook's serving certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CertMode {
    /// The operator creates, stores and rotates the CA and the certificate.
    Managed,
    /// Something else (cert-manager) does; the operator leaves TLS alone.
    External,
}

/// sidetrace-operator: reconciles TracedServices into sidecar config and status, and keeps the
/// injector webhook's TLS valid.
#[derive(Clone, Debug, Parser)]
#[command(name = "sidetrace-operator", version, about)]
pub struct Args {
    /// Namespace the control plane runs in (Lease, webhook Secret).
    #[arg(long, env = "SIDETRACE_NAMESPACE", default_value = defaults::CONTROL_PLANE_NAMESPACE)]
    pub namespace: String,
    /// Address of the health and metrics server (/healthz, /readyz, /metrics).
    #[arg(long, env = "SIDETRACE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Who provides the webhook's certificate.
    #[arg(
        long,
        env = "SIDETRACE_WEBHOOK_CERT_MODE",
        value_enum,
        default_value = "managed"
    )]
    pub webhook_cert_mode: CertMode,
    /// Secret (in --namespace) holding the webhook's certificate, key and CA bundle.
    #[arg(
        long,
        env = "SIDETRACE_WEBHOOK_SECRET",
        default_value = defaults::WEBHOOK_SECRET
    )]
    pub webhook_secret: String,
    /// MutatingWebhookConfiguration whose caBundle the operator keeps in sync.
    #[arg(
        long,
        env = "SIDETRACE_WEBHOOK_CONFIGURATION",
        default_value = defaults::INJECTOR_NAME
    )]
    pub webhook_configuration: String,
    /// Service name of the injector (its DNS names go into the certificate).
    #[arg(
        long,
        env = "SIDETRACE_WEBHOOK_SERVICE",
        default_value = defaults::INJECTOR_NAME
    )]
    pub webhook_service: String,
    /// Extra names or IPs for the serving certificate (e.g. the address of an out-of-cluster
    /// webhook registered by URL), comma-separated.
    #[arg(long, env = "SIDETRACE_WEBHOOK_EXTRA_SANS", value_delimiter = ',')]
    pub webhook_extra_san: Vec<String>,
    /// Lifetime of the webhook CA (e.g. 365d).
    #[arg(long, env = "SIDETRACE_CA_LIFETIME", default_value = "365d", value_parser = parse_duration)]
    pub ca_lifetime: Duration,
    /// Lifetime of the serving certificate.
    #[arg(long, env = "SIDETRACE_CERT_LIFETIME", default_value = "90d", value_parser = parse_duration)]
    pub cert_lifetime: Duration,
    /// Rotate a certificate when less than this is left.
    #[arg(long, env = "SIDETRACE_CERT_ROTATE_BEFORE", default_value = "30d", value_parser = parse_duration)]
    pub cert_rotate_before: Duration,
    /// How long a new CA is trusted before the serving certificate moves to it.
    #[arg(long, env = "SIDETRACE_CERT_OVERLAP", default_value = "10m", value_parser = parse_duration)]
    pub cert_overlap: Duration,
    /// How often certificates are checked.
    #[arg(long, env = "SIDETRACE_CERT_CHECK_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub cert_check_interval: Duration,
    /// Elect a leader through a Lease so that only one replica acts.
    #[arg(long, env = "SIDETRACE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the Lease.
    #[arg(
        long,
        env = "SIDETRACE_LEASE_NAME",
        default_value = defaults::OPERATOR_NAME
    )]
    pub lease_name: String,
    /// A leader that has not renewed for this long is replaced.
    #[arg(long, env = "SIDETRACE_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// This replica's identity in the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Check that a TracedService's collector host resolves (condition CollectorUnresolvable).
    #[arg(long, env = "SIDETRACE_CHECK_COLLECTOR_DNS", default_value_t = true, action = clap::ArgAction::Set)]
    pub check_collector_dns: bool,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "SIDETRACE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl Args {
    /// Checks relations between flags that clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.cert_rotate_before >= self.cert_lifetime {
            return Err("--cert-rotate-before must be shorter than --cert-lifetime".into());
        }
        if self.cert_lifetime > self.ca_lifetime {
            return Err("--cert-lifetime must not exceed --ca-lifetime".into());
        }
        if self.lease_duration < Duration::from_secs(3) {
            return Err("--lease-duration must be at least 3s".into());
        }
        Ok(())
    }

    /// DNS names of the injector Service plus the extra names.
    pub fn webhook_sans(&self) -> Vec<String> {
        let (svc, ns) = (&self.webhook_service, &self.namespace);
        let mut sans = vec![
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
            format!("{svc}.{ns}"),
            svc.clone(),
        ];
        sans.extend(
            self.webhook_extra_san
                .iter()
                .filter(|s| !s.is_empty())
                .cloned(),
        );
        sans
    }
}

/// Parses `90d`, `24h`, `10m`, `30s`, `500ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 10m, 24h or 90d"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{text:?}: unit must be ms, s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_or_say_why() {
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("ten").expect_err("bad").contains("ten"));
        assert!(parse_duration("5w").expect_err("bad").contains("unit"));
    }

    #[test]
    fn defaults_are_consistent_and_sans_cover_the_service() {
        let a = Args::parse_from(["op", "--webhook-extra-san", "10.250.250.1"]);
        a.validate().expect("defaults valid");
        let sans = a.webhook_sans();
        assert!(sans.contains(&"sidetrace-injector.sidetrace-system.svc".to_owned()));
        assert!(sans.contains(&"10.250.250.1".to_owned()));
        let bad = Args::parse_from(["op", "--cert-lifetime", "1d", "--cert-rotate-before", "2d"]);
        assert!(bad.validate().is_err());
    }
}

//! sidetrace-operator binary: flags → leader election → controller + certificate loop.

use std::sync::Arc;

use clap::Parser;
use sidetrace_contract::exit;
use sidetrace_operator::certs::{self, CertSettings, CertTargets};
use sidetrace_operator::config::{Args, CertMode};
use sidetrace_operator::controller;
use sidetrace_operator::leader::{self, LeaderSettings};
use sidetrace_operator::telemetry::{self, Metrics};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors.
            std::process::exit(if e.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    if let Err(e) = args.validate() {
        eprintln!("sidetrace-operator: {e}");
        std::process::exit(exit::USAGE);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log_level)
                .unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();

    let metrics = Arc::new(Metrics::default());
    let listener = tokio::net::TcpListener::bind(args.metrics_addr).await?;
    let router = telemetry::router(metrics.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });

    let client = kube::Client::try_default().await?;
    if args.leader_election {
        let identity = args.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
        let settings = LeaderSettings {
            namespace: args.namespace.clone(),
            lease_name: args.lease_name.clone(),
            identity,
            lease_duration: args.lease_duration,
            owner_secret: Some(args.webhook_secret.clone()),
        };
        let renewed_at = leader::acquire(client.clone(), &settings).await?;
        let hold_client = client.clone();
        tokio::spawn(async move {
            let lost = leader::hold(hold_client, settings, renewed_at).await;
            tracing::error!(error = %lost, "exiting so that a fresh start re-elects");
            std::process::exit(exit::FAILURE);
        });
    }
    metrics.set_leader(true);

    if args.webhook_cert_mode == CertMode::Managed {
        let targets = CertTargets {
            secret_name: args.webhook_secret.clone(),
            namespace: args.namespace.clone(),
            webhook_configuration: args.webhook_configuration.clone(),
        };
        let settings = CertSettings {
            ca_lifetime: args.ca_lifetime,
            cert_lifetime: args.cert_lifetime,
            rotate_before: args.cert_rotate_before,
            overlap: args.cert_overlap,
            sans: args.webhook_sans(),
        };
        tokio::spawn(certs::run(
            client.clone(),
            targets,
            settings,
            args.cert_check_interval,
        ));
    }

    controller::run(
        client,
        metrics,
        args.check_collector_dns,
        args.namespace.clone(),
    )
    .await?;
    tracing::info!("operator stopped");
    Ok(())
}

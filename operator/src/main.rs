//! Operator that reconciles TracedServices into sidecar config, status and webhook TLS

use clap::Parser;

/// Operator that reconciles TracedServices into sidecar config, status and webhook TLS
#[derive(Debug, Parser)]
#[command(name = "sidetrace-operator", version, about)]
struct Args {}

fn main() {
    let _args = Args::parse();
}

//! Init container that redirects a pod's TCP traffic through the sidetrace proxy with iptables

use clap::Parser;

/// Init container that redirects a pod's TCP traffic through the sidetrace proxy with iptables
#[derive(Debug, Parser)]
#[command(name = "sidetrace-init", version, about)]
struct Args {}

fn main() {
    let _args = Args::parse();
}

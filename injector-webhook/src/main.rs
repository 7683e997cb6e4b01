//! Mutating admission webhook that injects the sidetrace init container and sidecar into pods

use clap::Parser;

/// Mutating admission webhook that injects the sidetrace init container and sidecar into pods
#[derive(Debug, Parser)]
#[command(name = "sidetrace-injector", version, about)]
struct Args {}

fn main() {
    let _args = Args::parse();
}

//! Transparent tracing sidecar: intercepts a pod's HTTP traffic, propagates B3/W3C context and exports Zipkin v2 spans

use clap::Parser;

/// Transparent tracing sidecar: intercepts a pod's HTTP traffic, propagates B3/W3C context and exports Zipkin v2 spans
#[derive(Debug, Parser)]
#[command(name = "sidetrace-proxy", version, about)]
struct Args {}

fn main() {
    let _args = Args::parse();
}

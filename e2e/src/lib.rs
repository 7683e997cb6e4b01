//! End-to-end test support: the harnesses that run sidetrace's real binaries against real
//! peers (iptables in network namespaces, a real collector, a real kube-apiserver).
//!
//! The peers are installed and cached by `e2e/peers.sh`; each harness finds them there and,
//! when they (or root) are missing, tells the test to skip — or to fail under `CI=true`.

pub mod chartdocs;
pub mod cli;
pub mod cluster;
pub mod collector;
pub mod controlplane;
pub mod netns;
pub mod prometheus;

//! `sidetrace` (also `kubectl sidetrace`): the user's view of a sidetrace install.
//!
//! - `check`: a checklist of everything that must hold for spans to arrive — the CRD, the
//!   operator and its Lease, the injector, the webhook's registration, caBundle and
//!   reachability, each namespace's labels and Pod Security level, pods that should carry the
//!   sidecar and do not (with the webhook's recorded reason), the TracedServices' conditions,
//!   and a sample of proxies' own view from their admin port — each failure with what to do.
//! - `status`: TracedServices and their pods in one table.
//! - `trace` / `traces`: traces from the in-cluster Jaeger, printed as span trees.
//!
//! Data flows one way: [`gather`] reads the cluster (the API server, and through its pod and
//! service proxies the proxies' admin ports and Jaeger's query API) into plain facts; the pure
//! modules turn facts into verdicts ([`check`]), rows ([`status`]) and trees ([`spans`]);
//! [`render`] prints them, with colour only on a terminal.

pub mod ca;
pub mod check;
pub mod error;
pub mod gather;
pub mod proxy;
pub mod render;
pub mod spans;
pub mod status;

pub use error::{Error, Result};

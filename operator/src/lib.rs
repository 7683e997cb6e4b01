//! sidetrace-operator: the control plane.
//!
//! Data flow: a [`controller`] watches TracedServices, the pods they select (metadata only) and
//! the namespaces' inject labels. For each TracedService, [`render`] turns the spec into the
//! sidecar config ConfigMap (the [`sidetrace_contract::ProxyConfig`] file the proxy reads) and
//! [`status`] decides the status and conditions from what the caches show. The controller only
//! reads caches and writes with server-side apply under one field manager; [`pod_matches`]
//! makes a pod relabelled out of a selector wake the TracedService it left.
//!
//! Beside it, [`certs`] keeps the injector webhook's TLS (a CA, a serving certificate in a
//! Secret, the caBundle of the MutatingWebhookConfiguration) valid and rotated, and [`leader`]
//! makes sure only one replica does any of this at a time.

pub mod certs;
pub mod config;
pub mod controller;
pub mod error;
pub mod leader;
pub mod pod_matches;
pub mod render;
pub mod status;
pub mod telemetry;

pub use error::{Error, Result};

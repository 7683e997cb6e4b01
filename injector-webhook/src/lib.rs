//! `sidetrace-injector`: the mutating admission webhook that turns a plain pod into a traced one.
//!
//! ## Model
//! The apiserver sends an AdmissionReview for every pod CREATE that the
//! MutatingWebhookConfiguration selects. The webhook answers `allowed: true` always (a tracing
//! add-on must never block workloads), with a JSON Patch when the pod is to be injected:
//!
//! ```text
//! body ──review──► AdmissionRequest<Pod>
//!                  │ decision::decide        namespace label / pod opt-in/out, system and
//!                  │                         control-plane namespaces, hostNetwork, other
//!                  │                         meshes, already injected
//!                  │ overrides::parse        sidetrace.dev/* annotations → values + warnings
//!                  │ selection::select       TracedService (oldest match wins) → ConfigMap
//!                  │ patch::build            init container, proxy (native or classic),
//!                  ▼                         config volume, sidetrace.dev/status annotation
//!                  AdmissionResponse { patch, warnings }
//! ```
//!
//! Everything above is pure ([`mutate::mutate`], [`review::review`]) and tested with golden
//! fixtures under `tests/fixtures/`. The shell is thin: [`server`] (axum over rustls with
//! certificate hot-reload, metrics) and [`cluster`] (apiserver version detection and the
//! reflectors that cache namespaces and TracedServices, so no admission makes an API call).
//!
//! Kubelet probes are not rewritten: inbound capture forwards them to the app like any other
//! request, and the proxy does not trace requests from `kube-probe/` user agents.

pub mod cluster;
pub mod config;
pub mod decision;
pub mod error;
pub mod metrics;
pub mod mutate;
pub mod overrides;
pub mod patch;
pub mod review;
pub mod selection;
pub mod server;
pub mod settings;
pub mod tls;

pub use error::{Error, Result};
pub use settings::{Settings, SidecarMode};

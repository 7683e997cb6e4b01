//! sidetrace-proxy: the transparent tracing sidecar.
//!
//! Model: iptables in the pod redirects inbound TCP to the **inbound listener** (default 15006)
//! and the app's outbound TCP to the **outbound listener** (default 15001). For each accepted
//! connection the proxy
//!
//! 1. finds where it was going ([`orig_dst`], `SO_ORIGINAL_DST`) and where to send it
//!    ([`listener::route`]: the app on loopback for inbound, the original destination for
//!    outbound; a connection that was not redirected is refused, never looped back — or, in
//!    explicit mode for tests, sent to `--inbound-forward-to` / `--outbound-forward-to`);
//! 2. reads the first bytes with a short deadline ([`detect`]): HTTP/1, HTTP/2 prior knowledge,
//!    or opaque TCP (TLS, server-speaks-first protocols, anything else);
//! 3. for HTTP, serves the connection with hyper and proxies each request ([`http`]):
//!    `sidetrace_trace::start_hop` rewrites the trace headers for the next hop, the request
//!    streams to the upstream over a pooled connection ([`upstream`]), and the span is finished
//!    when the response body ends and queued on the exporter (never blocking the request);
//! 4. for anything else, copies bytes both ways.
//!
//! Limits bound each of those steps ([`limits`]): `--max-connections` open client
//! connections (past it a connection is closed at once), `--idle-timeout` for connections
//! that stop talking, and an upstream response timeout per request (`--response-timeout`, a
//! TracedService's port or operation `timeout`), answered with 504.
//!
//! Around that: an admin server ([`admin`]: /healthz, /ready, /metrics, /config,
//! POST /shutdown), config-file hot reload ([`reload`]) swapping an `Arc` in [`state`], and
//! graceful drain on SIGTERM ([`run`]), and giving heap memory back after a
//! connection burst ([`reclaim`]). Tracing logic (header formats, span building, Zipkin
//! JSON, the batched exporter) lives in the `sidetrace-trace` crate.

pub mod admin;
pub mod config;
pub mod detect;
pub mod error;
pub mod http;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod orig_dst;
pub mod reclaim;
pub mod red;
pub mod reload;
pub mod run;
pub mod state;
pub mod upstream;
pub mod wait;

pub use error::{Error, Result};

//! The tracing core of the sidetrace proxy: pure decisions about trace context and spans,
//! plus the exporter that ships finished spans to a collector over OTLP/HTTP or Zipkin v2. It knows nothing
//! about sockets or listeners; the proxy (`sidetrace-proxy`) calls it per request.
//!
//! Data flow for one request through the proxy:
//! 1. The proxy fills a [`RequestInfo`] and calls [`start_hop`] with the request headers.
//!    [`propagation::extract`] reads B3 single, B3 multi and W3C context (in that order of
//!    precedence); malformed context is ignored and reported on the hop for the proxy to count. The hop gets a new span id,
//!    a child of the incoming span or the root of a new 128-bit trace, and a sampling
//!    decision ([`sampling::decide`]: a trusted caller's debug or sampled flag, else the
//!    operation's or the service's rate, within the `maxTracesPerSecond` token bucket).
//!    [`propagation::inject`] rewrites the headers for the next hop in the configured formats
//!    plus every format that arrived. Excluded paths and kubelet probes return `None`.
//!    A sampled hop is named by the first matching operation rule, else by a default built
//!    from the path's route template ([`naming::route_template`], ids become `{id}`) within
//!    the proxy's [`NameBudget`]; `http.url` drops the query string unless the config opts in.
//! 2. The proxy forwards the request and, when the exchange ends, calls [`Hop::finish`] (or
//!    [`Hop::finish_after`]) with a [`ResponseInfo`]; a sampled hop yields a Zipkin v2 [`Span`].
//! 3. The proxy hands the span to [`ExportHandle::record`], which never blocks; the
//!    [`Exporter`] task batches spans and POSTs them to the collector, encoded by
//!    [`encode_otlp`] (protobuf, OpenTelemetry semantic conventions, the pod's [`Resource`])
//!    or [`encode_zipkin_v2`] (JSON): one span model, two encodings, so they cannot drift.
//!
//! Opt-in ([`TracerConfig::infer_parents`]): for apps that copy no headers, the proxy calls
//! [`start_hop_inferring`] with the pod's inbound requests in flight ([`InFlight`]); an
//! outbound request without context then continues the only one in flight, or starts a new
//! trace when there are none or several ([`infer`]).
//!
//! Details of the API beyond that flow, and why they exist:
//! - [`ExporterConfig::new`] fills in defaults; `initial_backoff` is the wait before the first
//!   retry of a failed batch (doubled per retry, capped), so a collector that is restarting is
//!   not hammered.
//! - [`Hop::finish_after`] takes an elapsed time measured with a monotonic clock, so a wall
//!   clock step during the request cannot distort a span's duration. [`Hop::is_sampled`] and
//!   [`Hop::name`] show the sampling decision and span name before the hop ends, and
//!   [`Hop::malformed_context`] tells the proxy to count the dropped context in its metrics.
//! - [`TracerConfig::new`] (defaults, for tests and tools) and
//!   [`TracerConfig::from_proxy_config`] (a config file over the proxy's [`TracerFlags`]) build
//!   the settings.
//! - Span tag keys and values are [`Text`] (a fixed name, short text in place, shared or
//!   owned) in one sorted [`Tags`] vector per span, and the proxy formats a connection's
//!   address tags once ([`ConnTags`]): a span costs a handful of allocations, not two per tag.
//!   Both encodings write bytes straight from the span (no `serde_json` or prost messages on
//!   the export path); the tests hold them to what those libraries produce.
//! - [`ExportStats`] is a snapshot of the exporter's counters (`exported`, `batches_sent`,
//!   `retries`, the dropped spans by reason, `queue_depth`, `queue_capacity`) that
//!   [`render_metrics`] writes as Prometheus text.

pub mod error;
pub mod export;
pub mod hop;
pub mod id;
pub mod infer;
pub mod naming;
pub mod otlp;
pub mod propagation;
pub mod sampling;
pub mod span;
pub mod tags;
pub mod text;
pub mod tls;

pub use error::{Error, Result};
pub use export::{ExportHandle, ExportStats, Exporter, ExporterConfig, render_metrics};
pub use hop::{
    ConnTags, Hop, RequestInfo, ResponseInfo, TracerConfig, TracerFlags, start_hop,
    start_hop_inferring,
};
pub use id::{SpanContext, SpanId, TraceId};
pub use infer::{InFlight, InFlightGuard, Inference};
pub use naming::{MAX_DEFAULT_NAMES, NameBudget, route_template};
pub use otlp::{Resource, encode_otlp};
pub use propagation::{Extracted, Formats};
pub use sidetrace_contract::CollectorProtocol;
pub use sidetrace_contract::{Direction, OperationRule, PropagationFormat};
pub use span::{Endpoint, Span, SpanKind, encode_zipkin_v2};
pub use tags::Tags;
pub use text::Text;
pub use tls::CollectorRoots;

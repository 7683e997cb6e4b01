//! One traced hop: the decision taken when a request passes the proxy, and the span that
//! comes out when its response does.
//!
//! The semantics are Envoy's Zipkin tracer with `shared_span_context: false`: every hop gets
//! its own span, a child of whatever span the incoming headers name.
//! - Inbound, no context: a new root trace (128-bit id), sampled by rate.
//! - Inbound, with context: a SERVER span, child of the caller's span.
//! - Outbound, with the context the app copied from its inbound request: a CLIENT span, child
//!   of the pod's SERVER span. Without: a new root.
//! - A sampling decision that arrived (`x-b3-sampled`, `b3: 0`, traceparent flags) is kept;
//!   debug forces sampling. Undecided traces are sampled by hashing the trace id, so every
//!   hop of one trace takes the same decision without coordination.
//! - The headers are rewritten for the next hop: the new span's id becomes the span id the
//!   app (inbound) or the callee (outbound) sees.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use sidetrace_contract::proxy_config::{DEFAULT_PROPAGATION, path_is_excluded};
use sidetrace_contract::{
    Direction, OperationRule, OperationSampling, PropagationFormat, ProxyConfig,
};

use crate::id::{SpanContext, SpanId, TraceId, random_request_id};
use crate::infer::{self, Candidate, InFlight, Inference, PARENT_TAG, Parent};
use crate::naming::{NameBudget, overflow_name, route_template};
use crate::propagation::{self, Formats, X_REQUEST_ID};
use crate::sampling::{self, Incoming, Policy, Reason, TraceLimiter};
use crate::span::{Endpoint, Span, SpanKind};
use crate::tags::Tags;
use crate::text::Text;

/// User agents of kubelet probes start with this; probes are proxied but never traced.
pub const KUBE_PROBE_USER_AGENT_PREFIX: &str = "kube-probe/";

/// Longest tag value and default operation name kept, in bytes: a bound on span memory
/// whatever the request line looks like.
pub const MAX_TAG_LEN: usize = 1024;
/// Most tags the proxy itself puts on a span (besides the config's static tags): the room a
/// span's tags are made with.
const SPAN_TAGS: usize = 16;
/// Longest default operation name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Per-proxy tracing settings, rebuilt on config reload (cheap to share behind an `Arc`).
#[derive(Clone, Debug, PartialEq)]
pub struct TracerConfig {
    /// `localEndpoint.serviceName` of every span, as configured.
    pub service_name: String,
    /// Probability in 0..=1 that a trace without a sampling decision is sampled.
    pub sampling_rate: f64,
    /// Rates of single operations, overriding `sampling_rate` for them.
    pub operation_sampling: Vec<OperationSampling>,
    /// Follow callers' sampling decisions (false: the proxy decides every hop itself).
    pub trust_incoming: bool,
    /// The `maxTracesPerSecond` token bucket, when set. Runtime state shared by clones; the
    /// proxy carries it over a reload that keeps the same limit.
    pub trace_limiter: Option<Arc<TraceLimiter>>,
    /// Formats written on every forwarded request (in addition to those that arrived).
    pub formats: Vec<PropagationFormat>,
    /// Span naming rules; the first match wins.
    pub operations: Vec<OperationRule>,
    /// Paths proxied but not traced: exact, or a prefix when ending in `*`.
    pub exclude_paths: Vec<String>,
    /// Static tags added to every span (the proxy's own tags win on a clash). Held shared
    /// ([`Text::shared`]): every span clones the map, which then counts references instead of
    /// copying strings.
    pub tags: Tags,
    /// The pod's IPv4, for `localEndpoint` when the socket address is loopback/unspecified.
    pub local_ipv4: Option<Ipv4Addr>,
    /// Keep the query string in `http.url` (a TracedService's `recordQueryString`). Off by
    /// default: query strings carry tokens.
    pub record_query_string: bool,
    /// Infer the parent of outbound requests that carry no trace context from the pod's
    /// inbound requests in flight ([`crate::infer`]). Off by default: without it spans are
    /// exactly what header propagation alone gives.
    pub infer_parents: bool,
    /// The distinct default span names this proxy has given out (see
    /// [`TracerConfig::operation_name`]). Runtime state shared by every clone: the proxy
    /// carries it over config reloads so the bound holds for the life of the process.
    pub name_budget: Arc<NameBudget>,
}

/// What the proxy's flags (and environment) say about tracing, for
/// [`TracerConfig::from_proxy_config`]. Overrides beat the config file; the file beats the
/// defaults; the file's tags are added over these tags.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TracerFlags {
    /// Service name that beats the file's (the pod's own choice).
    pub service_name_override: Option<String>,
    /// Service name when neither the override nor the file names one.
    pub service_name: String,
    /// Sampling rate that beats the file's.
    pub sampling_override: Option<f64>,
    /// Sampling rate when neither the override nor the file sets one.
    pub sampling_rate: f64,
    /// Tags every span carries unless the file sets the same key (the pod's name and
    /// namespace).
    pub tags: BTreeMap<String, String>,
    /// The pod's IPv4 (see [`TracerConfig::local_ipv4`]).
    pub local_ipv4: Option<Ipv4Addr>,
    /// Parent inference that beats the file's `inferParents` (the pod's annotation).
    pub infer_parents_override: Option<bool>,
}

impl TracerFlags {
    /// Only defaults: `service_name` and `sampling_rate` apply where the file is silent.
    pub fn new(service_name: impl Into<String>, sampling_rate: f64) -> Self {
        Self {
            service_name: service_name.into(),
            sampling_rate,
            ..Self::default()
        }
    }
}

impl TracerConfig {
    /// Defaults for `service_name`: sample everything, write B3 multi and W3C.
    pub fn new(service_name: impl Into<String>) -> Self {
        Self {
            service_name: service_name.into(),
            sampling_rate: sidetrace_contract::defaults::SAMPLING_RATE,
            operation_sampling: Vec::new(),
            trust_incoming: true,
            trace_limiter: None,
            formats: DEFAULT_PROPAGATION.to_vec(),
            operations: Vec::new(),
            exclude_paths: Vec::new(),
            tags: Tags::new(),
            local_ipv4: None,
            record_query_string: false,
            infer_parents: false,
            name_budget: Arc::default(),
        }
    }

    /// Builds the tracing settings from a config file layered over the proxy's flags: a
    /// flag override beats the file, the file beats a flag default (see [`TracerFlags`]). The
    /// one constructor for the proxy and the tests, so the precedence cannot drift.
    pub fn from_proxy_config(cfg: &ProxyConfig, flags: &TracerFlags) -> Self {
        // The file's tags over the flags' (a later insert wins).
        let tags = flags
            .tags
            .iter()
            .chain(&cfg.tags)
            .map(|(k, v)| (Text::shared(k), Text::shared(v)))
            .collect();
        Self {
            service_name: flags
                .service_name_override
                .clone()
                .or_else(|| cfg.service_name.clone())
                .unwrap_or_else(|| flags.service_name.clone()),
            sampling_rate: flags
                .sampling_override
                .or(cfg.sampling_rate)
                .unwrap_or(flags.sampling_rate),
            operation_sampling: cfg.operation_sampling.clone(),
            trust_incoming: !cfg.ignore_incoming_sampling,
            trace_limiter: cfg
                .max_traces_per_second
                .map(|limit| Arc::new(TraceLimiter::new(limit))),
            formats: cfg.propagation_formats().to_vec(),
            operations: cfg.operations.clone(),
            exclude_paths: cfg.exclude_paths.clone(),
            tags,
            local_ipv4: flags.local_ipv4,
            record_query_string: cfg.record_query_string,
            infer_parents: flags.infer_parents_override.unwrap_or(cfg.infer_parents),
            // A fresh budget; the proxy keeps its first one for the life of the process.
            name_budget: Arc::default(),
        }
    }

    /// Whether a request is proxied without tracing: an excluded path (the contract's rule,
    /// [`path_is_excluded`], which [`ProxyConfig::is_excluded_path`] also uses) or a kubelet
    /// probe.
    pub fn is_excluded(&self, path: &str, user_agent: Option<&str>) -> bool {
        user_agent.is_some_and(|ua| ua.starts_with(KUBE_PROBE_USER_AGENT_PREFIX))
            || path_is_excluded(&self.exclude_paths, path)
    }

    /// The span name: the first matching [`OperationRule`], else a readable default built
    /// from the path's route template ([`route_template`]: ids become `{id}`),
    /// `"<METHOD> <route>"` inbound (`GET /orders/{id}`) and `"<METHOD> <host><route>"`
    /// outbound (`GET service2:8000/trace/{id}`), query string excluded, at most
    /// [`MAX_NAME_LEN`] bytes.
    ///
    /// Default names are bounded per proxy by [`TracerConfig::name_budget`]: once it holds
    /// [`crate::naming::MAX_DEFAULT_NAMES`] distinct names, a new one becomes
    /// `"<METHOD> {other}"` and is counted. Rule names are never capped: the config bounds them.
    ///
    /// Envoy names spans after the route or host; the route reads better in Jaeger's
    /// operation list for the Envoy-demo shape of service. Outbound names carry the host so a
    /// pod's CLIENT spans do not share names with its own SERVER operations.
    pub fn operation_name(
        &self,
        direction: Direction,
        method: &str,
        path: &str,
        host: &str,
    ) -> Text {
        if let Some(rule) = self
            .operations
            .iter()
            .find(|r| r.matches(direction, method, path, host))
        {
            return Text::copy(&rule.name);
        }
        let route = route_template(path_only(path));
        // Formatted in place when short (most names are), see `Text`.
        let name = match direction {
            Direction::Inbound => Text::display(format_args!("{method} {route}")),
            Direction::Outbound => Text::display(format_args!("{method} {host}{route}")),
        };
        let name = if name.len() > MAX_NAME_LEN {
            Text::copy(truncate_str(&name, MAX_NAME_LEN))
        } else {
            name
        };
        if self.name_budget.admit(&name) {
            name
        } else {
            Text::from_static(overflow_name(method))
        }
    }

    /// Whether a trace with no sampling decision is sampled: the lower 64 bits of the trace
    /// id against `rate * 2^64`, so every hop of a trace decides alike.
    pub fn sample_by_rate(&self, trace_id: &TraceId) -> bool {
        sample_by_rate(trace_id, self.sampling_rate)
    }

    /// The sampling settings, for [`sampling::decide`].
    pub fn sampling_policy(&self) -> Policy<'_> {
        Policy {
            rate: self.sampling_rate,
            operations: &self.operation_sampling,
            trust_incoming: self.trust_incoming,
        }
    }
}

/// See [`TracerConfig::sample_by_rate`].
pub fn sample_by_rate(trace_id: &TraceId, rate: f64) -> bool {
    sampling::under_rate(trace_id.low(), rate)
}

fn path_only(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncate_str(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A tag value copied from the request (in place when short, see [`Text::copy`]), at most
/// [`MAX_TAG_LEN`] bytes.
fn tag_text(v: &str) -> Text {
    Text::copy(truncate_str(v, MAX_TAG_LEN))
}

/// A tag value formatted straight into its [`Text`] (no intermediate `String` when short), at
/// most [`MAX_TAG_LEN`] bytes.
fn tag_fmt(args: std::fmt::Arguments<'_>) -> Text {
    let t = Text::display(args);
    if t.len() > MAX_TAG_LEN {
        tag_text(&t)
    } else {
        t
    }
}

/// Everything the tracer needs to know about a request, filled by the proxy.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    /// Inbound (SERVER span) or outbound (CLIENT span).
    pub direction: Direction,
    /// HTTP method.
    pub method: &'a str,
    /// Path and query as sent.
    pub path: &'a str,
    /// `:authority` or `Host`.
    pub authority: Option<&'a str>,
    /// `http` (or `https` for absolute-form requests).
    pub scheme: &'a str,
    /// `User-Agent`, to recognise kubelet probes.
    pub user_agent: Option<&'a str>,
    /// The pod's side of the connection (inbound: the original destination; outbound: the
    /// app's socket).
    pub local_addr: SocketAddr,
    /// The client of the connection (inbound: the caller; outbound: the app).
    pub peer_addr: SocketAddr,
    /// Where the proxy forwards the request (inbound: the app; outbound: the callee).
    pub upstream_addr: SocketAddr,
    /// `HTTP/1.1`, `HTTP/2` or `gRPC`.
    pub protocol: &'a str,
    /// The connection's tag values, made once per connection ([`ConnTags::new`]); `None`
    /// (or tags of other addresses) formats them per request.
    pub conn_tags: Option<&'a ConnTags>,
}

/// The tag values a connection's requests share: the addresses as text. Formatting three
/// socket addresses cost about as much as the rest of a span's tags; the proxy makes these
/// once per connection and every span of it clones them (in place or a reference count,
/// see [`Text`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnTags {
    direction: Direction,
    peer_addr: SocketAddr,
    upstream_addr: SocketAddr,
    /// `peer.address`: the caller inbound, the callee outbound.
    remote_address: Text,
    /// `upstream_address`, and the host of requests without an authority.
    upstream_address: Text,
    /// `upstream_cluster` of inbound requests (`inbound|<port>`); an outbound request's
    /// names its host, so it is made per request.
    inbound_cluster: Option<Text>,
}

impl ConnTags {
    /// The tag values of a connection from `peer_addr` forwarded to `upstream_addr`.
    pub fn new(direction: Direction, peer_addr: SocketAddr, upstream_addr: SocketAddr) -> Self {
        let remote = match direction {
            Direction::Inbound => peer_addr,
            Direction::Outbound => upstream_addr,
        };
        Self {
            direction,
            peer_addr,
            upstream_addr,
            remote_address: Text::display(remote).into_shared(),
            upstream_address: Text::display(upstream_addr).into_shared(),
            inbound_cluster: (direction == Direction::Inbound)
                .then(|| tag_fmt(format_args!("inbound|{}", upstream_addr.port())).into_shared()),
        }
    }

    /// Whether these are the tags of `req`'s connection.
    fn describe(&self, req: &RequestInfo<'_>) -> bool {
        self.direction == req.direction
            && self.peer_addr == req.peer_addr
            && self.upstream_addr == req.upstream_addr
    }
}

/// What the proxy knows when the exchange ends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseInfo {
    /// HTTP status; `None` when no response arrived.
    pub status: Option<u16>,
    /// `grpc-status` from trailers (or headers, for trailers-only responses).
    pub grpc_status: Option<String>,
    /// Response body bytes forwarded.
    pub response_size: Option<u64>,
    /// Proxy-side failure (connect refused, reset, timeout), recorded as the `error` tag.
    pub error: Option<String>,
    /// A short, fixed class of that failure (`connect`, `upstream`, `timeout`), recorded as
    /// the `error.type` tag (OpenTelemetry's attribute name), so a backend can group failures
    /// without parsing the message.
    pub error_type: Option<&'static str>,
}

/// A hop in flight: its context and, when sampled, the span under construction.
#[derive(Clone, Debug)]
pub struct Hop {
    context: SpanContext,
    /// The span name, decided for every traced request (metrics count unsampled ones too).
    name: Text,
    /// Why the hop is sampled or not.
    sampling: Reason,
    /// Formats the context was written in for the next hop.
    formats: Formats,
    /// How the parent was chosen, when the pod infers parents and the app sent no context.
    inference: Option<Inference>,
    malformed_context: bool,
    started: SystemTime,
    /// `None` when not sampled: nothing is built for spans that will not be recorded.
    pending: Option<Pending>,
}

#[derive(Clone, Debug)]
struct Pending {
    kind: SpanKind,
    local: Endpoint,
    remote: Endpoint,
    tags: Tags,
}

fn micros_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Hop {
    /// This hop's span context (the one written into the forwarded headers).
    pub fn context(&self) -> &SpanContext {
        &self.context
    }

    /// How this outbound hop's parent was chosen, when the pod infers parents and the app
    /// sent no context of its own; `None` otherwise (and always for inbound hops).
    pub fn inference(&self) -> Option<Inference> {
        self.inference
    }

    /// What the app receives with this (inbound) hop's request, for [`InFlight::enter`]:
    /// the context and formats written, and the `x-request-id` of `headers` (the request's
    /// headers as forwarded).
    pub fn candidate(&self, headers: &HeaderMap) -> Candidate {
        Candidate {
            context: self.context,
            formats: self.formats,
            request_id: headers.get(&X_REQUEST_ID).cloned(),
        }
    }

    /// Whether the span will be recorded.
    pub fn is_sampled(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether the request carried malformed trace context, which was dropped. The caller
    /// counts it with its own metrics (the proxy's `sidetrace_trace_context_malformed_total`).
    pub fn malformed_context(&self) -> bool {
        self.malformed_context
    }

    /// Why the hop is (or is not) sampled, for the proxy's decision counter.
    pub fn sampling_reason(&self) -> Reason {
        self.sampling
    }

    /// The span name (the operation), sampled or not.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Ends the span at wall-clock time `end`; returns it only when sampled.
    pub fn finish(self, resp: &ResponseInfo, end: SystemTime) -> Option<Span> {
        let elapsed = end.duration_since(self.started).unwrap_or_default();
        self.finish_after(resp, elapsed)
    }

    /// Ends the span after `elapsed` (measure it with a monotonic `Instant`); returns it
    /// only when sampled.
    pub fn finish_after(self, resp: &ResponseInfo, elapsed: Duration) -> Option<Span> {
        let p = self.pending?;
        let mut tags = p.tags;
        if let Some(status) = resp.status {
            tags.insert("http.status_code".into(), Text::display(status));
        }
        if let Some(size) = resp.response_size {
            tags.insert("response_size".into(), Text::display(size));
        }
        let mut grpc_error = false;
        if let Some(code) = &resp.grpc_status {
            let code = truncate_str(code.trim(), 16);
            grpc_error = grpc_status_is_error(code, p.kind);
            tags.insert("grpc.status_code".into(), Text::copy(code));
        }
        if let Some(kind) = resp.error_type {
            tags.insert("error.type".into(), Text::from_static(kind));
        }
        if let Some(err) = &resp.error {
            tags.insert("error".into(), tag_text(err));
        } else if resp.status.is_some_and(|s| s >= 500) || grpc_error {
            // Envoy's convention: `error=true` on 5xx.
            tags.insert("error".into(), "true".into());
        }
        let duration = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        Some(Span {
            trace_id: self.context.trace_id,
            parent_id: self.context.parent_id,
            id: self.context.span_id,
            kind: p.kind,
            name: self.name,
            timestamp: micros_since_epoch(self.started),
            duration,
            local_endpoint: p.local,
            remote_endpoint: Some(p.remote),
            debug: self.context.debug,
            tags,
        })
    }
}

/// gRPC statuses that mean failure. For a SERVER span only the codes that blame the server
/// (OpenTelemetry's rule: Unknown, DeadlineExceeded, Unimplemented, Internal, Unavailable,
/// DataLoss); for a CLIENT span any non-OK code.
pub fn grpc_status_is_error(code: &str, kind: SpanKind) -> bool {
    match kind {
        SpanKind::Client => code != "0",
        SpanKind::Server => matches!(code, "2" | "4" | "12" | "13" | "14" | "15"),
    }
}

/// The host part of an authority, without userinfo (`user:pass@` must never reach a tag).
fn authority_without_userinfo(authority: &str) -> &str {
    authority.rsplit('@').next().unwrap_or(authority)
}

/// Starts one traced hop; see the module docs for the decisions. Reads the incoming context
/// from `headers`, drops malformed context (reported by [`Hop::malformed_context`] for the
/// caller to count), and rewrites `headers` in place for
/// the next hop (adding `x-request-id` on inbound requests that lack one). Returns `None`,
/// with `headers` untouched, for requests that are not traced at all (excluded paths, kubelet
/// probes).
pub fn start_hop(
    cfg: &TracerConfig,
    req: &RequestInfo<'_>,
    headers: &mut HeaderMap,
    now: SystemTime,
) -> Option<Hop> {
    start_hop_inferring(cfg, req, headers, now, None)
}

/// [`start_hop`], given the pod's inbound requests in flight. When the config infers parents
/// ([`TracerConfig::infer_parents`]) and an outbound request carries no context of its own,
/// [`infer::decide`](crate::infer::decide) picks its parent: the one inbound request in
/// flight, whose context, formats and `x-request-id` the request then carries exactly as if
/// the app had copied them; or none (ambiguous, absent), a new trace. The outcome is on
/// [`Hop::inference`] and in the span's [`PARENT_TAG`] tag. Off, or for inbound requests,
/// this is [`start_hop`].
pub fn start_hop_inferring(
    cfg: &TracerConfig,
    req: &RequestInfo<'_>,
    headers: &mut HeaderMap,
    now: SystemTime,
    in_flight: Option<&InFlight>,
) -> Option<Hop> {
    if cfg.is_excluded(req.path, req.user_agent) {
        return None;
    }
    let mut incoming = propagation::extract(headers);
    let parent = match in_flight {
        Some(set) if cfg.infer_parents && req.direction == Direction::Outbound => {
            Some(infer::decide(&incoming, || set.snapshot()))
        }
        _ => None,
    };
    let inference = parent.as_ref().and_then(Parent::inference);
    if let Some(Parent::Inferred(c)) = parent {
        incoming.context = Some(c.context);
        incoming.arrived = incoming.arrived.union(c.formats);
        if let Some(id) = c.request_id
            && !headers.contains_key(&X_REQUEST_ID)
        {
            headers.insert(X_REQUEST_ID, id);
        }
    }
    if incoming.malformed {
        tracing::debug!(
            direction = ?req.direction,
            path = path_only(req.path),
            "malformed trace context dropped"
        );
    }
    let span_id = SpanId::random();
    let name = cfg.operation_name(req.direction, req.method, req.path, &span_host(req));
    let parent = incoming.context;
    let trace_id = parent.map_or_else(TraceId::random, |p| p.trace_id);
    let arrived = Incoming {
        sampled: parent.map_or(incoming.sampled, |p| p.sampled),
        debug: parent.map_or(incoming.debug, |p| p.debug),
    };
    let policy = cfg.sampling_policy();
    // Trusted: the trace id's bits, so every hop of the trace decides alike. Untrusted: a
    // random draw, so a caller cannot choose an id that is always sampled.
    let draw = if policy.trust_incoming {
        trace_id.low()
    } else {
        rand::random()
    };
    let decision = sampling::decide(&policy, arrived, &name, draw, || {
        cfg.trace_limiter.as_ref().is_none_or(|l| l.try_take())
    });
    let context = SpanContext {
        trace_id,
        span_id,
        parent_id: parent.map(|p| p.span_id),
        sampled: Some(decision.sampled),
        debug: decision.reason == Reason::Debug,
    };

    if req.direction == Direction::Inbound
        && !headers.contains_key(&X_REQUEST_ID)
        && let Ok(v) = HeaderValue::try_from(random_request_id())
    {
        headers.insert(X_REQUEST_ID, v);
    }
    let formats = Formats::from_slice(&cfg.formats).union(incoming.arrived);
    propagation::inject(headers, &context, formats, incoming.tracestate.as_ref());

    let pending = context
        .is_sampled()
        .then(|| build_pending(cfg, req, headers, inference));
    Some(Hop {
        context,
        name,
        sampling: decision.reason,
        formats,
        inference,
        malformed_context: incoming.malformed,
        started: now,
        pending,
    })
}

/// The host a span is named and tagged by: the authority without userinfo, else the upstream
/// address (borrowed when the request names one: no allocation on the common path).
fn span_host<'a>(req: &RequestInfo<'a>) -> std::borrow::Cow<'a, str> {
    match req.authority {
        Some(a) => std::borrow::Cow::Borrowed(authority_without_userinfo(a)),
        None => std::borrow::Cow::Owned(addr_text(req.upstream_addr)),
    }
}

/// `addr` as text in a string sized for the longest socket address up front: `to_string`
/// grows it twice while writing, one allocation each, for every traced request.
fn addr_text(addr: SocketAddr) -> String {
    use std::fmt::Write as _;
    // `[ffff:...:ffff%4294967295]:65535`
    let mut s = String::with_capacity(58);
    let _ = write!(s, "{addr}");
    s
}

fn build_pending(
    cfg: &TracerConfig,
    req: &RequestInfo<'_>,
    headers: &HeaderMap,
    inference: Option<Inference>,
) -> Pending {
    let (kind, remote_addr) = match req.direction {
        Direction::Inbound => (SpanKind::Server, req.peer_addr),
        Direction::Outbound => (SpanKind::Client, req.upstream_addr),
    };
    let conn = match req.conn_tags {
        Some(c) if c.describe(req) => std::borrow::Cow::Borrowed(c),
        _ => std::borrow::Cow::Owned(ConnTags::new(
            req.direction,
            req.peer_addr,
            req.upstream_addr,
        )),
    };
    let upstream = &conn.upstream_address;
    let host = req
        .authority
        .map(authority_without_userinfo)
        .unwrap_or(upstream.as_str());

    let mut local = Endpoint::from_addr(
        Some(Text::copy(&cfg.service_name)),
        req.local_addr,
        req.direction == Direction::Inbound,
    );
    let local_is_meaningful = local.ipv4.is_some_and(|ip| !ip.is_loopback())
        || local.ipv6.is_some_and(|ip| !ip.is_loopback());
    if !local_is_meaningful && let Some(ip) = cfg.local_ipv4 {
        local.ipv4 = Some(ip);
        local.ipv6 = None;
    }
    let remote = Endpoint::from_addr(None, remote_addr, true);

    // Static tags are shared and the proxy's keys are fixed names: only the values the
    // request brings are copied, and short ones in place (see `Text`). Written in key order,
    // so each lands at the end of the sorted tags without a search (see `Tags::insert`).
    let mut tags = cfg.tags.with_room(SPAN_TAGS);
    let mut tag = |k: &'static str, v: Text| {
        tags.insert(Text::from_static(k), v);
    };
    tag("component", Text::from_static("proxy"));
    if let Some(id) = headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()) {
        tag("guid:x-request-id", tag_text(id));
    }
    tag("http.method", tag_text(req.method));
    tag("http.path", tag_text(path_only(req.path)));
    tag("http.protocol", tag_text(req.protocol));
    let url_path = if cfg.record_query_string {
        req.path
    } else {
        path_only(req.path)
    };
    tag(
        "http.url",
        tag_fmt(format_args!("{}://{host}{url_path}", req.scheme)),
    );
    tag("peer.address", conn.remote_address.clone());
    if let Some(how) = inference {
        tag(PARENT_TAG, Text::from_static(how.as_str()));
    }
    let cluster = match &conn.inbound_cluster {
        Some(inbound) => inbound.clone(),
        None => tag_fmt(format_args!("outbound|{host}")),
    };
    tag("upstream_address", upstream.clone());
    tag("upstream_cluster", cluster);
    if let Some(ua) = req.user_agent {
        tag("user_agent", tag_text(ua));
    }
    Pending {
        kind,
        local,
        remote,
        tags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::encode_zipkin_v2;
    use http::HeaderName;

    const T128: &str = "463ac35c9f6413ad48485a3953bb6124";
    const S1: &str = "a2fb4a1d1a96d312";

    fn req(direction: Direction, path: &str) -> RequestInfo<'_> {
        RequestInfo {
            direction,
            method: "GET",
            path,
            authority: Some("service2:8000"),
            scheme: "http",
            user_agent: Some("curl/8"),
            local_addr: "10.1.0.5:8000".parse().expect("addr"),
            peer_addr: "10.1.0.9:40000".parse().expect("addr"),
            upstream_addr: "127.0.0.1:8000".parse().expect("addr"),
            protocol: "HTTP/1.1",
            conn_tags: None,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn get<'h>(h: &'h HeaderMap, n: &str) -> Option<&'h str> {
        h.get(n).and_then(|v| v.to_str().ok())
    }

    fn ok() -> ResponseInfo {
        ResponseInfo {
            status: Some(200),
            response_size: Some(12),
            ..ResponseInfo::default()
        }
    }

    #[test]
    fn inbound_without_context_starts_a_sampled_root_with_request_id() {
        let cfg = TracerConfig::new("service1");
        let mut h = HeaderMap::new();
        let hop = start_hop(
            &cfg,
            &req(Direction::Inbound, "/trace/1"),
            &mut h,
            SystemTime::now(),
        )
        .expect("traced");
        let c = *hop.context();
        assert!(c.trace_id.is_128());
        assert_eq!(c.parent_id, None);
        assert_eq!(c.sampled, Some(true));
        assert_eq!(get(&h, "x-b3-traceid"), Some(c.trace_id.to_hex().as_str()));
        assert_eq!(get(&h, "x-b3-spanid"), Some(c.span_id.to_hex().as_str()));
        assert_eq!(get(&h, "x-b3-parentspanid"), None);
        assert_eq!(get(&h, "x-b3-sampled"), Some("1"));
        assert!(
            get(&h, "traceparent").is_some(),
            "default formats include W3C"
        );
        assert!(get(&h, "b3").is_none(), "b3 single is not a default format");
        let rid = get(&h, "x-request-id")
            .expect("request id added")
            .to_string();
        let span = hop.finish_after(&ok(), Duration::ZERO).expect("sampled");
        assert_eq!(span.kind, SpanKind::Server);
        assert_eq!(
            span.name, "GET /trace/{id}",
            "ids in the path collapse to {{id}}"
        );
        assert_eq!(
            span.tags["http.path"], "/trace/1",
            "the tag keeps the real path"
        );
        assert_eq!(span.duration, 1, "at least 1 µs");
        assert_eq!(
            span.tags.get("guid:x-request-id").map(Text::as_str),
            Some(rid.as_str())
        );
    }

    #[test]
    fn inbound_with_context_is_a_child_and_keeps_the_request_id() {
        let cfg = TracerConfig::new("service2");
        let mut h = headers(&[
            ("x-b3-traceid", T128),
            ("x-b3-spanid", S1),
            ("x-b3-sampled", "1"),
            ("x-request-id", "abc"),
        ]);
        let hop = start_hop(
            &cfg,
            &req(Direction::Inbound, "/trace/2"),
            &mut h,
            SystemTime::now(),
        )
        .expect("traced");
        let c = *hop.context();
        assert_eq!(c.trace_id.to_hex(), T128);
        assert_eq!(c.parent_id.map(|p| p.to_hex()).as_deref(), Some(S1));
        assert_ne!(c.span_id.to_hex(), S1);
        assert_eq!(get(&h, "x-b3-parentspanid"), Some(S1));
        assert_eq!(get(&h, "x-b3-spanid"), Some(c.span_id.to_hex().as_str()));
        assert_eq!(get(&h, "x-request-id"), Some("abc"));
        let span = hop
            .finish_after(&ok(), Duration::from_micros(50))
            .expect("sampled");
        assert_eq!(span.parent_id.map(|p| p.to_hex()).as_deref(), Some(S1));
        assert_eq!(
            span.tags.get("guid:x-request-id").map(Text::as_str),
            Some("abc")
        );
    }

    #[test]
    fn two_hops_chain_like_the_envoy_demo() {
        // service1 inbound (root) → app copies headers → service1 outbound (CLIENT child)
        // → service2 inbound (SERVER child of the CLIENT span).
        let cfg1 = TracerConfig::new("service1");
        let mut h = HeaderMap::new();
        let server1 = start_hop(
            &cfg1,
            &req(Direction::Inbound, "/trace/2"),
            &mut h,
            SystemTime::now(),
        )
        .expect("traced");
        let mut out = h.clone();
        out.remove("traceparent"); // an app that copies only the x-b3-* headers
        let client1 = start_hop(
            &cfg1,
            &req(Direction::Outbound, "/trace/2"),
            &mut out,
            SystemTime::now(),
        )
        .expect("traced");
        let cfg2 = TracerConfig::new("service2");
        let server2 = start_hop(
            &cfg2,
            &req(Direction::Inbound, "/trace/2"),
            &mut out,
            SystemTime::now(),
        )
        .expect("traced");
        let (s1, c1, s2) = (*server1.context(), *client1.context(), *server2.context());
        assert_eq!(c1.trace_id, s1.trace_id);
        assert_eq!(s2.trace_id, s1.trace_id);
        assert_eq!(c1.parent_id, Some(s1.span_id));
        assert_eq!(s2.parent_id, Some(c1.span_id));
        let client = client1
            .finish_after(&ok(), Duration::from_micros(7))
            .expect("sampled");
        assert_eq!(client.kind, SpanKind::Client);
        assert_eq!(client.name, "GET service2:8000/trace/{id}");
        assert_eq!(client.local_endpoint.port, None);
        assert_eq!(
            client.remote_endpoint.as_ref().and_then(|e| e.port),
            Some(8000)
        );
    }

    #[test]
    fn outbound_without_context_is_a_new_root_without_request_id() {
        let cfg = TracerConfig::new("service1");
        let mut h = HeaderMap::new();
        let hop = start_hop(
            &cfg,
            &req(Direction::Outbound, "/"),
            &mut h,
            SystemTime::now(),
        )
        .expect("traced");
        assert_eq!(hop.context().parent_id, None);
        assert!(!h.contains_key("x-request-id"));
    }

    #[test]
    fn sampled_zero_is_honoured_but_propagated() {
        let cfg = TracerConfig::new("s");
        for incoming in [
            headers(&[
                ("x-b3-traceid", T128),
                ("x-b3-spanid", S1),
                ("x-b3-sampled", "0"),
            ]),
            headers(&[("b3", "0")]),
            headers(&[("traceparent", &format!("00-{T128}-{S1}-00"))]),
        ] {
            let mut h = incoming.clone();
            let hop = start_hop(
                &cfg,
                &req(Direction::Inbound, "/"),
                &mut h,
                SystemTime::now(),
            )
            .expect("traced");
            assert!(!hop.is_sampled(), "{incoming:?}");
            assert_eq!(hop.context().sampled, Some(false));
            assert_eq!(get(&h, "x-b3-sampled"), Some("0"), "{incoming:?}");
            assert!(get(&h, "x-b3-traceid").is_some());
            if incoming.contains_key("b3") {
                let b3 = get(&h, "b3").expect("b3 arrived so it is rewritten");
                assert!(b3.ends_with("-0"), "{b3}");
            }
            if incoming.contains_key("traceparent") {
                assert!(get(&h, "traceparent").is_some_and(|t| t.ends_with("-00")));
            }
            assert_eq!(hop.finish_after(&ok(), Duration::from_micros(3)), None);
        }
    }

    #[test]
    fn debug_forces_sampling_even_at_rate_zero() {
        let cfg = TracerConfig {
            sampling_rate: 0.0,
            ..TracerConfig::new("s")
        };
        let mut h = headers(&[("x-b3-flags", "1")]);
        let hop = start_hop(
            &cfg,
            &req(Direction::Inbound, "/"),
            &mut h,
            SystemTime::now(),
        )
        .expect("traced");
        assert!(hop.is_sampled());
        assert_eq!(get(&h, "x-b3-flags"), Some("1"));
        assert_eq!(get(&h, "x-b3-sampled"), None);
        let span = hop
            .finish_after(&ok(), Duration::from_micros(3))
            .expect("debug");
        assert!(span.debug);
        let mut h = HeaderMap::new();
        let hop = start_hop(
            &cfg,
            &req(Direction::Inbound, "/"),
            &mut h,
            SystemTime::now(),
        )
        .expect("traced");
        assert!(!hop.is_sampled(), "rate 0 and no decision");
        assert_eq!(get(&h, "x-b3-sampled"), Some("0"));
    }

    #[test]
    fn rate_sampling_is_deterministic_on_the_trace_id() {
        let low = TraceId::from_hex("ffffffffffffffff0000000000000001").expect("id");
        let high = TraceId::from_hex("0000000000000001ffffffffffffff00").expect("id");
        assert!(sample_by_rate(&low, 0.5));
        assert!(!sample_by_rate(&high, 0.5));
        assert!(!sample_by_rate(&low, 0.0));
        assert!(!sample_by_rate(&low, f64::NAN));
        assert!(sample_by_rate(&high, 1.0));
        let n = (0..10_000)
            .filter(|_| sample_by_rate(&TraceId::random(), 0.25))
            .count();
        assert!((1_500..3_500).contains(&n), "{n}");
        // A context that arrived undecided gets the same decision on every hop.
        let cfg = TracerConfig {
            sampling_rate: 0.5,
            ..TracerConfig::new("s")
        };
        for t in [low, high] {
            let mut h = headers(&[("x-b3-traceid", &t.to_hex()), ("x-b3-spanid", S1)]);
            let hop = start_hop(
                &cfg,
                &req(Direction::Inbound, "/"),
                &mut h,
                SystemTime::now(),
            )
            .expect("traced");
            assert_eq!(hop.is_sampled(), sample_by_rate(&t, 0.5));
        }
    }

    #[test]
    fn malformed_context_starts_a_new_trace_and_is_reported() {
        let cfg = TracerConfig::new("s");
        let mut h = headers(&[("x-b3-traceid", "zz"), ("x-b3-spanid", S1), ("b3", "junk")]);
        let hop = start_hop(
            &cfg,
            &req(Direction::Inbound, "/"),
            &mut h,
            SystemTime::now(),
        )
        .expect("traced");
        assert!(hop.malformed_context());
        assert_eq!(hop.context().parent_id, None);
        // Both formats arrived, so both are rewritten with the new, valid context.
        let c = *hop.context();
        assert_eq!(get(&h, "x-b3-traceid"), Some(c.trace_id.to_hex().as_str()));
        assert!(get(&h, "b3").is_some_and(|b| b.starts_with(&c.trace_id.to_hex())));
    }

    #[test]
    fn excluded_paths_and_probes_are_not_traced_and_headers_untouched() {
        let cfg = TracerConfig {
            exclude_paths: vec!["/healthz".into(), "/debug/*".into()],
            ..TracerConfig::new("s")
        };
        for (path, ua) in [
            ("/healthz", None),
            ("/healthz?full=1", None),
            ("/debug/pprof", None),
            ("/ready", Some("kube-probe/1.34")),
        ] {
            let mut r = req(Direction::Inbound, path);
            r.user_agent = ua;
            let mut h = headers(&[("x-b3-sampled", "1")]);
            let before = h.clone();
            assert!(
                start_hop(&cfg, &r, &mut h, SystemTime::now()).is_none(),
                "{path}"
            );
            assert_eq!(h, before);
        }
        let mut h = HeaderMap::new();
        assert!(
            start_hop(
                &cfg,
                &req(Direction::Inbound, "/healthzz"),
                &mut h,
                SystemTime::now()
            )
            .is_some()
        );
    }

    #[test]
    fn exclusion_matches_the_contract_rule() {
        let proxy = ProxyConfig {
            exclude_paths: vec!["/healthz".into(), "/debug/*".into(), "/x*".into()],
            ..ProxyConfig::default()
        };
        let cfg = TracerConfig::from_proxy_config(&proxy, &TracerFlags::new("svc", 1.0));
        for path in [
            "/",
            "/healthz",
            "/healthz/",
            "/healthz?a",
            "/debug",
            "/debug/",
            "/debug/x?y",
            "/x",
            "/xyz",
            "/y",
        ] {
            assert_eq!(
                cfg.is_excluded(path, None),
                proxy.is_excluded_path(path),
                "{path}"
            );
        }
    }

    #[test]
    fn tracer_config_from_the_config_file_falls_back_to_flags() {
        let proxy =
            ProxyConfig::from_yaml("samplingRate: 0.25\ntags: {team: shop}\n").expect("valid");
        let cfg = TracerConfig::from_proxy_config(&proxy, &TracerFlags::new("from-flag", 1.0));
        assert_eq!(cfg.service_name, "from-flag");
        assert_eq!(cfg.sampling_rate, 0.25);
        assert_eq!(cfg.formats, DEFAULT_PROPAGATION);
        assert_eq!(cfg.tags["team"], "shop");
    }

    #[test]
    fn flag_overrides_beat_the_config_file_and_file_tags_beat_flag_tags() {
        let proxy = ProxyConfig::from_yaml(
            "serviceName: from-file\nsamplingRate: 0.25\ntags: {team: shop}\n",
        )
        .expect("valid");
        let flags = TracerFlags {
            service_name_override: Some("from-pod".into()),
            sampling_override: Some(0.5),
            tags: BTreeMap::from([
                ("team".to_owned(), "flag".to_owned()),
                ("k8s.pod.name".to_owned(), "p".to_owned()),
            ]),
            local_ipv4: Some(Ipv4Addr::new(10, 0, 0, 7)),
            ..TracerFlags::new("from-flag", 1.0)
        };
        let cfg = TracerConfig::from_proxy_config(&proxy, &flags);
        assert_eq!(cfg.service_name, "from-pod");
        assert_eq!(cfg.sampling_rate, 0.5);
        assert_eq!(cfg.tags["team"], "shop");
        assert_eq!(cfg.tags["k8s.pod.name"], "p");
        assert_eq!(cfg.local_ipv4, Some(Ipv4Addr::new(10, 0, 0, 7)));
    }

    #[test]
    fn operation_rules_win_over_the_default_name() {
        let cfg = TracerConfig {
            operations: vec![OperationRule {
                name: "checkStock".into(),
                direction: Some(Direction::Outbound),
                path_prefix: Some("/stock".into()),
                ..OperationRule::default()
            }],
            ..TracerConfig::new("s")
        };
        let name = |d, p| cfg.operation_name(d, "GET", p, "inventory:80");
        assert_eq!(name(Direction::Outbound, "/stock/1?x=y"), "checkStock");
        assert_eq!(name(Direction::Inbound, "/stock/1?x=y"), "GET /stock/{id}");
        assert_eq!(
            name(Direction::Outbound, "/other"),
            "GET inventory:80/other"
        );
        let long = format!("/{}", "é".repeat(200));
        assert!(name(Direction::Inbound, &long).len() <= MAX_NAME_LEN);
    }

    #[test]
    fn connection_tags_give_the_spans_per_request_formatting_gives() {
        let cfg = TracerConfig::new("service1");
        let span = |req: &RequestInfo<'_>| {
            let mut h = headers(&[("x-request-id", "r-1")]);
            let mut span = start_hop(&cfg, req, &mut h, SystemTime::now())
                .expect("traced")
                .finish_after(&ok(), Duration::from_micros(5))
                .expect("sampled");
            // Ids and times differ per hop; the tags are the point.
            span.tags.remove("guid:x-request-id");
            span.tags
        };
        for direction in [Direction::Inbound, Direction::Outbound] {
            for authority in [Some("service2:8000"), None] {
                let mut plain = req(direction, "/trace/1");
                plain.authority = authority;
                plain.peer_addr = "[fd00::9]:40000".parse().expect("addr");
                let tags = ConnTags::new(direction, plain.peer_addr, plain.upstream_addr);
                let cached = RequestInfo {
                    conn_tags: Some(&tags),
                    ..plain
                };
                assert_eq!(span(&cached), span(&plain), "{direction:?} {authority:?}");
                // Tags of another connection are not used.
                let other = ConnTags::new(
                    direction,
                    "10.9.9.9:1".parse().expect("addr"),
                    plain.upstream_addr,
                );
                let wrong = RequestInfo {
                    conn_tags: Some(&other),
                    ..plain
                };
                assert_eq!(span(&wrong), span(&plain));
            }
        }
    }

    #[test]
    fn tags_never_carry_credentials() {
        let cfg = TracerConfig {
            tags: [
                (Text::from("team"), Text::from("shop")),
                (Text::from("http.method"), Text::from("SPOOFED")),
            ]
            .into(),
            ..TracerConfig::new("s")
        };
        let mut h = headers(&[
            ("authorization", "Bearer SECRET-TOKEN"),
            ("cookie", "session=SECRET-COOKIE"),
            ("set-cookie", "id=SECRET-SET"),
        ]);
        let mut r = req(Direction::Outbound, "/orders?page=2");
        r.authority = Some("user:SECRET-PASS@shop:8080");
        let hop = start_hop(&cfg, &r, &mut h, SystemTime::now()).expect("traced");
        let resp = ResponseInfo {
            status: Some(503),
            grpc_status: None,
            response_size: Some(0),
            error: None,
            error_type: None,
        };
        let span = hop
            .finish_after(&resp, Duration::from_micros(10))
            .expect("sampled");
        let json = String::from_utf8(encode_zipkin_v2(std::slice::from_ref(&span))).expect("utf8");
        assert!(!json.contains("SECRET"), "{json}");
        assert_eq!(
            span.tags["http.url"], "http://shop:8080/orders",
            "query strings are dropped by default"
        );
        assert!(!json.contains("page=2"), "{json}");
        assert_eq!(span.tags["http.path"], "/orders");
        assert_eq!(span.tags["error"], "true");
        assert_eq!(span.tags["team"], "shop");
        assert_eq!(span.tags["http.method"], "GET", "the proxy's own tags win");
        assert_eq!(span.tags["component"], "proxy");
        // The headers the app sent are forwarded untouched (only tracing ignores them).
        assert_eq!(get(&h, "authorization"), Some("Bearer SECRET-TOKEN"));
    }

    #[test]
    fn proxy_side_failures_carry_the_message_and_their_class() {
        let cfg = TracerConfig::new("s");
        let mut h = headers(&[]);
        let hop = start_hop(
            &cfg,
            &req(Direction::Inbound, "/slow"),
            &mut h,
            SystemTime::now(),
        )
        .expect("traced");
        let resp = ResponseInfo {
            status: Some(504),
            error: Some("upstream response timeout after 300ms".into()),
            error_type: Some("timeout"),
            ..ResponseInfo::default()
        };
        let span = hop
            .finish_after(&resp, Duration::from_millis(300))
            .expect("sampled");
        assert_eq!(span.tags["http.status_code"], "504");
        assert_eq!(span.tags["error"], "upstream response timeout after 300ms");
        assert_eq!(span.tags["error.type"], "timeout");
        let plain = start_hop(
            &cfg,
            &req(Direction::Inbound, "/"),
            &mut headers(&[]),
            SystemTime::now(),
        )
        .expect("traced")
        .finish_after(&ok(), Duration::from_millis(1))
        .expect("sampled");
        assert!(!plain.tags.contains_key("error.type"), "{:?}", plain.tags);
    }

    #[test]
    fn span_json_for_a_finished_server_hop() {
        let cfg = TracerConfig {
            local_ipv4: Some("10.1.0.5".parse().expect("ip")),
            ..TracerConfig::new("service2")
        };
        let mut h = headers(&[("b3", &format!("{T128}-{S1}-1")), ("x-request-id", "r-1")]);
        let mut r = req(Direction::Inbound, "/trace/2?q=1");
        r.local_addr = "127.0.0.1:8000".parse().expect("addr");
        let start = UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_001);
        let hop = start_hop(&cfg, &r, &mut h, start).expect("traced");
        let id = hop.context().span_id.to_hex();
        let resp = ResponseInfo {
            status: Some(200),
            grpc_status: Some("14".into()),
            response_size: Some(42),
            error: None,
            error_type: None,
        };
        let span = hop
            .finish(&resp, start + Duration::from_micros(250))
            .expect("sampled");
        let json = String::from_utf8(encode_zipkin_v2(&[span])).expect("utf8");
        assert_eq!(
            json,
            format!(
                r#"[{{"traceId":"{T128}","parentId":"{S1}","id":"{id}","kind":"SERVER","name":"GET /trace/{{id}}","timestamp":1700000000000001,"duration":250,"localEndpoint":{{"serviceName":"service2","ipv4":"10.1.0.5","port":8000}},"remoteEndpoint":{{"ipv4":"10.1.0.9","port":40000}},"tags":{{"component":"proxy","error":"true","grpc.status_code":"14","guid:x-request-id":"r-1","http.method":"GET","http.path":"/trace/2","http.protocol":"HTTP/1.1","http.status_code":"200","http.url":"http://service2:8000/trace/2","peer.address":"10.1.0.9:40000","response_size":"42","upstream_address":"127.0.0.1:8000","upstream_cluster":"inbound|8000","user_agent":"curl/8"}}}}]"#
            )
        );
        // The `b3` single header that arrived is rewritten, not forwarded stale.
        assert_eq!(get(&h, "b3"), Some(format!("{T128}-{id}-1-{S1}").as_str()));
    }

    fn finished(cfg: &TracerConfig, r: &RequestInfo<'_>) -> Span {
        let mut h = HeaderMap::new();
        start_hop(cfg, r, &mut h, SystemTime::now())
            .expect("traced")
            .finish_after(&ok(), Duration::from_micros(5))
            .expect("sampled")
    }

    #[test]
    fn query_strings_are_dropped_from_http_url_by_default() {
        let cfg = TracerConfig::new("s");
        for d in [Direction::Inbound, Direction::Outbound] {
            let span = finished(&cfg, &req(d, "/search?token=SECRET&q=shoes"));
            assert_eq!(
                span.tags["http.url"], "http://service2:8000/search",
                "{d:?}"
            );
            assert_eq!(span.tags["http.path"], "/search");
            assert!(!span.name.contains('?'), "{}", span.name);
            let json = String::from_utf8(encode_zipkin_v2(&[span])).expect("utf8");
            assert!(!json.contains("SECRET"), "{json}");
        }
        let proxy = ProxyConfig::from_yaml("serviceName: s\n").expect("valid");
        assert!(
            !TracerConfig::from_proxy_config(&proxy, &TracerFlags::new("s", 1.0))
                .record_query_string
        );
    }

    #[test]
    fn query_strings_are_kept_when_the_config_opts_in() {
        let proxy = ProxyConfig::from_yaml("recordQueryString: true\n").expect("valid");
        let cfg = TracerConfig::from_proxy_config(&proxy, &TracerFlags::new("s", 1.0));
        assert!(cfg.record_query_string);
        let span = finished(&cfg, &req(Direction::Inbound, "/search?q=shoes&page=2"));
        assert_eq!(
            span.tags["http.url"],
            "http://service2:8000/search?q=shoes&page=2"
        );
        assert_eq!(span.tags["http.path"], "/search", "http.path never has one");
        assert_eq!(span.name, "GET /search", "nor does the span name");
    }

    #[test]
    fn default_names_use_the_route_template() {
        let cfg = TracerConfig::new("s");
        let name = |d, p| cfg.operation_name(d, "GET", p, "orders:8080");
        assert_eq!(
            name(Direction::Inbound, "/orders/81723"),
            "GET /orders/{id}"
        );
        assert_eq!(
            name(Direction::Outbound, "/orders/81723?x=1"),
            "GET orders:8080/orders/{id}"
        );
        assert_eq!(
            name(
                Direction::Inbound,
                "/carts/123e4567-e89b-12d3-a456-426614174000/items/507f1f77bcf86cd799439011"
            ),
            "GET /carts/{id}/items/{id}"
        );
        assert_eq!(
            name(Direction::Inbound, "/api/v2/orders"),
            "GET /api/v2/orders"
        );
        // Many ids, one operation; the span keeps the real path in its tag.
        for id in ["1", "81723", "99999999"] {
            let path = format!("/orders/{id}");
            let span = finished(&cfg, &req(Direction::Inbound, &path));
            assert_eq!(span.name, "GET /orders/{id}");
            assert_eq!(span.tags["http.path"], path);
        }
        assert_eq!(cfg.name_budget.len(), 4, "one name per route, not per id");
    }

    #[test]
    fn default_names_past_the_cap_become_other_and_are_counted() {
        let cfg = TracerConfig {
            name_budget: Arc::new(NameBudget::new(3)),
            ..TracerConfig::new("s")
        };
        let name = |d, m, p| cfg.operation_name(d, m, p, "h:80");
        assert_eq!(name(Direction::Inbound, "GET", "/a"), "GET /a");
        assert_eq!(name(Direction::Inbound, "GET", "/b"), "GET /b");
        assert_eq!(name(Direction::Outbound, "GET", "/a"), "GET h:80/a");
        assert_eq!(cfg.name_budget.overflow_total(), 0);
        assert_eq!(name(Direction::Inbound, "GET", "/c"), "GET {other}");
        assert_eq!(name(Direction::Outbound, "POST", "/a"), "POST {other}");
        assert_eq!(name(Direction::Inbound, "BREW", "/pot"), "HTTP {other}");
        assert_eq!(cfg.name_budget.overflow_total(), 3);
        // Names admitted before the cap keep working, ids still collapse into them.
        assert_eq!(name(Direction::Inbound, "GET", "/b"), "GET /b");
        assert_eq!(cfg.name_budget.overflow_total(), 3);
        // The budget is shared by clones (the config is cloned per reload and per request).
        let clone = cfg.clone();
        assert_eq!(
            clone.operation_name(Direction::Inbound, "GET", "/d", "h"),
            "GET {other}"
        );
        assert_eq!(cfg.name_budget.overflow_total(), 4);
        // And by the spans themselves.
        let span = finished(&cfg, &req(Direction::Inbound, "/e"));
        assert_eq!(span.name, "GET {other}");
        assert_eq!(span.tags["http.path"], "/e");
        assert_eq!(cfg.name_budget.overflow_total(), 5);
        // Each tracer config built from scratch has its own budget: no global state.
        assert_eq!(TracerConfig::new("s").name_budget.overflow_total(), 0);
    }

    #[test]
    fn operation_rules_are_not_templated_or_capped() {
        let cfg = TracerConfig {
            operations: vec![OperationRule {
                name: "getOrder".into(),
                path_prefix: Some("/orders/".into()),
                ..OperationRule::default()
            }],
            name_budget: Arc::new(NameBudget::new(1)),
            ..TracerConfig::new("s")
        };
        let name = |p: &str| cfg.operation_name(Direction::Inbound, "GET", p, "h");
        assert_eq!(name("/x"), "GET /x", "fills the budget");
        for i in 0..10 {
            assert_eq!(name(&format!("/orders/{i}")), "getOrder");
        }
        assert_eq!(
            cfg.name_budget.overflow_total(),
            0,
            "rule names never count"
        );
        assert_eq!(cfg.name_budget.len(), 1);
        assert_eq!(name("/y"), "GET {other}");
    }

    /// An inbound hop and the set of in-flight requests it was entered into, as the proxy
    /// does; returns the hop, its guard and the headers the app received.
    fn inbound_in_flight(
        cfg: &TracerConfig,
        set: &std::sync::Arc<InFlight>,
        sent: &[(&str, &str)],
    ) -> (Hop, crate::infer::InFlightGuard, HeaderMap) {
        let mut h = headers(sent);
        let hop = start_hop(
            cfg,
            &req(Direction::Inbound, "/trace/1"),
            &mut h,
            SystemTime::now(),
        )
        .expect("traced");
        let guard = set.enter(Some(hop.candidate(&h)));
        (hop, guard, h)
    }

    fn inferring() -> TracerConfig {
        TracerConfig {
            infer_parents: true,
            ..TracerConfig::new("service1")
        }
    }

    fn outbound(cfg: &TracerConfig, set: &InFlight, h: &mut HeaderMap) -> Span {
        start_hop_inferring(
            cfg,
            &req(Direction::Outbound, "/trace/2"),
            h,
            SystemTime::now(),
            Some(set),
        )
        .expect("traced")
        .finish(&ok(), SystemTime::now())
        .expect("sampled")
    }

    #[test]
    fn a_headerless_call_continues_the_one_request_in_flight_as_if_copied() {
        let cfg = TracerConfig {
            formats: vec![PropagationFormat::B3Multi],
            ..inferring()
        };
        let set = InFlight::new();
        // The caller sent W3C; the app received B3 multi (config) and W3C (what arrived).
        let (server, _guard, app_saw) = inbound_in_flight(
            &cfg,
            &set,
            &[("traceparent", &format!("00-{T128}-{S1}-01"))],
        );
        let mut h = HeaderMap::new();
        let client = outbound(&cfg, &set, &mut h);
        assert_eq!(client.trace_id, server.context().trace_id);
        assert_eq!(client.parent_id, Some(server.context().span_id));
        assert_eq!(client.kind, SpanKind::Client);
        assert_eq!(client.tags[PARENT_TAG], "inferred");
        // The callee gets what it would have got had the app copied the headers.
        assert_eq!(get(&h, "x-b3-traceid"), Some(T128));
        assert_eq!(get(&h, "x-b3-spanid"), Some(client.id.to_hex().as_str()));
        assert!(
            get(&h, "traceparent").is_some_and(|v| v.contains(T128)),
            "{h:?}"
        );
        assert_eq!(get(&h, "x-request-id"), get(&app_saw, "x-request-id"));
        assert_eq!(
            client.tags.get("guid:x-request-id").map(Text::as_str),
            get(&app_saw, "x-request-id")
        );
    }

    #[test]
    fn an_unsampled_request_in_flight_passes_its_decision_on() {
        let cfg = inferring();
        let set = InFlight::new();
        let (_server, _guard, _) = inbound_in_flight(&cfg, &set, &[("b3", "0")]);
        let mut h = HeaderMap::new();
        let hop = start_hop_inferring(
            &cfg,
            &req(Direction::Outbound, "/trace/2"),
            &mut h,
            SystemTime::now(),
            Some(&set),
        )
        .expect("traced");
        assert_eq!(hop.inference(), Some(Inference::Inferred));
        assert!(!hop.is_sampled());
        assert_eq!(get(&h, "x-b3-sampled"), Some("0"));
    }

    #[test]
    fn headers_the_app_copied_win_over_the_request_in_flight() {
        let cfg = inferring();
        let set = InFlight::new();
        let (_other, _guard, _) = inbound_in_flight(&cfg, &set, &[]);
        let mut h = headers(&[("x-b3-traceid", T128), ("x-b3-spanid", S1)]);
        let client = outbound(&cfg, &set, &mut h);
        assert_eq!(client.trace_id.to_hex(), T128);
        assert_eq!(client.parent_id.map(|p| p.to_hex()), Some(S1.to_owned()));
        assert!(
            !client.tags.contains_key(PARENT_TAG),
            "exactly today's span"
        );
    }

    #[test]
    fn none_or_several_in_flight_start_a_tagged_new_trace() {
        let cfg = inferring();
        let set = InFlight::new();
        let absent = outbound(&cfg, &set, &mut HeaderMap::new());
        assert_eq!(absent.parent_id, None);
        assert_eq!(absent.tags[PARENT_TAG], "absent");
        let (a, _ga, _) = inbound_in_flight(&cfg, &set, &[]);
        let (b, _gb, _) = inbound_in_flight(&cfg, &set, &[]);
        let ambiguous = outbound(&cfg, &set, &mut HeaderMap::new());
        assert_eq!(ambiguous.parent_id, None);
        assert_ne!(ambiguous.trace_id, a.context().trace_id);
        assert_ne!(ambiguous.trace_id, b.context().trace_id);
        assert_eq!(ambiguous.tags[PARENT_TAG], "ambiguous");
    }

    #[test]
    fn with_the_mode_off_spans_are_exactly_todays() {
        let cfg = TracerConfig::new("service1");
        assert!(!cfg.infer_parents, "off by default");
        let set = InFlight::new();
        let (_server, _guard, _) = inbound_in_flight(&cfg, &set, &[]);
        let now = SystemTime::now();
        let mut with_set = HeaderMap::new();
        let mut today = HeaderMap::new();
        let r = req(Direction::Outbound, "/trace/2");
        let a = start_hop_inferring(&cfg, &r, &mut with_set, now, Some(&set)).expect("traced");
        let b = start_hop(&cfg, &r, &mut today, now).expect("traced");
        assert_eq!(a.inference(), None);
        let (a, b) = (
            a.finish(&ok(), now).expect("sampled"),
            b.finish(&ok(), now).expect("sampled"),
        );
        assert_eq!(a.parent_id, None, "a new root, as without the mode");
        assert_eq!(a.tags, b.tags);
        assert_eq!(
            (a.kind, &a.name, a.timestamp),
            (b.kind, &b.name, b.timestamp)
        );
        let names = |h: &HeaderMap| h.keys().map(|k| k.as_str().to_owned()).collect::<Vec<_>>();
        assert_eq!(names(&with_set), names(&today));
    }

    #[test]
    fn the_pod_annotation_beats_the_file_for_parent_inference() {
        let on = ProxyConfig::from_yaml("inferParents: true\n").expect("valid");
        let flags = TracerFlags::new("a", 1.0);
        assert!(TracerConfig::from_proxy_config(&on, &flags).infer_parents);
        let off_by_pod = TracerFlags {
            infer_parents_override: Some(false),
            ..flags.clone()
        };
        assert!(!TracerConfig::from_proxy_config(&on, &off_by_pod).infer_parents);
        let on_by_pod = TracerFlags {
            infer_parents_override: Some(true),
            ..flags
        };
        assert!(TracerConfig::from_proxy_config(&ProxyConfig::default(), &on_by_pod).infer_parents);
    }
}

#[cfg(test)]
mod property_tests {
    use super::*;
    use crate::propagation::{CONTEXT_HEADERS, extract};
    use rand::{Rng, SeedableRng};

    /// Deterministic random headers (valid, mutated and garbage) through `start_hop`: never a
    /// panic, the rewritten headers always parse to exactly the hop's context, and a valid
    /// incoming span always becomes the parent.
    #[test]
    fn start_hop_always_leaves_clean_headers() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let samples = [
            "463ac35c9f6413ad48485a3953bb6124",
            "a2fb4a1d1a96d312",
            "463ac35c9f6413ad-a2fb4a1d1a96d312-1",
            "00-463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-01",
            "0",
            "1",
            "d",
            "true",
            "",
            "\u{7f}zz",
        ];
        let cfg = TracerConfig::new("prop");
        for i in 0..5_000 {
            let mut h = HeaderMap::new();
            for _ in 0..rng.random_range(0..6) {
                let name = CONTEXT_HEADERS[rng.random_range(0..CONTEXT_HEADERS.len())].clone();
                let mut v = samples[rng.random_range(0..samples.len())]
                    .as_bytes()
                    .to_vec();
                if !v.is_empty() && rng.random_bool(0.3) {
                    let at = rng.random_range(0..v.len());
                    v[at] = rng.random();
                }
                if let Ok(v) = HeaderValue::from_bytes(&v) {
                    h.append(name, v);
                }
            }
            let incoming = extract(&h);
            let direction = if i % 2 == 0 {
                Direction::Inbound
            } else {
                Direction::Outbound
            };
            let req = RequestInfo {
                direction,
                method: "GET",
                path: "/p",
                authority: None,
                scheme: "http",
                user_agent: None,
                local_addr: "10.0.0.1:80".parse().expect("addr"),
                peer_addr: "10.0.0.2:5000".parse().expect("addr"),
                upstream_addr: "127.0.0.1:80".parse().expect("addr"),
                protocol: "HTTP/1.1",
                conn_tags: None,
            };
            let hop = start_hop(&cfg, &req, &mut h, SystemTime::now()).expect("traced");
            let after = extract(&h);
            assert!(!after.malformed, "{h:?}");
            let c = after.context.expect("context written");
            assert_eq!(c.span_id, hop.context().span_id);
            assert_eq!(c.trace_id, hop.context().trace_id);
            assert_eq!(hop.context().parent_id, incoming.context.map(|p| p.span_id));
            assert_eq!(hop.is_sampled(), c.is_sampled());
        }
    }
}

//! The OTLP encoding of the one span model ([`Span`]).
//!
//! A finished span is built once, in the Zipkin-shaped [`Span`] the proxy has always made;
//! this module derives the OTLP message from it, so the two encodings cannot drift: whatever
//! a span says in Zipkin v2 JSON it says here, in OpenTelemetry's vocabulary.
//! - Ids: the trace id as 16 bytes (a 64-bit B3 id is left-padded with zeros, as
//!   OpenTelemetry's B3 propagator does), span and parent ids as 8 bytes.
//! - Kind SERVER/CLIENT; times in nanoseconds from the span's microseconds.
//! - Attributes follow the HTTP semantic conventions: `http.request.method`, `url.path`,
//!   `url.scheme` (and `url.full` on CLIENT spans), `http.response.status_code`,
//!   `server.address`/`server.port` (from the request's authority), `network.peer.address`/
//!   `network.peer.port` (the remote endpoint), `user_agent.original`, `error.type`.
//!   Tags with no convention (static tags, `guid:x-request-id`, `upstream_cluster`, ...) are
//!   kept under their Zipkin names; Zipkin-only duplicates (`http.method`, `http.url`, ...)
//!   are not repeated.
//! - Status Error, with the proxy's failure message, when the Zipkin span carries `error`.
//! - Resource: `service.name` (the span's local service) plus the pod's [`Resource`]
//!   attributes (`k8s.*`, `service.namespace`, `service.instance.id`, the owning workload).
//!
//! The body of `POST /v1/traces` is the protobuf `ExportTraceServiceRequest`, written straight
//! from the spans into one buffer with prost's wire-format helpers: building the
//! `opentelemetry-proto` messages first cost an owned `String` per attribute key and value
//! (about 46 allocations and 30 k instructions per span, `bench/RESULTS.md`). The field
//! numbers are OTLP's (`trace.proto`, `common.proto`, `resource.proto`); the tests decode the
//! bytes with `opentelemetry-proto` and compare them with the message the old builder makes.

use std::collections::BTreeMap;
use std::net::IpAddr;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

use crate::span::{Endpoint, Span, SpanKind};
use crate::text::Text;

/// Instrumentation scope of every span: the proxy made them, not the app.
pub const SCOPE_NAME: &str = "sidetrace-proxy";

/// Resource attributes the pod's proxy adds to every OTLP batch besides `service.name`:
/// OpenTelemetry's names (`k8s.pod.name`, `service.namespace`, ...) to values. The proxy
/// fills it at start from the environment the webhook gave it; empty values are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resource {
    /// Attribute name to value, sorted (a stable encoding for golden tests).
    pub attributes: BTreeMap<String, String>,
}

impl Resource {
    /// Adds `key=value` unless the value is empty (an unset downward-API field).
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        if !value.trim().is_empty() {
            self.attributes.insert(key.to_owned(), value);
        }
    }
}

/// OTLP field numbers, from the `.proto` files of opentelemetry-proto 1.x.
mod field {
    /// `ExportTraceServiceRequest.resource_spans`.
    pub const REQUEST_RESOURCE_SPANS: u32 = 1;
    /// `ResourceSpans.resource`.
    pub const RESOURCE_SPANS_RESOURCE: u32 = 1;
    /// `ResourceSpans.scope_spans`.
    pub const RESOURCE_SPANS_SCOPE_SPANS: u32 = 2;
    /// `Resource.attributes`.
    pub const RESOURCE_ATTRIBUTES: u32 = 1;
    /// `ScopeSpans.scope`.
    pub const SCOPE_SPANS_SCOPE: u32 = 1;
    /// `ScopeSpans.spans`.
    pub const SCOPE_SPANS_SPANS: u32 = 2;
    /// `InstrumentationScope.name`.
    pub const SCOPE_NAME: u32 = 1;
    /// `InstrumentationScope.version`.
    pub const SCOPE_VERSION: u32 = 2;
    /// `Span.trace_id` (16 bytes).
    pub const SPAN_TRACE_ID: u32 = 1;
    /// `Span.span_id` (8 bytes).
    pub const SPAN_SPAN_ID: u32 = 2;
    /// `Span.parent_span_id` (8 bytes; absent for a root).
    pub const SPAN_PARENT_SPAN_ID: u32 = 4;
    /// `Span.name`.
    pub const SPAN_NAME: u32 = 5;
    /// `Span.kind` (`SPAN_KIND_SERVER` = 2, `SPAN_KIND_CLIENT` = 3).
    pub const SPAN_KIND: u32 = 6;
    /// `Span.start_time_unix_nano` (fixed64).
    pub const SPAN_START: u32 = 7;
    /// `Span.end_time_unix_nano` (fixed64).
    pub const SPAN_END: u32 = 8;
    /// `Span.attributes`.
    pub const SPAN_ATTRIBUTES: u32 = 9;
    /// `Span.status`.
    pub const SPAN_STATUS: u32 = 15;
    /// `Status.message`.
    pub const STATUS_MESSAGE: u32 = 2;
    /// `Status.code` (`STATUS_CODE_ERROR` = 2).
    pub const STATUS_CODE: u32 = 3;
    /// `KeyValue.key`.
    pub const KEY_VALUE_KEY: u32 = 1;
    /// `KeyValue.value` (an `AnyValue`).
    pub const KEY_VALUE_VALUE: u32 = 2;
    /// `AnyValue.string_value` (oneof).
    pub const ANY_VALUE_STRING: u32 = 1;
    /// `AnyValue.int_value` (oneof, int64).
    pub const ANY_VALUE_INT: u32 = 3;
}

/// `SPAN_KIND_SERVER` and `SPAN_KIND_CLIENT` of `Span.SpanKind`.
const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;
/// `STATUS_CODE_ERROR` of `Status.StatusCode`.
const STATUS_CODE_ERROR: u64 = 2;

/// Room reserved per span in a batch's protobuf (a proxy span with its twenty attributes is
/// about 600 bytes): the buffer is allocated once per batch instead of growing by copies.
const SPAN_PROTO_BYTES: usize = 768;

/// Encodes a batch as the protobuf body `POST /v1/traces` takes: one `ResourceSpans` per
/// local service name, in name order (a proxy has one; the grouping keeps `service.name`
/// right if a batch ever spans a rename on reload), then the spans of that service in batch
/// order. Proto3 defaults (empty strings and bytes, zero times) are left out, as prost does,
/// so the bytes are the ones `opentelemetry-proto`'s messages would encode to.
pub fn encode_otlp(spans: &[Span], resource: &Resource) -> Vec<u8> {
    let mut buf = Vec::with_capacity(spans.len().saturating_mul(SPAN_PROTO_BYTES));
    let mut services: Vec<&str> = spans.iter().map(service_of).collect();
    services.sort_unstable();
    services.dedup();
    // One attribute list for the whole batch, cleared per span.
    let mut attrs: Vec<Attr<'_>> = Vec::new();
    for service in services {
        message(&mut buf, field::REQUEST_RESOURCE_SPANS, |buf| {
            message(buf, field::RESOURCE_SPANS_RESOURCE, |buf| {
                key_value(
                    buf,
                    field::RESOURCE_ATTRIBUTES,
                    "service.name",
                    &Value::Str(service.as_bytes()),
                );
                for (k, v) in &resource.attributes {
                    if k != "service.name" {
                        key_value(
                            buf,
                            field::RESOURCE_ATTRIBUTES,
                            k,
                            &Value::Str(v.as_bytes()),
                        );
                    }
                }
            });
            message(buf, field::RESOURCE_SPANS_SCOPE_SPANS, |buf| {
                message(buf, field::SCOPE_SPANS_SCOPE, |buf| {
                    string(buf, field::SCOPE_NAME, SCOPE_NAME);
                    string(buf, field::SCOPE_VERSION, env!("CARGO_PKG_VERSION"));
                });
                for span in spans.iter().filter(|s| service_of(s) == service) {
                    attrs.clear();
                    let status = span_attributes(span, resource, &mut attrs);
                    message(buf, field::SCOPE_SPANS_SPANS, |buf| {
                        write_span(buf, span, &attrs, status);
                    });
                }
            });
        });
    }
    buf
}

fn service_of(span: &Span) -> &str {
    span.local_endpoint.service_name.as_deref().unwrap_or("")
}

/// An attribute value: borrowed from the span where it can be.
#[derive(Debug)]
enum Value<'a> {
    /// UTF-8 (a `str` or a [`Text`]'s bytes, read without checking them again).
    Str(&'a [u8]),
    /// Text the span does not hold as such (an address, a status code as text).
    Text(Text),
    Int(i64),
}

#[derive(Debug)]
struct Attr<'a> {
    key: &'a str,
    value: Value<'a>,
}

fn str_attr<'a>(attrs: &mut Vec<Attr<'a>>, key: &'a str, value: &'a str) {
    attrs.push(Attr {
        key,
        value: Value::Str(value.as_bytes()),
    });
}

fn text_attr<'a>(attrs: &mut Vec<Attr<'a>>, key: &'a str, value: &'a Text) {
    attrs.push(Attr {
        key,
        value: Value::Str(value.as_bytes()),
    });
}

/// The Zipkin tags the mapping reads, found in one pass over a span's tags instead of a
/// search per name; the others are copied under their own name.
#[derive(Default)]
struct Known<'a> {
    method: Option<&'a Text>,
    path: Option<&'a Text>,
    url: Option<&'a Text>,
    status_code: Option<&'a Text>,
    protocol: Option<&'a Text>,
    /// Mapped from the remote endpoint instead, so only recognised here.
    peer_address: Option<&'a Text>,
    user_agent: Option<&'a Text>,
    response_size: Option<&'a Text>,
    grpc_status_code: Option<&'a Text>,
    error: Option<&'a Text>,
    error_type: Option<&'a Text>,
}

impl<'a> Known<'a> {
    /// Where a mapped tag goes; `None` for a tag copied under its own name.
    fn slot(&mut self, key: &[u8]) -> Option<&mut Option<&'a Text>> {
        Some(match key {
            b"http.method" => &mut self.method,
            b"http.path" => &mut self.path,
            b"http.url" => &mut self.url,
            b"http.status_code" => &mut self.status_code,
            b"http.protocol" => &mut self.protocol,
            b"peer.address" => &mut self.peer_address,
            b"user_agent" => &mut self.user_agent,
            b"response_size" => &mut self.response_size,
            b"grpc.status_code" => &mut self.grpc_status_code,
            b"error" => &mut self.error,
            b"error.type" => &mut self.error_type,
            _ => return None,
        })
    }
}

fn int_attr<'a>(attrs: &mut Vec<Attr<'a>>, key: &'a str, value: i64) {
    attrs.push(Attr {
        key,
        value: Value::Int(value),
    });
}

/// The attributes of one span in OTLP's vocabulary (see the module docs for the mapping),
/// and its status message when it is an error (empty for Zipkin's bare `error=true`). Tags
/// that `resource` already carries (the proxy tags spans with `k8s.pod.name` for Zipkin) are
/// not repeated per span.
fn span_attributes<'a>(
    span: &'a Span,
    resource: &Resource,
    attrs: &mut Vec<Attr<'a>>,
) -> Option<&'a str> {
    let tags = &span.tags;
    let mut known = Known::default();
    for (k, v) in tags {
        if let Some(slot) = known.slot(k.as_bytes()) {
            *slot = Some(v);
        }
    }

    if let Some(m) = known.method {
        text_attr(attrs, "http.request.method", m);
    }
    let url = known.url.map(|u| split_url(u.as_str()));
    if let Some((scheme, authority, _)) = url {
        str_attr(attrs, "url.scheme", scheme);
        if let Some((host, port)) = split_authority(authority, scheme) {
            str_attr(attrs, "server.address", host);
            if let Some(port) = port {
                int_attr(attrs, "server.port", i64::from(port));
            }
        }
    }
    if let Some(p) = known.path {
        text_attr(attrs, "url.path", p);
    }
    if span.kind == SpanKind::Client
        && let Some(full) = known.url
    {
        text_attr(attrs, "url.full", full);
    }
    if let Some(q) = url.and_then(|(_, _, q)| q) {
        // Present only when the TracedService opted in to query strings.
        str_attr(attrs, "url.query", q);
    }
    let status = known
        .status_code
        .and_then(|s| s.as_str().parse::<i64>().ok());
    if let Some(s) = status {
        int_attr(attrs, "http.response.status_code", s);
    }
    if let Some(proto) = known.protocol {
        let (name, version) = protocol_name_version(proto.as_str());
        str_attr(attrs, "network.protocol.name", name);
        if let Some(v) = version {
            str_attr(attrs, "network.protocol.version", v);
        }
        if name == "grpc" {
            str_attr(attrs, "rpc.system", "grpc");
        }
    }
    if let Some(remote) = &span.remote_endpoint {
        endpoint_attrs(attrs, ["network.peer.address", "network.peer.port"], remote);
    }
    endpoint_attrs(
        attrs,
        ["network.local.address", "network.local.port"],
        &span.local_endpoint,
    );
    if let Some(ua) = known.user_agent {
        text_attr(attrs, "user_agent.original", ua);
    }
    if let Some(size) = known
        .response_size
        .and_then(|s| s.as_str().parse::<i64>().ok())
    {
        int_attr(attrs, "http.response.body.size", size);
    }
    if let Some(code) = known.grpc_status_code {
        match code.as_str().parse::<i64>() {
            Ok(c) => int_attr(attrs, "rpc.grpc.status_code", c),
            Err(_) => text_attr(attrs, "rpc.grpc.status_code", code),
        }
    }
    let error = known.error.map(Text::as_str);
    // error.type: the proxy's own failure class, else (convention for HTTP) the status code.
    match (known.error_type, error, status) {
        (Some(t), _, _) => text_attr(attrs, "error.type", t),
        (None, Some(_), Some(s)) => attrs.push(Attr {
            key: "error.type",
            value: Value::Text(Text::display(s)),
        }),
        (None, Some(_), None) => str_attr(attrs, "error.type", "_OTHER"),
        _ => {}
    }
    for (k, v) in tags {
        if Known::default().slot(k.as_bytes()).is_none()
            && !resource.attributes.contains_key(k.as_str())
        {
            text_attr(attrs, k.as_str(), v);
        }
    }
    // `error=true` is Zipkin's bare flag (5xx, gRPC failure): no message to carry.
    error.map(|e| if e == "true" { "" } else { e })
}

fn endpoint_attrs(attrs: &mut Vec<Attr<'_>>, keys: [&'static str; 2], e: &Endpoint) {
    let ip = e.ipv4.map(IpAddr::V4).or_else(|| e.ipv6.map(IpAddr::V6));
    if let Some(ip) = ip {
        attrs.push(Attr {
            key: keys[0],
            // In place for IPv4 (see `Text`); IPv6 text may need the heap.
            value: Value::Text(Text::display(ip)),
        });
    }
    if let Some(port) = e.port {
        int_attr(attrs, keys[1], i64::from(port));
    }
}

/// One `Span` message body, fields in number order as prost writes them.
fn write_span(buf: &mut Vec<u8>, span: &Span, attrs: &[Attr<'_>], status: Option<&str>) {
    bytes(
        buf,
        field::SPAN_TRACE_ID,
        &span.trace_id.as_u128().to_be_bytes(),
    );
    bytes(buf, field::SPAN_SPAN_ID, &span.id.as_u64().to_be_bytes());
    if let Some(parent) = span.parent_id {
        bytes(
            buf,
            field::SPAN_PARENT_SPAN_ID,
            &parent.as_u64().to_be_bytes(),
        );
    }
    string(buf, field::SPAN_NAME, &span.name);
    let kind = match span.kind {
        SpanKind::Server => KIND_SERVER,
        SpanKind::Client => KIND_CLIENT,
    };
    varint(buf, field::SPAN_KIND, kind);
    let start = span.timestamp.saturating_mul(1000);
    fixed64(buf, field::SPAN_START, start);
    fixed64(
        buf,
        field::SPAN_END,
        start.saturating_add(span.duration.saturating_mul(1000)),
    );
    for a in attrs {
        key_value(buf, field::SPAN_ATTRIBUTES, a.key, &a.value);
    }
    if let Some(message_text) = status {
        message(buf, field::SPAN_STATUS, |buf| {
            string(buf, field::STATUS_MESSAGE, message_text);
            varint(buf, field::STATUS_CODE, STATUS_CODE_ERROR);
        });
    }
}

/// A `KeyValue` with an `AnyValue`. The oneof value is written even when empty or zero (a
/// oneof has no default to leave out); an empty key is left out, as prost does.
fn key_value(buf: &mut Vec<u8>, tag: u32, key: &str, value: &Value<'_>) {
    message(buf, tag, |buf| {
        string(buf, field::KEY_VALUE_KEY, key);
        message(buf, field::KEY_VALUE_VALUE, |buf| match value {
            Value::Str(s) => length_delimited(buf, field::ANY_VALUE_STRING, s),
            Value::Text(t) => length_delimited(buf, field::ANY_VALUE_STRING, t.as_bytes()),
            // int64 on the wire: the two's complement as a 64-bit varint.
            Value::Int(i) => {
                encode_key(field::ANY_VALUE_INT, WireType::Varint, buf);
                encode_varint(*i as u64, buf);
            }
        });
    });
}

/// A nested message: its key, its length, then what `body` writes. The length is known only
/// afterwards: one byte is set aside (enough below 128 bytes, most attributes) and the body
/// moved along when the length needs more.
fn message(buf: &mut Vec<u8>, tag: u32, body: impl FnOnce(&mut Vec<u8>)) {
    encode_key(tag, WireType::LengthDelimited, buf);
    let at = buf.len();
    buf.push(0);
    body(buf);
    let len = buf.len() - at - 1;
    let n = encoded_len_varint(len as u64);
    if n > 1 {
        buf.resize(buf.len() + n - 1, 0);
        buf.copy_within(at + 1..at + 1 + len, at + n);
    }
    let mut slot = &mut buf[at..at + n];
    encode_varint(len as u64, &mut slot);
}

fn length_delimited(buf: &mut Vec<u8>, tag: u32, value: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.extend_from_slice(value);
}

/// A proto3 `string` field: left out when empty.
fn string(buf: &mut Vec<u8>, tag: u32, value: &str) {
    if !value.is_empty() {
        length_delimited(buf, tag, value.as_bytes());
    }
}

/// A proto3 `bytes` field: left out when empty.
fn bytes(buf: &mut Vec<u8>, tag: u32, value: &[u8]) {
    if !value.is_empty() {
        length_delimited(buf, tag, value);
    }
}

/// A proto3 varint field (an enum): left out when zero.
fn varint(buf: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

/// A proto3 `fixed64` field: left out when zero.
fn fixed64(buf: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::SixtyFourBit, buf);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

/// Zipkin tags that become a semantic-convention attribute (or the status) instead of being
/// copied under their own name: the oracle's list, which `Known::slot` matches.
#[cfg(test)]
const MAPPED_TAGS: &[&str] = &[
    "http.method",
    "http.path",
    "http.url",
    "http.status_code",
    "http.protocol",
    "peer.address",
    "user_agent",
    "response_size",
    "grpc.status_code",
    "error",
    "error.type",
];

/// Spans an OTLP collector says it rejected in a 2xx answer (`partial_success`); 0 when the
/// body is empty or not an `ExportTraceServiceResponse`.
pub fn rejected_spans(body: &[u8]) -> i64 {
    ExportTraceServiceResponse::decode(body)
        .ok()
        .and_then(|r| r.partial_success)
        .map_or(0, |p| p.rejected_spans.max(0))
}

/// `scheme://authority/path?query` → (scheme, authority, query). The proxy built the URL, so
/// it always has a scheme; anything else is taken as an authority-less path.
fn split_url(url: &str) -> (&str, &str, Option<&str>) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or_default();
    (scheme, authority, query)
}

/// `host[:port]` or `[v6][:port]` → host and port; the scheme's default port when absent.
fn split_authority<'a>(authority: &'a str, scheme: &str) -> Option<(&'a str, Option<u16>)> {
    let default_port = match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    };
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            _ => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => p.parse::<u16>().ok(),
        None => default_port,
    };
    Some((host, port))
}

/// `HTTP/1.1` → (`http`, `1.1`), `HTTP/2` → (`http`, `2`), `gRPC` → (`grpc`, none).
fn protocol_name_version(proto: &str) -> (&'static str, Option<&str>) {
    match proto.split_once('/') {
        Some((name, v)) if name.eq_ignore_ascii_case("http") => ("http", Some(v)),
        _ if proto.eq_ignore_ascii_case("grpc") => ("grpc", None),
        _ => ("http", None),
    }
}

/// The encoding as it was built before [`encode_otlp`] wrote protobuf directly: the
/// `opentelemetry-proto` messages, field by field. Kept for the tests as the oracle the
/// direct encoding is compared with (decoded, and byte for byte); a change of the mapping
/// is made in both, and the comparison test says so when one is missed.
#[cfg(test)]
pub(crate) mod oracle {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, InstrumentationScope, KeyValue, any_value,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource as OtlpResource;
    use opentelemetry_proto::tonic::trace::v1::{
        ResourceSpans, ScopeSpans, Span as OtlpSpan, Status, span::SpanKind as OtlpKind,
        status::StatusCode,
    };

    /// The OTLP request for a batch: one `ResourceSpans` per local service name (a proxy has one;
    /// the grouping keeps `service.name` right if a batch ever spans a rename on reload).
    pub fn to_otlp_request(spans: &[Span], resource: &Resource) -> ExportTraceServiceRequest {
        let mut by_service: BTreeMap<&str, Vec<OtlpSpan>> = BTreeMap::new();
        for span in spans {
            let service = span.local_endpoint.service_name.as_deref().unwrap_or("");
            by_service
                .entry(service)
                .or_default()
                .push(to_otlp_span(span, resource));
        }
        let resource_spans = by_service
            .into_iter()
            .map(|(service, spans)| {
                let mut attributes = vec![string_kv("service.name", service)];
                attributes.extend(
                    resource
                        .attributes
                        .iter()
                        .filter(|(k, _)| k.as_str() != "service.name")
                        .map(|(k, v)| string_kv(k, v)),
                );
                ResourceSpans {
                    resource: Some(OtlpResource {
                        attributes,
                        ..OtlpResource::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: SCOPE_NAME.to_owned(),
                            version: env!("CARGO_PKG_VERSION").to_owned(),
                            ..InstrumentationScope::default()
                        }),
                        spans,
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }
            })
            .collect();
        ExportTraceServiceRequest { resource_spans }
    }

    /// One span in OTLP form; see the module docs for the mapping. Tags that `resource` already
    /// carries (the proxy tags spans with `k8s.pod.name` for Zipkin) are not repeated per span.
    pub fn to_otlp_span(span: &Span, resource: &Resource) -> OtlpSpan {
        let tags = &span.tags;
        let tag = |k: &str| tags.get(k).map(Text::as_str);
        let mut attrs: Vec<KeyValue> = Vec::with_capacity(tags.len() + 4);

        if let Some(m) = tag("http.method") {
            attrs.push(string_kv("http.request.method", m));
        }
        let url = tag("http.url").map(split_url);
        if let Some((scheme, authority, _)) = url {
            attrs.push(string_kv("url.scheme", scheme));
            if let Some((host, port)) = split_authority(authority, scheme) {
                attrs.push(string_kv("server.address", host));
                if let Some(port) = port {
                    attrs.push(int_kv("server.port", i64::from(port)));
                }
            }
        }
        if let Some(p) = tag("http.path") {
            attrs.push(string_kv("url.path", p));
        }
        if span.kind == SpanKind::Client
            && let Some(full) = tag("http.url")
        {
            attrs.push(string_kv("url.full", full));
        }
        if let Some(q) = url.and_then(|(_, _, q)| q) {
            // Present only when the TracedService opted in to query strings.
            attrs.push(string_kv("url.query", q));
        }
        let status = tag("http.status_code").and_then(|s| s.parse::<i64>().ok());
        if let Some(s) = status {
            attrs.push(int_kv("http.response.status_code", s));
        }
        if let Some(proto) = tag("http.protocol") {
            let (name, version) = protocol_name_version(proto);
            attrs.push(string_kv("network.protocol.name", name));
            if let Some(v) = version {
                attrs.push(string_kv("network.protocol.version", v));
            }
            if name == "grpc" {
                attrs.push(string_kv("rpc.system", "grpc"));
            }
        }
        if let Some(remote) = &span.remote_endpoint {
            push_endpoint(&mut attrs, "network.peer", remote);
        }
        push_endpoint(&mut attrs, "network.local", &span.local_endpoint);
        if let Some(ua) = tag("user_agent") {
            attrs.push(string_kv("user_agent.original", ua));
        }
        if let Some(size) = tag("response_size").and_then(|s| s.parse::<i64>().ok()) {
            attrs.push(int_kv("http.response.body.size", size));
        }
        if let Some(code) = tag("grpc.status_code") {
            match code.parse::<i64>() {
                Ok(c) => attrs.push(int_kv("rpc.grpc.status_code", c)),
                Err(_) => attrs.push(string_kv("rpc.grpc.status_code", code)),
            }
        }
        let error = tag("error");
        // error.type: the proxy's own failure class, else (convention for HTTP) the status code.
        match (tag("error.type"), error, status) {
            (Some(t), _, _) => attrs.push(string_kv("error.type", t)),
            (None, Some(_), Some(s)) => attrs.push(string_kv("error.type", &s.to_string())),
            (None, Some(_), None) => attrs.push(string_kv("error.type", "_OTHER")),
            _ => {}
        }
        for (k, v) in tags {
            if !MAPPED_TAGS.contains(&k.as_str()) && !resource.attributes.contains_key(k.as_str()) {
                attrs.push(string_kv(k, v));
            }
        }

        let status = error.map(|e| Status {
            // `error=true` is Zipkin's bare flag (5xx, gRPC failure): no message to carry.
            message: if e == "true" {
                String::new()
            } else {
                e.to_owned()
            },
            code: StatusCode::Error as i32,
        });
        let start = span.timestamp.saturating_mul(1000);
        OtlpSpan {
            trace_id: span.trace_id.as_u128().to_be_bytes().to_vec(),
            span_id: span.id.as_u64().to_be_bytes().to_vec(),
            parent_span_id: span
                .parent_id
                .map(|p| p.as_u64().to_be_bytes().to_vec())
                .unwrap_or_default(),
            name: span.name.to_string(),
            kind: match span.kind {
                SpanKind::Server => OtlpKind::Server,
                SpanKind::Client => OtlpKind::Client,
            } as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start.saturating_add(span.duration.saturating_mul(1000)),
            attributes: attrs,
            status,
            ..OtlpSpan::default()
        }
    }

    fn push_endpoint(attrs: &mut Vec<KeyValue>, prefix: &str, e: &Endpoint) {
        let ip = e
            .ipv4
            .map(|ip| ip.to_string())
            .or_else(|| e.ipv6.map(|ip| ip.to_string()));
        if let Some(ip) = ip {
            attrs.push(string_kv(&format!("{prefix}.address"), &ip));
        }
        if let Some(port) = e.port {
            attrs.push(int_kv(&format!("{prefix}.port"), i64::from(port)));
        }
    }

    fn string_kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.to_owned())),
            }),
            ..KeyValue::default()
        }
    }

    fn int_kv(key: &str, value: i64) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(value)),
            }),
            ..KeyValue::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::oracle::to_otlp_request;
    use super::*;
    use crate::id::{SpanId, TraceId};
    use crate::span::encode_zipkin_v2;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::{
        Status, span::SpanKind as OtlpKind, status::StatusCode,
    };

    /// The span of the golden tests: a SERVER span that failed upstream, as the proxy makes
    /// it (the tags are the ones `Hop::finish_after` writes).
    fn server_span() -> Span {
        let tags = [
            ("component", "proxy"),
            ("error", "upstream connect error: connection refused"),
            ("error.type", "connect"),
            ("guid:x-request-id", "0f0e0d0c-0b0a-4009-8807-060504030201"),
            ("http.method", "GET"),
            ("http.path", "/trace/1"),
            ("http.protocol", "HTTP/1.1"),
            ("http.status_code", "503"),
            ("http.url", "http://service1:8000/trace/1"),
            ("k8s.pod.name", "service1-7c9d8-abcde"),
            ("peer.address", "10.1.2.9:43210"),
            ("response_size", "19"),
            ("team", "shop"),
            ("upstream_address", "10.1.2.3:8080"),
            ("upstream_cluster", "inbound|8080"),
            ("user_agent", "curl/8.5.0"),
        ];
        crate::span::fixtures::server_span("GET /trace/{id}", &tags)
    }

    fn client_span() -> Span {
        let tags = [
            ("component", "proxy"),
            ("http.method", "POST"),
            ("http.path", "/orders"),
            ("http.protocol", "HTTP/2"),
            ("http.status_code", "201"),
            ("http.url", "http://[fd00::2]:8000/orders?page=2"),
            ("peer.address", "[fd00::2]:8000"),
        ];
        crate::span::fixtures::client_root_span(
            "POST [fd00::2]:8000/orders",
            "shop",
            "10.0.0.1:50000",
            &tags,
        )
    }

    fn resource() -> Resource {
        let mut r = Resource::default();
        r.set("k8s.namespace.name", "shop");
        r.set("k8s.pod.name", "service1-7c9d8-abcde");
        r.set("k8s.node.name", "node-1");
        r.set("k8s.deployment.name", "service1");
        r.set("k8s.replicaset.name", "service1-7c9d8");
        r.set("service.namespace", "shop");
        r.set("service.instance.id", "shop.service1-7c9d8-abcde");
        r.set("service.name", "ignored: the span's own service wins");
        r.set("k8s.statefulset.name", "  ");
        r
    }

    /// An attribute value in a readable form: `"text"` for strings, bare for integers.
    fn show(kv: &KeyValue) -> (String, String) {
        let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => format!("{s:?}"),
            Some(any_value::Value::IntValue(i)) => i.to_string(),
            other => format!("unexpected {other:?}"),
        };
        (kv.key.clone(), v)
    }

    fn shown(attrs: &[KeyValue]) -> Vec<(String, String)> {
        attrs.iter().map(show).collect()
    }

    fn pairs(want: &[(&str, &str)]) -> Vec<(String, String)> {
        want.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn decode(bytes: &[u8]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest::decode(bytes).expect("the protobuf decodes")
    }

    #[test]
    fn golden_server_span_in_both_encodings() {
        let span = server_span();
        // Zipkin v2: the tags exactly as the proxy always sent them.
        let json = String::from_utf8(encode_zipkin_v2(std::slice::from_ref(&span))).expect("utf8");
        assert_eq!(
            json,
            r#"[{"traceId":"463ac35c9f6413ad48485a3953bb6124","parentId":"0020000000000001","id":"a2fb4a1d1a96d312","kind":"SERVER","name":"GET /trace/{id}","timestamp":1700000000000000,"duration":1234,"localEndpoint":{"serviceName":"service1","ipv4":"10.1.2.3","port":8080},"remoteEndpoint":{"ipv4":"10.1.2.9","port":43210},"tags":{"component":"proxy","error":"upstream connect error: connection refused","error.type":"connect","guid:x-request-id":"0f0e0d0c-0b0a-4009-8807-060504030201","http.method":"GET","http.path":"/trace/1","http.protocol":"HTTP/1.1","http.status_code":"503","http.url":"http://service1:8000/trace/1","k8s.pod.name":"service1-7c9d8-abcde","peer.address":"10.1.2.9:43210","response_size":"19","team":"shop","upstream_address":"10.1.2.3:8080","upstream_cluster":"inbound|8080","user_agent":"curl/8.5.0"}}]"#
        );

        // OTLP: the same span, decoded again with the same crate, field by field.
        let req = decode(&encode_otlp(std::slice::from_ref(&span), &resource()));
        assert_eq!(req.resource_spans.len(), 1);
        let rs = &req.resource_spans[0];
        assert_eq!(
            shown(&rs.resource.as_ref().expect("resource").attributes),
            pairs(&[
                ("service.name", "\"service1\""),
                ("k8s.deployment.name", "\"service1\""),
                ("k8s.namespace.name", "\"shop\""),
                ("k8s.node.name", "\"node-1\""),
                ("k8s.pod.name", "\"service1-7c9d8-abcde\""),
                ("k8s.replicaset.name", "\"service1-7c9d8\""),
                ("service.instance.id", "\"shop.service1-7c9d8-abcde\""),
                ("service.namespace", "\"shop\""),
            ])
        );
        assert_eq!(rs.scope_spans.len(), 1);
        let scope = rs.scope_spans[0].scope.as_ref().expect("scope");
        assert_eq!(scope.name, "sidetrace-proxy");
        assert_eq!(rs.scope_spans[0].spans.len(), 1);
        let s = &rs.scope_spans[0].spans[0];
        assert_eq!(hex(&s.trace_id), "463ac35c9f6413ad48485a3953bb6124");
        assert_eq!(hex(&s.span_id), "a2fb4a1d1a96d312");
        assert_eq!(hex(&s.parent_span_id), "0020000000000001");
        assert_eq!(s.name, "GET /trace/{id}");
        assert_eq!(s.kind, OtlpKind::Server as i32);
        assert_eq!(s.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 1_234_000);
        assert_eq!(
            s.status,
            Some(Status {
                message: "upstream connect error: connection refused".into(),
                code: StatusCode::Error as i32,
            })
        );
        assert_eq!(
            shown(&s.attributes),
            pairs(&[
                ("http.request.method", "\"GET\""),
                ("url.scheme", "\"http\""),
                ("server.address", "\"service1\""),
                ("server.port", "8000"),
                ("url.path", "\"/trace/1\""),
                ("http.response.status_code", "503"),
                ("network.protocol.name", "\"http\""),
                ("network.protocol.version", "\"1.1\""),
                ("network.peer.address", "\"10.1.2.9\""),
                ("network.peer.port", "43210"),
                ("network.local.address", "\"10.1.2.3\""),
                ("network.local.port", "8080"),
                ("user_agent.original", "\"curl/8.5.0\""),
                ("http.response.body.size", "19"),
                ("error.type", "\"connect\""),
                ("component", "\"proxy\""),
                (
                    "guid:x-request-id",
                    "\"0f0e0d0c-0b0a-4009-8807-060504030201\""
                ),
                ("team", "\"shop\""),
                ("upstream_address", "\"10.1.2.3:8080\""),
                ("upstream_cluster", "\"inbound|8080\""),
            ])
        );
    }

    #[test]
    fn golden_client_span_in_both_encodings() {
        let span = client_span();
        let json = String::from_utf8(encode_zipkin_v2(std::slice::from_ref(&span))).expect("utf8");
        assert_eq!(
            json,
            r#"[{"traceId":"463ac35c9f6413ad","id":"00000000000000ff","kind":"CLIENT","name":"POST [fd00::2]:8000/orders","timestamp":1,"duration":1,"localEndpoint":{"serviceName":"shop","ipv4":"10.0.0.1"},"remoteEndpoint":{"ipv6":"fd00::2","port":8000},"debug":true,"tags":{"component":"proxy","http.method":"POST","http.path":"/orders","http.protocol":"HTTP/2","http.status_code":"201","http.url":"http://[fd00::2]:8000/orders?page=2","peer.address":"[fd00::2]:8000"}}]"#
        );
        let req = decode(&encode_otlp(&[span], &Resource::default()));
        let rs = &req.resource_spans[0];
        assert_eq!(
            shown(&rs.resource.as_ref().expect("resource").attributes),
            pairs(&[("service.name", "\"shop\"")])
        );
        let s = &rs.scope_spans[0].spans[0];
        // A 64-bit B3 trace id is left-padded to 16 bytes; a root has no parent.
        assert_eq!(hex(&s.trace_id), "0000000000000000463ac35c9f6413ad");
        assert_eq!(hex(&s.span_id), "00000000000000ff");
        assert!(s.parent_span_id.is_empty());
        assert_eq!(s.kind, OtlpKind::Client as i32);
        assert_eq!((s.start_time_unix_nano, s.end_time_unix_nano), (1000, 2000));
        assert_eq!(s.status, None, "a 201 is not an error");
        assert_eq!(
            shown(&s.attributes),
            pairs(&[
                ("http.request.method", "\"POST\""),
                ("url.scheme", "\"http\""),
                ("server.address", "\"fd00::2\""),
                ("server.port", "8000"),
                ("url.path", "\"/orders\""),
                ("url.full", "\"http://[fd00::2]:8000/orders?page=2\""),
                ("url.query", "\"page=2\""),
                ("http.response.status_code", "201"),
                ("network.protocol.name", "\"http\""),
                ("network.protocol.version", "\"2\""),
                ("network.peer.address", "\"fd00::2\""),
                ("network.peer.port", "8000"),
                ("network.local.address", "\"10.0.0.1\""),
                ("component", "\"proxy\""),
            ])
        );
    }

    #[test]
    fn bare_error_flags_and_spans_of_two_services() {
        let mut a = client_span();
        a.tags.insert("error".into(), "true".into());
        a.tags.insert("http.status_code".into(), "502".into());
        let mut b = server_span();
        b.tags.remove("error.type");
        let req = decode(&encode_otlp(&[a, b], &Resource::default()));
        let services: Vec<String> = req
            .resource_spans
            .iter()
            .map(|rs| show(&rs.resource.as_ref().expect("resource").attributes[0]).1)
            .collect();
        assert_eq!(services, ["\"service1\"", "\"shop\""]);
        let client = &req.resource_spans[1].scope_spans[0].spans[0];
        let status = client.status.as_ref().expect("error status");
        assert_eq!(
            (status.code, status.message.as_str()),
            (StatusCode::Error as i32, "")
        );
        let error_type: Vec<_> = shown(&client.attributes)
            .into_iter()
            .filter(|(k, _)| k == "error.type")
            .collect();
        assert_eq!(error_type, pairs(&[("error.type", "\"502\"")]));
        let server = &req.resource_spans[0].scope_spans[0].spans[0];
        assert!(shown(&server.attributes).contains(&("error.type".into(), "\"503\"".into())));
        // Kept as a span attribute when the resource does not carry it.
        assert!(
            shown(&server.attributes)
                .contains(&("k8s.pod.name".into(), "\"service1-7c9d8-abcde\"".into()))
        );
    }

    #[test]
    fn partial_success_counts_rejected_spans() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
        let body = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "too old".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(rejected_spans(&body), 3);
        assert_eq!(rejected_spans(b""), 0);
        assert_eq!(rejected_spans(b"{\"not\": \"protobuf\"}"), 0);
    }

    /// Spans that exercise every branch of the mapping and of the wire format: both kinds,
    /// 64- and 128-bit trace ids, roots, errors with and without a message, gRPC, static
    /// tags, empty keys and values, unparsable and negative numbers, non-ASCII text, no
    /// service name or address, zero times, values long enough for multi-byte lengths.
    fn varied_spans() -> Vec<Span> {
        let mut spans = vec![server_span(), client_span()];

        let mut grpc = crate::span::fixtures::server_span(
            "/shop.Cart/Add",
            &[
                ("http.method", "POST"),
                ("http.protocol", "gRPC"),
                ("http.status_code", "200"),
                ("grpc.status_code", "14"),
                ("error", "true"),
                ("http.url", "https://cart.shop.svc:8443/shop.Cart/Add"),
                ("team", ""),
                ("", "empty key"),
            ],
        );
        grpc.trace_id = TraceId::from_hex("0000000000000001").expect("id");
        spans.push(grpc);

        let mut odd = crate::span::fixtures::client_root_span(
            "",
            "café",
            "0.0.0.0:0",
            &[
                ("http.method", "GET"),
                ("http.path", "/café/日本語"),
                ("http.url", "/no-scheme/path"),
                ("http.status_code", "-1"),
                ("grpc.status_code", "UNAVAILABLE"),
                ("response_size", "not a number"),
                ("http.protocol", "SPDY"),
                ("user_agent", "Mözilla/5.0 ü"),
                ("error", "ünïcode failure"),
            ],
        );
        odd.timestamp = 0;
        odd.duration = 0;
        odd.remote_endpoint = None;
        spans.push(odd);

        let mut no_service = client_span();
        no_service.local_endpoint.service_name = None;
        no_service.parent_id = SpanId::from_hex("ffffffffffffffff");
        no_service
            .tags
            .insert("error".into(), Text::copy(&"x".repeat(300)));
        no_service
            .tags
            .insert("http.url".into(), "http://[fd00::2".into());
        spans.push(no_service);

        let mut huge = server_span();
        huge.tags.remove("error.type");
        huge.tags
            .insert("note".into(), Text::copy(&"é".repeat(10_000)));
        huge.name = "n".repeat(200).into();
        spans.push(huge);

        let mut bare = server_span();
        bare.tags.clear();
        bare.tags.insert("error".into(), "true".into());
        spans.push(bare);

        // Services interleaved and enough spans for a three-byte length of the scope's spans.
        let mut other = client_span();
        other.local_endpoint.service_name = Some("a-first".into());
        for i in 0..200 {
            spans.push(if i % 3 == 0 {
                other.clone()
            } else {
                server_span()
            });
        }
        spans
    }

    #[test]
    fn the_one_pass_lookup_maps_exactly_the_mapped_tags() {
        for k in MAPPED_TAGS {
            assert!(Known::default().slot(k.as_bytes()).is_some(), "{k}");
        }
        for k in ["component", "http.methods", "error.typ", "", "team"] {
            assert!(Known::default().slot(k.as_bytes()).is_none(), "{k}");
        }
    }

    #[test]
    fn direct_encoding_is_what_the_message_builder_encodes() {
        let mut with_empty = resource();
        with_empty.attributes.insert("empty".into(), String::new());
        with_empty.attributes.insert("".into(), "no key".into());
        let spans = varied_spans();
        for res in [Resource::default(), resource(), with_empty] {
            for batch in [&spans[..], &spans[..0], &spans[3..4], &spans[4..7]] {
                let direct = encode_otlp(batch, &res);
                let built = to_otlp_request(batch, &res);
                assert_eq!(decode(&direct), built, "decoded");
                assert_eq!(direct, built.encode_to_vec(), "byte for byte");
            }
            for span in &spans[..7] {
                let direct = encode_otlp(std::slice::from_ref(span), &res);
                assert_eq!(
                    decode(&direct),
                    to_otlp_request(std::slice::from_ref(span), &res),
                    "{span:?}"
                );
            }
        }
        // The decoded batch has what the varied spans promise.
        let req = decode(&encode_otlp(&spans, &resource()));
        let services: Vec<String> = req
            .resource_spans
            .iter()
            .map(|rs| show(&rs.resource.as_ref().expect("resource").attributes[0]).1)
            .collect();
        assert_eq!(
            services,
            [
                "\"\"",
                "\"a-first\"",
                "\"café\"",
                "\"service1\"",
                "\"shop\""
            ]
        );
        let odd = &req.resource_spans[2].scope_spans[0].spans[0];
        assert_eq!((odd.start_time_unix_nano, odd.end_time_unix_nano), (0, 0));
        assert!(
            shown(&odd.attributes).contains(&("http.response.status_code".into(), "-1".into()))
        );
        assert_eq!(
            odd.status.as_ref().map(|s| s.message.as_str()),
            Some("ünïcode failure")
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

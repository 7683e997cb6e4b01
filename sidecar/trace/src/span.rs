//! Finished spans in the Zipkin v2 model, and their JSON encoding.
//!
//! Field names and shapes are Zipkin's `api/v2/spans` ones, which Jaeger's Zipkin receiver
//! also reads: ids as lowercase hex strings, `timestamp` and `duration` in microseconds,
//! `kind` as `SERVER`/`CLIENT`, endpoints with `serviceName`/`ipv4`/`ipv6`/`port`, and
//! string-to-string `tags`. Absent optional fields are omitted, not `null`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Serialize;

use crate::id::{SpanId, TraceId};
use crate::tags::Tags;
use crate::text::Text;

/// Zipkin span kind; the proxy only makes these two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SpanKind {
    /// An inbound request served by the pod.
    Server,
    /// An outbound request made by the pod.
    Client,
}

/// A Zipkin endpoint: who was on one side of the span.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Service name, as configured (Zipkin lower-cases it server-side; Jaeger does not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<Text>,
    /// IPv4 address (IPv4-mapped IPv6 addresses are reported here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// Port; omitted when unknown or zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl Endpoint {
    /// An endpoint for `addr`. Unspecified addresses are left out; `with_port` false drops the
    /// port (a client's ephemeral port is noise in a trace view).
    pub fn from_addr(service_name: Option<Text>, addr: SocketAddr, with_port: bool) -> Self {
        let mut e = Self {
            service_name,
            port: (with_port && addr.port() != 0).then_some(addr.port()),
            ..Self::default()
        };
        match addr.ip().to_canonical() {
            IpAddr::V4(ip) if !ip.is_unspecified() => e.ipv4 = Some(ip),
            IpAddr::V6(ip) if !ip.is_unspecified() => e.ipv6 = Some(ip),
            _ => {}
        }
        e
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One finished span, ready to export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    /// Trace id, 16 or 32 lowercase hex digits.
    pub trace_id: TraceId,
    /// Parent span id; absent for a root span.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<SpanId>,
    /// This span's id.
    pub id: SpanId,
    /// SERVER or CLIENT.
    pub kind: SpanKind,
    /// Operation name.
    pub name: String,
    /// Start, microseconds since the Unix epoch.
    pub timestamp: u64,
    /// Duration in microseconds, at least 1 (Zipkin treats 0 as "unknown").
    pub duration: u64,
    /// The pod's side: service name and address.
    pub local_endpoint: Endpoint,
    /// The other side: the caller for SERVER spans, the callee for CLIENT spans.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_endpoint: Option<Endpoint>,
    /// B3 debug: asks the collector to keep the trace whatever its own sampling says.
    #[serde(skip_serializing_if = "is_false")]
    pub debug: bool,
    /// String tags (`http.method`, `http.status_code`, `error`, ...), sorted by key. [`Text`]
    /// keys and values: fixed names and short values do not allocate (see [`crate::text`]),
    /// in one vector per span ([`Tags`]).
    #[serde(skip_serializing_if = "Tags::is_empty")]
    pub tags: Tags,
}

/// Room reserved per span in a batch's JSON (a proxy span with its dozen tags is about
/// 600–700 bytes): the buffer is allocated once per batch instead of growing by repeated
/// reallocation and copying as it fills.
const SPAN_JSON_BYTES: usize = 768;

/// Encodes a batch as the JSON array `POST /api/v2/spans` takes.
pub fn encode_zipkin_v2(spans: &[Span]) -> Vec<u8> {
    let mut out = Vec::with_capacity(spans.len().saturating_mul(SPAN_JSON_BYTES));
    // Serialising these plain structs (strings, integers, addresses) cannot fail; the
    // fallback only avoids an unwrap.
    match serde_json::to_writer(&mut out, spans) {
        Ok(()) => out,
        Err(_) => b"[]".to_vec(),
    }
}

/// The SERVER span the encoding tests of both formats start from, so that the Zipkin and OTLP
/// golden tests describe the same span.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::id::{SpanId, TraceId};

    /// service1's SERVER span for a request from 10.1.2.9, child of span 0020000000000001.
    pub(crate) fn server_span(name: &str, tags: &[(&str, &str)]) -> Span {
        Span {
            trace_id: TraceId::from_hex("463ac35c9f6413ad48485a3953bb6124").expect("id"),
            parent_id: SpanId::from_hex("0020000000000001"),
            id: SpanId::from_hex("a2fb4a1d1a96d312").expect("id"),
            kind: SpanKind::Server,
            name: name.into(),
            timestamp: 1_700_000_000_000_000,
            duration: 1234,
            local_endpoint: Endpoint::from_addr(
                Some("service1".into()),
                "10.1.2.3:8080".parse().expect("addr"),
                true,
            ),
            remote_endpoint: Some(Endpoint::from_addr(
                None,
                "10.1.2.9:43210".parse().expect("addr"),
                true,
            )),
            debug: false,
            tags: tags
                .iter()
                .map(|(k, v)| (Text::copy(k), Text::copy(v)))
                .collect(),
        }
    }

    /// A debug CLIENT root span from `service` at `local` to [fd00::2]:8000.
    pub(crate) fn client_root_span(
        name: &str,
        service: &str,
        local: &str,
        tags: &[(&str, &str)],
    ) -> Span {
        Span {
            trace_id: TraceId::from_hex("463ac35c9f6413ad").expect("id"),
            parent_id: None,
            id: SpanId::from_hex("00000000000000ff").expect("id"),
            kind: SpanKind::Client,
            name: name.into(),
            timestamp: 1,
            duration: 1,
            local_endpoint: Endpoint::from_addr(
                Some(Text::copy(service)),
                local.parse().expect("addr"),
                false,
            ),
            remote_endpoint: Some(Endpoint::from_addr(
                None,
                "[fd00::2]:8000".parse().expect("addr"),
                true,
            )),
            debug: true,
            tags: tags
                .iter()
                .map(|(k, v)| (Text::copy(k), Text::copy(v)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_span_json_is_exact() {
        let span = fixtures::server_span(
            "GET /trace/1",
            &[("http.method", "GET"), ("http.status_code", "200")],
        );
        let json = String::from_utf8(encode_zipkin_v2(&[span])).expect("utf8");
        assert_eq!(
            json,
            r#"[{"traceId":"463ac35c9f6413ad48485a3953bb6124","parentId":"0020000000000001","id":"a2fb4a1d1a96d312","kind":"SERVER","name":"GET /trace/1","timestamp":1700000000000000,"duration":1234,"localEndpoint":{"serviceName":"service1","ipv4":"10.1.2.3","port":8080},"remoteEndpoint":{"ipv4":"10.1.2.9","port":43210},"tags":{"http.method":"GET","http.status_code":"200"}}]"#
        );
    }

    #[test]
    fn client_root_span_json_is_exact() {
        let span = fixtures::client_root_span(
            "POST service2:8000/orders",
            "Shop",
            "[::ffff:10.0.0.1]:50000",
            &[],
        );
        let json = String::from_utf8(encode_zipkin_v2(&[span])).expect("utf8");
        assert_eq!(
            json,
            r#"[{"traceId":"463ac35c9f6413ad","id":"00000000000000ff","kind":"CLIENT","name":"POST service2:8000/orders","timestamp":1,"duration":1,"localEndpoint":{"serviceName":"Shop","ipv4":"10.0.0.1"},"remoteEndpoint":{"ipv6":"fd00::2","port":8000},"debug":true}]"#
        );
        assert_eq!(encode_zipkin_v2(&[]), b"[]");
    }
}

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
    pub name: Text,
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
///
/// Written by hand rather than by `serde_json` from the derived `Serialize`: the field names
/// are constants and the ids hex, so only the strings a span carries are scanned for
/// escapes, and nothing is checked for UTF-8 twice; serde's generic path cost about 9 k
/// instructions per span, a sixth of a proxied request. The bytes are the ones
/// `serde_json::to_vec` makes of the same spans (the derive stays, as the tests' oracle).
pub fn encode_zipkin_v2(spans: &[Span]) -> Vec<u8> {
    let mut out = Vec::with_capacity(spans.len().saturating_mul(SPAN_JSON_BYTES) + 2);
    out.push(b'[');
    for (i, span) in spans.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_span(&mut out, span);
    }
    out.push(b']');
    out
}

fn write_span(out: &mut Vec<u8>, s: &Span) {
    out.extend_from_slice(b"{\"traceId\":\"");
    out.extend_from_slice(s.trace_id.hex(&mut [0; 32]).as_bytes());
    if let Some(p) = s.parent_id {
        out.extend_from_slice(b"\",\"parentId\":\"");
        out.extend_from_slice(p.hex(&mut [0; 16]).as_bytes());
    }
    out.extend_from_slice(b"\",\"id\":\"");
    out.extend_from_slice(s.id.hex(&mut [0; 16]).as_bytes());
    out.extend_from_slice(match s.kind {
        SpanKind::Server => b"\",\"kind\":\"SERVER\",\"name\":",
        SpanKind::Client => b"\",\"kind\":\"CLIENT\",\"name\":",
    });
    json_str(out, s.name.as_bytes());
    out.extend_from_slice(b",\"timestamp\":");
    write_u64(out, s.timestamp);
    out.extend_from_slice(b",\"duration\":");
    write_u64(out, s.duration);
    out.extend_from_slice(b",\"localEndpoint\":");
    write_endpoint(out, &s.local_endpoint);
    if let Some(r) = &s.remote_endpoint {
        out.extend_from_slice(b",\"remoteEndpoint\":");
        write_endpoint(out, r);
    }
    if s.debug {
        out.extend_from_slice(b",\"debug\":true");
    }
    if !s.tags.is_empty() {
        out.extend_from_slice(b",\"tags\":{");
        for (i, (k, v)) in s.tags.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_str(out, k.as_bytes());
            out.push(b':');
            json_str(out, v.as_bytes());
        }
        out.push(b'}');
    }
    out.push(b'}');
}

fn write_endpoint(out: &mut Vec<u8>, e: &Endpoint) {
    // Each present field, the first without a comma.
    let mut sep: &[u8] = b"{";
    if let Some(name) = &e.service_name {
        out.extend_from_slice(sep);
        out.extend_from_slice(b"\"serviceName\":");
        json_str(out, name.as_bytes());
        sep = b",";
    }
    if let Some(ip) = e.ipv4 {
        out.extend_from_slice(sep);
        out.extend_from_slice(b"\"ipv4\":\"");
        for (i, octet) in ip.octets().into_iter().enumerate() {
            if i > 0 {
                out.push(b'.');
            }
            write_u64(out, u64::from(octet));
        }
        out.push(b'"');
        sep = b",";
    }
    if let Some(ip) = e.ipv6 {
        out.extend_from_slice(sep);
        out.extend_from_slice(b"\"ipv6\":\"");
        // Hex digits, colons and dots: nothing to escape. Writing to a Vec cannot fail.
        let _ = std::io::Write::write_fmt(out, format_args!("{ip}"));
        out.push(b'"');
        sep = b",";
    }
    if let Some(port) = e.port {
        out.extend_from_slice(sep);
        out.extend_from_slice(b"\"port\":");
        write_u64(out, u64::from(port));
        sep = b",";
    }
    if sep == b"{" {
        out.push(b'{');
    }
    out.push(b'}');
}

/// `n` in decimal.
fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        // A digit: below 10, so the cast keeps it whole.
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// `s` (UTF-8) as a JSON string, escaped as `serde_json` escapes: `"` and `\` with a
/// backslash, the control characters with their short escape or `\u00xx`; everything else,
/// DEL and non-ASCII included, as is.
fn json_str(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    // Almost no tag needs an escape: one pass without an early exit (which the compiler
    // turns into wide compares) decides, and the string is then copied whole.
    let plain = !s.iter().fold(false, |esc, &b| {
        esc | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        out.extend_from_slice(s);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => {
                out.extend_from_slice(&s[start..i]);
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&s[start..i]);
        out.extend_from_slice(short);
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
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
            name: Text::copy(name),
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
            name: Text::copy(name),
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
    fn hand_written_json_is_what_serde_json_writes() {
        // Every control character, quotes, backslashes, DEL, non-ASCII, empty strings.
        let nasty: String =
            (0u8..0x20).map(char::from).collect::<String>() + "\"\\/\u{7f}é日本語🙂 \u{2028}";
        let mut spans = vec![
            fixtures::server_span("GET /trace/1", &[("http.method", "GET")]),
            fixtures::server_span(&nasty, &[("", ""), (&nasty, &nasty), ("k", "\"")]),
            fixtures::client_root_span("", "Shop", "[::ffff:10.0.0.1]:50000", &[]),
            fixtures::client_root_span("x", "s", "[fd00::1]:1", &[("a", "b")]),
        ];
        let mut bare = fixtures::server_span("n", &[]);
        bare.local_endpoint = Endpoint::default();
        bare.remote_endpoint = Some(Endpoint::from_addr(
            Some(Text::copy(&nasty)),
            "0.0.0.0:0".parse().expect("addr"),
            true,
        ));
        bare.timestamp = u64::MAX;
        bare.duration = 0;
        spans.push(bare);
        let mut v6 = fixtures::server_span("v6", &[]);
        v6.local_endpoint =
            Endpoint::from_addr(None, "[2001:db8::ff:1]:65535".parse().expect("addr"), true);
        v6.remote_endpoint = None;
        v6.debug = true;
        spans.push(v6);
        for batch in [&spans[..], &spans[..0], &spans[1..2], &spans[4..]] {
            assert_eq!(
                String::from_utf8(encode_zipkin_v2(batch)).expect("utf8"),
                serde_json::to_string(batch).expect("serde"),
            );
        }
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

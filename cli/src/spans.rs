//! Spans as the collectors' query APIs return them, and a trace as an indented tree.
//!
//! One span model for both query APIs: Zipkin v2 JSON decodes straight into [`Span`]; Jaeger's
//! `/api/traces` JSON maps onto it with [`jaeger_spans`] (OTLP resource attributes become
//! [`Span::process_tags`]). [`render_tree`] prints a trace the way `sidetrace trace` and
//! `make demo` show it. Pure, so the command line, the demo and the tests share it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// One Zipkin v2 endpoint.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Service name (Zipkin lower-cases it).
    #[serde(default)]
    pub service_name: Option<String>,
    /// IPv4 address.
    #[serde(default)]
    pub ipv4: Option<String>,
    /// Port.
    #[serde(default)]
    pub port: Option<u16>,
}

/// One span as the collector returns it (Zipkin v2 JSON).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    /// Trace id (16 or 32 hex digits).
    pub trace_id: String,
    /// Span id.
    pub id: String,
    /// Parent span id; none for a root.
    #[serde(default)]
    pub parent_id: Option<String>,
    /// Operation name.
    #[serde(default)]
    pub name: Option<String>,
    /// SERVER, CLIENT, ...
    #[serde(default)]
    pub kind: Option<String>,
    /// Start, µs since the epoch.
    #[serde(default)]
    pub timestamp: Option<u64>,
    /// Duration in µs.
    #[serde(default)]
    pub duration: Option<u64>,
    /// Who recorded the span.
    #[serde(default)]
    pub local_endpoint: Option<Endpoint>,
    /// The other side.
    #[serde(default)]
    pub remote_endpoint: Option<Endpoint>,
    /// Tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Whether the span shares its id with the caller's (Envoy's shared_span_context).
    #[serde(default)]
    pub shared: Option<bool>,
    /// Jaeger's process tags: the OTLP resource attributes (`k8s.pod.name`, ...) of spans that
    /// arrived over OTLP. Empty for Zipkin's JSON.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub process_tags: BTreeMap<String, String>,
}

/// Zipkin tag names and the OpenTelemetry semantic-convention attributes that carry the same
/// value in a span that arrived over OTLP.
const SEMCONV_EQUIVALENTS: &[(&str, &str)] = &[
    ("http.method", "http.request.method"),
    ("http.status_code", "http.response.status_code"),
    ("http.path", "url.path"),
    ("user_agent", "user_agent.original"),
];

impl Span {
    /// The recording service's name, or "".
    pub fn service(&self) -> &str {
        self.local_endpoint
            .as_ref()
            .and_then(|e| e.service_name.as_deref())
            .unwrap_or("")
    }

    /// The kind, or "".
    pub fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("")
    }

    /// The name, or "".
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// A tag's value by its Zipkin name; for a span that arrived over OTLP, the semantic-
    /// convention attribute with the same meaning (`http.method` reads
    /// `http.request.method`), so one assertion holds for both encodings.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str).or_else(|| {
            let (_, otel) = SEMCONV_EQUIVALENTS.iter().find(|(z, _)| *z == key)?;
            self.tags.get(*otel).map(String::as_str)
        })
    }
}

/// `850µs`, `12.34ms`, `1.50s`.
pub fn format_duration(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1_000.0)
    } else {
        format!("{:.2}s", us as f64 / 1_000_000.0)
    }
}

/// The spans of one trace as an indented tree: roots (no parent, or a parent not in the set)
/// first, children under their parent, siblings by start time.
pub fn render_tree(spans: &[Span]) -> String {
    let ids: HashSet<&str> = spans.iter().map(|s| s.id.as_str()).collect();
    let mut children: HashMap<Option<&str>, Vec<&Span>> = HashMap::new();
    for s in spans {
        let parent = s.parent_id.as_deref().filter(|p| ids.contains(p));
        children.entry(parent).or_default().push(s);
    }
    for v in children.values_mut() {
        v.sort_by_key(|s| (s.timestamp.unwrap_or(0), s.kind() == "SERVER"));
    }
    let mut out = String::new();
    if let Some(first) = spans.first() {
        let _ = writeln!(out, "trace {} ({} spans)", first.trace_id, spans.len());
    }
    // Iterative depth-first walk; `seen` guards against a malformed parent cycle.
    let mut seen = HashSet::new();
    let mut stack: Vec<(&Span, usize)> = children
        .get(&None)
        .map(|v| v.iter().rev().map(|s| (*s, 0)).collect())
        .unwrap_or_default();
    while let Some((s, depth)) = stack.pop() {
        if !seen.insert((s.id.as_str(), s.kind())) {
            continue;
        }
        let _ = writeln!(
            out,
            "{:indent$}{} {} {:<7} {} [{}]{}",
            "",
            if depth == 0 { "●" } else { "└─" },
            s.service(),
            s.kind(),
            s.name(),
            s.duration.map_or_else(|| "?".to_owned(), format_duration),
            s.tag("http.status_code")
                .map(|c| format!(" status={c}"))
                .unwrap_or_default(),
            indent = depth * 3
        );
        if let Some(kids) = children.get(&Some(s.id.as_str())) {
            for k in kids.iter().rev() {
                // A shared span (same id as its parent) would point at itself: skip it here.
                if k.id != s.id {
                    stack.push((*k, depth + 1));
                }
            }
        }
    }
    out
}

/// Jaeger's `/api/traces` JSON (`{"data":[{"spans":[...],"processes":{...}}]}`) as Zipkin-shaped
/// spans: CHILD_OF references become parents, the `span.kind` tag the kind, the process's
/// service name the local endpoint, µs stay µs.
pub fn jaeger_spans(v: &serde_json::Value) -> Vec<Span> {
    let mut out = Vec::new();
    let Some(traces) = v.get("data").and_then(|d| d.as_array()) else {
        return out;
    };
    for t in traces {
        let processes = t.get("processes");
        for s in t
            .get("spans")
            .and_then(|s| s.as_array())
            .into_iter()
            .flatten()
        {
            let str_of = |k: &str| s.get(k).and_then(|x| x.as_str()).map(str::to_owned);
            let mut tags = key_values(s.get("tags"));
            let parent = s
                .get("references")
                .and_then(|r| r.as_array())
                .into_iter()
                .flatten()
                .find(|r| r.get("refType").and_then(|t| t.as_str()) == Some("CHILD_OF"))
                .and_then(|r| r.get("spanID").and_then(|x| x.as_str()).map(str::to_owned));
            let process = s
                .get("processID")
                .and_then(|p| p.as_str())
                .and_then(|p| processes?.get(p));
            let service = process
                .and_then(|p| p.get("serviceName"))
                .and_then(|n| n.as_str())
                .map(str::to_owned);
            let process_tags = key_values(process.and_then(|p| p.get("tags")));
            let kind = tags.remove("span.kind").map(|k| k.to_ascii_uppercase());
            out.push(Span {
                trace_id: str_of("traceID").unwrap_or_default(),
                id: str_of("spanID").unwrap_or_default(),
                parent_id: parent,
                name: str_of("operationName"),
                kind,
                timestamp: s.get("startTime").and_then(|x| x.as_u64()),
                duration: s.get("duration").and_then(|x| x.as_u64()),
                local_endpoint: Some(Endpoint {
                    service_name: service,
                    ..Endpoint::default()
                }),
                remote_endpoint: None,
                tags,
                shared: None,
                process_tags,
            });
        }
    }
    out
}

/// Jaeger's `[{"key": .., "type": .., "value": ..}]` as a map; non-string values in their
/// JSON text (`200`, `true`).
fn key_values(v: Option<&serde_json::Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for tag in v.and_then(|t| t.as_array()).into_iter().flatten() {
        let Some(key) = tag.get("key").and_then(|k| k.as_str()) else {
            continue;
        };
        let value = match tag.get("value") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        out.insert(key.to_owned(), value);
    }
    out
}

/// Jaeger's `/api/traces?service=..` JSON as one span list per trace.
pub fn jaeger_traces(v: &serde_json::Value) -> Vec<Vec<Span>> {
    v.get("data")
        .and_then(|d| d.as_array())
        .into_iter()
        .flatten()
        .map(|t| jaeger_spans(&serde_json::json!({"data": [t]})))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: Option<&str>, svc: &str, kind: &str, name: &str, ts: u64) -> Span {
        Span {
            trace_id: "t1".into(),
            id: id.into(),
            parent_id: parent.map(Into::into),
            name: Some(name.into()),
            kind: Some(kind.into()),
            timestamp: Some(ts),
            duration: Some(1500),
            local_endpoint: Some(Endpoint {
                service_name: Some(svc.into()),
                ..Endpoint::default()
            }),
            ..Span::default()
        }
    }

    #[test]
    fn durations_pick_a_readable_unit() {
        assert_eq!(format_duration(850), "850µs");
        assert_eq!(format_duration(12_345), "12.35ms");
        assert_eq!(format_duration(1_500_000), "1.50s");
    }

    #[test]
    fn tree_nests_children_under_parents_in_start_order() {
        let spans = vec![
            span("c", Some("b"), "service1", "SERVER", "get /trace/1", 3),
            span("a", None, "front-proxy", "SERVER", "get /trace/1", 1),
            span(
                "b",
                Some("a"),
                "front-proxy",
                "CLIENT",
                "routeToService1",
                2,
            ),
            span("d", Some("c"), "service1", "CLIENT", "checkStock", 4),
        ];
        let t = render_tree(&spans);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "trace t1 (4 spans)");
        assert!(lines[1].starts_with("● front-proxy SERVER"), "{t}");
        assert!(
            lines[2].starts_with("   └─ front-proxy CLIENT  routeToService1 [1.50ms]"),
            "{t}"
        );
        assert!(lines[3].starts_with("      └─ service1 SERVER"), "{t}");
        assert!(
            lines[4].starts_with("         └─ service1 CLIENT  checkStock"),
            "{t}"
        );
    }

    #[test]
    fn orphans_are_roots_and_cycles_terminate() {
        let spans = vec![
            span("x", Some("missing"), "s", "SERVER", "a", 1),
            span("y", Some("z"), "s", "SERVER", "b", 2),
            span("z", Some("y"), "s", "SERVER", "c", 3),
        ];
        let t = render_tree(&spans);
        assert!(t.contains("● s SERVER  a"), "{t}");
    }

    #[test]
    fn zipkin_json_decodes() {
        let j = r#"[{"traceId":"463ac35c9f6413ad48485a3953bb6124","parentId":"a2fb4a1d1a96d312",
            "id":"b7ad6b7169203331","kind":"CLIENT","name":"checkstock","timestamp":1700000000000000,
            "duration":2500,"localEndpoint":{"serviceName":"service1","ipv4":"10.250.1.12"},
            "tags":{"http.status_code":"200"}}]"#;
        let spans: Vec<Span> = serde_json::from_str(j).unwrap();
        assert_eq!(spans[0].service(), "service1");
        assert_eq!(spans[0].tag("http.status_code"), Some("200"));
        assert_eq!(spans[0].parent_id.as_deref(), Some("a2fb4a1d1a96d312"));
    }

    #[test]
    fn jaeger_json_maps_onto_spans() {
        let v = serde_json::json!({"data": [{"traceID": "t", "spans": [
            {"traceID": "t", "spanID": "b", "operationName": "checkStock",
             "references": [{"refType": "CHILD_OF", "traceID": "t", "spanID": "a"}],
             "startTime": 5, "duration": 7, "processID": "p1",
             "tags": [{"key": "span.kind", "type": "string", "value": "client"},
                      {"key": "http.status_code", "type": "int64", "value": 200}]}],
            "processes": {"p1": {"serviceName": "service1", "tags": [
                {"key": "k8s.pod.name", "type": "string", "value": "service1-0"}]}}}]});
        let spans = jaeger_spans(&v);
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].kind(), "CLIENT");
        assert_eq!(spans[0].service(), "service1");
        assert_eq!(spans[0].parent_id.as_deref(), Some("a"));
        assert_eq!(spans[0].tag("http.status_code"), Some("200"));
        assert_eq!(spans[0].process_tags["k8s.pod.name"], "service1-0");
    }

    #[test]
    fn zipkin_tag_names_read_otlp_attributes() {
        let mut s = span("a", None, "s", "SERVER", "n", 1);
        s.tags.insert("http.request.method".into(), "GET".into());
        s.tags
            .insert("http.response.status_code".into(), "200".into());
        assert_eq!(s.tag("http.method"), Some("GET"));
        assert_eq!(s.tag("http.status_code"), Some("200"));
        s.tags.insert("http.method".into(), "POST".into());
        assert_eq!(s.tag("http.method"), Some("POST"), "the Zipkin tag wins");
        assert_eq!(s.tag("guid:x-request-id"), None);
    }
}

//! The real trace collector the data-plane tests and the demo send spans to, and its query API.
//!
//! - Zipkin: the server jar `e2e/peers.sh zipkin` caches (`bin/zipkin.jar`), run with
//!   `java -jar`, in-memory storage, collector and query on one port (9411):
//!   `POST /api/v2/spans`, `GET /api/v2/trace/{id}`, `GET /api/v2/traces`.
//! - Jaeger (v2, `bin/jaeger` from `e2e/peers.sh jaeger`, when built): all-in-one with memory
//!   storage; the proxies post either to its OTLP/HTTP receiver (`POST /v1/traces` on 4318) or
//!   to its Zipkin receiver (the same `POST /api/v2/spans` on 9411), per [`Kind::Jaeger`]'s
//!   protocol; its query API (`GET /api/traces/{id}`, UI) listens on 16686. Its JSON is mapped
//!   onto the same [`Span`], OTLP resource attributes as [`Span::process_tags`].
//!
//! The collector runs in a network namespace of the topology and is queried from inside it
//! (see [`crate::netns::client`]); it can be stopped and started again at the same address, for
//! the tests that prove the proxies survive a collector outage.
//!
//! [`render_tree`] prints a trace as an indented tree with durations — pure, unit-tested, and
//! shared by the demo and by test failure messages.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use sidetrace_contract::CollectorProtocol;

use crate::netns::{client, ns};

/// Zipkin's collector and query port (also Jaeger's Zipkin receiver).
pub const ZIPKIN_PORT: u16 = 9411;
/// Jaeger's query API and UI port.
pub const JAEGER_QUERY_PORT: u16 = 16686;
/// Jaeger's OTLP/HTTP receiver port.
pub const OTLP_HTTP_PORT: u16 = 4318;

/// How long a cold JVM (or Jaeger) may take to answer, on a busy 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Which collector runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `java -jar zipkin.jar`.
    Zipkin {
        /// The java launcher.
        java: PathBuf,
        /// The server jar.
        jar: PathBuf,
    },
    /// Jaeger v2 all-in-one.
    Jaeger {
        /// The `jaeger` binary.
        bin: PathBuf,
        /// Which of its receivers the proxies post to.
        protocol: CollectorProtocol,
    },
}

impl Kind {
    /// The protocol the proxies speak to it (the Zipkin server speaks only Zipkin v2).
    pub fn protocol(&self) -> CollectorProtocol {
        match self {
            Self::Zipkin { .. } => CollectorProtocol::Zipkin,
            Self::Jaeger { protocol, .. } => *protocol,
        }
    }

    /// The port the proxies post spans to.
    pub fn receiver_port(&self) -> u16 {
        match self.protocol() {
            CollectorProtocol::OtlpHttp => OTLP_HTTP_PORT,
            CollectorProtocol::Zipkin => ZIPKIN_PORT,
        }
    }

    /// Short name for messages.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Zipkin { .. } => "zipkin",
            Self::Jaeger { .. } => "jaeger",
        }
    }

    /// The port the query API and UI listen on.
    pub fn query_port(&self) -> u16 {
        match self {
            Self::Zipkin { .. } => ZIPKIN_PORT,
            Self::Jaeger { .. } => JAEGER_QUERY_PORT,
        }
    }
}

/// One Zipkin v2 endpoint.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
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
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
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
    #[serde(skip)]
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

/// A running (or stopped) collector inside a namespace.
#[derive(Debug)]
pub struct Collector {
    kind: Kind,
    ns: String,
    ip: std::net::Ipv4Addr,
    log: PathBuf,
    child: Option<Child>,
}

impl Collector {
    /// Start `kind` inside namespace `ns` on address `ip`, logging to `log`, and wait until
    /// its query API answers.
    pub async fn start(kind: Kind, ns: &str, ip: std::net::Ipv4Addr, log: &Path) -> Result<Self> {
        let mut me = Self {
            kind,
            ns: ns.to_owned(),
            ip,
            log: log.to_owned(),
            child: None,
        };
        me.resume().await?;
        Ok(me)
    }

    /// What runs.
    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    /// The namespace it runs in.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// The URL proxies post spans to (the path names the protocol).
    pub fn spans_url(&self) -> String {
        match self.kind.protocol() {
            CollectorProtocol::OtlpHttp => format!("http://{}:{OTLP_HTTP_PORT}/v1/traces", self.ip),
            CollectorProtocol::Zipkin => format!("http://{}:{ZIPKIN_PORT}/api/v2/spans", self.ip),
        }
    }

    /// Where the query API / UI listens, inside the namespace.
    pub fn query_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.kind.query_port()))
    }

    /// Kill the collector (the address stops answering: connections are refused).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again (after [`Self::stop`]) and wait until it answers. Storage is in memory,
    /// so it comes back empty.
    pub async fn resume(&mut self) -> Result<()> {
        self.stop();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut cmd = match &self.kind {
            Kind::Zipkin { java, jar } => {
                let mut c = Command::new(java);
                // Small heap and C1 only: the jar starts in seconds and leaves the cores to
                // the code under test.
                c.args([
                    "-Xms32m",
                    "-Xmx256m",
                    "-XX:+UseSerialGC",
                    "-XX:TieredStopAtLevel=1",
                    "-jar",
                ])
                .arg(jar)
                .env("QUERY_PORT", ZIPKIN_PORT.to_string())
                .env("STORAGE_TYPE", "mem");
                c
            }
            Kind::Jaeger { bin, .. } => {
                let mut c = Command::new(bin);
                // The default all-in-one config binds to localhost unless told otherwise.
                c.env("JAEGER_LISTEN_HOST", "0.0.0.0");
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(ns::spawn_in(&self.ns, cmd)?);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let (addr, path) = match self.kind {
            Kind::Zipkin { .. } => (self.query_addr(), "/health"),
            Kind::Jaeger { .. } => (self.query_addr(), "/api/services"),
        };
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "{} exited ({status}) while starting; log {}:\n{}",
                    self.kind.label(),
                    self.log.display(),
                    tail(&self.log, 30)
                );
            }
            if let Ok(r) = client::get(&self.ns, addr, path, &[]).await
                && r.status.is_success()
            {
                // Jaeger's query API can be up before its receivers; probe the one in use.
                let receiver = SocketAddr::from((self.ip, self.kind.receiver_port()));
                if ns::connect_in(&self.ns, receiver, Duration::from_secs(2))
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer {path} within {START_TIMEOUT:?}; log {}:\n{}",
                    self.kind.label(),
                    self.log.display(),
                    tail(&self.log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn query(&self, path: &str) -> Result<Option<serde_json::Value>> {
        let r = client::get(&self.ns, self.query_addr(), path, &[]).await?;
        if r.status == ::http::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !r.status.is_success() {
            bail!("{} {path}: {} {}", self.kind.label(), r.status, r.body);
        }
        Ok(Some(serde_json::from_str(&r.body).with_context(|| {
            format!("{} {path}: not JSON: {}", self.kind.label(), r.body)
        })?))
    }

    /// The spans of trace `id` (empty when the collector has none).
    pub async fn trace(&self, id: &str) -> Result<Vec<Span>> {
        match self.kind {
            Kind::Zipkin { .. } => {
                let v = self.query(&format!("/api/v2/trace/{id}")).await?;
                Ok(match v {
                    Some(v) => serde_json::from_value(v).context("decoding Zipkin spans")?,
                    None => Vec::new(),
                })
            }
            Kind::Jaeger { .. } => {
                let v = self.query(&format!("/api/traces/{id}")).await?;
                Ok(v.map(|v| jaeger_spans(&v)).unwrap_or_default())
            }
        }
    }

    /// Recent traces that involve `service`, newest first.
    pub async fn traces(&self, service: &str, limit: usize) -> Result<Vec<Vec<Span>>> {
        match self.kind {
            Kind::Zipkin { .. } => {
                let v = self
                    .query(&format!(
                        "/api/v2/traces?serviceName={service}&limit={limit}&lookback=86400000"
                    ))
                    .await?;
                Ok(match v {
                    Some(v) => serde_json::from_value(v).context("decoding Zipkin traces")?,
                    None => Vec::new(),
                })
            }
            Kind::Jaeger { .. } => {
                let v = self
                    .query(&format!(
                        "/api/traces?service={service}&limit={limit}&lookback=1h"
                    ))
                    .await?;
                let Some(data) = v
                    .as_ref()
                    .and_then(|v| v.get("data"))
                    .and_then(|d| d.as_array())
                else {
                    return Ok(Vec::new());
                };
                Ok(data
                    .iter()
                    .map(|t| jaeger_spans(&serde_json::json!({"data": [t]})))
                    .collect())
            }
        }
    }

    /// Poll until trace `id` holds at least `n` spans, then return them.
    pub async fn wait_trace(&self, id: &str, n: usize, timeout: Duration) -> Result<Vec<Span>> {
        let deadline = Instant::now() + timeout;
        let mut last = Vec::new();
        loop {
            match self.trace(id).await {
                Ok(spans) if spans.len() >= n => return Ok(spans),
                Ok(spans) => last = spans,
                Err(e) => tracing::debug!(error = %e, "query failed; retrying"),
            }
            if Instant::now() > deadline {
                bail!(
                    "trace {id}: {} of {n} spans after {timeout:?}:\n{}",
                    last.len(),
                    render_tree(&last)
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
    }
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

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
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

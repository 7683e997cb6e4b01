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
//! The span model and [`render_tree`] (a trace as an indented tree with durations) live in
//! `sidetrace_cli::spans`, shared by `sidetrace trace`, the demo and test failure messages.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

pub use sidetrace_cli::spans::{
    Endpoint, Span, format_duration, jaeger_spans, jaeger_traces, render_tree,
};
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
    /// A Zipkin v2 receiver on [`ZIPKIN_PORT`] that only counts the spans it is sent
    /// (`GET /count`) and keeps none: for benchmarks, where a real collector's ingest work
    /// would compete with what is measured. Started as `program args`; it has no query API.
    CountingSink {
        /// The sink program.
        program: PathBuf,
        /// Its arguments (it must listen on the collector address's [`ZIPKIN_PORT`]).
        args: Vec<String>,
    },
}

impl Kind {
    /// The protocol the proxies speak to it (the Zipkin server speaks only Zipkin v2).
    pub fn protocol(&self) -> CollectorProtocol {
        match self {
            Self::Zipkin { .. } | Self::CountingSink { .. } => CollectorProtocol::Zipkin,
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
            Self::CountingSink { .. } => "counting sink",
        }
    }

    /// The port the query API and UI listen on.
    pub fn query_port(&self) -> u16 {
        match self {
            Self::Zipkin { .. } | Self::CountingSink { .. } => ZIPKIN_PORT,
            Self::Jaeger { .. } => JAEGER_QUERY_PORT,
        }
    }
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

    /// The running process's pid (`None` while stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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
            Kind::CountingSink { program, args } => {
                let mut c = Command::new(program);
                c.args(args);
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
            Kind::CountingSink { .. } => (self.query_addr(), "/count"),
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
            Kind::CountingSink { .. } => bail!("the counting sink keeps no traces"),
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
                Ok(v.map(|v| jaeger_traces(&v)).unwrap_or_default())
            }
            Kind::CountingSink { .. } => bail!("the counting sink keeps no traces"),
        }
    }

    /// Spans received so far ([`Kind::CountingSink`] only).
    pub async fn span_count(&self) -> Result<u64> {
        ensure!(
            matches!(self.kind, Kind::CountingSink { .. }),
            "only the counting sink counts spans"
        );
        let r = client::get(&self.ns, self.query_addr(), "/count", &[]).await?;
        ensure!(
            r.status.is_success(),
            "sink /count: {} {}",
            r.status,
            r.body
        );
        r.body
            .trim()
            .parse()
            .with_context(|| format!("sink /count: not a number: {}", r.body))
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

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

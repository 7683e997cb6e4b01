//! The load generator: open loop at a fixed rate, and closed loop for maximum throughput.
//!
//! Open loop: a dedicated pacer thread sleeps (1 µs timer slack, not the runtime's 1 ms
//! timer wheel) until each request's intended send time from [`stats::schedule`] and hands
//! that instant to the runtime, which sends the request on an idle keep-alive connection (or
//! opens one, as a real client would). Latency is measured from the intended send time, so a
//! stall in the path under test is charged to every request it delayed (corrected for
//! coordinated omission, like wrk2).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::{procs, stats};

/// A request template.
#[derive(Debug, Clone)]
pub struct Req {
    /// Method.
    pub method: http::Method,
    /// Path (origin form).
    pub path: String,
    /// Body.
    pub body: Bytes,
    /// Content type, when there is a body.
    pub content_type: Option<&'static str>,
}

impl Req {
    /// `GET path`.
    pub fn get(path: &str) -> Self {
        Self {
            method: http::Method::GET,
            path: path.to_owned(),
            body: Bytes::new(),
            content_type: None,
        }
    }
}

/// How to talk to the target.
#[derive(Clone)]
pub enum Proto {
    /// HTTP/1.1 keep-alive over plain TCP.
    H1,
    /// HTTP/1.1 keep-alive over TLS (server name "localhost").
    H1Tls(Arc<rustls::ClientConfig>),
    /// HTTP/2 prior knowledge over plain TCP, one connection, requests multiplexed.
    H2,
}

/// Opens the TCP connection to the target (default: a plain connect from this namespace).
pub type Connector = Arc<
    dyn Fn(SocketAddr) -> Pin<Box<dyn Future<Output = Result<TcpStream>> + Send>> + Send + Sync,
>;

/// A client with a pool of keep-alive connections (HTTP/1.1) or one h2 connection.
pub struct Client {
    connector: Option<Connector>,
    addr: SocketAddr,
    proto: Proto,
    idle: Mutex<Vec<http1::SendRequest<Full<Bytes>>>>,
    h2: Option<http2::SendRequest<Full<Bytes>>>,
    /// Connections opened so far.
    pub opened: AtomicUsize,
}

impl Client {
    /// Connects (h2) or pre-opens `warm` keep-alive connections (HTTP/1.1).
    pub async fn new(addr: SocketAddr, proto: Proto, warm: usize) -> Result<Arc<Self>> {
        Self::with_connector(None, addr, proto, warm).await
    }

    /// Like [`Client::new`], opening connections with `connector` (e.g. inside a netns).
    pub async fn with_connector(
        connector: Option<Connector>,
        addr: SocketAddr,
        proto: Proto,
        warm: usize,
    ) -> Result<Arc<Self>> {
        let h2 = match proto {
            Proto::H2 => {
                let tcp = match &connector {
                    Some(c) => c(addr).await?,
                    None => TcpStream::connect(addr).await?,
                };
                tcp.set_nodelay(true)?;
                let (sender, conn) =
                    http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
                tokio::spawn(conn);
                Some(sender)
            }
            _ => None,
        };
        let client = Arc::new(Self {
            connector,
            addr,
            proto,
            idle: Mutex::new(Vec::new()),
            h2,
            opened: AtomicUsize::new(0),
        });
        if client.h2.is_none() {
            for _ in 0..warm {
                let mut c = client.connect().await?;
                // Speak at once: a connection that stays silent past the proxy's protocol
                // detection timeout (server-speaks-first support) is relayed as opaque TCP,
                // so a pre-opened idle connection would never be parsed or traced.
                if matches!(client.proto, Proto::H1) {
                    let resp = c
                        .send_request(build(&Req::get("/small"), "/small")?)
                        .await?;
                    let _ = resp.into_body().collect().await;
                }
                client.put(c);
            }
        }
        Ok(client)
    }

    async fn connect(&self) -> Result<http1::SendRequest<Full<Bytes>>> {
        let tcp = match &self.connector {
            Some(c) => c(self.addr).await?,
            None => TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connect {}", self.addr))?,
        };
        tcp.set_nodelay(true)?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        let sender = match &self.proto {
            Proto::H1Tls(config) => {
                let name = rustls::pki_types::ServerName::try_from("localhost")?;
                let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(name, tcp)
                    .await?;
                let (sender, conn) = http1::handshake(TokioIo::new(tls)).await?;
                tokio::spawn(conn);
                sender
            }
            _ => {
                let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(conn);
                sender
            }
        };
        Ok(sender)
    }

    fn put(&self, c: http1::SendRequest<Full<Bytes>>) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(c);
        }
    }

    fn take(&self) -> Option<http1::SendRequest<Full<Bytes>>> {
        self.idle.lock().ok()?.pop()
    }

    /// One request, body read to the end and returned; errors on a non-2xx status.
    pub async fn send(&self, req: &Req) -> Result<Bytes> {
        if let Some(h2) = &self.h2 {
            let uri = format!("http://{}{}", self.addr, req.path);
            let resp = h2.clone().send_request(build(req, &uri)?).await?;
            return finish(resp).await;
        }
        let mut conn = loop {
            match self.take() {
                Some(mut c) => {
                    if c.ready().await.is_ok() {
                        break c;
                    }
                }
                None => break self.connect().await?,
            }
        };
        let resp = conn.send_request(build(req, &req.path)?).await?;
        let body = finish(resp).await?;
        self.put(conn);
        Ok(body)
    }
}

fn build(req: &Req, uri: &str) -> Result<hyper::Request<Full<Bytes>>> {
    let mut b = hyper::Request::builder()
        .method(req.method.clone())
        .uri(uri);
    if !uri.starts_with("http") {
        b = b.header(http::header::HOST, "localhost");
    }
    if let Some(ct) = req.content_type {
        b = b.header(http::header::CONTENT_TYPE, ct);
    }
    Ok(b.body(Full::new(req.body.clone()))?)
}

async fn finish(resp: hyper::Response<hyper::body::Incoming>) -> Result<Bytes> {
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("status {status}");
    }
    Ok(body)
}

/// Outcome of one run.
#[derive(Debug, Default)]
pub struct Run {
    /// Latencies (ns from intended send time) of the successful requests.
    pub lat: Vec<u64>,
    /// Failed or timed-out requests.
    pub errors: u64,
    /// Requests completed (successful).
    pub done: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// Open loop: `rate` requests/s for `duration`, latency from each intended send time.
pub async fn open_loop(client: &Arc<Client>, req: &Req, rate: f64, duration: Duration) -> Run {
    let offsets = stats::schedule(rate, duration);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let start = Instant::now() + Duration::from_millis(20);
    let pacer = std::thread::spawn(move || {
        procs::tight_timer_slack();
        for off in offsets {
            let due = start + off;
            procs::sleep_until(due);
            if tx.send(due).is_err() {
                break;
            }
        }
    });
    let results: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let outstanding = Arc::new(AtomicUsize::new(0));
    let req = Arc::new(req.clone());
    while let Some(due) = rx.recv().await {
        let (client, req) = (Arc::clone(client), Arc::clone(&req));
        let (results, errors, outstanding) = (
            Arc::clone(&results),
            Arc::clone(&errors),
            Arc::clone(&outstanding),
        );
        outstanding.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(10), client.send(&req)).await;
            let took = due.elapsed().as_nanos() as u64;
            match r {
                Ok(Ok(_)) => {
                    if let Ok(mut v) = results.lock() {
                        v.push(took);
                    }
                }
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            outstanding.fetch_sub(1, Ordering::SeqCst);
        });
    }
    let _ = pacer.join();
    let drain = Instant::now();
    while outstanding.load(Ordering::SeqCst) > 0 && drain.elapsed() < Duration::from_secs(11) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    let lat = results.lock().map(|v| v.clone()).unwrap_or_default();
    Run {
        done: lat.len() as u64,
        lat,
        errors: errors.load(Ordering::Relaxed) + outstanding.load(Ordering::SeqCst) as u64,
        elapsed,
    }
}

/// Closed loop: `concurrency` workers send back to back for `duration`.
pub async fn closed_loop(
    client: &Arc<Client>,
    req: &Req,
    concurrency: usize,
    duration: Duration,
) -> Run {
    let start = Instant::now();
    let deadline = start + duration;
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, req) = (Arc::clone(client), req.clone());
        let (done, errors) = (Arc::clone(&done), Arc::clone(&errors));
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_secs(10), client.send(&req)).await {
                    Ok(Ok(_)) => done.fetch_add(1, Ordering::Relaxed),
                    _ => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Run {
        lat: Vec::new(),
        done: done.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    }
}

/// Opens `n` keep-alive connections to `addr`, sends one GET on each and keeps them open
/// (returned). Stops early at the first connect error and returns what it has.
pub async fn idle_connections(addr: SocketAddr, n: usize) -> (Vec<TcpStream>, Option<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut kept = Vec::with_capacity(n);
    let batch = 200;
    let mut i = 0;
    while i < n {
        let mut set = tokio::task::JoinSet::new();
        for _ in i..(i + batch).min(n) {
            set.spawn(async move {
                let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                s.write_all(b"GET /small HTTP/1.1\r\nhost: localhost\r\n\r\n")
                    .await
                    .map_err(|e| e.to_string())?;
                let mut buf = Vec::with_capacity(512);
                let mut chunk = [0u8; 1024];
                loop {
                    let k = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
                    if k == 0 {
                        return Err("closed".to_owned());
                    }
                    buf.extend_from_slice(&chunk[..k]);
                    if stats::http1_response_len(&buf).is_some_and(|len| buf.len() >= len) {
                        return Ok(s);
                    }
                }
            });
        }
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(s)) => kept.push(s),
                Ok(Err(e)) => return (kept, Some(e)),
                Err(e) => return (kept, Some(e.to_string())),
            }
        }
        i += batch;
    }
    (kept, None)
}

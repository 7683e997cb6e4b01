//! Harness for component tests: the real `sidetrace-proxy` binary in explicit mode on
//! loopback, real hyper servers as the app, a small collector that records POSTed spans.
// Each test binary uses a different subset of the harness.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// Upper bound for anything a test waits on; never a timing assertion, only a hang guard.
pub const WAIT: Duration = Duration::from_secs(20);

pub type AppBody = UnsyncBoxBody<Bytes, Infallible>;

pub fn body(b: impl Into<Bytes>) -> AppBody {
    Full::new(b.into()).boxed_unsync()
}

/// Binds 127.0.0.1:0 to learn a free port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A request as the app saw it on the wire.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub conn: usize,
}

/// The app: an HTTP/1.1 or HTTP/2 (h2c) server recording every request.
pub struct App {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub conns: Arc<AtomicUsize>,
    /// Notified when a `/slow` request arrives.
    pub slow_arrived: Arc<tokio::sync::Notify>,
    /// A `/slow` request answers once this is notified.
    pub slow_release: Arc<tokio::sync::Notify>,
}

impl App {
    pub async fn http1() -> Self {
        Self::start(false).await
    }

    pub async fn h2() -> Self {
        Self::start(true).await
    }

    async fn start(h2: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let slow_arrived = Arc::new(tokio::sync::Notify::new());
        let slow_release = Arc::new(tokio::sync::Notify::new());
        let app = Self {
            addr,
            seen: Arc::clone(&seen),
            conns: Arc::clone(&conns),
            slow_arrived: Arc::clone(&slow_arrived),
            slow_release: Arc::clone(&slow_release),
        };
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let conn = conns.fetch_add(1, Ordering::SeqCst) + 1;
                let seen = Arc::clone(&seen);
                let slow = (Arc::clone(&slow_arrived), Arc::clone(&slow_release));
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let seen = Arc::clone(&seen);
                        let slow = slow.clone();
                        async move { Ok::<_, Infallible>(app_handler(req, conn, seen, slow).await) }
                    });
                    let io = TokioIo::new(stream);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .with_upgrades()
                            .await;
                    }
                });
            }
        });
        app
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn app_handler(
    mut req: Request<Incoming>,
    conn: usize,
    seen: Arc<Mutex<Vec<Seen>>>,
    (slow_arrived, slow_release): (Arc<tokio::sync::Notify>, Arc<tokio::sync::Notify>),
) -> Response<AppBody> {
    seen.lock().expect("lock").push(Seen {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        version: req.version(),
        headers: req.headers().clone(),
        conn,
    });
    let path = req.uri().path().to_owned();
    if req.method() == http::Method::CONNECT {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(echo_upgraded(on));
        return Response::new(body(Bytes::new()));
    }
    if path == "/ws" && req.headers().contains_key("upgrade") {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(echo_upgraded(on));
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .body(body(Bytes::new()))
            .expect("response");
    }
    if path == "/slow" {
        slow_arrived.notify_one();
        let _ = tokio::time::timeout(WAIT, slow_release.notified()).await;
        return Response::new(body("slow done"));
    }
    if path.starts_with("/grpc.") {
        let status = req
            .headers()
            .get("x-want-grpc-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("0")
            .to_owned();
        let _ = req.into_body().collect().await;
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", status.parse().expect("value"));
        trailers.insert("grpc-message", "from-app".parse().expect("value"));
        let b = Full::new(Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1]))
            .with_trailers(async move { Some(Ok::<_, Infallible>(trailers)) })
            .boxed_unsync();
        return Response::builder()
            .header("content-type", "application/grpc")
            .body(b)
            .expect("response");
    }
    let echo = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let text = if echo.is_empty() {
        Bytes::from_static(b"hello from app")
    } else {
        echo
    };
    Response::builder()
        .header("x-app", "1")
        .header("connection", "keep-alive")
        .body(body(text))
        .expect("response")
}

async fn echo_upgraded(on: hyper::upgrade::OnUpgrade) {
    if let Ok(up) = on.await {
        let mut io = TokioIo::new(up);
        let mut buf = [0u8; 1024];
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    }
}

/// A collector recording every span POSTed to /api/v2/spans.
pub struct Collector {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Collector {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind collector");
        let addr = listener.local_addr().expect("addr");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::clone(&spans);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let store = Arc::clone(&store);
                        async move {
                            let ok = req.method() == http::Method::POST
                                && req.uri().path() == "/api/v2/spans"
                                && req
                                    .headers()
                                    .get("content-type")
                                    .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
                            let bytes = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let status = match serde_json::from_slice::<Vec<Value>>(&bytes) {
                                Ok(batch) if ok => {
                                    store.lock().expect("lock").extend(batch);
                                    StatusCode::ACCEPTED
                                }
                                _ => StatusCode::BAD_REQUEST,
                            };
                            let mut r = Response::new(body(Bytes::new()));
                            *r.status_mut() = status;
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, spans }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}/api/v2/spans", self.addr)
    }

    pub fn spans(&self) -> Vec<Value> {
        self.spans.lock().expect("lock").clone()
    }

    /// Waits until at least `n` spans arrived.
    pub async fn wait_spans(&self, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let s = self.spans();
            if s.len() >= n {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {n} spans, have {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The proxy under test, killed on drop.
pub struct Proxy {
    pub child: Child,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

#[derive(Default)]
pub struct ProxyOpts {
    pub inbound_to: Option<SocketAddr>,
    pub outbound_to: Option<SocketAddr>,
    pub collector: Option<String>,
    pub config: Option<PathBuf>,
    pub extra: Vec<String>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sidetrace-proxy")
}

impl Proxy {
    pub async fn start(opts: ProxyOpts) -> Self {
        let (inp, outp, adm) = (free_port(), free_port(), free_port());
        let log = std::env::temp_dir().join(format!(
            "sidetrace-proxy-test-{}-{inp}.log",
            std::process::id()
        ));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(bin());
        cmd.args([
            "--listen-address",
            "127.0.0.1",
            "--admin-address",
            "127.0.0.1",
        ])
        .args(["--inbound-port", &inp.to_string()])
        .args(["--outbound-port", &outp.to_string()])
        .args(["--admin-port", &adm.to_string()])
        .args(["--service-name", "service1"])
        .args(["--reload-interval", "100ms"])
        .args(["--log-level", "debug"])
        .args([
            "--collector",
            opts.collector
                .as_deref()
                .unwrap_or("http://127.0.0.1:9/api/v2/spans"),
        ]);
        if let Some(a) = opts.inbound_to {
            cmd.args(["--inbound-forward-to", &a.to_string()]);
        }
        if let Some(a) = opts.outbound_to {
            cmd.args(["--outbound-forward-to", &a.to_string()]);
        }
        if let Some(p) = &opts.config {
            cmd.arg("--config").arg(p);
        }
        if !opts.extra.iter().any(|a| a == "--export-interval") {
            cmd.args(["--export-interval", "50ms"]);
        }
        cmd.args(&opts.extra)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let child = cmd.spawn().expect("spawn sidetrace-proxy");
        let mut proxy = Self {
            child,
            inbound: loopback(inp),
            outbound: loopback(outp),
            admin: loopback(adm),
            log,
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("proxy exited early ({status}):\n{}", proxy.log_text());
            }
            if let Ok((200, _)) = admin_get(proxy.admin, "/ready").await {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "proxy never became ready:\n{}",
                proxy.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxy
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn metrics(&self) -> String {
        admin_get(self.admin, "/metrics").await.expect("metrics").1
    }

    /// Value of one metric line (exact name with labels).
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// Polls the proxy's metrics until `done` holds; fails with the metrics and the proxy's
    /// log after [`WAIT`].
    pub async fn wait_metrics(&self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = self.metrics().await;
            if done(&text) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}:\n{text}\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the proxy says it exported exactly `n` spans and holds none: nothing queued,
    /// nothing dropped. Every span it recorded has then reached the collector, so a test can
    /// count what arrived without waiting for "nothing more".
    pub async fn wait_all_spans_exported(&self, n: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.metrics().await;
            let exported = metric_value(&text, "sidetrace_spans_exported_total");
            let queued = metric_value(&text, "sidetrace_span_queue_depth");
            let dropped: f64 = ["queue_full", "send_failed", "rejected", "invalid_endpoint"]
                .iter()
                .map(|r| {
                    metric_value(
                        &text,
                        &format!("sidetrace_spans_dropped_total{{reason=\"{r}\"}}"),
                    )
                })
                .sum();
            assert!(
                exported <= n as f64 && dropped == 0.0,
                "more spans than expected: exported {exported}, dropped {dropped}"
            );
            if exported == n as f64 && queued == 0.0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "exported {exported} of {n} spans, {queued} queued"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM (through kill(1), so the tests need no unsafe code).
    pub fn sigterm(&self) {
        let pid = self.child.id().expect("running");
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -TERM failed");
    }

    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("proxy did not exit in time")
            .expect("wait")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- proxy log ---\n{}", self.log_text());
        }
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("series {series} not in metrics:\n{text}"))
}

/// GET on the admin port over a fresh connection: (status, body).
pub async fn admin_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    admin_call(addr, "GET", path).await
}

pub async fn admin_call(addr: SocketAddr, method: &str, path: &str) -> Result<(u16, String)> {
    let mut c = H1::connect(addr).await?;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .body(Full::new(Bytes::new()))?;
    let (status, _, body) = c.send(req).await?;
    Ok((status.as_u16(), body))
}

/// An HTTP/1.1 client on one connection (so tests control keep-alive).
pub struct H1 {
    tx: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl H1 {
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Self { tx })
    }

    pub async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, HeaderMap, String)> {
        let fut = async {
            self.tx.ready().await?;
            let resp = self.tx.send_request(req).await?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, headers, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(WAIT, fut)
            .await
            .context("request timed out")?
    }

    pub async fn get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, HeaderMap, String)> {
        let mut b = Request::builder().uri(path).header("host", "service1:8000");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(Full::new(Bytes::new()))?).await
    }
}

/// One GET on a fresh connection.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, HeaderMap, String)> {
    H1::connect(addr).await?.get(path, headers).await
}

/// Writes raw bytes and reads until EOF (or the hang guard).
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], shutdown_write: bool) -> Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(bytes).await?;
    if shutdown_write {
        s.shutdown().await?;
    }
    let mut out = Vec::new();
    match tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await {
        Ok(Ok(_)) => Ok(out),
        // A reset after the proxy answered is fine: the bytes read so far are the answer.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(out),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => bail!("no EOF from the proxy"),
    }
}

/// Writes a config file into a fresh temp dir.
pub fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sidetrace-proxy-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

pub fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("header {name} missing in {h:?}"))
}

pub fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A TCP server on loopback that echoes every byte back (an opaque, non-HTTP upstream).
pub async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

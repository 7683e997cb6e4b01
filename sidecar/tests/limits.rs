//! Component tests of the proxy's timeouts and limits: the upstream response timeout (flag,
//! TracedService port and operation), the idle timeout of client connections, and the cap on
//! open connections. The real binary on loopback, as in component.rs. Nothing here asserts
//! how long anything took: a test holds a request longer than a timeout where it must prove
//! the timeout did not fire, and polls for what it expects within `WAIT` otherwise.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// The response timeout the tests configure: short, so a test that expects it to fire
/// finishes quickly; how quickly is never asserted.
const SHORT: &str = "300ms";
/// How long a test holds a request when it proves that a timeout of `SHORT` did *not* fire.
/// Only a lower bound matters (a wrongly applied timeout has fired by then, however slow the
/// machine), so this is a hold, not a timing assertion.
const LONGER_THAN_SHORT: Duration = Duration::from_millis(900);

type HoldBody = UnsyncBoxBody<Bytes, Infallible>;

/// An app whose `/hold…` (and gRPC `/grpc.Hold/…`) requests answer only once released, and
/// whose `/stream` sends its head and a first chunk at once and the rest once released.
struct HoldApp {
    addr: SocketAddr,
    arrived: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
}

impl HoldApp {
    async fn start(h2: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let arrived = Arc::new(AtomicUsize::new(0));
        let (release, _) = watch::channel(false);
        let app = Self {
            addr,
            arrived: Arc::clone(&arrived),
            release: release.clone(),
        };
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let arrived = Arc::clone(&arrived);
                let release = release.subscribe();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let arrived = Arc::clone(&arrived);
                        let release = release.clone();
                        async move { Ok::<_, Infallible>(hold_handler(req, arrived, release).await) }
                    });
                    let io = TokioIo::new(stream);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    }
                });
            }
        });
        app
    }

    /// Waits until `n` held requests have reached the app.
    async fn wait_arrivals(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.arrived.load(Ordering::SeqCst) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} held requests arrived",
                self.arrived.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Lets every held request (and every stream) finish.
    fn release(&self) {
        self.release.send_replace(true);
    }
}

async fn hold_handler(
    req: Request<Incoming>,
    arrived: Arc<AtomicUsize>,
    mut release: watch::Receiver<bool>,
) -> Response<HoldBody> {
    let path = req.uri().path().to_owned();
    if path == "/stream" {
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let _ = tx.send(Bytes::from_static(b"first;")).await;
            let _ = tokio::time::timeout(WAIT, release.wait_for(|r| *r)).await;
            let _ = tx.send(Bytes::from_static(b"second")).await;
        });
        return Response::new(ChanBody(rx).boxed_unsync());
    }
    if path.starts_with("/hold") || path.starts_with("/grpc.Hold/") {
        arrived.fetch_add(1, Ordering::SeqCst);
        let _ = tokio::time::timeout(WAIT, release.wait_for(|r| *r)).await;
    }
    if path.starts_with("/grpc.") {
        let _ = req.into_body().collect().await;
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().expect("value"));
        let b = Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))
            .with_trailers(async move { Some(Ok::<_, Infallible>(trailers)) })
            .boxed_unsync();
        return Response::builder()
            .header("content-type", "application/grpc")
            .body(b)
            .expect("response");
    }
    Response::new(Full::new(Bytes::from_static(b"held")).boxed_unsync())
}

/// A response body fed chunk by chunk from a channel.
struct ChanBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

fn tag<'a>(span: &'a Value, key: &str) -> &'a str {
    span["tags"][key]
        .as_str()
        .unwrap_or_else(|| panic!("tag {key} missing in {span}"))
}

fn flags(pairs: &[(&str, &str)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(k, v)| [(*k).to_owned(), (*v).to_owned()])
        .collect()
}

async fn config(proxy: &Proxy) -> Value {
    let (code, body) = admin_get(proxy.admin, "/config").await.expect("config");
    assert_eq!(code, 200);
    serde_json::from_str(&body).expect("json")
}

async fn post(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut c = H1::connect(addr).await.expect("connect");
    let req = Request::builder()
        .method("POST")
        .uri(path)
        .header("host", "service1:8000")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let (status, _, body) = c.send(req).await.expect("response");
    (status.as_u16(), body)
}

/// Polls the proxy's metrics until `series` reaches `want`.
async fn wait_metric(proxy: &Proxy, series: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let have = proxy.metric(series).await;
        if have == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} is {have}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads until the proxy closes the connection; a reset counts as closed.
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    match tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await {
        Ok(Ok(_)) => out,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => out,
        Ok(Err(e)) => panic!("read failed: {e}"),
        Err(_) => panic!("the proxy never closed the connection; read so far: {out:?}"),
    }
}

async fn h2_connect(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    let closed = tokio::spawn(async move {
        let _ = conn.await;
    });
    (tx, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_gets_504_and_an_error_span_with_a_response_timeout() {
    let app = HoldApp::start(false).await;
    let collector = Collector::start().await;
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        collector: Some(collector.endpoint()),
        extra: flags(&[("--response-timeout", SHORT)]),
        ..Default::default()
    })
    .await;
    assert_eq!(config(&proxy).await["responseTimeoutMs"], 300);
    let (status, headers, body) = get(proxy.inbound, "/hold/slow", &[]).await.expect("reply");
    assert_eq!(status, 504, "{body}");
    assert_eq!(body, "upstream request timeout\n");
    assert_eq!(header(&headers, "content-type"), "text/plain");
    assert_eq!(
        app.arrived.load(Ordering::SeqCst),
        1,
        "the app had the request"
    );
    app.release();

    let s = &collector.wait_spans(1).await[0];
    assert_eq!(s["kind"], "SERVER");
    assert_eq!(s["name"], "GET /hold/slow");
    assert_eq!(tag(s, "http.status_code"), "504");
    assert_eq!(tag(s, "error.type"), "timeout");
    assert!(tag(s, "error").contains("timeout"), "{s}");
    let m = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "sidetrace_proxy_upstream_timeouts_total{direction=\"inbound\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            "sidetrace_proxy_upstream_errors_total{direction=\"inbound\"}"
        ),
        0.0,
        "a timeout is not counted as an upstream error"
    );
    assert_eq!(
        metric_value(
            &m,
            "sidetrace_proxy_requests_total{direction=\"inbound\",operation=\"GET /hold/slow\",status_class=\"5xx\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_response_timeout_a_slow_upstream_is_waited_for() {
    let app = HoldApp::start(false).await;
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        ..Default::default()
    })
    .await;
    assert_eq!(
        config(&proxy).await["responseTimeoutMs"],
        0,
        "off by default"
    );
    let inbound = proxy.inbound;
    let slow = tokio::spawn(async move { get(inbound, "/hold/slow", &[]).await });
    app.wait_arrivals(1).await;
    tokio::time::sleep(LONGER_THAN_SHORT).await;
    app.release();
    let (status, _, body) = slow.await.expect("task").expect("reply");
    assert_eq!((status.as_u16(), body.as_str()), (200, "held"));
    assert_eq!(
        proxy
            .metric("sidetrace_proxy_upstream_timeouts_total{direction=\"inbound\"}")
            .await,
        0.0
    );
}

/// The timeout covers the response head only: a body may stream for longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_response_is_not_cut_by_the_response_timeout() {
    let app = HoldApp::start(false).await;
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        extra: flags(&[("--response-timeout", SHORT)]),
        ..Default::default()
    })
    .await;
    let stream = TcpStream::connect(proxy.inbound).await.expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("/stream")
        .header("host", "service1:8000")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let resp = tokio::time::timeout(WAIT, tx.send_request(req))
        .await
        .expect("head in time")
        .expect("head");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("first chunk in time")
        .expect("a frame")
        .expect("ok");
    assert_eq!(first.into_data().expect("data"), "first;");
    tokio::time::sleep(LONGER_THAN_SHORT).await;
    app.release();
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("rest in time")
        .expect("the body was not cut")
        .to_bytes();
    assert_eq!(rest, "second");
    assert_eq!(
        proxy
            .metric("sidetrace_proxy_upstream_timeouts_total{direction=\"inbound\"}")
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_request_that_times_out_gets_deadline_exceeded() {
    let app = HoldApp::start(true).await;
    let collector = Collector::start().await;
    let proxy = Proxy::start(ProxyOpts {
        outbound_to: Some(app.addr),
        collector: Some(collector.endpoint()),
        extra: flags(&[("--response-timeout", SHORT)]),
        ..Default::default()
    })
    .await;
    let (mut tx, _conn) = h2_connect(proxy.outbound).await;
    let req = Request::builder()
        .method("POST")
        .uri("http://payments:50051/grpc.Hold/Charge")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .expect("req");
    let resp = tokio::time::timeout(WAIT, tx.send_request(req))
        .await
        .expect("in time")
        .expect("response");
    app.release();
    assert_eq!(
        resp.status(),
        200,
        "gRPC reads grpc-status, not the HTTP status"
    );
    assert_eq!(header(resp.headers(), "grpc-status"), "4");
    assert_eq!(header(resp.headers(), "content-type"), "application/grpc");
    let s = &collector.wait_spans(1).await[0];
    assert_eq!(s["kind"], "CLIENT");
    assert_eq!(tag(s, "grpc.status_code"), "4");
    assert_eq!(tag(s, "error.type"), "timeout");
    assert_eq!(
        proxy
            .metric("sidetrace_proxy_upstream_timeouts_total{direction=\"outbound\"}")
            .await,
        1.0
    );
}

/// A TracedService sets timeouts per inbound port and per operation; the operation wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_and_operation_timeouts_from_the_config_file_apply() {
    let app = HoldApp::start(false).await;
    let collector = Collector::start().await;
    let path = write_config(
        "timeouts",
        &format!(
            "ports:\n- port: {}\n  protocol: http\n  timeout: {SHORT}\noperations:\n- name: longUpload\n  method: POST\n  pathPrefix: /hold\n  timeout: 0s\n",
            app.addr.port()
        ),
    );
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        collector: Some(collector.endpoint()),
        config: Some(path),
        ..Default::default()
    })
    .await;
    let file = config(&proxy).await;
    assert_eq!(file["responseTimeoutMs"], 0, "no flag: only the file");
    assert_eq!(file["file"]["ports"][0]["timeout"], SHORT, "{file}");

    // The port's timeout applies to a request no operation claims...
    let (status, _, _) = get(proxy.inbound, "/hold/report", &[])
        .await
        .expect("reply");
    assert_eq!(status, 504);
    // ...and the operation's `0s` beats it for the one it names.
    let inbound = proxy.inbound;
    let upload = tokio::spawn(async move { post(inbound, "/hold/upload").await });
    app.wait_arrivals(2).await;
    tokio::time::sleep(LONGER_THAN_SHORT).await;
    app.release();
    assert_eq!(upload.await.expect("task"), (200, "held".to_owned()));

    let spans = collector.wait_spans(2).await;
    let by_name = |name: &str| {
        spans
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no span {name} in {spans:?}"))
    };
    assert_eq!(tag(by_name("GET /hold/report"), "error.type"), "timeout");
    let upload = by_name("longUpload");
    assert_eq!(tag(upload, "http.status_code"), "200");
    assert!(upload["tags"].get("error").is_none(), "{upload}");
    assert_eq!(
        proxy
            .metric("sidetrace_proxy_upstream_timeouts_total{direction=\"inbound\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_opaque_connection_is_closed_after_the_idle_timeout() {
    let echo = echo_server().await;
    let proxy = Proxy::start(ProxyOpts {
        outbound_to: Some(echo),
        extra: flags(&[("--idle-timeout", SHORT)]),
        ..Default::default()
    })
    .await;
    assert_eq!(config(&proxy).await["idleTimeoutMs"], 300);
    let mut s = TcpStream::connect(proxy.outbound).await.expect("connect");
    s.write_all(b"\x00\x01binary").await.expect("write");
    let mut echoed = [0u8; 8];
    tokio::time::timeout(WAIT, s.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echoed, b"\x00\x01binary");
    // Now silent both ways: the proxy closes it; the echo server never would.
    assert_eq!(read_until_closed(&mut s).await, b"");
    wait_metric(
        &proxy,
        "sidetrace_proxy_idle_timeouts_total{direction=\"outbound\"}",
        1.0,
    )
    .await;
}

/// The idle timeout here is longer than `SHORT`: the client must get its request in before
/// it, and a loaded machine can stall a few hundred milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http_connections_are_closed_but_not_while_a_request_is_in_flight() {
    let app = HoldApp::start(true).await;
    let h1_app = HoldApp::start(false).await;
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        outbound_to: Some(h1_app.addr),
        extra: flags(&[("--idle-timeout", "1s")]),
        ..Default::default()
    })
    .await;

    // HTTP/2: a stream held open longer than the idle timeout keeps the connection...
    let (mut tx, closed) = h2_connect(proxy.inbound).await;
    let req = Request::builder()
        .uri("http://shop:8080/hold/long")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let held = tokio::spawn(tx.send_request(req));
    app.wait_arrivals(1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.release();
    let resp = held.await.expect("task").expect("the held stream survived");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, "held");
    // ...and once no stream is open, the proxy closes it (GOAWAY, then EOF).
    tokio::time::timeout(WAIT, closed)
        .await
        .expect("the idle HTTP/2 connection was closed")
        .expect("task");

    // HTTP/1 keep-alive: answered, then closed while waiting for a next request.
    let mut s = TcpStream::connect(proxy.outbound).await.expect("connect");
    s.write_all(b"GET /one HTTP/1.1\r\nhost: shop:80\r\n\r\n")
        .await
        .expect("write");
    let got = read_until_closed(&mut s).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.ends_with("held"),
        "one whole response, then EOF: {text}"
    );

    wait_metric(
        &proxy,
        "sidetrace_proxy_idle_timeouts_total{direction=\"inbound\"}",
        1.0,
    )
    .await;
    wait_metric(
        &proxy,
        "sidetrace_proxy_idle_timeouts_total{direction=\"outbound\"}",
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_a_new_connection_is_closed_and_counted() {
    let app = App::http1().await;
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        outbound_to: Some(app.addr),
        extra: flags(&[("--max-connections", "2")]),
        ..Default::default()
    })
    .await;
    assert_eq!(config(&proxy).await["maxConnections"], 2);
    // Two keep-alive connections, each proven accepted by a proxied request.
    let mut first = H1::connect(proxy.inbound).await.expect("connect");
    let mut second = H1::connect(proxy.inbound).await.expect("connect");
    for c in [&mut first, &mut second] {
        let (status, _, _) = c.get("/", &[]).await.expect("proxied");
        assert_eq!(status, 200);
    }
    let proxied = app.seen().len();

    // A third, on either listener (the cap is per proxy), is closed unanswered.
    for (addr, direction) in [(proxy.inbound, "inbound"), (proxy.outbound, "outbound")] {
        let mut s = TcpStream::connect(addr).await.expect("the kernel accepts");
        // The proxy may have closed it already: a failed write is the same answer.
        let _ = s
            .write_all(b"GET /third HTTP/1.1\r\nhost: shop:80\r\n\r\n")
            .await;
        assert_eq!(read_until_closed(&mut s).await, b"", "{direction}");
        wait_metric(
            &proxy,
            &format!(
                "sidetrace_proxy_connections_refused_total{{direction=\"{direction}\",reason=\"limit\"}}"
            ),
            1.0,
        )
        .await;
    }
    assert_eq!(app.seen().len(), proxied, "nothing reached the app");

    // Once one closes, its slot serves a new connection.
    drop(first);
    wait_metric(
        &proxy,
        "sidetrace_proxy_connections_open{direction=\"inbound\"}",
        1.0,
    )
    .await;
    let (status, _, body) = get(proxy.inbound, "/fourth", &[]).await.expect("proxied");
    assert_eq!((status.as_u16(), body.as_str()), (200, "hello from app"));
    let (status, _, _) = second.get("/", &[]).await.expect("still open");
    assert_eq!(status, 200);
}

//! `sidetrace-demo-app`: the application in every pod of the local demo and the data-plane
//! tests — the Rust twin of the Flask `service.py` in Envoy's tracing sandboxes.
//!
//! It knows nothing about tracing. It serves HTTP/1.1 and HTTP/2 cleartext on `--listen` and,
//! for each `--route PATH=URL`, calls `URL` before answering a request for `PATH`, copying the
//! trace-context headers of the inbound request onto the outbound one — exactly the header list
//! the seed service copies. That copying is the only thing an application must do for the
//! sidecars on both sides to stitch the hops into one trace.
//!
//! `--copy-trace-headers=false` makes it an app that copies nothing (most apps in the wild):
//! its calls then carry no trace context, and only a sidecar that infers parents
//! (`inferParents`) keeps the hops in one trace. `--workers N` makes it a synchronous server
//! (a worker pool of N: at most N requests handled at once, the others wait), where the
//! default handles every request concurrently, as an async server does.
//!
//! Routes: every path answers `Hello from behind sidetrace (<name>)!`; a configured route first
//! calls its downstream and appends the downstream's answer, indented. A path below a route
//! (`/trace/1/<id>`) calls the route's URL with the same suffix (`.../trace/2/<id>`), so a
//! request can be followed through every hop by its path alone, never by a header the sidecar
//! reads (the ground truth of the parent-inference tests); `/healthz` answers `ok`;
//! `/headers` lists the trace headers the app received (tests read what the sidecar forwarded).
//! A request with `content-type: application/grpc` (HTTP/2) is a gRPC echo: the request's
//! length-prefixed message comes back with `grpc-status: 0` in the trailers.
//! `--tcp-echo ADDR` also serves an opaque, server-speaks-first TCP echo (a banner line, then
//! every line back), for the tests that prove non-HTTP traffic survives interception;
//! `GET /admin/close-tcp-echo` closes that listener for good (an app whose port goes away, for
//! the probe tests). `--once URL` makes the app a batch job instead: one GET, then exit 0 on a
//! 2xx answer and 1 otherwise (the Job tests).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, HeaderName, Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// The headers the seed's Flask service copies from its inbound request to its outbound one
/// (its `TRACE_HEADERS_TO_PROPAGATE`): B3 multi and single, the OpenTracing context, the
/// request id and W3C trace context. Nothing else is copied.
const TRACE_HEADERS: &[&str] = &[
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
    "b3",
    "traceparent",
    "tracestate",
];

/// How long a downstream call may take before the app answers 504: a hang guard, so a broken
/// hop shows up as an error in the trace instead of a stuck test.
const DOWNSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(
    name = "sidetrace-demo-app",
    about = "Demo service that copies trace headers"
)]
struct Args {
    /// Address to serve HTTP/1.1 and h2c on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Name this service reports in its answers.
    #[arg(long)]
    name: String,
    /// `PATH=URL`: before answering PATH, GET URL with the inbound trace headers (repeatable).
    #[arg(long = "route", value_parser = parse_route)]
    routes: Vec<(String, Uri)>,
    /// Also serve a server-speaks-first line echo over opaque TCP on this address.
    #[arg(long)]
    tcp_echo: Option<SocketAddr>,
    /// Serve nothing: GET this URL once and exit (0 on a 2xx answer), as a batch job does.
    #[arg(long)]
    once: Option<Uri>,
    /// Copy the seed's trace headers onto downstream calls (`false`: copy nothing).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    copy_trace_headers: bool,
    /// Handle at most this many requests at once, as a synchronous server's worker pool does
    /// (default: no limit, an async server).
    #[arg(long)]
    workers: Option<std::num::NonZeroUsize>,
    /// Call downstreams over HTTP/2 cleartext (prior knowledge, as gRPC clients do), many
    /// calls multiplexed on one connection; default HTTP/1.1.
    #[arg(long)]
    downstream_h2: bool,
}

fn parse_route(s: &str) -> Result<(String, Uri), String> {
    let (path, url) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not PATH=URL"))?;
    if !path.starts_with('/') {
        return Err(format!("route path {path:?} does not start with '/'"));
    }
    let uri: Uri = url.parse().map_err(|e| format!("route URL {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(format!("route URL {url:?} is not http://HOST[:PORT]/PATH"));
    }
    Ok((path.to_owned(), uri))
}

/// The trace headers of `inbound`, to put on the downstream request: exactly the seed's list,
/// values untouched, nothing else.
fn propagated_headers(inbound: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in TRACE_HEADERS {
        for value in inbound.get_all(*name) {
            out.append(HeaderName::from_static(name), value.clone());
        }
    }
    out
}

/// The downstream URL for a request to `path`: a route's own path, or a path below it (its
/// suffix appended to the route URL's path).
fn route_target(routes: &[(String, Uri)], path: &str) -> Option<Uri> {
    routes.iter().find_map(|(p, uri)| {
        let suffix = path.strip_prefix(p.as_str())?;
        if suffix.is_empty() {
            return Some(uri.clone());
        }
        if !suffix.starts_with('/') {
            return None;
        }
        let authority = uri.authority()?;
        format!("http://{authority}{}{suffix}", uri.path())
            .parse()
            .ok()
    })
}

/// The greeting, and the downstream's answer indented under it when there was one.
fn answer(name: &str, downstream: Option<(&Uri, &str)>) -> String {
    let mut s = format!("Hello from behind sidetrace ({name})!\n");
    if let Some((uri, body)) = downstream {
        s.push_str(&format!("  {uri} said:\n"));
        for line in body.lines() {
            s.push_str("    ");
            s.push_str(line);
            s.push('\n');
        }
    }
    s
}

struct App {
    name: String,
    routes: Vec<(String, Uri)>,
    copy_trace_headers: bool,
    /// The worker pool of a synchronous server (`--workers`).
    workers: Option<tokio::sync::Semaphore>,
    client: Client<HttpConnector, Empty<Bytes>>,
    /// Closes the `--tcp-echo` listener when notified.
    close_tcp_echo: Arc<tokio::sync::Notify>,
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// gRPC echo: the request's framed message back, status in the trailers.
async fn grpc_echo(req: Request<Incoming>) -> Response<Body> {
    let (status, message, frame) = match req.into_body().collect().await {
        Ok(c) => ("0", "", c.to_bytes()),
        // 13 INTERNAL: the request stream broke.
        Err(_) => ("13", "request body failed", Bytes::new()),
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static(status));
    if !message.is_empty() {
        trailers.insert("grpc-message", http::HeaderValue::from_static(message));
    }
    let body = Full::new(frame)
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed_unsync();
    let mut r = Response::new(body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    r
}

impl App {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        // A closed semaphore never happens (it is never closed); no permit then means no limit.
        let _worker = match &self.workers {
            Some(pool) => pool.acquire().await.ok(),
            None => None,
        };
        if is_grpc(req.headers()) {
            return grpc_echo(req).await;
        }
        let path = req.uri().path().to_owned();
        if path == "/healthz" {
            return text(StatusCode::OK, "ok\n".to_owned());
        }
        if path == "/admin/close-tcp-echo" {
            // notify_one keeps the permit if the echo task is between polls.
            self.close_tcp_echo.notify_one();
            return text(StatusCode::OK, "tcp echo closed\n".to_owned());
        }
        if path == "/headers" {
            let mut s = String::new();
            for (k, v) in propagated_headers(req.headers()).iter() {
                s.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("<binary>")));
            }
            return text(StatusCode::OK, s);
        }
        let Some(target) = route_target(&self.routes, &path) else {
            return text(StatusCode::OK, answer(&self.name, None));
        };
        let target = &target;
        let mut out = Request::new(Empty::<Bytes>::new());
        *out.uri_mut() = target.clone();
        if self.copy_trace_headers {
            *out.headers_mut() = propagated_headers(req.headers());
        }
        let call = async {
            let resp = self.client.request(out).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        match tokio::time::timeout(DOWNSTREAM_TIMEOUT, call).await {
            Ok(Ok((status, body))) => {
                let body = String::from_utf8_lossy(&body);
                tracing::info!(service = %self.name, %path, downstream = %target, %status, "called downstream");
                // A failing downstream fails this hop too, as the Flask app's would.
                let status = if status.is_success() {
                    StatusCode::OK
                } else {
                    StatusCode::BAD_GATEWAY
                };
                text(status, answer(&self.name, Some((target, &body))))
            }
            Ok(Err(e)) => {
                tracing::warn!(service = %self.name, downstream = %target, error = %e, "downstream failed");
                text(
                    StatusCode::BAD_GATEWAY,
                    format!("{}: calling {target} failed: {e}\n", self.name),
                )
            }
            Err(_) => text(
                StatusCode::GATEWAY_TIMEOUT,
                format!("{}: calling {target} timed out\n", self.name),
            ),
        }
    }
}

async fn serve_http(listener: TcpListener, app: Arc<App>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.handle(req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

async fn serve_tcp_echo(listener: TcpListener, name: String, close: Arc<tokio::sync::Notify>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = close.notified() => {
                tracing::info!("tcp echo listener closed on request");
                return;
            }
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let banner = format!("{name} echo ready\n");
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            if w.write_all(banner.as_bytes()).await.is_err() {
                return;
            }
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if w.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// The batch-job mode: one GET, the answer on stdout, exit status from the HTTP status.
async fn once(client: &Client<HttpConnector, Empty<Bytes>>, url: Uri) -> Result<()> {
    let mut req = Request::new(Empty::<Bytes>::new());
    *req.uri_mut() = url.clone();
    let call = async {
        let resp = client.request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    let (status, body) = tokio::time::timeout(DOWNSTREAM_TIMEOUT, call)
        .await
        .with_context(|| format!("GET {url} timed out"))?
        .with_context(|| format!("GET {url}"))?;
    println!("{status} {}", String::from_utf8_lossy(&body).trim_end());
    if !status.is_success() {
        bail!("GET {url} answered {status}");
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if args.name.trim().is_empty() {
        bail!("--name must not be empty");
    }
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let client = Client::builder(TokioExecutor::new())
        .http2_only(args.downstream_h2)
        .build(connector);
    if let Some(url) = args.once {
        return once(&client, url).await;
    }
    let close_tcp_echo = Arc::new(tokio::sync::Notify::new());
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    if let Some(addr) = args.tcp_echo {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        tokio::spawn(serve_tcp_echo(l, args.name.clone(), close_tcp_echo.clone()));
    }
    tracing::info!(listen = %args.listen, name = %args.name, routes = args.routes.len(), "demo app up");
    let app = Arc::new(App {
        name: args.name,
        routes: args.routes,
        copy_trace_headers: args.copy_trace_headers,
        workers: args.workers.map(|n| tokio::sync::Semaphore::new(n.get())),
        client,
        close_tcp_echo,
    });
    tokio::select! {
        () = serve_http(listener, app) => Ok(()),
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_exactly_the_seed_list() {
        let mut inbound = HeaderMap::new();
        for (k, v) in [
            ("x-request-id", "r1"),
            ("x-b3-traceid", "0af7651916cd43dd8448eb211c80319c"),
            ("x-b3-spanid", "b7ad6b7169203331"),
            ("x-b3-parentspanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "1"),
            ("x-b3-flags", "1"),
            ("x-ot-span-context", "ot"),
            ("b3", "a-b-1"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "k=v"),
            ("authorization", "secret"),
            ("host", "front"),
            ("x-other", "no"),
        ] {
            inbound.insert(HeaderName::from_static(k), v.parse().unwrap());
        }
        let out = propagated_headers(&inbound);
        assert_eq!(out.len(), 10);
        assert!(out.get("authorization").is_none());
        assert!(out.get("host").is_none());
        assert!(out.get("x-other").is_none());
        assert_eq!(out["x-b3-spanid"], "b7ad6b7169203331");
        assert_eq!(out["tracestate"], "k=v");
    }

    #[test]
    fn empty_inbound_copies_nothing() {
        assert!(propagated_headers(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn routes_parse_and_reject() {
        let (p, u) = parse_route("/trace/1=http://10.250.1.12:8080/trace/2").unwrap();
        assert_eq!(p, "/trace/1");
        assert_eq!(u.port_u16(), Some(8080));
        assert!(parse_route("trace=http://x/").is_err());
        assert!(parse_route("/a").is_err());
        assert!(parse_route("/a=https://x/").is_err());
        assert!(parse_route("/a=/relative").is_err());
    }

    #[test]
    fn paths_below_a_route_carry_their_suffix_downstream() {
        let routes = vec![parse_route("/trace/1=http://s2:8080/trace/2").unwrap()];
        let at = |p: &str| route_target(&routes, p).map(|u| u.to_string());
        assert_eq!(at("/trace/1").as_deref(), Some("http://s2:8080/trace/2"));
        assert_eq!(
            at("/trace/1/n4-c2-r7").as_deref(),
            Some("http://s2:8080/trace/2/n4-c2-r7")
        );
        assert_eq!(at("/trace/10"), None, "a longer segment is another path");
        assert_eq!(at("/other"), None);
    }

    #[test]
    fn answer_nests_downstream() {
        let uri: Uri = "http://s2:8080/trace/2".parse().unwrap();
        let s = answer(
            "service1",
            Some((&uri, "Hello from behind sidetrace (service2)!\n")),
        );
        assert_eq!(
            s,
            "Hello from behind sidetrace (service1)!\n  http://s2:8080/trace/2 said:\n    Hello from behind sidetrace (service2)!\n"
        );
    }
}

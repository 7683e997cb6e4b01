//! The admin server (default port 15021, never captured): health, readiness, metrics, the
//! effective config, and a loopback-only `POST /shutdown` for Jobs on clusters without native
//! sidecars.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::listener::canonical;
use crate::red;
use crate::state::Shared;
use crate::upstream::{Body, full};

/// Serves admin requests until the process exits (it stays up while draining, so probes see
/// `/ready` turn 503).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let peer = canonical(peer);
            let svc = service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move {
                    let resp = match app_tcp_probe_port(&req) {
                        Some(port) => tcp_probe(&shared, port).await,
                        None => route(&shared, peer, &req),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(%peer, error = %e, "admin connection error");
            }
        });
    }
}

/// The port of a `GET /app-health/tcp/<port>` request, if it is one.
fn app_tcp_probe_port(req: &Request<Incoming>) -> Option<u16> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    req.uri()
        .path()
        .strip_prefix(sidetrace_contract::names::APP_TCP_PROBE_PATH_PREFIX)?
        .parse()
        .ok()
        .filter(|p| *p != 0)
}

/// A kubelet tcpSocket probe, done from inside the pod: with interception every connection to
/// an app port is accepted by the proxy first, so the kubelet's own dial would succeed even
/// with the app down. The proxy dials the app the way it forwards inbound connections (the
/// pod IP, from the passthrough source) and answers 200 when the app accepts, 503 when not.
async fn tcp_probe(shared: &Shared, port: u16) -> Response<Body> {
    let ip = shared
        .settings
        .args
        .pod_ip
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    let dest = crate::listener::inbound_dest(SocketAddr::new(ip, port));
    match shared.upstream.connect(dest).await {
        Ok(_) => text(StatusCode::OK, format!("port {port} accepts connections\n")),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn route(shared: &Shared, peer: SocketAddr, req: &Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/ready") => {
            if shared.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else if shared.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
            }
        }
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let format = red::negotiate(
                req.headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok()),
            );
            let mut out = String::with_capacity(8192);
            shared.metrics.render(&mut out, format);
            sidetrace_trace::render_metrics(&shared.export.stats(), &mut out);
            if format == red::Exposition::OpenMetrics {
                out = red::to_openmetrics(&out);
            }
            let mut r = text(StatusCode::OK, out);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(format.content_type()),
            );
            r
        }
        (&Method::GET | &Method::HEAD, "/config") => {
            let body = serde_json::to_vec_pretty(&effective_config(shared)).unwrap_or_default();
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        (&Method::POST, "/shutdown") => {
            if peer.ip().is_loopback() {
                tracing::info!(%peer, "shutdown requested on the admin port");
                shared.trigger_shutdown();
                text(StatusCode::ACCEPTED, "draining\n")
            } else {
                text(
                    StatusCode::FORBIDDEN,
                    "shutdown is accepted from loopback only\n",
                )
            }
        }
        (_, "/shutdown") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        (_, "/healthz" | "/ready" | "/metrics" | "/config") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The file's sampling settings that cannot take effect (the contract's rule), plus a file
/// rate that the pod's own `--sampling-override` (its annotation) beats.
fn ineffective_sampling(shared: &Shared, live: &crate::state::Live) -> Vec<String> {
    let mut notes = live.file.ineffective_sampling();
    if let (Some(file), Some(flag)) = (
        live.file.sampling_rate,
        shared.settings.args.sampling_override,
    ) {
        notes.push(format!(
            "samplingRate: {file} is overridden by the pod's sidetrace.dev/sampling annotation ({flag})"
        ));
    }
    notes
}

/// The effective configuration as JSON: flags, then the live (reloadable) part.
pub fn effective_config(shared: &Shared) -> serde_json::Value {
    let a = &shared.settings.args;
    let live = shared.live();
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    serde_json::json!({
        "inboundPort": a.inbound_port,
        "outboundPort": a.outbound_port,
        "adminPort": a.admin_port,
        "listenAddress": a.listen_address.to_string(),
        "adminAddress": a.admin_address.to_string(),
        "inboundForwardTo": a.inbound_forward_to.map(|s| s.to_string()),
        "outboundForwardTo": a.outbound_forward_to.map(|s| s.to_string()),
        "configFile": a.config.as_ref().map(|p| p.display().to_string()),
        "configFileError": shared.file_error(),
        "collectorCaFile": a.collector_ca_file.as_ref().map(|p| p.display().to_string()),
        "podIp": a.pod_ip.map(|ip| ip.to_string()),
        "podName": a.pod_name,
        "podNamespace": a.pod_namespace,
        "logLevel": a.log_level,
        "detectTimeoutMs": ms(a.detect_timeout),
        "drainTimeoutMs": ms(a.drain_timeout),
        "drainPeriodMs": ms(a.drain_period),
        "headerReadTimeoutMs": ms(a.header_read_timeout),
        "connectTimeoutMs": ms(a.connect_timeout),
        // 0: off (the file's port and operation `timeout`s still apply; see "file").
        "responseTimeoutMs": ms(a.response_timeout),
        "idleTimeoutMs": ms(a.idle_timeout),
        "maxConnections": a.max_connections,
        "requestMetrics": a.request_metrics,
        "maxHeaderBytes": a.max_header_bytes,
        "exportQueueSize": a.export_queue_size,
        "exportBatchSize": a.export_batch_size,
        "exportIntervalMs": ms(a.export_interval),
        "exportTimeoutMs": ms(a.export_timeout),
        "exportRetries": a.export_retries,
        "reloadIntervalMs": ms(a.reload_interval),
        "serviceName": live.tracer.service_name,
        "samplingRate": live.tracer.sampling_rate,
        // The sampling in force, after flags and file, and what of the file cannot take effect.
        "sampling": {
            "rate": live.tracer.sampling_rate,
            "operations": live.tracer.operation_sampling,
            "maxTracesPerSecond": live.tracer.trace_limiter.as_ref().map(|l| l.per_second()),
            "trustIncoming": live.tracer.trust_incoming,
            "ineffective": ineffective_sampling(shared, &live),
        },
        "propagation": live.tracer.formats,
        "tags": live.tracer.tags,
        "collector": live.collector.to_string(),
        "collectorProtocol": live.collector_protocol.as_str(),
        "nodeName": a.node_name,
        "workloadAttributes": a.workload_attributes,
        "file": serde_json::to_value(&live.file).unwrap_or(serde_json::Value::Null),
    })
}

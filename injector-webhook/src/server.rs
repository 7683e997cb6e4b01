//! The HTTP shell: axum routes over rustls (or plain HTTP for local testing).
//!
//! Routes: `POST /mutate` (AdmissionReview v1), `GET /healthz` (process alive), `GET /readyz`
//! (caches synced or given up on), `GET /metrics` (Prometheus text). Bodies above
//! [`MAX_BODY_BYTES`] get HTTP 413; bodies that are not an AdmissionReview get HTTP 400 with the
//! reason. Each TLS connection is handshaken in its own task with a timeout, so a slow or
//! hostile client cannot stall the accept loop.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::metrics::Metrics;
use crate::review::{self, ClusterView};
use crate::settings::Settings;

/// Largest accepted request body. Pod objects are well under 1 MiB (etcd's object limit is
/// 1.5 MiB); anything larger is not a pod admission.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// Time a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client gets to send request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared state of the handlers.
pub struct AppState {
    /// Injection settings.
    pub settings: Settings,
    /// Namespace labels and TracedServices.
    pub view: Arc<dyn ClusterView>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Set once the caches are synced (or the wait gave up).
    pub ready: Arc<AtomicBool>,
}

/// The routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn mutate(State(st): State<Arc<AppState>>, request: Request) -> Response {
    let started = Instant::now();
    // Refuse from the declared length before reading anything; chunked bodies are cut off by
    // the limit while reading.
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        st.metrics.bad_request(started.elapsed());
        tracing::warn!(bytes = declared, "rejected oversized request");
        return too_large();
    }
    let body: Bytes = match axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            st.metrics.bad_request(started.elapsed());
            let inner = e.into_inner();
            tracing::warn!(error = %inner, "request body not read");
            if inner.is::<http_body_util::LengthLimitError>() {
                return too_large();
            }
            return (
                StatusCode::BAD_REQUEST,
                format!("request body not read: {inner}\n"),
            )
                .into_response();
        }
    };
    match review::review(&body, st.view.as_ref(), &st.settings) {
        Ok(r) => {
            st.metrics.admission(&r.outcome, started.elapsed());
            tracing::info!(
                uid = %r.uid,
                outcome = r.outcome.label(),
                reason = %r.reason,
                warnings = r.warnings.len(),
                micros = started.elapsed().as_micros() as u64,
                "admission"
            );
            for w in &r.warnings {
                tracing::warn!(uid = %r.uid, warning = %w, "admission warning");
            }
            ([(header::CONTENT_TYPE, "application/json")], r.body).into_response()
        }
        Err(e) => {
            st.metrics.bad_request(started.elapsed());
            tracing::warn!(error = %e, kind = e.metric_label(), bytes = body.len(), "rejected request");
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
    }
}

fn too_large() -> Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body exceeds {MAX_BODY_BYTES} bytes\n"),
    )
        .into_response()
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    if st.ready.load(Ordering::Relaxed) {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced yet\n").into_response()
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        st.metrics.render(),
    )
        .into_response()
}

/// Longest wait for in-flight connections after the accept loop stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `router` over TLS on `listener` until `shutdown` resolves, then waits up to
/// [`DRAIN_TIMEOUT`] for connections in flight.
pub async fn serve_tls(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(config);
    // Each connection task holds a clone; the count tells how many are still open.
    let in_flight = Arc::new(());
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let guard = Arc::clone(&in_flight);
        tokio::spawn(async move {
            let _guard = guard;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    // Keep-alive connections idle in the apiserver's pool never end on their own; the deadline
    // bounds the wait, and dropping the runtime closes them.
    while Arc::strong_count(&in_flight) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Serves `router` over plain HTTP (local testing only) until `shutdown` resolves.
pub async fn serve_plain(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

//! The HTTP proxy service: one call per request, on either listener, for HTTP/1.1 and HTTP/2.
//!
//! Per request: snapshot the live config, describe the request to the tracer
//! ([`sidetrace_trace::start_hop`] rewrites the propagation headers for the next hop), drop
//! hop-by-hop headers, forward to the connection's upstream, and finish the span when the
//! response body ends (so response size and gRPC trailers are known). Bodies stream both ways;
//! nothing is buffered. Upgrades (WebSocket) and CONNECT become a byte tunnel once both sides
//! agree to switch.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use sidetrace_contract::Direction;
use sidetrace_trace::{ConnTags, ExportHandle, Hop, InFlightGuard, RequestInfo, ResponseInfo};

use crate::limits::{IdleClock, IdleIo};
use crate::red::{Observation, UNTRACED_OPERATION, status_class};
use crate::state::Shared;
use crate::upstream::{Body, BoxError, Dest, boxed, full};

/// What a request's connection knows: where it came from and where it goes.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Which listener accepted the connection.
    pub direction: Direction,
    /// Address the client dialled (the original destination when redirected).
    pub local_addr: SocketAddr,
    /// The client.
    pub peer_addr: SocketAddr,
    /// Where requests are forwarded (and from which source address).
    pub upstream: Dest,
    /// HTTP/2 (prior knowledge) rather than HTTP/1.
    pub h2: bool,
    /// The span tags of the addresses above, formatted once for all the connection's
    /// requests.
    pub tags: ConnTags,
}

impl ConnInfo {
    /// A connection's facts, with its span tags made from them.
    pub fn new(
        direction: Direction,
        local_addr: SocketAddr,
        peer_addr: SocketAddr,
        upstream: Dest,
        h2: bool,
    ) -> Self {
        Self {
            direction,
            local_addr,
            peer_addr,
            upstream,
            h2,
            tags: ConnTags::new(direction, peer_addr, upstream.addr),
        }
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), never forwarded.
/// Names, not strings: a `HeaderName` is looked up without being parsed first.
const HOP_BY_HOP: [HeaderName; 5] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::CONNECTION,
];

/// gRPC's status header (in trailers, or in the headers of a trailers-only response).
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Whether `strip_hop_by_hop` has anything to do with a header of this name.
fn is_hop_by_hop_or_te(name: &HeaderName) -> bool {
    name == header::TE || HOP_BY_HOP.contains(name)
}

/// Whether a request asks to switch protocols (HTTP/1.1 `Connection: upgrade` + `Upgrade`).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers and the headers the `Connection` header names. With
/// `keep_upgrade`, `Connection: upgrade` and `Upgrade` survive (the upstream must see them to
/// switch protocols). `TE: trailers` survives (gRPC needs it end to end).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of these (HTTP/1.1 keeps a connection alive without saying
    // so): one look at each name present costs less than a hashed removal per name below.
    if !keep_upgrade && !headers.keys().any(is_hop_by_hop_or_te) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        if keep_upgrade && (name == header::UPGRADE || name == header::CONNECTION) {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether a request is gRPC (content type `application/grpc` or `application/grpc+proto` etc).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

fn grpc_status(headers: &HeaderMap) -> Option<String> {
    headers
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Why a forwarded request got no upstream response.
enum Failure {
    /// Connecting or the exchange failed.
    Upstream(crate::Error),
    /// The response headers did not arrive within the request's response timeout.
    Timeout(Duration),
}

/// Proxies one request. Never fails: upstream errors become a 502, a response timeout a 504
/// (gRPC: the matching `grpc-status`), with a span tagged error.
pub async fn proxy(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let live = shared.live();
    let grpc = is_grpc(req.headers());
    let protocol = match (grpc, conn.h2) {
        (true, _) => "gRPC",
        (false, true) => "HTTP/2",
        (false, false) => "HTTP/1.1",
    };
    let is_connect = req.method() == Method::CONNECT;
    let upgrade = !conn.h2 && (is_connect || is_upgrade_request(req.headers()));
    let server_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    // Reference-counted clones of the bytes hyper parsed, not copies: the tracer rewrites
    // the headers while these are read.
    let uri = parts.uri.clone();
    let host_header = parts.headers.get(header::HOST).cloned();
    let user_agent = parts.headers.get(header::USER_AGENT).cloned();
    let authority = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| host_header.as_ref().and_then(|h| h.to_str().ok()));
    let user_agent = user_agent.as_ref().and_then(|h| h.to_str().ok());
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path(), |p| p.as_str());
    let scheme = uri.scheme_str().unwrap_or("http");
    let hop = {
        let info = RequestInfo {
            direction: conn.direction,
            method: parts.method.as_str(),
            path,
            authority,
            scheme,
            user_agent,
            local_addr: conn.local_addr,
            peer_addr: conn.peer_addr,
            upstream_addr: conn.upstream.addr,
            protocol,
            conn_tags: Some(&conn.tags),
        };
        sidetrace_trace::start_hop_inferring(
            &live.tracer,
            &info,
            &mut parts.headers,
            SystemTime::now(),
            Some(&shared.in_flight),
        )
    };
    if let Some(hop) = &hop {
        if hop.malformed_context() {
            shared.metrics.malformed_context();
        }
        shared
            .metrics
            .sampling_decision(hop.sampling_reason(), hop.is_sampled());
    }
    if grpc {
        shared.metrics.grpc_request(conn.direction);
    }
    if let Some(how) = hop.as_ref().and_then(Hop::inference) {
        shared.metrics.parent_inference(how);
    }
    // An inbound request is in flight, for the app's outbound calls to infer their parent
    // from, until its response body ends. Untraced ones count too, as work that is not
    // attributable: a call made during them must not be linked to another request.
    let in_flight = (conn.direction == Direction::Inbound).then(|| {
        shared
            .in_flight
            .enter(hop.as_ref().map(|h| h.candidate(&parts.headers)))
    });
    let timeout = {
        let timeouts = &live.timeouts;
        let fallback;
        // The host span naming matches operation rules against (see `start_hop`).
        let host = match authority {
            Some(a) => a.rsplit('@').next().unwrap_or(a),
            None if timeouts.needs_host() => {
                fallback = conn.upstream.addr.to_string();
                fallback.as_str()
            }
            None => "",
        };
        timeouts.resolve(
            conn.direction,
            conn.local_addr.port(),
            parts.method.as_str(),
            path,
            host,
        )
    };
    strip_hop_by_hop(&mut parts.headers, upgrade && !is_connect);
    let method = parts.method.clone();
    let out = Request::from_parts(parts, boxed(body));

    // Resolves when the response head arrives: the body streams afterwards, outside any
    // response timeout.
    let send = async {
        if conn.h2 {
            shared
                .upstream
                .send_h2(conn.upstream, out)
                .await
                .map(|r| r.map(boxed))
        } else if upgrade {
            // Boxed: upgrades are rare and dial a fresh connection, a large future that
            // every request's future would otherwise make room for.
            Box::pin(shared.upstream.send_upgrade(conn.upstream, out))
                .await
                .map(|mut resp| {
                    let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS
                        || (method == Method::CONNECT && resp.status().is_success());
                    if switched {
                        if let Some(server) = server_upgrade {
                            let client = hyper::upgrade::on(&mut resp);
                            // The app may work for an inbound tunnel's client for as long
                            // as it is open, untraced.
                            let in_flight = (conn.direction == Direction::Inbound)
                                .then(|| shared.in_flight.enter(None));
                            tokio::spawn(tunnel(
                                server,
                                client,
                                conn.upstream.addr,
                                Arc::clone(&shared),
                                conn.direction,
                                in_flight,
                            ));
                        }
                        resp.map(|_| full(Bytes::new()))
                    } else {
                        resp.map(boxed)
                    }
                })
        } else {
            shared.upstream.send_h1(conn.upstream, out).await
        }
    };
    let result = match timeout {
        None => send.await.map_err(Failure::Upstream),
        // Dropping the exchange on expiry closes its HTTP/1 upstream connection (it never
        // goes back to the pool) or resets its HTTP/2 stream.
        Some(limit) => match tokio::time::timeout(limit, send).await {
            Ok(r) => r.map_err(Failure::Upstream),
            Err(_) => Err(Failure::Timeout(limit)),
        },
    };

    match result {
        Err(failure) => {
            let (why, message, error_type) = match failure {
                Failure::Upstream(e) => {
                    shared.metrics.upstream_error(conn.direction);
                    tracing::warn!(direction = ?conn.direction, upstream = %conn.upstream, error = %e, "upstream request failed");
                    (LocalReply::UpstreamFailed, e.to_string(), e.metric_label())
                }
                Failure::Timeout(limit) => {
                    shared.metrics.upstream_timeout(conn.direction);
                    tracing::warn!(direction = ?conn.direction, upstream = %conn.upstream, path = path.split('?').next().unwrap_or_default(), timeout = ?limit, "upstream response timeout");
                    (
                        LocalReply::UpstreamTimeout,
                        format!("upstream response timeout after {limit:?}"),
                        "timeout",
                    )
                }
            };
            let resp = local_reply(grpc, why);
            let status = resp.status().as_u16();
            count(
                &shared,
                conn.direction,
                hop.as_ref(),
                status_class(Some(status), grpc.then(|| why.grpc_status())),
                started.elapsed(),
            );
            if let Some(hop) = hop {
                let info = ResponseInfo {
                    status: Some(status),
                    grpc_status: grpc.then(|| why.grpc_status().to_owned()),
                    response_size: None,
                    error: Some(message),
                    error_type: Some(error_type),
                };
                finish(&shared.export, hop, started, &info);
            }
            Ok(resp)
        }
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let head_latency = started.elapsed();
            // gRPC's outcome is in the trailers: counted when the body ends.
            if !grpc || status == 101 {
                count(
                    &shared,
                    conn.direction,
                    hop.as_ref(),
                    status_class(Some(status), None),
                    head_latency,
                );
            }
            if status == 101 {
                // Keep `Connection: upgrade` + `Upgrade` so the client switches too.
                if let Some(hop) = hop {
                    let info = ResponseInfo {
                        status: Some(status),
                        response_size: Some(0),
                        ..ResponseInfo::default()
                    };
                    finish(&shared.export, hop, started, &info);
                }
                return Ok(resp);
            }
            strip_hop_by_hop(resp.headers_mut(), false);
            // The body is wrapped when something ends with it: the span, gRPC's trailers for the
            // request metrics, or the inbound request's place among those in flight.
            if hop.is_none() && !grpc && in_flight.is_none() {
                return Ok(resp);
            }
            let grpc_status = grpc_status(resp.headers());
            Ok(resp.map(|inner| {
                boxed(TracedBody {
                    inner,
                    bytes: 0,
                    pending: Some(Pending {
                        hop,
                        shared,
                        direction: conn.direction,
                        started,
                        head_latency: grpc.then_some(head_latency),
                        status,
                        grpc_status,
                    }),
                    in_flight,
                })
            }))
        }
    }
}

/// gRPC status UNAVAILABLE, what a gRPC client retries on.
const GRPC_UNAVAILABLE: &str = "14";
/// gRPC status DEADLINE_EXCEEDED.
const GRPC_DEADLINE_EXCEEDED: &str = "4";

/// Why the proxy answers a request itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalReply {
    /// The upstream could not be reached, or the exchange broke: 502; gRPC UNAVAILABLE.
    UpstreamFailed,
    /// The upstream's response headers did not arrive within the response timeout: 504;
    /// gRPC DEADLINE_EXCEEDED.
    UpstreamTimeout,
}

impl LocalReply {
    fn status(self) -> StatusCode {
        match self {
            Self::UpstreamFailed => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `grpc-status` a gRPC client gets instead of the HTTP status.
    pub fn grpc_status(self) -> &'static str {
        match self {
            Self::UpstreamFailed => GRPC_UNAVAILABLE,
            Self::UpstreamTimeout => GRPC_DEADLINE_EXCEEDED,
        }
    }

    /// Envoy's wording, so the replies read familiar.
    fn message(self) -> &'static str {
        match self {
            Self::UpstreamFailed => "upstream connect error or disconnect",
            Self::UpstreamTimeout => "upstream request timeout",
        }
    }
}

/// The proxy's own reply: the HTTP status of `why` with a one-line text body; for gRPC a
/// "trailers-only" 200 with `grpc-status` and `grpc-message`, as Envoy does, because gRPC
/// clients read the outcome from `grpc-status`, not from the HTTP status.
pub fn local_reply(grpc: bool, why: LocalReply) -> Response<Body> {
    let mut resp = Response::new(full(if grpc {
        Bytes::new()
    } else {
        Bytes::from(format!("{}\n", why.message()))
    }));
    let h = resp.headers_mut();
    if grpc {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(GRPC_STATUS, HeaderValue::from_static(why.grpc_status()));
        h.insert("grpc-message", HeaderValue::from_static(why.message()));
    } else {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        *resp.status_mut() = why.status();
    }
    resp
}

/// Counts an exchange in the RED series, under the hop's span name (or as untraced), with the
/// trace as exemplar when the hop is sampled.
fn count(
    shared: &Shared,
    direction: Direction,
    hop: Option<&Hop>,
    class: usize,
    latency: Duration,
) {
    shared.metrics.request(&Observation {
        direction,
        operation: hop.map_or(UNTRACED_OPERATION, Hop::name),
        class,
        latency,
        sampled_trace: hop.filter(|h| h.is_sampled()).map(|h| h.context().trace_id),
    });
}

/// Ends `hop` now (timed from `started`) with what is known of the response, and hands the
/// span to the exporter when sampled. Every way an exchange ends goes through here.
fn finish(export: &ExportHandle, hop: Hop, started: Instant, info: &ResponseInfo) {
    if let Some(span) = hop.finish_after(info, started.elapsed()) {
        export.record(span);
    }
}

/// Copies bytes both ways between the two upgraded halves until either side closes, or
/// until no byte moved for `--idle-timeout`.
async fn tunnel(
    server: hyper::upgrade::OnUpgrade,
    client: hyper::upgrade::OnUpgrade,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    direction: sidetrace_contract::Direction,
    _in_flight: Option<InFlightGuard>,
) {
    let (server, client) = match tokio::try_join!(server, client) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(%upstream, error = %e, "upgrade did not complete");
            return;
        }
    };
    let clock = IdleClock::new();
    let mut server = IdleIo::new(TokioIo::new(server), &clock);
    let mut client = TokioIo::new(client);
    let idle = shared.settings.args.idle_timeout;
    tokio::select! {
        res = tokio::io::copy_bidirectional(&mut server, &mut client) => match res {
            Ok((up, down)) => tracing::debug!(%upstream, up, down, "upgraded tunnel closed"),
            Err(e) => tracing::debug!(%upstream, error = %e, "upgraded tunnel ended with an error"),
        },
        () = clock.expired(idle) => {
            shared.metrics.idle_timeout(direction);
            tracing::debug!(%upstream, ?idle, "upgraded tunnel idle; closing");
        }
    }
}

struct Pending {
    hop: Option<Hop>,
    shared: Arc<Shared>,
    direction: Direction,
    started: Instant,
    /// Set for gRPC, whose RED count waits for the `grpc-status` trailer.
    head_latency: Option<Duration>,
    status: u16,
    grpc_status: Option<String>,
}

/// Response body that ends the span, and takes an inbound request out of the pod's requests
/// in flight, when the body ends (or is abandoned).
struct TracedBody {
    inner: Body,
    bytes: u64,
    pending: Option<Pending>,
    in_flight: Option<InFlightGuard>,
}

impl TracedBody {
    fn done(&mut self, error: Option<String>) {
        self.in_flight = None;
        if let Some(p) = self.pending.take() {
            if let Some(latency) = p.head_latency {
                // No grpc-status at all (the stream was cut): `grpc_other`.
                let class =
                    status_class(Some(p.status), Some(p.grpc_status.as_deref().unwrap_or("")));
                count(&p.shared, p.direction, p.hop.as_ref(), class, latency);
            }
            let Some(hop) = p.hop else {
                return;
            };
            let info = ResponseInfo {
                status: Some(p.status),
                grpc_status: p.grpc_status,
                response_size: Some(self.bytes),
                error,
                error_type: None,
            };
            finish(&p.shared.export, hop, p.started, &info);
        }
    }
}

impl hyper::body::Body for TracedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    let status = grpc_status(trailers);
                    if let (Some(p), Some(s)) = (self.pending.as_mut(), status) {
                        p.grpc_status = Some(s);
                    }
                }
                if self.inner.is_end_stream() {
                    self.done(None);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                let msg = format!("response body: {e}");
                self.done(Some(msg));
            }
            Poll::Ready(None) => self.done(None),
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TracedBody {
    fn drop(&mut self) {
        if self.pending.is_some() {
            let error = (!self.inner.is_end_stream())
                .then(|| "client went away before the response body ended".to_owned());
            self.done(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers, deflate"),
            ("x-b3-traceid", "abc"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-b3-traceid", "te"]);
        assert_eq!(h["te"], "trailers");

        // Each one alone is found by the quick look too; a message without any is left as is.
        for (name, value, left) in [
            ("keep-alive", "timeout=5", 1),
            ("proxy-connection", "close", 1),
            ("transfer-encoding", "chunked", 1),
            ("upgrade", "h2c", 1),
            ("connection", "close", 1),
            ("te", "gzip", 1),
            ("te", "trailers", 2),
            ("x-other", "1", 2),
        ] {
            let mut h = headers(&[(name, value), ("x-b3-sampled", "1")]);
            strip_hop_by_hop(&mut h, false);
            assert_eq!(h.len(), left, "{name}: {value}");
            assert_eq!(h["x-b3-sampled"], "1");
        }
    }

    #[test]
    fn keeps_upgrade_headers_for_websocket() {
        let mut h = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "k");
        assert!(!is_upgrade_request(&headers(&[("upgrade", "websocket")])));
    }

    #[test]
    fn local_replies_use_the_http_or_the_grpc_status() {
        let r = local_reply(false, LocalReply::UpstreamTimeout);
        assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/plain");
        assert_eq!(
            local_reply(false, LocalReply::UpstreamFailed).status(),
            StatusCode::BAD_GATEWAY
        );
        for (why, code) in [
            (LocalReply::UpstreamTimeout, "4"),
            (LocalReply::UpstreamFailed, "14"),
        ] {
            let r = local_reply(true, why);
            assert_eq!(r.status(), StatusCode::OK, "gRPC reads grpc-status");
            assert_eq!(r.headers()["grpc-status"], code);
            assert_eq!(r.headers()[header::CONTENT_TYPE], "application/grpc");
        }
    }

    #[test]
    fn recognises_grpc_content_types() {
        assert!(is_grpc(&headers(&[("content-type", "application/grpc")])));
        assert!(is_grpc(&headers(&[(
            "content-type",
            "application/grpc+proto"
        )])));
        assert!(!is_grpc(&headers(&[("content-type", "application/json")])));
    }
}

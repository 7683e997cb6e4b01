//! The peers the bench starts as separate, pinned processes (hidden subcommands of this
//! binary): the upstream app (HTTP/1.1 and h2c), the plain TCP relay (the floor for one
//! user-space hop) and the span sink (a collector that only counts).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

/// Size of the "small" response body.
pub const SMALL_BODY: usize = 128;
/// Size of the "16k" response body.
pub const LARGE_BODY: usize = 16 * 1024;

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The upstream app: `GET /16k` answers 16 KiB, anything else 128 bytes; HTTP/1.1 keep-alive
/// or h2c prior knowledge on the same port. One thread: it shares its CPU with the proxy.
pub fn upstream(listen: SocketAddr) -> Result<()> {
    let small = Bytes::from(vec![b's'; SMALL_BODY]);
    let large = Bytes::from(vec![b'L'; LARGE_BODY]);
    runtime()?.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let (small, large) = (small.clone(), large.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<Incoming>| {
                    let body = if req.uri().path() == "/16k" {
                        large.clone()
                    } else {
                        small.clone()
                    };
                    async move {
                        // Drain the request body so keep-alive works for POSTs too.
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(body)))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

/// Plain TCP relay: every accepted connection is copied byte for byte to `to`.
pub fn relay(listen: SocketAddr, to: SocketAddr) -> Result<()> {
    runtime()?.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (mut inbound, _) = listener.accept().await?;
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(to).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    })
}

/// The transparent TCP relay: the floor of any sidecar in the transparent position. It listens
/// on both capture ports, reads each connection's original destination (iptables `REDIRECT`)
/// and relays bytes to it: from the passthrough source when it came in through the inbound
/// port (so the init rules leave it alone, as sidetrace's and Istio's inbound hops do), plainly
/// when outbound.
pub fn transparent_relay(inbound: SocketAddr, outbound: SocketAddr, workers: usize) -> Result<()> {
    let rt = if workers <= 1 {
        runtime()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        let inbound = TcpListener::bind(inbound).await?;
        let outbound = TcpListener::bind(outbound).await?;
        let passthrough = IpAddr::V4(sidetrace_contract::defaults::PASSTHROUGH_SOURCE_V4);
        tokio::try_join!(
            relay_accept_loop(inbound, Some(passthrough)),
            relay_accept_loop(outbound, None)
        )?;
        Ok(())
    })
}

async fn relay_accept_loop(listener: TcpListener, source: Option<IpAddr>) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(relay_to_original_dst(stream, source));
    }
}

async fn relay_to_original_dst(mut stream: TcpStream, source: Option<IpAddr>) {
    let local_is_v4 = stream.local_addr().is_ok_and(|a| a.is_ipv4());
    let Ok(dst) = sidetrace_proxy::orig_dst::original_dst(&stream, local_is_v4) else {
        return;
    };
    let socket = match tokio::net::TcpSocket::new_v4() {
        Ok(s) => s,
        Err(_) => return,
    };
    if let Some(ip) = source
        && socket.bind(SocketAddr::new(ip, 0)).is_err()
    {
        return;
    }
    let Ok(mut upstream) = socket.connect(dst).await else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
}

/// Span sink: accepts any POST with 202 and counts the spans in Zipkin v2 JSON arrays
/// (occurrences of `"traceId"`); `GET /count` returns the total.
pub fn sink(listen: SocketAddr) -> Result<()> {
    let total = Arc::new(AtomicU64::new(0));
    runtime()?.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let total = Arc::clone(&total);
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<Incoming>| {
                    let total = Arc::clone(&total);
                    async move {
                        if req.method() == http::Method::GET {
                            let n = total.load(Ordering::Relaxed);
                            return Ok::<_, Infallible>(hyper::Response::new(Full::new(
                                Bytes::from(n.to_string()),
                            )));
                        }
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let spans = count_spans(&body);
                        total.fetch_add(spans, Ordering::Relaxed);
                        let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                        *resp.status_mut() = http::StatusCode::ACCEPTED;
                        Ok(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

/// Number of spans in a Zipkin v2 JSON body (each span has exactly one `"traceId"` key).
pub fn count_spans(body: &[u8]) -> u64 {
    let needle = b"\"traceId\"";
    body.windows(needle.len()).filter(|w| w == needle).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_counted_by_trace_id_keys() {
        assert_eq!(count_spans(b"[]"), 0);
        assert_eq!(
            count_spans(br#"[{"traceId":"a","id":"b"},{"traceId":"c","id":"d"}]"#),
            2
        );
    }
}

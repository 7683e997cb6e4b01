//! A minimal HTTP client that speaks from inside a namespace (one request per connection, so
//! every request is its own trace root and nothing is pooled across namespaces), and a TCP
//! forwarder from a host-side listener into a namespace (the demo's collector UI).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::ns;

/// Upper bound on one request, connection included: a hang guard, never a timing assertion.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An answer, fully read.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// Body as text (lossy).
    pub body: String,
    /// Body as bytes.
    pub bytes: Bytes,
    /// Trailers, when the response had any (gRPC status).
    pub trailers: Option<HeaderMap>,
}

/// Send `req` to `addr` from inside namespace `from`, over HTTP/1.1 or, with
/// `Version::HTTP_2`, HTTP/2 with prior knowledge (h2c).
pub async fn send(from: &str, addr: SocketAddr, req: Request<Full<Bytes>>) -> Result<Reply> {
    let version = req.version();
    let what = format!("{} http://{addr}{} from {from}", req.method(), req.uri());
    let fut = async {
        let stream = ns::connect_in(from, addr, CONNECT_TIMEOUT).await?;
        let io = TokioIo::new(stream);
        let resp = if version == Version::HTTP_2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            sender.send_request(req).await?
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            sender.send_request(req).await?
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let collected = resp.into_body().collect().await?;
        let trailers = collected.trailers().cloned();
        let bytes = collected.to_bytes();
        anyhow::Ok(Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            bytes,
            trailers,
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .with_context(|| format!("{what}: no answer within {REQUEST_TIMEOUT:?}"))?
        .with_context(|| what.clone())
}

/// An HTTP/1.1 keep-alive connection opened from inside namespace `from`: every request sent
/// on it reuses the one TCP connection (a dropped connection fails the next request).
pub async fn connect_http1(
    from: &str,
    addr: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = ns::connect_in(from, addr, CONNECT_TIMEOUT).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Send `req` on an open connection and read the whole answer.
pub async fn send_on(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Result<Reply> {
    let fut = async {
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let collected = resp.into_body().collect().await?;
        let trailers = collected.trailers().cloned();
        let bytes = collected.to_bytes();
        anyhow::Ok(Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            bytes,
            trailers,
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .context("no answer on the kept-alive connection")?
}

/// Build a GET for `path` on `addr` with extra headers.
pub fn get_request(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    version: Version,
) -> Result<Request<Full<Bytes>>> {
    let mut b = Request::get(path).version(version);
    if version == Version::HTTP_2 {
        // HTTP/2 carries the authority in the URI, not a Host header.
        b = b.uri(format!("http://{addr}{path}"));
    } else {
        b = b.header(http::header::HOST, addr.to_string());
    }
    let mut req = b.body(Full::new(Bytes::new()))?;
    for (k, v) in headers {
        req.headers_mut()
            .append(HeaderName::try_from(*k)?, HeaderValue::try_from(*v)?);
    }
    Ok(req)
}

/// A gRPC unary call over h2c: POST `path` with `message` framed (uncompressed, 4-byte
/// big-endian length prefix).
pub fn grpc_request(
    addr: SocketAddr,
    path: &str,
    message: &[u8],
    headers: &[(&str, &str)],
) -> Result<Request<Full<Bytes>>> {
    let len = u32::try_from(message.len())?;
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(message);
    let mut req = Request::post(format!("http://{addr}{path}"))
        .version(Version::HTTP_2)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(Full::new(Bytes::from(frame)))?;
    for (k, v) in headers {
        req.headers_mut()
            .append(HeaderName::try_from(*k)?, HeaderValue::try_from(*v)?);
    }
    Ok(req)
}

/// GET `path` from `addr` over HTTP/1.1, from inside namespace `from`.
pub async fn get(
    from: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply> {
    send(
        from,
        addr,
        get_request(addr, path, headers, Version::HTTP_11)?,
    )
    .await
}

/// Accept connections on `listener` (in the caller's namespace, e.g. the host's 127.0.0.1)
/// and splice each one to `target` dialled from inside namespace `to`. Runs until the task is
/// dropped or aborted.
pub async fn forward(listener: tokio::net::TcpListener, to: String, target: SocketAddr) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let to = to.clone();
        tokio::spawn(async move {
            match ns::connect_in(&to, target, CONNECT_TIMEOUT).await {
                Ok(mut outbound) => {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(e) => tracing::warn!(error = %e, "forwarder could not reach {target}"),
            }
        });
    }
}

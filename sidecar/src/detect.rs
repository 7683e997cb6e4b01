//! Protocol detection from a connection's first bytes.
//!
//! The proxy reads (not peeks: a peek loop spins while too few bytes have arrived) up to a few
//! dozen bytes with a short deadline, decides, and hands the bytes back in front of the stream
//! with [`Rewind`], so the HTTP server or the TCP copy sees the connection from its first byte.
//! Nothing within the deadline means a server-speaks-first protocol (SMTP, MySQL): opaque TCP.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface a prior-knowledge client sends first (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest HTTP/1 method token accepted (WebDAV's `VERSION-CONTROL` is 15).
const MAX_METHOD_LEN: usize = 20;
/// Bytes read at most before deciding; enough for the HTTP/2 preface.
const SNIFF_BYTES: usize = 64;

/// What a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    /// HTTP/1.x (a method token followed by a space).
    Http1,
    /// HTTP/2 with prior knowledge (the client preface).
    Http2,
    /// A TLS ClientHello (record type 22): passed through opaquely.
    Tls,
    /// Anything else, a timeout, or an empty connection: opaque TCP.
    Opaque,
}

impl Detected {
    /// Label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Tls => "tls",
            Self::Opaque => "opaque",
        }
    }
}

/// Decides from the bytes seen so far, or `None` when more bytes could change the answer.
pub fn classify(buf: &[u8]) -> Option<Detected> {
    let first = *buf.first()?;
    if first == 0x16 {
        return Some(Detected::Tls);
    }
    if buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
        return None;
    }
    if buf.starts_with(H2_PREFACE) {
        return Some(Detected::Http2);
    }
    for (i, &b) in buf.iter().enumerate().take(MAX_METHOD_LEN + 1) {
        match b {
            b'A'..=b'Z' | b'-' | b'_' => continue,
            b' ' if i > 0 => return Some(Detected::Http1),
            _ => return Some(Detected::Opaque),
        }
    }
    if buf.len() > MAX_METHOD_LEN {
        Some(Detected::Opaque)
    } else {
        None
    }
}

/// Reads the first bytes of `io` until [`classify`] decides, EOF, or `timeout`. Returns the
/// decision and the bytes read, which must be replayed in front of the stream.
pub async fn sniff<T: AsyncRead + Unpin>(
    io: &mut T,
    timeout: Duration,
) -> io::Result<(Detected, Bytes)> {
    let mut buf = BytesMut::with_capacity(SNIFF_BYTES);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Err(_elapsed) => return Ok((classify(&buf).unwrap_or(Detected::Opaque), buf.freeze())),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => return Ok((classify(&buf).unwrap_or(Detected::Opaque), buf.freeze())),
            Ok(Ok(_)) => {
                if let Some(d) = classify(&buf) {
                    return Ok((d, buf.freeze()));
                }
                if buf.len() >= SNIFF_BYTES {
                    return Ok((Detected::Opaque, buf.freeze()));
                }
            }
        }
    }
}

/// A stream with bytes already read from it put back in front.
#[derive(Debug)]
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    /// Replays `prefix` before reading from `inner`.
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn classifies_http1_methods_h2_preface_tls_and_garbage() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"POST "), Some(Detected::Http1));
        assert_eq!(
            classify(b"CONNECT host:443 HTTP/1.1"),
            Some(Detected::Http1)
        );
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(b"PRI * HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02]), Some(Detected::Tls));
        assert_eq!(classify(b"\x00\x01garbage"), Some(Detected::Opaque));
        assert_eq!(classify(b"get / HTTP/1.1"), Some(Detected::Opaque));
        assert_eq!(classify(b" GET"), Some(Detected::Opaque));
        assert_eq!(
            classify(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            Some(Detected::Opaque)
        );
        assert_eq!(classify(b"EHLO"), None);
    }

    #[tokio::test]
    async fn sniff_times_out_to_opaque_and_rewind_replays_the_bytes() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"EHL").await.expect("write");
        let (d, prefix) = sniff(&mut server, Duration::from_millis(20))
            .await
            .expect("sniff");
        assert_eq!(d, Detected::Opaque);
        assert_eq!(&prefix[..], b"EHL");
        client.write_all(b"O x\r\n").await.expect("write");
        drop(client);
        let mut all = Vec::new();
        Rewind::new(prefix, server)
            .read_to_end(&mut all)
            .await
            .expect("read");
        assert_eq!(all, b"EHLO x\r\n");
    }

    #[tokio::test]
    async fn sniff_waits_for_a_split_preface() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move {
            client.write_all(&H2_PREFACE[..5]).await.expect("write");
            tokio::task::yield_now().await;
            client.write_all(&H2_PREFACE[5..]).await.expect("write");
            client
        });
        let (d, prefix) = sniff(&mut server, Duration::from_secs(30))
            .await
            .expect("sniff");
        assert_eq!(d, Detected::Http2);
        assert_eq!(&prefix[..], H2_PREFACE);
        drop(task.await);
    }
}

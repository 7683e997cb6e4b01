//! Connections from the proxy to upstreams (the app on inbound, the original destination on
//! outbound), pooled by destination address.
//!
//! Why not hyper-util's legacy `Client`: it keys its pool by the URI's authority and writes
//! that authority as HTTP/2 `:authority`. A transparent proxy must connect to the *original
//! destination* address while keeping the request's own authority untouched, so the pool here
//! is keyed by socket address and requests keep the URI they arrived with.
//!
//! - HTTP/1.1: idle senders per destination; a sender goes back to the pool only when its
//!   response body has been read to the end (hyper's HTTP/1 connection is not ready for the
//!   next request before that), so a long streaming response never blocks another request.
//! - HTTP/2: one multiplexed connection per destination, replaced when it closes.
//! - Upgrades (WebSocket, CONNECT): a fresh, unpooled HTTP/1 connection driven
//!   `with_upgrades()`.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpSocket, TcpStream};

use crate::error::{Error, Result};

/// Boxed error type of proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type the proxy sends and returns (streams, never buffered).
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Idle HTTP/1 connections kept per destination.
const MAX_IDLE_PER_DEST: usize = 32;
/// Idle HTTP/1 connections older than this are closed rather than reused (servers commonly
/// close idle keep-alive connections after 60 s or more; reusing one as it closes costs a retry).
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Destinations remembered before closed entries are swept out of the maps.
const PRUNE_ABOVE: usize = 64;

/// Turns any body into [`Body`].
pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A body with fixed content.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    boxed(http_body_util::Full::new(bytes.into()).map_err(|never| match never {}))
}

/// Where an upstream connection goes and, for inbound connections forwarded to the pod IP,
/// the passthrough source it is made from (see [`sidetrace_contract::defaults::PASSTHROUGH_SOURCE_V4`]).
/// Pools are keyed by both: the same pod address is reached with and without that source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dest {
    /// The destination.
    pub addr: SocketAddr,
    /// The local address to bind before connecting, if any.
    pub source: Option<IpAddr>,
}

impl Dest {
    /// A destination reached from the default source.
    pub const fn to(addr: SocketAddr) -> Self {
        Self { addr, source: None }
    }
}

impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source {
            Some(src) => write!(f, "{} (from {src})", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

struct Idle {
    tx: http1::SendRequest<Body>,
    since: Instant,
}

impl Idle {
    fn reusable(&self) -> bool {
        !self.tx.is_closed() && self.since.elapsed() < IDLE_TIMEOUT
    }
}

#[derive(Default)]
struct Pools {
    h1: HashMap<Dest, Vec<Idle>>,
    h2: HashMap<Dest, http2::SendRequest<Body>>,
}

/// Shared upstream connection pool.
pub struct Upstream {
    connect_timeout: Duration,
    max_header_bytes: usize,
    pools: Mutex<Pools>,
}

impl Upstream {
    /// A pool with the given connect timeout and response-head size limit.
    pub fn new(connect_timeout: Duration, max_header_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            connect_timeout,
            max_header_bytes,
            pools: Mutex::new(Pools::default()),
        })
    }

    fn pools(&self) -> std::sync::MutexGuard<'_, Pools> {
        // A poisoned lock only means another task panicked mid-push; the maps stay valid.
        self.pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a TCP connection within the connect timeout, from the destination's source
    /// address when it has one.
    pub async fn connect(&self, dest: Dest) -> Result<TcpStream> {
        let addr = dest.addr;
        let failed = |reason: String| Error::Connect { addr, reason };
        let connecting = async {
            match dest.source {
                None => TcpStream::connect(addr).await,
                Some(source) => {
                    let socket = if addr.is_ipv4() {
                        TcpSocket::new_v4()?
                    } else {
                        TcpSocket::new_v6()?
                    };
                    socket.bind(SocketAddr::new(source, 0))?;
                    socket.connect(addr).await
                }
            }
        };
        let stream = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Err(_) => {
                return Err(failed(format!(
                    "timed out after {:?}",
                    self.connect_timeout
                )));
            }
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn handshake_h1(&self, addr: Dest, upgrades: bool) -> Result<http1::SendRequest<Body>> {
        let io = TokioIo::new(self.connect(addr).await?);
        let (tx, conn) = http1::Builder::new()
            .max_buf_size(self.max_header_bytes)
            .handshake(io)
            .await?;
        tokio::spawn(async move {
            let res = if upgrades {
                conn.with_upgrades().await
            } else {
                conn.await
            };
            if let Err(e) = res {
                tracing::debug!(%addr, error = %e, "upstream HTTP/1 connection ended with an error");
            }
        });
        Ok(tx)
    }

    fn take_idle_h1(&self, addr: Dest) -> Option<http1::SendRequest<Body>> {
        let mut pools = self.pools();
        let idle = pools.h1.get_mut(&addr)?;
        while let Some(entry) = idle.pop() {
            if entry.reusable() {
                return Some(entry.tx);
            }
        }
        None
    }

    fn put_idle_h1(&self, addr: Dest, tx: http1::SendRequest<Body>) {
        if tx.is_closed() {
            return;
        }
        let mut pools = self.pools();
        if pools.h1.len() > PRUNE_ABOVE {
            // Outbound traffic can reach many destinations: forget the ones gone quiet.
            pools.h1.retain(|_, idle| {
                idle.retain(Idle::reusable);
                !idle.is_empty()
            });
        }
        let idle = pools.h1.entry(addr).or_default();
        idle.retain(Idle::reusable);
        if idle.len() < MAX_IDLE_PER_DEST {
            idle.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }

    /// Sends an HTTP/1.1 request over a pooled connection (new one when none is idle). A
    /// request that a reused connection could not even start sending (it closed as we picked
    /// it) is retried once on a fresh connection.
    pub async fn send_h1(
        self: &Arc<Self>,
        addr: Dest,
        req: Request<Body>,
    ) -> Result<Response<Body>> {
        let mut req = req;
        if let Some(mut tx) = self.take_idle_h1(addr) {
            // A pooled connection is almost always ready at once: only a connection still
            // finishing its previous exchange needs the (timer-backed) wait.
            let ready = tx.is_ready()
                || matches!(
                    tokio::time::timeout(Duration::from_secs(1), tx.ready()).await,
                    Ok(Ok(()))
                );
            if ready {
                match tx.try_send_request(req).await {
                    Ok(resp) => return Ok(self.pooled_response(addr, tx, resp)),
                    Err(mut e) => match e.take_message() {
                        Some(back) => {
                            tracing::debug!(%addr, "idle upstream connection closed; retrying on a new one");
                            req = back;
                        }
                        None => return Err(e.into_error().into()),
                    },
                }
            } else {
                // Not ready (or closed) after a body was fully read: drop it and dial.
                tracing::debug!(%addr, "idle upstream connection not ready; dialling a new one");
            }
        }
        // Boxed: dialling is the rare path, and its future is most of this one's size; kept
        // inline it would make every request's future (and every idle connection, which
        // holds room for one) that much larger.
        let mut tx = Box::pin(self.handshake_h1(addr, false)).await?;
        let resp = tx.send_request(req).await?;
        Ok(self.pooled_response(addr, tx, resp))
    }

    fn pooled_response(
        self: &Arc<Self>,
        addr: Dest,
        tx: http1::SendRequest<Body>,
        resp: Response<Incoming>,
    ) -> Response<Body> {
        resp.map(|inner| {
            boxed(PoolReturn {
                inner,
                ret: Some((Arc::clone(self), addr, tx)),
            })
        })
    }

    /// Sends an HTTP/1.1 request that may switch protocols (WebSocket, CONNECT) over a fresh
    /// connection that is never pooled.
    pub async fn send_upgrade(&self, addr: Dest, req: Request<Body>) -> Result<Response<Incoming>> {
        let mut tx = self.handshake_h1(addr, true).await?;
        Ok(tx.send_request(req).await?)
    }

    /// Sends an HTTP/2 request over the destination's shared connection.
    pub async fn send_h2(&self, addr: Dest, req: Request<Body>) -> Result<Response<Incoming>> {
        let existing = {
            let pools = self.pools();
            pools.h2.get(&addr).filter(|tx| !tx.is_closed()).cloned()
        };
        let mut tx = match existing {
            Some(tx) => tx,
            // Boxed, as in `send_h1`: the dial is rare and large.
            None => Box::pin(self.dial_h2(addr)).await?,
        };
        tx.ready().await?;
        Ok(tx.send_request(req).await?)
    }

    /// Opens and pools the destination's shared HTTP/2 connection.
    async fn dial_h2(&self, addr: Dest) -> Result<http2::SendRequest<Body>> {
        let io = TokioIo::new(self.connect(addr).await?);
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(io)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        let mut pools = self.pools();
        if pools.h2.len() > PRUNE_ABOVE {
            pools.h2.retain(|_, tx| !tx.is_closed());
        }
        pools.h2.insert(addr, tx.clone());
        Ok(tx)
    }
}

/// Response body that returns its HTTP/1 connection to the pool once read to the end.
struct PoolReturn {
    inner: Incoming,
    ret: Option<(Arc<Upstream>, Dest, http1::SendRequest<Body>)>,
}

impl PoolReturn {
    fn give_back(&mut self) {
        if let Some((pool, addr, tx)) = self.ret.take() {
            pool.put_idle_h1(addr, tx);
        }
    }
}

impl hyper::body::Body for PoolReturn {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        match &res {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.ret = None,
            _ => {}
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

impl Drop for PoolReturn {
    fn drop(&mut self) {
        // Bodies that are empty by definition (HEAD, 204, 304) are never polled; anything
        // dropped mid-body closes its connection instead of poisoning the pool.
        if self.inner.is_end_stream() {
            self.give_back();
        }
    }
}

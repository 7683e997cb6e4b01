//! Timeouts and limits of the data path: the decisions as plain data, and the small pieces
//! that enforce them.
//!
//! - [`ResponseTimeouts`]: which upstream response timeout a request gets. The first
//!   operation rule that matches the request wins when it sets `timeout`, then the inbound
//!   port's `timeout`, then `--response-timeout`; a zero at any level means "no timeout".
//!   Built once per config (re)load, resolved per request.
//! - [`IdleClock`] and [`IdleIo`]: idle detection without a timer per read. Every read or
//!   write that moves bytes stores "now" in one atomic; one sleep per connection wakes when
//!   the connection would be idle, looks at the last activity, and re-arms to it. A
//!   connection that talks all the time costs one wake-up per idle timeout. HTTP/2
//!   connections count open streams instead of bytes (PING keep-alives are bytes too).
//! - [`ConnectionLimit`]: the cap on client connections open at once, per proxy.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use sidetrace_contract::{Direction, OperationRule, ProxyConfig, parse_duration};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::upstream::{Body, BoxError};

/// Upstream response timeouts from the flag and the config file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponseTimeouts {
    /// `--response-timeout`, `None` when off.
    flag: Option<Duration>,
    /// Inbound ports that set `timeout` (zero: off for that port).
    ports: Vec<(u16, Duration)>,
    /// Every operation rule with its `timeout`, in file order (first match wins, as for span
    /// names). Empty when no rule sets one, so requests skip the matching.
    rules: Vec<(OperationRule, Option<Duration>)>,
}

impl ResponseTimeouts {
    /// From `--response-timeout` (`0s`: off) and a validated config file.
    pub fn new(flag: Duration, file: &ProxyConfig) -> Result<Self> {
        let parse = |field: String, text: Option<&str>| {
            text.map(parse_duration)
                .transpose()
                .map_err(|reason| Error::config(field, reason))
        };
        let mut ports = Vec::new();
        for (i, p) in file.ports.iter().enumerate() {
            if let Some(t) = parse(format!("ports[{i}].timeout"), p.timeout.as_deref())? {
                ports.push((p.port, t));
            }
        }
        let mut rules = Vec::new();
        for (i, r) in file.operations.iter().enumerate() {
            let t = parse(format!("operations[{i}].timeout"), r.timeout.as_deref())?;
            rules.push((r.clone(), t));
        }
        if rules.iter().all(|(_, t)| t.is_none()) {
            rules.clear();
        }
        Ok(Self {
            flag: (!flag.is_zero()).then_some(flag),
            ports,
            rules,
        })
    }

    /// Whether a request must be matched against operation rules (so the caller can skip
    /// working out the host otherwise).
    pub fn needs_host(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The response timeout of one request, `None` when it has none. `port` is the port the
    /// client dialled (only inbound ports carry timeouts); `host` is what span naming
    /// matches rules against (the authority, else the upstream address).
    pub fn resolve(
        &self,
        direction: Direction,
        port: u16,
        method: &str,
        path: &str,
        host: &str,
    ) -> Option<Duration> {
        let from_rule = self
            .rules
            .iter()
            .find(|(rule, _)| rule.matches(direction, method, path, host))
            .and_then(|(_, t)| *t);
        let from_port = || match direction {
            Direction::Inbound => self.ports.iter().find(|(p, _)| *p == port).map(|(_, t)| *t),
            Direction::Outbound => None,
        };
        from_rule
            .or_else(from_port)
            .or(self.flag)
            .filter(|t| !t.is_zero())
    }
}

/// An instant far enough ahead to stand for "never" (tokio's timers accept it).
fn far_after(t: Instant) -> Instant {
    t + Duration::from_secs(30 * 365 * 86_400)
}

/// When a connection last moved bytes, and how many exchanges it has in flight.
#[derive(Debug)]
pub struct IdleClock {
    epoch: Instant,
    /// Milliseconds from `epoch` to the last activity.
    last: AtomicU64,
    /// Exchanges in flight (HTTP/2 streams): the connection is never idle while any is open.
    busy: AtomicUsize,
}

impl Default for IdleClock {
    fn default() -> Self {
        Self::new()
    }
}

impl IdleClock {
    /// A clock whose last activity is now.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }

    /// Records activity now.
    pub fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.fetch_max(ms, Ordering::Relaxed);
    }

    /// Marks an exchange in flight until the guard drops (which counts as activity).
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(Arc::clone(self))
    }

    /// When the connection will have been idle for `timeout`, as far as is known now;
    /// `None` while an exchange is in flight.
    fn idle_at(&self, timeout: Duration) -> Option<Instant> {
        // Acquire pairs with the Release in `Busy::drop`: seeing the count drop means seeing
        // the activity it recorded.
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = self.epoch + Duration::from_millis(self.last.load(Ordering::Relaxed));
        Some(last.checked_add(timeout).unwrap_or_else(|| far_after(last)))
    }

    /// Resolves once the connection has been idle for `timeout`; never when `timeout` is
    /// zero (off). One sleep, re-armed to the last activity each time it wakes early.
    pub async fn expired(&self, timeout: Duration) {
        if timeout.is_zero() {
            return std::future::pending().await;
        }
        let sleep = tokio::time::sleep(timeout);
        tokio::pin!(sleep);
        loop {
            sleep.as_mut().await;
            let now = Instant::now();
            let due = self
                .idle_at(timeout)
                .unwrap_or_else(|| now.checked_add(timeout).unwrap_or_else(|| far_after(now)));
            if due <= now {
                return;
            }
            sleep.as_mut().reset(due);
        }
    }
}

/// An exchange in flight on a connection (see [`IdleClock::busy`]).
#[derive(Debug)]
pub struct Busy(Arc<IdleClock>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Release);
    }
}

/// A response body that keeps its HTTP/2 connection busy until it ends or is dropped.
pub struct BusyBody {
    inner: Body,
    _busy: Busy,
}

impl BusyBody {
    /// Holds `busy` for as long as `inner` lives.
    pub fn new(inner: Body, busy: Busy) -> Self {
        Self { inner, _busy: busy }
    }
}

impl hyper::body::Body for BusyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A byte stream that records on `clock` every read and write that moves bytes.
#[derive(Debug)]
pub struct IdleIo<'a, T> {
    inner: T,
    clock: &'a IdleClock,
}

impl<'a, T> IdleIo<'a, T> {
    /// Wraps `inner`; its traffic counts as activity on `clock`.
    pub fn new(inner: T, clock: &'a IdleClock) -> Self {
        Self { inner, clock }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.clock.touch();
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            this.clock.touch();
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            this.clock.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The cap on client connections open at once (`--max-connections`), shared by both
/// listeners: they share one memory limit.
#[derive(Debug)]
pub struct ConnectionLimit {
    slots: Arc<Semaphore>,
}

/// One open client connection's place under the [`ConnectionLimit`]; dropping it frees it.
pub type ConnectionSlot = OwnedSemaphorePermit;

impl ConnectionLimit {
    /// Room for `max` connections.
    pub fn new(max: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// A slot for one more connection, or `None` when the cap is reached (the caller closes
    /// the connection). Never waits.
    pub fn try_acquire(&self) -> Option<ConnectionSlot> {
        Arc::clone(&self.slots).try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn timeouts(flag: &str, file: &str) -> ResponseTimeouts {
        let file = ProxyConfig::from_yaml(file).expect("valid file");
        ResponseTimeouts::new(parse_duration(flag).expect("flag"), &file).expect("timeouts")
    }

    const FILE: &str = r#"
ports:
  - {port: 8080, timeout: 2s}
  - {port: 9090, timeout: 0s}
  - {port: 7070}
operations:
  - {name: report, direction: inbound, pathPrefix: /report, timeout: 30s}
  - {name: events, pathPrefix: /events, timeout: 0s}
  - {name: named-only, pathPrefix: /named}
  - {name: never-reached, pathPrefix: /named, timeout: 1s}
  - {name: payments, direction: outbound, host: payments, timeout: 500ms}
"#;

    #[test]
    fn the_matching_operation_beats_the_port_which_beats_the_flag() {
        let t = timeouts("5s", FILE);
        let inbound = |port, path| t.resolve(Direction::Inbound, port, "GET", path, "shop:8080");
        let secs = |s: u64| Some(Duration::from_secs(s));
        assert_eq!(inbound(8080, "/report/q1"), secs(30), "operation > port");
        assert_eq!(inbound(8080, "/cart"), secs(2), "port > flag");
        assert_eq!(
            inbound(7070, "/cart"),
            secs(5),
            "a port without timeout: the flag"
        );
        assert_eq!(
            inbound(1234, "/cart"),
            secs(5),
            "an undeclared port: the flag"
        );
        assert_eq!(
            inbound(9090, "/cart"),
            None,
            "0s turns the flag off for the port"
        );
        assert_eq!(inbound(8080, "/events/stream"), None, "0s on the operation");
        assert_eq!(
            inbound(8080, "/named/x"),
            secs(2),
            "the first matching rule decides, even without a timeout of its own"
        );
        let outbound = |host| t.resolve(Direction::Outbound, 8080, "POST", "/charge", host);
        assert_eq!(outbound("payments:80"), Some(Duration::from_millis(500)));
        assert_eq!(outbound("other"), secs(5), "ports are inbound only");
        assert_eq!(
            t.resolve(Direction::Outbound, 8080, "GET", "/report", "h"),
            secs(5),
            "the rule is inbound only"
        );
    }

    #[test]
    fn no_timeout_anywhere_is_the_default() {
        let t = timeouts("0s", "");
        assert_eq!(t, ResponseTimeouts::default());
        assert_eq!(t.resolve(Direction::Inbound, 80, "GET", "/", "h"), None);
        assert!(!t.needs_host());
        let t = timeouts("0s", "operations: [{name: a, pathPrefix: /a}]");
        assert!(!t.needs_host(), "rules without timeouts are not matched");
        let t = timeouts("0s", FILE);
        assert!(t.needs_host());
        assert_eq!(
            t.resolve(Direction::Inbound, 8080, "GET", "/report", "h"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(t.resolve(Direction::Inbound, 7070, "GET", "/", "h"), None);
    }

    #[test]
    fn a_timeout_that_does_not_parse_names_its_field() {
        // The file validator rejects it first; the proxy still does not trust it blindly.
        let mut file = ProxyConfig::default();
        file.operations.push(OperationRule {
            name: "a".into(),
            timeout: Some("soon".into()),
            ..OperationRule::default()
        });
        let e = ResponseTimeouts::new(Duration::ZERO, &file).expect_err("bad");
        assert!(e.to_string().contains("operations[0].timeout"), "{e}");
    }

    /// Paused time: the clock only moves when every task waits, so these are exact and fast.
    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_after_a_full_timeout_without_bytes() {
        let clock = IdleClock::new();
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = IdleIo::new(a, &clock);
        let timeout = Duration::from_millis(300);
        let chatter = async {
            let mut buf = [0u8; 4];
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                b.write_all(b"ping").await.expect("write");
                io.read_exact(&mut buf).await.expect("read");
            }
            io.write_all(b"pong").await.expect("write");
            b.read_exact(&mut buf).await.expect("read");
        };
        tokio::select! {
            () = clock.expired(timeout) => panic!("idle while bytes flowed"),
            () = chatter => {}
        }
        let quiet_since = Instant::now();
        clock.expired(timeout).await;
        let idle = quiet_since.elapsed();
        assert!(
            idle >= timeout - Duration::from_millis(1) && idle <= timeout,
            "{idle:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_exchange_in_flight_keeps_a_connection_busy() {
        let clock = Arc::new(IdleClock::new());
        let timeout = Duration::from_millis(300);
        let busy = clock.busy();
        tokio::select! {
            () = clock.expired(timeout) => panic!("idle with a stream open"),
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        drop(busy);
        let done_at = Instant::now();
        clock.expired(timeout).await;
        assert!(done_at.elapsed() >= timeout - Duration::from_millis(1));
        let never = async {
            IdleClock::new().expired(Duration::ZERO).await;
            true
        };
        tokio::select! {
            fired = never => assert!(!fired, "0s is off"),
            () = tokio::time::sleep(Duration::from_secs(86_400)) => {}
        }
    }

    #[test]
    fn the_connection_cap_refuses_past_max_and_frees_on_drop() {
        let limit = ConnectionLimit::new(2);
        let first = limit.try_acquire().expect("1 of 2");
        let _second = limit.try_acquire().expect("2 of 2");
        assert!(limit.try_acquire().is_none(), "the third is refused");
        drop(first);
        assert!(
            limit.try_acquire().is_some(),
            "a closed connection frees its slot"
        );
    }
}

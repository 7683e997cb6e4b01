//! The two capture listeners: accept, find where the connection was going, detect the protocol,
//! then serve it as HTTP/1.1, HTTP/2 or an opaque TCP copy.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sidetrace_contract::{Direction, Protocol, defaults};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::config::ipv4_fallback;
use crate::detect::{Detected, Rewind, sniff};
use crate::error::{Error, Result};
use crate::http::{ConnInfo, proxy};
use crate::limits::{BusyBody, ConnectionSlot, IdleClock, IdleIo};
use crate::metrics::{Refusal, direction_label};
use crate::orig_dst::original_dst;
use crate::state::Shared;
use crate::upstream::{Dest, boxed};

/// Connections waiting to be accepted per listener.
const BACKLOG: u32 = 1024;

/// Binds a listener; `::` falls back to `0.0.0.0` when IPv6 is unavailable.
pub fn bind(addr: SocketAddr) -> Result<TcpListener> {
    match bind_exact(addr) {
        Ok(l) => Ok(l),
        Err(e) => match ipv4_fallback(addr.ip()) {
            Some(v4) => {
                tracing::info!(%addr, error = %e, "IPv6 unavailable; listening on IPv4 only");
                bind_exact(SocketAddr::new(v4, addr.port()))
            }
            None => Err(e),
        },
    }
}

fn bind_exact(addr: SocketAddr) -> Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|source| Error::Bind { addr, source })?;
    socket
        .set_reuseaddr(true)
        .and_then(|()| socket.bind(addr))
        .and_then(|()| socket.listen(BACKLOG))
        .map_err(|source| Error::Bind { addr, source })
}

/// Where an accepted connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The address the client meant to reach (original destination, or the explicit target).
    pub original: SocketAddr,
    /// Where the proxy connects, and from which source.
    pub upstream: Dest,
}

/// Decides where a connection goes, as a pure function of what the socket says.
///
/// - `orig`: `SO_ORIGINAL_DST` (an error when there is no NAT entry).
/// - A redirected connection has an original destination different from the local address.
///   Both directions go to the original destination itself. Inbound connects from the
///   passthrough source (127.0.0.6 / ::6), which the init rules never capture, so the app
///   sees a connection to its pod IP: a port bound only to loopback stays private to the pod
///   and a port bound only to the pod IP works (Istio's behaviour since 1.10).
/// - Not redirected: the explicit forward address when configured, else refused.
/// - An original destination that is one of the proxy's own capture ports on a local or
///   loopback address would loop back into the proxy: refused.
pub fn route(
    direction: Direction,
    local: SocketAddr,
    orig: Option<SocketAddr>,
    forward_to: Option<SocketAddr>,
    own_ports: [u16; 2],
) -> std::result::Result<Route, Refusal> {
    let redirected = orig.map(canonical).filter(|o| *o != canonical(local));
    match redirected {
        Some(o) => {
            let own = own_ports.contains(&o.port())
                && (o.ip().is_loopback()
                    || o.ip().is_unspecified()
                    || o.ip() == canonical(local).ip());
            if own {
                return Err(Refusal::Loop);
            }
            let upstream = match direction {
                Direction::Inbound => inbound_dest(o),
                Direction::Outbound => Dest::to(o),
            };
            Ok(Route {
                original: o,
                upstream,
            })
        }
        None => match forward_to {
            Some(f)
                if !(own_ports.contains(&f.port())
                    && (f.ip().is_loopback() || f.ip() == canonical(local).ip())) =>
            {
                Ok(Route {
                    original: f,
                    upstream: Dest::to(f),
                })
            }
            Some(_) => Err(Refusal::Loop),
            None if orig.is_some() => Err(Refusal::Loop),
            None => Err(Refusal::NoOriginalDst),
        },
    }
}

/// How the proxy reaches the app at `original` (its pod IP and port) without being captured
/// again: from the passthrough source of the address's family. Inbound forwarding and the
/// tcpSocket probe check ([`crate::admin`]) both dial this way, so a probe fails exactly when
/// a forwarded connection would.
pub fn inbound_dest(original: SocketAddr) -> Dest {
    Dest {
        addr: original,
        source: Some(if original.is_ipv4() {
            IpAddr::V4(defaults::PASSTHROUGH_SOURCE_V4)
        } else {
            IpAddr::V6(defaults::PASSTHROUGH_SOURCE_V6)
        }),
    }
}

/// IPv4-mapped IPv6 addresses (from a dual-stack listener) as plain IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Accepts connections until this direction must stop (inbound at once on shutdown,
/// outbound when the drain closes it), then returns (dropping the listener, so new
/// connections are refused by the kernel).
///
/// Past `--max-connections` open client connections a new one is accepted and closed at
/// once, counted as refused with reason `limit`: the client sees the close (or a reset)
/// right away and can retry or fail over, where leaving it in the accept backlog would make
/// it wait for its own connect or request timeout, and keep the backlog full for everyone.
pub async fn accept_loop(listener: TcpListener, direction: Direction, shared: Arc<Shared>) {
    let stop = shared.stop_signal(direction);
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(slot) = shared.limit.try_acquire() else {
                    shared.metrics.refused(direction, Refusal::Limit);
                    tracing::debug!(
                        direction = direction_label(direction),
                        peer = %canonical(peer),
                        max = shared.settings.args.max_connections,
                        "connection limit reached; closing a new connection"
                    );
                    drop(stream);
                    continue;
                };
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    handle_connection(stream, canonical(peer), direction, shared, slot).await;
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(direction = direction_label(direction), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::info!(direction = direction_label(direction), "listener closed");
}

async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    direction: Direction,
    shared: Arc<Shared>,
    slot: ConnectionSlot,
) {
    let _open = shared.metrics.connection(direction);
    // Declared after the gauge, so dropped before it: once the open count goes down, the
    // slot is free for the next connection.
    let _slot = slot;
    let _ = stream.set_nodelay(true);
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let local_v4 = canonical(local).is_ipv4();
    let orig = original_dst(&stream, local_v4).ok();
    let args = &shared.settings.args;
    let forward_to = match direction {
        Direction::Inbound => args.inbound_forward_to,
        Direction::Outbound => args.outbound_forward_to,
    };
    let route = match route(
        direction,
        local,
        orig,
        forward_to,
        [args.inbound_port, args.outbound_port],
    ) {
        Ok(r) => r,
        Err(why) => {
            shared.metrics.refused(direction, why);
            tracing::warn!(
                direction = direction_label(direction),
                %peer, %local, reason = ?why,
                "refusing a connection that was not redirected to the proxy"
            );
            return;
        }
    };
    let declared = match direction {
        Direction::Inbound => shared.live().file.protocol_for(route.original.port()),
        Direction::Outbound => Protocol::Auto,
    };
    let mut stream = stream;
    // A port declared HTTP/HTTP2/gRPC has no server-speaks-first risk: wait for the client's
    // first bytes as long as a header read may take, so a pre-connected pooled client that
    // sends later is still traced. Only undeclared ports use the short detection timeout.
    let sniff_timeout = match declared {
        Protocol::Http | Protocol::Http2 | Protocol::Grpc => args.header_read_timeout,
        Protocol::Auto | Protocol::Tcp => args.detect_timeout,
    };
    let (detected, prefix) = if declared == Protocol::Tcp {
        (Detected::Opaque, bytes::Bytes::new())
    } else {
        match sniff(&mut stream, sniff_timeout).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection failed before detection");
                return;
            }
        }
    };
    shared.metrics.detected(direction, detected);
    tracing::debug!(direction = direction_label(direction), %peer, upstream = %route.upstream, protocol = detected.label(), "accepted");
    let io = Rewind::new(prefix, stream);
    let info = Arc::new(ConnInfo::new(
        direction,
        // The pod's side of the connection: what the caller dialled on inbound, the app's
        // own socket on outbound (the original destination there is the callee).
        match direction {
            Direction::Inbound => canonical(route.original),
            Direction::Outbound => peer,
        },
        peer,
        route.upstream,
        detected == Detected::Http2,
    ));
    // HTTP/2 and opaque connections are boxed: their futures are larger than HTTP/1's, and
    // this task is sized for the largest, so every keep-alive HTTP/1 connection would carry
    // their room while it idles.
    match detected {
        Detected::Http1 => serve_http1(io, info, Arc::clone(&shared)).await,
        Detected::Http2 => Box::pin(serve_http2(io, info, Arc::clone(&shared))).await,
        Detected::Tls | Detected::Opaque => {
            Box::pin(copy_opaque(io, route.upstream, &shared, direction)).await
        }
    }
}

async fn serve_http1(io: Rewind<TcpStream>, info: Arc<ConnInfo>, shared: Arc<Shared>) {
    let args = &shared.settings.args;
    // hyper's one clock for a request head also runs while a keep-alive connection waits for
    // its next request: it is the HTTP/1 idle timeout too.
    let head_or_idle = match args.idle_timeout {
        idle if idle.is_zero() => args.header_read_timeout,
        idle => args.header_read_timeout.min(idle),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head_or_idle)
        .max_buf_size(args.max_header_bytes)
        .keep_alive(true)
        .half_close(true);
    let peer = info.peer_addr;
    let direction = info.direction;
    let svc_shared = Arc::clone(&shared);
    let stop = shared.stop_signal(info.direction);
    // Boxed per request: hyper keeps room for one request's future in every connection, busy
    // or idle, so unboxed every idle keep-alive connection would hold a whole proxy future;
    // boxed it holds a pointer, and the box lives only until the response head is ready.
    let svc =
        service_fn(move |req| Box::pin(proxy(Arc::clone(&svc_shared), Arc::clone(&info), req)));
    let conn = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    // On shutdown hyper finishes the request in flight (if any), then closes the connection.
    let res = tokio::select! {
        res = conn.as_mut() => res,
        () = stop => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    match res {
        Err(e) if e.is_timeout() => {
            shared.metrics.idle_timeout(direction);
            tracing::debug!(%peer, timeout = ?head_or_idle, "HTTP/1 connection sent no request head in time; closed");
        }
        Err(e) => tracing::debug!(%peer, error = %e, "HTTP/1 connection ended with an error"),
        Ok(()) => {}
    }
}

async fn serve_http2(io: Rewind<TcpStream>, info: Arc<ConnInfo>, shared: Arc<Shared>) {
    let args = &shared.settings.args;
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(args.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Duration::from_secs(30));
    let peer = info.peer_addr;
    let direction = info.direction;
    let svc_shared = Arc::clone(&shared);
    let stop = shared.stop_signal(info.direction);
    // Idle means no open stream: PING keep-alives move bytes on an idle connection too. Each
    // stream holds the connection busy until its response body ends (one small box per
    // HTTP/2 request, for the guard).
    let clock = Arc::new(IdleClock::new());
    let streams = Arc::clone(&clock);
    let svc = service_fn(move |req| {
        let busy = streams.busy();
        let fut = proxy(Arc::clone(&svc_shared), Arc::clone(&info), req);
        async move {
            let resp = fut.await?;
            Ok::<_, std::convert::Infallible>(resp.map(|b| boxed(BusyBody::new(b, busy))))
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let idle = args.idle_timeout;
    // On shutdown, or idle, hyper sends GOAWAY, lets open streams finish, then closes.
    let res = tokio::select! {
        res = conn.as_mut() => res,
        () = stop => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = clock.expired(idle) => {
            shared.metrics.idle_timeout(direction);
            tracing::debug!(%peer, ?idle, "HTTP/2 connection idle; closing");
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = res {
        tracing::debug!(%peer, error = %e, "HTTP/2 connection ended with an error");
    }
}

async fn copy_opaque(io: Rewind<TcpStream>, upstream: Dest, shared: &Shared, direction: Direction) {
    // The proxy cannot see requests inside an opaque inbound connection: while it is open the
    // app may be working for it, so the app's outbound calls must not be linked to another
    // inbound request (see `sidetrace_trace::infer`).
    let _in_flight = (direction == Direction::Inbound).then(|| shared.in_flight.enter(None));
    let mut up = match shared.upstream.connect(upstream).await {
        Ok(s) => s,
        Err(e) => {
            shared.metrics.upstream_error(direction);
            tracing::warn!(%upstream, error = %e, "opaque upstream connect failed");
            return;
        }
    };
    // Bytes either way reach the client side, so watching it alone sees all activity.
    let clock = IdleClock::new();
    let mut io = IdleIo::new(io, &clock);
    let idle = shared.settings.args.idle_timeout;
    tokio::select! {
        res = tokio::io::copy_bidirectional(&mut io, &mut up) => match res {
            Ok((to_up, to_down)) => {
                tracing::debug!(%upstream, to_up, to_down, "opaque connection closed")
            }
            Err(e) => tracing::debug!(%upstream, error = %e, "opaque connection ended with an error"),
        },
        () = clock.expired(idle) => {
            shared.metrics.idle_timeout(direction);
            tracing::debug!(%upstream, ?idle, "opaque connection idle; closing");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }
    const OWN: [u16; 2] = [15006, 15001];

    #[test]
    fn inbound_redirect_goes_to_the_pod_ip_from_the_passthrough_source() {
        let r = route(
            Direction::Inbound,
            a("10.0.0.5:15006"),
            Some(a("10.0.0.5:8080")),
            None,
            OWN,
        );
        assert_eq!(
            r,
            Ok(Route {
                original: a("10.0.0.5:8080"),
                upstream: Dest {
                    addr: a("10.0.0.5:8080"),
                    source: Some("127.0.0.6".parse().unwrap()),
                }
            })
        );
        let r = route(
            Direction::Inbound,
            a("[fd00::5]:15006"),
            Some(a("[fd00::5]:8080")),
            None,
            OWN,
        );
        assert_eq!(
            r.map(|r| r.upstream),
            Ok(Dest {
                addr: a("[fd00::5]:8080"),
                source: Some("::6".parse().unwrap()),
            })
        );
    }

    #[test]
    fn outbound_redirect_goes_to_the_original_destination() {
        let r = route(
            Direction::Outbound,
            a("127.0.0.1:15001"),
            Some(a("10.96.0.10:80")),
            None,
            OWN,
        );
        assert_eq!(r.map(|r| r.upstream), Ok(Dest::to(a("10.96.0.10:80"))));
    }

    #[test]
    fn direct_connects_are_refused_or_sent_to_the_explicit_target() {
        let local = a("127.0.0.1:15001");
        assert_eq!(
            route(Direction::Outbound, local, None, None, OWN),
            Err(Refusal::NoOriginalDst)
        );
        assert_eq!(
            route(Direction::Outbound, local, Some(local), None, OWN),
            Err(Refusal::Loop)
        );
        let fwd = a("127.0.0.1:9000");
        assert_eq!(
            route(Direction::Outbound, local, Some(local), Some(fwd), OWN).map(|r| r.upstream),
            Ok(Dest::to(fwd))
        );
        assert_eq!(
            route(Direction::Outbound, local, None, Some(fwd), OWN).map(|r| r.upstream),
            Ok(Dest::to(fwd))
        );
    }

    #[test]
    fn destinations_that_are_the_proxy_itself_are_loops() {
        let local = a("10.0.0.5:15006");
        assert_eq!(
            route(
                Direction::Inbound,
                local,
                Some(a("127.0.0.1:15001")),
                None,
                OWN
            ),
            Err(Refusal::Loop)
        );
        assert_eq!(
            route(
                Direction::Outbound,
                a("127.0.0.1:15001"),
                Some(a("10.0.0.5:15006")),
                None,
                OWN
            )
            .map(|r| r.upstream),
            Ok(Dest::to(a("10.0.0.5:15006")))
        );
        assert_eq!(
            route(
                Direction::Inbound,
                local,
                None,
                Some(a("127.0.0.1:15006")),
                OWN
            ),
            Err(Refusal::Loop)
        );
    }

    #[test]
    fn mapped_ipv4_is_canonical() {
        let local = a("[::ffff:10.0.0.5]:15006");
        assert_eq!(
            route(
                Direction::Inbound,
                local,
                Some(a("10.0.0.5:15006")),
                None,
                OWN
            ),
            Err(Refusal::Loop)
        );
    }
}

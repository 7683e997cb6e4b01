//! `sidetrace-proxy wait`: blocks until the proxy's admin `/ready` answers 200.
//!
//! Without native sidecars the injector puts the proxy first among the app's containers with a
//! postStart hook running this command; the kubelet starts the next container only after the
//! hook returns, so the app never sends a request before interception is served (Istio's
//! holdApplicationUntilProxyStarts). Plain std I/O: it runs once, before any runtime exists.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How often readiness is polled.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// Per-attempt connect/read timeout.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);

/// One readiness probe: `GET /ready` answered with status 200.
pub fn is_ready(admin: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&admin, ATTEMPT_TIMEOUT) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(ATTEMPT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(ATTEMPT_TIMEOUT));
    if stream
        .write_all(b"GET /ready HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 16];
    let mut read = 0;
    while read < head.len() {
        match stream.read(&mut head[read..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    head[..read].starts_with(b"HTTP/1.1 200") || head[..read].starts_with(b"HTTP/1.0 200")
}

/// Polls until ready (true) or `timeout` passes (false).
pub fn wait_ready(admin: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if is_ready(admin) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve(status: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut conn = conn;
                let mut buf = [0u8; 256];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                );
            }
        });
        addr
    }

    #[test]
    fn ready_only_on_200() {
        assert!(wait_ready(serve("200 OK"), Duration::from_secs(2)));
        assert!(!wait_ready(
            serve("503 Service Unavailable"),
            Duration::from_millis(300)
        ));
        // Nothing listening: times out.
        let closed = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        assert!(!wait_ready(closed, Duration::from_millis(300)));
    }
}

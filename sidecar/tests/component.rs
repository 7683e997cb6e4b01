//! Component tests: the real binary in explicit mode on loopback against real HTTP/1.1, h2c,
//! gRPC-like and TCP servers and a recording collector. They assert the headers the app sees
//! on the wire and the span JSON the collector receives.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn tag<'a>(span: &'a Value, key: &str) -> &'a str {
    span["tags"][key]
        .as_str()
        .unwrap_or_else(|| panic!("tag {key} missing in {span}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_request_without_context_starts_a_trace_and_rewrites_headers() {
    let app = App::http1().await;
    let collector = Collector::start().await;
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        collector: Some(collector.endpoint()),
        ..Default::default()
    })
    .await;

    let (status, headers, body) = get(proxy.inbound, "/trace/1?x=1", &[("user-agent", "curl/8")])
        .await
        .expect("request");
    assert_eq!(status, 200);
    assert_eq!(body, "hello from app");
    assert_eq!(header(&headers, "x-app"), "1");

    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    let h = &seen[0].headers;
    assert_eq!(seen[0].uri, "/trace/1?x=1");
    assert_eq!(header(h, "host"), "service1:8000");
    let trace_id = header(h, "x-b3-traceid");
    let span_id = header(h, "x-b3-spanid");
    assert!(is_hex(trace_id, 32), "128-bit trace id: {trace_id}");
    assert!(is_hex(span_id, 16), "{span_id}");
    assert_eq!(header(h, "x-b3-sampled"), "1");
    assert!(
        h.get("x-b3-parentspanid").is_none(),
        "a root span has no parent: {h:?}"
    );
    assert_eq!(
        header(h, "traceparent"),
        format!("00-{trace_id}-{span_id}-01")
    );
    let request_id = header(h, "x-request-id");
    assert!(!request_id.is_empty());

    let spans = collector.wait_spans(1).await;
    assert_eq!(spans.len(), 1, "{spans:?}");
    let s = &spans[0];
    assert_eq!(s["traceId"], trace_id);
    assert_eq!(s["id"], span_id);
    assert!(s.get("parentId").is_none(), "{s}");
    assert_eq!(s["kind"], "SERVER");
    // Default names use the route template: the numeric segment becomes {id}.
    assert_eq!(s["name"], "GET /trace/{id}");
    assert_eq!(s["localEndpoint"]["serviceName"], "service1");
    assert_eq!(s["localEndpoint"]["port"], app.addr.port());
    assert_eq!(tag(s, "http.method"), "GET");
    assert_eq!(tag(s, "http.path"), "/trace/1");
    // The app saw the query string; the span does not keep it (no recordQueryString).
    assert_eq!(tag(s, "http.url"), "http://service1:8000/trace/1");
    assert_eq!(tag(s, "http.status_code"), "200");
    assert_eq!(tag(s, "http.protocol"), "HTTP/1.1");
    assert_eq!(tag(s, "guid:x-request-id"), request_id);
    assert_eq!(tag(s, "upstream_address"), app.addr.to_string());
    assert_eq!(tag(s, "response_size"), "14");
    assert!(s["tags"].get("error").is_none(), "{s}");
    assert!(s["duration"].as_u64().is_some_and(|d| d >= 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_request_with_b3_context_becomes_a_child_server_span() {
    let app = App::http1().await;
    let collector = Collector::start().await;
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        collector: Some(collector.endpoint()),
        ..Default::default()
    })
    .await;
    let trace = "463ac35c9f6413ad48485a3953bb6124";
    let parent = "a2fb4a1d1a96d312";
    let (status, _, _) = get(
        proxy.inbound,
        "/trace/2",
        &[
            ("x-b3-traceid", trace),
            ("x-b3-spanid", parent),
            ("x-b3-sampled", "1"),
            ("x-request-id", "req-42"),
            ("authorization", "Bearer secret"),
        ],
    )
    .await
    .expect("request");
    assert_eq!(status, 200);
    let h = &app.seen()[0].headers;
    assert_eq!(header(h, "x-b3-traceid"), trace);
    assert_eq!(header(h, "x-b3-parentspanid"), parent);
    let span_id = header(h, "x-b3-spanid").to_owned();
    assert_ne!(span_id, parent);
    assert_eq!(header(h, "x-request-id"), "req-42");
    assert_eq!(
        header(h, "authorization"),
        "Bearer secret",
        "forwarded untouched"
    );

    let s = &collector.wait_spans(1).await[0];
    assert_eq!(s["traceId"], trace);
    assert_eq!(s["parentId"], parent);
    assert_eq!(s["id"], span_id.as_str());
    assert_eq!(s["kind"], "SERVER");
    assert_eq!(tag(s, "guid:x-request-id"), "req-42");
    assert!(
        !s.to_string().contains("secret"),
        "authorization must not be recorded: {s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_request_becomes_a_client_span_and_the_callee_sees_it_as_parent() {
    let callee = App::http1().await;
    let collector = Collector::start().await;
    let proxy = Proxy::start(ProxyOpts {
        outbound_to: Some(callee.addr),
        collector: Some(collector.endpoint()),
        ..Default::default()
    })
    .await;
    let trace = "463ac35c9f6413ad48485a3953bb6124";
    let server_span = "b7ad6b7169203331";
    let mut c = H1::connect(proxy.outbound).await.expect("connect");
    let req = Request::builder()
        .uri("/trace/3")
        .header("host", "service2:8000")
        .header("x-b3-traceid", trace)
        .header("x-b3-spanid", server_span)
        .header("x-b3-sampled", "1")
        .header("b3", format!("{trace}-{server_span}-1"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let (status, _, _) = c.send(req).await.expect("send");
    assert_eq!(status, 200);
    let h = &callee.seen()[0].headers;
    let client_span = header(h, "x-b3-spanid").to_owned();
    assert_eq!(header(h, "x-b3-parentspanid"), server_span);
    assert_eq!(header(h, "x-b3-traceid"), trace);
    // The single header that arrived is rewritten too (Envoy forwards it stale).
    assert_eq!(
        header(h, "b3"),
        format!("{trace}-{client_span}-1-{server_span}")
    );

    let s = &collector.wait_spans(1).await[0];
    assert_eq!(s["kind"], "CLIENT");
    assert_eq!(s["parentId"], server_span);
    assert_eq!(s["id"], client_span.as_str());
    assert_eq!(s["name"], "GET service2:8000/trace/{id}");
    assert_eq!(tag(s, "http.status_code"), "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_reuses_both_connections_and_sampled_zero_is_respected() {
    let app = App::http1().await;
    let collector = Collector::start().await;
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        collector: Some(collector.endpoint()),
        ..Default::default()
    })
    .await;
    let mut c = H1::connect(proxy.inbound).await.expect("connect");
    let (s1, _, _) = c.get("/a", &[("x-b3-sampled", "0")]).await.expect("a");
    let (s2, _, _) = c.get("/b", &[("b3", "0")]).await.expect("b");
    let (s3, _, _) = c.get("/c", &[]).await.expect("c");
    assert_eq!((s1.as_u16(), s2.as_u16(), s3.as_u16()), (200, 200, 200));
    let seen = app.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|s| s.conn == 1),
        "upstream connection reused: {seen:?}"
    );
    assert_eq!(header(&seen[0].headers, "x-b3-sampled"), "0");
    assert_eq!(
        proxy
            .metric("sidetrace_proxy_connections_total{direction=\"inbound\"}")
            .await,
        1.0
    );
    // The proxy recorded one span (/c's) and it has left: the unsampled ones made none.
    let spans = collector.wait_spans(1).await;
    proxy.wait_all_spans_exported(1).await;
    let spans_after = collector.spans();
    assert_eq!(spans_after.len(), 1, "{spans_after:?}");
    assert_eq!(spans[0]["name"], "GET /c");
}

async fn h2_client(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    tx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_is_proxied_as_http2_keeping_the_authority() {
    let app = App::h2().await;
    let collector = Collector::start().await;
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        collector: Some(collector.endpoint()),
        ..Default::default()
    })
    .await;
    let mut tx = h2_client(proxy.inbound).await;
    for path in ["/one", "/two"] {
        let req = Request::builder()
            .uri(format!("http://shop.example:8080{path}"))
            .body(Full::new(Bytes::new()))
            .expect("req");
        let resp = tx.send_request(req).await.expect("h2 response");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), Version::HTTP_2);
        let b = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&b[..], b"hello from app");
    }
    let seen = app.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].version, Version::HTTP_2);
    assert_eq!(seen[0].uri, "http://shop.example:8080/one");
    assert!(
        seen.iter().all(|s| s.conn == 1),
        "one multiplexed upstream connection: {seen:?}"
    );
    assert!(is_hex(header(&seen[0].headers, "x-b3-traceid"), 32));
    let spans = collector.wait_spans(2).await;
    assert!(
        spans.iter().all(|s| tag(s, "http.protocol") == "HTTP/2"),
        "{spans:?}"
    );
    assert_eq!(
        proxy
            .metric(
                "sidetrace_proxy_detected_protocol_total{direction=\"inbound\",protocol=\"http2\"}"
            )
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_trailers_reach_the_client_and_grpc_status_is_tagged() {
    let app = App::h2().await;
    let collector = Collector::start().await;
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        collector: Some(collector.endpoint()),
        ..Default::default()
    })
    .await;
    let mut tx = h2_client(proxy.inbound).await;
    let req = Request::builder()
        .method("POST")
        .uri("http://checkout:50051/grpc.Checkout/Pay")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-want-grpc-status", "5")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .expect("req");
    let resp = tx.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().expect("trailers forwarded");
    assert_eq!(trailers["grpc-status"], "5");
    assert_eq!(trailers["grpc-message"], "from-app");
    assert_eq!(&collected.to_bytes()[..], &[0, 0, 0, 0, 2, 8, 1]);
    assert_eq!(header(&app.seen()[0].headers, "te"), "trailers");

    let s = &collector.wait_spans(1).await[0];
    assert_eq!(tag(s, "http.protocol"), "gRPC");
    assert_eq!(tag(s, "grpc.status_code"), "5");
    assert_eq!(s["name"], "POST /grpc.Checkout/Pay");
    assert_eq!(
        proxy
            .metric("sidetrace_proxy_grpc_requests_total{direction=\"inbound\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_becomes_a_tunnel() {
    let app = App::http1().await;
    let collector = Collector::start().await;
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        collector: Some(collector.endpoint()),
        ..Default::default()
    })
    .await;
    let mut s = TcpStream::connect(proxy.inbound).await.expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: chat:80\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut byte))
            .await
            .expect("101 in time")
            .expect("read");
        assert_eq!(
            n,
            1,
            "closed before the 101: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"ping"[..], &b"\x81\x05hello"[..]] {
        s.write_all(msg).await.expect("write");
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(WAIT, s.read_exact(&mut buf))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(buf, msg);
    }
    let seen = app.seen();
    assert_eq!(header(&seen[0].headers, "upgrade"), "websocket");
    assert_eq!(
        header(&seen[0].headers, "sec-websocket-key"),
        "dGhlIHNhbXBsZSBub25jZQ=="
    );
    let span = &collector.wait_spans(1).await[0];
    assert_eq!(tag(span, "http.status_code"), "101");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_is_echoed_and_counted() {
    let echo = echo_server().await;
    let proxy = Proxy::start(ProxyOpts {
        outbound_to: Some(echo),
        ..Default::default()
    })
    .await;
    let out = raw_exchange(proxy.outbound, b"\x00\x01binary protocol\xff", true)
        .await
        .expect("echo");
    assert_eq!(out, b"\x00\x01binary protocol\xff");
    let tls = raw_exchange(
        proxy.outbound,
        &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5],
        true,
    )
    .await
    .expect("tls");
    assert_eq!(tls, [0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]);
    let m = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "sidetrace_proxy_detected_protocol_total{direction=\"outbound\",protocol=\"opaque\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            "sidetrace_proxy_detected_protocol_total{direction=\"outbound\",protocol=\"tls\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_speaks_first_protocols_work_after_the_detection_timeout() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                s.write_all(b"220 smtp.example ESMTP ready\r\n").await.ok();
                let mut buf = [0u8; 64];
                if let Ok(n) = s.read(&mut buf).await
                    && buf[..n].starts_with(b"QUIT")
                {
                    s.write_all(b"221 bye\r\n").await.ok();
                }
            });
        }
    });
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(addr),
        ..Default::default()
    })
    .await;
    let mut s = TcpStream::connect(proxy.inbound).await.expect("connect");
    let mut banner = [0u8; 30];
    tokio::time::timeout(WAIT, s.read_exact(&mut banner))
        .await
        .expect("banner in time")
        .expect("banner");
    assert_eq!(&banner, b"220 smtp.example ESMTP ready\r\n");
    s.write_all(b"QUIT\r\n").await.expect("write");
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .expect("eof")
        .expect("read");
    assert_eq!(rest, b"221 bye\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gives_502_and_an_error_span() {
    let collector = Collector::start().await;
    let dead = loopback(free_port());
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(dead),
        collector: Some(collector.endpoint()),
        ..Default::default()
    })
    .await;
    let (status, _, _) = get(proxy.inbound, "/x", &[]).await.expect("request");
    assert_eq!(status, 502);
    let s = &collector.wait_spans(1).await[0];
    assert_eq!(tag(s, "http.status_code"), "502");
    assert!(tag(s, "error").contains("connect"), "{s}");
    assert_eq!(
        proxy
            .metric("sidetrace_proxy_upstream_errors_total{direction=\"inbound\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_paths_and_kubelet_probes_are_proxied_untraced() {
    let app = App::http1().await;
    let collector = Collector::start().await;
    let config = write_config("exclude", "excludePaths: [/healthz]\n");
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        collector: Some(collector.endpoint()),
        config: Some(config),
        ..Default::default()
    })
    .await;
    assert_eq!(
        get(proxy.inbound, "/healthz", &[])
            .await
            .expect("healthz")
            .0,
        200
    );
    assert_eq!(
        get(proxy.inbound, "/live", &[("user-agent", "kube-probe/1.34")])
            .await
            .expect("probe")
            .0,
        200
    );
    assert_eq!(
        get(proxy.inbound, "/traced", &[]).await.expect("traced").0,
        200
    );
    let seen = app.seen();
    assert!(
        seen[0].headers.get("x-b3-traceid").is_none(),
        "{:?}",
        seen[0].headers
    );
    assert!(
        seen[1].headers.get("x-b3-traceid").is_none(),
        "{:?}",
        seen[1].headers
    );
    let spans = collector.wait_spans(1).await;
    proxy.wait_all_spans_exported(1).await;
    assert_eq!(collector.spans().len(), 1);
    assert_eq!(spans[0]["name"], "GET /traced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_declared_tcp_skips_detection_and_is_not_parsed() {
    let app = App::http1().await;
    let collector = Collector::start().await;
    let config = write_config(
        "tcp-port",
        &format!("ports: [{{port: {}, protocol: tcp}}]\n", app.addr.port()),
    );
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        collector: Some(collector.endpoint()),
        config: Some(config),
        ..Default::default()
    })
    .await;
    assert_eq!(get(proxy.inbound, "/raw", &[]).await.expect("raw").0, 200);
    assert!(app.seen()[0].headers.get("x-b3-traceid").is_none());
    assert_eq!(
        proxy
            .metric(
                "sidetrace_proxy_detected_protocol_total{direction=\"inbound\",protocol=\"opaque\"}"
            )
            .await,
        1.0
    );
}

/// A pooled client connects first and sends later. On a port declared `http` that must still
/// be traced; on an undeclared port the short detection timeout relays it as opaque TCP (the
/// documented trade-off that keeps server-speaks-first protocols working).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_first_request_is_traced_on_a_declared_http_port() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = App::http1().await;
    let collector = Collector::start().await;
    let config = write_config(
        "late-http",
        &format!("ports: [{{port: {}, protocol: http}}]\n", app.addr.port()),
    );
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        collector: Some(collector.endpoint()),
        config: Some(config),
        ..Default::default()
    })
    .await;
    let mut conn = tokio::net::TcpStream::connect(proxy.inbound)
        .await
        .expect("connect");
    // Well past the 100 ms detection timeout.
    tokio::time::sleep(Duration::from_millis(600)).await;
    conn.write_all(b"GET /late HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out))
        .await
        .expect("answered in time")
        .expect("read");
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    assert!(
        app.seen()[0].headers.get("x-b3-traceid").is_some(),
        "the late request was relayed untraced"
    );
    let spans = collector.wait_spans(1).await;
    assert_eq!(spans[0]["name"], "GET /late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_http1_requests_are_answered_in_order() {
    let app = App::http1().await;
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        ..Default::default()
    })
    .await;
    let out = raw_exchange(
        proxy.inbound,
        b"POST /first HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nfirstGET /second HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        false,
    )
    .await
    .expect("pipelined");
    let text = String::from_utf8_lossy(&out);
    let first = text.find("first").expect("first response body");
    let second = text.find("hello from app").expect("second response body");
    assert!(first < second, "{text}");
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    let seen = app.seen();
    assert_eq!(
        seen.iter().map(|s| s.uri.as_str()).collect::<Vec<_>>(),
        ["/first", "/second"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnels_pass_through() {
    let app = App::http1().await;
    let proxy = Proxy::start(ProxyOpts {
        outbound_to: Some(app.addr),
        ..Default::default()
    })
    .await;
    let mut s = TcpStream::connect(proxy.outbound).await.expect("connect");
    s.write_all(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n")
        .await
        .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut byte))
            .await
            .expect("response in time")
            .expect("read");
        assert_eq!(n, 1, "closed early: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s.write_all(b"\x00\x00\x00\x08tunnel!")
        .await
        .expect("write");
    let mut buf = [0u8; 11];
    tokio::time::timeout(WAIT, s.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&buf, b"\x00\x00\x00\x08tunnel!");
    assert_eq!(app.seen()[0].method, "CONNECT");
    assert_eq!(app.seen()[0].uri, "db.internal:5432");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_to_an_unreachable_upstream_gets_grpc_status_unavailable() {
    let collector = Collector::start().await;
    let proxy = Proxy::start(ProxyOpts {
        outbound_to: Some(loopback(free_port())),
        collector: Some(collector.endpoint()),
        ..Default::default()
    })
    .await;
    let mut tx = h2_client(proxy.outbound).await;
    let req = Request::builder()
        .method("POST")
        .uri("http://payments:50051/grpc.Payments/Charge")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .expect("req");
    let resp = tx.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(header(resp.headers(), "grpc-status"), "14");
    assert_eq!(header(resp.headers(), "content-type"), "application/grpc");
    let s = &collector.wait_spans(1).await[0];
    assert_eq!(s["kind"], "CLIENT");
    assert_eq!(tag(s, "grpc.status_code"), "14");
    assert!(tag(s, "error").contains("connect"), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_through_both_ways() {
    let app = App::http1().await;
    let proxy = Proxy::start(ProxyOpts {
        inbound_to: Some(app.addr),
        ..Default::default()
    })
    .await;
    let payload: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut c = H1::connect(proxy.inbound).await.expect("connect");
    let req = Request::builder()
        .method("POST")
        .uri("/upload")
        .header("host", "files:80")
        .body(Full::new(Bytes::from(payload.clone())))
        .expect("req");
    let (status, headers, body) = c.send(req).await.expect("upload");
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-length"),
        payload.len().to_string()
    );
    assert_eq!(body.len(), String::from_utf8_lossy(&payload).len());
    assert_eq!(
        header(&app.seen()[0].headers, "content-length"),
        payload.len().to_string()
    );
}

//! Rough per-request cost of the tracing core, without any I/O: `start_hop` on a request
//! carrying B3 context, `finish_after`, and the JSON encoding of the span (amortised as in a
//! batch of 100). Run with `cargo run -p sidetrace-trace --release --example hop_cost`.
//! A figure to compare changes against, not a test.

use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderValue};
use sidetrace_trace::{
    Direction, RequestInfo, ResponseInfo, TracerConfig, encode_zipkin_v2, start_hop,
};

fn main() {
    let cfg = TracerConfig::new("bench");
    let req = RequestInfo {
        direction: Direction::Inbound,
        method: "GET",
        path: "/trace/2?x=1",
        authority: Some("service2:8000"),
        scheme: "http",
        user_agent: Some("curl/8.5"),
        local_addr: "10.1.0.5:8000".parse().expect("literal"),
        peer_addr: "10.1.0.9:40000".parse().expect("literal"),
        upstream_addr: "127.0.0.1:8000".parse().expect("literal"),
        protocol: "HTTP/1.1",
        conn_tags: None,
    };
    let mut base = HeaderMap::new();
    base.insert(
        "x-b3-traceid",
        HeaderValue::from_static("463ac35c9f6413ad48485a3953bb6124"),
    );
    base.insert("x-b3-spanid", HeaderValue::from_static("a2fb4a1d1a96d312"));
    base.insert("x-b3-sampled", HeaderValue::from_static("1"));
    base.insert(
        "x-request-id",
        HeaderValue::from_static("5f0c0f3e-1b2a-4c3d-8e9f-0a1b2c3d4e5f"),
    );
    let resp = ResponseInfo {
        status: Some(200),
        response_size: Some(512),
        ..ResponseInfo::default()
    };
    for (label, rounds) in [("warm-up", 20_000u32), ("measured", 200_000)] {
        let mut batch = Vec::with_capacity(100);
        let mut bytes = 0usize;
        let start = Instant::now();
        for _ in 0..rounds {
            let mut h = base.clone();
            let hop = start_hop(&cfg, &req, &mut h, SystemTime::now()).expect("traced");
            if let Some(span) = hop.finish_after(&resp, Duration::from_micros(120)) {
                batch.push(span);
            }
            if batch.len() == 100 {
                bytes += encode_zipkin_v2(&batch).len();
                batch.clear();
            }
        }
        let per = start.elapsed() / rounds;
        println!(
            "{label}: {per:?} per request (start_hop + finish + 1/100 batch encode), {} bytes/span",
            bytes / rounds as usize
        );
    }
}

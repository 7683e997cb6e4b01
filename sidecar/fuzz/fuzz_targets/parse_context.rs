//! Feeds arbitrary bytes as trace-context header values to the parsers and to `start_hop`.
//!
//! Input layout: lines separated by `\n`; the first byte of a line picks the header (an index
//! into `CONTEXT_HEADERS`, plus `x-request-id` and the request path), the rest is the value.
//! Properties checked: nothing panics; a context that is extracted survives `inject` and a
//! second `extract` unchanged and not malformed; `start_hop` always leaves parseable headers.
#![no_main]

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sidetrace_trace::propagation::{CONTEXT_HEADERS, X_REQUEST_ID, extract, inject};
use sidetrace_trace::{
    Direction, Formats, PropagationFormat, RequestInfo, ResponseInfo, TracerConfig, start_hop,
};

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    let mut path = String::from("/");
    for line in data.split(|b| *b == b'\n') {
        let Some((&sel, value)) = line.split_first() else {
            continue;
        };
        match usize::from(sel) % (CONTEXT_HEADERS.len() + 2) {
            i if i < CONTEXT_HEADERS.len() => {
                if let Ok(v) = HeaderValue::from_bytes(value) {
                    headers.append(CONTEXT_HEADERS[i].clone(), v);
                }
            }
            i if i == CONTEXT_HEADERS.len() => {
                if let Ok(v) = HeaderValue::from_bytes(value) {
                    headers.append(X_REQUEST_ID, v);
                }
            }
            _ => path = String::from_utf8_lossy(value).into_owned(),
        }
    }

    let all = Formats::from_slice(&[
        PropagationFormat::B3Multi,
        PropagationFormat::B3Single,
        PropagationFormat::W3c,
    ]);
    let extracted = extract(&headers);
    if let Some(ctx) = extracted.context {
        let mut out = headers.clone();
        inject(&mut out, &ctx, all, extracted.tracestate.as_ref());
        let again = extract(&out);
        assert!(!again.malformed);
        let back = again.context.expect("re-extracted");
        assert_eq!(
            (back.trace_id, back.span_id, back.sampled, back.debug),
            (ctx.trace_id, ctx.span_id, ctx.sampled, ctx.debug)
        );
        // The single-header grammar has no room for a parent without a sampling decision.
        if ctx.sampled.is_some() {
            assert_eq!(back.parent_id, ctx.parent_id);
        }
    }

    let cfg = TracerConfig {
        exclude_paths: vec!["/healthz".into(), "/debug/*".into()],
        ..TracerConfig::new("fuzz")
    };
    for direction in [Direction::Inbound, Direction::Outbound] {
        let req = RequestInfo {
            direction,
            method: "GET",
            path: &path,
            authority: Some("svc:80"),
            scheme: "http",
            user_agent: None,
            local_addr: "10.0.0.1:80".parse().expect("literal"),
            peer_addr: "10.0.0.2:5000".parse().expect("literal"),
            upstream_addr: "127.0.0.1:80".parse().expect("literal"),
            protocol: "HTTP/1.1",
            conn_tags: None,
        };
        let mut h = headers.clone();
        if let Some(hop) = start_hop(&cfg, &req, &mut h, SystemTime::now()) {
            let after = extract(&h);
            assert!(!after.malformed);
            assert_eq!(after.context.map(|c| c.span_id), Some(hop.context().span_id));
            let _ = hop.finish_after(&ResponseInfo::default(), Duration::from_micros(1));
        }
    }
});

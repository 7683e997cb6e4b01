//! W3C trace context (<https://www.w3.org/TR/trace-context/>): `traceparent` and
//! `tracestate`.

use http::{HeaderMap, HeaderValue};

use super::{MAX_TRACESTATE_LEN, Parsed, TRACEPARENT, TRACESTATE, put, single};
use crate::id::{SpanContext, SpanId, TraceId};

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// W3C trace-context level 1: `version-traceid-parentid-flags`. Hex must be lowercase;
/// version `ff` is invalid; version `00` is exactly 55 characters; a higher version may
/// append `-`-separated fields, which are ignored (the spec's forward-compatibility rule).
pub(super) fn parse_traceparent(headers: &HeaderMap) -> Parsed {
    let value = match single(headers, &TRACEPARENT) {
        Ok(None) => return Parsed::Absent,
        Ok(Some(v)) => v,
        Err(()) => return Parsed::Malformed,
    };
    // Bounded like every other context header: a future version has no business being huge.
    if value.len() < 55 || value.len() > 512 {
        return Parsed::Malformed;
    }
    let b = value.as_bytes();
    let version = &value[..2];
    if !is_lower_hex(version) || version == "ff" || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return Parsed::Malformed;
    }
    if version == "00" && value.len() != 55 {
        return Parsed::Malformed;
    }
    if value.len() > 55 && b[55] != b'-' {
        return Parsed::Malformed;
    }
    let (trace, parent, flags) = (&value[3..35], &value[36..52], &value[53..55]);
    if !is_lower_hex(trace) || !is_lower_hex(parent) || !is_lower_hex(flags) {
        return Parsed::Malformed;
    }
    let (Some(trace_id), Some(span_id), Some(flags)) = (
        TraceId::from_hex(trace),
        SpanId::from_hex(parent),
        u8::from_str_radix(flags, 16).ok(),
    ) else {
        return Parsed::Malformed;
    };
    // A zero upper half is a 64-bit B3 id padded for W3C (the B3 interop rule): keep it
    // 64-bit so B3 headers downstream carry the id the trace started with.
    let trace_id = match u64::try_from(trace_id.as_u128()) {
        Ok(low) => TraceId::from_u64(low).unwrap_or(trace_id),
        Err(_) => trace_id,
    };
    Parsed::Context(SpanContext {
        trace_id,
        span_id,
        parent_id: None,
        sampled: Some(flags & 1 == 1),
        debug: false,
    })
}

/// `tracestate` values joined with `,` (the spec allows splitting it over several header
/// lines), or `None` when absent, not text, or longer than [`MAX_TRACESTATE_LEN`].
pub(super) fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut joined = String::new();
    for v in headers.get_all(&TRACESTATE) {
        let text = v.to_str().ok()?.trim();
        if text.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(text);
        if joined.len() > MAX_TRACESTATE_LEN {
            return None;
        }
    }
    if joined.is_empty() {
        return None;
    }
    HeaderValue::try_from(joined).ok()
}

/// Writes `traceparent: 00-{trace as 32 hex}-{span}-{01|00}`, plus `tracestate` when given.
pub(super) fn inject(headers: &mut HeaderMap, ctx: &SpanContext, tracestate: Option<&HeaderValue>) {
    let flags = if ctx.is_sampled() { "01" } else { "00" };
    let mut v = String::with_capacity(55);
    for part in [
        "00-",
        ctx.trace_id.hex_32(&mut [0; 32]),
        "-",
        ctx.span_id.hex(&mut [0; 16]),
        "-",
        flags,
    ] {
        v.push_str(part);
    }
    put(headers, TRACEPARENT, &v);
    if let Some(ts) = tracestate {
        headers.insert(TRACESTATE, ts.clone());
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::super::tests::{S1, T64, T128, ctx, headers};
    use super::super::{MAX_TRACESTATE_LEN, extract};

    #[test]
    fn traceparent_versions() {
        let tp = format!("00-{T128}-{S1}-01");
        let e = extract(&headers(&[("traceparent", &tp)]));
        assert_eq!(e.context, Some(ctx(T128, S1, None, Some(true))));
        let e = extract(&headers(&[("traceparent", &format!("00-{T128}-{S1}-00"))]));
        assert_eq!(e.sampled, Some(false));
        // A padded 64-bit id stays 64-bit for B3.
        let e = extract(&headers(&[(
            "traceparent",
            &format!("00-0000000000000000{T64}-{S1}-01"),
        )]));
        assert_eq!(e.context, Some(ctx(T64, S1, None, Some(true))));
        // Other flag bits are ignored; sampled is bit 0.
        let e = extract(&headers(&[("traceparent", &format!("00-{T128}-{S1}-03"))]));
        assert_eq!(e.sampled, Some(true));
        // A future version may append fields.
        for future in [
            format!("01-{T128}-{S1}-01"),
            format!("cc-{T128}-{S1}-01-what-the-future-holds"),
        ] {
            let e = extract(&headers(&[("traceparent", &future)]));
            assert_eq!(e.context, Some(ctx(T128, S1, None, Some(true))), "{future}");
        }
    }

    #[test]
    fn traceparent_malformed() {
        for bad in [
            format!("ff-{T128}-{S1}-01"),
            format!("00-{T128}-{S1}-01-extra"),
            format!("cc-{T128}-{S1}-01extra"),
            format!("00-{}-{S1}-01", "0".repeat(32)),
            format!("00-{T128}-0000000000000000-01"),
            format!("00-{}-{S1}-01", T128.to_uppercase()),
            format!("00-{T64}-{S1}-01"),
            format!("00-{T128}-{S1}-1"),
            format!("0-{T128}-{S1}-01"),
            format!("00_{T128}_{S1}_01"),
            format!("00-{T128}-{S1}-0g"),
            format!("zz-{T128}-{S1}-01"),
            format!("cc-{T128}-{S1}-01-{}", "x".repeat(600)),
            "garbage".to_string(),
        ] {
            let e = extract(&headers(&[("traceparent", &bad)]));
            assert!(e.malformed, "{bad}");
            assert_eq!(e.context, None, "{bad}");
        }
    }

    #[test]
    fn tracestate_is_kept_only_with_a_matching_traceparent() {
        let tp = format!("00-{T128}-{S1}-01");
        let h = headers(&[
            ("traceparent", &tp),
            ("tracestate", "rojo=00f067aa0ba902b7"),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]);
        let e = extract(&h);
        assert_eq!(
            e.tracestate,
            Some(HeaderValue::from_static(
                "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
            ))
        );
        let h = headers(&[
            ("x-b3-traceid", T64),
            ("x-b3-spanid", S1),
            ("traceparent", &tp),
            ("tracestate", "rojo=1"),
        ]);
        assert_eq!(extract(&h).tracestate, None, "different trace");
        let long = "k=".to_string() + &"v".repeat(MAX_TRACESTATE_LEN);
        let h = headers(&[("traceparent", &tp), ("tracestate", &long)]);
        assert_eq!(extract(&h).tracestate, None, "oversized");
        let h = headers(&[("traceparent", "bad"), ("tracestate", "rojo=1")]);
        assert_eq!(extract(&h).tracestate, None, "invalid traceparent");
    }
}

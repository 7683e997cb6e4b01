//! B3 propagation (<https://github.com/openzipkin/b3-propagation>): the multi-header form
//! (`x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`, `x-b3-flags`) and the
//! single `b3` header.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{
    B3, Parsed, X_B3_FLAGS, X_B3_PARENTSPANID, X_B3_SAMPLED, X_B3_SPANID, X_B3_TRACEID, put, single,
};
use crate::id::{SpanContext, SpanId, TraceId};

pub(super) fn parse_b3_multi(headers: &HeaderMap) -> Parsed {
    let get = |n: &HeaderName| single(headers, n);
    let (Ok(trace), Ok(span), Ok(parent), Ok(sampled), Ok(flags)) = (
        get(&X_B3_TRACEID),
        get(&X_B3_SPANID),
        get(&X_B3_PARENTSPANID),
        get(&X_B3_SAMPLED),
        get(&X_B3_FLAGS),
    ) else {
        return Parsed::Malformed;
    };
    if trace.is_none() && span.is_none() && parent.is_none() && sampled.is_none() && flags.is_none()
    {
        return Parsed::Absent;
    }
    let sampled = match sampled {
        None => None,
        Some("1" | "true") => Some(true),
        Some("0" | "false") => Some(false),
        Some(_) => return Parsed::Malformed,
    };
    let debug = match flags {
        None | Some("0") => false,
        Some("1") => true,
        Some(_) => return Parsed::Malformed,
    };
    // Debug implies an accept decision (B3 spec), whatever `x-b3-sampled` says.
    let sampled = if debug { Some(true) } else { sampled };
    match (trace, span) {
        (None, None) if parent.is_none() => Parsed::SamplingOnly { sampled, debug },
        (Some(t), Some(s)) => {
            let (Some(trace_id), Some(span_id)) = (TraceId::from_hex(t), SpanId::from_hex(s))
            else {
                return Parsed::Malformed;
            };
            let parent_id = match parent {
                None => None,
                Some(p) => match SpanId::from_hex(p) {
                    Some(p) => Some(p),
                    None => return Parsed::Malformed,
                },
            };
            Parsed::Context(SpanContext {
                trace_id,
                span_id,
                parent_id,
                sampled,
                debug,
            })
        }
        _ => Parsed::Malformed,
    }
}

fn parse_sampling_char(s: &str) -> Option<(Option<bool>, bool)> {
    match s {
        "1" => Some((Some(true), false)),
        "0" => Some((Some(false), false)),
        "d" => Some((Some(true), true)),
        _ => None,
    }
}

pub(super) fn parse_b3_single(headers: &HeaderMap) -> Parsed {
    let value = match single(headers, &B3) {
        Ok(None) => return Parsed::Absent,
        Ok(Some(v)) => v,
        Err(()) => return Parsed::Malformed,
    };
    // Longest valid form: 32 + 1 + 16 + 1 + 1 + 1 + 16.
    if value.len() > 68 {
        return Parsed::Malformed;
    }
    if let Some((sampled, debug)) = parse_sampling_char(value) {
        return Parsed::SamplingOnly { sampled, debug };
    }
    let mut parts = value.split('-');
    let (Some(t), Some(s)) = (parts.next(), parts.next()) else {
        return Parsed::Malformed;
    };
    let (Some(trace_id), Some(span_id)) = (TraceId::from_hex(t), SpanId::from_hex(s)) else {
        return Parsed::Malformed;
    };
    let (sampled, debug) = match parts.next() {
        None => (None, false),
        Some(f) => match parse_sampling_char(f) {
            Some(d) => d,
            None => return Parsed::Malformed,
        },
    };
    let parent_id = match parts.next() {
        None => None,
        Some(p) => match SpanId::from_hex(p) {
            Some(p) => Some(p),
            None => return Parsed::Malformed,
        },
    };
    if parts.next().is_some() {
        return Parsed::Malformed;
    }
    Parsed::Context(SpanContext {
        trace_id,
        span_id,
        parent_id,
        sampled,
        debug,
    })
}

/// Writes `x-b3-traceid` (the id's own width), `x-b3-spanid`, `x-b3-parentspanid` when there
/// is a parent, and `x-b3-sampled: 1|0`, or `x-b3-flags: 1` alone for debug.
pub(super) fn inject_multi(headers: &mut HeaderMap, ctx: &SpanContext) {
    put(headers, X_B3_TRACEID, ctx.trace_id.hex(&mut [0; 32]));
    put(headers, X_B3_SPANID, ctx.span_id.hex(&mut [0; 16]));
    if let Some(p) = ctx.parent_id {
        put(headers, X_B3_PARENTSPANID, p.hex(&mut [0; 16]));
    }
    if ctx.debug {
        headers.insert(X_B3_FLAGS, HeaderValue::from_static("1"));
    } else if let Some(s) = ctx.sampled {
        headers.insert(
            X_B3_SAMPLED,
            HeaderValue::from_static(if s { "1" } else { "0" }),
        );
    }
}

/// Writes `b3: {trace}-{span}-{1|0|d}[-{parent}]`.
pub(super) fn inject_single(headers: &mut HeaderMap, ctx: &SpanContext) {
    let sampling_char = if ctx.debug {
        Some("d")
    } else {
        ctx.sampled.map(|s| if s { "1" } else { "0" })
    };
    // Longest form: 32 + 1 + 16 + 1 + 1 + 1 + 16.
    let mut v = String::with_capacity(68);
    v.push_str(ctx.trace_id.hex(&mut [0; 32]));
    v.push('-');
    v.push_str(ctx.span_id.hex(&mut [0; 16]));
    if let Some(c) = sampling_char {
        v.push('-');
        v.push_str(c);
        // The parent may only follow a sampling field in the single-header grammar.
        if let Some(p) = ctx.parent_id {
            v.push('-');
            v.push_str(p.hex(&mut [0; 16]));
        }
    }
    put(headers, B3, &v);
}

#[cfg(test)]
mod tests {
    use sidetrace_contract::PropagationFormat;

    use super::super::tests::{P1, S1, T64, T128, ctx, headers};
    use super::super::{Formats, extract};
    use crate::id::{SpanContext, SpanId};

    #[test]
    fn b3_multi_64_and_128_bit() {
        for trace in [T64, T128] {
            let e = extract(&headers(&[
                ("x-b3-traceid", trace),
                ("x-b3-spanid", S1),
                ("x-b3-parentspanid", P1),
                ("x-b3-sampled", "1"),
            ]));
            assert_eq!(e.context, Some(ctx(trace, S1, Some(P1), Some(true))));
            assert_eq!(e.arrived, Formats::NONE.with(PropagationFormat::B3Multi));
            assert!(!e.malformed);
            assert_eq!(
                e.context.map(|c| c.trace_id.to_hex()).as_deref(),
                Some(trace)
            );
        }
    }

    #[test]
    fn b3_multi_sampled_spellings_and_debug() {
        for (v, want) in [("1", true), ("true", true), ("0", false), ("false", false)] {
            let e = extract(&headers(&[
                ("x-b3-traceid", T64),
                ("x-b3-spanid", S1),
                ("x-b3-sampled", v),
            ]));
            assert_eq!(e.sampled, Some(want), "{v}");
        }
        let e = extract(&headers(&[
            ("x-b3-traceid", T64),
            ("x-b3-spanid", S1),
            ("x-b3-flags", "1"),
        ]));
        assert!(e.debug);
        assert!(e.context.expect("ctx").is_sampled());
        // Uppercase hex is accepted on input and normalised on output.
        let e = extract(&headers(&[
            ("x-b3-traceid", "463AC35C9F6413AD"),
            ("x-b3-spanid", "A2FB4A1D1A96D312"),
        ]));
        assert_eq!(e.context, Some(ctx(T64, S1, None, None)));
    }

    #[test]
    fn b3_multi_sampling_only_and_malformed() {
        let e = extract(&headers(&[("x-b3-sampled", "0")]));
        assert_eq!(
            (e.context, e.sampled, e.malformed),
            (None, Some(false), false)
        );
        let e = extract(&headers(&[("x-b3-flags", "1")]));
        assert!(e.debug && e.context.is_none() && !e.malformed);
        for bad in [
            &[("x-b3-traceid", T64)][..],
            &[("x-b3-spanid", S1)],
            &[("x-b3-parentspanid", P1)],
            &[("x-b3-traceid", T64), ("x-b3-spanid", "0000000000000000")],
            &[("x-b3-traceid", "0000000000000000"), ("x-b3-spanid", S1)],
            &[("x-b3-traceid", "463ac35c9f6413ad4"), ("x-b3-spanid", S1)],
            &[
                ("x-b3-traceid", T64),
                ("x-b3-spanid", S1),
                ("x-b3-sampled", "yes"),
            ],
            &[
                ("x-b3-traceid", T64),
                ("x-b3-spanid", S1),
                ("x-b3-flags", "2"),
            ],
            &[
                ("x-b3-traceid", T64),
                ("x-b3-spanid", S1),
                ("x-b3-parentspanid", "x"),
            ],
            &[
                ("x-b3-traceid", T64),
                ("x-b3-traceid", T128),
                ("x-b3-spanid", S1),
            ],
        ] {
            let e = extract(&headers(bad));
            assert!(e.malformed, "{bad:?}");
            assert_eq!(e.context, None, "{bad:?}");
            assert!(e.arrived.contains(PropagationFormat::B3Multi), "{bad:?}");
        }
    }

    #[test]
    fn b3_single_forms() {
        let cases: &[(&str, Option<SpanContext>, Option<bool>, bool)] = &[
            (
                &format!("{T128}-{S1}"),
                Some(ctx(T128, S1, None, None)),
                None,
                false,
            ),
            (
                &format!("{T64}-{S1}-1"),
                Some(ctx(T64, S1, None, Some(true))),
                Some(true),
                false,
            ),
            (
                &format!("{T128}-{S1}-0-{P1}"),
                Some(ctx(T128, S1, Some(P1), Some(false))),
                Some(false),
                false,
            ),
            ("0", None, Some(false), false),
            ("1", None, Some(true), false),
            ("d", None, Some(true), true),
        ];
        for (v, want, sampled, debug) in cases {
            let e = extract(&headers(&[("b3", v)]));
            assert_eq!(
                e.context.map(|c| SpanContext { debug: false, ..c }),
                *want,
                "{v}"
            );
            assert_eq!(
                (e.sampled, e.debug, e.malformed),
                (*sampled, *debug, false),
                "{v}"
            );
        }
        let e = extract(&headers(&[("b3", &format!("{T64}-{S1}-d-{P1}"))]));
        let c = e.context.expect("debug ctx");
        assert!(c.debug && c.is_sampled());
        assert_eq!(c.parent_id, SpanId::from_hex(P1));
    }

    #[test]
    fn b3_single_malformed() {
        for bad in [
            "",
            "2",
            "true",
            T64,
            &format!("{T64}-"),
            &format!("{T64}-{S1}-"),
            &format!("{T64}-{S1}-x"),
            &format!("{T64}-{S1}-1-"),
            &format!("{T64}-{S1}-1-{P1}-extra"),
            &format!("{T64}-{S1}-{P1}"),
            &format!("0000000000000000-{S1}-1"),
            &format!("{T64}{T64}{T64}-{S1}-1"),
            &"a".repeat(4096),
        ] {
            let e = extract(&headers(&[("b3", bad)]));
            assert!(e.malformed, "{bad:?}");
            assert_eq!(e.context, None, "{bad:?}");
        }
    }
}

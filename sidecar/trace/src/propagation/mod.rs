//! Reading and writing trace context headers: B3 multi-header, B3 single (`b3`) and W3C
//! `traceparent`/`tracestate`.
//!
//! [`extract`] is total: it never fails, it reports what it found. A header that is present
//! but invalid marks the result `malformed` and is ignored; the caller counts that and starts a
//! new trace when no other valid context arrived.
//!
//! Precedence when several formats arrive: `b3` single, then B3 multi, then W3C.
//! - `b3` single first because a client that bothered to send the compact form is the newer
//!   B3 implementation (Brave, OpenTelemetry's B3 propagator prefer it), and the header is
//!   atomic: one value cannot be half-copied the way five headers can.
//! - B3 multi before W3C because it is what the Envoy-demo style apps copy, and it carries the
//!   parent span id and the debug flag, which `traceparent` cannot express.
//! - When the preferred format is malformed, the next valid one is used (the malformed one is
//!   still counted), so one bad header does not throw away a good context beside it.
//!
//! [`inject`] first removes every context header of every format (so nothing stale survives),
//! then writes the requested formats from one [`SpanContext`].
//!
//! Each format is parsed and written in its own file (`b3.rs`: B3 multi and single;
//! `w3c.rs`: `traceparent`/`tracestate`); this module holds the header names, the precedence
//! and the shared plumbing.

use http::{HeaderMap, HeaderName, HeaderValue};
use sidetrace_contract::PropagationFormat;

use crate::id::SpanContext;

mod b3;
mod w3c;

/// `x-b3-traceid`: 16 or 32 hex digits.
pub const X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// `x-b3-spanid`: 16 hex digits.
pub const X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// `x-b3-parentspanid`: 16 hex digits.
pub const X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// `x-b3-sampled`: `1`/`0` (`true`/`false` accepted on input).
pub const X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// `x-b3-flags`: `1` means debug.
pub const X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
/// The single-header B3 form.
pub const B3: HeaderName = HeaderName::from_static("b3");
/// W3C trace context.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C vendor state, passed through untouched alongside a valid `traceparent`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// Request correlation id (Envoy's `guid:x-request-id` tag).
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every header [`inject`] owns; all of them are removed before writing.
pub const CONTEXT_HEADERS: [HeaderName; 8] = [
    X_B3_TRACEID,
    X_B3_SPANID,
    X_B3_PARENTSPANID,
    X_B3_SAMPLED,
    X_B3_FLAGS,
    B3,
    TRACEPARENT,
    TRACESTATE,
];

/// Longest `tracestate` passed through. The W3C spec lets a hop truncate; 512 is the size it
/// asks every implementation to accept, and it keeps a hostile value from riding along.
pub const MAX_TRACESTATE_LEN: usize = 512;

/// A set of [`PropagationFormat`]s (which arrived, which to write).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Formats(u8);

impl Formats {
    /// No format.
    pub const NONE: Self = Self(0);

    fn bit(f: PropagationFormat) -> u8 {
        match f {
            PropagationFormat::B3Multi => 1,
            PropagationFormat::B3Single => 2,
            PropagationFormat::W3c => 4,
        }
    }

    /// The set with `f` added.
    pub fn with(self, f: PropagationFormat) -> Self {
        Self(self.0 | Self::bit(f))
    }

    /// Whether `f` is in the set.
    pub fn contains(self, f: PropagationFormat) -> bool {
        self.0 & Self::bit(f) != 0
    }

    /// Both sets together.
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The set of the listed formats.
    pub fn from_slice(formats: &[PropagationFormat]) -> Self {
        formats.iter().fold(Self::NONE, |s, f| s.with(*f))
    }
}

/// What arrived on a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extracted {
    /// The caller's span (`span_id` is the caller's span), from the preferred valid format.
    pub context: Option<SpanContext>,
    /// Sampling decision: the context's, or a sampling-only header's (`b3: 0`,
    /// `x-b3-sampled` without ids) when there is no context.
    pub sampled: Option<bool>,
    /// Debug flag, from the context or a sampling-only header.
    pub debug: bool,
    /// Formats of which at least one header was present (valid or not): all are rewritten.
    pub arrived: Formats,
    /// `tracestate`, kept only with a valid `traceparent` of the same trace as `context`.
    pub tracestate: Option<HeaderValue>,
    /// Some context header was present but invalid and was ignored.
    pub malformed: bool,
}

/// Outcome of parsing one format.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Absent,
    Malformed,
    /// Only a sampling decision, no ids.
    SamplingOnly {
        sampled: Option<bool>,
        debug: bool,
    },
    Context(SpanContext),
}

/// The single value of a header as trimmed text. `Err` when it is repeated or not visible
/// ASCII: two different contexts for one request are ambiguous, so both are dropped.
fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h str>, ()> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(());
    }
    let text = first.to_str().map_err(|_| ())?;
    Ok(Some(text.trim_matches(|c: char| c == ' ' || c == '\t')))
}

/// Reads every supported format from `headers`. Never fails; see the module docs for
/// precedence.
pub fn extract(headers: &HeaderMap) -> Extracted {
    if !any_context_header(headers) {
        return Extracted::default();
    }
    let single = b3::parse_b3_single(headers);
    let multi = b3::parse_b3_multi(headers);
    let w3c = w3c::parse_traceparent(headers);

    let mut out = Extracted::default();
    for (format, parsed) in [
        (PropagationFormat::B3Single, &single),
        (PropagationFormat::B3Multi, &multi),
        (PropagationFormat::W3c, &w3c),
    ] {
        match parsed {
            Parsed::Absent => {}
            Parsed::Malformed => {
                out.arrived = out.arrived.with(format);
                out.malformed = true;
            }
            Parsed::SamplingOnly { .. } | Parsed::Context(_) => {
                out.arrived = out.arrived.with(format);
            }
        }
    }
    // A `tracestate` alone still means the W3C format is in use downstream.
    if headers.contains_key(&TRACESTATE) {
        out.arrived = out.arrived.with(PropagationFormat::W3c);
    }

    let preferred = [&single, &multi, &w3c];
    if let Some(ctx) = preferred.iter().find_map(|p| match p {
        Parsed::Context(c) => Some(*c),
        _ => None,
    }) {
        out.context = Some(ctx);
        out.sampled = ctx.sampled;
        out.debug = ctx.debug;
    } else if let Some((sampled, debug)) = preferred.iter().find_map(|p| match p {
        Parsed::SamplingOnly { sampled, debug } => Some((*sampled, *debug)),
        _ => None,
    }) {
        out.sampled = sampled;
        out.debug = debug;
    }
    if let (Parsed::Context(w), Some(ctx)) = (&w3c, &out.context)
        && w.trace_id.as_u128() == ctx.trace_id.as_u128()
    {
        out.tracestate = w3c::tracestate(headers);
    }
    out
}

fn put(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    // Our values are hex and dashes, always valid header text; the fallible conversion only
    // avoids an unwrap. The value is copied once, into the header.
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// Whether any trace context header is present. One pass comparing the request's own
/// header names is cheaper than hashing each of the eight context names for a lookup, and
/// most requests at a trace's edge carry none.
fn any_context_header(headers: &HeaderMap) -> bool {
    headers.keys().any(|k| CONTEXT_HEADERS.contains(k))
}

/// Removes every trace context header of every format.
pub fn remove_context_headers(headers: &mut HeaderMap) {
    if !any_context_header(headers) {
        return;
    }
    for name in &CONTEXT_HEADERS {
        headers.remove(name);
    }
}

/// Replaces all context headers with `ctx` written in `formats`.
///
/// - B3 multi: `x-b3-traceid` (the id's own width), `x-b3-spanid`, `x-b3-parentspanid` when
///   there is a parent, and `x-b3-sampled: 1|0` — or `x-b3-flags: 1` alone for debug, since
///   the B3 spec says debug implies sampled and `x-b3-sampled` is then not sent.
/// - B3 single: `{trace}-{span}-{1|0|d}[-{parent}]`.
/// - W3C: `00-{trace as 32 hex}-{span}-{01|00}`, plus `tracestate` when given.
pub fn inject(
    headers: &mut HeaderMap,
    ctx: &SpanContext,
    formats: Formats,
    tracestate: Option<&HeaderValue>,
) {
    remove_context_headers(headers);
    if formats.contains(PropagationFormat::B3Multi) {
        b3::inject_multi(headers, ctx);
    }
    if formats.contains(PropagationFormat::B3Single) {
        b3::inject_single(headers, ctx);
    }
    if formats.contains(PropagationFormat::W3c) {
        w3c::inject(headers, ctx, tracestate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{SpanId, TraceId};

    pub(super) const T64: &str = "463ac35c9f6413ad";
    pub(super) const T128: &str = "463ac35c9f6413ad48485a3953bb6124";
    pub(super) const S1: &str = "a2fb4a1d1a96d312";
    pub(super) const P1: &str = "0020000000000001";

    pub(super) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    pub(super) fn ctx(
        trace: &str,
        span: &str,
        parent: Option<&str>,
        sampled: Option<bool>,
    ) -> SpanContext {
        SpanContext {
            trace_id: TraceId::from_hex(trace).expect("trace"),
            span_id: SpanId::from_hex(span).expect("span"),
            parent_id: parent.map(|p| SpanId::from_hex(p).expect("parent")),
            sampled,
            debug: false,
        }
    }

    #[test]
    fn non_ascii_bytes_are_malformed_not_errors() {
        let mut h = HeaderMap::new();
        h.insert(
            X_B3_TRACEID,
            HeaderValue::from_bytes(b"463ac35c9f6413\xc3\xa9").expect("obs-text is legal"),
        );
        h.insert(X_B3_SPANID, HeaderValue::from_static(S1));
        h.insert(
            B3,
            HeaderValue::from_bytes(b"\xff\xfe-\x80").expect("obs-text"),
        );
        let e = extract(&h);
        assert!(e.malformed);
        assert_eq!(e.context, None);
    }

    #[test]
    fn precedence_is_single_then_multi_then_w3c() {
        let t2 = "11111111111111111111111111111111";
        let t3 = "22222222222222222222222222222222";
        let all = headers(&[
            ("b3", &format!("{T128}-{S1}-1")),
            ("x-b3-traceid", t2),
            ("x-b3-spanid", S1),
            ("traceparent", &format!("00-{t3}-{S1}-01")),
        ]);
        let e = extract(&all);
        assert_eq!(
            e.context.map(|c| c.trace_id.to_hex()).as_deref(),
            Some(T128)
        );
        assert_eq!(
            e.arrived,
            Formats::from_slice(&[
                PropagationFormat::B3Single,
                PropagationFormat::B3Multi,
                PropagationFormat::W3c
            ])
        );
        let mut h = all.clone();
        h.remove(B3);
        assert_eq!(
            extract(&h).context.map(|c| c.trace_id.to_hex()).as_deref(),
            Some(t2)
        );
        // A malformed preferred header falls through to the next valid one, and is counted.
        h.insert(B3, HeaderValue::from_static("nonsense"));
        h.remove(X_B3_TRACEID);
        let e = extract(&h);
        assert!(e.malformed);
        assert_eq!(e.context.map(|c| c.trace_id.to_hex()).as_deref(), Some(t3));
    }

    fn all_formats() -> Formats {
        Formats::from_slice(&[
            PropagationFormat::B3Multi,
            PropagationFormat::B3Single,
            PropagationFormat::W3c,
        ])
    }

    fn text(h: &HeaderMap, n: &str) -> Option<String> {
        h.get(n).map(|v| v.to_str().expect("ascii").to_string())
    }

    #[test]
    fn inject_writes_every_format_and_removes_stale_headers() {
        let mut h = headers(&[
            ("b3", "stale"),
            ("x-b3-traceid", "stale"),
            ("x-b3-flags", "1"),
            ("traceparent", "stale"),
            ("tracestate", "stale=1"),
            ("other", "kept"),
        ]);
        let c = ctx(T64, S1, Some(P1), Some(true));
        inject(&mut h, &c, all_formats(), None);
        assert_eq!(text(&h, "x-b3-traceid").as_deref(), Some(T64));
        assert_eq!(text(&h, "x-b3-spanid").as_deref(), Some(S1));
        assert_eq!(text(&h, "x-b3-parentspanid").as_deref(), Some(P1));
        assert_eq!(text(&h, "x-b3-sampled").as_deref(), Some("1"));
        assert_eq!(text(&h, "x-b3-flags"), None);
        assert_eq!(text(&h, "b3"), Some(format!("{T64}-{S1}-1-{P1}")));
        assert_eq!(
            text(&h, "traceparent"),
            Some(format!("00-0000000000000000{T64}-{S1}-01"))
        );
        assert_eq!(text(&h, "tracestate"), None);
        assert_eq!(text(&h, "other").as_deref(), Some("kept"));
        // Round trip: what we write we read back identically.
        assert_eq!(extract(&h).context, Some(c));
    }

    #[test]
    fn inject_not_sampled_and_debug() {
        let mut h = HeaderMap::new();
        inject(
            &mut h,
            &ctx(T128, S1, None, Some(false)),
            all_formats(),
            None,
        );
        assert_eq!(text(&h, "x-b3-sampled").as_deref(), Some("0"));
        assert_eq!(text(&h, "x-b3-parentspanid"), None);
        assert_eq!(text(&h, "b3"), Some(format!("{T128}-{S1}-0")));
        assert_eq!(text(&h, "traceparent"), Some(format!("00-{T128}-{S1}-00")));
        let debug = SpanContext {
            debug: true,
            ..ctx(T128, S1, Some(P1), Some(true))
        };
        let ts = HeaderValue::from_static("rojo=1");
        inject(&mut h, &debug, all_formats(), Some(&ts));
        assert_eq!(text(&h, "x-b3-flags").as_deref(), Some("1"));
        assert_eq!(text(&h, "x-b3-sampled"), None);
        assert_eq!(text(&h, "b3"), Some(format!("{T128}-{S1}-d-{P1}")));
        assert_eq!(text(&h, "traceparent"), Some(format!("00-{T128}-{S1}-01")));
        assert_eq!(text(&h, "tracestate").as_deref(), Some("rojo=1"));
        assert_eq!(extract(&h).context, Some(debug));
    }

    #[test]
    fn inject_only_the_requested_formats() {
        let mut h = headers(&[("b3", "stale")]);
        let f = Formats::NONE.with(PropagationFormat::W3c);
        inject(&mut h, &ctx(T128, S1, None, Some(true)), f, None);
        assert_eq!(text(&h, "b3"), None);
        assert_eq!(text(&h, "x-b3-traceid"), None);
        assert!(h.contains_key("traceparent"));
    }

    /// Deterministic property test: garbage in any context header never panics, and whatever
    /// is extracted round-trips through `inject`. (cargo-fuzz covers the same in sidecar/fuzz.)
    #[test]
    fn garbage_never_panics_and_valid_contexts_round_trip() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let alphabet = b"0123456789abcdefABCDEF-dtrue0x \t\x80\xff";
        let valid = |name: &HeaderName| -> String {
            match name.as_str() {
                "x-b3-traceid" => T128.into(),
                "x-b3-spanid" => S1.into(),
                "x-b3-parentspanid" => P1.into(),
                "x-b3-sampled" => "1".into(),
                "x-b3-flags" => "1".into(),
                "b3" => format!("{T64}-{S1}-1-{P1}"),
                "traceparent" => format!("00-{T128}-{S1}-01"),
                _ => "rojo=00f067aa0ba902b7".into(),
            }
        };
        let mut seen_valid = 0;
        for _ in 0..20_000 {
            let mut h = HeaderMap::new();
            for _ in 0..rng.random_range(0..7) {
                let name = CONTEXT_HEADERS[rng.random_range(0..CONTEXT_HEADERS.len())].clone();
                let bytes: Vec<u8> = if rng.random_bool(0.7) {
                    // Valid values with a few mutations: near misses, not only noise.
                    let mut v = valid(&name).into_bytes();
                    for _ in 0..rng.random_range(0..3) {
                        let i = rng.random_range(0..v.len());
                        match rng.random_range(0..3) {
                            0 => v[i] = alphabet[rng.random_range(0..alphabet.len())],
                            1 => {
                                v.remove(i);
                            }
                            _ => v.insert(i, alphabet[rng.random_range(0..alphabet.len())]),
                        }
                        if v.is_empty() {
                            break;
                        }
                    }
                    v
                } else {
                    let len = rng.random_range(0..600);
                    (0..len)
                        .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                        .collect()
                };
                if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                    h.append(name, v);
                }
            }
            let e = extract(&h);
            if let Some(c) = e.context {
                seen_valid += 1;
                let mut out = h.clone();
                inject(&mut out, &c, all_formats(), e.tracestate.as_ref());
                let again = extract(&out);
                assert!(!again.malformed);
                let back = again.context.expect("re-extracted");
                assert_eq!(
                    (back.trace_id, back.span_id, back.sampled, back.debug),
                    (c.trace_id, c.span_id, c.sampled, c.debug)
                );
                // The single-header grammar has no room for a parent without a decision.
                if c.sampled.is_some() {
                    assert_eq!(back.parent_id, c.parent_id);
                }
            }
        }
        assert!(
            seen_valid > 2_000,
            "the generator must reach valid contexts: {seen_valid}"
        );
    }
}

//! Trace and span identifiers, the context that links spans, and their random generation.
//!
//! Ids are plain integers; hex is only an encoding. A trace id remembers whether it arrived
//! as 64 or 128 bits so that B3 headers are rewritten in the width the caller used (W3C,
//! which has no 64-bit form, left-pads with zeros as the B3 ↔ W3C interop rules say).

use std::fmt;

use rand::Rng;
use serde::{Serialize, Serializer};

/// A trace id: 128 bits by default, 64 bits when a caller sent a 16-hex B3 id. Never zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId {
    high: u64,
    low: u64,
    wide: bool,
}

impl TraceId {
    /// A 128-bit id; `None` when all bits are zero (the invalid id in B3 and W3C).
    pub fn from_u128(id: u128) -> Option<Self> {
        (id != 0).then_some(Self {
            high: (id >> 64) as u64,
            low: id as u64,
            wide: true,
        })
    }

    /// A 64-bit id; `None` when zero.
    pub fn from_u64(id: u64) -> Option<Self> {
        (id != 0).then_some(Self {
            high: 0,
            low: id,
            wide: false,
        })
    }

    /// A fresh random 128-bit id (what a new root trace gets).
    pub fn random() -> Self {
        let mut rng = rand::rng();
        loop {
            if let Some(id) = Self::from_u128(rng.random()) {
                return id;
            }
        }
    }

    /// Parses 16 or 32 hex digits (either case); anything else is `None`.
    pub fn from_hex(s: &str) -> Option<Self> {
        match s.len() {
            16 => Self::from_u64(parse_hex_u64(s.as_bytes())?),
            32 => {
                // Byte slices: a non-ASCII string of 32 bytes must not split a character.
                let (high, low) = s.as_bytes().split_at(16);
                let high = parse_hex_u64(high)?;
                let low = parse_hex_u64(low)?;
                Self::from_u128((u128::from(high) << 64) | u128::from(low))
            }
            _ => None,
        }
    }

    /// Whether the id is 128 bits wide (it is written as 32 hex digits in B3).
    pub fn is_128(&self) -> bool {
        self.wide
    }

    /// The lower 64 bits: what sampling decisions hash on, so every hop agrees.
    pub fn low(&self) -> u64 {
        self.low
    }

    /// The id as one 128-bit integer (upper half zero for 64-bit ids).
    pub fn as_u128(&self) -> u128 {
        (u128::from(self.high) << 64) | u128::from(self.low)
    }

    /// Lowercase hex in the width the id has: 16 or 32 digits.
    pub fn to_hex(&self) -> String {
        self.hex(&mut [0; 32]).to_owned()
    }

    /// Lowercase hex, always 32 digits (W3C `traceparent`).
    pub fn to_hex_32(&self) -> String {
        self.hex_32(&mut [0; 32]).to_owned()
    }

    /// [`TraceId::to_hex`] written into `buf`, without allocating.
    pub fn hex<'b>(&self, buf: &'b mut [u8; 32]) -> &'b str {
        if self.wide {
            self.hex_32(buf)
        } else {
            let (low, _) = buf.split_at_mut(16);
            hex16(self.low, low)
        }
    }

    /// [`TraceId::to_hex_32`] written into `buf`, without allocating.
    pub fn hex_32<'b>(&self, buf: &'b mut [u8; 32]) -> &'b str {
        let (high, low) = buf.split_at_mut(16);
        hex16(self.high, high);
        hex16(self.low, low);
        std::str::from_utf8(buf).unwrap_or_default()
    }
}

/// `v` as 16 lowercase hex digits in `out` (16 bytes). Ids are written on every request
/// (headers, spans): a table lookup costs a fraction of `{:016x}`'s formatting machinery.
fn hex16(v: u64, out: &mut [u8]) -> &str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().take(16).enumerate() {
        *b = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
    std::str::from_utf8(&out[..16]).unwrap_or_default()
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex(&mut [0; 32]))
    }
}

impl Serialize for TraceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.hex(&mut [0; 32]))
    }
}

/// A 64-bit span id, never zero, written as 16 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(u64);

impl SpanId {
    /// `None` for zero, which B3 and W3C both treat as invalid.
    pub fn from_u64(id: u64) -> Option<Self> {
        (id != 0).then_some(Self(id))
    }

    /// A fresh random span id.
    pub fn random() -> Self {
        let mut rng = rand::rng();
        loop {
            if let Some(id) = Self::from_u64(rng.random()) {
                return id;
            }
        }
    }

    /// Parses exactly 16 hex digits (either case).
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 16 {
            return None;
        }
        Self::from_u64(parse_hex_u64(s.as_bytes())?)
    }

    /// The id as an integer.
    pub fn as_u64(&self) -> u64 {
        self.0
    }

    /// 16 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.hex(&mut [0; 16]).to_owned()
    }

    /// [`SpanId::to_hex`] written into `buf`, without allocating.
    pub fn hex<'b>(&self, buf: &'b mut [u8; 16]) -> &'b str {
        hex16(self.0, buf)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex(&mut [0; 16]))
    }
}

impl Serialize for SpanId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.hex(&mut [0; 16]))
    }
}

/// The identity of one span and the decisions that travel with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace this span belongs to.
    pub trace_id: TraceId,
    /// This span's id (for an incoming context: the caller's span).
    pub span_id: SpanId,
    /// The span this one is a child of; `None` for a root.
    pub parent_id: Option<SpanId>,
    /// Sampling decision: `None` means "not decided yet" (B3 allows deferring).
    pub sampled: Option<bool>,
    /// B3 debug flag: forces sampling and asks the collector to keep the trace.
    pub debug: bool,
}

impl SpanContext {
    /// Whether spans of this context are recorded.
    pub fn is_sampled(&self) -> bool {
        self.debug || self.sampled == Some(true)
    }
}

/// Parses up to 16 hex digits (either case) into a u64, rejecting anything else, including
/// `+`/`-` signs that `u64::from_str_radix` would accept.
pub(crate) fn parse_hex_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

/// A random request id in the UUID v4 text layout (version and variant bits set), for
/// `x-request-id` when the caller sent none. Not a crypto value; it only has to be unique.
pub fn random_request_id() -> String {
    let mut rng = rand::rng();
    let a: u64 = rng.random();
    let b: u64 = rng.random();
    let a = (a & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000; // version 4
    let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000; // RFC 4122 variant
    // 8-4-4 digits of `a`, then 4-12 of `b`.
    let (mut ha, mut hb) = ([0; 16], [0; 16]);
    let (ha, hb) = (hex16(a, &mut ha), hex16(b, &mut hb));
    let mut id = String::with_capacity(36);
    for part in [
        &ha[..8],
        "-",
        &ha[8..12],
        "-",
        &ha[12..],
        "-",
        &hb[..4],
        "-",
        &hb[4..],
    ] {
        id.push_str(part);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_keep_their_width() {
        let t = TraceId::from_hex("463ac35c9f6413ad").expect("64-bit");
        assert!(!t.is_128());
        assert_eq!(t.to_hex(), "463ac35c9f6413ad");
        assert_eq!(t.to_hex_32(), "0000000000000000463ac35c9f6413ad");
        let t = TraceId::from_hex("463AC35C9F6413AD48485A3953BB6124").expect("128-bit");
        assert!(t.is_128());
        assert_eq!(t.to_hex(), "463ac35c9f6413ad48485a3953bb6124");
        assert_eq!(t.low(), 0x48485a3953bb6124);
    }

    #[test]
    fn invalid_ids_are_rejected() {
        for bad in [
            "",
            "0000000000000000",
            "00000000000000000000000000000000",
            "463ac35c9f6413a",
            "463ac35c9f6413adx",
            "+63ac35c9f6413ad",
            "463ac35c9f6413ad48485a3953bb612",
            "g63ac35c9f6413ad",
            "463ac35c9f6413ad463ac35c9f6413ad463ac35c9f6413ad",
            "463ac35c9f6413aé48485a3953bb612",
            "463ac35c9f6413é",
        ] {
            assert_eq!(TraceId::from_hex(bad), None, "{bad:?}");
        }
        assert_eq!(SpanId::from_hex("0000000000000000"), None);
        assert_eq!(SpanId::from_hex("463ac35c9f6413ad48485a3953bb6124"), None);
        assert_eq!(SpanId::from_hex("-1"), None);
        assert_eq!(
            SpanId::from_hex("00f067aa0ba902b7").map(|s| s.to_hex()),
            Some("00f067aa0ba902b7".to_string())
        );
    }

    #[test]
    fn random_ids_are_128_bit_and_distinct() {
        let a = TraceId::random();
        let b = TraceId::random();
        assert!(a.is_128());
        assert_eq!(a.to_hex().len(), 32);
        assert_ne!(a, b);
        assert_eq!(SpanId::random().to_hex().len(), 16);
    }

    #[test]
    fn request_ids_look_like_uuid_v4() {
        let id = random_request_id();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "{id}");
        assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(id, random_request_id());
    }
}

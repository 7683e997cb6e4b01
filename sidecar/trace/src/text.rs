//! [`Text`]: the string type of span tag keys and values and endpoint service names.
//!
//! A span carries a dozen tags per request. As `String`s each key and value was its own heap
//! allocation, although almost every key is a fixed name, many values are fixed words
//! (`proxy`, `HTTP/1.1`, `GET`) or short (`200`, `/small`), and the static tags of the config
//! are the same for every span. `Text` holds each without copying where it can:
//! - a `&'static str` (fixed names and words): no allocation;
//! - up to [`INLINE`] bytes in place (status codes, sizes, short paths and URLs, most span
//!   names): no allocation;
//! - an `Arc<str>` shared with the config or the connection (static tags, peer addresses): a
//!   reference count, no allocation;
//! - an owned `String` otherwise (a URL, a long user agent).
//!
//! Why not `smol_str` or `compact_str`: `smol_str` keeps 23 bytes in place and copies every
//! longer owned `String` into a new `Arc<str>` (the 24–30-byte URLs of outbound spans, such as
//! `http://service2:8000/trace/2`, would allocate); `compact_str` allocates again on every
//! clone of a heap string (the config's static tags are cloned into every span).
//!
//! It compares, orders, hashes and serialises as the `str` it holds, so a `BTreeMap<Text, _>`
//! is sorted and looked up (`tags["http.path"]`) exactly as a `BTreeMap<String, _>`, and the
//! Zipkin JSON is byte-for-byte what `String`s gave.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

use serde::{Serialize, Serializer};

/// Longest string kept in place: with its length byte and the enum's tag, the 32 bytes the
/// `String` variant (24, aligned to 8, plus the tag) takes anyway. Long enough for a span
/// name like `GET /trace/{id}` and a URL like `http://service2:8000/trace/2`.
pub const INLINE: usize = 30;

/// A cheap-to-build, cheap-to-clone string; see the module docs.
#[derive(Clone)]
pub struct Text(Repr);

#[derive(Clone)]
enum Repr {
    Static(&'static str),
    Inline { len: u8, buf: [u8; INLINE] },
    Shared(Arc<str>),
    Owned(String),
}

impl Text {
    /// A fixed string: never allocates.
    pub const fn from_static(s: &'static str) -> Self {
        Self(Repr::Static(s))
    }

    /// A copy of `s`: in place when it fits in [`INLINE`] bytes, else on the heap.
    pub fn copy(s: &str) -> Self {
        Self::inline(s).unwrap_or_else(|| Self(Repr::Owned(s.to_owned())))
    }

    /// `s`, shared: cloning it (once per span, for a config's static tags) only counts a
    /// reference. Short strings are kept in place instead, which is cheaper still.
    pub fn shared(s: &str) -> Self {
        Self::inline(s).unwrap_or_else(|| Self(Repr::Shared(Arc::from(s))))
    }

    /// `value` as text (numbers: a status code, a size), written in place when it fits.
    pub fn display(value: impl fmt::Display) -> Self {
        let mut w = InlineWriter {
            len: 0,
            buf: [0; INLINE],
            spill: None,
        };
        // Writing to either buffer cannot fail.
        let _ = fmt::write(&mut w, format_args!("{value}"));
        match w.spill {
            Some(s) => Self(Repr::Owned(s)),
            // `len` is at most INLINE (30), which fits in a u8.
            None => Self(Repr::Inline {
                len: w.len as u8,
                buf: w.buf,
            }),
        }
    }

    /// This text shared: [`Text::shared`] of an owned string, anything else as is. For
    /// values kept in a config and cloned into every span.
    pub fn into_shared(self) -> Self {
        match self.0 {
            Repr::Owned(s) => Self::shared(&s),
            other => Self(other),
        }
    }

    fn inline(s: &str) -> Option<Self> {
        (s.len() <= INLINE).then(|| {
            let mut buf = [0; INLINE];
            buf[..s.len()].copy_from_slice(s.as_bytes());
            Self(Repr::Inline {
                // At most INLINE (30) by the check above.
                len: s.len() as u8,
                buf,
            })
        })
    }

    /// The bytes of the string, without the UTF-8 check [`Text::as_str`] makes of text kept
    /// in place: comparing and ordering by bytes is comparing and ordering `str`s.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Static(s) => s.as_bytes(),
            Repr::Inline { len, buf } => &buf[..usize::from(*len)],
            Repr::Shared(s) => s.as_bytes(),
            Repr::Owned(s) => s.as_bytes(),
        }
    }

    /// Length in bytes (without the UTF-8 check of [`Text::as_str`]).
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Static(s) => s,
            // Only ever filled from a whole `&str` or from `fmt::Write::write_str` pieces
            // that fitted whole, so the bytes are UTF-8; the fallback is unreachable.
            Repr::Inline { len, buf } => {
                std::str::from_utf8(&buf[..usize::from(*len)]).unwrap_or_default()
            }
            Repr::Shared(s) => s,
            Repr::Owned(s) => s,
        }
    }
}

/// Collects `fmt::Write` output in place until it no longer fits, then in a `String`.
struct InlineWriter {
    len: usize,
    buf: [u8; INLINE],
    spill: Option<String>,
}

impl fmt::Write for InlineWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(spill) = &mut self.spill {
            spill.push_str(s);
        } else if self.len + s.len() <= INLINE {
            self.buf[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
            self.len += s.len();
        } else {
            let mut spill = String::with_capacity(self.len + s.len());
            spill.push_str(std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default());
            spill.push_str(s);
            self.spill = Some(spill);
        }
        Ok(())
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl Default for Text {
    fn default() -> Self {
        Self::from_static("")
    }
}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Self {
        Self::from_static(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Self::inline(&s).unwrap_or(Self(Repr::Owned(s)))
    }
}

impl From<&String> for Text {
    fn from(s: &String) -> Self {
        Self::copy(s)
    }
}

impl From<Text> for String {
    fn from(t: Text) -> Self {
        match t.0 {
            Repr::Owned(s) => s,
            other => Text(other).as_str().to_owned(),
        }
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Text {}

impl PartialOrd for Text {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Text {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // `str` orders by bytes.
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl Hash for Text {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes, which `Borrow<str>` requires.
        self.as_str().hash(state);
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<Text> for &str {
    fn eq(&self, other: &Text) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<Text> for str {
    fn eq(&self, other: &Text) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn every_kind_reads_compares_and_orders_as_its_str() {
        let long = "x".repeat(INLINE + 1);
        let texts = [
            Text::from_static("http.method"),
            Text::copy("é/ü"),
            Text::copy(&long),
            Text::shared(&long),
            Text::shared("short"),
            Text::display(503),
            Text::display(u64::MAX),
            Text::display(format_args!("{}{}", "a".repeat(20), "bcdé")),
            Text::from(String::from("owned")),
            Text::copy(""),
        ];
        let want = [
            "http.method",
            "é/ü",
            long.as_str(),
            long.as_str(),
            "short",
            "503",
            "18446744073709551615",
            "aaaaaaaaaaaaaaaaaaaabcdé",
            "owned",
            "",
        ];
        for (t, w) in texts.iter().zip(want) {
            assert_eq!(t.as_str(), w);
            assert_eq!(t, &Text::copy(w));
            assert_eq!(format!("{t:?}"), format!("{w:?}"));
            assert_eq!(
                serde_json::to_string(t).expect("json"),
                serde_json::to_string(w).expect("json")
            );
        }
        let mut sorted: Vec<&str> = want.to_vec();
        sorted.sort();
        let mut by_text = texts.to_vec();
        by_text.sort();
        assert_eq!(by_text.iter().map(Text::as_str).collect::<Vec<_>>(), sorted);
    }

    #[test]
    fn in_place_text_costs_no_room_beyond_a_string() {
        assert_eq!(std::mem::size_of::<Text>(), 32);
    }

    #[test]
    fn maps_are_looked_up_by_str() {
        let mut m: BTreeMap<Text, Text> = BTreeMap::new();
        m.insert("b".into(), Text::display(2));
        m.insert(Text::copy("a"), "1".into());
        assert_eq!(m["a"], "1");
        assert_eq!(m.get("b").map(Text::as_str), Some("2"));
        assert_eq!(
            serde_json::to_string(&m).expect("json"),
            r#"{"a":"1","b":"2"}"#
        );
        let shared = Text::from("x".repeat(40)).into_shared();
        assert_eq!(shared.clone(), shared);
    }
}

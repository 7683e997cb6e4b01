//! [`Tags`]: a span's string tags, sorted by key.
//!
//! A proxy span has a dozen tags, one more than a `BTreeMap` node holds: as a `BTreeMap` each
//! span took three node allocations and paid its rebalancing on every insert. Here the
//! tags are one vector kept sorted, sized once per span; a lookup is a binary search and an
//! insert moves at most a dozen entries. The API is the part of `BTreeMap`'s the tracer and
//! its tests use, and the iteration order, equality and JSON (an object, keys in order) are
//! the same, so Zipkin JSON does not change.

use std::fmt;

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::text::Text;

/// Tags sorted by key, each key once; see the module docs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tags(Vec<(Text, Text)>);

impl Tags {
    /// No tags.
    pub const fn new() -> Self {
        Self(Vec::new())
    }

    /// No tags, with room for `n` (a span's tags are counted before they are made).
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0
            .binary_search_by(|(k, _)| k.as_bytes().cmp(key.as_bytes()))
    }

    /// Sets `key` to `value`; returns the value it replaces.
    pub fn insert(&mut self, key: Text, value: Text) -> Option<Text> {
        // Tags written in key order (the proxy's own, mostly) go at the end without a search.
        if self
            .0
            .last()
            .is_none_or(|(last, _)| last.as_bytes() < key.as_bytes())
        {
            self.0.push((key, value));
            return None;
        }
        match self.find(key.as_str()) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    /// A copy of these tags with room for `extra` more (a span's own tags over the config's
    /// static ones), so that adding them does not grow the vector again.
    pub fn with_room(&self, extra: usize) -> Self {
        let mut v = Vec::with_capacity(self.0.len() + extra);
        v.extend_from_slice(&self.0);
        Self(v)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Text> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    /// Whether `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<Text> {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }

    /// Number of tags.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Removes every tag.
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// The tags in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&Text, &Text)> + '_ {
        self.0.iter().map(pair)
    }
}

/// A tag as iteration yields it.
fn pair((k, v): &(Text, Text)) -> (&Text, &Text) {
    (k, v)
}

impl<'a> IntoIterator for &'a Tags {
    type Item = (&'a Text, &'a Text);
    type IntoIter =
        std::iter::Map<std::slice::Iter<'a, (Text, Text)>, fn(&(Text, Text)) -> (&Text, &Text)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(pair)
    }
}

impl std::ops::Index<&str> for Tags {
    type Output = Text;

    /// The value of `key`; panics when it is not set, as `BTreeMap` does (tests only).
    fn index(&self, key: &str) -> &Text {
        match self.get(key) {
            Some(v) => v,
            None => panic!("no tag {key:?}"),
        }
    }
}

impl FromIterator<(Text, Text)> for Tags {
    /// Later pairs win over earlier ones with the same key, as in a `BTreeMap`.
    fn from_iter<I: IntoIterator<Item = (Text, Text)>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut tags = Self::with_capacity(iter.size_hint().0);
        for (k, v) in iter {
            tags.insert(k, v);
        }
        tags
    }
}

impl<const N: usize> From<[(Text, Text); N]> for Tags {
    fn from(pairs: [(Text, Text); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl fmt::Debug for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Tags {
    /// A JSON object, keys in order: what a `BTreeMap<String, String>` gave.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn behaves_as_a_btree_map_of_strings() {
        let ops: [(&str, Option<&str>); 12] = [
            ("http.method", Some("GET")),
            ("component", Some("proxy")),
            ("zz", Some("last")),
            ("", Some("empty key")),
            ("http.method", Some("POST")),
            ("é", Some("non-ASCII key")),
            ("e", Some("before é")),
            ("zz", None),
            ("absent", None),
            ("a", Some("")),
            ("component", None),
            ("component", Some("again")),
        ];
        let mut tags = Tags::new();
        let mut map: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in ops {
            match v {
                Some(v) => assert_eq!(
                    tags.insert(Text::copy(k), Text::copy(v)).map(String::from),
                    map.insert(k.to_owned(), v.to_owned())
                ),
                None => assert_eq!(tags.remove(k).map(String::from), map.remove(k)),
            }
            assert_eq!(tags.len(), map.len());
            for key in ["http.method", "component", "zz", "", "é", "absent"] {
                assert_eq!(
                    tags.get(key).map(Text::as_str),
                    map.get(key).map(String::as_str)
                );
                assert_eq!(tags.contains_key(key), map.contains_key(key));
            }
            let pairs: Vec<(&str, &str)> =
                tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let want: Vec<(&str, &str)> =
                map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assert_eq!(pairs, want);
            assert_eq!(
                serde_json::to_string(&tags).expect("json"),
                serde_json::to_string(&map).expect("json")
            );
            assert_eq!(format!("{tags:?}"), format!("{map:?}"));
        }
        assert_eq!(tags["http.method"], "POST");
        let again: Tags = tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(again, tags);
        tags.clear();
        assert!(tags.is_empty());
    }
}
